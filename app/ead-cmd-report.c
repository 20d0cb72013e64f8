/* ead report: a PDF and/or CSV report of a model's results in a project. */
#include "config.h"

#include <gio/gio.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include "ead-cli.h"
#include "ead-error.h"
#include "ead-project.h"
#include "ead-report.h"

static gint cancel_requested;

static void
on_signal (int signum)
{
  g_atomic_int_set (&cancel_requested, 1);
}

typedef struct {
  const char *path;
  gboolean shown;
} PdfProgress;

static void
on_pdf_progress (guint done, guint total, gpointer user_data)
{
  PdfProgress *progress = user_data;

  fprintf (stderr, "\r%s: %u of %u flagged images", progress->path, done, total);
  fflush (stderr);
  progress->shown = TRUE;
}

static void
json_add_number (JsonBuilder *builder, const char *name, double value)
{
  json_builder_set_member_name (builder, name);
  if (isnan (value))
    json_builder_add_null_value (builder);
  else
    json_builder_add_double_value (builder, value);
}

static void
json_add_count (JsonBuilder *builder, const char *name, guint64 value)
{
  json_builder_set_member_name (builder, name);
  json_builder_add_int_value (builder, (gint64) value);
}

static void
json_add_file (JsonBuilder *builder, const char *name, const char *path, gint64 report_id)
{
  json_builder_set_member_name (builder, name);
  if (path == NULL)
    {
      json_builder_add_null_value (builder);
      return;
    }
  json_builder_begin_object (builder);
  json_builder_set_member_name (builder, "path");
  json_builder_add_string_value (builder, path);
  json_builder_set_member_name (builder, "report");
  json_builder_add_int_value (builder, report_id);
  json_builder_end_object (builder);
}

static void
print_json (EadProject *project,
            const EadReportSummary *summary,
            const char *csv,
            gint64 csv_id,
            const char *pdf,
            gint64 pdf_id)
{
  g_autoptr (JsonBuilder) builder = json_builder_new ();
  g_autoptr (JsonNode) root = NULL;
  const EadThresholdCounts *counts = &summary->counts;

  json_builder_begin_object (builder);
  json_builder_set_member_name (builder, "project");
  json_builder_add_string_value (builder, ead_project_get_path (project));
  json_builder_set_member_name (builder, "model");
  json_builder_add_int_value (builder, summary->model_id);
  json_add_number (builder, "threshold", summary->threshold);
  json_add_number (builder, "review_from", summary->review);
  json_add_count (builder, "images", summary->n_images);
  json_add_count (builder, "scored", summary->n_scored);
  json_add_count (builder, "unscored", summary->n_unscored);
  json_add_count (builder, "errors", summary->n_errors);
  json_add_count (builder, "pass", counts->n_pass);
  json_add_count (builder, "review", counts->n_review);
  json_add_count (builder, "fail", counts->n_fail);
  json_add_count (builder, "flagged", summary->n_flagged);
  json_add_count (builder, "true_positive", counts->true_positive);
  json_add_count (builder, "false_positive", counts->false_positive);
  json_add_count (builder, "true_negative", counts->true_negative);
  json_add_count (builder, "false_negative", counts->false_negative);
  json_add_file (builder, "csv", csv, csv_id);
  json_add_file (builder, "pdf", pdf, pdf_id);
  json_builder_end_object (builder);
  root = json_builder_get_root (builder);
  ead_cli_print_json (root);
}

static void
print_text (const char *path, const EadReportSummary *summary)
{
  if (isnan (summary->threshold))
    printf ("wrote %s: %" G_GUINT64_FORMAT " images, %" G_GUINT64_FORMAT " scored; no "
            "threshold (set one with 'ead threshold')\n", path, summary->n_images,
            summary->n_scored);
  else
    printf ("wrote %s: %" G_GUINT64_FORMAT " images, %" G_GUINT64_FORMAT " scored: %"
            G_GUINT64_FORMAT " pass, %" G_GUINT64_FORMAT " review, %" G_GUINT64_FORMAT
            " fail at threshold %.6g\n", path, summary->n_images, summary->n_scored,
            summary->counts.n_pass, summary->counts.n_review, summary->counts.n_fail,
            summary->threshold);
}

int
ead_cmd_report (int argc, char **argv)
{
  g_autofree char *project_path = NULL;
  g_autofree char *pdf = NULL;
  g_autofree char *csv = NULL;
  g_autofree char *label_text = NULL;
  g_autofree char *split_text = NULL;
  gint64 model_id = 0;
  gboolean json = FALSE;
  const GOptionEntry entries[] = {
    { "project", 'p', 0, G_OPTION_ARG_FILENAME, &project_path,
      "The project: a folder holding project.ead, or a *.ead file (default: the current "
      "folder)", "PATH" },
    { "model", 'm', 0, G_OPTION_ARG_INT64, &model_id,
      "The model (default: the latest one)", "ID" },
    { "pdf", 0, 0, G_OPTION_ARG_FILENAME, &pdf, "Write the PDF report to FILE", "FILE" },
    { "csv", 0, 0, G_OPTION_ARG_FILENAME, &csv, "Write the CSV table to FILE", "FILE" },
    { "label", 'l', 0, G_OPTION_ARG_STRING, &label_text, "Only images with this label",
      "good|defect|unlabelled" },
    { "split", 's', 0, G_OPTION_ARG_STRING, &split_text, "Only images of this split",
      "train|validation|test|none" },
    { "json", 0, 0, G_OPTION_ARG_NONE, &json, "Print JSON", NULL },
    G_OPTION_ENTRY_NULL
  };
  g_autoptr (GError) error = NULL;
  g_autoptr (EadProject) project = NULL;
  g_autofree char *file = NULL;
  EadReportOptions options;
  EadReportSummary summary = { 0 };
  gint64 csv_id = 0, pdf_id = 0;
  int exit_code;

  if (!ead_cli_parse ("report", "",
                      "Write a report of a model's results: a CSV table with one row per\n"
                      "image (path, label, split, score, verdict, model, threshold) and/or a\n"
                      "PDF with the summary, the confusion matrix, the score histogram and\n"
                      "every flagged image with its heatmap.  Files are replaced atomically:\n"
                      "an interrupted report leaves the previous file, never a partial one.",
                      entries, &argc, &argv, &exit_code))
    return exit_code;
  if (argc != 1)
    {
      ead_cli_error ("report", "unexpected argument '%s' (see 'ead report --help')", argv[1]);
      return EAD_EXIT_USAGE;
    }
  if (pdf == NULL && csv == NULL)
    {
      ead_cli_error ("report", "expected --pdf FILE, --csv FILE or both (see 'ead report --help')");
      return EAD_EXIT_USAGE;
    }
  if (model_id < 0)
    {
      ead_cli_error ("report", "--model: expected a model id");
      return EAD_EXIT_USAGE;
    }
  ead_report_options_init (&options);
  options.model_id = model_id;
  if (label_text != NULL)
    {
      EadLabel label;

      if (!ead_label_parse (label_text, &label, &error))
        {
          ead_cli_error ("report", "--label: %s", error->message);
          return EAD_EXIT_USAGE;
        }
      options.filter.label = label;
    }
  if (split_text != NULL)
    {
      EadSplit split;

      if (!ead_split_parse (split_text, &split, &error))
        {
          ead_cli_error ("report", "--split: %s", error->message);
          return EAD_EXIT_USAGE;
        }
      options.filter.split = split;
    }

  file = ead_project_file_for (project_path != NULL ? project_path : ".");
  project = ead_project_open (file, &error);
  if (project == NULL)
    {
      ead_cli_error ("report", "%s%s", error->message, g_file_test (file, G_FILE_TEST_EXISTS)
                     ? "" : " (create a project with 'ead init PATH', or name one with --project)");
      return EAD_EXIT_FAILURE;
    }

  if (csv != NULL)
    {
      if (!ead_report_write_csv (project, &options, csv, &summary, &error))
        {
          ead_cli_error ("report", "%s", error->message);
          return EAD_EXIT_FAILURE;
        }
      csv_id = summary.report_id;
      if (!json)
        print_text (csv, &summary);
    }
  if (pdf != NULL)
    {
      PdfProgress progress = { .path = pdf };
      gboolean terminal = !json && isatty (STDERR_FILENO);
      gboolean ok;

      signal (SIGINT, on_signal);
      signal (SIGTERM, on_signal);
      ok = ead_report_write_pdf (project, &options, pdf, terminal ? on_pdf_progress : NULL,
                                 &progress, &cancel_requested, &summary, &error);
      signal (SIGINT, SIG_DFL);
      signal (SIGTERM, SIG_DFL);
      if (progress.shown)
        fputc ('\n', stderr);
      if (!ok)
        {
          gboolean cancelled = g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CANCELLED);

          ead_cli_error ("report", "%s%s", error->message,
                         cancelled ? "; nothing was written" : "");
          return cancelled ? 130 : EAD_EXIT_FAILURE;
        }
      pdf_id = summary.report_id;
      if (!json)
        print_text (pdf, &summary);
    }
  if (json)
    print_json (project, &summary, csv, csv_id, pdf, pdf_id);
  return EAD_EXIT_OK;
}
