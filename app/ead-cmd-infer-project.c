/* ead infer --project P: an inference run over a project's images, with progress, a
 * summary, and SIGINT/SIGTERM stopping it after the batch in progress. */
#include "config.h"

#include <gio/gio.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include "ead-cli.h"
#include "ead-error.h"
#include "ead-inference.h"

typedef struct {
  gboolean json;
  gboolean terminal;
} Reporter;

static gint cancel_requested;

static void
on_signal (int signum)
{
  g_atomic_int_set (&cancel_requested, 1);
}

static char *
format_duration (double seconds)
{
  int s = (int) (seconds + 0.5);

  if (seconds < 0)
    return g_strdup ("?");
  if (s >= 3600)
    return g_strdup_printf ("%dh%02dm", s / 3600, s / 60 % 60);
  return g_strdup_printf ("%dm%02ds", s / 60, s % 60);
}

static void
on_progress (const EadInferenceProgress *progress, gpointer user_data)
{
  Reporter *reporter = user_data;
  g_autofree char *elapsed = format_duration (progress->elapsed_s);
  g_autofree char *eta = format_duration (progress->done > 0 ? progress->eta_s : -1.0);

  if (reporter->json)
    return;
  if (reporter->terminal)
    {
      int width = 30, filled = (int) ((double) width * progress->done / progress->total);
      char bar[64];

      for (int i = 0; i < width; i++)
        bar[i] = i < filled ? '#' : '.';
      bar[width] = '\0';
      fprintf (stderr, "\rscoring [%s] %" G_GUINT64_FORMAT "/%" G_GUINT64_FORMAT " images, %"
               G_GUINT64_FORMAT " failed, %s ETA %s  ", bar, progress->done, progress->total,
               progress->n_failed, elapsed, eta);
      if (progress->done == progress->total)
        fputc ('\n', stderr);
      return;
    }
  if (progress->done == 0)
    return;
  printf ("scored %" G_GUINT64_FORMAT "/%" G_GUINT64_FORMAT " images, %" G_GUINT64_FORMAT
          " failed, %.1f s, ETA %s\n", progress->done, progress->total, progress->n_failed,
          progress->elapsed_s, eta);
  fflush (stdout);
}

static void
json_add_issues (JsonBuilder *builder, const char *name, GPtrArray *failures, gboolean import)
{
  json_builder_set_member_name (builder, name);
  json_builder_begin_array (builder);
  for (guint i = 0; failures != NULL && i < failures->len; i++)
    {
      json_builder_begin_object (builder);
      json_builder_set_member_name (builder, "path");
      json_builder_add_string_value (builder,
        import ? ((EadImportIssue *) failures->pdata[i])->path
               : ((EadInferenceFailure *) failures->pdata[i])->path);
      json_builder_set_member_name (builder, "reason");
      json_builder_add_string_value (builder,
        import ? ((EadImportIssue *) failures->pdata[i])->reason
               : ((EadInferenceFailure *) failures->pdata[i])->reason);
      json_builder_end_object (builder);
    }
  json_builder_end_array (builder);
}

static void
print_json (const char *project,
            const EadInferenceProgress *summary,
            EadInferenceJob *job,
            const char *error_message)
{
  g_autoptr (JsonBuilder) builder = json_builder_new ();
  g_autoptr (JsonNode) root = NULL;
  const EadImportReport *import = ead_inference_job_get_import_report (job);
  const struct {
    const char *name;
    guint64 value;
  } counts[] = {
    { "total", summary->total },
    { "done", summary->done },
    { "scored", summary->n_scored },
    { "failed", summary->n_failed },
    { "skipped", summary->n_skipped },
    { "imported", summary->n_imported },
  };

  json_builder_begin_object (builder);
  json_builder_set_member_name (builder, "project");
  json_builder_add_string_value (builder, project);
  json_builder_set_member_name (builder, "model");
  if (summary->model_id > 0)
    json_builder_add_int_value (builder, summary->model_id);
  else
    json_builder_add_null_value (builder);
  json_builder_set_member_name (builder, "run");
  if (summary->run_id > 0)
    json_builder_add_int_value (builder, summary->run_id);
  else
    json_builder_add_null_value (builder);
  for (size_t i = 0; i < G_N_ELEMENTS (counts); i++)
    {
      json_builder_set_member_name (builder, counts[i].name);
      json_builder_add_int_value (builder, (gint64) counts[i].value);
    }
  json_builder_set_member_name (builder, "elapsed_s");
  json_builder_add_double_value (builder, summary->elapsed_s);
  json_add_issues (builder, "failures", ead_inference_job_get_failures (job), FALSE);
  if (import != NULL)
    json_add_issues (builder, "import_failures", import->failures, TRUE);
  json_builder_set_member_name (builder, "error");
  if (error_message != NULL)
    json_builder_add_string_value (builder, error_message);
  else
    json_builder_add_null_value (builder);
  json_builder_end_object (builder);
  root = json_builder_get_root (builder);
  ead_cli_print_json (root);
}

static void
print_text (const EadInferenceProgress *summary, EadInferenceJob *job)
{
  GPtrArray *failures = ead_inference_job_get_failures (job);
  const EadImportReport *import = ead_inference_job_get_import_report (job);

  if (import != NULL)
    {
      printf ("imported %u new images (%u already there, %u not usable)\n", import->n_added,
              import->n_present, import->n_failed);
      for (guint i = 0; i < import->failures->len; i++)
        printf ("  not imported: %s\n", ((EadImportIssue *) import->failures->pdata[i])->reason);
    }
  if (summary->run_id == 0)
    printf ("model %" G_GINT64_FORMAT ": nothing to score (%" G_GUINT64_FORMAT " selected images "
            "scored already)\n", summary->model_id, summary->n_skipped);
  else
    printf ("model %" G_GINT64_FORMAT ", run %" G_GINT64_FORMAT ": scored %" G_GUINT64_FORMAT
            " images, %" G_GUINT64_FORMAT " failed, %" G_GUINT64_FORMAT " scored before, in "
            "%.1f s\n", summary->model_id, summary->run_id, summary->n_scored,
            summary->n_failed, summary->n_skipped, summary->elapsed_s);
  for (guint i = 0; i < failures->len; i++)
    printf ("  failed: %s\n", ((EadInferenceFailure *) failures->pdata[i])->reason);
}

int
ead_infer_project (const EadInferProjectArgs *args)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadInferenceJob) job = NULL;
  g_autofree char *relative = ead_project_file_for (args->project);
  g_autofree char *file = g_canonicalize_filename (relative, NULL);
  EadInferenceOptions options;
  EadInferenceProgress summary = { 0 };
  Reporter reporter = { .json = args->json };
  const char *bundle = args->model;
  const EadImportReport *import;
  guint64 model_id = 0;
  gboolean ok, cancelled;

  ead_inference_options_init (&options);
  if (args->label != NULL)
    {
      EadLabel label;

      if (!ead_label_parse (args->label, &label, &error))
        {
          ead_cli_error ("infer", "--label: %s", error->message);
          return EAD_EXIT_USAGE;
        }
      options.filter.label = label;
    }
  if (args->split != NULL)
    {
      EadSplit split;

      if (!ead_split_parse (args->split, &split, &error))
        {
          ead_cli_error ("infer", "--split: %s", error->message);
          return EAD_EXIT_USAGE;
        }
      options.filter.split = split;
    }
  options.folder = args->folder;
  options.batch = args->batch;
  options.threads = args->threads;
  options.precision = args->precision;
  if (args->device != NULL)
    options.device = args->device;
  /* A number that is not a file names a registered model. */
  if (bundle != NULL && !g_file_test (bundle, G_FILE_TEST_EXISTS)
      && g_ascii_string_to_unsigned (bundle, 10, 1, G_MAXINT64, &model_id, NULL))
    bundle = NULL;
  job = ead_inference_job_new (args->project, bundle, (gint64) model_id, &options, &error);
  if (job == NULL)
    {
      ead_cli_error ("infer", "%s", error->message);
      return EAD_EXIT_USAGE;
    }

  reporter.terminal = !args->json && isatty (STDERR_FILENO);
  signal (SIGINT, on_signal);
  signal (SIGTERM, on_signal);
  ok = ead_inference_job_run (job, on_progress, &reporter, &cancel_requested, &summary, &error);
  signal (SIGINT, SIG_DFL);
  signal (SIGTERM, SIG_DFL);
  cancelled = !ok && g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  if (reporter.terminal && summary.done > 0 && summary.done < summary.total)
    fputc ('\n', stderr);

  if (args->json)
    print_json (file, &summary, job, ok ? NULL : error->message);
  else if (ok)
    print_text (&summary, job);
  if (cancelled)
    {
      ead_cli_error ("infer", "%s; run the same command again to score the rest",
                     error->message);
      return 130;
    }
  if (!ok)
    {
      if (!g_file_test (file, G_FILE_TEST_EXISTS))
        ead_cli_error ("infer", "%s (create a project with 'ead init PATH')", error->message);
      else
        ead_cli_error ("infer", "%s", error->message);
      return EAD_EXIT_FAILURE;
    }
  import = ead_inference_job_get_import_report (job);
  return summary.n_failed > 0 || (import != NULL && import->n_failed > 0) ? EAD_EXIT_FAILURE
                                                                          : EAD_EXIT_OK;
}
