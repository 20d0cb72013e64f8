/* ead-schema.h: the project database's schema and its migrations (private to
 * core/store).
 *
 * The schema version lives in SQLite's user_version.  Each step brings a database from
 * version - 1 to version; a new version is added by appending a step, never by editing
 * one that has shipped, so that every older project file reaches the same schema.
 */
#pragma once

#include <glib.h>
#include <sqlite3.h>

G_BEGIN_DECLS

/* "EADP": SQLite's application_id, which tells our files from other SQLite databases. */
#define EAD_PROJECT_APPLICATION_ID 0x45414450

typedef struct {
  int version;      /* the user_version after this step */
  const char *sql;  /* DDL only: no values, several statements */
} EadSchemaStep;

/* The steps in order; their last version is the current schema version. */
const EadSchemaStep *_ead_schema_steps (guint *n_steps);
int _ead_schema_version (void);

/* Brings db to target_version (at most _ead_schema_version ()) in one transaction: on
 * failure the file is left as it was.  Refuses a database whose user_version is newer
 * than this program knows (EAD_ERROR_UNSUPPORTED, "created by a newer version").  Foreign
 * keys are switched off during the steps and checked before the commit, the procedure
 * SQLite documents for schema changes, and switched back on.  path is for messages. */
gboolean _ead_schema_migrate (sqlite3 *db,
                              const char *path,
                              int target_version,
                              GError **error);

G_END_DECLS
