/* `xcoder report`: reads a checkpoint's decoder and tells what the crosscoder
 * learned: latents by relative decoder norm class (chat-only Δ >= 0.9,
 * base-only Δ <= 0.1, shared 0.4 <= Δ < 0.6), the top chat-only latents, and,
 * for runs fed by `xcoder synth` (or when asked), how well its planted
 * features (same seed and shape options) were recovered (xc_synth_match: best
 * decoder cosine per feature). It reads the daemon's newest checkpoint and
 * writes one only when asked (--new-checkpoint). */
#include "xc_cli.h"
#include "xc_synth.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RECOVERED_COS 0.9 /* a planted feature counts as recovered at this cosine */

/* Per-latent facts the report needs. */
typedef struct {
    float delta, cosine, norm_b, norm_c;
    double freq;     /* firing frequency, NaN when unknown (offline) */
    int dead;        /* from the daemon; offline: zero decoder row */
    int planted;     /* index of the planted feature it best matches, -1 none */
    float planted_cos;
} lat_t;

/* Finds the decoder in a checkpoint and returns it as (F, 2, d) float32 (caller
 * frees). Accepts the reference layout (2, F, d) ("decoder.weight") and the
 * engine's (F, 2, d) / (F, 2d). */
static float *load_decoder(const xc_cli_args_t *a, xc_client_st_t *st, const char *path, long *F, long *d)
{
    static const char *const names[] = {"decoder.weight", "W_dec", "w_dec", "decoder", NULL};
    char why[512] = "";
    xc_client_tensor_t t;
    int err = 0;
    float *w = NULL;
    const char *name = NULL;
    for (int i = 0; names[i] && !w; i++) {
        w = xc_client_st_read_f32(st, names[i], &t, &err, why, sizeof why);
        if (w) name = names[i];
        else if (err != XC_ENOTFOUND) break;
    }
    if (!w) {
        if (err == XC_ENOTFOUND)
            xc_cli_err(a, "%s has no decoder tensor (looked for decoder.weight, W_dec); is it an xcoderd checkpoint?", path);
        else
            xc_cli_err(a, "%s: %s", path, why);
        return NULL;
    }
    if (t.ndim == 3 && t.shape[0] == 2 && t.shape[1] != 2) { /* (2, F, d) -> (F, 2, d) */
        *F = t.shape[1];
        *d = t.shape[2];
        float *r = malloc(t.count * sizeof *r);
        if (!r) {
            free(w);
            xc_cli_err(a, "out of memory");
            return NULL;
        }
        for (long j = 0; j < *F; j++)
            for (int m = 0; m < 2; m++)
                memcpy(r + ((size_t)j * 2 + (size_t)m) * (size_t)*d, w + ((size_t)m * (size_t)*F + (size_t)j) * (size_t)*d,
                       (size_t)*d * sizeof *r);
        free(w);
        return r;
    }
    if (t.ndim == 3 && t.shape[1] == 2) {
        *F = t.shape[0];
        *d = t.shape[2];
        return w;
    }
    if (t.ndim == 2 && t.shape[1] % 2 == 0) {
        *F = t.shape[0];
        *d = t.shape[1] / 2;
        return w;
    }
    xc_cli_err(a, "%s: tensor '%s' has an unexpected shape (ndim %d); expected (2, F, d) or (F, 2, d)", path, name,
               t.ndim);
    free(w);
    return NULL;
}

/* Fills freq/dead from the daemon's `top` (all latents). 0 or an exit code. */
static int fetch_stats(const xc_cli_args_t *a, xc_client_t *c, lat_t *lat, long F)
{
    xc_client_value_t *r = NULL;
    int rc = xc_client_top(c, "freq", F, 0, 0, &r);
    if (rc < 0) return xc_cli_fail(a, c, rc);
    const xc_client_value_t *l = xc_client_value_get(r, "latents");
    for (size_t i = 0; l && l->type == XC_VAL_ARRAY && i < l->u.a.n; i++) {
        const xc_client_value_t *m = &l->u.a.items[i];
        double j = xc_client_value_getnum(m, "j", -1);
        if (!(j >= 0 && j < F)) continue;
        lat[(long)j].freq = xc_client_value_getnum(m, "freq", NAN);
        const xc_client_value_t *dead = xc_client_value_get(m, "dead");
        lat[(long)j].dead = dead && dead->type == XC_VAL_BOOL && dead->u.b;
    }
    xc_client_value_free(&r);
    return XC_CLI_OK;
}

/* The daemon's newest model checkpoint, as a local path (caller frees). NULL
 * after printing why: none written yet, or not readable from this machine. */
static char *newest_checkpoint(const xc_cli_args_t *a, xc_client_t *c, long *step)
{
    xc_client_value_t *r = NULL, *cf = NULL;
    char *path = NULL;
    int rc = xc_client_request(c, "checkpoints", NULL, 0, &r);
    if (rc == XC_OK) rc = xc_client_config(c, "state_dir", &cf);
    if (rc < 0) {
        xc_cli_fail(a, c, rc);
        goto out;
    }
    const xc_client_value_t *l = xc_client_value_get(r, "checkpoints");
    const char *best = NULL;
    double best_step = -1, best_mtime = -1;
    for (size_t i = 0; l && l->type == XC_VAL_ARRAY && i < l->u.a.n; i++) {
        const xc_client_value_t *m = &l->u.a.items[i];
        const char *kind = xc_client_value_getstr(m, "kind", "");
        double st = xc_client_value_getnum(m, "step", -1), mt = xc_client_value_getnum(m, "mtime", 0);
        if (strcmp(kind, "checkpoint") != 0) continue; /* the model file of a pair */
        if (st > best_step || (st == best_step && mt > best_mtime)) {
            best = xc_client_value_getstr(m, "name", NULL);
            best_step = st;
            best_mtime = mt;
        }
    }
    const char *dir = xc_client_value_getstr(cf, "config.state_dir", NULL);
    if (!best) {
        xc_cli_err(a, "the daemon has written no checkpoint yet: run `xcoder checkpoint` first, or `xcoder report "
                   "--new-checkpoint` to have one written now");
        goto out;
    }
    size_t n = (dir ? strlen(dir) : 0) + strlen(best) + 2;
    path = malloc(n);
    if (!path) goto out;
    snprintf(path, n, "%s/%s", dir ? dir : ".", best);
    FILE *f = fopen(path, "rb");
    if (!f) {
        xc_cli_err(a, "the newest checkpoint %s cannot be read from here: fetch it (xcoder fetch %s) and pass "
                   "--checkpoint FILE", path, best);
        free(path);
        path = NULL;
        goto out;
    }
    fclose(f);
    *step = (long)best_step;
out:
    xc_client_value_free(&r);
    xc_client_value_free(&cf);
    return path;
}

/* Whether every token of this run came from `xcoder synth` (its producer id),
 * by the daemon's status: then the planted-feature section means something. */
static int fed_by_synth(xc_client_t *c)
{
    xc_client_value_t *st = NULL;
    if (xc_client_status(c, &st) < 0) return 0;
    const xc_client_value_t *p = xc_client_value_get(st, "producers");
    int n = 0, synth = 0;
    for (size_t i = 0; p && p->type == XC_VAL_MAP && i < p->u.m.n; i++, n++) {
        const xc_client_value_t *k = &p->u.m.kv[2 * i];
        synth += k->type == XC_VAL_STR && k->u.s.len == strlen("xcoder-synth") &&
                 !strncmp(k->u.s.ptr, "xcoder-synth", k->u.s.len);
    }
    xc_client_value_free(&st);
    return n > 0 && synth == n;
}

/* Any planted-feature option on the command line asks for the section. */
static int synth_asked(const xc_cli_args_t *a)
{
    static const char *const o[] = {"synthetic", "seed", "shared", "chat-only", "base-only", "shrunk", "shared-cos",
                                    "shrunk-scale", "shrunk-cos", "mean-active", "prob-exponent", "max-prob", "noise",
                                    "bias-norm", NULL};
    for (int i = 0; o[i]; i++)
        if (xc_cli_opt(a, o[i])) return 1;
    return 0;
}

static const lat_t *g_sort_lat; /* qsort has no context argument in C11 */

static int by_chat_rank(const void *x, const void *y)
{
    const lat_t *a = &g_sort_lat[*(const long *)x], *b = &g_sort_lat[*(const long *)y];
    double ka = isfinite(a->freq) ? a->freq : a->norm_c, kb = isfinite(b->freq) ? b->freq : b->norm_c;
    if (ka != kb) return ka < kb ? 1 : -1;
    return *(const long *)x < *(const long *)y ? -1 : 1;
}

int xc_cli_cmd_report(xc_cli_args_t *a)
{
    long top_n, d_opt;
    int rc = xc_cli_opt_long(a, "top", 10, 0, 1L << 30, &top_n);
    if (!rc) rc = xc_cli_opt_long(a, "d", 0, 1, 1 << 20, &d_opt);
    if (rc) return rc;
    int offline = xc_cli_flag(a, "offline");
    const char *ckpt = xc_cli_opt(a, "checkpoint");
    if (offline && !ckpt) {
        xc_cli_err(a, "--offline needs --checkpoint FILE");
        return XC_CLI_USAGE;
    }
    int out = XC_CLI_OK;
    xc_client_t *c = NULL;
    xc_client_value_t *ck = NULL;
    xc_client_st_t *st = NULL;
    float *w = NULL;
    lat_t *lat = NULL;
    long *order = NULL;
    xc_synth_t *s = NULL;
    xc_synth_match_t *match = NULL;
    char *newest = NULL;
    long F = 0, d = 0, step = -1;
    int show_synth = synth_asked(a);

    if (!offline) {
        c = xc_cli_client(a, 0);
        if (!c) return XC_CLI_FAIL;
        if (!show_synth) show_synth = fed_by_synth(c);
    }
    if (!ckpt && !xc_cli_flag(a, "new-checkpoint")) {
        newest = newest_checkpoint(a, c, &step);
        if (!newest) {
            out = XC_CLI_FAIL;
            goto out;
        }
        ckpt = newest;
    }
    if (!ckpt) {
        if (a->timeout_s > 0 && a->timeout_s < 120) xc_client_set_timeout(c, 120000);
        rc = xc_client_checkpoint(c, &ck);
        if (rc < 0) {
            out = xc_cli_fail(a, c, rc);
            goto out;
        }
        ckpt = xc_client_value_getstr(ck, "path", NULL);
        step = (long)xc_client_value_getnum(ck, "step", -1);
        if (!ckpt) {
            xc_cli_err(a, "the daemon's checkpoint reply has no path");
            out = XC_CLI_FAIL;
            goto out;
        }
        xc_client_set_timeout(c, xc_cli_timeout_ms(a));
    }
    char why[512];
    int err;
    st = xc_client_st_open(ckpt, &err, why, sizeof why);
    if (!st) {
        xc_cli_err(a, "%s", why);
        out = XC_CLI_FAIL;
        goto out;
    }
    if (step < 0) {
        const char *ms = xc_client_value_getstr(xc_client_st_header(st), "__metadata__.step", NULL);
        if (ms) step = atol(ms);
    }
    w = load_decoder(a, st, ckpt, &F, &d);
    if (!w) {
        out = XC_CLI_FAIL;
        goto out;
    }
    if (d_opt && d_opt != d) {
        xc_cli_err(a, "--d %ld does not match the checkpoint's d = %ld", d_opt, d);
        out = XC_CLI_USAGE;
        goto out;
    }
    lat = calloc((size_t)F, sizeof *lat);
    order = calloc((size_t)F, sizeof *order);
    if (!lat || !order) {
        xc_cli_err(a, "out of memory for %ld latents", F);
        out = XC_CLI_FAIL;
        goto out;
    }
    for (long j = 0; j < F; j++) {
        const float *row = w + (size_t)j * 2u * (size_t)d;
        double nb = 0, nc = 0, dot = 0;
        for (long i = 0; i < d; i++) {
            nb += (double)row[i] * row[i];
            nc += (double)row[d + i] * row[d + i];
            dot += (double)row[i] * row[d + i];
        }
        lat[j].norm_b = (float)sqrt(nb);
        lat[j].norm_c = (float)sqrt(nc);
        lat[j].cosine = nb > 0 && nc > 0 ? (float)(dot / sqrt(nb * nc)) : 0.0f;
        lat[j].delta = xc_synth_delta_norm(row, (int)d);
        lat[j].freq = NAN;
        lat[j].dead = nb == 0 && nc == 0;
        lat[j].planted = -1;
    }
    if (!offline && (out = fetch_stats(a, c, lat, F)) != XC_CLI_OK) goto out;

    /* planted features: rebuild the generator and match (synthetic runs only) */
    xc_synth_config_t scfg;
    if ((out = xc_cli_synth_config(a, (int)d, &scfg)) != XC_CLI_OK) goto out;
    int nf = 0;
    if (show_synth) {
        s = xc_synth_new(&scfg, &err);
        if (!s) {
            xc_cli_err(a, "cannot rebuild the planted features: %s", xc_strerror(err));
            out = XC_CLI_FAIL;
            goto out;
        }
        nf = xc_synth_n_features(s);
    }
    match = calloc((size_t)(nf > 0 ? nf : 1), sizeof *match);
    if (!match || (s && xc_synth_match(s, w, (int)F, match) != XC_OK)) {
        xc_cli_err(a, "matching the decoder against the planted features failed");
        out = XC_CLI_FAIL;
        goto out;
    }
    for (int i = 0; i < nf; i++) {
        int j = match[i].latent;
        if (j >= 0 && j < F && match[i].cosine > lat[j].planted_cos) {
            lat[j].planted = i;
            lat[j].planted_cos = match[i].cosine;
        }
    }

    /* classes over alive latents */
    long alive = 0, n_chat = 0, n_base = 0, n_shared = 0, n_order = 0;
    for (long j = 0; j < F; j++) {
        if (lat[j].dead) continue;
        alive++;
        float dn = lat[j].delta;
        if (dn >= 0.9f) {
            n_chat++;
            order[n_order++] = j;
        }
        n_base += dn <= 0.1f;
        n_shared += dn >= 0.4f && dn < 0.6f;
    }
    g_sort_lat = lat;
    qsort(order, (size_t)n_order, sizeof *order, by_chat_rank);
    if (top_n > n_order) top_n = n_order;

    /* recovery per kind */
    enum { NK = 4 };
    int kn[NK] = {0}, krec[NK] = {0}, kclass[NK] = {0};
    double kcos[NK] = {0}, kdelta[NK] = {0};
    for (int i = 0; i < nf; i++) {
        xc_synth_feature_t f;
        xc_synth_feature(s, i, &f);
        int k = (int)f.kind;
        if (k < 0 || k >= NK) continue;
        kn[k]++;
        kcos[k] += match[i].cosine;
        kdelta[k] += match[i].delta_norm;
        krec[k] += match[i].cosine >= RECOVERED_COS;
        float dn = match[i].delta_norm;
        kclass[k] += k == XC_SYNTH_CHAT_ONLY ? dn >= 0.9f
                     : k == XC_SYNTH_BASE_ONLY ? dn <= 0.1f
                     : k == XC_SYNTH_SHARED ? (dn >= 0.4f && dn < 0.6f)
                                            : 0;
    }
    int tot_rec = krec[0] + krec[1] + krec[2] + krec[3];

    if (a->json) {
        xc_buf_t b;
        xc_mpw_t mw;
        xc_buf_init(&b);
        xc_mpw_init(&mw, &b);
        xc_mpw_map_begin(&mw);
        xc_mpw_kv_str(&mw, "checkpoint", ckpt);
        xc_mpw_kv_int(&mw, "step", step);
        xc_mpw_kv_int(&mw, "d", d);
        xc_mpw_kv_int(&mw, "dict_size", F);
        xc_mpw_kv_int(&mw, "alive", alive);
        xc_mpw_kv_bool(&mw, "have_stats", !offline);
        xc_mpw_str(&mw, "classes");
        xc_mpw_map_begin(&mw);
        xc_mpw_kv_int(&mw, "chat_only", n_chat);
        xc_mpw_kv_int(&mw, "base_only", n_base);
        xc_mpw_kv_int(&mw, "shared", n_shared);
        xc_mpw_kv_int(&mw, "other", alive - n_chat - n_base - n_shared);
        xc_mpw_map_end(&mw);
        xc_mpw_str(&mw, "top_chat_only");
        xc_mpw_array_begin(&mw);
        for (long i = 0; i < top_n; i++) {
            const lat_t *l = &lat[order[i]];
            xc_mpw_map_begin(&mw);
            xc_mpw_kv_int(&mw, "j", order[i]);
            xc_mpw_kv_double(&mw, "delta_norm", l->delta);
            xc_mpw_kv_double(&mw, "norm_chat", l->norm_c);
            xc_mpw_kv_double(&mw, "norm_base", l->norm_b);
            if (isfinite(l->freq)) xc_mpw_kv_double(&mw, "freq", l->freq);
            else xc_mpw_kv_nil(&mw, "freq");
            if (l->planted >= 0) {
                xc_synth_feature_t f;
                xc_synth_feature(s, l->planted, &f);
                xc_mpw_kv_int(&mw, "planted", l->planted);
                xc_mpw_kv_str(&mw, "planted_kind", xc_synth_kind_name(f.kind));
                xc_mpw_kv_double(&mw, "planted_cos", l->planted_cos);
            } else {
                xc_mpw_kv_nil(&mw, "planted");
            }
            xc_mpw_map_end(&mw);
        }
        xc_mpw_array_end(&mw);
        xc_mpw_kv_bool(&mw, "synthetic", s != NULL);
        if (!s) {
            xc_mpw_map_end(&mw);
            out = xc_cli_print_mpw(a, &mw);
            xc_buf_free(&b);
            goto out;
        }
        xc_mpw_str(&mw, "recovery");
        xc_mpw_map_begin(&mw);
        xc_mpw_kv_double(&mw, "threshold_cos", RECOVERED_COS);
        xc_mpw_kv_int(&mw, "features", nf);
        xc_mpw_kv_int(&mw, "recovered", tot_rec);
        for (int k = 0; k < NK; k++) {
            if (!kn[k]) continue;
            xc_mpw_str(&mw, xc_synth_kind_name(k));
            xc_mpw_map_begin(&mw);
            xc_mpw_kv_int(&mw, "features", kn[k]);
            xc_mpw_kv_int(&mw, "recovered", krec[k]);
            xc_mpw_kv_double(&mw, "mean_cos", kcos[k] / kn[k]);
            xc_mpw_kv_double(&mw, "mean_delta_norm", kdelta[k] / kn[k]);
            if (k != XC_SYNTH_SHRUNK) xc_mpw_kv_int(&mw, "in_class", kclass[k]);
            xc_mpw_map_end(&mw);
        }
        xc_mpw_map_end(&mw);
        xc_mpw_map_end(&mw);
        out = xc_cli_print_mpw(a, &mw);
        xc_buf_free(&b);
        goto out;
    }

    printf("report on %s (step %ld): d=%ld, %ld latents, %ld alive%s\n\n", ckpt, step, d, F, alive,
           offline ? " (offline: no firing statistics; zero rows count as dead)" : "");
    printf("latents by relative decoder norm Δ (alive only)\n");
    printf("  chat-only  (Δ ≥ 0.9)        %6ld  %5.1f%%\n", n_chat, alive ? 100.0 * n_chat / alive : 0);
    printf("  base-only  (Δ ≤ 0.1)        %6ld  %5.1f%%\n", n_base, alive ? 100.0 * n_base / alive : 0);
    printf("  shared     (0.4 ≤ Δ < 0.6)  %6ld  %5.1f%%\n", n_shared, alive ? 100.0 * n_shared / alive : 0);
    printf("  other                       %6ld  %5.1f%%\n\n", alive - n_chat - n_base - n_shared,
           alive ? 100.0 * (alive - n_chat - n_base - n_shared) / alive : 0);
    if (top_n > 0) {
        printf("top %ld chat-only latents (by %s)\n", top_n, offline ? "chat decoder norm" : "firing frequency");
        printf("  %7s  Δnorm %9s %8s %8s%s\n", "latent", "freq", "norm_c", "norm_b", s ? "  planted feature (cos)" : "");
        for (long i = 0; i < top_n; i++) {
            const lat_t *l = &lat[order[i]];
            char pf[64] = "-";
            if (l->planted >= 0) {
                xc_synth_feature_t f;
                xc_synth_feature(s, l->planted, &f);
                snprintf(pf, sizeof pf, "#%d %s (%.3f)", l->planted, xc_synth_kind_name(f.kind), l->planted_cos);
            }
            printf("  %7ld %6.3f %9.2e %8.3g %8.3g%s%s\n", order[i], l->delta, l->freq, l->norm_c, l->norm_b,
                   s ? "  " : "", s ? pf : "");
        }
        printf("\n");
        if (c && top_n > 0) { /* what they mean: the contexts that activate them most */
            printf("examples of the top %ld chat-only latents (activation, stream doc:position, context)\n",
                   top_n < 5 ? top_n : 5);
            for (long i = 0; i < top_n && i < 5; i++) {
                printf("  latent %ld\n", order[i]);
                xc_cli_print_examples(stdout, c, order[i], 3, 1, "    ");
            }
            printf("\n");
        }
    }
    if (!s) {
        if (!offline) printf("(the planted-feature section is for runs fed by `xcoder synth`; --synthetic shows it)\n");
        goto out;
    }
    printf("planted features recovered (best decoder cosine ≥ %.2f), seed %llu\n", RECOVERED_COS,
           (unsigned long long)scfg.seed);
    printf("  %-10s %8s %10s %9s mean Δnorm   Δ in class\n", "kind", "features", "recovered", "mean cos");
    for (int k = 0; k < NK; k++) {
        if (!kn[k]) continue;
        char cls[32] = "";
        if (k != XC_SYNTH_SHRUNK) snprintf(cls, sizeof cls, "%d/%d", kclass[k], kn[k]);
        printf("  %-10s %8d %10d %9.3f %10.3f   %s\n", xc_synth_kind_name(k), kn[k], krec[k], kcos[k] / kn[k],
               kdelta[k] / kn[k], cls);
    }
    printf("  %-10s %8d %10d  (%.0f%%)\n", "all", nf, tot_rec, nf ? 100.0 * tot_rec / nf : 0);
out:
    free(newest);
    free(match);
    xc_synth_destroy(&s);
    free(order);
    free(lat);
    free(w);
    xc_client_st_close(&st);
    xc_client_value_free(&ck);
    xc_client_destroy(&c);
    return out;
}
