#include "config.h"

#include "ead-cli.h"

#include <stdio.h>
#include <string.h>

gboolean
ead_cli_parse (const char *command,
               const char *parameter_string,
               const char *summary,
               const GOptionEntry *entries,
               int *argc,
               char ***argv,
               int *exit_code)
{
  gboolean version = FALSE;
  const GOptionEntry version_entries[] = {
    { "version", 0, 0, G_OPTION_ARG_NONE, &version, "Print the version and exit", NULL },
    G_OPTION_ENTRY_NULL
  };
  g_autofree char *title = g_strdup_printf ("%s %s", command, parameter_string);
  g_autoptr (GOptionContext) context = g_option_context_new (title);
  g_autoptr (GError) error = NULL;

  g_option_context_set_summary (context, summary);
  g_option_context_add_main_entries (context, entries, NULL);
  g_option_context_add_main_entries (context, version_entries, NULL);
  g_set_prgname ("ead");
  if (!g_option_context_parse (context, argc, argv, &error))
    {
      ead_cli_error (command, "%s (see 'ead %s --help')", error->message, command);
      *exit_code = EAD_EXIT_USAGE;
      return FALSE;
    }
  if (version)
    {
      printf ("ead %s\n", PACKAGE_VERSION);
      *exit_code = EAD_EXIT_OK;
      return FALSE;
    }
  return TRUE;
}

void
ead_cli_error (const char *command, const char *format, ...)
{
  va_list args;
  g_autofree char *message = NULL;

  va_start (args, format);
  message = g_strdup_vprintf (format, args);
  va_end (args);
  fprintf (stderr, "ead %s: %s\n", command, message);
}

void
ead_cli_print_json (JsonNode *node)
{
  g_autoptr (JsonGenerator) generator = json_generator_new ();
  g_autofree char *text = NULL;

  json_generator_set_pretty (generator, TRUE);
  json_generator_set_root (generator, node);
  text = json_generator_to_data (generator, NULL);
  printf ("%s\n", text);
}

gboolean
ead_cli_parse_precision (const char *command, const char *text, EadPrecision *precision)
{
  g_autoptr (GError) error = NULL;

  *precision = EAD_PRECISION_FP32;
  if (text == NULL)
    return TRUE;
  if (ead_precision_parse (text, precision, &error))
    return TRUE;
  ead_cli_error (command, "--precision: %s", error->message);
  return FALSE;
}

void
ead_cli_note_precision (const char *command, EadPrecision requested, EadBackend *backend)
{
  if (requested == EAD_PRECISION_AUTO)
    fprintf (stderr, "ead %s: precision %s\n", command, backend->describe_precision (backend));
}

double
ead_cli_peak_rss_mb (void)
{
  g_autofree char *status = NULL;
  const char *line;

  if (!g_file_get_contents ("/proc/self/status", &status, NULL, NULL))
    return 0.0;
  line = strstr (status, "VmHWM:");
  if (line == NULL)
    return 0.0;
  return g_ascii_strtod (line + strlen ("VmHWM:"), NULL) / 1024.0;
}

double
ead_cli_now_ms (void)
{
  return g_get_monotonic_time () / 1000.0;
}
