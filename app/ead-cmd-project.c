/* ead init, import, label, images, models, threshold, runs: the command line over the
 * project store. */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <glib/gstdio.h>

#include "ead-cli.h"
#include "ead-error.h"
#include "ead-import.h"
#include "ead-project.h"
#include "ead-threshold.h"

#define PROJECT_OPTION(variable) \
  { "project", 'p', 0, G_OPTION_ARG_FILENAME, &(variable), \
    "The project: a folder holding project.ead, or a *.ead file (default: the current " \
    "folder)", "PATH" }

static EadProject *
open_project (const char *command, const char *path)
{
  g_autofree char *file = ead_project_file_for (path != NULL ? path : ".");
  g_autoptr (GError) error = NULL;
  EadProject *project = ead_project_open (file, &error);

  if (project == NULL && !g_file_test (file, G_FILE_TEST_EXISTS))
    ead_cli_error (command, "%s (create a project with 'ead init PATH', or name one with "
                   "--project)", error->message);
  else if (project == NULL)
    ead_cli_error (command, "%s", error->message);
  return project;
}

/* Says what failed; the exit status of a command that stops there. */
static int
report_failure (const char *command, const GError *error)
{
  ead_cli_error (command, "%s", error->message);
  return EAD_EXIT_FAILURE;
}

/* For a command that takes no arguments: FALSE, after saying so, when it was given some. */
static gboolean
check_no_arguments (const char *command, int argc, char **argv)
{
  if (argc == 1)
    return TRUE;
  ead_cli_error (command, "unexpected argument '%s' (see 'ead %s --help')", argv[1], command);
  return FALSE;
}

static char *
format_time (gint64 usec)
{
  g_autoptr (GDateTime) time = NULL;

  if (usec <= 0)
    return g_strdup ("-");
  time = g_date_time_new_from_unix_utc (usec / G_USEC_PER_SEC);
  return g_date_time_format (time, "%Y-%m-%dT%H:%M:%SZ");
}

static void
json_add_time (JsonBuilder *builder, const char *name, gint64 usec)
{
  g_autofree char *text = format_time (usec);

  json_builder_set_member_name (builder, name);
  if (usec <= 0)
    json_builder_add_null_value (builder);
  else
    json_builder_add_string_value (builder, text);
}

static void
json_add_double (JsonBuilder *builder, const char *name, double value)
{
  json_builder_set_member_name (builder, name);
  if (isnan (value))
    json_builder_add_null_value (builder);
  else
    json_builder_add_double_value (builder, value);
}

static void
json_add_string (JsonBuilder *builder, const char *name, const char *value)
{
  json_builder_set_member_name (builder, name);
  if (value == NULL)
    json_builder_add_null_value (builder);
  else
    json_builder_add_string_value (builder, value);
}

static void
json_add_int (JsonBuilder *builder, const char *name, gint64 value)
{
  json_builder_set_member_name (builder, name);
  json_builder_add_int_value (builder, value);
}

static void
json_add_boolean (JsonBuilder *builder, const char *name, gboolean value)
{
  json_builder_set_member_name (builder, name);
  json_builder_add_boolean_value (builder, value);
}

static void
print_builder (JsonBuilder *builder)
{
  g_autoptr (JsonNode) root = json_builder_get_root (builder);

  ead_cli_print_json (root);
}

/* A number that must be finite; "none" gives NAN when allow_none. */
static gboolean
parse_value (const char *command,
             const char *what,
             const char *text,
             gboolean allow_none,
             double *value)
{
  char *end = NULL;

  if (allow_none && g_strcmp0 (text, "none") == 0)
    {
      *value = NAN;
      return TRUE;
    }
  if (text != NULL && *text != '\0')
    *value = g_ascii_strtod (text, &end);
  if (text == NULL || *text == '\0' || end == NULL || *end != '\0' || !isfinite (*value))
    {
      ead_cli_error (command, "%s '%s': expected a number%s", what, text != NULL ? text : "",
                     allow_none ? " or none" : "");
      return FALSE;
    }
  return TRUE;
}

/* ead init */

int
ead_cmd_init (int argc, char **argv)
{
  gboolean json = FALSE;
  const GOptionEntry entries[] = {
    { "json", 0, 0, G_OPTION_ARG_NONE, &json, "Print JSON", NULL },
    G_OPTION_ENTRY_NULL
  };
  g_autoptr (GError) error = NULL;
  g_autoptr (EadProject) project = NULL;
  g_autofree char *file = NULL;
  g_autofree char *dir = NULL;
  int exit_code;

  if (!ead_cli_parse ("init", "PATH",
                      "Create a project: PATH/project.ead, or PATH itself when it ends in\n"
                      ".ead.  Missing folders are created.",
                      entries, &argc, &argv, &exit_code))
    return exit_code;
  if (argc != 2)
    {
      ead_cli_error ("init", "expected one PATH (see 'ead init --help')");
      return EAD_EXIT_USAGE;
    }
  file = ead_project_file_for (argv[1]);
  dir = g_path_get_dirname (file);
  if (g_mkdir_with_parents (dir, 0777) != 0)
    {
      ead_cli_error ("init", "%s: cannot create the folder: %s", dir, g_strerror (errno));
      return EAD_EXIT_FAILURE;
    }
  project = ead_project_create (file, &error);
  if (project == NULL)
    return report_failure ("init", error);
  if (json)
    {
      g_autoptr (JsonBuilder) builder = json_builder_new ();

      json_builder_begin_object (builder);
      json_add_string (builder, "project", ead_project_get_path (project));
      json_builder_end_object (builder);
      print_builder (builder);
    }
  else
    printf ("created %s\n", ead_project_get_path (project));
  return EAD_EXIT_OK;
}

/* ead import */

typedef struct {
  const char *folder;
  gboolean shown;
} ImportProgress;

static void
on_import_progress (guint done, guint total, gpointer user_data)
{
  ImportProgress *progress = user_data;

  fprintf (stderr, "\r%s: %u of %u files", progress->folder, done, total);
  fflush (stderr);
  progress->shown = TRUE;
}

static void
json_add_issues (JsonBuilder *builder, const char *name, GPtrArray *issues, gboolean reasons)
{
  json_builder_set_member_name (builder, name);
  json_builder_begin_array (builder);
  for (guint i = 0; i < issues->len; i++)
    {
      EadImportIssue *issue = issues->pdata[i];

      if (!reasons)
        {
          json_builder_add_string_value (builder, issue->path);
          continue;
        }
      json_builder_begin_object (builder);
      json_add_string (builder, "path", issue->path);
      json_add_string (builder, "reason", issue->reason);
      json_builder_end_object (builder);
    }
  json_builder_end_array (builder);
}

static void
json_add_report (JsonBuilder *builder, const char *folder, const EadImportReport *report)
{
  json_builder_begin_object (builder);
  json_add_string (builder, "folder", folder);
  json_add_boolean (builder, "mvtec", report->mvtec);
  json_add_int (builder, "added", report->n_added);
  json_add_int (builder, "present", report->n_present);
  json_add_int (builder, "moved", report->n_moved);
  json_add_int (builder, "changed", report->n_changed);
  json_add_int (builder, "duplicates", report->n_duplicate);
  json_add_int (builder, "missing", report->n_missing);
  json_add_int (builder, "failed", report->n_failed);
  json_add_int (builder, "masks", report->n_masks);
  json_add_int (builder, "sets", report->n_sets);
  json_add_issues (builder, "failures", report->failures, TRUE);
  json_add_issues (builder, "duplicate_files", report->duplicates, TRUE);
  json_add_issues (builder, "missing_files", report->missing, FALSE);
  json_builder_end_object (builder);
}

static void
print_report (const char *folder, const EadImportReport *report)
{
  printf ("%s%s: %u added, %u already present, %u moved, %u changed, %u duplicates, "
          "%u missing, %u failed, %u masks\n", folder,
          report->mvtec ? " (MVTec AD layout)" : "", report->n_added, report->n_present,
          report->n_moved, report->n_changed, report->n_duplicate, report->n_missing,
          report->n_failed, report->n_masks);
  for (guint i = 0; i < report->failures->len; i++)
    printf ("  failed: %s\n", ((EadImportIssue *) report->failures->pdata[i])->reason);
  for (guint i = 0; i < report->duplicates->len; i++)
    printf ("  duplicate: %s\n", ((EadImportIssue *) report->duplicates->pdata[i])->reason);
  for (guint i = 0; i < report->missing->len; i++)
    printf ("  missing: %s\n", ((EadImportIssue *) report->missing->pdata[i])->path);
}

int
ead_cmd_import (int argc, char **argv)
{
  g_autofree char *project_path = NULL;
  gboolean json = FALSE;
  const GOptionEntry entries[] = {
    PROJECT_OPTION (project_path),
    { "json", 0, 0, G_OPTION_ARG_NONE, &json, "Print JSON", NULL },
    G_OPTION_ENTRY_NULL
  };
  g_autoptr (EadProject) project = NULL;
  g_autoptr (JsonBuilder) builder = json_builder_new ();
  gboolean any_failed = FALSE;
  int exit_code;

  if (!ead_cli_parse ("import", "FOLDER...",
                      "Import the images below each folder.  An MVTec AD category folder\n"
                      "(train/good, test/<kind>, ground_truth/<kind>) is labelled and split\n"
                      "accordingly; other images are imported unlabelled.  Importing again is\n"
                      "safe: known files are recognised by content, moved files are found\n"
                      "again, missing ones are flagged.  Exit status 1 when some files were\n"
                      "not usable images (they are listed).",
                      entries, &argc, &argv, &exit_code))
    return exit_code;
  if (argc < 2)
    {
      ead_cli_error ("import", "expected at least one FOLDER (see 'ead import --help')");
      return EAD_EXIT_USAGE;
    }
  project = open_project ("import", project_path);
  if (project == NULL)
    return EAD_EXIT_FAILURE;

  json_builder_begin_object (builder);
  json_add_string (builder, "project", ead_project_get_path (project));
  json_builder_set_member_name (builder, "folders");
  json_builder_begin_array (builder);
  for (int i = 1; i < argc; i++)
    {
      ImportProgress progress = { .folder = argv[i] };
      gboolean terminal = !json && isatty (STDERR_FILENO);
      g_autoptr (GError) error = NULL;
      g_autoptr (EadImportReport) report = ead_project_import (
        project, argv[i], terminal ? on_import_progress : NULL, &progress, NULL, &error);

      if (progress.shown)
        fprintf (stderr, "\n");
      if (report == NULL)
        return report_failure ("import", error);
      any_failed |= report->failures->len > 0;
      if (json)
        json_add_report (builder, argv[i], report);
      else
        print_report (argv[i], report);
    }
  json_builder_end_array (builder);
  json_builder_end_object (builder);
  if (json)
    print_builder (builder);
  return any_failed ? EAD_EXIT_FAILURE : EAD_EXIT_OK;
}

/* ead label */

/* An image given on the command line: its id (all digits) or its path. */
static EadProjectImage *
resolve_image (EadProject *project, const char *text, GError **error)
{
  guint64 id;
  EadProjectImage *image;

  if (g_ascii_string_to_unsigned (text, 10, 1, G_MAXINT64, &id, NULL)
      && !g_file_test (text, G_FILE_TEST_EXISTS))
    return ead_project_get_image (project, (gint64) id, error);
  image = ead_project_find_image (project, text, error);
  if (image == NULL && (error == NULL || *error == NULL))
    g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID, "%s: not an image of the project", text);
  return image;
}

int
ead_cmd_label (int argc, char **argv)
{
  g_autofree char *project_path = NULL;
  gboolean json = FALSE;
  const GOptionEntry entries[] = {
    PROJECT_OPTION (project_path),
    { "json", 0, 0, G_OPTION_ARG_NONE, &json, "Print JSON", NULL },
    G_OPTION_ENTRY_NULL
  };
  g_autoptr (EadProject) project = NULL;
  g_autoptr (GError) error = NULL;
  g_autoptr (GArray) ids = g_array_new (FALSE, FALSE, sizeof (gint64));
  EadLabel label;
  int exit_code;

  if (!ead_cli_parse ("label", "good|defect|unlabelled IMAGE...",
                      "Label images.  IMAGE is an image id or a path: absolute, relative to\n"
                      "the current folder, or relative to the project folder.  Nothing is\n"
                      "changed when one of them is not found.",
                      entries, &argc, &argv, &exit_code))
    return exit_code;
  if (argc < 3)
    {
      ead_cli_error ("label", "expected a label and at least one IMAGE (see 'ead label --help')");
      return EAD_EXIT_USAGE;
    }
  if (!ead_label_parse (argv[1], &label, &error))
    {
      ead_cli_error ("label", "%s", error->message);
      return EAD_EXIT_USAGE;
    }
  project = open_project ("label", project_path);
  if (project == NULL)
    return EAD_EXIT_FAILURE;
  for (int i = 2; i < argc; i++)
    {
      g_autoptr (EadProjectImage) image = resolve_image (project, argv[i], &error);

      if (image == NULL)
        {
          ead_cli_error ("label", "%s; nothing was labelled", error->message);
          return EAD_EXIT_FAILURE;
        }
      g_array_append_val (ids, image->id);
    }
  if (!ead_project_set_labels (project, (gint64 *) ids->data, ids->len, label, &error))
    return report_failure ("label", error);
  if (json)
    {
      g_autoptr (JsonBuilder) builder = json_builder_new ();

      json_builder_begin_object (builder);
      json_add_string (builder, "label", ead_label_name (label));
      json_builder_set_member_name (builder, "images");
      json_builder_begin_array (builder);
      for (guint i = 0; i < ids->len; i++)
        json_builder_add_int_value (builder, g_array_index (ids, gint64, i));
      json_builder_end_array (builder);
      json_builder_end_object (builder);
      print_builder (builder);
    }
  else
    printf ("labelled %u image%s %s\n", ids->len, ids->len == 1 ? "" : "s",
            ead_label_name (label));
  return EAD_EXIT_OK;
}

/* ead images */

static void
json_add_image (JsonBuilder *builder, const EadProjectImage *image)
{
  g_autofree char *hash = g_new0 (char, EAD_IMAGE_HASH_SIZE * 2 + 1);

  for (int i = 0; i < EAD_IMAGE_HASH_SIZE; i++)
    g_snprintf (hash + 2 * i, 3, "%02x", image->hash[i]);
  json_builder_begin_object (builder);
  json_add_int (builder, "id", image->id);
  json_add_string (builder, "path", image->path);
  json_add_string (builder, "label", ead_label_name (image->label));
  json_add_string (builder, "split", image->split == EAD_SPLIT_NONE
                                     ? NULL : ead_split_name (image->split));
  json_add_string (builder, "defect", image->defect);
  json_add_int (builder, "width", image->width);
  json_add_int (builder, "height", image->height);
  json_add_string (builder, "format", image->format);
  json_add_int (builder, "size", (gint64) image->size);
  json_add_string (builder, "hash", hash);
  json_add_string (builder, "mask", image->mask_path);
  json_add_boolean (builder, "missing", image->missing);
  json_add_time (builder, "added", image->added_at);
  json_builder_end_object (builder);
}

int
ead_cmd_images (int argc, char **argv)
{
  g_autofree char *project_path = NULL;
  g_autofree char *label_text = NULL;
  g_autofree char *split_text = NULL;
  gboolean json = FALSE, missing = FALSE;
  gint64 limit = 0, offset = 0;
  const GOptionEntry entries[] = {
    PROJECT_OPTION (project_path),
    { "label", 'l', 0, G_OPTION_ARG_STRING, &label_text, "Only this label",
      "good|defect|unlabelled" },
    { "split", 's', 0, G_OPTION_ARG_STRING, &split_text, "Only this split",
      "train|validation|test|none" },
    { "missing", 0, 0, G_OPTION_ARG_NONE, &missing, "Only images whose file is missing", NULL },
    { "limit", 'n', 0, G_OPTION_ARG_INT64, &limit, "At most N images (default: all)", "N" },
    { "offset", 0, 0, G_OPTION_ARG_INT64, &offset, "Skip the first N images", "N" },
    { "json", 0, 0, G_OPTION_ARG_NONE, &json, "Print JSON", NULL },
    G_OPTION_ENTRY_NULL
  };
  g_autoptr (EadProject) project = NULL;
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) images = NULL;
  EadImageFilter filter;
  guint64 total = 0;
  int exit_code;

  if (!ead_cli_parse ("images", "", "List the images of a project, in import order.", entries,
                      &argc, &argv, &exit_code))
    return exit_code;
  if (!check_no_arguments ("images", argc, argv))
    return EAD_EXIT_USAGE;
  ead_image_filter_init (&filter);
  if (label_text != NULL)
    {
      EadLabel label;

      if (!ead_label_parse (label_text, &label, &error))
        {
          ead_cli_error ("images", "--label: %s", error->message);
          return EAD_EXIT_USAGE;
        }
      filter.label = label;
    }
  if (split_text != NULL)
    {
      EadSplit split;

      if (!ead_split_parse (split_text, &split, &error))
        {
          ead_cli_error ("images", "--split: %s", error->message);
          return EAD_EXIT_USAGE;
        }
      filter.split = split;
    }
  if (missing)
    filter.missing = 1;
  if (limit < 0 || limit > G_MAXUINT || offset < 0)
    {
      ead_cli_error ("images", "--limit and --offset must be between 0 and %u", G_MAXUINT);
      return EAD_EXIT_USAGE;
    }
  project = open_project ("images", project_path);
  if (project == NULL)
    return EAD_EXIT_FAILURE;
  images = ead_project_list_images (project, &filter, (guint64) offset, (guint) limit, &error);
  if (images == NULL || !ead_project_count_images (project, &filter, &total, &error))
    return report_failure ("images", error);

  if (json)
    {
      g_autoptr (JsonBuilder) builder = json_builder_new ();

      json_builder_begin_object (builder);
      json_add_int (builder, "total", (gint64) total);
      json_builder_set_member_name (builder, "images");
      json_builder_begin_array (builder);
      for (guint i = 0; i < images->len; i++)
        json_add_image (builder, images->pdata[i]);
      json_builder_end_array (builder);
      json_builder_end_object (builder);
      print_builder (builder);
      return EAD_EXIT_OK;
    }
  for (guint i = 0; i < images->len; i++)
    {
      EadProjectImage *image = images->pdata[i];

      printf ("%6" G_GINT64_FORMAT "  %-10s %-10s %5dx%-5d %s%s%s%s\n", image->id,
              ead_label_name (image->label), ead_split_name (image->split), image->width,
              image->height, image->path, image->defect != NULL ? "  [" : "",
              image->defect != NULL ? image->defect : "", image->defect != NULL ? "]" : "");
      if (image->missing)
        printf ("        (missing)\n");
    }
  printf ("%u of %" G_GUINT64_FORMAT " images\n", images->len, total);
  return EAD_EXIT_OK;
}

/* ead models */

int
ead_cmd_models (int argc, char **argv)
{
  g_autofree char *project_path = NULL;
  g_autofree char *add = NULL;
  g_autofree char *name = NULL;
  gboolean json = FALSE;
  const GOptionEntry entries[] = {
    PROJECT_OPTION (project_path),
    { "add", 'a', 0, G_OPTION_ARG_FILENAME, &add, "Register a model bundle", "BUNDLE" },
    { "name", 0, 0, G_OPTION_ARG_STRING, &name,
      "Name of the model registered (default: the file name)", "NAME" },
    { "json", 0, 0, G_OPTION_ARG_NONE, &json, "Print JSON", NULL },
    G_OPTION_ENTRY_NULL
  };
  g_autoptr (EadProject) project = NULL;
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) models = NULL;
  int exit_code;

  if (!ead_cli_parse ("models", "", "List the models of a project, or register a bundle.",
                      entries, &argc, &argv, &exit_code))
    return exit_code;
  if (!check_no_arguments ("models", argc, argv))
    return EAD_EXIT_USAGE;
  project = open_project ("models", project_path);
  if (project == NULL)
    return EAD_EXIT_FAILURE;
  if (add != NULL && ead_project_add_model (project, add, name, &error) == 0)
    return report_failure ("models", error);
  models = ead_project_list_models (project, &error);
  if (models == NULL)
    return report_failure ("models", error);
  if (json)
    {
      g_autoptr (JsonBuilder) builder = json_builder_new ();

      json_builder_begin_array (builder);
      for (guint i = 0; i < models->len; i++)
        {
          EadProjectModel *model = models->pdata[i];

          json_builder_begin_object (builder);
          json_add_int (builder, "id", model->id);
          json_add_string (builder, "name", model->name);
          json_add_string (builder, "bundle", model->bundle_path);
          json_add_string (builder, "arch", model->arch);
          json_add_int (builder, "input_height", model->input_height);
          json_add_int (builder, "input_width", model->input_width);
          json_add_string (builder, "teacher", model->teacher);
          json_add_string (builder, "dataset_snapshot", model->dataset_snapshot);
          json_add_string (builder, "metrics", model->metrics);
          json_add_time (builder, "created", model->created_at);
          json_builder_end_object (builder);
        }
      json_builder_end_array (builder);
      print_builder (builder);
      return EAD_EXIT_OK;
    }
  for (guint i = 0; i < models->len; i++)
    {
      EadProjectModel *model = models->pdata[i];
      g_autofree char *created = format_time (model->created_at);

      printf ("%4" G_GINT64_FORMAT "  %-20s %s %dx%d  %s  %s\n", model->id, model->name,
              model->arch, model->input_height, model->input_width, created,
              model->bundle_path);
    }
  if (models->len == 0)
    printf ("no models (register one with 'ead models --add BUNDLE')\n");
  return EAD_EXIT_OK;
}

/* ead threshold */

static void
json_add_counts (JsonBuilder *builder, const EadThresholdCounts *counts)
{
  json_builder_set_member_name (builder, "counts");
  json_builder_begin_object (builder);
  json_add_int (builder, "pass", (gint64) counts->n_pass);
  json_add_int (builder, "review", (gint64) counts->n_review);
  json_add_int (builder, "fail", (gint64) counts->n_fail);
  json_add_int (builder, "true_positive", (gint64) counts->true_positive);
  json_add_int (builder, "false_positive", (gint64) counts->false_positive);
  json_add_int (builder, "true_negative", (gint64) counts->true_negative);
  json_add_int (builder, "false_negative", (gint64) counts->false_negative);
  json_builder_end_object (builder);
}

/* A threshold as printed: NAN is none. */
static char *
format_value (double value)
{
  return isnan (value) ? g_strdup ("none") : g_strdup_printf ("%.9g", value);
}

static void
print_value (const char *name, double value)
{
  g_autofree char *text = format_value (value);

  printf ("  %-11s %s\n", name, text);
}

static int
threshold_show (EadProject *project, gint64 model_id, gboolean json)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) events = NULL;
  g_autoptr (EadScoreTable) table = NULL;
  EadThresholdCounts counts;
  EadThreshold threshold;

  if (!ead_project_get_threshold (project, model_id, &threshold, &error)
      || (events = ead_project_list_threshold_events (project, model_id, &error)) == NULL
      || (table = ead_project_load_scores (project, model_id, &error)) == NULL)
    return report_failure ("threshold", error);
  ead_score_table_count (table, threshold.effective, threshold.review, &counts);

  if (json)
    {
      g_autoptr (JsonBuilder) builder = json_builder_new ();

      json_builder_begin_object (builder);
      json_add_int (builder, "model", model_id);
      json_add_double (builder, "threshold", threshold.effective);
      json_add_double (builder, "value", threshold.value);
      json_add_double (builder, "suggested", threshold.suggested);
      json_add_string (builder, "suggested_method", isnan (threshold.suggested) ? NULL
                       : ead_suggest_method_name (threshold.suggested_method));
      json_add_double (builder, "review", threshold.review);
      json_add_int (builder, "scores", ead_score_table_size (table));
      json_add_counts (builder, &counts);
      json_builder_set_member_name (builder, "events");
      json_builder_begin_array (builder);
      for (guint i = 0; i < events->len; i++)
        {
          EadThresholdEvent *event = events->pdata[i];

          json_builder_begin_object (builder);
          json_add_int (builder, "id", event->id);
          json_add_string (builder, "kind", event->kind);
          json_add_double (builder, "old", event->old_value);
          json_add_double (builder, "new", event->new_value);
          json_add_string (builder, "user", event->user);
          json_add_string (builder, "reason", event->reason);
          json_add_time (builder, "at", event->at);
          json_builder_end_object (builder);
        }
      json_builder_end_array (builder);
      json_builder_end_object (builder);
      print_builder (builder);
      return EAD_EXIT_OK;
    }

  printf ("model %" G_GINT64_FORMAT "\n", model_id);
  print_value ("threshold", threshold.effective);
  print_value ("set", threshold.value);
  print_value ("suggested", threshold.suggested);
  print_value ("review", threshold.review);
  if (ead_score_table_size (table) > 0)
    printf ("  %u scored images: %" G_GUINT64_FORMAT " pass, %" G_GUINT64_FORMAT " review, %"
            G_GUINT64_FORMAT " fail; defects caught %" G_GUINT64_FORMAT ", missed %"
            G_GUINT64_FORMAT "; good images flagged %" G_GUINT64_FORMAT ", passed %"
            G_GUINT64_FORMAT "\n", ead_score_table_size (table), counts.n_pass,
            counts.n_review, counts.n_fail, counts.true_positive, counts.false_negative,
            counts.false_positive, counts.true_negative);
  else
    printf ("  no scored images yet\n");
  if (events->len > 0)
    printf ("history:\n");
  for (guint i = 0; i < events->len; i++)
    {
      EadThresholdEvent *event = events->pdata[i];
      g_autofree char *at = format_time (event->at);
      g_autofree char *old_text = format_value (event->old_value);
      g_autofree char *new_text = format_value (event->new_value);

      printf ("  %s  %-9s %s -> %s  by %s%s%s\n", at, event->kind, old_text, new_text,
              event->user, event->reason != NULL ? ": " : "",
              event->reason != NULL ? event->reason : "");
    }
  return EAD_EXIT_OK;
}

static int
threshold_suggest (EadProject *project,
                   gint64 model_id,
                   gboolean accept,
                   const char *reason,
                   gboolean json)
{
  g_autoptr (GError) error = NULL;
  EadThresholdSuggestion suggestion;

  if (!ead_project_suggest_threshold (project, model_id, NULL, &suggestion, &error)
      || (accept && !ead_project_accept_suggested_threshold (project, model_id, NULL, reason,
                                                             &error)))
    return report_failure ("threshold", error);
  if (json)
    {
      g_autoptr (JsonBuilder) builder = json_builder_new ();

      json_builder_begin_object (builder);
      json_add_int (builder, "model", model_id);
      json_add_double (builder, "suggested", suggestion.threshold);
      json_add_string (builder, "method", ead_suggest_method_name (suggestion.method));
      json_add_double (builder, "f1", suggestion.f1);
      json_add_int (builder, "good", suggestion.n_good);
      json_add_int (builder, "defect", suggestion.n_defect);
      json_add_boolean (builder, "accepted", accept);
      json_builder_end_object (builder);
      print_builder (builder);
    }
  else if (suggestion.method == EAD_SUGGEST_F1)
    printf ("suggested %.9g for model %" G_GINT64_FORMAT ": best F1 %.4f on %u good and %u "
            "defect images%s\n", suggestion.threshold, model_id, suggestion.f1,
            suggestion.n_good, suggestion.n_defect, accept ? ", accepted" : "");
  else
    printf ("suggested %.9g for model %" G_GINT64_FORMAT ": highest of %u good scores plus "
            "a margin (no defect labelled)%s\n", suggestion.threshold, model_id,
            suggestion.n_good, accept ? ", accepted" : "");
  return EAD_EXIT_OK;
}

static int
threshold_set (EadProject *project,
               gint64 model_id,
               const char *value_text,
               const char *review_text,
               const char *reason,
               gboolean quiet)
{
  g_autoptr (GError) error = NULL;
  EadThreshold current;
  double value = NAN, review = NAN;
  gboolean ok;

  if ((value_text != NULL && !parse_value ("threshold", "VALUE", value_text, FALSE, &value))
      || (review_text != NULL
          && !parse_value ("threshold", "--review", review_text, TRUE, &review)))
    return EAD_EXIT_USAGE;
  if (!ead_project_get_threshold (project, model_id, &current, &error))
    return report_failure ("threshold", error);
  /* The band must stay below the threshold after each of the two changes; one of the
   * two orders always keeps it so when the final state is valid. */
  if (review_text != NULL && value_text != NULL
      && !(isnan (review) || review < current.effective))
    ok = ead_project_set_threshold (project, model_id, value, NULL, reason, &error)
         && ead_project_set_review_threshold (project, model_id, review, NULL, reason, &error);
  else
    ok = (review_text == NULL
          || ead_project_set_review_threshold (project, model_id, review, NULL, reason, &error))
         && (value_text == NULL
             || ead_project_set_threshold (project, model_id, value, NULL, reason, &error));
  if (!ok)
    return report_failure ("threshold", error);
  if (quiet)
    return EAD_EXIT_OK;
  if (value_text != NULL)
    printf ("threshold of model %" G_GINT64_FORMAT " set to %.9g\n", model_id, value);
  if (review_text != NULL && isnan (review))
    printf ("review band of model %" G_GINT64_FORMAT " removed\n", model_id);
  else if (review_text != NULL)
    printf ("review band of model %" G_GINT64_FORMAT " begins at %.9g\n", model_id, review);
  return EAD_EXIT_OK;
}

int
ead_cmd_threshold (int argc, char **argv)
{
  g_autofree char *project_path = NULL;
  g_autofree char *review = NULL;
  g_autofree char *reason = NULL;
  gint64 model_id = 0;
  gboolean json = FALSE, accept = FALSE;
  const GOptionEntry entries[] = {
    PROJECT_OPTION (project_path),
    { "model", 'm', 0, G_OPTION_ARG_INT64, &model_id,
      "The model (default: the latest one)", "ID" },
    { "review", 0, 0, G_OPTION_ARG_STRING, &review,
      "set: the lower edge of the review band below the threshold, or none", "VALUE" },
    { "reason", 0, 0, G_OPTION_ARG_STRING, &reason, "Why, for the audit trail", "TEXT" },
    { "accept", 0, 0, G_OPTION_ARG_NONE, &accept,
      "suggest: make the suggestion the threshold in force", NULL },
    { "json", 0, 0, G_OPTION_ARG_NONE, &json, "Print JSON", NULL },
    G_OPTION_ENTRY_NULL
  };
  g_autoptr (EadProject) project = NULL;
  g_autoptr (GError) error = NULL;
  const char *action;
  int exit_code;

  if (!ead_cli_parse ("threshold", "show|suggest|set [VALUE]",
                      "Show, suggest or set the pass/fail threshold of a model.  An image\n"
                      "fails when its score is at or above the threshold; with a review band\n"
                      "the scores from --review up to the threshold go to review.  Every change\n"
                      "is recorded with the user, the time and the reason.",
                      entries, &argc, &argv, &exit_code))
    return exit_code;
  action = argc >= 2 ? argv[1] : "show";
  if (!g_str_equal (action, "show") && !g_str_equal (action, "suggest")
      && !g_str_equal (action, "set"))
    {
      ead_cli_error ("threshold", "unknown action '%s' (expected show, suggest or set)", action);
      return EAD_EXIT_USAGE;
    }
  if (g_str_equal (action, "set") && (argc > 3 || (argc < 3 && review == NULL)))
    {
      ead_cli_error ("threshold",
                     "set takes one VALUE, or --review VALUE (see 'ead threshold --help')");
      return EAD_EXIT_USAGE;
    }
  if (!g_str_equal (action, "set") && argc > 2)
    {
      ead_cli_error ("threshold", "unexpected argument '%s' after %s", argv[2], action);
      return EAD_EXIT_USAGE;
    }
  if ((review != NULL && !g_str_equal (action, "set"))
      || (accept && !g_str_equal (action, "suggest")))
    {
      ead_cli_error ("threshold", "--review goes with set, --accept with suggest");
      return EAD_EXIT_USAGE;
    }
  project = open_project ("threshold", project_path);
  if (project == NULL)
    return EAD_EXIT_FAILURE;
  if (model_id == 0)
    model_id = ead_project_latest_model (project, &error);
  if (model_id == 0)
    {
      ead_cli_error ("threshold", "%s (register one with 'ead models --add BUNDLE')",
                     error->message);
      return EAD_EXIT_FAILURE;
    }
  if (g_str_equal (action, "suggest"))
    return threshold_suggest (project, model_id, accept, reason, json);
  if (g_str_equal (action, "set"))
    {
      exit_code = threshold_set (project, model_id, argc == 3 ? argv[2] : NULL, review, reason,
                                 json);
      if (exit_code != EAD_EXIT_OK || !json)
        return exit_code;
    }
  return threshold_show (project, model_id, json);
}

/* ead runs */

int
ead_cmd_runs (int argc, char **argv)
{
  g_autofree char *project_path = NULL;
  gboolean json = FALSE;
  const GOptionEntry entries[] = {
    PROJECT_OPTION (project_path),
    { "json", 0, 0, G_OPTION_ARG_NONE, &json, "Print JSON", NULL },
    G_OPTION_ENTRY_NULL
  };
  g_autoptr (EadProject) project = NULL;
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) runs = NULL;
  int exit_code;

  if (!ead_cli_parse ("runs", "", "List the training and inference runs, newest first.",
                      entries, &argc, &argv, &exit_code))
    return exit_code;
  if (!check_no_arguments ("runs", argc, argv))
    return EAD_EXIT_USAGE;
  project = open_project ("runs", project_path);
  if (project == NULL)
    return EAD_EXIT_FAILURE;
  runs = ead_project_list_runs (project, &error);
  if (runs == NULL)
    return report_failure ("runs", error);
  if (json)
    {
      g_autoptr (JsonBuilder) builder = json_builder_new ();

      json_builder_begin_array (builder);
      for (guint i = 0; i < runs->len; i++)
        {
          EadProjectRun *run = runs->pdata[i];

          json_builder_begin_object (builder);
          json_add_int (builder, "id", run->id);
          json_add_string (builder, "kind", ead_run_kind_name (run->kind));
          json_add_string (builder, "state", ead_run_state_name (run->state));
          json_builder_set_member_name (builder, "model");
          if (run->model_id > 0)
            json_builder_add_int_value (builder, run->model_id);
          else
            json_builder_add_null_value (builder);
          json_add_int (builder, "done", (gint64) run->done);
          json_add_int (builder, "total", (gint64) run->total);
          json_add_int (builder, "failed", (gint64) run->n_failed);
          if (run->kind == EAD_RUN_TRAINING)
            {
              json_add_double (builder, "elapsed_s", run->elapsed_s);
              json_add_double (builder, "eta_s", run->eta_s < 0 ? NAN : run->eta_s);
            }
          json_add_string (builder, "message", run->message);
          json_add_time (builder, "created", run->created_at);
          json_add_time (builder, "finished", run->finished_at);
          json_builder_end_object (builder);
        }
      json_builder_end_array (builder);
      print_builder (builder);
      return EAD_EXIT_OK;
    }
  if (runs->len == 0)
    {
      printf ("no runs yet\n");
      return EAD_EXIT_OK;
    }
  printf ("%5s  %-9s  %-9s  %5s  %-17s  %s\n", "ID", "KIND", "STATE", "MODEL", "PROGRESS",
          "CREATED");
  for (guint i = 0; i < runs->len; i++)
    {
      EadProjectRun *run = runs->pdata[i];
      g_autofree char *created = format_time (run->created_at);
      g_autofree char *model = run->model_id > 0
                               ? g_strdup_printf ("%" G_GINT64_FORMAT, run->model_id)
                               : g_strdup ("-");
      g_autofree char *progress = g_strdup_printf (
        "%" G_GUINT64_FORMAT "/%" G_GUINT64_FORMAT "%s", run->done, run->total,
        run->kind == EAD_RUN_TRAINING ? " steps" : "");

      printf ("%5" G_GINT64_FORMAT "  %-9s  %-9s  %5s  %-17s  %s%s%s\n", run->id,
              ead_run_kind_name (run->kind), ead_run_state_name (run->state), model, progress,
              created, run->message != NULL ? "  " : "",
              run->message != NULL ? run->message : "");
    }
  return EAD_EXIT_OK;
}
