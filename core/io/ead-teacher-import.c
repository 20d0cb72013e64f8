/* ead-teacher-import.c: key mapping, shape checks and provenance for imported teachers
 * (see ead-teacher-import.h). */
#include "ead-teacher-import.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <glib/gstdio.h>

#include "ead-error.h"
#include "ead-torch-checkpoint.h"

static const EadTeacherFormat formats[] = { EAD_TEACHER_FORMAT_NELSON,
                                            EAD_TEACHER_FORMAT_ANOMALIB };

const char *
ead_teacher_format_name (EadTeacherFormat format)
{
  return format == EAD_TEACHER_FORMAT_NELSON ? "nelson" : "anomalib";
}

static const char *
format_title (EadTeacherFormat format)
{
  return format == EAD_TEACHER_FORMAT_NELSON ? "nelson1425's" : "anomalib's";
}

static const char *
net_title (const EadNet *net)
{
  return net->kind == EAD_NET_PDN_SMALL ? "PDN-small" : "PDN-medium";
}

/* The state_dict keys of net's conv entries in the given naming: weight, bias, weight, ... */
static GPtrArray *
expected_keys (const EadNet *net, EadTeacherFormat format)
{
  GPtrArray *keys = g_ptr_array_new_with_free_func (g_free);
  int conv = 0;

  for (int i = 0; i < net->n_layers; i++)
    if (net->layers[i].kind == EAD_LAYER_CONV)
      {
        conv++;
        if (format == EAD_TEACHER_FORMAT_NELSON)
          {
            g_ptr_array_add (keys, g_strdup_printf ("%d.weight", i));
            g_ptr_array_add (keys, g_strdup_printf ("%d.bias", i));
          }
        else
          {
            g_ptr_array_add (keys, g_strdup_printf ("conv%d.weight", conv));
            g_ptr_array_add (keys, g_strdup_printf ("conv%d.bias", conv));
          }
      }
  return keys;
}

static guint
count_present (const EadTorchCheckpoint *checkpoint, GPtrArray *keys)
{
  guint present = 0;

  for (guint i = 0; i < keys->len; i++)
    if (ead_torch_checkpoint_lookup (checkpoint, keys->pdata[i]) != NULL)
      present++;
  return present;
}

/* Exactly these keys, no more. */
static gboolean
keys_match (const EadTorchCheckpoint *checkpoint, GPtrArray *keys)
{
  return checkpoint->tensors->len == keys->len && count_present (checkpoint, keys) == keys->len;
}

/* Up to a few names, quoted, for messages. */
static void
append_names (GString *text, GPtrArray *names)
{
  const guint shown = MIN (names->len, 6);

  for (guint i = 0; i < shown; i++)
    g_string_append_printf (text, "%s'%s'", i > 0 ? ", " : "", (const char *) names->pdata[i]);
  if (shown < names->len)
    g_string_append_printf (text, ", ... (%u in all)", names->len);
}

/* Says why the keys are not those of a teacher of net's kind, in the most useful way:
 * the other size, the keys missing in the closer naming, or both namings. */
static void
explain_keys (const EadTorchCheckpoint *checkpoint, const EadNet *net, GError **error)
{
  g_autoptr (EadNet) other = ead_net_new (net->kind == EAD_NET_PDN_SMALL ? EAD_NET_PDN_MEDIUM
                                                                         : EAD_NET_PDN_SMALL,
                                          EAD_TEACHER_CHANNELS, FALSE);
  g_autoptr (GPtrArray) found = g_ptr_array_new ();
  g_autoptr (GString) text = g_string_new (NULL);
  g_autoptr (GPtrArray) best = NULL;
  EadTeacherFormat best_format = EAD_TEACHER_FORMAT_NELSON;
  guint best_count = 0;

  for (guint i = 0; i < G_N_ELEMENTS (formats); i++)
    {
      g_autoptr (GPtrArray) keys = expected_keys (other, formats[i]);

      if (keys_match (checkpoint, keys))
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                       "%s: this is a %s teacher (%s naming), not a %s one: use --model %s",
                       checkpoint->path, net_title (other), ead_teacher_format_name (formats[i]),
                       net_title (net), other->kind == EAD_NET_PDN_SMALL ? "s" : "m");
          return;
        }
    }
  for (guint i = 0; i < G_N_ELEMENTS (formats); i++)
    {
      GPtrArray *keys = expected_keys (net, formats[i]);
      guint count = count_present (checkpoint, keys);

      if (count > best_count)
        {
          g_clear_pointer (&best, g_ptr_array_unref);
          best = keys;
          best_count = count;
          best_format = formats[i];
        }
      else
        g_ptr_array_unref (keys);
    }
  for (guint i = 0; i < checkpoint->tensors->len; i++)
    g_ptr_array_add (found, ((EadTorchTensor *) checkpoint->tensors->pdata[i])->name);

  if (best == NULL)
    {
      g_autoptr (GPtrArray) nelson = expected_keys (net, EAD_TEACHER_FORMAT_NELSON);
      g_autoptr (GPtrArray) anomalib = expected_keys (net, EAD_TEACHER_FORMAT_ANOMALIB);

      g_string_append_printf (text, "%s: not an EfficientAD %s teacher: expected %s keys (",
                              checkpoint->path, net_title (net),
                              format_title (EAD_TEACHER_FORMAT_NELSON));
      g_ptr_array_set_size (nelson, 3);
      append_names (text, nelson);
      g_string_append_printf (text, ", ...) or %s (", format_title (EAD_TEACHER_FORMAT_ANOMALIB));
      g_ptr_array_set_size (anomalib, 3);
      append_names (text, anomalib);
      g_string_append (text, ", ...); the state_dict has ");
      append_names (text, found);
    }
  else
    {
      g_autoptr (GPtrArray) missing = g_ptr_array_new ();
      g_autoptr (GPtrArray) unexpected = g_ptr_array_new ();

      for (guint i = 0; i < best->len; i++)
        if (ead_torch_checkpoint_lookup (checkpoint, best->pdata[i]) == NULL)
          g_ptr_array_add (missing, best->pdata[i]);
      for (guint i = 0; i < found->len; i++)
        if (!g_ptr_array_find_with_equal_func (best, found->pdata[i], g_str_equal, NULL))
          g_ptr_array_add (unexpected, found->pdata[i]);
      g_string_append_printf (text, "%s: not a %s teacher in %s naming:", checkpoint->path,
                              net_title (net), format_title (best_format));
      if (missing->len > 0)
        {
          g_string_append (text, " missing ");
          append_names (text, missing);
        }
      if (unexpected->len > 0)
        {
          g_string_append_printf (text, "%s unexpected ", missing->len > 0 ? ";" : "");
          append_names (text, unexpected);
        }
    }
  g_set_error_literal (error, EAD_ERROR, EAD_ERROR_FORMAT, text->str);
}

/* Copies a tensor into dst after checking its shape and values. */
static gboolean
take_tensor (const EadTorchCheckpoint *checkpoint, const char *key, const EadNet *net,
             int n_dims, const gint64 *shape, float *dst, GError **error)
{
  const EadTorchTensor *tensor = ead_torch_checkpoint_lookup (checkpoint, key);

  if (tensor->n_dims != n_dims || memcmp (tensor->shape, shape, n_dims * sizeof *shape) != 0)
    {
      g_autofree char *found = ead_torch_shape_string (tensor->n_dims, tensor->shape);
      g_autofree char *wanted = ead_torch_shape_string (n_dims, shape);

      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: tensor '%s' has shape %s; a %s teacher needs %s", checkpoint->path, key,
                   found, net_title (net), wanted);
      return FALSE;
    }
  for (guint64 i = 0; i < tensor->n_elements; i++)
    if (!isfinite (tensor->data[i]))
      {
        g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                     "%s: tensor '%s' holds a NaN or infinity (element %" G_GUINT64_FORMAT ")",
                     checkpoint->path, key, i);
        return FALSE;
      }
  memcpy (dst, tensor->data, tensor->n_elements * sizeof *dst);
  return TRUE;
}

static char *
file_sha256 (const char *path, GError **error)
{
  g_autoptr (GChecksum) checksum = g_checksum_new (G_CHECKSUM_SHA256);
  g_autofree guchar *buffer = g_malloc (1 << 20);
  FILE *file = g_fopen (path, "rb");
  size_t n;
  gboolean failed;

  if (file == NULL)
    {
      int saved = errno;

      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot open the file: %s", path,
                   g_strerror (saved));
      return NULL;
    }
  while ((n = fread (buffer, 1, 1 << 20, file)) > 0)
    g_checksum_update (checksum, buffer, n);
  failed = ferror (file);
  fclose (file);
  if (failed)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot read the file", path);
      return NULL;
    }
  return g_strdup (g_checksum_get_string (checksum));
}

/* The element types stored, in order of first appearance: "float16", "float32,float16". */
static char *
stored_dtypes (const EadTorchCheckpoint *checkpoint)
{
  GString *text = g_string_new (NULL);
  gboolean seen[EAD_TORCH_N_DTYPES] = { FALSE };

  for (guint i = 0; i < checkpoint->tensors->len; i++)
    {
      EadTorchDtype dtype = ((const EadTorchTensor *) checkpoint->tensors->pdata[i])->dtype;

      if (!seen[dtype])
        g_string_append_printf (text, "%s%s", text->len > 0 ? "," : "",
                                ead_torch_dtype_name (dtype));
      seen[dtype] = TRUE;
    }
  return g_string_free (text, FALSE);
}

EadModel *
ead_teacher_import (const char *path, EadArch arch, GError **error)
{
  g_autoptr (EadTorchCheckpoint) checkpoint = NULL;
  g_autoptr (EadModel) model = ead_model_new (arch);
  g_autoptr (GPtrArray) keys = NULL;
  g_autofree char *digest = NULL;
  EadNet *teacher = model->teacher;
  EadTeacherFormat format = EAD_TEACHER_FORMAT_NELSON;
  guint key = 0;

  checkpoint = ead_torch_checkpoint_read (path, error);
  if (checkpoint == NULL)
    return NULL;
  for (guint i = 0; i < G_N_ELEMENTS (formats) && keys == NULL; i++)
    {
      GPtrArray *candidate = expected_keys (teacher, formats[i]);

      if (keys_match (checkpoint, candidate))
        {
          keys = candidate;
          format = formats[i];
        }
      else
        g_ptr_array_unref (candidate);
    }
  if (keys == NULL)
    {
      explain_keys (checkpoint, teacher, error);
      return NULL;
    }

  for (int i = 0; i < teacher->n_layers; i++)
    {
      const EadLayer *layer = &teacher->layers[i];
      const gint64 weight_shape[4] = { layer->out_channels, layer->in_channels, layer->kernel,
                                       layer->kernel };
      const gint64 bias_shape[1] = { layer->out_channels };

      if (layer->kind != EAD_LAYER_CONV)
        continue;
      if (!take_tensor (checkpoint, keys->pdata[key], teacher, 4, weight_shape,
                        teacher->weight[i], error)
          || !take_tensor (checkpoint, keys->pdata[key + 1], teacher, 1, bias_shape,
                           teacher->bias[i], error))
        return NULL;
      key += 2;
    }

  digest = file_sha256 (path, error);
  if (digest == NULL)
    return NULL;
  g_hash_table_insert (model->metadata, g_strdup ("ead.teacher.source"),
                       g_path_get_basename (path));
  g_hash_table_insert (model->metadata, g_strdup ("ead.teacher.file_sha256"),
                       g_steal_pointer (&digest));
  g_hash_table_insert (model->metadata, g_strdup ("ead.teacher.sha256"),
                       ead_net_digest (teacher));
  g_hash_table_insert (model->metadata, g_strdup ("ead.teacher.format"),
                       g_strdup (ead_teacher_format_name (format)));
  g_hash_table_insert (model->metadata, g_strdup ("ead.teacher.dtype"),
                       stored_dtypes (checkpoint));
  g_hash_table_insert (model->metadata, g_strdup ("ead.weights"),
                       g_strdup ("an imported teacher only; train a model with it "
                                 "(ead train --teacher)"));
  return g_steal_pointer (&model);
}
