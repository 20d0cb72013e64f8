/* ead-pickle.c: the restricted unpickler (see ead-pickle.h).
 *
 * The machine follows CPython's _pickle.c where it matters: MARK sets a fence that pops
 * may not cross, BINPUT memoizes the top without popping, SETITEM(S) and APPEND(S) act on
 * the object below their arguments.  Every object lives in one array owned by the
 * EadPickle and is freed with it, so shared and even cyclic references (a list appended to
 * itself through the memo) need no reference counting and cannot leak.
 */
#include "ead-pickle.h"

#include <stdarg.h>
#include <string.h>

#include "ead-error.h"

/* A GLOBAL line ("module\n" or "name\n") longer than this is not a name we could allow. */
#define MAX_GLOBAL_LINE 256
/* Dicts this small are searched linearly; a hash index is built past this size, so that a
 * pickle of many small dicts costs no more than their entries. */
#define DICT_INDEX_THRESHOLD 16

struct _EadPickle {
  GPtrArray *objects;  /* every value made, owned */
  const EadPickleValue *root;
};

typedef struct {
  EadPickle *pickle;
  const guint8 *data;
  gsize size;
  gsize pos;        /* the next byte to read */
  gsize op_offset;  /* where the opcode being run starts */
  guint8 op;
  GPtrArray *stack;
  GArray *marks;    /* stack lengths at each MARK, as guint */
  GHashTable *memo; /* index → value */
  GError **error;
} Machine;

/* ---- opcodes ---- */

enum {
  OP_MARK = '(',
  OP_STOP = '.',
  OP_BININT = 'J',
  OP_BININT1 = 'K',
  OP_BININT2 = 'M',
  OP_NONE = 'N',
  OP_BINPERSID = 'Q',
  OP_REDUCE = 'R',
  OP_BINUNICODE = 'X',
  OP_APPEND = 'a',
  OP_BUILD = 'b',
  OP_GLOBAL = 'c',
  OP_EMPTY_DICT = '}',
  OP_APPENDS = 'e',
  OP_BINGET = 'h',
  OP_LONG_BINGET = 'j',
  OP_EMPTY_LIST = ']',
  OP_BINPUT = 'q',
  OP_LONG_BINPUT = 'r',
  OP_SETITEM = 's',
  OP_TUPLE = 't',
  OP_EMPTY_TUPLE = ')',
  OP_SETITEMS = 'u',
  OP_BINFLOAT = 'G',
  OP_PROTO = 0x80,
  OP_TUPLE1 = 0x85,
  OP_TUPLE2 = 0x86,
  OP_TUPLE3 = 0x87,
  OP_NEWTRUE = 0x88,
  OP_NEWFALSE = 0x89,
  OP_LONG1 = 0x8a,
};

/* The names of every opcode of protocols 0 to 5, so that a refusal says which one it
 * met (pickletools.dis shows the same names). */
static const char *
opcode_name (guint8 op)
{
  switch (op)
    {
    case '(': return "MARK";
    case '.': return "STOP";
    case '0': return "POP";
    case '1': return "POP_MARK";
    case '2': return "DUP";
    case 'F': return "FLOAT";
    case 'I': return "INT";
    case 'J': return "BININT";
    case 'K': return "BININT1";
    case 'L': return "LONG";
    case 'M': return "BININT2";
    case 'N': return "NONE";
    case 'P': return "PERSID";
    case 'Q': return "BINPERSID";
    case 'R': return "REDUCE";
    case 'S': return "STRING";
    case 'T': return "BINSTRING";
    case 'U': return "SHORT_BINSTRING";
    case 'V': return "UNICODE";
    case 'X': return "BINUNICODE";
    case 'a': return "APPEND";
    case 'b': return "BUILD";
    case 'c': return "GLOBAL";
    case 'd': return "DICT";
    case '}': return "EMPTY_DICT";
    case 'e': return "APPENDS";
    case 'g': return "GET";
    case 'h': return "BINGET";
    case 'i': return "INST";
    case 'j': return "LONG_BINGET";
    case 'l': return "LIST";
    case ']': return "EMPTY_LIST";
    case 'o': return "OBJ";
    case 'p': return "PUT";
    case 'q': return "BINPUT";
    case 'r': return "LONG_BINPUT";
    case 's': return "SETITEM";
    case 't': return "TUPLE";
    case ')': return "EMPTY_TUPLE";
    case 'u': return "SETITEMS";
    case 'G': return "BINFLOAT";
    case 'B': return "BINBYTES";
    case 'C': return "SHORT_BINBYTES";
    case 0x80: return "PROTO";
    case 0x81: return "NEWOBJ";
    case 0x82: return "EXT1";
    case 0x83: return "EXT2";
    case 0x84: return "EXT4";
    case 0x85: return "TUPLE1";
    case 0x86: return "TUPLE2";
    case 0x87: return "TUPLE3";
    case 0x88: return "NEWTRUE";
    case 0x89: return "NEWFALSE";
    case 0x8a: return "LONG1";
    case 0x8b: return "LONG4";
    case 0x8c: return "SHORT_BINUNICODE";
    case 0x8d: return "BINUNICODE8";
    case 0x8e: return "BINBYTES8";
    case 0x8f: return "EMPTY_SET";
    case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";
    case 0x92: return "NEWOBJ_EX";
    case 0x93: return "STACK_GLOBAL";
    case 0x94: return "MEMOIZE";
    case 0x95: return "FRAME";
    case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
    default: return NULL;
    }
}

/* ---- names ---- */

const char *
ead_pickle_kind_name (EadPickleKind kind)
{
  static const char *const names[] = {
    [EAD_PICKLE_NONE] = "None",     [EAD_PICKLE_BOOL] = "bool",
    [EAD_PICKLE_INT] = "int",       [EAD_PICKLE_FLOAT] = "float",
    [EAD_PICKLE_STRING] = "str",    [EAD_PICKLE_TUPLE] = "tuple",
    [EAD_PICKLE_LIST] = "list",     [EAD_PICKLE_DICT] = "dict",
    [EAD_PICKLE_GLOBAL] = "global", [EAD_PICKLE_STORAGE] = "storage",
    [EAD_PICKLE_TENSOR] = "tensor",
  };

  return (guint) kind < G_N_ELEMENTS (names) ? names[kind] : "?";
}

static const struct {
  const char *storage;  /* the class name in module torch */
  const char *name;
  gsize size;
} dtypes[] = {
  [EAD_TORCH_FLOAT32] = { "FloatStorage", "float32", 4 },
  [EAD_TORCH_FLOAT16] = { "HalfStorage", "float16", 2 },
  [EAD_TORCH_BFLOAT16] = { "BFloat16Storage", "bfloat16", 2 },
  [EAD_TORCH_FLOAT64] = { "DoubleStorage", "float64", 8 },
  [EAD_TORCH_INT64] = { "LongStorage", "int64", 8 },
};

const char *
ead_torch_dtype_name (EadTorchDtype dtype)
{
  return dtypes[dtype].name;
}

gsize
ead_torch_dtype_size (EadTorchDtype dtype)
{
  return dtypes[dtype].size;
}

/* ---- objects ---- */

static void
value_free (gpointer data)
{
  EadPickleValue *value = data;

  switch (value->kind)
    {
    case EAD_PICKLE_STRING:
      g_free (value->string.text);
      break;
    case EAD_PICKLE_TUPLE:
    case EAD_PICKLE_LIST:
      g_ptr_array_unref (value->items);
      break;
    case EAD_PICKLE_DICT:
      g_ptr_array_unref (value->dict.keys);
      g_ptr_array_unref (value->dict.values);
      if (value->dict.index != NULL)
        g_hash_table_unref (value->dict.index);
      break;
    default:
      break;
    }
  g_free (value);
}

void
ead_pickle_free (EadPickle *pickle)
{
  if (pickle == NULL)
    return;
  g_ptr_array_unref (pickle->objects);
  g_free (pickle);
}

const EadPickleValue *
ead_pickle_get_root (EadPickle *pickle)
{
  return pickle->root;
}

static gboolean G_GNUC_PRINTF (3, 4)
fail (Machine *m, EadError code, const char *format, ...)
{
  g_autofree char *message = NULL;
  va_list args;

  va_start (args, format);
  message = g_strdup_vprintf (format, args);
  va_end (args);
  g_set_error (m->error, EAD_ERROR, code, "%s at offset %zu: %s", opcode_name (m->op),
               m->op_offset, message);
  return FALSE;
}

static EadPickleValue *
new_value (Machine *m, EadPickleKind kind)
{
  EadPickleValue *value;

  if (m->pickle->objects->len >= EAD_PICKLE_MAX_OBJECTS)
    {
      fail (m, EAD_ERROR_LIMIT, "more than %u objects", EAD_PICKLE_MAX_OBJECTS);
      return NULL;
    }
  value = g_new0 (EadPickleValue, 1);
  value->kind = kind;
  switch (kind)
    {
    case EAD_PICKLE_TUPLE:
    case EAD_PICKLE_LIST:
      value->items = g_ptr_array_new ();
      break;
    case EAD_PICKLE_DICT:
      value->dict.keys = g_ptr_array_new ();
      value->dict.values = g_ptr_array_new ();
      break;
    default:
      break;
    }
  g_ptr_array_add (m->pickle->objects, value);
  return value;
}

static gssize
dict_find (const EadPickleValue *dict, const char *key)
{
  if (dict->dict.index != NULL)
    return GPOINTER_TO_SIZE (g_hash_table_lookup (dict->dict.index, key)) - 1;
  for (guint i = 0; i < dict->dict.keys->len; i++)
    if (strcmp (((const EadPickleValue *) dict->dict.keys->pdata[i])->string.text, key) == 0)
      return i;
  return -1;
}

const EadPickleValue *
ead_pickle_dict_lookup (const EadPickleValue *dict, const char *key)
{
  gssize position;

  if (dict == NULL || dict->kind != EAD_PICKLE_DICT)
    return NULL;
  position = dict_find (dict, key);
  return position < 0 ? NULL : dict->dict.values->pdata[position];
}

/* dict[key] = value, keeping the position of a key that is already there (as Python). */
static gboolean
dict_set (Machine *m, EadPickleValue *dict, EadPickleValue *key, EadPickleValue *value)
{
  GPtrArray *keys = dict->dict.keys;
  gssize position;

  if (key->kind != EAD_PICKLE_STRING)
    return fail (m, EAD_ERROR_UNSUPPORTED, "a dict key of type %s (a state_dict has str keys)",
                 ead_pickle_kind_name (key->kind));
  position = dict_find (dict, key->string.text);
  if (position >= 0)
    {
      dict->dict.values->pdata[position] = value;
      return TRUE;
    }
  g_ptr_array_add (keys, key);
  g_ptr_array_add (dict->dict.values, value);
  if (dict->dict.index == NULL && keys->len > DICT_INDEX_THRESHOLD)
    {
      dict->dict.index = g_hash_table_new (g_str_hash, g_str_equal);
      for (guint i = 0; i < keys->len; i++)
        g_hash_table_insert (dict->dict.index,
                             ((EadPickleValue *) keys->pdata[i])->string.text,
                             GSIZE_TO_POINTER (i + 1));
    }
  else if (dict->dict.index != NULL)
    g_hash_table_insert (dict->dict.index, key->string.text, GSIZE_TO_POINTER (keys->len));
  return TRUE;
}

/* ---- the stack ---- */

static guint
fence (Machine *m)
{
  return m->marks->len > 0 ? g_array_index (m->marks, guint, m->marks->len - 1) : 0;
}

static gboolean
push (Machine *m, EadPickleValue *value)
{
  if (value == NULL)
    return FALSE;
  if (m->stack->len >= EAD_PICKLE_MAX_STACK)
    return fail (m, EAD_ERROR_LIMIT, "the stack is deeper than %u", EAD_PICKLE_MAX_STACK);
  g_ptr_array_add (m->stack, value);
  return TRUE;
}

/* The value depth places below the top (0: the top), which must lie above the last MARK. */
static EadPickleValue *
peek (Machine *m, guint depth)
{
  if (m->stack->len <= fence (m) + depth)
    {
      fail (m, EAD_ERROR_FORMAT, "stack underflow");
      return NULL;
    }
  return m->stack->pdata[m->stack->len - 1 - depth];
}

static EadPickleValue *
pop (Machine *m)
{
  EadPickleValue *value = peek (m, 0);

  if (value != NULL)
    g_ptr_array_set_size (m->stack, m->stack->len - 1);
  return value;
}

/* Removes the last MARK and returns where it was: the objects above it are
 * stack[start..len). */
static gboolean
pop_mark (Machine *m, guint *start)
{
  if (m->marks->len == 0)
    return fail (m, EAD_ERROR_FORMAT, "no MARK to pop");
  *start = g_array_index (m->marks, guint, m->marks->len - 1);
  g_array_set_size (m->marks, m->marks->len - 1);
  return TRUE;
}

/* The object just below a MARK that pop_mark removed, which SETITEMS and APPENDS fill. */
static EadPickleValue *
below_mark (Machine *m, guint start)
{
  if (start == 0 || start - 1 < fence (m))
    {
      fail (m, EAD_ERROR_FORMAT, "stack underflow");
      return NULL;
    }
  return m->stack->pdata[start - 1];
}

/* ---- reading the operands ---- */

static const guint8 *
take (Machine *m, gsize n)
{
  const guint8 *p = m->data + m->pos;

  if (n > m->size - m->pos)
    {
      fail (m, EAD_ERROR_FORMAT, "truncated: %zu more bytes needed, %zu left", n,
            m->size - m->pos);
      return NULL;
    }
  m->pos += n;
  return p;
}

static gboolean
take_u8 (Machine *m, guint32 *out)
{
  const guint8 *p = take (m, 1);

  if (p != NULL)
    *out = p[0];
  return p != NULL;
}

static gboolean
take_le (Machine *m, gsize n, guint64 *out)
{
  const guint8 *p = take (m, n);

  if (p == NULL)
    return FALSE;
  *out = 0;
  for (gsize i = 0; i < n; i++)
    *out |= (guint64) p[i] << (8 * i);
  return TRUE;
}

/* A GLOBAL operand: printable ASCII up to a newline. */
static char *
take_line (Machine *m)
{
  const guint8 *start = m->data + m->pos;
  gsize limit = MIN (m->size - m->pos, (gsize) MAX_GLOBAL_LINE + 1);
  const guint8 *end = memchr (start, '\n', limit);

  if (end == NULL)
    {
      fail (m, EAD_ERROR_FORMAT, "a name without its newline (truncated or longer than %d "
                                 "bytes)", MAX_GLOBAL_LINE);
      return NULL;
    }
  for (const guint8 *p = start; p < end; p++)
    if (*p < 0x20 || *p > 0x7e)
      {
        fail (m, EAD_ERROR_FORMAT, "a name with byte 0x%02x", *p);
        return NULL;
      }
  m->pos += end - start + 1;
  return g_strndup ((const char *) start, end - start);
}

static EadPickleValue *
new_int (Machine *m, gint64 integer)
{
  EadPickleValue *value = new_value (m, EAD_PICKLE_INT);

  if (value != NULL)
    value->integer = integer;
  return value;
}

/* ---- globals ---- */

static gboolean
op_global (Machine *m)
{
  g_autofree char *module = take_line (m);
  g_autofree char *name = module != NULL ? take_line (m) : NULL;
  EadPickleValue *value;
  const char *hint = "";

  if (name == NULL)
    return FALSE;
  if (g_str_equal (module, "collections") && g_str_equal (name, "OrderedDict"))
    {
      value = new_value (m, EAD_PICKLE_GLOBAL);
      if (value != NULL)
        value->global.which = EAD_PICKLE_GLOBAL_ORDERED_DICT;
      return push (m, value);
    }
  if (g_str_equal (module, "torch._utils") && g_str_equal (name, "_rebuild_tensor_v2"))
    {
      value = new_value (m, EAD_PICKLE_GLOBAL);
      if (value != NULL)
        value->global.which = EAD_PICKLE_GLOBAL_REBUILD_TENSOR_V2;
      return push (m, value);
    }
  if (g_str_equal (module, "torch"))
    for (guint i = 0; i < G_N_ELEMENTS (dtypes); i++)
      if (g_str_equal (name, dtypes[i].storage))
        {
          value = new_value (m, EAD_PICKLE_GLOBAL);
          if (value != NULL)
            {
              value->global.which = EAD_PICKLE_GLOBAL_STORAGE_TYPE;
              value->global.dtype = i;
            }
          return push (m, value);
        }

  if (g_str_has_prefix (module, "torch.nn") || g_str_equal (module, "__main__")
      || g_str_has_prefix (module, "anomalib") || g_str_equal (module, "common"))
    hint = "; this looks like a whole pickled model (torch.save(model)): load it in Python "
           "and save model.state_dict() instead";
  else if (g_str_has_prefix (module, "__torch__"))
    hint = "; this looks like a TorchScript archive (torch.jit.save): save the model's "
           "state_dict() with torch.save instead";
  else if (g_str_equal (module, "torch") && g_str_has_suffix (name, "Storage"))
    hint = "; it holds tensors of a type other than float32, float16, bfloat16, float64 or "
           "int64";
  return fail (m, EAD_ERROR_UNSUPPORTED,
               "global '%s.%s' is not allowed: a state_dict needs only collections.OrderedDict, "
               "torch._utils._rebuild_tensor_v2 and torch.{Float,Half,BFloat16,Double,Long}Storage, "
               "and nothing else in the file is run%s", module, name, hint);
}

/* ('storage', storage type, key, location, numel), as torch.save's persistent_id. */
static gboolean
op_binpersid (Machine *m)
{
  EadPickleValue *pid = pop (m);
  EadPickleValue *value;
  const EadPickleValue *const *items;

  if (pid == NULL)
    return FALSE;
  if (pid->kind != EAD_PICKLE_TUPLE || pid->items->len != 5)
    return fail (m, EAD_ERROR_UNSUPPORTED,
                 "a persistent id that is not ('storage', type, key, location, numel)");
  items = (const EadPickleValue *const *) pid->items->pdata;
  if (items[0]->kind != EAD_PICKLE_STRING || !g_str_equal (items[0]->string.text, "storage"))
    return fail (m, EAD_ERROR_UNSUPPORTED, "a persistent id that is not a storage");
  if (items[1]->kind != EAD_PICKLE_GLOBAL
      || items[1]->global.which != EAD_PICKLE_GLOBAL_STORAGE_TYPE
      || items[2]->kind != EAD_PICKLE_STRING || items[3]->kind != EAD_PICKLE_STRING
      || items[4]->kind != EAD_PICKLE_INT || items[4]->integer < 0)
    return fail (m, EAD_ERROR_FORMAT, "a malformed storage persistent id (expected a storage "
                                      "type, a str key, a str location and a count)");
  value = new_value (m, EAD_PICKLE_STORAGE);
  if (value == NULL)
    return FALSE;
  value->storage.dtype = items[1]->global.dtype;
  value->storage.key = items[2]->string.text;
  value->storage.location = items[3]->string.text;
  value->storage.numel = items[4]->integer;
  return push (m, value);
}

/* A size or stride tuple of non-negative ints. */
static gboolean
read_dims (Machine *m, const EadPickleValue *tuple, const char *what, gint64 *out, int *n)
{
  if (tuple->kind != EAD_PICKLE_TUPLE)
    return fail (m, EAD_ERROR_FORMAT, "_rebuild_tensor_v2: the %s is a %s, not a tuple", what,
                 ead_pickle_kind_name (tuple->kind));
  if (tuple->items->len > EAD_PICKLE_MAX_DIMS)
    return fail (m, EAD_ERROR_UNSUPPORTED, "_rebuild_tensor_v2: a tensor of %u dimensions "
                                           "(at most %d)", tuple->items->len, EAD_PICKLE_MAX_DIMS);
  for (guint i = 0; i < tuple->items->len; i++)
    {
      const EadPickleValue *item = tuple->items->pdata[i];

      if (item->kind != EAD_PICKLE_INT || item->integer < 0)
        return fail (m, EAD_ERROR_FORMAT, "_rebuild_tensor_v2: %s %u is not an int >= 0", what, i);
      out[i] = item->integer;
    }
  *n = tuple->items->len;
  return TRUE;
}

/* _rebuild_tensor_v2 (storage, storage_offset, size, stride, requires_grad,
 * backward_hooks[, metadata]): the tensor is recorded after checking that every element
 * it addresses lies inside its storage. */
static EadPickleValue *
rebuild_tensor (Machine *m, const EadPickleValue *args)
{
  const EadPickleValue *const *items = (const EadPickleValue *const *) args->items->pdata;
  const EadPickleValue *storage;
  EadPickleValue *tensor;
  gint64 size[EAD_PICKLE_MAX_DIMS], stride[EAD_PICKLE_MAX_DIMS];
  int n_dims, n_strides;
  guint64 count = 1, last;

  if (args->items->len != 6 && args->items->len != 7)
    {
      fail (m, EAD_ERROR_FORMAT, "_rebuild_tensor_v2 with %u arguments (expected 6 or 7)",
            args->items->len);
      return NULL;
    }
  storage = items[0];
  if (storage->kind != EAD_PICKLE_STORAGE)
    {
      fail (m, EAD_ERROR_FORMAT, "_rebuild_tensor_v2 on a %s, not a storage",
            ead_pickle_kind_name (storage->kind));
      return NULL;
    }
  if (items[1]->kind != EAD_PICKLE_INT || items[1]->integer < 0)
    {
      fail (m, EAD_ERROR_FORMAT, "_rebuild_tensor_v2: the storage offset is not an int >= 0");
      return NULL;
    }
  if (!read_dims (m, items[2], "size", size, &n_dims)
      || !read_dims (m, items[3], "stride", stride, &n_strides))
    return NULL;
  if (n_strides != n_dims)
    {
      fail (m, EAD_ERROR_FORMAT, "_rebuild_tensor_v2: %d sizes but %d strides", n_dims, n_strides);
      return NULL;
    }
  if (items[4]->kind != EAD_PICKLE_BOOL)
    {
      fail (m, EAD_ERROR_FORMAT, "_rebuild_tensor_v2: requires_grad is not a bool");
      return NULL;
    }
  /* Hooks are Python callables: a tensor that had some cannot be rebuilt without them. */
  if (items[5]->kind != EAD_PICKLE_DICT || items[5]->dict.keys->len != 0)
    {
      fail (m, EAD_ERROR_UNSUPPORTED, "_rebuild_tensor_v2: a tensor with backward hooks");
      return NULL;
    }
  /* The optional metadata (Python attributes set on the tensor) does not touch its values. */
  if (args->items->len == 7 && items[6]->kind != EAD_PICKLE_DICT)
    {
      fail (m, EAD_ERROR_FORMAT, "_rebuild_tensor_v2: the metadata is not a dict");
      return NULL;
    }

  /* The highest element addressed: offset + sum (size - 1) * stride, without overflow. */
  last = items[1]->integer;
  for (int d = 0; d < n_dims; d++)
    {
      guint64 reach;

      if (!g_uint64_checked_mul (&count, count, size[d]))
        count = G_MAXUINT64;
      if (size[d] > 0
          && (!g_uint64_checked_mul (&reach, size[d] - 1, stride[d])
              || !g_uint64_checked_add (&last, last, reach)))
        last = G_MAXUINT64;
    }
  if (count > 0 ? last >= storage->storage.numel : last > storage->storage.numel)
    {
      fail (m, EAD_ERROR_FORMAT, "_rebuild_tensor_v2: the tensor reaches beyond its storage "
                                 "'%s' of %" G_GUINT64_FORMAT " elements", storage->storage.key,
            storage->storage.numel);
      return NULL;
    }

  tensor = new_value (m, EAD_PICKLE_TENSOR);
  if (tensor == NULL)
    return NULL;
  tensor->tensor.storage = storage;
  tensor->tensor.offset = items[1]->integer;
  tensor->tensor.n_dims = n_dims;
  memcpy (tensor->tensor.size, size, n_dims * sizeof *size);
  memcpy (tensor->tensor.stride, stride, n_dims * sizeof *stride);
  tensor->tensor.n_elements = count;
  return tensor;
}

static gboolean
op_reduce (Machine *m)
{
  EadPickleValue *args = pop (m);
  EadPickleValue *callable = args != NULL ? pop (m) : NULL;

  if (callable == NULL)
    return FALSE;
  if (callable->kind != EAD_PICKLE_GLOBAL)
    return fail (m, EAD_ERROR_UNSUPPORTED, "calling a %s", ead_pickle_kind_name (callable->kind));
  if (args->kind != EAD_PICKLE_TUPLE)
    return fail (m, EAD_ERROR_FORMAT, "arguments in a %s, not a tuple",
                 ead_pickle_kind_name (args->kind));
  switch (callable->global.which)
    {
    case EAD_PICKLE_GLOBAL_ORDERED_DICT:
      /* torch.save's OrderedDicts are made empty, then filled by SETITEMS */
      if (args->items->len != 0)
        return fail (m, EAD_ERROR_UNSUPPORTED, "OrderedDict called with arguments");
      return push (m, new_value (m, EAD_PICKLE_DICT));
    case EAD_PICKLE_GLOBAL_REBUILD_TENSOR_V2:
      return push (m, rebuild_tensor (m, args));
    case EAD_PICKLE_GLOBAL_STORAGE_TYPE:
    default:
      return fail (m, EAD_ERROR_UNSUPPORTED, "calling torch.%s (storage types only name the "
                                             "element type of a persistent id)",
                   dtypes[callable->global.dtype].storage);
    }
}

/* ---- the machine ---- */

static gboolean
make_tuple (Machine *m, guint start)
{
  EadPickleValue *tuple = new_value (m, EAD_PICKLE_TUPLE);

  if (tuple == NULL)
    return FALSE;
  for (guint i = start; i < m->stack->len; i++)
    g_ptr_array_add (tuple->items, m->stack->pdata[i]);
  g_ptr_array_set_size (m->stack, start);
  return push (m, tuple);
}

static gboolean
step (Machine *m)
{
  EadPickleValue *value, *key, *target;
  guint64 operand;
  guint32 small;
  guint start;
  const guint8 *bytes;

  switch (m->op)
    {
    case OP_PROTO:
      if (!take_u8 (m, &small))
        return FALSE;
      /* protocol 3 adds only bytes objects; 4 and 5 change the framing and the globals */
      if (small < 2 || small > 3)
        return fail (m, EAD_ERROR_UNSUPPORTED, "pickle protocol %u (torch.save writes protocol "
                                               "2 unless given pickle_protocol=)", small);
      return TRUE;

    case OP_MARK:
      if (m->marks->len >= EAD_PICKLE_MAX_STACK)
        return fail (m, EAD_ERROR_LIMIT, "more than %u nested MARKs", EAD_PICKLE_MAX_STACK);
      start = m->stack->len;
      g_array_append_val (m->marks, start);
      return TRUE;

    case OP_NONE:
      return push (m, new_value (m, EAD_PICKLE_NONE));
    case OP_NEWTRUE:
    case OP_NEWFALSE:
      value = new_value (m, EAD_PICKLE_BOOL);
      if (value != NULL)
        value->boolean = m->op == OP_NEWTRUE;
      return push (m, value);

    case OP_BININT:
      return take_le (m, 4, &operand) && push (m, new_int (m, (gint32) (guint32) operand));
    case OP_BININT1:
      return take_le (m, 1, &operand) && push (m, new_int (m, (gint64) operand));
    case OP_BININT2:
      return take_le (m, 2, &operand) && push (m, new_int (m, (gint64) operand));
    case OP_LONG1:
      /* a little-endian two's-complement integer of n bytes */
      if (!take_u8 (m, &small))
        return FALSE;
      if (small > 8)
        return fail (m, EAD_ERROR_UNSUPPORTED, "an integer of %u bytes (at most 8)", small);
      if (!take_le (m, small, &operand))
        return FALSE;
      if (small > 0 && small < 8 && (operand >> (8 * small - 1)) & 1)
        operand |= G_MAXUINT64 << (8 * small);
      return push (m, new_int (m, (gint64) operand));

    case OP_BINFLOAT:
      bytes = take (m, 8);
      if (bytes == NULL)
        return FALSE;
      value = new_value (m, EAD_PICKLE_FLOAT);
      if (value != NULL)
        {
          guint64 bits = 0;

          for (int i = 0; i < 8; i++)
            bits = bits << 8 | bytes[i];
          memcpy (&value->real, &bits, sizeof bits);
        }
      return push (m, value);

    case OP_BINUNICODE:
      if (!take_le (m, 4, &operand) || (bytes = take (m, operand)) == NULL)
        return FALSE;
      if (!g_utf8_validate_len ((const char *) bytes, operand, NULL))
        return fail (m, EAD_ERROR_FORMAT, "a str that is not valid UTF-8 or holds a NUL");
      value = new_value (m, EAD_PICKLE_STRING);
      if (value == NULL)
        return FALSE;
      value->string.text = g_strndup ((const char *) bytes, operand);
      value->string.length = operand;
      return push (m, value);

    case OP_EMPTY_TUPLE:
      return push (m, new_value (m, EAD_PICKLE_TUPLE));
    case OP_TUPLE:
      return pop_mark (m, &start) && make_tuple (m, start);
    case OP_TUPLE1:
    case OP_TUPLE2:
    case OP_TUPLE3:
      if (peek (m, m->op - OP_TUPLE1) == NULL)
        return FALSE;
      return make_tuple (m, m->stack->len - (m->op - OP_TUPLE1 + 1));

    case OP_EMPTY_LIST:
      return push (m, new_value (m, EAD_PICKLE_LIST));
    case OP_APPEND:
      value = pop (m);
      target = value != NULL ? peek (m, 0) : NULL;
      if (target == NULL)
        return FALSE;
      if (target->kind != EAD_PICKLE_LIST)
        return fail (m, EAD_ERROR_UNSUPPORTED, "appending to a %s",
                     ead_pickle_kind_name (target->kind));
      g_ptr_array_add (target->items, value);
      return TRUE;
    case OP_APPENDS:
      if (!pop_mark (m, &start) || (target = below_mark (m, start)) == NULL)
        return FALSE;
      if (target->kind != EAD_PICKLE_LIST)
        return fail (m, EAD_ERROR_UNSUPPORTED, "appending to a %s",
                     ead_pickle_kind_name (target->kind));
      for (guint i = start; i < m->stack->len; i++)
        g_ptr_array_add (target->items, m->stack->pdata[i]);
      g_ptr_array_set_size (m->stack, start);
      return TRUE;

    case OP_EMPTY_DICT:
      return push (m, new_value (m, EAD_PICKLE_DICT));
    case OP_SETITEM:
      value = pop (m);
      key = value != NULL ? pop (m) : NULL;
      target = key != NULL ? peek (m, 0) : NULL;
      if (target == NULL)
        return FALSE;
      if (target->kind != EAD_PICKLE_DICT)
        return fail (m, EAD_ERROR_UNSUPPORTED, "setting an item of a %s",
                     ead_pickle_kind_name (target->kind));
      return dict_set (m, target, key, value);
    case OP_SETITEMS:
      if (!pop_mark (m, &start) || (target = below_mark (m, start)) == NULL)
        return FALSE;
      if (target->kind != EAD_PICKLE_DICT)
        return fail (m, EAD_ERROR_UNSUPPORTED, "setting items of a %s",
                     ead_pickle_kind_name (target->kind));
      if ((m->stack->len - start) % 2 != 0)
        return fail (m, EAD_ERROR_FORMAT, "an odd number of objects for keys and values");
      for (guint i = start; i < m->stack->len; i += 2)
        if (!dict_set (m, target, m->stack->pdata[i], m->stack->pdata[i + 1]))
          return FALSE;
      g_ptr_array_set_size (m->stack, start);
      return TRUE;

    case OP_BINPUT:
    case OP_LONG_BINPUT:
      if (!take_le (m, m->op == OP_BINPUT ? 1 : 4, &operand) || (value = peek (m, 0)) == NULL)
        return FALSE;
      if (g_hash_table_size (m->memo) >= EAD_PICKLE_MAX_OBJECTS)
        return fail (m, EAD_ERROR_LIMIT, "more than %u memo entries", EAD_PICKLE_MAX_OBJECTS);
      g_hash_table_insert (m->memo, GSIZE_TO_POINTER (operand), value);
      return TRUE;
    case OP_BINGET:
    case OP_LONG_BINGET:
      if (!take_le (m, m->op == OP_BINGET ? 1 : 4, &operand))
        return FALSE;
      value = g_hash_table_lookup (m->memo, GSIZE_TO_POINTER (operand));
      if (value == NULL)
        return fail (m, EAD_ERROR_FORMAT, "memo entry %" G_GUINT64_FORMAT " was never stored",
                     operand);
      return push (m, value);

    case OP_GLOBAL:
      return op_global (m);
    case OP_REDUCE:
      return op_reduce (m);
    case OP_BINPERSID:
      return op_binpersid (m);

    case OP_BUILD:
      /* The only object torch.save builds in a state_dict is the OrderedDict itself, whose
       * state holds Python attributes such as _metadata (module versions); the tensors do
       * not depend on them. */
      value = pop (m);
      target = value != NULL ? peek (m, 0) : NULL;
      if (target == NULL)
        return FALSE;
      if (target->kind != EAD_PICKLE_DICT
          || (value->kind != EAD_PICKLE_DICT && value->kind != EAD_PICKLE_NONE))
        return fail (m, EAD_ERROR_UNSUPPORTED, "setting the state of a %s from a %s",
                     ead_pickle_kind_name (target->kind), ead_pickle_kind_name (value->kind));
      return TRUE;

    default:
      if (opcode_name (m->op) != NULL)
        return fail (m, EAD_ERROR_UNSUPPORTED, "opcode 0x%02x is not supported (it is not "
                                               "among those torch.save writes for a state_dict)",
                     m->op);
      g_set_error (m->error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "byte 0x%02x at offset %zu is not a pickle opcode", m->op, m->op_offset);
      return FALSE;
    }
}

EadPickle *
ead_pickle_load (const guint8 *data, gsize size, GError **error)
{
  g_autoptr (EadPickle) pickle = g_new0 (EadPickle, 1);
  g_autoptr (GPtrArray) stack = g_ptr_array_new ();
  g_autoptr (GArray) marks = g_array_new (FALSE, FALSE, sizeof (guint));
  g_autoptr (GHashTable) memo = g_hash_table_new (g_direct_hash, g_direct_equal);
  Machine m = {
    .pickle = pickle, .data = data, .size = size, .stack = stack, .marks = marks,
    .memo = memo, .error = error,
  };

  pickle->objects = g_ptr_array_new_with_free_func (value_free);
  if (size > EAD_PICKLE_MAX_SIZE)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_LIMIT, "a pickle of %zu bytes (at most %zu)",
                   size, EAD_PICKLE_MAX_SIZE);
      return NULL;
    }
  for (;;)
    {
      if (m.pos >= size)
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                       "truncated: the pickle ends at offset %zu without STOP", size);
          return NULL;
        }
      m.op_offset = m.pos;
      m.op = data[m.pos++];
      if (m.op == OP_STOP)
        break;
      if (!step (&m))
        return NULL;
    }
  if (stack->len != 1 || marks->len != 0)
    {
      fail (&m, EAD_ERROR_FORMAT, "%u objects and %u MARKs left on the stack (expected one "
                                  "object)", stack->len, marks->len);
      return NULL;
    }
  pickle->root = stack->pdata[0];
  return g_steal_pointer (&pickle);
}
