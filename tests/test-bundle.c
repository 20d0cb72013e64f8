/* test-bundle.c: model bundles round-trip bit-exactly, are written atomically, are
 * readable by Python, and every kind of damaged bundle is refused with a message that
 * names the file and the problem. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib/gstdio.h>
#include <json-glib/json-glib.h>

#include "ead-bundle.h"
#include "ead-detector.h"
#include "ead-error.h"
#include "ead-test-util.h"

/* ---- temporary directories ---- */

static char *
make_test_dir (void)
{
  g_autoptr(GError) error = NULL;
  char *dir = g_dir_make_tmp ("test-bundle-XXXXXX", &error);

  g_assert_no_error (error);
  return dir;
}

static guint
count_entries (const char *path)
{
  GDir *dir = g_dir_open (path, 0, NULL);
  guint count = 0;

  g_assert_nonnull (dir);
  while (g_dir_read_name (dir) != NULL)
    count++;
  g_dir_close (dir);
  return count;
}

/* ---- models ---- */

static EadModel *
make_model (EadArch arch, guint64 seed)
{
  EadModel *model = ead_model_new (arch);
  guint64 key = ead_random_key (seed, "statistics");

  ead_model_init_random (model, seed);
  for (int c = 0; c < EAD_TEACHER_CHANNELS; c++)
    {
      model->teacher_mean[c] = 4.0f * ead_random_uniform (key, c) - 2.0f;
      model->teacher_std[c] = 0.01f + 3.0f * ead_random_uniform (key, 1000 + c);
    }
  model->q_st_a = 0.1 + (double) seed / 3.0;
  model->q_st_b = model->q_st_a + 1.0 / 7.0;
  model->q_ae_a = -1e-300;
  model->q_ae_b = 6.02214076e23 / 3.0;
  model->input_height = 320;
  model->input_width = 384;
  g_hash_table_replace (model->metadata, g_strdup ("ead.threshold.image"),
                        g_strdup ("0.6180339887498949"));
  g_hash_table_replace (model->metadata, g_strdup ("ead.training.steps"), g_strdup ("70000"));
  g_hash_table_replace (model->metadata, g_strdup ("ead.teacher.source"),
                        g_strdup ("teacher_small.pth (Größe \"S\")"));
  /* computed keys win over the caller's */
  g_hash_table_replace (model->metadata, g_strdup ("ead.arch"), g_strdup ("bogus"));
  return model;
}

static void
assert_nets_equal (const EadNet *a, const EadNet *b)
{
  g_assert_cmpint (a->n_layers, ==, b->n_layers);
  for (int i = 0; i < a->n_layers; i++)
    {
      size_t count = ead_layer_weight_count (&a->layers[i]);

      g_assert_cmpint (a->layers[i].kind, ==, b->layers[i].kind);
      if (a->layers[i].kind != EAD_LAYER_CONV)
        continue;
      g_assert_cmpmem (a->weight[i], count * sizeof (float), b->weight[i],
                       count * sizeof (float));
      g_assert_cmpmem (a->bias[i], a->layers[i].out_channels * sizeof (float), b->bias[i],
                       b->layers[i].out_channels * sizeof (float));
    }
}

static void
assert_models_equal (const EadModel *written, const EadModel *read)
{
  GHashTableIter iter;
  gpointer key, value;
  guint extra = 0;

  g_assert_cmpint (written->arch, ==, read->arch);
  g_assert_cmpint (written->input_height, ==, read->input_height);
  g_assert_cmpint (written->input_width, ==, read->input_width);
  assert_nets_equal (written->teacher, read->teacher);
  assert_nets_equal (written->student, read->student);
  assert_nets_equal (written->autoencoder, read->autoencoder);
  g_assert_cmpmem (written->teacher_mean, sizeof written->teacher_mean, read->teacher_mean,
                   sizeof read->teacher_mean);
  g_assert_cmpmem (written->teacher_std, sizeof written->teacher_std, read->teacher_std,
                   sizeof read->teacher_std);
  g_assert_true (written->q_st_a == read->q_st_a);
  g_assert_true (written->q_st_b == read->q_st_b);
  g_assert_true (written->q_ae_a == read->q_ae_a);
  g_assert_true (written->q_ae_b == read->q_ae_b);

  g_hash_table_iter_init (&iter, written->metadata);
  while (g_hash_table_iter_next (&iter, &key, &value))
    {
      if (g_str_equal (key, "ead.arch"))
        {
          extra++;
          continue;
        }
      g_assert_cmpstr (g_hash_table_lookup (read->metadata, key), ==, value);
    }
  g_assert_cmpuint (g_hash_table_size (read->metadata), ==,
                    g_hash_table_size (written->metadata) - extra);
}

static guint
count_tensors (const EadModel *model)
{
  const EadNet *nets[] = { model->teacher, model->student, model->autoencoder };
  guint count = 2;  /* teacher_mean, teacher_std */

  for (guint n = 0; n < G_N_ELEMENTS (nets); n++)
    for (int i = 0; i < nets[n]->n_layers; i++)
      count += nets[n]->layers[i].kind == EAD_LAYER_CONV ? 2 : 0;
  return count;
}

static char *
write_model (const char *dir, const char *name, const EadModel *model)
{
  g_autoptr(GError) error = NULL;
  char *path = g_build_filename (dir, name, NULL);

  g_assert_true (ead_bundle_write (model, path, &error));
  g_assert_no_error (error);
  return path;
}

/* ---- a second, independent safetensors writer to craft damaged bundles ---- */

typedef struct {
  char *name;
  char *dtype;
  GArray *shape;  /* gint64 */
  GBytes *data;
} RawTensor;

typedef struct {
  JsonObject *metadata;
  GPtrArray *tensors;  /* RawTensor */
} RawBundle;

static void
raw_tensor_free (RawTensor *tensor)
{
  g_free (tensor->name);
  g_free (tensor->dtype);
  g_array_unref (tensor->shape);
  g_bytes_unref (tensor->data);
  g_free (tensor);
}

static void
raw_bundle_free (RawBundle *bundle)
{
  json_object_unref (bundle->metadata);
  g_ptr_array_unref (bundle->tensors);
  g_free (bundle);
}

G_DEFINE_AUTOPTR_CLEANUP_FUNC (RawBundle, raw_bundle_free)

static RawTensor *
raw_tensor_new (const char *name, const char *dtype, const gint64 *shape, int n_dims,
                const void *data, gsize size)
{
  RawTensor *tensor = g_new0 (RawTensor, 1);

  tensor->name = g_strdup (name);
  tensor->dtype = g_strdup (dtype);
  tensor->shape = g_array_new (FALSE, FALSE, sizeof (gint64));
  g_array_append_vals (tensor->shape, shape, n_dims);
  tensor->data = g_bytes_new (data, size);
  return tensor;
}

static RawBundle *
raw_bundle_load (const char *path)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(JsonParser) parser = json_parser_new ();
  g_autofree char *contents = NULL;
  RawBundle *bundle = g_new0 (RawBundle, 1);
  JsonObjectIter iter;
  const char *name;
  JsonNode *node;
  guint64 header_size;
  gsize size;

  g_assert_true (g_file_get_contents (path, &contents, &size, &error));
  memcpy (&header_size, contents, 8);
  header_size = GUINT64_FROM_LE (header_size);
  g_assert_true (json_parser_load_from_data (parser, contents + 8, header_size, &error));
  bundle->tensors = g_ptr_array_new_with_free_func ((GDestroyNotify) raw_tensor_free);
  json_object_iter_init (&iter, json_node_get_object (json_parser_get_root (parser)));
  while (json_object_iter_next (&iter, &name, &node))
    {
      JsonObject *object = json_node_get_object (node);
      JsonArray *shape, *offsets;
      gint64 dims[8];
      guint64 begin, end;

      if (g_str_equal (name, "__metadata__"))
        {
          bundle->metadata = json_object_ref (object);
          continue;
        }
      shape = json_object_get_array_member (object, "shape");
      offsets = json_object_get_array_member (object, "data_offsets");
      for (guint d = 0; d < json_array_get_length (shape); d++)
        dims[d] = json_array_get_int_element (shape, d);
      begin = json_array_get_int_element (offsets, 0);
      end = json_array_get_int_element (offsets, 1);
      g_ptr_array_add (bundle->tensors,
                       raw_tensor_new (name, json_object_get_string_member (object, "dtype"),
                                       dims, json_array_get_length (shape),
                                       contents + 8 + header_size + begin, end - begin));
    }
  return bundle;
}

static void
raw_bundle_save (const RawBundle *bundle, const char *path, gsize trailing_bytes)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(JsonGenerator) generator = json_generator_new ();
  g_autoptr(JsonNode) root = json_node_new (JSON_NODE_OBJECT);
  g_autoptr(JsonObject) object = json_object_new ();
  g_autoptr(GByteArray) file = g_byte_array_new ();
  g_autoptr(GByteArray) data = g_byte_array_new ();
  g_autofree char *header = NULL;
  guint64 header_size;
  gsize length;

  json_object_set_object_member (object, "__metadata__", json_object_ref (bundle->metadata));
  for (guint i = 0; i < bundle->tensors->len; i++)
    {
      const RawTensor *tensor = g_ptr_array_index (bundle->tensors, i);
      JsonObject *entry = json_object_new ();
      JsonArray *shape = json_array_new ();
      JsonArray *offsets = json_array_new ();
      gsize size;
      const void *bytes = g_bytes_get_data (tensor->data, &size);

      for (guint d = 0; d < tensor->shape->len; d++)
        json_array_add_int_element (shape, g_array_index (tensor->shape, gint64, d));
      json_array_add_int_element (offsets, data->len);
      json_array_add_int_element (offsets, data->len + size);
      g_byte_array_append (data, bytes, size);
      json_object_set_string_member (entry, "dtype", tensor->dtype);
      json_object_set_array_member (entry, "shape", shape);
      json_object_set_array_member (entry, "data_offsets", offsets);
      json_object_set_object_member (object, tensor->name, entry);
    }
  for (gsize i = 0; i < trailing_bytes; i++)
    g_byte_array_append (data, (const guint8 *) "", 1);
  json_node_set_object (root, object);
  json_generator_set_root (generator, root);
  header = json_generator_to_data (generator, &length);
  header_size = GUINT64_TO_LE ((guint64) length);
  g_byte_array_append (file, (const guint8 *) &header_size, 8);
  g_byte_array_append (file, (const guint8 *) header, length);
  g_byte_array_append (file, data->data, data->len);
  g_assert_true (g_file_set_contents (path, (const char *) file->data, file->len, &error));
}

static guint
raw_bundle_index (const RawBundle *bundle, const char *name)
{
  for (guint i = 0; i < bundle->tensors->len; i++)
    if (g_str_equal (((RawTensor *) g_ptr_array_index (bundle->tensors, i))->name, name))
      return i;
  g_assert_not_reached ();
}

static void
raw_bundle_replace (RawBundle *bundle, RawTensor *tensor)
{
  guint index = raw_bundle_index (bundle, tensor->name);

  raw_tensor_free (g_ptr_array_index (bundle->tensors, index));
  g_ptr_array_index (bundle->tensors, index) = tensor;
}

/* ---- round trips ---- */

static void
check_round_trip (EadArch arch)
{
  g_autofree char *dir = make_test_dir ();
  g_autoptr(EadModel) model = make_model (arch, 7);
  g_autoptr(EadModel) read = NULL;
  g_autoptr(GError) error = NULL;
  g_autofree char *path = write_model (dir, "model.ead.safetensors", model);
  g_autofree char *contents = NULL;
  guint64 header_size;
  gsize size;

  read = ead_bundle_read (path, &error);
  g_assert_no_error (error);
  assert_models_equal (model, read);

  /* the layout other readers rely on: padded header, then contiguous little-endian F32 */
  g_assert_true (g_file_get_contents (path, &contents, &size, NULL));
  memcpy (&header_size, contents, 8);
  header_size = GUINT64_FROM_LE (header_size);
  g_assert_cmpuint (header_size % 8, ==, 0);
  g_assert_cmpint (contents[8], ==, '{');
  g_assert_cmpuint (size, ==,
                    8 + header_size
                      + 4 * (ead_net_parameter_count (model->teacher)
                             + ead_net_parameter_count (model->student)
                             + ead_net_parameter_count (model->autoencoder)
                             + 2 * EAD_TEACHER_CHANNELS));
  g_assert_cmpmem (contents + 8 + header_size, 16, model->teacher->weight[0], 16);

  ead_test_remove_tree (dir);
}

static void
test_round_trip_small (void)
{
  check_round_trip (EAD_ARCH_SMALL);
}

static void
test_round_trip_medium (void)
{
  check_round_trip (EAD_ARCH_MEDIUM);
}

static void
test_round_trip_defaults (void)
{
  g_autofree char *dir = make_test_dir ();
  g_autoptr(EadModel) model = ead_model_new (EAD_ARCH_SMALL);
  g_autoptr(EadModel) read = NULL;
  g_autoptr(GError) error = NULL;
  g_autofree char *path = write_model (dir, "plain.ead.safetensors", model);

  read = ead_bundle_read (path, &error);
  g_assert_no_error (error);
  assert_models_equal (model, read);
  g_assert_cmpuint (g_hash_table_size (read->metadata), ==, 0);
  ead_test_remove_tree (dir);
}

static void
test_half_precision (void)
{
  /* 1, -2, 65504 (largest), 2^-14 (smallest normal), 2^-24 (smallest subnormal), -0 */
  static const guint16 halves[] = { 0x3c00, 0xc000, 0x7bff, 0x0400, 0x0001, 0x8000 };
  static const float expected_halves[] = { 1.0f, -2.0f, 65504.0f, 0x1p-14f, 0x1p-24f, -0.0f };
  static const gint64 channels[1] = { EAD_TEACHER_CHANNELS };
  g_autofree char *dir = make_test_dir ();
  g_autoptr(EadModel) model = make_model (EAD_ARCH_SMALL, 3);
  g_autofree char *path = write_model (dir, "half.ead.safetensors", model);
  g_autoptr(RawBundle) bundle = raw_bundle_load (path);
  g_autoptr(EadModel) read = NULL;
  g_autoptr(GError) error = NULL;
  guint16 mean[EAD_TEACHER_CHANNELS], std[EAD_TEACHER_CHANNELS];

  for (int c = 0; c < EAD_TEACHER_CHANNELS; c++)
    {
      mean[c] = GUINT16_TO_LE (halves[c % G_N_ELEMENTS (halves)]);
      /* bfloat16 of 1.5 * 2^(c % 8 - 4): the top half of the float's bits */
      std[c] = GUINT16_TO_LE ((guint16) ((127 + c % 8 - 4) << 7 | 0x40));
    }
  raw_bundle_replace (bundle, raw_tensor_new ("teacher_mean", "F16", channels, 1, mean,
                                              sizeof mean));
  raw_bundle_replace (bundle, raw_tensor_new ("teacher_std", "BF16", channels, 1, std,
                                              sizeof std));
  raw_bundle_save (bundle, path, 0);

  read = ead_bundle_read (path, &error);
  g_assert_no_error (error);
  for (int c = 0; c < EAD_TEACHER_CHANNELS; c++)
    {
      float want = expected_halves[c % G_N_ELEMENTS (halves)];

      g_assert_cmpmem (&read->teacher_mean[c], sizeof (float), &want, sizeof want);
      g_assert_cmpfloat (read->teacher_std[c], ==, ldexpf (1.5f, c % 8 - 4));
    }
  assert_nets_equal (model->teacher, read->teacher);
  ead_test_remove_tree (dir);
}

/* Teacher bundles: the teacher's layers only, F16 with half (each weight the nearest
 * half, the digest that of the stored teacher); the reader gives a teacher-only model that
 * a detector refuses and that a full bundle does not keep claiming to be. */
static void
test_teacher_only (void)
{
  static const float probes[] = { 1.0f, 0.1f, -3.14159265f, 1e-6f, 6.1033e-5f, 65504.0f };
  g_autofree char *dir = make_test_dir ();
  g_autofree char *f32_path = g_build_filename (dir, "t32.ead.safetensors", NULL);
  g_autofree char *f16_path = g_build_filename (dir, "t16.ead.safetensors", NULL);
  g_autofree char *full_path = g_build_filename (dir, "full.ead.safetensors", NULL);
  g_autoptr(EadModel) model = make_model (EAD_ARCH_SMALL, 5);
  g_autoptr(EadModel) t32 = NULL;
  g_autoptr(EadModel) t16 = NULL;
  g_autoptr(EadModel) full = NULL;
  g_autoptr(EadBundleInfo) info32 = NULL;
  g_autoptr(EadBundleInfo) info16 = NULL;
  g_autoptr(EadDetector) detector = NULL;
  g_autoptr(GError) error = NULL;
  g_autofree char *digest = NULL;
  const EadNet *teacher = model->teacher;
  size_t n0 = ead_layer_weight_count (&teacher->layers[0]);

  /* exact values across the fp16 range in the first layer */
  memcpy (teacher->weight[0], probes, sizeof probes);
  g_assert_true (ead_bundle_write_teacher (model, f32_path, FALSE, &error));
  g_assert_no_error (error);
  g_assert_true (ead_bundle_write_teacher (model, f16_path, TRUE, &error));
  g_assert_no_error (error);

  info32 = ead_bundle_read_info (f32_path, &error);
  g_assert_no_error (error);
  info16 = ead_bundle_read_info (f16_path, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (info32->n_elements, ==, ead_net_parameter_count (teacher));
  g_assert_cmpuint (info16->n_elements, ==, info32->n_elements);
  g_assert_cmpstr (info32->dtypes, ==, "F32");
  g_assert_cmpstr (info16->dtypes, ==, "F16");
  g_assert_cmpuint (info16->file_size, <, info32->file_size / 2 + 16384);
  g_assert_cmpstr (g_hash_table_lookup (info16->metadata, EAD_MODEL_KEY_CONTENT), ==,
                   EAD_MODEL_CONTENT_TEACHER);

  t32 = ead_bundle_read (f32_path, &error);
  g_assert_no_error (error);
  t16 = ead_bundle_read (f16_path, &error);
  g_assert_no_error (error);
  g_assert_true (ead_model_is_teacher_only (t32));
  g_assert_true (ead_model_is_teacher_only (t16));
  g_assert_false (ead_model_is_teacher_only (model));
  assert_nets_equal (teacher, t32->teacher);
  g_assert_cmpfloat (ead_net_parameter_count (t32->student), >, 0);
  for (int i = 0; i < t32->student->n_layers; i++)
    if (t32->student->layers[i].kind == EAD_LAYER_CONV)
      g_assert_cmpfloat (t32->student->weight[i][0], ==, 0.0f);
  /* the nearest halves: 0.1 -> 0.0999755859375, 1e-6 -> 17 * 2^-24 (subnormal), 6.1033e-5 ->
   * 2^-14 */
  g_assert_cmpfloat (t16->teacher->weight[0][0], ==, 1.0f);
  g_assert_cmpfloat (t16->teacher->weight[0][1], ==, 0.0999755859375f);
  g_assert_cmpfloat (t16->teacher->weight[0][2], ==, -3.140625f);
  g_assert_cmpfloat (t16->teacher->weight[0][3], ==, 17.0f * 0x1p-24f);
  g_assert_cmpfloat (t16->teacher->weight[0][4], ==, 0x1p-14f);
  g_assert_cmpfloat (t16->teacher->weight[0][5], ==, 65504.0f);
  for (size_t k = 0; k < n0; k++)
    g_assert_cmpfloat (fabsf (t16->teacher->weight[0][k] - teacher->weight[0][k]), <=,
                       fabsf (teacher->weight[0][k]) * 0x1p-11f + 0x1p-25f);
  digest = ead_net_digest (t16->teacher);
  g_assert_cmpstr (g_hash_table_lookup (t16->metadata, "ead.teacher.sha256"), ==, digest);
  g_assert_cmpstr (g_hash_table_lookup (t16->metadata, "ead.teacher.source"), ==,
                   "teacher_small.pth (Größe \"S\")");

  /* a teacher is no detector */
  detector = ead_detector_new (t16, NULL, &error);
  g_assert_null (detector);
  g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
  g_assert_nonnull (strstr (error->message, "ead train --teacher"));
  g_clear_error (&error);

  /* written whole again (as training does), it is a full model */
  memcpy (t32->teacher_std, model->teacher_std, sizeof model->teacher_std);
  g_assert_true (ead_bundle_write (t32, full_path, &error));
  g_assert_no_error (error);
  full = ead_bundle_read (full_path, &error);
  g_assert_no_error (error);
  g_assert_false (ead_model_is_teacher_only (full));

  /* fp16 cannot hold 70000; nothing is written */
  g_assert_cmpint (teacher->layers[3].kind, ==, EAD_LAYER_CONV);
  teacher->weight[3][7] = 70000.0f;
  g_assert_false (ead_bundle_write_teacher (model, full_path, TRUE, &error));
  g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
  g_assert_nonnull (strstr (error->message, "teacher.3.weight[7]"));
  g_assert_nonnull (strstr (error->message, "fp16 cannot hold"));
  g_clear_error (&error);
  g_assert_false (ead_model_is_teacher_only (full));
  g_clear_pointer (&full, ead_model_free);
  full = ead_bundle_read (full_path, &error);
  g_assert_no_error (error);
  g_assert_false (ead_model_is_teacher_only (full));
  ead_test_remove_tree (dir);
}

static void
test_info (void)
{
  g_autofree char *dir = make_test_dir ();
  g_autoptr(EadModel) model = make_model (EAD_ARCH_MEDIUM, 5);
  g_autofree char *path = write_model (dir, "info.ead.safetensors", model);
  g_autoptr(EadBundleInfo) info = NULL;
  g_autoptr(GError) error = NULL;
  struct stat st;

  info = ead_bundle_read_info (path, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (g_hash_table_lookup (info->metadata, "ead.arch"), ==, "efficientad-m");
  g_assert_cmpstr (g_hash_table_lookup (info->metadata, "ead.format_version"), ==, "1");
  g_assert_cmpstr (g_hash_table_lookup (info->metadata, "ead.input.width"), ==, "384");
  g_assert_cmpstr (g_hash_table_lookup (info->metadata, "ead.training.steps"), ==, "70000");
  g_assert_cmpuint (g_hash_table_size (info->metadata), ==, 8 + 3);
  g_assert_cmpuint (info->n_tensors, ==, count_tensors (model));
  g_assert_cmpuint (info->n_elements, ==,
                    ead_net_parameter_count (model->teacher)
                      + ead_net_parameter_count (model->student)
                      + ead_net_parameter_count (model->autoencoder)
                      + 2 * EAD_TEACHER_CHANNELS);
  g_assert_cmpstr (info->dtypes, ==, "F32");
  g_assert_cmpint (g_stat (path, &st), ==, 0);
  g_assert_cmpuint (info->file_size, ==, (guint64) st.st_size);
  ead_test_remove_tree (dir);
}

/* ---- writing ---- */

static void
test_overwrite (void)
{
  g_autofree char *dir = make_test_dir ();
  g_autoptr(EadModel) first = make_model (EAD_ARCH_SMALL, 1);
  g_autoptr(EadModel) second = make_model (EAD_ARCH_MEDIUM, 2);
  g_autofree char *path = write_model (dir, "model.ead.safetensors", first);
  g_autofree char *again = write_model (dir, "model.ead.safetensors", second);
  g_autoptr(EadModel) read = NULL;
  g_autoptr(GError) error = NULL;

  g_assert_cmpstr (again, ==, path);
  read = ead_bundle_read (path, &error);
  g_assert_no_error (error);
  assert_models_equal (second, read);
  g_assert_cmpuint (count_entries (dir), ==, 1);
  ead_test_remove_tree (dir);
}

/* A write that fails half-way (here: over the file-size limit, as a full disk would)
 * leaves the previous bundle intact and no temporary file behind. */
static void
test_failed_write_keeps_old (void)
{
  g_autofree char *dir = make_test_dir ();
  g_autoptr(EadModel) first = make_model (EAD_ARCH_SMALL, 1);
  g_autoptr(EadModel) second = make_model (EAD_ARCH_SMALL, 2);
  g_autofree char *path = write_model (dir, "model.ead.safetensors", first);
  g_autoptr(EadModel) read = NULL;
  g_autoptr(GError) error = NULL;
  struct rlimit saved, limited;
  void (*old_handler) (int);
  gboolean ok;

  g_assert_cmpint (getrlimit (RLIMIT_FSIZE, &saved), ==, 0);
  limited = saved;
  limited.rlim_cur = 1 << 20;
  old_handler = signal (SIGXFSZ, SIG_IGN);
  g_assert_cmpint (setrlimit (RLIMIT_FSIZE, &limited), ==, 0);
  ok = ead_bundle_write (second, path, &error);
  g_assert_cmpint (setrlimit (RLIMIT_FSIZE, &saved), ==, 0);
  signal (SIGXFSZ, old_handler);

  g_assert_false (ok);
  g_assert_error (error, EAD_ERROR, EAD_ERROR_IO);
  g_assert_true (g_str_has_prefix (error->message, path));
  g_assert_nonnull (strstr (error->message, g_strerror (EFBIG)));
  g_assert_cmpuint (count_entries (dir), ==, 1);
  read = ead_bundle_read (path, NULL);
  g_assert_nonnull (read);
  assert_models_equal (first, read);
  ead_test_remove_tree (dir);
}

static void
assert_write_fails (const EadModel *model, const char *path, int code, const char *problem)
{
  g_autoptr(GError) error = NULL;

  g_assert_false (ead_bundle_write (model, path, &error));
  g_assert_error (error, EAD_ERROR, code);
  g_test_message ("%s", error->message);
  g_assert_true (g_str_has_prefix (error->message, path));
  g_assert_nonnull (strstr (error->message, problem));
}

static void
test_write_errors (void)
{
  g_autofree char *dir = make_test_dir ();
  g_autofree char *missing = g_build_filename (dir, "no", "such", "dir", "m.ead.safetensors",
                                               NULL);
  g_autofree char *subdir = g_build_filename (dir, "subdir", NULL);
  g_autofree char *invalid_path = g_build_filename (dir, "invalid.ead.safetensors", NULL);
  g_autoptr(EadModel) model = make_model (EAD_ARCH_SMALL, 1);

  assert_write_fails (model, missing, EAD_ERROR_IO, g_strerror (ENOENT));

  /* a directory in the way: the rename fails, the temporary file goes away */
  g_assert_cmpint (g_mkdir (subdir, 0700), ==, 0);
  assert_write_fails (model, subdir, EAD_ERROR_IO, "cannot replace the file");
  g_assert_true (g_file_test (subdir, G_FILE_TEST_IS_DIR));
  g_assert_cmpuint (count_entries (dir), ==, 1);

  model->teacher_std[17] = 0.0f;
  assert_write_fails (model, invalid_path, EAD_ERROR_INVALID, "teacher channel 17");
  model->teacher_std[17] = 1.0f;
  g_hash_table_replace (model->metadata, g_strdup ("ead.note"), g_strdup ("\xff\xfe"));
  assert_write_fails (model, invalid_path, EAD_ERROR_INVALID, "ead.note is not valid UTF-8");
  g_assert_cmpuint (count_entries (dir), ==, 1);
  ead_test_remove_tree (dir);
}

static void
test_write_read_only_dir (void)
{
  g_autofree char *dir = make_test_dir ();
  g_autofree char *path = g_build_filename (dir, "m.ead.safetensors", NULL);
  g_autoptr(EadModel) model = ead_model_new (EAD_ARCH_SMALL);

  g_assert_cmpint (g_chmod (dir, 0500), ==, 0);
  if (access (dir, W_OK) == 0)
    g_test_skip ("the directory stays writable (running as root)");
  else
    {
      assert_write_fails (model, path, EAD_ERROR_IO, g_strerror (EACCES));
      g_assert_cmpuint (count_entries (dir), ==, 0);
    }
  ead_test_remove_tree (dir);
}

/* ---- reading damaged files ---- */

static void
assert_read_fails (const char *path, int code, const char *problem)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(EadModel) model = ead_bundle_read (path, &error);

  g_assert_null (model);
  g_assert_error (error, EAD_ERROR, code);
  g_test_message ("%s", error->message);
  g_assert_true (g_str_has_prefix (error->message, path));
  g_assert_nonnull (strstr (error->message, problem));
}

static void
write_bytes (const char *path, const void *data, gsize size)
{
  g_autoptr(GError) error = NULL;

  g_assert_true (g_file_set_contents (path, data, size, &error));
}

/* A file whose first bytes are a length field for `header` followed by `header`. */
static void
write_header_only (const char *path, const char *header)
{
  g_autoptr(GByteArray) file = g_byte_array_new ();
  guint64 size = GUINT64_TO_LE ((guint64) strlen (header));

  g_byte_array_append (file, (const guint8 *) &size, 8);
  g_byte_array_append (file, (const guint8 *) header, strlen (header));
  write_bytes (path, file->data, file->len);
}

static void
test_read_short_files (void)
{
  g_autofree char *dir = make_test_dir ();
  g_autofree char *path = g_build_filename (dir, "short.ead.safetensors", NULL);
  g_autofree char *missing = g_build_filename (dir, "missing.ead.safetensors", NULL);

  write_bytes (path, "", 0);
  assert_read_fails (path, EAD_ERROR_FORMAT, "0 bytes long, too short");
  write_bytes (path, "\x10\0\0\0\0", 5);
  assert_read_fails (path, EAD_ERROR_FORMAT, "5 bytes long, too short");
  assert_read_fails (missing, EAD_ERROR_IO, g_strerror (ENOENT));
  assert_read_fails (dir, EAD_ERROR_IO, "is a directory");
  ead_test_remove_tree (dir);
}

static void
test_read_bad_headers (void)
{
  static const guint8 huge[16] = { 0, 0, 0, 0, 0, 0, 0, 0x40, '{', '}' };
  g_autofree char *dir = make_test_dir ();
  g_autofree char *path = g_build_filename (dir, "bad.ead.safetensors", NULL);
  g_autofree char *model_path = NULL;
  g_autoptr(EadModel) model = make_model (EAD_ARCH_SMALL, 1);
  g_autofree char *contents = NULL;
  GString *deep = g_string_new ("{\"a\":");
  gsize size;

  write_bytes (path, huge, sizeof huge);
  assert_read_fails (path, EAD_ERROR_LIMIT, "over the limit of 104857600 bytes");

  write_header_only (path, "{\"__metadata__\": garbage");
  assert_read_fails (path, EAD_ERROR_FORMAT, "the header is not valid JSON");
  write_header_only (path, "[1, 2, 3]");
  assert_read_fails (path, EAD_ERROR_FORMAT, "does not start with '{'");
  /* json-glib parses recursively: this would overflow the stack */
  for (int i = 0; i < 200000; i++)
    g_string_append_c (deep, '[');
  write_header_only (path, deep->str);
  g_string_free (deep, TRUE);
  assert_read_fails (path, EAD_ERROR_FORMAT, "nests deeper than 16 levels");
  write_header_only (path, "{\"__metadata__\": {\"ead.arch\": 1}}");
  assert_read_fails (path, EAD_ERROR_FORMAT, "metadata value of ead.arch is not a string");
  write_header_only (path, "{\"x\": {\"dtype\": \"F32\", \"shape\": [2], "
                           "\"data_offsets\": [0, 8]}}");
  assert_read_fails (path, EAD_ERROR_FORMAT,
                     "tensor x: data_offsets [0, 8] run past the end of the 0-byte data block");
  write_header_only (path, "{\"x\": {\"dtype\": \"F32\", \"shape\": [2, -1], "
                           "\"data_offsets\": [0, 0]}}");
  assert_read_fails (path, EAD_ERROR_FORMAT, "tensor x: shape is not a list of non-negative");
  write_header_only (path, "{\"x\": {\"dtype\": \"F32\", \"shape\": [2], "
                           "\"data_offsets\": [0]}}");
  assert_read_fails (path, EAD_ERROR_FORMAT, "tensor x: data_offsets is not a pair");
  write_header_only (path, "{\"x\": {\"shape\": [2], \"data_offsets\": [0, 8]}}");
  assert_read_fails (path, EAD_ERROR_FORMAT, "tensor x: dtype is missing");
  write_header_only (path, "{\"x\": {\"dtype\": \"F32\", \"shape\": [1], "
                           "\"data_offsets\": [0, 0]}}");
  assert_read_fails (path, EAD_ERROR_FORMAT, "shape [1] of F32 needs 4 bytes");
  write_header_only (path, "{\"x\": {\"dtype\": \"F32\", \"shape\": [0], "
                           "\"data_offsets\": [0, 0]}}");
  assert_read_fails (path, EAD_ERROR_FORMAT, "no __metadata__");

  model_path = write_model (dir, "model.ead.safetensors", model);
  g_assert_true (g_file_get_contents (model_path, &contents, &size, NULL));
  write_bytes (path, contents, 200);
  assert_read_fails (path, EAD_ERROR_FORMAT, "truncated: the header is said to be");
  write_bytes (path, contents, size - 1000);
  assert_read_fails (path, EAD_ERROR_FORMAT, "run past the end of the");
  ead_test_remove_tree (dir);
}

/* Each case rewrites a valid bundle with one thing wrong. */
static void
test_read_bad_contents (void)
{
  static const gint64 wrong_shape[4] = { 256, 128, 4, 3 };
  static const gint64 channels[1] = { EAD_TEACHER_CHANNELS };
  g_autofree char *dir = make_test_dir ();
  g_autoptr(EadModel) model = make_model (EAD_ARCH_SMALL, 1);
  g_autofree char *source = write_model (dir, "good.ead.safetensors", model);
  g_autofree char *path = g_build_filename (dir, "bad.ead.safetensors", NULL);
  g_autofree float *weights = g_new0 (float, 256 * 128 * 4 * 3);
  double doubles[EAD_TEACHER_CHANNELS] = { 0 };
  RawBundle *bundle;

  bundle = raw_bundle_load (source);
  raw_bundle_replace (bundle, raw_tensor_new ("teacher.3.weight", "F32", wrong_shape, 4,
                                              weights, 256 * 128 * 4 * 3 * sizeof (float)));
  raw_bundle_save (bundle, path, 0);
  raw_bundle_free (bundle);
  assert_read_fails (path, EAD_ERROR_FORMAT,
                     "teacher.3.weight has shape [256, 128, 4, 3], expected [256, 128, 4, 4]");

  bundle = raw_bundle_load (source);
  g_ptr_array_remove_index (bundle->tensors, raw_bundle_index (bundle, "student.0.bias"));
  raw_bundle_save (bundle, path, 0);
  raw_bundle_free (bundle);
  assert_read_fails (path, EAD_ERROR_FORMAT, "tensor student.0.bias is missing");

  bundle = raw_bundle_load (source);
  g_ptr_array_add (bundle->tensors,
                   raw_tensor_new ("extra.weight", "F32", channels, 1, model->teacher_mean,
                                   sizeof model->teacher_mean));
  raw_bundle_save (bundle, path, 0);
  raw_bundle_free (bundle);
  assert_read_fails (path, EAD_ERROR_FORMAT, "unexpected tensor extra.weight");

  bundle = raw_bundle_load (source);
  raw_bundle_replace (bundle, raw_tensor_new ("teacher_mean", "F64", channels, 1, doubles,
                                              sizeof doubles));
  raw_bundle_save (bundle, path, 0);
  raw_bundle_free (bundle);
  assert_read_fails (path, EAD_ERROR_UNSUPPORTED,
                     "tensor teacher_mean has dtype F64; only F32, F16 and BF16");

  bundle = raw_bundle_load (source);
  raw_bundle_save (bundle, path, 4);
  raw_bundle_free (bundle);
  assert_read_fails (path, EAD_ERROR_FORMAT, "the last 4 bytes of the file belong to no tensor");

  bundle = raw_bundle_load (source);
  json_object_set_string_member (bundle->metadata, "ead.arch", "efficientad-x");
  raw_bundle_save (bundle, path, 0);
  assert_read_fails (path, EAD_ERROR_UNSUPPORTED,
                     "ead.arch is 'efficientad-x', expected efficientad-s or efficientad-m");
  json_object_set_string_member (bundle->metadata, "ead.arch", "efficientad-m");
  raw_bundle_save (bundle, path, 0);
  assert_read_fails (path, EAD_ERROR_FORMAT, "teacher.0.weight has shape [128, 3, 4, 4], "
                                             "expected [256, 3, 4, 4]");
  json_object_remove_member (bundle->metadata, "ead.arch");
  raw_bundle_save (bundle, path, 0);
  assert_read_fails (path, EAD_ERROR_FORMAT, "metadata key ead.arch is missing");
  json_object_set_string_member (bundle->metadata, "ead.arch", "efficientad-s");
  json_object_set_string_member (bundle->metadata, "ead.format_version", "2");
  raw_bundle_save (bundle, path, 0);
  assert_read_fails (path, EAD_ERROR_UNSUPPORTED, "bundle format version '2'");
  json_object_set_string_member (bundle->metadata, "ead.format_version", "1");
  json_object_set_string_member (bundle->metadata, "ead.input.height", "255");
  raw_bundle_save (bundle, path, 0);
  assert_read_fails (path, EAD_ERROR_FORMAT,
                     "ead.input.height is '255', expected an integer from 256 to 16384");
  json_object_remove_member (bundle->metadata, "ead.input.height");
  raw_bundle_save (bundle, path, 0);
  assert_read_fails (path, EAD_ERROR_FORMAT, "metadata key ead.input.height is missing");
  json_object_set_string_member (bundle->metadata, "ead.input.height", "256");
  json_object_set_string_member (bundle->metadata, "ead.quantile.ae_b", "inf");
  raw_bundle_save (bundle, path, 0);
  assert_read_fails (path, EAD_ERROR_FORMAT,
                     "ead.quantile.ae_b is 'inf', expected a finite number");
  json_object_set_string_member (bundle->metadata, "ead.quantile.ae_b", "0.5x");
  raw_bundle_save (bundle, path, 0);
  assert_read_fails (path, EAD_ERROR_FORMAT, "ead.quantile.ae_b is '0.5x'");
  json_object_set_string_member (bundle->metadata, "ead.quantile.ae_b", "-1e-300");
  raw_bundle_save (bundle, path, 0);
  assert_read_fails (path, EAD_ERROR_FORMAT, "degenerate map quantiles");
  json_object_set_string_member (bundle->metadata, "ead.quantile.ae_b", "1");

  model->teacher_std[200] = 0.0f;
  raw_bundle_replace (bundle, raw_tensor_new ("teacher_std", "F32", channels, 1,
                                              model->teacher_std, sizeof model->teacher_std));
  raw_bundle_save (bundle, path, 0);
  assert_read_fails (path, EAD_ERROR_FORMAT, "teacher channel 200 has mean");
  raw_bundle_free (bundle);
  ead_test_remove_tree (dir);
}

/* ---- Python ---- */

/* The reading of shared/bench/efficientad_ref.py (read_safetensors), plus the layout
 * rules of the safetensors format. */
static const char python_reader[] =
  "import json, struct, sys\n"
  "import numpy as np\n"
  "with open(sys.argv[1], 'rb') as f:\n"
  "    n = struct.unpack('<Q', f.read(8))[0]\n"
  "    raw = f.read(n)\n"
  "    blob = f.read()\n"
  "assert n % 8 == 0 and raw[:1] == b'{'\n"
  "header = json.loads(raw)\n"
  "meta = header.pop('__metadata__')\n"
  "position = 0\n"
  "for a, b in sorted(tuple(v['data_offsets']) for v in header.values()):\n"
  "    assert a == position\n"
  "    position = b\n"
  "assert position == len(blob)\n"
  "info = header['teacher.0.weight']\n"
  "a, b = info['data_offsets']\n"
  "w = np.frombuffer(blob[a:b], dtype=np.float32).reshape(info['shape']).astype(np.float64)\n"
  "try:\n"
  "    import torch\n"
  "    assert float(torch.from_numpy(w.copy()).sum()) == float(w.sum())\n"
  "except ImportError:\n"
  "    pass\n"
  "print(meta['ead.arch'], meta['ead.quantile.st_b'], len(header), repr(float(w.sum())))\n";

static void
test_python_reads_bundle (void)
{
  g_autofree char *dir = NULL;
  g_autofree char *path = NULL;
  g_autofree char *out = NULL;
  g_autofree char *err = NULL;
  g_autofree char *expected = NULL;
  g_autoptr(EadModel) model = NULL;
  g_autoptr(GError) error = NULL;
  g_auto(GStrv) fields = NULL;
  char quantile[G_ASCII_DTOSTR_BUF_SIZE];
  const char *argv[] = { EAD_TEST_PYTHON, "-c", python_reader, NULL, NULL };
  size_t count;
  double sum = 0.0;
  int status = 0;

  if (!ead_test_python_imports ("numpy"))
    {
      g_test_skip (EAD_TEST_PYTHON " with numpy is not available");
      return;
    }
  dir = make_test_dir ();
  model = make_model (EAD_ARCH_SMALL, 11);
  path = write_model (dir, "py.ead.safetensors", model);
  argv[3] = path;
  g_assert_true (g_spawn_sync (NULL, (char **) argv, NULL, G_SPAWN_DEFAULT, NULL, NULL, &out,
                               &err, &status, &error));
  g_assert_no_error (error);
  if (!g_spawn_check_wait_status (status, NULL))
    g_error ("python failed reading %s:\n%s", path, err);

  fields = g_strsplit (g_strstrip (out), " ", -1);
  g_assert_cmpuint (g_strv_length (fields), ==, 4);
  g_assert_cmpstr (fields[0], ==, "efficientad-s");
  g_ascii_formatd (quantile, sizeof quantile, "%.17g", model->q_st_b);
  g_assert_cmpstr (fields[1], ==, quantile);
  g_assert_true (g_ascii_strtod (fields[1], NULL) == model->q_st_b);
  expected = g_strdup_printf ("%u", count_tensors (model));
  g_assert_cmpstr (fields[2], ==, expected);
  count = ead_layer_weight_count (&model->teacher->layers[0]);
  for (size_t i = 0; i < count; i++)
    sum += model->teacher->weight[0][i];
  /* numpy sums pairwise, the loop above in order: equal to rounding */
  g_assert_cmpfloat_with_epsilon (g_ascii_strtod (fields[3], NULL), sum, 1e-9);
  g_assert_cmpfloat (fabs (sum), >, 1e-6);
  ead_test_remove_tree (dir);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);

  g_test_add_func ("/bundle/round-trip/small", test_round_trip_small);
  g_test_add_func ("/bundle/round-trip/medium", test_round_trip_medium);
  g_test_add_func ("/bundle/round-trip/defaults", test_round_trip_defaults);
  g_test_add_func ("/bundle/round-trip/half-precision", test_half_precision);
  g_test_add_func ("/bundle/info", test_info);
  g_test_add_func ("/bundle/write/overwrite", test_overwrite);
  g_test_add_func ("/bundle/write/failure-keeps-old", test_failed_write_keeps_old);
  g_test_add_func ("/bundle/write/errors", test_write_errors);
  g_test_add_func ("/bundle/write/read-only-dir", test_write_read_only_dir);
  g_test_add_func ("/bundle/read/short-files", test_read_short_files);
  g_test_add_func ("/bundle/read/bad-headers", test_read_bad_headers);
  g_test_add_func ("/bundle/read/bad-contents", test_read_bad_contents);
  g_test_add_func ("/bundle/python", test_python_reads_bundle);
  g_test_add_func ("/bundle/teacher-only", test_teacher_only);
  return g_test_run ();
}
