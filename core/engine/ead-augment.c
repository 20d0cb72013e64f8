#include "ead-augment.h"

#include <math.h>
#include <string.h>

/* PIL's Image.blend: out = im1 + alpha * (im2 - im1), computed in float and clipped,
 * with im1 the degenerate image and im2 the original (ImageEnhance.enhance). */
static inline guint8
blend (float degenerate, float original, float alpha)
{
  float value = degenerate + alpha * (original - degenerate);

  if (value <= 0.0f)
    return 0;
  if (value >= 255.0f)
    return 255;
  return (guint8) value;
}

void
ead_color_jitter (const EadImage *src, EadJitterKind kind, float factor, EadImage *dst)
{
  size_t n = (size_t) src->width * src->height;
  const guint8 *in = src->rgb;
  guint8 *out = dst->rgb;

  g_return_if_fail (dst->width == src->width && dst->height == src->height);
  switch (kind)
    {
    case EAD_JITTER_BRIGHTNESS:
      for (size_t i = 0; i < 3 * n; i++)
        out[i] = blend (0.0f, in[i], factor);
      break;
    case EAD_JITTER_CONTRAST:
      {
        /* ImageEnhance.Contrast: the mean of the grey image, rounded to an integer */
        guint64 sum = 0;
        float mean;

        for (size_t i = 0; i < n; i++)
          sum += ead_luma (in + 3 * i);
        mean = floorf ((float) sum / n + 0.5f);
        for (size_t i = 0; i < 3 * n; i++)
          out[i] = blend (mean, in[i], factor);
      }
      break;
    case EAD_JITTER_SATURATION:
      for (size_t i = 0; i < n; i++)
        {
          float grey = ead_luma (in + 3 * i);
          for (int c = 0; c < 3; c++)
            out[3 * i + c] = blend (grey, in[3 * i + c], factor);
        }
      break;
    }
}

EadImage *
ead_penalty_image (const EadImage *photo, int height, int width, gboolean grey)
{
  g_autoptr (EadImage) large = ead_image_resize_bilinear (photo, 2 * width, 2 * height);
  EadImage *crop = ead_image_new (width, height);
  int top = (2 * height - height) / 2, left = (2 * width - width) / 2;

  for (int y = 0; y < height; y++)
    memcpy (crop->rgb + (size_t) y * width * 3,
            large->rgb + ((size_t) (y + top) * large->width + left) * 3, (size_t) width * 3);
  if (grey)
    for (size_t i = 0; i < (size_t) width * height; i++)
      {
        guint8 luma = ead_luma (crop->rgb + 3 * i);
        crop->rgb[3 * i] = crop->rgb[3 * i + 1] = crop->rgb[3 * i + 2] = luma;
      }
  return crop;
}
