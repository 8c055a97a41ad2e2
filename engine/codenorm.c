/* The code normalisation s_j and BatchTopK's k schedule: the two places where
 * the reference trainer's choices (dictionary_learning's CodeNormalization and
 * BatchTopKCrossCoderTrainer's k-annealing) enter the engine. Every score
 * u s_j (selection, AuxK, theta), the L1 penalty u s_j and that penalty's
 * gradient take s_j from here, so a variant is one switch in this file. */
#include "xc_engine_internal.h"

#include "xc_error.h"

#include <math.h>
#include <stdint.h>

/* s_j from the row's two decoder norms (the reference's get_code_normalization;
 * decoupled's summed form, which AuxK and the L1 penalty use). The default
 * (crosscoder) is the plain float sum, bit for bit what it always was. */
float xc_code_norm_s(const xc_engine_config_t *c, float nb, float nc)
{
    switch (c->code_norm) {
    case XC_CODE_SAE:
        return (float)sqrt((double)nb * nb + (double)nc * nc);
    case XC_CODE_MIXED:
        return (float)(c->code_alpha_sae * sqrt((double)nb * nb + (double)nc * nc) +
                       c->code_alpha_cc * ((double)nb + (double)nc));
    case XC_CODE_NONE:
        return 1.0f;
    case XC_CODE_CROSSCODER:
    case XC_CODE_DECOUPLED:
    default:
        return nb + nc;
    }
}

/* ds_j / d d_j^m = a_model d_j^m / ||d_j^m|| + a_concat d_j^m / ||d_j||, the
 * gradient of the L1 penalty through the decoder norms. */
void xc_code_norm_grad(const xc_engine_config_t *c, double *a_model, double *a_concat)
{
    switch (c->code_norm) {
    case XC_CODE_SAE:
        *a_model = 0.0, *a_concat = 1.0;
        return;
    case XC_CODE_MIXED:
        *a_model = c->code_alpha_cc, *a_concat = c->code_alpha_sae;
        return;
    case XC_CODE_NONE:
        *a_model = 0.0, *a_concat = 0.0;
        return;
    default:
        *a_model = 1.0, *a_concat = 0.0;
        return;
    }
}

/* Python's round(): to nearest, ties to even, whatever the FPU's mode. */
static double round_half_even(double x)
{
    double f = floor(x), r = x - f;
    if (r > 0.5) return f + 1.0;
    if (r < 0.5) return f;
    return fmod(f, 2.0) == 0.0 ? f : f + 1.0;
}

/* The reference trainer's loss(step=...): k_initial = k_max (or k), linear in
 * float64 down (or up) to k over k_annealing_steps, rounded, at least 1. */
int xc_engine_k_at(const xc_engine_config_t *c, long step)
{
    int k0 = c->k_max > 0 ? c->k_max : c->k;
    if (c->k_annealing_steps <= 0 || k0 == c->k) return k0;
    if (step >= c->k_annealing_steps) return c->k;
    double progress = (double)step / (double)c->k_annealing_steps;
    double kf = (double)k0 - (double)(k0 - c->k) * progress;
    double r = round_half_even(kf);
    return r < 1.0 ? 1 : (int)r;
}

/* Moves the selection's CSR (row_ptr, col, val; nnz entries) to entry offset
 * `at` and its row pointers to ptr, freeing the front for the next selection. */
static void park(xc_engine_t *e, long at, long *ptr)
{
    memmove(e->col + at, e->col, sizeof(int) * (size_t)e->nnz);
    memmove(e->val + at, e->val, sizeof(float) * (size_t)e->nnz);
    memcpy(ptr, e->row_ptr, sizeof(long) * (size_t)(e->B + 1));
}

/* The reference's encode_decoupled: per model m the exact top k*B of
 * u ||d_j^m|| over the batch (the same selection code, run with s = s_m[m] and
 * that model's prefilter state), then one CSR of the union, each entry marked
 * with the models that selected it (emask), rows in latent order so the
 * gradient pass sees each (token, latent) once. f^m = u on model m's entries. */
int xc_code_select_decoupled(xc_engine_t *e)
{
    float *s_keep = e->s;
    long K = e->K_alloc / 4; /* the scratch holds four selections' worth (tensors: decoupled) */
    long *ptr0 = e->dc_ptr, *ptr1 = e->dc_ptr + e->B + 1;
    int rc;
    e->s = e->s_m; /* base: prefilter state e->sel */
    rc = xc_select_topk(e);
    e->s = s_keep;
    if (rc) return rc;
    e->nnz_m[0] = e->nnz;
    park(e, 2 * K, ptr0);
    xc_select_state_t keep = e->sel; /* chat: its own prefilter state */
    e->sel = e->sel1;
    e->s = e->s_m + e->F;
    rc = xc_select_topk(e);
    e->s = s_keep;
    e->sel1 = e->sel;
    e->sel = keep;
    if (rc) return rc;
    e->nnz_m[1] = e->nnz;
    park(e, 3 * K, ptr1);
    /* merge row by row: both selections list each row's latents in ascending order */
    long p = 0;
    e->row_ptr[0] = 0;
    for (long b = 0; b < e->B; b++) {
        long a = 2 * K + ptr0[b], az = 2 * K + ptr0[b + 1], c = 3 * K + ptr1[b], cz = 3 * K + ptr1[b + 1];
        while (a < az || c < cz) {
            int ja = a < az ? e->col[a] : INT32_MAX, jc = c < cz ? e->col[c] : INT32_MAX;
            int j = ja < jc ? ja : jc;
            e->col[p] = j;
            e->val[p] = ja == j ? e->val[a] : e->val[c];
            e->emask[p] = (unsigned char)((ja == j) | ((jc == j) << 1));
            e->ent_row[p] = (int)b;
            a += ja == j;
            c += jc == j;
            p++;
        }
        e->row_ptr[b + 1] = p;
    }
    e->nnz = p;
    return XC_OK;
}
