/* store-bench: how fast the project store does what the workstation does most.
 *
 *   import      N image files (64-256 KB PNG and JPEG, each different) into a new
 *               project: hash + header only, no decoding          target >= 2,000 files/s
 *   count       pass/fail counts and the confusion matrix at a threshold over M scored
 *               images, from the loaded score table             target < 1 ms a query
 *   open        open a project of M images, count them and list the first page of 100
 *                                                                target < 200 ms
 *
 * The image files are written once into a temporary folder from a few base images, each
 * copy with its own comment (a PNG tEXt chunk, a JPEG COM segment) so that every file
 * is valid and hashes differently.  They are imported right after being written, so
 * they come from the page cache: the figure is the store's speed, not the disk's.
 *
 * Usage: store-bench [--files N] [--images M] [--dir DIR]
 * Exit status 0 when every target is met.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <glib.h>
#include <glib/gstdio.h>
#include <jpeglib.h>
#include <xxhash.h>

#include "ead-error.h"
#include "ead-image.h"
#include "ead-import.h"
#include "ead-project.h"
#include "ead-threshold.h"

#define FIRST_PAGE 100
#define MAP_SIDE 16

static double
now_ms (void)
{
  return g_get_monotonic_time () / 1000.0;
}

static void
die (const char *what, GError *error)
{
  fprintf (stderr, "store-bench: %s: %s\n", what, error != NULL ? error->message : "failed");
  exit (2);
}

/* Noise compresses badly, which keeps the files at the sizes real photos have. */
static EadImage *
noise_image (int width, int height, guint32 seed)
{
  EadImage *image = ead_image_new (width, height);
  GRand *rand = g_rand_new_with_seed (seed);

  for (size_t i = 0; i < (size_t) width * height * 3; i++)
    image->rgb[i] = (guint8) (g_rand_int (rand) >> 24);
  g_rand_free (rand);
  return image;
}

static GBytes *
encode_png (const char *dir, int width, int height, guint32 seed)
{
  g_autoptr (EadImage) image = noise_image (width, height, seed);
  g_autofree char *path = g_build_filename (dir, "base.png", NULL);
  g_autoptr (GError) error = NULL;
  char *data;
  gsize size;

  if (!ead_image_save_png (image, path, &error)
      || !g_file_get_contents (path, &data, &size, &error))
    die ("writing a base PNG", error);
  g_unlink (path);
  return g_bytes_new_take (data, size);
}

static GBytes *
encode_jpeg (int width, int height, guint32 seed)
{
  g_autoptr (EadImage) image = noise_image (width, height, seed);
  struct jpeg_compress_struct cinfo;
  struct jpeg_error_mgr jerr;
  unsigned char *data = NULL;
  unsigned long size = 0;
  GBytes *bytes;

  cinfo.err = jpeg_std_error (&jerr);
  jpeg_create_compress (&cinfo);
  jpeg_mem_dest (&cinfo, &data, &size);
  cinfo.image_width = (JDIMENSION) width;
  cinfo.image_height = (JDIMENSION) height;
  cinfo.input_components = 3;
  cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults (&cinfo);
  jpeg_set_quality (&cinfo, 85, TRUE);
  jpeg_start_compress (&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height)
    {
      JSAMPROW row = image->rgb + (size_t) cinfo.next_scanline * width * 3;

      jpeg_write_scanlines (&cinfo, &row, 1);
    }
  jpeg_finish_compress (&cinfo);
  jpeg_destroy_compress (&cinfo);
  bytes = g_bytes_new (data, size);
  free (data);
  return bytes;
}

static guint32
crc32_png (const guint8 *data, size_t size)
{
  guint32 crc = 0xffffffffu;

  for (size_t i = 0; i < size; i++)
    {
      crc ^= data[i];
      for (int k = 0; k < 8; k++)
        crc = (crc >> 1) ^ (0xedb88320u & -(crc & 1u));
    }
  return crc ^ 0xffffffffu;
}

static void
put_be32 (guint8 *p, guint32 v)
{
  p[0] = (guint8) (v >> 24);
  p[1] = (guint8) (v >> 16);
  p[2] = (guint8) (v >> 8);
  p[3] = (guint8) v;
}

/* The base file with a comment naming the copy: a tEXt chunk before the PNG's IEND, or
 * a COM segment after the JPEG's SOI. */
static void
write_copy (const char *path, GBytes *base, gboolean png, guint index)
{
  gsize size;
  const guint8 *data = g_bytes_get_data (base, &size);
  char text[32];
  int n = g_snprintf (text, sizeof text, "Comment%ccopy %u", 0, index);
  g_autoptr (GByteArray) out = g_byte_array_sized_new ((guint) size + 64);
  g_autoptr (GError) error = NULL;
  guint8 chunk[64];

  if (png)
    {
      put_be32 (chunk, (guint32) n);
      memcpy (chunk + 4, "tEXt", 4);
      memcpy (chunk + 8, text, (size_t) n);
      put_be32 (chunk + 8 + n, crc32_png (chunk + 4, (size_t) n + 4));
      g_byte_array_append (out, data, (guint) size - 12);
      g_byte_array_append (out, chunk, (guint) n + 12);
      g_byte_array_append (out, data + size - 12, 12);
    }
  else
    {
      chunk[0] = 0xff;
      chunk[1] = 0xfe;
      chunk[2] = (guint8) ((n + 2) >> 8);
      chunk[3] = (guint8) (n + 2);
      memcpy (chunk + 4, text, (size_t) n);
      g_byte_array_append (out, data, 2);
      g_byte_array_append (out, chunk, (guint) n + 4);
      g_byte_array_append (out, data + 2, (guint) size - 2);
    }
  if (!g_file_set_contents (path, (const char *) out->data, out->len, &error))
    die ("writing an image file", error);
}

typedef struct {
  const char *name;
  double value;
  const char *unit;
  const char *target;
  int pass;  /* 1 pass, 0 fail, -1 information only */
} Row;

static void
print_row (const Row *row)
{
  printf ("%-44s %12.3f %-8s %-14s %s\n", row->name, row->value, row->unit,
          row->target != NULL ? row->target : "",
          row->pass < 0 ? "" : row->pass ? "PASS" : "FAIL");
}

/* A bundle as far as registering it goes: safetensors with metadata and no tensors. */
static char *
write_bundle (const char *dir)
{
  const char *json = "{\"__metadata__\":{\"ead.format_version\":\"1\","
                     "\"ead.arch\":\"efficientad-s\",\"ead.input.height\":\"256\","
                     "\"ead.input.width\":\"256\"}}";
  size_t n = (strlen (json) + 7) / 8 * 8;
  g_autofree guint8 *data = g_malloc (8 + n);
  g_autoptr (GError) error = NULL;
  char *path = g_build_filename (dir, "bench.ead.safetensors", NULL);

  for (int i = 0; i < 8; i++)
    data[i] = (guint8) ((guint64) n >> (8 * i));
  memset (data + 8, ' ', n);
  memcpy (data + 8, json, strlen (json));
  if (!g_file_set_contents (path, (const char *) data, (gssize) (8 + n), &error))
    die ("writing the bundle", error);
  return path;
}

static double
bench_import (const char *dir, guint n_files, Row *row, guint64 *total_bytes)
{
  g_autofree char *images = g_build_filename (dir, "images", NULL);
  g_autofree char *project_path = g_build_filename (dir, "import", "project.ead", NULL);
  g_autofree char *project_dir = g_path_get_dirname (project_path);
  g_autoptr (GError) error = NULL;
  g_autoptr (EadImportReport) report = NULL;
  g_autoptr (EadProject) project = NULL;
  /* Four bases from 64 to 256 KB, 150 KB on average. */
  GBytes *bases[4];
  gboolean png[4] = { TRUE, TRUE, FALSE, FALSE };
  double start, seconds;

  g_mkdir_with_parents (images, 0755);
  g_mkdir_with_parents (project_dir, 0755);
  bases[0] = encode_png (dir, 160, 136, 1);   /* ~64 KB */
  bases[1] = encode_png (dir, 296, 288, 2);   /* ~250 KB */
  bases[2] = encode_jpeg (352, 256, 3);       /* ~70 KB */
  bases[3] = encode_jpeg (600, 480, 4);       /* ~220 KB */
  *total_bytes = 0;
  for (guint i = 0; i < n_files; i++)
    {
      g_autofree char *sub = g_strdup_printf ("%s/%02u", images, i / 1000);
      g_autofree char *path = g_strdup_printf ("%s/%05u.%s", sub, i, png[i % 4] ? "png" : "jpg");

      if (i % 1000 == 0)
        g_mkdir_with_parents (sub, 0755);
      write_copy (path, bases[i % 4], png[i % 4], i);
      *total_bytes += g_bytes_get_size (bases[i % 4]);
    }
  for (int i = 0; i < 4; i++)
    g_bytes_unref (bases[i]);

  project = ead_project_create (project_path, &error);
  if (project == NULL)
    die ("creating the import project", error);
  start = now_ms ();
  report = ead_project_import (project, images, NULL, NULL, NULL, &error);
  seconds = (now_ms () - start) / 1000.0;
  if (report == NULL)
    die ("importing", error);
  if (report->n_added != n_files || report->n_failed != 0)
    {
      fprintf (stderr, "store-bench: imported %u of %u files, %u failed\n", report->n_added,
                       n_files, report->n_failed);
      exit (2);
    }
  *row = (Row) { "import (hash + header), files/s", n_files / seconds, "files/s", ">= 2000",
                 n_files / seconds >= 2000.0 };
  return seconds;
}

/* A project of n images with a score each under one model. */
static void
build_scored_project (const char *path, const char *dir, guint n, gint64 *model_out)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadProject) project = ead_project_create (path, &error);
  g_autofree char *bundle = write_bundle (dir);
  GRand *rand = g_rand_new_with_seed (11);
  const guint batch = 5000;
  EadNewImage *images = g_new0 (EadNewImage, batch);
  EadResultInput *results = g_new0 (EadResultInput, batch);
  guint8 *hashes = g_malloc ((size_t) batch * EAD_IMAGE_HASH_SIZE);
  gint64 *ids = g_new (gint64, batch);
  char **paths = g_new0 (char *, batch);
  float map[MAP_SIDE * MAP_SIDE];
  gint64 model, run;

  if (project == NULL)
    die ("creating the scored project", error);
  model = ead_project_add_model (project, bundle, NULL, &error);
  if (model == 0)
    die ("registering the model", error);
  for (int i = 0; i < MAP_SIDE * MAP_SIDE; i++)
    map[i] = (float) i / (MAP_SIDE * MAP_SIDE);
  for (guint first = 0; first < n; first += batch)
    {
      guint count = MIN (batch, n - first);

      for (guint i = 0; i < count; i++)
        {
          guint k = first + i;
          EadLabel label = k % 10 == 0 ? EAD_LABEL_DEFECT
                           : k % 10 < 8 ? EAD_LABEL_GOOD : EAD_LABEL_UNLABELLED;

          g_free (paths[i]);
          paths[i] = g_strdup_printf ("%s/set-%02u/image-%06u.png", dir, k / 10000, k);
          for (int b = 0; b < EAD_IMAGE_HASH_SIZE; b++)
            hashes[(size_t) i * EAD_IMAGE_HASH_SIZE + b] = (guint8) ((guint64) k >> (8 * (b % 4)))
                                                           ^ (guint8) b;
          images[i] = (EadNewImage) { .path = paths[i],
                                      .hash = hashes + (size_t) i * EAD_IMAGE_HASH_SIZE,
                                      .size = 150000, .width = 256, .height = 256,
                                      .format = "png", .label = label,
                                      .split = label == EAD_LABEL_UNLABELLED ? EAD_SPLIT_NONE
                                                                             : EAD_SPLIT_TEST };
        }
      if (!ead_project_add_images (project, images, count, ids, &error))
        die ("adding images", error);
      if (first == 0)
        {
          run = ead_project_inference_run_new (project, model, NULL, &error);
          if (run == 0)
            die ("starting a run", error);
        }
      for (guint i = 0; i < count; i++)
        {
          double score = (float) (images[i].label == EAD_LABEL_DEFECT
                                  ? g_rand_double_range (rand, 0.3, 1.0)
                                  : g_rand_double_range (rand, 0.0, 0.6));

          results[i] = (EadResultInput) { .image_id = ids[i], .score = score, .map = map,
                                          .map_width = MAP_SIDE, .map_height = MAP_SIDE };
        }
      if (!ead_project_add_results (project, run, results, count, &error))
        die ("adding results", error);
    }
  *model_out = model;
  for (guint i = 0; i < batch; i++)
    g_free (paths[i]);
  g_free (paths);
  g_free (ids);
  g_free (hashes);
  g_free (results);
  g_free (images);
  g_rand_free (rand);
}

static void
remove_tree (const char *path)
{
  g_autoptr (GDir) dir = g_dir_open (path, 0, NULL);
  const char *name;

  while (dir != NULL && (name = g_dir_read_name (dir)) != NULL)
    {
      g_autofree char *child = g_build_filename (path, name, NULL);

      if (g_file_test (child, G_FILE_TEST_IS_DIR) && !g_file_test (child, G_FILE_TEST_IS_SYMLINK))
        remove_tree (child);
      else
        g_unlink (child);
    }
  g_rmdir (path);
}

static int
compare_doubles (const void *a, const void *b)
{
  double x = *(const double *) a, y = *(const double *) b;

  return (x > y) - (x < y);
}

int
main (int argc, char **argv)
{
  gint64 n_files = 10000, n_images = 100000;
  g_autofree char *dir_option = NULL;
  const GOptionEntry entries[] = {
    { "files", 0, 0, G_OPTION_ARG_INT64, &n_files, "Image files to import (10000)", "N" },
    { "images", 0, 0, G_OPTION_ARG_INT64, &n_images,
      "Images in the project for the count and open measures (100000)", "M" },
    { "dir", 0, 0, G_OPTION_ARG_FILENAME, &dir_option,
      "Where to write the files (default: a new temporary folder, removed afterwards)", "DIR" },
    G_OPTION_ENTRY_NULL
  };
  g_autoptr (GOptionContext) context = g_option_context_new ("- time the project store");
  g_autoptr (GError) error = NULL;
  g_autofree char *dir = NULL;
  g_autofree char *scored_path = NULL;
  g_autofree char *scored_dir = NULL;
  g_autoptr (EadScoreTable) table = NULL;
  g_autofree guint8 *buffer = NULL;
  Row rows[10];
  int n_rows = 0, failed = 0;
  guint64 import_bytes = 0;
  double start, load_ms, import_s, per_query_us, opens[7], checksum = 0.0;
  gint64 model = 0;
  const int n_queries = 100000;

  g_option_context_add_main_entries (context, entries, NULL);
  if (!g_option_context_parse (context, &argc, &argv, &error))
    {
      fprintf (stderr, "store-bench: %s\n", error->message);
      return 2;
    }
  if (n_files < 1 || n_images < FIRST_PAGE)
    {
      fprintf (stderr, "store-bench: --files must be at least 1 and --images at least %d\n",
               FIRST_PAGE);
      return 2;
    }
  dir = dir_option != NULL ? g_strdup (dir_option)
                           : g_dir_make_tmp ("store-bench-XXXXXX", &error);
  if (dir == NULL)
    die ("making a temporary folder", error);
  g_mkdir_with_parents (dir, 0755);

  /* The hashes the import could use, over 64 MiB in memory. */
  {
    const size_t size = 64 << 20;
    g_autoptr (GChecksum) sha = g_checksum_new (G_CHECKSUM_SHA256);
    volatile XXH64_hash_t sink;
    double xxh_ms, sha_ms;

    buffer = g_malloc (size);
    for (size_t i = 0; i < size; i++)
      buffer[i] = (guint8) (i * 2654435761u >> 13);
    start = now_ms ();
    sink = XXH3_128bits (buffer, size).low64;
    xxh_ms = now_ms () - start;
    (void) sink;
    start = now_ms ();
    g_checksum_update (sha, buffer, size);
    g_checksum_get_string (sha);
    sha_ms = now_ms () - start;
    rows[n_rows++] = (Row) { "hash speed XXH3-128 (chosen), MB/s", size / 1e3 / xxh_ms, "MB/s",
                             NULL, -1 };
    rows[n_rows++] = (Row) { "hash speed SHA-256 (GLib), MB/s", size / 1e3 / sha_ms, "MB/s",
                             NULL, -1 };
  }

  import_s = bench_import (dir, (guint) n_files, &rows[n_rows++], &import_bytes);
  rows[n_rows++] = (Row) { "import, MB/s of image data", import_bytes / 1e6 / import_s, "MB/s",
                           NULL, -1 };

  scored_dir = g_build_filename (dir, "scored", NULL);
  g_mkdir_with_parents (scored_dir, 0755);
  scored_path = g_build_filename (scored_dir, "project.ead", NULL);
  start = now_ms ();
  build_scored_project (scored_path, scored_dir, (guint) n_images, &model);
  fprintf (stderr, "store-bench: built a project of %" G_GINT64_FORMAT " scored images in "
           "%.1f s\n", n_images, (now_ms () - start) / 1000.0);

  /* Open, count, first page: the first time (the file's pages in the OS cache, our
   * caches empty), then the median of further runs. */
  for (int r = 0; r < (int) G_N_ELEMENTS (opens); r++)
    {
      g_autoptr (EadProject) project = NULL;
      g_autoptr (GPtrArray) page = NULL;
      guint64 count = 0;

      start = now_ms ();
      project = ead_project_open (scored_path, &error);
      if (project == NULL || !ead_project_count_images (project, NULL, &count, &error)
          || (page = ead_project_list_images (project, NULL, 0, FIRST_PAGE, &error)) == NULL)
        die ("opening the project", error);
      opens[r] = now_ms () - start;
      if (count != (guint64) n_images || page->len != FIRST_PAGE)
        {
          fprintf (stderr, "store-bench: the project has %" G_GUINT64_FORMAT " images\n", count);
          return 2;
        }
    }
  rows[n_rows++] = (Row) { "open + count + first page (first), ms", opens[0], "ms", "< 200",
                           opens[0] < 200.0 };
  qsort (opens + 1, G_N_ELEMENTS (opens) - 1, sizeof (double), compare_doubles);
  rows[n_rows++] = (Row) { "open + count + first page (median), ms", opens[3], "ms", "< 200",
                           opens[3] < 200.0 };

  {
    g_autoptr (EadProject) project = ead_project_open (scored_path, &error);
    GRand *rand = g_rand_new_with_seed (5);
    double *thresholds = g_new (double, n_queries);
    EadThresholdCounts counts;

    if (project == NULL)
      die ("opening the project", error);
    start = now_ms ();
    table = ead_project_load_scores (project, model, &error);
    load_ms = now_ms () - start;
    if (table == NULL || ead_score_table_size (table) != (guint) n_images)
      die ("loading the scores", error);
    for (int q = 0; q < n_queries; q++)
      thresholds[q] = g_rand_double_range (rand, 0.0, 1.0);
    start = now_ms ();
    for (int q = 0; q < n_queries; q++)
      {
        ead_score_table_count (table, thresholds[q], thresholds[q] - 0.05, &counts);
        checksum += counts.n_fail + counts.true_positive;
      }
    per_query_us = (now_ms () - start) * 1000.0 / n_queries;
    g_free (thresholds);
    g_rand_free (rand);
  }
  rows[n_rows++] = (Row) { "threshold count over the scores, us/query", per_query_us, "us",
                           "< 1000 (1 ms)", per_query_us < 1000.0 };
  rows[n_rows++] = (Row) { "load the scores once (GUI opens a model), ms", load_ms, "ms", NULL,
                           -1 };

  printf ("store-bench: %" G_GINT64_FORMAT " files imported, %" G_GINT64_FORMAT
          " images scored (check %.0f)\n\n", n_files, n_images, checksum);
  printf ("%-44s %12s %-8s %-14s %s\n", "measure", "value", "unit", "target", "result");
  for (int i = 0; i < n_rows; i++)
    {
      print_row (&rows[i]);
      failed += rows[i].pass == 0;
    }

  if (dir_option == NULL)
    remove_tree (dir);
  return failed == 0 ? 0 : 1;
}
