/* ead-metrics.h: the evaluation metrics of the EfficientAD paper and the MVTec AD evaluator.
 *
 * Image AU-ROC (= sklearn roc_auc_score), F1-max with its threshold (anomalib F1Max /
 * F1AdaptiveThreshold), pixel AU-ROC and AU-PRO up to a false positive rate limit (the
 * official MVTec AD evaluation script).  Every metric is exact: scores are sorted and equal
 * scores are one threshold, so ties count 1/2 in the AU-ROC.  -0.0 and +0.0 are the same
 * score; NaN scores are refused.
 *
 * Errors are EAD_ERROR_INVALID (one class missing, NaN, bad argument) or EAD_ERROR_LIMIT
 * (more than 2^32 - 1 samples, out of memory).
 */
#pragma once

#include <glib.h>
#include <stddef.h>

G_BEGIN_DECLS

/* The area under the ROC curve of scores against labels (0 = normal, nonzero = anomalous):
 * one ROC point per distinct score, from (0,0) to (1,1), trapezoid rule.  Needs both
 * classes.  Returns NAN on error. */
double ead_metric_auroc (const float *scores, const guint8 *labels, size_t n, GError **error);

/* The maximum over every distinct score tau (predicting anomalous when score >= tau) of
 * F1 = 2 P R / (P + R + 1e-10), P = precision, R = recall.  When several thresholds reach
 * the same maximum the lowest is taken, as torch.argmax does over anomalib's ascending
 * thresholds.  That tau goes to *threshold (may be NULL).  Needs at least one anomalous
 * sample.  Returns NAN on error. */
double ead_metric_f1_max (const float *scores,
                          const guint8 *labels,
                          size_t n,
                          float *threshold,
                          GError **error);

/* Pixel metrics over a test set whose images may differ in size, collected image by image
 * so the caller need not concatenate the maps.  Memory: 8 bytes per pixel, plus 12 per
 * ground-truth region. */
typedef struct _EadPixelMetrics EadPixelMetrics;

EadPixelMetrics *ead_pixel_metrics_new (void);

/* Adds one image: its anomaly map and ground-truth mask (0 = good, nonzero = defect; NULL
 * means all good), both width x height, row-major, at the same resolution.  The mask's
 * 8-connected components are the AU-PRO regions.  A bad argument, a NaN score or running
 * out of memory is remembered and reported by ead_pixel_metrics_compute; later images are
 * then ignored. */
void ead_pixel_metrics_add (EadPixelMetrics *pm,
                            const float *map,
                            const guint8 *mask,
                            int width,
                            int height);

/* Pixel AU-ROC over every pixel added (defect pixels positive), and the AU-PRO up to
 * fpr_limit (in (0, 1]; the MVTec AD convention is 0.3) divided by fpr_limit.  Either
 * output may be NULL.  Needs defect and good pixels.  May be called again after more
 * images are added. */
gboolean ead_pixel_metrics_compute (EadPixelMetrics *pm,
                                    double fpr_limit,
                                    double *pixel_auroc,
                                    double *aupro,
                                    GError **error);

/* The same over a subset of the images: images[i] (n_images = the number added) chooses
 * the i-th image added.  E.g. one defect kind against the good images, from one
 * EadPixelMetrics holding the whole test set.  Sorts the keys once for all calls; holds a
 * copy of the chosen keys while it runs. */
gboolean ead_pixel_metrics_compute_subset (EadPixelMetrics *pm,
                                           const gboolean *images,
                                           guint n_images,
                                           double fpr_limit,
                                           double *pixel_auroc,
                                           double *aupro,
                                           GError **error);

void ead_pixel_metrics_free (EadPixelMetrics *pm);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (EadPixelMetrics, ead_pixel_metrics_free)

G_END_DECLS
