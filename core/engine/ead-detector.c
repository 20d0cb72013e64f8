#include "ead-detector.h"

#include <string.h>

#include "ead-error.h"

#define MAP_PAD EAD_MAP_PAD

struct _EadDetector {
  EadBackend *backend;
  EadModel *model;         /* weights and normalisation; a private copy of the numbers */
  int max_batch;
  EadPrecision precision;
  char *precision_note;
  int input_h, input_w;
  int map_h, map_w;
  EadWorkspace workspace;
  /* compiled networks: [0] for one image, [1] for max_batch images; a smaller batch runs
   * image by image */
  EadNetExec *teacher[2], *student[2], *autoencoder[2];
  float *t_out, *s_out, *a_out;
  float *map_st, *map_ae, *map, *padded;
};

void
ead_detector_free (EadDetector *detector)
{
  if (detector == NULL)
    return;
  for (int i = 0; i < 2; i++)
    {
      if (detector->teacher[i])
        detector->backend->exec_free (detector->teacher[i]);
      if (detector->student[i])
        detector->backend->exec_free (detector->student[i]);
      if (detector->autoencoder[i])
        detector->backend->exec_free (detector->autoencoder[i]);
    }
  ead_workspace_clear (&detector->workspace);
  g_free (detector->t_out);
  g_free (detector->s_out);
  g_free (detector->a_out);
  g_free (detector->map_st);
  g_free (detector->map_ae);
  g_free (detector->map);
  g_free (detector->padded);
  g_free (detector->precision_note);
  g_free (detector->model);
  g_free (detector);
}

static gboolean
compile_batch (EadDetector *detector, const EadModel *model, int i, int n, GError **error)
{
  EadBackend *backend = detector->backend;

  detector->teacher[i] = backend->compile (backend, model->teacher, n, detector->input_h,
                                           detector->input_w, &detector->workspace, error);
  if (detector->teacher[i] == NULL)
    return FALSE;
  detector->student[i] = backend->compile (backend, model->student, n, detector->input_h,
                                           detector->input_w, &detector->workspace, error);
  if (detector->student[i] == NULL)
    return FALSE;
  detector->autoencoder[i] = backend->compile (backend, model->autoencoder, n,
                                               detector->input_h, detector->input_w,
                                               &detector->workspace, error);
  if (detector->autoencoder[i] == NULL)
    return FALSE;
  return TRUE;
}

EadDetector *
ead_detector_new (const EadModel *model, const EadDetectorOptions *options, GError **error)
{
  static const EadDetectorOptions defaults = { .max_batch = 1, .threads = 0, .device = "cpu" };
  g_autoptr (EadDetector) detector = NULL;
  g_autoptr (GMutexLocker) locker = NULL;
  EadShape in = { 3, model->input_height, model->input_width };
  EadShape t_shape, s_shape, a_shape;
  size_t map_size;

  if (options == NULL)
    options = &defaults;
  if (options->max_batch < 0 || options->max_batch > 1024)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "batch size %d is out of range (1 to 1024)", options->max_batch);
      return NULL;
    }
  if (ead_model_is_teacher_only (model))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "this is a teacher without a student or autoencoder; train a model with it "
                   "first (ead train --teacher)");
      return NULL;
    }
  if (!ead_model_validate (model, "model", error))
    return NULL;
  if (!ead_net_shapes (model->teacher, in, NULL, &t_shape, error)
      || !ead_net_shapes (model->student, in, NULL, &s_shape, error)
      || !ead_net_shapes (model->autoencoder, in, NULL, &a_shape, error))
    return NULL;
  if (t_shape.h != a_shape.h || t_shape.w != a_shape.w || s_shape.h != t_shape.h
      || s_shape.w != t_shape.w)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "network outputs disagree: teacher %dx%d, student %dx%d, autoencoder %dx%d",
                   t_shape.w, t_shape.h, s_shape.w, s_shape.h, a_shape.w, a_shape.h);
      return NULL;
    }

  detector = g_new0 (EadDetector, 1);
  detector->backend = ead_backend_get (options->device ? options->device : "cpu", error);
  if (detector->backend == NULL)
    return NULL;
  locker = g_mutex_locker_new (ead_backend_compile_mutex ());
  detector->backend->set_threads (detector->backend, options->threads);
  if (!detector->backend->set_precision (detector->backend, options->precision, error))
    return NULL;
  detector->precision = detector->backend->get_precision (detector->backend);
  detector->precision_note = g_strdup (detector->backend->describe_precision (detector->backend));
  detector->max_batch = options->max_batch > 0 ? options->max_batch : 1;
  detector->input_h = model->input_height;
  detector->input_w = model->input_width;
  detector->map_h = t_shape.h;
  detector->map_w = t_shape.w;
  /* the executables hold converted weights; keep the normalisation numbers only */
  detector->model = g_memdup2 (model, sizeof *model);
  detector->model->teacher = NULL;
  detector->model->student = NULL;
  detector->model->autoencoder = NULL;
  detector->model->metadata = NULL;

  map_size = (size_t) detector->map_h * detector->map_w;
  detector->t_out = g_new (float, detector->max_batch * t_shape.c * map_size);
  detector->s_out = g_new (float, detector->max_batch * s_shape.c * map_size);
  detector->a_out = g_new (float, detector->max_batch * a_shape.c * map_size);
  detector->map_st = g_new (float, detector->max_batch * map_size);
  detector->map_ae = g_new (float, detector->max_batch * map_size);
  detector->map = g_new (float, detector->max_batch * map_size);
  detector->padded = g_new0 (float, detector->max_batch * (detector->map_h + 2 * MAP_PAD)
                                      * (detector->map_w + 2 * MAP_PAD));

  if (!compile_batch (detector, model, 0, 1, error)
      || (detector->max_batch > 1
          && !compile_batch (detector, model, 1, detector->max_batch, error))
      || !ead_workspace_commit (&detector->workspace, error))
    return NULL;
  return g_steal_pointer (&detector);
}

EadBackend *
ead_detector_get_backend (EadDetector *detector)
{
  return detector->backend;
}

int
ead_detector_get_max_batch (EadDetector *detector)
{
  return detector->max_batch;
}

void
ead_detector_get_input_size (EadDetector *detector, int *height, int *width)
{
  *height = detector->input_h;
  *width = detector->input_w;
}

void
ead_detector_get_map_size (EadDetector *detector, int *height, int *width)
{
  *height = detector->map_h;
  *width = detector->map_w;
}

/* Runs executable set `which` on the images from `first` on (one image, or all of them
 * for the max_batch set). */
static gboolean
run_networks (EadDetector *detector, int which, const float *inputs, int first, GError **error)
{
  EadBackend *backend = detector->backend;
  size_t map_size = (size_t) detector->map_h * detector->map_w;
  size_t in_size = (size_t) 3 * detector->input_h * detector->input_w;
  const float *in = inputs + first * in_size;

  return backend->forward (detector->teacher[which], in,
                           detector->t_out + first * EAD_TEACHER_CHANNELS * map_size, error)
         && backend->forward (detector->student[which], in,
                              detector->s_out + first * 2 * EAD_TEACHER_CHANNELS * map_size,
                              error)
         && backend->forward (detector->autoencoder[which], in,
                              detector->a_out + first * EAD_TEACHER_CHANNELS * map_size, error);
}

gboolean
ead_detector_run (EadDetector *detector, const float *inputs, int n, GError **error)
{
  EadBackend *backend = detector->backend;
  const EadModel *model = detector->model;
  size_t map_size = (size_t) detector->map_h * detector->map_w;
  int ph = detector->map_h + 2 * MAP_PAD, pw = detector->map_w + 2 * MAP_PAD;
  int i;

  if (n < 1 || n > detector->max_batch)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "%d images in one run; this detector takes 1 to %d", n, detector->max_batch);
      return FALSE;
    }
  if (n == detector->max_batch && n > 1)
    {
      if (!run_networks (detector, 1, inputs, 0, error))
        return FALSE;
    }
  else
    for (i = 0; i < n; i++)
      if (!run_networks (detector, 0, inputs, i, error))
        return FALSE;

  backend->sqdiff_channel_mean (detector->t_out, EAD_TEACHER_CHANNELS, model->teacher_mean,
                                model->teacher_std, detector->s_out, 2 * EAD_TEACHER_CHANNELS, 0,
                                n, EAD_TEACHER_CHANNELS, map_size, detector->map_st);
  backend->sqdiff_channel_mean (detector->a_out, EAD_TEACHER_CHANNELS, NULL, NULL,
                                detector->s_out, 2 * EAD_TEACHER_CHANNELS,
                                EAD_TEACHER_CHANNELS, n, EAD_TEACHER_CHANNELS, map_size,
                                detector->map_ae);
  for (int b = 0; b < n; b++)
    {
      float *map = detector->map + b * map_size;
      float *padded = detector->padded + (size_t) b * ph * pw;

      ead_map_combine (detector->map_st + b * map_size, detector->map_ae + b * map_size,
                       map_size, model, map);
      for (int y = 0; y < detector->map_h; y++)
        memcpy (padded + (size_t) (y + MAP_PAD) * pw + MAP_PAD, map + (size_t) y * detector->map_w,
                detector->map_w * sizeof (float));
    }
  return TRUE;
}

const float *
ead_detector_get_map (EadDetector *detector, int i)
{
  return detector->map + (size_t) i * detector->map_h * detector->map_w;
}

const float *
ead_detector_get_map_st (EadDetector *detector, int i)
{
  return detector->map_st + (size_t) i * detector->map_h * detector->map_w;
}

const float *
ead_detector_get_map_ae (EadDetector *detector, int i)
{
  return detector->map_ae + (size_t) i * detector->map_h * detector->map_w;
}

const float *
ead_detector_get_output (EadDetector *detector, const char *net, int i)
{
  size_t map_size = (size_t) detector->map_h * detector->map_w;

  if (g_str_equal (net, "teacher"))
    return detector->t_out + (size_t) i * EAD_TEACHER_CHANNELS * map_size;
  if (g_str_equal (net, "student"))
    return detector->s_out + (size_t) i * 2 * EAD_TEACHER_CHANNELS * map_size;
  if (g_str_equal (net, "autoencoder"))
    return detector->a_out + (size_t) i * EAD_TEACHER_CHANNELS * map_size;
  g_return_val_if_reached (NULL);
}

static float
resize_max (EadBackend *backend, const float *padded, int ph, int pw, int out_height,
            int out_width, float *full)
{
  size_t count = (size_t) out_height * out_width;
  float score;

  backend->resize_bilinear (padded, 1, ph, pw, full, out_height, out_width);
  score = full[0];
  for (size_t p = 1; p < count; p++)
    score = MAX (score, full[p]);
  return score;
}

float
ead_detector_full_map (EadDetector *detector, int i, int out_height, int out_width, float *full)
{
  int ph = detector->map_h + 2 * MAP_PAD, pw = detector->map_w + 2 * MAP_PAD;

  return resize_max (detector->backend, detector->padded + (size_t) i * ph * pw, ph, pw,
                     out_height, out_width, full);
}

void
ead_map_combine (const float *st, const float *ae, size_t n, const EadModel *model, float *out)
{
  /* PyTorch evaluates 0.1 * (m - q_a) / (q_b - q_a) in float32 with (q_b - q_a) formed
   * in double by Python; the same order keeps the maps comparable to the last bit */
  float st_a = (float) model->q_st_a, st_range = (float) (model->q_st_b - model->q_st_a);
  float ae_a = (float) model->q_ae_a, ae_range = (float) (model->q_ae_b - model->q_ae_a);

  for (size_t p = 0; p < n; p++)
    {
      float st_norm = 0.1f * (st[p] - st_a) / st_range;
      float ae_norm = 0.1f * (ae[p] - ae_a) / ae_range;
      out[p] = 0.5f * st_norm + 0.5f * ae_norm;
    }
}

float
ead_map_upsample (EadBackend *backend, const float *map, int h, int w, float *padded,
                  int out_height, int out_width, float *full)
{
  int ph = h + 2 * MAP_PAD, pw = w + 2 * MAP_PAD;

  for (int y = 0; y < h; y++)
    memcpy (padded + (size_t) (y + MAP_PAD) * pw + MAP_PAD, map + (size_t) y * w, w * sizeof (float));
  return resize_max (backend, padded, ph, pw, out_height, out_width, full);
}

char *
ead_detector_describe (EadDetector *detector)
{
  EadBackend *backend = detector->backend;
  int i = detector->max_batch > 1 ? 1 : 0;
  g_autofree char *t = backend->exec_describe (detector->teacher[i]);
  g_autofree char *s = backend->exec_describe (detector->student[i]);
  g_autofree char *a = backend->exec_describe (detector->autoencoder[i]);

  return g_strdup_printf ("backend %s, %d threads, batch %d, precision %s\nteacher:\n%s"
                          "student:\n%sautoencoder:\n%s",
                          backend->name, backend->get_threads (backend), detector->max_batch,
                          detector->precision_note, t, s, a);
}

EadPrecision
ead_detector_get_precision (EadDetector *detector)
{
  return detector->precision;
}
