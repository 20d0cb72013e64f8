/* ead-bundle.c: model bundles on top of the safetensors layer (ead-safetensors.c): which
 * tensors a model has and their shapes, the ead.* metadata, and the model's validity.
 */
#include "ead-bundle.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#include "ead-error.h"
#include "ead-safetensors.h"

#define FORMAT_VERSION "1"
#define EAD_HALF_MAX 65504.0f

#define KEY_FORMAT_VERSION "ead.format_version"
#define KEY_ARCH "ead.arch"
#define KEY_INPUT_HEIGHT "ead.input.height"
#define KEY_INPUT_WIDTH "ead.input.width"
#define KEY_Q_ST_A "ead.quantile.st_a"
#define KEY_Q_ST_B "ead.quantile.st_b"
#define KEY_Q_AE_A "ead.quantile.ae_a"
#define KEY_Q_AE_B "ead.quantile.ae_b"

/* The keys that become EadModel fields rather than model->metadata entries. */
static const char *const field_keys[] = {
  KEY_FORMAT_VERSION, KEY_ARCH, KEY_INPUT_HEIGHT, KEY_INPUT_WIDTH,
  KEY_Q_ST_A, KEY_Q_ST_B, KEY_Q_AE_A, KEY_Q_AE_B,
};

/* A tensor the model owns: its bundle name, shape, and float storage. */
typedef struct {
  char *name;
  int n_dims;
  gint64 shape[4];
  float *data;
} Slot;

static void
slot_clear (Slot *slot)
{
  g_free (slot->name);
}

static void
add_slot (GArray *slots, char *name, float *data, int n_dims, const gint64 *shape)
{
  Slot slot = { .name = name, .n_dims = n_dims, .data = data };

  memcpy (slot.shape, shape, n_dims * sizeof *shape);
  g_array_append_val (slots, slot);
}

static void
add_net_slots (GArray *slots, const char *prefix, EadNet *net)
{
  for (int i = 0; i < net->n_layers; i++)
    {
      const EadLayer *layer = &net->layers[i];
      gint64 weight_shape[4] = { layer->out_channels, layer->in_channels, layer->kernel,
                                 layer->kernel };
      gint64 bias_shape[1] = { layer->out_channels };

      if (layer->kind != EAD_LAYER_CONV)
        continue;
      add_slot (slots, g_strdup_printf ("%s.%d.weight", prefix, i), net->weight[i], 4,
                weight_shape);
      add_slot (slots, g_strdup_printf ("%s.%d.bias", prefix, i), net->bias[i], 1, bias_shape);
    }
}

/* Every tensor of the model in file order: the networks by layer index, then the
 * teacher statistics; of a teacher bundle, the teacher's layers only. */
static GArray *
model_slots (EadModel *model, gboolean teacher_only)
{
  static const gint64 channels_shape[1] = { EAD_TEACHER_CHANNELS };
  GArray *slots = g_array_new (FALSE, TRUE, sizeof (Slot));

  g_array_set_clear_func (slots, (GDestroyNotify) slot_clear);
  add_net_slots (slots, "teacher", model->teacher);
  if (teacher_only)
    return slots;
  add_net_slots (slots, "student", model->student);
  add_net_slots (slots, "autoencoder", model->autoencoder);
  add_slot (slots, g_strdup ("teacher_mean"), model->teacher_mean, 1, channels_shape);
  add_slot (slots, g_strdup ("teacher_std"), model->teacher_std, 1, channels_shape);
  return slots;
}

static gboolean
read_tensors (EadSafetensors *file, EadModel *model, gboolean teacher_only, GError **error)
{
  const char *path = ead_safetensors_get_path (file);
  g_autoptr(GArray) slots = model_slots (model, teacher_only);
  g_autoptr(GHashTable) expected = g_hash_table_new (g_str_hash, g_str_equal);
  g_auto(GStrv) names = NULL;

  for (guint i = 0; i < slots->len; i++)
    {
      const Slot *slot = &g_array_index (slots, Slot, i);

      g_hash_table_add (expected, slot->name);
      if (!ead_safetensors_has (file, slot->name))
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                       "%s: tensor %s is missing (an %s %s needs it)", path, slot->name,
                       ead_arch_name (model->arch), teacher_only ? "teacher bundle" : "bundle");
          return FALSE;
        }
      if (!ead_safetensors_read (file, slot->name, slot->n_dims, slot->shape, slot->data, error))
        return FALSE;
    }
  names = ead_safetensors_list (file);
  for (guint i = 0; names[i] != NULL; i++)
    if (!g_hash_table_contains (expected, names[i]))
      {
        g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                     "%s: unexpected tensor %s (not part of an %s %s)", path, names[i],
                     ead_arch_name (model->arch), teacher_only ? "teacher bundle" : "model");
        return FALSE;
      }
  return TRUE;
}

static const char *
metadata_require (EadSafetensors *file, const char *key, GError **error)
{
  const char *value = ead_safetensors_lookup_metadata (file, key);

  if (value == NULL)
    g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                 "%s: metadata key %s is missing; not an EfficientAD model bundle",
                 ead_safetensors_get_path (file), key);
  return value;
}

static gboolean
read_input_size (EadSafetensors *file, const char *key, int *size, GError **error)
{
  const char *text = metadata_require (file, key, error);
  gint64 value;

  if (text == NULL)
    return FALSE;
  if (!g_ascii_string_to_signed (text, 10, EAD_MIN_INPUT_SIZE, EAD_BUNDLE_MAX_INPUT_SIZE,
                                 &value, NULL))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: %s is '%s', expected an integer from %d to %d",
                   ead_safetensors_get_path (file), key, text, EAD_MIN_INPUT_SIZE,
                   EAD_BUNDLE_MAX_INPUT_SIZE);
      return FALSE;
    }
  *size = (int) value;
  return TRUE;
}

static gboolean
read_quantile (EadSafetensors *file, const char *key, double *quantile, GError **error)
{
  const char *text = metadata_require (file, key, error);
  char *end = NULL;
  double value;

  if (text == NULL)
    return FALSE;
  errno = 0;
  value = g_ascii_strtod (text, &end);
  if (end == text || *end != '\0' || errno == ERANGE || !isfinite (value))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: %s is '%s', expected a finite number", ead_safetensors_get_path (file),
                   key, text);
      return FALSE;
    }
  *quantile = value;
  return TRUE;
}

static gboolean
read_arch (EadSafetensors *file, EadArch *arch, GError **error)
{
  const char *path = ead_safetensors_get_path (file);
  const char *version = ead_safetensors_lookup_metadata (file, KEY_FORMAT_VERSION);
  const char *name;

  if (version != NULL && !g_str_equal (version, FORMAT_VERSION))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
                   "%s: bundle format version '%s'; this program reads version %s", path,
                   version, FORMAT_VERSION);
      return FALSE;
    }
  name = metadata_require (file, KEY_ARCH, error);
  if (name == NULL)
    return FALSE;
  if (g_str_equal (name, ead_arch_name (EAD_ARCH_SMALL)))
    *arch = EAD_ARCH_SMALL;
  else if (g_str_equal (name, ead_arch_name (EAD_ARCH_MEDIUM)))
    *arch = EAD_ARCH_MEDIUM;
  else
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
                   "%s: %s is '%s', expected %s or %s", path, KEY_ARCH, name,
                   ead_arch_name (EAD_ARCH_SMALL), ead_arch_name (EAD_ARCH_MEDIUM));
      return FALSE;
    }
  return TRUE;
}

static gboolean
is_field_key (const char *key)
{
  for (guint i = 0; i < G_N_ELEMENTS (field_keys); i++)
    if (g_str_equal (key, field_keys[i]))
      return TRUE;
  return FALSE;
}

static void
keep_extra_metadata (GHashTable *metadata, GHashTable *table)
{
  GHashTableIter iter;
  gpointer key, value;

  g_hash_table_iter_init (&iter, metadata);
  while (g_hash_table_iter_next (&iter, &key, &value))
    if (!is_field_key (key))
      g_hash_table_replace (table, g_strdup (key), g_strdup (value));
}

EadModel *
ead_bundle_read (const char *path, GError **error)
{
  g_autoptr(EadSafetensors) file = NULL;
  g_autoptr(EadModel) model = NULL;
  const char *content;
  EadArch arch;

  g_return_val_if_fail (path != NULL, NULL);

  file = ead_safetensors_open (path, error);
  if (file == NULL)
    return NULL;
  if (ead_safetensors_get_metadata (file) == NULL)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: the header has no __metadata__; not an EfficientAD model bundle", path);
      return NULL;
    }
  if (!read_arch (file, &arch, error))
    return NULL;
  content = ead_safetensors_lookup_metadata (file, EAD_MODEL_KEY_CONTENT);
  if (content != NULL && !g_str_equal (content, EAD_MODEL_CONTENT_TEACHER))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
                   "%s: %s is '%s'; this version reads only '%s' there", path,
                   EAD_MODEL_KEY_CONTENT, content, EAD_MODEL_CONTENT_TEACHER);
      return NULL;
    }
  model = ead_model_new (arch);
  if (!read_input_size (file, KEY_INPUT_HEIGHT, &model->input_height, error)
      || !read_input_size (file, KEY_INPUT_WIDTH, &model->input_width, error)
      || !read_quantile (file, KEY_Q_ST_A, &model->q_st_a, error)
      || !read_quantile (file, KEY_Q_ST_B, &model->q_st_b, error)
      || !read_quantile (file, KEY_Q_AE_A, &model->q_ae_a, error)
      || !read_quantile (file, KEY_Q_AE_B, &model->q_ae_b, error)
      || !read_tensors (file, model, content != NULL, error))
    return NULL;
  keep_extra_metadata (ead_safetensors_get_metadata (file), model->metadata);
  if (!ead_model_validate (model, path, error))
    return NULL;
  return g_steal_pointer (&model);
}

static int
compare_strings (const void *a, const void *b)
{
  return strcmp (*(const char *const *) a, *(const char *const *) b);
}

EadBundleInfo *
ead_bundle_read_info (const char *path, GError **error)
{
  g_autoptr(EadSafetensors) file = NULL;
  g_autoptr(GPtrArray) dtypes = g_ptr_array_new ();
  g_auto(GStrv) names = NULL;
  GHashTable *metadata;
  EadBundleInfo *info;

  g_return_val_if_fail (path != NULL, NULL);

  file = ead_safetensors_open (path, error);
  if (file == NULL)
    return NULL;
  info = g_new0 (EadBundleInfo, 1);
  info->metadata = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  metadata = ead_safetensors_get_metadata (file);
  if (metadata != NULL)
    {
      GHashTableIter iter;
      gpointer key, value;

      g_hash_table_iter_init (&iter, metadata);
      while (g_hash_table_iter_next (&iter, &key, &value))
        g_hash_table_replace (info->metadata, g_strdup (key), g_strdup (value));
    }
  info->file_size = ead_safetensors_get_file_size (file);
  names = ead_safetensors_list (file);
  for (guint i = 0; names[i] != NULL; i++)
    {
      const EadSafetensorsTensor *tensor = ead_safetensors_lookup (file, names[i]);

      info->n_tensors++;
      info->n_elements += tensor->n_elements;
      if (!g_ptr_array_find_with_equal_func (dtypes, tensor->dtype, g_str_equal, NULL))
        g_ptr_array_add (dtypes, (gpointer) tensor->dtype);
    }
  g_ptr_array_sort (dtypes, compare_strings);
  g_ptr_array_add (dtypes, NULL);
  info->dtypes = g_strjoinv (", ", (char **) dtypes->pdata);
  return info;
}

void
ead_bundle_info_free (EadBundleInfo *info)
{
  if (info == NULL)
    return;
  g_hash_table_unref (info->metadata);
  g_free (info->dtypes);
  g_free (info);
}

static void
set_formatted (EadSafetensorsWriter *writer, const char *key, double value)
{
  char buffer[G_ASCII_DTOSTR_BUF_SIZE];

  ead_safetensors_writer_set_metadata (writer, key,
                                       g_ascii_formatd (buffer, sizeof buffer, "%.17g", value));
}

/* The caller's metadata with the keys computed from the model on top. */
static void
set_bundle_metadata (EadSafetensorsWriter *writer, const EadModel *model)
{
  GHashTableIter iter;
  gpointer key, value;
  char number[G_ASCII_DTOSTR_BUF_SIZE];

  g_hash_table_iter_init (&iter, model->metadata);
  while (g_hash_table_iter_next (&iter, &key, &value))
    if (!g_str_equal (key, EAD_MODEL_KEY_CONTENT))  /* what the file holds: the writer's say */
      ead_safetensors_writer_set_metadata (writer, key, value);
  ead_safetensors_writer_set_metadata (writer, KEY_FORMAT_VERSION, FORMAT_VERSION);
  ead_safetensors_writer_set_metadata (writer, KEY_ARCH, ead_arch_name (model->arch));
  g_snprintf (number, sizeof number, "%d", model->input_height);
  ead_safetensors_writer_set_metadata (writer, KEY_INPUT_HEIGHT, number);
  g_snprintf (number, sizeof number, "%d", model->input_width);
  ead_safetensors_writer_set_metadata (writer, KEY_INPUT_WIDTH, number);
  set_formatted (writer, KEY_Q_ST_A, model->q_st_a);
  set_formatted (writer, KEY_Q_ST_B, model->q_st_b);
  set_formatted (writer, KEY_Q_AE_A, model->q_ae_a);
  set_formatted (writer, KEY_Q_AE_B, model->q_ae_b);
}

gboolean
ead_bundle_write (const EadModel *model, const char *path, GError **error)
{
  g_autoptr(GError) invalid = NULL;
  g_autoptr(EadSafetensorsWriter) writer = NULL;
  g_autoptr(GArray) slots = NULL;

  g_return_val_if_fail (model != NULL, FALSE);
  g_return_val_if_fail (path != NULL, FALSE);

  if (!ead_model_validate (model, path, &invalid))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID, "%s (not written)", invalid->message);
      return FALSE;
    }
  writer = ead_safetensors_writer_new ();
  set_bundle_metadata (writer, model);
  /* model_slots wants a mutable model only because the reader fills the same slots */
  slots = model_slots ((EadModel *) model, FALSE);
  for (guint i = 0; i < slots->len; i++)
    {
      const Slot *slot = &g_array_index (slots, Slot, i);
      ead_safetensors_writer_add (writer, slot->name, slot->n_dims, slot->shape, slot->data);
    }
  return ead_safetensors_writer_write (writer, path, error);
}

/* The teacher as fp16 will hold it: every weight rounded to the nearest half. */
static EadNet *
round_to_half (const EadNet *net)
{
  EadNet *rounded = ead_net_copy (net);

  for (int i = 0; i < rounded->n_layers; i++)
    if (rounded->layers[i].kind == EAD_LAYER_CONV)
      {
        size_t n = ead_layer_weight_count (&rounded->layers[i]);

        for (size_t k = 0; k < n; k++)
          rounded->weight[i][k] = (float) (_Float16) rounded->weight[i][k];
        for (int k = 0; k < rounded->layers[i].out_channels; k++)
          rounded->bias[i][k] = (float) (_Float16) rounded->bias[i][k];
      }
  return rounded;
}

gboolean
ead_bundle_write_teacher (EadModel *model, const char *path, gboolean half,
                          GError **error)
{
  g_autoptr(EadSafetensorsWriter) writer = NULL;
  g_autoptr(GArray) slots = NULL;
  g_autoptr(EadNet) rounded = NULL;
  g_autofree char *digest = NULL;
  EadModel stored;

  g_return_val_if_fail (model != NULL, FALSE);
  g_return_val_if_fail (path != NULL, FALSE);

  /* a weight that fp16 cannot hold, or no number at all, is refused, not stored as inf */
  slots = model_slots (model, TRUE);
  for (guint i = 0; i < slots->len; i++)
    {
      const Slot *slot = &g_array_index (slots, Slot, i);
      guint64 count = 1;

      for (int d = 0; d < slot->n_dims; d++)
        count *= (guint64) slot->shape[d];
      for (guint64 k = 0; k < count; k++)
        if (!isfinite (slot->data[k]) || (half && fabsf (slot->data[k]) > EAD_HALF_MAX))
          {
            g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                         "%s: %s[%" G_GUINT64_FORMAT "] is %g, which %s (not written)", path,
                         slot->name, k, slot->data[k],
                         isfinite (slot->data[k]) ? "fp16 cannot hold" : "is not a number");
            return FALSE;
          }
    }
  stored = *model;
  if (half)
    stored.teacher = rounded = round_to_half (model->teacher);
  digest = ead_net_digest (stored.teacher);
  g_hash_table_insert (model->metadata, g_strdup ("ead.teacher.sha256"), g_strdup (digest));
  writer = ead_safetensors_writer_new ();
  set_bundle_metadata (writer, model);
  ead_safetensors_writer_set_metadata (writer, EAD_MODEL_KEY_CONTENT, EAD_MODEL_CONTENT_TEACHER);
  ead_safetensors_writer_set_metadata (writer, "ead.teacher.sha256", digest);
  g_array_unref (g_steal_pointer (&slots));
  slots = model_slots (&stored, TRUE);
  for (guint i = 0; i < slots->len; i++)
    {
      const Slot *slot = &g_array_index (slots, Slot, i);

      if (half)
        ead_safetensors_writer_add_half (writer, slot->name, slot->n_dims, slot->shape,
                                         slot->data);
      else
        ead_safetensors_writer_add (writer, slot->name, slot->n_dims, slot->shape, slot->data);
    }
  return ead_safetensors_writer_write (writer, path, error);
}
