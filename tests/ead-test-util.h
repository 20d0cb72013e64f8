/* ead-test-util.h: what several test programs share: fixtures, temporary trees, the
 * PyTorch reference, errors and privileges. */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

G_BEGIN_DECLS

/* tests/fixtures/<name>: from EAD_TEST_FIXTURES when set, else next to the test sources. */
char *ead_test_fixture_path (const char *name);

/* Parses a JSON fixture whose root is an object; a missing or broken file fails the test. */
JsonParser *ead_test_load_fixture (const char *name);
JsonObject *ead_test_fixture_root (JsonParser *parser);

/* The test images of make-fixtures.py: count floats low + span * u (the fixture root's
 * "input_low" and "input_span"), u from the engine's generator keyed by the root's "seed"
 * and name. */
float *ead_test_fixture_input (JsonObject *root, const char *name, size_t count);

/* The Adam step of each sampled element, after - before, against the record's PyTorch
 * values ("index", "value": the weights after the step): each within 1e-3 lr plus two
 * ulps of the weight.  Fails the test for each one that is not; returns the worst error
 * divided by lr. */
double ead_test_check_steps (JsonObject *record,
                             const float *before,
                             const float *after,
                             double lr,
                             const char *what);

/* Agreement with a PyTorch fixture record (make-fixtures.py's tensor_record or
 * make-train-fixtures.py's flat_record: "index"/"value" samples, "maxabs", "sum",
 * "sumsq", "sumabs", optionally "count"): every sample within EAD_TEST_REL_TOL * max|t|,
 * each checksum within EAD_TEST_REL_TOL relative; each violation fails the test.  The
 * agreement keeps the worst sample error (relative to max|t|, and whose), the worst
 * checksum error, over the records compared; free worst_what.  agreement may be NULL. */
#define EAD_TEST_REL_TOL 1e-4

typedef struct {
  double worst_sample;
  double worst_sum;
  char *worst_what;
} EadTestAgreement;

void ead_test_check_record (JsonObject *record,
                            const float *data,
                            size_t count,
                            const char *what,
                            EadTestAgreement *agreement);

/* The "ead.checkpoint.step" of a checkpoint file (NULL when it has none). */
char *ead_test_checkpoint_step (const char *path);

/* Removes a file, or a folder with everything in it (links are removed, not followed;
 * folders are made writable first).  A path that is not there is fine; one that cannot
 * be removed fails the test. */
void ead_test_remove_tree (const char *path);

/* Whether /usr/bin/python3 exists and imports `modules` ("torch, torchvision"). */
gboolean ead_test_python_imports (const char *modules);
#define EAD_TEST_PYTHON "/usr/bin/python3"

/* The file dir/name, which must hold exactly count floats. */
float *ead_test_read_floats (const char *dir, const char *name, size_t count);

/* Fails unless error is EAD_ERROR's code and its message contains every needle (a
 * NULL-terminated list). */
void ead_test_assert_error (const GError *error, int code, const char *const *needles);

/* Running as root: takes the effective ids of nobody (65534); FALSE when this process
 * cannot switch.  ead_test_become_root switches back (the saved set-user-ID stays
 * root's). */
gboolean ead_test_become_nobody (void);
void ead_test_become_root (void);

G_END_DECLS
