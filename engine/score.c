/* Encoder scoring at reduced precision with exact selection (see xc_score.h).
 *
 * One call:
 *   1. outlier dimensions: per-dimension max |x| over the batch; those above
 *      OUT_RATIO x the median (at most OUT_MAX) stay in fp32
 *   2. quantize X per token and W per latent (bf16, or int8 with absmax scales),
 *      outlier dimensions zeroed, and the norms the error bound needs
 *   3. the low-precision product (oneDNN; W passed as plain `ba`, its own layout,
 *      so no reorder runs) into the caller's B x F scratch
 *   4. per row: dequantize in place, add the outlier dimensions in fp32, bound each
 *      entry, collect entries whose upper bound reaches tau (last step's lower
 *      cut, a fraction of it); a histogram of the lower bounds when that fails
 *   5. the K-th largest lower bound is a lower bound c_low of the exact cut
 *   6. exact recompute, latent-major (one W row per latent in cache), in two
 *      passes (exact_passes): the K entries of largest approximate score, then every
 *      entry whose upper bound reaches max(c_low, the K-th largest exact score
 *      of pass 1)
 *
 * The bound and its proof. Let x be a token, w a latent's encoder row, O the
 * outlier dimensions and N the others; x_N, w_N their restrictions to N, x~ and
 * w~ the quantized x_N, w_N (bf16 rounding, or int8: q s with absmax scales),
 * e_x = x_N - x~ and e_w = w_N - w~ the residuals. Exactly,
 *     x.w = x~.w~ + e_x.w_N + x~.e_w + x_O.w_O,
 * since x_N.w_N = (x~ + e_x).w_N = x~.w_N + e_x.w_N = x~.w~ + x~.e_w + e_x.w_N.
 * The product computes x~.w~ (bf16: exact products, fp32 sums; int8: exact
 * int32 sums, then one conversion and two multiplications by the scales) and
 * adds x_O.w_O in fp32: P~ = x~.w~ + x_O.w_O + rho, rho its fp32 rounding.
 * By Cauchy-Schwarz, |e_x.w_N| <= ||e_x|| ||w_N|| and |x~.e_w| <= ||x~|| ||e_w||,
 * so
 *     |x.w - P~| <= ||e_x|| ||w_N|| + ||x~|| ||e_w|| + |rho|.
 * Rounding: a sum of n products in fp32 errs by at most n u sum|a_i b_i| (u =
 * 2^-24, n u << 1) <= n u ||a|| ||b||, so |rho| <= (d2 + OUT_MAX + 8) u
 * (||x~|| + ||x_O||)(||w~|| + ||w_O||), and the reference dot product (the
 * "exact" value the selection uses) differs from x.w by at most d2 u ||x|| ||w||.
 * Both are covered by gamma xa wa, gamma = 2 (d2 + OUT_MAX + 8) u 1.01, with
 * xa = ||x|| + ||e_x|| >= ||x~||, ||x||, and wa likewise. Every norm is a sum
 * of squares (fp32 lanes, or double) rounded up by NORM_UP, far above that
 * sum's relative rounding; the residuals' own rounding (u |x~_i| per value) is
 * below gamma's share. The score's roundings (b_enc, ReLU, s) are monotone and
 * covered by REL_EPS. Hence for every entry
 *     |P_ref - P~| <= delta = ||e_x|| ||w_N|| + ||x~|| ||e_w|| + gamma xa wa,
 * lo = ReLU(P~ + b - delta) s <= r <= ReLU(P~ + b + delta) s = hi, whatever the
 * data: the bound is worst-case over the direction of the residuals, O(B + F)
 * norms per call. It is about sqrt(d2) times the typical error (the residuals
 * are nearly orthogonal to w and x); the band of candidates it leaves is what
 * the two-pass recompute narrows.
 * Selection: c_low and c_ex are each a value that K entries' exact scores
 * reach, so both are <= c, the exact K-th largest score; an entry of the exact
 * top K has hi >= r >= c >= c_cut and is recomputed. lambda < 1 (the calibrated
 * margin, or a forced one) scales the first two terms and voids the proof; the
 * measured errors of the recomputed entries are then the check. */
#include "xc_score.h"

#include "xc_error.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef XC_HAVE_DNNL
#include <dnnl.h>
/* oneDNN here runs on OpenMP: its thread count is the calling thread's */
extern void omp_set_num_threads(int n);
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define XC_SCORE_AVX512 1
#endif

#define OUT_MAX 32        /* fp32 outlier dimensions at most */
#define OUT_RATIO 6.0f    /* outlier: max |x| of a dimension > OUT_RATIO x the median */
#define SAFETY 2.0        /* int8: measured errors must stay below lambda / SAFETY */
#define NBUCKET 32768     /* top 16 bits of a positive float */
#define TAU_FRAC 0.85f    /* next call's collect threshold, as a fraction of c_low */
#define COLLECT_LIMIT 16  /* a collect pass may keep at most this many times K */
#define CAND_LIMIT 48     /* candidates beyond this many times K: score in fp32 */
#define CAND_FRAC 0.04    /* or beyond this fraction of B F (and 4 K): gathering a token row per
                             entry, the exact recompute then costs more than the fp32 product */
#define BACKOFF_MAX 64    /* after such a call, the next 1, 2, 4, .. 64 calls go to fp32 at once */
#define NORM_UP 1.0005    /* norms rounded up: float sums of squares (16 lanes) stay below it */

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

static inline uint32_t fbits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float bitsf(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---------------------------------------------------------------- dispatch */

const char *xc_prec_name(xc_prec_t p)
{
    switch (p) {
    case XC_PREC_AUTO: return "auto";
    case XC_PREC_FP32: return "fp32";
    case XC_PREC_BF16: return "bf16";
    case XC_PREC_INT8: return "int8";
    }
    return "?";
}

int xc_prec_parse(const char *s, xc_prec_t *out)
{
    static const xc_prec_t all[] = {XC_PREC_AUTO, XC_PREC_FP32, XC_PREC_BF16, XC_PREC_INT8};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (s && strcmp(s, xc_prec_name(all[i])) == 0) {
            *out = all[i];
            return XC_OK;
        }
    return XC_EINVAL;
}

#ifdef XC_HAVE_DNNL
static int isa_has(unsigned want)
{
    unsigned isa = (unsigned)dnnl_get_effective_cpu_isa();
    return (isa & want) == want;
}
#endif

int xc_score_supported(xc_prec_t p, char *why, size_t why_len)
{
    if (p == XC_PREC_FP32) return 1;
    if (p == XC_PREC_AUTO) return 1;
#ifndef XC_HAVE_DNNL
    xc_why(why, why_len, "%s needs oneDNN (libdnnl-dev) at build time; this build has fp32 only",
           xc_prec_name(p));
    return 0;
#else
    if (p == XC_PREC_INT8) {
        if (isa_has(dnnl_cpu_isa_avx512_core_vnni) || isa_has(dnnl_cpu_isa_avx2_vnni)) return 1;
        xc_why(why, why_len, "int8 needs AVX-512 VNNI or AVX-VNNI; this CPU (oneDNN isa %s) has neither",
               xc_score_isa());
        return 0;
    }
    if (isa_has(dnnl_cpu_isa_avx512_core_bf16)) return 1;
    xc_why(why, why_len,
           "bf16 needs native AVX-512 BF16 (emulated bf16 is slower than fp32); this CPU (oneDNN isa %s) lacks it",
           xc_score_isa());
    return 0;
#endif
}

xc_prec_t xc_score_resolve(xc_prec_t requested)
{
    if (requested == XC_PREC_AUTO) {
        if (xc_score_supported(XC_PREC_INT8, NULL, 0)) return XC_PREC_INT8;
        if (xc_score_supported(XC_PREC_BF16, NULL, 0)) return XC_PREC_BF16;
        return XC_PREC_FP32;
    }
    return xc_score_supported(requested, NULL, 0) ? requested : XC_PREC_FP32;
}

const char *xc_score_isa(void)
{
#ifdef XC_HAVE_DNNL
    static const struct { unsigned isa; const char *name; } names[] = {
        {dnnl_cpu_isa_avx512_core_amx, "avx512_core_amx"},
        {dnnl_cpu_isa_avx512_core_bf16, "avx512_core_bf16"},
        {dnnl_cpu_isa_avx512_core_vnni, "avx512_core_vnni"},
        {dnnl_cpu_isa_avx512_core, "avx512_core"},
        {dnnl_cpu_isa_avx2_vnni, "avx2_vnni"},
        {dnnl_cpu_isa_avx2, "avx2"},
        {dnnl_cpu_isa_avx, "avx"},
        {dnnl_cpu_isa_sse41, "sse41"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (isa_has(names[i].isa)) return names[i].name;
    return "generic";
#else
    return "none (built without oneDNN)";
#endif
}

/* ---------------------------------------------------------------- exact dot */

#ifdef XC_SCORE_AVX512
__attribute__((target("avx512f"))) static float dot_avx512(const float *a, const float *b, int n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    if (i + 16 <= n) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        i += 16;
    }
    float s = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}
static int have_avx512(void)
{
    static int v = -1;
    if (v < 0) v = __builtin_cpu_supports("avx512f") ? 1 : 0;
    return v;
}
#endif

/* The exact value of an entry: an fp32 dot product in a fixed order (its
 * rounding, like any fp32 summation's, is covered by gamma in the bound). */
static float dot_f(const float *a, const float *b, int n)
{
#ifdef XC_SCORE_AVX512
    if (have_avx512()) return dot_avx512(a, b, n);
#endif
    float s = 0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

float xc_score_dot(const float *a, const float *b, int n) { return dot_f(a, b, n); }

/* ---------------------------------------------------------------- state */

typedef struct {
    int b, j;
    float lo, hi;  /* bounds of the score r */
    float pa;      /* approximate pre-activation */
} pend_t;

typedef struct {
    pend_t *c;
    long n, cap;
    uint32_t *hist;    /* (NBUCKET) */
    long npos;
    float *amax;       /* (d2) */
    double max_ratio;
    int violated;
} sworker_t;

struct xc_score {
    xc_prec_t prec;
    int B, d2, F, nth;
    xc_pool_t *pool;   /* borrowed */
    sworker_t *w;      /* (nth) owned */
    double gamma;      /* rounding bound factor */

    int n_out, out_idx[OUT_MAX];
    unsigned char *is_out;  /* (d2) */
    float *keepf;           /* (d2) 0 on outlier dimensions, 1 elsewhere */
    float *amax;            /* (d2) merged */

    void *xq;               /* (B, d2) u8 (int8, zero at 128) or bf16 */
    float *sx, *ex, *xqn, *xa, *xo; /* (B) scale, ||x - x~||, ||x~||, ||x|| + ||e||; xo (B, OUT_MAX) */
    void *wq;               /* (F, d2) s8 or bf16 */
    float *sw, *ew, *wn, *wa, *wo;  /* (F) scale, ||w - w~||, ||w||, ||w|| + ||e||; wo (OUT_MAX, F) */
    int32_t *wcomp;         /* (F) 128 * sum of the latent's int8 weights (u8 offset) */

    /* the current call */
    const float *x, *wt, *benc, *sc;
    float *work;
    long K;
    int mode;               /* 0 dequantize + collect, 1 collect, 2 histogram */
    float thr;              /* collect: upper bound >= thr */
    long limit;             /* collect: stop storing beyond this many per worker */
    float tau;              /* next call's collect threshold (0: histogram first) */
    double lambda, lambda_forced;
    int calibrate;          /* int8 only, XC_SCORE_MARGIN=calibrated: the statistical margin */
    int skip, backoff;      /* calls still to hand to fp32 at once; the last back-off */
    int pass;               /* exact_task: 1 the approximate top K, 2 the rest of the band */
    float c_cut;            /* pass 2 recomputes entries whose upper bound reaches this */
    double cand_limit;      /* candidates beyond cand_limit * K: XC_EAGAIN (score in fp32) */

    pend_t *all;            /* merged candidates, row order */
    long all_cap, nall;
    int *order;             /* candidates sorted by latent */
    long *jptr;             /* (F + 1) */
    xc_score_cand_t *out;   /* exact candidates, row order */
    unsigned char *mark;    /* (out_cap) 0 not recomputed, 1 in pass 1, 2 in pass 2 */
    float *tmpf;            /* (out_cap) scratch for the order statistics */
    long out_cap, nout;

    xc_coll_t *coll;        /* borrowed: the shards' collectives (xc_coll_single() alone) */
    float *bq;              /* kth_lower: every shard's lower bounds in the K-th's bucket; owned */
    long bq_cap;

    xc_score_stats_t st;
    char kernel[96];
#ifdef XC_HAVE_DNNL
    dnnl_engine_t eng;
    dnnl_stream_t strm;
    dnnl_primitive_desc_t pd;
    dnnl_primitive_t prim;
    dnnl_memory_t msrc, mwei, mdst;
#endif
};

/* ---------------------------------------------------------------- quantization */

static inline uint16_t to_bf16(float f)
{
    uint32_t u = fbits(f);
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even (inputs are finite) */
    return (uint16_t)(u >> 16);
}

static inline float from_bf16(uint16_t h) { return bitsf((uint32_t)h << 16); }

#ifdef XC_SCORE_AVX512
static inline double hsum(__m512 v) __attribute__((target("avx512f")));
static inline double hsum(__m512 v)
{
    float t[16];
    _mm512_storeu_ps(t, v);
    double s = 0;
    for (int i = 0; i < 16; i++) s += t[i];
    return s;
}

/* quant_vec, 16 values at a time (n a multiple of 16). */
__attribute__((target("avx512f"))) static float quant_vec_avx512(const xc_score_t *s, const float *v, void *dst,
                                                                   int off, double *e2, double *q2, double *v2,
                                                                   int32_t *qsum)
{
    int n = s->d2;
    __m512 se = _mm512_setzero_ps(), sq = se, sv = se;
    if (s->prec == XC_PREC_BF16) {
        const __m512i one = _mm512_set1_epi32(1), rnd = _mm512_set1_epi32(0x7fff);
        for (int i = 0; i < n; i += 16) {
            __m512 x = _mm512_mul_ps(_mm512_loadu_ps(v + i), _mm512_loadu_ps(s->keepf + i));
            __m512i u = _mm512_castps_si512(x);
            u = _mm512_add_epi32(u, _mm512_add_epi32(rnd, _mm512_and_si512(_mm512_srli_epi32(u, 16), one)));
            u = _mm512_srli_epi32(u, 16);
            _mm256_storeu_si256((__m256i *)((uint16_t *)dst + i), _mm512_cvtepi32_epi16(u));
            __m512 xq = _mm512_castsi512_ps(_mm512_slli_epi32(u, 16)), r = _mm512_sub_ps(x, xq);
            se = _mm512_add_ps(se, _mm512_mul_ps(r, r));
            sq = _mm512_add_ps(sq, _mm512_mul_ps(xq, xq));
            sv = _mm512_add_ps(sv, _mm512_mul_ps(x, x));
        }
        *e2 = hsum(se), *q2 = hsum(sq), *v2 = hsum(sv);
        return 1.0f;
    }
    __m512 mx = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16)
        mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_mul_ps(_mm512_loadu_ps(v + i), _mm512_loadu_ps(s->keepf + i))));
    float amax = _mm512_reduce_max_ps(mx);
    float scale = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
    const __m512 vinv = _mm512_set1_ps(inv), vsc = _mm512_set1_ps(scale);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127), vo = _mm512_set1_epi32(off);
    __m512i qs = _mm512_setzero_si512();
    for (int i = 0; i < n; i += 16) {
        __m512 x = _mm512_mul_ps(_mm512_loadu_ps(v + i), _mm512_loadu_ps(s->keepf + i));
        __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(x, vinv)); /* round to nearest even, as lrintf */
        q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
        qs = _mm512_add_epi32(qs, q);
        _mm_storeu_si128((__m128i *)((unsigned char *)dst + i), _mm512_cvtepi32_epi8(_mm512_add_epi32(q, vo)));
        __m512 xq = _mm512_mul_ps(_mm512_cvtepi32_ps(q), vsc), r = _mm512_sub_ps(x, xq);
        se = _mm512_add_ps(se, _mm512_mul_ps(r, r));
        sq = _mm512_add_ps(sq, _mm512_mul_ps(xq, xq));
        sv = _mm512_add_ps(sv, _mm512_mul_ps(x, x));
    }
    *e2 = hsum(se), *q2 = hsum(sq), *v2 = hsum(sv);
    if (qsum) *qsum = 128 * _mm512_reduce_add_epi32(qs);
    return scale;
}
#endif

/* Quantizes one vector (outlier dims zeroed): int8 stores q + off (off 128 for
 * u8 activations, 0 for s8 weights). Returns the scale; norms of the residual,
 * of the quantized vector and of the original (non-outlier dims), in double. */
static float quant_vec(const xc_score_t *s, const float *v, void *dst, int off, double *e2, double *q2,
                       double *v2, int32_t *qsum)
{
    int n = s->d2;
    double se = 0, sq = 0, sv = 0;
    long qs = 0;
#ifdef XC_SCORE_AVX512
    if (have_avx512() && n % 16 == 0) return quant_vec_avx512(s, v, dst, off, e2, q2, v2, qsum);
#endif
    if (s->prec == XC_PREC_BF16) {
        uint16_t *h = dst;
        for (int i = 0; i < n; i++) {
            float x = s->is_out[i] ? 0.0f : v[i];
            h[i] = to_bf16(x);
            double xq = from_bf16(h[i]), r = (double)x - xq;
            se += r * r;
            sq += xq * xq;
            sv += (double)x * x;
        }
        *e2 = se, *q2 = sq, *v2 = sv;
        return 1.0f;
    }
    float amax = 0.0f;
    for (int i = 0; i < n; i++)
        if (!s->is_out[i] && fabsf(v[i]) > amax) amax = fabsf(v[i]);
    float scale = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
    unsigned char *q8 = dst;
    for (int i = 0; i < n; i++) {
        float x = s->is_out[i] ? 0.0f : v[i];
        long q = lrintf(x * inv);
        q = q > 127 ? 127 : q < -127 ? -127 : q;
        q8[i] = (unsigned char)(q + off);
        qs += q;
        double xq = (double)q * scale, r = (double)x - xq;
        se += r * r;
        sq += xq * xq;
        sv += (double)x * x;
    }
    *e2 = se, *q2 = sq, *v2 = sv;
    if (qsum) *qsum = (int32_t)(128 * qs);
    return scale;
}

/* Per-dimension max |x| over this worker's rows. */
static void amax_task(void *ctx, int tid, int nth)
{
    xc_score_t *s = ctx;
    long lo, hi;
    float *a = s->w[tid].amax;
    xc_pool_range(s->B, tid, nth, &lo, &hi);
    memset(a, 0, sizeof(float) * (size_t)s->d2);
    for (long b = lo; b < hi; b++) {
        const float *x = s->x + (size_t)b * s->d2;
        for (int i = 0; i < s->d2; i++) a[i] = fabsf(x[i]) > a[i] ? fabsf(x[i]) : a[i];
    }
}

static int cmp_f(const void *pa, const void *pb)
{
    float a = *(const float *)pa, b = *(const float *)pb;
    return (a > b) - (a < b);
}

/* Outlier dimensions: max |x| above OUT_RATIO x the median dimension's, the
 * OUT_MAX largest at most. Decided per batch, so a shift in the data moves them. */
static int find_outliers(xc_score_t *s)
{
    int d2 = s->d2;
    xc_pool_run(s->pool, amax_task, s);
    for (int i = 0; i < d2; i++) {
        float m = 0.0f;
        for (int t = 0; t < s->nth; t++) m = s->w[t].amax[i] > m ? s->w[t].amax[i] : m;
        s->amax[i] = m;
    }
    float *tmp = malloc(sizeof(float) * (size_t)d2);
    if (!tmp) return XC_ENOMEM;
    memcpy(tmp, s->amax, sizeof(float) * (size_t)d2);
    qsort(tmp, (size_t)d2, sizeof(float), cmp_f);
    float med = tmp[d2 / 2];
    free(tmp);
    for (int i = 0; i < d2; i++) {
        s->is_out[i] = 0;
        s->keepf[i] = 1.0f;
    }
    s->n_out = 0;
    if (!(med > 0.0f)) return XC_OK;
    for (int q = 0; q < OUT_MAX; q++) {
        int best = -1;
        for (int i = 0; i < d2; i++)
            if (!s->is_out[i] && s->amax[i] > OUT_RATIO * med && (best < 0 || s->amax[i] > s->amax[best]))
                best = i;
        if (best < 0) break;
        s->is_out[best] = 1;
        s->keepf[best] = 0.0f;
        s->out_idx[s->n_out++] = best;
    }
    return XC_OK;
}

static void xquant_task(void *ctx, int tid, int nth)
{
    xc_score_t *s = ctx;
    long lo, hi;
    size_t es = s->prec == XC_PREC_BF16 ? 2 : 1;
    xc_pool_range(s->B, tid, nth, &lo, &hi);
    for (long b = lo; b < hi; b++) {
        const float *x = s->x + (size_t)b * s->d2;
        double e2, q2, v2, o2 = 0;
        s->sx[b] = quant_vec(s, x, (char *)s->xq + (size_t)b * s->d2 * es, 128, &e2, &q2, &v2, NULL);
        for (int o = 0; o < s->n_out; o++) {
            float v = x[s->out_idx[o]];
            s->xo[(size_t)b * OUT_MAX + o] = v;
            o2 += (double)v * v;
        }
        s->ex[b] = (float)(sqrt(e2) * NORM_UP);
        s->xqn[b] = (float)(sqrt(q2) * NORM_UP);
        s->xa[b] = (float)((sqrt(v2 + o2) + sqrt(e2)) * NORM_UP);
    }
}

static void wquant_task(void *ctx, int tid, int nth)
{
    xc_score_t *s = ctx;
    long lo, hi;
    size_t es = s->prec == XC_PREC_BF16 ? 2 : 1;
    xc_pool_range(s->F, tid, nth, &lo, &hi);
    for (long j = lo; j < hi; j++) {
        const float *w = s->wt + (size_t)j * s->d2;
        double e2, q2, v2, o2 = 0;
        int32_t qs = 0;
        s->sw[j] = quant_vec(s, w, (char *)s->wq + (size_t)j * s->d2 * es, 0, &e2, &q2, &v2, &qs);
        s->wcomp[j] = qs;
        for (int o = 0; o < s->n_out; o++) {
            float v = w[s->out_idx[o]];
            s->wo[(size_t)o * s->F + j] = v;
            o2 += (double)v * v;
        }
        s->ew[j] = (float)(sqrt(e2) * NORM_UP);
        s->wn[j] = (float)(sqrt(v2) * NORM_UP);
        s->wa[j] = (float)((sqrt(v2 + o2) + sqrt(e2)) * NORM_UP);
    }
}

/* ---------------------------------------------------------------- candidates */

static int pend_reserve(pend_t **p, long *cap, long n)
{
    if (n <= *cap) return XC_OK;
    long c = n + n / 2 + 16;
    pend_t *q = realloc(*p, sizeof(pend_t) * (size_t)c);
    if (!q) return XC_ENOMEM;
    *p = q;
    *cap = c;
    return XC_OK;
}

/* the int8 product's int32 sums share the scratch with the floats they become */
typedef int32_t __attribute__((may_alias)) i32_alias_t;

#ifdef XC_SCORE_AVX512
/* dequant_row, 16 latents at a time, the outlier dimensions added in registers. */
__attribute__((target("avx512f"))) static int dequant_row_avx512(const xc_score_t *s, long b, float *row)
{
    int F = s->F, no = s->n_out, j = 0, i8 = s->prec == XC_PREC_INT8;
    const float *xo = s->xo + (size_t)b * OUT_MAX;
    const __m512 vsx = _mm512_set1_ps(s->sx[b]);
    for (; j + 16 <= F; j += 16) {
        __m512 acc;
        if (i8) {
            __m512i a = _mm512_sub_epi32(_mm512_loadu_si512(row + j), _mm512_loadu_si512(s->wcomp + j));
            acc = _mm512_mul_ps(_mm512_cvtepi32_ps(a), _mm512_mul_ps(vsx, _mm512_loadu_ps(s->sw + j)));
        } else {
            acc = _mm512_loadu_ps(row + j);
        }
        for (int o = 0; o < no; o++)
            acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_set1_ps(xo[o]), _mm512_loadu_ps(s->wo + (size_t)o * F + j)));
        _mm512_storeu_ps(row + j, acc);
    }
    return j;
}
#endif

/* Row b of P~: dequantize in place (int8) and add the outlier dimensions. */
static void dequant_row(const xc_score_t *s, long b, float *row)
{
    int F = s->F;
#ifdef XC_SCORE_AVX512
    if (have_avx512()) {
        int j0 = dequant_row_avx512(s, b, row);
        if (j0 == F) return;
        /* the tail: the scalar loop below on the last F - j0 latents */
        for (int j = j0; j < F; j++) {
            if (s->prec == XC_PREC_INT8) {
                int32_t a;
                memcpy(&a, row + j, sizeof a);
                row[j] = (float)(a - s->wcomp[j]) * (s->sx[b] * s->sw[j]);
            }
            for (int o = 0; o < s->n_out; o++) row[j] += s->xo[(size_t)b * OUT_MAX + o] * s->wo[(size_t)o * F + j];
        }
        return;
    }
#endif
    if (s->prec == XC_PREC_INT8) {
        const i32_alias_t *acc = (const i32_alias_t *)row;
        float sxb = s->sx[b];
        for (int j = 0; j < F; j++) row[j] = (float)(acc[j] - s->wcomp[j]) * (sxb * s->sw[j]);
    }
    for (int o = 0; o < s->n_out; o++) {
        float xv = s->xo[(size_t)b * OUT_MAX + o];
        const float *wo = s->wo + (size_t)o * F;
        for (int j = 0; j < F; j++) row[j] += xv * wo[j];
    }
}

/* Per-row constants of the bound: delta_j = A wn_j + C ew_j + G wa_j + |v| eps. */
typedef struct {
    float A, C, G;
} rowc_t;

static inline rowc_t row_consts(const xc_score_t *s, long b)
{
    rowc_t r = {(float)(s->lambda * s->ex[b]), (float)(s->lambda * s->xqn[b]),
                (float)(s->gamma * s->xa[b]) };
    return r;
}

#define REL_EPS 1e-6f  /* float rounding of v, delta and the products below */

static inline void bounds(const xc_score_t *s, rowc_t rc, const float *row, int j, float *lo, float *hi)
{
    float v = row[j] + s->benc[j];
    float dl = rc.A * s->wn[j] + rc.C * s->ew[j] + rc.G * s->wa[j] + fabsf(v) * REL_EPS + 1e-30f;
    float up = v + dl, dn = v - dl;
    *hi = up > 0.0f ? up * s->sc[j] * (1.0f + REL_EPS) : 0.0f;
    *lo = dn > 0.0f ? dn * s->sc[j] * (1.0f - REL_EPS) : 0.0f;
}

#ifdef XC_SCORE_AVX512
__attribute__((target("avx512f"))) static long collect_row_avx512(const xc_score_t *s, long b,
                                                                    const float *row, pend_t *out,
                                                                    long n, long cap)
{
    rowc_t rc = row_consts(s, b);
    const __m512 vA = _mm512_set1_ps(rc.A), vC = _mm512_set1_ps(rc.C), vG = _mm512_set1_ps(rc.G);
    const __m512 veps = _mm512_set1_ps(REL_EPS), vtiny = _mm512_set1_ps(1e-30f), z = _mm512_setzero_ps();
    const __m512 vup = _mm512_set1_ps(1.0f + REL_EPS), vdn = _mm512_set1_ps(1.0f - REL_EPS);
    const __m512 vt = _mm512_set1_ps(s->thr);
    const __m512i step = _mm512_set1_epi32(16);
    __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int F = s->F, j = 0;
    for (; j + 16 <= F; j += 16, idx = _mm512_add_epi32(idx, step)) {
        __m512 pa = _mm512_loadu_ps(row + j);
        __m512 v = _mm512_add_ps(pa, _mm512_loadu_ps(s->benc + j));
        __m512 dl = _mm512_fmadd_ps(vA, _mm512_loadu_ps(s->wn + j), vtiny);
        dl = _mm512_fmadd_ps(vC, _mm512_loadu_ps(s->ew + j), dl);
        dl = _mm512_fmadd_ps(vG, _mm512_loadu_ps(s->wa + j), dl);
        dl = _mm512_fmadd_ps(_mm512_abs_ps(v), veps, dl);
        __m512 sj = _mm512_loadu_ps(s->sc + j);
        __m512 hi = _mm512_mul_ps(_mm512_mul_ps(_mm512_max_ps(_mm512_add_ps(v, dl), z), sj), vup);
        __mmask16 m = _mm512_cmp_ps_mask(hi, vt, _CMP_GE_OQ) & _mm512_cmp_ps_mask(hi, z, _CMP_GT_OQ);
        if (!m) continue;
        __m512 lo = _mm512_mul_ps(_mm512_mul_ps(_mm512_max_ps(_mm512_sub_ps(v, dl), z), sj), vdn);
        int jj[16];
        float ll[16], hh[16], pp[16];
        int c = __builtin_popcount(m);
        _mm512_mask_compressstoreu_epi32(jj, m, idx);
        _mm512_mask_compressstoreu_ps(ll, m, lo);
        _mm512_mask_compressstoreu_ps(hh, m, hi);
        _mm512_mask_compressstoreu_ps(pp, m, pa);
        for (int q = 0; q < c; q++, n++)
            if (n < cap) out[n] = (pend_t){(int)b, jj[q], ll[q], hh[q], pp[q]};
    }
    for (; j < F; j++) {
        float lo, hi;
        bounds(s, rc, row, j, &lo, &hi);
        if (hi >= s->thr && hi > 0.0f) {
            if (n < cap) out[n] = (pend_t){(int)b, j, lo, hi, row[j]};
            n++;
        }
    }
    return n;
}
#endif

/* Appends the entries of row b whose upper bound reaches thr; returns the new
 * count (entries past cap are counted, not stored). */
static long collect_row(const xc_score_t *s, long b, const float *row, pend_t *out, long n, long cap)
{
#ifdef XC_SCORE_AVX512
    if (have_avx512()) return collect_row_avx512(s, b, row, out, n, cap);
#endif
    rowc_t rc = row_consts(s, b);
    for (int j = 0; j < s->F; j++) {
        float lo, hi;
        bounds(s, rc, row, j, &lo, &hi);
        if (hi >= s->thr && hi > 0.0f) {
            if (n < cap) out[n] = (pend_t){(int)b, j, lo, hi, row[j]};
            n++;
        }
    }
    return n;
}

static void cand_task(void *ctx, int tid, int nth)
{
    xc_score_t *s = ctx;
    sworker_t *w = &s->w[tid];
    long lo, hi, n = 0, npos = 0;
    xc_pool_range(s->B, tid, nth, &lo, &hi);
    if (s->mode == 2) memset(w->hist, 0, sizeof(uint32_t) * NBUCKET);
    for (long b = lo; b < hi; b++) {
        float *row = s->work + (size_t)b * s->F;
        if (s->mode == 0) dequant_row(s, b, row);
        if (s->mode == 2) {
            rowc_t rc = row_consts(s, b);
            for (int j = 0; j < s->F; j++) {
                float l, h;
                bounds(s, rc, row, j, &l, &h);
                if (l > 0.0f) {
                    w->hist[fbits(l) >> 16]++;
                    npos++;
                }
            }
        } else {
            long cap = w->cap < s->limit ? w->cap : s->limit;
            n = collect_row(s, b, row, w->c, n, cap);
        }
    }
    w->n = n;
    w->npos = npos;
}

/* An all-reduce over the shards; 0 or XC_ECOLL. */
static int sc_ar(xc_score_t *s, void *buf, long n, xc_coll_type_t t, xc_coll_op_t op)
{
    return s->coll->allreduce(s->coll, buf, n, t, op) ? XC_ECOLL : XC_OK;
}

/* Runs a collect pass at threshold thr. XC_EAGAIN when more than limit entries
 * (in all, over every shard), or more than both frac (if > 0) of every shard's
 * B F entries and 4 K, reach it; the lists grow as needed below that (locally), then one
 * all-reduce gives every shard the same verdict. */
static int collect(xc_score_t *s, float thr, long limit, double frac)
{
    int64_t v[3] = {0, 0, (int64_t)s->B * s->F}; /* entries, failures, B F */
    s->thr = thr;
    s->limit = limit;
    for (;;) {
        xc_pool_run(s->pool, cand_task, s);
        s->mode = 1; /* P~ is dequantized from here on */
        long total = 0;
        int again = 0;
        for (int t = 0; t < s->nth; t++) total += s->w[t].n;
        v[0] = total;
        if (total > limit) break;
        for (int t = 0; t < s->nth && !v[1]; t++)
            if (s->w[t].n > s->w[t].cap) {
                if (pend_reserve(&s->w[t].c, &s->w[t].cap, s->w[t].n)) v[1] = 1;
                again = 1;
            }
        if (!again || v[1]) break;
    }
    if (sc_ar(s, v, 3, XC_COLL_I64, XC_COLL_SUM)) return XC_ECOLL;
    if (v[1]) return XC_ENOMEM;
    double lim = limit;
    if (frac > 0 && fmax(frac * (double)v[2], 4.0 * s->K) < lim) lim = fmax(frac * (double)v[2], 4.0 * s->K);
    return (double)v[0] > lim ? XC_EAGAIN : XC_OK;
}

static int cmp_desc_f(const void *pa, const void *pb)
{
    float a = *(const float *)pa, b = *(const float *)pb;
    return (a < b) - (a > b);
}

/* The K-th largest of the values v[0..n) (>= 0) of every shard (0 when fewer
 * than K). A histogram of the values (summed over shards) finds the K-th's
 * bucket; that bucket's values, gathered from every shard and sorted, give the
 * exact value, the same on every shard and the same as one shard holding every
 * latent. failed: this shard could not build v (it still takes part). *out = 0
 * (a valid lower bound wherever this is used) when memory runs short. 0 or
 * XC_ECOLL. */
static int kth_global(xc_score_t *s, const float *v, long n, int failed, float *out)
{
    uint64_t *h = calloc(NBUCKET + 1, sizeof(uint64_t)); /* owned here; [NBUCKET]: failures */
    int64_t *cnt = calloc((size_t)s->coll->size, sizeof(int64_t));
    size_t *rb = calloc((size_t)s->coll->size, sizeof(size_t));
    int rc = XC_OK, R = s->coll->size;
    *out = 0.0f;
    if (failed || !h || !cnt || !rb) {
        /* still take part in the collectives with a failure mark */
        static uint64_t fail_h[NBUCKET + 1];
        fail_h[NBUCKET] = 1;
        rc = sc_ar(s, fail_h, NBUCKET + 1, XC_COLL_U64, XC_COLL_SUM);
        goto out;
    }
    for (long i = 0; i < n; i++) h[fbits(v[i]) >> 16]++;
    if ((rc = sc_ar(s, h, NBUCKET + 1, XC_COLL_U64, XC_COLL_SUM))) goto out;
    uint64_t total = 0;
    for (long q = 0; q < NBUCKET; q++) total += h[q];
    if (h[NBUCKET] || total < (uint64_t)s->K) goto out;
    long cum = 0, q = NBUCKET - 1;
    for (; q > 0; q--) {
        if (cum + (long)h[q] >= s->K) break;
        cum += (long)h[q];
    }
    long need = s->K - cum, mine = 0, all = (long)h[q];
    int64_t ok = 1;
    if (all > s->bq_cap) {
        float *p = realloc(s->bq, sizeof(float) * (size_t)all);
        if (p) s->bq = p, s->bq_cap = all;
        else ok = 0;
    }
    /* this shard's bounds of the bucket, then every shard's (counts first, with -1
     * for a shard without room, so all skip the gather together) */
    float *loc = NULL;
    for (long i = 0; i < n; i++) mine += (fbits(v[i]) >> 16) == (uint32_t)q;
    loc = malloc(sizeof(float) * (size_t)(mine + 1));
    if (!loc) ok = 0;
    int64_t me = ok ? mine : -1;
    for (int r = 0; r < R; r++) rb[r] = sizeof(int64_t);
    if (s->coll->allgatherv(s->coll, &me, sizeof me, cnt, rb)) {
        free(loc);
        rc = XC_ECOLL;
        goto out;
    }
    int skip = 0;
    for (int r = 0; r < R; r++) skip |= cnt[r] < 0;
    if (!skip) {
        long m = 0;
        for (long i = 0; i < n; i++)
            if ((fbits(v[i]) >> 16) == (uint32_t)q) loc[m++] = v[i];
        for (int r = 0; r < R; r++) rb[r] = sizeof(float) * (size_t)cnt[r];
        if (s->coll->allgatherv(s->coll, loc, sizeof(float) * (size_t)m, s->bq, rb)) rc = XC_ECOLL;
        else {
            qsort(s->bq, (size_t)all, sizeof(float), cmp_desc_f);
            *out = s->bq[need - 1];
        }
    }
    free(loc);
out:
    free(h);
    free(cnt);
    free(rb);
    return rc;
}

/* Lower bound of the exact K-th largest score from the lower bounds of the
 * collected entries of every shard: their K-th largest (0 when fewer than K). */
static int kth_lower(xc_score_t *s, float *out)
{
    long n = 0, m = 0;
    for (int t = 0; t < s->nth; t++) n += s->w[t].n;
    float *v = malloc(sizeof(float) * (size_t)(n + 1)); /* owned here */
    if (v)
        for (int t = 0; t < s->nth; t++)
            for (long i = 0; i < s->w[t].n; i++) v[m++] = s->w[t].c[i].lo;
    int rc = kth_global(s, v, m, !v, out);
    free(v);
    return rc;
}

/* Histogram of the lower bounds over the whole batch: the lower edge of the
 * bucket holding the K-th largest (0 when fewer than K are positive). */
static int hist_lower(xc_score_t *s, float *out)
{
    int saved = s->mode;
    s->mode = 2;
    xc_pool_run(s->pool, cand_task, s);
    s->mode = saved;
    *out = 0.0f;
    /* the workers' histograms and positives, summed over every shard */
    uint64_t *h = calloc(NBUCKET + 1, sizeof(uint64_t)); /* owned here; [NBUCKET]: positives */
    static uint64_t fail_h[NBUCKET + 1];
    uint64_t *use = h ? h : fail_h; /* no memory (only then): take part with zeros, bound 0 */
    if (!h) memset(fail_h, 0, sizeof fail_h);
    if (h) {
        for (int t = 0; t < s->nth; t++) {
            use[NBUCKET] += (uint64_t)s->w[t].npos;
            for (long q = 0; q < NBUCKET; q++) use[q] += s->w[t].hist[q];
        }
    }
    int rc = sc_ar(s, use, NBUCKET + 1, XC_COLL_U64, XC_COLL_SUM);
    if (!rc && h && use[NBUCKET] >= (uint64_t)s->K) {
        uint64_t cum = 0;
        for (long q = NBUCKET - 1; q > 0; q--) {
            cum += use[q];
            if (cum >= (uint64_t)s->K) {
                *out = bitsf((uint32_t)q << 16);
                break;
            }
        }
    }
    free(h);
    return rc;
}

/* ---------------------------------------------------------------- exact recompute */

/* One pass of the exact recompute over this worker's share of the candidates
 * (latent-major: one W row stays in cache for all its tokens): pass 1 the
 * entries marked 1, pass 2 the unmarked ones whose upper bound reaches c_cut
 * (marked 2). Each measured error is checked against the margin used. */
static void exact_task(void *ctx, int tid, int nth)
{
    xc_score_t *s = ctx;
    sworker_t *w = &s->w[tid];
    long lo, hi;
    xc_pool_range(s->nall, tid, nth, &lo, &hi);
    double mr = w->max_ratio;
    int bad = w->violated;
    for (long q = lo; q < hi; q++) {
        long i = s->order[q];
        const pend_t *p = &s->all[i];
        if (s->pass == 1 ? s->mark[i] != 1 : s->mark[i] != 0 || p->hi < s->c_cut) continue;
        if (s->pass == 2) s->mark[i] = 2;
        float pf = dot_f(s->x + (size_t)p->b * s->d2, s->wt + (size_t)p->j * s->d2, s->d2);
        double P = pf;
        double err = fabs(P - p->pa);
        double dq = (double)s->ex[p->b] * s->wn[p->j] + (double)s->xqn[p->b] * s->ew[p->j];
        double dr = s->gamma * s->xa[p->b] * s->wa[p->j] +
                    fabs((double)p->pa + s->benc[p->j]) * REL_EPS + 1e-30;
        if (err > s->lambda * dq + dr) bad = 1;
        if (dq > 0) {
            double ratio = (err - dr) / dq;
            if (ratio > mr) mr = ratio;
        }
        float v = pf + s->benc[p->j], u = v > 0.0f ? v : 0.0f;
        s->out[i] = (xc_score_cand_t){p->b, p->j, u * s->sc[p->j], u};
    }
    w->max_ratio = mr;
    w->violated = bad;
}

/* The exact recompute in two passes, which halves the band of candidates:
 *   1. the gathered entries whose approximate score reaches the K-th largest
 *      approximate score over every shard (K entries, or more with ties; all
 *      of them when fewer than K are positive) are recomputed; the K-th
 *      largest of their exact scores
 *      over every shard, c_ex, is a lower bound of the exact K-th largest score
 *      c (K entries reach it) and sits close to c, where c_low (the K-th largest
 *      *lower bound*) sits about one error bound below it;
 *   2. the remaining entries whose upper bound reaches c_cut = max(c_low, c_ex)
 *      are recomputed.
 * An entry of the exact top K has r >= c >= c_cut and hi >= r, so it is
 * recomputed in one of the passes: the kept set {recomputed, hi >= c_cut}
 * holds the exact top K whatever pass 1 picked. The band an entry must fall in
 * shrinks from about [c - 2 delta, c] to about [c - delta, c]. c_cut is the
 * same on every shard. 0 or XC_ECOLL. */
static int exact_passes(xc_score_t *s, float c_low)
{
    long n = s->nall, n1 = 0;
    float *v = s->tmpf;
    for (int t = 0; t < s->nth; t++) s->w[t].max_ratio = 0, s->w[t].violated = 0;
    /* pass 1: approximate scores reaching the K-th largest of them over every shard */
    for (long i = 0; i < n; i++) {
        float ap = s->all[i].pa + s->benc[s->all[i].j];
        v[i] = ap > 0.0f ? ap * s->sc[s->all[i].j] : 0.0f;
    }
    float t1 = 0.0f;
    int rc = kth_global(s, v, n, 0, &t1);
    if (rc) return rc;
    for (long i = 0; i < n; i++) s->mark[i] = t1 > 0.0f ? v[i] >= t1 : 1;
    s->pass = 1;
    xc_pool_run(s->pool, exact_task, s);
    for (long i = 0; i < n; i++)
        if (s->mark[i] == 1) v[n1++] = s->out[i].r;
    float c_ex = 0.0f;
    rc = kth_global(s, v, n1, 0, &c_ex);
    if (rc) return rc;
    s->c_cut = c_ex > c_low ? c_ex : c_low;
    s->pass = 2;
    xc_pool_run(s->pool, exact_task, s);
    return XC_OK;
}

/* ---------------------------------------------------------------- lifecycle */

#ifdef XC_HAVE_DNNL
static int dnnl_setup(xc_score_t *s, char *why, size_t why_len)
{
    int i8 = s->prec == XC_PREC_INT8;
    dnnl_dims_t sd = {s->B, s->d2}, wd = {s->d2, s->F}, dd = {s->B, s->F};
    dnnl_memory_desc_t smd, wmd, dmd;
    dnnl_matmul_desc_t md;
    const char *impl = NULL;
    omp_set_num_threads(s->nth);
    if (dnnl_engine_create(&s->eng, dnnl_cpu, 0) || dnnl_stream_create(&s->strm, s->eng, dnnl_stream_default_flags))
        goto fail;
    if (dnnl_memory_desc_init_by_tag(&smd, 2, sd, i8 ? dnnl_u8 : dnnl_bf16, dnnl_ab) ||
        /* W (F, d2) row-major is the (d2, F) weights in `ba`: no reorder */
        dnnl_memory_desc_init_by_tag(&wmd, 2, wd, i8 ? dnnl_s8 : dnnl_bf16, dnnl_ba) ||
        dnnl_memory_desc_init_by_tag(&dmd, 2, dd, i8 ? dnnl_s32 : dnnl_f32, dnnl_ab) ||
        dnnl_matmul_desc_init(&md, &smd, &wmd, NULL, &dmd) ||
        dnnl_primitive_desc_create(&s->pd, &md, NULL, s->eng, NULL) || dnnl_primitive_create(&s->prim, s->pd) ||
        dnnl_memory_create(&s->msrc, &smd, s->eng, s->xq) || dnnl_memory_create(&s->mwei, &wmd, s->eng, s->wq) ||
        dnnl_memory_create(&s->mdst, &dmd, s->eng, DNNL_MEMORY_NONE))
        goto fail;
    if (dnnl_primitive_desc_query(s->pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl)
        snprintf(s->kernel, sizeof s->kernel, "%s", impl);
    return XC_OK;
fail:
    xc_why(why, why_len, "oneDNN has no %s matmul for this shape on this CPU (isa %s)", xc_prec_name(s->prec),
           xc_score_isa());
    return XC_ESTATE;
}
#endif

xc_score_t *xc_score_new(xc_prec_t prec, int B, int d2, int F, xc_pool_t *pool, int *err, char *why,
                         size_t why_len)
{
    int rc = XC_ENOMEM;
    xc_score_t *s = NULL;
    if ((prec != XC_PREC_BF16 && prec != XC_PREC_INT8) || !xc_score_supported(prec, why, why_len) || B < 1 ||
        d2 < 1 || F < 1 || !pool) {
        if (prec != XC_PREC_BF16 && prec != XC_PREC_INT8) xc_why(why, why_len, "scorer precision must be bf16 or int8");
        rc = XC_EINVAL;
        goto out;
    }
    s = calloc(1, sizeof *s);
    if (!s) goto out;
    s->prec = prec;
    s->coll = xc_coll_single();
    s->B = B, s->d2 = d2, s->F = F;
    s->pool = pool;
    s->nth = xc_pool_size(pool);
    /* fp32 rounding, twice: the sums after the product (d2 + OUT_MAX + 8 roundings
     * at most) and the exact recompute's dot product (d2) */
    s->gamma = 2.0 * (double)(d2 + OUT_MAX + 8) * ldexp(1.0, -24) * 1.01;
    /* the margin: the proven bound, or (int8, XC_SCORE_MARGIN=calibrated) a
     * fraction of it calibrated on the measured errors, starting at 8/sqrt(d2) */
    const char *mg = getenv("XC_SCORE_MARGIN");
    s->calibrate = prec == XC_PREC_INT8 && mg && !strcmp(mg, "calibrated");
    s->lambda = s->calibrate ? fmin(1.0, 8.0 / sqrt((double)d2)) : 1.0;
    size_t es = prec == XC_PREC_BF16 ? 2 : 1;
    s->w = calloc((size_t)s->nth, sizeof *s->w);
    s->is_out = calloc((size_t)d2, 1);
    s->keepf = calloc((size_t)d2, sizeof(float));
    s->amax = calloc((size_t)d2, sizeof(float));
    s->xq = malloc((size_t)B * d2 * es);
    s->wq = malloc((size_t)F * d2 * es);
    s->sx = malloc(sizeof(float) * 4 * (size_t)B);
    s->xo = calloc((size_t)B * OUT_MAX, sizeof(float));
    s->sw = malloc(sizeof(float) * 4 * (size_t)F);
    s->wo = calloc((size_t)F * OUT_MAX, sizeof(float));
    s->wcomp = calloc((size_t)F, sizeof(int32_t));
    s->jptr = calloc((size_t)F + 1, sizeof(long));
    if (!s->w || !s->is_out || !s->keepf || !s->amax || !s->xq || !s->wq || !s->sx || !s->xo || !s->sw || !s->wo || !s->wcomp ||
        !s->jptr)
        goto out;
    s->ex = s->sx + B, s->xqn = s->sx + 2 * (size_t)B, s->xa = s->sx + 3 * (size_t)B;
    s->ew = s->sw + F, s->wn = s->sw + 2 * (size_t)F, s->wa = s->sw + 3 * (size_t)F;
    for (int t = 0; t < s->nth; t++) {
        s->w[t].hist = malloc(sizeof(uint32_t) * NBUCKET);
        s->w[t].amax = malloc(sizeof(float) * (size_t)d2);
        if (!s->w[t].hist || !s->w[t].amax) goto out;
    }
    snprintf(s->kernel, sizeof s->kernel, "unknown");
#ifdef XC_HAVE_DNNL
    rc = dnnl_setup(s, why, why_len);
    if (rc) goto out;
#endif
    /* a fixed margin from the environment (tests: a tiny one forces the fallback) */
    const char *fl = getenv("XC_SCORE_LAMBDA"), *cl = getenv("XC_SCORE_CAND_LIMIT");
    if (fl && atof(fl) > 0) xc_score_force_lambda(s, atof(fl));
    s->cand_limit = cl && atof(cl) > 0 ? atof(cl) : CAND_LIMIT;
    s->st.lambda = s->lambda;
    if (err) *err = XC_OK;
    return s;
out:
    if (rc == XC_ENOMEM) xc_why(why, why_len, "out of memory for the %s scorer", xc_prec_name(prec));
    xc_score_destroy(&s);
    if (err) *err = rc;
    return NULL;
}

void xc_score_destroy(xc_score_t **ps)
{
    xc_score_t *s = ps ? *ps : NULL;
    if (!s) return;
#ifdef XC_HAVE_DNNL
    if (s->msrc) dnnl_memory_destroy(s->msrc);
    if (s->mwei) dnnl_memory_destroy(s->mwei);
    if (s->mdst) dnnl_memory_destroy(s->mdst);
    if (s->prim) dnnl_primitive_destroy(s->prim);
    if (s->pd) dnnl_primitive_desc_destroy(s->pd);
    if (s->strm) dnnl_stream_destroy(s->strm);
    if (s->eng) dnnl_engine_destroy(s->eng);
#endif
    if (s->w)
        for (int t = 0; t < s->nth; t++) {
            free(s->w[t].c);
            free(s->w[t].hist);
            free(s->w[t].amax);
        }
    free(s->w);
    free(s->is_out);
    free(s->keepf);
    free(s->amax);
    free(s->xq);
    free(s->wq);
    free(s->sx);
    free(s->xo);
    free(s->sw);
    free(s->wo);
    free(s->wcomp);
    free(s->jptr);
    free(s->all);
    free(s->order);
    free(s->out);
    free(s->bq);
    free(s->mark);
    free(s->tmpf);
    free(s);
    *ps = NULL;
}

xc_prec_t xc_score_prec(const xc_score_t *s) { return s->prec; }
void xc_score_set_coll(xc_score_t *s, xc_coll_t *coll) { s->coll = coll ? coll : xc_coll_single(); }
const char *xc_score_kernel(const xc_score_t *s) { return s->kernel; }
const xc_score_stats_t *xc_score_stats(const xc_score_t *s) { return &s->st; }
int xc_score_calibrated(const xc_score_t *s) { return s->calibrate; }

double xc_score_entry_bound(const xc_score_t *s, int b, int j)
{
    return (double)s->ex[b] * s->wn[j] + (double)s->xqn[b] * s->ew[j] + s->gamma * s->xa[b] * s->wa[j];
}

void xc_score_force_lambda(xc_score_t *s, double lambda)
{
    s->lambda_forced = lambda;
    if (lambda > 0) s->lambda = lambda;
}

/* ---------------------------------------------------------------- one call */

static int matmul(xc_score_t *s)
{
#ifdef XC_HAVE_DNNL
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, s->msrc}, {DNNL_ARG_WEIGHTS, s->mwei}, {DNNL_ARG_DST, s->mdst}};
    omp_set_num_threads(s->nth);
    if (dnnl_memory_set_data_handle(s->mdst, s->work) ||
        dnnl_primitive_execute(s->prim, s->strm, 3, args) || dnnl_stream_wait(s->strm))
        return XC_ESTATE;
    return XC_OK;
#else
    return XC_ESTATE;
#endif
}

/* Merges the workers' lists (row order) keeping hi >= c_low, sorts them by
 * latent for the exact pass. */
static int gather(xc_score_t *s, float c_low)
{
    long n = 0;
    for (int t = 0; t < s->nth; t++) n += s->w[t].n;
    if (pend_reserve(&s->all, &s->all_cap, n)) return XC_ENOMEM;
    if (n > s->out_cap) {
        xc_score_cand_t *o = realloc(s->out, sizeof *o * (size_t)n);
        int *ord = realloc(s->order, sizeof *ord * (size_t)n);
        unsigned char *mk = realloc(s->mark, (size_t)n);
        float *tf = realloc(s->tmpf, sizeof *tf * (size_t)n);
        if (o) s->out = o;
        if (ord) s->order = ord;
        if (mk) s->mark = mk;
        if (tf) s->tmpf = tf;
        if (!o || !ord || !mk || !tf) return XC_ENOMEM;
        s->out_cap = n;
    }
    long m = 0;
    for (int t = 0; t < s->nth; t++)
        for (long i = 0; i < s->w[t].n; i++)
            if (s->w[t].c[i].hi >= c_low) s->all[m++] = s->w[t].c[i];
    s->nall = m;
    long *jp = s->jptr;
    memset(jp, 0, sizeof(long) * ((size_t)s->F + 1));
    for (long i = 0; i < m; i++) jp[s->all[i].j + 1]++;
    for (int j = 0; j < s->F; j++) jp[j + 1] += jp[j];
    for (long i = 0; i < m; i++) s->order[jp[s->all[i].j]++] = (int)i;
    return XC_OK;
}

int xc_score_candidates(xc_score_t *s, const float *x, const float *w, const float *b_enc, const float *sc,
                        long K, float *work, const xc_score_cand_t **cand, long *ncand)
{
    double t0 = now_ms(), t1;
    int rc;
    s->x = x, s->wt = w, s->benc = b_enc, s->sc = sc, s->work = work, s->K = K;
    s->st.steps++;
    if (s->skip > 0) { /* backing off after a call with too many candidates */
        s->skip--;
        s->st.fp32_calls++;
        return XC_EAGAIN;
    }
    rc = find_outliers(s);
    if (rc) return rc;
    xc_pool_run(s->pool, xquant_task, s);
    xc_pool_run(s->pool, wquant_task, s);
    t1 = now_ms();
    s->st.ms_quant = t1 - t0;
    s->st.outliers = s->n_out;
    rc = matmul(s);
    if (rc) return rc;
    s->st.ms_matmul = now_ms() - t1;
    t1 = now_ms();

    /* candidates: collect at last call's threshold; the histogram when that fails */
    long limit = (long)(fmin(COLLECT_LIMIT, s->cand_limit) * K), redo = 0;
    double lam_next = s->lambda;
    float c_low = 0.0f;
    int ok = 0;
    s->mode = 0;
again:
    ok = 0;
    if (s->tau > 0.0f && !redo) {
        rc = collect(s, s->tau, limit, 0.0);
        if (rc && rc != XC_EAGAIN) return rc;
        if (!rc) {
            if ((rc = kth_lower(s, &c_low))) return rc;
            ok = c_low >= s->tau;
        }
    }
    if (!ok) {
        if (s->mode == 0) { /* nothing dequantized yet: one pass that only dequantizes */
            s->thr = FLT_MAX;
            s->limit = 0;
            xc_pool_run(s->pool, cand_task, s);
            s->mode = 1;
        }
        s->st.full_passes++;
        if ((rc = hist_lower(s, &c_low))) return rc;
        rc = collect(s, c_low > 0.0f ? c_low : FLT_TRUE_MIN, (long)(s->cand_limit * K), CAND_FRAC);
        if (rc == XC_EAGAIN) goto fallback;
        if (rc) return rc;
        float c2;
        if ((rc = kth_lower(s, &c2))) return rc;
        if (c2 > c_low) c_low = c2;
    }
    {
        int64_t fail = gather(s, c_low) != XC_OK; /* every shard stops if one is out of memory */
        if (sc_ar(s, &fail, 1, XC_COLL_I64, XC_COLL_MAX)) return XC_ECOLL;
        if (fail) return XC_ENOMEM;
    }
    s->st.ms_cand = now_ms() - t1;
    t1 = now_ms();

    /* exact recompute and the margin check */
    rc = exact_passes(s, c_low);
    if (rc) return rc;
    s->st.ms_exact = now_ms() - t1;
    double mr = 0;
    int bad = 0;
    for (int t = 0; t < s->nth; t++) {
        mr = s->w[t].max_ratio > mr ? s->w[t].max_ratio : mr;
        bad |= s->w[t].violated;
    }
    {
        /* the margin verdict and calibration over every shard: all take the same path */
        long nrec = 0;
        for (long i = 0; i < s->nall; i++) nrec += s->mark[i] != 0;
        double v[3] = {mr, bad, (double)nrec};
        if (sc_ar(s, v, 2, XC_COLL_F64, XC_COLL_MAX) || sc_ar(s, v + 2, 1, XC_COLL_F64, XC_COLL_SUM))
            return XC_ECOLL;
        mr = v[0];
        bad = v[1] > 0;
        s->st.candidates = (long)v[2];
    }
    s->st.max_ratio = mr;
    s->st.c_low = c_low;
    s->st.c_cut = s->c_cut;
    s->tau = c_low * TAU_FRAC;
    double lam_used = s->lambda;
    if (s->calibrate && s->lambda_forced <= 0 && !redo) {
        /* calibration: a margin within SAFETY of the measured errors is too thin */
        double target = SAFETY * mr;
        if (target > s->lambda && s->lambda < 1.0) bad = 1;
        double next = target > s->lambda ? 1.5 * target : fmax(1.25 * target, 0.95 * s->lambda);
        s->lambda = fmin(1.0, fmax(next, 1.0 / sqrt((double)s->d2)));
    } else if (s->lambda_forced > 0 && SAFETY * mr > s->lambda && s->lambda < 1.0) {
        bad = 1;
    }
    if (redo) {
        s->lambda = lam_next; /* the proven bound was for this call only */
    } else if (bad && lam_used < 1.0) {
        /* the margin was too thin: the same P~ again with the proven bound (lambda
         * 1), whose candidates contain the exact top K whatever the errors are */
        s->st.fallbacks++;
        lam_next = s->lambda;
        s->lambda = 1.0;
        redo = 1;
        bad = 0;
        goto again;
    }
    s->st.lambda = s->lambda;
    if (bad) goto fallback;
    /* keep the recomputed entries whose upper bound reaches c_cut, dropping zero
     * scores (never selected); row order is kept */
    long m = 0;
    for (long i = 0; i < s->nall; i++)
        if (s->mark[i] && s->all[i].hi >= s->c_cut && s->out[i].r > 0.0f) s->out[m++] = s->out[i];
    s->nout = m;
    *cand = s->out;
    *ncand = m;
    s->backoff = 0;
    return XC_OK;
fallback:
    if (redo) s->lambda = lam_next;
    s->st.fp32_calls++;
    s->tau = 0.0f;
    /* the same data is likely as dense next step: skip 1, 2, 4, .. calls (the
     * same count on every shard, since the verdict was all-reduced) */
    s->backoff = s->backoff ? (s->backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : s->backoff * 2) : 1;
    s->skip = s->backoff;
    return XC_EAGAIN;
}
