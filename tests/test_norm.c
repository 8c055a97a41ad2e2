/* Activation normalisation (engine/xc_norm.h) against truth:
 *  - the streamed Welford statistics equal a direct two-pass float64
 *    computation (what numpy's mean / std(ddof=1) compute) on the same tokens,
 *    for batches of uneven sizes, and the scale is target_rms / sqrt(sum sigma^2 + 1e-8);
 *  - normalise / denormalise are the reference's float32 formulas, both modes;
 *  - a crosscoder trained on activations scaled by 1000 in the base model and
 *    shifted in the chat model reaches the FVE, in original units (computed
 *    directly from denormalised reconstructions), of one trained on the
 *    unscaled activations, in both modes; without normalisation it does not;
 *  - nu in original units, computed from its definition on denormalised
 *    reconstructions and original-unit decoder rows, equals nu in normalised
 *    units times a_chat / a_base;
 *  - the outlier rule: the batch median and the factor. */
#include "xc_config.h"
#include "xc_engine.h"
#include "xc_error.h"
#include "xc_norm.h"
#include "xc_rng.h"
#include "xc_synth.h"
#include "xc_test.h"

enum { D = 32, F = 256, BS = 256 };

static void test_welford_matches_two_pass(void)
{
    xc_rng_t r;
    xc_rng_seed(&r, 5);
    long n = 5000;
    float *x = malloc(sizeof(float) * (size_t)n * 2 * D);
    for (long b = 0; b < n; b++)
        for (int i = 0; i < 2 * D; i++) /* per-dimension offsets and scales, some large */
            x[(size_t)b * 2 * D + i] = (float)(100.0 * (i % 7) + (1.0 + i) * (i < D ? 1000.0 : 0.01) * xc_rng_normal(&r));
    xc_norm_t z;
    XC_REQUIRE(xc_norm_init(&z, D, XC_NORM_GLOBAL, 100.0f) == 0, "init");
    for (long at = 0, sz = 1; at < n; at += sz, sz = sz * 3 % 997 + 1) /* uneven batches */
        xc_norm_add(&z, x + (size_t)at * 2 * D, at + sz <= n ? sz : n - at);
    XC_CHECK(z.count == (uint64_t)n, "count %llu", (unsigned long long)z.count);
    XC_REQUIRE(xc_norm_finish(&z) == 0, "finish");
    double worst_m = 0, worst_s = 0, tv[2] = {0, 0};
    for (int i = 0; i < 2 * D; i++) {
        double m = 0, q = 0;
        for (long b = 0; b < n; b++) m += x[(size_t)b * 2 * D + i];
        m /= n;
        for (long b = 0; b < n; b++) q += (x[(size_t)b * 2 * D + i] - m) * (x[(size_t)b * 2 * D + i] - m);
        double sd = sqrt(q / (n - 1));
        double em = fabs(z.mean[i] - m) / (fabs(m) + sd), es = fabs(z.std[i] - sd) / sd;
        worst_m = em > worst_m ? em : worst_m;
        worst_s = es > worst_s ? es : worst_s;
        tv[i / D] += (double)z.std[i] * z.std[i];
    }
    XC_CHECK(worst_m < 1e-6 && worst_s < 1e-6, "mean rel %.3g, std rel %.3g", worst_m, worst_s);
    for (int m = 0; m < 2; m++) XC_CHECK_CLOSE(z.scale[m], 100.0 / sqrt(tv[m] + 1e-8), 1e-6, 0);
    printf("# Welford vs two-pass float64 over %ld tokens in uneven batches: mean %.2g, std %.2g (relative)\n", n,
           worst_m, worst_s);
    xc_norm_t one;
    xc_norm_init(&one, D, XC_NORM_GLOBAL, 1.0f);
    xc_norm_add(&one, x, 1);
    XC_CHECK(xc_norm_finish(&one) == XC_ESTATE, "one token cannot give a std");
    xc_norm_free(&one);
    xc_norm_free(&z);
    free(x);
}

static void test_formulas(void)
{
    for (int mode = XC_NORM_GLOBAL; mode <= XC_NORM_NEURON; mode++) {
        xc_norm_t z;
        XC_REQUIRE(xc_norm_init(&z, 3, (xc_norm_mode_t)mode, 2.0f) == 0, "init");
        float mean[6] = {1, 2, 3, -1, 0, 5}, sd[6] = {2, 4, 1, 0.5f, 3, 1}, sc[2] = {0.25f, 3.0f};
        if (mode == XC_NORM_NEURON) sc[0] = sc[1] = 1.0f;
        xc_norm_restore(&z, mean, sd, sc);
        float x[6] = {3, -2, 3.5f, 7, 1, -4}, y[6];
        memcpy(y, x, sizeof x);
        xc_norm_apply(&z, y, 1);
        for (int i = 0; i < 6; i++) {
            float want = mode == XC_NORM_GLOBAL ? (x[i] - mean[i]) * sc[i / 3] : (x[i] - mean[i]) / (sd[i] + 1e-8f);
            XC_CHECK(y[i] == want, "mode %d normalise [%d]: %.9g vs %.9g", mode, i, y[i], want);
        }
        xc_norm_unapply(&z, y, 1);
        for (int i = 0; i < 6; i++) XC_CHECK_CLOSE(y[i], x[i], 1e-6, 1e-6);
        float w[6];
        xc_norm_fve_weights(&z, w);
        XC_CHECK_CLOSE(w[4], mode == XC_NORM_GLOBAL ? 1.0 / (3.0 * 3.0) : 9.0, 1e-6, 0);
        double f;
        XC_CHECK(xc_norm_nu_factor(&z, &f) == (mode == XC_NORM_GLOBAL ? 0 : XC_EINVAL), "nu factor rc");
        if (mode == XC_NORM_GLOBAL) XC_CHECK_CLOSE(f, 3.0 / 0.25, 1e-7, 0);
        xc_norm_free(&z);
    }
}

/* x (n, 2, d): the base half scaled by 1000, the chat half shifted */
static void distort(float *x, long n, int d)
{
    for (long b = 0; b < n; b++)
        for (int i = 0; i < 2 * d; i++) {
            float *v = x + (size_t)b * 2 * d + i;
            *v = i < d ? *v * 1000.0f : *v + 40.0f + 0.5f * (float)(i % 5);
        }
}

typedef struct {
    double fve[2];      /* held out, original units, direct */
    double fve_train[2];/* the engine's metrics (weighted), mean of the last steps */
    xc_engine_t *e;
    xc_norm_t z;
    float *held;        /* (n_held, 2, d) original units */
} run_t;

enum { N_HELD = 4096, N_PASS = 8192, STEPS = 700 };

static void run(run_t *R, int distorted, xc_norm_mode_t mode)
{
    xc_synth_config_t sc;
    xc_synth_config_default(&sc, D);
    sc.seed = 11;
    xc_synth_t *syn = xc_synth_new(&sc, NULL);
    xc_engine_config_t c;
    xc_cfg_engine_defaults(&c, XC_MODEL_BATCHTOPK);
    c.d = D, c.dict_size = F, c.batch_size = BS, c.k = 4, c.lr = 2e-3f, c.warmup_steps = 50;
    c.threshold_start_step = 100, c.threads = 1, c.seed = 3, c.encoder_precision = XC_PREC_FP32;
    c.dead_tokens = 200000;
    R->e = xc_engine_new(&c, NULL);
    xc_norm_init(&R->z, D, mode, 100.0f);
    float *x = malloc(sizeof(float) * BS * 2 * D);
    R->held = malloc(sizeof(float) * N_HELD * 2 * D);
    for (long t = 0; t < N_PASS && mode != XC_NORM_OFF; t += BS) { /* the pass over the first tokens */
        xc_synth_generate(syn, BS, x, NULL);
        if (distorted) distort(x, BS, D);
        xc_norm_add(&R->z, x, BS);
    }
    if (mode != XC_NORM_OFF) {
        xc_norm_finish(&R->z);
        float w[2 * D];
        xc_norm_fve_weights(&R->z, w);
        xc_engine_set_fve_weights(R->e, w);
    }
    R->fve_train[0] = R->fve_train[1] = 0;
    for (int s = 0; s < STEPS; s++) {
        xc_synth_generate(syn, BS, x, NULL);
        if (distorted) distort(x, BS, D);
        xc_norm_apply(&R->z, x, BS);
        xc_engine_train_step(R->e, x, BS);
        if (s >= STEPS - 100)
            for (int m = 0; m < 2; m++) R->fve_train[m] += xc_engine_metrics(R->e)->fve[m] / 100;
    }
    xc_synth_generate(syn, N_HELD, R->held, NULL);
    if (distorted) distort(R->held, N_HELD, D);
    /* held-out FVE in original units: denormalise(decode(encode(normalise(x)))) against x */
    float *xn = malloc(sizeof(float) * N_HELD * 2 * D), *f = malloc(sizeof(float) * N_HELD * F);
    memcpy(xn, R->held, sizeof(float) * N_HELD * 2 * D);
    xc_norm_apply(&R->z, xn, N_HELD);
    xc_engine_encode(R->e, xn, N_HELD, f);
    xc_engine_decode(R->e, f, N_HELD, xn);
    xc_norm_unapply(&R->z, xn, N_HELD);
    for (int m = 0; m < 2; m++) {
        double ve = 0, vx = 0;
        for (int i = m * D; i < (m + 1) * D; i++) {
            double sx = 0, sx2 = 0, se = 0, se2 = 0;
            for (long b = 0; b < N_HELD; b++) {
                double xv = R->held[(size_t)b * 2 * D + i], ev = xv - xn[(size_t)b * 2 * D + i];
                sx += xv, sx2 += xv * xv, se += ev, se2 += ev * ev;
            }
            vx += sx2 / N_HELD - (sx / N_HELD) * (sx / N_HELD);
            ve += se2 / N_HELD - (se / N_HELD) * (se / N_HELD);
        }
        R->fve[m] = 1 - ve / vx;
    }
    free(xn);
    free(f);
    free(x);
    xc_synth_destroy(&syn);
}

static void run_free(run_t *R)
{
    xc_engine_destroy(&R->e);
    xc_norm_free(&R->z);
    free(R->held);
}

static void test_scaled_shifted_same_fve(void)
{
    const char *names[] = {"off", "global", "neuron"};
    for (int mode = XC_NORM_GLOBAL; mode <= XC_NORM_NEURON; mode++) {
        run_t a, b;
        run(&a, 0, (xc_norm_mode_t)mode);
        run(&b, 1, (xc_norm_mode_t)mode);
        printf("# normalize = %s: FVE original units (held out) unscaled %.4f / %.4f, base x1000 + chat shifted "
               "%.4f / %.4f; training metrics %.4f / %.4f vs %.4f / %.4f\n",
               names[mode], a.fve[0], a.fve[1], b.fve[0], b.fve[1], a.fve_train[0], a.fve_train[1], b.fve_train[0],
               b.fve_train[1]);
        for (int m = 0; m < 2; m++) {
            XC_CHECK(a.fve[m] > 0.5, "mode %s model %d: the unscaled run learnt nothing (FVE %.3f)", names[mode], m,
                     a.fve[m]);
            XC_CHECK(fabs(a.fve[m] - b.fve[m]) < 0.01, "mode %s model %d: FVE %.4f unscaled vs %.4f distorted",
                     names[mode], m, a.fve[m], b.fve[m]);
            XC_CHECK(fabs(a.fve_train[m] - b.fve_train[m]) < 0.01, "mode %s model %d: training FVE %.4f vs %.4f",
                     names[mode], m, a.fve_train[m], b.fve_train[m]);
        }
        run_free(&a);
        run_free(&b);
    }
    /* the same distortion without normalisation: the scaled model swamps the other */
    run_t a, c;
    run(&a, 0, XC_NORM_OFF);
    run(&c, 1, XC_NORM_OFF);
    printf("# normalize = off: FVE unscaled %.4f / %.4f, distorted %.4f / %.4f\n", a.fve[0], a.fve[1], c.fve[0],
           c.fve[1]);
    XC_CHECK(fabs(a.fve[1] - c.fve[1]) > 0.05 || fabs(a.fve[0] - c.fve[0]) > 0.05,
             "without normalisation the distortion should change FVE (the check above would be vacuous)");
    run_free(&a);
    run_free(&c);
}

/* nu in original units from the definition vs nu normalised x a_chat / a_base */
static void test_nu_identity(void)
{
    run_t R;
    run(&R, 1, XC_NORM_GLOBAL);
    xc_engine_t *e = R.e;
    float *xn = malloc(sizeof(float) * N_HELD * 2 * D), *f = malloc(sizeof(float) * N_HELD * F);
    float *xh = malloc(sizeof(float) * N_HELD * 2 * D);
    memcpy(xn, R.held, sizeof(float) * N_HELD * 2 * D);
    xc_norm_apply(&R.z, xn, N_HELD);
    xc_scaling_t *s = xc_scaling_new(e, NULL);
    xc_scaling_add(s, xn, N_HELD);
    xc_scaling_stats_t *res = calloc(F, sizeof *res);
    xc_scaling_result(s, res);
    xc_engine_encode(e, xn, N_HELD, f);
    xc_engine_decode(e, f, N_HELD, xh);
    xc_norm_unapply(&R.z, xh, N_HELD); /* original units */
    xc_engine_params_t p;
    xc_engine_params(e, &p);
    double fac, a[2] = {R.z.scale[0], R.z.scale[1]};
    XC_REQUIRE(xc_norm_nu_factor(&R.z, &fac) == 0, "factor");
    int checked = 0, bad = 0;
    double worst = 0;
    for (int j = 0; j < F; j++) {
        const float *row = p.w_dec + (size_t)j * 2 * D; /* normalised units: (d^base, d^chat) */
        double num_e[2] = {0, 0}, num_r[2] = {0, 0}, den = 0, vo[D], dm[2][D];
        for (int i = 0; i < D; i++) {
            vo[i] = row[D + i] / a[1]; /* chat row in original units */
            for (int m = 0; m < 2; m++) dm[m][i] = row[m * D + i] / a[m];
        }
        double vv = 0;
        for (int i = 0; i < D; i++) vv += vo[i] * vo[i];
        long act = 0;
        for (long b = 0; b < N_HELD; b++) {
            double fj = f[(size_t)b * F + j];
            if (fj == 0) continue;
            act++;
            for (int m = 0; m < 2; m++) {
                double ye = 0, yr = 0;
                for (int i = 0; i < D; i++) {
                    size_t k = (size_t)b * 2 * D + (size_t)m * D + i;
                    double xo = R.held[k], xho = xh[k];
                    ye += vo[i] * (xo - xho + fj * dm[m][i]);
                    yr += vo[i] * (xho - R.z.mean[m * D + i]); /* the reconstruction less the normaliser's mean */
                }
                num_e[m] += fj * ye;
                num_r[m] += fj * yr;
            }
            den += fj * fj * vv;
        }
        if (act < 20 || !(den > 0) || isnan(res[j].nu_err)) continue;
        double nu_e = num_e[0] / num_e[1], nu_r = num_r[0] / num_r[1];
        double ge = res[j].nu_err * fac, gr = res[j].nu_rec * fac;
        double de = fabs(ge - nu_e) / (fabs(nu_e) + 1e-2), dr = fabs(gr - nu_r) / (fabs(nu_r) + 1e-2);
        worst = de > worst ? de : worst;
        worst = dr > worst ? dr : worst;
        bad += de > 1e-3 || dr > 1e-3;
        checked++;
    }
    printf("# nu identity: %d latents, a_base %.4g, a_chat %.4g, factor %.4g, worst relative difference %.2g\n",
           checked, a[0], a[1], fac, worst);
    XC_CHECK(checked > 20, "only %d latents checked", checked);
    XC_CHECK(bad == 0, "%d latents: nu_orig != nu_norm * a_chat / a_base (worst %.3g)", bad, worst);
    XC_CHECK(fabs(fac - 1) > 10, "the factor %.3g should be far from 1 with base x1000", fac);
    free(res);
    xc_scaling_destroy(&s);
    free(xn);
    free(f);
    free(xh);
    run_free(&R);
}

static void test_outliers(void)
{
    enum { N = 40, d = 4 };
    float x[N * 2 * d], scratch[N];
    unsigned char keep[N];
    for (int b = 0; b < N; b++)
        for (int i = 0; i < 2 * d; i++) x[b * 2 * d + i] = 1.0f + 0.01f * b; /* norms ~ 2 */
    for (int i = 0; i < d; i++) x[0 * 2 * d + i] = 50.0f;  /* token 0: base norm 100 */
    for (int i = d; i < 2 * d; i++) x[7 * 2 * d + i] = 9.0f; /* token 7: chat norm 18 */
    double med[2] = {0, 0};
    long n = xc_norm_outliers(x, N, d, 10.0, med, scratch, keep);
    XC_CHECK(n == 1 && !keep[0] && keep[7], "factor 10: dropped %ld (keep0 %d keep7 %d)", n, keep[0], keep[7]);
    XC_CHECK_CLOSE(med[0], 2.0 * (1.0f + 0.01f * 21), 1e-6, 0);
    n = xc_norm_outliers(x, N, d, 5.0, med, scratch, keep);
    XC_CHECK(n == 2 && !keep[0] && !keep[7], "factor 5: dropped %ld", n);
    n = xc_norm_outliers(x, 3, d, 5.0, med, scratch, keep); /* small batch: the last medians */
    XC_CHECK(n == 1 && !keep[0], "small batch: dropped %ld", n);
    n = xc_norm_outliers(x, N, d, 0.0, med, scratch, keep);
    XC_CHECK(n == 0, "factor 0 is off");
}

int main(void)
{
    XC_RUN(test_welford_matches_two_pass);
    XC_RUN(test_formulas);
    XC_RUN(test_outliers);
    XC_RUN(test_nu_identity);
    XC_RUN(test_scaled_shifted_same_fve);
    XC_TEST_EXIT();
}
