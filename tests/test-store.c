/* test-store.c: the project store on temporary databases.
 *
 * Schema migrations from every earlier version, the constraints that keep the data
 * consistent (no result without its image, frozen splits, an immutable audit trail),
 * the audit trail of every threshold change, a reader thread beside a writer thread,
 * files that are not projects or come from a newer version, a full disk and a
 * read-only folder, and the live threshold counts against brute force.
 */
#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>
#include <sqlite3.h>

#include "ead-error.h"
#include "ead-project-private.h"
#include "ead-project.h"
#include "ead-schema.h"
#include "ead-threshold.h"
#include "ead-test-util.h"

static char *tmp_dir;

static char *
tmp_path (const char *name)
{
  return g_build_filename (tmp_dir, name, NULL);
}

/* A fresh project file path in a fresh folder. */
static char *
new_project_path (void)
{
  static int counter;
  g_autofree char *name = g_strdup_printf ("p%d", ++counter);
  g_autofree char *dir = tmp_path (name);

  g_assert_cmpint (g_mkdir_with_parents (dir, 0755), ==, 0);
  return g_build_filename (dir, EAD_PROJECT_FILE_NAME, NULL);
}

static EadProject *
create_project (char **path_out)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *path = new_project_path ();
  EadProject *project = ead_project_create (path, &error);

  g_assert_no_error (error);
  g_assert_nonnull (project);
  if (path_out != NULL)
    *path_out = g_steal_pointer (&path);
  return project;
}

static void
assert_error_mentions (const GError *error, EadError code, const char *path, const char *fragment)
{
  g_assert_nonnull (error);
  g_test_message ("%s", error->message);
  g_assert_error (error, EAD_ERROR, (int) code);
  if (path != NULL && strstr (error->message, path) == NULL)
    g_error ("expected the path %s in \"%s\"", path, error->message);
  if (fragment != NULL && strstr (error->message, fragment) == NULL)
    g_error ("expected \"%s\" in \"%s\"", fragment, error->message);
}

/* A bundle as far as ead_bundle_read_info goes: safetensors with metadata and no
 * tensors. */
static char *
write_fake_bundle (const char *name)
{
  g_autofree char *path = tmp_path (name);
  const char *json = "{\"__metadata__\":{\"ead.format_version\":\"1\","
                     "\"ead.arch\":\"efficientad-s\",\"ead.input.height\":\"256\","
                     "\"ead.input.width\":\"256\",\"ead.teacher.source\":\"test teacher\","
                     "\"ead.train.dataset.snapshot\":\"snapshot-1\"}}";
  size_t n = (strlen (json) + 7) / 8 * 8;
  g_autofree guint8 *data = g_malloc (8 + n);
  g_autoptr (GError) error = NULL;

  for (int i = 0; i < 8; i++)
    data[i] = (guint8) ((guint64) n >> (8 * i));
  memset (data + 8, ' ', n);
  memcpy (data + 8, json, strlen (json));
  g_file_set_contents (path, (const char *) data, (gssize) (8 + n), &error);
  g_assert_no_error (error);
  return g_steal_pointer (&path);
}

static gint64
add_model (EadProject *project, const char *name)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *bundle = write_fake_bundle (name);
  gint64 id = ead_project_add_model (project, bundle, NULL, &error);

  g_assert_no_error (error);
  g_assert_cmpint (id, >, 0);
  return id;
}

static void
fake_hash (guint64 seed, guint8 hash[EAD_IMAGE_HASH_SIZE])
{
  for (int i = 0; i < EAD_IMAGE_HASH_SIZE; i++)
    hash[i] = (guint8) (seed >> (8 * (i % 8))) ^ (guint8) (i * 37);
}

/* Adds n images named img-<first + i>.png in the project folder (the files need not
 * exist); returns their ids. */
static GArray *
add_images (EadProject *project, int first, int n, EadLabel label, EadSplit split)
{
  g_autoptr (GError) error = NULL;
  EadNewImage *images = g_new0 (EadNewImage, n);
  guint8 *hashes = g_malloc ((size_t) n * EAD_IMAGE_HASH_SIZE);
  char **paths = g_new0 (char *, n + 1);
  GArray *ids = g_array_sized_new (FALSE, FALSE, sizeof (gint64), n);

  g_array_set_size (ids, n);
  for (int i = 0; i < n; i++)
    {
      g_autofree char *name = g_strdup_printf ("img-%06d.png", first + i);

      paths[i] = g_build_filename (ead_project_get_dir (project), name, NULL);
      fake_hash ((guint64) (first + i) * 2654435761u + 1, hashes + i * EAD_IMAGE_HASH_SIZE);
      images[i] = (EadNewImage) { .path = paths[i], .hash = hashes + i * EAD_IMAGE_HASH_SIZE,
                                  .size = 1000,
                                  .width = 64, .height = 48, .format = "png",
                                  .label = label, .split = split };
    }
  ead_project_add_images (project, images, n, (gint64 *) ids->data, &error);
  g_assert_no_error (error);
  g_strfreev (paths);
  g_free (hashes);
  g_free (images);
  return ids;
}

static guint64
count_images (EadProject *project)
{
  g_autoptr (GError) error = NULL;
  guint64 count = 0;

  ead_project_count_images (project, NULL, &count, &error);
  g_assert_no_error (error);
  return count;
}

static sqlite3 *
raw_open (const char *path)
{
  sqlite3 *db = NULL;

  g_assert_cmpint (sqlite3_open (path, &db), ==, SQLITE_OK);
  return db;
}

static int
raw_int (sqlite3 *db, const char *sql)
{
  sqlite3_stmt *stmt = NULL;
  int value;

  g_assert_cmpint (sqlite3_prepare_v2 (db, sql, -1, &stmt, NULL), ==, SQLITE_OK);
  g_assert_cmpint (sqlite3_step (stmt), ==, SQLITE_ROW);
  value = sqlite3_column_int (stmt, 0);
  sqlite3_finalize (stmt);
  return value;
}

static void
raw_exec (sqlite3 *db, const char *sql)
{
  char *message = NULL;

  if (sqlite3_exec (db, sql, NULL, NULL, &message) != SQLITE_OK)
    g_error ("%s: %s", sql, message);
}

/* The schema as sqlite_schema lists it, one line per object. */
static char *
dump_schema (sqlite3 *db)
{
  GString *text = g_string_new (NULL);
  sqlite3_stmt *stmt = NULL;

  g_assert_cmpint (sqlite3_prepare_v2 (db, "SELECT type, name, tbl_name, sql FROM "
                                       "sqlite_schema ORDER BY type, name", -1, &stmt, NULL),
                   ==, SQLITE_OK);
  while (sqlite3_step (stmt) == SQLITE_ROW)
    g_string_append_printf (text, "%s %s %s %s\n", sqlite3_column_text (stmt, 0),
                            sqlite3_column_text (stmt, 1), sqlite3_column_text (stmt, 2),
                            sqlite3_column_text (stmt, 3));
  sqlite3_finalize (stmt);
  return g_string_free (text, FALSE);
}

/* Opening */

static void
test_create_open (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *path = NULL;
  g_autofree char *missing = tmp_path ("nowhere/project.ead");
  EadProject *project = create_project (&path);
  g_autoptr (EadProject) again = NULL;
  g_autofree char *stored = NULL;
  g_autofree char *outside = tmp_path ("elsewhere.png");

  g_assert_cmpstr (ead_project_get_path (project), ==, path);
  stored = ead_project_store_path (project, path);
  g_assert_cmpstr (stored, ==, EAD_PROJECT_FILE_NAME);
  g_free (stored);
  stored = ead_project_store_path (project, outside);
  g_assert_cmpstr (stored, ==, outside);
  ead_project_close (project);

  again = ead_project_create (path, &error);
  g_assert_null (again);
  assert_error_mentions (error, EAD_ERROR_IO, path, "exists already");
  g_clear_error (&error);

  again = ead_project_open (path, &error);
  g_assert_no_error (error);
  g_assert_cmpint (count_images (again), ==, 0);

  g_assert_null (ead_project_open (missing, &error));
  assert_error_mentions (error, EAD_ERROR_IO, missing, "no such project file");

  {
    g_autofree char *file = ead_project_file_for ("/a/b");
    g_autofree char *direct = ead_project_file_for ("/a/b/mine.ead");

    g_assert_cmpstr (file, ==, "/a/b/" EAD_PROJECT_FILE_NAME);
    g_assert_cmpstr (direct, ==, "/a/b/mine.ead");
  }
}

static void
test_not_a_project (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *garbage = tmp_path ("garbage.ead");
  g_autofree char *empty = tmp_path ("empty.ead");
  g_autofree char *other = tmp_path ("other.ead");
  g_autofree char *before = NULL;
  g_autofree char *after = NULL;
  char noise[4096];
  sqlite3 *db;

  for (size_t i = 0; i < sizeof noise; i++)
    noise[i] = (char) (i * 7919 % 251);
  g_file_set_contents (garbage, noise, sizeof noise, &error);
  g_assert_no_error (error);
  g_file_set_contents (empty, "", 0, &error);
  g_assert_no_error (error);
  db = raw_open (other);
  raw_exec (db, "CREATE TABLE notes (text TEXT)");
  sqlite3_close (db);

  g_assert_null (ead_project_open (garbage, &error));
  assert_error_mentions (error, EAD_ERROR_FORMAT, garbage, "not an EfficientAD project");
  g_clear_error (&error);
  g_file_get_contents (garbage, &after, NULL, NULL);
  g_assert_cmpmem (after, sizeof noise, noise, sizeof noise);

  g_assert_null (ead_project_open (empty, &error));
  assert_error_mentions (error, EAD_ERROR_FORMAT, empty, "empty");
  g_clear_error (&error);

  g_assert_null (ead_project_open (other, &error));
  assert_error_mentions (error, EAD_ERROR_FORMAT, other, "another program");
  g_clear_error (&error);

  /* A folder given where the file belongs. */
  g_assert_null (ead_project_open (tmp_dir, &error));
  assert_error_mentions (error, EAD_ERROR_IO, tmp_dir, "folder");
}

static void
test_newer_schema (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *path = NULL;
  g_autofree char *pragma = g_strdup_printf ("PRAGMA user_version = %d",
                                             _ead_schema_version () + 1);
  g_autoptr (EadProject) project = NULL;
  sqlite3 *db;

  ead_project_close (create_project (&path));
  db = raw_open (path);
  raw_exec (db, pragma);
  sqlite3_close (db);

  project = ead_project_open (path, &error);
  g_assert_null (project);
  assert_error_mentions (error, EAD_ERROR_UNSUPPORTED, path, "created by a newer version");

  /* Refused without touching the file. */
  db = raw_open (path);
  g_assert_cmpint (raw_int (db, "PRAGMA user_version"), ==, _ead_schema_version () + 1);
  sqlite3_close (db);
}

/* Builds a database by hand at every earlier version, from the migration steps, with a
 * row that every version has, and lets ead_project_open bring it up to date. */
static void
test_migrations (void)
{
  g_autofree char *fresh_path = NULL;
  g_autofree char *fresh_schema = NULL;
  guint n_steps;
  const EadSchemaStep *steps = _ead_schema_steps (&n_steps);
  sqlite3 *db;

  g_assert_cmpint (n_steps, >, 0);
  for (guint i = 0; i < n_steps; i++)
    g_assert_cmpint (steps[i].version, ==, (int) i + 1);

  ead_project_close (create_project (&fresh_path));
  db = raw_open (fresh_path);
  fresh_schema = dump_schema (db);
  g_assert_cmpint (raw_int (db, "PRAGMA user_version"), ==, _ead_schema_version ());
  sqlite3_close (db);

  for (int version = 0; version < _ead_schema_version (); version++)
    {
      g_autoptr (GError) error = NULL;
      g_autofree char *path = new_project_path ();
      g_autofree char *application_id = g_strdup_printf ("PRAGMA application_id = %d",
                                                         EAD_PROJECT_APPLICATION_ID);
      g_autofree char *schema = NULL;
      g_autoptr (EadProject) project = NULL;
      g_autoptr (EadProjectImage) image = NULL;

      g_test_message ("migrating from version %d", version);
      db = raw_open (path);
      raw_exec (db, application_id);
      for (guint i = 0; i < n_steps && steps[i].version <= version; i++)
        {
          g_autofree char *set_version = g_strdup_printf ("PRAGMA user_version = %d",
                                                          steps[i].version);

          raw_exec (db, steps[i].sql);
          raw_exec (db, set_version);
        }
      if (version >= 1)
        raw_exec (db, "INSERT INTO images (path, hash, size, width, height, format, label, "
                      "split, added_at) VALUES ('old.png', zeroblob (16), 10, 4, 3, 'png', "
                      "'good', 'train', 1)");
      sqlite3_close (db);

      project = ead_project_open (path, &error);
      g_assert_no_error (error);
      g_assert_nonnull (project);
      ead_project_close (g_steal_pointer (&project));

      db = raw_open (path);
      g_assert_cmpint (raw_int (db, "PRAGMA user_version"), ==, _ead_schema_version ());
      schema = dump_schema (db);
      g_assert_cmpstr (schema, ==, fresh_schema);
      g_assert_cmpint (raw_int (db, "SELECT count(*) FROM pragma_integrity_check "
                                    "WHERE integrity_check != 'ok'"), ==, 0);
      sqlite3_close (db);

      if (version >= 1)
        {
          project = ead_project_open (path, &error);
          g_assert_no_error (error);
          image = ead_project_find_image (project, "old.png", &error);
          g_assert_no_error (error);
          g_assert_nonnull (image);
          g_assert_cmpint (image->label, ==, EAD_LABEL_GOOD);
          g_assert_cmpint (image->split, ==, EAD_SPLIT_TRAIN);
        }
    }
}

/* Constraints */

static gint64
start_run (EadProject *project, gint64 model_id)
{
  g_autoptr (GError) error = NULL;
  gint64 run = ead_project_inference_run_new (project, model_id, NULL, &error);

  g_assert_no_error (error);
  g_assert_cmpint (run, >, 0);
  return run;
}

static void
add_scores (EadProject *project,
            gint64 run,
            const gint64 *ids,
            const double *scores,
            guint n)
{
  g_autoptr (GError) error = NULL;
  EadResultInput *results = g_new0 (EadResultInput, n);
  float map[4 * 3];

  for (int i = 0; i < 12; i++)
    map[i] = (float) i / 7.0f;
  for (guint i = 0; i < n; i++)
    results[i] = (EadResultInput) { .image_id = ids[i], .score = scores[i], .map = map,
                                    .map_width = 4, .map_height = 3 };
  ead_project_add_results (project, run, results, n, &error);
  g_assert_no_error (error);
  g_free (results);
}

static void
test_constraints (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *path = NULL;
  g_autoptr (EadProject) project = create_project (&path);
  g_autoptr (GArray) ids = add_images (project, 0, 4, EAD_LABEL_GOOD, EAD_SPLIT_NONE);
  gint64 *id = (gint64 *) ids->data;
  gint64 model = add_model (project, "constraints.ead.safetensors");
  gint64 other_model = add_model (project, "other.ead.safetensors");
  gint64 run = start_run (project, model);
  double scores[4] = { 0.1, 0.2, 0.3, 0.4 };
  g_autoptr (EadProjectImage) image = NULL;
  EadResultInput bogus = { .image_id = 999999, .score = 1.0, .map = (float[1]) { 0 },
                           .map_width = 1, .map_height = 1 };
  EadNewImage twice[2];
  guint8 hash[EAD_IMAGE_HASH_SIZE];
  sqlite3 *db;
  char *message = NULL;
  g_autofree char *insert_bad_model = NULL;

  add_scores (project, run, id, scores, 4);
  db = raw_open (path);
  raw_exec (db, "PRAGMA foreign_keys = ON");
  g_assert_cmpint (raw_int (db, "SELECT count(*) FROM results"), ==, 4);
  g_assert_cmpint (raw_int (db, "SELECT count(*) FROM result_maps"), ==, 4);

  /* Deleting an image deletes its result and map: no result outlives its image. */
  ead_project_delete_images (project, &id[1], 1, &error);
  g_assert_no_error (error);
  g_assert_cmpint (raw_int (db, "SELECT count(*) FROM results"), ==, 3);
  g_assert_cmpint (raw_int (db, "SELECT count(*) FROM result_maps"), ==, 3);
  g_assert_cmpint (raw_int (db, "SELECT count(*) FROM results r LEFT JOIN images i "
                                "ON i.id = r.image_id WHERE i.id IS NULL"), ==, 0);

  /* And no result can be made for an image that does not exist, through the API or
   * around it. */
  g_assert_false (ead_project_add_results (project, run, &bogus, 1, &error));
  assert_error_mentions (error, EAD_ERROR_INVALID, path, "FOREIGN KEY");
  g_clear_error (&error);
  g_assert_cmpint (sqlite3_exec (db, "INSERT INTO results (model_id, run_id, image_id, score, "
                                     "created_at) VALUES (1, 1, 424242, 0.5, 0)", NULL, NULL,
                                 &message), ==, SQLITE_CONSTRAINT);
  sqlite3_free (message);
  /* A result's model is its run's model. */
  insert_bad_model = g_strdup_printf ("INSERT INTO results (model_id, run_id, image_id, score, "
                                      "created_at) VALUES (%" G_GINT64_FORMAT ", %"
                                      G_GINT64_FORMAT ", %" G_GINT64_FORMAT ", 0.5, 0)",
                                      other_model, run, id[2]);
  g_assert_cmpint (sqlite3_exec (db, insert_bad_model, NULL, NULL, &message), ==,
                   SQLITE_CONSTRAINT);
  sqlite3_free (message);

  /* Splits are frozen once assigned. */
  ead_project_set_splits (project, &id[0], 1, EAD_SPLIT_TRAIN, &error);
  g_assert_no_error (error);
  ead_project_set_splits (project, &id[0], 1, EAD_SPLIT_TRAIN, &error);
  g_assert_no_error (error);
  g_assert_false (ead_project_set_splits (project, id, 1, EAD_SPLIT_TEST, &error));
  assert_error_mentions (error, EAD_ERROR_INVALID, path, "frozen");
  g_clear_error (&error);
  /* A batch with one frozen image changes none. */
  {
    gint64 batch[2] = { id[2], id[0] };

    g_assert_false (ead_project_set_splits (project, batch, 2, EAD_SPLIT_VALIDATION, &error));
    g_clear_error (&error);
    image = ead_project_get_image (project, id[2], &error);
    g_assert_no_error (error);
    g_assert_cmpint (image->split, ==, EAD_SPLIT_NONE);
    g_clear_pointer (&image, ead_project_image_free);
  }
  image = ead_project_get_image (project, id[0], &error);
  g_assert_cmpint (image->split, ==, EAD_SPLIT_TRAIN);
  g_clear_pointer (&image, ead_project_image_free);

  /* Labels: only the three words; an unknown id changes nothing. */
  g_assert_cmpint (sqlite3_exec (db, "UPDATE images SET label = 'maybe'", NULL, NULL, &message),
                   ==, SQLITE_CONSTRAINT);
  sqlite3_free (message);
  {
    gint64 batch[2] = { id[2], 777777 };

    g_assert_false (ead_project_set_labels (project, batch, 2, EAD_LABEL_DEFECT, &error));
    assert_error_mentions (error, EAD_ERROR_INVALID, path, "777777");
    g_clear_error (&error);
    image = ead_project_get_image (project, id[2], &error);
    g_assert_cmpint (image->label, ==, EAD_LABEL_GOOD);
    g_clear_pointer (&image, ead_project_image_free);
  }

  /* The same content twice in one batch: the batch is refused as a whole. */
  fake_hash (12345, hash);
  twice[0] = (EadNewImage) { .path = "/tmp/a.png", .hash = hash, .width = 1, .height = 1,
                             .format = "png" };
  twice[1] = (EadNewImage) { .path = "/tmp/b.png", .hash = hash, .width = 1, .height = 1,
                             .format = "png" };
  g_assert_false (ead_project_add_images (project, twice, 2, NULL, &error));
  assert_error_mentions (error, EAD_ERROR_INVALID, path, "UNIQUE");
  g_clear_error (&error);
  g_assert_cmpint (count_images (project), ==, 3);

  /* The audit trail cannot be edited. */
  ead_project_set_threshold (project, model, 0.5, "tester", NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpint (sqlite3_exec (db, "UPDATE threshold_events SET new_value = 0.1", NULL, NULL,
                                 &message), ==, SQLITE_CONSTRAINT);
  sqlite3_free (message);

  /* JSON columns hold JSON. */
  g_assert_cmpint (ead_project_training_run_new (project, "{not json", 10, &error), ==, 0);
  assert_error_mentions (error, EAD_ERROR_INVALID, path, "JSON");
  g_clear_error (&error);
  g_assert_false (ead_project_set_model_metrics (project, model, "[1,", &error));
  g_clear_error (&error);
  ead_project_set_model_metrics (project, model, "{\"image_auroc\": 0.98}", &error);
  g_assert_no_error (error);

  g_assert_cmpint (raw_int (db, "SELECT count(*) FROM pragma_foreign_key_check"), ==, 0);
  sqlite3_close (db);
}

/* Thresholds and their audit trail */

static void
assert_event (GPtrArray *events,
              guint index,
              const char *kind,
              double old_value,
              double new_value,
              const char *user,
              const char *reason)
{
  EadThresholdEvent *event;

  g_assert_cmpuint (index, <, events->len);
  event = events->pdata[index];
  g_assert_cmpstr (event->kind, ==, kind);
  if (isnan (old_value))
    g_assert_true (isnan (event->old_value));
  else
    g_assert_cmpfloat (event->old_value, ==, old_value);
  if (isnan (new_value))
    g_assert_true (isnan (event->new_value));
  else
    g_assert_cmpfloat (event->new_value, ==, new_value);
  g_assert_cmpstr (event->user, ==, user);
  g_assert_cmpstr (event->reason, ==, reason);
  g_assert_cmpint (event->at, >, 0);
}

static void
test_audit_trail (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadProject) project = create_project (NULL);
  g_autoptr (GArray) good = add_images (project, 0, 4, EAD_LABEL_GOOD, EAD_SPLIT_TEST);
  g_autoptr (GArray) defect = add_images (project, 100, 2, EAD_LABEL_DEFECT, EAD_SPLIT_TEST);
  gint64 model = add_model (project, "audit.ead.safetensors");
  gint64 run = start_run (project, model);
  double good_scores[4] = { 0.1, 0.2, 0.3, 0.6 };
  double defect_scores[2] = { 0.5, 0.9 };
  g_autoptr (GPtrArray) events = NULL;
  EadThresholdSuggestion suggestion;
  EadThreshold threshold;
  guint n_events;

  add_scores (project, run, (gint64 *) good->data, good_scores, 4);
  add_scores (project, run, (gint64 *) defect->data, defect_scores, 2);

  ead_project_get_threshold (project, model, &threshold, &error);
  g_assert_no_error (error);
  g_assert_true (isnan (threshold.effective) && isnan (threshold.value)
                 && isnan (threshold.suggested) && isnan (threshold.review));

  /* A review band needs a threshold to lie below. */
  g_assert_false (ead_project_set_review_threshold (project, model, 0.2, "ann", NULL, &error));
  assert_error_mentions (error, EAD_ERROR_INVALID, NULL, "no threshold yet");
  g_clear_error (&error);

  ead_project_set_threshold (project, model, 0.7, "ann", "first guess", &error);
  g_assert_no_error (error);
  ead_project_set_review_threshold (project, model, 0.4, "ann", "borderline", &error);
  g_assert_no_error (error);
  /* Suggestion: the best F1 here fails 0.5, 0.6 and 0.9 (F1 0.8) or 0.9 alone (0.67):
   * the threshold lies halfway between 0.5 and 0.3. */
  ead_project_suggest_threshold (project, model, "bob", &suggestion, &error);
  g_assert_no_error (error);
  g_assert_cmpint (suggestion.method, ==, EAD_SUGGEST_F1);
  g_assert_cmpfloat_with_epsilon (suggestion.f1, 0.8, 1e-6);
  g_assert_cmpfloat_with_epsilon (suggestion.threshold, 0.4, 1e-6);
  g_assert_cmpuint (suggestion.n_good, ==, 4);
  g_assert_cmpuint (suggestion.n_defect, ==, 2);
  /* Accepting it would put the band's edge (0.4) at the threshold: refused, no event. */
  g_assert_false (ead_project_accept_suggested_threshold (project, model, "bob", "ok", &error));
  assert_error_mentions (error, EAD_ERROR_INVALID, NULL, "review band");
  g_clear_error (&error);
  ead_project_set_review_threshold (project, model, 0.25, "bob", "wider band", &error);
  g_assert_no_error (error);
  ead_project_accept_suggested_threshold (project, model, "bob", "validated", &error);
  g_assert_no_error (error);
  ead_project_set_review_threshold (project, model, NAN, NULL, "no band", &error);
  g_assert_no_error (error);
  g_assert_false (ead_project_set_threshold (project, model, INFINITY, "x", NULL, &error));
  g_clear_error (&error);
  g_assert_false (ead_project_set_threshold (project, 4242, 0.3, "x", NULL, &error));
  assert_error_mentions (error, EAD_ERROR_INVALID, NULL, "4242");
  g_clear_error (&error);

  ead_project_get_threshold (project, model, &threshold, &error);
  g_assert_no_error (error);
  g_assert_cmpfloat (threshold.value, ==, suggestion.threshold);
  g_assert_cmpfloat (threshold.effective, ==, suggestion.threshold);
  g_assert_cmpfloat (threshold.suggested, ==, suggestion.threshold);
  g_assert_true (isnan (threshold.review));

  /* One event per change that happened, none for the refused ones. */
  events = ead_project_list_threshold_events (project, model, &error);
  g_assert_no_error (error);
  n_events = 6;
  g_assert_cmpuint (events->len, ==, n_events);
  assert_event (events, 0, "set", NAN, 0.7, "ann", "first guess");
  assert_event (events, 1, "review", NAN, 0.4, "ann", "borderline");
  assert_event (events, 2, "suggested", NAN, suggestion.threshold, "bob",
                ((EadThresholdEvent *) events->pdata[2])->reason);
  g_assert_nonnull (strstr (((EadThresholdEvent *) events->pdata[2])->reason, "F1"));
  assert_event (events, 3, "review", 0.4, 0.25, "bob", "wider band");
  assert_event (events, 4, "accept", 0.7, suggestion.threshold, "bob", "validated");
  assert_event (events, 5, "review", 0.25, NAN, g_get_user_name (), "no band");
  for (guint i = 1; i < events->len; i++)
    g_assert_cmpint (((EadThresholdEvent *) events->pdata[i])->at, >=,
                     ((EadThresholdEvent *) events->pdata[i - 1])->at);
}

/* Concurrency: a reader on its own connection never sees half a batch. */

#define WRITER_BATCHES 30
#define WRITER_BATCH_SIZE 200

typedef struct {
  char *path;
  gint writer_done;
  guint reads;
  guint distinct_counts;
  char *failure;
} Shared;

static gpointer
writer_thread (gpointer data)
{
  Shared *shared = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (EadProject) project = ead_project_open (shared->path, &error);

  g_assert_no_error (error);
  for (int b = 0; b < WRITER_BATCHES; b++)
    {
      g_autoptr (GArray) ids = add_images (project, b * WRITER_BATCH_SIZE, WRITER_BATCH_SIZE,
                                           EAD_LABEL_UNLABELLED, EAD_SPLIT_NONE);

      g_assert_cmpuint (ids->len, ==, WRITER_BATCH_SIZE);
    }
  g_atomic_int_set (&shared->writer_done, 1);
  return NULL;
}

static gpointer
reader_thread (gpointer data)
{
  Shared *shared = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (EadProject) project = ead_project_open (shared->path, &error);
  guint64 last = 0;
  gboolean done;

  g_assert_no_error (error);
  do
    {
      guint64 count = 0;
      g_autoptr (GPtrArray) page = NULL;

      done = g_atomic_int_get (&shared->writer_done);
      if (!ead_project_count_images (project, NULL, &count, &error))
        {
          shared->failure = g_strdup (error->message);
          return NULL;
        }
      page = ead_project_list_images (project, NULL, 0, 50, &error);
      if (page == NULL)
        {
          shared->failure = g_strdup (error->message);
          return NULL;
        }
      if (count % WRITER_BATCH_SIZE != 0 || count < last)
        {
          shared->failure = g_strdup_printf ("saw %" G_GUINT64_FORMAT " images after %"
                                             G_GUINT64_FORMAT, count, last);
          return NULL;
        }
      shared->distinct_counts += count != last;
      last = count;
      shared->reads++;
    }
  while (!done);
  return NULL;
}

static void
test_concurrent_reader (void)
{
  Shared shared = { 0 };
  GThread *writer, *reader;
  g_autoptr (EadProject) project = create_project (&shared.path);

  reader = g_thread_new ("reader", reader_thread, &shared);
  writer = g_thread_new ("writer", writer_thread, &shared);
  g_thread_join (writer);
  g_thread_join (reader);
  if (shared.failure != NULL)
    g_error ("reader: %s", shared.failure);
  g_test_message ("%u reads, %u distinct counts", shared.reads, shared.distinct_counts);
  g_assert_cmpuint (shared.reads, >, 1);
  g_assert_cmpint (count_images (project), ==, WRITER_BATCHES * WRITER_BATCH_SIZE);
  g_free (shared.path);
}

/* A full disk and a read-only folder */

static void
test_disk_full (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *path = NULL;
  EadProject *project = create_project (&path);
  g_autoptr (GArray) saved = add_images (project, 0, 100, EAD_LABEL_GOOD, EAD_SPLIT_TRAIN);
  g_autofree char *limit = NULL;
  gboolean full = FALSE;
  sqlite3 *db = project->db;

  /* SQLite's page limit fails writes with SQLITE_FULL, exactly as a full disk does. */
  limit = g_strdup_printf ("PRAGMA max_page_count = %d",
                           raw_int (db, "PRAGMA page_count") + 4);
  raw_exec (db, limit);
  for (int batch = 1; batch < 50 && !full; batch++)
    {
      EadNewImage images[100];
      guint8 hashes[100][EAD_IMAGE_HASH_SIZE];
      char *paths[100];

      for (int i = 0; i < 100; i++)
        {
          paths[i] = g_strdup_printf ("%s/full-%d-%d-with-a-long-name-to-fill-pages.png",
                                      tmp_dir, batch, i);
          fake_hash ((guint64) batch * 1000 + i + 99999, hashes[i]);
          images[i] = (EadNewImage) { .path = paths[i], .hash = hashes[i], .width = 1,
                                      .height = 1, .format = "png" };
        }
      full = !ead_project_add_images (project, images, 100, NULL, &error);
      for (int i = 0; i < 100; i++)
        g_free (paths[i]);
    }
  g_assert_true (full);
  assert_error_mentions (error, EAD_ERROR_IO, path, "disk is full");
  g_clear_error (&error);
  /* The failed batch left nothing behind, and the project still works. */
  g_assert_cmpint (count_images (project) % 100, ==, 0);
  g_assert_cmpint (count_images (project), >=, 100);
  ead_project_close (project);

  project = ead_project_open (path, &error);
  g_assert_no_error (error);
  g_assert_cmpint (count_images (project) % 100, ==, 0);
  g_assert_cmpint (raw_int (project->db, "SELECT count(*) FROM pragma_integrity_check "
                                         "WHERE integrity_check != 'ok'"), ==, 0);
  ead_project_close (project);
}

static void
test_read_only (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree char *path = NULL;
  g_autofree char *dir = NULL;
  EadProject *project = create_project (&path);
  g_autoptr (GArray) saved = add_images (project, 0, 10, EAD_LABEL_GOOD, EAD_SPLIT_TRAIN);
  g_autoptr (GArray) more = NULL;
  gboolean as_nobody = geteuid () == 0;
  EadProject *reopened;

  ead_project_close (project);
  dir = g_path_get_dirname (path);
  if (as_nobody)
    {
      /* The project stays root's: to nobody it is a read-only file in a read-only
       * folder. */
      g_assert_cmpint (g_chmod (tmp_dir, 0755), ==, 0);
      if (!ead_test_become_nobody ())
        {
          g_test_skip ("running as root without the right to switch to another user");
          return;
        }
    }
  else
    {
      g_assert_cmpint (g_chmod (path, 0444), ==, 0);
      g_assert_cmpint (g_chmod (dir, 0555), ==, 0);
    }

  reopened = ead_project_open (path, &error);
  if (reopened != NULL)
    {
      EadNewImage image = { .path = "x.png", .hash = (guint8[16]) { 1 }, .width = 1,
                            .height = 1, .format = "png" };

      g_assert_false (ead_project_add_images (reopened, &image, 1, NULL, &error));
      g_assert_cmpint (count_images (reopened), ==, 10);
      ead_project_close (reopened);
    }
  if (as_nobody)
    ead_test_become_root ();
  else
    {
      g_chmod (dir, 0755);
      g_chmod (path, 0644);
    }
  assert_error_mentions (error, EAD_ERROR_IO, path, "read-only");
  g_clear_error (&error);

  /* Nothing was lost, and the project works again once it may be written. */
  project = ead_project_open (path, &error);
  g_assert_no_error (error);
  g_assert_cmpint (count_images (project), ==, 10);
  more = add_images (project, 10, 5, EAD_LABEL_GOOD, EAD_SPLIT_TRAIN);
  g_assert_cmpint (count_images (project), ==, 15);
  ead_project_close (project);
}

/* Score tables against brute force */

static void
brute_force_count (const double *scores,
                   const EadLabel *labels,
                   guint n,
                   double threshold,
                   double review,
                   EadThresholdCounts *counts)
{
  gboolean band = !isnan (review) && review < threshold;

  memset (counts, 0, sizeof *counts);
  for (guint i = 0; i < n; i++)
    {
      EadOutcome outcome = scores[i] >= threshold ? EAD_OUTCOME_FAIL
                           : band && scores[i] >= review ? EAD_OUTCOME_REVIEW
                           : EAD_OUTCOME_PASS;

      counts->counts[labels[i]][outcome]++;
      counts->n_pass += outcome == EAD_OUTCOME_PASS;
      counts->n_review += outcome == EAD_OUTCOME_REVIEW;
      counts->n_fail += outcome == EAD_OUTCOME_FAIL;
      if (labels[i] == EAD_LABEL_DEFECT)
        {
          counts->true_positive += outcome == EAD_OUTCOME_FAIL;
          counts->false_negative += outcome != EAD_OUTCOME_FAIL;
        }
      else if (labels[i] == EAD_LABEL_GOOD)
        {
          counts->false_positive += outcome == EAD_OUTCOME_FAIL;
          counts->true_negative += outcome != EAD_OUTCOME_FAIL;
        }
    }
}

static double
brute_force_f1 (const double *scores,
                const EadLabel *labels,
                const EadSplit *splits,
                guint n,
                double threshold)
{
  guint tp = 0, fp = 0, fn = 0;

  for (guint i = 0; i < n; i++)
    {
      if (splits[i] == EAD_SPLIT_TRAIN || labels[i] == EAD_LABEL_UNLABELLED)
        continue;
      if (labels[i] == EAD_LABEL_DEFECT)
        {
          tp += scores[i] >= threshold;
          fn += scores[i] < threshold;
        }
      else
        fp += scores[i] >= threshold;
    }
  return 2.0 * tp / (2.0 * tp + fp + fn);
}

static void
test_threshold_counts (void)
{
  GRand *rand = g_rand_new_with_seed (7);
  const guint n = 3000;
  double *scores = g_new (double, n);
  EadLabel *labels = g_new (EadLabel, n);
  EadSplit *splits = g_new (EadSplit, n);
  g_autoptr (GError) error = NULL;
  g_autoptr (EadScoreTable) table = NULL;
  EadThresholdSuggestion suggestion;
  double best = 0.0, min, max;
  guint64 histogram[EAD_N_LABELS * 10], in_bins = 0;

  for (guint i = 0; i < n; i++)
    {
      labels[i] = (EadLabel) g_rand_int_range (rand, 0, EAD_N_LABELS);
      splits[i] = (EadSplit) g_rand_int_range (rand, 0, 4);
      /* Float scores, with deliberate ties. */
      scores[i] = (float) (labels[i] == EAD_LABEL_DEFECT ? g_rand_double_range (rand, 0.3, 1.0)
                                                         : g_rand_double_range (rand, 0.0, 0.7));
      if (i % 10 == 0)
        scores[i] = 0.5;
    }
  table = ead_score_table_new (scores, labels, splits, n);
  g_assert_cmpuint (ead_score_table_size (table), ==, n);

  for (int t = 0; t < 400; t++)
    {
      double threshold = t % 3 == 0 ? scores[g_rand_int_range (rand, 0, n)]
                         : g_rand_double_range (rand, -0.1, 1.1);
      double review = t % 4 == 0 ? NAN
                      : t % 4 == 1 ? scores[g_rand_int_range (rand, 0, n)]
                      : threshold - g_rand_double_range (rand, 0.0, 0.3);
      EadThresholdCounts fast, slow;

      ead_score_table_count (table, threshold, review, &fast);
      brute_force_count (scores, labels, n, threshold, review, &slow);
      g_assert_cmpmem (&fast, sizeof fast, &slow, sizeof slow);
    }

  /* The suggestion reaches the best F1 any threshold reaches on held-out images. */
  ead_score_table_suggest (table, &suggestion, &error);
  g_assert_no_error (error);
  g_assert_cmpint (suggestion.method, ==, EAD_SUGGEST_F1);
  for (guint i = 0; i < n; i++)
    best = MAX (best, brute_force_f1 (scores, labels, splits, n, scores[i]));
  g_assert_cmpfloat_with_epsilon (suggestion.f1, best, 1e-6);
  g_assert_cmpfloat_with_epsilon (brute_force_f1 (scores, labels, splits, n,
                                                  suggestion.threshold), best, 1e-6);

  g_assert_true (ead_score_table_range (table, &min, &max));
  ead_score_table_histogram (table, min, max, 10, histogram);
  for (guint i = 0; i < G_N_ELEMENTS (histogram); i++)
    in_bins += histogram[i];
  g_assert_cmpuint (in_bins, ==, n);

  g_rand_free (rand);
  g_free (scores);
  g_free (labels);
  g_free (splits);
}

static void
test_threshold_max_good (void)
{
  double scores[5] = { 0.2, 0.4, 0.3, 0.9, 0.1 };
  EadLabel labels[5] = { EAD_LABEL_GOOD, EAD_LABEL_GOOD, EAD_LABEL_GOOD,
                         EAD_LABEL_UNLABELLED, EAD_LABEL_GOOD };
  EadSplit splits[5] = { EAD_SPLIT_VALIDATION, EAD_SPLIT_TEST, EAD_SPLIT_TEST,
                         EAD_SPLIT_NONE, EAD_SPLIT_TRAIN };
  EadSplit all_train[5] = { EAD_SPLIT_TRAIN, EAD_SPLIT_TRAIN, EAD_SPLIT_TRAIN,
                            EAD_SPLIT_TRAIN, EAD_SPLIT_TRAIN };
  EadLabel unlabelled[2] = { EAD_LABEL_UNLABELLED, EAD_LABEL_UNLABELLED };
  g_autoptr (GError) error = NULL;
  g_autoptr (EadScoreTable) table = ead_score_table_new (scores, labels, splits, 5);
  g_autoptr (EadScoreTable) train_only = ead_score_table_new (scores, labels, all_train, 5);
  g_autoptr (EadScoreTable) nothing = ead_score_table_new (scores, unlabelled, splits, 2);
  EadThresholdSuggestion suggestion;

  /* Held-out goods 0.2, 0.3, 0.4: 0.4 + 0.1 * 0.2. */
  ead_score_table_suggest (table, &suggestion, &error);
  g_assert_no_error (error);
  g_assert_cmpint (suggestion.method, ==, EAD_SUGGEST_MAX_GOOD);
  g_assert_cmpfloat_with_epsilon (suggestion.threshold, 0.42, 1e-12);
  g_assert_cmpuint (suggestion.n_good, ==, 3);
  /* Only training goods: all four of them, 0.4 + 0.1 * 0.3. */
  ead_score_table_suggest (train_only, &suggestion, &error);
  g_assert_no_error (error);
  g_assert_cmpfloat_with_epsilon (suggestion.threshold, 0.43, 1e-12);
  g_assert_false (ead_score_table_suggest (nothing, &suggestion, &error));
  g_assert_error (error, EAD_ERROR, EAD_ERROR_INVALID);
}

/* Runs, results and reports */

static void
test_runs (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadProject) project = create_project (NULL);
  g_autoptr (GArray) ids = add_images (project, 0, 6, EAD_LABEL_GOOD, EAD_SPLIT_TEST);
  gint64 *id = (gint64 *) ids->data;
  gint64 model = add_model (project, "runs.ead.safetensors");
  gint64 training = ead_project_training_run_new (project, "{\"steps\": 100}", 100, &error);
  EadTrainingMetric metrics[3];
  g_autoptr (GArray) read_back = NULL;
  g_autoptr (GArray) unscored = NULL;
  g_autoptr (GPtrArray) runs = NULL;
  g_autoptr (GPtrArray) failures = NULL;
  g_autoptr (GPtrArray) results = NULL;
  g_autoptr (GPtrArray) reports = NULL;
  g_autoptr (EadProjectModel) model_record = NULL;
  g_autofree char *log = NULL;
  g_autofree float *map_back = NULL;
  float map[6] = { 0.0f, 0.1f, 1.0f / 3.0f, 2.5f, -1.0f, 65504.0f };
  EadResultInput results_in[3];
  EadImageFilter filter;
  gint64 inference;
  int width, height;

  g_assert_no_error (error);
  model_record = ead_project_get_model (project, model, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (model_record->arch, ==, "efficientad-s");
  g_assert_cmpstr (model_record->teacher, ==, "test teacher");
  g_assert_cmpstr (model_record->dataset_snapshot, ==, "snapshot-1");
  g_assert_cmpstr (model_record->name, ==, "runs");
  g_assert_cmpint (model_record->input_width, ==, 256);
  g_assert_cmpint (ead_project_latest_model (project, &error), ==, model);
  {
    g_autofree char *bundle = tmp_path ("runs.ead.safetensors");

    g_assert_cmpint (ead_project_add_model (project, bundle, NULL, &error), ==, 0);
    assert_error_mentions (error, EAD_ERROR_INVALID, NULL, "registered already");
    g_clear_error (&error);
  }

  /* Training: queued → running → progress → done, and nothing after done. */
  g_assert_false (ead_project_training_run_set_state (project, training, EAD_RUN_QUEUED, NULL,
                                                      &error));
  g_clear_error (&error);
  ead_project_training_run_set_state (project, training, EAD_RUN_RUNNING, NULL, &error);
  g_assert_no_error (error);
  for (int i = 0; i < 3; i++)
    metrics[i] = (EadTrainingMetric) { .step = (guint64) (i + 1) * 10, .loss_total = 3.0 - i,
                                       .loss_hard = 1.0, .loss_penalty = 0.5, .loss_ae = 0.75,
                                       .loss_stae = 0.25, .elapsed_s = i + 1.0 };
  ead_project_training_run_add_progress (project, training, metrics, 3, 12.0, &error);
  g_assert_no_error (error);
  ead_project_training_run_append_log (project, training, "step 10\n", &error);
  ead_project_training_run_append_log (project, training, "step 30\n", &error);
  g_assert_no_error (error);
  ead_project_training_run_set_model (project, training, model, &error);
  g_assert_no_error (error);
  ead_project_training_run_set_state (project, training, EAD_RUN_DONE, NULL, &error);
  g_assert_no_error (error);
  g_assert_false (ead_project_training_run_set_state (project, training, EAD_RUN_FAILED, "x",
                                                      &error));
  assert_error_mentions (error, EAD_ERROR_INVALID, NULL, "is done");
  g_clear_error (&error);
  read_back = ead_project_training_run_metrics (project, training, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (read_back->len, ==, 3);
  g_assert_cmpmem (read_back->data, sizeof metrics, metrics, sizeof metrics);
  log = ead_project_training_run_log (project, training, &error);
  g_assert_cmpstr (log, ==, "step 10\nstep 30\n");

  /* Inference over the test split, with a failure, then resumed. */
  ead_image_filter_init (&filter);
  filter.split = EAD_SPLIT_TEST;
  inference = ead_project_inference_run_new (project, model, &filter, &error);
  g_assert_no_error (error);
  results_in[0] = (EadResultInput) { .image_id = id[0], .score = 0.25, .map = map,
                                     .map_width = 3, .map_height = 2 };
  results_in[1] = (EadResultInput) { .image_id = id[1], .failure = "decoder said no" };
  results_in[2] = (EadResultInput) { .image_id = id[2], .score = 0.75, .map = map,
                                     .map_width = 2, .map_height = 3 };
  ead_project_add_results (project, inference, results_in, 3, &error);
  g_assert_no_error (error);
  unscored = ead_project_list_unscored (project, model, &filter, inference, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (unscored->len, ==, 3);
  g_assert_cmpint (g_array_index (unscored, gint64, 0), ==, id[3]);
  g_clear_pointer (&unscored, g_array_unref);
  /* By no run: the failed image is still to do. */
  unscored = ead_project_list_unscored (project, model, &filter, 0, &error);
  g_assert_cmpuint (unscored->len, ==, 4);

  ead_project_get_result_map (project, model, id[0], &map_back, &width, &height, &error);
  g_assert_no_error (error);
  g_assert_cmpint (width, ==, 3);
  g_assert_cmpint (height, ==, 2);
  for (int i = 0; i < 6; i++)
    g_assert_cmpfloat (map_back[i], ==, ead_half_to_float (ead_half_from_float (map[i])));
  g_assert_cmpfloat (map_back[2], !=, map[2]);  /* 1/3 is not a half float */

  failures = ead_project_list_inference_failures (project, inference, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (failures->len, ==, 1);
  g_assert_cmpstr (((EadInferenceFailure *) failures->pdata[0])->reason, ==, "decoder said no");

  ead_project_inference_run_finish (project, inference, EAD_RUN_CANCELLED, "stopped", &error);
  g_assert_no_error (error);
  g_assert_false (ead_project_add_results (project, inference, results_in, 1, &error));
  assert_error_mentions (error, EAD_ERROR_INVALID, NULL, "cancelled");
  g_clear_error (&error);

  runs = ead_project_list_runs (project, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (runs->len, ==, 2);
  {
    EadProjectRun *newest = runs->pdata[0], *oldest = runs->pdata[1];

    g_assert_cmpint (newest->kind, ==, EAD_RUN_INFERENCE);
    g_assert_cmpint (newest->state, ==, EAD_RUN_CANCELLED);
    g_assert_cmpuint (newest->total, ==, 6);
    g_assert_cmpuint (newest->done, ==, 3);
    g_assert_cmpuint (newest->n_failed, ==, 1);
    g_assert_cmpstr (newest->message, ==, "stopped");
    g_assert_cmpint (oldest->kind, ==, EAD_RUN_TRAINING);
    g_assert_cmpint (oldest->state, ==, EAD_RUN_DONE);
    g_assert_cmpuint (oldest->done, ==, 30);
    g_assert_cmpuint (oldest->total, ==, 100);
    g_assert_cmpfloat (oldest->eta_s, ==, 12.0);
    g_assert_cmpint (oldest->model_id, ==, model);
    g_assert_cmpint (oldest->finished_at, >, 0);
  }

  results = ead_project_list_results (project, model, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (results->len, ==, 2);
  g_assert_cmpfloat (((EadProjectResult *) results->pdata[1])->score, ==, 0.75);

  ead_project_add_report (project, model, "csv", "report.csv", 0.5, "{\"flagged\": 1}", &error);
  g_assert_no_error (error);
  reports = ead_project_list_reports (project, &error);
  g_assert_cmpuint (reports->len, ==, 1);
  g_assert_cmpstr (((EadProjectReport *) reports->pdata[0])->format, ==, "csv");
  g_assert_cmpfloat (((EadProjectReport *) reports->pdata[0])->threshold, ==, 0.5);
}

static void
test_half_floats (void)
{
  /* Every half (NaNs aside) survives the trip through float. */
  for (guint32 h = 0; h < 0x10000; h++)
    {
      float f = ead_half_to_float ((uint16_t) h);

      if (isnan (f))
        {
          g_assert_true ((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0);
          g_assert_true (isnan (ead_half_to_float (ead_half_from_float (f))));
          continue;
        }
      g_assert_cmpuint (ead_half_from_float (f), ==, h);
    }
  /* Rounding to nearest, ties to even. */
  g_assert_cmpuint (ead_half_from_float (1.0f + 1.0f / 2048), ==, 0x3c00);
  g_assert_cmpuint (ead_half_from_float (1.0f + 3.0f / 2048), ==, 0x3c02);
  g_assert_cmpuint (ead_half_from_float (1.0f + 1.0f / 2048 + 1.0f / 65536), ==, 0x3c01);
  g_assert_cmpuint (ead_half_from_float (65519.0f), ==, 0x7bff);
  g_assert_cmpuint (ead_half_from_float (65520.0f), ==, 0x7c00);
  g_assert_cmpuint (ead_half_from_float (-1e9f), ==, 0xfc00);
  g_assert_cmpuint (ead_half_from_float (ldexpf (1.0f, -25)), ==, 0x0000);
  g_assert_cmpuint (ead_half_from_float (ldexpf (1.5f, -25)), ==, 0x0001);
  g_assert_cmpuint (ead_half_from_float (ldexpf (3.0f, -25)), ==, 0x0002);
  g_assert_cmpuint (ead_half_from_float (-0.0f), ==, 0x8000);
  g_assert_true (isnan (ead_half_to_float (ead_half_from_float (NAN))));
}

static void
test_find_image (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadProject) project = create_project (NULL);
  g_autoptr (GArray) ids = add_images (project, 0, 3, EAD_LABEL_UNLABELLED, EAD_SPLIT_NONE);
  g_autoptr (EadProjectImage) by_relative = NULL;
  g_autoptr (EadProjectImage) by_absolute = NULL;
  g_autoptr (EadProjectImage) nothing = NULL;
  g_autofree char *absolute = g_build_filename (ead_project_get_dir (project),
                                                "img-000001.png", NULL);
  g_autoptr (GPtrArray) page = NULL;
  EadImageFilter filter;
  guint64 count;

  by_relative = ead_project_find_image (project, "img-000001.png", &error);
  g_assert_no_error (error);
  g_assert_nonnull (by_relative);
  g_assert_cmpstr (by_relative->path, ==, "img-000001.png");
  by_absolute = ead_project_find_image (project, absolute, &error);
  g_assert_cmpint (by_absolute->id, ==, by_relative->id);
  nothing = ead_project_find_image (project, "no-such.png", &error);
  g_assert_no_error (error);
  g_assert_null (nothing);

  ead_project_set_labels (project, (gint64 *) ids->data, 2, EAD_LABEL_DEFECT, &error);
  g_assert_no_error (error);
  ead_image_filter_init (&filter);
  filter.label = EAD_LABEL_DEFECT;
  ead_project_count_images (project, &filter, &count, &error);
  g_assert_cmpuint (count, ==, 2);
  page = ead_project_list_images (project, &filter, 1, 10, &error);
  g_assert_cmpuint (page->len, ==, 1);
  g_assert_cmpint (((EadProjectImage *) page->pdata[0])->id, ==, g_array_index (ids, gint64, 1));
  filter.label = -1;
  filter.split = EAD_SPLIT_NONE;
  ead_project_count_images (project, &filter, &count, &error);
  g_assert_cmpuint (count, ==, 3);
}

int
main (int argc, char **argv)
{
  int status;

  g_test_init (&argc, &argv, NULL);
  tmp_dir = g_dir_make_tmp ("test-store-XXXXXX", NULL);
  g_assert_nonnull (tmp_dir);

  g_test_add_func ("/store/create-open", test_create_open);
  g_test_add_func ("/store/not-a-project", test_not_a_project);
  g_test_add_func ("/store/newer-schema", test_newer_schema);
  g_test_add_func ("/store/migrations", test_migrations);
  g_test_add_func ("/store/constraints", test_constraints);
  g_test_add_func ("/store/audit-trail", test_audit_trail);
  g_test_add_func ("/store/concurrent-reader", test_concurrent_reader);
  g_test_add_func ("/store/disk-full", test_disk_full);
  g_test_add_func ("/store/read-only", test_read_only);
  g_test_add_func ("/store/threshold-counts", test_threshold_counts);
  g_test_add_func ("/store/threshold-max-good", test_threshold_max_good);
  g_test_add_func ("/store/runs", test_runs);
  g_test_add_func ("/store/half-floats", test_half_floats);
  g_test_add_func ("/store/find-image", test_find_image);
  status = g_test_run ();
  ead_test_remove_tree (tmp_dir);
  g_free (tmp_dir);
  return status;
}
