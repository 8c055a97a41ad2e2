/* Engine benchmark: trains a small and the reference config (d=768, dict_size=16384,
 * k=64, B=2048) for a fixed number of steps and reports, in one run:
 *   - tokens_per_s and step_ms (median over the timed steps),
 *   - sgemm_gflops: the encoder product's shape [B x 2d] . [2d x F] on this machine,
 *     run exactly as the engine runs it (latent columns split over the pool, one
 *     OpenBLAS thread per worker),
 *   - bound_tokens_per_s = B / (t_sgemm + t_adam): a step that cost only that product
 *     plus one Adam pass (t_adam = the engine's own Adam phase), and bound_ratio,
 *   - the live examples (daemon/xc_examples.h, the daemon's defaults) fed from every
 *     step's selection: examples_early_ms over the timed steps (a new model: every
 *     latent's heaps still fill, each insertion cuts a window) and examples_ms once
 *     the heaps are full (a long run), each also as a fraction of step_ms.
 * The last line is one JSON object for the reference config.
 * Usage: bench_engine [steps_big] [steps_small]   (env XC_BENCH_QUICK=1: fewer steps) */
#include "xc_config.h"
#include "xc_engine.h"
#include "xc_examples.h"
#include "xc_pool.h"
#include "xc_rng.h"
#include "xc_bench.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) { return xc_bench_now_s(); }

static double median(double *v, int n) { return xc_bench_median(v, n); }

typedef struct {
    int B, K, F;
    const float *x, *w;
    float *c;
} gemm_ctx_t;

static void gemm_task(void *ctx, int tid, int nth)
{
    gemm_ctx_t *g = ctx;
    long lo, hi;
    xc_pool_range(g->F, tid, nth, &lo, &hi);
    if (hi > lo)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g->B, (int)(hi - lo), g->K, 1.0f, g->x, g->K,
                    g->w + (size_t)lo * g->K, g->K, 0.0f, g->c + lo, g->F);
}

/* GFLOP/s of the encoder product, best of reps (peak as the engine runs it). */
static double sgemm_gflops(xc_pool_t *pool, int B, int d2, int F, int reps)
{
    gemm_ctx_t g = {B, d2, F, NULL, NULL, NULL};
    float *x = malloc(sizeof(float) * (size_t)B * d2), *w = malloc(sizeof(float) * (size_t)F * d2);
    float *c = malloc(sizeof(float) * (size_t)B * F);
    xc_rng_t r;
    xc_rng_seed(&r, 1);
    for (size_t i = 0; i < (size_t)B * d2; i++) x[i] = (float)xc_rng_normal(&r);
    for (size_t i = 0; i < (size_t)F * d2; i++) w[i] = (float)xc_rng_normal(&r) * 0.03f;
    g.x = x, g.w = w, g.c = c;
    double best = 1e30;
    for (int i = 0; i < reps + 1; i++) {
        double t = now_s();
        xc_pool_run(pool, gemm_task, &g);
        t = now_s() - t;
        if (i > 0 && t < best) best = t; /* first call warms up buffers */
    }
    free(x);
    free(w);
    free(c);
    return 2.0 * B * d2 * (double)F / best / 1e9;
}

static int run(const char *name, int d, int F, int k, int B, int steps, int last)
{
    xc_engine_config_t c;
    xc_cfg_engine_defaults(&c, XC_MODEL_BATCHTOPK);
    c.d = d, c.dict_size = F, c.k = k, c.batch_size = B, c.seed = 1, c.warmup_steps = 10;
    int err;
    xc_engine_t *e = xc_engine_new(&c, &err);
    if (!e) {
        fprintf(stderr, "bench: cannot create engine (%d)\n", err);
        return 1;
    }
    int nth = xc_engine_config(e)->threads;
    /* data: low-rank structure plus noise, so the codes are not pure noise */
    int nbatch = 4, rank = 32;
    size_t bsz = (size_t)B * 2 * d;
    float *data = malloc(sizeof(float) * bsz * nbatch), *basis = malloc(sizeof(float) * (size_t)rank * 2 * d);
    xc_rng_t r;
    xc_rng_seed(&r, 2);
    for (size_t i = 0; i < (size_t)rank * 2 * d; i++) basis[i] = (float)xc_rng_normal(&r);
    for (int t = 0; t < B * nbatch; t++) {
        float *row = data + (size_t)t * 2 * d;
        for (int i = 0; i < 2 * d; i++) row[i] = (float)(0.1 * xc_rng_normal(&r));
        for (int q = 0; q < 4; q++) {
            int z = (int)xc_rng_below(&r, (uint64_t)rank);
            float a = (float)xc_rng_uniform(&r);
            for (int i = 0; i < 2 * d; i++) row[i] += a * basis[(size_t)z * 2 * d + i];
        }
    }
    /* live examples (daemon/xc_examples.h) fed from every step, defaults as the daemon's:
     * each token with an id and a (document, position); their cost beside the step's */
    xc_examples_config_t xcfg;
    xc_examples_config_default(&xcfg);
    xc_examples_t *ex = xc_examples_new(&xcfg, F, &err);
    xc_tokmeta_t *meta = malloc(sizeof *meta * (size_t)B);
    double *ex_ms = malloc(sizeof(double) * (size_t)steps);
    int n_ex = 0;
    if (!ex || !meta || !ex_ms) {
        fprintf(stderr, "bench: cannot create the examples store (%d)\n", err);
        return 1;
    }
    uint16_t src = xc_examples_source(ex, "bench", "web");
    int warm = 3;
    double *ms = malloc(sizeof(double) * (size_t)steps), *adam = malloc(sizeof(double) * (size_t)steps);
    double *ms_off = malloc(sizeof(double) * (size_t)steps);
    double ph[XC_PHASE_TOTAL + 1] = {0};
    /* timed steps alternate with the running Latent Scaling estimates on (the
     * default) and off, so their cost is measured on the same engine and data */
    int n_on = 0, n_off = 0;
    for (int s = 0; s < warm + 2 * steps; s++) {
        int on = s < warm || (s - warm) % 2 == 0;
        xc_engine_set_scaling_running(e, on);
        double t = now_s();
        if (xc_engine_train_step(e, data + bsz * (size_t)(s % nbatch), B) != 0) {
            fprintf(stderr, "bench: step failed\n");
            return 1;
        }
        t = now_s() - t;
        double te = now_s();
        for (int b = 0; b < B; b++) {
            long tok = (long)s * B + b;
            meta[b] = (xc_tokmeta_t){(uint32_t)xc_rng_below(&r, 50000), (uint32_t)(tok / 512), (uint32_t)(tok % 512),
                                     src, XC_TM_POS};
        }
        xc_examples_store(ex, meta, B);
        const long *rp;
        const int *col;
        const float *val;
        xc_engine_selection(e, &rp, &col, &val);
        xc_examples_update(ex, meta, B, rp, col, val, s);
        te = now_s() - te;
        if (s >= warm && n_ex < steps) ex_ms[n_ex++] = te * 1e3;
        if (s < warm) continue;
        if (!on) {
            ms_off[n_off++] = t * 1e3;
            continue;
        }
        const xc_engine_metrics_t *m = xc_engine_metrics(e);
        ms[n_on] = t * 1e3;
        adam[n_on++] = m->phase_ms[XC_PHASE_ADAM];
        for (int p = 0; p <= XC_PHASE_TOTAL; p++) ph[p] += m->phase_ms[p] / steps;
    }
    xc_engine_set_scaling_running(e, 1);
    double step_ms = median(ms, n_on), adam_ms = median(adam, n_on), off_ms = median(ms_off, n_off);
    double examples_ms = median(ex_ms, n_ex);
    /* a long run: every latent's heaps are full and new activations rarely beat them.
     * Replay the last step's selection (fresh token context each time) until then. */
    double steady_ms = 0;
    {
        const long *rp;
        const int *col;
        const float *val;
        xc_engine_selection(e, &rp, &col, &val);
        int reps = 200, timed = 0;
        double sum = 0;
        for (int q = 0; q < reps; q++) {
            double te = now_s();
            for (int b = 0; b < B; b++) {
                long tok = (long)(warm + 2 * steps + q) * B + b;
                meta[b] = (xc_tokmeta_t){(uint32_t)xc_rng_below(&r, 50000), (uint32_t)(tok / 512),
                                         (uint32_t)(tok % 512), src, XC_TM_POS};
            }
            xc_examples_store(ex, meta, B);
            xc_examples_update(ex, meta, B, rp, col, val, warm + 2 * steps + q);
            te = now_s() - te;
            if (q >= reps - 20) sum += te * 1e3, timed++;
        }
        steady_ms = sum / timed;
    }
    size_t examples_mb = xc_examples_memory(&xcfg, F) >> 20;
    xc_pool_t *pool = xc_pool_new(nth);
    double gf = sgemm_gflops(pool, B, 2 * d, F, 3);
    xc_pool_destroy(&pool);
    double t_gemm_ms = 2.0 * B * 2 * d * (double)F / (gf * 1e9) * 1e3;
    double tps = B / (step_ms / 1e3), bound = B / ((t_gemm_ms + adam_ms) / 1e3);
    const xc_engine_metrics_t *m = xc_engine_metrics(e);
    fprintf(stderr,
            "%s: d=%d F=%d k=%d B=%d threads=%d  step %.1f ms  (encode %.1f  select %.1f  decode %.1f  auxk %.1f  grad %.1f  adam %.1f)"
            "  sgemm %.1f GFLOP/s -> bound %.0f tok/s  loss %.4f  fve %.3f/%.3f  prefilter %ld (k*B %d) full-selects %ld\n",
            name, d, F, k, B, nth, step_ms, ph[XC_PHASE_ENCODE], ph[XC_PHASE_SELECT], ph[XC_PHASE_DECODE],
            ph[XC_PHASE_AUXK], ph[XC_PHASE_GRAD], ph[XC_PHASE_ADAM], gf, bound, m->loss, m->fve[0], m->fve[1], m->select_candidates, k * B,
            m->full_selects);
    printf("{\"bench\":\"engine\",\"config\":\"%s\",\"d\":%d,\"dict_size\":%d,\"k\":%d,\"batch_size\":%d,"
           "\"threads\":%d,\"steps\":%d,\"tokens_per_s\":%.1f,\"step_ms\":%.2f,\"encoder_gemm_ms\":%.2f,"
           "\"adam_ms\":%.2f,\"sgemm_gflops\":%.1f,\"achieved_gemm_fraction\":%.3f,"
           "\"bound_tokens_per_s\":%.1f,\"bound_ratio\":%.3f,\"scaling_cost_fraction\":%.3f,"
           "\"examples_early_ms\":%.3f,\"examples_early_fraction\":%.4f,\"examples_ms\":%.3f,"
           "\"examples_cost_fraction\":%.4f,\"examples_memory_mb\":%zu}\n",
           name, d, F, k, B, nth, steps, tps, step_ms, t_gemm_ms, adam_ms, gf,
           t_gemm_ms / step_ms, bound, tps / bound, (step_ms - off_ms) / step_ms, examples_ms,
           examples_ms / step_ms, steady_ms, steady_ms / step_ms, examples_mb);
    fflush(stdout);
    (void)last;
    free(ms);
    free(ms_off);
    free(ex_ms);
    free(meta);
    xc_examples_destroy(&ex);
    free(adam);
    free(data);
    free(basis);
    xc_engine_destroy(&e);
    return 0;
}

int main(int argc, char **argv)
{
    int quick = getenv("XC_BENCH_QUICK") != NULL;
    int big = argc > 1 ? atoi(argv[1]) : (quick ? 3 : 12);
    int small = argc > 2 ? atoi(argv[2]) : (quick ? 5 : 50);
    if (run("small", 64, 1024, 8, 512, small, 0)) return 1;
    return run("reference", 768, 16384, 64, 2048, big, 1);
}
