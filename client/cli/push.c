/* `xcoder push FILE.npy`: streams a .npy array [N, 2, d] of float32 or
 * float16 to the daemon in messages of --batch tokens, with a window of
 * unacked messages (backpressure), and stops at the first refusal. */
#include "xc_cli.h"

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

/* Copies n items of size isz from src to dst reversing each item's bytes. */
static void byteswap_copy(void *dst, const void *src, size_t n, size_t isz)
{
    const unsigned char *s = src;
    unsigned char *d = dst;
    for (size_t i = 0; i < n; i++)
        for (size_t b = 0; b < isz; b++) d[i * isz + b] = s[i * isz + isz - 1 - b];
}

/* Explains a refusal in terms of the file: which tokens, and the daemon's words. */
static void explain_nack(const xc_cli_args_t *a, xc_client_t *c, const char *path, long batch, long total)
{
    uint64_t seq;
    int code;
    const char *reason;
    if (xc_client_last_nack(c, &seq, &code, &reason) != XC_OK) {
        xc_cli_err(a, "%s", xc_client_last_error(c));
        return;
    }
    long first = (long)seq * batch, last = first + batch - 1;
    if (last >= total) last = total - 1;
    xc_cli_err(a, "the daemon refused tokens %ld-%ld of %s (message %llu): %s (%s)", first, last, path,
               (unsigned long long)seq, reason, xc_errname(code));
}

int xc_cli_cmd_push(xc_cli_args_t *a)
{
    long batch, window;
    int rc = xc_cli_opt_long(a, "batch", 4096, 1, 1L << 24, &batch);
    if (!rc) rc = xc_cli_opt_long(a, "window", 8, 1, 1024, &window);
    if (rc) return rc;
    const char *path = a->pos[0];
    const char *producer = xc_cli_opt(a, "producer");
    int quiet = xc_cli_flag(a, "quiet") || a->json;

    xc_client_npy_t npy;
    char why[512];
    rc = xc_client_npy_open(path, &npy, why, sizeof why);
    if (rc < 0) {
        xc_cli_err(a, "%s", why);
        return XC_CLI_FAIL;
    }
    if (npy.d > (1L << 20)) {
        xc_cli_err(a, "%s: d = %ld is implausibly large", path, npy.d);
        xc_client_npy_close(&npy);
        return XC_CLI_FAIL;
    }

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
    o.producer = producer ? producer : "xcoder-push";
    int err;
    xc_client_t *c = xc_client_new(&o, &err);
    if (!c) {
        xc_cli_err(a, "cannot create a client: %s%s", xc_strerror(err),
                   err == XC_EINVAL ? " (producer id longer than 64 bytes?)" : "");
        xc_client_npy_close(&npy);
        return err == XC_EINVAL ? XC_CLI_USAGE : XC_CLI_FAIL;
    }
    xc_cli_trap_signals();
    xc_client_set_cancel_flag(c, &xc_cli_stop);

    size_t row = 2u * (size_t)npy.d * npy.itemsize;
    void *swapbuf = NULL;
    if (npy.swap && !(swapbuf = malloc((size_t)batch * row))) {
        xc_cli_err(a, "out of memory for a %ld-token batch", batch);
        rc = XC_ENOMEM;
        goto out;
    }
    double t0 = mono_s();
    xc_cli_progress_t pg; /* on a terminal: tokens sent of the file's, rate, ETA */
    xc_cli_progress_start(&pg, "xcoder push", "tokens", (double)npy.n_tokens, quiet);
    long sent = 0, nb = 0;
    int out = XC_CLI_OK;
    while (sent < npy.n_tokens) {
        long n = npy.n_tokens - sent < batch ? npy.n_tokens - sent : batch;
        const unsigned char *src = (const unsigned char *)npy.data + (size_t)sent * row;
        if (swapbuf) {
            byteswap_copy(swapbuf, src, (size_t)n * 2u * (size_t)npy.d, npy.itemsize);
            src = swapbuf;
        }
        rc = xc_client_push(c, src, npy.dtype, n, (int)npy.d);
        if (rc < 0) break;
        sent += n;
        nb++;
        xc_cli_progress_update(&pg, (double)sent);
    }
    if (rc == XC_OK) rc = xc_client_flush(c);
    xc_cli_progress_end(&pg);
    if (rc < 0) {
        if (xc_client_last_nack(c, NULL, NULL, NULL) == XC_OK && rc != XC_ETIMEDOUT && rc != XC_EAGAIN) {
            explain_nack(a, c, path, batch, npy.n_tokens);
            out = XC_CLI_FAIL;
        } else if (rc == XC_EAGAIN && xc_cli_stop) {
            xc_cli_err(a, "interrupted after %ld of %ld tokens", sent, npy.n_tokens);
            out = XC_CLI_FAIL;
        } else {
            out = xc_cli_fail(a, c, rc);
        }
        goto out;
    }
    double dt = mono_s() - t0;
    xc_client_push_stats_t st;
    xc_client_push_stats(c, &st);
    if (a->json) {
        xc_buf_t b;
        xc_mpw_t w;
        xc_buf_init(&b);
        xc_mpw_init(&w, &b);
        xc_mpw_map_begin(&w);
        xc_mpw_kv_str(&w, "file", path);
        xc_mpw_kv_uint(&w, "tokens", st.tokens_acked);
        xc_mpw_kv_uint(&w, "batches", st.batches_acked);
        xc_mpw_kv_int(&w, "d", npy.d);
        xc_mpw_kv_str(&w, "dtype", npy.dtype == XC_CLIENT_DTYPE_F16 ? "f16" : "f32");
        xc_mpw_kv_double(&w, "seconds", dt);
        xc_mpw_kv_double(&w, "tokens_per_s", dt > 0 ? (double)st.tokens_acked / dt : 0.0);
        xc_mpw_map_end(&w);
        out = xc_cli_print_mpw(a, &w);
        xc_buf_free(&b);
    } else {
        char b[32];
        printf("pushed %s: %llu tokens in %llu messages (d=%ld, %s) in %.2fs, %s tokens/s\n", path,
               (unsigned long long)st.tokens_acked, (unsigned long long)st.batches_acked, npy.d,
               npy.dtype == XC_CLIENT_DTYPE_F16 ? "float16" : "float32", dt,
               xc_cli_fmt_count(dt > 0 ? (double)st.tokens_acked / dt : 0, b, sizeof b));
    }
out:
    free(swapbuf);
    xc_client_destroy(&c);
    xc_client_npy_close(&npy);
    return rc == XC_ENOMEM ? XC_CLI_FAIL : out;
}
