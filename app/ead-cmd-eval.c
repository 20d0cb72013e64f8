/* ead eval: image AU-ROC, pixel AU-ROC, AU-PRO up to FPR 0.3 and F1-max of a model on the
 * test split of an MVTec AD category (spec §8), at each image's own resolution. */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ead-bundle.h"
#include "ead-cli.h"
#include "ead-dataset.h"
#include "ead-detector.h"
#include "ead-error.h"
#include "ead-image.h"
#include "ead-metrics.h"

typedef struct {
  char *path;
  char *defect;     /* the test/ subfolder: "good" or the defect kind */
  char *mask_path;  /* NULL: no ground truth (all good) */
  gboolean anomalous;
  int kind;         /* index of the defect kind, -1 for good */
  float score;
} TestImage;

/* One defect kind: its images against every good image. */
typedef struct {
  const char *name;  /* the test/ subfolder, owned by its images */
  double image_auroc, pixel_auroc, aupro;
} DefectKind;

static void
test_image_clear (gpointer data)
{
  TestImage *image = data;

  g_free (image->path);
  g_free (image->defect);
  g_free (image->mask_path);
}

static int
compare_names (gconstpointer a, gconstpointer b)
{
  return strcmp (*(const char *const *) a, *(const char *const *) b);
}

static GPtrArray *
sorted_entries (const char *dir, GError **error)
{
  g_autoptr (GDir) handle = g_dir_open (dir, 0, error);
  GPtrArray *names;
  const char *name;

  if (handle == NULL)
    return NULL;
  names = g_ptr_array_new_with_free_func (g_free);
  while ((name = g_dir_read_name (handle)) != NULL)
    if (name[0] != '.')
      g_ptr_array_add (names, g_strdup (name));
  g_ptr_array_sort (names, compare_names);
  return names;
}

/* test/<defect>/<image> with ground_truth/<defect>/<stem>_mask.png; with `only`, the good
 * images and those of the defect kinds it names, each of which must be there. */
static GArray *
list_test_split (const char *root, const char *const *only, GError **error)
{
  g_autofree char *test_dir = g_build_filename (root, "test", NULL);
  g_autoptr (GPtrArray) defects = NULL;
  g_autoptr (GArray) images = g_array_new (FALSE, TRUE, sizeof (TestImage));

  g_array_set_clear_func (images, test_image_clear);
  if (!g_file_test (test_dir, G_FILE_TEST_IS_DIR))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "%s: no test/ folder; ead eval needs an MVTec AD category "
                   "(test/good, test/<defect>, ground_truth/<defect>)", root);
      return NULL;
    }
  defects = sorted_entries (test_dir, error);
  if (defects == NULL)
    return NULL;
  for (guint k = 0; only != NULL && only[k] != NULL; k++)
    if (g_str_equal (only[k], "good")
        || !g_ptr_array_find_with_equal_func (defects, only[k], g_str_equal, NULL))
      {
        g_autoptr (GString) kinds = g_string_new (NULL);

        for (guint d = 0; d < defects->len; d++)
          if (!g_str_equal (defects->pdata[d], "good"))
            g_string_append_printf (kinds, "%s%s", kinds->len > 0 ? ", " : "",
                                    (char *) defects->pdata[d]);
        g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                     "%s: no defect kind '%s' (the kinds here: %s)", test_dir, only[k],
                     kinds->str);
        return NULL;
      }
  for (guint d = 0; d < defects->len; d++)
    {
      const char *defect = defects->pdata[d];
      g_autofree char *dir = g_build_filename (test_dir, defect, NULL);
      g_autoptr (GPtrArray) files = NULL;

      if (!g_file_test (dir, G_FILE_TEST_IS_DIR))
        continue;
      if (only != NULL && !g_str_equal (defect, "good") && !g_strv_contains (only, defect))
        continue;
      files = sorted_entries (dir, error);
      if (files == NULL)
        return NULL;
      for (guint f = 0; f < files->len; f++)
        {
          const char *name = files->pdata[f];
          TestImage image = { 0 };
          g_autofree char *stem = NULL;
          g_autofree char *mask_name = NULL;

          if (!ead_dataset_is_image_name (name))
            continue;
          stem = g_strndup (name, strrchr (name, '.') - name);
          mask_name = g_strconcat (stem, "_mask.png", NULL);
          image.path = g_build_filename (dir, name, NULL);
          image.defect = g_strdup (defect);
          image.anomalous = !g_str_equal (defect, "good");
          image.mask_path = g_build_filename (root, "ground_truth", defect, mask_name, NULL);
          if (!image.anomalous || !g_file_test (image.mask_path, G_FILE_TEST_EXISTS))
            g_clear_pointer (&image.mask_path, g_free);
          g_array_append_val (images, image);
        }
    }
  if (images->len == 0)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID, "%s: no test images", test_dir);
      return NULL;
    }
  return g_steal_pointer (&images);
}

/* Scores one test image and adds its map and mask to the pixel metrics. */
static gboolean
evaluate_image (EadDetector *detector, TestImage *test, EadPixelMetrics *pixels, float *input,
                GError **error)
{
  g_autoptr (EadImage) image = ead_image_load (test->path, 0, error);
  g_autoptr (EadImage) resized = NULL;
  g_autoptr (EadImage) mask = NULL;
  g_autofree float *full = NULL;
  g_autofree guint8 *labels = NULL;
  int in_h, in_w;
  size_t n;

  if (image == NULL)
    return FALSE;
  n = (size_t) image->width * image->height;
  if (test->mask_path != NULL)
    {
      mask = ead_image_load (test->mask_path, 0, error);
      if (mask == NULL)
        return FALSE;
      if (mask->width != image->width || mask->height != image->height)
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                       "%s: the mask is %dx%d but its image %s is %dx%d", test->mask_path,
                       mask->width, mask->height, test->path, image->width, image->height);
          return FALSE;
        }
      labels = g_new (guint8, n);
      for (size_t p = 0; p < n; p++)
        labels[p] = mask->rgb[3 * p] > 0;
    }
  ead_detector_get_input_size (detector, &in_h, &in_w);
  resized = ead_image_resize_bilinear (image, in_w, in_h);
  ead_image_to_input (resized, input);
  if (!ead_detector_run (detector, input, 1, error))
    return FALSE;
  full = g_new (float, n);
  test->score = ead_detector_full_map (detector, 0, image->height, image->width, full);
  ead_pixel_metrics_add (pixels, full, labels, image->width, image->height);
  return TRUE;
}

/* A member "name": value, null when the metric is missing (NAN); "-" in text. */
static void
add_metric (JsonBuilder *builder, const char *name, double value)
{
  json_builder_set_member_name (builder, name);
  if (isnan (value))
    json_builder_add_null_value (builder);
  else
    json_builder_add_double_value (builder, value);
}

static const char *
format_metric (double value, char text[16])
{
  if (isnan (value))
    return "-";
  g_snprintf (text, 16, "%.4f", value);
  return text;
}

int
ead_cmd_eval (int argc, char **argv)
{
  g_autofree char *bundle = NULL;
  g_autofree char *data_dir = NULL;
  g_autofree char *device = NULL;
  g_autofree char *precision_text = NULL;
  g_autofree char *defects_text = NULL;
  g_auto (GStrv) defects = NULL;
  gboolean json = FALSE;
  int threads = 0;
  const GOptionEntry entries[] = {
    { "model", 'm', 0, G_OPTION_ARG_FILENAME, &bundle, "Model bundle", "BUNDLE" },
    { "data", 'd', 0, G_OPTION_ARG_FILENAME, &data_dir, "An MVTec AD category", "DIR" },
    { "defects", 0, 0, G_OPTION_ARG_STRING, &defects_text,
      "Only these defect kinds (test/ folders), with all good images", "KIND,…" },
    { "threads", 't', 0, G_OPTION_ARG_INT, &threads, "CPU threads (default: all cores)", "T" },
    { "device", 0, 0, G_OPTION_ARG_STRING, &device, "cpu or cuda (default cpu)", "DEVICE" },
    EAD_CLI_PRECISION_ENTRY (precision_text),
    { "json", 0, 0, G_OPTION_ARG_NONE, &json, "Print JSON", NULL },
    G_OPTION_ENTRY_NULL
  };
  g_autoptr (GError) error = NULL;
  g_autoptr (EadModel) model = NULL;
  g_autoptr (EadDetector) detector = NULL;
  g_autoptr (GArray) tests = NULL;
  g_autoptr (EadPixelMetrics) pixels = ead_pixel_metrics_new ();
  g_autofree float *input = NULL;
  g_autofree float *scores = NULL;
  g_autofree guint8 *labels = NULL;
  g_autoptr (GArray) kinds = g_array_new (FALSE, TRUE, sizeof (DefectKind));
  EadDetectorOptions options = { 1, 0, NULL };
  double image_auroc, pixel_auroc = NAN, aupro = NAN, f1 = NAN;
  float f1_threshold = 0;
  int exit_code;
  gint64 start = g_get_monotonic_time ();

  if (!ead_cli_parse ("eval", "",
                      "Evaluate a model on the test split of an MVTec AD category: image\n"
                      "AU-ROC, pixel AU-ROC, AU-PRO up to FPR 0.3 and F1-max, with the maps at\n"
                      "each image's own resolution (the MVTec AD evaluator's convention); then\n"
                      "the image and pixel AU-ROC and AU-PRO of each defect kind (its images\n"
                      "against all good test images).  --defects leaves out the other kinds.",
                      entries, &argc, &argv, &exit_code))
    return exit_code;
  if (!ead_cli_parse_precision ("eval", precision_text, &options.precision))
    return EAD_EXIT_USAGE;
  if (bundle == NULL || data_dir == NULL)
    {
      ead_cli_error ("eval", "--model BUNDLE and --data DIR are required (see 'ead eval --help')");
      return EAD_EXIT_USAGE;
    }
  if (defects_text != NULL)
    defects = g_strsplit (defects_text, ",", -1);
  tests = list_test_split (data_dir, (const char *const *) defects, &error);
  if (tests == NULL)
    {
      ead_cli_error ("eval", "%s", error->message);
      return EAD_EXIT_FAILURE;
    }
  model = ead_bundle_read (bundle, &error);
  if (model == NULL)
    {
      ead_cli_error ("eval", "%s", error->message);
      return EAD_EXIT_FAILURE;
    }
  options.threads = threads;
  options.device = device;
  detector = ead_detector_new (model, &options, &error);
  if (detector == NULL)
    {
      ead_cli_error ("eval", "%s: %s", bundle, error->message);
      return EAD_EXIT_FAILURE;
    }
  ead_cli_note_precision ("eval", options.precision, ead_detector_get_backend (detector));
  for (guint i = 0; i < tests->len; i++)
    {
      TestImage *test = &g_array_index (tests, TestImage, i);

      test->kind = -1;
      if (!test->anomalous)
        continue;
      /* the images of a kind are listed together */
      if (kinds->len == 0
          || !g_str_equal (g_array_index (kinds, DefectKind, kinds->len - 1).name, test->defect))
        {
          DefectKind kind = { test->defect };

          g_array_append_val (kinds, kind);
        }
      test->kind = kinds->len - 1;
    }
  input = g_new (float, (size_t) 3 * model->input_height * model->input_width);
  scores = g_new (float, tests->len);
  labels = g_new (guint8, tests->len);
  for (guint i = 0; i < tests->len; i++)
    {
      TestImage *test = &g_array_index (tests, TestImage, i);

      if (!evaluate_image (detector, test, pixels, input, &error))
        {
          ead_cli_error ("eval", "%s", error->message);
          return EAD_EXIT_FAILURE;
        }
      scores[i] = test->score;
      labels[i] = test->anomalous;
    }
  image_auroc = ead_metric_auroc (scores, labels, tests->len, &error);
  if (error == NULL)
    f1 = ead_metric_f1_max (scores, labels, tests->len, &f1_threshold, &error);
  if (error == NULL)
    ead_pixel_metrics_compute (pixels, 0.3, &pixel_auroc, &aupro, &error);
  for (guint k = 0; k < kinds->len && error == NULL; k++)
    {
      DefectKind *kind = &g_array_index (kinds, DefectKind, k);
      g_autofree float *s = g_new (float, tests->len);
      g_autofree guint8 *l = g_new (guint8, tests->len);
      g_autofree gboolean *chosen = g_new (gboolean, tests->len);
      size_t n = 0;

      for (guint i = 0; i < tests->len; i++)
        {
          TestImage *test = &g_array_index (tests, TestImage, i);

          chosen[i] = test->kind < 0 || test->kind == (int) k;
          if (chosen[i])
            {
              s[n] = test->score;
              l[n++] = test->anomalous;
            }
        }
      kind->image_auroc = ead_metric_auroc (s, l, n, &error);
      /* A kind without masks has no pixel metrics; every other failure the pooled metrics
       * above have reported already. */
      if (!ead_pixel_metrics_compute_subset (pixels, chosen, tests->len, 0.3,
                                             &kind->pixel_auroc, &kind->aupro, NULL))
        kind->pixel_auroc = kind->aupro = NAN;
    }
  if (error != NULL)
    {
      ead_cli_error ("eval", "%s: %s", data_dir, error->message);
      return EAD_EXIT_FAILURE;
    }

  if (json)
    {
      g_autoptr (JsonBuilder) builder = json_builder_new ();
      g_autoptr (JsonNode) root = NULL;

      json_builder_begin_object (builder);
      json_builder_set_member_name (builder, "model");
      json_builder_add_string_value (builder, bundle);
      json_builder_set_member_name (builder, "data");
      json_builder_add_string_value (builder, data_dir);
      add_metric (builder, "image_auroc", image_auroc);
      add_metric (builder, "pixel_auroc", pixel_auroc);
      add_metric (builder, "aupro_30", aupro);
      add_metric (builder, "f1_max", f1);
      add_metric (builder, "f1_threshold", f1_threshold);
      json_builder_set_member_name (builder, "defects");
      json_builder_begin_array (builder);
      for (guint k = 0; k < kinds->len; k++)
        {
          DefectKind *kind = &g_array_index (kinds, DefectKind, k);
          json_builder_begin_object (builder);
          json_builder_set_member_name (builder, "class");
          json_builder_add_string_value (builder, kind->name);
          add_metric (builder, "image_auroc", kind->image_auroc);
          add_metric (builder, "pixel_auroc", kind->pixel_auroc);
          add_metric (builder, "aupro_30", kind->aupro);
          json_builder_end_object (builder);
        }
      json_builder_end_array (builder);
      json_builder_set_member_name (builder, "images");
      json_builder_begin_array (builder);
      for (guint i = 0; i < tests->len; i++)
        {
          TestImage *test = &g_array_index (tests, TestImage, i);
          json_builder_begin_object (builder);
          json_builder_set_member_name (builder, "path");
          json_builder_add_string_value (builder, test->path);
          json_builder_set_member_name (builder, "class");
          json_builder_add_string_value (builder, test->defect);
          json_builder_set_member_name (builder, "label");
          json_builder_add_int_value (builder, test->anomalous);
          json_builder_set_member_name (builder, "score");
          json_builder_add_double_value (builder, test->score);
          json_builder_end_object (builder);
        }
      json_builder_end_array (builder);
      json_builder_end_object (builder);
      root = json_builder_get_root (builder);
      ead_cli_print_json (root);
      return EAD_EXIT_OK;
    }

  printf ("%s on %s: %u test images (%u anomalous), %.1f s\n", bundle, data_dir, tests->len,
          (guint) ({ guint a = 0; for (guint i = 0; i < tests->len; i++) a += labels[i]; a; }),
          (g_get_monotonic_time () - start) / 1e6);
  printf ("  image AU-ROC    %.4f\n", image_auroc);
  printf ("  pixel AU-ROC    %.4f\n", pixel_auroc);
  printf ("  AU-PRO (0.3)    %.4f\n", aupro);
  printf ("  F1-max          %.4f at threshold %.4g\n", f1, f1_threshold);
  if (kinds->len > 0)
    printf ("  each defect kind against the good images:\n"
            "  %-17s %9s %9s %9s\n", "", "image", "pixel", "AU-PRO");
  for (guint k = 0; k < kinds->len; k++)
    {
      DefectKind *kind = &g_array_index (kinds, DefectKind, k);
      char pixel_text[16], aupro_text[16];

      printf ("  %-17s %9.4f %9s %9s\n", kind->name, kind->image_auroc,
              format_metric (kind->pixel_auroc, pixel_text), format_metric (kind->aupro, aupro_text));
    }
  return EAD_EXIT_OK;
}
