#include "ead-metrics.h"

#include <math.h>
#include <string.h>

#include "ead-error.h"

/* Every sample is one 64-bit key: the score mapped to an unsigned integer of the same order
 * in the high 32 bits, a payload in the low 32 bits (images: the label, 0 or 1; pixels: the
 * global id of the ground-truth region, or GOOD_PIXEL | the image's index outside every
 * region, so that a subset of the images can be picked out of the sorted keys).  One sort of
 * the keys by their high half serves every metric, and equal scores end up next to each
 * other, which is all the threshold sweep needs: the order inside a run of equal scores does
 * not matter. */

/* The AU-ROC is summed exactly as 2 N P AUC in 64 bits, which is below n^2 / 2, so at most
 * 2^32 - 1 samples keep it below 2^63.  The payload being 32 bits wide needs the same. */
#define MAX_SAMPLES ((guint64) G_MAXUINT32)

/* Payloads from here on are good pixels; region ids and image indices stay below. */
#define GOOD_PIXEL 0x80000000u

/* The F1 denominator epsilon of anomalib's F1Max and F1AdaptiveThreshold. */
#define F1_EPSILON 1e-10

/* Runs this short are sorted by insertion, which beats another radix pass. */
#define INSERTION_SORT_MAX 48

struct _EadPixelMetrics {
  guint64 *keys;
  size_t n_keys;
  size_t keys_capacity;
  gboolean sorted;      /* keys sorted since the last image was added */
  double *inv_size;     /* 1 / |region| by global region id; [0] unused */
  guint32 *region_image; /* the image of each region id */
  size_t n_regions;     /* ids 1..n_regions are used */
  size_t inv_capacity;  /* of inv_size and region_image */
  guint64 n_defect;     /* pixels inside a region */
  guint64 n_good;       /* pixels outside every region */
  guint n_images;
  GError *error;        /* the first bad image, reported by compute */
};

static guint32
score_to_key (float score)
{
  guint32 bits;

  /* numpy compares -0.0 equal to +0.0, so the MVTec script sees one threshold */
  if (score == 0.0f)
    score = 0.0f;
  memcpy (&bits, &score, sizeof bits);
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

static float
key_to_score (guint32 key)
{
  guint32 bits = (key & 0x80000000u) ? key & 0x7fffffffu : ~key;
  float score;

  memcpy (&score, &bits, sizeof score);
  return score;
}

static void
insertion_sort (guint64 *keys, size_t n)
{
  for (size_t i = 1; i < n; i++)
    {
      guint64 v = keys[i];
      size_t j = i;

      for (; j > 0 && (keys[j - 1] >> 32) > (v >> 32); j--)
        keys[j] = keys[j - 1];
      keys[j] = v;
    }
}

/* In-place MSD radix sort (American flag sort) by the byte at `shift`, then the lower bytes
 * of the high half.  In place because the key array of a full-resolution test set can be a
 * gigabyte, too much to double for an LSD sort's buffer. */
static void
radix_sort (guint64 *keys, size_t n, int shift)
{
  size_t count[256] = { 0 };
  size_t next[256];
  size_t end[256];
  size_t pos = 0;

  if (n <= INSERTION_SORT_MAX)
    {
      insertion_sort (keys, n);
      return;
    }
  for (size_t i = 0; i < n; i++)
    count[(keys[i] >> shift) & 0xff]++;
  for (int b = 0; b < 256; b++)
    {
      next[b] = pos;
      pos += count[b];
      end[b] = pos;
    }
  for (unsigned b = 0; b < 256; b++)
    while (next[b] < end[b])
      {
        guint64 v = keys[next[b]];
        unsigned d = (v >> shift) & 0xff;

        /* follow the cycle of displaced keys until one belongs here */
        while (d != b)
          {
            guint64 t = keys[next[d]];

            keys[next[d]++] = v;
            v = t;
            d = (v >> shift) & 0xff;
          }
        keys[next[b]++] = v;
      }
  if (shift == 32)
    return;
  pos = 0;
  for (int b = 0; b < 256; b++)
    {
      if (count[b] > 1)
        radix_sort (keys + pos, count[b], shift - 8);
      pos += count[b];
    }
}

static void
sort_keys (guint64 *keys, size_t n)
{
  radix_sort (keys, n, 56);
}

/* The trapezoid area under the PRO curve up to the FPR limit, fed point by point in
 * order of non-decreasing FPR, as the MVTec script's trapezoid(x, y, x_max): every segment
 * with both ends at or below the limit, plus, when no point lies exactly on the limit, the
 * part of the segment that crosses it with PRO linearly interpolated. */
typedef struct {
  double limit;
  double x;
  double y;
  double area;
  gboolean done;
} ProArea;

static void
pro_area_add (ProArea *pa, double x, double y)
{
  if (pa->done)
    return;
  if (x <= pa->limit)
    {
      pa->area += 0.5 * (y + pa->y) * (x - pa->x);
    }
  else
    {
      if (pa->x < pa->limit)
        {
          double y_at = pa->y + (y - pa->y) * (pa->limit - pa->x) / (x - pa->x);

          pa->area += 0.5 * (y_at + pa->y) * (pa->limit - pa->x);
        }
      pa->done = TRUE;
    }
  pa->x = x;
  pa->y = y;
}

typedef struct {
  guint64 n_pos;          /* anomalous samples, or defect pixels */
  guint64 n_neg;          /* normal samples, or pixels outside every region */
  const double *inv_size; /* 1 / |region| by payload of a positive; NULL: no AU-PRO */
  size_t n_regions;
  double fpr_limit;
  gboolean want_f1;
} SweepInput;

typedef struct {
  double auroc;
  double f1_max;
  float f1_threshold;
  double aupro;
} SweepResult;

/* Lowers the threshold through the sorted keys one distinct score at a time (a run of
 * equal scores is one step) and integrates the curves on the way. */
static void
sweep (const guint64 *keys, size_t n, const SweepInput *in, SweepResult *out)
{
  guint64 tp = 0;
  guint64 fp = 0;
  guint64 auroc2 = 0;  /* 2 N P AUC: the trapezoids' sum, exact in integers */
  double pro_sum = 0.0;
  double best_f1 = -1.0;
  float best_tau = 0.0f;
  ProArea pa = { .limit = in->fpr_limit };
  size_t i = n;

  while (i > 0)
    {
      guint32 score = (guint32) (keys[i - 1] >> 32);
      guint64 tp_before = tp;
      guint64 fp_before = fp;

      do
        {
          guint32 payload = (guint32) keys[i - 1];
          gboolean positive = payload != 0 && payload < GOOD_PIXEL;

          fp += !positive;
          tp += positive;
          if (in->inv_size != NULL && positive)
            pro_sum += in->inv_size[payload];
          i--;
        }
      while (i > 0 && (guint32) (keys[i - 1] >> 32) == score);

      auroc2 += (fp - fp_before) * (tp + tp_before);

      if (in->want_f1)
        {
          double precision = (double) tp / (double) (tp + fp);
          double recall = (double) tp / (double) in->n_pos;
          double f1 = 2.0 * precision * recall / (precision + recall + F1_EPSILON);

          /* >= keeps the lowest of equal maxima (torch.argmax over ascending thresholds) */
          if (f1 >= best_f1)
            {
              best_f1 = f1;
              best_tau = key_to_score (score);
            }
        }

      /* The MVTec script turns the false positive counts into float32 before dividing, we
       * divide in double: its rounding moves each FPR by about 1e-7 relative and the AU-PRO
       * by less than 1e-6 (the fixtures: a few 1e-9). */
      if (in->inv_size != NULL)
        pro_area_add (&pa, MIN ((double) fp / (double) in->n_neg, 1.0),
                      MIN (pro_sum / (double) in->n_regions, 1.0));
    }
  if (in->inv_size != NULL)
    pro_area_add (&pa, 1.0, 1.0);

  out->auroc = in->n_pos > 0 && in->n_neg > 0
    ? (double) auroc2 / (2.0 * (double) in->n_pos * (double) in->n_neg)
    : NAN;
  out->f1_max = best_f1;
  out->f1_threshold = best_tau;
  out->aupro = in->inv_size != NULL ? pa.area / in->fpr_limit : NAN;
}

/* Builds the sorted keys of an image-level score list; NULL with the error set on bad
 * input. */
static guint64 *
image_keys (const float *scores, const guint8 *labels, size_t n, guint64 *n_pos, GError **error)
{
  guint64 *keys;

  if (n == 0 || scores == NULL || labels == NULL)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID, "no scores to evaluate");
      return NULL;
    }
  if ((guint64) n > MAX_SAMPLES)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_LIMIT,
                   "%zu scores are more than the %" G_GUINT64_FORMAT " supported", n, MAX_SAMPLES);
      return NULL;
    }
  keys = g_try_new (guint64, n);
  if (keys == NULL)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_LIMIT, "out of memory for %zu scores", n);
      return NULL;
    }
  *n_pos = 0;
  for (size_t i = 0; i < n; i++)
    {
      if (isnan (scores[i]))
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID, "score %zu is NaN", i);
          g_free (keys);
          return NULL;
        }
      keys[i] = (guint64) score_to_key (scores[i]) << 32 | (labels[i] != 0);
      *n_pos += labels[i] != 0;
    }
  sort_keys (keys, n);
  return keys;
}

double
ead_metric_auroc (const float *scores, const guint8 *labels, size_t n, GError **error)
{
  g_autofree guint64 *keys = NULL;
  guint64 n_pos;
  SweepInput in = { 0 };
  SweepResult out;

  keys = image_keys (scores, labels, n, &n_pos, error);
  if (keys == NULL)
    return NAN;
  if (n_pos == 0 || n_pos == n)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "the AU-ROC needs normal and anomalous samples, but all %zu are %s", n,
                   n_pos == 0 ? "normal" : "anomalous");
      return NAN;
    }
  in.n_pos = n_pos;
  in.n_neg = n - n_pos;
  sweep (keys, n, &in, &out);
  return out.auroc;
}

double
ead_metric_f1_max (const float *scores,
                   const guint8 *labels,
                   size_t n,
                   float *threshold,
                   GError **error)
{
  g_autofree guint64 *keys = NULL;
  guint64 n_pos;
  SweepInput in = { .want_f1 = TRUE };
  SweepResult out;

  keys = image_keys (scores, labels, n, &n_pos, error);
  if (keys == NULL)
    return NAN;
  if (n_pos == 0)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "F1-max needs anomalous samples, but all %zu are normal", n);
      return NAN;
    }
  in.n_pos = n_pos;
  in.n_neg = n - n_pos;
  sweep (keys, n, &in, &out);
  if (threshold != NULL)
    *threshold = out.f1_threshold;
  return out.f1_max;
}

EadPixelMetrics *
ead_pixel_metrics_new (void)
{
  EadPixelMetrics *pm = g_new0 (EadPixelMetrics, 1);

  pm->inv_capacity = 64;
  pm->inv_size = g_new0 (double, pm->inv_capacity);
  pm->region_image = g_new0 (guint32, pm->inv_capacity);
  return pm;
}

void
ead_pixel_metrics_free (EadPixelMetrics *pm)
{
  if (pm == NULL)
    return;
  g_free (pm->keys);
  g_free (pm->inv_size);
  g_free (pm->region_image);
  g_clear_error (&pm->error);
  g_free (pm);
}

/* Returns array (of element_size bytes each) grown to hold at least `needed` elements, by
 * half again at least, so that a test set added image by image costs few copies; NULL when
 * memory runs out, array is then unchanged. */
static void *
grow (void *array, size_t *capacity, size_t needed, size_t element_size)
{
  size_t new_capacity;
  void *p;

  if (needed <= *capacity)
    return array;
  new_capacity = MAX (needed, *capacity + *capacity / 2);
  p = g_try_realloc_n (array, new_capacity, element_size);
  if (p != NULL)
    *capacity = new_capacity;
  return p;
}

/* Grows inv_size and region_image together to hold at least `needed` region ids. */
static gboolean
grow_regions (EadPixelMetrics *pm, size_t needed)
{
  size_t capacity = pm->inv_capacity;
  double *inv_size = grow (pm->inv_size, &capacity, needed, sizeof (double));
  guint32 *region_image;

  if (inv_size == NULL)
    return FALSE;
  pm->inv_size = inv_size;
  capacity = pm->inv_capacity;
  region_image = grow (pm->region_image, &capacity, needed, sizeof (guint32));
  if (region_image == NULL)
    return FALSE;
  pm->region_image = region_image;
  pm->inv_capacity = capacity;
  return TRUE;
}

static guint32
find_root (guint32 *parent, guint32 l)
{
  while (parent[l] != l)
    {
      parent[l] = parent[parent[l]];
      l = parent[l];
    }
  return l;
}

static void
unite (guint32 *parent, guint32 a, guint32 b)
{
  a = find_root (parent, a);
  b = find_root (parent, b);
  /* the smaller label is the root, so a root is never numbered after its members */
  if (a < b)
    parent[b] = a;
  else if (b < a)
    parent[a] = b;
}

/* Labels the 8-connected components of the nonzero pixels of mask, as scipy.ndimage.label
 * with a 3x3 all-ones structure: two raster passes with union-find.  On return labels[p]
 * is 0 outside the mask, else 1..n (the returned count), and sizes[k] (k = 1..n) is the
 * pixel count of component k.  parent and sizes have room for one more than the number of
 * nonzero mask pixels, which bounds the provisional labels. */
static guint32
label_components (const guint8 *mask,
                  int width,
                  int height,
                  guint32 *labels,
                  guint32 *parent,
                  guint32 *sizes)
{
  guint32 n_provisional = 0;
  guint32 n = 0;

  for (int y = 0; y < height; y++)
    for (int x = 0; x < width; x++)
      {
        size_t p = (size_t) y * width + x;
        guint32 l = 0;

        if (mask[p] == 0)
          {
            labels[p] = 0;
            continue;
          }
        /* the neighbours already visited: W, NW, N, NE */
        if (x > 0 && labels[p - 1] != 0)
          l = labels[p - 1];
        if (y > 0)
          {
            const guint32 *up = labels + p - width;

            for (int dx = -1; dx <= 1; dx++)
              {
                if (x + dx < 0 || x + dx >= width || up[dx] == 0)
                  continue;
                if (l == 0)
                  l = up[dx];
                else
                  unite (parent, l, up[dx]);
              }
          }
        if (l == 0)
          {
            l = ++n_provisional;
            parent[l] = l;
          }
        labels[p] = l;
      }

  /* Number the roots 1..n in place.  Every parent is at most its child (roots are the
   * smaller labels, path halving only moves parents down), so when label l comes, the
   * entry of its parent already holds the number of their root. */
  for (guint32 l = 1; l <= n_provisional; l++)
    parent[l] = parent[l] == l ? ++n : parent[parent[l]];
  memset (sizes, 0, ((size_t) n + 1) * sizeof *sizes);
  for (size_t p = 0; p < (size_t) width * height; p++)
    if (labels[p] != 0)
      {
        labels[p] = parent[labels[p]];
        sizes[labels[p]]++;
      }
  return n;
}

void
ead_pixel_metrics_add (EadPixelMetrics *pm,
                       const float *map,
                       const guint8 *mask,
                       int width,
                       int height)
{
  g_autofree guint32 *labels = NULL;
  guint32 *parent;
  guint32 *sizes = NULL;
  guint image;
  size_t n_pixels;
  size_t n_set = 0;
  guint32 n_components = 0;
  guint64 *keys;

  g_return_if_fail (pm != NULL);

  if (pm->error != NULL)
    return;
  image = pm->n_images++;
  if (image >= GOOD_PIXEL)
    {
      g_set_error (&pm->error, EAD_ERROR, EAD_ERROR_LIMIT, "more than %u images", GOOD_PIXEL);
      return;
    }
  if (map == NULL)
    {
      g_set_error (&pm->error, EAD_ERROR, EAD_ERROR_INVALID, "image %u: no anomaly map", image);
      return;
    }
  if (width <= 0 || height <= 0)
    {
      g_set_error (&pm->error, EAD_ERROR, EAD_ERROR_INVALID,
                   "image %u: the anomaly map is %d x %d pixels", image, width, height);
      return;
    }
  n_pixels = (size_t) width * (size_t) height;
  if ((guint64) pm->n_keys + n_pixels > MAX_SAMPLES)
    {
      g_set_error (&pm->error, EAD_ERROR, EAD_ERROR_LIMIT,
                   "image %u: more than %" G_GUINT64_FORMAT " pixels in all", image, MAX_SAMPLES);
      return;
    }
  keys = grow (pm->keys, &pm->keys_capacity, pm->n_keys + n_pixels, sizeof (guint64));
  if (keys == NULL)
    {
      g_set_error (&pm->error, EAD_ERROR, EAD_ERROR_LIMIT,
                   "image %u: out of memory for %zu pixels", image, pm->n_keys + n_pixels);
      return;
    }
  pm->keys = keys;

  if (mask != NULL)
    for (size_t p = 0; p < n_pixels; p++)
      n_set += mask[p] != 0;
  if (n_set > 0)
    {
      /* one buffer: the label image, then union-find parents and region sizes */
      labels = g_try_new (guint32, n_pixels + 2 * (n_set + 1));
      if (labels == NULL)
        {
          g_set_error (&pm->error, EAD_ERROR, EAD_ERROR_LIMIT,
                       "image %u: out of memory for labelling %zu pixels", image, n_pixels);
          return;
        }
      parent = labels + n_pixels;
      sizes = parent + n_set + 1;
      n_components = label_components (mask, width, height, labels, parent, sizes);
      if (pm->n_regions + n_components >= GOOD_PIXEL)
        {
          g_set_error (&pm->error, EAD_ERROR, EAD_ERROR_LIMIT,
                       "image %u: more than %u ground-truth regions in all", image,
                       GOOD_PIXEL - 1);
          return;
        }
      if (!grow_regions (pm, pm->n_regions + n_components + 1))
        {
          g_set_error (&pm->error, EAD_ERROR, EAD_ERROR_LIMIT,
                       "image %u: out of memory for %zu regions", image,
                       pm->n_regions + n_components);
          return;
        }
    }

  keys = pm->keys + pm->n_keys;
  for (size_t p = 0; p < n_pixels; p++)
    {
      guint32 payload = GOOD_PIXEL | image;

      if (isnan (map[p]))
        {
          g_set_error (&pm->error, EAD_ERROR, EAD_ERROR_INVALID,
                       "image %u: the anomaly map is NaN at (%zu, %zu)", image,
                       p % (size_t) width, p / (size_t) width);
          return;
        }
      if (labels != NULL && labels[p] != 0)
        payload = (guint32) pm->n_regions + labels[p];
      keys[p] = (guint64) score_to_key (map[p]) << 32 | payload;
    }

  for (guint32 k = 1; k <= n_components; k++)
    {
      pm->inv_size[pm->n_regions + k] = 1.0 / (double) sizes[k];
      pm->region_image[pm->n_regions + k] = image;
    }
  pm->n_regions += n_components;
  pm->n_keys += n_pixels;
  pm->sorted = FALSE;
  pm->n_defect += n_set;
  pm->n_good += n_pixels - n_set;
}

gboolean
ead_pixel_metrics_compute (EadPixelMetrics *pm,
                           double fpr_limit,
                           double *pixel_auroc,
                           double *aupro,
                           GError **error)
{
  return ead_pixel_metrics_compute_subset (pm, NULL, 0, fpr_limit, pixel_auroc, aupro, error);
}

/* The image a key of pm belongs to. */
static guint32
key_image (const EadPixelMetrics *pm, guint64 key)
{
  guint32 payload = (guint32) key;

  return payload >= GOOD_PIXEL ? payload - GOOD_PIXEL : pm->region_image[payload];
}

gboolean
ead_pixel_metrics_compute_subset (EadPixelMetrics *pm,
                                  const gboolean *images,
                                  guint n_images,
                                  double fpr_limit,
                                  double *pixel_auroc,
                                  double *aupro,
                                  GError **error)
{
  g_autofree guint64 *subset = NULL;
  const guint64 *keys;
  size_t n_keys;
  guint64 n_defect, n_good;
  size_t n_regions;
  guint n_chosen;
  SweepInput in;
  SweepResult out;

  g_return_val_if_fail (pm != NULL, FALSE);

  if (pm->error != NULL)
    {
      g_propagate_error (error, g_error_copy (pm->error));
      return FALSE;
    }
  if (!(fpr_limit > 0.0 && fpr_limit <= 1.0))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "the AU-PRO false positive rate limit must be in (0, 1], not %g", fpr_limit);
      return FALSE;
    }
  if (images != NULL && n_images != pm->n_images)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "the subset names %u images, but %u were added", n_images, pm->n_images);
      return FALSE;
    }
  n_chosen = pm->n_images;
  if (images != NULL)
    {
      n_chosen = 0;
      for (guint i = 0; i < n_images; i++)
        n_chosen += images[i] != FALSE;
    }
  if (n_chosen == 0)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "pixel AU-ROC and AU-PRO need images, but none was %s",
                   images != NULL ? "chosen" : "added");
      return FALSE;
    }

  if (!pm->sorted)
    sort_keys (pm->keys, pm->n_keys);
  pm->sorted = TRUE;
  keys = pm->keys;
  n_keys = pm->n_keys;
  n_defect = pm->n_defect;
  n_good = pm->n_good;
  n_regions = pm->n_regions;
  /* the chosen images' keys, still in order */
  if (images != NULL && n_chosen < pm->n_images)
    {
      n_keys = 0;
      for (size_t k = 0; k < pm->n_keys; k++)
        n_keys += images[key_image (pm, pm->keys[k])] != FALSE;
      subset = g_try_new (guint64, MAX (n_keys, 1));
      if (subset == NULL)
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_LIMIT,
                       "out of memory for a subset of %zu pixels", n_keys);
          return FALSE;
        }
      n_keys = 0;
      n_defect = n_good = 0;
      for (size_t k = 0; k < pm->n_keys; k++)
        if (images[key_image (pm, pm->keys[k])])
          {
            subset[n_keys++] = pm->keys[k];
            if ((guint32) pm->keys[k] < GOOD_PIXEL)
              n_defect++;
            else
              n_good++;
          }
      n_regions = 0;
      for (size_t r = 1; r <= pm->n_regions; r++)
        n_regions += images[pm->region_image[r]] != FALSE;
      keys = subset;
    }
  if (n_defect == 0)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "pixel AU-ROC and AU-PRO need defect pixels, but every ground-truth mask "
                   "is empty (images %s: %u)", images != NULL ? "chosen" : "added", n_chosen);
      return FALSE;
    }
  if (n_good == 0)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "pixel AU-ROC and AU-PRO need good pixels, but all %" G_GUINT64_FORMAT
                   " pixels are defects", n_defect);
      return FALSE;
    }

  in = (SweepInput) {
    .n_pos = n_defect,
    .n_neg = n_good,
    .inv_size = pm->inv_size,
    .n_regions = n_regions,
    .fpr_limit = fpr_limit,
  };
  sweep (keys, n_keys, &in, &out);
  if (pixel_auroc != NULL)
    *pixel_auroc = out.auroc;
  if (aupro != NULL)
    *aupro = out.aupro;
  return TRUE;
}
