#include "ead-pretrain.h"

#include <errno.h>
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <math.h>
#include <string.h>

#include "ead-augment.h"
#include "ead-dataset.h"
#include "ead-error.h"
#include "ead-image.h"
#include "ead-stats.h"
#include "ead-safetensors.h"
#include "ead-train.h"

/* Each sample draws its crop size, crop x, crop y, mirror and grey (ead-pretrain.h). */
#define SAMPLE_DRAWS 5
#define GREY_PROBABILITY 0.1f
#define LOSS_TAIL 100

/* ---------------------------------------------------------------------------------------
 * Ψ
 * --------------------------------------------------------------------------------------- */

struct _EadPatchAggregator {
  int n_levels;
  EadShape levels[EAD_BACKBONE_LEVELS];
  int out_h, out_w, out_channels;
  float *pooled;   /* EAD_PATCH_LEVEL_DIM planes of a level grid, before resizing */
  float *stacked;  /* n_levels x EAD_PATCH_LEVEL_DIM planes of the output grid */
};

/* adaptive_avg_pool1d's window i of `out` over `in` values: [start, end) */
static inline int
window_start (int i, int in, int out)
{
  return (int) ((gint64) i * in / out);
}

static inline int
window_end (int i, int in, int out)
{
  return (int) ((((gint64) i + 1) * in + out - 1) / out);
}

EadPatchAggregator *
ead_patch_aggregator_new (int n_levels,
                          const EadShape *levels,
                          int out_height,
                          int out_width,
                          int out_channels,
                          GError **error)
{
  EadPatchAggregator *aggregator;
  size_t pooled_size = 0;

  if (n_levels < 1 || n_levels > EAD_BACKBONE_LEVELS)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "feature aggregation needs 1 to %d levels, not %d", EAD_BACKBONE_LEVELS,
                   n_levels);
      return NULL;
    }
  if (out_height < 1 || out_width < 1 || out_channels < 1)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "feature aggregation onto %d channels of %dx%d: nothing to compute",
                   out_channels, out_width, out_height);
      return NULL;
    }
  for (int l = 0; l < n_levels; l++)
    {
      if (levels[l].c < 1 || levels[l].h < 1 || levels[l].w < 1)
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                       "feature aggregation: level %d has an empty shape %dx%dx%d", l,
                       levels[l].c, levels[l].h, levels[l].w);
          return NULL;
        }
      if (levels[l].h != out_height || levels[l].w != out_width)
        pooled_size = MAX (pooled_size, (size_t) levels[l].h * levels[l].w);
    }

  aggregator = g_new0 (EadPatchAggregator, 1);
  aggregator->n_levels = n_levels;
  memcpy (aggregator->levels, levels, n_levels * sizeof (EadShape));
  aggregator->out_h = out_height;
  aggregator->out_w = out_width;
  aggregator->out_channels = out_channels;
  aggregator->pooled = g_new (float, pooled_size * EAD_PATCH_LEVEL_DIM);
  aggregator->stacked = g_new (float, (size_t) n_levels * EAD_PATCH_LEVEL_DIM * out_height
                                        * out_width);
  return aggregator;
}

void
ead_patch_aggregator_free (EadPatchAggregator *aggregator)
{
  if (aggregator == NULL)
    return;
  g_free (aggregator->pooled);
  g_free (aggregator->stacked);
  g_free (aggregator);
}

/* dst (h x w) = the mean of the unfolded components [start, end) of features (c x h x w):
 * component i is channel i / 9 shifted by ((i % 9) / 3 - 1, i % 3 - 1), zero outside.
 * Summed in component order, as adaptive_avg_pool1d sums its window. */
static void
pool_components (const float *features, int h, int w, int start, int end, float *dst)
{
  const float count = end - start;

  memset (dst, 0, (size_t) h * w * sizeof (float));
  for (int i = start; i < end; i++)
    {
      const float *plane = features + (size_t) (i / 9) * h * w;
      int dy = (i % 9) / 3 - 1, dx = i % 3 - 1;
      int x_lo = MAX (0, -dx), x_hi = MIN (w, w - dx);

      for (int y = MAX (0, -dy); y < MIN (h, h - dy); y++)
        {
          const float *src = plane + (size_t) (y + dy) * w + dx;
          float *row = dst + (size_t) y * w;

          for (int x = x_lo; x < x_hi; x++)
            row[x] += src[x];
        }
    }
  for (size_t k = 0; k < (size_t) h * w; k++)
    dst[k] /= count;
}

void
ead_patch_aggregator_run (EadPatchAggregator *aggregator, const float *const *features,
                          float *out)
{
  EadBackend *cpu = ead_backend_cpu ();
  const int out_h = aggregator->out_h, out_w = aggregator->out_w;
  const size_t out_hw = (size_t) out_h * out_w;
  const int stacked = aggregator->n_levels * EAD_PATCH_LEVEL_DIM;

  for (int l = 0; l < aggregator->n_levels; l++)
    {
      const EadShape shape = aggregator->levels[l];
      const int length = shape.c * 9;
      const gboolean on_grid = shape.h == out_h && shape.w == out_w;
      float *level_out = aggregator->stacked + (size_t) l * EAD_PATCH_LEVEL_DIM * out_hw;
      float *pooled = on_grid ? level_out : aggregator->pooled;

#pragma omp parallel for schedule(static)
      for (int j = 0; j < EAD_PATCH_LEVEL_DIM; j++)
        pool_components (features[l], shape.h, shape.w,
                         window_start (j, length, EAD_PATCH_LEVEL_DIM),
                         window_end (j, length, EAD_PATCH_LEVEL_DIM),
                         pooled + (size_t) j * shape.h * shape.w);
      if (!on_grid)
        cpu->resize_bilinear (pooled, EAD_PATCH_LEVEL_DIM, shape.h, shape.w, level_out, out_h,
                              out_w);
    }

#pragma omp parallel for schedule(static)
  for (int o = 0; o < aggregator->out_channels; o++)
    {
      int start = window_start (o, stacked, aggregator->out_channels);
      int end = window_end (o, stacked, aggregator->out_channels);
      const float count = end - start;
      float *dst = out + (size_t) o * out_hw;

      memset (dst, 0, out_hw * sizeof (float));
      for (int k = start; k < end; k++)
        {
          const float *src = aggregator->stacked + (size_t) k * out_hw;
          for (size_t p = 0; p < out_hw; p++)
            dst[p] += src[p];
        }
      for (size_t p = 0; p < out_hw; p++)
        dst[p] /= count;
    }
}

/* ---------------------------------------------------------------------------------------
 * The distillation
 * --------------------------------------------------------------------------------------- */

/* A sequence of samples (training, statistics) with its own random draws. */
typedef struct {
  guint64 key;              /* of the per-sample draws */
  const char *order_name;   /* keys the permutation of each epoch */
  guint *order;
  gint64 order_epoch;
} SampleStream;

struct _EadPretrainer {
  EadPretrainOptions options;
  char *device;
  char *checkpoint_path;
  char *images_dir;
  char *command;
  char *backbone_name;
  char *backbone_sha256;
  char *backbone_arch;
  char *levels_text;
  GPtrArray *paths;          /* the images, sorted */
  char *snapshot;            /* SHA-256 of their relative names and sizes */
  GPtrArray *skipped;        /* "path: reason" */
  GHashTable *skipped_paths;
  EadBackend *backend;
  EadBackboneExec *backbone;
  float backbone_mean[3], backbone_std[3];  /* the backbone's input normalisation */
  EadPatchAggregator *aggregator;
  EadNet *pdn, *grad, *m, *v;  /* padding on; Adam moments */
  EadTrainExec *exec;          /* batch 1 */
  int out_h, out_w;
  size_t hw;                   /* PDN output pixels per channel */
  size_t backbone_input_size, pdn_input_size;
  float *backbone_input, *pdn_input;  /* one image each */
  float *features[EAD_BACKBONE_LEVELS];
  float *psi, *target, *out, *diff;   /* one image each */
  float target_mean[EAD_TEACHER_CHANNELS];
  float target_std[EAD_TEACHER_CHANNELS];
  float *history;              /* the loss of each step */
  int step;                    /* steps done */
  gboolean resumed;
  SampleStream train_stream, stats_stream;
};

void
ead_pretrain_options_init (EadPretrainOptions *options)
{
  *options = (EadPretrainOptions) {
    .arch = EAD_ARCH_SMALL,
    .input_height = 256,
    .input_width = 256,
    .levels = (1u << 1) | (1u << 2),
    .steps = 60000,
    .batch = 16,
    .stats_images = 1000,
    .seed = 0,
    .threads = 0,
    .device = "cpu",
    .checkpoint_every = 1000,
    .learning_rate = 1e-4,
    .weight_decay = 1e-5,
  };
}

void
ead_pretrainer_free (EadPretrainer *pretrainer)
{
  if (pretrainer == NULL)
    return;
  if (pretrainer->exec != NULL)
    pretrainer->backend->train_free (pretrainer->exec);
  ead_backbone_exec_free (pretrainer->backbone);
  ead_patch_aggregator_free (pretrainer->aggregator);
  ead_net_free (pretrainer->pdn);
  ead_net_free (pretrainer->grad);
  ead_net_free (pretrainer->m);
  ead_net_free (pretrainer->v);
  for (int l = 0; l < EAD_BACKBONE_LEVELS; l++)
    g_free (pretrainer->features[l]);
  g_free (pretrainer->backbone_input);
  g_free (pretrainer->pdn_input);
  g_free (pretrainer->psi);
  g_free (pretrainer->target);
  g_free (pretrainer->out);
  g_free (pretrainer->diff);
  g_free (pretrainer->history);
  g_free (pretrainer->train_stream.order);
  g_free (pretrainer->stats_stream.order);
  g_clear_pointer (&pretrainer->paths, g_ptr_array_unref);
  g_clear_pointer (&pretrainer->skipped, g_ptr_array_unref);
  g_clear_pointer (&pretrainer->skipped_paths, g_hash_table_unref);
  g_free (pretrainer->snapshot);
  g_free (pretrainer->device);
  g_free (pretrainer->checkpoint_path);
  g_free (pretrainer->images_dir);
  g_free (pretrainer->command);
  g_free (pretrainer->backbone_name);
  g_free (pretrainer->backbone_sha256);
  g_free (pretrainer->backbone_arch);
  g_free (pretrainer->levels_text);
  g_free (pretrainer);
}

/* The images below the folder, sorted, and the SHA-256 of their relative names and
 * sizes: the identity of the image set (reading every photo of a large set would take
 * longer than a checkpoint is worth). */
static gboolean
find_images (EadPretrainer *pretrainer, const char *dir, GError **error)
{
  g_autoptr (GChecksum) snapshot = g_checksum_new (G_CHECKSUM_SHA256);
  size_t root_length = strlen (dir);

  pretrainer->paths = ead_dataset_list_images (dir, error);
  if (pretrainer->paths == NULL)
    return FALSE;
  for (guint i = 0; i < pretrainer->paths->len; i++)
    {
      const char *path = pretrainer->paths->pdata[i];
      g_autofree char *size = NULL;
      GStatBuf stat_buf;

      if (g_stat (path, &stat_buf) != 0)
        {
          int saved_errno = errno;
          g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: %s", path,
                       g_strerror (saved_errno));
          return FALSE;
        }
      size = g_strdup_printf ("%" G_GUINT64_FORMAT, (guint64) stat_buf.st_size);
      g_checksum_update (snapshot, (const guchar *) path + root_length, strlen (path + root_length) + 1);
      g_checksum_update (snapshot, (const guchar *) size, strlen (size) + 1);
    }
  pretrainer->snapshot = g_strdup (g_checksum_get_string (snapshot));
  return TRUE;
}

static char *
file_sha256 (const char *path, GError **error)
{
  g_autoptr (GChecksum) checksum = g_checksum_new (G_CHECKSUM_SHA256);
  g_autoptr (GFile) file = g_file_new_for_path (path);
  g_autoptr (GFileInputStream) stream = NULL;
  g_autofree guchar *buffer = g_malloc (1 << 20);
  GError *local_error = NULL;
  gssize n;

  stream = g_file_read (file, NULL, &local_error);
  if (stream == NULL)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: %s", path, local_error->message);
      g_error_free (local_error);
      return NULL;
    }
  while ((n = g_input_stream_read (G_INPUT_STREAM (stream), buffer, 1 << 20, NULL,
                                   &local_error)) > 0)
    g_checksum_update (checksum, buffer, n);
  if (n < 0)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: %s", path, local_error->message);
      g_error_free (local_error);
      return NULL;
    }
  return g_strdup (g_checksum_get_string (checksum));
}

static char *
levels_text (guint levels)
{
  GString *text = g_string_new (NULL);

  for (int l = 1; l <= EAD_BACKBONE_LEVELS; l++)
    if (levels & (1u << (l - 1)))
      g_string_append_printf (text, "%slayer%d", text->len > 0 ? "," : "", l);
  return g_string_free (text, FALSE);
}

static EadNetKind
pdn_kind (EadArch arch)
{
  return arch == EAD_ARCH_SMALL ? EAD_NET_PDN_SMALL : EAD_NET_PDN_MEDIUM;
}

static EadNet *
zero_copy (const EadNet *net)
{
  EadNet *copy = ead_net_copy (net);

  ead_net_zero (copy);
  return copy;
}

static gboolean
check_options (const EadPretrainOptions *options, GError **error)
{
  if (options->steps < 1 || options->batch < 1 || options->stats_images < 1)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "distillation needs at least one step, image per batch and statistics "
                   "sample (steps %d, batch %d, statistics samples %d)",
                   options->steps, options->batch, options->stats_images);
      return FALSE;
    }
  if (options->levels == 0 || options->levels >= (1u << EAD_BACKBONE_LEVELS))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "backbone levels: a non-empty choice of layer1 to layer%d is needed (mask 0x%x)",
                   EAD_BACKBONE_LEVELS, options->levels);
      return FALSE;
    }
  if (options->input_height < 1 || options->input_width < 1
      || options->input_height > 4096 || options->input_width > 4096)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "a PDN input of %dx%d: sides of 1 to 4096 pixels are accepted",
                   options->input_width, options->input_height);
      return FALSE;
    }
  if (options->images_dir == NULL)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID, "distillation needs a folder of images");
      return FALSE;
    }
  return TRUE;
}

/* The backbone (fp32, on the CPU) and the aggregation onto the PDN output grid. */
static gboolean
compile_target (EadPretrainer *pretrainer, const EadBackbone *backbone, GError **error)
{
  const EadPretrainOptions *options = &pretrainer->options;
  EadShape shapes[EAD_BACKBONE_LEVELS];
  int n;

  pretrainer->backbone = ead_backbone_compile (backbone, options->levels, 1,
                                               2 * options->input_height,
                                               2 * options->input_width, error);
  if (pretrainer->backbone == NULL)
    return FALSE;
  memcpy (pretrainer->backbone_mean, backbone->input_mean, sizeof pretrainer->backbone_mean);
  memcpy (pretrainer->backbone_std, backbone->input_std, sizeof pretrainer->backbone_std);
  n = ead_backbone_exec_n_outputs (pretrainer->backbone);
  for (int l = 0; l < n; l++)
    {
      shapes[l] = ead_backbone_exec_output_shape (pretrainer->backbone, l);
      pretrainer->features[l] = g_new (float, (size_t) shapes[l].c * shapes[l].h * shapes[l].w);
    }
  pretrainer->aggregator = ead_patch_aggregator_new (n, shapes, pretrainer->out_h,
                                                     pretrainer->out_w, EAD_TEACHER_CHANNELS,
                                                     error);
  return pretrainer->aggregator != NULL;
}

EadPretrainer *
ead_pretrainer_new (const EadBackbone *backbone,
                    const EadPretrainOptions *options,
                    GError **error)
{
  g_autoptr (EadPretrainer) pretrainer = g_new0 (EadPretrainer, 1);
  g_autoptr (GMutexLocker) locker = NULL;
  EadBackend *backend, *cpu = ead_backend_cpu ();
  EadShape out;
  int h = options->input_height, w = options->input_width;

  if (!check_options (options, error))
    return NULL;
  pretrainer->options = *options;
  pretrainer->device = g_strdup (options->device ? options->device : "cpu");
  pretrainer->checkpoint_path = g_strdup (options->checkpoint_path);
  pretrainer->images_dir = g_strdup (options->images_dir);
  pretrainer->command = g_strdup (options->command);
  pretrainer->options.device = pretrainer->device;
  pretrainer->options.checkpoint_path = pretrainer->checkpoint_path;
  pretrainer->options.images_dir = pretrainer->images_dir;
  pretrainer->options.command = pretrainer->command;
  pretrainer->levels_text = levels_text (options->levels);
  pretrainer->skipped = g_ptr_array_new_with_free_func (g_free);
  pretrainer->skipped_paths = g_hash_table_new (g_str_hash, g_str_equal);
  if (!find_images (pretrainer, options->images_dir, error))
    return NULL;

  pretrainer->backbone_arch = g_strdup (backbone->arch);
  if (backbone->path != NULL)
    {
      pretrainer->backbone_name = g_path_get_basename (backbone->path);
      pretrainer->backbone_sha256 = file_sha256 (backbone->path, error);
      if (pretrainer->backbone_sha256 == NULL)
        return NULL;
    }
  else
    {
      pretrainer->backbone_name = g_strdup ("unknown");
      pretrainer->backbone_sha256 = g_strdup ("unknown");
    }

  backend = ead_backend_get_for_training (pretrainer->device, error);
  if (backend == NULL)
    return NULL;
  pretrainer->backend = backend;
  /* the settings hold for the compiles below: the backbone's and the PDN's */
  locker = g_mutex_locker_new (ead_backend_compile_mutex ());
  backend->set_threads (backend, options->threads);
  if (backend != cpu)
    cpu->set_threads (cpu, options->threads);  /* the backbone runs on the CPU */
  if (!backend->set_precision (backend, options->precision, error))
    return NULL;
  pretrainer->options.precision = backend->get_precision (backend);

  pretrainer->pdn = ead_net_new (pdn_kind (options->arch), EAD_TEACHER_CHANNELS, TRUE);
  ead_net_init_random (pretrainer->pdn, "teacher", options->seed);
  pretrainer->grad = zero_copy (pretrainer->pdn);
  pretrainer->m = zero_copy (pretrainer->pdn);
  pretrainer->v = zero_copy (pretrainer->pdn);
  if (!ead_net_shapes (pretrainer->pdn, (EadShape) { 3, h, w }, NULL, &out, error))
    return NULL;
  pretrainer->out_h = out.h;
  pretrainer->out_w = out.w;
  pretrainer->hw = (size_t) out.h * out.w;
  if (!compile_target (pretrainer, backbone, error))
    return NULL;
  pretrainer->exec = backend->train_compile (backend, pretrainer->pdn, pretrainer->grad, 1, h, w,
                                             error);
  if (pretrainer->exec == NULL)
    return NULL;

  pretrainer->backbone_input_size = (size_t) 3 * 4 * h * w;
  pretrainer->pdn_input_size = (size_t) 3 * h * w;
  pretrainer->backbone_input = g_new (float, pretrainer->backbone_input_size);
  pretrainer->pdn_input = g_new (float, pretrainer->pdn_input_size);
  pretrainer->psi = g_new (float, EAD_TEACHER_CHANNELS * pretrainer->hw);
  pretrainer->target = g_new (float, EAD_TEACHER_CHANNELS * pretrainer->hw);
  pretrainer->out = g_new (float, EAD_TEACHER_CHANNELS * pretrainer->hw);
  pretrainer->diff = g_new (float, EAD_TEACHER_CHANNELS * pretrainer->hw);
  pretrainer->history = g_new0 (float, options->steps);
  for (int c = 0; c < EAD_TEACHER_CHANNELS; c++)
    pretrainer->target_std[c] = 1.0f;
  pretrainer->train_stream = (SampleStream) {
    ead_random_key (options->seed, "pretrain.sample"), "pretrain.order",
    g_new (guint, pretrainer->paths->len), -1
  };
  pretrainer->stats_stream = (SampleStream) {
    ead_random_key (options->seed, "pretrain.stats.sample"), "pretrain.stats.order",
    g_new (guint, pretrainer->paths->len), -1
  };
  return g_steal_pointer (&pretrainer);
}

/* ---- samples ---- */

/* The image of sample k: epochs walk the images in a seeded permutation. */
static guint
image_of_sample (EadPretrainer *pretrainer, SampleStream *stream, guint64 k)
{
  guint n = pretrainer->paths->len;
  gint64 epoch = k / n;

  if (epoch != stream->order_epoch)
    {
      guint64 key = ead_random_key (pretrainer->options.seed + (guint64) epoch,
                                    stream->order_name);

      for (guint i = 0; i < n; i++)
        stream->order[i] = i;
      for (guint i = n - 1; i > 0; i--)
        {
          guint j = MIN ((guint) (ead_random_uniform (key, i) * (i + 1)), i);
          guint t = stream->order[i];
          stream->order[i] = stream->order[j];
          stream->order[j] = t;
        }
      stream->order_epoch = epoch;
    }
  return stream->order[k % n];
}

/* Image `index`, or the next one in path order that decodes; each one that does not is
 * listed once. */
static EadImage *
decode_image (EadPretrainer *pretrainer, guint index, GError **error)
{
  guint n = pretrainer->paths->len;

  for (guint tries = 0; tries < n; tries++)
    {
      const char *path = pretrainer->paths->pdata[(index + tries) % n];
      g_autoptr (GError) local_error = NULL;
      EadImage *image = ead_image_load (path, 0, &local_error);

      if (image != NULL)
        return image;
      if (!g_hash_table_contains (pretrainer->skipped_paths, path))
        {
          g_hash_table_add (pretrainer->skipped_paths, (gpointer) path);
          g_ptr_array_add (pretrainer->skipped, g_str_has_prefix (local_error->message, path)
                                                  ? g_strdup (local_error->message)
                                                  : g_strdup_printf ("%s: %s", path,
                                                                     local_error->message));
        }
    }
  g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT, "%s: none of the %u images can be decoded (%s)",
               pretrainer->images_dir, n, (const char *) pretrainer->skipped->pdata[0]);
  return NULL;
}

/* The crop (with the PDN input's aspect), mirror and grey of the header's description. */
static EadImage *
crop_image (const EadImage *image, int height, int width, const float u[SAMPLE_DRAWS])
{
  double largest = MIN ((double) image->height, (double) image->width * height / width);
  int ch = CLAMP ((int) round ((0.5 + 0.5 * u[0]) * largest), 1, image->height);
  int cw = CLAMP ((int) round ((double) ch * width / height), 1, image->width);
  int x0 = MIN ((int) (u[1] * (image->width - cw + 1)), image->width - cw);
  int y0 = MIN ((int) (u[2] * (image->height - ch + 1)), image->height - ch);
  gboolean mirror = u[3] < 0.5f, grey = u[4] < GREY_PROBABILITY;
  EadImage *crop = ead_image_new (cw, ch);

  for (int y = 0; y < ch; y++)
    for (int x = 0; x < cw; x++)
      {
        int sx = x0 + (mirror ? cw - 1 - x : x);
        const guint8 *src = image->rgb + ((size_t) (y0 + y) * image->width + sx) * 3;
        guint8 *dst = crop->rgb + ((size_t) y * cw + x) * 3;

        if (grey)
          dst[0] = dst[1] = dst[2] = ead_luma (src);
        else
          memcpy (dst, src, 3);
      }
  return crop;
}

/* The two normalised views of sample k of a stream. */
static gboolean
prepare_sample (EadPretrainer *pretrainer, SampleStream *stream, guint64 k, float *backbone_input,
                float *pdn_input, GError **error)
{
  const int h = pretrainer->options.input_height, w = pretrainer->options.input_width;
  g_autoptr (EadImage) image = decode_image (pretrainer, image_of_sample (pretrainer, stream, k),
                                             error);
  g_autoptr (EadImage) crop = NULL;
  g_autoptr (EadImage) large = NULL;
  g_autoptr (EadImage) small = NULL;
  float u[SAMPLE_DRAWS];

  if (image == NULL)
    return FALSE;
  for (int i = 0; i < SAMPLE_DRAWS; i++)
    u[i] = ead_random_uniform (stream->key, SAMPLE_DRAWS * k + i);
  crop = crop_image (image, h, w, u);
  large = ead_image_resize_bilinear (crop, 2 * w, 2 * h);
  small = ead_image_resize_bilinear (crop, w, h);
  /* the backbone sees what it was trained on; the PDN, ImageNet-normalised images as in
   * EfficientAD's training and inference */
  ead_image_to_input_normalised (large, pretrainer->backbone_mean, pretrainer->backbone_std,
                                 backbone_input);
  ead_image_to_input (small, pdn_input);
  return TRUE;
}

/* ---- target and step ---- */

gboolean
ead_pretrainer_target (EadPretrainer *pretrainer,
                       const float *backbone_input,
                       float *psi,
                       GError **error)
{
  if (!ead_backbone_forward (pretrainer->backbone, backbone_input, pretrainer->features, error))
    return FALSE;
  ead_patch_aggregator_run (pretrainer->aggregator, (const float *const *) pretrainer->features,
                            psi);
  return TRUE;
}

/* One image of a step: the normalised target, the PDN's forward and backward passes with
 * the loss gradient scaled for the whole batch (inv_n = 1 / elements of the batch); adds
 * the image's sum of squared differences to *squares, summed per channel and then over
 * the channels in order, so that the loss does not depend on the threads' timing. */
static gboolean
distill_image (EadPretrainer *pretrainer, const float *backbone_input, const float *pdn_input,
               float inv_n, double *squares, GError **error)
{
  EadBackend *backend = pretrainer->backend;
  const size_t hw = pretrainer->hw;
  const float *mean = pretrainer->target_mean, *std = pretrainer->target_std;
  double sums[EAD_TEACHER_CHANNELS];

  if (!ead_pretrainer_target (pretrainer, backbone_input, pretrainer->psi, error)
      || !backend->train_forward (pretrainer->exec, pdn_input, pretrainer->out, 0, error))
    return FALSE;
#pragma omp parallel for schedule(static)
  for (int c = 0; c < EAD_TEACHER_CHANNELS; c++)
    {
      const float *psi = pretrainer->psi + c * hw, *out = pretrainer->out + c * hw;
      float *diff = pretrainer->diff + c * hw;
      double sum = 0.0;

      for (size_t p = 0; p < hw; p++)
        {
          float t = (psi[p] - mean[c]) / std[c];

          sum += (double) (t - out[p]) * (t - out[p]);
          diff[p] = inv_n * (2.0f * (out[p] - t));
        }
      sums[c] = sum;
    }
  for (int c = 0; c < EAD_TEACHER_CHANNELS; c++)
    *squares += sums[c];
  return backend->train_backward (pretrainer->exec, pretrainer->diff, error);
}

static float
batch_inv_n (const EadPretrainer *pretrainer)
{
  return 1.0f / (float) ((size_t) pretrainer->options.batch * EAD_TEACHER_CHANNELS
                         * pretrainer->hw);
}

static void
apply_update (EadPretrainer *pretrainer, int step)
{
  ead_adam_step_net (pretrainer->pdn, pretrainer->grad, pretrainer->m, pretrainer->v,
                     pretrainer->options.learning_rate, pretrainer->options.weight_decay,
                     step + 1);
  ead_net_zero (pretrainer->grad);
}

static gboolean
train_step (EadPretrainer *pretrainer, int step, GError **error)
{
  const int batch = pretrainer->options.batch;
  const float inv_n = batch_inv_n (pretrainer);
  double squares = 0.0;

  for (int b = 0; b < batch; b++)
    if (!prepare_sample (pretrainer, &pretrainer->train_stream, (guint64) step * batch + b,
                         pretrainer->backbone_input, pretrainer->pdn_input, error)
        || !distill_image (pretrainer, pretrainer->backbone_input, pretrainer->pdn_input, inv_n,
                           &squares, error))
      return FALSE;
  pretrainer->history[step] = squares / ((double) batch * EAD_TEACHER_CHANNELS * pretrainer->hw);
  apply_update (pretrainer, step);
  return TRUE;
}

gboolean
ead_pretrainer_step_inputs (EadPretrainer *pretrainer,
                            const float *backbone_inputs,
                            const float *pdn_inputs,
                            gboolean apply,
                            double *loss,
                            GError **error)
{
  const int batch = pretrainer->options.batch;
  const float inv_n = batch_inv_n (pretrainer);
  double squares = 0.0;

  for (int b = 0; b < batch; b++)
    if (!distill_image (pretrainer, backbone_inputs + b * pretrainer->backbone_input_size,
                        pdn_inputs + b * pretrainer->pdn_input_size, inv_n, &squares, error))
      return FALSE;
  *loss = squares / ((double) batch * EAD_TEACHER_CHANNELS * pretrainer->hw);
  if (apply)
    apply_update (pretrainer, 0);
  return TRUE;
}

/* ---- target statistics ---- */

static gboolean
cancelled (const gint *cancel, const char *what, GError **error)
{
  if (cancel == NULL || !g_atomic_int_get (cancel))
    return FALSE;
  g_set_error (error, G_IO_ERROR, G_IO_ERROR_CANCELLED, "distillation cancelled %s", what);
  return TRUE;
}

/* The target's channel mean and population std over the statistics samples, in two
 * passes with double accumulation (spec §5, as §3). */
static gboolean
target_statistics (EadPretrainer *pretrainer, EadPretrainProgressFunc progress,
                   gpointer user_data, const gint *cancel, gint64 start, GError **error)
{
  const int n = pretrainer->options.stats_images;
  const size_t hw = pretrainer->hw;
  double mean[EAD_TEACHER_CHANNELS] = { 0 }, var[EAD_TEACHER_CHANNELS] = { 0 };

  for (int pass = 0; pass < 2; pass++)
    for (int i = 0; i < n; i++)
      {
        EadPretrainProgress report = { EAD_PRETRAIN_PHASE_STATISTICS, pass * n + i + 1, 2 * n };
        const float *psi = pretrainer->psi;

        if (cancelled (cancel, "while computing the target statistics", error)
            || !prepare_sample (pretrainer, &pretrainer->stats_stream, i,
                                pretrainer->backbone_input, pretrainer->pdn_input, error)
            || !ead_pretrainer_target (pretrainer, pretrainer->backbone_input, pretrainer->psi,
                                       error))
          return FALSE;
        ead_channel_stats_add (psi, EAD_TEACHER_CHANNELS, hw, pass, n, mean, var);
        report.elapsed_s = (g_get_monotonic_time () - start) / 1e6;
        report.eta_s = report.elapsed_s / report.step * (report.steps - report.step);
        if (progress != NULL)
          progress (&report, user_data);
      }
  for (int c = 0; c < EAD_TEACHER_CHANNELS; c++)
    {
      if (!(var[c] > 0.0) || !isfinite (var[c]))
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                       "target channel %d has std %g over the %d statistics samples; the target "
                       "cannot be normalised (are the backbone's weights trained?)",
                       c, sqrt (var[c]), n);
          return FALSE;
        }
      pretrainer->target_mean[c] = (float) mean[c];
      pretrainer->target_std[c] = (float) sqrt (var[c]);
    }
  return TRUE;
}

/* ---- checkpoints ---- */

/* The identity of a run: a checkpoint from a different one must not be resumed. */
static char *
run_identity (const EadPretrainer *pretrainer)
{
  const EadPretrainOptions *o = &pretrainer->options;

  return g_strdup_printf ("pretrain %s seed=%" G_GUINT64_FORMAT " steps=%d batch=%d input=%dx%d "
                          "backbone=%s layers=%s stats=%d images=%s lr=%.17g wd=%.17g%s",
                          ead_arch_name (o->arch), o->seed, o->steps, o->batch, o->input_height,
                          o->input_width, pretrainer->backbone_sha256, pretrainer->levels_text,
                          o->stats_images, pretrainer->snapshot, o->learning_rate,
                          o->weight_decay,
                          o->precision == EAD_PRECISION_BF16 ? " precision=bf16" : "");
}

static gboolean
write_checkpoint (EadPretrainer *pretrainer, GError **error)
{
  g_autoptr (EadSafetensorsWriter) writer = ead_safetensors_writer_new ();
  g_autofree char *identity = run_identity (pretrainer);
  g_autofree char *step = g_strdup_printf ("%d", pretrainer->step);
  gint64 stats_shape[1] = { EAD_TEACHER_CHANNELS };
  gint64 history_shape[1] = { MAX (pretrainer->step, 1) };

  ead_checkpoint_add_net (writer, "pdn", pretrainer->pdn);
  ead_checkpoint_add_net (writer, "adam.m", pretrainer->m);
  ead_checkpoint_add_net (writer, "adam.v", pretrainer->v);
  ead_safetensors_writer_add (writer, "target_mean", 1, stats_shape, pretrainer->target_mean);
  ead_safetensors_writer_add (writer, "target_std", 1, stats_shape, pretrainer->target_std);
  ead_safetensors_writer_add (writer, "history", 1, history_shape, pretrainer->history);
  ead_safetensors_writer_set_metadata (writer, "ead.checkpoint.step", step);
  ead_safetensors_writer_set_metadata (writer, "ead.checkpoint.run", identity);
  return ead_safetensors_writer_write (writer, pretrainer->checkpoint_path, error);
}

static gboolean
read_checkpoint (EadPretrainer *pretrainer, GError **error)
{
  g_autofree char *identity = run_identity (pretrainer);
  gint64 stats_shape[1] = { EAD_TEACHER_CHANNELS };
  gint64 history_shape[1];
  int step;
  g_autoptr (EadSafetensors) file = ead_checkpoint_open (pretrainer->checkpoint_path, identity,
                                                         pretrainer->options.steps,
                                                         "distillation", &step, error);

  if (file == NULL)
    return FALSE;
  history_shape[0] = step;
  if (!ead_checkpoint_read_net (file, "pdn", pretrainer->pdn, error)
      || !ead_checkpoint_read_net (file, "adam.m", pretrainer->m, error)
      || !ead_checkpoint_read_net (file, "adam.v", pretrainer->v, error)
      || !ead_safetensors_read (file, "target_mean", 1, stats_shape, pretrainer->target_mean, error)
      || !ead_safetensors_read (file, "target_std", 1, stats_shape, pretrainer->target_std, error)
      || !ead_safetensors_read (file, "history", 1, history_shape, pretrainer->history, error))
    return FALSE;
  pretrainer->step = step;
  pretrainer->resumed = TRUE;
  return TRUE;
}

/* ---- the result ---- */

/* The PDN's weights into the teacher: the same layers without padding, and the weights do
 * not depend on it. */
static void
copy_pdn (const EadNet *pdn, EadNet *teacher)
{
  for (int i = 0; i < teacher->n_layers; i++)
    if (teacher->layers[i].kind == EAD_LAYER_CONV)
      {
        memcpy (teacher->weight[i], pdn->weight[i],
                ead_layer_weight_count (&teacher->layers[i]) * sizeof (float));
        memcpy (teacher->bias[i], pdn->bias[i], teacher->layers[i].out_channels * sizeof (float));
      }
}

static EadModel *
teacher_model (EadPretrainer *pretrainer)
{
  const EadPretrainOptions *o = &pretrainer->options;
  EadModel *model = ead_model_new (o->arch);
  EadNet *teacher = model->teacher;
  GHashTable *metadata = model->metadata;
  int tail = MIN (o->steps, LOSS_TAIL);
  double loss = 0.0;

  copy_pdn (pretrainer->pdn, teacher);
  /* the input ead train defaults to with this teacher; the distillation's is in ead.pretrain.input */
  model->input_height = MAX (o->input_height, EAD_MIN_INPUT_SIZE);
  model->input_width = MAX (o->input_width, EAD_MIN_INPUT_SIZE);
  for (int s = o->steps - tail; s < o->steps; s++)
    loss += pretrainer->history[s] / tail;

#define SET(key, ...) g_hash_table_insert (metadata, g_strdup (key), g_strdup_printf (__VA_ARGS__))
  SET ("ead.teacher.source", "ead teacher pretrain: %s (%s), %d steps", pretrainer->backbone_name,
       pretrainer->levels_text, o->steps);
  SET ("ead.teacher.format", "ead-pretrain");
  SET ("ead.weights", "a distilled teacher only; train a model with it "
                      "(ead train --teacher)");
  SET ("ead.pretrain.backbone", "%s", pretrainer->backbone_name);
  SET ("ead.pretrain.backbone.sha256", "%s", pretrainer->backbone_sha256);
  SET ("ead.pretrain.backbone.arch", "%s", pretrainer->backbone_arch);
  SET ("ead.pretrain.layers", "%s", pretrainer->levels_text);
  SET ("ead.pretrain.backbone_input", "%dx%d", 2 * o->input_width, 2 * o->input_height);
  SET ("ead.pretrain.input", "%dx%d", o->input_width, o->input_height);
  SET ("ead.pretrain.images", "%s", pretrainer->images_dir);
  SET ("ead.pretrain.images.count", "%u", pretrainer->paths->len);
  SET ("ead.pretrain.images.snapshot", "%s", pretrainer->snapshot);
  SET ("ead.pretrain.images.unreadable", "%u", pretrainer->skipped->len);
  SET ("ead.pretrain.stats_images", "%d", o->stats_images);
  SET ("ead.pretrain.steps", "%d", o->steps);
  SET ("ead.pretrain.seed", "%" G_GUINT64_FORMAT, o->seed);
  SET ("ead.pretrain.batch", "%d", o->batch);
  SET ("ead.pretrain.learning_rate", "%g", o->learning_rate);
  SET ("ead.pretrain.weight_decay", "%g", o->weight_decay);
  SET ("ead.pretrain.precision", "%s", ead_precision_name (o->precision));
  SET ("ead.pretrain.loss.final", "%.6g", loss);
  SET ("ead.pretrain.loss.last", "%.6g", pretrainer->history[o->steps - 1]);
  if (o->command != NULL)
    SET ("ead.pretrain.command", "%s", o->command);
#undef SET
  g_hash_table_insert (metadata, g_strdup ("ead.teacher.sha256"), ead_net_digest (teacher));
  return model;
}

EadModel *
ead_pretrainer_run (EadPretrainer *pretrainer,
                    EadPretrainProgressFunc progress,
                    gpointer user_data,
                    const gint *cancel,
                    GError **error)
{
  gint64 start = g_get_monotonic_time (), training_start;
  const int steps = pretrainer->options.steps;
  int first_step;

  if (pretrainer->options.resume && pretrainer->checkpoint_path != NULL
      && g_file_test (pretrainer->checkpoint_path, G_FILE_TEST_EXISTS))
    {
      if (!read_checkpoint (pretrainer, error))
        return NULL;
    }
  else if (!target_statistics (pretrainer, progress, user_data, cancel, start, error))
    return NULL;

  training_start = g_get_monotonic_time ();
  first_step = pretrainer->step;
  while (pretrainer->step < steps)
    {
      EadPretrainProgress report = { EAD_PRETRAIN_PHASE_TRAINING };
      double training_s;

      if (cancel != NULL && g_atomic_int_get (cancel))
        {
          g_autoptr (GError) checkpoint_error = NULL;

          if (pretrainer->checkpoint_path != NULL && pretrainer->step > first_step
              && !write_checkpoint (pretrainer, &checkpoint_error))
            g_warning ("could not save the checkpoint of the cancelled run: %s",
                       checkpoint_error->message);
          g_set_error (error, G_IO_ERROR, G_IO_ERROR_CANCELLED,
                       "distillation cancelled at step %d of %d", pretrainer->step, steps);
          return NULL;
        }
      if (!train_step (pretrainer, pretrainer->step, error))
        return NULL;
      pretrainer->step++;
      if (pretrainer->checkpoint_path != NULL && pretrainer->options.checkpoint_every > 0
          && pretrainer->step % pretrainer->options.checkpoint_every == 0
          && pretrainer->step < steps && !write_checkpoint (pretrainer, error))
        return NULL;

      training_s = (g_get_monotonic_time () - training_start) / 1e6;
      report.step = pretrainer->step;
      report.steps = steps;
      report.loss = pretrainer->history[pretrainer->step - 1];
      report.elapsed_s = (g_get_monotonic_time () - start) / 1e6;
      report.eta_s = training_s / (pretrainer->step - first_step) * (steps - pretrainer->step);
      report.resumed = pretrainer->resumed;
      if (progress != NULL)
        progress (&report, user_data);
    }
  return teacher_model (pretrainer);
}

EadPrecision
ead_pretrainer_get_precision (EadPretrainer *pretrainer)
{
  return pretrainer->options.precision;
}

EadBackend *
ead_pretrainer_get_backend (EadPretrainer *pretrainer)
{
  return pretrainer->backend;
}

guint
ead_pretrainer_get_image_count (EadPretrainer *pretrainer)
{
  return pretrainer->paths->len;
}

const GPtrArray *
ead_pretrainer_get_skipped (EadPretrainer *pretrainer)
{
  return pretrainer->skipped;
}

const float *
ead_pretrainer_get_history (EadPretrainer *pretrainer, int *steps)
{
  *steps = pretrainer->step;
  return pretrainer->history;
}

void
ead_pretrainer_get_state (EadPretrainer *pretrainer,
                          EadNet **pdn,
                          EadNet **grad,
                          float **target_mean,
                          float **target_std)
{
  *pdn = pretrainer->pdn;
  *grad = pretrainer->grad;
  *target_mean = pretrainer->target_mean;
  *target_std = pretrainer->target_std;
}

EadModel *
ead_pretrain_checkpoint_teacher (const char *path, GError **error)
{
  g_autoptr (EadSafetensors) file = ead_safetensors_open (path, error);
  g_autoptr (EadModel) model = NULL;
  g_autoptr (EadNet) pdn = NULL;
  g_autofree float *history = NULL;
  g_auto (GStrv) words = NULL;
  const char *run, *step_text;
  gint64 history_shape[1];
  guint64 step = 0;
  double loss = 0.0;
  EadArch arch;
  int tail;

  if (file == NULL)
    return NULL;
  run = ead_safetensors_lookup_metadata (file, "ead.checkpoint.run");
  step_text = ead_safetensors_lookup_metadata (file, "ead.checkpoint.step");
  if (run == NULL || !g_str_has_prefix (run, "pretrain ") || step_text == NULL
      || !g_ascii_string_to_unsigned (step_text, 10, 1, G_MAXINT, &step, NULL))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: not a checkpoint of ead teacher pretrain", path);
      return NULL;
    }
  words = g_strsplit (run, " ", 3);
  if (g_strv_length (words) < 3 || !ead_arch_parse (words[1], &arch, NULL))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: the checkpoint names no teacher size ('%s')", path, run);
      return NULL;
    }
  pdn = ead_net_new (pdn_kind (arch), EAD_TEACHER_CHANNELS, TRUE);
  history_shape[0] = (gint64) step;
  history = g_new (float, step);
  if (!ead_checkpoint_read_net (file, "pdn", pdn, error)
      || !ead_safetensors_read (file, "history", 1, history_shape, history, error))
    return NULL;
  model = ead_model_new (arch);
  copy_pdn (pdn, model->teacher);
  tail = MIN ((int) step, LOSS_TAIL);
  for (int s = (int) step - tail; s < (int) step; s++)
    loss += history[s] / tail;
#define SET(key, ...) g_hash_table_insert (model->metadata, g_strdup (key), g_strdup_printf (__VA_ARGS__))
  SET ("ead.teacher.source", "ead teacher pretrain checkpoint at step %" G_GUINT64_FORMAT
       " (%s)", step, run);
  SET ("ead.teacher.format", "ead-pretrain");
  SET ("ead.weights", "a distilled teacher only; train a model with it (ead train --teacher)");
  SET ("ead.pretrain.run", "%s", run);
  SET ("ead.pretrain.checkpoint.step", "%" G_GUINT64_FORMAT, step);
  SET ("ead.pretrain.loss.final", "%.6g", loss);
  SET ("ead.pretrain.loss.last", "%.6g", history[step - 1]);
#undef SET
  g_hash_table_insert (model->metadata, g_strdup ("ead.teacher.sha256"),
                       ead_net_digest (model->teacher));
  return g_steal_pointer (&model);
}
