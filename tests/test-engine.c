/* test-engine.c: the engine's operations against plain C loops, and its bookkeeping
 * (shapes, resize sizes, parameter counts, the weight generator, batch limits).
 *
 * The references below accumulate in double; a backend result c matches a reference r
 * when max |c - r| <= 1e-4 * max |r| over the tensor (float32 rounding in long sums stays
 * far below that, an indexing or layout mistake far above it).
 */
#include <glib.h>
#include <math.h>
#include <string.h>

#include "ead-backend.h"
#include "ead-detector.h"
#include "ead-error.h"
#include "ead-model.h"
#include "ead-network.h"

#define REL_TOL 1e-4
#define SEED 11

/* ---------------------------------------------------------------------------------------
 * Helpers
 * --------------------------------------------------------------------------------------- */

/* Values in [low, high) from the engine's generator, so every run sees the same data. */
static float *
random_data (const char *name, size_t count, float low, float high)
{
  guint64 key = ead_random_key (SEED, name);
  float *data = g_new (float, count);

  for (size_t i = 0; i < count; i++)
    data[i] = low + (high - low) * ead_random_uniform (key, i);
  return data;
}

static double *
to_double (const float *data, size_t count)
{
  double *out = g_new (double, count);

  for (size_t i = 0; i < count; i++)
    out[i] = data[i];
  return out;
}

/* Fails the test unless got matches ref by the criterion at the top; returns the error
 * relative to max |ref|. */
static double
assert_close (const float *got, const double *ref, size_t count, const char *what)
{
  double scale = 0.0, worst = 0.0;
  size_t worst_at = 0;

  for (size_t i = 0; i < count; i++)
    {
      double error = fabs (got[i] - ref[i]);
      scale = MAX (scale, fabs (ref[i]));
      if (!(error <= worst))  /* NaN included */
        {
          worst = error;
          worst_at = i;
        }
    }
  g_assert_cmpfloat (scale, >, 0.0);
  if (!(worst <= REL_TOL * scale))
    g_test_fail_printf ("%s: element %zu is %.9g, reference %.9g (error %.3g, allowed %.3g)",
                        what, worst_at, got[worst_at], ref[worst_at], worst, REL_TOL * scale);
  return worst / scale;
}

/* Compiles net on the CPU backend for batch x channels x h x w, runs it on `in` and
 * returns the NCHW output. */
static float *
run_net (const EadNet *net, int batch, int channels, int h, int w, const float *in,
         EadShape *out_shape)
{
  EadBackend *cpu = ead_backend_cpu ();
  EadWorkspace workspace = { 0 };
  g_autoptr (GError) error = NULL;
  EadNetExec *exec;
  float *out;

  g_assert_true (ead_net_shapes (net, (EadShape) { channels, h, w }, NULL, out_shape, &error));
  g_assert_no_error (error);
  exec = cpu->compile (cpu, net, batch, h, w, &workspace, &error);
  g_assert_no_error (error);
  g_assert_nonnull (exec);
  g_assert_true (ead_workspace_commit (&workspace, &error));
  g_assert_no_error (error);
  out = g_new (float, (size_t) batch * out_shape->c * out_shape->h * out_shape->w);
  g_assert_true (cpu->forward (exec, in, out, &error));
  g_assert_no_error (error);
  cpu->exec_free (exec);
  ead_workspace_clear (&workspace);
  return out;
}

static void
append_relu (EadNet *net)
{
  g_assert_cmpint (net->n_layers, <, EAD_MAX_LAYERS);
  net->layers[net->n_layers++] = (EadLayer) { .kind = EAD_LAYER_RELU };
}

/* ---------------------------------------------------------------------------------------
 * Reference operations (NCHW, double)
 * --------------------------------------------------------------------------------------- */

static int
window_output (int n, int kernel, int stride, int padding)
{
  return (n + 2 * padding - kernel) / stride + 1;
}

static double *
ref_conv (const double *in, int batch, int h, int w, const EadLayer *layer,
          const float *weight, const float *bias, int *out_h, int *out_w)
{
  int k = layer->kernel, s = layer->stride, p = layer->padding;
  int ci = layer->in_channels, co = layer->out_channels;
  int oh = window_output (h, k, s, p), ow = window_output (w, k, s, p);
  double *out = g_new (double, (size_t) batch * co * oh * ow);

  for (int n = 0; n < batch; n++)
    for (int o = 0; o < co; o++)
      for (int y = 0; y < oh; y++)
        for (int x = 0; x < ow; x++)
          {
            double sum = bias[o];
            for (int i = 0; i < ci; i++)
              for (int ky = 0; ky < k; ky++)
                for (int kx = 0; kx < k; kx++)
                  {
                    int sy = y * s - p + ky, sx = x * s - p + kx;
                    if (sy < 0 || sy >= h || sx < 0 || sx >= w)
                      continue;
                    sum += (double) weight[((o * ci + i) * k + ky) * k + kx]
                           * in[(((size_t) n * ci + i) * h + sy) * w + sx];
                  }
            out[(((size_t) n * co + o) * oh + y) * ow + x] = sum;
          }
  *out_h = oh;
  *out_w = ow;
  return out;
}

static void
ref_relu (double *data, size_t count)
{
  for (size_t i = 0; i < count; i++)
    data[i] = MAX (data[i], 0.0);
}

/* nn.AvgPool2d(2, 2, padding): zero padding counted, the divisor is always 4. */
static double *
ref_avgpool (const double *in, int planes, int h, int w, int padding, int *out_h, int *out_w)
{
  int oh = window_output (h, 2, 2, padding), ow = window_output (w, 2, 2, padding);
  double *out = g_new (double, (size_t) planes * oh * ow);

  for (int c = 0; c < planes; c++)
    for (int y = 0; y < oh; y++)
      for (int x = 0; x < ow; x++)
        {
          double sum = 0.0;
          for (int ky = 0; ky < 2; ky++)
            for (int kx = 0; kx < 2; kx++)
              {
                int sy = 2 * y - padding + ky, sx = 2 * x - padding + kx;
                if (sy >= 0 && sy < h && sx >= 0 && sx < w)
                  sum += in[((size_t) c * h + sy) * w + sx];
              }
          out[((size_t) c * oh + y) * ow + x] = sum / 4.0;
        }
  *out_h = oh;
  *out_w = ow;
  return out;
}

/* Spec §1.4 in double: src = max(0, (dst + 0.5) * in / out - 0.5), clamped neighbours. */
static void
ref_axis (int dst, int in, int out, int *i0, int *i1, double *w1)
{
  double src = MAX (0.0, (dst + 0.5) * in / out - 0.5);

  *i0 = MIN ((int) floor (src), in - 1);
  *i1 = *i0 < in - 1 ? *i0 + 1 : *i0;
  *w1 = src - *i0;
}

static double *
ref_resize (const double *in, int planes, int h, int w, int oh, int ow)
{
  double *out = g_new (double, (size_t) planes * oh * ow);

  for (int c = 0; c < planes; c++)
    for (int y = 0; y < oh; y++)
      for (int x = 0; x < ow; x++)
        {
          const double *src = in + (size_t) c * h * w;
          int y0, y1, x0, x1;
          double wy, wx;

          ref_axis (y, h, oh, &y0, &y1, &wy);
          ref_axis (x, w, ow, &x0, &x1, &wx);
          out[((size_t) c * oh + y) * ow + x] =
            (1 - wy) * ((1 - wx) * src[y0 * w + x0] + wx * src[y0 * w + x1])
            + wy * ((1 - wx) * src[y1 * w + x0] + wx * src[y1 * w + x1]);
        }
  return out;
}

/* ---------------------------------------------------------------------------------------
 * Operations
 * --------------------------------------------------------------------------------------- */

/* One kernel size: strides 1 and 2, paddings 0 to 3, with and without a fused ReLU, for a
 * 3-channel input (the first layers) and for channel counts that fill no SIMD block. */
static void
test_conv (gconstpointer data)
{
  const int kernel = GPOINTER_TO_INT (data);
  static const int channels[][2] = { { 3, 32 }, { 13, 19 } };
  const int batch = 2, h = 19, w = 23;
  double worst = 0.0;

  for (size_t cc = 0; cc < G_N_ELEMENTS (channels); cc++)
    for (int stride = 1; stride <= 2; stride++)
      for (int padding = 0; padding <= 3; padding++)
        for (int relu = 0; relu <= 1; relu++)
          {
            EadLayer layer = { .kind = EAD_LAYER_CONV, .in_channels = channels[cc][0],
                               .out_channels = channels[cc][1], .kernel = kernel,
                               .stride = stride, .padding = padding };
            g_autoptr (EadNet) net = ead_net_new_single (&layer);
            size_t in_count = (size_t) batch * layer.in_channels * h * w;
            g_autofree char *what = g_strdup_printf ("conv %dx%d %d->%d stride %d pad %d%s",
                                                     kernel, kernel, layer.in_channels,
                                                     layer.out_channels, stride, padding,
                                                     relu ? " relu" : "");
            g_autofree float *in = random_data ("conv input", in_count, -2.0f, 2.0f);
            g_autofree double *in_d = to_double (in, in_count);
            g_autofree float *out = NULL;
            g_autofree double *ref = NULL;
            EadShape shape;
            int oh, ow;

            ead_net_init_random (net, what, SEED);
            if (relu)
              append_relu (net);
            out = run_net (net, batch, layer.in_channels, h, w, in, &shape);
            ref = ref_conv (in_d, batch, h, w, &layer, net->weight[0], net->bias[0], &oh, &ow);
            if (relu)
              ref_relu (ref, (size_t) batch * layer.out_channels * oh * ow);
            g_assert_cmpint (shape.c, ==, layer.out_channels);
            g_assert_cmpint (shape.h, ==, oh);
            g_assert_cmpint (shape.w, ==, ow);
            worst = MAX (worst, assert_close (out, ref, (size_t) batch * shape.c * oh * ow,
                                              what));
          }
  g_test_message ("conv %dx%d: largest error %.3g of max|r|", kernel, kernel, worst);
}

static void
test_avgpool (void)
{
  const int batch = 2, channels = 6, h = 11, w = 14;
  size_t in_count = (size_t) batch * channels * h * w;
  g_autofree float *in = random_data ("avgpool input", in_count, -1.0f, 3.0f);
  g_autofree double *in_d = to_double (in, in_count);

  for (int padding = 0; padding <= 1; padding++)
    {
      /* a network that starts with a pool takes its channel count from in_channels */
      EadLayer layer = { .kind = EAD_LAYER_AVGPOOL, .in_channels = channels, .kernel = 2,
                         .stride = 2, .padding = padding };
      g_autoptr (EadNet) net = ead_net_new_single (&layer);
      g_autofree float *out = NULL;
      g_autofree double *ref = NULL;
      g_autofree char *what = g_strdup_printf ("avgpool 2x2 pad %d", padding);
      EadShape shape;
      int oh, ow;

      out = run_net (net, batch, channels, h, w, in, &shape);
      ref = ref_avgpool (in_d, batch * channels, h, w, padding, &oh, &ow);
      g_assert_cmpint (shape.h, ==, padding ? 6 : 5);
      g_assert_cmpint (shape.w, ==, padding ? 8 : 7);
      g_assert_cmpint (shape.h, ==, oh);
      g_assert_cmpint (shape.w, ==, ow);
      g_test_message ("%s: error %.3g", what,
                      assert_close (out, ref, (size_t) batch * channels * oh * ow, what));
      /* the corner window of the padded pool holds one pixel: divided by 4, not 1 */
      if (padding)
        g_assert_cmpfloat_with_epsilon (out[0], in[0] / 4.0f, 1e-6);
    }
}

/* A lone ReLU (one that follows no convolution) runs as its own primitive. */
static void
test_relu_alone (void)
{
  const int batch = 1, channels = 5, h = 12, w = 10;
  EadLayer pool = { .kind = EAD_LAYER_AVGPOOL, .in_channels = channels, .kernel = 2,
                    .stride = 2 };
  g_autoptr (EadNet) net = ead_net_new_single (&pool);
  size_t in_count = (size_t) batch * channels * h * w;
  g_autofree float *in = random_data ("relu input", in_count, -2.0f, 1.0f);
  g_autofree double *in_d = to_double (in, in_count);
  g_autofree float *out = NULL;
  g_autofree double *ref = NULL;
  EadShape shape;
  int oh, ow;

  append_relu (net);
  out = run_net (net, batch, channels, h, w, in, &shape);
  ref = ref_avgpool (in_d, batch * channels, h, w, 0, &oh, &ow);
  ref_relu (ref, (size_t) batch * channels * oh * ow);
  assert_close (out, ref, (size_t) batch * channels * oh * ow, "avgpool + relu");
  for (size_t i = 0; i < (size_t) batch * channels * oh * ow; i++)
    g_assert_cmpfloat (out[i], >=, 0.0f);
}

/* The decoder's resize (oneDNN resampling) against spec §1.4, at every step of a
 * non-square autoencoder: down to 3x4, and from 256x320 to each later size. */
static void
test_upsample (void)
{
  const int batch = 2, channels = 3, h = 256, w = 320;
  size_t in_count = (size_t) batch * channels * h * w;
  g_autofree float *in = random_data ("upsample input", in_count, -2.0f, 2.0f);
  g_autofree double *in_d = to_double (in, in_count);
  int sizes[7][2];

  ead_autoencoder_sizes (h, w, FALSE, sizes);
  for (int step = 0; step < 7; step++)
    {
      EadLayer layer = { .kind = EAD_LAYER_UPSAMPLE, .in_channels = channels,
                         .upsample_step = step };
      g_autoptr (EadNet) net = ead_net_new_single (&layer);
      g_autofree float *out = NULL;
      g_autofree double *ref = NULL;
      g_autofree char *what = g_strdup_printf ("resize 256x320 -> %dx%d", sizes[step][0],
                                               sizes[step][1]);
      EadShape shape;

      /* resize targets are those of the autoencoder */
      net->kind = EAD_NET_AUTOENCODER;
      out = run_net (net, batch, channels, h, w, in, &shape);
      g_assert_cmpint (shape.h, ==, sizes[step][0]);
      g_assert_cmpint (shape.w, ==, sizes[step][1]);
      ref = ref_resize (in_d, batch * channels, h, w, shape.h, shape.w);
      g_test_message ("%s: error %.3g", what,
                      assert_close (out, ref, (size_t) batch * channels * shape.h * shape.w,
                                    what));
    }
}

/* Layers chained as in the PDN (conv + ReLU, pool with padding, strided conv, 1x1 conv)
 * with channel counts that make the backend convert between blocked layouts. */
static void
test_chain (void)
{
  const int batch = 2, h = 21, w = 18;
  EadLayer first = { .kind = EAD_LAYER_CONV, .in_channels = 3, .out_channels = 20, .kernel = 4,
                     .stride = 1, .padding = 3 };
  g_autoptr (EadNet) net = ead_net_new_single (&first);
  size_t in_count = (size_t) batch * 3 * h * w;
  g_autofree float *in = random_data ("chain input", in_count, -2.0f, 2.0f);
  g_autofree double *x0 = to_double (in, in_count);
  g_autofree double *x1 = NULL, *x2 = NULL, *x3 = NULL, *x4 = NULL;
  g_autofree float *out = NULL;
  EadShape shape;
  int h1, w1, h2, w2, h3, w3, h4, w4;

  append_relu (net);
  net->layers[net->n_layers++] = (EadLayer) { .kind = EAD_LAYER_AVGPOOL, .kernel = 2,
                                              .stride = 2, .padding = 1 };
  net->layers[net->n_layers++] = (EadLayer) { .kind = EAD_LAYER_CONV, .in_channels = 20,
                                              .out_channels = 7, .kernel = 3, .stride = 2,
                                              .padding = 1 };
  append_relu (net);
  net->layers[net->n_layers++] = (EadLayer) { .kind = EAD_LAYER_CONV, .in_channels = 7,
                                              .out_channels = 5, .kernel = 1, .stride = 1 };
  for (int i = 3; i < net->n_layers; i++)
    if (net->layers[i].kind == EAD_LAYER_CONV)
      {
        net->weight[i] = g_new0 (float, ead_layer_weight_count (&net->layers[i]));
        net->bias[i] = g_new0 (float, net->layers[i].out_channels);
      }
  ead_net_init_random (net, "chain", SEED);

  out = run_net (net, batch, 3, h, w, in, &shape);
  x1 = ref_conv (x0, batch, h, w, &net->layers[0], net->weight[0], net->bias[0], &h1, &w1);
  ref_relu (x1, (size_t) batch * 20 * h1 * w1);
  x2 = ref_avgpool (x1, batch * 20, h1, w1, 1, &h2, &w2);
  x3 = ref_conv (x2, batch, h2, w2, &net->layers[3], net->weight[3], net->bias[3], &h3, &w3);
  ref_relu (x3, (size_t) batch * 7 * h3 * w3);
  x4 = ref_conv (x3, batch, h3, w3, &net->layers[5], net->weight[5], net->bias[5], &h4, &w4);
  g_assert_cmpint (shape.c, ==, 5);
  g_assert_cmpint (shape.h, ==, h4);
  g_assert_cmpint (shape.w, ==, w4);
  assert_close (out, x4, (size_t) batch * 5 * h4 * w4, "conv-relu-pool-conv-relu-conv");
}

static void
check_sqdiff (gboolean normalise)
{
  const int batch = 2, a_total = 5, b_total = 9, b_offset = 3, channels = 4, hw = 130;
  EadBackend *cpu = ead_backend_cpu ();
  g_autofree float *a = random_data ("sqdiff a", (size_t) batch * a_total * hw, -3.0f, 3.0f);
  g_autofree float *b = random_data ("sqdiff b", (size_t) batch * b_total * hw, -1.0f, 1.0f);
  g_autofree float *mean = random_data ("sqdiff mean", a_total, -1.0f, 1.0f);
  g_autofree float *std = random_data ("sqdiff std", a_total, 0.5f, 2.5f);
  g_autofree float *out = g_new (float, (size_t) batch * hw);
  g_autofree double *ref = g_new0 (double, (size_t) batch * hw);
  g_autofree char *what = g_strdup_printf ("sqdiff_channel_mean%s",
                                           normalise ? " with mean/std" : "");

  cpu->sqdiff_channel_mean (a, a_total, normalise ? mean : NULL, normalise ? std : NULL, b,
                            b_total, b_offset, batch, channels, hw, out);
  for (int n = 0; n < batch; n++)
    for (int p = 0; p < hw; p++)
      {
        double sum = 0.0;
        for (int c = 0; c < channels; c++)
          {
            double t = a[((size_t) n * a_total + c) * hw + p];
            double d;

            if (normalise)
              t = (t - mean[c]) / std[c];
            d = t - b[((size_t) n * b_total + b_offset + c) * hw + p];
            sum += d * d;
          }
        ref[(size_t) n * hw + p] = sum / channels;
      }
  g_test_message ("%s: error %.3g", what, assert_close (out, ref, (size_t) batch * hw, what));
}

static void
test_sqdiff (void)
{
  check_sqdiff (TRUE);
  check_sqdiff (FALSE);
}

/* ---------------------------------------------------------------------------------------
 * Shapes and sizes
 * --------------------------------------------------------------------------------------- */

static void
assert_sizes (int h, int w, gboolean padding, const int expect_h[7], const int expect_w[7])
{
  int sizes[7][2];

  ead_autoencoder_sizes (h, w, padding, sizes);
  for (int i = 0; i < 7; i++)
    {
      g_assert_cmpint (sizes[i][0], ==, expect_h[i]);
      g_assert_cmpint (sizes[i][1], ==, expect_w[i]);
    }
}

static void
test_autoencoder_sizes (void)
{
  static const int s256[7] = { 3, 8, 15, 32, 63, 127, 56 };
  static const int s256_padded[7] = { 3, 8, 15, 32, 63, 127, 64 };
  static const int s512[7] = { 7, 16, 31, 64, 127, 255, 120 };
  static const int s512_padded[7] = { 7, 16, 31, 64, 127, 255, 128 };
  static const int s320[7] = { 4, 10, 19, 40, 79, 159, 72 };
  /* the last size rounds the quarter up: ceil(258 / 4) - 8 */
  static const int s258[7] = { 3, 8, 15, 32, 63, 128, 57 };

  assert_sizes (256, 256, FALSE, s256, s256);
  assert_sizes (256, 256, TRUE, s256_padded, s256_padded);
  assert_sizes (512, 512, FALSE, s512, s512);
  assert_sizes (512, 512, TRUE, s512_padded, s512_padded);
  assert_sizes (256, 320, FALSE, s256, s320);
  assert_sizes (258, 512, FALSE, s258, s512);
}

static void
assert_output (EadNet *net, int h, int w, int expect_h, int expect_w, int expect_c)
{
  g_autoptr (GError) error = NULL;
  EadShape out;

  g_assert_true (ead_net_shapes (net, (EadShape) { 3, h, w }, NULL, &out, &error));
  g_assert_no_error (error);
  g_assert_cmpint (out.c, ==, expect_c);
  g_assert_cmpint (out.h, ==, expect_h);
  g_assert_cmpint (out.w, ==, expect_w);
}

static void
assert_too_small (EadNet *net, int h, int w)
{
  g_autoptr (GError) error = NULL;
  EadShape out;

  g_assert_false (ead_net_shapes (net, (EadShape) { 3, h, w }, NULL, &out, &error));
  g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
  g_assert_nonnull (strstr (error->message, "too small"));
}

static void
test_shapes (void)
{
  g_autoptr (EadNet) small = ead_net_new (EAD_NET_PDN_SMALL, 384, FALSE);
  g_autoptr (EadNet) small_padded = ead_net_new (EAD_NET_PDN_SMALL, 384, TRUE);
  g_autoptr (EadNet) medium = ead_net_new (EAD_NET_PDN_MEDIUM, 768, FALSE);
  g_autoptr (EadNet) ae = ead_net_new (EAD_NET_AUTOENCODER, 384, FALSE);
  g_autoptr (EadNet) ae_padded = ead_net_new (EAD_NET_AUTOENCODER, 384, TRUE);
  g_autoptr (GError) error = NULL;
  /* spec §1.1: 253, 253, 126, 123, 123, 61, 59, 59, 56 */
  static const int small_sides[] = { 253, 253, 126, 123, 123, 61, 59, 59, 56 };
  EadShape layers[EAD_MAX_LAYERS], out;

  g_assert_true (ead_net_shapes (small, (EadShape) { 3, 256, 256 }, layers, &out, &error));
  g_assert_no_error (error);
  g_assert_cmpint (small->n_layers, ==, G_N_ELEMENTS (small_sides));
  for (int i = 0; i < small->n_layers; i++)
    {
      g_assert_cmpint (layers[i].h, ==, small_sides[i]);
      g_assert_cmpint (layers[i].w, ==, small_sides[i]);
    }
  g_assert_cmpint (layers[0].c, ==, 128);
  g_assert_cmpint (layers[3].c, ==, 256);

  assert_output (small, 256, 256, 56, 56, 384);
  assert_output (medium, 256, 256, 56, 56, 768);
  assert_output (ae, 256, 256, 56, 56, 384);
  assert_output (small, 512, 512, 120, 120, 384);
  assert_output (ae, 512, 512, 120, 120, 384);
  assert_output (small, 256, 320, 56, 72, 384);
  assert_output (medium, 256, 320, 56, 72, 768);
  assert_output (ae, 256, 320, 56, 72, 384);
  /* padding=True: the 64x64 of teacher pretraining and anomalib's padded AE */
  assert_output (small_padded, 256, 256, 64, 64, 384);
  assert_output (ae_padded, 256, 256, 64, 64, 384);

  /* the autoencoder's 8x8 bottleneck kernel needs 256 input rows (anomalib#1674) */
  assert_too_small (ae, 255, 300);
  assert_too_small (ae, 100, 100);
  assert_too_small (small, 30, 30);
  assert_too_small (medium, 30, 30);

  /* a convolution fed the wrong channel count */
  g_assert_false (ead_net_shapes (small, (EadShape) { 4, 256, 256 }, NULL, &out, &error));
  g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
}

static void
test_parameter_count (void)
{
  g_autoptr (EadNet) small_t = ead_net_new (EAD_NET_PDN_SMALL, 384, FALSE);
  g_autoptr (EadNet) small_s = ead_net_new (EAD_NET_PDN_SMALL, 768, FALSE);
  g_autoptr (EadNet) medium_t = ead_net_new (EAD_NET_PDN_MEDIUM, 384, FALSE);
  g_autoptr (EadNet) medium_s = ead_net_new (EAD_NET_PDN_MEDIUM, 768, FALSE);
  g_autoptr (EadNet) ae = ead_net_new (EAD_NET_AUTOENCODER, 384, FALSE);

  /* spec §1.1 to §1.5 */
  g_assert_cmpuint (ead_net_parameter_count (small_t), ==, 2694144);
  g_assert_cmpuint (ead_net_parameter_count (small_s), ==, 4267392);
  g_assert_cmpuint (ead_net_parameter_count (medium_t), ==, 8026624);
  g_assert_cmpuint (ead_net_parameter_count (medium_s), ==, 11615488);
  g_assert_cmpuint (ead_net_parameter_count (ae), ==, 1096320);
}

/* ---------------------------------------------------------------------------------------
 * The weight generator
 * --------------------------------------------------------------------------------------- */

static void
test_random_init (void)
{
  g_autoptr (EadNet) a = ead_net_new (EAD_NET_PDN_SMALL, 384, FALSE);
  g_autoptr (EadNet) b = ead_net_new (EAD_NET_PDN_SMALL, 384, FALSE);
  g_autoptr (EadNet) other_seed = ead_net_new (EAD_NET_PDN_SMALL, 384, FALSE);
  g_autoptr (EadNet) other_prefix = ead_net_new (EAD_NET_PDN_SMALL, 384, FALSE);
  guint64 key = ead_random_key (SEED, "uniform");

  ead_net_init_random (a, "teacher", 7);
  ead_net_init_random (b, "teacher", 7);
  ead_net_init_random (other_seed, "teacher", 8);
  ead_net_init_random (other_prefix, "student", 7);

  for (int i = 0; i < a->n_layers; i++)
    {
      const EadLayer *layer = &a->layers[i];
      size_t count = ead_layer_weight_count (layer);
      float bound;
      double sum = 0.0, low = 0.0, high = 0.0;
      size_t same_seed = 0, same_prefix = 0;

      if (layer->kind != EAD_LAYER_CONV)
        {
          g_assert_null (a->weight[i]);
          continue;
        }
      bound = (float) (1.0 / sqrt ((double) layer->in_channels * layer->kernel * layer->kernel));
      g_assert_cmpmem (a->weight[i], count * sizeof (float), b->weight[i],
                       count * sizeof (float));
      g_assert_cmpmem (a->bias[i], layer->out_channels * sizeof (float), b->bias[i],
                       layer->out_channels * sizeof (float));
      for (size_t k = 0; k < count; k++)
        {
          float x = a->weight[i][k];
          g_assert_cmpfloat (fabsf (x), <=, bound);
          sum += x;
          low = MIN (low, x);
          high = MAX (high, x);
          same_seed += x == other_seed->weight[i][k];
          same_prefix += x == other_prefix->weight[i][k];
        }
      for (int k = 0; k < layer->out_channels; k++)
        g_assert_cmpfloat (fabsf (a->bias[i][k]), <=, bound);
      /* uniform over the whole interval: mean near 0, extremes near the bound */
      g_assert_cmpfloat (fabs (sum / count), <, 0.05 * bound);
      g_assert_cmpfloat (low, <, -0.99 * bound);
      g_assert_cmpfloat (high, >, 0.99 * bound);
      /* other streams: equal values only by chance (24-bit values) */
      g_assert_cmpuint (same_seed, <, count / 1000 + 2);
      g_assert_cmpuint (same_prefix, <, count / 1000 + 2);
      /* the weight and bias streams of a layer differ as well */
      g_assert_cmpfloat (a->weight[i][0], !=, a->bias[i][0]);
    }
  /* layers of one network have their own streams */
  g_assert_cmpfloat (a->weight[0][0] / a->weight[0][1], !=, a->weight[3][0] / a->weight[3][1]);

  /* the raw stream: 24-bit values in [0, 1), a pure function of key and index */
  for (guint64 i = 0; i < 100000; i++)
    {
      float u = ead_random_uniform (key, i);
      g_assert_cmpfloat (u, >=, 0.0f);
      g_assert_cmpfloat (u, <, 1.0f);
      g_assert_cmpfloat (u * 16777216.0f, ==, floorf (u * 16777216.0f));
    }
  g_assert_cmpfloat (ead_random_uniform (key, 12345), ==, ead_random_uniform (key, 12345));
  g_assert_true (ead_random_key (SEED, "uniform") == key);
  g_assert_true (ead_random_key (SEED + 1, "uniform") != key);
  g_assert_true (ead_random_key (SEED, "uniforn") != key);
}

/* ---------------------------------------------------------------------------------------
 * Threads and the detector
 * --------------------------------------------------------------------------------------- */

static void
test_threads (void)
{
  EadBackend *cpu = ead_backend_cpu ();
  g_autoptr (EadNet) teacher = ead_net_new (EAD_NET_PDN_SMALL, 384, FALSE);
  g_autoptr (EadNet) ae = ead_net_new (EAD_NET_AUTOENCODER, 384, FALSE);
  size_t in_count = (size_t) 2 * 3 * 256 * 256;
  g_autofree float *in = random_data ("threads input", in_count, -2.2f, 2.7f);

  ead_net_init_random (teacher, "teacher", 3);
  ead_net_init_random (ae, "autoencoder", 3);
  for (int n = 0; n < 2; n++)
    {
      EadNet *net = n == 0 ? teacher : ae;
      g_autofree float *one = NULL, *two = NULL;
      g_autofree double *reference = NULL;
      g_autofree char *what = g_strdup_printf ("%s, 2 threads vs 1", ead_net_kind_name (net->kind));
      EadShape shape;
      size_t count;

      /* the executable keeps the thread count it was compiled with */
      cpu->set_threads (cpu, 1);
      one = run_net (net, 2, 3, 256, 256, in, &shape);
      g_assert_cmpint (cpu->get_threads (cpu), ==, 1);
      cpu->set_threads (cpu, 2);
      two = run_net (net, 2, 3, 256, 256, in, &shape);
      g_assert_cmpint (cpu->get_threads (cpu), ==, 2);
      count = (size_t) 2 * shape.c * shape.h * shape.w;
      reference = to_double (one, count);
      g_test_message ("%s: error %.3g", what, assert_close (two, reference, count, what));
    }
}

static void
test_detector_batch_limit (void)
{
  g_autoptr (EadModel) model = ead_model_new (EAD_ARCH_SMALL);
  EadDetectorOptions options = { .max_batch = 2, .threads = 2, .device = "cpu" };
  g_autoptr (EadDetector) detector = NULL;
  g_autoptr (GError) error = NULL;
  size_t in_count = (size_t) 3 * 3 * 256 * 256;
  g_autofree float *in = random_data ("detector input", in_count, -2.2f, 2.7f);

  ead_model_init_random (model, 5);
  detector = ead_detector_new (model, &options, &error);
  g_assert_no_error (error);
  g_assert_cmpint (ead_detector_get_max_batch (detector), ==, 2);

  g_assert_false (ead_detector_run (detector, in, 3, &error));
  g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
  g_clear_error (&error);
  g_assert_false (ead_detector_run (detector, in, 0, &error));
  g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
  g_clear_error (&error);
  g_assert_true (ead_detector_run (detector, in, 2, &error));
  g_assert_no_error (error);

  /* a batch size out of range and an input below the minimum are refused up front */
  options.max_batch = 2000;
  g_assert_null (ead_detector_new (model, &options, &error));
  g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
  g_clear_error (&error);
  options.max_batch = 1;
  model->input_height = 255;
  model->input_width = 300;
  g_assert_null (ead_detector_new (model, &options, &error));
  g_assert_nonnull (error);
}

int
main (int argc, char **argv)
{
  static const int kernels[] = { 1, 3, 4, 8 };

  g_test_init (&argc, &argv, NULL);
  ead_backend_cpu ()->set_threads (ead_backend_cpu (), 2);

  for (size_t i = 0; i < G_N_ELEMENTS (kernels); i++)
    {
      g_autofree char *path = g_strdup_printf ("/engine/conv/kernel-%d", kernels[i]);
      g_test_add_data_func (path, GINT_TO_POINTER (kernels[i]), test_conv);
    }
  g_test_add_func ("/engine/avgpool", test_avgpool);
  g_test_add_func ("/engine/relu-alone", test_relu_alone);
  g_test_add_func ("/engine/upsample", test_upsample);
  g_test_add_func ("/engine/chain", test_chain);
  g_test_add_func ("/engine/sqdiff-channel-mean", test_sqdiff);
  g_test_add_func ("/engine/autoencoder-sizes", test_autoencoder_sizes);
  g_test_add_func ("/engine/shapes", test_shapes);
  g_test_add_func ("/engine/parameter-count", test_parameter_count);
  g_test_add_func ("/engine/random-init", test_random_init);
  g_test_add_func ("/engine/threads", test_threads);
  g_test_add_func ("/engine/detector-batch-limit", test_detector_batch_limit);
  return g_test_run ();
}
