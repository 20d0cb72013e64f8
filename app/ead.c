/* ead: the command-line front end of EfficientAD Workstation. */
#include "config.h"

#include <locale.h>
#include <stdio.h>
#include <string.h>

#include "ead-cli.h"

static const struct {
  const char *name;
  EadCommandFunc run;
  const char *summary;
} commands[] = {
  { "model", ead_cmd_model, "Create a model bundle (model new)" },
  { "info", ead_cmd_info, "Describe a model bundle" },
  { "train", ead_cmd_train, "Train a model on good images" },
  { "eval", ead_cmd_eval, "Evaluate a model on an MVTec AD test split" },
  { "infer", ead_cmd_infer, "Score images and write heatmaps" },
  { "bench", ead_cmd_bench, "Time the inference pipeline" },
  { "demo", ead_cmd_demo, "Generate a synthetic inspection dataset" },
  { "init", ead_cmd_init, "Create a project" },
  { "import", ead_cmd_import, "Import folders of images into a project" },
  { "label", ead_cmd_label, "Label images good, defect or unlabelled" },
  { "images", ead_cmd_images, "List the images of a project" },
  { "models", ead_cmd_models, "List or register the models of a project" },
  { "threshold", ead_cmd_threshold, "Show, suggest or set a model's threshold" },
  { "runs", ead_cmd_runs, "List training and inference runs" },
  { "report", ead_cmd_report, "Write a PDF or CSV report of a model's results" },
  { "teacher", ead_cmd_teacher, "Import or distil a teacher (teacher import|pretrain)" },
};

static void
print_usage (FILE *out)
{
  fprintf (out, "Usage: ead COMMAND [OPTION...]\n\n"
                "EfficientAD Workstation: visual anomaly detection.\n\nCommands:\n");
  for (size_t i = 0; i < G_N_ELEMENTS (commands); i++)
    fprintf (out, "  %-9s %s\n", commands[i].name, commands[i].summary);
  fprintf (out, "\nRun 'ead COMMAND --help' for the options of a command.\n"
                "Options: --help, --version\n");
}

int
main (int argc, char **argv)
{
  setlocale (LC_ALL, "");

  if (argc < 2 || g_str_equal (argv[1], "--help") || g_str_equal (argv[1], "-h")
      || g_str_equal (argv[1], "help"))
    {
      print_usage (argc < 2 ? stderr : stdout);
      return argc < 2 ? EAD_EXIT_USAGE : EAD_EXIT_OK;
    }
  if (g_str_equal (argv[1], "--version"))
    {
      printf ("ead %s\n", PACKAGE_VERSION);
      return EAD_EXIT_OK;
    }
  for (size_t i = 0; i < G_N_ELEMENTS (commands); i++)
    if (g_str_equal (argv[1], commands[i].name))
      return commands[i].run (argc - 1, argv + 1);
  fprintf (stderr, "ead: unknown command '%s'\n\n", argv[1]);
  print_usage (stderr);
  return EAD_EXIT_USAGE;
}
