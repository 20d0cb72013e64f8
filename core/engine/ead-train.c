#include "ead-train.h"

#include <gio/gio.h>
#include <math.h>
#include <string.h>

#include "ead-augment.h"
#include "ead-backend.h"
#include "ead-detector.h"
#include "ead-safetensors.h"
#include "ead-error.h"
#include "ead-stats.h"

#define HISTORY_COLUMNS EAD_TRAIN_LOSSES

struct _EadTrainer {
  EadTrainOptions options;
  char *device;
  char *checkpoint_path;
  const EadDataset *data;
  const EadDataset *penalty;
  char *teacher_source;
  EadBackend *backend;
  EadModel *model;              /* the result: teacher copied, student and AE trained in place */
  EadNet *grad_student, *grad_ae;
  EadNet *m_student, *v_student, *m_ae, *v_ae;  /* Adam moments */
  EadWorkspace workspace;
  EadNetExec *teacher1, *teacher2;              /* inference, batch 1 and 2 */
  EadTrainExec *student2, *student1, *autoencoder;
  int hw;                       /* output pixels per channel (56 x 56) */
  size_t input_size;            /* floats per network input */
  float *inputs;                /* [x, x_aug] */
  float *t_out, *s_out, *a_out, *p_out;
  float *diff_s, *diff_a, *diff_p;
  float *distances;             /* the hard loss's squared differences, selected in place */
  EadImage *augmented;
  float *history;               /* steps x HISTORY_COLUMNS */
  int step;                     /* steps done */
  gboolean resumed;
  guint *order;                 /* training order of the current epoch */
  int order_epoch;
};

void
ead_train_options_init (EadTrainOptions *options)
{
  *options = (EadTrainOptions) {
    .steps = 70000,
    .seed = 0,
    .threads = 0,
    .device = "cpu",
    .checkpoint_every = 1000,
    .learning_rate = 1e-4,
    .weight_decay = 1e-5,
  };
}

void
ead_trainer_free (EadTrainer *trainer)
{
  EadBackend *backend;

  if (trainer == NULL)
    return;
  backend = trainer->backend;
  if (backend != NULL)
    {
      if (trainer->teacher1)
        backend->exec_free (trainer->teacher1);
      if (trainer->teacher2)
        backend->exec_free (trainer->teacher2);
      if (trainer->student2)
        backend->train_free (trainer->student2);
      if (trainer->student1)
        backend->train_free (trainer->student1);
      if (trainer->autoencoder)
        backend->train_free (trainer->autoencoder);
    }
  ead_workspace_clear (&trainer->workspace);
  ead_model_free (trainer->model);
  ead_net_free (trainer->grad_student);
  ead_net_free (trainer->grad_ae);
  ead_net_free (trainer->m_student);
  ead_net_free (trainer->v_student);
  ead_net_free (trainer->m_ae);
  ead_net_free (trainer->v_ae);
  g_free (trainer->inputs);
  g_free (trainer->t_out);
  g_free (trainer->s_out);
  g_free (trainer->a_out);
  g_free (trainer->p_out);
  g_free (trainer->diff_s);
  g_free (trainer->diff_a);
  g_free (trainer->diff_p);
  g_free (trainer->distances);
  ead_image_free (trainer->augmented);
  g_free (trainer->history);
  g_free (trainer->order);
  g_free (trainer->device);
  g_free (trainer->checkpoint_path);
  g_free (trainer->teacher_source);
  g_free (trainer);
}

static void
copy_net_weights (EadNet *to, const EadNet *from)
{
  for (int i = 0; i < from->n_layers; i++)
    if (from->layers[i].kind == EAD_LAYER_CONV)
      {
        memcpy (to->weight[i], from->weight[i], ead_layer_weight_count (&from->layers[i]) * sizeof (float));
        memcpy (to->bias[i], from->bias[i], from->layers[i].out_channels * sizeof (float));
      }
}

EadTrainer *
ead_trainer_new (const EadModel *teacher,
                 const EadDataset *data,
                 const EadDataset *penalty,
                 const EadTrainOptions *options,
                 GError **error)
{
  g_autoptr (EadTrainer) trainer = g_new0 (EadTrainer, 1);
  g_autoptr (GMutexLocker) locker = NULL;
  EadBackend *backend;
  EadShape out;
  int h = teacher->input_height, w = teacher->input_width;
  const char *source;

  if (options->steps < 1)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID, "training needs at least one step, not %d",
                   options->steps);
      return NULL;
    }
  if (data->train->len < 1 || data->validation->len < 1)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "%s: training needs both training and validation images", data->root);
      return NULL;
    }
  trainer->options = *options;
  trainer->device = g_strdup (options->device ? options->device : "cpu");
  trainer->checkpoint_path = g_strdup (options->checkpoint_path);
  trainer->options.device = trainer->device;
  trainer->options.checkpoint_path = trainer->checkpoint_path;
  trainer->data = data;
  trainer->penalty = penalty != NULL && penalty->train->len + penalty->validation->len > 0 ? penalty : NULL;
  source = g_hash_table_lookup (teacher->metadata, "ead.teacher.source");
  trainer->teacher_source = g_strdup (source ? source : "unknown");

  backend = ead_backend_get_for_training (trainer->device, error);
  if (backend == NULL)
    return NULL;
  trainer->backend = backend;
  locker = g_mutex_locker_new (ead_backend_compile_mutex ());
  backend->set_threads (backend, options->threads);
  if (!backend->set_precision (backend, options->precision, error))
    return NULL;
  trainer->options.precision = backend->get_precision (backend);

  trainer->model = ead_model_new (teacher->arch);
  trainer->model->input_height = h;
  trainer->model->input_width = w;
  copy_net_weights (trainer->model->teacher, teacher->teacher);
  ead_net_init_random (trainer->model->student, "student", options->seed);
  ead_net_init_random (trainer->model->autoencoder, "autoencoder", options->seed);
  trainer->grad_student = ead_net_copy (trainer->model->student);
  trainer->grad_ae = ead_net_copy (trainer->model->autoencoder);
  trainer->m_student = ead_net_copy (trainer->model->student);
  trainer->v_student = ead_net_copy (trainer->model->student);
  trainer->m_ae = ead_net_copy (trainer->model->autoencoder);
  trainer->v_ae = ead_net_copy (trainer->model->autoencoder);
  ead_net_zero (trainer->grad_student);
  ead_net_zero (trainer->grad_ae);
  ead_net_zero (trainer->m_student);
  ead_net_zero (trainer->v_student);
  ead_net_zero (trainer->m_ae);
  ead_net_zero (trainer->v_ae);

  if (!ead_net_shapes (trainer->model->teacher, (EadShape) { 3, h, w }, NULL, &out, error))
    return NULL;
  trainer->hw = out.h * out.w;
  trainer->input_size = (size_t) 3 * h * w;

  trainer->teacher1 = backend->compile (backend, trainer->model->teacher, 1, h, w, &trainer->workspace, error);
  if (trainer->teacher1 == NULL)
    return NULL;
  trainer->teacher2 = backend->compile (backend, trainer->model->teacher, 2, h, w, &trainer->workspace, error);
  if (trainer->teacher2 == NULL || !ead_workspace_commit (&trainer->workspace, error))
    return NULL;
  trainer->student2 = backend->train_compile (backend, trainer->model->student, trainer->grad_student, 2, h, w, error);
  if (trainer->student2 == NULL)
    return NULL;
  if (trainer->penalty != NULL)
    {
      trainer->student1 = backend->train_compile (backend, trainer->model->student, trainer->grad_student, 1, h, w, error);
      if (trainer->student1 == NULL)
        return NULL;
    }
  trainer->autoencoder = backend->train_compile (backend, trainer->model->autoencoder, trainer->grad_ae, 1, h, w, error);
  if (trainer->autoencoder == NULL)
    return NULL;

  trainer->inputs = g_new (float, 2 * trainer->input_size);
  trainer->t_out = g_new (float, 2 * EAD_TEACHER_CHANNELS * trainer->hw);
  trainer->s_out = g_new (float, 2 * 2 * EAD_TEACHER_CHANNELS * trainer->hw);
  trainer->a_out = g_new (float, EAD_TEACHER_CHANNELS * trainer->hw);
  trainer->p_out = g_new (float, 2 * EAD_TEACHER_CHANNELS * trainer->hw);
  trainer->diff_s = g_new0 (float, 2 * 2 * EAD_TEACHER_CHANNELS * trainer->hw);
  trainer->diff_a = g_new (float, EAD_TEACHER_CHANNELS * trainer->hw);
  trainer->diff_p = g_new0 (float, 2 * EAD_TEACHER_CHANNELS * trainer->hw);
  trainer->distances = g_new (float, EAD_TEACHER_CHANNELS * trainer->hw);
  trainer->augmented = ead_image_new (w, h);
  trainer->history = g_new0 (float, (size_t) options->steps * HISTORY_COLUMNS);
  trainer->order = g_new (guint, data->train->len);
  trainer->order_epoch = -1;
  return g_steal_pointer (&trainer);
}

const float *
ead_trainer_get_history (EadTrainer *trainer, int *steps)
{
  *steps = trainer->step;
  return trainer->history;
}

static const EadImage *
train_image (EadTrainer *trainer, int index)
{
  return g_array_index (trainer->data->train, EadSample, index).image;
}

/* Teacher channel mean and population std over the training images, in two passes with
 * double accumulation (spec §3). */
static gboolean
teacher_statistics (EadTrainer *trainer, EadTrainProgressFunc progress, gpointer user_data,
                    const gint *cancel, gint64 start, GError **error)
{
  EadBackend *backend = trainer->backend;
  int n = trainer->data->train->len, hw = trainer->hw;
  double mean[EAD_TEACHER_CHANNELS] = { 0 }, var[EAD_TEACHER_CHANNELS] = { 0 };

  for (int pass = 0; pass < 2; pass++)
    for (int i = 0; i < n; i++)
      {
        EadTrainProgress report = { EAD_TRAIN_PHASE_TEACHER_STATS, pass * n + i + 1, 2 * n };

        if (cancel != NULL && g_atomic_int_get (cancel))
          {
            g_set_error (error, G_IO_ERROR, G_IO_ERROR_CANCELLED, "training cancelled");
            return FALSE;
          }
        ead_image_to_input (train_image (trainer, i), trainer->inputs);
        if (!backend->forward (trainer->teacher1, trainer->inputs, trainer->t_out, error))
          return FALSE;
        ead_channel_stats_add (trainer->t_out, EAD_TEACHER_CHANNELS, hw, pass, n, mean, var);
        report.elapsed_s = (g_get_monotonic_time () - start) / 1e6;
        if (progress != NULL)
          progress (&report, user_data);
      }
  for (int c = 0; c < EAD_TEACHER_CHANNELS; c++)
    {
      if (!(var[c] > 0.0))
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                       "teacher channel %d is constant (std 0) over the %d training images; "
                       "the teacher cannot be normalised (is it a trained teacher?)",
                       c, n);
          return FALSE;
        }
      trainer->model->teacher_mean[c] = (float) mean[c];
      trainer->model->teacher_std[c] = (float) sqrt (var[c]);
    }
  return TRUE;
}

static guint64
step_key (const EadTrainer *trainer, const char *what)
{
  return ead_random_key (trainer->options.seed, what);
}

/* The image of step s: epochs walk the training images in a seeded permutation. */
static int
image_of_step (EadTrainer *trainer, int step)
{
  int n = trainer->data->train->len;
  int epoch = step / n;

  if (epoch != trainer->order_epoch)
    {
      guint64 key = ead_random_key (trainer->options.seed + (guint64) epoch, "train.order");

      for (int i = 0; i < n; i++)
        trainer->order[i] = i;
      for (int i = n - 1; i > 0; i--)
        {
          int j = MIN ((int) (ead_random_uniform (key, i) * (i + 1)), i);
          guint t = trainer->order[i];
          trainer->order[i] = trainer->order[j];
          trainer->order[j] = t;
        }
      trainer->order_epoch = epoch;
    }
  return trainer->order[step % n];
}

/* PyTorch's Adam (single-tensor path of torch 1.13) with L2 weight decay added to the
 * gradient; the scalars are rounded to float as PyTorch does for float tensors. */
static void
adam_update (float *param, const float *grad, float *m, float *v, size_t n, double lr,
             double weight_decay, int t)
{
  const float beta1 = 0.9f, beta2 = 0.999f;
  const float one_minus_beta1 = (float) (1.0 - 0.9), one_minus_beta2 = (float) (1.0 - 0.999);
  const float decay = (float) weight_decay;
  const double correction1 = 1.0 - pow (0.9, t);
  const float step_size = (float) (lr / correction1);
  const float correction2_sqrt = (float) sqrt (1.0 - pow (0.999, t));
  const float eps = 1e-8f;

#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++)
    {
      float g = grad[i] + decay * param[i];
      float denom;

      m[i] = m[i] * beta1 + one_minus_beta1 * g;
      v[i] = v[i] * beta2 + one_minus_beta2 * (g * g);
      denom = sqrtf (v[i]) / correction2_sqrt + eps;
      param[i] = param[i] + (-step_size) * (m[i] / denom);
    }
}

void
ead_adam_step_net (EadNet *net, const EadNet *grad, EadNet *m, EadNet *v, double lr,
                   double weight_decay, int t)
{
  for (int i = 0; i < net->n_layers; i++)
    if (net->layers[i].kind == EAD_LAYER_CONV)
      {
        adam_update (net->weight[i], grad->weight[i], m->weight[i], v->weight[i],
                     ead_layer_weight_count (&net->layers[i]), lr, weight_decay, t);
        adam_update (net->bias[i], grad->bias[i], m->bias[i], v->bias[i],
                     net->layers[i].out_channels, lr, weight_decay, t);
      }
}

/* The learning rate of step s: StepLR(step_size = int(0.95 steps), gamma 0.1). */
static double
learning_rate (const EadTrainer *trainer, int step)
{
  int step_size = MAX (1, (int) (0.95 * trainer->options.steps));

  return trainer->options.learning_rate * pow (0.1, step / step_size);
}

/* Loss gradients of one step from the network outputs (spec §3):
 * hard feature loss on S(I)[0:384], AE loss, student-AE loss on S(I_aug)[384:768]. */
static void
losses (EadTrainer *trainer, float *loss_hard, float *loss_ae, float *loss_stae)
{
  const int C = EAD_TEACHER_CHANNELS, hw = trainer->hw;
  const size_t n = (size_t) C * hw;
  const float *mean = trainer->model->teacher_mean, *std = trainer->model->teacher_std;
  const float *t0 = trainer->t_out, *t1 = trainer->t_out + n;
  const float *s0 = trainer->s_out, *s1 = trainer->s_out + 2 * n;
  float *ds0 = trainer->diff_s, *ds1 = trainer->diff_s + 2 * n;
  float *d = trainer->distances;
  float *selected = trainer->diff_a;  /* scratch until the AE gradient is written */
  float hard, inv_n = 1.0f / n;
  double hard_sum = 0.0, ae_sum = 0.0, stae_sum = 0.0;
  size_t count = 0;

#pragma omp parallel for schedule(static)
  for (size_t k = 0; k < n; k++)
    {
      int c = k / hw;
      float diff = (t0[k] - mean[c]) / std[c] - s0[k];
      d[k] = diff * diff;
    }
  memcpy (selected, d, n * sizeof (float));
  hard = ead_quantile_select (selected, n, 0.999);

#pragma omp parallel for schedule(static) reduction(+ : hard_sum, count)
  for (size_t k = 0; k < n; k++)
    if (d[k] >= hard)
      {
        hard_sum += d[k];
        count++;
      }
  {
    float scale = 1.0f / count;
#pragma omp parallel for schedule(static)
    for (size_t k = 0; k < n; k++)
      {
        int c = k / hw;
        float t = (t0[k] - mean[c]) / std[c];
        ds0[k] = d[k] >= hard ? scale * (2.0f * (s0[k] - t)) : 0.0f;
      }
  }
  memset (ds0 + n, 0, n * sizeof (float));
  memset (ds1, 0, n * sizeof (float));

#pragma omp parallel for schedule(static) reduction(+ : ae_sum, stae_sum)
  for (size_t k = 0; k < n; k++)
    {
      int c = k / hw;
      float t = (t1[k] - mean[c]) / std[c];
      float a = trainer->a_out[k];
      float s = s1[n + k];
      ae_sum += (double) (t - a) * (t - a);
      stae_sum += (double) (a - s) * (a - s);
      trainer->diff_a[k] = inv_n * (2.0f * (a - t)) + inv_n * (2.0f * (a - s));
      ds1[n + k] = inv_n * (2.0f * (s - a));
    }
  *loss_hard = hard_sum / count;
  *loss_ae = ae_sum / n;
  *loss_stae = stae_sum / n;
}

static gboolean
penalty_pass (EadTrainer *trainer, int step, float *loss_penalty, GError **error)
{
  EadBackend *backend = trainer->backend;
  const EadDataset *penalty = trainer->penalty;
  guint total = penalty->train->len + penalty->validation->len;
  guint64 key = step_key (trainer, "train.penalty");
  guint index = MIN ((guint) (ead_random_uniform (key, 2 * (guint64) step) * total), total - 1);
  gboolean grey = ead_random_uniform (key, 2 * (guint64) step + 1) < 0.3f;
  const EadSample *sample = index < penalty->train->len
                              ? &g_array_index (penalty->train, EadSample, index)
                              : &g_array_index (penalty->validation, EadSample, index - penalty->train->len);
  g_autoptr (EadImage) image = ead_penalty_image (sample->image, trainer->model->input_height,
                                                  trainer->model->input_width, grey);
  const size_t n = (size_t) EAD_TEACHER_CHANNELS * trainer->hw;
  const float inv_n = 1.0f / n;
  double sum = 0.0;

  ead_image_to_input (image, trainer->inputs);
  if (!backend->train_forward (trainer->student1, trainer->inputs, trainer->p_out, 0, error))
    return FALSE;
#pragma omp parallel for schedule(static) reduction(+ : sum)
  for (size_t k = 0; k < n; k++)
    {
      sum += (double) trainer->p_out[k] * trainer->p_out[k];
      trainer->diff_p[k] = inv_n * (2.0f * trainer->p_out[k]);
    }
  *loss_penalty = sum / n;
  return backend->train_backward (trainer->student1, trainer->diff_p, error);
}

/* One step on given inputs: forward and backward passes, then (when apply) the Adam
 * update with the learning rate of `step`. */
static gboolean
step_on_inputs (EadTrainer *trainer, int step, guint64 dropout_seed, gboolean apply,
                float losses_out[EAD_TRAIN_LOSSES], GError **error)
{
  EadBackend *backend = trainer->backend;
  float hard, ae, stae, pen = 0.0f;
  double lr = learning_rate (trainer, step);

  if (!backend->forward (trainer->teacher2, trainer->inputs, trainer->t_out, error)
      || !backend->train_forward (trainer->student2, trainer->inputs, trainer->s_out, 0, error)
      || !backend->train_forward (trainer->autoencoder, trainer->inputs + trainer->input_size,
                                  trainer->a_out, dropout_seed, error))
    return FALSE;
  losses (trainer, &hard, &ae, &stae);
  if (!backend->train_backward (trainer->student2, trainer->diff_s, error)
      || !backend->train_backward (trainer->autoencoder, trainer->diff_a, error))
    return FALSE;
  if (trainer->penalty != NULL && apply && !penalty_pass (trainer, step, &pen, error))
    return FALSE;

  losses_out[0] = hard + pen + ae + stae;
  losses_out[1] = hard;
  losses_out[2] = pen;
  losses_out[3] = ae;
  losses_out[4] = stae;
  if (!apply)
    return TRUE;
  ead_adam_step_net (trainer->model->student, trainer->grad_student, trainer->m_student,
                     trainer->v_student, lr, trainer->options.weight_decay, step + 1);
  ead_adam_step_net (trainer->model->autoencoder, trainer->grad_ae, trainer->m_ae,
                     trainer->v_ae, lr, trainer->options.weight_decay, step + 1);
  ead_net_zero (trainer->grad_student);
  ead_net_zero (trainer->grad_ae);
  return TRUE;
}

static gboolean
train_step (EadTrainer *trainer, int step, GError **error)
{
  const EadImage *image = train_image (trainer, image_of_step (trainer, step));
  guint64 augment_key = step_key (trainer, "train.augment");
  EadJitterKind kind = MIN ((int) (3.0f * ead_random_uniform (augment_key, 2 * (guint64) step)), 2);
  float factor = 0.8f + 0.4f * ead_random_uniform (augment_key, 2 * (guint64) step + 1);
  guint64 dropout_seed = ead_random_key (trainer->options.seed + (guint64) step, "train.dropout");

  ead_image_to_input (image, trainer->inputs);
  ead_color_jitter (image, kind, factor, trainer->augmented);
  ead_image_to_input (trainer->augmented, trainer->inputs + trainer->input_size);
  return step_on_inputs (trainer, step, dropout_seed, TRUE,
                         trainer->history + (size_t) step * HISTORY_COLUMNS, error);
}

gboolean
ead_trainer_step_inputs (EadTrainer *trainer,
                         const float *x,
                         const float *x_augmented,
                         guint64 dropout_seed,
                         gboolean apply,
                         float losses_out[EAD_TRAIN_LOSSES],
                         GError **error)
{
  memcpy (trainer->inputs, x, trainer->input_size * sizeof (float));
  memcpy (trainer->inputs + trainer->input_size, x_augmented, trainer->input_size * sizeof (float));
  return step_on_inputs (trainer, 0, dropout_seed, apply, losses_out, error);
}

void
ead_trainer_get_state (EadTrainer *trainer,
                       EadModel **model,
                       EadNet **grad_student,
                       EadNet **grad_autoencoder)
{
  *model = trainer->model;
  *grad_student = trainer->grad_student;
  *grad_autoencoder = trainer->grad_ae;
}

/* Checkpoints: the trained weights, Adam's moments, the loss history and what the run
 * must agree on to be resumed (seed, steps, data, teacher), in a safetensors file. */

void
ead_checkpoint_add_net (EadSafetensorsWriter *writer, const char *prefix, const EadNet *net)
{
  for (int i = 0; i < net->n_layers; i++)
    {
      const EadLayer *layer = &net->layers[i];
      gint64 w_shape[4] = { layer->out_channels, layer->in_channels, layer->kernel, layer->kernel };
      gint64 b_shape[1] = { layer->out_channels };
      g_autofree char *w_name = NULL;
      g_autofree char *b_name = NULL;

      if (layer->kind != EAD_LAYER_CONV)
        continue;
      w_name = g_strdup_printf ("%s.%d.weight", prefix, i);
      b_name = g_strdup_printf ("%s.%d.bias", prefix, i);
      ead_safetensors_writer_add (writer, w_name, 4, w_shape, net->weight[i]);
      ead_safetensors_writer_add (writer, b_name, 1, b_shape, net->bias[i]);
    }
}

gboolean
ead_checkpoint_read_net (EadSafetensors *file, const char *prefix, EadNet *net, GError **error)
{
  for (int i = 0; i < net->n_layers; i++)
    {
      const EadLayer *layer = &net->layers[i];
      gint64 w_shape[4] = { layer->out_channels, layer->in_channels, layer->kernel, layer->kernel };
      gint64 b_shape[1] = { layer->out_channels };
      g_autofree char *w_name = NULL;
      g_autofree char *b_name = NULL;

      if (layer->kind != EAD_LAYER_CONV)
        continue;
      w_name = g_strdup_printf ("%s.%d.weight", prefix, i);
      b_name = g_strdup_printf ("%s.%d.bias", prefix, i);
      if (!ead_safetensors_read (file, w_name, 4, w_shape, net->weight[i], error)
          || !ead_safetensors_read (file, b_name, 1, b_shape, net->bias[i], error))
        return FALSE;
    }
  return TRUE;
}

/* The identity of a run: a checkpoint from a different one must not be resumed. */
static char *
run_identity (const EadTrainer *trainer)
{
  g_autofree char *teacher = ead_net_digest (trainer->model->teacher);

  return g_strdup_printf ("%s seed=%" G_GUINT64_FORMAT " steps=%d input=%dx%d data=%s "
                          "penalty=%s teacher=%s lr=%.17g wd=%.17g%s",
                          ead_arch_name (trainer->model->arch), trainer->options.seed,
                          trainer->options.steps, trainer->model->input_height,
                          trainer->model->input_width, trainer->data->snapshot,
                          trainer->penalty ? trainer->penalty->snapshot : "none", teacher,
                          trainer->options.learning_rate, trainer->options.weight_decay,
                          trainer->options.precision == EAD_PRECISION_BF16 ? " precision=bf16" : "");
}

static gboolean
write_checkpoint (EadTrainer *trainer, GError **error)
{
  g_autoptr (EadSafetensorsWriter) writer = ead_safetensors_writer_new ();
  g_autofree char *identity = run_identity (trainer);
  g_autofree char *step = g_strdup_printf ("%d", trainer->step);
  gint64 stats_shape[1] = { EAD_TEACHER_CHANNELS };
  gint64 history_shape[2] = { MAX (trainer->step, 1), HISTORY_COLUMNS };

  ead_checkpoint_add_net (writer, "student", trainer->model->student);
  ead_checkpoint_add_net (writer, "autoencoder", trainer->model->autoencoder);
  ead_checkpoint_add_net (writer, "adam.m.student", trainer->m_student);
  ead_checkpoint_add_net (writer, "adam.v.student", trainer->v_student);
  ead_checkpoint_add_net (writer, "adam.m.autoencoder", trainer->m_ae);
  ead_checkpoint_add_net (writer, "adam.v.autoencoder", trainer->v_ae);
  ead_safetensors_writer_add (writer, "teacher_mean", 1, stats_shape, trainer->model->teacher_mean);
  ead_safetensors_writer_add (writer, "teacher_std", 1, stats_shape, trainer->model->teacher_std);
  ead_safetensors_writer_add (writer, "history", 2, history_shape, trainer->history);
  ead_safetensors_writer_set_metadata (writer, "ead.checkpoint.step", step);
  ead_safetensors_writer_set_metadata (writer, "ead.checkpoint.run", identity);
  return ead_safetensors_writer_write (writer, trainer->checkpoint_path, error);
}

EadSafetensors *
ead_checkpoint_open (const char *path, const char *identity, int max_step, const char *what,
                     int *step, GError **error)
{
  g_autoptr (EadSafetensors) file = ead_safetensors_open (path, error);
  const char *run, *step_text;
  guint64 value;

  if (file == NULL)
    return NULL;
  run = ead_safetensors_lookup_metadata (file, "ead.checkpoint.run");
  step_text = ead_safetensors_lookup_metadata (file, "ead.checkpoint.step");
  if (run == NULL || step_text == NULL
      || !g_ascii_string_to_unsigned (step_text, 10, 1, G_MAXINT, &value, NULL))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: not a %s checkpoint (no valid ead.checkpoint.step/run)", path, what);
      return NULL;
    }
  if (!g_str_equal (run, identity) || value > (guint64) max_step)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "%s: the checkpoint belongs to another run (%s); this run is %s", path, run,
                   identity);
      return NULL;
    }
  *step = (int) value;
  return g_steal_pointer (&file);
}

static gboolean
read_checkpoint (EadTrainer *trainer, GError **error)
{
  g_autofree char *identity = run_identity (trainer);
  gint64 stats_shape[1] = { EAD_TEACHER_CHANNELS };
  int step;
  g_autoptr (EadSafetensors) file = ead_checkpoint_open (trainer->checkpoint_path, identity,
                                                         trainer->options.steps, "training",
                                                         &step, error);

  if (file == NULL)
    return FALSE;
  {
    gint64 history_shape[2] = { (gint64) step, HISTORY_COLUMNS };
    if (!ead_checkpoint_read_net (file, "student", trainer->model->student, error)
        || !ead_checkpoint_read_net (file, "autoencoder", trainer->model->autoencoder, error)
        || !ead_checkpoint_read_net (file, "adam.m.student", trainer->m_student, error)
        || !ead_checkpoint_read_net (file, "adam.v.student", trainer->v_student, error)
        || !ead_checkpoint_read_net (file, "adam.m.autoencoder", trainer->m_ae, error)
        || !ead_checkpoint_read_net (file, "adam.v.autoencoder", trainer->v_ae, error)
        || !ead_safetensors_read (file, "teacher_mean", 1, stats_shape, trainer->model->teacher_mean, error)
        || !ead_safetensors_read (file, "teacher_std", 1, stats_shape, trainer->model->teacher_std, error)
        || !ead_safetensors_read (file, "history", 2, history_shape, trainer->history, error))
      return FALSE;
  }
  trainer->step = step;
  trainer->resumed = TRUE;
  return TRUE;
}

/* Map normalisation (spec §4.2): the 0.9 and 0.995 quantiles of the raw student-teacher
 * and autoencoder maps over the validation images; then the validation scores (at the
 * network input size) with those quantiles, whose maximum is the suggested threshold. */
static gboolean
map_quantiles (EadTrainer *trainer, EadTrainProgressFunc progress, gpointer user_data,
               gint64 start, GError **error)
{
  EadModel *model = trainer->model;
  const GArray *validation = trainer->data->validation;
  int n = validation->len, hw = trainer->hw, h = model->input_height, w = model->input_width;
  EadDetectorOptions options = { 1, trainer->options.threads, trainer->device };
  g_autoptr (EadDetector) detector = NULL;
  g_autofree float *st = g_new (float, (size_t) n * hw);
  g_autofree float *ae = g_new (float, (size_t) n * hw);
  g_autofree float *sorted = g_new (float, (size_t) n * hw);
  g_autofree float *full = g_new (float, (size_t) h * w);
  g_autofree float *combined = g_new (float, hw);
  g_autofree float *padded = NULL;
  double score_max = -G_MAXDOUBLE, score_sum = 0.0;
  float lo, hi;

  model->q_st_a = model->q_ae_a = 0.0;
  model->q_st_b = model->q_ae_b = 1.0;
  detector = ead_detector_new (model, &options, error);
  if (detector == NULL)
    return FALSE;
  for (int i = 0; i < n; i++)
    {
      EadTrainProgress report = { EAD_TRAIN_PHASE_QUANTILES, i + 1, n };

      ead_image_to_input (g_array_index (validation, EadSample, i).image, trainer->inputs);
      if (!ead_detector_run (detector, trainer->inputs, 1, error))
        return FALSE;
      memcpy (st + (size_t) i * hw, ead_detector_get_map_st (detector, 0), hw * sizeof (float));
      memcpy (ae + (size_t) i * hw, ead_detector_get_map_ae (detector, 0), hw * sizeof (float));
      report.elapsed_s = (g_get_monotonic_time () - start) / 1e6;
      if (progress != NULL)
        progress (&report, user_data);
    }
  memcpy (sorted, st, (size_t) n * hw * sizeof (float));
  ead_quantiles_select (sorted, (size_t) n * hw, 0.9, 0.995, &lo, &hi);
  model->q_st_a = lo;
  model->q_st_b = hi;
  memcpy (sorted, ae, (size_t) n * hw * sizeof (float));
  ead_quantiles_select (sorted, (size_t) n * hw, 0.9, 0.995, &lo, &hi);
  model->q_ae_a = lo;
  model->q_ae_b = hi;
  if (!ead_model_validate (model, "the trained model", error))
    return FALSE;

  for (int i = 0; i < n; i++)
    {
      int map_h, map_w;
      float score;

      ead_detector_get_map_size (detector, &map_h, &map_w);
      if (padded == NULL)
        padded = g_new0 (float, (size_t) (map_h + 2 * EAD_MAP_PAD) * (map_w + 2 * EAD_MAP_PAD));
      ead_map_combine (st + (size_t) i * hw, ae + (size_t) i * hw, hw, model, combined);
      score = ead_map_upsample (trainer->backend, combined, map_h, map_w, padded, h, w, full);
      score_max = MAX (score_max, score);
      score_sum += score;
    }
  g_hash_table_insert (model->metadata, g_strdup ("ead.threshold.suggested"),
                       g_strdup_printf ("%.9g", score_max));
  g_hash_table_insert (model->metadata, g_strdup ("ead.validation.score_max"),
                       g_strdup_printf ("%.9g", score_max));
  g_hash_table_insert (model->metadata, g_strdup ("ead.validation.score_mean"),
                       g_strdup_printf ("%.9g", score_sum / n));
  return TRUE;
}

static void
set_metadata (EadTrainer *trainer)
{
  GHashTable *metadata = trainer->model->metadata;
  const float *last = trainer->history;
  int tail = MIN (trainer->options.steps, 100);
  double mean[HISTORY_COLUMNS] = { 0 };

  for (int s = trainer->options.steps - tail; s < trainer->options.steps; s++)
    for (int c = 0; c < HISTORY_COLUMNS; c++)
      mean[c] += last[(size_t) s * HISTORY_COLUMNS + c] / tail;
#define SET(key, ...) g_hash_table_insert (metadata, g_strdup (key), g_strdup_printf (__VA_ARGS__))
  SET ("ead.train.steps", "%d", trainer->options.steps);
  SET ("ead.train.seed", "%" G_GUINT64_FORMAT, trainer->options.seed);
  SET ("ead.train.learning_rate", "%g", trainer->options.learning_rate);
  SET ("ead.train.weight_decay", "%g", trainer->options.weight_decay);
  SET ("ead.train.images", "%u", trainer->data->train->len);
  SET ("ead.train.validation_images", "%u", trainer->data->validation->len);
  SET ("ead.train.dataset", "%s", trainer->data->root);
  SET ("ead.train.dataset.snapshot", "%s", trainer->data->snapshot);
  SET ("ead.train.penalty", "%s", trainer->penalty ? trainer->penalty->root : "none");
  SET ("ead.train.precision", "%s", ead_precision_name (trainer->options.precision));
  SET ("ead.train.loss.final", "%.6g", mean[0]);
  SET ("ead.train.loss.hard", "%.6g", mean[1]);
  SET ("ead.train.loss.penalty", "%.6g", mean[2]);
  SET ("ead.train.loss.ae", "%.6g", mean[3]);
  SET ("ead.train.loss.stae", "%.6g", mean[4]);
  SET ("ead.teacher.source", "%s", trainer->teacher_source);
#undef SET
  g_hash_table_insert (metadata, g_strdup ("ead.teacher.sha256"),
                       ead_net_digest (trainer->model->teacher));
}

EadPrecision
ead_trainer_get_precision (EadTrainer *trainer)
{
  return trainer->options.precision;
}

EadBackend *
ead_trainer_get_backend (EadTrainer *trainer)
{
  return trainer->backend;
}

char *
ead_trainer_describe (EadTrainer *trainer)
{
  EadBackend *backend = trainer->backend;
  g_autofree char *teacher = trainer->teacher2 ? backend->exec_describe (trainer->teacher2) : NULL;
  g_autofree char *student = trainer->student2 ? backend->train_describe (trainer->student2) : NULL;
  g_autofree char *ae = trainer->autoencoder ? backend->train_describe (trainer->autoencoder) : NULL;

  return g_strdup_printf ("training: backend %s, %d threads, precision %s\nteacher:\n%s"
                          "student:\n%sautoencoder:\n%s",
                          backend->name, backend->get_threads (backend),
                          ead_precision_name (trainer->options.precision),
                          teacher ? teacher : "(released)\n", student ? student : "(released)\n",
                          ae ? ae : "(released)\n");
}

static void
release_training_memory (EadTrainer *trainer)
{
  EadBackend *backend = trainer->backend;

  g_clear_pointer (&trainer->teacher1, backend->exec_free);
  g_clear_pointer (&trainer->teacher2, backend->exec_free);
  g_clear_pointer (&trainer->student2, backend->train_free);
  g_clear_pointer (&trainer->student1, backend->train_free);
  g_clear_pointer (&trainer->autoencoder, backend->train_free);
  ead_workspace_clear (&trainer->workspace);
}

EadModel *
ead_trainer_run (EadTrainer *trainer,
                 EadTrainProgressFunc progress,
                 gpointer user_data,
                 const gint *cancel,
                 GError **error)
{
  gint64 start = g_get_monotonic_time (), training_start;
  int first_step;

  g_return_val_if_fail (trainer->model != NULL, NULL);
  if (trainer->options.resume && trainer->checkpoint_path != NULL
      && g_file_test (trainer->checkpoint_path, G_FILE_TEST_EXISTS))
    {
      if (!read_checkpoint (trainer, error))
        return NULL;
    }
  else if (!teacher_statistics (trainer, progress, user_data, cancel, start, error))
    return NULL;
  g_clear_pointer (&trainer->teacher1, trainer->backend->exec_free);

  training_start = g_get_monotonic_time ();
  first_step = trainer->step;
  while (trainer->step < trainer->options.steps)
    {
      EadTrainProgress report = { EAD_TRAIN_PHASE_TRAINING };
      const float *losses_of_step;
      double training_s;
      int done;

      if (cancel != NULL && g_atomic_int_get (cancel))
        {
          g_autoptr (GError) checkpoint_error = NULL;

          if (trainer->checkpoint_path != NULL && trainer->step > first_step
              && !write_checkpoint (trainer, &checkpoint_error))
            g_warning ("could not save the checkpoint of the cancelled run: %s",
                       checkpoint_error->message);
          g_set_error (error, G_IO_ERROR, G_IO_ERROR_CANCELLED, "training cancelled at step %d of %d",
                       trainer->step, trainer->options.steps);
          return NULL;
        }
      if (!train_step (trainer, trainer->step, error))
        return NULL;
      trainer->step++;
      if (trainer->checkpoint_path != NULL && trainer->options.checkpoint_every > 0
          && trainer->step % trainer->options.checkpoint_every == 0
          && trainer->step < trainer->options.steps && !write_checkpoint (trainer, error))
        return NULL;

      losses_of_step = trainer->history + (size_t) (trainer->step - 1) * HISTORY_COLUMNS;
      done = trainer->step - first_step;
      training_s = (g_get_monotonic_time () - training_start) / 1e6;
      report.step = trainer->step;
      report.steps = trainer->options.steps;
      report.loss_total = losses_of_step[0];
      report.loss_hard = losses_of_step[1];
      report.loss_penalty = losses_of_step[2];
      report.loss_ae = losses_of_step[3];
      report.loss_stae = losses_of_step[4];
      report.elapsed_s = (g_get_monotonic_time () - start) / 1e6;
      /* the validation pass costs about one step per image */
      report.eta_s = training_s / done
                     * (trainer->options.steps - trainer->step + trainer->data->validation->len / 3.0);
      report.resumed = trainer->resumed;
      if (progress != NULL)
        progress (&report, user_data);
    }

  /* the validation pass builds its own detector: give the training memory back first */
  release_training_memory (trainer);
  if (!map_quantiles (trainer, progress, user_data, start, error))
    return NULL;
  set_metadata (trainer);
  return g_steal_pointer (&trainer->model);
}
