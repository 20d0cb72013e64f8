/* ead-image.h: decoding images into 8-bit RGB, PIL-exact resizing, network input tensors,
 * and writing heatmap PNGs.
 *
 * Decoded images are always 3-channel interleaved RGB, 8 bits per channel: grey is
 * replicated, alpha is dropped, 16-bit samples are scaled to 8 bits with rounding
 * (v * 255 / 65535).  This is what the networks see after PIL's convert('RGB').
 */
#pragma once

#include <glib.h>
#include <stdint.h>

G_BEGIN_DECLS

/* PIL's own decompression-bomb error threshold (2 x Image.MAX_IMAGE_PIXELS). */
#define EAD_IMAGE_DEFAULT_MAX_PIXELS ((guint64) 178956970)

typedef struct {
  int width;
  int height;
  uint8_t *rgb;  /* width * height * 3 bytes, row-major, owned */
} EadImage;

/* Decodes PNG (8/16-bit, grey/grey+alpha/RGB/RGBA/palette), JPEG, BMP or TIFF (8/16-bit),
 * chosen by content (magic bytes), not by file name.  max_pixels = 0 means the default.
 * Errors: EAD_ERROR_IO (missing, unreadable, a directory), EAD_ERROR_FORMAT (truncated,
 * corrupt, 0 bytes, not an image), EAD_ERROR_UNSUPPORTED, EAD_ERROR_LIMIT (over max_pixels,
 * checked from the header before any pixel memory is allocated).  Messages start with the
 * path. */
EadImage *ead_image_load (const char *path, guint64 max_pixels, GError **error);
EadImage *ead_image_load_from_memory (const char *name_for_errors,
                                      const void *data,
                                      size_t size,
                                      guint64 max_pixels,
                                      GError **error);

/* The size and format ("png", "jpeg", "tiff" or "bmp") of an image, from its header,
 * without decoding pixels: reads the first few kilobytes (more only for a JPEG whose
 * metadata is longer) and the last 4 KiB, where a complete PNG has its IEND chunk and a
 * complete JPEG its end-of-image marker.  Refuses what ead_image_load refuses from the
 * header alone, with the same errors: 0 bytes, not an image, a corrupt or truncated
 * header, a missing end marker, an unsupported variant, more pixels than
 * EAD_IMAGE_DEFAULT_MAX_PIXELS.  Damage in the middle of the compressed data is found
 * only by decoding.  width, height and format may be NULL. */
gboolean ead_image_read_header (const char *path,
                                int *width,
                                int *height,
                                const char **format,
                                GError **error);
/* The same checks on a file already in memory (data holds the whole file). */
gboolean ead_image_read_header_from_memory (const char *name_for_errors,
                                            const void *data,
                                            size_t size,
                                            int *width,
                                            int *height,
                                            const char **format,
                                            GError **error);

EadImage *ead_image_new (int width, int height);  /* zero-filled */
void ead_image_free (EadImage *image);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (EadImage, ead_image_free)

/* PIL Image.resize(size, Image.BILINEAR) on an RGB image, bit-exact: a triangle filter
 * whose support is scaled by the downscale factor (antialiasing), fixed-point coefficients
 * with PIL's precision, horizontal pass then vertical pass, each rounded and clamped to
 * uint8. */
EadImage *ead_image_resize_bilinear (const EadImage *src, int width, int height);

/* Writes the network input for one image: dst is 3 planes of height * width floats
 * (CHW), value = (pixel / 255 - mean[c]) / std[c] with the ImageNet mean and std.
 * The image must already have the network size. */
void ead_image_to_input (const EadImage *image, float *dst);
/* The same with another normalisation: (p / 255 - mean[c]) / std[c]. */
void ead_image_to_input_normalised (const EadImage *image,
                                    const float mean[3],
                                    const float std[3],
                                    float *dst);

/* Writes an 8-bit RGB PNG, atomically (temporary file, then rename). */
gboolean ead_image_save_png (const EadImage *image, const char *path, GError **error);

/* A heatmap picture of a width x height float map: values are mapped linearly from
 * [lo, hi] to a perceptual colour map (clamped); when `under` is given (same size as
 * the map) the colours are blended over it with the given opacity (0..1). */
EadImage *ead_heatmap_render (const float *map,
                              int width,
                              int height,
                              float lo,
                              float hi,
                              const EadImage *under,
                              float opacity);

G_END_DECLS
