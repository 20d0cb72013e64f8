/* ead-project.c: the project store: opening, images, models, runs, results, reports.
 *
 * Every statement is prepared once per connection with bound parameters and kept in a
 * cache keyed by its text; the few whose WHERE clause depends on a filter are composed
 * from fixed fragments, never from values.
 */
#include "ead-project.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#include <glib/gstdio.h>
#include <json-glib/json-glib.h>

#include "ead-bundle.h"
#include "ead-error.h"
#include "ead-project-private.h"
#include "ead-schema.h"

/* Names */

static const char *const label_names[] = { "unlabelled", "good", "defect" };
static const char *const split_names[] = { "none", "train", "validation", "test" };
static const char *const run_state_names[] = { "queued", "running", "done", "failed",
                                               "cancelled" };

/* The index of text in names, or -1 when it is none of them. */
static int
name_index (const char *const *names, guint n_names, const char *text)
{
  for (guint i = 0; i < n_names; i++)
    if (g_strcmp0 (text, names[i]) == 0)
      return (int) i;
  return -1;
}

const char *
ead_label_name (EadLabel label)
{
  g_return_val_if_fail (label < G_N_ELEMENTS (label_names), NULL);
  return label_names[label];
}

gboolean
ead_label_parse (const char *text, EadLabel *label, GError **error)
{
  int index = name_index (label_names, G_N_ELEMENTS (label_names), text);

  if (index >= 0)
    *label = (EadLabel) index;
  else
    g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                 "unknown label '%s' (expected good, defect or unlabelled)", text);
  return index >= 0;
}

const char *
ead_split_name (EadSplit split)
{
  g_return_val_if_fail (split < G_N_ELEMENTS (split_names), NULL);
  return split_names[split];
}

gboolean
ead_split_parse (const char *text, EadSplit *split, GError **error)
{
  int index = name_index (split_names, G_N_ELEMENTS (split_names), text);

  if (index >= 0)
    *split = (EadSplit) index;
  else
    g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                 "unknown split '%s' (expected train, validation, test or none)", text);
  return index >= 0;
}

const char *
ead_run_state_name (EadRunState state)
{
  g_return_val_if_fail (state < G_N_ELEMENTS (run_state_names), NULL);
  return run_state_names[state];
}

const char *
ead_run_kind_name (EadRunKind kind)
{
  return kind == EAD_RUN_TRAINING ? "training" : "inference";
}

static EadLabel
label_from_text (const unsigned char *text)
{
  int index = name_index (label_names, G_N_ELEMENTS (label_names), (const char *) text);

  return index >= 0 ? (EadLabel) index : EAD_LABEL_UNLABELLED;
}

/* A NULL column is no split. */
static EadSplit
split_from_text (const unsigned char *text)
{
  int index = name_index (split_names, G_N_ELEMENTS (split_names), (const char *) text);

  return index >= 0 ? (EadSplit) index : EAD_SPLIT_NONE;
}

static EadRunState
run_state_from_text (const unsigned char *text)
{
  int index = name_index (run_state_names, G_N_ELEMENTS (run_state_names),
                          (const char *) text);

  return index >= 0 ? (EadRunState) index : EAD_RUN_FAILED;
}

/* The column value a split is stored as: NULL for none. */
static const char *
split_column (EadSplit split)
{
  return split == EAD_SPLIT_NONE ? NULL : split_names[split];
}

/* Half floats */

static inline uint32_t
float_bits (float value)
{
  uint32_t bits;

  memcpy (&bits, &value, sizeof bits);
  return bits;
}

static inline float
bits_float (uint32_t bits)
{
  float value;

  memcpy (&value, &bits, sizeof value);
  return value;
}

/* After Fabian Giesen's float_to_half_fast3_rtne: the subnormal range is rounded by the
 * FPU itself (adding a magic number aligns the ten mantissa bits at the bottom), normal
 * numbers by adding the rounding bias to the bits. */
uint16_t
ead_half_from_float (float value)
{
  const uint32_t f32_infinity = 255u << 23;
  const uint32_t f16_overflow = (127u + 16) << 23;  /* 65536: infinity in half */
  const uint32_t denormal_magic = ((127u - 15) + (23 - 10) + 1) << 23;
  uint32_t bits = float_bits (value);
  uint32_t sign = bits & 0x80000000u;
  uint16_t half;

  bits ^= sign;
  if (bits >= f16_overflow)
    half = bits > f32_infinity ? 0x7e00 : 0x7c00;
  else if (bits < (113u << 23))
    half = (uint16_t) (float_bits (bits_float (bits) + bits_float (denormal_magic))
                       - denormal_magic);
  else
    {
      uint32_t odd = (bits >> 13) & 1;

      /* Rebias the exponent and round; a carry out of the mantissa moves to the next
       * exponent, up to infinity for values from 65520. */
      bits += ((uint32_t) (15 - 127) << 23) + 0xfff + odd;
      half = (uint16_t) (bits >> 13);
    }
  return (uint16_t) (half | sign >> 16);
}

float
ead_half_to_float (uint16_t half)
{
  uint32_t sign = (uint32_t) (half & 0x8000) << 16;
  uint32_t exponent = (half >> 10) & 0x1f;
  uint32_t mantissa = half & 0x3ff;

  if (exponent == 0x1f)
    return bits_float (sign | 0x7f800000u | mantissa << 13);
  if (exponent == 0)
    {
      float magnitude = ldexpf ((float) mantissa, -24);

      return sign != 0 ? -magnitude : magnitude;
    }
  return bits_float (sign | (exponent + 112) << 23 | mantissa << 13);
}

/* Errors and statements */

static const char *
explain_sqlite (int rc)
{
  switch (rc & 0xff)
    {
    case SQLITE_FULL:
      return "the disk is full";
    case SQLITE_READONLY:
      return "the project is read-only";
    case SQLITE_CANTOPEN:
      return "cannot open the project file (missing, or its folder is not writable)";
    case SQLITE_NOTADB:
      return "not an EfficientAD project: the file is not a SQLite database";
    case SQLITE_CORRUPT:
      return "the project file is corrupt";
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return "the project is busy: another program is writing to it";
    case SQLITE_IOERR:
      return "input/output error";
    case SQLITE_PERM:
    case SQLITE_AUTH:
      return "permission denied";
    case SQLITE_CONSTRAINT:
      return "a consistency rule of the project refused it";
    case SQLITE_NOMEM:
      return "out of memory";
    default:
      return "database error";
    }
}

static EadError
error_code_for (int rc)
{
  switch (rc & 0xff)
    {
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
      return EAD_ERROR_FORMAT;
    case SQLITE_CONSTRAINT:
    case SQLITE_MISMATCH:
    case SQLITE_RANGE:
      return EAD_ERROR_INVALID;
    case SQLITE_NOMEM:
    case SQLITE_TOOBIG:
      return EAD_ERROR_LIMIT;
    default:
      return EAD_ERROR_IO;
    }
}

void
_ead_store_set_error (GError **error, sqlite3 *db, int rc, const char *path, const char *what)
{
  /* sqlite3_errmsg describes the connection's last error, which may be an unrelated
   * success by now when rc came from elsewhere; sqlite3_errstr always matches rc. */
  const char *message = db != NULL && sqlite3_extended_errcode (db) == rc
                         ? sqlite3_errmsg (db) : sqlite3_errstr (rc);

  g_set_error (error, EAD_ERROR, error_code_for (rc), "%s: %s: %s (SQLite: %s)", path, what,
               explain_sqlite (rc), message);
}

sqlite3_stmt *
_ead_project_prepare (EadProject *project, const char *sql, GError **error)
{
  sqlite3_stmt *stmt = g_hash_table_lookup (project->statements, sql);
  int rc;

  if (stmt != NULL)
    {
      sqlite3_reset (stmt);
      sqlite3_clear_bindings (stmt);
      return stmt;
    }
  rc = sqlite3_prepare_v3 (project->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, NULL);
  if (rc != SQLITE_OK)
    {
      _ead_store_set_error (error, project->db, rc, project->path, "cannot query the project");
      return NULL;
    }
  g_hash_table_insert (project->statements, g_strdup (sql), stmt);
  return stmt;
}

gboolean
_ead_project_exec (EadProject *project, sqlite3_stmt *stmt, const char *what, GError **error)
{
  int rc = sqlite3_step (stmt);

  if (rc == SQLITE_ROW)
    {
      /* A statement with RETURNING: the change is complete only once it has run to
       * its end. */
      while ((rc = sqlite3_step (stmt)) == SQLITE_ROW)
        ;
    }
  sqlite3_reset (stmt);
  if (rc != SQLITE_DONE)
    {
      _ead_store_set_error (error, project->db, rc, project->path, what);
      return FALSE;
    }
  return TRUE;
}

static gboolean
exec_simple (EadProject *project, const char *sql, const char *what, GError **error)
{
  sqlite3_stmt *stmt = _ead_project_prepare (project, sql, error);

  return stmt != NULL && _ead_project_exec (project, stmt, what, error);
}

gboolean
_ead_project_begin (EadProject *project, GError **error)
{
  return exec_simple (project, "BEGIN IMMEDIATE", "cannot start writing", error);
}

gboolean
_ead_project_commit (EadProject *project, GError **error)
{
  if (!exec_simple (project, "COMMIT", "cannot save the change", error))
    {
      _ead_project_abort (project, error);
      return FALSE;
    }
  return TRUE;
}

static void
rollback (EadProject *project)
{
  /* SQLite rolls back by itself after some errors (a full disk among them). */
  if (!sqlite3_get_autocommit (project->db))
    sqlite3_exec (project->db, "ROLLBACK", NULL, NULL, NULL);
}

void
_ead_project_abort (EadProject *project, GError **error)
{
  rollback (project);
  if (error != NULL && *error != NULL && (*error)->domain == EAD_ERROR
      && (*error)->code == EAD_ERROR_IO)
    {
      char *message = g_strconcat ((*error)->message, "; nothing of this change was saved, "
                                   "what was saved before is intact", NULL);

      g_free ((*error)->message);
      (*error)->message = message;
    }
}

/* The usual end of a writing function: commit when ok, roll back otherwise. */
static gboolean
finish_transaction (EadProject *project, gboolean ok, GError **error)
{
  if (!ok)
    {
      _ead_project_abort (project, error);
      return FALSE;
    }
  return _ead_project_commit (project, error);
}

void
_ead_bind_text_or_null (sqlite3_stmt *stmt, int index, const char *text)
{
  if (text == NULL)
    sqlite3_bind_null (stmt, index);
  else
    sqlite3_bind_text (stmt, index, text, -1, SQLITE_TRANSIENT);
}

void
_ead_bind_double_or_null (sqlite3_stmt *stmt, int index, double value)
{
  if (isnan (value))
    sqlite3_bind_null (stmt, index);
  else
    sqlite3_bind_double (stmt, index, value);
}

char *
_ead_column_dup (sqlite3_stmt *stmt, int column)
{
  return g_strdup ((const char *) sqlite3_column_text (stmt, column));
}

double
_ead_column_double_or_nan (sqlite3_stmt *stmt, int column)
{
  if (sqlite3_column_type (stmt, column) == SQLITE_NULL)
    return NAN;
  return sqlite3_column_double (stmt, column);
}

/* After stepping stmt through its rows, the last step giving rc: resets it; FALSE, with
 * error, unless the rows came to their end. */
static gboolean
rows_done (EadProject *project, sqlite3_stmt *stmt, int rc, const char *what, GError **error)
{
  sqlite3_reset (stmt);
  if (rc != SQLITE_DONE)
    {
      _ead_store_set_error (error, project->db, rc, project->path, what);
      return FALSE;
    }
  return TRUE;
}

typedef gpointer (*RowReader) (sqlite3_stmt *stmt);

/* Every row of stmt, as read_row makes it, in an array that frees them with free_row. */
static GPtrArray *
read_rows (EadProject *project,
           sqlite3_stmt *stmt,
           RowReader read_row,
           GDestroyNotify free_row,
           const char *what,
           GError **error)
{
  g_autoptr (GPtrArray) rows = g_ptr_array_new_with_free_func (free_row);
  int rc;

  while ((rc = sqlite3_step (stmt)) == SQLITE_ROW)
    g_ptr_array_add (rows, read_row (stmt));
  if (!rows_done (project, stmt, rc, what, error))
    return NULL;
  return g_steal_pointer (&rows);
}

/* After the one step of stmt that looks up the noun with this id, which gave rc: resets
 * stmt; FALSE, with error, when there is no such row or the step failed. */
static gboolean
row_done (EadProject *project,
          sqlite3_stmt *stmt,
          int rc,
          const char *noun,
          gint64 id,
          const char *what,
          GError **error)
{
  sqlite3_reset (stmt);
  if (rc == SQLITE_DONE)
    g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID, "%s: no %s with id %" G_GINT64_FORMAT,
                 project->path, noun, id);
  else if (rc != SQLITE_ROW)
    _ead_store_set_error (error, project->db, rc, project->path, what);
  return rc == SQLITE_ROW;
}

/* Runs stmt, which yields one row, and reads the row's first column. */
static gboolean
read_int64 (EadProject *project,
            sqlite3_stmt *stmt,
            gint64 *value,
            const char *what,
            GError **error)
{
  int rc = sqlite3_step (stmt);

  if (rc == SQLITE_ROW)
    *value = sqlite3_column_int64 (stmt, 0);
  sqlite3_reset (stmt);
  if (rc != SQLITE_ROW)
    {
      _ead_store_set_error (error, project->db, rc, project->path, what);
      return FALSE;
    }
  return TRUE;
}

static gboolean
filter_is_valid (const EadImageFilter *filter)
{
  return filter == NULL
         || (filter->label >= -1 && filter->label < EAD_N_LABELS && filter->split >= -1
             && filter->split <= EAD_SPLIT_TEST && filter->missing >= -1
             && filter->missing <= 1 && filter->set_id >= 0);
}

void
ead_image_filter_init (EadImageFilter *filter)
{
  filter->label = -1;
  filter->split = -1;
  filter->missing = -1;
  filter->set_id = 0;
}

void
_ead_append_image_filter (GString *sql, const EadImageFilter *filter)
{
  if (filter == NULL)
    return;
  if (filter->label >= 0)
    g_string_append (sql, " AND i.label = :label");
  if (filter->split == EAD_SPLIT_NONE)
    g_string_append (sql, " AND i.split IS NULL");
  else if (filter->split > 0)
    g_string_append (sql, " AND i.split = :split");
  if (filter->missing >= 0)
    g_string_append (sql, " AND i.missing = :missing");
  if (filter->set_id > 0)
    g_string_append (sql, " AND i.set_id = :set_id");
}

void
_ead_bind_image_filter (sqlite3_stmt *stmt, const EadImageFilter *filter)
{
  if (filter == NULL)
    return;
  if (filter->label >= 0)
    sqlite3_bind_text (stmt, sqlite3_bind_parameter_index (stmt, ":label"),
                       label_names[filter->label], -1, SQLITE_STATIC);
  if (filter->split > 0)
    sqlite3_bind_text (stmt, sqlite3_bind_parameter_index (stmt, ":split"),
                       split_names[filter->split], -1, SQLITE_STATIC);
  if (filter->missing >= 0)
    sqlite3_bind_int (stmt, sqlite3_bind_parameter_index (stmt, ":missing"), filter->missing);
  if (filter->set_id > 0)
    sqlite3_bind_int64 (stmt, sqlite3_bind_parameter_index (stmt, ":set_id"), filter->set_id);
}

const char *
_ead_default_user (const char *user)
{
  return user != NULL && *user != '\0' ? user : g_get_user_name ();
}

/* Opening */

char *
ead_project_file_for (const char *path)
{
  g_return_val_if_fail (path != NULL, NULL);

  if (g_str_has_suffix (path, ".ead"))
    return g_strdup (path);
  return g_build_filename (path, EAD_PROJECT_FILE_NAME, NULL);
}

static void
finalize_statement (gpointer stmt)
{
  sqlite3_finalize (stmt);
}

static gboolean
query_int (sqlite3 *db, const char *path, const char *sql, int *value, GError **error)
{
  sqlite3_stmt *stmt = NULL;
  int rc = sqlite3_prepare_v2 (db, sql, -1, &stmt, NULL);

  if (rc == SQLITE_OK)
    rc = sqlite3_step (stmt);
  if (rc != SQLITE_ROW)
    {
      _ead_store_set_error (error, db, rc, path, "cannot open the project");
      sqlite3_finalize (stmt);
      return FALSE;
    }
  *value = sqlite3_column_int (stmt, 0);
  sqlite3_finalize (stmt);
  return TRUE;
}

static gboolean
exec_pragma (sqlite3 *db, const char *path, const char *sql, GError **error)
{
  int rc = sqlite3_exec (db, sql, NULL, NULL, NULL);

  if (rc != SQLITE_OK)
    {
      _ead_store_set_error (error, db, rc, path, "cannot open the project");
      return FALSE;
    }
  return TRUE;
}

/* Checks that an existing file is one of ours, of a version we can read. */
static gboolean
check_identity (sqlite3 *db, const char *path, int *version, GError **error)
{
  int application_id, n_objects;

  /* The first read of the file: a file that is not a database fails here. */
  if (!query_int (db, path, "PRAGMA application_id", &application_id, error)
      || !query_int (db, path, "PRAGMA user_version", version, error)
      || !query_int (db, path, "SELECT count(*) FROM sqlite_schema", &n_objects, error))
    return FALSE;
  if (application_id == 0 && *version == 0 && n_objects == 0)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: not an EfficientAD project: the file is empty", path);
      return FALSE;
    }
  if (application_id != EAD_PROJECT_APPLICATION_ID)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: not an EfficientAD project: a SQLite database of another program "
                   "(application id 0x%08x)", path, (unsigned) application_id);
      return FALSE;
    }
  if (*version > _ead_schema_version ())
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
                   "%s: the project was created by a newer version of EfficientAD "
                   "Workstation (schema version %d; this version reads up to %d)",
                   path, *version, _ead_schema_version ());
      return FALSE;
    }
  return TRUE;
}

static void
remove_database_files (const char *path)
{
  static const char *const suffixes[] = { "", "-wal", "-shm", "-journal" };

  for (guint i = 0; i < G_N_ELEMENTS (suffixes); i++)
    {
      g_autofree char *name = g_strconcat (path, suffixes[i], NULL);

      g_unlink (name);
    }
}

static EadProject *
project_connect (const char *path, gboolean create, GError **error)
{
  g_autofree char *absolute = g_canonicalize_filename (path, NULL);
  g_autoptr (EadProject) project = NULL;
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE;
  int version = 0;
  int rc;

  if (g_file_test (absolute, G_FILE_TEST_IS_DIR))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: is a folder, not a project file",
                   absolute);
      return NULL;
    }
  if (!create && !g_file_test (absolute, G_FILE_TEST_EXISTS))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: no such project file", absolute);
      return NULL;
    }

  project = g_new0 (EadProject, 1);
  project->path = g_steal_pointer (&absolute);
  project->dir = g_path_get_dirname (project->path);
  project->statements = g_hash_table_new_full (g_str_hash, g_str_equal, g_free,
                                               finalize_statement);
  if (create)
    flags |= SQLITE_OPEN_CREATE;
  rc = sqlite3_open_v2 (project->path, &project->db, flags, NULL);
  if (rc != SQLITE_OK)
    {
      _ead_store_set_error (error, project->db, rc, project->path, "cannot open the project");
      return NULL;
    }
  sqlite3_busy_timeout (project->db, EAD_PROJECT_BUSY_TIMEOUT_MS);

  if (!create && !check_identity (project->db, project->path, &version, error))
    return NULL;
  /* WAL lets readers go on while a writer commits; FULL makes each commit durable on
   * power loss, not only when the process dies. */
  if (!exec_pragma (project->db, project->path, "PRAGMA journal_mode = WAL", error)
      || !exec_pragma (project->db, project->path, "PRAGMA synchronous = FULL", error))
    return NULL;
  if (create)
    {
      g_autofree char *set_id = g_strdup_printf ("PRAGMA application_id = %d",
                                                 EAD_PROJECT_APPLICATION_ID);

      if (!exec_pragma (project->db, project->path, set_id, error))
        return NULL;
    }
  if (version < _ead_schema_version ())
    {
      if (!_ead_schema_migrate (project->db, project->path, _ead_schema_version (), error))
        return NULL;
    }
  else if (!exec_pragma (project->db, project->path, "PRAGMA foreign_keys = ON", error))
    return NULL;
  return g_steal_pointer (&project);
}

EadProject *
ead_project_create (const char *path, GError **error)
{
  g_autofree char *absolute = NULL;
  EadProject *project;

  g_return_val_if_fail (path != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  absolute = g_canonicalize_filename (path, NULL);
  if (g_file_test (absolute, G_FILE_TEST_EXISTS))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: a file of this name exists already",
                   absolute);
      return NULL;
    }
  project = project_connect (absolute, TRUE, error);
  /* A half-made file would be refused by the next attempt as existing already. */
  if (project == NULL)
    remove_database_files (absolute);
  return project;
}

EadProject *
ead_project_open (const char *path, GError **error)
{
  g_return_val_if_fail (path != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  return project_connect (path, FALSE, error);
}

void
ead_project_close (EadProject *project)
{
  if (project == NULL)
    return;
  /* Statements first: a connection with unfinalised statements does not close. */
  g_clear_pointer (&project->statements, g_hash_table_unref);
  sqlite3_close (project->db);
  g_free (project->path);
  g_free (project->dir);
  g_free (project);
}

const char *
ead_project_get_path (EadProject *project)
{
  return project->path;
}

const char *
ead_project_get_dir (EadProject *project)
{
  return project->dir;
}

char *
ead_project_store_path (EadProject *project, const char *path)
{
  g_autofree char *absolute = g_canonicalize_filename (path, NULL);
  size_t n = strlen (project->dir);

  if (g_str_equal (absolute, project->dir))
    return g_strdup (".");
  /* The folder "/" ends in a separator already. */
  if (g_str_equal (project->dir, "/"))
    return g_strdup (absolute + 1);
  if (strncmp (absolute, project->dir, n) == 0 && absolute[n] == G_DIR_SEPARATOR)
    return g_strdup (absolute + n + 1);
  return g_steal_pointer (&absolute);
}

char *
ead_project_resolve_path (EadProject *project, const char *stored_path)
{
  if (g_path_is_absolute (stored_path))
    return g_strdup (stored_path);
  if (g_str_equal (stored_path, "."))
    return g_strdup (project->dir);
  return g_build_filename (project->dir, stored_path, NULL);
}

/* Images */

#define IMAGE_COLUMNS \
  "i.id, i.set_id, i.path, i.hash, i.size, i.width, i.height, i.format, i.label, " \
  "i.split, i.defect, m.path, i.missing, i.added_at FROM images i " \
  "LEFT JOIN masks m ON m.image_id = i.id"

static EadProjectImage *
image_from_row (sqlite3_stmt *stmt)
{
  EadProjectImage *image = g_new0 (EadProjectImage, 1);
  const void *hash = sqlite3_column_blob (stmt, 3);

  image->id = sqlite3_column_int64 (stmt, 0);
  image->set_id = sqlite3_column_int64 (stmt, 1);
  image->path = _ead_column_dup (stmt, 2);
  if (hash != NULL && sqlite3_column_bytes (stmt, 3) == EAD_IMAGE_HASH_SIZE)
    memcpy (image->hash, hash, EAD_IMAGE_HASH_SIZE);
  image->size = (guint64) sqlite3_column_int64 (stmt, 4);
  image->width = sqlite3_column_int (stmt, 5);
  image->height = sqlite3_column_int (stmt, 6);
  image->format = _ead_column_dup (stmt, 7);
  image->label = label_from_text (sqlite3_column_text (stmt, 8));
  image->split = split_from_text (sqlite3_column_text (stmt, 9));
  image->defect = _ead_column_dup (stmt, 10);
  image->mask_path = _ead_column_dup (stmt, 11);
  image->missing = sqlite3_column_int (stmt, 12) != 0;
  image->added_at = sqlite3_column_int64 (stmt, 13);
  return image;
}

void
ead_project_image_free (EadProjectImage *image)
{
  if (image == NULL)
    return;
  g_free (image->path);
  g_free (image->format);
  g_free (image->defect);
  g_free (image->mask_path);
  g_free (image);
}

gboolean
_ead_project_insert_image (EadProject *project,
                           const EadNewImage *image,
                           gint64 *id,
                           GError **error)
{
  g_autofree char *stored = ead_project_store_path (project, image->path);
  g_autofree char *what = NULL;
  sqlite3_stmt *stmt = _ead_project_prepare (project,
    "INSERT INTO images (set_id, path, hash, size, width, height, format, label, split, "
    "defect, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", error);

  if (stmt == NULL)
    return FALSE;
  if (image->set_id > 0)
    sqlite3_bind_int64 (stmt, 1, image->set_id);
  sqlite3_bind_text (stmt, 2, stored, -1, SQLITE_STATIC);
  sqlite3_bind_blob (stmt, 3, image->hash, EAD_IMAGE_HASH_SIZE, SQLITE_STATIC);
  sqlite3_bind_int64 (stmt, 4, (gint64) image->size);
  sqlite3_bind_int (stmt, 5, image->width);
  sqlite3_bind_int (stmt, 6, image->height);
  _ead_bind_text_or_null (stmt, 7, image->format);
  sqlite3_bind_text (stmt, 8, label_names[image->label], -1, SQLITE_STATIC);
  _ead_bind_text_or_null (stmt, 9, split_column (image->split));
  _ead_bind_text_or_null (stmt, 10, image->defect);
  sqlite3_bind_int64 (stmt, 11, g_get_real_time ());
  what = g_strdup_printf ("cannot add the image %s", stored);
  if (!_ead_project_exec (project, stmt, what, error))
    return FALSE;
  if (id != NULL)
    *id = sqlite3_last_insert_rowid (project->db);
  return TRUE;
}

gboolean
ead_project_add_images (EadProject *project,
                        const EadNewImage *images,
                        guint n,
                        gint64 *ids,
                        GError **error)
{
  gboolean ok = TRUE;

  g_return_val_if_fail (project != NULL, FALSE);
  g_return_val_if_fail (images != NULL || n == 0, FALSE);

  for (guint i = 0; i < n; i++)
    g_return_val_if_fail (images[i].path != NULL && images[i].hash != NULL
                          && images[i].label < EAD_N_LABELS
                          && images[i].split <= EAD_SPLIT_TEST, FALSE);
  if (!_ead_project_begin (project, error))
    return FALSE;
  for (guint i = 0; i < n && ok; i++)
    ok = _ead_project_insert_image (project, &images[i], ids != NULL ? &ids[i] : NULL, error);
  return finish_transaction (project, ok, error);
}

GPtrArray *
ead_project_list_images (EadProject *project,
                         const EadImageFilter *filter,
                         guint64 offset,
                         guint limit,
                         GError **error)
{
  g_autoptr (GString) sql = g_string_new ("SELECT " IMAGE_COLUMNS " WHERE 1");
  sqlite3_stmt *stmt;

  g_return_val_if_fail (project != NULL, NULL);
  g_return_val_if_fail (filter_is_valid (filter), NULL);

  _ead_append_image_filter (sql, filter);
  g_string_append (sql, " ORDER BY i.id LIMIT :limit OFFSET :offset");
  stmt = _ead_project_prepare (project, sql->str, error);
  if (stmt == NULL)
    return NULL;
  _ead_bind_image_filter (stmt, filter);
  sqlite3_bind_int64 (stmt, sqlite3_bind_parameter_index (stmt, ":limit"),
                      limit == 0 ? -1 : (gint64) limit);
  sqlite3_bind_int64 (stmt, sqlite3_bind_parameter_index (stmt, ":offset"),
                      (gint64) MIN (offset, (guint64) G_MAXINT64));
  return read_rows (project, stmt, (RowReader) image_from_row,
                    (GDestroyNotify) ead_project_image_free, "cannot list the images", error);
}

gboolean
ead_project_count_images (EadProject *project,
                          const EadImageFilter *filter,
                          guint64 *count,
                          GError **error)
{
  g_autoptr (GString) sql = g_string_new ("SELECT count(*) FROM images i WHERE 1");
  sqlite3_stmt *stmt;
  gint64 n = 0;

  g_return_val_if_fail (project != NULL && count != NULL, FALSE);
  g_return_val_if_fail (filter_is_valid (filter), FALSE);

  _ead_append_image_filter (sql, filter);
  stmt = _ead_project_prepare (project, sql->str, error);
  if (stmt == NULL)
    return FALSE;
  _ead_bind_image_filter (stmt, filter);
  if (!read_int64 (project, stmt, &n, "cannot count the images", error))
    return FALSE;
  *count = (guint64) n;
  return TRUE;
}

/* Runs a statement expected to return at most one image row. */
static EadProjectImage *
fetch_image (EadProject *project, sqlite3_stmt *stmt, GError **error)
{
  EadProjectImage *image = NULL;
  int rc = sqlite3_step (stmt);

  if (rc == SQLITE_ROW)
    image = image_from_row (stmt);
  sqlite3_reset (stmt);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE)
    _ead_store_set_error (error, project->db, rc, project->path, "cannot read an image");
  return image;
}

EadProjectImage *
ead_project_get_image (EadProject *project, gint64 id, GError **error)
{
  g_autoptr (GError) local_error = NULL;
  sqlite3_stmt *stmt;
  EadProjectImage *image;

  g_return_val_if_fail (project != NULL, NULL);

  stmt = _ead_project_prepare (project, "SELECT " IMAGE_COLUMNS " WHERE i.id = ?", error);
  if (stmt == NULL)
    return NULL;
  sqlite3_bind_int64 (stmt, 1, id);
  image = fetch_image (project, stmt, &local_error);
  if (local_error != NULL)
    g_propagate_error (error, g_steal_pointer (&local_error));
  else if (image == NULL)
    g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID, "%s: no image with id %" G_GINT64_FORMAT,
                 project->path, id);
  return image;
}

static EadProjectImage *
find_stored (EadProject *project, const char *stored, GError **error)
{
  sqlite3_stmt *stmt = _ead_project_prepare (project,
    "SELECT " IMAGE_COLUMNS " WHERE i.path = ? ORDER BY i.missing, i.id LIMIT 1", error);

  if (stmt == NULL)
    return NULL;
  sqlite3_bind_text (stmt, 1, stored, -1, SQLITE_STATIC);
  return fetch_image (project, stmt, error);
}

EadProjectImage *
ead_project_find_image (EadProject *project, const char *path, GError **error)
{
  g_autoptr (GError) local_error = NULL;
  g_autofree char *stored = NULL;
  EadProjectImage *image;

  g_return_val_if_fail (project != NULL && path != NULL, NULL);

  /* As a file name first (absolute or from the current directory), then as the path
   * the store keeps, relative to the project. */
  stored = ead_project_store_path (project, path);
  image = find_stored (project, stored, &local_error);
  if (image == NULL && local_error == NULL && !g_path_is_absolute (path))
    {
      g_autofree char *in_project = g_build_filename (project->dir, path, NULL);

      g_free (stored);
      stored = ead_project_store_path (project, in_project);
      image = find_stored (project, stored, &local_error);
    }
  if (local_error != NULL)
    g_propagate_error (error, g_steal_pointer (&local_error));
  return image;
}

/* Runs an UPDATE or DELETE of one row by id, failing when no row has the id. */
static gboolean
change_one_row (EadProject *project,
                sqlite3_stmt *stmt,
                const char *noun,
                gint64 id,
                const char *what,
                GError **error)
{
  if (!_ead_project_exec (project, stmt, what, error))
    return FALSE;
  if (sqlite3_changes (project->db) == 0)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID, "%s: no %s with id %" G_GINT64_FORMAT,
                   project->path, noun, id);
      return FALSE;
    }
  return TRUE;
}

/* Runs sql, an UPDATE with the parameters (text, id), on the noun with this id. */
static gboolean
update_row_text (EadProject *project,
                 const char *sql,
                 const char *text,
                 const char *noun,
                 gint64 id,
                 const char *what,
                 GError **error)
{
  sqlite3_stmt *stmt = _ead_project_prepare (project, sql, error);

  if (stmt == NULL)
    return FALSE;
  _ead_bind_text_or_null (stmt, 1, text);
  sqlite3_bind_int64 (stmt, 2, id);
  return change_one_row (project, stmt, noun, id, what, error);
}

gboolean
ead_project_set_labels (EadProject *project,
                        const gint64 *ids,
                        guint n,
                        EadLabel label,
                        GError **error)
{
  gboolean ok = TRUE;

  g_return_val_if_fail (project != NULL && (ids != NULL || n == 0), FALSE);
  g_return_val_if_fail (label < EAD_N_LABELS, FALSE);

  if (!_ead_project_begin (project, error))
    return FALSE;
  for (guint i = 0; i < n && ok; i++)
    ok = update_row_text (project, "UPDATE images SET label = ? WHERE id = ?",
                          label_names[label], "image", ids[i], "cannot set a label", error);
  return finish_transaction (project, ok, error);
}

gboolean
ead_project_set_splits (EadProject *project,
                        const gint64 *ids,
                        guint n,
                        EadSplit split,
                        GError **error)
{
  gboolean ok = TRUE;

  g_return_val_if_fail (project != NULL && (ids != NULL || n == 0), FALSE);
  g_return_val_if_fail (split <= EAD_SPLIT_TEST, FALSE);

  if (!_ead_project_begin (project, error))
    return FALSE;
  for (guint i = 0; i < n && ok; i++)
    {
      g_autofree char *what = g_strdup_printf ("cannot put image %" G_GINT64_FORMAT
                                               " in the %s split", ids[i], split_names[split]);

      ok = update_row_text (project, "UPDATE images SET split = ? WHERE id = ?",
                            split_column (split), "image", ids[i], what, error);
    }
  return finish_transaction (project, ok, error);
}

gboolean
ead_project_delete_images (EadProject *project, const gint64 *ids, guint n, GError **error)
{
  gboolean ok = TRUE;

  g_return_val_if_fail (project != NULL && (ids != NULL || n == 0), FALSE);

  if (!_ead_project_begin (project, error))
    return FALSE;
  for (guint i = 0; i < n && ok; i++)
    {
      sqlite3_stmt *stmt = _ead_project_prepare (project, "DELETE FROM images WHERE id = ?",
                                                 error);

      ok = stmt != NULL;
      if (ok)
        {
          sqlite3_bind_int64 (stmt, 1, ids[i]);
          ok = change_one_row (project, stmt, "image", ids[i], "cannot delete an image", error);
        }
    }
  return finish_transaction (project, ok, error);
}

void
ead_project_image_set_free (EadProjectImageSet *set)
{
  if (set == NULL)
    return;
  g_free (set->path);
  g_free (set->name);
  g_free (set->layout);
  g_free (set);
}

static EadProjectImageSet *
image_set_from_row (sqlite3_stmt *stmt)
{
  EadProjectImageSet *set = g_new0 (EadProjectImageSet, 1);

  set->id = sqlite3_column_int64 (stmt, 0);
  set->path = _ead_column_dup (stmt, 1);
  set->name = _ead_column_dup (stmt, 2);
  set->layout = _ead_column_dup (stmt, 3);
  set->imported_at = sqlite3_column_int64 (stmt, 4);
  set->n_images = (guint64) sqlite3_column_int64 (stmt, 5);
  return set;
}

GPtrArray *
ead_project_list_image_sets (EadProject *project, GError **error)
{
  sqlite3_stmt *stmt;

  g_return_val_if_fail (project != NULL, NULL);

  stmt = _ead_project_prepare (project,
    "SELECT s.id, s.path, s.name, s.layout, s.imported_at, "
    "(SELECT count(*) FROM images i WHERE i.set_id = s.id) FROM image_sets s ORDER BY s.id",
    error);
  if (stmt == NULL)
    return NULL;
  return read_rows (project, stmt, (RowReader) image_set_from_row,
                    (GDestroyNotify) ead_project_image_set_free, "cannot list the image sets",
                    error);
}

/* Models */

#define MODEL_COLUMNS \
  "id, name, bundle_path, arch, input_height, input_width, teacher, dataset_snapshot, " \
  "metrics, created_at FROM models"

static EadProjectModel *
model_from_row (sqlite3_stmt *stmt)
{
  EadProjectModel *model = g_new0 (EadProjectModel, 1);

  model->id = sqlite3_column_int64 (stmt, 0);
  model->name = _ead_column_dup (stmt, 1);
  model->bundle_path = _ead_column_dup (stmt, 2);
  model->arch = _ead_column_dup (stmt, 3);
  model->input_height = sqlite3_column_int (stmt, 4);
  model->input_width = sqlite3_column_int (stmt, 5);
  model->teacher = _ead_column_dup (stmt, 6);
  model->dataset_snapshot = _ead_column_dup (stmt, 7);
  model->metrics = _ead_column_dup (stmt, 8);
  model->created_at = sqlite3_column_int64 (stmt, 9);
  return model;
}

void
ead_project_model_free (EadProjectModel *model)
{
  if (model == NULL)
    return;
  g_free (model->name);
  g_free (model->bundle_path);
  g_free (model->arch);
  g_free (model->teacher);
  g_free (model->dataset_snapshot);
  g_free (model->metrics);
  g_free (model);
}

static gboolean
metadata_int (EadBundleInfo *info, const char *path, const char *key, int *value, GError **error)
{
  const char *text = g_hash_table_lookup (info->metadata, key);
  guint64 number;

  if (text == NULL || !g_ascii_string_to_unsigned (text, 10, 1, G_MAXINT, &number, NULL))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: the bundle's metadata has no valid %s (found '%s')", path, key,
                   text != NULL ? text : "nothing");
      return FALSE;
    }
  *value = (int) number;
  return TRUE;
}

static char *
default_model_name (const char *bundle_path)
{
  g_autofree char *base = g_path_get_basename (bundle_path);
  const char *suffixes[] = { ".ead.safetensors", ".safetensors" };

  for (guint i = 0; i < G_N_ELEMENTS (suffixes); i++)
    if (g_str_has_suffix (base, suffixes[i]) && strlen (base) > strlen (suffixes[i]))
      return g_strndup (base, strlen (base) - strlen (suffixes[i]));
  return g_steal_pointer (&base);
}

gint64
ead_project_add_model (EadProject *project,
                       const char *bundle_path,
                       const char *name,
                       GError **error)
{
  g_autoptr (EadBundleInfo) info = NULL;
  g_autofree char *stored = NULL;
  g_autofree char *default_name = NULL;
  const char *arch;
  sqlite3_stmt *stmt;
  int input_height, input_width, rc;
  gint64 id = 0;
  gboolean ok;

  g_return_val_if_fail (project != NULL && bundle_path != NULL, 0);

  info = ead_bundle_read_info (bundle_path, error);
  if (info == NULL)
    return 0;
  arch = g_hash_table_lookup (info->metadata, "ead.arch");
  if (arch == NULL)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: the bundle's metadata has no ead.arch", bundle_path);
      return 0;
    }
  if (!metadata_int (info, bundle_path, "ead.input.height", &input_height, error)
      || !metadata_int (info, bundle_path, "ead.input.width", &input_width, error))
    return 0;
  stored = ead_project_store_path (project, bundle_path);
  if (name == NULL)
    name = default_name = default_model_name (bundle_path);

  if (!_ead_project_begin (project, error))
    return 0;
  stmt = _ead_project_prepare (project, "SELECT id FROM models WHERE bundle_path = ?", error);
  ok = stmt != NULL;
  if (ok)
    {
      sqlite3_bind_text (stmt, 1, stored, -1, SQLITE_STATIC);
      rc = sqlite3_step (stmt);
      if (rc == SQLITE_ROW)
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                       "%s: the bundle %s is registered already, as model %" G_GINT64_FORMAT,
                       project->path, stored, (gint64) sqlite3_column_int64 (stmt, 0));
          ok = FALSE;
        }
      else if (rc != SQLITE_DONE)
        {
          _ead_store_set_error (error, project->db, rc, project->path, "cannot read the models");
          ok = FALSE;
        }
      sqlite3_reset (stmt);
    }
  if (ok)
    {
      stmt = _ead_project_prepare (project,
        "INSERT INTO models (name, bundle_path, arch, input_height, input_width, teacher, "
        "dataset_snapshot, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", error);
      ok = stmt != NULL;
    }
  if (ok)
    {
      sqlite3_bind_text (stmt, 1, name, -1, SQLITE_STATIC);
      sqlite3_bind_text (stmt, 2, stored, -1, SQLITE_STATIC);
      sqlite3_bind_text (stmt, 3, arch, -1, SQLITE_STATIC);
      sqlite3_bind_int (stmt, 4, input_height);
      sqlite3_bind_int (stmt, 5, input_width);
      _ead_bind_text_or_null (stmt, 6, g_hash_table_lookup (info->metadata,
                                                            "ead.teacher.source"));
      _ead_bind_text_or_null (stmt, 7, g_hash_table_lookup (info->metadata,
                                                            EAD_PROJECT_DATASET_SNAPSHOT_KEY));
      sqlite3_bind_int64 (stmt, 8, g_get_real_time ());
      ok = _ead_project_exec (project, stmt, "cannot add the model", error);
      id = sqlite3_last_insert_rowid (project->db);
    }
  return finish_transaction (project, ok, error) ? id : 0;
}

GPtrArray *
ead_project_list_models (EadProject *project, GError **error)
{
  sqlite3_stmt *stmt;

  g_return_val_if_fail (project != NULL, NULL);

  stmt = _ead_project_prepare (project, "SELECT " MODEL_COLUMNS " ORDER BY id", error);
  if (stmt == NULL)
    return NULL;
  return read_rows (project, stmt, (RowReader) model_from_row,
                    (GDestroyNotify) ead_project_model_free, "cannot list the models", error);
}

EadProjectModel *
ead_project_get_model (EadProject *project, gint64 id, GError **error)
{
  EadProjectModel *model = NULL;
  sqlite3_stmt *stmt;
  int rc;

  g_return_val_if_fail (project != NULL, NULL);

  stmt = _ead_project_prepare (project, "SELECT " MODEL_COLUMNS " WHERE id = ?", error);
  if (stmt == NULL)
    return NULL;
  sqlite3_bind_int64 (stmt, 1, id);
  rc = sqlite3_step (stmt);
  if (rc == SQLITE_ROW)
    model = model_from_row (stmt);
  row_done (project, stmt, rc, "model", id, "cannot read a model", error);
  return model;
}

gint64
ead_project_latest_model (EadProject *project, GError **error)
{
  sqlite3_stmt *stmt;
  gint64 id = 0;

  g_return_val_if_fail (project != NULL, 0);

  stmt = _ead_project_prepare (project, "SELECT max(id) FROM models", error);
  if (stmt == NULL)
    return 0;
  if (read_int64 (project, stmt, &id, "cannot read the models", error) && id == 0)
    g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID, "%s: the project has no model yet",
                 project->path);
  return id;
}

gboolean
ead_project_set_model_metrics (EadProject *project,
                               gint64 model_id,
                               const char *metrics_json,
                               GError **error)
{
  gboolean ok;

  g_return_val_if_fail (project != NULL && metrics_json != NULL, FALSE);

  if (!_ead_project_begin (project, error))
    return FALSE;
  ok = update_row_text (project, "UPDATE models SET metrics = ? WHERE id = ?", metrics_json,
                        "model", model_id, "cannot store the metrics (they must be JSON)",
                        error);
  return finish_transaction (project, ok, error);
}

/* Training runs */

gint64
ead_project_training_run_new (EadProject *project,
                              const char *params_json,
                              guint64 steps,
                              GError **error)
{
  sqlite3_stmt *stmt;
  gint64 id = 0;
  gboolean ok;

  g_return_val_if_fail (project != NULL && steps > 0, 0);

  if (!_ead_project_begin (project, error))
    return 0;
  stmt = _ead_project_prepare (project,
    "INSERT INTO training_runs (params, steps, created_at) VALUES (?, ?, ?)", error);
  ok = stmt != NULL;
  if (ok)
    {
      sqlite3_bind_text (stmt, 1, params_json != NULL ? params_json : "{}", -1, SQLITE_STATIC);
      sqlite3_bind_int64 (stmt, 2, (gint64) MIN (steps, (guint64) G_MAXINT64));
      sqlite3_bind_int64 (stmt, 3, g_get_real_time ());
      ok = _ead_project_exec (project, stmt,
                              "cannot add the training run (parameters must be JSON)", error);
      id = sqlite3_last_insert_rowid (project->db);
    }
  return finish_transaction (project, ok, error) ? id : 0;
}

/* Reads the state of a training or an inference run. */
static gboolean
read_run_state (EadProject *project,
                EadRunKind kind,
                gint64 run_id,
                EadRunState *state,
                GError **error)
{
  sqlite3_stmt *stmt = _ead_project_prepare (project,
    kind == EAD_RUN_TRAINING ? "SELECT state FROM training_runs WHERE id = ?"
                             : "SELECT state FROM inference_runs WHERE id = ?", error);
  int rc;

  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_int64 (stmt, 1, run_id);
  rc = sqlite3_step (stmt);
  if (rc == SQLITE_ROW)
    *state = run_state_from_text (sqlite3_column_text (stmt, 0));
  return row_done (project, stmt, rc,
                   kind == EAD_RUN_TRAINING ? "training run" : "inference run", run_id,
                   "cannot read a run", error);
}

static gboolean
run_is_finished (EadRunState state)
{
  return state == EAD_RUN_DONE || state == EAD_RUN_FAILED || state == EAD_RUN_CANCELLED;
}

/* Checks that the run may go from the state it is in to the state to. */
static gboolean
check_transition (EadProject *project,
                  EadRunKind kind,
                  gint64 run_id,
                  EadRunState to,
                  GError **error)
{
  EadRunState from;

  if (!read_run_state (project, kind, run_id, &from, error))
    return FALSE;
  if (run_is_finished (from) || to == EAD_RUN_QUEUED
      || (to == EAD_RUN_RUNNING && from != EAD_RUN_QUEUED))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "%s: the %s run %" G_GINT64_FORMAT " is %s and cannot become %s",
                   project->path, ead_run_kind_name (kind), run_id, run_state_names[from],
                   run_state_names[to]);
      return FALSE;
    }
  return TRUE;
}

gboolean
ead_project_training_run_set_state (EadProject *project,
                                    gint64 run_id,
                                    EadRunState state,
                                    const char *message,
                                    GError **error)
{
  sqlite3_stmt *stmt;
  gboolean ok;
  gint64 now = g_get_real_time ();

  g_return_val_if_fail (project != NULL && state <= EAD_RUN_CANCELLED, FALSE);

  if (!_ead_project_begin (project, error))
    return FALSE;
  ok = check_transition (project, EAD_RUN_TRAINING, run_id, state, error);
  if (ok)
    {
      stmt = _ead_project_prepare (project,
        "UPDATE training_runs SET state = ?, message = coalesce (?, message), "
        "started_at = coalesce (started_at, ?), finished_at = ? WHERE id = ?", error);
      ok = stmt != NULL;
    }
  if (ok)
    {
      sqlite3_bind_text (stmt, 1, run_state_names[state], -1, SQLITE_STATIC);
      _ead_bind_text_or_null (stmt, 2, message);
      sqlite3_bind_int64 (stmt, 3, now);
      if (run_is_finished (state))
        sqlite3_bind_int64 (stmt, 4, now);
      sqlite3_bind_int64 (stmt, 5, run_id);
      ok = _ead_project_exec (project, stmt, "cannot change the run's state", error);
    }
  return finish_transaction (project, ok, error);
}

gboolean
ead_project_training_run_add_progress (EadProject *project,
                                       gint64 run_id,
                                       const EadTrainingMetric *metrics,
                                       guint n,
                                       double eta_s,
                                       GError **error)
{
  sqlite3_stmt *stmt;
  gboolean ok = TRUE;

  g_return_val_if_fail (project != NULL && metrics != NULL && n > 0, FALSE);

  if (!_ead_project_begin (project, error))
    return FALSE;
  for (guint i = 0; i < n && ok; i++)
    {
      stmt = _ead_project_prepare (project,
        "INSERT OR REPLACE INTO training_metrics (run_id, step, loss_total, loss_hard, "
        "loss_penalty, loss_ae, loss_stae, elapsed_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", error);
      ok = stmt != NULL;
      if (ok)
        {
          sqlite3_bind_int64 (stmt, 1, run_id);
          sqlite3_bind_int64 (stmt, 2, (gint64) MIN (metrics[i].step, (guint64) G_MAXINT64));
          /* A diverged loss is NaN, which SQLite stores as NULL and the NOT NULL
           * constraint refuses with a message that says so. */
          sqlite3_bind_double (stmt, 3, metrics[i].loss_total);
          sqlite3_bind_double (stmt, 4, metrics[i].loss_hard);
          sqlite3_bind_double (stmt, 5, metrics[i].loss_penalty);
          sqlite3_bind_double (stmt, 6, metrics[i].loss_ae);
          sqlite3_bind_double (stmt, 7, metrics[i].loss_stae);
          sqlite3_bind_double (stmt, 8, metrics[i].elapsed_s);
          ok = _ead_project_exec (project, stmt, "cannot store the training metrics", error);
        }
    }
  if (ok)
    {
      stmt = _ead_project_prepare (project,
        "UPDATE training_runs SET step = ?, elapsed_s = ?, eta_s = ? WHERE id = ?", error);
      ok = stmt != NULL;
    }
  if (ok)
    {
      sqlite3_bind_int64 (stmt, 1, (gint64) MIN (metrics[n - 1].step, (guint64) G_MAXINT64));
      sqlite3_bind_double (stmt, 2, metrics[n - 1].elapsed_s);
      if (eta_s >= 0)
        sqlite3_bind_double (stmt, 3, eta_s);
      sqlite3_bind_int64 (stmt, 4, run_id);
      ok = change_one_row (project, stmt, "training run", run_id,
                           "cannot store the training progress", error);
    }
  return finish_transaction (project, ok, error);
}

gboolean
ead_project_training_run_append_log (EadProject *project,
                                     gint64 run_id,
                                     const char *text,
                                     GError **error)
{
  gboolean ok;

  g_return_val_if_fail (project != NULL && text != NULL, FALSE);

  if (!_ead_project_begin (project, error))
    return FALSE;
  ok = update_row_text (project, "UPDATE training_runs SET log = log || ? WHERE id = ?", text,
                        "training run", run_id, "cannot append to the log", error);
  return finish_transaction (project, ok, error);
}

gboolean
ead_project_training_run_set_model (EadProject *project,
                                    gint64 run_id,
                                    gint64 model_id,
                                    GError **error)
{
  sqlite3_stmt *stmt;
  gboolean ok;

  g_return_val_if_fail (project != NULL, FALSE);

  if (!_ead_project_begin (project, error))
    return FALSE;
  stmt = _ead_project_prepare (project, "UPDATE training_runs SET model_id = ? WHERE id = ?",
                               error);
  ok = stmt != NULL;
  if (ok)
    {
      sqlite3_bind_int64 (stmt, 1, model_id);
      sqlite3_bind_int64 (stmt, 2, run_id);
      ok = change_one_row (project, stmt, "training run", run_id,
                           "cannot link the run to its model", error);
    }
  return finish_transaction (project, ok, error);
}

GArray *
ead_project_training_run_metrics (EadProject *project, gint64 run_id, GError **error)
{
  g_autoptr (GArray) metrics = g_array_new (FALSE, FALSE, sizeof (EadTrainingMetric));
  sqlite3_stmt *stmt;
  int rc;

  g_return_val_if_fail (project != NULL, NULL);

  stmt = _ead_project_prepare (project,
    "SELECT step, loss_total, loss_hard, loss_penalty, loss_ae, loss_stae, elapsed_s "
    "FROM training_metrics WHERE run_id = ? ORDER BY step", error);
  if (stmt == NULL)
    return NULL;
  sqlite3_bind_int64 (stmt, 1, run_id);
  while ((rc = sqlite3_step (stmt)) == SQLITE_ROW)
    {
      EadTrainingMetric metric = {
        .step = (guint64) sqlite3_column_int64 (stmt, 0),
        .loss_total = sqlite3_column_double (stmt, 1),
        .loss_hard = sqlite3_column_double (stmt, 2),
        .loss_penalty = sqlite3_column_double (stmt, 3),
        .loss_ae = sqlite3_column_double (stmt, 4),
        .loss_stae = sqlite3_column_double (stmt, 5),
        .elapsed_s = sqlite3_column_double (stmt, 6),
      };

      g_array_append_val (metrics, metric);
    }
  if (!rows_done (project, stmt, rc, "cannot read the training metrics", error))
    return NULL;
  return g_steal_pointer (&metrics);
}

char *
ead_project_training_run_log (EadProject *project, gint64 run_id, GError **error)
{
  sqlite3_stmt *stmt;
  char *log = NULL;
  int rc;

  g_return_val_if_fail (project != NULL, NULL);

  stmt = _ead_project_prepare (project, "SELECT log FROM training_runs WHERE id = ?", error);
  if (stmt == NULL)
    return NULL;
  sqlite3_bind_int64 (stmt, 1, run_id);
  rc = sqlite3_step (stmt);
  if (rc == SQLITE_ROW)
    log = _ead_column_dup (stmt, 0);
  row_done (project, stmt, rc, "training run", run_id, "cannot read the log", error);
  return log;
}

/* Inference runs and results */

static char *
filter_to_json (const EadImageFilter *filter)
{
  g_autoptr (JsonBuilder) builder = json_builder_new ();
  g_autoptr (JsonGenerator) generator = json_generator_new ();
  g_autoptr (JsonNode) root = NULL;

  json_builder_begin_object (builder);
  if (filter->label >= 0)
    {
      json_builder_set_member_name (builder, "label");
      json_builder_add_string_value (builder, label_names[filter->label]);
    }
  if (filter->split >= 0)
    {
      json_builder_set_member_name (builder, "split");
      json_builder_add_string_value (builder, split_names[filter->split]);
    }
  if (filter->set_id > 0)
    {
      json_builder_set_member_name (builder, "set_id");
      json_builder_add_int_value (builder, filter->set_id);
    }
  json_builder_end_object (builder);
  root = json_builder_get_root (builder);
  json_generator_set_root (generator, root);
  return json_generator_to_data (generator, NULL);
}

gint64
ead_project_inference_run_new (EadProject *project,
                               gint64 model_id,
                               const EadImageFilter *filter,
                               GError **error)
{
  g_autoptr (EadProjectModel) model = NULL;
  g_autofree char *selection = NULL;
  EadImageFilter present;
  sqlite3_stmt *stmt;
  guint64 n_images = 0;
  gint64 id = 0;
  gboolean ok;

  g_return_val_if_fail (project != NULL && filter_is_valid (filter), 0);

  if (filter != NULL)
    present = *filter;
  else
    ead_image_filter_init (&present);
  present.missing = 0;
  selection = filter_to_json (&present);

  if (!_ead_project_begin (project, error))
    return 0;
  model = ead_project_get_model (project, model_id, error);
  ok = model != NULL && ead_project_count_images (project, &present, &n_images, error);
  if (ok)
    {
      stmt = _ead_project_prepare (project,
        "INSERT INTO inference_runs (model_id, selection, n_images, created_at) "
        "VALUES (?, ?, ?, ?)", error);
      ok = stmt != NULL;
    }
  if (ok)
    {
      sqlite3_bind_int64 (stmt, 1, model_id);
      sqlite3_bind_text (stmt, 2, selection, -1, SQLITE_STATIC);
      sqlite3_bind_int64 (stmt, 3, (gint64) n_images);
      sqlite3_bind_int64 (stmt, 4, g_get_real_time ());
      ok = _ead_project_exec (project, stmt, "cannot add the inference run", error);
      id = sqlite3_last_insert_rowid (project->db);
    }
  return finish_transaction (project, ok, error) ? id : 0;
}

GArray *
ead_project_list_unscored (EadProject *project,
                           gint64 model_id,
                           const EadImageFilter *filter,
                           gint64 run_id,
                           GError **error)
{
  g_autoptr (GString) sql = g_string_new (
    "SELECT i.id FROM images i WHERE i.missing = 0 AND NOT EXISTS "
    "(SELECT 1 FROM results r WHERE r.model_id = :model AND r.image_id = i.id) "
    "AND NOT EXISTS (SELECT 1 FROM inference_failures f "
    "WHERE f.run_id = :run AND f.image_id = i.id)");
  g_autoptr (GArray) ids = g_array_new (FALSE, FALSE, sizeof (gint64));
  sqlite3_stmt *stmt;
  int rc;

  g_return_val_if_fail (project != NULL && filter_is_valid (filter), NULL);

  _ead_append_image_filter (sql, filter);
  g_string_append (sql, " ORDER BY i.id");
  stmt = _ead_project_prepare (project, sql->str, error);
  if (stmt == NULL)
    return NULL;
  _ead_bind_image_filter (stmt, filter);
  sqlite3_bind_int64 (stmt, sqlite3_bind_parameter_index (stmt, ":model"), model_id);
  sqlite3_bind_int64 (stmt, sqlite3_bind_parameter_index (stmt, ":run"), run_id);
  while ((rc = sqlite3_step (stmt)) == SQLITE_ROW)
    {
      gint64 id = sqlite3_column_int64 (stmt, 0);

      g_array_append_val (ids, id);
    }
  if (!rows_done (project, stmt, rc, "cannot list the unscored images", error))
    return NULL;
  return g_steal_pointer (&ids);
}

static gboolean
add_failure (EadProject *project, gint64 run_id, const EadResultInput *result, GError **error)
{
  sqlite3_stmt *stmt = _ead_project_prepare (project,
    "INSERT OR REPLACE INTO inference_failures (run_id, image_id, reason) VALUES (?, ?, ?)",
    error);

  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_int64 (stmt, 1, run_id);
  sqlite3_bind_int64 (stmt, 2, result->image_id);
  sqlite3_bind_text (stmt, 3, result->failure, -1, SQLITE_STATIC);
  return _ead_project_exec (project, stmt, "cannot record a failed image", error);
}

static gboolean
add_result (EadProject *project,
            gint64 run_id,
            gint64 model_id,
            const EadResultInput *result,
            uint16_t *half,
            GError **error)
{
  size_t n = (size_t) result->map_width * (size_t) result->map_height;
  g_autofree char *what = g_strdup_printf ("cannot store the result of image %" G_GINT64_FORMAT,
                                           result->image_id);
  sqlite3_stmt *stmt;
  gint64 result_id = 0;
  int rc;

  stmt = _ead_project_prepare (project,
    "INSERT INTO results (model_id, run_id, image_id, score, created_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (model_id, image_id) DO UPDATE SET "
    "run_id = excluded.run_id, score = excluded.score, created_at = excluded.created_at "
    "RETURNING id", error);
  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_int64 (stmt, 1, model_id);
  sqlite3_bind_int64 (stmt, 2, run_id);
  sqlite3_bind_int64 (stmt, 3, result->image_id);
  sqlite3_bind_double (stmt, 4, result->score);
  sqlite3_bind_int64 (stmt, 5, g_get_real_time ());
  rc = sqlite3_step (stmt);
  if (rc == SQLITE_ROW)
    {
      result_id = sqlite3_column_int64 (stmt, 0);
      rc = sqlite3_step (stmt);
    }
  sqlite3_reset (stmt);
  if (rc != SQLITE_DONE)
    {
      _ead_store_set_error (error, project->db, rc, project->path, what);
      return FALSE;
    }

  for (size_t i = 0; i < n; i++)
    half[i] = GUINT16_TO_LE (ead_half_from_float (result->map[i]));
  stmt = _ead_project_prepare (project,
    "INSERT OR REPLACE INTO result_maps (result_id, width, height, data) VALUES (?, ?, ?, ?)",
    error);
  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_int64 (stmt, 1, result_id);
  sqlite3_bind_int (stmt, 2, result->map_width);
  sqlite3_bind_int (stmt, 3, result->map_height);
  sqlite3_bind_blob64 (stmt, 4, half, n * sizeof (uint16_t), SQLITE_STATIC);
  if (!_ead_project_exec (project, stmt, what, error))
    return FALSE;

  /* A retried image that now succeeded is no longer a failure of this run. */
  stmt = _ead_project_prepare (project,
    "DELETE FROM inference_failures WHERE run_id = ? AND image_id = ?", error);
  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_int64 (stmt, 1, run_id);
  sqlite3_bind_int64 (stmt, 2, result->image_id);
  return _ead_project_exec (project, stmt, what, error);
}

static gboolean
check_result_input (EadProject *project, const EadResultInput *result, GError **error)
{
  if (result->failure != NULL)
    return TRUE;
  if (!isfinite (result->score))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "%s: the score of image %" G_GINT64_FORMAT " is %g, not a finite number",
                   project->path, result->image_id, result->score);
      return FALSE;
    }
  if (result->map == NULL || result->map_width <= 0 || result->map_height <= 0
      || result->map_width > EAD_RESULT_MAP_MAX_SIDE
      || result->map_height > EAD_RESULT_MAP_MAX_SIDE)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "%s: the map of image %" G_GINT64_FORMAT " is missing or of a bad size "
                   "(%dx%d; at most %d a side)", project->path, result->image_id,
                   result->map_width, result->map_height, EAD_RESULT_MAP_MAX_SIDE);
      return FALSE;
    }
  return TRUE;
}

gboolean
ead_project_add_results (EadProject *project,
                         gint64 run_id,
                         const EadResultInput *results,
                         guint n,
                         GError **error)
{
  g_autofree uint16_t *half = NULL;
  size_t half_size = 0;
  sqlite3_stmt *stmt;
  gint64 model_id = 0;
  EadRunState state;
  gboolean ok = TRUE;

  g_return_val_if_fail (project != NULL && (results != NULL || n == 0), FALSE);

  for (guint i = 0; i < n; i++)
    {
      if (!check_result_input (project, &results[i], error))
        return FALSE;
      if (results[i].failure == NULL)
        half_size = MAX (half_size, (size_t) results[i].map_width * results[i].map_height);
    }
  half = g_new (uint16_t, MAX (half_size, 1));

  if (!_ead_project_begin (project, error))
    return FALSE;
  ok = read_run_state (project, EAD_RUN_INFERENCE, run_id, &state, error);
  if (ok && state != EAD_RUN_RUNNING)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "%s: the inference run %" G_GINT64_FORMAT " is %s and takes no more "
                   "results", project->path, run_id, run_state_names[state]);
      ok = FALSE;
    }
  if (ok)
    {
      stmt = _ead_project_prepare (project, "SELECT model_id FROM inference_runs WHERE id = ?",
                                   error);
      ok = stmt != NULL;
      if (ok)
        {
          sqlite3_bind_int64 (stmt, 1, run_id);
          ok = read_int64 (project, stmt, &model_id, "cannot read a run", error);
        }
    }
  for (guint i = 0; i < n && ok; i++)
    ok = results[i].failure != NULL ? add_failure (project, run_id, &results[i], error)
                                    : add_result (project, run_id, model_id, &results[i], half,
                                                  error);
  return finish_transaction (project, ok, error);
}

gboolean
ead_project_inference_run_finish (EadProject *project,
                                  gint64 run_id,
                                  EadRunState state,
                                  const char *message,
                                  GError **error)
{
  sqlite3_stmt *stmt;
  gboolean ok;

  g_return_val_if_fail (project != NULL && run_is_finished (state), FALSE);

  if (!_ead_project_begin (project, error))
    return FALSE;
  ok = check_transition (project, EAD_RUN_INFERENCE, run_id, state, error);
  if (ok)
    {
      stmt = _ead_project_prepare (project,
        "UPDATE inference_runs SET state = ?, message = ?, finished_at = ? WHERE id = ?",
        error);
      ok = stmt != NULL;
    }
  if (ok)
    {
      sqlite3_bind_text (stmt, 1, run_state_names[state], -1, SQLITE_STATIC);
      _ead_bind_text_or_null (stmt, 2, message);
      sqlite3_bind_int64 (stmt, 3, g_get_real_time ());
      sqlite3_bind_int64 (stmt, 4, run_id);
      ok = _ead_project_exec (project, stmt, "cannot finish the run", error);
    }
  return finish_transaction (project, ok, error);
}

void
ead_project_result_free (EadProjectResult *result)
{
  if (result == NULL)
    return;
  g_free (result->path);
  g_free (result);
}

static EadProjectResult *
result_from_row (sqlite3_stmt *stmt)
{
  EadProjectResult *result = g_new0 (EadProjectResult, 1);

  result->image_id = sqlite3_column_int64 (stmt, 0);
  result->run_id = sqlite3_column_int64 (stmt, 1);
  result->path = _ead_column_dup (stmt, 2);
  result->label = label_from_text (sqlite3_column_text (stmt, 3));
  result->split = split_from_text (sqlite3_column_text (stmt, 4));
  result->score = sqlite3_column_double (stmt, 5);
  return result;
}

GPtrArray *
ead_project_list_results (EadProject *project,
                          gint64 model_id,
                          const EadImageFilter *filter,
                          GError **error)
{
  g_autoptr (GString) sql = g_string_new (
    "SELECT r.image_id, r.run_id, i.path, i.label, i.split, r.score FROM results r "
    "JOIN images i ON i.id = r.image_id WHERE r.model_id = :model");
  sqlite3_stmt *stmt;

  g_return_val_if_fail (project != NULL && filter_is_valid (filter), NULL);

  _ead_append_image_filter (sql, filter);
  g_string_append (sql, " ORDER BY r.image_id");
  stmt = _ead_project_prepare (project, sql->str, error);
  if (stmt == NULL)
    return NULL;
  _ead_bind_image_filter (stmt, filter);
  sqlite3_bind_int64 (stmt, sqlite3_bind_parameter_index (stmt, ":model"), model_id);
  return read_rows (project, stmt, (RowReader) result_from_row,
                    (GDestroyNotify) ead_project_result_free, "cannot list the results", error);
}

gboolean
ead_project_get_result_map (EadProject *project,
                            gint64 model_id,
                            gint64 image_id,
                            float **map,
                            int *width,
                            int *height,
                            GError **error)
{
  sqlite3_stmt *stmt;
  int rc;

  g_return_val_if_fail (project != NULL && map != NULL && width != NULL && height != NULL,
                        FALSE);

  stmt = _ead_project_prepare (project,
    "SELECT m.width, m.height, m.data FROM results r JOIN result_maps m "
    "ON m.result_id = r.id WHERE r.model_id = ? AND r.image_id = ?", error);
  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_int64 (stmt, 1, model_id);
  sqlite3_bind_int64 (stmt, 2, image_id);
  rc = sqlite3_step (stmt);
  if (rc == SQLITE_ROW)
    {
      const uint8_t *data = sqlite3_column_blob (stmt, 2);
      size_t n;

      *width = sqlite3_column_int (stmt, 0);
      *height = sqlite3_column_int (stmt, 1);
      /* The CHECK constraint keeps the blob's length at 2 * width * height. */
      n = (size_t) *width * (size_t) *height;
      *map = g_new (float, n);
      for (size_t i = 0; i < n; i++)
        (*map)[i] = ead_half_to_float ((uint16_t) (data[2 * i] | data[2 * i + 1] << 8));
    }
  sqlite3_reset (stmt);
  if (rc == SQLITE_DONE)
    g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                 "%s: model %" G_GINT64_FORMAT " has no result for image %" G_GINT64_FORMAT,
                 project->path, model_id, image_id);
  else if (rc != SQLITE_ROW)
    _ead_store_set_error (error, project->db, rc, project->path, "cannot read a map");
  return rc == SQLITE_ROW;
}

void
ead_inference_failure_free (EadInferenceFailure *failure)
{
  if (failure == NULL)
    return;
  g_free (failure->path);
  g_free (failure->reason);
  g_free (failure);
}

static EadInferenceFailure *
failure_from_row (sqlite3_stmt *stmt)
{
  EadInferenceFailure *failure = g_new0 (EadInferenceFailure, 1);

  failure->image_id = sqlite3_column_int64 (stmt, 0);
  failure->path = _ead_column_dup (stmt, 1);
  failure->reason = _ead_column_dup (stmt, 2);
  return failure;
}

GPtrArray *
ead_project_list_inference_failures (EadProject *project, gint64 run_id, GError **error)
{
  sqlite3_stmt *stmt;

  g_return_val_if_fail (project != NULL, NULL);

  stmt = _ead_project_prepare (project,
    "SELECT f.image_id, i.path, f.reason FROM inference_failures f "
    "JOIN images i ON i.id = f.image_id WHERE f.run_id = ? ORDER BY f.image_id", error);
  if (stmt == NULL)
    return NULL;
  sqlite3_bind_int64 (stmt, 1, run_id);
  return read_rows (project, stmt, (RowReader) failure_from_row,
                    (GDestroyNotify) ead_inference_failure_free, "cannot list the failures",
                    error);
}

/* Runs of both kinds */

void
ead_project_run_free (EadProjectRun *run)
{
  if (run == NULL)
    return;
  g_free (run->message);
  g_free (run);
}

static EadProjectRun *
run_from_row (sqlite3_stmt *stmt)
{
  EadProjectRun *run = g_new0 (EadProjectRun, 1);

  run->kind = sqlite3_column_int (stmt, 0) == 0 ? EAD_RUN_TRAINING : EAD_RUN_INFERENCE;
  run->id = sqlite3_column_int64 (stmt, 1);
  run->state = run_state_from_text (sqlite3_column_text (stmt, 2));
  run->model_id = sqlite3_column_int64 (stmt, 3);
  run->done = (guint64) sqlite3_column_int64 (stmt, 4);
  run->total = (guint64) sqlite3_column_int64 (stmt, 5);
  run->n_failed = (guint64) sqlite3_column_int64 (stmt, 6);
  run->elapsed_s = sqlite3_column_double (stmt, 7);
  run->eta_s = sqlite3_column_type (stmt, 8) == SQLITE_NULL ? -1.0
                                                            : sqlite3_column_double (stmt, 8);
  run->message = _ead_column_dup (stmt, 9);
  run->created_at = sqlite3_column_int64 (stmt, 10);
  run->finished_at = sqlite3_column_int64 (stmt, 11);
  return run;
}

GPtrArray *
ead_project_list_runs (EadProject *project, GError **error)
{
  sqlite3_stmt *stmt;

  g_return_val_if_fail (project != NULL, NULL);

  stmt = _ead_project_prepare (project,
    "SELECT 0, id, state, model_id, step, steps, 0, elapsed_s, eta_s, message, created_at, "
    "finished_at FROM training_runs "
    "UNION ALL "
    "SELECT 1, r.id, r.state, r.model_id, "
    "(SELECT count(*) FROM results s WHERE s.run_id = r.id) "
    "+ (SELECT count(*) FROM inference_failures f WHERE f.run_id = r.id), r.n_images, "
    "(SELECT count(*) FROM inference_failures f WHERE f.run_id = r.id), 0, NULL, "
    "r.message, r.created_at, r.finished_at FROM inference_runs r "
    "ORDER BY 11 DESC, 2 DESC", error);
  if (stmt == NULL)
    return NULL;
  return read_rows (project, stmt, (RowReader) run_from_row,
                    (GDestroyNotify) ead_project_run_free, "cannot list the runs", error);
}

/* Reports */

void
ead_project_report_free (EadProjectReport *report)
{
  if (report == NULL)
    return;
  g_free (report->format);
  g_free (report->path);
  g_free (report->summary);
  g_free (report);
}

gint64
ead_project_add_report (EadProject *project,
                        gint64 model_id,
                        const char *format,
                        const char *path,
                        double threshold,
                        const char *summary_json,
                        GError **error)
{
  g_autofree char *stored = NULL;
  sqlite3_stmt *stmt;
  gint64 id = 0;
  gboolean ok;

  g_return_val_if_fail (project != NULL && format != NULL && path != NULL, 0);

  stored = ead_project_store_path (project, path);
  if (!_ead_project_begin (project, error))
    return 0;
  stmt = _ead_project_prepare (project,
    "INSERT INTO reports (model_id, format, path, threshold, summary, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?)", error);
  ok = stmt != NULL;
  if (ok)
    {
      if (model_id > 0)
        sqlite3_bind_int64 (stmt, 1, model_id);
      sqlite3_bind_text (stmt, 2, format, -1, SQLITE_STATIC);
      sqlite3_bind_text (stmt, 3, stored, -1, SQLITE_STATIC);
      _ead_bind_double_or_null (stmt, 4, threshold);
      _ead_bind_text_or_null (stmt, 5, summary_json);
      sqlite3_bind_int64 (stmt, 6, g_get_real_time ());
      ok = _ead_project_exec (project, stmt, "cannot record the report", error);
      id = sqlite3_last_insert_rowid (project->db);
    }
  return finish_transaction (project, ok, error) ? id : 0;
}

static EadProjectReport *
report_from_row (sqlite3_stmt *stmt)
{
  EadProjectReport *report = g_new0 (EadProjectReport, 1);

  report->id = sqlite3_column_int64 (stmt, 0);
  report->model_id = sqlite3_column_int64 (stmt, 1);
  report->format = _ead_column_dup (stmt, 2);
  report->path = _ead_column_dup (stmt, 3);
  report->threshold = _ead_column_double_or_nan (stmt, 4);
  report->summary = _ead_column_dup (stmt, 5);
  report->created_at = sqlite3_column_int64 (stmt, 6);
  return report;
}

GPtrArray *
ead_project_list_reports (EadProject *project, GError **error)
{
  sqlite3_stmt *stmt;

  g_return_val_if_fail (project != NULL, NULL);

  stmt = _ead_project_prepare (project,
    "SELECT id, model_id, format, path, threshold, summary, created_at FROM reports "
    "ORDER BY id DESC", error);
  if (stmt == NULL)
    return NULL;
  return read_rows (project, stmt, (RowReader) report_from_row,
                    (GDestroyNotify) ead_project_report_free, "cannot list the reports", error);
}
