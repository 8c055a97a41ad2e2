/* The code normalisation s_j and BatchTopK's k schedule: the two places where
 * the reference trainer's choices (dictionary_learning's CodeNormalization and
 * BatchTopKCrossCoderTrainer's k-annealing) enter the engine. Every score
 * u s_j (selection, AuxK, theta), the L1 penalty u s_j and that penalty's
 * gradient take s_j from here, so a variant is one switch in this file. */
#include "xc_engine_internal.h"

#include <math.h>

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
