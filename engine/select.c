/* BatchTopK selection (method.md 2): the exact top k*B of r = u s over the whole
 * batch, with ties broken towards the lower flat index b*F + j. The boundary
 * this file keeps (inputs, outputs, where a reduced-precision scorer or a
 * latent-sharded engine plugs in) is described in xc_engine_internal.h.
 *
 * Fast path: one pass keeps the entries with r >= tau, tau a fraction of the last
 * step's cut-off (a rarely-taken, well-predicted branch), and the exact selection
 * runs on that short list. When fewer than k*B entries pass (first step, a shift in
 * scale), the full path histograms r over the whole batch instead:
 *   A. histogram of r's top 16 bits                  (hist_task)
 *   B. boundary bucket of the k*B-th largest r; the entries of that bucket are
 *      collected and sorted by (r desc, flat index asc) (boundary_task, cut_boundary)
 *   C. CSR of the selected entries per token          (fill_rows_task)
 * Both paths end in the same selection rule (selected()), so the result does not
 * depend on which one ran.
 *
 * Sharded (xc_coll.h): each rank scores its latents; the histograms are summed
 * over ranks and the boundary bucket's entries gathered from every rank, so the
 * cut (bucket, score, GLOBAL flat index b*Fg + lo + j) is the same on every rank
 * and each keeps its own entries above it: together exactly the unsharded
 * selection. Every decision between paths is taken on all-reduced counts. */
#include "xc_engine_internal.h"

#include "xc_error.h"

#include <stdlib.h>

#ifdef XC_HAVE_AVX512_PATH
#include <immintrin.h>
#endif

/* Sort order of the boundary candidates: score descending, then flat index. */
static int cand_cmp(const void *pa, const void *pb)
{
    const xc_cand_t *a = pa, *b = pb;
    if (a->r != b->r) return a->r > b->r ? -1 : 1;
    if (a->b != b->b) return a->b < b->b ? -1 : 1;
    return a->j < b->j ? -1 : (a->j > b->j);
}

static inline uint32_t bucket_of(float r) { return xc_fbits(r) >> 16; }

/* The selection rule both paths share, once the boundary is known: positive,
 * and above the boundary bucket, or in it and at or before the exact cut. */
static inline int selected(const xc_engine_t *e, long b, int j, float r)
{
    const xc_select_state_t *s = &e->sel;
    if (!(r > 0.0f)) return 0;
    if (s->sel_all) return 1;
    uint32_t bk = bucket_of(r);
    if (bk != (uint32_t)s->bucket_t) return bk > (uint32_t)s->bucket_t;
    if (r != s->cut_r) return r > s->cut_r;
    return b * (long)e->Fg + e->lo + j <= s->cut_idx;
}

/* Grows a worker's candidate list by half again what is asked, so a slowly
 * rising candidate count does not reallocate every step. */
static int cand_reserve(xc_worker_t *w, long n)
{
    if (n <= w->cand_cap) return XC_OK;
    long cap = n + n / 2;
    xc_cand_t *p = realloc(w->cand, sizeof(xc_cand_t) * (size_t)cap);
    if (!p) return XC_ENOMEM;
    w->cand = p;
    w->cand_cap = cap;
    return XC_OK;
}

/* Fast path: per worker, the entries with r >= tau in row order (j ascending).
 * This pass reads all B*F pre-activations, so it is the selection's cost: on
 * AVX-512 machines it runs 16 latents per instruction with compress-stores.
 * Entries past cap are counted, not stored (the caller grows the list). */
#ifdef XC_HAVE_AVX512_PATH
__attribute__((target("avx512f"))) static long filter_row_avx512(const xc_engine_t *e, const float *pre,
                                                                   int b, float tau, xc_cand_t *out,
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
            if (n < cap) out[n] = (xc_cand_t){b, jj[q], rr[q], uu[q]};
    }
    for (; j < F; j++) {
        float u = xc_relu_u(e, pre, j), r = u * e->s[j];
        if (r >= tau) {
            if (n < cap) out[n] = (xc_cand_t){b, j, r, u};
            n++;
        }
    }
    return n;
}
#endif

/* One token's prefilter on the CPU at hand (AVX-512 or scalar: same entries). */
static long filter_row(const xc_engine_t *e, const float *pre, int b, float tau, xc_cand_t *out, long n,
                       long cap)
{
#ifdef XC_HAVE_AVX512_PATH
    if (e->sel.use_avx512) return filter_row_avx512(e, pre, b, tau, out, n, cap);
#endif
    for (int j = 0; j < e->F; j++) {
        float u = xc_relu_u(e, pre, j), r = u * e->s[j];
        if (r >= tau) {
            if (n < cap) out[n] = (xc_cand_t){b, j, r, u};
            n++;
        }
    }
    return n;
}

/* Fast-path pass over the worker's tokens; entries stay in row order, which
 * the CSR fill relies on. */
static void filter_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    xc_worker_t *w = &e->w[tid];
    long lo, hi, n = 0;
    xc_pool_range(e->B, tid, nth, &lo, &hi);
    for (long b = lo; b < hi; b++)
        n = filter_row(e, e->pre + (size_t)b * e->F, (int)b, e->sel.tau, w->cand, n, w->cand_cap);
    w->ncand = n;
}

/* Full path, pass A: histogram of r over the whole batch. */
static void hist_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    xc_worker_t *w = &e->w[tid];
    long lo, hi, npos = 0;
    int F = e->F;
    xc_pool_range(e->B, tid, nth, &lo, &hi);
    memset(w->hist, 0, sizeof(uint32_t) * XC_NBUCKET);
    for (long b = lo; b < hi; b++) {
        const float *pre = e->pre + (size_t)b * F;
        for (int j = 0; j < F; j++) {
            float r = xc_relu_u(e, pre, j) * e->s[j];
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
    xc_worker_t *w = &e->w[tid];
    long lo, hi, n = 0;
    int F = e->F;
    uint32_t t = (uint32_t)e->sel.bucket_t;
    xc_pool_range(e->B, tid, nth, &lo, &hi);
    for (long b = lo; b < hi; b++) {
        const float *pre = e->pre + (size_t)b * F;
        for (int j = 0; j < F; j++) {
            float u = xc_relu_u(e, pre, j), r = u * e->s[j];
            if (r > 0.0f && bucket_of(r) == t) {
                if (n < w->cand_cap) w->cand[n] = (xc_cand_t){b, j, r, u};
                n++;
            }
        }
    }
    w->ncand = n;
}

/* Full path, pass C: count (fill_phase 0), then fill (1) the CSR rows; each
 * worker owns whole tokens, so the rows come out in the same order for any
 * thread count. */
static void fill_rows_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    long lo, hi;
    int F = e->F, phase = e->sel.fill_phase;
    xc_pool_range(e->B, tid, nth, &lo, &hi);
    for (long b = lo; b < hi; b++) {
        const float *pre = e->pre + (size_t)b * F;
        long p = phase ? e->row_ptr[b] : 0;
        for (int j = 0; j < F; j++) {
            float u = xc_relu_u(e, pre, j), r = u * e->s[j];
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

/* Runs a pool pass that fills per-worker candidate lists, growing them when short
 * (a pass that overflowed only counted, so it is run again on the grown lists).
 * With limit > 0, a pass that finds more than limit entries in all (every
 * shard's) returns XC_EAGAIN instead of growing (the caller has a cheaper path).
 * The growing is local; one all-reduce then gives every rank the same total in
 * *total_g and the same verdict (a rank out of memory fails them all). */
static int collect(xc_engine_t *e, xc_pool_fn fn, long limit, long *total_g)
{
    int64_t v[2] = {0, 0}; /* entries (limit + 1 past the limit), failures */
    for (;;) {
        xc_pool_run(e->pool, fn, e);
        long total = 0;
        for (int t = 0; t < e->nth; t++) total += e->w[t].ncand;
        v[0] = total;
        if (limit > 0 && total > limit) break;
        int again = 0;
        for (int t = 0; t < e->nth && !v[1]; t++) {
            xc_worker_t *w = &e->w[t];
            if (w->ncand > w->cand_cap) {
                if (cand_reserve(w, w->ncand)) v[1] = 1;
                again = 1;
            }
        }
        if (!again || v[1]) break;
    }
    if (xc_ar(e, v, 2, XC_COLL_I64, XC_COLL_SUM)) return XC_ECOLL;
    if (v[1]) return XC_ENOMEM;
    if (total_g) *total_g = (long)v[0];
    return limit > 0 && v[0] > limit ? XC_EAGAIN : XC_OK;
}

/* Walks a histogram down from the top: sets bucket_t and returns how many
 * entries of that bucket are still needed to reach K. */
static long boundary(xc_engine_t *e, const uint64_t *hist)
{
    long cum = 0, t = XC_NBUCKET - 1;
    for (; t > 0; t--) {
        if (cum + (long)hist[t] >= e->K) break;
        cum += (long)hist[t];
    }
    e->sel.bucket_t = t;
    return e->K - cum;
}

/* Sorts the boundary candidates (bucket_t only, gathered from every worker and
 * every shard, latents as global indices) and sets the exact cut: the need-th of
 * them in (r desc, index asc) order. Worker 0's list holds this shard's copy past
 * its own entries; the engine's gather buffer, every shard's. */
static int cut_boundary(xc_engine_t *e, long need)
{
    long nc = 0;
    int64_t fail = 0;
    for (int t = 0; t < e->nth; t++) nc += e->w[t].ncand;
    if (cand_reserve(&e->w[0], nc + e->w[0].ncand) != XC_OK) fail = 1;
    if (xc_ar(e, &fail, 1, XC_COLL_I64, XC_COLL_MAX)) return XC_ECOLL;
    if (fail) return XC_ENOMEM;
    xc_worker_t *w0 = &e->w[0];
    xc_cand_t *bd = w0->cand + w0->ncand; /* scratch after worker 0's own list */
    long m = 0;
    for (int t = 0; t < e->nth; t++)
        for (long i = 0; i < e->w[t].ncand; i++)
            if (bucket_of(e->w[t].cand[i].r) == (uint32_t)e->sel.bucket_t) {
                bd[m] = e->w[t].cand[i];
                bd[m++].j += (int)e->lo;
            }
    size_t got = 0;
    int rc = xc_engine_allgather_var(e, bd, sizeof(xc_cand_t) * (size_t)m, &e->gbuf, &e->gcap, &got);
    if (rc) return rc;
    xc_cand_t *all = e->gbuf;
    m = (long)(got / sizeof(xc_cand_t));
    if (need < 1 || need > m) return XC_ESTATE; /* the histograms promised need entries */
    qsort(all, (size_t)m, sizeof(xc_cand_t), cand_cmp);
    const xc_cand_t *last = &all[need - 1];
    e->sel.cut_r = last->r;
    e->sel.cut_idx = last->b * (long)e->Fg + last->j;
    return XC_OK;
}

static int select_listed(xc_engine_t *e);

/* Fast path: select from the prefiltered lists, or XC_EAGAIN when the filter let
 * through too few (the full path must run) or too many entries; tau_frac adapts
 * either way so the next step's filter fits better. */
static int select_fast(xc_engine_t *e)
{
    xc_select_state_t *s = &e->sel;
    /* a filter that lets through more than 16 k*B entries (a shift in scale)
     * costs more than the full path: take that instead of growing the lists */
    long m = 0;
    int rc = collect(e, filter_task, 16L * e->K, &m);
    if (rc == XC_EAGAIN) s->tau_frac = s->tau_frac * 1.25f < 0.95f ? s->tau_frac * 1.25f : 0.95f;
    if (rc) return rc;
    s->last_ncand = m;
    if (m < e->K) {
        s->tau_frac *= 0.7f; /* too few passed: filter more loosely next time */
        return XC_EAGAIN;
    }
    return select_listed(e);
}

/* The exact top K of the workers' lists, which hold (in row order across the
 * workers) every entry that can be selected: cut, then the CSR. */
static int select_listed(xc_engine_t *e)
{
    xc_select_state_t *s = &e->sel;
    uint64_t *h = e->hist64;
    memset(h, 0, sizeof(uint64_t) * XC_NBUCKET);
    for (int t = 0; t < e->nth; t++)
        for (long i = 0; i < e->w[t].ncand; i++) h[bucket_of(e->w[t].cand[i].r)]++;
    if (xc_ar(e, h, XC_NBUCKET, XC_COLL_U64, XC_COLL_SUM)) return XC_ECOLL;
    s->sel_all = 0;
    long need = boundary(e, h);
    int rc = cut_boundary(e, need);
    if (rc) return rc;
    /* candidates are in row-major order across workers: fill the CSR directly */
    memset(e->row_cnt, 0, sizeof(long) * (size_t)e->B);
    long p = 0;
    for (int t = 0; t < e->nth; t++)
        for (long i = 0; i < e->w[t].ncand; i++) {
            const xc_cand_t *c = &e->w[t].cand[i];
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

/* Sums the workers' histograms, then every shard's, into h and sets *npos to
 * the number of positive scores. h[0] counts only positives there (denormals),
 * not the zeros. */
static int merge_hist(xc_engine_t *e, uint64_t *h, long *npos_g)
{
    long npos = 0;
    memset(h, 0, sizeof(uint64_t) * XC_NBUCKET);
    for (int t = 0; t < e->nth; t++) {
        npos += e->w[t].npos;
        for (int q = 0; q < XC_NBUCKET; q++) h[q] += e->w[t].hist[q];
    }
    long above0 = 0;
    for (int q = 1; q < XC_NBUCKET; q++) above0 += (long)h[q];
    h[0] = (uint64_t)(npos - above0);
    if (xc_ar(e, h, XC_NBUCKET, XC_COLL_U64, XC_COLL_SUM)) return XC_ECOLL;
    uint64_t n = 0;
    for (int q = 0; q < XC_NBUCKET; q++) n += h[q];
    *npos_g = (long)n;
    return XC_OK;
}

/* Full path: passes A, B, C over the whole batch (see the head of the file). */
static int select_full(xc_engine_t *e)
{
    uint64_t *h = e->hist64;
    long npos = 0;
    xc_pool_run(e->pool, hist_task, e);
    if (merge_hist(e, h, &npos)) return XC_ECOLL;
    e->sel.sel_all = npos <= e->K;
    if (!e->sel.sel_all) {
        long need = boundary(e, h);
        for (int t = 0; t < e->nth; t++) e->w[t].ncand = 0;
        int rc = collect(e, boundary_task, 0, NULL);
        if (rc) return rc;
        rc = cut_boundary(e, need);
        if (rc) return rc;
    }
    e->sel.fill_phase = 0;
    xc_pool_run(e->pool, fill_rows_task, e);
    e->row_ptr[0] = 0;
    for (long b = 0; b < e->B; b++) e->row_ptr[b + 1] = e->row_ptr[b] + e->row_cnt[b];
    e->nnz = e->row_ptr[e->B];
    e->sel.fill_phase = 1;
    xc_pool_run(e->pool, fill_rows_task, e);
    return XC_OK;
}

/* The selection boundary (xc_engine_internal.h): the fast path when a filter
 * from the last step exists, the full path when it fails; then the next step's
 * filter, a fraction of this step's cut-off score. */
int xc_select_topk(xc_engine_t *e)
{
    xc_select_state_t *s = &e->sel;
    int rc = s->tau > 0 ? select_fast(e) : XC_EAGAIN;
    if (rc == XC_EAGAIN) {
        s->n_full++;
        rc = select_full(e);
        if (rc) return rc;
    } else if (rc) {
        return rc;
    } else if (s->last_ncand > 4L * e->K && s->tau_frac < 0.9f) {
        s->tau_frac *= 1.1f; /* list longer than needed: filter harder */
    }
    e->met.select_candidates = s->last_ncand;
    e->met.full_selects = s->n_full;
    s->tau = s->sel_all ? 0.0f : s->cut_r * s->tau_frac;
    return XC_OK;
}

/* Candidates of a reduced-precision scorer: every entry that can be in the top
 * K, with its exact u and r. Fewer than K positives: they are all the batch's
 * positives (xc_score.h), and all are taken. */
int xc_select_from_candidates(xc_engine_t *e, const xc_score_cand_t *c, long n)
{
    xc_worker_t *w0 = &e->w[0];
    int64_t v[2] = {n, cand_reserve(w0, n) != XC_OK}; /* candidates, failures over shards */
    if (xc_ar(e, v, 2, XC_COLL_I64, XC_COLL_SUM)) return XC_ECOLL;
    if (v[1]) return XC_ENOMEM;
    for (long i = 0; i < n; i++) w0->cand[i] = (xc_cand_t){c[i].b, c[i].j, c[i].r, c[i].u};
    w0->ncand = n;
    for (int t = 1; t < e->nth; t++) e->w[t].ncand = 0;
    e->sel.last_ncand = (long)v[0];
    e->met.select_candidates = (long)v[0];
    e->met.full_selects = e->sel.n_full;
    if (v[0] >= e->K) return select_listed(e);
    e->sel.sel_all = 1;
    memset(e->row_cnt, 0, sizeof(long) * (size_t)e->B);
    for (long i = 0; i < n; i++) {
        e->col[i] = c[i].j;
        e->val[i] = c[i].u;
        e->ent_row[i] = c[i].b;
        e->row_cnt[c[i].b]++;
    }
    e->row_ptr[0] = 0;
    for (long b = 0; b < e->B; b++) e->row_ptr[b + 1] = e->row_ptr[b] + e->row_cnt[b];
    e->nnz = n;
    return XC_OK;
}

/* The first step has no cut-off to filter by: it runs the full path. The
 * AVX-512 prefilter runs where the CPU has it, unless XC_NO_AVX512 is set (a
 * switch for comparing the two paths, which select the same entries). */
int xc_select_init(xc_engine_t *e)
{
    e->sel.tau = 0.0f;
    e->sel.tau_frac = 0.6f;
    for (int t = 0; t < e->nth; t++) {
        e->w[t].cand_cap = 1024;
        e->w[t].cand = malloc(sizeof(xc_cand_t) * 1024); /* owned by the worker; xc_select_free */
        if (!e->w[t].cand) return XC_ENOMEM;
    }
#ifdef XC_HAVE_AVX512_PATH
    e->sel.use_avx512 = __builtin_cpu_supports("avx512f") && !getenv("XC_NO_AVX512");
#endif
    return XC_OK;
}

void xc_select_free(xc_engine_t *e)
{
    for (int t = 0; e->w && t < e->nth; t++) {
        free(e->w[t].cand);
        e->w[t].cand = NULL;
    }
}
