/* ead-safetensors.c: the safetensors format, without knowledge of what the tensors mean.
 *
 * The file is untrusted input: the header is checked as a whole (every offset inside the
 * data block, the tensors covering it exactly once, as the safetensors reference
 * implementation demands) before any tensor byte is read.
 */
#include "ead-safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib/gstdio.h>
#include <json-glib/json-glib.h>

#include "ead-error.h"

#define LENGTH_FIELD_SIZE 8
#define HEADER_ALIGNMENT 8
#define METADATA_KEY "__metadata__"
/* Our headers nest three levels deep; json-glib parses recursively and overflows the
 * stack on a header made of a few hundred thousand brackets. */
#define MAX_HEADER_DEPTH 16
#define WRITE_CHUNK_FLOATS 16384

typedef enum {
  DTYPE_F32,
  DTYPE_F16,
  DTYPE_BF16,
} Dtype;

static const struct {
  const char *name;
  guint size;
} dtypes[] = {
  [DTYPE_F32] = { "F32", 4 },
  [DTYPE_F16] = { "F16", 2 },
  [DTYPE_BF16] = { "BF16", 2 },
};

/* A tensor entry of the header; the name and dtype strings belong to the parser, the
 * shape to the entry. */
typedef struct {
  EadSafetensorsTensor info;
  const char *name;
  Dtype dtype;
  gint64 *shape;
  guint64 begin;
  guint64 end;
} Entry;

struct _EadSafetensors {
  char *path;
  GMappedFile *mapped;
  guint64 file_size;
  JsonParser *parser;
  GHashTable *metadata;  /* strings of the parser; NULL when there is no "__metadata__" */
  GArray *entries;       /* Entry, in header order */
  GHashTable *by_name;   /* name → Entry in entries */
  const guint8 *data;    /* the data block after the header */
  guint64 data_size;
};

/* A tensor to write; the data belongs to the caller. */
typedef struct {
  char *name;
  int n_dims;
  gint64 *shape;
  guint64 n_elements;
  const float *data;
  gboolean half;  /* written as F16 */
} Pending;

struct _EadSafetensorsWriter {
  GArray *tensors;       /* Pending, in the order added */
  GHashTable *names;     /* the tensors' names, borrowed */
  GHashTable *metadata;  /* key → value, owned */
};

static guint64
load_le64 (const guint8 *p)
{
  guint64 value = 0;

  for (int i = 7; i >= 0; i--)
    value = value << 8 | p[i];
  return value;
}

static guint32
load_le32 (const guint8 *p)
{
  return (guint32) p[0] | (guint32) p[1] << 8 | (guint32) p[2] << 16 | (guint32) p[3] << 24;
}

static guint16
load_le16 (const guint8 *p)
{
  return (guint16) (p[0] | p[1] << 8);
}

static float
float_from_bits (guint32 bits)
{
  float value;

  memcpy (&value, &bits, sizeof value);
  return value;
}

static guint32
float_bits (float value)
{
  guint32 bits;

  memcpy (&bits, &value, sizeof bits);
  return bits;
}

/* IEEE binary16, rounded to nearest even; beyond ±65504 it is ±inf. */
static guint16
half_bits (float value)
{
  _Float16 half = (_Float16) value;
  guint16 bits;

  memcpy (&bits, &half, sizeof bits);
  return bits;
}

static float
half_to_float (guint16 half)
{
  guint32 sign = (guint32) (half & 0x8000) << 16;
  guint32 exponent = (half >> 10) & 0x1f;
  guint32 mantissa = half & 0x3ff;

  if (exponent == 0x1f)
    return float_from_bits (sign | 0x7f800000 | mantissa << 13);
  if (exponent != 0)
    return float_from_bits (sign | (exponent + 127 - 15) << 23 | mantissa << 13);
  /* zero and subnormals: mantissa * 2^-24 is exact in float */
  return (sign ? -1.0f : 1.0f) * ldexpf ((float) mantissa, -24);
}

static int
compare_strings (const void *a, const void *b)
{
  return strcmp (*(const char *const *) a, *(const char *const *) b);
}

static char *
format_shape (const gint64 *shape, int n_dims)
{
  GString *text = g_string_new ("[");

  for (int i = 0; i < n_dims; i++)
    g_string_append_printf (text, "%s%" G_GINT64_FORMAT, i ? ", " : "", shape[i]);
  g_string_append_c (text, ']');
  return g_string_free (text, FALSE);
}

/* ---- reading ---- */

void
ead_safetensors_free (EadSafetensors *file)
{
  if (file == NULL)
    return;
  if (file->entries != NULL)
    for (guint i = 0; i < file->entries->len; i++)
      g_free (g_array_index (file->entries, Entry, i).shape);
  g_clear_pointer (&file->entries, g_array_unref);
  g_clear_pointer (&file->by_name, g_hash_table_unref);
  g_clear_pointer (&file->metadata, g_hash_table_unref);
  g_clear_object (&file->parser);
  g_clear_pointer (&file->mapped, g_mapped_file_unref);
  g_free (file->path);
  g_free (file);
}

static GMappedFile *
map_file (const char *path, GError **error)
{
  g_autoptr(GError) local = NULL;
  GMappedFile *file;
  struct stat st;
  int fd = open (path, O_RDONLY | O_CLOEXEC);

  if (fd < 0)
    {
      int saved = errno;
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot open the file: %s", path,
                   g_strerror (saved));
      return NULL;
    }
  if (fstat (fd, &st) != 0)
    {
      int saved = errno;
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot read the file: %s", path,
                   g_strerror (saved));
      close (fd);
      return NULL;
    }
  if (!S_ISREG (st.st_mode))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: %s", path,
                   S_ISDIR (st.st_mode) ? "is a directory, not a safetensors file"
                                        : "is not a regular file, not a safetensors file");
      close (fd);
      return NULL;
    }
  file = g_mapped_file_new_from_fd (fd, FALSE, &local);
  close (fd);
  if (file == NULL)
    g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot map the file: %s", path,
                 local->message);
  return file;
}

static gboolean
check_nesting (const char *path, const char *text, gsize size, GError **error)
{
  gboolean in_string = FALSE;
  int depth = 0;

  for (gsize i = 0; i < size; i++)
    {
      char c = text[i];

      if (in_string)
        {
          if (c == '\\')
            i++;
          else if (c == '"')
            in_string = FALSE;
        }
      else if (c == '"')
        in_string = TRUE;
      else if (c == '{' || c == '[')
        {
          if (++depth > MAX_HEADER_DEPTH)
            {
              g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                           "%s: the header nests deeper than %d levels at byte %" G_GSIZE_FORMAT
                           "; not a safetensors header",
                           path, MAX_HEADER_DEPTH, LENGTH_FIELD_SIZE + i);
              return FALSE;
            }
        }
      else if (c == '}' || c == ']')
        depth--;
    }
  return TRUE;
}

static gboolean
node_get_count (JsonNode *node, guint64 *value)
{
  gint64 number;

  if (!JSON_NODE_HOLDS_VALUE (node) || json_node_get_value_type (node) != G_TYPE_INT64)
    return FALSE;
  number = json_node_get_int (node);
  if (number < 0)
    return FALSE;
  *value = (guint64) number;
  return TRUE;
}

static gboolean
node_is_string (JsonNode *node)
{
  return JSON_NODE_HOLDS_VALUE (node) && json_node_get_value_type (node) == G_TYPE_STRING;
}

static gboolean
parse_dtype (const char *path, Entry *entry, GError **error)
{
  for (guint i = 0; i < G_N_ELEMENTS (dtypes); i++)
    if (g_str_equal (entry->info.dtype, dtypes[i].name))
      {
        entry->dtype = (Dtype) i;
        return TRUE;
      }
  g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
               "%s: tensor %s has dtype %s; only F32, F16 and BF16 are supported", path,
               entry->name, entry->info.dtype);
  return FALSE;
}

static gboolean
parse_shape (const char *path, Entry *entry, JsonArray *shape, GError **error)
{
  guint n_dims = json_array_get_length (shape);
  guint64 count = 1;

  entry->shape = g_new (gint64, n_dims);
  for (guint i = 0; i < n_dims; i++)
    {
      guint64 dim;

      if (!node_get_count (json_array_get_element (shape, i), &dim))
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                       "%s: tensor %s: shape is not a list of non-negative integers", path,
                       entry->name);
          return FALSE;
        }
      if (dim != 0 && count > G_MAXUINT64 / dtypes[entry->dtype].size / dim)
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                       "%s: tensor %s: the shape has more elements than any file can hold",
                       path, entry->name);
          return FALSE;
        }
      count *= dim;
      entry->shape[i] = (gint64) dim;
    }
  /* n_dims fits: the header it came from is at most EAD_SAFETENSORS_MAX_HEADER_SIZE */
  entry->info.n_dims = (int) n_dims;
  entry->info.shape = entry->shape;
  entry->info.n_elements = count;
  return TRUE;
}

static gboolean
parse_offsets (const char *path, Entry *entry, JsonArray *offsets, guint64 data_size,
               GError **error)
{
  guint64 expected;

  if (json_array_get_length (offsets) != 2
      || !node_get_count (json_array_get_element (offsets, 0), &entry->begin)
      || !node_get_count (json_array_get_element (offsets, 1), &entry->end))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: tensor %s: data_offsets is not a pair of non-negative integers", path,
                   entry->name);
      return FALSE;
    }
  if (entry->end < entry->begin)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: tensor %s: data_offsets [%" G_GUINT64_FORMAT ", %" G_GUINT64_FORMAT
                   "] end before they begin",
                   path, entry->name, entry->begin, entry->end);
      return FALSE;
    }
  if (entry->end > data_size)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: tensor %s: data_offsets [%" G_GUINT64_FORMAT ", %" G_GUINT64_FORMAT
                   "] run past the end of the %" G_GUINT64_FORMAT
                   "-byte data block; the file is truncated or corrupt",
                   path, entry->name, entry->begin, entry->end, data_size);
      return FALSE;
    }
  expected = entry->info.n_elements * dtypes[entry->dtype].size;
  if (entry->end - entry->begin != expected)
    {
      g_autofree char *shape = format_shape (entry->shape, entry->info.n_dims);

      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: tensor %s: shape %s of %s needs %" G_GUINT64_FORMAT
                   " bytes, but data_offsets [%" G_GUINT64_FORMAT ", %" G_GUINT64_FORMAT
                   "] hold %" G_GUINT64_FORMAT,
                   path, entry->name, shape, entry->info.dtype, expected, entry->begin,
                   entry->end, entry->end - entry->begin);
      return FALSE;
    }
  return TRUE;
}

static gboolean
parse_entry (const char *path, const char *name, JsonNode *node, guint64 data_size,
             Entry *entry, GError **error)
{
  JsonObject *object;
  JsonNode *dtype, *shape, *offsets;

  entry->name = name;
  if (!JSON_NODE_HOLDS_OBJECT (node))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: tensor %s: the header entry is not an object", path, name);
      return FALSE;
    }
  object = json_node_get_object (node);
  dtype = json_object_get_member (object, "dtype");
  shape = json_object_get_member (object, "shape");
  offsets = json_object_get_member (object, "data_offsets");
  if (dtype == NULL || !node_is_string (dtype))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: tensor %s: dtype is missing or not a string", path, name);
      return FALSE;
    }
  if (shape == NULL || !JSON_NODE_HOLDS_ARRAY (shape))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: tensor %s: shape is missing or not a list", path, name);
      return FALSE;
    }
  if (offsets == NULL || !JSON_NODE_HOLDS_ARRAY (offsets))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: tensor %s: data_offsets is missing or not a list", path, name);
      return FALSE;
    }
  entry->info.dtype = json_node_get_string (dtype);
  return parse_dtype (path, entry, error)
         && parse_shape (path, entry, json_node_get_array (shape), error)
         && parse_offsets (path, entry, json_node_get_array (offsets), data_size, error);
}

static gboolean
parse_metadata (const char *path, EadSafetensors *file, JsonNode *node, GError **error)
{
  JsonObjectIter iter;
  const char *key;
  JsonNode *value;

  if (!JSON_NODE_HOLDS_OBJECT (node))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT, "%s: " METADATA_KEY " is not an object",
                   path);
      return FALSE;
    }
  file->metadata = g_hash_table_new (g_str_hash, g_str_equal);
  json_object_iter_init (&iter, json_node_get_object (node));
  while (json_object_iter_next (&iter, &key, &value))
    {
      if (!node_is_string (value))
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                       "%s: metadata value of %s is not a string", path, key);
          return FALSE;
        }
      g_hash_table_replace (file->metadata, (gpointer) key,
                            (gpointer) json_node_get_string (value));
    }
  return TRUE;
}

static int
compare_entry_offsets (gconstpointer a, gconstpointer b)
{
  const Entry *x = *(const Entry *const *) a, *y = *(const Entry *const *) b;

  if (x->begin != y->begin)
    return x->begin < y->begin ? -1 : 1;
  return x->end < y->end ? -1 : x->end > y->end;
}

/* Safetensors forbids overlapping tensors and bytes that belong to none: together with
 * the size checks this leaves no room for hidden content in a file. */
static gboolean
check_coverage (const char *path, const EadSafetensors *file, GError **error)
{
  g_autoptr(GPtrArray) sorted = g_ptr_array_sized_new (file->entries->len);
  guint64 position = 0;
  const char *previous = NULL;

  for (guint i = 0; i < file->entries->len; i++)
    g_ptr_array_add (sorted, &g_array_index (file->entries, Entry, i));
  g_ptr_array_sort (sorted, compare_entry_offsets);
  for (guint i = 0; i < sorted->len; i++)
    {
      const Entry *entry = g_ptr_array_index (sorted, i);

      if (entry->begin < position)
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                       "%s: tensors %s and %s overlap in the data block", path, previous,
                       entry->name);
          return FALSE;
        }
      if (entry->begin > position)
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                       "%s: bytes %" G_GUINT64_FORMAT " to %" G_GUINT64_FORMAT
                       " of the data block belong to no tensor",
                       path, position, entry->begin);
          return FALSE;
        }
      position = entry->end;
      previous = entry->name;
    }
  if (position != file->data_size)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: the last %" G_GUINT64_FORMAT
                   " bytes of the file belong to no tensor",
                   path, file->data_size - position);
      return FALSE;
    }
  return TRUE;
}

static gboolean
parse_header (const char *path, EadSafetensors *file, GError **error)
{
  g_autoptr(GError) local = NULL;
  const guint8 *bytes;
  guint64 header_size;
  JsonNode *root;
  JsonObjectIter iter;
  const char *name;
  JsonNode *node;

  file->mapped = map_file (path, error);
  if (file->mapped == NULL)
    return FALSE;
  bytes = (const guint8 *) g_mapped_file_get_contents (file->mapped);
  file->file_size = g_mapped_file_get_length (file->mapped);
  if (file->file_size < LENGTH_FIELD_SIZE)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: the file is %" G_GUINT64_FORMAT
                   " bytes long, too short for a safetensors file",
                   path, file->file_size);
      return FALSE;
    }
  header_size = load_le64 (bytes);
  if (header_size > EAD_SAFETENSORS_MAX_HEADER_SIZE)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_LIMIT,
                   "%s: the header is said to be %" G_GUINT64_FORMAT
                   " bytes long, over the limit of %" G_GUINT64_FORMAT
                   " bytes; not a safetensors file",
                   path, header_size, EAD_SAFETENSORS_MAX_HEADER_SIZE);
      return FALSE;
    }
  if (header_size > file->file_size - LENGTH_FIELD_SIZE)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: truncated: the header is said to be %" G_GUINT64_FORMAT
                   " bytes long, but only %" G_GUINT64_FORMAT " bytes follow",
                   path, header_size, file->file_size - LENGTH_FIELD_SIZE);
      return FALSE;
    }
  if (header_size == 0 || bytes[LENGTH_FIELD_SIZE] != '{')
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: the header does not start with '{'; not a safetensors file", path);
      return FALSE;
    }
  if (!check_nesting (path, (const char *) bytes + LENGTH_FIELD_SIZE, header_size, error))
    return FALSE;

  file->parser = json_parser_new_immutable ();
  if (!json_parser_load_from_data (file->parser, (const char *) bytes + LENGTH_FIELD_SIZE,
                                   (gssize) header_size, &local))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: the header is not valid JSON: %s", path, local->message);
      return FALSE;
    }
  root = json_parser_get_root (file->parser);
  if (root == NULL || !JSON_NODE_HOLDS_OBJECT (root))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: the header is not a JSON object", path);
      return FALSE;
    }

  file->data = bytes + LENGTH_FIELD_SIZE + header_size;
  file->data_size = file->file_size - LENGTH_FIELD_SIZE - header_size;
  file->entries = g_array_new (FALSE, TRUE, sizeof (Entry));
  json_object_iter_init (&iter, json_node_get_object (root));
  while (json_object_iter_next (&iter, &name, &node))
    {
      Entry *entry;

      if (g_str_equal (name, METADATA_KEY))
        {
          if (!parse_metadata (path, file, node, error))
            return FALSE;
          continue;
        }
      /* appended before parsing so that ead_safetensors_free finds its shape on failure */
      g_array_set_size (file->entries, file->entries->len + 1);
      entry = &g_array_index (file->entries, Entry, file->entries->len - 1);
      if (!parse_entry (path, name, node, file->data_size, entry, error))
        return FALSE;
    }
  return check_coverage (path, file, error);
}

EadSafetensors *
ead_safetensors_open (const char *path, GError **error)
{
  g_autoptr(EadSafetensors) file = NULL;

  g_return_val_if_fail (path != NULL, NULL);

  file = g_new0 (EadSafetensors, 1);
  file->path = g_strdup (path);
  if (!parse_header (path, file, error))
    return NULL;
  /* only now: the entries array no longer moves */
  file->by_name = g_hash_table_new (g_str_hash, g_str_equal);
  for (guint i = 0; i < file->entries->len; i++)
    {
      Entry *entry = &g_array_index (file->entries, Entry, i);
      g_hash_table_insert (file->by_name, (gpointer) entry->name, entry);
    }
  return g_steal_pointer (&file);
}

const char *
ead_safetensors_get_path (EadSafetensors *file)
{
  g_return_val_if_fail (file != NULL, NULL);

  return file->path;
}

guint64
ead_safetensors_get_file_size (EadSafetensors *file)
{
  g_return_val_if_fail (file != NULL, 0);

  return file->file_size;
}

GHashTable *
ead_safetensors_get_metadata (EadSafetensors *file)
{
  g_return_val_if_fail (file != NULL, NULL);

  return file->metadata;
}

const char *
ead_safetensors_lookup_metadata (EadSafetensors *file, const char *key)
{
  g_return_val_if_fail (file != NULL, NULL);
  g_return_val_if_fail (key != NULL, NULL);

  return file->metadata != NULL ? g_hash_table_lookup (file->metadata, key) : NULL;
}

char **
ead_safetensors_list (EadSafetensors *file)
{
  char **names;

  g_return_val_if_fail (file != NULL, NULL);

  names = g_new (char *, file->entries->len + 1);
  for (guint i = 0; i < file->entries->len; i++)
    names[i] = g_strdup (g_array_index (file->entries, Entry, i).name);
  names[file->entries->len] = NULL;
  qsort (names, file->entries->len, sizeof *names, compare_strings);
  return names;
}

gboolean
ead_safetensors_has (EadSafetensors *file, const char *name)
{
  return ead_safetensors_lookup (file, name) != NULL;
}

const EadSafetensorsTensor *
ead_safetensors_lookup (EadSafetensors *file, const char *name)
{
  const Entry *entry;

  g_return_val_if_fail (file != NULL, NULL);
  g_return_val_if_fail (name != NULL, NULL);

  entry = g_hash_table_lookup (file->by_name, name);
  return entry != NULL ? &entry->info : NULL;
}

static void
convert_tensor (const EadSafetensors *file, const Entry *entry, float *dst)
{
  const guint8 *src = file->data + entry->begin;

  switch (entry->dtype)
    {
    case DTYPE_F32:
      for (guint64 i = 0; i < entry->info.n_elements; i++)
        dst[i] = float_from_bits (load_le32 (src + 4 * i));
      break;
    case DTYPE_F16:
      for (guint64 i = 0; i < entry->info.n_elements; i++)
        dst[i] = half_to_float (load_le16 (src + 2 * i));
      break;
    case DTYPE_BF16:
      for (guint64 i = 0; i < entry->info.n_elements; i++)
        dst[i] = float_from_bits ((guint32) load_le16 (src + 2 * i) << 16);
      break;
    }
}

gboolean
ead_safetensors_read (EadSafetensors *file, const char *name, int n_dims, const gint64 *shape,
                      float *dst, GError **error)
{
  const Entry *entry;

  g_return_val_if_fail (file != NULL, FALSE);
  g_return_val_if_fail (name != NULL, FALSE);
  g_return_val_if_fail (n_dims >= 0, FALSE);
  g_return_val_if_fail (shape != NULL || n_dims == 0, FALSE);

  entry = g_hash_table_lookup (file->by_name, name);
  if (entry == NULL)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT, "%s: tensor %s is missing", file->path,
                   name);
      return FALSE;
    }
  if (entry->info.n_dims != n_dims
      || (n_dims > 0 && memcmp (entry->shape, shape, n_dims * sizeof *shape) != 0))
    {
      g_autofree char *found = format_shape (entry->shape, entry->info.n_dims);
      g_autofree char *wanted = format_shape (shape, n_dims);

      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT, "%s: %s has shape %s, expected %s",
                   file->path, name, found, wanted);
      return FALSE;
    }
  convert_tensor (file, entry, dst);
  return TRUE;
}

/* ---- writing ---- */

static void
pending_clear (Pending *tensor)
{
  g_free (tensor->name);
  g_free (tensor->shape);
}

EadSafetensorsWriter *
ead_safetensors_writer_new (void)
{
  EadSafetensorsWriter *writer = g_new0 (EadSafetensorsWriter, 1);

  writer->tensors = g_array_new (FALSE, TRUE, sizeof (Pending));
  g_array_set_clear_func (writer->tensors, (GDestroyNotify) pending_clear);
  writer->names = g_hash_table_new (g_str_hash, g_str_equal);
  writer->metadata = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  return writer;
}

void
ead_safetensors_writer_free (EadSafetensorsWriter *writer)
{
  if (writer == NULL)
    return;
  g_hash_table_unref (writer->names);
  g_array_unref (writer->tensors);
  g_hash_table_unref (writer->metadata);
  g_free (writer);
}

void
ead_safetensors_writer_add (EadSafetensorsWriter *writer, const char *name, int n_dims,
                            const gint64 *shape, const float *data)
{
  Pending tensor = { 0 };
  guint64 count = 1;

  g_return_if_fail (writer != NULL);
  g_return_if_fail (name != NULL);
  g_return_if_fail (!g_str_equal (name, METADATA_KEY));
  g_return_if_fail (!g_hash_table_contains (writer->names, name));
  g_return_if_fail (n_dims >= 0);
  g_return_if_fail (shape != NULL || n_dims == 0);
  for (int i = 0; i < n_dims; i++)
    {
      g_return_if_fail (shape[i] >= 0);
      count *= (guint64) shape[i];
    }
  g_return_if_fail (data != NULL || count == 0);

  tensor.name = g_strdup (name);
  tensor.n_dims = n_dims;
  tensor.shape = g_memdup2 (shape, n_dims * sizeof *shape);
  tensor.n_elements = count;
  tensor.data = data;
  g_array_append_val (writer->tensors, tensor);
  g_hash_table_add (writer->names, tensor.name);
}

void
ead_safetensors_writer_add_half (EadSafetensorsWriter *writer, const char *name, int n_dims,
                                 const gint64 *shape, const float *data)
{
  guint len;

  g_return_if_fail (writer != NULL);
  len = writer->tensors->len;
  ead_safetensors_writer_add (writer, name, n_dims, shape, data);
  if (writer->tensors->len == len + 1)
    g_array_index (writer->tensors, Pending, len).half = TRUE;
}

void
ead_safetensors_writer_set_metadata (EadSafetensorsWriter *writer, const char *key,
                                     const char *value)
{
  g_return_if_fail (writer != NULL);
  g_return_if_fail (key != NULL);
  g_return_if_fail (value != NULL);

  g_hash_table_replace (writer->metadata, g_strdup (key), g_strdup (value));
}

/* JSON must be UTF-8; checked before anything touches the disk. */
static gboolean
check_utf8 (const char *path, const EadSafetensorsWriter *writer, GError **error)
{
  GHashTableIter iter;
  gpointer key, value;

  g_hash_table_iter_init (&iter, writer->metadata);
  while (g_hash_table_iter_next (&iter, &key, &value))
    if (!g_utf8_validate (key, -1, NULL) || !g_utf8_validate (value, -1, NULL))
      {
        g_autofree char *shown = g_utf8_make_valid (key, -1);

        g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                     "%s: metadata entry %s is not valid UTF-8 (not written)", path, shown);
        return FALSE;
      }
  for (guint i = 0; i < writer->tensors->len; i++)
    {
      const char *name = g_array_index (writer->tensors, Pending, i).name;

      if (!g_utf8_validate (name, -1, NULL))
        {
          g_autofree char *shown = g_utf8_make_valid (name, -1);

          g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                       "%s: tensor name %s is not valid UTF-8 (not written)", path, shown);
          return FALSE;
        }
    }
  return TRUE;
}

static void
build_int_array (JsonBuilder *builder, const gint64 *values, int count)
{
  json_builder_begin_array (builder);
  for (int i = 0; i < count; i++)
    json_builder_add_int_value (builder, values[i]);
  json_builder_end_array (builder);
}

/* The JSON header, padded with spaces so that the data block starts 8-byte aligned. */
static GString *
build_header (const EadSafetensorsWriter *writer)
{
  g_autoptr(JsonBuilder) builder = json_builder_new_immutable ();
  g_autoptr(JsonGenerator) generator = json_generator_new ();
  g_autoptr(JsonNode) root = NULL;
  g_autofree gpointer *keys = NULL;
  guint n_keys;
  gint64 offset = 0;
  GString *text;

  json_builder_begin_object (builder);
  json_builder_set_member_name (builder, METADATA_KEY);
  json_builder_begin_object (builder);
  keys = g_hash_table_get_keys_as_array (writer->metadata, &n_keys);
  qsort (keys, n_keys, sizeof *keys, compare_strings);
  for (guint i = 0; i < n_keys; i++)
    {
      json_builder_set_member_name (builder, keys[i]);
      json_builder_add_string_value (builder, g_hash_table_lookup (writer->metadata, keys[i]));
    }
  json_builder_end_object (builder);
  for (guint i = 0; i < writer->tensors->len; i++)
    {
      const Pending *tensor = &g_array_index (writer->tensors, Pending, i);
      gint64 offsets[2];

      offsets[0] = offset;
      offsets[1] = offset + (gint64) tensor->n_elements
                              * (gint64) dtypes[tensor->half ? DTYPE_F16 : DTYPE_F32].size;
      offset = offsets[1];
      json_builder_set_member_name (builder, tensor->name);
      json_builder_begin_object (builder);
      json_builder_set_member_name (builder, "dtype");
      json_builder_add_string_value (builder, dtypes[tensor->half ? DTYPE_F16 : DTYPE_F32].name);
      json_builder_set_member_name (builder, "shape");
      build_int_array (builder, tensor->shape, tensor->n_dims);
      json_builder_set_member_name (builder, "data_offsets");
      build_int_array (builder, offsets, 2);
      json_builder_end_object (builder);
    }
  json_builder_end_object (builder);

  root = json_builder_get_root (builder);
  json_generator_set_root (generator, root);
  text = g_string_new (NULL);
  json_generator_to_gstring (generator, text);
  while (text->len % HEADER_ALIGNMENT != 0)
    g_string_append_c (text, ' ');
  return text;
}

static gboolean
set_errno_error (GError **error, const char *path, const char *what, int saved_errno)
{
  g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: %s: %s", path, what,
               g_strerror (saved_errno));
  return FALSE;
}

/* 0 on success, else an errno value. */
static int
write_all (int fd, const void *buffer, gsize size)
{
  const guint8 *p = buffer;

  while (size > 0)
    {
      gssize written = write (fd, p, size);

      if (written < 0)
        {
          if (errno == EINTR)
            continue;
          return errno;
        }
      if (written == 0)
        return EIO;
      p += written;
      size -= (gsize) written;
    }
  return 0;
}

static gboolean
write_contents (int fd, const char *path, const GString *header,
                const EadSafetensorsWriter *writer, GError **error)
{
  g_autofree guint32 *chunk = g_new (guint32, WRITE_CHUNK_FLOATS);
  guint8 length_field[LENGTH_FIELD_SIZE];
  int err;

  for (int i = 0; i < LENGTH_FIELD_SIZE; i++)
    length_field[i] = (guint8) ((guint64) header->len >> (8 * i));
  err = write_all (fd, length_field, sizeof length_field);
  if (err == 0)
    err = write_all (fd, header->str, header->len);
  for (guint t = 0; t < writer->tensors->len && err == 0; t++)
    {
      const Pending *tensor = &g_array_index (writer->tensors, Pending, t);

      for (guint64 start = 0; start < tensor->n_elements && err == 0;
           start += WRITE_CHUNK_FLOATS)
        {
          gsize n = (gsize) MIN (WRITE_CHUNK_FLOATS, tensor->n_elements - start);

          if (tensor->half)
            {
              guint16 *halves = (guint16 *) chunk;

              for (gsize i = 0; i < n; i++)
                halves[i] = GUINT16_TO_LE (half_bits (tensor->data[start + i]));
              err = write_all (fd, halves, n * sizeof *halves);
            }
          else
            {
              for (gsize i = 0; i < n; i++)
                chunk[i] = GUINT32_TO_LE (float_bits (tensor->data[start + i]));
              err = write_all (fd, chunk, n * sizeof *chunk);
            }
        }
    }
  if (err != 0)
    return set_errno_error (error, path, "cannot write the file", err);
  return TRUE;
}

/* Makes the rename itself durable; file systems that cannot sync a directory say EINVAL. */
static gboolean
sync_directory (const char *path, const char *directory, GError **error)
{
  int fd = open (directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int saved;

  if (fd < 0)
    return set_errno_error (error, path, "written, but its directory could not be opened to "
                            "sync it", errno);
  if (fsync (fd) != 0 && errno != EINVAL)
    {
      saved = errno;
      close (fd);
      return set_errno_error (error, path, "written, but syncing its directory failed", saved);
    }
  close (fd);
  return TRUE;
}

gboolean
ead_safetensors_writer_write (EadSafetensorsWriter *writer, const char *path, GError **error)
{
  g_autoptr(GString) header = NULL;
  g_autofree char *temp_path = NULL;
  g_autofree char *directory = NULL;
  gboolean ok;
  int fd;

  g_return_val_if_fail (writer != NULL, FALSE);
  g_return_val_if_fail (path != NULL, FALSE);

  if (!check_utf8 (path, writer, error))
    return FALSE;
  header = build_header (writer);

  directory = g_path_get_dirname (path);
  temp_path = g_strconcat (path, ".tmp-XXXXXX", NULL);
  fd = g_mkstemp_full (temp_path, O_WRONLY | O_CLOEXEC, 0666);
  if (fd < 0)
    {
      int saved = errno;
      g_autofree char *what = g_strdup_printf ("cannot create a file in %s", directory);
      return set_errno_error (error, path, what, saved);
    }
  ok = write_contents (fd, path, header, writer, error);
  if (ok && fsync (fd) != 0)
    ok = set_errno_error (error, path, "cannot flush the file to disk", errno);
  if (close (fd) != 0 && ok)
    ok = set_errno_error (error, path, "cannot write the file", errno);
  if (ok && rename (temp_path, path) != 0)
    ok = set_errno_error (error, path, "cannot replace the file", errno);
  if (!ok)
    {
      g_unlink (temp_path);
      return FALSE;
    }
  return sync_directory (path, directory, error);
}
