/* `xcoder synth`: the planted-feature generator (synth/xc_synth.h) as a
 * producer. It streams paired activations to the daemon at a chosen rate, or
 * writes them to a .npy file; the generator's options are shared with
 * `xcoder report`, which rebuilds the same features to score recovery. */
#include "xc_cli.h"
#include "xc_synth.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int xc_cli_synth_config(const xc_cli_args_t *a, int d, void *cfgp)
{
    xc_synth_config_t *cfg = cfgp;
    long v;
    double x;
    int rc = XC_CLI_OK;
    xc_synth_config_default(cfg, d);
#define LONG_OPT(name, field)                                                         \
    do {                                                                              \
        if (!rc && !(rc = xc_cli_opt_long(a, name, (long)cfg->field, 0, 1L << 24, &v))) \
            cfg->field = (int)v;                                                      \
    } while (0)
#define DBL_OPT(name, field, lo, hi)                                                          \
    do {                                                                                      \
        if (!rc && !(rc = xc_cli_opt_double(a, name, (double)cfg->field, lo, hi, &x))) cfg->field = (float)x; \
    } while (0)
    LONG_OPT("shared", n_shared);
    LONG_OPT("chat-only", n_chat_only);
    LONG_OPT("base-only", n_base_only);
    LONG_OPT("shrunk", n_shrunk);
    DBL_OPT("shared-cos", shared_cos, -1, 1);
    DBL_OPT("shrunk-scale", shrunk_scale, 0, 1e6);
    DBL_OPT("shrunk-cos", shrunk_cos, -1, 1);
    DBL_OPT("mean-active", mean_active, 0, 1e6);
    DBL_OPT("prob-exponent", prob_exponent, 0, 100);
    DBL_OPT("max-prob", max_prob, 0, 1);
    DBL_OPT("noise", noise_std, 0, 1e6);
    DBL_OPT("bias-norm", bias_norm, 0, 1e6);
#undef LONG_OPT
#undef DBL_OPT
    if (!rc && xc_cli_opt(a, "seed")) {
        long seed;
        rc = xc_cli_opt_long(a, "seed", 1, 0, 0x7fffffffffffffffL, &seed);
        cfg->seed = (uint64_t)seed;
    }
    if (rc) return rc;
    /* small d: the default mean_active may not fit the few default features */
    int nf = cfg->n_shared + cfg->n_chat_only + cfg->n_base_only + cfg->n_shrunk;
    if (!xc_cli_opt(a, "mean-active") && cfg->mean_active > cfg->max_prob * (float)nf)
        cfg->mean_active = cfg->max_prob * (float)nf * 0.75f;
    char why[256] = "";
    if (xc_synth_config_validate(cfg, why, sizeof why) != XC_OK) {
        xc_cli_err(a, "generator options: %s", why[0] ? why : "invalid");
        return XC_CLI_USAGE;
    }
    return XC_CLI_OK;
}

/* Asks the daemon for its d (config key "d"). */
static int daemon_d(const xc_cli_args_t *a, xc_client_t *c, long *d)
{
    xc_client_value_t *r = NULL;
    int rc = xc_client_config(c, "d", &r);
    if (rc < 0) return xc_cli_fail(a, c, rc);
    double x = xc_client_value_getnum(r, "config.d", NAN);
    xc_client_value_free(&r);
    if (!(x >= 1 && x <= (1 << 20))) {
        xc_cli_err(a, "the daemon's config has no usable 'd'; pass --d");
        return XC_CLI_FAIL;
    }
    *d = (long)x;
    return XC_CLI_OK;
}

static int write_npy(const xc_cli_args_t *a, xc_synth_t *s, const char *path, long tokens, long d)
{
    size_t count = (size_t)tokens * 2u * (size_t)d;
    if (count > ((size_t)1 << 31)) {
        xc_cli_err(a, "--out: %ld tokens x d %ld is more than 8 GiB; write fewer tokens", tokens, d);
        return XC_CLI_USAGE;
    }
    float *x = malloc(count * sizeof *x);
    if (!x) {
        xc_cli_err(a, "out of memory for %ld tokens", tokens);
        return XC_CLI_FAIL;
    }
    xc_synth_generate(s, tokens, x, NULL);
    char why[512];
    int rc = xc_client_npy_write_f32(path, x, tokens, d, why, sizeof why);
    free(x);
    if (rc < 0) {
        xc_cli_err(a, "%s", why);
        return XC_CLI_FAIL;
    }
    if (!a->json) printf("wrote %s: %ld tokens [%ld, 2, %ld] float32\n", path, tokens, tokens, d);
    return XC_CLI_OK;
}

/* Sleeps until mono time `t` (or a stop request). */
static void sleep_until(double t)
{
    for (;;) {
        double left = t - mono_s();
        if (left <= 0 || xc_cli_stop) return;
        if (left > 0.1) left = 0.1;
        struct timespec ts = {0, (long)(left * 1e9)};
        nanosleep(&ts, NULL);
    }
}

/* The token context synth sends, so the daemon's examples name the planted
 * features: token id 1 + i for a token whose strongest firing feature is i
 * (0: none fired), documents of SYNTH_DOC tokens, and a vocabulary naming each
 * id by its feature ("chat7" is chat-only feature 7). */
#define SYNTH_DOC 64

static int send_vocab(xc_client_t *c, xc_synth_t *s, const char *stream)
{
    int nf = xc_synth_n_features(s);
    char **names = calloc((size_t)nf + 1, sizeof *names); /* owned here */
    int rc = names ? XC_OK : XC_ENOMEM;
    static const char *const short_kind[] = {"shared", "chat", "base", "shrunk"};
    for (int i = 0; rc == XC_OK && i <= nf; i++) {
        xc_synth_feature_t f;
        char tmp[32];
        if (i == 0) snprintf(tmp, sizeof tmp, " .");
        else if (xc_synth_feature(s, i - 1, &f) == 0 && (unsigned)f.kind < 4)
            snprintf(tmp, sizeof tmp, " %s%d", short_kind[f.kind], i - 1);
        else snprintf(tmp, sizeof tmp, " f%d", i - 1);
        if (!(names[i] = strdup(tmp))) rc = XC_ENOMEM;
    }
    if (rc == XC_OK) rc = xc_client_send_vocab(c, stream, 0, (uint32_t)nf + 1, (const char *const *)names);
    for (int i = 0; names && i <= nf; i++) free(names[i]);
    free(names);
    return rc;
}

static void token_context(const float *codes, int nf, long n, long first_tok, uint32_t *ids, uint32_t *pos)
{
    for (long t = 0; t < n; t++) {
        const float *cd = codes + (size_t)t * nf;
        int best = -1;
        for (int i = 0; i < nf; i++)
            if (cd[i] > 0 && (best < 0 || cd[i] > cd[best])) best = i;
        ids[t] = (uint32_t)(best + 1);
        pos[2 * t] = (uint32_t)((first_tok + t) / SYNTH_DOC);
        pos[2 * t + 1] = (uint32_t)((first_tok + t) % SYNTH_DOC);
    }
}

int xc_cli_cmd_synth(xc_cli_args_t *a)
{
    long tokens, batch, window, d = 0;
    double rate;
    int rc = xc_cli_opt_long(a, "tokens", 0, 0, 1L << 50, &tokens);
    if (!rc) rc = xc_cli_opt_long(a, "batch", 1024, 1, 1L << 22, &batch);
    if (!rc) rc = xc_cli_opt_long(a, "window", 8, 1, 1024, &window);
    if (!rc) rc = xc_cli_opt_double(a, "rate", 0, 0, 1e12, &rate);
    if (!rc) rc = xc_cli_opt_long(a, "d", 0, 1, 1 << 20, &d);
    if (rc) return rc;
    xc_dtype_t dtype = XC_DTYPE_F32;
    const char *dts = xc_cli_opt(a, "dtype");
    if (dts && xc_dtype_parse(dts, strlen(dts), &dtype) != XC_OK) {
        xc_cli_err(a, "--dtype: '%s' is not one of f32, f16, bf16", dts);
        return XC_CLI_USAGE;
    }
    const char *outp = xc_cli_opt(a, "out");
    if (outp && (tokens == 0 || d == 0)) {
        xc_cli_err(a, "--out needs --tokens N and --d D");
        return XC_CLI_USAGE;
    }
    int quiet = xc_cli_flag(a, "quiet") || a->json || !isatty(2);

    xc_client_t *c = NULL;
    xc_synth_t *s = NULL;
    void *wire = NULL;
    float *x = NULL, *codes = NULL;
    uint32_t *ids = NULL, *pos = NULL;
    const char *stream = xc_cli_opt(a, "stream") ? xc_cli_opt(a, "stream") : "synth";
    int out = XC_CLI_OK;
    if (!outp) {
        xc_client_options_t o;
        xc_client_options_default(&o);
        if (a->run_dir) o.run_dir = a->run_dir;
        o.ingest = a->ingest;
        o.control = a->control;
        o.server_key = a->server_key;
        o.client_key = a->client_key;
        o.events = a->events;
        o.timeout_ms = xc_cli_timeout_ms(a);
        o.window = (int)window;
        const char *prod = xc_cli_opt(a, "producer");
        o.producer = prod ? prod : "xcoder-synth";
        int err;
        c = xc_client_new(&o, &err);
        if (!c) {
            xc_cli_err(a, "cannot create a client: %s", xc_strerror(err));
            return err == XC_EINVAL ? XC_CLI_USAGE : XC_CLI_FAIL;
        }
        xc_cli_trap_signals();
        xc_client_set_cancel_flag(c, &xc_cli_stop);
        if (d == 0 && (out = daemon_d(a, c, &d)) != XC_CLI_OK) goto out;
    }

    xc_synth_config_t cfg;
    if ((out = xc_cli_synth_config(a, (int)d, &cfg)) != XC_CLI_OK) goto out;
    int err = 0;
    s = xc_synth_new(&cfg, &err);
    if (!s) {
        xc_cli_err(a, "cannot build the generator: %s", xc_strerror(err));
        out = XC_CLI_FAIL;
        goto out;
    }
    if (outp) {
        out = write_npy(a, s, outp, tokens, d);
        goto out;
    }

    x = malloc((size_t)batch * 2u * (size_t)d * sizeof *x);
    int nf = xc_synth_n_features(s);
    codes = malloc((size_t)batch * (size_t)nf * sizeof *codes);
    ids = malloc((size_t)batch * sizeof *ids);
    pos = malloc((size_t)batch * 2 * sizeof *pos);
    if (dtype != XC_DTYPE_F32) wire = malloc((size_t)batch * 2u * (size_t)d * 2u);
    if (!x || !codes || !ids || !pos || (dtype != XC_DTYPE_F32 && !wire)) {
        xc_cli_err(a, "out of memory for a %ld-token batch", batch);
        out = XC_CLI_FAIL;
        goto out;
    }
    if (!quiet)
        fprintf(stderr, "synth: d=%ld seed=%llu features: %d shared, %d chat-only, %d base-only, %d shrunk -> %s\n", d,
                (unsigned long long)cfg.seed, cfg.n_shared, cfg.n_chat_only, cfg.n_base_only, cfg.n_shrunk,
                xc_client_endpoint(c, "ingest"));
    rc = send_vocab(c, s, stream);
    if (rc == XC_EUNKNOWN || rc == XC_EPROTO) rc = XC_OK; /* an older daemon: no examples, nothing else changes */
    if (rc < 0) {
        out = xc_cli_fail(a, c, rc);
        goto out;
    }
    double t0 = mono_s(), last_print = t0;
    long sent = 0;
    while ((tokens == 0 || sent < tokens) && !xc_cli_stop) {
        long n = tokens && tokens - sent < batch ? tokens - sent : batch;
        xc_synth_generate(s, n, x, codes); /* asking for codes leaves the stream as it is */
        token_context(codes, nf, n, sent, ids, pos);
        if (rate > 0) sleep_until(t0 + (double)sent / rate);
        if (xc_cli_stop) break;
        const void *payload = x;
        if (dtype != XC_DTYPE_F32) {
            xc_proto_f32_to_payload(x, (size_t)n * 2u * (size_t)d, dtype, wire);
            payload = wire;
        }
        rc = xc_client_push_ctx(c, payload, (xc_client_dtype_t)dtype, n, (int)d, ids, pos, stream);
        if (rc < 0) break;
        sent += n;
        double now = mono_s();
        if (!quiet && now - last_print >= 1.0) {
            char b1[32], b2[32];
            xc_client_push_stats_t st;
            xc_client_push_stats(c, &st);
            fprintf(stderr, "\rsynth: %s tokens acked, %s tokens/s   ", xc_cli_fmt_count((double)st.tokens_acked, b1, sizeof b1),
                    xc_cli_fmt_count((double)sent / (now - t0), b2, sizeof b2));
            last_print = now;
        }
    }
    int stopped = xc_cli_stop;
    if (rc == XC_EAGAIN && stopped) rc = XC_OK; /* interrupted while waiting: not an error */
    if (rc == XC_OK) {
        /* drain what is in flight, even after Ctrl-C/SIGTERM, but not forever */
        xc_client_set_cancel_flag(c, NULL);
        xc_client_set_timeout(c, stopped ? 5000 : xc_cli_timeout_ms(a));
        rc = xc_client_flush(c);
    }
    if (!quiet) fprintf(stderr, "\r\033[K");
    double dt = mono_s() - t0;
    xc_client_push_stats_t st;
    xc_client_push_stats(c, &st);
    if (rc < 0) {
        out = xc_cli_fail(a, c, rc);
        goto out;
    }
    if (a->json) {
        xc_buf_t b;
        xc_mpw_t w;
        xc_buf_init(&b);
        xc_mpw_init(&w, &b);
        xc_mpw_map_begin(&w);
        xc_mpw_kv_uint(&w, "tokens_sent", st.tokens_sent);
        xc_mpw_kv_uint(&w, "tokens_acked", st.tokens_acked);
        xc_mpw_kv_uint(&w, "batches_acked", st.batches_acked);
        xc_mpw_kv_int(&w, "d", d);
        xc_mpw_kv_uint(&w, "seed", cfg.seed);
        xc_mpw_kv_double(&w, "seconds", dt);
        xc_mpw_kv_double(&w, "tokens_per_s", dt > 0 ? (double)st.tokens_acked / dt : 0);
        xc_mpw_kv_bool(&w, "interrupted", stopped);
        xc_mpw_map_end(&w);
        out = xc_cli_print_mpw(a, &w);
        xc_buf_free(&b);
    } else {
        char b[32];
        printf("synth: sent %llu tokens in %llu messages (d=%ld, seed %llu), all acked, %.1fs, %s tokens/s%s\n",
               (unsigned long long)st.tokens_acked, (unsigned long long)st.batches_acked, d,
               (unsigned long long)cfg.seed, dt, xc_cli_fmt_count(dt > 0 ? (double)st.tokens_acked / dt : 0, b, sizeof b),
               stopped ? " (stopped by signal)" : "");
    }
out:
    free(x);
    free(codes);
    free(ids);
    free(pos);
    free(wire);
    xc_synth_destroy(&s);
    xc_client_destroy(&c);
    return out;
}
