/* ead-backend.h: the compute backend table.
 *
 * A backend compiles a network for a fixed batch and input size into an executable
 * (its own weight layout, fused ReLUs, activations in whatever layout it prefers) and
 * runs it; the boundary it exposes is NCHW float32 in host memory.  The small map
 * operations of the pipeline are separate entries.  The CPU backend (oneDNN) is always
 * built; others (CUDA) are loaded as modules at run time and fill the same table.
 */
#pragma once

#include <glib.h>

#include "ead-network.h"

G_BEGIN_DECLS

typedef struct _EadBackend EadBackend;
typedef struct _EadNetExec EadNetExec;
typedef struct _EadTrainExec EadTrainExec;

/* The arithmetic of compiled networks.  bf16 keeps weights and activations in bfloat16
 * and accumulates in float32; the boundary (inputs, outputs) stays float32, and so does
 * everything after the networks (maps, normalisation, quantiles, scores). */
typedef enum {
  EAD_PRECISION_FP32,  /* the default (0) */
  EAD_PRECISION_BF16,
  EAD_PRECISION_AUTO,  /* bf16 where the hardware has fast bf16 kernels, else fp32 */
} EadPrecision;

/* "auto", "fp32", "bf16" (case-insensitive); anything else is an EAD_ERROR_INVALID. */
gboolean ead_precision_parse (const char *text, EadPrecision *precision, GError **error);
const char *ead_precision_name (EadPrecision precision);

/* Shared scratch memory for the executables of one detector: they run one after the
 * other, so their activations and scratchpads can live in the same block.  Sized while
 * compiling and allocated by ead_workspace_commit(), which reallocates only when a newly
 * compiled executable needs more; forward() never allocates. */
typedef struct {
  size_t size;       /* required */
  size_t allocated;
  void *data;
} EadWorkspace;

void ead_workspace_require (EadWorkspace *workspace, size_t bytes);
gboolean ead_workspace_commit (EadWorkspace *workspace, GError **error);
void ead_workspace_clear (EadWorkspace *workspace);

struct _EadBackend {
  const char *name;  /* "cpu", "cuda" */

  /* Compiles net (weights are converted now, so net may change or go away afterwards)
   * for an input batch x net->layers[0].in_channels x h x w. */
  EadNetExec *(*compile) (EadBackend *backend,
                          const EadNet *net,
                          int batch,
                          int height,
                          int width,
                          EadWorkspace *workspace,
                          GError **error);
  /* in: the NCHW input; out: the NCHW output (ead_net_shapes); no allocation. */
  gboolean (*forward) (EadNetExec *exec, const float *in, float *out, GError **error);
  void (*exec_free) (EadNetExec *exec);
  /* One line per primitive: which implementation the backend chose, for `ead info`. */
  char *(*exec_describe) (EadNetExec *exec);

  /* out[n][p] = mean over c < channels of ((a[n][c][p] - a_mean[c]) / a_std[c] - b[n][c][p])^2
   * with p over hw pixels; a and b have a_channels_total / b_channels_total channels per
   * image and the first `channels` are used, starting at b_offset for b.  a_mean and
   * a_std may be NULL (0 and 1).  This is both distance maps of spec §4.1. */
  void (*sqdiff_channel_mean) (const float *a,
                               int a_channels_total,
                               const float *a_mean,
                               const float *a_std,
                               const float *b,
                               int b_channels_total,
                               int b_offset,
                               int batch,
                               int channels,
                               int hw,
                               float *out);
  /* Bilinear resize with PyTorch's align_corners=False semantics (spec §1.4). */
  void (*resize_bilinear) (const float *in,
                           int planes,
                           int in_h,
                           int in_w,
                           float *out,
                           int out_h,
                           int out_w);
  /* Training: a network compiled for forward and backward passes.  The executable reads
   * the weights from net at every train_forward (they change between steps) and adds
   * the weight and bias gradients of every train_backward into grad (same layout as net,
   * OIHW), so that several passes of one step accumulate.  Dropout is active; its masks
   * are drawn from dropout_seed in NCHW order (ead_dropout_mask), so any backend and
   * Python reproduce them.  Forward and backward alternate; backward needs the
   * activations of the forward before it. */
  EadTrainExec *(*train_compile) (EadBackend *backend,
                                  EadNet *net,
                                  EadNet *grad,
                                  int batch,
                                  int height,
                                  int width,
                                  GError **error);
  gboolean (*train_forward) (EadTrainExec *exec,
                             const float *in,
                             float *out,
                             guint64 dropout_seed,
                             GError **error);
  /* diff_out: the loss gradient with respect to the output, NCHW. */
  gboolean (*train_backward) (EadTrainExec *exec, const float *diff_out, GError **error);
  void (*train_free) (EadTrainExec *exec);
  char *(*train_describe) (EadTrainExec *exec);

  void (*set_threads) (EadBackend *backend, int threads);
  int (*get_threads) (EadBackend *backend);

  /* The precision of the networks compiled from now on (training included).  AUTO picks
   * bf16 where the hardware has fast kernels for it, else fp32; an explicit bf16 without
   * them is an EAD_ERROR_UNSUPPORTED error (it would run on slow reference code). */
  gboolean (*set_precision) (EadBackend *backend, EadPrecision precision, GError **error);
  EadPrecision (*get_precision) (EadBackend *backend);  /* never AUTO */
  /* One line on what set_precision chose and why ("bf16 (oneDNN ISA avx512_core_bf16)",
   * "fp32 (auto: no bf16 kernels for ISA avx2)"). */
  const char *(*describe_precision) (EadBackend *backend);
};

/* Dropout keep-mask of one layer: value i (NCHW order) of the layer's output is kept,
 * and scaled by 1 / (1 - p), when ead_random_uniform (key, i) >= p, with
 * key = ead_random_key (seed, "dropout.<layer index>"). */
void ead_dropout_mask (guint64 seed, int layer, float p, float *mask, size_t count);

/* The thread count and precision are settings of the (process-wide) backend that compile
 * reads.  Whoever sets them and compiles holds this mutex from the first setting to the
 * last compile, so that a detector made on one thread and a trainer on another each get
 * their own settings:
 *
 *   g_autoptr (GMutexLocker) locker = g_mutex_locker_new (ead_backend_compile_mutex ());
 */
GMutex *ead_backend_compile_mutex (void);

/* The CPU backend (a process-wide singleton; never freed). */
EadBackend *ead_backend_cpu (void);

/* "cpu", "cuda" or "auto" (CUDA when its module loads and a device answers, else CPU).
 * An explicit "cuda" that is not available is an error naming the reason. */
EadBackend *ead_backend_get (const char *device, GError **error);

/* ead_backend_get, for training: refuses (EAD_ERROR_UNSUPPORTED) a backend that has no
 * training passes. */
EadBackend *ead_backend_get_for_training (const char *device, GError **error);

G_END_DECLS
