/* test-demo.c: the synthetic inspection dataset (ead demo).
 *
 * A small dataset is generated into a temporary directory and checked for its layout,
 * its masks, byte-identical regeneration, independence of the image counts, variation
 * between good images, and defects that change the picture only inside their masks.
 */
#include <math.h>
#include <string.h>

#include <glib.h>

#include "ead-demo.h"
#include "ead-error.h"
#include "ead-image.h"
#include "ead-test-util.h"

#define TRAIN 3
#define TEST_GOOD 2
#define TEST_DEFECT 2
#define SIZE 256

static char *tmp_dir;
static char *first_dir;  /* seed 0, generated once, compared with by several tests */

static void
options_small (EadDemoOptions *options, guint64 seed, int n_train)
{
  ead_demo_options_init (options);
  options->n_train = n_train;
  options->n_test_good = TEST_GOOD;
  options->n_test_defect = TEST_DEFECT;
  options->seed = seed;
}

static void
count_progress (const char *path, int done, int total, gpointer user_data)
{
  int *calls = user_data;

  g_assert_true (g_file_test (path, G_FILE_TEST_IS_REGULAR));
  g_assert_cmpint (done, ==, *calls + 1);
  g_assert_cmpint (done, <=, total);
  (*calls)++;
}

static char *
generate (const char *name, guint64 seed, int n_train)
{
  g_autoptr (GError) error = NULL;
  EadDemoOptions options;
  char *dir = g_build_filename (tmp_dir, name, NULL);
  int calls = 0;

  options_small (&options, seed, n_train);
  g_assert_true (ead_demo_generate (dir, &options, count_progress, &calls, &error));
  g_assert_no_error (error);
  g_assert_cmpint (calls, ==, 2 * (n_train + TEST_GOOD + 4 * TEST_DEFECT));
  return dir;
}

static EadImage *
load (const char *path)
{
  g_autoptr (GError) error = NULL;
  EadImage *image = ead_image_load (path, 0, &error);

  g_assert_no_error (error);
  g_assert_nonnull (image);
  return image;
}

static void
list_files_under (const char *root, const char *relative, GPtrArray *files)
{
  g_autofree char *path = g_build_filename (root, relative, NULL);
  g_autoptr (GDir) dir = g_dir_open (path, 0, NULL);
  const char *name;

  g_assert_nonnull (dir);
  while ((name = g_dir_read_name (dir)) != NULL)
    {
      g_autofree char *child = g_build_filename (path, name, NULL);
      char *child_relative = relative[0] != '\0' ? g_build_filename (relative, name, NULL)
                                                 : g_strdup (name);

      if (g_file_test (child, G_FILE_TEST_IS_DIR))
        {
          list_files_under (root, child_relative, files);
          g_free (child_relative);
        }
      else
        g_ptr_array_add (files, child_relative);
    }
}

static int
compare_strings (gconstpointer a, gconstpointer b)
{
  return strcmp (*(const char *const *) a, *(const char *const *) b);
}

/* Every file under dir, relative to it, sorted. */
static GPtrArray *
list_files (const char *dir)
{
  GPtrArray *files = g_ptr_array_new_with_free_func (g_free);

  list_files_under (dir, "", files);
  g_ptr_array_sort (files, compare_strings);
  return files;
}

static GPtrArray *
expected_files (int n_train)
{
  GPtrArray *files = g_ptr_array_new_with_free_func (g_free);
  const char *const *scenes = ead_demo_scene_names ();

  for (int s = 0; scenes[s] != NULL; s++)
    {
      const char *const *defects = ead_demo_defect_names (scenes[s]);

      for (int i = 0; i < n_train; i++)
        g_ptr_array_add (files, g_strdup_printf ("%s/train/good/%03d.png", scenes[s], i));
      for (int i = 0; i < TEST_GOOD; i++)
        g_ptr_array_add (files, g_strdup_printf ("%s/test/good/%03d.png", scenes[s], i));
      for (int d = 0; defects[d] != NULL; d++)
        for (int i = 0; i < TEST_DEFECT; i++)
          {
            g_ptr_array_add (files, g_strdup_printf ("%s/test/%s/%03d.png", scenes[s], defects[d], i));
            g_ptr_array_add (files, g_strdup_printf ("%s/ground_truth/%s/%03d_mask.png", scenes[s],
                                                     defects[d], i));
          }
    }
  g_ptr_array_sort (files, compare_strings);
  return files;
}

static void
assert_same_list (GPtrArray *a, GPtrArray *b)
{
  g_assert_cmpuint (a->len, ==, b->len);
  for (guint i = 0; i < a->len; i++)
    g_assert_cmpstr (a->pdata[i], ==, b->pdata[i]);
}

static char *
read_file (const char *dir, const char *relative, gsize *length)
{
  g_autofree char *path = g_build_filename (dir, relative, NULL);
  g_autoptr (GError) error = NULL;
  char *data;

  g_file_get_contents (path, &data, length, &error);
  g_assert_no_error (error);
  return data;
}

static gboolean
same_file (const char *dir_a, const char *dir_b, const char *relative)
{
  gsize length_a, length_b;
  g_autofree char *a = read_file (dir_a, relative, &length_a);
  g_autofree char *b = read_file (dir_b, relative, &length_b);

  return length_a == length_b && memcmp (a, b, length_a) == 0;
}

static double
mean_abs_diff (const EadImage *a, const EadImage *b)
{
  size_t n = (size_t) a->width * a->height * 3;
  double sum = 0;

  g_assert_cmpint (a->width, ==, b->width);
  g_assert_cmpint (a->height, ==, b->height);
  for (size_t i = 0; i < n; i++)
    sum += ABS ((int) a->rgb[i] - (int) b->rgb[i]);
  return sum / n;
}

/* Checks that a mask holds only 0 and 255 and covers a small but visible part. */
static void
assert_mask (const EadImage *mask, const char *what)
{
  size_t n = (size_t) mask->width * mask->height, on = 0;
  double fraction;

  for (size_t i = 0; i < n; i++)
    {
      const guint8 *p = mask->rgb + 3 * i;

      g_assert_true (p[0] == 0 || p[0] == 255);
      g_assert_true (p[1] == p[0] && p[2] == p[0]);
      on += p[0] == 255;
    }
  fraction = (double) on / n;
  g_test_message ("%s: mask covers %.3f%%", what, 100 * fraction);
  g_assert_cmpfloat (fraction, >=, 0.0005);
  g_assert_cmpfloat (fraction, <=, 0.08);
}

static void
test_layout (void)
{
  g_autoptr (GPtrArray) files = list_files (first_dir);
  g_autoptr (GPtrArray) expected = expected_files (TRAIN);
  const char *const *scenes = ead_demo_scene_names ();

  /* Exactly the expected files: no masks for good images, no temporary files left. */
  assert_same_list (files, expected);

  for (int s = 0; scenes[s] != NULL; s++)
    {
      const char *const *defects = ead_demo_defect_names (scenes[s]);
      g_autofree char *good_path = g_strdup_printf ("%s/%s/train/good/000.png", first_dir,
                                                    scenes[s]);
      g_autoptr (EadImage) good = load (good_path);

      g_assert_cmpint (good->width, ==, SIZE);
      g_assert_cmpint (good->height, ==, SIZE);
      for (int d = 0; defects[d] != NULL; d++)
        for (int i = 0; i < TEST_DEFECT; i++)
          {
            g_autofree char *image_path = g_strdup_printf ("%s/%s/test/%s/%03d.png", first_dir,
                                                           scenes[s], defects[d], i);
            g_autofree char *mask_path = g_strdup_printf ("%s/%s/ground_truth/%s/%03d_mask.png",
                                                          first_dir, scenes[s], defects[d], i);
            g_autoptr (EadImage) image = load (image_path);
            g_autoptr (EadImage) mask = load (mask_path);

            g_assert_cmpint (image->width, ==, SIZE);
            g_assert_cmpint (image->height, ==, SIZE);
            g_assert_cmpint (mask->width, ==, SIZE);
            g_assert_cmpint (mask->height, ==, SIZE);
            assert_mask (mask, mask_path);
          }
    }
}

static void
test_deterministic (void)
{
  g_autofree char *again = generate ("again", 0, TRAIN);
  g_autofree char *other_seed = generate ("seed-1", 1, TRAIN);
  g_autoptr (GPtrArray) files = list_files (first_dir);
  g_autoptr (GPtrArray) again_files = list_files (again);

  assert_same_list (files, again_files);
  for (guint i = 0; i < files->len; i++)
    {
      const char *file = files->pdata[i];

      g_assert_true (same_file (first_dir, again, file));
      if (!g_str_has_suffix (file, "_mask.png"))
        g_assert_false (same_file (first_dir, other_seed, file));
    }
}

static void
test_counts_independent (void)
{
  /* More training images leave every other image as it was. */
  g_autofree char *more = generate ("more-train", 0, TRAIN + 2);
  g_autoptr (GPtrArray) files = list_files (first_dir);
  g_autoptr (GPtrArray) more_files = list_files (more);
  g_autoptr (GPtrArray) expected = expected_files (TRAIN + 2);

  assert_same_list (more_files, expected);
  for (guint i = 0; i < files->len; i++)
    g_assert_true (same_file (first_dir, more, files->pdata[i]));
}

static void
test_good_images_vary (void)
{
  const char *const *scenes = ead_demo_scene_names ();

  for (int s = 0; scenes[s] != NULL; s++)
    {
      g_autofree char *path_a = g_strdup_printf ("%s/%s/train/good/000.png", first_dir, scenes[s]);
      g_autofree char *path_b = g_strdup_printf ("%s/%s/train/good/001.png", first_dir, scenes[s]);
      g_autofree char *path_c = g_strdup_printf ("%s/%s/test/good/000.png", first_dir, scenes[s]);
      g_autoptr (EadImage) a = load (path_a);
      g_autoptr (EadImage) b = load (path_b);
      g_autoptr (EadImage) c = load (path_c);
      double ab = mean_abs_diff (a, b), ac = mean_abs_diff (a, c);

      g_test_message ("%s: good images differ by %.2f and %.2f levels on average", scenes[s], ab,
                      ac);
      /* Sensor noise alone gives about 1.3 levels; lighting and pose must add to it. */
      g_assert_cmpfloat (ab, >, 2.0);
      g_assert_cmpfloat (ac, >, 2.0);
    }
}

static guint8
surface_channel (cairo_surface_t *surface, int x, int y, int channel)
{
  const guint8 *row = cairo_image_surface_get_data (surface)
                      + (size_t) y * cairo_image_surface_get_stride (surface);

  return ((const guint32 *) row)[x] >> (16 - 8 * channel) & 0xff;
}

static guint8
mask_value (cairo_surface_t *mask, int x, int y)
{
  return cairo_image_surface_get_data (mask)[(size_t) y * cairo_image_surface_get_stride (mask) + x];
}

/* The defect image against the same picture without its defect: inside the mask it
 * differs, outside it does not (beyond a few stray pixels). */
static void
assert_defect_inside_mask (const char *scene, const char *defect, int index, int size)
{
  g_autoptr (GError) error = NULL;
  cairo_surface_t *image, *clean, *mask, *no_mask = NULL;
  double inside = 0, outside = 0;
  size_t n_inside = 0, n_outside = 0, stray = 0;

  g_assert_true (ead_demo_render (scene, "test", defect, index, 0, size, TRUE, &image, &mask,
                                  &error));
  g_assert_no_error (error);
  g_assert_true (ead_demo_render (scene, "test", defect, index, 0, size, FALSE, &clean, &no_mask,
                                  &error));
  g_assert_no_error (error);
  g_assert_nonnull (mask);
  g_assert_cmpint (cairo_image_surface_get_width (image), ==, size);
  g_assert_cmpint (cairo_image_surface_get_width (mask), ==, size);
  g_assert_cmpint (cairo_image_surface_get_height (mask), ==, size);
  for (int y = 0; y < size; y++)
    for (int x = 0; x < size; x++)
      {
        int diff = 0, worst = 0;

        for (int c = 0; c < 3; c++)
          {
            int d = ABS (surface_channel (image, x, y, c) - surface_channel (clean, x, y, c));

            diff += d;
            worst = MAX (worst, d);
          }
        if (mask_value (mask, x, y) != 0)
          {
            inside += diff / 3.0;
            n_inside++;
          }
        else
          {
            outside += diff / 3.0;
            n_outside++;
            stray += worst > 24;
          }
      }
  g_assert_cmpuint (n_inside, >, 0);
  inside /= n_inside;
  outside /= n_outside;
  g_test_message ("%s/%s/%d at %d: mean difference %.2f inside the mask, %.4f outside", scene,
                  defect, index, size, inside, outside);
  g_assert_cmpfloat (inside, >, 1.0);
  g_assert_cmpfloat (inside, >, 20 * outside);
  g_assert_cmpfloat (outside, <, 0.05);
  g_assert_cmpuint (stray, <=, n_outside / 5000);
  cairo_surface_destroy (image);
  cairo_surface_destroy (clean);
  cairo_surface_destroy (mask);
  cairo_surface_destroy (no_mask);
}

static void
test_defects_inside_masks (void)
{
  const char *const *scenes = ead_demo_scene_names ();

  for (int s = 0; scenes[s] != NULL; s++)
    {
      const char *const *defects = ead_demo_defect_names (scenes[s]);

      for (int d = 0; defects[d] != NULL; d++)
        for (int i = 0; i < 6; i++)
          assert_defect_inside_mask (scenes[s], defects[d], i, i < 2 ? SIZE : 128);
    }
}

/* The rendering API gives exactly the pictures written to the files. */
static void
test_render_matches_files (void)
{
  const char *const *scenes = ead_demo_scene_names ();

  for (int s = 0; scenes[s] != NULL; s++)
    {
      const char *defect = ead_demo_defect_names (scenes[s])[0];
      g_autofree char *image_path = g_strdup_printf ("%s/%s/test/%s/001.png", first_dir,
                                                     scenes[s], defect);
      g_autofree char *mask_path = g_strdup_printf ("%s/%s/ground_truth/%s/001_mask.png",
                                                    first_dir, scenes[s], defect);
      g_autoptr (EadImage) file_image = load (image_path);
      g_autoptr (EadImage) file_mask = load (mask_path);
      g_autoptr (GError) error = NULL;
      cairo_surface_t *image, *mask;

      g_assert_true (ead_demo_render (scenes[s], "test", defect, 1, 0, SIZE, TRUE, &image, &mask,
                                      &error));
      g_assert_no_error (error);
      for (int y = 0; y < SIZE; y++)
        for (int x = 0; x < SIZE; x++)
          {
            const guint8 *p = file_image->rgb + 3 * ((size_t) y * SIZE + x);

            for (int c = 0; c < 3; c++)
              g_assert_cmpuint (p[c], ==, surface_channel (image, x, y, c));
            g_assert_cmpuint (file_mask->rgb[3 * ((size_t) y * SIZE + x)], ==, mask_value (mask, x, y));
          }
      cairo_surface_destroy (image);
      cairo_surface_destroy (mask);
    }
}

static void
test_larger_size (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *dir = g_build_filename (tmp_dir, "size-320", NULL);
  g_autofree char *image_path = g_build_filename (dir, "assembly", "test", "extra_part", "000.png",
                                                  NULL);
  g_autofree char *mask_path = g_build_filename (dir, "assembly", "ground_truth", "extra_part",
                                                 "000_mask.png", NULL);
  g_autofree char *surface_dir = g_build_filename (dir, "surface", NULL);
  g_autofree char *good_dir = g_build_filename (dir, "assembly", "test", "good", NULL);
  g_autoptr (EadImage) image = NULL;
  g_autoptr (EadImage) mask = NULL;
  const char *const scenes[] = { "assembly", NULL };
  EadDemoOptions options;

  options_small (&options, 0, 1);
  options.scenes = scenes;
  options.n_test_good = 0;
  options.n_test_defect = 1;
  options.size = 320;
  g_assert_true (ead_demo_generate (dir, &options, NULL, NULL, &error));
  g_assert_no_error (error);
  image = load (image_path);
  mask = load (mask_path);
  g_assert_cmpint (image->width, ==, 320);
  g_assert_cmpint (image->height, ==, 320);
  g_assert_cmpint (mask->width, ==, 320);
  assert_mask (mask, mask_path);
  /* Only the scene asked for, and no empty folder for the good test images. */
  g_assert_false (g_file_test (surface_dir, G_FILE_TEST_EXISTS));
  g_assert_false (g_file_test (good_dir, G_FILE_TEST_EXISTS));
  assert_defect_inside_mask ("surface", "crack", 0, 320);
}

static void
test_force (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *dir = generate ("force", 0, TRAIN);
  g_autofree char *notes = g_build_filename (dir, "surface", "train", "good", "notes.txt", NULL);
  g_autofree char *kept = g_build_filename (dir, "surface", "train", "good", "000.png", NULL);
  g_autofree char *stale = g_build_filename (dir, "surface", "train", "good", "001.png", NULL);
  EadDemoOptions options;

  g_file_set_contents (notes, "mine", -1, &error);
  g_assert_no_error (error);

  options_small (&options, 0, 1);
  g_assert_false (ead_demo_generate (dir, &options, NULL, NULL, &error));
  g_assert_error (error, EAD_ERROR, EAD_ERROR_IO);
  g_test_message ("%s", error->message);
  g_assert_true (g_str_has_prefix (error->message, dir));
  g_assert_nonnull (strstr (error->message, "not empty"));
  g_clear_error (&error);

  /* A smaller dataset over a larger one: its own extra images go, other files stay. */
  options.force = TRUE;
  g_assert_true (ead_demo_generate (dir, &options, NULL, NULL, &error));
  g_assert_no_error (error);
  g_assert_true (g_file_test (kept, G_FILE_TEST_IS_REGULAR));
  g_assert_false (g_file_test (stale, G_FILE_TEST_EXISTS));
  g_assert_true (g_file_test (notes, G_FILE_TEST_IS_REGULAR));
  g_assert_true (same_file (dir, first_dir, "assembly/test/wrong_colour/001.png"));
}

static void
assert_invalid (EadDemoOptions *options, const char *fragment)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *dir = g_build_filename (tmp_dir, "invalid", NULL);

  g_assert_false (ead_demo_generate (dir, options, NULL, NULL, &error));
  g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
  g_test_message ("%s", error->message);
  g_assert_nonnull (strstr (error->message, fragment));
  g_assert_false (g_file_test (dir, G_FILE_TEST_EXISTS));
}

static void
test_errors (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *file = g_build_filename (tmp_dir, "a-file", NULL);
  const char *const unknown[] = { "surface", "widgets", NULL };
  const char *const twice[] = { "surface", "surface", NULL };
  const char *const none[] = { NULL };
  cairo_surface_t *image = NULL;
  EadDemoOptions options;

  options_small (&options, 0, TRAIN);
  options.scenes = unknown;
  assert_invalid (&options, "widgets");
  options.scenes = twice;
  assert_invalid (&options, "twice");
  options.scenes = none;
  assert_invalid (&options, "no scene");
  options_small (&options, 0, -1);
  assert_invalid (&options, "training images");
  options_small (&options, 0, TRAIN);
  options.size = 16;
  assert_invalid (&options, "16");

  g_file_set_contents (file, "", 0, &error);
  g_assert_no_error (error);
  options_small (&options, 0, TRAIN);
  g_assert_false (ead_demo_generate (file, &options, NULL, NULL, &error));
  g_assert_error (error, EAD_ERROR, EAD_ERROR_IO);
  g_assert_true (g_str_has_prefix (error->message, file));
  g_clear_error (&error);

  g_assert_false (ead_demo_render ("surface", "train", "scratch", 0, 0, SIZE, TRUE, &image, NULL,
                                   &error));
  g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
  g_clear_error (&error);
  g_assert_false (ead_demo_render ("assembly", "test", "scratch", 0, 0, SIZE, TRUE, &image, NULL,
                                   &error));
  g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
  g_clear_error (&error);
  g_assert_null (image);
  g_assert_null (ead_demo_defect_names ("widgets"));
}

int
main (int argc, char **argv)
{
  g_autoptr (GError) error = NULL;
  int status;

  g_test_init (&argc, &argv, NULL);
  tmp_dir = g_dir_make_tmp ("ead-test-demo-XXXXXX", &error);
  g_assert_no_error (error);
  first_dir = generate ("first", 0, TRAIN);

  g_test_add_func ("/demo/layout", test_layout);
  g_test_add_func ("/demo/deterministic", test_deterministic);
  g_test_add_func ("/demo/counts-independent", test_counts_independent);
  g_test_add_func ("/demo/good-images-vary", test_good_images_vary);
  g_test_add_func ("/demo/defects-inside-masks", test_defects_inside_masks);
  g_test_add_func ("/demo/render-matches-files", test_render_matches_files);
  g_test_add_func ("/demo/larger-size", test_larger_size);
  g_test_add_func ("/demo/force", test_force);
  g_test_add_func ("/demo/errors", test_errors);

  status = g_test_run ();
  ead_test_remove_tree (tmp_dir);
  g_free (first_dir);
  g_free (tmp_dir);
  return status;
}
