/* Latent-sharded training over MPI against one process with the same cores.
 *
 * At d=768, dict_size=16384, k=64, B=2048 (XC_BENCH_QUICK=1: d=256, F=4096,
 * k=32, B=1024) it reports, in one run:
 *   - single: one rank, `threads` compute threads (default 2), tokens/s;
 *   - ranks:  `mpirun -np R` ranks (default 2) of one thread each, the batch
 *     broadcast from rank 0 every step as the daemon does: tokens/s, and per
 *     step the bytes each rank moved through collectives and the seconds spent
 *     in them (rank 0's, the median over the timed steps);
 *   - ratio = ranks / single (the goal: >= 0.9 with 2 x 1 vs 1 x 2),
 *   - the cost model's bytes per step (docs/scaling.md) beside the measured ones.
 * Both runs train the same seed on the same batches.
 *
 * The ranks are started by relaunching this program under $XC_MPIRUN (default
 * `mpirun --allow-run-as-root --oversubscribe`); bench/mpi_netns.sh sets it to
 * a launcher that puts the two ranks in two network namespaces joined by a veth
 * pair shaped with tc, to measure under a bandwidth limit.
 * Usage: bench_mpi [steps] [ranks]       (internal: bench_mpi --rank-run ...)
 * The last line is one JSON object. */
#include "xc_bench.h"
#include "xc_coll_mpi.h"
#include "xc_config.h"
#include "xc_engine.h"
#include "xc_rng.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int d, F, k, B, steps, threads;
} shape_t;

/* The bench's data: low-rank structure plus noise (as bench_engine), nbatch
 * batches cycled. Caller frees. */
static float *make_data(const shape_t *s, int nbatch)
{
    size_t d2 = 2 * (size_t)s->d, bsz = (size_t)s->B * d2;
    int rank = 32;
    float *data = malloc(sizeof(float) * bsz * nbatch), *basis = malloc(sizeof(float) * rank * d2);
    if (!data || !basis) {
        free(data);
        free(basis);
        return NULL;
    }
    xc_rng_t r;
    xc_rng_seed(&r, 2);
    for (size_t i = 0; i < rank * d2; i++) basis[i] = (float)xc_rng_normal(&r);
    for (long t = 0; t < (long)s->B * nbatch; t++) {
        float *row = data + (size_t)t * d2;
        for (size_t i = 0; i < d2; i++) row[i] = (float)(0.1 * xc_rng_normal(&r));
        for (int q = 0; q < 4; q++) {
            int z = (int)xc_rng_below(&r, (uint64_t)rank);
            float a = (float)xc_rng_uniform(&r);
            for (size_t i = 0; i < d2; i++) row[i] += a * basis[(size_t)z * d2 + i];
        }
    }
    free(basis);
    return data;
}

typedef struct {
    double tokens_per_s, step_ms, comm_bytes, comm_ms;
    double fve0, l0;
} result_t;

/* Trains steps (+3 warm-up) on coll's shard; every rank calls it. The batch is
 * broadcast from rank 0 each step (the daemon's cost) unless coll is single. */
static int train(const shape_t *s, xc_coll_t *coll, int threads, result_t *out)
{
    xc_engine_config_t c;
    xc_cfg_engine_defaults(&c, XC_MODEL_BATCHTOPK);
    c.d = s->d, c.dict_size = s->F, c.k = s->k, c.batch_size = s->B, c.seed = 1, c.warmup_steps = 10;
    c.threads = threads;
    int err = 0, nbatch = 4, warm = 3;
    xc_engine_t *e = xc_engine_new_sharded(&c, coll, &err);
    if (!e) {
        fprintf(stderr, "bench_mpi: cannot create the engine (%s)\n", xc_strerror(err));
        return 1;
    }
    size_t bsz = (size_t)s->B * 2 * s->d;
    float *data = coll->rank == 0 ? make_data(s, nbatch) : NULL, *batch = malloc(sizeof(float) * bsz);
    double *ms = malloc(sizeof(double) * s->steps), *bytes = malloc(sizeof(double) * s->steps),
           *cms = malloc(sizeof(double) * s->steps);
    if ((coll->rank == 0 && !data) || !batch || !ms || !bytes || !cms) {
        fprintf(stderr, "bench_mpi: out of memory\n");
        return 1;
    }
    for (int i = 0; i < warm + s->steps; i++) {
        double t = xc_bench_now_s();
        uint64_t b0 = coll->bytes;
        double c0 = coll->seconds;
        if (coll->rank == 0) memcpy(batch, data + bsz * (size_t)(i % nbatch), sizeof(float) * bsz);
        if (coll->bcast(coll, batch, sizeof(float) * bsz, 0) || xc_engine_train_step(e, batch, s->B)) {
            fprintf(stderr, "bench_mpi: rank %d: step %d failed\n", coll->rank, i);
            return 1;
        }
        if (i >= warm) {
            ms[i - warm] = 1e3 * (xc_bench_now_s() - t);
            bytes[i - warm] = (double)(coll->bytes - b0);
            cms[i - warm] = 1e3 * (coll->seconds - c0);
        }
    }
    out->step_ms = xc_bench_median(ms, s->steps);
    out->tokens_per_s = s->B / (out->step_ms / 1e3);
    out->comm_bytes = xc_bench_median(bytes, s->steps);
    out->comm_ms = xc_bench_median(cms, s->steps);
    const xc_engine_metrics_t *m = xc_engine_metrics(e);
    out->fve0 = m->fve[0];
    out->l0 = m->l0;
    free(data);
    free(batch);
    free(ms);
    free(bytes);
    free(cms);
    xc_engine_destroy(&e);
    return 0;
}

/* The cost model's bytes per rank and step (docs/scaling.md): the batch
 * broadcast, the partial reconstructions' sum (a reduction then a broadcast of
 * [B, 2, d]), AuxK's residual sum when latents are dead, the selection
 * histogram (an all-reduce of 2^15 counts, twice when the prefilter misses) and
 * a few scalars; AuxK adds its error sum only while some latent is dead. */
static double model_bytes(const shape_t *s, int aux)
{
    double x = 4.0 * s->B * 2 * s->d;
    return x + 2 * x + (aux ? 2 * x : 0) + 2 * 8.0 * 32768;
}

int main(int argc, char **argv)
{
    int quick = getenv("XC_BENCH_QUICK") != NULL;
    shape_t s = quick ? (shape_t){256, 4096, 32, 1024, 8, 2} : (shape_t){768, 16384, 64, 2048, 10, 2};
    int ranks = 2;
    if (argc > 1 && strcmp(argv[1], "--rank-run") != 0) s.steps = atoi(argv[1]) > 0 ? atoi(argv[1]) : s.steps;
    if (argc > 2 && strcmp(argv[1], "--rank-run") != 0) ranks = atoi(argv[2]) > 1 ? atoi(argv[2]) : ranks;

    if (argc > 1 && strcmp(argv[1], "--rank-run") == 0) {
        /* one of the ranks: --rank-run d F k B steps */
        if (argc < 7) return 2;
        s = (shape_t){atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoi(argv[6]), 1};
        int rank, size;
        char why[256] = "";
        if (xc_mpi_start(&argc, &argv, &rank, &size, why, sizeof why)) {
            fprintf(stderr, "bench_mpi: %s\n", why);
            return 1;
        }
        xc_coll_t *coll = xc_coll_mpi_new(120, why, sizeof why);
        if (!coll) {
            fprintf(stderr, "bench_mpi: %s\n", why);
            return 1;
        }
        result_t r;
        int rc = train(&s, coll, 1, &r);
        if (!rc && rank == 0)
            printf("RANKS %d %.3f %.3f %.0f %.3f %.6f %.3f\n", size, r.tokens_per_s, r.step_ms, r.comm_bytes, r.comm_ms,
                   r.fve0, r.l0);
        xc_coll_mpi_free(&coll);
        if (rc) xc_mpi_abort(1);
        xc_mpi_finalize();
        return rc;
    }

    char model[256], isa[512];
    int ncpu;
    xc_bench_cpu(model, sizeof model, isa, sizeof isa, &ncpu);
    fprintf(stderr, "cpu: %s (%d logical CPUs)\nisa: %s\n", model, ncpu, isa);
    fprintf(stderr, "shape: d=%d dict_size=%d k=%d B=%d, %d timed steps\n", s.d, s.F, s.k, s.B, s.steps);
#ifndef XC_HAVE_MPI
    fprintf(stderr, "bench_mpi: this build has no MPI (libopenmpi-dev): nothing to measure\n");
    printf("{\"bench\":\"mpi\",\"skipped\":\"built without MPI\"}\n");
    return 0;
#endif
    result_t one;
    if (train(&s, xc_coll_single(), s.threads, &one)) return 1;
    fprintf(stderr, "single: 1 rank x %d threads: %.0f tokens/s (%.1f ms/step)\n", s.threads, one.tokens_per_s,
            one.step_ms);

    const char *launcher = getenv("XC_MPIRUN");
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s -np %d %s --rank-run %d %d %d %d %d",
             launcher && *launcher ? launcher : "mpirun --allow-run-as-root --oversubscribe", ranks, argv[0], s.d,
             s.F, s.k, s.B, s.steps);
    fprintf(stderr, "ranks: %s\n", cmd);
    FILE *p = popen(cmd, "r");
    char line[512];
    result_t rk = {0};
    int size = 0, got = 0;
    while (p && fgets(line, sizeof line, p))
        if (sscanf(line, "RANKS %d %lf %lf %lf %lf %lf %lf", &size, &rk.tokens_per_s, &rk.step_ms, &rk.comm_bytes,
                   &rk.comm_ms, &rk.fve0, &rk.l0) == 7)
            got = 1;
    int prc = p ? pclose(p) : -1;
    if (!got || prc != 0) {
        fprintf(stderr, "bench_mpi: the MPI run failed (exit %d)\n", prc);
        return 1;
    }
    double ratio = rk.tokens_per_s / one.tokens_per_s;
    fprintf(stderr,
            "ranks: %d ranks x 1 thread: %.0f tokens/s (%.1f ms/step), per step %.2f MB through collectives in "
            "%.1f ms (%.0f%% of the step); model %.2f MB (%.2f MB with AuxK active)\n",
            size, rk.tokens_per_s, rk.step_ms, rk.comm_bytes / 1e6, rk.comm_ms, 100 * rk.comm_ms / rk.step_ms,
            model_bytes(&s, 0) / 1e6, model_bytes(&s, 1) / 1e6);
    fprintf(stderr, "ratio (ranks / single): %.3f; FVE(base) %.4f vs %.4f, L0 %.2f vs %.2f\n", ratio, rk.fve0,
            one.fve0, rk.l0, one.l0);
    printf("{\"bench\":\"mpi\",\"cpu\":\"%s\",\"isa\":\"%s\",\"d\":%d,\"dict_size\":%d,\"k\":%d,\"batch\":%d,"
           "\"single_threads\":%d,\"single_tokens_per_s\":%.1f,\"ranks\":%d,\"ranks_tokens_per_s\":%.1f,"
           "\"ratio\":%.4f,\"comm_bytes_per_step\":%.0f,\"comm_ms_per_step\":%.3f,\"step_ms\":%.3f,"
           "\"model_bytes_per_step\":%.0f,\"model_bytes_per_step_auxk\":%.0f}\n",
           model, isa, s.d, s.F, s.k, s.B, s.threads, one.tokens_per_s, size, rk.tokens_per_s, ratio, rk.comm_bytes,
           rk.comm_ms, rk.step_ms, model_bytes(&s, 0), model_bytes(&s, 1));
    return 0;
}
