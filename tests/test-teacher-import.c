/* test-teacher-import.c: PyTorch checkpoints → teacher bundles.
 *
 *   - the restricted unpickler: values, refusals naming the opcode or global and its
 *     offset, limits, and no crash on any truncation or byte flip of a real pickle;
 *   - the checkpoint reader on the committed fixtures of tests/fixtures/pth (made by
 *     make-pth-fixtures.py small): float16/bfloat16/float64, views with offsets and
 *     strides, shared storages, a wrapped state_dict, and every hostile or broken file
 *     refused with the right error; the same from memory (ead_torch_checkpoint_read_bytes);
 *     the inputs the fuzz targets of tests/fuzz found;
 *   - teacher import: key names and shapes checked, the other --model suggested;
 *   - import parity: when /usr/bin/python3 has torch, full-size PDN-S and PDN-M teachers
 *     (nelson1425's and anomalib's key names, one of each size in float16) are made in a
 *     temporary folder, imported, run on the CPU backend and compared with PyTorch's
 *     output: max |c - t| <= 1e-4 * max |t| (test-parity.c's criterion).
 */
#include <math.h>
#include <string.h>
#include <zip.h>

#include <glib/gstdio.h>

#include "ead-test-util.h"
#include "ead-backend.h"
#include "ead-bundle.h"
#include "ead-error.h"
#include "ead-pickle.h"
#include "ead-teacher-import.h"
#include "ead-torch-checkpoint.h"

#define REL_TOL 1e-4

/* ---- helpers ---- */

static char *
pth_path (const char *name)
{
  g_autofree char *file = g_strconcat ("pth/", name, NULL);

  return ead_test_fixture_path (file);
}

/* ---- the unpickler ---- */

static EadPickle *
load_bytes (const char *bytes, gsize size, GError **error)
{
  return ead_pickle_load ((const guint8 *) bytes, size, error);
}

#define LOAD(literal, error) load_bytes (literal, sizeof literal - 1, error)

static void
test_pickle_values (void)
{
  /* {'a': 5, 'b': 1.5, 'c': True, 'd': -256, 'e': (None, 'é'), 'a': 70000}: the repeated
   * key keeps its place and takes the new value */
  static const char *const pieces[] = {
    "\x80\x02}q\x00(",
    "X\x01\x00\x00\x00" "a", "K\x05",
    "X\x01\x00\x00\x00" "b", "G\x3f\xf8\x00\x00\x00\x00\x00\x00",
    "X\x01\x00\x00\x00" "c", "\x88",
    "X\x01\x00\x00\x00" "d", "\x8a\x02\x00\xff",
    "X\x01\x00\x00\x00" "e", "NX\x02\x00\x00\x00\xc3\xa9\x86",
    "X\x01\x00\x00\x00" "a", "J\x70\x11\x01\x00",
    "u.",
  };
  static const gsize sizes[] = { 6, 6, 2, 6, 9, 6, 1, 6, 4, 6, 9, 6, 5, 2 };
  g_autoptr (GError) error = NULL;
  g_autoptr (EadPickle) pickle = NULL;
  g_autoptr (GByteArray) data = g_byte_array_new ();
  const EadPickleValue *root, *e;

  G_STATIC_ASSERT (G_N_ELEMENTS (pieces) == G_N_ELEMENTS (sizes));
  for (size_t i = 0; i < G_N_ELEMENTS (pieces); i++)
    g_byte_array_append (data, (const guint8 *) pieces[i], sizes[i]);
  pickle = ead_pickle_load (data->data, data->len, &error);
  g_assert_no_error (error);
  root = ead_pickle_get_root (pickle);
  g_assert_cmpint (root->kind, ==, EAD_PICKLE_DICT);
  g_assert_cmpuint (root->dict.keys->len, ==, 5);
  g_assert_cmpstr (((EadPickleValue *) root->dict.keys->pdata[0])->string.text, ==, "a");
  g_assert_cmpint (ead_pickle_dict_lookup (root, "a")->integer, ==, 70000);
  g_assert_cmpfloat (ead_pickle_dict_lookup (root, "b")->real, ==, 1.5);
  g_assert_true (ead_pickle_dict_lookup (root, "c")->boolean);
  g_assert_cmpint (ead_pickle_dict_lookup (root, "d")->integer, ==, -256);
  e = ead_pickle_dict_lookup (root, "e");
  g_assert_cmpint (e->kind, ==, EAD_PICKLE_TUPLE);
  g_assert_cmpuint (e->items->len, ==, 2);
  g_assert_cmpint (((EadPickleValue *) e->items->pdata[0])->kind, ==, EAD_PICKLE_NONE);
  g_assert_cmpstr (((EadPickleValue *) e->items->pdata[1])->string.text, ==, "\xc3\xa9");
  g_assert_null (ead_pickle_dict_lookup (root, "z"));
}

/* A list that contains itself through the memo: the arena frees it without a cycle leak
 * (the ASan build checks). */
static void
test_pickle_cycle (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadPickle) pickle = LOAD ("\x80\x02]q\x00h\x00" "a.", &error);
  const EadPickleValue *root;

  g_assert_no_error (error);
  root = ead_pickle_get_root (pickle);
  g_assert_cmpint (root->kind, ==, EAD_PICKLE_LIST);
  g_assert_true (root->items->pdata[0] == root);
}

/* A dict large enough to be indexed, with a key repeated after the index exists. */
static void
test_pickle_big_dict (void)
{
  g_autoptr (GByteArray) data = g_byte_array_new ();
  g_autoptr (GError) error = NULL;
  g_autoptr (EadPickle) pickle = NULL;
  const EadPickleValue *root;

  g_byte_array_append (data, (const guint8 *) "\x80\x02}(", 4);
  for (int i = 0; i < 100; i++)
    {
      char key[4] = { 'k', '0' + i / 10, '0' + i % 10, 0 };
      guint8 op[8] = { 'X', 3, 0, 0, 0, key[0], key[1], key[2] };
      guint8 value[2] = { 'K', i };

      g_byte_array_append (data, op, sizeof op);
      g_byte_array_append (data, value, sizeof value);
    }
  g_byte_array_append (data, (const guint8 *) "X\x03\x00\x00\x00k07K\xc8u.", 12);
  pickle = ead_pickle_load (data->data, data->len, &error);
  g_assert_no_error (error);
  root = ead_pickle_get_root (pickle);
  g_assert_cmpuint (root->dict.keys->len, ==, 100);
  g_assert_cmpint (ead_pickle_dict_lookup (root, "k07")->integer, ==, 200);
  g_assert_cmpint (ead_pickle_dict_lookup (root, "k99")->integer, ==, 99);
}

static const struct {
  const char *bytes;
  gsize size;
  int code;
  const char *needles[3];
} refusals[] = {
#define CASE(literal, code, ...) { literal, sizeof literal - 1, code, { __VA_ARGS__, NULL } }
  CASE ("\x80\x02" "cos\nsystem\nX\x02\x00\x00\x00id\x85R.", EAD_ERROR_UNSUPPORTED,
        "GLOBAL at offset 2", "'os.system' is not allowed"),
  CASE ("\x80\x02" "cbuiltins\neval\n.", EAD_ERROR_UNSUPPORTED, "'builtins.eval'"),
  CASE ("\x80\x02" "ctorch.nn.modules.conv\nConv2d\n.", EAD_ERROR_UNSUPPORTED,
        "torch.nn.modules.conv.Conv2d", "model.state_dict()"),
  CASE ("\x80\x02" "c__torch__.Net\nNet\n.", EAD_ERROR_UNSUPPORTED, "TorchScript"),
  CASE ("\x80\x02" "ctorch\nIntStorage\n.", EAD_ERROR_UNSUPPORTED, "torch.IntStorage",
        "other than float32"),
  CASE ("\x80\x04\x95\x00.", EAD_ERROR_UNSUPPORTED, "pickle protocol 4"),
  CASE ("\x80\x02I1\n.", EAD_ERROR_UNSUPPORTED, "INT at offset 2", "0x49"),
  CASE ("\x80\x02K\x01\x93.", EAD_ERROR_UNSUPPORTED, "STACK_GLOBAL at offset 4"),
  CASE ("\x80\x02\xff.", EAD_ERROR_FORMAT, "byte 0xff at offset 2"),
  CASE ("\x80\x02}", EAD_ERROR_FORMAT, "without STOP"),
  CASE ("\x80\x02s.", EAD_ERROR_FORMAT, "SETITEM at offset 2", "stack underflow"),
  CASE ("\x80\x02(u.", EAD_ERROR_FORMAT, "SETITEMS", "stack underflow"),
  CASE ("\x80\x02}(Nu.", EAD_ERROR_FORMAT, "odd number"),
  CASE ("\x80\x02}(K\x01K\x02u.", EAD_ERROR_UNSUPPORTED, "dict key of type int"),
  CASE ("\x80\x02K\x01(a.", EAD_ERROR_FORMAT, "APPEND", "stack underflow"),
  CASE ("\x80\x02)K\x01" "a.", EAD_ERROR_UNSUPPORTED, "appending to a tuple"),
  CASE ("\x80\x02u.", EAD_ERROR_FORMAT, "no MARK"),
  CASE ("\x80\x02h\x05.", EAD_ERROR_FORMAT, "BINGET at offset 2", "memo entry 5"),
  CASE ("\x80\x02X\xff\xff\xff\xff.", EAD_ERROR_FORMAT, "BINUNICODE", "truncated"),
  CASE ("\x80\x02X\x01\x00\x00\x00\xff.", EAD_ERROR_FORMAT, "UTF-8"),
  CASE ("\x80\x02X\x03\x00\x00\x00" "a\x00" "b.", EAD_ERROR_FORMAT, "UTF-8"),
  CASE ("\x80\x02" "cos", EAD_ERROR_FORMAT, "newline"),
  CASE ("\x80\x02" "co\x01s\nsystem\n.", EAD_ERROR_FORMAT, "byte 0x01"),
  CASE ("\x80\x02K\x01K\x02.", EAD_ERROR_FORMAT, "2 objects"),
  CASE ("\x80\x02(.", EAD_ERROR_FORMAT, "1 MARKs"),
  CASE ("\x80\x02" "ccollections\nOrderedDict\nK\x01\x85R.", EAD_ERROR_UNSUPPORTED,
        "OrderedDict called with arguments"),
  CASE ("\x80\x02K\x01)R.", EAD_ERROR_UNSUPPORTED, "calling a int"),
  CASE ("\x80\x02" "ctorch\nFloatStorage\n)R.", EAD_ERROR_UNSUPPORTED, "calling torch.FloatStorage"),
  CASE ("\x80\x02" "ctorch._utils\n_rebuild_tensor_v2\nK\x01\x85R.", EAD_ERROR_FORMAT,
        "1 arguments"),
  CASE ("\x80\x02(X\x07\x00\x00\x00storageN" "X\x01\x00\x00\x00" "0X\x03\x00\x00\x00" "cpuK\x01tQ.",
        EAD_ERROR_FORMAT, "BINPERSID", "malformed storage"),
  CASE ("\x80\x02K\x01Q.", EAD_ERROR_UNSUPPORTED, "not ('storage'"),
  CASE ("\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00.", EAD_ERROR_UNSUPPORTED,
        "9 bytes"),
  CASE ("\x80\x02}K\x01" "b.", EAD_ERROR_UNSUPPORTED, "BUILD", "state of a dict from a int"),
#undef CASE
};

static void
test_pickle_refusals (void)
{
  for (size_t i = 0; i < G_N_ELEMENTS (refusals); i++)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (EadPickle) pickle = load_bytes (refusals[i].bytes, refusals[i].size, &error);

      g_test_message ("case %zu: %s", i, error ? error->message : "(accepted)");
      g_assert_null (pickle);
      ead_test_assert_error (error, refusals[i].code, refusals[i].needles);
    }
}

static void
test_pickle_limits (void)
{
  const gsize marks = EAD_PICKLE_MAX_STACK + 1;
  const gsize appends = EAD_PICKLE_MAX_OBJECTS + 1;
  g_autofree guint8 *data = g_malloc (2 * appends + 8);
  g_autoptr (GError) error = NULL;
  g_autoptr (EadPickle) pickle = NULL;
  gsize n = 0;
  static const char *const mark_needles[] = { "MARK", NULL };
  static const char *const object_needles[] = { "objects", NULL };
  static const char *const size_needles[] = { "bytes", NULL };

  data[n++] = 0x80;
  data[n++] = 2;
  memset (data + n, '(', marks);
  n += marks;
  data[n++] = '.';
  pickle = ead_pickle_load (data, n, &error);
  g_assert_null (pickle);
  ead_test_assert_error (error, EAD_ERROR_LIMIT, mark_needles);
  g_clear_error (&error);

  /* a list of a million Nones: one object each */
  n = 2;
  data[n++] = ']';
  for (gsize i = 0; i < appends; i++)
    {
      data[n++] = 'N';
      data[n++] = 'a';
    }
  data[n++] = '.';
  pickle = ead_pickle_load (data, n, &error);
  g_assert_null (pickle);
  ead_test_assert_error (error, EAD_ERROR_LIMIT, object_needles);
  g_clear_error (&error);

  pickle = ead_pickle_load (data, EAD_PICKLE_MAX_SIZE + 1, &error);
  g_assert_null (pickle);
  ead_test_assert_error (error, EAD_ERROR_LIMIT, size_needles);
}

/* data.pkl of the committed small.pth, read with libzip. */
static GBytes *
small_pickle (void)
{
  g_autofree char *path = pth_path ("small.pth");
  zip_t *zip = zip_open (path, ZIP_RDONLY, NULL);
  zip_stat_t st;
  zip_file_t *file;
  guint8 *data;

  g_assert_nonnull (zip);
  g_assert_cmpint (zip_stat (zip, "small/data.pkl", 0, &st), ==, 0);
  data = g_malloc (st.size);
  file = zip_fopen (zip, "small/data.pkl", 0);
  g_assert_nonnull (file);
  g_assert_cmpint (zip_fread (file, data, st.size), ==, (zip_int64_t) st.size);
  zip_fclose (file);
  zip_discard (zip);
  return g_bytes_new_take (data, st.size);
}

/* Every truncation and many byte substitutions of a real state_dict pickle: an error or
 * a value, never a crash, a hang or a leak. */
static void
test_pickle_mutations (void)
{
  g_autoptr (GBytes) bytes = small_pickle ();
  gsize size;
  const guint8 *original = g_bytes_get_data (bytes, &size);
  g_autofree guint8 *copy = g_memdup2 (original, size);
  static const guint8 substitutes[] = { 0x00, 0x01, 0x28, 0x2e, 0x52, 0x68, 0x71, 0x74, 0x75,
                                        0x7f, 0x80, 0x85, 0xff };
  guint failures = 0, successes = 0;

  {
    g_autoptr (GError) error = NULL;
    g_autoptr (EadPickle) pickle = ead_pickle_load (original, size, &error);

    g_assert_no_error (error);
    g_assert_cmpint (ead_pickle_get_root (pickle)->kind, ==, EAD_PICKLE_DICT);
  }
  for (gsize cut = 0; cut < size; cut++)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (EadPickle) pickle = ead_pickle_load (original, cut, &error);

      g_assert_null (pickle);
      g_assert_nonnull (error);
    }
  for (gsize i = 0; i < size; i++)
    for (size_t s = 0; s < G_N_ELEMENTS (substitutes); s++)
      {
        g_autoptr (GError) error = NULL;
        g_autoptr (EadPickle) pickle = NULL;

        copy[i] = substitutes[s];
        pickle = ead_pickle_load (copy, size, &error);
        g_assert_true ((pickle == NULL) == (error != NULL));
        if (pickle == NULL)
          failures++;
        else
          successes++;
        copy[i] = original[i];
      }
  g_test_message ("%u mutations refused, %u accepted", failures, successes);
  g_assert_cmpuint (failures, >, 0);
}

/* ---- the checkpoint reader ---- */

static EadTorchCheckpoint *
read_fixture (const char *name, GError **error)
{
  g_autofree char *path = pth_path (name);

  return ead_torch_checkpoint_read (path, error);
}

static void
assert_tensor (const EadTorchCheckpoint *checkpoint, const char *name, EadTorchDtype dtype,
               const char *shape, const float *values, size_t count)
{
  const EadTorchTensor *tensor = ead_torch_checkpoint_lookup (checkpoint, name);
  g_autofree char *found = NULL;

  g_assert_nonnull (tensor);
  found = ead_torch_shape_string (tensor->n_dims, tensor->shape);
  g_assert_cmpstr (found, ==, shape);
  g_assert_cmpint (tensor->dtype, ==, dtype);
  g_assert_cmpuint (tensor->n_elements, ==, count);
  for (size_t i = 0; i < count; i++)
    {
      if (memcmp (&tensor->data[i], &values[i], sizeof (float)) != 0)
        g_error ("%s[%zu] is %.9g, expected %.9g", name, i, tensor->data[i], values[i]);
    }
}

static void
test_checkpoint_small (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadTorchCheckpoint) checkpoint = read_fixture ("small.pth", &error);
  static const char *const order[] = { "weight", "half", "view", "row", "expanded", "bf16",
                                       "double", "scalar" };
  const float weight[] = { -0.5f, -0.25f, 0.0f, 0.25f, 0.5f, 0.75f };
  const float half[] = { 0.5f, -1.25f, 65504.0f, 0x1p-24f, -0.0f, 1024.0f };
  /* base[1:, 2:5].t() of base = arange(24).reshape(4, 6): element [i][j] = 6 (1 + j) + 2 + i */
  const float view[] = { 8, 14, 20, 9, 15, 21, 10, 16, 22 };
  const float row[] = { 0, 1, 2, 3, 4, 5 };
  const float expanded[] = { 7, 7, 7 };
  const float bf16[] = { 1.5f, -3.0f };
  const float dbl[] = { 0.25f, -8.0f };
  const float scalar[] = { 2.5f };

  g_assert_no_error (error);
  g_assert_null (checkpoint->container_key);
  g_assert_cmpuint (checkpoint->tensors->len, ==, G_N_ELEMENTS (order));
  for (size_t i = 0; i < G_N_ELEMENTS (order); i++)
    g_assert_cmpstr (((EadTorchTensor *) checkpoint->tensors->pdata[i])->name, ==, order[i]);
  assert_tensor (checkpoint, "weight", EAD_TORCH_FLOAT32, "[2, 3]", weight, 6);
  assert_tensor (checkpoint, "half", EAD_TORCH_FLOAT16, "[6]", half, 6);
  assert_tensor (checkpoint, "view", EAD_TORCH_FLOAT32, "[3, 3]", view, 9);
  assert_tensor (checkpoint, "row", EAD_TORCH_FLOAT32, "[6]", row, 6);
  assert_tensor (checkpoint, "expanded", EAD_TORCH_FLOAT32, "[3]", expanded, 3);
  assert_tensor (checkpoint, "bf16", EAD_TORCH_BFLOAT16, "[2]", bf16, 2);
  assert_tensor (checkpoint, "double", EAD_TORCH_FLOAT64, "[2, 1]", dbl, 2);
  assert_tensor (checkpoint, "scalar", EAD_TORCH_FLOAT32, "[]", scalar, 1);
  g_assert_null (ead_torch_checkpoint_lookup (checkpoint, "missing"));
}

static void
test_checkpoint_wrapped (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadTorchCheckpoint) checkpoint = read_fixture ("wrapped.pth", &error);
  const float a[] = { 1, 2 };

  g_assert_no_error (error);
  g_assert_cmpstr (checkpoint->container_key, ==, "state_dict");
  g_assert_cmpuint (checkpoint->tensors->len, ==, 1);
  assert_tensor (checkpoint, "a", EAD_TORCH_FLOAT32, "[2]", a, 2);
}

static const struct {
  const char *file;
  int code;
  const char *needles[3];
} bad_files[] = {
  { "hostile-os-system.pth", EAD_ERROR_UNSUPPORTED, { "data.pkl", "'os.system' is not allowed" } },
  { "unknown-opcode.pth", EAD_ERROR_UNSUPPORTED, { "INT at offset 13" } },
  { "module.pth", EAD_ERROR_UNSUPPORTED,
    { "torch.nn.modules.container.Sequential", "model.state_dict()" } },
  { "legacy.pth", EAD_ERROR_UNSUPPORTED, { "legacy torch.save format" } },
  { "out-of-bounds.pth", EAD_ERROR_FORMAT, { "beyond its storage" } },
  { "big-endian.pth", EAD_ERROR_UNSUPPORTED, { "byte order 'big'" } },
  { "truncated.pth", EAD_ERROR_FORMAT, { "truncated.pth", "truncated or corrupt zip" } },
  { "no-data-pkl.pth", EAD_ERROR_FORMAT, { "without data.pkl" } },
  { "missing.pth", EAD_ERROR_IO, { "missing.pth", "cannot open" } },
  { "", EAD_ERROR_IO, { "not a regular file" } },
  { "../cli/surface.png", EAD_ERROR_FORMAT, { "surface.png", "not a PyTorch checkpoint" } },
};

static void
test_checkpoint_refusals (void)
{
  for (size_t i = 0; i < G_N_ELEMENTS (bad_files); i++)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (EadTorchCheckpoint) checkpoint = read_fixture (bad_files[i].file, &error);

      g_test_message ("%s: %s", bad_files[i].file, error ? error->message : "(accepted)");
      g_assert_null (checkpoint);
      ead_test_assert_error (error, bad_files[i].code, bad_files[i].needles);
    }
}

/* Every truncation of small.pth, and every byte inverted: an error or the tensors. */
static void
test_checkpoint_mutations (void)
{
  g_autofree char *source = pth_path ("small.pth");
  g_autofree char *dir = g_dir_make_tmp ("test-teacher-import-XXXXXX", NULL);
  g_autofree char *path = g_build_filename (dir, "mutant.pth", NULL);
  g_autofree char *contents = NULL;
  gsize size;

  g_assert_true (g_file_get_contents (source, &contents, &size, NULL));
  for (gsize i = 0; i < size; i += 7)
    for (int mode = 0; mode < 2; mode++)
      {
        g_autoptr (GError) error = NULL;
        g_autoptr (EadTorchCheckpoint) checkpoint = NULL;
        g_autofree char *copy = g_memdup2 (contents, size);

        copy[i] ^= 0xff;
        g_assert_true (g_file_set_contents_full (path, copy,
                                                 mode == 0 ? (gssize) i : (gssize) size,
                                                 G_FILE_SET_CONTENTS_NONE, 0644, NULL));
        checkpoint = ead_torch_checkpoint_read (path, &error);
        g_assert_true ((checkpoint == NULL) == (error != NULL));
      }
  ead_test_remove_tree (dir);
}

/* Every fixture read from memory as from its file: the same tensors, or the same error. */
static void
test_checkpoint_bytes (void)
{
  g_autofree char *dir = ead_test_fixture_path ("pth");
  g_autoptr (GDir) listing = g_dir_open (dir, 0, NULL);
  const char *name;
  guint n_files = 0;

  g_assert_nonnull (listing);
  while ((name = g_dir_read_name (listing)) != NULL)
    {
      g_autofree char *path = g_build_filename (dir, name, NULL);
      g_autofree char *contents = NULL;
      g_autoptr (GError) file_error = NULL;
      g_autoptr (GError) bytes_error = NULL;
      g_autoptr (EadTorchCheckpoint) from_file = NULL;
      g_autoptr (EadTorchCheckpoint) from_bytes = NULL;
      gsize size;

      g_assert_true (g_file_get_contents (path, &contents, &size, NULL));
      from_file = ead_torch_checkpoint_read (path, &file_error);
      from_bytes = ead_torch_checkpoint_read_bytes ((const guint8 *) contents, size, path,
                                                    &bytes_error);
      g_test_message ("%s: %s", name, file_error ? file_error->message : "(accepted)");
      if (from_file == NULL)
        {
          g_assert_null (from_bytes);
          g_assert_error (bytes_error, EAD_ERROR, file_error->code);
          g_assert_cmpstr (bytes_error->message, ==, file_error->message);
          n_files++;
          continue;
        }
      g_assert_no_error (bytes_error);
      g_assert_cmpstr (from_bytes->path, ==, path);
      g_assert_cmpstr (from_bytes->container_key, ==, from_file->container_key);
      g_assert_cmpuint (from_bytes->tensors->len, ==, from_file->tensors->len);
      for (guint i = 0; i < from_file->tensors->len; i++)
        {
          const EadTorchTensor *a = from_file->tensors->pdata[i];
          const EadTorchTensor *b = from_bytes->tensors->pdata[i];

          g_assert_cmpstr (a->name, ==, b->name);
          g_assert_cmpuint (a->n_elements, ==, b->n_elements);
          g_assert_cmpmem (a->data, a->n_elements * sizeof (float), b->data,
                           b->n_elements * sizeof (float));
        }
      n_files++;
    }
  g_assert_cmpuint (n_files, >=, 10);
}

/* A copy of small.pth with its archive folder named folder and, when byteorder is not
 * NULL, a byteorder record of byteorder_size bytes; the path, in dir. */
static char *
write_small_variant (const char *dir, const char *folder, const char *byteorder,
                     gsize byteorder_size)
{
  g_autofree char *source_path = pth_path ("small.pth");
  char *path = g_build_filename (dir, "variant.pth", NULL);
  zip_t *source = zip_open (source_path, ZIP_RDONLY, NULL);
  zip_t *copy = zip_open (path, ZIP_CREATE | ZIP_TRUNCATE, NULL);

  g_assert_nonnull (source);
  g_assert_nonnull (copy);
  for (zip_int64_t i = 0; i < zip_get_num_entries (source, 0); i++)
    {
      const char *name = zip_get_name (source, i, 0);
      g_autofree char *renamed = g_strconcat (folder, strchr (name, '/'), NULL);
      zip_stat_t st;
      zip_file_t *file = zip_fopen_index (source, i, 0);
      guint8 *data;

      g_assert_nonnull (file);
      g_assert_cmpint (zip_stat_index (source, i, 0, &st), ==, 0);
      data = g_malloc (MAX (st.size, 1));
      g_assert_cmpint (zip_fread (file, data, st.size), ==, (zip_int64_t) st.size);
      zip_fclose (file);
      g_assert_cmpint (zip_file_add (copy, renamed, zip_source_buffer (copy, data, st.size, 1),
                                     0), >=, 0);
    }
  if (byteorder != NULL)
    {
      g_autofree char *name = g_strconcat (folder, "/byteorder", NULL);

      g_assert_cmpint (zip_file_add (copy, name,
                                     zip_source_buffer (copy, byteorder, byteorder_size, 0),
                                     0), >=, 0);
    }
  g_assert_cmpint (zip_close (copy), ==, 0);
  zip_discard (source);
  return path;
}

/* What fuzz-torch-checkpoint found (tests/fuzz): bytes of the file that reached an error
 * message unchecked, which must stay UTF-8 for GLib and GTK to show it; each kind made
 * from small.pth. */
static void
test_checkpoint_fuzz_regressions (void)
{
  static const struct {
    const char *folder;
    const char *byteorder;
    gsize byteorder_size;
    int code;
    const char *needles[3];
  } cases[] = {
    { "small", "little", 6, -1, { NULL } },
    { "small", "b\x89g", 3, EAD_ERROR_UNSUPPORTED, { "byte order 'b\\211g'", NULL } },
    { "small", "big\0ian", 7, EAD_ERROR_UNSUPPORTED, { "byte order 'big'", NULL } },
    /* an overlong encoding, which libzip's check of UTF-8 names lets through */
    { "\xc1\xb2" "chive", NULL, 0, EAD_ERROR_FORMAT, { "folder of data.pkl", "not UTF-8" } },
  };
  g_autofree char *dir = g_dir_make_tmp ("test-teacher-import-XXXXXX", NULL);

  for (size_t i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (EadTorchCheckpoint) checkpoint = NULL;
      g_autofree char *path = write_small_variant (dir, cases[i].folder, cases[i].byteorder,
                                                   cases[i].byteorder_size);

      checkpoint = ead_torch_checkpoint_read (path, &error);
      g_test_message ("case %zu: %s", i, error ? error->message : "(accepted)");
      if (cases[i].code < 0)
        {
          g_assert_no_error (error);
          g_assert_cmpuint (checkpoint->tensors->len, ==, 8);
          continue;
        }
      g_assert_null (checkpoint);
      ead_test_assert_error (error, cases[i].code, cases[i].needles);
      g_assert_true (g_utf8_validate (error->message, -1, NULL));
    }
  ead_test_remove_tree (dir);
}

/* The inputs themselves, kept in tests/fuzz/regressions (and among the fuzzer's seeds). */
static void
test_checkpoint_fuzz_inputs (void)
{
  g_autofree char *dir = ead_test_fixture_path ("../fuzz/regressions");
  g_autoptr (GDir) listing = g_dir_open (dir, 0, NULL);
  const char *name;
  guint n_files = 0;

  g_assert_nonnull (listing);
  while ((name = g_dir_read_name (listing)) != NULL)
    {
      g_autofree char *path = g_build_filename (dir, name, NULL);
      g_autoptr (GError) error = NULL;
      g_autoptr (EadTorchCheckpoint) checkpoint = ead_torch_checkpoint_read (path, &error);

      g_test_message ("%s: %s", name, error ? error->message : "(accepted)");
      g_assert_null (checkpoint);
      g_assert_nonnull (error);
      g_assert_true (g_utf8_validate (error->message, -1, NULL));
      g_assert_true (g_str_has_prefix (error->message, path));
      n_files++;
    }
  g_assert_cmpuint (n_files, >=, 2);
}

/* ---- teacher import ---- */

static void
test_import_refusals (void)
{
  static const struct {
    const char *file;
    EadArch arch;
    const char *needles[4];
  } cases[] = {
    { "small.pth", EAD_ARCH_SMALL,
      { "not an EfficientAD PDN-small teacher", "'0.weight'", "'conv1.weight'" } },
    { "tiny-s-nelson.pth", EAD_ARCH_SMALL,
      { "tensor '0.weight' has shape [2, 3, 1, 1]", "needs [128, 3, 4, 4]" } },
    { "tiny-m-anomalib.pth", EAD_ARCH_SMALL, { "PDN-medium teacher (anomalib naming)", "--model m" } },
    { "tiny-m-anomalib.pth", EAD_ARCH_MEDIUM, { "'conv1.weight' has shape", "[256, 3, 4, 4]" } },
    { "tiny-s-nelson.pth", EAD_ARCH_MEDIUM, { "PDN-small teacher (nelson naming)", "--model s" } },
  };

  for (size_t i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autoptr (GError) error = NULL;
      g_autofree char *path = pth_path (cases[i].file);
      g_autoptr (EadModel) model = ead_teacher_import (path, cases[i].arch, &error);

      g_test_message ("%s: %s", cases[i].file, error ? error->message : "(accepted)");
      g_assert_null (model);
      ead_test_assert_error (error, EAD_ERROR_FORMAT, cases[i].needles);
    }
}

/* ---- import parity with PyTorch ---- */

/* Imports name.pth, checks the bundle written from it reads back as `ead train --teacher`
 * reads it, runs the teacher and returns max |c - t| / max |t| against name.out.f32. */
static double
check_teacher (const char *dir, const char *name, EadArch arch, const char *format,
               const char *dtype, const float *input)
{
  g_autofree char *file = g_strconcat (name, ".pth", NULL);
  g_autofree char *path = g_build_filename (dir, file, NULL);
  g_autofree char *bundle = g_build_filename (dir, "teacher.ead.safetensors", NULL);
  g_autofree char *out_name = g_strconcat (name, ".out.f32", NULL);
  g_autofree char *contents = NULL;
  g_autofree char *file_digest = NULL;
  g_autofree float *expected = NULL;
  g_autofree float *got = NULL;
  g_autoptr (GError) error = NULL;
  g_autoptr (EadModel) model = NULL;
  g_autoptr (EadModel) reread = NULL;
  EadBackend *cpu = ead_backend_cpu ();
  EadWorkspace workspace = { 0 };
  EadShape shape;
  EadNetExec *exec;
  size_t count;
  double worst = 0.0, scale = 0.0;
  gsize size;

  model = ead_teacher_import (path, arch, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (g_hash_table_lookup (model->metadata, "ead.teacher.source"), ==, file);
  g_assert_cmpstr (g_hash_table_lookup (model->metadata, "ead.teacher.format"), ==, format);
  g_assert_cmpstr (g_hash_table_lookup (model->metadata, "ead.teacher.dtype"), ==, dtype);
  g_assert_true (g_file_get_contents (path, &contents, &size, NULL));
  file_digest = g_compute_checksum_for_data (G_CHECKSUM_SHA256, (const guchar *) contents, size);
  g_assert_cmpstr (g_hash_table_lookup (model->metadata, "ead.teacher.file_sha256"), ==,
                   file_digest);
  g_assert_cmpuint (strlen (g_hash_table_lookup (model->metadata, "ead.teacher.sha256")), ==, 64);

  g_assert_true (ead_bundle_write (model, bundle, &error));
  g_assert_no_error (error);
  reread = ead_bundle_read (bundle, &error);
  g_assert_no_error (error);
  g_assert_cmpint (reread->arch, ==, arch);
  g_assert_cmpstr (g_hash_table_lookup (reread->metadata, "ead.teacher.file_sha256"), ==,
                   file_digest);
  g_assert_cmpint (g_unlink (bundle), ==, 0);

  /* the teacher as read back from the bundle, as training would use it */
  g_assert_true (ead_net_shapes (reread->teacher, (EadShape) { 3, 256, 256 }, NULL, &shape,
                                 &error));
  count = (size_t) shape.c * shape.h * shape.w;
  exec = cpu->compile (cpu, reread->teacher, 1, 256, 256, &workspace, &error);
  g_assert_no_error (error);
  g_assert_true (ead_workspace_commit (&workspace, &error));
  got = g_new (float, count);
  g_assert_true (cpu->forward (exec, input, got, &error));
  g_assert_no_error (error);
  cpu->exec_free (exec);
  ead_workspace_clear (&workspace);

  expected = ead_test_read_floats (dir, out_name, count);
  for (size_t i = 0; i < count; i++)
    {
      worst = MAX (worst, fabs ((double) got[i] - expected[i]));
      scale = MAX (scale, fabs ((double) expected[i]));
    }
  g_assert_cmpfloat (scale, >, 0.0);
  g_test_message ("%s: max |diff| %.3g, max |t| %.3g, relative %.3g", name, worst, scale,
                  worst / scale);
  if (!(worst <= REL_TOL * scale))
    g_test_fail_printf ("%s: max |diff| %.3g exceeds %.3g", name, worst, REL_TOL * scale);
  return worst / scale;
}

static void
test_import_parity (void)
{
  g_autofree char *script = ead_test_fixture_path ("make-pth-fixtures.py");
  g_autofree char *dir = NULL;
  g_autofree char *err = NULL;
  g_autofree float *input = NULL;
  g_autoptr (GError) error = NULL;
  const char *argv[] = { EAD_TEST_PYTHON, script, "teachers", NULL, NULL };
  /* what make-pth-fixtures.py teachers writes */
  static const struct {
    const char *name;
    EadArch arch;
    const char *format;
    const char *dtype;
  } teachers[] = {
    { "s-nelson", EAD_ARCH_SMALL, "nelson", "float32" },
    { "s-anomalib", EAD_ARCH_SMALL, "anomalib", "float16" },
    { "m-nelson", EAD_ARCH_MEDIUM, "nelson", "float16" },
    { "m-anomalib", EAD_ARCH_MEDIUM, "anomalib", "float32" },
  };
  double worst = 0.0;
  int status = 0;

  if (!ead_test_python_imports ("torch"))
    {
      g_test_skip (EAD_TEST_PYTHON " with torch is not available");
      return;
    }
  dir = g_dir_make_tmp ("test-teacher-import-XXXXXX", &error);
  g_assert_no_error (error);
  argv[3] = dir;
  g_assert_true (g_spawn_sync (NULL, (char **) argv, NULL, G_SPAWN_STDOUT_TO_DEV_NULL, NULL,
                               NULL, NULL, &err, &status, &error));
  g_assert_no_error (error);
  if (!g_spawn_check_wait_status (status, NULL))
    g_error ("%s failed:\n%s", script, err);

  ead_backend_cpu ()->set_threads (ead_backend_cpu (), 2);
  input = ead_test_read_floats (dir, "input.f32", 3 * 256 * 256);
  for (size_t i = 0; i < G_N_ELEMENTS (teachers); i++)
    {
      double relative = check_teacher (dir, teachers[i].name, teachers[i].arch,
                                       teachers[i].format, teachers[i].dtype, input);

      worst = MAX (worst, relative);
    }
  g_test_message ("import parity: worst relative error %.3g (allowed %g)", worst, REL_TOL);
  ead_test_remove_tree (dir);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/pickle/values", test_pickle_values);
  g_test_add_func ("/pickle/cycle", test_pickle_cycle);
  g_test_add_func ("/pickle/big-dict", test_pickle_big_dict);
  g_test_add_func ("/pickle/refusals", test_pickle_refusals);
  g_test_add_func ("/pickle/limits", test_pickle_limits);
  g_test_add_func ("/pickle/mutations", test_pickle_mutations);
  g_test_add_func ("/checkpoint/small", test_checkpoint_small);
  g_test_add_func ("/checkpoint/wrapped", test_checkpoint_wrapped);
  g_test_add_func ("/checkpoint/refusals", test_checkpoint_refusals);
  g_test_add_func ("/checkpoint/mutations", test_checkpoint_mutations);
  g_test_add_func ("/checkpoint/bytes", test_checkpoint_bytes);
  g_test_add_func ("/checkpoint/fuzz-regressions", test_checkpoint_fuzz_regressions);
  g_test_add_func ("/checkpoint/fuzz-inputs", test_checkpoint_fuzz_inputs);
  g_test_add_func ("/teacher-import/refusals", test_import_refusals);
  g_test_add_func ("/teacher-import/parity", test_import_parity);
  return g_test_run ();
}
