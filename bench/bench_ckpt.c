/* Checkpoint benchmark at the reference shape (d=768, dict_size=16384, k=64,
 * B=2048): what a checkpoint costs training and how long the pair takes.
 *   capture_ms       the copy of the training state on the training thread: the
 *                    only time training waits (first: the first checkpoint; its
 *                    memory was prepared in the background during the first steps)
 *   write_ms         the writer thread: serialise (transposes, CRC-32) and write
 *                    both files, fsync, rename, fsync the directory
 *   step_ms / step_ms_during_write   median step time without / while the writer runs
 *   sync_write_ms    a checkpoint written on the calling thread (the shutdown path)
 *   load_ms          resume: verify both checksums, every tensor, copy into an engine
 * One JSON line at the end. Files go to $TMPDIR (or /tmp) and are removed.
 * Usage: bench_ckpt [d] [dict_size] */
#include "xc_ckpt.h"
#include "xc_config.h"
#include "xc_engine.h"
#include "xc_error.h"
#include "xc_rng.h"
#include "xc_bench.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) { return 1e3 * xc_bench_now_s(); }

static double median(double *v, int n) { return xc_bench_median(v, n); }

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_done;
static xc_ckpt_info_t g_info;

static void on_done(void *ctx, const xc_ckpt_info_t *r)
{
    pthread_mutex_lock(&g_mu);
    g_info = *r;
    g_done++;
    pthread_mutex_unlock(&g_mu);
}

static int done_count(void)
{
    pthread_mutex_lock(&g_mu);
    int n = g_done;
    pthread_mutex_unlock(&g_mu);
    return n;
}

int main(int argc, char **argv)
{
    xc_engine_config_t c;
    xc_cfg_engine_defaults(&c, XC_MODEL_BATCHTOPK);
    c.d = argc > 1 ? atoi(argv[1]) : 768;
    c.dict_size = argc > 2 ? atoi(argv[2]) : 16384;
    c.k = 64;
    c.batch_size = 2048;
    int err;
    xc_engine_t *e = xc_engine_new(&c, &err), *b = xc_engine_new(&c, &err);
    if (!e || !b) {
        fprintf(stderr, "bench_ckpt: cannot create the engines: %s\n", xc_strerror(err));
        return 1;
    }
    size_t n = (size_t)c.batch_size * 2 * c.d;
    float *x = malloc(n * sizeof(float));
    xc_rng_t r;
    xc_rng_seed(&r, 1);
    for (size_t i = 0; i < n; i++) x[i] = (float)xc_rng_normal(&r);
    char dir[512], why[600];
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/xc-bench-ckpt-%ld", tmp && *tmp ? tmp : "/tmp", (long)getpid());
    xc_ckpt_writer_opts_t wo = {dir, "bench", "{}", 2, on_done, NULL};
    xc_ckpt_writer_t *w = xc_ckpt_writer_new(&wo, &err);
    if (!w) return 1;

    double steps[16], during[64];
    int ns = 0, nd = 0;
    xc_ckpt_writer_prepare(w, e, NULL, 0); /* as the trainer does when it starts */
    for (int i = 0; i < 6; i++) {
        double t0 = now_ms();
        xc_engine_train_step(e, x, c.batch_size);
        if (i >= 2) steps[ns++] = now_ms() - t0;
    }
    /* two asynchronous checkpoints: cold (the capture buffer is new), then warm */
    double cap[2] = {0, 0}, wr[2] = {0, 0};
    uint64_t bytes = 0, tbytes = 0;
    int prep_steps = 0;
    for (int k = 0; k < 2; k++) {
        double t0 = now_ms();
        int rc;
        /* as the trainer does: asked between two steps until the writer takes it
         * (the first time it allocates the copy's memory meanwhile) */
        while ((rc = xc_ckpt_writer_submit(w, e, NULL, 0, "request", (uint64_t)k + 1, 0, NULL)) == XC_EAGAIN) {
            double s0 = now_ms();
            xc_engine_train_step(e, x, c.batch_size);
            if (nd < 64) during[nd++] = now_ms() - s0;
            prep_steps++;
            t0 = now_ms();
        }
        if (rc != 0) return 1;
        cap[k] = now_ms() - t0;
        while (done_count() <= k) { /* training goes on while the writer writes */
            double s0 = now_ms();
            xc_engine_train_step(e, x, c.batch_size);
            if (nd < 64) during[nd++] = now_ms() - s0;
        }
        if (g_info.rc) {
            fprintf(stderr, "bench_ckpt: %s\n", g_info.why);
            return 1;
        }
        wr[k] = g_info.write_ms;
        bytes = g_info.bytes;
        tbytes = g_info.train_bytes;
    }
    xc_engine_train_step(e, x, c.batch_size);
    xc_ckpt_info_t si;
    double t0 = now_ms();
    if (xc_ckpt_writer_submit(w, e, NULL, 0, "shutdown", 9, 1, &si) != 1) return 1;
    double sync_ms = now_ms() - t0;
    xc_ckpt_writer_destroy(&w);
    xc_ckpt_resume_opts_t ro = {dir, "bench", NULL, 0};
    xc_ckpt_loaded_t *li = calloc(1, sizeof *li);
    t0 = now_ms();
    int rc = xc_ckpt_resume(b, NULL, 0, &ro, li, NULL, why, sizeof why);
    double load_ms = now_ms() - t0;
    if (rc) {
        fprintf(stderr, "bench_ckpt: resume: %s\n", why);
        return 1;
    }
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) { /* best effort */
    }
    double step_ms = median(steps, ns), dur_ms = median(during, nd);
    printf("checkpoint d=%d F=%d: model %.1f MB + training state %.1f MB; capture %.0f ms (first %.0f ms, after %d "
           "steps of buffer preparation), write %.0f ms on the writer thread; step %.0f ms, %.0f ms while writing; "
           "sync write %.0f ms; load %.0f ms\n",
           c.d, c.dict_size, bytes / 1e6, tbytes / 1e6, cap[1], cap[0], prep_steps, wr[1], step_ms, dur_ms, sync_ms,
           load_ms);
    printf("{\"bench\":\"ckpt\",\"d\":%d,\"dict_size\":%d,\"model_bytes\":%llu,\"train_bytes\":%llu,"
           "\"capture_ms\":%.1f,\"capture_ms_cold\":%.1f,\"write_ms\":%.1f,\"step_ms\":%.1f,"
           "\"step_ms_during_write\":%.1f,\"steps_during_writes\":%d,\"sync_write_ms\":%.1f,\"load_ms\":%.1f}\n",
           c.d, c.dict_size, (unsigned long long)bytes, (unsigned long long)tbytes, cap[1], cap[0], wr[1], step_ms,
           dur_ms, nd, sync_ms, load_ms);
    free(li);
    free(x);
    xc_engine_destroy(&e);
    xc_engine_destroy(&b);
    return 0;
}
