/* ead-threshold.h: pass/fail thresholds per model, their audit trail, and live counting.
 *
 * An image fails when its score is at or above the threshold.  With a review band the
 * images whose score lies in [review, threshold) go to a person instead of passing.
 * The threshold in force is the one a person set, or else the suggested one.
 *
 * Counting never re-runs inference and never queries the database per call: a score
 * table holds the model's scores sorted by label, loaded once
 * (ead_project_load_scores), and each count is a few binary searches, so that a slider
 * can recount on every motion event.
 */
#pragma once

#include <glib.h>

#include "ead-project.h"

G_BEGIN_DECLS

/* The margin above the highest good score when no defects are labelled, as a fraction
 * of the good scores' range. */
#define EAD_THRESHOLD_GOOD_MARGIN 0.1

typedef enum {
  EAD_OUTCOME_PASS,
  EAD_OUTCOME_REVIEW,
  EAD_OUTCOME_FAIL,
} EadOutcome;
#define EAD_N_OUTCOMES 3

typedef enum {
  EAD_SUGGEST_F1,        /* the best F1 on labelled images outside the training split */
  EAD_SUGGEST_MAX_GOOD,  /* no defect labelled: the highest good score plus a margin */
} EadSuggestMethod;

const char *ead_suggest_method_name (EadSuggestMethod method);  /* "f1", "max-good" */

typedef struct {
  double value;           /* set by a person; NAN when none */
  double suggested;       /* NAN when never suggested */
  EadSuggestMethod suggested_method;
  double review;          /* lower edge of the review band; NAN when there is none */
  double effective;       /* value, else suggested, else NAN */
} EadThreshold;

typedef struct {
  gint64 id;
  gint64 model_id;
  char *kind;             /* "suggested", "set", "accept", "review" */
  /* set and accept: the threshold in force before and after; suggested: the previous
   * and the new suggestion; review: the band's edge.  NAN for none. */
  double old_value;
  double new_value;
  char *user;
  char *reason;           /* may be NULL */
  gint64 at;              /* microseconds since the Unix epoch */
} EadThresholdEvent;

void ead_threshold_event_free (EadThresholdEvent *event);

typedef struct {
  double threshold;
  EadSuggestMethod method;
  double f1;              /* at the threshold, on the images used; NAN for max-good */
  guint n_good;           /* good and defect images the suggestion was computed from */
  guint n_defect;
} EadThresholdSuggestion;

typedef struct {
  /* counts[label][outcome] */
  guint64 counts[EAD_N_LABELS][EAD_N_OUTCOMES];
  guint64 n_pass;
  guint64 n_review;
  guint64 n_fail;
  /* The confusion matrix of labelled images at the threshold (review counts as not
   * failed): positive means a defect, predicted positive means failed. */
  guint64 true_positive;
  guint64 false_positive;
  guint64 true_negative;
  guint64 false_negative;
} EadThresholdCounts;

/* The model's thresholds; all NAN when none were ever set. */
gboolean ead_project_get_threshold (EadProject *project,
                                    gint64 model_id,
                                    EadThreshold *threshold,
                                    GError **error);

/* Each of these changes a threshold and appends its audit event (old value, new value,
 * user, time, reason) in one transaction.  user NULL means the login name; reason may
 * be NULL.  A value that would put the review band's edge at or above the threshold in
 * force is refused (EAD_ERROR_INVALID). */

/* value must be finite. */
gboolean ead_project_set_threshold (EadProject *project,
                                    gint64 model_id,
                                    double value,
                                    const char *user,
                                    const char *reason,
                                    GError **error);
/* review NAN removes the band. */
gboolean ead_project_set_review_threshold (EadProject *project,
                                           gint64 model_id,
                                           double review,
                                           const char *user,
                                           const char *reason,
                                           GError **error);
/* Computes the suggestion from the model's results (ead_score_table_suggest) and stores
 * it as the suggested threshold (event "suggested"); suggestion may be NULL. */
gboolean ead_project_suggest_threshold (EadProject *project,
                                        gint64 model_id,
                                        const char *user,
                                        EadThresholdSuggestion *suggestion,
                                        GError **error);
/* Makes the stored suggestion the threshold a person chose (event "accept"). */
gboolean ead_project_accept_suggested_threshold (EadProject *project,
                                                 gint64 model_id,
                                                 const char *user,
                                                 const char *reason,
                                                 GError **error);

/* The audit trail, oldest first.  Array of EadThresholdEvent. */
GPtrArray *ead_project_list_threshold_events (EadProject *project,
                                              gint64 model_id,
                                              GError **error);

/* Score tables */

typedef struct _EadScoreTable EadScoreTable;

/* Reads the scores of the model's results with their images' labels and splits. */
EadScoreTable *ead_project_load_scores (EadProject *project, gint64 model_id, GError **error);
/* A table from plain arrays (n entries each), for tests and tools. */
EadScoreTable *ead_score_table_new (const double *scores,
                                    const EadLabel *labels,
                                    const EadSplit *splits,
                                    guint n);
void ead_score_table_free (EadScoreTable *table);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (EadScoreTable, ead_score_table_free)

guint ead_score_table_size (const EadScoreTable *table);
/* The lowest and highest score; FALSE for an empty table. */
gboolean ead_score_table_range (const EadScoreTable *table, double *min, double *max);

/* Counts at threshold, with a review band from review up when review is not NAN (and
 * below threshold).  No allocation, no I/O: O(log n). */
void ead_score_table_count (const EadScoreTable *table,
                            double threshold,
                            double review,
                            EadThresholdCounts *counts);

/* Scores in n_bins equal bins over [lo, hi] (values outside go to the end bins), per
 * label: counts must hold EAD_N_LABELS * n_bins entries, label-major. */
void ead_score_table_histogram (const EadScoreTable *table,
                                double lo,
                                double hi,
                                guint n_bins,
                                guint64 *counts);

/* The suggested threshold.  Uses the labelled images outside the training split (the
 * ones the model did not learn from).  With defects among them: the threshold of best
 * F1 (ead_metric_f1_max, which takes the lowest of equally good thresholds), placed
 * halfway between the lowest failing score and the next lower score.  Without: the
 * highest good score (of those images, or of every good image when none is outside the
 * training split) plus EAD_THRESHOLD_GOOD_MARGIN of the good scores' range.
 * EAD_ERROR_INVALID when there is no labelled score to go by. */
gboolean ead_score_table_suggest (const EadScoreTable *table,
                                  EadThresholdSuggestion *suggestion,
                                  GError **error);

G_END_DECLS
