#include "ead-network.h"

#include <math.h>
#include <string.h>

#include "ead-error.h"

static void
add_layer (EadNet *net, EadLayer layer)
{
  g_assert (net->n_layers < EAD_MAX_LAYERS);
  net->layers[net->n_layers++] = layer;
}

static void
add_conv (EadNet *net, int in, int out, int kernel, int stride, int padding)
{
  add_layer (net, (EadLayer) { .kind = EAD_LAYER_CONV, .in_channels = in, .out_channels = out,
                               .kernel = kernel, .stride = stride, .padding = padding });
}

static void
add_relu (EadNet *net)
{
  add_layer (net, (EadLayer) { .kind = EAD_LAYER_RELU });
}

static void
add_avgpool (EadNet *net, int padding)
{
  add_layer (net, (EadLayer) { .kind = EAD_LAYER_AVGPOOL, .kernel = 2, .stride = 2,
                               .padding = padding });
}

static void
build_pdn_small (EadNet *net, int out, int p)
{
  add_conv (net, 3, 128, 4, 1, 3 * p);
  add_relu (net);
  add_avgpool (net, p);
  add_conv (net, 128, 256, 4, 1, 3 * p);
  add_relu (net);
  add_avgpool (net, p);
  add_conv (net, 256, 256, 3, 1, p);
  add_relu (net);
  add_conv (net, 256, out, 4, 1, 0);
}

static void
build_pdn_medium (EadNet *net, int out, int p)
{
  add_conv (net, 3, 256, 4, 1, 3 * p);
  add_relu (net);
  add_avgpool (net, p);
  add_conv (net, 256, 512, 4, 1, 3 * p);
  add_relu (net);
  add_avgpool (net, p);
  add_conv (net, 512, 512, 1, 1, 0);
  add_relu (net);
  add_conv (net, 512, 512, 3, 1, p);
  add_relu (net);
  add_conv (net, 512, out, 4, 1, 0);
  add_relu (net);
  add_conv (net, out, out, 1, 1, 0);
}

static void
build_autoencoder (EadNet *net, int out)
{
  static const int enc_channels[] = { 3, 32, 32, 64, 64, 64 };

  for (int i = 0; i < 5; i++)
    {
      add_conv (net, enc_channels[i], enc_channels[i + 1], 4, 2, 1);
      add_relu (net);
    }
  add_conv (net, 64, 64, 8, 1, 0);
  for (int i = 0; i < 6; i++)
    {
      add_layer (net, (EadLayer) { .kind = EAD_LAYER_UPSAMPLE, .upsample_step = i });
      add_conv (net, 64, 64, 4, 1, 2);
      add_relu (net);
      add_layer (net, (EadLayer) { .kind = EAD_LAYER_DROPOUT, .dropout = 0.2f });
    }
  add_layer (net, (EadLayer) { .kind = EAD_LAYER_UPSAMPLE, .upsample_step = 6 });
  add_conv (net, 64, 64, 3, 1, 1);
  add_relu (net);
  add_conv (net, 64, out, 3, 1, 1);
}

size_t
ead_layer_weight_count (const EadLayer *layer)
{
  if (layer->kind != EAD_LAYER_CONV)
    return 0;
  return (size_t) layer->out_channels * layer->in_channels * layer->kernel * layer->kernel;
}

static void
allocate_weights (EadNet *net)
{
  for (int i = 0; i < net->n_layers; i++)
    {
      const EadLayer *layer = &net->layers[i];
      if (layer->kind != EAD_LAYER_CONV)
        continue;
      net->weight[i] = g_new0 (float, ead_layer_weight_count (layer));
      net->bias[i] = g_new0 (float, layer->out_channels);
    }
}

EadNet *
ead_net_new (EadNetKind kind, int out_channels, gboolean padding)
{
  EadNet *net = g_new0 (EadNet, 1);

  net->kind = kind;
  net->padding = padding;
  net->out_channels = out_channels;
  switch (kind)
    {
    case EAD_NET_PDN_SMALL:
      build_pdn_small (net, out_channels, padding ? 1 : 0);
      break;
    case EAD_NET_PDN_MEDIUM:
      build_pdn_medium (net, out_channels, padding ? 1 : 0);
      break;
    case EAD_NET_AUTOENCODER:
      build_autoencoder (net, out_channels);
      break;
    }
  allocate_weights (net);
  return net;
}

EadNet *
ead_net_new_single (const EadLayer *layer)
{
  EadNet *net = g_new0 (EadNet, 1);

  net->kind = EAD_NET_PDN_SMALL;
  net->out_channels = layer->kind == EAD_LAYER_CONV ? layer->out_channels : 0;
  add_layer (net, *layer);
  allocate_weights (net);
  return net;
}

void
ead_net_free (EadNet *net)
{
  if (net == NULL)
    return;
  for (int i = 0; i < net->n_layers; i++)
    {
      g_free (net->weight[i]);
      g_free (net->bias[i]);
    }
  g_free (net);
}

EadNet *
ead_net_copy (const EadNet *net)
{
  EadNet *copy = g_memdup2 (net, sizeof *net);

  for (int i = 0; i < net->n_layers; i++)
    if (net->layers[i].kind == EAD_LAYER_CONV)
      {
        copy->weight[i] = g_memdup2 (net->weight[i],
                                     ead_layer_weight_count (&net->layers[i]) * sizeof (float));
        copy->bias[i] = g_memdup2 (net->bias[i], net->layers[i].out_channels * sizeof (float));
      }
  return copy;
}

char *
ead_net_digest (const EadNet *net)
{
  g_autoptr (GChecksum) checksum = g_checksum_new (G_CHECKSUM_SHA256);

  for (int i = 0; i < net->n_layers; i++)
    if (net->layers[i].kind == EAD_LAYER_CONV)
      {
        g_checksum_update (checksum, (const guchar *) net->weight[i],
                           ead_layer_weight_count (&net->layers[i]) * sizeof (float));
        g_checksum_update (checksum, (const guchar *) net->bias[i],
                           net->layers[i].out_channels * sizeof (float));
      }
  return g_strdup (g_checksum_get_string (checksum));
}

void
ead_net_zero (EadNet *net)
{
  for (int i = 0; i < net->n_layers; i++)
    if (net->layers[i].kind == EAD_LAYER_CONV)
      {
        memset (net->weight[i], 0, ead_layer_weight_count (&net->layers[i]) * sizeof (float));
        memset (net->bias[i], 0, net->layers[i].out_channels * sizeof (float));
      }
}

const char *
ead_net_kind_name (EadNetKind kind)
{
  switch (kind)
    {
    case EAD_NET_PDN_SMALL:
      return "pdn-small";
    case EAD_NET_PDN_MEDIUM:
      return "pdn-medium";
    case EAD_NET_AUTOENCODER:
      return "autoencoder";
    }
  return "unknown";
}

size_t
ead_net_parameter_count (const EadNet *net)
{
  size_t count = 0;

  for (int i = 0; i < net->n_layers; i++)
    if (net->layers[i].kind == EAD_LAYER_CONV)
      count += ead_layer_weight_count (&net->layers[i]) + net->layers[i].out_channels;
  return count;
}

static void
autoencoder_sizes_1d (int n, gboolean padding, int out[7])
{
  int quarter_ceil = (n + 3) / 4;

  out[0] = n / 64 - 1;
  out[1] = n / 32;
  out[2] = n / 16 - 1;
  out[3] = n / 8;
  out[4] = n / 4 - 1;
  out[5] = n / 2 - 1;
  out[6] = padding ? quarter_ceil : quarter_ceil - 8;
}

void
ead_autoencoder_sizes (int h, int w, gboolean padding, int sizes[7][2])
{
  int hs[7], ws[7];

  autoencoder_sizes_1d (h, padding, hs);
  autoencoder_sizes_1d (w, padding, ws);
  for (int i = 0; i < 7; i++)
    {
      sizes[i][0] = hs[i];
      sizes[i][1] = ws[i];
    }
}

/* PyTorch's floor((n + 2p - k) / s) + 1, and 0 when the window does not fit. */
static int
window_output (int n, const EadLayer *layer)
{
  int span = n + 2 * layer->padding - layer->kernel;

  return span < 0 ? 0 : span / layer->stride + 1;
}

gboolean
ead_net_shapes (const EadNet *net,
                EadShape in_shape,
                EadShape out[EAD_MAX_LAYERS],
                EadShape *final_shape,
                GError **error)
{
  EadShape shape = in_shape;
  int sizes[7][2];

  ead_autoencoder_sizes (in_shape.h, in_shape.w, net->padding, sizes);

  for (int i = 0; i < net->n_layers; i++)
    {
      const EadLayer *layer = &net->layers[i];

      switch (layer->kind)
        {
        case EAD_LAYER_CONV:
          if (shape.c != layer->in_channels)
            {
              g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                           "layer %d: %d input channels, expected %d", i, shape.c,
                           layer->in_channels);
              return FALSE;
            }
          shape.c = layer->out_channels;
          /* conv and pool share the spatial arithmetic */
          G_GNUC_FALLTHROUGH;
        case EAD_LAYER_AVGPOOL:
          shape.h = window_output (shape.h, layer);
          shape.w = window_output (shape.w, layer);
          break;
        case EAD_LAYER_UPSAMPLE:
          shape.h = sizes[layer->upsample_step][0];
          shape.w = sizes[layer->upsample_step][1];
          break;
        case EAD_LAYER_RELU:
        case EAD_LAYER_DROPOUT:
          break;
        }
      if (shape.h < 1 || shape.w < 1)
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                       "%s: a %dx%d input is too small (layer %d has no output); "
                       "inputs must be at least %dx%d",
                       ead_net_kind_name (net->kind), in_shape.w, in_shape.h, i,
                       EAD_MIN_INPUT_SIZE, EAD_MIN_INPUT_SIZE);
          return FALSE;
        }
      if (out != NULL)
        out[i] = shape;
    }
  if (final_shape != NULL)
    *final_shape = shape;
  return TRUE;
}

guint64
ead_net_macs (const EadNet *net, EadShape in_shape)
{
  EadShape shapes[EAD_MAX_LAYERS];
  guint64 macs = 0;

  if (!ead_net_shapes (net, in_shape, shapes, NULL, NULL))
    return 0;
  for (int i = 0; i < net->n_layers; i++)
    if (net->layers[i].kind == EAD_LAYER_CONV)
      macs += (guint64) shapes[i].h * shapes[i].w * ead_layer_weight_count (&net->layers[i]);
  return macs;
}

static guint64
splitmix64 (guint64 z)
{
  z += G_GUINT64_CONSTANT (0x9E3779B97F4A7C15);
  z = (z ^ (z >> 30)) * G_GUINT64_CONSTANT (0xBF58476D1CE4E5B9);
  z = (z ^ (z >> 27)) * G_GUINT64_CONSTANT (0x94D049BB133111EB);
  return z ^ (z >> 31);
}

guint64
ead_random_key (guint64 seed, const char *name)
{
  /* FNV-1a of the tensor name, mixed with the seed */
  guint64 hash = G_GUINT64_CONSTANT (0xCBF29CE484222325);

  for (const char *p = name; *p != '\0'; p++)
    hash = (hash ^ (guchar) *p) * G_GUINT64_CONSTANT (0x100000001B3);
  return splitmix64 (hash ^ splitmix64 (seed));
}

float
ead_random_uniform (guint64 key, guint64 index)
{
  return (float) (splitmix64 (key + index) >> 40) * (1.0f / 16777216.0f);
}

static void
fill_uniform (float *data, size_t count, float bound, guint64 seed, const char *name)
{
  guint64 key = ead_random_key (seed, name);

  for (size_t i = 0; i < count; i++)
    data[i] = (2.0f * ead_random_uniform (key, i) - 1.0f) * bound;
}

void
ead_net_init_random (EadNet *net, const char *prefix, guint64 seed)
{
  for (int i = 0; i < net->n_layers; i++)
    {
      const EadLayer *layer = &net->layers[i];
      g_autofree char *weight_name = NULL;
      g_autofree char *bias_name = NULL;
      float bound;

      if (layer->kind != EAD_LAYER_CONV)
        continue;
      bound = (float) (1.0 / sqrt ((double) layer->in_channels * layer->kernel * layer->kernel));
      weight_name = g_strdup_printf ("%s.%d.weight", prefix, i);
      bias_name = g_strdup_printf ("%s.%d.bias", prefix, i);
      fill_uniform (net->weight[i], ead_layer_weight_count (layer), bound, seed, weight_name);
      fill_uniform (net->bias[i], layer->out_channels, bound, seed, bias_name);
    }
}
