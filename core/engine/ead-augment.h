/* ead-augment.h: the image augmentations of EfficientAD training (spec §2). */
#pragma once

#include <glib.h>

#include "ead-image.h"

G_BEGIN_DECLS

typedef enum {
  EAD_JITTER_BRIGHTNESS,
  EAD_JITTER_CONTRAST,
  EAD_JITTER_SATURATION,
} EadJitterKind;

/* torchvision ColorJitter on a PIL RGB image with one of brightness, contrast or
 * saturation and a factor in [0.8, 1.2], as PIL's ImageEnhance computes it: a blend
 * with black, with the rounded mean grey level, or with the image's own grey version,
 * rounded and clamped to 8 bits.  Writes into dst (same size). */
void ead_color_jitter (const EadImage *src, EadJitterKind kind, float factor, EadImage *dst);

/* PIL's convert('L') on one pixel (ITU-R 601-2 luma, fixed point). */
static inline guint8
ead_luma (const guint8 *rgb)
{
  return (guint8) ((rgb[0] * 19595 + rgb[1] * 38470 + rgb[2] * 7471 + 0x8000) >> 16);
}

/* The penalty image of spec §2: resize to twice the network input, grey (replicated)
 * when `grey`, centre crop of the network input size. */
EadImage *ead_penalty_image (const EadImage *photo, int height, int width, gboolean grey);

G_END_DECLS
