/* Latent Scaling (method.md 4): for latent j with chat decoder row v, the
 * least-squares beta that best explains the model's error (or reconstruction)
 * along v from the latent's activations f:
 *   beta^m = sum f <v, target^m> / (sum f^2 ||v||^2)
 * with target = the error e (plus the latent's own term, f d^m) or the
 * reconstruction xhat, and nu = beta^base / beta^chat. Two estimates:
 *   running  the training step accumulates the sums (fused into the gradient
 *            pass, engine.c / l1.c) and commit_stats decays them over
 *            scaling_half_life tokens;
 *   exact    xc_scaling_* below freeze the dictionary and sum over whatever
 *            activations the caller feeds, in threshold mode. */
#include "xc_engine_internal.h"

#include "xc_error.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>

/* The standard error of a slope through the origin fitted from its sums:
 * syy = sum y^2 and sfy = sum f y for targets y = <v, target>, sff = sum f^2,
 * vv = |v|^2, n points. With t = y / vv, beta = sfy / (sff vv); the residual
 * sum of squares sum (t - beta f)^2 = syy / vv^2 - beta^2 sff (clamped at 0
 * against rounding); s^2 = that / (n - 1); se = sqrt(s^2 / sff). NaN for n < 2. */
static float slope_se(double syy, double sfy, double sff, double vv, double n)
{
    if (!(n >= 2) || !(sff > 0) || !(vv > 0)) return NAN;
    double beta = sfy / (sff * vv), rss = syy / (vv * vv) - beta * beta * sff;
    if (rss < 0) rss = 0;
    return (float)sqrt(rss / (n - 1.0) / sff);
}

void xc_scaling_stability(xc_scaling_stats_t *o, double min_z)
{
    o->nu_unstable = 0;
    if (!(min_z > 0)) return;
    /* !(a >= b) also catches NaN: an undefined spread is no evidence */
    if (!(fabs((double)o->beta_err[1]) >= min_z * o->se_err_chat)) o->nu_unstable |= XC_NU_UNSTABLE_ERR;
    if (!(fabs((double)o->beta_rec[1]) >= min_z * o->se_rec_chat)) o->nu_unstable |= XC_NU_UNSTABLE_REC;
}

/* beta, nu and the chat betas' standard errors from the sums of one latent
 * with decoder row dec (2d). Undefined (NaN) below min_active activations, for
 * a zero decoder row, and for a ratio whose chat beta is 0; then nu_unstable
 * by min_z (xc_scaling_stability). */
void xc_scaling_from_sums(const double *ls, const float *dec, int d, double min_active, double min_z,
                          xc_scaling_stats_t *o)
{
    const float *v = dec + d;
    double vv = 0, vb = 0;
    for (int i = 0; i < d; i++) {
        vv += (double)v[i] * v[i];
        vb += (double)v[i] * dec[i];
    }
    double den = ls[LS_F2] * vv;
    o->active = ls[LS_CNT];
    if (!(ls[LS_CNT] >= min_active) || ls[LS_CNT] <= 0 || !(den > 0)) {
        o->beta_err[0] = o->beta_err[1] = o->beta_rec[0] = o->beta_rec[1] = NAN;
        o->nu_err = o->nu_rec = NAN;
        o->se_err_chat = o->se_rec_chat = NAN;
        xc_scaling_stability(o, min_z);
        return;
    }
    /* error target adds the latent's own term back: + (sum f^2) <v, d^m> */
    double be0 = (ls[LS_E0] + ls[LS_F2] * vb) / den, be1 = (ls[LS_E1] + ls[LS_F2] * vv) / den;
    double br0 = ls[LS_R0] / den, br1 = ls[LS_R1] / den;
    o->beta_err[0] = (float)be0;
    o->beta_err[1] = (float)be1;
    o->beta_rec[0] = (float)br0;
    o->beta_rec[1] = (float)br1;
    o->nu_err = be1 != 0 ? (float)(be0 / be1) : NAN;
    o->nu_rec = br1 != 0 ? (float)(br0 / br1) : NAN;
    /* the error target's projections are <v, e> + f vv: expand their square */
    double sfe = ls[LS_E1] + ls[LS_F2] * vv;
    double see = ls[LS_EE1] + 2.0 * vv * ls[LS_E1] + vv * vv * ls[LS_F2];
    o->se_err_chat = slope_se(see, sfe, ls[LS_F2], vv, ls[LS_CNT]);
    o->se_rec_chat = slope_se(ls[LS_RR1], ls[LS_R1], ls[LS_F2], vv, ls[LS_CNT]);
    xc_scaling_stability(o, min_z);
}

/* The running estimates against the current decoder rows (the sums carry the
 * activations; the rows they are read with move with training). */
void xc_engine_scaling_running(const xc_engine_t *e, xc_scaling_stats_t *out)
{
    for (int j = 0; j < e->F; j++)
        xc_scaling_from_sums(e->ls_run + (size_t)j * LS_N, e->w_dec + (size_t)j * e->d2, e->d,
                             e->cfg.scaling_min_active, e->cfg.scaling_nu_min_z, &out[j]);
}

void xc_engine_set_scaling_running(xc_engine_t *e, int on) { e->cfg.scaling_running = on != 0; }

/* ---------------------------------------------------------------- exact pass */

/* The exact pass's arrays, laid out in one block like the engine's (shapes over
 * z, chunk = tokens encoded per pool pass): the frozen dictionary, then the
 * work space; per worker its slice of acc and act; per token of a chunk its
 * reconstruction (summed over the shards of a sharded engine). */
#define XC_SCALING_TENSORS(X)                                                                      \
    X(w_enc, float, z.F, z.d2)     /* frozen copies of the dictionary */                           \
    X(w_dec, float, z.F, z.d2)                                                                     \
    X(b_enc, float, z.F, 1)                                                                        \
    X(b_dec, float, z.d2, 1)                                                                       \
    X(s, float, z.F, 1)                                                                            \
    X(pre, float, chunk, z.F)      /* encoder product of one chunk */                              \
    X(acc, double, z.nth * z.F, LS_N) /* per-worker sums */                                        \
    X(act, int, z.nth, z.F)        /* per worker: active latents of one token */                   \
    X(xh, float, chunk, z.d2)      /* per token of the chunk: its reconstruction */

#define FIELD(f, ctype, ...) ctype *f;
struct xc_scaling {
    xc_engine_t *e;             /* borrowed: dimensions and the worker pool */
    void *block;                /* owned: every array below */
    XC_SCALING_TENSORS(FIELD)
    float theta;
    long step, chunk;
    const float *x;
    long n;
    uint64_t tokens;
};
#undef FIELD

/* The frozen encoder product of one chunk, split by latent columns as in the step. */
static void scaling_gemm_task(void *ctx, int tid, int nth)
{
    xc_scaling_t *s = ctx;
    long lo, hi;
    int F = s->e->F, d2 = s->e->d2;
    xc_pool_range(F, tid, nth, &lo, &hi);
    if (hi > lo)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)s->n, (int)(hi - lo), d2, 1.0f, s->x, d2,
                    s->w_enc + (size_t)lo * d2, d2, 0.0f, s->pre + lo, F);
}

/* Threshold mode (reference): f = u * 1[u s > theta]; L1: f = u. */
static inline int scaling_active(const xc_scaling_t *s, float v, int j)
{
    return v > 0.0f && (s->e->cfg.model == XC_MODEL_L1 || v * s->s[j] > s->theta);
}

/* Per token of the chunk (split over workers): the threshold-mode code and this
 * shard's part of its reconstruction (b_dec on rank 0 only, first, so one shard
 * computes the unsharded sum); the parts are summed over shards next. */
static void scaling_dec_task(void *ctx, int tid, int nth)
{
    xc_scaling_t *s = ctx;
    const xc_engine_t *e = s->e;
    int F = e->F, d2 = e->d2;
    long lo, hi;
    xc_pool_range(s->n, tid, nth, &lo, &hi);
    for (long b = lo; b < hi; b++) {
        const float *pre = s->pre + (size_t)b * F;
        float *xh = s->xh + (size_t)b * d2;
        if (e->coll->rank == 0) memcpy(xh, s->b_dec, sizeof(float) * (size_t)d2);
        else memset(xh, 0, sizeof(float) * (size_t)d2);
        for (int j = 0; j < F; j++) {
            float v = pre[j] + s->b_enc[j];
            if (scaling_active(s, v, j)) cblas_saxpy(d2, v, s->w_dec + (size_t)j * d2, 1, xh, 1);
        }
    }
}

/* Per token, with the whole reconstruction: each active latent's sums against x
 * and xhat; e = x - xhat. */
static void scaling_accum_task(void *ctx, int tid, int nth)
{
    xc_scaling_t *s = ctx;
    const xc_engine_t *e = s->e;
    int F = e->F, d = e->d, d2 = e->d2, *act = s->act + (size_t)tid * F;
    double *acc = s->acc + (size_t)tid * F * LS_N;
    long lo, hi;
    xc_pool_range(s->n, tid, nth, &lo, &hi);
    for (long b = lo; b < hi; b++) {
        const float *pre = s->pre + (size_t)b * F, *x = s->x + (size_t)b * d2, *xh = s->xh + (size_t)b * d2;
        int na = 0;
        for (int j = 0; j < F; j++)
            if (scaling_active(s, pre[j] + s->b_enc[j], j)) act[na++] = j;
        for (int q = 0; q < na; q++) {
            int j = act[q];
            float f = pre[j] + s->b_enc[j];
            const float *v = s->w_dec + (size_t)j * d2 + d;
            double xb = cblas_sdot(d, v, 1, x, 1), xc = cblas_sdot(d, v, 1, x + d, 1);
            double rb = cblas_sdot(d, v, 1, xh, 1), rc = cblas_sdot(d, v, 1, xh + d, 1);
            double *a = acc + (size_t)j * LS_N;
            a[LS_F2] += (double)f * f;
            a[LS_E0] += f * (xb - rb);
            a[LS_E1] += f * (xc - rc);
            a[LS_R0] += f * rb;
            a[LS_R1] += f * rc;
            a[LS_CNT] += 1;
            a[LS_EE1] += (xc - rc) * (xc - rc);
            a[LS_RR1] += rc * rc;
        }
    }
}

/* Freezes the dictionary: training may go on between xc_scaling_add calls
 * without moving the estimate's target. */
xc_scaling_t *xc_scaling_new(xc_engine_t *e, int *err)
{
    if (e->dc) { /* per-model codes: a latent has two activations, and beta one (method.md 4) */
        if (err) *err = XC_EINVAL;
        return NULL;
    }
    xc_scaling_t *s = calloc(1, sizeof *s); /* owned by the caller; xc_scaling_destroy */
    if (!s) goto out_nomem;
    s->e = e;
    s->chunk = e->B < 512 ? e->B : 512;
    struct {
        size_t F, d2, nth;
    } z = {(size_t)e->F, (size_t)e->d2, (size_t)e->nth};
    size_t chunk = (size_t)s->chunk, total = 0;
#define SIZE(f, ctype, n0, n1) total += ((sizeof(ctype) * (n0) * (n1)) + 63) / 64 * 64;
    XC_SCALING_TENSORS(SIZE)
#undef SIZE
    if (posix_memalign(&s->block, 64, total) != 0) {
        s->block = NULL;
        goto out_free;
    }
    memset(s->block, 0, total);
    char *at = s->block;
#define POINT(f, ctype, n0, n1)                                                                    \
    s->f = (ctype *)(void *)at;                                                                    \
    at += ((sizeof(ctype) * (n0) * (n1)) + 63) / 64 * 64;
    XC_SCALING_TENSORS(POINT)
#undef POINT
    xc_engine_ensure_norms(e);
    memcpy(s->w_enc, e->w_enc, 4 * z.F * z.d2);
    memcpy(s->w_dec, e->w_dec, 4 * z.F * z.d2);
    memcpy(s->b_enc, e->b_enc, 4 * z.F);
    memcpy(s->b_dec, e->b_dec, 4 * z.d2);
    memcpy(s->s, e->s, 4 * z.F);
    s->theta = (float)e->theta;
    s->step = e->step;
    if (err) *err = XC_OK;
    return s;
out_free:
    xc_scaling_destroy(&s);
out_nomem:
    if (err) *err = XC_ENOMEM;
    return NULL;
}

/* Encodes x in chunks with the frozen dictionary and adds every chunk's sums.
 * Collective for a sharded engine (every shard, the same x): each chunk's
 * reconstructions are summed over the shards (XC_ECOLL: a peer failed; the
 * sums are then incomplete and the pass must be dropped). */
int xc_scaling_add(xc_scaling_t *s, const float *x, long n_tokens)
{
    if (!x || n_tokens < 1) return XC_EINVAL;
    xc_coll_t *c = s->e->coll;
    for (long at = 0; at < n_tokens; at += s->chunk) {
        s->n = n_tokens - at < s->chunk ? n_tokens - at : s->chunk;
        s->x = x + (size_t)at * s->e->d2;
        xc_pool_run(s->e->pool, scaling_gemm_task, s);
        xc_pool_run(s->e->pool, scaling_dec_task, s);
        if (c->allreduce(c, s->xh, s->n * s->e->d2, XC_COLL_F32, XC_COLL_SUM)) {
            s->x = NULL;
            return XC_ECOLL;
        }
        xc_pool_run(s->e->pool, scaling_accum_task, s);
    }
    s->x = NULL;
    s->tokens += (uint64_t)n_tokens;
    return XC_OK;
}

uint64_t xc_scaling_tokens(const xc_scaling_t *s) { return s->tokens; }
long xc_scaling_step(const xc_scaling_t *s) { return s->step; }

/* The workers' sums added in worker order (deterministic for a thread count),
 * then beta and nu per latent. */
void xc_scaling_result(const xc_scaling_t *s, xc_scaling_stats_t *out)
{
    int F = s->e->F;
    for (int j = 0; j < F; j++) {
        double sum[LS_N] = {0};
        for (int t = 0; t < s->e->nth; t++)
            for (int q = 0; q < LS_N; q++) sum[q] += s->acc[((size_t)t * F + j) * LS_N + q];
        xc_scaling_from_sums(sum, s->w_dec + (size_t)j * s->e->d2, s->e->d, s->e->cfg.scaling_min_active,
                             s->e->cfg.scaling_nu_min_z, &out[j]);
    }
}

void xc_scaling_destroy(xc_scaling_t **ps)
{
    xc_scaling_t *s = ps ? *ps : NULL;
    if (!s) return;
    free(s->block);
    free(s);
    *ps = NULL;
}
