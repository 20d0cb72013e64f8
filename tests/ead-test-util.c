#include "ead-test-util.h"

#include <glib/gstdio.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ead-error.h"
#include "ead-network.h"
#include "ead-safetensors.h"

char *
ead_test_fixture_path (const char *name)
{
  const char *dir = g_getenv ("EAD_TEST_FIXTURES");

  if (dir != NULL && *dir != '\0')
    return g_build_filename (dir, name, NULL);
  return g_test_build_filename (G_TEST_DIST, "fixtures", name, NULL);
}

JsonParser *
ead_test_load_fixture (const char *name)
{
  g_autofree char *path = ead_test_fixture_path (name);
  JsonParser *parser = json_parser_new ();
  g_autoptr (GError) error = NULL;

  json_parser_load_from_file (parser, path, &error);
  g_assert_no_error (error);
  g_assert_true (JSON_NODE_HOLDS_OBJECT (json_parser_get_root (parser)));
  return parser;
}

JsonObject *
ead_test_fixture_root (JsonParser *parser)
{
  return json_node_get_object (json_parser_get_root (parser));
}

float *
ead_test_fixture_input (JsonObject *root, const char *name, size_t count)
{
  guint64 key = ead_random_key (json_object_get_int_member (root, "seed"), name);
  float low = (float) json_object_get_double_member (root, "input_low");
  float span = (float) json_object_get_double_member (root, "input_span");
  float *data = g_new (float, count);

  for (size_t i = 0; i < count; i++)
    data[i] = low + span * ead_random_uniform (key, i);
  return data;
}

double
ead_test_check_steps (JsonObject *record, const float *before, const float *after, double lr,
                      const char *what)
{
  JsonArray *index = json_object_get_array_member (record, "index");
  JsonArray *value = json_object_get_array_member (record, "value");
  double worst = 0.0;

  for (guint k = 0; k < json_array_get_length (index); k++)
    {
      gint64 at = json_array_get_int_element (index, k);
      double step = (double) after[at] - before[at];
      double step_t = (float) json_array_get_double_element (value, k) - (double) before[at];
      double ulp = before[at] != 0.0f ? ldexp (1.0, ilogb (before[at]) - 23) : 0.0;
      double error = fabs (step - step_t);

      if (!(error <= 1e-3 * lr + 2.0 * ulp))
        g_test_fail_printf ("%s: element %" G_GINT64_FORMAT " moved by %.6g, in PyTorch by %.6g",
                            what, at, step, step_t);
      worst = MAX (worst, error / lr);
    }
  return worst;
}

void
ead_test_remove_tree (const char *path)
{
  GStatBuf info;
  g_autoptr (GDir) dir = NULL;
  const char *name;

  if (g_lstat (path, &info) != 0)
    return;
  if (!S_ISDIR (info.st_mode))
    {
      g_assert_cmpint (g_unlink (path), ==, 0);
      return;
    }
  g_chmod (path, 0700);
  dir = g_dir_open (path, 0, NULL);
  g_assert_nonnull (dir);
  while ((name = g_dir_read_name (dir)) != NULL)
    {
      g_autofree char *child = g_build_filename (path, name, NULL);

      ead_test_remove_tree (child);
    }
  g_assert_cmpint (g_rmdir (path), ==, 0);
}

gboolean
ead_test_python_imports (const char *modules)
{
  g_autofree char *code = g_strconcat ("import ", modules, NULL);
  const char *argv[] = { EAD_TEST_PYTHON, "-c", code, NULL };
  int status = 0;

  if (!g_file_test (EAD_TEST_PYTHON, G_FILE_TEST_IS_EXECUTABLE))
    return FALSE;
  return g_spawn_sync (NULL, (char **) argv, NULL,
                       G_SPAWN_STDOUT_TO_DEV_NULL | G_SPAWN_STDERR_TO_DEV_NULL, NULL, NULL, NULL,
                       NULL, &status, NULL)
         && g_spawn_check_wait_status (status, NULL);
}

float *
ead_test_read_floats (const char *dir, const char *name, size_t count)
{
  g_autofree char *path = g_build_filename (dir, name, NULL);
  g_autoptr (GError) error = NULL;
  char *contents = NULL;
  gsize size;

  g_file_get_contents (path, &contents, &size, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (size, ==, count * sizeof (float));
  return (float *) contents;
}

void
ead_test_assert_error (const GError *error, int code, const char *const *needles)
{
  g_assert_nonnull (error);
  if (error->domain != EAD_ERROR || error->code != code)
    g_error ("expected EAD_ERROR %d, got %s %d: %s", code, g_quark_to_string (error->domain),
             error->code, error->message);
  for (; *needles != NULL; needles++)
    if (strstr (error->message, *needles) == NULL)
      g_error ("'%s' is not in the message: %s", *needles, error->message);
}

gboolean
ead_test_become_nobody (void)
{
  if (setegid (65534) != 0)
    return FALSE;
  if (seteuid (65534) != 0)
    {
      setegid (0);
      return FALSE;
    }
  return TRUE;
}

void
ead_test_become_root (void)
{
  g_assert_cmpint (seteuid (0), ==, 0);
  g_assert_cmpint (setegid (0), ==, 0);
}

static gboolean
within (double value, double expected, double scale)
{
  return fabs (value - expected) <= EAD_TEST_REL_TOL * scale;
}

void
ead_test_check_record (JsonObject *record, const float *data, size_t count, const char *what,
                       EadTestAgreement *agreement)
{
  JsonArray *index = json_object_get_array_member (record, "index");
  JsonArray *value = json_object_get_array_member (record, "value");
  double maxabs = json_object_get_double_member (record, "maxabs");
  double sum_t = json_object_get_double_member (record, "sum");
  double sumsq_t = json_object_get_double_member (record, "sumsq");
  double sumabs_t = json_object_get_double_member (record, "sumabs");
  double sum = 0.0, sumsq = 0.0, sumabs = 0.0, worst = 0.0, relative, sums;
  guint worst_at = 0;

  if (json_object_has_member (record, "count"))
    g_assert_cmpint (json_object_get_int_member (record, "count"), ==, (gint64) count);
  g_assert_cmpuint (json_array_get_length (index), ==, json_array_get_length (value));
  g_assert_cmpuint (json_array_get_length (index), >, 0);
  g_assert_cmpfloat (maxabs, >=, 0.0);
  for (size_t i = 0; i < count; i++)
    {
      double x = data[i];
      sum += x;
      sumsq += x * x;
      sumabs += fabs (x);
    }
  for (guint k = 0; k < json_array_get_length (index); k++)
    {
      gint64 at = json_array_get_int_element (index, k);
      double error;

      g_assert_cmpint (at, >=, 0);
      g_assert_cmpint (at, <, (gint64) count);
      error = fabs (data[at] - json_array_get_double_element (value, k));
      if (!(error <= worst))  /* NaN included */
        {
          worst = error;
          worst_at = k;
        }
    }
  relative = maxabs > 0.0 ? worst / maxabs : worst;
  sums = MAX (fabs (sum - sum_t) / sumabs_t,
              MAX (fabs (sumsq - sumsq_t) / sumsq_t, fabs (sumabs - sumabs_t) / sumabs_t));
  g_test_message ("%s: sample error %.3g of max|t| %.4g; checksums %.3g relative", what,
                  relative, maxabs, sums);
  if (agreement != NULL && relative > agreement->worst_sample)
    {
      agreement->worst_sample = relative;
      g_free (agreement->worst_what);
      agreement->worst_what = g_strdup (what);
    }
  if (agreement != NULL)
    agreement->worst_sum = MAX (agreement->worst_sum, sums);

  if (!(worst <= EAD_TEST_REL_TOL * maxabs))
    g_test_fail_printf ("%s: element %" G_GINT64_FORMAT " is %.9g, PyTorch %.9g (error %.3g, "
                        "allowed %.3g)",
                        what, json_array_get_int_element (index, worst_at),
                        data[json_array_get_int_element (index, worst_at)],
                        json_array_get_double_element (value, worst_at), worst, EAD_TEST_REL_TOL * maxabs);
  if (!within (sum, sum_t, sumabs_t))
    g_test_fail_printf ("%s: sum %.9g, PyTorch %.9g (sum|x| %.9g)", what, sum, sum_t, sumabs_t);
  if (!within (sumsq, sumsq_t, sumsq_t))
    g_test_fail_printf ("%s: sum of squares %.9g, PyTorch %.9g", what, sumsq, sumsq_t);
  if (!within (sumabs, sumabs_t, sumabs_t))
    g_test_fail_printf ("%s: sum of |x| %.9g, PyTorch %.9g", what, sumabs, sumabs_t);
}

char *
ead_test_checkpoint_step (const char *path)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadSafetensors) file = ead_safetensors_open (path, &error);

  g_assert_no_error (error);
  return g_strdup (ead_safetensors_lookup_metadata (file, "ead.checkpoint.step"));
}
