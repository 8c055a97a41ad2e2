/* Daemon benchmark, one run, one machine:
 *   1. the bare engine's tokens/s on a config (same threads, same data);
 *   2. build/xcoderd on ipc:// in a temp dir, fed by libxcoder from this process
 *      (data generated before the clock starts): trained tokens/s from the
 *      daemon's step counter, and e2e_ratio = daemon / bare engine (goal >= 0.95);
 *   3. intake with training paused: tokens/s and GB/s the daemon acks into its
 *      queue until the queue is full.
 * Prints one JSON line. Usage: bench_daemon [path/to/xcoderd] */
#include "xc_config.h"
#include "xc_engine.h"
#include "xc_synth.h"
#include "xcoder.h"
#include "xc_bench.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { D = 256, F = 4096, K = 32, B = 1024, NBATCH = 16 };

static double now_s(void) { return xc_bench_now_s(); }

static double status_num(xc_client_t *c, const char *path)
{
    xc_client_value_t *r = NULL;
    double v = -1;
    if (xc_client_status(c, &r) == 0) v = xc_client_value_getnum(r, path, -1);
    xc_client_value_free(&r);
    return v;
}

static int bare_engine(const float *data, int steps, double *tps)
{
    xc_engine_config_t c;
    xc_cfg_engine_defaults(&c, XC_MODEL_BATCHTOPK);
    c.d = D, c.dict_size = F, c.k = K, c.batch_size = B, c.warmup_steps = 10;
    xc_engine_t *e = xc_engine_new(&c, NULL);
    if (!e) return 1;
    for (int s = 0; s < 3; s++) xc_engine_train_step(e, data + (size_t)(s % NBATCH) * B * 2 * D, B);
    double t = now_s();
    for (int s = 0; s < steps; s++) xc_engine_train_step(e, data + (size_t)(s % NBATCH) * B * 2 * D, B);
    *tps = (double)steps * B / (now_s() - t);
    xc_engine_destroy(&e);
    return 0;
}

static pid_t start_daemon(const char *bin, const char *dir, const char *queue)
{
    char d[16], f[16], k[16], b[16];
    snprintf(d, sizeof d, "%d", D);
    snprintf(f, sizeof f, "%d", F);
    snprintf(k, sizeof k, "%d", K);
    snprintf(b, sizeof b, "%d", B);
    char name[32]; /* the shared-memory name is host-wide: one per run */
    snprintf(name, sizeof name, "bench%ld", (long)getpid());
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr)) _exit(127);
        execl(bin, bin, "--run_dir", dir, "--name", name, "--d", d, "--dict_size", f, "--k", k, "--batch_size",
              b, "--mix_tokens", b, "--queue_size", queue, "--checkpoint_interval", "0", "--warmup_steps", "10",
              "--max_msg_bytes", "268435456", (char *)NULL);
        _exit(127);
    }
    return pid;
}

static int stop_daemon(pid_t pid)
{
    int st = 0;
    kill(pid, SIGTERM);
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static xc_client_t *connect_to(const char *dir)
{
    xc_client_options_t o;
    xc_client_options_default(&o);
    o.run_dir = dir;
    o.name = "bench";
    o.timeout_ms = 60000;
    int err;
    xc_client_t *c = xc_client_new(&o, &err);
    if (!c) return NULL;
    for (int i = 0; i < 200; i++) { /* wait for the daemon to bind */
        xc_client_value_t *r = NULL;
        xc_client_set_timeout(c, 200);
        if (xc_client_ping(c, &r) == 0) {
            xc_client_value_free(&r);
            xc_client_set_timeout(c, 60000);
            return c;
        }
        usleep(50000);
    }
    xc_client_destroy(&c);
    return NULL;
}

int main(int argc, char **argv)
{
    const char *bin = argc > 1 ? argv[1] : "build/xcoderd";
    int steps = getenv("XC_BENCH_QUICK") ? 6 : 30;
    size_t bsz = (size_t)B * 2 * D;
    float *data = malloc(sizeof(float) * bsz * NBATCH);
    xc_synth_config_t sc;
    xc_synth_config_default(&sc, D);
    xc_synth_t *syn = xc_synth_new(&sc, NULL);
    if (!data || !syn || xc_synth_generate(syn, (long)B * NBATCH, data, NULL)) {
        fprintf(stderr, "bench_daemon: cannot generate data\n");
        return 1;
    }
    xc_synth_destroy(&syn);

    double engine_tps;
    if (bare_engine(data, steps, &engine_tps)) return 1;

    char dir[] = "/tmp/xcd-bench-XXXXXX";
    if (!mkdtemp(dir)) return 1;
    /* 2. the daemon training end to end */
    pid_t pid = start_daemon(bin, dir, "8");
    xc_client_t *c = connect_to(dir);
    if (!c) {
        fprintf(stderr, "bench_daemon: %s did not start\n", bin);
        kill(pid, SIGKILL);
        return 1;
    }
    int warm = 3, total = warm + steps + 4, rc = 0;
    double t0 = 0, s0 = 0, t1 = 0, s1 = 0;
    for (int i = 0; i < total && !rc; i++) {
        rc = xc_client_push(c, data + bsz * (size_t)(i % NBATCH), XC_CLIENT_DTYPE_F32, B, D);
        double st = status_num(c, "step");
        if (t0 == 0 && st >= warm) t0 = now_s(), s0 = st;
        if (t0 > 0 && st >= s0 + steps && t1 == 0) t1 = now_s(), s1 = st;
    }
    while (!rc && t1 == 0) { /* the last batches drain (the queue may hold all of them) */
        double st = status_num(c, "step");
        if (t0 == 0 && st >= warm) t0 = now_s(), s0 = st;
        else if (t0 > 0 && st >= s0 + steps) t1 = now_s(), s1 = st;
        else usleep(2000);
    }
    double daemon_tps = t1 > t0 ? (s1 - s0) * B / (t1 - t0) : 0;
    xc_client_destroy(&c);
    int ex1 = stop_daemon(pid);

    /* 3. intake with training paused: a queue of 64 batches, acks until it is full */
    pid = start_daemon(bin, dir, "64");
    c = connect_to(dir);
    double intake_tps = 0;
    if (c) {
        xc_client_value_t *r = NULL;
        xc_client_pause(c, &r);
        xc_client_value_free(&r);
        int n = 48; /* below the queue size: every push is acked without training */
        double t = now_s();
        for (int i = 0; i < n && !rc; i++)
            rc = xc_client_push(c, data + bsz * (size_t)(i % NBATCH), XC_CLIENT_DTYPE_F32, B, D);
        if (!rc) rc = xc_client_flush(c);
        intake_tps = rc ? 0 : (double)n * B / (now_s() - t);
        xc_client_resume(c, &r);
        xc_client_value_free(&r);
        xc_client_destroy(&c);
    }
    int ex2 = stop_daemon(pid);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "bench_daemon: could not remove %s\n", dir);
    if (rc || ex1 != 0 || ex2 != 0) {
        fprintf(stderr, "bench_daemon: push failed (%d) or daemon exit %d/%d\n", rc, ex1, ex2);
        return 1;
    }
    fprintf(stderr, "daemon: d=%d F=%d k=%d B=%d  engine %.0f tok/s, daemon e2e %.0f tok/s (ratio %.3f), "
                    "intake while paused %.0f tok/s (%.2f GB/s)\n",
            D, F, K, B, engine_tps, daemon_tps, daemon_tps / engine_tps, intake_tps,
            intake_tps * 2 * D * 4 / 1e9);
    printf("{\"bench\":\"daemon\",\"d\":%d,\"dict_size\":%d,\"k\":%d,\"batch_size\":%d,\"steps\":%d,"
           "\"engine_tokens_per_s\":%.1f,\"daemon_tokens_per_s\":%.1f,\"e2e_ratio\":%.3f,"
           "\"paused_intake_tokens_per_s\":%.1f,\"paused_intake_gb_per_s\":%.3f}\n",
           D, F, K, B, steps, engine_tps, daemon_tps, daemon_tps / engine_tps, intake_tps,
           intake_tps * 2 * D * 4 / 1e9);
    free(data);
    return 0;
}
