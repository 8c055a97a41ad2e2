/* Planted-feature recovery: a BatchTopK crosscoder trained on paired activations
 * from known shared / chat-only / base-only features must find them (cosine >= 0.9
 * for >= 90% of features) and place them in the right relative-decoder-norm bins
 * (chat-only Delta >= 0.9, base-only Delta <= 0.1, shared Delta in [0.3, 0.7] for
 * >= 90% of the matched ones). The L1 crosscoder is trained on the same stream and
 * its figures are reported (the artefacts it produces are what Latent Scaling is
 * for), with only a sanity bound asserted. */
#include "xc_config.h"
#include "xc_engine.h"
#include "xc_synth.h"
#include "xc_test.h"

typedef struct {
    int n[3], matched[3], in_bin[3];
    double fve[2];
} recov_t;

static int in_bin(int kind, float delta)
{
    switch (kind) {
    case XC_SYNTH_CHAT_ONLY: return delta >= 0.9f;
    case XC_SYNTH_BASE_ONLY: return delta <= 0.1f;
    default: return delta >= 0.3f && delta <= 0.7f;
    }
}

static int train_and_match(xc_model_kind_t model, xc_prec_t prec, long steps, recov_t *out)
{
    xc_synth_config_t sc;
    xc_synth_config_default(&sc, 64);
    sc.seed = 11;
    int err;
    xc_synth_t *syn = xc_synth_new(&sc, &err);
    if (!syn) return err;

    xc_engine_config_t c;
    xc_cfg_engine_defaults(&c, model);
    c.d = 64;
    c.dict_size = 256;
    c.batch_size = 512;
    c.k = 4;
    c.lr = 3e-3f; /* small dictionary, short run */
    c.warmup_steps = 50;
    c.dead_tokens = 100000; /* short run: revive latents unfired for 100k tokens */
    c.threshold_start_step = 200;
    c.l1_coef = 0.041f; /* the paper's value; our synthetic data has a similar scale */
    c.threads = 2;
    c.seed = 3;
    c.encoder_precision = prec;
    xc_engine_t *e = xc_engine_new(&c, &err);
    if (!e) {
        xc_synth_destroy(&syn);
        return err;
    }
    float *x = malloc(sizeof(float) * (size_t)c.batch_size * 2 * c.d);
    for (long s = 0; s < steps && !err; s++) {
        err = xc_synth_generate(syn, c.batch_size, x, NULL);
        if (!err) err = xc_engine_train_step(e, x, c.batch_size);
    }
    const xc_engine_metrics_t *m = xc_engine_metrics(e);
    out->fve[0] = m->fve[0];
    out->fve[1] = m->fve[1];
    int nf = xc_synth_n_features(syn);
    xc_synth_match_t *mt = calloc((size_t)nf, sizeof *mt);
    xc_engine_params_t p;
    xc_engine_params(e, &p);
    if (!err) err = xc_synth_match(syn, p.w_dec, c.dict_size, mt);
    memset(out->n, 0, sizeof out->n);
    memset(out->matched, 0, sizeof out->matched);
    memset(out->in_bin, 0, sizeof out->in_bin);
    for (int i = 0; !err && i < nf; i++) {
        xc_synth_feature_t f;
        xc_synth_feature(syn, i, &f);
        int kd = f.kind > 2 ? 0 : (int)f.kind;
        out->n[kd]++;
        if (mt[i].cosine >= 0.9f) {
            out->matched[kd]++;
            out->in_bin[kd] += in_bin(f.kind, mt[i].delta_norm);
        }
    }
    free(mt);
    free(x);
    xc_engine_destroy(&e);
    xc_synth_destroy(&syn);
    return err;
}

static void report(const char *name, const recov_t *r)
{
    static const char *kinds[3] = {"shared", "chat-only", "base-only"};
    printf("# %s: fve base %.3f chat %.3f;", name, r->fve[0], r->fve[1]);
    for (int k = 0; k < 3; k++)
        printf(" %s matched %d/%d, in Delta bin %d/%d;", kinds[k], r->matched[k], r->n[k], r->in_bin[k],
               r->matched[k]);
    printf("\n");
}

static recov_t g_fp32; /* the fp32 BatchTopK run, compared against by the reduced-precision ones */
static int g_fp32_ok;

static void test_batchtopk_recovers_planted_features(void)
{
    recov_t r;
    int err = train_and_match(XC_MODEL_BATCHTOPK, XC_PREC_FP32, 1500, &r);
    XC_REQUIRE(err == 0, "training failed: %d", err);
    g_fp32 = r;
    g_fp32_ok = 1;
    report("batchtopk", &r);
    int n = r.n[0] + r.n[1] + r.n[2], matched = r.matched[0] + r.matched[1] + r.matched[2];
    XC_CHECK(matched >= 0.9 * n, "only %d/%d planted features matched at cosine >= 0.9", matched, n);
    for (int k = 0; k < 3; k++)
        XC_CHECK(r.in_bin[k] >= 0.9 * r.matched[k], "kind %d: %d/%d matched features in their Delta bin", k,
                 r.in_bin[k], r.matched[k]);
    XC_CHECK(r.fve[0] > 0.8 && r.fve[1] > 0.8, "FVE too low: %.3f %.3f", r.fve[0], r.fve[1]);
}

static void test_l1_same_data(void)
{
    recov_t r;
    int err = train_and_match(XC_MODEL_L1, XC_PREC_FP32, 1500, &r);
    XC_REQUIRE(err == 0, "training failed: %d", err);
    report("l1", &r);
    XC_CHECK(r.fve[0] > 0.5 && r.fve[1] > 0.5, "L1 did not learn: FVE %.3f %.3f", r.fve[0], r.fve[1]);
}

/* Reduced-precision scoring selects exactly: the same recovery, FVE within 0.002,
 * for each precision this machine runs (the others are named with the reason). */
static void test_batchtopk_reduced_precision(void)
{
    recov_t r0 = g_fp32, r;
    int err = 0;
    if (!g_fp32_ok) err = train_and_match(XC_MODEL_BATCHTOPK, XC_PREC_FP32, 1500, &r0);
    XC_REQUIRE(err == 0, "fp32 training failed: %d", err);
    static const xc_prec_t ps[] = {XC_PREC_BF16, XC_PREC_INT8};
    for (int q = 0; q < 2; q++) {
        char why[256];
        if (!xc_score_supported(ps[q], why, sizeof why)) {
            printf("# %s not run on this machine: %s\n", xc_prec_name(ps[q]), why);
            continue;
        }
        err = train_and_match(XC_MODEL_BATCHTOPK, ps[q], 1500, &r);
        XC_REQUIRE(err == 0, "%s training failed: %d", xc_prec_name(ps[q]), err);
        report(xc_prec_name(ps[q]), &r);
        for (int k = 0; k < 3; k++)
            XC_CHECK(r.matched[k] == r0.matched[k] && r.in_bin[k] == r0.in_bin[k],
                     "%s kind %d: matched %d in bin %d vs fp32 %d %d", xc_prec_name(ps[q]), k, r.matched[k],
                     r.in_bin[k], r0.matched[k], r0.in_bin[k]);
        XC_CHECK(fabs(r.fve[0] - r0.fve[0]) <= 0.002 && fabs(r.fve[1] - r0.fve[1]) <= 0.002,
                 "%s FVE %.4f %.4f vs fp32 %.4f %.4f", xc_prec_name(ps[q]), r.fve[0], r.fve[1], r0.fve[0], r0.fve[1]);
    }
}

int main(void)
{
    XC_RUN(test_batchtopk_recovers_planted_features);
    XC_RUN(test_l1_same_data);
    XC_RUN(test_batchtopk_reduced_precision);
    XC_TEST_EXIT();
}
