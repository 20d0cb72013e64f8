/* ead-report.c: CSV and PDF reports of a model's results.
 *
 * Everything a report shows is read in one read transaction, so that its counts, its
 * rows and its threshold agree even while an inference job commits beside it; the maps
 * of the flagged images are read while drawing (a result is replaced only when its
 * image is scored again, which a running job does not do for scored images).
 */
#include "ead-report.h"

#include <cairo-pdf.h>
#include <cairo.h>
#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <json-glib/json-glib.h>
#include <math.h>
#include <pango/pangocairo.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <jpeglib.h>

#include "ead-error.h"
#include "ead-image.h"
#include "ead-inference.h"
#include "ead-project-private.h"

/* The data */

typedef struct {
  gint64 image_id;
  char *path;           /* as stored */
  EadLabel label;
  EadSplit split;
  char *defect;
  int width;            /* from the import */
  int height;
  gboolean scored;
  double score;
  EadOutcome outcome;   /* when scored and there is a threshold */
  const char *reason;   /* why it could not be scored (owned by Report.reasons), or NULL */
} Row;

typedef struct {
  EadProject *project;
  EadProjectModel *model;
  EadThreshold threshold;
  gboolean has_threshold;
  gboolean band;
  GArray *rows;            /* Row, by image id */
  GHashTable *reasons;     /* image id → the latest failure reason */
  EadScoreTable *table;    /* the scored rows */
  EadReportSummary summary;
} Report;

void
ead_report_options_init (EadReportOptions *options)
{
  options->model_id = 0;
  ead_image_filter_init (&options->filter);
}

static void
row_clear (Row *row)
{
  g_free (row->path);
  g_free (row->defect);
}

static void
report_clear (Report *report)
{
  g_clear_pointer (&report->model, ead_project_model_free);
  g_clear_pointer (&report->rows, g_array_unref);
  g_clear_pointer (&report->reasons, g_hash_table_unref);
  g_clear_pointer (&report->table, ead_score_table_free);
}

/* BEGIN and COMMIT around the reads: every query between them sees the same committed
 * state. */
static gboolean
run_statement (EadProject *project, const char *sql, const char *what, GError **error)
{
  sqlite3_stmt *stmt = _ead_project_prepare (project, sql, error);

  return stmt != NULL && _ead_project_exec (project, stmt, what, error);
}

/* The reason of the newest failure of each image among the model's runs. */
static gboolean
read_failure_reasons (Report *report, GError **error)
{
  g_autoptr (GPtrArray) runs = ead_project_list_runs (report->project, error);

  if (runs == NULL)
    return FALSE;
  for (guint r = 0; r < runs->len; r++)
    {
      EadProjectRun *run = runs->pdata[r];
      g_autoptr (GPtrArray) failures = NULL;

      if (run->kind != EAD_RUN_INFERENCE || run->model_id != report->model->id
          || run->n_failed == 0)
        continue;
      failures = ead_project_list_inference_failures (report->project, run->id, error);
      if (failures == NULL)
        return FALSE;
      /* Runs come newest first: the first reason seen is the latest. */
      for (guint i = 0; i < failures->len; i++)
        {
          EadInferenceFailure *failure = failures->pdata[i];

          if (!g_hash_table_contains (report->reasons, &failure->image_id))
            g_hash_table_insert (report->reasons, g_memdup2 (&failure->image_id, sizeof (gint64)),
                                 g_strdup (failure->reason));
        }
    }
  return TRUE;
}

static EadOutcome
outcome_of (const Report *report, double score)
{
  if (score >= report->threshold.effective)
    return EAD_OUTCOME_FAIL;
  if (report->band && score >= report->threshold.review)
    return EAD_OUTCOME_REVIEW;
  return EAD_OUTCOME_PASS;
}

static void
build_rows (Report *report, GPtrArray *images, GPtrArray *results)
{
  g_autofree double *scores = g_new (double, MAX (results->len, 1));
  g_autofree EadLabel *labels = g_new (EadLabel, MAX (results->len, 1));
  g_autofree EadSplit *splits = g_new (EadSplit, MAX (results->len, 1));
  EadReportSummary *summary = &report->summary;
  guint next = 0, n_scored = 0;

  report->rows = g_array_sized_new (FALSE, TRUE, sizeof (Row), images->len);
  g_array_set_clear_func (report->rows, (GDestroyNotify) row_clear);
  /* Both lists are in image id order. */
  for (guint i = 0; i < images->len; i++)
    {
      EadProjectImage *image = images->pdata[i];
      Row row = {
        .image_id = image->id,
        .path = g_strdup (image->path),
        .label = image->label,
        .split = image->split,
        .defect = g_strdup (image->defect),
        .width = image->width,
        .height = image->height,
      };

      while (next < results->len
             && ((EadProjectResult *) results->pdata[next])->image_id < image->id)
        next++;
      if (next < results->len
          && ((EadProjectResult *) results->pdata[next])->image_id == image->id)
        {
          row.scored = TRUE;
          row.score = ((EadProjectResult *) results->pdata[next])->score;
          row.outcome = outcome_of (report, row.score);
          scores[n_scored] = row.score;
          labels[n_scored] = row.label;
          splits[n_scored] = row.split;
          n_scored++;
        }
      else
        row.reason = g_hash_table_lookup (report->reasons, &row.image_id);
      g_array_append_val (report->rows, row);
    }

  report->table = ead_score_table_new (scores, labels, splits, n_scored);
  summary->model_id = report->model->id;
  summary->threshold = report->threshold.effective;
  summary->review = report->band ? report->threshold.review : NAN;
  summary->n_images = report->rows->len;
  summary->n_scored = n_scored;
  summary->n_unscored = report->rows->len - n_scored;
  for (guint i = 0; i < report->rows->len; i++)
    if (g_array_index (report->rows, Row, i).reason != NULL)
      summary->n_errors++;
  ead_score_table_count (report->table, report->threshold.effective, summary->review,
                         &summary->counts);
  summary->n_flagged = report->has_threshold ? summary->counts.n_review + summary->counts.n_fail
                                             : 0;
}

static gboolean
report_load (Report *report,
             EadProject *project,
             const EadReportOptions *options,
             GError **error)
{
  EadReportOptions defaults;
  g_autoptr (GPtrArray) images = NULL;
  g_autoptr (GPtrArray) results = NULL;
  gint64 model_id;
  gboolean ok;

  if (options == NULL)
    {
      ead_report_options_init (&defaults);
      options = &defaults;
    }
  memset (report, 0, sizeof *report);
  report->project = project;
  report->reasons = g_hash_table_new_full (g_int64_hash, g_int64_equal, g_free, g_free);

  if (!run_statement (project, "BEGIN", "cannot start reading", error))
    return FALSE;
  model_id = options->model_id > 0 ? options->model_id : ead_project_latest_model (project, error);
  ok = model_id != 0
       && (report->model = ead_project_get_model (project, model_id, error)) != NULL
       && ead_project_get_threshold (project, model_id, &report->threshold, error)
       && (images = ead_project_list_images (project, &options->filter, 0, 0, error)) != NULL
       && (results = ead_project_list_results (project, model_id, &options->filter,
                                               error)) != NULL
       && read_failure_reasons (report, error);
  /* Reading only: ending the transaction cannot lose anything. */
  if (!run_statement (project, "COMMIT", "cannot end reading", ok ? error : NULL))
    ok = FALSE;
  if (!ok)
    return FALSE;

  report->has_threshold = !isnan (report->threshold.effective);
  report->band = report->has_threshold && !isnan (report->threshold.review)
                 && report->threshold.review < report->threshold.effective;
  build_rows (report, images, results);
  return TRUE;
}

static const char *
verdict_of (const Report *report, const Row *row)
{
  static const char *const names[EAD_N_OUTCOMES] = { "pass", "review", "fail" };

  if (!row->scored)
    return row->reason != NULL ? "error" : "unscored";
  return report->has_threshold ? names[row->outcome] : NULL;
}

static char *
summary_json (const EadReportSummary *summary)
{
  g_autoptr (JsonBuilder) builder = json_builder_new ();
  g_autoptr (JsonGenerator) generator = json_generator_new ();
  g_autoptr (JsonNode) root = NULL;
  const struct {
    const char *name;
    guint64 value;
  } fields[] = {
    { "images", summary->n_images },
    { "scored", summary->n_scored },
    { "unscored", summary->n_unscored },
    { "errors", summary->n_errors },
    { "pass", summary->counts.n_pass },
    { "review", summary->counts.n_review },
    { "fail", summary->counts.n_fail },
    { "flagged", summary->n_flagged },
    { "true_positive", summary->counts.true_positive },
    { "false_positive", summary->counts.false_positive },
    { "true_negative", summary->counts.true_negative },
    { "false_negative", summary->counts.false_negative },
  };

  json_builder_begin_object (builder);
  for (size_t i = 0; i < G_N_ELEMENTS (fields); i++)
    {
      json_builder_set_member_name (builder, fields[i].name);
      json_builder_add_int_value (builder, (gint64) fields[i].value);
    }
  json_builder_end_object (builder);
  root = json_builder_get_root (builder);
  json_generator_set_root (generator, root);
  return json_generator_to_data (generator, NULL);
}

static gboolean
record_report (Report *report, const char *format, const char *path, GError **error)
{
  g_autofree char *json = summary_json (&report->summary);

  report->summary.report_id = ead_project_add_report (report->project, report->model->id,
                                                      format, path,
                                                      report->threshold.effective, json, error);
  if (report->summary.report_id == 0)
    {
      g_prefix_error (error, "%s: the report was written but not recorded in the project: ",
                      path);
      return FALSE;
    }
  return TRUE;
}

/* Atomic files */

typedef struct {
  const char *path;
  char *temp_path;
  FILE *file;
  int write_errno;  /* the first write error, 0 when none */
} AtomicFile;

static gboolean
atomic_file_open (AtomicFile *file, const char *path, GError **error)
{
  int fd, saved_errno;

  *file = (AtomicFile) { .path = path };
  /* Beside the target, so that the rename stays within one file system. */
  file->temp_path = g_strdup_printf ("%s.tmp-XXXXXX", path);
  fd = g_mkstemp_full (file->temp_path, O_WRONLY | O_CLOEXEC, 0666);
  if (fd < 0)
    {
      saved_errno = errno;
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot create a temporary file: %s",
                   path, g_strerror (saved_errno));
      g_clear_pointer (&file->temp_path, g_free);
      return FALSE;
    }
  file->file = fdopen (fd, "wb");
  if (file->file == NULL)
    {
      saved_errno = errno;
      close (fd);
      g_unlink (file->temp_path);
      g_clear_pointer (&file->temp_path, g_free);
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot write: %s", path,
                   g_strerror (saved_errno));
      return FALSE;
    }
  return TRUE;
}

static void
atomic_file_write (AtomicFile *file, const void *data, size_t size)
{
  if (file->write_errno == 0 && fwrite (data, 1, size, file->file) != size)
    file->write_errno = errno != 0 ? errno : EIO;
}

static void
atomic_file_abort (AtomicFile *file)
{
  if (file->file != NULL)
    fclose (file->file);
  if (file->temp_path != NULL)
    g_unlink (file->temp_path);
  g_clear_pointer (&file->temp_path, g_free);
  file->file = NULL;
}

/* Makes the rename durable; file systems that cannot sync a folder say EINVAL. */
static void
sync_folder_of (const char *path)
{
  g_autofree char *dir = g_path_get_dirname (path);
  int fd = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

  if (fd >= 0)
    {
      fsync (fd);
      close (fd);
    }
}

static gboolean
atomic_file_commit (AtomicFile *file, GError **error)
{
  int saved_errno = file->write_errno;

  if (saved_errno == 0 && (fflush (file->file) != 0 || fsync (fileno (file->file)) != 0))
    saved_errno = errno;
  if (fclose (file->file) != 0 && saved_errno == 0)
    saved_errno = errno;
  file->file = NULL;
  if (saved_errno == 0 && g_rename (file->temp_path, file->path) != 0)
    saved_errno = errno;
  if (saved_errno != 0)
    {
      atomic_file_abort (file);
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot write: %s", file->path,
                   g_strerror (saved_errno));
      return FALSE;
    }
  g_clear_pointer (&file->temp_path, g_free);
  sync_folder_of (file->path);
  return TRUE;
}

/* CSV */

/* RFC 4180: a field holding a comma, a quote or a line break is quoted, with its
 * quotes doubled. */
static void
csv_append (GString *line, const char *value, gboolean last)
{
  if (value != NULL && strpbrk (value, ",\"\r\n") != NULL)
    {
      g_string_append_c (line, '"');
      for (const char *c = value; *c != '\0'; c++)
        {
          if (*c == '"')
            g_string_append_c (line, '"');
          g_string_append_c (line, *c);
        }
      g_string_append_c (line, '"');
    }
  else if (value != NULL)
    g_string_append (line, value);
  g_string_append_c (line, last ? '\n' : ',');
}

/* Numbers in the C locale, whatever the user's: a CSV reader expects "0.5". */
static const char *
format_number (char buffer[G_ASCII_DTOSTR_BUF_SIZE], double value)
{
  if (isnan (value))
    return NULL;
  return g_ascii_formatd (buffer, G_ASCII_DTOSTR_BUF_SIZE, "%.9g", value);
}

gboolean
ead_report_write_csv (EadProject *project,
                      const EadReportOptions *options,
                      const char *path,
                      EadReportSummary *summary,
                      GError **error)
{
  static const char header[] = "path,label,split,score,verdict,model,threshold,reason\n";
  g_autoptr (GString) line = g_string_new (NULL);
  char threshold_text[G_ASCII_DTOSTR_BUF_SIZE];
  const char *threshold;
  Report report;
  AtomicFile file;
  gboolean ok;

  g_return_val_if_fail (project != NULL && path != NULL, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  if (!report_load (&report, project, options, error))
    {
      report_clear (&report);
      return FALSE;
    }
  if (!atomic_file_open (&file, path, error))
    {
      report_clear (&report);
      return FALSE;
    }
  threshold = format_number (threshold_text, report.threshold.effective);
  atomic_file_write (&file, header, strlen (header));
  for (guint i = 0; i < report.rows->len; i++)
    {
      const Row *row = &g_array_index (report.rows, Row, i);
      char score[G_ASCII_DTOSTR_BUF_SIZE];

      g_string_truncate (line, 0);
      csv_append (line, row->path, FALSE);
      csv_append (line, ead_label_name (row->label), FALSE);
      csv_append (line, row->split == EAD_SPLIT_NONE ? NULL : ead_split_name (row->split), FALSE);
      csv_append (line, row->scored ? format_number (score, row->score) : NULL, FALSE);
      csv_append (line, verdict_of (&report, row), FALSE);
      csv_append (line, report.model->name, FALSE);
      csv_append (line, threshold, FALSE);
      csv_append (line, row->reason, TRUE);
      atomic_file_write (&file, line->str, line->len);
    }
  ok = atomic_file_commit (&file, error) && record_report (&report, "csv", path, error);
  if (summary != NULL)
    *summary = report.summary;
  report_clear (&report);
  return ok;
}

/* PDF */

#define PAGE_WIDTH 595.276   /* A4 in points */
#define PAGE_HEIGHT 841.890
#define MARGIN 48.0
#define CONTENT_WIDTH (PAGE_WIDTH - 2 * MARGIN)
#define HISTOGRAM_BINS 40
#define ENTRY_BOX 150.0      /* points a side for the image and for its heatmap */
#define ENTRY_HEIGHT 164.0
#define THUMBNAIL_SIDE 300   /* pixels: 2 per point */
#define HEATMAP_OPACITY 0.5f
#define JPEG_QUALITY 88

typedef struct {
  cairo_t *cr;
  PangoLayout *layout;
  int page;
  char *footer;
} Pdf;

typedef enum {
  ALIGN_LEFT,
  ALIGN_RIGHT,
  ALIGN_CENTER,
} Align;

static void
set_rgb (cairo_t *cr, guint32 rgb)
{
  cairo_set_source_rgb (cr, ((rgb >> 16) & 0xff) / 255.0, ((rgb >> 8) & 0xff) / 255.0,
                        (rgb & 0xff) / 255.0);
}

/* Draws text with its top-left corner (or top-right, top-centre) at x, y, wrapped to
 * width (0: no wrapping); returns its height. */
static double
pdf_text (Pdf *pdf,
          double x,
          double y,
          double width,
          const char *font,
          Align align,
          const char *text)
{
  PangoFontDescription *description = pango_font_description_from_string (font);
  int height;

  pango_layout_set_font_description (pdf->layout, description);
  pango_font_description_free (description);
  pango_layout_set_width (pdf->layout, width > 0 ? (int) (width * PANGO_SCALE) : -1);
  pango_layout_set_wrap (pdf->layout, PANGO_WRAP_WORD_CHAR);
  pango_layout_set_alignment (pdf->layout, align == ALIGN_RIGHT ? PANGO_ALIGN_RIGHT
                                          : align == ALIGN_CENTER ? PANGO_ALIGN_CENTER
                                                                  : PANGO_ALIGN_LEFT);
  pango_layout_set_text (pdf->layout, text, -1);
  cairo_move_to (pdf->cr, x, y);
  pango_cairo_show_layout (pdf->cr, pdf->layout);
  pango_layout_get_size (pdf->layout, NULL, &height);
  return (double) height / PANGO_SCALE;
}

static void
pdf_end_page (Pdf *pdf)
{
  g_autofree char *text = g_strdup_printf ("%s · page %d", pdf->footer, pdf->page);

  set_rgb (pdf->cr, 0x777777);
  pdf_text (pdf, MARGIN, PAGE_HEIGHT - MARGIN + 14, CONTENT_WIDTH, "Sans 7", ALIGN_RIGHT, text);
  cairo_show_page (pdf->cr);
  pdf->page++;
}

/* usec 0 means now. */
static char *
format_time (gint64 usec)
{
  g_autoptr (GDateTime) time = usec > 0 ? g_date_time_new_from_unix_local (usec / G_USEC_PER_SEC)
                                        : g_date_time_new_now_local ();

  return g_date_time_format (time, "%Y-%m-%d %H:%M");
}

static char *
format_score (double value)
{
  return isnan (value) ? g_strdup ("none") : g_strdup_printf ("%.6g", value);
}

/* One "name  value" line of the summary; returns its height. */
static double
pdf_field (Pdf *pdf, double y, const char *name, const char *value)
{
  double h;

  set_rgb (pdf->cr, 0x555555);
  pdf_text (pdf, MARGIN, y, 110, "Sans 9", ALIGN_LEFT, name);
  set_rgb (pdf->cr, 0x000000);
  h = pdf_text (pdf, MARGIN + 115, y, CONTENT_WIDTH - 115, "Sans 9", ALIGN_LEFT, value);
  return h + 3;
}

static char *
threshold_text (const Report *report)
{
  const EadThreshold *threshold = &report->threshold;
  g_autofree char *value = format_score (threshold->effective);

  if (!report->has_threshold)
    return g_strdup ("none: every scored image passes (set one with 'ead threshold')");
  if (!isnan (threshold->value))
    return g_strdup_printf ("%s, set by a person", value);
  return g_strdup_printf ("%s, suggested (%s)", value,
                          threshold->suggested_method == EAD_SUGGEST_F1
                          ? "best F1 on the labelled images"
                          : "highest good score plus a margin");
}

static double
draw_fields (Pdf *pdf, const Report *report, double y)
{
  const EadProjectModel *model = report->model;
  const EadReportSummary *summary = &report->summary;
  g_autofree char *model_text = g_strdup_printf ("%s (id %" G_GINT64_FORMAT "), %s, input "
                                                 "%d x %d", model->name, model->id, model->arch,
                                                 model->input_width, model->input_height);
  g_autofree char *created = format_time (model->created_at);
  g_autofree char *now = format_time (0);
  g_autofree char *threshold = threshold_text (report);
  g_autofree char *review = report->band ? g_strdup_printf ("from %.6g up to the threshold",
                                                            report->threshold.review)
                                         : g_strdup ("none");
  g_autofree char *images = g_strdup_printf (
    "%" G_GUINT64_FORMAT " in the report: %" G_GUINT64_FORMAT " scored, %" G_GUINT64_FORMAT
    " not scored (%" G_GUINT64_FORMAT " could not be read)", summary->n_images,
    summary->n_scored, summary->n_unscored, summary->n_errors);
  g_autofree char *outcomes = g_strdup_printf (
    "%" G_GUINT64_FORMAT " pass, %" G_GUINT64_FORMAT " review, %" G_GUINT64_FORMAT " fail",
    summary->counts.n_pass, summary->counts.n_review, summary->counts.n_fail);

  y += pdf_field (pdf, y, "Project", ead_project_get_path (report->project));
  y += pdf_field (pdf, y, "Model", model_text);
  y += pdf_field (pdf, y, "Teacher", model->teacher != NULL ? model->teacher : "unknown");
  y += pdf_field (pdf, y, "Model registered", created);
  if (model->dataset_snapshot != NULL)
    y += pdf_field (pdf, y, "Training data", model->dataset_snapshot);
  y += pdf_field (pdf, y, "Report written", now);
  y += pdf_field (pdf, y, "Threshold", threshold);
  y += pdf_field (pdf, y, "Review band", review);
  y += pdf_field (pdf, y, "Images", images);
  y += pdf_field (pdf, y, "Verdicts", report->has_threshold ? outcomes : "none without a threshold");
  return y;
}

static double
draw_confusion (Pdf *pdf, const Report *report, double y)
{
  static const char *const columns[] = { "", "pass", "review", "fail", "total" };
  static const EadLabel order[] = { EAD_LABEL_GOOD, EAD_LABEL_DEFECT, EAD_LABEL_UNLABELLED };
  const EadThresholdCounts *counts = &report->summary.counts;
  const double cell_w = 80, cell_h = 18, x0 = MARGIN;
  cairo_t *cr = pdf->cr;
  guint64 good, defect;

  set_rgb (cr, 0x000000);
  y += pdf_text (pdf, MARGIN, y, 0, "Sans Bold 12", ALIGN_LEFT, "Verdicts against the labels")
       + 6;
  for (int c = 0; c < 5; c++)
    pdf_text (pdf, x0 + c * cell_w, y + 3, cell_w - 6, "Sans Bold 9",
              c == 0 ? ALIGN_LEFT : ALIGN_RIGHT, columns[c]);
  for (int r = 0; r < 3; r++)
    {
      double row_y = y + (r + 1) * cell_h;
      guint64 total = 0;

      pdf_text (pdf, x0, row_y + 3, cell_w - 6, "Sans 9", ALIGN_LEFT, ead_label_name (order[r]));
      for (int o = 0; o < EAD_N_OUTCOMES; o++)
        {
          g_autofree char *text = g_strdup_printf ("%" G_GUINT64_FORMAT,
                                                   counts->counts[order[r]][o]);

          total += counts->counts[order[r]][o];
          pdf_text (pdf, x0 + (o + 1) * cell_w, row_y + 3, cell_w - 6, "Sans 9", ALIGN_RIGHT,
                    report->has_threshold ? text : "-");
        }
      {
        g_autofree char *text = g_strdup_printf ("%" G_GUINT64_FORMAT, total);

        pdf_text (pdf, x0 + 4 * cell_w, row_y + 3, cell_w - 6, "Sans 9", ALIGN_RIGHT, text);
      }
    }
  set_rgb (cr, 0x999999);
  cairo_set_line_width (cr, 0.5);
  for (int r = 0; r <= 4; r++)
    {
      cairo_move_to (cr, x0, y + r * cell_h);
      cairo_line_to (cr, x0 + 5 * cell_w, y + r * cell_h);
    }
  cairo_stroke (cr);
  y += 4 * cell_h + 6;

  good = counts->true_negative + counts->false_positive;
  defect = counts->true_positive + counts->false_negative;
  set_rgb (cr, 0x000000);
  if (report->has_threshold && good + defect > 0)
    {
      g_autofree char *text = g_strdup_printf (
        "Defects caught %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT ", missed %"
        G_GUINT64_FORMAT "; good images flagged %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT
        " (review counts as not failed).", counts->true_positive, defect,
        counts->false_negative, counts->false_positive, good);

      y += pdf_text (pdf, MARGIN, y, CONTENT_WIDTH, "Sans 9", ALIGN_LEFT, text);
    }
  else
    y += pdf_text (pdf, MARGIN, y, CONTENT_WIDTH, "Sans 9", ALIGN_LEFT,
                   report->has_threshold ? "No scored image is labelled good or defect."
                                         : "No threshold: no image fails.");
  return y;
}

static const guint32 label_colours[EAD_N_LABELS] = {
  [EAD_LABEL_UNLABELLED] = 0x9e9e9e,
  [EAD_LABEL_GOOD] = 0x2c7fb8,
  [EAD_LABEL_DEFECT] = 0xd7301f,
};

static void
draw_marker (Pdf *pdf,
             double x,
             double top,
             double bottom,
             guint32 colour,
             gboolean dashed,
             const char *label)
{
  cairo_t *cr = pdf->cr;
  const double dash[] = { 4.0, 3.0 };

  set_rgb (cr, colour);
  cairo_set_line_width (cr, 1.2);
  cairo_set_dash (cr, dash, dashed ? 2 : 0, 0);
  cairo_move_to (cr, x, top);
  cairo_line_to (cr, x, bottom);
  cairo_stroke (cr);
  cairo_set_dash (cr, NULL, 0, 0);
  pdf_text (pdf, x + 3, top, 0, "Sans 7", ALIGN_LEFT, label);
}

static double
draw_histogram (Pdf *pdf, const Report *report, double y)
{
  const double x0 = MARGIN + 30, width = CONTENT_WIDTH - 30, height = 200;
  guint64 counts[EAD_N_LABELS * HISTOGRAM_BINS];
  guint64 highest = 0;
  cairo_t *cr = pdf->cr;
  double lo, hi, bar_w;
  char text[64];

  set_rgb (cr, 0x000000);
  y += pdf_text (pdf, MARGIN, y, 0, "Sans Bold 12", ALIGN_LEFT, "Score histogram") + 6;
  if (!ead_score_table_range (report->table, &lo, &hi))
    return y + pdf_text (pdf, MARGIN, y, CONTENT_WIDTH, "Sans 9", ALIGN_LEFT,
                         "No image is scored yet.");
  if (report->has_threshold)
    {
      lo = MIN (lo, report->threshold.effective);
      hi = MAX (hi, report->threshold.effective);
    }
  if (report->band)
    lo = MIN (lo, report->threshold.review);
  if (hi - lo < 1e-9 * MAX (1.0, fabs (hi)))
    {
      lo -= 0.5;
      hi += 0.5;
    }
  /* A margin so that extreme scores and the threshold are not on the frame. */
  lo -= (hi - lo) * 0.02;
  hi += (hi - lo) * 0.02;
  ead_score_table_histogram (report->table, lo, hi, HISTOGRAM_BINS, counts);
  for (size_t i = 0; i < G_N_ELEMENTS (counts); i++)
    highest = MAX (highest, counts[i]);

  bar_w = width / HISTOGRAM_BINS;
  for (int l = 0; l < EAD_N_LABELS; l++)
    for (int b = 0; b < HISTOGRAM_BINS; b++)
      {
        double h = height * (double) counts[l * HISTOGRAM_BINS + b] / (double) highest;
        guint32 c = label_colours[l];

        if (h <= 0)
          continue;
        cairo_set_source_rgba (cr, ((c >> 16) & 0xff) / 255.0, ((c >> 8) & 0xff) / 255.0,
                               (c & 0xff) / 255.0, 0.55);
        cairo_rectangle (cr, x0 + b * bar_w + 0.5, y + height - h, bar_w - 1.0, h);
        cairo_fill (cr);
      }
  set_rgb (cr, 0x000000);
  cairo_set_line_width (cr, 0.6);
  cairo_rectangle (cr, x0, y, width, height);
  cairo_stroke (cr);

  if (report->has_threshold)
    {
      g_autofree char *label = g_strdup_printf ("threshold %.4g", report->threshold.effective);

      draw_marker (pdf, x0 + width * (report->threshold.effective - lo) / (hi - lo), y,
                   y + height, 0xb10026, FALSE, label);
    }
  if (report->band)
    {
      g_autofree char *label = g_strdup_printf ("review %.4g", report->threshold.review);

      draw_marker (pdf, x0 + width * (report->threshold.review - lo) / (hi - lo), y + 12,
                   y + height, 0xe6550d, TRUE, label);
    }

  set_rgb (cr, 0x000000);
  g_snprintf (text, sizeof text, "%" G_GUINT64_FORMAT, highest);
  pdf_text (pdf, MARGIN, y, 26, "Sans 7", ALIGN_RIGHT, text);
  pdf_text (pdf, MARGIN, y + height - 9, 26, "Sans 7", ALIGN_RIGHT, "0");
  g_snprintf (text, sizeof text, "%.4g", lo);
  pdf_text (pdf, x0, y + height + 2, 0, "Sans 7", ALIGN_LEFT, text);
  g_snprintf (text, sizeof text, "%.4g", hi);
  pdf_text (pdf, x0, y + height + 2, width, "Sans 7", ALIGN_RIGHT, text);
  pdf_text (pdf, x0, y + height + 2, width, "Sans 7", ALIGN_CENTER, "image score");
  y += height + 16;

  for (int l = 0, x = (int) x0; l < EAD_N_LABELS; l++)
    {
      static const EadLabel order[] = { EAD_LABEL_GOOD, EAD_LABEL_DEFECT, EAD_LABEL_UNLABELLED };
      guint c = label_colours[order[l]];

      cairo_set_source_rgba (cr, ((c >> 16) & 0xff) / 255.0, ((c >> 8) & 0xff) / 255.0,
                             (c & 0xff) / 255.0, 0.55);
      cairo_rectangle (cr, x, y + 2, 10, 8);
      cairo_fill (cr);
      set_rgb (cr, 0x000000);
      pdf_text (pdf, x + 14, y, 0, "Sans 8", ALIGN_LEFT, ead_label_name (order[l]));
      x += 90;
    }
  return y + 14;
}

static void
draw_summary_page (Pdf *pdf, const Report *report)
{
  double y = MARGIN;

  set_rgb (pdf->cr, 0x000000);
  y += pdf_text (pdf, MARGIN, y, CONTENT_WIDTH, "Sans Bold 18", ALIGN_LEFT,
                 "Inspection report") + 10;
  y = draw_fields (pdf, report, y) + 14;
  y = draw_confusion (pdf, report, y) + 18;
  y = draw_histogram (pdf, report, y) + 14;
  if (report->summary.n_flagged > 0)
    {
      g_autofree char *text = g_strdup_printf (
        "The %" G_GUINT64_FORMAT " flagged images (fail and review) follow, highest score "
        "first.", report->summary.n_flagged);

      set_rgb (pdf->cr, 0x000000);
      pdf_text (pdf, MARGIN, y, CONTENT_WIDTH, "Sans 9", ALIGN_LEFT, text);
    }
  pdf_end_page (pdf);
}

/* The image's JPEG, for the PDF to embed instead of its raw pixels (a tenth of the
 * size).  NULL when libjpeg fails: the pixels are embedded then. */
typedef struct {
  struct jpeg_compress_struct cinfo;
  struct jpeg_error_mgr err;
  jmp_buf jmp;
  unsigned char *data;  /* malloc'd by libjpeg */
  unsigned long size;
} JpegEncoder;

static void
on_jpeg_error (j_common_ptr cinfo)
{
  JpegEncoder *encoder = cinfo->client_data;

  longjmp (encoder->jmp, 1);
}

static void
on_jpeg_message (j_common_ptr cinfo)
{
}

static unsigned char *
encode_jpeg (const EadImage *image, unsigned long *size)
{
  /* On the heap: what libjpeg changes stays valid across its longjmp. */
  g_autofree JpegEncoder *encoder = g_new0 (JpegEncoder, 1);
  unsigned char *data;

  encoder->cinfo.err = jpeg_std_error (&encoder->err);
  encoder->err.error_exit = on_jpeg_error;
  encoder->err.output_message = on_jpeg_message;
  encoder->cinfo.client_data = encoder;
  if (setjmp (encoder->jmp))
    {
      jpeg_destroy_compress (&encoder->cinfo);
      free (encoder->data);
      return NULL;
    }
  jpeg_create_compress (&encoder->cinfo);
  jpeg_mem_dest (&encoder->cinfo, &encoder->data, &encoder->size);
  encoder->cinfo.image_width = (JDIMENSION) image->width;
  encoder->cinfo.image_height = (JDIMENSION) image->height;
  encoder->cinfo.input_components = 3;
  encoder->cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults (&encoder->cinfo);
  jpeg_set_quality (&encoder->cinfo, JPEG_QUALITY, TRUE);
  jpeg_start_compress (&encoder->cinfo, TRUE);
  while (encoder->cinfo.next_scanline < encoder->cinfo.image_height)
    {
      JSAMPROW row = image->rgb + (size_t) encoder->cinfo.next_scanline * image->width * 3;

      jpeg_write_scanlines (&encoder->cinfo, &row, 1);
    }
  jpeg_finish_compress (&encoder->cinfo);
  jpeg_destroy_compress (&encoder->cinfo);
  data = encoder->data;
  *size = encoder->size;
  return data;
}

static cairo_surface_t *
surface_from_image (const EadImage *image)
{
  cairo_surface_t *surface = cairo_image_surface_create (CAIRO_FORMAT_RGB24, image->width,
                                                         image->height);
  unsigned char *jpeg;
  unsigned long jpeg_size = 0;
  unsigned char *data;
  int stride;

  if (cairo_surface_status (surface) != CAIRO_STATUS_SUCCESS)
    return surface;
  cairo_surface_flush (surface);
  data = cairo_image_surface_get_data (surface);
  stride = cairo_image_surface_get_stride (surface);
  for (int y = 0; y < image->height; y++)
    {
      guint32 *out = (guint32 *) (data + (size_t) y * stride);
      const uint8_t *in = image->rgb + (size_t) y * image->width * 3;

      for (int x = 0; x < image->width; x++)
        out[x] = (guint32) in[3 * x] << 16 | (guint32) in[3 * x + 1] << 8 | in[3 * x + 2];
    }
  cairo_surface_mark_dirty (surface);
  jpeg = encode_jpeg (image, &jpeg_size);
  if (jpeg != NULL
      && cairo_surface_set_mime_data (surface, CAIRO_MIME_TYPE_JPEG, jpeg, jpeg_size, free,
                                      jpeg) != CAIRO_STATUS_SUCCESS)
    free (jpeg);
  return surface;
}

/* Draws the picture centred in the box at x, y, scaled to fit. */
static void
draw_picture (Pdf *pdf, const EadImage *image, double x, double y)
{
  cairo_surface_t *surface = surface_from_image (image);
  double scale = MIN (ENTRY_BOX / image->width, ENTRY_BOX / image->height);
  cairo_t *cr = pdf->cr;

  cairo_save (cr);
  cairo_translate (cr, x + (ENTRY_BOX - image->width * scale) / 2,
                   y + (ENTRY_BOX - image->height * scale) / 2);
  cairo_scale (cr, scale, scale);
  cairo_set_source_surface (cr, surface, 0, 0);
  cairo_pattern_set_filter (cairo_get_source (cr), CAIRO_FILTER_GOOD);
  cairo_paint (cr);
  cairo_restore (cr);
  cairo_surface_destroy (surface);
}

static void
draw_missing (Pdf *pdf, double x, double y, const char *message)
{
  set_rgb (pdf->cr, 0xeeeeee);
  cairo_rectangle (pdf->cr, x, y, ENTRY_BOX, ENTRY_BOX);
  cairo_fill (pdf->cr);
  set_rgb (pdf->cr, 0x555555);
  pdf_text (pdf, x + 6, y + 6, ENTRY_BOX - 12, "Sans 7", ALIGN_LEFT, message);
}

/* The thumbnail's size for an image of width x height: at most THUMBNAIL_SIDE a side,
 * never enlarged. */
static void
thumbnail_size (int width, int height, int *thumb_w, int *thumb_h)
{
  double scale = MIN (1.0, (double) THUMBNAIL_SIDE / MAX (width, height));

  *thumb_w = MAX (1, (int) lround (width * scale));
  *thumb_h = MAX (1, (int) lround (height * scale));
}

static void
draw_entry (Pdf *pdf,
            const Report *report,
            const Row *row,
            double y,
            float map_lo,
            float map_hi)
{
  static const guint32 verdict_colours[EAD_N_OUTCOMES] = { 0x238b45, 0xe6550d, 0xb10026 };
  g_autofree char *path = ead_project_resolve_path (report->project, row->path);
  g_autoptr (GError) error = NULL;
  g_autoptr (EadImage) image = ead_image_load (path, 0, &error);
  g_autoptr (EadImage) thumbnail = NULL;
  g_autoptr (EadImage) heatmap = NULL;
  g_autoptr (GError) map_error = NULL;
  g_autofree char *score = g_strdup_printf ("score %.6g", row->score);
  g_autofree char *details = g_strdup_printf ("%s%s%s, %s%s", ead_label_name (row->label),
                                              row->defect != NULL ? " (" : "",
                                              row->defect != NULL ? row->defect : "",
                                              row->split == EAD_SPLIT_NONE ? "no split"
                                              : ead_split_name (row->split),
                                              row->split == EAD_SPLIT_NONE ? "" : " split");
  double text_x = MARGIN + 2 * ENTRY_BOX + 20, text_w = CONTENT_WIDTH - 2 * ENTRY_BOX - 20;
  double text_y = y;
  int thumb_w, thumb_h;

  if (image != NULL)
    {
      thumbnail_size (image->width, image->height, &thumb_w, &thumb_h);
      thumbnail = ead_image_resize_bilinear (image, thumb_w, thumb_h);
      heatmap = ead_project_result_heatmap (report->project, report->model->id, row->image_id,
                                            thumbnail, map_lo, map_hi, HEATMAP_OPACITY,
                                            &map_error);
      draw_picture (pdf, thumbnail, MARGIN, y);
    }
  else
    {
      /* The map alone, at the size the image had when it was imported. */
      g_autofree float *map = NULL;

      thumbnail_size (MAX (row->width, 1), MAX (row->height, 1), &thumb_w, &thumb_h);
      map = ead_project_result_full_map (report->project, report->model->id, row->image_id,
                                         thumb_w, thumb_h, NULL, &map_error);
      if (map != NULL)
        heatmap = ead_heatmap_render (map, thumb_w, thumb_h, map_lo, map_hi, NULL, 1.0f);
      draw_missing (pdf, MARGIN, y, error->message);
    }
  if (heatmap != NULL)
    draw_picture (pdf, heatmap, MARGIN + ENTRY_BOX + 10, y);
  else
    draw_missing (pdf, MARGIN + ENTRY_BOX + 10, y, map_error->message);

  set_rgb (pdf->cr, verdict_colours[row->outcome]);
  text_y += pdf_text (pdf, text_x, text_y, text_w, "Sans Bold 11", ALIGN_LEFT,
                      row->outcome == EAD_OUTCOME_FAIL ? "FAIL" : "REVIEW") + 2;
  set_rgb (pdf->cr, 0x000000);
  text_y += pdf_text (pdf, text_x, text_y, text_w, "Sans 10", ALIGN_LEFT, score) + 2;
  text_y += pdf_text (pdf, text_x, text_y, text_w, "Sans 9", ALIGN_LEFT, details) + 4;
  set_rgb (pdf->cr, 0x444444);
  pdf_text (pdf, text_x, text_y, text_w, "Sans 8", ALIGN_LEFT, row->path);
}

static gint
compare_flagged (gconstpointer a, gconstpointer b)
{
  const Row *x = *(const Row *const *) a, *y = *(const Row *const *) b;

  if (x->score != y->score)
    return x->score > y->score ? -1 : 1;
  return x->image_id < y->image_id ? -1 : x->image_id > y->image_id;
}

/* Heatmap colours run from 0 to the threshold, so that a pixel that alone would fail
 * the image shows at the bright end. */
static void
map_range (const Report *report, const GPtrArray *flagged, float *lo, float *hi)
{
  *hi = (float) report->threshold.effective;
  if (!(*hi > 0.0f) && flagged->len > 0)
    *hi = (float) ((const Row *) flagged->pdata[0])->score;
  *lo = *hi > 0.0f ? 0.0f : *hi - 1.0f;
}

static gboolean
draw_entries (Pdf *pdf,
              const Report *report,
              EadReportProgressFunc progress,
              gpointer user_data,
              const gint *cancel,
              GError **error)
{
  const double top = MARGIN + 48;
  int per_page = (int) ((PAGE_HEIGHT - MARGIN - top) / ENTRY_HEIGHT);
  g_autoptr (GPtrArray) flagged = g_ptr_array_new ();
  float lo, hi;

  for (guint i = 0; i < report->rows->len; i++)
    {
      Row *row = &g_array_index (report->rows, Row, i);

      if (report->has_threshold && row->scored && row->outcome != EAD_OUTCOME_PASS)
        g_ptr_array_add (flagged, row);
    }
  g_ptr_array_sort (flagged, compare_flagged);
  map_range (report, flagged, &lo, &hi);

  for (guint i = 0; i < flagged->len; i++)
    {
      int slot = (int) (i % (guint) per_page);

      if (cancel != NULL && g_atomic_int_get (cancel))
        {
          g_set_error (error, G_IO_ERROR, G_IO_ERROR_CANCELLED,
                       "report cancelled after %u of %u flagged images", i, flagged->len);
          return FALSE;
        }
      if (slot == 0)
        {
          g_autofree char *title = g_strdup_printf (
            "Flagged images %u to %u of %u", i + 1, MIN (i + (guint) per_page, flagged->len),
            flagged->len);
          g_autofree char *legend = g_strdup_printf (
            "Left: the image.  Right: its anomaly map over it, coloured from %.4g (dark) to "
            "%.4g (bright).", lo, hi);
          double y = MARGIN;

          set_rgb (pdf->cr, 0x000000);
          y += pdf_text (pdf, MARGIN, y, CONTENT_WIDTH, "Sans Bold 12", ALIGN_LEFT, title) + 2;
          set_rgb (pdf->cr, 0x555555);
          pdf_text (pdf, MARGIN, y, CONTENT_WIDTH, "Sans 8", ALIGN_LEFT, legend);
        }
      draw_entry (pdf, report, flagged->pdata[i], top + slot * ENTRY_HEIGHT, lo, hi);
      if (slot == per_page - 1 || i + 1 == flagged->len)
        pdf_end_page (pdf);
      if (progress != NULL)
        progress (i + 1, flagged->len, user_data);
    }
  return TRUE;
}

static cairo_status_t
on_pdf_write (void *closure, const unsigned char *data, unsigned int length)
{
  AtomicFile *file = closure;

  atomic_file_write (file, data, length);
  return file->write_errno == 0 ? CAIRO_STATUS_SUCCESS : CAIRO_STATUS_WRITE_ERROR;
}

gboolean
ead_report_write_pdf (EadProject *project,
                      const EadReportOptions *options,
                      const char *path,
                      EadReportProgressFunc progress,
                      gpointer user_data,
                      const gint *cancel,
                      EadReportSummary *summary,
                      GError **error)
{
  g_autoptr (GError) local_error = NULL;
  cairo_surface_t *surface;
  cairo_status_t status;
  Report report;
  AtomicFile file;
  Pdf pdf = { .page = 1 };
  g_autofree char *title = NULL;
  gboolean ok;

  g_return_val_if_fail (project != NULL && path != NULL, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  if (!report_load (&report, project, options, error))
    {
      report_clear (&report);
      return FALSE;
    }
  if (!atomic_file_open (&file, path, error))
    {
      report_clear (&report);
      return FALSE;
    }

  surface = cairo_pdf_surface_create_for_stream (on_pdf_write, &file, PAGE_WIDTH, PAGE_HEIGHT);
  title = g_strdup_printf ("Inspection report: %s", report.model->name);
  cairo_pdf_surface_set_metadata (surface, CAIRO_PDF_METADATA_TITLE, title);
  cairo_pdf_surface_set_metadata (surface, CAIRO_PDF_METADATA_CREATOR, "EfficientAD Workstation");
  pdf.cr = cairo_create (surface);
  pdf.layout = pango_cairo_create_layout (pdf.cr);
  pdf.footer = g_strdup_printf ("EfficientAD Workstation · %s · model %s",
                                ead_project_get_path (project), report.model->name);

  draw_summary_page (&pdf, &report);
  ok = draw_entries (&pdf, &report, progress, user_data, cancel, &local_error);

  g_object_unref (pdf.layout);
  status = cairo_status (pdf.cr);
  cairo_destroy (pdf.cr);
  cairo_surface_finish (surface);
  if (status == CAIRO_STATUS_SUCCESS)
    status = cairo_surface_status (surface);
  cairo_surface_destroy (surface);
  g_free (pdf.footer);

  if (ok && status != CAIRO_STATUS_SUCCESS)
    {
      if (file.write_errno != 0)
        g_set_error (&local_error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot write: %s", path,
                     g_strerror (file.write_errno));
      else
        g_set_error (&local_error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot draw the PDF: %s",
                     path, cairo_status_to_string (status));
      ok = FALSE;
    }
  if (ok)
    ok = atomic_file_commit (&file, &local_error)
         && record_report (&report, "pdf", path, &local_error);
  else
    atomic_file_abort (&file);
  if (summary != NULL)
    *summary = report.summary;
  report_clear (&report);
  if (!ok)
    g_propagate_error (error, g_steal_pointer (&local_error));
  return ok;
}
