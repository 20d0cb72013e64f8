/* ead-inference.c: inference runs over a project's images, and re-derived maps.
 *
 * The job's thread runs the networks and commits; a decoder thread reads, decodes and
 * resizes the next batch meanwhile (its images in parallel), so that decoding hides
 * behind the network where the network is fast (a GPU).  Two batch buffers go back and
 * forth between them through a pair of queues.
 */
#include "ead-inference.h"

#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <omp.h>
#include <sys/file.h>
#include <unistd.h>

#include "ead-backend.h"
#include "ead-bundle.h"
#include "ead-detector.h"
#include "ead-error.h"

struct _EadInferenceJob {
  char *project_path;
  char *bundle_path;
  gint64 model_id;
  EadInferenceOptions options;  /* folder and device point to the copies below */
  char *folder;
  char *device;
  gboolean ran;
  GPtrArray *failures;          /* EadInferenceFailure */
  EadImportReport *import_report;
};

/* An image to score. */
typedef struct {
  gint64 id;
  char *path;         /* absolute */
  char *stored_path;  /* as the store keeps it */
} Entry;

typedef struct {
  const Entry *entry;
  int width;          /* the decoded image's size */
  int height;
  EadImage *resized;  /* at the network input size, until copied into the inputs */
  int slot;           /* its index among the batch's inputs; -1 when it failed */
  char *failure;
} Item;

typedef struct {
  guint start;        /* index of its first entry */
  int n;              /* items */
  int n_slots;        /* items decoded into inputs */
  Item *items;        /* max_batch */
  float *inputs;      /* max_batch network inputs */
} Batch;

#define N_BATCH_BUFFERS 2

typedef struct {
  const Entry *entries;
  guint n_entries;
  int batch;
  int in_h, in_w;
  guint64 max_pixels;
  int threads;
  Batch buffers[N_BATCH_BUFFERS];
  GAsyncQueue *free_batches;   /* Batch buffers the decoder may fill */
  GAsyncQueue *ready_batches;  /* decoded, in order */
  gint stop;
} Decoder;

void
ead_inference_options_init (EadInferenceOptions *options)
{
  *options = (EadInferenceOptions) {
    .batch = EAD_INFERENCE_DEFAULT_BATCH,
    .device = "cpu",
  };
  ead_image_filter_init (&options->filter);
  options->filter.missing = 0;
}

EadInferenceJob *
ead_inference_job_new (const char *project_path,
                       const char *bundle_path,
                       gint64 model_id,
                       const EadInferenceOptions *options,
                       GError **error)
{
  EadInferenceOptions defaults;
  EadInferenceJob *job;

  g_return_val_if_fail (project_path != NULL, NULL);

  if (options == NULL)
    {
      ead_inference_options_init (&defaults);
      options = &defaults;
    }
  if (options->batch < 1 || options->batch > EAD_INFERENCE_MAX_BATCH)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "batch size %d is out of range (1 to %d)", options->batch,
                   EAD_INFERENCE_MAX_BATCH);
      return NULL;
    }
  if (options->threads < 0 || model_id < 0)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID, "%s",
                   options->threads < 0 ? "the thread count must be 0 (all cores) or more"
                                        : "a model id is positive");
      return NULL;
    }
  if (options->filter.label < -1 || options->filter.label >= EAD_N_LABELS
      || options->filter.split < -1 || options->filter.split > EAD_SPLIT_TEST
      || options->filter.set_id < 0)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID, "the image filter is not valid");
      return NULL;
    }

  job = g_new0 (EadInferenceJob, 1);
  job->project_path = g_strdup (project_path);
  job->bundle_path = g_strdup (bundle_path);
  job->model_id = model_id;
  job->options = *options;
  job->options.filter.missing = 0;
  job->folder = g_strdup (options->folder);
  job->device = g_strdup (options->device != NULL ? options->device : "cpu");
  job->options.folder = job->folder;
  job->options.device = job->device;
  job->failures = g_ptr_array_new_with_free_func ((GDestroyNotify) ead_inference_failure_free);
  return job;
}

void
ead_inference_job_free (EadInferenceJob *job)
{
  if (job == NULL)
    return;
  g_free (job->project_path);
  g_free (job->bundle_path);
  g_free (job->folder);
  g_free (job->device);
  g_ptr_array_unref (job->failures);
  ead_import_report_free (job->import_report);
  g_free (job);
}

GPtrArray *
ead_inference_job_get_failures (EadInferenceJob *job)
{
  return job->failures;
}

const EadImportReport *
ead_inference_job_get_import_report (EadInferenceJob *job)
{
  return job->import_report;
}

/* The inference lock: an flock on a hidden file beside the project file.  The kernel
 * drops it when its process ends, however it ends, so a lock that can be taken means
 * that no job is running on the project.  Returns the descriptor, -1 with an error. */
static int
take_lock (EadProject *project, GError **error)
{
  g_autofree char *base = g_path_get_basename (ead_project_get_path (project));
  g_autofree char *name = g_strdup_printf (".%s.inference-lock", base);
  g_autofree char *path = g_build_filename (ead_project_get_dir (project), name, NULL);
  int fd = open (path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
  int saved_errno;

  if (fd < 0)
    {
      saved_errno = errno;
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot create the inference lock: %s",
                   path, g_strerror (saved_errno));
      return -1;
    }
  if (flock (fd, LOCK_EX | LOCK_NB) != 0)
    {
      saved_errno = errno;
      close (fd);
      if (saved_errno == EWOULDBLOCK)
        g_set_error (error, EAD_ERROR, EAD_ERROR_IO,
                     "%s: another inference run is in progress on this project; wait for "
                     "it to end or cancel it", ead_project_get_path (project));
      else
        g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot lock: %s", path,
                     g_strerror (saved_errno));
      return -1;
    }
  return fd;
}

/* Runs still marked running while we hold the lock belong to a process that died. */
static gboolean
end_interrupted_runs (EadProject *project, GError **error)
{
  g_autoptr (GPtrArray) runs = ead_project_list_runs (project, error);

  if (runs == NULL)
    return FALSE;
  for (guint i = 0; i < runs->len; i++)
    {
      EadProjectRun *run = runs->pdata[i];

      if (run->kind == EAD_RUN_INFERENCE && run->state == EAD_RUN_RUNNING
          && !ead_project_inference_run_finish (project, run->id, EAD_RUN_FAILED,
                                                "interrupted: the process running it "
                                                "ended before it finished", error))
        return FALSE;
    }
  return TRUE;
}

/* The model to score with, and its weights.  A bundle is read (and so checked) before
 * it is registered, so that a broken bundle never becomes a project's model. */
static EadModel *
load_model (EadInferenceJob *job, EadProject *project, gint64 *model_id, GError **error)
{
  g_autoptr (EadModel) model = NULL;
  g_autoptr (GPtrArray) models = NULL;
  g_autoptr (EadProjectModel) record = NULL;
  g_autofree char *bundle = NULL;
  g_autofree char *wanted = NULL;

  if (job->bundle_path == NULL)
    {
      *model_id = job->model_id > 0 ? job->model_id : ead_project_latest_model (project, error);
      if (*model_id == 0)
        return NULL;
      record = ead_project_get_model (project, *model_id, error);
      if (record == NULL)
        return NULL;
      bundle = ead_project_resolve_path (project, record->bundle_path);
      return ead_bundle_read (bundle, error);
    }

  model = ead_bundle_read (job->bundle_path, error);
  if (model == NULL)
    return NULL;
  models = ead_project_list_models (project, error);
  if (models == NULL)
    return NULL;
  wanted = g_canonicalize_filename (job->bundle_path, NULL);
  *model_id = 0;
  for (guint i = 0; i < models->len && *model_id == 0; i++)
    {
      EadProjectModel *known = models->pdata[i];
      g_autofree char *resolved = ead_project_resolve_path (project, known->bundle_path);
      g_autofree char *path = g_canonicalize_filename (resolved, NULL);

      if (g_str_equal (path, wanted))
        *model_id = known->id;
    }
  if (*model_id == 0)
    *model_id = ead_project_add_model (project, job->bundle_path, NULL, error);
  return *model_id != 0 ? g_steal_pointer (&model) : NULL;
}

/* Imports the job's folder and narrows the filter to its image set.  *empty is set
 * when the folder holds no image of the project. */
static gboolean
select_folder (EadInferenceJob *job,
               EadProject *project,
               EadImageFilter *filter,
               gboolean *empty,
               GError **error)
{
  g_autofree char *root = NULL;
  g_autofree char *prefix = NULL;
  g_autoptr (GPtrArray) sets = NULL;
  gint64 set_id = 0;
  guint n_sets = 0;

  job->import_report = ead_project_import (project, job->folder, NULL, NULL, NULL, error);
  if (job->import_report == NULL)
    return FALSE;
  sets = ead_project_list_image_sets (project, error);
  if (sets == NULL)
    return FALSE;
  root = g_canonicalize_filename (job->folder, NULL);
  prefix = g_str_has_suffix (root, G_DIR_SEPARATOR_S) ? g_strdup (root)
                                                      : g_strconcat (root, G_DIR_SEPARATOR_S, NULL);
  for (guint i = 0; i < sets->len; i++)
    {
      EadProjectImageSet *set = sets->pdata[i];
      g_autofree char *path = ead_project_resolve_path (project, set->path);

      if (g_str_equal (path, root) || g_str_has_prefix (path, prefix))
        {
          set_id = set->id;
          n_sets++;
        }
    }
  if (n_sets > 1)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "%s: holds %u image sets (MVTec AD categories); score one category "
                   "folder at a time", root, n_sets);
      return FALSE;
    }
  *empty = n_sets == 0;
  filter->set_id = set_id;
  return TRUE;
}

static void
entry_clear (Entry *entry)
{
  g_free (entry->path);
  g_free (entry->stored_path);
}

/* The paths of the images in ids (ascending), from one listing of the selection. */
static GArray *
list_entries (EadProject *project, const EadImageFilter *filter, GArray *ids, GError **error)
{
  g_autoptr (GPtrArray) images = ead_project_list_images (project, filter, 0, 0, error);
  g_autoptr (GArray) entries = NULL;
  guint next = 0;

  if (images == NULL)
    return NULL;
  entries = g_array_sized_new (FALSE, FALSE, sizeof (Entry), ids->len);
  g_array_set_clear_func (entries, (GDestroyNotify) entry_clear);
  /* Both lists are in id order. */
  for (guint i = 0; i < images->len && next < ids->len; i++)
    {
      EadProjectImage *image = images->pdata[i];
      Entry entry;

      if (image->id != g_array_index (ids, gint64, next))
        continue;
      entry.id = image->id;
      entry.path = ead_project_resolve_path (project, image->path);
      entry.stored_path = g_strdup (image->path);
      g_array_append_val (entries, entry);
      next++;
    }
  return g_steal_pointer (&entries);
}

/* Decoding */

static void
decode_item (Decoder *decoder, Item *item)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadImage) image = ead_image_load (item->entry->path, decoder->max_pixels, &error);

  if (image == NULL)
    {
      item->failure = g_strdup (error->message);
      return;
    }
  item->width = image->width;
  item->height = image->height;
  item->resized = ead_image_resize_bilinear (image, decoder->in_w, decoder->in_h);
}

static void
fill_batch (Decoder *decoder, Batch *batch, guint start)
{
  size_t input_size = (size_t) 3 * decoder->in_h * decoder->in_w;
  int n = (int) MIN ((guint) decoder->batch, decoder->n_entries - start);
  int threads = decoder->threads > 0 ? decoder->threads : omp_get_num_procs ();

  batch->start = start;
  batch->n = n;
  batch->n_slots = 0;
  for (int i = 0; i < n; i++)
    batch->items[i] = (Item) { .entry = &decoder->entries[start + i], .slot = -1 };

#pragma omp parallel for schedule(dynamic) num_threads(MIN (threads, n))
  for (int i = 0; i < n; i++)
    decode_item (decoder, &batch->items[i]);

  for (int i = 0; i < n; i++)
    {
      Item *item = &batch->items[i];

      if (item->resized == NULL)
        continue;
      item->slot = batch->n_slots++;
      ead_image_to_input (item->resized, batch->inputs + (size_t) item->slot * input_size);
      g_clear_pointer (&item->resized, ead_image_free);
    }
}

static gpointer
decoder_thread (gpointer data)
{
  Decoder *decoder = data;

  for (guint start = 0; start < decoder->n_entries; start += (guint) decoder->batch)
    {
      Batch *batch;

      if (g_atomic_int_get (&decoder->stop))
        break;
      batch = g_async_queue_pop (decoder->free_batches);
      if (g_atomic_int_get (&decoder->stop))
        {
          g_async_queue_push (decoder->free_batches, batch);
          break;
        }
      fill_batch (decoder, batch, start);
      g_async_queue_push (decoder->ready_batches, batch);
    }
  return NULL;
}

static void
batch_clear_items (Batch *batch)
{
  for (int i = 0; i < batch->n; i++)
    g_clear_pointer (&batch->items[i].failure, g_free);
  batch->n = 0;
}

static void
decoder_init (Decoder *decoder,
              const Entry *entries,
              guint n_entries,
              int batch,
              int in_h,
              int in_w,
              const EadInferenceOptions *options)
{
  *decoder = (Decoder) {
    .entries = entries,
    .n_entries = n_entries,
    .batch = batch,
    .in_h = in_h,
    .in_w = in_w,
    .max_pixels = options->max_pixels,
    .threads = options->threads,
    .free_batches = g_async_queue_new (),
    .ready_batches = g_async_queue_new (),
  };
  for (int b = 0; b < N_BATCH_BUFFERS; b++)
    {
      decoder->buffers[b].items = g_new0 (Item, batch);
      decoder->buffers[b].inputs = g_new (float, (size_t) batch * 3 * in_h * in_w);
      g_async_queue_push (decoder->free_batches, &decoder->buffers[b]);
    }
}

static void
decoder_clear (Decoder *decoder)
{
  for (int b = 0; b < N_BATCH_BUFFERS; b++)
    {
      batch_clear_items (&decoder->buffers[b]);
      g_free (decoder->buffers[b].items);
      g_free (decoder->buffers[b].inputs);
    }
  g_async_queue_unref (decoder->free_batches);
  g_async_queue_unref (decoder->ready_batches);
}

/* Scoring */

typedef struct {
  EadInferenceJob *job;
  EadProject *project;
  EadDetector *detector;
  EadInferenceProgress *state;
  float *full;         /* the full-resolution map of one image */
  size_t full_size;
  gint64 started_us;
} Scorer;

/* Runs the networks on a decoded batch and commits its results and failures. */
static gboolean
score_batch (Scorer *scorer, Batch *batch, GError **error)
{
  g_autofree EadResultInput *results = g_new0 (EadResultInput, batch->n);
  EadInferenceProgress *state = scorer->state;
  int map_h, map_w;
  double elapsed;

  ead_detector_get_map_size (scorer->detector, &map_h, &map_w);
  if (batch->n_slots > 0
      && !ead_detector_run (scorer->detector, batch->inputs, batch->n_slots, error))
    return FALSE;
  for (int i = 0; i < batch->n; i++)
    {
      Item *item = &batch->items[i];
      EadResultInput *result = &results[i];
      size_t size = (size_t) item->width * item->height;

      result->image_id = item->entry->id;
      if (item->slot < 0)
        {
          result->failure = item->failure;
          continue;
        }
      if (size > scorer->full_size)
        {
          scorer->full = g_renew (float, scorer->full, size);
          scorer->full_size = size;
        }
      result->score = ead_detector_full_map (scorer->detector, item->slot, item->height,
                                             item->width, scorer->full);
      result->map = ead_detector_get_map (scorer->detector, item->slot);
      result->map_width = map_w;
      result->map_height = map_h;
    }
  if (!ead_project_add_results (scorer->project, state->run_id, results, (guint) batch->n,
                                error))
    return FALSE;

  for (int i = 0; i < batch->n; i++)
    {
      Item *item = &batch->items[i];
      EadInferenceFailure *failure;

      if (item->slot >= 0)
        {
          state->n_scored++;
          continue;
        }
      state->n_failed++;
      failure = g_new0 (EadInferenceFailure, 1);
      failure->image_id = item->entry->id;
      failure->path = g_strdup (item->entry->stored_path);
      failure->reason = g_strdup (item->failure);
      g_ptr_array_add (scorer->job->failures, failure);
    }
  state->done += (guint64) batch->n;
  elapsed = (double) (g_get_monotonic_time () - scorer->started_us) / G_USEC_PER_SEC;
  state->elapsed_s = elapsed;
  state->eta_s = elapsed / (double) state->done * (double) (state->total - state->done);
  return TRUE;
}

static gboolean
is_cancelled (const gint *cancel)
{
  return cancel != NULL && g_atomic_int_get (cancel) != 0;
}

/* Scores the entries in batches; the run exists and is running. */
static gboolean
score_entries (Scorer *scorer,
               const Entry *entries,
               guint n_entries,
               const EadInferenceOptions *options,
               EadInferenceProgressFunc progress,
               gpointer user_data,
               const gint *cancel,
               GError **error)
{
  int batch_size = ead_detector_get_max_batch (scorer->detector);
  guint n_batches = (n_entries + (guint) batch_size - 1) / (guint) batch_size;
  Decoder decoder;
  GThread *thread;
  gboolean ok = TRUE;
  int in_h, in_w;

  ead_detector_get_input_size (scorer->detector, &in_h, &in_w);
  decoder_init (&decoder, entries, n_entries, batch_size, in_h, in_w, options);
  thread = g_thread_new ("ead-decode", decoder_thread, &decoder);
  scorer->started_us = g_get_monotonic_time ();
  for (guint b = 0; b < n_batches && ok; b++)
    {
      Batch *batch = g_async_queue_pop (decoder.ready_batches);

      ok = score_batch (scorer, batch, error);
      batch_clear_items (batch);
      if (ok && progress != NULL)
        progress (scorer->state, user_data);
      if (ok && b + 1 < n_batches && is_cancelled (cancel))
        {
          g_set_error (error, G_IO_ERROR, G_IO_ERROR_CANCELLED,
                       "inference cancelled after %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT
                       " images", scorer->state->done, scorer->state->total);
          ok = FALSE;
        }
      /* Stop first: a decoder woken by this buffer must see that it is not to fill it,
       * or it could fill both buffers and wait for a third. */
      if (!ok)
        g_atomic_int_set (&decoder.stop, 1);
      g_async_queue_push (decoder.free_batches, batch);
    }
  g_thread_join (thread);
  decoder_clear (&decoder);
  return ok;
}

gboolean
ead_inference_job_run (EadInferenceJob *job,
                       EadInferenceProgressFunc progress,
                       gpointer user_data,
                       const gint *cancel,
                       EadInferenceProgress *summary,
                       GError **error)
{
  g_autofree char *file = NULL;
  g_autoptr (EadProject) project = NULL;
  g_autoptr (EadModel) model = NULL;
  g_autoptr (EadDetector) detector = NULL;
  g_autoptr (GArray) ids = NULL;
  g_autoptr (GArray) entries = NULL;
  g_autoptr (GError) local_error = NULL;
  EadInferenceProgress state = { .eta_s = -1.0 };
  EadImageFilter filter = job->options.filter;
  EadDetectorOptions detector_options = { 0 };
  Scorer scorer = { 0 };
  gboolean empty = FALSE, ok;
  guint64 n_selected = 0;
  int lock_fd = -1;

  g_return_val_if_fail (job != NULL && !job->ran, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);
  job->ran = TRUE;

  file = ead_project_file_for (job->project_path);
  project = ead_project_open (file, &local_error);
  ok = project != NULL && (lock_fd = take_lock (project, &local_error)) >= 0
       && end_interrupted_runs (project, &local_error);
  if (ok)
    {
      model = load_model (job, project, &state.model_id, &local_error);
      ok = model != NULL;
    }
  if (ok && job->folder != NULL)
    {
      ok = select_folder (job, project, &filter, &empty, &local_error);
      if (ok)
        state.n_imported = job->import_report->n_added;
    }
  if (ok && !empty)
    {
      ids = ead_project_list_unscored (project, state.model_id, &filter, 0, &local_error);
      ok = ids != NULL && ead_project_count_images (project, &filter, &n_selected, &local_error);
      if (ok)
        {
          state.total = ids->len;
          state.n_skipped = n_selected - MIN (n_selected, ids->len);
        }
    }
  if (ok && state.total > 0)
    {
      entries = list_entries (project, &filter, ids, &local_error);
      ok = entries != NULL;
      state.total = ok ? entries->len : 0;
    }
  if (ok && state.total > 0)
    {
      detector_options.max_batch = (int) MIN ((guint64) job->options.batch, state.total);
      detector_options.threads = job->options.threads;
      detector_options.device = job->options.device;
      detector_options.precision = job->options.precision;
      detector = ead_detector_new (model, &detector_options, &local_error);
      ok = detector != NULL;
      g_clear_pointer (&model, ead_model_free);
    }
  if (ok && state.total > 0 && is_cancelled (cancel))
    {
      g_set_error (&local_error, G_IO_ERROR, G_IO_ERROR_CANCELLED,
                   "inference cancelled before it started");
      ok = FALSE;
    }
  if (ok && state.total > 0)
    {
      state.run_id = ead_project_inference_run_new (project, state.model_id, &filter,
                                                    &local_error);
      ok = state.run_id != 0;
    }
  if (ok && state.total > 0)
    {
      if (progress != NULL)
        progress (&state, user_data);
      scorer = (Scorer) { .job = job, .project = project, .detector = detector,
                          .state = &state };
      ok = score_entries (&scorer, (const Entry *) entries->data, entries->len, &job->options,
                          progress, user_data, cancel, &local_error);
      g_free (scorer.full);
      if (ok)
        ok = ead_project_inference_run_finish (project, state.run_id, EAD_RUN_DONE, NULL,
                                               &local_error);
      else
        {
          gboolean cancelled = g_error_matches (local_error, G_IO_ERROR, G_IO_ERROR_CANCELLED);

          /* Best effort: when the store itself failed this may fail too, and the next
           * job marks the run interrupted. */
          ead_project_inference_run_finish (project, state.run_id,
                                            cancelled ? EAD_RUN_CANCELLED : EAD_RUN_FAILED,
                                            local_error->message, NULL);
        }
    }
  if (state.done == state.total)
    state.eta_s = 0.0;
  if (lock_fd >= 0)
    close (lock_fd);
  if (summary != NULL)
    *summary = state;
  if (!ok)
    g_propagate_error (error, g_steal_pointer (&local_error));
  return ok;
}

/* Re-derived maps */

float *
ead_project_result_full_map (EadProject *project,
                             gint64 model_id,
                             gint64 image_id,
                             int out_width,
                             int out_height,
                             float *score,
                             GError **error)
{
  g_autofree float *map = NULL;
  g_autofree float *padded = NULL;
  float *full;
  float max;
  int w, h;

  g_return_val_if_fail (project != NULL && out_width > 0 && out_height > 0, NULL);

  if (!ead_project_get_result_map (project, model_id, image_id, &map, &w, &h, error))
    return NULL;
  padded = g_new0 (float, (size_t) (h + 2 * EAD_MAP_PAD) * (w + 2 * EAD_MAP_PAD));
  full = g_new (float, (size_t) out_width * out_height);
  max = ead_map_upsample (ead_backend_cpu (), map, h, w, padded, out_height, out_width, full);
  if (score != NULL)
    *score = max;
  return full;
}

EadImage *
ead_project_result_heatmap (EadProject *project,
                            gint64 model_id,
                            gint64 image_id,
                            const EadImage *under,
                            float lo,
                            float hi,
                            float opacity,
                            GError **error)
{
  g_autofree float *full = NULL;

  g_return_val_if_fail (under != NULL, NULL);

  full = ead_project_result_full_map (project, model_id, image_id, under->width,
                                      under->height, NULL, error);
  if (full == NULL)
    return NULL;
  return ead_heatmap_render (full, under->width, under->height, lo, hi, under, opacity);
}
