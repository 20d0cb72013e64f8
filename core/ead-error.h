/* ead-error.h: the error domain shared by every part of the core.
 *
 * Library code reports bad input through GError; the message names the file (or
 * tensor, or option) and says what was wrong and what was expected.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define EAD_ERROR (ead_error_quark ())

typedef enum {
  EAD_ERROR_IO,          /* the file could not be opened, read or written */
  EAD_ERROR_FORMAT,      /* the content is corrupt, truncated or not what it claims */
  EAD_ERROR_UNSUPPORTED, /* a valid file using a feature we do not handle */
  EAD_ERROR_LIMIT,       /* over a safety limit (pixel count, header size) */
  EAD_ERROR_INVALID,     /* a bad argument or option value */
  EAD_ERROR_BACKEND,     /* the compute backend failed */
} EadError;

GQuark ead_error_quark (void);

G_END_DECLS
