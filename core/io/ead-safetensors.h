/* ead-safetensors.h: reading and writing safetensors files, whatever they hold.
 *
 * The format: an 8-byte little-endian header length, a JSON header (written padded with
 * spaces to a multiple of 8 bytes), then the tensors back to back.  The header maps each
 * tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets into the data
 * block) and may hold "__metadata__", an object of strings.  Python reads these files
 * with the safetensors package or with json + struct + numpy.
 *
 * Model bundles (ead-bundle.h) and training checkpoints are built on this layer; it knows
 * nothing about models.  Tensors are read as F32, F16 or BF16 and converted to float;
 * they are written as little-endian F32, or F16 where asked (ead_safetensors_writer_add_half).
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* Safetensors' own limit on the JSON header. */
#define EAD_SAFETENSORS_MAX_HEADER_SIZE ((guint64) 100 * 1024 * 1024)

/* ---- reading ---- */

/* An open file whose header has been checked as a whole: every tensor entry well formed,
 * with a supported dtype, and the tensors covering the data block exactly once.  The file
 * stays mapped until ead_safetensors_free.  Nothing here modifies it after opening, so
 * several threads may read tensors from it at once. */
typedef struct _EadSafetensors EadSafetensors;

/* What the header says about one tensor.  Owned by the EadSafetensors. */
typedef struct {
  const char *dtype;     /* "F32", "F16" or "BF16" */
  int n_dims;
  const gint64 *shape;   /* n_dims sizes, each >= 0 */
  guint64 n_elements;    /* their product (1 for a scalar) */
} EadSafetensorsTensor;

/* Errors: EAD_ERROR_IO (missing, unreadable, a directory), EAD_ERROR_FORMAT (truncated,
 * corrupt, not safetensors), EAD_ERROR_UNSUPPORTED (a dtype other than F32, F16, BF16),
 * EAD_ERROR_LIMIT (header over EAD_SAFETENSORS_MAX_HEADER_SIZE).  Messages start with
 * the path. */
EadSafetensors *ead_safetensors_open (const char *path, GError **error);
void ead_safetensors_free (EadSafetensors *file);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (EadSafetensors, ead_safetensors_free)

const char *ead_safetensors_get_path (EadSafetensors *file);
guint64 ead_safetensors_get_file_size (EadSafetensors *file);

/* "__metadata__" as key → value strings, owned by file; NULL when the header has no
 * "__metadata__" at all (an empty object gives an empty table). */
GHashTable *ead_safetensors_get_metadata (EadSafetensors *file);
/* The value of key, owned by file; NULL when absent. */
const char *ead_safetensors_lookup_metadata (EadSafetensors *file, const char *key);

/* The tensor names, sorted (strcmp); free with g_strfreev. */
char **ead_safetensors_list (EadSafetensors *file);
gboolean ead_safetensors_has (EadSafetensors *file, const char *name);
/* NULL when the file has no tensor of that name. */
const EadSafetensorsTensor *ead_safetensors_lookup (EadSafetensors *file, const char *name);

/* Converts the named tensor to float into dst (room for the product of shape) after
 * checking that its shape is exactly shape[0..n_dims).  EAD_ERROR_FORMAT when the tensor
 * is missing or its shape differs; the message names the path, the tensor, the shape
 * found and the shape expected.  dst is untouched on failure. */
gboolean ead_safetensors_read (EadSafetensors *file, const char *name, int n_dims,
                               const gint64 *shape, float *dst, GError **error);

/* ---- writing ---- */

/* Collects tensors and metadata, then writes them in one go. */
typedef struct _EadSafetensorsWriter EadSafetensorsWriter;

EadSafetensorsWriter *ead_safetensors_writer_new (void);
void ead_safetensors_writer_free (EadSafetensorsWriter *writer);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (EadSafetensorsWriter, ead_safetensors_writer_free)

/* Adds a tensor; name and shape are copied, data is referenced, not copied: it must stay
 * valid and unchanged until ead_safetensors_writer_write returns.  Tensors are written in
 * the order added.  name must be new to the writer and not "__metadata__". */
void ead_safetensors_writer_add (EadSafetensorsWriter *writer, const char *name, int n_dims,
                                 const gint64 *shape, const float *data);
/* The same, written as F16 (IEEE half, rounded to nearest even; a value beyond ±65504
 * becomes ±inf, so the caller checks the range when that matters). */
void ead_safetensors_writer_add_half (EadSafetensorsWriter *writer, const char *name,
                                      int n_dims, const gint64 *shape, const float *data);
/* Sets (or replaces) a "__metadata__" entry; both strings are copied.  Keys are written
 * sorted, so the same tensors and metadata always give the same bytes. */
void ead_safetensors_writer_set_metadata (EadSafetensorsWriter *writer, const char *key,
                                          const char *value);

/* Writes atomically and durably: a temporary file next to path, fsync, rename over path,
 * fsync of the directory.  On failure path is left as it was and no temporary file
 * remains, except when only the final directory sync fails (the message says so: the new
 * file is in place but its rename may not survive a power loss).  EAD_ERROR_INVALID (and
 * nothing written) when a name, metadata key or value is not valid UTF-8; EAD_ERROR_IO for
 * everything the file system refuses.  Messages start with the path.  The writer may be
 * written again, to the same or another path. */
gboolean ead_safetensors_writer_write (EadSafetensorsWriter *writer, const char *path,
                                       GError **error);

G_END_DECLS
