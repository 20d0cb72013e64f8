/* ead teacher import */
#include "config.h"

#include <stdio.h>

#include "ead-bundle.h"
#include "ead-cli.h"
#include "ead-model.h"
#include "ead-teacher-import.h"

static void
print_json (const char *source, const char *out, const EadModel *model)
{
  g_autoptr (JsonBuilder) builder = json_builder_new ();
  g_autoptr (JsonNode) root = NULL;
  static const char *const keys[][2] = {
    { "format", "ead.teacher.format" },
    { "dtype", "ead.teacher.dtype" },
    { "file_sha256", "ead.teacher.file_sha256" },
    { "sha256", "ead.teacher.sha256" },
  };

  json_builder_begin_object (builder);
  json_builder_set_member_name (builder, "source");
  json_builder_add_string_value (builder, source);
  json_builder_set_member_name (builder, "out");
  json_builder_add_string_value (builder, out);
  json_builder_set_member_name (builder, "arch");
  json_builder_add_string_value (builder, ead_arch_name (model->arch));
  json_builder_set_member_name (builder, "parameters");
  json_builder_add_int_value (builder, ead_net_parameter_count (model->teacher));
  for (size_t i = 0; i < G_N_ELEMENTS (keys); i++)
    {
      json_builder_set_member_name (builder, keys[i][0]);
      json_builder_add_string_value (builder, g_hash_table_lookup (model->metadata, keys[i][1]));
    }
  json_builder_end_object (builder);
  root = json_builder_get_root (builder);
  ead_cli_print_json (root);
}

static int
teacher_import (int argc, char **argv)
{
  g_autofree char *arch_text = NULL;
  g_autofree char *out = NULL;
  gboolean json = FALSE;
  const GOptionEntry entries[] = {
    { "model", 'm', 0, G_OPTION_ARG_STRING, &arch_text, "Teacher size: s or m", "s|m" },
    { "out", 'o', 0, G_OPTION_ARG_FILENAME, &out, "Teacher bundle to write (*.ead.safetensors)",
      "BUNDLE" },
    { "json", 0, 0, G_OPTION_ARG_NONE, &json, "Print JSON", NULL },
    G_OPTION_ENTRY_NULL
  };
  g_autoptr (GError) error = NULL;
  g_autoptr (EadModel) model = NULL;
  EadArch arch;
  int exit_code;

  if (!ead_cli_parse ("teacher import", "FILE.pth",
                      "Convert a pretrained PyTorch teacher (a state_dict saved with torch.save:\n"
                      "nelson1425's teacher_small.pth / teacher_medium.pth or anomalib's\n"
                      "pretrained_teacher_*.pth) into a bundle for 'ead train --teacher'.\n"
                      "The file is read with a restricted unpickler: nothing in it is run.",
                      entries, &argc, &argv, &exit_code))
    return exit_code;
  if (argc != 2 || arch_text == NULL || out == NULL)
    {
      ead_cli_error ("teacher import", "expected FILE.pth, --model s|m and --out BUNDLE "
                                       "(see 'ead teacher import --help')");
      return EAD_EXIT_USAGE;
    }
  if (!ead_arch_parse (arch_text, &arch, &error))
    {
      ead_cli_error ("teacher import", "--model: %s", error->message);
      return EAD_EXIT_USAGE;
    }
  model = ead_teacher_import (argv[1], arch, &error);
  if (model == NULL || !ead_bundle_write (model, out, &error))
    {
      ead_cli_error ("teacher import", "%s", error->message);
      return EAD_EXIT_FAILURE;
    }
  if (json)
    print_json (argv[1], out, model);
  else
    printf ("wrote %s (%s teacher from %s: %s naming, %s stored, sha256 %s)\n", out,
            ead_arch_name (arch), argv[1],
            (const char *) g_hash_table_lookup (model->metadata, "ead.teacher.format"),
            (const char *) g_hash_table_lookup (model->metadata, "ead.teacher.dtype"),
            (const char *) g_hash_table_lookup (model->metadata, "ead.teacher.file_sha256"));
  return EAD_EXIT_OK;
}

int
ead_cmd_teacher (int argc, char **argv)
{
  if (argc >= 2 && g_str_equal (argv[1], "import"))
    return teacher_import (argc - 1, argv + 1);
  if (argc >= 2 && (g_str_equal (argv[1], "--help") || g_str_equal (argv[1], "-h")))
    {
      printf ("Usage: ead teacher import FILE.pth --model s|m --out BUNDLE [--json]\n");
      return EAD_EXIT_OK;
    }
  if (argc >= 2 && g_str_equal (argv[1], "--version"))
    {
      printf ("ead %s\n", PACKAGE_VERSION);
      return EAD_EXIT_OK;
    }
  ead_cli_error ("teacher", "expected a subcommand: import (see 'ead teacher --help')");
  return EAD_EXIT_USAGE;
}
