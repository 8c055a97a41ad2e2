/* The crosscoder engine (shared/method.md sections 1-3): the training step and
 * everything around it. One BatchTopK step (forward_backward, then
 * xc_engine_train_step):
 *   1. PRE = X W_enc^T         dense sgemm, split by latent columns over the pool
 *   2. exact top k*B of r = u s, u = ReLU(PRE + b_enc)        (select.c, xc_select_topk)
 *   3. decoder forward, residual, loss, dL/dxhat and dL/df per entry (token-major)
 *   4. AuxK over the dead latents                             (auxk.c, token-major)
 *   5. encoder/decoder gradients, with the running Latent Scaling sums fused in
 *                                                             (latent-major)
 *   6. clip, Adam (all parameters) fused with the decoder norms for the next step,
 *      then the per-latent statistics and theta               (commit_stats)
 * Only step 1 (and Adam) touch every parameter; everything else is O(B k 2d).
 * The L1 baseline is dense (its codes are dense), using four sgemms (l1.c).
 * The tensors all live in one block described by one table (xc_engine_internal.h,
 * tensors.c).
 *
 * OpenBLAS runs single-threaded inside our pool's workers: the pool owns both
 * cores, no BLAS thread spins against our sparse passes, and results are
 * deterministic for a given thread count. */
#include "xc_engine_internal.h"

#include "xc_error.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef XC_HAVE_AVX512_PATH
#include <immintrin.h>
#endif

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

/* ---------------------------------------------------------------- config */

#define WHY(...) (snprintf(why, why_len, __VA_ARGS__), XC_ECONFIG)

/* Every field checked where the engine would otherwise misbehave (a division
 * by zero, an allocation that overflows, Adam that diverges by construction),
 * with the key's name in the message, as the daemon's config keys are named. */
int xc_engine_config_validate(const xc_engine_config_t *c, char *why, size_t why_len)
{
    if (c->model != XC_MODEL_BATCHTOPK && c->model != XC_MODEL_L1)
        return WHY("model must be batchtopk or l1");
    if (c->d < 1 || c->d > (1 << 20)) return WHY("d must be in [1, 1048576], got %d", c->d);
    if (c->dict_size < 1) return WHY("dict_size must be >= 1, got %d", c->dict_size);
    if (c->batch_size < 1) return WHY("batch_size must be >= 1, got %d", c->batch_size);
    if ((double)c->batch_size * c->dict_size > 4e9)
        return WHY("batch_size * dict_size must stay below 4e9 (scratch of that many floats)");
    if (c->model == XC_MODEL_BATCHTOPK && (c->k < 1 || c->k > c->dict_size))
        return WHY("k must be in [1, dict_size=%d], got %d", c->dict_size, c->k);
    if (c->model == XC_MODEL_BATCHTOPK && (c->k_max < 0 || c->k_max > c->dict_size))
        return WHY("k_max must be 0 (= k) or in [1, dict_size=%d], got %d", c->dict_size, c->k_max);
    if (c->k_annealing_steps < 0) return WHY("k_annealing_steps must be >= 0");
    if (c->model == XC_MODEL_BATCHTOPK && c->k_max > 0 && c->k_max != c->k && c->k_annealing_steps == 0)
        return WHY("k_max (%d) differs from k (%d) but k_annealing_steps is 0: the reference would train at k_max "
                   "for ever; set k_annealing_steps (the steps from k_max to k) or leave k_max at 0",
                   c->k_max, c->k);
    if (c->code_norm < XC_CODE_CROSSCODER || c->code_norm > XC_CODE_DECOUPLED)
        return WHY("code_normalization must be crosscoder, sae, mixed, none or decoupled");
    if (!(c->code_alpha_sae >= 0) || !isfinite(c->code_alpha_sae) || !(c->code_alpha_cc >= 0) ||
        !isfinite(c->code_alpha_cc))
        return WHY("code_normalization_alpha_sae and code_normalization_alpha_cc must be finite and >= 0");
    if (!(c->lr > 0) || !isfinite(c->lr)) return WHY("lr must be a positive number");
    if (c->warmup_steps < 0) return WHY("warmup_steps must be >= 0");
    if (c->decay_start < 0 || (c->decay_start > 0 && c->total_steps <= c->decay_start))
        return WHY("decay_start must be 0 (off) or below total_steps");
    if (!(c->aux_coef >= 0) || !isfinite(c->aux_coef)) return WHY("aux_coef must be >= 0");
    if (c->dead_tokens < 1) return WHY("dead_tokens must be >= 1");
    if (!(c->init_norm > 0) || !isfinite(c->init_norm)) return WHY("init_norm must be > 0");
    if (!(c->l1_coef >= 0) || !isfinite(c->l1_coef)) return WHY("l1_coef must be >= 0");
    if (c->loss != XC_LOSS_L2 && c->loss != XC_LOSS_MSE) return WHY("loss must be l2 or mse");
    if (c->threshold_start_step < 0) return WHY("threshold_start_step must be >= 0");
    if (!(c->threshold_beta >= 0 && c->threshold_beta <= 1)) return WHY("threshold_beta must be in [0, 1]");
    if (!(c->clip_norm >= 0) || !isfinite(c->clip_norm)) return WHY("clip_norm must be >= 0 (0 = off)");
    if (!(c->adam_beta1 >= 0 && c->adam_beta1 < 1) || !(c->adam_beta2 >= 0 && c->adam_beta2 < 1))
        return WHY("adam_beta1 and adam_beta2 must be in [0, 1)");
    if (!(c->adam_eps > 0)) return WHY("adam_eps must be > 0");
    if (c->threads < 0 || c->threads > 256) return WHY("threads must be in [0, 256]");
    if (!(c->stats_half_life > 0)) return WHY("stats_half_life must be > 0 tokens");
    if (!(c->scaling_half_life > 0)) return WHY("scaling_half_life must be > 0 tokens");
    if (!(c->scaling_min_active >= 0)) return WHY("scaling_min_active must be >= 0");
    if (!(c->scaling_nu_min_z >= 0)) return WHY("scaling_nu_min_z must be >= 0");
    if (c->encoder_precision < XC_PREC_FP32 || c->encoder_precision > XC_PREC_INT8)
        return WHY("encoder_precision must be auto, fp32, bf16 or int8");
    return XC_OK;
}


/* Decoder norms of rows [lo, hi) and s, the code normalisation every score
 * r = u s uses (codenorm.c: the sum of the two norms by default), cached until
 * the decoder changes. */
static void norms_rows(xc_engine_t *e, long lo, long hi)
{
    int d = e->d;
    for (long j = lo; j < hi; j++) {
        const float *row = e->w_dec + (size_t)j * e->d2;
        float nb = cblas_snrm2(d, row, 1), nc = cblas_snrm2(d, row + d, 1);
        e->nrm[2 * j] = nb;
        e->nrm[2 * j + 1] = nc;
        e->s[j] = xc_code_norm_s(&e->cfg, nb, nc);
        e->s_m[j] = nb; /* decoupled: each model's own selection scores u ||d_j^m|| */
        e->s_m[e->F + j] = nc;
    }
}

/* norms_rows over the pool, split by latent. */
static void norms_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    long lo, hi;
    xc_pool_range(e->F, tid, nth, &lo, &hi);
    norms_rows(e, lo, hi);
}

/* Recomputes the cached norms only when something wrote the decoder outside
 * Adam (which refreshes them itself, fused into its pass). */
void xc_engine_ensure_norms(xc_engine_t *e)
{
    if (!e->norms_valid) {
        xc_pool_run(e->pool, norms_task, e);
        e->norms_valid = 1;
    }
}

/* ---------------------------------------------------------------- lifecycle */

/* method.md 1: encoder columns of norm init_norm, decoder = encoder transposed,
 * base and chat identical; drawn from the engine's RNG so a seed fixes the model.
 * A shard keeps only its columns [lo, lo + F) of the (d, Fg) matrix: every rank
 * draws the whole stream in the same order (so the values, and the RNG state
 * after init, match the unsharded engine) but stores d x F floats.
 * XC_ENOMEM when the temporary (d, F) matrix does not fit. */
static int init_params(xc_engine_t *e)
{
    int d = e->d, F = e->F, Fg = e->Fg;
    long lo = e->lo;
    /* One Kaiming-uniform (d, Fg) matrix (bound sqrt(6 / fan_in), fan_in = Fg as torch
     * computes it for a 2-D tensor) copied to both encoders; each column rescaled to
     * init_norm; W_dec = W_enc^T, so base and chat start identical. */
    double bound = sqrt(6.0 / Fg);
    float *col = malloc(sizeof(float) * (size_t)d);
    float *tmp = malloc(sizeof(float) * (size_t)d * F);
    if (!col || !tmp) {
        free(col);
        free(tmp);
        return XC_ENOMEM;
    }
    for (long i = 0; i < d; i++)
        for (long j = 0; j < Fg; j++) {
            float v = (float)((2.0 * xc_rng_uniform(&e->rng) - 1.0) * bound);
            if (j >= lo && j < lo + F) tmp[(size_t)i * F + (size_t)(j - lo)] = v;
        }
    for (int j = 0; j < F; j++) {
        double nn = 0;
        for (int i = 0; i < d; i++) {
            col[i] = tmp[(size_t)i * F + j];
            nn += (double)col[i] * col[i];
        }
        double sc = nn > 0 ? e->cfg.init_norm / sqrt(nn) : 0;
        float *er = e->w_enc + (size_t)j * e->d2, *dr = e->w_dec + (size_t)j * e->d2;
        for (int i = 0; i < d; i++) {
            float v = (float)(col[i] * sc);
            er[i] = er[d + i] = v;
            dr[i] = dr[d + i] = v;
        }
    }
    free(col);
    free(tmp);
    return XC_OK;
}

xc_engine_t *xc_engine_new(const xc_engine_config_t *cfg, int *err)
{
    return xc_engine_new_sharded(cfg, xc_coll_single(), err);
}

/* Creates the engine (one shard of it: xc_engine.h, sharding): validates cfg,
 * derives the sizes and this rank's latent slice, starts the pool, lays out
 * every tensor in one block (tensors.c), then initialises the parameters from
 * the seed. On any failure everything made so far is released. Collective only
 * in that every rank must make its engine before the first step; it exchanges
 * nothing itself. */
xc_engine_t *xc_engine_new_sharded(const xc_engine_config_t *cfg, xc_coll_t *coll, int *err)
{
    char why[256];
    int rc = coll ? xc_engine_config_validate(cfg, why, sizeof why) : XC_EINVAL;
    xc_engine_t *e = NULL;
    long lo = 0, nl = 0;

    if (rc) goto out_err;
    rc = XC_ECONFIG;
    if (coll->size < 1 || coll->rank < 0 || coll->rank >= coll->size) goto out_err;
    xc_coll_slice(cfg->dict_size, coll->size, coll->rank, &lo, &nl);
    if (nl < 1) goto out_err; /* more ranks than latents */
    if (coll->size > 1 && cfg->model != XC_MODEL_BATCHTOPK) goto out_err; /* L1 is not sharded */
    if (coll->size > 1 && cfg->code_norm == XC_CODE_DECOUPLED) goto out_err; /* per-model codes are not sharded */
    rc = XC_ENOMEM;
    e = calloc(1, sizeof *e); /* owned by the caller; xc_engine_destroy */
    if (!e) goto out_err;
    e->cfg = *cfg;
    e->coll = coll;
    e->lo = lo;
    e->Fg = cfg->dict_size;
    e->d = cfg->d;
    e->d2 = 2 * cfg->d;
    e->F = (int)nl;
    e->B = cfg->batch_size;
    int k0 = cfg->model == XC_MODEL_BATCHTOPK ? xc_engine_k_at(cfg, 0) : 0;
    int kmax = cfg->k_max > cfg->k ? cfg->k_max : cfg->k;
    e->dc = cfg->model == XC_MODEL_BATCHTOPK && cfg->code_norm == XC_CODE_DECOUPLED;
    e->K = k0 * cfg->batch_size;
    /* decoupled: two selections parked while merged into their union (codenorm.c) */
    e->K_alloc = cfg->model == XC_MODEL_BATCHTOPK ? (e->dc ? 4 : 1) * kmax * cfg->batch_size : 0;
    e->met.k = k0;
    e->kaux_max = cfg->model == XC_MODEL_BATCHTOPK ? (cfg->d / 2 < cfg->dict_size ? cfg->d / 2 : cfg->dict_size) : 0;
    e->nth = cfg->threads > 0 ? cfg->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (e->nth < 1) e->nth = 1;
    e->cfg.threads = e->nth;
    openblas_set_num_threads(1);
    e->pool = xc_pool_new(e->nth);
    e->w = calloc((size_t)e->nth, sizeof *e->w); /* owned by e */
    if (!e->pool || !e->w) goto out_free;
    if ((rc = xc_engine_alloc_tensors(e)) || (rc = xc_select_init(e))) goto out_free;

    for (int j = 0; j < e->F; j++) e->last_fired[j] = -1;
    xc_rng_seed(&e->rng, cfg->seed);
    if ((rc = init_params(e))) goto out_free;
    e->theta = -1.0;
    e->met.theta = -1.0;
    e->theta_m[0] = e->theta_m[1] = -1.0;
    e->met.theta_m[0] = e->met.theta_m[1] = -1.0;
    e->sel1 = e->sel; /* decoupled: the chat selection's own prefilter, fresh */
    e->met.ranks = coll->size;
    e->norms_valid = 0;
    xc_engine_ensure_norms(e);
    /* a precision this machine lacks runs fp32 (met.precision says which ran) */
    e->met.precision = XC_PREC_FP32;
    rc = xc_engine_set_precision(e, cfg->encoder_precision, NULL, 0);
    if (rc == XC_ENOMEM) goto out_free;
    if (err) *err = XC_OK;
    return e;

out_free:
    xc_engine_destroy(&e);
out_err:
    if (err) *err = rc;
    return NULL;
}

void xc_engine_destroy(xc_engine_t **pe)
{
    xc_engine_t *e = pe ? *pe : NULL;
    if (!e) return;
    xc_pool_destroy(&e->pool);
    xc_select_free(e);
    xc_score_destroy(&e->score);
    free(e->fve_w);
    free(e->exact_buf);
    free(e->gbuf);
    free(e->xbuf);
    free(e->abuf);
    free(e->w);
    xc_engine_free_tensors(e);
    free(e);
    *pe = NULL;
}
const xc_engine_config_t *xc_engine_config(const xc_engine_t *e) { return &e->cfg; }

/* Why weights: a model trained on per-dimension normalised activations reports
 * FVE in the original units, where each dimension's variance carries its
 * denormalisation factor squared (xc_norm_fve_weights). */
int xc_engine_set_fve_weights(xc_engine_t *e, const float *w)
{
    if (!w) {
        free(e->fve_w);
        e->fve_w = NULL;
        return XC_OK;
    }
    if (!e->fve_w && !(e->fve_w = malloc(sizeof(float) * (size_t)e->d2))) return XC_ENOMEM; /* owned by e */
    memcpy(e->fve_w, w, sizeof(float) * (size_t)e->d2);
    return XC_OK;
}

/* ---------------------------------------------------------------- batch check */

/* The one check a batch gets before it can touch the model: shape, and no
 * Inf/NaN (a single one would poison every parameter through Adam). */
int xc_engine_check_batch(const xc_engine_t *e, const float *x, long n_tokens)
{
    if (!x || n_tokens != e->B) return XC_ESHAPE;
    size_t n = (size_t)n_tokens * e->d2;
    uint32_t bad = 0;
    /* exponent all ones = Inf or NaN; OR-reduce so the loop vectorises */
    for (size_t i = 0; i < n; i++) bad |= ((xc_fbits(x[i]) & 0x7f800000u) == 0x7f800000u);
    return bad ? XC_ENONFINITE : XC_OK;
}

/* ---------------------------------------------------------------- encoder */

/* PRE[0:n] = X W_enc^T, split by latent columns: each worker's slice of W_enc
 * streams through its cache once, and the product is the step's only dense
 * O(B F 2d) pass (the scorer of the selection boundary). */
void xc_engine_enc_gemm_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    long lo, hi;
    xc_pool_range(e->F, tid, nth, &lo, &hi);
    if (hi > lo)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)e->n, (int)(hi - lo), e->d2, 1.0f,
                    e->x, e->d2, e->w_enc + (size_t)lo * e->d2, e->d2, 0.0f, e->pre + lo, e->F);
}


/* L1: u = ReLU(pre + b_enc) in place (its codes are dense and used by sgemms). */
static void relu_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    long lo, hi;
    int F = e->F;
    xc_pool_range(e->n, tid, nth, &lo, &hi);
    for (long b = lo; b < hi; b++) {
        float *u = e->pre + (size_t)b * F;
        for (int j = 0; j < F; j++) u[j] = xc_relu_u(e, u, j);
    }
}

/* ---------------------------------------------------------------- loss terms */

/* e = x - xhat for row b (xhat already in resid), loss terms and dR/dxhat. */
void xc_engine_residual_row(xc_engine_t *e, xc_worker_t *w, long b)
{
    int d = e->d, d2 = e->d2;
    const float *x = e->x + (size_t)b * d2;
    float *r = e->resid + (size_t)b * d2, *g = e->gx + (size_t)b * d2;
    double *acc = w->acc;
    double inv2B = 1.0 / (2.0 * e->B);
    for (int i = 0; i < d2; i++) {
        r[i] = x[i] - r[i];
        acc[i] += r[i];
        acc[d2 + i] += (double)r[i] * r[i];
        acc[2 * d2 + i] += x[i];
        acc[3 * d2 + i] += (double)x[i] * x[i];
    }
    for (int m = 0; m < 2; m++) {
        const float *rm = r + m * d;
        float *gm = g + m * d;
        double sq = 0;
        for (int i = 0; i < d; i++) sq += (double)rm[i] * rm[i];
        double nr = sqrt(sq);
        w->l2 += nr * inv2B;
        w->mse += sq * inv2B;
        /* dR/dxhat = -dR/de */
        double c = e->cfg.loss == XC_LOSS_MSE ? -2.0 * inv2B : (nr > 0 ? -inv2B / nr : 0.0);
        for (int i = 0; i < d; i++) gm[i] = (float)(c * rm[i]);
        /* g is c e: the Latent Scaling sums recover <v, e> from <v, g> (e = 0 where c = 0) */
        e->gscale[2 * b + m] = c != 0.0 ? (float)(1.0 / c) : 0.0f;
    }
}

/* Clears a worker's per-step sums before the decode pass adds into them. */
void xc_engine_worker_reset(xc_engine_t *e, xc_worker_t *w)
{
    memset(w->acc, 0, sizeof(double) * 4 * (size_t)e->d2);
    w->l2 = w->mse = w->aux_num = w->sq = w->l1 = 0;
    w->rmin = FLT_MAX;
    w->rmin_m[0] = w->rmin_m[1] = FLT_MAX;
}

/* Token-major sparse decode of this shard's entries into resid (b_dec added
 * by rank 0 only, first, so one rank computes exactly the unsharded sum); each
 * worker owns whole tokens, so the sums need no locks. Also the smallest
 * selected score, theta's sample. The shards' partial sums are then added
 * (one all-reduce of [B, 2d]) before resid_task. */
static void decode_sparse_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    xc_worker_t *w = &e->w[tid];
    long lo, hi;
    int d2 = e->d2;
    xc_pool_range(e->B, tid, nth, &lo, &hi);
    xc_engine_worker_reset(e, w);
    for (long b = lo; b < hi; b++) {
        float *xh = e->resid + (size_t)b * d2;
        if (e->coll->rank == 0) memcpy(xh, e->b_dec, sizeof(float) * (size_t)d2);
        else memset(xh, 0, sizeof(float) * (size_t)d2);
        for (long p = e->row_ptr[b]; p < e->row_ptr[b + 1]; p++) {
            if (e->dc) { /* x-hat^m from model m's codes only; theta_m's samples */
                int mk = e->emask[p], dd = e->d;
                for (int m = 0; m < 2; m++) {
                    if (!(mk >> m & 1)) continue;
                    cblas_saxpy(dd, e->val[p], e->w_dec + (size_t)e->col[p] * d2 + m * dd, 1, xh + m * dd, 1);
                    float r = e->val[p] * e->s_m[(size_t)m * e->F + e->col[p]];
                    if (r < w->rmin_m[m]) w->rmin_m[m] = r;
                }
                continue;
            }
            cblas_saxpy(d2, e->val[p], e->w_dec + (size_t)e->col[p] * d2, 1, xh, 1);
            float r = e->val[p] * e->s[e->col[p]];
            if (r < w->rmin) w->rmin = r;
        }
    }
}

/* After the sum over shards: residual, loss terms and dR/dxhat per token (the
 * same on every rank), then dL/df for this shard's entries. */
static void resid_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    xc_worker_t *w = &e->w[tid];
    long lo, hi;
    int d2 = e->d2;
    xc_pool_range(e->B, tid, nth, &lo, &hi);
    for (long b = lo; b < hi; b++) {
        xc_engine_residual_row(e, w, b);
        const float *g = e->gx + (size_t)b * d2;
        for (long p = e->row_ptr[b]; p < e->row_ptr[b + 1]; p++) {
            const float *row = e->w_dec + (size_t)e->col[p] * d2;
            if (e->dc && e->emask[p] != 3) { /* decoupled: dL/du through the selecting model only */
                int m = e->emask[p] >> 1, dd = e->d;
                e->gval[p] = cblas_sdot(dd, g + m * dd, 1, row + m * dd, 1);
            } else {
                e->gval[p] = cblas_sdot(d2, g, 1, row, 1);
            }
        }
    }
}

/* ---------------------------------------------------------------- gradients */

/* CSC over main then AuxK entries, so each latent's gradient is one thread's
 * work: the gradient pass writes each decoder/encoder row from one worker, with
 * no atomics and a fixed summation order (bit-exact for a thread count). */
static void build_csc(xc_engine_t *e)
{
    long *lp = e->lat_ptr;
    memset(lp, 0, sizeof(long) * (size_t)(e->F + 1));
    for (int j = 0; j < e->F; j++) lp[j + 1] = e->lat_cnt[j];
    for (long b = 0; b < e->B; b++) {
        long base = b * (long)e->kaux_max;
        for (long q = 0; q < e->aux_ptr[b + 1]; q++) lp[e->aux_col[base + q] + 1]++;
    }
    for (int j = 0; j < e->F; j++) lp[j + 1] += lp[j];
    long nmain = e->nnz;
    /* lat_ptr doubles as the fill cursor (rows ascending within each type), then is
     * shifted back to start offsets */
    for (long p = 0; p < nmain; p++) e->lat_ent[lp[e->col[p]]++] = (int)p;
    for (long b = 0; b < e->B; b++) {
        long base = b * (long)e->kaux_max;
        for (long q = 0; q < e->aux_ptr[b + 1]; q++)
            e->lat_ent[lp[e->aux_col[base + q]]++] = (int)(nmain + base + q);
    }
    /* lp[j] now points at the end of latent j = start of j+1: shift back */
    for (int j = e->F; j > 0; j--) lp[j] = lp[j - 1];
    lp[0] = 0;
}

/* Splits latents so that each worker gets about the same number of entries
 * (plus one per latent for its row overhead): firing is very uneven, so an even
 * split by latent index would leave workers idle. */
static void entry_range(const xc_engine_t *e, int tid, int nth, long *lo, long *hi)
{
    long total = e->lat_ptr[e->F] + e->F; /* +1 per latent for the row overhead */
    long a = total * tid / nth, z = total * (tid + 1) / nth;
    long l = 0, h = e->F;
    /* first j with lat_ptr[j] + j >= a */
    while (l < h) {
        long mid = (l + h) / 2;
        if (e->lat_ptr[mid] + mid < a) l = mid + 1;
        else h = mid;
    }
    *lo = l;
    l = 0;
    h = e->F;
    while (l < h) {
        long mid = (l + h) / 2;
        if (e->lat_ptr[mid] + mid < z) l = mid + 1;
        else h = mid;
    }
    *hi = tid == nth - 1 ? e->F : l;
}

/* y += a x over 2d floats, and the dot products of v (d floats) with each half of
 * x: the gradient pass streams x once for both (the running Latent Scaling sums
 * then cost about nothing). */
#ifdef XC_HAVE_AVX512_PATH
__attribute__((target("avx512f"))) static void axpy_dot2_avx512(int d, float a, const float *x, float *y,
                                                                  const float *v, double *lo, double *hi)
{
    __m512 va = _mm512_set1_ps(a), s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= d; i += 16) {
        __m512 vv = _mm512_loadu_ps(v + i), x0 = _mm512_loadu_ps(x + i), x1 = _mm512_loadu_ps(x + d + i);
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, x0, _mm512_loadu_ps(y + i)));
        _mm512_storeu_ps(y + d + i, _mm512_fmadd_ps(va, x1, _mm512_loadu_ps(y + d + i)));
        s0 = _mm512_fmadd_ps(vv, x0, s0);
        s1 = _mm512_fmadd_ps(vv, x1, s1);
    }
    double r0 = _mm512_reduce_add_ps(s0), r1 = _mm512_reduce_add_ps(s1);
    for (; i < d; i++) {
        y[i] += a * x[i];
        y[d + i] += a * x[d + i];
        r0 += (double)v[i] * x[i];
        r1 += (double)v[i] * x[d + i];
    }
    *lo = r0;
    *hi = r1;
}
#endif

/* axpy_dot2 on the CPU at hand: AVX-512 where the selection uses it, BLAS else. */
static void axpy_dot2(const xc_engine_t *e, float a, const float *x, float *y, const float *v, double *lo, double *hi)
{
#ifdef XC_HAVE_AVX512_PATH
    if (e->sel.use_avx512) {
        axpy_dot2_avx512(e->d, a, x, y, v, lo, hi);
        return;
    }
#endif
    cblas_saxpy(e->d2, a, x, 1, y, 1);
    *lo = cblas_sdot(e->d, v, 1, x, 1);
    *hi = cblas_sdot(e->d, v, 1, x + e->d, 1);
}

/* Latent-major gradients over the CSC: per latent j, d_j's gradient sums f *
 * dR/dxhat (main entries) or f * d(aux)/d ehat (AuxK entries), the encoder's
 * sums dL/df * x, b_enc's the dL/df. A latent with no entry has no gradient
 * (has_grad = 0; Adam still decays its moments). On a committed step the
 * running Latent Scaling sums ride along on the same reads. */
static void grad_sparse_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    xc_worker_t *w = &e->w[tid];
    long lo, hi, nmain = e->nnz;
    int d2 = e->d2;
    double sq = 0;
    entry_range(e, tid, nth, &lo, &hi);
    for (long j = lo; j < hi; j++) {
        long p0 = e->lat_ptr[j], p1 = e->lat_ptr[j + 1];
        double *ls = e->ls_step + (size_t)j * LS_N;
        memset(ls, 0, sizeof(double) * LS_N);
        if (p0 == p1) {
            e->has_grad[j] = 0;
            continue;
        }
        float *gd = e->g_dec + (size_t)j * d2, *ge = e->g_enc + (size_t)j * d2;
        const float *v = e->w_dec + (size_t)j * d2 + e->d; /* chat decoder row */
        double gb = 0;
        memset(gd, 0, sizeof(float) * (size_t)d2);
        memset(ge, 0, sizeof(float) * (size_t)d2);
        for (long p = p0; p < p1; p++) {
            long id = e->lat_ent[p];
            int b;
            float f, gf;
            const float *gsrc;
            if (id < nmain) {
                b = e->ent_row[id];
                f = e->val[id];
                gf = e->gval[id];
                gsrc = e->gx;
                if (e->dc && e->emask[id] != 3) { /* decoupled: d_j^m's gradient from model m's codes only */
                    int m = e->emask[id] >> 1, dd = e->d;
                    cblas_saxpy(dd, f, gsrc + (size_t)b * d2 + m * dd, 1, gd + m * dd, 1);
                    cblas_saxpy(d2, gf, e->x + (size_t)b * d2, 1, ge, 1);
                    gb += gf;
                    continue;
                }
                if (e->commit && e->cfg.scaling_running && !e->dc) {
                    /* Latent Scaling sums with this step's residual e (from g = c e) and
                     * <v, xhat> = <v, x> - <v, e>, fused with the two gradient updates */
                    double gb0, gb1, xb0, xb1;
                    axpy_dot2(e, f, e->gx + (size_t)b * d2, gd, v, &gb0, &gb1);
                    axpy_dot2(e, gf, e->x + (size_t)b * d2, ge, v, &xb0, &xb1);
                    double eb = gb0 * e->gscale[2 * b], ec = gb1 * e->gscale[2 * b + 1];
                    ls[LS_F2] += (double)f * f;
                    ls[LS_E0] += f * eb;
                    ls[LS_E1] += f * ec;
                    ls[LS_R0] += f * (xb0 - eb);
                    ls[LS_R1] += f * (xb1 - ec);
                    ls[LS_CNT] += 1;
                    ls[LS_EE1] += ec * ec;
                    ls[LS_RR1] += (xb1 - ec) * (xb1 - ec);
                    gb += gf;
                    continue;
                }
            } else {
                id -= nmain;
                b = e->aux_row[id];
                f = e->aux_val[id];
                gf = e->aux_gval[id];
                gsrc = e->hx;
            }
            cblas_saxpy(d2, f, gsrc + (size_t)b * d2, 1, gd, 1);
            cblas_saxpy(d2, gf, e->x + (size_t)b * d2, 1, ge, 1);
            gb += gf;
        }
        e->g_benc[j] = (float)gb;
        e->has_grad[j] = 1;
        double s1 = cblas_sdot(d2, gd, 1, gd, 1), s2 = cblas_sdot(d2, ge, 1, ge, 1);
        sq += s1 + s2 + gb * gb;
    }
    w->sq = sq;
}

/* b_dec gradient: sum over tokens of dR/dxhat (AuxK has no bias). */
static double grad_bdec(xc_engine_t *e)
{
    int d2 = e->d2;
    double sq = 0;
    for (int i = 0; i < d2; i++) {
        double g = 0;
        for (long b = 0; b < e->B; b++) g += e->gx[(size_t)b * d2 + i];
        e->g_bdec[i] = (float)g;
        sq += g * g;
    }
    return sq;
}

/* ---------------------------------------------------------------- forward + backward */

/* One of the workers' double sums (by offset), added in worker order. */
static double sum_w(const xc_engine_t *e, size_t off)
{
    double s = 0;
    for (int t = 0; t < e->nth; t++) s += *(const double *)((const char *)&e->w[t] + off);
    return s;
}

/* Fraction of variance explained per model, 1 - Var(e) / Var(x) summed over
 * dimensions (each weighted by fve_w when set), from the sums the decode pass
 * accumulated (no second pass over the batch). */
static void fill_fve(xc_engine_t *e)
{
    int d = e->d, d2 = e->d2;
    for (int m = 0; m < 2; m++) {
        double ve = 0, vx = 0;
        for (int i = m * d; i < (m + 1) * d; i++) {
            double se = 0, se2 = 0, sx = 0, sx2 = 0;
            for (int t = 0; t < e->nth; t++) {
                const double *a = e->w[t].acc;
                se += a[i];
                se2 += a[d2 + i];
                sx += a[2 * d2 + i];
                sx2 += a[3 * d2 + i];
            }
            double w = e->fve_w ? e->fve_w[i] : 1.0;
            ve += w * (se2 / e->B - (se / e->B) * (se / e->B));
            vx += w * (sx2 / e->B - (sx / e->B) * (sx / e->B));
        }
        e->met.fve[m] = vx > 0 ? 1.0 - ve / vx : 0.0;
    }
}

/* The latents dead after this step (unfired for dead_tokens tokens, counting
 * this step's fires in lat_cnt), over every shard: AuxK's k_aux and the dead
 * count both use it, and every rank must see the same number. */
static int count_dead(xc_engine_t *e)
{
    int64_t n = 0;
    for (int j = 0; j < e->F; j++) {
        uint64_t since = e->lat_cnt[j] ? 0 : e->since_fired[j] + (uint64_t)e->B;
        n += since >= (uint64_t)e->cfg.dead_tokens;
    }
    int rc = xc_ar(e, &n, 1, XC_COLL_I64, XC_COLL_SUM);
    e->n_dead_g = (int)n;
    return rc;
}

/* Forward and backward on e->x (B rows), shared by the training step and the
 * gradient check (compute_grads), so the two cannot drift apart. Leaves
 * gradients (rows flagged in has_grad), loss terms in e->met, the phases' wall
 * times, and the squared gradient norm in *sq. Changes no parameter. */
static int forward_backward(xc_engine_t *e, double *sq)
{
    double *ph = e->met.phase_ms, t0 = now_ms(), t1;
    const xc_score_cand_t *cand = NULL;
    long ncand = 0;
    int rc;
    e->n = e->B;
    xc_engine_ensure_norms(e);
    e->pre_approx = 0;
    if (e->cfg.model == XC_MODEL_BATCHTOPK) { /* k-annealing: this step's k (reference schedule) */
        e->met.k = xc_engine_k_at(&e->cfg, e->step);
        e->K = e->met.k * e->B;
    }
    /* reduced precision only when every shard has its scorer (one may have been
     * refused, e.g. by oneDNN): the scorer's collectives need them all; decoupled
     * codes score in fp32 always */
    int64_t all_score = e->score && e->cfg.model == XC_MODEL_BATCHTOPK && !e->dc;
    if ((rc = xc_ar(e, &all_score, 1, XC_COLL_I64, XC_COLL_MIN))) return rc;
    if (all_score) {
        /* reduced precision: candidates with exact scores, or XC_EAGAIN (on every
         * shard at once): fp32 */
        rc = xc_score_candidates(e->score, e->x, e->w_enc, e->b_enc, e->s, e->K, e->pre, &cand, &ncand);
        if (rc && rc != XC_EAGAIN) return rc;
        e->pre_approx = rc == XC_OK;
        const xc_score_stats_t *st = xc_score_stats(e->score);
        e->met.score_steps = st->steps;
        e->met.score_fallbacks = st->fallbacks;
        e->met.score_fp32_steps = st->fp32_calls;
        e->met.score_outliers = st->outliers;
        e->met.score_lambda = st->lambda;
        e->met.score_candidates = st->candidates;
    }
    if (!e->pre_approx) xc_pool_run(e->pool, xc_engine_enc_gemm_task, e);
    if (e->cfg.model == XC_MODEL_L1) xc_pool_run(e->pool, relu_task, e);
    t1 = now_ms();
    ph[XC_PHASE_ENCODE] = t1 - t0;
    if (e->pre_approx) { /* candidates and the exact recompute count as selection */
        const xc_score_stats_t *st = xc_score_stats(e->score);
        ph[XC_PHASE_ENCODE] = st->ms_quant + st->ms_matmul;
        t1 = t0 + ph[XC_PHASE_ENCODE];
    }
    double aux = 0;
    if (e->cfg.model == XC_MODEL_BATCHTOPK) {
        rc = e->dc ? xc_code_select_decoupled(e) : e->pre_approx ? xc_select_from_candidates(e, cand, ncand) : xc_select_topk(e);
        if (rc) return rc;
        if (e->lo > 0)
            for (long p = 0; p < e->nnz; p++) e->sel_col[p] = (int)(e->col[p] + e->lo);
        ph[XC_PHASE_SELECT] = now_ms() - t1;
        t1 = now_ms();
        xc_pool_run(e->pool, decode_sparse_task, e);
        /* x-hat = the shards' partial sums (rank 0's holds b_dec) */
        if ((rc = xc_ar(e, e->resid, (long)e->B * e->d2, XC_COLL_F32, XC_COLL_SUM))) return rc;
        xc_pool_run(e->pool, resid_task, e);
        memset(e->lat_cnt, 0, sizeof(int) * (size_t)e->F);
        for (long p = 0; p < e->nnz; p++) e->lat_cnt[e->col[p]]++;
        ph[XC_PHASE_DECODE] = now_ms() - t1;
        t1 = now_ms();
        if ((rc = count_dead(e))) return rc;
        rc = xc_auxk_run(e, &aux);
        if (rc) return rc;
        ph[XC_PHASE_AUXK] = now_ms() - t1;
        t1 = now_ms();
        build_csc(e);
        xc_pool_run(e->pool, grad_sparse_task, e);
        ph[XC_PHASE_GRAD] = now_ms() - t1;
        e->met.l1 = 0;
    } else {
        xc_l1_decode(e);
        ph[XC_PHASE_DECODE] = now_ms() - t1;
        t1 = now_ms();
        xc_l1_grad(e);
        ph[XC_PHASE_GRAD] = now_ms() - t1;
        if ((rc = count_dead(e))) return rc;
    }
    /* the step's sums over shards: squared gradient norm of the latent rows,
     * selected entries (L1: active), the L1 term; and theta's sample */
    double red[3] = {sum_w(e, offsetof(xc_worker_t, sq)), (double)e->nnz, e->met.l1};
    if (e->dc) red[1] = 0.5 * (double)(e->nnz_m[0] + e->nnz_m[1]); /* l0: per model, averaged */
    for (int m = 0; m < 2 && e->dc; m++) { /* decoupled (never sharded): theta_m's samples */
        float mm = FLT_MAX;
        for (int t = 0; t < e->nth; t++)
            if (e->w[t].rmin_m[m] < mm) mm = e->w[t].rmin_m[m];
        e->w[0].rmin_m[m] = mm;
    }
    if (e->cfg.model == XC_MODEL_L1) {
        red[1] = 0;
        for (int j = 0; j < e->F; j++) red[1] += e->lat_cnt[j];
    }
    float mn = FLT_MAX;
    for (int t = 0; t < e->nth; t++)
        if (e->w[t].rmin < mn) mn = e->w[t].rmin;
    if ((rc = xc_ar(e, red, 3, XC_COLL_F64, XC_COLL_SUM)) || (rc = xc_ar(e, &mn, 1, XC_COLL_F32, XC_COLL_MIN)))
        return rc;
    e->nnz_g = (long)red[1];
    e->rmin_g = mn;
    e->met.l1 = red[2];
    e->met.l0 = red[1] / e->B;
    e->met.recon_l2 = sum_w(e, offsetof(xc_worker_t, l2));
    e->met.recon_mse = sum_w(e, offsetof(xc_worker_t, mse));
    e->met.aux = aux;
    double recon = e->cfg.loss == XC_LOSS_MSE ? e->met.recon_mse : e->met.recon_l2;
    e->met.loss = recon + (e->cfg.model == XC_MODEL_BATCHTOPK ? e->cfg.aux_coef * aux
                                                               : e->cfg.l1_coef * e->met.l1);
    fill_fve(e);
    *sq = red[0] + grad_bdec(e);
    return XC_OK;
}

/* ---------------------------------------------------------------- Adam */

/* Adam on n values with the step's clip factor and bias corrections (computed
 * once per step in train_step). g = NULL means a zero gradient: a latent that
 * did not fire still has its moments decayed and its parameters moved, as
 * torch's dense Adam does, so resumed and reference runs agree. */
#ifdef XC_HAVE_AVX512_PATH
/* The same operations as the scalar loop below, in the same order and without
 * fused multiply-adds, 16 at a time: bit-identical results, several times the
 * speed, so the pass is bound by memory (28 bytes per value) rather than by the
 * divide and square root. */
__attribute__((target("avx512f"))) static int adam_vec_avx512(float *p, float *m, float *v, const float *g, int n,
                                                               const float *k)
{
    const __m512 b1 = _mm512_set1_ps(k[0]), c1 = _mm512_set1_ps(k[1]), b2 = _mm512_set1_ps(k[2]);
    const __m512 c2 = _mm512_set1_ps(k[3]), eps = _mm512_set1_ps(k[4]), sc = _mm512_set1_ps(k[5]);
    const __m512 step = _mm512_set1_ps(k[6]), isb2 = _mm512_set1_ps(k[7]);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 gi = g ? _mm512_mul_ps(_mm512_loadu_ps(g + i), sc) : _mm512_setzero_ps();
        __m512 mi = _mm512_add_ps(_mm512_mul_ps(b1, _mm512_loadu_ps(m + i)), _mm512_mul_ps(c1, gi));
        __m512 vi = _mm512_add_ps(_mm512_mul_ps(b2, _mm512_loadu_ps(v + i)), _mm512_mul_ps(_mm512_mul_ps(c2, gi), gi));
        __m512 den = _mm512_add_ps(_mm512_mul_ps(_mm512_sqrt_ps(vi), isb2), eps);
        __m512 pi = _mm512_sub_ps(_mm512_loadu_ps(p + i), _mm512_div_ps(_mm512_mul_ps(step, mi), den));
        _mm512_storeu_ps(m + i, mi);
        _mm512_storeu_ps(v + i, vi);
        _mm512_storeu_ps(p + i, pi);
    }
    return i;
}
#endif

static inline void adam_vec(float *p, float *m, float *v, const float *g, int n, const xc_engine_t *e)
{
    float b1 = e->cfg.adam_beta1, b2 = e->cfg.adam_beta2, eps = e->cfg.adam_eps;
    float sc = (float)e->grad_scale, step = (float)(e->lr_t / e->bc1), isb2 = (float)(1.0 / sqrt(e->bc2));
    int i = 0;
#ifdef XC_HAVE_AVX512_PATH
    if (e->sel.use_avx512 && n >= 16) {
        const float k[8] = {b1, 1.0f - b1, b2, 1.0f - b2, eps, sc, step, isb2};
        i = adam_vec_avx512(p, m, v, g, n, k);
    }
#endif
    for (; i < n; i++) {
        float gi = g ? g[i] * sc : 0.0f;
        m[i] = b1 * m[i] + (1.0f - b1) * gi;
        v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
        p[i] -= step * m[i] / (sqrtf(v[i]) * isb2 + eps);
    }
}

/* Adam over latent rows [lo, hi) of every per-latent parameter; each decoder
 * row's norms (next step's s) right after its update, while it is in cache. */
static void adam_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    long lo, hi;
    int d2 = e->d2;
    xc_pool_range(e->F, tid, nth, &lo, &hi);
    for (long j = lo; j < hi; j++) {
        size_t o = (size_t)j * d2;
        int hg = e->has_grad[j];
        adam_vec(e->w_enc + o, e->m_enc + o, e->v_enc + o, hg ? e->g_enc + o : NULL, d2, e);
        adam_vec(e->w_dec + o, e->m_dec + o, e->v_dec + o, hg ? e->g_dec + o : NULL, d2, e);
        adam_vec(e->b_enc + j, e->m_benc + j, e->v_benc + j, hg ? e->g_benc + j : NULL, 1, e);
        norms_rows(e, j, j + 1);
    }
}

/* The learning rate at a step: linear warm-up, constant, optional linear decay. */
static double lr_at(const xc_engine_config_t *c, long step)
{
    /* reference LambdaLR: step / warmup during warm-up (0 at the first step) */
    if (step < c->warmup_steps) return c->lr * (double)step / c->warmup_steps;
    if (c->decay_start > 0 && step >= c->decay_start)
        return c->lr * (double)(c->total_steps - step) / (double)(c->total_steps - c->decay_start);
    return c->lr;
}

/* ---------------------------------------------------------------- commit (stats, theta) */

/* After a good step (never after a skipped one): the per-latent statistics,
 * the running Latent Scaling sums (decayed over scaling_half_life tokens), the
 * dead count, and theta. Kept apart from forward_backward so compute_grads
 * leaves every statistic as it was. */
static void commit_stats(xc_engine_t *e)
{
    int F = e->F;
    uint64_t B = (uint64_t)e->B;
    double decay = pow(0.5, (double)e->B / e->cfg.stats_half_life);
    double ls_decay = pow(0.5, (double)e->B / e->cfg.scaling_half_life);
    for (size_t i = 0; i < (size_t)F * LS_N; i++) e->ls_run[i] = ls_decay * e->ls_run[i] + e->ls_step[i];
    if (e->cfg.model == XC_MODEL_BATCHTOPK) {
        for (long p = 0; p < e->nnz; p++) {
            int j = e->col[p];
            float f = e->val[p];
            e->sum_act[j] += f;
            if (f > e->max_act[j]) e->max_act[j] = f;
        }
    } else {
        for (long b = 0; b < e->B; b++) {
            const float *u = e->pre + (size_t)b * F;
            for (int j = 0; j < F; j++)
                if (u[j] > 0.0f) {
                    e->sum_act[j] += u[j];
                    if (u[j] > e->max_act[j]) e->max_act[j] = u[j];
                }
        }
    }
    for (int j = 0; j < F; j++) {
        int c = e->lat_cnt[j];
        e->fired[j] += (uint64_t)c;
        e->freq[j] = (float)(decay * e->freq[j] + (1.0 - decay) * ((double)c / e->B));
        if (c) {
            e->since_fired[j] = 0;
            e->last_fired[j] = e->step;
        } else {
            e->since_fired[j] += B;
        }
    }
    /* over every shard (count_dead, the same rule as the loop above) */
    e->met.n_dead = e->n_dead_g;
    e->met.dead_fraction = (double)e->n_dead_g / e->Fg;

    /* theta: EMA of the smallest selected u s (over every shard), after threshold_start_step */
    if (e->cfg.model == XC_MODEL_BATCHTOPK && e->step > e->cfg.threshold_start_step) {
        double mt = e->nnz_g > 0 ? e->rmin_g : 0.0;
        if (e->theta < 0) e->theta = mt;
        else e->theta = e->cfg.threshold_beta * e->theta + (1.0 - e->cfg.threshold_beta) * mt;
        /* decoupled (the reference's update_decoupled_threshold): one per model, from the
         * smallest u ||d_j^m|| that model selected (0 when it selected none) */
        for (int m = 0; m < 2 && e->dc; m++) {
            double mm = e->nnz_m[m] > 0 ? e->w[0].rmin_m[m] : 0.0;
            if (e->theta_m[m] < 0) e->theta_m[m] = mm;
            else e->theta_m[m] = e->cfg.threshold_beta * e->theta_m[m] + (1.0 - e->cfg.threshold_beta) * mm;
        }
        if (e->dc) e->theta = e->theta_m[0];
    }
    if (!e->dc) e->theta_m[0] = e->theta_m[1] = e->theta;
    e->met.theta = e->theta;
    e->met.theta_m[0] = e->theta_m[0];
    e->met.theta_m[1] = e->theta_m[1];
}

/* ---------------------------------------------------------------- public step */

/* This rank's collective traffic so far (per rank: not all-reduced). */
static void comm_metrics(xc_engine_t *e)
{
    e->met.comm_bytes = e->coll->bytes;
    e->met.comm_seconds = e->coll->seconds;
    e->met.comm_calls = e->coll->calls;
}

/* One step, all or nothing: a batch that fails the check, or a step whose loss
 * or gradient norm overflows, leaves the model exactly as it was (b_dec's
 * first-step initialisation included), so a bad batch costs one step, not the
 * run. Otherwise: statistics, clip, Adam, counters. */
int xc_engine_train_step(xc_engine_t *e, const float *x, long n_tokens)
{
    int rc = xc_engine_check_batch(e, x, n_tokens);
    if (rc) return rc;
    double t0 = now_ms();
    e->x = x;
    e->commit = 1;
    float bdec_keep[2 * XC_ENGINE_MAX_KEEP_D];
    int keep = e->step == 0 && e->cfg.model == XC_MODEL_BATCHTOPK && e->d2 <= 2 * XC_ENGINE_MAX_KEEP_D;
    if (keep) memcpy(bdec_keep, e->b_dec, sizeof(float) * (size_t)e->d2);
    if (e->step == 0 && e->cfg.model == XC_MODEL_BATCHTOPK) {
        /* b_dec = geometric median of the first batch, per model */
        for (int m = 0; m < 2; m++)
            xc_geometric_median(x + m * e->d, e->B, e->d, e->d2, 100, 1e-5, e->b_dec + m * e->d);
    }
    double sq;
    rc = forward_backward(e, &sq);
    comm_metrics(e);
    if (rc) {
        if (keep) memcpy(e->b_dec, bdec_keep, sizeof(float) * (size_t)e->d2);
        e->x = NULL;
        return rc;
    }
    double norm = sqrt(sq);
    if (!isfinite(norm) || !isfinite(e->met.loss)) {
        /* finite inputs can still overflow float (|x| ~ 1e20): skip the step, keep
         * the model as it was */
        if (keep) memcpy(e->b_dec, bdec_keep, sizeof(float) * (size_t)e->d2);
        e->x = NULL;
        return XC_ENONFINITE;
    }
    e->met.grad_norm = norm;
    e->grad_scale = 1.0;
    if (e->cfg.clip_norm > 0 && norm > e->cfg.clip_norm) e->grad_scale = e->cfg.clip_norm / (norm + 1e-6);
    commit_stats(e);
    double ta = now_ms();
    long t = e->step + 1; /* Adam's 1-based step count */
    e->lr_t = lr_at(&e->cfg, e->step);
    e->bc1 = 1.0 - pow(e->cfg.adam_beta1, (double)t);
    e->bc2 = 1.0 - pow(e->cfg.adam_beta2, (double)t);
    xc_pool_run(e->pool, adam_task, e);
    adam_vec(e->b_dec, e->m_bdec, e->v_bdec, e->g_bdec, e->d2, e);
    e->norms_valid = 1;
    e->met.phase_ms[XC_PHASE_ADAM] = now_ms() - ta;
    e->met.phase_ms[XC_PHASE_TOTAL] = now_ms() - t0;
    e->met.lr = e->lr_t;
    e->step++;
    e->tokens += (uint64_t)e->B;
    e->met.step = e->step;
    e->met.tokens = e->tokens;
    e->x = NULL;
    return XC_OK;
}

/* The gradient the next step would apply (before clipping), dense, for the
 * finite-difference tests: the same forward_backward, without commit. */
int xc_engine_compute_grads(xc_engine_t *e, const float *x, long n_tokens, xc_engine_params_t *g,
                            xc_engine_metrics_t *m)
{
    int rc = xc_engine_check_batch(e, x, n_tokens);
    if (rc) return rc;
    e->x = x;
    e->commit = 0;
    double sq;
    rc = forward_backward(e, &sq);
    comm_metrics(e);
    e->x = NULL;
    if (rc) return rc;
    size_t d2 = (size_t)e->d2;
    for (long j = 0; j < e->F; j++) {
        int hg = e->has_grad[j];
        for (size_t i = 0; i < d2; i++) {
            g->w_enc[j * d2 + i] = hg ? e->g_enc[j * d2 + i] : 0.0f;
            g->w_dec[j * d2 + i] = hg ? e->g_dec[j * d2 + i] : 0.0f;
        }
        g->b_enc[j] = hg ? e->g_benc[j] : 0.0f;
    }
    memcpy(g->b_dec, e->g_bdec, sizeof(float) * d2);
    if (m) {
        *m = e->met;
        m->grad_norm = sqrt(sq);
    }
    return XC_OK;
}

/* ---------------------------------------------------------------- inference */

/* Inference codes in place of the pre-activations: BatchTopK in threshold mode
 * (a per-token rule, so a code does not depend on the other tokens of a
 * request, unlike the training selection); L1 f = u. */
static void threshold_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    long lo, hi;
    int F = e->F;
    xc_pool_range(e->n, tid, nth, &lo, &hi);
    float th = (float)e->theta;
    for (long b = lo; b < hi; b++) {
        float *u = e->pre + (size_t)b * F;
        for (int j = 0; j < F; j++) {
            float v = u[j] + e->b_enc[j];
            v = v > 0.0f ? v : 0.0f;
            /* reference: f = u * (u s > threshold); theta < 0 (unset) keeps all; decoupled:
             * the latent is coded when either model's rule keeps it (a union: x-hat^m needs
             * model m's own codes, u 1[u ||d_j^m|| > theta_m]) */
            if (e->dc) {
                if (!(v * e->s_m[j] > (float)e->theta_m[0]) && !(v * e->s_m[F + j] > (float)e->theta_m[1])) v = 0.0f;
            } else if (e->cfg.model == XC_MODEL_BATCHTOPK && !(v * e->s[j] > th)) {
                v = 0.0f;
            }
            u[j] = v;
        }
    }
}

/* Any number of rows, in chunks of batch_size so the step's scratch serves.
 * Each shard codes its latents; the chunk's codes of every shard are gathered
 * (rank-major blocks) and laid out as full rows, so every rank returns the
 * whole (n, dict_size) codes. */
int xc_engine_encode(xc_engine_t *e, const float *x, long n, float *f_out)
{
    if (!x || !f_out || n < 1) return XC_EINVAL;
    xc_engine_ensure_norms(e);
    int R = e->coll->size, rc = XC_OK;
    size_t *rb = malloc(sizeof(size_t) * (size_t)R); /* owned here */
    size_t need = sizeof(float) * (size_t)(n < e->B ? n : e->B) * (size_t)e->Fg;
    if (!rb) return XC_ENOMEM;
    if (need > e->xcap) {
        float *p = realloc(e->xbuf, need);
        if (!p) {
            free(rb);
            return XC_ENOMEM;
        }
        e->xbuf = p;
        e->xcap = need;
    }
    for (long at = 0; at < n && !rc; at += e->B) {
        long c = n - at < e->B ? n - at : e->B;
        e->x = x + (size_t)at * e->d2;
        e->n = c;
        xc_pool_run(e->pool, xc_engine_enc_gemm_task, e);
        xc_pool_run(e->pool, threshold_task, e);
        for (int r = 0; r < R; r++) {
            long lo, nr;
            xc_coll_slice(e->Fg, R, r, &lo, &nr);
            rb[r] = sizeof(float) * (size_t)c * (size_t)nr;
        }
        if (e->coll->allgatherv(e->coll, e->pre, sizeof(float) * (size_t)c * e->F, e->xbuf, rb)) {
            rc = XC_ECOLL;
            break;
        }
        const float *blk = e->xbuf;
        for (int r = 0; r < R; r++) {
            long lo, nr;
            xc_coll_slice(e->Fg, R, r, &lo, &nr);
            for (long b = 0; b < c; b++)
                memcpy(f_out + (size_t)(at + b) * e->Fg + lo, blk + (size_t)b * nr, sizeof(float) * (size_t)nr);
            blk += (size_t)c * nr;
        }
    }
    free(rb);
    comm_metrics(e);
    e->x = NULL;
    return rc;
}

/* Dense decode of caller codes (one sgemm on the calling thread: decode
 * requests are rare and small next to training): each shard multiplies its
 * columns of f, the partial products are summed over shards, then b_dec. */
int xc_engine_decode(xc_engine_t *e, const float *f, long n, float *xhat_out)
{
    if (!f || !xhat_out || n < 1) return XC_EINVAL;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, e->d2, e->F, 1.0f, f + e->lo, e->Fg,
                e->w_dec, e->d2, 0.0f, xhat_out, e->d2);
    int rc = xc_ar(e, xhat_out, n * e->d2, XC_COLL_F32, XC_COLL_SUM);
    comm_metrics(e);
    if (rc) return rc;
    for (long b = 0; b < n; b++)
        for (int i = 0; i < e->d2; i++) xhat_out[(size_t)b * e->d2 + i] += e->b_dec[i];
    return XC_OK;
}

/* ---------------------------------------------------------------- accessors */

const xc_engine_metrics_t *xc_engine_metrics(const xc_engine_t *e) { return &e->met; }

/* Per-latent statistics for readers: decoder-norm geometry (method.md 3) in
 * double from the live decoder, the rest from the counters. */
void xc_engine_latent_stats(const xc_engine_t *e, xc_latent_stats_t *out)
{
    int d = e->d;
    for (int j = 0; j < e->F; j++) {
        const float *r = e->w_dec + (size_t)j * e->d2;
        xc_latent_stats_t *o = &out[j];
        double nb = 0, nc = 0, dot = 0;
        for (int i = 0; i < d; i++) {
            nb += (double)r[i] * r[i];
            nc += (double)r[d + i] * r[d + i];
            dot += (double)r[i] * r[d + i];
        }
        nb = sqrt(nb);
        nc = sqrt(nc);
        double mx = nb > nc ? nb : nc;
        o->norm_base = (float)nb;
        o->norm_chat = (float)nc;
        o->delta_norm = mx > 0 ? (float)(0.5 * ((nc - nb) / mx + 1.0)) : 0.5f;
        o->cosine = nb > 0 && nc > 0 ? (float)(dot / (nb * nc)) : 0.0f;
        o->freq = e->freq[j];
        o->fired = e->fired[j];
        o->mean_act = e->fired[j] ? (float)(e->sum_act[j] / (double)e->fired[j]) : 0.0f;
        o->max_act = e->max_act[j];
        o->tokens_since_fired = e->since_fired[j];
        o->last_step_fired = e->last_fired[j];
        o->dead = e->since_fired[j] >= (uint64_t)e->cfg.dead_tokens;
    }
}

void xc_engine_params(xc_engine_t *e, xc_engine_params_t *out)
{
    out->w_enc = e->w_enc;
    out->b_enc = e->b_enc;
    out->w_dec = e->w_dec;
    out->b_dec = e->b_dec;
}

void xc_engine_params_changed(xc_engine_t *e) { e->norms_valid = 0; }
void xc_engine_shard(const xc_engine_t *e, long *lo, long *n)
{
    if (lo) *lo = e->lo;
    if (n) *n = e->F;
}
xc_coll_t *xc_engine_coll(const xc_engine_t *e) { return e->coll; }

int xc_engine_allgather_var(xc_engine_t *e, const void *send, size_t bytes, void **buf, size_t *cap,
                            size_t *total)
{
    /* sizes first (every rank must know every contribution's size), then the data */
    int R = e->coll->size, rc = XC_OK;
    int64_t *sz = calloc((size_t)R, sizeof(int64_t)), mine = (int64_t)bytes; /* owned here */
    size_t *rb = calloc((size_t)R, sizeof(size_t));
    if (!sz || !rb) {
        rc = XC_ENOMEM;
        goto out;
    }
    for (int r = 0; r < R; r++) rb[r] = sizeof(int64_t);
    if (e->coll->allgatherv(e->coll, &mine, sizeof mine, sz, rb)) {
        rc = XC_ECOLL;
        goto out;
    }
    size_t t = 0;
    for (int r = 0; r < R; r++) t += rb[r] = (size_t)sz[r];
    if (t > *cap || !*buf) {
        void *p = realloc(*buf, t ? t : 1);
        if (!p) {
            rc = XC_ENOMEM;
            goto out;
        }
        *buf = p;
        *cap = t;
    }
    if (e->coll->allgatherv(e->coll, send, bytes, *buf, rb)) rc = XC_ECOLL;
    *total = t;
out:
    free(sz);
    free(rb);
    return rc;
}
uint64_t *xc_engine_dead_counters(xc_engine_t *e) { return e->since_fired; }
void xc_engine_set_theta(xc_engine_t *e, double theta)
{
    e->theta = theta;
    e->met.theta = theta;
    e->theta_m[0] = e->theta_m[1] = theta;
    e->met.theta_m[0] = e->met.theta_m[1] = theta;
}

const unsigned char *xc_engine_selection_models(const xc_engine_t *e) { return e->dc ? e->emask : NULL; }

void xc_engine_set_theta_models(xc_engine_t *e, double base, double chat)
{
    xc_engine_set_theta(e, base);
    if (e->dc) e->theta_m[1] = e->met.theta_m[1] = chat;
}

long xc_engine_selection(const xc_engine_t *e, const long **row_ptr, const int **col, const float **val)
{
    if (row_ptr) *row_ptr = e->row_ptr;
    if (col) *col = e->lo > 0 ? e->sel_col : e->col; /* global latent indices */
    if (val) *val = e->val;
    return e->cfg.model == XC_MODEL_BATCHTOPK ? e->nnz : 0;
}

void xc_engine_adam_state(xc_engine_t *e, xc_engine_params_t *m, xc_engine_params_t *v, long *step)
{
    if (m) *m = (xc_engine_params_t){e->m_enc, e->m_benc, e->m_dec, e->m_bdec};
    if (v) *v = (xc_engine_params_t){e->v_enc, e->v_benc, e->v_dec, e->v_bdec};
    if (step) *step = e->step;
}


/* ---------------------------------------------------------------- reduced-precision scoring */

typedef struct {
    xc_engine_t *e;
    const int *cols;
    int n;
} exact_cols_t;

/* Chunks of XC_EXACT_COLS columns per worker: gather their W_enc rows, one sgemm
 * against the batch, scatter into pre. */
static void exact_cols_task(void *ctx, int tid, int nth)
{
    exact_cols_t *c = ctx;
    xc_engine_t *e = c->e;
    int d2 = e->d2;
    float *wg = e->exact_buf + (size_t)tid * XC_EXACT_COLS * (size_t)(d2 + e->B);
    float *cg = wg + (size_t)XC_EXACT_COLS * d2;
    for (int lo = tid * XC_EXACT_COLS; lo < c->n; lo += nth * XC_EXACT_COLS) {
        int m = c->n - lo < XC_EXACT_COLS ? c->n - lo : XC_EXACT_COLS;
        for (int i = 0; i < m; i++)
            memcpy(wg + (size_t)i * d2, e->w_enc + (size_t)c->cols[lo + i] * d2, sizeof(float) * (size_t)d2);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, e->B, m, d2, 1.0f, e->x, d2, wg, d2, 0.0f, cg, m);
        for (long b = 0; b < e->B; b++)
            for (int i = 0; i < m; i++) e->pre[(size_t)b * e->F + c->cols[lo + i]] = cg[(size_t)b * m + i];
    }
}

void xc_engine_exact_columns(xc_engine_t *e, const int *cols, int n)
{
    exact_cols_t c = {e, cols, n};
    if (n > 0) xc_pool_run(e->pool, exact_cols_task, &c);
}

/* The scorer lives with the engine's shapes and pool; switching precision
 * between steps replaces it. The L1 model's codes are dense (every u is used),
 * so it always scores in fp32. */
int xc_engine_set_precision(xc_engine_t *e, xc_prec_t p, char *why, size_t why_len)
{
    if (p < XC_PREC_FP32 || p > XC_PREC_INT8) {
        xc_why(why, why_len, "encoder_precision must be auto, fp32, bf16 or int8");
        return XC_EINVAL;
    }
    xc_prec_t r = xc_score_resolve(p);
    if (r != p && p != XC_PREC_AUTO) xc_score_supported(p, why, why_len);
    if (e->cfg.model != XC_MODEL_BATCHTOPK && r != XC_PREC_FP32) {
        xc_why(why, why_len, "the L1 model scores in fp32 (its codes are dense)");
        r = XC_PREC_FP32;
    }
    e->cfg.encoder_precision = p;
    if (e->score && xc_score_prec(e->score) == r) return XC_OK;
    xc_score_destroy(&e->score);
    e->met.precision = XC_PREC_FP32;
    if (r == XC_PREC_FP32) return XC_OK;
    if (!e->exact_buf) {
        /* owned by e: XC_EXACT_COLS W rows and their B x XC_EXACT_COLS product per worker */
        e->exact_buf = malloc(sizeof(float) * (size_t)e->nth * XC_EXACT_COLS * (size_t)(e->d2 + e->B));
        if (!e->exact_buf) return XC_ENOMEM;
    }
    int err = XC_OK;
    e->score = xc_score_new(r, e->B, e->d2, e->F, e->pool, &err, why, why_len);
    if (!e->score) return err;
    xc_score_set_coll(e->score, e->coll);
    e->met.precision = r;
    return XC_OK;
}

const char *xc_engine_score_kernel(const xc_engine_t *e)
{
    return e->score ? xc_score_kernel(e->score) : "openblas sgemm";
}

static int cmp_long(const void *pa, const void *pb)
{
    long a = *(const long *)pa, b = *(const long *)pb;
    return (a > b) - (a < b);
}

/* The selection as sorted flat indices b*F + j (caller frees). */
static long *selection_flat(const xc_engine_t *e)
{
    long *v = malloc(sizeof(long) * (size_t)(e->nnz + 1));
    if (!v) return NULL;
    for (long p = 0; p < e->nnz; p++) v[p] = (long)e->ent_row[p] * e->Fg + e->lo + e->col[p];
    qsort(v, (size_t)e->nnz, sizeof(long), cmp_long);
    return v;
}

/* Both selections on the same parameters; an entry only fp32 took is a mismatch
 * when, in exact arithmetic, it ranks above the reduced selection's last entry. */
int xc_engine_selection_check(xc_engine_t *e, const float *x, long n_tokens, long *differ, long *mismatch,
                              int *fell_back)
{
    int rc = xc_engine_check_batch(e, x, n_tokens);
    *differ = *mismatch = 0;
    *fell_back = 0;
    if (rc || e->cfg.model != XC_MODEL_BATCHTOPK || e->dc) return rc; /* decoupled scores in fp32 */
    int64_t all_score = e->score != NULL; /* every shard must have its scorer */
    if ((rc = xc_ar(e, &all_score, 1, XC_COLL_I64, XC_COLL_MIN)) || !all_score) return rc;
    const xc_score_cand_t *c;
    long n, *a = NULL, *b = NULL;
    e->x = x;
    e->n = e->B;
    xc_engine_ensure_norms(e);
    rc = xc_score_candidates(e->score, x, e->w_enc, e->b_enc, e->s, e->K, e->pre, &c, &n);
    if (rc == XC_EAGAIN) {
        *fell_back = 1;
        rc = XC_OK;
        goto out;
    }
    if (rc || (rc = xc_select_from_candidates(e, c, n))) goto out;
    long na = e->nnz;
    float cut_r = FLT_MAX;
    int64_t cut_idx = -1, na_g = na;
    for (long p = 0; p < na; p++) {
        float r = e->val[p] * e->s[e->col[p]];
        long idx = (long)e->ent_row[p] * e->Fg + e->lo + e->col[p];
        if (r < cut_r || (r == cut_r && idx > cut_idx)) cut_r = r, cut_idx = idx;
    }
    /* the reduced selection's last entry over every shard */
    if ((rc = xc_ar(e, &cut_r, 1, XC_COLL_F32, XC_COLL_MIN))) goto out;
    {
        int64_t ci = -1;
        for (long p = 0; p < na; p++) {
            float r = e->val[p] * e->s[e->col[p]];
            long idx = (long)e->ent_row[p] * e->Fg + e->lo + e->col[p];
            if (r == cut_r && idx > ci) ci = idx;
        }
        cut_idx = ci;
    }
    if ((rc = xc_ar(e, &cut_idx, 1, XC_COLL_I64, XC_COLL_MAX)) || (rc = xc_ar(e, &na_g, 1, XC_COLL_I64, XC_COLL_SUM)))
        goto out;
    a = selection_flat(e);
    xc_pool_run(e->pool, xc_engine_enc_gemm_task, e);
    if (!a || (rc = xc_select_topk(e))) goto out_nomem;
    long nb = e->nnz;
    b = selection_flat(e);
    if (!b) goto out_nomem;
    for (long i = 0, j = 0; i < na || j < nb;) {
        if (j >= nb || (i < na && a[i] < b[j])) {
            (*differ)++, i++;
        } else if (i >= na || b[j] < a[i]) {
            long idx = b[j++], bt = idx / e->Fg;
            int lat = (int)(idx % e->Fg - e->lo);
            float v = xc_score_dot(x + (size_t)bt * e->d2, e->w_enc + (size_t)lat * e->d2, e->d2) + e->b_enc[lat];
            float r = (v > 0.0f ? v : 0.0f) * e->s[lat];
            (*differ)++;
            if (na_g == e->K && (r > cut_r || (r == cut_r && idx < cut_idx))) (*mismatch)++;
            if (na_g < e->K && r > 0.0f) (*mismatch)++; /* took every positive, yet missed one */
        } else {
            i++, j++;
        }
    }
    {
        int64_t cnt[2] = {*differ, *mismatch};
        if ((rc = xc_ar(e, cnt, 2, XC_COLL_I64, XC_COLL_SUM))) goto out;
        *differ = cnt[0];
        *mismatch = cnt[1];
    }
    goto out;
out_nomem:
    if (!rc) rc = XC_ENOMEM;
out:
    free(a);
    free(b);
    comm_metrics(e);
    e->x = NULL;
    return rc;
}
