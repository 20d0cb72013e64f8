/* test-inference.c: inference runs over a project's images.
 *
 * A small project of generated PNGs scored with a seeded random model: a result for
 * every readable image, the unreadable ones (corrupt, 0 bytes, gone, over the pixel
 * limit) recorded with their reasons while the run goes on, a second run that scores
 * nothing new, a cancelled run that a rerun completes, the inference lock, runs left
 * running by a killed process, a new folder imported and scored, and the stored maps
 * giving back the detector's scores.
 */
#include <math.h>
#include <string.h>
#include <sys/file.h>
#include <fcntl.h>
#include <unistd.h>

#include <gio/gio.h>
#include <glib.h>
#include <glib/gstdio.h>

#include "ead-bundle.h"
#include "ead-detector.h"
#include "ead-error.h"
#include "ead-image.h"
#include "ead-import.h"
#include "ead-inference.h"
#include "ead-model.h"
#include "ead-project.h"
#include "ead-test-util.h"

#define IMAGE_SIDE 64
#define BATCH 4
#define THREADS 2

/* The half floats of the stored map round each value to 11 significant bits (relative
 * error at most 2^-11 = 4.9e-4); the maximum of the bilinear map of rounded values is
 * within that of the maximum of the exact one, for a map whose values are positive, as
 * a random model's are.  1e-3 leaves a factor of two. */
#define REDERIVE_TOLERANCE 1e-3

static char *tmp_dir;
static char *bundle_path;

static char *
tmp_path (const char *name)
{
  return g_build_filename (tmp_dir, name, NULL);
}

/* A textured picture that differs with seed (so every file has its own hash). */
static void
write_png (const char *path, int width, int height, guint seed)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadImage) image = ead_image_new (width, height);
  GRand *rand = g_rand_new_with_seed (seed);

  for (int y = 0; y < height; y++)
    for (int x = 0; x < width; x++)
      for (int c = 0; c < 3; c++)
        image->rgb[3 * ((size_t) y * width + x) + c] =
          (uint8_t) (100 + 40 * sin ((x + seed) * 0.3 + c) + g_rand_int_range (rand, 0, 30));
  g_rand_free (rand);
  g_assert_true (ead_image_save_png (image, path, &error));
  g_assert_no_error (error);
}

/* A folder of n images named img-000.png ... with seeds from first_seed. */
static char *
make_folder (const char *name, int n, guint first_seed)
{
  char *dir = tmp_path (name);

  g_assert_cmpint (g_mkdir_with_parents (dir, 0755), ==, 0);
  for (int i = 0; i < n; i++)
    {
      g_autofree char *file = g_strdup_printf ("img-%03d.png", i);
      g_autofree char *path = g_build_filename (dir, file, NULL);

      write_png (path, IMAGE_SIDE, IMAGE_SIDE, first_seed + (guint) i);
    }
  return dir;
}

/* A new project (in a folder of its own) with the images of folder imported. */
static char *
make_project (const char *name, const char *folder)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *dir = tmp_path (name);
  char *file = g_build_filename (dir, EAD_PROJECT_FILE_NAME, NULL);
  g_autoptr (EadProject) project = NULL;
  g_autoptr (EadImportReport) report = NULL;

  g_assert_cmpint (g_mkdir_with_parents (dir, 0755), ==, 0);
  project = ead_project_create (file, &error);
  g_assert_no_error (error);
  report = ead_project_import (project, folder, NULL, NULL, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (report->n_failed, ==, 0);
  return file;
}

static EadProject *
open_project (const char *file)
{
  g_autoptr (GError) error = NULL;
  EadProject *project = ead_project_open (file, &error);

  g_assert_no_error (error);
  return project;
}

static guint
count_results (const char *file, gint64 model_id)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadProject) project = open_project (file);
  g_autoptr (GPtrArray) results = ead_project_list_results (project, model_id, NULL, &error);

  g_assert_no_error (error);
  return results->len;
}

static EadInferenceJob *
new_job (const char *file, const char *bundle, gint64 model_id, guint64 max_pixels,
         const char *folder)
{
  g_autoptr (GError) error = NULL;
  EadInferenceOptions options;
  EadInferenceJob *job;

  ead_inference_options_init (&options);
  options.batch = BATCH;
  options.threads = THREADS;
  options.max_pixels = max_pixels;
  options.folder = folder;
  job = ead_inference_job_new (file, bundle, model_id, &options, &error);
  g_assert_no_error (error);
  return job;
}

typedef struct {
  guint calls;
  guint64 total;
  guint64 last_done;
  gint *cancel;       /* set once done reaches cancel_at */
  guint64 cancel_at;
} ProgressLog;

static void
on_progress (const EadInferenceProgress *progress, gpointer user_data)
{
  ProgressLog *log = user_data;

  if (log->calls == 0)
    {
      g_assert_cmpuint (progress->done, ==, 0);
      log->total = progress->total;
    }
  else
    g_assert_cmpuint (progress->done, >, log->last_done);
  g_assert_cmpuint (progress->total, ==, log->total);
  g_assert_cmpuint (progress->done, <=, progress->total);
  g_assert_cmpuint (progress->n_scored + progress->n_failed, ==, progress->done);
  g_assert_cmpint (progress->run_id, >, 0);
  log->last_done = progress->done;
  log->calls++;
  if (log->cancel != NULL && progress->done >= log->cancel_at)
    g_atomic_int_set (log->cancel, 1);
}

static const EadInferenceFailure *
find_failure (GPtrArray *failures, const char *name)
{
  for (guint i = 0; i < failures->len; i++)
    {
      const EadInferenceFailure *failure = failures->pdata[i];

      if (g_str_has_suffix (failure->path, name))
        return failure;
    }
  return NULL;
}

static void
assert_failure (GPtrArray *failures, const char *name, const char *fragment)
{
  const EadInferenceFailure *failure = find_failure (failures, name);

  if (failure == NULL)
    g_error ("no failure recorded for %s", name);
  g_test_message ("%s: %s", name, failure->reason);
  if (strstr (failure->reason, name) == NULL)
    g_error ("the reason \"%s\" does not name %s", failure->reason, name);
  if (fragment != NULL && strstr (failure->reason, fragment) == NULL)
    g_error ("expected \"%s\" in \"%s\"", fragment, failure->reason);
}

/* Readable images are scored, unreadable ones recorded with the reason while the run
 * goes on; a second run scores nothing new. */
static void
test_run_and_failures (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *folder = make_folder ("failures", 7, 100);
  g_autofree char *big = g_build_filename (folder, "big.png", NULL);
  g_autofree char *corrupt = g_build_filename (folder, "img-001.png", NULL);
  g_autofree char *empty = g_build_filename (folder, "img-002.png", NULL);
  g_autofree char *gone = g_build_filename (folder, "img-003.png", NULL);
  g_autofree char *file = NULL;
  g_autoptr (EadInferenceJob) job = NULL;
  g_autoptr (EadInferenceJob) again = NULL;
  g_autoptr (EadProject) project = NULL;
  g_autoptr (GPtrArray) stored = NULL;
  g_autoptr (GPtrArray) runs = NULL;
  g_autoptr (GPtrArray) models = NULL;
  EadInferenceProgress summary;
  ProgressLog log = { 0 };
  GPtrArray *failures;

  write_png (big, IMAGE_SIDE + 16, IMAGE_SIDE + 16, 99);
  file = make_project ("failures-project", folder);
  /* Broken after the import, as files on a share are. */
  g_assert_true (g_file_set_contents (corrupt, "not a PNG any more", -1, NULL));
  g_assert_true (g_file_set_contents (empty, "", 0, NULL));
  g_assert_cmpint (g_unlink (gone), ==, 0);

  job = new_job (file, bundle_path, 0, (guint64) IMAGE_SIDE * IMAGE_SIDE, NULL);
  g_assert_true (ead_inference_job_run (job, on_progress, &log, NULL, &summary, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (summary.total, ==, 8);
  g_assert_cmpuint (summary.done, ==, 8);
  g_assert_cmpuint (summary.n_scored, ==, 4);
  g_assert_cmpuint (summary.n_failed, ==, 4);
  g_assert_cmpuint (summary.n_skipped, ==, 0);
  g_assert_cmpfloat (summary.eta_s, ==, 0.0);
  g_assert_cmpuint (log.calls, ==, 1 + 2);  /* the start, then two batches of 4 */
  g_assert_cmpuint (log.last_done, ==, 8);

  failures = ead_inference_job_get_failures (job);
  g_assert_cmpuint (failures->len, ==, 4);
  assert_failure (failures, "img-001.png", "not an image");
  assert_failure (failures, "img-002.png", "empty file");
  assert_failure (failures, "img-003.png", NULL);
  assert_failure (failures, "big.png", "over the limit");

  /* The store has a result for each readable image and the failures of the run. */
  g_assert_cmpuint (count_results (file, summary.model_id), ==, 4);
  project = open_project (file);
  stored = ead_project_list_inference_failures (project, summary.run_id, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (stored->len, ==, 4);
  assert_failure (stored, "img-002.png", "empty file");
  runs = ead_project_list_runs (project, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (runs->len, ==, 1);
  g_assert_cmpint (((EadProjectRun *) runs->pdata[0])->state, ==, EAD_RUN_DONE);
  g_assert_cmpuint (((EadProjectRun *) runs->pdata[0])->done, ==, 8);
  /* The bundle was registered once. */
  models = ead_project_list_models (project, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (models->len, ==, 1);
  g_clear_pointer (&project, ead_project_close);

  /* Again, by model id: the scored images are skipped, the failed ones tried again. */
  again = new_job (file, NULL, summary.model_id, (guint64) IMAGE_SIDE * IMAGE_SIDE, NULL);
  g_assert_true (ead_inference_job_run (again, NULL, NULL, NULL, &summary, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (summary.n_scored, ==, 0);
  g_assert_cmpuint (summary.n_failed, ==, 4);
  g_assert_cmpuint (summary.n_skipped, ==, 4);
  g_assert_cmpuint (count_results (file, summary.model_id), ==, 4);
}

/* A run cancelled after its first batch keeps that batch; the rerun does the rest. */
static void
test_cancel_and_resume (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *folder = make_folder ("cancel", 10, 200);
  g_autofree char *file = make_project ("cancel-project", folder);
  g_autoptr (EadInferenceJob) job = new_job (file, bundle_path, 0, 0, NULL);
  g_autoptr (EadInferenceJob) rerun = NULL;
  g_autoptr (EadProject) project = NULL;
  g_autoptr (GPtrArray) runs = NULL;
  EadInferenceProgress summary;
  gint cancel = 0;
  ProgressLog log = { .cancel = &cancel, .cancel_at = 1 };

  g_assert_false (ead_inference_job_run (job, on_progress, &log, &cancel, &summary, &error));
  g_assert_error (error, G_IO_ERROR, G_IO_ERROR_CANCELLED);
  g_clear_error (&error);
  g_assert_cmpuint (summary.done, ==, BATCH);
  g_assert_cmpuint (count_results (file, summary.model_id), ==, BATCH);
  project = open_project (file);
  runs = ead_project_list_runs (project, &error);
  g_assert_no_error (error);
  g_assert_cmpint (((EadProjectRun *) runs->pdata[0])->state, ==, EAD_RUN_CANCELLED);
  g_clear_pointer (&project, ead_project_close);

  rerun = new_job (file, bundle_path, 0, 0, NULL);
  g_assert_true (ead_inference_job_run (rerun, NULL, NULL, NULL, &summary, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (summary.total, ==, 10 - BATCH);
  g_assert_cmpuint (summary.n_scored, ==, 10 - BATCH);
  g_assert_cmpuint (summary.n_skipped, ==, BATCH);
  g_assert_cmpuint (count_results (file, summary.model_id), ==, 10);
}

/* The stored map gives back the score the detector computed, and the detector run
 * on its own agrees with the stored score. */
static void
test_rederived_maps (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *folder = make_folder ("maps", 3, 300);
  g_autofree char *odd = g_build_filename (folder, "odd.png", NULL);
  g_autofree char *file = NULL;
  g_autoptr (EadInferenceJob) job = NULL;
  g_autoptr (EadProject) project = NULL;
  g_autoptr (GPtrArray) results = NULL;
  g_autoptr (EadModel) model = NULL;
  g_autoptr (EadDetector) detector = NULL;
  EadDetectorOptions detector_options = { .max_batch = 1, .threads = THREADS };
  EadInferenceProgress summary;

  /* Not square, not the input size: the full map is at the image's own size. */
  write_png (odd, 97, 45, 399);
  file = make_project ("maps-project", folder);
  job = new_job (file, bundle_path, 0, 0, NULL);
  g_assert_true (ead_inference_job_run (job, NULL, NULL, NULL, &summary, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (summary.n_scored, ==, 4);

  model = ead_bundle_read (bundle_path, &error);
  g_assert_no_error (error);
  detector = ead_detector_new (model, &detector_options, &error);
  g_assert_no_error (error);
  project = open_project (file);
  results = ead_project_list_results (project, summary.model_id, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (results->len, ==, 4);
  for (guint i = 0; i < results->len; i++)
    {
      EadProjectResult *result = results->pdata[i];
      g_autoptr (EadProjectImage) image = ead_project_get_image (project, result->image_id,
                                                                 &error);
      g_autofree char *path = ead_project_resolve_path (project, image->path);
      g_autoptr (EadImage) pixels = ead_image_load (path, 0, &error);
      g_autoptr (EadImage) resized = NULL;
      g_autoptr (EadImage) heatmap = NULL;
      g_autofree float *input = NULL;
      g_autofree float *full = NULL;
      g_autofree float *direct_full = NULL;
      float rederived = 0.0f, direct;
      int in_h, in_w;

      g_assert_no_error (error);
      full = ead_project_result_full_map (project, summary.model_id, result->image_id,
                                          pixels->width, pixels->height, &rederived, &error);
      g_assert_no_error (error);
      g_test_message ("%s: stored %.9g, re-derived %.9g", image->path, result->score,
                      rederived);
      g_assert_cmpfloat (result->score, >, 0.0);
      g_assert_cmpfloat (fabs (rederived - result->score), <=,
                         REDERIVE_TOLERANCE * result->score);

      /* The detector alone, image by image. */
      ead_detector_get_input_size (detector, &in_h, &in_w);
      resized = ead_image_resize_bilinear (pixels, in_w, in_h);
      input = g_new (float, (size_t) 3 * in_h * in_w);
      ead_image_to_input (resized, input);
      g_assert_true (ead_detector_run (detector, input, 1, &error));
      g_assert_no_error (error);
      direct_full = g_new (float, (size_t) pixels->width * pixels->height);
      direct = ead_detector_full_map (detector, 0, pixels->height, pixels->width, direct_full);
      g_assert_cmpfloat (fabs (direct - result->score), <=, 1e-5 * result->score);

      heatmap = ead_project_result_heatmap (project, summary.model_id, result->image_id,
                                            pixels, 0.0f, (float) result->score, 0.5f, &error);
      g_assert_no_error (error);
      g_assert_cmpint (heatmap->width, ==, pixels->width);
      g_assert_cmpint (heatmap->height, ==, pixels->height);
    }

  g_assert_null (ead_project_result_full_map (project, summary.model_id, 9999, 8, 8, NULL,
                                              &error));
  g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
}

/* One job per project at a time; runs a killed process left running are closed. */
static void
test_lock_and_interrupted_runs (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *folder = make_folder ("lock", 2, 400);
  g_autofree char *file = make_project ("lock-project", folder);
  g_autofree char *dir = g_path_get_dirname (file);
  g_autofree char *lock_path = g_build_filename (dir, ".project.ead.inference-lock", NULL);
  g_autoptr (EadInferenceJob) blocked = new_job (file, bundle_path, 0, 0, NULL);
  g_autoptr (EadInferenceJob) job = new_job (file, bundle_path, 0, 0, NULL);
  g_autoptr (EadProject) project = NULL;
  g_autoptr (GPtrArray) runs = NULL;
  EadInferenceProgress summary;
  gint64 model_id, stale_run;
  int fd;

  /* What a job that is still running holds. */
  fd = open (lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
  g_assert_cmpint (fd, >=, 0);
  g_assert_cmpint (flock (fd, LOCK_EX | LOCK_NB), ==, 0);
  g_assert_false (ead_inference_job_run (blocked, NULL, NULL, NULL, NULL, &error));
  g_assert_error (error, EAD_ERROR, EAD_ERROR_IO);
  g_assert_nonnull (strstr (error->message, "another inference run is in progress"));
  g_clear_error (&error);
  close (fd);

  /* What a killed job leaves: a run still marked running. */
  project = open_project (file);
  model_id = ead_project_add_model (project, bundle_path, NULL, &error);
  g_assert_no_error (error);
  stale_run = ead_project_inference_run_new (project, model_id, NULL, &error);
  g_assert_no_error (error);

  g_assert_true (ead_inference_job_run (job, NULL, NULL, NULL, &summary, &error));
  g_assert_no_error (error);
  g_assert_cmpint (summary.model_id, ==, model_id);
  g_assert_cmpuint (summary.n_scored, ==, 2);
  runs = ead_project_list_runs (project, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (runs->len, ==, 2);
  for (guint i = 0; i < runs->len; i++)
    {
      EadProjectRun *run = runs->pdata[i];

      if (run->id == stale_run)
        {
          g_assert_cmpint (run->state, ==, EAD_RUN_FAILED);
          g_assert_nonnull (strstr (run->message, "interrupted"));
        }
      else
        g_assert_cmpint (run->state, ==, EAD_RUN_DONE);
    }
  /* The lock file is hidden, so that importing the project's folder skips it. */
  g_assert_true (g_file_test (lock_path, G_FILE_TEST_EXISTS));
}

/* A new folder is imported, and only its images are scored. */
static void
test_folder (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *folder = make_folder ("base", 2, 500);
  g_autofree char *file = make_project ("folder-project", folder);
  g_autofree char *incoming = make_folder ("incoming", 3, 600);
  g_autofree char *empty_dir = tmp_path ("nothing-here");
  g_autoptr (EadInferenceJob) job = new_job (file, bundle_path, 0, 0, incoming);
  g_autoptr (EadInferenceJob) nothing = NULL;
  g_autoptr (EadInferenceJob) missing = NULL;
  EadInferenceProgress summary;

  g_assert_true (ead_inference_job_run (job, NULL, NULL, NULL, &summary, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (summary.n_imported, ==, 3);
  g_assert_cmpuint (summary.total, ==, 3);
  g_assert_cmpuint (summary.n_scored, ==, 3);
  g_assert_nonnull (ead_inference_job_get_import_report (job));
  g_assert_cmpuint (count_results (file, summary.model_id), ==, 3);

  /* A folder without images scores nothing (not the whole project). */
  g_assert_cmpint (g_mkdir (empty_dir, 0755), ==, 0);
  nothing = new_job (file, bundle_path, 0, 0, empty_dir);
  g_assert_true (ead_inference_job_run (nothing, NULL, NULL, NULL, &summary, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (summary.total, ==, 0);
  g_assert_cmpint (summary.run_id, ==, 0);
  g_assert_cmpuint (count_results (file, summary.model_id), ==, 3);

  missing = new_job (file, bundle_path, 0, 0, "/nonexistent/folder");
  g_assert_false (ead_inference_job_run (missing, NULL, NULL, NULL, NULL, &error));
  g_assert_error (error, EAD_ERROR, EAD_ERROR_IO);
  g_assert_nonnull (strstr (error->message, "/nonexistent/folder"));
}

static void
test_bad_arguments (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *folder = make_folder ("bad", 1, 700);
  g_autofree char *file = make_project ("bad-project", folder);
  g_autofree char *broken = tmp_path ("broken.ead.safetensors");
  g_autoptr (EadInferenceJob) job = NULL;
  g_autoptr (EadProject) project = NULL;
  g_autoptr (GPtrArray) models = NULL;
  EadInferenceOptions options;

  ead_inference_options_init (&options);
  options.batch = 0;
  g_assert_null (ead_inference_job_new (file, bundle_path, 0, &options, &error));
  g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
  g_clear_error (&error);

  /* No model in the project and none given. */
  job = new_job (file, NULL, 0, 0, NULL);
  g_assert_false (ead_inference_job_run (job, NULL, NULL, NULL, NULL, &error));
  g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
  g_clear_error (&error);
  g_clear_pointer (&job, ead_inference_job_free);

  /* A broken bundle is refused and not registered. */
  g_assert_true (g_file_set_contents (broken, "garbage", -1, NULL));
  job = new_job (file, broken, 0, 0, NULL);
  g_assert_false (ead_inference_job_run (job, NULL, NULL, NULL, NULL, &error));
  g_assert_nonnull (error);
  g_assert_nonnull (strstr (error->message, "broken.ead.safetensors"));
  g_clear_error (&error);
  project = open_project (file);
  models = ead_project_list_models (project, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (models->len, ==, 0);
}

int
main (int argc, char **argv)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadModel) model = ead_model_new (EAD_ARCH_SMALL);
  int status;

  g_test_init (&argc, &argv, NULL);
  tmp_dir = g_dir_make_tmp ("ead-inference-XXXXXX", &error);
  g_assert_no_error (error);
  ead_model_init_random (model, 7);
  bundle_path = tmp_path ("random.ead.safetensors");
  g_assert_true (ead_bundle_write (model, bundle_path, &error));
  g_assert_no_error (error);

  g_test_add_func ("/inference/run-and-failures", test_run_and_failures);
  g_test_add_func ("/inference/cancel-and-resume", test_cancel_and_resume);
  g_test_add_func ("/inference/rederived-maps", test_rederived_maps);
  g_test_add_func ("/inference/lock-and-interrupted-runs", test_lock_and_interrupted_runs);
  g_test_add_func ("/inference/folder", test_folder);
  g_test_add_func ("/inference/bad-arguments", test_bad_arguments);
  status = g_test_run ();

  ead_test_remove_tree (tmp_dir);
  g_free (bundle_path);
  g_free (tmp_dir);
  return status;
}
