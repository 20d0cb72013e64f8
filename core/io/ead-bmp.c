/* ead-bmp.c: a BMP decoder for uncompressed Windows bitmaps.
 *
 * Handles BITMAPCOREHEADER, BITMAPINFOHEADER and its V2..V5 successors: 1/4/8-bit
 * palettes, 16-bit (555 or bit fields), 24-bit, 32-bit (BI_RGB or bit fields), rows
 * stored bottom-up or top-down.  The headers come from an untrusted file, so every
 * offset and size is checked against the buffer before the pixels are read, without
 * arithmetic that could wrap.
 */
#include "ead-bmp.h"

#include <string.h>

#include "ead-error.h"

#define FILE_HEADER_SIZE 14

enum {
  BI_RGB = 0,
  BI_RLE8 = 1,
  BI_RLE4 = 2,
  BI_BITFIELDS = 3,
  BI_JPEG = 4,
  BI_PNG = 5,
  BI_ALPHABITFIELDS = 6,
};

static inline uint16_t
load_le16 (const uint8_t *p)
{
  return (uint16_t) (p[0] | p[1] << 8);
}

static inline uint32_t
load_le32 (const uint8_t *p)
{
  return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 | (uint32_t) p[3] << 24;
}

gboolean
_ead_bmp_is_bmp (const uint8_t *data, size_t size)
{
  return size >= 2 && data[0] == 'B' && data[1] == 'M';
}

/* A usable colour mask is one run of set bits: anything else has no meaning as a
 * channel and would make the scaling below divide by zero. */
static gboolean
mask_is_valid (uint32_t mask)
{
  uint32_t low;

  if (mask == 0)
    return FALSE;
  low = mask >> g_bit_nth_lsf (mask, -1);
  return (low & (low + 1)) == 0;
}

static gboolean
check_masks (const char *name, const EadBmpInfo *info, GError **error)
{
  static const char *const channel[] = { "red", "green", "blue" };

  for (int c = 0; c < 3; c++)
    {
      uint32_t mask = info->masks[c];

      if (!mask_is_valid (mask) || (info->bits == 16 && mask > 0xffff))
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                       "%s: invalid BMP %s bit mask 0x%08x for %u-bit pixels", name,
                       channel[c], mask, info->bits);
          return FALSE;
        }
    }
  return TRUE;
}

gboolean
_ead_bmp_read_header (const char *name,
                      const uint8_t *data,
                      size_t size,
                      guint64 max_pixels,
                      EadBmpInfo *info,
                      GError **error)
{
  const uint8_t *dib = data + FILE_HEADER_SIZE;
  uint32_t header_size, compression = BI_RGB, colours_used = 0;
  int64_t width, height;
  size_t masks_size = 0, last_row, available;
  uint64_t row_bits;

  memset (info, 0, sizeof *info);
  if (size < FILE_HEADER_SIZE + 4)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: truncated BMP data (%zu bytes, the headers alone need more)", name,
                   size);
      return FALSE;
    }
  header_size = load_le32 (dib);
  if (header_size == 16 || header_size == 64)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
                   "%s: OS/2 2.x BMP files are not supported", name);
      return FALSE;
    }
  if (header_size != 12 && header_size != 40 && header_size != 52 && header_size != 56
      && header_size != 108 && header_size != 124)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: unknown BMP header size %u (expected 12, 40, 52, 56, 108 or 124)",
                   name, header_size);
      return FALSE;
    }
  if (size - FILE_HEADER_SIZE < header_size)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: truncated BMP data (the %u-byte header does not fit in %zu bytes)",
                   name, header_size, size);
      return FALSE;
    }

  if (header_size == 12)
    {
      width = load_le16 (dib + 4);
      height = load_le16 (dib + 6);
      info->bits = load_le16 (dib + 10);
      info->palette_entry_size = 3;
    }
  else
    {
      width = (int32_t) load_le32 (dib + 4);
      height = (int32_t) load_le32 (dib + 8);
      info->bits = load_le16 (dib + 14);
      compression = load_le32 (dib + 16);
      colours_used = load_le32 (dib + 32);
      info->palette_entry_size = 4;
    }
  info->pixel_offset = load_le32 (data + 10);

  if (width <= 0 || height == 0 || height == INT32_MIN)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: invalid BMP dimensions %" G_GINT64_FORMAT "x%" G_GINT64_FORMAT,
                   name, width, height);
      return FALSE;
    }
  info->top_down = height < 0;
  info->width = (int) width;
  info->height = (int) ABS (height);
  /* Before the size of the pixel data: a huge image is reported as such, not as a
   * truncated file. */
  if ((guint64) info->width * (guint64) info->height > max_pixels)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_LIMIT,
                   "%s: image is %dx%d = %" G_GUINT64_FORMAT " pixels, over the limit of %"
                   G_GUINT64_FORMAT, name, info->width, info->height,
                   (guint64) info->width * (guint64) info->height, max_pixels);
      return FALSE;
    }

  switch (compression)
    {
    case BI_RGB:
      break;
    case BI_RLE8:
    case BI_RLE4:
      g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
                   "%s: RLE-compressed BMP files are not supported", name);
      return FALSE;
    case BI_JPEG:
    case BI_PNG:
      g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
                   "%s: BMP files wrapping JPEG or PNG data are not supported", name);
      return FALSE;
    case BI_BITFIELDS:
    case BI_ALPHABITFIELDS:
      if (info->bits != 16 && info->bits != 32)
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                       "%s: BMP bit fields need 16 or 32 bits per pixel, not %u", name,
                       info->bits);
          return FALSE;
        }
      break;
    default:
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: unknown BMP compression %u", name, compression);
      return FALSE;
    }

  switch (info->bits)
    {
    case 1:
    case 4:
    case 8:
    case 24:
      break;
    case 16:
    case 32:
      if (header_size == 12)
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                       "%s: %u bits per pixel is invalid in an OS/2 1.x BMP", name,
                       info->bits);
          return FALSE;
        }
      break;
    default:
      g_set_error (error, EAD_ERROR, EAD_ERROR_UNSUPPORTED,
                   "%s: BMP with %u bits per pixel is not supported", name, info->bits);
      return FALSE;
    }

  if (compression == BI_RGB && info->bits == 16)
    {
      /* Without bit fields 16 bits means X1R5G5B5 and 32 bits means BGRX. */
      info->masks[0] = 0x7c00;
      info->masks[1] = 0x03e0;
      info->masks[2] = 0x001f;
    }
  else if (compression == BI_RGB && info->bits == 32)
    {
      info->masks[0] = 0x00ff0000;
      info->masks[1] = 0x0000ff00;
      info->masks[2] = 0x000000ff;
    }
  else if (compression != BI_RGB)
    {
      /* The masks are part of V2 and later headers, and follow a plain
       * BITMAPINFOHEADER. */
      const uint8_t *masks = dib + 40;

      if (header_size == 40)
        {
          masks_size = compression == BI_ALPHABITFIELDS ? 16 : 12;
          if (size - FILE_HEADER_SIZE - header_size < masks_size)
            {
              g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                           "%s: truncated BMP data (the colour masks are missing)", name);
              return FALSE;
            }
        }
      for (int c = 0; c < 3; c++)
        info->masks[c] = load_le32 (masks + 4 * c);
    }
  if ((info->bits == 16 || info->bits == 32) && !check_masks (name, info, error))
    return FALSE;

  if (info->bits <= 8)
    {
      size_t palette_end;

      /* More entries than the pixels can index are never used, so they need not be
       * present either. */
      info->n_colours = colours_used == 0 ? 1u << info->bits
                                           : MIN (colours_used, 1u << info->bits);
      info->palette_offset = FILE_HEADER_SIZE + header_size + masks_size;
      palette_end = info->palette_offset + (size_t) info->n_colours * info->palette_entry_size;
      if (palette_end > size)
        {
          g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                       "%s: truncated BMP data (the %u-colour palette ends at byte %zu of %zu)",
                       name, info->n_colours, palette_end, size);
          return FALSE;
        }
    }

  row_bits = (uint64_t) info->width * info->bits;
  info->row_stride = (size_t) ((row_bits + 31) / 32 * 4);
  /* The padding of the last row is often left out by writers and is never read. */
  last_row = (size_t) ((row_bits + 7) / 8);
  if (info->pixel_offset > size)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: truncated BMP data (the pixels start at byte %zu, past the end "
                   "of the %zu-byte file)", name, info->pixel_offset, size);
      return FALSE;
    }
  available = size - info->pixel_offset;
  if (last_row > available
      || (size_t) (info->height - 1) > (available - last_row) / info->row_stride)
    {
      g_set_error (error, EAD_ERROR, EAD_ERROR_FORMAT,
                   "%s: truncated BMP data (%d rows of %zu bytes do not fit in the %zu bytes "
                   "after offset %zu)", name, info->height, info->row_stride, available,
                   info->pixel_offset);
      return FALSE;
    }
  return TRUE;
}

typedef struct {
  unsigned shift;
  uint32_t max;  /* the largest value of the field once shifted down */
} Channel;

static inline uint8_t
channel_value (uint32_t pixel, uint32_t mask, const Channel *channel)
{
  uint64_t v = (pixel & mask) >> channel->shift;

  if (channel->max == 255)
    return (uint8_t) v;
  return (uint8_t) ((v * 255 + channel->max / 2) / channel->max);
}

void
_ead_bmp_decode (const uint8_t *data, const EadBmpInfo *info, uint8_t *rgb)
{
  uint8_t palette[256][3] = { { 0 } };  /* indices past the stored palette read black */
  Channel channels[3] = { { 0 } };
  size_t out_stride = (size_t) info->width * 3;

  for (unsigned i = 0; i < info->n_colours; i++)
    {
      const uint8_t *entry = data + info->palette_offset + (size_t) i * info->palette_entry_size;

      palette[i][0] = entry[2];
      palette[i][1] = entry[1];
      palette[i][2] = entry[0];
    }
  if (info->bits == 16 || info->bits == 32)
    for (int c = 0; c < 3; c++)
      {
        channels[c].shift = (unsigned) g_bit_nth_lsf (info->masks[c], -1);
        channels[c].max = info->masks[c] >> channels[c].shift;
      }

  for (int y = 0; y < info->height; y++)
    {
      int stored_row = info->top_down ? y : info->height - 1 - y;
      const uint8_t *row = data + info->pixel_offset + (size_t) stored_row * info->row_stride;
      uint8_t *out = rgb + (size_t) y * out_stride;

      for (int x = 0; x < info->width; x++, out += 3)
        {
          unsigned index;
          uint32_t pixel;

          switch (info->bits)
            {
            case 1:
              index = (row[x >> 3] >> (7 - (x & 7))) & 1;
              memcpy (out, palette[index], 3);
              break;
            case 4:
              index = (row[x >> 1] >> ((x & 1) ? 0 : 4)) & 0xf;
              memcpy (out, palette[index], 3);
              break;
            case 8:
              memcpy (out, palette[row[x]], 3);
              break;
            case 24:
              out[0] = row[3 * x + 2];
              out[1] = row[3 * x + 1];
              out[2] = row[3 * x];
              break;
            default:
              pixel = info->bits == 16 ? load_le16 (row + 2 * x) : load_le32 (row + 4 * x);
              for (int c = 0; c < 3; c++)
                out[c] = channel_value (pixel, info->masks[c], &channels[c]);
              break;
            }
        }
    }
}
