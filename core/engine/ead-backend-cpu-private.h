/* Shared between the CPU backend's inference (ead-backend-cpu.c) and training
 * (ead-backend-cpu-train.c) halves. */
#pragma once

#include <oneapi/dnnl/dnnl.h>

#include "ead-backend.h"

#define EAD_CPU_ALIGNMENT 64

typedef struct {
  EadBackend parent;
  dnnl_engine_t engine;
  int threads;
  EadPrecision precision;  /* FP32 or BF16 */
  char *precision_note;
} EadCpuBackend;

/* The oneDNN data type of activations and weights for the backend's precision. */
dnnl_data_type_t _ead_cpu_data_type (EadCpuBackend *cpu);

gboolean _ead_cpu_check (dnnl_status_t status, const char *what, GError **error);
size_t _ead_cpu_align (size_t n);
/* Attributes with a user scratchpad and, when relu, a fused ReLU post-op. */
dnnl_primitive_attr_t _ead_cpu_attr_new (gboolean relu);
char *_ead_cpu_describe (const_dnnl_primitive_desc_t pd, const char *what);
/* Reorders data (layout from_md, e.g. OIHW weights) into the memory `to`, once, and waits. */
gboolean _ead_cpu_reorder_once (dnnl_engine_t engine,
                                dnnl_stream_t stream,
                                const dnnl_memory_desc_t *from_md,
                                const void *data,
                                dnnl_memory_t to,
                                GError **error);

EadTrainExec *_ead_cpu_train_compile (EadBackend *backend,
                                      EadNet *net,
                                      EadNet *grad,
                                      int batch,
                                      int height,
                                      int width,
                                      GError **error);
gboolean _ead_cpu_train_forward (EadTrainExec *exec,
                                 const float *in,
                                 float *out,
                                 guint64 dropout_seed,
                                 GError **error);
gboolean _ead_cpu_train_backward (EadTrainExec *exec,
                                  const float *diff_out,
                                  GError **error);
void _ead_cpu_train_free (EadTrainExec *exec);
char *_ead_cpu_train_describe (EadTrainExec *exec);
