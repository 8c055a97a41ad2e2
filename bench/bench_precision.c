/* Encoder precision benchmark: what reduced-precision scoring buys, and how the
 * cost of a step grows with the work. In one run:
 *   1. the machine: CPU model, its vector ISA, oneDNN's ISA, the precision `auto`
 *      picks, and the peak of each product (best GFLOP/s of the raw matmul at the
 *      reference shape: OpenBLAS sgemm, oneDNN bf16 / int8) and the memory bandwidth
 *      (a triad over 3 x 256 MB), all measured here;
 *   2. the reference shape (d=768, F=16384, k=64, B=2048): an fp32 engine and a
 *      reduced-precision one (auto) trained on the same batches, steps alternating
 *      between them so load from other processes hits both alike: tokens/s of
 *      each, the speed-up, the fraction of reduced steps that fell back to fp32,
 *      and on every 4th step the selection re-run in fp32 and compared
 *      (xc_engine_selection_check: mismatches in exact arithmetic must be 0);
 *   3. the sweep d in {256, 768, 2304} x dict_size in {4k, 16k, 64k} x threads {1, 2}
 *      for fp32 and auto: per phase ms, and each phase's fraction of its own
 *      bound (encoder: GFLOP/s / the peak of its precision; Adam: bytes moved / s
 *      over the measured bandwidth), so the limiting phase of each shape shows;
 *   4. the paper's shape (d=2304, F=73728, k=100, B=2048), fewer steps: fp32 then auto
 *      on one engine (two do not fit in memory).
 * Data: planted low-rank structure plus noise, with 8 outlier dimensions 20x the
 * rest (as LM residual streams have). Each figure names the kernel it used.
 * Usage: bench_precision [ref_steps]; XC_BENCH_QUICK=1: fewer steps, a smaller
 * sweep, no paper shape; XC_BENCH_PAPER=0 skips the paper shape, XC_BENCH_SWEEP=0
 * the sweep. */
#include "xc_config.h"
#include "xc_engine.h"
#include "xc_error.h"
#include "xc_pool.h"
#include "xc_rng.h"
#include "xc_score.h"
#include "xc_bench.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) { return xc_bench_now_s(); }

static double median(double *v, int n) { return xc_bench_median(v, n); }

/* The 1-minute load average (other processes share the cores: read ratios). */
static double loadavg(void)
{
    double l = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f && fscanf(f, "%lf", &l) != 1) l = -1;
    if (f) fclose(f);
    return l;
}

/* ---------------------------------------------------------------- the machine */

static void print_cpu(void)
{
    char model[256], isa[1024];
    int ncpu;
    xc_bench_cpu(model, sizeof model, isa, sizeof isa, &ncpu);
    fprintf(stderr, "cpu: %s (%d logical CPUs)\nisa: %s\noneDNN isa: %s; encoder_precision auto = %s; load average %.2f\n",
            model, ncpu, isa, xc_score_isa(), xc_prec_name(xc_score_resolve(XC_PREC_AUTO)), loadavg());
    printf("{\"bench\":\"precision_machine\",\"cpu\":\"%s\",\"isa\":\"%s\",\"onednn_isa\":\"%s\",\"auto\":\"%s\","
           "\"loadavg\":%.2f}\n",
           model, isa, xc_score_isa(), xc_prec_name(xc_score_resolve(XC_PREC_AUTO)), loadavg());
}

typedef struct {
    int B, K, F;
    const float *x, *w;
    float *c;
    float *a, *b2, *c2;
    size_t n;
} job_t;

static void gemm_task(void *ctx, int tid, int nth)
{
    job_t *g = ctx;
    long lo, hi;
    xc_pool_range(g->F, tid, nth, &lo, &hi);
    if (hi > lo)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g->B, (int)(hi - lo), g->K, 1.0f, g->x, g->K,
                    g->w + (size_t)lo * g->K, g->K, 0.0f, g->c + lo, g->F);
}

static void triad_task(void *ctx, int tid, int nth)
{
    job_t *g = ctx;
    long lo, hi;
    xc_pool_range((long)g->n, tid, nth, &lo, &hi);
    for (long i = lo; i < hi; i++) g->a[i] = g->b2[i] + 0.5f * g->c2[i];
}

/* Memory bandwidth (GB/s) of a triad a = b + s c over 3 x 256 MB: 3 arrays moved. */
static double bandwidth(xc_pool_t *pool)
{
    job_t g = {0};
    g.n = (size_t)64 << 20;
    g.a = malloc(g.n * 4), g.b2 = malloc(g.n * 4), g.c2 = malloc(g.n * 4);
    if (!g.a || !g.b2 || !g.c2) return 0;
    for (size_t i = 0; i < g.n; i++) g.a[i] = 0, g.b2[i] = 1, g.c2[i] = 2;
    double best = 1e30;
    for (int r = 0; r < 4; r++) {
        double t = now_s();
        xc_pool_run(pool, triad_task, &g);
        t = now_s() - t;
        if (t < best) best = t;
    }
    free(g.a), free(g.b2), free(g.c2);
    return 3.0 * g.n * 4 / best / 1e9;
}

/* Peak GFLOP/s of one precision's raw product at B x d2 x F, best of reps:
 * sgemm split over the pool as the engine runs it, or the scorer's oneDNN matmul. */
static double peak_gflops(xc_prec_t p, xc_pool_t *pool, int B, int d2, int F, int reps, char *kernel, size_t kl)
{
    float *x = malloc(sizeof(float) * (size_t)B * d2), *w = malloc(sizeof(float) * (size_t)F * d2);
    float *c = malloc(sizeof(float) * (size_t)B * F), *be = calloc((size_t)F, 4), *sc = malloc(4 * (size_t)F);
    xc_rng_t r;
    xc_rng_seed(&r, 1);
    for (size_t i = 0; i < (size_t)B * d2; i++) x[i] = (float)xc_rng_normal(&r);
    for (size_t i = 0; i < (size_t)F * d2; i++) w[i] = (float)xc_rng_normal(&r) * 0.03f;
    for (int j = 0; j < F; j++) sc[j] = 1.0f;
    double best = 1e30;
    if (p == XC_PREC_FP32) {
        job_t g = {B, d2, F, x, w, c, NULL, NULL, NULL, 0};
        for (int i = 0; i < reps + 1; i++) {
            double t = now_s();
            xc_pool_run(pool, gemm_task, &g);
            t = now_s() - t;
            if (i > 0 && t < best) best = t;
        }
        snprintf(kernel, kl, "openblas sgemm");
    } else {
        int err;
        xc_score_t *s = xc_score_new(p, B, d2, F, pool, &err, NULL, 0);
        if (s) {
            const xc_score_cand_t *cd;
            long n;
            for (int i = 0; i < reps + 1; i++) {
                xc_score_candidates(s, x, w, be, sc, 64L * B, c, &cd, &n);
                double t = xc_score_stats(s)->ms_matmul / 1e3;
                if (i > 0 && t < best) best = t;
            }
            snprintf(kernel, kl, "%s", xc_score_kernel(s));
            xc_score_destroy(&s);
        }
    }
    free(x), free(w), free(c), free(be), free(sc);
    return best < 1e30 ? 2.0 * B * d2 * (double)F / best / 1e9 : 0;
}

/* ---------------------------------------------------------------- data */

typedef struct {
    int d2, rank;
    float *basis;
    xc_rng_t r;
} data_t;

static void data_init(data_t *g, int d, uint64_t seed)
{
    g->d2 = 2 * d;
    g->rank = 64;
    g->basis = malloc(sizeof(float) * (size_t)g->rank * g->d2);
    xc_rng_seed(&g->r, seed);
    for (size_t i = 0; i < (size_t)g->rank * g->d2; i++) g->basis[i] = (float)xc_rng_normal(&g->r);
}

/* Tokens: 4 of the planted directions with random weights, noise, and 8
 * dimensions 20x the rest. */
static void data_batch(data_t *g, float *x, int B)
{
    for (int t = 0; t < B; t++) {
        float *row = x + (size_t)t * g->d2;
        for (int i = 0; i < g->d2; i++) row[i] = (float)(0.1 * xc_rng_normal(&g->r));
        for (int q = 0; q < 4; q++) {
            int z = (int)xc_rng_below(&g->r, (uint64_t)g->rank);
            float a = (float)xc_rng_uniform(&g->r);
            for (int i = 0; i < g->d2; i++) row[i] += a * g->basis[(size_t)z * g->d2 + i];
        }
        for (int o = 0; o < 8; o++) row[5 + o * (g->d2 / 8)] *= 20.0f;
    }
}

static xc_engine_t *mk(int d, int F, int k, int B, int threads, xc_prec_t p)
{
    xc_engine_config_t c;
    xc_cfg_engine_defaults(&c, XC_MODEL_BATCHTOPK);
    c.d = d, c.dict_size = F, c.k = k, c.batch_size = B, c.seed = 1, c.warmup_steps = 10;
    c.threads = threads;
    c.encoder_precision = p;
    int err;
    xc_engine_t *e = xc_engine_new(&c, &err);
    if (!e) fprintf(stderr, "bench: cannot create engine d=%d F=%d (%s)\n", d, F, xc_strerror(err));
    return e;
}

/* Adam's bytes per step: w_enc and w_dec with their moments, read p m v g, write
 * p m v (28 B per value), the decoder norms read w_dec once more; b_enc aside. */
static double adam_bytes(int d, int F) { return (double)F * 2 * d * (2 * 28.0 + 4.0); }

static long mem_available_mb(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %ld kB", &kb) == 1) break;
    if (f) fclose(f);
    return kb / 1024;
}

static double engine_mb(int d, int F, int B)
{
    double n = (double)F * 2 * d;
    return (8 * n * 4 + (double)B * F * 4 * 1.1 + n) / 1e6; /* params, moments, grads; pre; scorer */
}

/* ---------------------------------------------------------------- 2. reference shape */

static double peak[4][3]; /* [precision][threads] GFLOP/s */
static double bw[3];      /* [threads] GB/s */

static int reference(int steps)
{
    const int d = 768, F = 16384, k = 64, B = 2048;
    /* fp32; reduced with the proven bound (the default); reduced with the
     * statistical margin (XC_SCORE_MARGIN=calibrated, read when the scorer is made) */
    xc_engine_t *en[3];
    en[0] = mk(d, F, k, B, 0, XC_PREC_FP32);
    en[1] = mk(d, F, k, B, 0, XC_PREC_AUTO);
    const char *old = getenv("XC_SCORE_MARGIN");
    setenv("XC_SCORE_MARGIN", "calibrated", 1);
    en[2] = mk(d, F, k, B, 0, XC_PREC_AUTO);
    if (old) setenv("XC_SCORE_MARGIN", old, 1);
    else unsetenv("XC_SCORE_MARGIN");
    if (!en[0] || !en[1] || !en[2]) return 1;
    int nth = xc_engine_config(en[0])->threads;
    xc_prec_t p = xc_engine_metrics(en[1])->precision;
    data_t g;
    data_init(&g, d, 2);
    float *x = malloc(sizeof(float) * (size_t)B * 2 * d);
    int warm = 3;
    double *t[3], ph[3][XC_PHASE_TOTAL + 1] = {{0}}, cand[3] = {0}, cut[3] = {0};
    long differ[3] = {0}, mism[3] = {0}, checked[3] = {0}, fb0[3] = {0}, st0[3] = {0}, f320[3] = {0};
    for (int q = 0; q < 3; q++) t[q] = malloc(sizeof(double) * (size_t)steps);
    for (int s = 0; s < warm + steps; s++) {
        data_batch(&g, x, B);
        for (int q = 1; q < 3 && s == warm; q++) {
            fb0[q] = xc_engine_metrics(en[q])->score_fallbacks;
            st0[q] = xc_engine_metrics(en[q])->score_steps;
            f320[q] = xc_engine_metrics(en[q])->score_fp32_steps;
        }
        for (int q = 1; q < 3; q++)
            if (s >= warm && (s - warm) % 4 == 1) {
                long df, mm;
                int fb;
                if (xc_engine_selection_check(en[q], x, B, &df, &mm, &fb) == 0 && !fb) {
                    differ[q] += df, mism[q] += mm, checked[q]++;
                }
            }
        /* rotate which engine goes first, so none always runs in another's wake */
        for (int r = 0; r < 3; r++) {
            int q = (r + s) % 3;
            double t0 = now_s();
            if (xc_engine_train_step(en[q], x, B) != 0) {
                fprintf(stderr, "bench: step failed\n");
                return 1;
            }
            t0 = now_s() - t0;
            if (s < warm) continue;
            const xc_engine_metrics_t *m = xc_engine_metrics(en[q]);
            t[q][s - warm] = t0 * 1e3;
            for (int i = 0; i <= XC_PHASE_TOTAL; i++) ph[q][i] += m->phase_ms[i] / steps;
            cand[q] += (double)m->score_candidates / ((double)k * B) / steps;
            cut[q] += m->select_candidates / ((double)k * B) / steps;
        }
    }
    double ms[3], tps[3], fl = 2.0 * B * 2 * d * (double)F;
    for (int q = 0; q < 3; q++) ms[q] = median(t[q], steps), tps[q] = B / (ms[q] / 1e3);
    fprintf(stderr, "reference d=%d F=%d k=%d B=%d threads=%d, %d timed steps each, rotating:\n", d, F, k, B, nth,
            steps);
    fprintf(stderr,
            "  fp32 (%s): %.0f tokens/s, step %.1f ms (encode %.1f = %.0f GFLOP/s, select %.1f, decode %.1f, auxk %.1f, "
            "grad %.1f, adam %.1f)\n",
            xc_engine_score_kernel(en[0]), tps[0], ms[0], ph[0][XC_PHASE_ENCODE], fl / ph[0][XC_PHASE_ENCODE] / 1e6,
            ph[0][XC_PHASE_SELECT], ph[0][XC_PHASE_DECODE], ph[0][XC_PHASE_AUXK], ph[0][XC_PHASE_GRAD],
            ph[0][XC_PHASE_ADAM]);
    int bad = 0;
    for (int q = 1; q < 3; q++) {
        const xc_engine_metrics_t *m = xc_engine_metrics(en[q]);
        long fb = m->score_fallbacks - fb0[q], nst = m->score_steps - st0[q], f32 = m->score_fp32_steps - f320[q];
        const char *margin = q == 1 ? "proven" : "calibrated";
        fprintf(stderr,
                "  %s, %s margin (%s): %.0f tokens/s, step %.1f ms (encode %.1f = %.0f GFLOP/s, select+exact %.1f, "
                "decode %.1f, auxk %.1f, grad %.1f, adam %.1f)\n"
                "    speed-up %.2fx over fp32; recomputed %.2f k*B per step, kept %.2f k*B; %ld of %ld steps fell back "
                "(margin check failed: proven bound), %ld to the fp32 product; selection re-run in fp32 on %ld steps: "
                "%ld mismatches (exact arithmetic), %ld entries differing only by fp32 rounding ties; outlier dims %d, "
                "lambda %.3f\n",
                xc_prec_name(p), margin, xc_engine_score_kernel(en[q]), tps[q], ms[q], ph[q][XC_PHASE_ENCODE],
                fl / ph[q][XC_PHASE_ENCODE] / 1e6, ph[q][XC_PHASE_SELECT], ph[q][XC_PHASE_DECODE],
                ph[q][XC_PHASE_AUXK], ph[q][XC_PHASE_GRAD], ph[q][XC_PHASE_ADAM], tps[q] / tps[0], cand[q], cut[q],
                fb, nst, f32, checked[q], mism[q], differ[q] - mism[q], m->score_outliers, m->score_lambda);
        printf("{\"bench\":\"precision_reference\",\"d\":%d,\"dict_size\":%d,\"k\":%d,\"batch_size\":%d,\"threads\":%d,"
               "\"steps\":%d,\"fp32_kernel\":\"%s\",\"fp32_tokens_per_s\":%.1f,\"precision\":\"%s\",\"margin\":\"%s\","
               "\"kernel\":\"%s\",\"tokens_per_s\":%.1f,\"speedup\":%.3f,\"recomputed_per_kB\":%.3f,\"kept_per_kB\":%.3f,"
               "\"fallback_fraction\":%.3f,\"fp32_fraction\":%.3f,\"checked_steps\":%ld,\"mismatches\":%ld,"
               "\"rounding_ties\":%ld,\"loadavg\":%.2f}\n",
               d, F, k, B, nth, steps, xc_engine_score_kernel(en[0]), tps[0], xc_prec_name(p), margin,
               xc_engine_score_kernel(en[q]), tps[q], tps[q] / tps[0], cand[q], cut[q], nst ? (double)fb / nst : 0.0,
               nst ? (double)f32 / nst : 0.0, checked[q], mism[q], differ[q] - mism[q], loadavg());
        bad |= mism[q] != 0;
    }
    fprintf(stderr, "  proven vs calibrated margin: %.2fx the tokens/s, %.2fx the recomputed entries\n",
            tps[1] / tps[2], cand[2] > 0 ? cand[1] / cand[2] : 0.0);
    fflush(stdout);
    free(x), free(g.basis);
    for (int q = 0; q < 3; q++) free(t[q]), xc_engine_destroy(&en[q]);
    return bad;
}

/* ---------------------------------------------------------------- 3, 4. shapes */

/* One engine at (d, F, threads): `steps` timed steps at fp32, then at auto
 * (one warm-up step each); per phase ms and the fractions of their bounds. */
static int shape(const char *tag, int d, int F, int k, int B, int threads, int steps)
{
    long need = (long)engine_mb(d, F, B), avail = mem_available_mb();
    if (avail > 0 && need > 0.8 * avail) {
        fprintf(stderr, "%s d=%d F=%d threads=%d: skipped, needs ~%ld MB, %ld MB available\n", tag, d, F, threads,
                need, avail);
        printf("{\"bench\":\"precision_%s\",\"d\":%d,\"dict_size\":%d,\"threads\":%d,\"skipped\":\"memory\"}\n", tag, d,
               F, threads);
        return 0;
    }
    xc_engine_t *e = mk(d, F, k, B, threads, XC_PREC_FP32);
    if (!e) return 1;
    data_t g;
    data_init(&g, d, 3);
    float *x = malloc(sizeof(float) * (size_t)B * 2 * d);
    double fl = 2.0 * B * 2 * d * (double)F, tps_fp32 = 0;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) xc_engine_set_precision(e, XC_PREC_AUTO, NULL, 0);
        xc_prec_t p = xc_engine_metrics(e)->precision;
        double ph[XC_PHASE_TOTAL + 1] = {0}, *ms = malloc(sizeof(double) * (size_t)steps);
        for (int s = 0; s < steps + 1; s++) {
            data_batch(&g, x, B);
            double t = now_s();
            if (xc_engine_train_step(e, x, B) != 0) return 1;
            t = now_s() - t;
            if (s == 0) continue;
            ms[s - 1] = t * 1e3;
            for (int i = 0; i <= XC_PHASE_TOTAL; i++) ph[i] += xc_engine_metrics(e)->phase_ms[i] / steps;
        }
        double step = median(ms, steps), tps = B / (step / 1e3);
        double enc_gf = fl / ph[XC_PHASE_ENCODE] / 1e6, enc_frac = peak[p][threads] > 0 ? enc_gf / peak[p][threads] : 0;
        double adam_gbs = adam_bytes(d, F) / ph[XC_PHASE_ADAM] / 1e6, adam_frac = bw[threads] > 0 ? adam_gbs / bw[threads] : 0;
        const char *limit = ph[XC_PHASE_ENCODE] >= ph[XC_PHASE_ADAM] ? "encoder" : "adam";
        double rest = step - ph[XC_PHASE_ENCODE] - ph[XC_PHASE_ADAM];
        if (rest > ph[XC_PHASE_ENCODE] && rest > ph[XC_PHASE_ADAM]) limit = "sparse passes";
        if (pass == 0) tps_fp32 = tps;
        fprintf(stderr,
                "%s d=%4d F=%6d k=%3d thr=%d %-4s %-26s %8.0f tok/s  step %8.1f ms: encode %8.1f (%4.0f GFLOP/s, %.2f of peak)"
                "  select %6.1f  decode %6.1f  auxk %5.1f  grad %6.1f  adam %7.1f (%5.1f GB/s, %.2f of bw)  limit: %s  load %.1f\n",
                tag, d, F, k, threads, xc_prec_name(p), xc_engine_score_kernel(e), tps, step, ph[XC_PHASE_ENCODE], enc_gf,
                enc_frac, ph[XC_PHASE_SELECT], ph[XC_PHASE_DECODE], ph[XC_PHASE_AUXK], ph[XC_PHASE_GRAD],
                ph[XC_PHASE_ADAM], adam_gbs, adam_frac, limit, loadavg());
        if (pass == 1)
            fprintf(stderr, "%s d=%4d F=%6d thr=%d speed-up %.2fx (%ld fallbacks, %ld fp32 steps, recomputed %.2f k*B)\n",
                    tag, d, F, threads, tps / tps_fp32, xc_engine_metrics(e)->score_fallbacks,
                    xc_engine_metrics(e)->score_fp32_steps,
                    (double)xc_engine_metrics(e)->score_candidates / ((double)k * B));
        printf("{\"bench\":\"precision_%s\",\"d\":%d,\"dict_size\":%d,\"k\":%d,\"batch_size\":%d,\"threads\":%d,"
               "\"precision\":\"%s\",\"kernel\":\"%s\",\"tokens_per_s\":%.1f,\"step_ms\":%.2f,\"encode_ms\":%.2f,"
               "\"encoder_gflops\":%.1f,\"encoder_fraction_of_peak\":%.3f,\"select_ms\":%.2f,\"decode_ms\":%.2f,"
               "\"auxk_ms\":%.2f,\"grad_ms\":%.2f,\"adam_ms\":%.2f,\"adam_gbs\":%.2f,\"adam_fraction_of_bw\":%.3f,"
               "\"speedup\":%.3f,\"fallbacks\":%ld,\"recomputed_per_kB\":%.3f,\"loadavg\":%.2f}\n",
               tag, d, F, k, B, threads, xc_prec_name(p), xc_engine_score_kernel(e), tps, step, ph[XC_PHASE_ENCODE],
               enc_gf, enc_frac, ph[XC_PHASE_SELECT], ph[XC_PHASE_DECODE], ph[XC_PHASE_AUXK], ph[XC_PHASE_GRAD],
               ph[XC_PHASE_ADAM], adam_gbs, adam_frac, tps / tps_fp32, xc_engine_metrics(e)->score_fallbacks,
               pass ? (double)xc_engine_metrics(e)->score_candidates / ((double)k * B) : 0.0, loadavg());
        fflush(stdout);
        free(ms);
    }
    free(x), free(g.basis);
    xc_engine_destroy(&e);
    return 0;
}

int main(int argc, char **argv)
{
    int quick = getenv("XC_BENCH_QUICK") != NULL;
    int ref_steps = argc > 1 ? atoi(argv[1]) : (quick ? 4 : 12);
    const char *pe = getenv("XC_BENCH_PAPER"), *sw = getenv("XC_BENCH_SWEEP");
    int paper = !quick && !(pe && !strcmp(pe, "0")), sweep = !(sw && !strcmp(sw, "0"));
    openblas_set_num_threads(1);
    print_cpu();
    xc_prec_t ps[3] = {XC_PREC_FP32, XC_PREC_BF16, XC_PREC_INT8};
    for (int nth = 1; nth <= 2; nth++) {
        xc_pool_t *pool = xc_pool_new(nth);
        bw[nth] = bandwidth(pool);
        fprintf(stderr, "threads %d: memory bandwidth %.1f GB/s (triad)", nth, bw[nth]);
        for (int q = 0; q < 3; q++) {
            char kernel[96] = "", why[256];
            if (!xc_score_supported(ps[q], why, sizeof why)) {
                fprintf(stderr, "; %s not run: %s", xc_prec_name(ps[q]), why);
                continue;
            }
            peak[ps[q]][nth] = peak_gflops(ps[q], pool, 2048, 1536, 16384, 3, kernel, sizeof kernel);
            fprintf(stderr, "; %s peak %.0f GFLOP/s (%s)", xc_prec_name(ps[q]), peak[ps[q]][nth], kernel);
        }
        fprintf(stderr, "\n");
        xc_pool_destroy(&pool);
    }
    if (reference(ref_steps)) return 1;
    static const int ds[3] = {256, 768, 2304}, Fs[3] = {4096, 16384, 65536};
    for (int a = 0; a < (!sweep ? 0 : quick ? 2 : 3); a++)
        for (int b = 0; b < (quick ? 2 : 3); b++)
            for (int nth = 1; nth <= 2; nth++)
                if (shape("sweep", ds[a], Fs[b], 64, 2048, nth, quick ? 1 : 2)) return 1;
    if (paper && shape("paper", 2304, 73728, 100, 2048, 2, 2)) return 1;
    return 0;
}
