#include "config.h"

#include "ead-cli-progress.h"

#include <stdio.h>
#include <unistd.h>

void
ead_cli_progress_init (EadCliProgress *progress, gboolean json, int log_every)
{
  *progress = (EadCliProgress) { 0 };
  progress->json = json;
  progress->terminal = !json && isatty (STDERR_FILENO);
  progress->log_every = log_every;
}

static char *
format_duration (double seconds)
{
  int s = (int) (seconds + 0.5);

  if (s >= 3600)
    return g_strdup_printf ("%dh%02dm", s / 3600, s / 60 % 60);
  return g_strdup_printf ("%dm%02ds", s / 60, s % 60);
}

/* "name  [#####.....] done/total" on stderr, from the start of the line */
static void
draw_bar (const char *phase, int done, int total)
{
  const int width = 30;
  int filled = (int) ((double) width * done / total);
  char bar[32];

  for (int i = 0; i < width; i++)
    bar[i] = i < filled ? '#' : '.';
  bar[width] = '\0';
  fprintf (stderr, "\r%-18s [%s] %d/%d", phase, bar, done, total);
}

void
ead_cli_progress_step (EadCliProgress *progress,
                       int step,
                       int steps,
                       const EadCliLoss *losses,
                       int n_losses,
                       double elapsed_s,
                       double eta_s)
{
  gboolean last = step == steps;
  g_autoptr (GString) text = g_string_new (NULL);

  g_return_if_fail (n_losses >= 1 && n_losses <= EAD_CLI_MAX_LOSSES);
  for (int i = 0; i < n_losses; i++)
    progress->sums[i] += losses[i].value;
  progress->count++;
  if (!progress->terminal && !last && step % progress->log_every != 0)
    return;

  /* the mean loss of the steps since the last line */
  if (progress->json)
    {
      g_string_printf (text, "{\"event\":\"progress\",\"phase\":\"training\",\"step\":%d,"
                       "\"steps\":%d,\"loss\":%.6g", step, steps, progress->sums[0] / progress->count);
      for (int i = 1; i < n_losses; i++)
        g_string_append_printf (text, ",\"loss_%s\":%.6g", losses[i].name,
                                progress->sums[i] / progress->count);
      g_string_append_printf (text, ",\"elapsed_s\":%.1f,\"eta_s\":%.1f}\n", elapsed_s, eta_s);
    }
  else
    {
      g_string_printf (text, "loss %.5f", progress->sums[0] / progress->count);
      for (int i = 1; i < n_losses; i++)
        g_string_append_printf (text, "%s%s %.5f", i == 1 ? " (" : " ", losses[i].name,
                                progress->sums[i] / progress->count);
      if (n_losses > 1)
        g_string_append_c (text, ')');
    }

  if (progress->terminal)
    {
      g_autofree char *elapsed = format_duration (elapsed_s);
      g_autofree char *eta = format_duration (eta_s);

      draw_bar ("training", step, steps);
      fprintf (stderr, " %s %s ETA %s  %s", text->str, elapsed, eta, last ? "\n" : "");
    }
  else if (progress->json)
    fputs (text->str, stdout);
  else
    printf ("step %d/%d %s elapsed %.0f s, ETA %.0f s\n", step, steps, text->str, elapsed_s,
            eta_s);
  fflush (stdout);
  if (!progress->terminal || step % progress->log_every == 0)
    {
      for (int i = 0; i < n_losses; i++)
        progress->sums[i] = 0.0;
      progress->count = 0;
    }
}

void
ead_cli_progress_pass (EadCliProgress *progress,
                       const char *phase,
                       const char *unit,
                       int done,
                       int total,
                       double elapsed_s,
                       double eta_s)
{
  gboolean last = done == total;

  if (progress->terminal)
    {
      g_autofree char *elapsed = format_duration (elapsed_s);
      g_autofree char *eta = format_duration (eta_s);

      draw_bar (phase, done, total);
      fprintf (stderr, " %s ETA %s  %s", elapsed, eta, last ? "\n" : "");
      return;
    }
  if (!last)
    return;
  if (progress->json)
    printf ("{\"event\":\"progress\",\"phase\":\"%s\",\"step\":%d,\"steps\":%d,"
            "\"elapsed_s\":%.1f,\"eta_s\":%.1f}\n", phase, done, total, elapsed_s, eta_s);
  else
    printf ("%s: %d %s, %.1f s\n", phase, total, unit, elapsed_s);
  fflush (stdout);
}

void
ead_cli_progress_interrupted (EadCliProgress *progress)
{
  if (progress->terminal)
    fputc ('\n', stderr);
}
