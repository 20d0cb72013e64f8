/* ead-schema.c: the project database's tables, version by version.
 *
 * Conventions: times are microseconds since the Unix epoch (g_get_real_time); paths are
 * relative to the folder of project.ead when the file lies inside it, absolute
 * otherwise; labels, splits and states are words a person reading the database with the
 * sqlite3 shell understands, checked by CHECK constraints; tables are STRICT so that a
 * value of the wrong type is an error, not a silent conversion.
 */
#include "ead-schema.h"

#include "ead-error.h"
#include "ead-project-private.h"

static const EadSchemaStep schema_steps[] = {
  { 1,
    /* A folder that was imported; an MVTec AD category folder is a set of its own. */
    "CREATE TABLE image_sets (\n"
    "  id INTEGER PRIMARY KEY,\n"
    "  path TEXT NOT NULL UNIQUE,\n"
    "  name TEXT NOT NULL,\n"
    "  layout TEXT NOT NULL CHECK (layout IN ('mvtec', 'folder')),\n"
    "  imported_at INTEGER NOT NULL\n"
    ") STRICT;\n"

    /* One row per distinct content (hash): the same picture at two paths is one image.
     * A file that disappeared keeps its row, flagged missing, so that its labels and
     * results survive until it is found again (by its hash, at any path). */
    "CREATE TABLE images (\n"
    "  id INTEGER PRIMARY KEY,\n"
    "  set_id INTEGER REFERENCES image_sets (id) ON DELETE SET NULL,\n"
    "  path TEXT NOT NULL,\n"
    "  hash BLOB NOT NULL UNIQUE CHECK (length (hash) = 16),\n"
    "  size INTEGER NOT NULL CHECK (size >= 0),\n"
    "  width INTEGER NOT NULL CHECK (width > 0),\n"
    "  height INTEGER NOT NULL CHECK (height > 0),\n"
    "  format TEXT NOT NULL CHECK (format IN ('png', 'jpeg', 'tiff', 'bmp')),\n"
    "  label TEXT NOT NULL DEFAULT 'unlabelled'\n"
    "    CHECK (label IN ('good', 'defect', 'unlabelled')),\n"
    "  split TEXT CHECK (split IN ('train', 'validation', 'test')),\n"
    "  defect TEXT,\n"
    "  missing INTEGER NOT NULL DEFAULT 0 CHECK (missing IN (0, 1)),\n"
    "  added_at INTEGER NOT NULL\n"
    ") STRICT;\n"
    /* Only files that are present must have distinct paths: a missing image keeps the
     * path it was last seen at, which another file may now occupy. */
    "CREATE UNIQUE INDEX images_present_path ON images (path) WHERE missing = 0;\n"
    "CREATE INDEX images_path ON images (path, missing);\n"
    "CREATE INDEX images_label ON images (label);\n"
    "CREATE INDEX images_split ON images (split);\n"
    "CREATE INDEX images_set ON images (set_id);\n"
    /* A model's validation and test numbers mean something only if no image moves
     * between the splits after it was trained. */
    "CREATE TRIGGER images_split_frozen BEFORE UPDATE OF split ON images\n"
    "  WHEN OLD.split IS NOT NULL AND NEW.split IS NOT OLD.split\n"
    "BEGIN\n"
    "  SELECT RAISE (ABORT, 'the split of an image is frozen once assigned');\n"
    "END;\n"

    "CREATE TABLE masks (\n"
    "  image_id INTEGER PRIMARY KEY REFERENCES images (id) ON DELETE CASCADE,\n"
    "  path TEXT NOT NULL,\n"
    "  hash BLOB NOT NULL CHECK (length (hash) = 16),\n"
    "  width INTEGER NOT NULL CHECK (width > 0),\n"
    "  height INTEGER NOT NULL CHECK (height > 0)\n"
    ") STRICT;\n"

    "CREATE TABLE models (\n"
    "  id INTEGER PRIMARY KEY,\n"
    "  name TEXT NOT NULL,\n"
    "  bundle_path TEXT NOT NULL UNIQUE,\n"
    "  arch TEXT NOT NULL,\n"
    "  input_height INTEGER NOT NULL CHECK (input_height > 0),\n"
    "  input_width INTEGER NOT NULL CHECK (input_width > 0),\n"
    "  teacher TEXT,\n"
    "  dataset_snapshot TEXT,\n"
    "  metrics TEXT CHECK (metrics IS NULL OR json_valid (metrics)),\n"
    "  created_at INTEGER NOT NULL\n"
    ") STRICT;\n"

    "CREATE TABLE training_runs (\n"
    "  id INTEGER PRIMARY KEY,\n"
    "  state TEXT NOT NULL DEFAULT 'queued'\n"
    "    CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),\n"
    "  params TEXT NOT NULL CHECK (json_valid (params)),\n"
    "  step INTEGER NOT NULL DEFAULT 0 CHECK (step >= 0),\n"
    "  steps INTEGER NOT NULL CHECK (steps > 0),\n"
    "  elapsed_s REAL NOT NULL DEFAULT 0,\n"
    "  eta_s REAL,\n"
    "  log TEXT NOT NULL DEFAULT '',\n"
    "  message TEXT,\n"
    "  model_id INTEGER REFERENCES models (id) ON DELETE SET NULL,\n"
    "  created_at INTEGER NOT NULL,\n"
    "  started_at INTEGER,\n"
    "  finished_at INTEGER\n"
    ") STRICT;\n"
    "CREATE INDEX training_runs_model ON training_runs (model_id);\n"

    "CREATE TABLE training_metrics (\n"
    "  run_id INTEGER NOT NULL REFERENCES training_runs (id) ON DELETE CASCADE,\n"
    "  step INTEGER NOT NULL CHECK (step >= 0),\n"
    "  loss_total REAL NOT NULL,\n"
    "  loss_hard REAL NOT NULL,\n"
    "  loss_penalty REAL NOT NULL,\n"
    "  loss_ae REAL NOT NULL,\n"
    "  loss_stae REAL NOT NULL,\n"
    "  elapsed_s REAL NOT NULL,\n"
    "  PRIMARY KEY (run_id, step)\n"
    ") STRICT, WITHOUT ROWID;\n"

    /* selection: the image filter the run was started with, as JSON, so that a resumed
     * run scores the same images. */
    "CREATE TABLE inference_runs (\n"
    "  id INTEGER PRIMARY KEY,\n"
    "  model_id INTEGER NOT NULL REFERENCES models (id) ON DELETE CASCADE,\n"
    "  state TEXT NOT NULL DEFAULT 'running'\n"
    "    CHECK (state IN ('running', 'done', 'failed', 'cancelled')),\n"
    "  selection TEXT NOT NULL CHECK (json_valid (selection)),\n"
    "  n_images INTEGER NOT NULL CHECK (n_images >= 0),\n"
    "  message TEXT,\n"
    "  created_at INTEGER NOT NULL,\n"
    "  finished_at INTEGER,\n"
    "  UNIQUE (id, model_id)\n"
    ") STRICT;\n"
    "CREATE INDEX inference_runs_model ON inference_runs (model_id);\n"

    /* The latest score of each image under each model.  model_id repeats the run's,
     * which the composite foreign key guarantees, so that the threshold queries read
     * one table.  Deleting an image, a run or a model deletes its results. */
    "CREATE TABLE results (\n"
    "  id INTEGER PRIMARY KEY,\n"
    "  model_id INTEGER NOT NULL,\n"
    "  run_id INTEGER NOT NULL,\n"
    "  image_id INTEGER NOT NULL REFERENCES images (id) ON DELETE CASCADE,\n"
    "  score REAL NOT NULL,\n"
    "  created_at INTEGER NOT NULL,\n"
    "  UNIQUE (model_id, image_id),\n"
    "  FOREIGN KEY (run_id, model_id) REFERENCES inference_runs (id, model_id)\n"
    "    ON DELETE CASCADE\n"
    ") STRICT;\n"
    "CREATE INDEX results_run ON results (run_id, model_id);\n"
    "CREATE INDEX results_image ON results (image_id);\n"
    /* Covers the score queries, in image order so that the join reads the images
     * table front to back instead of jumping around it (ten times faster at 100,000). */
    "CREATE INDEX results_model_image_score ON results (model_id, image_id, score);\n"

    /* The low-resolution normalised map of a result: width * height IEEE half floats,
     * little-endian, row-major.  Kept apart from the scores so that score queries never
     * page through kilobytes of map per row. */
    "CREATE TABLE result_maps (\n"
    "  result_id INTEGER PRIMARY KEY REFERENCES results (id) ON DELETE CASCADE,\n"
    "  width INTEGER NOT NULL CHECK (width > 0),\n"
    "  height INTEGER NOT NULL CHECK (height > 0),\n"
    "  data BLOB NOT NULL,\n"
    "  CHECK (length (data) = 2 * width * height)\n"
    ") STRICT;\n"

    "CREATE TABLE inference_failures (\n"
    "  run_id INTEGER NOT NULL REFERENCES inference_runs (id) ON DELETE CASCADE,\n"
    "  image_id INTEGER NOT NULL REFERENCES images (id) ON DELETE CASCADE,\n"
    "  reason TEXT NOT NULL,\n"
    "  PRIMARY KEY (run_id, image_id)\n"
    ") STRICT;\n"
    "CREATE INDEX inference_failures_image ON inference_failures (image_id);\n"

    /* value: the threshold a person chose; NULL means the suggestion applies.  review:
     * the lower edge of the review band below the threshold. */
    "CREATE TABLE thresholds (\n"
    "  model_id INTEGER PRIMARY KEY REFERENCES models (id) ON DELETE CASCADE,\n"
    "  suggested REAL,\n"
    "  suggested_method TEXT CHECK (suggested_method IN ('f1', 'max-good')),\n"
    "  value REAL,\n"
    "  review REAL,\n"
    "  updated_at INTEGER NOT NULL,\n"
    "  CHECK (review IS NULL OR review < coalesce (value, suggested))\n"
    ") STRICT;\n"

    /* The audit trail: one row per change of a threshold, never edited. */
    "CREATE TABLE threshold_events (\n"
    "  id INTEGER PRIMARY KEY,\n"
    "  model_id INTEGER NOT NULL REFERENCES models (id) ON DELETE CASCADE,\n"
    "  kind TEXT NOT NULL CHECK (kind IN ('suggested', 'set', 'accept', 'review')),\n"
    "  old_value REAL,\n"
    "  new_value REAL,\n"
    "  user TEXT NOT NULL,\n"
    "  reason TEXT,\n"
    "  at INTEGER NOT NULL\n"
    ") STRICT;\n"
    "CREATE INDEX threshold_events_model ON threshold_events (model_id, id);\n"
    "CREATE TRIGGER threshold_events_immutable BEFORE UPDATE ON threshold_events\n"
    "BEGIN\n"
    "  SELECT RAISE (ABORT, 'threshold events are an audit trail and cannot be changed');\n"
    "END;\n"

    "CREATE TABLE reports (\n"
    "  id INTEGER PRIMARY KEY,\n"
    "  model_id INTEGER REFERENCES models (id) ON DELETE SET NULL,\n"
    "  format TEXT NOT NULL CHECK (format IN ('pdf', 'csv')),\n"
    "  path TEXT NOT NULL,\n"
    "  threshold REAL,\n"
    "  summary TEXT CHECK (summary IS NULL OR json_valid (summary)),\n"
    "  created_at INTEGER NOT NULL\n"
    ") STRICT;\n"
    "CREATE INDEX reports_model ON reports (model_id);\n" },
};

const EadSchemaStep *
_ead_schema_steps (guint *n_steps)
{
  *n_steps = G_N_ELEMENTS (schema_steps);
  return schema_steps;
}

int
_ead_schema_version (void)
{
  return schema_steps[G_N_ELEMENTS (schema_steps) - 1].version;
}

static gboolean
exec_sql (sqlite3 *db, const char *path, const char *sql, const char *what, GError **error)
{
  int rc = sqlite3_exec (db, sql, NULL, NULL, NULL);

  if (rc != SQLITE_OK)
    {
      _ead_store_set_error (error, db, rc, path, what);
      return FALSE;
    }
  return TRUE;
}

static gboolean
read_user_version (sqlite3 *db, const char *path, int *version, GError **error)
{
  sqlite3_stmt *stmt = NULL;
  int rc = sqlite3_prepare_v2 (db, "PRAGMA user_version", -1, &stmt, NULL);

  if (rc == SQLITE_OK)
    rc = sqlite3_step (stmt);
  if (rc != SQLITE_ROW)
    {
      _ead_store_set_error (error, db, rc, path, "cannot read the schema version");
      sqlite3_finalize (stmt);
      return FALSE;
    }
  *version = sqlite3_column_int (stmt, 0);
  sqlite3_finalize (stmt);
  return TRUE;
}

static gboolean
check_foreign_keys (sqlite3 *db, const char *path, GError **error)
{
  sqlite3_stmt *stmt = NULL;
  int rc = sqlite3_prepare_v2 (db, "PRAGMA foreign_key_check", -1, &stmt, NULL);

  if (rc == SQLITE_OK)
    rc = sqlite3_step (stmt);
  if (rc == SQLITE_ROW)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: the schema upgrade left a row of table %s without its parent in %s",
                   path, sqlite3_column_text (stmt, 0), sqlite3_column_text (stmt, 2));
      sqlite3_finalize (stmt);
      return FALSE;
    }
  if (rc != SQLITE_DONE)
    {
      _ead_store_set_error (error, db, rc, path, "cannot check foreign keys");
      sqlite3_finalize (stmt);
      return FALSE;
    }
  sqlite3_finalize (stmt);
  return TRUE;
}

static gboolean
apply_steps (sqlite3 *db, const char *path, int target_version, GError **error)
{
  int version;

  if (!exec_sql (db, path, "BEGIN IMMEDIATE", "cannot start the schema upgrade", error))
    return FALSE;
  /* Read inside the transaction: another process may have upgraded the file since. */
  if (!read_user_version (db, path, &version, error))
    return FALSE;
  if (version > _ead_schema_version ())
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
                   "%s: the project was created by a newer version of EfficientAD "
                   "Workstation (schema version %d; this version reads up to %d)",
                   path, version, _ead_schema_version ());
      return FALSE;
    }
  for (guint i = 0; i < G_N_ELEMENTS (schema_steps); i++)
    {
      const EadSchemaStep *step = &schema_steps[i];
      g_autofree char *what = NULL;
      g_autofree char *set_version = NULL;

      if (step->version <= version || step->version > target_version)
        continue;
      what = g_strdup_printf ("cannot upgrade the schema to version %d", step->version);
      /* PRAGMA takes no bound parameters; the number is ours, not input. */
      set_version = g_strdup_printf ("PRAGMA user_version = %d", step->version);
      if (!exec_sql (db, path, step->sql, what, error)
          || !exec_sql (db, path, set_version, what, error))
        return FALSE;
    }
  if (!check_foreign_keys (db, path, error))
    return FALSE;
  return exec_sql (db, path, "COMMIT", "cannot commit the schema upgrade", error);
}

gboolean
_ead_schema_migrate (sqlite3 *db, const char *path, int target_version, GError **error)
{
  gboolean ok;

  g_return_val_if_fail (target_version <= _ead_schema_version (), FALSE);

  /* foreign_keys cannot change inside a transaction, hence outside apply_steps. */
  if (!exec_sql (db, path, "PRAGMA foreign_keys = OFF", "cannot prepare the schema upgrade",
                 error))
    return FALSE;
  ok = apply_steps (db, path, target_version, error);
  if (!ok && !sqlite3_get_autocommit (db))
    sqlite3_exec (db, "ROLLBACK", NULL, NULL, NULL);
  if (!exec_sql (db, path, "PRAGMA foreign_keys = ON", "cannot enable foreign keys",
                 ok ? error : NULL))
    return FALSE;
  return ok;
}
