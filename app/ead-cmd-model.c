/* ead model new, ead info */
#include "config.h"

#include <stdio.h>

#include "ead-bundle.h"
#include "ead-cli.h"
#include "ead-detector.h"
#include "ead-model.h"

static gboolean
parse_input_size (const char *text, int *height, int *width, GError **error)
{
  g_auto (GStrv) parts = g_strsplit (text, "x", 2);
  guint64 h, w;

  if (!g_ascii_string_to_unsigned (parts[0], 10, 1, 8192, &h, NULL)
      || (parts[1] != NULL && !g_ascii_string_to_unsigned (parts[1], 10, 1, 8192, &w, NULL)))
    {
      g_set_error (error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                   "--input-size '%s': expected SIZE or HEIGHTxWIDTH, e.g. 256 or 256x320",
                   text);
      return FALSE;
    }
  if (parts[1] == NULL)
    w = h;
  if (h < EAD_MIN_INPUT_SIZE || w < EAD_MIN_INPUT_SIZE)
    {
      g_set_error (error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                   "--input-size %s: the networks need at least %dx%d", text,
                   EAD_MIN_INPUT_SIZE, EAD_MIN_INPUT_SIZE);
      return FALSE;
    }
  *height = h;
  *width = w;
  return TRUE;
}

static int
model_new (int argc, char **argv)
{
  g_autofree char *arch_text = NULL;
  g_autofree char *out = NULL;
  g_autofree char *input_size = NULL;
  gint64 seed = 0;
  const GOptionEntry entries[] = {
    { "model", 'm', 0, G_OPTION_ARG_STRING, &arch_text, "Model size: s or m (default s)", "s|m" },
    { "seed", 0, 0, G_OPTION_ARG_INT64, &seed, "Seed of the random weights (default 0)", "N" },
    { "input-size", 0, 0, G_OPTION_ARG_STRING, &input_size,
      "Network input, SIZE or HEIGHTxWIDTH (default 256)", "HxW" },
    { "out", 'o', 0, G_OPTION_ARG_FILENAME, &out, "Bundle to write (*.ead.safetensors)", "BUNDLE" },
    G_OPTION_ENTRY_NULL
  };
  g_autoptr (GError) error = NULL;
  g_autoptr (EadModel) model = NULL;
  EadArch arch = EAD_ARCH_SMALL;
  int exit_code;

  if (!ead_cli_parse ("model new", "",
                      "Create a model with seeded random networks (PyTorch's default\n"
                      "initialisation), for tests and demos until a trained model exists.",
                      entries, &argc, &argv, &exit_code))
    return exit_code;
  if (out == NULL)
    {
      ead_cli_error ("model new", "--out BUNDLE is required");
      return EAD_EXIT_USAGE;
    }
  if (arch_text != NULL && !ead_arch_parse (arch_text, &arch, &error))
    {
      ead_cli_error ("model new", "--model: %s", error->message);
      return EAD_EXIT_USAGE;
    }
  model = ead_model_new (arch);
  if (input_size != NULL
      && !parse_input_size (input_size, &model->input_height, &model->input_width, &error))
    {
      ead_cli_error ("model new", "%s", error->message);
      return EAD_EXIT_USAGE;
    }
  ead_model_init_random (model, (guint64) seed);
  g_hash_table_insert (model->metadata, g_strdup ("ead.teacher.source"),
                       g_strdup_printf ("random (seed %" G_GINT64_FORMAT ")", seed));
  g_hash_table_insert (model->metadata, g_strdup ("ead.weights"),
                       g_strdup_printf ("random, seed %" G_GINT64_FORMAT, seed));
  if (!ead_bundle_write (model, out, &error))
    {
      ead_cli_error ("model new", "%s", error->message);
      return EAD_EXIT_FAILURE;
    }
  printf ("wrote %s (%s, random weights, seed %" G_GINT64_FORMAT ")\n", out,
          ead_arch_name (arch), seed);
  return EAD_EXIT_OK;
}

int
ead_cmd_model (int argc, char **argv)
{
  if (argc >= 2 && g_str_equal (argv[1], "new"))
    return model_new (argc - 1, argv + 1);
  if (argc >= 2 && (g_str_equal (argv[1], "--help") || g_str_equal (argv[1], "-h")))
    {
      printf ("Usage: ead model new --model s|m [--seed N] --out BUNDLE\n");
      return EAD_EXIT_OK;
    }
  if (argc >= 2 && g_str_equal (argv[1], "--version"))
    {
      printf ("ead %s\n", PACKAGE_VERSION);
      return EAD_EXIT_OK;
    }
  ead_cli_error ("model", "expected a subcommand: new (see 'ead model --help')");
  return EAD_EXIT_USAGE;
}

static int
compare_keys (gconstpointer a, gconstpointer b)
{
  return g_strcmp0 (*(const char *const *) a, *(const char *const *) b);
}

int
ead_cmd_info (int argc, char **argv)
{
  gboolean json = FALSE, describe = FALSE;
  g_autofree char *precision_text = NULL;
  g_autofree char *device = NULL;
  int threads = 0;
  const GOptionEntry entries[] = {
    { "json", 0, 0, G_OPTION_ARG_NONE, &json, "Print JSON", NULL },
    { "describe", 0, 0, G_OPTION_ARG_NONE, &describe,
      "Compile the networks and list the implementation the backend chose for each layer",
      NULL },
    EAD_CLI_PRECISION_ENTRY (precision_text),
    { "threads", 't', 0, G_OPTION_ARG_INT, &threads, "With --describe: CPU threads", "T" },
    { "device", 0, 0, G_OPTION_ARG_STRING, &device, "With --describe: cpu or cuda", "DEVICE" },
    G_OPTION_ENTRY_NULL
  };
  g_autofree char *implementations = NULL;
  EadDetectorOptions options = { 0 };
  g_autoptr (GError) error = NULL;
  g_autoptr (EadModel) model = NULL;
  g_autofree const char **keys = NULL;
  guint n_keys;
  size_t params;
  gboolean teacher_only;
  const char *teacher_source;
  int exit_code;

  if (!ead_cli_parse ("info", "BUNDLE", "Describe a model bundle.", entries, &argc, &argv,
                      &exit_code))
    return exit_code;
  if (argc != 2)
    {
      ead_cli_error ("info", "expected one BUNDLE (see 'ead info --help')");
      return EAD_EXIT_USAGE;
    }
  model = ead_bundle_read (argv[1], &error);
  if (model == NULL)
    {
      ead_cli_error ("info", "%s", error->message);
      return EAD_EXIT_FAILURE;
    }
  if (!ead_cli_parse_precision ("info", precision_text, &options.precision))
    return EAD_EXIT_USAGE;
  if (describe)
    {
      g_autoptr (EadDetector) detector = NULL;

      options.threads = threads;
      options.device = device;
      detector = ead_detector_new (model, &options, &error);
      if (detector == NULL)
        {
          ead_cli_error ("info", "%s: %s", argv[1], error->message);
          return EAD_EXIT_FAILURE;
        }
      implementations = ead_detector_describe (detector);
    }
  teacher_only = ead_model_is_teacher_only (model);
  params = ead_net_parameter_count (model->teacher);
  if (!teacher_only)
    params += ead_net_parameter_count (model->student)
              + ead_net_parameter_count (model->autoencoder);
  teacher_source = g_hash_table_lookup (model->metadata, "ead.teacher.source");
  keys = (const char **) g_hash_table_get_keys_as_array (model->metadata, &n_keys);
  qsort (keys, n_keys, sizeof *keys, compare_keys);

  if (json)
    {
      g_autoptr (JsonBuilder) builder = json_builder_new ();
      g_autoptr (JsonNode) root = NULL;

      json_builder_begin_object (builder);
      json_builder_set_member_name (builder, "path");
      json_builder_add_string_value (builder, argv[1]);
      json_builder_set_member_name (builder, "arch");
      json_builder_add_string_value (builder, ead_arch_name (model->arch));
      json_builder_set_member_name (builder, "input_height");
      json_builder_add_int_value (builder, model->input_height);
      json_builder_set_member_name (builder, "input_width");
      json_builder_add_int_value (builder, model->input_width);
      json_builder_set_member_name (builder, "content");
      json_builder_add_string_value (builder, teacher_only ? "teacher" : "model");
      json_builder_set_member_name (builder, "parameters");
      json_builder_add_int_value (builder, params);
      json_builder_set_member_name (builder, "teacher");
      json_builder_add_string_value (builder, teacher_source ? teacher_source : "unknown");
      json_builder_set_member_name (builder, "quantiles");
      json_builder_begin_object (builder);
      json_builder_set_member_name (builder, "st_a");
      json_builder_add_double_value (builder, model->q_st_a);
      json_builder_set_member_name (builder, "st_b");
      json_builder_add_double_value (builder, model->q_st_b);
      json_builder_set_member_name (builder, "ae_a");
      json_builder_add_double_value (builder, model->q_ae_a);
      json_builder_set_member_name (builder, "ae_b");
      json_builder_add_double_value (builder, model->q_ae_b);
      json_builder_end_object (builder);
      json_builder_set_member_name (builder, "metadata");
      json_builder_begin_object (builder);
      for (guint i = 0; i < n_keys; i++)
        {
          json_builder_set_member_name (builder, keys[i]);
          json_builder_add_string_value (builder, g_hash_table_lookup (model->metadata, keys[i]));
        }
      json_builder_end_object (builder);
      if (implementations != NULL)
        {
          json_builder_set_member_name (builder, "implementations");
          json_builder_add_string_value (builder, implementations);
        }
      json_builder_end_object (builder);
      root = json_builder_get_root (builder);
      ead_cli_print_json (root);
      return EAD_EXIT_OK;
    }

  printf ("%s\n", argv[1]);
  printf ("  model        %s, network input %dx%d (HxW)\n", ead_arch_name (model->arch),
          model->input_height, model->input_width);
  if (teacher_only)
    {
      printf ("  content      a teacher only: train a model with it (ead train --teacher %s)\n",
              argv[1]);
      printf ("  parameters   %zu (teacher)\n", params);
    }
  else
    printf ("  parameters   %zu (teacher %zu, student %zu, autoencoder %zu)\n", params,
            ead_net_parameter_count (model->teacher), ead_net_parameter_count (model->student),
            ead_net_parameter_count (model->autoencoder));
  printf ("  teacher      %s\n", teacher_source ? teacher_source : "unknown");
  if (teacher_source != NULL && (g_str_has_prefix (teacher_source, "default teacher")
                                 || g_str_has_prefix (teacher_source, "random")))
    printf ("               (the paper's pretrained teachers are more accurate: "
            "ead teacher import teacher_small.pth --model s --out T, then ead train --teacher T)\n");
  if (!teacher_only)
    printf ("  quantiles    student-teacher %.6g .. %.6g, autoencoder %.6g .. %.6g\n",
            model->q_st_a, model->q_st_b, model->q_ae_a, model->q_ae_b);
  for (guint i = 0; i < n_keys; i++)
    printf ("  %-28s %s\n", keys[i], (const char *) g_hash_table_lookup (model->metadata, keys[i]));
  if (implementations != NULL)
    printf ("%s", implementations);
  return EAD_EXIT_OK;
}
