/* Backbones: torchvision ResNets (reading and folding the state_dict), graph backbones
 * from safetensors, and an executable on the CPU through oneDNN (see ead-backbone.h).
 *
 * The executable follows the CPU backend's habits (ead-backend-cpu.c): activations stay
 * in the layouts oneDNN picks (format_tag_any), weights are reordered into the layout of
 * their convolution once, ReLU is a post-op, and scratchpads are the caller's.  Residual
 * additions are a sum post-op of the block's last convolution: it adds its result into
 * the shortcut's memory, then applies the ReLU, so a block costs no separate pass.
 * Unlike the PDN, a ResNet keeps more than two activations alive at once (the block
 * input for the shortcut, the branch, the downsampled shortcut), so activations get
 * buffers from a small pool; a buffer's size is the largest activation it ever holds.
 * As in the CPU backend, a batch runs image by image through primitives made for one
 * image: at distillation's 512 x 512 one image keeps every core busy, and the workspace
 * stays that of one image (WRN-101-2: tens of MB instead of a GB at batch 16).
 * A graph's activations (ReLU6, hard-swish, hard-sigmoid) are eltwise post-ops too; its
 * squeeze-and-excite steps are a mean (oneDNN reduction over height and width) and a
 * multiply (oneDNN binary, the channels x 1 x 1 gate broadcast). */
#include "ead-backbone.h"
#include "ead-backend-cpu-private.h"

#include <math.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdlib.h>
#include <string.h>

#include <json-glib/json-glib.h>

#include "ead-error.h"
#include "ead-safetensors.h"

#define BATCH_NORM_EPS 1e-5
#define MAX_CHANNELS 65536
#define MAX_BLOCKS_PER_LEVEL 1000

/* ---- the state_dict ---- */

typedef struct {
  const EadTorchCheckpoint *checkpoint;
  GHashTable *used;  /* keys accounted for (borrowed from the checkpoint) */
} Reader;

static gboolean
check_shape (const Reader *reader,
             const EadTorchTensor *tensor,
             int n_dims,
             const gint64 *shape,
             GError **error)
{
  gboolean same = tensor->n_dims == n_dims;

  for (int d = 0; same && d < n_dims; d++)
    same = tensor->shape[d] == shape[d];
  if (!same)
    {
      g_autofree char *got = ead_torch_shape_string (tensor->n_dims, tensor->shape);
      g_autofree char *want = ead_torch_shape_string (n_dims, shape);

      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT, "%s: '%s' has shape %s, expected %s",
                   reader->checkpoint->path, tensor->name, got, want);
    }
  return same;
}

static const EadTorchTensor *
lookup (const Reader *reader, const char *key, GError **error)
{
  const EadTorchTensor *tensor = ead_torch_checkpoint_lookup (reader->checkpoint, key);

  if (tensor == NULL)
    g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT, "%s: the key '%s' is missing",
                 reader->checkpoint->path, key);
  return tensor;
}

/* The tensor under key, which must have this shape; it is then accounted for. */
static const EadTorchTensor *
take (Reader *reader, const char *key, int n_dims, const gint64 *shape, GError **error)
{
  const EadTorchTensor *tensor = lookup (reader, key, error);

  if (tensor == NULL || !check_shape (reader, tensor, n_dims, shape, error))
    return NULL;
  g_hash_table_add (reader->used, tensor->name);
  return tensor;
}

/* Dimension dim of the n_dims-D tensor under key, as a channel count. */
static gboolean
probe_channels (const Reader *reader, const char *key, int n_dims, int dim, int *channels,
                GError **error)
{
  const EadTorchTensor *tensor = lookup (reader, key, error);

  if (tensor == NULL)
    return FALSE;
  if (tensor->n_dims != n_dims || tensor->shape[dim] < 1 || tensor->shape[dim] > MAX_CHANNELS)
    {
      g_autofree char *got = ead_torch_shape_string (tensor->n_dims, tensor->shape);

      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: '%s' has shape %s, expected a %d-D convolution weight with at most %d "
                   "channels", reader->checkpoint->path, key, got, n_dims, MAX_CHANNELS);
      return FALSE;
    }
  *channels = (int) tensor->shape[dim];
  return TRUE;
}

/* conv->weight and bias from the weight under conv->name and the batch norm under
 * bn_prefix, in double: w' = w * s, b' = beta - mean * s, s = gamma / sqrt(var + eps). */
static gboolean
read_conv (Reader *reader, EadBackboneConv *conv, const char *bn_prefix, GError **error)
{
  const int in_per_group = conv->in_channels / conv->groups;
  const size_t per_output = (size_t) in_per_group * conv->kernel * conv->kernel;
  const gint64 weight_shape[] = { conv->out_channels, in_per_group, conv->kernel,
                                  conv->kernel };
  const gint64 channels_shape[] = { conv->out_channels };
  static const char *const bn_names[] = { "weight", "bias", "running_mean", "running_var" };
  const EadTorchTensor *bn[G_N_ELEMENTS (bn_names)];
  const EadTorchTensor *weight, *counter;
  const char *path = reader->checkpoint->path;
  g_autofree char *weight_key = g_strconcat (conv->name, ".weight", NULL);
  g_autofree char *counter_key = g_strconcat (bn_prefix, ".num_batches_tracked", NULL);

  weight = take (reader, weight_key, 4, weight_shape, error);
  if (weight == NULL)
    return FALSE;
  for (size_t i = 0; i < G_N_ELEMENTS (bn_names); i++)
    {
      g_autofree char *key = g_strconcat (bn_prefix, ".", bn_names[i], NULL);

      bn[i] = take (reader, key, 1, channels_shape, error);
      if (bn[i] == NULL)
        return FALSE;
    }
  /* a counter for training; a scalar when present (older files have none) */
  counter = ead_torch_checkpoint_lookup (reader->checkpoint, counter_key);
  if (counter != NULL)
    {
      if (!check_shape (reader, counter, 0, NULL, error))
        return FALSE;
      g_hash_table_add (reader->used, counter->name);
    }

  conv->weight = g_new (float, conv->out_channels * per_output);
  conv->bias = g_new (float, conv->out_channels);
  for (int o = 0; o < conv->out_channels; o++)
    {
      const double gamma = bn[0]->data[o], beta = bn[1]->data[o];
      const double mean = bn[2]->data[o], variance = bn[3]->data[o];
      const float *w = weight->data + o * per_output;
      float *folded = conv->weight + o * per_output;
      double scale;
      gboolean finite;

      if (!(variance >= 0.0))
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                       "%s: '%s.running_var' holds %g at index %d: a variance must be >= 0",
                       path, bn_prefix, variance, o);
          return FALSE;
        }
      scale = gamma / sqrt (variance + BATCH_NORM_EPS);
      conv->bias[o] = (float) (beta - mean * scale);
      finite = isfinite (conv->bias[o]);
      for (size_t i = 0; i < per_output; i++)
        {
          folded[i] = (float) (w[i] * scale);
          finite = finite && isfinite (folded[i]);
        }
      if (!finite)
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                       "%s: folding '%s' into '%s' gives a value that is not finite at output "
                       "channel %d", path, bn_prefix, weight_key, o);
          return FALSE;
        }
    }
  return TRUE;
}

/* 1 + the largest block index n of the keys "layer<level>.<n>.*" (0 when none). */
static int
count_blocks (const EadTorchCheckpoint *checkpoint, int level)
{
  g_autofree char *prefix = g_strdup_printf ("layer%d.", level);
  const size_t prefix_length = strlen (prefix);
  int count = 0;

  for (guint i = 0; i < checkpoint->tensors->len; i++)
    {
      const char *name = ((const EadTorchTensor *) checkpoint->tensors->pdata[i])->name;
      const char *dot;
      g_autofree char *digits = NULL;
      guint64 index;

      if (!g_str_has_prefix (name, prefix)
          || (dot = strchr (name + prefix_length, '.')) == NULL)
        continue;
      digits = g_strndup (name + prefix_length, dot - name - prefix_length);
      /* anything else is reported as an unexpected key */
      if (g_ascii_string_to_unsigned (digits, 10, 0, MAX_BLOCKS_PER_LEVEL - 1, &index, NULL))
        count = MAX (count, (int) index + 1);
    }
  return count;
}

/* What the first block of each level says about the network. */
typedef struct {
  EadBackboneBlockKind kind;
  int stem;
  int blocks[EAD_BACKBONE_LEVELS];
  int widths[EAD_BACKBONE_LEVELS];   /* the branch's inner channels */
  int outputs[EAD_BACKBONE_LEVELS];
  int groups[EAD_BACKBONE_LEVELS];   /* of the 3x3 convolution (ResNeXt) */
} Structure;

static gboolean
read_structure (Reader *reader, Structure *s, GError **error)
{
  const EadTorchCheckpoint *checkpoint = reader->checkpoint;

  if (ead_torch_checkpoint_lookup (checkpoint, "conv1.weight") == NULL
      || ead_torch_checkpoint_lookup (checkpoint, "layer1.0.conv1.weight") == NULL)
    {
      g_autoptr (GString) first = g_string_new (NULL);

      for (guint i = 0; i < MIN (checkpoint->tensors->len, 3); i++)
        g_string_append_printf (first, "%s'%s'", i > 0 ? ", " : "",
                                ((const EadTorchTensor *) checkpoint->tensors->pdata[i])->name);
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: not the state_dict of a torchvision ResNet: there is no 'conv1.weight' "
                   "and 'layer1.0.conv1.weight' (its keys begin with %s)", checkpoint->path,
                   first->len > 0 ? first->str : "nothing");
      return FALSE;
    }
  s->kind = ead_torch_checkpoint_lookup (checkpoint, "layer1.0.conv3.weight") != NULL
              ? EAD_BACKBONE_BOTTLENECK
              : EAD_BACKBONE_BASIC;
  if (!probe_channels (reader, "conv1.weight", 4, 0, &s->stem, error))
    return FALSE;
  for (int level = 1; level <= EAD_BACKBONE_LEVELS; level++)
    {
      const int l = level - 1;
      g_autofree char *first = g_strdup_printf ("layer%d.0.conv1.weight", level);
      g_autofree char *middle = g_strdup_printf ("layer%d.0.conv2.weight", level);
      g_autofree char *last = g_strdup_printf ("layer%d.0.conv%d.weight", level,
                                               s->kind == EAD_BACKBONE_BASIC ? 2 : 3);
      int per_group = 0;

      s->blocks[l] = count_blocks (checkpoint, level);
      s->groups[l] = 1;
      if (!probe_channels (reader, first, 4, 0, &s->widths[l], error)
          || !probe_channels (reader, last, 4, 0, &s->outputs[l], error))
        return FALSE;
      if (s->kind == EAD_BACKBONE_BOTTLENECK)
        {
          if (!probe_channels (reader, middle, 4, 1, &per_group, error))
            return FALSE;
          if (s->widths[l] % per_group != 0)
            {
              g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                           "%s: '%s' has %d input channels, which does not divide the %d "
                           "channels of the block", checkpoint->path, middle, per_group,
                           s->widths[l]);
              return FALSE;
            }
          s->groups[l] = s->widths[l] / per_group;
        }
    }
  return TRUE;
}

static const struct {
  EadBackboneBlockKind kind;
  int depth;
  int blocks[EAD_BACKBONE_LEVELS];
} torchvision_depths[] = {
  { EAD_BACKBONE_BASIC, 18, { 2, 2, 2, 2 } },
  { EAD_BACKBONE_BASIC, 34, { 3, 4, 6, 3 } },
  { EAD_BACKBONE_BOTTLENECK, 50, { 3, 4, 6, 3 } },
  { EAD_BACKBONE_BOTTLENECK, 101, { 3, 4, 23, 3 } },
  { EAD_BACKBONE_BOTTLENECK, 152, { 3, 8, 36, 3 } },
};

/* torchvision's constructor name, or a description. */
static char *
arch_name (const Structure *s, int depth)
{
  const int expansion = s->kind == EAD_BACKBONE_BASIC ? 1 : 4;
  const int groups = s->groups[0];
  const int base_width = s->widths[0] / groups;  /* torchvision's width_per_group */
  gboolean standard = s->stem == 64;
  GString *text;

  for (int l = 0; l < EAD_BACKBONE_LEVELS; l++)
    standard = standard && s->groups[l] == groups && s->widths[l] == s->widths[0] << l
               && s->outputs[l] == 64 * expansion << l;
  if (s->kind == EAD_BACKBONE_BASIC)
    standard = standard && base_width == 64;
  for (size_t i = 0; standard && i < G_N_ELEMENTS (torchvision_depths); i++)
    if (torchvision_depths[i].kind == s->kind && torchvision_depths[i].depth == depth
        && memcmp (torchvision_depths[i].blocks, s->blocks, sizeof s->blocks) == 0)
      {
        if (groups > 1)
          return g_strdup_printf ("resnext%d_%dx%dd", depth, groups, base_width);
        if (base_width == 64)
          return g_strdup_printf ("resnet%d", depth);
        if (base_width == 128)
          return g_strdup_printf ("wide_resnet%d_2", depth);
      }

  text = g_string_new (NULL);
  g_string_append_printf (text, "resnet (%s, blocks %d-%d-%d-%d, widths %d-%d-%d-%d",
                          s->kind == EAD_BACKBONE_BASIC ? "BasicBlock" : "Bottleneck",
                          s->blocks[0], s->blocks[1], s->blocks[2], s->blocks[3], s->widths[0],
                          s->widths[1], s->widths[2], s->widths[3]);
  if (s->kind == EAD_BACKBONE_BOTTLENECK)
    g_string_append_printf (text, ", outputs %d-%d-%d-%d", s->outputs[0], s->outputs[1],
                            s->outputs[2], s->outputs[3]);
  if (groups > 1)
    g_string_append_printf (text, ", groups %d", groups);
  g_string_append_printf (text, ", stem %d)", s->stem);
  return g_string_free (text, FALSE);
}

typedef struct {
  int in, out, groups, kernel, stride;
} ConvSpec;

/* The next convolution, padded as torchvision's (kernel / 2), to be read under name. */
static EadBackboneConv *
add_conv (EadBackbone *backbone, char *name, ConvSpec spec)
{
  EadBackboneConv *conv = &backbone->convs[backbone->n_convs++];

  *conv = (EadBackboneConv) { name, spec.in, spec.out, spec.groups, spec.kernel, spec.stride,
                              spec.kernel / 2, NULL, NULL };
  return conv;
}

/* The convolutions of block `index` of layer<level>, whose input has `in` channels. */
static gboolean
read_block (Reader *reader, EadBackbone *backbone, const Structure *s, int level, int index,
            int in, GError **error)
{
  const int l = level - 1;
  const int stride = index == 0 && level > 1 ? 2 : 1;
  const int width = s->widths[l], out = s->outputs[l];
  EadBackboneBlock *block = &backbone->blocks[backbone->n_blocks++];
  g_autofree char *prefix = g_strdup_printf ("layer%d.%d", level, index);
  g_autofree char *shortcut_key = g_strconcat (prefix, ".downsample.0.weight", NULL);
  const ConvSpec basic[] = {
    { in, width, 1, 3, stride },
    { width, out, 1, 3, 1 },
  };
  const ConvSpec bottleneck[] = {
    { in, width, 1, 1, 1 },
    { width, width, s->groups[l], 3, stride },
    { width, out, 1, 1, 1 },
  };
  const ConvSpec *convs = s->kind == EAD_BACKBONE_BASIC ? basic : bottleneck;
  const int n_convs = s->kind == EAD_BACKBONE_BASIC ? 2 : 3;

  block->level = level;
  block->first_conv = backbone->n_convs;
  block->downsample = -1;
  for (int i = 0; i < n_convs; i++)
    {
      EadBackboneConv *conv = add_conv (backbone, g_strdup_printf ("%s.conv%d", prefix, i + 1),
                                        convs[i]);
      g_autofree char *bn = g_strdup_printf ("%s.bn%d", prefix, i + 1);

      if (!read_conv (reader, conv, bn, error))
        return FALSE;
    }

  if (ead_torch_checkpoint_lookup (reader->checkpoint, shortcut_key) != NULL)
    {
      EadBackboneConv *conv = add_conv (backbone, g_strconcat (prefix, ".downsample.0", NULL),
                                        (ConvSpec) { in, out, 1, 1, stride });
      g_autofree char *bn = g_strconcat (prefix, ".downsample.1", NULL);

      block->downsample = backbone->n_convs - 1;
      return read_conv (reader, conv, bn, error);
    }
  if (stride != 1 || in != out)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: the key '%s' is missing: block %s maps %d channels to %d with stride "
                   "%d, so its shortcut needs a downsampling convolution",
                   reader->checkpoint->path, shortcut_key, prefix, in, out, stride);
      return FALSE;
    }
  return TRUE;
}

/* The classifier may stay: fc.weight [classes, channels of layer4], fc.bias [classes]. */
static gboolean
is_classifier (const EadBackbone *backbone, const EadTorchCheckpoint *checkpoint,
               const EadTorchTensor *tensor)
{
  const EadTorchTensor *fc = ead_torch_checkpoint_lookup (checkpoint, "fc.weight");

  if (fc == NULL || fc->n_dims != 2 || fc->shape[1] != backbone->level_channels[3])
    return FALSE;
  return tensor == fc
         || (g_str_equal (tensor->name, "fc.bias") && tensor->n_dims == 1
             && tensor->shape[0] == fc->shape[0]);
}

EadBackbone *
ead_backbone_new_from_checkpoint (const EadTorchCheckpoint *checkpoint, GError **error)
{
  g_autoptr (EadBackbone) backbone = g_new0 (EadBackbone, 1);
  g_autoptr (GHashTable) used = g_hash_table_new (g_str_hash, g_str_equal);
  Reader reader = { checkpoint, used };
  Structure s = { 0 };
  EadBackboneConv *stem;
  int total_blocks = 0, in;

  backbone->path = g_strdup (checkpoint->path);
  backbone->family = EAD_BACKBONE_TORCHVISION;
  for (int l = 0; l < EAD_BACKBONE_LEVELS; l++)
    {
      backbone->level_nodes[l] = -1;
      backbone->level_names[l] = g_strdup_printf ("layer%d", l + 1);
    }
  if (!read_structure (&reader, &s, error))
    return NULL;
  for (int l = 0; l < EAD_BACKBONE_LEVELS; l++)
    total_blocks += s.blocks[l];
  backbone->block_kind = s.kind;
  backbone->depth = (s.kind == EAD_BACKBONE_BASIC ? 2 : 3) * total_blocks + 2;
  backbone->arch = arch_name (&s, backbone->depth);
  /* torchvision's ImageNet weights take ImageNet-normalised inputs */
  memcpy (backbone->input_mean, (float[3]) { 0.485f, 0.456f, 0.406f }, sizeof backbone->input_mean);
  memcpy (backbone->input_std, (float[3]) { 0.229f, 0.224f, 0.225f }, sizeof backbone->input_std);
  memcpy (backbone->level_blocks, s.blocks, sizeof s.blocks);
  memcpy (backbone->level_channels, s.outputs, sizeof s.outputs);
  /* the stem, and at most 3 convolutions and a shortcut per block */
  backbone->convs = g_new0 (EadBackboneConv, 1 + 4 * total_blocks);
  backbone->blocks = g_new0 (EadBackboneBlock, total_blocks);

  stem = add_conv (backbone, g_strdup ("conv1"), (ConvSpec) { 3, s.stem, 1, 7, 2 });
  if (!read_conv (&reader, stem, "bn1", error))
    return NULL;
  in = s.stem;
  for (int level = 1; level <= EAD_BACKBONE_LEVELS; level++)
    for (int index = 0; index < s.blocks[level - 1]; index++)
      {
        if (!read_block (&reader, backbone, &s, level, index, in, error))
          return NULL;
        in = s.outputs[level - 1];
      }

  for (guint i = 0; i < checkpoint->tensors->len; i++)
    {
      const EadTorchTensor *tensor = checkpoint->tensors->pdata[i];

      if (!g_hash_table_contains (used, tensor->name)
          && !is_classifier (backbone, checkpoint, tensor))
        {
          g_autofree char *shape = ead_torch_shape_string (tensor->n_dims, tensor->shape);

          g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                       "%s: unexpected key '%s' (shape %s) in the state_dict of a %s",
                       checkpoint->path, tensor->name, shape, backbone->arch);
          return NULL;
        }
    }
  return g_steal_pointer (&backbone);
}

EadBackbone *
ead_backbone_load_torchvision (const char *path, GError **error)
{
  g_autoptr (EadTorchCheckpoint) checkpoint = ead_torch_checkpoint_read (path, error);

  if (checkpoint == NULL)
    return NULL;
  return ead_backbone_new_from_checkpoint (checkpoint, error);
}

void
ead_backbone_free (EadBackbone *backbone)
{
  if (backbone == NULL)
    return;
  for (int i = 0; i < backbone->n_convs; i++)
    {
      g_free (backbone->convs[i].name);
      g_free (backbone->convs[i].weight);
      g_free (backbone->convs[i].bias);
    }
  g_free (backbone->convs);
  g_free (backbone->blocks);
  g_free (backbone->nodes);
  for (int l = 0; l < EAD_BACKBONE_LEVELS; l++)
    g_free (backbone->level_names[l]);
  g_free (backbone->arch);
  g_free (backbone->path);
  g_free (backbone);
}

guint
ead_backbone_parse_levels (const char *text, GError **error)
{
  g_auto (GStrv) names = g_strsplit (text, ",", -1);
  guint levels = 0;

  for (int i = 0; names[i] != NULL; i++)
    {
      const char *name = g_strstrip (names[i]);
      guint64 level = 0;

      /* "layer" and "level" have the same length */
      if (!(g_str_has_prefix (name, "layer") || g_str_has_prefix (name, "level"))
          || !g_ascii_string_to_unsigned (name + strlen ("layer"), 10, 1, EAD_BACKBONE_LEVELS,
                                          &level, NULL))
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                       "'%s' in '%s' is not a backbone level: use layer1 ... layer%d (or "
                       "level1 ... level%d)", name, text, EAD_BACKBONE_LEVELS,
                       EAD_BACKBONE_LEVELS);
          return 0;
        }
      if (levels & 1u << (level - 1))
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID, "'%s' is repeated in '%s'", name,
                       text);
          return 0;
        }
      levels |= 1u << (level - 1);
    }
  if (levels == 0)
    g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                 "no backbone level given: use e.g. layer2,layer3");
  return levels;
}

/* ---- graph backbones (safetensors) ---- */

#define GRAPH_KEY "ead.backbone.graph"
#define MAX_KERNEL 64

typedef struct {
  const char *path;
  JsonObject *node;
  const char *name;
  int index;
} NodeReader;

static gboolean
graph_error (GError **error, const NodeReader *r, const char *format, ...) G_GNUC_PRINTF (3, 4);

static gboolean
graph_error (GError **error, const NodeReader *r, const char *format, ...)
{
  g_autofree char *message = NULL;
  va_list args;

  va_start (args, format);
  message = g_strdup_vprintf (format, args);
  va_end (args);
  g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT, "%s: %s: node %d ('%s'): %s", r->path,
               GRAPH_KEY, r->index, r->name != NULL ? r->name : "?", message);
  return FALSE;
}

static gboolean
node_int (const NodeReader *r, const char *member, int min, int max, int *value,
          GError **error)
{
  JsonNode *node = json_object_get_member (r->node, member);
  gint64 v;

  if (node == NULL || !JSON_NODE_HOLDS_VALUE (node)
      || json_node_get_value_type (node) != G_TYPE_INT64)
    return graph_error (error, r, "'%s' must be an integer", member);
  v = json_node_get_int (node);
  if (v < min || v > max)
    return graph_error (error, r, "'%s' is %" G_GINT64_FORMAT ", expected %d to %d", member,
                        v, min, max);
  *value = (int) v;
  return TRUE;
}

static const char *
node_string (const NodeReader *r, const char *member)
{
  JsonNode *node = json_object_get_member (r->node, member);

  if (node == NULL || !JSON_NODE_HOLDS_VALUE (node)
      || json_node_get_value_type (node) != G_TYPE_STRING)
    return NULL;
  return json_node_get_string (node);
}

/* The graph's "input": {"mean": [m, m, m], "std": [s, s, s]}, the normalisation of
 * RGB / 255 the network expects; without them 0 and 1 (plain RGB / 255). */
static gboolean
read_input_normalisation (JsonObject *graph, const char *path, EadBackbone *backbone,
                          GError **error)
{
  JsonObject *input = json_object_has_member (graph, "input")
                      && JSON_NODE_HOLDS_OBJECT (json_object_get_member (graph, "input"))
                        ? json_object_get_object_member (graph, "input") : NULL;

  for (int c = 0; c < 3; c++)
    {
      backbone->input_mean[c] = 0.0f;
      backbone->input_std[c] = 1.0f;
    }
  for (int k = 0; input != NULL && k < 2; k++)
    {
      const char *key = k == 0 ? "mean" : "std";
      float *out = k == 0 ? backbone->input_mean : backbone->input_std;
      JsonNode *member = json_object_get_member (input, key);
      JsonArray *values;

      if (member == NULL)
        continue;
      values = JSON_NODE_HOLDS_ARRAY (member) ? json_node_get_array (member) : NULL;
      if (values == NULL || json_array_get_length (values) != 3)
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                       "%s: %s: input %s must be an array of 3 numbers", path, GRAPH_KEY, key);
          return FALSE;
        }
      for (int c = 0; c < 3; c++)
        {
          out[c] = (float) json_array_get_double_element (values, c);
          if (!isfinite (out[c]) || (k == 1 && out[c] <= 0.0f))
            {
              g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                           "%s: %s: input %s[%d] is not usable", path, GRAPH_KEY, key, c);
              return FALSE;
            }
        }
    }
  return TRUE;
}

/* An earlier node by name ("input": -1). */
static gboolean
node_ref (const NodeReader *r, GHashTable *names, const char *member, gboolean optional,
          int *index, GError **error)
{
  const char *name = node_string (r, member);
  gpointer found;

  if (name == NULL && optional && !json_object_has_member (r->node, member))
    {
      *index = -1;
      return TRUE;
    }
  if (name == NULL)
    return graph_error (error, r, "'%s' must be a node name", member);
  if (!optional && g_str_equal (name, "input"))
    {
      *index = -1;
      return TRUE;
    }
  if (!g_hash_table_lookup_extended (names, name, NULL, &found))
    return graph_error (error, r, "'%s' names '%s', which is not an earlier node", member,
                        name);
  *index = GPOINTER_TO_INT (found);
  return TRUE;
}

static gboolean
read_padding (const NodeReader *r, EadBackboneNode *node, GError **error)
{
  JsonNode *padding = json_object_get_member (r->node, "padding");
  const char *mode = node_string (r, "padding");

  if (mode != NULL && (g_str_equal (mode, "same") || g_str_equal (mode, "valid")))
    {
      node->same = g_str_equal (mode, "same");
      return TRUE;
    }
  if (padding != NULL && JSON_NODE_HOLDS_ARRAY (padding)
      && json_array_get_length (json_node_get_array (padding)) == 4)
    {
      JsonArray *pads = json_node_get_array (padding);

      for (int i = 0; i < 4; i++)
        {
          JsonNode *pad = json_array_get_element (pads, i);

          if (!JSON_NODE_HOLDS_VALUE (pad) || json_node_get_value_type (pad) != G_TYPE_INT64
              || json_node_get_int (pad) < 0 || json_node_get_int (pad) > MAX_KERNEL)
            break;
          node->pads[i] = (int) json_node_get_int (pad);
          if (i == 3)
            return TRUE;
        }
    }
  return graph_error (error, r, "'padding' must be \"same\", \"valid\" or [top, bottom, left, "
                      "right] with each in 0..%d", MAX_KERNEL);
}

/* conv's weight and bias from <name>.weight and <name>.bias. */
static gboolean
read_graph_weights (EadSafetensors *file, GHashTable *used, const NodeReader *r,
                    EadBackboneConv *conv, GError **error)
{
  const gint64 weight_shape[] = { conv->out_channels, conv->in_channels / conv->groups,
                                  conv->kernel, conv->kernel };
  const gint64 bias_shape[] = { conv->out_channels };
  const size_t n_weights = (size_t) weight_shape[0] * weight_shape[1] * weight_shape[2]
                           * weight_shape[3];
  g_autofree char *weight_key = g_strconcat (conv->name, ".weight", NULL);
  g_autofree char *bias_key = g_strconcat (conv->name, ".bias", NULL);

  conv->weight = g_new (float, n_weights);
  conv->bias = g_new (float, conv->out_channels);
  if (!ead_safetensors_read (file, weight_key, 4, weight_shape, conv->weight, error)
      || !ead_safetensors_read (file, bias_key, 1, bias_shape, conv->bias, error))
    return FALSE;
  for (size_t i = 0; i < n_weights; i++)
    if (!isfinite (conv->weight[i]))
      return graph_error (error, r, "'%s' holds %g at index %zu", weight_key, conv->weight[i],
                          i);
  for (int i = 0; i < conv->out_channels; i++)
    if (!isfinite (conv->bias[i]))
      return graph_error (error, r, "'%s' holds %g at index %d", bias_key, conv->bias[i], i);
  g_hash_table_add (used, g_steal_pointer (&weight_key));
  g_hash_table_add (used, g_steal_pointer (&bias_key));
  return TRUE;
}

/* A conv node's "activation" and "hard_scale". */
static gboolean
read_activation (const NodeReader *r, EadBackboneNode *node, GError **error)
{
  static const char *const names[] = { "none", "relu", "relu6", "hard_swish",
                                       "hard_sigmoid" };
  const char *activation = node_string (r, "activation");
  JsonNode *scale = json_object_get_member (r->node, "hard_scale");
  gboolean hard;
  double value;

  node->activation = EAD_BACKBONE_ACTIVATION_NONE;
  if (activation == NULL && json_object_has_member (r->node, "activation"))
    return graph_error (error, r, "'activation' must be a string");
  for (int i = 0; activation != NULL && i < (int) G_N_ELEMENTS (names); i++)
    if (g_str_equal (activation, names[i]))
      {
        node->activation = (EadBackboneActivation) i;
        activation = NULL;
      }
  if (activation != NULL)
    return graph_error (error, r, "'activation' is '%s', expected none, relu, relu6, "
                        "hard_swish or hard_sigmoid", activation);
  hard = node->activation == EAD_BACKBONE_ACTIVATION_HARD_SWISH
         || node->activation == EAD_BACKBONE_ACTIVATION_HARD_SIGMOID;
  node->hard_scale = 1.0f / 6.0f;
  if (scale == NULL)
    return TRUE;
  if (!hard)
    return graph_error (error, r, "'hard_scale' belongs to hard_swish or hard_sigmoid, not "
                        "to activation %s", names[node->activation]);
  if (!JSON_NODE_HOLDS_VALUE (scale)
      || (json_node_get_value_type (scale) != G_TYPE_DOUBLE
          && json_node_get_value_type (scale) != G_TYPE_INT64))
    return graph_error (error, r, "'hard_scale' must be a number");
  value = json_node_get_double (scale);
  if (!(value > 0.0 && value <= 1.0))
    return graph_error (error, r, "'hard_scale' is %g, expected a number in (0, 1]", value);
  node->hard_scale = (float) value;
  return TRUE;
}

static int
node_channels (const EadBackbone *backbone, int node)
{
  return node < 0 ? 3 : backbone->convs[node].out_channels;
}

/* A mean or mul node: its conv holds the name and channels only. */
static gboolean
read_graph_elementwise (EadBackbone *backbone, GHashTable *names, NodeReader *r,
                        EadBackboneConv *conv, EadBackboneNode *node, GError **error)
{
  int channels;

  if (json_object_has_member (r->node, "residual"))
    return graph_error (error, r, "only a conv node takes a 'residual'");
  if (!node_ref (r, names, "input", FALSE, &node->input, error)
      || (node->op == EAD_BACKBONE_OP_MUL
          && !node_ref (r, names, "scale", TRUE, &node->scale, error))
      || !node_int (r, "channels", 1, MAX_CHANNELS, &channels, error))
    return FALSE;
  if (node->op == EAD_BACKBONE_OP_MUL && node->scale < 0)
    return graph_error (error, r, "'scale' must name an earlier node");
  if (channels != node_channels (backbone, node->input))
    return graph_error (error, r, "'channels' is %d but its input has %d channels", channels,
                        node_channels (backbone, node->input));
  if (node->scale >= 0 && node_channels (backbone, node->scale) != channels)
    return graph_error (error, r, "its scale has %d channels, its input %d",
                        node_channels (backbone, node->scale), channels);
  conv->in_channels = conv->out_channels = channels;
  conv->groups = 1;
  return TRUE;
}

static gboolean
read_graph_node (EadSafetensors *file, GHashTable *used, GHashTable *names,
                 EadBackbone *backbone, NodeReader *r, GError **error)
{
  EadBackboneConv *conv = &backbone->convs[r->index];
  EadBackboneNode *node = &backbone->nodes[r->index];
  const char *op = node_string (r, "op");
  int in_channels;

  r->name = node_string (r, "name");
  if (r->name == NULL || g_str_equal (r->name, "input") || g_hash_table_contains (names, r->name))
    return graph_error (error, r, "'name' must be a new node name other than \"input\"");
  conv->name = g_strdup (r->name);
  backbone->n_nodes = backbone->n_convs = r->index + 1;
  node->conv = r->index;
  node->residual = node->scale = -1;
  node->hard_scale = 1.0f / 6.0f;
  if (op != NULL && (g_str_equal (op, "mean") || g_str_equal (op, "mul")))
    {
      node->op = g_str_equal (op, "mean") ? EAD_BACKBONE_OP_MEAN : EAD_BACKBONE_OP_MUL;
      if (!read_graph_elementwise (backbone, names, r, conv, node, error))
        return FALSE;
      g_hash_table_insert (names, (gpointer) r->name, GINT_TO_POINTER (r->index));
      return TRUE;
    }
  if (op == NULL || !g_str_equal (op, "conv"))
    return graph_error (error, r, "'op' is '%s', expected conv, mean or mul",
                        op ? op : "(none)");
  node->op = EAD_BACKBONE_OP_CONV;
  if (!node_ref (r, names, "input", FALSE, &node->input, error)
      || !node_ref (r, names, "residual", TRUE, &node->residual, error)
      || !node_int (r, "in_channels", 1, MAX_CHANNELS, &conv->in_channels, error)
      || !node_int (r, "out_channels", 1, MAX_CHANNELS, &conv->out_channels, error)
      || !node_int (r, "groups", 1, MAX_CHANNELS, &conv->groups, error)
      || !node_int (r, "kernel", 1, MAX_KERNEL, &conv->kernel, error)
      || !node_int (r, "stride", 1, MAX_KERNEL, &conv->stride, error)
      || !read_padding (r, node, error)
      || !read_activation (r, node, error))
    return FALSE;
  in_channels = node_channels (backbone, node->input);
  if (conv->in_channels != in_channels)
    return graph_error (error, r, "'in_channels' is %d but its input has %d channels",
                        conv->in_channels, in_channels);
  if (conv->in_channels % conv->groups != 0 || conv->out_channels % conv->groups != 0)
    return graph_error (error, r, "%d groups do not divide %d -> %d channels", conv->groups,
                        conv->in_channels, conv->out_channels);
  if (node->residual >= 0
      && backbone->convs[node->residual].out_channels != conv->out_channels)
    return graph_error (error, r, "the residual has %d channels, the node %d",
                        backbone->convs[node->residual].out_channels, conv->out_channels);
  if (!read_graph_weights (file, used, r, conv, error))
    return FALSE;
  g_hash_table_insert (names, (gpointer) r->name, GINT_TO_POINTER (r->index));
  return TRUE;
}

/* "levels": {"level<n>": {"node": NAME}}: strictly increasing nodes. */
static gboolean
read_graph_levels (const char *path, JsonObject *graph, GHashTable *names,
                   EadBackbone *backbone, GError **error)
{
  JsonNode *levels = json_object_get_member (graph, "levels");
  int previous = -1;

  if (levels == NULL || !JSON_NODE_HOLDS_OBJECT (levels))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT, "%s: %s: 'levels' must be an object",
                   path, GRAPH_KEY);
      return FALSE;
    }
  for (int l = 0; l < EAD_BACKBONE_LEVELS; l++)
    {
      g_autofree char *key = g_strdup_printf ("level%d", l + 1);
      JsonNode *level = json_object_get_member (json_node_get_object (levels), key);
      JsonObject *object = level != NULL && JSON_NODE_HOLDS_OBJECT (level)
                             ? json_node_get_object (level) : NULL;
      const char *name = object != NULL ? json_object_get_string_member_with_default (
                                            object, "node", NULL) : NULL;
      gpointer found;

      backbone->level_nodes[l] = -1;
      if (level == NULL)
        continue;
      if (name == NULL || !g_hash_table_lookup_extended (names, name, NULL, &found)
          || GPOINTER_TO_INT (found) <= previous)
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                       "%s: %s: levels.%s must be {\"node\": NAME} naming a node after the "
                       "previous level's", path, GRAPH_KEY, key);
          return FALSE;
        }
      previous = backbone->level_nodes[l] = GPOINTER_TO_INT (found);
      backbone->level_names[l] = g_strdup (name);
      backbone->level_channels[l] = backbone->convs[previous].out_channels;
    }
  if (previous < 0)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT, "%s: %s: no level1 ... level%d", path,
                   GRAPH_KEY, EAD_BACKBONE_LEVELS);
      return FALSE;
    }
  return TRUE;
}

EadBackbone *
ead_backbone_load_graph (const char *path, GError **error)
{
  g_autoptr (EadSafetensors) file = ead_safetensors_open (path, error);
  g_autoptr (JsonParser) parser = json_parser_new ();
  g_autoptr (EadBackbone) backbone = NULL;
  g_autoptr (GHashTable) used = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  g_autoptr (GHashTable) names = g_hash_table_new (g_str_hash, g_str_equal);
  g_autoptr (GError) json_error = NULL;
  g_auto (GStrv) tensors = NULL;
  const char *text, *arch;
  JsonNode *root, *nodes;
  JsonArray *array;
  guint n;

  if (file == NULL)
    return NULL;
  text = ead_safetensors_lookup_metadata (file, GRAPH_KEY);
  if (text == NULL)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: no metadata '%s': not a graph backbone", path, GRAPH_KEY);
      return NULL;
    }
  if (!json_parser_load_from_data (parser, text, -1, &json_error))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT, "%s: %s is not JSON: %s", path,
                   GRAPH_KEY, json_error->message);
      return NULL;
    }
  root = json_parser_get_root (parser);
  nodes = JSON_NODE_HOLDS_OBJECT (root)
            ? json_object_get_member (json_node_get_object (root), "nodes") : NULL;
  if (nodes == NULL || !JSON_NODE_HOLDS_ARRAY (nodes)
      || json_object_get_int_member_with_default (json_node_get_object (root), "format", 0)
           != 1)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: %s must be an object with \"format\": 1 and a \"nodes\" array", path,
                   GRAPH_KEY);
      return NULL;
    }
  array = json_node_get_array (nodes);
  n = json_array_get_length (array);
  backbone = g_new0 (EadBackbone, 1);
  backbone->path = g_strdup (path);
  backbone->family = EAD_BACKBONE_GRAPH;
  arch = ead_safetensors_lookup_metadata (file, "ead.backbone.arch");
  backbone->arch = g_strdup_printf ("%s", arch != NULL ? arch : "graph");
  if (!read_input_normalisation (json_node_get_object (root), path, backbone, error))
    return NULL;
  backbone->convs = g_new0 (EadBackboneConv, MAX (n, 1));
  backbone->nodes = g_new0 (EadBackboneNode, MAX (n, 1));
  for (guint i = 0; i < n; i++)
    {
      JsonNode *element = json_array_get_element (array, i);
      NodeReader r = { path, NULL, NULL, (int) i };

      if (!JSON_NODE_HOLDS_OBJECT (element))
        {
          graph_error (error, &r, "not an object");
          return NULL;
        }
      r.node = json_node_get_object (element);
      if (!read_graph_node (file, used, names, backbone, &r, error))
        return NULL;
    }
  if (!read_graph_levels (path, json_node_get_object (root), names, backbone, error))
    return NULL;
  tensors = ead_safetensors_list (file);
  for (int i = 0; tensors[i] != NULL; i++)
    if (!g_hash_table_contains (used, tensors[i]) && !g_str_has_prefix (tensors[i], "head."))
      {
        g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                     "%s: tensor '%s' belongs to no node of %s", path, tensors[i], GRAPH_KEY);
        return NULL;
      }
  return g_steal_pointer (&backbone);
}

EadBackbone *
ead_backbone_load (const char *path, GError **error)
{
  if (g_str_has_suffix (path, ".safetensors"))
    return ead_backbone_load_graph (path, error);
  return ead_backbone_load_torchvision (path, error);
}

/* ---- the executable ---- */

/* Where a memory object's data lives. */
typedef enum {
  PLACE_INPUT,    /* the caller's input, bound at forward() */
  PLACE_OUTPUT,   /* the caller's output `index`, bound at forward() */
  PLACE_BUFFER,   /* activation buffer `index` of the workspace */
  PLACE_SCRATCH,  /* oneDNN's scratchpad, at the end of the workspace */
  PLACE_OWNED,    /* weights and biases, owned by the executable */
} Place;

typedef struct {
  dnnl_memory_t memory;
  Place place;
  int index;
} Binding;

typedef struct {
  size_t size;     /* the largest activation it holds */
  size_t offset;   /* in the workspace */
  gboolean busy;   /* while compiling: holds a live activation */
} Buffer;

typedef struct {
  dnnl_primitive_t primitive;
  int n_args;
  dnnl_exec_arg_t args[5];
  char *description;
} Step;

struct _EadBackboneExec {
  dnnl_engine_t engine;
  dnnl_stream_t stream;
  int threads;
  int images;         /* the batch; the primitives are made for one image */
  size_t in_count;    /* floats per image of the input */
  GArray *steps;      /* Step */
  GArray *bindings;   /* Binding */
  GArray *buffers;    /* Buffer */
  GPtrArray *owned;   /* weight and bias buffers */
  size_t scratch_size;
  size_t workspace_size;
  void *workspace;
  int n_outputs;
  int output_levels[EAD_BACKBONE_LEVELS];
  EadShape output_shapes[EAD_BACKBONE_LEVELS];
  size_t output_counts[EAD_BACKBONE_LEVELS];  /* floats per image */
};

/* An activation while compiling: its layout, memory and buffer (-1: the caller's input). */
typedef struct {
  dnnl_memory_desc_t md;
  dnnl_memory_t memory;
  int buffer;
} Activation;

#define check _ead_cpu_check
#define align_up _ead_cpu_align

static dnnl_memory_t
bind (EadBackboneExec *exec, const dnnl_memory_desc_t *md, Place place, int index,
      void *owned_data, GError **error)
{
  Binding binding = { NULL, place, index };

  if (!check (dnnl_memory_create (&binding.memory, md, exec->engine,
                                  place == PLACE_OWNED ? owned_data : DNNL_MEMORY_NONE),
              "memory", error))
    return NULL;
  g_array_append_val (exec->bindings, binding);
  return binding.memory;
}

static size_t
buffer_size (const EadBackboneExec *exec, int i)
{
  return g_array_index (exec->buffers, Buffer, i).size;
}

/* A free buffer for an activation of layout md: the smallest one large enough, else the
 * largest one (which grows), else a new one. */
static int
acquire_buffer (EadBackboneExec *exec, const dnnl_memory_desc_t *md)
{
  const size_t size = align_up (dnnl_memory_desc_get_size (md));
  int fitting = -1, largest = -1, chosen;
  Buffer *buffer;

  for (int i = 0; i < (int) exec->buffers->len; i++)
    {
      const size_t candidate = buffer_size (exec, i);

      if (g_array_index (exec->buffers, Buffer, i).busy)
        continue;
      if (candidate >= size && (fitting < 0 || candidate < buffer_size (exec, fitting)))
        fitting = i;
      if (largest < 0 || candidate > buffer_size (exec, largest))
        largest = i;
    }
  chosen = fitting >= 0 ? fitting : largest;
  if (chosen < 0)
    {
      const Buffer empty = { 0 };

      g_array_append_val (exec->buffers, empty);
      chosen = exec->buffers->len - 1;
    }
  buffer = &g_array_index (exec->buffers, Buffer, chosen);
  buffer->busy = TRUE;
  buffer->size = MAX (buffer->size, size);
  return chosen;
}

/* A new activation of layout md in a free buffer. */
static gboolean
new_activation (EadBackboneExec *exec, const dnnl_memory_desc_t *md, Activation *activation,
                GError **error)
{
  activation->md = *md;
  activation->buffer = acquire_buffer (exec, md);
  activation->memory = bind (exec, md, PLACE_BUFFER, activation->buffer, NULL, error);
  return activation->memory != NULL;
}

/* Its buffer may be reused by the steps after those compiled so far. */
static void
release (EadBackboneExec *exec, const Activation *activation)
{
  if (activation->buffer >= 0)
    g_array_index (exec->buffers, Buffer, activation->buffer).busy = FALSE;
}

static void
release_unless_kept (EadBackboneExec *exec,
                     const Activation *activation,
                     const Activation *kept)
{
  if (activation->buffer != kept->buffer)
    release (exec, activation);
}

static gboolean
add_step (EadBackboneExec *exec,
          const_dnnl_primitive_desc_t pd,
          const char *what,
          const dnnl_exec_arg_t *args,
          int n_args,
          GError **error)
{
  Step step = { NULL, n_args, { { 0 } }, NULL };
  const dnnl_memory_desc_t *scratch_md = dnnl_primitive_desc_query_md (
    pd, dnnl_query_scratchpad_md, 0);

  if (!check (dnnl_primitive_create (&step.primitive, pd), what, error))
    return FALSE;
  memcpy (step.args, args, n_args * sizeof *args);
  if (scratch_md != NULL && dnnl_memory_desc_get_size (scratch_md) > 0)
    {
      dnnl_memory_t scratch = bind (exec, scratch_md, PLACE_SCRATCH, 0, NULL, error);

      if (scratch == NULL)
        {
          dnnl_primitive_destroy (step.primitive);
          return FALSE;
        }
      exec->scratch_size = MAX (exec->scratch_size,
                                align_up (dnnl_memory_desc_get_size (scratch_md)));
      step.args[step.n_args++] = (dnnl_exec_arg_t) { DNNL_ARG_SCRATCHPAD, scratch };
    }
  step.description = _ead_cpu_describe (pd, what);
  g_array_append_val (exec->steps, step);
  return TRUE;
}

/* A copy of from in layout to_md, to a new activation (or, with place PLACE_OUTPUT, to
 * the caller's output `index`). */
static gboolean
add_reorder (EadBackboneExec *exec, const Activation *from, const dnnl_memory_desc_t *to_md,
             Place place, int index, const char *what, Activation *to, GError **error)
{
  dnnl_primitive_desc_t pd = NULL;
  gboolean ok;

  if (place == PLACE_OUTPUT)
    {
      to->md = *to_md;
      to->buffer = -1;
      to->memory = bind (exec, to_md, PLACE_OUTPUT, index, NULL, error);
      ok = to->memory != NULL;
    }
  else
    ok = new_activation (exec, to_md, to, error);
  ok = ok && check (dnnl_reorder_primitive_desc_create (&pd, &from->md, exec->engine, to_md,
                                                        exec->engine, NULL),
                    what, error);
  ok = ok && add_step (exec, pd, what,
                       (dnnl_exec_arg_t[]) { { DNNL_ARG_FROM, from->memory },
                                             { DNNL_ARG_TO, to->memory } },
                       2, error);
  if (pd != NULL)
    dnnl_primitive_desc_destroy (pd);
  return ok;
}

/* Copies data (layout user_md) into a new buffer of layout md, owned by exec, once. */
static dnnl_memory_t
owned_memory (EadBackboneExec *exec, const dnnl_memory_desc_t *user_md, const float *data,
              const dnnl_memory_desc_t *md, GError **error)
{
  const size_t size = align_up (dnnl_memory_desc_get_size (md));
  void *buffer = aligned_alloc (EAD_CPU_ALIGNMENT, size);
  dnnl_memory_t owned;

  if (buffer == NULL)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_LIMIT, "cannot allocate %zu bytes of weights",
                   size);
      return NULL;
    }
  g_ptr_array_add (exec->owned, buffer);
  owned = bind (exec, md, PLACE_OWNED, 0, buffer, error);
  return owned != NULL
             && _ead_cpu_reorder_once (exec->engine, exec->stream, user_md, data, owned, error)
           ? owned : NULL;
}

static const char *const activation_names[] = { "", " +relu", " +relu6", " +hard_swish",
                                                 " +hard_sigmoid" };

/* The activation as eltwise post-ops.  hard_swish: oneDNN's hardswish (x * relu6(x + 3) /
 * 6) times 6 * hard_scale; hard_sigmoid: clip to [-3, 3], then * hard_scale + 3 *
 * hard_scale (the chain x + 3, clip to [0, 6], * hard_scale gave wrong values in oneDNN
 * 2.6's brgconv_1x1). */
static void
append_activation (dnnl_post_ops_t post_ops, EadBackboneActivation activation,
                   float hard_scale)
{
  const float hard_swish_scale = (float) (6.0 * hard_scale);

  switch (activation)
    {
    case EAD_BACKBONE_ACTIVATION_NONE:
      break;
    case EAD_BACKBONE_ACTIVATION_RELU:
      dnnl_post_ops_append_eltwise (post_ops, 1.0f, dnnl_eltwise_relu, 0.0f, 0.0f);
      break;
    case EAD_BACKBONE_ACTIVATION_RELU6:
      dnnl_post_ops_append_eltwise (post_ops, 1.0f, dnnl_eltwise_clip, 0.0f, 6.0f);
      break;
    case EAD_BACKBONE_ACTIVATION_HARD_SWISH:
      dnnl_post_ops_append_eltwise (post_ops, 1.0f, dnnl_eltwise_hardswish, 0.0f, 0.0f);
      if (hard_swish_scale != 1.0f)
        dnnl_post_ops_append_eltwise (post_ops, 1.0f, dnnl_eltwise_linear, hard_swish_scale,
                                      0.0f);
      break;
    case EAD_BACKBONE_ACTIVATION_HARD_SIGMOID:
      dnnl_post_ops_append_eltwise (post_ops, 1.0f, dnnl_eltwise_clip, -3.0f, 3.0f);
      dnnl_post_ops_append_eltwise (post_ops, 1.0f, dnnl_eltwise_linear, hard_scale,
                                    3.0f * hard_scale);
      break;
    }
}

/* dst = conv(src) + bias, then, with a residual, dst += residual, then the activation.
 * pads: top, bottom, left, right.
 * With a residual the result is written over it (oneDNN's sum post-op adds what dst
 * holds), or over a copy of it when the convolution wants another layout; dst then
 * takes the residual's buffer, which the caller must not release. */
static gboolean
compile_conv (EadBackboneExec *exec,
              const EadBackboneConv *conv,
              const int pads[4],
              const Activation *src,
              const Activation *residual,
              EadBackboneActivation activation,
              float hard_scale,
              Activation *dst,
              GError **error)
{
  const dnnl_dim_t *in_dims = src->md.dims;
  const int g = conv->groups;
  dnnl_dims_t src_dims = { in_dims[0], conv->in_channels, in_dims[2], in_dims[3] };
  dnnl_dims_t dst_dims = { in_dims[0], conv->out_channels,
                           (in_dims[2] + pads[0] + pads[1] - conv->kernel) / conv->stride + 1,
                           (in_dims[3] + pads[2] + pads[3] - conv->kernel) / conv->stride + 1 };
  dnnl_dims_t w_dims = { g, conv->out_channels / g, conv->in_channels / g, conv->kernel,
                         conv->kernel };
  dnnl_dims_t b_dims = { conv->out_channels };
  dnnl_dims_t strides = { conv->stride, conv->stride };
  dnnl_dims_t padding_l = { pads[0], pads[2] }, padding_r = { pads[1], pads[3] };
  /* ungrouped weights are OIHW, grouped ones GOIHW with the same bytes */
  const int w_ndims = g > 1 ? 5 : 4;
  const dnnl_dim_t *w_dims_used = g > 1 ? w_dims : w_dims + 1;
  dnnl_memory_desc_t src_md, w_md, w_user_md, b_md, dst_md;
  dnnl_convolution_desc_t desc;
  dnnl_primitive_attr_t attr = _ead_cpu_attr_new (FALSE);
  dnnl_post_ops_t post_ops = NULL;
  dnnl_primitive_desc_t pd = NULL;
  const dnnl_memory_desc_t *want_src, *want_w, *want_dst;
  Activation converted = { .buffer = -1 };
  const Activation *input = src;
  dnnl_memory_t weights, bias;
  g_autofree char *what = g_strdup_printf ("%s %dx%d/%d %d->%d%s%s%s", conv->name,
                                           conv->kernel, conv->kernel, conv->stride,
                                           conv->in_channels, conv->out_channels,
                                           g > 1 ? " grouped" : "", residual ? " +sum" : "",
                                           activation_names[activation]);
  g_autofree char *reorder_what = NULL;
  gboolean ok;

  dnnl_post_ops_create (&post_ops);
  if (residual != NULL)
    dnnl_post_ops_append_sum (post_ops, 1.0f);
  append_activation (post_ops, activation, hard_scale);
  dnnl_primitive_attr_set_post_ops (attr, post_ops);
  dnnl_post_ops_destroy (post_ops);
  dnnl_memory_desc_init_by_tag (&src_md, 4, src_dims, dnnl_f32, dnnl_format_tag_any);
  dnnl_memory_desc_init_by_tag (&w_md, w_ndims, w_dims_used, dnnl_f32, dnnl_format_tag_any);
  dnnl_memory_desc_init_by_tag (&w_user_md, w_ndims, w_dims_used, dnnl_f32,
                                g > 1 ? dnnl_goihw : dnnl_oihw);
  dnnl_memory_desc_init_by_tag (&b_md, 1, b_dims, dnnl_f32, dnnl_x);
  dnnl_memory_desc_init_by_tag (&dst_md, 4, dst_dims, dnnl_f32, dnnl_format_tag_any);
  /* direct, not Winograd: its rounding would not stay within the parity tolerance over
   * a hundred layers */
  ok = check (dnnl_convolution_forward_desc_init (&desc, dnnl_forward_inference,
                                                  dnnl_convolution_direct, &src_md, &w_md,
                                                  &b_md, &dst_md, strides, padding_l,
                                                  padding_r),
              what, error)
       && check (dnnl_primitive_desc_create (&pd, &desc, attr, exec->engine, NULL), what,
                 error);
  dnnl_primitive_attr_destroy (attr);
  if (!ok)
    return FALSE;

  want_src = dnnl_primitive_desc_query_md (pd, dnnl_query_src_md, 0);
  want_w = dnnl_primitive_desc_query_md (pd, dnnl_query_weights_md, 0);
  want_dst = dnnl_primitive_desc_query_md (pd, dnnl_query_dst_md, 0);
  if (!dnnl_memory_desc_equal (want_src, &src->md))
    {
      reorder_what = g_strconcat (conv->name, " input reorder", NULL);
      ok = add_reorder (exec, src, want_src, PLACE_BUFFER, 0, reorder_what, &converted, error);
      input = &converted;
    }
  if (ok && residual != NULL)
    {
      if (dnnl_memory_desc_equal (want_dst, &residual->md))
        *dst = *residual;
      else
        {
          g_free (reorder_what);
          reorder_what = g_strconcat (conv->name, " shortcut reorder", NULL);
          ok = add_reorder (exec, residual, want_dst, PLACE_BUFFER, 0, reorder_what, dst,
                            error);
        }
    }
  else if (ok)
    ok = new_activation (exec, want_dst, dst, error);
  /* only now, so that dst never shares the converted input's buffer */
  release (exec, &converted);

  weights = ok ? owned_memory (exec, &w_user_md, conv->weight, want_w, error) : NULL;
  bias = weights != NULL ? owned_memory (exec, &b_md, conv->bias, &b_md, error) : NULL;
  ok = bias != NULL
       && add_step (exec, pd, what,
                    (dnnl_exec_arg_t[]) { { DNNL_ARG_SRC, input->memory },
                                          { DNNL_ARG_WEIGHTS, weights },
                                          { DNNL_ARG_BIAS, bias },
                                          { DNNL_ARG_DST, dst->memory } },
                    4, error);
  dnnl_primitive_desc_destroy (pd);
  return ok;
}

/* nn.MaxPool2d(3, 2, 1): the padding never wins, as in PyTorch. */
static gboolean
compile_maxpool (EadBackboneExec *exec, const Activation *src, Activation *dst, GError **error)
{
  const dnnl_dim_t *d = src->md.dims;
  dnnl_dims_t dst_dims = { d[0], d[1], (d[2] + 2 - 3) / 2 + 1, (d[3] + 2 - 3) / 2 + 1 };
  dnnl_dims_t strides = { 2, 2 }, kernel = { 3, 3 }, dilation = { 0, 0 }, padding = { 1, 1 };
  dnnl_memory_desc_t dst_md;
  dnnl_pooling_v2_desc_t desc;
  dnnl_primitive_attr_t attr = _ead_cpu_attr_new (FALSE);
  dnnl_primitive_desc_t pd = NULL;
  gboolean ok;

  dnnl_memory_desc_init_by_tag (&dst_md, 4, dst_dims, dnnl_f32, dnnl_format_tag_any);
  ok = check (dnnl_pooling_v2_forward_desc_init (&desc, dnnl_forward_inference,
                                                 dnnl_pooling_max, &src->md, &dst_md, strides,
                                                 kernel, dilation, padding, padding),
              "maxpool", error)
       && check (dnnl_primitive_desc_create (&pd, &desc, attr, exec->engine, NULL), "maxpool",
                 error)
       && new_activation (exec, dnnl_primitive_desc_query_md (pd, dnnl_query_dst_md, 0), dst,
                          error)
       && add_step (exec, pd, "maxpool 3x3/2",
                    (dnnl_exec_arg_t[]) { { DNNL_ARG_SRC, src->memory },
                                          { DNNL_ARG_DST, dst->memory } },
                    2, error);
  dnnl_primitive_attr_destroy (attr);
  if (pd != NULL)
    dnnl_primitive_desc_destroy (pd);
  return ok;
}

#define RELU EAD_BACKBONE_ACTIVATION_RELU

/* A torchvision convolution's padding, the same on every side. */
#define same_pads(conv) \
  ((const int[4]) { (conv)->padding, (conv)->padding, (conv)->padding, (conv)->padding })

/* x ← relu(branch(x) + shortcut(x)), the shortcut being x or its downsampling. */
static gboolean
compile_block (EadBackboneExec *exec,
               const EadBackbone *backbone,
               const EadBackboneBlock *block,
               Activation *x,
               GError **error)
{
  const int n_branch = backbone->block_kind == EAD_BACKBONE_BASIC ? 2 : 3;
  const EadBackboneConv *convs = backbone->convs + block->first_conv;
  Activation branch = *x, shortcut = *x, out;

  for (int i = 0; i < n_branch - 1; i++)
    {
      Activation next;

      if (!compile_conv (exec, &convs[i], same_pads (&convs[i]), &branch, NULL, RELU, 0.0f,
                         &next, error))
        return FALSE;
      release_unless_kept (exec, &branch, x);
      branch = next;
    }
  if (block->downsample >= 0
      && !compile_conv (exec, &backbone->convs[block->downsample],
                        same_pads (&backbone->convs[block->downsample]), x, NULL,
                        EAD_BACKBONE_ACTIVATION_NONE, 0.0f, &shortcut, error))
    return FALSE;
  if (!compile_conv (exec, &convs[n_branch - 1], same_pads (&convs[n_branch - 1]), &branch,
                     &shortcut, RELU, 0.0f, &out, error))
    return FALSE;
  release (exec, &branch);
  release_unless_kept (exec, &shortcut, &out);
  release_unless_kept (exec, x, &out);
  *x = out;
  return TRUE;
}

/* Copies x to the caller's output i as NCHW. */
static gboolean
compile_output (EadBackboneExec *exec, int level, const Activation *x, GError **error)
{
  const int i = exec->n_outputs++;
  const dnnl_dim_t *d = x->md.dims;
  dnnl_memory_desc_t md;
  Activation out;
  g_autofree char *what = g_strdup_printf ("layer%d output", level);

  exec->output_levels[i] = level;
  exec->output_shapes[i] = (EadShape) { (int) d[1], (int) d[2], (int) d[3] };
  exec->output_counts[i] = (size_t) d[1] * d[2] * d[3];
  dnnl_memory_desc_init_by_tag (&md, 4, d, dnnl_f32, dnnl_nchw);
  return add_reorder (exec, x, &md, PLACE_OUTPUT, i, what, &out, error);
}

/* Lays the buffers and the scratchpad out in one block and points their memories at it. */
static gboolean
allocate_workspace (EadBackboneExec *exec, GError **error)
{
  size_t offset = 0;
  char *base;

  for (guint i = 0; i < exec->buffers->len; i++)
    {
      Buffer *buffer = &g_array_index (exec->buffers, Buffer, i);

      buffer->offset = offset;
      offset += buffer->size;
    }
  exec->workspace_size = offset + exec->scratch_size;
  exec->workspace = aligned_alloc (EAD_CPU_ALIGNMENT,
                                   MAX (exec->workspace_size, EAD_CPU_ALIGNMENT));
  if (exec->workspace == NULL)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_LIMIT,
                   "cannot allocate %zu MiB for the backbone's activations",
                   exec->workspace_size >> 20);
      return FALSE;
    }
  base = exec->workspace;
  for (guint i = 0; i < exec->bindings->len; i++)
    {
      const Binding *binding = &g_array_index (exec->bindings, Binding, i);

      if (binding->place == PLACE_BUFFER)
        dnnl_memory_set_data_handle (binding->memory,
                                     base + g_array_index (exec->buffers, Buffer,
                                                           binding->index).offset);
      else if (binding->place == PLACE_SCRATCH)
        dnnl_memory_set_data_handle (binding->memory, base + offset);
    }
  return TRUE;
}

static gboolean
compile_network (EadBackboneExec *exec,
                 const EadBackbone *backbone,
                 guint levels,
                 int height,
                 int width,
                 GError **error)
{
  const int last_level = g_bit_nth_msf (levels, -1) + 1;
  dnnl_dims_t in_dims = { 1, 3, height, width };
  Activation x = { .buffer = -1 }, stem;
  int b = 0;

  dnnl_memory_desc_init_by_tag (&x.md, 4, in_dims, dnnl_f32, dnnl_nchw);
  x.memory = bind (exec, &x.md, PLACE_INPUT, 0, NULL, error);
  if (x.memory == NULL
      || !compile_conv (exec, &backbone->convs[0], same_pads (&backbone->convs[0]), &x, NULL,
                        RELU, 0.0f, &stem, error)
      || !compile_maxpool (exec, &stem, &x, error))
    return FALSE;
  release (exec, &stem);
  for (int level = 1; level <= last_level; level++)
    {
      for (int i = 0; i < backbone->level_blocks[level - 1]; i++, b++)
        if (!compile_block (exec, backbone, &backbone->blocks[b], &x, error))
          return FALSE;
      if ((levels & 1u << (level - 1)) && !compile_output (exec, level, &x, error))
        return FALSE;
    }
  return allocate_workspace (exec, error);
}

/* dst = the mean of src over height and width (channels x 1 x 1). */
static gboolean
compile_mean (EadBackboneExec *exec, const char *name, const Activation *src, Activation *dst,
              GError **error)
{
  dnnl_dims_t dst_dims = { src->md.dims[0], src->md.dims[1], 1, 1 };
  dnnl_memory_desc_t dst_md;
  dnnl_reduction_desc_t desc;
  dnnl_primitive_attr_t attr = _ead_cpu_attr_new (FALSE);
  dnnl_primitive_desc_t pd = NULL;
  g_autofree char *what = g_strdup_printf ("%s mean %dx%d", name, (int) src->md.dims[2],
                                           (int) src->md.dims[3]);
  gboolean ok;

  dnnl_memory_desc_init_by_tag (&dst_md, 4, dst_dims, dnnl_f32, dnnl_format_tag_any);
  ok = check (dnnl_reduction_desc_init (&desc, dnnl_reduction_mean, &src->md, &dst_md, 0.0f,
                                        0.0f),
              what, error)
       && check (dnnl_primitive_desc_create (&pd, &desc, attr, exec->engine, NULL), what,
                 error)
       && new_activation (exec, dnnl_primitive_desc_query_md (pd, dnnl_query_dst_md, 0), dst,
                          error)
       && add_step (exec, pd, what,
                    (dnnl_exec_arg_t[]) { { DNNL_ARG_SRC, src->memory },
                                          { DNNL_ARG_DST, dst->memory } },
                    2, error);
  dnnl_primitive_attr_destroy (attr);
  if (pd != NULL)
    dnnl_primitive_desc_destroy (pd);
  return ok;
}

/* dst = src * scale, the scale broadcast over height and width when it is channels x 1 x
 * 1; dst has src's layout. */
static gboolean
compile_mul (EadBackboneExec *exec, const char *name, const Activation *src,
             const Activation *scale, Activation *dst, GError **error)
{
  dnnl_memory_desc_t dst_md;
  dnnl_binary_desc_t desc;
  dnnl_primitive_attr_t attr = _ead_cpu_attr_new (FALSE);
  dnnl_primitive_desc_t pd = NULL;
  const gboolean broadcast = scale->md.dims[2] == 1 && scale->md.dims[3] == 1;
  g_autofree char *what = g_strdup_printf ("%s mul%s", name,
                                           broadcast ? " per channel" : "");
  gboolean ok;

  if (!broadcast
      && (scale->md.dims[2] != src->md.dims[2] || scale->md.dims[3] != src->md.dims[3]))
    {
      dnnl_primitive_attr_destroy (attr);
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "node '%s': its scale is %d x %d, its input %d x %d (expected 1 x 1 or the "
                   "same)", name, (int) scale->md.dims[2], (int) scale->md.dims[3],
                   (int) src->md.dims[2], (int) src->md.dims[3]);
      return FALSE;
    }
  dnnl_memory_desc_init_by_tag (&dst_md, 4, src->md.dims, dnnl_f32, dnnl_format_tag_any);
  ok = check (dnnl_binary_desc_init (&desc, dnnl_binary_mul, &src->md, &scale->md, &dst_md),
              what, error)
       && check (dnnl_primitive_desc_create (&pd, &desc, attr, exec->engine, NULL), what,
                 error)
       && new_activation (exec, dnnl_primitive_desc_query_md (pd, dnnl_query_dst_md, 0), dst,
                          error)
       && add_step (exec, pd, what,
                    (dnnl_exec_arg_t[]) { { DNNL_ARG_SRC_0, src->memory },
                                          { DNNL_ARG_SRC_1, scale->memory },
                                          { DNNL_ARG_DST, dst->memory } },
                    3, error);
  dnnl_primitive_attr_destroy (attr);
  if (pd != NULL)
    dnnl_primitive_desc_destroy (pd);
  return ok;
}

/* TensorFlow's 'same' padding along one axis: before, after. */
static void
tf_same_padding (int in, int kernel, int stride, int *before, int *after)
{
  const int out = (in + stride - 1) / stride;
  const int total = MAX ((out - 1) * stride + kernel - in, 0);

  *before = total / 2;
  *after = total - *before;
}

/* Conv node i of a graph: acts[i] from src, with TensorFlow's 'same' padding worked out
 * for src's size.  A residual that is read again later is copied first, since the sum
 * post-op writes over it. */
static gboolean
compile_graph_conv (EadBackboneExec *exec,
                    const EadBackbone *backbone,
                    int i,
                    const Activation *src,
                    Activation *acts,
                    const int *last_read,
                    GError **error)
{
  const EadBackboneNode *node = &backbone->nodes[i];
  const EadBackboneConv *conv = &backbone->convs[node->conv];
  Activation residual_copy = { .buffer = -1 };
  const Activation *residual = NULL;
  int pads[4];

  memcpy (pads, node->pads, sizeof pads);
  if (node->same)
    {
      tf_same_padding ((int) src->md.dims[2], conv->kernel, conv->stride, &pads[0], &pads[1]);
      tf_same_padding ((int) src->md.dims[3], conv->kernel, conv->stride, &pads[2], &pads[3]);
    }
  if ((int) src->md.dims[2] + pads[0] + pads[1] < conv->kernel
      || (int) src->md.dims[3] + pads[2] + pads[3] < conv->kernel)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "node '%s': its %d x %d input is smaller than its %d x %d kernel",
                   conv->name, (int) src->md.dims[2], (int) src->md.dims[3], conv->kernel,
                   conv->kernel);
      return FALSE;
    }
  if (node->residual >= 0)
    {
      residual = &acts[node->residual];
      if (last_read[node->residual] > i)
        {
          g_autofree char *what = g_strconcat (conv->name, " residual copy", NULL);

          if (!add_reorder (exec, residual, &residual->md, PLACE_BUFFER, 0, what,
                            &residual_copy, error))
            return FALSE;
          residual = &residual_copy;
        }
    }
  if (!compile_conv (exec, conv, pads, src, residual, node->activation, node->hard_scale,
                     &acts[i], error))
    return FALSE;
  if (residual != NULL
      && (residual->md.dims[2] != acts[i].md.dims[2]
          || residual->md.dims[3] != acts[i].md.dims[3]))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "node '%s': its output is %d x %d, its residual %d x %d", conv->name,
                   (int) acts[i].md.dims[2], (int) acts[i].md.dims[3],
                   (int) residual->md.dims[2], (int) residual->md.dims[3]);
      return FALSE;
    }
  release_unless_kept (exec, &residual_copy, &acts[i]);
  return TRUE;
}

/* The nodes up to the last level's.  A node's activation is released after its last
 * reader. */
static gboolean
compile_graph (EadBackboneExec *exec,
               const EadBackbone *backbone,
               guint levels,
               int height,
               int width,
               GError **error)
{
  const int last = backbone->level_nodes[g_bit_nth_msf (levels, -1)];
  g_autofree int *last_read = g_new (int, last + 1);
  g_autofree Activation *acts = g_new0 (Activation, last + 1);
  dnnl_dims_t in_dims = { 1, 3, height, width };
  Activation image = { .buffer = -1 };

  dnnl_memory_desc_init_by_tag (&image.md, 4, in_dims, dnnl_f32, dnnl_nchw);
  image.memory = bind (exec, &image.md, PLACE_INPUT, 0, NULL, error);
  if (image.memory == NULL)
    return FALSE;
  for (int i = 0; i <= last; i++)
    {
      const EadBackboneNode *node = &backbone->nodes[i];

      last_read[i] = -1;
      if (node->input >= 0)
        last_read[node->input] = i;
      if (node->residual >= 0)
        last_read[node->residual] = i;
      if (node->scale >= 0)
        last_read[node->scale] = i;
    }
  for (int i = 0; i <= last; i++)
    {
      const EadBackboneNode *node = &backbone->nodes[i];
      const char *name = backbone->convs[node->conv].name;
      const Activation *src = node->input >= 0 ? &acts[node->input] : &image;
      gboolean ok;

      switch (node->op)
        {
        case EAD_BACKBONE_OP_MEAN:
          ok = compile_mean (exec, name, src, &acts[i], error);
          break;
        case EAD_BACKBONE_OP_MUL:
          ok = compile_mul (exec, name, src, &acts[node->scale], &acts[i], error);
          break;
        default:
          ok = compile_graph_conv (exec, backbone, i, src, acts, last_read, error);
          break;
        }
      if (!ok)
        return FALSE;
      if (node->input >= 0 && last_read[node->input] == i)
        release_unless_kept (exec, &acts[node->input], &acts[i]);
      if (node->residual >= 0 && last_read[node->residual] == i)
        release_unless_kept (exec, &acts[node->residual], &acts[i]);
      if (node->scale >= 0 && last_read[node->scale] == i)
        release_unless_kept (exec, &acts[node->scale], &acts[i]);
      for (int l = 0; l < EAD_BACKBONE_LEVELS; l++)
        if ((levels & 1u << l) && backbone->level_nodes[l] == i
            && !compile_output (exec, l + 1, &acts[i], error))
          return FALSE;
      if (last_read[i] < 0)
        release (exec, &acts[i]);
    }
  return allocate_workspace (exec, error);
}

EadBackboneExec *
ead_backbone_compile (const EadBackbone *backbone,
                      guint levels,
                      int batch,
                      int height,
                      int width,
                      GError **error)
{
  EadCpuBackend *cpu = (EadCpuBackend *) ead_backend_cpu ();
  g_autoptr (EadBackboneExec) exec = NULL;
  g_autoptr (GError) local_error = NULL;

  if (levels == 0 || levels >= 1u << EAD_BACKBONE_LEVELS || batch < 1 || height < 1
      || width < 1)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "%s: cannot compile levels 0x%x for a %d x 3 x %d x %d input",
                   backbone->path, levels, batch, height, width);
      return NULL;
    }
  for (int l = 0; l < EAD_BACKBONE_LEVELS; l++)
    if (backbone->family == EAD_BACKBONE_GRAPH && (levels & 1u << l)
        && backbone->level_nodes[l] < 0)
      {
        g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                     "%s: the graph names no level%d", backbone->path, l + 1);
        return NULL;
      }
  exec = g_new0 (EadBackboneExec, 1);
  exec->engine = cpu->engine;
  exec->threads = cpu->threads;
  exec->images = batch;
  exec->in_count = (size_t) 3 * height * width;
  exec->steps = g_array_new (FALSE, TRUE, sizeof (Step));
  exec->bindings = g_array_new (FALSE, TRUE, sizeof (Binding));
  exec->buffers = g_array_new (FALSE, TRUE, sizeof (Buffer));
  exec->owned = g_ptr_array_new_with_free_func (free);
  /* oneDNN sizes its primitives for the thread count current when they are made */
  omp_set_num_threads (exec->threads);
  if (!check (dnnl_stream_create (&exec->stream, exec->engine, dnnl_stream_default_flags),
              "stream", &local_error)
      || !(backbone->family == EAD_BACKBONE_GRAPH
             ? compile_graph (exec, backbone, levels, height, width, &local_error)
             : compile_network (exec, backbone, levels, height, width, &local_error)))
    {
      g_propagate_prefixed_error (error, g_steal_pointer (&local_error), "%s: ",
                                  backbone->path);
      return NULL;
    }
  return g_steal_pointer (&exec);
}

void
ead_backbone_exec_free (EadBackboneExec *exec)
{
  if (exec == NULL)
    return;
  for (guint i = 0; i < exec->steps->len; i++)
    {
      Step *step = &g_array_index (exec->steps, Step, i);

      dnnl_primitive_destroy (step->primitive);
      g_free (step->description);
    }
  for (guint i = 0; i < exec->bindings->len; i++)
    dnnl_memory_destroy (g_array_index (exec->bindings, Binding, i).memory);
  g_array_unref (exec->steps);
  g_array_unref (exec->bindings);
  g_array_unref (exec->buffers);
  g_ptr_array_unref (exec->owned);
  if (exec->stream != NULL)
    dnnl_stream_destroy (exec->stream);
  free (exec->workspace);
  g_free (exec);
}

int
ead_backbone_exec_n_outputs (const EadBackboneExec *exec)
{
  return exec->n_outputs;
}

int
ead_backbone_exec_output_level (const EadBackboneExec *exec, int i)
{
  g_return_val_if_fail (i >= 0 && i < exec->n_outputs, 0);
  return exec->output_levels[i];
}

EadShape
ead_backbone_exec_output_shape (const EadBackboneExec *exec, int i)
{
  g_return_val_if_fail (i >= 0 && i < exec->n_outputs, (EadShape) { 0 });
  return exec->output_shapes[i];
}

gboolean
ead_backbone_forward (EadBackboneExec *exec, const float *in, float *const *out, GError **error)
{
  omp_set_num_threads (exec->threads);
  for (int n = 0; n < exec->images; n++)
    {
      for (guint i = 0; i < exec->bindings->len; i++)
        {
          const Binding *binding = &g_array_index (exec->bindings, Binding, i);

          if (binding->place == PLACE_INPUT)
            dnnl_memory_set_data_handle (binding->memory, (void *) (in + n * exec->in_count));
          else if (binding->place == PLACE_OUTPUT)
            dnnl_memory_set_data_handle (binding->memory,
                                         out[binding->index]
                                           + n * exec->output_counts[binding->index]);
        }
      for (guint i = 0; i < exec->steps->len; i++)
        {
          const Step *step = &g_array_index (exec->steps, Step, i);

          if (!check (dnnl_primitive_execute (step->primitive, exec->stream, step->n_args,
                                              step->args),
                      step->description, error))
            return FALSE;
        }
    }
  return check (dnnl_stream_wait (exec->stream), "stream wait", error);
}

char *
ead_backbone_exec_describe (const EadBackboneExec *exec)
{
  GString *text = g_string_new (NULL);

  for (guint i = 0; i < exec->steps->len; i++)
    g_string_append_printf (text, "%s\n", g_array_index (exec->steps, Step, i).description);
  g_string_append_printf (text, "workspace: %u buffers, %.1f MiB\n", exec->buffers->len,
                          exec->workspace_size / 1048576.0);
  return g_string_free (text, FALSE);
}
