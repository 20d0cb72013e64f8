#include "ead-test-util.h"

char *
ead_test_fixture_path (const char *name)
{
  const char *dir = g_getenv ("EAD_TEST_FIXTURES");

  if (dir != NULL && *dir != '\0')
    return g_build_filename (dir, name, NULL);
  return g_test_build_filename (G_TEST_DIST, "fixtures", name, NULL);
}

JsonParser *
ead_test_load_fixture (const char *name)
{
  g_autofree char *path = ead_test_fixture_path (name);
  JsonParser *parser = json_parser_new ();
  g_autoptr (GError) error = NULL;

  json_parser_load_from_file (parser, path, &error);
  g_assert_no_error (error);
  g_assert_true (JSON_NODE_HOLDS_OBJECT (json_parser_get_root (parser)));
  return parser;
}

JsonObject *
ead_test_fixture_root (JsonParser *parser)
{
  return json_node_get_object (json_parser_get_root (parser));
}
