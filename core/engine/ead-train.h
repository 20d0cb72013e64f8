/* ead-train.h: EfficientAD training (spec §3) of the student and the autoencoder
 * against a frozen teacher, reproducible, resumable and cancellable.
 *
 * Every random choice of step s (which image, which colour jitter, dropout masks, which
 * penalty image) is drawn from a counter-based generator keyed by (seed, s), so a run
 * resumed from a checkpoint continues exactly as the uninterrupted run would: with the
 * same seed, machine and thread count the final bundle is bit-identical.
 */
#pragma once

#include <glib.h>

#include "ead-backend.h"
#include "ead-dataset.h"
#include "ead-model.h"
#include "ead-safetensors.h"

G_BEGIN_DECLS

typedef struct _EadTrainer EadTrainer;

typedef struct {
  int steps;                 /* 70,000 in the paper */
  guint64 seed;              /* student/AE initialisation and every random draw */
  int threads;               /* 0: all cores */
  const char *device;        /* "cpu" (default) */
  EadPrecision precision;    /* fp32 (default) or bf16: mixed precision, float32 master
                              * weights, Adam state, losses and quantiles */
  int checkpoint_every;      /* steps between checkpoints; 0: none */
  const char *checkpoint_path;  /* where checkpoints go (atomically replaced) */
  gboolean resume;           /* continue from checkpoint_path when it exists */
  double learning_rate;      /* 1e-4; x0.1 from 95 % of the steps on */
  double weight_decay;       /* 1e-5, L2 added to the gradient (Adam, not AdamW) */
} EadTrainOptions;

void ead_train_options_init (EadTrainOptions *options);

typedef enum {
  EAD_TRAIN_PHASE_TEACHER_STATS,
  EAD_TRAIN_PHASE_TRAINING,
  EAD_TRAIN_PHASE_QUANTILES,
} EadTrainPhase;

typedef struct {
  EadTrainPhase phase;
  int step;                  /* steps done (training), or images done (other phases) */
  int steps;                 /* of this phase */
  double loss_total, loss_hard, loss_penalty, loss_ae, loss_stae;  /* of the last step */
  double elapsed_s;          /* since ead_trainer_run started */
  double eta_s;              /* estimated seconds until the whole run ends */
  gboolean resumed;          /* training continued from a checkpoint */
} EadTrainProgress;

typedef void (*EadTrainProgressFunc) (const EadTrainProgress *progress, gpointer user_data);

/* teacher: a model whose teacher network is used (frozen); its student, autoencoder and
 * normalisation are ignored.  data: the good images; penalty: general photos for the
 * penalty loss at the network input size, or NULL for none.  All three are borrowed
 * and must outlive the trainer. */
EadTrainer *ead_trainer_new (const EadModel *teacher,
                             const EadDataset *data,
                             const EadDataset *penalty,
                             const EadTrainOptions *options,
                             GError **error);
void ead_trainer_free (EadTrainer *trainer);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (EadTrainer, ead_trainer_free)

/* Runs to the end and returns the trained model (weights, teacher statistics, map
 * quantiles from the validation images, suggested threshold, training metadata).
 * progress is called after every step (keep it cheap; it runs on the training thread).
 * When *cancel becomes non-zero the run stops within one step, writes a checkpoint if
 * it has a checkpoint path, and fails with G_IO_ERROR_CANCELLED. */
EadModel *ead_trainer_run (EadTrainer *trainer,
                           EadTrainProgressFunc progress,
                           gpointer user_data,
                           const gint *cancel,
                           GError **error);

/* The precision the trainer runs in (never AUTO), and what the backend chose for each
 * primitive of its networks, one line each. */
EadPrecision ead_trainer_get_precision (EadTrainer *trainer);
EadBackend *ead_trainer_get_backend (EadTrainer *trainer);
char *ead_trainer_describe (EadTrainer *trainer);

/* Loss history so far: steps x EAD_TRAIN_LOSSES floats (total, hard, penalty, ae, stae). */
#define EAD_TRAIN_LOSSES 5
const float *ead_trainer_get_history (EadTrainer *trainer, int *steps);

/* For tests and tools.  The model being trained (student and autoencoder change in
 * place; teacher_mean/std may be set before stepping) and the gradient accumulators. */
void ead_trainer_get_state (EadTrainer *trainer,
                            EadModel **model,
                            EadNet **grad_student,
                            EadNet **grad_autoencoder);

/* One training step on given inputs, x and its augmented copy (3 x H x W each,
 * normalised), with the given dropout seed, without the penalty pass, at the learning
 * rate of step 0.  With apply FALSE the gradients stay in the accumulators and nothing
 * is updated (nor cleared: call ead_net_zero on them before the next step). */
gboolean ead_trainer_step_inputs (EadTrainer *trainer,
                                  const float *x,
                                  const float *x_augmented,
                                  guint64 dropout_seed,
                                  gboolean apply,
                                  float losses[EAD_TRAIN_LOSSES],
                                  GError **error);

/* Shared with the teacher distillation (ead-pretrain.h). */

/* One step of PyTorch's Adam (betas 0.9 and 0.999, eps 1e-8, the single-tensor path of
 * torch 1.13, scalars rounded to float as PyTorch does) with L2 weight decay added to the
 * gradient, on every convolution weight and bias of net.  m and v are the moments (same
 * layout as net), t the 1-based step number. */
void ead_adam_step_net (EadNet *net,
                        const EadNet *grad,
                        EadNet *m,
                        EadNet *v,
                        double lr,
                        double weight_decay,
                        int t);

/* A network's tensors in a checkpoint: "<prefix>.<layer>.weight" (OIHW) and ".bias" for
 * every convolution; reading checks every shape (EAD_ERROR_FORMAT naming the tensor). */
void ead_checkpoint_add_net (EadSafetensorsWriter *writer, const char *prefix, const EadNet *net);
/* Opens the checkpoint at path and checks that it belongs to this run: its
 * ead.checkpoint.run must equal identity and its ead.checkpoint.step be 1..max_step,
 * returned in *step.  what names the kind of run in messages ("training"). */
EadSafetensors *ead_checkpoint_open (const char *path,
                                     const char *identity,
                                     int max_step,
                                     const char *what,
                                     int *step,
                                     GError **error);
gboolean ead_checkpoint_read_net (EadSafetensors *file,
                                  const char *prefix,
                                  EadNet *net,
                                  GError **error);

G_END_DECLS
