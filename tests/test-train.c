/* test-train.c: training is correct.
 *
 * - Finite differences: the CPU backend's backward passes (train_compile, train_forward,
 *   train_backward) against central differences of the loss L = sum (out * R), R fixed
 *   and random, for small hand-built networks: every convolution shape the networks use
 *   (kernels 1/3/4/8, strides 1/2, paddings 0..3), average pooling with padding 0 and 1,
 *   bilinear resizing up and down, dropout, ReLU, and a whole small network.  Every
 *   network starts with a convolution, so the gradient of each layer's input is checked
 *   through the weight gradients of the convolutions before it.
 * - One full training step of EfficientAD-S against PyTorch (fixtures/train/step.json,
 *   made by make-train-fixtures.py): the losses, every gradient and the weights after
 *   Adam.
 * - ead_quantile_select against torch.quantile, ead_color_jitter against torchvision.
 * - A run cancelled at a step and resumed from its checkpoint writes the same bundle, byte
 *   for byte, as an uninterrupted run; a checkpoint of another run is refused.
 * - Dataset errors: an empty folder, too few images, an unreadable image, a too small
 *   network input.
 */
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <json-glib/json-glib.h>
#include <math.h>
#include <string.h>

#include "ead-test-util.h"
#include "ead-augment.h"
#include "ead-backend.h"
#include "ead-bundle.h"
#include "ead-dataset.h"
#include "ead-error.h"
#include "ead-model.h"
#include "ead-network.h"
#include "ead-safetensors.h"
#include "ead-stats.h"
#include "ead-train.h"

#define SEED 21
#define THREADS 2

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

/* An image of noise from the generator. */
static EadImage *
random_image (const char *name, int width, int height)
{
  EadImage *image = ead_image_new (width, height);
  guint64 key = ead_random_key (SEED, name);

  for (size_t i = 0; i < (size_t) width * height * 3; i++)
    image->rgb[i] = (guint8) (ead_random_uniform (key, i) * 256.0f);
  return image;
}

static char *
make_temp_dir (void)
{
  g_autoptr (GError) error = NULL;
  char *dir = g_dir_make_tmp ("ead-test-train-XXXXXX", &error);

  g_assert_no_error (error);
  return dir;
}

/* ---------------------------------------------------------------------------------------
 * Finite differences
 *
 * Every network here is piecewise linear in each single parameter: convolution, pooling,
 * resizing and dropout (a fixed mask) are linear, and ReLU is linear on either side of
 * its kink.  So a central difference (L(w+h) - L(w-h)) / 2h is exact, apart from
 * rounding, as long as no ReLU input changes sign between w-h and w+h; this allows a
 * large step, which keeps the float32 rounding of the forward passes small against the
 * loss change.  Kinks are dealt with exactly, not by a heuristic: for every ReLU the
 * test also runs the network up to the convolution before it (sharing the weights), and
 * a step is used only when the sign pattern (x > 0, what the backward pass uses) of every
 * ReLU input is the same at w-h, w and w+h.  Then, layer by layer, each ReLU input is
 * linear in w on the whole segment (the layers before it are), keeps its sign, and L is
 * linear there.  The steps tried are FD_EPS, largest first; an element whose smallest
 * step still flips a ReLU is skipped and counted (a small minority).
 *
 * Tolerance: |D - g| <= FD_TOL * max |g| over the tensor, with g the backend's gradient
 * and D the central difference.  The forward passes are float32: each output that
 * depends on the perturbed parameter is rounded to about 1e-7 relative, so a loss
 * difference over n such outputs is off by about 1e-7 sqrt(n) max|out R|, divided by 2h
 * in D; for these networks that is at most 5e-5 of the largest gradient at h = 1e-2 and
 * 3e-4 at h = 1e-3 (measured; the test log has every tensor's).  1e-3 keeps a margin
 * above that, while a wrong index, layout, mask or scale gives errors of 1e-2 and more.
 * --------------------------------------------------------------------------------------- */

static const double FD_EPS[] = { 1e-2, 3e-3, 1e-3 };
#define FD_TOL 1e-3
#define FD_MAX_CHECKS 400   /* parameters tried per tensor (evenly spread) */
/* one thread: these networks are too small for more to help */
#define FD_THREADS 1
#define FD_MAX_SKIPPED 0.25 /* fraction of a network's elements that may be skipped at a kink */

/* The network up to the input of one ReLU: shares the weights of the whole network. */
typedef struct {
  EadNet *net;     /* a shallow copy: free with g_free */
  EadNet *grad;    /* unused, but train_compile needs one */
  EadTrainExec *exec;
  size_t count;
  float *base;     /* the ReLU input at the unperturbed weights */
  float *out;
} Kink;

typedef struct {
  EadBackend *backend;
  EadNet *net;
  EadNet *grad;
  EadTrainExec *exec;
  EadShape in_shape;
  int batch;
  size_t in_count, out_count;
  float *in, *out, *r;
  guint64 dropout_seed;
  GArray *kinks;   /* Kink, one per ReLU */
  double worst;    /* largest |D - g| / max |g| seen */
  int checked, skipped;
} Fd;

/* A network of the given layers with weights from ead_net_init_random. */
static EadNet *
net_build (EadNetKind kind, const EadLayer *layers, int n_layers, guint64 seed)
{
  EadNet *net = g_new0 (EadNet, 1);

  net->kind = kind;
  net->n_layers = n_layers;
  for (int i = 0; i < n_layers; i++)
    {
      net->layers[i] = layers[i];
      if (layers[i].kind != EAD_LAYER_CONV)
        continue;
      net->weight[i] = g_new0 (float, ead_layer_weight_count (&layers[i]));
      net->bias[i] = g_new0 (float, layers[i].out_channels);
      net->out_channels = layers[i].out_channels;
    }
  ead_net_init_random (net, "fd", seed);
  return net;
}

#define CONV(in, out, k, s, p) \
  ((EadLayer) { .kind = EAD_LAYER_CONV, .in_channels = (in), .out_channels = (out), \
                .kernel = (k), .stride = (s), .padding = (p) })
#define RELU ((EadLayer) { .kind = EAD_LAYER_RELU })
#define POOL(p) ((EadLayer) { .kind = EAD_LAYER_AVGPOOL, .kernel = 2, .stride = 2, .padding = (p) })
#define UPSAMPLE(step) ((EadLayer) { .kind = EAD_LAYER_UPSAMPLE, .upsample_step = (step) })
#define DROPOUT ((EadLayer) { .kind = EAD_LAYER_DROPOUT, .dropout = 0.2f })

static EadTrainExec *
fd_compile (Fd *fd, EadNet *net, EadNet *grad)
{
  g_autoptr (GError) error = NULL;
  EadTrainExec *exec = fd->backend->train_compile (fd->backend, net, grad, fd->batch,
                                                   fd->in_shape.h, fd->in_shape.w, &error);

  g_assert_no_error (error);
  g_assert_nonnull (exec);
  return exec;
}

static size_t
output_count (const EadNet *net, const Fd *fd)
{
  g_autoptr (GError) error = NULL;
  EadShape out;

  g_assert_true (ead_net_shapes (net, fd->in_shape, NULL, &out, &error));
  g_assert_no_error (error);
  return (size_t) fd->batch * out.c * out.h * out.w;
}

static void
fd_init (Fd *fd, EadNet *net, int batch, int height, int width, const char *name)
{
  g_autofree char *in_name = g_strconcat (name, ".in", NULL);
  g_autofree char *r_name = g_strconcat (name, ".r", NULL);

  *fd = (Fd) { .backend = ead_backend_cpu (), .net = net, .batch = batch,
               .in_shape = { net->layers[0].in_channels, height, width },
               .dropout_seed = 77 };
  fd->backend->set_threads (fd->backend, FD_THREADS);
  fd->grad = ead_net_copy (net);
  ead_net_zero (fd->grad);
  fd->exec = fd_compile (fd, net, fd->grad);
  fd->in_count = (size_t) batch * fd->in_shape.c * height * width;
  fd->out_count = output_count (net, fd);
  fd->in = random_data (in_name, fd->in_count, -2.0f, 2.0f);
  fd->r = random_data (r_name, fd->out_count, -1.0f, 1.0f);
  fd->out = g_new (float, fd->out_count);
  fd->kinks = g_array_new (FALSE, TRUE, sizeof (Kink));
  for (int i = 1; i < net->n_layers; i++)
    if (net->layers[i].kind == EAD_LAYER_RELU)
      {
        Kink kink = { g_memdup2 (net, sizeof *net) };

        kink.net->n_layers = i;
        kink.grad = ead_net_copy (kink.net);
        kink.exec = fd_compile (fd, kink.net, kink.grad);
        kink.count = output_count (kink.net, fd);
        kink.base = g_new (float, kink.count);
        kink.out = g_new (float, kink.count);
        g_array_append_val (fd->kinks, kink);
      }
}

static void
fd_clear (Fd *fd)
{
  for (guint k = 0; k < fd->kinks->len; k++)
    {
      Kink *kink = &g_array_index (fd->kinks, Kink, k);

      fd->backend->train_free (kink->exec);
      ead_net_free (kink->grad);
      g_free (kink->net);
      g_free (kink->base);
      g_free (kink->out);
    }
  g_array_unref (fd->kinks);
  fd->backend->train_free (fd->exec);
  ead_net_free (fd->grad);
  ead_net_free (fd->net);
  g_free (fd->in);
  g_free (fd->out);
  g_free (fd->r);
}

static void
forward (Fd *fd, EadTrainExec *exec, float *out)
{
  g_autoptr (GError) error = NULL;

  g_assert_true (fd->backend->train_forward (exec, fd->in, out, fd->dropout_seed, &error));
  g_assert_no_error (error);
}

static double
fd_loss (Fd *fd)
{
  double loss = 0.0;

  forward (fd, fd->exec, fd->out);
  for (size_t i = 0; i < fd->out_count; i++)
    loss += (double) fd->out[i] * fd->r[i];
  return loss;
}

/* The ReLU inputs at the current weights, as the reference for same_kinks(). */
static void
fd_kink_base (Fd *fd)
{
  for (guint k = 0; k < fd->kinks->len; k++)
    {
      Kink *kink = &g_array_index (fd->kinks, Kink, k);
      forward (fd, kink->exec, kink->base);
    }
}

/* Whether every ReLU input has the sign it had at fd_kink_base(). */
static gboolean
same_kinks (Fd *fd)
{
  for (guint k = 0; k < fd->kinks->len; k++)
    {
      Kink *kink = &g_array_index (fd->kinks, Kink, k);

      forward (fd, kink->exec, kink->out);
      for (size_t i = 0; i < kink->count; i++)
        if ((kink->out[i] > 0.0f) != (kink->base[i] > 0.0f))
          return FALSE;
    }
  return TRUE;
}

/* The backend's gradient of L into fd->grad. */
static void
fd_backward (Fd *fd)
{
  g_autoptr (GError) error = NULL;

  ead_net_zero (fd->grad);
  fd_loss (fd);
  g_assert_true (fd->backend->train_backward (fd->exec, fd->r, &error));
  g_assert_no_error (error);
}

/* Checks the gradient `g` of the `count` parameters at `param` by central differences,
 * with the largest step of FD_EPS that flips no ReLU. */
static void
fd_check_tensor (Fd *fd, float *param, const float *g, size_t count, const char *what)
{
  double scale = 0.0, worst = 0.0;
  size_t checks = MIN (count, FD_MAX_CHECKS), worst_at = 0;
  int skipped = 0;

  for (size_t i = 0; i < count; i++)
    scale = MAX (scale, fabs (g[i]));
  g_assert_cmpfloat (scale, >, 0.0);
  fd_kink_base (fd);
  for (size_t c = 0; c < checks; c++)
    {
      size_t i = c * count / checks;
      float w = param[i];
      gboolean linear = FALSE;
      double central = 0.0, error;

      for (size_t e = 0; !linear && e < G_N_ELEMENTS (FD_EPS); e++)
        {
          float up = (float) (w + FD_EPS[e]), down = (float) (w - FD_EPS[e]);
          double l_up, l_down;

          param[i] = up;
          l_up = fd_loss (fd);
          linear = same_kinks (fd);
          param[i] = down;
          l_down = fd_loss (fd);
          linear = linear && same_kinks (fd);
          param[i] = w;
          /* the steps float can take */
          central = (l_up - l_down) / ((double) up - down);
        }
      if (!linear)
        {
          skipped++;
          continue;
        }
      error = fabs (central - g[i]);
      if (!(error <= worst))
        {
          worst = error;
          worst_at = i;
        }
    }
  worst /= scale;
  g_test_message ("%s: %zu tried, %d skipped at a ReLU kink, max error %.3g of max|g| %.3g",
                  what, checks, skipped, worst, scale);
  if (!(worst <= FD_TOL))
    g_test_fail_printf ("%s: element %zu: backend gradient %.9g, finite difference off by %.3g "
                        "of max|g| (allowed %g)", what, worst_at, g[worst_at], worst, FD_TOL);
  fd->worst = MAX (fd->worst, worst);
  fd->checked += checks;
  fd->skipped += skipped;
}

/* Every parameter tensor of the network. */
static void
fd_check_net (Fd *fd, const char *name)
{
  fd_backward (fd);
  for (int i = 0; i < fd->net->n_layers; i++)
    {
      const EadLayer *layer = &fd->net->layers[i];
      g_autofree char *w_what = NULL;
      g_autofree char *b_what = NULL;

      if (layer->kind != EAD_LAYER_CONV)
        continue;
      w_what = g_strdup_printf ("%s layer %d weight", name, i);
      b_what = g_strdup_printf ("%s layer %d bias", name, i);
      fd_check_tensor (fd, fd->net->weight[i], fd->grad->weight[i], ead_layer_weight_count (layer),
                       w_what);
      fd_check_tensor (fd, fd->net->bias[i], fd->grad->bias[i], layer->out_channels, b_what);
    }
}

static gboolean
net_has_relu (const EadNet *net)
{
  for (int i = 0; i < net->n_layers; i++)
    if (net->layers[i].kind == EAD_LAYER_RELU)
      return TRUE;
  return FALSE;
}

static void
fd_run (EadNetKind kind, const EadLayer *layers, int n_layers, int batch, int height, int width,
        const char *name)
{
  Fd fd;
  gboolean relu;

  fd_init (&fd, net_build (kind, layers, n_layers, 5), batch, height, width, name);
  relu = net_has_relu (fd.net);
  fd_check_net (&fd, name);
  /* without a ReLU the loss is linear in each parameter: nothing may be skipped */
  if (relu)
    g_assert_cmpint (fd.skipped, <=, FD_MAX_SKIPPED * fd.checked);
  else
    g_assert_cmpint (fd.skipped, ==, 0);
  fd_clear (&fd);
}

/* A convolution of every shape the networks use, after a 3x3 one whose weight gradient
 * needs the second's backward-data pass. */
static void
test_fd_conv (void)
{
  static const struct {
    int kernel, stride, padding;
  } shapes[] = {
    { 1, 1, 0 }, { 1, 2, 0 }, { 3, 1, 0 }, { 3, 1, 1 }, { 3, 2, 3 }, { 4, 1, 0 },
    { 4, 2, 1 }, { 4, 1, 2 }, { 4, 1, 3 }, { 8, 1, 0 }, { 8, 2, 2 },
  };

  for (size_t k = 0; k < G_N_ELEMENTS (shapes); k++)
    {
      EadLayer layers[] = { CONV (3, 16, 3, 1, 1),
                            CONV (16, 16, shapes[k].kernel, shapes[k].stride, shapes[k].padding) };
      g_autofree char *name = g_strdup_printf ("conv k%d s%d p%d", shapes[k].kernel,
                                               shapes[k].stride, shapes[k].padding);

      fd_run (EAD_NET_PDN_SMALL, layers, G_N_ELEMENTS (layers), 2, 13, 11, name);
    }
}

static void
test_fd_avgpool (void)
{
  for (int padding = 0; padding <= 1; padding++)
    {
      /* odd sizes: the last row of 11 is dropped without padding, padded with it */
      EadLayer layers[] = { CONV (3, 16, 3, 1, 1), POOL (padding), CONV (16, 16, 3, 1, 1) };
      g_autofree char *name = g_strdup_printf ("avgpool p%d", padding);

      fd_run (EAD_NET_PDN_SMALL, layers, G_N_ELEMENTS (layers), 2, 11, 14, name);
    }
}

/* The resize targets come from the network input (ead_autoencoder_sizes): step 5 is
 * h/2 - 1 x w/2 - 1. */
static void
test_fd_upsample (void)
{
  int sizes[7][2];

  {
    /* 16x24 input, two stride-2 convolutions to 4x6, then up to 7x11 */
    EadLayer layers[] = { CONV (3, 16, 4, 2, 1), CONV (16, 16, 4, 2, 1), UPSAMPLE (5),
                          CONV (16, 16, 3, 1, 1) };
    EadShape shapes[EAD_MAX_LAYERS];
    g_autoptr (EadNet) probe = net_build (EAD_NET_AUTOENCODER, layers, G_N_ELEMENTS (layers), 1);

    ead_autoencoder_sizes (16, 24, FALSE, sizes);
    g_assert_cmpint (sizes[5][0], ==, 7);
    g_assert_cmpint (sizes[5][1], ==, 11);
    g_assert_true (ead_net_shapes (probe, (EadShape) { 3, 16, 24 }, shapes, NULL, NULL));
    g_assert_cmpint (shapes[1].h, ==, 4);
    g_assert_cmpint (shapes[1].w, ==, 6);
    fd_run (EAD_NET_AUTOENCODER, layers, G_N_ELEMENTS (layers), 2, 16, 24, "upsample 4x6 to 7x11");
  }
  {
    /* 12x20 down to 5x9 */
    EadLayer layers[] = { CONV (3, 16, 3, 1, 1), UPSAMPLE (5), CONV (16, 16, 3, 1, 1) };

    ead_autoencoder_sizes (12, 20, FALSE, sizes);
    g_assert_cmpint (sizes[5][0], ==, 5);
    g_assert_cmpint (sizes[5][1], ==, 9);
    fd_run (EAD_NET_AUTOENCODER, layers, G_N_ELEMENTS (layers), 1, 12, 20,
            "upsample 12x20 to 5x9");
  }
}

static void
test_fd_relu (void)
{
  EadLayer layers[] = { CONV (3, 16, 3, 1, 1), RELU, CONV (16, 16, 3, 1, 1) };

  fd_run (EAD_NET_PDN_SMALL, layers, G_N_ELEMENTS (layers), 2, 10, 9, "relu");
}

/* Dropout: the forward pass multiplies by exactly the mask ead_dropout_mask draws (20
 * channels, which oneDNN keeps in a padded blocked layout), and the gradients agree. */
static void
test_fd_dropout (void)
{
  EadLayer layers[] = { CONV (3, 20, 3, 1, 1), DROPOUT };
  EadLayer conv_only = CONV (3, 20, 3, 1, 1);
  EadLayer with_next[] = { CONV (3, 20, 3, 1, 1), DROPOUT, CONV (20, 16, 3, 1, 1) };
  g_autoptr (GError) error = NULL;
  g_autoptr (EadNet) plain = ead_net_new_single (&conv_only);
  g_autofree float *plain_out = NULL;
  g_autofree float *mask = NULL;
  EadTrainExec *plain_exec;
  EadNet *plain_grad;
  size_t zeros = 0;
  Fd fd;

  fd_init (&fd, net_build (EAD_NET_PDN_SMALL, layers, G_N_ELEMENTS (layers), 5), 2, 9, 11,
           "dropout");
  memcpy (plain->weight[0], fd.net->weight[0],
          ead_layer_weight_count (&conv_only) * sizeof (float));
  memcpy (plain->bias[0], fd.net->bias[0], conv_only.out_channels * sizeof (float));
  plain_grad = ead_net_copy (plain);
  plain_exec = fd.backend->train_compile (fd.backend, plain, plain_grad, 2, 9, 11, &error);
  g_assert_no_error (error);
  plain_out = g_new (float, fd.out_count);
  g_assert_true (fd.backend->train_forward (plain_exec, fd.in, plain_out, 0, &error));
  g_assert_no_error (error);
  mask = g_new (float, fd.out_count);
  ead_dropout_mask (fd.dropout_seed, 1, 0.2f, mask, fd.out_count);
  fd_loss (&fd);
  for (size_t i = 0; i < fd.out_count; i++)
    {
      g_assert_true (mask[i] == 0.0f || mask[i] == 1.0f / (1.0f - 0.2f));
      zeros += mask[i] == 0.0f;
      if (fd.out[i] != plain_out[i] * mask[i])
        g_error ("dropout output %zu is %.9g, expected %.9g * %g", i, fd.out[i], plain_out[i],
                 mask[i]);
    }
  /* 3960 values: 20 % +- 5 standard deviations */
  g_assert_cmpfloat ((double) zeros / fd.out_count, >, 0.17);
  g_assert_cmpfloat ((double) zeros / fd.out_count, <, 0.23);
  /* another seed, another mask */
  fd.dropout_seed++;
  {
    size_t differ = 0;
    fd_loss (&fd);
    for (size_t i = 0; i < fd.out_count; i++)
      differ += fd.out[i] != plain_out[i] * mask[i];
    g_assert_cmpuint (differ, >, fd.out_count / 5);
  }
  fd_check_net (&fd, "dropout (last)");
  g_assert_cmpint (fd.skipped, ==, 0);
  fd.backend->train_free (plain_exec);
  ead_net_free (plain_grad);
  fd_clear (&fd);

  fd_run (EAD_NET_PDN_SMALL, with_next, G_N_ELEMENTS (with_next), 2, 9, 11, "dropout (inner)");
}

/* conv+relu, pool, conv+relu, upsample, dropout, conv: the shape of the autoencoder's
 * decoder behind a PDN's front. */
static void
test_fd_network (void)
{
  EadLayer layers[] = { CONV (3, 16, 4, 1, 0), RELU, POOL (0), CONV (16, 16, 3, 1, 1), RELU,
                        UPSAMPLE (5), DROPOUT, CONV (16, 16, 3, 1, 1) };
  EadShape shapes[EAD_MAX_LAYERS];
  Fd fd;

  /* 12x12: 9x9 after conv 0, 4x4 after the pool, resized up to 5x5 */
  fd_init (&fd, net_build (EAD_NET_AUTOENCODER, layers, G_N_ELEMENTS (layers), 9), 2, 12, 12,
           "network");
  g_assert_true (ead_net_shapes (fd.net, fd.in_shape, shapes, NULL, NULL));
  g_assert_cmpint (shapes[3].h, ==, 4);
  g_assert_cmpint (shapes[5].h, ==, 5);
  g_assert_cmpint (shapes[7].w, ==, 5);
  fd_check_net (&fd, "network");
  g_assert_cmpint (fd.skipped, <=, FD_MAX_SKIPPED * fd.checked);
  g_test_message ("network: %d parameters tried, %d skipped, max error %.3g", fd.checked,
                  fd.skipped, fd.worst);
  fd_clear (&fd);
}

/* ---------------------------------------------------------------------------------------
 * One training step against PyTorch
 *
 * The criterion is test-parity's, per tensor t (PyTorch) against c (here):
 *   - samples: max |c - t| <= 1e-4 * max |t| over the whole tensor (elementwise relative
 *     errors would fail on values near zero, whose absolute error comes from the larger
 *     terms that cancelled in them);
 *   - checksums: sum of squares and sum of |x| within 1e-4 relative, the plain sum
 *     within 1e-4 of the sum of |x| (it may be near zero).
 * The gradients are the real check.  Adam's first step moves each weight by about
 * lr * sign(g) (|g| much larger than eps = 1e-8), so the updated weights match to 1e-4
 * of max|w| even with a wrong gradient magnitude; what they do check is the direction
 * of every step, the learning rate, the bias corrections and the L2 weight decay (which
 * dominates the tiny gradients of the autoencoder's encoder).  So the step w' - w is
 * also compared per sample: within 1e-3 lr plus the rounding of w' (two ulps of w).
 * --------------------------------------------------------------------------------------- */

#define REL_TOL EAD_TEST_REL_TOL
/* numpy sums the initial weights pairwise, this file in order: both nearly exact */
#define SUM_TOL 1e-9

static EadSample
sample_new (const char *name, int width, int height)
{
  return (EadSample) { g_strdup (name), random_image (name, width, height) };
}

static void
sample_clear (gpointer data)
{
  EadSample *sample = data;

  g_free (sample->path);
  ead_image_free (sample->image);
}

/* A dataset built by hand: one training and one validation image (the step test feeds
 * its own inputs; the trainer only requires both parts to exist). */
static EadDataset *
dataset_by_hand (int width, int height)
{
  EadDataset *data = g_new0 (EadDataset, 1);
  EadSample train = sample_new ("synthetic/train.png", width, height);
  EadSample validation = sample_new ("synthetic/validation.png", width, height);

  data->root = g_strdup ("synthetic");
  data->snapshot = g_strdup ("synthetic");
  data->train = g_array_new (FALSE, TRUE, sizeof (EadSample));
  data->validation = g_array_new (FALSE, TRUE, sizeof (EadSample));
  g_array_set_clear_func (data->train, sample_clear);
  g_array_set_clear_func (data->validation, sample_clear);
  g_array_append_val (data->train, train);
  g_array_append_val (data->validation, validation);
  data->skipped = g_ptr_array_new_with_free_func (g_free);
  return data;
}

static EadNet *
net_of (EadModel *model, EadNet *grad_student, EadNet *grad_ae, const char *prefix,
        gboolean gradient)
{
  if (g_str_equal (prefix, "student"))
    return gradient ? grad_student : model->student;
  g_assert_cmpstr (prefix, ==, "autoencoder");
  return gradient ? grad_ae : model->autoencoder;
}

/* The tensor "<net>.<layer>.<weight|bias>" of net. */
static float *
tensor_of (EadNet *net, const char *name, size_t *count)
{
  g_auto (GStrv) parts = g_strsplit (name, ".", -1);
  int layer;

  g_assert_cmpuint (g_strv_length (parts), ==, 3);
  layer = (int) g_ascii_strtoll (parts[1], NULL, 10);
  g_assert_cmpint (layer, >=, 0);
  g_assert_cmpint (layer, <, net->n_layers);
  g_assert_cmpint (net->layers[layer].kind, ==, EAD_LAYER_CONV);
  if (g_str_equal (parts[2], "weight"))
    {
      *count = ead_layer_weight_count (&net->layers[layer]);
      return net->weight[layer];
    }
  g_assert_cmpstr (parts[2], ==, "bias");
  *count = net->layers[layer].out_channels;
  return net->bias[layer];
}

static void
test_step_parity (void)
{
  g_autoptr (JsonParser) parser = ead_test_load_fixture ("train/step.json");
  JsonObject *root = ead_test_fixture_root (parser);
  JsonArray *tensors = json_object_get_array_member (root, "tensors");
  JsonArray *mean = json_object_get_array_member (root, "teacher_mean");
  JsonArray *std = json_object_get_array_member (root, "teacher_std");
  JsonObject *expected_losses = json_object_get_object_member (root, "losses");
  int h = json_object_get_int_member (root, "input_height");
  int w = json_object_get_int_member (root, "input_width");
  guint64 seed = json_object_get_int_member (root, "seed");
  guint64 dropout_seed = json_object_get_int_member (root, "dropout_seed");
  double lr = json_object_get_double_member (root, "learning_rate");
  size_t size = (size_t) 3 * h * w;
  g_autofree float *x = ead_test_fixture_input (root, "train.x", size);
  g_autofree float *x_aug = ead_test_fixture_input (root, "train.x_aug", size);
  g_autoptr (GError) error = NULL;
  g_autoptr (EadModel) teacher = ead_model_new (EAD_ARCH_SMALL);
  g_autoptr (EadDataset) data = dataset_by_hand (w, h);
  g_autoptr (EadTrainer) trainer = NULL;
  g_autoptr (EadNet) student_before = NULL;
  g_autoptr (EadNet) ae_before = NULL;
  static const struct {
    const char *name;
    int column;
  } loss_names[] = { { "total", 0 }, { "hard", 1 }, { "ae", 3 }, { "stae", 4 } };
  EadTestAgreement grads = { 0 }, weights = { 0 };
  EadTrainOptions options;
  EadModel *model;
  EadNet *grad_student, *grad_ae;
  float losses[EAD_TRAIN_LOSSES];
  double worst_loss = 0.0, worst_step = 0.0;
  guint expected_tensors = 0;

  g_assert_cmpstr (json_object_get_string_member (root, "format"), ==, "ead-train-step-1");
  g_assert_cmpstr (json_object_get_string_member (root, "arch"), ==, "s");
  teacher->input_height = h;
  teacher->input_width = w;
  ead_model_init_random (teacher, seed);
  ead_train_options_init (&options);
  options.steps = 1;
  options.seed = seed;
  options.threads = THREADS;
  options.checkpoint_every = 0;
  g_assert_cmpfloat (options.learning_rate, ==, lr);
  g_assert_cmpfloat (options.weight_decay, ==,
                     json_object_get_double_member (root, "weight_decay"));
  trainer = ead_trainer_new (teacher, data, NULL, &options, &error);
  g_assert_no_error (error);
  ead_trainer_get_state (trainer, &model, &grad_student, &grad_ae);
  g_assert_cmpuint (json_array_get_length (mean), ==, EAD_TEACHER_CHANNELS);
  for (int c = 0; c < EAD_TEACHER_CHANNELS; c++)
    {
      model->teacher_mean[c] = json_array_get_double_element (mean, c);
      model->teacher_std[c] = json_array_get_double_element (std, c);
    }

  /* the trainer's initial weights are PyTorch's */
  for (guint k = 0; k < json_array_get_length (tensors); k++)
    {
      JsonObject *tensor = json_array_get_object_element (tensors, k);
      const char *name = json_object_get_string_member (tensor, "name");
      g_auto (GStrv) parts = g_strsplit (name, ".", 2);
      size_t count;
      const float *values = tensor_of (net_of (model, grad_student, grad_ae, parts[0], FALSE),
                                       name, &count);
      double sum = 0.0;

      for (size_t i = 0; i < count; i++)
        sum += values[i];
      g_assert_cmpfloat_with_epsilon (sum, json_object_get_double_member (tensor, "initial_sum"),
                                      SUM_TOL * count);
    }
  for (int n = 0; n < 2; n++)
    {
      const EadNet *net = n == 0 ? model->student : model->autoencoder;
      for (int i = 0; i < net->n_layers; i++)
        expected_tensors += net->layers[i].kind == EAD_LAYER_CONV ? 2 : 0;
    }
  g_assert_cmpuint (json_array_get_length (tensors), ==, expected_tensors);

  /* losses and gradients */
  g_assert_true (ead_trainer_step_inputs (trainer, x, x_aug, dropout_seed, FALSE, losses, &error));
  g_assert_no_error (error);
  g_assert_cmpfloat (losses[2], ==, 0.0f);  /* no penalty image */
  for (size_t k = 0; k < G_N_ELEMENTS (loss_names); k++)
    {
      double t = json_object_get_double_member (expected_losses, loss_names[k].name);
      double c = losses[loss_names[k].column];
      double relative = fabs (c - t) / fabs (t);

      g_test_message ("loss %s: %.9g, PyTorch %.9g (%.3g relative)", loss_names[k].name, c, t,
                      relative);
      if (!(relative <= REL_TOL))
        g_test_fail_printf ("loss %s is %.9g, PyTorch %.9g", loss_names[k].name, c, t);
      worst_loss = MAX (worst_loss, relative);
    }
  for (guint k = 0; k < json_array_get_length (tensors); k++)
    {
      JsonObject *tensor = json_array_get_object_element (tensors, k);
      const char *name = json_object_get_string_member (tensor, "name");
      g_auto (GStrv) parts = g_strsplit (name, ".", 2);
      g_autofree char *what = g_strdup_printf ("gradient of %s", name);
      size_t count;
      const float *g = tensor_of (net_of (model, grad_student, grad_ae, parts[0], TRUE), name,
                                  &count);

      ead_test_check_record (json_object_get_object_member (tensor, "grad"), g, count, what, &grads);
    }

  /* the same step again, now with the Adam update */
  student_before = ead_net_copy (model->student);
  ae_before = ead_net_copy (model->autoencoder);
  ead_net_zero (grad_student);
  ead_net_zero (grad_ae);
  g_assert_true (ead_trainer_step_inputs (trainer, x, x_aug, dropout_seed, TRUE, losses, &error));
  g_assert_no_error (error);
  for (guint k = 0; k < json_array_get_length (tensors); k++)
    {
      JsonObject *tensor = json_array_get_object_element (tensors, k);
      JsonObject *updated = json_object_get_object_member (tensor, "updated");
      const char *name = json_object_get_string_member (tensor, "name");
      g_auto (GStrv) parts = g_strsplit (name, ".", 2);
      g_autofree char *what = g_strdup_printf ("updated %s", name);
      size_t count, count_before;
      const float *after = tensor_of (net_of (model, grad_student, grad_ae, parts[0], FALSE),
                                      name, &count);
      EadNet *net_before = g_str_equal (parts[0], "student") ? student_before : ae_before;
      const float *before = tensor_of (net_before, name, &count_before);

      g_assert_cmpuint (count_before, ==, count);
      ead_test_check_record (updated, after, count, what, &weights);
      worst_step = MAX (worst_step, ead_test_check_steps (updated, before, after, lr, what));
    }
  g_test_message ("step vs PyTorch: losses %.3g relative; gradients %.3g of max|t| (%s), "
                  "checksums %.3g; weights %.3g of max|t| (%s), checksums %.3g; steps %.3g lr",
                  worst_loss, grads.worst_sample, grads.worst_what, grads.worst_sum,
                  weights.worst_sample, weights.worst_what, weights.worst_sum, worst_step);
  g_free (grads.worst_what);
  g_free (weights.worst_what);
}

/* ---------------------------------------------------------------------------------------
 * Mixed precision: the step of the fixture in bf16 against the same step in fp32.
 *
 * bf16 activations carry 8 significant bits; the master weights, gradients, losses and
 * the hard-loss quantile stay float32.  The losses must agree within 2 %, and every
 * gradient tensor must point the same way (cosine >= 0.97) with a norm within 5 %:
 * what Adam, which normalises each weight's step, needs to train alike.  (The student's
 * gradients come from the hard loss, which keeps only the distances above their 0.999
 * quantile: rounding moves a few of them across that line, so they agree less, about
 * 0.98, than the autoencoder's, 0.99 and up.)
 * --------------------------------------------------------------------------------------- */

#define BF16_LOSS_TOL 0.02
#define BF16_MIN_COSINE 0.97
#define BF16_NORM_TOL 0.05

static EadTrainer *
step_trainer_new (JsonObject *root, const EadDataset *data, const EadModel *teacher,
                  EadPrecision precision, GError **error)
{
  JsonArray *mean = json_object_get_array_member (root, "teacher_mean");
  JsonArray *std = json_object_get_array_member (root, "teacher_std");
  EadTrainOptions options;
  EadTrainer *trainer;
  EadModel *model;
  EadNet *grad_student, *grad_ae;

  ead_train_options_init (&options);
  options.steps = 1;
  options.seed = json_object_get_int_member (root, "seed");
  options.threads = THREADS;
  options.checkpoint_every = 0;
  options.precision = precision;
  trainer = ead_trainer_new (teacher, data, NULL, &options, error);
  if (trainer == NULL)
    return NULL;
  ead_trainer_get_state (trainer, &model, &grad_student, &grad_ae);
  for (int c = 0; c < EAD_TEACHER_CHANNELS; c++)
    {
      model->teacher_mean[c] = json_array_get_double_element (mean, c);
      model->teacher_std[c] = json_array_get_double_element (std, c);
    }
  return trainer;
}

static void
compare_gradients (const EadNet *bf16, const EadNet *fp32, const char *net_name,
                   double *worst_cosine, double *worst_norm)
{
  for (int i = 0; i < fp32->n_layers; i++)
    if (fp32->layers[i].kind == EAD_LAYER_CONV)
      for (int part = 0; part < 2; part++)
        {
          size_t n = part == 0 ? ead_layer_weight_count (&fp32->layers[i])
                               : (size_t) fp32->layers[i].out_channels;
          const float *a = part == 0 ? bf16->weight[i] : bf16->bias[i];
          const float *b = part == 0 ? fp32->weight[i] : fp32->bias[i];
          double ab = 0, aa = 0, bb = 0, cosine, norm;

          for (size_t k = 0; k < n; k++)
            {
              ab += (double) a[k] * b[k];
              aa += (double) a[k] * a[k];
              bb += (double) b[k] * b[k];
            }
          cosine = ab / sqrt (aa * bb);
          norm = fabs (sqrt (aa) / sqrt (bb) - 1.0);
          g_test_message ("bf16 gradient of %s.%d.%s: cosine %.5f, norm %+.3g relative",
                          net_name, i, part == 0 ? "weight" : "bias", cosine, norm);
          if (!(cosine >= BF16_MIN_COSINE && norm <= BF16_NORM_TOL))
            g_test_fail_printf ("bf16 gradient of %s.%d.%s: cosine %.5f, norm off by %.3g",
                                net_name, i, part == 0 ? "weight" : "bias", cosine, norm);
          *worst_cosine = MIN (*worst_cosine, cosine);
          *worst_norm = MAX (*worst_norm, norm);
        }
}

static void
test_step_bf16 (void)
{
  g_autoptr (JsonParser) parser = ead_test_load_fixture ("train/step.json");
  JsonObject *root = ead_test_fixture_root (parser);
  int h = json_object_get_int_member (root, "input_height");
  int w = json_object_get_int_member (root, "input_width");
  guint64 dropout_seed = json_object_get_int_member (root, "dropout_seed");
  size_t size = (size_t) 3 * h * w;
  g_autofree float *x = ead_test_fixture_input (root, "train.x", size);
  g_autofree float *x_aug = ead_test_fixture_input (root, "train.x_aug", size);
  g_autoptr (GError) error = NULL;
  g_autoptr (EadModel) teacher = ead_model_new (EAD_ARCH_SMALL);
  g_autoptr (EadDataset) data = dataset_by_hand (w, h);
  g_autoptr (EadTrainer) fp32 = NULL;
  g_autoptr (EadTrainer) bf16 = NULL;
  float losses32[EAD_TRAIN_LOSSES], losses16[EAD_TRAIN_LOSSES];
  EadModel *model32, *model16;
  EadNet *gs32, *ga32, *gs16, *ga16;
  double worst_cosine = 1.0, worst_norm = 0.0;

  teacher->input_height = h;
  teacher->input_width = w;
  ead_model_init_random (teacher, json_object_get_int_member (root, "seed"));
  bf16 = step_trainer_new (root, data, teacher, EAD_PRECISION_BF16, &error);
  if (bf16 == NULL)
    {
      g_assert_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED);
      g_test_skip ("this CPU has no native bf16 kernels (bf16 was refused, as it should be)");
      return;
    }
  g_assert_cmpint (ead_trainer_get_precision (bf16), ==, EAD_PRECISION_BF16);
  g_assert_true (ead_trainer_step_inputs (bf16, x, x_aug, dropout_seed, FALSE, losses16, &error));
  g_assert_no_error (error);
  fp32 = step_trainer_new (root, data, teacher, EAD_PRECISION_FP32, &error);
  g_assert_no_error (error);
  g_assert_true (ead_trainer_step_inputs (fp32, x, x_aug, dropout_seed, FALSE, losses32, &error));
  g_assert_no_error (error);

  for (int k = 0; k < EAD_TRAIN_LOSSES; k++)
    {
      g_test_message ("bf16 loss %d: %.6g, fp32 %.6g", k, losses16[k], losses32[k]);
      g_assert_cmpfloat (fabsf (losses16[k] - losses32[k]), <=, BF16_LOSS_TOL * fabsf (losses32[k]));
    }
  ead_trainer_get_state (fp32, &model32, &gs32, &ga32);
  ead_trainer_get_state (bf16, &model16, &gs16, &ga16);
  compare_gradients (gs16, gs32, "student", &worst_cosine, &worst_norm);
  compare_gradients (ga16, ga32, "autoencoder", &worst_cosine, &worst_norm);
  g_test_message ("bf16 step vs fp32: worst gradient cosine %.5f, worst norm error %.3g",
                  worst_cosine, worst_norm);
}

/* ---------------------------------------------------------------------------------------
 * Quantiles and colour jitter against PyTorch / torchvision: exact
 * --------------------------------------------------------------------------------------- */

/* The arrays of make-train-fixtures.py: one float operation on the generator's values. */
static float *
quantile_values (JsonObject *array, guint64 seed, size_t *n)
{
  const char *kind = json_object_get_string_member (array, "kind");
  float *values;

  if (g_str_equal (kind, "values"))
    {
      JsonArray *list = json_object_get_array_member (array, "values");
      *n = json_array_get_length (list);
      values = g_new (float, *n);
      for (size_t i = 0; i < *n; i++)
        values[i] = json_array_get_double_element (list, i);
      return values;
    }
  {
    guint64 key = ead_random_key (seed, json_object_get_string_member (array, "name"));

    *n = json_object_get_int_member (array, "n");
    values = g_new (float, *n);
    for (size_t i = 0; i < *n; i++)
      {
        float u = ead_random_uniform (key, i);
        if (g_str_equal (kind, "centred"))
          values[i] = u - 0.5f;
        else if (g_str_equal (kind, "squared"))
          values[i] = u * u;
        else
          {
            g_assert_cmpstr (kind, ==, "ties");
            values[i] = floorf (u * 8.0f);
          }
      }
  }
  return values;
}

static void
test_quantile (void)
{
  g_autoptr (JsonParser) parser = ead_test_load_fixture ("train/quantile.json");
  JsonObject *root = ead_test_fixture_root (parser);
  JsonArray *arrays = json_object_get_array_member (root, "arrays");
  guint64 seed = json_object_get_int_member (root, "seed");

  g_assert_cmpstr (json_object_get_string_member (root, "format"), ==, "ead-quantile-1");
  for (guint a = 0; a < json_array_get_length (arrays); a++)
    {
      JsonObject *array = json_array_get_object_element (arrays, a);
      JsonArray *qs = json_object_get_array_member (array, "q");
      JsonArray *expected = json_object_get_array_member (array, "expected");
      size_t n;
      g_autofree float *values = quantile_values (array, seed, &n);
      g_autofree float *work = g_new (float, n);
      float lo = NAN, hi = NAN, lo_t = NAN, hi_t = NAN;

      for (guint k = 0; k < json_array_get_length (qs); k++)
        {
          double q = json_array_get_double_element (qs, k);
          float t = json_array_get_double_element (expected, k);
          float c;

          memcpy (work, values, n * sizeof (float));
          c = ead_quantile_select (work, n, q);
          if (c != t)
            g_test_fail_printf ("array %u (n = %zu): quantile %g is %.9g, torch.quantile %.9g",
                                a, n, q, c, t);
          if (q == 0.9)
            lo_t = t;
          if (q == 0.995)
            hi_t = t;
        }
      /* the two-quantile form the map normalisation uses */
      memcpy (work, values, n * sizeof (float));
      ead_quantiles_select (work, n, 0.9, 0.995, &lo, &hi);
      g_assert_cmpfloat (lo, ==, lo_t);
      g_assert_cmpfloat (hi, ==, hi_t);
    }
}

static guint8 *
hex_bytes (const char *hex, size_t expected)
{
  size_t n = strlen (hex) / 2;
  guint8 *bytes = g_new (guint8, n);

  g_assert_cmpuint (strlen (hex), ==, 2 * expected);
  for (size_t i = 0; i < n; i++)
    bytes[i] = (guint8) (g_ascii_xdigit_value (hex[2 * i]) * 16
                         + g_ascii_xdigit_value (hex[2 * i + 1]));
  return bytes;
}

static void
test_color_jitter (void)
{
  g_autoptr (JsonParser) parser = ead_test_load_fixture ("train/jitter.json");
  JsonObject *root = ead_test_fixture_root (parser);
  JsonArray *outputs = json_object_get_array_member (root, "outputs");
  int width = json_object_get_int_member (root, "width");
  int height = json_object_get_int_member (root, "height");
  size_t bytes = (size_t) width * height * 3;
  g_autoptr (EadImage) src = ead_image_new (width, height);
  g_autoptr (EadImage) dst = ead_image_new (width, height);
  g_autofree guint8 *rgb = hex_bytes (json_object_get_string_member (root, "rgb"), bytes);

  g_assert_cmpstr (json_object_get_string_member (root, "format"), ==, "ead-jitter-1");
  memcpy (src->rgb, rgb, bytes);
  g_assert_cmpuint (json_array_get_length (outputs), ==, 6);
  for (guint k = 0; k < json_array_get_length (outputs); k++)
    {
      JsonObject *output = json_array_get_object_element (outputs, k);
      const char *kind_name = json_object_get_string_member (output, "kind");
      float factor = json_object_get_double_member (output, "factor");
      const char *expected_hex = json_object_get_string_member (output, "rgb");
      g_autofree guint8 *expected = hex_bytes (expected_hex, bytes);
      EadJitterKind kind = g_str_equal (kind_name, "brightness") ? EAD_JITTER_BRIGHTNESS
                           : g_str_equal (kind_name, "contrast") ? EAD_JITTER_CONTRAST
                                                                 : EAD_JITTER_SATURATION;
      size_t changed = 0;

      ead_color_jitter (src, kind, factor, dst);
      for (size_t i = 0; i < bytes; i++)
        {
          if (dst->rgb[i] != expected[i])
            g_test_fail_printf ("%s %g: byte %zu is %u, torchvision %u", kind_name, factor, i,
                                dst->rgb[i], expected[i]);
          changed += expected[i] != src->rgb[i];
        }
      /* the factor did something: most bytes moved */
      g_assert_cmpuint (changed, >, bytes / 2);
    }
}

/* ---------------------------------------------------------------------------------------
 * Resuming, and datasets
 * --------------------------------------------------------------------------------------- */

#define RESUME_IMAGES 12
#define RESUME_STEPS 12
#define RESUME_CANCEL_AT 7
#define RESUME_EVERY 5

static void
write_images (const char *dir, const char *prefix, int count, int size)
{
  for (int i = 0; i < count; i++)
    {
      g_autofree char *name = g_strdup_printf ("%s%02d.png", prefix, i);
      g_autofree char *path = g_build_filename (dir, name, NULL);
      g_autoptr (EadImage) image = random_image (name, size, size);
      g_autoptr (GError) error = NULL;

      g_assert_true (ead_image_save_png (image, path, &error));
      g_assert_no_error (error);
    }
}

typedef struct {
  gint cancel;
  int cancel_at;        /* training step after which to cancel; 0: never */
  int first_step;       /* first training step reported */
  gboolean resumed;     /* as the first training report says */
  gboolean saw_statistics;
} Watch;

static void
watch_progress (const EadTrainProgress *progress, gpointer user_data)
{
  Watch *watch = user_data;

  if (progress->phase == EAD_TRAIN_PHASE_TEACHER_STATS)
    watch->saw_statistics = TRUE;
  if (progress->phase != EAD_TRAIN_PHASE_TRAINING)
    return;
  if (watch->first_step == 0)
    {
      watch->first_step = progress->step;
      watch->resumed = progress->resumed;
    }
  if (progress->step == watch->cancel_at)
    g_atomic_int_set (&watch->cancel, 1);
}

static EadTrainer *
resume_trainer (const EadModel *teacher, const EadDataset *data, guint64 seed, int steps,
                const char *checkpoint, gboolean resume)
{
  g_autoptr (GError) error = NULL;
  EadTrainOptions options;
  EadTrainer *trainer;

  ead_train_options_init (&options);
  options.steps = steps;
  options.seed = seed;
  options.threads = THREADS;
  options.checkpoint_every = RESUME_EVERY;
  options.checkpoint_path = checkpoint;
  options.resume = resume;
  trainer = ead_trainer_new (teacher, data, NULL, &options, &error);
  g_assert_no_error (error);
  return trainer;
}

static char *
write_model (EadModel *model, const char *dir, const char *name)
{
  g_autoptr (GError) error = NULL;
  char *path = g_build_filename (dir, name, NULL);

  g_assert_nonnull (model);
  g_assert_true (ead_bundle_write (model, path, &error));
  g_assert_no_error (error);
  return path;
}

/* A resumed run's checkpoint belongs to seed 3, 12 steps: other runs must refuse it. */
static void
assert_refused (const EadModel *teacher, const EadDataset *data, guint64 seed, int steps,
                const char *checkpoint)
{
  g_autoptr (EadTrainer) trainer = resume_trainer (teacher, data, seed, steps, checkpoint, TRUE);
  g_autoptr (GError) error = NULL;
  g_autoptr (EadModel) model = ead_trainer_run (trainer, NULL, NULL, NULL, &error);

  g_assert_null (model);
  g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
  g_test_message ("seed %" G_GUINT64_FORMAT ", %d steps: %s", seed, steps, error->message);
  g_assert_nonnull (strstr (error->message, checkpoint));
  g_assert_nonnull (strstr (error->message, "belongs to another run"));
}

static void
test_resume (void)
{
  g_autofree char *dir = make_temp_dir ();
  g_autofree char *images = g_build_filename (dir, "images", NULL);
  g_autofree char *checkpoint = g_build_filename (dir, "b.checkpoint", NULL);
  g_autofree char *path_a = NULL;
  g_autofree char *path_b = NULL;
  g_autofree char *bytes_a = NULL;
  g_autofree char *bytes_b = NULL;
  g_autofree char *step = NULL;
  gsize size_a, size_b;
  EadDatasetOptions data_options = { 256, 256, 0.1, 42, FALSE, EAD_DATASET_MIN_IMAGES };
  g_autoptr (EadDataset) data = NULL;
  g_autoptr (EadModel) teacher = ead_model_new (EAD_ARCH_SMALL);
  g_autoptr (GError) error = NULL;
  const guint64 seed = 3;

  g_assert_cmpint (g_mkdir (images, 0755), ==, 0);
  write_images (images, "good", RESUME_IMAGES, 256);
  data = ead_dataset_load (images, &data_options, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (data->train->len, ==, 10);
  g_assert_cmpuint (data->validation->len, ==, 2);
  teacher->input_height = teacher->input_width = 256;
  ead_model_init_random (teacher, 1);

  /* A: uninterrupted */
  {
    g_autoptr (EadTrainer) trainer = resume_trainer (teacher, data, seed, RESUME_STEPS, NULL,
                                                     FALSE);
    g_autoptr (EadModel) model = ead_trainer_run (trainer, NULL, NULL, NULL, &error);

    g_assert_no_error (error);
    path_a = write_model (model, dir, "a.ead.safetensors");
  }
  /* B: cancelled after step 7, which writes a checkpoint of step 7 ... */
  {
    g_autoptr (EadTrainer) trainer = resume_trainer (teacher, data, seed, RESUME_STEPS,
                                                     checkpoint, FALSE);
    Watch watch = { .cancel_at = RESUME_CANCEL_AT };
    g_autoptr (EadModel) model = ead_trainer_run (trainer, watch_progress, &watch, &watch.cancel,
                                                  &error);

    g_assert_null (model);
    g_assert_error (error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
    g_clear_error (&error);
    g_assert_true (watch.saw_statistics);
    g_assert_cmpint (watch.first_step, ==, 1);
    g_assert_false (watch.resumed);
  }
  step = ead_test_checkpoint_step (checkpoint);
  g_assert_cmpstr (step, ==, G_STRINGIFY (RESUME_CANCEL_AT));
  /* ... then resumed from it to the end */
  {
    g_autoptr (EadTrainer) trainer = resume_trainer (teacher, data, seed, RESUME_STEPS,
                                                     checkpoint, TRUE);
    Watch watch = { 0 };
    g_autoptr (EadModel) model = ead_trainer_run (trainer, watch_progress, &watch, &watch.cancel,
                                                  &error);

    g_assert_no_error (error);
    /* the teacher statistics come from the checkpoint, training goes on at step 8 */
    g_assert_false (watch.saw_statistics);
    g_assert_cmpint (watch.first_step, ==, RESUME_CANCEL_AT + 1);
    g_assert_true (watch.resumed);
    path_b = write_model (model, dir, "b.ead.safetensors");
  }
  g_assert_true (g_file_get_contents (path_a, &bytes_a, &size_a, &error));
  g_assert_true (g_file_get_contents (path_b, &bytes_b, &size_b, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (size_a, ==, size_b);
  g_assert_true (memcmp (bytes_a, bytes_b, size_a) == 0);

  /* the checkpoint (now of step 10) names its run: another seed or length is refused */
  assert_refused (teacher, data, seed + 1, RESUME_STEPS, checkpoint);
  assert_refused (teacher, data, seed, RESUME_STEPS + 1, checkpoint);
  ead_test_remove_tree (dir);
}

static void
load_expecting_error (const char *dir, const EadDatasetOptions *options, int code,
                      const char *needle)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadDataset) data = ead_dataset_load (dir, options, &error);

  g_assert_null (data);
  g_assert_error (error, EAD_ERROR, code);
  g_test_message ("%s", error->message);
  if (strstr (error->message, needle) == NULL)
    g_test_fail_printf ("the message \"%s\" does not say \"%s\"", error->message, needle);
}

static void
test_dataset_errors (void)
{
  g_autofree char *dir = make_temp_dir ();
  g_autofree char *empty = g_build_filename (dir, "empty", NULL);
  g_autofree char *nine = g_build_filename (dir, "nine", NULL);
  g_autofree char *corrupt = g_build_filename (dir, "corrupt", NULL);
  g_autofree char *broken = g_build_filename (corrupt, "broken.png", NULL);
  EadDatasetOptions options = { 256, 256, 0.1, 42, FALSE, EAD_DATASET_MIN_IMAGES };
  g_autoptr (GError) error = NULL;

  g_assert_cmpint (g_mkdir (empty, 0755), ==, 0);
  g_assert_cmpint (g_mkdir (nine, 0755), ==, 0);
  g_assert_cmpint (g_mkdir (corrupt, 0755), ==, 0);
  write_images (nine, "good", 9, 32);
  write_images (corrupt, "good", 10, 32);
  g_assert_true (g_file_set_contents (broken, "\x89PNG\r\n\x1a\n this is not a PNG", -1, &error));
  g_assert_no_error (error);

  load_expecting_error (empty, &options, EAD_ERROR_INVALID, "no images");
  load_expecting_error (nine, &options, EAD_ERROR_INVALID,
                        "9 readable images; training needs at least 10");

  /* an unreadable image is skipped and listed by name; the rest trains */
  {
    g_autoptr (EadDataset) data = ead_dataset_load (corrupt, &options, &error);

    g_assert_no_error (error);
    g_assert_cmpuint (data->train->len + data->validation->len, ==, 10);
    g_assert_cmpuint (data->skipped->len, ==, 1);
    g_assert_true (g_str_has_prefix (data->skipped->pdata[0], broken));
  }
  /* with strict it is refused, by name */
  options.strict = TRUE;
  load_expecting_error (corrupt, &options, EAD_ERROR_FORMAT, "broken.png");
  options.strict = FALSE;

  options.height = options.width = 128;
  load_expecting_error (corrupt, &options, EAD_ERROR_INVALID, "128x128 is too small");
  ead_test_remove_tree (dir);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/train/fd/conv", test_fd_conv);
  g_test_add_func ("/train/fd/avgpool", test_fd_avgpool);
  g_test_add_func ("/train/fd/upsample", test_fd_upsample);
  g_test_add_func ("/train/fd/relu", test_fd_relu);
  g_test_add_func ("/train/fd/dropout", test_fd_dropout);
  g_test_add_func ("/train/fd/network", test_fd_network);
  g_test_add_func ("/train/pytorch/quantile", test_quantile);
  g_test_add_func ("/train/pytorch/color-jitter", test_color_jitter);
  g_test_add_func ("/train/pytorch/step", test_step_parity);
  g_test_add_func ("/train/bf16/step", test_step_bf16);
  g_test_add_func ("/train/resume/bit-identical", test_resume);
  g_test_add_func ("/train/dataset/errors", test_dataset_errors);
  return g_test_run ();
}
