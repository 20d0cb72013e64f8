/* ead-demo.c: the synthetic inspection dataset (see ead-demo.h).
 *
 * Scenes are designed on a 256 x 256 unit canvas and scaled to the requested size, so
 * a larger size gives the same picture in more detail.  Per-pixel work (textures,
 * lighting, sensor noise) is done on the pixels directly; shapes are drawn with cairo.
 * Masks are drawn with antialiasing off, so they hold only 0 and 255.
 */
#include "ead-demo.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#include <glib/gstdio.h>
#include <png.h>

#include "ead-error.h"

#define CANVAS 256.0
#define HALF_CANVAS 128.0

/* How far a mask reaches beyond what a defect draws: its antialiased edge, its shadow. */
#define MASK_GROW 3.5

/* Random numbers: splitmix64, one stream per image and purpose.  Streams are keyed by
 * names rather than by a running counter so that an image never depends on which or how
 * many other images are generated. */

typedef struct {
  guint64 state;
} Rng;

static guint64
mix64 (guint64 z)
{
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static guint64
rng_next (Rng *rng)
{
  rng->state += 0x9e3779b97f4a7c15ULL;
  return mix64 (rng->state);
}

static double
rng_uniform (Rng *rng)
{
  return (double) (rng_next (rng) >> 11) * 0x1.0p-53;
}

static double
rng_range (Rng *rng, double lo, double hi)
{
  return lo + (hi - lo) * rng_uniform (rng);
}

static int
rng_int (Rng *rng, int n)
{
  return (int) (rng_uniform (rng) * n);
}

static guint64
hash_string (guint64 h, const char *text)
{
  for (const char *p = text; *p != '\0'; p++)
    {
      h ^= (guchar) *p;
      h *= 0x100000001b3ULL;
    }
  /* The avalanche keeps "a"+"bc" and "ab"+"c" apart when names are chained. */
  return mix64 (h ^ 0xff);
}

static guint64
image_key (guint64 seed, const char *scene, const char *split, const char *defect, int index)
{
  guint64 h = mix64 (seed ^ 0x6a09e667f3bcc908ULL);

  h = hash_string (h, scene);
  h = hash_string (h, split);
  h = hash_string (h, defect);
  return mix64 (h ^ (guint64) index);
}

static Rng
rng_stream (guint64 key, const char *purpose)
{
  Rng rng = { hash_string (key, purpose) };

  return rng;
}

/* Value noise in [-1, 1] on an integer lattice with smooth interpolation; the lattice
 * is a pure function of (salt, cell), so a texture is a window onto an endless sheet. */

static double
lattice (guint64 salt, gint64 ix, gint64 iy)
{
  guint64 h = mix64 (salt + (guint64) ix * 0x9e3779b97f4a7c15ULL
                     + (guint64) iy * 0xc2b2ae3d27d4eb4fULL);

  return (double) (h >> 11) * 0x1.0p-52 - 1.0;
}

static double
value_noise (guint64 salt, double x, double y)
{
  double fx = floor (x), fy = floor (y);
  gint64 ix = (gint64) fx, iy = (gint64) fy;
  double tx = x - fx, ty = y - fy;
  double a, b, c, d;

  tx = tx * tx * (3.0 - 2.0 * tx);
  ty = ty * ty * (3.0 - 2.0 * ty);
  a = lattice (salt, ix, iy);
  b = lattice (salt, ix + 1, iy);
  c = lattice (salt, ix, iy + 1);
  d = lattice (salt, ix + 1, iy + 1);
  return (a + (b - a) * tx) + ((c + (d - c) * tx) - (a + (b - a) * tx)) * ty;
}

/* Pixels and drawing helpers */

typedef struct {
  double r, g, b;
} Rgb;

static guint8
to_byte (double v)
{
  return v <= 0.0 ? 0 : v >= 1.0 ? 255 : (guint8) (v * 255.0 + 0.5);
}

static guint32
pack_rgb (double r, double g, double b)
{
  return (guint32) to_byte (r) << 16 | (guint32) to_byte (g) << 8 | to_byte (b);
}

static void
set_rgb (cairo_t *cr, const Rgb *colour, double gain)
{
  cairo_set_source_rgb (cr, colour->r * gain, colour->g * gain, colour->b * gain);
}

static void
rounded_rect (cairo_t *cr, double x, double y, double w, double h, double r)
{
  cairo_new_sub_path (cr);
  cairo_arc (cr, x + w - r, y + r, r, -G_PI / 2, 0);
  cairo_arc (cr, x + w - r, y + h - r, r, 0, G_PI / 2);
  cairo_arc (cr, x + r, y + h - r, r, G_PI / 2, G_PI);
  cairo_arc (cr, x + r, y + r, r, G_PI, 3 * G_PI / 2);
  cairo_close_path (cr);
}

typedef struct {
  int size;
  cairo_surface_t *image;  /* RGB24 */
  cairo_t *cr;             /* on image, in canvas units */
  cairo_surface_t *mask;   /* A8, NULL for a good image */
  cairo_t *mask_cr;        /* on mask, in canvas units, opaque source, no antialiasing */
  Rng base;                /* the good picture: texture, pose, lighting */
  Rng defect;              /* the defect's kind-specific choices */
  Rng noise;               /* sensor noise */
  gboolean draw_defect;
} Canvas;

/* Lighting, applied to the finished picture so that defects are lit like the rest:
 * exposure, a linear gradient, vignetting, a faint colour cast, optionally a soft
 * specular band and low-frequency mottling; then sensor noise. */
typedef struct {
  double gain, gx, gy, vignette;
  double tint[3];
  double band_gain, band_nx, band_ny, band_offset, band_width;
  double mottle, mottle_x, mottle_y;
  double noise;  /* amplitude of the triangular sensor noise, 0..1 scale */
} Lighting;

static void
lighting_random (Lighting *light, Rng *rng, double gradient, double vignette)
{
  double direction = rng_range (rng, 0, 2 * G_PI);
  double slope = rng_range (rng, 0, gradient);

  memset (light, 0, sizeof *light);
  light->gain = rng_range (rng, 0.88, 1.08);
  light->gx = cos (direction) * slope;
  light->gy = sin (direction) * slope;
  light->vignette = rng_range (rng, 0, vignette);
  for (int i = 0; i < 3; i++)
    light->tint[i] = rng_range (rng, 0.98, 1.02);
  light->noise = 4.0 / 255.0;
}

static void
finish_image (Canvas *c, const Lighting *light)
{
  guint8 *data;
  int stride;
  double unit = CANVAS / c->size;

  cairo_surface_flush (c->image);
  data = cairo_image_surface_get_data (c->image);
  stride = cairo_image_surface_get_stride (c->image);
  for (int py = 0; py < c->size; py++)
    {
      guint32 *row = (guint32 *) (data + (size_t) py * stride);
      double v = (py + 0.5) * unit - HALF_CANVAS;

      for (int px = 0; px < c->size; px++)
        {
          double u = (px + 0.5) * unit - HALF_CANVAS;
          double f = light->gain * (1.0 + light->gx * u + light->gy * v)
                     * (1.0 - light->vignette * (u * u + v * v) / (HALF_CANVAS * HALF_CANVAS));
          double add = 0.0, rgb[3];
          guint64 bits = rng_next (&c->noise);

          if (light->mottle > 0.0)
            f *= 1.0 + light->mottle * value_noise (0x5eed, (u + light->mottle_x) / 40.0,
                                                    (v + light->mottle_y) / 40.0);
          if (light->band_gain > 0.0)
            {
              double d = (u * light->band_nx + v * light->band_ny - light->band_offset)
                         / light->band_width;

              add = light->band_gain * exp (-d * d);
            }
          rgb[0] = (row[px] >> 16 & 0xff) / 255.0;
          rgb[1] = (row[px] >> 8 & 0xff) / 255.0;
          rgb[2] = (row[px] & 0xff) / 255.0;
          for (int i = 0; i < 3; i++)
            {
              /* Two 10-bit uniforms per channel: a triangular distribution, cheap and
               * close enough to a sensor's noise. */
              double n = ((bits >> (20 * i) & 0x3ff) + (bits >> (20 * i + 10) & 0x3ff))
                         / 1023.0 - 1.0;

              rgb[i] = rgb[i] * f * light->tint[i] + add + n * light->noise;
            }
          row[px] = pack_rgb (rgb[0], rgb[1], rgb[2]);
        }
    }
  cairo_surface_mark_dirty (c->image);
}

/* Irregular closed outlines (stains, chips) as polar wobbles around a centre */

#define BLOB_MAX 16

typedef struct {
  double x[BLOB_MAX], y[BLOB_MAX];
  int n;
} Blob;

static void
blob_random (Blob *blob, Rng *rng, double cx, double cy, double radius, double roughness,
             int n)
{
  double start = rng_range (rng, 0, 2 * G_PI);

  blob->n = n;
  for (int i = 0; i < n; i++)
    {
      double angle = start + 2 * G_PI * (i + rng_range (rng, -0.3, 0.3)) / n;
      double r = radius * (1.0 + rng_range (rng, -roughness, roughness));

      blob->x[i] = cx + cos (angle) * r;
      blob->y[i] = cy + sin (angle) * r;
    }
}

/* A smooth closed curve through the points (Catmull-Rom as Bezier segments). */
static void
blob_smooth_path (cairo_t *cr, const Blob *blob)
{
  int n = blob->n;

  cairo_move_to (cr, blob->x[0], blob->y[0]);
  for (int i = 0; i < n; i++)
    {
      int p = (i + n - 1) % n, a = i, b = (i + 1) % n, q = (i + 2) % n;

      cairo_curve_to (cr, blob->x[a] + (blob->x[b] - blob->x[p]) / 6,
                      blob->y[a] + (blob->y[b] - blob->y[p]) / 6,
                      blob->x[b] - (blob->x[q] - blob->x[a]) / 6,
                      blob->y[b] - (blob->y[q] - blob->y[a]) / 6, blob->x[b], blob->y[b]);
    }
  cairo_close_path (cr);
}

static void
blob_polygon_path (cairo_t *cr, const Blob *blob, double dx, double dy, double scale,
                   double cx, double cy)
{
  for (int i = 0; i < blob->n; i++)
    cairo_line_to (cr, cx + (blob->x[i] - cx) * scale + dx, cy + (blob->y[i] - cy) * scale + dy);
  cairo_close_path (cr);
}

static void
mask_fill_grown (cairo_t *mask_cr)
{
  cairo_set_line_width (mask_cr, 2 * MASK_GROW);
  cairo_fill_preserve (mask_cr);
  cairo_stroke (mask_cr);
}

/* Scene "surface": brushed steel */

static void
brushed_metal (Canvas *c, guint64 sheet)
{
  Rng *rng = &c->base;
  double angle = rng_range (rng, -0.05, 0.05);
  double ox = rng_range (rng, 0, 1e4), oy = rng_range (rng, 0, 1e4);
  double tone = rng_range (rng, 0.9, 1.06);
  double streaks = rng_range (rng, 0.05, 0.09);
  double ca = cos (angle), sa = sin (angle), unit = CANVAS / c->size;
  Rgb steel = { 0.60 * rng_range (rng, 0.98, 1.02), 0.62, 0.65 * rng_range (rng, 0.98, 1.02) };
  guint8 *data = cairo_image_surface_get_data (c->image);
  int stride = cairo_image_surface_get_stride (c->image);

  cairo_surface_flush (c->image);
  for (int py = 0; py < c->size; py++)
    {
      guint32 *row = (guint32 *) (data + (size_t) py * stride);

      for (int px = 0; px < c->size; px++)
        {
          double u = (px + 0.5) * unit, v = (py + 0.5) * unit;
          double a = ca * u + sa * v + ox;   /* along the brushing */
          double b = -sa * u + ca * v + oy;  /* across it */
          /* Long thin streaks at several widths, patches, then a fine grain. */
          double streak = 0.55 * value_noise (sheet, a / 70.0, b / 0.9)
                          + 0.30 * value_noise (sheet + 1, a / 24.0, b / 0.45)
                          + 0.15 * value_noise (sheet + 2, a / 200.0, b / 4.0);
          double patch = 0.6 * value_noise (sheet + 3, a / 60.0, b / 60.0)
                         + 0.4 * value_noise (sheet + 4, a / 18.0, b / 18.0);
          double grain = value_noise (sheet + 5, a / 1.3, b / 1.3);
          double l = tone * (1.0 + streaks * streak + 0.05 * patch + 0.035 * grain);

          row[px] = pack_rgb (steel.r * l, steel.g * l, steel.b * l);
        }
    }
  cairo_surface_mark_dirty (c->image);
}

static void
draw_scratch (Canvas *c)
{
  Rng *rng = &c->defect;
  double cx = rng_range (rng, 64, 192), cy = rng_range (rng, 64, 192);
  double angle = rng_range (rng, 0, G_PI), half = rng_range (rng, 22, 55);
  double bend = rng_range (rng, -0.25, 0.25) * half, width = rng_range (rng, 0.9, 1.8);
  double dx = cos (angle) * half, dy = sin (angle) * half;
  double nx = -sin (angle) * bend, ny = cos (angle) * bend;
  double p[8] = { cx - dx, cy - dy, cx - dx / 3 + nx, cy - dy / 3 + ny,
                  cx + dx / 3 + nx, cy + dy / 3 + ny, cx + dx, cy + dy };

  if (c->draw_defect)
    {
      cairo_t *cr = c->cr;
      cairo_pattern_t *fade = cairo_pattern_create_linear (p[0], p[1], p[6], p[7]);

      /* Scratches thin out at both ends. */
      cairo_pattern_add_color_stop_rgba (fade, 0.0, 0, 0, 0, 0.0);
      cairo_pattern_add_color_stop_rgba (fade, 0.12, 0, 0, 0, 0.9);
      cairo_pattern_add_color_stop_rgba (fade, 0.88, 0, 0, 0, 0.9);
      cairo_pattern_add_color_stop_rgba (fade, 1.0, 0, 0, 0, 0.0);
      cairo_push_group (cr);
      cairo_set_line_cap (cr, CAIRO_LINE_CAP_ROUND);
      cairo_move_to (cr, p[0], p[1]);
      cairo_curve_to (cr, p[2], p[3], p[4], p[5], p[6], p[7]);
      cairo_set_source_rgb (cr, 0.2, 0.21, 0.23);
      cairo_set_line_width (cr, width);
      cairo_stroke (cr);
      /* The groove's flank that faces the light (top left). */
      cairo_move_to (cr, p[0] - 0.5 * width, p[1] - 0.5 * width);
      cairo_curve_to (cr, p[2] - 0.5 * width, p[3] - 0.5 * width, p[4] - 0.5 * width,
                      p[5] - 0.5 * width, p[6] - 0.5 * width, p[7] - 0.5 * width);
      cairo_set_source_rgb (cr, 0.96, 0.97, 0.99);
      cairo_set_line_width (cr, 0.6 * width);
      cairo_stroke (cr);
      cairo_pop_group_to_source (cr);
      cairo_mask (cr, fade);
      cairo_pattern_destroy (fade);
    }
  cairo_set_line_cap (c->mask_cr, CAIRO_LINE_CAP_ROUND);
  cairo_move_to (c->mask_cr, p[0], p[1]);
  cairo_curve_to (c->mask_cr, p[2], p[3], p[4], p[5], p[6], p[7]);
  cairo_set_line_width (c->mask_cr, width + 2 * MASK_GROW);
  cairo_stroke (c->mask_cr);
}

static void
draw_spot (Canvas *c)
{
  Rng *rng = &c->defect;
  double cx = rng_range (rng, 48, 208), cy = rng_range (rng, 48, 208);
  double radius = rng_range (rng, 4.5, 10.0), strength = rng_range (rng, 0.6, 0.85);
  /* Rust or an oily residue. */
  Rgb colour = rng_uniform (rng) < 0.5 ? (Rgb) { 0.38, 0.24, 0.12 } : (Rgb) { 0.16, 0.16, 0.17 };
  double speckle[5][3];
  int n_speckles = 2 + rng_int (rng, 4);
  Blob blob;

  blob_random (&blob, rng, cx, cy, radius, 0.3, 12);
  for (int i = 0; i < n_speckles; i++)
    {
      double angle = rng_range (rng, 0, 2 * G_PI), distance = radius * rng_range (rng, 1.2, 1.9);

      speckle[i][0] = cx + cos (angle) * distance;
      speckle[i][1] = cy + sin (angle) * distance;
      speckle[i][2] = rng_range (rng, 0.6, 1.5);
    }

  if (c->draw_defect)
    {
      cairo_t *cr = c->cr;
      cairo_pattern_t *stain = cairo_pattern_create_radial (cx, cy, 0, cx, cy, radius * 1.3);

      /* A dried stain is darkest at its rim. */
      cairo_pattern_add_color_stop_rgba (stain, 0.0, colour.r, colour.g, colour.b, 0.6 * strength);
      cairo_pattern_add_color_stop_rgba (stain, 0.7, colour.r, colour.g, colour.b, 0.85 * strength);
      cairo_pattern_add_color_stop_rgba (stain, 1.0, colour.r, colour.g, colour.b, 0.5 * strength);
      blob_smooth_path (cr, &blob);
      cairo_set_source (cr, stain);
      cairo_fill (cr);
      cairo_pattern_destroy (stain);
      cairo_set_source_rgba (cr, colour.r, colour.g, colour.b, 0.7 * strength);
      for (int i = 0; i < n_speckles; i++)
        {
          cairo_new_sub_path (cr);
          cairo_arc (cr, speckle[i][0], speckle[i][1], speckle[i][2], 0, 2 * G_PI);
        }
      cairo_fill (cr);
    }
  blob_smooth_path (c->mask_cr, &blob);
  mask_fill_grown (c->mask_cr);
  for (int i = 0; i < n_speckles; i++)
    {
      cairo_new_sub_path (c->mask_cr);
      cairo_arc (c->mask_cr, speckle[i][0], speckle[i][1], speckle[i][2] + MASK_GROW, 0,
                 2 * G_PI);
    }
  cairo_fill (c->mask_cr);
}

#define CRACK_MAX 16

typedef struct {
  double x[CRACK_MAX], y[CRACK_MAX];
  int n;
  double width;
} Crack;

static void
crack_walk (Crack *crack, Rng *rng, double x, double y, double angle, int steps, double width)
{
  crack->n = 0;
  crack->width = width;
  for (int i = 0; i <= steps && i < CRACK_MAX; i++)
    {
      double step = rng_range (rng, 2.5, 4.5);

      crack->x[crack->n] = x;
      crack->y[crack->n] = y;
      crack->n++;
      angle += rng_range (rng, -0.5, 0.5);
      x = CLAMP (x + cos (angle) * step, 4.0, CANVAS - 4.0);
      y = CLAMP (y + sin (angle) * step, 4.0, CANVAS - 4.0);
    }
}

static void
crack_path (cairo_t *cr, const Crack *crack, double dx, double dy)
{
  cairo_move_to (cr, crack->x[0] + dx, crack->y[0] + dy);
  for (int i = 1; i < crack->n; i++)
    cairo_line_to (cr, crack->x[i] + dx, crack->y[i] + dy);
}

static void
draw_crack (Canvas *c)
{
  Rng *rng = &c->defect;
  double cx = rng_range (rng, 56, 200), cy = rng_range (rng, 56, 200);
  double angle = rng_range (rng, 0, 2 * G_PI), width = rng_range (rng, 1.0, 1.6);
  Crack cracks[3];
  int fork;

  /* Two arms growing apart from where the crack started, and a branch. */
  crack_walk (&cracks[0], rng, cx, cy, angle, 7 + rng_int (rng, 6), width);
  crack_walk (&cracks[1], rng, cx, cy, angle + G_PI, 7 + rng_int (rng, 6), width);
  fork = 2 + rng_int (rng, cracks[0].n - 3);
  crack_walk (&cracks[2], rng, cracks[0].x[fork], cracks[0].y[fork],
              angle + (rng_uniform (rng) < 0.5 ? -1 : 1) * rng_range (rng, 0.6, 1.1),
              3 + rng_int (rng, 4), 0.6 * width);

  cairo_set_line_cap (c->cr, CAIRO_LINE_CAP_ROUND);
  cairo_set_line_join (c->cr, CAIRO_LINE_JOIN_ROUND);
  for (int k = 0; k < 3 && c->draw_defect; k++)
    {
      const Crack *crack = &cracks[k];

      /* The far wall catches the light from the top left. */
      crack_path (c->cr, crack, 0.7, 0.7);
      cairo_set_source_rgba (c->cr, 0.92, 0.93, 0.95, 0.35);
      cairo_set_line_width (c->cr, 0.7);
      cairo_stroke (c->cr);
      /* Segment by segment, so that the crack narrows towards its tips. */
      cairo_set_source_rgba (c->cr, 0.07, 0.07, 0.08, 0.9);
      for (int i = 0; i + 1 < crack->n; i++)
        {
          cairo_move_to (c->cr, crack->x[i], crack->y[i]);
          cairo_line_to (c->cr, crack->x[i + 1], crack->y[i + 1]);
          cairo_set_line_width (c->cr, crack->width * (1.0 - 0.65 * i / (crack->n - 1)));
          cairo_stroke (c->cr);
        }
    }
  cairo_set_line_cap (c->mask_cr, CAIRO_LINE_CAP_ROUND);
  cairo_set_line_join (c->mask_cr, CAIRO_LINE_JOIN_ROUND);
  cairo_set_line_width (c->mask_cr, width + 2 * MASK_GROW);
  for (int k = 0; k < 3; k++)
    {
      crack_path (c->mask_cr, &cracks[k], 0, 0);
      cairo_stroke (c->mask_cr);
    }
}

static void
draw_missing_material (Canvas *c)
{
  Rng *rng = &c->defect;
  double cx = rng_range (rng, 48, 208), cy = rng_range (rng, 48, 208);
  double radius = rng_range (rng, 4.5, 9.5);
  Blob chip;

  /* Straight edges: material breaks off along facets. */
  blob_random (&chip, rng, cx, cy, radius, 0.35, 9);

  if (c->draw_defect)
    {
      cairo_t *cr = c->cr;

      cairo_save (cr);
      cairo_new_path (cr);
      blob_polygon_path (cr, &chip, 0, 0, 1.0, cx, cy);
      cairo_clip (cr);
      /* Lit from the top left, the inner wall on the bottom right is bright and the
       * rest of the pit lies in shadow. */
      cairo_set_source_rgb (cr, 0.74, 0.75, 0.77);
      cairo_paint (cr);
      cairo_new_path (cr);
      blob_polygon_path (cr, &chip, -0.18 * radius, -0.18 * radius, 1.0, cx, cy);
      cairo_set_source_rgb (cr, 0.09, 0.09, 0.1);
      cairo_fill (cr);
      cairo_new_path (cr);
      blob_polygon_path (cr, &chip, -0.1 * radius, -0.1 * radius, 0.55, cx, cy);
      cairo_set_source_rgb (cr, 0.2, 0.2, 0.21);
      cairo_fill (cr);
      cairo_restore (cr);
      cairo_new_path (cr);
      blob_polygon_path (cr, &chip, 0, 0, 1.0, cx, cy);
      cairo_set_source_rgba (cr, 0.9, 0.91, 0.93, 0.45);
      cairo_set_line_width (cr, 0.8);
      cairo_stroke (cr);
    }
  cairo_new_path (c->mask_cr);
  blob_polygon_path (c->mask_cr, &chip, 0, 0, 1.0, cx, cy);
  mask_fill_grown (c->mask_cr);
}

static const char *const surface_defects[] = {
  "scratch", "spot", "crack", "missing_material", NULL
};

static void (*const surface_defect_funcs[]) (Canvas *c) = {
  draw_scratch, draw_spot, draw_crack, draw_missing_material,
};

static void
render_surface (Canvas *c, guint64 seed, int defect)
{
  Lighting light;
  double along;

  /* Every image is a window onto one metal sheet per seed. */
  brushed_metal (c, mix64 (seed ^ 0x3c6ef372fe94f82bULL));
  lighting_random (&light, &c->base, 0.0014, 0.15);
  /* Brushed metal reflects in a band across the brushing. */
  along = rng_range (&c->base, -0.05, 0.05);
  light.band_nx = cos (along);
  light.band_ny = sin (along);
  light.band_gain = rng_range (&c->base, 0.04, 0.16);
  light.band_offset = rng_range (&c->base, -110, 110);
  light.band_width = rng_range (&c->base, 25, 60);
  light.noise = 5.0 / 255.0;
  if (defect >= 0)
    surface_defect_funcs[defect] (c);
  finish_image (c, &light);
}

/* Scene "assembly": a small circuit board with ten parts in fixed places */

typedef enum {
  PART_IC,
  PART_ELCAP,
  PART_LED,
  PART_RESISTOR,
  PART_DIODE,
  PART_CRYSTAL,
  PART_HEADER,
  PART_SMD_CAP,
  PART_SMD_RES,
  PART_SCREW,
} PartKind;

typedef struct {
  double body_w, body_h;    /* what casts a shadow */
  double reach_w, reach_h;  /* everything drawn, pins and leads included */
  gboolean round;           /* a disc of diameter body_w */
  Rgb colour;
} PartStyle;

static const PartStyle part_styles[] = {
  [PART_IC] = { 40, 24, 40, 34, FALSE, { 0.1, 0.1, 0.11 } },
  [PART_ELCAP] = { 26, 26, 26, 26, TRUE, { 0.13, 0.25, 0.62 } },
  [PART_LED] = { 14, 14, 14, 14, TRUE, { 0.12, 0.78, 0.22 } },
  [PART_RESISTOR] = { 20, 7, 34, 7, FALSE, { 0.84, 0.74, 0.55 } },
  [PART_DIODE] = { 20, 7, 34, 7, FALSE, { 0.1, 0.1, 0.11 } },
  [PART_CRYSTAL] = { 26, 10, 26, 10, FALSE, { 0.8, 0.8, 0.82 } },
  [PART_HEADER] = { 42, 10, 42, 10, FALSE, { 0.9, 0.87, 0.78 } },
  [PART_SMD_CAP] = { 8, 4.5, 8, 4.5, FALSE, { 0.74, 0.6, 0.42 } },
  [PART_SMD_RES] = { 8, 4.5, 8, 4.5, FALSE, { 0.09, 0.09, 0.1 } },
  [PART_SCREW] = { 10, 10, 10, 10, TRUE, { 0.78, 0.78, 0.8 } },
};

static const Rgb bands_10k[4] = {
  { 0.45, 0.25, 0.1 }, { 0.08, 0.08, 0.08 }, { 0.95, 0.5, 0.1 }, { 0.8, 0.65, 0.25 }
};
static const Rgb bands_220[4] = {
  { 0.8, 0.1, 0.1 }, { 0.8, 0.1, 0.1 }, { 0.45, 0.25, 0.1 }, { 0.8, 0.65, 0.25 }
};

typedef struct {
  PartKind kind;
  double x, y, angle;  /* board units, centred on the board */
  const Rgb *bands;    /* a resistor's colour code */
  Rgb colour;
  gboolean present;
} Part;

enum {
  SLOT_J1, SLOT_Y1, SLOT_U1, SLOT_C1, SLOT_D1, SLOT_R1, SLOT_R2, SLOT_D2, SLOT_C2, SLOT_R3,
  N_SLOTS
};

static const Part slots[N_SLOTS] = {
  [SLOT_J1] = { PART_HEADER, 0, -68, 0, NULL },
  [SLOT_Y1] = { PART_CRYSTAL, -62, -38, 0, NULL },
  [SLOT_U1] = { PART_IC, 0, -4, 0, NULL },
  [SLOT_C1] = { PART_ELCAP, 62, -36, 0, NULL },
  [SLOT_D1] = { PART_LED, 68, 10, 0, NULL },
  [SLOT_R1] = { PART_RESISTOR, -58, 52, 0, bands_10k },
  [SLOT_R2] = { PART_RESISTOR, -16, 52, 0, bands_220 },
  [SLOT_D2] = { PART_DIODE, 26, 52, 0, NULL },
  [SLOT_C2] = { PART_SMD_CAP, -42, 6, G_PI / 2, NULL },
  [SLOT_R3] = { PART_SMD_RES, 34, -4, G_PI / 2, NULL },
};

#define BOARD_W 208.0
#define BOARD_H 176.0

typedef struct {
  double x, y, angle;
  Rgb colour;
} Board;

/* Copper under the solder mask, in board units. */
static const double traces[][12] = {
  { -15, -68, -15, -55, -5, -45, -5, -15.5, NAN },
  { -5, -68, -5, -58, 0, -53, 0, -15.5, NAN },
  { 5, -68, 5, -15.5, NAN },
  { 15, -68, 15, -55, 10, -50, 10, -15.5, NAN },
  { -57, -38, -15, -38, -15, -15.5, NAN },
  { -67, -38, -67, -10, -42, -10, -42, 2.8, NAN },
  { -15, 7.5, -15, 25, -42, 25, -42, 52, NAN },
  { -5, 7.5, -5, 35, -32, 35, -32, 52, NAN },
  { 5, 7.5, 5, 40, 0, 45, 0, 52, NAN },
  { 15, 7.5, 15, 35, 10, 40, 10, 52, NAN },
  { 42, 52, 58, 52, 65.5, 44, 65.5, 10, NAN },
  { 34, -7.2, 34, -24, 46, -36, 57, -36, NAN },
  { 34, -0.8, 34, 10, 44, 20, 44, 46, 42, 52, NAN },
  { 67, -36, 84, -30, 84, 2, 70.5, 10, NAN },
  { -74, 52, -84, 52, -84, -66, -92, -76, NAN },
};

static void
board_transform (cairo_t *cr, const Board *board)
{
  cairo_translate (cr, board->x, board->y);
  cairo_rotate (cr, board->angle);
}

static void
part_transform (cairo_t *cr, const Part *part)
{
  cairo_translate (cr, part->x, part->y);
  cairo_rotate (cr, part->angle);
}

static void
outline_path (cairo_t *cr, PartKind kind, gboolean body, double grow)
{
  const PartStyle *style = &part_styles[kind];
  double w = (body ? style->body_w : style->reach_w) + 2 * grow;
  double h = (body ? style->body_h : style->reach_h) + 2 * grow;

  cairo_new_path (cr);
  if (style->round)
    cairo_arc (cr, 0, 0, w / 2, 0, 2 * G_PI);
  else
    rounded_rect (cr, -w / 2, -h / 2, w, h, MIN (w, h) * 0.2);
}

static void
draw_pads (cairo_t *cr, PartKind kind)
{
  static const Rgb gold = { 0.8, 0.68, 0.36 };

  set_rgb (cr, &gold, 1.0);
  switch (kind)
    {
    case PART_IC:
      for (int i = 0; i < 7; i++)
        {
          cairo_rectangle (cr, -16.4 + 5 * i, -17.5, 2.8, 4);
          cairo_rectangle (cr, -16.4 + 5 * i, 13.5, 2.8, 4);
        }
      break;
    case PART_HEADER:
      for (int i = 0; i < 4; i++)
        cairo_rectangle (cr, -17 + 10 * i, -2, 4, 4);
      break;
    case PART_SMD_CAP:
    case PART_SMD_RES:
      cairo_rectangle (cr, -4.6, -2.5, 2.8, 5);
      cairo_rectangle (cr, 1.8, -2.5, 2.8, 5);
      break;
    case PART_RESISTOR:
    case PART_DIODE:
    case PART_ELCAP:
    case PART_LED:
    case PART_CRYSTAL:
    case PART_SCREW:
      {
        double spacing = kind == PART_RESISTOR || kind == PART_DIODE ? 16 : kind == PART_LED ? 2.5 : 5;

        for (int side = -1; side <= 1; side += 2)
          {
            cairo_new_sub_path (cr);
            cairo_arc (cr, side * spacing, 0, 2.3, 0, 2 * G_PI);
          }
        cairo_fill (cr);
        cairo_set_source_rgb (cr, 0.12, 0.12, 0.12);
        for (int side = -1; side <= 1; side += 2)
          {
            cairo_new_sub_path (cr);
            cairo_arc (cr, side * spacing, 0, 0.9, 0, 2 * G_PI);
          }
      }
      break;
    }
  cairo_fill (cr);
}

static void
draw_board (cairo_t *cr, const Board *board)
{
  static const Rgb silk = { 0.9, 0.92, 0.88 };

  cairo_save (cr);
  board_transform (cr, board);
  /* A soft shadow on the table, as layers of growing size. */
  for (int k = 0; k < 3; k++)
    {
      rounded_rect (cr, -BOARD_W / 2 + 2.5 - k, -BOARD_H / 2 + 3.5 - k, BOARD_W + 2 * k,
                    BOARD_H + 2 * k, 8 + k);
      cairo_set_source_rgba (cr, 0, 0, 0, 0.2);
      cairo_fill (cr);
    }
  rounded_rect (cr, -BOARD_W / 2, -BOARD_H / 2, BOARD_W, BOARD_H, 8);
  set_rgb (cr, &board->colour, 1.0);
  cairo_fill_preserve (cr);
  set_rgb (cr, &board->colour, 1.5);
  cairo_set_line_width (cr, 1.2);
  cairo_stroke (cr);

  cairo_set_line_cap (cr, CAIRO_LINE_CAP_ROUND);
  cairo_set_line_join (cr, CAIRO_LINE_JOIN_ROUND);
  cairo_set_line_width (cr, 1.8);
  set_rgb (cr, &board->colour, 1.35);
  for (size_t t = 0; t < G_N_ELEMENTS (traces); t++)
    {
      cairo_move_to (cr, traces[t][0], traces[t][1]);
      for (int i = 2; !isnan (traces[t][i]); i += 2)
        cairo_line_to (cr, traces[t][i], traces[t][i + 1]);
      cairo_stroke (cr);
    }

  for (int sx = -1; sx <= 1; sx += 2)
    for (int sy = -1; sy <= 1; sy += 2)
      {
        cairo_arc (cr, sx * 92, sy * 76, 5, 0, 2 * G_PI);
        cairo_set_source_rgb (cr, 0.8, 0.68, 0.36);
        cairo_fill (cr);
        cairo_arc (cr, sx * 92, sy * 76, 3, 0, 2 * G_PI);
        cairo_set_source_rgb (cr, 0.14, 0.15, 0.16);
        cairo_fill (cr);
      }

  /* Pads and silkscreen outlines stay where the parts belong, also when one is missing. */
  for (int i = 0; i < N_SLOTS; i++)
    {
      cairo_save (cr);
      part_transform (cr, &slots[i]);
      draw_pads (cr, slots[i].kind);
      outline_path (cr, slots[i].kind, FALSE, 2.5);
      set_rgb (cr, &silk, 1.0);
      cairo_set_line_width (cr, 0.7);
      cairo_stroke (cr);
      cairo_restore (cr);
    }
  cairo_restore (cr);
}

static void
draw_ic (cairo_t *cr)
{
  cairo_set_source_rgb (cr, 0.72, 0.72, 0.74);
  for (int i = 0; i < 7; i++)
    cairo_rectangle (cr, -16.2 + 5 * i, -17, 2.4, 34);
  cairo_fill (cr);
  rounded_rect (cr, -20, -12, 40, 24, 1.5);
  cairo_set_source_rgb (cr, 0.1, 0.1, 0.11);
  cairo_fill (cr);
  /* The orientation notch and dot, and a laser-etched marking. */
  cairo_arc (cr, -20, 0, 2.5, -G_PI / 2, G_PI / 2);
  cairo_set_source_rgb (cr, 0.04, 0.04, 0.05);
  cairo_fill (cr);
  cairo_arc (cr, -15, 7, 1.6, 0, 2 * G_PI);
  cairo_set_source_rgb (cr, 0.2, 0.2, 0.21);
  cairo_fill (cr);
  cairo_set_source_rgba (cr, 0.7, 0.7, 0.72, 0.5);
  cairo_set_line_width (cr, 1.2);
  cairo_move_to (cr, -10, -4);
  cairo_line_to (cr, 12, -4);
  cairo_move_to (cr, -10, 1);
  cairo_line_to (cr, 4, 1);
  cairo_stroke (cr);
}

static void
draw_elcap (cairo_t *cr, const Rgb *sleeve)
{
  cairo_pattern_t *top = cairo_pattern_create_radial (-2.5, -2.5, 0, 0, 0, 9.5);

  cairo_arc (cr, 0, 0, 13, 0, 2 * G_PI);
  set_rgb (cr, sleeve, 1.0);
  cairo_fill (cr);
  /* The minus stripe on the sleeve. */
  cairo_arc (cr, 0, 0, 11.25, 2.4, 3.9);
  cairo_set_source_rgb (cr, 0.8, 0.82, 0.86);
  cairo_set_line_width (cr, 3.5);
  cairo_stroke (cr);
  cairo_pattern_add_color_stop_rgb (top, 0, 0.9, 0.9, 0.92);
  cairo_pattern_add_color_stop_rgb (top, 1, 0.6, 0.6, 0.63);
  cairo_arc (cr, 0, 0, 9.5, 0, 2 * G_PI);
  cairo_set_source (cr, top);
  cairo_fill (cr);
  cairo_pattern_destroy (top);
  cairo_set_source_rgba (cr, 0.2, 0.2, 0.22, 0.6);
  cairo_set_line_width (cr, 0.8);
  cairo_move_to (cr, -6, 0);
  cairo_line_to (cr, 6, 0);
  cairo_move_to (cr, 0, -6);
  cairo_line_to (cr, 0, 6);
  cairo_stroke (cr);
}

static void
draw_led (cairo_t *cr, const Rgb *colour)
{
  cairo_pattern_t *dome = cairo_pattern_create_radial (-1.5, -1.5, 0, 0, 0, 6);

  cairo_arc (cr, 0, 0, 7, 0, 2 * G_PI);
  set_rgb (cr, colour, 0.55);
  cairo_fill (cr);
  cairo_pattern_add_color_stop_rgb (dome, 0, MIN (1, colour->r * 1.3 + 0.15),
                                    MIN (1, colour->g * 1.3 + 0.15), MIN (1, colour->b * 1.3 + 0.15));
  cairo_pattern_add_color_stop_rgb (dome, 1, colour->r * 0.75, colour->g * 0.75, colour->b * 0.75);
  cairo_arc (cr, 0, 0, 5.8, 0, 2 * G_PI);
  cairo_set_source (cr, dome);
  cairo_fill (cr);
  cairo_pattern_destroy (dome);
  cairo_arc (cr, -2, -2.2, 1.3, 0, 2 * G_PI);
  cairo_set_source_rgba (cr, 1, 1, 1, 0.65);
  cairo_fill (cr);
}

static void
draw_axial (cairo_t *cr, const Part *part)
{
  cairo_pattern_t *shading = cairo_pattern_create_linear (0, -3.5, 0, 3.5);

  cairo_set_source_rgb (cr, 0.7, 0.7, 0.72);
  cairo_set_line_width (cr, 1.1);
  cairo_move_to (cr, -16, 0);
  cairo_line_to (cr, 16, 0);
  cairo_stroke (cr);
  cairo_save (cr);
  rounded_rect (cr, -10, -3.5, 20, 7, 3.4);
  cairo_clip_preserve (cr);
  set_rgb (cr, &part->colour, 1.0);
  cairo_fill (cr);
  if (part->kind == PART_RESISTOR && part->bands != NULL)
    for (int i = 0; i < 4; i++)
      {
        cairo_rectangle (cr, (i < 3 ? -7 + 3.2 * i : 5) - 0.9, -3.5, 1.8, 7);
        set_rgb (cr, &part->bands[i], 1.0);
        cairo_fill (cr);
      }
  else if (part->kind == PART_DIODE)
    {
      cairo_rectangle (cr, 5, -3.5, 2.5, 7);
      cairo_set_source_rgb (cr, 0.72, 0.72, 0.74);
      cairo_fill (cr);
    }
  /* A cylinder: lit from above, dark below. */
  cairo_pattern_add_color_stop_rgba (shading, 0.0, 1, 1, 1, 0.1);
  cairo_pattern_add_color_stop_rgba (shading, 0.3, 1, 1, 1, 0.3);
  cairo_pattern_add_color_stop_rgba (shading, 1.0, 0, 0, 0, 0.4);
  cairo_set_source (cr, shading);
  cairo_paint (cr);
  cairo_pattern_destroy (shading);
  cairo_restore (cr);
}

static void
draw_crystal (cairo_t *cr)
{
  cairo_pattern_t *metal = cairo_pattern_create_linear (-13, -5, 13, 5);

  cairo_pattern_add_color_stop_rgb (metal, 0, 0.9, 0.9, 0.92);
  cairo_pattern_add_color_stop_rgb (metal, 0.5, 0.68, 0.68, 0.7);
  cairo_pattern_add_color_stop_rgb (metal, 1, 0.8, 0.8, 0.82);
  rounded_rect (cr, -13, -5, 26, 10, 4.9);
  cairo_set_source (cr, metal);
  cairo_fill (cr);
  cairo_pattern_destroy (metal);
  rounded_rect (cr, -11.8, -3.8, 23.6, 7.6, 3.7);
  cairo_set_source_rgba (cr, 0.45, 0.45, 0.48, 0.6);
  cairo_set_line_width (cr, 0.6);
  cairo_stroke (cr);
}

static void
draw_header (cairo_t *cr, const Rgb *housing)
{
  cairo_rectangle (cr, -21, -5, 42, 10);
  set_rgb (cr, housing, 1.0);
  cairo_fill (cr);
  set_rgb (cr, housing, 0.7);
  cairo_set_line_width (cr, 0.6);
  for (int i = 1; i < 4; i++)
    {
      cairo_move_to (cr, -20 + 10 * i, -5);
      cairo_line_to (cr, -20 + 10 * i, 5);
    }
  cairo_stroke (cr);
  for (int i = 0; i < 4; i++)
    {
      cairo_rectangle (cr, -16.3 + 10 * i, -1.3, 2.6, 2.6);
      cairo_set_source_rgb (cr, 0.86, 0.72, 0.34);
      cairo_fill (cr);
    }
}

static void
draw_smd (cairo_t *cr, const Rgb *body)
{
  cairo_rectangle (cr, -4, -2.25, 8, 4.5);
  set_rgb (cr, body, 1.0);
  cairo_fill (cr);
  cairo_set_source_rgb (cr, 0.78, 0.78, 0.8);
  cairo_rectangle (cr, -4, -2.25, 1.6, 4.5);
  cairo_rectangle (cr, 2.4, -2.25, 1.6, 4.5);
  cairo_fill (cr);
}

static void
draw_screw (cairo_t *cr)
{
  cairo_pattern_t *head = cairo_pattern_create_radial (-1.5, -1.5, 0, 0, 0, 5);

  cairo_pattern_add_color_stop_rgb (head, 0, 0.92, 0.92, 0.94);
  cairo_pattern_add_color_stop_rgb (head, 1, 0.5, 0.5, 0.53);
  cairo_arc (cr, 0, 0, 5, 0, 2 * G_PI);
  cairo_set_source (cr, head);
  cairo_fill (cr);
  cairo_pattern_destroy (head);
  cairo_set_source_rgb (cr, 0.2, 0.2, 0.22);
  cairo_set_line_width (cr, 1.1);
  cairo_move_to (cr, -3.2, 0);
  cairo_line_to (cr, 3.2, 0);
  cairo_move_to (cr, 0, -3.2);
  cairo_line_to (cr, 0, 3.2);
  cairo_stroke (cr);
}

static void
draw_part (cairo_t *cr, const Board *board, const Part *part)
{
  cairo_save (cr);
  board_transform (cr, board);
  /* The shadow falls to the bottom right whatever the part's own rotation. */
  for (int k = 1; k <= 2; k++)
    {
      cairo_save (cr);
      cairo_translate (cr, part->x + 0.8 * k, part->y + 1.0 * k);
      cairo_rotate (cr, part->angle);
      outline_path (cr, part->kind, TRUE, 0);
      cairo_set_source_rgba (cr, 0, 0, 0, 0.22);
      cairo_fill (cr);
      cairo_restore (cr);
    }
  part_transform (cr, part);
  switch (part->kind)
    {
    case PART_IC:
      draw_ic (cr);
      break;
    case PART_ELCAP:
      draw_elcap (cr, &part->colour);
      break;
    case PART_LED:
      draw_led (cr, &part->colour);
      break;
    case PART_RESISTOR:
    case PART_DIODE:
      draw_axial (cr, part);
      break;
    case PART_CRYSTAL:
      draw_crystal (cr);
      break;
    case PART_HEADER:
      draw_header (cr, &part->colour);
      break;
    case PART_SMD_CAP:
    case PART_SMD_RES:
      draw_smd (cr, &part->colour);
      break;
    case PART_SCREW:
      draw_screw (cr);
      break;
    }
  cairo_restore (cr);
}

static void
mask_part (Canvas *c, const Board *board, const Part *part)
{
  cairo_save (c->mask_cr);
  board_transform (c->mask_cr, board);
  part_transform (c->mask_cr, part);
  outline_path (c->mask_cr, part->kind, FALSE, MASK_GROW);
  cairo_fill (c->mask_cr);
  cairo_restore (c->mask_cr);
}

static void
missing_part (Canvas *c, const Board *board, Part *parts, int *n_parts)
{
  Part *part = &parts[rng_int (&c->defect, N_SLOTS)];

  mask_part (c, board, part);
  part->present = FALSE;
}

static void
extra_part (Canvas *c, const Board *board, Part *parts, int *n_parts)
{
  /* Free board areas, where a loose part can end up. */
  static const double spots[][2] = {
    { 40, 26 }, { -84, 14 }, { 80, 60 }, { 34, -60 }, { -40, -62 }, { -30, 72 },
  };
  static const PartKind kinds[] = { PART_SCREW, PART_SMD_CAP, PART_SMD_RES, PART_RESISTOR };
  Rng *rng = &c->defect;
  int spot = rng_int (rng, G_N_ELEMENTS (spots));
  Part *part = &parts[(*n_parts)++];

  part->kind = kinds[rng_int (rng, G_N_ELEMENTS (kinds))];
  part->x = spots[spot][0] + rng_range (rng, -5, 5);
  part->y = spots[spot][1] + rng_range (rng, -5, 5);
  part->angle = rng_range (rng, 0, G_PI);
  part->bands = part->kind == PART_RESISTOR ? bands_220 : NULL;
  part->colour = part_styles[part->kind].colour;
  part->present = TRUE;
  mask_part (c, board, part);
}

static void
swapped_parts (Canvas *c, const Board *board, Part *parts, int *n_parts)
{
  /* Parts with the same footprint, which a placement machine can confuse. */
  static const int pairs[][2] = {
    { SLOT_R1, SLOT_D2 }, { SLOT_R2, SLOT_D2 }, { SLOT_C2, SLOT_R3 },
  };
  const int *pair = pairs[rng_int (&c->defect, G_N_ELEMENTS (pairs))];
  Part *a = &parts[pair[0]], *b = &parts[pair[1]];
  Part saved = *a;

  a->kind = b->kind;
  a->bands = b->bands;
  a->colour = b->colour;
  b->kind = saved.kind;
  b->bands = saved.bands;
  b->colour = saved.colour;
  mask_part (c, board, a);
  mask_part (c, board, b);
}

static void
wrong_colour (Canvas *c, const Board *board, Part *parts, int *n_parts)
{
  static const struct {
    int slot;
    Rgb colours[3];
  } choices[] = {
    { SLOT_D1, { { 0.9, 0.12, 0.1 }, { 0.95, 0.6, 0.08 }, { 0.15, 0.35, 0.95 } } },
    { SLOT_C1, { { 0.8, 0.4, 0.1 }, { 0.45, 0.15, 0.5 }, { 0.12, 0.12, 0.13 } } },
    { SLOT_J1, { { 0.13, 0.13, 0.14 }, { 0.75, 0.15, 0.12 }, { 0.2, 0.35, 0.75 } } },
    { SLOT_R1, { { 0.35, 0.55, 0.85 }, { 0.45, 0.7, 0.5 }, { 0.85, 0.3, 0.35 } } },
  };
  Rng *rng = &c->defect;
  int choice = rng_int (rng, G_N_ELEMENTS (choices));
  Part *part = &parts[choices[choice].slot];

  part->colour = choices[choice].colours[rng_int (rng, 3)];
  mask_part (c, board, part);
}

static const char *const assembly_defects[] = {
  "missing_part", "extra_part", "swapped_parts", "wrong_colour", NULL
};

static void (*const assembly_defect_funcs[]) (Canvas *c, const Board *board, Part *parts,
                                              int *n_parts) = {
  missing_part, extra_part, swapped_parts, wrong_colour,
};

/* An anti-static mat under the board. */
static void
mat_texture (Canvas *c)
{
  Rng *rng = &c->base;
  double ox = rng_range (rng, 0, 1e4), oy = rng_range (rng, 0, 1e4);
  double unit = CANVAS / c->size;
  guint8 *data = cairo_image_surface_get_data (c->image);
  int stride = cairo_image_surface_get_stride (c->image);

  cairo_surface_flush (c->image);
  for (int py = 0; py < c->size; py++)
    {
      guint32 *row = (guint32 *) (data + (size_t) py * stride);

      for (int px = 0; px < c->size; px++)
        {
          double u = (px + 0.5) * unit + ox, v = (py + 0.5) * unit + oy;
          double l = 1.0 + 0.08 * value_noise (0xa11ce, u / 2.5, v / 2.5)
                     + 0.05 * value_noise (0xb0b, u / 30.0, v / 30.0);

          row[px] = pack_rgb (0.22 * l, 0.24 * l, 0.27 * l);
        }
    }
  cairo_surface_mark_dirty (c->image);
}

static void
render_assembly (Canvas *c, guint64 seed, int defect)
{
  Rng *rng = &c->base;
  Part parts[N_SLOTS + 1], changed[N_SLOTS + 1];
  int n_parts = N_SLOTS, n_changed = N_SLOTS;
  const Part *drawn;
  Board board;
  Lighting light;
  double shade;

  mat_texture (c);
  board.x = HALF_CANVAS + rng_range (rng, -4, 4);
  board.y = HALF_CANVAS + rng_range (rng, -4, 4);
  board.angle = rng_range (rng, -0.03, 0.03);
  shade = rng_range (rng, 0.92, 1.08);
  board.colour = (Rgb) { 0.09 * shade, 0.36 * shade * rng_range (rng, 0.97, 1.03), 0.19 * shade };
  for (int i = 0; i < N_SLOTS; i++)
    {
      parts[i] = slots[i];
      parts[i].x += rng_range (rng, -0.8, 0.8);
      parts[i].y += rng_range (rng, -0.8, 0.8);
      parts[i].angle += rng_range (rng, -0.035, 0.035);
      parts[i].colour = part_styles[parts[i].kind].colour;
      parts[i].present = TRUE;
    }
  lighting_random (&light, rng, 0.0012, 0.2);
  light.mottle = 0.03;
  light.mottle_x = rng_range (rng, 0, 1e4);
  light.mottle_y = rng_range (rng, 0, 1e4);

  memcpy (changed, parts, sizeof parts);
  if (defect >= 0)
    assembly_defect_funcs[defect] (c, &board, changed, &n_changed);
  drawn = c->draw_defect ? changed : parts;
  draw_board (c->cr, &board);
  for (int i = 0; i < (c->draw_defect ? n_changed : n_parts); i++)
    if (drawn[i].present)
      draw_part (c->cr, &board, &drawn[i]);
  finish_image (c, &light);
}

/* Scenes */

typedef struct {
  const char *name;
  const char *const *defects;
  void (*render) (Canvas *c, guint64 seed, int defect);  /* defect -1: a good image */
} Scene;

static const Scene scenes[] = {
  { "surface", surface_defects, render_surface },
  { "assembly", assembly_defects, render_assembly },
};

static const char *const scene_names[] = { "surface", "assembly", NULL };

static const Scene *
find_scene (const char *name)
{
  for (size_t i = 0; i < G_N_ELEMENTS (scenes); i++)
    if (g_strcmp0 (scenes[i].name, name) == 0)
      return &scenes[i];
  return NULL;
}

static int
find_defect (const Scene *scene, const char *defect)
{
  for (int i = 0; scene->defects[i] != NULL; i++)
    if (g_str_equal (scene->defects[i], defect))
      return i;
  return -1;
}

void
ead_demo_options_init (EadDemoOptions *options)
{
  g_return_if_fail (options != NULL);

  memset (options, 0, sizeof *options);
  options->n_train = EAD_DEMO_DEFAULT_TRAIN;
  options->n_test_good = EAD_DEMO_DEFAULT_TEST_GOOD;
  options->n_test_defect = EAD_DEMO_DEFAULT_TEST_DEFECT;
  options->size = EAD_DEMO_DEFAULT_SIZE;
}

const char *const *
ead_demo_scene_names (void)
{
  return scene_names;
}

const char *const *
ead_demo_defect_names (const char *scene)
{
  const Scene *found = find_scene (scene);

  return found != NULL ? found->defects : NULL;
}

static gboolean
check_size (int size, GError **error)
{
  if (size < EAD_DEMO_MIN_SIZE || size > EAD_DEMO_MAX_SIZE)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "image size %d is out of range (%d to %d pixels)", size, EAD_DEMO_MIN_SIZE,
                   EAD_DEMO_MAX_SIZE);
      return FALSE;
    }
  return TRUE;
}

static gboolean
unknown_scene (const char *name, GError **error)
{
  g_autofree char *known = g_strjoinv (", ", (char **) scene_names);

  g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID, "unknown scene '%s' (expected one of: %s)",
               name, known);
  return FALSE;
}

gboolean
ead_demo_render (const char *scene,
                 const char *split,
                 const char *defect,
                 int index,
                 guint64 seed,
                 int size,
                 gboolean draw_defect,
                 cairo_surface_t **image,
                 cairo_surface_t **mask,
                 GError **error)
{
  const Scene *found;
  int defect_index = -1;
  guint64 key;
  Canvas c = { 0 };

  g_return_val_if_fail (scene != NULL && split != NULL && image != NULL, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  found = find_scene (scene);
  if (found == NULL)
    return unknown_scene (scene, error);
  if (!g_str_equal (split, "train") && !g_str_equal (split, "test"))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                   "unknown split '%s' (expected train or test)", split);
      return FALSE;
    }
  if (defect != NULL && !g_str_equal (defect, "good"))
    {
      g_autofree char *known = g_strjoinv (", ", (char **) found->defects);

      defect_index = find_defect (found, defect);
      if (defect_index < 0)
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                       "scene %s has no defect '%s' (expected good or one of: %s)", scene,
                       defect, known);
          return FALSE;
        }
      if (g_str_equal (split, "train"))
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                       "the train split holds only good images, not '%s'", defect);
          return FALSE;
        }
    }
  if (index < 0)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID, "image index %d is negative", index);
      return FALSE;
    }
  if (!check_size (size, error))
    return FALSE;

  key = image_key (seed, scene, split, defect_index < 0 ? "good" : defect, index);
  c.size = size;
  c.base = rng_stream (key, "base");
  c.defect = rng_stream (key, "defect");
  c.noise = rng_stream (key, "noise");
  c.draw_defect = draw_defect;
  c.image = cairo_image_surface_create (CAIRO_FORMAT_RGB24, size, size);
  c.cr = cairo_create (c.image);
  cairo_scale (c.cr, size / CANVAS, size / CANVAS);
  if (defect_index >= 0)
    {
      c.mask = cairo_image_surface_create (CAIRO_FORMAT_A8, size, size);
      c.mask_cr = cairo_create (c.mask);
      cairo_scale (c.mask_cr, size / CANVAS, size / CANVAS);
      cairo_set_antialias (c.mask_cr, CAIRO_ANTIALIAS_NONE);
      cairo_set_source_rgba (c.mask_cr, 0, 0, 0, 1);
    }

  found->render (&c, seed, defect_index);

  cairo_destroy (c.cr);
  if (c.mask_cr != NULL)
    cairo_destroy (c.mask_cr);
  cairo_surface_flush (c.image);
  if (c.mask != NULL)
    cairo_surface_flush (c.mask);
  *image = c.image;
  if (mask != NULL)
    *mask = c.mask;
  else if (c.mask != NULL)
    cairo_surface_destroy (c.mask);
  return TRUE;
}

/* Writing the dataset */

static void
png_append (png_structp png, png_bytep data, size_t length)
{
  g_byte_array_append (png_get_io_ptr (png), data, (guint) length);
}

static void
png_error_cb (png_structp png, png_const_charp message)
{
  png_longjmp (png, 1);
}

/* The settings are fixed, so libpng has nothing to warn about that could matter. */
static void
png_warning_cb (png_structp png, png_const_charp message)
{
}

static gboolean
png_encode_rows (png_structp png, png_infop info, cairo_surface_t *surface, guint8 *row)
{
  int width = cairo_image_surface_get_width (surface);
  int height = cairo_image_surface_get_height (surface);
  int stride = cairo_image_surface_get_stride (surface);
  const guint8 *data = cairo_image_surface_get_data (surface);
  gboolean grey = cairo_image_surface_get_format (surface) == CAIRO_FORMAT_A8;

  if (setjmp (png_jmpbuf (png)))
    return FALSE;
  /* Sensor noise leaves little to compress: level 1 with the Sub filter is several
   * times faster than zlib's default level, for files about 15% larger. */
  png_set_compression_level (png, 1);
  png_set_filter (png, PNG_FILTER_TYPE_BASE, PNG_FILTER_SUB);
  png_set_IHDR (png, info, (png_uint_32) width, (png_uint_32) height, 8,
                grey ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info (png, info);
  for (int y = 0; y < height; y++)
    {
      const guint8 *line = data + (size_t) y * stride;

      if (grey)
        {
          png_write_row (png, line);
          continue;
        }
      for (int x = 0; x < width; x++)
        {
          guint32 pixel = ((const guint32 *) line)[x];

          row[3 * x] = pixel >> 16 & 0xff;
          row[3 * x + 1] = pixel >> 8 & 0xff;
          row[3 * x + 2] = pixel & 0xff;
        }
      png_write_row (png, row);
    }
  png_write_end (png, info);
  return TRUE;
}

/* An RGB24 surface as 8-bit RGB, an A8 surface as 8-bit grey. */
static gboolean
png_encode (cairo_surface_t *surface, GByteArray *out)
{
  g_autofree guint8 *row = g_malloc ((size_t) cairo_image_surface_get_width (surface) * 3);
  png_structp png;
  png_infop info = NULL;
  gboolean ok;

  png = png_create_write_struct (PNG_LIBPNG_VER_STRING, NULL, png_error_cb, png_warning_cb);
  if (png == NULL)
    return FALSE;
  info = png_create_info_struct (png);
  png_set_write_fn (png, out, png_append, NULL);
  ok = info != NULL && png_encode_rows (png, info, surface, row);
  png_destroy_write_struct (&png, &info);
  return ok;
}

static gboolean
write_png (cairo_surface_t *surface, const char *path, GError **error)
{
  g_autoptr (GByteArray) png = g_byte_array_new ();
  g_autoptr (GError) local_error = NULL;

  if (!png_encode (surface, png))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot encode the PNG (out of memory)",
                   path);
      return FALSE;
    }
  /* A temporary file renamed into place, so a reader never sees half an image; synced
   * only when it replaces a file, since a new dataset can simply be generated again. */
  if (!g_file_set_contents_full (path, (const char *) png->data, png->len,
                                 G_FILE_SET_CONTENTS_CONSISTENT
                                   | G_FILE_SET_CONTENTS_ONLY_EXISTING,
                                 0666, &local_error))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot write: %s", path,
                   local_error->message);
      return FALSE;
    }
  return TRUE;
}

static gboolean
make_dir (const char *path, GError **error)
{
  if (g_mkdir_with_parents (path, 0777) != 0)
    {
      int saved_errno = errno;

      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot create the directory: %s", path,
                   g_strerror (saved_errno));
      return FALSE;
    }
  return TRUE;
}

/* With force, a smaller dataset written over a larger one must not keep the larger
 * one's extra images; only our own numbered names are touched. */
static gboolean
remove_stale (const char *dir, const char *suffix, int count, GError **error)
{
  g_autoptr (GDir) listing = g_dir_open (dir, 0, NULL);
  const char *name;

  if (listing == NULL)
    return TRUE;
  while ((name = g_dir_read_name (listing)) != NULL)
    {
      size_t digits = strspn (name, "0123456789");
      g_autofree char *path = NULL;

      if (digits < 3 || !g_str_equal (name + digits, suffix)
          || g_ascii_strtoull (name, NULL, 10) < (guint64) count)
        continue;
      path = g_build_filename (dir, name, NULL);
      if (g_unlink (path) != 0)
        {
          int saved_errno = errno;

          g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot remove: %s", path,
                       g_strerror (saved_errno));
          return FALSE;
        }
    }
  return TRUE;
}

static gboolean
check_target (const char *dir, gboolean force, GError **error)
{
  g_autoptr (GDir) listing = NULL;
  g_autoptr (GError) local_error = NULL;

  if (!g_file_test (dir, G_FILE_TEST_EXISTS))
    return TRUE;
  if (!g_file_test (dir, G_FILE_TEST_IS_DIR))
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: exists and is not a directory", dir);
      return FALSE;
    }
  listing = g_dir_open (dir, 0, &local_error);
  if (listing == NULL)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO, "%s: cannot read the directory: %s", dir,
                   local_error->message);
      return FALSE;
    }
  if (!force && g_dir_read_name (listing) != NULL)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_IO,
                   "%s: the directory exists and is not empty; refusing to write into it "
                   "without force (ead demo --force)", dir);
      return FALSE;
    }
  return TRUE;
}

static gboolean
check_options (const EadDemoOptions *options, GError **error)
{
  const struct {
    const char *what;
    int value;
  } counts[] = {
    { "training images", options->n_train },
    { "good test images", options->n_test_good },
    { "test images per defect", options->n_test_defect },
  };

  for (size_t i = 0; i < G_N_ELEMENTS (counts); i++)
    if (counts[i].value < 0 || counts[i].value > EAD_DEMO_MAX_COUNT)
      {
        g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID,
                     "the number of %s, %d, is out of range (0 to %d)", counts[i].what,
                     counts[i].value, EAD_DEMO_MAX_COUNT);
        return FALSE;
      }
  if (!check_size (options->size, error))
    return FALSE;
  if (options->scenes != NULL && options->scenes[0] == NULL)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID, "no scene given");
      return FALSE;
    }
  for (int i = 0; options->scenes != NULL && options->scenes[i] != NULL; i++)
    {
      if (find_scene (options->scenes[i]) == NULL)
        return unknown_scene (options->scenes[i], error);
      for (int j = 0; j < i; j++)
        if (g_str_equal (options->scenes[i], options->scenes[j]))
          {
            g_set_error (error, EAD_ERROR, EAD_ERROR_INVALID, "scene '%s' given twice",
                         options->scenes[i]);
            return FALSE;
          }
    }
  return TRUE;
}

/* One folder of images (and the masks of a defect) of one scene. */
typedef struct {
  const char *scene;
  const char *split;
  const char *defect;  /* NULL for good images */
  int count;
  int first;           /* its first image's number in the whole dataset */
  char *image_dir;
  char *mask_dir;
} ImageSet;

static gboolean
prepare_set (ImageSet *set, const char *dir, gboolean force, GError **error)
{
  set->image_dir = g_build_filename (dir, set->scene, set->split,
                                     set->defect != NULL ? set->defect : "good", NULL);
  if (set->defect != NULL)
    set->mask_dir = g_build_filename (dir, set->scene, "ground_truth", set->defect, NULL);
  if (force
      && (!remove_stale (set->image_dir, ".png", set->count, error)
          || (set->mask_dir != NULL && !remove_stale (set->mask_dir, "_mask.png", set->count,
                                                      error))))
    return FALSE;
  return set->count == 0
         || (make_dir (set->image_dir, error)
             && (set->mask_dir == NULL || make_dir (set->mask_dir, error)));
}

static gboolean
write_image (const ImageSet *set, int index, const EadDemoOptions *options, GError **error)
{
  g_autofree char *name = g_strdup_printf ("%03d.png", index);
  g_autofree char *path = g_build_filename (set->image_dir, name, NULL);
  cairo_surface_t *image, *mask = NULL;
  gboolean ok;

  if (!ead_demo_render (set->scene, set->split, set->defect, index, options->seed, options->size,
                        TRUE, &image, &mask, error))
    return FALSE;
  ok = write_png (image, path, error);
  if (ok && mask != NULL)
    {
      g_autofree char *mask_name = g_strdup_printf ("%03d_mask.png", index);
      g_autofree char *mask_path = g_build_filename (set->mask_dir, mask_name, NULL);

      ok = write_png (mask, mask_path, error);
    }
  cairo_surface_destroy (image);
  if (mask != NULL)
    cairo_surface_destroy (mask);
  return ok;
}

/* Images are independent, so worker threads take them in any order; the calling
 * thread collects the results, reports progress and keeps the first error. */
typedef struct {
  const EadDemoOptions *options;
  const ImageSet *sets;
  int n_sets;
  int total;
  gint next;          /* the next image to claim */
  gint failed;        /* once set, claimed images are skipped */
  GAsyncQueue *results;
} Pool;

typedef struct {
  char *path;         /* the image written, NULL when skipped or failed */
  GError *error;
} Result;

static gpointer
pool_worker (gpointer data)
{
  Pool *pool = data;
  int n;

  while ((n = g_atomic_int_add (&pool->next, 1)) < pool->total)
    {
      Result *result = g_new0 (Result, 1);
      int s = pool->n_sets - 1;

      while (pool->sets[s].first > n)
        s--;
      if (!g_atomic_int_get (&pool->failed))
        {
          const ImageSet *set = &pool->sets[s];

          if (write_image (set, n - set->first, pool->options, &result->error))
            {
              g_autofree char *name = g_strdup_printf ("%03d.png", n - set->first);

              result->path = g_build_filename (set->image_dir, name, NULL);
            }
          else
            g_atomic_int_set (&pool->failed, TRUE);
        }
      g_async_queue_push (pool->results, result);
    }
  return NULL;
}

static gboolean
run_pool (Pool *pool, EadDemoProgress progress, gpointer user_data, GError **error)
{
  int n_threads = CLAMP ((int) g_get_num_processors (), 1, 8);
  GThread *threads[8];
  GError *first_error = NULL;
  int done = 0;

  n_threads = MIN (n_threads, MAX (pool->total, 1));
  pool->results = g_async_queue_new ();
  for (int i = 0; i < n_threads; i++)
    threads[i] = g_thread_new ("ead-demo", pool_worker, pool);
  for (int i = 0; i < pool->total; i++)
    {
      Result *result = g_async_queue_pop (pool->results);

      if (result->error != NULL && first_error == NULL)
        first_error = g_steal_pointer (&result->error);
      else if (result->path != NULL && first_error == NULL)
        {
          done++;
          if (progress != NULL)
            progress (result->path, done, pool->total, user_data);
        }
      g_clear_error (&result->error);
      g_free (result->path);
      g_free (result);
    }
  for (int i = 0; i < n_threads; i++)
    g_thread_join (threads[i]);
  g_async_queue_unref (pool->results);
  if (first_error != NULL)
    {
      g_propagate_error (error, first_error);
      return FALSE;
    }
  return TRUE;
}

gboolean
ead_demo_generate (const char *dir,
                   const EadDemoOptions *options,
                   EadDemoProgress progress,
                   gpointer user_data,
                   GError **error)
{
  const char *const *names;
  g_autoptr (GArray) sets = g_array_new (FALSE, TRUE, sizeof (ImageSet));
  Pool pool = { .options = options };
  gboolean ok;

  g_return_val_if_fail (dir != NULL && options != NULL, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  if (!check_options (options, error) || !check_target (dir, options->force, error)
      || !make_dir (dir, error))
    return FALSE;
  names = options->scenes != NULL ? options->scenes : scene_names;
  for (int s = 0; names[s] != NULL; s++)
    {
      const Scene *scene = find_scene (names[s]);
      ImageSet set = { .scene = scene->name, .split = "train", .count = options->n_train };

      g_array_append_val (sets, set);
      set.split = "test";
      set.count = options->n_test_good;
      g_array_append_val (sets, set);
      for (int d = 0; scene->defects[d] != NULL; d++)
        {
          set.defect = scene->defects[d];
          set.count = options->n_test_defect;
          g_array_append_val (sets, set);
        }
    }

  ok = TRUE;
  for (guint i = 0; i < sets->len; i++)
    {
      ImageSet *set = &g_array_index (sets, ImageSet, i);

      set->first = pool.total;
      pool.total += set->count;
      ok = ok && prepare_set (set, dir, options->force, error);
    }
  if (ok)
    {
      pool.sets = (const ImageSet *) sets->data;
      pool.n_sets = (int) sets->len;
      ok = run_pool (&pool, progress, user_data, error);
    }
  for (guint i = 0; i < sets->len; i++)
    {
      g_free (g_array_index (sets, ImageSet, i).image_dir);
      g_free (g_array_index (sets, ImageSet, i).mask_dir);
    }
  return ok;
}
