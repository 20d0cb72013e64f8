/* ead-bmp.h: the BMP decoder behind ead_image_load (private to core/io).
 *
 * Decoding is split in two so that the caller can check the pixel count against its
 * limit, and allocate, between reading the header and touching the pixel data.
 */
#pragma once

#include <glib.h>
#include <stdint.h>

G_BEGIN_DECLS

typedef struct {
  int width;
  int height;
  /* Where the decoder finds things; filled by _ead_bmp_read_header. */
  gboolean top_down;
  unsigned bits;         /* 1, 4, 8, 16, 24 or 32 */
  size_t row_stride;     /* bytes per stored row, padding included */
  size_t pixel_offset;   /* offset of the first stored row in the file */
  uint32_t masks[3];     /* red, green, blue masks for 16 and 32 bits */
  unsigned n_colours;    /* palette entries present in the file */
  size_t palette_offset;
  unsigned palette_entry_size;
} EadBmpInfo;

gboolean _ead_bmp_is_bmp (const uint8_t *data, size_t size);

/* Validates the headers, the pixel count against max_pixels (EAD_ERROR_LIMIT), then
 * that the pixel data lies inside the buffer; allocates nothing.  Messages start with
 * name. */
gboolean _ead_bmp_read_header (const char *name,
                               const uint8_t *data,
                               size_t size,
                               guint64 max_pixels,
                               EadBmpInfo *info,
                               GError **error);

/* Writes info->width * info->height RGB triplets, top row first, into rgb.  data must
 * be the buffer the header was read from: everything it touches was checked there. */
void _ead_bmp_decode (const uint8_t *data, const EadBmpInfo *info, uint8_t *rgb);

G_END_DECLS
