/* A progress line with ETA on stderr for commands that can run for a while
 * (push, fetch, export, an exact Latent Scaling pass). Only when stderr is a
 * terminal: redirected output stays clean. */
#include "xc_cli.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void xc_cli_progress_start(xc_cli_progress_t *p, const char *what, const char *unit, double total, int quiet)
{
    memset(p, 0, sizeof *p);
    p->on = !quiet && isatty(STDERR_FILENO);
    snprintf(p->what, sizeof p->what, "%s", what);
    snprintf(p->unit, sizeof p->unit, "%s", unit);
    p->total = total;
    p->t0 = mono_s();
}

/* Redraws at most 4 times a second: done/total, percent, rate and the time
 * left at the mean rate so far (the ETA). */
void xc_cli_progress_update(xc_cli_progress_t *p, double done)
{
    if (!p->on) return;
    double now = mono_s();
    if (now - p->t_last < 0.25 && done < p->total) return;
    p->t_last = now;
    double dt = now - p->t0, rate = dt > 0 && done > p->base ? (done - p->base) / dt : 0;
    char a[32], b[32], r[32], eta[32] = "?";
    if (rate > 0 && p->total > done) xc_cli_fmt_duration((p->total - done) / rate, eta, sizeof eta);
    else if (p->total <= done) snprintf(eta, sizeof eta, "0s");
    if (p->total > 0)
        fprintf(stderr, "\r\033[K%s: %s/%s %s (%.1f%%), %s %s/s, ETA %s", p->what, xc_cli_fmt_count(done, a, sizeof a),
                xc_cli_fmt_count(p->total, b, sizeof b), p->unit, 100.0 * done / p->total,
                xc_cli_fmt_count(rate, r, sizeof r), p->unit, eta);
    else
        fprintf(stderr, "\r\033[K%s: %s %s, %s %s/s", p->what, xc_cli_fmt_count(done, a, sizeof a), p->unit,
                xc_cli_fmt_count(rate, r, sizeof r), p->unit);
    fflush(stderr);
    p->drawn = 1;
}

void xc_cli_progress_end(xc_cli_progress_t *p)
{
    if (p->on && p->drawn) fprintf(stderr, "\r\033[K");
    p->drawn = 0;
}
