/* ead-detector.h: EfficientAD inference (spec §4.1) on a backend.
 *
 * A detector owns the compiled networks and all memory for up to max_batch images;
 * ead_detector_run() allocates nothing.  One detector is used by one thread at a time
 * (the GUI gives it to its worker thread); several detectors may run at once.
 */
#pragma once

#include <glib.h>

#include "ead-backend.h"
#include "ead-model.h"

G_BEGIN_DECLS

typedef struct _EadDetector EadDetector;

typedef struct {
  int max_batch;       /* images per ead_detector_run(); default 1 */
  int threads;         /* 0: all cores */
  const char *device;  /* "cpu" (default), "cuda" or "auto" */
  EadPrecision precision;  /* default fp32 */
} EadDetectorOptions;

/* The model is copied into the backend's layouts: it may be freed afterwards. */
EadDetector *ead_detector_new (const EadModel *model,
                               const EadDetectorOptions *options,
                               GError **error);
void ead_detector_free (EadDetector *detector);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (EadDetector, ead_detector_free)

EadBackend *ead_detector_get_backend (EadDetector *detector);
int ead_detector_get_max_batch (EadDetector *detector);
/* The network input size (the model's) and the map size (56 x 56 for 256 x 256). */
void ead_detector_get_input_size (EadDetector *detector, int *height, int *width);
void ead_detector_get_map_size (EadDetector *detector, int *height, int *width);

/* Runs teacher, student and autoencoder on n <= max_batch preprocessed images
 * (n x 3 x H x W, ead_image_to_input) and computes the maps. */
gboolean ead_detector_run (EadDetector *detector, const float *inputs, int n, GError **error);

/* Results of the last run for image i, valid until the next run.  The raw maps are the
 * channel means of the squared differences; the combined map is quantile-normalised
 * (0.1 at each map's 0.995 quantile) and averaged. */
const float *ead_detector_get_map (EadDetector *detector, int i);
const float *ead_detector_get_map_st (EadDetector *detector, int i);
const float *ead_detector_get_map_ae (EadDetector *detector, int i);
/* The network outputs of image i: teacher (raw, before normalisation), student, AE. */
const float *ead_detector_get_output (EadDetector *detector, const char *net, int i);

/* The combined map of image i padded by 4 zeros on each side and resized bilinearly
 * (align_corners=False) to out_height x out_width into `full` (caller's memory); returns
 * the image score, the maximum of that map. */
float ead_detector_full_map (EadDetector *detector,
                             int i,
                             int out_height,
                             int out_width,
                             float *full);

/* The maps are padded by this many zeros on every side before the final resize. */
#define EAD_MAP_PAD 4

/* Quantile normalisation and combination of raw maps (spec §4.1, steps 4-5):
 * out = 0.5 * 0.1 (st - q_st_a) / (q_st_b - q_st_a) + 0.5 * 0.1 (ae - q_ae_a) / (q_ae_b - q_ae_a). */
void ead_map_combine (const float *st, const float *ae, size_t n, const EadModel *model, float *out);

/* Steps 6-7: pads the h x w map by EAD_MAP_PAD zeros into padded ((h + 8) x (w + 8),
 * whose border must be zero), resizes it bilinearly to out_height x out_width into full
 * and returns the maximum, the image score. */
float ead_map_upsample (EadBackend *backend,
                        const float *map,
                        int h,
                        int w,
                        float *padded,
                        int out_height,
                        int out_width,
                        float *full);

EadPrecision ead_detector_get_precision (EadDetector *detector);

/* What the backend chose for each primitive, one line each. */
char *ead_detector_describe (EadDetector *detector);

G_END_DECLS
