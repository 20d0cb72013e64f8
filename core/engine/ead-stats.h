/* ead-stats.h: exact quantiles by selection; channel statistics. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* torch.quantile (linear interpolation) of n values, by selection rather than sorting
 * and without torch's 2^24-element limit.  Reorders `values` in place.  As in PyTorch
 * the rank q * (n - 1) is formed in float32, so results match the peer exactly. */
float ead_quantile_select (float *values, size_t n, double q);

/* Two quantiles q_lo < q_hi of the same values in one call (reorders in place). */
void ead_quantiles_select (float *values, size_t n, double q_lo, double q_hi, float *lo, float *hi);

/* One image's share of a channel mean and population variance taken in two passes with
 * double accumulation (spec §3 and §5): in pass 0 each channel's mean over its hw values,
 * divided by n (the number of images), is added to mean[c]; in pass 1 the mean squared
 * deviation from mean[c], divided by n, to var[c].  maps: channels planes of hw floats. */
void ead_channel_stats_add (const float *maps, int channels, size_t hw, int pass, int n,
                            double *mean, double *var);

G_END_DECLS
