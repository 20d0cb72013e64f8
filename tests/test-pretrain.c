/* test-pretrain.c: teacher distillation (ead-pretrain.h) is correct.
 *
 * - Ψ against a straightforward PyTorch implementation of spec §5 (F.unfold, F.interpolate,
 *   F.adaptive_avg_pool1d; fixtures/pretrain/aggregate.json, made by
 *   make-pretrain-fixtures.py) on generator features: Wide ResNet-101's channel counts,
 *   fewer than 1024 components, a resize by a factor that is not 2, a single level.
 * - One full distillation step against PyTorch (fixtures/pretrain/step.json): the tiny
 *   ResNet fixtures/pretrain/backbone.pth on a batch of 2 inputs of 128 x 128, Ψ of its
 *   layer2 and layer3 at 16 x 16, a PDN-small with padding at 64 x 64 (16 x 16 output): Ψ, the loss,
 *   every gradient and the weights after Adam.  In bf16 (where the CPU has it) the step
 *   must agree with the fp32 one as test-train's bf16 step does.
 * - A run cancelled at a step and resumed from its checkpoint writes the same teacher
 *   bundle, byte for byte, with the same loss history, as an uninterrupted run; a
 *   checkpoint of another run is refused; the result is the PDN's weights in a teacher
 *   without padding, with its metadata, and ead_bundle_read (ead train --teacher) takes it.
 * - Bad inputs: a missing backbone, a state_dict that is not a ResNet, an unknown layer,
 *   a missing or empty image folder, bad options; an undecodable image is replaced and
 *   listed by name, a folder of nothing but undecodable images fails naming one.
 *
 * The criterion against PyTorch is test-train's (see there): per tensor, sampled elements
 * within 1e-4 * max|t|, checksums within 1e-4 relative, and each Adam step w' - w within
 * 1e-3 lr plus two ulps of w.
 */
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <json-glib/json-glib.h>
#include <math.h>
#include <string.h>

#include "ead-test-util.h"
#include "ead-backbone.h"
#include "ead-backend.h"
#include "ead-bundle.h"
#include "ead-error.h"
#include "ead-image.h"
#include "ead-network.h"
#include "ead-pretrain.h"
#include "ead-safetensors.h"

#define THREADS 2
#define REL_TOL EAD_TEST_REL_TOL
#define SUM_TOL 1e-9
#define TINY_BACKBONE "pretrain/backbone.pth"
#define LEVELS_2_3 ((1u << 1) | (1u << 2))

/* ---- helpers ---- */

static float *
generator_values (guint64 seed, const char *name, size_t count, float low, float span)
{
  guint64 key = ead_random_key (seed, name);
  float *data = g_new (float, count);

  for (size_t i = 0; i < count; i++)
    data[i] = low + span * ead_random_uniform (key, i);
  return data;
}

/* The generator input of a fixture, as make-fixtures.py's random_input. */
static float *
fixture_input (JsonObject *root, const char *name, size_t count)
{
  return generator_values (json_object_get_int_member (root, "seed"), name, count,
                           (float) json_object_get_double_member (root, "input_low"),
                           (float) json_object_get_double_member (root, "input_span"));
}

static char *
make_temp_dir (void)
{
  g_autoptr (GError) error = NULL;
  char *dir = g_dir_make_tmp ("ead-test-pretrain-XXXXXX", &error);

  g_assert_no_error (error);
  return dir;
}

/* Noise images of the given sizes (they differ, so the crops do). */
static void
write_images (const char *dir, int count)
{
  for (int i = 0; i < count; i++)
    {
      g_autofree char *name = g_strdup_printf ("photo%02d.png", i);
      g_autofree char *path = g_build_filename (dir, name, NULL);
      int width = 40 + 23 * (i % 4), height = 90 - 17 * (i % 3);
      g_autoptr (EadImage) image = ead_image_new (width, height);
      guint64 key = ead_random_key (11, name);
      g_autoptr (GError) error = NULL;

      for (size_t k = 0; k < (size_t) width * height * 3; k++)
        image->rgb[k] = (guint8) (ead_random_uniform (key, k / 7) * 256.0f);
      g_assert_true (ead_image_save_png (image, path, &error));
      g_assert_no_error (error);
    }
}

static EadBackbone *
tiny_backbone (void)
{
  g_autofree char *path = ead_test_fixture_path (TINY_BACKBONE);
  g_autoptr (GError) error = NULL;
  EadBackbone *backbone = ead_backbone_load_torchvision (path, &error);

  g_assert_no_error (error);
  return backbone;
}

/* Small runs: PDN-small at 64 x 64 (16 x 16 output), the backbone at 128 x 128. */
static void
small_options (EadPretrainOptions *options, const char *images)
{
  ead_pretrain_options_init (options);
  options->input_height = options->input_width = 64;
  options->images_dir = images;
  options->batch = 2;
  options->threads = THREADS;
  options->checkpoint_every = 0;
}

/* ---------------------------------------------------------------------------------------
 * Ψ against PyTorch
 * --------------------------------------------------------------------------------------- */

static void
test_aggregate (void)
{
  g_autoptr (JsonParser) parser = ead_test_load_fixture ("pretrain/aggregate.json");
  JsonObject *root = ead_test_fixture_root (parser);
  JsonArray *cases = json_object_get_array_member (root, "cases");
  EadTestAgreement agreement = { 0 };

  g_assert_cmpstr (json_object_get_string_member (root, "format"), ==,
                   "ead-pretrain-aggregate-1");
  g_assert_cmpuint (json_array_get_length (cases), >=, 4);
  ead_backend_cpu ()->set_threads (ead_backend_cpu (), THREADS);
  for (guint k = 0; k < json_array_get_length (cases); k++)
    {
      JsonObject *one = json_array_get_object_element (cases, k);
      const char *name = json_object_get_string_member (one, "name");
      JsonArray *levels = json_object_get_array_member (one, "levels");
      JsonObject *record = json_object_get_object_member (one, "psi");
      JsonArray *shape = json_object_get_array_member (record, "shape");
      int n = json_array_get_length (levels);
      EadShape shapes[EAD_BACKBONE_LEVELS];
      float *features[EAD_BACKBONE_LEVELS] = { NULL };
      int out_c = json_array_get_int_element (shape, 0);
      int out_h = json_array_get_int_element (shape, 1);
      int out_w = json_array_get_int_element (shape, 2);
      g_autofree float *psi = g_new (float, (size_t) out_c * out_h * out_w);
      g_autoptr (EadPatchAggregator) aggregator = NULL;
      g_autoptr (GError) error = NULL;

      for (int l = 0; l < n; l++)
        {
          JsonObject *level = json_array_get_object_element (levels, l);
          g_autofree char *feature_name = g_strdup_printf ("pretrain.aggregate.%s.%d", name, l);

          shapes[l] = (EadShape) { json_object_get_int_member (level, "channels"),
                                   json_object_get_int_member (level, "height"),
                                   json_object_get_int_member (level, "width") };
          features[l] = fixture_input (root, feature_name,
                                       (size_t) shapes[l].c * shapes[l].h * shapes[l].w);
        }
      g_assert_cmpint (out_c, ==, EAD_TEACHER_CHANNELS);
      aggregator = ead_patch_aggregator_new (n, shapes, out_h, out_w, out_c, &error);
      g_assert_no_error (error);
      ead_patch_aggregator_run (aggregator, (const float *const *) features, psi);
      ead_test_check_record (record, psi, (size_t) out_c * out_h * out_w, name, &agreement);
      for (int l = 0; l < n; l++)
        g_free (features[l]);
    }
  g_test_message ("Psi vs PyTorch: worst sample %.3g of max|t| (%s), checksums %.3g",
                  agreement.worst_sample, agreement.worst_what, agreement.worst_sum);
  g_free (agreement.worst_what);

  /* what the aggregator refuses */
  {
    EadShape shape = { 8, 4, 4 };
    g_autoptr (GError) error = NULL;

    g_assert_null (ead_patch_aggregator_new (0, &shape, 4, 4, 384, &error));
    g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
    g_clear_error (&error);
    shape.c = 0;
    g_assert_null (ead_patch_aggregator_new (1, &shape, 4, 4, 384, &error));
    g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
  }
}

/* ---------------------------------------------------------------------------------------
 * One distillation step against PyTorch
 * --------------------------------------------------------------------------------------- */

/* The tensor "teacher.<layer>.<weight|bias>" of net. */
static float *
tensor_of (EadNet *net, const char *name, size_t *count)
{
  g_auto (GStrv) parts = g_strsplit (name, ".", -1);
  int layer;

  g_assert_cmpuint (g_strv_length (parts), ==, 3);
  g_assert_cmpstr (parts[0], ==, "teacher");
  layer = (int) g_ascii_strtoll (parts[1], NULL, 10);
  g_assert_cmpint (layer, >=, 0);
  g_assert_cmpint (layer, <, net->n_layers);
  g_assert_cmpint (net->layers[layer].kind, ==, EAD_LAYER_CONV);
  if (g_str_equal (parts[2], "weight"))
    {
      *count = ead_layer_weight_count (&net->layers[layer]);
      return net->weight[layer];
    }
  g_assert_cmpstr (parts[2], ==, "bias");
  *count = net->layers[layer].out_channels;
  return net->bias[layer];
}

typedef struct {
  char *images;
  EadBackbone *backbone;
  float *backbone_x, *pdn_x;
} StepFixture;

static EadPretrainer *
step_pretrainer (JsonObject *root, StepFixture *fixture, EadPrecision precision, GError **error)
{
  JsonArray *mean = json_object_get_array_member (root, "target_mean");
  JsonArray *std = json_object_get_array_member (root, "target_std");
  EadPretrainOptions options;
  EadPretrainer *pretrainer;
  EadNet *pdn, *grad;
  float *target_mean, *target_std;

  small_options (&options, fixture->images);
  options.batch = json_object_get_int_member (root, "batch");
  options.input_height = options.input_width = json_object_get_int_member (root, "pdn_size");
  options.seed = json_object_get_int_member (root, "seed");
  options.steps = 1;
  options.precision = precision;
  g_assert_cmpfloat (options.learning_rate, ==,
                     json_object_get_double_member (root, "learning_rate"));
  g_assert_cmpfloat (options.weight_decay, ==,
                     json_object_get_double_member (root, "weight_decay"));
  g_assert_cmpuint (options.levels, ==, LEVELS_2_3);
  pretrainer = ead_pretrainer_new (fixture->backbone, &options, error);
  if (pretrainer == NULL)
    return NULL;
  ead_pretrainer_get_state (pretrainer, &pdn, &grad, &target_mean, &target_std);
  g_assert_cmpuint (json_array_get_length (mean), ==, EAD_TEACHER_CHANNELS);
  for (int c = 0; c < EAD_TEACHER_CHANNELS; c++)
    {
      target_mean[c] = json_array_get_double_element (mean, c);
      target_std[c] = json_array_get_double_element (std, c);
    }
  return pretrainer;
}

static void
step_fixture_init (StepFixture *fixture, JsonObject *root)
{
  int batch = json_object_get_int_member (root, "batch");
  int backbone_size = json_object_get_int_member (root, "backbone_size");
  int pdn_size = json_object_get_int_member (root, "pdn_size");

  g_assert_cmpstr (json_object_get_string_member (root, "format"), ==, "ead-pretrain-step-1");
  g_assert_cmpstr (json_object_get_string_member (root, "arch"), ==, "s");
  g_assert_cmpstr (json_object_get_string_member (root, "backbone"), ==, TINY_BACKBONE);
  g_assert_cmpstr (json_object_get_string_member (root, "layers"), ==, "layer2,layer3");
  g_assert_cmpint (backbone_size, ==, 2 * pdn_size);
  fixture->images = make_temp_dir ();
  write_images (fixture->images, 1);
  fixture->backbone = tiny_backbone ();
  fixture->backbone_x = fixture_input (root, "pretrain.backbone_x",
                                       (size_t) batch * 3 * backbone_size * backbone_size);
  fixture->pdn_x = fixture_input (root, "pretrain.pdn_x", (size_t) batch * 3 * pdn_size * pdn_size);
}

static void
step_fixture_clear (StepFixture *fixture)
{
  ead_test_remove_tree (fixture->images);
  g_free (fixture->images);
  ead_backbone_free (fixture->backbone);
  g_free (fixture->backbone_x);
  g_free (fixture->pdn_x);
}

static void
test_step_parity (void)
{
  g_autoptr (JsonParser) parser = ead_test_load_fixture ("pretrain/step.json");
  JsonObject *root = ead_test_fixture_root (parser);
  JsonArray *tensors = json_object_get_array_member (root, "tensors");
  JsonArray *psi_records = json_object_get_array_member (root, "psi");
  double lr = json_object_get_double_member (root, "learning_rate");
  double loss_t = json_object_get_double_member (root, "loss");
  int pdn_size = json_object_get_int_member (root, "pdn_size");
  StepFixture fixture = { 0 };
  g_autoptr (GError) error = NULL;
  g_autoptr (EadPretrainer) pretrainer = NULL;
  g_autoptr (EadNet) before = NULL;
  EadTestAgreement psi_agreement = { 0 }, grads = { 0 }, weights = { 0 };
  EadNet *pdn, *grad;
  float *target_mean, *target_std;
  size_t backbone_count = (size_t) 3 * 4 * pdn_size * pdn_size;
  size_t psi_count;
  guint expected_tensors = 0;
  double loss, worst_step = 0.0;

  step_fixture_init (&fixture, root);
  pretrainer = step_pretrainer (root, &fixture, EAD_PRECISION_FP32, &error);
  g_assert_no_error (error);
  ead_pretrainer_get_state (pretrainer, &pdn, &grad, &target_mean, &target_std);
  g_assert_true (pdn->padding);

  /* the initial weights are PyTorch's */
  for (int i = 0; i < pdn->n_layers; i++)
    expected_tensors += pdn->layers[i].kind == EAD_LAYER_CONV ? 2 : 0;
  g_assert_cmpuint (json_array_get_length (tensors), ==, expected_tensors);
  for (guint k = 0; k < json_array_get_length (tensors); k++)
    {
      JsonObject *tensor = json_array_get_object_element (tensors, k);
      size_t count;
      const float *values = tensor_of (pdn, json_object_get_string_member (tensor, "name"), &count);
      double sum = 0.0;

      for (size_t i = 0; i < count; i++)
        sum += values[i];
      g_assert_cmpfloat_with_epsilon (sum, json_object_get_double_member (tensor, "initial_sum"),
                                      SUM_TOL * count);
    }

  /* Ψ of each backbone input */
  psi_count = (size_t) EAD_TEACHER_CHANNELS * (pdn_size / 4) * (pdn_size / 4);
  for (guint b = 0; b < json_array_get_length (psi_records); b++)
    {
      JsonObject *record = json_array_get_object_element (psi_records, b);
      JsonArray *shape = json_object_get_array_member (record, "shape");
      g_autofree float *psi = g_new (float, psi_count);
      g_autofree char *what = g_strdup_printf ("Psi of image %u", b);

      g_assert_cmpint (json_array_get_int_element (shape, 1) * json_array_get_int_element (shape, 2)
                       * EAD_TEACHER_CHANNELS, ==, (gint64) psi_count);
      g_assert_true (ead_pretrainer_target (pretrainer, fixture.backbone_x + b * backbone_count,
                                            psi, &error));
      g_assert_no_error (error);
      ead_test_check_record (record, psi, psi_count, what, &psi_agreement);
    }

  /* the loss and the gradients */
  g_assert_true (ead_pretrainer_step_inputs (pretrainer, fixture.backbone_x, fixture.pdn_x, FALSE,
                                             &loss, &error));
  g_assert_no_error (error);
  g_test_message ("loss %.9g, PyTorch %.9g (%.3g relative)", loss, loss_t,
                  fabs (loss - loss_t) / loss_t);
  if (!(fabs (loss - loss_t) <= REL_TOL * loss_t))
    g_test_fail_printf ("loss %.9g, PyTorch %.9g", loss, loss_t);
  for (guint k = 0; k < json_array_get_length (tensors); k++)
    {
      JsonObject *tensor = json_array_get_object_element (tensors, k);
      const char *name = json_object_get_string_member (tensor, "name");
      g_autofree char *what = g_strdup_printf ("gradient of %s", name);
      size_t count;
      const float *g = tensor_of (grad, name, &count);

      ead_test_check_record (json_object_get_object_member (tensor, "grad"), g, count, what, &grads);
    }

  /* the same step again, now with the Adam update */
  before = ead_net_copy (pdn);
  ead_net_zero (grad);
  g_assert_true (ead_pretrainer_step_inputs (pretrainer, fixture.backbone_x, fixture.pdn_x, TRUE,
                                             &loss, &error));
  g_assert_no_error (error);
  for (guint k = 0; k < json_array_get_length (tensors); k++)
    {
      JsonObject *tensor = json_array_get_object_element (tensors, k);
      JsonObject *updated = json_object_get_object_member (tensor, "updated");
      const char *name = json_object_get_string_member (tensor, "name");
      g_autofree char *what = g_strdup_printf ("updated %s", name);
      size_t count, count_before;
      const float *after = tensor_of (pdn, name, &count);
      const float *was = tensor_of (before, name, &count_before);

      g_assert_cmpuint (count, ==, count_before);
      ead_test_check_record (updated, after, count, what, &weights);
      worst_step = MAX (worst_step, ead_test_check_steps (updated, was, after, lr, what));
    }
  g_test_message ("distillation step vs PyTorch: Psi %.3g of max|t|, checksums %.3g; loss %.3g "
                  "relative; gradients %.3g of max|t| (%s), checksums %.3g; weights %.3g of "
                  "max|t|, checksums %.3g; steps %.3g lr",
                  psi_agreement.worst_sample, psi_agreement.worst_sum,
                  fabs (loss - loss_t) / loss_t, grads.worst_sample, grads.worst_what,
                  grads.worst_sum, weights.worst_sample, weights.worst_sum, worst_step);
  g_free (psi_agreement.worst_what);
  g_free (grads.worst_what);
  g_free (weights.worst_what);
  step_fixture_clear (&fixture);
}

/* The step in bf16 (mixed precision) against the same step in fp32: test-train's bf16
 * criterion (loss within 2 %, every gradient tensor with cosine >= 0.97, norm within 5 %). */
static void
test_step_bf16 (void)
{
  g_autoptr (JsonParser) parser = ead_test_load_fixture ("pretrain/step.json");
  JsonObject *root = ead_test_fixture_root (parser);
  StepFixture fixture = { 0 };
  g_autoptr (GError) error = NULL;
  g_autoptr (EadPretrainer) fp32 = NULL;
  g_autoptr (EadPretrainer) bf16 = NULL;
  EadNet *pdn, *grad_fp32, *grad_bf16;
  float *mean, *std;
  double loss_fp32, loss_bf16, worst_cosine = 1.0, worst_norm = 0.0;

  step_fixture_init (&fixture, root);
  bf16 = step_pretrainer (root, &fixture, EAD_PRECISION_BF16, &error);
  if (bf16 == NULL)
    {
      g_assert_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED);
      g_test_skip (error->message);
      g_assert_true (ead_backend_cpu ()->set_precision (ead_backend_cpu (), EAD_PRECISION_FP32,
                                                        NULL));
      step_fixture_clear (&fixture);
      return;
    }
  g_assert_cmpint (ead_pretrainer_get_precision (bf16), ==, EAD_PRECISION_BF16);
  g_assert_true (ead_pretrainer_step_inputs (bf16, fixture.backbone_x, fixture.pdn_x, FALSE,
                                             &loss_bf16, &error));
  g_assert_no_error (error);
  fp32 = step_pretrainer (root, &fixture, EAD_PRECISION_FP32, &error);
  g_assert_no_error (error);
  g_assert_true (ead_pretrainer_step_inputs (fp32, fixture.backbone_x, fixture.pdn_x, FALSE,
                                             &loss_fp32, &error));
  g_assert_no_error (error);
  ead_pretrainer_get_state (fp32, &pdn, &grad_fp32, &mean, &std);
  ead_pretrainer_get_state (bf16, &pdn, &grad_bf16, &mean, &std);
  g_test_message ("bf16 loss %.6g, fp32 %.6g", loss_bf16, loss_fp32);
  g_assert_cmpfloat (fabs (loss_bf16 / loss_fp32 - 1.0), <=, 0.02);
  for (int i = 0; i < pdn->n_layers; i++)
    if (pdn->layers[i].kind == EAD_LAYER_CONV)
      for (int part = 0; part < 2; part++)
        {
          size_t n = part == 0 ? ead_layer_weight_count (&pdn->layers[i])
                               : (size_t) pdn->layers[i].out_channels;
          const float *a = part == 0 ? grad_bf16->weight[i] : grad_bf16->bias[i];
          const float *b = part == 0 ? grad_fp32->weight[i] : grad_fp32->bias[i];
          double ab = 0, aa = 0, bb = 0;

          for (size_t k = 0; k < n; k++)
            {
              ab += (double) a[k] * b[k];
              aa += (double) a[k] * a[k];
              bb += (double) b[k] * b[k];
            }
          worst_cosine = MIN (worst_cosine, ab / sqrt (aa * bb));
          worst_norm = MAX (worst_norm, fabs (sqrt (aa / bb) - 1.0));
        }
  g_test_message ("bf16 gradients: worst cosine %.5f, worst norm %.3g relative", worst_cosine,
                  worst_norm);
  g_assert_cmpfloat (worst_cosine, >=, 0.97);
  g_assert_cmpfloat (worst_norm, <=, 0.05);
  step_fixture_clear (&fixture);
}

/* ---------------------------------------------------------------------------------------
 * Resume: bit-identical to an uninterrupted run
 * --------------------------------------------------------------------------------------- */

#define RESUME_IMAGES 5
#define RESUME_STEPS 5
#define RESUME_CANCEL_AT 3
#define RESUME_EVERY 2
#define RESUME_STATS 3

typedef struct {
  gint cancel;
  int cancel_at;        /* training step after which to cancel; 0: never */
  int first_step;       /* first training step reported */
  gboolean resumed;     /* as the first training report says */
  gboolean saw_statistics;
  double last_eta;
} Watch;

static void
watch_progress (const EadPretrainProgress *progress, gpointer user_data)
{
  Watch *watch = user_data;

  g_assert_cmpfloat (progress->elapsed_s, >=, 0.0);
  g_assert_cmpfloat (progress->eta_s, >=, 0.0);
  if (progress->phase == EAD_PRETRAIN_PHASE_STATISTICS)
    {
      g_assert_cmpint (progress->steps, ==, 2 * RESUME_STATS);
      watch->saw_statistics = TRUE;
      return;
    }
  g_assert_true (isfinite (progress->loss) && progress->loss > 0.0);
  if (watch->first_step == 0)
    {
      watch->first_step = progress->step;
      watch->resumed = progress->resumed;
    }
  watch->last_eta = progress->eta_s;
  if (progress->step == watch->cancel_at)
    g_atomic_int_set (&watch->cancel, 1);
}

static EadPretrainer *
resume_pretrainer (const EadBackbone *backbone, const char *images, guint64 seed,
                   const char *checkpoint, gboolean resume)
{
  g_autoptr (GError) error = NULL;
  EadPretrainOptions options;
  EadPretrainer *pretrainer;

  small_options (&options, images);
  options.steps = RESUME_STEPS;
  options.stats_images = RESUME_STATS;
  options.seed = seed;
  options.checkpoint_every = RESUME_EVERY;
  options.checkpoint_path = checkpoint;
  options.resume = resume;
  options.command = "ead teacher pretrain --test";
  pretrainer = ead_pretrainer_new (backbone, &options, &error);
  g_assert_no_error (error);
  return pretrainer;
}

static void
assert_same_net (const EadNet *a, const EadNet *b)
{
  g_assert_cmpint (a->n_layers, ==, b->n_layers);
  for (int i = 0; i < a->n_layers; i++)
    if (a->layers[i].kind == EAD_LAYER_CONV)
      {
        g_assert_true (memcmp (a->weight[i], b->weight[i],
                               ead_layer_weight_count (&a->layers[i]) * sizeof (float)) == 0);
        g_assert_true (memcmp (a->bias[i], b->bias[i],
                               a->layers[i].out_channels * sizeof (float)) == 0);
      }
}

static char *
write_bundle (const EadModel *model, const char *dir, const char *name)
{
  g_autoptr (GError) error = NULL;
  char *path = g_build_filename (dir, name, NULL);

  g_assert_true (ead_bundle_write (model, path, &error));
  g_assert_no_error (error);
  return path;
}

static void
test_resume (void)
{
  g_autofree char *dir = make_temp_dir ();
  g_autofree char *images = g_build_filename (dir, "photos", NULL);
  g_autofree char *nested = g_build_filename (images, "nested", NULL);
  g_autofree char *checkpoint = g_build_filename (dir, "teacher.checkpoint", NULL);
  g_autofree char *step = NULL;
  g_autoptr (EadBackbone) backbone = tiny_backbone ();
  g_autoptr (EadModel) model_a = NULL;
  g_autoptr (EadModel) model_b = NULL;
  g_autoptr (GError) error = NULL;
  g_autofree float *history_a = NULL;
  g_autofree char *path_a = NULL;
  g_autofree char *path_b = NULL;
  g_autofree char *bytes_a = NULL;
  g_autofree char *bytes_b = NULL;
  gsize size_a, size_b;
  const guint64 seed = 3;

  g_assert_cmpint (g_mkdir_with_parents (nested, 0755), ==, 0);
  write_images (images, RESUME_IMAGES - 2);
  write_images (nested, 2);  /* found recursively */

  /* A: uninterrupted */
  {
    g_autoptr (EadPretrainer) pretrainer = resume_pretrainer (backbone, images, seed, NULL, FALSE);
    Watch watch = { 0 };
    EadNet *pdn, *grad;
    float *mean, *std;
    int steps;
    const float *history;

    g_assert_cmpuint (ead_pretrainer_get_image_count (pretrainer), ==, RESUME_IMAGES);
    model_a = ead_pretrainer_run (pretrainer, watch_progress, &watch, &watch.cancel, &error);
    g_assert_no_error (error);
    g_assert_true (watch.saw_statistics);
    g_assert_cmpint (watch.first_step, ==, 1);
    g_assert_cmpfloat (watch.last_eta, ==, 0.0);

    /* the teacher is the PDN, padding off, with the same weights */
    ead_pretrainer_get_state (pretrainer, &pdn, &grad, &mean, &std);
    g_assert_true (pdn->padding);
    g_assert_false (model_a->teacher->padding);
    assert_same_net (model_a->teacher, pdn);
    for (int c = 0; c < EAD_TEACHER_CHANNELS; c++)
      {
        g_assert_cmpfloat (std[c], >, 0.0f);
        g_assert_cmpfloat (model_a->teacher_mean[c], ==, 0.0f);
        g_assert_cmpfloat (model_a->teacher_std[c], ==, 1.0f);
      }
    history = ead_pretrainer_get_history (pretrainer, &steps);
    g_assert_cmpint (steps, ==, RESUME_STEPS);
    history_a = g_memdup2 (history, steps * sizeof (float));
  }
  g_assert_cmpint (model_a->arch, ==, EAD_ARCH_SMALL);
  g_assert_cmpint (model_a->input_height, ==, EAD_MIN_INPUT_SIZE);
  path_a = write_bundle (model_a, dir, "a.ead.safetensors");
  {
    static const char *const expected[][2] = {
      { "ead.teacher.format", "ead-pretrain" },
      { "ead.pretrain.backbone", "backbone.pth" },
      { "ead.pretrain.layers", "layer2,layer3" },
      { "ead.pretrain.backbone_input", "128x128" },
      { "ead.pretrain.input", "64x64" },
      { "ead.pretrain.images.count", G_STRINGIFY (RESUME_IMAGES) },
      { "ead.pretrain.images.unreadable", "0" },
      { "ead.pretrain.stats_images", G_STRINGIFY (RESUME_STATS) },
      { "ead.pretrain.steps", G_STRINGIFY (RESUME_STEPS) },
      { "ead.pretrain.seed", "3" },
      { "ead.pretrain.batch", "2" },
      { "ead.pretrain.precision", "fp32" },
      { "ead.pretrain.command", "ead teacher pretrain --test" },
    };
    g_autofree char *digest = ead_net_digest (model_a->teacher);

    for (size_t i = 0; i < G_N_ELEMENTS (expected); i++)
      g_assert_cmpstr (g_hash_table_lookup (model_a->metadata, expected[i][0]), ==, expected[i][1]);
    g_assert_cmpstr (g_hash_table_lookup (model_a->metadata, "ead.teacher.sha256"), ==, digest);
    g_assert_cmpuint (strlen (g_hash_table_lookup (model_a->metadata,
                                                   "ead.pretrain.backbone.sha256")), ==, 64);
    g_assert_nonnull (g_hash_table_lookup (model_a->metadata, "ead.pretrain.loss.final"));
    g_assert_nonnull (g_hash_table_lookup (model_a->metadata, "ead.teacher.source"));
  }

  /* B: cancelled after step 3, which writes a checkpoint of step 3 ... */
  {
    g_autoptr (EadPretrainer) pretrainer = resume_pretrainer (backbone, images, seed, checkpoint,
                                                              FALSE);
    Watch watch = { .cancel_at = RESUME_CANCEL_AT };
    g_autoptr (EadModel) model = ead_pretrainer_run (pretrainer, watch_progress, &watch,
                                                     &watch.cancel, &error);

    g_assert_null (model);
    g_assert_error (error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
    g_clear_error (&error);
    g_assert_false (watch.resumed);
  }
  step = ead_test_checkpoint_step (checkpoint);
  g_assert_cmpstr (step, ==, G_STRINGIFY (RESUME_CANCEL_AT));
  /* ... then resumed from it to the end */
  {
    g_autoptr (EadPretrainer) pretrainer = resume_pretrainer (backbone, images, seed, checkpoint,
                                                              TRUE);
    Watch watch = { 0 };
    int steps;
    const float *history;

    model_b = ead_pretrainer_run (pretrainer, watch_progress, &watch, &watch.cancel, &error);
    g_assert_no_error (error);
    g_assert_false (watch.saw_statistics);  /* the target statistics come from the checkpoint */
    g_assert_cmpint (watch.first_step, ==, RESUME_CANCEL_AT + 1);
    g_assert_true (watch.resumed);
    history = ead_pretrainer_get_history (pretrainer, &steps);
    g_assert_cmpint (steps, ==, RESUME_STEPS);
    g_assert_true (memcmp (history, history_a, steps * sizeof (float)) == 0);
  }
  assert_same_net (model_a->teacher, model_b->teacher);
  path_b = write_bundle (model_b, dir, "b.ead.safetensors");
  g_assert_true (g_file_get_contents (path_a, &bytes_a, &size_a, &error));
  g_assert_true (g_file_get_contents (path_b, &bytes_b, &size_b, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (size_a, ==, size_b);
  g_assert_true (memcmp (bytes_a, bytes_b, size_a) == 0);

  /* what ead train --teacher reads */
  {
    g_autoptr (EadModel) teacher = ead_bundle_read (path_a, &error);

    g_assert_no_error (error);
    g_assert_cmpint (teacher->arch, ==, EAD_ARCH_SMALL);
    g_assert_false (teacher->teacher->padding);
    assert_same_net (teacher->teacher, model_a->teacher);
    g_assert_cmpstr (g_hash_table_lookup (teacher->metadata, "ead.pretrain.layers"), ==,
                     "layer2,layer3");
  }

  /* the checkpoint names its run: another seed is refused */
  {
    g_autoptr (EadPretrainer) pretrainer = resume_pretrainer (backbone, images, seed + 1,
                                                              checkpoint, TRUE);
    g_autoptr (EadModel) model = ead_pretrainer_run (pretrainer, NULL, NULL, NULL, &error);

    g_assert_null (model);
    g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
    g_test_message ("%s", error->message);
    g_assert_nonnull (strstr (error->message, checkpoint));
    g_assert_nonnull (strstr (error->message, "belongs to another run"));
  }
  ead_test_remove_tree (dir);
}

/* ---------------------------------------------------------------------------------------
 * Bad inputs
 * --------------------------------------------------------------------------------------- */

static void
assert_error_says (const GError *error, GQuark domain, int code, const char *needle)
{
  g_assert_nonnull (error);
  g_test_message ("%s", error->message);
  g_assert_error (error, domain, code);
  if (strstr (error->message, needle) == NULL)
    g_test_fail_printf ("the message \"%s\" does not say \"%s\"", error->message, needle);
}

static void
expect_new_error (const EadBackbone *backbone, const EadPretrainOptions *options, int code,
                  const char *needle)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadPretrainer) pretrainer = ead_pretrainer_new (backbone, options, &error);

  g_assert_null (pretrainer);
  assert_error_says (error, EAD_ERROR, code, needle);
}

static void
test_errors (void)
{
  g_autofree char *dir = make_temp_dir ();
  g_autofree char *empty = g_build_filename (dir, "empty", NULL);
  g_autofree char *missing = g_build_filename (dir, "missing", NULL);
  g_autofree char *broken_dir = g_build_filename (dir, "broken", NULL);
  g_autofree char *mixed = g_build_filename (dir, "mixed", NULL);
  g_autofree char *broken = g_build_filename (broken_dir, "broken.jpg", NULL);
  g_autofree char *mixed_broken = g_build_filename (mixed, "aa-broken.png", NULL);
  g_autofree char *missing_pth = g_build_filename (dir, "resnet.pth", NULL);
  g_autofree char *not_resnet = ead_test_fixture_path ("pth/tiny-s-nelson.pth");
  g_autoptr (EadBackbone) backbone = tiny_backbone ();
  g_autoptr (GError) error = NULL;
  EadPretrainOptions options;

  g_assert_cmpint (g_mkdir (empty, 0755), ==, 0);
  g_assert_cmpint (g_mkdir (broken_dir, 0755), ==, 0);
  g_assert_cmpint (g_mkdir (mixed, 0755), ==, 0);
  g_assert_true (g_file_set_contents (broken, "\xff\xd8\xff not a JPEG", -1, &error));
  g_assert_true (g_file_set_contents (mixed_broken, "\x89PNG\r\n\x1a\n not a PNG", -1, &error));
  g_assert_no_error (error);
  write_images (mixed, 1);

  /* the backbone */
  g_assert_null (ead_backbone_load_torchvision (missing_pth, &error));
  assert_error_says (error, EAD_ERROR, EAD_ERROR_IO, missing_pth);
  g_clear_error (&error);
  g_assert_null (ead_backbone_load_torchvision (not_resnet, &error));
  assert_error_says (error, EAD_ERROR, EAD_ERROR_FORMAT, "tiny-s-nelson.pth");
  g_clear_error (&error);
  g_assert_cmpuint (ead_backbone_parse_levels ("layer2,layer5", &error), ==, 0);
  assert_error_says (error, EAD_ERROR, EAD_ERROR_INVALID, "layer5");
  g_clear_error (&error);
  g_assert_cmpuint (ead_backbone_parse_levels ("layer3,layer2", &error), ==, LEVELS_2_3);
  g_assert_no_error (error);

  /* the images */
  small_options (&options, empty);
  expect_new_error (backbone, &options, EAD_ERROR_INVALID, "no images");
  options.images_dir = missing;
  expect_new_error (backbone, &options, EAD_ERROR_IO, missing);

  /* options */
  small_options (&options, mixed);
  options.levels = 0;
  expect_new_error (backbone, &options, EAD_ERROR_INVALID, "levels");
  small_options (&options, mixed);
  options.batch = 0;
  expect_new_error (backbone, &options, EAD_ERROR_INVALID, "batch 0");
  small_options (&options, mixed);
  options.input_height = 0;
  expect_new_error (backbone, &options, EAD_ERROR_INVALID, "a PDN input of 64x0");

  /* an undecodable image is replaced by the next one and listed; only those: an error */
  small_options (&options, mixed);
  options.steps = 1;
  options.stats_images = 1;
  {
    g_autoptr (EadPretrainer) pretrainer = ead_pretrainer_new (backbone, &options, &error);
    g_autoptr (EadModel) model = NULL;
    const GPtrArray *skipped;

    g_assert_no_error (error);
    g_assert_cmpuint (ead_pretrainer_get_image_count (pretrainer), ==, 2);
    model = ead_pretrainer_run (pretrainer, NULL, NULL, NULL, &error);
    g_assert_no_error (error);
    skipped = ead_pretrainer_get_skipped (pretrainer);
    g_assert_cmpuint (skipped->len, ==, 1);
    g_assert_true (g_str_has_prefix (skipped->pdata[0], mixed_broken));
    g_assert_cmpstr (g_hash_table_lookup (model->metadata, "ead.pretrain.images.unreadable"), ==,
                     "1");
  }
  options.images_dir = broken_dir;
  {
    g_autoptr (EadPretrainer) pretrainer = ead_pretrainer_new (backbone, &options, &error);
    g_autoptr (EadModel) model = NULL;

    g_assert_no_error (error);
    model = ead_pretrainer_run (pretrainer, NULL, NULL, NULL, &error);
    g_assert_null (model);
    assert_error_says (error, EAD_ERROR, EAD_ERROR_FORMAT, "broken.jpg");
  }
  ead_test_remove_tree (dir);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/pretrain/pytorch/aggregate", test_aggregate);
  g_test_add_func ("/pretrain/pytorch/step", test_step_parity);
  g_test_add_func ("/pretrain/bf16/step", test_step_bf16);
  g_test_add_func ("/pretrain/resume/bit-identical", test_resume);
  g_test_add_func ("/pretrain/errors", test_errors);
  return g_test_run ();
}
