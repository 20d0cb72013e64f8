/* ead-teacher-import.h: published PyTorch teachers → model bundles.
 *
 * Two namings of the same PDN weights are in circulation:
 *   - nelson1425's teacher_small.pth / teacher_medium.pth: the state_dict of the
 *     nn.Sequential, "0.weight", "0.bias", "3.weight", ... (the conv entries 0, 3, 6, 8
 *     of PDN-small; 0, 3, 6, 8, 10, 12 of PDN-medium), the naming of our bundles;
 *   - anomalib's pretrained_teacher_small.pth / _medium.pth: the state_dict of its
 *     Small/MediumPatchDescriptionNetwork, "conv1.weight", "conv1.bias", ... in order.
 * Both describe the teacher without padding's effect on the weights, so the result is the
 * teacher of anomaly detection (padding off).
 */
#pragma once

#include <glib.h>

#include "ead-model.h"

G_BEGIN_DECLS

typedef enum {
  EAD_TEACHER_FORMAT_NELSON,    /* "nelson" */
  EAD_TEACHER_FORMAT_ANOMALIB,  /* "anomalib" */
} EadTeacherFormat;

const char *ead_teacher_format_name (EadTeacherFormat format);

/* Reads the checkpoint (ead-torch-checkpoint.h), recognises the naming, checks that the
 * state_dict holds exactly the teacher's tensors with the shapes of arch and finite
 * values, and returns a model whose teacher holds them (float32; float16, bfloat16 and
 * float64 are converted) and whose student and autoencoder are zero, teacher mean 0,
 * std 1, quantiles (0, 1): a valid bundle for `ead train --teacher`.  Metadata:
 *   ead.teacher.source       the file's base name
 *   ead.teacher.file_sha256  SHA-256 of the file
 *   ead.teacher.sha256       SHA-256 of the float32 weights and biases in layer order,
 *                            as ead train records it for the teacher of a trained model
 *   ead.teacher.format       nelson or anomalib
 *   ead.teacher.dtype        the element type(s) stored in the file, e.g. float16
 *   ead.weights              says that only the teacher is set
 * Errors: those of ead_torch_checkpoint_read, and EAD_ERROR_FORMAT when the state_dict is
 * not such a teacher (the message names the keys missing or unexpected, or the tensor and
 * both shapes, and suggests the other --model when the file is a teacher of the other
 * size). */
EadModel *ead_teacher_import (const char *path, EadArch arch, GError **error);

G_END_DECLS
