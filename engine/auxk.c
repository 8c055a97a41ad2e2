/* AuxK (method.md 2): the dead latents' auxiliary loss. A latent is dead once it
 * has not fired for dead_tokens tokens; per token the k_aux = min(d/2, #dead)
 * dead latents with the largest u s reconstruct the residual e (no b_dec):
 *   AuxK = mean_b ||e_b - ehat_b||^2 / mean_b ||e_b - mean(e)||^2,  NaN -> 0.
 * Its entries join the main ones in the gradient pass (engine.c, build_csc), so
 * dead latents get a gradient towards what the live ones miss.
 * Sharded: each shard proposes, per token, its own best k_aux dead latents
 * (global indices, sorted); every shard gathers all proposals and merges them
 * into the same global top k_aux, decodes the winners it holds, and the
 * partial ehat are summed over shards. */
#include "xc_engine_internal.h"

#include "xc_error.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>

/* Score descending, then latent ascending: the same order as the main selection. */
static int scored_cmp(const void *pa, const void *pb)
{
    const xc_scored_t *a = pa, *b = pb;
    if (a->r != b->r) return a->r > b->r ? -1 : 1;
    return (a->j > b->j) - (a->j < b->j);
}

/* Moves the k best (r desc, j asc) of v[0:n] to the front (quickselect): most
 * tokens have far more dead candidates than k_aux, and only those k are sorted. */
static void select_k(xc_scored_t *v, long n, long k)
{
    long lo = 0, hi = n - 1;
    while (lo < hi) {
        xc_scored_t piv = v[lo + (hi - lo) / 2];
        long i = lo, j = hi;
        while (i <= j) {
            while (scored_cmp(&v[i], &piv) < 0) i++;
            while (scored_cmp(&v[j], &piv) > 0) j--;
            if (i <= j) {
                xc_scored_t t = v[i];
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

/* Per token: this shard's k_aux dead latents with the largest u s (u > 0),
 * sorted, as (r, global index) into its row of abuf, their count in aux_ptr[b+1]
 * (until the merge overwrites it). Token-major, so each worker owns whole tokens. */
static void aux_cand_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    xc_worker_t *w = &e->w[tid];
    long lo, hi;
    int F = e->F, ka = e->k_aux;
    xc_pool_range(e->B, tid, nth, &lo, &hi);
    for (long b = lo; b < hi; b++) {
        const float *pre = e->pre + (size_t)b * F;
        long n = 0;
        for (int q = 0; q < e->n_dead_list; q++) {
            int j = e->dead_list[q];
            float u = xc_relu_u(e, pre, j);
            if (u > 0.0f) w->dead_sc[n++] = (xc_scored_t){u * e->s[j], j};
        }
        if (n > ka) {
            select_k(w->dead_sc, n, ka);
            n = ka;
        }
        qsort(w->dead_sc, (size_t)n, sizeof(xc_scored_t), scored_cmp);
        xc_scored_t *out = e->abuf + (size_t)b * ka;
        for (long q = 0; q < n; q++) out[q] = (xc_scored_t){w->dead_sc[q].r, (int)(w->dead_sc[q].j + e->lo)};
        e->aux_ptr[b + 1] = n;
    }
}

/* Every shard's proposals as received: rank r's token b holds
 * base[r][off[r * (B + 1) + b] .. off[r * (B + 1) + b + 1]). */
typedef struct {
    xc_engine_t *e;
    const xc_scored_t **base; /* (R) */
    const long *off;          /* (R, B + 1) */
} aux_gathered_t;

/* Per token: merges every shard's sorted proposals (gbuf, rank-major) into the
 * global top k_aux (the same order as one shard's sort: r desc, index asc),
 * keeps the winners this shard holds as AuxK entries and decodes them into ehat
 * (this shard's part; summed over shards next). */
static void aux_merge_task(void *ctx, int tid, int nth)
{
    const aux_gathered_t *gt = ctx;
    xc_engine_t *e = gt->e;
    long lo, hi;
    int d2 = e->d2, ka = e->k_aux, R = e->coll->size;
    long pos[64], *at = R <= 64 ? pos : NULL;
    long *heap_pos = NULL;
    if (!at) at = heap_pos = malloc(sizeof(long) * (size_t)R); /* owned here */
    xc_pool_range(e->B, tid, nth, &lo, &hi);
    for (long b = lo; b < hi; b++) {
        float *eh = e->ehat + (size_t)b * d2;
        memset(eh, 0, sizeof(float) * (size_t)d2);
        long base = b * (long)e->kaux_max, n = 0;
        if (!at) { /* no memory for the cursors: this token gets no AuxK entry */
            e->aux_ptr[b + 1] = 0;
            continue;
        }
        for (int r = 0; r < R; r++) at[r] = gt->off[(size_t)r * (e->B + 1) + b];
        const float *pre = e->pre + (size_t)b * e->F;
        for (int taken = 0; taken < ka; taken++) {
            int best = -1;
            xc_scored_t bv = {-1.0f, INT_MAX};
            for (int r = 0; r < R; r++) {
                if (at[r] >= gt->off[(size_t)r * (e->B + 1) + b + 1]) continue;
                xc_scored_t c = gt->base[r][at[r]];
                if (best < 0 || scored_cmp(&c, &bv) < 0) best = r, bv = c;
            }
            if (best < 0) break;
            at[best]++;
            long jl = bv.j - e->lo;
            if (jl < 0 || jl >= e->F) continue;
            int j = (int)jl;
            e->aux_col[base + n] = j;
            e->aux_row[base + n] = (int)b;
            float u = xc_relu_u(e, pre, j);
            e->aux_val[base + n] = u;
            cblas_saxpy(d2, u, e->w_dec + (size_t)j * d2, 1, eh, 1);
            n++;
        }
        e->aux_ptr[b + 1] = n; /* count; turned into offsets below */
    }
    free(heap_pos);
}

/* Per token, after the sum over shards: the numerator of the AuxK loss. */
static void aux_num_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    xc_worker_t *w = &e->w[tid];
    long lo, hi;
    int d2 = e->d2;
    xc_pool_range(e->B, tid, nth, &lo, &hi);
    w->aux_num = 0;
    for (long b = lo; b < hi; b++) {
        const float *r = e->resid + (size_t)b * d2, *eh = e->ehat + (size_t)b * d2;
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

/* AuxK's forward over the shards: every shard's proposals gathered, merged into
 * the same global top k_aux per token, this shard's winners decoded, and the
 * partial ehat summed. 0, XC_ENOMEM (on every shard), XC_ECOLL. */
static int aux_exchange(xc_engine_t *e)
{
    /* proposals, gathered from every shard (a failed allocation fails them all):
     * abuf = the per-token slots (B, k_aux), then what is sent, compacted: B
     * counts (int32, padded to 8 bytes), then the proposals token by token (most
     * dead latents have u = 0 on most tokens, so this is far below B k_aux) */
    int R = e->coll->size, B = e->B;
    size_t slots = sizeof(xc_scored_t) * (size_t)B * (size_t)e->k_aux, hdr = sizeof(int32_t) * (size_t)(B + (B & 1));
    size_t need = 2 * slots + hdr;
    long *off = malloc(sizeof(long) * (size_t)R * (size_t)(B + 1)); /* owned here */
    const xc_scored_t **base = malloc(sizeof *base * (size_t)R);
    int64_t fail = !off || !base;
    if (need > e->acap) {
        void *p = realloc(e->abuf, need);
        if (p) e->abuf = p, e->acap = need;
        else fail = 1;
    }
    int rc = xc_ar(e, &fail, 1, XC_COLL_I64, XC_COLL_MAX) ? XC_ECOLL : fail ? XC_ENOMEM : XC_OK;
    if (rc) goto out;
    xc_pool_run(e->pool, aux_cand_task, e);
    char *send = (char *)e->abuf + slots;
    int32_t *cnt = (int32_t *)(void *)send;
    xc_scored_t *ent = (xc_scored_t *)(void *)(send + hdr);
    size_t m = 0;
    for (long b = 0; b < B; b++) {
        cnt[b] = (int32_t)e->aux_ptr[b + 1];
        memcpy(ent + m, e->abuf + (size_t)b * e->k_aux, sizeof(xc_scored_t) * (size_t)cnt[b]);
        m += (size_t)cnt[b];
    }
    if (B & 1) cnt[B] = 0;
    size_t got = 0;
    if ((rc = xc_engine_allgather_var(e, send, hdr + sizeof(xc_scored_t) * m, &e->gbuf, &e->gcap, &got))) goto out;
    /* rank by rank: its counts, then its proposals */
    const char *at = e->gbuf;
    for (int r = 0; r < R; r++) {
        const int32_t *rc_ = (const int32_t *)(const void *)at;
        long *o = off + (size_t)r * (B + 1);
        o[0] = 0;
        for (long b = 0; b < B; b++) o[b + 1] = o[b] + rc_[b];
        base[r] = (const xc_scored_t *)(const void *)(at + hdr);
        at += hdr + sizeof(xc_scored_t) * (size_t)o[B];
    }
    aux_gathered_t gt = {e, base, off};
    xc_pool_run(e->pool, aux_merge_task, &gt);
    /* ehat = the shards' parts */
    if (xc_ar(e, e->ehat, (long)e->B * e->d2, XC_COLL_F32, XC_COLL_SUM)) rc = XC_ECOLL;
out:
    free(off);
    free(base);
    return rc;
}

/* Builds the dead list (counting this step's fires from lat_cnt), runs the AuxK
 * forward and, when the loss is defined, its backward; *aux = the AuxK value
 * (0 when none are dead, aux_coef is 0, or the value is not finite, as the
 * reference's nan_to_num). k_aux and every branch depend on all-reduced
 * values only. The denominator comes from the residual sums the decode pass
 * already accumulated in the workers (the same on every shard). */
int xc_auxk_run(xc_engine_t *e, double *aux_out)
{
    *aux_out = 0.0;
    e->n_dead_list = 0;
    for (int j = 0; j < e->F; j++) {
        uint64_t since = e->lat_cnt[j] ? 0 : e->since_fired[j] + (uint64_t)e->B;
        e->dead[j] = since >= (uint64_t)e->cfg.dead_tokens;
        if (e->dead[j]) e->dead_list[e->n_dead_list++] = j;
    }
    e->k_aux = e->n_dead_g < e->kaux_max ? e->n_dead_g : e->kaux_max;
    memset(e->aux_ptr, 0, sizeof(long) * (size_t)(e->B + 1));
    e->aux_nnz = 0;
    if (e->k_aux == 0 || e->cfg.aux_coef == 0) return XC_OK;
    /* reduced-precision scoring left pre approximate: AuxK reads exact values */
    if (e->pre_approx) xc_engine_exact_columns(e, e->dead_list, e->n_dead_list);

    int rc = aux_exchange(e);
    if (rc) return rc;
    xc_pool_run(e->pool, aux_num_task, e);
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
        return XC_OK;
    }
    e->aux_denom = den;
    xc_pool_run(e->pool, aux_bwd_task, e);
    for (long b = 0; b < e->B; b++) e->aux_nnz += e->aux_ptr[b + 1];
    *aux_out = aux;
    return XC_OK;
}
