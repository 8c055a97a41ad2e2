/* AuxK (method.md 2): the dead latents' auxiliary loss. A latent is dead once it
 * has not fired for dead_tokens tokens; per token the k_aux = min(d/2, #dead)
 * dead latents with the largest u s reconstruct the residual e (no b_dec):
 *   AuxK = mean_b ||e_b - ehat_b||^2 / mean_b ||e_b - mean(e)||^2,  NaN -> 0.
 * Its entries join the main ones in the gradient pass (engine.c, build_csc), so
 * dead latents get a gradient towards what the live ones miss. */
#include "xc_engine_internal.h"

#include <cblas.h>
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

/* Per token: the k_aux dead latents with the largest u s (u > 0), ehat, and the
 * numerator of the AuxK loss. Token-major, so each worker owns whole tokens. */
static void aux_fwd_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    xc_worker_t *w = &e->w[tid];
    long lo, hi;
    int d2 = e->d2, F = e->F;
    xc_pool_range(e->B, tid, nth, &lo, &hi);
    w->aux_num = 0;
    for (long b = lo; b < hi; b++) {
        const float *pre = e->pre + (size_t)b * F;
        long n = 0, base = b * (long)e->kaux_max;
        for (int q = 0; q < e->n_dead_list; q++) {
            int j = e->dead_list[q];
            float u = xc_relu_u(e, pre, j);
            if (u > 0.0f) w->dead_sc[n++] = (xc_scored_t){u * e->s[j], j};
        }
        if (n > e->k_aux) {
            select_k(w->dead_sc, n, e->k_aux);
            n = e->k_aux;
        }
        qsort(w->dead_sc, (size_t)n, sizeof(xc_scored_t), scored_cmp);
        e->aux_ptr[b + 1] = n; /* count; turned into offsets below */
        float *eh = e->ehat + (size_t)b * d2;
        memset(eh, 0, sizeof(float) * (size_t)d2);
        for (long q = 0; q < n; q++) {
            int j = w->dead_sc[q].j;
            e->aux_col[base + q] = j;
            e->aux_row[base + q] = (int)b;
            float u = xc_relu_u(e, pre, j);
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

/* Builds the dead list (counting this step's fires from lat_cnt), runs the AuxK
 * forward and, when the loss is defined, its backward; returns the AuxK value
 * (0 when none are dead, aux_coef is 0, or the value is not finite, as the
 * reference's nan_to_num). The denominator comes from the residual sums the
 * decode pass already accumulated in the workers. */
double xc_auxk_run(xc_engine_t *e)
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
    /* reduced-precision scoring left pre approximate: AuxK reads exact values */
    if (e->pre_approx) xc_engine_exact_columns(e, e->dead_list, e->n_dead_list);

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
