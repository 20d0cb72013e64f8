/* ead-demo.h: a deterministic synthetic inspection dataset in the MVTec AD layout.
 *
 * Two scenes: "surface", brushed metal with structural defects (scratch, spot, crack,
 * missing material), and "assembly", a small circuit board whose defects are logical
 * (a missing, extra or swapped part, a part of the wrong colour).  Under DIR/<scene>/:
 *
 *   train/good/000.png ...              good images
 *   test/good/000.png ...               good images
 *   test/<defect>/000.png ...           defective images
 *   ground_truth/<defect>/000_mask.png  8-bit grey, 0 or 255, the image's size
 *
 * Every image is drawn from its own random stream, derived from (seed, scene, split,
 * defect, index), so an image does not depend on how many others are generated, and the
 * same seed gives byte-identical files.
 */
#pragma once

#include <cairo.h>
#include <glib.h>

G_BEGIN_DECLS

#define EAD_DEMO_DEFAULT_TRAIN 120
#define EAD_DEMO_DEFAULT_TEST_GOOD 20
#define EAD_DEMO_DEFAULT_TEST_DEFECT 10
#define EAD_DEMO_DEFAULT_SIZE 256
#define EAD_DEMO_MIN_SIZE 64
#define EAD_DEMO_MAX_SIZE 4096
#define EAD_DEMO_MAX_COUNT 100000

typedef struct {
  const char *const *scenes;  /* NULL-terminated names; NULL means every scene */
  int n_train;                /* good training images per scene */
  int n_test_good;            /* good test images per scene */
  int n_test_defect;          /* test images per defect kind */
  int size;                   /* width and height in pixels */
  guint64 seed;
  gboolean force;             /* write into a directory that is not empty */
} EadDemoOptions;

/* Called on the thread that called ead_demo_generate after each image (with its mask)
 * is written: the image's path, images written so far, images in all. */
typedef void (*EadDemoProgress) (const char *path, int done, int total, gpointer user_data);

/* Fills options with the defaults: every scene, 120 / 20 / 10 images, 256 pixels,
 * seed 0, no force. */
void ead_demo_options_init (EadDemoOptions *options);

/* The scene names, NULL-terminated: "surface", "assembly". */
const char *const *ead_demo_scene_names (void);

/* The defect kinds of a scene, NULL-terminated, in the order they are generated; NULL
 * for an unknown scene. */
const char *const *ead_demo_defect_names (const char *scene);

/* Writes the dataset under dir, creating it if needed, on one worker thread per CPU (at
 * most 8).  Refuses a dir that exists and is not empty unless options->force; with force,
 * files of the same name are replaced and numbered images beyond the new counts are
 * removed from the folders written.  Each PNG is written to a temporary file and
 * renamed into place.
 * Errors: EAD_ERROR_INVALID (bad options), EAD_ERROR_IO (messages start with the path). */
gboolean ead_demo_generate (const char *dir,
                            const EadDemoOptions *options,
                            EadDemoProgress progress,
                            gpointer user_data,
                            GError **error);

/* Renders one image of the dataset exactly as ead_demo_generate writes it: split is
 * "train" or "test", defect is NULL (or "good") for a good image.  *image receives a
 * size x size CAIRO_FORMAT_RGB24 surface; *mask (may be NULL) a CAIRO_FORMAT_A8 surface
 * of 0 and 255 for a defect, NULL for a good image.  With draw_defect FALSE the image is
 * the same picture without its defect (the mask is still the defect's), which shows
 * what the defect changed.  Errors: EAD_ERROR_INVALID. */
gboolean ead_demo_render (const char *scene,
                          const char *split,
                          const char *defect,
                          int index,
                          guint64 seed,
                          int size,
                          gboolean draw_defect,
                          cairo_surface_t **image,
                          cairo_surface_t **mask,
                          GError **error);

G_END_DECLS
