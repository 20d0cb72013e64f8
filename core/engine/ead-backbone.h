/* ead-backbone.h: backbones for teacher distillation (spec §5), of two families.
 *
 * A torchvision backbone is read from a torchvision state_dict (*.pth, through ead-torch-checkpoint.h):
 * ResNet-18/34 (BasicBlock), ResNet-50/101/152, Wide ResNet-50-2/101-2 and ResNeXt
 * (Bottleneck), or any other depth and width built from torchvision's blocks.  The
 * architecture comes from the keys and shapes; every tensor is checked against it.  Each
 * batch norm is folded into the convolution before it, in double:
 *
 *   s = gamma / sqrt(running_var + 1e-5),  w' = w * s,  b' = beta - running_mean * s
 *
 * so the network is a list of biased convolutions.  The executable runs it on the CPU
 * through oneDNN in float32 (frozen, inference only; a backend's bf16 mode is not used)
 * and returns the outputs of the chosen stages layer1..layer4 ("levels") as NCHW float32.
 * The input is NCHW float32, already normalised (ImageNet mean and std for torchvision's
 * weights).
 *
 * What the state_dict cannot say is taken from torchvision: the stem is a 7x7 stride-2
 * convolution and a 3x3 stride-2 max pool, layer1 has stride 1 and layer2..4 stride 2 on
 * their first block, in a Bottleneck the stride is on the 3x3 convolution (ResNet v1.5),
 * and there is no dilation (replace_stride_with_dilation is not detected).
 *
 * A graph backbone is read from a safetensors file whose metadata "ead.backbone.graph"
 * describes it (tools/convert-mobilenet writes MobileNetV2 and MobileNetV3 so): a JSON
 * object
 *
 *   {"format": 1, "nodes": [NODE...], "levels": {"level1": {"node": NAME}, ...}}
 *   NODE: {"name", "op": "conv", "input": NAME or "input", "in_channels", "out_channels",
 *          "kernel", "stride", "groups", "padding": "same" | "valid" | [top, bottom,
 *          left, right], "activation": "none" | "relu" | "relu6" | "hard_swish" |
 *          "hard_sigmoid", "hard_scale": NUMBER, "residual": NAME}
 *       | {"name", "op": "mean", "input": NAME or "input", "channels"}
 *       | {"name", "op": "mul", "input": NAME or "input", "scale": NAME, "channels"}
 *
 * with tensors <name>.weight (OIHW, I = in_channels / groups) and <name>.bias per conv
 * node; batch norm is already folded in.  A conv node computes act(conv(input) + bias +
 * residual), where hard_swish(x) = x * relu6(x + 3) * s and hard_sigmoid(x) = relu6(x + 3)
 * * s with s = "hard_scale" (in (0, 1], default 1/6; a converted TensorFlow graph keeps
 * its own constant, e.g. float16's 1/6).  A mean node averages its input over height and
 * width (channels x 1 x 1: squeeze-and-excite's pool); a mul node multiplies its input by
 * "scale" per element, broadcast when the scale is channels x 1 x 1 (squeeze-and-excite's
 * gate).  "same" is TensorFlow's: pad_total = max((ceil(in / stride) - 1) * stride +
 * kernel - in, 0), pad_before = pad_total / 2, the rest after (asymmetric for an even
 * input at stride 2).  Nodes read only earlier nodes.  Tensors named head.* (a classifier)
 * are allowed and ignored.
 *
 * Levels: bit (n - 1) of a level mask is level n.  For torchvision it is layer<n>; for a
 * graph the node that "level<n>" names (levels a graph does not name cannot be compiled).
 */
#pragma once

#include <glib.h>

#include "ead-network.h"
#include "ead-torch-checkpoint.h"

G_BEGIN_DECLS

#define EAD_BACKBONE_LEVELS 4

typedef enum {
  EAD_BACKBONE_BASIC,       /* two 3x3 convolutions */
  EAD_BACKBONE_BOTTLENECK,  /* 1x1, 3x3 (grouped for ResNeXt), 1x1 */
} EadBackboneBlockKind;

typedef enum {
  EAD_BACKBONE_TORCHVISION,
  EAD_BACKBONE_GRAPH,
} EadBackboneFamily;

typedef enum {
  EAD_BACKBONE_ACTIVATION_NONE,
  EAD_BACKBONE_ACTIVATION_RELU,
  EAD_BACKBONE_ACTIVATION_RELU6,
  EAD_BACKBONE_ACTIVATION_HARD_SWISH,    /* x * relu6(x + 3) * hard_scale */
  EAD_BACKBONE_ACTIVATION_HARD_SIGMOID,  /* relu6(x + 3) * hard_scale */
} EadBackboneActivation;

typedef enum {
  EAD_BACKBONE_OP_CONV,
  EAD_BACKBONE_OP_MEAN,  /* global average over height and width */
  EAD_BACKBONE_OP_MUL,   /* input * scale, the scale broadcast from channels x 1 x 1 */
} EadBackboneOp;

/* A convolution with its batch norm folded in. */
typedef struct {
  char *name;        /* the state_dict prefix: "conv1", "layer2.0.conv2", ... */
  int in_channels;
  int out_channels;
  int groups;
  int kernel;
  int stride;
  int padding;       /* torchvision: on every side; graph: unused (see the node) */
  float *weight;     /* [out, in / groups, kernel, kernel] */
  float *bias;       /* [out] */
} EadBackboneConv;

typedef struct {
  int level;         /* 1..4: the block is in layer<level> */
  int first_conv;    /* index in convs of its 2 (BasicBlock) or 3 (Bottleneck) convolutions */
  int downsample;    /* index in convs of the shortcut's convolution, -1 for the identity */
} EadBackboneBlock;

/* A graph backbone's step: convs[conv] applied to node `input` (a mean or mul node's
 * conv holds only its name and channels: kernel 0, no weight or bias). */
typedef struct {
  EadBackboneOp op;
  int conv;
  int input;                        /* an earlier node, -1 for the image */
  int residual;                     /* an earlier node added before the activation, or -1 */
  int scale;                        /* mul: the earlier node multiplied in; else -1 */
  EadBackboneActivation activation;
  float hard_scale;                 /* of hard_swish and hard_sigmoid */
  gboolean same;                    /* TensorFlow 'same' padding, else pads */
  int pads[4];                      /* top, bottom, left, right; 'valid' is all 0 */
} EadBackboneNode;

typedef struct {
  char *path;
  EadBackboneFamily family;
  /* torchvision's name when the network is one of its models ("resnet18",
   * "wide_resnet101_2", "resnext50_32x4d"), else a description such as
   * "resnet (Bottleneck, blocks 1-2-1-1, widths 8-16-32-64, groups 2, stem 8)" */
  char *arch;
  EadBackboneBlockKind block_kind;
  int depth;                                 /* counted as torchvision does: 18, 50, ... */
  int level_blocks[EAD_BACKBONE_LEVELS];
  int level_channels[EAD_BACKBONE_LEVELS];   /* the output channels of layer1..layer4 */
  int n_convs;
  EadBackboneConv *convs;                    /* the stem first, then in execution order */
  int n_blocks;
  EadBackboneBlock *blocks;
  /* a graph's nodes (torchvision: 0, NULL); convs[i] belongs to nodes[i], so a graph's
   * n_convs counts its mean and mul nodes too */
  int n_nodes;
  EadBackboneNode *nodes;
  int level_nodes[EAD_BACKBONE_LEVELS];    /* graph: the node of each level, -1 if none */
  char *level_names[EAD_BACKBONE_LEVELS];  /* "layer2", or the graph's node name; NULL if none */
  /* the input the network was trained on: (RGB / 255 - mean) / std per channel;
   * torchvision: ImageNet's; a graph: its "input" "mean" and "std", else 0 and 1 */
  float input_mean[3];
  float input_std[3];
} EadBackbone;

/* Reads path with ead_torch_checkpoint_read and builds the backbone.  Errors: those of
 * the reader, and EAD_ERROR_FORMAT when the state_dict is not a torchvision ResNet, lacks
 * a tensor, holds an unexpected one (the classifier fc.* and the batch norms'
 * num_batches_tracked are allowed), has a tensor of the wrong shape (both shapes are
 * named), a negative running variance or a value that is not finite.  Messages start with
 * the path and name the key. */
EadBackbone *ead_backbone_load_torchvision (const char *path, GError **error);
/* The same from a checkpoint already read; the backbone does not keep it. */
EadBackbone *ead_backbone_new_from_checkpoint (const EadTorchCheckpoint *checkpoint,
                                               GError **error);
/* A graph backbone from a safetensors file (see above).  Errors: those of
 * ead_safetensors_open, EAD_ERROR_FORMAT when "ead.backbone.graph" is missing or not as
 * described (an unknown op or activation, a hard_scale out of range or on another
 * activation, a residual on a mean or mul node), a node reads a later or unknown node,
 * channels or groups do not fit, a tensor is missing, of the wrong shape, not finite, or
 * not used.  Messages start with the path
 * and name the node or tensor.  level_channels holds 0 for levels the graph lacks;
 * block_kind, depth, level_blocks and blocks are unused. */
EadBackbone *ead_backbone_load_graph (const char *path, GError **error);
/* ead_backbone_load_graph for *.safetensors, else ead_backbone_load_torchvision. */
EadBackbone *ead_backbone_load (const char *path, GError **error);
void ead_backbone_free (EadBackbone *backbone);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (EadBackbone, ead_backbone_free)

/* "layer2,layer3" (or "level2,level3": the two spellings are the same levels, for either
 * family) → a mask with bit (level - 1) set for each level; 0 and EAD_ERROR_INVALID for an
 * empty list, an unknown or repeated name. */
guint ead_backbone_parse_levels (const char *text, GError **error);

typedef struct _EadBackboneExec EadBackboneExec;

/* Compiles the backbone up to the last level in the mask (EAD_ERROR_INVALID for a level a
 * graph does not name, an input too small for a kernel, a residual or a mul's scale whose
 * size does not fit) for a batch x 3 x height x width
 * input, on the CPU backend's oneDNN engine and thread count (the images of a batch run
 * one after the other).  The weights are copied into the executable, so the backbone may
 * be freed afterwards; the activations of one image live in one block allocated here
 * (EAD_ERROR_LIMIT when it cannot be), so forward() does not allocate. */
EadBackboneExec *ead_backbone_compile (const EadBackbone *backbone,
                                       guint levels,
                                       int batch,
                                       int height,
                                       int width,
                                       GError **error);
void ead_backbone_exec_free (EadBackboneExec *exec);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (EadBackboneExec, ead_backbone_exec_free)

/* The outputs, one per level in the mask, in increasing level order: output i is
 * layer<level> with shape (batch, shape.c, shape.h, shape.w). */
int ead_backbone_exec_n_outputs (const EadBackboneExec *exec);
int ead_backbone_exec_output_level (const EadBackboneExec *exec, int i);
EadShape ead_backbone_exec_output_shape (const EadBackboneExec *exec, int i);

/* in: batch x 3 x height x width; out[i]: output i, NCHW.  No allocation. */
gboolean ead_backbone_forward (EadBackboneExec *exec,
                               const float *in,
                               float *const *out,
                               GError **error);

/* One line per primitive (which implementation oneDNN chose) and the workspace size. */
char *ead_backbone_exec_describe (const EadBackboneExec *exec);

G_END_DECLS
