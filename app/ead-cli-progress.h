/* ead-cli-progress.h: progress of the long-running commands (ead train, ead teacher
 * pretrain): a bar on a terminal, else a line every N steps, or JSON events. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define EAD_CLI_MAX_LOSSES 8

/* One loss of a step; the first one a command passes is the total, printed as "loss". */
typedef struct {
  const char *name;
  double value;
} EadCliLoss;

typedef struct {
  gboolean json;       /* JSON events on stdout, one per line */
  gboolean terminal;   /* a bar on stderr, redrawn every step */
  int log_every;       /* steps between lines (and events) otherwise */
  double sums[EAD_CLI_MAX_LOSSES];  /* since the last line: lines give mean losses */
  int count;
} EadCliProgress;

/* Output goes to a bar when stderr is a terminal and json is off. */
void ead_cli_progress_init (EadCliProgress *progress, gboolean json, int log_every);

/* A training step: step of steps done; losses[0] the total, the others its parts. */
void ead_cli_progress_step (EadCliProgress *progress,
                            int step,
                            int steps,
                            const EadCliLoss *losses,
                            int n_losses,
                            double elapsed_s,
                            double eta_s);

/* A pass over data before or after training (statistics, quantiles): done of total
 * `unit`s; a line when the pass ends. */
void ead_cli_progress_pass (EadCliProgress *progress,
                            const char *phase,
                            const char *unit,
                            int done,
                            int total,
                            double elapsed_s,
                            double eta_s);

/* Ends a bar that an error interrupted. */
void ead_cli_progress_interrupted (EadCliProgress *progress);

G_END_DECLS
