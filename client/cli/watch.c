/* `xcoder watch`: a live view of a training daemon, redrawn in place with ANSI
 * codes: step, tokens/s, losses (with sparklines), FVE, L0, dead %, and a
 * histogram of the alive latents' relative decoder norm Δ. It polls `status`
 * and `top --by delta_norm` every --interval seconds. */
#include "xc_cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define HIST 48          /* samples kept for sparklines */
#define MAX_BINS 40
#define BAR_WIDTH 44

typedef struct {
    double v[HIST];
    int n;
} series_t;

static void series_push(series_t *s, double x)
{
    if (s->n == HIST) {
        memmove(s->v, s->v + 1, (HIST - 1) * sizeof s->v[0]);
        s->n--;
    }
    s->v[s->n++] = x;
}

/* Unicode block sparkline of the finite samples of s, scaled to their range. */
static void sparkline(FILE *f, const series_t *s)
{
    static const char *const blocks[] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < s->n; i++)
        if (isfinite(s->v[i])) {
            lo = fmin(lo, s->v[i]);
            hi = fmax(hi, s->v[i]);
        }
    for (int i = 0; i < s->n; i++) {
        if (!isfinite(s->v[i])) {
            fputc(' ', f);
            continue;
        }
        int k = hi > lo ? (int)((s->v[i] - lo) / (hi - lo) * 7.0 + 0.5) : 3;
        fputs(blocks[k < 0 ? 0 : k > 7 ? 7 : k], f);
    }
}

typedef struct {
    int ansi;
    const char *eol;     /* clear to end of line in ANSI mode */
    const char *bold, *dim, *off, *chat, *base, *shared;
} style_t;

static double num(const xc_client_value_t *v, const char *path) { return xc_client_value_getnum(v, path, NAN); }

/* Δnorm histogram of the alive latents in a `top` reply, plus class counts. */
static void draw_hist(FILE *f, const style_t *st, const xc_client_value_t *top, long dict_size, int bins)
{
    const xc_client_value_t *l = xc_client_value_get(top, "latents");
    long count[MAX_BINS] = {0}, n = 0, chat = 0, base = 0, shared = 0, maxc = 1;
    for (size_t i = 0; l && l->type == XC_VAL_ARRAY && i < l->u.a.n; i++) {
        double dn = num(&l->u.a.items[i], "delta_norm");
        if (!isfinite(dn)) continue;
        int b = (int)(dn * bins);
        b = b < 0 ? 0 : b >= bins ? bins - 1 : b;
        count[b]++;
        n++;
        chat += dn >= 0.9;
        base += dn <= 0.1;
        shared += dn >= 0.4 && dn < 0.6;
    }
    for (int b = 0; b < bins; b++) maxc = count[b] > maxc ? count[b] : maxc;
    fprintf(f, "%sΔnorm of alive latents%s (%ld of %ld)   0 = base only, 1 = chat only%s\n", st->bold, st->off, n,
            dict_size, st->eol);
    for (int b = 0; b < bins; b++) {
        double lo = (double)b / bins, hi = (double)(b + 1) / bins;
        const char *col = hi <= 0.1 + 1e-9 ? st->base : lo >= 0.9 - 1e-9 ? st->chat
                          : (lo >= 0.4 - 1e-9 && hi <= 0.6 + 1e-9) ? st->shared : "";
        int w = (int)((double)count[b] / (double)maxc * BAR_WIDTH + 0.5);
        if (count[b] > 0 && w == 0) w = 1;
        fprintf(f, "  %.2f-%.2f %s", lo, hi, col);
        for (int k = 0; k < w; k++) fputs("█", f);
        fprintf(f, "%s %ld%s\n", st->off, count[b], st->eol);
    }
    fprintf(f, "  %schat-only%s (Δ≥0.9) %ld   %sbase-only%s (Δ≤0.1) %ld   %sshared%s (0.4≤Δ<0.6) %ld%s\n", st->chat,
            st->off, chat, st->base, st->off, base, st->shared, st->off, shared, st->eol);
}

static void draw(FILE *f, const style_t *st, const xc_client_value_t *r, const xc_client_value_t *top,
                 const series_t *loss, const series_t *fveb, const series_t *fvec, const series_t *tps, int bins,
                 long frame, long count, const char *endpoint)
{
    char b1[32], b2[32], b3[32], b4[32];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    char clock[16];
    strftime(clock, sizeof clock, "%H:%M:%S", &tm);
    fprintf(f, "%sxcoder watch%s  %s  %s   frame %ld%s%s%s\n", st->bold, st->off, endpoint, clock, frame,
            count ? "/" : "", count ? xc_cli_fmt_count((double)count, b1, sizeof b1) : "", st->eol);
    fprintf(f, "%s%-8s%s step %-9.0f uptime %-9s %s d=%.0f F=%.0f k=%.0f B=%.0f%s\n", st->bold,
            xc_client_value_getstr(r, "state", "?"), st->off, num(r, "step"),
            xc_cli_fmt_duration(num(r, "uptime_s"), b1, sizeof b1), xc_client_value_getstr(r, "config.model", ""),
            num(r, "config.d"), num(r, "config.dict_size"), num(r, "config.k"), num(r, "config.batch_size"), st->eol);
    fprintf(f, "tokens   trained %-7s acked %-7s buffered %-7s queued %-7s queue %.0f/%.0f%s\n",
            xc_cli_fmt_count(num(r, "tokens_trained"), b1, sizeof b1), xc_cli_fmt_count(num(r, "tokens_acked"), b2, sizeof b2),
            xc_cli_fmt_count(num(r, "tokens_buffered"), b3, sizeof b3),
            xc_cli_fmt_count(num(r, "tokens_queued"), b4, sizeof b4), num(r, "queue_depth"), num(r, "queue_size"),
            st->eol);
    fprintf(f, "speed    %7s tok/s %5.1f steps/s  ", xc_cli_fmt_count(num(r, "tokens_per_s"), b1, sizeof b1),
            num(r, "steps_per_s"));
    sparkline(f, tps);
    fprintf(f, "%s\n", st->eol);
    fprintf(f, "loss     %-10.5g ", num(r, "loss"));
    sparkline(f, loss);
    fprintf(f, "%s\n", st->eol);
    fprintf(f, "         recon_l2 %.4g  mse %.4g  aux %.4g  l1 %.4g  lr %.3g%s\n", num(r, "recon_l2"),
            num(r, "recon_mse"), num(r, "aux"), num(r, "l1"), num(r, "lr"), st->eol);
    fprintf(f, "FVE      base %.4f ", num(r, "fve.0"));
    sparkline(f, fveb);
    fprintf(f, "%s\n         chat %.4f ", st->eol, num(r, "fve.1"));
    sparkline(f, fvec);
    fprintf(f, "%s\n", st->eol);
    fprintf(f, "sparsity L0 %.2f   dead %.1f%%   theta %.4g   |grad| %.3g   refused %.0f%s\n", num(r, "l0"),
            100.0 * num(r, "dead_fraction"), num(r, "theta"), num(r, "grad_norm"), num(r, "counters.batches_refused"),
            st->eol);
    if (top) draw_hist(f, st, top, (long)num(r, "config.dict_size"), bins);
    else fprintf(f, "%s(no latent statistics yet)%s%s\n", st->dim, st->off, st->eol);
}

int xc_cli_cmd_watch(xc_cli_args_t *a)
{
    double interval;
    long count, bins;
    int rc = xc_cli_opt_double(a, "interval", 1.0, 0.05, 3600, &interval);
    if (!rc) rc = xc_cli_opt_long(a, "count", 0, 0, 1L << 40, &count);
    if (!rc) rc = xc_cli_opt_long(a, "bins", 10, 2, MAX_BINS, &bins);
    if (rc) return rc;
    style_t st = {0, "", "", "", "", "", "", ""};
    int tty = isatty(1);
    if ((tty && !xc_cli_flag(a, "plain")) || xc_cli_flag(a, "ansi"))
        st = (style_t){1, "\033[K", "\033[1m", "\033[2m", "\033[0m", "\033[35m", "\033[36m", "\033[32m"};

    xc_cli_trap_signals();
    xc_client_t *c = xc_cli_client(a, 0);
    if (!c) return XC_CLI_FAIL;
    /* a request should not outlast a few frames */
    int tmo = xc_cli_timeout_ms(a);
    int cap = (int)fmax(2000.0, 3000.0 * interval);
    xc_client_set_timeout(c, tmo < 0 || tmo > cap ? cap : tmo);

    series_t loss = {{0}, 0}, fveb = {{0}, 0}, fvec = {{0}, 0}, tps = {{0}, 0};
    int out = XC_CLI_OK, failed_last = 0;
    if (st.ansi) fputs("\033[?25l\033[2J", stdout); /* hide cursor, clear */
    for (long frame = 1; !xc_cli_stop && (count == 0 || frame <= count); frame++) {
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        xc_client_value_t *r = NULL, *top = NULL;
        rc = xc_client_status(c, &r);
        if (rc == XC_OK && num(r, "step") > 0) { /* before the first step the losses are 0 */
            series_push(&loss, num(r, "loss"));
            series_push(&fveb, num(r, "fve.0"));
            series_push(&fvec, num(r, "fve.1"));
            series_push(&tps, num(r, "tokens_per_s"));
        }
        if (rc == XC_OK) {
            long F = (long)xc_client_value_getnum(r, "config.dict_size", 0);
            if (F > 0 && xc_client_top(c, "delta_norm", F > 65536 ? 65536 : F, 0, 1, &top) != XC_OK)
                xc_client_value_free(&top);
        }
        if (st.ansi) fputs("\033[H", stdout);
        else if (frame > 1) fputs("\n", stdout);
        if (rc == XC_OK) {
            draw(stdout, &st, r, top, &loss, &fveb, &fvec, &tps, (int)bins, frame, count,
                 xc_client_endpoint(c, "control"));
            failed_last = 0;
        } else if (rc == XC_EAGAIN && xc_cli_stop) {
            break;
        } else {
            fprintf(stdout, "%sxcoder watch%s  frame %ld: %s%s\n", st.bold, st.off, frame, xc_client_last_error(c), st.eol);
            failed_last = rc;
            if (frame == 1 && count != 0) { /* non-interactive and nothing to show: fail fast */
                if (st.ansi) fputs("\033[J\033[?25h", stdout);
                xc_client_value_free(&r);
                out = xc_cli_fail(a, c, rc);
                goto out;
            }
        }
        if (st.ansi) fputs("\033[J", stdout); /* clear what an older, longer frame left */
        fflush(stdout);
        xc_client_value_free(&r);
        xc_client_value_free(&top);
        if (count && frame == count) break;
        /* sleep the rest of the interval in short slices (Ctrl-C stays prompt) */
        for (;;) {
            struct timespec t1;
            clock_gettime(CLOCK_MONOTONIC, &t1);
            double left = interval - ((double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9);
            if (left <= 0 || xc_cli_stop) break;
            struct timespec ts = {0, (long)(fmin(left, 0.1) * 1e9)};
            nanosleep(&ts, NULL);
        }
    }
    if (st.ansi) fputs("\033[?25h", stdout); /* show the cursor again */
    fflush(stdout);
    if (failed_last) out = failed_last == XC_ETIMEDOUT ? XC_CLI_TIMEOUT : XC_CLI_FAIL;
out:
    xc_client_destroy(&c);
    return out;
}
