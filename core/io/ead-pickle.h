/* ead-pickle.h: a restricted unpickler for PyTorch state_dicts.
 *
 * torch.save (zip format, PyTorch >= 1.6) stores the pickled object in <archive>/data.pkl,
 * written with pickle protocol 2, and each tensor's storage as a separate record.  A
 * general unpickler runs whatever callables the pickle names, so loading a checkpoint from
 * the internet with pickle.load is running code from the internet.  This one is a small
 * stack machine that understands only what a state_dict needs:
 *
 *   - the opcodes of protocol 2 that torch.save emits for one (PROTO, STOP, MARK, GLOBAL,
 *     REDUCE, BUILD, BINPERSID, the memo, tuples, lists, dicts, str, int, float, bool,
 *     None); any other opcode is an error naming it and its offset;
 *   - the globals collections.OrderedDict, torch._utils._rebuild_tensor_v2 and the
 *     storage types torch.FloatStorage, HalfStorage, BFloat16Storage, DoubleStorage and
 *     LongStorage (batch norms' num_batches_tracked);
 *     any other global is refused when it is read, before anything could call it;
 *   - persistent ids of the form ('storage', storage type, key, location, numel).
 *
 * Nothing is ever executed: "calling" OrderedDict makes an empty ordered dict, "calling"
 * _rebuild_tensor_v2 records a tensor (storage, offset, size, stride) after checking that
 * it stays inside its storage.  The storages themselves are not read here: a storage value
 * holds the key of its record (see ead-torch-checkpoint.h).
 *
 * The input is untrusted: every read is bounds-checked and the number of objects, the
 * stack and the pickle size are limited, so memory stays proportional to the input.
 * Errors are EAD_ERROR_FORMAT (malformed or truncated), EAD_ERROR_UNSUPPORTED (a valid
 * pickle using an opcode, global or construct outside the list above) and
 * EAD_ERROR_LIMIT; messages name the offset in the pickle.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define EAD_PICKLE_MAX_SIZE ((gsize) 16 * 1024 * 1024)
/* Objects created (every opcode makes at most one) and the depth of the stack. */
#define EAD_PICKLE_MAX_OBJECTS (1u << 20)
#define EAD_PICKLE_MAX_STACK (1u << 20)
#define EAD_PICKLE_MAX_DIMS 8

typedef enum {
  EAD_PICKLE_NONE,
  EAD_PICKLE_BOOL,
  EAD_PICKLE_INT,
  EAD_PICKLE_FLOAT,
  EAD_PICKLE_STRING,
  EAD_PICKLE_TUPLE,
  EAD_PICKLE_LIST,
  EAD_PICKLE_DICT,     /* dict or collections.OrderedDict; keys are strings, kept in order */
  EAD_PICKLE_GLOBAL,   /* one of the allowed globals, not yet called */
  EAD_PICKLE_STORAGE,  /* a persistent id naming a storage record */
  EAD_PICKLE_TENSOR,   /* the result of torch._utils._rebuild_tensor_v2 */
} EadPickleKind;

/* The element types of the storages we accept. */
typedef enum {
  EAD_TORCH_FLOAT32,
  EAD_TORCH_FLOAT16,
  EAD_TORCH_BFLOAT16,
  EAD_TORCH_FLOAT64,
  EAD_TORCH_INT64,
} EadTorchDtype;

#define EAD_TORCH_N_DTYPES (EAD_TORCH_INT64 + 1)

typedef enum {
  EAD_PICKLE_GLOBAL_ORDERED_DICT,
  EAD_PICKLE_GLOBAL_REBUILD_TENSOR_V2,
  EAD_PICKLE_GLOBAL_STORAGE_TYPE,  /* torch.<X>Storage; the dtype says which */
} EadPickleGlobal;

typedef struct _EadPickleValue EadPickleValue;

/* Values are owned by the EadPickle that made them and may be shared (the memo). */
struct _EadPickleValue {
  EadPickleKind kind;
  union {
    gboolean boolean;
    gint64 integer;
    double real;
    struct {
      char *text;  /* valid UTF-8 without NUL bytes, NUL-terminated */
      gsize length;
    } string;
    GPtrArray *items;  /* tuple, list: EadPickleValue * */
    struct {
      GPtrArray *keys;    /* string values, distinct, in insertion order */
      GPtrArray *values;  /* the value of keys[i] */
      GHashTable *index;  /* key text → position + 1 */
    } dict;
    struct {
      EadPickleGlobal which;
      EadTorchDtype dtype;  /* EAD_PICKLE_GLOBAL_STORAGE_TYPE */
    } global;
    struct {
      EadTorchDtype dtype;
      const char *key;       /* the record <archive>/data/<key> */
      const char *location;  /* "cpu", "cuda:0", ... */
      guint64 numel;
    } storage;
    struct {
      const EadPickleValue *storage;
      guint64 offset;  /* in elements */
      int n_dims;
      gint64 size[EAD_PICKLE_MAX_DIMS];
      gint64 stride[EAD_PICKLE_MAX_DIMS];  /* in elements, each >= 0 */
      guint64 n_elements;                  /* product of size (1 for a scalar) */
    } tensor;
  };
};

typedef struct _EadPickle EadPickle;

/* Runs the restricted machine over data[0..size) up to STOP.  The bytes are not kept. */
EadPickle *ead_pickle_load (const guint8 *data, gsize size, GError **error);
void ead_pickle_free (EadPickle *pickle);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (EadPickle, ead_pickle_free)

/* The object left on the stack by STOP. */
const EadPickleValue *ead_pickle_get_root (EadPickle *pickle);

/* The value of key in a dict, NULL when absent. */
const EadPickleValue *ead_pickle_dict_lookup (const EadPickleValue *dict, const char *key);

/* "None", "bool", "int", "float", "str", "tuple", "list", "dict", "global", "storage",
 * "tensor": for messages. */
const char *ead_pickle_kind_name (EadPickleKind kind);
/* "float32", "float16", "bfloat16", "float64". */
const char *ead_torch_dtype_name (EadTorchDtype dtype);
/* Bytes per element. */
gsize ead_torch_dtype_size (EadTorchDtype dtype);

G_END_DECLS
