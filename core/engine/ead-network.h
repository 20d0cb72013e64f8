/* ead-network.h: the three EfficientAD networks as layer lists, their weights, and shapes.
 *
 * A network is described like the reference nn.Sequential (spec §1, nelson1425's
 * common.py): one entry per module, ReLU and Dropout included, so that entry i owns the
 * state_dict tensors "<prefix>.<i>.weight" and "<prefix>.<i>.bias".  Backends fuse a
 * ReLU into the convolution before it.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define EAD_MAX_LAYERS 48
#define EAD_TEACHER_CHANNELS 384
#define EAD_MIN_INPUT_SIZE 256

typedef enum {
  EAD_LAYER_CONV,
  EAD_LAYER_RELU,
  EAD_LAYER_AVGPOOL,   /* count_include_pad=True, as nn.AvgPool2d */
  EAD_LAYER_UPSAMPLE,  /* bilinear, align_corners=False, to a size derived from the input */
  EAD_LAYER_DROPOUT,   /* identity at inference */
} EadLayerKind;

typedef struct {
  EadLayerKind kind;
  int in_channels;   /* conv */
  int out_channels;  /* conv */
  int kernel;        /* conv, avgpool */
  int stride;        /* conv, avgpool */
  int padding;       /* conv, avgpool */
  int upsample_step; /* upsample: index 0..6 into ead_autoencoder_sizes() */
  float dropout;     /* dropout probability */
} EadLayer;

typedef enum {
  EAD_NET_PDN_SMALL,
  EAD_NET_PDN_MEDIUM,
  EAD_NET_AUTOENCODER,
} EadNetKind;

/* A network with its fp32 weights (OIHW) and biases, one pair per conv entry. */
typedef struct {
  EadNetKind kind;
  gboolean padding;  /* PDN padding (spec §1): FALSE for anomaly detection */
  int out_channels;
  int n_layers;
  EadLayer layers[EAD_MAX_LAYERS];
  float *weight[EAD_MAX_LAYERS];  /* owned; NULL for entries without parameters */
  float *bias[EAD_MAX_LAYERS];
} EadNet;

typedef struct {
  int c;
  int h;
  int w;
} EadShape;

/* Builds the layer list and allocates zeroed weights. */
EadNet *ead_net_new (EadNetKind kind, int out_channels, gboolean padding);
void ead_net_free (EadNet *net);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (EadNet, ead_net_free)

/* A network of a single layer (for op tests and benchmarks); weights zeroed. */
EadNet *ead_net_new_single (const EadLayer *layer);

/* A deep copy (weights included). */
EadNet *ead_net_copy (const EadNet *net);
/* SHA-256 (hex) of the float32 weights and biases of the conv entries in layer order:
 * the identity of a teacher recorded as ead.teacher.sha256. */
char *ead_net_digest (const EadNet *net);
/* Sets every weight and bias to zero (gradients, optimiser moments). */
void ead_net_zero (EadNet *net);

const char *ead_net_kind_name (EadNetKind kind);
size_t ead_layer_weight_count (const EadLayer *layer);
size_t ead_net_parameter_count (const EadNet *net);

/* Decoder resize targets of the autoencoder for an h x w input (spec §1.3):
 * h/64-1, h/32, h/16-1, h/8, h/4-1, h/2-1, then ceil(h/4)-8 (ceil(h/4) with padding). */
void ead_autoencoder_sizes (int h, int w, gboolean padding, int sizes[7][2]);

/* The shape after each layer for an input of in_shape; out may be NULL.  Fails with a
 * message naming the layer when the input is too small. */
gboolean ead_net_shapes (const EadNet *net,
                         EadShape in_shape,
                         EadShape out[EAD_MAX_LAYERS],
                         EadShape *final_shape,
                         GError **error);

/* Multiply-accumulates of one forward pass for an input of in_shape (convolutions only;
 * the spec's §1.5 convention), 0 when the input is too small. */
guint64 ead_net_macs (const EadNet *net, EadShape in_shape);

/* PyTorch's default Conv2d initialisation, weights and biases uniform in ±1/sqrt(fan_in),
 * drawn from a counter-based generator (ead_random_uniform) keyed by seed and tensor name,
 * so that Python can reproduce the same weights (tests/fixtures/make-fixtures.py). */
void ead_net_init_random (EadNet *net, const char *prefix, guint64 seed);

/* splitmix64 of (key + index): a value in [0, 1) with 24 random bits, exact in float. */
guint64 ead_random_key (guint64 seed, const char *name);
float ead_random_uniform (guint64 key, guint64 index);

G_END_DECLS
