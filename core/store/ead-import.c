/* ead-import.c: walking a folder, hashing and probing its files, and bringing them into
 * the store batch by batch.
 *
 * Hash: XXH3-128 (Debian's libxxhash).  Importing is bound by how fast files can be read
 * and hashed.  On the development machine bench/store-bench measured XXH3-128 at 7-13
 * GB/s and GLib's SHA-256 at 160-390 MB/s: for 250 KB images SHA-256 alone would cap an
 * import at 650-1,500 files/s, below the 2,000 files/s we aim for, while XXH3 leaves the
 * time to reading the files.
 * The hash identifies content within one project, where nobody forges collisions, so a
 * fast non-cryptographic hash of 128 bits is enough: an accidental collision among even
 * a billion images has a probability of about 1e-21.
 *
 * Each file is read once: the bytes are hashed as they come in, and when the whole file
 * fits in the read buffer its header is probed from memory; larger files are probed
 * through ead_image_read_header, which reads only their first and last few kilobytes.
 * Reading and hashing happen outside any transaction, so the write lock is held only
 * for the few statements of each batch.
 */
#include "ead-import.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib/gstdio.h>
#include <xxhash.h>

#include "ead-error.h"
#include "ead-image.h"
#include "ead-project-private.h"

/* Files up to this size are read whole and probed from memory. */
#define READ_BUFFER_SIZE (8 * 1024 * 1024)

typedef struct {
  char *path;         /* absolute */
  char *name;
  const char *layout; /* "mvtec", "folder" */
  gint64 id;          /* 0 until stored */
} ImportSet;

typedef struct {
  guint8 hash[EAD_IMAGE_HASH_SIZE];
  guint64 size;
  int width;
  int height;
  const char *format;  /* static */
  char *error;         /* why the file is unusable, or NULL */
} FileFacts;

typedef struct {
  char *path;          /* absolute */
  guint set;           /* index into Importer.sets */
  EadLabel label;
  EadSplit split;
  char *defect;
  char *mask_path;     /* absolute, or NULL */
  FileFacts file;
  FileFacts mask;
} ImportItem;

typedef struct {
  EadProject *project;
  char *root;               /* absolute */
  GPtrArray *sets;          /* ImportSet */
  GPtrArray *items;         /* ImportItem */
  gint plain_set;           /* index of the set of plain files, -1 until needed */
  GHashTable *project_files;
  GHashTable *seen;         /* image ids found by this import */
  EadImportReport *report;
  guint8 *buffer;
  XXH3_state_t *hash_state;
} Importer;

static void
import_set_free (ImportSet *set)
{
  g_free (set->path);
  g_free (set->name);
  g_free (set);
}

static void
import_item_free (ImportItem *item)
{
  g_free (item->path);
  g_free (item->defect);
  g_free (item->mask_path);
  g_free (item->file.error);
  g_free (item->mask.error);
  g_free (item);
}

static void
import_issue_free (EadImportIssue *issue)
{
  g_free (issue->path);
  g_free (issue->reason);
  g_free (issue);
}

static void
add_issue (GPtrArray *list, const char *path, const char *reason)
{
  EadImportIssue *issue = g_new0 (EadImportIssue, 1);

  issue->path = g_strdup (path);
  issue->reason = g_strdup (reason);
  g_ptr_array_add (list, issue);
}

void
ead_import_report_free (EadImportReport *report)
{
  if (report == NULL)
    return;
  g_ptr_array_unref (report->failures);
  g_ptr_array_unref (report->duplicates);
  g_ptr_array_unref (report->missing);
  g_free (report);
}

/* Hashing and probing */

static void
canonical_hash (XXH128_hash_t hash, guint8 out[EAD_IMAGE_HASH_SIZE])
{
  XXH128_canonical_t canonical;

  G_STATIC_ASSERT (sizeof canonical.digest == EAD_IMAGE_HASH_SIZE);
  XXH128_canonicalFromHash (&canonical, hash);
  memcpy (out, canonical.digest, EAD_IMAGE_HASH_SIZE);
}

/* Reads the file through buffer (READ_BUFFER_SIZE bytes), hashing everything; *whole
 * tells whether buffer now holds the entire file. */
static gboolean
hash_file (const char *path,
           guint8 *buffer,
           XXH3_state_t *state,
           guint8 hash[EAD_IMAGE_HASH_SIZE],
           guint64 *size,
           gboolean *whole,
           GError **error)
{
  struct stat st;
  size_t filled = 0;
  guint64 total = 0;
  gboolean streaming = FALSE;
  int fd, saved_errno;

  /* The checks and messages of ead_image_load; O_NONBLOCK so that a FIFO cannot hang
   * the import. */
  fd = g_open (path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0);
  if (fd < 0)
    {
      saved_errno = errno;
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot open: %s", path,
                   g_strerror (saved_errno));
      return FALSE;
    }
  if (fstat (fd, &st) != 0)
    {
      saved_errno = errno;
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot stat: %s", path,
                   g_strerror (saved_errno));
      close (fd);
      return FALSE;
    }
  if (!S_ISREG (st.st_mode))
    {
      if (S_ISDIR (st.st_mode))
        g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: is a directory, not an image file",
                     path);
      else
        g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: not a regular file", path);
      close (fd);
      return FALSE;
    }
  for (;;)
    {
      ssize_t n = read (fd, buffer + filled, READ_BUFFER_SIZE - filled);

      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0)
        {
          saved_errno = errno;
          g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: read error: %s", path,
                       g_strerror (saved_errno));
          close (fd);
          return FALSE;
        }
      if (n == 0)
        break;
      filled += (size_t) n;
      total += (guint64) n;
      if (filled == READ_BUFFER_SIZE)
        {
          /* Larger than the buffer: hash it as it streams by. */
          if (!streaming)
            XXH3_128bits_reset (state);
          streaming = TRUE;
          XXH3_128bits_update (state, buffer, filled);
          filled = 0;
        }
    }
  close (fd);
  if (streaming)
    {
      XXH3_128bits_update (state, buffer, filled);
      canonical_hash (XXH3_128bits_digest (state), hash);
    }
  else
    canonical_hash (XXH3_128bits (buffer, filled), hash);
  *size = total;
  *whole = !streaming;
  return TRUE;
}

static void
examine_file (Importer *importer, const char *path, FileFacts *facts)
{
  g_autoptr (GError) error = NULL;
  gboolean whole, ok;

  ok = hash_file (path, importer->buffer, importer->hash_state, facts->hash, &facts->size,
                  &whole, &error);
  if (ok && whole)
    ok = ead_image_read_header_from_memory (path, importer->buffer, (size_t) facts->size,
                                            &facts->width, &facts->height, &facts->format,
                                            &error);
  else if (ok)
    ok = ead_image_read_header (path, &facts->width, &facts->height, &facts->format, &error);
  if (!ok)
    facts->error = g_strdup (error->message);
}

gboolean
ead_file_hash (const char *path,
               guint8 hash[EAD_IMAGE_HASH_SIZE],
               guint64 *size,
               GError **error)
{
  g_autofree guint8 *buffer = g_malloc (READ_BUFFER_SIZE);
  XXH3_state_t *state = XXH3_createState ();
  guint64 n = 0;
  gboolean whole, ok;

  g_return_val_if_fail (path != NULL && hash != NULL, FALSE);

  ok = hash_file (path, buffer, state, hash, &n, &whole, error);
  XXH3_freeState (state);
  if (ok && size != NULL)
    *size = n;
  return ok;
}

/* Walking */

static guint
add_set (Importer *importer, const char *path, const char *layout)
{
  ImportSet *set = g_new0 (ImportSet, 1);

  set->path = g_strdup (path);
  set->name = g_path_get_basename (path);
  set->layout = layout;
  g_ptr_array_add (importer->sets, set);
  return importer->sets->len - 1;
}

static void
add_item (Importer *importer,
          const char *path,
          guint set,
          EadLabel label,
          EadSplit split,
          const char *defect,
          char *mask_path)
{
  ImportItem *item = g_new0 (ImportItem, 1);

  item->path = g_strdup (path);
  item->set = set;
  item->label = label;
  item->split = split;
  item->defect = g_strdup (defect);
  item->mask_path = mask_path;
  g_ptr_array_add (importer->items, item);
}

static void
add_plain_item (Importer *importer, const char *path)
{
  /* Loose files inside an MVTec category given as the folder belong to its set. */
  for (guint i = 0; i < importer->sets->len && importer->plain_set < 0; i++)
    if (g_str_equal (((ImportSet *) importer->sets->pdata[i])->path, importer->root))
      importer->plain_set = (gint) i;
  if (importer->plain_set < 0)
    importer->plain_set = (gint) add_set (importer, importer->root, "folder");
  add_item (importer, path, (guint) importer->plain_set, EAD_LABEL_UNLABELLED, EAD_SPLIT_NONE,
            NULL, NULL);
}

static int
compare_names (gconstpointer a, gconstpointer b)
{
  return strcmp (*(char *const *) a, *(char *const *) b);
}

/* The visible entries of dir, sorted, so that ids follow a stable order. */
static GPtrArray *
list_folder (const char *dir, GError **error)
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

typedef enum {
  ENTRY_FILE,     /* anything to try as an image, even a FIFO: the probe says why not */
  ENTRY_FOLDER,
  ENTRY_SKIPPED,  /* a link to a folder, which could lead in circles */
} EntryKind;

static EntryKind
entry_kind (const char *path)
{
  struct stat st;

  if (g_lstat (path, &st) != 0)
    return ENTRY_FILE;
  if (S_ISDIR (st.st_mode))
    return ENTRY_FOLDER;
  if (S_ISLNK (st.st_mode) && g_stat (path, &st) == 0 && S_ISDIR (st.st_mode))
    return ENTRY_SKIPPED;
  return ENTRY_FILE;
}

static gboolean
is_folder (const char *dir, const char *child, const char *grandchild)
{
  g_autofree char *path = g_build_filename (dir, child, grandchild, NULL);

  return entry_kind (path) == ENTRY_FOLDER;
}

static gboolean
is_mvtec_category (const char *dir)
{
  return is_folder (dir, "train", "good") && is_folder (dir, "test", NULL);
}

static void walk_folder (Importer *importer, const char *dir);

static void
note_unreadable_folder (Importer *importer, const char *dir, const GError *error)
{
  g_autofree char *reason = g_strdup_printf ("%s: cannot read the folder: %s", dir,
                                             error->message);

  add_issue (importer->report->failures, dir, reason);
}

/* Files of a class folder of an MVTec category: <category>/<split>/<class>/. */
static void
walk_mvtec_class (Importer *importer,
                  const char *category,
                  guint set,
                  EadSplit split,
                  const char *class_dir,
                  const char *class_name)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) names = list_folder (class_dir, &error);
  gboolean good = g_str_equal (class_name, "good");

  if (names == NULL)
    {
      note_unreadable_folder (importer, class_dir, error);
      return;
    }
  for (guint i = 0; i < names->len; i++)
    {
      const char *name = names->pdata[i];
      g_autofree char *path = g_build_filename (class_dir, name, NULL);
      char *mask_path = NULL;

      switch (entry_kind (path))
        {
        case ENTRY_FOLDER:
          walk_folder (importer, path);
          continue;
        case ENTRY_SKIPPED:
          continue;
        case ENTRY_FILE:
          break;
        }
      if (!good)
        {
          const char *dot = strrchr (name, '.');
          g_autofree char *stem = dot != NULL ? g_strndup (name, (gsize) (dot - name))
                                              : g_strdup (name);
          g_autofree char *mask_name = g_strconcat (stem, "_mask.png", NULL);

          mask_path = g_build_filename (category, "ground_truth", class_name, mask_name, NULL);
          if (!g_file_test (mask_path, G_FILE_TEST_EXISTS))
            g_clear_pointer (&mask_path, g_free);
        }
      add_item (importer, path, set, good ? EAD_LABEL_GOOD : EAD_LABEL_DEFECT, split,
                good ? NULL : class_name, mask_path);
    }
}

static void
walk_mvtec (Importer *importer, const char *category)
{
  static const struct {
    const char *name;
    EadSplit split;
  } splits[] = {
    { "train", EAD_SPLIT_TRAIN },
    { "validation", EAD_SPLIT_VALIDATION },
    { "test", EAD_SPLIT_TEST },
  };
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) names = list_folder (category, &error);
  guint set;

  if (names == NULL)
    {
      note_unreadable_folder (importer, category, error);
      return;
    }
  set = add_set (importer, category, "mvtec");
  importer->report->mvtec = TRUE;
  for (guint i = 0; i < names->len; i++)
    {
      const char *name = names->pdata[i];
      g_autofree char *path = g_build_filename (category, name, NULL);
      EntryKind kind = entry_kind (path);
      int split = -1;

      /* Masks are found through their images. */
      if (g_str_equal (name, "ground_truth") && kind == ENTRY_FOLDER)
        continue;
      for (guint s = 0; s < G_N_ELEMENTS (splits); s++)
        if (g_str_equal (name, splits[s].name))
          split = (int) s;
      if (split < 0 || kind != ENTRY_FOLDER)
        {
          if (kind == ENTRY_FOLDER)
            walk_folder (importer, path);
          else if (kind == ENTRY_FILE)
            add_plain_item (importer, path);
          continue;
        }

      g_autoptr (GPtrArray) classes = list_folder (path, &error);

      if (classes == NULL)
        {
          note_unreadable_folder (importer, path, error);
          g_clear_error (&error);
          continue;
        }
      for (guint c = 0; c < classes->len; c++)
        {
          g_autofree char *class_dir = g_build_filename (path, classes->pdata[c], NULL);

          switch (entry_kind (class_dir))
            {
            case ENTRY_FOLDER:
              walk_mvtec_class (importer, category, set, splits[split].split, class_dir,
                                classes->pdata[c]);
              break;
            case ENTRY_FILE:
              add_plain_item (importer, class_dir);
              break;
            case ENTRY_SKIPPED:
              break;
            }
        }
    }
}

static void
walk_folder (Importer *importer, const char *dir)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) names = NULL;

  if (is_mvtec_category (dir))
    {
      walk_mvtec (importer, dir);
      return;
    }
  names = list_folder (dir, &error);
  if (names == NULL)
    {
      note_unreadable_folder (importer, dir, error);
      return;
    }
  for (guint i = 0; i < names->len; i++)
    {
      g_autofree char *path = g_build_filename (dir, names->pdata[i], NULL);

      switch (entry_kind (path))
        {
        case ENTRY_FOLDER:
          walk_folder (importer, path);
          break;
        case ENTRY_FILE:
          if (!g_hash_table_contains (importer->project_files, path))
            add_plain_item (importer, path);
          break;
        case ENTRY_SKIPPED:
          break;
        }
    }
}

/* Storing */

static gboolean
store_set (Importer *importer, ImportSet *set, GError **error)
{
  EadProject *project = importer->project;
  g_autofree char *stored = ead_project_store_path (project, set->path);
  sqlite3_stmt *stmt = _ead_project_prepare (project,
    "INSERT INTO image_sets (path, name, layout, imported_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (path) DO UPDATE SET name = excluded.name, layout = excluded.layout, "
    "imported_at = excluded.imported_at RETURNING id", error);
  int rc;

  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_text (stmt, 1, stored, -1, SQLITE_STATIC);
  sqlite3_bind_text (stmt, 2, set->name, -1, SQLITE_STATIC);
  sqlite3_bind_text (stmt, 3, set->layout, -1, SQLITE_STATIC);
  sqlite3_bind_int64 (stmt, 4, g_get_real_time ());
  rc = sqlite3_step (stmt);
  if (rc == SQLITE_ROW)
    {
      set->id = sqlite3_column_int64 (stmt, 0);
      rc = sqlite3_step (stmt);
    }
  sqlite3_reset (stmt);
  if (rc != SQLITE_DONE)
    {
      _ead_store_set_error (error, project->db, rc, project->path,
                            "cannot record the imported folder");
      set->id = 0;
      return FALSE;
    }
  return TRUE;
}

typedef struct {
  gint64 id;
  char *path;
  gboolean missing;
  guint8 hash[EAD_IMAGE_HASH_SIZE];
} Known;

static void
known_clear (Known *known)
{
  g_clear_pointer (&known->path, g_free);
}

/* Runs a lookup that returns (id, path, missing, hash) or nothing; known->id is 0 when
 * nothing was found. */
static gboolean
lookup (Importer *importer, sqlite3_stmt *stmt, Known *known, GError **error)
{
  int rc = sqlite3_step (stmt);

  known->id = 0;
  if (rc == SQLITE_ROW)
    {
      known->id = sqlite3_column_int64 (stmt, 0);
      known->path = _ead_column_dup (stmt, 1);
      known->missing = sqlite3_column_int (stmt, 2) != 0;
      if (sqlite3_column_bytes (stmt, 3) == EAD_IMAGE_HASH_SIZE)
        memcpy (known->hash, sqlite3_column_blob (stmt, 3), EAD_IMAGE_HASH_SIZE);
    }
  sqlite3_reset (stmt);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE)
    {
      _ead_store_set_error (error, importer->project->db, rc, importer->project->path,
                            "cannot look up an image");
      return FALSE;
    }
  return TRUE;
}

/* Marks an image missing, recording it in the report. */
static gboolean
flag_missing (Importer *importer, gint64 id, const char *stored, GError **error)
{
  EadProject *project = importer->project;
  g_autofree char *path = ead_project_resolve_path (project, stored);
  sqlite3_stmt *stmt = _ead_project_prepare (project,
    "UPDATE images SET missing = 1 WHERE id = ?", error);

  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_int64 (stmt, 1, id);
  if (!_ead_project_exec (project, stmt, "cannot flag an image missing", error))
    return FALSE;
  importer->report->n_missing++;
  add_issue (importer->report->missing, path, NULL);
  return TRUE;
}

static gboolean
store_mask (Importer *importer, const ImportItem *item, gint64 image_id, GError **error)
{
  EadProject *project = importer->project;
  g_autofree char *stored = NULL;
  sqlite3_stmt *stmt;

  if (item->mask_path == NULL)
    return TRUE;
  if (item->mask.error == NULL && (item->mask.width != item->file.width
                                   || item->mask.height != item->file.height))
    {
      g_autofree char *reason = g_strdup_printf (
        "%s: the mask is %dx%d but its image %s is %dx%d", item->mask_path, item->mask.width,
        item->mask.height, item->path, item->file.width, item->file.height);

      add_issue (importer->report->failures, item->mask_path, reason);
      return TRUE;
    }
  if (item->mask.error != NULL)
    {
      add_issue (importer->report->failures, item->mask_path, item->mask.error);
      return TRUE;
    }
  stored = ead_project_store_path (project, item->mask_path);
  stmt = _ead_project_prepare (project,
    "INSERT INTO masks (image_id, path, hash, width, height) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (image_id) DO UPDATE SET path = excluded.path, hash = excluded.hash, "
    "width = excluded.width, height = excluded.height "
    "WHERE masks.path IS NOT excluded.path OR masks.hash IS NOT excluded.hash", error);
  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_int64 (stmt, 1, image_id);
  sqlite3_bind_text (stmt, 2, stored, -1, SQLITE_STATIC);
  sqlite3_bind_blob (stmt, 3, item->mask.hash, EAD_IMAGE_HASH_SIZE, SQLITE_STATIC);
  sqlite3_bind_int (stmt, 4, item->mask.width);
  sqlite3_bind_int (stmt, 5, item->mask.height);
  if (!_ead_project_exec (project, stmt, "cannot store a mask", error))
    return FALSE;
  if (sqlite3_changes (project->db) > 0)
    importer->report->n_masks++;
  return TRUE;
}

/* The content is in the project already, under by_hash, but not at this path. */
static gboolean
store_known_content (Importer *importer,
                     const ImportItem *item,
                     const char *stored,
                     const Known *by_hash,
                     const Known *by_path,
                     gint64 *image_id,
                     GError **error)
{
  EadProject *project = importer->project;
  g_autofree char *old_path = ead_project_resolve_path (project, by_hash->path);
  ImportSet *set = importer->sets->pdata[item->set];
  sqlite3_stmt *stmt;

  if (!by_hash->missing && !g_str_equal (by_hash->path, stored)
      && g_file_test (old_path, G_FILE_TEST_EXISTS))
    {
      g_autofree char *reason = g_strdup_printf (
        "%s: the same content as %s (image %" G_GINT64_FORMAT "), which is imported already",
        item->path, old_path, by_hash->id);

      importer->report->n_duplicate++;
      add_issue (importer->report->duplicates, item->path, reason);
      *image_id = 0;
      return TRUE;
    }
  /* Moved here, or back where it was.  A present image that held this path before has
   * lost its file: this one overwrote it. */
  if (by_path->id != 0 && !flag_missing (importer, by_path->id, by_path->path, error))
    return FALSE;
  stmt = _ead_project_prepare (project,
    "UPDATE images SET path = ?, set_id = ?, missing = 0 WHERE id = ?", error);
  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_text (stmt, 1, stored, -1, SQLITE_STATIC);
  sqlite3_bind_int64 (stmt, 2, set->id);
  sqlite3_bind_int64 (stmt, 3, by_hash->id);
  if (!_ead_project_exec (project, stmt, "cannot record a moved image", error))
    return FALSE;
  if (g_str_equal (by_hash->path, stored))
    importer->report->n_present++;
  else
    importer->report->n_moved++;
  *image_id = by_hash->id;
  return TRUE;
}

/* A known path with new content: the image is the same file, its results are stale. */
static gboolean
store_changed (Importer *importer, const ImportItem *item, const Known *by_path, GError **error)
{
  EadProject *project = importer->project;
  sqlite3_stmt *stmt = _ead_project_prepare (project,
    "UPDATE images SET hash = ?, size = ?, width = ?, height = ?, format = ? WHERE id = ?",
    error);

  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_blob (stmt, 1, item->file.hash, EAD_IMAGE_HASH_SIZE, SQLITE_STATIC);
  sqlite3_bind_int64 (stmt, 2, (gint64) item->file.size);
  sqlite3_bind_int (stmt, 3, item->file.width);
  sqlite3_bind_int (stmt, 4, item->file.height);
  sqlite3_bind_text (stmt, 5, item->file.format, -1, SQLITE_STATIC);
  sqlite3_bind_int64 (stmt, 6, by_path->id);
  if (!_ead_project_exec (project, stmt, "cannot record a changed image", error))
    return FALSE;
  stmt = _ead_project_prepare (project, "DELETE FROM results WHERE image_id = ?", error);
  if (stmt == NULL)
    return FALSE;
  sqlite3_bind_int64 (stmt, 1, by_path->id);
  if (!_ead_project_exec (project, stmt, "cannot drop stale results", error))
    return FALSE;
  importer->report->n_changed++;
  return TRUE;
}

static gboolean
store_item (Importer *importer, const ImportItem *item, GError **error)
{
  EadProject *project = importer->project;
  g_autofree char *stored = ead_project_store_path (project, item->path);
  ImportSet *set = importer->sets->pdata[item->set];
  Known by_hash = { 0 }, by_path = { 0 };
  sqlite3_stmt *stmt;
  gint64 image_id = 0;
  gboolean ok;

  if (item->file.error != NULL)
    {
      importer->report->n_failed++;
      add_issue (importer->report->failures, item->path, item->file.error);
      return TRUE;
    }

  stmt = _ead_project_prepare (project,
    "SELECT id, path, missing, hash FROM images WHERE hash = ?", error);
  ok = stmt != NULL;
  if (ok)
    {
      sqlite3_bind_blob (stmt, 1, item->file.hash, EAD_IMAGE_HASH_SIZE, SQLITE_STATIC);
      ok = lookup (importer, stmt, &by_hash, error);
    }
  if (ok)
    {
      stmt = _ead_project_prepare (project,
        "SELECT id, path, missing, hash FROM images WHERE path = ? AND missing = 0", error);
      ok = stmt != NULL;
    }
  if (ok)
    {
      sqlite3_bind_text (stmt, 1, stored, -1, SQLITE_STATIC);
      ok = lookup (importer, stmt, &by_path, error);
    }

  if (ok && by_hash.id != 0 && by_hash.id == by_path.id)
    {
      importer->report->n_present++;
      image_id = by_hash.id;
    }
  else if (ok && by_hash.id != 0)
    ok = store_known_content (importer, item, stored, &by_hash, &by_path, &image_id, error);
  else if (ok && by_path.id != 0)
    {
      ok = store_changed (importer, item, &by_path, error);
      image_id = by_path.id;
    }
  else if (ok)
    {
      EadNewImage image = {
        .path = item->path,
        .hash = item->file.hash,
        .size = item->file.size,
        .width = item->file.width,
        .height = item->file.height,
        .format = item->file.format,
        .label = item->label,
        .split = item->split,
        .defect = item->defect,
        .set_id = set->id,
      };

      ok = _ead_project_insert_image (project, &image, &image_id, error);
      if (ok)
        importer->report->n_added++;
    }
  known_clear (&by_hash);
  known_clear (&by_path);
  if (!ok || image_id == 0)
    return ok;
  g_hash_table_add (importer->seen, g_memdup2 (&image_id, sizeof image_id));
  return store_mask (importer, item, image_id, error);
}

static gboolean
store_batch (Importer *importer, guint start, guint end, GError **error)
{
  gboolean ok;

  if (!_ead_project_begin (importer->project, error))
    return FALSE;
  ok = TRUE;
  for (guint i = start; i < end && ok; i++)
    {
      ImportItem *item = importer->items->pdata[i];
      ImportSet *set = importer->sets->pdata[item->set];

      if (set->id == 0)
        ok = store_set (importer, set, error);
      if (ok)
        ok = store_item (importer, item, error);
    }
  if (!ok)
    {
      _ead_project_abort (importer->project, error);
      /* The ids of sets stored in this batch are gone with it. */
      for (guint s = 0; s < importer->sets->len; s++)
        ((ImportSet *) importer->sets->pdata[s])->id = 0;
      return FALSE;
    }
  return _ead_project_commit (importer->project, error);
}

/* Flags images below the root that this import did not find and whose files are gone. */
static gboolean
flag_vanished (Importer *importer, GError **error)
{
  EadProject *project = importer->project;
  g_autofree char *prefix = g_str_has_suffix (importer->root, G_DIR_SEPARATOR_S)
                            ? g_strdup (importer->root)
                            : g_strconcat (importer->root, G_DIR_SEPARATOR_S, NULL);
  g_autoptr (GArray) gone_ids = g_array_new (FALSE, FALSE, sizeof (gint64));
  g_autoptr (GPtrArray) gone_paths = g_ptr_array_new_with_free_func (g_free);
  sqlite3_stmt *stmt;
  gboolean ok = TRUE;
  int rc;

  stmt = _ead_project_prepare (project, "SELECT id, path FROM images WHERE missing = 0", error);
  if (stmt == NULL)
    return FALSE;
  while ((rc = sqlite3_step (stmt)) == SQLITE_ROW)
    {
      gint64 id = sqlite3_column_int64 (stmt, 0);
      const char *stored = (const char *) sqlite3_column_text (stmt, 1);
      g_autofree char *path = NULL;

      if (g_hash_table_contains (importer->seen, &id))
        continue;
      path = ead_project_resolve_path (project, stored);
      if (g_str_has_prefix (path, prefix) && !g_file_test (path, G_FILE_TEST_EXISTS))
        {
          g_array_append_val (gone_ids, id);
          g_ptr_array_add (gone_paths, g_strdup (stored));
        }
    }
  sqlite3_reset (stmt);
  if (rc != SQLITE_DONE)
    {
      _ead_store_set_error (error, project->db, rc, project->path, "cannot list the images");
      return FALSE;
    }
  if (gone_ids->len == 0)
    return TRUE;
  if (!_ead_project_begin (project, error))
    return FALSE;
  for (guint i = 0; i < gone_ids->len && ok; i++)
    ok = flag_missing (importer, g_array_index (gone_ids, gint64, i), gone_paths->pdata[i],
                       error);
  if (!ok)
    {
      _ead_project_abort (project, error);
      return FALSE;
    }
  return _ead_project_commit (project, error);
}

static void
importer_clear (Importer *importer)
{
  g_free (importer->root);
  g_clear_pointer (&importer->sets, g_ptr_array_unref);
  g_clear_pointer (&importer->items, g_ptr_array_unref);
  g_clear_pointer (&importer->project_files, g_hash_table_unref);
  g_clear_pointer (&importer->seen, g_hash_table_unref);
  g_clear_pointer (&importer->report, ead_import_report_free);
  g_free (importer->buffer);
  if (importer->hash_state != NULL)
    XXH3_freeState (importer->hash_state);
}

EadImportReport *
ead_project_import (EadProject *project,
                    const char *folder,
                    EadImportProgress progress,
                    gpointer user_data,
                    GCancellable *cancellable,
                    GError **error)
{
  static const char *const own_suffixes[] = { "", "-wal", "-shm", "-journal" };
  Importer importer = { .project = project, .plain_set = -1 };
  EadImportReport *report;

  g_return_val_if_fail (project != NULL && folder != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  importer.root = g_canonicalize_filename (folder, NULL);
  if (!g_file_test (importer.root, G_FILE_TEST_IS_DIR))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: %s", importer.root,
                   g_file_test (importer.root, G_FILE_TEST_EXISTS)
                   ? "not a folder (import takes folders)" : "no such folder");
      importer_clear (&importer);
      return NULL;
    }
  importer.sets = g_ptr_array_new_with_free_func ((GDestroyNotify) import_set_free);
  importer.items = g_ptr_array_new_with_free_func ((GDestroyNotify) import_item_free);
  importer.project_files = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  for (guint i = 0; i < G_N_ELEMENTS (own_suffixes); i++)
    g_hash_table_add (importer.project_files,
                      g_strconcat (ead_project_get_path (project), own_suffixes[i], NULL));
  importer.seen = g_hash_table_new_full (g_int64_hash, g_int64_equal, g_free, NULL);
  importer.report = g_new0 (EadImportReport, 1);
  importer.report->failures = g_ptr_array_new_with_free_func (
    (GDestroyNotify) import_issue_free);
  importer.report->duplicates = g_ptr_array_new_with_free_func (
    (GDestroyNotify) import_issue_free);
  importer.report->missing = g_ptr_array_new_with_free_func (
    (GDestroyNotify) import_issue_free);

  walk_folder (&importer, importer.root);

  importer.buffer = g_malloc (READ_BUFFER_SIZE);
  importer.hash_state = XXH3_createState ();
  for (guint start = 0; start < importer.items->len; start += EAD_IMPORT_BATCH_SIZE)
    {
      guint end = MIN (start + EAD_IMPORT_BATCH_SIZE, importer.items->len);

      if (g_cancellable_set_error_if_cancelled (cancellable, error))
        {
          importer_clear (&importer);
          return NULL;
        }
      for (guint i = start; i < end; i++)
        {
          ImportItem *item = importer.items->pdata[i];

          examine_file (&importer, item->path, &item->file);
          if (item->mask_path != NULL && item->file.error == NULL)
            examine_file (&importer, item->mask_path, &item->mask);
        }
      if (!store_batch (&importer, start, end, error))
        {
          importer_clear (&importer);
          return NULL;
        }
      if (progress != NULL)
        progress (end, importer.items->len, user_data);
    }
  if (!flag_vanished (&importer, error))
    {
      importer_clear (&importer);
      return NULL;
    }
  importer.report->n_sets = importer.sets->len;
  report = g_steal_pointer (&importer.report);
  importer_clear (&importer);
  return report;
}
