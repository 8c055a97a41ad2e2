/* xcoder-offline: the CLI's commands that compute with the engine, in a binary
 * of their own so that `xcoder` itself links no engine code (ARCHITECTURE.md,
 * the walls). `xcoder scaling --checkpoint CKPT --data FILE.npy` runs
 *   xcoder-offline scaling --checkpoint CKPT --data FILE.npy [--top N]
 *                  [--min-active N] [--json] [--pretty] [--quiet]
 * Latent Scaling of a checkpoint's dictionary over activations the user
 * supplies (a held-out set, as the paper's compute_scalers), with no daemon: the
 * engine's exact pass (xc_scaling_new / add / result in engine/xc_engine.h), the
 * very code the daemon runs over trained tokens, on an engine whose parameters
 * are the checkpoint's: same threshold-mode encoding, same float64 sums, same
 * beta/nu. */
#include "xc_cli.h"
#include "xc_engine.h"
#include "xc_norm.h"
#include "xc_shm.h"

#include <errno.h>
#include <stdarg.h>
#include <unistd.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK_TOKENS 65536L /* tokens converted and added per call */

/* The checkpoint's crosscoder as an engine (caller destroys), with min_active
 * from --min-active or the checkpoint's stored configuration. NULL after
 * printing why. */
typedef struct {
    const char *ckpt, *data, *min_active;
    long top;
    int json, pretty, quiet;
} off_args_t;

static void oerr(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void oerr(const char *fmt, ...)
{
    va_list ap;
    fputs("xcoder scaling: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* The checkpoint's activation normaliser (xc_norm.h; mode off: none): the
 * data is normalised before the pass, the results converted back. */
static xc_norm_t g_norm;

/* The reference's NormalizableMixin buffers of the file, if it has a
 * normaliser (a non-NaN activation_mean); the mode from the daemon's config
 * metadata (neuron), else global (the reference's keep_relative_variance). */
static void norm_from_ckpt(xc_client_st_t *st, long d)
{
    char why[256];
    int err = 0;
    xc_client_tensor_t t1, t2, t3;
    float *mean = xc_client_st_read_f32(st, "activation_mean", &t1, &err, why, sizeof why);
    float *sd = mean ? xc_client_st_read_f32(st, "activation_std", &t2, &err, why, sizeof why) : NULL;
    float *sc = sd ? xc_client_st_read_f32(st, "activation_global_scale", &t3, &err, why, sizeof why) : NULL;
    xc_norm_init(&g_norm, (int)d, XC_NORM_OFF, 1.0f);
    if (sc && t1.ndim == 2 && t1.shape[0] == 2 && t1.shape[1] == d && t2.ndim == 2 && t2.shape[1] == d &&
        t3.ndim == 1 && t3.shape[0] == 2 && !isnan(mean[0]) && !isnan(sd[0])) {
        const char *cfg = xc_client_value_getstr(xc_client_st_header(st), "__metadata__.config", NULL);
        xc_norm_mode_t mode = cfg && strstr(cfg, "\"normalize\":\"neuron\"") ? XC_NORM_NEURON : XC_NORM_GLOBAL;
        xc_norm_free(&g_norm);
        if (xc_norm_init(&g_norm, (int)d, mode, 1.0f) == XC_OK) xc_norm_restore(&g_norm, mean, sd, sc);
    }
    free(mean);
    free(sd);
    free(sc);
}

static xc_engine_t *engine_from_ckpt(const char *path, double min_active, long *step)
{
    char why[512] = "";
    int err = 0;
    xc_client_st_t *st = xc_client_st_open(path, &err, why, sizeof why);
    xc_engine_t *e = NULL;
    float *enc = NULL, *benc = NULL, *dec = NULL, *bdec = NULL, *th = NULL;
    xc_client_tensor_t te, tbe, td, tbd, tt;
    if (!st) {
        oerr("%s", why);
        return NULL;
    }
    enc = xc_client_st_read_f32(st, "encoder.weight", &te, &err, why, sizeof why);
    if (enc) benc = xc_client_st_read_f32(st, "encoder.bias", &tbe, &err, why, sizeof why);
    if (benc) dec = xc_client_st_read_f32(st, "decoder.weight", &td, &err, why, sizeof why);
    if (dec) bdec = xc_client_st_read_f32(st, "decoder.bias", &tbd, &err, why, sizeof why);
    if (!bdec) {
        oerr("%s: %s (a model file of xcoderd, or the reference BatchTopKCrossCoder/CrossCoder state dict, "
                   "is needed)", path, why);
        goto out;
    }
    if (te.ndim != 3 || te.shape[0] != 2 || td.ndim != 3 || td.shape[0] != 2 || td.shape[1] != te.shape[2] ||
        td.shape[2] != te.shape[1] || tbe.ndim != 1 || tbe.shape[0] != te.shape[2] || tbd.ndim != 2 ||
        tbd.shape[1] != te.shape[1]) {
        oerr("%s: encoder/decoder shapes are not the reference layout [2, d, F] / [2, F, d]", path);
        goto out;
    }
    long d = te.shape[1], F = te.shape[2];
    th = xc_client_st_read_f32(st, "threshold", &tt, &err, why, sizeof why); /* BatchTopK only */
    /* only the shape, the model kind, min_active and the pass's chunking matter
     * here; the training keys get valid placeholders (nothing is trained) */
    xc_engine_config_t c;
    memset(&c, 0, sizeof c);
    c.model = th ? XC_MODEL_BATCHTOPK : XC_MODEL_L1;
    c.lr = 1e-4f;
    c.dead_tokens = 1;
    c.init_norm = 1.0f;
    c.loss = XC_LOSS_L2;
    c.adam_beta1 = 0.9f;
    c.adam_beta2 = 0.999f;
    c.adam_eps = 1e-8f;
    c.stats_half_life = 1e6;
    c.scaling_half_life = 1e6;
    c.d = (int)d;
    c.dict_size = (int)F;
    c.k = 1;
    c.batch_size = 512; /* the pass encodes in chunks of min(batch_size, 512) tokens */
    c.threads = 0;
    c.scaling_running = 0;
    if (min_active < 0) { /* the daemon's setting, stored with the checkpoint */
        const char *cfg = xc_client_value_getstr(xc_client_st_header(st), "__metadata__.config", NULL);
        const char *k = cfg ? strstr(cfg, "\"scaling_min_active\":") : NULL;
        min_active = k ? strtod(k + strlen("\"scaling_min_active\":"), NULL) : 20;
    }
    c.scaling_min_active = min_active;
    /* the code normalisation of the file (threshold mode scores u s_j with it) */
    xc_client_tensor_t tcn;
    int64_t cn = 1;
    if (xc_client_st_tensor(st, "code_normalization_id", &tcn, why, sizeof why) == 0 && !strcmp(tcn.dtype, "I64") &&
        tcn.count == 1)
        memcpy(&cn, tcn.data, sizeof cn);
    if (cn < 1 || cn > 5) {
        oerr("%s: code_normalization_id %lld is not a CodeNormalization value (1-5)", path, (long long)cn);
        goto out;
    }
    c.code_norm = (xc_code_norm_t)(cn - 1);
    const char *as = xc_client_value_getstr(xc_client_st_header(st), "__metadata__.code_normalization_alpha_sae", NULL);
    const char *ac = xc_client_value_getstr(xc_client_st_header(st), "__metadata__.code_normalization_alpha_cc", NULL);
    c.code_alpha_sae = as ? (float)strtod(as, NULL) : 1.0f;
    c.code_alpha_cc = ac ? (float)strtod(ac, NULL) : 0.1f;
    const char *ms = xc_client_value_getstr(xc_client_st_header(st), "__metadata__.step", NULL);
    *step = ms ? atol(ms) : -1;
    e = xc_engine_new(&c, &err);
    if (!e) {
        oerr("cannot build the model (d = %ld, dict_size = %ld): %s", d, F, xc_strerror(err));
        goto out;
    }
    /* reference layout -> the engine's rows: w[j][m][i] = enc[m][i][j], dec[m][j][i] */
    xc_engine_params_t p;
    xc_engine_params(e, &p);
    for (long j = 0; j < F; j++)
        for (int m = 0; m < 2; m++)
            for (long i = 0; i < d; i++) {
                p.w_enc[(size_t)j * 2 * d + (size_t)m * d + i] = enc[((size_t)m * d + i) * F + j];
                p.w_dec[(size_t)j * 2 * d + (size_t)m * d + i] = dec[((size_t)m * F + j) * d + i];
            }
    memcpy(p.b_enc, benc, sizeof(float) * (size_t)F);
    memcpy(p.b_dec, bdec, sizeof(float) * 2 * (size_t)d);
    xc_engine_params_changed(e);
    if (th) xc_engine_set_theta(e, th[0]);
    norm_from_ckpt(st, d);
out:
    free(enc);
    free(benc);
    free(dec);
    free(bdec);
    free(th);
    xc_client_st_close(&st);
    return e;
}

/* Rows [at, at+n) of the .npy file as float32 [n, 2, d] into buf. */
static void rows_f32(const xc_client_npy_t *npy, long at, long n, float *buf)
{
    size_t cnt = (size_t)n * 2u * (size_t)npy->d;
    const unsigned char *src = (const unsigned char *)npy->data + (size_t)at * 2u * (size_t)npy->d * npy->itemsize;
    for (size_t i = 0; i < cnt; i++) {
        unsigned char b[4];
        memcpy(b, src + i * npy->itemsize, npy->itemsize);
        if (npy->swap)
            for (size_t q = 0; q < npy->itemsize / 2; q++) {
                unsigned char t = b[q];
                b[q] = b[npy->itemsize - 1 - q];
                b[npy->itemsize - 1 - q] = t;
            }
        if (npy->itemsize == 4) memcpy(&buf[i], b, 4);
        else {
            uint16_t h;
            memcpy(&h, b, 2);
            buf[i] = xc_f16_to_f32(h);
        }
    }
}

static const xc_scaling_stats_t *g_res; /* qsort has no context argument in C11 */

static int by_active_desc(const void *x, const void *y)
{
    long i = *(const long *)x, j = *(const long *)y;
    double a = g_res[i].active, b = g_res[j].active;
    if (a != b) return a < b ? 1 : -1;
    return i < j ? -1 : 1;
}

static int scaling_offline(const off_args_t *a)
{
    const char *ckpt = a->ckpt, *data = a->data;
    long top = a->top, step = -1;
    double min_active = -1;
    int rc;
    if (a->min_active) {
        char *end;
        errno = 0;
        min_active = strtod(a->min_active, &end);
        if (errno || end == a->min_active || *end || !(min_active >= 0)) {
            oerr("--min-active: '%s' is not a number >= 0", a->min_active);
            return XC_CLI_USAGE;
        }
    }
    char why[768];
    xc_client_npy_t npy;
    memset(&npy, 0, sizeof npy);
    if (xc_client_npy_open(data, &npy, why, sizeof why) != XC_OK) {
        oerr("%s", why);
        return XC_CLI_FAIL;
    }
    int out = XC_CLI_FAIL;
    float *buf = NULL;
    xc_scaling_stats_t *res = NULL;
    xc_scaling_t *s = NULL;
    xc_engine_t *e = engine_from_ckpt(ckpt, min_active, &step);
    if (!e) goto out;
    const xc_engine_config_t *c = xc_engine_config(e);
    if (npy.d != c->d) {
        oerr("%s has d = %ld, the checkpoint's d is %d", data, npy.d, c->d);
        goto out;
    }
    long chunk = npy.n_tokens < CHUNK_TOKENS ? npy.n_tokens : CHUNK_TOKENS;
    int e_rc = 0;
    buf = malloc(sizeof(float) * (size_t)chunk * 2u * (size_t)npy.d);
    res = calloc((size_t)c->dict_size, sizeof *res);
    s = buf && res ? xc_scaling_new(e, &e_rc) : NULL;
    if (!s) {
        oerr("out of memory for the pass (dict_size %d)", c->dict_size);
        goto out;
    }
    xc_cli_progress_t pg;
    xc_cli_progress_start(&pg, "exact Latent Scaling", "tokens", (double)npy.n_tokens, a->quiet);
    for (long at = 0; at < npy.n_tokens; at += chunk) {
        long n = npy.n_tokens - at < chunk ? npy.n_tokens - at : chunk;
        rows_f32(&npy, at, n, buf);
        xc_norm_apply(&g_norm, buf, n); /* the units the dictionary was trained in */
        if ((rc = xc_scaling_add(s, buf, n)) != XC_OK) {
            xc_cli_progress_end(&pg);
            oerr("exact pass failed: %s", xc_strerror(rc));
            goto out;
        }
        xc_cli_progress_update(&pg, (double)(at + n));
    }
    xc_cli_progress_end(&pg);
    xc_scaling_result(s, res);
    const char *units = xc_norm_scaling_to_original(&g_norm, res, c->dict_size) || !g_norm.ready ? "original" : "normalised";

    /* chat-only / chat-specific with the default thresholds, from the decoder */
    xc_class_thresholds_t th;
    xc_class_thresholds_default(&th);
    xc_engine_params_t p;
    xc_engine_params(e, &p);
    long F = c->dict_size, d = c->d, n_chat = 0, n_spec = 0, n_def = 0;
    float *delta = malloc(sizeof(float) * (size_t)F);
    if (!delta) goto out;
    for (long j = 0; j < F; j++) {
        const float *row = p.w_dec + (size_t)j * 2 * d;
        double nb = 0, nc = 0;
        for (long i = 0; i < d; i++) {
            nb += (double)row[i] * row[i];
            nc += (double)row[d + i] * row[d + i];
        }
        nb = sqrt(nb), nc = sqrt(nc);
        double mx = nb > nc ? nb : nc;
        delta[j] = mx > 0 ? (float)(0.5 * ((nc - nb) / mx + 1)) : 0.5f;
        n_chat += delta[j] >= th.chat_only_min;
        n_spec += xc_latent_chat_specific(delta[j], res[j].nu_err, res[j].nu_rec, &th);
        n_def += isfinite(res[j].nu_err);
    }
    if (a->json) {
        xc_buf_t b;
        xc_mpw_t w;
        xc_buf_init(&b);
        xc_mpw_init(&w, &b);
        xc_mpw_map_begin(&w);
        xc_mpw_kv_str(&w, "checkpoint", ckpt);
        xc_mpw_kv_str(&w, "data", data);
        xc_mpw_kv_int(&w, "step", step);
        xc_mpw_kv_uint(&w, "tokens", xc_scaling_tokens(s));
        xc_mpw_kv_int(&w, "dict_size", F);
        xc_mpw_kv_str(&w, "units", units);
        xc_mpw_kv_double(&w, "min_active", c->scaling_min_active);
        xc_mpw_kv_int(&w, "chat_only", n_chat);
        xc_mpw_kv_int(&w, "chat_specific", n_spec);
        static const char *const keys[] = {"beta_err_base", "beta_err_chat", "beta_rec_base", "beta_rec_chat",
                                           "nu_err", "nu_rec", "active", "delta_norm"};
        for (int k = 0; k < 8; k++) {
            xc_mpw_str(&w, keys[k]);
            xc_mpw_array_begin(&w);
            for (long j = 0; j < F; j++) {
                const xc_scaling_stats_t *r = &res[j];
                double v = k < 2 ? r->beta_err[k] : k < 4 ? r->beta_rec[k - 2] : k == 4 ? r->nu_err
                           : k == 5 ? r->nu_rec : k == 6 ? r->active : delta[j];
                if (isfinite(v)) xc_mpw_double(&w, v);
                else xc_mpw_nil(&w);
            }
            xc_mpw_array_end(&w);
        }
        xc_mpw_map_end(&w);
        int prc = xc_mpw_finish(&w);
        xc_client_value_t *v = prc < 0 ? NULL : xc_client_value_parse(b.data, b.len, &prc);
        if (v && xc_client_value_print_json(stdout, v, a->pretty) == 0) out = XC_CLI_OK;
        else oerr("cannot write JSON: %s", xc_strerror(prc));
        fflush(stdout);
        xc_client_value_free(&v);
        xc_buf_free(&b);
    } else {
        printf("exact Latent Scaling of %s (step %ld) over %s: %llu tokens, d=%ld, %ld latents\n", ckpt, step, data,
               (unsigned long long)xc_scaling_tokens(s), d, F);
        printf("  betas and ν in %s units%s\n", units,
               g_norm.ready ? " (the checkpoint's activation normaliser applied to the data first)" : "");
        printf("  ν defined for %ld latents (at least %g activations); chat-only %ld, chat-specific %ld "
               "(ν^ε < %.2f and ν^r < %.2f)\n", n_def, c->scaling_min_active, n_chat, n_spec, th.nu_err_max,
               th.nu_rec_max);
        long *order = malloc(sizeof(long) * (size_t)(n_chat > 0 ? n_chat : 1)), no = 0;
        for (long j = 0; order && j < F; j++)
            if (delta[j] >= th.chat_only_min) order[no++] = j;
        g_res = res;
        if (order) qsort(order, (size_t)no, sizeof *order, by_active_desc);
        if (no > top) no = top;
        if (no > 0) printf("  the %ld most active chat-only latents:\n  %7s %7s %9s %9s %9s %9s %10s\n", no, "latent",
                           "Δnorm", "ν^ε", "ν^r", "β^ε_chat", "β^r_chat", "active");
        for (long q = 0; q < no; q++) {
            const xc_scaling_stats_t *r = &res[order[q]];
            printf("  %7ld %7.3f %9.4f %9.4f %9.4f %9.4f %10.0f\n", order[q], delta[order[q]], r->nu_err, r->nu_rec,
                   r->beta_err[1], r->beta_rec[1], r->active);
        }
        free(order);
        out = XC_CLI_OK;
    }
    free(delta);
out:
    xc_scaling_destroy(&s);
    free(res);
    free(buf);
    xc_engine_destroy(&e);
    xc_norm_free(&g_norm);
    xc_client_npy_close(&npy);
    return out;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: xcoder-offline scaling --checkpoint CKPT --data FILE.npy [--top N] [--min-active N]\n"
               "                      [--json] [--pretty] [--quiet]\n"
               "The offline, computing commands of xcoder (run by `xcoder scaling --checkpoint ...`).\n");
}

int main(int argc, char **argv)
{
    off_args_t a = {NULL, NULL, NULL, 10, 0, 0, 0};
    if (argc < 2 || strcmp(argv[1], "scaling") != 0) {
        usage(stderr);
        return XC_CLI_USAGE;
    }
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "--json") || !strcmp(o, "-j")) a.json = 1;
        else if (!strcmp(o, "--pretty")) a.pretty = a.json = 1;
        else if (!strcmp(o, "--quiet")) a.quiet = 1;
        else if (!strcmp(o, "-h") || !strcmp(o, "--help")) {
            usage(stdout);
            return XC_CLI_OK;
        } else if (v && !strcmp(o, "--checkpoint")) a.ckpt = argv[++i];
        else if (v && !strcmp(o, "--data")) a.data = argv[++i];
        else if (v && !strcmp(o, "--min-active")) a.min_active = argv[++i];
        else if (v && (!strcmp(o, "--top") || !strcmp(o, "-n"))) {
            char *end;
            a.top = strtol(argv[++i], &end, 10);
            if (*end || a.top < 0) {
                oerr("--top: '%s' is not a count", argv[i]);
                return XC_CLI_USAGE;
            }
        } else {
            oerr("unknown or incomplete option '%s'", o);
            return XC_CLI_USAGE;
        }
    }
    if (!a.ckpt || !a.data) {
        oerr("offline Latent Scaling needs both --checkpoint FILE and --data FILE.npy");
        return XC_CLI_USAGE;
    }
    return scaling_offline(&a);
}
