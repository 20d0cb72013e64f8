/* ead-image.c: image decoding (PNG, JPEG, TIFF, BMP), PIL-exact bilinear resizing,
 * network input tensors and atomic PNG writing.
 *
 * Every decoder reads the header first, checks the pixel count against the caller's
 * limit and only then allocates the output, so a small file claiming a huge size costs
 * nothing.  The libraries' own error reporting (longjmp for libpng and libjpeg, handler
 * callbacks for libtiff) is turned into GError; nothing is printed to stderr.
 */
#include "ead-image.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib/gstdio.h>
#include <jpeglib.h>
#include <jerror.h>
#include <png.h>
#include <tiffio.h>

#include "ead-bmp.h"
#include "ead-error.h"

/* A progressive JPEG can carry any number of scans, each one a full pass over the
 * coefficients; real files have about ten.  Refusing absurd counts keeps a small
 * hostile file from costing minutes of CPU. */
#define JPEG_MAX_SCANS 1000

static inline uint32_t
load_be32 (const uint8_t *p)
{
  return (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 | (uint32_t) p[2] << 8 | (uint32_t) p[3];
}

static inline uint8_t
scale_16_to_8 (unsigned v)
{
  return (uint8_t) ((v * 255 + 32767) / 65535);
}

static gboolean
check_size (const char *name,
            guint64 width,
            guint64 height,
            guint64 max_pixels,
            GError **error)
{
  if (width == 0 || height == 0)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: invalid image size %" G_GUINT64_FORMAT "x%" G_GUINT64_FORMAT,
                   name, width, height);
      return FALSE;
    }
  /* Both sides fit in 32 bits for every format, so the product cannot wrap. */
  if (width > G_MAXINT || height > G_MAXINT || width * height > max_pixels
      || width * height > G_MAXSIZE / 4)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_LIMIT,
                   "%s: image is %" G_GUINT64_FORMAT "x%" G_GUINT64_FORMAT " = %"
                   G_GUINT64_FORMAT " pixels, over the limit of %" G_GUINT64_FORMAT,
                   name, width, height, width * height, max_pixels);
      return FALSE;
    }
  return TRUE;
}

/* The output of a decoder: not zeroed, since every decoder writes every byte. */
static EadImage *
image_new_checked (const char *name,
                   guint64 width,
                   guint64 height,
                   guint64 max_pixels,
                   GError **error)
{
  EadImage *image;

  if (!check_size (name, width, height, max_pixels, error))
    return NULL;
  image = g_new0 (EadImage, 1);
  image->width = (int) width;
  image->height = (int) height;
  image->rgb = g_try_malloc ((size_t) width * (size_t) height * 3);
  if (image->rgb == NULL)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_LIMIT,
                   "%s: out of memory for a %" G_GUINT64_FORMAT "x%" G_GUINT64_FORMAT
                   " image", name, width, height);
      g_free (image);
      return NULL;
    }
  return image;
}

EadImage *
ead_image_new (int width, int height)
{
  EadImage *image;

  g_return_val_if_fail (width > 0 && height > 0, NULL);

  image = g_new0 (EadImage, 1);
  image->width = width;
  image->height = height;
  image->rgb = g_malloc0_n ((size_t) width * (size_t) height, 3);
  return image;
}

void
ead_image_free (EadImage *image)
{
  if (image == NULL)
    return;
  g_free (image->rgb);
  g_free (image);
}

/* PNG */

typedef struct {
  const char *name;
  const uint8_t *data;
  size_t size;
  size_t pos;
  gboolean truncated;
  char message[256];
  EadImage *image;
} PngReader;

static void
on_png_read (png_structp png, png_bytep out, size_t length)
{
  PngReader *reader = png_get_io_ptr (png);

  if (length > reader->size - reader->pos)
    {
      reader->truncated = TRUE;
      png_error (png, "unexpected end of data");
    }
  memcpy (out, reader->data + reader->pos, length);
  reader->pos += length;
}

static void
on_png_error (png_structp png, png_const_charp message)
{
  PngReader *reader = png_get_error_ptr (png);

  g_strlcpy (reader->message, message, sizeof reader->message);
  png_longjmp (png, 1);
}

static void
on_png_warning (png_structp png, png_const_charp message)
{
  /* Warnings are about ancillary chunks (colour profiles, text) that the pixels do not
   * depend on. */
}

/* Separate from load_png so that nothing this function's frame holds is modified
 * between setjmp and longjmp: the state lives in the reader. */
static gboolean
decode_png (png_structp png,
            png_infop info,
            PngReader *reader,
            guint64 max_pixels,
            GError **error)
{
  png_uint_32 width, height;
  int bit_depth, colour_type, passes;

  if (setjmp (png_jmpbuf (png)))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT, "%s: %s PNG data (libpng: %s)",
                   reader->name, reader->truncated ? "truncated" : "corrupt",
                   reader->message);
      return FALSE;
    }

  /* libpng's default limit of a million pixels per side would reject valid images; the
   * pixel count is checked here instead. */
  png_set_user_limits (png, PNG_UINT_31_MAX, PNG_UINT_31_MAX);
  png_set_read_fn (png, reader, on_png_read);
  png_read_info (png, info);
  png_get_IHDR (png, info, &width, &height, &bit_depth, &colour_type, NULL, NULL, NULL);
  reader->image = image_new_checked (reader->name, width, height, max_pixels, error);
  if (reader->image == NULL)
    return FALSE;

  if (colour_type == PNG_COLOR_TYPE_PALETTE)
    png_set_palette_to_rgb (png);
  if (colour_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8)
    png_set_expand_gray_1_2_4_to_8 (png);
  /* libpng computes (v * 255 + 32895) >> 16, which equals the rounded v * 255 / 65535
   * for every 16-bit v. */
  if (bit_depth == 16)
    png_set_scale_16 (png);
  /* Expanding a palette also turns a tRNS chunk into an alpha channel. */
  if ((colour_type & PNG_COLOR_MASK_ALPHA) || png_get_valid (png, info, PNG_INFO_tRNS))
    png_set_strip_alpha (png);
  if (!(colour_type & PNG_COLOR_MASK_COLOR))
    png_set_gray_to_rgb (png);
  passes = png_set_interlace_handling (png);
  png_read_update_info (png, info);
  if (png_get_rowbytes (png, info) != (size_t) width * 3)
    png_error (png, "unexpected row size after conversion to 8-bit RGB");

  for (int pass = 0; pass < passes; pass++)
    for (png_uint_32 y = 0; y < height; y++)
      png_read_row (png, reader->image->rgb + (size_t) y * width * 3, NULL);
  png_read_end (png, NULL);
  return TRUE;
}

static EadImage *
load_png (const char *name,
          const uint8_t *data,
          size_t size,
          guint64 max_pixels,
          GError **error)
{
  PngReader reader = { .name = name, .data = data, .size = size };
  png_structp png;
  png_infop info;
  gboolean ok;

  /* The IHDR chunk must come first; checking its size before libpng reads on means a
   * file that claims a huge size fails as such, even if nothing follows the header. */
  if (size >= 24 && memcmp (data + 12, "IHDR", 4) == 0
      && !check_size (name, load_be32 (data + 16), load_be32 (data + 20), max_pixels, error))
    return NULL;

  png = png_create_read_struct (PNG_LIBPNG_VER_STRING, &reader, on_png_error, on_png_warning);
  info = png != NULL ? png_create_info_struct (png) : NULL;
  if (info == NULL)
    {
      png_destroy_read_struct (&png, NULL, NULL);
      g_set_error (error, EAD_ERROR, EAD_ERROR_LIMIT,
                   "%s: out of memory starting the PNG decoder", name);
      return NULL;
    }
  ok = decode_png (png, info, &reader, max_pixels, error);
  png_destroy_read_struct (&png, &info, NULL);
  if (!ok)
    {
      ead_image_free (reader.image);
      return NULL;
    }
  return reader.image;
}

/* JPEG */

typedef struct {
  struct jpeg_decompress_struct cinfo;
  struct jpeg_error_mgr err;
  struct jpeg_progress_mgr progress;
  jmp_buf jmp;
  const char *name;
  EadError code;
  char message[JMSG_LENGTH_MAX + 64];
  EadImage *image;
} JpegDecoder;

static G_NORETURN void
fail_jpeg (j_common_ptr cinfo, EadError code)
{
  JpegDecoder *decoder = (JpegDecoder *) cinfo->client_data;
  char text[JMSG_LENGTH_MAX];
  const char *what;

  (*cinfo->err->format_message) (cinfo, text);
  if (cinfo->err->msg_code == JWRN_JPEG_EOF)
    what = "truncated JPEG data";
  else if (code == EAD_ERROR_FORMAT)
    what = "corrupt JPEG data";
  else
    what = "cannot decode JPEG";
  decoder->code = code;
  g_snprintf (decoder->message, sizeof decoder->message, "%s (libjpeg: %s)", what, text);
  longjmp (decoder->jmp, 1);
}

static void
on_jpeg_error_exit (j_common_ptr cinfo)
{
  switch (cinfo->err->msg_code)
    {
    case JERR_OUT_OF_MEMORY:
    case JERR_IMAGE_TOO_BIG:
      fail_jpeg (cinfo, EAD_ERROR_LIMIT);
    case JERR_BAD_PRECISION:
    case JERR_ARITH_NOTIMPL:
    case JERR_CONVERSION_NOTIMPL:
    case JERR_NOT_COMPILED:
      fail_jpeg (cinfo, EAD_ERROR_UNSUPPORTED);
    default:
      fail_jpeg (cinfo, EAD_ERROR_FORMAT);
    }
}

/* libjpeg only warns about corrupt entropy data and a premature end of the file, and
 * fills the rest of the image with grey; a damaged image must not reach the detector,
 * so every warning that means lost data is an error here. */
static void
on_jpeg_emit_message (j_common_ptr cinfo, int level)
{
  if (level >= 0)
    return;
  switch (cinfo->err->msg_code)
    {
    case JWRN_ADOBE_XFORM:
    case JWRN_JFIF_MAJOR:
    case JWRN_BOGUS_ICC:
      return;
    default:
      fail_jpeg (cinfo, EAD_ERROR_FORMAT);
    }
}

static void
on_jpeg_output_message (j_common_ptr cinfo)
{
  /* Messages reach the caller through GError, never stderr. */
}

static void
on_jpeg_progress (j_common_ptr cinfo)
{
  JpegDecoder *decoder = (JpegDecoder *) cinfo->client_data;

  if (decoder->cinfo.input_scan_number > JPEG_MAX_SCANS)
    {
      decoder->code = EAD_ERROR_LIMIT;
      g_snprintf (decoder->message, sizeof decoder->message,
                  "JPEG has more than %d scans", JPEG_MAX_SCANS);
      longjmp (decoder->jmp, 1);
    }
}

static gboolean
decode_jpeg (JpegDecoder *decoder,
             const uint8_t *data,
             size_t size,
             guint64 max_pixels,
             GError **error)
{
  struct jpeg_decompress_struct *cinfo = &decoder->cinfo;

  if (setjmp (decoder->jmp))
    {
      g_set_error (error, EAD_ERROR, decoder->code, "%s: %s", decoder->name, decoder->message);
      return FALSE;
    }

  jpeg_create_decompress (cinfo);
  cinfo->progress = &decoder->progress;
  jpeg_mem_src (cinfo, data, size);
  jpeg_read_header (cinfo, TRUE);

  switch (cinfo->jpeg_color_space)
    {
    case JCS_GRAYSCALE:
    case JCS_RGB:
    case JCS_YCbCr:
      cinfo->out_color_space = JCS_RGB;
      break;
    case JCS_CMYK:
    case JCS_YCCK:
      g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
                   "%s: CMYK JPEG images are not supported", decoder->name);
      return FALSE;
    default:
      g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
                   "%s: JPEG with %d colour components of unknown meaning is not supported",
                   decoder->name, cinfo->num_components);
      return FALSE;
    }

  decoder->image = image_new_checked (decoder->name, cinfo->image_width, cinfo->image_height,
                                      max_pixels, error);
  if (decoder->image == NULL)
    return FALSE;

  jpeg_start_decompress (cinfo);
  if (cinfo->output_components != 3 || (int) cinfo->output_width != decoder->image->width
      || (int) cinfo->output_height != decoder->image->height)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: JPEG decoder produced %ux%u with %d components, expected %dx%d RGB",
                   decoder->name, cinfo->output_width, cinfo->output_height,
                   cinfo->output_components, decoder->image->width, decoder->image->height);
      return FALSE;
    }
  while (cinfo->output_scanline < cinfo->output_height)
    {
      JSAMPROW row = decoder->image->rgb
                     + (size_t) cinfo->output_scanline * cinfo->output_width * 3;

      jpeg_read_scanlines (cinfo, &row, 1);
    }
  /* Reading up to the EOI marker is what notices data cut off after the last row or
   * garbage left over in the entropy-coded segment. */
  jpeg_finish_decompress (cinfo);
  return TRUE;
}

static EadImage *
load_jpeg (const char *name,
           const uint8_t *data,
           size_t size,
           guint64 max_pixels,
           GError **error)
{
  JpegDecoder *decoder = g_new0 (JpegDecoder, 1);
  EadImage *image = NULL;

  decoder->name = name;
  decoder->cinfo.client_data = decoder;
  decoder->cinfo.err = jpeg_std_error (&decoder->err);
  decoder->err.error_exit = on_jpeg_error_exit;
  decoder->err.emit_message = on_jpeg_emit_message;
  decoder->err.output_message = on_jpeg_output_message;
  decoder->progress.progress_monitor = on_jpeg_progress;
  if (decode_jpeg (decoder, data, size, max_pixels, error))
    image = g_steal_pointer (&decoder->image);
  jpeg_destroy_decompress (&decoder->cinfo);
  ead_image_free (decoder->image);
  g_free (decoder);
  return image;
}

/* TIFF */

typedef struct {
  const char *name;
  const uint8_t *data;
  size_t size;
  size_t pos;
  char message[512];
} TiffReader;

static tmsize_t
tiff_read_cb (thandle_t handle, void *buffer, tmsize_t length)
{
  TiffReader *reader = handle;
  size_t n;

  if (length <= 0 || reader->pos >= reader->size)
    return 0;
  n = MIN ((size_t) length, reader->size - reader->pos);
  memcpy (buffer, reader->data + reader->pos, n);
  reader->pos += n;
  return (tmsize_t) n;
}

static tmsize_t
tiff_write_cb (thandle_t handle, void *buffer, tmsize_t length)
{
  return -1;
}

static toff_t
tiff_seek_cb (thandle_t handle, toff_t offset, int whence)
{
  TiffReader *reader = handle;
  guint64 base;

  switch (whence)
    {
    case SEEK_SET:
      base = 0;
      break;
    case SEEK_CUR:
      base = reader->pos;
      break;
    case SEEK_END:
      base = reader->size;
      break;
    default:
      return (toff_t) -1;
    }
  /* Offsets come from the file; one past the end just makes the next read short. */
  if (offset > G_MAXSIZE - base)
    return (toff_t) -1;
  reader->pos = (size_t) (base + offset);
  return reader->pos;
}

static int
tiff_close_cb (thandle_t handle)
{
  return 0;
}

static toff_t
tiff_size_cb (thandle_t handle)
{
  TiffReader *reader = handle;

  return reader->size;
}

/* The data is already in memory, so it is "mapped" as it is: libtiff then reads strips
 * and tiles in place, and never writes to a mapping opened for reading.  This also
 * avoids libtiff 4.5's unmapped path for separate-plane tiles in TIFFRGBAImage, which
 * rejects valid files. */
static int
tiff_map_cb (thandle_t handle, void **base, toff_t *size)
{
  TiffReader *reader = handle;

  *base = (void *) reader->data;
  *size = reader->size;
  return 1;
}

static void
tiff_unmap_cb (thandle_t handle, void *base, toff_t size)
{
}

static int
tiff_error_cb (TIFF *tif,
               void *user_data,
               const char *module,
               const char *format,
               va_list args)
{
  TiffReader *reader = user_data;

  /* The first error is the cause; later ones are consequences. */
  if (reader->message[0] == '\0')
    {
      g_autofree char *text = g_strdup_vprintf (format, args);

      /* libtiff often names the file as the module; the message has it already. */
      if (module == NULL || strcmp (module, reader->name) == 0)
        g_strlcpy (reader->message, text, sizeof reader->message);
      else
        g_snprintf (reader->message, sizeof reader->message, "%s: %s", module, text);
    }
  return 1;
}

static int
tiff_warning_cb (TIFF *tif,
                 void *user_data,
                 const char *module,
                 const char *format,
                 va_list args)
{
  /* Unknown tags and similar oddities: nothing the pixels depend on. */
  return 1;
}

static void
tiff_set_read_error (TiffReader *reader, GError **error)
{
  g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
               "%s: corrupt or truncated TIFF data (libtiff: %s)", reader->name,
               reader->message[0] != '\0' ? reader->message : "read failed");
}

/* Converts n samples lying `step` samples apart to 8 bits, writing them 3 bytes apart. */
static void
tiff_convert_samples (const uint8_t *src,
                      size_t n,
                      unsigned step,
                      unsigned bits,
                      gboolean invert,
                      uint8_t *dst)
{
  uint8_t flip = invert ? 255 : 0;

  if (bits == 8)
    for (size_t i = 0; i < n; i++)
      dst[3 * i] = src[i * step] ^ flip;
  else
    for (size_t i = 0; i < n; i++)
      {
        uint16_t v;

        memcpy (&v, src + 2 * i * step, 2);
        dst[3 * i] = scale_16_to_8 (v) ^ flip;
      }
}

typedef struct {
  unsigned bits;
  unsigned samples_per_pixel;
  unsigned channels;  /* 1 for grey, 3 for RGB; further samples are alpha or extra */
  gboolean planar;
  gboolean invert;
} TiffLayout;

static gboolean
tiff_read_strips (TIFF *tif,
                  TiffReader *reader,
                  const TiffLayout *layout,
                  EadImage *image,
                  GError **error)
{
  g_autofree uint8_t *row = NULL;
  unsigned bytes = layout->bits / 8;
  unsigned planes = layout->planar ? layout->channels : 1;
  unsigned step = layout->planar ? 1 : layout->samples_per_pixel;
  size_t needed = (size_t) image->width * step * bytes;
  uint64_t scanline = TIFFScanlineSize64 (tif);

  if (scanline < needed || scanline > G_MAXSIZE)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: corrupt TIFF data (rows of %" G_GUINT64_FORMAT " bytes, expected %zu)",
                   reader->name, scanline, needed);
      return FALSE;
    }
  row = g_try_malloc ((size_t) scanline);
  if (row == NULL)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_LIMIT,
                   "%s: out of memory for a TIFF row of %" G_GUINT64_FORMAT " bytes",
                   reader->name, scanline);
      return FALSE;
    }
  /* Plane by plane, so that each compressed strip is decoded once, in order. */
  for (unsigned plane = 0; plane < planes; plane++)
    for (int y = 0; y < image->height; y++)
      {
        uint8_t *out = image->rgb + (size_t) y * image->width * 3;

        if (TIFFReadScanline (tif, row, (uint32_t) y, (uint16_t) plane) < 0)
          {
            tiff_set_read_error (reader, error);
            return FALSE;
          }
        if (layout->planar)
          tiff_convert_samples (row, image->width, 1, layout->bits, layout->invert, out + plane);
        else
          for (unsigned c = 0; c < layout->channels; c++)
            tiff_convert_samples (row + c * bytes, image->width, step, layout->bits,
                                  layout->invert, out + c);
      }
  return TRUE;
}

static gboolean
tiff_read_tiles (TIFF *tif,
                 TiffReader *reader,
                 const TiffLayout *layout,
                 EadImage *image,
                 GError **error)
{
  g_autofree uint8_t *tile = NULL;
  uint32_t tile_width = 0, tile_height = 0;
  unsigned bytes = layout->bits / 8;
  size_t pixel_size = (size_t) layout->samples_per_pixel * bytes;
  uint64_t tile_size = TIFFTileSize64 (tif);

  TIFFGetField (tif, TIFFTAG_TILEWIDTH, &tile_width);
  TIFFGetField (tif, TIFFTAG_TILELENGTH, &tile_height);
  if (tile_width == 0 || tile_height == 0 || tile_size > G_MAXSIZE
      || tile_size / tile_width / tile_height < pixel_size)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: corrupt TIFF data (tiles of %ux%u, %" G_GUINT64_FORMAT " bytes)",
                   reader->name, tile_width, tile_height, tile_size);
      return FALSE;
    }
  tile = g_try_malloc ((size_t) tile_size);
  if (tile == NULL)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_LIMIT,
                   "%s: out of memory for a TIFF tile of %" G_GUINT64_FORMAT " bytes",
                   reader->name, tile_size);
      return FALSE;
    }
  for (uint32_t ty = 0; ty < (uint32_t) image->height; ty += tile_height)
    for (uint32_t tx = 0; tx < (uint32_t) image->width; tx += tile_width)
      {
        uint32_t rows = MIN (tile_height, (uint32_t) image->height - ty);
        uint32_t columns = MIN (tile_width, (uint32_t) image->width - tx);

        if (TIFFReadTile (tif, tile, tx, ty, 0, 0) < 0)
          {
            tiff_set_read_error (reader, error);
            return FALSE;
          }
        for (uint32_t r = 0; r < rows; r++)
          {
            const uint8_t *src = tile + (size_t) r * tile_width * pixel_size;
            uint8_t *out = image->rgb + ((size_t) (ty + r) * image->width + tx) * 3;

            for (unsigned c = 0; c < layout->channels; c++)
              tiff_convert_samples (src + c * bytes, columns, layout->samples_per_pixel,
                                    layout->bits, layout->invert, out + c);
          }
      }
  return TRUE;
}

/* libtiff's RGBA interface covers what the direct readers do not (palettes, YCbCr,
 * CMYK, 1/2/4-bit samples, separate-plane tiles), at the price of premultiplying
 * unassociated alpha. */
static gboolean
tiff_read_rgba (TIFF *tif, TiffReader *reader, EadImage *image, GError **error)
{
  g_autofree uint32_t *raster = NULL;
  TIFFRGBAImage rgba;
  char message[1024];
  size_t n = (size_t) image->width * image->height;
  gboolean ok;

  if (!TIFFRGBAImageOK (tif, message))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED, "%s: unsupported TIFF (libtiff: %s)",
                   reader->name, message);
      return FALSE;
    }
  raster = g_try_malloc_n (n, sizeof (uint32_t));
  if (raster == NULL)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_LIMIT,
                   "%s: out of memory for a %dx%d TIFF raster", reader->name, image->width,
                   image->height);
      return FALSE;
    }
  if (!TIFFRGBAImageBegin (&rgba, tif, 1, message))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT, "%s: corrupt TIFF data (libtiff: %s)",
                   reader->name, message);
      return FALSE;
    }
  /* Rows are kept in stored order, whatever the Orientation tag says, as PIL and the
   * direct readers do. */
  rgba.orientation = ORIENTATION_TOPLEFT;
  rgba.req_orientation = ORIENTATION_TOPLEFT;
  ok = TIFFRGBAImageGet (&rgba, raster, (uint32_t) image->width, (uint32_t) image->height);
  TIFFRGBAImageEnd (&rgba);
  if (!ok)
    {
      tiff_set_read_error (reader, error);
      return FALSE;
    }
  for (size_t i = 0; i < n; i++)
    {
      image->rgb[3 * i] = (uint8_t) TIFFGetR (raster[i]);
      image->rgb[3 * i + 1] = (uint8_t) TIFFGetG (raster[i]);
      image->rgb[3 * i + 2] = (uint8_t) TIFFGetB (raster[i]);
    }
  return TRUE;
}

static EadImage *
load_tiff (const char *name,
           const uint8_t *data,
           size_t size,
           guint64 max_pixels,
           GError **error)
{
  TiffReader reader = { .name = name, .data = data, .size = size };
  TIFFOpenOptions *options = TIFFOpenOptionsAlloc ();
  TIFF *tif;
  uint32_t width = 0, height = 0;
  uint16_t bits = 0, samples_per_pixel = 0, photometric = 0, planar = 0, format = 0,
           compression = 0;
  TiffLayout layout = { 0 };
  EadImage *image;
  gboolean ok;

  TIFFOpenOptionsSetErrorHandlerExtR (options, tiff_error_cb, &reader);
  TIFFOpenOptionsSetWarningHandlerExtR (options, tiff_warning_cb, &reader);
  tif = TIFFClientOpenExt (name, "r", &reader, tiff_read_cb, tiff_write_cb, tiff_seek_cb,
                           tiff_close_cb, tiff_size_cb, tiff_map_cb, tiff_unmap_cb, options);
  TIFFOpenOptionsFree (options);
  if (tif == NULL)
    {
      tiff_set_read_error (&reader, error);
      return NULL;
    }

  TIFFGetField (tif, TIFFTAG_IMAGEWIDTH, &width);
  TIFFGetField (tif, TIFFTAG_IMAGELENGTH, &height);
  TIFFGetFieldDefaulted (tif, TIFFTAG_BITSPERSAMPLE, &bits);
  TIFFGetFieldDefaulted (tif, TIFFTAG_SAMPLESPERPIXEL, &samples_per_pixel);
  TIFFGetFieldDefaulted (tif, TIFFTAG_PLANARCONFIG, &planar);
  TIFFGetFieldDefaulted (tif, TIFFTAG_SAMPLEFORMAT, &format);
  TIFFGetFieldDefaulted (tif, TIFFTAG_COMPRESSION, &compression);
  if (!TIFFGetField (tif, TIFFTAG_PHOTOMETRIC, &photometric))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: TIFF without a photometric interpretation", name);
      TIFFClose (tif);
      return NULL;
    }
  if (format != SAMPLEFORMAT_UINT && format != SAMPLEFORMAT_VOID)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
                   "%s: TIFF with signed or floating-point samples is not supported", name);
      TIFFClose (tif);
      return NULL;
    }
  if (!TIFFIsCODECConfigured (compression))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
                   "%s: TIFF compression scheme %u is not available in this libtiff", name,
                   compression);
      TIFFClose (tif);
      return NULL;
    }

  image = image_new_checked (name, width, height, max_pixels, error);
  if (image == NULL)
    {
      TIFFClose (tif);
      return NULL;
    }

  layout.bits = bits;
  layout.samples_per_pixel = samples_per_pixel;
  layout.planar = planar == PLANARCONFIG_SEPARATE;
  layout.invert = photometric == PHOTOMETRIC_MINISWHITE;
  layout.channels = photometric == PHOTOMETRIC_RGB ? 3 : 1;
  if ((bits == 8 || bits == 16) && samples_per_pixel >= layout.channels
      && (photometric == PHOTOMETRIC_MINISBLACK || photometric == PHOTOMETRIC_MINISWHITE
          || photometric == PHOTOMETRIC_RGB)
      && !(TIFFIsTiled (tif) && layout.planar))
    {
      ok = TIFFIsTiled (tif) ? tiff_read_tiles (tif, &reader, &layout, image, error)
                             : tiff_read_strips (tif, &reader, &layout, image, error);
      if (ok && layout.channels == 1)
        for (size_t i = 0; i < (size_t) image->width * image->height; i++)
          image->rgb[3 * i + 1] = image->rgb[3 * i + 2] = image->rgb[3 * i];
    }
  else
    ok = tiff_read_rgba (tif, &reader, image, error);
  TIFFClose (tif);
  if (!ok)
    {
      ead_image_free (image);
      return NULL;
    }
  return image;
}

/* BMP */

static EadImage *
load_bmp (const char *name,
          const uint8_t *data,
          size_t size,
          guint64 max_pixels,
          GError **error)
{
  EadBmpInfo info;
  EadImage *image;

  if (!_ead_bmp_read_header (name, data, size, max_pixels, &info, error))
    return NULL;
  image = image_new_checked (name, info.width, info.height, max_pixels, error);
  if (image != NULL)
    _ead_bmp_decode (data, &info, image->rgb);
  return image;
}

/* Loading */

static gboolean
read_whole_file (const char *path, uint8_t **data_out, size_t *size_out, GError **error)
{
  struct stat st;
  g_autofree uint8_t *data = NULL;
  size_t size = 0;
  int fd, saved_errno;

  /* O_NONBLOCK: opening a FIFO must not hang; reading a regular file ignores it. */
  fd = g_open (path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0);
  if (fd < 0)
    {
      saved_errno = errno;
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot open: %s", path,
                   g_strerror (saved_errno));
      return FALSE;
    }
  if (fstat (fd, &st) != 0)
    {
      saved_errno = errno;
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot stat: %s", path,
                   g_strerror (saved_errno));
      close (fd);
      return FALSE;
    }
  if (S_ISDIR (st.st_mode))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: is a directory, not an image file",
                   path);
      close (fd);
      return FALSE;
    }
  if (!S_ISREG (st.st_mode))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: not a regular file", path);
      close (fd);
      return FALSE;
    }
  if ((guint64) st.st_size > G_MAXSIZE - 1)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_LIMIT, "%s: file too large (%" G_GUINT64_FORMAT
                   " bytes)", path, (guint64) st.st_size);
      close (fd);
      return FALSE;
    }
  /* One byte more than the size, so that a file that grew is noticed and read on. */
  data = g_try_malloc ((size_t) st.st_size + 1);
  if (data == NULL)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_LIMIT,
                   "%s: out of memory for a file of %" G_GUINT64_FORMAT " bytes", path,
                   (guint64) st.st_size);
      close (fd);
      return FALSE;
    }
  for (;;)
    {
      ssize_t n = read (fd, data + size, (size_t) st.st_size + 1 - size);

      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0)
        {
          saved_errno = errno;
          g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: read error: %s", path,
                       g_strerror (saved_errno));
          close (fd);
          return FALSE;
        }
      if (n == 0)
        break;
      size += (size_t) n;
      if (size == (size_t) st.st_size + 1)
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_IO,
                       "%s: the file changed size while it was being read", path);
          close (fd);
          return FALSE;
        }
    }
  close (fd);
  *data_out = g_steal_pointer (&data);
  *size_out = size;
  return TRUE;
}

EadImage *
ead_image_load (const char *path, guint64 max_pixels, GError **error)
{
  g_autofree uint8_t *data = NULL;
  size_t size;

  g_return_val_if_fail (path != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  if (!read_whole_file (path, &data, &size, error))
    return NULL;
  return ead_image_load_from_memory (path, data, size, max_pixels, error);
}

EadImage *
ead_image_load_from_memory (const char *name_for_errors,
                            const void *data,
                            size_t size,
                            guint64 max_pixels,
                            GError **error)
{
  static const uint8_t png_signature[8] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n' };
  const char *name = name_for_errors != NULL ? name_for_errors : "<memory>";
  const uint8_t *bytes = data;

  g_return_val_if_fail (data != NULL || size == 0, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  if (max_pixels == 0)
    max_pixels = EAD_IMAGE_DEFAULT_MAX_PIXELS;
  if (size == 0)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT, "%s: empty file (0 bytes)", name);
      return NULL;
    }
  if (size >= 8 && memcmp (bytes, png_signature, 8) == 0)
    return load_png (name, bytes, size, max_pixels, error);
  if (size >= 3 && bytes[0] == 0xff && bytes[1] == 0xd8 && bytes[2] == 0xff)
    return load_jpeg (name, bytes, size, max_pixels, error);
  if (size >= 4 && (memcmp (bytes, "II*\0", 4) == 0 || memcmp (bytes, "MM\0*", 4) == 0
                    || memcmp (bytes, "II+\0", 4) == 0 || memcmp (bytes, "MM\0+", 4) == 0))
    return load_tiff (name, bytes, size, max_pixels, error);
  if (_ead_bmp_is_bmp (bytes, size))
    return load_bmp (name, bytes, size, max_pixels, error);
  g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
               "%s: not an image: the content is not PNG, JPEG, BMP or TIFF", name);
  return NULL;
}

/* Header probing: the size and format of an image from the few kilobytes that hold its
 * header, and a look at the end of the file for the marker every complete PNG and JPEG
 * ends with, so that importing a folder notices truncated files without decoding them.
 * The checks are those of the decoders above, so a file the probe accepts fails to
 * decode only when its compressed data is damaged in the middle. */

#define PROBE_BLOCK_SIZE 4096

typedef struct {
  const char *name;
  int fd;               /* the open file, or -1 when data holds the whole file */
  const uint8_t *data;
  guint64 size;         /* the whole file's */
  int read_errno;       /* of the first failed read, for the message */
} ProbeSource;

/* Reads up to length bytes at offset; short only at the end of the file, -1 on a read
 * error (errno kept in the source). */
static gssize
probe_read_at (ProbeSource *source, guint64 offset, void *buffer, size_t length)
{
  size_t done = 0;

  if (offset >= source->size)
    return 0;
  length = (size_t) MIN ((guint64) length, source->size - offset);
  if (source->fd < 0)
    {
      memcpy (buffer, source->data + offset, length);
      return (gssize) length;
    }
  while (done < length)
    {
      ssize_t n = pread (source->fd, (uint8_t *) buffer + done, length - done,
                         (off_t) (offset + done));

      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0)
        {
          source->read_errno = errno;
          return -1;
        }
      if (n == 0)
        break;
      done += (size_t) n;
    }
  return (gssize) done;
}

static gboolean
probe_read_block (ProbeSource *source,
                  guint64 offset,
                  uint8_t *buffer,
                  size_t *length,
                  GError **error)
{
  gssize n = probe_read_at (source, offset, buffer, *length);

  if (n < 0)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: read error: %s", source->name,
                   g_strerror (source->read_errno));
      return FALSE;
    }
  *length = (size_t) n;
  return TRUE;
}

/* Whether the last PROBE_BLOCK_SIZE bytes of the file hold the marker.  Decoders stop
 * at the end marker and ignore what follows, so a few bytes of padding after it are
 * accepted here too. */
static gboolean
probe_tail_has (ProbeSource *source,
                const uint8_t *marker,
                size_t marker_size,
                gboolean *found,
                GError **error)
{
  uint8_t tail[PROBE_BLOCK_SIZE];
  size_t length = sizeof tail;
  guint64 offset = source->size > sizeof tail ? source->size - sizeof tail : 0;

  if (!probe_read_block (source, offset, tail, &length, error))
    return FALSE;
  *found = FALSE;
  for (size_t i = 0; i + marker_size <= length && !*found; i++)
    *found = memcmp (tail + i, marker, marker_size) == 0;
  return TRUE;
}

/* The CRC-32 of PNG chunks (ISO 3309), bitwise: it only ever covers the 17 bytes of
 * an IHDR chunk here. */
static uint32_t
png_crc32 (const uint8_t *data, size_t size)
{
  uint32_t crc = 0xffffffffu;

  for (size_t i = 0; i < size; i++)
    {
      crc ^= data[i];
      for (int k = 0; k < 8; k++)
        crc = (crc >> 1) ^ (0xedb88320u & -(crc & 1u));
    }
  return crc ^ 0xffffffffu;
}

static gboolean
png_depth_is_valid (unsigned colour_type, unsigned bit_depth)
{
  switch (colour_type)
    {
    case PNG_COLOR_TYPE_GRAY:
      return bit_depth == 1 || bit_depth == 2 || bit_depth == 4 || bit_depth == 8
             || bit_depth == 16;
    case PNG_COLOR_TYPE_PALETTE:
      return bit_depth == 1 || bit_depth == 2 || bit_depth == 4 || bit_depth == 8;
    case PNG_COLOR_TYPE_RGB:
    case PNG_COLOR_TYPE_GRAY_ALPHA:
    case PNG_COLOR_TYPE_RGB_ALPHA:
      return bit_depth == 8 || bit_depth == 16;
    default:
      return FALSE;
    }
}

static gboolean
probe_png (ProbeSource *source,
           const uint8_t *head,
           size_t head_size,
           int *width,
           int *height,
           GError **error)
{
  /* An empty IEND chunk: length 0, type, CRC. */
  static const uint8_t iend[12] = { 0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xae, 0x42, 0x60, 0x82 };
  /* Signature, then IHDR: length, type, 13 bytes of data, CRC. */
  const size_t header_size = 8 + 8 + 13 + 4;
  uint32_t w, h;
  unsigned bit_depth, colour_type;
  gboolean complete;

  if (head_size < header_size)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: truncated PNG data (%zu bytes, the header alone needs %zu)",
                   source->name, head_size, header_size);
      return FALSE;
    }
  if (load_be32 (head + 8) != 13 || memcmp (head + 12, "IHDR", 4) != 0)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: corrupt PNG data (the first chunk is not a 13-byte IHDR)",
                   source->name);
      return FALSE;
    }
  w = load_be32 (head + 16);
  h = load_be32 (head + 20);
  bit_depth = head[24];
  colour_type = head[25];
  /* The size first, as load_png checks it: a huge size fails as such. */
  if (!check_size (source->name, w, h, EAD_IMAGE_DEFAULT_MAX_PIXELS, error))
    return FALSE;
  if (png_crc32 (head + 12, 17) != load_be32 (head + 29))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: corrupt PNG data (IHDR: CRC error)", source->name);
      return FALSE;
    }
  if (!png_depth_is_valid (colour_type, bit_depth) || head[26] != 0 || head[27] != 0
      || head[28] > 1)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: corrupt PNG data (IHDR: invalid bit depth %u, colour type %u, "
                   "compression %u, filter %u or interlace %u)", source->name, bit_depth,
                   colour_type, head[26], head[27], head[28]);
      return FALSE;
    }
  if (!probe_tail_has (source, iend, sizeof iend, &complete, error))
    return FALSE;
  if (!complete)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: truncated PNG data (no IEND chunk at the end of the file)",
                   source->name);
      return FALSE;
    }
  *width = (int) w;
  *height = (int) h;
  return TRUE;
}

/* A libjpeg data source that reads the file block by block on demand, so that
 * jpeg_read_header reads the markers before the first scan and nothing more. */
typedef struct {
  struct jpeg_source_mgr pub;
  ProbeSource *source;
  guint64 offset;
  JOCTET buffer[PROBE_BLOCK_SIZE];
} JpegProbeSource;

static void
jpeg_probe_init_source (j_decompress_ptr cinfo)
{
}

static boolean
jpeg_probe_fill_input_buffer (j_decompress_ptr cinfo)
{
  static const JOCTET fake_eoi[2] = { 0xff, JPEG_EOI };
  JpegProbeSource *src = (JpegProbeSource *) cinfo->src;
  gssize n = probe_read_at (src->source, src->offset, src->buffer, sizeof src->buffer);

  if (n < 0)
    {
      JpegDecoder *decoder = (JpegDecoder *) cinfo->client_data;

      decoder->code = EAD_ERROR_IO;
      g_snprintf (decoder->message, sizeof decoder->message, "read error: %s",
                  g_strerror (src->source->read_errno));
      longjmp (decoder->jmp, 1);
    }
  if (n == 0)
    {
      /* What jpeg_stdio_src does at the end of the file: the warning becomes a
       * "truncated" error in on_jpeg_emit_message. */
      WARNMS (cinfo, JWRN_JPEG_EOF);
      src->pub.next_input_byte = fake_eoi;
      src->pub.bytes_in_buffer = 2;
      return TRUE;
    }
  src->offset += (guint64) n;
  src->pub.next_input_byte = src->buffer;
  src->pub.bytes_in_buffer = (size_t) n;
  return TRUE;
}

static void
jpeg_probe_skip_input_data (j_decompress_ptr cinfo, long num_bytes)
{
  JpegProbeSource *src = (JpegProbeSource *) cinfo->src;

  if (num_bytes <= 0)
    return;
  if ((size_t) num_bytes <= src->pub.bytes_in_buffer)
    {
      src->pub.next_input_byte += num_bytes;
      src->pub.bytes_in_buffer -= (size_t) num_bytes;
      return;
    }
  /* Skipping past the end leaves the next fill at the end of the file, which reports
   * the truncation. */
  src->offset += (guint64) num_bytes - src->pub.bytes_in_buffer;
  src->pub.bytes_in_buffer = 0;
}

static void
jpeg_probe_term_source (j_decompress_ptr cinfo)
{
}

/* Separate from probe_jpeg for the same reason as decode_jpeg: the state lives in the
 * decoder, not in this frame. */
static gboolean
read_jpeg_header (JpegDecoder *decoder, JpegProbeSource *src, GError **error)
{
  struct jpeg_decompress_struct *cinfo = &decoder->cinfo;

  if (setjmp (decoder->jmp))
    {
      g_set_error (error, EAD_ERROR, decoder->code, "%s: %s", decoder->name, decoder->message);
      return FALSE;
    }

  jpeg_create_decompress (cinfo);
  cinfo->progress = &decoder->progress;
  src->pub.init_source = jpeg_probe_init_source;
  src->pub.fill_input_buffer = jpeg_probe_fill_input_buffer;
  src->pub.skip_input_data = jpeg_probe_skip_input_data;
  src->pub.resync_to_restart = jpeg_resync_to_restart;
  src->pub.term_source = jpeg_probe_term_source;
  cinfo->src = &src->pub;
  jpeg_read_header (cinfo, TRUE);

  switch (cinfo->jpeg_color_space)
    {
    case JCS_GRAYSCALE:
    case JCS_RGB:
    case JCS_YCbCr:
      break;
    case JCS_CMYK:
    case JCS_YCCK:
      g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
                   "%s: CMYK JPEG images are not supported", decoder->name);
      return FALSE;
    default:
      g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
                   "%s: JPEG with %d colour components of unknown meaning is not supported",
                   decoder->name, cinfo->num_components);
      return FALSE;
    }
  return check_size (decoder->name, cinfo->image_width, cinfo->image_height,
                     EAD_IMAGE_DEFAULT_MAX_PIXELS, error);
}

static gboolean
probe_jpeg (ProbeSource *source, int *width, int *height, GError **error)
{
  /* In entropy-coded data 0xff is always followed by 0x00 or a restart marker, so this
   * pair only occurs as the end-of-image marker. */
  static const uint8_t eoi[2] = { 0xff, JPEG_EOI };
  JpegDecoder *decoder = g_new0 (JpegDecoder, 1);
  JpegProbeSource *src = g_new0 (JpegProbeSource, 1);
  gboolean ok, complete = FALSE;

  decoder->name = source->name;
  decoder->cinfo.client_data = decoder;
  decoder->cinfo.err = jpeg_std_error (&decoder->err);
  decoder->err.error_exit = on_jpeg_error_exit;
  decoder->err.emit_message = on_jpeg_emit_message;
  decoder->err.output_message = on_jpeg_output_message;
  decoder->progress.progress_monitor = on_jpeg_progress;
  src->source = source;
  ok = read_jpeg_header (decoder, src, error);
  if (ok)
    {
      *width = (int) decoder->cinfo.image_width;
      *height = (int) decoder->cinfo.image_height;
    }
  jpeg_destroy_decompress (&decoder->cinfo);
  g_free (decoder);
  g_free (src);
  if (ok && !probe_tail_has (source, eoi, sizeof eoi, &complete, error))
    return FALSE;
  if (ok && !complete)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: truncated JPEG data (no end-of-image marker at the end of the file)",
                   source->name);
      return FALSE;
    }
  return ok;
}

typedef struct {
  TiffReader base;  /* name and message, for the shared error handler */
  ProbeSource *source;
} TiffProbeReader;

static tmsize_t
tiff_probe_read_cb (thandle_t handle, void *buffer, tmsize_t length)
{
  TiffProbeReader *reader = handle;
  gssize n;

  if (length <= 0)
    return 0;
  n = probe_read_at (reader->source, reader->base.pos, buffer, (size_t) length);
  if (n < 0)
    return -1;
  reader->base.pos += (size_t) n;
  return (tmsize_t) n;
}

static int
tiff_probe_map_cb (thandle_t handle, void **base, toff_t *size)
{
  /* Not mapped: libtiff then reads only the directories it is asked for. */
  return 0;
}

static gboolean
probe_tiff (ProbeSource *source, int *width, int *height, GError **error)
{
  TiffProbeReader reader = { .base = { .name = source->name, .size = source->size },
                             .source = source };
  TIFFOpenOptions *options = TIFFOpenOptionsAlloc ();
  TIFF *tif;
  uint32_t w = 0, h = 0;
  uint16_t photometric = 0, format = 0, compression = 0;
  uint32_t n_striles;
  gboolean ok = FALSE;

  TIFFOpenOptionsSetErrorHandlerExtR (options, tiff_error_cb, &reader.base);
  TIFFOpenOptionsSetWarningHandlerExtR (options, tiff_warning_cb, &reader.base);
  /* base comes first, so the seek and size callbacks of the decoder work on it: they
   * only use base.pos and base.size. */
  tif = TIFFClientOpenExt (source->name, "r", &reader, tiff_probe_read_cb, tiff_write_cb,
                           tiff_seek_cb, tiff_close_cb, tiff_size_cb, tiff_probe_map_cb,
                           tiff_unmap_cb, options);
  TIFFOpenOptionsFree (options);
  if (tif == NULL)
    {
      if (source->read_errno != 0)
        g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: read error: %s", source->name,
                     g_strerror (source->read_errno));
      else
        tiff_set_read_error (&reader.base, error);
      return FALSE;
    }

  TIFFGetField (tif, TIFFTAG_IMAGEWIDTH, &w);
  TIFFGetField (tif, TIFFTAG_IMAGELENGTH, &h);
  TIFFGetFieldDefaulted (tif, TIFFTAG_SAMPLEFORMAT, &format);
  TIFFGetFieldDefaulted (tif, TIFFTAG_COMPRESSION, &compression);
  if (!TIFFGetField (tif, TIFFTAG_PHOTOMETRIC, &photometric))
    g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                 "%s: TIFF without a photometric interpretation", source->name);
  else if (format != SAMPLEFORMAT_UINT && format != SAMPLEFORMAT_VOID)
    g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
                 "%s: TIFF with signed or floating-point samples is not supported",
                 source->name);
  else if (!TIFFIsCODECConfigured (compression))
    g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
                 "%s: TIFF compression scheme %u is not available in this libtiff",
                 source->name, compression);
  else if (check_size (source->name, w, h, EAD_IMAGE_DEFAULT_MAX_PIXELS, error))
    {
      /* The pixel data of a truncated TIFF lies past the end of the file: the strip (or
       * tile) table says where every piece is. */
      ok = TRUE;
      n_striles = TIFFNumberOfStrips (tif);
      for (uint32_t i = 0; i < n_striles && ok; i++)
        {
          uint64_t offset = TIFFGetStrileOffset (tif, i);
          uint64_t count = TIFFGetStrileByteCount (tif, i);

          if (offset > source->size || count > source->size - offset)
            {
              g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                           "%s: corrupt or truncated TIFF data (strip %u ends at byte %"
                           G_GUINT64_FORMAT ", past the end of the %" G_GUINT64_FORMAT
                           "-byte file)", source->name, i, offset + count, source->size);
              ok = FALSE;
            }
        }
    }
  TIFFClose (tif);
  if (ok)
    {
      *width = (int) w;
      *height = (int) h;
    }
  return ok;
}

static gboolean
probe_bmp (ProbeSource *source,
           const uint8_t *head,
           int *width,
           int *height,
           GError **error)
{
  EadBmpInfo info;

  /* The BMP headers end within the first 154 bytes, which head holds (or the whole
   * file, when it is shorter); the header reader only compares the offsets past them
   * with the file's size, which is why it gets the size of the file, not of head. */
  G_STATIC_ASSERT (PROBE_BLOCK_SIZE >= 154);
  if (!_ead_bmp_read_header (source->name, head, (size_t) source->size,
                             EAD_IMAGE_DEFAULT_MAX_PIXELS, &info, error))
    return FALSE;
  *width = info.width;
  *height = info.height;
  return TRUE;
}

static gboolean
probe_image (ProbeSource *source,
             int *width,
             int *height,
             const char **format,
             GError **error)
{
  static const uint8_t png_signature[8] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n' };
  uint8_t head[PROBE_BLOCK_SIZE];
  size_t size = sizeof head;
  int w = 0, h = 0;
  const char *kind;
  gboolean ok;

  if (source->size == 0)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT, "%s: empty file (0 bytes)",
                   source->name);
      return FALSE;
    }
  if (!probe_read_block (source, 0, head, &size, error))
    return FALSE;
  if (size >= 8 && memcmp (head, png_signature, 8) == 0)
    {
      kind = "png";
      ok = probe_png (source, head, size, &w, &h, error);
    }
  else if (size >= 3 && head[0] == 0xff && head[1] == 0xd8 && head[2] == 0xff)
    {
      kind = "jpeg";
      ok = probe_jpeg (source, &w, &h, error);
    }
  else if (size >= 4 && (memcmp (head, "II*\0", 4) == 0 || memcmp (head, "MM\0*", 4) == 0
                         || memcmp (head, "II+\0", 4) == 0 || memcmp (head, "MM\0+", 4) == 0))
    {
      kind = "tiff";
      ok = probe_tiff (source, &w, &h, error);
    }
  else if (_ead_bmp_is_bmp (head, size))
    {
      kind = "bmp";
      ok = probe_bmp (source, head, &w, &h, error);
    }
  else
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: not an image: the content is not PNG, JPEG, BMP or TIFF", source->name);
      return FALSE;
    }
  if (!ok)
    return FALSE;
  if (width != NULL)
    *width = w;
  if (height != NULL)
    *height = h;
  if (format != NULL)
    *format = kind;
  return TRUE;
}

gboolean
ead_image_read_header (const char *path,
                       int *width,
                       int *height,
                       const char **format,
                       GError **error)
{
  ProbeSource source = { .name = path };
  struct stat st;
  gboolean ok;
  int saved_errno;

  g_return_val_if_fail (path != NULL, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  /* The same checks, in the same order, as read_whole_file. */
  source.fd = g_open (path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0);
  if (source.fd < 0)
    {
      saved_errno = errno;
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot open: %s", path,
                   g_strerror (saved_errno));
      return FALSE;
    }
  if (fstat (source.fd, &st) != 0)
    {
      saved_errno = errno;
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot stat: %s", path,
                   g_strerror (saved_errno));
      close (source.fd);
      return FALSE;
    }
  if (S_ISDIR (st.st_mode))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: is a directory, not an image file",
                   path);
      close (source.fd);
      return FALSE;
    }
  if (!S_ISREG (st.st_mode))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: not a regular file", path);
      close (source.fd);
      return FALSE;
    }
  source.size = (guint64) st.st_size;
  ok = probe_image (&source, width, height, format, error);
  close (source.fd);
  return ok;
}

gboolean
ead_image_read_header_from_memory (const char *name_for_errors,
                                   const void *data,
                                   size_t size,
                                   int *width,
                                   int *height,
                                   const char **format,
                                   GError **error)
{
  ProbeSource source = { .name = name_for_errors != NULL ? name_for_errors : "<memory>",
                         .fd = -1, .data = data, .size = size };

  g_return_val_if_fail (data != NULL || size == 0, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  return probe_image (&source, width, height, format, error);
}

/* Resizing, after Pillow 9.4's libImaging/Resample.c for 8-bit images with the
 * BILINEAR filter.  Every step that affects rounding is reproduced: the coefficients are
 * computed in double, normalised per output position, converted to fixed point with
 * 22 fractional bits, and each pass rounds and clamps to 8 bits. */

#define PRECISION_BITS (32 - 8 - 2)

typedef struct {
  int *bounds;   /* per output position: first input position, number of inputs */
  int32_t *k;    /* per output position: ksize fixed-point weights */
  int ksize;
} ResampleCoeffs;

static inline double
bilinear_filter (double x)
{
  if (x < 0.0)
    x = -x;
  if (x < 1.0)
    return 1.0 - x;
  return 0.0;
}

static void
precompute_coeffs (int in_size, int out_size, ResampleCoeffs *coeffs)
{
  const double filter_support = 1.0;
  /* Pillow passes the source box as floats, so the span is a float too. */
  double scale = (double) (float) in_size / out_size;
  double filterscale = MAX (scale, 1.0);
  double support = filter_support * filterscale;
  int ksize = (int) ceil (support) * 2 + 1;
  double *weights = g_new (double, ksize);

  coeffs->ksize = ksize;
  coeffs->bounds = g_new (int, (size_t) out_size * 2);
  coeffs->k = g_new0 (int32_t, (size_t) out_size * ksize);
  for (int xx = 0; xx < out_size; xx++)
    {
      /* Pillow adds the box origin (0.0f) first, which changes nothing. */
      double center = (xx + 0.5) * scale;
      double ww = 0.0;
      double ss = 1.0 / filterscale;
      int xmin = (int) (center - support + 0.5);
      int xmax = (int) (center + support + 0.5);

      if (xmin < 0)
        xmin = 0;
      if (xmax > in_size)
        xmax = in_size;
      xmax -= xmin;
      for (int x = 0; x < xmax; x++)
        {
          double w = bilinear_filter ((x + xmin - center + 0.5) * ss);

          weights[x] = w;
          ww += w;
        }
      /* The triangle filter is never negative, so only Pillow's rounding branch for
       * positive weights applies. */
      for (int x = 0; x < xmax; x++)
        {
          if (ww != 0.0)
            weights[x] /= ww;
          coeffs->k[(size_t) xx * ksize + x] = (int32_t) (0.5 + weights[x] * (1 << PRECISION_BITS));
        }
      coeffs->bounds[xx * 2] = xmin;
      coeffs->bounds[xx * 2 + 1] = xmax;
    }
  g_free (weights);
}

static void
resample_coeffs_clear (ResampleCoeffs *coeffs)
{
  g_free (coeffs->bounds);
  g_free (coeffs->k);
}

static inline uint8_t
clip8 (int v)
{
  v >>= PRECISION_BITS;
  return (uint8_t) CLAMP (v, 0, 255);
}

/* out has out_width columns and rows rows; its row r comes from input row first_row + r. */
static void
resample_horizontal (const uint8_t *in,
                     int in_width,
                     int first_row,
                     int rows,
                     uint8_t *out,
                     int out_width,
                     const ResampleCoeffs *coeffs)
{
  for (int yy = 0; yy < rows; yy++)
    {
      const uint8_t *src = in + (size_t) (first_row + yy) * in_width * 3;
      uint8_t *dst = out + (size_t) yy * out_width * 3;

      for (int xx = 0; xx < out_width; xx++)
        {
          int xmin = coeffs->bounds[xx * 2];
          int xmax = coeffs->bounds[xx * 2 + 1];
          const int32_t *k = coeffs->k + (size_t) xx * coeffs->ksize;
          const uint8_t *p = src + (size_t) xmin * 3;
          int ss0 = 1 << (PRECISION_BITS - 1), ss1 = ss0, ss2 = ss0;

          for (int x = 0; x < xmax; x++)
            {
              ss0 += p[3 * x] * k[x];
              ss1 += p[3 * x + 1] * k[x];
              ss2 += p[3 * x + 2] * k[x];
            }
          dst[3 * xx] = clip8 (ss0);
          dst[3 * xx + 1] = clip8 (ss1);
          dst[3 * xx + 2] = clip8 (ss2);
        }
    }
}

/* Input rows are numbered from row_offset: bounds index the rows of the full source
 * while in may hold only those from row_offset on. */
static void
resample_vertical (const uint8_t *in,
                   int width,
                   int row_offset,
                   uint8_t *out,
                   int out_height,
                   const ResampleCoeffs *coeffs)
{
  size_t stride = (size_t) width * 3;

  for (int yy = 0; yy < out_height; yy++)
    {
      int ymin = coeffs->bounds[yy * 2] - row_offset;
      int ymax = coeffs->bounds[yy * 2 + 1];
      const int32_t *k = coeffs->k + (size_t) yy * coeffs->ksize;
      const uint8_t *src = in + (size_t) ymin * stride;
      uint8_t *dst = out + (size_t) yy * stride;

      for (size_t i = 0; i < stride; i++)
        {
          int ss = 1 << (PRECISION_BITS - 1);

          for (int y = 0; y < ymax; y++)
            ss += src[(size_t) y * stride + i] * k[y];
          dst[i] = clip8 (ss);
        }
    }
}

EadImage *
ead_image_resize_bilinear (const EadImage *src, int width, int height)
{
  ResampleCoeffs horizontal, vertical;
  g_autofree uint8_t *temp = NULL;
  EadImage *out;
  int first_row, last_row;

  g_return_val_if_fail (src != NULL && src->rgb != NULL, NULL);
  g_return_val_if_fail (width > 0 && height > 0, NULL);

  out = ead_image_new (width, height);
  /* Pillow skips a pass whose dimension does not change. */
  if (height == src->height)
    {
      if (width == src->width)
        {
          memcpy (out->rgb, src->rgb, (size_t) width * height * 3);
          return out;
        }
      precompute_coeffs (src->width, width, &horizontal);
      resample_horizontal (src->rgb, src->width, 0, height, out->rgb, width, &horizontal);
      resample_coeffs_clear (&horizontal);
      return out;
    }

  precompute_coeffs (src->height, height, &vertical);
  if (width == src->width)
    {
      resample_vertical (src->rgb, width, 0, out->rgb, height, &vertical);
      resample_coeffs_clear (&vertical);
      return out;
    }

  /* Like Pillow, resample horizontally only the rows the vertical pass reads. */
  first_row = vertical.bounds[0];
  last_row = vertical.bounds[(height - 1) * 2] + vertical.bounds[(height - 1) * 2 + 1];
  temp = g_malloc_n ((size_t) (last_row - first_row) * width, 3);
  precompute_coeffs (src->width, width, &horizontal);
  resample_horizontal (src->rgb, src->width, first_row, last_row - first_row, temp, width,
                       &horizontal);
  resample_coeffs_clear (&horizontal);
  resample_vertical (temp, width, first_row, out->rgb, height, &vertical);
  resample_coeffs_clear (&vertical);
  return out;
}

void
ead_image_to_input (const EadImage *image, float *dst)
{
  static const float mean[3] = { 0.485f, 0.456f, 0.406f };
  static const float std[3] = { 0.229f, 0.224f, 0.225f };

  ead_image_to_input_normalised (image, mean, std, dst);
}

void
ead_image_to_input_normalised (const EadImage *image,
                               const float mean[3],
                               const float std[3],
                               float *dst)
{
  /* torchvision's ToTensor (p / 255 in float32) then Normalize ((x - mean) / std, float32
   * tensors): the same operations in the same precision give the same bits. */
  size_t n;

  g_return_if_fail (image != NULL && dst != NULL);

  n = (size_t) image->width * image->height;
  for (int c = 0; c < 3; c++)
    {
      float *plane = dst + c * n;

      for (size_t i = 0; i < n; i++)
        {
          float x = (float) image->rgb[3 * i + c] / 255.0f;

          plane[i] = (x - mean[c]) / std[c];
        }
    }
}

/* PNG writing */

typedef struct {
  FILE *file;
  int saved_errno;
  char message[256];
} PngWriter;

static void
on_png_write (png_structp png, png_bytep data, size_t length)
{
  PngWriter *writer = png_get_io_ptr (png);

  if (fwrite (data, 1, length, writer->file) != length)
    {
      writer->saved_errno = errno;
      png_error (png, "write failed");
    }
}

static void
on_png_flush (png_structp png)
{
  PngWriter *writer = png_get_io_ptr (png);

  if (fflush (writer->file) != 0)
    {
      writer->saved_errno = errno;
      png_error (png, "write failed");
    }
}

static void
on_png_write_error (png_structp png, png_const_charp message)
{
  PngWriter *writer = png_get_error_ptr (png);

  g_strlcpy (writer->message, message, sizeof writer->message);
  png_longjmp (png, 1);
}

static gboolean
encode_png (png_structp png, png_infop info, PngWriter *writer, const EadImage *image)
{
  if (setjmp (png_jmpbuf (png)))
    return FALSE;

  png_set_write_fn (png, writer, on_png_write, on_png_flush);
  png_set_IHDR (png, info, (png_uint_32) image->width, (png_uint_32) image->height, 8,
                PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                PNG_FILTER_TYPE_DEFAULT);
  png_write_info (png, info);
  for (int y = 0; y < image->height; y++)
    png_write_row (png, image->rgb + (size_t) y * image->width * 3);
  png_write_end (png, info);
  return TRUE;
}

/* Makes a finished rename survive a crash; some file systems cannot sync a directory,
 * and the file itself is already safe, so failures are not errors. */
static void
sync_directory_of (const char *path)
{
  g_autofree char *dir = g_path_get_dirname (path);
  int fd = g_open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);

  if (fd >= 0)
    {
      fsync (fd);
      close (fd);
    }
}

gboolean
ead_image_save_png (const EadImage *image, const char *path, GError **error)
{
  g_autofree char *temp_path = NULL;
  PngWriter writer = { 0 };
  png_structp png;
  png_infop info;
  gboolean ok;
  int fd, saved_errno;

  g_return_val_if_fail (image != NULL && image->rgb != NULL, FALSE);
  g_return_val_if_fail (path != NULL, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  /* Same directory as the target, so that the rename cannot cross file systems. */
  temp_path = g_strdup_printf ("%s.tmp-XXXXXX", path);
  fd = g_mkstemp_full (temp_path, O_WRONLY | O_CLOEXEC, 0666);
  if (fd < 0)
    {
      saved_errno = errno;
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot create a temporary file: %s",
                   path, g_strerror (saved_errno));
      return FALSE;
    }
  writer.file = fdopen (fd, "wb");
  if (writer.file == NULL)
    {
      saved_errno = errno;
      close (fd);
      g_unlink (temp_path);
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot write: %s", path,
                   g_strerror (saved_errno));
      return FALSE;
    }

  png = png_create_write_struct (PNG_LIBPNG_VER_STRING, &writer, on_png_write_error,
                                 on_png_warning);
  info = png != NULL ? png_create_info_struct (png) : NULL;
  ok = info != NULL && encode_png (png, info, &writer, image);
  png_destroy_write_struct (&png, &info);
  if (!ok)
    {
      fclose (writer.file);
      g_unlink (temp_path);
      if (writer.saved_errno != 0)
        g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot write: %s", path,
                     g_strerror (writer.saved_errno));
      else
        g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot encode PNG (libpng: %s)", path,
                     writer.message[0] != '\0' ? writer.message : "out of memory");
      return FALSE;
    }

  if (fflush (writer.file) != 0 || fsync (fd) != 0)
    {
      saved_errno = errno;
      fclose (writer.file);
      g_unlink (temp_path);
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot write: %s", path,
                   g_strerror (saved_errno));
      return FALSE;
    }
  if (fclose (writer.file) != 0)
    {
      saved_errno = errno;
      g_unlink (temp_path);
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot write: %s", path,
                   g_strerror (saved_errno));
      return FALSE;
    }
  if (g_rename (temp_path, path) != 0)
    {
      saved_errno = errno;
      g_unlink (temp_path);
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot rename the temporary file "
                   "into place: %s", path, g_strerror (saved_errno));
      return FALSE;
    }
  sync_directory_of (path);
  return TRUE;
}
