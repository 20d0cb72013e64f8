/* ead-model.h: an EfficientAD model: teacher, student and autoencoder weights plus every
 * number inference needs (teacher channel mean/std, the four map quantiles).
 *
 * Files: core/io/ead-bundle.h reads and writes models as *.ead.safetensors.
 */
#pragma once

#include <glib.h>

#include "ead-network.h"

G_BEGIN_DECLS

typedef enum {
  EAD_ARCH_SMALL,   /* EfficientAD-S: PDN-small teacher and student */
  EAD_ARCH_MEDIUM,  /* EfficientAD-M: PDN-medium */
} EadArch;

typedef struct {
  EadArch arch;
  int input_height;  /* network input, 256 x 256 by default */
  int input_width;
  EadNet *teacher;   /* 384 outputs */
  EadNet *student;   /* 768 outputs: 0..383 predict the teacher, 384..767 the autoencoder */
  EadNet *autoencoder;
  float teacher_mean[EAD_TEACHER_CHANNELS];
  float teacher_std[EAD_TEACHER_CHANNELS];
  double q_st_a, q_st_b;  /* 0.9 and 0.995 quantiles of the raw student-teacher map */
  double q_ae_a, q_ae_b;  /* the same for the autoencoder map */
  GHashTable *metadata;   /* further "ead.*" strings kept from the bundle (owned) */
} EadModel;

/* A model with zero weights, teacher mean 0, std 1 and quantiles (0, 1). */
EadModel *ead_model_new (EadArch arch);
void ead_model_free (EadModel *model);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (EadModel, ead_model_free)

/* Seeded random networks (PyTorch's default Conv2d initialisation, see
 * ead_net_init_random) for tests and demos until a trained model exists.  Every tensor
 * has its own stream, keyed by the seed and the tensor's bundle name. */
void ead_model_init_random (EadModel *model, guint64 seed);

const char *ead_arch_name (EadArch arch);  /* "efficientad-s", "efficientad-m" */
/* Accepts s, m, small, medium, efficientad-s, efficientad-m. */
gboolean ead_arch_parse (const char *text, EadArch *arch, GError **error);

/* A teacher only (ead teacher import/pretrain; ead-bundle.h): metadata[EAD_MODEL_KEY_CONTENT]
 * is EAD_MODEL_CONTENT_TEACHER, the student and autoencoder are not trained. */
#define EAD_MODEL_KEY_CONTENT "ead.bundle.content"
#define EAD_MODEL_CONTENT_TEACHER "teacher"
gboolean ead_model_is_teacher_only (const EadModel *model);

/* Checks what inference divides by: every teacher std > 0 and finite, q_b > q_a. */
gboolean ead_model_validate (const EadModel *model, const char *name_for_errors, GError **error);

G_END_DECLS
