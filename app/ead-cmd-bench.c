/* ead bench: times the whole inference pipeline (three networks, both maps,
 * normalisation, pad, bilinear resize to 256 x 256, score) after a warm-up. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ead-bundle.h"
#include "ead-cli.h"
#include "ead-dataset.h"
#include "ead-detector.h"
#include "ead-train.h"

typedef struct {
  EadArch arch;
  gboolean train;
  int batch;
  int threads;
  const char *device;
  EadPrecision precision;  /* as asked: auto, fp32 or bf16 */
  const char *bundle;
  const char *data_dir;  /* training images for train benchmarks, or NULL */
  int warmup;
  int runs;
} BenchConfig;

typedef struct {
  double median_ms, min_ms, max_ms, images_per_s, gflop_per_image, peak_rss_mb;
  EadPrecision precision;  /* as run */
  char *implementations;
} BenchResult;

static int
compare_doubles (const void *a, const void *b)
{
  double x = *(const double *) a, y = *(const double *) b;
  return (x > y) - (x < y);
}

static double
pipeline_gflop (const EadModel *model)
{
  EadShape in = { 3, model->input_height, model->input_width };

  return 2.0e-9 * (ead_net_macs (model->teacher, in) + ead_net_macs (model->student, in)
                   + ead_net_macs (model->autoencoder, in));
}

static gboolean
run_config (const BenchConfig *config, BenchResult *result, GError **error)
{
  g_autoptr (EadModel) model = NULL;
  g_autoptr (EadDetector) detector = NULL;
  g_autofree float *inputs = NULL;
  g_autofree float *full = NULL;
  g_autofree double *times = NULL;
  EadDetectorOptions options = { config->batch, config->threads, config->device,
                                 config->precision };
  size_t input_size;
  guint64 key;

  if (config->bundle != NULL)
    {
      model = ead_bundle_read (config->bundle, error);
      if (model == NULL)
        return FALSE;
    }
  else
    {
      model = ead_model_new (config->arch);
      ead_model_init_random (model, 1);
    }
  detector = ead_detector_new (model, &options, error);
  if (detector == NULL)
    return FALSE;
  result->gflop_per_image = pipeline_gflop (model);
  input_size = (size_t) 3 * model->input_height * model->input_width;
  /* the detector holds its own copy of the weights, as in `ead infer` */
  g_clear_pointer (&model, ead_model_free);
  inputs = g_new (float, config->batch * input_size);
  key = ead_random_key (1, "bench.input");
  for (size_t i = 0; i < config->batch * input_size; i++)
    inputs[i] = 4.0f * ead_random_uniform (key, i) - 2.0f;
  full = g_new (float, 256 * 256);
  times = g_new (double, config->runs);

  for (int r = -config->warmup; r < config->runs; r++)
    {
      double start = ead_cli_now_ms ();

      if (!ead_detector_run (detector, inputs, config->batch, error))
        return FALSE;
      for (int i = 0; i < config->batch; i++)
        ead_detector_full_map (detector, i, 256, 256, full);
      if (r >= 0)
        times[r] = ead_cli_now_ms () - start;
    }
  qsort (times, config->runs, sizeof *times, compare_doubles);
  result->median_ms = config->runs % 2 ? times[config->runs / 2]
                                       : 0.5 * (times[config->runs / 2 - 1] + times[config->runs / 2]);
  result->min_ms = times[0];
  result->max_ms = times[config->runs - 1];
  result->images_per_s = 1000.0 * config->batch / result->median_ms;
  result->peak_rss_mb = ead_cli_peak_rss_mb ();
  result->implementations = ead_detector_describe (detector);
  result->precision = ead_detector_get_precision (detector);
  return TRUE;
}

static JsonNode *
result_to_json (const BenchConfig *config, const BenchResult *result)
{
  g_autoptr (JsonBuilder) builder = json_builder_new ();

  json_builder_begin_object (builder);
  json_builder_set_member_name (builder, "model");
  json_builder_add_string_value (builder, config->arch == EAD_ARCH_SMALL ? "s" : "m");
  json_builder_set_member_name (builder, "batch");
  json_builder_add_int_value (builder, config->batch);
  json_builder_set_member_name (builder, "threads");
  json_builder_add_int_value (builder, config->threads);
  json_builder_set_member_name (builder, "device");
  json_builder_add_string_value (builder, config->device);
  json_builder_set_member_name (builder, "mode");
  json_builder_add_string_value (builder, config->train ? "train-step" : "inference");
  json_builder_set_member_name (builder, "precision");
  json_builder_add_string_value (builder, ead_precision_name (result->precision));
  json_builder_set_member_name (builder, "median_ms");
  json_builder_add_double_value (builder, result->median_ms);
  json_builder_set_member_name (builder, "min_ms");
  json_builder_add_double_value (builder, result->min_ms);
  json_builder_set_member_name (builder, "max_ms");
  json_builder_add_double_value (builder, result->max_ms);
  json_builder_set_member_name (builder, "images_per_s");
  json_builder_add_double_value (builder, result->images_per_s);
  json_builder_set_member_name (builder, "gflops");
  json_builder_add_double_value (builder,
                                 result->gflop_per_image * result->images_per_s);
  json_builder_set_member_name (builder, "peak_rss_mb");
  json_builder_add_double_value (builder, result->peak_rss_mb);
  json_builder_set_member_name (builder, "warmup");
  json_builder_add_int_value (builder, config->warmup);
  json_builder_set_member_name (builder, "runs");
  json_builder_add_int_value (builder, config->runs);
  json_builder_end_object (builder);
  return json_builder_get_root (builder);
}

/* Synthetic good images for a training benchmark without data: smooth random texture. */
static EadDataset *
synthetic_dataset (int size, int count)
{
  EadDataset *dataset = g_new0 (EadDataset, 1);
  guint64 key = ead_random_key (1, "bench.train.images");

  dataset->root = g_strdup ("(synthetic)");
  dataset->snapshot = g_strdup ("synthetic");
  dataset->train = g_array_new (FALSE, TRUE, sizeof (EadSample));
  dataset->validation = g_array_new (FALSE, TRUE, sizeof (EadSample));
  dataset->skipped = g_ptr_array_new_with_free_func (g_free);
  for (int i = 0; i < count; i++)
    {
      EadSample sample = { g_strdup_printf ("synthetic-%d", i), ead_image_new (size, size) };
      for (size_t p = 0; p < (size_t) size * size * 3; p++)
        sample.image->rgb[p] = 96 + (guint8) (64.0f * ead_random_uniform (key, (guint64) i * size * size * 3 + p));
      g_array_append_val (i < count - 2 ? dataset->train : dataset->validation, sample);
    }
  return dataset;
}

typedef struct {
  GArray *step_ms;
  gint64 last;
} StepTimes;

static void
record_step (const EadTrainProgress *progress, gpointer user_data)
{
  StepTimes *times = user_data;
  gint64 now = g_get_monotonic_time ();

  if (progress->phase == EAD_TRAIN_PHASE_TRAINING)
    {
      double ms = (now - times->last) / 1000.0;
      g_array_append_val (times->step_ms, ms);
    }
  times->last = now;
}

/* Times training steps (teacher on x and x_aug, student forward/backward twice, AE
 * forward/backward, Adam) after a warm-up; the teacher statistics and the validation
 * pass are not timed. */
static gboolean
run_train_config (const BenchConfig *config, BenchResult *result, GError **error)
{
  g_autoptr (EadModel) teacher = ead_model_new (config->arch);
  g_autoptr (EadDataset) data = NULL;
  g_autoptr (EadTrainer) trainer = NULL;
  g_autoptr (EadModel) model = NULL;
  g_autoptr (GArray) step_ms = g_array_new (FALSE, FALSE, sizeof (double));
  StepTimes times = { step_ms, g_get_monotonic_time () };
  EadTrainOptions options;
  EadShape in = { 3, 256, 256 };

  ead_net_init_random (teacher->teacher, "teacher", 0);
  if (config->data_dir != NULL)
    {
      EadDatasetOptions data_options = { 256, 256, 0.1, 42, FALSE, EAD_DATASET_MIN_IMAGES };
      data = ead_dataset_load (config->data_dir, &data_options, error);
      if (data == NULL)
        return FALSE;
    }
  else
    data = synthetic_dataset (256, 12);
  ead_train_options_init (&options);
  options.steps = config->warmup + config->runs;
  options.threads = config->threads;
  options.device = config->device;
  options.precision = config->precision;
  options.checkpoint_every = 0;
  trainer = ead_trainer_new (teacher, data, NULL, &options, error);
  if (trainer == NULL)
    return FALSE;
  result->implementations = ead_trainer_describe (trainer);
  result->precision = ead_trainer_get_precision (trainer);
  model = ead_trainer_run (trainer, record_step, &times, NULL, error);
  if (model == NULL)
    return FALSE;
  g_array_remove_range (step_ms, 0, config->warmup);
  g_array_sort (step_ms, compare_doubles);
  {
    double *t = (double *) step_ms->data;
    int n = step_ms->len;
    result->median_ms = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
    result->min_ms = t[0];
    result->max_ms = t[n - 1];
  }
  result->images_per_s = 1000.0 / result->median_ms;
  /* per step: teacher on 2 images, student forward + backward on 2, AE forward + backward */
  result->gflop_per_image = 2.0e-9 * (2.0 * ead_net_macs (model->teacher, in)
                                      + 3.0 * 2.0 * ead_net_macs (model->student, in)
                                      + 3.0 * ead_net_macs (model->autoencoder, in));
  result->peak_rss_mb = ead_cli_peak_rss_mb ();
  return TRUE;
}

static gboolean
parse_int_list (const char *text, const char *option, int min, int max, GArray *out, GError **error)
{
  g_auto (GStrv) parts = g_strsplit (text, ",", -1);

  for (int i = 0; parts[i] != NULL; i++)
    {
      guint64 value;
      if (!g_ascii_string_to_unsigned (parts[i], 10, min, max, &value, NULL))
        {
          g_set_error (error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                       "%s '%s': expected numbers from %d to %d, separated by commas", option,
                       text, min, max);
          return FALSE;
        }
      g_array_append_val (out, (int) { value });
    }
  return TRUE;
}

static gboolean
parse_precision_list (const char *text, GArray *out, GError **error)
{
  g_auto (GStrv) parts = g_strsplit (text, ",", -1);

  for (int i = 0; parts[i] != NULL; i++)
    {
      EadPrecision precision;
      if (!ead_precision_parse (parts[i], &precision, error))
        return FALSE;
      g_array_append_val (out, precision);
    }
  return TRUE;
}

/* Each configuration of a sweep runs in a fresh process so that its peak memory is its
 * own. */
static gboolean
run_child (const BenchConfig *config, const char *arch_text, JsonNode **node, GError **error)
{
  g_autofree char *batch = g_strdup_printf ("%d", config->batch);
  g_autofree char *threads = g_strdup_printf ("%d", config->threads);
  g_autofree char *warmup = g_strdup_printf ("%d", config->warmup);
  g_autofree char *runs = g_strdup_printf ("%d", config->runs);
  g_autofree char *out = NULL;
  g_autofree char *err = NULL;
  g_autoptr (JsonParser) parser = json_parser_new ();
  GPtrArray *args = g_ptr_array_new ();
  int status;
  gboolean ok;

  g_ptr_array_add (args, (char *) "/proc/self/exe");
  g_ptr_array_add (args, (char *) "bench");
  g_ptr_array_add (args, (char *) "--json");
  g_ptr_array_add (args, (char *) "--model");
  g_ptr_array_add (args, (char *) arch_text);
  g_ptr_array_add (args, (char *) "--batch");
  g_ptr_array_add (args, batch);
  g_ptr_array_add (args, (char *) "--threads");
  g_ptr_array_add (args, threads);
  g_ptr_array_add (args, (char *) "--warmup");
  g_ptr_array_add (args, warmup);
  g_ptr_array_add (args, (char *) "--runs");
  g_ptr_array_add (args, runs);
  g_ptr_array_add (args, (char *) "--device");
  g_ptr_array_add (args, (char *) config->device);
  g_ptr_array_add (args, (char *) "--precision");
  g_ptr_array_add (args, (char *) ead_precision_name (config->precision));
  if (config->train)
    g_ptr_array_add (args, (char *) "--train");
  if (config->data_dir != NULL)
    {
      g_ptr_array_add (args, (char *) "--data");
      g_ptr_array_add (args, (char *) config->data_dir);
    }
  if (config->bundle != NULL)
    {
      g_ptr_array_add (args, (char *) "--bundle");
      g_ptr_array_add (args, (char *) config->bundle);
    }
  g_ptr_array_add (args, NULL);
  ok = g_spawn_sync (NULL, (char **) args->pdata, NULL, G_SPAWN_DEFAULT, NULL, NULL, &out, &err,
                     &status, error);
  g_ptr_array_unref (args);
  if (!ok)
    return FALSE;
  if (!g_spawn_check_wait_status (status, NULL))
    {
      g_set_error (error, G_SPAWN_ERROR, G_SPAWN_ERROR_FAILED, "%s", g_strstrip (err));
      return FALSE;
    }
  if (!json_parser_load_from_data (parser, out, -1, error))
    return FALSE;
  *node = json_node_copy (json_parser_get_root (parser));
  return TRUE;
}

static void
print_row (JsonObject *object)
{
  printf ("%-6s %6" G_GINT64_FORMAT " %8" G_GINT64_FORMAT " %-7s %-9s %10.1f %10.1f %10.1f %10.2f %8.0f %10.0f\n",
          json_object_get_string_member (object, "model"),
          json_object_get_int_member (object, "batch"),
          json_object_get_int_member (object, "threads"),
          json_object_get_string_member (object, "device"),
          json_object_get_string_member (object, "precision"),
          json_object_get_double_member (object, "median_ms"),
          json_object_get_double_member (object, "min_ms"),
          json_object_get_double_member (object, "max_ms"),
          json_object_get_double_member (object, "images_per_s"),
          json_object_get_double_member (object, "gflops"),
          json_object_get_double_member (object, "peak_rss_mb"));
}

int
ead_cmd_bench (int argc, char **argv)
{
  g_autofree char *arch_text = NULL;
  g_autofree char *batch_text = NULL;
  g_autofree char *threads_text = NULL;
  g_autofree char *device = NULL;
  g_autofree char *precision_text = NULL;
  g_autofree char *bundle = NULL;
  g_autofree char *data_dir = NULL;
  gboolean json = FALSE, describe = FALSE, train = FALSE;
  int warmup = 3, runs = 10;
  const GOptionEntry entries[] = {
    { "model", 'm', 0, G_OPTION_ARG_STRING, &arch_text, "s or m (default s)", "s|m" },
    { "batch", 'b', 0, G_OPTION_ARG_STRING, &batch_text, "Batch sizes, e.g. 1,8 (default 1)", "N[,N...]" },
    { "threads", 't', 0, G_OPTION_ARG_STRING, &threads_text,
      "Thread counts, e.g. 1,2 (default: all cores)", "T[,T...]" },
    { "device", 0, 0, G_OPTION_ARG_STRING, &device, "cpu or cuda (default cpu)", "DEVICE" },
    { "precision", 0, 0, G_OPTION_ARG_STRING, &precision_text,
      "fp32, bf16 or auto, or a list such as fp32,bf16 (default fp32)", "P[,P...]" },
    { "bundle", 0, 0, G_OPTION_ARG_FILENAME, &bundle,
      "Time this model instead of random networks", "BUNDLE" },
    { "warmup", 0, 0, G_OPTION_ARG_INT, &warmup, "Untimed runs first (default 3)", "N" },
    { "runs", 0, 0, G_OPTION_ARG_INT, &runs, "Timed runs (default 10)", "N" },
    { "train", 0, 0, G_OPTION_ARG_NONE, &train,
      "Time training steps instead of inference (batch 1, the spec's training step)", NULL },
    { "data", 0, 0, G_OPTION_ARG_FILENAME, &data_dir,
      "Training images for --train (default: synthetic)", "DIR" },
    { "describe", 0, 0, G_OPTION_ARG_NONE, &describe,
      "Also print the implementation the backend chose for each layer", NULL },
    { "json", 0, 0, G_OPTION_ARG_NONE, &json, "One JSON object per configuration and line", NULL },
    G_OPTION_ENTRY_NULL
  };
  g_autoptr (GError) error = NULL;
  g_autoptr (GArray) batches = g_array_new (FALSE, FALSE, sizeof (int));
  g_autoptr (GArray) thread_counts = g_array_new (FALSE, FALSE, sizeof (int));
  g_autoptr (GArray) precisions = g_array_new (FALSE, FALSE, sizeof (EadPrecision));
  BenchConfig config = { 0 };
  int exit_code, n_configs;

  if (!ead_cli_parse ("bench", "",
                      "Time the whole inference pipeline (networks, maps, normalisation,\n"
                      "pad, resize to 256x256, score) on random inputs after a warm-up.",
                      entries, &argc, &argv, &exit_code))
    return exit_code;
  if (arch_text == NULL)
    arch_text = g_strdup ("s");
  if (!ead_arch_parse (arch_text, &config.arch, &error)
      || !parse_int_list (batch_text ? batch_text : "1", "--batch", 1, 256, batches, &error)
      || (threads_text != NULL
          && !parse_int_list (threads_text, "--threads", 1, 1024, thread_counts, &error))
      || !parse_precision_list (precision_text ? precision_text : "fp32", precisions, &error))
    {
      ead_cli_error ("bench", "%s", error->message);
      return EAD_EXIT_USAGE;
    }
  if (warmup < 0 || runs < 1)
    {
      ead_cli_error ("bench", "--warmup must be 0 or more and --runs 1 or more");
      return EAD_EXIT_USAGE;
    }
  if (thread_counts->len == 0)
    g_array_append_val (thread_counts, (int) { g_get_num_processors () });
  config.device = device ? device : "cpu";
  config.train = train;
  config.data_dir = data_dir;
  if (train && batches->len == 1 && g_array_index (batches, int, 0) != 1)
    {
      ead_cli_error ("bench", "--train times single-image steps (the paper's batch size 1)");
      return EAD_EXIT_USAGE;
    }
  config.bundle = bundle;
  config.warmup = warmup;
  config.runs = runs;
  n_configs = batches->len * thread_counts->len * precisions->len;

  if (!json)
    printf ("%-6s %6s %8s %-7s %-9s %10s %10s %10s %10s %8s %10s\n", "model", "batch",
            "threads", "device", "precision", "median_ms", "min_ms", "max_ms", "images/s", "GFLOP/s", "peak_MiB");
  for (guint b = 0; b < batches->len; b++)
    for (guint t = 0; t < thread_counts->len * precisions->len; t++)
      {
        g_autoptr (JsonNode) node = NULL;

        config.batch = g_array_index (batches, int, b);
        config.threads = g_array_index (thread_counts, int, t / precisions->len);
        config.precision = g_array_index (precisions, EadPrecision, t % precisions->len);
        if (n_configs > 1)
          {
            if (!run_child (&config, arch_text, &node, &error))
              break;
          }
        else
          {
            BenchResult result = { 0 };
            if (!(train ? run_train_config (&config, &result, &error)
                        : run_config (&config, &result, &error)))
              break;
            node = result_to_json (&config, &result);
            if (describe)
              fprintf (json ? stderr : stdout, "%s", result.implementations);
            g_free (result.implementations);
          }
        if (json)
          {
            g_autoptr (JsonGenerator) generator = json_generator_new ();
            g_autofree char *text = NULL;
            json_generator_set_root (generator, node);
            text = json_generator_to_data (generator, NULL);
            printf ("%s\n", text);
          }
        else
          print_row (json_node_get_object (node));
        fflush (stdout);
      }
  if (error != NULL)
    {
      ead_cli_error ("bench", "%s", error->message);
      return EAD_EXIT_FAILURE;
    }
  return EAD_EXIT_OK;
}
