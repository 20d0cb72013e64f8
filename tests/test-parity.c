/* test-parity.c: the engine against PyTorch (the "numeric parity" requirement).
 *
 * The fixtures in tests/fixtures come from make-fixtures.py, which rebuilds the weights of
 * ead_model_init_random() bit for bit in numpy, runs nelson1425's networks and the spec §4.1
 * pipeline in float32 PyTorch, and stores each tensor as its shape, float64 checksums and a
 * fixed sample of elements.  This program builds the same model, runs an EadDetector on the
 * CPU backend and compares.
 *
 * The criterion, "match within 1e-4 relative", per tensor t computed here as c:
 *   - samples: max |c - t| over the stored elements <= 1e-4 * max |t| over the whole tensor
 *     (an elementwise relative test would fail on values near zero, whose absolute error
 *     comes from the larger terms that cancelled);
 *   - sum of squares and sum of |x| within 1e-4 relative; the plain sum may be near zero,
 *     so its error is measured against the sum of |x|;
 *   - the image score within 1e-4 * max |t| of the final map.
 *
 * Fixtures are read from $EAD_TEST_FIXTURES, else from G_TEST_SRCDIR/fixtures.
 */
#include <glib.h>
#include <json-glib/json-glib.h>
#include <math.h>
#include <string.h>

#include "ead-test-util.h"
#include "ead-error.h"
#include "ead-backend.h"
#include "ead-detector.h"
#include "ead-model.h"
#include "ead-network.h"

#define REL_TOL EAD_TEST_REL_TOL
/* numpy sums the weight probes pairwise, this file in order: both are nearly exact */
#define PROBE_SUM_TOL 1e-9

static const char *const case_files[] = {
  "parity-s-256x256.json",
  "parity-s-256x320.json",
  "parity-m-256x256.json",
  "parity-m-256x320.json",
};

/* The case the batch test runs: the cheaper network on the non-square input. */
#define BATCH_CASE "parity-s-256x320.json"

/* Compares `data` (c x h x w) with a fixture tensor by the criterion at the top, reports
 * every violation and logs the errors. */
static void
check_tensor (JsonObject *record, const float *data, int c, int h, int w, const char *what)
{
  JsonArray *shape = json_object_get_array_member (record, "shape");

  g_assert_cmpint (json_array_get_length (shape), ==, 3);
  g_assert_cmpint (json_array_get_int_element (shape, 0), ==, c);
  g_assert_cmpint (json_array_get_int_element (shape, 1), ==, h);
  g_assert_cmpint (json_array_get_int_element (shape, 2), ==, w);
  ead_test_check_record (record, data, (size_t) c * h * w, what, NULL);
}

/* The weights of `name` ("student.3.weight") in the model. */
static const float *
model_tensor (EadModel *model, const char *name, size_t *count)
{
  g_auto (GStrv) parts = g_strsplit (name, ".", -1);
  EadNet *net = NULL;
  int layer;

  g_assert_cmpuint (g_strv_length (parts), ==, 3);
  if (g_str_equal (parts[0], "teacher"))
    net = model->teacher;
  else if (g_str_equal (parts[0], "student"))
    net = model->student;
  else if (g_str_equal (parts[0], "autoencoder"))
    net = model->autoencoder;
  g_assert_nonnull (net);
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

/* ead_model_init_random() must give exactly the weights PyTorch ran with: the first and
 * last values bit for bit, the sum to rounding.  Every conv tensor of the three networks
 * is listed, so this also checks the layer lists against nelson's nn.Sequential indices. */
static void
check_probes (JsonObject *root, EadModel *model)
{
  JsonArray *probes = json_object_get_array_member (root, "probes");
  guint expected = 0;

  for (guint i = 0; i < json_array_get_length (probes); i++)
    {
      JsonObject *probe = json_array_get_object_element (probes, i);
      const char *name = json_object_get_string_member (probe, "name");
      JsonArray *first = json_object_get_array_member (probe, "first");
      size_t count;
      const float *data = model_tensor (model, name, &count);
      double sum = 0.0;

      g_assert_cmpint (json_object_get_int_member (probe, "count"), ==, (gint64) count);
      for (guint k = 0; k < json_array_get_length (first); k++)
        g_assert_cmpfloat (data[k], ==, (float) json_array_get_double_element (first, k));
      g_assert_cmpfloat (data[count - 1], ==,
                         (float) json_object_get_double_member (probe, "last"));
      for (size_t k = 0; k < count; k++)
        sum += data[k];
      g_assert_cmpfloat_with_epsilon (sum, json_object_get_double_member (probe, "sum"),
                                      PROBE_SUM_TOL * count);
    }
  for (int n = 0; n < 3; n++)
    {
      const EadNet *net = n == 0 ? model->teacher : n == 1 ? model->student : model->autoencoder;
      for (int i = 0; i < net->n_layers; i++)
        expected += net->layers[i].kind == EAD_LAYER_CONV ? 2 : 0;
    }
  g_assert_cmpuint (json_array_get_length (probes), ==, expected);
}

/* A model like the one PyTorch ran: random weights, the fixture's normalisation. */
static EadModel *
model_from_fixture (JsonObject *root)
{
  JsonArray *mean = json_object_get_array_member (root, "teacher_mean");
  JsonArray *std = json_object_get_array_member (root, "teacher_std");
  JsonArray *q = json_object_get_array_member (root, "quantiles");
  g_autoptr (GError) error = NULL;
  EadArch arch;
  EadModel *model;

  g_assert_true (ead_arch_parse (json_object_get_string_member (root, "arch"), &arch, &error));
  g_assert_no_error (error);
  model = ead_model_new (arch);
  model->input_height = json_object_get_int_member (root, "input_height");
  model->input_width = json_object_get_int_member (root, "input_width");
  ead_model_init_random (model, json_object_get_int_member (root, "seed"));
  check_probes (root, model);

  g_assert_cmpuint (json_array_get_length (mean), ==, EAD_TEACHER_CHANNELS);
  g_assert_cmpuint (json_array_get_length (std), ==, EAD_TEACHER_CHANNELS);
  for (int c = 0; c < EAD_TEACHER_CHANNELS; c++)
    {
      model->teacher_mean[c] = json_array_get_double_element (mean, c);
      model->teacher_std[c] = json_array_get_double_element (std, c);
    }
  g_assert_cmpuint (json_array_get_length (q), ==, 4);
  model->q_st_a = json_array_get_double_element (q, 0);
  model->q_st_b = json_array_get_double_element (q, 1);
  model->q_ae_a = json_array_get_double_element (q, 2);
  model->q_ae_b = json_array_get_double_element (q, 3);
  return model;
}

static JsonObject *
image_record (JsonObject *root, guint image)
{
  JsonArray *images = json_object_get_array_member (root, "images");

  g_assert_cmpuint (image, <, json_array_get_length (images));
  return json_array_get_object_element (images, image);
}

static JsonObject *
tensor_record (JsonObject *image, const char *name)
{
  JsonObject *tensors = json_object_get_object_member (image, "tensors");

  g_assert_true (json_object_has_member (tensors, name));
  return json_object_get_object_member (tensors, name);
}

/* Compares the maps and the score of detector image `slot` with fixture image `image`,
 * and the network outputs too where the fixture has them. */
static void
check_image (EadDetector *detector, JsonObject *root, int slot, guint image, const char *label)
{
  JsonObject *record = image_record (root, image);
  JsonObject *full_record = tensor_record (record, "full");
  static const struct {
    const char *name;
    int channels;
  } outputs[] = {
    { "teacher", EAD_TEACHER_CHANNELS },
    { "student", 2 * EAD_TEACHER_CHANNELS },
    { "autoencoder", EAD_TEACHER_CHANNELS },
  };
  int mh, mw;
  int out_h = json_object_get_int_member (root, "output_height");
  int out_w = json_object_get_int_member (root, "output_width");
  g_autofree float *full = g_new (float, (size_t) out_h * out_w);
  double score, score_t, score_scale;

  ead_detector_get_map_size (detector, &mh, &mw);
  for (size_t k = 0; k < G_N_ELEMENTS (outputs); k++)
    if (json_object_has_member (json_object_get_object_member (record, "tensors"),
                                outputs[k].name))
      {
        g_autofree char *what = g_strdup_printf ("%s %s", label, outputs[k].name);
        check_tensor (tensor_record (record, outputs[k].name),
                      ead_detector_get_output (detector, outputs[k].name, slot),
                      outputs[k].channels, mh, mw, what);
      }
  {
    g_autofree char *st = g_strdup_printf ("%s map_st", label);
    g_autofree char *ae = g_strdup_printf ("%s map_ae", label);
    g_autofree char *map = g_strdup_printf ("%s map", label);
    g_autofree char *final = g_strdup_printf ("%s full %dx%d", label, out_h, out_w);

    check_tensor (tensor_record (record, "map_st"), ead_detector_get_map_st (detector, slot), 1,
                  mh, mw, st);
    check_tensor (tensor_record (record, "map_ae"), ead_detector_get_map_ae (detector, slot), 1,
                  mh, mw, ae);
    check_tensor (tensor_record (record, "map"), ead_detector_get_map (detector, slot), 1, mh,
                  mw, map);
    score = ead_detector_full_map (detector, slot, out_h, out_w, full);
    check_tensor (full_record, full, 1, out_h, out_w, final);
  }
  score_t = json_object_get_double_member (record, "score");
  score_scale = json_object_get_double_member (full_record, "maxabs");
  g_test_message ("%s score: %.9g, PyTorch %.9g (error %.3g of max|t|)", label, score, score_t,
                  fabs (score - score_t) / score_scale);
  if (!(fabs (score - score_t) <= REL_TOL * score_scale))
    g_test_fail_printf ("%s: score %.9g, PyTorch %.9g", label, score, score_t);
}

static float *
case_inputs (JsonObject *root, const guint *images, int n)
{
  size_t size = (size_t) 3 * json_object_get_int_member (root, "input_height")
                * json_object_get_int_member (root, "input_width");
  float *inputs = g_new (float, n * size);

  for (int b = 0; b < n; b++)
    {
      const char *name = json_object_get_string_member (image_record (root, images[b]), "input");
      g_autofree float *one = ead_test_fixture_input (root, name, size);
      memcpy (inputs + b * size, one, size * sizeof (float));
    }
  return inputs;
}

static EadDetector *
detector_for_precision (JsonObject *root, int max_batch, EadPrecision precision)
{
  g_autoptr (EadModel) model = model_from_fixture (root);
  EadDetectorOptions options = { .max_batch = max_batch, .threads = 2, .device = "cpu",
                                 .precision = precision };
  g_autoptr (GError) error = NULL;
  EadDetector *detector = ead_detector_new (model, &options, &error);
  int mh, mw, ih, iw;

  g_assert_no_error (error);
  g_assert_nonnull (detector);
  ead_detector_get_input_size (detector, &ih, &iw);
  g_assert_cmpint (ih, ==, json_object_get_int_member (root, "input_height"));
  g_assert_cmpint (iw, ==, json_object_get_int_member (root, "input_width"));
  /* the PDN output size for padding off: H/4 - 8 for these sizes (spec §1.2) */
  ead_detector_get_map_size (detector, &mh, &mw);
  g_assert_cmpint (mh, ==, ih / 4 - 8);
  g_assert_cmpint (mw, ==, iw / 4 - 8);
  return detector;
}

static EadDetector *
detector_for (JsonObject *root, int max_batch)
{
  return detector_for_precision (root, max_batch, EAD_PRECISION_FP32);
}

static void
test_case (gconstpointer data)
{
  const char *file = data;
  g_autoptr (JsonParser) parser = ead_test_load_fixture (file);
  JsonObject *root = ead_test_fixture_root (parser);
  g_autoptr (EadDetector) detector = detector_for (root, 1);
  g_autoptr (GError) error = NULL;

  g_assert_cmpstr (json_object_get_string_member (root, "format"), ==, "ead-parity-1");
  for (guint image = 0; image < 2; image++)
    {
      g_autofree float *input = case_inputs (root, &image, 1);
      g_autofree char *label = g_strdup_printf ("%s image %u", file, image);

      g_assert_true (ead_detector_run (detector, input, 1, &error));
      g_assert_no_error (error);
      check_image (detector, root, 0, image, label);
    }
}

/* A full batch runs the max_batch executables, a smaller one the single-image ones: the
 * three images of a batch of 3 must each match PyTorch and the single-image run. */
static void
test_batch (void)
{
  static const guint images[] = { 0, 1, 0 };
  g_autoptr (JsonParser) parser = ead_test_load_fixture (BATCH_CASE);
  JsonObject *root = ead_test_fixture_root (parser);
  g_autoptr (EadDetector) detector = detector_for (root, 3);
  g_autoptr (GError) error = NULL;
  g_autofree float *inputs = case_inputs (root, images, 3);
  size_t map_size, in_size;
  g_autofree float *batch_maps = NULL;
  int mh, mw, ih, iw;

  ead_detector_get_map_size (detector, &mh, &mw);
  ead_detector_get_input_size (detector, &ih, &iw);
  map_size = (size_t) mh * mw;
  in_size = (size_t) 3 * ih * iw;

  g_assert_true (ead_detector_run (detector, inputs, 3, &error));
  g_assert_no_error (error);
  batch_maps = g_new (float, 3 * map_size);
  for (int b = 0; b < 3; b++)
    {
      g_autofree char *label = g_strdup_printf ("batch of 3, image %d", b);
      check_image (detector, root, b, images[b], label);
      memcpy (batch_maps + b * map_size, ead_detector_get_map (detector, b),
              map_size * sizeof (float));
    }

  /* images 1 and 2 alone and as a batch of 2 (run image by image): the same maps */
  for (int n = 1; n <= 2; n++)
    {
      g_assert_true (ead_detector_run (detector, inputs + in_size, n, &error));
      g_assert_no_error (error);
      for (int b = 0; b < n; b++)
        {
          const float *single = ead_detector_get_map (detector, b);
          const float *batched = batch_maps + (b + 1) * map_size;
          float scale = 0.0f, worst = 0.0f;

          for (size_t p = 0; p < map_size; p++)
            {
              scale = MAX (scale, fabsf (batched[p]));
              worst = MAX (worst, fabsf (single[p] - batched[p]));
            }
          g_test_message ("run of %d, image %d vs batch of 3: map error %.3g of max|t|", n, b,
                          worst / scale);
          g_assert_cmpfloat (worst, <=, REL_TOL * scale);
        }
    }
}

/* bf16 keeps 8 significant bits, so each layer adds about 0.4 % relative rounding error;
 * through the four or five convolutions of a network and the squared differences of the
 * maps, the bf16 maps must stay within 3 % of the fp32 maps' largest value, correlate
 * with them at 0.999 or better, and give the image score within 3 %. */
#define BF16_MAP_TOL 0.03
#define BF16_MIN_CORRELATION 0.999

static double
correlation (const float *a, const float *b, size_t n)
{
  double ma = 0, mb = 0, sab = 0, saa = 0, sbb = 0;

  for (size_t i = 0; i < n; i++)
    {
      ma += a[i];
      mb += b[i];
    }
  ma /= n;
  mb /= n;
  for (size_t i = 0; i < n; i++)
    {
      sab += (a[i] - ma) * (b[i] - mb);
      saa += (a[i] - ma) * (a[i] - ma);
      sbb += (b[i] - mb) * (b[i] - mb);
    }
  return sab / sqrt (saa * sbb);
}

static void
compare_maps (const float *bf16, const float *fp32, size_t n, const char *what)
{
  float scale = 0.0f, worst = 0.0f;
  double r = correlation (bf16, fp32, n);

  for (size_t i = 0; i < n; i++)
    {
      scale = MAX (scale, fabsf (fp32[i]));
      worst = MAX (worst, fabsf (bf16[i] - fp32[i]));
    }
  g_test_message ("bf16 %s: max error %.3g of max|fp32|, correlation %.6f", what, worst / scale, r);
  g_assert_cmpfloat (worst, <=, BF16_MAP_TOL * scale);
  g_assert_cmpfloat (r, >=, BF16_MIN_CORRELATION);
}

/* The bf16 pipeline against the fp32 one on the same model and images, on CPUs with
 * native bf16 kernels (elsewhere bf16 is refused, which is checked too). */
static void
test_bf16 (gconstpointer data)
{
  const char *file = data;
  g_autoptr (JsonParser) parser = ead_test_load_fixture (file);
  JsonObject *root = ead_test_fixture_root (parser);
  g_autoptr (EadDetector) fp32 = detector_for (root, 1);
  g_autoptr (EadDetector) bf16 = NULL;
  g_autoptr (GError) error = NULL;
  g_autoptr (EadModel) model = model_from_fixture (root);
  EadDetectorOptions options = { .max_batch = 1, .threads = 2, .precision = EAD_PRECISION_BF16 };
  int mh, mw;
  size_t hw;

  bf16 = ead_detector_new (model, &options, &error);
  if (bf16 == NULL)
    {
      g_assert_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED);
      g_assert_nonnull (strstr (error->message, "bf16"));
      g_test_skip ("this CPU has no native bf16 kernels (bf16 was refused, as it should be)");
      return;
    }
  g_assert_cmpint (ead_detector_get_precision (bf16), ==, EAD_PRECISION_BF16);
  {
    g_autofree char *described = ead_detector_describe (bf16);
    g_assert_nonnull (strstr (described, "precision bf16"));
    g_assert_nonnull (strstr (described, "bf16"));
  }
  ead_detector_get_map_size (fp32, &mh, &mw);
  hw = (size_t) mh * mw;
  for (guint image = 0; image < 2; image++)
    {
      g_autofree float *input = case_inputs (root, &image, 1);
      g_autofree char *st = g_strdup_printf ("%s image %u map_st", file, image);
      g_autofree char *ae = g_strdup_printf ("%s image %u map_ae", file, image);
      g_autofree char *map = g_strdup_printf ("%s image %u map", file, image);
      g_autofree float *full32 = g_new (float, 256 * 256);
      g_autofree float *full16 = g_new (float, 256 * 256);
      float score32, score16;

      g_assert_true (ead_detector_run (fp32, input, 1, &error));
      g_assert_true (ead_detector_run (bf16, input, 1, &error));
      g_assert_no_error (error);
      compare_maps (ead_detector_get_map_st (bf16, 0), ead_detector_get_map_st (fp32, 0), hw, st);
      compare_maps (ead_detector_get_map_ae (bf16, 0), ead_detector_get_map_ae (fp32, 0), hw, ae);
      compare_maps (ead_detector_get_map (bf16, 0), ead_detector_get_map (fp32, 0), hw, map);
      score32 = ead_detector_full_map (fp32, 0, 256, 256, full32);
      score16 = ead_detector_full_map (bf16, 0, 256, 256, full16);
      g_test_message ("bf16 score %.6g, fp32 %.6g", score16, score32);
      g_assert_cmpfloat (fabsf (score16 - score32), <=, BF16_MAP_TOL * fabsf (score32));
    }
}

/* resize_bilinear of the CPU backend against F.interpolate(align_corners=False). */
static void
test_bilinear (void)
{
  g_autoptr (JsonParser) parser = ead_test_load_fixture ("bilinear.json");
  JsonObject *root = ead_test_fixture_root (parser);
  JsonArray *cases = json_object_get_array_member (root, "cases");
  EadBackend *cpu = ead_backend_cpu ();

  g_assert_cmpstr (json_object_get_string_member (root, "format"), ==, "ead-bilinear-1");
  g_assert_cmpuint (json_array_get_length (cases), >=, 5);
  cpu->set_threads (cpu, 2);
  for (guint k = 0; k < json_array_get_length (cases); k++)
    {
      JsonObject *c = json_array_get_object_element (cases, k);
      int planes = json_object_get_int_member (c, "planes");
      int ih = json_object_get_int_member (c, "in_height");
      int iw = json_object_get_int_member (c, "in_width");
      int oh = json_object_get_int_member (c, "out_height");
      int ow = json_object_get_int_member (c, "out_width");
      g_autofree float *in = ead_test_fixture_input (root, json_object_get_string_member (c, "input"),
                                         (size_t) planes * ih * iw);
      g_autofree float *out = g_new (float, (size_t) planes * oh * ow);
      g_autofree char *what = g_strdup_printf ("bilinear %d x %dx%d -> %dx%d", planes, ih, iw,
                                               oh, ow);

      cpu->resize_bilinear (in, planes, ih, iw, out, oh, ow);
      check_tensor (json_object_get_object_member (c, "output"), out, planes, oh, ow, what);
    }
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);

  g_test_add_func ("/parity/bilinear", test_bilinear);
  for (size_t i = 0; i < G_N_ELEMENTS (case_files); i++)
    {
      g_autofree char *path = g_strdup_printf ("/parity/pipeline/%s", case_files[i]);
      *strrchr (path, '.') = '\0';
      g_test_add_data_func (path, case_files[i], test_case);
    }
  g_test_add_func ("/parity/batch", test_batch);
  g_test_add_data_func ("/parity/bf16/s", "parity-s-256x256.json", test_bf16);
  g_test_add_data_func ("/parity/bf16/m", "parity-m-256x320.json", test_bf16);
  return g_test_run ();
}
