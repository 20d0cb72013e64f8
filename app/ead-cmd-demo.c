/* ead demo: writes the synthetic inspection dataset (core/demo/ead-demo.h). */
#include "config.h"

#include <stdio.h>
#include <unistd.h>

#include "ead-cli.h"
#include "ead-demo.h"
#include "ead-error.h"

static void
print_progress (const char *path, int done, int total, gpointer user_data)
{
  fprintf (stderr, "\rwriting images: %d/%d", done, total);
  if (done == total)
    fputc ('\n', stderr);
}

static int
count_defects (const char *scene)
{
  return (int) g_strv_length ((char **) ead_demo_defect_names (scene));
}

static void
print_json (const char *dir, const EadDemoOptions *options, double seconds)
{
  g_autoptr (JsonBuilder) builder = json_builder_new ();
  g_autoptr (JsonNode) root = NULL;
  int images = 0, masks = 0;

  json_builder_begin_object (builder);
  json_builder_set_member_name (builder, "dir");
  json_builder_add_string_value (builder, dir);
  json_builder_set_member_name (builder, "seed");
  json_builder_add_int_value (builder, (gint64) options->seed);
  json_builder_set_member_name (builder, "size");
  json_builder_add_int_value (builder, options->size);
  json_builder_set_member_name (builder, "scenes");
  json_builder_begin_array (builder);
  for (int s = 0; options->scenes[s] != NULL; s++)
    {
      const char *scene = options->scenes[s];
      const char *const *defects = ead_demo_defect_names (scene);
      g_autofree char *path = g_build_filename (dir, scene, NULL);
      g_autofree char *train_dir = g_build_filename (path, "train", "good", NULL);
      g_autofree char *test_dir = g_build_filename (path, "test", NULL);
      g_autofree char *truth_dir = g_build_filename (path, "ground_truth", NULL);

      json_builder_begin_object (builder);
      json_builder_set_member_name (builder, "name");
      json_builder_add_string_value (builder, scene);
      json_builder_set_member_name (builder, "path");
      json_builder_add_string_value (builder, path);
      json_builder_set_member_name (builder, "train_dir");
      json_builder_add_string_value (builder, train_dir);
      json_builder_set_member_name (builder, "test_dir");
      json_builder_add_string_value (builder, test_dir);
      json_builder_set_member_name (builder, "ground_truth_dir");
      json_builder_add_string_value (builder, truth_dir);
      json_builder_set_member_name (builder, "train");
      json_builder_add_int_value (builder, options->n_train);
      json_builder_set_member_name (builder, "test_good");
      json_builder_add_int_value (builder, options->n_test_good);
      json_builder_set_member_name (builder, "test_defects");
      json_builder_begin_object (builder);
      for (int d = 0; defects[d] != NULL; d++)
        {
          json_builder_set_member_name (builder, defects[d]);
          json_builder_add_int_value (builder, options->n_test_defect);
        }
      json_builder_end_object (builder);
      json_builder_end_object (builder);
      images += options->n_train + options->n_test_good + count_defects (scene) * options->n_test_defect;
      masks += count_defects (scene) * options->n_test_defect;
    }
  json_builder_end_array (builder);
  json_builder_set_member_name (builder, "images");
  json_builder_add_int_value (builder, images);
  json_builder_set_member_name (builder, "masks");
  json_builder_add_int_value (builder, masks);
  json_builder_set_member_name (builder, "seconds");
  json_builder_add_double_value (builder, seconds);
  json_builder_end_object (builder);
  root = json_builder_get_root (builder);
  ead_cli_print_json (root);
}

static void
print_text (const char *dir, const EadDemoOptions *options, double seconds)
{
  int images = 0, masks = 0;

  for (int s = 0; options->scenes[s] != NULL; s++)
    {
      int defects = count_defects (options->scenes[s]);

      images += options->n_train + options->n_test_good + defects * options->n_test_defect;
      masks += defects * options->n_test_defect;
    }
  printf ("wrote %d images and %d masks (%dx%d, seed %" G_GUINT64_FORMAT ") to %s in %.1f s\n",
          images, masks, options->size, options->size, options->seed, dir, seconds);
  for (int s = 0; options->scenes[s] != NULL; s++)
    {
      const char *scene = options->scenes[s];
      g_autofree char *defects = g_strjoinv (", ", (char **) ead_demo_defect_names (scene));

      printf ("  %-9s %d train, %d good test, %d per defect (%s)\n", scene, options->n_train,
              options->n_test_good, options->n_test_defect, defects);
    }
}

int
ead_cmd_demo (int argc, char **argv)
{
  g_autofree char *scenes_text = NULL;
  g_autofree char *seed_text = NULL;
  g_auto (GStrv) scenes = NULL;
  EadDemoOptions options;
  gboolean force = FALSE, json = FALSE;
  const GOptionEntry entries[] = {
    { "scenes", 0, 0, G_OPTION_ARG_STRING, &scenes_text,
      "Comma-separated scenes (default surface,assembly)", "LIST" },
    { "train", 0, 0, G_OPTION_ARG_INT, &options.n_train,
      "Good training images per scene (default 120)", "N" },
    { "test-good", 0, 0, G_OPTION_ARG_INT, &options.n_test_good,
      "Good test images per scene (default 20)", "N" },
    { "test-defect", 0, 0, G_OPTION_ARG_INT, &options.n_test_defect,
      "Test images per defect kind (default 10)", "N" },
    { "seed", 0, 0, G_OPTION_ARG_STRING, &seed_text, "Random seed (default 0)", "S" },
    { "size", 0, 0, G_OPTION_ARG_INT, &options.size,
      "Image width and height in pixels (default 256)", "PX" },
    { "force", 'f', 0, G_OPTION_ARG_NONE, &force,
      "Write into a directory that is not empty, replacing the dataset", NULL },
    { "json", 0, 0, G_OPTION_ARG_NONE, &json, "Print a JSON summary", NULL },
    G_OPTION_ENTRY_NULL
  };
  g_autoptr (GError) error = NULL;
  double start;
  int exit_code;

  ead_demo_options_init (&options);
  if (!ead_cli_parse ("demo", "DIR",
                      "Generate a deterministic synthetic inspection dataset in the MVTec AD\n"
                      "layout: DIR/<scene>/train/good, test/<kind>, ground_truth/<defect>.\n"
                      "Scenes: surface (brushed metal: scratch, spot, crack,\n"
                      "missing_material) and assembly (a circuit board: missing_part,\n"
                      "extra_part, swapped_parts, wrong_colour).",
                      entries, &argc, &argv, &exit_code))
    return exit_code;
  if (argc != 2)
    {
      ead_cli_error ("demo", "expected one DIR (see 'ead demo --help')");
      return EAD_EXIT_USAGE;
    }
  if (seed_text != NULL
      && !g_ascii_string_to_unsigned (seed_text, 10, 0, G_MAXINT64, &options.seed, &error))
    {
      ead_cli_error ("demo", "--seed: %s", error->message);
      return EAD_EXIT_USAGE;
    }
  scenes = scenes_text != NULL ? g_strsplit (scenes_text, ",", -1)
                               : g_strdupv ((char **) ead_demo_scene_names ());
  options.scenes = (const char *const *) scenes;
  options.force = force;

  start = ead_cli_now_ms ();
  if (!ead_demo_generate (argv[1], &options, !json && isatty (STDERR_FILENO) ? print_progress : NULL,
                          NULL, &error))
    {
      ead_cli_error ("demo", "%s", error->message);
      return g_error_matches (error, EAD_ERROR, EAD_ERROR_INVALID) ? EAD_EXIT_USAGE
                                                                   : EAD_EXIT_FAILURE;
    }
  if (json)
    print_json (argv[1], &options, (ead_cli_now_ms () - start) / 1000.0);
  else
    print_text (argv[1], &options, (ead_cli_now_ms () - start) / 1000.0);
  return EAD_EXIT_OK;
}
