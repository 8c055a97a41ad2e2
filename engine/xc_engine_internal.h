/* The engine's insides, shared by its files and by nothing else (the public API is
 * xc_engine.h). Who does what:
 *   engine.c    configuration check, the training step (encoder product, sparse
 *               decode, gradients, Adam, statistics), inference, accessors
 *   tensors.c   the tensor table below: one allocation, named views, state views
 *   select.c    BatchTopK selection: score the encoder product, keep the top k*B
 *   auxk.c      AuxK: the dead latents' auxiliary loss and its gradient entries
 *   l1.c        the L1 baseline's dense forward and backward
 *   codenorm.c  the code normalisation s_j (CodeNormalization), decoupled's per-model
 *               selections and their union, BatchTopK's k-annealing schedule
 *   scaling.c   Latent Scaling: running estimates and the exact pass
 *   geomedian.c the geometric median that initialises b_dec
 * Everything here is pure compute: no file, socket or message code. */
#ifndef XC_ENGINE_INTERNAL_H
#define XC_ENGINE_INTERNAL_H

#include "xc_coll.h"
#include "xc_engine.h"
#include "xc_error.h"
#include "xc_pool.h"
#include "xc_rng.h"

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define XC_HAVE_AVX512_PATH 1
#endif

#define XC_NBUCKET 32768             /* selection histogram: top 16 bits of a positive float */
#define XC_LS_CHUNK 256              /* tokens per pass of L1's Latent Scaling second moments */
#define XC_ENGINE_MAX_KEEP_D 8192    /* b_dec restored on a skipped first step up to this d */

/* Latent Scaling sums per latent: sum f^2, sum f<v,e^base>, sum f<v,e^chat>,
 * sum f<v,xhat^base>, sum f<v,xhat^chat>, count, then the second moments
 * sum <v,e^chat>^2 and sum <v,xhat^chat>^2 that give the chat betas' standard
 * errors (v = the chat decoder row; every sum over the tokens where j fires). */
enum { LS_F2 = 0, LS_E0, LS_E1, LS_R0, LS_R1, LS_CNT, LS_EE1, LS_RR1, LS_N };

typedef struct {
    int b, j;    /* token, latent */
    float r, u;  /* score u s, activation u */
} xc_cand_t;

typedef struct {
    float r;
    int j;
} xc_scored_t;

/* The sizes every tensor shape below is written in. */
typedef struct {
    size_t F, d, d2, B;
    size_t K;    /* k*B selected entries (BatchTopK), 0 for L1 */
    size_t KA;   /* B * kaux_max AuxK entries (BatchTopK), 0 for L1 */
    size_t L1;   /* 1 for the L1 model (its dense extras), else 0 */
    size_t DC;   /* 1 for BatchTopK with decoupled codes, else 0 */
    size_t nth;  /* compute threads */
    size_t FW;   /* F rounded up to a whole cache line of xc_scored_t (per-worker stride) */
} xc_engine_dims_t;

/* ---------------------------------------------------------------- the tensor table
 * Every array the engine owns, written once. xc_engine_new lays them out in ONE
 * 64-byte-aligned allocation (tensors.c) and points the named fields of xc_engine
 * at their slices; xc_engine_destroy frees that one block; xc_engine_state_views
 * walks the SAVED rows, in this order, for checkpoints (their names, dtypes, shapes
 * and order are the checkpoint format: proto/CHECKPOINT.md). Shapes are
 * expressions over z (xc_engine_dims_t); a factor of 0 gives an empty tensor.
 *
 *   SAVED(field, ctype, kind, key, dtype, ndim, s0, s1, s2)  part of the training state
 *   WORK(field, ctype, kind, s0, s1, s2)                     rebuilt by a step or a restore
 *
 * kind: PARAM (trained parameters), ADAM (their moments), STATE (per-latent counters
 * and sums carried across steps), GRAD (this step's gradients), SCRATCH (caches and
 * per-step work space). The per-worker candidate lists are the only engine arrays
 * outside the block: they grow on demand (select.c). */
#define XC_ENGINE_TENSORS(SAVED, WORK)                                                              \
    /* parameters: row j = latent j's encoder column / decoder row, base half then chat half */   \
    SAVED(w_enc, float, PARAM, "w_enc", XC_ST_F32, 3, z.F, 2, z.d)                                 \
    SAVED(b_enc, float, PARAM, "b_enc", XC_ST_F32, 1, z.F, 1, 1)                                   \
    SAVED(w_dec, float, PARAM, "w_dec", XC_ST_F32, 3, z.F, 2, z.d)                                 \
    SAVED(b_dec, float, PARAM, "b_dec", XC_ST_F32, 2, 2, z.d, 1)                                   \
    /* Adam's first (m) and second (v) moments, shaped as their parameter */                      \
    SAVED(m_enc, float, ADAM, "adam.m.w_enc", XC_ST_F32, 3, z.F, 2, z.d)                           \
    SAVED(v_enc, float, ADAM, "adam.v.w_enc", XC_ST_F32, 3, z.F, 2, z.d)                           \
    SAVED(m_benc, float, ADAM, "adam.m.b_enc", XC_ST_F32, 1, z.F, 1, 1)                            \
    SAVED(v_benc, float, ADAM, "adam.v.b_enc", XC_ST_F32, 1, z.F, 1, 1)                            \
    SAVED(m_dec, float, ADAM, "adam.m.w_dec", XC_ST_F32, 3, z.F, 2, z.d)                           \
    SAVED(v_dec, float, ADAM, "adam.v.w_dec", XC_ST_F32, 3, z.F, 2, z.d)                           \
    SAVED(m_bdec, float, ADAM, "adam.m.b_dec", XC_ST_F32, 2, 2, z.d, 1)                            \
    SAVED(v_bdec, float, ADAM, "adam.v.b_dec", XC_ST_F32, 2, 2, z.d, 1)                            \
    /* per-latent statistics */                                                                  \
    SAVED(since_fired, uint64_t, STATE, "latent.since_fired", XC_ST_U64, 1, z.F, 1, 1)             \
    SAVED(fired, uint64_t, STATE, "latent.fired", XC_ST_U64, 1, z.F, 1, 1)                         \
    SAVED(sum_act, double, STATE, "latent.sum_act", XC_ST_F64, 1, z.F, 1, 1)                       \
    SAVED(max_act, float, STATE, "latent.max_act", XC_ST_F32, 1, z.F, 1, 1)                        \
    SAVED(freq, float, STATE, "latent.freq", XC_ST_F32, 1, z.F, 1, 1)                              \
    SAVED(last_fired, int64_t, STATE, "latent.last_fired", XC_ST_I64, 1, z.F, 1, 1)                \
    SAVED(ls_run, double, STATE, "scaling.sums", XC_ST_F64, 2, z.F, LS_N, 1)                       \
    /* gradients (latent rows valid where has_grad) */                                            \
    WORK(g_enc, float, GRAD, z.F, 2, z.d)                                                          \
    WORK(g_benc, float, GRAD, z.F, 1, 1)                                                           \
    WORK(g_dec, float, GRAD, z.F, 2, z.d)                                                          \
    WORK(g_bdec, float, GRAD, 2, z.d, 1)                                                           \
    WORK(has_grad, unsigned char, SCRATCH, z.F, 1, 1)                                              \
    /* decoder row norms (F, 2) and s = their sum, the code normalisation */                      \
    WORK(nrm, float, SCRATCH, z.F, 2, 1)                                                           \
    WORK(s, float, SCRATCH, z.F, 1, 1)                                                             \
    /* decoupled: model m's norms ||d_j^m|| at s_m[m F + j], its selection's s (codenorm.c) */     \
    WORK(s_m, float, SCRATCH, 2, z.F, 1)                                                           \
    /* AuxK: this step's dead mask and list */                                                    \
    WORK(dead, unsigned char, SCRATCH, z.F, 1, 1)                                                  \
    WORK(dead_list, int, SCRATCH, z.F, 1, 1)                                                       \
    /* Latent Scaling: this step's sums; L1 only: U^T E and U^T X */                               \
    WORK(ls_step, double, SCRATCH, z.F, LS_N, 1)                                                   \
    WORK(ls_t1, float, SCRATCH, z.L1 * z.F, 2, z.d)                                                \
    WORK(ls_t2, float, SCRATCH, z.L1 * z.F, 2, z.d)                                                \
    /* L1 only: per-token projections <v, e^chat>, <v, x^chat> of XC_LS_CHUNK tokens */             \
    WORK(ls_p, float, SCRATCH, z.L1 * 2 * XC_LS_CHUNK, z.F, 1)                                     \
    /* step: pre-activations (then u in place), L1's dL/du, residual e = x - xhat, dR/dxhat,     \
     * d(aux)/d ehat, the AuxK reconstruction, and e = gscale * dR/dxhat per token and model */   \
    WORK(pre, float, SCRATCH, z.B, z.F, 1)                                                         \
    WORK(dpre, float, SCRATCH, z.L1 * z.B, z.F, 1)                                                 \
    WORK(resid, float, SCRATCH, z.B, 2, z.d)                                                       \
    WORK(gx, float, SCRATCH, z.B, 2, z.d)                                                          \
    WORK(hx, float, SCRATCH, z.B, 2, z.d)                                                          \
    WORK(ehat, float, SCRATCH, z.B, 2, z.d)                                                        \
    WORK(gscale, float, SCRATCH, z.B, 2, 1)                                                        \
    /* the selection as CSR over tokens: entry p = (ent_row, col) with f = val, dL/df = gval */   \
    WORK(row_ptr, long, SCRATCH, z.B + 1, 1, 1)                                                    \
    WORK(row_cnt, long, SCRATCH, z.B, 1, 1)                                                        \
    WORK(col, int, SCRATCH, z.K, 1, 1)                                                             \
    WORK(ent_row, int, SCRATCH, z.K, 1, 1)                                                         \
    WORK(sel_col, int, SCRATCH, z.K, 1, 1)   /* col as global latent indices (sharded only) */    \
    WORK(val, float, SCRATCH, z.K, 1, 1)                                                           \
    WORK(gval, float, SCRATCH, z.K, 1, 1)                                                          \
    /* decoupled: which models selected each entry (bit 0 base, bit 1 chat) and the per-model  \
     * selections' rows while they are merged (codenorm.c) */                                    \
    WORK(emask, unsigned char, SCRATCH, z.K, 1, 1)                                                 \
    WORK(dc_ptr, long, SCRATCH, 2 * z.DC, z.B + 1, 1)                                              \
    /* AuxK entries: token b's at b * kaux_max, aux_ptr[b+1] of them */                           \
    WORK(aux_ptr, long, SCRATCH, z.B + 1, 1, 1)                                                    \
    WORK(aux_col, int, SCRATCH, z.KA, 1, 1)                                                        \
    WORK(aux_row, int, SCRATCH, z.KA, 1, 1)                                                        \
    WORK(aux_val, float, SCRATCH, z.KA, 1, 1)                                                      \
    WORK(aux_gval, float, SCRATCH, z.KA, 1, 1)                                                     \
    /* CSC over latents (main then AuxK entries) for the gradient pass */                         \
    WORK(lat_ptr, long, SCRATCH, z.F + 1, 1, 1)                                                    \
    WORK(lat_cnt, int, SCRATCH, z.F, 1, 1)                                                         \
    WORK(lat_ent, int, SCRATCH, z.K + z.KA, 1, 1)                                                  \
    /* selection: merged histogram; per worker: histogram, AuxK scores, residual sums */          \
    WORK(hist64, uint64_t, SCRATCH, XC_NBUCKET, 1, 1)                                              \
    WORK(w_hist, uint32_t, SCRATCH, z.nth, XC_NBUCKET, 1)                                          \
    WORK(w_dead_sc, xc_scored_t, SCRATCH, z.nth, z.FW, 1)                                          \
    WORK(w_acc, double, SCRATCH, z.nth, 4, z.d2)

/* Per-worker scratch: slices of the block (hist, dead_sc, acc) and the growable
 * candidate list (owned, heap). */
typedef struct {
    uint32_t *hist;       /* (XC_NBUCKET) */
    xc_cand_t *cand;      /* boundary candidates; grows on demand */
    long ncand, cand_cap;
    xc_scored_t *dead_sc; /* (F) AuxK candidates of one token */
    double *acc;          /* (4, 2d): sum e, sum e^2, sum x, sum x^2 */
    double l2, mse, aux_num, sq, l1;
    long npos;
    float rmin;
    float rmin_m[2];      /* decoupled: smallest selected u ||d_j^m|| per model */
} xc_worker_t;

/* The BatchTopK selection's state between steps (select.c). */
typedef struct {
    float tau, tau_frac;        /* fast-path filter: tau = tau_frac * last cut-off */
    long last_ncand, n_full;    /* candidates of the last step; full-path steps so far */
    int fill_phase;             /* full path, pass C: 0 count, 1 fill */
    int use_avx512;             /* the CPU runs the AVX-512 prefilter */
    int sel_all;                /* fewer positives than K: take every positive */
    long bucket_t;              /* boundary bucket */
    float cut_r;                /* kept: bucket > bucket_t, or r > cut_r, or r == cut_r && idx <= cut_idx */
    long cut_idx;
} xc_select_state_t;

#define XC_TENSOR_FIELD(f, ctype, ...) ctype *f;

struct xc_engine {
    xc_engine_config_t cfg;
    /* F: the latents this engine holds (its shard); Fg = dict_size, lo = the
     * global index of local latent 0 (xc_coll.h). Unsharded: F = Fg, lo = 0. */
    int d, d2, F, B, K, kaux_max, nth;
    int Fg;
    long lo;
    xc_coll_t *coll;            /* borrowed (xc_coll_single() when unsharded) */
    void *gbuf;                 /* owned, grows: gathered boundary / AuxK candidates */
    size_t gcap;
    float *xbuf;                /* owned, grows: encode's gathered codes */
    size_t xcap;
    xc_scored_t *abuf;          /* owned, grows: this shard's AuxK candidates (B, k_aux) */
    size_t acap;
    /* this step's all-reduced values: selected entries, dead latents after the
     * step, smallest selected score */
    long nnz_g;
    int n_dead_g;
    float rmin_g;
    int K_alloc;                /* entries the selection scratch holds: max(k, k_max) * B */
    xc_pool_t *pool;            /* owned */
    xc_worker_t *w;             /* (nth) owned */
    void *block;                /* owned: every tensor of the table */
    size_t block_bytes;
    XC_ENGINE_TENSORS(XC_TENSOR_FIELD, XC_TENSOR_FIELD)
    int norms_valid;            /* nrm and s match w_dec */
    int n_dead_list, k_aux;
    long nnz, aux_nnz;          /* selected entries, AuxK entries of this step */
    xc_select_state_t sel;
    xc_select_state_t sel1;     /* decoupled: the chat model's selection state (sel: the base model's) */
    int dc;                     /* BatchTopK with decoupled codes (per-model selections) */
    long nnz_m[2];              /* decoupled: entries each model selected this step */
    /* reduced-precision scoring (score.c); NULL: the fp32 sgemm scores */
    xc_score_t *score;          /* owned */
    int pre_approx;             /* this step's pre is approximate (exact only where recomputed) */
    float *exact_buf;           /* (nth, XC_EXACT_COLS * (d2 + B)) exact-column scratch; owned */

    const float *x;             /* borrowed batch during a step */
    long n;                     /* rows in the current pass (B, or an encode chunk) */
    int commit;                 /* a training step (1) or compute_grads (0) */
    double aux_denom, grad_scale, lr_t, bc1, bc2;
    double theta;
    double theta_m[2];          /* decoupled: per-model thresholds, theta_m[0] == theta */
    long step;
    uint64_t tokens;
    xc_engine_metrics_t met;
    xc_rng_t rng;
    double scal[4];             /* theta, tau, tau_frac, full selects: saved with the state */
    float *fve_w;               /* (2d) per-dimension FVE weights (xc_engine_set_fve_weights); NULL = 1; owned */
};

/* ---------------------------------------------------------------- shared helpers */

static inline uint32_t xc_fbits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* u = ReLU(pre + b_enc): one expression everywhere, so every pass sees the same float. */
static inline float xc_relu_u(const xc_engine_t *e, const float *pre_row, int j)
{
    float v = pre_row[j] + e->b_enc[j];
    return v > 0.0f ? v : 0.0f;
}

/* ---------------------------------------------------------------- collectives
 * The engine's only way to its peers (xc_coll.h): thin wrappers that keep the
 * call sites short. Each returns 0 or XC_ECOLL. */
static inline int xc_ar(xc_engine_t *e, void *buf, long n, xc_coll_type_t t, xc_coll_op_t op)
{
    return e->coll->allreduce(e->coll, buf, n, t, op) ? XC_ECOLL : 0;
}
/* allgatherv of variable-size contributions: the sizes first (one i64 each), then
 * the data into *buf, grown to fit (owned by the caller, realloc'd); *total =
 * bytes received. XC_ENOMEM, XC_ECOLL. */
int xc_engine_allgather_var(xc_engine_t *e, const void *send, size_t bytes, void **buf, size_t *cap,
                            size_t *total);

/* tensors.c */
int xc_engine_alloc_tensors(xc_engine_t *e);
void xc_engine_free_tensors(xc_engine_t *e);

/* engine.c */
void xc_engine_ensure_norms(xc_engine_t *e);
void xc_engine_worker_reset(xc_engine_t *e, xc_worker_t *w);
void xc_engine_residual_row(xc_engine_t *e, xc_worker_t *w, long b);
void xc_engine_enc_gemm_task(void *ctx, int tid, int nth);

/* ---------------------------------------------------------------- the selection boundary
 * "Score the encoder product and select the top k*B" (select.c), one call per
 * BatchTopK training forward, after the encoder product:
 *
 *   in:  e->pre (B, F) = X W_enc^T in float32 (enc_gemm_task, the scorer), e->b_enc,
 *        e->s (code normalisation, valid), e->sel (the prefilter carried from the
 *        last step), e->w[t].cand (per-worker lists, grown as needed)
 *   out: the exact top k*B of r = u s, u = ReLU(pre + b_enc) (xc_relu_u), ties broken
 *        towards the lower flat index b*F + j, as CSR: row_ptr (B+1), col, val (= u),
 *        ent_row, nnz; e->met.select_candidates / full_selects; e->sel for next step.
 *
 * The result depends only on the scores, never on which path ran (prefilter or full
 * histogram). Later passes read e->pre too: AuxK re-derives u of the dead latents
 * from it, and the running statistics use val. A reduced-precision scorer may
 * therefore compute approximate scores to choose candidates, but must leave e->pre
 * exact (float32) wherever a later pass reads it and must select on the exact r.
 * Such a scorer (engine/score.c, xc_score_candidates) hands its candidates to
 * xc_select_from_candidates below instead of calling xc_select_topk; both end in
 * the same exact rule (select_listed).
 * A latent-sharded engine needs collectives inside the selection at exactly two
 * points, each one function in select.c: the histograms (merge_hist, and the
 * candidates' histogram in select_listed: a sum over shards) and the boundary
 * candidates (cut_boundary: a gather of bucket_t's entries); the CSR fill is
 * local to a shard's latents. Outside the selection the step combines latents
 * of every shard in four places: the reconstruction (decode_sparse_task, a sum
 * before the residual), AuxK (aux_fwd_task: per token the top k_aux over all
 * shards' dead latents, then a sum), the squared gradient norm (the workers' sq
 * in forward_backward, a sum) and theta's sample (the workers' rmin, a min). */
int xc_select_topk(xc_engine_t *e);
/* The same selection from a reduced-precision scorer's candidates (row order,
 * exact u and r, a superset of the top k*B: xc_score.h) instead of e->pre. */
int xc_select_from_candidates(xc_engine_t *e, const xc_score_cand_t *c, long n);
/* engine.c: after reduced-precision scoring, pre[:, cols] recomputed in fp32
 * (the dead latents AuxK reads). */
#define XC_EXACT_COLS 64
void xc_engine_exact_columns(xc_engine_t *e, const int *cols, int n);
/* Initial prefilter state (the first step runs the full path) and the
 * per-worker candidate lists; XC_ENOMEM. */
int xc_select_init(xc_engine_t *e);
/* Frees the per-worker candidate lists. */
void xc_select_free(xc_engine_t *e);

/* auxk.c: builds the dead list from lat_cnt, runs AuxK (forward, backward
 * entries) over every shard's dead latents (n_dead_g, from count_dead); *aux =
 * the AuxK value (0 when none dead). 0, XC_ENOMEM, XC_ECOLL. */
int xc_auxk_run(xc_engine_t *e, double *aux);

/* l1.c: the L1 model's dense passes on e->x after u = ReLU(PRE + b_enc) in
 * e->pre: decode (residual, loss sums, dL/du in dpre), then gradients (with
 * the workers' sq, met.l1, lat_cnt and met.l0). */
void xc_l1_decode(xc_engine_t *e);
void xc_l1_grad(xc_engine_t *e);

/* codenorm.c: s_j from the row's decoder norms (xc_code_norm_t); the L1
 * penalty's gradient through them, ds/dd^m = a_model d^m/||d^m|| + a_concat d^m/||d||. */
float xc_code_norm_s(const xc_engine_config_t *c, float nb, float nc);
/* decoupled: the two models' selections (xc_select_topk with s = s_m[m]), merged
 * into one CSR whose entries carry emask; nnz_m per model. */
int xc_code_select_decoupled(xc_engine_t *e);
void xc_code_norm_grad(const xc_engine_config_t *c, double *a_model, double *a_concat);

/* scaling.c: beta and nu of one latent from its sums and decoder row (2d floats). */
void xc_scaling_from_sums(const double *ls, const float *dec, int d, double min_active, double min_z,
                          xc_scaling_stats_t *o);

#endif
