/* ead-inference.h: scoring a project's images with a model, and the maps it keeps.
 *
 * An EadInferenceJob scores a selection of a project's images (all of them, a label, a
 * split, an image set, or a new folder imported first) with one model and stores a
 * score and a map per image.  It is made for a worker thread: it opens its own
 * connection to the project, so the GUI keeps reading through another one and sees each
 * batch as soon as it is committed.
 *
 * Reliability: results are committed one transaction per batch, so a killed process
 * loses at most the batch in flight.  A job scores only the selected images that have
 * no result from the model yet: running it again after a crash or a cancel does only
 * the rest.  An image that cannot be scored (unreadable, not an image, unsupported,
 * over the pixel limit, gone from disk) is recorded with the reason and the run goes
 * on; a later job tries it again.  One job at a time may run on a project: a second
 * one is refused while the first holds the project's inference lock, a hidden file
 * beside the project file.  A job that finds runs still marked running without a job
 * holding the lock (their process was killed) marks them failed.
 *
 * Maps: the stored map is the detector's normalised combined map at the network's
 * resolution (ead_detector_get_map: 56 x 56 at a 256 input), as half floats.  The
 * full-resolution map is re-derived from it exactly as the detector derives it (pad
 * EAD_MAP_PAD zeros, bilinear resize: ead_map_upsample), so its maximum equals the
 * stored score up to the half-float rounding of the map: a relative difference below
 * 2^-11 of the map's largest magnitude.
 */
#pragma once

#include <glib.h>

#include "ead-backend.h"
#include "ead-image.h"
#include "ead-import.h"
#include "ead-project.h"

G_BEGIN_DECLS

#define EAD_INFERENCE_DEFAULT_BATCH 8
#define EAD_INFERENCE_MAX_BATCH 256

typedef struct _EadInferenceJob EadInferenceJob;

typedef struct {
  EadImageFilter filter;  /* which images; missing files are never selected */
  const char *folder;     /* when set: imported first, then only its images are scored */
  int batch;              /* images per network run and per transaction */
  int threads;            /* CPU threads for the network and for decoding; 0: all cores */
  const char *device;     /* "cpu" (default), "cuda" or "auto" */
  EadPrecision precision; /* fp32 (default), bf16 or auto */
  guint64 max_pixels;     /* images with more pixels fail; 0: EAD_IMAGE_DEFAULT_MAX_PIXELS */
} EadInferenceOptions;

/* Every present image, EAD_INFERENCE_DEFAULT_BATCH, all cores, the CPU. */
void ead_inference_options_init (EadInferenceOptions *options);

/* Where a job stands; also its final summary. */
typedef struct {
  gint64 model_id;
  gint64 run_id;        /* 0 while none was started, and when nothing was left to score */
  guint64 total;        /* images this run has to score */
  guint64 done;         /* of those, scored or failed so far */
  guint64 n_scored;
  guint64 n_failed;
  guint64 n_skipped;    /* selected images the model had scored before: not redone */
  guint64 n_imported;   /* folder: images the import added */
  double elapsed_s;     /* since the first batch started */
  double eta_s;         /* until the last batch ends; < 0 while unknown */
} EadInferenceProgress;

/* Called on the job's thread after each committed batch, and once before the first
 * batch (done = 0) when there is something to score. */
typedef void (*EadInferenceProgressFunc) (const EadInferenceProgress *progress,
                                          gpointer user_data);

/* A job on the project at project_path (a project file, or the folder that holds
 * project.ead) with the model bundle at bundle_path, registered in the project when it
 * is not yet; or, with bundle_path NULL, the registered model model_id (0: the latest
 * one).  Nothing is opened or read yet: that happens in ead_inference_job_run, so new
 * may be called on the GUI's thread.  options may be NULL (the defaults); its strings
 * are copied.  EAD_ERROR_INVALID for a bad option. */
EadInferenceJob *ead_inference_job_new (const char *project_path,
                                        const char *bundle_path,
                                        gint64 model_id,
                                        const EadInferenceOptions *options,
                                        GError **error);
void ead_inference_job_free (EadInferenceJob *job);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (EadInferenceJob, ead_inference_job_free)

/* Runs the job to the end.  When *cancel becomes non-zero it stops after the batch in
 * progress, marks the run cancelled and fails with G_IO_ERROR_CANCELLED; the batches
 * committed stay.  Failing images are not errors: they are counted and listed
 * (ead_inference_job_get_failures).  Errors: the project, the bundle, the folder, the
 * device, or the store refusing a write (the run is then marked failed).  summary (may
 * be NULL) receives the final counts, also on failure.  A job runs once. */
gboolean ead_inference_job_run (EadInferenceJob *job,
                                EadInferenceProgressFunc progress,
                                gpointer user_data,
                                const gint *cancel,
                                EadInferenceProgress *summary,
                                GError **error);

/* After a run: the images it could not score, with the reasons (starting with the
 * file's path).  Array of EadInferenceFailure, owned by the job. */
GPtrArray *ead_inference_job_get_failures (EadInferenceJob *job);
/* After a run with a folder: what the import found (the files that are not usable
 * images among them); NULL otherwise.  Owned by the job. */
const EadImportReport *ead_inference_job_get_import_report (EadInferenceJob *job);

/* The model's map of an image at out_width x out_height, re-derived from the stored
 * map; at the image's own size its maximum is the image's score (see above).  Newly
 * allocated, out_width * out_height floats; *score (may be NULL) receives the maximum.
 * EAD_ERROR_INVALID when the model has no result for the image. */
float *ead_project_result_full_map (EadProject *project,
                                    gint64 model_id,
                                    gint64 image_id,
                                    int out_width,
                                    int out_height,
                                    float *score,
                                    GError **error);

/* The heatmap picture of the model's result for an image: the re-derived map at the
 * size of under (the image, or a thumbnail of it), coloured from lo to hi
 * (ead_heatmap_render) and blended over under with the given opacity.  Newly
 * allocated. */
EadImage *ead_project_result_heatmap (EadProject *project,
                                      gint64 model_id,
                                      gint64 image_id,
                                      const EadImage *under,
                                      float lo,
                                      float hi,
                                      float opacity,
                                      GError **error);

G_END_DECLS
