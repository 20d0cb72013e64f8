/* ead-pretrain.h: teacher distillation (spec §5): a PDN (S or M, 384 channels, padding
 * on) learns to reproduce PatchCore-style aggregated features Ψ of a frozen torchvision
 * ResNet (ead-backbone.h) on general photos.  The result is a teacher bundle for
 * `ead train --teacher`: the same weights in the teacher network without padding, which
 * is how EfficientAD uses a teacher (spec §1).
 *
 * Ψ for one image: the backbone runs on the image at twice the PDN input size and gives
 * one feature map per chosen level (layer2 and layer3 by default); then
 *   1. each level's 3x3 neighbourhoods are unfolded (stride 1, zero padding 1) into C*9
 *      vectors ordered (c, ky, kx);
 *   2. the components of every level whose grid is not the PDN output grid are resized to
 *      it, bilinearly with align_corners=False (the deeper level for the default levels,
 *      whose layer2 grid is the PDN grid: 64x64 for a 256x256 PDN input);
 *   3. each location's vector is pooled to 1024 values (adaptive_avg_pool1d: window i is
 *      [floor(i L / 1024), ceil((i + 1) L / 1024)) of the L = C*9 values);
 *   4. the levels' vectors are stacked (1024 per level, shallowest first) and pooled the
 *      same way to 384 values: the target's channels.
 * Bilinear resizing and pooling act on different axes and are both linear, so resizing
 * after the pooling of step 3 (1024 planes instead of C*9) gives the same values up to
 * float rounding; that is what the aggregator does.
 *
 * Training (spec §5): the target is normalised per channel with the mean and population
 * std of Ψ over the first stats_images samples (two passes, double accumulation); the
 * loss is the mean over all elements of the batch of (Ψ_norm - PDN(x))^2; Adam with L2
 * weight decay (PyTorch's, as ead-train.h), no schedule.  The batch runs image by image
 * through a batch-1 executable, the gradients of its images accumulating, so memory is
 * that of one image whatever the batch.
 *
 * Samples: sample k of a stream (training: k = step * batch + b; statistics: k = 0..N-1,
 * a stream of its own) takes image order[k % n] of a seeded permutation of the n images
 * (a new one each epoch k / n), decodes it at full size and draws five values u0..u4 from
 * ead_random_uniform (key, 5 k + i), key = ead_random_key (seed, "pretrain.sample") or
 * ("pretrain.stats.sample"):
 *   - a crop with the aspect of the PDN input: its height is
 *     max (1, round ((0.5 + 0.5 u0) * min (h, w * H / W))) pixels (at most h), its width
 *     max (1, min (w, round (height * W / H))), its corner x0 = floor (u1 (w - width + 1)),
 *     y0 = floor (u2 (h - height + 1)); so the crop side is 50 % to 100 % of the largest
 *     such crop, anywhere in the image;
 *   - mirrored left-right when u3 < 0.5;
 *   - grey (PIL's convert('L'), replicated to RGB) when u4 < 0.1, for both views;
 *   - resized with PIL's bilinear (ead_image_resize_bilinear) to 2H x 2W for the backbone
 *     and to H x W for the PDN, both ImageNet-normalised (ead_image_to_input).
 * An image that cannot be decoded is replaced by the next one in path order that can, and
 * listed (ead_pretrainer_get_skipped).  Every draw depends only on the seed and the sample
 * number, so a run resumed from a checkpoint continues exactly as the uninterrupted run:
 * with the same machine and thread count the teacher is bit-identical.
 */
#pragma once

#include <glib.h>

#include "ead-backbone.h"
#include "ead-backend.h"
#include "ead-model.h"

G_BEGIN_DECLS

#define EAD_PATCH_LEVEL_DIM 1024

/* ---- Ψ ---- */

typedef struct _EadPatchAggregator EadPatchAggregator;

/* Ψ (steps 1-4 above) for features of n_levels levels, levels[i] their channels and
 * grids (shallowest first), onto an out_height x out_width grid with out_channels
 * channels.  EAD_ERROR_INVALID for no level, more than EAD_BACKBONE_LEVELS, or an empty
 * shape. */
EadPatchAggregator *ead_patch_aggregator_new (int n_levels,
                                              const EadShape *levels,
                                              int out_height,
                                              int out_width,
                                              int out_channels,
                                              GError **error);
void ead_patch_aggregator_free (EadPatchAggregator *aggregator);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (EadPatchAggregator, ead_patch_aggregator_free)

/* features[i]: level i of one image, CHW; out: out_channels x out_height x out_width.
 * No allocation. */
void ead_patch_aggregator_run (EadPatchAggregator *aggregator,
                               const float *const *features,
                               float *out);

/* ---- distillation ---- */

typedef struct {
  EadArch arch;              /* PDN-small or PDN-medium */
  int input_height;          /* the PDN input, 256 x 256; the backbone sees twice that */
  int input_width;
  guint levels;              /* backbone levels, a mask (ead_backbone_parse_levels): layer2,layer3 */
  const char *images_dir;    /* general photos, searched recursively, any size */
  int steps;                 /* 60,000 in the paper */
  int batch;                 /* 16 */
  int stats_images;          /* samples for the target mean and std: 1000 (the paper: 10,000) */
  guint64 seed;              /* PDN initialisation and every random draw */
  int threads;               /* 0: all cores */
  const char *device;        /* "cpu" (default) */
  EadPrecision precision;    /* of the PDN's training executable; the backbone runs fp32 */
  int checkpoint_every;      /* steps between checkpoints; 0: none */
  const char *checkpoint_path;  /* where checkpoints go (atomically replaced) */
  gboolean resume;           /* continue from checkpoint_path when it exists */
  double learning_rate;      /* 1e-4 */
  double weight_decay;       /* 1e-5, L2 added to the gradient (Adam, not AdamW) */
  const char *command;       /* recorded in the bundle when set (the command line) */
} EadPretrainOptions;

void ead_pretrain_options_init (EadPretrainOptions *options);

typedef enum {
  EAD_PRETRAIN_PHASE_STATISTICS,
  EAD_PRETRAIN_PHASE_TRAINING,
} EadPretrainPhase;

typedef struct {
  EadPretrainPhase phase;
  int step;                  /* steps done (training), or samples done (both passes) */
  int steps;                 /* of this phase */
  double loss;               /* of the last step */
  double elapsed_s;          /* since ead_pretrainer_run started */
  double eta_s;              /* seconds until the run ends; while computing statistics,
                              * until they are done */
  gboolean resumed;          /* training continued from a checkpoint */
} EadPretrainProgress;

typedef void (*EadPretrainProgressFunc) (const EadPretrainProgress *progress,
                                         gpointer user_data);

typedef struct _EadPretrainer EadPretrainer;

/* Lists the images (EAD_ERROR_IO for a missing folder, EAD_ERROR_INVALID when it holds
 * none), hashes the backbone's file, compiles the backbone for the chosen levels and the
 * PDN for training.  The backbone is borrowed only during the call.  EAD_ERROR_INVALID
 * for bad options (no level, a batch, step or sample count below 1, an input the PDN has
 * no output for). */
EadPretrainer *ead_pretrainer_new (const EadBackbone *backbone,
                                   const EadPretrainOptions *options,
                                   GError **error);
void ead_pretrainer_free (EadPretrainer *pretrainer);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (EadPretrainer, ead_pretrainer_free)

/* Runs to the end and returns the teacher bundle's model: the PDN weights as its teacher
 * (padding off), student and autoencoder zero, teacher mean 0 and std 1, quantiles (0, 1),
 * input size that of the PDN (at least EAD_MIN_INPUT_SIZE: a bundle's input is the one
 * ead train starts from), and the metadata
 *   ead.teacher.source, ead.teacher.sha256 (as ead train records them), ead.teacher.format
 *   ("ead-pretrain"), ead.weights, and ead.pretrain.*: backbone (file name), backbone.sha256
 *   (of the file), backbone.arch, layers, backbone_input and input (HxW), images (the
 *   folder), images.count, images.snapshot, images.unreadable, stats_images, steps, seed,
 *   batch, learning_rate, weight_decay, precision, loss.final (mean of the last 100 steps),
 *   loss.last, command (when given).
 * progress is called after every step and statistics sample.  When *cancel becomes
 * non-zero the run stops within one step (one sample while computing statistics), writes
 * a checkpoint when it trained since the last one and has a checkpoint path, and fails
 * with G_IO_ERROR_CANCELLED.  A checkpoint of another run (other options, backbone or
 * images) is refused with EAD_ERROR_INVALID. */
EadModel *ead_pretrainer_run (EadPretrainer *pretrainer,
                              EadPretrainProgressFunc progress,
                              gpointer user_data,
                              const gint *cancel,
                              GError **error);

/* The teacher of a distillation checkpoint (the .checkpoint file next to a running or
 * interrupted run's output), to try it before the run ends: the model as
 * ead_pretrainer_run returns it, with ead.teacher.source naming the step and the run,
 * ead.pretrain.run (the run's identity), ead.pretrain.checkpoint.step and the loss
 * entries.  EAD_ERROR_FORMAT when path is not such a checkpoint. */
EadModel *ead_pretrain_checkpoint_teacher (const char *path, GError **error);

EadPrecision ead_pretrainer_get_precision (EadPretrainer *pretrainer);  /* never AUTO */
EadBackend *ead_pretrainer_get_backend (EadPretrainer *pretrainer);
guint ead_pretrainer_get_image_count (EadPretrainer *pretrainer);
/* "path: reason" for every image that could not be decoded so far. */
const GPtrArray *ead_pretrainer_get_skipped (EadPretrainer *pretrainer);

/* Loss of each step so far. */
const float *ead_pretrainer_get_history (EadPretrainer *pretrainer, int *steps);

/* For tests and tools.  The PDN being trained (padding on), its gradient accumulator,
 * and the target mean and std (EAD_TEACHER_CHANNELS each; may be set before stepping). */
void ead_pretrainer_get_state (EadPretrainer *pretrainer,
                               EadNet **pdn,
                               EadNet **grad,
                               float **target_mean,
                               float **target_std);

/* Ψ (not normalised) of one backbone input (3 x 2H x 2W, normalised) into
 * psi (EAD_TEACHER_CHANNELS x the PDN output grid). */
gboolean ead_pretrainer_target (EadPretrainer *pretrainer,
                                const float *backbone_input,
                                float *psi,
                                GError **error);

/* One distillation step on given inputs: batch backbone inputs (3 x 2H x 2W each) and
 * batch PDN inputs (3 x H x W each), normalised.  Returns the loss in *loss.  With apply
 * FALSE the gradients stay in the accumulator and nothing is updated (nor cleared: call
 * ead_net_zero on it before the next step); with apply TRUE, Adam step 1. */
gboolean ead_pretrainer_step_inputs (EadPretrainer *pretrainer,
                                     const float *backbone_inputs,
                                     const float *pdn_inputs,
                                     gboolean apply,
                                     double *loss,
                                     GError **error);

G_END_DECLS
