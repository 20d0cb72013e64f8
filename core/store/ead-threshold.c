/* ead-threshold.c: thresholds, their audit trail, score tables and the suggestion. */
#include "ead-threshold.h"

#include <math.h>
#include <string.h>

#include "ead-error.h"
#include "ead-metrics.h"
#include "ead-project-private.h"

const char *
ead_suggest_method_name (EadSuggestMethod method)
{
  return method == EAD_SUGGEST_F1 ? "f1" : "max-good";
}

/* Score tables */

struct _EadScoreTable {
  /* Every score per label, ascending: what the counts come from. */
  double *scores[EAD_N_LABELS];
  guint n[EAD_N_LABELS];
  /* Good and defect scores outside the training split, ascending: what the suggestion
   * comes from. */
  double *held_out[EAD_N_LABELS];
  guint n_held_out[EAD_N_LABELS];
};

static int
compare_doubles (const void *a, const void *b)
{
  double x = *(const double *) a, y = *(const double *) b;

  return (x > y) - (x < y);
}

EadScoreTable *
ead_score_table_new (const double *scores,
                     const EadLabel *labels,
                     const EadSplit *splits,
                     guint n)
{
  EadScoreTable *table;

  g_return_val_if_fail (n == 0 || (scores != NULL && labels != NULL && splits != NULL), NULL);
  for (guint i = 0; i < n; i++)
    g_return_val_if_fail (labels[i] < EAD_N_LABELS, NULL);

  table = g_new0 (EadScoreTable, 1);
  for (guint i = 0; i < n; i++)
    {
      table->n[labels[i]]++;
      if (splits[i] != EAD_SPLIT_TRAIN)
        table->n_held_out[labels[i]]++;
    }
  for (int l = 0; l < EAD_N_LABELS; l++)
    {
      table->scores[l] = g_new (double, MAX (table->n[l], 1));
      table->held_out[l] = g_new (double, MAX (table->n_held_out[l], 1));
      table->n[l] = table->n_held_out[l] = 0;
    }
  for (guint i = 0; i < n; i++)
    {
      EadLabel l = labels[i];

      table->scores[l][table->n[l]++] = scores[i];
      if (splits[i] != EAD_SPLIT_TRAIN)
        table->held_out[l][table->n_held_out[l]++] = scores[i];
    }
  for (int l = 0; l < EAD_N_LABELS; l++)
    {
      qsort (table->scores[l], table->n[l], sizeof (double), compare_doubles);
      qsort (table->held_out[l], table->n_held_out[l], sizeof (double), compare_doubles);
    }
  return table;
}

void
ead_score_table_free (EadScoreTable *table)
{
  if (table == NULL)
    return;
  for (int l = 0; l < EAD_N_LABELS; l++)
    {
      g_free (table->scores[l]);
      g_free (table->held_out[l]);
    }
  g_free (table);
}

guint
ead_score_table_size (const EadScoreTable *table)
{
  return table->n[0] + table->n[1] + table->n[2];
}

gboolean
ead_score_table_range (const EadScoreTable *table, double *min, double *max)
{
  gboolean any = FALSE;

  for (int l = 0; l < EAD_N_LABELS; l++)
    {
      if (table->n[l] == 0)
        continue;
      if (!any || table->scores[l][0] < *min)
        *min = table->scores[l][0];
      if (!any || table->scores[l][table->n[l] - 1] > *max)
        *max = table->scores[l][table->n[l] - 1];
      any = TRUE;
    }
  return any;
}

/* How many of the n ascending values are below x. */
static guint
count_below (const double *values, guint n, double x)
{
  guint lo = 0, hi = n;

  while (lo < hi)
    {
      guint mid = lo + (hi - lo) / 2;

      if (values[mid] < x)
        lo = mid + 1;
      else
        hi = mid;
    }
  return lo;
}

void
ead_score_table_count (const EadScoreTable *table,
                       double threshold,
                       double review,
                       EadThresholdCounts *counts)
{
  gboolean band = !isnan (review) && !isnan (threshold) && review < threshold;

  g_return_if_fail (table != NULL && counts != NULL);

  memset (counts, 0, sizeof *counts);
  for (int l = 0; l < EAD_N_LABELS; l++)
    {
      /* Without a threshold nothing fails. */
      guint below = isnan (threshold) ? table->n[l]
                                      : count_below (table->scores[l], table->n[l], threshold);
      guint passed = band ? count_below (table->scores[l], below, review) : below;

      counts->counts[l][EAD_OUTCOME_PASS] = passed;
      counts->counts[l][EAD_OUTCOME_REVIEW] = below - passed;
      counts->counts[l][EAD_OUTCOME_FAIL] = table->n[l] - below;
      counts->n_pass += passed;
      counts->n_review += below - passed;
      counts->n_fail += table->n[l] - below;
    }
  counts->true_positive = counts->counts[EAD_LABEL_DEFECT][EAD_OUTCOME_FAIL];
  counts->false_negative = table->n[EAD_LABEL_DEFECT] - counts->true_positive;
  counts->false_positive = counts->counts[EAD_LABEL_GOOD][EAD_OUTCOME_FAIL];
  counts->true_negative = table->n[EAD_LABEL_GOOD] - counts->false_positive;
}

void
ead_score_table_histogram (const EadScoreTable *table,
                           double lo,
                           double hi,
                           guint n_bins,
                           guint64 *counts)
{
  g_return_if_fail (table != NULL && counts != NULL && n_bins > 0);

  memset (counts, 0, sizeof (guint64) * EAD_N_LABELS * n_bins);
  for (int l = 0; l < EAD_N_LABELS; l++)
    for (guint i = 0; i < table->n[l]; i++)
      {
        double x = hi > lo ? (table->scores[l][i] - lo) / (hi - lo) * n_bins : 0.0;
        guint bin = x <= 0.0 ? 0 : x >= n_bins ? n_bins - 1 : (guint) x;

        counts[(size_t) l * n_bins + bin]++;
      }
}

/* The largest of the ascending values below x, or NAN. */
static double
largest_below (const double *values, guint n, double x)
{
  guint below = count_below (values, n, x);

  return below > 0 ? values[below - 1] : NAN;
}

/* The best-F1 threshold over ascending good and defect scores (at least one defect), by
 * ead_metric_f1_max so that the F1 shown next to a threshold is the one `ead eval`
 * reports.  Scores come from float maps, so the float copies are exact. */
static gboolean
suggest_f1 (const double *good,
            guint n_good,
            const double *defect,
            guint n_defect,
            EadThresholdSuggestion *suggestion,
            GError **error)
{
  size_t n = (size_t) n_good + n_defect;
  g_autofree float *scores = g_new (float, n);
  g_autofree guint8 *labels = g_new (guint8, n);
  double next_good, next_defect, next, lowest_failing;
  float tau;

  for (guint i = 0; i < n_good; i++)
    {
      scores[i] = (float) good[i];
      labels[i] = 0;
    }
  for (guint i = 0; i < n_defect; i++)
    {
      scores[n_good + i] = (float) defect[i];
      labels[n_good + i] = 1;
    }
  suggestion->f1 = ead_metric_f1_max (scores, labels, n, &tau, error);
  if (isnan (suggestion->f1))
    return FALSE;
  suggestion->method = EAD_SUGGEST_F1;
  lowest_failing = tau;
  suggestion->threshold = lowest_failing;
  /* Halfway down to the next lower score, so that a new image a little below the lowest
   * failing one is judged as its neighbours are; the counts are the same either way. */
  next_good = largest_below (good, n_good, lowest_failing);
  next_defect = largest_below (defect, n_defect, lowest_failing);
  next = isnan (next_good) ? next_defect
         : isnan (next_defect) ? next_good : MAX (next_good, next_defect);
  if (!isnan (next))
    {
      double middle = next + (lowest_failing - next) / 2.0;

      if (middle > next && middle <= lowest_failing)
        suggestion->threshold = middle;
    }
  return TRUE;
}

static void
suggest_max_good (const double *good, guint n_good, EadThresholdSuggestion *suggestion)
{
  double max = good[n_good - 1];
  double margin = EAD_THRESHOLD_GOOD_MARGIN * (max - good[0]);

  /* One good score, or all equal: a margin relative to the score itself, and at least
   * the next representable number so that the good images pass. */
  if (margin <= 0.0)
    margin = EAD_THRESHOLD_GOOD_MARGIN * fabs (max);
  suggestion->method = EAD_SUGGEST_MAX_GOOD;
  suggestion->f1 = NAN;
  suggestion->threshold = max + margin > max ? max + margin : nextafter (max, INFINITY);
}

gboolean
ead_score_table_suggest (const EadScoreTable *table,
                         EadThresholdSuggestion *suggestion,
                         GError **error)
{
  guint n_good = table->n_held_out[EAD_LABEL_GOOD];
  guint n_defect = table->n_held_out[EAD_LABEL_DEFECT];

  g_return_val_if_fail (table != NULL && suggestion != NULL, FALSE);

  memset (suggestion, 0, sizeof *suggestion);
  if (n_defect > 0)
    {
      suggestion->n_good = n_good;
      suggestion->n_defect = n_defect;
      return suggest_f1 (table->held_out[EAD_LABEL_GOOD], n_good,
                         table->held_out[EAD_LABEL_DEFECT], n_defect, suggestion, error);
    }
  if (n_good > 0)
    {
      suggest_max_good (table->held_out[EAD_LABEL_GOOD], n_good, suggestion);
      suggestion->n_good = n_good;
      return TRUE;
    }
  /* Training images score low by construction, but they are better than nothing. */
  if (table->n[EAD_LABEL_GOOD] > 0)
    {
      suggest_max_good (table->scores[EAD_LABEL_GOOD], table->n[EAD_LABEL_GOOD], suggestion);
      suggestion->n_good = table->n[EAD_LABEL_GOOD];
      return TRUE;
    }
  g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
               "no scored image is labelled good or defect, so there is nothing to suggest a "
               "threshold from (%u scores, all unlabelled)", ead_score_table_size (table));
  return FALSE;
}

static gboolean
check_model (EadProject *project, gint64 model_id, GError **error)
{
  sqlite3_stmt *stmt = _ead_project_prepare (project, "SELECT 1 FROM models WHERE id = ?",
                                             error);
  int rc;

  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_int64 (stmt, 1, model_id);
  rc = sqlite3_step (stmt);
  sqlite3_reset (stmt);
  if (rc == SQLITE_DONE)
    g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID, "%s: no model with id %" G_GINT64_FORMAT,
                 project->path, model_id);
  else if (rc != SQLITE_ROW)
    _ead_store_set_error (error, project->db, rc, project->path, "cannot read the models");
  return rc == SQLITE_ROW;
}

EadScoreTable *
ead_project_load_scores (EadProject *project, gint64 model_id, GError **error)
{
  g_autoptr (GArray) scores = g_array_new (FALSE, FALSE, sizeof (double));
  g_autoptr (GArray) labels = g_array_new (FALSE, FALSE, sizeof (EadLabel));
  g_autoptr (GArray) splits = g_array_new (FALSE, FALSE, sizeof (EadSplit));
  sqlite3_stmt *stmt;
  int rc;

  g_return_val_if_fail (project != NULL, NULL);

  if (!check_model (project, model_id, error))
    return NULL;
  stmt = _ead_project_prepare (project,
    "SELECT r.score, i.label, i.split FROM results r JOIN images i ON i.id = r.image_id "
    "WHERE r.model_id = ?", error);
  if (stmt == NULL)
    return NULL;
  sqlite3_bind_int64 (stmt, 1, model_id);
  while ((rc = sqlite3_step (stmt)) == SQLITE_ROW)
    {
      double score = sqlite3_column_double (stmt, 0);
      EadLabel label = EAD_LABEL_UNLABELLED;
      EadSplit split = EAD_SPLIT_NONE;
      const char *split_text = (const char *) sqlite3_column_text (stmt, 2);

      ead_label_parse ((const char *) sqlite3_column_text (stmt, 1), &label, NULL);
      if (split_text != NULL)
        ead_split_parse (split_text, &split, NULL);
      g_array_append_val (scores, score);
      g_array_append_val (labels, label);
      g_array_append_val (splits, split);
    }
  sqlite3_reset (stmt);
  if (rc != SQLITE_DONE)
    {
      _ead_store_set_error (error, project->db, rc, project->path, "cannot read the scores");
      return NULL;
    }
  return ead_score_table_new ((double *) scores->data, (EadLabel *) labels->data,
                              (EadSplit *) splits->data, scores->len);
}

/* Stored thresholds */

typedef struct {
  double suggested;
  const char *method;  /* static */
  double value;
  double review;
} ThresholdRow;

static gboolean
read_threshold_row (EadProject *project, gint64 model_id, ThresholdRow *row, GError **error)
{
  sqlite3_stmt *stmt = _ead_project_prepare (project,
    "SELECT suggested, suggested_method, value, review FROM thresholds WHERE model_id = ?",
    error);
  int rc;

  *row = (ThresholdRow) { NAN, NULL, NAN, NAN };
  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_int64 (stmt, 1, model_id);
  rc = sqlite3_step (stmt);
  if (rc == SQLITE_ROW)
    {
      row->suggested = _ead_column_double_or_nan (stmt, 0);
      if (g_strcmp0 ((const char *) sqlite3_column_text (stmt, 1), "f1") == 0)
        row->method = "f1";
      else if (sqlite3_column_type (stmt, 1) != SQLITE_NULL)
        row->method = "max-good";
      row->value = _ead_column_double_or_nan (stmt, 2);
      row->review = _ead_column_double_or_nan (stmt, 3);
    }
  sqlite3_reset (stmt);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE)
    {
      _ead_store_set_error (error, project->db, rc, project->path, "cannot read a threshold");
      return FALSE;
    }
  return TRUE;
}

static double
effective_of (const ThresholdRow *row)
{
  return !isnan (row->value) ? row->value : row->suggested;
}

gboolean
ead_project_get_threshold (EadProject *project,
                           gint64 model_id,
                           EadThreshold *threshold,
                           GError **error)
{
  ThresholdRow row;

  g_return_val_if_fail (project != NULL && threshold != NULL, FALSE);

  if (!check_model (project, model_id, error)
      || !read_threshold_row (project, model_id, &row, error))
    return FALSE;
  threshold->value = row.value;
  threshold->suggested = row.suggested;
  threshold->suggested_method = g_strcmp0 (row.method, "f1") == 0 ? EAD_SUGGEST_F1
                                                                   : EAD_SUGGEST_MAX_GOOD;
  threshold->review = row.review;
  threshold->effective = effective_of (&row);
  return TRUE;
}

/* Writes the row and its audit event; the caller holds the transaction. */
static gboolean
write_threshold (EadProject *project,
                 gint64 model_id,
                 const ThresholdRow *row,
                 const char *kind,
                 double old_value,
                 double new_value,
                 const char *user,
                 const char *reason,
                 GError **error)
{
  gint64 now = g_get_real_time ();
  sqlite3_stmt *stmt;

  /* The review band must begin below the threshold in force, whichever changed. */
  if (!isnan (row->review) && !(row->review < effective_of (row)))
    {
      if (isnan (effective_of (row)))
        g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                     "%s: model %" G_GINT64_FORMAT " has no threshold yet: set or suggest one "
                     "before a review band", project->path, model_id);
      else
        g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                     "%s: the review band of model %" G_GINT64_FORMAT " would begin at %.9g, "
                     "not below the threshold %.9g: lower or remove the review threshold",
                     project->path, model_id, row->review, effective_of (row));
      return FALSE;
    }

  stmt = _ead_project_prepare (project,
    "INSERT INTO thresholds (model_id, suggested, suggested_method, value, review, "
    "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (model_id) DO UPDATE SET "
    "suggested = excluded.suggested, suggested_method = excluded.suggested_method, "
    "value = excluded.value, review = excluded.review, updated_at = excluded.updated_at",
    error);
  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_int64 (stmt, 1, model_id);
  _ead_bind_double_or_null (stmt, 2, row->suggested);
  _ead_bind_text_or_null (stmt, 3, row->method);
  _ead_bind_double_or_null (stmt, 4, row->value);
  _ead_bind_double_or_null (stmt, 5, row->review);
  sqlite3_bind_int64 (stmt, 6, now);
  if (!_ead_project_exec (project, stmt, "cannot store the threshold", error))
    return FALSE;

  stmt = _ead_project_prepare (project,
    "INSERT INTO threshold_events (model_id, kind, old_value, new_value, user, reason, at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)", error);
  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_int64 (stmt, 1, model_id);
  sqlite3_bind_text (stmt, 2, kind, -1, SQLITE_STATIC);
  _ead_bind_double_or_null (stmt, 3, old_value);
  _ead_bind_double_or_null (stmt, 4, new_value);
  sqlite3_bind_text (stmt, 5, _ead_default_user (user), -1, SQLITE_TRANSIENT);
  _ead_bind_text_or_null (stmt, 6, reason);
  sqlite3_bind_int64 (stmt, 7, now);
  return _ead_project_exec (project, stmt, "cannot record the threshold change", error);
}

typedef enum {
  CHANGE_SET,
  CHANGE_REVIEW,
  CHANGE_SUGGESTED,
  CHANGE_ACCEPT,
} ThresholdChange;

static const char *const change_kinds[] = { "set", "review", "suggested", "accept" };

/* One threshold change in its own transaction. */
static gboolean
change_threshold (EadProject *project,
                  gint64 model_id,
                  ThresholdChange change,
                  double value,
                  const char *method,
                  const char *user,
                  const char *reason,
                  GError **error)
{
  ThresholdRow row;
  double old_value = NAN;
  gboolean ok;

  if (!_ead_project_begin (project, error))
    return FALSE;
  ok = check_model (project, model_id, error)
       && read_threshold_row (project, model_id, &row, error);
  if (ok)
    {
      switch (change)
        {
        case CHANGE_SET:
          old_value = effective_of (&row);
          row.value = value;
          break;
        case CHANGE_REVIEW:
          old_value = row.review;
          row.review = value;
          break;
        case CHANGE_SUGGESTED:
          old_value = row.suggested;
          row.suggested = value;
          row.method = method;
          break;
        case CHANGE_ACCEPT:
          old_value = effective_of (&row);
          if (isnan (row.suggested))
            {
              g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                           "%s: model %" G_GINT64_FORMAT " has no suggested threshold to "
                           "accept", project->path, model_id);
              ok = FALSE;
            }
          row.value = value = row.suggested;
          break;
        }
    }
  ok = ok && write_threshold (project, model_id, &row, change_kinds[change], old_value, value,
                              user, reason, error);
  if (!ok)
    {
      _ead_project_abort (project, error);
      return FALSE;
    }
  return _ead_project_commit (project, error);
}

gboolean
ead_project_set_threshold (EadProject *project,
                           gint64 model_id,
                           double value,
                           const char *user,
                           const char *reason,
                           GError **error)
{
  g_return_val_if_fail (project != NULL, FALSE);

  if (!isfinite (value))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID, "%s: a threshold must be a finite "
                   "number, not %g", project->path, value);
      return FALSE;
    }
  return change_threshold (project, model_id, CHANGE_SET, value, NULL, user, reason, error);
}

gboolean
ead_project_set_review_threshold (EadProject *project,
                                  gint64 model_id,
                                  double review,
                                  const char *user,
                                  const char *reason,
                                  GError **error)
{
  g_return_val_if_fail (project != NULL, FALSE);

  if (isinf (review))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID, "%s: a review threshold must be a "
                   "finite number, not %g", project->path, review);
      return FALSE;
    }
  return change_threshold (project, model_id, CHANGE_REVIEW, review, NULL, user, reason,
                           error);
}

gboolean
ead_project_suggest_threshold (EadProject *project,
                               gint64 model_id,
                               const char *user,
                               EadThresholdSuggestion *suggestion,
                               GError **error)
{
  g_autoptr (EadScoreTable) table = NULL;
  g_autoptr (GError) local_error = NULL;
  g_autofree char *reason = NULL;
  EadThresholdSuggestion computed;

  g_return_val_if_fail (project != NULL, FALSE);

  table = ead_project_load_scores (project, model_id, error);
  if (table == NULL)
    return FALSE;
  if (!ead_score_table_suggest (table, &computed, &local_error))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID, "%s: model %" G_GINT64_FORMAT ": %s",
                   project->path, model_id, local_error->message);
      return FALSE;
    }
  if (computed.method == EAD_SUGGEST_F1)
    reason = g_strdup_printf ("best F1 %.4f on %u good and %u defect images", computed.f1,
                              computed.n_good, computed.n_defect);
  else
    reason = g_strdup_printf ("highest of %u good scores plus a margin", computed.n_good);
  if (!change_threshold (project, model_id, CHANGE_SUGGESTED, computed.threshold,
                         ead_suggest_method_name (computed.method), user, reason, error))
    return FALSE;
  if (suggestion != NULL)
    *suggestion = computed;
  return TRUE;
}

gboolean
ead_project_accept_suggested_threshold (EadProject *project,
                                        gint64 model_id,
                                        const char *user,
                                        const char *reason,
                                        GError **error)
{
  g_return_val_if_fail (project != NULL, FALSE);

  return change_threshold (project, model_id, CHANGE_ACCEPT, NAN, NULL, user, reason, error);
}

void
ead_threshold_event_free (EadThresholdEvent *event)
{
  if (event == NULL)
    return;
  g_free (event->kind);
  g_free (event->user);
  g_free (event->reason);
  g_free (event);
}

GPtrArray *
ead_project_list_threshold_events (EadProject *project, gint64 model_id, GError **error)
{
  g_autoptr (GPtrArray) events = g_ptr_array_new_with_free_func (
    (GDestroyNotify) ead_threshold_event_free);
  sqlite3_stmt *stmt;
  int rc;

  g_return_val_if_fail (project != NULL, NULL);

  if (!check_model (project, model_id, error))
    return NULL;
  stmt = _ead_project_prepare (project,
    "SELECT id, model_id, kind, old_value, new_value, user, reason, at "
    "FROM threshold_events WHERE model_id = ? ORDER BY id", error);
  if (stmt == NULL)
    return NULL;
  sqlite3_bind_int64 (stmt, 1, model_id);
  while ((rc = sqlite3_step (stmt)) == SQLITE_ROW)
    {
      EadThresholdEvent *event = g_new0 (EadThresholdEvent, 1);

      event->id = sqlite3_column_int64 (stmt, 0);
      event->model_id = sqlite3_column_int64 (stmt, 1);
      event->kind = _ead_column_dup (stmt, 2);
      event->old_value = _ead_column_double_or_nan (stmt, 3);
      event->new_value = _ead_column_double_or_nan (stmt, 4);
      event->user = _ead_column_dup (stmt, 5);
      event->reason = _ead_column_dup (stmt, 6);
      event->at = sqlite3_column_int64 (stmt, 7);
      g_ptr_array_add (events, event);
    }
  sqlite3_reset (stmt);
  if (rc != SQLITE_DONE)
    {
      _ead_store_set_error (error, project->db, rc, project->path,
                            "cannot read the threshold history");
      return NULL;
    }
  return g_steal_pointer (&events);
}
