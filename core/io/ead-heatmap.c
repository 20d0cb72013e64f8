/* ead-heatmap.c: anomaly maps as pictures.
 *
 * The colour map is matplotlib's 'inferno': perceptually uniform, readable in grey and
 * by most colour-blind viewers, dark for normal and bright for anomalous.  It is stored
 * as every 8th entry of matplotlib's 256-entry table (plus the last) and the table is
 * rebuilt by linear interpolation, which differs from the original by a few 8-bit
 * steps at most, invisibly.
 */
#include "ead-image.h"

#include <math.h>
#include <string.h>

#define N_ANCHORS 33

static const float inferno_anchors[N_ANCHORS][3] = {
  { 0.001462f, 0.000466f, 0.013866f }, /* 0 */
  { 0.013995f, 0.011225f, 0.071862f },
  { 0.042253f, 0.028139f, 0.141141f },
  { 0.081962f, 0.043328f, 0.215289f },
  { 0.129285f, 0.047293f, 0.290788f },
  { 0.183429f, 0.040329f, 0.354971f },
  { 0.238273f, 0.036621f, 0.396353f },
  { 0.290763f, 0.045644f, 0.418637f },
  { 0.341500f, 0.062325f, 0.429425f }, /* 64 */
  { 0.391453f, 0.080927f, 0.433109f },
  { 0.441207f, 0.099338f, 0.431594f },
  { 0.491022f, 0.117179f, 0.425552f },
  { 0.540920f, 0.134729f, 0.415123f },
  { 0.590734f, 0.152563f, 0.400290f },
  { 0.640135f, 0.171438f, 0.381065f },
  { 0.688653f, 0.192239f, 0.357603f },
  { 0.735683f, 0.215906f, 0.330245f }, /* 128 */
  { 0.780517f, 0.243327f, 0.299523f },
  { 0.822386f, 0.275197f, 0.266085f },
  { 0.860533f, 0.311892f, 0.230606f },
  { 0.894305f, 0.353399f, 0.193584f },
  { 0.923215f, 0.399359f, 0.155193f },
  { 0.946965f, 0.449191f, 0.115272f },
  { 0.965397f, 0.502249f, 0.073859f },
  { 0.978422f, 0.557937f, 0.034931f }, /* 192 */
  { 0.985952f, 0.615750f, 0.025592f },
  { 0.987874f, 0.675267f, 0.065257f },
  { 0.984075f, 0.736087f, 0.129527f },
  { 0.974638f, 0.797692f, 0.206332f },
  { 0.960626f, 0.859069f, 0.298010f },
  { 0.947594f, 0.917399f, 0.410665f },
  { 0.954529f, 0.965896f, 0.540361f }, /* 248 */
  { 0.988362f, 0.998364f, 0.644924f }, /* 255 */
};

static void
build_colour_table (uint8_t table[256][3])
{
  for (int i = 0; i < 256; i++)
    {
      int a = MIN (i / 8, N_ANCHORS - 2);
      int position = a * 8;
      int span = a == N_ANCHORS - 2 ? 255 - position : 8;
      float t = (float) (i - position) / (float) span;

      for (int c = 0; c < 3; c++)
        {
          float v = inferno_anchors[a][c] + (inferno_anchors[a + 1][c] - inferno_anchors[a][c]) * t;

          table[i][c] = (uint8_t) lrintf (CLAMP (v, 0.0f, 1.0f) * 255.0f);
        }
    }
}

EadImage *
ead_heatmap_render (const float *map,
                    int width,
                    int height,
                    float lo,
                    float hi,
                    const EadImage *under,
                    float opacity)
{
  uint8_t table[256][3];
  EadImage *image;
  size_t n;
  float range, alpha;

  g_return_val_if_fail (map != NULL && width > 0 && height > 0, NULL);
  g_return_val_if_fail (under == NULL || (under->width == width && under->height == height),
                        NULL);

  build_colour_table (table);
  image = ead_image_new (width, height);
  n = (size_t) width * height;
  range = hi - lo;
  alpha = isnan (opacity) ? 1.0f : CLAMP (opacity, 0.0f, 1.0f);
  for (size_t i = 0; i < n; i++)
    {
      float v = map[i];
      float t;
      int index;
      uint8_t *out = image->rgb + 3 * i;

      /* An empty or inverted range leaves nothing to spread out: values reaching hi
       * are at the top, the rest at the bottom.  NaN (no score) is at the bottom. */
      if (range > 0.0f)
        t = (v - lo) / range;
      else
        t = v >= hi ? 1.0f : 0.0f;
      if (!(t > 0.0f))
        t = 0.0f;
      if (t > 1.0f)
        t = 1.0f;
      index = (int) lrintf (t * 255.0f);
      if (under == NULL)
        {
          memcpy (out, table[index], 3);
          continue;
        }
      for (int c = 0; c < 3; c++)
        {
          float base = under->rgb[3 * i + c];

          out[c] = (uint8_t) lrintf (base + ((float) table[index][c] - base) * alpha);
        }
    }
  return image;
}
