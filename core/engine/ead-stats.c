#include "ead-stats.h"

#include <math.h>

static inline void
swap (float *a, float *b)
{
  float t = *a;
  *a = *b;
  *b = t;
}

/* Hoare-style quickselect with median-of-three pivots: afterwards values[k] is the
 * k-th smallest, everything before it is <= and everything after it is >=. */
static void
select_kth (float *values, size_t n, size_t k)
{
  size_t lo = 0, hi = n - 1;

  while (hi > lo)
    {
      size_t mid = lo + (hi - lo) / 2;
      size_t i = lo, j = hi;
      float pivot;

      if (values[mid] < values[lo])
        swap (&values[mid], &values[lo]);
      if (values[hi] < values[lo])
        swap (&values[hi], &values[lo]);
      if (values[hi] < values[mid])
        swap (&values[hi], &values[mid]);
      pivot = values[mid];
      while (i <= j)
        {
          while (values[i] < pivot)
            i++;
          while (values[j] > pivot)
            j--;
          if (i <= j)
            {
              swap (&values[i], &values[j]);
              i++;
              if (j == 0)
                break;
              j--;
            }
        }
      if (k <= j)
        hi = j;
      else if (k >= i)
        lo = i;
      else
        return;
    }
}

static float
min_of (const float *values, size_t n)
{
  float m = values[0];

  for (size_t i = 1; i < n; i++)
    m = MIN (m, values[i]);
  return m;
}

/* torch.lerp's two-sided formula */
static float
lerp (float a, float b, float w)
{
  return w < 0.5f ? a + w * (b - a) : b - (b - a) * (1.0f - w);
}

static void
rank (size_t n, double q, size_t *k, float *weight)
{
  float position = (float) q * (float) (n - 1);
  float below = floorf (position);

  *k = (size_t) below;
  if (*k > n - 1)
    *k = n - 1;
  *weight = position - below;
}

float
ead_quantile_select (float *values, size_t n, double q)
{
  size_t k;
  float weight, below, above;

  g_return_val_if_fail (n > 0, NAN);
  rank (n, q, &k, &weight);
  select_kth (values, n, k);
  below = values[k];
  above = k + 1 < n ? min_of (values + k + 1, n - k - 1) : below;
  return lerp (below, above, weight);
}

void
ead_quantiles_select (float *values, size_t n, double q_lo, double q_hi, float *lo, float *hi)
{
  size_t k_lo, k_hi;
  float w_lo, w_hi;

  g_return_if_fail (n > 0 && q_lo <= q_hi);
  rank (n, q_hi, &k_hi, &w_hi);
  rank (n, q_lo, &k_lo, &w_lo);
  /* select the upper rank first; the lower one then lies in the first part */
  *hi = ead_quantile_select (values, n, q_hi);
  if (k_lo == k_hi)
    {
      float above = k_lo + 1 < n ? min_of (values + k_lo + 1, n - k_lo - 1) : values[k_lo];
      *lo = lerp (values[k_lo], above, w_lo);
      return;
    }
  select_kth (values, k_hi, k_lo);
  *lo = lerp (values[k_lo], min_of (values + k_lo + 1, k_hi - k_lo), w_lo);
}

void
ead_channel_stats_add (const float *maps, int channels, size_t hw, int pass, int n,
                       double *mean, double *var)
{
#pragma omp parallel for schedule(static)
  for (int c = 0; c < channels; c++)
    {
      const float *plane = maps + (size_t) c * hw;
      double sum = 0.0;

      if (pass == 0)
        for (size_t p = 0; p < hw; p++)
          sum += plane[p];
      else
        for (size_t p = 0; p < hw; p++)
          sum += (plane[p] - mean[c]) * (plane[p] - mean[c]);
      if (pass == 0)
        mean[c] += sum / hw / n;
      else
        var[c] += sum / hw / n;
    }
}
