/* ead-torch-checkpoint.h: reading the state_dict out of a PyTorch checkpoint (*.pth).
 *
 * torch.save's zip format (the default since PyTorch 1.6) is a zip archive (read with
 * libzip) of <archive>/data.pkl, the pickled object, and <archive>/data/<key>, one record
 * of raw little-endian elements per storage (plus version and byteorder records).  The
 * pickle goes through the restricted unpickler of ead-pickle.h, so nothing in the file is
 * ever run.  The pickled object must be a state_dict (a dict of str → tensor), or a dict
 * holding exactly one such dict, e.g. {"state_dict": ..., "epoch": 3}.
 *
 * The legacy format of PyTorch < 1.6 (a bare pickle followed by the storages) is refused
 * with a message saying how to re-save the file.  Tensors are gathered through their
 * storage offset and strides (views, transposes), and converted to float from float32,
 * float16, bfloat16, float64 or int64 (exact up to 2^24: batch norms' counters).
 */
#pragma once

#include <glib.h>

#include "ead-pickle.h"

G_BEGIN_DECLS

/* The elements of all tensors together (1 GiB of float). */
#define EAD_TORCH_MAX_ELEMENTS ((guint64) 1 << 28)

typedef struct {
  char *name;                               /* the state_dict key */
  EadTorchDtype dtype;                      /* as stored in the file */
  int n_dims;
  gint64 shape[EAD_PICKLE_MAX_DIMS];
  guint64 n_elements;                       /* product of shape (1 for a scalar) */
  float *data;                              /* n_elements, C order (contiguous) */
} EadTorchTensor;

typedef struct {
  char *path;
  char *container_key;  /* NULL for a bare state_dict, else the key that holds it */
  GPtrArray *tensors;   /* EadTorchTensor *, in the state_dict's order */
} EadTorchCheckpoint;

/* Errors: EAD_ERROR_IO (missing, unreadable, not a regular file), EAD_ERROR_FORMAT
 * (not a zip archive, truncated, no data.pkl, malformed pickle, a tensor outside its
 * storage, no state_dict inside), EAD_ERROR_UNSUPPORTED (the legacy format, big-endian
 * storages, an opcode or global a state_dict does not need), EAD_ERROR_LIMIT.  Messages
 * start with the path. */
EadTorchCheckpoint *ead_torch_checkpoint_read (const char *path, GError **error);
/* The same from a checkpoint already in memory (data[0..size), read in place and not
 * kept), e.g. a fuzzer's input: name stands for the path in messages and in ->path, and
 * the errors are those above but EAD_ERROR_IO. */
EadTorchCheckpoint *ead_torch_checkpoint_read_bytes (const guint8 *data, gsize size,
                                                     const char *name, GError **error);
void ead_torch_checkpoint_free (EadTorchCheckpoint *checkpoint);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (EadTorchCheckpoint, ead_torch_checkpoint_free)

/* NULL when the state_dict has no such key. */
const EadTorchTensor *ead_torch_checkpoint_lookup (const EadTorchCheckpoint *checkpoint,
                                                   const char *name);

/* "[128, 3, 4, 4]", for messages; free with g_free. */
char *ead_torch_shape_string (int n_dims, const gint64 *shape);

G_END_DECLS
