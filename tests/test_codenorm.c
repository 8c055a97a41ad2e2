/* Code normalisation variants and k-annealing against independent computations:
 * the k schedule against values the reference trainer's own Python expression
 * printed; for each CodeNormalization, s_j, the BatchTopK selection, AuxK's
 * choice and the training loss against a double-precision brute force on the
 * same parameters, and finite-difference gradients of the L1 penalty (the one
 * loss term s_j enters differentiably); decoupled; the checkpoint's
 * code_normalization_id and the refusal to resume under another one. */
/* failure messages quote paths and reasons; truncating them is harmless */
#pragma GCC diagnostic ignored "-Wformat-truncation"

#include "xc_ckpt.h"
#include "xc_config.h"
#include "xc_engine.h"
#include "xc_error.h"
#include "xc_rng.h"
#include "xc_test.h"

#include <float.h>
#include <stdint.h>
#include <unistd.h>

/* ------------------------------------------------------------------ k schedule */

/* Printed by the reference's expression (BatchTopKCrossCoderTrainer.loss:
 * max(1, int(round(k_initial - (k_initial - k_target) * step / k_annealing_steps))))
 * for steps 0, 1, ...: a table, not a second implementation of it. Case 2 has
 * ties (9.5 -> 10, 8.5 -> 8: Python rounds half to even), case 3 rises. */
static const struct {
    int k_max, k, steps, n;
    int want[48];
} g_sched[] = {
    {100, 8, 37, 45, {100, 98, 95, 93, 90, 88, 85, 83, 80, 78, 75, 73, 70, 68, 65, 63, 60, 58, 55, 53, 50, 48, 45,
                      43, 40, 38, 35, 33, 30, 28, 25, 23, 20, 18, 15, 13, 10, 8, 8, 8, 8, 8, 8, 8, 8}},
    {10, 2, 16, 20, {10, 10, 9, 8, 8, 8, 7, 6, 6, 6, 5, 4, 4, 4, 3, 2, 2, 2, 2, 2}},
    {3, 10, 7, 10, {3, 4, 5, 6, 7, 8, 9, 10, 10, 10}},
    {5, 1, 9, 12, {5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 1, 1}},
    {7, 7, 5, 8, {7, 7, 7, 7, 7, 7, 7, 7}},
};

static void test_k_schedule_reference(void)
{
    for (size_t c = 0; c < sizeof g_sched / sizeof g_sched[0]; c++) {
        xc_engine_config_t cfg;
        xc_cfg_engine_defaults(&cfg, XC_MODEL_BATCHTOPK);
        cfg.k_max = g_sched[c].k_max;
        cfg.k = g_sched[c].k;
        cfg.k_annealing_steps = g_sched[c].steps;
        for (int s = 0; s < g_sched[c].n; s++)
            XC_CHECK(xc_engine_k_at(&cfg, s) == g_sched[c].want[s], "case %zu step %d: k %d, reference %d", c, s,
                     xc_engine_k_at(&cfg, s), g_sched[c].want[s]);
    }
    xc_engine_config_t cfg;
    xc_cfg_engine_defaults(&cfg, XC_MODEL_BATCHTOPK);
    cfg.k = 9; /* k_max 0: no annealing, k throughout */
    XC_CHECK(xc_engine_k_at(&cfg, 0) == 9 && xc_engine_k_at(&cfg, 123456) == 9, "k_max 0 is not k");
    char why[256];
    cfg.d = 8;
    cfg.dict_size = 64;
    cfg.batch_size = 4;
    cfg.k_max = 20;
    cfg.k_annealing_steps = 0;
    XC_CHECK(xc_engine_config_validate(&cfg, why, sizeof why) == XC_ECONFIG && strstr(why, "k_annealing_steps"),
             "k_max != k without annealing steps accepted: %s", why);
    cfg.k_max = 65;
    cfg.k_annealing_steps = 10;
    XC_CHECK(xc_engine_config_validate(&cfg, why, sizeof why) == XC_ECONFIG && strstr(why, "k_max"),
             "k_max > dict_size accepted");
}

/* The engine trains each step with that step's k: k*B entries selected, the
 * metric k is the step's, and AuxK and theta run as without annealing (theta
 * from the step's smallest selected score from threshold_start_step on). */
static void test_k_annealing_steps(void)
{
    enum { d = 8, F = 96, B = 16 };
    xc_engine_config_t c;
    xc_cfg_engine_defaults(&c, XC_MODEL_BATCHTOPK);
    c.d = d, c.dict_size = F, c.batch_size = B, c.k = 2, c.k_max = 10, c.k_annealing_steps = 6;
    c.threads = 2, c.seed = 3, c.warmup_steps = 0, c.encoder_precision = XC_PREC_FP32;
    c.threshold_start_step = 2, c.dead_tokens = 3 * B; /* some latents die and AuxK runs */
    int err;
    xc_engine_t *e = xc_engine_new(&c, &err);
    XC_REQUIRE(e, "engine: %s", xc_strerror(err));
    XC_CHECK(xc_engine_metrics(e)->k == 10, "k before the first step %d, want k_max", xc_engine_metrics(e)->k);
    xc_rng_t r;
    xc_rng_seed(&r, 5);
    float x[B * 2 * d];
    int aux_seen = 0;
    double theta_prev = -1;
    for (long s = 0; s < 12; s++) {
        for (int i = 0; i < B * 2 * d; i++) x[i] = (float)xc_rng_normal(&r);
        XC_REQUIRE(xc_engine_train_step(e, x, B) == 0, "step %ld", s);
        const xc_engine_metrics_t *m = xc_engine_metrics(e);
        int want = xc_engine_k_at(&c, s);
        const long *rp;
        const int *col;
        const float *val;
        long nnz = xc_engine_selection(e, &rp, &col, &val);
        XC_CHECK(m->k == want, "step %ld: metric k %d, schedule %d", s, m->k, want);
        XC_CHECK(nnz == (long)want * B, "step %ld: %ld entries selected, k*B = %d", s, nnz, want * B);
        aux_seen |= m->aux > 0;
        if (s > c.threshold_start_step) {
            /* theta's sample: the smallest selected u s of this step */
            xc_engine_params_t p;
            xc_engine_params(e, &p);
            XC_CHECK(m->theta > 0 && m->theta != theta_prev, "step %ld: theta %g not updated", s, m->theta);
        } else {
            XC_CHECK(m->theta == -1, "step %ld: theta %g set before threshold_start_step", s, m->theta);
        }
        theta_prev = m->theta;
    }
    XC_CHECK(aux_seen, "AuxK never ran during or after annealing");
    /* a restored state resumes the schedule where it was */
    xc_state_view_t v[XC_ENGINE_STATE_MAX];
    int n = xc_engine_state_views(e, v, XC_ENGINE_STATE_MAX);
    for (int i = 0; i < n; i++)
        if (!strcmp(v[i].name, "step")) *(int64_t *)v[i].data = 4;
    xc_engine_state_restored(e);
    XC_CHECK(xc_engine_metrics(e)->k == xc_engine_k_at(&c, 3), "restored at step 4: k %d, want %d",
             xc_engine_metrics(e)->k, xc_engine_k_at(&c, 3));
    XC_REQUIRE(xc_engine_train_step(e, x, B) == 0, "step after restore");
    XC_CHECK(xc_engine_selection(e, NULL, NULL, NULL) == (long)xc_engine_k_at(&c, 4) * B, "resumed step's k");
    xc_engine_destroy(&e);
}

/* ------------------------------------------------------------------ code norms */

typedef struct {
    xc_code_norm_t cn;
    double a_sae, a_cc;
} cn_t;

/* s_j in double from a decoder row (2d values), the reference's formulas. */
static double ref_s(const cn_t *cn, const double *row, int d)
{
    double nb = 0, nc = 0;
    for (int i = 0; i < d; i++) {
        nb += row[i] * row[i];
        nc += row[d + i] * row[d + i];
    }
    double cc = sqrt(nb) + sqrt(nc), sae = sqrt(nb + nc);
    switch (cn->cn) {
    case XC_CODE_SAE: return sae;
    case XC_CODE_MIXED: return cn->a_sae * sae + cn->a_cc * cc;
    case XC_CODE_NONE: return 1.0;
    default: return cc;
    }
}

typedef struct {
    int d, F, B, d2, model;
    cn_t cn;
    double aux_coef, l1_coef;
    const float *x;
    const unsigned char *mask; /* (B, F) the BatchTopK selection, fixed: bit m = model m's codes */
    const int *auxsel;         /* (B, kaux) AuxK choice, fixed; -1 = none */
    int kaux;
    const double *e0;          /* (B, 2d) detached residual for AuxK */
    double den0;
} ref_t;

/* The training loss in double for p = [w_enc (F,2d) | b_enc (F) | w_dec (F,2d) | b_dec (2d)]:
 * un-squared l2 reconstruction, + mu (1/B) sum u s (L1) or + aux_coef AuxK. */
static double ref_loss(const ref_t *R, const double *p, double *resid_out)
{
    int d = R->d, F = R->F, B = R->B, d2 = R->d2;
    const double *we = p, *be = p + (size_t)F * d2, *wd = be + F, *bd = wd + (size_t)F * d2;
    double *u = malloc(sizeof(double) * (size_t)F), *s = malloc(sizeof(double) * (size_t)F);
    double *xh = malloc(sizeof(double) * (size_t)d2), *eh = malloc(sizeof(double) * (size_t)d2);
    double loss = 0, l1 = 0, auxnum = 0;
    for (int j = 0; j < F; j++) s[j] = ref_s(&R->cn, wd + (size_t)j * d2, d);
    for (int b = 0; b < B; b++) {
        const float *xb = R->x + (size_t)b * d2;
        for (int j = 0; j < F; j++) {
            double a = be[j];
            for (int i = 0; i < d2; i++) a += xb[i] * we[(size_t)j * d2 + i];
            u[j] = a > 0 ? a : 0;
        }
        for (int i = 0; i < d2; i++) xh[i] = bd[i];
        for (int j = 0; j < F; j++) {
            for (int m = 0; m < 2; m++) { /* x-hat^m from model m's codes */
                int on = R->model == XC_MODEL_L1 || (R->mask[(size_t)b * F + j] >> m & 1);
                double f = on ? u[j] : 0;
                if (f != 0)
                    for (int i = m * d; i < (m + 1) * d; i++) xh[i] += f * wd[(size_t)j * d2 + i];
            }
            if (R->model == XC_MODEL_L1) l1 += u[j] * s[j] / B;
        }
        for (int m = 0; m < 2; m++) {
            double sq = 0;
            for (int i = m * d; i < (m + 1) * d; i++) {
                double ee = xb[i] - xh[i];
                sq += ee * ee;
                if (resid_out) resid_out[(size_t)b * d2 + i] = ee;
            }
            loss += sqrt(sq) / (2.0 * B);
        }
        if (R->auxsel && R->kaux > 0) {
            for (int i = 0; i < d2; i++) eh[i] = 0;
            for (int q = 0; q < R->kaux; q++) {
                int j = R->auxsel[b * R->kaux + q];
                if (j < 0) continue;
                for (int i = 0; i < d2; i++) eh[i] += u[j] * wd[(size_t)j * d2 + i];
            }
            for (int i = 0; i < d2; i++) auxnum += pow(R->e0[(size_t)b * d2 + i] - eh[i], 2);
        }
    }
    if (R->model == XC_MODEL_L1) loss += R->l1_coef * l1;
    if (R->auxsel && R->kaux > 0) loss += R->aux_coef * (auxnum / B) / R->den0;
    free(u);
    free(s);
    free(xh);
    free(eh);
    return loss;
}

static xc_engine_t *mk_cn(xc_model_kind_t model, const cn_t *cn, int d, int F, int B, int k)
{
    xc_engine_config_t c;
    xc_cfg_engine_defaults(&c, model);
    c.d = d, c.dict_size = F, c.batch_size = B, c.k = k, c.threads = 2, c.seed = 11, c.warmup_steps = 0;
    c.encoder_precision = XC_PREC_FP32;
    c.code_norm = cn->cn;
    c.code_alpha_sae = (float)cn->a_sae;
    c.code_alpha_cc = (float)cn->a_cc;
    int err;
    return xc_engine_new(&c, &err);
}

/* Selection, AuxK choice and loss against the brute force, then finite
 * differences of every parameter; returns the worst scaled FD error (<= 1:
 * within 1e-3 of the gradient's scale) and counts mismatches in *bad. */
static double check_variant(xc_model_kind_t model, const cn_t *cn, int *bad, double *loss_rel, double *aux_out)
{
    enum { d = 6, F = 24, B = 10, k = 2, d2 = 12, kaux_max = d / 2 };
    xc_engine_t *e = mk_cn(model, cn, d, F, B, k);
    if (!e) {
        (*bad)++;
        return 1e9;
    }
    xc_rng_t r;
    xc_rng_seed(&r, 99 + (uint64_t)cn->cn);
    float x[B * d2];
    for (int i = 0; i < B * d2; i++) x[i] = (float)xc_rng_normal(&r);
    xc_engine_params_t pp;
    xc_engine_params(e, &pp);
    /* decoder rows of unequal norms between the models, so the variants rank differently */
    for (int j = 0; j < F; j++)
        for (int i = 0; i < d2; i++) {
            float sc = i < d ? (float)(0.2 + 1.5 * (j % 5)) : (float)(0.3 + 0.4 * (j % 3));
            pp.w_dec[j * d2 + i] = sc * (pp.w_dec[j * d2 + i] + (float)(0.3 * xc_rng_normal(&r)));
        }
    for (int i = 0; i < F; i++) pp.b_enc[i] = (float)(0.1 * xc_rng_normal(&r));
    for (int i = 0; i < d2; i++) pp.b_dec[i] = (float)(0.2 * xc_rng_normal(&r));
    if (model == XC_MODEL_L1)
        for (int i = 0; i < F * d2; i++) pp.w_enc[i] *= 100.0f;
    xc_engine_params_changed(e);
    if (model == XC_MODEL_BATCHTOPK) {
        uint64_t *c = xc_engine_dead_counters(e);
        for (int j = 0; j < F; j++) c[j] = 20000000ULL; /* dead unless they fire now: AuxK runs */
    }
    size_t np = (size_t)F * d2 * 2 + F + d2;
    float *ga_f = malloc(sizeof(float) * np);
    xc_engine_params_t g = {ga_f, ga_f + F * d2, ga_f + F * d2 + F, ga_f + 2 * F * d2 + F};
    xc_engine_metrics_t m;
    double worst = 1e9;
    if (xc_engine_compute_grads(e, x, B, &g, &m) != 0) {
        (*bad)++;
        goto out_g;
    }
    *aux_out = m.aux;
    double *p = malloc(sizeof(double) * np);
    {
        size_t at = 0;
        for (int i = 0; i < F * d2; i++) p[at++] = pp.w_enc[i];
        for (int i = 0; i < F; i++) p[at++] = pp.b_enc[i];
        for (int i = 0; i < F * d2; i++) p[at++] = pp.w_dec[i];
        for (int i = 0; i < d2; i++) p[at++] = pp.b_dec[i];
    }
    const double *we = p, *be = p + F * d2, *wd = be + F;
    /* u in double and s in double: the scores of the brute force */
    double u[B][F], s[F];
    for (int j = 0; j < F; j++) s[j] = ref_s(cn, wd + (size_t)j * d2, d);
    for (int b = 0; b < B; b++)
        for (int j = 0; j < F; j++) {
            double a = be[j];
            for (int i = 0; i < d2; i++) a += x[b * d2 + i] * we[(size_t)j * d2 + i];
            u[b][j] = a > 0 ? a : 0;
        }
    unsigned char mask[B * F];
    memset(mask, 0, sizeof mask);
    if (model == XC_MODEL_BATCHTOPK) {
        /* the k*B largest positive u s of the whole batch; decoupled: per model m,
         * of u ||d_j^m|| (bit m), as the reference's encode_decoupled */
        int dc = cn->cn == XC_CODE_DECOUPLED;
        unsigned char want[B * F];
        memset(want, 0, sizeof want);
        for (int mm = 0; mm < (dc ? 2 : 1); mm++) {
            double sm[F];
            for (int j = 0; j < F; j++) {
                double n2 = 0;
                for (int i = mm * d; i < (mm + 1) * d; i++) n2 += wd[(size_t)j * d2 + i] * wd[(size_t)j * d2 + i];
                sm[j] = dc ? sqrt(n2) : s[j];
            }
            unsigned char bit = (unsigned char)(dc ? 1 << mm : 3);
            for (int q = 0; q < k * B; q++) {
                int best = -1;
                for (int i = 0; i < B * F; i++)
                    if (!(want[i] & bit) && u[i / F][i % F] > 0 &&
                        (best < 0 || u[i / F][i % F] * sm[i % F] > u[best / F][best % F] * sm[best % F]))
                        best = i;
                if (best >= 0) want[best] |= bit;
            }
        }
        const long *rp;
        const int *col;
        xc_engine_selection(e, &rp, &col, NULL);
        const unsigned char *em = xc_engine_selection_models(e);
        if ((em != NULL) != dc) (*bad)++;
        for (int b = 0; b < B; b++)
            for (long q = rp[b]; q < rp[b + 1]; q++) mask[b * F + col[q]] = em ? em[q] : 3;
        for (int i = 0; i < B * F; i++) *bad += mask[i] != want[i];
    }
    double e0[B * d2];
    int auxsel[B * kaux_max];
    ref_t R = {d, F, B, d2, model, *cn, 1.0 / 32, 0.041, x, mask, NULL, 0, e0, 0};
    ref_loss(&R, p, e0);
    if (model == XC_MODEL_BATCHTOPK) {
        /* AuxK: dead = not selected in the batch; per token the kaux dead latents with the largest u s */
        int dead[F], nd = 0;
        for (int j = 0; j < F; j++) {
            int fired = 0;
            for (int b = 0; b < B; b++) fired |= mask[b * F + j];
            if (!fired) dead[nd++] = j;
        }
        int ka = nd < kaux_max ? nd : kaux_max;
        for (int b = 0; b < B; b++) {
            double sc[F];
            for (int q = 0; q < nd; q++) sc[q] = u[b][dead[q]] > 0 ? u[b][dead[q]] * s[dead[q]] : -1;
            for (int q = 0; q < ka; q++) {
                int best = -1;
                for (int z = 0; z < nd; z++)
                    if (sc[z] > 0 && (best < 0 || sc[z] > sc[best])) best = z;
                auxsel[b * ka + q] = best < 0 ? -1 : dead[best];
                if (best >= 0) sc[best] = -1;
            }
        }
        double mean[d2], den = 0;
        memset(mean, 0, sizeof mean);
        for (int b = 0; b < B; b++)
            for (int i = 0; i < d2; i++) mean[i] += e0[b * d2 + i] / B;
        for (int b = 0; b < B; b++)
            for (int i = 0; i < d2; i++) den += pow(e0[b * d2 + i] - mean[i], 2) / B;
        R.kaux = ka, R.auxsel = auxsel, R.den0 = den;
    }
    double L = ref_loss(&R, p, NULL);
    *loss_rel = fabs(L - m.loss) / fmax(1e-12, fabs(L));
    double gmax = 0;
    for (size_t i = 0; i < np; i++) gmax = fmax(gmax, fabs(ga_f[i]));
    worst = 0;
    for (size_t i = 0; i < np; i++) {
        double keep = p[i], h = 1e-6;
        p[i] = keep + h;
        double lp = ref_loss(&R, p, NULL);
        p[i] = keep - h;
        double lm = ref_loss(&R, p, NULL);
        p[i] = keep;
        double fd = (lp - lm) / (2 * h);
        double err = fabs(fd - ga_f[i]) / (1e-3 * gmax + 1e-3 * fabs(fd));
        if (err > worst) worst = err;
    }
    free(p);
out_g:
    free(ga_f);
    xc_engine_destroy(&e);
    return worst;
}

static const cn_t g_cns[] = {
    {XC_CODE_CROSSCODER, 1.0, 0.1},
    {XC_CODE_SAE, 1.0, 0.1},
    {XC_CODE_MIXED, 0.7, 0.3},
    {XC_CODE_NONE, 1.0, 0.1},
    {XC_CODE_DECOUPLED, 1.0, 0.1}, /* BatchTopK: per-model codes; L1: the crosscoder sum */
};
static const char *const g_cn_names[] = {"crosscoder", "sae", "mixed", "none", "decoupled"};

/* The engine's s_j (through xc_engine_encode's threshold rule at a theta
 * between scores) equals the formula: checked via the selection above, and
 * here directly: u s > theta keeps exactly the entries the double s keeps. */
static void test_codenorm_batchtopk(void)
{
    for (size_t c = 0; c < sizeof g_cns / sizeof g_cns[0]; c++) {
        int bad = 0;
        double rel = 1, aux = 0;
        double w = check_variant(XC_MODEL_BATCHTOPK, &g_cns[c], &bad, &rel, &aux);
        XC_CHECK(bad == 0, "%s: %d selection entries differ from the brute force", g_cn_names[g_cns[c].cn], bad);
        XC_CHECK(rel < 1e-5, "%s: loss differs from the double computation by %.3g relative", g_cn_names[g_cns[c].cn], rel);
        XC_CHECK(aux > 0, "%s: AuxK did not run", g_cn_names[g_cns[c].cn]);
        XC_CHECK(w <= 1.0, "%s: worst scaled FD error %.3g", g_cn_names[g_cns[c].cn], w);
    }
}

static void test_codenorm_l1(void)
{
    for (size_t c = 0; c < sizeof g_cns / sizeof g_cns[0]; c++) {
        int bad = 0;
        double rel = 1, aux = 0;
        double w = check_variant(XC_MODEL_L1, &g_cns[c], &bad, &rel, &aux);
        XC_CHECK(bad == 0, "%s: engine failed", g_cn_names[g_cns[c].cn]);
        XC_CHECK(rel < 1e-5, "%s: L1 loss differs from the double computation by %.3g relative", g_cn_names[g_cns[c].cn], rel);
        XC_CHECK(w <= 1.0, "%s: worst scaled FD error %.3g (the penalty's gradient through s)", g_cn_names[g_cns[c].cn], w);
    }
}

/* The threshold rule at inference uses the same s: f = u 1[u s > theta]. */
static void test_codenorm_threshold(void)
{
    enum { d = 5, F = 40, B = 8 };
    for (size_t c = 0; c < sizeof g_cns / sizeof g_cns[0]; c++) {
        if (g_cns[c].cn == XC_CODE_DECOUPLED) continue; /* two rules: test_decoupled_theta_and_inference */
        xc_engine_t *e = mk_cn(XC_MODEL_BATCHTOPK, &g_cns[c], d, F, B, 3);
        XC_REQUIRE(e, "engine");
        xc_engine_params_t p;
        xc_engine_params(e, &p);
        xc_rng_t r;
        xc_rng_seed(&r, 21);
        for (int i = 0; i < F * 2 * d; i++) p.w_dec[i] *= (float)(0.5 + fabs(xc_rng_normal(&r)));
        xc_engine_params_changed(e);
        float x[B * 2 * d], u[B * F], f[B * F];
        for (int i = 0; i < B * 2 * d; i++) x[i] = (float)xc_rng_normal(&r);
        xc_engine_set_theta(e, -1.0);
        xc_engine_encode(e, x, B, u);
        double theta = 0.4;
        xc_engine_set_theta(e, theta);
        xc_engine_encode(e, x, B, f);
        int bad = 0, kept = 0;
        for (int j = 0; j < F; j++) {
            double row[2 * d];
            for (int i = 0; i < 2 * d; i++) row[i] = p.w_dec[j * 2 * d + i];
            double s = ref_s(&g_cns[c], row, d);
            for (int b = 0; b < B; b++) {
                double sc = (double)u[b * F + j] * s;
                if (fabs(sc - theta) < 1e-5) continue; /* float vs double at the boundary */
                int want = sc > theta;
                kept += want;
                bad += (f[b * F + j] != 0) != want || (want && f[b * F + j] != u[b * F + j]);
            }
        }
        XC_CHECK(bad == 0 && kept > 0, "%s: %d threshold codes differ (%d kept)", g_cn_names[g_cns[c].cn], bad, kept);
        xc_engine_destroy(&e);
    }
}

/* decoupled: for L1 the reference's CrossCoder has no per-model codes, and its
 * s is the crosscoder sum: training is bit-identical to crosscoder. */
static void test_decoupled(void)
{
    enum { d = 6, F = 32, B = 8 };
    cn_t cc = {XC_CODE_CROSSCODER, 1, 0.1}, dc = {XC_CODE_DECOUPLED, 1, 0.1};
    xc_engine_t *a = mk_cn(XC_MODEL_L1, &cc, d, F, B, 2), *b = mk_cn(XC_MODEL_L1, &dc, d, F, B, 2);
    XC_REQUIRE(a && b, "engines");
    xc_rng_t r;
    xc_rng_seed(&r, 4);
    float x[B * 2 * d];
    for (int s = 0; s < 3; s++) {
        for (int i = 0; i < B * 2 * d; i++) x[i] = (float)xc_rng_normal(&r);
        XC_REQUIRE(xc_engine_train_step(a, x, B) == 0 && xc_engine_train_step(b, x, B) == 0, "step");
    }
    xc_engine_params_t pa, pb;
    xc_engine_params(a, &pa);
    xc_engine_params(b, &pb);
    XC_CHECK(!memcmp(pa.w_dec, pb.w_dec, sizeof(float) * F * 2 * d) && !memcmp(pa.w_enc, pb.w_enc, sizeof(float) * F * 2 * d),
             "l1 decoupled differs from crosscoder");
    xc_engine_destroy(&a);
    xc_engine_destroy(&b);
}

/* decoupled BatchTopK: theta per model from that model's smallest selected
 * u ||d_j^m|| (the reference's update_decoupled_threshold), the union codes at
 * inference, and no exact Latent Scaling pass (no one activation per latent). */
static void test_decoupled_theta_and_inference(void)
{
    enum { d = 6, F = 48, B = 12, d2 = 12 };
    cn_t dc = {XC_CODE_DECOUPLED, 1, 0.1};
    xc_engine_config_t c;
    xc_cfg_engine_defaults(&c, XC_MODEL_BATCHTOPK);
    c.d = d, c.dict_size = F, c.batch_size = B, c.k = 3, c.threads = 2, c.seed = 8, c.warmup_steps = 0;
    c.encoder_precision = XC_PREC_FP32, c.code_norm = XC_CODE_DECOUPLED, c.threshold_start_step = 0;
    int err;
    xc_engine_t *e = xc_engine_new(&c, &err);
    XC_REQUIRE(e, "engine: %s", xc_strerror(err));
    xc_engine_params_t p;
    xc_engine_params(e, &p);
    xc_rng_t r;
    xc_rng_seed(&r, 31);
    for (int j = 0; j < F; j++) /* the chat rows twice as long: the two models' cut-offs differ */
        for (int i = d; i < d2; i++) p.w_dec[j * d2 + i] *= 2.0f + (float)(j % 3);
    xc_engine_params_changed(e);
    float x[B * d2], keep[F * d2];
    double want[2] = {-1, -1};
    for (int step = 0; step < 3; step++) {
        for (int i = 0; i < B * d2; i++) x[i] = (float)xc_rng_normal(&r);
        memcpy(keep, p.w_dec, sizeof keep);
        XC_REQUIRE(xc_engine_train_step(e, x, B) == 0, "step %d", step);
        const long *rp;
        const int *col;
        const float *val;
        long nnz = xc_engine_selection(e, &rp, &col, &val);
        const unsigned char *em = xc_engine_selection_models(e);
        XC_REQUIRE(em, "no per-model selection");
        long cnt[2] = {0, 0};
        double mn[2] = {DBL_MAX, DBL_MAX};
        for (long q = 0; q < nnz; q++)
            for (int m = 0; m < 2; m++) {
                if (!(em[q] >> m & 1)) continue;
                cnt[m]++;
                double n2 = 0;
                for (int i = m * d; i < (m + 1) * d; i++) n2 += (double)keep[col[q] * d2 + i] * keep[col[q] * d2 + i];
                double sc = (double)val[q] * (float)sqrt(n2);
                if (sc < mn[m]) mn[m] = sc;
            }
        XC_CHECK(cnt[0] == c.k * B && cnt[1] == c.k * B, "step %d: %ld / %ld entries per model, want k*B = %d", step,
                 cnt[0], cnt[1], c.k * B);
        if (step > 0)
            for (int m = 0; m < 2; m++) want[m] = want[m] < 0 ? mn[m] : 0.999 * want[m] + 0.001 * mn[m];
        const xc_engine_metrics_t *mt = xc_engine_metrics(e);
        for (int m = 0; m < 2; m++)
            XC_CHECK(fabs(mt->theta_m[m] - want[m]) <= 1e-5 * fabs(want[m]) + 1e-12, "step %d: theta_%d %.9g, want %.9g",
                     step, m, mt->theta_m[m], want[m]);
        XC_CHECK(mt->theta == mt->theta_m[0], "theta is not the base model's");
        XC_CHECK(fabs(mt->l0 - c.k) < 1e-12, "l0 %g, per model k = %d", mt->l0, c.k);
    }
    XC_CHECK(xc_engine_metrics(e)->theta_m[0] != xc_engine_metrics(e)->theta_m[1], "one theta for both models");
    /* inference: a latent is coded where either model's rule keeps it */
    float u[B * F], f[B * F];
    xc_engine_set_theta(e, -1.0);
    xc_engine_encode(e, x, B, u);
    double th[2] = {0.3, 0.9};
    xc_engine_set_theta_models(e, th[0], th[1]);
    xc_engine_encode(e, x, B, f);
    int bad = 0, kept[2] = {0, 0};
    for (int j = 0; j < F; j++) {
        double nm[2] = {0, 0};
        for (int i = 0; i < d2; i++) nm[i / d] += (double)p.w_dec[j * d2 + i] * p.w_dec[j * d2 + i];
        for (int b = 0; b < B; b++) {
            double s0 = u[b * F + j] * sqrt(nm[0]), s1 = u[b * F + j] * sqrt(nm[1]);
            if (fabs(s0 - th[0]) < 1e-5 || fabs(s1 - th[1]) < 1e-5) continue;
            int w = s0 > th[0] || s1 > th[1];
            kept[0] += s0 > th[0], kept[1] += s1 > th[1] && !(s0 > th[0]);
            bad += (f[b * F + j] != 0) != w;
        }
    }
    XC_CHECK(bad == 0 && kept[0] > 0 && kept[1] > 0, "%d union codes differ (%d base, %d chat only)", bad, kept[0], kept[1]);
    xc_scaling_t *sp = xc_scaling_new(e, &err);
    XC_CHECK(!sp && err == XC_EINVAL, "exact Latent Scaling accepted per-model codes");
    xc_engine_destroy(&e);
    (void)dc;
}

/* ------------------------------------------------------------------ checkpoint */

static char g_dir[256];

/* Writes a pair from an engine of code normalisation cn; the model file's path in out. */
static int write_pair(xc_engine_t *e, const char *sub, char *out, size_t n, char *train, size_t tn)
{
    char dir[300];
    snprintf(dir, sizeof dir, "%s/%s", g_dir, sub);
    xc_ckpt_writer_opts_t wo = {dir, "cn", "{}", 0, NULL, NULL};
    int err;
    xc_ckpt_writer_t *w = xc_ckpt_writer_new(&wo, &err);
    if (!w) return err;
    xc_ckpt_writer_continue(w, "0123456789abcdef", 1, -1, NULL, NULL);
    xc_ckpt_info_t info;
    int rc = xc_ckpt_writer_submit(w, e, NULL, 0, "test", 0, 1, &info);
    xc_ckpt_writer_destroy(&w);
    if (rc != 1 || info.rc) return info.rc ? info.rc : XC_EIO;
    snprintf(out, n, "%s", info.path);
    snprintf(train, tn, "%s", info.train_path);
    return 0;
}

static void test_checkpoint_id(void)
{
    enum { d = 4, F = 16, B = 8 };
    cn_t mixed = {XC_CODE_MIXED, 0.25, 0.75}, cc = {XC_CODE_CROSSCODER, 1, 0.1};
    xc_engine_t *e = mk_cn(XC_MODEL_BATCHTOPK, &mixed, d, F, B, 2);
    XC_REQUIRE(e, "engine");
    char path[1100], train[1100], why[600];
    XC_REQUIRE(write_pair(e, "mixed", path, sizeof path, train, sizeof train) == 0, "write");
    int err;
    xc_stf_t *f = xc_stf_open(path, &err, why, sizeof why);
    XC_REQUIRE(f, "open: %s", why);
    const xc_stf_tensor_t *t = xc_stf_find(f, "code_normalization_id");
    int64_t id = 0;
    if (t && t->count == 1) memcpy(&id, t->data, 8);
    XC_CHECK(id == 3, "code_normalization_id %lld, MIXED is 3", (long long)id);
    const char *a = xc_stf_meta(f, "code_normalization_alpha_sae"), *b = xc_stf_meta(f, "code_normalization_alpha_cc");
    XC_CHECK(a && b && atof(a) == 0.25 && atof(b) == 0.75, "alpha metadata %s %s", a ? a : "-", b ? b : "-");
    XC_CHECK(xc_stf_meta(f, "code_normalization") && !strcmp(xc_stf_meta(f, "code_normalization"), "MIXED"),
             "code_normalization metadata");
    xc_stf_close(&f);
    /* the same code normalisation resumes; another one is refused, naming both */
    xc_engine_t *same = mk_cn(XC_MODEL_BATCHTOPK, &mixed, d, F, B, 2), *other = mk_cn(XC_MODEL_BATCHTOPK, &cc, d, F, B, 2);
    XC_REQUIRE(same && other, "engines");
    XC_CHECK(xc_ckpt_load_pair(same, NULL, 0, path, train, NULL, why, sizeof why) == 0, "resume: %s", why);
    int rc = xc_ckpt_load_pair(other, NULL, 0, path, train, NULL, why, sizeof why);
    XC_CHECK(rc != 0 && strstr(why, "MIXED") && strstr(why, "CROSSCODER"), "resume under crosscoder: %d %s", rc, why);
    xc_engine_destroy(&same);
    xc_engine_destroy(&other);
    xc_engine_destroy(&e);
}

/* decoupled: the threshold tensor is [2] (the reference's buffer), the chat theta
 * resumes from the training file. */
static void test_checkpoint_decoupled(void)
{
    enum { d = 4, F = 16, B = 8 };
    cn_t dc = {XC_CODE_DECOUPLED, 1, 0.1};
    xc_engine_t *e = mk_cn(XC_MODEL_BATCHTOPK, &dc, d, F, B, 2), *e2 = mk_cn(XC_MODEL_BATCHTOPK, &dc, d, F, B, 2);
    XC_REQUIRE(e && e2, "engines");
    xc_engine_set_theta_models(e, 0.25, 0.75);
    char path[1100], train[1100], why[600];
    XC_REQUIRE(write_pair(e, "decoupled", path, sizeof path, train, sizeof train) == 0, "write");
    int err;
    xc_stf_t *f = xc_stf_open(path, &err, why, sizeof why);
    XC_REQUIRE(f, "open: %s", why);
    const xc_stf_tensor_t *t = xc_stf_find(f, "threshold");
    float th[2] = {0, 0};
    if (t && t->count == 2) memcpy(th, t->data, 8);
    XC_CHECK(t && t->ndim == 1 && t->shape[0] == 2 && th[0] == 0.25f && th[1] == 0.75f, "threshold tensor %g %g", th[0],
             th[1]);
    const xc_stf_tensor_t *cn = xc_stf_find(f, "code_normalization_id");
    int64_t id = 0;
    if (cn) memcpy(&id, cn->data, 8);
    XC_CHECK(id == 5, "code_normalization_id %lld", (long long)id);
    xc_stf_close(&f);
    XC_CHECK(xc_ckpt_load_pair(e2, NULL, 0, path, train, NULL, why, sizeof why) == 0, "resume: %s", why);
    const xc_engine_metrics_t *m = xc_engine_metrics(e2);
    XC_CHECK(m->theta_m[0] == 0.25 && m->theta_m[1] == 0.75, "resumed thetas %g %g", m->theta_m[0], m->theta_m[1]);
    xc_engine_destroy(&e);
    xc_engine_destroy(&e2);
}

int main(void)
{
    char why[256];
    snprintf(g_dir, sizeof g_dir, "/tmp/xc_test_codenorm.%d", (int)getpid());
    if (xc_mkdirs(g_dir, why, sizeof why)) {
        fprintf(stderr, "cannot create %s: %s\n", g_dir, why);
        return 1;
    }
    XC_RUN(test_k_schedule_reference);
    XC_RUN(test_k_annealing_steps);
    XC_RUN(test_codenorm_batchtopk);
    XC_RUN(test_codenorm_l1);
    XC_RUN(test_codenorm_threshold);
    XC_RUN(test_decoupled);
    XC_RUN(test_decoupled_theta_and_inference);
    XC_RUN(test_checkpoint_id);
    XC_RUN(test_checkpoint_decoupled);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (system(cmd)) fprintf(stderr, "# could not remove %s\n", g_dir);
    XC_TEST_EXIT();
}
