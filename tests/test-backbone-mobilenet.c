/* test-backbone-mobilenet.c: graph backbones from safetensors (ead-backbone.h).
 *
 *   - parity with TensorFlow.js on the committed tiny graph of tests/fixtures/backbone-graph
 *     (made by tests/fixtures/make-graph-backbone-fixture.mjs: 'same' padding at stride 2
 *     on even and odd sizes, explicit padding, depthwise with multiplier 2, grouped, ReLU6
 *     and ReLU, a residual read twice): every level within max |c - t| <= 1e-4 * max |t|;
 *   - the same for MobileNetV2 converted from nsfwjs by tools/convert-mobilenet, when
 *     EAD_TEST_MOBILENET names the converted file; its reference (reference.mjs) is
 *     EAD_TEST_MOBILENET_REFERENCE, else the file name with "-reference" before the suffix;
 *   - ead_backbone_load dispatching on the suffix, levels by either spelling, and the
 *     refusal of a level the graph does not name.
 */
#include <math.h>
#include <string.h>

#include "ead-test-util.h"
#include "ead-backbone.h"
#include "ead-error.h"
#include "ead-safetensors.h"

#define REL_TOL 1e-4

static float *
read_reference (EadSafetensors *file, const char *name, int *n_dims, gint64 *shape)
{
  const EadSafetensorsTensor *tensor = ead_safetensors_lookup (file, name);
  g_autoptr (GError) error = NULL;
  float *data;

  if (tensor == NULL)
    return NULL;
  *n_dims = tensor->n_dims;
  memcpy (shape, tensor->shape, tensor->n_dims * sizeof *shape);
  data = g_new (float, tensor->n_elements);
  g_assert_true (ead_safetensors_read (file, name, tensor->n_dims, shape, data, &error));
  g_assert_no_error (error);
  return data;
}

/* Runs every image of the reference through the backbone and checks every level it has;
 * returns the worst relative error of each level. */
static void
check_parity (const char *model_path, const char *reference_path, double worst[4])
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadBackbone) backbone = ead_backbone_load (model_path, &error);
  g_autoptr (EadSafetensors) reference = NULL;
  guint levels = 0;

  g_assert_no_error (error);
  g_assert_cmpint (backbone->family, ==, EAD_BACKBONE_GRAPH);
  reference = ead_safetensors_open (reference_path, &error);
  g_assert_no_error (error);
  for (int l = 0; l < EAD_BACKBONE_LEVELS; l++)
    {
      worst[l] = -1;
      if (backbone->level_nodes[l] >= 0)
        levels |= 1u << l;
    }
  for (int image = 0;; image++)
    {
      g_autofree char *input_name = g_strdup_printf ("image%d.input", image);
      gint64 in_shape[4];
      int n_dims = 0;
      g_autofree float *input = read_reference (reference, input_name, &n_dims, in_shape);
      g_autoptr (EadBackboneExec) exec = NULL;
      float *outputs[EAD_BACKBONE_LEVELS] = { NULL };

      if (input == NULL)
        {
          g_assert_cmpint (image, >, 0);
          break;
        }
      g_assert_cmpint (n_dims, ==, 4);
      exec = ead_backbone_compile (backbone, levels, (int) in_shape[0], (int) in_shape[2],
                                   (int) in_shape[3], &error);
      g_assert_no_error (error);
      for (int i = 0; i < ead_backbone_exec_n_outputs (exec); i++)
        {
          EadShape shape = ead_backbone_exec_output_shape (exec, i);

          outputs[i] = g_new (float, in_shape[0] * shape.c * shape.h * shape.w);
        }
      g_assert_true (ead_backbone_forward (exec, input, outputs, &error));
      g_assert_no_error (error);
      for (int i = 0; i < ead_backbone_exec_n_outputs (exec); i++)
        {
          const int level = ead_backbone_exec_output_level (exec, i);
          const EadShape shape = ead_backbone_exec_output_shape (exec, i);
          g_autofree char *name = g_strdup_printf ("image%d.level%d", image, level);
          gint64 ref_shape[4];
          g_autofree float *expected = read_reference (reference, name, &n_dims, ref_shape);
          const size_t count = in_shape[0] * shape.c * shape.h * shape.w;
          double max_diff = 0, max_ref = 0, rel;

          g_assert_nonnull (expected);
          g_assert_cmpint (ref_shape[1], ==, shape.c);
          g_assert_cmpint (ref_shape[2], ==, shape.h);
          g_assert_cmpint (ref_shape[3], ==, shape.w);
          for (size_t k = 0; k < count; k++)
            {
              max_diff = MAX (max_diff, fabs ((double) outputs[i][k] - expected[k]));
              max_ref = MAX (max_ref, fabs ((double) expected[k]));
            }
          rel = max_diff / MAX (max_ref, 1e-30);
          g_test_message ("%s image %d level%d (%s, %d x %d x %d): max |diff| %.3g, "
                          "max |ref| %.3g, relative %.3g", model_path, image, level,
                          backbone->level_names[level - 1], shape.c, shape.h, shape.w,
                          max_diff, max_ref, rel);
          worst[level - 1] = MAX (worst[level - 1], rel);
          g_assert_cmpfloat (rel, <=, REL_TOL);
        }
      for (int i = 0; i < EAD_BACKBONE_LEVELS; i++)
        g_free (outputs[i]);
    }
}

static void
test_fixture_parity (void)
{
  g_autofree char *model = ead_test_fixture_path ("backbone-graph/tiny.safetensors");
  g_autofree char *reference = ead_test_fixture_path (
    "backbone-graph/tiny-reference.safetensors");
  double worst[4];

  check_parity (model, reference, worst);
  for (int l = 0; l < 3; l++)
    g_assert_cmpfloat (worst[l], >=, 0);
}

static void
test_fixture_levels (void)
{
  g_autofree char *model = ead_test_fixture_path ("backbone-graph/tiny.safetensors");
  g_autoptr (GError) error = NULL;
  g_autoptr (EadBackbone) backbone = ead_backbone_load (model, &error);
  g_autoptr (EadBackboneExec) exec = NULL;
  guint levels;

  g_assert_no_error (error);
  g_assert_cmpstr (backbone->level_names[0], ==, "proj");
  g_assert_null (backbone->level_names[3]);
  /* no "mean"/"std" in the fixture's "input": plain RGB / 255 */
  for (int c = 0; c < 3; c++)
    {
      g_assert_cmpfloat (backbone->input_mean[c], ==, 0.0f);
      g_assert_cmpfloat (backbone->input_std[c], ==, 1.0f);
    }
  levels = ead_backbone_parse_levels ("level2, layer3", &error);
  g_assert_no_error (error);
  g_assert_cmpuint (levels, ==, 0x6);
  exec = ead_backbone_compile (backbone, 0x8, 1, 16, 20, &error);
  g_assert_null (exec);
  g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
  g_assert_nonnull (strstr (error->message, "level4"));
  g_assert_nonnull (strstr (error->message, model));
}

static void
test_mobilenet_parity (void)
{
  const char *model = g_getenv ("EAD_TEST_MOBILENET");
  g_autofree char *reference = NULL;
  double worst[4];

  if (model == NULL || !g_file_test (model, G_FILE_TEST_EXISTS))
    {
      g_test_skip ("EAD_TEST_MOBILENET does not name a converted MobileNetV2 "
                   "(tools/convert-mobilenet/convert.mjs)");
      return;
    }
  reference = g_strdup (g_getenv ("EAD_TEST_MOBILENET_REFERENCE"));
  if (reference == NULL && g_str_has_suffix (model, ".safetensors"))
    reference = g_strdup_printf ("%.*s-reference.safetensors",
                                 (int) (strlen (model) - strlen (".safetensors")), model);
  g_assert_nonnull (reference);
  check_parity (model, reference, worst);
  for (int l = 0; l < EAD_BACKBONE_LEVELS; l++)
    {
      g_assert_cmpfloat (worst[l], >=, 0);
      g_test_message ("MobileNetV2 level%d: worst relative error %.3g", l + 1, worst[l]);
    }
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/backbone-graph/fixture-parity", test_fixture_parity);
  g_test_add_func ("/backbone-graph/fixture-levels", test_fixture_levels);
  g_test_add_func ("/backbone-graph/mobilenet-parity", test_mobilenet_parity);
  return g_test_run ();
}
