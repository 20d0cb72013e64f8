#include "ead-model.h"

#include <math.h>

#include "ead-error.h"

static EadNetKind
pdn_kind (EadArch arch)
{
  return arch == EAD_ARCH_SMALL ? EAD_NET_PDN_SMALL : EAD_NET_PDN_MEDIUM;
}

EadModel *
ead_model_new (EadArch arch)
{
  EadModel *model = g_new0 (EadModel, 1);

  model->arch = arch;
  model->input_height = 256;
  model->input_width = 256;
  model->teacher = ead_net_new (pdn_kind (arch), EAD_TEACHER_CHANNELS, FALSE);
  model->student = ead_net_new (pdn_kind (arch), 2 * EAD_TEACHER_CHANNELS, FALSE);
  model->autoencoder = ead_net_new (EAD_NET_AUTOENCODER, EAD_TEACHER_CHANNELS, FALSE);
  for (int c = 0; c < EAD_TEACHER_CHANNELS; c++)
    model->teacher_std[c] = 1.0f;
  model->q_st_b = 1.0;
  model->q_ae_b = 1.0;
  model->metadata = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  return model;
}

void
ead_model_free (EadModel *model)
{
  if (model == NULL)
    return;
  ead_net_free (model->teacher);
  ead_net_free (model->student);
  ead_net_free (model->autoencoder);
  g_hash_table_unref (model->metadata);
  g_free (model);
}

void
ead_model_init_random (EadModel *model, guint64 seed)
{
  ead_net_init_random (model->teacher, "teacher", seed);
  ead_net_init_random (model->student, "student", seed);
  ead_net_init_random (model->autoencoder, "autoencoder", seed);
}

const char *
ead_arch_name (EadArch arch)
{
  return arch == EAD_ARCH_SMALL ? "efficientad-s" : "efficientad-m";
}

gboolean
ead_arch_parse (const char *text, EadArch *arch, GError **error)
{
  if (g_str_equal (text, "s") || g_str_equal (text, "small") || g_str_equal (text, "efficientad-s"))
    *arch = EAD_ARCH_SMALL;
  else if (g_str_equal (text, "m") || g_str_equal (text, "medium")
           || g_str_equal (text, "efficientad-m"))
    *arch = EAD_ARCH_MEDIUM;
  else
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "unknown model '%s' (expected s or m)", text);
      return FALSE;
    }
  return TRUE;
}

gboolean
ead_model_validate (const EadModel *model, const char *name, GError **error)
{
  for (int c = 0; c < EAD_TEACHER_CHANNELS; c++)
    if (!(model->teacher_std[c] > 0.0f) || !isfinite (model->teacher_std[c])
        || !isfinite (model->teacher_mean[c]))
      {
        g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                     "%s: teacher channel %d has mean %g and std %g; the std must be "
                     "positive and finite",
                     name, c, model->teacher_mean[c], model->teacher_std[c]);
        return FALSE;
      }
  if (!(model->q_st_b > model->q_st_a) || !(model->q_ae_b > model->q_ae_a)
      || !isfinite (model->q_st_b) || !isfinite (model->q_ae_b))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: degenerate map quantiles (student-teacher %g..%g, autoencoder %g..%g); "
                   "the 0.995 quantile must exceed the 0.9 quantile",
                   name, model->q_st_a, model->q_st_b, model->q_ae_a, model->q_ae_b);
      return FALSE;
    }
  if (model->input_height < EAD_MIN_INPUT_SIZE || model->input_width < EAD_MIN_INPUT_SIZE)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: network input %dx%d is smaller than the minimum %dx%d", name,
                   model->input_width, model->input_height, EAD_MIN_INPUT_SIZE,
                   EAD_MIN_INPUT_SIZE);
      return FALSE;
    }
  return TRUE;
}

gboolean
ead_model_is_teacher_only (const EadModel *model)
{
  g_return_val_if_fail (model != NULL, FALSE);

  return model->metadata != NULL
         && g_strcmp0 (g_hash_table_lookup (model->metadata, EAD_MODEL_KEY_CONTENT),
                       EAD_MODEL_CONTENT_TEACHER) == 0;
}
