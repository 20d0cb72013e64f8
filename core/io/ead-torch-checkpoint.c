/* ead-torch-checkpoint.c: torch.save zip archives through libzip and the restricted
 * unpickler (see ead-torch-checkpoint.h). */
#include "ead-torch-checkpoint.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <zip.h>

#include <glib/gstdio.h>

#include "ead-error.h"

/* The start of torch.save's legacy format: PROTO 2, then LONG1 of 10 bytes holding
 * torch.serialization's MAGIC_NUMBER 0x1950a86a20f9469cfc6c. */
static const guint8 legacy_magic[] = { 0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46,
                                       0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19 };
static const guint8 zip_magic[] = { 'P', 'K', 0x03, 0x04 };

static void
tensor_free (gpointer data)
{
  EadTorchTensor *tensor = data;

  g_free (tensor->name);
  g_free (tensor->data);
  g_free (tensor);
}

void
ead_torch_checkpoint_free (EadTorchCheckpoint *checkpoint)
{
  if (checkpoint == NULL)
    return;
  g_free (checkpoint->path);
  g_free (checkpoint->container_key);
  if (checkpoint->tensors != NULL)
    g_ptr_array_unref (checkpoint->tensors);
  g_free (checkpoint);
}

const EadTorchTensor *
ead_torch_checkpoint_lookup (const EadTorchCheckpoint *checkpoint, const char *name)
{
  for (guint i = 0; i < checkpoint->tensors->len; i++)
    {
      const EadTorchTensor *tensor = checkpoint->tensors->pdata[i];

      if (g_str_equal (tensor->name, name))
        return tensor;
    }
  return NULL;
}

char *
ead_torch_shape_string (int n_dims, const gint64 *shape)
{
  GString *text = g_string_new ("[");

  for (int d = 0; d < n_dims; d++)
    g_string_append_printf (text, "%s%" G_GINT64_FORMAT, d > 0 ? ", " : "", shape[d]);
  g_string_append_c (text, ']');
  return g_string_free (text, FALSE);
}

/* ---- the file ---- */

/* Says why a file that libzip cannot open is not a checkpoint we read, from its first got
 * bytes (head). */
static void
explain_not_zip (const char *path, const guint8 *head, gsize got, const char *reason,
                 GError **error)
{
  if (got >= sizeof legacy_magic && memcmp (head, legacy_magic, sizeof legacy_magic) == 0)
    g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
                 "%s: the legacy torch.save format of PyTorch < 1.6 is not supported; re-save "
                 "it with a newer PyTorch: torch.save(torch.load(OLD), NEW)", path);
  else if (got >= sizeof zip_magic && memcmp (head, zip_magic, sizeof zip_magic) == 0)
    g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                 "%s: a truncated or corrupt zip archive (%s)", path, reason);
  else if (got >= 1 && head[0] == 0x80)
    g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                 "%s: a bare pickle, not a torch.save checkpoint (a zip archive)", path);
  else
    g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                 "%s: not a PyTorch checkpoint: torch.save writes a zip archive (%s)", path,
                 reason);
}

static zip_t *
open_archive (const char *path, GError **error)
{
  GStatBuf st;
  zip_t *zip;
  zip_error_t zip_error;
  int code = 0;

  if (g_stat (path, &st) != 0)
    {
      int saved = errno;

      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot open the file: %s", path,
                   g_strerror (saved));
      return NULL;
    }
  if (!S_ISREG (st.st_mode))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: not a regular file", path);
      return NULL;
    }
  zip = zip_open (path, ZIP_RDONLY, &code);
  if (zip != NULL)
    return zip;
  zip_error_init_with_code (&zip_error, code);
  if (code == ZIP_ER_OPEN || code == ZIP_ER_READ || code == ZIP_ER_MEMORY)
    g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot read the file: %s", path,
                 zip_error_strerror (&zip_error));
  else
    {
      guint8 head[sizeof legacy_magic] = { 0 };
      gsize got = 0;
      FILE *file = g_fopen (path, "rb");

      if (file != NULL)
        {
          got = fread (head, 1, sizeof head, file);
          fclose (file);
        }
      explain_not_zip (path, head, got, zip_error_strerror (&zip_error), error);
    }
  zip_error_fini (&zip_error);
  return NULL;
}

/* The archive in data[0..size), which must outlive it: libzip reads it in place. */
static zip_t *
open_archive_bytes (const guint8 *data, gsize size, const char *name, GError **error)
{
  zip_source_t *source;
  zip_error_t zip_error;
  zip_t *zip;

  zip_error_init (&zip_error);
  source = zip_source_buffer_create (data, size, 0, &zip_error);
  zip = source != NULL ? zip_open_from_source (source, ZIP_RDONLY, &zip_error) : NULL;
  if (zip == NULL)
    {
      if (source != NULL)
        zip_source_free (source);
      explain_not_zip (name, data, MIN (size, sizeof legacy_magic),
                       zip_error_strerror (&zip_error), error);
    }
  zip_error_fini (&zip_error);
  return zip;
}

/* The whole of an entry, checked against libzip's CRC; entries over max_size are refused
 * before anything is allocated. */
static guint8 *
read_entry (zip_t *zip, zip_uint64_t index, const char *path, guint64 max_size, gsize *size,
            GError **error)
{
  g_autofree guint8 *data = NULL;
  const char *name = zip_get_name (zip, index, 0);
  zip_stat_t st;
  zip_file_t *file;
  guint64 done = 0;
  zip_int64_t n;

  zip_stat_init (&st);
  if (zip_stat_index (zip, index, 0, &st) != 0 || !(st.valid & ZIP_STAT_SIZE))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT, "%s: %s: unreadable zip entry: %s", path,
                   name, zip_strerror (zip));
      return NULL;
    }
  if (st.size > max_size)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_LIMIT,
                   "%s: %s: %" G_GUINT64_FORMAT " bytes (at most %" G_GUINT64_FORMAT ")", path,
                   name, (guint64) st.size, max_size);
      return NULL;
    }
  file = zip_fopen_index (zip, index, 0);
  if (file == NULL)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT, "%s: %s: cannot read the zip entry: %s",
                   path, name, zip_strerror (zip));
      return NULL;
    }
  data = g_malloc (MAX (st.size, 1));
  while (done < st.size && (n = zip_fread (file, data + done, st.size - done)) > 0)
    done += n;
  if (done < st.size)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT, "%s: %s: truncated or corrupt zip entry "
                   "(%s)", path, name, zip_file_strerror (file));
      zip_fclose (file);
      return NULL;
    }
  if (zip_fclose (file) != 0)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT, "%s: %s: corrupt zip entry", path, name);
      return NULL;
    }
  *size = st.size;
  return g_steal_pointer (&data);
}

/* The index of "<archive>/data.pkl", the archive folder being whatever torch.save named
 * it (the file's stem, or "archive").  The folder must be named in UTF-8, as torch.save
 * does: the names of the records read then are, and so are the messages that show them. */
static gboolean
find_pickle (zip_t *zip, const char *path, zip_uint64_t *index, char **prefix, GError **error)
{
  zip_int64_t count = zip_get_num_entries (zip, 0);

  for (zip_int64_t i = 0; i < count; i++)
    {
      const char *name = zip_get_name (zip, i, 0);
      const char *slash = name != NULL ? strchr (name, '/') : NULL;

      if (slash != NULL && slash != name && g_str_equal (slash, "/data.pkl"))
        {
          if (!g_utf8_validate (name, slash - name, NULL))
            {
              g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                           "%s: the folder of data.pkl has a name that is not UTF-8", path);
              return FALSE;
            }
          *index = i;
          *prefix = g_strndup (name, slash - name);
          return TRUE;
        }
    }
  g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
               "%s: a zip archive without data.pkl: not a torch.save checkpoint", path);
  return FALSE;
}

/* The storages are raw native-endian elements; torch.save records which end in
 * "<archive>/byteorder" (PyTorch >= 1.13; older files are little-endian). */
static gboolean
check_byteorder (zip_t *zip, const char *path, const char *prefix, GError **error)
{
  g_autofree char *name = g_strconcat (prefix, "/byteorder", NULL);
  g_autofree guint8 *data = NULL;
  g_autofree char *text = NULL;
  g_autofree char *shown = NULL;
  zip_int64_t index = zip_name_locate (zip, name, 0);
  gsize size;

  if (index < 0)
    return TRUE;
  data = read_entry (zip, index, path, 16, &size, error);
  if (data == NULL)
    return FALSE;
  if (size == 6 && memcmp (data, "little", 6) == 0)
    return TRUE;
  /* the record is any bytes: escaped, so that the message stays UTF-8 */
  text = g_strndup ((const char *) data, size);
  shown = g_strescape (text, NULL);
  g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
               "%s: storages of byte order '%s' (only little-endian is supported)", path,
               shown);
  return FALSE;
}

/* ---- the state_dict ---- */

static gboolean
is_state_dict (const EadPickleValue *value)
{
  if (value->kind != EAD_PICKLE_DICT || value->dict.values->len == 0)
    return FALSE;
  for (guint i = 0; i < value->dict.values->len; i++)
    if (((const EadPickleValue *) value->dict.values->pdata[i])->kind != EAD_PICKLE_TENSOR)
      return FALSE;
  return TRUE;
}

static const char *
key_text (const EadPickleValue *dict, guint i)
{
  return ((const EadPickleValue *) dict->dict.keys->pdata[i])->string.text;
}

static char *
list_keys (const EadPickleValue *dict)
{
  GString *text = g_string_new (NULL);
  guint shown = MIN (dict->dict.keys->len, 8);

  for (guint i = 0; i < shown; i++)
    g_string_append_printf (text, "%s'%s'", i > 0 ? ", " : "", key_text (dict, i));
  if (shown < dict->dict.keys->len)
    g_string_append_printf (text, ", ... (%u keys)", dict->dict.keys->len);
  return g_string_free (text, FALSE);
}

/* The root itself, or the only state_dict among its values. */
static const EadPickleValue *
find_state_dict (const EadPickleValue *root, const char *path, char **container_key,
                 GError **error)
{
  g_autofree char *keys = NULL;
  guint found = 0;
  guint n_found = 0;

  if (root->kind != EAD_PICKLE_DICT)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT, "%s: holds a %s, not a state_dict", path,
                   ead_pickle_kind_name (root->kind));
      return NULL;
    }
  if (is_state_dict (root))
    return root;
  for (guint i = 0; i < root->dict.values->len; i++)
    if (is_state_dict (root->dict.values->pdata[i]))
      {
        found = i;
        n_found++;
      }
  if (n_found == 1)
    {
      *container_key = g_strdup (key_text (root, found));
      return root->dict.values->pdata[found];
    }
  keys = list_keys (root);
  if (n_found > 1)
    g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                 "%s: holds %u state_dicts (keys %s); save the one to import on its own", path,
                 n_found, keys);
  else if (root->dict.keys->len == 0)
    g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT, "%s: holds an empty dict", path);
  else
    g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                 "%s: holds a dict (keys %s) that is not a state_dict (str → tensor) and "
                 "contains none", path, keys);
  return NULL;
}

/* ---- storages and tensors ---- */

typedef struct {
  EadTorchDtype dtype;
  guint64 numel;
  guint8 *data;
} Storage;

static void
storage_free (gpointer data)
{
  Storage *storage = data;

  g_free (storage->data);
  g_free (storage);
}

static float
half_to_float (guint16 half)
{
  guint32 sign = (guint32) (half & 0x8000) << 16;
  guint32 exponent = (half >> 10) & 0x1f;
  guint32 mantissa = half & 0x3ff;
  guint32 bits;
  float value;

  if (exponent == 0)
    /* zero and subnormals: mantissa * 2^-24 is exact in float */
    return (sign ? -1.0f : 1.0f) * ldexpf ((float) mantissa, -24);
  if (exponent == 0x1f)
    bits = sign | 0x7f800000 | mantissa << 13;
  else
    bits = sign | (exponent + 127 - 15) << 23 | mantissa << 13;
  memcpy (&value, &bits, sizeof value);
  return value;
}

static float
element (const guint8 *raw, EadTorchDtype dtype, guint64 i)
{
  guint64 bits = 0;
  gsize size = ead_torch_dtype_size (dtype);
  const guint8 *p = raw + i * size;
  float single;
  double twice;
  guint32 bits32;

  for (gsize b = 0; b < size; b++)
    bits |= (guint64) p[b] << (8 * b);
  switch (dtype)
    {
    case EAD_TORCH_FLOAT16:
      return half_to_float (bits);
    case EAD_TORCH_BFLOAT16:
      bits32 = (guint32) bits << 16;
      memcpy (&single, &bits32, sizeof single);
      return single;
    case EAD_TORCH_FLOAT64:
      memcpy (&twice, &bits, sizeof twice);
      return (float) twice;
    case EAD_TORCH_INT64:
      return (float) (gint64) bits;
    case EAD_TORCH_FLOAT32:
    default:
      bits32 = bits;
      memcpy (&single, &bits32, sizeof single);
      return single;
    }
}

/* The storage of a tensor, read once per key. */
static const Storage *
load_storage (zip_t *zip, const char *path, const char *prefix, GHashTable *storages,
              const EadPickleValue *value, guint64 *budget, GError **error)
{
  const char *key = value->storage.key;
  Storage *storage = g_hash_table_lookup (storages, key);
  g_autofree char *name = NULL;
  zip_int64_t index;
  gsize size;
  guint64 expected;

  if (storage != NULL)
    {
      if (storage->dtype != value->storage.dtype || storage->numel != value->storage.numel)
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                       "%s: storage '%s' is described in two different ways", path, key);
          return NULL;
        }
      return storage;
    }
  if (value->storage.numel > *budget)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_LIMIT,
                   "%s: storages of more than %" G_GUINT64_FORMAT " elements in all", path,
                   EAD_TORCH_MAX_ELEMENTS);
      return NULL;
    }
  *budget -= value->storage.numel;
  expected = value->storage.numel * ead_torch_dtype_size (value->storage.dtype);
  name = g_strconcat (prefix, "/data/", key, NULL);
  index = zip_name_locate (zip, name, 0);
  if (index < 0)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT, "%s: the storage record %s is missing",
                   path, name);
      return NULL;
    }
  storage = g_new0 (Storage, 1);
  storage->dtype = value->storage.dtype;
  storage->numel = value->storage.numel;
  storage->data = read_entry (zip, index, path, expected, &size, error);
  if (storage->data == NULL || size != expected)
    {
      if (storage->data != NULL)
        g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                     "%s: %s holds %zu bytes, the pickle says %" G_GUINT64_FORMAT " %s elements",
                     path, name, size, storage->numel, ead_torch_dtype_name (storage->dtype));
      storage_free (storage);
      return NULL;
    }
  g_hash_table_insert (storages, (gpointer) key, storage);
  return storage;
}

/* The elements of a view in C order, through its offset and strides (ead_pickle_load has
 * checked that they all lie inside the storage). */
static void
gather (const Storage *storage, const EadPickleValue *value, float *out)
{
  const int n_dims = value->tensor.n_dims;
  const gint64 *size = value->tensor.size;
  const gint64 *stride = value->tensor.stride;
  gint64 index[EAD_PICKLE_MAX_DIMS] = { 0 };
  guint64 position = value->tensor.offset;

  for (guint64 i = 0; i < value->tensor.n_elements; i++)
    {
      out[i] = element (storage->data, storage->dtype, position);
      for (int d = n_dims - 1; d >= 0; d--)
        {
          index[d]++;
          position += stride[d];
          if (index[d] < size[d])
            break;
          position -= (guint64) stride[d] * size[d];
          index[d] = 0;
        }
    }
}

/* The checkpoint in an open archive, which it closes; path names it in messages. */
static EadTorchCheckpoint *
read_archive (zip_t *zip, const char *path, GError **error)
{
  g_autoptr (EadTorchCheckpoint) checkpoint = g_new0 (EadTorchCheckpoint, 1);
  g_autoptr (EadPickle) pickle = NULL;
  g_autoptr (GHashTable) storages = NULL;
  g_autofree char *prefix = NULL;
  g_autofree guint8 *bytes = NULL;
  const EadPickleValue *state;
  zip_uint64_t index;
  guint64 storage_budget = EAD_TORCH_MAX_ELEMENTS;
  guint64 output_budget = EAD_TORCH_MAX_ELEMENTS;
  gsize size;
  gboolean ok = FALSE;

  checkpoint->path = g_strdup (path);
  checkpoint->tensors = g_ptr_array_new_with_free_func (tensor_free);
  storages = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, storage_free);

  if (!find_pickle (zip, path, &index, &prefix, error)
      || !check_byteorder (zip, path, prefix, error))
    goto out;
  bytes = read_entry (zip, index, path, EAD_PICKLE_MAX_SIZE, &size, error);
  if (bytes == NULL)
    goto out;
  pickle = ead_pickle_load (bytes, size, error);
  if (pickle == NULL)
    {
      g_prefix_error (error, "%s: %s/data.pkl: ", path, prefix);
      goto out;
    }
  state = find_state_dict (ead_pickle_get_root (pickle), path, &checkpoint->container_key,
                           error);
  if (state == NULL)
    goto out;

  for (guint i = 0; i < state->dict.keys->len; i++)
    {
      const EadPickleValue *value = state->dict.values->pdata[i];
      const Storage *storage;
      EadTorchTensor *tensor;

      if (value->tensor.n_elements > output_budget)
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_LIMIT,
                       "%s: tensors of more than %" G_GUINT64_FORMAT " elements in all", path,
                       EAD_TORCH_MAX_ELEMENTS);
          goto out;
        }
      output_budget -= value->tensor.n_elements;
      storage = load_storage (zip, path, prefix, storages, value->tensor.storage,
                              &storage_budget, error);
      if (storage == NULL)
        goto out;
      tensor = g_new0 (EadTorchTensor, 1);
      tensor->name = g_strdup (key_text (state, i));
      tensor->dtype = storage->dtype;
      tensor->n_dims = value->tensor.n_dims;
      memcpy (tensor->shape, value->tensor.size, tensor->n_dims * sizeof *tensor->shape);
      tensor->n_elements = value->tensor.n_elements;
      tensor->data = g_new (float, MAX (tensor->n_elements, 1));
      gather (storage, value, tensor->data);
      g_ptr_array_add (checkpoint->tensors, tensor);
    }
  ok = TRUE;

out:
  zip_discard (zip);
  return ok ? g_steal_pointer (&checkpoint) : NULL;
}

EadTorchCheckpoint *
ead_torch_checkpoint_read (const char *path, GError **error)
{
  zip_t *zip = open_archive (path, error);

  return zip != NULL ? read_archive (zip, path, error) : NULL;
}

EadTorchCheckpoint *
ead_torch_checkpoint_read_bytes (const guint8 *data, gsize size, const char *name,
                                 GError **error)
{
  zip_t *zip = open_archive_bytes (data, size, name, error);

  return zip != NULL ? read_archive (zip, name, error) : NULL;
}
