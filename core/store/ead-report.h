/* ead-report.h: inspection reports from the project store, as CSV and as PDF.
 *
 * A report covers one model's results on the images a filter selects, judged against
 * the model's threshold in force (ead_project_get_threshold) and its review band: a
 * score at or above the threshold fails, one in [review, threshold) goes to review,
 * the rest pass.  The `ead report` command and the GUI both write reports through these
 * functions; the GUI calls them on a worker thread with a connection of its own.
 *
 * CSV: a header line, then one row per image in id order (RFC 4180 quoting, UTF-8,
 * "\n" line ends): path (as stored), label, split, score (%.9g; empty when unscored),
 * verdict (pass, review, fail; empty without a threshold; "unscored" when the model has
 * no result, "error" when the image could not be scored), model (its name), threshold
 * (empty when none), reason (why the image could not be scored).
 *
 * PDF (A4, cairo with pango): a summary page (project, model, architecture, teacher,
 * threshold and review band, counts, the confusion matrix against the labels, the
 * score histogram of good, defect and unlabelled images with the threshold marked),
 * then one entry per flagged image (fail or review), highest score first: the image,
 * its heatmap from the stored map laid over it, score, verdict, label and path.
 *
 * Both are written atomically: into a temporary file beside the target, synced, then
 * renamed over it.  A failure, a cancel or a killed process never leaves a partial file
 * under the target's name, and an existing file there stays as it was until the new one
 * is complete.  Each report written is recorded in the project (ead_project_add_report).
 */
#pragma once

#include <glib.h>

#include "ead-project.h"
#include "ead-threshold.h"

G_BEGIN_DECLS

typedef struct {
  gint64 model_id;        /* 0: the latest model */
  EadImageFilter filter;  /* which images; every image by default */
} EadReportOptions;

void ead_report_options_init (EadReportOptions *options);

typedef struct {
  gint64 model_id;
  gint64 report_id;       /* the project's record of the report */
  double threshold;       /* in force; NAN when none */
  double review;          /* lower edge of the review band; NAN when none */
  guint64 n_images;       /* rows */
  guint64 n_scored;
  guint64 n_unscored;     /* no result from the model, errors included */
  guint64 n_errors;       /* the model's last run that tried them could not score them */
  guint64 n_flagged;      /* review and fail: the PDF's entries */
  EadThresholdCounts counts;  /* of the scored images; without a threshold all pass */
} EadReportSummary;

/* Called after each flagged image drawn into a PDF: entries done, entries in all. */
typedef void (*EadReportProgressFunc) (guint done, guint total, gpointer user_data);

/* options may be NULL (the defaults); summary may be NULL.  Errors: EAD_ERROR_INVALID
 * without a model, EAD_ERROR_IO when the file cannot be written (nothing is left
 * behind), the store's errors. */
gboolean ead_report_write_csv (EadProject *project,
                               const EadReportOptions *options,
                               const char *path,
                               EadReportSummary *summary,
                               GError **error);

/* As ead_report_write_csv.  When *cancel (may be NULL) becomes non-zero, stops before
 * the next entry and fails with G_IO_ERROR_CANCELLED, writing nothing.  An image that
 * cannot be read any more is shown as missing beside its heatmap; it is no error. */
gboolean ead_report_write_pdf (EadProject *project,
                               const EadReportOptions *options,
                               const char *path,
                               EadReportProgressFunc progress,
                               gpointer user_data,
                               const gint *cancel,
                               EadReportSummary *summary,
                               GError **error);

G_END_DECLS
