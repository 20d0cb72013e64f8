/* Training on the CPU backend: forward passes that keep their activations, and backward
 * passes through oneDNN (convolution backward-data and backward-weights, pooling and
 * resampling backward) with the ReLU and dropout derivatives as elementwise loops.
 *
 * The activations stay in oneDNN's layouts; every gradient uses the layout of the tensor
 * it belongs to, so no reorder is needed between layers.  Weights live in the caller's
 * EadNet (plain OIHW, the optimiser's master copy) and are reordered into the layouts of
 * the forward and backward-data primitives at each forward pass; weight gradients are
 * reordered back to OIHW and accumulated into the grad EadNet by the reorder's sum
 * post-op.
 *
 * In bf16 (mixed precision) activations, their gradients and the weight copies the
 * primitives read are bfloat16; the master weights (the EadNet), weight and bias
 * gradients, and everything at the boundary stay float32. */
#include "ead-backend-cpu-private.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "ead-error.h"

typedef enum {
  NODE_INPUT_REORDER,
  NODE_CONV,
  NODE_POOL,
  NODE_RESAMPLE,
  NODE_DROPOUT,
} NodeKind;

typedef struct {
  NodeKind kind;
  int layer;
  gboolean relu;                 /* conv: a fused ReLU follows */
  dnnl_memory_desc_t src_md;
  dnnl_memory_t src;             /* the previous node's dst, or the caller's input */
  dnnl_memory_t diff_src, diff_dst;  /* views bound to the gradient buffers in backward */
  dnnl_memory_desc_t dst_md;
  dnnl_memory_t dst;             /* this node's output, kept for backward */
  void *dst_buffer;
  dnnl_primitive_t forward;
  dnnl_primitive_t backward_data;     /* NULL for the first conv (no input gradient) */
  dnnl_primitive_t backward_weights;
  /* conv */
  dnnl_memory_t weights_user;    /* OIHW view of net->weight[layer] */
  dnnl_memory_t weights;         /* forward layout */
  dnnl_memory_t weights_bwd;     /* backward-data layout (may be the same memory) */
  dnnl_primitive_t reorder_weights, reorder_weights_bwd;
  dnnl_memory_t bias;            /* view of net->bias[layer] */
  dnnl_memory_t diff_weights, diff_bias;
  dnnl_memory_t grad_weights_user;  /* OIHW view of grad->weight[layer] */
  dnnl_primitive_t accumulate_weights;
  /* the source of backward-weights: src, or a copy with extra zero rows (see compile_conv) */
  dnnl_memory_t src_bwd_weights;
  dnnl_memory_t src_bwd_weights_interior;  /* the copy's view of src's rows */
  dnnl_primitive_t reorder_src_bwd_weights;  /* NULL when the source is src */
  /* dropout */
  void *mask;                    /* in the dst layout and data type */
  float *mask_plain;             /* NCHW, as drawn */
  dnnl_primitive_t reorder_mask;
  dnnl_memory_t mask_memory, mask_plain_memory;
  float dropout;
  size_t dst_elements;           /* elements in the dst buffer, padding included */
} Node;

struct _EadTrainExec {
  EadCpuBackend *cpu;
  EadNet *net;
  EadNet *grad;
  dnnl_stream_t stream;
  int threads;
  dnnl_data_type_t dt;           /* of activations and their gradients: f32 or bf16 */
  GArray *nodes;                 /* Node */
  dnnl_memory_desc_t in_md;      /* NCHW */
  dnnl_memory_t in_user;
  dnnl_memory_t out_user, diff_out_user;
  dnnl_primitive_t reorder_out, reorder_diff_out;
  /* gradients flow through two buffers of the largest activation size */
  void *diff_buffer[2];
  GPtrArray *memories;           /* every dnnl_memory_t, destroyed at free */
  GPtrArray *primitives;         /* every dnnl_primitive_t */
  GPtrArray *descriptions;
  GPtrArray *buffers;            /* every buffer we allocated */
};

#define check _ead_cpu_check

/* bfloat16 is the upper half of a float32; rounding to nearest even, as oneDNN does. */
static inline float
bf16_to_float (guint16 value)
{
  guint32 bits = (guint32) value << 16;
  float f;

  memcpy (&f, &bits, sizeof f);
  return f;
}

static inline guint16
float_to_bf16 (float f)
{
  guint32 bits;

  memcpy (&bits, &f, sizeof bits);
  if ((bits & 0x7fffffff) > 0x7f800000)
    return (guint16) ((bits >> 16) | 0x40);  /* NaN stays NaN */
  bits += 0x7fff + ((bits >> 16) & 1);
  return (guint16) (bits >> 16);
}

/* Training keeps oneDNN's own scratchpads (one per primitive, made once): simpler than
 * sharing one, and training is not latency-bound. */
static dnnl_primitive_attr_t
train_attr (gboolean relu)
{
  dnnl_primitive_attr_t attr = NULL;

  dnnl_primitive_attr_create (&attr);
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

static dnnl_memory_t
new_memory (EadTrainExec *exec, const dnnl_memory_desc_t *md, void *handle)
{
  dnnl_memory_t memory = NULL;

  if (dnnl_memory_create (&memory, md, exec->cpu->engine, handle) != dnnl_success)
    return NULL;
  g_ptr_array_add (exec->memories, memory);
  return memory;
}

static void *
new_buffer (EadTrainExec *exec, size_t bytes)
{
  size_t size = _ead_cpu_align (MAX (bytes, 1));
  void *buffer = aligned_alloc (EAD_CPU_ALIGNMENT, size);

  if (buffer == NULL)
    g_error ("out of memory: %zu bytes for training buffers", size);
  memset (buffer, 0, size);
  g_ptr_array_add (exec->buffers, buffer);
  return buffer;
}

static gboolean
new_primitive (EadTrainExec *exec,
               const_dnnl_primitive_desc_t pd,
               const char *what,
               dnnl_primitive_t *primitive,
               GError **error)
{
  if (!check (dnnl_primitive_create (primitive, pd), what, error))
    return FALSE;
  g_ptr_array_add (exec->primitives, *primitive);
  g_ptr_array_add (exec->descriptions, _ead_cpu_describe (pd, what));
  return TRUE;
}

static gboolean
new_reorder (EadTrainExec *exec,
             const dnnl_memory_desc_t *from,
             const dnnl_memory_desc_t *to,
             gboolean accumulate,
             const char *what,
             dnnl_primitive_t *primitive,
             GError **error)
{
  dnnl_primitive_desc_t pd = NULL;
  dnnl_primitive_attr_t attr = train_attr (FALSE);
  gboolean ok;

  if (accumulate)
    {
      dnnl_post_ops_t post_ops = NULL;
      dnnl_post_ops_create (&post_ops);
      dnnl_post_ops_append_sum (post_ops, 1.0f);
      dnnl_primitive_attr_set_post_ops (attr, post_ops);
      dnnl_post_ops_destroy (post_ops);
    }
  ok = check (dnnl_reorder_primitive_desc_create (&pd, from, exec->cpu->engine, to,
                                                  exec->cpu->engine, attr),
              what, error)
       && new_primitive (exec, pd, what, primitive, error);
  dnnl_primitive_attr_destroy (attr);
  if (pd != NULL)
    dnnl_primitive_desc_destroy (pd);
  return ok;
}

static gboolean
add_output (EadTrainExec *exec, Node *node, const dnnl_memory_desc_t *md, GError **error)
{
  node->dst_md = *md;
  node->dst_buffer = new_buffer (exec, dnnl_memory_desc_get_size (md));
  node->dst = new_memory (exec, md, node->dst_buffer);
  node->diff_dst = new_memory (exec, md, DNNL_MEMORY_NONE);
  node->diff_src = new_memory (exec, &node->src_md, DNNL_MEMORY_NONE);
  node->dst_elements = dnnl_memory_desc_get_size (md) / dnnl_data_type_size (md->data_type);
  if (node->dst == NULL || node->diff_dst == NULL || node->diff_src == NULL)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_BACKEND, "oneDNN: cannot create activation memory");
      return FALSE;
    }
  return TRUE;
}

static gboolean
compile_conv (EadTrainExec *exec,
              Node *node,
              const dnnl_memory_desc_t *src_md,
              gboolean first,
              GError **error)
{
  const EadLayer *layer = &exec->net->layers[node->layer];
  dnnl_dim_t n = src_md->dims[0];
  dnnl_dim_t oh = (src_md->dims[2] + 2 * layer->padding - layer->kernel) / layer->stride + 1;
  dnnl_dim_t ow = (src_md->dims[3] + 2 * layer->padding - layer->kernel) / layer->stride + 1;
  dnnl_dims_t w_dims = { layer->out_channels, layer->in_channels, layer->kernel, layer->kernel };
  dnnl_dims_t b_dims = { layer->out_channels };
  dnnl_dims_t dst_dims = { n, layer->out_channels, oh, ow };
  dnnl_dims_t strides = { layer->stride, layer->stride };
  dnnl_dims_t padding = { layer->padding, layer->padding };
  dnnl_memory_desc_t w_any, w_plain, b_md, dst_any, dw_any;
  dnnl_convolution_desc_t fwd_desc, bwd_data_desc, bwd_weights_desc;
  dnnl_primitive_desc_t fwd_pd = NULL, bwd_data_pd = NULL, bwd_weights_pd = NULL;
  dnnl_primitive_attr_t attr = train_attr (node->relu);
  dnnl_primitive_attr_t plain_attr = train_attr (FALSE);
  g_autofree char *what = g_strdup_printf ("layer %d conv %dx%d %d->%d%s", node->layer,
                                           layer->kernel, layer->kernel, layer->in_channels,
                                           layer->out_channels, node->relu ? " +relu" : "");
  g_autofree char *what_bd = g_strconcat (what, " backward-data", NULL);
  g_autofree char *what_bw = g_strconcat (what, " backward-weights", NULL);
  gboolean ok = FALSE;

  dnnl_memory_desc_init_by_tag (&w_any, 4, w_dims, exec->dt, dnnl_format_tag_any);
  dnnl_memory_desc_init_by_tag (&w_plain, 4, w_dims, dnnl_f32, dnnl_oihw);
  dnnl_memory_desc_init_by_tag (&b_md, 1, b_dims, dnnl_f32, dnnl_x);
  dnnl_memory_desc_init_by_tag (&dst_any, 4, dst_dims, exec->dt, dnnl_format_tag_any);
  /* weight gradients accumulate in float32 whatever the precision */
  dnnl_memory_desc_init_by_tag (&dw_any, 4, w_dims, dnnl_f32, dnnl_format_tag_any);

  /* the source layout is the previous node's; the destination is oneDNN's choice */
  if (!check (dnnl_convolution_forward_desc_init (&fwd_desc, dnnl_forward_training,
                                                  dnnl_convolution_direct, src_md, &w_any,
                                                  &b_md, &dst_any, strides, padding, padding),
              what, error)
      || !check (dnnl_primitive_desc_create (&fwd_pd, &fwd_desc, attr, exec->cpu->engine, NULL),
                 what, error))
    goto out;
  {
    const dnnl_memory_desc_t *dst_md = dnnl_primitive_desc_query_md (fwd_pd, dnnl_query_dst_md, 0);
    const dnnl_memory_desc_t *w_md = dnnl_primitive_desc_query_md (fwd_pd, dnnl_query_weights_md, 0);

    if (!add_output (exec, node, dst_md, error) || !new_primitive (exec, fwd_pd, what, &node->forward, error))
      goto out;
    node->weights_user = new_memory (exec, &w_plain, DNNL_MEMORY_NONE);
    node->weights = new_memory (exec, w_md, new_buffer (exec, dnnl_memory_desc_get_size (w_md)));
    node->bias = new_memory (exec, &b_md, DNNL_MEMORY_NONE);
    if (!new_reorder (exec, &w_plain, w_md, FALSE, "weight reorder", &node->reorder_weights, error))
      goto out;

    /* gradients use the layouts of the tensors they belong to */
    if (!first)
      {
        if (!check (dnnl_convolution_backward_data_desc_init (&bwd_data_desc, dnnl_convolution_direct,
                                                              src_md, &w_any, dst_md, strides,
                                                              padding, padding),
                    what_bd, error)
            || !check (dnnl_primitive_desc_create (&bwd_data_pd, &bwd_data_desc, plain_attr,
                                                   exec->cpu->engine, fwd_pd),
                       what_bd, error)
            || !new_primitive (exec, bwd_data_pd, what_bd, &node->backward_data, error))
          goto out;
        {
          const dnnl_memory_desc_t *wb_md = dnnl_primitive_desc_query_md (bwd_data_pd, dnnl_query_weights_md, 0);
          const dnnl_memory_desc_t *ds_md = dnnl_primitive_desc_query_md (bwd_data_pd, dnnl_query_diff_src_md, 0);
          const dnnl_memory_desc_t *dd_md = dnnl_primitive_desc_query_md (bwd_data_pd, dnnl_query_diff_dst_md, 0);

          if (!dnnl_memory_desc_equal (ds_md, src_md) || !dnnl_memory_desc_equal (dd_md, dst_md))
            {
              g_set_error (error, EAD_ERROR, EAD_ERROR_BACKEND,
                           "oneDNN: %s uses gradient layouts unlike its activations", what_bd);
              goto out;
            }
          if (dnnl_memory_desc_equal (wb_md, w_md))
            node->weights_bwd = node->weights;
          else
            {
              node->weights_bwd = new_memory (exec, wb_md, new_buffer (exec, dnnl_memory_desc_get_size (wb_md)));
              if (!new_reorder (exec, &w_plain, wb_md, FALSE, "weight reorder", &node->reorder_weights_bwd, error))
                goto out;
            }
        }
      }
    /* oneDNN's JIT backward-weights kernels take a vertical padding of at most half the
     * kernel; beyond that (PDN layers with padding on: kernel 4, padding 3) only its
     * reference kernel is left, a thousand times slower.  So the source gets the excess
     * as real zero rows, copied in before each backward pass. */
    if (layer->padding > layer->kernel / 2)
      {
        dnnl_dim_t extra = layer->padding - layer->kernel / 2;
        dnnl_dims_t padded_dims = { src_md->dims[0], src_md->dims[1], src_md->dims[2] + 2 * extra,
                                    src_md->dims[3] };
        dnnl_dims_t padding_bw = { layer->kernel / 2, layer->padding };
        dnnl_memory_desc_t padded_any;

        dnnl_memory_desc_init_by_tag (&padded_any, 4, padded_dims, src_md->data_type,
                                      dnnl_format_tag_any);
        if (!check (dnnl_convolution_backward_weights_desc_init (&bwd_weights_desc,
                                                                 dnnl_convolution_direct,
                                                                 &padded_any, &dw_any, &b_md,
                                                                 dst_md, strides, padding_bw,
                                                                 padding_bw),
                    what_bw, error))
          goto out;
      }
    else if (!check (dnnl_convolution_backward_weights_desc_init (&bwd_weights_desc,
                                                                  dnnl_convolution_direct,
                                                                  src_md, &dw_any, &b_md, dst_md,
                                                                  strides, padding, padding),
                     what_bw, error))
      goto out;
    if (!check (dnnl_primitive_desc_create (&bwd_weights_pd, &bwd_weights_desc, plain_attr,
                                            exec->cpu->engine, fwd_pd),
                what_bw, error)
        || !new_primitive (exec, bwd_weights_pd, what_bw, &node->backward_weights, error))
      goto out;
    {
      const dnnl_memory_desc_t *dw_md = dnnl_primitive_desc_query_md (bwd_weights_pd, dnnl_query_diff_weights_md, 0);
      const dnnl_memory_desc_t *dd_md = dnnl_primitive_desc_query_md (bwd_weights_pd, dnnl_query_diff_dst_md, 0);
      const dnnl_memory_desc_t *s_md = dnnl_primitive_desc_query_md (bwd_weights_pd, dnnl_query_src_md, 0);

      if (!dnnl_memory_desc_equal (dd_md, dst_md)
          || (layer->padding <= layer->kernel / 2 && !dnnl_memory_desc_equal (s_md, src_md)))
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_BACKEND,
                       "oneDNN: %s uses layouts unlike its activations", what_bw);
          goto out;
        }
      if (layer->padding > layer->kernel / 2)
        {
          dnnl_dims_t offsets = { 0, 0, layer->padding - layer->kernel / 2, 0 };
          dnnl_memory_desc_t interior_md;
          void *padded = new_buffer (exec, dnnl_memory_desc_get_size (s_md));  /* zeroed */

          node->src_bwd_weights = new_memory (exec, s_md, padded);
          if (!check (dnnl_memory_desc_init_submemory (&interior_md, s_md, src_md->dims, offsets),
                      what_bw, error))
            goto out;
          node->src_bwd_weights_interior = new_memory (exec, &interior_md, padded);
          if (!new_reorder (exec, src_md, &interior_md, FALSE, "padded source",
                            &node->reorder_src_bwd_weights, error))
            goto out;
        }
      else
        node->src_bwd_weights = node->src;
      node->diff_weights = new_memory (exec, dw_md, new_buffer (exec, dnnl_memory_desc_get_size (dw_md)));
      node->diff_bias = new_memory (exec, &b_md, new_buffer (exec, layer->out_channels * sizeof (float)));
      node->grad_weights_user = new_memory (exec, &w_plain, DNNL_MEMORY_NONE);
      if (!new_reorder (exec, dw_md, &w_plain, TRUE, "weight gradient", &node->accumulate_weights, error))
        goto out;
    }
  }
  ok = TRUE;
out:
  dnnl_primitive_attr_destroy (attr);
  dnnl_primitive_attr_destroy (plain_attr);
  if (fwd_pd)
    dnnl_primitive_desc_destroy (fwd_pd);
  if (bwd_data_pd)
    dnnl_primitive_desc_destroy (bwd_data_pd);
  if (bwd_weights_pd)
    dnnl_primitive_desc_destroy (bwd_weights_pd);
  return ok;
}

static gboolean
compile_pool (EadTrainExec *exec, Node *node, const dnnl_memory_desc_t *src_md, GError **error)
{
  const EadLayer *layer = &exec->net->layers[node->layer];
  const dnnl_dim_t *d = src_md->dims;
  dnnl_dims_t dst_dims = { d[0], d[1], (d[2] + 2 * layer->padding - layer->kernel) / layer->stride + 1,
                           (d[3] + 2 * layer->padding - layer->kernel) / layer->stride + 1 };
  dnnl_dims_t strides = { layer->stride, layer->stride };
  dnnl_dims_t kernel = { layer->kernel, layer->kernel };
  dnnl_dims_t dilation = { 0, 0 };
  dnnl_dims_t padding = { layer->padding, layer->padding };
  dnnl_memory_desc_t dst_any;
  dnnl_pooling_v2_desc_t fwd_desc, bwd_desc;
  dnnl_primitive_desc_t fwd_pd = NULL, bwd_pd = NULL;
  dnnl_primitive_attr_t attr = train_attr (FALSE);
  g_autofree char *what = g_strdup_printf ("layer %d avgpool %d", node->layer, layer->kernel);
  gboolean ok;

  dnnl_memory_desc_init_by_tag (&dst_any, 4, dst_dims, exec->dt, dnnl_format_tag_any);
  ok = check (dnnl_pooling_v2_forward_desc_init (&fwd_desc, dnnl_forward_training,
                                                 dnnl_pooling_avg_include_padding, src_md,
                                                 &dst_any, strides, kernel, dilation, padding,
                                                 padding),
              what, error)
       && check (dnnl_primitive_desc_create (&fwd_pd, &fwd_desc, attr, exec->cpu->engine, NULL),
                 what, error)
       && add_output (exec, node, dnnl_primitive_desc_query_md (fwd_pd, dnnl_query_dst_md, 0), error)
       && new_primitive (exec, fwd_pd, what, &node->forward, error)
       && check (dnnl_pooling_v2_backward_desc_init (&bwd_desc, dnnl_pooling_avg_include_padding,
                                                     src_md, &node->dst_md, strides, kernel,
                                                     dilation, padding, padding),
                 what, error)
       && check (dnnl_primitive_desc_create (&bwd_pd, &bwd_desc, attr, exec->cpu->engine, fwd_pd),
                 what, error)
       && new_primitive (exec, bwd_pd, what, &node->backward_data, error);
  dnnl_primitive_attr_destroy (attr);
  if (fwd_pd)
    dnnl_primitive_desc_destroy (fwd_pd);
  if (bwd_pd)
    dnnl_primitive_desc_destroy (bwd_pd);
  return ok;
}

static gboolean
compile_resample (EadTrainExec *exec, Node *node, const dnnl_memory_desc_t *src_md, int out_h,
                  int out_w, GError **error)
{
  dnnl_dims_t dst_dims = { src_md->dims[0], src_md->dims[1], out_h, out_w };
  dnnl_memory_desc_t dst_any;
  dnnl_resampling_desc_t fwd_desc, bwd_desc;
  dnnl_primitive_desc_t fwd_pd = NULL, bwd_pd = NULL;
  dnnl_primitive_attr_t attr = train_attr (FALSE);
  g_autofree char *what = g_strdup_printf ("layer %d resize to %dx%d", node->layer, out_w, out_h);
  gboolean ok;

  dnnl_memory_desc_init_by_tag (&dst_any, 4, dst_dims, exec->dt, dnnl_format_tag_any);
  ok = check (dnnl_resampling_forward_desc_init (&fwd_desc, dnnl_forward_training,
                                                 dnnl_resampling_linear, NULL, src_md, &dst_any),
              what, error)
       && check (dnnl_primitive_desc_create (&fwd_pd, &fwd_desc, attr, exec->cpu->engine, NULL),
                 what, error)
       && add_output (exec, node, dnnl_primitive_desc_query_md (fwd_pd, dnnl_query_dst_md, 0), error)
       && new_primitive (exec, fwd_pd, what, &node->forward, error)
       && check (dnnl_resampling_backward_desc_init (&bwd_desc, dnnl_resampling_linear, NULL,
                                                     src_md, &node->dst_md),
                 what, error)
       && check (dnnl_primitive_desc_create (&bwd_pd, &bwd_desc, attr, exec->cpu->engine, fwd_pd),
                 what, error)
       && new_primitive (exec, bwd_pd, what, &node->backward_data, error);
  dnnl_primitive_attr_destroy (attr);
  if (fwd_pd)
    dnnl_primitive_desc_destroy (fwd_pd);
  if (bwd_pd)
    dnnl_primitive_desc_destroy (bwd_pd);
  return ok;
}

/* Dropout keeps the layout (and data type) of its input; its NCHW mask is reordered into
 * that layout.  The mask values, 0 and 1 / (1 - p), are exact in bf16 for p = 0.2. */
static gboolean
compile_dropout (EadTrainExec *exec, Node *node, const dnnl_memory_desc_t *src_md, GError **error)
{
  dnnl_memory_desc_t plain_md;
  size_t plain_count = src_md->dims[0] * src_md->dims[1] * src_md->dims[2] * src_md->dims[3];

  node->dropout = exec->net->layers[node->layer].dropout;
  if (!add_output (exec, node, src_md, error))
    return FALSE;
  dnnl_memory_desc_init_by_tag (&plain_md, 4, src_md->dims, dnnl_f32, dnnl_nchw);
  node->mask_plain = new_buffer (exec, plain_count * sizeof (float));
  node->mask = new_buffer (exec, dnnl_memory_desc_get_size (src_md));
  node->mask_plain_memory = new_memory (exec, &plain_md, node->mask_plain);
  node->mask_memory = new_memory (exec, src_md, node->mask);
  return new_reorder (exec, &plain_md, src_md, FALSE, "dropout mask", &node->reorder_mask, error);
}

void
_ead_cpu_train_free (EadTrainExec *exec)
{
  if (exec == NULL)
    return;
  for (guint i = 0; i < exec->primitives->len; i++)
    dnnl_primitive_destroy (exec->primitives->pdata[i]);
  for (guint i = 0; i < exec->memories->len; i++)
    dnnl_memory_destroy (exec->memories->pdata[i]);
  g_ptr_array_unref (exec->buffers);
  g_array_unref (exec->nodes);
  g_ptr_array_unref (exec->memories);
  g_ptr_array_unref (exec->primitives);
  g_ptr_array_unref (exec->descriptions);
  if (exec->stream)
    dnnl_stream_destroy (exec->stream);
  g_free (exec);
}

/* The gradients alternate between two buffers as backward walks the nodes (see
 * _ead_cpu_train_backward); each buffer is sized for the largest gradient it holds. */
static void
diff_buffer_sizes (EadTrainExec *exec, size_t sizes[2])
{
  int current = 0;

  sizes[0] = sizes[1] = 0;
  for (int i = exec->nodes->len - 1; i >= 0; i--)
    {
      Node *node = &g_array_index (exec->nodes, Node, i);
      gboolean produces_input_gradient = node->backward_data != NULL
                                         && (node->kind == NODE_CONV || node->kind == NODE_POOL
                                             || node->kind == NODE_RESAMPLE);

      if (node->kind == NODE_INPUT_REORDER)
        break;
      sizes[current] = MAX (sizes[current], dnnl_memory_desc_get_size (&node->dst_md));
      if (node->kind == NODE_CONV && node->backward_data == NULL)
        break;
      if (produces_input_gradient)
        {
          current = 1 - current;
          sizes[current] = MAX (sizes[current], dnnl_memory_desc_get_size (&node->src_md));
        }
    }
}

EadTrainExec *
_ead_cpu_train_compile (EadBackend *backend,
                        EadNet *net,
                        EadNet *grad,
                        int batch,
                        int height,
                        int width,
                        GError **error)
{
  EadShape shapes[EAD_MAX_LAYERS];
  EadShape in_shape = { net->layers[0].in_channels, height, width };
  dnnl_dims_t in_dims = { batch, in_shape.c, height, width };
  g_autoptr (GError) local_error = NULL;
  EadTrainExec *exec;
  dnnl_memory_desc_t src_md;
  dnnl_memory_t src;
  gboolean ok = TRUE, first_conv = TRUE;

  if (!ead_net_shapes (net, in_shape, shapes, NULL, error))
    return NULL;
  exec = g_new0 (EadTrainExec, 1);
  exec->cpu = (EadCpuBackend *) backend;
  exec->net = net;
  exec->grad = grad;
  exec->threads = exec->cpu->threads;
  exec->dt = _ead_cpu_data_type (exec->cpu);
  omp_set_num_threads (exec->threads);
  exec->nodes = g_array_new (FALSE, TRUE, sizeof (Node));
  exec->memories = g_ptr_array_new ();
  exec->primitives = g_ptr_array_new ();
  exec->descriptions = g_ptr_array_new_with_free_func (g_free);
  exec->buffers = g_ptr_array_new_with_free_func (free);
  if (!check (dnnl_stream_create (&exec->stream, exec->cpu->engine, dnnl_stream_default_flags),
              "stream", error))
    {
      _ead_cpu_train_free (exec);
      return NULL;
    }

  dnnl_memory_desc_init_by_tag (&exec->in_md, 4, in_dims, dnnl_f32, dnnl_nchw);
  exec->in_user = new_memory (exec, &exec->in_md, DNNL_MEMORY_NONE);
  src_md = exec->in_md;
  src = exec->in_user;

  for (int i = 0; ok && i < net->n_layers; i++)
    {
      const EadLayer *layer = &net->layers[i];
      Node node = { .layer = i, .src_md = src_md, .src = src };

      switch (layer->kind)
        {
        case EAD_LAYER_CONV:
          node.kind = NODE_CONV;
          node.relu = i + 1 < net->n_layers && net->layers[i + 1].kind == EAD_LAYER_RELU;
          if (first_conv)
            {
              /* let the first convolution pick its input layout: a reorder node feeds it */
              dnnl_memory_desc_t any_md;
              dnnl_convolution_desc_t probe;
              dnnl_primitive_desc_t probe_pd = NULL;
              dnnl_dims_t w_dims = { layer->out_channels, layer->in_channels, layer->kernel, layer->kernel };
              dnnl_dims_t b_dims = { layer->out_channels };
              dnnl_dims_t strides = { layer->stride, layer->stride };
              dnnl_dims_t padding = { layer->padding, layer->padding };
              dnnl_dims_t dst_dims = { batch, layer->out_channels, shapes[i].h, shapes[i].w };
              dnnl_memory_desc_t w_any, b_md, dst_any;
              dnnl_primitive_attr_t attr = train_attr (node.relu);

              dnnl_memory_desc_init_by_tag (&any_md, 4, in_dims, exec->dt, dnnl_format_tag_any);
              dnnl_memory_desc_init_by_tag (&w_any, 4, w_dims, exec->dt, dnnl_format_tag_any);
              dnnl_memory_desc_init_by_tag (&b_md, 1, b_dims, dnnl_f32, dnnl_x);
              dnnl_memory_desc_init_by_tag (&dst_any, 4, dst_dims, exec->dt, dnnl_format_tag_any);
              ok = check (dnnl_convolution_forward_desc_init (&probe, dnnl_forward_training,
                                                              dnnl_convolution_direct, &any_md,
                                                              &w_any, &b_md, &dst_any, strides,
                                                              padding, padding),
                          "input layout", &local_error)
                   && check (dnnl_primitive_desc_create (&probe_pd, &probe, attr, exec->cpu->engine, NULL),
                             "input layout", &local_error);
              dnnl_primitive_attr_destroy (attr);
              if (ok)
                {
                  const dnnl_memory_desc_t *want = dnnl_primitive_desc_query_md (probe_pd, dnnl_query_src_md, 0);
                  if (!dnnl_memory_desc_equal (want, &src_md))
                    {
                      Node reorder = { .kind = NODE_INPUT_REORDER, .layer = -1, .src_md = src_md, .src = src };
                      ok = add_output (exec, &reorder, want, &local_error)
                           && new_reorder (exec, &src_md, want, FALSE, "input reorder", &reorder.forward, &local_error);
                      g_array_append_val (exec->nodes, reorder);
                      node.src_md = reorder.dst_md;
                      node.src = reorder.dst;
                    }
                  dnnl_primitive_desc_destroy (probe_pd);
                }
            }
          ok = ok && compile_conv (exec, &node, &node.src_md, first_conv, &local_error);
          first_conv = FALSE;
          if (node.relu)
            i++;
          break;
        case EAD_LAYER_AVGPOOL:
          node.kind = NODE_POOL;
          ok = compile_pool (exec, &node, &src_md, &local_error);
          break;
        case EAD_LAYER_UPSAMPLE:
          node.kind = NODE_RESAMPLE;
          ok = compile_resample (exec, &node, &src_md, shapes[i].h, shapes[i].w, &local_error);
          break;
        case EAD_LAYER_DROPOUT:
          node.kind = NODE_DROPOUT;
          ok = compile_dropout (exec, &node, &src_md, &local_error);
          break;
        case EAD_LAYER_RELU:
          g_set_error (&local_error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
                       "layer %d: a ReLU that does not follow a convolution", i);
          ok = FALSE;
          break;
        }
      if (ok)
        {
          g_array_append_val (exec->nodes, node);
          src_md = node.dst_md;
          src = node.dst;
        }
    }

  if (ok)
    {
      dnnl_memory_desc_t out_md;
      Node *last = &g_array_index (exec->nodes, Node, exec->nodes->len - 1);
      dnnl_dims_t out_dims = { batch, last->dst_md.dims[1], last->dst_md.dims[2], last->dst_md.dims[3] };

      dnnl_memory_desc_init_by_tag (&out_md, 4, out_dims, dnnl_f32, dnnl_nchw);
      exec->out_user = new_memory (exec, &out_md, DNNL_MEMORY_NONE);
      exec->diff_out_user = new_memory (exec, &out_md, DNNL_MEMORY_NONE);
      ok = new_reorder (exec, &last->dst_md, &out_md, FALSE, "output reorder", &exec->reorder_out, &local_error)
           && new_reorder (exec, &out_md, &last->dst_md, FALSE, "gradient reorder", &exec->reorder_diff_out, &local_error);
    }
  if (!ok)
    {
      g_propagate_prefixed_error (error, g_steal_pointer (&local_error), "%s training: ",
                                  ead_net_kind_name (net->kind));
      _ead_cpu_train_free (exec);
      return NULL;
    }
  {
    size_t sizes[2];
    diff_buffer_sizes (exec, sizes);
    exec->diff_buffer[0] = new_buffer (exec, sizes[0]);
    exec->diff_buffer[1] = new_buffer (exec, sizes[1]);
  }
  return exec;
}

/* out[k] = a[k] * b[k] over count elements of type dt (out may be a): dropout */
static void
multiply (dnnl_data_type_t dt, void *out, const void *a, const void *b, size_t count)
{
  if (dt == dnnl_bf16)
    {
      guint16 *o = out;
      const guint16 *x = a, *y = b;
#pragma omp parallel for schedule(static)
      for (size_t k = 0; k < count; k++)
        o[k] = float_to_bf16 (bf16_to_float (x[k]) * bf16_to_float (y[k]));
    }
  else
    {
      float *o = out;
      const float *x = a, *y = b;
#pragma omp parallel for schedule(static)
      for (size_t k = 0; k < count; k++)
        o[k] = x[k] * y[k];
    }
}

static gboolean
execute (EadTrainExec *exec, dnnl_primitive_t primitive, int n_args, const dnnl_exec_arg_t *args,
         GError **error)
{
  return check (dnnl_primitive_execute (primitive, exec->stream, n_args, args), "training step",
                error);
}

static gboolean
reorder (EadTrainExec *exec, dnnl_primitive_t primitive, dnnl_memory_t from, dnnl_memory_t to,
         GError **error)
{
  return execute (exec, primitive, 2,
                  (dnnl_exec_arg_t[]) { { DNNL_ARG_FROM, from }, { DNNL_ARG_TO, to } }, error);
}

gboolean
_ead_cpu_train_forward (EadTrainExec *exec,
                        const float *in,
                        float *out,
                        guint64 dropout_seed,
                        GError **error)
{
  omp_set_num_threads (exec->threads);
  dnnl_memory_set_data_handle (exec->in_user, (void *) in);
  for (guint i = 0; i < exec->nodes->len; i++)
    {
      Node *node = &g_array_index (exec->nodes, Node, i);
      gboolean ok = TRUE;

      switch (node->kind)
        {
        case NODE_INPUT_REORDER:
          ok = reorder (exec, node->forward, node->src, node->dst, error);
          break;
        case NODE_CONV:
          dnnl_memory_set_data_handle (node->weights_user, exec->net->weight[node->layer]);
          dnnl_memory_set_data_handle (node->bias, exec->net->bias[node->layer]);
          ok = reorder (exec, node->reorder_weights, node->weights_user, node->weights, error)
               && (node->reorder_weights_bwd == NULL
                   || reorder (exec, node->reorder_weights_bwd, node->weights_user,
                               node->weights_bwd, error))
               && execute (exec, node->forward, 4,
                           (dnnl_exec_arg_t[]) { { DNNL_ARG_SRC, node->src },
                                                 { DNNL_ARG_WEIGHTS, node->weights },
                                                 { DNNL_ARG_BIAS, node->bias },
                                                 { DNNL_ARG_DST, node->dst } },
                           error);
          break;
        case NODE_POOL:
        case NODE_RESAMPLE:
          ok = execute (exec, node->forward, 2,
                        (dnnl_exec_arg_t[]) { { DNNL_ARG_SRC, node->src },
                                              { DNNL_ARG_DST, node->dst } },
                        error);
          break;
        case NODE_DROPOUT:
          {
            void *src = NULL;
            size_t count = (size_t) node->src_md.dims[0] * node->src_md.dims[1]
                           * node->src_md.dims[2] * node->src_md.dims[3];

            dnnl_memory_get_data_handle (node->src, &src);
            ead_dropout_mask (dropout_seed, node->layer, node->dropout, node->mask_plain, count);
            ok = reorder (exec, node->reorder_mask, node->mask_plain_memory, node->mask_memory, error)
                 && check (dnnl_stream_wait (exec->stream), "dropout", error);
            multiply (exec->dt, node->dst_buffer, src, node->mask, node->dst_elements);
          }
          break;
        }
      if (!ok)
        return FALSE;
    }
  {
    Node *last = &g_array_index (exec->nodes, Node, exec->nodes->len - 1);
    dnnl_memory_set_data_handle (exec->out_user, out);
    return reorder (exec, exec->reorder_out, last->dst, exec->out_user, error)
           && check (dnnl_stream_wait (exec->stream), "training forward", error);
  }
}

/* grad[k] *= (y[k] > 0): the ReLU derivative taken from its output, as PyTorch does */
static void
relu_backward (dnnl_data_type_t dt, void *diff, const void *y, size_t count)
{
  if (dt == dnnl_bf16)
    {
      guint16 *d = diff;
      const guint16 *v = y;
      /* a bf16 value is above zero when its sign bit is clear and it is not +0 */
#pragma omp parallel for schedule(static)
      for (size_t k = 0; k < count; k++)
        d[k] = v[k] != 0 && (v[k] & 0x8000) == 0 ? d[k] : 0;
    }
  else
    {
      float *d = diff;
      const float *v = y;
#pragma omp parallel for schedule(static)
      for (size_t k = 0; k < count; k++)
        d[k] = v[k] > 0.0f ? d[k] : 0.0f;
    }
}

gboolean
_ead_cpu_train_backward (EadTrainExec *exec, const float *diff_out, GError **error)
{
  Node *last = &g_array_index (exec->nodes, Node, exec->nodes->len - 1);
  int current = 0;

  omp_set_num_threads (exec->threads);
  dnnl_memory_set_data_handle (exec->diff_out_user, (void *) diff_out);
  dnnl_memory_set_data_handle (last->diff_dst, exec->diff_buffer[0]);
  if (!reorder (exec, exec->reorder_diff_out, exec->diff_out_user, last->diff_dst, error))
    return FALSE;

  for (int i = exec->nodes->len - 1; i >= 0; i--)
    {
      Node *node = &g_array_index (exec->nodes, Node, i);
      void *diff = exec->diff_buffer[current];
      gboolean ok = TRUE;

      dnnl_memory_set_data_handle (node->diff_dst, diff);
      dnnl_memory_set_data_handle (node->diff_src, exec->diff_buffer[1 - current]);
      switch (node->kind)
        {
        case NODE_INPUT_REORDER:
          return check (dnnl_stream_wait (exec->stream), "training backward", error);
        case NODE_CONV:
          {
            const EadLayer *layer = &exec->net->layers[node->layer];
            const float *diff_bias = NULL;
            float *grad_bias = exec->grad->bias[node->layer];

            if (node->relu)
              {
                if (!check (dnnl_stream_wait (exec->stream), "training backward", error))
                  return FALSE;
                relu_backward (exec->dt, diff, node->dst_buffer, node->dst_elements);
              }
            dnnl_memory_set_data_handle (node->grad_weights_user, exec->grad->weight[node->layer]);
            ok = (node->reorder_src_bwd_weights == NULL
                  || reorder (exec, node->reorder_src_bwd_weights, node->src,
                              node->src_bwd_weights_interior, error))
                 && execute (exec, node->backward_weights, 4,
                             (dnnl_exec_arg_t[]) { { DNNL_ARG_SRC, node->src_bwd_weights },
                                                   { DNNL_ARG_DIFF_DST, node->diff_dst },
                                                   { DNNL_ARG_DIFF_WEIGHTS, node->diff_weights },
                                                   { DNNL_ARG_DIFF_BIAS, node->diff_bias } },
                             error)
                 && reorder (exec, node->accumulate_weights, node->diff_weights,
                             node->grad_weights_user, error)
                 && (node->backward_data == NULL
                     || execute (exec, node->backward_data, 3,
                                 (dnnl_exec_arg_t[]) { { DNNL_ARG_DIFF_DST, node->diff_dst },
                                                       { DNNL_ARG_WEIGHTS, node->weights_bwd },
                                                       { DNNL_ARG_DIFF_SRC, node->diff_src } },
                                 error))
                 && check (dnnl_stream_wait (exec->stream), "training backward", error);
            if (!ok)
              return FALSE;
            dnnl_memory_get_data_handle (node->diff_bias, (void **) &diff_bias);
            for (int c = 0; c < layer->out_channels; c++)
              grad_bias[c] += diff_bias[c];
            if (node->backward_data == NULL)
              return TRUE;
            current = 1 - current;
          }
          break;
        case NODE_POOL:
        case NODE_RESAMPLE:
          ok = execute (exec, node->backward_data, 2,
                        (dnnl_exec_arg_t[]) { { DNNL_ARG_DIFF_DST, node->diff_dst },
                                              { DNNL_ARG_DIFF_SRC, node->diff_src } },
                        error);
          current = 1 - current;
          break;
        case NODE_DROPOUT:
          if (!check (dnnl_stream_wait (exec->stream), "training backward", error))
            return FALSE;
          multiply (exec->dt, diff, diff, node->mask, node->dst_elements);
          break;
        }
      if (!ok)
        return FALSE;
    }
  return check (dnnl_stream_wait (exec->stream), "training backward", error);
}

char *
_ead_cpu_train_describe (EadTrainExec *exec)
{
  GString *text = g_string_new (NULL);

  for (guint i = 0; i < exec->descriptions->len; i++)
    g_string_append_printf (text, "%s\n", (const char *) exec->descriptions->pdata[i]);
  return g_string_free (text, FALSE);
}
