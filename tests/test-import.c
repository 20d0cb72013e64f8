/* test-import.c: header probing and folder import.
 *
 * The header probe against the full decoder on good and bad files of every format, and
 * how little of a file it reads; the MVTec AD layout with its labels, splits and masks;
 * plain folders with corrupt, truncated, empty, non-image and unreadable files;
 * re-importing (idempotent), moved, missing, changed and duplicate files.  Images are
 * written here, small and each different, into a temporary directory.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>
#include <jpeglib.h>
#include <tiffio.h>

#include "ead-error.h"
#include "ead-image.h"
#include "ead-import.h"
#include "ead-project.h"
#include "ead-test-util.h"

static char *tmp_dir;

static char *
tmp_path (const char *name)
{
  return g_build_filename (tmp_dir, name, NULL);
}

static void
make_parent (const char *path)
{
  g_autofree char *dir = g_path_get_dirname (path);

  g_assert_cmpint (g_mkdir_with_parents (dir, 0755), ==, 0);
}

static void
write_bytes (const char *path, const void *data, size_t size)
{
  g_autoptr (GError) error = NULL;

  make_parent (path);
  g_file_set_contents (path, data, (gssize) size, &error);
  g_assert_no_error (error);
}

static guint8 *
read_bytes (const char *path, size_t *size)
{
  g_autoptr (GError) error = NULL;
  char *data;
  gsize length;

  g_file_get_contents (path, &data, &length, &error);
  g_assert_no_error (error);
  *size = length;
  return (guint8 *) data;
}

/* An image whose pixels depend on seed, so that every file has its own content. */
static EadImage *
make_image (int width, int height, guint32 seed)
{
  EadImage *image = ead_image_new (width, height);
  GRand *rand = g_rand_new_with_seed (seed);

  for (size_t i = 0; i < (size_t) width * height * 3; i++)
    image->rgb[i] = (guint8) (g_rand_int (rand) >> 24);
  g_rand_free (rand);
  return image;
}

static void
write_png (const char *path, int width, int height, guint32 seed)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadImage) image = make_image (width, height, seed);

  make_parent (path);
  ead_image_save_png (image, path, &error);
  g_assert_no_error (error);
}

static void
write_jpeg (const char *path, int width, int height, guint32 seed)
{
  g_autoptr (EadImage) image = make_image (width, height, seed);
  struct jpeg_compress_struct cinfo;
  struct jpeg_error_mgr jerr;
  unsigned char *data = NULL;
  unsigned long size = 0;

  cinfo.err = jpeg_std_error (&jerr);
  jpeg_create_compress (&cinfo);
  jpeg_mem_dest (&cinfo, &data, &size);
  cinfo.image_width = (JDIMENSION) width;
  cinfo.image_height = (JDIMENSION) height;
  cinfo.input_components = 3;
  cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults (&cinfo);
  jpeg_set_quality (&cinfo, 90, TRUE);
  jpeg_start_compress (&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height)
    {
      JSAMPROW row = image->rgb + (size_t) cinfo.next_scanline * width * 3;

      jpeg_write_scanlines (&cinfo, &row, 1);
    }
  jpeg_finish_compress (&cinfo);
  jpeg_destroy_compress (&cinfo);
  write_bytes (path, data, size);
  free (data);
}

static void
write_tiff (const char *path, int width, int height, guint32 seed)
{
  g_autoptr (EadImage) image = make_image (width, height, seed);
  TIFF *tif;

  make_parent (path);
  tif = TIFFOpen (path, "w");
  g_assert_nonnull (tif);
  TIFFSetField (tif, TIFFTAG_IMAGEWIDTH, (uint32_t) width);
  TIFFSetField (tif, TIFFTAG_IMAGELENGTH, (uint32_t) height);
  TIFFSetField (tif, TIFFTAG_BITSPERSAMPLE, 8);
  TIFFSetField (tif, TIFFTAG_SAMPLESPERPIXEL, 3);
  TIFFSetField (tif, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_RGB);
  TIFFSetField (tif, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
  TIFFSetField (tif, TIFFTAG_ROWSPERSTRIP, 4);
  for (int y = 0; y < height; y++)
    g_assert_cmpint (TIFFWriteScanline (tif, image->rgb + (size_t) y * width * 3,
                                        (uint32_t) y, 0), ==, 1);
  TIFFClose (tif);
}

static void
put_le (guint8 *p, guint32 v, int bytes)
{
  for (int i = 0; i < bytes; i++)
    p[i] = (guint8) (v >> (8 * i));
}

static void
write_bmp (const char *path, int width, int height, guint32 seed)
{
  g_autoptr (EadImage) image = make_image (width, height, seed);
  size_t stride = ((size_t) width * 3 + 3) / 4 * 4;
  size_t size = 54 + stride * height;
  g_autofree guint8 *data = g_malloc0 (size);

  data[0] = 'B';
  data[1] = 'M';
  put_le (data + 2, (guint32) size, 4);
  put_le (data + 10, 54, 4);
  put_le (data + 14, 40, 4);
  put_le (data + 18, (guint32) width, 4);
  put_le (data + 22, (guint32) height, 4);
  put_le (data + 26, 1, 2);
  put_le (data + 28, 24, 2);
  for (int y = 0; y < height; y++)
    for (int x = 0; x < width; x++)
      {
        const guint8 *p = image->rgb + ((size_t) (height - 1 - y) * width + x) * 3;
        guint8 *q = data + 54 + y * stride + x * 3;

        q[0] = p[2];
        q[1] = p[1];
        q[2] = p[0];
      }
  write_bytes (path, data, size);
}

static void
truncate_copy (const char *from, const char *to, size_t keep)
{
  size_t size;
  g_autofree guint8 *data = read_bytes (from, &size);

  g_assert_cmpuint (keep, <, size);
  write_bytes (to, data, keep);
}

static guint32
get_le (const guint8 *p, int bytes)
{
  guint32 v = 0;

  for (int i = bytes - 1; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}

/* Makes the last strip of a little-endian TIFF claim more bytes than the file has: the
 * directory intact, the pixel data cut short. */
static void
stretch_last_strip (const char *from, const char *to)
{
  size_t size;
  g_autofree guint8 *data = read_bytes (from, &size);
  guint32 ifd = get_le (data + 4, 4);
  guint n = get_le (data + ifd, 2);

  g_assert_cmpmem (data, 2, "II", 2);
  for (guint i = 0; i < n; i++)
    {
      guint8 *entry = data + ifd + 2 + 12 * i;
      guint type = get_le (entry + 2, 2), count = get_le (entry + 4, 4);
      int bytes = type == 3 ? 2 : 4;
      guint8 *values;

      if (get_le (entry, 2) != TIFFTAG_STRIPBYTECOUNTS)
        continue;
      values = count * bytes <= 4 ? entry + 8 : data + get_le (entry + 8, 4);
      put_le (values + (count - 1) * bytes, bytes == 2 ? 0xffff : 0x100000, bytes);
    }
  write_bytes (to, data, size);
}

/* Header probing */

static void
assert_probe_ok (const char *path, int width, int height, const char *format)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadImage) decoded = NULL;
  g_autofree guint8 *data = NULL;
  const char *found = NULL;
  int w = 0, h = 0;
  size_t size;

  g_assert_true (ead_image_read_header (path, &w, &h, &found, &error));
  g_assert_no_error (error);
  g_assert_cmpint (w, ==, width);
  g_assert_cmpint (h, ==, height);
  g_assert_cmpstr (found, ==, format);
  data = read_bytes (path, &size);
  w = h = 0;
  g_assert_true (ead_image_read_header_from_memory (path, data, size, &w, &h, &found, &error));
  g_assert_cmpint (w, ==, width);
  g_assert_cmpint (h, ==, height);
  /* What the probe accepts, the decoder decodes. */
  decoded = ead_image_load (path, 0, &error);
  g_assert_no_error (error);
  g_assert_cmpint (decoded->width, ==, width);
}

static void
assert_probe_fails (const char *path, EadError code, const char *fragment)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GError) load_error = NULL;
  g_autoptr (EadImage) decoded = NULL;

  g_assert_false (ead_image_read_header (path, NULL, NULL, NULL, &error));
  g_assert_nonnull (error);
  g_test_message ("%s", error->message);
  g_assert_error (error, EAD_ERROR, (int) code);
  g_assert_true (g_str_has_prefix (error->message, path));
  if (strstr (error->message, fragment) == NULL)
    g_error ("expected \"%s\" in \"%s\"", fragment, error->message);
  /* Refused alike by the decoder. */
  decoded = ead_image_load (path, 0, &load_error);
  g_assert_null (decoded);
  g_assert_error (load_error, EAD_ERROR, (int) code);
}

static void
test_header_formats (void)
{
  g_autofree char *png = tmp_path ("probe/a.png");
  g_autofree char *jpeg = tmp_path ("probe/b.jpg");
  g_autofree char *tiff = tmp_path ("probe/c.tif");
  g_autofree char *bmp = tmp_path ("probe/d.bmp");

  write_png (png, 37, 21, 1);
  write_jpeg (jpeg, 40, 24, 2);
  write_tiff (tiff, 19, 13, 3);
  write_bmp (bmp, 23, 11, 4);
  assert_probe_ok (png, 37, 21, "png");
  assert_probe_ok (jpeg, 40, 24, "jpeg");
  assert_probe_ok (tiff, 19, 13, "tiff");
  assert_probe_ok (bmp, 23, 11, "bmp");
}

static void
test_header_bad (void)
{
  g_autofree char *png = tmp_path ("bad/good.png");
  g_autofree char *jpeg = tmp_path ("bad/good.jpg");
  g_autofree char *tiff = tmp_path ("bad/good.tif");
  g_autofree char *bmp = tmp_path ("bad/good.bmp");
  g_autofree char *empty = tmp_path ("bad/empty.png");
  g_autofree char *text = tmp_path ("bad/text.png");
  g_autofree char *short_png = tmp_path ("bad/short.png");
  g_autofree char *cut_png = tmp_path ("bad/cut.png");
  g_autofree char *crc_png = tmp_path ("bad/crc.png");
  g_autofree char *cut_jpeg = tmp_path ("bad/cut.jpg");
  g_autofree char *cut_tiff = tmp_path ("bad/cut.tif");
  g_autofree char *cut_bmp = tmp_path ("bad/cut.bmp");
  g_autofree char *short_strip = tmp_path ("bad/short-strip.tif");
  g_autofree char *folder = tmp_path ("bad/folder.png");
  g_autofree char *missing = tmp_path ("bad/missing.png");
  g_autofree guint8 *data = NULL;
  size_t size;

  write_png (png, 64, 64, 5);
  write_jpeg (jpeg, 64, 64, 6);
  write_tiff (tiff, 64, 64, 7);
  write_bmp (bmp, 64, 64, 8);
  write_bytes (empty, "", 0);
  write_bytes (text, "just some words\n", 16);
  truncate_copy (png, short_png, 20);
  truncate_copy (png, cut_png, 3000);
  truncate_copy (jpeg, cut_jpeg, 2000);
  truncate_copy (tiff, cut_tiff, 5000);
  truncate_copy (bmp, cut_bmp, 3000);
  stretch_last_strip (tiff, short_strip);
  data = read_bytes (png, &size);
  data[23] ^= 0x01;  /* the height's low byte, under the IHDR CRC */
  write_bytes (crc_png, data, size);
  g_assert_cmpint (g_mkdir_with_parents (folder, 0755), ==, 0);

  assert_probe_fails (empty, EAD_ERROR_FORMAT, "empty file");
  assert_probe_fails (text, EAD_ERROR_FORMAT, "not an image");
  assert_probe_fails (short_png, EAD_ERROR_FORMAT, "truncated PNG");
  assert_probe_fails (cut_png, EAD_ERROR_FORMAT, "truncated PNG");
  assert_probe_fails (crc_png, EAD_ERROR_FORMAT, "CRC");
  assert_probe_fails (cut_jpeg, EAD_ERROR_FORMAT, "truncated JPEG");
  assert_probe_fails (cut_tiff, EAD_ERROR_FORMAT, "truncated TIFF");
  assert_probe_fails (cut_bmp, EAD_ERROR_FORMAT, "truncated BMP");
  assert_probe_fails (short_strip, EAD_ERROR_FORMAT, "past the end");
  assert_probe_fails (folder, EAD_ERROR_IO, "directory");
  assert_probe_fails (missing, EAD_ERROR_IO, "cannot open");
}

/* The bytes this process has read so far, from /proc/self/io; -1 where there is none. */
static gint64
bytes_read (void)
{
  g_autofree char *text = NULL;
  const char *line;

  if (!g_file_get_contents ("/proc/self/io", &text, NULL, NULL))
    return -1;
  line = strstr (text, "rchar:");
  return line != NULL ? g_ascii_strtoll (line + 6, NULL, 10) : -1;
}

static void
test_header_reads_little (void)
{
  g_autofree char *png = tmp_path ("big/big.png");
  g_autofree char *jpeg = tmp_path ("big/big.jpg");
  g_autoptr (GError) error = NULL;
  const char *paths[2] = { png, jpeg };
  struct stat st;

  write_png (png, 1200, 900, 9);
  write_jpeg (jpeg, 1200, 900, 10);
  if (bytes_read () < 0)
    {
      g_test_skip ("no /proc/self/io");
      return;
    }
  for (int i = 0; i < 2; i++)
    {
      gint64 before = bytes_read ();
      int w, h;

      g_assert_true (ead_image_read_header (paths[i], &w, &h, NULL, &error));
      g_assert_no_error (error);
      g_assert_cmpint (w, ==, 1200);
      g_assert_cmpint (g_stat (paths[i], &st), ==, 0);
      g_test_message ("%s: %" G_GINT64_FORMAT " of %" G_GINT64_FORMAT " bytes read",
                      paths[i], bytes_read () - before, (gint64) st.st_size);
      g_assert_cmpint (st.st_size, >, 500000);
      /* The head, the tail, and /proc/self/io itself. */
      g_assert_cmpint (bytes_read () - before, <, 16 * 1024);
    }
}

/* Import */

static EadProject *
new_project (const char *name)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *path = tmp_path (name);
  EadProject *project;

  make_parent (path);
  project = ead_project_create (path, &error);
  g_assert_no_error (error);
  return project;
}

static EadImportReport *
import_ok (EadProject *project, const char *folder)
{
  g_autoptr (GError) error = NULL;
  EadImportReport *report = ead_project_import (project, folder, NULL, NULL, NULL, &error);

  g_assert_no_error (error);
  g_assert_nonnull (report);
  for (guint i = 0; i < report->failures->len; i++)
    g_test_message ("failed: %s", ((EadImportIssue *) report->failures->pdata[i])->reason);
  return report;
}

static EadProjectImage *
find (EadProject *project, const char *path)
{
  g_autoptr (GError) error = NULL;
  EadProjectImage *image = ead_project_find_image (project, path, &error);

  g_assert_no_error (error);
  g_assert_nonnull (image);
  return image;
}

static gboolean
failure_mentions (const EadImportReport *report, const char *path, const char *fragment)
{
  for (guint i = 0; i < report->failures->len; i++)
    {
      EadImportIssue *issue = report->failures->pdata[i];

      if (g_str_equal (issue->path, path) && strstr (issue->reason, path) != NULL
          && strstr (issue->reason, fragment) != NULL)
        return TRUE;
    }
  return FALSE;
}

/* An MVTec AD category under root/name. */
static void
make_mvtec (const char *root, const char *name, guint32 seed)
{
  static const char *const files[] = {
    "train/good/000.png", "train/good/001.png", "train/good/002.png",
    "test/good/000.png", "test/scratch/000.png", "test/scratch/001.png",
    "test/hole/000.png",
  };

  for (guint i = 0; i < G_N_ELEMENTS (files); i++)
    {
      g_autofree char *path = g_build_filename (root, name, files[i], NULL);

      write_png (path, 32, 24, seed + i);
    }
  {
    g_autofree char *mask0 = g_build_filename (root, name, "ground_truth/scratch/000_mask.png",
                                               NULL);
    g_autofree char *mask1 = g_build_filename (root, name, "ground_truth/scratch/001_mask.png",
                                               NULL);
    g_autofree char *mask_bad = g_build_filename (root, name, "ground_truth/hole/000_mask.png",
                                                  NULL);
    g_autofree char *license = g_build_filename (root, name, "license.txt", NULL);

    write_png (mask0, 32, 24, seed + 100);
    write_png (mask1, 32, 24, seed + 101);
    write_png (mask_bad, 16, 16, seed + 102);  /* not the image's size */
    write_bytes (license, "CC BY-NC-SA 4.0\n", 16);
  }
}

static void
test_import_mvtec (void)
{
  g_autofree char *root = tmp_path ("mvtec");
  g_autofree char *scratch = tmp_path ("mvtec/widget/test/scratch/001.png");
  g_autofree char *hole = tmp_path ("mvtec/widget/test/hole/000.png");
  g_autofree char *train = tmp_path ("mvtec/widget/train/good/002.png");
  g_autofree char *test_good = tmp_path ("mvtec/widget/test/good/000.png");
  g_autofree char *license = tmp_path ("mvtec/widget/license.txt");
  g_autofree char *bad_mask = tmp_path ("mvtec/widget/ground_truth/hole/000_mask.png");
  g_autoptr (EadProject) project = new_project ("mvtec-project/project.ead");
  g_autoptr (EadImportReport) report = NULL;
  g_autoptr (EadProjectImage) image = NULL;
  g_autoptr (GError) error = NULL;
  EadImageFilter filter;
  guint64 count;

  make_mvtec (root, "widget", 10);
  report = import_ok (project, root);
  g_assert_true (report->mvtec);
  g_assert_cmpuint (report->n_added, ==, 7);
  g_assert_cmpuint (report->n_masks, ==, 2);
  g_assert_cmpuint (report->n_failed, ==, 1);  /* license.txt */
  g_assert_true (failure_mentions (report, license, "not an image"));
  g_assert_true (failure_mentions (report, bad_mask, "16x16"));

  image = find (project, scratch);
  g_assert_cmpint (image->label, ==, EAD_LABEL_DEFECT);
  g_assert_cmpint (image->split, ==, EAD_SPLIT_TEST);
  g_assert_cmpstr (image->defect, ==, "scratch");
  g_assert_nonnull (image->mask_path);
  g_assert_true (g_str_has_suffix (image->mask_path, "ground_truth/scratch/001_mask.png"));
  g_assert_cmpint (image->width, ==, 32);
  g_assert_cmpstr (image->format, ==, "png");
  g_clear_pointer (&image, ead_project_image_free);
  image = find (project, hole);
  g_assert_cmpint (image->label, ==, EAD_LABEL_DEFECT);
  g_assert_null (image->mask_path);
  g_clear_pointer (&image, ead_project_image_free);
  image = find (project, train);
  g_assert_cmpint (image->label, ==, EAD_LABEL_GOOD);
  g_assert_cmpint (image->split, ==, EAD_SPLIT_TRAIN);
  g_assert_null (image->defect);
  g_clear_pointer (&image, ead_project_image_free);
  image = find (project, test_good);
  g_assert_cmpint (image->label, ==, EAD_LABEL_GOOD);
  g_assert_cmpint (image->split, ==, EAD_SPLIT_TEST);
  g_assert_cmpint (image->set_id, >, 0);

  ead_image_filter_init (&filter);
  filter.label = EAD_LABEL_DEFECT;
  ead_project_count_images (project, &filter, &count, &error);
  g_assert_cmpuint (count, ==, 3);
  filter.label = -1;
  filter.split = EAD_SPLIT_TRAIN;
  ead_project_count_images (project, &filter, &count, &error);
  g_assert_cmpuint (count, ==, 3);
  filter.split = -1;
  filter.set_id = image->set_id;
  ead_project_count_images (project, &filter, &count, &error);
  g_assert_cmpuint (count, ==, 7);

  /* The category itself given as the folder: one set, still MVTec, and the loose file
   * in it listed as not an image. */
  {
    g_autoptr (EadProject) direct = new_project ("mvtec-direct/project.ead");
    g_autofree char *category = tmp_path ("mvtec/widget");
    g_autoptr (EadImportReport) direct_report = import_ok (direct, category);
    g_autoptr (GPtrArray) sets = ead_project_list_image_sets (direct, &error);
    EadProjectImageSet *set;

    g_assert_no_error (error);
    g_assert_cmpuint (direct_report->n_added, ==, 7);
    g_assert_true (failure_mentions (direct_report, license, "not an image"));
    g_assert_cmpuint (sets->len, ==, 1);
    set = sets->pdata[0];
    g_assert_cmpstr (set->layout, ==, "mvtec");
    g_assert_cmpstr (set->name, ==, "widget");
    g_assert_cmpstr (set->path, ==, category);
    g_assert_cmpuint (set->n_images, ==, 7);
  }
}

static void
test_import_bad_files (void)
{
  g_autofree char *root = tmp_path ("plain");
  g_autofree char *good1 = tmp_path ("plain/a.png");
  g_autofree char *good2 = tmp_path ("plain/sub/b.jpg");
  g_autofree char *good3 = tmp_path ("plain/sub/deeper/c.bmp");
  g_autofree char *good4 = tmp_path ("plain/d.tif");
  g_autofree char *corrupt = tmp_path ("plain/corrupt.png");
  g_autofree char *truncated = tmp_path ("plain/sub/truncated.jpg");
  g_autofree char *empty = tmp_path ("plain/empty.png");
  g_autofree char *text = tmp_path ("plain/notes.txt");
  g_autofree char *hidden = tmp_path ("plain/.hidden.png");
  g_autofree char *link = tmp_path ("plain/loop");
  g_autoptr (EadProject) project = new_project ("plain-project/project.ead");
  g_autoptr (EadImportReport) report = NULL;
  g_autoptr (EadProjectImage) image = NULL;
  g_autofree guint8 *data = NULL;
  size_t size;

  write_png (good1, 30, 20, 21);
  write_jpeg (good2, 30, 20, 22);
  write_bmp (good3, 30, 20, 23);
  write_tiff (good4, 30, 20, 24);
  write_png (corrupt, 30, 20, 25);
  data = read_bytes (corrupt, &size);
  memset (data + 12, 'x', 8);  /* the IHDR chunk's type and width */
  write_bytes (corrupt, data, size);
  write_jpeg (truncated, 64, 64, 26);
  g_clear_pointer (&data, g_free);
  data = read_bytes (truncated, &size);
  write_bytes (truncated, data, size / 2);
  write_bytes (empty, "", 0);
  write_bytes (text, "not an image\n", 13);
  write_png (hidden, 30, 20, 28);
  g_assert_cmpint (symlink (root, link), ==, 0);

  report = import_ok (project, root);
  g_assert_false (report->mvtec);
  g_assert_cmpuint (report->n_added, ==, 4);
  g_assert_cmpuint (report->n_failed, ==, 4);
  g_assert_cmpuint (report->failures->len, ==, 4);
  g_assert_true (failure_mentions (report, corrupt, "corrupt PNG"));
  g_assert_true (failure_mentions (report, truncated, "truncated JPEG"));
  g_assert_true (failure_mentions (report, empty, "empty file"));
  g_assert_true (failure_mentions (report, text, "not an image"));

  image = find (project, good3);
  g_assert_cmpint (image->label, ==, EAD_LABEL_UNLABELLED);
  g_assert_cmpint (image->split, ==, EAD_SPLIT_NONE);
  g_assert_cmpstr (image->format, ==, "bmp");
  g_clear_pointer (&image, ead_project_image_free);
  image = ead_project_find_image (project, hidden, NULL);
  g_assert_null (image);
}

static void
test_import_unreadable (void)
{
  g_autofree char *root = tmp_path ("locked");
  g_autofree char *good = tmp_path ("locked/good.png");
  g_autofree char *locked = tmp_path ("locked/locked.png");
  g_autofree char *project_dir = tmp_path ("locked-project");
  g_autofree char *project_path = tmp_path ("locked-project/project.ead");
  g_autoptr (EadImportReport) report = NULL;
  g_autoptr (GError) error = NULL;
  gboolean as_nobody = geteuid () == 0;
  EadProject *project;

  write_png (good, 30, 20, 31);
  write_png (locked, 30, 20, 32);
  g_assert_cmpint (g_chmod (locked, 0), ==, 0);
  g_assert_cmpint (g_mkdir_with_parents (project_dir, 0755), ==, 0);
  if (as_nobody)
    {
      g_assert_cmpint (g_chmod (tmp_dir, 0755), ==, 0);
      g_assert_cmpint (chown (project_dir, 65534, 65534), ==, 0);
      if (!ead_test_become_nobody ())
        {
          g_chmod (locked, 0644);
          g_test_skip ("running as root without the right to switch to another user");
          return;
        }
    }
  project = ead_project_create (project_path, &error);
  g_assert_no_error (error);
  report = ead_project_import (project, root, NULL, NULL, NULL, &error);
  ead_project_close (project);
  if (as_nobody)
    {
      g_assert_cmpint (seteuid (0), ==, 0);
      g_assert_cmpint (setegid (0), ==, 0);
    }
  g_chmod (locked, 0644);
  g_assert_no_error (error);
  g_assert_cmpuint (report->n_added, ==, 1);
  g_assert_cmpuint (report->n_failed, ==, 1);
  g_assert_true (failure_mentions (report, locked, "Permission denied"));
}

static void
test_import_again (void)
{
  g_autofree char *root = tmp_path ("again");
  g_autofree char *moved_from = tmp_path ("again/widget/train/good/001.png");
  g_autofree char *moved_to = tmp_path ("again/elsewhere/renamed.png");
  g_autofree char *gone = tmp_path ("again/widget/train/good/002.png");
  g_autofree char *copy = tmp_path ("again/copy-of-000.png");
  g_autofree char *original = tmp_path ("again/widget/train/good/000.png");
  g_autofree char *changed = tmp_path ("again/widget/test/good/000.png");
  g_autoptr (EadProject) project = new_project ("again/project.ead");
  g_autoptr (EadImportReport) first = NULL;
  g_autoptr (EadImportReport) second = NULL;
  g_autoptr (EadImportReport) third = NULL;
  g_autoptr (EadImportReport) fourth = NULL;
  g_autoptr (EadProjectImage) before = NULL;
  g_autoptr (EadProjectImage) after = NULL;
  g_autoptr (EadProjectImage) missing = NULL;
  g_autoptr (GError) error = NULL;
  g_autofree guint8 *data = NULL;
  size_t size;

  make_mvtec (root, "widget", 40);
  first = import_ok (project, root);
  g_assert_cmpuint (first->n_added, ==, 7);
  /* The project lives inside the folder: its own files are not images to import, and
   * paths are stored relative to it. */
  g_assert_cmpuint (first->n_failed, ==, 1);
  before = find (project, moved_from);
  g_assert_cmpstr (before->path, ==, "widget/train/good/001.png");

  /* A person's label survives re-importing. */
  ead_project_set_labels (project, &before->id, 1, EAD_LABEL_DEFECT, &error);
  g_assert_no_error (error);
  second = import_ok (project, root);
  g_assert_cmpuint (second->n_added, ==, 0);
  g_assert_cmpuint (second->n_present, ==, 7);
  g_assert_cmpuint (second->n_masks, ==, 0);
  g_assert_cmpuint (second->n_moved + second->n_missing + second->n_changed, ==, 0);

  /* Moved, deleted, copied, rewritten. */
  make_parent (moved_to);
  g_assert_cmpint (g_rename (moved_from, moved_to), ==, 0);
  g_assert_cmpint (g_remove (gone), ==, 0);
  data = read_bytes (original, &size);
  write_bytes (copy, data, size);
  write_png (changed, 32, 24, 999);
  third = import_ok (project, root);
  g_assert_cmpuint (third->n_added, ==, 0);
  g_assert_cmpuint (third->n_moved, ==, 1);
  g_assert_cmpuint (third->n_missing, ==, 1);
  g_assert_cmpuint (third->n_duplicate, ==, 1);
  g_assert_cmpuint (third->n_changed, ==, 1);
  g_assert_cmpuint (third->n_present, ==, 4);
  g_assert_cmpstr (((EadImportIssue *) third->missing->pdata[0])->path, ==, gone);
  g_assert_nonnull (strstr (((EadImportIssue *) third->duplicates->pdata[0])->reason,
                            original));

  after = find (project, moved_to);
  g_assert_cmpint (after->id, ==, before->id);
  g_assert_cmpint (after->label, ==, EAD_LABEL_DEFECT);
  g_assert_cmpint (after->split, ==, EAD_SPLIT_TRAIN);
  g_assert_false (after->missing);
  missing = find (project, gone);
  g_assert_true (missing->missing);

  /* The missing file comes back: present again, same image. */
  write_png (gone, 32, 24, 42);
  g_clear_pointer (&missing, ead_project_image_free);
  fourth = import_ok (project, root);
  g_assert_cmpuint (fourth->n_missing, ==, 0);
  g_assert_cmpuint (fourth->n_added, ==, 0);
  missing = find (project, gone);
  g_assert_false (missing->missing);
}

static void
on_progress (guint done, guint total, gpointer user_data)
{
  guint *calls = user_data;

  g_assert_cmpuint (done, <=, total);
  (*calls)++;
}

static void
test_import_errors (void)
{
  g_autofree char *root = tmp_path ("errors");
  g_autofree char *file = tmp_path ("errors/a.png");
  g_autofree char *nowhere = tmp_path ("errors/nowhere");
  g_autoptr (EadProject) project = new_project ("errors-project/project.ead");
  g_autoptr (GCancellable) cancellable = g_cancellable_new ();
  g_autoptr (EadImportReport) report = NULL;
  g_autoptr (GError) error = NULL;
  guint calls = 0;
  guint8 hash[EAD_IMAGE_HASH_SIZE];
  guint64 size;

  write_png (file, 8, 8, 77);
  g_assert_null (ead_project_import (project, nowhere, NULL, NULL, NULL, &error));
  g_assert_error (error, EAD_ERROR, EAD_ERROR_IO);
  g_assert_nonnull (strstr (error->message, nowhere));
  g_clear_error (&error);
  g_assert_null (ead_project_import (project, file, NULL, NULL, NULL, &error));
  g_assert_error (error, EAD_ERROR, EAD_ERROR_IO);
  g_clear_error (&error);

  g_cancellable_cancel (cancellable);
  g_assert_null (ead_project_import (project, root, NULL, NULL, cancellable, &error));
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_clear_error (&error);

  report = ead_project_import (project, root, on_progress, &calls, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (calls, ==, 1);
  g_assert_cmpuint (report->n_added, ==, 1);

  g_assert_true (ead_file_hash (file, hash, &size, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (size, >, 0);
}

int
main (int argc, char **argv)
{
  int status;

  g_test_init (&argc, &argv, NULL);
  tmp_dir = g_dir_make_tmp ("test-import-XXXXXX", NULL);
  g_assert_nonnull (tmp_dir);

  g_test_add_func ("/import/header/formats", test_header_formats);
  g_test_add_func ("/import/header/bad", test_header_bad);
  g_test_add_func ("/import/header/reads-little", test_header_reads_little);
  g_test_add_func ("/import/mvtec", test_import_mvtec);
  g_test_add_func ("/import/bad-files", test_import_bad_files);
  g_test_add_func ("/import/unreadable-file", test_import_unreadable);
  g_test_add_func ("/import/again", test_import_again);
  g_test_add_func ("/import/errors", test_import_errors);
  status = g_test_run ();
  ead_test_remove_tree (tmp_dir);
  g_free (tmp_dir);
  return status;
}
