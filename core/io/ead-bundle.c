/* ead-bundle.c: reading and writing model bundles (safetensors).
 *
 * The file is untrusted input: the header is checked as a whole (every offset inside the
 * data block, the tensors covering it exactly once, as the safetensors reference
 * implementation demands) before any tensor byte is read.
 */
#include "ead-bundle.h"

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

#define FORMAT_VERSION "1"
#define LENGTH_FIELD_SIZE 8
#define HEADER_ALIGNMENT 8
/* Our headers nest three levels deep; json-glib parses recursively and overflows the
 * stack on a header made of a few hundred thousand brackets. */
#define MAX_HEADER_DEPTH 16
#define WRITE_CHUNK_FLOATS 16384

#define KEY_FORMAT_VERSION "ead.format_version"
#define KEY_ARCH "ead.arch"
#define KEY_INPUT_HEIGHT "ead.input.height"
#define KEY_INPUT_WIDTH "ead.input.width"
#define KEY_Q_ST_A "ead.quantile.st_a"
#define KEY_Q_ST_B "ead.quantile.st_b"
#define KEY_Q_AE_A "ead.quantile.ae_a"
#define KEY_Q_AE_B "ead.quantile.ae_b"

/* The keys that become EadModel fields rather than model->metadata entries. */
static const char *const field_keys[] = {
  KEY_FORMAT_VERSION, KEY_ARCH, KEY_INPUT_HEIGHT, KEY_INPUT_WIDTH,
  KEY_Q_ST_A, KEY_Q_ST_B, KEY_Q_AE_A, KEY_Q_AE_B,
};

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

/* A tensor entry of the header; the strings and the shape belong to the parser. */
typedef struct {
  const char *name;
  const char *dtype_name;
  Dtype dtype;
  JsonArray *shape;
  guint64 n_elements;
  guint64 begin;
  guint64 end;
} Entry;

typedef struct {
  GMappedFile *file;
  guint64 file_size;
  JsonParser *parser;
  JsonObject *metadata;  /* NULL when the header has no "__metadata__" */
  GArray *entries;       /* Entry */
  const guint8 *data;    /* the data block after the header */
  guint64 data_size;
} Header;

/* A tensor the model owns: its bundle name, shape, and float storage. */
typedef struct {
  char *name;
  int n_dims;
  gint64 shape[4];
  float *data;
} Slot;

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

static void
header_clear (Header *header)
{
  g_clear_pointer (&header->entries, g_array_unref);
  g_clear_object (&header->parser);
  g_clear_pointer (&header->file, g_mapped_file_unref);
}

G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (Header, header_clear)

static void
slot_clear (Slot *slot)
{
  g_free (slot->name);
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
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot open the model bundle: %s",
                   path, g_strerror (saved));
      return NULL;
    }
  if (fstat (fd, &st) != 0)
    {
      int saved = errno;
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot read the model bundle: %s",
                   path, g_strerror (saved));
      close (fd);
      return NULL;
    }
  if (!S_ISREG (st.st_mode))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: %s", path,
                   S_ISDIR (st.st_mode) ? "is a directory, not a model bundle"
                                        : "is not a regular file, not a model bundle");
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

static char *
format_json_shape (JsonArray *shape)
{
  GString *text = g_string_new ("[");

  for (guint i = 0; i < json_array_get_length (shape); i++)
    g_string_append_printf (text, "%s%" G_GINT64_FORMAT, i ? ", " : "",
                            json_array_get_int_element (shape, i));
  g_string_append_c (text, ']');
  return g_string_free (text, FALSE);
}

static char *
format_slot_shape (const Slot *slot)
{
  GString *text = g_string_new ("[");

  for (int i = 0; i < slot->n_dims; i++)
    g_string_append_printf (text, "%s%" G_GINT64_FORMAT, i ? ", " : "", slot->shape[i]);
  g_string_append_c (text, ']');
  return g_string_free (text, FALSE);
}

static gboolean
parse_dtype (const char *path, Entry *entry, GError **error)
{
  for (guint i = 0; i < G_N_ELEMENTS (dtypes); i++)
    if (g_str_equal (entry->dtype_name, dtypes[i].name))
      {
        entry->dtype = (Dtype) i;
        return TRUE;
      }
  g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
               "%s: tensor %s has dtype %s; only F32, F16 and BF16 are supported", path,
               entry->name, entry->dtype_name);
  return FALSE;
}

static gboolean
parse_shape (const char *path, Entry *entry, GError **error)
{
  guint64 count = 1;

  for (guint i = 0; i < json_array_get_length (entry->shape); i++)
    {
      guint64 dim;

      if (!node_get_count (json_array_get_element (entry->shape, i), &dim))
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
    }
  entry->n_elements = count;
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
  expected = entry->n_elements * dtypes[entry->dtype].size;
  if (entry->end - entry->begin != expected)
    {
      g_autofree char *shape = format_json_shape (entry->shape);

      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: tensor %s: shape %s of %s needs %" G_GUINT64_FORMAT
                   " bytes, but data_offsets [%" G_GUINT64_FORMAT ", %" G_GUINT64_FORMAT
                   "] hold %" G_GUINT64_FORMAT,
                   path, entry->name, shape, entry->dtype_name, expected, entry->begin,
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
  entry->dtype_name = json_node_get_string (dtype);
  entry->shape = json_node_get_array (shape);
  return parse_dtype (path, entry, error) && parse_shape (path, entry, error)
         && parse_offsets (path, entry, json_node_get_array (offsets), data_size, error);
}

static gboolean
check_metadata (const char *path, JsonObject *metadata, GError **error)
{
  JsonObjectIter iter;
  const char *key;
  JsonNode *value;

  json_object_iter_init (&iter, metadata);
  while (json_object_iter_next (&iter, &key, &value))
    if (!node_is_string (value))
      {
        g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                     "%s: metadata value of %s is not a string", path, key);
        return FALSE;
      }
  return TRUE;
}

static int
compare_entry_offsets (gconstpointer a, gconstpointer b)
{
  const Entry *x = a, *y = b;

  if (x->begin != y->begin)
    return x->begin < y->begin ? -1 : 1;
  return x->end < y->end ? -1 : x->end > y->end;
}

/* Safetensors forbids overlapping tensors and bytes that belong to none: together with
 * the size checks this leaves no room for hidden content in a bundle. */
static gboolean
check_coverage (const char *path, const Header *header, GError **error)
{
  g_autoptr(GArray) sorted = g_array_copy (header->entries);
  guint64 position = 0;
  const char *previous = NULL;

  g_array_sort (sorted, compare_entry_offsets);
  for (guint i = 0; i < sorted->len; i++)
    {
      const Entry *entry = &g_array_index (sorted, Entry, i);

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
  if (position != header->data_size)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: the last %" G_GUINT64_FORMAT
                   " bytes of the file belong to no tensor",
                   path, header->data_size - position);
      return FALSE;
    }
  return TRUE;
}

static gboolean
parse_header (const char *path, Header *header, GError **error)
{
  g_autoptr(GError) local = NULL;
  const guint8 *bytes;
  guint64 header_size;
  JsonNode *root;
  JsonObjectIter iter;
  const char *name;
  JsonNode *node;

  header->file = map_file (path, error);
  if (header->file == NULL)
    return FALSE;
  bytes = (const guint8 *) g_mapped_file_get_contents (header->file);
  header->file_size = g_mapped_file_get_length (header->file);
  if (header->file_size < LENGTH_FIELD_SIZE)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: the file is %" G_GUINT64_FORMAT
                   " bytes long, too short for a safetensors model bundle",
                   path, header->file_size);
      return FALSE;
    }
  header_size = load_le64 (bytes);
  if (header_size > EAD_BUNDLE_MAX_HEADER_SIZE)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_LIMIT,
                   "%s: the header is said to be %" G_GUINT64_FORMAT
                   " bytes long, over the limit of %" G_GUINT64_FORMAT
                   " bytes; not a safetensors model bundle",
                   path, header_size, EAD_BUNDLE_MAX_HEADER_SIZE);
      return FALSE;
    }
  if (header_size > header->file_size - LENGTH_FIELD_SIZE)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: truncated: the header is said to be %" G_GUINT64_FORMAT
                   " bytes long, but only %" G_GUINT64_FORMAT " bytes follow",
                   path, header_size, header->file_size - LENGTH_FIELD_SIZE);
      return FALSE;
    }
  if (header_size == 0 || bytes[LENGTH_FIELD_SIZE] != '{')
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: the header does not start with '{'; not a safetensors model bundle",
                   path);
      return FALSE;
    }
  if (!check_nesting (path, (const char *) bytes + LENGTH_FIELD_SIZE, header_size, error))
    return FALSE;

  header->parser = json_parser_new_immutable ();
  if (!json_parser_load_from_data (header->parser, (const char *) bytes + LENGTH_FIELD_SIZE,
                                   (gssize) header_size, &local))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: the header is not valid JSON: %s", path, local->message);
      return FALSE;
    }
  root = json_parser_get_root (header->parser);
  if (root == NULL || !JSON_NODE_HOLDS_OBJECT (root))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: the header is not a JSON object", path);
      return FALSE;
    }

  header->data = bytes + LENGTH_FIELD_SIZE + header_size;
  header->data_size = header->file_size - LENGTH_FIELD_SIZE - header_size;
  header->entries = g_array_new (FALSE, TRUE, sizeof (Entry));
  json_object_iter_init (&iter, json_node_get_object (root));
  while (json_object_iter_next (&iter, &name, &node))
    {
      Entry entry = { 0 };

      if (g_str_equal (name, "__metadata__"))
        {
          if (!JSON_NODE_HOLDS_OBJECT (node))
            {
              g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                           "%s: __metadata__ is not an object", path);
              return FALSE;
            }
          header->metadata = json_node_get_object (node);
          if (!check_metadata (path, header->metadata, error))
            return FALSE;
          continue;
        }
      if (!parse_entry (path, name, node, header->data_size, &entry, error))
        return FALSE;
      g_array_append_val (header->entries, entry);
    }
  return check_coverage (path, header, error);
}

static void
add_slot (GArray *slots, char *name, float *data, int n_dims, const gint64 *shape)
{
  Slot slot = { .name = name, .n_dims = n_dims, .data = data };

  memcpy (slot.shape, shape, n_dims * sizeof *shape);
  g_array_append_val (slots, slot);
}

static void
add_net_slots (GArray *slots, const char *prefix, EadNet *net)
{
  for (int i = 0; i < net->n_layers; i++)
    {
      const EadLayer *layer = &net->layers[i];
      gint64 weight_shape[4] = { layer->out_channels, layer->in_channels, layer->kernel,
                                 layer->kernel };
      gint64 bias_shape[1] = { layer->out_channels };

      if (layer->kind != EAD_LAYER_CONV)
        continue;
      add_slot (slots, g_strdup_printf ("%s.%d.weight", prefix, i), net->weight[i], 4,
                weight_shape);
      add_slot (slots, g_strdup_printf ("%s.%d.bias", prefix, i), net->bias[i], 1, bias_shape);
    }
}

/* Every tensor of the model in file order: the networks by layer index, then the
 * teacher statistics. */
static GArray *
model_slots (EadModel *model)
{
  static const gint64 channels_shape[1] = { EAD_TEACHER_CHANNELS };
  GArray *slots = g_array_new (FALSE, TRUE, sizeof (Slot));

  g_array_set_clear_func (slots, (GDestroyNotify) slot_clear);
  add_net_slots (slots, "teacher", model->teacher);
  add_net_slots (slots, "student", model->student);
  add_net_slots (slots, "autoencoder", model->autoencoder);
  add_slot (slots, g_strdup ("teacher_mean"), model->teacher_mean, 1, channels_shape);
  add_slot (slots, g_strdup ("teacher_std"), model->teacher_std, 1, channels_shape);
  return slots;
}

static gboolean
shape_matches (const Entry *entry, const Slot *slot)
{
  if (json_array_get_length (entry->shape) != (guint) slot->n_dims)
    return FALSE;
  for (int i = 0; i < slot->n_dims; i++)
    if (json_array_get_int_element (entry->shape, i) != slot->shape[i])
      return FALSE;
  return TRUE;
}

static void
convert_tensor (const Header *header, const Entry *entry, float *dst)
{
  const guint8 *src = header->data + entry->begin;

  switch (entry->dtype)
    {
    case DTYPE_F32:
      for (guint64 i = 0; i < entry->n_elements; i++)
        dst[i] = float_from_bits (load_le32 (src + 4 * i));
      break;
    case DTYPE_F16:
      for (guint64 i = 0; i < entry->n_elements; i++)
        dst[i] = half_to_float (load_le16 (src + 2 * i));
      break;
    case DTYPE_BF16:
      for (guint64 i = 0; i < entry->n_elements; i++)
        dst[i] = float_from_bits ((guint32) load_le16 (src + 2 * i) << 16);
      break;
    }
}

static gboolean
read_tensors (const char *path, const Header *header, EadModel *model, GError **error)
{
  g_autoptr(GArray) slots = model_slots (model);
  g_autoptr(GHashTable) by_name = g_hash_table_new (g_str_hash, g_str_equal);
  g_autoptr(GHashTable) expected = g_hash_table_new (g_str_hash, g_str_equal);

  for (guint i = 0; i < header->entries->len; i++)
    {
      Entry *entry = &g_array_index (header->entries, Entry, i);
      g_hash_table_insert (by_name, (gpointer) entry->name, entry);
    }
  for (guint i = 0; i < slots->len; i++)
    {
      const Slot *slot = &g_array_index (slots, Slot, i);
      const Entry *entry = g_hash_table_lookup (by_name, slot->name);

      g_hash_table_add (expected, slot->name);
      if (entry == NULL)
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                       "%s: tensor %s is missing (an %s bundle needs it)", path, slot->name,
                       ead_arch_name (model->arch));
          return FALSE;
        }
      if (!shape_matches (entry, slot))
        {
          g_autofree char *found = format_json_shape (entry->shape);
          g_autofree char *wanted = format_slot_shape (slot);

          g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT, "%s: %s has shape %s, expected %s",
                       path, slot->name, found, wanted);
          return FALSE;
        }
    }
  for (guint i = 0; i < header->entries->len; i++)
    {
      const Entry *entry = &g_array_index (header->entries, Entry, i);

      if (!g_hash_table_contains (expected, entry->name))
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                       "%s: unexpected tensor %s (not part of an %s model)", path, entry->name,
                       ead_arch_name (model->arch));
          return FALSE;
        }
    }
  for (guint i = 0; i < slots->len; i++)
    {
      const Slot *slot = &g_array_index (slots, Slot, i);
      convert_tensor (header, g_hash_table_lookup (by_name, slot->name), slot->data);
    }
  return TRUE;
}

static const char *
metadata_lookup (JsonObject *metadata, const char *key)
{
  return json_object_has_member (metadata, key) ? json_object_get_string_member (metadata, key)
                                                : NULL;
}

static const char *
metadata_require (const char *path, JsonObject *metadata, const char *key, GError **error)
{
  const char *value = metadata_lookup (metadata, key);

  if (value == NULL)
    g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                 "%s: metadata key %s is missing; not an EfficientAD model bundle", path, key);
  return value;
}

static gboolean
read_input_size (const char *path, JsonObject *metadata, const char *key, int *size,
                 GError **error)
{
  const char *text = metadata_require (path, metadata, key, error);
  gint64 value;

  if (text == NULL)
    return FALSE;
  if (!g_ascii_string_to_signed (text, 10, EAD_MIN_INPUT_SIZE, EAD_BUNDLE_MAX_INPUT_SIZE,
                                 &value, NULL))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: %s is '%s', expected an integer from %d to %d", path, key, text,
                   EAD_MIN_INPUT_SIZE, EAD_BUNDLE_MAX_INPUT_SIZE);
      return FALSE;
    }
  *size = (int) value;
  return TRUE;
}

static gboolean
read_quantile (const char *path, JsonObject *metadata, const char *key, double *quantile,
               GError **error)
{
  const char *text = metadata_require (path, metadata, key, error);
  char *end = NULL;
  double value;

  if (text == NULL)
    return FALSE;
  errno = 0;
  value = g_ascii_strtod (text, &end);
  if (end == text || *end != '\0' || errno == ERANGE || !isfinite (value))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: %s is '%s', expected a finite number", path, key, text);
      return FALSE;
    }
  *quantile = value;
  return TRUE;
}

static gboolean
read_arch (const char *path, JsonObject *metadata, EadArch *arch, GError **error)
{
  const char *version = metadata_lookup (metadata, KEY_FORMAT_VERSION);
  const char *name;

  if (version != NULL && !g_str_equal (version, FORMAT_VERSION))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
                   "%s: bundle format version '%s'; this program reads version %s", path,
                   version, FORMAT_VERSION);
      return FALSE;
    }
  name = metadata_require (path, metadata, KEY_ARCH, error);
  if (name == NULL)
    return FALSE;
  if (g_str_equal (name, ead_arch_name (EAD_ARCH_SMALL)))
    *arch = EAD_ARCH_SMALL;
  else if (g_str_equal (name, ead_arch_name (EAD_ARCH_MEDIUM)))
    *arch = EAD_ARCH_MEDIUM;
  else
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
                   "%s: %s is '%s', expected %s or %s", path, KEY_ARCH, name,
                   ead_arch_name (EAD_ARCH_SMALL), ead_arch_name (EAD_ARCH_MEDIUM));
      return FALSE;
    }
  return TRUE;
}

static gboolean
is_field_key (const char *key)
{
  for (guint i = 0; i < G_N_ELEMENTS (field_keys); i++)
    if (g_str_equal (key, field_keys[i]))
      return TRUE;
  return FALSE;
}

static void
keep_extra_metadata (JsonObject *metadata, GHashTable *table)
{
  JsonObjectIter iter;
  const char *key;
  JsonNode *value;

  json_object_iter_init (&iter, metadata);
  while (json_object_iter_next (&iter, &key, &value))
    if (!is_field_key (key))
      g_hash_table_replace (table, g_strdup (key), g_strdup (json_node_get_string (value)));
}

EadModel *
ead_bundle_read (const char *path, GError **error)
{
  g_auto(Header) header = { 0 };
  g_autoptr(EadModel) model = NULL;
  EadArch arch;

  g_return_val_if_fail (path != NULL, NULL);

  if (!parse_header (path, &header, error))
    return NULL;
  if (header.metadata == NULL)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: the header has no __metadata__; not an EfficientAD model bundle", path);
      return NULL;
    }
  if (!read_arch (path, header.metadata, &arch, error))
    return NULL;
  model = ead_model_new (arch);
  if (!read_input_size (path, header.metadata, KEY_INPUT_HEIGHT, &model->input_height, error)
      || !read_input_size (path, header.metadata, KEY_INPUT_WIDTH, &model->input_width, error)
      || !read_quantile (path, header.metadata, KEY_Q_ST_A, &model->q_st_a, error)
      || !read_quantile (path, header.metadata, KEY_Q_ST_B, &model->q_st_b, error)
      || !read_quantile (path, header.metadata, KEY_Q_AE_A, &model->q_ae_a, error)
      || !read_quantile (path, header.metadata, KEY_Q_AE_B, &model->q_ae_b, error)
      || !read_tensors (path, &header, model, error))
    return NULL;
  keep_extra_metadata (header.metadata, model->metadata);
  if (!ead_model_validate (model, path, error))
    return NULL;
  return g_steal_pointer (&model);
}

static int
compare_strings (const void *a, const void *b)
{
  return strcmp (*(const char *const *) a, *(const char *const *) b);
}

EadBundleInfo *
ead_bundle_read_info (const char *path, GError **error)
{
  g_auto(Header) header = { 0 };
  g_autoptr(GPtrArray) names = g_ptr_array_new ();
  EadBundleInfo *info;

  g_return_val_if_fail (path != NULL, NULL);

  if (!parse_header (path, &header, error))
    return NULL;
  info = g_new0 (EadBundleInfo, 1);
  info->metadata = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  if (header.metadata != NULL)
    {
      JsonObjectIter iter;
      const char *key;
      JsonNode *value;

      json_object_iter_init (&iter, header.metadata);
      while (json_object_iter_next (&iter, &key, &value))
        g_hash_table_replace (info->metadata, g_strdup (key),
                              g_strdup (json_node_get_string (value)));
    }
  info->n_tensors = header.entries->len;
  info->file_size = header.file_size;
  for (guint i = 0; i < header.entries->len; i++)
    {
      const Entry *entry = &g_array_index (header.entries, Entry, i);

      info->n_elements += entry->n_elements;
      if (!g_ptr_array_find_with_equal_func (names, entry->dtype_name, g_str_equal, NULL))
        g_ptr_array_add (names, (gpointer) entry->dtype_name);
    }
  g_ptr_array_sort (names, compare_strings);
  g_ptr_array_add (names, NULL);
  info->dtypes = g_strjoinv (", ", (char **) names->pdata);
  return info;
}

void
ead_bundle_info_free (EadBundleInfo *info)
{
  if (info == NULL)
    return;
  g_hash_table_unref (info->metadata);
  g_free (info->dtypes);
  g_free (info);
}

static void
set_formatted (GHashTable *table, const char *key, double value)
{
  char buffer[G_ASCII_DTOSTR_BUF_SIZE];

  g_hash_table_replace (table, g_strdup (key),
                        g_strdup (g_ascii_formatd (buffer, sizeof buffer, "%.17g", value)));
}

/* The caller's metadata with the keys computed from the model on top. */
static GHashTable *
bundle_metadata (const EadModel *model)
{
  GHashTable *table = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  GHashTableIter iter;
  gpointer key, value;

  g_hash_table_iter_init (&iter, model->metadata);
  while (g_hash_table_iter_next (&iter, &key, &value))
    g_hash_table_replace (table, g_strdup (key), g_strdup (value));
  g_hash_table_replace (table, g_strdup (KEY_FORMAT_VERSION), g_strdup (FORMAT_VERSION));
  g_hash_table_replace (table, g_strdup (KEY_ARCH), g_strdup (ead_arch_name (model->arch)));
  g_hash_table_replace (table, g_strdup (KEY_INPUT_HEIGHT),
                        g_strdup_printf ("%d", model->input_height));
  g_hash_table_replace (table, g_strdup (KEY_INPUT_WIDTH),
                        g_strdup_printf ("%d", model->input_width));
  set_formatted (table, KEY_Q_ST_A, model->q_st_a);
  set_formatted (table, KEY_Q_ST_B, model->q_st_b);
  set_formatted (table, KEY_Q_AE_A, model->q_ae_a);
  set_formatted (table, KEY_Q_AE_B, model->q_ae_b);
  return table;
}

static gboolean
check_metadata_utf8 (const char *path, GHashTable *metadata, GError **error)
{
  GHashTableIter iter;
  gpointer key, value;

  g_hash_table_iter_init (&iter, metadata);
  while (g_hash_table_iter_next (&iter, &key, &value))
    if (!g_utf8_validate (key, -1, NULL) || !g_utf8_validate (value, -1, NULL))
      {
        g_autofree char *shown = g_utf8_make_valid (key, -1);

        g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                     "%s: metadata entry %s is not valid UTF-8 (not written)", path, shown);
        return FALSE;
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
build_header (GHashTable *metadata, GArray *slots)
{
  g_autoptr(JsonBuilder) builder = json_builder_new_immutable ();
  g_autoptr(JsonGenerator) generator = json_generator_new ();
  g_autoptr(JsonNode) root = NULL;
  g_autofree gpointer *keys = NULL;
  guint n_keys;
  gint64 offset = 0;
  GString *text;

  json_builder_begin_object (builder);
  json_builder_set_member_name (builder, "__metadata__");
  json_builder_begin_object (builder);
  keys = g_hash_table_get_keys_as_array (metadata, &n_keys);
  qsort (keys, n_keys, sizeof *keys, compare_strings);
  for (guint i = 0; i < n_keys; i++)
    {
      json_builder_set_member_name (builder, keys[i]);
      json_builder_add_string_value (builder, g_hash_table_lookup (metadata, keys[i]));
    }
  json_builder_end_object (builder);
  for (guint i = 0; i < slots->len; i++)
    {
      const Slot *slot = &g_array_index (slots, Slot, i);
      gint64 count = 1;
      gint64 offsets[2];

      for (int d = 0; d < slot->n_dims; d++)
        count *= slot->shape[d];
      offsets[0] = offset;
      offsets[1] = offset + count * (gint64) sizeof (float);
      offset = offsets[1];
      json_builder_set_member_name (builder, slot->name);
      json_builder_begin_object (builder);
      json_builder_set_member_name (builder, "dtype");
      json_builder_add_string_value (builder, dtypes[DTYPE_F32].name);
      json_builder_set_member_name (builder, "shape");
      build_int_array (builder, slot->shape, slot->n_dims);
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
write_contents (int fd, const char *path, const GString *header, GArray *slots,
                GError **error)
{
  g_autofree guint32 *chunk = g_new (guint32, WRITE_CHUNK_FLOATS);
  guint8 length_field[LENGTH_FIELD_SIZE];
  int err;

  for (int i = 0; i < LENGTH_FIELD_SIZE; i++)
    length_field[i] = (guint8) ((guint64) header->len >> (8 * i));
  err = write_all (fd, length_field, sizeof length_field);
  if (err == 0)
    err = write_all (fd, header->str, header->len);
  for (guint s = 0; s < slots->len && err == 0; s++)
    {
      const Slot *slot = &g_array_index (slots, Slot, s);
      gsize count = 1;

      for (int d = 0; d < slot->n_dims; d++)
        count *= (gsize) slot->shape[d];
      for (gsize start = 0; start < count && err == 0; start += WRITE_CHUNK_FLOATS)
        {
          gsize n = MIN (WRITE_CHUNK_FLOATS, count - start);

          for (gsize i = 0; i < n; i++)
            chunk[i] = GUINT32_TO_LE (float_bits (slot->data[start + i]));
          err = write_all (fd, chunk, n * sizeof *chunk);
        }
    }
  if (err != 0)
    return set_errno_error (error, path, "cannot write the model bundle", err);
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
ead_bundle_write (const EadModel *model, const char *path, GError **error)
{
  g_autoptr(GError) invalid = NULL;
  g_autoptr(GHashTable) metadata = NULL;
  g_autoptr(GArray) slots = NULL;
  g_autoptr(GString) header = NULL;
  g_autofree char *temp_path = NULL;
  g_autofree char *directory = NULL;
  gboolean ok;
  int fd;

  g_return_val_if_fail (model != NULL, FALSE);
  g_return_val_if_fail (path != NULL, FALSE);

  if (!ead_model_validate (model, path, &invalid))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID, "%s (not written)", invalid->message);
      return FALSE;
    }
  metadata = bundle_metadata (model);
  if (!check_metadata_utf8 (path, metadata, error))
    return FALSE;
  /* model_slots wants a mutable model only because the reader fills the same slots */
  slots = model_slots ((EadModel *) model);
  header = build_header (metadata, slots);

  directory = g_path_get_dirname (path);
  temp_path = g_strconcat (path, ".tmp-XXXXXX", NULL);
  fd = g_mkstemp_full (temp_path, O_WRONLY | O_CLOEXEC, 0666);
  if (fd < 0)
    {
      int saved = errno;
      g_autofree char *what = g_strdup_printf ("cannot create a file in %s", directory);
      return set_errno_error (error, path, what, saved);
    }
  ok = write_contents (fd, path, header, slots, error);
  if (ok && fsync (fd) != 0)
    ok = set_errno_error (error, path, "cannot flush the model bundle to disk", errno);
  if (close (fd) != 0 && ok)
    ok = set_errno_error (error, path, "cannot write the model bundle", errno);
  if (ok && rename (temp_path, path) != 0)
    ok = set_errno_error (error, path, "cannot replace the file", errno);
  if (!ok)
    {
      g_unlink (temp_path);
      return FALSE;
    }
  return sync_directory (path, directory, error);
}
