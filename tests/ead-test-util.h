/* ead-test-util.h: what several test programs share: finding and reading fixtures. */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

G_BEGIN_DECLS

/* tests/fixtures/<name>: from EAD_TEST_FIXTURES when set, else next to the test sources. */
char *ead_test_fixture_path (const char *name);

/* Parses a JSON fixture whose root is an object; a missing or broken file fails the test. */
JsonParser *ead_test_load_fixture (const char *name);
JsonObject *ead_test_fixture_root (JsonParser *parser);

G_END_DECLS
