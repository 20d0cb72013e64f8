/* fuzz-pickle.c: libFuzzer target for the restricted unpickler (core/io/ead-pickle.c).
 *
 * Every input must give either a value or an EAD_ERROR of a documented code with a
 * message, never a crash, a leak or a GLib warning.  An accepted pickle is walked whole
 * (iteratively: the memo makes cycles and the stack allows a million levels) and must keep
 * the promises of ead-pickle.h that ead-torch-checkpoint.c relies on: strings are
 * NUL-terminated UTF-8 of their length, dict keys are distinct strings that lookups find,
 * and a tensor addresses only elements inside its storage.
 *
 * Seeds: the data.pkl of each tests/fixtures/pth checkpoint (see make-seeds.py).
 */
#include <string.h>

#include "ead-error.h"
#include "ead-pickle.h"

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const guint8 *data, size_t size);

static void
check_string (const EadPickleValue *value)
{
  g_assert_nonnull (value->string.text);
  g_assert_cmpuint (strlen (value->string.text), ==, value->string.length);
  g_assert_true (g_utf8_validate (value->string.text, value->string.length, NULL));
}

static void
check_dict (const EadPickleValue *dict)
{
  g_assert_cmpuint (dict->dict.keys->len, ==, dict->dict.values->len);
  for (guint i = 0; i < dict->dict.keys->len; i++)
    {
      const EadPickleValue *key = dict->dict.keys->pdata[i];
      const EadPickleValue *value = dict->dict.values->pdata[i];

      g_assert_cmpint (key->kind, ==, EAD_PICKLE_STRING);
      check_string (key);
      g_assert_true (ead_pickle_dict_lookup (dict, key->string.text) == value);
    }
}

/* The bounds check of _rebuild_tensor_v2 again, done the slow way with 128-bit sums. */
static void
check_tensor (const EadPickleValue *tensor)
{
  const EadPickleValue *storage = tensor->tensor.storage;
  unsigned __int128 last = tensor->tensor.offset, count = 1;

  g_assert_nonnull (storage);
  g_assert_cmpint (storage->kind, ==, EAD_PICKLE_STORAGE);
  g_assert_cmpint (tensor->tensor.n_dims, >=, 0);
  g_assert_cmpint (tensor->tensor.n_dims, <=, EAD_PICKLE_MAX_DIMS);
  for (int d = 0; d < tensor->tensor.n_dims; d++)
    {
      g_assert_cmpint (tensor->tensor.size[d], >=, 0);
      g_assert_cmpint (tensor->tensor.stride[d], >=, 0);
      count *= (guint64) tensor->tensor.size[d];
      if (tensor->tensor.size[d] > 0)
        last += (unsigned __int128) (tensor->tensor.size[d] - 1) * tensor->tensor.stride[d];
    }
  g_assert_true (count == tensor->tensor.n_elements);
  if (count > 0)
    g_assert_true (last < storage->storage.numel);
}

static void
check_value (const EadPickleValue *value)
{
  switch (value->kind)
    {
    case EAD_PICKLE_STRING:
      check_string (value);
      break;
    case EAD_PICKLE_DICT:
      check_dict (value);
      break;
    case EAD_PICKLE_GLOBAL:
      if (value->global.which == EAD_PICKLE_GLOBAL_STORAGE_TYPE)
        g_assert_nonnull (ead_torch_dtype_name (value->global.dtype));
      break;
    case EAD_PICKLE_STORAGE:
      g_assert_nonnull (value->storage.key);
      g_assert_nonnull (value->storage.location);
      g_assert_cmpuint (ead_torch_dtype_size (value->storage.dtype), >, 0);
      break;
    case EAD_PICKLE_TENSOR:
      check_tensor (value);
      break;
    case EAD_PICKLE_NONE:
    case EAD_PICKLE_BOOL:
    case EAD_PICKLE_INT:
    case EAD_PICKLE_FLOAT:
    case EAD_PICKLE_TUPLE:
    case EAD_PICKLE_LIST:
      break;
    default:
      g_error ("a value of unknown kind %d", value->kind);
    }
}

/* Checks every value reachable from root once. */
static void
check_graph (const EadPickleValue *root)
{
  g_autoptr (GHashTable) seen = g_hash_table_new (g_direct_hash, g_direct_equal);
  g_autoptr (GPtrArray) pending = g_ptr_array_new ();

  g_ptr_array_add (pending, (gpointer) root);
  while (pending->len > 0)
    {
      const EadPickleValue *value = g_ptr_array_steal_index_fast (pending, pending->len - 1);
      GPtrArray *children[2] = { NULL, NULL };

      g_assert_nonnull (value);
      if (!g_hash_table_add (seen, (gpointer) value))
        continue;
      check_value (value);
      if (value->kind == EAD_PICKLE_TUPLE || value->kind == EAD_PICKLE_LIST)
        children[0] = value->items;
      else if (value->kind == EAD_PICKLE_DICT)
        {
          children[0] = value->dict.keys;
          children[1] = value->dict.values;
        }
      else if (value->kind == EAD_PICKLE_TENSOR)
        g_ptr_array_add (pending, (gpointer) value->tensor.storage);
      for (int c = 0; c < 2; c++)
        for (guint i = 0; children[c] != NULL && i < children[c]->len; i++)
          g_ptr_array_add (pending, children[c]->pdata[i]);
    }
}

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  g_log_set_always_fatal (G_LOG_LEVEL_WARNING | G_LOG_LEVEL_CRITICAL);
  return 0;
}

int
LLVMFuzzerTestOneInput (const guint8 *data, size_t size)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadPickle) pickle = ead_pickle_load (data, size, &error);

  if (pickle == NULL)
    {
      g_assert_nonnull (error);
      g_assert_true (error->domain == EAD_ERROR);
      g_assert_true (error->code == EAD_ERROR_FORMAT || error->code == EAD_ERROR_UNSUPPORTED
                     || error->code == EAD_ERROR_LIMIT);
      g_assert_true (error->message[0] != '\0');
      g_assert_true (g_utf8_validate (error->message, -1, NULL));
      return 0;
    }
  g_assert_null (error);
  check_graph (ead_pickle_get_root (pickle));
  return 0;
}
