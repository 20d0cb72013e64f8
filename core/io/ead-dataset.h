/* ead-dataset.h: the good images a model is trained on, decoded once and resized to the
 * network input, split into training and validation parts. */
#pragma once

#include <glib.h>

#include "ead-image.h"

G_BEGIN_DECLS

#define EAD_DATASET_MIN_IMAGES 10

typedef struct {
  char *path;
  EadImage *image;  /* at the network input size */
} EadSample;

typedef struct {
  char *root;             /* the folder the images came from */
  GArray *train;          /* EadSample */
  GArray *validation;     /* EadSample */
  GPtrArray *skipped;     /* "path: reason" for every file that could not be read */
  char *snapshot;         /* SHA-256 over the sorted relative names and file contents */
} EadDataset;

typedef struct {
  int height, width;          /* network input */
  double validation_fraction; /* 0.1: nelson's int(0.9 N) train / rest validation split */
  guint64 seed;               /* the split's shuffle */
  gboolean strict;            /* an unreadable image is an error instead of skipped */
  int min_images;             /* fewer usable images is an error */
} EadDatasetOptions;

/* Loads the good images under dir: dir/train/good when dir is an MVTec AD category,
 * else every image file below dir (recursively, sorted by path).  Files that are not
 * images by name are ignored; image files that fail to decode are listed in skipped
 * (or, with strict, fail the load naming the file).  An empty folder or fewer than
 * min_images images is an error that says so. */
EadDataset *ead_dataset_load (const char *dir, const EadDatasetOptions *options, GError **error);
void ead_dataset_free (EadDataset *dataset);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (EadDataset, ead_dataset_free)

/* TRUE for names ending in .png, .jpg, .jpeg, .bmp, .tif or .tiff (any case). */
gboolean ead_dataset_is_image_name (const char *name);

/* The image files below dir, at any depth (names starting with '.' skipped), sorted by
 * path (strcmp); free with g_ptr_array_unref.  EAD_ERROR_IO for a missing folder or one
 * that cannot be read, EAD_ERROR_INVALID when it holds no image; messages name the folder. */
GPtrArray *ead_dataset_list_images (const char *dir, GError **error);

/* The training images folder of an MVTec AD category (dir/train/good), or dir. */
char *ead_dataset_train_dir (const char *dir);

G_END_DECLS
