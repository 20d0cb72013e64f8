/* ead-import.h: bringing a folder of images into a project.
 *
 * The folder is walked recursively.  A folder in the MVTec AD layout (train/good and
 * test/ below it) is one category, imported as an image set of its own:
 *
 *   train/good/, validation/good/, test/good/   good, split train/validation/test
 *   train|validation|test/<kind>/               defect of that kind, same splits
 *   ground_truth/<kind>/<name>_mask.png         the mask of <split>/<kind>/<name>.<ext>
 *
 * Every other file is imported as an unlabelled image without a split, in a set named
 * after the folder given.  Hidden files and folders (a leading dot), symbolic links to
 * folders and the project's own files are skipped.
 *
 * Each file is read once: its content hash (XXH3-128) and its image header
 * (ead_image_read_header's checks; no pixels are decoded).  Importing is idempotent:
 * a file whose content is already in the project at the same path is left as it is,
 * with its label and split; the same content at a new path, whose old file is gone,
 * is a move (the image keeps its id, label, split and results); the same content while
 * the old file still exists is a duplicate and is not imported twice; a known path with
 * new content is a change (the stale results are dropped).  Images below the folder
 * that are no longer found are flagged missing, never deleted, and become present again
 * when they reappear.  Files that are not usable images are listed with the reason.
 *
 * Files are processed and committed in batches: progress is saved batch by batch, and
 * cancelling (or an error) keeps the batches already committed.
 */
#pragma once

#include <gio/gio.h>
#include <glib.h>

#include "ead-project.h"

G_BEGIN_DECLS

/* Files per transaction. */
#define EAD_IMPORT_BATCH_SIZE 256

typedef struct {
  char *path;     /* absolute */
  char *reason;   /* starts with the path, like every EAD_ERROR message */
} EadImportIssue;

typedef struct {
  guint n_added;       /* new images */
  guint n_present;     /* already in the project at the same path */
  guint n_moved;       /* found again at a new path by their content */
  guint n_changed;     /* a known path with new content */
  guint n_duplicate;   /* content already in the project at another existing path */
  guint n_missing;     /* images below the folder flagged missing by this import */
  guint n_failed;      /* files that are not usable images */
  guint n_masks;       /* ground-truth masks attached or updated */
  guint n_sets;        /* image sets the files belong to */
  gboolean mvtec;      /* at least one MVTec AD category was recognised */
  GPtrArray *failures;    /* EadImportIssue: files not imported, and unusable masks */
  GPtrArray *duplicates;  /* EadImportIssue: reason names the image already there */
  GPtrArray *missing;     /* EadImportIssue: paths flagged missing; reason NULL */
} EadImportReport;

void ead_import_report_free (EadImportReport *report);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (EadImportReport, ead_import_report_free)

/* Called after each batch is committed: files done, files in all. */
typedef void (*EadImportProgress) (guint done, guint total, gpointer user_data);

/* Imports folder (a directory) into the project.  Returns the report, or NULL with an
 * error when the folder cannot be walked or the project cannot be written (unusable
 * files are not errors: they are listed in the report).  cancellable may be NULL;
 * cancelling stops after the batch in progress (G_IO_ERROR_CANCELLED). */
EadImportReport *ead_project_import (EadProject *project,
                                     const char *folder,
                                     EadImportProgress progress,
                                     gpointer user_data,
                                     GCancellable *cancellable,
                                     GError **error);

/* The content hash the store keeps for a file: XXH3-128 of its bytes, canonical
 * (big-endian) form.  Reads the whole file. */
gboolean ead_file_hash (const char *path,
                        guint8 hash[EAD_IMAGE_HASH_SIZE],
                        guint64 *size,
                        GError **error);

G_END_DECLS
