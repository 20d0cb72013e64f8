/* ead-project-private.h: what the files of core/store share, and what the store tests
 * reach into.  Nothing outside core/store and tests/ includes this. */
#pragma once

#include <glib.h>
#include <sqlite3.h>

#include "ead-project.h"

G_BEGIN_DECLS

struct _EadProject {
  sqlite3 *db;
  char *path;              /* the project file, absolute */
  char *dir;               /* its folder, absolute */
  GHashTable *statements;  /* SQL text → prepared sqlite3_stmt, reused */
};

/* Sets error from a SQLite result code: "<path>: <what>: <plain explanation> (SQLite:
 * <SQLite's message>)", with the EadError code that matches (disk full and read-only
 * are EAD_ERROR_IO, not a database is EAD_ERROR_FORMAT, a constraint EAD_ERROR_INVALID).
 * db may be NULL. */
void _ead_store_set_error (GError **error,
                           sqlite3 *db,
                           int rc,
                           const char *path,
                           const char *what);

/* A prepared statement for sql, reset with no bindings; prepared once per connection
 * and kept.  Returns NULL with error set when sql does not compile. */
sqlite3_stmt *_ead_project_prepare (EadProject *project, const char *sql, GError **error);

/* Steps stmt to the end (no rows expected), then resets it. */
gboolean _ead_project_exec (EadProject *project,
                            sqlite3_stmt *stmt,
                            const char *what,
                            GError **error);

/* One writing transaction: BEGIN IMMEDIATE takes the write lock at once (waiting for
 * another writer up to the busy timeout), so a transaction never fails half-way because
 * a reader became a writer.  On any failure call _ead_project_abort, which rolls back
 * and adds to an I/O error that nothing of the transaction was saved, so that a person
 * reading "disk full" knows what state the project is in. */
gboolean _ead_project_begin (EadProject *project, GError **error);
gboolean _ead_project_commit (EadProject *project, GError **error);
void _ead_project_abort (EadProject *project, GError **error);

/* Binds a text that may be NULL. */
void _ead_bind_text_or_null (sqlite3_stmt *stmt, int index, const char *text);
/* Binds a double, NAN as NULL. */
void _ead_bind_double_or_null (sqlite3_stmt *stmt, int index, double value);
/* A column as a newly allocated string, NULL for SQL NULL. */
char *_ead_column_dup (sqlite3_stmt *stmt, int column);
/* A REAL column, NAN for SQL NULL. */
double _ead_column_double_or_nan (sqlite3_stmt *stmt, int column);

/* Appends the conditions of an image filter to a WHERE clause (" AND ..." for each field
 * that is set), with the named parameters :label, :split, :missing and :set_id that
 * _ead_bind_image_filter fills: the SQL text depends on which fields are set, never on
 * their values.  The images table must be aliased i.  filter may be NULL. */
void _ead_append_image_filter (GString *sql, const EadImageFilter *filter);
void _ead_bind_image_filter (sqlite3_stmt *stmt, const EadImageFilter *filter);

/* Inserts one image row (no transaction of its own); *id receives its id. */
gboolean _ead_project_insert_image (EadProject *project,
                                    const EadNewImage *image,
                                    gint64 *id,
                                    GError **error);

/* The login name recorded when a caller gives no user. */
const char *_ead_default_user (const char *user);

G_END_DECLS
