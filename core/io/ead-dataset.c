#include "ead-dataset.h"

#include <string.h>

#include "ead-error.h"
#include "ead-network.h"

gboolean
ead_dataset_is_image_name (const char *name)
{
  static const char *const extensions[] = { ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff" };
  g_autofree char *lower = g_ascii_strdown (name, -1);

  for (size_t i = 0; i < G_N_ELEMENTS (extensions); i++)
    if (g_str_has_suffix (lower, extensions[i]))
      return TRUE;
  return FALSE;
}

char *
ead_dataset_train_dir (const char *dir)
{
  g_autofree char *good = g_build_filename (dir, "train", "good", NULL);

  if (g_file_test (good, G_FILE_TEST_IS_DIR))
    return g_steal_pointer (&good);
  return g_strdup (dir);
}

static gboolean
list_images (const char *dir, GPtrArray *paths, GError **error)
{
  g_autoptr (GDir) handle = g_dir_open (dir, 0, error);
  const char *name;

  if (handle == NULL)
    return FALSE;
  while ((name = g_dir_read_name (handle)) != NULL)
    {
      g_autofree char *path = g_build_filename (dir, name, NULL);

      if (name[0] == '.')
        continue;
      if (g_file_test (path, G_FILE_TEST_IS_DIR))
        {
          if (!list_images (path, paths, error))
            return FALSE;
        }
      else if (ead_dataset_is_image_name (name))
        g_ptr_array_add (paths, g_steal_pointer (&path));
    }
  return TRUE;
}

static int
compare_paths (gconstpointer a, gconstpointer b)
{
  return strcmp (*(const char *const *) a, *(const char *const *) b);
}

GPtrArray *
ead_dataset_list_images (const char *dir, GError **error)
{
  g_autoptr (GPtrArray) paths = g_ptr_array_new_with_free_func (g_free);

  g_return_val_if_fail (dir != NULL, NULL);

  if (!g_file_test (dir, G_FILE_TEST_IS_DIR))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: %s", dir,
                   g_file_test (dir, G_FILE_TEST_EXISTS) ? "is not a folder" : "no such folder");
      return NULL;
    }
  if (!list_images (dir, paths, error))
    return NULL;
  if (paths->len == 0)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "%s: no images (PNG, JPEG, BMP or TIFF) found", dir);
      return NULL;
    }
  g_ptr_array_sort (paths, compare_paths);
  return g_steal_pointer (&paths);
}

static void
sample_clear (gpointer data)
{
  EadSample *sample = data;

  g_free (sample->path);
  ead_image_free (sample->image);
}

void
ead_dataset_free (EadDataset *dataset)
{
  if (dataset == NULL)
    return;
  g_free (dataset->root);
  g_clear_pointer (&dataset->train, g_array_unref);
  g_clear_pointer (&dataset->validation, g_array_unref);
  g_clear_pointer (&dataset->skipped, g_ptr_array_unref);
  g_free (dataset->snapshot);
  g_free (dataset);
}

typedef struct {
  EadImage *image;
  char *digest;
  char *error;
} Loaded;

EadDataset *
ead_dataset_load (const char *dir, const EadDatasetOptions *options, GError **error)
{
  g_autoptr (EadDataset) dataset = g_new0 (EadDataset, 1);
  g_autoptr (GPtrArray) paths = NULL;
  g_autoptr (GChecksum) snapshot = g_checksum_new (G_CHECKSUM_SHA256);
  g_autofree char *images_dir = NULL;
  g_autofree Loaded *loaded = NULL;
  g_autofree guint *order = NULL;
  g_autoptr (GArray) usable = g_array_new (FALSE, FALSE, sizeof (guint));
  guint64 key;
  guint n_train;

  if (options->height < EAD_MIN_INPUT_SIZE || options->width < EAD_MIN_INPUT_SIZE)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "a network input of %dx%d is too small: the networks need at least %dx%d",
                   options->width, options->height, EAD_MIN_INPUT_SIZE, EAD_MIN_INPUT_SIZE);
      return NULL;
    }
  if (!g_file_test (dir, G_FILE_TEST_IS_DIR))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: %s", dir,
                   g_file_test (dir, G_FILE_TEST_EXISTS) ? "is not a folder" : "no such folder");
      return NULL;
    }
  images_dir = ead_dataset_train_dir (dir);
  paths = ead_dataset_list_images (images_dir, error);
  if (paths == NULL)
    return NULL;

  loaded = g_new0 (Loaded, paths->len);
#pragma omp parallel for schedule(dynamic)
  for (guint i = 0; i < paths->len; i++)
    {
      const char *path = paths->pdata[i];
      g_autofree char *contents = NULL;
      gsize size = 0;
      GError *local_error = NULL;
      g_autoptr (EadImage) image = NULL;

      if (!g_file_get_contents (path, &contents, &size, &local_error))
        {
          loaded[i].error = g_strdup_printf ("%s: %s", path, local_error->message);
          g_error_free (local_error);
          continue;
        }
      image = ead_image_load_from_memory (path, contents, size, 0, &local_error);
      if (image == NULL)
        {
          loaded[i].error = g_strdup (local_error->message);
          g_error_free (local_error);
          continue;
        }
      loaded[i].digest = g_compute_checksum_for_data (G_CHECKSUM_SHA256, (const guchar *) contents, size);
      loaded[i].image = ead_image_resize_bilinear (image, options->width, options->height);
    }

  dataset->root = g_strdup (images_dir);
  dataset->train = g_array_new (FALSE, TRUE, sizeof (EadSample));
  dataset->validation = g_array_new (FALSE, TRUE, sizeof (EadSample));
  g_array_set_clear_func (dataset->train, sample_clear);
  g_array_set_clear_func (dataset->validation, sample_clear);
  dataset->skipped = g_ptr_array_new_with_free_func (g_free);
  for (guint i = 0; i < paths->len; i++)
    {
      if (loaded[i].error != NULL)
        {
          g_ptr_array_add (dataset->skipped, loaded[i].error);
          continue;
        }
      g_array_append_val (usable, i);
      g_checksum_update (snapshot, (const guchar *) paths->pdata[i] + strlen (images_dir), -1);
      g_checksum_update (snapshot, (const guchar *) loaded[i].digest, -1);
      g_free (loaded[i].digest);
    }
  if (options->strict && dataset->skipped->len > 0)
    {
      for (guint i = 0; i < paths->len; i++)
        ead_image_free (loaded[i].image);
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT, "%s (and %u more unreadable)",
                   (const char *) dataset->skipped->pdata[0], dataset->skipped->len - 1);
      return NULL;
    }
  if (usable->len < (guint) options->min_images)
    {
      for (guint i = 0; i < paths->len; i++)
        ead_image_free (loaded[i].image);
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "%s: %u readable images; training needs at least %d", images_dir,
                   usable->len, options->min_images);
      return NULL;
    }
  dataset->snapshot = g_strdup (g_checksum_get_string (snapshot));

  /* a seeded Fisher-Yates shuffle; the first int(0.9 N) train, the rest validate */
  order = g_new (guint, usable->len);
  memcpy (order, usable->data, usable->len * sizeof (guint));
  key = ead_random_key (options->seed, "dataset.split");
  for (guint i = usable->len - 1; i > 0; i--)
    {
      guint j = (guint) (ead_random_uniform (key, i) * (i + 1));
      guint t = order[i];
      order[i] = order[MIN (j, i)];
      order[MIN (j, i)] = t;
    }
  n_train = (guint) ((1.0 - options->validation_fraction) * usable->len);
  n_train = CLAMP (n_train, 1, usable->len - 1);
  for (guint i = 0; i < usable->len; i++)
    {
      guint index = order[i];
      EadSample sample = { g_strdup (paths->pdata[index]), loaded[index].image };
      g_array_append_val (i < n_train ? dataset->train : dataset->validation, sample);
    }
  return g_steal_pointer (&dataset);
}
