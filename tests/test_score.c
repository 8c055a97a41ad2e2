/* Reduced-precision encoder scoring: the candidates it returns must contain the
 * exact top-K of a brute-force fp32 scoring (every entry recomputed with the
 * reference dot product), with the same values bit for bit, on random, planted,
 * tied and outlier batches, over a sequence of calls (the cached threshold), with
 * the proven margin (the default) and the statistical one; every entry's error
 * must lie within the proven bound; a too-small margin must be redone with the
 * proven bound, too many candidates come back as XC_EAGAIN.
 * Each precision this CPU lacks is reported with the reason, never silently. */
#include "xc_config.h"
#include "xc_engine.h"
#include "xc_error.h"
#include "xc_pool.h"
#include "xc_rng.h"
#include "xc_score.h"
#include "xc_synth.h"
#include "xc_test.h"

#include <stdint.h>

enum { D2 = 256, F = 1024, B = 128, KPT = 8 };
#define K ((long)KPT * B)

typedef struct {
    long idx;
    float r;
} ent_t;

static int ent_cmp(const void *pa, const void *pb)
{
    const ent_t *a = pa, *b = pb;
    if (a->r != b->r) return a->r > b->r ? -1 : 1;
    return (a->idx > b->idx) - (a->idx < b->idx);
}

static int idx_cmp(const void *pa, const void *pb)
{
    long a = *(const long *)pa, b = *(const long *)pb;
    return (a > b) - (a < b);
}

/* The exact top-K (r > 0, ties to the lower flat index) of a list, as sorted indices. */
static long top_k(ent_t *v, long n, long *sel)
{
    long m = 0;
    for (long i = 0; i < n; i++)
        if (v[i].r > 0.0f) v[m++] = v[i];
    qsort(v, (size_t)m, sizeof *v, ent_cmp);
    long k = m < K ? m : K;
    for (long i = 0; i < k; i++) sel[i] = v[i].idx;
    qsort(sel, (size_t)k, sizeof *sel, idx_cmp);
    return k;
}

typedef struct {
    float *x, *w, *be, *sc, *work, *r_all;
    ent_t *ent;
    long *sel_a, *sel_b;
    xc_pool_t *pool;
    xc_rng_t rng;
} fix_t;

static int fix_init(fix_t *f, uint64_t seed)
{
    memset(f, 0, sizeof *f);
    f->x = malloc(sizeof(float) * B * D2);
    f->w = malloc(sizeof(float) * F * D2);
    f->be = malloc(sizeof(float) * F);
    f->sc = malloc(sizeof(float) * F);
    f->work = malloc(sizeof(float) * B * F);
    f->r_all = malloc(sizeof(float) * B * F);
    f->ent = malloc(sizeof(ent_t) * B * F);
    f->sel_a = malloc(sizeof(long) * K);
    f->sel_b = malloc(sizeof(long) * K);
    f->pool = xc_pool_new(2);
    xc_rng_seed(&f->rng, seed);
    if (!f->x || !f->w || !f->be || !f->sc || !f->work || !f->r_all || !f->ent || !f->sel_a || !f->sel_b || !f->pool)
        return -1;
    for (long i = 0; i < (long)F * D2; i++) f->w[i] = (float)(xc_rng_normal(&f->rng) / 16.0);
    for (int j = 0; j < F; j++) {
        f->be[j] = (float)(0.1 * xc_rng_normal(&f->rng));
        f->sc[j] = (float)(0.5 + xc_rng_uniform(&f->rng));
    }
    for (long i = 0; i < (long)B * D2; i++) f->x[i] = (float)xc_rng_normal(&f->rng);
    return 0;
}

static void fix_free(fix_t *f)
{
    free(f->x), free(f->w), free(f->be), free(f->sc), free(f->work), free(f->r_all), free(f->ent);
    free(f->sel_a), free(f->sel_b);
    xc_pool_destroy(&f->pool);
}

/* Brute force: every entry with the reference dot product. */
static long brute(fix_t *f)
{
    for (int b = 0; b < B; b++)
        for (int j = 0; j < F; j++) {
            float p = xc_score_dot(f->x + (size_t)b * D2, f->w + (size_t)j * D2, D2);
            float v = p + f->be[j], u = v > 0.0f ? v : 0.0f;
            long i = (long)b * F + j;
            f->r_all[i] = u * f->sc[j];
            f->ent[i] = (ent_t){i, f->r_all[i]};
        }
    return top_k(f->ent, (long)B * F, f->sel_a);
}

/* One scoring call checked against the brute force. Returns 1 on XC_EAGAIN
 * (a fallback: nothing to compare), 0 when it matched, -1 on a mismatch. */
static int check_call(xc_score_t *s, fix_t *f, const char *what, int call)
{
    const xc_score_cand_t *c;
    long n;
    int rc = xc_score_candidates(s, f->x, f->w, f->be, f->sc, K, f->work, &c, &n);
    if (rc == XC_EAGAIN) return 1;
    XC_CHECK(rc == XC_OK, "%s call %d: %s", what, call, xc_strerror(rc));
    if (rc) return -1;
    long na = brute(f);
    int bad = 0;
    for (long i = 0; i < n; i++) {
        long idx = (long)c[i].b * F + c[i].j;
        if (i > 0 && idx <= (long)c[i - 1].b * F + c[i - 1].j) bad |= 1; /* row order */
        if (c[i].r != f->r_all[idx]) bad |= 2;                             /* exact values */
        f->ent[i] = (ent_t){idx, c[i].r};
    }
    long nb = top_k(f->ent, n, f->sel_b);
    long diff = na == nb ? 0 : 1;
    for (long i = 0; !diff && i < na; i++) diff += f->sel_a[i] != f->sel_b[i];
    XC_CHECK(!bad && !diff, "%s call %d (%s): order/value flags %d, selection differs (%ld vs %ld entries)", what,
             call, xc_prec_name(xc_score_prec(s)), bad, na, nb);
    return bad || diff ? -1 : 0;
}

/* Precisions this machine runs; the others are named with the reason. */
static int precs(xc_prec_t *out)
{
    static const xc_prec_t all[] = {XC_PREC_BF16, XC_PREC_INT8};
    static int reported;
    int n = 0;
    for (int i = 0; i < 2; i++) {
        char why[256];
        if (xc_score_supported(all[i], why, sizeof why)) out[n++] = all[i];
        else if (!reported) printf("# %s not run on this machine: %s\n", xc_prec_name(all[i]), why);
    }
    reported = 1;
    return n;
}

/* Runs `calls` scoring calls with W drifting a little between them, as training does. */
static void run_case(const char *what, void (*make)(fix_t *), int calls, double max_fallback_frac)
{
    xc_prec_t p[2];
    int np = precs(p);
    for (int q = 0; q < np; q++) {
        fix_t f;
        XC_REQUIRE(fix_init(&f, 11 + q) == 0, "out of memory");
        char why[256] = "";
        int err;
        xc_score_t *s = xc_score_new(p[q], B, D2, F, f.pool, &err, why, sizeof why);
        XC_REQUIRE(s, "%s scorer: %s (%s)", xc_prec_name(p[q]), xc_strerror(err), why);
        int fallbacks = 0, mism = 0;
        double cand = 0;
        for (int call = 0; call < calls; call++) {
            make(&f);
            int r = check_call(s, &f, what, call);
            fallbacks += r == 1;
            mism += r < 0;
            cand += (double)xc_score_stats(s)->candidates / K;
            for (long i = 0; i < (long)F * D2; i++) f.w[i] += (float)(xc_rng_normal(&f.rng) / 1024.0);
        }
        const xc_score_stats_t *st = xc_score_stats(s);
        printf("# %s %s (%s): %d calls, %d fallbacks, mean candidates %.2f K, outliers %d, lambda %.3f\n", what,
               xc_prec_name(p[q]), xc_score_kernel(s), calls, fallbacks, cand / calls, st->outliers, st->lambda);
        XC_CHECK(mism == 0, "%s %s: %d calls selected differently", what, xc_prec_name(p[q]), mism);
        XC_CHECK(fallbacks <= max_fallback_frac * calls, "%s %s: %d of %d calls fell back", what,
                 xc_prec_name(p[q]), fallbacks, calls);
        if (!xc_score_calibrated(s)) /* the proven bound: nothing to widen, no redo */
            XC_CHECK(st->fallbacks == 0 && st->lambda == 1.0, "%s %s: proven margin, yet %ld redos, lambda %.3f",
                     what, xc_prec_name(p[q]), st->fallbacks, st->lambda);
        else
            XC_CHECK(st->lambda < 1.0, "%s %s: the calibrated margin stayed at the proven bound", what,
                     xc_prec_name(p[q]));
        xc_score_destroy(&s);
        XC_CHECK(s == NULL, "destroy clears the handle");
        fix_free(&f);
    }
}

static void make_random(fix_t *f)
{
    for (long i = 0; i < (long)B * D2; i++) f->x[i] = (float)xc_rng_normal(&f->rng);
}

/* Each token = a few latents' encoder rows with large coefficients + noise:
 * a clear top and a dense band of near-ties below it. */
static void make_planted(fix_t *f)
{
    for (int b = 0; b < B; b++) {
        float *x = f->x + (size_t)b * D2;
        for (int i = 0; i < D2; i++) x[i] = (float)(0.3 * xc_rng_normal(&f->rng));
        for (int a = 0; a < 4; a++) {
            int j = (int)(xc_rng_u64(&f->rng) % F);
            float c = (float)(2.0 + 3.0 * xc_rng_uniform(&f->rng));
            for (int i = 0; i < D2; i++) x[i] += c * 16.0f * f->w[(size_t)j * D2 + i];
        }
    }
}

/* 8 dimensions 20x (and two 100x) the rest, as LM residual streams have. */
static void make_outliers(fix_t *f)
{
    make_random(f);
    for (int b = 0; b < B; b++)
        for (int o = 0; o < 10; o++) f->x[(size_t)b * D2 + 7 + 23 * o] *= o < 8 ? 20.0f : 100.0f;
}

/* Half the tokens repeated: exact ties between rows, broken by the lower index. */
static void make_ties(fix_t *f)
{
    make_random(f);
    memcpy(f->x + (size_t)(B / 2) * D2, f->x, sizeof(float) * (size_t)(B / 2) * D2);
}

/* The proven bound, entry by entry: after a call, every entry's approximate
 * pre-activation P~ (left in the work buffer) is within xc_score_entry_bound of
 * the exact product, in double and as the reference fp32 dot product, on random,
 * planted, outlier and tied batches, at d2 = 256 and at a wider d2 = 1536 (the
 * bound's looseness grows like sqrt(d2)). The largest and mean ratio are
 * printed: the bound is worst-case, so typical errors sit well inside it. */
static void bound_case(xc_prec_t p, int d2, int kind, xc_pool_t *pool, xc_rng_t *r)
{
    static const char *names[] = {"random", "planted", "outliers", "ties"};
    const int nb = 64, nf = 256;
    const long kk = 8L * nb;
    float *x = malloc(sizeof(float) * (size_t)nb * d2), *w = malloc(sizeof(float) * (size_t)nf * d2);
    float *be = malloc(sizeof(float) * nf), *sc = malloc(sizeof(float) * nf), *work = malloc(sizeof(float) * nb * nf);
    XC_REQUIRE(x && w && be && sc && work, "out of memory");
    for (long i = 0; i < (long)nf * d2; i++) w[i] = (float)(xc_rng_normal(r) / 16.0);
    for (int j = 0; j < nf; j++) be[j] = (float)(0.1 * xc_rng_normal(r)), sc[j] = 1.0f;
    for (long i = 0; i < (long)nb * d2; i++) x[i] = (float)xc_rng_normal(r);
    for (int b = 0; b < nb; b++) {
        float *xb = x + (size_t)b * d2;
        if (kind == 1) /* planted: a few encoder rows with large coefficients over small noise */
            for (int a = 0; a < 4; a++) {
                int j = (int)(xc_rng_u64(r) % nf);
                float cf = (float)(2.0 + 3.0 * xc_rng_uniform(r));
                for (int i = 0; i < d2; i++) xb[i] = (a ? xb[i] : 0.3f * xb[i]) + cf * 16.0f * w[(size_t)j * d2 + i];
            }
        if (kind == 2)
            for (int o = 0; o < 10; o++) xb[7 + 23 * o] *= o < 8 ? 20.0f : 100.0f;
        if (kind == 3 && b >= nb / 2) memcpy(xb, x + (size_t)(b - nb / 2) * d2, sizeof(float) * (size_t)d2);
    }
    int err;
    xc_score_t *s = xc_score_new(p, nb, d2, nf, pool, &err, NULL, 0);
    XC_REQUIRE(s, "%s scorer: %s", xc_prec_name(p), xc_strerror(err));
    const xc_score_cand_t *c;
    long n;
    int rc = xc_score_candidates(s, x, w, be, sc, kk, work, &c, &n);
    XC_CHECK(rc == XC_OK || rc == XC_EAGAIN, "%s %s: %s", names[kind], xc_prec_name(p), xc_strerror(rc));
    double worst = 0, worst_f = 0, sum = 0;
    long bad = 0;
    for (int b = 0; b < nb; b++)
        for (int j = 0; j < nf; j++) {
            const float *xb = x + (size_t)b * d2, *wj = w + (size_t)j * d2;
            double pd = 0;
            for (int i = 0; i < d2; i++) pd += (double)xb[i] * wj[i];
            double pf = xc_score_dot(xb, wj, d2), pa = work[(size_t)b * nf + j];
            double dl = xc_score_entry_bound(s, b, j);
            double e = fabs(pd - pa) / dl, ef = fabs(pf - pa) / dl;
            bad += !(e <= 1.0 && ef <= 1.0 && dl > 0);
            worst = fmax(worst, e), worst_f = fmax(worst_f, ef);
            sum += e;
        }
    printf("# bound %s %s d2=%d: max |P - P~| / bound %.3f (double), %.3f (fp32 dot), mean %.4f; %d outlier dims\n",
           names[kind], xc_prec_name(p), d2, worst, worst_f, sum / ((double)nb * nf), xc_score_stats(s)->outliers);
    XC_CHECK(bad == 0, "%s %s d2=%d: %ld entries outside the proven bound (worst %.3f)", names[kind], xc_prec_name(p),
             d2, bad, fmax(worst, worst_f));
    XC_CHECK(worst > 0, "%s %s: no error at all (the product is not at reduced precision?)", names[kind],
             xc_prec_name(p));
    xc_score_destroy(&s);
    free(x), free(w), free(be), free(sc), free(work);
}

static void test_bound(void)
{
    xc_prec_t p[2];
    int np = precs(p);
    xc_pool_t *pool = xc_pool_new(2);
    xc_rng_t r;
    xc_rng_seed(&r, 41);
    XC_REQUIRE(pool, "pool");
    for (int q = 0; q < np; q++)
        for (int d2 = 256; d2 <= 1536; d2 += 1280)
            for (int kind = 0; kind < 4; kind++) bound_case(p[q], d2, kind, pool, &r);
    xc_pool_destroy(&pool);
}

static void test_random(void) { run_case("random", make_random, 12, 0.25); }
/* The statistical margin (int8, XC_SCORE_MARGIN=calibrated), kept for comparison:
 * still exact on these batches, with fewer candidates. */
static void test_calibrated(void)
{
    setenv("XC_SCORE_MARGIN", "calibrated", 1);
    run_case("calibrated random", make_random, 12, 0.25);
    run_case("calibrated outliers", make_outliers, 12, 0.25);
    unsetenv("XC_SCORE_MARGIN");
}
static void test_planted(void) { run_case("planted", make_planted, 12, 0.25); }
static void test_outliers(void) { run_case("outliers", make_outliers, 12, 0.25); }
static void test_ties(void) { run_case("ties", make_ties, 8, 0.25); }

/* A margin far below the measured errors must be caught: XC_EAGAIN, counted. */
static void test_fallback_forced(void)
{
    xc_prec_t p[2];
    int np = precs(p);
    for (int q = 0; q < np; q++) {
        fix_t f;
        XC_REQUIRE(fix_init(&f, 5) == 0, "out of memory");
        int err;
        xc_score_t *s = xc_score_new(p[q], B, D2, F, f.pool, &err, NULL, 0);
        XC_REQUIRE(s, "%s scorer: %s", xc_prec_name(p[q]), xc_strerror(err));
        /* each call's check fails, its candidates are taken again with the proven
         * bound, and the selection is still exact */
        xc_score_force_lambda(s, 1e-5);
        int ok = 0;
        for (int call = 0; call < 3; call++) {
            make_random(&f);
            ok += check_call(s, &f, "tiny margin", call) == 0;
        }
        XC_CHECK(ok == 3 && xc_score_stats(s)->fallbacks == 3 && xc_score_stats(s)->fp32_calls == 0,
                 "%s: %d of 3 exact, %ld fallbacks with a tiny margin", xc_prec_name(p[q]), ok,
                 xc_score_stats(s)->fallbacks);
        xc_score_destroy(&s);
        /* a candidate limit below K: every call hands the batch back to fp32, and
         * the scorer backs off: after a failed call the next 1, then 2, then 4
         * calls return at once (8 calls: 3 tried, each with the full pass) */
        setenv("XC_SCORE_CAND_LIMIT", "0.5", 1);
        s = xc_score_new(p[q], B, D2, F, f.pool, &err, NULL, 0);
        unsetenv("XC_SCORE_CAND_LIMIT");
        XC_REQUIRE(s, "%s scorer: %s", xc_prec_name(p[q]), xc_strerror(err));
        const xc_score_cand_t *c;
        long n;
        int eagain = 0;
        for (int call = 0; call < 8; call++) {
            make_random(&f);
            eagain += xc_score_candidates(s, f.x, f.w, f.be, f.sc, K, f.work, &c, &n) == XC_EAGAIN;
        }
        XC_CHECK(eagain == 8 && xc_score_stats(s)->fp32_calls == 8 && xc_score_stats(s)->full_passes == 3,
                 "%s: %d of 8 calls handed back to fp32, %ld tried", xc_prec_name(p[q]), eagain,
                 xc_score_stats(s)->full_passes);
        xc_score_destroy(&s);
        fix_free(&f);
    }
}

static void test_dispatch(void)
{
    xc_prec_t p;
    XC_CHECK(xc_prec_parse("int8", &p) == 0 && p == XC_PREC_INT8, "parse int8");
    XC_CHECK(xc_prec_parse("bf16", &p) == 0 && p == XC_PREC_BF16, "parse bf16");
    XC_CHECK(xc_prec_parse("auto", &p) == 0 && p == XC_PREC_AUTO, "parse auto");
    XC_CHECK(xc_prec_parse("fp16", &p) == XC_EINVAL, "fp16 is rejected");
    XC_CHECK(xc_score_resolve(XC_PREC_FP32) == XC_PREC_FP32, "fp32 stays fp32");
    xc_prec_t a = xc_score_resolve(XC_PREC_AUTO);
    int i8 = xc_score_supported(XC_PREC_INT8, NULL, 0), bf = xc_score_supported(XC_PREC_BF16, NULL, 0);
    XC_CHECK(a == (i8 ? XC_PREC_INT8 : bf ? XC_PREC_BF16 : XC_PREC_FP32), "auto resolved to %s", xc_prec_name(a));
    XC_CHECK(xc_score_resolve(XC_PREC_BF16) == (bf ? XC_PREC_BF16 : XC_PREC_FP32), "bf16 request");
    printf("# oneDNN isa %s: auto = %s\n", xc_score_isa(), xc_prec_name(a));
    /* a scorer for an unsupported or non-reduced precision is refused with a reason */
    xc_pool_t *pool = xc_pool_new(1);
    char why[256] = "";
    int err = 0;
    xc_score_t *s = xc_score_new(XC_PREC_FP32, 4, 4, 4, pool, &err, why, sizeof why);
    XC_CHECK(!s && err == XC_EINVAL && why[0], "fp32 scorer refused: %d '%s'", err, why);
    if (!i8) {
        s = xc_score_new(XC_PREC_INT8, 4, 4, 4, pool, &err, why, sizeof why);
        XC_CHECK(!s && err == XC_EINVAL && strstr(why, "int8"), "int8 refused here: '%s'", why);
    }
    xc_pool_destroy(&pool);
}

/* The reference dot product against a plain double sum. */
static void test_dot(void)
{
    xc_rng_t r;
    xc_rng_seed(&r, 3);
    float a[1000], b[1000];
    for (int i = 0; i < 1000; i++) a[i] = (float)xc_rng_normal(&r), b[i] = (float)xc_rng_normal(&r);
    for (int n = 1; n <= 1000; n += 37) {
        double s = 0;
        for (int i = 0; i < n; i++) s += (double)a[i] * b[i];
        XC_CHECK_CLOSE(xc_score_dot(a, b, n), (float)s, 1e-5, 1e-5 * sqrt(n));
    }
}


/* ------------------------------------------------------------------ engine steps */

enum { ED = 32, EF = 512, EB = 128, EK = 8 };

static xc_engine_t *mk_engine(xc_prec_t p)
{
    xc_engine_config_t c;
    xc_cfg_engine_defaults(&c, XC_MODEL_BATCHTOPK);
    c.d = ED, c.dict_size = EF, c.batch_size = EB, c.k = EK;
    c.threads = 2, c.seed = 7, c.warmup_steps = 10, c.lr = 1e-3f;
    c.dead_tokens = 20L * EB; /* AuxK runs within the test */
    c.threshold_start_step = 50;
    c.encoder_precision = p;
    int err;
    return xc_engine_new(&c, &err);
}

typedef struct {
    int kind; /* 0 random, 1 planted features (xc_synth), 2 outlier dimensions */
    xc_synth_t *syn;
    xc_rng_t rng;
} gen_t;

static void gen_batch(gen_t *g, float *x)
{
    long n = (long)EB * 2 * ED;
    if (g->kind == 1) {
        xc_synth_generate(g->syn, EB, x, NULL);
        return;
    }
    for (long i = 0; i < n; i++) x[i] = (float)xc_rng_normal(&g->rng);
    if (g->kind == 2)
        for (int b = 0; b < EB; b++)
            for (int o = 0; o < 8; o++) x[(size_t)b * 2 * ED + 3 + 7 * o] *= 20.0f;
}

static double max_rel_diff(const float *a, const float *b, size_t n)
{
    double md = 0, ma = 0;
    for (size_t i = 0; i < n; i++) {
        md = fmax(md, fabs((double)a[i] - b[i]));
        ma = fmax(ma, fabs((double)b[i]));
    }
    return ma > 0 ? md / ma : md;
}

/* Entries in one step's selection and not the other's. */
static long sel_diff(const xc_engine_t *a, const xc_engine_t *b)
{
    const long *ra, *rb;
    const int *ca, *cb;
    const float *va, *vb;
    long na = xc_engine_selection(a, &ra, &ca, &va), nb = xc_engine_selection(b, &rb, &cb, &vb), d = 0;
    if (na != nb) return labs(na - nb) + 1;
    for (int t = 0; t < EB; t++) {
        long i = ra[t], j = rb[t];
        while (i < ra[t + 1] || j < rb[t + 1]) {
            if (j >= rb[t + 1] || (i < ra[t + 1] && ca[i] < cb[j])) d++, i++;
            else if (i >= ra[t + 1] || cb[j] < ca[i]) d++, j++;
            else i++, j++;
        }
    }
    return d;
}

/* An fp32 engine and a reduced-precision one trained in lockstep on the same
 * batches: the same selection every step and the same parameters within fp32
 * rounding; every 10th step the reduced selection is also checked against the
 * exact arithmetic (xc_engine_selection_check: 0 mismatches). */
static void lockstep(int kind, const char *what, int steps, int forced)
{
    xc_prec_t p[2];
    int np = precs(p);
    for (int q = 0; q < np; q++) {
        gen_t g = {kind, NULL, {{0}}};
        xc_rng_seed(&g.rng, 21);
        if (kind == 1) {
            xc_synth_config_t sc;
            xc_synth_config_default(&sc, ED);
            sc.seed = 5;
            int err;
            g.syn = xc_synth_new(&sc, &err);
            XC_REQUIRE(g.syn, "synth: %s", xc_strerror(err));
        }
        xc_engine_t *e0 = mk_engine(XC_PREC_FP32), *e1 = mk_engine(p[q]);
        float *x = malloc(sizeof(float) * EB * 2 * ED);
        XC_REQUIRE(e0 && e1 && x, "engines");
        XC_CHECK(xc_engine_metrics(e1)->precision == p[q], "%s engine runs %s", xc_prec_name(p[q]),
                 xc_prec_name(xc_engine_metrics(e1)->precision));
        long diff_steps = 0, diff_entries = 0, mism = 0, ties = 0, checked = 0;
        for (int st = 0; st < steps; st++) {
            gen_batch(&g, x);
            if (st % 10 == 5) {
                long differ, mm;
                int fb;
                XC_CHECK(xc_engine_selection_check(e1, x, EB, &differ, &mm, &fb) == XC_OK, "check");
                mism += mm, ties += differ - mm, checked += !fb;
            }
            int r0 = xc_engine_train_step(e0, x, EB), r1 = xc_engine_train_step(e1, x, EB);
            XC_REQUIRE(r0 == 0 && r1 == 0, "step %d: %d %d", st, r0, r1);
            long d = sel_diff(e0, e1);
            diff_steps += d > 0;
            diff_entries += d;
        }
        xc_engine_params_t a, b;
        xc_engine_params(e0, &a);
        xc_engine_params(e1, &b);
        size_t nw = (size_t)EF * 2 * ED;
        double dw = fmax(max_rel_diff(b.w_enc, a.w_enc, nw), max_rel_diff(b.w_dec, a.w_dec, nw));
        double db = fmax(max_rel_diff(b.b_enc, a.b_enc, EF), max_rel_diff(b.b_dec, a.b_dec, 2 * ED));
        const xc_engine_metrics_t *m = xc_engine_metrics(e1);
        printf("# engine %s %s: %d steps, %ld with a different selection (%ld entries), %ld/%ld reduced steps "
               "fell back (%ld to fp32), outliers %d, dead %d; exact check on %ld steps: %ld mismatches, %ld fp32 rounding ties; "
               "max param diff %.2e (w) %.2e (b)\n",
               what, xc_prec_name(p[q]), steps, diff_steps, diff_entries, m->score_fallbacks, m->score_steps,
               m->score_fp32_steps, m->score_outliers, m->n_dead, checked, mism, ties, dw, db);
        XC_CHECK(mism == 0, "%s %s: %ld selection mismatches in exact arithmetic", what, xc_prec_name(p[q]), mism);
        XC_CHECK(checked > 0, "%s %s: every checked step fell back", what, xc_prec_name(p[q]));
        XC_CHECK(diff_steps == 0, "%s %s: %ld of %d steps selected differently from fp32", what,
                 xc_prec_name(p[q]), diff_steps, steps);
        XC_CHECK(dw < 1e-4 && db < 1e-4, "%s %s: parameters drifted from fp32: %.2e %.2e", what,
                 xc_prec_name(p[q]), dw, db);
        if (forced)
            XC_CHECK(m->score_fallbacks == m->score_steps, "%s %s: %ld of %ld steps fell back", what,
                     xc_prec_name(p[q]), m->score_fallbacks, m->score_steps);
        else
            XC_CHECK(m->score_steps > 0 && m->score_fallbacks < m->score_steps / 4,
                     "%s %s: %ld of %ld steps fell back", what, xc_prec_name(p[q]), m->score_fallbacks,
                     m->score_steps);
        XC_CHECK(m->score_fp32_steps == 0, "%s %s: %ld steps scored in fp32", what, xc_prec_name(p[q]),
                 m->score_fp32_steps);
        free(x);
        xc_engine_destroy(&e0);
        xc_engine_destroy(&e1);
        xc_synth_destroy(&g.syn);
    }
}

static void test_engine_random(void) { lockstep(0, "random", 300, 0); }
static void test_engine_planted(void) { lockstep(1, "planted", 300, 0); }
static void test_engine_outliers(void) { lockstep(2, "outliers", 300, 0); }

/* A margin far too small: every step's check fails and takes its candidates
 * again with the proven bound; the run still matches fp32. */
static void test_engine_margin_forced(void)
{
    setenv("XC_SCORE_LAMBDA", "1e-7", 1);
    lockstep(0, "forced margin", 60, 1);
    unsetenv("XC_SCORE_LAMBDA");
}

/* Too many candidates: every step is scored by the fp32 product, so the run is
 * the fp32 run bit for bit. */
static void test_engine_fallback_bit_exact(void)
{
    xc_prec_t p[2];
    int np = precs(p);
    for (int q = 0; q < np; q++) {
        setenv("XC_SCORE_CAND_LIMIT", "0.5", 1);
        xc_engine_t *e1 = mk_engine(p[q]);
        unsetenv("XC_SCORE_CAND_LIMIT");
        xc_engine_t *e0 = mk_engine(XC_PREC_FP32);
        float *x = malloc(sizeof(float) * EB * 2 * ED);
        XC_REQUIRE(e0 && e1 && x, "engines");
        gen_t g = {0, NULL, {{0}}};
        xc_rng_seed(&g.rng, 9);
        for (int st = 0; st < 30; st++) {
            gen_batch(&g, x);
            XC_REQUIRE(xc_engine_train_step(e0, x, EB) == 0 && xc_engine_train_step(e1, x, EB) == 0, "step");
        }
        xc_engine_params_t a, b;
        xc_engine_params(e0, &a);
        xc_engine_params(e1, &b);
        size_t nw = (size_t)EF * 2 * ED;
        const xc_engine_metrics_t *m = xc_engine_metrics(e1);
        XC_CHECK(m->score_fp32_steps == 30 && m->score_steps == 30, "%s: %ld of %ld steps scored in fp32",
                 xc_prec_name(p[q]), m->score_fp32_steps, m->score_steps);
        XC_CHECK(!memcmp(a.w_enc, b.w_enc, nw * 4) && !memcmp(a.w_dec, b.w_dec, nw * 4) &&
                     !memcmp(a.b_enc, b.b_enc, EF * 4),
                 "%s: the fallback run differs from the fp32 run", xc_prec_name(p[q]));
        free(x);
        xc_engine_destroy(&e0);
        xc_engine_destroy(&e1);
    }
}

/* The L1 model and unsupported requests run fp32, saying why. */
static void test_engine_precision_switch(void)
{
    xc_engine_t *e = mk_engine(XC_PREC_FP32);
    XC_REQUIRE(e, "engine");
    char why[256] = "";
    XC_CHECK(xc_engine_set_precision(e, XC_PREC_AUTO, why, sizeof why) == 0, "auto");
    XC_CHECK(xc_engine_metrics(e)->precision == xc_score_resolve(XC_PREC_AUTO), "auto runs %s",
             xc_prec_name(xc_engine_metrics(e)->precision));
    printf("# auto: %s (%s)\n", xc_prec_name(xc_engine_metrics(e)->precision), xc_engine_score_kernel(e));
    XC_CHECK(xc_engine_set_precision(e, XC_PREC_FP32, why, sizeof why) == 0 &&
                 xc_engine_metrics(e)->precision == XC_PREC_FP32 &&
                 !strcmp(xc_engine_score_kernel(e), "openblas sgemm"),
             "back to fp32");
    XC_CHECK(xc_engine_set_precision(e, (xc_prec_t)9, why, sizeof why) == XC_EINVAL, "bad precision refused");
    xc_engine_destroy(&e);
    xc_engine_config_t c;
    xc_cfg_engine_defaults(&c, XC_MODEL_L1);
    c.encoder_precision = XC_PREC_AUTO;
    int err;
    e = xc_engine_new(&c, &err);
    XC_REQUIRE(e, "L1 engine");
    why[0] = 0;
    xc_engine_set_precision(e, XC_PREC_INT8, why, sizeof why);
    XC_CHECK(xc_engine_metrics(e)->precision == XC_PREC_FP32 && why[0], "L1 stays fp32: '%s'", why);
    xc_engine_destroy(&e);
}

int main(void)
{
    XC_RUN(test_dispatch);
    XC_RUN(test_dot);
    XC_RUN(test_bound);
    XC_RUN(test_random);
    XC_RUN(test_planted);
    XC_RUN(test_outliers);
    XC_RUN(test_ties);
    XC_RUN(test_calibrated);
    XC_RUN(test_fallback_forced);
    XC_RUN(test_engine_precision_switch);
    XC_RUN(test_engine_fallback_bit_exact);
    XC_RUN(test_engine_margin_forced);
    XC_RUN(test_engine_random);
    XC_RUN(test_engine_planted);
    XC_RUN(test_engine_outliers);
    XC_TEST_EXIT();
}
