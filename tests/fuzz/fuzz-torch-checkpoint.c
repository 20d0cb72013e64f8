/* fuzz-torch-checkpoint.c: libFuzzer target for the checkpoint reader
 * (core/io/ead-torch-checkpoint.c): the zip container through libzip, the byte order
 * record, data.pkl through the restricted unpickler, the storages and the gather of each
 * tensor.
 *
 * An input is read in one of two ways:
 *
 *   - as it is, a zip archive: this fuzzes the container;
 *   - when it starts with "EADZ\n", as the records of an archive that the target zips
 *     first ("name\ncontents", separated by "\0EADZ\0"): the zip's CRCs then match
 *     whatever the mutations did to the records, so that they reach the pickle, the
 *     storages and the tensors instead of stopping at a checksum.
 *
 * Every input must give either a state_dict or an EAD_ERROR of a documented code whose
 * message is UTF-8 and starts with the name given (ead-torch-checkpoint.h), never a
 * crash, a leak or a GLib warning.  Each tensor of an accepted checkpoint must have the
 * shape, element count and buffer it claims, and its name must find it.
 *
 * Seeds: the checkpoints of tests/fixtures/pth, good and hostile, as they are and as
 * records (see make-seeds.py).
 */
#include <string.h>
#include <zip.h>

#include "ead-error.h"
#include "ead-torch-checkpoint.h"

#define NAME "fuzz.pth"
#define RECORDS_MAGIC "EADZ\n"
#define RECORDS_SEPARATOR "\0EADZ\0"

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const guint8 *data, size_t size);

static volatile float sink;

/* Where the next separator starts in data[start..size), else size. */
static gsize
find_separator (const guint8 *data, gsize start, gsize size)
{
  const gsize length = sizeof RECORDS_SEPARATOR - 1;

  for (gsize i = start; i + length <= size; i++)
    if (memcmp (data + i, RECORDS_SEPARATOR, length) == 0)
      return i;
  return size;
}

/* Adds one "name\ncontents" record to the archive, unless libzip refuses its name. */
static void
add_record (zip_t *zip, const guint8 *record, gsize size)
{
  const guint8 *newline = memchr (record, '\n', size);
  g_autofree char *name = NULL;
  zip_source_t *source;
  zip_int64_t index;

  if (newline == NULL)
    return;
  name = g_strndup ((const char *) record, newline - record);
  source = zip_source_buffer (zip, newline + 1, size - (newline + 1 - record), 0);
  if (source == NULL)
    return;
  index = zip_file_add (zip, name, source, ZIP_FL_OVERWRITE);
  if (index < 0)
    zip_source_free (source);
  else
    zip_set_file_compression (zip, index, ZIP_CM_STORE, 0);
}

/* The zip archive of the records in data[0..size), NULL when libzip cannot write it. */
static GBytes *
zip_records (const guint8 *data, gsize size)
{
  const gsize separator = sizeof RECORDS_SEPARATOR - 1;
  zip_source_t *buffer = zip_source_buffer_create (NULL, 0, 0, NULL);
  zip_t *zip = buffer != NULL ? zip_open_from_source (buffer, ZIP_TRUNCATE, NULL) : NULL;
  g_autofree guint8 *bytes = NULL;
  zip_int64_t length;
  gsize start = 0;

  if (zip == NULL)
    {
      if (buffer != NULL)
        zip_source_free (buffer);
      return NULL;
    }
  zip_source_keep (buffer);
  while (start <= size)
    {
      gsize stop = find_separator (data, start, size);

      add_record (zip, data + start, stop - start);
      start = stop + separator;
    }
  if (zip_close (zip) != 0)
    {
      zip_discard (zip);
      zip_source_free (buffer);
      return NULL;
    }
  if (zip_source_open (buffer) != 0)
    {
      zip_source_free (buffer);
      return NULL;
    }
  zip_source_seek (buffer, 0, SEEK_END);
  length = zip_source_tell (buffer);
  zip_source_seek (buffer, 0, SEEK_SET);
  bytes = g_malloc (MAX (length, 1));
  if (length < 0 || zip_source_read (buffer, bytes, length) != length)
    g_clear_pointer (&bytes, g_free);
  zip_source_close (buffer);
  zip_source_free (buffer);
  return bytes != NULL ? g_bytes_new_take (g_steal_pointer (&bytes), length) : NULL;
}

static void
check_tensor (const EadTorchTensor *tensor)
{
  guint64 count = 1;

  g_assert_nonnull (tensor->name);
  g_assert_true (g_utf8_validate (tensor->name, -1, NULL));
  g_assert_cmpint (tensor->n_dims, >=, 0);
  g_assert_cmpint (tensor->n_dims, <=, EAD_PICKLE_MAX_DIMS);
  for (int d = 0; d < tensor->n_dims; d++)
    {
      g_assert_cmpint (tensor->shape[d], >=, 0);
      count *= tensor->shape[d];
    }
  g_assert_cmpuint (count, ==, tensor->n_elements);
  g_assert_nonnull (tensor->data);
  /* ASan checks that the buffer holds n_elements floats */
  sink = tensor->data[0] + tensor->data[MAX (tensor->n_elements, 1) - 1];
}

static void
check_read (const guint8 *data, gsize size)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (EadTorchCheckpoint) checkpoint =
    ead_torch_checkpoint_read_bytes (data, size, NAME, &error);

  if (checkpoint == NULL)
    {
      g_assert_nonnull (error);
      g_assert_true (error->domain == EAD_ERROR);
      g_assert_true (error->code == EAD_ERROR_FORMAT || error->code == EAD_ERROR_UNSUPPORTED
                     || error->code == EAD_ERROR_LIMIT);
      g_assert_true (g_utf8_validate (error->message, -1, NULL));
      g_assert_true (g_str_has_prefix (error->message, NAME ": "));
      return;
    }
  g_assert_null (error);
  g_assert_cmpstr (checkpoint->path, ==, NAME);
  g_assert_cmpuint (checkpoint->tensors->len, >, 0);
  for (guint i = 0; i < checkpoint->tensors->len; i++)
    {
      const EadTorchTensor *tensor = checkpoint->tensors->pdata[i];

      check_tensor (tensor);
      g_assert_true (ead_torch_checkpoint_lookup (checkpoint, tensor->name) == tensor);
    }
}

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  g_log_set_always_fatal (G_LOG_LEVEL_WARNING | G_LOG_LEVEL_CRITICAL);
  return 0;
}

int
LLVMFuzzerTestOneInput (const guint8 *data, size_t size)
{
  const gsize magic = sizeof RECORDS_MAGIC - 1;
  g_autoptr (GBytes) archive = NULL;
  gsize archive_size;
  const guint8 *archive_data;

  if (size < magic || memcmp (data, RECORDS_MAGIC, magic) != 0)
    {
      check_read (data, size);
      return 0;
    }
  archive = zip_records (data + magic, size - magic);
  if (archive == NULL)
    return 0;
  archive_data = g_bytes_get_data (archive, &archive_size);
  check_read (archive_data, archive_size);
  return 0;
}
