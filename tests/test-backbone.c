/* test-backbone.c: torchvision ResNet backbones (ead-backbone.h).
 *
 *   - parity with PyTorch on the committed tiny ResNets of tests/fixtures/backbone (made
 *     by make-backbone-fixtures.py small: torchvision's BasicBlock and grouped Bottleneck,
 *     random batch norm statistics, a 2 x 3 x 45 x 37 input): every level within
 *     max |c - t| <= 1e-4 * max |t| (test-parity.c's criterion), and a subset of the levels
 *     compiled alone gives the same values bit for bit;
 *   - the same on torchvision's own models with random weights, made at test time when
 *     /usr/bin/python3 has torch: resnet18 and a Bottleneck ResNet of Wide ResNet widths
 *     (blocks 1-1-1-1, width_per_group 128), 2 x 3 x 64 x 80.  EAD_TEST_BACKBONES (names
 *     for make-backbone-fixtures.py torchvision), EAD_TEST_BACKBONE_SIZE (HxW) and
 *     EAD_TEST_BACKBONE_BATCH choose others, e.g. wide_resnet101_2 at 512x512;
 *   - levels: parsing, and arguments compile refuses;
 *   - refusals: a state_dict that is not a ResNet, a missing key, a wrong shape, an
 *     unexpected key, a missing downsample, a negative variance, a value that is not
 *     finite: EAD_ERROR_FORMAT with a message naming the file and the key.
 */
#include <math.h>
#include <string.h>


#include "ead-test-util.h"
#include "ead-backbone.h"
#include "ead-backend.h"
#include "ead-error.h"
#include "ead-torch-checkpoint.h"

#define REL_TOL 1e-4
#define ALL_LEVELS 0xf
#define SUBSET_LEVELS 0x6  /* layer2,layer3: the levels of spec §5 */

/* ---- helpers ---- */

/* A shape [n, c, h, w] of the manifest. */
static void
read_shape (JsonObject *object, int shape[4])
{
  JsonArray *array = json_object_get_array_member (object, "shape");

  g_assert_cmpuint (json_array_get_length (array), ==, 4);
  for (int d = 0; d < 4; d++)
    shape[d] = json_array_get_int_element (array, d);
}

static size_t
shape_count (const int shape[4])
{
  return (size_t) shape[0] * shape[1] * shape[2] * shape[3];
}

/* Runs the executable and returns its outputs (free each and the array with g_free). */
static float **
run (EadBackboneExec *exec, int batch, const float *input)
{
  const int n = ead_backbone_exec_n_outputs (exec);
  float **out = g_new0 (float *, n);
  g_autoptr (GError) error = NULL;

  for (int i = 0; i < n; i++)
    {
      EadShape shape = ead_backbone_exec_output_shape (exec, i);

      out[i] = g_new (float, (size_t) batch * shape.c * shape.h * shape.w);
    }
  g_assert_true (ead_backbone_forward (exec, input, out, &error));
  g_assert_no_error (error);
  return out;
}

static void
free_outputs (float **out, int n)
{
  for (int i = 0; i < n; i++)
    g_free (out[i]);
  g_free (out);
}

/* ---- parity ---- */

/* Loads, compiles and runs one model of dir's manifest; returns the worst relative error
 * of its levels. */
static double
check_model (const char *dir, JsonObject *model, const int in_shape[4], const float *input)
{
  const char *name = json_object_get_string_member (model, "name");
  g_autofree char *path = g_build_filename (dir, json_object_get_string_member (model, "file"),
                                            NULL);
  JsonArray *levels = json_object_get_array_member (model, "levels");
  const int batch = in_shape[0], height = in_shape[2], width = in_shape[3];
  g_autoptr (GError) error = NULL;
  g_autoptr (EadBackbone) backbone = NULL;
  g_autoptr (EadBackboneExec) exec = NULL;
  g_autoptr (EadBackboneExec) subset = NULL;
  g_autofree char *description = NULL;
  float **got, **got_subset;
  gint64 start = g_get_monotonic_time ();
  double load_s, compile_s, forward_s, worst = 0.0;

  backbone = ead_backbone_load_torchvision (path, &error);
  g_assert_no_error (error);
  load_s = (g_get_monotonic_time () - start) / 1e6;
  g_assert_cmpstr (backbone->arch, ==, json_object_get_string_member (model, "arch"));
  /* torchvision's weights take ImageNet-normalised images */
  g_assert_cmpfloat (backbone->input_mean[0], ==, 0.485f);
  g_assert_cmpfloat (backbone->input_std[2], ==, 0.225f);

  start = g_get_monotonic_time ();
  exec = ead_backbone_compile (backbone, ALL_LEVELS, batch, height, width, &error);
  g_assert_no_error (error);
  compile_s = (g_get_monotonic_time () - start) / 1e6;
  g_assert_cmpint (ead_backbone_exec_n_outputs (exec), ==, json_array_get_length (levels));
  description = ead_backbone_exec_describe (exec);
  g_test_message ("%s (%s), %d convolutions:\n%s", name, backbone->arch, backbone->n_convs,
                  description);
  start = g_get_monotonic_time ();
  got = run (exec, batch, input);
  forward_s = (g_get_monotonic_time () - start) / 1e6;

  for (guint i = 0; i < json_array_get_length (levels); i++)
    {
      JsonObject *level = json_array_get_object_element (levels, i);
      EadShape shape = ead_backbone_exec_output_shape (exec, i);
      g_autofree float *expected = NULL;
      int want[4];
      size_t count;
      double diff = 0.0, scale = 0.0;

      read_shape (level, want);
      g_assert_cmpint (ead_backbone_exec_output_level (exec, i), ==,
                       json_object_get_int_member (level, "level"));
      g_assert_cmpint (shape.c, ==, want[1]);
      g_assert_cmpint (shape.h, ==, want[2]);
      g_assert_cmpint (shape.w, ==, want[3]);
      count = shape_count (want);
      expected = ead_test_read_floats (dir, json_object_get_string_member (level, "file"), count);
      for (size_t k = 0; k < count; k++)
        {
          diff = MAX (diff, fabs ((double) got[i][k] - expected[k]));
          scale = MAX (scale, fabs ((double) expected[k]));
        }
      g_assert_cmpfloat (scale, >, 0.0);
      g_test_message ("%s layer%d %dx%dx%d: max |diff| %.3g, max |t| %.3g, relative %.3g",
                      name, ead_backbone_exec_output_level (exec, i), shape.c, shape.h,
                      shape.w, diff, scale, diff / scale);
      if (!(diff <= REL_TOL * scale))
        g_test_fail_printf ("%s layer%d: max |diff| %.3g exceeds %.3g", name,
                            ead_backbone_exec_output_level (exec, i), diff, REL_TOL * scale);
      worst = MAX (worst, diff / scale);
    }
  g_test_message ("%s: load %.2f s, compile %.2f s, forward %.3f s", name, load_s, compile_s,
                  forward_s);

  /* layer2,layer3 alone: the same computation, stopped after layer3 */
  subset = ead_backbone_compile (backbone, SUBSET_LEVELS, batch, height, width, &error);
  g_assert_no_error (error);
  g_assert_cmpint (ead_backbone_exec_n_outputs (subset), ==, 2);
  got_subset = run (subset, batch, input);
  for (int i = 0; i < 2; i++)
    {
      EadShape shape = ead_backbone_exec_output_shape (subset, i);

      g_assert_cmpint (ead_backbone_exec_output_level (subset, i), ==, i + 2);
      g_assert_true (memcmp (got_subset[i], got[i + 1],
                             sizeof (float) * batch * shape.c * shape.h * shape.w) == 0);
    }
  free_outputs (got_subset, 2);
  free_outputs (got, ead_backbone_exec_n_outputs (exec));
  return worst;
}

/* Every model of dir/manifest.json. */
static void
check_manifest (const char *dir)
{
  g_autofree char *manifest = g_build_filename (dir, "manifest.json", NULL);
  g_autoptr (JsonParser) parser = json_parser_new ();
  g_autoptr (GError) error = NULL;
  g_autofree float *input = NULL;
  JsonObject *root, *in;
  JsonArray *models;
  int in_shape[4];
  double worst = 0.0;

  json_parser_load_from_file (parser, manifest, &error);
  g_assert_no_error (error);
  root = json_node_get_object (json_parser_get_root (parser));
  in = json_object_get_object_member (root, "input");
  read_shape (in, in_shape);
  g_assert_cmpint (in_shape[1], ==, 3);
  input = ead_test_read_floats (dir, json_object_get_string_member (in, "file"), shape_count (in_shape));
  ead_backend_cpu ()->set_threads (ead_backend_cpu (), 2);
  models = json_object_get_array_member (root, "models");
  g_assert_cmpuint (json_array_get_length (models), >, 0);
  for (guint i = 0; i < json_array_get_length (models); i++)
    {
      double relative = check_model (dir, json_array_get_object_element (models, i), in_shape,
                                     input);

      worst = MAX (worst, relative);
    }
  g_test_message ("backbone parity: worst relative error %.3g (allowed %g)", worst, REL_TOL);
}

static void
test_parity_tiny (void)
{
  g_autofree char *dir = ead_test_fixture_path ("backbone");

  check_manifest (dir);
}

static void
test_parity_torchvision (void)
{
  g_autofree char *script = ead_test_fixture_path ("make-backbone-fixtures.py");
  const char *models = g_getenv ("EAD_TEST_BACKBONES");
  const char *size = g_getenv ("EAD_TEST_BACKBONE_SIZE");
  const char *batch = g_getenv ("EAD_TEST_BACKBONE_BATCH");
  g_auto (GStrv) names = g_strsplit_set (models ? models : "resnet18 wide-1111", " ,", -1);
  g_autoptr (GPtrArray) argv = g_ptr_array_new ();
  g_autofree char *dir = NULL;
  g_autofree char *err = NULL;
  g_autoptr (GError) error = NULL;
  int status = 0;

  if (!ead_test_python_imports ("torch, torchvision"))
    {
      g_test_skip (EAD_TEST_PYTHON " with torch and torchvision is not available");
      return;
    }
  dir = g_dir_make_tmp ("test-backbone-XXXXXX", &error);
  g_assert_no_error (error);
  g_ptr_array_add (argv, EAD_TEST_PYTHON);
  g_ptr_array_add (argv, script);
  g_ptr_array_add (argv, "torchvision");
  g_ptr_array_add (argv, dir);
  g_ptr_array_add (argv, "--size");
  g_ptr_array_add (argv, (char *) (size ? size : "64x80"));
  g_ptr_array_add (argv, "--batch");
  g_ptr_array_add (argv, (char *) (batch ? batch : "2"));
  for (int i = 0; names[i] != NULL; i++)
    if (*names[i] != '\0')
      g_ptr_array_add (argv, names[i]);
  g_ptr_array_add (argv, NULL);
  g_assert_true (g_spawn_sync (NULL, (char **) argv->pdata, NULL, G_SPAWN_STDOUT_TO_DEV_NULL,
                               NULL, NULL, NULL, &err, &status, &error));
  g_assert_no_error (error);
  if (!g_spawn_check_wait_status (status, NULL))
    g_error ("%s failed:\n%s", script, err);
  check_manifest (dir);
  ead_test_remove_tree (dir);
}

/* ---- levels and arguments ---- */

static void
test_levels (void)
{
  static const struct {
    const char *text;
    guint levels;
  } cases[] = {
    { "layer2,layer3", 0x6 },
    { "layer1", 0x1 },
    { " layer4 , layer1 ", 0x9 },
    { "layer1,layer2,layer3,layer4", 0xf },
    { "", 0 },
    { "layer0", 0 },
    { "layer5", 0 },
    { "conv1", 0 },
    { "layer2,", 0 },
    { "layer2,layer2", 0 },
    { "layer+2", 0 },
  };

  for (size_t i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autoptr (GError) error = NULL;
      guint levels = ead_backbone_parse_levels (cases[i].text, &error);

      g_assert_cmpuint (levels, ==, cases[i].levels);
      if (cases[i].levels == 0)
        g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
      else
        g_assert_no_error (error);
    }
}

static void
test_compile_refusals (void)
{
  g_autofree char *path = ead_test_fixture_path ("backbone/tiny-basic.pth");
  g_autoptr (GError) error = NULL;
  g_autoptr (EadBackbone) backbone = ead_backbone_load_torchvision (path, &error);
  const struct {
    guint levels;
    int batch, height, width;
  } cases[] = {
    { 0, 1, 64, 64 },
    { 0x10, 1, 64, 64 },
    { 0x1, 0, 64, 64 },
    { 0x1, 1, 0, 64 },
    { 0x1, 1, 64, -3 },
  };

  g_assert_no_error (error);
  for (size_t i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autoptr (EadBackboneExec) exec = ead_backbone_compile (backbone, cases[i].levels,
                                                              cases[i].batch, cases[i].height,
                                                              cases[i].width, &error);

      g_assert_null (exec);
      ead_test_assert_error (error, EAD_ERROR_INVALID, (const char *[]) { "tiny-basic.pth", NULL });
      g_clear_error (&error);
    }
}

/* ---- refusals ---- */

static EadTorchTensor *
find_tensor (EadTorchCheckpoint *checkpoint, const char *name, guint *index)
{
  for (guint i = 0; i < checkpoint->tensors->len; i++)
    {
      EadTorchTensor *tensor = checkpoint->tensors->pdata[i];

      if (g_str_equal (tensor->name, name))
        {
          if (index != NULL)
            *index = i;
          return tensor;
        }
    }
  g_error ("no tensor '%s' in %s", name, checkpoint->path);
}

static void
remove_tensor (EadTorchCheckpoint *checkpoint, const char *name)
{
  guint index;

  find_tensor (checkpoint, name, &index);
  g_ptr_array_remove_index (checkpoint->tensors, index);
}

static void
rename_tensor (EadTorchCheckpoint *checkpoint, const char *name, const char *new_name)
{
  EadTorchTensor *tensor = find_tensor (checkpoint, name, NULL);

  g_free (tensor->name);
  tensor->name = g_strdup (new_name);
}

static void
break_missing_key (EadTorchCheckpoint *checkpoint)
{
  remove_tensor (checkpoint, "layer2.1.bn2.running_var");
}

static void
break_shape (EadTorchCheckpoint *checkpoint)
{
  EadTorchTensor *tensor = find_tensor (checkpoint, "layer3.0.conv2.weight", NULL);

  /* the data is not read once the shape is wrong */
  tensor->shape[2] = tensor->shape[3] = 5;
}

static void
break_unexpected_key (EadTorchCheckpoint *checkpoint)
{
  rename_tensor (checkpoint, "fc.bias", "layer1.0.extra.bias");
}

static void
break_classifier (EadTorchCheckpoint *checkpoint)
{
  find_tensor (checkpoint, "fc.weight", NULL)->shape[1] = 64;
}

static void
break_block_count (EadTorchCheckpoint *checkpoint)
{
  rename_tensor (checkpoint, "fc.bias", "layer4.3.conv1.weight");
}

static void
break_downsample (EadTorchCheckpoint *checkpoint)
{
  static const char *const keys[] = {
    "layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight",
    "layer2.0.downsample.1.bias", "layer2.0.downsample.1.running_mean",
    "layer2.0.downsample.1.running_var", "layer2.0.downsample.1.num_batches_tracked",
  };

  for (size_t i = 0; i < G_N_ELEMENTS (keys); i++)
    remove_tensor (checkpoint, keys[i]);
}

static void
break_variance (EadTorchCheckpoint *checkpoint)
{
  find_tensor (checkpoint, "layer1.0.bn2.running_var", NULL)->data[3] = -1.0f;
}

static void
break_finite (EadTorchCheckpoint *checkpoint)
{
  find_tensor (checkpoint, "layer2.0.conv1.weight", NULL)->data[7] = NAN;
}

static void
break_counter (EadTorchCheckpoint *checkpoint)
{
  EadTorchTensor *tensor = find_tensor (checkpoint, "bn1.num_batches_tracked", NULL);

  tensor->n_dims = 1;
  tensor->shape[0] = 1;
}

static void
test_refusals (void)
{
  /* mutations of tiny-bottleneck.pth: widths 8-16-32-64 in 2 groups, outputs 16-32-64-128 */
  static const struct {
    void (*mutate) (EadTorchCheckpoint *checkpoint);
    const char *needles[4];
  } cases[] = {
    { break_missing_key, { "the key 'layer2.1.bn2.running_var' is missing" } },
    { break_shape,
      { "'layer3.0.conv2.weight' has shape [32, 16, 5, 5], expected [32, 16, 3, 3]" } },
    { break_unexpected_key, { "unexpected key 'layer1.0.extra.bias' (shape [10])" } },
    { break_classifier, { "unexpected key 'fc.weight' (shape [10, 64])" } },
    { break_block_count, { "the key 'layer4.1.conv1.weight' is missing" } },
    { break_downsample,
      { "the key 'layer2.0.downsample.0.weight' is missing", "maps 16 channels to 32",
        "stride 2" } },
    { break_variance, { "'layer1.0.bn2.running_var' holds -1 at index 3", ">= 0" } },
    { break_finite,
      { "folding 'layer2.0.bn1' into 'layer2.0.conv1.weight'", "not finite",
        "output channel 0" } },
    { break_counter, { "'bn1.num_batches_tracked' has shape [1], expected []" } },
  };
  g_autofree char *path = ead_test_fixture_path ("backbone/tiny-bottleneck.pth");

  for (size_t i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (EadTorchCheckpoint) checkpoint = ead_torch_checkpoint_read (path, &error);
      g_autoptr (EadBackbone) backbone = NULL;

      g_assert_no_error (error);
      cases[i].mutate (checkpoint);
      backbone = ead_backbone_new_from_checkpoint (checkpoint, &error);
      g_test_message ("%s", error ? error->message : "(accepted)");
      g_assert_null (backbone);
      ead_test_assert_error (error, EAD_ERROR_FORMAT, cases[i].needles);
      g_assert_true (g_str_has_prefix (error->message, path));
    }
}

static void
test_not_resnet (void)
{
  g_autofree char *teacher = ead_test_fixture_path ("pth/tiny-s-nelson.pth");
  g_autofree char *missing = ead_test_fixture_path ("backbone/no-such-file.pth");
  g_autoptr (GError) error = NULL;
  g_autoptr (EadBackbone) backbone = ead_backbone_load_torchvision (teacher, &error);

  g_test_message ("%s", error ? error->message : "(accepted)");
  g_assert_null (backbone);
  ead_test_assert_error (error, EAD_ERROR_FORMAT,
                (const char *[]) { "tiny-s-nelson.pth", "not the state_dict of a torchvision "
                                   "ResNet", "'0.weight', '0.bias', '3.weight'", NULL });
  g_clear_error (&error);

  backbone = ead_backbone_load_torchvision (missing, &error);
  g_assert_null (backbone);
  ead_test_assert_error (error, EAD_ERROR_IO, (const char *[]) { "no-such-file.pth", NULL });
}

/* The folded weights of the stem, against the formula in double. */
static void
test_folding (void)
{
  g_autofree char *path = ead_test_fixture_path ("backbone/tiny-bottleneck.pth");
  g_autoptr (GError) error = NULL;
  g_autoptr (EadTorchCheckpoint) checkpoint = ead_torch_checkpoint_read (path, &error);
  g_autoptr (EadBackbone) backbone = NULL;
  const EadTorchTensor *w, *gamma, *beta, *mean, *var;
  const EadBackboneConv *stem;

  g_assert_no_error (error);
  backbone = ead_backbone_new_from_checkpoint (checkpoint, &error);
  g_assert_no_error (error);
  g_assert_cmpint (backbone->block_kind, ==, EAD_BACKBONE_BOTTLENECK);
  g_assert_cmpint (backbone->depth, ==, 3 * 5 + 2);
  g_assert_cmpint (backbone->n_blocks, ==, 5);
  /* 5 blocks of 3, the stem, a downsample in layer1..4 */
  g_assert_cmpint (backbone->n_convs, ==, 1 + 5 * 3 + 4);
  g_assert_cmpint (backbone->level_channels[3], ==, 128);
  g_assert_cmpint (backbone->convs[backbone->blocks[4].first_conv + 1].groups, ==, 2);
  g_assert_cmpint (backbone->blocks[2].downsample, ==, -1);

  stem = &backbone->convs[0];
  g_assert_cmpstr (stem->name, ==, "conv1");
  g_assert_cmpint (stem->kernel, ==, 7);
  g_assert_cmpint (stem->stride, ==, 2);
  g_assert_cmpint (stem->padding, ==, 3);
  w = ead_torch_checkpoint_lookup (checkpoint, "conv1.weight");
  gamma = ead_torch_checkpoint_lookup (checkpoint, "bn1.weight");
  beta = ead_torch_checkpoint_lookup (checkpoint, "bn1.bias");
  mean = ead_torch_checkpoint_lookup (checkpoint, "bn1.running_mean");
  var = ead_torch_checkpoint_lookup (checkpoint, "bn1.running_var");
  for (int o = 0; o < stem->out_channels; o++)
    {
      double scale = gamma->data[o] / sqrt ((double) var->data[o] + 1e-5);

      g_assert_cmpfloat (stem->bias[o], ==, (float) (beta->data[o] - mean->data[o] * scale));
      for (int i = 0; i < 3 * 49; i++)
        g_assert_cmpfloat (stem->weight[o * 3 * 49 + i], ==,
                           (float) (w->data[o * 3 * 49 + i] * scale));
    }
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/backbone/levels", test_levels);
  g_test_add_func ("/backbone/folding", test_folding);
  g_test_add_func ("/backbone/not-resnet", test_not_resnet);
  g_test_add_func ("/backbone/refusals", test_refusals);
  g_test_add_func ("/backbone/compile-refusals", test_compile_refusals);
  g_test_add_func ("/backbone/parity-tiny", test_parity_tiny);
  g_test_add_func ("/backbone/parity-torchvision", test_parity_torchvision);
  return g_test_run ();
}
