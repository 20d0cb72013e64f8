/* ead train: EfficientAD training from a folder of good images. */
#include "config.h"

#include <gio/gio.h>
#include <glib-unix.h>
#include <glib/gstdio.h>
#include <signal.h>
#include <stdio.h>

#include "ead-bundle.h"
#include "ead-cli.h"
#include "ead-cli-progress.h"
#include "ead-dataset.h"
#include "ead-error.h"
#include "ead-train.h"

static gint cancel_requested;

static void
on_signal (int signum)
{
  g_atomic_int_set (&cancel_requested, 1);
}

static const char *
phase_name (EadTrainPhase phase)
{
  switch (phase)
    {
    case EAD_TRAIN_PHASE_TEACHER_STATS:
      return "teacher statistics";
    case EAD_TRAIN_PHASE_TRAINING:
      return "training";
    case EAD_TRAIN_PHASE_QUANTILES:
      return "map quantiles";
    }
  return "?";
}

static void
report (const EadTrainProgress *progress, gpointer user_data)
{
  if (progress->phase == EAD_TRAIN_PHASE_TRAINING)
    {
      EadCliLoss losses[] = {
        { "total", progress->loss_total }, { "hard", progress->loss_hard },
        { "penalty", progress->loss_penalty }, { "ae", progress->loss_ae },
        { "stae", progress->loss_stae },
      };

      ead_cli_progress_step (user_data, progress->step, progress->steps, losses,
                             G_N_ELEMENTS (losses), progress->elapsed_s, progress->eta_s);
    }
  else
    ead_cli_progress_pass (user_data, phase_name (progress->phase), "images", progress->step,
                           progress->steps, progress->elapsed_s, progress->eta_s);
}

/* The teacher: a given bundle, else the bundled default teacher of the architecture,
 * else a seeded random teacher (until a pretrained one is installed) with a warning. */
static EadModel *
load_teacher (const char *teacher_path, EadArch arch, int height, int width, GError **error)
{
  g_autofree char *name = g_strdup_printf ("teacher-%s.ead.safetensors",
                                           arch == EAD_ARCH_SMALL ? "s" : "m");
  const char *dirs[] = { g_getenv ("EAD_TEACHER_DIR"), EAD_SOURCE_DATADIR "/teachers",
                         EAD_DATADIR "/teachers" };
  EadModel *teacher;

  if (teacher_path != NULL)
    {
      teacher = ead_bundle_read (teacher_path, error);
      if (teacher == NULL)
        return NULL;
      if (teacher->arch != arch)
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                       "%s: an %s teacher, but --model asks for %s", teacher_path,
                       ead_arch_name (teacher->arch), ead_arch_name (arch));
          ead_model_free (teacher);
          return NULL;
        }
      if (!g_hash_table_contains (teacher->metadata, "ead.teacher.source"))
        g_hash_table_insert (teacher->metadata, g_strdup ("ead.teacher.source"),
                             g_strdup (teacher_path));
    }
  else
    {
      teacher = NULL;
      for (size_t i = 0; teacher == NULL && i < G_N_ELEMENTS (dirs); i++)
        {
          g_autofree char *path = dirs[i] ? g_build_filename (dirs[i], name, NULL) : NULL;
          if (path != NULL && g_file_test (path, G_FILE_TEST_EXISTS))
            {
              const char *source;

              teacher = ead_bundle_read (path, error);
              if (teacher == NULL)
                return NULL;
              source = g_hash_table_lookup (teacher->metadata, "ead.teacher.source");
              g_hash_table_insert (teacher->metadata, g_strdup ("ead.teacher.source"),
                                   g_strdup_printf ("default teacher %s: %s", path,
                                                    source ? source : "unknown origin"));
              fprintf (stderr, "ead train: teacher %s (the default; --teacher picks another)\n",
                       path);
            }
        }
      if (teacher == NULL)
        {
          teacher = ead_model_new (arch);
          ead_net_init_random (teacher->teacher, "teacher", 0);
          g_hash_table_insert (teacher->metadata, g_strdup ("ead.teacher.source"),
                               g_strdup ("random (seed 0)"));
          fprintf (stderr, "ead train: no pretrained teacher is installed (%s); using a "
                           "seeded random teacher, which detects poorly; pass --teacher\n", name);
        }
    }
  teacher->input_height = height;
  teacher->input_width = width;
  return teacher;
}

int
ead_cmd_train (int argc, char **argv)
{
  g_autofree char *data_dir = NULL;
  g_autofree char *arch_text = NULL;
  g_autofree char *teacher_path = NULL;
  g_autofree char *penalty_dir = NULL;
  g_autofree char *out = NULL;
  g_autofree char *device = NULL;
  g_autofree char *precision_text = NULL;
  EadPrecision precision;
  gint64 seed = 0;
  int steps = 70000, threads = 0, checkpoint_every = 1000, log_every = 100, input_size = 256;
  gboolean resume = FALSE, strict = FALSE, json = FALSE;
  const GOptionEntry entries[] = {
    { "data", 'd', 0, G_OPTION_ARG_FILENAME, &data_dir,
      "Good images: an MVTec AD category (its train/good) or a folder", "DIR" },
    { "model", 'm', 0, G_OPTION_ARG_STRING, &arch_text, "s or m (default s)", "s|m" },
    { "steps", 0, 0, G_OPTION_ARG_INT, &steps, "Training steps (default 70000)", "N" },
    { "teacher", 0, 0, G_OPTION_ARG_FILENAME, &teacher_path,
      "Teacher bundle (default: the installed teacher of the model size)", "BUNDLE" },
    { "penalty-dir", 0, 0, G_OPTION_ARG_FILENAME, &penalty_dir,
      "General photos for the penalty loss (default: none)", "DIR" },
    { "seed", 0, 0, G_OPTION_ARG_INT64, &seed, "Seed (default 0)", "S" },
    { "threads", 't', 0, G_OPTION_ARG_INT, &threads, "CPU threads (default: all cores)", "T" },
    { "device", 0, 0, G_OPTION_ARG_STRING, &device, "cpu or cuda (default cpu)", "DEVICE" },
    EAD_CLI_PRECISION_ENTRY (precision_text),
    { "input-size", 0, 0, G_OPTION_ARG_INT, &input_size, "Network input side (default 256)", "PX" },
    { "checkpoint-every", 0, 0, G_OPTION_ARG_INT, &checkpoint_every,
      "Steps between checkpoints (default 1000; 0: none)", "N" },
    { "resume", 0, 0, G_OPTION_ARG_NONE, &resume, "Continue from the last checkpoint", NULL },
    { "strict", 0, 0, G_OPTION_ARG_NONE, &strict, "Refuse unreadable images instead of skipping them", NULL },
    { "log-every", 0, 0, G_OPTION_ARG_INT, &log_every,
      "Steps between progress lines (mean losses of those steps) when not on a terminal (default 100)", "N" },
    { "json", 0, 0, G_OPTION_ARG_NONE, &json, "JSON events on stdout, one per line", NULL },
    { "out", 'o', 0, G_OPTION_ARG_FILENAME, &out, "The trained model bundle to write", "BUNDLE" },
    G_OPTION_ENTRY_NULL
  };
  g_autoptr (GError) error = NULL;
  g_autoptr (EadModel) teacher = NULL;
  g_autoptr (EadDataset) data = NULL;
  g_autoptr (EadDataset) penalty = NULL;
  g_autoptr (EadTrainer) trainer = NULL;
  g_autoptr (EadModel) model = NULL;
  g_autofree char *checkpoint = NULL;
  EadDatasetOptions data_options = { 0 };
  EadTrainOptions options;
  EadCliProgress reporter;
  EadArch arch = EAD_ARCH_SMALL;
  int exit_code;
  gint64 start = g_get_monotonic_time ();

  if (!ead_cli_parse ("train", "",
                      "Train an EfficientAD model (student and autoencoder against a frozen\n"
                      "teacher) on good images.  A checkpoint next to the output lets a killed\n"
                      "or interrupted run continue with --resume.",
                      entries, &argc, &argv, &exit_code))
    return exit_code;
  if (!ead_cli_parse_precision ("train", precision_text, &precision))
    return EAD_EXIT_USAGE;
  if (data_dir == NULL || out == NULL)
    {
      ead_cli_error ("train", "--data DIR and --out BUNDLE are required (see 'ead train --help')");
      return EAD_EXIT_USAGE;
    }
  if (arch_text != NULL && !ead_arch_parse (arch_text, &arch, &error))
    {
      ead_cli_error ("train", "--model: %s", error->message);
      return EAD_EXIT_USAGE;
    }
  if (steps < 1 || threads < 0 || checkpoint_every < 0 || log_every < 1 || seed < 0)
    {
      ead_cli_error ("train", "--steps and --log-every must be positive; --threads, "
                              "--checkpoint-every and --seed 0 or more");
      return EAD_EXIT_USAGE;
    }
  if (input_size < EAD_MIN_INPUT_SIZE || input_size > 4096)
    {
      ead_cli_error ("train", "--input-size %d: the networks need %d to 4096 pixels",
                     input_size, EAD_MIN_INPUT_SIZE);
      return EAD_EXIT_USAGE;
    }

  teacher = load_teacher (teacher_path, arch, input_size, input_size, &error);
  if (teacher == NULL)
    {
      ead_cli_error ("train", "%s", error->message);
      return EAD_EXIT_FAILURE;
    }
  data_options = (EadDatasetOptions) { input_size, input_size, 0.1, 42, strict,
                                       EAD_DATASET_MIN_IMAGES };
  data = ead_dataset_load (data_dir, &data_options, &error);
  if (data == NULL)
    {
      ead_cli_error ("train", "%s", error->message);
      return EAD_EXIT_FAILURE;
    }
  for (guint i = 0; i < data->skipped->len; i++)
    ead_cli_error ("train", "skipped %s", (const char *) data->skipped->pdata[i]);
  if (penalty_dir != NULL)
    {
      EadDatasetOptions penalty_options = { input_size, input_size, 0.0, 0, strict, 1 };
      penalty = ead_dataset_load (penalty_dir, &penalty_options, &error);
      if (penalty == NULL)
        {
          ead_cli_error ("train", "--penalty-dir: %s", error->message);
          return EAD_EXIT_FAILURE;
        }
    }

  checkpoint = g_strconcat (out, ".checkpoint", NULL);
  if (!resume && g_file_test (checkpoint, G_FILE_TEST_EXISTS))
    fprintf (stderr, "ead train: starting afresh; %s will be replaced (use --resume to continue it)\n",
             checkpoint);
  ead_train_options_init (&options);
  options.steps = steps;
  options.seed = seed;
  options.threads = threads;
  options.device = device;
  options.precision = precision;
  options.checkpoint_every = checkpoint_every;
  options.checkpoint_path = checkpoint;
  options.resume = resume;
  trainer = ead_trainer_new (teacher, data, penalty, &options, &error);
  if (trainer == NULL)
    {
      ead_cli_error ("train", "%s", error->message);
      return EAD_EXIT_FAILURE;
    }
  ead_cli_note_precision ("train", precision, ead_trainer_get_backend (trainer));

  ead_cli_progress_init (&reporter, json, log_every);
  if (!json)
    printf ("training %s on %u images (%u for validation) from %s, %d steps, %s\n",
            ead_arch_name (arch), data->train->len, data->validation->len, data->root, steps,
            ead_precision_name (ead_trainer_get_precision (trainer)));
  signal (SIGINT, on_signal);
  signal (SIGTERM, on_signal);
  model = ead_trainer_run (trainer, report, &reporter, &cancel_requested, &error);
  signal (SIGINT, SIG_DFL);
  signal (SIGTERM, SIG_DFL);
  if (model == NULL)
    {
      gboolean cancelled = g_error_matches (error, G_IO_ERROR, G_IO_ERROR_CANCELLED);

      ead_cli_progress_interrupted (&reporter);
      ead_cli_error ("train", "%s%s", error->message,
                     cancelled ? "; continue with --resume" : "");
      return cancelled ? 130 : EAD_EXIT_FAILURE;
    }
  if (!ead_bundle_write (model, out, &error))
    {
      ead_cli_error ("train", "%s (the checkpoint %s is kept)", error->message, checkpoint);
      return EAD_EXIT_FAILURE;
    }
  g_unlink (checkpoint);
  if (json)
    printf ("{\"event\":\"done\",\"out\":\"%s\",\"steps\":%d,\"seconds\":%.1f,"
            "\"threshold\":%s,\"q_st\":[%.9g,%.9g],\"q_ae\":[%.9g,%.9g]}\n",
            out, steps, (g_get_monotonic_time () - start) / 1e6,
            (const char *) g_hash_table_lookup (model->metadata, "ead.threshold.suggested"),
            model->q_st_a, model->q_st_b, model->q_ae_a, model->q_ae_b);
  else
    printf ("wrote %s in %.0f s (suggested threshold %s)\n", out,
            (g_get_monotonic_time () - start) / 1e6,
            (const char *) g_hash_table_lookup (model->metadata, "ead.threshold.suggested"));
  return EAD_EXIT_OK;
}
