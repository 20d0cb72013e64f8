/* The CPU backend: convolutions, pooling and resampling through oneDNN, with activations
 * kept in the blocked layouts oneDNN prefers from the first layer to the last; bias and
 * ReLU are fused into the convolution; the map operations are plain C loops that
 * vectorise, parallel through OpenMP like oneDNN itself (Debian builds it on OpenMP). */
#include "ead-backend.h"
#include "ead-backend-cpu-private.h"

#include <math.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdlib.h>
#include <string.h>

#include "ead-error.h"

#define ALIGNMENT EAD_CPU_ALIGNMENT

/* Where a memory object's buffer lives. */
typedef enum {
  SLOT_USER_IN,   /* the caller's input, bound at forward() */
  SLOT_USER_OUT,  /* the caller's output, bound at forward() */
  SLOT_PING,      /* activations alternate between two workspace regions */
  SLOT_PONG,
  SLOT_SCRATCH,   /* oneDNN's scratchpad, in the workspace too */
  SLOT_OWNED,     /* weights: owned by the executable */
} Slot;

typedef struct {
  dnnl_memory_t memory;
  Slot slot;
} BoundMemory;

typedef struct {
  dnnl_primitive_t primitive;
  int n_args;
  dnnl_exec_arg_t args[6];
  char *description;
} Step;

struct _EadNetExec {
  EadBackend *backend;
  dnnl_engine_t engine;
  dnnl_stream_t stream;
  GArray *steps;          /* Step */
  GArray *memories;       /* BoundMemory */
  GPtrArray *owned;       /* weight buffers */
  EadWorkspace *workspace;
  int threads;            /* oneDNN primitives run with the thread count they were made for */
  dnnl_data_type_t dt;    /* of weights and activations: f32 or bf16 */
  int images;             /* the batch; the primitives are made for one image */
  size_t in_count, out_count;  /* floats per image at the boundary */
  size_t slot_size[2];
  size_t scratch_size;
  void *bound_base;       /* workspace base the handles point into */
  const float *bound_in;
  float *bound_out;
};

typedef EadCpuBackend CpuBackend;

#define check _ead_cpu_check
#define align_up _ead_cpu_align
#define new_attr _ead_cpu_attr_new
#define describe_primitive _ead_cpu_describe

gboolean
_ead_cpu_check (dnnl_status_t status, const char *what, GError **error)
{
  if (status == dnnl_success)
    return TRUE;
  g_set_error (error, EAD_ERROR, EAD_ERROR_BACKEND, "oneDNN: %s failed (status %d)", what,
               (int) status);
  return FALSE;
}

size_t
_ead_cpu_align (size_t n)
{
  return (n + ALIGNMENT - 1) & ~(size_t) (ALIGNMENT - 1);
}

static dnnl_memory_t
bind_memory (EadNetExec *exec, const dnnl_memory_desc_t *md, Slot slot, void *handle)
{
  dnnl_memory_t memory = NULL;
  BoundMemory bound;

  if (dnnl_memory_create (&memory, md, exec->engine,
                          slot == SLOT_OWNED ? handle : DNNL_MEMORY_NONE) != dnnl_success)
    return NULL;
  bound = (BoundMemory) { memory, slot };
  g_array_append_val (exec->memories, bound);
  if (slot == SLOT_PING || slot == SLOT_PONG)
    {
      size_t *size = &exec->slot_size[slot - SLOT_PING];
      *size = MAX (*size, align_up (dnnl_memory_desc_get_size (md)));
    }
  return memory;
}

char *
_ead_cpu_describe (const_dnnl_primitive_desc_t pd, const char *what)
{
  const char *impl = NULL;

  dnnl_primitive_desc_query (pd, dnnl_query_impl_info_str, 0, &impl);
  return g_strdup_printf ("%s: %s", what, impl ? impl : "?");
}

static gboolean
add_step (EadNetExec *exec,
          const_dnnl_primitive_desc_t pd,
          const char *what,
          const dnnl_exec_arg_t *args,
          int n_args,
          GError **error)
{
  Step step = { 0 };
  const dnnl_memory_desc_t *scratch_md;

  if (!check (dnnl_primitive_create (&step.primitive, pd), what, error))
    return FALSE;
  step.n_args = n_args;
  memcpy (step.args, args, n_args * sizeof *args);
  scratch_md = dnnl_primitive_desc_query_md (pd, dnnl_query_scratchpad_md, 0);
  if (scratch_md != NULL && dnnl_memory_desc_get_size (scratch_md) > 0)
    {
      dnnl_memory_t scratch = bind_memory (exec, scratch_md, SLOT_SCRATCH, NULL);
      exec->scratch_size = MAX (exec->scratch_size,
                                align_up (dnnl_memory_desc_get_size (scratch_md)));
      step.args[step.n_args++] = (dnnl_exec_arg_t) { DNNL_ARG_SCRATCHPAD, scratch };
    }
  step.description = describe_primitive (pd, what);
  g_array_append_val (exec->steps, step);
  return TRUE;
}

dnnl_primitive_attr_t
_ead_cpu_attr_new (gboolean relu)
{
  dnnl_primitive_attr_t attr = NULL;

  dnnl_primitive_attr_create (&attr);
  dnnl_primitive_attr_set_scratchpad_mode (attr, dnnl_scratchpad_mode_user);
  if (relu)
    {
      dnnl_post_ops_t post_ops = NULL;
      dnnl_post_ops_create (&post_ops);
      dnnl_post_ops_append_eltwise (post_ops, 1.0f, dnnl_eltwise_relu, 0.0f, 0.0f);
      dnnl_primitive_attr_set_post_ops (attr, post_ops);
      dnnl_post_ops_destroy (post_ops);
    }
  return attr;
}

/* Current activation: its descriptor, memory and slot. */
typedef struct {
  dnnl_memory_desc_t md;
  dnnl_memory_t memory;
  Slot slot;
} Activation;

static Slot
next_slot (const Activation *current)
{
  return current->slot == SLOT_PING ? SLOT_PONG : SLOT_PING;
}

static gboolean
add_reorder (EadNetExec *exec,
             Activation *current,
             const dnnl_memory_desc_t *to_md,
             Slot to_slot,
             GError **error)
{
  dnnl_primitive_desc_t pd = NULL;
  dnnl_memory_t to;
  gboolean ok;

  if (!check (dnnl_reorder_primitive_desc_create (&pd, &current->md, exec->engine, to_md,
                                                  exec->engine, NULL),
              "reorder", error))
    return FALSE;
  to = bind_memory (exec, to_md, to_slot, NULL);
  ok = add_step (exec, pd, "reorder",
                 (dnnl_exec_arg_t[]) { { DNNL_ARG_FROM, current->memory },
                                       { DNNL_ARG_TO, to } },
                 2, error);
  dnnl_primitive_desc_destroy (pd);
  current->md = *to_md;
  current->memory = to;
  current->slot = to_slot;
  return ok;
}

/* Reorders user weights (OIHW) into the layout the convolution chose, once. */
static dnnl_memory_t
prepare_weights (EadNetExec *exec,
                 const dnnl_memory_desc_t *user_md,
                 const float *data,
                 const dnnl_memory_desc_t *want_md,
                 GError **error)
{
  size_t size = dnnl_memory_desc_get_size (want_md);
  void *buffer = aligned_alloc (ALIGNMENT, align_up (size));
  dnnl_memory_t want;

  g_ptr_array_add (exec->owned, buffer);
  want = bind_memory (exec, want_md, SLOT_OWNED, buffer);
  return _ead_cpu_reorder_once (exec->engine, exec->stream, user_md, data, want, error)
           ? want : NULL;
}

gboolean
_ead_cpu_reorder_once (dnnl_engine_t engine,
                       dnnl_stream_t stream,
                       const dnnl_memory_desc_t *from_md,
                       const void *data,
                       dnnl_memory_t to,
                       GError **error)
{
  const dnnl_memory_desc_t *to_md = NULL;
  dnnl_memory_t from = NULL;
  dnnl_primitive_desc_t pd = NULL;
  dnnl_primitive_t reorder = NULL;
  gboolean ok;

  ok = to != NULL
       && check (dnnl_memory_get_memory_desc (to, &to_md), "weights", error)
       && check (dnnl_memory_create (&from, from_md, engine, (void *) data), "weights", error)
       && check (dnnl_reorder_primitive_desc_create (&pd, from_md, engine, to_md, engine, NULL),
                 "weight reorder", error)
       && check (dnnl_primitive_create (&reorder, pd), "weight reorder", error)
       && check (dnnl_primitive_execute (reorder, stream, 2,
                                         (dnnl_exec_arg_t[]) { { DNNL_ARG_FROM, from },
                                                               { DNNL_ARG_TO, to } }),
                 "weight reorder", error)
       && check (dnnl_stream_wait (stream), "weight reorder", error);
  if (reorder != NULL)
    dnnl_primitive_destroy (reorder);
  if (pd != NULL)
    dnnl_primitive_desc_destroy (pd);
  if (from != NULL)
    dnnl_memory_destroy (from);
  return ok;
}

static gboolean
compile_conv (EadNetExec *exec,
              const EadNet *net,
              int index,
              gboolean relu,
              Activation *current,
              GError **error)
{
  const EadLayer *layer = &net->layers[index];
  const dnnl_dim_t *in_dims = current->md.dims;
  dnnl_dim_t n = in_dims[0];
  dnnl_dim_t oh = (in_dims[2] + 2 * layer->padding - layer->kernel) / layer->stride + 1;
  dnnl_dim_t ow = (in_dims[3] + 2 * layer->padding - layer->kernel) / layer->stride + 1;
  dnnl_dims_t src_dims = { n, layer->in_channels, in_dims[2], in_dims[3] };
  dnnl_dims_t w_dims = { layer->out_channels, layer->in_channels, layer->kernel, layer->kernel };
  dnnl_dims_t b_dims = { layer->out_channels };
  dnnl_dims_t dst_dims = { n, layer->out_channels, oh, ow };
  dnnl_dims_t strides = { layer->stride, layer->stride };
  dnnl_dims_t padding = { layer->padding, layer->padding };
  dnnl_memory_desc_t src_md, w_md, b_md, dst_md, w_user_md;
  dnnl_convolution_desc_t desc;
  dnnl_primitive_attr_t attr;
  dnnl_primitive_desc_t pd = NULL;
  dnnl_memory_t weights, bias, dst;
  g_autofree char *what = g_strdup_printf ("layer %d conv %dx%d %d->%d%s", index,
                                           layer->kernel, layer->kernel, layer->in_channels,
                                           layer->out_channels, relu ? " +relu" : "");
  gboolean ok;

  dnnl_memory_desc_init_by_tag (&src_md, 4, src_dims, exec->dt, dnnl_format_tag_any);
  dnnl_memory_desc_init_by_tag (&w_md, 4, w_dims, exec->dt, dnnl_format_tag_any);
  dnnl_memory_desc_init_by_tag (&w_user_md, 4, w_dims, dnnl_f32, dnnl_oihw);
  /* the bias stays float32 in bf16 too: it is added to the float32 accumulator */
  dnnl_memory_desc_init_by_tag (&b_md, 1, b_dims, dnnl_f32, dnnl_x);
  dnnl_memory_desc_init_by_tag (&dst_md, 4, dst_dims, exec->dt, dnnl_format_tag_any);
  /* Winograd F(4x4, 3x3) does the 3x3 layers with about half the multiplications, within
   * the parity tolerance, but keeps 4 times the weights (36 taps instead of 9): worth it
   * up to 256 x 256 channels (EfficientAD-S, the autoencoder), not for PDN-M's 512 x 512
   * layer, whose 38 MB of transformed weights would double the detector's memory.  oneDNN
   * has Winograd for some shapes only (float32 only), so direct is the fallback. */
  attr = new_attr (relu);
  if (exec->dt == dnnl_f32 && layer->kernel == 3 && layer->stride == 1
      && layer->in_channels * layer->out_channels <= 256 * 256
      && dnnl_convolution_forward_desc_init (&desc, dnnl_forward_inference,
                                             dnnl_convolution_winograd, &src_md, &w_md, &b_md,
                                             &dst_md, strides, padding, padding) == dnnl_success)
    dnnl_primitive_desc_create (&pd, &desc, attr, exec->engine, NULL);
  ok = pd != NULL
       || (check (dnnl_convolution_forward_desc_init (&desc, dnnl_forward_inference,
                                                      dnnl_convolution_direct, &src_md, &w_md,
                                                      &b_md, &dst_md, strides, padding, padding),
                  what, error)
           && check (dnnl_primitive_desc_create (&pd, &desc, attr, exec->engine, NULL), what,
                     error));
  dnnl_primitive_attr_destroy (attr);
  if (!ok)
    return FALSE;

  ok = FALSE;
  {
    const dnnl_memory_desc_t *want_src = dnnl_primitive_desc_query_md (pd, dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *want_w = dnnl_primitive_desc_query_md (pd, dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *want_dst = dnnl_primitive_desc_query_md (pd, dnnl_query_dst_md, 0);

    if (!dnnl_memory_desc_equal (want_src, &current->md)
        && !add_reorder (exec, current, want_src, next_slot (current), error))
      goto out;
    weights = prepare_weights (exec, &w_user_md, net->weight[index], want_w, error);
    if (weights == NULL)
      goto out;
    {
      void *bias_buffer = aligned_alloc (ALIGNMENT, align_up (layer->out_channels * sizeof (float)));
      memcpy (bias_buffer, net->bias[index], layer->out_channels * sizeof (float));
      g_ptr_array_add (exec->owned, bias_buffer);
      bias = bind_memory (exec, &b_md, SLOT_OWNED, bias_buffer);
    }
    {
      Slot slot = next_slot (current);
      dst = bind_memory (exec, want_dst, slot, NULL);
      if (!add_step (exec, pd, what,
                     (dnnl_exec_arg_t[]) { { DNNL_ARG_SRC, current->memory },
                                           { DNNL_ARG_WEIGHTS, weights },
                                           { DNNL_ARG_BIAS, bias },
                                           { DNNL_ARG_DST, dst } },
                     4, error))
        goto out;
      current->md = *want_dst;
      current->memory = dst;
      current->slot = slot;
    }
    ok = TRUE;
  }
out:
  dnnl_primitive_desc_destroy (pd);
  return ok;
}

/* Pooling, resampling and a lone ReLU: the source keeps the current layout and the
 * destination takes the one oneDNN picks. */
static gboolean
finish_simple (EadNetExec *exec,
               const void *desc,
               const char *what,
               Activation *current,
               GError **error)
{
  dnnl_primitive_attr_t attr = new_attr (FALSE);
  dnnl_primitive_desc_t pd = NULL;
  gboolean ok = check (dnnl_primitive_desc_create (&pd, desc, attr, exec->engine, NULL), what,
                       error);
  dnnl_primitive_attr_destroy (attr);
  if (ok)
    {
      const dnnl_memory_desc_t *want_dst = dnnl_primitive_desc_query_md (pd, dnnl_query_dst_md, 0);
      Slot slot = next_slot (current);
      dnnl_memory_t dst = bind_memory (exec, want_dst, slot, NULL);

      ok = add_step (exec, pd, what,
                     (dnnl_exec_arg_t[]) { { DNNL_ARG_SRC, current->memory },
                                           { DNNL_ARG_DST, dst } },
                     2, error);
      current->md = *want_dst;
      current->memory = dst;
      current->slot = slot;
      dnnl_primitive_desc_destroy (pd);
    }
  return ok;
}

static gboolean
compile_avgpool (EadNetExec *exec, const EadLayer *layer, int index, Activation *current,
                 GError **error)
{
  const dnnl_dim_t *d = current->md.dims;
  dnnl_dims_t dst_dims = { d[0], d[1], (d[2] + 2 * layer->padding - layer->kernel) / layer->stride + 1,
                           (d[3] + 2 * layer->padding - layer->kernel) / layer->stride + 1 };
  dnnl_dims_t strides = { layer->stride, layer->stride };
  dnnl_dims_t kernel = { layer->kernel, layer->kernel };
  dnnl_dims_t dilation = { 0, 0 };
  dnnl_dims_t padding = { layer->padding, layer->padding };
  dnnl_memory_desc_t dst_md;
  dnnl_pooling_v2_desc_t desc;
  g_autofree char *what = g_strdup_printf ("layer %d avgpool %d", index, layer->kernel);

  dnnl_memory_desc_init_by_tag (&dst_md, 4, dst_dims, exec->dt, dnnl_format_tag_any);
  /* nn.AvgPool2d counts the zero padding (count_include_pad=True) */
  return check (dnnl_pooling_v2_forward_desc_init (&desc, dnnl_forward_inference,
                                                   dnnl_pooling_avg_include_padding,
                                                   &current->md, &dst_md, strides, kernel,
                                                   dilation, padding, padding),
                what, error)
         && finish_simple (exec, &desc, what, current, error);
}

static gboolean
compile_upsample (EadNetExec *exec, int index, int out_h, int out_w, Activation *current,
                  GError **error)
{
  const dnnl_dim_t *d = current->md.dims;
  dnnl_dims_t dst_dims = { d[0], d[1], out_h, out_w };
  dnnl_memory_desc_t dst_md;
  dnnl_resampling_desc_t desc;
  g_autofree char *what = g_strdup_printf ("layer %d resize to %dx%d", index, out_w, out_h);

  dnnl_memory_desc_init_by_tag (&dst_md, 4, dst_dims, exec->dt, dnnl_format_tag_any);
  /* oneDNN's linear resampling maps dst to src as (dst + 0.5) * in / out - 0.5 with edge
   * clamping: PyTorch's align_corners=False. */
  return check (dnnl_resampling_forward_desc_init (&desc, dnnl_forward_inference,
                                                   dnnl_resampling_linear, NULL, &current->md,
                                                   &dst_md),
                what, error)
         && finish_simple (exec, &desc, what, current, error);
}

static gboolean
compile_relu (EadNetExec *exec, int index, Activation *current, GError **error)
{
  dnnl_eltwise_desc_t desc;
  g_autofree char *what = g_strdup_printf ("layer %d relu", index);

  return check (dnnl_eltwise_forward_desc_init (&desc, dnnl_forward_inference,
                                                dnnl_eltwise_relu, &current->md, 0.0f, 0.0f),
                what, error)
         && finish_simple (exec, &desc, what, current, error);
}

static void
cpu_exec_free (EadNetExec *exec)
{
  if (exec == NULL)
    return;
  for (guint i = 0; i < exec->steps->len; i++)
    {
      Step *step = &g_array_index (exec->steps, Step, i);
      dnnl_primitive_destroy (step->primitive);
      g_free (step->description);
    }
  for (guint i = 0; i < exec->memories->len; i++)
    dnnl_memory_destroy (g_array_index (exec->memories, BoundMemory, i).memory);
  g_array_unref (exec->steps);
  g_array_unref (exec->memories);
  g_ptr_array_unref (exec->owned);
  if (exec->stream != NULL)
    dnnl_stream_destroy (exec->stream);
  g_free (exec);
}

static EadNetExec *
cpu_compile (EadBackend *backend,
             const EadNet *net,
             int batch,
             int height,
             int width,
             EadWorkspace *workspace,
             GError **error)
{
  CpuBackend *cpu = (CpuBackend *) backend;
  g_autoptr (GError) local_error = NULL;
  EadShape shapes[EAD_MAX_LAYERS], out_shape;
  EadShape in_shape = { net->layers[0].in_channels, height, width };
  EadNetExec *exec;
  Activation current = { .slot = SLOT_USER_IN };
  dnnl_dims_t in_dims = { batch, in_shape.c, height, width };
  dnnl_dims_t out_dims;
  dnnl_memory_desc_t out_md;
  gboolean ok = TRUE;

  if (net->layers[0].kind != EAD_LAYER_CONV)
    in_shape.c = net->layers[0].in_channels ? net->layers[0].in_channels : 1;
  if (!ead_net_shapes (net, in_shape, shapes, &out_shape, error))
    return NULL;
  /* A batch runs image by image through primitives made for one image: on a CPU the
   * convolutions of one 256 x 256 image already keep every core busy, and a batch's
   * activations would only spill out of the caches (measured: bf16 at batch 8 took 2.6
   * times as long per image as at batch 1, fp32 the same time) and take batch times the
   * memory. */
  in_dims[0] = 1;

  exec = g_new0 (EadNetExec, 1);
  exec->backend = backend;
  exec->engine = cpu->engine;
  exec->workspace = workspace;
  exec->threads = cpu->threads;
  exec->dt = _ead_cpu_data_type (cpu);
  exec->images = batch;
  exec->in_count = (size_t) in_shape.c * height * width;
  exec->out_count = (size_t) out_shape.c * out_shape.h * out_shape.w;
  omp_set_num_threads (exec->threads);
  exec->steps = g_array_new (FALSE, TRUE, sizeof (Step));
  exec->memories = g_array_new (FALSE, TRUE, sizeof (BoundMemory));
  exec->owned = g_ptr_array_new_with_free_func (free);
  if (!check (dnnl_stream_create (&exec->stream, exec->engine, dnnl_stream_default_flags),
              "stream", error))
    {
      cpu_exec_free (exec);
      return NULL;
    }

  dnnl_memory_desc_init_by_tag (&current.md, 4, in_dims, dnnl_f32, dnnl_nchw);
  current.memory = bind_memory (exec, &current.md, SLOT_USER_IN, NULL);

  for (int i = 0; ok && i < net->n_layers; i++)
    {
      const EadLayer *layer = &net->layers[i];
      gboolean fuse_relu = i + 1 < net->n_layers && net->layers[i + 1].kind == EAD_LAYER_RELU;

      switch (layer->kind)
        {
        case EAD_LAYER_CONV:
          ok = compile_conv (exec, net, i, fuse_relu, &current, &local_error);
          if (fuse_relu)
            i++;
          break;
        case EAD_LAYER_AVGPOOL:
          ok = compile_avgpool (exec, layer, i, &current, &local_error);
          break;
        case EAD_LAYER_UPSAMPLE:
          ok = compile_upsample (exec, i, shapes[i].h, shapes[i].w, &current, &local_error);
          break;
        case EAD_LAYER_RELU:
          ok = compile_relu (exec, i, &current, &local_error);
          break;
        case EAD_LAYER_DROPOUT:
          break;
        }
    }
  if (ok)
    {
      out_dims[0] = 1;
      out_dims[1] = out_shape.c;
      out_dims[2] = out_shape.h;
      out_dims[3] = out_shape.w;
      dnnl_memory_desc_init_by_tag (&out_md, 4, out_dims, dnnl_f32, dnnl_nchw);
      ok = add_reorder (exec, &current, &out_md, SLOT_USER_OUT, &local_error);
    }
  if (!ok)
    {
      g_propagate_prefixed_error (error, g_steal_pointer (&local_error), "%s: ",
                                  ead_net_kind_name (net->kind));
      cpu_exec_free (exec);
      return NULL;
    }
  ead_workspace_require (workspace,
                         exec->slot_size[0] + exec->slot_size[1] + exec->scratch_size);
  return exec;
}

static void
bind_handles (EadNetExec *exec, const float *in, float *out)
{
  char *base = exec->workspace->data;

  if (base == exec->bound_base && in == exec->bound_in && out == exec->bound_out)
    return;
  for (guint i = 0; i < exec->memories->len; i++)
    {
      BoundMemory *bound = &g_array_index (exec->memories, BoundMemory, i);
      void *handle;

      switch (bound->slot)
        {
        case SLOT_USER_IN:
          handle = (void *) in;
          break;
        case SLOT_USER_OUT:
          handle = out;
          break;
        case SLOT_PING:
          handle = base;
          break;
        case SLOT_PONG:
          handle = base + exec->slot_size[0];
          break;
        case SLOT_SCRATCH:
          handle = base + exec->slot_size[0] + exec->slot_size[1];
          break;
        case SLOT_OWNED:
        default:
          continue;
        }
      dnnl_memory_set_data_handle (bound->memory, handle);
    }
  exec->bound_base = base;
  exec->bound_in = in;
  exec->bound_out = out;
}

static gboolean
cpu_forward (EadNetExec *exec, const float *in, float *out, GError **error)
{
  g_return_val_if_fail (exec->workspace->data != NULL, FALSE);
  omp_set_num_threads (exec->threads);
  for (int n = 0; n < exec->images; n++)
    {
      bind_handles (exec, in + n * exec->in_count, out + n * exec->out_count);
      for (guint i = 0; i < exec->steps->len; i++)
        {
          Step *step = &g_array_index (exec->steps, Step, i);
          if (!check (dnnl_primitive_execute (step->primitive, exec->stream, step->n_args,
                                              step->args),
                      step->description, error))
            return FALSE;
        }
    }
  return check (dnnl_stream_wait (exec->stream), "stream wait", error);
}

static char *
cpu_exec_describe (EadNetExec *exec)
{
  GString *text = g_string_new (NULL);

  for (guint i = 0; i < exec->steps->len; i++)
    g_string_append_printf (text, "%s\n", g_array_index (exec->steps, Step, i).description);
  return g_string_free (text, FALSE);
}

static void
cpu_sqdiff_channel_mean (const float *a,
                         int a_channels_total,
                         const float *a_mean,
                         const float *a_std,
                         const float *b,
                         int b_channels_total,
                         int b_offset,
                         int batch,
                         int channels,
                         int hw,
                         float *out)
{
  const float inv_channels = 1.0f / channels;

  for (int n = 0; n < batch; n++)
    {
      const float *an = a + (size_t) n * a_channels_total * hw;
      const float *bn = b + ((size_t) n * b_channels_total + b_offset) * hw;
      float *on = out + (size_t) n * hw;

#pragma omp parallel for schedule(static)
      for (int p0 = 0; p0 < hw; p0 += 64)
        {
          int p1 = MIN (p0 + 64, hw);
          float sum[64] = { 0 };

          for (int c = 0; c < channels; c++)
            {
              const float *ac = an + (size_t) c * hw;
              const float *bc = bn + (size_t) c * hw;
              float mean = a_mean ? a_mean[c] : 0.0f;
              float std = a_std ? a_std[c] : 1.0f;

              for (int p = p0; p < p1; p++)
                {
                  float d = (ac[p] - mean) / std - bc[p];
                  sum[p - p0] += d * d;
                }
            }
          for (int p = p0; p < p1; p++)
            on[p] = sum[p - p0] * inv_channels;
        }
    }
}

/* PyTorch's upsample_bilinear2d source index for align_corners=False. */
static inline void
source_index (int dst, float scale, int in_size, int *i0, int *i1, float *w0, float *w1)
{
  float src = scale * (dst + 0.5f) - 0.5f;

  if (src < 0.0f)
    src = 0.0f;
  *i0 = (int) src;
  if (*i0 > in_size - 1)
    *i0 = in_size - 1;
  *i1 = *i0 + (*i0 < in_size - 1 ? 1 : 0);
  *w1 = src - *i0;
  *w0 = 1.0f - *w1;
}

static void
cpu_resize_bilinear (const float *in, int planes, int in_h, int in_w, float *out, int out_h,
                     int out_w)
{
  const float scale_h = (float) in_h / out_h;
  const float scale_w = (float) in_w / out_w;

#pragma omp parallel for schedule(static) collapse(2)
  for (int plane = 0; plane < planes; plane++)
    for (int y = 0; y < out_h; y++)
      {
        const float *src = in + (size_t) plane * in_h * in_w;
        float *dst = out + ((size_t) plane * out_h + y) * out_w;
        int y0, y1;
        float wy0, wy1;

        source_index (y, scale_h, in_h, &y0, &y1, &wy0, &wy1);
        for (int x = 0; x < out_w; x++)
          {
            int x0, x1;
            float wx0, wx1;

            source_index (x, scale_w, in_w, &x0, &x1, &wx0, &wx1);
            dst[x] = wy0 * (wx0 * src[y0 * in_w + x0] + wx1 * src[y0 * in_w + x1])
                     + wy1 * (wx0 * src[y1 * in_w + x0] + wx1 * src[y1 * in_w + x1]);
          }
      }
}

static void
cpu_set_threads (EadBackend *backend, int threads)
{
  CpuBackend *cpu = (CpuBackend *) backend;

  cpu->threads = threads > 0 ? threads : omp_get_num_procs ();
}

static int
cpu_get_threads (EadBackend *backend)
{
  return ((CpuBackend *) backend)->threads;
}

dnnl_data_type_t
_ead_cpu_data_type (EadCpuBackend *cpu)
{
  return cpu->precision == EAD_PRECISION_BF16 ? dnnl_bf16 : dnnl_f32;
}

static const char *
isa_name (dnnl_cpu_isa_t isa)
{
  switch (isa)
    {
    case dnnl_cpu_isa_sse41:
      return "sse41";
    case dnnl_cpu_isa_avx:
      return "avx";
    case dnnl_cpu_isa_avx2:
      return "avx2";
    case dnnl_cpu_isa_avx2_vnni:
      return "avx2_vnni";
    case dnnl_cpu_isa_avx512_mic:
    case dnnl_cpu_isa_avx512_mic_4ops:
      return "avx512_mic";
    case dnnl_cpu_isa_avx512_core:
      return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni:
      return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16:
      return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx:
      return "avx512_core_amx";
    case dnnl_cpu_isa_all:
    default:
      return "unknown";
    }
}

/* oneDNN has native bf16 kernels from AVX512-BF16 (vdpbf16ps) up, AMX included; below
 * that it emulates bf16, slower than float32.  The effective ISA honours
 * ONEDNN_MAX_CPU_ISA. */
static gboolean
cpu_has_fast_bf16 (dnnl_cpu_isa_t isa)
{
  return (isa & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16
         && isa != dnnl_cpu_isa_avx2_vnni;
}

static gboolean
cpu_set_precision (EadBackend *backend, EadPrecision precision, GError **error)
{
  CpuBackend *cpu = (CpuBackend *) backend;
  dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa ();
  gboolean fast_bf16 = cpu_has_fast_bf16 (isa);

  if (precision == EAD_PRECISION_BF16 && !fast_bf16)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
                   "bf16 needs a CPU with AVX512-BF16 or AMX; oneDNN runs this one with "
                   "ISA %s, where bf16 would be emulated and slower than fp32 "
                   "(use --precision fp32 or auto)", isa_name (isa));
      return FALSE;
    }
  g_free (cpu->precision_note);
  if (precision == EAD_PRECISION_AUTO)
    {
      cpu->precision = fast_bf16 ? EAD_PRECISION_BF16 : EAD_PRECISION_FP32;
      cpu->precision_note = g_strdup_printf ("%s (auto: %s ISA %s)",
                                             ead_precision_name (cpu->precision),
                                             fast_bf16 ? "bf16 kernels for" : "no bf16 kernels for",
                                             isa_name (isa));
    }
  else
    {
      cpu->precision = precision;
      cpu->precision_note = g_strdup_printf ("%s (oneDNN ISA %s)", ead_precision_name (precision),
                                             isa_name (isa));
    }
  return TRUE;
}

static EadPrecision
cpu_get_precision (EadBackend *backend)
{
  return ((CpuBackend *) backend)->precision;
}

static const char *
cpu_describe_precision (EadBackend *backend)
{
  return ((CpuBackend *) backend)->precision_note;
}

EadBackend *
ead_backend_cpu (void)
{
  static gsize initialised = 0;
  static CpuBackend cpu;

  if (g_once_init_enter (&initialised))
    {
      cpu.parent = (EadBackend) {
        .name = "cpu",
        .compile = cpu_compile,
        .forward = cpu_forward,
        .exec_free = cpu_exec_free,
        .exec_describe = cpu_exec_describe,
        .sqdiff_channel_mean = cpu_sqdiff_channel_mean,
        .resize_bilinear = cpu_resize_bilinear,
        .train_compile = _ead_cpu_train_compile,
        .train_forward = _ead_cpu_train_forward,
        .train_backward = _ead_cpu_train_backward,
        .train_free = _ead_cpu_train_free,
        .train_describe = _ead_cpu_train_describe,
        .set_threads = cpu_set_threads,
        .get_threads = cpu_get_threads,
        .set_precision = cpu_set_precision,
        .get_precision = cpu_get_precision,
        .describe_precision = cpu_describe_precision,
      };
      if (dnnl_engine_create (&cpu.engine, dnnl_cpu, 0) != dnnl_success)
        g_error ("oneDNN: cannot create the CPU engine");
      cpu.threads = omp_get_num_procs ();
      cpu.precision = EAD_PRECISION_FP32;
      cpu.precision_note = g_strdup_printf ("fp32 (oneDNN ISA %s)",
                                            isa_name (dnnl_get_effective_cpu_isa ()));
      g_once_init_leave (&initialised, 1);
    }
  return &cpu.parent;
}
