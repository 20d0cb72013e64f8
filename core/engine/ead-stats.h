/* ead-stats.h: exact quantiles by selection. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* torch.quantile (linear interpolation) of n values, by selection rather than sorting
 * and without torch's 2^24-element limit.  Reorders `values` in place.  As in PyTorch
 * the rank q * (n - 1) is formed in float32, so results match the peer exactly. */
float ead_quantile_select (float *values, size_t n, double q);

/* Two quantiles q_lo < q_hi of the same values in one call (reorders in place). */
void ead_quantiles_select (float *values, size_t n, double q_lo, double q_hi, float *lo, float *hi);

G_END_DECLS
