/* The crosscoder engine (shared/method.md sections 1-3).
 *
 * One BatchTopK step:
 *   1. PRE = X W_enc^T             dense sgemm, split by latent columns over the pool
 *   2. u = ReLU(PRE + b_enc), r = u s; histogram of r's top 16 bits      (pass A)
 *   3. boundary bucket of the k*B-th largest r; rows count the entries above it and
 *      collect the boundary candidates                                    (pass B)
 *   4. candidates sorted by (r desc, flat index asc): exact top-k*B with ties
 *      broken towards the lower flat index b*F + j
 *   5. CSR of the selected entries per token                              (pass C)
 *   6. decoder forward, residual, loss, dL/dxhat and dL/df per entry      (token-major)
 *   7. AuxK over the dead latents                                         (token-major)
 *   8. encoder/decoder gradients                                          (latent-major)
 *   9. clip, Adam (all parameters) fused with the decoder norms for the next step
 * Only step 1 (and Adam) touch every parameter; everything else is O(B k 2d).
 * The L1 baseline is dense (its codes are dense), using four sgemms.
 *
 * OpenBLAS runs single-threaded inside our pool's workers: the pool owns both
 * cores, no BLAS thread spins against our sparse passes, and results are
 * deterministic for a given thread count. */
#include "xc_engine.h"

#include "xc_error.h"
#include "xc_pool.h"
#include "xc_rng.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define XC_HAVE_AVX512_PATH 1
#endif

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

#define NBUCKET 32768 /* top 16 bits of a positive float */
/* Latent Scaling sums per latent: sum f^2, sum f<v,e^base>, sum f<v,e^chat>,
 * sum f<v,xhat^base>, sum f<v,xhat^chat>, count */
enum { LS_F2 = 0, LS_E0, LS_E1, LS_R0, LS_R1, LS_CNT, LS_N };
#define XC_ENGINE_MAX_KEEP_D 8192 /* b_dec restored on a skipped first step up to this d */

typedef struct {
    int b, j;    /* token, latent */
    float r, u;  /* score u s, activation u */
} cand_t;

typedef struct {
    float r;
    int j;
} scored_t;

/* Per-worker scratch, allocated once. */
typedef struct {
    uint32_t *hist;       /* (NBUCKET) */
    cand_t *cand;         /* boundary candidates; grows on demand */
    long ncand, cand_cap;
    scored_t *dead_sc;    /* (F) AuxK candidates of one token */
    double *acc;          /* (4, 2d): sum e, sum e^2, sum x, sum x^2 */
    double l2, mse, aux_num, sq, l1;
    long npos;
    float rmin;
} worker_t;

struct xc_engine {
    xc_engine_config_t cfg;
    int d, d2, F, B, K, kaux_max, nth;
    xc_pool_t *pool;            /* owned */
    worker_t *w;                /* (nth) owned */

    /* parameters and their Adam moments: one block each, with views */
    float *w_enc, *b_enc, *w_dec, *b_dec;          /* (F,2d) (F) (F,2d) (2d) */
    float *m_enc, *v_enc, *m_benc, *v_benc, *m_dec, *v_dec, *m_bdec, *v_bdec;
    float *g_enc, *g_benc, *g_dec, *g_bdec;        /* gradients (rows valid where has_grad) */
    unsigned char *has_grad;                       /* (F) */

    float *nrm;                 /* (F, 2) decoder row norms */
    float *s;                   /* (F) code normalisation ||d_base|| + ||d_chat|| */
    int norms_valid;

    /* per-latent state */
    uint64_t *since_fired;      /* (F) tokens since last fired */
    unsigned char *dead;        /* (F) AuxK mask for the current step */
    int *dead_list, n_dead_list;
    uint64_t *fired;            /* (F) cumulative token-activations */
    double *sum_act;            /* (F) */
    float *max_act;             /* (F) */
    float *freq;                /* (F) EMA of fires per token */
    long *last_fired;           /* (F) */
    double *ls_run;             /* (F, LS_N) running Latent Scaling sums (EMA) */
    double *ls_step;            /* (F, LS_N) this step's sums */
    float *ls_t1, *ls_t2;       /* (F, 2d) L1 only: U^T E and U^T X */

    /* step scratch */
    float *pre;                 /* (B, F) pre-activations, then u in place */
    float *dpre;                /* (B, F) L1 only */
    float *resid;               /* (B, 2d) e = x - xhat */
    float *gx;                  /* (B, 2d) dR/dxhat */
    float *hx;                  /* (B, 2d) d(aux term)/d ehat */
    float *ehat;                /* (B, 2d) AuxK reconstruction */
    float *gscale;              /* (B, 2) e = gscale * dR/dxhat per token and model (Latent Scaling) */
    long *row_ptr;              /* (B+1) selected entries per token (CSR) */
    long *row_cnt;              /* (B) */
    int *col, *ent_row;         /* (K) */
    float *val, *gval;          /* (K) f and dL/df */
    long nnz;
    long *aux_ptr;              /* (B+1): aux_ptr[b+1] = AuxK entries of token b, stored at b*kaux_max */
    int *aux_col, *aux_row;     /* (B * kaux_max) */
    float *aux_val, *aux_gval;
    long aux_nnz;
    int k_aux;
    long *lat_ptr;              /* (F+1) entries per latent (CSC over main + aux) */
    int *lat_cnt;               /* (F) main entries per latent this step */
    int *lat_ent;               /* (K + B*kaux_max) */

    /* selection state */
    uint64_t *hist64;           /* (NBUCKET) merged histogram */
    float tau, tau_frac;        /* fast-path filter: tau = tau_frac * last cut-off */
    long last_ncand, n_full_select;
    int fill_phase;
    int use_avx512;             /* the CPU runs the AVX-512 prefilter */
    int sel_all;                /* fewer positives than K: take every positive */
    long bucket_t;              /* boundary bucket */
    float cut_r;                /* boundary candidates kept: r > cut_r or r == cut_r && idx <= cut_idx */
    long cut_idx;

    const float *x;             /* borrowed batch during a step */
    long n;                     /* rows in the current pass (B, or an encode chunk) */
    int commit;
    double aux_denom, grad_scale, lr_t, bc1, bc2;
    double theta;
    long step;
    uint64_t tokens;
    xc_engine_metrics_t met;
    xc_rng_t rng;
    double scal[4];             /* theta, tau, tau_frac, full selects: saved with the state */
};

/* ---------------------------------------------------------------- config */

void xc_engine_config_default(xc_engine_config_t *c, xc_model_kind_t model)
{
    memset(c, 0, sizeof *c);
    c->model = model;
    c->d = 64;
    c->dict_size = 512;
    c->k = 8;
    c->batch_size = 256;
    c->lr = 1e-4f;
    c->warmup_steps = 1000;
    c->aux_coef = 1.0f / 32.0f;
    c->dead_tokens = 10000000L;
    c->init_norm = model == XC_MODEL_L1 ? 0.005f : 1.0f;
    c->l1_coef = 0.041f;
    c->loss = XC_LOSS_L2;
    c->threshold_start_step = 1000;
    c->threshold_beta = 0.999f;
    c->clip_norm = model == XC_MODEL_L1 ? 0.0f : 1.0f;
    c->adam_b1 = 0.9f;
    c->adam_b2 = 0.999f;
    c->adam_eps = 1e-8f;
    c->seed = 0;
    c->threads = 0;
    c->stats_half_life = 1e6;
    c->scaling_half_life = 1e6;
    c->scaling_min_active = 20;
    c->scaling_running = 1;
}

#define WHY(...) (snprintf(why, why_len, __VA_ARGS__), XC_ECONFIG)

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
    if (!(c->adam_b1 >= 0 && c->adam_b1 < 1) || !(c->adam_b2 >= 0 && c->adam_b2 < 1))
        return WHY("Adam betas must be in [0, 1)");
    if (!(c->adam_eps > 0)) return WHY("adam_eps must be > 0");
    if (c->threads < 0 || c->threads > 256) return WHY("threads must be in [0, 256]");
    if (!(c->stats_half_life > 0)) return WHY("stats_half_life must be > 0 tokens");
    if (!(c->scaling_half_life > 0)) return WHY("scaling_half_life must be > 0 tokens");
    if (!(c->scaling_min_active >= 0)) return WHY("scaling_min_active must be >= 0");
    return XC_OK;
}

/* ---------------------------------------------------------------- helpers */

static inline uint32_t fbits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static void *xalloc(size_t n, size_t size, int *fail)
{
    void *p = NULL;
    if (n == 0) n = 1;
    if (posix_memalign(&p, 64, n * size) != 0) {
        *fail = 1;
        return NULL;
    }
    memset(p, 0, n * size);
    return p;
}

/* Decoder norms of rows [lo, hi) and s = their sum. */
static void norms_rows(xc_engine_t *e, long lo, long hi)
{
    int d = e->d;
    for (long j = lo; j < hi; j++) {
        const float *row = e->w_dec + (size_t)j * e->d2;
        float nb = cblas_snrm2(d, row, 1), nc = cblas_snrm2(d, row + d, 1);
        e->nrm[2 * j] = nb;
        e->nrm[2 * j + 1] = nc;
        e->s[j] = nb + nc;
    }
}

static void norms_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    long lo, hi;
    xc_pool_range(e->F, tid, nth, &lo, &hi);
    norms_rows(e, lo, hi);
}

static void ensure_norms(xc_engine_t *e)
{
    if (!e->norms_valid) {
        xc_pool_run(e->pool, norms_task, e);
        e->norms_valid = 1;
    }
}

/* ---------------------------------------------------------------- lifecycle */

static void init_params(xc_engine_t *e)
{
    int d = e->d, F = e->F;
    /* One Kaiming-uniform (d, F) matrix (bound sqrt(6 / fan_in), fan_in = F as torch
     * computes it for a 2-D tensor) copied to both encoders; each column rescaled to
     * init_norm; W_dec = W_enc^T, so base and chat start identical. */
    double bound = sqrt(6.0 / F);
    float *col = malloc(sizeof(float) * (size_t)d);
    float *tmp = malloc(sizeof(float) * (size_t)d * F);
    if (!col || !tmp) {
        free(col);
        free(tmp);
        return; /* caller checked allocation before; unreachable in practice */
    }
    for (long i = 0; i < (long)d * F; i++) tmp[i] = (float)((2.0 * xc_rng_uniform(&e->rng) - 1.0) * bound);
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
}

xc_engine_t *xc_engine_new(const xc_engine_config_t *cfg, int *err)
{
    char why[256];
    int fail = 0, rc = xc_engine_config_validate(cfg, why, sizeof why);
    xc_engine_t *e = NULL;

    if (rc) goto out_err;
    rc = XC_ENOMEM;
    e = calloc(1, sizeof *e);
    if (!e) goto out_err;
    e->cfg = *cfg;
    e->d = cfg->d;
    e->d2 = 2 * cfg->d;
    e->F = cfg->dict_size;
    e->B = cfg->batch_size;
    e->K = cfg->model == XC_MODEL_BATCHTOPK ? cfg->k * cfg->batch_size : 0;
    e->kaux_max = cfg->model == XC_MODEL_BATCHTOPK ? (cfg->d / 2 < cfg->dict_size ? cfg->d / 2 : cfg->dict_size) : 0;
    e->nth = cfg->threads > 0 ? cfg->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (e->nth < 1) e->nth = 1;
    e->cfg.threads = e->nth;
    openblas_set_num_threads(1);
    e->pool = xc_pool_new(e->nth);
    if (!e->pool) goto out_free;

    size_t F = (size_t)e->F, d2 = (size_t)e->d2, B = (size_t)e->B, K = (size_t)e->K;
    size_t KA = B * (size_t)e->kaux_max;
    e->w_enc = xalloc(F * d2, 4, &fail);
    e->b_enc = xalloc(F, 4, &fail);
    e->w_dec = xalloc(F * d2, 4, &fail);
    e->b_dec = xalloc(d2, 4, &fail);
    e->m_enc = xalloc(F * d2, 4, &fail);
    e->v_enc = xalloc(F * d2, 4, &fail);
    e->m_dec = xalloc(F * d2, 4, &fail);
    e->v_dec = xalloc(F * d2, 4, &fail);
    e->m_benc = xalloc(F, 4, &fail);
    e->v_benc = xalloc(F, 4, &fail);
    e->m_bdec = xalloc(d2, 4, &fail);
    e->v_bdec = xalloc(d2, 4, &fail);
    e->g_enc = xalloc(F * d2, 4, &fail);
    e->g_dec = xalloc(F * d2, 4, &fail);
    e->g_benc = xalloc(F, 4, &fail);
    e->g_bdec = xalloc(d2, 4, &fail);
    e->has_grad = xalloc(F, 1, &fail);
    e->nrm = xalloc(2 * F, 4, &fail);
    e->s = xalloc(F, 4, &fail);
    e->since_fired = xalloc(F, 8, &fail);
    e->dead = xalloc(F, 1, &fail);
    e->dead_list = xalloc(F, sizeof(int), &fail);
    e->fired = xalloc(F, 8, &fail);
    e->sum_act = xalloc(F, 8, &fail);
    e->max_act = xalloc(F, 4, &fail);
    e->freq = xalloc(F, 4, &fail);
    e->last_fired = xalloc(F, sizeof(long), &fail);
    e->ls_run = xalloc(F * LS_N, sizeof(double), &fail);
    e->ls_step = xalloc(F * LS_N, sizeof(double), &fail);
    if (cfg->model == XC_MODEL_L1) {
        e->ls_t1 = xalloc(F * d2, 4, &fail);
        e->ls_t2 = xalloc(F * d2, 4, &fail);
    }
    e->pre = xalloc(B * F, 4, &fail);
    if (cfg->model == XC_MODEL_L1) e->dpre = xalloc(B * F, 4, &fail);
    e->resid = xalloc(B * d2, 4, &fail);
    e->gx = xalloc(B * d2, 4, &fail);
    e->hx = xalloc(B * d2, 4, &fail);
    e->ehat = xalloc(B * d2, 4, &fail);
    e->gscale = xalloc(B * 2, 4, &fail);
    e->row_ptr = xalloc(B + 1, sizeof(long), &fail);
    e->row_cnt = xalloc(B, sizeof(long), &fail);
    e->col = xalloc(K, sizeof(int), &fail);
    e->ent_row = xalloc(K, sizeof(int), &fail);
    e->val = xalloc(K, 4, &fail);
    e->gval = xalloc(K, 4, &fail);
    e->aux_ptr = xalloc(B + 1, sizeof(long), &fail);
    e->aux_col = xalloc(KA, sizeof(int), &fail);
    e->aux_row = xalloc(KA, sizeof(int), &fail);
    e->aux_val = xalloc(KA, 4, &fail);
    e->aux_gval = xalloc(KA, 4, &fail);
    e->lat_ptr = xalloc(F + 1, sizeof(long), &fail);
    e->lat_cnt = xalloc(F, sizeof(int), &fail);
    e->lat_ent = xalloc(K + KA, sizeof(int), &fail);
    e->hist64 = xalloc(NBUCKET, sizeof(uint64_t), &fail);
    e->w = calloc((size_t)e->nth, sizeof *e->w);
    if (!e->w) fail = 1;
    for (int t = 0; !fail && t < e->nth; t++) {
        e->w[t].hist = xalloc(NBUCKET, 4, &fail);
        e->w[t].dead_sc = xalloc(F, sizeof(scored_t), &fail);
        e->w[t].acc = xalloc(4 * d2, 8, &fail);
        e->w[t].cand_cap = 1024;
        e->w[t].cand = xalloc(1024, sizeof(cand_t), &fail);
    }
    if (fail) goto out_free;

    for (size_t j = 0; j < F; j++) e->last_fired[j] = -1;
    xc_rng_seed(&e->rng, cfg->seed);
    init_params(e);
    e->theta = -1.0;
    e->met.theta = -1.0;
    e->tau = 0.0f;
    e->tau_frac = 0.6f;
#ifdef XC_HAVE_AVX512_PATH
    e->use_avx512 = __builtin_cpu_supports("avx512f") && !getenv("XC_NO_AVX512");
#endif
    e->norms_valid = 0;
    ensure_norms(e);
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
    if (e->w)
        for (int t = 0; t < e->nth; t++) {
            free(e->w[t].hist);
            free(e->w[t].dead_sc);
            free(e->w[t].acc);
            free(e->w[t].cand);
        }
    free(e->w);
    void *bufs[] = {e->w_enc, e->b_enc, e->w_dec, e->b_dec, e->m_enc, e->v_enc, e->m_dec, e->v_dec,
                    e->m_benc, e->v_benc, e->m_bdec, e->v_bdec, e->g_enc, e->g_dec, e->g_benc,
                    e->g_bdec, e->has_grad, e->nrm, e->s, e->since_fired, e->dead, e->dead_list,
                    e->fired, e->sum_act, e->max_act, e->freq, e->last_fired, e->pre, e->dpre,
                    e->resid, e->gx, e->hx, e->ehat, e->row_ptr, e->row_cnt, e->col, e->ent_row,
                    e->val, e->gval, e->aux_ptr, e->aux_col, e->aux_row, e->aux_val, e->aux_gval,
                    e->lat_ptr, e->lat_cnt, e->lat_ent, e->hist64, e->ls_run, e->ls_step,
                    e->ls_t1, e->ls_t2, e->gscale};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(e);
    *pe = NULL;
}

const xc_engine_config_t *xc_engine_config(const xc_engine_t *e) { return &e->cfg; }

/* ---------------------------------------------------------------- batch check */

int xc_engine_check_batch(const xc_engine_t *e, const float *x, long n_tokens)
{
    if (!x || n_tokens != e->B) return XC_ESHAPE;
    size_t n = (size_t)n_tokens * e->d2;
    uint32_t bad = 0;
    /* exponent all ones = Inf or NaN; OR-reduce so the loop vectorises */
    for (size_t i = 0; i < n; i++) bad |= ((fbits(x[i]) & 0x7f800000u) == 0x7f800000u);
    return bad ? XC_ENONFINITE : XC_OK;
}

/* ---------------------------------------------------------------- geometric median */

void xc_geometric_median(const float *pts, long n, int dim, long stride, int max_iter, double tol,
                         float *out)
{
    double *g = calloc((size_t)dim, sizeof *g), *ng = calloc((size_t)dim, sizeof *ng);
    if (!g || !ng) goto out;
    for (long b = 0; b < n; b++)
        for (int i = 0; i < dim; i++) g[i] += pts[b * stride + i];
    for (int i = 0; i < dim; i++) g[i] /= (double)n;
    for (int it = 0; it < max_iter; it++) {
        double wsum = 0, shift = 0;
        memset(ng, 0, sizeof(double) * (size_t)dim);
        for (long b = 0; b < n; b++) {
            const float *p = pts + b * stride;
            double dd = 0;
            for (int i = 0; i < dim; i++) dd += (p[i] - g[i]) * (p[i] - g[i]);
            /* a point on the current guess would get weight 1/0: clamp the distance */
            double w = 1.0 / fmax(sqrt(dd), 1e-12);
            wsum += w;
            for (int i = 0; i < dim; i++) ng[i] += w * p[i];
        }
        for (int i = 0; i < dim; i++) {
            ng[i] /= wsum;
            shift += (ng[i] - g[i]) * (ng[i] - g[i]);
            g[i] = ng[i];
        }
        if (sqrt(shift) < tol) break;
    }
    for (int i = 0; i < dim; i++) out[i] = (float)g[i];
out:
    free(g);
    free(ng);
}

/* ---------------------------------------------------------------- encoder */

/* PRE[0:n] = X W_enc^T, split by latent columns. */
static void enc_gemm_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    long lo, hi;
    xc_pool_range(e->F, tid, nth, &lo, &hi);
    if (hi > lo)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)e->n, (int)(hi - lo), e->d2, 1.0f,
                    e->x, e->d2, e->w_enc + (size_t)lo * e->d2, e->d2, 0.0f, e->pre + lo, e->F);
}

/* u = ReLU(pre + b_enc): one expression everywhere, so every pass sees the same float. */
static inline float relu_u(const xc_engine_t *e, const float *pre_row, int j)
{
    float v = pre_row[j] + e->b_enc[j];
    return v > 0.0f ? v : 0.0f;
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
        for (int j = 0; j < F; j++) u[j] = relu_u(e, u, j);
    }
}

/* ---------------------------------------------------------------- BatchTopK selection
 * Exact top-k*B of r = u s with ties broken towards the lower flat index b*F + j.
 * Fast path: one pass keeps the entries with r >= tau, tau a fraction of the last
 * step's cut-off (a rarely-taken, well-predicted branch), and the exact selection
 * runs on that short list. When fewer than k*B entries pass (first step, a shift in
 * scale), the full path histograms r over the whole batch instead. Both end in the
 * same selection rule, so the result does not depend on which path ran. */

static int cand_cmp(const void *pa, const void *pb)
{
    const cand_t *a = pa, *b = pb;
    if (a->r != b->r) return a->r > b->r ? -1 : 1;
    if (a->b != b->b) return a->b < b->b ? -1 : 1;
    return a->j < b->j ? -1 : (a->j > b->j);
}

static inline uint32_t bucket_of(float r) { return fbits(r) >> 16; }

static inline int selected(const xc_engine_t *e, long b, int j, float r)
{
    if (!(r > 0.0f)) return 0;
    if (e->sel_all) return 1;
    uint32_t bk = bucket_of(r);
    if (bk != (uint32_t)e->bucket_t) return bk > (uint32_t)e->bucket_t;
    if (r != e->cut_r) return r > e->cut_r;
    return b * (long)e->F + j <= e->cut_idx;
}

static int cand_reserve(worker_t *w, long n)
{
    if (n <= w->cand_cap) return XC_OK;
    long cap = n + n / 2;
    cand_t *p = realloc(w->cand, sizeof(cand_t) * (size_t)cap);
    if (!p) return XC_ENOMEM;
    w->cand = p;
    w->cand_cap = cap;
    return XC_OK;
}

/* Fast path: per worker, the entries with r >= tau in row order (j ascending).
 * This pass reads all B*F pre-activations, so it is the selection's cost: on
 * AVX-512 machines it runs 16 latents per instruction with compress-stores. */
#ifdef XC_HAVE_AVX512_PATH
__attribute__((target("avx512f"))) static long filter_row_avx512(const xc_engine_t *e, const float *pre,
                                                                   int b, float tau, cand_t *out,
                                                                   long n, long cap)
{
    int F = e->F, j = 0;
    const __m512 vt = _mm512_set1_ps(tau), z = _mm512_setzero_ps();
    const __m512i step = _mm512_set1_epi32(16);
    __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (; j + 16 <= F; j += 16, idx = _mm512_add_epi32(idx, step)) {
        __m512 u = _mm512_max_ps(_mm512_add_ps(_mm512_loadu_ps(pre + j), _mm512_loadu_ps(e->b_enc + j)), z);
        __m512 r = _mm512_mul_ps(u, _mm512_loadu_ps(e->s + j));
        __mmask16 m = _mm512_cmp_ps_mask(r, vt, _CMP_GE_OQ);
        if (!m) continue;
        int jj[16];
        float rr[16], uu[16];
        int c = __builtin_popcount(m);
        _mm512_mask_compressstoreu_epi32(jj, m, idx);
        _mm512_mask_compressstoreu_ps(rr, m, r);
        _mm512_mask_compressstoreu_ps(uu, m, u);
        for (int q = 0; q < c; q++, n++)
            if (n < cap) out[n] = (cand_t){b, jj[q], rr[q], uu[q]};
    }
    for (; j < F; j++) {
        float u = relu_u(e, pre, j), r = u * e->s[j];
        if (r >= tau) {
            if (n < cap) out[n] = (cand_t){b, j, r, u};
            n++;
        }
    }
    return n;
}
#endif

static long filter_row(const xc_engine_t *e, const float *pre, int b, float tau, cand_t *out, long n,
                       long cap)
{
#ifdef XC_HAVE_AVX512_PATH
    if (e->use_avx512) return filter_row_avx512(e, pre, b, tau, out, n, cap);
#endif
    for (int j = 0; j < e->F; j++) {
        float u = relu_u(e, pre, j), r = u * e->s[j];
        if (r >= tau) {
            if (n < cap) out[n] = (cand_t){b, j, r, u};
            n++;
        }
    }
    return n;
}

static void filter_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    worker_t *w = &e->w[tid];
    long lo, hi, n = 0;
    xc_pool_range(e->B, tid, nth, &lo, &hi);
    for (long b = lo; b < hi; b++)
        n = filter_row(e, e->pre + (size_t)b * e->F, (int)b, e->tau, w->cand, n, w->cand_cap);
    w->ncand = n;
}

/* Full path, pass A: histogram of r over the whole batch. */
static void hist_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    worker_t *w = &e->w[tid];
    long lo, hi, npos = 0;
    int F = e->F;
    xc_pool_range(e->B, tid, nth, &lo, &hi);
    memset(w->hist, 0, sizeof(uint32_t) * NBUCKET);
    for (long b = lo; b < hi; b++) {
        const float *pre = e->pre + (size_t)b * F;
        for (int j = 0; j < F; j++) {
            float r = relu_u(e, pre, j) * e->s[j];
            int pos = r > 0.0f;
            /* branch-free: zeros land in bucket 0, corrected below via npos */
            w->hist[pos ? bucket_of(r) : 0]++;
            npos += pos;
        }
    }
    w->npos = npos;
}

/* Full path, pass B: entries of the boundary bucket, in row order. */
static void boundary_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    worker_t *w = &e->w[tid];
    long lo, hi, n = 0;
    int F = e->F;
    uint32_t t = (uint32_t)e->bucket_t;
    xc_pool_range(e->B, tid, nth, &lo, &hi);
    for (long b = lo; b < hi; b++) {
        const float *pre = e->pre + (size_t)b * F;
        for (int j = 0; j < F; j++) {
            float u = relu_u(e, pre, j), r = u * e->s[j];
            if (r > 0.0f && bucket_of(r) == t) {
                if (n < w->cand_cap) w->cand[n] = (cand_t){b, j, r, u};
                n++;
            }
        }
    }
    w->ncand = n;
}

/* Full path, pass C: count (fill_phase 0), then fill (1) the CSR rows. */
static void fill_rows_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    long lo, hi;
    int F = e->F, phase = e->fill_phase;
    xc_pool_range(e->B, tid, nth, &lo, &hi);
    for (long b = lo; b < hi; b++) {
        const float *pre = e->pre + (size_t)b * F;
        long p = phase ? e->row_ptr[b] : 0;
        for (int j = 0; j < F; j++) {
            float u = relu_u(e, pre, j), r = u * e->s[j];
            if (!selected(e, b, j, r)) continue;
            if (phase) {
                e->col[p] = j;
                e->val[p] = u;
                e->ent_row[p] = (int)b;
            }
            p++;
        }
        if (!phase) e->row_cnt[b] = p;
    }
}

/* Runs a pool pass that fills per-worker candidate lists, growing them when short.
 * With limit > 0, a pass that finds more than limit entries in all returns
 * XC_EAGAIN instead of growing (the caller has a cheaper path). */
static int collect(xc_engine_t *e, xc_pool_fn fn, long limit)
{
    for (;;) {
        xc_pool_run(e->pool, fn, e);
        long total = 0;
        for (int t = 0; t < e->nth; t++) total += e->w[t].ncand;
        if (limit > 0 && total > limit) return XC_EAGAIN;
        int again = 0;
        for (int t = 0; t < e->nth; t++) {
            worker_t *w = &e->w[t];
            if (w->ncand > w->cand_cap) {
                if (cand_reserve(w, w->ncand)) return XC_ENOMEM;
                again = 1;
            }
        }
        if (!again) return XC_OK;
    }
}

/* Walks a histogram down from the top: sets bucket_t and returns how many
 * entries of that bucket are still needed to reach K. */
static long boundary(xc_engine_t *e, const uint64_t *hist)
{
    long cum = 0, t = NBUCKET - 1;
    for (; t > 0; t--) {
        if (cum + (long)hist[t] >= e->K) break;
        cum += (long)hist[t];
    }
    e->bucket_t = t;
    return e->K - cum;
}

/* Sorts the boundary candidates (bucket_t only) and sets the exact cut. */
static int cut_boundary(xc_engine_t *e, long need)
{
    long nc = 0;
    for (int t = 0; t < e->nth; t++) nc += e->w[t].ncand;
    if (cand_reserve(&e->w[0], nc + e->w[0].ncand) != XC_OK) return XC_ENOMEM;
    worker_t *w0 = &e->w[0];
    cand_t *bd = w0->cand + w0->ncand; /* scratch after worker 0's own list */
    long m = 0;
    for (int t = 0; t < e->nth; t++)
        for (long i = 0; i < e->w[t].ncand; i++)
            if (bucket_of(e->w[t].cand[i].r) == (uint32_t)e->bucket_t) bd[m++] = e->w[t].cand[i];
    qsort(bd, (size_t)m, sizeof(cand_t), cand_cmp);
    const cand_t *last = &bd[need - 1];
    e->cut_r = last->r;
    e->cut_idx = last->b * (long)e->F + last->j;
    return XC_OK;
}

static int select_fast(xc_engine_t *e)
{
    /* a filter that lets through more than 16 k*B entries (a shift in scale)
     * costs more than the full path: take that instead of growing the lists */
    int rc = collect(e, filter_task, 16L * e->K);
    if (rc == XC_EAGAIN) e->tau_frac = e->tau_frac * 1.25f < 0.95f ? e->tau_frac * 1.25f : 0.95f;
    if (rc) return rc;
    long m = 0;
    for (int t = 0; t < e->nth; t++) m += e->w[t].ncand;
    e->last_ncand = m;
    if (m < e->K) {
        e->tau_frac *= 0.7f; /* too few passed: filter more loosely next time */
        return XC_EAGAIN;
    }
    uint64_t *h = e->hist64;
    memset(h, 0, sizeof(uint64_t) * NBUCKET);
    for (int t = 0; t < e->nth; t++)
        for (long i = 0; i < e->w[t].ncand; i++) h[bucket_of(e->w[t].cand[i].r)]++;
    e->sel_all = 0;
    long need = boundary(e, h);
    rc = cut_boundary(e, need);
    if (rc) return rc;
    /* candidates are in row-major order across workers: fill the CSR directly */
    memset(e->row_cnt, 0, sizeof(long) * (size_t)e->B);
    long p = 0;
    for (int t = 0; t < e->nth; t++)
        for (long i = 0; i < e->w[t].ncand; i++) {
            const cand_t *c = &e->w[t].cand[i];
            if (!selected(e, c->b, c->j, c->r)) continue;
            e->col[p] = c->j;
            e->val[p] = c->u;
            e->ent_row[p] = (int)c->b;
            e->row_cnt[c->b]++;
            p++;
        }
    e->row_ptr[0] = 0;
    for (long b = 0; b < e->B; b++) e->row_ptr[b + 1] = e->row_ptr[b] + e->row_cnt[b];
    e->nnz = p;
    return XC_OK;
}

static int select_full(xc_engine_t *e)
{
    uint64_t *h = e->hist64;
    long npos = 0;
    xc_pool_run(e->pool, hist_task, e);
    memset(h, 0, sizeof(uint64_t) * NBUCKET);
    for (int t = 0; t < e->nth; t++) {
        npos += e->w[t].npos;
        for (int q = 0; q < NBUCKET; q++) h[q] += e->w[t].hist[q];
    }
    long above0 = 0;
    for (int q = 1; q < NBUCKET; q++) above0 += (long)h[q];
    h[0] = (uint64_t)(npos - above0); /* positives in bucket 0 (denormals) only */
    e->sel_all = npos <= e->K;
    if (!e->sel_all) {
        long need = boundary(e, h);
        for (int t = 0; t < e->nth; t++) e->w[t].ncand = 0;
        int rc = collect(e, boundary_task, 0);
        if (rc) return rc;
        rc = cut_boundary(e, need);
        if (rc) return rc;
    }
    e->fill_phase = 0;
    xc_pool_run(e->pool, fill_rows_task, e);
    e->row_ptr[0] = 0;
    for (long b = 0; b < e->B; b++) e->row_ptr[b + 1] = e->row_ptr[b] + e->row_cnt[b];
    e->nnz = e->row_ptr[e->B];
    e->fill_phase = 1;
    xc_pool_run(e->pool, fill_rows_task, e);
    return XC_OK;
}

/* Chooses the k*B largest r = u s of the batch into the CSR (row_ptr, col, val, ent_row). */
static int select_topk(xc_engine_t *e)
{
    int rc = e->tau > 0 ? select_fast(e) : XC_EAGAIN;
    if (rc == XC_EAGAIN) {
        e->n_full_select++;
        rc = select_full(e);
        if (rc) return rc;
    } else if (rc) {
        return rc;
    } else if (e->last_ncand > 4L * e->K && e->tau_frac < 0.9f) {
        e->tau_frac *= 1.1f; /* list longer than needed: filter harder */
    }
    e->met.select_candidates = e->last_ncand;
    e->met.full_selects = e->n_full_select;
    /* next step's filter: a fraction of this step's cut-off score */
    e->tau = e->sel_all ? 0.0f : e->cut_r * e->tau_frac;
    return XC_OK;
}

/* ---------------------------------------------------------------- loss terms */

/* e = x - xhat for row b (xhat already in resid), loss terms and dR/dxhat. */
static void residual_row(xc_engine_t *e, worker_t *w, long b)
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

static void worker_reset(xc_engine_t *e, worker_t *w)
{
    memset(w->acc, 0, sizeof(double) * 4 * (size_t)e->d2);
    w->l2 = w->mse = w->aux_num = w->sq = w->l1 = 0;
    w->rmin = FLT_MAX;
}

/* Token-major: sparse decode, residual, dL/df for every selected entry. */
static void decode_sparse_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    worker_t *w = &e->w[tid];
    long lo, hi;
    int d2 = e->d2;
    xc_pool_range(e->B, tid, nth, &lo, &hi);
    worker_reset(e, w);
    for (long b = lo; b < hi; b++) {
        float *xh = e->resid + (size_t)b * d2;
        memcpy(xh, e->b_dec, sizeof(float) * (size_t)d2);
        for (long p = e->row_ptr[b]; p < e->row_ptr[b + 1]; p++) {
            cblas_saxpy(d2, e->val[p], e->w_dec + (size_t)e->col[p] * d2, 1, xh, 1);
            float r = e->val[p] * e->s[e->col[p]];
            if (r < w->rmin) w->rmin = r;
        }
        residual_row(e, w, b);
        const float *g = e->gx + (size_t)b * d2;
        for (long p = e->row_ptr[b]; p < e->row_ptr[b + 1]; p++)
            e->gval[p] = cblas_sdot(d2, g, 1, e->w_dec + (size_t)e->col[p] * d2, 1);
    }
}

/* ---------------------------------------------------------------- AuxK */

static int scored_cmp(const void *pa, const void *pb)
{
    const scored_t *a = pa, *b = pb;
    if (a->r != b->r) return a->r > b->r ? -1 : 1;
    return (a->j > b->j) - (a->j < b->j);
}

/* Moves the k best (r desc, j asc) of v[0:n] to the front (quickselect). */
static void select_k(scored_t *v, long n, long k)
{
    long lo = 0, hi = n - 1;
    while (lo < hi) {
        scored_t piv = v[lo + (hi - lo) / 2];
        long i = lo, j = hi;
        while (i <= j) {
            while (scored_cmp(&v[i], &piv) < 0) i++;
            while (scored_cmp(&v[j], &piv) > 0) j--;
            if (i <= j) {
                scored_t t = v[i];
                v[i] = v[j];
                v[j] = t;
                i++;
                j--;
            }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else break;
    }
}

/* Per token: the k_aux dead latents with the largest u s (u > 0), ehat, and the
 * numerator of the AuxK loss. */
static void aux_fwd_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    worker_t *w = &e->w[tid];
    long lo, hi;
    int d2 = e->d2, F = e->F;
    xc_pool_range(e->B, tid, nth, &lo, &hi);
    w->aux_num = 0;
    for (long b = lo; b < hi; b++) {
        const float *pre = e->pre + (size_t)b * F;
        long n = 0, base = b * (long)e->kaux_max;
        for (int q = 0; q < e->n_dead_list; q++) {
            int j = e->dead_list[q];
            float u = relu_u(e, pre, j);
            if (u > 0.0f) w->dead_sc[n++] = (scored_t){u * e->s[j], j};
        }
        if (n > e->k_aux) {
            select_k(w->dead_sc, n, e->k_aux);
            n = e->k_aux;
        }
        qsort(w->dead_sc, (size_t)n, sizeof(scored_t), scored_cmp);
        e->aux_ptr[b + 1] = n; /* count; turned into offsets below */
        float *eh = e->ehat + (size_t)b * d2;
        memset(eh, 0, sizeof(float) * (size_t)d2);
        for (long q = 0; q < n; q++) {
            int j = w->dead_sc[q].j;
            e->aux_col[base + q] = j;
            e->aux_row[base + q] = (int)b;
            float u = relu_u(e, pre, j);
            e->aux_val[base + q] = u;
            cblas_saxpy(d2, u, e->w_dec + (size_t)j * d2, 1, eh, 1);
        }
        const float *r = e->resid + (size_t)b * d2;
        double sq = 0;
        for (int i = 0; i < d2; i++) sq += ((double)r[i] - eh[i]) * ((double)r[i] - eh[i]);
        w->aux_num += sq;
    }
}

/* d(aux_coef * AuxK)/d ehat and dL/du of the AuxK entries. */
static void aux_bwd_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    long lo, hi;
    int d2 = e->d2;
    double c = -2.0 * e->cfg.aux_coef / (e->B * e->aux_denom);
    xc_pool_range(e->B, tid, nth, &lo, &hi);
    for (long b = lo; b < hi; b++) {
        const float *r = e->resid + (size_t)b * d2, *eh = e->ehat + (size_t)b * d2;
        float *h = e->hx + (size_t)b * d2;
        for (int i = 0; i < d2; i++) h[i] = (float)(c * ((double)r[i] - eh[i]));
        long base = b * (long)e->kaux_max, n = e->aux_ptr[b + 1];
        for (long q = 0; q < n; q++)
            e->aux_gval[base + q] = cblas_sdot(d2, h, 1, e->w_dec + (size_t)e->aux_col[base + q] * d2, 1);
    }
}

/* Builds the dead list, runs AuxK; returns the AuxK value (0 when none dead). */
static double run_auxk(xc_engine_t *e)
{
    e->n_dead_list = 0;
    for (int j = 0; j < e->F; j++) {
        uint64_t since = e->lat_cnt[j] ? 0 : e->since_fired[j] + (uint64_t)e->B;
        e->dead[j] = since >= (uint64_t)e->cfg.dead_tokens;
        if (e->dead[j]) e->dead_list[e->n_dead_list++] = j;
    }
    e->k_aux = e->n_dead_list < e->kaux_max ? e->n_dead_list : e->kaux_max;
    memset(e->aux_ptr, 0, sizeof(long) * (size_t)(e->B + 1));
    e->aux_nnz = 0;
    if (e->k_aux == 0 || e->cfg.aux_coef == 0) return 0.0;

    xc_pool_run(e->pool, aux_fwd_task, e);
    double num = 0;
    for (int t = 0; t < e->nth; t++) num += e->w[t].aux_num;
    /* denominator: mean_b ||e_b - mean(e)||^2 from the residual accumulators */
    double den = 0;
    for (int i = 0; i < e->d2; i++) {
        double se = 0, se2 = 0;
        for (int t = 0; t < e->nth; t++) {
            se += e->w[t].acc[i];
            se2 += e->w[t].acc[e->d2 + i];
        }
        den += se2 - se * se / e->B;
    }
    den /= e->B;
    double aux = (num / e->B) / den;
    if (!isfinite(aux) || !(den > 0)) {
        /* reference: nan_to_num(0): no loss, no gradient */
        memset(e->aux_ptr, 0, sizeof(long) * (size_t)(e->B + 1));
        return 0.0;
    }
    e->aux_denom = den;
    xc_pool_run(e->pool, aux_bwd_task, e);
    for (long b = 0; b < e->B; b++) e->aux_nnz += e->aux_ptr[b + 1];
    return aux;
}

/* ---------------------------------------------------------------- gradients */

/* CSC over main then AuxK entries, so each latent's gradient is one thread's work. */
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

/* Splits latents so that each worker gets about the same number of entries. */
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

static void axpy_dot2(const xc_engine_t *e, float a, const float *x, float *y, const float *v, double *lo, double *hi)
{
#ifdef XC_HAVE_AVX512_PATH
    if (e->use_avx512) {
        axpy_dot2_avx512(e->d, a, x, y, v, lo, hi);
        return;
    }
#endif
    cblas_saxpy(e->d2, a, x, 1, y, 1);
    *lo = cblas_sdot(e->d, v, 1, x, 1);
    *hi = cblas_sdot(e->d, v, 1, x + e->d, 1);
}

static void grad_sparse_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    worker_t *w = &e->w[tid];
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
                if (e->commit && e->cfg.scaling_running) {
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

/* ---------------------------------------------------------------- L1 (dense) */

static void l1_decode_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    worker_t *w = &e->w[tid];
    long lo, hi;
    int d2 = e->d2, F = e->F;
    xc_pool_range(e->B, tid, nth, &lo, &hi);
    worker_reset(e, w);
    if (hi <= lo) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(hi - lo), d2, F, 1.0f,
                e->pre + (size_t)lo * F, F, e->w_dec, d2, 0.0f, e->resid + (size_t)lo * d2, d2);
    for (long b = lo; b < hi; b++) {
        float *xh = e->resid + (size_t)b * d2;
        const float *u = e->pre + (size_t)b * F;
        for (int i = 0; i < d2; i++) xh[i] += e->b_dec[i];
        residual_row(e, w, b);
        double l1 = 0;
        for (int j = 0; j < F; j++) l1 += (double)u[j] * e->s[j];
        w->l1 += l1 / e->B;
    }
    /* dL/du = G W_dec^T + mu s / B on u > 0 */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(hi - lo), F, d2, 1.0f,
                e->gx + (size_t)lo * d2, d2, e->w_dec, d2, 0.0f, e->dpre + (size_t)lo * F, F);
    float mu_b = (float)(e->cfg.l1_coef / e->B);
    for (long b = lo; b < hi; b++) {
        float *dp = e->dpre + (size_t)b * F;
        const float *u = e->pre + (size_t)b * F;
        for (int j = 0; j < F; j++) dp[j] = u[j] > 0.0f ? dp[j] + mu_b * e->s[j] : 0.0f;
    }
}

static void l1_grad_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    worker_t *w = &e->w[tid];
    long lo, hi;
    int d = e->d, d2 = e->d2, F = e->F;
    xc_pool_range(F, tid, nth, &lo, &hi);
    w->sq = 0;
    if (hi <= lo) return;
    int nf = (int)(hi - lo);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nf, d2, e->B, 1.0f, e->pre + lo, F, e->gx,
                d2, 0.0f, e->g_dec + (size_t)lo * d2, d2);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nf, d2, e->B, 1.0f, e->dpre + lo, F, e->x,
                d2, 0.0f, e->g_enc + (size_t)lo * d2, d2);
    if (e->commit && e->cfg.scaling_running) {
        /* Latent Scaling sums: rows of U^T E and U^T X dotted with the chat decoder row */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nf, d2, e->B, 1.0f, e->pre + lo, F,
                    e->resid, d2, 0.0f, e->ls_t1 + (size_t)lo * d2, d2);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nf, d2, e->B, 1.0f, e->pre + lo, F, e->x,
                    d2, 0.0f, e->ls_t2 + (size_t)lo * d2, d2);
        for (long j = lo; j < hi; j++) {
            double *ls = e->ls_step + (size_t)j * LS_N, f2 = 0, cnt = 0;
            const float *v = e->w_dec + (size_t)j * d2 + d, *t1 = e->ls_t1 + (size_t)j * d2,
                        *t2 = e->ls_t2 + (size_t)j * d2;
            for (long b = 0; b < e->B; b++) {
                float u = e->pre[(size_t)b * F + j];
                f2 += (double)u * u;
                cnt += u > 0.0f;
            }
            double eb = cblas_sdot(d, v, 1, t1, 1), ec = cblas_sdot(d, v, 1, t1 + d, 1);
            ls[LS_F2] = f2;
            ls[LS_E0] = eb;
            ls[LS_E1] = ec;
            ls[LS_R0] = cblas_sdot(d, v, 1, t2, 1) - eb;
            ls[LS_R1] = cblas_sdot(d, v, 1, t2 + d, 1) - ec;
            ls[LS_CNT] = cnt;
        }
    }
    double mu_b = e->cfg.l1_coef / e->B;
    for (long j = lo; j < hi; j++) {
        double su = 0, gb = 0;
        for (long b = 0; b < e->B; b++) {
            su += e->pre[(size_t)b * F + j];
            gb += e->dpre[(size_t)b * F + j];
        }
        float *gd = e->g_dec + (size_t)j * d2;
        const float *dr = e->w_dec + (size_t)j * d2;
        /* d(mu/B sum u s)/d d_j^m = mu/B (sum_b u_bj) d_j^m / ||d_j^m|| */
        for (int m = 0; m < 2; m++) {
            float nm = e->nrm[2 * j + m];
            if (nm > 0)
                for (int i = 0; i < d; i++) gd[m * d + i] += (float)(mu_b * su * dr[m * d + i] / nm);
        }
        e->g_benc[j] = (float)gb;
        e->has_grad[j] = 1;
        const float *ge = e->g_enc + (size_t)j * d2;
        w->sq += (double)cblas_sdot(d2, gd, 1, gd, 1) + cblas_sdot(d2, ge, 1, ge, 1) + gb * gb;
    }
}

/* ---------------------------------------------------------------- forward + backward */

static double sum_w(const xc_engine_t *e, size_t off)
{
    double s = 0;
    for (int t = 0; t < e->nth; t++) s += *(const double *)((const char *)&e->w[t] + off);
    return s;
}

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
            ve += se2 / e->B - (se / e->B) * (se / e->B);
            vx += sx2 / e->B - (sx / e->B) * (sx / e->B);
        }
        e->met.fve[m] = vx > 0 ? 1.0 - ve / vx : 0.0;
    }
}

/* Forward and backward on e->x (B rows). Leaves gradients (rows flagged in
 * has_grad), loss terms in e->met, and the squared gradient norm in *sq. */
static int forward_backward(xc_engine_t *e, double *sq)
{
    double *ph = e->met.phase_ms, t0 = now_ms(), t1;
    e->n = e->B;
    ensure_norms(e);
    xc_pool_run(e->pool, enc_gemm_task, e);
    if (e->cfg.model == XC_MODEL_L1) xc_pool_run(e->pool, relu_task, e);
    t1 = now_ms();
    ph[XC_PHASE_ENCODE] = t1 - t0;
    double aux = 0;
    if (e->cfg.model == XC_MODEL_BATCHTOPK) {
        int rc = select_topk(e);
        if (rc) return rc;
        ph[XC_PHASE_SELECT] = now_ms() - t1;
        t1 = now_ms();
        xc_pool_run(e->pool, decode_sparse_task, e);
        memset(e->lat_cnt, 0, sizeof(int) * (size_t)e->F);
        for (long p = 0; p < e->nnz; p++) e->lat_cnt[e->col[p]]++;
        ph[XC_PHASE_DECODE] = now_ms() - t1;
        t1 = now_ms();
        aux = run_auxk(e);
        ph[XC_PHASE_AUXK] = now_ms() - t1;
        t1 = now_ms();
        build_csc(e);
        xc_pool_run(e->pool, grad_sparse_task, e);
        ph[XC_PHASE_GRAD] = now_ms() - t1;
        e->met.l1 = 0;
        e->met.l0 = (double)e->nnz / e->B;
    } else {
        xc_pool_run(e->pool, l1_decode_task, e);
        ph[XC_PHASE_DECODE] = now_ms() - t1;
        t1 = now_ms();
        xc_pool_run(e->pool, l1_grad_task, e);
        ph[XC_PHASE_GRAD] = now_ms() - t1;
        e->met.l1 = sum_w(e, offsetof(worker_t, l1));
        long nz = 0;
        memset(e->lat_cnt, 0, sizeof(int) * (size_t)e->F);
        for (long b = 0; b < e->B; b++) {
            const float *u = e->pre + (size_t)b * e->F;
            for (int j = 0; j < e->F; j++)
                if (u[j] > 0.0f) {
                    nz++;
                    e->lat_cnt[j]++;
                }
        }
        e->met.l0 = (double)nz / e->B;
        e->k_aux = 0;
    }
    e->met.recon_l2 = sum_w(e, offsetof(worker_t, l2));
    e->met.recon_mse = sum_w(e, offsetof(worker_t, mse));
    e->met.aux = aux;
    double recon = e->cfg.loss == XC_LOSS_MSE ? e->met.recon_mse : e->met.recon_l2;
    e->met.loss = recon + (e->cfg.model == XC_MODEL_BATCHTOPK ? e->cfg.aux_coef * aux
                                                               : e->cfg.l1_coef * e->met.l1);
    fill_fve(e);
    *sq = sum_w(e, offsetof(worker_t, sq)) + grad_bdec(e);
    return XC_OK;
}

/* ---------------------------------------------------------------- Adam */

static inline void adam_vec(float *p, float *m, float *v, const float *g, int n, const xc_engine_t *e)
{
    float b1 = e->cfg.adam_b1, b2 = e->cfg.adam_b2, eps = e->cfg.adam_eps;
    float sc = (float)e->grad_scale, step = (float)(e->lr_t / e->bc1), isb2 = (float)(1.0 / sqrt(e->bc2));
    for (int i = 0; i < n; i++) {
        float gi = g ? g[i] * sc : 0.0f;
        m[i] = b1 * m[i] + (1.0f - b1) * gi;
        v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
        p[i] -= step * m[i] / (sqrtf(v[i]) * isb2 + eps);
    }
}

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
    }
    /* the decoder rows just changed: their norms are next step's s */
    norms_rows(e, lo, hi);
}

static double lr_at(const xc_engine_config_t *c, long step)
{
    /* reference LambdaLR: step / warmup during warm-up (0 at the first step) */
    if (step < c->warmup_steps) return c->lr * (double)step / c->warmup_steps;
    if (c->decay_start > 0 && step >= c->decay_start)
        return c->lr * (double)(c->total_steps - step) / (double)(c->total_steps - c->decay_start);
    return c->lr;
}

/* ---------------------------------------------------------------- commit (stats, theta) */

static void commit_stats(xc_engine_t *e)
{
    int F = e->F;
    uint64_t B = (uint64_t)e->B;
    double decay = pow(0.5, (double)e->B / e->cfg.stats_half_life);
    double ls_decay = pow(0.5, (double)e->B / e->cfg.scaling_half_life);
    int n_dead = 0;
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
        n_dead += e->since_fired[j] >= (uint64_t)e->cfg.dead_tokens;
    }
    e->met.n_dead = n_dead;
    e->met.dead_fraction = (double)n_dead / F;

    /* theta: EMA of the smallest selected u s, after threshold_start_step */
    if (e->cfg.model == XC_MODEL_BATCHTOPK && e->step > e->cfg.threshold_start_step) {
        float mn = FLT_MAX;
        for (int t = 0; t < e->nth; t++)
            if (e->w[t].rmin < mn) mn = e->w[t].rmin;
        double mt = e->nnz > 0 ? mn : 0.0;
        if (e->theta < 0) e->theta = mt;
        else e->theta = e->cfg.threshold_beta * e->theta + (1.0 - e->cfg.threshold_beta) * mt;
    }
    e->met.theta = e->theta;
}

/* ---------------------------------------------------------------- public step */

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
    if (rc) return rc;
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
    e->bc1 = 1.0 - pow(e->cfg.adam_b1, (double)t);
    e->bc2 = 1.0 - pow(e->cfg.adam_b2, (double)t);
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

int xc_engine_compute_grads(xc_engine_t *e, const float *x, long n_tokens, xc_engine_params_t *g,
                            xc_engine_metrics_t *m)
{
    int rc = xc_engine_check_batch(e, x, n_tokens);
    if (rc) return rc;
    e->x = x;
    e->commit = 0;
    double sq;
    rc = forward_backward(e, &sq);
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
            /* reference: f = u * (u s > threshold); theta < 0 (unset) keeps all */
            if (e->cfg.model == XC_MODEL_BATCHTOPK && !(v * e->s[j] > th)) v = 0.0f;
            u[j] = v;
        }
    }
}

int xc_engine_encode(xc_engine_t *e, const float *x, long n, float *f_out)
{
    if (!x || !f_out || n < 1) return XC_EINVAL;
    ensure_norms(e);
    for (long at = 0; at < n; at += e->B) {
        long c = n - at < e->B ? n - at : e->B;
        e->x = x + (size_t)at * e->d2;
        e->n = c;
        xc_pool_run(e->pool, enc_gemm_task, e);
        xc_pool_run(e->pool, threshold_task, e);
        memcpy(f_out + (size_t)at * e->F, e->pre, sizeof(float) * (size_t)c * e->F);
    }
    e->x = NULL;
    return XC_OK;
}

int xc_engine_decode(xc_engine_t *e, const float *f, long n, float *xhat_out)
{
    if (!f || !xhat_out || n < 1) return XC_EINVAL;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, e->d2, e->F, 1.0f, f, e->F,
                e->w_dec, e->d2, 0.0f, xhat_out, e->d2);
    for (long b = 0; b < n; b++)
        for (int i = 0; i < e->d2; i++) xhat_out[(size_t)b * e->d2 + i] += e->b_dec[i];
    return XC_OK;
}

/* ---------------------------------------------------------------- accessors */

const xc_engine_metrics_t *xc_engine_metrics(const xc_engine_t *e) { return &e->met; }

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
uint64_t *xc_engine_dead_counters(xc_engine_t *e) { return e->since_fired; }
void xc_engine_set_theta(xc_engine_t *e, double theta)
{
    e->theta = theta;
    e->met.theta = theta;
}

long xc_engine_selection(const xc_engine_t *e, const long **row_ptr, const int **col, const float **val)
{
    if (row_ptr) *row_ptr = e->row_ptr;
    if (col) *col = e->col;
    if (val) *val = e->val;
    return e->cfg.model == XC_MODEL_BATCHTOPK ? e->nnz : 0;
}

void xc_engine_adam_state(xc_engine_t *e, xc_engine_params_t *m, xc_engine_params_t *v, long *step)
{
    if (m) *m = (xc_engine_params_t){e->m_enc, e->m_benc, e->m_dec, e->m_bdec};
    if (v) *v = (xc_engine_params_t){e->v_enc, e->v_benc, e->v_dec, e->v_bdec};
    if (step) *step = e->step;
}

/* ---------------------------------------------------------------- Latent Scaling */

/* beta and nu from the sums of one latent with decoder row dec (2d). */
static void scaling_from_sums(const double *ls, const float *dec, int d, double min_active,
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
}

void xc_engine_scaling_running(const xc_engine_t *e, xc_scaling_stats_t *out)
{
    for (int j = 0; j < e->F; j++)
        scaling_from_sums(e->ls_run + (size_t)j * LS_N, e->w_dec + (size_t)j * e->d2, e->d,
                          e->cfg.scaling_min_active, &out[j]);
}

void xc_engine_set_scaling_running(xc_engine_t *e, int on) { e->cfg.scaling_running = on != 0; }

struct xc_scaling {
    xc_engine_t *e;             /* borrowed: dimensions and the worker pool */
    float *w_enc, *b_enc, *w_dec, *b_dec, *s; /* frozen copies, owned */
    float theta;
    long step, chunk;
    float *pre;                 /* (chunk, F) */
    double *acc;                /* (nth, F, LS_N) per-worker sums */
    int **act;                  /* per worker (F) active latents of a token */
    float **xh;                 /* per worker (2d) reconstruction */
    const float *x;
    long n;
    uint64_t tokens;
};

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

static void scaling_accum_task(void *ctx, int tid, int nth)
{
    xc_scaling_t *s = ctx;
    const xc_engine_t *e = s->e;
    int F = e->F, d = e->d, d2 = e->d2, *act = s->act[tid];
    float *xh = s->xh[tid];
    double *acc = s->acc + (size_t)tid * F * LS_N;
    long lo, hi;
    xc_pool_range(s->n, tid, nth, &lo, &hi);
    for (long b = lo; b < hi; b++) {
        const float *pre = s->pre + (size_t)b * F, *x = s->x + (size_t)b * d2;
        int na = 0;
        memcpy(xh, s->b_dec, sizeof(float) * (size_t)d2);
        for (int j = 0; j < F; j++) {
            float v = pre[j] + s->b_enc[j];
            /* threshold mode (reference): f = u * 1[u s > theta] */
            if (v > 0.0f && (e->cfg.model == XC_MODEL_L1 || v * s->s[j] > s->theta)) {
                act[na++] = j;
                cblas_saxpy(d2, v, s->w_dec + (size_t)j * d2, 1, xh, 1);
            }
        }
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
        }
    }
}

xc_scaling_t *xc_scaling_new(xc_engine_t *e, int *err)
{
    int fail = 0, nth = e->nth;
    size_t F = (size_t)e->F, d2 = (size_t)e->d2;
    xc_scaling_t *s = calloc(1, sizeof *s);
    if (!s) goto out_nomem;
    s->e = e;
    s->chunk = e->B < 512 ? e->B : 512;
    s->w_enc = xalloc(F * d2, 4, &fail);
    s->w_dec = xalloc(F * d2, 4, &fail);
    s->b_enc = xalloc(F, 4, &fail);
    s->b_dec = xalloc(d2, 4, &fail);
    s->s = xalloc(F, 4, &fail);
    s->pre = xalloc((size_t)s->chunk * F, 4, &fail);
    s->acc = xalloc((size_t)nth * F * LS_N, sizeof(double), &fail);
    s->act = calloc((size_t)nth, sizeof *s->act);
    s->xh = calloc((size_t)nth, sizeof *s->xh);
    if (fail || !s->act || !s->xh) goto out_free;
    for (int t = 0; t < nth; t++) {
        s->act[t] = xalloc(F, sizeof(int), &fail);
        s->xh[t] = xalloc(d2, 4, &fail);
    }
    if (fail) goto out_free;
    ensure_norms(e);
    memcpy(s->w_enc, e->w_enc, 4 * F * d2);
    memcpy(s->w_dec, e->w_dec, 4 * F * d2);
    memcpy(s->b_enc, e->b_enc, 4 * F);
    memcpy(s->b_dec, e->b_dec, 4 * d2);
    memcpy(s->s, e->s, 4 * F);
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

int xc_scaling_add(xc_scaling_t *s, const float *x, long n_tokens)
{
    if (!x || n_tokens < 1) return XC_EINVAL;
    for (long at = 0; at < n_tokens; at += s->chunk) {
        s->n = n_tokens - at < s->chunk ? n_tokens - at : s->chunk;
        s->x = x + (size_t)at * s->e->d2;
        xc_pool_run(s->e->pool, scaling_gemm_task, s);
        xc_pool_run(s->e->pool, scaling_accum_task, s);
    }
    s->x = NULL;
    s->tokens += (uint64_t)n_tokens;
    return XC_OK;
}

uint64_t xc_scaling_tokens(const xc_scaling_t *s) { return s->tokens; }
long xc_scaling_step(const xc_scaling_t *s) { return s->step; }

void xc_scaling_result(const xc_scaling_t *s, xc_scaling_stats_t *out)
{
    int F = s->e->F;
    for (int j = 0; j < F; j++) {
        double sum[LS_N] = {0};
        for (int t = 0; t < s->e->nth; t++)
            for (int q = 0; q < LS_N; q++) sum[q] += s->acc[((size_t)t * F + j) * LS_N + q];
        scaling_from_sums(sum, s->w_dec + (size_t)j * s->e->d2, s->e->d, s->e->cfg.scaling_min_active, &out[j]);
    }
}

void xc_scaling_destroy(xc_scaling_t **ps)
{
    xc_scaling_t *s = ps ? *ps : NULL;
    if (!s) return;
    for (int t = 0; s->act && t < s->e->nth; t++) free(s->act[t]);
    for (int t = 0; s->xh && t < s->e->nth; t++) free(s->xh[t]);
    free(s->act);
    free(s->xh);
    free(s->w_enc);
    free(s->w_dec);
    free(s->b_enc);
    free(s->b_dec);
    free(s->s);
    free(s->pre);
    free(s->acc);
    free(s);
    *ps = NULL;
}

/* ---------------------------------------------------------------- state for checkpoints */

int xc_engine_state_views(xc_engine_t *e, xc_state_view_t *out, int max)
{
    long F = e->F, d = e->d;
    int n = 0;
#define VIEW(nm, dt, esz, p, nd, s0, s1, s2)                                                         \
    do {                                                                                          \
        if (n < max) {                                                                            \
            out[n] = (xc_state_view_t){nm, dt, nd, {s0, s1, s2}, p, 0};                           \
            out[n].bytes = (size_t)(esz) * (size_t)((nd) > 0 ? (s0) : 1) *                        \
                           (size_t)((nd) > 1 ? (s1) : 1) * (size_t)((nd) > 2 ? (s2) : 1);         \
        }                                                                                         \
        n++;                                                                                      \
    } while (0)
    VIEW("w_enc", XC_ST_F32, 4, e->w_enc, 3, F, 2, d);
    VIEW("b_enc", XC_ST_F32, 4, e->b_enc, 1, F, 0, 0);
    VIEW("w_dec", XC_ST_F32, 4, e->w_dec, 3, F, 2, d);
    VIEW("b_dec", XC_ST_F32, 4, e->b_dec, 2, 2, d, 0);
    VIEW("adam.m.w_enc", XC_ST_F32, 4, e->m_enc, 3, F, 2, d);
    VIEW("adam.v.w_enc", XC_ST_F32, 4, e->v_enc, 3, F, 2, d);
    VIEW("adam.m.b_enc", XC_ST_F32, 4, e->m_benc, 1, F, 0, 0);
    VIEW("adam.v.b_enc", XC_ST_F32, 4, e->v_benc, 1, F, 0, 0);
    VIEW("adam.m.w_dec", XC_ST_F32, 4, e->m_dec, 3, F, 2, d);
    VIEW("adam.v.w_dec", XC_ST_F32, 4, e->v_dec, 3, F, 2, d);
    VIEW("adam.m.b_dec", XC_ST_F32, 4, e->m_bdec, 2, 2, d, 0);
    VIEW("adam.v.b_dec", XC_ST_F32, 4, e->v_bdec, 2, 2, d, 0);
    VIEW("latent.since_fired", XC_ST_U64, 8, e->since_fired, 1, F, 0, 0);
    VIEW("latent.fired", XC_ST_U64, 8, e->fired, 1, F, 0, 0);
    VIEW("latent.sum_act", XC_ST_F64, 8, e->sum_act, 1, F, 0, 0);
    VIEW("latent.max_act", XC_ST_F32, 4, e->max_act, 1, F, 0, 0);
    VIEW("latent.freq", XC_ST_F32, 4, e->freq, 1, F, 0, 0);
    VIEW("latent.last_fired", XC_ST_I64, 8, e->last_fired, 1, F, 0, 0);
    VIEW("scaling.sums", XC_ST_F64, 8, e->ls_run, 2, F, LS_N, 0);
    VIEW("step", XC_ST_I64, 8, &e->step, 0, 0, 0, 0);
    VIEW("tokens", XC_ST_U64, 8, &e->tokens, 0, 0, 0, 0);
    VIEW("rng", XC_ST_U64, 8, e->rng.s, 1, 4, 0, 0);
    /* theta, the selection prefilter (tau, tau_frac) and its fallback count */
    e->scal[0] = e->theta;
    e->scal[1] = e->tau;
    e->scal[2] = e->tau_frac;
    e->scal[3] = (double)e->n_full_select;
    VIEW("scalars", XC_ST_F64, 8, e->scal, 1, 4, 0, 0);
#undef VIEW
    return n < max ? n : max;
}

void xc_engine_state_restored(xc_engine_t *e)
{
    e->theta = e->scal[0];
    e->tau = (float)e->scal[1];
    e->tau_frac = (float)e->scal[2];
    e->n_full_select = (long)e->scal[3];
    e->norms_valid = 0;
    ensure_norms(e);
    e->met.step = e->step;
    e->met.tokens = e->tokens;
    e->met.theta = e->theta;
    int n_dead = 0;
    for (int j = 0; j < e->F; j++) n_dead += e->since_fired[j] >= (uint64_t)e->cfg.dead_tokens;
    e->met.n_dead = n_dead;
    e->met.dead_fraction = (double)n_dead / e->F;
}
