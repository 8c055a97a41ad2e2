/* Request/reply commands: status, ping, checkpoint, pause,
 * resume, shutdown, config, and the `events` printer. Each prints a short
 * human form, or the daemon's whole reply with --json. */
#include "xc_cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int (*xc_cli_req_fn)(xc_client_t *c, xc_client_value_t **reply);

/* Connects, runs one request, prints JSON or hands the reply to `show`. */
static int simple_request(xc_cli_args_t *a, xc_cli_req_fn fn, void (*show)(const xc_client_value_t *r))
{
    xc_client_t *c = xc_cli_client(a, 0);
    if (!c) return XC_CLI_FAIL;
    xc_client_value_t *r = NULL;
    int rc = fn(c, &r);
    int out;
    if (rc < 0) out = xc_cli_fail(a, c, rc);
    else if (a->json) out = xc_cli_print_json(a, r);
    else {
        show(r);
        out = XC_CLI_OK;
    }
    xc_client_value_free(&r);
    xc_client_destroy(&c);
    return out;
}

static double num(const xc_client_value_t *v, const char *path) { return xc_client_value_getnum(v, path, NAN); }

/* ------------------------------------------------------------------ status */

void xc_cli_print_status(FILE *f, const xc_client_value_t *r, const char *eol);
void xc_cli_print_status(FILE *f, const xc_client_value_t *r, const char *eol)
{
    char b1[32], b2[32], b3[32], b4[32], b5[32];
    const char *state = xc_client_value_getstr(r, "state", "?");
    const char *model = xc_client_value_getstr(r, "config.model", "?");
    fprintf(f, "state    %-9s step %-10.0f uptime %s   model %s d=%.0f F=%.0f k=%.0f B=%.0f%s\n", state,
            num(r, "step"), xc_cli_fmt_duration(num(r, "uptime_s"), b1, sizeof b1), model, num(r, "config.d"),
            num(r, "config.dict_size"), num(r, "config.k"), num(r, "config.batch_size"), eol);
    fprintf(f, "tokens   trained %-8s acked %-8s buffered %-8s queued %-8s%s\n",
            xc_cli_fmt_count(num(r, "tokens_trained"), b1, sizeof b1), xc_cli_fmt_count(num(r, "tokens_acked"), b2, sizeof b2),
            xc_cli_fmt_count(num(r, "tokens_buffered"), b3, sizeof b3), xc_cli_fmt_count(num(r, "tokens_queued"), b4, sizeof b4),
            eol);
    fprintf(f, "speed    %s tokens/s   %.1f steps/s   queue %.0f/%.0f batches   mix buffer %s tokens%s\n",
            xc_cli_fmt_count(num(r, "tokens_per_s"), b5, sizeof b5), num(r, "steps_per_s"), num(r, "queue_depth"),
            num(r, "queue_size"), xc_cli_fmt_count(num(r, "mix_tokens"), b1, sizeof b1), eol);
    /* a sharded job (mpirun -np R): each rank's last step and rank 0's communication in it */
    if (num(r, "ranks") > 1) {
        const xc_client_value_t *rs = xc_client_value_get(r, "rank_step_ms");
        char per[256] = "";
        size_t at = 0;
        for (size_t i = 0; rs && rs->type == XC_VAL_ARRAY && i < rs->u.a.n && i < 8 && at < sizeof per; i++) {
            double x = NAN;
            xc_client_value_num(&rs->u.a.items[i], &x);
            at += (size_t)snprintf(per + at, sizeof per - at, "%s%.1f", i ? " " : "", x);
        }
        fprintf(f, "ranks    %.0f   step ms per rank [%s%s] (slowest %.1f)   comm %.1f ms %s B per step%s\n",
                num(r, "ranks"), per, rs && rs->type == XC_VAL_ARRAY && rs->u.a.n > 8 ? " ..." : "",
                num(r, "rank_step_ms_max"), num(r, "comm_ms"), xc_cli_fmt_count(num(r, "comm_bytes"), b1, sizeof b1),
                eol);
    }
    /* the stream mixture (stream_mix): per stream, trained and waiting, and the batch composition */
    const xc_client_value_t *sm = xc_client_value_get(r, "streams");
    for (size_t i = 0; sm && sm->type == XC_VAL_MAP && i < sm->u.m.n; i++) {
        const xc_client_value_t *k = &sm->u.m.kv[2 * i], *v = &sm->u.m.kv[2 * i + 1];
        const xc_client_value_t *w = xc_client_value_get(v, "waiting");
        char bt[64] = "batch -";
        if (k->type != XC_VAL_STR) continue;
        if (num(v, "batch_min") >= 0) /* this stream's tokens in the last batch [min..max over all] */
            snprintf(bt, sizeof bt, "batch %.0f [%.0f..%.0f]", num(v, "batch_tokens"), num(v, "batch_min"),
                     num(v, "batch_max"));
        fprintf(f, "stream   %-6s %3.0f%%  trained %-7s buffered %-6s queued %-6s held %-6s (%.0f times)   %s%s%s\n",
                k->u.s.ptr, 100.0 * num(v, "share"),
                xc_cli_fmt_count(num(v, "tokens_trained"), b1, sizeof b1),
                xc_cli_fmt_count(num(v, "tokens_buffered"), b2, sizeof b2),
                xc_cli_fmt_count(num(v, "tokens_queued"), b3, sizeof b3),
                xc_cli_fmt_count(num(v, "tokens_held"), b4, sizeof b4), num(v, "holds"), bt,
                w && w->type == XC_VAL_BOOL && w->u.b ? "   (waited for)" : "", eol);
    }
    fprintf(f, "loss     %.5g   recon_l2 %.5g   mse %.5g   aux %.5g   l1 %.5g   lr %.3g%s\n", num(r, "loss"),
            num(r, "recon_l2"), num(r, "recon_mse"), num(r, "aux"), num(r, "l1"), num(r, "lr"), eol);
    fprintf(f, "quality  FVE base %.4f chat %.4f   L0 %.2f   dead %.1f%%   theta %.4g   |g| %.3g%s\n",
            num(r, "fve.0"), num(r, "fve.1"), num(r, "l0"), 100.0 * num(r, "dead_fraction"), num(r, "theta"),
            num(r, "grad_norm"), eol);
    /* activation normalisation: the pass, the scales, the units of what is shown, the exclusions */
    const char *nz = xc_client_value_getstr(r, "normalize", "off"), *nst = xc_client_value_getstr(r, "normalize_state", "off");
    if (strcmp(nz, "off") != 0)
        fprintf(f, "normalize %s: %s after %s tokens   scale base %.4g chat %.4g   FVE in %s units, Latent Scaling in "
                "%s units%s\n", nz, strcmp(nst, "collecting") == 0 ? "statistics pass, training waits" : nst,
                xc_cli_fmt_count(num(r, "normalize_tokens_seen"), b1, sizeof b1), num(r, "normalize_scale.0"),
                num(r, "normalize_scale.1"), xc_client_value_getstr(r, "fve_units", "?"),
                xc_client_value_getstr(r, "scaling_units", "?"), eol);
    if (num(r, "tokens_excluded_position") > 0 || num(r, "tokens_excluded_outlier") > 0 || num(r, "tokens_stats_only") > 0)
        fprintf(f, "excluded %s tokens by position, %s as norm outliers, %s statistics only (not trained)%s\n",
                xc_cli_fmt_count(num(r, "tokens_excluded_position"), b1, sizeof b1),
                xc_cli_fmt_count(num(r, "tokens_excluded_outlier"), b2, sizeof b2),
                xc_cli_fmt_count(num(r, "tokens_stats_only"), b3, sizeof b3), eol);
    /* the token budget: progress and the ETA at the daemon's averaged rate */
    if (num(r, "tokens_budget") > 0) {
        const xc_client_value_t *reached = xc_client_value_get(r, "budget_reached");
        double eta = num(r, "eta_s");
        if (reached && reached->type == XC_VAL_BOOL && reached->u.b)
            fprintf(f, "budget   reached: %s tokens trained; training has stopped%s\n",
                    xc_cli_fmt_count(num(r, "tokens_budget"), b1, sizeof b1), eol);
        else
            fprintf(f, "budget   %s of %s tokens (%.1f%%)   ETA %s%s\n", xc_cli_fmt_count(num(r, "tokens"), b1, sizeof b1),
                    xc_cli_fmt_count(num(r, "tokens_budget"), b2, sizeof b2), 100.0 * num(r, "budget_fraction"),
                    isfinite(eta) ? xc_cli_fmt_duration(eta, b3, sizeof b3) : "? (no rate yet)", eol);
    }
    /* the exact Latent Scaling pass: progress while one runs, else the last one */
    const xc_client_value_t *run = xc_client_value_path(r, "scaling.running");
    double done = num(r, "scaling.tokens_done"), target = num(r, "scaling.tokens_target");
    if (run && run->type == XC_VAL_BOOL && run->u.b)
        fprintf(f, "scaling  exact pass: %s of %s tokens (%.1f%%)   xcoder scaling --wait / --cancel%s\n",
                xc_cli_fmt_count(done, b1, sizeof b1), xc_cli_fmt_count(target, b2, sizeof b2),
                target > 0 ? 100.0 * done / target : 0.0, eol);
    else if (num(r, "scaling.last_step") >= 0)
        fprintf(f, "scaling  last exact pass: step-%.0f dictionary over %s tokens%s\n", num(r, "scaling.last_step"),
                xc_cli_fmt_count(num(r, "scaling.last_tokens"), b1, sizeof b1), eol);
    double refused = num(r, "counters.batches_refused");
    if (refused > 0) {
        fprintf(f, "refused  %.0f batches:", refused);
        const xc_client_value_t *cn = xc_client_value_get(r, "counters");
        for (size_t i = 0; cn && cn->type == XC_VAL_MAP && i < cn->u.m.n; i++) {
            const xc_client_value_t *k = &cn->u.m.kv[2 * i];
            double x = 0;
            if (k->type == XC_VAL_STR && !strncmp(k->u.s.ptr, "XC_E", 4) &&
                xc_client_value_num(&cn->u.m.kv[2 * i + 1], &x) == XC_OK && x > 0)
                fprintf(f, " %s=%.0f", k->u.s.ptr, x);
        }
        fprintf(f, "%s\n", eol);
    }
}

static void show_status(const xc_client_value_t *r) { xc_cli_print_status(stdout, r, ""); }
int xc_cli_cmd_status(xc_cli_args_t *a) { return simple_request(a, xc_client_status, show_status); }

static void show_ping(const xc_client_value_t *r)
{
    char b[32];
    printf("xcoderd '%s' is up (protocol %.0f, uptime %s)\n", xc_client_value_getstr(r, "name", "?"), num(r, "proto"),
           xc_cli_fmt_duration(num(r, "uptime_s"), b, sizeof b));
}
int xc_cli_cmd_ping(xc_cli_args_t *a) { return simple_request(a, xc_client_ping, show_ping); }

/* ------------------------------------------------- checkpoint, pause, ... */

static void show_checkpoint(const xc_client_value_t *r)
{
    char b[32];
    printf("checkpoint written: %s (step %.0f, %s)\n", xc_client_value_getstr(r, "path", "?"), num(r, "step"),
           xc_cli_fmt_bytes(num(r, "bytes"), b, sizeof b));
}

int xc_cli_cmd_checkpoint(xc_cli_args_t *a)
{
    /* writing can take a while on a big model: never less than 2 minutes */
    if (a->timeout_s > 0 && a->timeout_s < 120) a->timeout_s = 120;
    return simple_request(a, xc_client_checkpoint, show_checkpoint);
}

static void show_paused(const xc_client_value_t *r) { printf("training paused\n"); }
static void show_resumed(const xc_client_value_t *r) { printf("training resumed\n"); }
int xc_cli_cmd_pause(xc_cli_args_t *a) { return simple_request(a, xc_client_pause, show_paused); }
int xc_cli_cmd_resume(xc_cli_args_t *a) { return simple_request(a, xc_client_resume, show_resumed); }

int xc_cli_cmd_shutdown(xc_cli_args_t *a)
{
    xc_client_t *c = xc_cli_client(a, 0);
    if (!c) return XC_CLI_FAIL;
    xc_client_value_t *r = NULL;
    int rc = xc_client_shutdown(c, &r), out = XC_CLI_OK;
    if (rc < 0) {
        out = xc_cli_fail(a, c, rc);
        goto out;
    }
    if (xc_cli_flag(a, "wait")) {
        /* the daemon finishes its step and writes a checkpoint, then exits:
         * poll ping until it stops answering */
        xc_client_set_timeout(c, 1000);
        int64_t waited = 0, limit = xc_cli_timeout_ms(a) < 0 ? -1 : (int64_t)(a->timeout_s * 4000);
        for (;;) {
            xc_client_value_t *p = NULL;
            xc_client_t *probe = xc_cli_client(a, 0);
            if (!probe) break;
            xc_client_set_timeout(probe, 500);
            int prc = xc_client_ping(probe, &p);
            xc_client_value_free(&p);
            xc_client_destroy(&probe);
            if (prc == XC_ETIMEDOUT || prc == XC_ENOTFOUND) break; /* silent, or its socket file gone */
            if (xc_cli_stop || (limit >= 0 && waited > limit)) {
                xc_cli_err(a, "the daemon still answers after the shutdown request");
                out = XC_CLI_TIMEOUT;
                goto out;
            }
            usleep(200000);
            waited += 700;
        }
    }
    if (a->json) out = xc_cli_print_json(a, r);
    else printf("daemon shutting down%s\n", xc_cli_flag(a, "wait") ? ": stopped" : "");
out:
    xc_client_value_free(&r);
    xc_client_destroy(&c);
    return out;
}

int xc_cli_cmd_config(xc_cli_args_t *a)
{
    xc_client_t *c = xc_cli_client(a, 0);
    if (!c) return XC_CLI_FAIL;
    xc_client_value_t *r = NULL;
    int rc = xc_client_config(c, a->npos ? a->pos[0] : NULL, &r), out = XC_CLI_OK;
    if (rc < 0) out = xc_cli_fail(a, c, rc);
    else if (a->json) out = xc_cli_print_json(a, r);
    else {
        const xc_client_value_t *m = xc_client_value_get(r, "config");
        for (size_t i = 0; m && m->type == XC_VAL_MAP && i < m->u.m.n; i++) {
            char b[512];
            const xc_client_value_t *k = &m->u.m.kv[2 * i];
            if (k->type != XC_VAL_STR) continue;
            if (a->npos) printf("%s\n", xc_cli_fmt_value(&m->u.m.kv[2 * i + 1], b, sizeof b));
            else printf("%-24s %s\n", k->u.s.ptr, xc_cli_fmt_value(&m->u.m.kv[2 * i + 1], b, sizeof b));
        }
    }
    xc_client_value_free(&r);
    xc_client_destroy(&c);
    return out;
}

/* ------------------------------------------------------------------ events */

int xc_cli_cmd_events(xc_cli_args_t *a)
{
    long count;
    double wait_s;
    int rc = xc_cli_opt_long(a, "count", 0, 0, 1L << 40, &count);
    if (!rc) rc = xc_cli_opt_double(a, "wait", 0, 0, 1e6, &wait_s);
    if (rc) return rc;
    xc_cli_trap_signals();
    xc_client_t *c = xc_cli_client(a, 0);
    if (!c) return XC_CLI_FAIL;
    int out = XC_CLI_OK;
    rc = xc_client_subscribe(c, xc_cli_opt(a, "topic"));
    if (rc < 0) {
        out = xc_cli_fail(a, c, rc);
        goto out;
    }
    for (long seen = 0; count == 0 || seen < count; seen++) {
        xc_client_value_t *ev = NULL;
        rc = xc_client_next_event(c, wait_s > 0 ? (int)(wait_s * 1000) : -1, &ev);
        if (rc == XC_EAGAIN && xc_cli_stop) break;
        if (rc == XC_EPROTO) {
            xc_cli_err(a, "%s (skipped)", xc_client_last_error(c));
            seen--;
            continue;
        }
        if (rc < 0) {
            out = xc_cli_fail(a, c, rc);
            break;
        }
        if (a->json) {
            xc_cli_print_json(a, ev);
        } else {
            const char *type = xc_client_value_getstr(ev, "type", "?");
            char b[32];
            if (!strcmp(type, "stats"))
                printf("stats       step %.0f  loss %.4g  FVE %.3f/%.3f  L0 %.2f  dead %.1f%%  %s tok/s\n",
                       num(ev, "step"), num(ev, "loss"), num(ev, "fve.0"), num(ev, "fve.1"), num(ev, "l0"),
                       100 * num(ev, "dead_fraction"), xc_cli_fmt_count(num(ev, "tokens_per_s"), b, sizeof b));
            else if (!strcmp(type, "checkpoint"))
                printf("checkpoint  %s (step %.0f, %s)\n", xc_client_value_getstr(ev, "path", "?"), num(ev, "step"),
                       xc_client_value_getstr(ev, "reason", "?"));
            else if (!strcmp(type, "alert"))
                printf("alert       %s: %s\n", xc_client_value_getstr(ev, "kind", "?"),
                       xc_client_value_getstr(ev, "message", ""));
            else {
                char *j = xc_client_value_to_json(ev, 0);
                printf("%-11s %s\n", type, j ? j : "");
                free(j);
            }
            fflush(stdout);
        }
        xc_client_value_free(&ev);
    }
out:
    xc_client_destroy(&c);
    return out;
}
