/* Encoder scoring at reduced precision with exact selection (pure compute).
 *
 * BatchTopK only has to *rank* the B x F pre-activations P = X W_enc^T; the k*B
 * entries it keeps can be recomputed exactly. The scorer computes an approximate
 * P~ with a bf16 or int8 matrix product (oneDNN, which dispatches to AVX512-BF16
 * or VNNI at run time), bounds the error of every entry, recomputes exactly (an
 * fp32 dot product per entry) every entry that can reach the exact cut-off, and
 * hands them, in row order, to the engine's exact selection.
 *
 * The bound (proven; score.c has the proof). Per token x and latent row w, with
 * x~, w~ their quantized values and the outlier dimensions (kept in fp32) left
 * out of the norms:
 *     |P - P~| <= ||x - x~|| ||w|| + ||x~|| ||w - w~|| + gamma ||x|| ||w||,
 * gamma covering fp32 rounding. The norms are O(B + F) per call. An entry's
 * score r = ReLU(P + b_enc) s then lies in [lo, hi].
 * The candidates, exact by construction: c_low = the K-th largest lo is a lower
 * bound of the exact K-th largest score c; the K entries of largest approximate
 * score (over every shard when sharded) are recomputed first, and the K-th largest of their
 * exact scores, c_ex, is another (usually close to c); every entry with
 * hi >= max(c_low, c_ex) is recomputed and kept. An entry of the exact top K
 * has hi >= r >= c, so it is always among them, whatever the data.
 * Each recomputed entry's measured error is checked against the bound (a
 * guard: a violation means a bug or non-finite input, and the call returns
 * XC_EAGAIN so the caller scores in fp32). When more than 48 K entries, or
 * more than both 4% of the B F entries and 4 K, would have to be recomputed (each exact
 * entry gathers a token row, so that costs more than the fp32 product), the
 * call returns XC_EAGAIN too, and the next 1, 2, 4, .. 64 calls (doubling while
 * it recurs) return it at once, without the low-precision product.
 * For comparison, XC_SCORE_MARGIN=calibrated (int8 only) runs the statistical
 * margin: a fraction lambda of the bound, calibrated on the measured errors of
 * each call and widened (the call redone with the proven bound) when they come
 * within a factor 2 of it; it needs fewer candidates but is not a proof.
 * The selected values never depend on the margin or on the path: they are the
 * exact recomputes.
 * Outlier dimensions (per-dimension max |x| far above the median, as in real LM
 * residual streams) stay in fp32: they are left out of the low-precision product
 * and added exactly, so they do not coarsen every other dimension's scale.
 * Without oneDNN (or a CPU without the instructions) only fp32 is available. */
#ifndef XC_SCORE_H
#define XC_SCORE_H

#include "xc_coll.h"
#include "xc_pool.h"

#include <stddef.h>

typedef enum { XC_PREC_FP32 = 0, XC_PREC_AUTO, XC_PREC_BF16, XC_PREC_INT8 } xc_prec_t;

/* "auto", "fp32", "bf16", "int8". */
const char *xc_prec_name(xc_prec_t p);
/* 0 or XC_EINVAL. */
int xc_prec_parse(const char *s, xc_prec_t *out);
/* 1 when this build and CPU run p natively (fp32 always); else 0 with the reason. */
int xc_score_supported(xc_prec_t p, char *why, size_t why_len);
/* The precision a request runs at: auto = int8 with VNNI, else bf16 with native
 * BF16 (never emulated bf16), else fp32; an unsupported request = fp32. */
xc_prec_t xc_score_resolve(xc_prec_t requested);
/* The best ISA oneDNN dispatches to here ("avx512_core_bf16", "none" without
 * oneDNN); static string. */
const char *xc_score_isa(void);

/* A candidate entry with its exact activation u = ReLU(P + b_enc) and score r = u s. */
typedef struct {
    int b, j;
    float r, u;
} xc_score_cand_t;

typedef struct {
    long steps;            /* scoring calls */
    long fallbacks;        /* calls whose margin check failed: candidates redone with the proven bound */
    long fp32_calls;       /* calls that returned XC_EAGAIN (too many candidates: score in fp32) */
    long full_passes;      /* calls that needed the histogram pass */
    long candidates;       /* entries recomputed exactly in the last call */
    float c_low, c_cut;    /* last call: K-th largest lower bound; the cut candidates had to reach */
    int outliers;          /* fp32 outlier dimensions of the last call */
    double lambda;         /* margin used, as a fraction of the proven bound (1 unless calibrated) */
    double max_ratio;      /* last call: max measured |P - P~| / proven bound */
    double ms_quant, ms_matmul, ms_cand, ms_exact; /* last call's phases */
} xc_score_stats_t;

typedef struct xc_score xc_score_t;

/* A scorer for fixed shapes: B tokens of d2 values, F latents, a pool of nth
 * workers (the caller's). prec must be bf16 or int8 and supported. NULL on
 * failure with *err set (XC_EINVAL unsupported, XC_ENOMEM, XC_ESTATE oneDNN) and
 * a reason in why. The scorer owns its buffers; free with xc_score_destroy. */
xc_score_t *xc_score_new(xc_prec_t prec, int B, int d2, int F, xc_pool_t *pool, int *err, char *why,
                         size_t why_len);
void xc_score_destroy(xc_score_t **s);
xc_prec_t xc_score_prec(const xc_score_t *s);
/* A latent-sharded engine's scorer (F = the shard's latents): every count, bound
 * and verdict that chooses candidates or a path is then taken over all shards
 * through coll (borrowed; NULL = one process), so the shards' candidates together
 * contain the global top K, and xc_score_candidates is COLLECTIVE: it returns
 * XC_EAGAIN on every shard or on none (XC_ECOLL: a peer failed). */
void xc_score_set_coll(xc_score_t *s, xc_coll_t *coll);
/* oneDNN's implementation of the product ("brg:avx512_core_vnni"); static until destroy. */
const char *xc_score_kernel(const xc_score_t *s);

/* Scores x (B, d2) against w (F, d2) (rows = encoder columns), b_enc (F), s (F,
 * >= 0) and returns candidates (row order, b then j) that contain every entry of
 * the exact top-K of r = ReLU(P + b_enc) s (r > 0), with exact u and r.
 * work: caller-owned scratch of B*F floats (overwritten with P~). *cand stays
 * valid until the next call. XC_EAGAIN: too many candidates (XC_SCORE_CAND_LIMIT
 * in the environment sets the limit, in units of K); score this batch in fp32
 * (nothing else changed). XC_ENOMEM. */
int xc_score_candidates(xc_score_t *s, const float *x, const float *w, const float *b_enc,
                        const float *sc, long K, float *work, const xc_score_cand_t **cand,
                        long *ncand);
/* For tests: margin as a fixed fraction of the proven bound (0 = the default:
 * the proven bound, or calibrated with XC_SCORE_MARGIN=calibrated). A tiny value
 * forces the redo with the proven bound. The environment variable XC_SCORE_LAMBDA
 * sets it for every scorer created afterwards. */
void xc_score_force_lambda(xc_score_t *s, double lambda);
const xc_score_stats_t *xc_score_stats(const xc_score_t *s);
/* 1 when the scorer runs the statistical margin (XC_SCORE_MARGIN=calibrated). */
int xc_score_calibrated(const xc_score_t *s);
/* For tests, after a call that did not fail for memory: the proven bound
 * (lambda 1) on |P - P~| of entry (b, j), P the exact pre-activation x_b . w_j
 * without b_enc and P~ = work[b F + j] as the call left it. */
double xc_score_entry_bound(const xc_score_t *s, int b, int j);

/* The exact value of an entry: an fp32 dot product in a fixed order (16 lanes
 * with AVX-512), the reference the scorer and its checks use. */
float xc_score_dot(const float *a, const float *b, int n);

#endif
