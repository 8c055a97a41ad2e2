/* `xcoder watch`: a live view of a training daemon, redrawn in place with ANSI
 * codes: step, tokens/s, losses (with sparklines), FVE, L0, dead %, a histogram
 * of the alive latents' relative decoder norm Δ, the class counts (chat-specific
 * included) and a summary of the chat-only latents' Latent Scaling ν. It polls
 * `status` every --interval seconds; the per-latent part comes from one
 * shared-memory snapshot per refresh when the daemon is on this machine, else
 * from `top --by delta_norm`. */
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

/* What the per-latent part of a frame shows, from either source. */
typedef struct {
    const char *source;          /* "shm" or "control" */
    long step;                   /* of the per-latent statistics */
    long hist[MAX_BINS], n_alive, F;
    long counts[XC_COUNT_CHAT_SPECIFIC + 1]; /* XC_CLASS_*, then chat-specific; -1 unknown */
    double th[4];                /* chat_only_min, base_only_max, shared_lo, shared_hi */
    long n_co;                   /* chat-only latents seen */
    size_t run_def, ex_def;      /* of them, with a defined running / exact nu_err */
    double run_nu_err, run_nu_rec, ex_nu_err, ex_nu_rec; /* medians */
    long scaling_step;           /* exact pass: dictionary step, -1 none */
} latsum_t;

static void sum_init(latsum_t *m, const char *source)
{
    memset(m, 0, sizeof *m);
    m->source = source;
    for (int c = 0; c < 6; c++) m->counts[c] = -1;
    m->th[0] = 0.9, m->th[1] = 0.1, m->th[2] = 0.4, m->th[3] = 0.6;
    m->scaling_step = -1;
}

static void sum_hist(latsum_t *m, double dn, int bins)
{
    if (!isfinite(dn)) return;
    int b = (int)(dn * bins);
    b = b < 0 ? 0 : b >= bins ? bins - 1 : b;
    m->hist[b]++;
    m->n_alive++;
}

/* Medians of the chat-only latents' nu (arrays of n_co, reordered). */
static void sum_nu(latsum_t *m, double *re, double *rr, double *ee, double *er)
{
    size_t d2;
    m->run_nu_err = xc_lat_median(re, (size_t)m->n_co, &m->run_def);
    m->run_nu_rec = xc_lat_median(rr, (size_t)m->n_co, &d2);
    m->ex_nu_err = xc_lat_median(ee, (size_t)m->n_co, &m->ex_def);
    m->ex_nu_rec = xc_lat_median(er, (size_t)m->n_co, &d2);
}

/* From one shared-memory snapshot. 0 or XC_ENOMEM. */
static int sum_from_shm(latsum_t *m, const xc_shm_snapshot_t *s, int bins)
{
    const xc_shm_header_t *h = &s->hdr;
    long F = h->n_latents;
    sum_init(m, "shm");
    m->step = (long)h->step;
    m->F = F;
    for (int c = 0; c < 6; c++) m->counts[c] = h->class_counts[c];
    for (int i = 0; i < 4; i++) m->th[i] = h->thresholds[i];
    m->scaling_step = (long)h->scaling_step;
    const float *dn = xc_shm_snapshot_array(s, XC_SHM_DELTA_NORM);
    const uint8_t *cl = xc_shm_snapshot_array(s, XC_SHM_CLASS);
    const float *ne = xc_shm_snapshot_array(s, XC_SHM_NU_ERR), *nr = xc_shm_snapshot_array(s, XC_SHM_NU_REC);
    const float *xe = xc_shm_snapshot_array(s, XC_SHM_EXACT_NU_ERR), *xr = xc_shm_snapshot_array(s, XC_SHM_EXACT_NU_REC);
    long nco = h->class_counts[XC_CLASS_CHAT_ONLY];
    double *v = malloc(4 * (size_t)(nco > 0 ? nco : 1) * sizeof *v);
    if (!v) return XC_ENOMEM;
    for (long j = 0; j < F; j++) {
        if (cl[j] == XC_CLASS_DEAD) continue;
        sum_hist(m, dn[j], bins);
        if (cl[j] == XC_CLASS_CHAT_ONLY && m->n_co < nco) {
            long k = m->n_co++;
            v[k] = ne[j], v[nco + k] = nr[j];
            v[2 * nco + k] = h->scaling_step >= 0 ? xe[j] : NAN;
            v[3 * nco + k] = h->scaling_step >= 0 ? xr[j] : NAN;
        }
    }
    sum_nu(m, v, v + nco, v + 2 * nco, v + 3 * nco);
    free(v);
    return XC_OK;
}

/* From a `top` reply (alive latents) and the `status` reply. */
static int sum_from_top(latsum_t *m, const xc_client_value_t *top, const xc_client_value_t *st, int bins)
{
    const xc_client_value_t *l = xc_client_value_get(top, "latents");
    size_t n = l && l->type == XC_VAL_ARRAY ? l->u.a.n : 0;
    static const char *const th_keys[4] = {"config.chat_only_min", "config.base_only_max", "config.shared_lo",
                                           "config.shared_hi"};
    sum_init(m, "control");
    m->step = (long)xc_client_value_getnum(top, "snapshot_step", -1);
    m->F = (long)xc_client_value_getnum(st, "config.dict_size", 0);
    for (int i = 0; i < 4; i++) m->th[i] = xc_client_value_getnum(st, th_keys[i], m->th[i]);
    for (int c = 0; c < 5; c++) {
        char path[48];
        snprintf(path, sizeof path, "classes.%s", xc_class_name(c));
        m->counts[c] = (long)xc_client_value_getnum(st, path, -1);
    }
    m->counts[XC_COUNT_CHAT_SPECIFIC] = (long)xc_client_value_getnum(st, "classes." XC_COUNT_CHAT_SPECIFIC_NAME, -1);
    m->scaling_step = (long)xc_client_value_getnum(st, "scaling.last_step", -1);
    double *v = malloc(4 * (n ? n : 1) * sizeof *v);
    if (!v) return XC_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        xc_lat_t r;
        if (xc_lat_from_value(&l->u.a.items[i], -1, &r) != XC_OK) continue;
        sum_hist(m, r.delta_norm, bins);
        if (r.cls == XC_CLASS_CHAT_ONLY) {
            long k = m->n_co++;
            v[k] = r.run.nu_err, v[n + k] = r.run.nu_rec;
            v[2 * n + k] = r.has_exact ? r.exact.nu_err : NAN;
            v[3 * n + k] = r.has_exact ? r.exact.nu_rec : NAN;
        }
    }
    sum_nu(m, v, v + n, v + 2 * n, v + 3 * n);
    free(v);
    return XC_OK;
}

static const char *fmt_nu(double x, char *buf, size_t n)
{
    if (isnan(x)) snprintf(buf, n, "-");
    else snprintf(buf, n, "%.3f", x);
    return buf;
}

/* Δnorm histogram of the alive latents, class counts, ν of the chat-only ones. */
static void draw_hist(FILE *f, const style_t *st, const latsum_t *m, int bins)
{
    long maxc = 1;
    char b1[16], b2[16], b3[16], b4[16];
    for (int b = 0; b < bins; b++) maxc = m->hist[b] > maxc ? m->hist[b] : maxc;
    fprintf(f, "%sΔnorm of alive latents%s (%ld of %ld)   0 = base only, 1 = chat only   %s[%s, step %ld]%s%s\n", st->bold,
            st->off, m->n_alive, m->F, st->dim, m->source, m->step, st->off, st->eol);
    const double eps = 1e-9;
    for (int b = 0; b < bins; b++) {
        double lo = (double)b / bins, hi = (double)(b + 1) / bins;
        const char *col = hi <= m->th[1] + eps ? st->base : lo >= m->th[0] - eps ? st->chat
                          : (lo >= m->th[2] - eps && hi <= m->th[3] + eps) ? st->shared : "";
        int w = (int)((double)m->hist[b] / (double)maxc * BAR_WIDTH + 0.5);
        if (m->hist[b] > 0 && w == 0) w = 1;
        fprintf(f, "  %.2f-%.2f %s", lo, hi, col);
        for (int k = 0; k < w; k++) fputs("█", f);
        fprintf(f, "%s %ld%s\n", st->off, m->hist[b], st->eol);
    }
    fprintf(f, "  %schat-only%s (Δ≥%g) %ld (%ld chat-specific)   %sbase-only%s (Δ≤%g) %ld   %sshared%s (%g≤Δ<%g) %ld   "
               "other %ld   dead %ld%s\n",
            st->chat, st->off, m->th[0], m->counts[XC_CLASS_CHAT_ONLY], m->counts[XC_COUNT_CHAT_SPECIFIC], st->base, st->off, m->th[1],
            m->counts[XC_CLASS_BASE_ONLY], st->shared, st->off, m->th[2], m->th[3], m->counts[XC_CLASS_SHARED],
            m->counts[XC_CLASS_OTHER], m->counts[XC_CLASS_DEAD], st->eol);
    fprintf(f, "ν chat-only  running: median ν^ε %s ν^r %s (%zu of %ld defined)   ", fmt_nu(m->run_nu_err, b1, sizeof b1),
            fmt_nu(m->run_nu_rec, b2, sizeof b2), m->run_def, m->n_co);
    if (m->scaling_step >= 0)
        fprintf(f, "exact (step %ld): median ν^ε %s ν^r %s (%zu defined)%s\n", m->scaling_step,
                fmt_nu(m->ex_nu_err, b3, sizeof b3), fmt_nu(m->ex_nu_rec, b4, sizeof b4), m->ex_def, st->eol);
    else
        fprintf(f, "%sexact: no pass yet (xcoder scaling)%s%s\n", st->dim, st->off, st->eol);
}

static void draw(FILE *f, const style_t *st, const xc_client_value_t *r, const latsum_t *top,
                 const series_t *loss, const series_t *fveb, const series_t *fvec, const series_t *tps, int bins,
                 long frame, long count, const char *endpoint, const char *note)
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
    const xc_client_value_t *run = xc_client_value_path(r, "scaling.running");
    if (run && run->type == XC_VAL_BOOL && run->u.b) { /* an exact pass under way: its progress */
        double done = num(r, "scaling.tokens_done"), target = num(r, "scaling.tokens_target");
        fprintf(f, "scaling  exact pass: %s of %s tokens (%.1f%%)%s\n", xc_cli_fmt_count(done, b1, sizeof b1),
                xc_cli_fmt_count(target, b2, sizeof b2), target > 0 ? 100.0 * done / target : 0.0, st->eol);
    }
    if (top) draw_hist(f, st, top, bins);
    else fprintf(f, "%s(no latent statistics%s%s)%s%s\n", st->dim, note && note[0] ? ": " : " yet", note ? note : "",
                 st->off, st->eol);
}

int xc_cli_cmd_watch(xc_cli_args_t *a)
{
    double interval;
    long count, bins;
    int mode, rc = xc_cli_opt_double(a, "interval", 1.0, 0.05, 3600, &interval);
    if (!rc) rc = xc_cli_source_mode(a, &mode);
    if (!rc) rc = xc_cli_opt_long(a, "count", 0, 0, 1L << 40, &count);
    if (!rc) rc = xc_cli_opt_long(a, "bins", 10, 2, MAX_BINS, &bins);
    if (rc) return rc;
    style_t st = {0, "", "", "", "", "", "", ""};
    int tty = isatty(1);
    if ((tty && !xc_cli_flag(a, "plain")) || xc_cli_flag(a, "ansi"))
        st = (style_t){1, "\033[K", "\033[1m", "\033[2m", "\033[0m", "\033[35m", "\033[36m", "\033[32m"};

    /* per-latent statistics: shared memory when local (checked again on every
     * frame that lacks it, so a daemon started or restarted later is picked up) */
    xc_cli_source_t src;
    xc_cli_args_t quiet = *a;
    quiet.verbose = 0;
    memset(&src, 0, sizeof src);
    src.kind = XC_LAT_SRC_CONTROL;
    snprintf(src.why, sizeof src.why, "--source control");
    if (mode != XC_LAT_SRC_CONTROL && (rc = xc_cli_source_open(&quiet, mode, NULL, &src))) return rc;
    int last_kind = 0;

    xc_cli_trap_signals();
    xc_client_t *c = xc_cli_client(a, 0);
    if (!c) {
        xc_cli_source_close(&src);
        return XC_CLI_FAIL;
    }
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
        latsum_t sum;
        int have_sum = 0;
        const char *note = NULL;
        rc = xc_client_status(c, &r);
        if (rc == XC_OK && num(r, "step") > 0) { /* before the first step the losses are 0 */
            series_push(&loss, num(r, "loss"));
            series_push(&fveb, num(r, "fve.0"));
            series_push(&fvec, num(r, "fve.1"));
            series_push(&tps, num(r, "tokens_per_s"));
        }
        if (rc == XC_OK && mode != XC_LAT_SRC_CONTROL) {
            xc_shm_snapshot_t snap;
            int src_rc = src.kind == XC_LAT_SRC_SHM ? xc_cli_source_snapshot(&src, &snap) : XC_ESTATE;
            if (src_rc != XC_OK) { /* none yet, or the writer went away: look again */
                xc_cli_source_close(&src);
                xc_cli_source_open(&quiet, 0, NULL, &src);
                if (src.kind == XC_LAT_SRC_SHM) src_rc = xc_cli_source_snapshot(&src, &snap);
            }
            if (src_rc == XC_OK) {
                have_sum = sum_from_shm(&sum, &snap, (int)bins) == XC_OK;
                xc_shm_snapshot_free(&snap);
            } else if (mode == XC_LAT_SRC_SHM) {
                note = src.why;
            }
        }
        if (rc == XC_OK && !have_sum && mode != XC_LAT_SRC_SHM) {
            long F = (long)xc_client_value_getnum(r, "config.dict_size", 0);
            if (F > 0 && xc_client_top(c, "delta_norm", F > 65536 ? 65536 : F, 0, 1, &top) == XC_OK)
                have_sum = sum_from_top(&sum, top, r, (int)bins) == XC_OK;
        }
        int kind = have_sum && !strcmp(sum.source, "shm") ? XC_LAT_SRC_SHM : XC_LAT_SRC_CONTROL;
        if (a->verbose && kind != last_kind)
            fprintf(stderr, "xcoder watch: latent statistics from %s%s%s\n", kind == XC_LAT_SRC_SHM ? "shm /xcoderd." : "control",
                    kind == XC_LAT_SRC_SHM ? src.instance : ": ", kind == XC_LAT_SRC_SHM ? "" : src.why);
        last_kind = kind;
        if (st.ansi) fputs("\033[H", stdout);
        else if (frame > 1) fputs("\n", stdout);
        if (rc == XC_OK) {
            draw(stdout, &st, r, have_sum ? &sum : NULL, &loss, &fveb, &fvec, &tps, (int)bins, frame, count,
                 xc_client_endpoint(c, "control"), note);
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
    xc_cli_source_close(&src);
    return out;
}
