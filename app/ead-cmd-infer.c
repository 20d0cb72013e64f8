/* ead infer --model BUNDLE IMAGE...: scores and heatmaps for single images; with
 * --project, an inference run over a project's images (ead-cmd-infer-project.c). */
#include "config.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <stdio.h>
#include <string.h>

#include "ead-bundle.h"
#include "ead-cli.h"
#include "ead-detector.h"
#include "ead-image.h"

typedef struct {
  const char *path;
  EadImage *image;      /* original size, until it has been scored */
  gboolean scored;
  double score;
  char *map_path;
  char *error;          /* why the image could not be read, or its heatmap not written */
} Item;

typedef struct {
  EadDetector *detector;
  const char *maps_dir;
  float map_lo, map_hi;
  float *inputs;        /* max_batch network inputs */
  Item **batch;
  int n;
  GHashTable *map_names; /* map file names used so far */
} Runner;

static char *
unique_map_path (Runner *runner, const char *image_path)
{
  g_autofree char *base = g_path_get_basename (image_path);
  char *dot = strrchr (base, '.');
  char *name;

  if (dot != NULL && dot != base)
    *dot = '\0';
  name = g_strdup_printf ("%s.heatmap.png", base);
  for (int i = 2; g_hash_table_contains (runner->map_names, name); i++)
    {
      g_free (name);
      name = g_strdup_printf ("%s-%d.heatmap.png", base, i);
    }
  g_hash_table_add (runner->map_names, name);
  return g_build_filename (runner->maps_dir, name, NULL);
}

static gboolean
flush_batch (Runner *runner, GError **error)
{
  int map_h, map_w;

  if (runner->n == 0)
    return TRUE;
  ead_detector_get_map_size (runner->detector, &map_h, &map_w);
  if (!ead_detector_run (runner->detector, runner->inputs, runner->n, error))
    return FALSE;
  for (int i = 0; i < runner->n; i++)
    {
      Item *item = runner->batch[i];
      EadImage *image = item->image;
      g_autofree float *full = g_new (float, (size_t) image->width * image->height);

      item->score = ead_detector_full_map (runner->detector, i, image->height, image->width, full);
      item->scored = TRUE;
      if (runner->maps_dir != NULL)
        {
          g_autoptr (EadImage) heatmap = ead_heatmap_render (full, image->width, image->height,
                                                             runner->map_lo, runner->map_hi,
                                                             image, 0.5f);
          g_autoptr (GError) local_error = NULL;

          item->map_path = unique_map_path (runner, item->path);
          if (!ead_image_save_png (heatmap, item->map_path, &local_error))
            {
              item->error = g_strdup (local_error->message);
              g_clear_pointer (&item->map_path, g_free);
            }
        }
      g_clear_pointer (&item->image, ead_image_free);
    }
  runner->n = 0;
  return TRUE;
}

static gboolean
parse_range (const char *text, float *lo, float *hi)
{
  g_auto (GStrv) parts = g_strsplit (text, ":", 2);
  char *end_lo, *end_hi;

  if (parts[0] == NULL || parts[1] == NULL)
    return FALSE;
  *lo = g_ascii_strtod (parts[0], &end_lo);
  *hi = g_ascii_strtod (parts[1], &end_hi);
  return *end_lo == '\0' && *end_hi == '\0' && *hi > *lo;
}

static void
print_results (Item *items, int n_items, const char *bundle, gboolean json)
{
  if (json)
    {
      g_autoptr (JsonBuilder) builder = json_builder_new ();
      g_autoptr (JsonNode) root = NULL;

      json_builder_begin_object (builder);
      json_builder_set_member_name (builder, "model");
      json_builder_add_string_value (builder, bundle);
      json_builder_set_member_name (builder, "images");
      json_builder_begin_array (builder);
      for (int i = 0; i < n_items; i++)
        {
          json_builder_begin_object (builder);
          json_builder_set_member_name (builder, "path");
          json_builder_add_string_value (builder, items[i].path);
          if (items[i].scored)
            {
              json_builder_set_member_name (builder, "score");
              json_builder_add_double_value (builder, items[i].score);
            }
          if (items[i].map_path != NULL)
            {
              json_builder_set_member_name (builder, "map");
              json_builder_add_string_value (builder, items[i].map_path);
            }
          if (items[i].error != NULL)
            {
              json_builder_set_member_name (builder, "error");
              json_builder_add_string_value (builder, items[i].error);
            }
          json_builder_end_object (builder);
        }
      json_builder_end_array (builder);
      json_builder_end_object (builder);
      root = json_builder_get_root (builder);
      ead_cli_print_json (root);
      return;
    }
  for (int i = 0; i < n_items; i++)
    if (items[i].scored)
      printf ("%10.4f  %s%s%s\n", items[i].score, items[i].path,
              items[i].map_path ? "  -> " : "", items[i].map_path ? items[i].map_path : "");
}

int
ead_cmd_infer (int argc, char **argv)
{
  g_autofree char *bundle = NULL;
  g_autofree char *maps_dir = NULL;
  g_autofree char *device = NULL;
  g_autofree char *precision_text = NULL;
  g_autofree char *range = NULL;
  g_autofree char *project = NULL;
  g_autofree char *label = NULL;
  g_autofree char *split = NULL;
  g_autofree char *folder = NULL;
  gboolean json = FALSE;
  int batch = 8, threads = 0;
  const GOptionEntry entries[] = {
    { "model", 'm', 0, G_OPTION_ARG_FILENAME, &bundle,
      "Model bundle (*.ead.safetensors); with --project also a model id (default: the "
      "project's latest model)", "BUNDLE" },
    { "project", 'p', 0, G_OPTION_ARG_FILENAME, &project,
      "Score the images of a project (a folder holding project.ead, or a *.ead file) and "
      "store the results", "PATH" },
    { "label", 'l', 0, G_OPTION_ARG_STRING, &label, "With --project: only this label",
      "good|defect|unlabelled" },
    { "split", 's', 0, G_OPTION_ARG_STRING, &split, "With --project: only this split",
      "train|validation|test|none" },
    { "folder", 'f', 0, G_OPTION_ARG_FILENAME, &folder,
      "With --project: import the folder, then score only its images", "DIR" },
    { "maps", 0, 0, G_OPTION_ARG_FILENAME, &maps_dir,
      "Write a heatmap PNG per image (the map over the image) into DIR", "DIR" },
    { "map-range", 0, 0, G_OPTION_ARG_STRING, &range,
      "Map values shown from LO (transparent end) to HI (default 0:1)", "LO:HI" },
    { "json", 0, 0, G_OPTION_ARG_NONE, &json, "Print JSON", NULL },
    { "batch", 'b', 0, G_OPTION_ARG_INT, &batch, "Images per network run (default 8)", "N" },
    { "threads", 't', 0, G_OPTION_ARG_INT, &threads, "CPU threads (default: all cores)", "T" },
    { "device", 0, 0, G_OPTION_ARG_STRING, &device, "cpu, cuda or auto (default cpu)", "DEVICE" },
    EAD_CLI_PRECISION_ENTRY (precision_text),
    G_OPTION_ENTRY_NULL
  };
  g_autoptr (GError) error = NULL;
  g_autoptr (EadModel) model = NULL;
  g_autoptr (EadDetector) detector = NULL;
  g_autoptr (GHashTable) map_names = NULL;
  g_autofree Item *items = NULL;
  g_autofree Item **batch_items = NULL;
  g_autofree float *inputs = NULL;
  EadDetectorOptions options = { 0 };
  Runner runner = { 0 };
  int exit_code, n_items, failures = 0, in_h, in_w;
  size_t input_size;

  if (!ead_cli_parse ("infer", "[IMAGE...]",
                      "Score images with a model: the image score is the maximum of the\n"
                      "anomaly map at the image's own size.\n\n"
                      "With --project, score the project's images (narrowed by --label,\n"
                      "--split or --folder) and store scores and maps in the project, one\n"
                      "transaction per batch.  Images the model has scored already are\n"
                      "skipped, so running the same command again after an interruption\n"
                      "scores only the rest.  Exit status 1 when some images could not be\n"
                      "scored (they are listed with the reason), 130 when interrupted.",
                      entries, &argc, &argv, &exit_code))
    return exit_code;
  if (!ead_cli_parse_precision ("infer", precision_text, &options.precision))
    return EAD_EXIT_USAGE;
  if (project != NULL)
    {
      EadInferProjectArgs args = {
        .project = project, .model = bundle, .label = label, .split = split,
        .folder = folder, .batch = batch, .threads = threads, .device = device,
        .precision = options.precision, .json = json,
      };

      if (argc > 1 || maps_dir != NULL || range != NULL)
        {
          ead_cli_error ("infer", "--project scores the project's images: give no IMAGE, "
                         "--maps or --map-range with it (see 'ead infer --help')");
          return EAD_EXIT_USAGE;
        }
      return ead_infer_project (&args);
    }
  if (label != NULL || split != NULL || folder != NULL)
    {
      ead_cli_error ("infer", "--label, --split and --folder go with --project");
      return EAD_EXIT_USAGE;
    }
  if (bundle == NULL || argc < 2)
    {
      ead_cli_error ("infer", "expected --model BUNDLE and at least one IMAGE (see 'ead infer --help')");
      return EAD_EXIT_USAGE;
    }
  runner.map_lo = 0.0f;
  runner.map_hi = 1.0f;
  if (range != NULL && !parse_range (range, &runner.map_lo, &runner.map_hi))
    {
      ead_cli_error ("infer", "--map-range '%s': expected LO:HI with LO < HI", range);
      return EAD_EXIT_USAGE;
    }
  if (batch < 1 || batch > 256 || threads < 0)
    {
      ead_cli_error ("infer", "--batch must be 1 to 256 and --threads 0 or more");
      return EAD_EXIT_USAGE;
    }
  if (maps_dir != NULL && g_mkdir_with_parents (maps_dir, 0755) != 0)
    {
      ead_cli_error ("infer", "%s: cannot create the maps folder: %s", maps_dir, g_strerror (errno));
      return EAD_EXIT_FAILURE;
    }
  model = ead_bundle_read (bundle, &error);
  if (model == NULL)
    {
      ead_cli_error ("infer", "%s", error->message);
      return EAD_EXIT_FAILURE;
    }
  n_items = argc - 1;
  options.max_batch = MIN (batch, n_items);
  options.threads = threads;
  options.device = device;
  detector = ead_detector_new (model, &options, &error);
  if (detector == NULL)
    {
      ead_cli_error ("infer", "%s: %s", bundle, error->message);
      return EAD_EXIT_FAILURE;
    }
  ead_cli_note_precision ("infer", options.precision, ead_detector_get_backend (detector));
  g_clear_pointer (&model, ead_model_free);

  ead_detector_get_input_size (detector, &in_h, &in_w);
  input_size = (size_t) 3 * in_h * in_w;
  items = g_new0 (Item, n_items);
  batch_items = g_new0 (Item *, options.max_batch);
  inputs = g_new (float, options.max_batch * input_size);
  map_names = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  runner = (Runner) { detector, maps_dir, runner.map_lo, runner.map_hi, inputs, batch_items, 0,
                      map_names };

  for (int i = 0; i < n_items; i++)
    {
      Item *item = &items[i];
      g_autoptr (GError) local_error = NULL;
      g_autoptr (EadImage) resized = NULL;

      item->path = argv[i + 1];
      item->image = ead_image_load (item->path, 0, &local_error);
      if (item->image == NULL)
        {
          ead_cli_error ("infer", "%s", local_error->message);
          item->error = g_strdup (local_error->message);
          failures++;
          continue;
        }
      resized = ead_image_resize_bilinear (item->image, in_w, in_h);
      ead_image_to_input (resized, inputs + runner.n * input_size);
      batch_items[runner.n++] = item;
      if (runner.n == options.max_batch && !flush_batch (&runner, &error))
        break;
    }
  if (error == NULL)
    flush_batch (&runner, &error);
  if (error != NULL)
    {
      ead_cli_error ("infer", "%s", error->message);
      return EAD_EXIT_FAILURE;
    }
  for (int i = 0; i < n_items; i++)
    if (items[i].scored && items[i].error != NULL)
      {
        ead_cli_error ("infer", "%s", items[i].error);
        failures++;
      }
  print_results (items, n_items, bundle, json);
  for (int i = 0; i < n_items; i++)
    {
      g_free (items[i].error);
      g_free (items[i].map_path);
      ead_image_free (items[i].image);
    }
  return failures > 0 ? EAD_EXIT_FAILURE : EAD_EXIT_OK;
}
