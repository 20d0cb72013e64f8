/* test-safetensors.c: the generic safetensors layer round-trips tensors and metadata
 * bit-exactly and reproducibly, converts F16 and BF16, names the tensor and both shapes
 * when a shape is wrong, and writes atomically: a failed write leaves the old file and no
 * temporary file behind. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <glib/gstdio.h>

#include "ead-error.h"
#include "ead-safetensors.h"
#include "ead-test-util.h"

/* ---- helpers ---- */

static char *
make_test_dir (void)
{
  g_autoptr(GError) error = NULL;
  char *dir = g_dir_make_tmp ("test-safetensors-XXXXXX", &error);

  g_assert_no_error (error);
  return dir;
}

static guint
count_entries (const char *path)
{
  GDir *dir = g_dir_open (path, 0, NULL);
  guint count = 0;

  g_assert_nonnull (dir);
  while (g_dir_read_name (dir) != NULL)
    count++;
  g_dir_close (dir);
  return count;
}

static GBytes *
read_bytes (const char *path)
{
  g_autoptr(GError) error = NULL;
  char *contents = NULL;
  gsize size;

  g_assert_true (g_file_get_contents (path, &contents, &size, &error));
  g_assert_no_error (error);
  return g_bytes_new_take (contents, size);
}

/* A safetensors file written by hand: the length field, header as given, then data. */
static void
write_raw (const char *path, const char *header, const void *data, gsize size)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GByteArray) file = g_byte_array_new ();
  guint64 length = GUINT64_TO_LE ((guint64) strlen (header));

  g_byte_array_append (file, (const guint8 *) &length, sizeof length);
  g_byte_array_append (file, (const guint8 *) header, strlen (header));
  g_byte_array_append (file, data, size);
  g_assert_true (g_file_set_contents (path, (const char *) file->data, file->len, &error));
  g_assert_no_error (error);
}

static void
assert_error (const GError *error, int code, const char *path, const char *problem)
{
  g_assert_error (error, EAD_ERROR, code);
  g_test_message ("%s", error->message);
  g_assert_true (g_str_has_prefix (error->message, path));
  g_assert_nonnull (strstr (error->message, problem));
}

static float
float_from_bits (guint32 bits)
{
  float value;

  memcpy (&value, &bits, sizeof value);
  return value;
}

/* ---- the tensors of the round trip ---- */

static const gint64 matrix_shape[] = { 2, 3 };
static const gint64 vector_shape[] = { 5 };
static const gint64 conv_shape[] = { 2, 1, 2, 2 };
static const gint64 empty_shape[] = { 0, 3 };

typedef struct {
  float matrix[6];
  float vector[5];
  float conv[8];
  float scalar[1];
} Tensors;

static void
fill_tensors (Tensors *t)
{
  for (int i = 0; i < 6; i++)
    t->matrix[i] = (float) i / 3.0f - 1.0f;
  /* values whose bits a careless conversion would change */
  t->vector[0] = -0.0f;
  t->vector[1] = INFINITY;
  t->vector[2] = float_from_bits (0x7fc01234);  /* NaN with a payload */
  t->vector[3] = 0x1p-149f;                     /* the smallest subnormal */
  t->vector[4] = -3.4028235e38f;
  for (int i = 0; i < 8; i++)
    t->conv[i] = (float) (i * i) * 0.125f;
  t->scalar[0] = 42.5f;
}

/* Added in this order on purpose: not sorted, so the file order shows. */
static EadSafetensorsWriter *
make_writer (const Tensors *t, gboolean reverse_metadata)
{
  static const char *const metadata[][2] = {
    { "step", "70000" },
    { "seed", "7" },
    { "options", "{\"lr\": 1e-4, \"name\": \"Größe \\\"S\\\"\"}" },
    { "empty", "" },
  };
  EadSafetensorsWriter *writer = ead_safetensors_writer_new ();

  ead_safetensors_writer_add (writer, "student.matrix", 2, matrix_shape, t->matrix);
  ead_safetensors_writer_add (writer, "adam.m.vector", 1, vector_shape, t->vector);
  ead_safetensors_writer_add (writer, "scalar", 0, NULL, t->scalar);
  ead_safetensors_writer_add (writer, "empty", 2, empty_shape, NULL);
  ead_safetensors_writer_add (writer, "conv", 4, conv_shape, t->conv);
  for (guint i = 0; i < G_N_ELEMENTS (metadata); i++)
    {
      guint k = reverse_metadata ? G_N_ELEMENTS (metadata) - 1 - i : i;

      ead_safetensors_writer_set_metadata (writer, metadata[k][0], metadata[k][1]);
    }
  ead_safetensors_writer_set_metadata (writer, "step", "70001");  /* replaces */
  return writer;
}

static char *
write_tensors (const char *dir, const char *name, const Tensors *t)
{
  g_autoptr(EadSafetensorsWriter) writer = make_writer (t, FALSE);
  g_autoptr(GError) error = NULL;
  char *path = g_build_filename (dir, name, NULL);

  g_assert_true (ead_safetensors_writer_write (writer, path, &error));
  g_assert_no_error (error);
  return path;
}

static void
assert_tensor (EadSafetensors *file, const char *name, int n_dims, const gint64 *shape,
               const float *expected, gsize count)
{
  const EadSafetensorsTensor *tensor = ead_safetensors_lookup (file, name);
  g_autoptr(GError) error = NULL;
  g_autofree float *read = g_new0 (float, count + 1);

  g_assert_nonnull (tensor);
  g_assert_true (ead_safetensors_has (file, name));
  g_assert_cmpstr (tensor->dtype, ==, "F32");
  g_assert_cmpint (tensor->n_dims, ==, n_dims);
  g_assert_cmpmem (tensor->shape, n_dims * sizeof (gint64), shape, n_dims * sizeof (gint64));
  g_assert_cmpuint (tensor->n_elements, ==, count);
  read[count] = 99.0f;
  g_assert_true (ead_safetensors_read (file, name, n_dims, shape, read, &error));
  g_assert_no_error (error);
  g_assert_cmpmem (read, count * sizeof (float), expected, count * sizeof (float));
  g_assert_cmpfloat (read[count], ==, 99.0f);
}

/* ---- tests ---- */

static void
test_round_trip (void)
{
  static const char *const sorted[] = { "adam.m.vector", "conv", "empty", "scalar",
                                        "student.matrix", NULL };
  g_autofree char *dir = make_test_dir ();
  g_autoptr(EadSafetensors) file = NULL;
  g_autoptr(GError) error = NULL;
  g_auto(GStrv) names = NULL;
  g_autofree char *path = NULL;
  GHashTable *metadata;
  Tensors t;
  struct stat st;

  fill_tensors (&t);
  path = write_tensors (dir, "round.safetensors", &t);
  g_assert_cmpuint (count_entries (dir), ==, 1);

  file = ead_safetensors_open (path, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (ead_safetensors_get_path (file), ==, path);
  g_assert_cmpint (g_stat (path, &st), ==, 0);
  g_assert_cmpuint (ead_safetensors_get_file_size (file), ==, (guint64) st.st_size);

  metadata = ead_safetensors_get_metadata (file);
  g_assert_nonnull (metadata);
  g_assert_cmpuint (g_hash_table_size (metadata), ==, 4);
  g_assert_cmpstr (ead_safetensors_lookup_metadata (file, "step"), ==, "70001");
  g_assert_cmpstr (ead_safetensors_lookup_metadata (file, "seed"), ==, "7");
  g_assert_cmpstr (ead_safetensors_lookup_metadata (file, "options"), ==,
                   "{\"lr\": 1e-4, \"name\": \"Größe \\\"S\\\"\"}");
  g_assert_cmpstr (ead_safetensors_lookup_metadata (file, "empty"), ==, "");
  g_assert_null (ead_safetensors_lookup_metadata (file, "absent"));

  names = ead_safetensors_list (file);
  g_assert_cmpstrv (names, sorted);
  assert_tensor (file, "student.matrix", 2, matrix_shape, t.matrix, 6);
  assert_tensor (file, "adam.m.vector", 1, vector_shape, t.vector, 5);
  assert_tensor (file, "scalar", 0, NULL, t.scalar, 1);
  assert_tensor (file, "empty", 2, empty_shape, NULL, 0);
  assert_tensor (file, "conv", 4, conv_shape, t.conv, 8);
  ead_test_remove_tree (dir);
}

/* The bytes other readers see: padded header, sorted metadata, tensors in the order added,
 * little-endian F32; and the same input gives the same bytes. */
static void
test_layout (void)
{
  g_autofree char *dir = make_test_dir ();
  g_autofree char *path = NULL;
  g_autofree char *again = g_build_filename (dir, "again.safetensors", NULL);
  g_autoptr(EadSafetensorsWriter) reversed = NULL;
  g_autoptr(GBytes) bytes = NULL;
  g_autoptr(GBytes) bytes_again = NULL;
  g_autoptr(GError) error = NULL;
  g_autofree char *header = NULL;
  const guint8 *contents;
  guint64 header_size;
  const char *positions[5];
  gsize size;
  Tensors t;

  fill_tensors (&t);
  path = write_tensors (dir, "layout.safetensors", &t);
  bytes = read_bytes (path);
  contents = g_bytes_get_data (bytes, &size);
  memcpy (&header_size, contents, 8);
  header_size = GUINT64_FROM_LE (header_size);
  g_assert_cmpuint (header_size % 8, ==, 0);
  g_assert_cmpuint (size, ==, 8 + header_size + 4 * (6 + 5 + 1 + 0 + 8));
  header = g_strndup ((const char *) contents + 8, header_size);
  g_assert_true (g_str_has_prefix (header, "{\"__metadata__\":{"));

  positions[0] = strstr (header, "\"empty\":\"\"");
  positions[1] = strstr (header, "\"options\":");
  positions[2] = strstr (header, "\"seed\":");
  positions[3] = strstr (header, "\"step\":");
  positions[4] = strstr (header, "\"student.matrix\":");
  for (guint i = 0; i < G_N_ELEMENTS (positions); i++)
    g_assert_nonnull (positions[i]);
  for (guint i = 1; i < G_N_ELEMENTS (positions); i++)
    g_assert_true (positions[i - 1] < positions[i]);
  g_assert_true (strstr (header, "\"student.matrix\"") < strstr (header, "\"adam.m.vector\""));
  g_assert_true (strstr (header, "\"scalar\"") < strstr (header, "\"conv\""));
  g_assert_nonnull (strstr (header, "\"scalar\":{\"dtype\":\"F32\",\"shape\":[],"
                                    "\"data_offsets\":[44,48]}"));

  /* the first tensor added comes first in the data block */
  g_assert_cmpmem (contents + 8 + header_size, sizeof t.matrix, t.matrix, sizeof t.matrix);
  g_assert_cmpmem (contents + 8 + header_size + sizeof t.matrix, sizeof t.vector, t.vector,
                   sizeof t.vector);

  /* metadata set in another order, written twice by one writer */
  reversed = make_writer (&t, TRUE);
  g_assert_true (ead_safetensors_writer_write (reversed, again, &error));
  g_assert_no_error (error);
  bytes_again = read_bytes (again);
  g_assert_true (g_bytes_equal (bytes, bytes_again));
  g_bytes_unref (g_steal_pointer (&bytes_again));
  g_assert_true (ead_safetensors_writer_write (reversed, again, &error));
  g_assert_no_error (error);
  bytes_again = read_bytes (again);
  g_assert_true (g_bytes_equal (bytes, bytes_again));
  g_assert_cmpuint (count_entries (dir), ==, 2);
  ead_test_remove_tree (dir);
}

static void
assert_read_fails (EadSafetensors *file, const char *name, int n_dims, const gint64 *shape,
                   const char *problem)
{
  g_autoptr(GError) error = NULL;
  float dst[8];

  for (guint i = 0; i < G_N_ELEMENTS (dst); i++)
    dst[i] = 7.0f;
  g_assert_false (ead_safetensors_read (file, name, n_dims, shape, dst, &error));
  assert_error (error, EAD_ERROR_FORMAT, ead_safetensors_get_path (file), problem);
  for (guint i = 0; i < G_N_ELEMENTS (dst); i++)
    g_assert_cmpfloat (dst[i], ==, 7.0f);
}

static void
test_shape_mismatch (void)
{
  static const gint64 transposed[] = { 3, 2 };
  static const gint64 flat[] = { 6 };
  static const gint64 one[] = { 1 };
  static const gint64 longer[] = { 2, 3, 1 };
  g_autofree char *dir = make_test_dir ();
  g_autoptr(EadSafetensors) file = NULL;
  g_autoptr(GError) error = NULL;
  g_autofree char *path = NULL;
  Tensors t;

  fill_tensors (&t);
  path = write_tensors (dir, "shapes.safetensors", &t);
  file = ead_safetensors_open (path, &error);
  g_assert_no_error (error);
  assert_read_fails (file, "student.matrix", 2, transposed,
                     "student.matrix has shape [2, 3], expected [3, 2]");
  assert_read_fails (file, "student.matrix", 1, flat,
                     "student.matrix has shape [2, 3], expected [6]");
  assert_read_fails (file, "student.matrix", 3, longer,
                     "student.matrix has shape [2, 3], expected [2, 3, 1]");
  assert_read_fails (file, "scalar", 1, one, "scalar has shape [], expected [1]");
  assert_read_fails (file, "adam.m.vector", 0, NULL, "adam.m.vector has shape [5], expected []");
  ead_test_remove_tree (dir);
}

static void
test_missing_tensor (void)
{
  g_autofree char *dir = make_test_dir ();
  g_autoptr(EadSafetensors) file = NULL;
  g_autoptr(GError) error = NULL;
  g_autofree char *path = NULL;
  Tensors t;

  fill_tensors (&t);
  path = write_tensors (dir, "missing.safetensors", &t);
  file = ead_safetensors_open (path, &error);
  g_assert_no_error (error);
  g_assert_false (ead_safetensors_has (file, "adam.v.vector"));
  g_assert_null (ead_safetensors_lookup (file, "adam.v.vector"));
  assert_read_fails (file, "adam.v.vector", 1, vector_shape, "tensor adam.v.vector is missing");
  ead_test_remove_tree (dir);
}

/* F16 and BF16 as other tools write them, in a file with no "__metadata__". */
static void
test_half_precision (void)
{
  static const gint64 half_shape[] = { 2, 3 };
  static const gint64 bf16_shape[] = { 4 };
  static const gint64 f32_shape[] = { 1 };
  /* 1, -2, 65504 (largest), 2^-24 (smallest subnormal), inf, a negative NaN */
  static const guint16 halves[] = { 0x3c00, 0xc000, 0x7bff, 0x0001, 0x7c00, 0xfe00 };
  static const guint32 half_bits[] = { 0x3f800000, 0xc0000000, 0x477fe000, 0x33800000,
                                       0x7f800000, 0xffc00000 };
  /* 1.5, -123.5, a float subnormal, -0: bfloat16 is the top half of the float */
  static const guint16 bfloats[] = { 0x3fc0, 0xc2f7, 0x0001, 0x8000 };
  static const char header[] =
    "{\"h\": {\"dtype\": \"F16\", \"shape\": [2, 3], \"data_offsets\": [0, 12]}, "
    "\"b\": {\"dtype\": \"BF16\", \"shape\": [4], \"data_offsets\": [12, 20]}, "
    "\"f\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [20, 24]}}";
  g_autofree char *dir = make_test_dir ();
  g_autofree char *path = g_build_filename (dir, "half.safetensors", NULL);
  g_autoptr(EadSafetensors) file = NULL;
  g_autoptr(GError) error = NULL;
  guint8 data[24];
  float h[6], b[4], f[1];
  guint32 bits[6];

  for (guint i = 0; i < 6; i++)
    {
      data[2 * i] = halves[i] & 0xff;
      data[2 * i + 1] = halves[i] >> 8;
    }
  for (guint i = 0; i < 4; i++)
    {
      data[12 + 2 * i] = bfloats[i] & 0xff;
      data[12 + 2 * i + 1] = bfloats[i] >> 8;
    }
  /* -0.75f little-endian */
  data[20] = 0x00, data[21] = 0x00, data[22] = 0x40, data[23] = 0xbf;
  write_raw (path, header, data, sizeof data);

  file = ead_safetensors_open (path, &error);
  g_assert_no_error (error);
  g_assert_null (ead_safetensors_get_metadata (file));
  g_assert_null (ead_safetensors_lookup_metadata (file, "step"));
  g_assert_cmpstr (ead_safetensors_lookup (file, "h")->dtype, ==, "F16");
  g_assert_cmpstr (ead_safetensors_lookup (file, "b")->dtype, ==, "BF16");
  g_assert_cmpuint (ead_safetensors_lookup (file, "h")->n_elements, ==, 6);

  g_assert_true (ead_safetensors_read (file, "h", 2, half_shape, h, &error));
  g_assert_no_error (error);
  memcpy (bits, h, sizeof bits);
  for (guint i = 0; i < 6; i++)
    g_assert_cmphex (bits[i], ==, half_bits[i]);

  g_assert_true (ead_safetensors_read (file, "b", 1, bf16_shape, b, &error));
  g_assert_no_error (error);
  g_assert_cmpfloat (b[0], ==, 1.5f);
  g_assert_cmpfloat (b[1], ==, -123.5f);
  g_assert_cmpfloat (b[2], ==, float_from_bits (0x00010000));
  g_assert_true (b[3] == 0.0f && signbit (b[3]));

  g_assert_true (ead_safetensors_read (file, "f", 1, f32_shape, f, &error));
  g_assert_no_error (error);
  g_assert_cmpfloat (f[0], ==, -0.75f);
  ead_test_remove_tree (dir);
}

/* A writer without metadata still writes an (empty) "__metadata__". */
static void
test_empty_metadata (void)
{
  g_autofree char *dir = make_test_dir ();
  g_autofree char *path = g_build_filename (dir, "bare.safetensors", NULL);
  g_autoptr(EadSafetensorsWriter) writer = ead_safetensors_writer_new ();
  g_autoptr(EadSafetensors) file = NULL;
  g_autoptr(GError) error = NULL;
  g_auto(GStrv) names = NULL;

  g_assert_true (ead_safetensors_writer_write (writer, path, &error));
  g_assert_no_error (error);
  file = ead_safetensors_open (path, &error);
  g_assert_no_error (error);
  g_assert_nonnull (ead_safetensors_get_metadata (file));
  g_assert_cmpuint (g_hash_table_size (ead_safetensors_get_metadata (file)), ==, 0);
  names = ead_safetensors_list (file);
  g_assert_cmpuint (g_strv_length (names), ==, 0);
  ead_test_remove_tree (dir);
}

static void
assert_open_fails (const char *path, int code, const char *problem)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(EadSafetensors) file = ead_safetensors_open (path, &error);

  g_assert_null (file);
  assert_error (error, code, path, problem);
}

static void
test_read_bad_files (void)
{
  static const guint8 zeros[16] = { 0 };
  g_autofree char *dir = make_test_dir ();
  g_autofree char *path = g_build_filename (dir, "bad.safetensors", NULL);
  g_autofree char *missing = g_build_filename (dir, "missing.safetensors", NULL);

  assert_open_fails (missing, EAD_ERROR_IO, g_strerror (ENOENT));
  assert_open_fails (dir, EAD_ERROR_IO, "is a directory");
  write_raw (path, "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}, "
                   "\"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
             zeros, 12);
  assert_open_fails (path, EAD_ERROR_FORMAT, "tensors a and b overlap in the data block");
  write_raw (path, "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, "
                   "\"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 12]}}",
             zeros, 12);
  assert_open_fails (path, EAD_ERROR_FORMAT, "bytes 4 to 8 of the data block belong to no");
  write_raw (path, "{\"a\": {\"dtype\": \"I8\", \"shape\": [4], \"data_offsets\": [0, 4]}}",
             zeros, 4);
  assert_open_fails (path, EAD_ERROR_UNSUPPORTED, "tensor a has dtype I8");
  write_raw (path, "{\"__metadata__\": {\"k\": [1]}}", NULL, 0);
  assert_open_fails (path, EAD_ERROR_FORMAT, "metadata value of k is not a string");
  ead_test_remove_tree (dir);
}

static void
assert_write_fails (EadSafetensorsWriter *writer, const char *path, int code,
                    const char *problem)
{
  g_autoptr(GError) error = NULL;

  g_assert_false (ead_safetensors_writer_write (writer, path, &error));
  assert_error (error, code, path, problem);
}

/* Overwriting goes through a temporary file that the rename consumes. */
static void
test_overwrite (void)
{
  g_autofree char *dir = make_test_dir ();
  g_autofree char *path = NULL;
  g_autoptr(EadSafetensorsWriter) writer = ead_safetensors_writer_new ();
  g_autoptr(EadSafetensors) file = NULL;
  g_autoptr(GError) error = NULL;
  float value = 3.0f, read = 0.0f;
  Tensors t;

  fill_tensors (&t);
  path = write_tensors (dir, "model.safetensors", &t);
  ead_safetensors_writer_add (writer, "only", 1, (const gint64[]) { 1 }, &value);
  g_assert_true (ead_safetensors_writer_write (writer, path, &error));
  g_assert_no_error (error);
  g_assert_cmpuint (count_entries (dir), ==, 1);
  file = ead_safetensors_open (path, &error);
  g_assert_no_error (error);
  g_assert_false (ead_safetensors_has (file, "conv"));
  g_assert_true (ead_safetensors_read (file, "only", 1, (const gint64[]) { 1 }, &read, &error));
  g_assert_no_error (error);
  g_assert_cmpfloat (read, ==, 3.0f);
  ead_test_remove_tree (dir);
}

/* Every failure leaves the file that was there byte for byte, and nothing else. */
static void
test_failure_keeps_old (void)
{
  static const gint64 big_shape[] = { 512, 1024 };  /* 2 MiB of F32 */
  g_autofree char *dir = make_test_dir ();
  g_autofree char *path = NULL;
  g_autofree char *subdir = g_build_filename (dir, "subdir", NULL);
  g_autofree char *nowhere = g_build_filename (dir, "no", "such", "x.safetensors", NULL);
  g_autofree float *big = g_new0 (float, 512 * 1024);
  g_autoptr(EadSafetensorsWriter) writer = ead_safetensors_writer_new ();
  g_autoptr(EadSafetensorsWriter) bad_name = ead_safetensors_writer_new ();
  g_autoptr(GBytes) before = NULL;
  g_autoptr(GBytes) after = NULL;
  g_autoptr(GError) error = NULL;
  struct rlimit saved, limited;
  void (*old_handler) (int);
  gboolean ok;
  Tensors t;

  fill_tensors (&t);
  path = write_tensors (dir, "model.safetensors", &t);
  before = read_bytes (path);
  ead_safetensors_writer_add (writer, "big", 2, big_shape, big);

  /* over the file-size limit half-way, as a full disk would be */
  g_assert_cmpint (getrlimit (RLIMIT_FSIZE, &saved), ==, 0);
  limited = saved;
  limited.rlim_cur = 1 << 20;
  old_handler = signal (SIGXFSZ, SIG_IGN);
  g_assert_cmpint (setrlimit (RLIMIT_FSIZE, &limited), ==, 0);
  ok = ead_safetensors_writer_write (writer, path, &error);
  g_assert_cmpint (setrlimit (RLIMIT_FSIZE, &saved), ==, 0);
  signal (SIGXFSZ, old_handler);
  g_assert_false (ok);
  assert_error (error, EAD_ERROR_IO, path, g_strerror (EFBIG));
  g_assert_cmpuint (count_entries (dir), ==, 1);

  ead_safetensors_writer_set_metadata (writer, "note", "\xff\xfe");
  assert_write_fails (writer, path, EAD_ERROR_INVALID, "metadata entry note is not valid UTF-8");
  ead_safetensors_writer_add (bad_name, "bad\xc3", 1, big_shape, big);
  assert_write_fails (bad_name, path, EAD_ERROR_INVALID, "is not valid UTF-8 (not written)");
  g_assert_cmpuint (count_entries (dir), ==, 1);

  after = read_bytes (path);
  g_assert_true (g_bytes_equal (before, after));

  /* a directory in the way: the rename fails and the temporary file goes away */
  g_assert_cmpint (g_mkdir (subdir, 0700), ==, 0);
  ead_safetensors_writer_set_metadata (writer, "note", "fine");
  assert_write_fails (writer, subdir, EAD_ERROR_IO, "cannot replace the file");
  g_assert_true (g_file_test (subdir, G_FILE_TEST_IS_DIR));
  g_assert_cmpuint (count_entries (dir), ==, 2);

  assert_write_fails (writer, nowhere, EAD_ERROR_IO, g_strerror (ENOENT));
  g_assert_cmpuint (count_entries (dir), ==, 2);
  ead_test_remove_tree (dir);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);

  g_test_add_func ("/safetensors/round-trip", test_round_trip);
  g_test_add_func ("/safetensors/layout", test_layout);
  g_test_add_func ("/safetensors/read/shape-mismatch", test_shape_mismatch);
  g_test_add_func ("/safetensors/read/missing-tensor", test_missing_tensor);
  g_test_add_func ("/safetensors/read/half-precision", test_half_precision);
  g_test_add_func ("/safetensors/read/empty-metadata", test_empty_metadata);
  g_test_add_func ("/safetensors/read/bad-files", test_read_bad_files);
  g_test_add_func ("/safetensors/write/overwrite", test_overwrite);
  g_test_add_func ("/safetensors/write/failure-keeps-old", test_failure_keeps_old);
  return g_test_run ();
}
