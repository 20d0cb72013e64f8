/* ead-bundle.h: model bundles (*.ead.safetensors).
 *
 * A bundle is a standard safetensors file, so Python tools read it with json + struct +
 * numpy or the safetensors package: an 8-byte little-endian header length, a JSON header
 * padded with spaces to a multiple of 8 bytes, then the tensors back to back.  Tensors:
 * "teacher.<i>.weight/bias", "student.<i>…", "autoencoder.<i>…" (i = the nn.Sequential
 * index, weights OIHW), "teacher_mean" and "teacher_std" ([384]).  "__metadata__" holds
 * strings: ead.format_version ("1"), ead.arch (efficientad-s or efficientad-m),
 * ead.input.height, ead.input.width, ead.quantile.st_a/st_b/ae_a/ae_b (%.17g, exact), and
 * whatever else the model's metadata table carries (threshold, training, provenance).
 * The file format itself is ead-safetensors.h; this layer knows what a model holds.
 */
#pragma once

#include <glib.h>

#include "ead-model.h"
#include "ead-safetensors.h"

G_BEGIN_DECLS

#define EAD_BUNDLE_MAX_HEADER_SIZE EAD_SAFETENSORS_MAX_HEADER_SIZE
#define EAD_BUNDLE_MAX_INPUT_SIZE 16384

/* Reads and checks a whole bundle: every tensor present with the shape the architecture
 * needs (F32, F16 or BF16, converted to float), no unknown tensor, and the model valid
 * (ead_model_validate).  A missing ead.format_version is read as "1".  Metadata keys
 * other than the ones that fill EadModel fields end up in model->metadata.
 * Errors: EAD_ERROR_IO (missing, unreadable, a directory), EAD_ERROR_FORMAT (truncated,
 * corrupt, wrong or missing tensor, bad metadata value, invalid model),
 * EAD_ERROR_UNSUPPORTED (dtype, ead.arch or format version we do not handle),
 * EAD_ERROR_LIMIT (header over EAD_BUNDLE_MAX_HEADER_SIZE).  Messages start with the
 * path. */
EadModel *ead_bundle_read (const char *path, GError **error);

/* Writes the model atomically: a temporary file next to path, fsync, rename over path,
 * fsync of the directory.  On failure path is left as it was and no temporary file
 * remains, except when only the final directory sync fails (the message says so: the
 * new bundle is in place but its rename may not survive a power loss).  Refuses (EAD_ERROR_INVALID) a model that ead_model_validate rejects, since
 * it could not be read back; EAD_ERROR_IO for everything the file system refuses. */
gboolean ead_bundle_write (const EadModel *model, const char *path, GError **error);

/* Teacher bundles: what `ead teacher import`/`pretrain` make and `ead train --teacher`
 * takes.  They hold the teacher's layers only (no student, autoencoder or teacher
 * statistics; those come from training) and say so with ead.bundle.content = "teacher";
 * ead_bundle_read gives a model whose student and autoencoder are zero and whose metadata
 * keeps that key (ead_model_is_teacher_only).  With half, the weights are stored as F16
 * (half the size; a weight that fp16 cannot hold is refused, EAD_ERROR_INVALID).  Written
 * atomically as ead_bundle_write; the model's quantiles and input size are recorded as
 * they are; ead.teacher.sha256 is the digest of the teacher as stored (after rounding),
 * and the model's metadata gets that digest too, so that what a caller prints matches
 * the file. */
gboolean ead_bundle_write_teacher (EadModel *model, const char *path, gboolean half,
                                   GError **error);

/* What `ead info` shows, from the header alone (the tensors are not read or checked
 * against an architecture, only their offsets against the file). */
typedef struct {
  GHashTable *metadata;  /* every "__metadata__" key → value, strings, owned */
  guint n_tensors;
  guint64 n_elements;    /* sum of the tensors' element counts */
  char *dtypes;          /* the distinct dtypes, sorted, comma-separated: "F32" */
  guint64 file_size;
} EadBundleInfo;

EadBundleInfo *ead_bundle_read_info (const char *path, GError **error);
void ead_bundle_info_free (EadBundleInfo *info);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (EadBundleInfo, ead_bundle_info_free)

G_END_DECLS
