/* Engine maths against independent computations: finite-difference gradients in
 * double precision (BatchTopK with AuxK, L1; l2 and mse losses), the BatchTopK
 * selection against a brute-force sort with ties, theta, Adam with clipping, the
 * geometric median, FVE, batch rejection, determinism. */
#include "xc_config.h"
#include "xc_engine.h"
#include "xc_error.h"
#include "xc_rng.h"
#include "xc_test.h"

#include <float.h>
#include <stdint.h>

/* ------------------------------------------------------------------ helpers */

static void rand_batch(float *x, long n, xc_rng_t *r, double scale)
{
    for (long i = 0; i < n; i++) x[i] = (float)(scale * xc_rng_normal(r));
}

static xc_engine_t *mk(xc_model_kind_t model, int d, int F, int B, int k, xc_loss_kind_t loss, int threads)
{
    xc_engine_config_t c;
    xc_cfg_engine_defaults(&c, model);
    c.d = d;
    c.dict_size = F;
    c.batch_size = B;
    c.k = k;
    c.loss = loss;
    c.threads = threads;
    c.seed = 7;
    c.warmup_steps = 0;
    /* the fp32 product: these tests compare with sgemm-based references (inference
     * encode, finite differences); tests/test_score.c covers bf16 and int8 */
    c.encoder_precision = XC_PREC_FP32;
    int err;
    xc_engine_t *e = xc_engine_new(&c, &err);
    return e;
}

typedef struct {
    int d, F, B, d2;
    int model, loss;
    double aux_coef, l1_coef;
    const float *x;
    const unsigned char *mask; /* (B, F) fixed BatchTopK selection */
    const int *auxsel;         /* (B, kaux) fixed AuxK selection, -1 = none */
    int kaux;
    const double *e0;          /* (B, 2d) detached residual for AuxK */
    double den0;
} ref_t;

/* Training loss in double for parameters p = [w_enc (F,2d) | b_enc (F) | w_dec (F,2d) | b_dec (2d)]. */
static double ref_loss(const ref_t *R, const double *p, double *resid_out)
{
    int d = R->d, F = R->F, B = R->B, d2 = R->d2;
    const double *we = p, *be = p + (size_t)F * d2, *wd = be + F, *bd = wd + (size_t)F * d2;
    double *u = malloc(sizeof(double) * (size_t)F), *s = malloc(sizeof(double) * (size_t)F);
    double *xh = malloc(sizeof(double) * (size_t)d2);
    double loss = 0, l1 = 0, auxnum = 0;
    for (int j = 0; j < F; j++) {
        double nb = 0, nc = 0;
        for (int i = 0; i < d; i++) {
            nb += wd[(size_t)j * d2 + i] * wd[(size_t)j * d2 + i];
            nc += wd[(size_t)j * d2 + d + i] * wd[(size_t)j * d2 + d + i];
        }
        s[j] = sqrt(nb) + sqrt(nc);
    }
    for (int b = 0; b < B; b++) {
        const float *xb = R->x + (size_t)b * d2;
        for (int j = 0; j < F; j++) {
            double a = be[j];
            for (int i = 0; i < d2; i++) a += xb[i] * we[(size_t)j * d2 + i];
            u[j] = a > 0 ? a : 0;
        }
        for (int i = 0; i < d2; i++) xh[i] = bd[i];
        for (int j = 0; j < F; j++) {
            double f = R->model == XC_MODEL_L1 ? u[j] : (R->mask[(size_t)b * F + j] ? u[j] : 0);
            if (f != 0)
                for (int i = 0; i < d2; i++) xh[i] += f * wd[(size_t)j * d2 + i];
            if (R->model == XC_MODEL_L1) l1 += u[j] * s[j] / B;
        }
        for (int m = 0; m < 2; m++) {
            double sq = 0;
            for (int i = m * d; i < (m + 1) * d; i++) {
                double ee = xb[i] - xh[i];
                sq += ee * ee;
                if (resid_out) resid_out[(size_t)b * d2 + i] = ee;
            }
            loss += (R->loss == XC_LOSS_MSE ? sq : sqrt(sq)) / (2.0 * B);
        }
        if (R->auxsel && R->kaux > 0) {
            double eh[256] = {0};
            for (int q = 0; q < R->kaux; q++) {
                int j = R->auxsel[b * R->kaux + q];
                if (j < 0) continue;
                for (int i = 0; i < d2; i++) eh[i] += u[j] * wd[(size_t)j * d2 + i];
            }
            for (int i = 0; i < d2; i++) {
                double t = R->e0[(size_t)b * d2 + i] - eh[i];
                auxnum += t * t;
            }
        }
    }
    if (R->model == XC_MODEL_L1) loss += R->l1_coef * l1;
    if (R->auxsel && R->kaux > 0) loss += R->aux_coef * (auxnum / B) / R->den0;
    free(u);
    free(s);
    free(xh);
    return loss;
}

static double *pack_params(xc_engine_t *e, int F, int d2)
{
    xc_engine_params_t p;
    xc_engine_params(e, &p);
    size_t n = (size_t)F * d2 * 2 + F + d2, at = 0;
    double *v = malloc(sizeof(double) * n);
    for (size_t i = 0; i < (size_t)F * d2; i++) v[at++] = p.w_enc[i];
    for (int i = 0; i < F; i++) v[at++] = p.b_enc[i];
    for (size_t i = 0; i < (size_t)F * d2; i++) v[at++] = p.w_dec[i];
    for (int i = 0; i < d2; i++) v[at++] = p.b_dec[i];
    return v;
}

/* Runs the FD check of every parameter; returns the worst scaled error. */
static double grad_check(xc_model_kind_t model, xc_loss_kind_t loss, int with_aux, double *aux_seen)
{
    int d = 6, F = 24, B = 10, k = 2, d2 = 2 * d; /* k*B < F: some latents stay dead */
    xc_engine_t *e = mk(model, d, F, B, k, loss, 2);
    xc_rng_t r;
    xc_rng_seed(&r, 99);
    float *x = malloc(sizeof(float) * (size_t)B * d2);
    rand_batch(x, (long)B * d2, &r, 1.0);
    xc_engine_params_t pp;
    xc_engine_params(e, &pp);
    /* non-trivial biases and decoder (not equal to the encoder transpose) */
    for (int i = 0; i < F * d2; i++) pp.w_dec[i] += (float)(0.3 * xc_rng_normal(&r));
    for (int i = 0; i < F; i++) pp.b_enc[i] = (float)(0.1 * xc_rng_normal(&r));
    for (int i = 0; i < d2; i++) pp.b_dec[i] = (float)(0.2 * xc_rng_normal(&r));
    if (model == XC_MODEL_L1)
        for (int i = 0; i < F * d2; i++) pp.w_enc[i] *= 100.0f; /* init_norm 0.005 is tiny */
    xc_engine_params_changed(e);
    if (with_aux) {
        /* dead after this batch unless they fire: counters + B >= dead_tokens */
        uint64_t *c = xc_engine_dead_counters(e);
        for (int j = 0; j < F; j++) c[j] = 20000000ULL;
    }

    size_t np = (size_t)F * d2 * 2 + F + d2;
    xc_engine_params_t g = {malloc(4 * (size_t)F * d2), malloc(4 * (size_t)F), malloc(4 * (size_t)F * d2), malloc(4 * (size_t)d2)};
    xc_engine_metrics_t m;
    int rc = xc_engine_compute_grads(e, x, B, &g, &m);
    *aux_seen = m.aux;
    double worst = 1e9;
    if (rc) goto out;

    double *p = pack_params(e, F, d2);
    unsigned char *mask = calloc((size_t)B * F, 1);
    int kaux = d / 2;
    int *auxsel = malloc(sizeof(int) * (size_t)B * kaux);
    double *e0 = malloc(sizeof(double) * (size_t)B * d2);
    ref_t R = {d, F, B, d2, model, loss, 1.0 / 32, 0.041, x, mask, NULL, 0, e0, 0};
    if (model == XC_MODEL_BATCHTOPK) {
        const long *rp;
        const int *col;
        xc_engine_selection(e, &rp, &col, NULL);
        for (int b = 0; b < B; b++)
            for (long q = rp[b]; q < rp[b + 1]; q++) mask[(size_t)b * F + col[q]] = 1;
    }
    ref_loss(&R, p, e0);
    if (with_aux) {
        /* dead = latents not selected anywhere in the batch; per token the kaux
         * dead ones with the largest u s (u > 0) */
        int dead[64], nd = 0;
        for (int j = 0; j < F; j++) {
            int fired = 0;
            for (int b = 0; b < B; b++) fired |= mask[(size_t)b * F + j];
            if (!fired) dead[nd++] = j;
        }
        int ka = nd < kaux ? nd : kaux;
        R.kaux = ka;
        R.auxsel = auxsel;
        const double *we = p, *be = p + (size_t)F * d2, *wd = be + F;
        for (int b = 0; b < B; b++) {
            double sc[64];
            for (int q = 0; q < nd; q++) {
                int j = dead[q];
                double a = be[j], nb = 0, nc = 0;
                for (int i = 0; i < d2; i++) a += x[(size_t)b * d2 + i] * we[(size_t)j * d2 + i];
                for (int i = 0; i < d; i++) {
                    nb += wd[(size_t)j * d2 + i] * wd[(size_t)j * d2 + i];
                    nc += wd[(size_t)j * d2 + d + i] * wd[(size_t)j * d2 + d + i];
                }
                sc[q] = a > 0 ? a * (sqrt(nb) + sqrt(nc)) : -1;
            }
            for (int q = 0; q < ka; q++) {
                int best = -1;
                for (int z = 0; z < nd; z++)
                    if (sc[z] > 0 && (best < 0 || sc[z] > sc[best])) best = z;
                auxsel[b * ka + q] = best < 0 ? -1 : dead[best];
                if (best >= 0) sc[best] = -1;
            }
        }
        double mean[256] = {0}, den = 0;
        for (int b = 0; b < B; b++)
            for (int i = 0; i < d2; i++) mean[i] += e0[(size_t)b * d2 + i] / B;
        for (int b = 0; b < B; b++)
            for (int i = 0; i < d2; i++) den += pow(e0[(size_t)b * d2 + i] - mean[i], 2) / B;
        R.den0 = den;
    }
    /* analytic gradient, packed the same way */
    double *ga = malloc(sizeof(double) * np), gmax = 0;
    size_t at = 0;
    for (size_t i = 0; i < (size_t)F * d2; i++) ga[at++] = g.w_enc[i];
    for (int i = 0; i < F; i++) ga[at++] = g.b_enc[i];
    for (size_t i = 0; i < (size_t)F * d2; i++) ga[at++] = g.w_dec[i];
    for (int i = 0; i < d2; i++) ga[at++] = g.b_dec[i];
    for (size_t i = 0; i < np; i++) gmax = fmax(gmax, fabs(ga[i]));
    worst = 0;
    double h = 1e-6;
    for (size_t i = 0; i < np; i++) {
        double keep = p[i];
        p[i] = keep + h;
        double lp = ref_loss(&R, p, NULL);
        p[i] = keep - h;
        double lm = ref_loss(&R, p, NULL);
        p[i] = keep;
        double fd = (lp - lm) / (2 * h);
        double err = fabs(fd - ga[i]) / (1e-3 * gmax + 1e-3 * fabs(fd));
        if (err > worst) worst = err;
    }
    free(ga);
    free(p);
    free(mask);
    free(auxsel);
    free(e0);
out:
    free(g.w_enc);
    free(g.b_enc);
    free(g.w_dec);
    free(g.b_dec);
    free(x);
    xc_engine_destroy(&e);
    return worst; /* <= 1 means within 1e-3 of the gradient scale */
}

/* ------------------------------------------------------------------ cases */

static void test_grad_batchtopk_l2(void)
{
    double aux;
    double w = grad_check(XC_MODEL_BATCHTOPK, XC_LOSS_L2, 0, &aux);
    XC_CHECK(w <= 1.0, "worst scaled FD error %.3g", w);
    XC_CHECK(aux == 0, "no dead latents expected, aux = %g", aux);
}

static void test_grad_batchtopk_mse(void)
{
    double aux;
    double w = grad_check(XC_MODEL_BATCHTOPK, XC_LOSS_MSE, 0, &aux);
    XC_CHECK(w <= 1.0, "worst scaled FD error %.3g", w);
}

static void test_grad_batchtopk_auxk(void)
{
    double aux;
    double w = grad_check(XC_MODEL_BATCHTOPK, XC_LOSS_L2, 1, &aux);
    XC_CHECK(aux > 0, "AuxK should be active (aux = %g)", aux);
    XC_CHECK(w <= 1.0, "worst scaled FD error %.3g", w);
    w = grad_check(XC_MODEL_BATCHTOPK, XC_LOSS_MSE, 1, &aux);
    XC_CHECK(w <= 1.0, "mse+AuxK worst scaled FD error %.3g", w);
}

static void test_grad_l1(void)
{
    double aux;
    double w = grad_check(XC_MODEL_L1, XC_LOSS_L2, 0, &aux);
    XC_CHECK(w <= 1.0, "l2: worst scaled FD error %.3g", w);
    w = grad_check(XC_MODEL_L1, XC_LOSS_MSE, 0, &aux);
    XC_CHECK(w <= 1.0, "mse: worst scaled FD error %.3g", w);
}

/* Brute force: sort all (r, b, j) by r desc then flat index asc; take k*B positives. */
static void check_selection(xc_engine_t *e, const float *x, int d, int F, int B, int k, int *bad)
{
    int d2 = 2 * d;
    xc_engine_params_t p;
    xc_engine_params(e, &p);
    long n = (long)B * F;
    double *sc = malloc(sizeof(double) * (size_t)n);
    float *s = malloc(sizeof(float) * (size_t)F);
    for (int j = 0; j < F; j++) {
        float nb = 0, nc = 0;
        for (int i = 0; i < d; i++) {
            nb += p.w_dec[(size_t)j * d2 + i] * p.w_dec[(size_t)j * d2 + i];
            nc += p.w_dec[(size_t)j * d2 + d + i] * p.w_dec[(size_t)j * d2 + d + i];
        }
        s[j] = sqrtf(nb) + sqrtf(nc);
    }
    /* the engine's u (float) is needed for exact ties: take it from encode with theta unset */
    float *u = malloc(sizeof(float) * (size_t)n);
    xc_engine_set_theta(e, -1.0);
    xc_engine_encode(e, x, B, u);
    for (long i = 0; i < n; i++) sc[i] = u[i] * s[i % F];
    /* selection sort of the top K by (score desc, index asc) */
    long K = (long)k * B;
    unsigned char *want = calloc((size_t)n, 1);
    for (long q = 0; q < K; q++) {
        long best = -1;
        for (long i = 0; i < n; i++)
            if (!want[i] && sc[i] > 0 && (best < 0 || sc[i] > sc[best])) best = i;
        if (best < 0) break;
        want[best] = 1;
    }
    xc_engine_params_t g = {malloc(4 * (size_t)F * d2), malloc(4 * (size_t)F), malloc(4 * (size_t)F * d2), malloc(4 * (size_t)d2)};
    xc_engine_compute_grads(e, x, B, &g, NULL);
    const long *rp;
    const int *col;
    const float *val;
    long nnz = xc_engine_selection(e, &rp, &col, &val);
    unsigned char *got = calloc((size_t)n, 1);
    for (int b = 0; b < B; b++)
        for (long q = rp[b]; q < rp[b + 1]; q++) {
            got[(size_t)b * F + col[q]] = 1;
            if (val[q] != u[(size_t)b * F + col[q]]) (*bad)++;
        }
    long nwant = 0;
    for (long i = 0; i < n; i++) {
        nwant += want[i];
        if (want[i] != got[i]) (*bad)++;
    }
    if (nwant != nnz) (*bad)++;
    free(g.w_enc);
    free(g.b_enc);
    free(g.w_dec);
    free(g.b_dec);
    free(sc);
    free(s);
    free(u);
    free(want);
    free(got);
}

static void test_topk_bruteforce(void)
{
    int d = 8, F = 40, B = 16, k = 5;
    xc_engine_t *e = mk(XC_MODEL_BATCHTOPK, d, F, B, k, XC_LOSS_L2, 2);
    XC_REQUIRE(e, "engine");
    xc_rng_t r;
    xc_rng_seed(&r, 3);
    float *x = malloc(sizeof(float) * (size_t)B * 2 * d);
    rand_batch(x, (long)B * 2 * d, &r, 1.0);
    int bad = 0;
    check_selection(e, x, d, F, B, k, &bad);
    XC_CHECK(bad == 0, "random scores: %d mismatches against brute force", bad);

    /* ties: copy latent 0's encoder and decoder into latents 1..9, and duplicate tokens */
    xc_engine_params_t p;
    xc_engine_params(e, &p);
    for (int j = 1; j < 10; j++) {
        memcpy(p.w_enc + (size_t)j * 2 * d, p.w_enc, sizeof(float) * 2 * d);
        memcpy(p.w_dec + (size_t)j * 2 * d, p.w_dec, sizeof(float) * 2 * d);
        p.b_enc[j] = p.b_enc[0];
    }
    for (int b = 8; b < B; b++) memcpy(x + (size_t)b * 2 * d, x, sizeof(float) * 2 * d);
    /* make latent 0 strong on token 0 so the tie group straddles the boundary */
    xc_engine_params_changed(e);
    bad = 0;
    check_selection(e, x, d, F, B, k, &bad);
    XC_CHECK(bad == 0, "tied scores: %d mismatches against brute force", bad);
    /* k*B larger than the positives: every positive entry is taken */
    free(x);
    xc_engine_destroy(&e);
}

static void test_topk_large_threads(void)
{
    /* bigger shapes exercise the histogram and the multi-thread candidate merge */
    int d = 16, F = 300, B = 64, k = 7;
    for (int th = 1; th <= 3; th++) {
        xc_engine_t *e = mk(XC_MODEL_BATCHTOPK, d, F, B, k, XC_LOSS_L2, th);
        XC_REQUIRE(e, "engine");
        xc_rng_t r;
        xc_rng_seed(&r, 11 + th);
        float *x = malloc(sizeof(float) * (size_t)B * 2 * d);
        rand_batch(x, (long)B * 2 * d, &r, 1.0);
        int bad = 0;
        check_selection(e, x, d, F, B, k, &bad);
        XC_CHECK(bad == 0, "threads=%d: %d mismatches", th, bad);
        free(x);
        xc_engine_destroy(&e);
    }
}

/* The prefilter adapts to the last step's cut-off; a batch on another scale must
 * fall back to the full path and still select exactly. */
static void test_topk_scale_shift(void)
{
    int d = 16, F = 300, B = 64, k = 7;
    xc_engine_t *e = mk(XC_MODEL_BATCHTOPK, d, F, B, k, XC_LOSS_L2, 2);
    XC_REQUIRE(e, "engine");
    xc_rng_t r;
    xc_rng_seed(&r, 19);
    float *x = malloc(sizeof(float) * (size_t)B * 2 * d), *y = malloc(sizeof(float) * (size_t)B * 2 * d);
    for (int s = 0; s < 3; s++) {
        rand_batch(x, (long)B * 2 * d, &r, 1.0);
        XC_REQUIRE(xc_engine_train_step(e, x, B) == 0, "step");
    }
    long full0 = xc_engine_metrics(e)->full_selects;
    static const float scales[] = {1.0f, 100.0f, 0.01f, 1.0f, 1.0f};
    int bad = 0;
    for (int i = 0; i < 5; i++) {
        rand_batch(x, (long)B * 2 * d, &r, 1.0);
        for (int q = 0; q < B * 2 * d; q++) y[q] = x[q] * scales[i];
        check_selection(e, y, d, F, B, k, &bad);
        XC_CHECK(bad == 0, "scale %g: %d mismatches", scales[i], bad);
    }
    long full1 = xc_engine_metrics(e)->full_selects;
    XC_CHECK(full1 - full0 >= 2, "the scale shifts should have used the full path (%ld times)", full1 - full0);
    free(x);
    free(y);
    xc_engine_destroy(&e);
}

static void test_theta_update(void)
{
    int d = 8, F = 32, B = 16, k = 3, d2 = 16;
    xc_engine_config_t c;
    xc_cfg_engine_defaults(&c, XC_MODEL_BATCHTOPK);
    c.d = d, c.dict_size = F, c.batch_size = B, c.k = k, c.threads = 2, c.warmup_steps = 0;
    c.threshold_start_step = 2;
    c.threshold_beta = 0.9f;
    c.lr = 1e-3f;
    xc_engine_t *e = xc_engine_new(&c, NULL);
    XC_REQUIRE(e, "engine");
    xc_rng_t r;
    xc_rng_seed(&r, 5);
    float *x = malloc(sizeof(float) * (size_t)B * d2), s[32];
    double theta = -1;
    for (int step = 0; step < 8; step++) {
        rand_batch(x, (long)B * d2, &r, 1.0);
        xc_engine_params_t p;
        xc_engine_params(e, &p);
        for (int j = 0; j < F; j++) {
            double nb = 0, nc = 0;
            for (int i = 0; i < d; i++) {
                nb += (double)p.w_dec[j * d2 + i] * p.w_dec[j * d2 + i];
                nc += (double)p.w_dec[j * d2 + d + i] * p.w_dec[j * d2 + d + i];
            }
            s[j] = (float)(sqrt(nb) + sqrt(nc));
        }
        XC_REQUIRE(xc_engine_train_step(e, x, B) == 0, "step");
        const long *rp;
        const int *col;
        const float *val;
        long nnz = xc_engine_selection(e, &rp, &col, &val);
        double mn = INFINITY;
        for (long q = 0; q < nnz; q++) mn = fmin(mn, (double)val[q] * s[col[q]]);
        if (step > 2) theta = theta < 0 ? mn : 0.9 * theta + 0.1 * mn;
        XC_CHECK_CLOSE(xc_engine_metrics(e)->theta, theta, 1e-4, 1e-7);
    }
    free(x);
    xc_engine_destroy(&e);
}

/* One step compared with Adam computed here from the engine's gradient. */
static void adam_case(xc_model_kind_t model, float clip, int prewarm)
{
    int d = 6, F = 16, B = 12, k = 2, d2 = 12;
    xc_engine_config_t c;
    xc_cfg_engine_defaults(&c, model);
    c.d = d, c.dict_size = F, c.batch_size = B, c.k = k, c.threads = 2;
    c.warmup_steps = 4;
    c.lr = 1e-2f;
    c.clip_norm = clip;
    xc_engine_t *e = xc_engine_new(&c, NULL);
    XC_REQUIRE(e, "engine");
    xc_rng_t r;
    xc_rng_seed(&r, 21);
    float *x = malloc(sizeof(float) * (size_t)B * d2);
    for (int i = 0; i < prewarm; i++) {
        rand_batch(x, (long)B * d2, &r, 1.0);
        XC_REQUIRE(xc_engine_train_step(e, x, B) == 0, "prewarm step");
    }
    rand_batch(x, (long)B * d2, &r, 1.0);
    size_t np = (size_t)F * d2 * 2 + F + d2;
    float *p0 = malloc(4 * np), *m0 = malloc(4 * np), *v0 = malloc(4 * np), *gg = malloc(4 * np);
    xc_engine_params_t P, M, V, G = {gg, gg + (size_t)F * d2, gg + (size_t)F * d2 + F, gg + (size_t)F * d2 * 2 + F};
    long t;
    xc_engine_params(e, &P);
    xc_engine_adam_state(e, &M, &V, &t);
    /* pack in one order: w_enc, b_enc, w_dec, b_dec */
#define PACK(dst, S)                                                                      \
    do {                                                                                  \
        memcpy(dst, S.w_enc, 4 * (size_t)F * d2);                                         \
        memcpy(dst + (size_t)F * d2, S.b_enc, 4 * (size_t)F);                             \
        memcpy(dst + (size_t)F * d2 + F, S.w_dec, 4 * (size_t)F * d2);                    \
        memcpy(dst + (size_t)F * d2 * 2 + F, S.b_dec, 4 * (size_t)d2);                    \
    } while (0)
    PACK(p0, P);
    PACK(m0, M);
    PACK(v0, V);
    xc_engine_metrics_t met;
    XC_REQUIRE(xc_engine_compute_grads(e, x, B, &G, &met) == 0, "grads");
    XC_REQUIRE(xc_engine_train_step(e, x, B) == 0, "step");
    double gn = 0;
    for (size_t i = 0; i < np; i++) gn += (double)gg[i] * gg[i];
    gn = sqrt(gn);
    XC_CHECK_CLOSE(xc_engine_metrics(e)->grad_norm, gn, 1e-4, 1e-9);
    double sc = (clip > 0 && gn > clip) ? clip / (gn + 1e-6) : 1.0;
    double lr = t < 4 ? 1e-2 * t / 4.0 : 1e-2;
    double bc1 = 1 - pow(0.9, t + 1), bc2 = 1 - pow(0.999, t + 1);
    float *p1 = malloc(4 * np);
    PACK(p1, P);
    double worst = 0;
    int moved = 0;
    for (size_t i = 0; i < np; i++) {
        double g = gg[i] * sc;
        double m = 0.9 * m0[i] + 0.1 * g, v = 0.999 * v0[i] + 0.001 * g * g;
        double want = p0[i] - lr / bc1 * m / (sqrt(v) / sqrt(bc2) + 1e-8);
        double err = fabs(want - p1[i]) / (1e-6 + 1e-4 * fabs(want));
        worst = fmax(worst, err);
        moved += p1[i] != p0[i];
    }
    XC_CHECK(worst <= 1.0, "Adam mismatch, worst scaled error %.3g (t=%ld clip=%g)", worst, t, clip);
    if (t > 0) XC_CHECK(moved > 0, "parameters did not move");
    if (clip > 0) XC_CHECK(gn > clip, "test should exercise clipping (norm %g)", gn);
#undef PACK
    free(p0);
    free(m0);
    free(v0);
    free(gg);
    free(p1);
    free(x);
    xc_engine_destroy(&e);
}

static void test_adam(void)
{
    adam_case(XC_MODEL_L1, 0.0f, 0);      /* t=0: lr 0 at the first warm-up step */
    adam_case(XC_MODEL_L1, 0.0f, 3);      /* warm-up */
    adam_case(XC_MODEL_L1, 0.0f, 6);      /* constant lr, moments carried */
    adam_case(XC_MODEL_BATCHTOPK, 1e-3f, 5); /* clipping active */
}

static double sumdist(const float *pts, int n, int dim, const double *y)
{
    double s = 0;
    for (int b = 0; b < n; b++) {
        double dd = 0;
        for (int i = 0; i < dim; i++) dd += pow(pts[b * dim + i] - y[i], 2);
        s += sqrt(dd);
    }
    return s;
}

static void test_geometric_median(void)
{
    /* collinear points: the median is the middle point */
    float line[5 * 2] = {0, 0, 1, 0, 2, 0, 10, 0, 50, 0};
    float out[2];
    xc_geometric_median(line, 5, 2, 2, 1000, 1e-9, out);
    XC_CHECK_CLOSE(out[0], 2.0, 1e-3, 1e-3);
    XC_CHECK_CLOSE(out[1], 0.0, 0, 1e-6);
    /* random cloud with outliers: sum of distances minimal (beats mean and all nudges) */
    int n = 200, dim = 5;
    xc_rng_t r;
    xc_rng_seed(&r, 8);
    float *pts = malloc(sizeof(float) * (size_t)n * dim);
    for (int i = 0; i < n * dim; i++) pts[i] = (float)xc_rng_normal(&r) + (i < 10 * dim ? 40.0f : 0.0f);
    float gm[5];
    xc_geometric_median(pts, n, dim, dim, 100, 1e-5, gm);
    double y[5], mean[5] = {0};
    for (int i = 0; i < dim; i++) y[i] = gm[i];
    for (int b = 0; b < n; b++)
        for (int i = 0; i < dim; i++) mean[i] += pts[b * dim + i] / n;
    double f0 = sumdist(pts, n, dim, y);
    XC_CHECK(f0 < sumdist(pts, n, dim, mean), "median should beat the mean");
    for (int i = 0; i < dim; i++)
        for (int sgn = -1; sgn <= 1; sgn += 2) {
            double z[5];
            memcpy(z, y, sizeof z);
            z[i] += sgn * 1e-2;
            XC_CHECK(sumdist(pts, n, dim, z) >= f0 - 1e-6, "nudge improves the objective");
        }
    /* a point exactly at the starting mean must not produce NaN */
    float sym[3 * 1] = {-1, 0, 1};
    xc_geometric_median(sym, 3, 1, 1, 100, 1e-5, out);
    XC_CHECK(isfinite(out[0]) && fabs(out[0]) < 1e-5, "median of {-1,0,1} = %g", out[0]);
    free(pts);
}

/* FVE, L0 and both reconstruction terms against a direct computation. */
static void test_fve_metrics(void)
{
    int d = 8, F = 24, B = 32, k = 4, d2 = 16;
    for (int model = 0; model < 2; model++) {
        xc_engine_t *e = mk(model, d, F, B, k, XC_LOSS_L2, 2);
        XC_REQUIRE(e, "engine");
        xc_engine_params_t p;
        xc_engine_params(e, &p);
        if (model == XC_MODEL_L1)
            for (int i = 0; i < F * d2; i++) p.w_enc[i] *= 100.0f;
        xc_engine_params_changed(e);
        xc_rng_t r;
        xc_rng_seed(&r, 4);
        float *x = malloc(sizeof(float) * (size_t)B * d2), *f = malloc(sizeof(float) * (size_t)B * F);
        float *xh = malloc(sizeof(float) * (size_t)B * d2);
        rand_batch(x, (long)B * d2, &r, 1.0);
        xc_engine_params_t g = {malloc(4 * (size_t)F * d2), malloc(4 * (size_t)F), malloc(4 * (size_t)F * d2), malloc(4 * (size_t)d2)};
        xc_engine_metrics_t m;
        XC_REQUIRE(xc_engine_compute_grads(e, x, B, &g, &m) == 0, "grads");
        long nnz = 0;
        if (model == XC_MODEL_BATCHTOPK) {
            const long *rp;
            const int *col;
            const float *val;
            nnz = xc_engine_selection(e, &rp, &col, &val);
            memset(f, 0, sizeof(float) * (size_t)B * F);
            for (int b = 0; b < B; b++)
                for (long q = rp[b]; q < rp[b + 1]; q++) f[(size_t)b * F + col[q]] = val[q];
        } else {
            xc_engine_encode(e, x, B, f);
            for (long i = 0; i < (long)B * F; i++) nnz += f[i] > 0;
        }
        xc_engine_decode(e, f, B, xh);
        double l2 = 0, mse = 0;
        for (int mm = 0; mm < 2; mm++) {
            double ve = 0, vx = 0;
            for (int i = mm * d; i < (mm + 1) * d; i++) {
                double se = 0, se2 = 0, sx = 0, sx2 = 0;
                for (int b = 0; b < B; b++) {
                    double ee = x[b * d2 + i] - xh[b * d2 + i];
                    se += ee, se2 += ee * ee, sx += x[b * d2 + i], sx2 += (double)x[b * d2 + i] * x[b * d2 + i];
                }
                ve += se2 / B - (se / B) * (se / B);
                vx += sx2 / B - (sx / B) * (sx / B);
            }
            XC_CHECK_CLOSE(m.fve[mm], 1 - ve / vx, 1e-4, 1e-5);
            for (int b = 0; b < B; b++) {
                double sq = 0;
                for (int i = mm * d; i < (mm + 1) * d; i++) sq += pow(x[b * d2 + i] - xh[b * d2 + i], 2);
                l2 += sqrt(sq) / (2 * B);
                mse += sq / (2 * B);
            }
        }
        XC_CHECK_CLOSE(m.recon_l2, l2, 1e-4, 1e-6);
        XC_CHECK_CLOSE(m.recon_mse, mse, 1e-4, 1e-6);
        XC_CHECK_CLOSE(m.l0, (double)nnz / B, 1e-12, 0);
        if (model == XC_MODEL_BATCHTOPK) XC_CHECK(nnz == (long)k * B, "BatchTopK keeps k*B entries, got %ld", nnz);
        free(g.w_enc);
        free(g.b_enc);
        free(g.w_dec);
        free(g.b_dec);
        free(x);
        free(f);
        free(xh);
        xc_engine_destroy(&e);
    }
}

static void test_reject_bad_batches(void)
{
    int d = 8, F = 32, B = 16, d2 = 16;
    xc_engine_t *e = mk(XC_MODEL_BATCHTOPK, d, F, B, 2, XC_LOSS_L2, 2);
    XC_REQUIRE(e, "engine");
    xc_rng_t r;
    xc_rng_seed(&r, 1);
    float *x = malloc(sizeof(float) * (size_t)B * d2);
    rand_batch(x, (long)B * d2, &r, 1.0);
    XC_REQUIRE(xc_engine_train_step(e, x, B) == 0, "good step");
    xc_engine_params_t p;
    xc_engine_params(e, &p);
    float *snap = malloc(4 * (size_t)F * d2);
    memcpy(snap, p.w_dec, 4 * (size_t)F * d2);
    long step = xc_engine_metrics(e)->step;
    x[5] = NAN;
    XC_CHECK(xc_engine_train_step(e, x, B) == XC_ENONFINITE, "NaN accepted");
    x[5] = INFINITY;
    XC_CHECK(xc_engine_train_step(e, x, B) == XC_ENONFINITE, "Inf accepted");
    x[5] = -INFINITY;
    XC_CHECK(xc_engine_train_step(e, x, B) == XC_ENONFINITE, "-Inf accepted");
    x[5] = 0.5f;
    XC_CHECK(xc_engine_train_step(e, x, B - 1) == XC_ESHAPE, "short batch accepted");
    XC_CHECK(xc_engine_train_step(e, NULL, B) == XC_ESHAPE, "NULL accepted");
    XC_CHECK(memcmp(snap, p.w_dec, 4 * (size_t)F * d2) == 0, "model changed by a refused batch");
    XC_CHECK(xc_engine_metrics(e)->step == step, "step counter moved");
    /* a huge-but-finite batch trains without producing NaN parameters */
    for (int i = 0; i < B * d2; i++) x[i] = 1e18f * (float)xc_rng_normal(&r);
    XC_CHECK(xc_engine_train_step(e, x, B) == 0, "finite batch refused");
    int finite = 1;
    for (int i = 0; i < F * d2; i++) finite &= isfinite(p.w_dec[i]) && isfinite(p.w_enc[i]);
    XC_CHECK(finite, "parameters hold NaN/Inf after a large batch");
    /* values whose squares overflow float: the step is refused, nothing changes */
    xc_engine_t *e2 = mk(XC_MODEL_BATCHTOPK, d, F, B, 2, XC_LOSS_MSE, 2);
    XC_REQUIRE(e2, "engine");
    for (int i = 0; i < B * d2; i++) x[i] = 3e37f * (float)xc_rng_normal(&r);
    xc_engine_params(e2, &p);
    memcpy(snap, p.w_dec, 4 * (size_t)F * d2);
    float bd = p.b_dec[0];
    XC_CHECK(xc_engine_train_step(e2, x, B) == XC_ENONFINITE, "overflowing step not refused");
    XC_CHECK(memcmp(snap, p.w_dec, 4 * (size_t)F * d2) == 0 && p.b_dec[0] == bd, "model changed");
    XC_CHECK(xc_engine_metrics(e2)->step == 0, "step counted");
    xc_engine_destroy(&e2);
    /* bad configs */
    xc_engine_config_t c;
    xc_cfg_engine_defaults(&c, XC_MODEL_BATCHTOPK);
    c.k = 0;
    int err = 0;
    XC_CHECK(xc_engine_new(&c, &err) == NULL && err == XC_ECONFIG, "k=0 accepted");
    xc_cfg_engine_defaults(&c, XC_MODEL_BATCHTOPK);
    c.lr = NAN;
    XC_CHECK(xc_engine_new(&c, &err) == NULL && err == XC_ECONFIG, "lr=NaN accepted");
    free(snap);
    free(x);
    xc_engine_destroy(&e);
}

static void test_determinism(void)
{
    int d = 16, F = 128, B = 64, d2 = 32;
    float *x = malloc(sizeof(float) * (size_t)B * d2);
    float *w[2];
    for (int run = 0; run < 2; run++) {
        xc_engine_config_t c;
        xc_cfg_engine_defaults(&c, XC_MODEL_BATCHTOPK);
        c.d = d, c.dict_size = F, c.batch_size = B, c.k = 4, c.threads = 2, c.seed = 42;
        c.warmup_steps = 2, c.dead_tokens = 256, c.threshold_start_step = 3, c.lr = 1e-3f;
        /* the second run without the AVX-512 paths (prefilter, Adam): bit-identical too */
        if (run == 1) setenv("XC_NO_AVX512", "1", 1);
        xc_engine_t *e = xc_engine_new(&c, NULL);
        unsetenv("XC_NO_AVX512");
        XC_REQUIRE(e, "engine");
        xc_rng_t r;
        xc_rng_seed(&r, 77);
        for (int s = 0; s < 12; s++) {
            rand_batch(x, (long)B * d2, &r, 1.0);
            XC_REQUIRE(xc_engine_train_step(e, x, B) == 0, "step");
        }
        xc_engine_params_t p;
        xc_engine_params(e, &p);
        w[run] = malloc(8 * (size_t)F * d2);
        memcpy(w[run], p.w_dec, 4 * (size_t)F * d2);
        memcpy(w[run] + (size_t)F * d2, p.w_enc, 4 * (size_t)F * d2);
        if (run == 0) XC_CHECK(xc_engine_metrics(e)->aux >= 0, "aux");
        xc_engine_destroy(&e);
    }
    XC_CHECK(memcmp(w[0], w[1], 8 * (size_t)F * d2) == 0, "same seed (AVX-512 on, off), different result");
    free(w[0]);
    free(w[1]);
    free(x);
}

/* Copy the state out after N steps, restore it into a fresh engine, and both
 * must continue bit-identically (the checkpoint's contract). */
static void test_state_resume_bit_exact(void)
{
    int d = 16, F = 128, B = 64, d2 = 32;
    for (int model = 0; model < 2; model++) {
        xc_engine_config_t c;
        xc_cfg_engine_defaults(&c, model);
        c.d = d, c.dict_size = F, c.batch_size = B, c.k = 4, c.threads = 2, c.seed = 9;
        c.warmup_steps = 3, c.dead_tokens = 256, c.threshold_start_step = 2, c.lr = 1e-3f;
        xc_engine_t *a = xc_engine_new(&c, NULL);
        c.seed = 1234; /* a different init: everything must come from the state */
        xc_engine_t *b = xc_engine_new(&c, NULL);
        XC_REQUIRE(a && b, "engines");
        xc_rng_t r;
        xc_rng_seed(&r, 5);
        float *x = malloc(sizeof(float) * (size_t)B * d2 * 12);
        for (long i = 0; i < (long)B * d2 * 12; i++) x[i] = (float)xc_rng_normal(&r);
        for (int s = 0; s < 6; s++) XC_REQUIRE(xc_engine_train_step(a, x + (size_t)s * B * d2, B) == 0, "step");
        xc_state_view_t va[XC_ENGINE_STATE_MAX], vb[XC_ENGINE_STATE_MAX];
        int na = xc_engine_state_views(a, va, XC_ENGINE_STATE_MAX), nb = xc_engine_state_views(b, vb, XC_ENGINE_STATE_MAX);
        XC_REQUIRE(na == nb && na > 20 && na < XC_ENGINE_STATE_MAX, "views %d %d", na, nb);
        for (int i = 0; i < na; i++) {
            XC_REQUIRE(strcmp(va[i].name, vb[i].name) == 0 && va[i].bytes == vb[i].bytes, "view %s", va[i].name);
            memcpy(vb[i].data, va[i].data, va[i].bytes);
        }
        xc_engine_state_restored(b);
        for (int s = 6; s < 12; s++) {
            XC_REQUIRE(xc_engine_train_step(a, x + (size_t)s * B * d2, B) == 0, "step a");
            XC_REQUIRE(xc_engine_train_step(b, x + (size_t)s * B * d2, B) == 0, "step b");
        }
        na = xc_engine_state_views(a, va, XC_ENGINE_STATE_MAX);
        xc_engine_state_views(b, vb, XC_ENGINE_STATE_MAX);
        int diff = 0;
        for (int i = 0; i < na; i++) diff += memcmp(va[i].data, vb[i].data, va[i].bytes) != 0;
        XC_CHECK(diff == 0, "model %d: %d state tensors differ after resuming", model, diff);
        XC_CHECK(xc_engine_metrics(a)->loss == xc_engine_metrics(b)->loss, "loss differs");
        free(x);
        xc_engine_destroy(&a);
        xc_engine_destroy(&b);
    }
}

int main(void)
{
    XC_RUN(test_grad_batchtopk_l2);
    XC_RUN(test_grad_batchtopk_mse);
    XC_RUN(test_grad_batchtopk_auxk);
    XC_RUN(test_grad_l1);
    XC_RUN(test_topk_bruteforce);
    XC_RUN(test_topk_large_threads);
    XC_RUN(test_topk_scale_shift);
    XC_RUN(test_theta_update);
    XC_RUN(test_adam);
    XC_RUN(test_geometric_median);
    XC_RUN(test_fve_metrics);
    XC_RUN(test_reject_bad_batches);
    XC_RUN(test_determinism);
    XC_RUN(test_state_resume_bit_exact);
    XC_TEST_EXIT();
}
