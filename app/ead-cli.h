/* ead-cli.h: what the `ead` subcommands share: option parsing, output, exit codes. */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

#include "ead-backend.h"

G_BEGIN_DECLS

/* Exit codes: 0 success, 1 a failure while working (some images failed, a file could
 * not be written), 2 bad usage (unknown option, missing argument). */
enum {
  EAD_EXIT_OK = 0,
  EAD_EXIT_FAILURE = 1,
  EAD_EXIT_USAGE = 2,
};

typedef int (*EadCommandFunc) (int argc, char **argv);

/* Parses argv with the given entries plus --version; prints usage errors naming the
 * command.  Returns FALSE with *exit_code set when the command should stop (an error,
 * or --version was printed). */
gboolean ead_cli_parse (const char *command,
                        const char *parameter_string,
                        const char *summary,
                        const GOptionEntry *entries,
                        int *argc,
                        char ***argv,
                        int *exit_code);

/* Prints "ead COMMAND: message" on stderr. */
void ead_cli_error (const char *command, const char *format, ...) G_GNUC_PRINTF (2, 3);

/* Prints a JSON node on stdout, pretty, with a final newline. */
void ead_cli_print_json (JsonNode *node);

/* The --precision option every command that runs networks has. */
#define EAD_CLI_PRECISION_ENTRY(variable)                                                 \
  { "precision", 0, 0, G_OPTION_ARG_STRING, &(variable),                                  \
    "fp32, bf16 (AVX512-BF16 or AMX CPUs) or auto (bf16 where fast; default fp32)", "P" }

/* Parses a --precision value (NULL: fp32); prints the error and returns FALSE when bad. */
gboolean ead_cli_parse_precision (const char *command, const char *text, EadPrecision *precision);

/* After networks were compiled with `requested`: when that was auto, says on stderr what
 * the backend chose and why, so that a fallback to fp32 is never silent. */
void ead_cli_note_precision (const char *command, EadPrecision requested, EadBackend *backend);

/* The resident set size high-water mark of this process, in MiB (VmHWM). */
double ead_cli_peak_rss_mb (void);

/* A monotonic clock in milliseconds. */
double ead_cli_now_ms (void);

int ead_cmd_model (int argc, char **argv);
int ead_cmd_info (int argc, char **argv);
int ead_cmd_infer (int argc, char **argv);
int ead_cmd_bench (int argc, char **argv);
int ead_cmd_train (int argc, char **argv);
int ead_cmd_eval (int argc, char **argv);
int ead_cmd_demo (int argc, char **argv);
int ead_cmd_init (int argc, char **argv);
int ead_cmd_import (int argc, char **argv);
int ead_cmd_label (int argc, char **argv);
int ead_cmd_images (int argc, char **argv);
int ead_cmd_models (int argc, char **argv);
int ead_cmd_threshold (int argc, char **argv);
int ead_cmd_runs (int argc, char **argv);
int ead_cmd_teacher (int argc, char **argv);
int ead_cmd_report (int argc, char **argv);

/* What `ead infer --project` was given; the store mode of ead infer
 * (ead-cmd-infer-project.c).  Returns the exit code. */
typedef struct {
  const char *project;
  const char *model;   /* a bundle, or a model id; NULL: the latest model */
  const char *label;   /* NULL: any */
  const char *split;   /* NULL: any */
  const char *folder;  /* NULL: the whole project */
  int batch;
  int threads;
  const char *device;
  EadPrecision precision;
  gboolean json;
} EadInferProjectArgs;

int ead_infer_project (const EadInferProjectArgs *args);

G_END_DECLS
