/* test-metrics.c: the evaluation metrics (spec section 8).
 *
 * Small cases are worked out by hand in the comments.  The fixtures in
 * tests/fixtures/metrics come from make-metrics-fixtures.py (numpy, scipy.stats.rankdata,
 * scipy.ndimage.label and the MVTec AD evaluator's own compute_pro and trapezoid) and are
 * read from $EAD_TEST_FIXTURES, else from G_TEST_SRCDIR/fixtures.  A larger random test set
 * with quantised scores is checked against a histogram computation that needs no sort.
 */
#include <glib.h>
#include <json-glib/json-glib.h>
#include <math.h>
#include <string.h>

#include "ead-error.h"
#include "ead-metrics.h"

#define IMAGE_TOL 1e-6
#define PIXEL_TOL 1e-5
/* exact arithmetic on small integers: only the rounding of the divisions remains */
#define HAND_TOL 1e-12

static double
auroc_ok (const float *scores, const guint8 *labels, size_t n)
{
  g_autoptr (GError) error = NULL;
  double auroc = ead_metric_auroc (scores, labels, n, &error);

  g_assert_no_error (error);
  return auroc;
}

static double
f1_ok (const float *scores, const guint8 *labels, size_t n, float *threshold)
{
  g_autoptr (GError) error = NULL;
  double f1 = ead_metric_f1_max (scores, labels, n, threshold, &error);

  g_assert_no_error (error);
  return f1;
}

static void
compute_ok (EadPixelMetrics *pm, double fpr_limit, double *auroc, double *aupro)
{
  g_autoptr (GError) error = NULL;

  g_assert_true (ead_pixel_metrics_compute (pm, fpr_limit, auroc, aupro, &error));
  g_assert_no_error (error);
}

static void
assert_compute_error (EadPixelMetrics *pm, double fpr_limit, EadError code, const char *fragment)
{
  g_autoptr (GError) error = NULL;
  double auroc = -1.0, aupro = -1.0;

  g_assert_false (ead_pixel_metrics_compute (pm, fpr_limit, &auroc, &aupro, &error));
  g_assert_error (error, EAD_ERROR, (int) code);
  g_test_message ("%s", error->message);
  if (strstr (error->message, fragment) == NULL)
    g_error ("expected \"%s\" in the message \"%s\"", fragment, error->message);
  g_assert_cmpfloat (auroc, ==, -1.0);
  g_assert_cmpfloat (aupro, ==, -1.0);
}

/* Image AU-ROC */

static void
test_auroc_basic (void)
{
  /* sklearn's roc_auc_score example.  Pairs (anomalous, normal): 0.35 > 0.1, 0.35 < 0.4,
   * 0.8 > 0.1, 0.8 > 0.4: 3 of 4 won, 0.75.  As a sweep: tau 0.8 -> (0, 1/2), 0.4 ->
   * (1/2, 1/2), 0.35 -> (1/2, 1), 0.1 -> (1, 1): area 1/2 * 1/2 + 1/2 * 1 = 0.75. */
  static const float scores[] = { 0.1f, 0.4f, 0.35f, 0.8f };
  static const guint8 labels[] = { 0, 0, 1, 1 };
  /* perfect and inverted separation */
  static const float sep[] = { 0.1f, 0.2f, 0.8f, 0.9f };
  static const guint8 sep_up[] = { 0, 0, 1, 1 };
  static const guint8 sep_down[] = { 1, 1, 0, 0 };
  /* negative scores and infinities (the order of the float bit patterns is reversed below
   * zero).  Anomalous -1e-30 beats -inf and -2.5 (2), +inf beats all three normals (3):
   * 5 of 6 pairs.  Labels other than 0 and 1 mean anomalous. */
  static const float signed_scores[] = { -INFINITY, -2.5f, -1e-30f, 3.0f, INFINITY };
  static const guint8 signed_labels[] = { 0, 0, 7, 0, 255 };

  g_assert_cmpfloat_with_epsilon (auroc_ok (scores, labels, 4), 0.75, HAND_TOL);
  g_assert_cmpfloat (auroc_ok (sep, sep_up, 4), ==, 1.0);
  g_assert_cmpfloat (auroc_ok (sep, sep_down, 4), ==, 0.0);
  g_assert_cmpfloat_with_epsilon (auroc_ok (signed_scores, signed_labels, 5), 5.0 / 6.0,
                                  HAND_TOL);
}

static void
test_auroc_ties (void)
{
  /* Anomalous 0.5, 0.9, 0.5; normal 0.5, 0.2.  Pairs: 0.5 vs 0.5 = 1/2, 0.5 vs 0.2 = 1,
   * twice; 0.9 beats both: 1/2 + 1 + 1/2 + 1 + 2 = 5 of 6.  As a sweep with the tie as one
   * step: tau 0.9 -> (0, 1/3), 0.5 -> (1/2, 1) (a diagonal segment), 0.2 -> (1, 1): area
   * 1/2 * (1/3 + 1) / 2 + 1/2 * 1 = 1/3 + 1/2 = 5/6.  Taking the tied scores one at a time
   * would give 4/6 or 6/6 depending on their order. */
  static const float scores[] = { 0.5f, 0.5f, 0.2f, 0.9f, 0.5f };
  static const guint8 labels[] = { 1, 0, 0, 1, 1 };
  static const float equal[] = { 0.3f, 0.3f, 0.3f, 0.3f };
  static const guint8 equal_labels[] = { 0, 1, 0, 1 };
  /* -0.0 and +0.0 are one score (numpy compares them equal): 1/2, not 1 or 0 */
  static const float zeros[] = { -0.0f, 0.0f };
  static const guint8 zero_labels_a[] = { 0, 1 };
  static const guint8 zero_labels_b[] = { 1, 0 };

  g_assert_cmpfloat_with_epsilon (auroc_ok (scores, labels, 5), 5.0 / 6.0, HAND_TOL);
  g_assert_cmpfloat (auroc_ok (equal, equal_labels, 4), ==, 0.5);
  g_assert_cmpfloat (auroc_ok (zeros, zero_labels_a, 2), ==, 0.5);
  g_assert_cmpfloat (auroc_ok (zeros, zero_labels_b, 2), ==, 0.5);
}

static void
test_auroc_errors (void)
{
  static const float scores[] = { 0.1f, NAN, 0.3f };
  static const float good_scores[] = { 0.1f, 0.2f, 0.3f };
  static const guint8 mixed[] = { 0, 1, 1 };
  static const guint8 normal[] = { 0, 0, 0 };
  static const guint8 anomalous[] = { 1, 2, 3 };
  float threshold = -1.0f;

  {
    g_autoptr (GError) error = NULL;

    g_assert_true (isnan (ead_metric_auroc (good_scores, normal, 3, &error)));
    g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
    g_test_message ("%s", error->message);
    g_assert_nonnull (strstr (error->message, "all 3 are normal"));
  }
  {
    g_autoptr (GError) error = NULL;

    g_assert_true (isnan (ead_metric_auroc (good_scores, anomalous, 3, &error)));
    g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
    g_assert_nonnull (strstr (error->message, "all 3 are anomalous"));
  }
  {
    g_autoptr (GError) error = NULL;

    g_assert_true (isnan (ead_metric_auroc (scores, mixed, 3, &error)));
    g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
    g_test_message ("%s", error->message);
    g_assert_nonnull (strstr (error->message, "score 1 is NaN"));
  }
  {
    g_autoptr (GError) error = NULL;

    g_assert_true (isnan (ead_metric_auroc (good_scores, mixed, 0, &error)));
    g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
  }
  {
    g_autoptr (GError) error = NULL;

    g_assert_true (isnan (ead_metric_f1_max (good_scores, normal, 3, &threshold, &error)));
    g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
    g_test_message ("%s", error->message);
    g_assert_cmpfloat (threshold, ==, -1.0f);
  }
  {
    g_autoptr (GError) error = NULL;

    g_assert_true (isnan (ead_metric_f1_max (scores, mixed, 3, NULL, &error)));
    g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
  }
}

/* F1-max */

static void
test_f1_max (void)
{
  /* 0.9(+) 0.8(-) 0.7(+) 0.1(-), 2 anomalous:
   *   tau 0.9: TP 1 FP 0, P = 1,   R = 1/2, F1 = 1 / 1.5     = 0.667
   *   tau 0.8: TP 1 FP 1, P = 1/2, R = 1/2, F1 = 0.5 / 1     = 0.5
   *   tau 0.7: TP 2 FP 1, P = 2/3, R = 1,   F1 = 4/3 / (5/3) = 0.8   <- max
   *   tau 0.1: TP 2 FP 2, P = 1/2, R = 1,   F1 = 1 / 1.5     = 0.667
   * The 1e-10 in the denominator moves 0.8 by 5e-11. */
  static const float scores[] = { 0.9f, 0.8f, 0.7f, 0.1f };
  static const guint8 labels[] = { 1, 0, 1, 0 };
  /* Ties in the scores: 0.5(+) 0.5(-) 0.3(+) 0.3(+) 0.1(-), 3 anomalous:
   *   tau 0.5: TP 1 FP 1, P = 1/2, R = 1/3, F1 = (1/3) / (5/6) = 0.4
   *   tau 0.3: TP 3 FP 1, P = 3/4, R = 1,   F1 = 1.5 / 1.75    = 6/7  <- max
   *   tau 0.1: TP 3 FP 2, P = 3/5, R = 1,   F1 = 1.2 / 1.6     = 0.75 */
  static const float tied[] = { 0.5f, 0.5f, 0.3f, 0.3f, 0.1f };
  static const guint8 tied_labels[] = { 1, 0, 1, 1, 0 };
  /* Two thresholds with bit-identical F1: 0.9(+) 0.8(-) 0.7(-) 0.6(+):
   *   tau 0.9: P = 1,   R = 1/2: 2 * 0.5 / (1.5 + 1e-10)
   *   tau 0.6: P = 1/2, R = 1:   2 * 0.5 / (1.5 + 1e-10), the same
   * anomalib's torch.argmax over ascending thresholds picks the first, 0.6. */
  static const float equal_f1[] = { 0.9f, 0.8f, 0.7f, 0.6f };
  static const guint8 equal_f1_labels[] = { 1, 0, 0, 1 };
  /* no normal sample: P = R = 1 at the lowest score */
  static const float all_anomalous[] = { 0.2f, 0.4f };
  static const guint8 all_anomalous_labels[] = { 1, 1 };
  float threshold = 0.0f;

  g_assert_cmpfloat_with_epsilon (f1_ok (scores, labels, 4, &threshold), 0.8, 1e-9);
  g_assert_cmpfloat (threshold, ==, 0.7f);
  g_assert_cmpfloat_with_epsilon (f1_ok (tied, tied_labels, 5, &threshold), 6.0 / 7.0, 1e-9);
  g_assert_cmpfloat (threshold, ==, 0.3f);
  g_assert_cmpfloat_with_epsilon (f1_ok (equal_f1, equal_f1_labels, 4, &threshold), 2.0 / 3.0,
                                  1e-9);
  g_assert_cmpfloat (threshold, ==, 0.6f);
  g_assert_cmpfloat_with_epsilon (f1_ok (all_anomalous, all_anomalous_labels, 2, &threshold),
                                  1.0, 1e-9);
  g_assert_cmpfloat (threshold, ==, 0.2f);
  g_assert_cmpfloat_with_epsilon (f1_ok (scores, labels, 4, NULL), 0.8, 1e-9);
}

/* Pixel AU-ROC and AU-PRO, by hand */

static void
test_pixel_diagonal_region (void)
{
  /* One 4x4 image.  The defect pixels (0,0), (1,1), (1,2) (row, column) touch only
   * diagonally at (0,0)-(1,1): ONE 8-connected region of 3 pixels (4-connectivity would
   * make two, of 1 and 2 pixels).  The 13 good pixels have distinct scores; the defect
   * pixel 0.5 ties with the good pixel 0.5. */
  static const float map[16] = {
    0.9f,  0.8f,  0.7f,  0.6f,
    0.5f,  0.5f,  0.35f, 0.2f,
    0.1f,  0.3f,  0.0f,  -0.1f,
    -0.2f, -0.3f, -0.4f, -0.5f,
  };
  static const guint8 mask[16] = {
    1, 0, 0, 0,
    0, 1, 1, 0,
    0, 0, 0, 0,
    0, 0, 0, 0,
  };
  g_autoptr (EadPixelMetrics) pm = ead_pixel_metrics_new ();
  double auroc, aupro;

  ead_pixel_metrics_add (pm, map, mask, 4, 4);
  compute_ok (pm, 0.3, &auroc, &aupro);

  /* Pixel AU-ROC, 3 defect x 13 good pixels: 0.9 beats all 13; 0.5 beats the 9 below 0.5
   * and ties one: 9.5; 0.35 beats the 9 at 0.3 and below.  (13 + 9.5 + 9) / 39. */
  g_assert_cmpfloat_with_epsilon (auroc, 31.5 / 39.0, HAND_TOL);

  /* PRO curve, N_ok = 13, R = 1, |region| = 3, thresholds descending:
   *   0.9 (defect)        -> (0,     1/3)
   *   0.8, 0.7, 0.6       -> (1/13, 1/3) (2/13, 1/3) (3/13, 1/3)
   *   0.5 (good + defect) -> (4/13, 2/3)
   *   0.35 (defect)       -> (4/13, 1)    ... then on to (1, 1)
   * 0.3 lies between 3/13 = 0.2308 and 4/13 = 0.3077, at t = (0.3 - 3/13) * 13 = 0.9 of
   * that segment, where PRO = 1/3 + 0.9 / 3 = 19/30.
   * Area = 3/13 * 1/3 + 1/2 * (19/30 + 1/3) * (0.3 - 3/13)
   *      = 1/13 + 1/2 * 29/30 * 0.9/13 = 600/7800 + 261/7800 = 861/7800, / 0.3 = 861/2340.
   * With 4-connectivity (regions of 1 and 2 pixels, R = 2) the curve would start at PRO
   * 1/2 and the AU-PRO would be 0.526. */
  g_assert_cmpfloat_with_epsilon (aupro, 861.0 / 2340.0, HAND_TOL);
}

/* Image 1 is 5 wide, 3 high:
 *     map                          mask
 *     0.9  0.4  0.1  0.3  0.0      1 1 0 0 0
 *     0.4  0.5  0.6  0.1  0.7      0 0 0 0 1
 *     0.2  0.0  0.3  0.7  0.8      0 0 0 1 1
 * two regions: A = {0.9, 0.4} (2 pixels), B = {0.7, 0.7, 0.8} (3 pixels).
 * Image 2 is good, 3 wide, 2 high: 0.65 0.25 0.05 / 0.45 0.15 0.35. */
static const float two_regions_map[15] = {
  0.9f, 0.4f, 0.1f, 0.3f, 0.0f,
  0.4f, 0.5f, 0.6f, 0.1f, 0.7f,
  0.2f, 0.0f, 0.3f, 0.7f, 0.8f,
};
static const guint8 two_regions_mask[15] = {
  255, 255, 0, 0,   0,
  0,   0,   0, 0,   255,
  0,   0,   0, 255, 255,
};
static const float good_map[6] = { 0.65f, 0.25f, 0.05f, 0.45f, 0.15f, 0.35f };
static const guint8 good_mask[6] = { 0 };

static void
test_pixel_two_regions (void)
{
  g_autoptr (EadPixelMetrics) pm = ead_pixel_metrics_new ();
  g_autoptr (EadPixelMetrics) pm_zero_mask = ead_pixel_metrics_new ();
  double auroc, aupro, full, auroc_zero_mask, aupro_zero_mask;

  ead_pixel_metrics_add (pm, two_regions_map, two_regions_mask, 5, 3);
  ead_pixel_metrics_add (pm, good_map, NULL, 3, 2);
  compute_ok (pm, 0.3, &auroc, &aupro);

  /* Pixel AU-ROC, 5 defect x 16 good pixels: 0.9, 0.8, 0.7, 0.7 beat all 16 (64); 0.4
   * beats the 11 good pixels below 0.4 and ties one (11.5).  75.5 / 80. */
  g_assert_cmpfloat_with_epsilon (auroc, 75.5 / 80.0, HAND_TOL);

  /* PRO curve, N_ok = 16, R = 2; a region's pixel adds 1 / (2 |region|) to PRO:
   *   0.9 (A)          -> (0, 1/4)
   *   0.8 (B)          -> (0, 1/4 + 1/6)
   *   0.7 (B, B)       -> (0, 3/4)
   *   0.65 0.6 0.5 0.45 (good) -> (1/16, 3/4) ... (4/16, 3/4)
   *   0.4 (good + A)   -> (5/16, 1)   ... then on to (1, 1)
   * 0.3 is 0.8 of the way from 4/16 to 5/16, where PRO = 3/4 + 0.8 / 4 = 0.95.
   * Area = 1/4 * 3/4 + 1/2 * (0.95 + 0.75) * 0.05 = 0.1875 + 0.0425 = 0.23; / 0.3. */
  g_assert_cmpfloat_with_epsilon (aupro, 0.23 / 0.3, HAND_TOL);

  /* The whole curve (the limit is a sample, no interpolation):
   * 1/4 * 3/4 + 1/2 * (3/4 + 1) * 1/16 + 11/16 * 1 = 0.9296875. */
  compute_ok (pm, 1.0, NULL, &full);
  g_assert_cmpfloat_with_epsilon (full, 0.9296875, HAND_TOL);

  /* an all-zero mask is the same as no mask */
  ead_pixel_metrics_add (pm_zero_mask, good_map, good_mask, 3, 2);
  ead_pixel_metrics_add (pm_zero_mask, two_regions_map, two_regions_mask, 5, 3);
  compute_ok (pm_zero_mask, 0.3, &auroc_zero_mask, &aupro_zero_mask);
  g_assert_cmpfloat (auroc_zero_mask, ==, auroc);
  g_assert_cmpfloat_with_epsilon (aupro_zero_mask, aupro, HAND_TOL);
}

static void
test_pixel_perfect_constant (void)
{
  /* 4x4, a 2x2 defect in the middle */
  static const guint8 mask[16] = {
    0, 0, 0, 0,
    0, 1, 1, 0,
    0, 1, 1, 0,
    0, 0, 0, 0,
  };
  float perfect[16], constant[16], inverted[16];
  double auroc, aupro;

  for (int i = 0; i < 16; i++)
    {
      perfect[i] = mask[i];
      constant[i] = 0.25f;
      inverted[i] = -(float) mask[i];
    }
  {
    /* the whole region before any good pixel: PRO 1 at FPR 0 */
    g_autoptr (EadPixelMetrics) pm = ead_pixel_metrics_new ();

    ead_pixel_metrics_add (pm, perfect, mask, 4, 4);
    compute_ok (pm, 0.3, &auroc, &aupro);
    g_assert_cmpfloat (auroc, ==, 1.0);
    g_assert_cmpfloat_with_epsilon (aupro, 1.0, HAND_TOL);
  }
  {
    /* one threshold: the curve goes (0,0) -> (1,1); area to 0.3 is 0.045, / 0.3 = 0.15 */
    g_autoptr (EadPixelMetrics) pm = ead_pixel_metrics_new ();

    ead_pixel_metrics_add (pm, constant, mask, 4, 4);
    compute_ok (pm, 0.3, &auroc, &aupro);
    g_assert_cmpfloat (auroc, ==, 0.5);
    g_assert_cmpfloat_with_epsilon (aupro, 0.15, HAND_TOL);
  }
  {
    /* all 12 good pixels first: (1, 0), then (1, 1); nothing below FPR 0.3 */
    g_autoptr (EadPixelMetrics) pm = ead_pixel_metrics_new ();

    ead_pixel_metrics_add (pm, inverted, mask, 4, 4);
    compute_ok (pm, 0.3, &auroc, &aupro);
    g_assert_cmpfloat (auroc, ==, 0.0);
    g_assert_cmpfloat (aupro, ==, 0.0);
  }
}

static void
test_pixel_errors (void)
{
  static const float map[4] = { 0.1f, 0.2f, NAN, 0.4f };
  static const guint8 all_set[6] = { 1, 1, 1, 1, 1, 1 };

  {
    g_autoptr (EadPixelMetrics) pm = ead_pixel_metrics_new ();

    assert_compute_error (pm, 0.3, EAD_ERROR_INVALID, "none was added");
  }
  {
    g_autoptr (EadPixelMetrics) pm = ead_pixel_metrics_new ();

    ead_pixel_metrics_add (pm, good_map, NULL, 3, 2);
    ead_pixel_metrics_add (pm, good_map, good_mask, 3, 2);
    assert_compute_error (pm, 0.3, EAD_ERROR_INVALID, "every ground-truth mask is empty (images added: 2)");
  }
  {
    g_autoptr (EadPixelMetrics) pm = ead_pixel_metrics_new ();

    ead_pixel_metrics_add (pm, good_map, all_set, 3, 2);
    assert_compute_error (pm, 0.3, EAD_ERROR_INVALID, "all 6 pixels are defects");
  }
  {
    g_autoptr (EadPixelMetrics) pm = ead_pixel_metrics_new ();

    ead_pixel_metrics_add (pm, two_regions_map, two_regions_mask, 5, 3);
    assert_compute_error (pm, 0.0, EAD_ERROR_INVALID, "limit");
    assert_compute_error (pm, 1.5, EAD_ERROR_INVALID, "limit");
    assert_compute_error (pm, NAN, EAD_ERROR_INVALID, "limit");
    compute_ok (pm, 0.3, NULL, NULL);
  }
  {
    /* a bad image is reported by compute, every time, and later images change nothing */
    g_autoptr (EadPixelMetrics) pm = ead_pixel_metrics_new ();

    ead_pixel_metrics_add (pm, two_regions_map, two_regions_mask, 5, 3);
    ead_pixel_metrics_add (pm, map, NULL, 2, 2);
    ead_pixel_metrics_add (pm, good_map, NULL, 3, 2);
    assert_compute_error (pm, 0.3, EAD_ERROR_INVALID, "image 1: the anomaly map is NaN at (0, 1)");
    assert_compute_error (pm, 0.3, EAD_ERROR_INVALID, "image 1");
  }
  {
    g_autoptr (EadPixelMetrics) pm = ead_pixel_metrics_new ();

    ead_pixel_metrics_add (pm, good_map, NULL, 0, 2);
    assert_compute_error (pm, 0.3, EAD_ERROR_INVALID, "image 0: the anomaly map is 0 x 2");
  }
  {
    g_autoptr (EadPixelMetrics) pm = ead_pixel_metrics_new ();

    ead_pixel_metrics_add (pm, two_regions_map, two_regions_mask, 5, 3);
    ead_pixel_metrics_add (pm, NULL, NULL, 3, 2);
    assert_compute_error (pm, 0.3, EAD_ERROR_INVALID, "image 1: no anomaly map");
  }
}

/* Fixtures */

static char *
fixture_path (const char *name)
{
  const char *dir = g_getenv ("EAD_TEST_FIXTURES");

  if (dir != NULL && *dir != '\0')
    return g_build_filename (dir, "metrics", name, NULL);
  return g_test_build_filename (G_TEST_DIST, "fixtures", "metrics", name, NULL);
}

static void
check_image_fixture (JsonObject *image, const char *name)
{
  JsonArray *scores_json = json_object_get_array_member (image, "scores");
  JsonArray *labels_json = json_object_get_array_member (image, "labels");
  guint n = json_array_get_length (scores_json);
  g_autofree float *scores = g_new (float, n);
  g_autofree guint8 *labels = g_new (guint8, n);
  double expected_auroc = json_object_get_double_member (image, "auroc");
  double expected_f1 = json_object_get_double_member (image, "f1_max");
  float expected_tau = (float) json_object_get_double_member (image, "f1_threshold");
  double auroc, f1;
  float tau;

  g_assert_cmpuint (json_array_get_length (labels_json), ==, n);
  for (guint i = 0; i < n; i++)
    {
      scores[i] = (float) json_array_get_double_element (scores_json, i);
      labels[i] = (guint8) json_array_get_int_element (labels_json, i);
    }
  auroc = auroc_ok (scores, labels, n);
  f1 = f1_ok (scores, labels, n, &tau);
  g_test_message ("%s: %u scores: AU-ROC %.12f (expected %.12f), F1-max %.12f at %g "
                  "(expected %.12f at %g)", name, n, auroc, expected_auroc, f1, tau,
                  expected_f1, expected_tau);
  g_assert_cmpfloat_with_epsilon (auroc, expected_auroc, IMAGE_TOL);
  g_assert_cmpfloat_with_epsilon (f1, expected_f1, IMAGE_TOL);
  g_assert_cmpfloat (tau, ==, expected_tau);
}

typedef struct {
  int width;
  int height;
  float *map;
  guint8 *mask;
} FixtureMap;

static void
fixture_map_clear (FixtureMap *m)
{
  g_free (m->map);
  g_free (m->mask);
}

static void
read_fixture_map (JsonObject *record, FixtureMap *m)
{
  JsonArray *values = json_object_get_array_member (record, "map");
  JsonArray *rows = json_object_get_array_member (record, "mask");

  m->width = (int) json_object_get_int_member (record, "width");
  m->height = (int) json_object_get_int_member (record, "height");
  g_assert_cmpuint (json_array_get_length (values), ==, (guint) (m->width * m->height));
  g_assert_cmpuint (json_array_get_length (rows), ==, (guint) m->height);
  m->map = g_new (float, (size_t) m->width * m->height);
  m->mask = g_new (guint8, (size_t) m->width * m->height);
  for (int i = 0; i < m->width * m->height; i++)
    m->map[i] = (float) json_array_get_double_element (values, (guint) i);
  for (int y = 0; y < m->height; y++)
    {
      const char *row = json_array_get_string_element (rows, (guint) y);

      g_assert_cmpint ((int) strlen (row), ==, m->width);
      for (int x = 0; x < m->width; x++)
        m->mask[y * m->width + x] = row[x] == '1' ? 255 : 0;
    }
}

static void
check_pixel_fixture (JsonObject *pixel, const char *name)
{
  JsonArray *records = json_object_get_array_member (pixel, "maps");
  guint n_maps = json_array_get_length (records);
  g_autofree FixtureMap *maps = g_new0 (FixtureMap, n_maps);
  double fpr_limit = json_object_get_double_member (pixel, "fpr_limit");
  double expected_auroc = json_object_get_double_member (pixel, "auroc");
  double expected_aupro = json_object_get_double_member (pixel, "aupro");
  g_autoptr (EadPixelMetrics) forward = ead_pixel_metrics_new ();
  g_autoptr (EadPixelMetrics) backward = ead_pixel_metrics_new ();
  double auroc, aupro, auroc_backward, aupro_backward;

  for (guint i = 0; i < n_maps; i++)
    {
      read_fixture_map (json_array_get_object_element (records, i), &maps[i]);
      ead_pixel_metrics_add (forward, maps[i].map, maps[i].mask, maps[i].width, maps[i].height);
    }
  /* the order of the images must not matter */
  for (guint i = n_maps; i-- > 0;)
    ead_pixel_metrics_add (backward, maps[i].map, maps[i].mask, maps[i].width, maps[i].height);
  compute_ok (forward, fpr_limit, &auroc, &aupro);
  compute_ok (backward, fpr_limit, &auroc_backward, &aupro_backward);
  g_test_message ("%s: %u maps, %" G_GINT64_FORMAT " regions: pixel AU-ROC %.12f (expected "
                  "%.12f), AU-PRO %.12f (expected %.12f; the MVTec script's float32 FPR gives "
                  "%.12f)", name, n_maps, json_object_get_int_member (pixel, "regions"), auroc,
                  expected_auroc, aupro, expected_aupro,
                  json_object_get_double_member (pixel, "aupro_fpr_float32"));
  g_assert_cmpfloat_with_epsilon (auroc, expected_auroc, PIXEL_TOL);
  g_assert_cmpfloat_with_epsilon (aupro, expected_aupro, PIXEL_TOL);
  g_assert_cmpfloat (auroc_backward, ==, auroc);
  g_assert_cmpfloat_with_epsilon (aupro_backward, aupro, 1e-12);

  for (guint i = 0; i < n_maps; i++)
    fixture_map_clear (&maps[i]);
}

static int
compare_names (gconstpointer a, gconstpointer b)
{
  return strcmp (*(const char *const *) a, *(const char *const *) b);
}

static void
test_fixtures (void)
{
  g_autofree char *dir_path = fixture_path (NULL);
  g_autoptr (GError) error = NULL;
  g_autoptr (GDir) dir = NULL;
  g_autoptr (GPtrArray) names = g_ptr_array_new_with_free_func (g_free);
  const char *entry;

  if (g_getenv ("EAD_TEST_FIXTURES") == NULL && g_getenv ("G_TEST_SRCDIR") == NULL)
    {
      g_test_skip ("neither EAD_TEST_FIXTURES nor G_TEST_SRCDIR is set");
      return;
    }
  dir = g_dir_open (dir_path, 0, &error);
  g_assert_no_error (error);
  while ((entry = g_dir_read_name (dir)) != NULL)
    if (g_str_has_suffix (entry, ".json"))
      g_ptr_array_add (names, g_strdup (entry));
  g_assert_cmpuint (names->len, >=, 3);
  g_ptr_array_sort (names, compare_names);
  for (guint i = 0; i < names->len; i++)
    {
      const char *name = g_ptr_array_index (names, i);
      g_autofree char *path = fixture_path (name);
      g_autoptr (JsonParser) parser = json_parser_new ();
      JsonObject *root;

      json_parser_load_from_file (parser, path, &error);
      g_assert_no_error (error);
      root = json_node_get_object (json_parser_get_root (parser));
      check_image_fixture (json_object_get_object_member (root, "image"), name);
      check_pixel_fixture (json_object_get_object_member (root, "pixel"), name);
    }
}

/* Larger random test sets */

/* xorshift64*: fast, and the same on every platform */
static guint64
next_random (guint64 *state)
{
  *state ^= *state >> 12;
  *state ^= *state << 25;
  *state ^= *state >> 27;
  return *state * 0x2545F4914F6CDD1Dull;
}

/* Fills mask with up to 4 rectangles, kept a pixel apart so that each is its own region, and
 * map with uniform noise plus `lift` inside them; scores are quantised to `levels` steps per
 * unit when levels > 0.  Returns the number of rectangles; their sizes go to sizes[]. */
static int
random_image (guint64 *state, int width, int height, float lift, int levels, float *map,
              guint8 *mask, int sizes[4])
{
  int n_rects = (int) (next_random (state) % 5);
  int cell = width / 4;

  memset (mask, 0, (size_t) width * height);
  for (int r = 0; r < n_rects; r++)
    {
      /* rectangle r lives in column band r, so rectangles never touch */
      int w = 1 + (int) (next_random (state) % (guint64) (cell - 1));
      int h = 1 + (int) (next_random (state) % (guint64) (height / 3));
      int x0 = r * cell + (int) (next_random (state) % (guint64) (cell - w));
      int y0 = (int) (next_random (state) % (guint64) (height - h));

      for (int y = y0; y < y0 + h; y++)
        memset (mask + (size_t) y * width + x0, 1, (size_t) w);
      sizes[r] = w * h;
    }
  for (size_t p = 0; p < (size_t) width * height; p++)
    {
      double u = (double) (next_random (state) >> 11) / 9007199254740992.0;
      float v = (float) (u * 2.0 - 0.5) + (mask[p] ? lift : 0.0f);

      map[p] = levels > 0 ? roundf (v * (float) levels) / (float) levels : v;
    }
  return n_rects;
}

static void
assert_subset_error (EadPixelMetrics *pm, const gboolean *images, guint n, const char *fragment)
{
  g_autoptr (GError) error = NULL;

  g_assert_false (ead_pixel_metrics_compute_subset (pm, images, n, 0.3, NULL, NULL, &error));
  g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
  if (strstr (error->message, fragment) == NULL)
    g_error ("'%s' does not say '%s'", error->message, fragment);
}

/* A subset of the images gives what an EadPixelMetrics of those images alone gives. */
static void
test_pixel_subset (void)
{
  enum { WIDTH = 61, HEIGHT = 47, N = 12 };
  static const gboolean subsets[][N] = {
    { 1, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0 },
    { 0, 1, 1, 0, 0, 0, 1, 0, 1, 1, 0, 1 },
    { 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1 },
  };
  static const gboolean none[N] = { 0 };
  float maps[N][WIDTH * HEIGHT];
  guint8 masks[N][WIDTH * HEIGHT];
  int n_rects[N];
  g_autoptr (EadPixelMetrics) all = ead_pixel_metrics_new ();
  guint64 state = 0x2545F4914F6CDD1Dull;
  gboolean defect_free[N] = { 0 };
  guint n_defect_free = 0;

  for (int i = 0; i < N; i++)
    {
      int sizes[4];

      /* coarse levels, so that ties across images are many */
      n_rects[i] = random_image (&state, WIDTH, HEIGHT, 0.3f, 16, maps[i], masks[i], sizes);
      ead_pixel_metrics_add (all, maps[i], masks[i], WIDTH, HEIGHT);
    }
  for (guint s = 0; s < G_N_ELEMENTS (subsets); s++)
    {
      g_autoptr (EadPixelMetrics) alone = ead_pixel_metrics_new ();
      g_autoptr (GError) error = NULL;
      double auroc, aupro, expected_auroc, expected_aupro;

      for (int i = 0; i < N; i++)
        if (subsets[s][i])
          ead_pixel_metrics_add (alone, maps[i], masks[i], WIDTH, HEIGHT);
      compute_ok (alone, 0.3, &expected_auroc, &expected_aupro);
      g_assert_true (ead_pixel_metrics_compute_subset (all, subsets[s], N, 0.3, &auroc, &aupro,
                                                       &error));
      g_assert_no_error (error);
      g_test_message ("subset %u: pixel AU-ROC %.6f, AU-PRO %.6f", s, auroc, aupro);
      g_assert_cmpfloat (auroc, ==, expected_auroc);
      /* the same sums, in another order inside runs of equal scores */
      g_assert_cmpfloat_with_epsilon (aupro, expected_aupro, HAND_TOL);
    }
  {
    double auroc, aupro, subset_auroc, subset_aupro;

    /* every image chosen is the whole set */
    compute_ok (all, 0.3, &auroc, &aupro);
    g_assert_true (ead_pixel_metrics_compute_subset (all, subsets[2], N, 0.3, &subset_auroc,
                                                     &subset_aupro, NULL));
    g_assert_cmpfloat (subset_auroc, ==, auroc);
    g_assert_cmpfloat (subset_aupro, ==, aupro);
  }
  for (int i = 0; i < N; i++)
    if (n_rects[i] == 0)
      {
        defect_free[i] = TRUE;
        n_defect_free++;
      }
  g_assert_cmpuint (n_defect_free, >, 0);
  assert_subset_error (all, defect_free, N, "every ground-truth mask is empty (images chosen:");
  assert_subset_error (all, none, N, "none was chosen");
  assert_subset_error (all, subsets[0], N - 1, "the subset names 11 images, but 12 were added");
}

/* A test set of quantised scores against per-level histograms: the AU-ROC as a
 * Mann-Whitney count with ties 1/2, and the PRO curve level by level, with no sort. */
#define HIST_LEVELS 1024
#define HIST_OFFSET 1024  /* scores from -1 to 3 in steps of 1/1024 */
#define HIST_BINS (4 * HIST_LEVELS + 1)

static void
test_pixel_histogram_reference (void)
{
  const int width = 257, height = 190, n_images = 40;
  g_autofree float *map = g_new (float, (size_t) width * height);
  g_autofree guint8 *mask = g_new (guint8, (size_t) width * height);
  g_autofree double *good = g_new0 (double, HIST_BINS);
  g_autofree double *defect = g_new0 (double, HIST_BINS);
  g_autofree double *pro = g_new0 (double, HIST_BINS);
  g_autoptr (EadPixelMetrics) pm = ead_pixel_metrics_new ();
  guint64 state = 0x9E3779B97F4A7C15ull;
  double n_good = 0.0, n_defect = 0.0, n_regions = 0.0;
  double pairs = 0.0, good_below = 0.0;
  double x = 0.0, y = 0.0, fp = 0.0, pro_sum = 0.0, area = 0.0;
  double auroc, aupro, expected_auroc, expected_aupro;

  for (int i = 0; i < n_images; i++)
    {
      int sizes[4];
      int n_rects = random_image (&state, width, height, 0.4f, HIST_LEVELS, map, mask, sizes);

      /* the rectangles are column bands, so the region of a pixel is its band */
      for (size_t p = 0; p < (size_t) width * height; p++)
        {
          int bin = (int) lrintf (map[p] * HIST_LEVELS) + HIST_OFFSET;

          g_assert_cmpint (bin, >=, 0);
          g_assert_cmpint (bin, <, HIST_BINS);
          if (mask[p])
            {
              int band = (int) (p % (size_t) width) / (width / 4);

              defect[bin] += 1.0;
              pro[bin] += 1.0 / sizes[band];
            }
          else
            {
              good[bin] += 1.0;
            }
        }
      n_regions += n_rects;
      ead_pixel_metrics_add (pm, map, mask, width, height);
    }
  compute_ok (pm, 0.3, &auroc, &aupro);

  for (int b = 0; b < HIST_BINS; b++)
    {
      n_good += good[b];
      n_defect += defect[b];
    }
  for (int b = 0; b < HIST_BINS; b++)
    {
      pairs += defect[b] * (good_below + 0.5 * good[b]);
      good_below += good[b];
    }
  expected_auroc = pairs / (n_defect * n_good);

  /* descending levels; every non-empty level is one curve point */
  for (int b = HIST_BINS - 1; b >= 0; b--)
    {
      double x1, y1;

      if (good[b] == 0.0 && defect[b] == 0.0)
        continue;
      fp += good[b];
      pro_sum += pro[b];
      x1 = fp / n_good;
      y1 = MIN (pro_sum / n_regions, 1.0);
      if (x1 > 0.3)
        {
          area += 0.5 * (y + y + (y1 - y) * (0.3 - x) / (x1 - x)) * (0.3 - x);
          break;
        }
      area += 0.5 * (y + y1) * (x1 - x);
      x = x1;
      y = y1;
    }
  expected_aupro = area / 0.3;

  g_test_message ("%d images of %dx%d, %.0f regions: pixel AU-ROC %.12f (histogram %.12f), "
                  "AU-PRO %.12f (histogram %.12f)", n_images, width, height, n_regions, auroc,
                  expected_auroc, aupro, expected_aupro);
  g_assert_cmpfloat_with_epsilon (auroc, expected_auroc, 1e-12);
  g_assert_cmpfloat_with_epsilon (aupro, expected_aupro, 1e-10);
}

/* Not a test of speed: it prints how long 20 million pixels take. */
static void
test_pixel_timing (void)
{
  const int width = 500, height = 500, n_images = 80;
  g_autofree float *map = g_new (float, (size_t) width * height);
  g_autofree guint8 *mask = g_new (guint8, (size_t) width * height);
  g_autoptr (EadPixelMetrics) pm = ead_pixel_metrics_new ();
  guint64 state = 42;
  gint64 add_us = 0, start;
  double auroc, aupro;

  for (int i = 0; i < n_images; i++)
    {
      int sizes[4];

      random_image (&state, width, height, 0.5f, 0, map, mask, sizes);
      start = g_get_monotonic_time ();
      ead_pixel_metrics_add (pm, map, mask, width, height);
      add_us += g_get_monotonic_time () - start;
    }
  start = g_get_monotonic_time ();
  compute_ok (pm, 0.3, &auroc, &aupro);
  g_test_message ("%d pixels: adding %.2f s, computing %.2f s; pixel AU-ROC %.6f, AU-PRO %.6f",
                  width * height * n_images, add_us / 1e6,
                  (g_get_monotonic_time () - start) / 1e6, auroc, aupro);
  g_assert_cmpfloat (auroc, >, 0.5);
  g_assert_cmpfloat (aupro, >, 0.0);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);

  g_test_add_func ("/metrics/auroc/basic", test_auroc_basic);
  g_test_add_func ("/metrics/auroc/ties", test_auroc_ties);
  g_test_add_func ("/metrics/auroc/errors", test_auroc_errors);
  g_test_add_func ("/metrics/f1-max", test_f1_max);
  g_test_add_func ("/metrics/pixel/diagonal-region", test_pixel_diagonal_region);
  g_test_add_func ("/metrics/pixel/two-regions", test_pixel_two_regions);
  g_test_add_func ("/metrics/pixel/perfect-constant", test_pixel_perfect_constant);
  g_test_add_func ("/metrics/pixel/errors", test_pixel_errors);
  g_test_add_func ("/metrics/pixel/subset", test_pixel_subset);
  g_test_add_func ("/metrics/fixtures", test_fixtures);
  g_test_add_func ("/metrics/pixel/histogram-reference", test_pixel_histogram_reference);
  g_test_add_func ("/metrics/pixel/timing", test_pixel_timing);

  return g_test_run ();
}
