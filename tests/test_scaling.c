/* Latent Scaling (method.md 4) against truth:
 *  - a dictionary built by hand on orthonormal directions, where every beta has a
 *    closed form (beta_err^m = the feature's strength in model m, beta_rec^m = the
 *    decoder's coefficient): exact pass to 1e-4, running estimate within 2%;
 *  - random data and dictionary: the exact pass equals a direct double-precision
 *    computation from the definition (per-latent targets) to 1e-4;
 *  - a planted-feature run with features present in base at a fraction s of their
 *    chat strength: their nu track cos * s, chat-only features get nu ~ 0, and the
 *    chat-specific class takes chat-only features, not shrunk ones;
 *  - the chat betas' standard errors against a direct computation of the
 *    least-squares slope's standard error, and the stability rule: a planted
 *    chat-only latent whose chat beta is 0 within noise (its nu wild, and below
 *    nu_err_max) is marked unstable and not chat-specific, a genuine one is. */
#include "xc_config.h"
#include "xc_engine.h"
#include "xc_error.h"
#include "xc_rng.h"
#include "xc_shm.h"
#include "xc_shmpub.h"
#include "xc_synth.h"
#include "xc_test.h"

enum { D = 24, NF = 8, BS = 64 };
static const float kappa[NF] = {0.0f, 0.1f, 0.25f, 0.5f, 0.8f, 1.0f, 1.3f, 0.4f}; /* base strength */
static const float coef[NF] = {0.0f, 0.05f, 0.3f, 0.5f, 0.9f, 1.0f, 1.2f, 0.1f};  /* base decoder */

/* Data: x^chat = sum a_j e_j, x^base = sum a_j kappa_j e_j, plus noise on the
 * dimensions >= NF (orthogonal to every latent). */
static void structured_batch(xc_rng_t *r, float *x, long n)
{
    for (long b = 0; b < n; b++) {
        float *xb = x + (size_t)b * 2 * D, *xc = xb + D;
        memset(xb, 0, sizeof(float) * 2 * D);
        for (int j = 0; j < NF; j++)
            if (xc_rng_uniform(r) < 0.4) {
                float a = (float)(0.5 + xc_rng_uniform(r));
                xc[j] += a;
                xb[j] += a * kappa[j];
            }
        for (int i = NF; i < D; i++) {
            xb[i] += (float)(0.1 * xc_rng_normal(r));
            xc[i] += (float)(0.1 * xc_rng_normal(r));
        }
    }
}

static xc_engine_t *structured_engine(int warm_steps, xc_rng_t *r)
{
    xc_engine_config_t c;
    xc_cfg_engine_defaults(&c, XC_MODEL_BATCHTOPK);
    c.d = D, c.dict_size = NF, c.batch_size = BS, c.k = 2, c.threads = 2, c.warmup_steps = 0;
    c.lr = 1e-30f; /* the dictionary must stay as built */
    c.scaling_half_life = 20.0 * BS;
    c.scaling_min_active = 5;
    xc_engine_t *e = xc_engine_new(&c, NULL);
    if (!e) return NULL;
    float *x = malloc(sizeof(float) * BS * 2 * D);
    for (int s = 0; s < warm_steps; s++) { /* step 0 sets b_dec (geometric median): reset below */
        structured_batch(r, x, BS);
        xc_engine_train_step(e, x, BS);
    }
    free(x);
    xc_engine_params_t p;
    xc_engine_params(e, &p);
    memset(p.w_enc, 0, sizeof(float) * NF * 2 * D);
    memset(p.w_dec, 0, sizeof(float) * NF * 2 * D);
    memset(p.b_enc, 0, sizeof(float) * NF);
    memset(p.b_dec, 0, sizeof(float) * 2 * D);
    for (int j = 0; j < NF; j++) {
        p.w_enc[j * 2 * D + D + j] = 1.0f;        /* u_j = <x^chat, e_j> = a_j */
        p.w_dec[j * 2 * D + j] = coef[j];         /* base decoder */
        p.w_dec[j * 2 * D + D + j] = 1.0f;        /* chat decoder v_j = e_j */
    }
    xc_engine_params_changed(e);
    xc_engine_set_theta(e, 0.0);
    return e;
}

static void test_exact_closed_form(void)
{
    xc_rng_t r;
    xc_rng_seed(&r, 1);
    xc_engine_t *e = structured_engine(0, &r);
    XC_REQUIRE(e, "engine");
    xc_scaling_t *s = xc_scaling_new(e, NULL);
    XC_REQUIRE(s, "scaling");
    float *x = malloc(sizeof(float) * 1000 * 2 * D);
    structured_batch(&r, x, 1000);
    XC_CHECK(xc_scaling_add(s, x, 1000) == 0, "add");
    XC_CHECK(xc_scaling_tokens(s) == 1000, "tokens");
    xc_scaling_stats_t out[NF];
    xc_scaling_result(s, out);
    for (int j = 0; j < NF; j++) {
        XC_CHECK_CLOSE(out[j].beta_err[0], kappa[j], 1e-4, 1e-5);
        XC_CHECK_CLOSE(out[j].beta_err[1], 1.0, 1e-4, 1e-5);
        XC_CHECK_CLOSE(out[j].beta_rec[0], coef[j], 1e-4, 1e-5);
        XC_CHECK_CLOSE(out[j].beta_rec[1], 1.0, 1e-4, 1e-5);
        XC_CHECK_CLOSE(out[j].nu_err, kappa[j], 1e-4, 1e-5);
        XC_CHECK_CLOSE(out[j].nu_rec, coef[j], 1e-4, 1e-5);
        XC_CHECK(out[j].active > 300, "latent %d fired %g times", j, out[j].active);
    }
    /* a latent that never fires has undefined beta, reported as NaN */
    xc_scaling_t *s2 = xc_scaling_new(e, NULL);
    for (long b = 0; b < 1000; b++) x[(size_t)b * 2 * D + D + 3] = 0.0f; /* latent 3 never fires */
    xc_scaling_add(s2, x, 1000);
    xc_scaling_result(s2, out);
    XC_CHECK(isnan(out[3].beta_err[0]) && isnan(out[3].nu_err) && isnan(out[3].nu_rec) && out[3].active == 0,
             "never-fired latent must be undefined");
    XC_CHECK(!isnan(out[2].nu_err), "others stay defined");
    xc_scaling_destroy(&s2);
    xc_scaling_destroy(&s);
    free(x);
    xc_engine_destroy(&e);
}

static void test_running_converges(void)
{
    xc_rng_t r;
    xc_rng_seed(&r, 2);
    xc_engine_t *e = structured_engine(1, &r);
    XC_REQUIRE(e, "engine");
    float *x = malloc(sizeof(float) * BS * 2 * D);
    xc_scaling_stats_t out[NF];
    for (int s = 0; s < 400; s++) {
        structured_batch(&r, x, BS);
        XC_REQUIRE(xc_engine_train_step(e, x, BS) == 0, "step");
        if (s == 0) {
            /* right after the rebuild the window still holds the pre-rebuild step */
            xc_engine_scaling_running(e, out);
        }
    }
    xc_engine_scaling_running(e, out);
    for (int j = 0; j < NF; j++) {
        XC_CHECK_CLOSE(out[j].beta_err[0], kappa[j], 0.02, 0.02 * 0.1);
        XC_CHECK_CLOSE(out[j].beta_err[1], 1.0, 0.02, 0);
        XC_CHECK_CLOSE(out[j].beta_rec[0], coef[j], 0.02, 0.02 * 0.1);
        XC_CHECK_CLOSE(out[j].nu_err, kappa[j], 0.02, 0.02 * 0.1);
        XC_CHECK_CLOSE(out[j].nu_rec, coef[j], 0.02, 0.02 * 0.1);
    }
    free(x);
    xc_engine_destroy(&e);
}

static void test_exact_matches_definition(void)
{
    int d = 12, F = 40, B = 128, d2 = 24;
    xc_engine_config_t c;
    xc_cfg_engine_defaults(&c, XC_MODEL_BATCHTOPK);
    c.d = d, c.dict_size = F, c.batch_size = B, c.k = 3, c.threads = 2, c.scaling_min_active = 1;
    xc_engine_t *e = xc_engine_new(&c, NULL);
    XC_REQUIRE(e, "engine");
    xc_rng_t r;
    xc_rng_seed(&r, 5);
    xc_engine_params_t p;
    xc_engine_params(e, &p);
    for (int i = 0; i < F * d2; i++) p.w_dec[i] += (float)(0.2 * xc_rng_normal(&r));
    for (int i = 0; i < d2; i++) p.b_dec[i] = (float)(0.3 * xc_rng_normal(&r));
    xc_engine_params_changed(e);
    xc_engine_set_theta(e, 0.3);
    long n = 700;
    float *x = malloc(sizeof(float) * (size_t)n * d2), *f = malloc(sizeof(float) * (size_t)n * F);
    float *xh = malloc(sizeof(float) * (size_t)n * d2);
    for (long i = 0; i < n * d2; i++) x[i] = (float)xc_rng_normal(&r);
    xc_scaling_t *s = xc_scaling_new(e, NULL);
    XC_REQUIRE(s, "scaling");
    XC_CHECK(xc_scaling_add(s, x, 300) == 0 && xc_scaling_add(s, x + 300 * d2, n - 300) == 0, "add");
    xc_scaling_stats_t out[40];
    xc_scaling_result(s, out);
    /* direct: per latent, targets built explicitly, sums in double */
    xc_engine_encode(e, x, n, f);
    xc_engine_decode(e, f, n, xh);
    int bad = 0, defined = 0;
    for (int j = 0; j < F; j++) {
        const float *dj = p.w_dec + (size_t)j * d2, *v = dj + d;
        double num_e[2] = {0}, num_r[2] = {0}, den = 0, vv = 0;
        for (int i = 0; i < d; i++) vv += (double)v[i] * v[i];
        for (long b = 0; b < n; b++) {
            double fj = f[(size_t)b * F + j];
            if (fj == 0) continue;
            for (int m = 0; m < 2; m++) {
                double ye = 0, yr = 0;
                for (int i = 0; i < d; i++) {
                    double xv = x[(size_t)b * d2 + m * d + i], xhv = xh[(size_t)b * d2 + m * d + i];
                    ye += v[i] * (xv - xhv + fj * dj[m * d + i]);
                    yr += v[i] * xhv;
                }
                num_e[m] += fj * ye;
                num_r[m] += fj * yr;
            }
            den += fj * fj * vv;
        }
        if (den == 0) {
            bad += !isnan(out[j].beta_err[0]);
            continue;
        }
        defined++;
        double want[4] = {num_e[0] / den, num_e[1] / den, num_r[0] / den, num_r[1] / den};
        double got[4] = {out[j].beta_err[0], out[j].beta_err[1], out[j].beta_rec[0], out[j].beta_rec[1]};
        for (int q = 0; q < 4; q++)
            if (fabs(got[q] - want[q]) > 1e-4 * fabs(want[q]) + 1e-5) bad++;
        if (fabs(out[j].nu_err - want[0] / want[1]) > 1e-4 * fabs(want[0] / want[1]) + 1e-5) bad++;
    }
    XC_CHECK(bad == 0, "%d values differ from the definition", bad);
    XC_CHECK(defined > F / 2, "only %d latents fired", defined);
    free(x);
    free(f);
    free(xh);
    xc_scaling_destroy(&s);
    xc_engine_destroy(&e);
}

/* Planted run: BatchTopK and L1 on features with base strength s = 0.4 at cos 0.9. */
static void planted(xc_model_kind_t model, int *n_ok_shrunk, int *n_shrunk, int *n_ok_chat, int *n_chat,
                    int *spec_chat, int *spec_shrunk, double *mean_nu_shrunk, double *mean_nu_rec)
{
    xc_synth_config_t sc;
    xc_synth_config_default(&sc, 64);
    sc.n_shared = 24, sc.n_chat_only = 10, sc.n_base_only = 6, sc.n_shrunk = 10;
    sc.shrunk_scale = 0.4f, sc.shrunk_cos = 0.9f, sc.seed = 21;
    xc_synth_t *syn = xc_synth_new(&sc, NULL);
    xc_engine_config_t c;
    xc_cfg_engine_defaults(&c, model);
    c.d = 64, c.dict_size = 256, c.batch_size = 512, c.k = 4, c.lr = 3e-3f, c.warmup_steps = 50;
    c.dead_tokens = 100000, c.threshold_start_step = 200, c.threads = 2, c.seed = 3;
    c.l1_coef = 0.08f;
    xc_engine_t *e = xc_engine_new(&c, NULL);
    float *x = malloc(sizeof(float) * 512 * 128);
    for (int s = 0; s < 1500; s++) {
        xc_synth_generate(syn, 512, x, NULL);
        xc_engine_train_step(e, x, 512);
    }
    xc_scaling_t *ex = xc_scaling_new(e, NULL);
    for (int s = 0; s < 100; s++) {
        xc_synth_generate(syn, 512, x, NULL);
        xc_scaling_add(ex, x, 512);
    }
    xc_scaling_stats_t *out = calloc(256, sizeof *out);
    xc_scaling_result(ex, out);
    int nf = xc_synth_n_features(syn);
    xc_synth_match_t *mt = calloc((size_t)nf, sizeof *mt);
    xc_engine_params_t p;
    xc_engine_params(e, &p);
    xc_synth_match(syn, p.w_dec, 256, mt);
    xc_class_thresholds_t th;
    xc_class_thresholds_default(&th);
    double target = 0.4 * 0.9, sum = 0;
    *n_ok_shrunk = *n_shrunk = *n_ok_chat = *n_chat = *spec_chat = *spec_shrunk = 0;
    *mean_nu_rec = 0;
    for (int i = 0; i < nf; i++) {
        xc_synth_feature_t f;
        xc_synth_feature(syn, i, &f);
        if (mt[i].cosine < 0.9f) continue;
        const xc_scaling_stats_t *o = &out[mt[i].latent];
        int spec = xc_latent_chat_specific(mt[i].delta_norm, o->nu_err, o->nu_rec, &th);
        if (f.kind == XC_SYNTH_SHRUNK) {
            (*n_shrunk)++;
            sum += o->nu_err;
            /* nu_rec also carries the decoder bias's projection on v (the
             * reconstruction target includes b_dec): it tracks cos*s on average only */
            *n_ok_shrunk += fabs(o->nu_err - target) < 0.05;
            *mean_nu_rec += o->nu_rec;
            *spec_shrunk += spec;
        } else if (f.kind == XC_SYNTH_CHAT_ONLY) {
            (*n_chat)++;
            *n_ok_chat += fabs(o->nu_err) < 0.05 && fabs(o->nu_rec) < 0.2;
            *spec_chat += spec;
        }
    }
    *mean_nu_shrunk = *n_shrunk ? sum / *n_shrunk : NAN;
    *mean_nu_rec = *n_shrunk ? *mean_nu_rec / *n_shrunk : NAN;
    printf("# %s: shrunk matched %d (nu_err within 0.05 of cos*s=%.2f: %d; mean nu_err %.3f, mean nu_rec %.3f; "
           "chat-specific %d); chat-only matched %d (nu ~ 0: %d, chat-specific %d)\n",
           model == XC_MODEL_L1 ? "l1" : "batchtopk", *n_shrunk, target, *n_ok_shrunk, *mean_nu_shrunk, *mean_nu_rec,
           *spec_shrunk, *n_chat, *n_ok_chat, *spec_chat);
    free(mt);
    free(out);
    free(x);
    xc_scaling_destroy(&ex);
    xc_engine_destroy(&e);
    xc_synth_destroy(&syn);
}

static void test_planted_shrunk_features(void)
{
    int ok_s, n_s, ok_c, n_c, sp_c, sp_s;
    double mean, mean_rec;
    planted(XC_MODEL_BATCHTOPK, &ok_s, &n_s, &ok_c, &n_c, &sp_c, &sp_s, &mean, &mean_rec);
    XC_CHECK(n_s >= 8 && ok_s >= 0.9 * n_s, "BatchTopK: %d/%d shrunk features with nu ~ cos*s", ok_s, n_s);
    XC_CHECK(fabs(mean_rec - 0.36) < 0.1, "BatchTopK: mean nu_rec of shrunk features %.3f", mean_rec);
    XC_CHECK(n_c >= 8 && ok_c >= 0.9 * n_c, "BatchTopK: %d/%d chat-only features with nu ~ 0", ok_c, n_c);
    XC_CHECK(sp_c >= 0.9 * n_c && sp_s == 0, "BatchTopK chat-specific: %d/%d chat-only, %d shrunk", sp_c, n_c, sp_s);
    planted(XC_MODEL_L1, &ok_s, &n_s, &ok_c, &n_c, &sp_c, &sp_s, &mean, &mean_rec);
    XC_CHECK(n_s >= 5 && ok_s >= 0.7 * n_s, "L1: %d/%d shrunk features with nu ~ cos*s", ok_s, n_s);
    XC_CHECK(sp_s == 0 && sp_c >= 0.8 * n_c, "L1 chat-specific: %d/%d chat-only, %d shrunk", sp_c, n_c, sp_s);
}


/* The direct computation of one latent's chat betas and their standard errors
 * from the definition (threshold mode, theta 0: a latent fires where u > 0):
 * per firing token t = <v, y> / |v|^2, beta = sum f t / sum f^2, se =
 * sqrt(sum (t - beta f)^2 / (n - 1) / sum f^2), for y = the error with the
 * latent's own term added back, and y = the reconstruction. */
static void direct_se(const xc_engine_t *e, int j, const float *x, long n, double beta[2], double se[2])
{
    xc_engine_params_t p;
    xc_engine_params((xc_engine_t *)e, &p);
    const float *v = p.w_dec + (size_t)j * 2 * D + D;
    double vv = 0, sff = 0, sft[2] = {0, 0}, cnt = 0;
    for (int i = 0; i < D; i++) vv += (double)v[i] * v[i];
    double *t = malloc(sizeof(double) * 2 * (size_t)n), *f = malloc(sizeof(double) * (size_t)n);
    for (long b = 0; b < n; b++) {
        const float *xb = x + (size_t)b * 2 * D;
        double xh[D], fj = 0;
        for (int i = 0; i < D; i++) xh[i] = p.b_dec[D + i];
        for (int k = 0; k < NF; k++) {
            double u = p.b_enc[k];
            for (int i = 0; i < 2 * D; i++) u += (double)p.w_enc[(size_t)k * 2 * D + i] * xb[i];
            if (u <= 0) continue;
            for (int i = 0; i < D; i++) xh[i] += u * p.w_dec[(size_t)k * 2 * D + D + i];
            if (k == j) fj = u;
        }
        if (fj <= 0) continue;
        double pe = 0, pr = 0;
        for (int i = 0; i < D; i++) {
            pe += v[i] * (xb[D + i] - xh[i] + fj * v[i]);
            pr += v[i] * xh[i];
        }
        f[(long)cnt] = fj;
        t[2 * (long)cnt] = pe / vv;
        t[2 * (long)cnt + 1] = pr / vv;
        sff += fj * fj;
        sft[0] += fj * pe / vv;
        sft[1] += fj * pr / vv;
        cnt++;
    }
    for (int m = 0; m < 2; m++) {
        beta[m] = sft[m] / sff;
        double rss = 0;
        for (long i = 0; i < (long)cnt; i++) {
            double r = t[2 * i + m] - beta[m] * f[i];
            rss += r * r;
        }
        se[m] = sqrt(rss / (cnt - 1) / sff);
    }
    free(t);
    free(f);
}

/* Data for the stability test: the structured batch, except that latent P's
 * encoder reads the BASE model (u_P = x^base_P) while the chat model carries
 * independent noise along e_P: the chat beta of its error target is 0 within
 * noise, so its nu^eps = beta_base / beta_chat is arbitrary. */
enum { P = 7 };
static void planted_zero_batch(xc_rng_t *r, float *x, long n)
{
    structured_batch(r, x, n);
    for (long b = 0; b < n; b++) {
        float *xb = x + (size_t)b * 2 * D, *xc = xb + D;
        xb[P] = xc_rng_uniform(r) < 0.4 ? (float)(0.5 + xc_rng_uniform(r)) : 0.0f;
        xc[P] = (float)xc_rng_normal(r); /* beta_chat = 0 */
    }
}

static xc_engine_t *planted_zero_engine(xc_rng_t *r)
{
    xc_engine_t *e = structured_engine(0, r);
    if (!e) return NULL;
    xc_engine_params_t p;
    xc_engine_params(e, &p);
    p.w_enc[P * 2 * D + D + P] = 0.0f; /* u_P = <x^base, e_P> */
    p.w_enc[P * 2 * D + P] = 1.0f;
    p.w_dec[P * 2 * D + P] = 0.05f;    /* chat-only by decoder norms */
    xc_engine_params_changed(e);
    return e;
}

static void test_standard_error_and_stability(void)
{
    xc_rng_t r;
    xc_rng_seed(&r, 5); /* a draw with beta_chat < 0 and |beta| < 2 se: nu < 0 passed the old test */
    xc_engine_t *e = planted_zero_engine(&r);
    XC_REQUIRE(e, "engine");
    enum { N = 4000 };
    float *x = malloc(sizeof(float) * N * 2 * D);
    planted_zero_batch(&r, x, N);
    xc_scaling_t *s = xc_scaling_new(e, NULL);
    XC_REQUIRE(s && xc_scaling_add(s, x, N) == 0, "exact pass");
    xc_scaling_stats_t out[NF];
    xc_scaling_result(s, out);
    /* standard errors against the direct computation, every latent */
    for (int j = 0; j < NF; j++) {
        double beta[2], se[2];
        direct_se(e, j, x, N, beta, se);
        XC_CHECK_CLOSE(out[j].beta_err[1], beta[0], 1e-4, 1e-6);
        XC_CHECK_CLOSE(out[j].beta_rec[1], beta[1], 1e-4, 1e-6);
        XC_CHECK_CLOSE(out[j].se_err_chat, se[0], 1e-3, 1e-6);
        XC_CHECK_CLOSE(out[j].se_rec_chat, se[1], 1e-3, 1e-6);
    }
    printf("# planted latent %d: beta_err_chat %.4f se %.4f (|beta|/se %.2f), nu_err %.3f; latent 0: beta_err_chat "
           "%.4f se %.2g\n", P, out[P].beta_err[1], out[P].se_err_chat, fabs(out[P].beta_err[1]) / out[P].se_err_chat,
           out[P].nu_err, out[0].beta_err[1], out[0].se_err_chat);
    /* the planted latent: its nu passes the thresholds as a number (what was
     * flagged before), yet its chat beta is within 2 standard errors of 0 */
    xc_class_thresholds_t th;
    xc_class_thresholds_default(&th);
    XC_CHECK(xc_latent_chat_specific(0.975f, out[P].nu_err, out[P].nu_rec, &th),
             "the planted nu (%g, %g) would not have been flagged: the case proves nothing", out[P].nu_err,
             out[P].nu_rec);
    XC_CHECK(out[P].nu_unstable & XC_NU_UNSTABLE_ERR, "planted latent not marked unstable");
    XC_CHECK(!(out[P].nu_unstable & XC_NU_UNSTABLE_REC), "its reconstruction beta is sound");
    for (int j = 0; j < P; j++) XC_CHECK(!out[j].nu_unstable, "latent %d unstable (%d)", j, out[j].nu_unstable);
    /* the daemon's records: the planted latent is flagged unstable and not
     * chat-specific; latent 0 (a genuine chat-only feature: nu 0) still is */
    int err;
    char why[200];
    xc_shmpub_t *pub = xc_shmpub_new(NULL, e, 0600, NULL, &th, &err, why, sizeof why);
    XC_REQUIRE(pub, "shmpub: %s", why);
    XC_REQUIRE(xc_shmpub_set_exact(pub, out, 0, N) == 0 && xc_shmpub_update(pub, e, 0) == 0, "update");
    const uint8_t *fl = xc_shmpub_flags(pub), *cl = xc_shmpub_classes(pub);
    XC_CHECK(cl[P] == XC_CLASS_CHAT_ONLY && cl[0] == XC_CLASS_CHAT_ONLY, "classes %d %d", cl[P], cl[0]);
    XC_CHECK((fl[P] & XC_FLAG_NU_UNSTABLE) && !(fl[P] & XC_FLAG_CHAT_SPECIFIC), "planted latent flags %#x", fl[P]);
    XC_CHECK((fl[0] & XC_FLAG_CHAT_SPECIFIC) && !(fl[0] & XC_FLAG_NU_UNSTABLE), "genuine latent flags %#x", fl[0]);
    xc_shmpub_destroy(&pub, 0);
    /* the rule's threshold is the config key: 0 turns it off */
    xc_scaling_stability(&out[P], 0.0);
    XC_CHECK(out[P].nu_unstable == 0, "min_z 0 must turn the rule off");
    xc_scaling_stability(&out[P], 2.0);
    XC_CHECK(out[P].nu_unstable & XC_NU_UNSTABLE_ERR, "min_z 2 again");
    xc_scaling_destroy(&s);
    free(x);
    xc_engine_destroy(&e);
}

/* The running estimates keep the same second moments: with the dictionary
 * frozen (lr ~ 0) and no decay (a huge half-life) the L1 model's running sums
 * cover exactly the tokens an exact pass sees, so both standard errors agree;
 * BatchTopK's running estimate marks the planted latent unstable too. */
static void test_running_standard_error(void)
{
    xc_engine_config_t c;
    xc_cfg_engine_defaults(&c, XC_MODEL_L1);
    c.d = D, c.dict_size = 16, c.batch_size = BS, c.threads = 2, c.warmup_steps = 0, c.lr = 1e-30f;
    c.scaling_half_life = 1e18;
    c.scaling_min_active = 5;
    xc_engine_t *e = xc_engine_new(&c, NULL);
    XC_REQUIRE(e, "l1 engine");
    xc_rng_t r;
    xc_rng_seed(&r, 9);
    enum { S = 40 };
    float *x = malloc(sizeof(float) * S * BS * 2 * D);
    for (size_t i = 0; i < (size_t)S * BS * 2 * D; i++) x[i] = (float)xc_rng_normal(&r);
    xc_engine_set_scaling_running(e, 0);
    XC_REQUIRE(xc_engine_train_step(e, x, BS) == 0, "warm step"); /* b_dec set; no running sums */
    xc_engine_set_scaling_running(e, 1);
    for (int st = 1; st < S; st++) XC_REQUIRE(xc_engine_train_step(e, x + (size_t)st * BS * 2 * D, BS) == 0, "step");
    xc_scaling_stats_t run[16], ex[16];
    xc_engine_scaling_running(e, run);
    xc_scaling_t *s = xc_scaling_new(e, NULL);
    XC_REQUIRE(s && xc_scaling_add(s, x + (size_t)BS * 2 * D, (long)(S - 1) * BS) == 0, "exact");
    xc_scaling_result(s, ex);
    int compared = 0;
    for (int j = 0; j < 16; j++) {
        if (!(ex[j].active >= 20)) continue;
        compared++;
        /* float GEMMs on the running side; the residual sum of squares is a
         * difference of sums, which magnifies their rounding where beta fits well */
        XC_CHECK_CLOSE(run[j].se_err_chat, ex[j].se_err_chat, 1e-2, 1e-6);
        XC_CHECK_CLOSE(run[j].se_rec_chat, ex[j].se_rec_chat, 1e-2, 1e-6);
    }
    XC_CHECK(compared >= 4, "only %d latents fired enough", compared);
    xc_scaling_destroy(&s);
    xc_engine_destroy(&e);
    free(x);

    xc_rng_seed(&r, 6);
    e = planted_zero_engine(&r);
    XC_REQUIRE(e, "batchtopk engine");
    x = malloc(sizeof(float) * BS * 2 * D);
    for (int st = 0; st < 300; st++) {
        planted_zero_batch(&r, x, BS);
        XC_REQUIRE(xc_engine_train_step(e, x, BS) == 0, "step");
    }
    xc_scaling_stats_t out[NF];
    xc_engine_scaling_running(e, out);
    printf("# running: planted latent beta_err_chat %.4f se %.4f (|beta|/se %.2f)\n", out[P].beta_err[1],
           out[P].se_err_chat, fabs(out[P].beta_err[1]) / out[P].se_err_chat);
    XC_CHECK(out[P].nu_unstable & XC_NU_UNSTABLE_ERR, "running: planted latent stable (beta %g se %g)",
             out[P].beta_err[1], out[P].se_err_chat);
    XC_CHECK(!out[0].nu_unstable && isfinite(out[0].se_err_chat), "running: latent 0 %d se %g", out[0].nu_unstable,
             out[0].se_err_chat);
    free(x);
    xc_engine_destroy(&e);
}

int main(void)
{
    XC_RUN(test_exact_closed_form);
    XC_RUN(test_running_converges);
    XC_RUN(test_exact_matches_definition);
    XC_RUN(test_planted_shrunk_features);
    XC_RUN(test_standard_error_and_stability);
    XC_RUN(test_running_standard_error);
    XC_TEST_EXIT();
}
