/* ead-project.h: the project store, one SQLite file (project.ead) per project.
 *
 * Everything the workstation knows about a project lives here: the imported images with
 * their labels and splits, ground-truth masks, models, training and inference runs,
 * scores and maps, thresholds with their audit trail, and reports.  The GUI and the
 * `ead` command line share this API; no SQL exists outside core/store.
 *
 * Threads: an EadProject is one database connection, used by one thread at a time.  A
 * worker that writes opens its own EadProject; readers on other connections keep
 * seeing the last committed state (WAL), and a writer waits up to
 * EAD_PROJECT_BUSY_TIMEOUT_MS for another writer's transaction to end.
 *
 * Errors: EAD_ERROR_IO (cannot open, read-only, disk full, locked), EAD_ERROR_FORMAT
 * (not a project, corrupt), EAD_ERROR_UNSUPPORTED (created by a newer version),
 * EAD_ERROR_INVALID (unknown id, bad argument, a constraint such as a frozen split).
 * Messages start with the project file's path and end with SQLite's own message.  Every
 * function that writes does so in one transaction: on failure nothing of it is saved
 * and what was saved before is untouched.
 *
 * Ownership: returned strings, structs and arrays belong to the caller; arrays of
 * records (GPtrArray) free their elements.
 */
#pragma once

#include <glib.h>
#include <stdint.h>

G_BEGIN_DECLS

#define EAD_PROJECT_FILE_NAME "project.ead"
#define EAD_PROJECT_BUSY_TIMEOUT_MS 10000
/* Hash length in bytes: XXH3-128 of the file's content, canonical (big-endian) form. */
#define EAD_IMAGE_HASH_SIZE 16

typedef struct _EadProject EadProject;

typedef enum {
  EAD_LABEL_UNLABELLED,
  EAD_LABEL_GOOD,
  EAD_LABEL_DEFECT,
} EadLabel;
#define EAD_N_LABELS 3

typedef enum {
  EAD_SPLIT_NONE,  /* not assigned yet */
  EAD_SPLIT_TRAIN,
  EAD_SPLIT_VALIDATION,
  EAD_SPLIT_TEST,
} EadSplit;

typedef enum {
  EAD_RUN_QUEUED,     /* training only */
  EAD_RUN_RUNNING,
  EAD_RUN_DONE,
  EAD_RUN_FAILED,
  EAD_RUN_CANCELLED,
} EadRunState;

typedef enum {
  EAD_RUN_TRAINING,
  EAD_RUN_INFERENCE,
} EadRunKind;

/* "unlabelled", "good", "defect"; parse accepts these words only. */
const char *ead_label_name (EadLabel label);
gboolean ead_label_parse (const char *text, EadLabel *label, GError **error);
/* "none", "train", "validation", "test". */
const char *ead_split_name (EadSplit split);
gboolean ead_split_parse (const char *text, EadSplit *split, GError **error);
/* "queued", "running", "done", "failed", "cancelled". */
const char *ead_run_state_name (EadRunState state);
const char *ead_run_kind_name (EadRunKind kind);  /* "training", "inference" */

/* Where the project of path lives: path itself when it ends in ".ead", otherwise
 * path/project.ead.  Newly allocated. */
char *ead_project_file_for (const char *path);

/* Opening */

/* Creates a new project file at path (its folder must exist) with the current schema.
 * Refuses (EAD_ERROR_IO) a path where a file already exists. */
EadProject *ead_project_create (const char *path, GError **error);

/* Opens an existing project file and upgrades its schema when it is older.  Refuses a
 * missing file (EAD_ERROR_IO), a file that is not a project (EAD_ERROR_FORMAT) and one
 * from a newer version (EAD_ERROR_UNSUPPORTED: "created by a newer version"). */
EadProject *ead_project_open (const char *path, GError **error);
void ead_project_close (EadProject *project);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (EadProject, ead_project_close)

const char *ead_project_get_path (EadProject *project);  /* the project file, absolute */
const char *ead_project_get_dir (EadProject *project);   /* its folder, absolute */

/* A path as the store keeps it: relative to the project folder when the file lies
 * inside it, otherwise absolute.  path may be relative to the current directory. */
char *ead_project_store_path (EadProject *project, const char *path);
/* The absolute path of a stored path. */
char *ead_project_resolve_path (EadProject *project, const char *stored_path);

/* Images */

typedef struct {
  gint64 id;
  gint64 set_id;                         /* 0 when none */
  char *path;                            /* as stored (ead_project_resolve_path) */
  guint8 hash[EAD_IMAGE_HASH_SIZE];
  guint64 size;                          /* bytes */
  int width;
  int height;
  char *format;                          /* "png", "jpeg", "tiff", "bmp" */
  EadLabel label;
  EadSplit split;
  char *defect;                          /* the MVTec defect kind, or NULL */
  char *mask_path;                       /* stored path of the ground-truth mask, or NULL */
  gboolean missing;                      /* the file was not found at the last import */
  gint64 added_at;                       /* microseconds since the Unix epoch */
} EadProjectImage;

void ead_project_image_free (EadProjectImage *image);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (EadProjectImage, ead_project_image_free)

/* An imported folder; an MVTec AD category is a set of its own. */
typedef struct {
  gint64 id;
  char *path;          /* as stored */
  char *name;          /* the folder's name */
  char *layout;        /* "mvtec", "folder" */
  guint64 n_images;    /* missing ones included */
  gint64 imported_at;  /* the last import */
} EadProjectImageSet;

void ead_project_image_set_free (EadProjectImageSet *set);
/* Every image set, by id.  Array of EadProjectImageSet. */
GPtrArray *ead_project_list_image_sets (EadProject *project, GError **error);

/* Which images a listing, a count or an inference run covers.  -1 means any. */
typedef struct {
  int label;       /* an EadLabel, or -1 */
  int split;       /* an EadSplit, or -1 */
  int missing;     /* 0: present files only, 1: missing ones only, -1: both */
  gint64 set_id;   /* 0: any set */
} EadImageFilter;

/* Every image, missing ones included. */
void ead_image_filter_init (EadImageFilter *filter);

/* What ead_project_add_images stores; the strings are copied. */
typedef struct {
  const char *path;                      /* absolute, or relative to the current directory */
  const guint8 *hash;                    /* EAD_IMAGE_HASH_SIZE bytes */
  guint64 size;
  int width;
  int height;
  const char *format;
  EadLabel label;
  EadSplit split;
  const char *defect;                    /* NULL unless a labelled defect kind */
  gint64 set_id;                         /* 0 for none */
} EadNewImage;

/* Adds n images in one transaction; ids (n entries, may be NULL) receives their ids.
 * A path or hash already present fails the whole batch (EAD_ERROR_INVALID). */
gboolean ead_project_add_images (EadProject *project,
                                  const EadNewImage *images,
                                  guint n,
                                  gint64 *ids,
                                  GError **error);

/* Images in id order (the order they were imported), from offset, at most limit of
 * them (0: all).  filter may be NULL for every image.  Array of EadProjectImage. */
GPtrArray *ead_project_list_images (EadProject *project,
                                    const EadImageFilter *filter,
                                    guint64 offset,
                                    guint limit,
                                    GError **error);
gboolean ead_project_count_images (EadProject *project,
                                   const EadImageFilter *filter,
                                   guint64 *count,
                                   GError **error);

/* EAD_ERROR_INVALID when there is no such image. */
EadProjectImage *ead_project_get_image (EadProject *project, gint64 id, GError **error);

/* The image at path: absolute, relative to the current directory, or relative to the
 * project folder; a present file is preferred over a missing image of the same path.
 * NULL without an error when there is none. */
EadProjectImage *ead_project_find_image (EadProject *project,
                                         const char *path,
                                         GError **error);

/* Sets the label of n images in one transaction; an unknown id fails them all. */
gboolean ead_project_set_labels (EadProject *project,
                                 const gint64 *ids,
                                 guint n,
                                 EadLabel label,
                                 GError **error);

/* Assigns a split to n images in one transaction.  A split is frozen once assigned:
 * changing it fails them all (EAD_ERROR_INVALID); assigning the same one again is
 * allowed. */
gboolean ead_project_set_splits (EadProject *project,
                                 const gint64 *ids,
                                 guint n,
                                 EadSplit split,
                                 GError **error);

/* Deletes images with their masks, results and failure records. */
gboolean ead_project_delete_images (EadProject *project,
                                    const gint64 *ids,
                                    guint n,
                                    GError **error);

/* Models */

/* The bundle metadata key whose value is stored as the model's dataset snapshot. */
#define EAD_PROJECT_DATASET_SNAPSHOT_KEY "ead.train.dataset.snapshot"

typedef struct {
  gint64 id;
  char *name;
  char *bundle_path;       /* as stored (ead_project_resolve_path) */
  char *arch;              /* "efficientad-s", "efficientad-m" */
  int input_height;
  int input_width;
  char *teacher;           /* the bundle's ead.teacher.source, or NULL */
  char *dataset_snapshot;  /* EAD_PROJECT_DATASET_SNAPSHOT_KEY, or NULL */
  char *metrics;           /* JSON, or NULL */
  gint64 created_at;
} EadProjectModel;

void ead_project_model_free (EadProjectModel *model);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (EadProjectModel, ead_project_model_free)

/* Registers the bundle at bundle_path (its header is read: arch, input size, teacher,
 * dataset snapshot) under name (NULL: the file name without ".ead.safetensors").
 * Returns the new model's id, 0 on error; a bundle registered already is refused
 * (EAD_ERROR_INVALID, naming the model). */
gint64 ead_project_add_model (EadProject *project,
                              const char *bundle_path,
                              const char *name,
                              GError **error);
GPtrArray *ead_project_list_models (EadProject *project, GError **error);  /* by id */
EadProjectModel *ead_project_get_model (EadProject *project, gint64 id, GError **error);
/* The most recently registered model's id; EAD_ERROR_INVALID when there is none. */
gint64 ead_project_latest_model (EadProject *project, GError **error);
/* Replaces the model's metrics (a JSON text, checked). */
gboolean ead_project_set_model_metrics (EadProject *project,
                                        gint64 model_id,
                                        const char *metrics_json,
                                        GError **error);

/* Training runs */

/* One step's losses, as the trainer reports them (EadTrainProgress). */
typedef struct {
  guint64 step;
  double loss_total;    /* what the optimiser minimises */
  double loss_hard;     /* student-teacher hard feature loss */
  double loss_penalty;  /* penalty on general images */
  double loss_ae;       /* autoencoder */
  double loss_stae;     /* student-autoencoder */
  double elapsed_s;     /* since the run started */
} EadTrainingMetric;

/* A queued run of steps steps with its parameters (a JSON text, checked). */
gint64 ead_project_training_run_new (EadProject *project,
                                     const char *params_json,
                                     guint64 steps,
                                     GError **error);
/* queued → running → done, failed or cancelled; a finished run cannot change state
 * (EAD_ERROR_INVALID).  message (may be NULL) says why a run failed or stopped. */
gboolean ead_project_training_run_set_state (EadProject *project,
                                             gint64 run_id,
                                             EadRunState state,
                                             const char *message,
                                             GError **error);
/* Appends n metric rows and moves the run's progress to the last of them, in one
 * transaction: call it every few steps from the trainer's progress callback.  eta_s
 * < 0 means unknown. */
gboolean ead_project_training_run_add_progress (EadProject *project,
                                                gint64 run_id,
                                                const EadTrainingMetric *metrics,
                                                guint n,
                                                double eta_s,
                                                GError **error);
gboolean ead_project_training_run_append_log (EadProject *project,
                                              gint64 run_id,
                                              const char *text,
                                              GError **error);
/* Links the run to the model it produced. */
gboolean ead_project_training_run_set_model (EadProject *project,
                                             gint64 run_id,
                                             gint64 model_id,
                                             GError **error);
/* The run's metric rows in step order, for the loss curve.  GArray of
 * EadTrainingMetric. */
GArray *ead_project_training_run_metrics (EadProject *project,
                                          gint64 run_id,
                                          GError **error);
/* The run's log; NULL with an error for an unknown run. */
char *ead_project_training_run_log (EadProject *project, gint64 run_id, GError **error);

/* Inference runs and results */

/* Starts a run of the model over the present images that filter selects (NULL: every
 * present image).  The filter is stored with the run. */
gint64 ead_project_inference_run_new (EadProject *project,
                                      gint64 model_id,
                                      const EadImageFilter *filter,
                                      GError **error);
/* The ids of present images that filter selects and that have neither a result from
 * model_id nor a failure recorded by run_id (0: by no run), ascending: what a resumed
 * run still has to do.  GArray of gint64. */
GArray *ead_project_list_unscored (EadProject *project,
                                   gint64 model_id,
                                   const EadImageFilter *filter,
                                   gint64 run_id,
                                   GError **error);

/* Result maps are the network's low-resolution maps: 64 x 64 at a 256 input. */
#define EAD_RESULT_MAP_MAX_SIDE 4096

typedef struct {
  gint64 image_id;
  const char *failure;  /* NULL for a scored image; else why it could not be scored */
  double score;
  const float *map;     /* map_width * map_height floats, stored as half floats */
  int map_width;
  int map_height;
} EadResultInput;

/* Stores a batch of results (replacing an earlier result of the same model for the
 * same image) and failures, in one transaction. */
gboolean ead_project_add_results (EadProject *project,
                                  gint64 run_id,
                                  const EadResultInput *results,
                                  guint n,
                                  GError **error);
/* running → done, failed or cancelled; message (may be NULL) says why. */
gboolean ead_project_inference_run_finish (EadProject *project,
                                           gint64 run_id,
                                           EadRunState state,
                                           const char *message,
                                           GError **error);

typedef struct {
  gint64 image_id;
  gint64 run_id;
  char *path;        /* the image's stored path */
  EadLabel label;
  EadSplit split;
  double score;
} EadProjectResult;

void ead_project_result_free (EadProjectResult *result);

/* The model's results for the images filter selects (NULL: all), by image id.  Array
 * of EadProjectResult. */
GPtrArray *ead_project_list_results (EadProject *project,
                                     gint64 model_id,
                                     const EadImageFilter *filter,
                                     GError **error);

/* The stored map of the model's result for an image, as floats (exactly the half
 * values stored).  *map is newly allocated, *width x *height. */
gboolean ead_project_get_result_map (EadProject *project,
                                     gint64 model_id,
                                     gint64 image_id,
                                     float **map,
                                     int *width,
                                     int *height,
                                     GError **error);

typedef struct {
  gint64 image_id;
  char *path;
  char *reason;
} EadInferenceFailure;

void ead_inference_failure_free (EadInferenceFailure *failure);
/* The images a run could not score, with the reasons.  Array of EadInferenceFailure. */
GPtrArray *ead_project_list_inference_failures (EadProject *project,
                                                gint64 run_id,
                                                GError **error);

/* Runs of both kinds */

typedef struct {
  EadRunKind kind;
  gint64 id;
  EadRunState state;
  gint64 model_id;     /* inference: the model scored; training: the model made, or 0 */
  guint64 done;        /* steps, or images scored or failed */
  guint64 total;       /* steps, or images selected */
  guint64 n_failed;    /* inference: images that could not be scored */
  double elapsed_s;    /* training only */
  double eta_s;        /* training only; < 0 when unknown */
  char *message;       /* why it failed or stopped, or NULL */
  gint64 created_at;
  gint64 finished_at;  /* 0 while not finished */
} EadProjectRun;

void ead_project_run_free (EadProjectRun *run);
/* Every run, newest first.  Array of EadProjectRun. */
GPtrArray *ead_project_list_runs (EadProject *project, GError **error);

/* Reports */

typedef struct {
  gint64 id;
  gint64 model_id;   /* 0 when the model was deleted */
  char *format;      /* "pdf", "csv" */
  char *path;        /* as stored */
  double threshold;  /* NAN when none was recorded */
  char *summary;     /* JSON, or NULL */
  gint64 created_at;
} EadProjectReport;

void ead_project_report_free (EadProjectReport *report);
/* Records a report written to path; threshold may be NAN, summary_json NULL. */
gint64 ead_project_add_report (EadProject *project,
                               gint64 model_id,
                               const char *format,
                               const char *path,
                               double threshold,
                               const char *summary_json,
                               GError **error);
GPtrArray *ead_project_list_reports (EadProject *project, GError **error);  /* newest first */

/* Half floats (IEEE 754 binary16), as result maps are stored: round to nearest, ties to
 * even; infinities and NaN are kept, values beyond the half range become infinities. */
uint16_t ead_half_from_float (float value);
float ead_half_to_float (uint16_t half);

G_END_DECLS
