/* ead teacher import, ead teacher pretrain, ead teacher pack */
#include "config.h"

#include <gio/gio.h>
#include <glib/gstdio.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "ead-backbone.h"
#include "ead-bundle.h"
#include "ead-cli.h"
#include "ead-cli-progress.h"
#include "ead-model.h"
#include "ead-pretrain.h"
#include "ead-teacher-import.h"

#define EAD_TEACHER_HALF_ENTRY(flag) \
  { "half", 0, 0, G_OPTION_ARG_NONE, &(flag), \
    "Store the weights as fp16 (half the file; the teacher's features move by ~1e-3)", NULL }

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
  gboolean json = FALSE, half = FALSE;
  const GOptionEntry entries[] = {
    { "model", 'm', 0, G_OPTION_ARG_STRING, &arch_text, "Teacher size: s or m", "s|m" },
    { "out", 'o', 0, G_OPTION_ARG_FILENAME, &out, "Teacher bundle to write (*.ead.safetensors)",
      "BUNDLE" },
    EAD_TEACHER_HALF_ENTRY (half),
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
  if (model == NULL || !ead_bundle_write_teacher (model, out, half, &error))
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

/* ---- ead teacher pretrain ---- */

static gint cancel_requested;

static void
on_signal (int signum)
{
  g_atomic_int_set (&cancel_requested, 1);
}

static const char *
phase_name (EadPretrainPhase phase)
{
  return phase == EAD_PRETRAIN_PHASE_STATISTICS ? "target statistics" : "distillation";
}

static void
report (const EadPretrainProgress *progress, gpointer user_data)
{
  if (progress->phase == EAD_PRETRAIN_PHASE_TRAINING)
    {
      EadCliLoss loss = { "total", progress->loss };

      ead_cli_progress_step (user_data, progress->step, progress->steps, &loss, 1,
                             progress->elapsed_s, progress->eta_s);
    }
  else
    ead_cli_progress_pass (user_data, phase_name (progress->phase), "samples (two passes)",
                           progress->step, progress->steps, progress->elapsed_s, progress->eta_s);
}

/* "ead teacher ARGS...", shell-quoted, for the bundle's record of how it was made. */
static char *
command_line (int argc, char **argv)
{
  GString *text = g_string_new ("ead teacher");

  for (int i = 0; i < argc; i++)
    {
      const char *arg = argv[i];
      gboolean plain = arg[0] != '\0';

      for (const char *p = arg; *p != '\0' && plain; p++)
        plain = g_ascii_isalnum (*p) || strchr ("_-+=.,:/@%", *p) != NULL;
      if (plain)
        g_string_append_printf (text, " %s", arg);
      else
        {
          g_autofree char *quoted = g_shell_quote (arg);
          g_string_append_printf (text, " %s", quoted);
        }
    }
  return g_string_free (text, FALSE);
}

static void
print_pretrain_done (const char *out, const EadModel *model, gboolean json, double seconds)
{
  GHashTable *metadata = model->metadata;

  if (json)
    {
      g_autoptr (JsonBuilder) builder = json_builder_new ();
      g_autoptr (JsonNode) root = NULL;
      g_autofree char *line = NULL;
      static const char *const keys[][2] = {
        { "backbone", "ead.pretrain.backbone" },
        { "backbone_sha256", "ead.pretrain.backbone.sha256" },
        { "layers", "ead.pretrain.layers" },
        { "images", "ead.pretrain.images.count" },
        { "unreadable_images", "ead.pretrain.images.unreadable" },
        { "loss", "ead.pretrain.loss.final" },
        { "precision", "ead.pretrain.precision" },
        { "sha256", "ead.teacher.sha256" },
      };

      json_builder_begin_object (builder);
      json_builder_set_member_name (builder, "event");
      json_builder_add_string_value (builder, "done");
      json_builder_set_member_name (builder, "out");
      json_builder_add_string_value (builder, out);
      json_builder_set_member_name (builder, "arch");
      json_builder_add_string_value (builder, ead_arch_name (model->arch));
      for (size_t i = 0; i < G_N_ELEMENTS (keys); i++)
        {
          json_builder_set_member_name (builder, keys[i][0]);
          json_builder_add_string_value (builder, g_hash_table_lookup (metadata, keys[i][1]));
        }
      json_builder_set_member_name (builder, "seconds");
      json_builder_add_double_value (builder, seconds);
      json_builder_end_object (builder);
      root = json_builder_get_root (builder);
      line = json_to_string (root, FALSE);
      printf ("%s\n", line);
      return;
    }
  printf ("wrote %s in %.0f s (%s teacher distilled from %s %s, final loss %s, sha256 %s)\n", out,
          seconds, ead_arch_name (model->arch),
          (const char *) g_hash_table_lookup (metadata, "ead.pretrain.backbone"),
          (const char *) g_hash_table_lookup (metadata, "ead.pretrain.layers"),
          (const char *) g_hash_table_lookup (metadata, "ead.pretrain.loss.final"),
          (const char *) g_hash_table_lookup (metadata, "ead.teacher.sha256"));
}

static int
teacher_pretrain (int argc, char **argv)
{
  g_autofree char *command = command_line (argc, argv);
  g_autofree char *backbone_path = NULL;
  g_autofree char *layers = NULL;
  g_autofree char *images = NULL;
  g_autofree char *arch_text = NULL;
  g_autofree char *precision_text = NULL;
  g_autofree char *out = NULL;
  gint64 seed = 0;
  double learning_rate = 1e-4;
  int steps = 60000, batch = 16, stats_images = 1000, threads = 0, checkpoint_every = 1000;
  int log_every = 10;
  gboolean resume = FALSE, json = FALSE, half = FALSE;
  const GOptionEntry entries[] = {
    { "backbone", 0, 0, G_OPTION_ARG_FILENAME, &backbone_path,
      "A torchvision ResNet state_dict (e.g. wide_resnet101_2's IMAGENET1K_V1 weights) or a "
      "converted backbone (tools/convert-mobilenet)", "FILE" },
    { "layers", 0, 0, G_OPTION_ARG_STRING, &layers,
      "Backbone levels to distil (default layer2,layer3)", "L,L" },
    { "images", 0, 0, G_OPTION_ARG_FILENAME, &images,
      "General photos, searched recursively, any size (ImageNet in the paper)", "DIR" },
    { "model", 'm', 0, G_OPTION_ARG_STRING, &arch_text, "Teacher size: s or m (default s)", "s|m" },
    { "steps", 0, 0, G_OPTION_ARG_INT, &steps, "Distillation steps (default 60000)", "N" },
    { "batch", 0, 0, G_OPTION_ARG_INT, &batch, "Images per step (default 16)", "N" },
    { "learning-rate", 0, 0, G_OPTION_ARG_DOUBLE, &learning_rate,
      "Adam learning rate (default 1e-4, the paper's; short runs may use more)", "LR" },
    { "stats-images", 0, 0, G_OPTION_ARG_INT, &stats_images,
      "Samples for the target mean and std (default 1000; the paper: 10000)", "N" },
    { "seed", 0, 0, G_OPTION_ARG_INT64, &seed, "Seed (default 0)", "S" },
    { "threads", 't', 0, G_OPTION_ARG_INT, &threads, "CPU threads (default: all cores)", "T" },
    EAD_CLI_PRECISION_ENTRY (precision_text),
    { "checkpoint-every", 0, 0, G_OPTION_ARG_INT, &checkpoint_every,
      "Steps between checkpoints (default 1000; 0: none)", "N" },
    { "resume", 0, 0, G_OPTION_ARG_NONE, &resume, "Continue from the last checkpoint", NULL },
    { "log-every", 0, 0, G_OPTION_ARG_INT, &log_every,
      "Steps between progress lines (mean loss of those steps) when not on a terminal (default 10)", "N" },
    { "json", 0, 0, G_OPTION_ARG_NONE, &json, "JSON events on stdout, one per line", NULL },
    { "out", 'o', 0, G_OPTION_ARG_FILENAME, &out, "Teacher bundle to write (*.ead.safetensors)",
      "BUNDLE" },
    EAD_TEACHER_HALF_ENTRY (half),
    G_OPTION_ENTRY_NULL
  };
  g_autoptr (GError) error = NULL;
  g_autoptr (EadBackbone) backbone = NULL;
  g_autoptr (EadPretrainer) pretrainer = NULL;
  g_autoptr (EadModel) model = NULL;
  g_autofree char *checkpoint = NULL;
  const GPtrArray *skipped;
  EadPretrainOptions options;
  EadPrecision precision;
  EadCliProgress reporter;
  guint levels = (1u << 1) | (1u << 2);
  EadArch arch = EAD_ARCH_SMALL;
  int exit_code;
  gint64 start = g_get_monotonic_time ();

  if (!ead_cli_parse ("teacher pretrain", "",
                      "Distil a teacher (spec §5): a PDN learns the PatchCore-style features of a\n"
                      "frozen torchvision ResNet on general photos.  The bundle is a teacher for\n"
                      "'ead train --teacher'.  A checkpoint next to the output lets a killed or\n"
                      "interrupted run continue with --resume.",
                      entries, &argc, &argv, &exit_code))
    return exit_code;
  if (!ead_cli_parse_precision ("teacher pretrain", precision_text, &precision))
    return EAD_EXIT_USAGE;
  if (argc != 1 || backbone_path == NULL || images == NULL || out == NULL)
    {
      ead_cli_error ("teacher pretrain", "expected --backbone FILE.pth, --images DIR and --out "
                                         "BUNDLE (see 'ead teacher pretrain --help')");
      return EAD_EXIT_USAGE;
    }
  if (arch_text != NULL && !ead_arch_parse (arch_text, &arch, &error))
    {
      ead_cli_error ("teacher pretrain", "--model: %s", error->message);
      return EAD_EXIT_USAGE;
    }
  if (layers != NULL && (levels = ead_backbone_parse_levels (layers, &error)) == 0)
    {
      ead_cli_error ("teacher pretrain", "--layers: %s", error->message);
      return EAD_EXIT_USAGE;
    }
  if (steps < 1 || batch < 1 || stats_images < 1 || log_every < 1 || threads < 0
      || checkpoint_every < 0 || seed < 0 || !(learning_rate > 0.0 && learning_rate < 1.0))
    {
      ead_cli_error ("teacher pretrain", "--steps, --batch, --stats-images and --log-every must be "
                                         "positive; --threads, --checkpoint-every and --seed 0 or "
                                         "more; --learning-rate between 0 and 1");
      return EAD_EXIT_USAGE;
    }

  backbone = ead_backbone_load (backbone_path, &error);
  if (backbone == NULL)
    {
      ead_cli_error ("teacher pretrain", "--backbone: %s", error->message);
      return EAD_EXIT_FAILURE;
    }
  checkpoint = g_strconcat (out, ".checkpoint", NULL);
  if (!resume && g_file_test (checkpoint, G_FILE_TEST_EXISTS))
    fprintf (stderr, "ead teacher pretrain: starting afresh; %s will be replaced (use --resume "
                     "to continue it)\n", checkpoint);
  ead_pretrain_options_init (&options);
  options.arch = arch;
  options.levels = levels;
  options.images_dir = images;
  options.steps = steps;
  options.batch = batch;
  options.learning_rate = learning_rate;
  options.stats_images = stats_images;
  options.seed = seed;
  options.threads = threads;
  options.precision = precision;
  options.checkpoint_every = checkpoint_every;
  options.checkpoint_path = checkpoint;
  options.resume = resume;
  options.command = command;
  pretrainer = ead_pretrainer_new (backbone, &options, &error);
  if (pretrainer == NULL)
    {
      ead_cli_error ("teacher pretrain", "%s", error->message);
      return EAD_EXIT_FAILURE;
    }
  ead_cli_note_precision ("teacher pretrain", precision, ead_pretrainer_get_backend (pretrainer));

  ead_cli_progress_init (&reporter, json, log_every);
  if (!json)
    printf ("distilling an %s teacher from %s (%s, %s) on %u images from %s: %d steps of %d, "
            "target statistics over %d samples, %s\n",
            ead_arch_name (arch), backbone_path, backbone->arch,
            (const char *) (layers != NULL ? layers : "layer2,layer3"),
            ead_pretrainer_get_image_count (pretrainer), images, steps, batch, stats_images,
            ead_precision_name (ead_pretrainer_get_precision (pretrainer)));
  g_clear_pointer (&backbone, ead_backbone_free);  /* compiled: its weights are copied */
  signal (SIGINT, on_signal);
  signal (SIGTERM, on_signal);
  model = ead_pretrainer_run (pretrainer, report, &reporter, &cancel_requested, &error);
  signal (SIGINT, SIG_DFL);
  signal (SIGTERM, SIG_DFL);
  skipped = ead_pretrainer_get_skipped (pretrainer);
  for (guint i = 0; i < skipped->len; i++)
    ead_cli_error ("teacher pretrain", "skipped %s (undecodable; the next image was used)",
                   (const char *) skipped->pdata[i]);
  if (model == NULL)
    {
      gboolean cancelled = g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CANCELLED);

      ead_cli_progress_interrupted (&reporter);
      ead_cli_error ("teacher pretrain", "%s%s", error->message,
                     cancelled ? "; continue with --resume" : "");
      return cancelled ? 130 : EAD_EXIT_FAILURE;
    }
  if (!ead_bundle_write_teacher (model, out, half, &error))
    {
      ead_cli_error ("teacher pretrain", "%s (the checkpoint %s is kept)", error->message,
                     checkpoint);
      return EAD_EXIT_FAILURE;
    }
  g_unlink (checkpoint);
  print_pretrain_done (out, model, json, (g_get_monotonic_time () - start) / 1e6);
  return EAD_EXIT_OK;
}

/* ---- ead teacher pack ---- */

static gboolean
is_pretrain_checkpoint (const char *path)
{
  g_autoptr (EadSafetensors) file = ead_safetensors_open (path, NULL);
  const char *run = file ? ead_safetensors_lookup_metadata (file, "ead.checkpoint.run") : NULL;

  return run != NULL && g_str_has_prefix (run, "pretrain ");
}

static int
teacher_pack (int argc, char **argv)
{
  g_autofree char *out = NULL;
  gboolean half = FALSE;
  const GOptionEntry entries[] = {
    { "out", 'o', 0, G_OPTION_ARG_FILENAME, &out, "Teacher bundle to write (*.ead.safetensors)",
      "BUNDLE" },
    EAD_TEACHER_HALF_ENTRY (half),
    G_OPTION_ENTRY_NULL
  };
  g_autoptr (GError) error = NULL;
  g_autoptr (EadModel) model = NULL;
  int exit_code;

  if (!ead_cli_parse ("teacher pack", "BUNDLE",
                      "Rewrite a teacher (or the teacher of a trained model) as a compact\n"
                      "teacher bundle: the teacher's layers only, fp16 with --half.  The\n"
                      "provenance metadata is kept.  BUNDLE may also be the checkpoint of a\n"
                      "running 'ead teacher pretrain' (OUT.checkpoint), to try its teacher\n"
                      "before the run ends.",
                      entries, &argc, &argv, &exit_code))
    return exit_code;
  if (argc != 2 || out == NULL)
    {
      ead_cli_error ("teacher pack", "expected BUNDLE and --out BUNDLE (see 'ead teacher pack "
                                     "--help')");
      return EAD_EXIT_USAGE;
    }
  model = is_pretrain_checkpoint (argv[1]) ? ead_pretrain_checkpoint_teacher (argv[1], &error)
                                            : ead_bundle_read (argv[1], &error);
  if (model == NULL || !ead_bundle_write_teacher (model, out, half, &error))
    {
      ead_cli_error ("teacher pack", "%s", error->message);
      return EAD_EXIT_FAILURE;
    }
  printf ("wrote %s (%s teacher, %s, sha256 %s)\n", out, ead_arch_name (model->arch),
          half ? "fp16" : "fp32",
          (const char *) g_hash_table_lookup (model->metadata, "ead.teacher.sha256"));
  return EAD_EXIT_OK;
}

int
ead_cmd_teacher (int argc, char **argv)
{
  if (argc >= 2 && g_str_equal (argv[1], "import"))
    return teacher_import (argc - 1, argv + 1);
  if (argc >= 2 && g_str_equal (argv[1], "pretrain"))
    return teacher_pretrain (argc - 1, argv + 1);
  if (argc >= 2 && g_str_equal (argv[1], "pack"))
    return teacher_pack (argc - 1, argv + 1);
  if (argc >= 2 && (g_str_equal (argv[1], "--help") || g_str_equal (argv[1], "-h")))
    {
      printf ("Usage: ead teacher import FILE.pth --model s|m [--half] --out BUNDLE [--json]\n"
              "       ead teacher pretrain --backbone FILE.pth [--layers layer2,layer3] "
              "--images DIR\n"
              "                            [--model s|m] [--steps N] [--batch 16] "
              "[--stats-images N] [--seed S]\n"
              "                            [--threads T] [--precision fp32|bf16|auto] "
              "[--checkpoint-every N]\n"
              "                            [--learning-rate LR] [--resume] [--json] [--half] "
              "--out BUNDLE\n"
              "       ead teacher pack BUNDLE [--half] --out BUNDLE\n");
      return EAD_EXIT_OK;
    }
  if (argc >= 2 && g_str_equal (argv[1], "--version"))
    {
      printf ("ead %s\n", PACKAGE_VERSION);
      return EAD_EXIT_OK;
    }
  ead_cli_error ("teacher", "expected a subcommand: import, pretrain or pack (see 'ead teacher --help')");
  return EAD_EXIT_USAGE;
}
