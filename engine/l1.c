/* The L1 baseline (method.md 2): loss = R + mu (1/B) sum_b sum_j u_bj s_j with
 * f = u. Its codes are dense, so unlike BatchTopK it runs on sgemms: decode
 * U W_dec, dL/du = G W_dec^T (+ the sparsity term), and the gradients U^T G and
 * dPRE^T X, each split over the pool (tokens for the first two, latents for the
 * last). The running Latent Scaling sums take two more sgemms (U^T E, U^T X). */
#include "xc_engine_internal.h"

#include <cblas.h>
#include <math.h>
#include <stddef.h>

/* Rows [lo, hi) of the batch: xhat = U W_dec + b_dec, residual and loss terms,
 * the L1 term, then dL/du = G W_dec^T + mu s / B on u > 0 (zero elsewhere:
 * the ReLU's gradient). */
static void l1_decode_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    xc_worker_t *w = &e->w[tid];
    long lo, hi;
    int d2 = e->d2, F = e->F;
    xc_pool_range(e->B, tid, nth, &lo, &hi);
    xc_engine_worker_reset(e, w);
    if (hi <= lo) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(hi - lo), d2, F, 1.0f,
                e->pre + (size_t)lo * F, F, e->w_dec, d2, 0.0f, e->resid + (size_t)lo * d2, d2);
    for (long b = lo; b < hi; b++) {
        float *xh = e->resid + (size_t)b * d2;
        const float *u = e->pre + (size_t)b * F;
        for (int i = 0; i < d2; i++) xh[i] += e->b_dec[i];
        xc_engine_residual_row(e, w, b);
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

/* Latents [lo, hi): decoder and encoder gradients (U^T G, dPRE^T X), the
 * sparsity term's gradient through the decoder norms, b_enc's gradient, the
 * running Latent Scaling sums of a committed step, and the squared norm. */
static void l1_grad_task(void *ctx, int tid, int nth)
{
    xc_engine_t *e = ctx;
    xc_worker_t *w = &e->w[tid];
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
            ls[LS_EE1] = ls[LS_RR1] = 0;
        }
        /* second moments: each firing token's own projections on v, a chunk of
         * tokens at a time (rows of E V^T and X V^T for this worker's latents) */
        float *pe = e->ls_p, *px = e->ls_p + (size_t)XC_LS_CHUNK * F;
        for (long b0 = 0; b0 < e->B; b0 += XC_LS_CHUNK) {
            int nb = (int)(e->B - b0 < XC_LS_CHUNK ? e->B - b0 : XC_LS_CHUNK);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, nf, d, 1.0f, e->resid + (size_t)b0 * d2 + d, d2,
                        e->w_dec + (size_t)lo * d2 + d, d2, 0.0f, pe + lo, F);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, nf, d, 1.0f, e->x + (size_t)b0 * d2 + d, d2,
                        e->w_dec + (size_t)lo * d2 + d, d2, 0.0f, px + lo, F);
            for (long j = lo; j < hi; j++) {
                double *ls = e->ls_step + (size_t)j * LS_N, ee = 0, rr = 0;
                for (int b = 0; b < nb; b++) {
                    if (!(e->pre[(size_t)(b0 + b) * F + j] > 0.0f)) continue;
                    double pj = pe[(size_t)b * F + j], rj = px[(size_t)b * F + j] - pj;
                    ee += pj * pj;
                    rr += rj * rj;
                }
                ls[LS_EE1] += ee;
                ls[LS_RR1] += rr;
            }
        }
    }
    double mu_b = e->cfg.l1_coef / e->B, a_model, a_concat;
    xc_code_norm_grad(&e->cfg, &a_model, &a_concat);
    for (long j = lo; j < hi; j++) {
        double su = 0, gb = 0;
        for (long b = 0; b < e->B; b++) {
            su += e->pre[(size_t)b * F + j];
            gb += e->dpre[(size_t)b * F + j];
        }
        float *gd = e->g_dec + (size_t)j * d2;
        const float *dr = e->w_dec + (size_t)j * d2;
        /* d(mu/B sum u s)/d d_j^m = mu/B (sum_b u_bj) ds_j/dd_j^m (codenorm.c): a_model
         * d_j^m / ||d_j^m|| (crosscoder) + a_concat d_j^m / ||d_j|| (sae) */
        double ncat = sqrt((double)e->nrm[2 * j] * e->nrm[2 * j] + (double)e->nrm[2 * j + 1] * e->nrm[2 * j + 1]);
        for (int m = 0; m < 2; m++) {
            float nm = e->nrm[2 * j + m];
            if (a_model != 0.0 && nm > 0)
                for (int i = 0; i < d; i++) gd[m * d + i] += (float)(a_model * (mu_b * su * dr[m * d + i] / nm));
            if (a_concat != 0.0 && ncat > 0)
                for (int i = 0; i < d; i++) gd[m * d + i] += (float)(a_concat * (mu_b * su * dr[m * d + i] / ncat));
        }
        e->g_benc[j] = (float)gb;
        e->has_grad[j] = 1;
        const float *ge = e->g_enc + (size_t)j * d2;
        w->sq += (double)cblas_sdot(d2, gd, 1, gd, 1) + cblas_sdot(d2, ge, 1, ge, 1) + gb * gb;
    }
}

void xc_l1_decode(xc_engine_t *e) { xc_pool_run(e->pool, l1_decode_task, e); }

/* The gradient pass, then the step's L1 term and fires: every u > 0 counts as
 * an activation (L1 codes are f = u). */
void xc_l1_grad(xc_engine_t *e)
{
    xc_pool_run(e->pool, l1_grad_task, e);
    double l1 = 0;
    for (int t = 0; t < e->nth; t++) l1 += e->w[t].l1;
    e->met.l1 = l1;
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
