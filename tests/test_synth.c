/* Tests for the planted-feature generator (synth/synth.c): determinism, firing
 * statistics, the structure of the directions and of the activations, matching
 * a dictionary against the planted features, and config validation. */
#include <stdint.h>

#include "xc_error.h"
#include "xc_rng.h"
#include "xc_synth.h"
#include "xc_test.h"

static double dotf(const float *a, const float *b, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* Generates n tokens (and codes) from a fresh generator; caller frees both. */
static int gen(const xc_synth_config_t *c, long n, float **x, float **codes)
{
    int err = 0;
    xc_synth_t *s = xc_synth_new(c, &err);
    if (!s) return err;
    int nf = xc_synth_n_features(s);
    *x = malloc((size_t)n * 2 * c->d * sizeof **x);
    *codes = malloc((size_t)n * nf * sizeof **codes);
    err = (*x && *codes) ? xc_synth_generate(s, n, *x, *codes) : XC_ENOMEM;
    xc_synth_destroy(&s);
    return err;
}

static void test_determinism(void)
{
    xc_synth_config_t c;
    xc_synth_config_default(&c, 64);
    long n = 500;
    size_t xb = (size_t)n * 2 * 64 * sizeof(float);
    float *x1 = NULL, *x2 = NULL, *c1 = NULL, *c2 = NULL, *x3 = NULL, *c3 = NULL;

    int rc1 = gen(&c, n, &x1, &c1);
    XC_REQUIRE(rc1 == 0, "gen 1: %d", rc1);
    int rc2 = gen(&c, n, &x2, &c2);
    XC_REQUIRE(rc2 == 0, "gen 2: %d", rc2);
    XC_CHECK(memcmp(x1, x2, xb) == 0, "same seed, different activations");
    XC_CHECK(memcmp(c1, c2, (size_t)n * 64 * sizeof(float)) == 0, "same seed, different codes");
    c.seed = 2;
    int rc3 = gen(&c, n, &x3, &c3);
    XC_REQUIRE(rc3 == 0, "gen 3: %d", rc3);
    XC_CHECK(memcmp(x1, x3, xb) != 0, "different seeds gave identical activations");

    /* Split calls continue the stream; codes == NULL does not change it. */
    c.seed = 1;
    int err = 0;
    xc_synth_t *s = xc_synth_new(&c, &err);
    XC_REQUIRE(s, "new: %d", err);
    float *y = malloc(xb);
    XC_CHECK(xc_synth_generate(s, 200, y, NULL) == 0, "generate 200");
    XC_CHECK(xc_synth_generate(s, 0, NULL, NULL) == 0, "generate 0");
    XC_CHECK(xc_synth_generate(s, n - 200, y + 200 * 128, NULL) == 0, "generate rest");
    XC_CHECK(memcmp(x1, y, xb) == 0, "split generation differs from one call");
    XC_CHECK(xc_synth_tokens(s) == (uint64_t)n, "token count %llu",
             (unsigned long long)xc_synth_tokens(s));
    /* Reseeding with cfg.seed replays the stream; another seed, same features. */
    xc_synth_reseed_stream(s, 1);
    XC_CHECK(xc_synth_tokens(s) == 0, "reseed resets the count");
    XC_CHECK(xc_synth_generate(s, n, y, NULL) == 0, "generate after reseed");
    XC_CHECK(memcmp(x1, y, xb) == 0, "reseed(cfg.seed) does not replay the stream");
    xc_synth_reseed_stream(s, 99);
    XC_CHECK(xc_synth_generate(s, n, y, NULL) == 0, "generate after reseed 99");
    XC_CHECK(memcmp(x1, y, xb) != 0, "reseed(99) replayed the same stream");
    xc_synth_destroy(&s);
    XC_CHECK(s == NULL, "destroy sets NULL");
    xc_synth_destroy(&s); /* no-op */
    free(y);
    free(x1), free(x2), free(x3), free(c1), free(c2), free(c3);
}

static void test_statistics(void)
{
    xc_synth_config_t c;
    xc_synth_config_default(&c, 64);
    long n = 20000;
    int err = 0;
    xc_synth_t *s = xc_synth_new(&c, &err);
    XC_REQUIRE(s, "new: %d", err);
    int nf = xc_synth_n_features(s);
    XC_REQUIRE(nf == 64, "n_features %d", nf);
    float *x = malloc((size_t)n * 128 * sizeof *x), *codes = malloc((size_t)n * nf * sizeof *codes);
    int rg = xc_synth_generate(s, n, x, codes);
    XC_REQUIRE(rg == 0, "generate: %d", rg);

    double psum = 0, pmin = 1, pmax = 0, active = 0;
    int bad_freq = -1, bad_mean = -1, bad_min = -1;
    for (int i = 0; i < nf; i++) {
        xc_synth_feature_t f;
        int rf = xc_synth_feature(s, i, &f);
        XC_REQUIRE(rf == 0, "feature %d: %d", i, rf);
        psum += f.prob;
        pmin = fmin(pmin, f.prob);
        pmax = fmax(pmax, f.prob);
        long fired = 0;
        double asum = 0;
        for (long t = 0; t < n; t++) {
            float a = codes[t * nf + i];
            if (a == 0) continue;
            fired++;
            asum += a;
            if (a < 0.5f * f.scale * (1 - 1e-6f)) bad_min = i;
        }
        active += fired;
        double fr = (double)fired / n, p = f.prob;
        if (fabs(fr - p) > 5 * sqrt(p * (1 - p) / n) + 1e-4) bad_freq = i;
        /* a = scale * (0.5 + Exp(1)): mean 1.5 scale, sd scale */
        if (fired && fabs(asum / fired - 1.5 * f.scale) > 6 * f.scale / sqrt((double)fired))
            bad_mean = i;
    }
    XC_CHECK_CLOSE(psum, c.mean_active, 1e-5, 0);
    XC_CHECK(pmax <= c.max_prob + 1e-7 && pmax / pmin > 2, "prob spread [%g, %g]", pmin, pmax);
    XC_CHECK_CLOSE(active / n, c.mean_active, 0.03, 0);
    XC_CHECK(bad_freq < 0, "feature %d firing frequency off its probability", bad_freq);
    XC_CHECK(bad_mean < 0, "feature %d mean activation off 1.5 * scale", bad_mean);
    XC_CHECK(bad_min < 0, "feature %d activation below 0.5 * scale", bad_min);

    /* Capping: few features, high mean_active, every p <= max_prob, sum kept. */
    xc_synth_config_t c2 = c;
    c2.n_shared = 5, c2.n_chat_only = 1, c2.n_base_only = 0, c2.mean_active = 2.9f;
    c2.prob_exponent = 2.0f;
    xc_synth_t *s2 = xc_synth_new(&c2, &err);
    XC_REQUIRE(s2, "new capped: %d", err);
    psum = 0;
    for (int i = 0; i < 6; i++) {
        xc_synth_feature_t f;
        xc_synth_feature(s2, i, &f);
        psum += f.prob;
        XC_CHECK(f.prob <= c2.max_prob + 1e-7 && f.prob > 0, "capped prob %g", f.prob);
    }
    XC_CHECK_CLOSE(psum, 2.9, 1e-5, 0);
    xc_synth_destroy(&s2);
    xc_synth_destroy(&s);
    free(x);
    free(codes);
}

/* x^m - bias^m - sum_i a_i strength_i^m u_i^m must be pure noise of noise_std. */
static void test_residual_is_noise(void)
{
    xc_synth_config_t c;
    xc_synth_config_default(&c, 64);
    c.n_shrunk = 8;
    c.mean_active = 6;
    long n = 20000;
    int d = 64, err = 0;
    xc_synth_t *s = xc_synth_new(&c, &err);
    XC_REQUIRE(s, "new: %d", err);
    int nf = xc_synth_n_features(s);
    float *x = malloc((size_t)n * 2 * d * sizeof *x);
    float *codes = malloc((size_t)n * nf * sizeof *codes);
    int rg = xc_synth_generate(s, n, x, codes);
    XC_REQUIRE(rg == 0, "generate: %d", rg);
    float *tdec = malloc((size_t)nf * 2 * d * sizeof *tdec);
    for (int i = 0; i < nf; i++) xc_synth_true_decoder(s, i, tdec + (size_t)i * 2 * d);
    const float *bias = xc_synth_bias(s);
    XC_CHECK_CLOSE(sqrt(dotf(bias, bias, d)), c.bias_norm, 1e-5, 0);
    XC_CHECK_CLOSE(sqrt(dotf(bias + d, bias + d, d)), c.bias_norm, 1e-5, 0);

    double sum[2] = {0}, sq[2] = {0};
    double r[128];
    for (long t = 0; t < n; t++) {
        for (int k = 0; k < 2 * d; k++) r[k] = (double)x[t * 2 * d + k] - bias[k];
        for (int i = 0; i < nf; i++) {
            float a = codes[t * nf + i];
            if (a != 0)
                for (int k = 0; k < 2 * d; k++) r[k] -= (double)a * tdec[(size_t)i * 2 * d + k];
        }
        for (int k = 0; k < 2 * d; k++) sum[k / d] += r[k], sq[k / d] += r[k] * r[k];
    }
    double cnt = (double)n * d;
    for (int m = 0; m < 2; m++) {
        XC_CHECK(fabs(sum[m] / cnt) < 5 * c.noise_std / sqrt(cnt), "model %d residual mean %g",
                 m, sum[m] / cnt);
        XC_CHECK_CLOSE(sqrt(sq[m] / cnt), c.noise_std, 0.01, 0);
    }
    xc_synth_destroy(&s);
    free(x);
    free(codes);
    free(tdec);
}

/* Without bias and noise, a model only sees the features it has. */
static void test_one_sided_features(void)
{
    for (int side = 0; side < 2; side++) {
        xc_synth_config_t c;
        xc_synth_config_default(&c, 32);
        c.n_shared = 0;
        c.n_chat_only = side == 0 ? 10 : 0;
        c.n_base_only = side == 1 ? 10 : 0;
        c.bias_norm = 0;
        c.noise_std = 0;
        long n = 2000;
        float *x = NULL, *codes = NULL;
        int rc = gen(&c, n, &x, &codes);
        XC_REQUIRE(rc == 0, "gen: %d", rc);
        int absent = side == 0 ? 0 : 1; /* chat-only: base is empty, and vice versa */
        double zero = 0, other = 0;
        for (long t = 0; t < n; t++)
            for (int k = 0; k < 32; k++) {
                zero += fabs(x[t * 64 + absent * 32 + k]);
                other += fabs(x[t * 64 + (1 - absent) * 32 + k]);
            }
        XC_CHECK(zero == 0, "side %d: absent model has mass %g", side, zero);
        XC_CHECK(other > 0, "side %d: present model is empty", side);
        free(x);
        free(codes);
    }
}

/* Each model's directions are orthonormal, pairs have the exact cosine and the
 * 2d true decoders are mutually orthogonal. */
static void check_ortho(const xc_synth_config_t *c, const char *name)
{
    int err = 0, d = c->d;
    xc_synth_t *s = xc_synth_new(c, &err);
    XC_REQUIRE(s, "%s: new: %d", name, err);
    XC_CHECK(xc_synth_orthonormal(s) == 1, "%s: not built orthonormal", name);
    int nf = xc_synth_n_features(s), bad = 0;
    float *t = malloc((size_t)nf * 2 * d * sizeof *t);
    for (int i = 0; i < nf; i++) xc_synth_true_decoder(s, i, t + (size_t)i * 2 * d);
    for (int i = 0; i < nf && !bad; i++) {
        xc_synth_feature_t fi;
        xc_synth_feature(s, i, &fi);
        XC_CHECK((fi.dir_base == NULL) == (fi.kind == XC_SYNTH_CHAT_ONLY), "%s: %d base", name, i);
        XC_CHECK((fi.dir_chat == NULL) == (fi.kind == XC_SYNTH_BASE_ONLY), "%s: %d chat", name, i);
        if (fi.kind == XC_SYNTH_SHARED || fi.kind == XC_SYNTH_SHRUNK) {
            double want = fi.kind == XC_SYNTH_SHARED ? c->shared_cos : c->shrunk_cos;
            XC_CHECK_CLOSE(dotf(fi.dir_base, fi.dir_chat, d), want, 0, 1e-5);
        }
        for (int j = i; j < nf; j++) {
            xc_synth_feature_t fj;
            xc_synth_feature(s, j, &fj);
            double want = i == j;
            int ob = !fi.dir_base || !fj.dir_base ||
                     fabs(dotf(fi.dir_base, fj.dir_base, d) - want) <= 1e-5;
            int oc = !fi.dir_chat || !fj.dir_chat ||
                     fabs(dotf(fi.dir_chat, fj.dir_chat, d) - want) <= 1e-5;
            const float *ti = t + (size_t)i * 2 * d, *tj = t + (size_t)j * 2 * d;
            int ot = i == j || fabs(dotf(ti, tj, 2 * d)) <= 1e-5;
            XC_CHECK(ob, "%s: base dirs %d,%d not orthonormal", name, i, j);
            XC_CHECK(oc, "%s: chat dirs %d,%d not orthonormal", name, i, j);
            XC_CHECK(ot, "%s: true decoders %d,%d not orthogonal", name, i, j);
            bad |= !ob || !oc || !ot;
        }
    }
    free(t);
    xc_synth_destroy(&s);
}

static void test_directions_orthonormal(void)
{
    xc_synth_config_t c;
    xc_synth_config_default(&c, 64);
    check_ortho(&c, "default");
    /* Odd pair counts leave half-used planes; shrunk pairs use their own angle. */
    xc_synth_config_default(&c, 32);
    c.n_shared = 7, c.n_shrunk = 5, c.n_base_only = 9, c.n_chat_only = 9, c.shrunk_cos = 0.8f;
    check_ortho(&c, "odd");
    /* Tight: base-only and chat-only must reuse the same basis vectors. */
    xc_synth_config_default(&c, 16);
    c.n_shared = 5, c.n_shrunk = 0, c.n_base_only = 11, c.n_chat_only = 11;
    check_ortho(&c, "tight");
    c.n_shared = 0, c.n_shrunk = 3, c.n_base_only = 14, c.n_chat_only = 2, c.d = 17;
    check_ortho(&c, "odd d");
}

/* Too many directions for d: random unit vectors, pairs still exact. */
static void test_directions_random(void)
{
    xc_synth_config_t c;
    xc_synth_config_default(&c, 16);
    c.n_shared = 40, c.n_shrunk = 8, c.n_chat_only = 5, c.n_base_only = 5, c.shrunk_cos = 0.7f;
    int err = 0;
    xc_synth_t *s = xc_synth_new(&c, &err);
    XC_REQUIRE(s, "new: %d", err);
    XC_CHECK(xc_synth_orthonormal(s) == 0, "claims orthonormal");
    for (int i = 0; i < xc_synth_n_features(s); i++) {
        xc_synth_feature_t f;
        xc_synth_feature(s, i, &f);
        if (f.dir_base) XC_CHECK_CLOSE(dotf(f.dir_base, f.dir_base, 16), 1, 0, 1e-5);
        if (f.dir_chat) XC_CHECK_CLOSE(dotf(f.dir_chat, f.dir_chat, 16), 1, 0, 1e-5);
        if (f.kind == XC_SYNTH_SHARED)
            XC_CHECK_CLOSE(dotf(f.dir_base, f.dir_chat, 16), 0.95, 0, 1e-5);
        if (f.kind == XC_SYNTH_SHRUNK) {
            XC_CHECK_CLOSE(dotf(f.dir_base, f.dir_chat, 16), 0.7, 0, 1e-5);
            XC_CHECK(f.strength_base == c.shrunk_scale && f.strength_chat == 1, "shrunk strengths");
        }
    }
    xc_synth_destroy(&s);
}

/* A dictionary holding the true decoders (scaled, shuffled, among random rows)
 * is matched exactly; delta_norm of each match reflects the feature kind. */
static void check_match(const xc_synth_config_t *c)
{
    int err = 0, d = c->d, extra = 20;
    xc_synth_t *s = xc_synth_new(c, &err);
    XC_REQUIRE(s, "new: %d", err);
    int nf = xc_synth_n_features(s), F = nf + extra;
    float *w = malloc((size_t)F * 2 * d * sizeof *w);
    int *pos = malloc((size_t)F * sizeof *pos);
    xc_synth_match_t *m = malloc((size_t)nf * sizeof *m);
    xc_rng_t r;
    xc_rng_seed(&r, 7);
    for (int j = 0; j < F; j++) pos[j] = j;
    for (int j = F - 1; j > 0; j--) {
        int k = (int)xc_rng_below(&r, (uint64_t)j + 1), t = pos[j];
        pos[j] = pos[k], pos[k] = t;
    }
    for (int j = 0; j < F; j++) { /* random rows everywhere, then the planted ones */
        float *row = w + (size_t)j * 2 * d;
        for (int k = 0; k < 2 * d; k++) row[k] = (float)xc_rng_normal(&r);
    }
    for (int i = 0; i < nf; i++) {
        float *row = w + (size_t)pos[i] * 2 * d;
        float g = (float)(0.1 + 10 * xc_rng_uniform(&r));
        xc_synth_true_decoder(s, i, row);
        for (int k = 0; k < 2 * d; k++) row[k] *= g;
    }
    int rm = xc_synth_match(s, w, F, m);
    XC_REQUIRE(rm == 0, "match: %d", rm);
    for (int i = 0; i < nf; i++) {
        xc_synth_feature_t f;
        xc_synth_feature(s, i, &f);
        XC_CHECK(m[i].latent == pos[i], "feature %d matched %d, planted at %d", i, m[i].latent,
                 pos[i]);
        XC_CHECK_CLOSE(m[i].cosine, 1, 0, 1e-5);
        double want = f.kind == XC_SYNTH_SHARED ? 0.5 : f.kind == XC_SYNTH_CHAT_ONLY ? 1
                      : f.kind == XC_SYNTH_BASE_ONLY ? 0 : 1 - c->shrunk_scale / 2;
        XC_CHECK_CLOSE(m[i].delta_norm, want, 0, 1e-5);
    }
    /* All-zero dictionary: nothing matches. */
    memset(w, 0, (size_t)F * 2 * d * sizeof *w);
    rm = xc_synth_match(s, w, F, m);
    XC_REQUIRE(rm == 0, "match zeros: %d", rm);
    XC_CHECK(m[0].latent == -1 && m[0].cosine == 0 && m[0].delta_norm == 0.5f, "zero rows matched");
    XC_CHECK(xc_synth_match(s, NULL, 0, m) == 0 && m[0].latent == -1, "F = 0");
    XC_CHECK(xc_synth_match(s, w, -1, m) == XC_EINVAL, "F < 0");
    XC_CHECK(xc_synth_match(s, NULL, 3, m) == XC_EINVAL, "NULL w_dec");
    free(w);
    free(pos);
    free(m);
    xc_synth_destroy(&s);
}

static void test_match(void)
{
    xc_synth_config_t c;
    xc_synth_config_default(&c, 64);
    c.n_shrunk = 6;
    check_match(&c); /* orthonormal */
    xc_synth_config_default(&c, 16);
    c.n_shared = 30, c.n_shrunk = 6, c.shrunk_scale = 0.4f;
    check_match(&c); /* random directions */
}

static void test_delta_norm(void)
{
    float row[8] = {0};
    XC_CHECK(xc_synth_delta_norm(row, 4) == 0.5f, "zero row");
    row[5] = 2; /* chat only */
    XC_CHECK_CLOSE(xc_synth_delta_norm(row, 4), 1, 0, 1e-7);
    row[1] = 2; /* equal norms */
    XC_CHECK_CLOSE(xc_synth_delta_norm(row, 4), 0.5, 0, 1e-7);
    row[5] = 0, row[6] = 0.5f; /* |base| 2, |chat| 0.5: 0.5 * (-1.5 / 2 + 1) */
    XC_CHECK_CLOSE(xc_synth_delta_norm(row, 4), 0.125, 0, 1e-7);
    row[6] = 0; /* base only */
    XC_CHECK_CLOSE(xc_synth_delta_norm(row, 4), 0, 0, 1e-7);
}

static void test_bad_config(void)
{
    xc_synth_config_t good, c;
    xc_synth_config_default(&good, 64);
    char why[128];
    int err = 0;
    XC_CHECK(xc_synth_config_validate(&good, why, sizeof why) == 0, "default invalid");
    XC_CHECK(xc_synth_config_validate(NULL, why, sizeof why) == XC_EINVAL, "NULL cfg");
    XC_CHECK(xc_synth_new(NULL, &err) == NULL && err == XC_EINVAL, "new(NULL)");

#define BAD(stmt)                                                                    \
    do {                                                                             \
        c = good;                                                                    \
        stmt;                                                                        \
        why[0] = 0;                                                                  \
        XC_CHECK(xc_synth_config_validate(&c, why, sizeof why) == XC_ECONFIG && why[0], \
                 "validate accepted: %s", #stmt);                                   \
        err = 0;                                                                     \
        XC_CHECK(xc_synth_new(&c, &err) == NULL && err == XC_ECONFIG, "new accepted: %s", #stmt); \
        XC_CHECK(xc_synth_new(&c, NULL) == NULL, "new(err NULL): %s", #stmt);       \
    } while (0)

    BAD(c.d = 0);
    BAD(c.d = -5);
    BAD(c.d = 1);                      /* shared features need a second direction */
    BAD(c.n_shared = -1);
    BAD(c.n_chat_only = -1);
    BAD(c.n_base_only = -3);
    BAD(c.n_shrunk = -1);
    BAD((c.n_shared = 0, c.n_chat_only = 0, c.n_base_only = 0));
    BAD(c.shared_cos = NAN);
    BAD(c.shared_cos = 1.5f);
    BAD(c.shrunk_cos = -1.01f);
    BAD(c.shrunk_scale = -0.1f);
    BAD(c.shrunk_scale = INFINITY);
    BAD(c.mean_active = 0);
    BAD(c.mean_active = NAN);
    BAD(c.mean_active = 40);           /* > max_prob * 64 */
    BAD(c.max_prob = 1);
    BAD(c.max_prob = 0);
    BAD(c.max_prob = NAN);
    BAD(c.prob_exponent = -1);
    BAD(c.prob_exponent = NAN);
    BAD(c.scale_min = 0);
    BAD(c.scale_max = 0.1f);
    BAD(c.scale_max = NAN);
    BAD(c.bias_norm = -1);
    BAD(c.bias_norm = INFINITY);
    BAD(c.noise_std = -0.1f);
    BAD(c.noise_std = NAN);
#undef BAD

    /* d = 1 is fine with single-model features only. */
    c = good;
    c.d = 1, c.n_shared = 0, c.n_chat_only = 3, c.n_base_only = 3, c.mean_active = 1;
    xc_synth_t *s = xc_synth_new(&c, &err);
    XC_CHECK(s != NULL, "d = 1 one-sided: %d", err);
    xc_synth_destroy(&s);

    /* Bad call arguments. */
    s = xc_synth_new(&good, &err);
    XC_REQUIRE(s, "new: %d", err);
    float x[128];
    xc_synth_feature_t f;
    XC_CHECK(xc_synth_generate(s, -1, x, NULL) == XC_EINVAL, "n < 0");
    XC_CHECK(xc_synth_generate(s, 1, NULL, NULL) == XC_EINVAL, "out NULL");
    XC_CHECK(xc_synth_generate(NULL, 1, x, NULL) == XC_EINVAL, "s NULL");
    XC_CHECK(xc_synth_feature(s, -1, &f) == XC_EINVAL, "feature -1");
    XC_CHECK(xc_synth_feature(s, 64, &f) == XC_EINVAL, "feature 64");
    XC_CHECK(xc_synth_true_decoder(s, 64, x) == XC_EINVAL, "true_decoder 64");
    xc_synth_destroy(&s);
}

static void test_kind_names(void)
{
    XC_CHECK(strcmp(xc_synth_kind_name(XC_SYNTH_SHARED), "shared") == 0, "shared");
    XC_CHECK(strcmp(xc_synth_kind_name(XC_SYNTH_CHAT_ONLY), "chat_only") == 0, "chat_only");
    XC_CHECK(strcmp(xc_synth_kind_name(XC_SYNTH_BASE_ONLY), "base_only") == 0, "base_only");
    XC_CHECK(strcmp(xc_synth_kind_name(XC_SYNTH_SHRUNK), "shrunk") == 0, "shrunk");
    XC_CHECK(strcmp(xc_synth_kind_name(42), "unknown") == 0, "unknown");
}

int main(void)
{
    XC_RUN(test_determinism);
    XC_RUN(test_statistics);
    XC_RUN(test_residual_is_noise);
    XC_RUN(test_one_sided_features);
    XC_RUN(test_directions_orthonormal);
    XC_RUN(test_directions_random);
    XC_RUN(test_match);
    XC_RUN(test_delta_norm);
    XC_RUN(test_bad_config);
    XC_RUN(test_kind_names);
    XC_TEST_EXIT();
}
