/* `xcoder examples --checkpoint CKPT --data ACTS.npy --tokens IDS.npy`: every
 * latent's top examples on the user's data, for a frozen dictionary, in
 * threshold mode (f = u * 1[u s > theta]; L1: f = u), with the latent's
 * activation at every token of each window - the same computation as
 * xcoder.offline_examples in Python (and what the daemon's live examples give
 * for the same frozen dictionary, tests/integ_examples.py).
 *
 * One streaming pass over memory-mapped inputs: each chunk of CHUNK tokens is
 * encoded together with W tokens each side (one sgemm), so every window's
 * activations are at hand; memory is CHUNK x F floats for the encoding plus
 * F x top x (2W + 1) for the examples, whatever N is. */
#include "xc_cli.h"
#include "xc_proto.h"

#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK 1024

/* A 1-D .npy array of integers as int64 (copied). 0 or -1 with why. */
static int read_ints(const char *path, long *n_out, int64_t **out, char *why, size_t wl)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) {
        snprintf(why, wl, "cannot open %s: %s", path, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    size_t len = (size_t)st.st_size;
    const uint8_t *m = len ? mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
    close(fd);
    if (m == MAP_FAILED || len < 10 || memcmp(m, "\x93NUMPY", 6)) {
        snprintf(why, wl, "%s is not a .npy file", path);
        if (m != MAP_FAILED) munmap((void *)m, len);
        return -1;
    }
    size_t hl = m[6] == 1 ? (size_t)(m[8] | m[9] << 8) : len >= 12 ? (size_t)(m[8] | m[9] << 8 | m[10] << 16) : 0;
    size_t off = (m[6] == 1 ? 10 : 12) + hl;
    char hdr[512];
    snprintf(hdr, sizeof hdr, "%.*s", (int)(hl < 511 ? hl : 511), (const char *)m + (m[6] == 1 ? 10 : 12));
    const char *dp = strstr(hdr, "'descr':"), *sp = strstr(hdr, "'shape':");
    char kind = 0;
    int size = 0, big = 0;
    if (dp) {
        dp = strchr(dp + 8, '\'');
        if (dp && strlen(dp) >= 4) big = dp[1] == '>', kind = dp[2], size = dp[3] - '0';
    }
    long n = sp ? strtol(strchr(sp, '(') ? strchr(sp, '(') + 1 : sp, NULL, 10) : -1;
    int one_dim = sp && strchr(sp, '(') && strchr(sp, ',') && strchr(sp, ')') &&
                  strchr(sp, ',') + 1 >= strchr(sp, ')') - 1; /* "(N,)" */
    if ((kind != 'i' && kind != 'u') || (size != 4 && size != 8) || big || n < 0 || !one_dim ||
        strstr(hdr, "'fortran_order': True") || off + (size_t)n * size > len) {
        snprintf(why, wl, "%s: expected a 1-D little-endian int32/int64/uint32/uint64 array, got %s", path, hdr);
        munmap((void *)m, len);
        return -1;
    }
    int64_t *v = malloc(sizeof *v * (size_t)(n ? n : 1)); /* owned by the caller */
    if (!v) {
        snprintf(why, wl, "out of memory for %ld ids", n);
        munmap((void *)m, len);
        return -1;
    }
    for (long i = 0; i < n; i++) {
        const uint8_t *p = m + off + (size_t)i * size;
        uint64_t u = 0;
        for (int b = size - 1; b >= 0; b--) u = u << 8 | p[b];
        v[i] = size == 4 ? (kind == 'i' ? (int64_t)(int32_t)(uint32_t)u : (int64_t)u) : (int64_t)u;
    }
    munmap((void *)m, len);
    *n_out = n;
    *out = v;
    return 0;
}

/* Vocabulary pieces from a JSON array of strings, a {piece: id} object or a
 * tokenizer.json (model.vocab); pieces[id] borrowed from *tree. */
static int read_vocab(const char *path, xc_client_value_t **tree, const char ***pieces, long *n, char *why, size_t wl)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(why, wl, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = sz >= 0 ? malloc((size_t)sz + 1) : NULL;
    int ok = text && fread(text, 1, (size_t)sz, f) == (size_t)sz;
    fclose(f);
    int err;
    char jwhy[128] = "";
    *tree = ok ? xc_client_json_parse(text, (size_t)sz, &err, jwhy, sizeof jwhy) : NULL;
    free(text);
    if (!*tree) {
        snprintf(why, wl, "%s: not JSON: %s", path, jwhy);
        return -1;
    }
    const xc_client_value_t *v = *tree, *model = xc_client_value_get(v, "model");
    if (model && model->type == XC_VAL_MAP) v = xc_client_value_get(model, "vocab");
    if (!v || (v->type != XC_VAL_ARRAY && v->type != XC_VAL_MAP)) {
        snprintf(why, wl, "%s: expected an array of strings, an object {piece: id} or a tokenizer.json", path);
        return -1;
    }
    long cnt = v->type == XC_VAL_ARRAY ? (long)v->u.a.n : 0;
    for (size_t i = 0; v->type == XC_VAL_MAP && i < v->u.m.n; i++) {
        double id;
        if (xc_client_value_num(&v->u.m.kv[2 * i + 1], &id) == 0 && id >= 0 && id + 1 > cnt) cnt = (long)id + 1;
    }
    *pieces = calloc((size_t)(cnt ? cnt : 1), sizeof **pieces); /* owned by the caller */
    if (!*pieces) return -1;
    for (long i = 0; v->type == XC_VAL_ARRAY && i < cnt; i++) {
        const xc_client_value_t *p = &v->u.a.items[i];
        if (p->type == XC_VAL_ARRAY && p->u.a.n) p = &p->u.a.items[0]; /* Unigram [piece, score] */
        if (p->type == XC_VAL_STR) (*pieces)[i] = p->u.s.ptr;
    }
    for (size_t i = 0; v->type == XC_VAL_MAP && i < v->u.m.n; i++) {
        double id;
        if (v->u.m.kv[2 * i].type == XC_VAL_STR && xc_client_value_num(&v->u.m.kv[2 * i + 1], &id) == 0 && id >= 0)
            (*pieces)[(long)id] = v->u.m.kv[2 * i].u.s.ptr;
    }
    *n = cnt;
    return 0;
}

typedef struct {
    long F, N;                 /* latents, examples per latent */
    int W, WL;
    float *act;                /* (F, N) */
    long *idx;                 /* (F, N): token index, -1 empty */
    float *win;                /* (F, N, WL) */
    float *minact;             /* (F) */
    int *minslot, *count;      /* (F) */
} tops_t;

static void rescan(tops_t *t, long j)
{
    int m = 0;
    for (int s = 1; s < t->N; s++)
        if (t->act[j * t->N + s] < t->act[j * t->N + m] ||
            (t->act[j * t->N + s] == t->act[j * t->N + m] && t->idx[j * t->N + s] > t->idx[j * t->N + m]))
            m = s;
    t->minslot[j] = m;
    t->minact[j] = t->act[j * t->N + m];
}

/* The encoding of rows [lo, hi) of the data into f (rows x F), threshold mode. */
static void encode_rows(const xc_client_npy_t *x, const xc_client_model_t *m, const float *s, long lo, long hi,
                        float *xbuf, float *f)
{
    int d2 = 2 * m->d;
    long F = m->dict_size, rows = hi - lo;
    for (long r = 0; r < rows; r++)
        for (int i = 0; i < d2; i++) {
            size_t at = (size_t)(lo + r) * d2 + i;
            xbuf[r * d2 + i] = x->itemsize == 4 ? ((const float *)x->data)[at]
                                                : xc_f16_to_f32(((const uint16_t *)x->data)[at]);
        }
    /* U = X (rows, 2d) . W_enc viewed as (2d, F) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)F, d2, 1.0f, xbuf, d2, m->w_enc, (int)F,
                0.0f, f, (int)F);
    int l1 = strcmp(m->model, "l1") == 0 || m->threshold < 0;
    for (long r = 0; r < rows; r++)
        for (long j = 0; j < F; j++) {
            float u = f[r * F + j] + m->b_enc[j];
            u = u > 0 ? u : 0;
            f[r * F + j] = l1 || u * s[j] > m->threshold ? u : 0;
        }
}

int xc_cli_examples_offline(xc_cli_args_t *a)
{
    const char *ck = xc_cli_opt(a, "checkpoint"), *data = xc_cli_opt(a, "data"), *tokp = xc_cli_opt(a, "tokens");
    const char *docp = xc_cli_opt(a, "docs"), *vocp = xc_cli_opt(a, "vocab");
    long top, win;
    char why[1024];
    int err, out = XC_CLI_FAIL;
    if (!data || !tokp) {
        xc_cli_err(a, "--checkpoint needs --data ACTS.npy ([N, 2, d]) and --tokens IDS.npy ([N])");
        return XC_CLI_USAGE;
    }
    if (xc_cli_opt_long(a, "n", 20, 1, 255, &top) || xc_cli_opt_long(a, "window", 16, 0, 1024, &win))
        return XC_CLI_USAGE;
    xc_client_ckpt_t *c = xc_client_ckpt_open(ck, &err, why, sizeof why);
    xc_client_model_t m;
    xc_client_npy_t x;
    int have_m = 0, have_x = 0;
    int64_t *ids = NULL, *docs = NULL;
    long n_ids = 0, n_docs = 0, n_voc = 0;
    xc_client_value_t *vtree = NULL;
    const char **voc = NULL;
    float *s = NULL, *xbuf = NULL, *f = NULL;
    tops_t t = {0};
    memset(&m, 0, sizeof m);
    memset(&x, 0, sizeof x);
    if (!c) {
        xc_cli_err(a, "%s", why);
        goto out;
    }
    if (xc_client_ckpt_model(c, &m, why, sizeof why)) {
        xc_cli_err(a, "%s", why);
        goto out;
    }
    have_m = 1;
    if (xc_client_npy_open(data, &x, why, sizeof why)) {
        xc_cli_err(a, "%s", why);
        goto out;
    }
    have_x = 1;
    if (x.d != m.d) {
        xc_cli_err(a, "%s has d = %ld but the checkpoint's d is %d", data, x.d, m.d);
        goto out;
    }
    if (read_ints(tokp, &n_ids, &ids, why, sizeof why) || (docp && read_ints(docp, &n_docs, &docs, why, sizeof why)) ||
        (vocp && read_vocab(vocp, &vtree, &voc, &n_voc, why, sizeof why))) {
        xc_cli_err(a, "%s", why);
        goto out;
    }
    if (n_ids != x.n_tokens || (docs && n_docs != x.n_tokens)) {
        xc_cli_err(a, "%s has %ld tokens but %s has %ld ids%s", data, x.n_tokens, docs && n_docs != x.n_tokens ? docp : tokp,
                   docs && n_docs != x.n_tokens ? n_docs : n_ids, "");
        goto out;
    }
    long F = m.dict_size, N = x.n_tokens, d2 = 2 * m.d;
    int W = (int)win, WL = 2 * W + 1;
    t = (tops_t){F, top, W, WL, calloc((size_t)F * top, sizeof(float)), malloc(sizeof(long) * F * top),
                 calloc((size_t)F * top * WL, sizeof(float)), calloc((size_t)F, sizeof(float)),
                 calloc((size_t)F, sizeof(int)), calloc((size_t)F, sizeof(int))};
    s = malloc(sizeof *s * F);
    xbuf = malloc(sizeof *xbuf * (size_t)(CHUNK + 2 * W) * d2);
    f = malloc(sizeof *f * (size_t)(CHUNK + 2 * W) * F);
    if (!t.act || !t.idx || !t.win || !t.minact || !t.minslot || !t.count || !s || !xbuf || !f) {
        xc_cli_err(a, "out of memory (the examples take %.0f MB)", (double)F * top * (WL + 3) * 4 / 1e6);
        goto out;
    }
    for (long j = 0; j < F; j++) {
        double nb = 0, nc = 0;
        for (int i = 0; i < m.d; i++) {
            nb += (double)m.w_dec[j * m.d + i] * m.w_dec[j * m.d + i];
            nc += (double)m.w_dec[(F + j) * m.d + i] * m.w_dec[(F + j) * m.d + i];
        }
        s[j] = (float)(sqrt(nb) + sqrt(nc));
    }
    for (long st = 0; st < N; st += CHUNK) {
        long en = st + CHUNK < N ? st + CHUNK : N, lo = st - W > 0 ? st - W : 0, hi = en + W < N ? en + W : N;
        encode_rows(&x, &m, s, lo, hi, xbuf, f);
        for (long i = st; i < en; i++)
            for (long j = 0; j < F; j++) {
                float v = f[(i - lo) * F + j];
                if (!(v > 0)) continue;
                int slot;
                if (t.count[j] < top) slot = t.count[j]++;
                else if (v > t.minact[j]) slot = t.minslot[j];
                else continue;
                t.act[j * top + slot] = v;
                t.idx[j * top + slot] = i;
                for (int k = -W; k <= W; k++) {
                    long r = i + k;
                    t.win[(j * top + slot) * WL + W + k] = r >= lo && r < hi ? f[(r - lo) * F + j] : 0.0f;
                }
                if (t.count[j] == top) rescan(&t, j);
            }
    }
    /* output: per latent, best first (ties: earlier token) */
    xc_buf_t line;
    xc_buf_init(&line);
    xc_buf_t jb;
    xc_mpw_t w;
    xc_buf_init(&jb);
    xc_mpw_init(&w, &jb);
    xc_mpw_map_begin(&w);
    xc_mpw_kv_str(&w, "checkpoint", ck);
    xc_mpw_kv_int(&w, "tokens", N);
    xc_mpw_kv_int(&w, "window", W);
    xc_mpw_str(&w, "latents");
    xc_mpw_array_begin(&w);
    int64_t *tids = malloc(sizeof *tids * WL);
    const char **tps = malloc(sizeof *tps * WL);
    size_t *tls = malloc(sizeof *tls * WL);
    int *ord = malloc(sizeof *ord * top);
    for (long j = 0; j < F && tids && tps && tls && ord; j++) {
        int n = t.count[j];
        if (!n) continue;
        for (int q = 0; q < n; q++) ord[q] = q;
        for (int p = 1; p < n; p++) /* insertion sort, n <= 255 */
            for (int q = p; q > 0; q--) {
                long A = j * top + ord[q - 1], Bq = j * top + ord[q];
                if (t.act[A] > t.act[Bq] || (t.act[A] == t.act[Bq] && t.idx[A] < t.idx[Bq])) break;
                int tmp = ord[q];
                ord[q] = ord[q - 1], ord[q - 1] = tmp;
            }
        xc_mpw_map_begin(&w);
        xc_mpw_kv_int(&w, "j", j);
        xc_mpw_str(&w, "examples");
        xc_mpw_array_begin(&w);
        if (!a->json) printf("latent %ld\n", j);
        for (int q = 0; q < n; q++) {
            long e = j * top + ord[q], i = t.idx[e];
            int left = 0, right = 0;
            while (left < W && i - left - 1 >= 0 && (!docs || docs[i - left - 1] == docs[i])) left++;
            while (right < W && i + right + 1 < N && (!docs || docs[i + right + 1] == docs[i])) right++;
            long pos = i;
            if (docs)
                while (pos > 0 && docs[pos - 1] == docs[i]) pos--;
            int nt = left + right + 1;
            for (int k = 0; k < nt; k++) {
                int64_t id = ids[i - left + k];
                tids[k] = id;
                tps[k] = voc && id >= 0 && id < n_voc ? voc[id] : NULL;
                tls[k] = tps[k] ? strlen(tps[k]) : 0;
            }
            xc_mpw_map_begin(&w);
            xc_mpw_kv_double(&w, "act", t.act[e]);
            xc_mpw_kv_int(&w, "index", i);
            xc_mpw_kv_int(&w, "doc", docs ? docs[i] : 0);
            xc_mpw_kv_int(&w, "pos", i - pos);
            xc_mpw_kv_int(&w, "token", ids[i]);
            xc_mpw_str(&w, "tokens");
            xc_mpw_array_begin(&w);
            for (int k = 0; k < nt; k++) xc_mpw_int(&w, tids[k]);
            xc_mpw_array_end(&w);
            xc_mpw_kv_int(&w, "at", left);
            xc_mpw_str(&w, "acts");
            xc_mpw_array_begin(&w);
            for (int k = 0; k < nt; k++) xc_mpw_double(&w, t.win[e * WL + W - left + k]);
            xc_mpw_array_end(&w);
            if (voc) {
                xc_mpw_str(&w, "pieces");
                xc_mpw_array_begin(&w);
                for (int k = 0; k < nt; k++) xc_mpw_str(&w, tps[k]);
                xc_mpw_array_end(&w);
            }
            xc_mpw_map_end(&w);
            if (!a->json) {
                xc_buf_reset(&line);
                xc_proto_render_window(&line, (size_t)nt, left, tids, voc ? tps : NULL, tls);
                xc_buf_append(&line, "", 1);
                printf("  %9.4g  doc %lld:%ld  %s\n    acts:", t.act[e], (long long)(docs ? docs[i] : 0), i - pos,
                       (const char *)line.data);
                for (int k = 0; k < nt; k++) printf(k == left ? " [%.3g]" : " %.3g", t.win[e * WL + W - left + k]);
                printf("\n");
            }
        }
        xc_mpw_array_end(&w);
        xc_mpw_map_end(&w);
    }
    xc_mpw_array_end(&w);
    xc_mpw_map_end(&w);
    out = a->json ? xc_cli_print_mpw(a, &w) : XC_CLI_OK;
    free(tids), free(tps), free(tls), free(ord);
    xc_buf_free(&jb);
    xc_buf_free(&line);
out:
    free(t.act), free(t.idx), free(t.win), free(t.minact), free(t.minslot), free(t.count);
    free(s), free(xbuf), free(f), free(ids), free(docs), free(voc);
    xc_client_value_free(&vtree);
    if (have_x) xc_client_npy_close(&x);
    if (have_m) xc_client_model_free(&m);
    xc_client_ckpt_close(&c);
    return out;
}
