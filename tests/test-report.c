/* test-report.c: CSV and PDF reports from the project store.
 *
 * A project with known scores (stored directly, no network), a threshold and a review
 * band: the CSV's rows, verdicts and quoting; the summary counts; a PDF that starts
 * like one, renders with pdftoppm (when installed) to pages that are not blank, and
 * shows a flagged image whose file is gone; atomic writing: a read-only folder, a
 * missing folder and a cancel leave an existing report as it was and no temporary file.
 */
#include <errno.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include <gio/gio.h>
#include <glib.h>
#include <glib/gstdio.h>

#include "ead-bundle.h"
#include "ead-error.h"
#include "ead-image.h"
#include "ead-import.h"
#include "ead-model.h"
#include "ead-project.h"
#include "ead-report.h"
#include "ead-threshold.h"
#include "ead-test-util.h"

#define MAP_SIDE 56
#define THRESHOLD 0.5
#define REVIEW 0.3
#define ODD_NAME "odd, \"name\".png"

static char *tmp_dir;
static char *project_file;
static gint64 model_id;       /* with scores, a threshold and a review band */
static gint64 bare_model_id;  /* with one score and no threshold */

typedef struct {
  const char *name;
  EadLabel label;
  double score;          /* NAN: unscored */
  const char *failure;   /* recorded as a failure instead of a score */
} Shot;

static const Shot shots[] = {
  { "good-0.png", EAD_LABEL_GOOD, 0.1, NULL },
  { "good-1.png", EAD_LABEL_GOOD, 0.2, NULL },
  { "good-2.png", EAD_LABEL_GOOD, 0.35, NULL },
  { "good-3.png", EAD_LABEL_GOOD, 0.6, NULL },
  { "gone.png", EAD_LABEL_GOOD, 0.8, NULL },
  { "defect-0.png", EAD_LABEL_DEFECT, 0.7, NULL },
  { "defect-1.png", EAD_LABEL_DEFECT, 0.9, NULL },
  { "defect-2.png", EAD_LABEL_DEFECT, 0.25, NULL },
  { ODD_NAME, EAD_LABEL_UNLABELLED, 0.55, NULL },
  { "broken.png", EAD_LABEL_UNLABELLED, NAN, "broken.png: not an image" },
  { "later.png", EAD_LABEL_UNLABELLED, NAN, NULL },
};

static char *
tmp_path (const char *name)
{
  return g_build_filename (tmp_dir, name, NULL);
}

static void
write_png (const char *path, int width, int height, guint seed)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadImage) image = ead_image_new (width, height);

  for (int y = 0; y < height; y++)
    for (int x = 0; x < width; x++)
      {
        uint8_t *p = image->rgb + 3 * ((size_t) y * width + x);

        p[0] = (uint8_t) (60 + (x * 3 + seed * 17) % 120);
        p[1] = (uint8_t) (80 + (y * 2 + seed * 5) % 100);
        p[2] = (uint8_t) (90 + (x + y + seed) % 60);
      }
  g_assert_true (ead_image_save_png (image, path, &error));
}

/* A map with a bright spot whose height is the score. */
static void
fill_map (float *map, double score, guint seed)
{
  int cx = 10 + (int) (seed * 7 % 36), cy = 12 + (int) (seed * 11 % 30);

  for (int y = 0; y < MAP_SIDE; y++)
    for (int x = 0; x < MAP_SIDE; x++)
      map[y * MAP_SIDE + x] = (float) (score * exp (-((x - cx) * (x - cx) + (y - cy) * (y - cy))
                                                    / 30.0));
}

static gint64
image_id (EadProject *project, const char *name)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *path = g_build_filename (tmp_dir, "shots", name, NULL);
  g_autoptr (EadProjectImage) image = ead_project_find_image (project, path, &error);

  g_assert_no_error (error);
  g_assert_nonnull (image);
  return image->id;
}

static void
store_results (EadProject *project, gint64 model, gboolean all)
{
  g_autoptr (GError) error = NULL;
  float maps[G_N_ELEMENTS (shots)][MAP_SIDE * MAP_SIDE];
  EadResultInput results[G_N_ELEMENTS (shots)];
  guint n = 0;
  gint64 run = ead_project_inference_run_new (project, model, NULL, &error);

  g_assert_no_error (error);
  for (guint i = 0; i < G_N_ELEMENTS (shots) && (all || n == 0); i++)
    {
      if (isnan (shots[i].score) && shots[i].failure == NULL)
        continue;
      results[n] = (EadResultInput) { .image_id = image_id (project, shots[i].name),
                                      .failure = shots[i].failure };
      if (shots[i].failure == NULL)
        {
          fill_map (maps[n], shots[i].score, i);
          results[n].score = shots[i].score;
          results[n].map = maps[n];
          results[n].map_width = MAP_SIDE;
          results[n].map_height = MAP_SIDE;
        }
      n++;
    }
  g_assert_true (ead_project_add_results (project, run, results, n, &error));
  g_assert_no_error (error);
  g_assert_true (ead_project_inference_run_finish (project, run, EAD_RUN_DONE, NULL, &error));
}

static void
make_project (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *shots_dir = tmp_path ("shots");
  g_autofree char *project_dir = tmp_path ("project");
  g_autofree char *bundle = tmp_path ("model.ead.safetensors");
  g_autofree char *bare_bundle = tmp_path ("bare.ead.safetensors");
  g_autofree char *gone = NULL;
  g_autoptr (EadModel) model = ead_model_new (EAD_ARCH_SMALL);
  g_autoptr (EadProject) project = NULL;
  g_autoptr (EadImportReport) import = NULL;

  g_assert_cmpint (g_mkdir_with_parents (shots_dir, 0755), ==, 0);
  g_assert_cmpint (g_mkdir_with_parents (project_dir, 0755), ==, 0);
  for (guint i = 0; i < G_N_ELEMENTS (shots); i++)
    {
      g_autofree char *path = g_build_filename (shots_dir, shots[i].name, NULL);

      write_png (path, 40 + (int) i, 32, i);
    }
  project_file = g_build_filename (project_dir, EAD_PROJECT_FILE_NAME, NULL);
  project = ead_project_create (project_file, &error);
  g_assert_no_error (error);
  import = ead_project_import (project, shots_dir, NULL, NULL, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (import->n_added, ==, G_N_ELEMENTS (shots));
  for (guint i = 0; i < G_N_ELEMENTS (shots); i++)
    {
      gint64 id = image_id (project, shots[i].name);

      g_assert_true (ead_project_set_labels (project, &id, 1, shots[i].label, &error));
    }

  ead_model_init_random (model, 1);
  g_assert_true (ead_bundle_write (model, bundle, &error));
  g_assert_no_error (error);
  g_assert_true (ead_bundle_write (model, bare_bundle, &error));
  g_assert_no_error (error);
  model_id = ead_project_add_model (project, bundle, NULL, &error);
  g_assert_no_error (error);
  bare_model_id = ead_project_add_model (project, bare_bundle, NULL, &error);
  g_assert_no_error (error);
  store_results (project, model_id, TRUE);
  store_results (project, bare_model_id, FALSE);
  g_assert_true (ead_project_set_threshold (project, model_id, THRESHOLD, "tester", NULL,
                                            &error));
  g_assert_true (ead_project_set_review_threshold (project, model_id, REVIEW, "tester", NULL,
                                                   &error));
  g_assert_no_error (error);

  gone = g_build_filename (shots_dir, "gone.png", NULL);
  g_assert_cmpint (g_unlink (gone), ==, 0);
}

static EadProject *
open_project (void)
{
  g_autoptr (GError) error = NULL;
  EadProject *project = ead_project_open (project_file, &error);

  g_assert_no_error (error);
  return project;
}

/* RFC 4180 parsing, for checking: rows of fields. */
static GPtrArray *
parse_csv (const char *text)
{
  GPtrArray *rows = g_ptr_array_new_with_free_func ((GDestroyNotify) g_ptr_array_unref);
  GPtrArray *row = g_ptr_array_new_with_free_func (g_free);
  GString *field = g_string_new (NULL);
  const char *c = text;

  while (*c != '\0')
    {
      if (*c == '"')
        {
          for (c++; *c != '\0'; c++)
            {
              if (*c == '"' && c[1] == '"')
                g_string_append_c (field, *c++);
              else if (*c == '"')
                break;
              else
                g_string_append_c (field, *c);
            }
          g_assert_cmpint (*c, ==, '"');
          c++;
          g_assert_true (*c == ',' || *c == '\n');
          continue;
        }
      if (*c == ',' || *c == '\n')
        {
          g_ptr_array_add (row, g_strdup (field->str));
          g_string_truncate (field, 0);
          if (*c == '\n')
            {
              g_ptr_array_add (rows, row);
              row = g_ptr_array_new_with_free_func (g_free);
            }
          c++;
          continue;
        }
      g_string_append_c (field, *c++);
    }
  g_assert_cmpuint (row->len, ==, 0);
  g_assert_cmpuint (field->len, ==, 0);
  g_ptr_array_unref (row);
  g_string_free (field, TRUE);
  return rows;
}

static const char *
cell (GPtrArray *row, guint column)
{
  return g_ptr_array_index (row, column);
}

static GPtrArray *
find_row (GPtrArray *rows, const char *name)
{
  for (guint i = 1; i < rows->len; i++)
    {
      GPtrArray *row = rows->pdata[i];

      if (g_str_has_suffix (cell (row, 0), name))
        return row;
    }
  g_error ("no row for %s", name);
}

static void
test_csv (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadProject) project = open_project ();
  g_autofree char *path = tmp_path ("report.csv");
  g_autofree char *text = NULL;
  g_autoptr (GPtrArray) rows = NULL;
  g_autoptr (GPtrArray) reports = NULL;
  g_autofree char *odd_path = g_build_filename (tmp_dir, "shots", ODD_NAME, NULL);
  g_autofree char *quoted = NULL;
  EadReportOptions options;
  EadReportSummary summary;
  GPtrArray *row;

  ead_report_options_init (&options);
  options.model_id = model_id;
  g_assert_true (ead_report_write_csv (project, &options, path, &summary, &error));
  g_assert_no_error (error);
  g_assert_true (g_file_get_contents (path, &text, NULL, NULL));
  g_test_message ("%s", text);

  rows = parse_csv (text);
  g_assert_cmpuint (rows->len, ==, 1 + G_N_ELEMENTS (shots));
  row = rows->pdata[0];
  g_assert_cmpuint (row->len, ==, 8);
  g_assert_cmpstr (cell (row, 0), ==, "path");
  g_assert_cmpstr (cell (row, 3), ==, "score");
  g_assert_cmpstr (cell (row, 4), ==, "verdict");
  g_assert_cmpstr (cell (row, 6), ==, "threshold");
  for (guint i = 1; i < rows->len; i++)
    g_assert_cmpuint (((GPtrArray *) rows->pdata[i])->len, ==, 8);

  /* The quoting itself: the comma and the doubled quotes. */
  quoted = g_strdup_printf ("\n\"%s/shots/odd, \"\"name\"\".png\",unlabelled,,0.55,fail,",
                            tmp_dir);
  g_assert_nonnull (strstr (text, quoted));
  row = find_row (rows, ODD_NAME);
  g_assert_cmpstr (cell (row, 0), ==, odd_path);

  row = find_row (rows, "good-0.png");
  g_assert_cmpstr (cell (row, 1), ==, "good");
  g_assert_cmpstr (cell (row, 2), ==, "");
  g_assert_cmpstr (cell (row, 3), ==, "0.1");
  g_assert_cmpstr (cell (row, 4), ==, "pass");
  g_assert_cmpstr (cell (row, 5), ==, "model");
  g_assert_cmpstr (cell (row, 6), ==, "0.5");
  g_assert_cmpstr (cell (find_row (rows, "good-2.png"), 4), ==, "review");
  g_assert_cmpstr (cell (find_row (rows, "good-3.png"), 4), ==, "fail");
  g_assert_cmpstr (cell (find_row (rows, "defect-2.png"), 4), ==, "pass");
  row = find_row (rows, "broken.png");
  g_assert_cmpstr (cell (row, 3), ==, "");
  g_assert_cmpstr (cell (row, 4), ==, "error");
  g_assert_cmpstr (cell (row, 7), ==, "broken.png: not an image");
  g_assert_cmpstr (cell (find_row (rows, "later.png"), 4), ==, "unscored");

  g_assert_cmpint (summary.model_id, ==, model_id);
  g_assert_cmpfloat (summary.threshold, ==, THRESHOLD);
  g_assert_cmpfloat (summary.review, ==, REVIEW);
  g_assert_cmpuint (summary.n_images, ==, 11);
  g_assert_cmpuint (summary.n_scored, ==, 9);
  g_assert_cmpuint (summary.n_unscored, ==, 2);
  g_assert_cmpuint (summary.n_errors, ==, 1);
  g_assert_cmpuint (summary.counts.n_pass, ==, 3);
  g_assert_cmpuint (summary.counts.n_review, ==, 1);
  g_assert_cmpuint (summary.counts.n_fail, ==, 5);
  g_assert_cmpuint (summary.n_flagged, ==, 6);
  g_assert_cmpuint (summary.counts.true_positive, ==, 2);
  g_assert_cmpuint (summary.counts.false_negative, ==, 1);
  g_assert_cmpuint (summary.counts.false_positive, ==, 2);
  g_assert_cmpuint (summary.counts.true_negative, ==, 3);

  /* Recorded in the project. */
  reports = ead_project_list_reports (project, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (reports->len, >=, 1);
  g_assert_cmpint (((EadProjectReport *) reports->pdata[0])->id, ==, summary.report_id);
  g_assert_cmpstr (((EadProjectReport *) reports->pdata[0])->format, ==, "csv");
  g_assert_cmpfloat (((EadProjectReport *) reports->pdata[0])->threshold, ==, THRESHOLD);
  g_assert_nonnull (strstr (((EadProjectReport *) reports->pdata[0])->summary,
                            "\"flagged\":6"));
}

/* Without a threshold there is no verdict, only scores. */
static void
test_csv_without_threshold (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadProject) project = open_project ();
  g_autofree char *path = tmp_path ("bare.csv");
  g_autofree char *text = NULL;
  g_autoptr (GPtrArray) rows = NULL;
  EadReportOptions options;
  EadReportSummary summary;
  GPtrArray *row;

  ead_report_options_init (&options);
  options.model_id = bare_model_id;
  options.filter.label = EAD_LABEL_GOOD;
  g_assert_true (ead_report_write_csv (project, &options, path, &summary, &error));
  g_assert_no_error (error);
  g_assert_true (g_file_get_contents (path, &text, NULL, NULL));
  rows = parse_csv (text);
  g_assert_cmpuint (rows->len, ==, 1 + 5);
  row = find_row (rows, "good-0.png");
  g_assert_cmpstr (cell (row, 3), ==, "0.1");
  g_assert_cmpstr (cell (row, 4), ==, "");
  g_assert_cmpstr (cell (row, 6), ==, "");
  g_assert_cmpstr (cell (find_row (rows, "good-1.png"), 4), ==, "unscored");
  g_assert_true (isnan (summary.threshold));
  g_assert_cmpuint (summary.n_flagged, ==, 0);
  g_assert_cmpuint (summary.n_scored, ==, 1);
}

static gint
compare_paths (gconstpointer a, gconstpointer b)
{
  return g_strcmp0 (*(const char *const *) a, *(const char *const *) b);
}

/* The PNG files pdftoppm wrote for prefix, in page order. */
static GPtrArray *
rendered_pages (const char *dir, const char *prefix)
{
  GPtrArray *pages = g_ptr_array_new_with_free_func (g_free);
  GDir *listing = g_dir_open (dir, 0, NULL);
  const char *name;

  while ((name = g_dir_read_name (listing)) != NULL)
    if (g_str_has_prefix (name, prefix) && g_str_has_suffix (name, ".png"))
      g_ptr_array_add (pages, g_build_filename (dir, name, NULL));
  g_dir_close (listing);
  g_ptr_array_sort (pages, compare_paths);
  return pages;
}

/* The share of pixels that are not white. */
static double
ink (const char *png)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadImage) image = ead_image_load (png, 0, &error);
  size_t n, dark = 0;

  g_assert_no_error (error);
  n = (size_t) image->width * image->height;
  for (size_t i = 0; i < n; i++)
    if (image->rgb[3 * i] < 200 || image->rgb[3 * i + 1] < 200 || image->rgb[3 * i + 2] < 200)
      dark++;
  return (double) dark / (double) n;
}

static void
test_pdf (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadProject) project = open_project ();
  g_autofree char *path = tmp_path ("report.pdf");
  g_autofree char *data = NULL;
  g_autofree char *pdftoppm = g_find_program_in_path ("pdftoppm");
  g_autofree char *render_dir = tmp_path ("pages");
  g_autoptr (GPtrArray) reports = NULL;
  EadReportSummary summary;
  gsize size;

  g_assert_true (ead_report_write_pdf (project, NULL, path, NULL, NULL, NULL, &summary,
                                       &error));
  g_assert_no_error (error);
  /* The latest model is the bare one; this report is about the other. */
  g_assert_cmpint (summary.model_id, ==, bare_model_id);
  {
    EadReportOptions options;

    ead_report_options_init (&options);
    options.model_id = model_id;
    g_assert_true (ead_report_write_pdf (project, &options, path, NULL, NULL, NULL, &summary,
                                         &error));
    g_assert_no_error (error);
  }
  g_assert_cmpuint (summary.n_flagged, ==, 6);
  g_assert_true (g_file_get_contents (path, &data, &size, NULL));
  g_assert_cmpuint (size, >, 1000);
  g_assert_true (g_str_has_prefix (data, "%PDF-"));
  g_assert_nonnull (g_strrstr_len (data + size - 32, 32, "%%EOF"));

  reports = ead_project_list_reports (project, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (((EadProjectReport *) reports->pdata[0])->format, ==, "pdf");
  g_assert_cmpint (((EadProjectReport *) reports->pdata[0])->model_id, ==, model_id);

  if (pdftoppm == NULL)
    {
      g_test_message ("pdftoppm is not installed (poppler-utils): the PDF was not rendered");
      return;
    }
  {
    g_autofree char *prefix = g_build_filename (render_dir, "page", NULL);
    const char *argv[] = { pdftoppm, "-png", "-r", "40", path, prefix, NULL };
    g_autofree char *err = NULL;
    g_autoptr (GPtrArray) pages = NULL;
    int status;

    g_assert_cmpint (g_mkdir (render_dir, 0755), ==, 0);
    g_assert_true (g_spawn_sync (NULL, (char **) argv, NULL, G_SPAWN_STDOUT_TO_DEV_NULL, NULL,
                                 NULL, NULL, &err, &status, &error));
    g_assert_no_error (error);
    if (!g_spawn_check_wait_status (status, &error))
      g_error ("pdftoppm: %s", err);
    pages = rendered_pages (render_dir, "page");
    /* The summary, then 6 flagged images at 4 a page. */
    g_assert_cmpuint (pages->len, ==, 3);
    for (guint i = 0; i < pages->len; i++)
      {
        double share = ink (pages->pdata[i]);

        g_test_message ("%s: %.1f %% ink", (char *) pages->pdata[i], 100 * share);
        g_assert_cmpfloat (share, >, 0.01);
      }
  }
}

static void
assert_no_temporary_files (const char *dir)
{
  GDir *listing = g_dir_open (dir, 0, NULL);
  const char *name;

  g_assert_nonnull (listing);
  while ((name = g_dir_read_name (listing)) != NULL)
    if (strstr (name, ".tmp-") != NULL)
      g_error ("a temporary file was left behind: %s", name);
  g_dir_close (listing);
}

static void
assert_contents (const char *path, const char *expected)
{
  g_autofree char *text = NULL;

  g_assert_true (g_file_get_contents (path, &text, NULL, NULL));
  g_assert_cmpstr (text, ==, expected);
}

typedef struct {
  gint *cancel;
  guint calls;
} CancelAfterFirst;

static void
cancel_after_first (guint done, guint total, gpointer user_data)
{
  CancelAfterFirst *state = user_data;

  state->calls++;
  g_atomic_int_set (state->cancel, 1);
}

static void
test_atomic (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadProject) project = open_project ();
  g_autofree char *dir = tmp_path ("reports");
  g_autofree char *csv = g_build_filename (dir, "keep.csv", NULL);
  g_autofree char *pdf = g_build_filename (dir, "keep.pdf", NULL);
  g_autofree char *nowhere = tmp_path ("missing-folder/report.csv");
  gboolean as_nobody = geteuid () == 0;
  gint cancel = 0;
  CancelAfterFirst state = { .cancel = &cancel };
  EadReportOptions options;
  gboolean ok;

  ead_report_options_init (&options);
  options.model_id = model_id;
  g_assert_cmpint (g_mkdir (dir, 0755), ==, 0);
  g_assert_true (g_file_set_contents (csv, "old csv\n", -1, NULL));
  g_assert_true (g_file_set_contents (pdf, "old pdf\n", -1, NULL));

  /* A folder the writer may not write: refused, the old report stays. */
  if (as_nobody)
    {
      g_assert_cmpint (g_chmod (tmp_dir, 0755), ==, 0);
      if (!ead_test_become_nobody ())
        {
          g_test_skip ("running as root without the right to switch to another user");
          return;
        }
    }
  else
    g_assert_cmpint (g_chmod (dir, 0555), ==, 0);
  ok = ead_report_write_csv (project, &options, csv, NULL, &error);
  if (as_nobody)
    ead_test_become_root ();
  else
    g_assert_cmpint (g_chmod (dir, 0755), ==, 0);
  g_assert_false (ok);
  g_assert_error (error, EAD_ERROR, EAD_ERROR_IO);
  g_assert_nonnull (strstr (error->message, csv));
  g_test_message ("%s", error->message);
  g_clear_error (&error);
  assert_contents (csv, "old csv\n");

  /* A folder that does not exist. */
  g_assert_false (ead_report_write_csv (project, &options, nowhere, NULL, &error));
  g_assert_error (error, EAD_ERROR, EAD_ERROR_IO);
  g_assert_nonnull (strstr (error->message, "missing-folder"));
  g_clear_error (&error);
  g_assert_false (g_file_test (nowhere, G_FILE_TEST_EXISTS));

  /* Cancelled half-way through the flagged images. */
  g_assert_false (ead_report_write_pdf (project, &options, pdf, cancel_after_first, &state,
                                        &cancel, NULL, &error));
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_clear_error (&error);
  g_assert_cmpuint (state.calls, ==, 1);
  assert_contents (pdf, "old pdf\n");
  assert_no_temporary_files (dir);

  /* And replaced when all goes well. */
  g_assert_true (ead_report_write_csv (project, &options, csv, NULL, &error));
  g_assert_no_error (error);
  assert_no_temporary_files (dir);
  {
    g_autofree char *text = NULL;

    g_assert_true (g_file_get_contents (csv, &text, NULL, NULL));
    g_assert_true (g_str_has_prefix (text, "path,label,"));
  }
}

static void
test_no_model (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *dir = tmp_path ("empty-project");
  g_autofree char *file = g_build_filename (dir, EAD_PROJECT_FILE_NAME, NULL);
  g_autofree char *csv = g_build_filename (dir, "r.csv", NULL);
  g_autoptr (EadProject) project = NULL;

  g_assert_cmpint (g_mkdir (dir, 0755), ==, 0);
  project = ead_project_create (file, &error);
  g_assert_no_error (error);
  g_assert_false (ead_report_write_csv (project, NULL, csv, NULL, &error));
  g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
  g_assert_false (g_file_test (csv, G_FILE_TEST_EXISTS));
}

int
main (int argc, char **argv)
{
  g_autoptr (GError) error = NULL;
  int status;

  g_test_init (&argc, &argv, NULL);
  tmp_dir = g_dir_make_tmp ("ead-report-XXXXXX", &error);
  g_assert_no_error (error);
  make_project ();

  g_test_add_func ("/report/csv", test_csv);
  g_test_add_func ("/report/csv-without-threshold", test_csv_without_threshold);
  g_test_add_func ("/report/pdf", test_pdf);
  g_test_add_func ("/report/atomic", test_atomic);
  g_test_add_func ("/report/no-model", test_no_model);
  status = g_test_run ();

  ead_test_remove_tree (tmp_dir);
  g_free (project_file);
  g_free (tmp_dir);
  return status;
}
