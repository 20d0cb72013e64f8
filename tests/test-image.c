/* test-image.c: image decoding, resizing, network input and heatmap tests.
 *
 * Test files are written here with libpng, libjpeg and libtiff (BMP by hand) into a
 * temporary directory, so every expected pixel is known.  Resizing and the network
 * input are compared with reference data written by fixtures/make-image-fixtures.py
 * (PIL and numpy), found through EAD_TEST_FIXTURES.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>
#include <jpeglib.h>
#include <png.h>
#include <tiffio.h>

#include "ead-error.h"
#include "ead-image.h"
#include "ead-test-util.h"

static char *tmp_dir;

static char *
tmp_path (const char *name)
{
  return g_build_filename (tmp_dir, name, NULL);
}

static void
write_file (const char *path, const void *data, size_t size)
{
  g_autoptr (GError) error = NULL;

  g_file_set_contents (path, data, (gssize) size, &error);
  g_assert_no_error (error);
}

static guint8 *
read_file (const char *path, size_t *size)
{
  g_autoptr (GError) error = NULL;
  char *data;
  gsize length;

  g_file_get_contents (path, &data, &length, &error);
  g_assert_no_error (error);
  *size = length;
  return (guint8 *) data;
}

static EadImage *
load_ok (const char *path, guint64 max_pixels)
{
  g_autoptr (GError) error = NULL;
  EadImage *image = ead_image_load (path, max_pixels, &error);

  g_assert_no_error (error);
  g_assert_nonnull (image);
  return image;
}

static void
assert_load_error (const char *path, guint64 max_pixels, EadError code, const char *fragment)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadImage) image = ead_image_load (path, max_pixels, &error);

  g_assert_null (image);
  g_assert_error (error, EAD_ERROR, (int) code);
  g_test_message ("%s", error->message);
  g_assert_true (g_str_has_prefix (error->message, path));
  if (fragment != NULL && strstr (error->message, fragment) == NULL)
    g_error ("expected \"%s\" in the message \"%s\"", fragment, error->message);
}

static void
assert_pixels (const EadImage *image, int width, int height, const guint8 *expected, int tolerance)
{
  g_assert_cmpint (image->width, ==, width);
  g_assert_cmpint (image->height, ==, height);
  for (size_t i = 0; i < (size_t) width * height * 3; i++)
    if (ABS (image->rgb[i] - expected[i]) > tolerance)
      g_error ("pixel (%zu, %zu) channel %zu: got %u, expected %u (tolerance %d)",
               i / 3 % width, i / 3 / width, i % 3, image->rgb[i], expected[i], tolerance);
}

static void
fill_random (guint16 *samples, size_t n, unsigned max, guint32 seed)
{
  g_autoptr (GRand) rand = g_rand_new_with_seed (seed);

  for (size_t i = 0; i < n; i++)
    samples[i] = (guint16) g_rand_int_range (rand, 0, (gint32) max + 1);
}

static guint8
scale_16 (unsigned v)
{
  return (guint8) ((v * 255 + 32767) / 65535);
}

/* PNG */

typedef struct {
  const char *name;
  int colour_type;
  int bit_depth;
  int interlace;
} PngCase;

static const PngCase png_cases[] = {
  { "grey1", PNG_COLOR_TYPE_GRAY, 1, PNG_INTERLACE_NONE },
  { "grey2", PNG_COLOR_TYPE_GRAY, 2, PNG_INTERLACE_NONE },
  { "grey8", PNG_COLOR_TYPE_GRAY, 8, PNG_INTERLACE_NONE },
  { "grey16", PNG_COLOR_TYPE_GRAY, 16, PNG_INTERLACE_NONE },
  { "grey-alpha8", PNG_COLOR_TYPE_GRAY_ALPHA, 8, PNG_INTERLACE_NONE },
  { "grey-alpha16", PNG_COLOR_TYPE_GRAY_ALPHA, 16, PNG_INTERLACE_NONE },
  { "rgb8", PNG_COLOR_TYPE_RGB, 8, PNG_INTERLACE_NONE },
  { "rgb16", PNG_COLOR_TYPE_RGB, 16, PNG_INTERLACE_NONE },
  { "rgba8", PNG_COLOR_TYPE_RGB_ALPHA, 8, PNG_INTERLACE_NONE },
  { "rgba16", PNG_COLOR_TYPE_RGB_ALPHA, 16, PNG_INTERLACE_NONE },
  { "rgb8-interlaced", PNG_COLOR_TYPE_RGB, 8, PNG_INTERLACE_ADAM7 },
  { "rgba16-interlaced", PNG_COLOR_TYPE_RGB_ALPHA, 16, PNG_INTERLACE_ADAM7 },
  { "palette8", PNG_COLOR_TYPE_PALETTE, 8, PNG_INTERLACE_NONE },
  { "palette4", PNG_COLOR_TYPE_PALETTE, 4, PNG_INTERLACE_NONE },
};

static int
png_channels (int colour_type)
{
  switch (colour_type)
    {
    case PNG_COLOR_TYPE_GRAY_ALPHA:
      return 2;
    case PNG_COLOR_TYPE_RGB:
      return 3;
    case PNG_COLOR_TYPE_RGB_ALPHA:
      return 4;
    default:
      return 1;
    }
}

/* samples: width * height * channels values, one per sample whatever the depth. */
static void
write_png (const char *path,
           int width,
           int height,
           int colour_type,
           int bit_depth,
           int interlace,
           const guint16 *samples,
           const png_color *palette,
           int n_palette)
{
  FILE *file = fopen (path, "wb");
  png_structp png = png_create_write_struct (PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png_create_info_struct (png);
  int channels = png_channels (colour_type);
  size_t row_samples = (size_t) width * channels;
  g_autofree guint8 *row = g_malloc (row_samples * 2);
  int passes;

  g_assert_nonnull (file);
  g_assert_nonnull (info);
  png_init_io (png, file);
  png_set_IHDR (png, info, width, height, bit_depth, colour_type, interlace,
                PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (palette != NULL)
    {
      /* Transparency must be ignored by the decoder, not composited. */
      png_byte trans[4] = { 0, 64, 128, 255 };

      png_set_PLTE (png, info, palette, n_palette);
      png_set_tRNS (png, info, trans, MIN (n_palette, 4), NULL);
    }
  png_write_info (png, info);
  if (bit_depth < 8)
    png_set_packing (png);
  passes = png_set_interlace_handling (png);
  for (int pass = 0; pass < passes; pass++)
    for (int y = 0; y < height; y++)
      {
        const guint16 *src = samples + (size_t) y * row_samples;

        for (size_t i = 0; i < row_samples; i++)
          {
            if (bit_depth == 16)
              {
                row[2 * i] = (guint8) (src[i] >> 8);
                row[2 * i + 1] = (guint8) src[i];
              }
            else
              row[i] = (guint8) src[i];
          }
        png_write_row (png, row);
      }
  png_write_end (png, info);
  png_destroy_write_struct (&png, &info);
  g_assert_cmpint (fclose (file), ==, 0);
}

static void
test_png_formats (void)
{
  const int width = 37, height = 23;

  for (size_t t = 0; t < G_N_ELEMENTS (png_cases); t++)
    {
      const PngCase *c = &png_cases[t];
      int channels = png_channels (c->colour_type);
      size_t n = (size_t) width * height;
      g_autofree guint16 *samples = g_new (guint16, n * channels);
      g_autofree guint8 *expected = g_new (guint8, n * 3);
      g_autofree char *name = g_strdup_printf ("%s.png", c->name);
      g_autofree char *path = tmp_path (name);
      g_autoptr (EadImage) image = NULL;
      png_color palette[16];
      gboolean is_palette = c->colour_type == PNG_COLOR_TYPE_PALETTE;
      int n_palette = 1 << MIN (c->bit_depth, 4);

      g_test_message ("PNG %s", c->name);
      for (int i = 0; i < n_palette; i++)
        palette[i] = (png_color) { (png_byte) (i * 16 + 3), (png_byte) (250 - i * 7),
                                   (png_byte) (i * i) };
      fill_random (samples, n * channels,
                   is_palette ? (unsigned) n_palette - 1 : (1u << c->bit_depth) - 1,
                   (guint32) t + 1);
      for (size_t i = 0; i < n; i++)
        for (int ch = 0; ch < 3; ch++)
          {
            unsigned v = samples[i * channels + (channels >= 3 ? ch : 0)];

            if (is_palette)
              expected[3 * i + ch] = ch == 0 ? palette[v].red : ch == 1 ? palette[v].green
                                                                      : palette[v].blue;
            else if (c->bit_depth == 16)
              expected[3 * i + ch] = scale_16 (v);
            else
              expected[3 * i + ch] = (guint8) (v * 255 / ((1u << c->bit_depth) - 1));
          }
      write_png (path, width, height, c->colour_type, c->bit_depth, c->interlace, samples,
                 is_palette ? palette : NULL, n_palette);
      image = load_ok (path, 0);
      assert_pixels (image, width, height, expected, 0);
    }
}

/* Every 16-bit value once: the scaling to 8 bits must round exactly. */
static void
test_png_16bit_all_values (void)
{
  g_autofree guint16 *samples = g_new (guint16, 65536);
  g_autofree guint8 *expected = g_new (guint8, 65536 * 3);
  g_autofree char *path = tmp_path ("all16.png");
  g_autoptr (EadImage) image = NULL;

  for (unsigned v = 0; v < 65536; v++)
    {
      samples[v] = (guint16) v;
      expected[3 * v] = expected[3 * v + 1] = expected[3 * v + 2] = scale_16 (v);
    }
  g_assert_cmpuint (scale_16 (32767), ==, 127);
  g_assert_cmpuint (scale_16 (32768), ==, 128);
  g_assert_cmpuint (scale_16 (65535), ==, 255);
  write_png (path, 256, 256, PNG_COLOR_TYPE_GRAY, 16, PNG_INTERLACE_NONE, samples, NULL, 0);
  image = load_ok (path, 0);
  assert_pixels (image, 256, 256, expected, 0);
}

static guint8 *
make_rgb_png (const char *path, int width, int height, guint32 seed, size_t *size)
{
  g_autofree guint16 *samples = g_new (guint16, (size_t) width * height * 3);

  fill_random (samples, (size_t) width * height * 3, 255, seed);
  write_png (path, width, height, PNG_COLOR_TYPE_RGB, 8, PNG_INTERLACE_NONE, samples, NULL, 0);
  return read_file (path, size);
}

static void
test_png_truncated (void)
{
  g_autofree char *good = tmp_path ("whole.png");
  g_autofree char *cut = tmp_path ("truncated.png");
  g_autofree char *no_end = tmp_path ("no-iend.png");
  size_t size;
  g_autofree guint8 *data = make_rgb_png (good, 64, 64, 7, &size);

  write_file (cut, data, size / 2);
  assert_load_error (cut, 0, EAD_ERROR_FORMAT, "truncated PNG data");
  /* Only the IEND chunk missing: the file is still cut short. */
  write_file (no_end, data, size - 12);
  assert_load_error (no_end, 0, EAD_ERROR_FORMAT, "truncated PNG data");
}

static void
test_png_corrupt (void)
{
  g_autofree char *path = tmp_path ("corrupt.png");
  size_t size;
  g_autofree guint8 *data = make_rgb_png (path, 64, 64, 8, &size);

  /* Flip bits inside the IDAT payload: the chunk CRC no longer matches. */
  data[size / 2] ^= 0x55;
  write_file (path, data, size);
  assert_load_error (path, 0, EAD_ERROR_FORMAT, "corrupt PNG data");
}

static guint32
crc32_of (const guint8 *data, size_t n)
{
  guint32 crc = 0xffffffff;

  for (size_t i = 0; i < n; i++)
    {
      crc ^= data[i];
      for (int k = 0; k < 8; k++)
        crc = (crc >> 1) ^ (0xedb88320 & -(crc & 1));
    }
  return ~crc;
}

static void
store_be32 (guint8 *p, guint32 v)
{
  p[0] = (guint8) (v >> 24);
  p[1] = (guint8) (v >> 16);
  p[2] = (guint8) (v >> 8);
  p[3] = (guint8) v;
}

/* The signature and a valid IHDR chunk, nothing else. */
static void
test_png_huge_header (void)
{
  g_autofree char *path = tmp_path ("huge.png");
  guint8 data[33] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n' };
  gint64 start;

  store_be32 (data + 8, 13);
  memcpy (data + 12, "IHDR", 4);
  store_be32 (data + 16, 60000);
  store_be32 (data + 20, 60000);
  data[24] = 8;  /* bit depth */
  data[25] = 2;  /* RGB */
  store_be32 (data + 29, crc32_of (data + 12, 17));
  write_file (path, data, sizeof data);

  start = g_get_monotonic_time ();
  assert_load_error (path, 0, EAD_ERROR_LIMIT, "60000x60000");
  g_assert_cmpint (g_get_monotonic_time () - start, <, G_USEC_PER_SEC);
  /* With a limit above its size, the same header is a truncated file. */
  assert_load_error (path, G_GUINT64_CONSTANT (4000000000), EAD_ERROR_FORMAT, "truncated");
}

static void
test_pixel_limit (void)
{
  g_autofree char *path = tmp_path ("limit.png");
  size_t size;
  g_autoptr (EadImage) image = NULL;

  g_free (make_rgb_png (path, 37, 23, 9, &size));
  assert_load_error (path, 37 * 23 - 1, EAD_ERROR_LIMIT, "over the limit");
  image = load_ok (path, 37 * 23);
  g_assert_cmpint (image->width, ==, 37);
}

/* JPEG */

static guint8 *
encode_jpeg (const guint8 *pixels, int width, int height, int components, gboolean progressive,
             size_t *size)
{
  struct jpeg_compress_struct cinfo;
  struct jpeg_error_mgr err;
  unsigned char *buffer = NULL;
  unsigned long length = 0;
  guint8 *result;

  cinfo.err = jpeg_std_error (&err);
  jpeg_create_compress (&cinfo);
  jpeg_mem_dest (&cinfo, &buffer, &length);
  cinfo.image_width = (JDIMENSION) width;
  cinfo.image_height = (JDIMENSION) height;
  cinfo.input_components = components;
  cinfo.in_color_space = components == 1 ? JCS_GRAYSCALE : components == 4 ? JCS_CMYK : JCS_RGB;
  jpeg_set_defaults (&cinfo);
  jpeg_set_quality (&cinfo, 95, TRUE);
  if (progressive)
    jpeg_simple_progression (&cinfo);
  jpeg_start_compress (&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height)
    {
      JSAMPROW row = (JSAMPROW) pixels + (size_t) cinfo.next_scanline * width * components;

      jpeg_write_scanlines (&cinfo, &row, 1);
    }
  jpeg_finish_compress (&cinfo);
  jpeg_destroy_compress (&cinfo);
  result = g_memdup2 (buffer, length);
  free (buffer);
  *size = length;
  return result;
}

/* Smooth content, so that a high-quality JPEG stays close to it. */
static guint8 *
smooth_rgb (int width, int height)
{
  guint8 *pixels = g_new (guint8, (size_t) width * height * 3);

  for (int y = 0; y < height; y++)
    for (int x = 0; x < width; x++)
      {
        guint8 *p = pixels + ((size_t) y * width + x) * 3;

        p[0] = (guint8) (x * 255 / (width - 1));
        p[1] = (guint8) (y * 255 / (height - 1));
        p[2] = (guint8) (128 + 100 * sin ((x + y) / 20.0));
      }
  return pixels;
}

static void
test_jpeg_decode (void)
{
  const int width = 67, height = 45;
  g_autofree guint8 *rgb = smooth_rgb (width, height);
  g_autofree guint8 *grey = g_new (guint8, (size_t) width * height);
  g_autofree guint8 *grey_rgb = g_new (guint8, (size_t) width * height * 3);

  for (size_t i = 0; i < (size_t) width * height; i++)
    {
      grey[i] = rgb[3 * i + 2];
      grey_rgb[3 * i] = grey_rgb[3 * i + 1] = grey_rgb[3 * i + 2] = grey[i];
    }
  for (int progressive = 0; progressive <= 1; progressive++)
    {
      g_autofree char *rgb_path = tmp_path (progressive ? "rgb-progressive.jpg" : "rgb.jpg");
      g_autofree char *grey_path = tmp_path (progressive ? "grey-progressive.jpg" : "grey.jpg");
      size_t size;
      g_autofree guint8 *rgb_jpeg = encode_jpeg (rgb, width, height, 3, progressive, &size);
      g_autoptr (EadImage) rgb_image = NULL;
      g_autoptr (EadImage) grey_image = NULL;
      g_autofree guint8 *grey_jpeg = NULL;
      double sum = 0;

      write_file (rgb_path, rgb_jpeg, size);
      rgb_image = load_ok (rgb_path, 0);
      /* Quality 95 with chroma subsampling on smooth content. */
      assert_pixels (rgb_image, width, height, rgb, 12);
      for (size_t i = 0; i < (size_t) width * height * 3; i++)
        sum += ABS (rgb_image->rgb[i] - rgb[i]);
      g_assert_cmpfloat (sum / (width * height * 3), <, 1.5);

      grey_jpeg = encode_jpeg (grey, width, height, 1, progressive, &size);
      write_file (grey_path, grey_jpeg, size);
      grey_image = load_ok (grey_path, 0);
      assert_pixels (grey_image, width, height, grey_rgb, 4);
      for (size_t i = 0; i < (size_t) width * height; i++)
        {
          g_assert_cmpuint (grey_image->rgb[3 * i], ==, grey_image->rgb[3 * i + 1]);
          g_assert_cmpuint (grey_image->rgb[3 * i], ==, grey_image->rgb[3 * i + 2]);
        }
    }
}

static guint8 *
noisy_jpeg (size_t *size, size_t *scan_start)
{
  const int width = 96, height = 64;
  g_autofree guint16 *samples = g_new (guint16, (size_t) width * height * 3);
  g_autofree guint8 *pixels = g_new (guint8, (size_t) width * height * 3);
  guint8 *jpeg;

  fill_random (samples, (size_t) width * height * 3, 255, 11);
  for (size_t i = 0; i < (size_t) width * height * 3; i++)
    pixels[i] = (guint8) samples[i];
  jpeg = encode_jpeg (pixels, width, height, 3, FALSE, size);
  for (size_t i = 2; i + 3 < *size; i++)
    if (jpeg[i] == 0xff && jpeg[i + 1] == 0xda)
      {
        *scan_start = i + 2 + (size_t) (jpeg[i + 2] << 8 | jpeg[i + 3]);
        return jpeg;
      }
  g_assert_not_reached ();
}

static void
test_jpeg_truncated (void)
{
  g_autofree char *path = tmp_path ("truncated.jpg");
  size_t size, scan_start;
  g_autofree guint8 *jpeg = noisy_jpeg (&size, &scan_start);

  write_file (path, jpeg, scan_start + (size - scan_start) / 2);
  assert_load_error (path, 0, EAD_ERROR_FORMAT, "truncated JPEG data");
  /* Only the last rows missing. */
  write_file (path, jpeg, size - 40);
  assert_load_error (path, 0, EAD_ERROR_FORMAT, "truncated JPEG data");
  /* Nothing after the headers. */
  write_file (path, jpeg, scan_start);
  assert_load_error (path, 0, EAD_ERROR_FORMAT, "truncated JPEG data");
}

static void
test_jpeg_garbage (void)
{
  g_autofree char *path = tmp_path ("garbage.jpg");
  size_t size, scan_start;
  g_autofree guint8 *jpeg = noisy_jpeg (&size, &scan_start);
  size_t middle = scan_start + (size - scan_start) / 2;
  g_autoptr (GByteArray) inserted = g_byte_array_new ();
  g_autoptr (GRand) rand = g_rand_new_with_seed (5);
  guint8 garbage[48];

  /* Garbage without 0xff bytes, so that it is no marker but bad entropy-coded data. */
  for (size_t i = 0; i < sizeof garbage; i++)
    garbage[i] = (guint8) g_rand_int_range (rand, 0, 255);

  memcpy (jpeg + middle, garbage, sizeof garbage);
  write_file (path, jpeg, size);
  assert_load_error (path, 0, EAD_ERROR_FORMAT, "corrupt JPEG data");

  g_free (jpeg);
  jpeg = noisy_jpeg (&size, &scan_start);
  g_byte_array_append (inserted, jpeg, (guint) middle);
  g_byte_array_append (inserted, garbage, sizeof garbage);
  g_byte_array_append (inserted, jpeg + middle, (guint) (size - middle));
  write_file (path, inserted->data, inserted->len);
  assert_load_error (path, 0, EAD_ERROR_FORMAT, "corrupt JPEG data");

  /* A marker that does not belong in the middle of the scan. */
  g_free (jpeg);
  jpeg = noisy_jpeg (&size, &scan_start);
  jpeg[middle] = 0xff;
  jpeg[middle + 1] = 0xd9;
  write_file (path, jpeg, size);
  assert_load_error (path, 0, EAD_ERROR_FORMAT, "JPEG data");
}

static void
test_jpeg_huge_header (void)
{
  g_autofree char *path = tmp_path ("huge.jpg");
  size_t size, scan_start;
  g_autofree guint8 *jpeg = noisy_jpeg (&size, &scan_start);

  for (size_t i = 2; i + 8 < size; i++)
    if (jpeg[i] == 0xff && jpeg[i + 1] == 0xc0)
      {
        jpeg[i + 5] = 60000 >> 8;
        jpeg[i + 6] = 60000 & 0xff;
        jpeg[i + 7] = 60000 >> 8;
        jpeg[i + 8] = 60000 & 0xff;
        break;
      }
  write_file (path, jpeg, size);
  assert_load_error (path, 0, EAD_ERROR_LIMIT, "60000x60000");
}

static void
test_jpeg_cmyk (void)
{
  g_autofree char *path = tmp_path ("cmyk.jpg");
  g_autofree guint8 *pixels = g_malloc0 (16 * 8 * 4);
  size_t size;
  g_autofree guint8 *jpeg = encode_jpeg (pixels, 16, 8, 4, FALSE, &size);

  write_file (path, jpeg, size);
  assert_load_error (path, 0, EAD_ERROR_UNSUPPORTED, "CMYK");
}

/* TIFF */

typedef struct {
  const char *name;
  int bits;
  int samples_per_pixel;
  int photometric;
  int planar;
  gboolean tiled;
  int compression;
  gboolean big_endian;
} TiffCase;

static const TiffCase tiff_cases[] = {
  { "grey8", 8, 1, PHOTOMETRIC_MINISBLACK, PLANARCONFIG_CONTIG, FALSE, COMPRESSION_NONE, FALSE },
  { "grey16", 16, 1, PHOTOMETRIC_MINISBLACK, PLANARCONFIG_CONTIG, FALSE, COMPRESSION_NONE, FALSE },
  { "grey16-be", 16, 1, PHOTOMETRIC_MINISBLACK, PLANARCONFIG_CONTIG, FALSE, COMPRESSION_NONE, TRUE },
  { "white-is-zero8", 8, 1, PHOTOMETRIC_MINISWHITE, PLANARCONFIG_CONTIG, FALSE, COMPRESSION_NONE, FALSE },
  { "white-is-zero16", 16, 1, PHOTOMETRIC_MINISWHITE, PLANARCONFIG_CONTIG, FALSE, COMPRESSION_NONE, FALSE },
  { "grey-alpha8", 8, 2, PHOTOMETRIC_MINISBLACK, PLANARCONFIG_CONTIG, FALSE, COMPRESSION_LZW, FALSE },
  { "rgb8", 8, 3, PHOTOMETRIC_RGB, PLANARCONFIG_CONTIG, FALSE, COMPRESSION_NONE, FALSE },
  { "rgb8-lzw", 8, 3, PHOTOMETRIC_RGB, PLANARCONFIG_CONTIG, FALSE, COMPRESSION_LZW, FALSE },
  { "rgb8-deflate-be", 8, 3, PHOTOMETRIC_RGB, PLANARCONFIG_CONTIG, FALSE, COMPRESSION_ADOBE_DEFLATE, TRUE },
  { "rgb16", 16, 3, PHOTOMETRIC_RGB, PLANARCONFIG_CONTIG, FALSE, COMPRESSION_NONE, FALSE },
  { "rgb16-be", 16, 3, PHOTOMETRIC_RGB, PLANARCONFIG_CONTIG, FALSE, COMPRESSION_NONE, TRUE },
  { "rgba8", 8, 4, PHOTOMETRIC_RGB, PLANARCONFIG_CONTIG, FALSE, COMPRESSION_NONE, FALSE },
  { "rgba16", 16, 4, PHOTOMETRIC_RGB, PLANARCONFIG_CONTIG, FALSE, COMPRESSION_LZW, FALSE },
  { "rgb8-planar", 8, 3, PHOTOMETRIC_RGB, PLANARCONFIG_SEPARATE, FALSE, COMPRESSION_LZW, FALSE },
  { "rgb16-planar", 16, 3, PHOTOMETRIC_RGB, PLANARCONFIG_SEPARATE, FALSE, COMPRESSION_NONE, FALSE },
  { "rgb8-tiled", 8, 3, PHOTOMETRIC_RGB, PLANARCONFIG_CONTIG, TRUE, COMPRESSION_NONE, FALSE },
  { "rgba16-tiled", 16, 4, PHOTOMETRIC_RGB, PLANARCONFIG_CONTIG, TRUE, COMPRESSION_ADOBE_DEFLATE, FALSE },
  { "rgb8-tiled-planar", 8, 3, PHOTOMETRIC_RGB, PLANARCONFIG_SEPARATE, TRUE, COMPRESSION_NONE, FALSE },
  { "palette8", 8, 1, PHOTOMETRIC_PALETTE, PLANARCONFIG_CONTIG, FALSE, COMPRESSION_NONE, FALSE },
  { "bilevel", 1, 1, PHOTOMETRIC_MINISBLACK, PLANARCONFIG_CONTIG, FALSE, COMPRESSION_NONE, FALSE },
};

/* samples: width * height * samples_per_pixel values, pixel-interleaved. */
static void
write_tiff (const char *path, const TiffCase *c, int width, int height, const guint16 *samples)
{
  TIFF *tif = TIFFOpen (path, c->big_endian ? "wb" : "wl");
  int spp = c->samples_per_pixel;
  int bytes = c->bits == 16 ? 2 : 1;
  int planes = c->planar == PLANARCONFIG_SEPARATE ? spp : 1;
  int step = planes > 1 ? 1 : spp;

  g_assert_nonnull (tif);
  TIFFSetField (tif, TIFFTAG_IMAGEWIDTH, (uint32_t) width);
  TIFFSetField (tif, TIFFTAG_IMAGELENGTH, (uint32_t) height);
  TIFFSetField (tif, TIFFTAG_BITSPERSAMPLE, (uint16_t) c->bits);
  TIFFSetField (tif, TIFFTAG_SAMPLESPERPIXEL, (uint16_t) spp);
  TIFFSetField (tif, TIFFTAG_PHOTOMETRIC, (uint16_t) c->photometric);
  TIFFSetField (tif, TIFFTAG_PLANARCONFIG, (uint16_t) c->planar);
  TIFFSetField (tif, TIFFTAG_COMPRESSION, (uint16_t) c->compression);
  if (spp == 2 || spp == 4)
    {
      uint16_t extra = EXTRASAMPLE_UNASSALPHA;

      TIFFSetField (tif, TIFFTAG_EXTRASAMPLES, (uint16_t) 1, &extra);
    }
  if (c->photometric == PHOTOMETRIC_PALETTE)
    {
      uint16_t map[3][256];

      for (int i = 0; i < 256; i++)
        {
          map[0][i] = (uint16_t) (i * 257);
          map[1][i] = (uint16_t) ((255 - i) * 257);
          map[2][i] = (uint16_t) ((i * 7 % 256) * 257);
        }
      TIFFSetField (tif, TIFFTAG_COLORMAP, map[0], map[1], map[2]);
    }

  if (c->tiled)
    {
      const int tw = 16, th = 16;
      g_autofree guint8 *tile = g_malloc0 ((size_t) tw * th * step * bytes);

      TIFFSetField (tif, TIFFTAG_TILEWIDTH, (uint32_t) tw);
      TIFFSetField (tif, TIFFTAG_TILELENGTH, (uint32_t) th);
      for (int plane = 0; plane < planes; plane++)
        for (int ty = 0; ty < height; ty += th)
          for (int tx = 0; tx < width; tx += tw)
            {
              for (int r = 0; r < th; r++)
                for (int col = 0; col < tw; col++)
                  for (int s = 0; s < step; s++)
                    {
                      int x = MIN (tx + col, width - 1), y = MIN (ty + r, height - 1);
                      guint16 v = samples[((size_t) y * width + x) * spp + (planes > 1 ? plane : s)];
                      size_t at = ((size_t) r * tw + col) * step + s;

                      if (bytes == 2)
                        memcpy (tile + 2 * at, &v, 2);
                      else
                        tile[at] = (guint8) v;
                    }
              g_assert_cmpint (TIFFWriteTile (tif, tile, tx, ty, 0, (uint16_t) plane), >, 0);
            }
    }
  else
    {
      g_autofree guint8 *row = g_malloc0 ((size_t) width * step * bytes + 1);

      TIFFSetField (tif, TIFFTAG_ROWSPERSTRIP, (uint32_t) 5);
      for (int plane = 0; plane < planes; plane++)
        for (int y = 0; y < height; y++)
          {
            memset (row, 0, (size_t) width * step * bytes + 1);
            for (int x = 0; x < width; x++)
              for (int s = 0; s < step; s++)
                {
                  guint16 v = samples[((size_t) y * width + x) * spp + (planes > 1 ? plane : s)];
                  size_t at = (size_t) x * step + s;

                  if (c->bits == 1)
                    row[at / 8] |= (guint8) (v << (7 - at % 8));
                  else if (bytes == 2)
                    memcpy (row + 2 * at, &v, 2);
                  else
                    row[at] = (guint8) v;
                }
            g_assert_cmpint (TIFFWriteScanline (tif, row, (uint32_t) y, (uint16_t) plane), ==, 1);
          }
    }
  TIFFClose (tif);
}

static void
test_tiff_formats (void)
{
  const int width = 37, height = 23;

  for (size_t t = 0; t < G_N_ELEMENTS (tiff_cases); t++)
    {
      const TiffCase *c = &tiff_cases[t];
      size_t n = (size_t) width * height;
      int spp = c->samples_per_pixel;
      g_autofree guint16 *samples = g_new (guint16, n * spp);
      g_autofree guint8 *expected = g_new (guint8, n * 3);
      g_autofree char *name = g_strdup_printf ("%s.tif", c->name);
      g_autofree char *path = tmp_path (name);
      g_autoptr (EadImage) image = NULL;

      g_test_message ("TIFF %s", c->name);
      fill_random (samples, n * spp, (1u << c->bits) - 1, (guint32) t + 100);
      for (size_t i = 0; i < n; i++)
        for (int ch = 0; ch < 3; ch++)
          {
            unsigned v = samples[i * spp + (spp >= 3 ? ch : 0)];
            unsigned e = c->bits == 16 ? scale_16 (v) : c->bits == 1 ? v * 255 : v;

            if (c->photometric == PHOTOMETRIC_MINISWHITE)
              e = 255 - e;
            if (c->photometric == PHOTOMETRIC_PALETTE)
              e = ch == 0 ? v : ch == 1 ? 255 - v : v * 7 % 256;
            expected[3 * i + ch] = (guint8) e;
          }
      write_tiff (path, c, width, height, samples);
      image = load_ok (path, 0);
      assert_pixels (image, width, height, expected, 0);
    }
}

static guint32
get_le (const guint8 *p, int bytes)
{
  guint32 v = 0;

  for (int i = bytes - 1; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}

static void
set_le (guint8 *p, int bytes, guint32 v)
{
  for (int i = 0; i < bytes; i++, v >>= 8)
    p[i] = (guint8) v;
}

/* Rewrites element index of a tag in a little-endian classic TIFF, wherever the
 * values are stored. */
static void
patch_tiff_tag (guint8 *data, size_t size, guint16 tag, guint32 index, guint32 value)
{
  guint32 ifd = get_le (data + 4, 4);
  guint32 n = get_le (data + ifd, 2);

  g_assert_cmpuint (ifd + 2 + 12u * n, <=, size);
  for (guint32 i = 0; i < n; i++)
    {
      guint8 *entry = data + ifd + 2 + 12 * i;
      guint32 type = get_le (entry + 2, 2);
      guint32 count = get_le (entry + 4, 4);
      int width = type == TIFF_SHORT ? 2 : 4;
      guint8 *values;

      if (get_le (entry, 2) != tag)
        continue;
      g_assert_true (type == TIFF_SHORT || type == TIFF_LONG);
      g_assert_cmpuint (index, <, count);
      values = count * width <= 4 ? entry + 8 : data + get_le (entry + 8, 4);
      set_le (values + (size_t) width * index, width, value);
      return;
    }
  g_assert_not_reached ();
}

static void
test_tiff_bad (void)
{
  const TiffCase *c = &tiff_cases[6];  /* rgb8, uncompressed, strips of 5 rows */
  g_autofree guint16 *samples = g_new0 (guint16, 64 * 64 * 3);
  g_autofree char *path = tmp_path ("bad.tif");
  g_autofree guint8 *data = NULL;
  g_autofree guint8 *copy = NULL;
  size_t size;

  g_assert_cmpstr (c->name, ==, "rgb8");
  write_tiff (path, c, 64, 64, samples);
  assert_load_error (path, 64 * 64 - 1, EAD_ERROR_LIMIT, "64x64");
  data = read_file (path, &size);

  /* The last strip starting just before the end of the file. */
  copy = g_memdup2 (data, size);
  patch_tiff_tag (copy, size, TIFFTAG_STRIPOFFSETS, 64 / 5, (guint32) size - 10);
  write_file (path, copy, size);
  assert_load_error (path, 0, EAD_ERROR_FORMAT, "TIFF data");

  memcpy (copy, data, size);
  patch_tiff_tag (copy, size, TIFFTAG_IMAGEWIDTH, 0, 60000);
  patch_tiff_tag (copy, size, TIFFTAG_IMAGELENGTH, 0, 60000);
  write_file (path, copy, size);
  assert_load_error (path, 0, EAD_ERROR_LIMIT, "60000x60000");

  /* libtiff writes the directory last: cutting the file loses it. */
  write_file (path, data, size / 2);
  assert_load_error (path, 0, EAD_ERROR_FORMAT, "TIFF data");
  write_file (path, data, 6);
  assert_load_error (path, 0, EAD_ERROR_FORMAT, "TIFF data");
}

/* BMP, written by hand */

static void
put_le16 (GByteArray *b, unsigned v)
{
  guint8 bytes[2] = { (guint8) v, (guint8) (v >> 8) };

  g_byte_array_append (b, bytes, 2);
}

static void
put_le32 (GByteArray *b, guint32 v)
{
  guint8 bytes[4] = { (guint8) v, (guint8) (v >> 8), (guint8) (v >> 16), (guint8) (v >> 24) };

  g_byte_array_append (b, bytes, 4);
}

typedef struct {
  const char *name;
  int bits;
  guint32 header_size;
  guint32 compression;
  gboolean top_down;
  guint32 masks[3];
} BmpCase;

static const BmpCase bmp_cases[] = {
  { "bmp1", 1, 40, 0, FALSE, { 0 } },
  { "bmp4", 4, 40, 0, FALSE, { 0 } },
  { "bmp8", 8, 40, 0, FALSE, { 0 } },
  { "bmp8-top-down", 8, 40, 0, TRUE, { 0 } },
  { "bmp8-core", 8, 12, 0, FALSE, { 0 } },
  { "bmp16-555", 16, 40, 0, FALSE, { 0x7c00, 0x03e0, 0x001f } },
  { "bmp16-565", 16, 40, 3, FALSE, { 0xf800, 0x07e0, 0x001f } },
  { "bmp24", 24, 40, 0, FALSE, { 0 } },
  { "bmp24-top-down-v5", 24, 124, 0, TRUE, { 0 } },
  { "bmp32", 32, 40, 0, FALSE, { 0xff0000, 0xff00, 0xff } },
  { "bmp32-bitfields", 32, 40, 3, FALSE, { 0xff000000, 0xff0000, 0xff00 } },
  { "bmp32-v4-bitfields", 32, 108, 3, TRUE, { 0xff, 0xff00, 0xff0000 } },
  { "bmp32-v5-10bit", 32, 124, 3, FALSE, { 0x3ff00000, 0x000ffc00, 0x000003ff } },
};

static guint8
mask_to_8 (guint32 pixel, guint32 mask)
{
  int shift = __builtin_ctz (mask);
  guint64 max = mask >> shift, v = (pixel & mask) >> shift;

  return (guint8) ((v * 255 + max / 2) / max);
}

/* Builds the file and the pixels a decoder must produce from it. */
static GByteArray *
build_bmp (const BmpCase *c, int width, int height, guint32 seed, guint8 *expected)
{
  GByteArray *b = g_byte_array_new ();
  g_autoptr (GRand) rand = g_rand_new_with_seed (seed);
  size_t stride = ((size_t) width * c->bits + 31) / 32 * 4;
  int n_colours = c->bits <= 8 ? 1 << c->bits : 0;
  int entry = c->header_size == 12 ? 3 : 4;
  gboolean masks_after = c->header_size == 40 && c->compression == 3;
  guint32 offset = 14 + c->header_size + (masks_after ? 12 : 0) + n_colours * entry;
  guint8 palette[256][3];

  g_byte_array_append (b, (const guint8 *) "BM", 2);
  put_le32 (b, offset + (guint32) (stride * height));
  put_le32 (b, 0);
  put_le32 (b, offset);
  put_le32 (b, c->header_size);
  if (c->header_size == 12)
    {
      put_le16 (b, (unsigned) width);
      put_le16 (b, (unsigned) height);
      put_le16 (b, 1);
      put_le16 (b, (unsigned) c->bits);
    }
  else
    {
      put_le32 (b, (guint32) width);
      put_le32 (b, (guint32) (c->top_down ? -height : height));
      put_le16 (b, 1);
      put_le16 (b, (unsigned) c->bits);
      put_le32 (b, c->compression);
      put_le32 (b, (guint32) (stride * height));
      put_le32 (b, 2835);
      put_le32 (b, 2835);
      put_le32 (b, 0);
      put_le32 (b, 0);
      for (int i = 0; i < 3 && (masks_after || c->header_size > 40); i++)
        put_le32 (b, c->compression == 3 ? c->masks[i] : 0);
      while (b->len < 14 + c->header_size)
        put_le32 (b, 0);
    }
  for (int i = 0; i < n_colours; i++)
    {
      guint8 bgrx[4];

      palette[i][0] = (guint8) g_rand_int (rand);
      palette[i][1] = (guint8) g_rand_int (rand);
      palette[i][2] = (guint8) g_rand_int (rand);
      bgrx[0] = palette[i][2];
      bgrx[1] = palette[i][1];
      bgrx[2] = palette[i][0];
      bgrx[3] = 0;
      g_byte_array_append (b, bgrx, entry);
    }
  g_assert_cmpuint (b->len, ==, offset);

  for (int row = 0; row < height; row++)
    {
      int y = c->top_down ? row : height - 1 - row;
      g_autofree guint8 *bytes = g_malloc0 (stride);

      for (int x = 0; x < width; x++)
        {
          guint8 *e = expected + ((size_t) y * width + x) * 3;
          guint32 v = g_rand_int (rand);

          switch (c->bits)
            {
            case 1:
            case 4:
            case 8:
              v &= (guint32) n_colours - 1;
              bytes[x * c->bits / 8] |= (guint8) (v << (8 - c->bits - x * c->bits % 8));
              memcpy (e, palette[v], 3);
              break;
            case 24:
              bytes[3 * x] = (guint8) v;
              bytes[3 * x + 1] = (guint8) (v >> 8);
              bytes[3 * x + 2] = (guint8) (v >> 16);
              e[0] = (guint8) (v >> 16);
              e[1] = (guint8) (v >> 8);
              e[2] = (guint8) v;
              break;
            default:
              for (int k = 0; k < c->bits / 8; k++)
                bytes[(size_t) x * c->bits / 8 + k] = (guint8) (v >> (8 * k));
              if (c->bits == 16)
                v &= 0xffff;
              for (int ch = 0; ch < 3; ch++)
                e[ch] = mask_to_8 (v, c->masks[ch]);
              break;
            }
        }
      g_byte_array_append (b, bytes, (guint) stride);
    }
  return b;
}

static void
test_bmp_formats (void)
{
  const int width = 13, height = 7;

  for (size_t t = 0; t < G_N_ELEMENTS (bmp_cases); t++)
    {
      const BmpCase *c = &bmp_cases[t];
      g_autofree guint8 *expected = g_new0 (guint8, (size_t) width * height * 3);
      g_autoptr (GByteArray) bmp = build_bmp (c, width, height, (guint32) t + 200, expected);
      g_autofree char *name = g_strdup_printf ("%s.bmp", c->name);
      g_autofree char *path = tmp_path (name);
      g_autoptr (EadImage) image = NULL;

      g_test_message ("BMP %s", c->name);
      write_file (path, bmp->data, bmp->len);
      image = load_ok (path, 0);
      assert_pixels (image, width, height, expected, 0);
    }
}

static void
test_bmp_bad (void)
{
  g_autofree guint8 *expected = g_new0 (guint8, 13 * 7 * 3);
  g_autoptr (GByteArray) bmp = build_bmp (&bmp_cases[7], 13, 7, 1, expected);  /* 24-bit */
  g_autofree char *path = tmp_path ("bad.bmp");
  g_autofree guint8 *copy = NULL;

  write_file (path, bmp->data, bmp->len - 41);
  assert_load_error (path, 0, EAD_ERROR_FORMAT, "truncated BMP data");
  /* The last row's padding may be missing. */
  write_file (path, bmp->data, bmp->len - 1);
  ead_image_free (load_ok (path, 0));
  write_file (path, bmp->data, 20);
  assert_load_error (path, 0, EAD_ERROR_FORMAT, "truncated BMP data");

  copy = g_memdup2 (bmp->data, bmp->len);
  copy[30] = 1;  /* BI_RLE8 */
  write_file (path, copy, bmp->len);
  assert_load_error (path, 0, EAD_ERROR_UNSUPPORTED, "RLE");

  memcpy (copy, bmp->data, bmp->len);
  copy[14] = 41;  /* header size */
  write_file (path, copy, bmp->len);
  assert_load_error (path, 0, EAD_ERROR_FORMAT, "header size");

  memcpy (copy, bmp->data, bmp->len);
  copy[10] = 0xf0;  /* pixel data offset */
  copy[11] = 0xff;
  copy[12] = 0xff;
  copy[13] = 0xff;
  write_file (path, copy, bmp->len);
  assert_load_error (path, 0, EAD_ERROR_FORMAT, "truncated BMP data");

  /* 60000x60000 without the pixels: over the limit first, and truncated. */
  memcpy (copy, bmp->data, bmp->len);
  copy[18] = copy[22] = 60000 & 0xff;
  copy[19] = copy[23] = 60000 >> 8;
  write_file (path, copy, bmp->len);
  assert_load_error (path, 0, EAD_ERROR_LIMIT, "60000x60000");
  assert_load_error (path, G_MAXUINT64, EAD_ERROR_FORMAT, "truncated BMP data");

  memcpy (copy, bmp->data, bmp->len);
  copy[28] = 7;  /* bits per pixel */
  write_file (path, copy, bmp->len);
  assert_load_error (path, 0, EAD_ERROR_UNSUPPORTED, "7 bits");

  memcpy (copy, bmp->data, bmp->len);
  copy[18] = copy[19] = copy[20] = copy[21] = 0;  /* width */
  write_file (path, copy, bmp->len);
  assert_load_error (path, 0, EAD_ERROR_FORMAT, "dimensions");

  write_file (path, bmp->data, bmp->len);
  assert_load_error (path, 13 * 7 - 1, EAD_ERROR_LIMIT, "13x7");
}

/* Files that are no images at all */

static void
test_bad_files (void)
{
  g_autofree char *missing = tmp_path ("missing.png");
  g_autofree char *empty = tmp_path ("empty.png");
  g_autofree char *text = tmp_path ("text.png");
  g_autofree char *unreadable = tmp_path ("unreadable.png");
  g_autofree char *fifo = tmp_path ("fifo.png");
  const char *words = "This is a text file, not a PNG.\n";
  g_autoptr (GError) error = NULL;
  g_autoptr (EadImage) image = NULL;

  assert_load_error (missing, 0, EAD_ERROR_IO, "No such file");
  assert_load_error (tmp_dir, 0, EAD_ERROR_IO, "directory");
  write_file (empty, "", 0);
  assert_load_error (empty, 0, EAD_ERROR_FORMAT, "empty");
  write_file (text, words, strlen (words));
  assert_load_error (text, 0, EAD_ERROR_FORMAT, "not an image");

  image = ead_image_load_from_memory ("buffer", words, 2, 0, &error);
  g_assert_null (image);
  g_assert_error (error, EAD_ERROR, EAD_ERROR_FORMAT);
  g_assert_true (g_str_has_prefix (error->message, "buffer: "));

  g_assert_cmpint (mkfifo (fifo, 0600), ==, 0);
  assert_load_error (fifo, 0, EAD_ERROR_IO, "not a regular file");

  write_file (unreadable, words, strlen (words));
  g_assert_cmpint (g_chmod (unreadable, 0), ==, 0);
  if (access (unreadable, R_OK) == 0)
    g_test_message ("running with privileges that ignore permissions: unreadable file not tested");
  else
    assert_load_error (unreadable, 0, EAD_ERROR_IO, "Permission denied");
}

/* Writing */

static void
test_save_png (void)
{
  g_autofree char *path = tmp_path ("saved.png");
  g_autofree char *bad = g_build_filename (tmp_dir, "no-such-dir", "x.png", NULL);
  g_autoptr (EadImage) image = ead_image_new (31, 17);
  g_autoptr (EadImage) loaded = NULL;
  g_autoptr (GError) error = NULL;
  g_autoptr (GDir) dir = NULL;
  const char *entry;

  for (size_t i = 0; i < 31 * 17 * 3; i++)
    image->rgb[i] = (guint8) (i * 7 + i / 5);
  g_assert_true (ead_image_save_png (image, path, &error));
  g_assert_no_error (error);
  loaded = load_ok (path, 0);
  assert_pixels (loaded, 31, 17, image->rgb, 0);

  /* Overwriting replaces the file. */
  image->rgb[0] ^= 0xff;
  g_assert_true (ead_image_save_png (image, path, &error));
  g_clear_pointer (&loaded, ead_image_free);
  loaded = load_ok (path, 0);
  assert_pixels (loaded, 31, 17, image->rgb, 0);

  g_assert_false (ead_image_save_png (image, bad, &error));
  g_assert_error (error, EAD_ERROR, EAD_ERROR_IO);
  g_assert_true (g_str_has_prefix (error->message, bad));

  dir = g_dir_open (tmp_dir, 0, NULL);
  while ((entry = g_dir_read_name (dir)) != NULL)
    g_assert_null (strstr (entry, ".tmp-"));
}

/* Resizing against PIL */

static const char *
fixture_dir (void)
{
  const char *dir = g_getenv ("EAD_TEST_FIXTURES");

  if (dir == NULL)
    g_test_skip ("EAD_TEST_FIXTURES is not set");
  return dir;
}

static void
test_resize_pil (void)
{
  const char *dir = fixture_dir ();
  g_autofree char *manifest_path = NULL;
  g_autofree char *manifest = NULL;
  g_auto (GStrv) lines = NULL;
  int checked = 0;

  if (dir == NULL)
    return;
  manifest_path = g_build_filename (dir, "image", "resize.txt", NULL);
  g_assert_true (g_file_get_contents (manifest_path, &manifest, NULL, NULL));
  lines = g_strsplit (manifest, "\n", -1);
  for (char **line = lines; *line != NULL; line++)
    {
      char source[128], expected_name[128];
      int width, height;
      g_autofree char *source_path = NULL;
      g_autofree char *expected_path = NULL;
      g_autoptr (EadImage) src = NULL;
      g_autoptr (EadImage) expected = NULL;
      g_autoptr (EadImage) resized = NULL;

      if (**line == '#' || **line == '\0')
        continue;
      g_assert_cmpint (sscanf (*line, "%127s %d %d %127s", source, &width, &height,
                               expected_name), ==, 4);
      g_test_message ("resize %s to %dx%d", source, width, height);
      source_path = g_build_filename (dir, "image", source, NULL);
      expected_path = g_build_filename (dir, "image", expected_name, NULL);
      src = load_ok (source_path, 0);
      expected = load_ok (expected_path, 0);
      resized = ead_image_resize_bilinear (src, width, height);
      assert_pixels (resized, width, height, expected->rgb, 0);
      checked++;
    }
  g_assert_cmpint (checked, >=, 10);
}

static void
test_jpeg_pil (void)
{
  const char *dir = fixture_dir ();
  g_autofree char *manifest_path = NULL;
  g_autofree char *manifest = NULL;
  g_auto (GStrv) lines = NULL;
  int checked = 0;

  if (dir == NULL)
    return;
  manifest_path = g_build_filename (dir, "image", "decode.txt", NULL);
  g_assert_true (g_file_get_contents (manifest_path, &manifest, NULL, NULL));
  lines = g_strsplit (manifest, "\n", -1);
  for (char **line = lines; *line != NULL; line++)
    {
      char name[128], expected_name[128];
      g_autofree char *path = NULL;
      g_autofree char *expected_path = NULL;
      g_autoptr (EadImage) image = NULL;
      g_autoptr (EadImage) expected = NULL;

      if (**line == '#' || **line == '\0')
        continue;
      g_assert_cmpint (sscanf (*line, "%127s %127s", name, expected_name), ==, 2);
      g_test_message ("decode %s", name);
      path = g_build_filename (dir, "image", name, NULL);
      expected_path = g_build_filename (dir, "image", expected_name, NULL);
      image = load_ok (path, 0);
      expected = load_ok (expected_path, 0);
      assert_pixels (image, expected->width, expected->height, expected->rgb, 0);
      checked++;
    }
  g_assert_cmpint (checked, ==, 2);
}

static void
test_resize_same_size (void)
{
  g_autoptr (EadImage) image = ead_image_new (9, 4);
  g_autoptr (EadImage) copy = NULL;

  for (size_t i = 0; i < 9 * 4 * 3; i++)
    image->rgb[i] = (guint8) (i * 13);
  copy = ead_image_resize_bilinear (image, 9, 4);
  g_assert_true (copy->rgb != image->rgb);
  assert_pixels (copy, 9, 4, image->rgb, 0);
}

/* The network input, against numpy float32 */

static void
assert_float_bits (float got, float expected, const char *what)
{
  if (memcmp (&got, &expected, sizeof got) != 0)
    g_error ("%s: got %.9g, expected %.9g", what, got, expected);
}

static void
test_input_normalize (void)
{
  const char *dir = fixture_dir ();
  g_autofree char *path = NULL;
  g_autofree char *text = NULL;
  g_auto (GStrv) lines = NULL;
  g_autoptr (EadImage) image = ead_image_new (16, 16);
  g_autofree float *input = g_new (float, 3 * 256);
  int checked = 0;

  if (dir == NULL)
    return;
  /* Every value in every channel: pixel p has (p, 255 - p, p * 3 % 256). */
  for (int p = 0; p < 256; p++)
    {
      image->rgb[3 * p] = (guint8) p;
      image->rgb[3 * p + 1] = (guint8) (255 - p);
      image->rgb[3 * p + 2] = (guint8) (p * 3 % 256);
    }
  ead_image_to_input (image, input);

  path = g_build_filename (dir, "image", "normalize.txt", NULL);
  g_assert_true (g_file_get_contents (path, &text, NULL, NULL));
  lines = g_strsplit (text, "\n", -1);
  for (char **line = lines; *line != NULL; line++)
    {
      g_auto (GStrv) fields = NULL;
      int p;

      if (**line == '#' || **line == '\0')
        continue;
      fields = g_strsplit (*line, " ", -1);
      g_assert_cmpuint (g_strv_length (fields), ==, 4);
      p = atoi (fields[0]);
      for (int c = 0; c < 3; c++)
        {
          float expected = (float) g_ascii_strtod (fields[1 + c], NULL);
          int pixel = c == 0 ? p : c == 1 ? 255 - p : -1;

          if (c == 2)
            {
              /* p * 3 % 256 visits every value once as p does. */
              for (int q = 0; q < 256; q++)
                if (q * 3 % 256 == p)
                  pixel = q;
            }
          assert_float_bits (input[c * 256 + pixel], expected, *line);
          checked++;
        }
    }
  g_assert_cmpint (checked, ==, 768);
}

static void
test_input_samples (void)
{
  const char *dir = fixture_dir ();
  g_autofree char *path = NULL;
  g_autofree char *text = NULL;
  g_auto (GStrv) lines = NULL;
  int checked = 0;

  if (dir == NULL)
    return;
  path = g_build_filename (dir, "image", "normalize-samples.txt", NULL);
  g_assert_true (g_file_get_contents (path, &text, NULL, NULL));
  lines = g_strsplit (text, "\n", -1);
  for (char **line = lines; *line != NULL; line++)
    {
      char name[128];
      int x, y, c;
      double expected;
      g_autofree char *image_path = NULL;
      g_autoptr (EadImage) image = NULL;
      g_autofree float *input = NULL;

      if (**line == '#' || **line == '\0')
        continue;
      g_assert_cmpint (sscanf (*line, "%127s %d %d %d", name, &x, &y, &c), ==, 4);
      expected = g_ascii_strtod (strrchr (*line, ' ') + 1, NULL);
      image_path = g_build_filename (dir, "image", name, NULL);
      image = load_ok (image_path, 0);
      input = g_new (float, (size_t) image->width * image->height * 3);
      ead_image_to_input (image, input);
      assert_float_bits (input[((size_t) c * image->height + y) * image->width + x],
                         (float) expected, *line);
      checked++;
    }
  g_assert_cmpint (checked, >=, 8);
}

/* Heatmaps */

static double
luma (const guint8 *p)
{
  return 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
}

static void
test_heatmap (void)
{
  float map[8] = { -1.0f, 0.0f, 0.25f, 0.5f, 0.75f, 1.0f, 2.0f, NAN };
  g_autoptr (EadImage) plain = ead_heatmap_render (map, 8, 1, 0.0f, 1.0f, NULL, 1.0f);
  g_autoptr (EadImage) under = ead_image_new (8, 1);
  g_autoptr (EadImage) hidden = NULL;
  g_autoptr (EadImage) full = NULL;
  g_autoptr (EadImage) half = NULL;
  g_autoptr (EadImage) flat = NULL;
  const guint8 *px = plain->rgb;

  /* inferno's ends: near black, and pale yellow. */
  g_assert_cmpuint (px[3], ==, 0);
  g_assert_cmpuint (px[4], ==, 0);
  g_assert_cmpuint (px[5], ==, 4);
  g_assert_cmpuint (px[15], ==, 252);
  g_assert_cmpuint (px[16], ==, 255);
  g_assert_cmpuint (px[17], ==, 164);
  /* Clamped below and above; NaN at the bottom. */
  g_assert_cmpmem (px, 3, px + 3, 3);
  g_assert_cmpmem (px + 18, 3, px + 15, 3);
  g_assert_cmpmem (px + 21, 3, px + 3, 3);
  /* Brighter as the value grows; red dominates in the middle. */
  for (int i = 1; i < 5; i++)
    g_assert_cmpfloat (luma (px + 3 * i), <, luma (px + 3 * (i + 1)));
  g_assert_cmpuint (px[9], >, px[10]);

  for (size_t i = 0; i < 8 * 3; i++)
    under->rgb[i] = (guint8) (i * 10);
  hidden = ead_heatmap_render (map, 8, 1, 0.0f, 1.0f, under, 0.0f);
  g_assert_cmpmem (hidden->rgb, 24, under->rgb, 24);
  full = ead_heatmap_render (map, 8, 1, 0.0f, 1.0f, under, 1.0f);
  g_assert_cmpmem (full->rgb, 24, plain->rgb, 24);
  half = ead_heatmap_render (map, 8, 1, 0.0f, 1.0f, under, 0.5f);
  for (size_t i = 0; i < 24; i++)
    g_assert_cmpint (ABS (2 * half->rgb[i] - (plain->rgb[i] + under->rgb[i])), <=, 1);

  /* An empty range: at or over hi is the top colour, the rest the bottom. */
  flat = ead_heatmap_render (map, 8, 1, 0.5f, 0.5f, NULL, 1.0f);
  g_assert_cmpmem (flat->rgb + 6, 3, px + 3, 3);
  g_assert_cmpmem (flat->rgb + 9, 3, px + 15, 3);
}

int
main (int argc, char **argv)
{
  g_autoptr (GError) error = NULL;
  int status;

  g_test_init (&argc, &argv, NULL);
  tmp_dir = g_dir_make_tmp ("ead-test-image-XXXXXX", &error);
  g_assert_no_error (error);

  g_test_add_func ("/image/png/formats", test_png_formats);
  g_test_add_func ("/image/png/16bit-all-values", test_png_16bit_all_values);
  g_test_add_func ("/image/png/truncated", test_png_truncated);
  g_test_add_func ("/image/png/corrupt", test_png_corrupt);
  g_test_add_func ("/image/png/huge-header", test_png_huge_header);
  g_test_add_func ("/image/png/pixel-limit", test_pixel_limit);
  g_test_add_func ("/image/jpeg/decode", test_jpeg_decode);
  g_test_add_func ("/image/jpeg/truncated", test_jpeg_truncated);
  g_test_add_func ("/image/jpeg/garbage", test_jpeg_garbage);
  g_test_add_func ("/image/jpeg/huge-header", test_jpeg_huge_header);
  g_test_add_func ("/image/jpeg/cmyk", test_jpeg_cmyk);
  g_test_add_func ("/image/jpeg/pil", test_jpeg_pil);
  g_test_add_func ("/image/tiff/formats", test_tiff_formats);
  g_test_add_func ("/image/tiff/bad", test_tiff_bad);
  g_test_add_func ("/image/bmp/formats", test_bmp_formats);
  g_test_add_func ("/image/bmp/bad", test_bmp_bad);
  g_test_add_func ("/image/bad-files", test_bad_files);
  g_test_add_func ("/image/save-png", test_save_png);
  g_test_add_func ("/image/resize/pil", test_resize_pil);
  g_test_add_func ("/image/resize/same-size", test_resize_same_size);
  g_test_add_func ("/image/input/normalize", test_input_normalize);
  g_test_add_func ("/image/input/samples", test_input_samples);
  g_test_add_func ("/image/heatmap", test_heatmap);

  status = g_test_run ();
  ead_test_remove_tree (tmp_dir);
  g_free (tmp_dir);
  return status;
}
