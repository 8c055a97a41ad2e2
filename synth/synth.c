/* Synthetic planted-feature activations (see xc_synth.h for the model). */
#include "xc_synth.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xc_error.h"
#include "xc_rng.h"

/* Sanity bounds: beyond these the config is a typo, not an experiment. */
#define SYNTH_MAX_D (1 << 20)
#define SYNTH_MAX_FEATURES (1 << 24)

struct xc_synth {
    xc_synth_config_t cfg;
    int nf;                 /* number of planted features */
    int ortho;              /* directions built orthonormal */
    xc_synth_kind_t *kind;  /* (nf) */
    float *dirs;            /* (nf, 2, d): u_b then u_c; an absent half is zero */
    float *strength;        /* (nf, 2): base, chat */
    float *prob;            /* (nf) */
    float *scale;           /* (nf) */
    float *bias;            /* (2, d) */
    xc_rng_t rng;           /* token stream */
    uint64_t tokens;
};

const char *xc_synth_kind_name(int kind)
{
    switch (kind) {
    case XC_SYNTH_SHARED: return "shared";
    case XC_SYNTH_CHAT_ONLY: return "chat_only";
    case XC_SYNTH_BASE_ONLY: return "base_only";
    case XC_SYNTH_SHRUNK: return "shrunk";
    default: return "unknown";
    }
}

/* Counts scale with d so a wider default keeps the same mix and sparsity. */
void xc_synth_config_default(xc_synth_config_t *c, int d)
{
    long dd = d > 0 ? d : 64;

    memset(c, 0, sizeof *c);
    c->d = d;
    c->n_shared = (int)(40 * dd / 64 > 0 ? 40 * dd / 64 : 1);
    c->n_chat_only = (int)(12 * dd / 64);
    c->n_base_only = (int)(12 * dd / 64);
    c->n_shrunk = 0;
    c->shared_cos = 0.95f;
    c->shrunk_scale = 0.3f;
    c->shrunk_cos = 0.9f;
    c->mean_active = 4.0f;
    c->prob_exponent = 0.5f;
    c->max_prob = 0.5f;
    c->scale_min = 0.5f;
    c->scale_max = 1.0f;
    c->bias_norm = 1.0f;
    c->noise_std = 0.02f;
    c->seed = 1;
}

int xc_synth_config_validate(const xc_synth_config_t *c, char *why, size_t why_len)
{
    if (!c) return XC_EINVAL;
    if (c->d <= 0 || c->d > SYNTH_MAX_D) {
        xc_why(why, why_len, "d must be between 1 and 1048576");
        return XC_ECONFIG;
    }
    if (c->n_shared < 0 || c->n_chat_only < 0 || c->n_base_only < 0 || c->n_shrunk < 0) {
        xc_why(why, why_len, "feature counts must be >= 0");
        return XC_ECONFIG;
    }
    long nf = (long)c->n_shared + c->n_chat_only + c->n_base_only + c->n_shrunk;
    if (nf < 1 || nf > SYNTH_MAX_FEATURES) {
        xc_why(why, why_len, "total feature count must be between 1 and 16777216");
        return XC_ECONFIG;
    }
    /* !(x >= lo && x <= hi) also rejects NaN. */
    if (c->d < 2 && c->n_shared + c->n_shrunk > 0) {
        xc_why(why, why_len, "d must be >= 2 for shared or shrunk features (they need a second direction)");
        return XC_ECONFIG;
    }
    if (!(c->shared_cos >= -1.0f && c->shared_cos <= 1.0f)) {
        xc_why(why, why_len, "shared_cos must be in [-1, 1]");
        return XC_ECONFIG;
    }
    if (!(c->shrunk_cos >= -1.0f && c->shrunk_cos <= 1.0f)) {
        xc_why(why, why_len, "shrunk_cos must be in [-1, 1]");
        return XC_ECONFIG;
    }
    if (!(c->shrunk_scale >= 0.0f && isfinite(c->shrunk_scale))) {
        xc_why(why, why_len, "shrunk_scale must be finite and >= 0");
        return XC_ECONFIG;
    }
    if (!(c->max_prob > 0.0f && c->max_prob < 1.0f)) {
        xc_why(why, why_len, "max_prob must be in (0, 1)");
        return XC_ECONFIG;
    }
    if (!(c->mean_active > 0.0f && isfinite(c->mean_active))) {
        xc_why(why, why_len, "mean_active must be finite and > 0");
        return XC_ECONFIG;
    }
    if ((double)c->mean_active > (double)c->max_prob * (double)nf) {
        xc_why(why, why_len, "mean_active exceeds max_prob * feature count; add features or raise max_prob");
        return XC_ECONFIG;
    }
    if (!(c->prob_exponent >= 0.0f && c->prob_exponent <= 16.0f)) {
        xc_why(why, why_len, "prob_exponent must be in [0, 16]");
        return XC_ECONFIG;
    }
    if (!(c->scale_min > 0.0f && c->scale_max >= c->scale_min && isfinite(c->scale_max))) {
        xc_why(why, why_len, "need 0 < scale_min <= scale_max, finite");
        return XC_ECONFIG;
    }
    if (!(c->bias_norm >= 0.0f && isfinite(c->bias_norm))) {
        xc_why(why, why_len, "bias_norm must be finite and >= 0");
        return XC_ECONFIG;
    }
    if (!(c->noise_std >= 0.0f && isfinite(c->noise_std))) {
        xc_why(why, why_len, "noise_std must be finite and >= 0");
        return XC_ECONFIG;
    }
    return 0;
}

/* ---- direction helpers (double precision: the cosines must be exact to 1e-6) */

static void normal_fill(xc_rng_t *r, double *v, int d)
{
    for (int i = 0; i < d; i++) v[i] = xc_rng_normal(r);
}

static double dot_d(const double *a, const double *b, int d)
{
    double s = 0;
    for (int i = 0; i < d; i++) s += a[i] * b[i];
    return s;
}

/* Removes from v its components along the n orthonormal rows of q (d each),
 * then normalises. Returns 0 if v was (numerically) inside their span. */
static int orth_normalise(double *v, const double *q, int n, int d)
{
    double n0 = sqrt(dot_d(v, v, d));
    for (int pass = 0; pass < 2; pass++) /* twice: "twice is enough" (Kahan) */
        for (int k = 0; k < n; k++) {
            double p = dot_d(v, q + (size_t)k * d, d);
            for (int i = 0; i < d; i++) v[i] -= p * q[(size_t)k * d + i];
        }
    double nv = sqrt(dot_d(v, v, d));
    if (!(nv > 1e-6 * n0) || nv == 0) return 0;
    for (int i = 0; i < d; i++) v[i] /= nv;
    return 1;
}

/* Random unit vector orthogonal to the n orthonormal rows of q (n < d). */
static void random_orth(xc_rng_t *r, double *v, const double *q, int n, int d)
{
    do normal_fill(r, v, d);
    while (!orth_normalise(v, q, n, d));
}

static void store(float *dst, const double *v, int d)
{
    for (int i = 0; i < d; i++) dst[i] = (float)v[i];
}

/* dst = c*a + s*b for unit a, b orthogonal: a unit vector at cosine c to a. */
static void rotate_store(float *dst, const double *a, const double *b, double c, int d)
{
    double s = sqrt(fmax(0.0, 1.0 - c * c));
    for (int i = 0; i < d; i++) dst[i] = (float)(c * a[i] + s * b[i]);
}

/* m random orthonormal rows of q (m <= d): Gaussian rows orthonormalised block
 * by block. Each block is projected off all rows before it twice with dgemm
 * (block classical Gram-Schmidt; twice is enough), then orthonormalised within
 * itself. BLAS-3 matters: plain loops took 12 s for d = 2304. */
#define GS_BLOCK 64
static int random_orthonormal(xc_rng_t *r, double *q, int m, int d)
{
    double *h = malloc((size_t)GS_BLOCK * (m > 0 ? m : 1) * sizeof *h); /* (b, k0) */

    if (!h) return XC_ENOMEM;
    for (int k0 = 0; k0 < m; k0 += GS_BLOCK) {
        int b = m - k0 < GS_BLOCK ? m - k0 : GS_BLOCK;
        double *v = q + (size_t)k0 * d;
        for (int j = 0; j < b; j++) normal_fill(r, v + (size_t)j * d, d);
        for (int pass = 0; k0 > 0 && pass < 2; pass++) {
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b, k0, d, 1.0, v, d, q, d,
                        0.0, h, k0);                                   /* h = V Q^T */
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, b, d, k0, -1.0, h, k0, q, d,
                        1.0, v, d);                                    /* V -= h Q */
        }
        /* A degenerate draw (never seen in practice) is redrawn row by row. */
        for (int j = 0; j < b; j++) {
            double *vj = v + (size_t)j * d;
            if (!orth_normalise(vj, v, j, d)) random_orth(r, vj, q, k0 + j, d);
        }
    }
    free(h);
    return 0;
}

static float *dir_base(struct xc_synth *s, int i) { return s->dirs + (size_t)i * 2 * s->cfg.d; }
static float *dir_chat(struct xc_synth *s, int i) { return dir_base(s, i) + s->cfg.d; }

/* Layout of the orthonormal construction. Pair features (SHARED, SHRUNK) live
 * two to a plane (q_2p, q_2p+1): the base directions are q_2p and q_2p+1 and
 * the chat directions are their rotation by the pair's angle within the plane,
 * so each model's set stays orthonormal and each pair has the exact cosine.
 * Shared and shrunk features use separate planes (different angles). A plane
 * half-used by an odd count leaves one free direction per model; base-only
 * features take free directions from the front of the remaining basis and
 * chat-only ones from the back, so they overlap only when d forces it. */
typedef struct {
    int planes_shared, planes_shrunk, planes;
    int n_outside;          /* basis vectors beyond the planes */
    int m;                  /* basis vectors to build */
} plan_t;

static int plan_ortho(const xc_synth_config_t *c, plan_t *p)
{
    int d = c->d, left = (c->n_shared & 1) + (c->n_shrunk & 1);

    p->planes_shared = (c->n_shared + 1) / 2;
    p->planes_shrunk = (c->n_shrunk + 1) / 2;
    p->planes = p->planes_shared + p->planes_shrunk;
    if ((long)2 * p->planes > d) return 0;
    int avail = d - 2 * p->planes;
    int nb = c->n_base_only > left ? c->n_base_only - left : 0;
    int nc = c->n_chat_only > left ? c->n_chat_only - left : 0;
    if (nb > avail || nc > avail) return 0;
    p->n_outside = nb + nc < avail ? nb + nc : avail;
    p->m = 2 * p->planes + p->n_outside;
    return 1;
}

/* A pair in plane pl, slot 0 or 1: base direction and its rotation by angle
 * acos(cs). Slot 1 rotates the other way, which keeps the chat pair orthogonal. */
static void pair_dirs(const double *q, int d, int pl, int slot, double cs, float *ub, float *uc)
{
    const double *a = q + (size_t)(2 * pl) * d, *b = a + d;
    double sn = sqrt(fmax(0.0, 1.0 - cs * cs));

    for (int i = 0; i < d; i++) {
        double base = slot ? b[i] : a[i];
        double rot = slot ? cs * b[i] - sn * a[i] : cs * a[i] + sn * b[i];
        ub[i] = (float)base;
        uc[i] = (float)rot;
    }
}

static int build_ortho(struct xc_synth *s, xc_rng_t *r, const plan_t *p)
{
    const xc_synth_config_t *c = &s->cfg;
    int d = c->d, f = 0;
    double *q = malloc((size_t)(p->m > 0 ? p->m : 1) * d * sizeof *q);
    float *fb = malloc((size_t)2 * 2 * d * sizeof *fb); /* free (base, chat) dirs of odd planes */
    int n_left = 0, rc = XC_ENOMEM;

    if (!q || !fb) goto out_free;
    rc = random_orthonormal(r, q, p->m, d);
    if (rc) goto out_free;

    /* Pairs: shared planes first, then shrunk planes. A shrunk feature is the
     * chat direction shrunk in base, so its chat direction is the plane vector
     * and the base one the rotation (the cosine is symmetric either way). */
    for (int kind = 0; kind < 2; kind++) {
        int n = kind ? c->n_shrunk : c->n_shared, pl0 = kind ? p->planes_shared : 0;
        double cs = kind ? c->shrunk_cos : c->shared_cos;
        int f0 = kind ? c->n_shared + c->n_chat_only + c->n_base_only : 0;
        for (int i = 0; i < n; i++) {
            float *ub = dir_base(s, f0 + i), *uc = dir_chat(s, f0 + i);
            if (kind) pair_dirs(q, d, pl0 + i / 2, i & 1, cs, uc, ub);
            else pair_dirs(q, d, pl0 + i / 2, i & 1, cs, ub, uc);
        }
        if (n & 1) { /* slot 1 of the last plane is free in both models */
            float *lb = fb + (size_t)n_left * 2 * d;
            if (kind) pair_dirs(q, d, pl0 + n / 2, 1, cs, lb + d, lb);
            else pair_dirs(q, d, pl0 + n / 2, 1, cs, lb, lb + d);
            n_left++;
        }
    }
    /* Singles: free plane slots first, then the outside basis vectors. */
    const double *out = q + (size_t)(2 * p->planes) * d;
    f = c->n_shared;
    for (int i = 0; i < c->n_chat_only; i++, f++) {
        if (i < n_left) memcpy(dir_chat(s, f), fb + (size_t)i * 2 * d + d, (size_t)d * sizeof *fb);
        else store(dir_chat(s, f), out + (size_t)(p->n_outside - 1 - (i - n_left)) * d, d);
    }
    for (int i = 0; i < c->n_base_only; i++, f++) {
        if (i < n_left) memcpy(dir_base(s, f), fb + (size_t)i * 2 * d, (size_t)d * sizeof *fb);
        else store(dir_base(s, f), out + (size_t)(i - n_left) * d, d);
    }
    rc = 0;
out_free:
    free(q);
    free(fb);
    return rc;
}

/* Independent random unit vectors; pairs get an exact cosine through a second
 * vector orthogonalised against the first. */
static int build_random(struct xc_synth *s, xc_rng_t *r)
{
    int d = s->cfg.d;
    double *a = malloc((size_t)2 * d * sizeof *a), *b = a ? a + d : NULL;

    if (!a) return XC_ENOMEM;
    for (int f = 0; f < s->nf; f++) {
        random_orth(r, a, NULL, 0, d);
        switch (s->kind[f]) {
        case XC_SYNTH_SHARED:
            store(dir_base(s, f), a, d);
            random_orth(r, b, a, 1, d);
            rotate_store(dir_chat(s, f), a, b, s->cfg.shared_cos, d);
            break;
        case XC_SYNTH_SHRUNK:
            store(dir_chat(s, f), a, d);
            random_orth(r, b, a, 1, d);
            rotate_store(dir_base(s, f), a, b, s->cfg.shrunk_cos, d);
            break;
        case XC_SYNTH_CHAT_ONLY: store(dir_chat(s, f), a, d); break;
        case XC_SYNTH_BASE_ONLY: store(dir_base(s, f), a, d); break;
        }
    }
    free(a);
    return 0;
}

/* p_i proportional to (rank_i + 1)^-alpha over a random permutation of ranks (so
 * no kind is favoured), scaled to sum to mean_active; probabilities above
 * max_prob are capped and the excess spread over the rest (water-filling). */
static int build_probs(struct xc_synth *s, xc_rng_t *r)
{
    int nf = s->nf;
    const xc_synth_config_t *c = &s->cfg;
    int *rank = malloc((size_t)nf * sizeof *rank);
    double *w = malloc((size_t)nf * sizeof *w);
    char *capped = calloc((size_t)nf, 1);

    if (!rank || !w || !capped) {
        free(rank);
        free(w);
        free(capped);
        return XC_ENOMEM;
    }
    for (int i = 0; i < nf; i++) rank[i] = i;
    for (int i = nf - 1; i > 0; i--) { /* Fisher-Yates */
        int j = (int)xc_rng_below(r, (uint64_t)i + 1), t = rank[i];
        rank[i] = rank[j];
        rank[j] = t;
    }
    for (int i = 0; i < nf; i++) w[i] = pow(rank[i] + 1.0, -(double)c->prob_exponent);

    double pmax = c->max_prob, k = 1.0;
    for (int changed = 1; changed;) {
        double rest = c->mean_active, wsum = 0;
        for (int i = 0; i < nf; i++) {
            if (capped[i]) rest -= pmax;
            else wsum += w[i];
        }
        k = wsum > 0 ? fmax(rest, 0.0) / wsum : 0;
        changed = 0;
        for (int i = 0; i < nf; i++)
            if (!capped[i] && k * w[i] > pmax) capped[i] = 1, changed = 1;
    }
    for (int i = 0; i < nf; i++) s->prob[i] = (float)(capped[i] ? pmax : k * w[i]);
    free(rank);
    free(w);
    free(capped);
    return 0;
}

static void build_scales_bias(struct xc_synth *s, xc_rng_t *r)
{
    const xc_synth_config_t *c = &s->cfg;
    int d = c->d;

    for (int i = 0; i < s->nf; i++)
        s->scale[i] = (float)(c->scale_min + (c->scale_max - c->scale_min) * xc_rng_uniform(r));
    for (int m = 0; m < 2; m++) {
        double n2 = 0;
        float *b = s->bias + (size_t)m * d;
        for (int i = 0; i < d; i++) {
            double g = xc_rng_normal(r);
            b[i] = (float)g;
            n2 += g * g;
        }
        double k = n2 > 0 ? c->bias_norm / sqrt(n2) : 0;
        for (int i = 0; i < d; i++) b[i] = (float)(b[i] * k);
    }
}

static void strengths(struct xc_synth *s)
{
    for (int f = 0; f < s->nf; f++) {
        float sb = 1, sc = 1;
        if (s->kind[f] == XC_SYNTH_CHAT_ONLY) sb = 0;
        if (s->kind[f] == XC_SYNTH_BASE_ONLY) sc = 0;
        if (s->kind[f] == XC_SYNTH_SHRUNK) sb = s->cfg.shrunk_scale;
        s->strength[2 * f] = sb;
        s->strength[2 * f + 1] = sc;
    }
}

void xc_synth_destroy(xc_synth_t **ps)
{
    if (!ps || !*ps) return;
    xc_synth_t *s = *ps;
    free(s->kind);
    free(s->dirs);
    free(s->strength);
    free(s->prob);
    free(s->scale);
    free(s->bias);
    free(s);
    *ps = NULL;
}

xc_synth_t *xc_synth_new(const xc_synth_config_t *cfg, int *err)
{
    int rc = xc_synth_config_validate(cfg, NULL, 0);
    xc_synth_t *s = NULL;
    xc_rng_t r;
    plan_t plan;

    if (rc) goto out_err;
    rc = XC_ENOMEM;
    s = calloc(1, sizeof *s);
    if (!s) goto out_err;
    s->cfg = *cfg;
    s->nf = cfg->n_shared + cfg->n_chat_only + cfg->n_base_only + cfg->n_shrunk;
    size_t nf = (size_t)s->nf, d = (size_t)cfg->d;
    s->kind = malloc(nf * sizeof *s->kind);
    s->dirs = calloc(nf * 2 * d, sizeof *s->dirs);
    s->strength = malloc(nf * 2 * sizeof *s->strength);
    s->prob = malloc(nf * sizeof *s->prob);
    s->scale = malloc(nf * sizeof *s->scale);
    s->bias = malloc(2 * d * sizeof *s->bias);
    if (!s->kind || !s->dirs || !s->strength || !s->prob || !s->scale || !s->bias)
        goto out_free;
    int f = 0;
    for (int i = 0; i < cfg->n_shared; i++) s->kind[f++] = XC_SYNTH_SHARED;
    for (int i = 0; i < cfg->n_chat_only; i++) s->kind[f++] = XC_SYNTH_CHAT_ONLY;
    for (int i = 0; i < cfg->n_base_only; i++) s->kind[f++] = XC_SYNTH_BASE_ONLY;
    for (int i = 0; i < cfg->n_shrunk; i++) s->kind[f++] = XC_SYNTH_SHRUNK;
    strengths(s);

    /* Structure and token stream use separate generators, so reseeding the
     * stream keeps the features. */
    xc_rng_seed(&r, cfg->seed ^ 0x5eed5747c0def00dULL);
    s->ortho = plan_ortho(cfg, &plan);
    rc = s->ortho ? build_ortho(s, &r, &plan) : build_random(s, &r);
    if (rc) goto out_free;
    rc = build_probs(s, &r);
    if (rc) goto out_free;
    build_scales_bias(s, &r);
    xc_synth_reseed_stream(s, cfg->seed);
    if (err) *err = 0;
    return s;

out_free:
    xc_synth_destroy(&s);
out_err:
    if (err) *err = rc;
    return NULL;
}

void xc_synth_reseed_stream(xc_synth_t *s, uint64_t stream_seed)
{
    xc_rng_seed(&s->rng, stream_seed);
    s->tokens = 0;
}

uint64_t xc_synth_tokens(const xc_synth_t *s) { return s->tokens; }

/* Two standard normals from one pair of uniforms (Box-Muller, both outputs):
 * noise dominates generation cost, and 2d is always even. */
static void normal_pair(xc_rng_t *r, double *z0, double *z1)
{
    double u1 = 1.0 - xc_rng_uniform(r), u2 = xc_rng_uniform(r);
    double rad = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
    *z0 = rad * cos(th);
    *z1 = rad * sin(th);
}

/* Per token, in this fixed order of draws: for each feature a Bernoulli
 * uniform (and an Exp(1) uniform if it fires), then the 2d noise values. */
int xc_synth_generate(xc_synth_t *s, long n_tokens, float *out, float *codes)
{
    if (!s || n_tokens < 0 || (n_tokens > 0 && !out)) return XC_EINVAL;
    int d = s->cfg.d, nf = s->nf;
    double sd = s->cfg.noise_std;

    for (long t = 0; t < n_tokens; t++) {
        float *x = out + (size_t)t * 2 * d;
        float *code = codes ? codes + (size_t)t * nf : NULL;
        memcpy(x, s->bias, (size_t)2 * d * sizeof *x);
        if (code) memset(code, 0, (size_t)nf * sizeof *code);
        for (int f = 0; f < nf; f++) {
            if (xc_rng_uniform(&s->rng) >= (double)s->prob[f]) continue;
            double e = -log(1.0 - xc_rng_uniform(&s->rng));
            float a = (float)(s->scale[f] * (0.5 + e));
            if (code) code[f] = a;
            const float *u = s->dirs + (size_t)f * 2 * d;
            for (int m = 0; m < 2; m++) {
                float g = a * s->strength[2 * f + m];
                if (g == 0) continue;
                for (int i = 0; i < d; i++) x[m * d + i] += g * u[m * d + i];
            }
        }
        if (sd > 0)
            for (int i = 0; i < 2 * d; i += 2) {
                double z0, z1;
                normal_pair(&s->rng, &z0, &z1);
                x[i] += (float)(sd * z0);
                x[i + 1] += (float)(sd * z1);
            }
    }
    s->tokens += (uint64_t)n_tokens;
    return 0;
}

int xc_synth_n_features(const xc_synth_t *s) { return s ? s->nf : 0; }
const float *xc_synth_bias(const xc_synth_t *s) { return s->bias; }
int xc_synth_orthonormal(const xc_synth_t *s) { return s->ortho; }

int xc_synth_feature(const xc_synth_t *s, int i, xc_synth_feature_t *out)
{
    if (!s || !out || i < 0 || i >= s->nf) return XC_EINVAL;
    const float *u = s->dirs + (size_t)i * 2 * s->cfg.d;
    out->kind = s->kind[i];
    out->strength_base = s->strength[2 * i];
    out->strength_chat = s->strength[2 * i + 1];
    out->prob = s->prob[i];
    out->scale = s->scale[i];
    out->dir_base = s->kind[i] == XC_SYNTH_CHAT_ONLY ? NULL : u;
    out->dir_chat = s->kind[i] == XC_SYNTH_BASE_ONLY ? NULL : u + s->cfg.d;
    return 0;
}

int xc_synth_true_decoder(const xc_synth_t *s, int i, float *out)
{
    if (!s || !out || i < 0 || i >= s->nf) return XC_EINVAL;
    int d = s->cfg.d;
    const float *u = s->dirs + (size_t)i * 2 * d;
    for (int m = 0; m < 2; m++)
        for (int k = 0; k < d; k++) out[m * d + k] = s->strength[2 * i + m] * u[m * d + k];
    return 0;
}

static double norm_f(const float *v, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)v[i] * v[i];
    return sqrt(s);
}

float xc_synth_delta_norm(const float *row, int d)
{
    double nb = norm_f(row, d), nc = norm_f(row + d, d), mx = fmax(nb, nc);
    if (mx == 0) return 0.5f;
    return (float)(0.5 * ((nc - nb) / mx + 1.0));
}

/* Rows outer, features inner: each decoder row is read once from memory. */
int xc_synth_match(const xc_synth_t *s, const float *w_dec, int F, xc_synth_match_t *out)
{
    if (!s || !out || F < 0 || (F > 0 && !w_dec)) return XC_EINVAL;
    int nf = s->nf, d2 = 2 * s->cfg.d;
    float *t = malloc((size_t)nf * d2 * sizeof *t);
    double *best = malloc((size_t)nf * sizeof *best);

    if (!t || !best) {
        free(t);
        free(best);
        return XC_ENOMEM;
    }
    for (int i = 0; i < nf; i++) {
        float *ti = t + (size_t)i * d2;
        xc_synth_true_decoder(s, i, ti);
        double n = norm_f(ti, d2);
        for (int k = 0; k < d2; k++) ti[k] = (float)(ti[k] / n);
        out[i].latent = -1;
        out[i].cosine = 0;
        out[i].delta_norm = 0.5f;
        best[i] = -INFINITY;
    }
    for (int j = 0; j < F; j++) {
        const float *row = w_dec + (size_t)j * d2;
        double n = norm_f(row, d2);
        if (!(n > 0) || !isfinite(n)) continue;
        for (int i = 0; i < nf; i++) {
            const float *ti = t + (size_t)i * d2;
            double dot = 0;
            for (int k = 0; k < d2; k++) dot += (double)row[k] * ti[k];
            double c = dot / n;
            if (c > best[i]) best[i] = c, out[i].latent = j;
        }
    }
    for (int i = 0; i < nf; i++)
        if (out[i].latent >= 0) {
            out[i].cosine = (float)best[i];
            out[i].delta_norm = xc_synth_delta_norm(w_dec + (size_t)out[i].latent * d2, s->cfg.d);
        }
    free(t);
    free(best);
    return 0;
}
