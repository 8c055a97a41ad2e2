/* Shared-memory statistics: layout round trip, a forked writer hammering updates
 * while this process snapshots (never a torn copy), stale-object replacement,
 * mode, classes, and the publisher fed by a real engine. */
/* failure messages quote paths and reasons; truncating them is harmless (the
 * sanitizer build at -O1 sees more of these than -O2) */
#pragma GCC diagnostic ignored "-Wformat-truncation"

#include "xc_config.h"
#include "xc_engine.h"
#include "xc_error.h"
#include "xc_shm.h"
#include "xc_shmpub.h"
#include "xc_test.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char g_inst[64];

static void fill(xc_shm_writer_t *w, uint32_t n, uint64_t g)
{
    float *dn = xc_shm_writer_array(w, XC_SHM_DELTA_NORM), *nu = xc_shm_writer_array(w, XC_SHM_NU_ERR);
    int64_t *last = xc_shm_writer_array(w, XC_SHM_LAST_STEP);
    uint8_t *cls = xc_shm_writer_array(w, XC_SHM_CLASS);
    for (uint32_t j = 0; j < n; j++) {
        dn[j] = (float)(g % 1000) + (float)j * 1e-3f;
        nu[j] = (float)g;
        last[j] = (int64_t)g * 7 + j;
        cls[j] = (uint8_t)(g % 5);
    }
    xc_shm_writer_header(w)->step = (int64_t)g;
}

/* every value in the snapshot belongs to the snapshot's own update */
static int consistent(const xc_shm_snapshot_t *s)
{
    uint32_t n = s->hdr.n_latents;
    uint64_t g = (uint64_t)s->hdr.step;
    const float *dn = xc_shm_snapshot_array(s, XC_SHM_DELTA_NORM), *nu = xc_shm_snapshot_array(s, XC_SHM_NU_ERR);
    const int64_t *last = xc_shm_snapshot_array(s, XC_SHM_LAST_STEP);
    const uint8_t *cls = xc_shm_snapshot_array(s, XC_SHM_CLASS);
    for (uint32_t j = 0; j < n; j++)
        if (dn[j] != (float)(g % 1000) + (float)j * 1e-3f || nu[j] != (float)g || last[j] != (int64_t)g * 7 + j ||
            cls[j] != g % 5)
            return 0;
    return 1;
}

static void test_round_trip(void)
{
    char why[256];
    int err;
    xc_shm_writer_t *w = xc_shm_writer_open(g_inst, 100, 16, 0, 0640, NULL, &err, why, sizeof why);
    XC_REQUIRE(w, "writer: %s", why);
    xc_shm_writer_begin(w);
    fill(w, 100, 42);
    xc_shm_writer_end(w);
    xc_shm_reader_t *r = xc_shm_reader_open(g_inst, &err);
    XC_REQUIRE(r, "reader: %s", xc_strerror(err));
    xc_shm_snapshot_t s;
    XC_CHECK(xc_shm_reader_snapshot(r, &s, 10) == XC_OK, "snapshot");
    XC_CHECK(s.hdr.magic == XC_SHM_MAGIC && s.hdr.n_latents == 100 && s.hdr.d == 16, "header");
    XC_CHECK(consistent(&s), "values");
    XC_CHECK(s.hdr.alive == 1 && s.hdr.writer_pid == (uint32_t)getpid(), "alive/pid");
    XC_CHECK(s.hdr.arrays[XC_SHM_DELTA_NORM].offset % 64 == 0, "alignment");
    xc_shm_snapshot_free(&s);
    /* mode: 0640 by default, whatever the umask */
    char path[128];
    snprintf(path, sizeof path, "/dev/shm/xcoderd.%s", g_inst);
    struct stat st;
    XC_CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0640, "mode %o", st.st_mode & 0777);
    xc_shm_reader_close(&r);
    xc_shm_writer_close(&w, 1);
    XC_CHECK(stat(path, &st) != 0, "object not unlinked on clean close");
    XC_CHECK(xc_shm_reader_open(g_inst, &err) == NULL && err == XC_ENOTFOUND, "missing object: %d", err);
    XC_CHECK(xc_shm_reader_open("bad/name", &err) == NULL && err == XC_EINVAL, "bad name accepted");
}

static void test_hammer_never_torn(void)
{
    char why[256];
    int err;
    uint32_t n = 4096;
    xc_shm_writer_t *w = xc_shm_writer_open(g_inst, n, 64, 0, 0600, NULL, &err, why, sizeof why);
    XC_REQUIRE(w, "writer: %s", why);
    xc_shm_writer_begin(w);
    fill(w, n, 1);
    xc_shm_writer_end(w);
    pid_t pid = fork();
    if (pid == 0) {
        /* updates with only 50 us between them (the daemon's interval is ms..s),
         * for about two seconds */
        time_t end = time(NULL) + 2;
        for (uint64_t g = 2; time(NULL) < end; g++) {
            xc_shm_writer_begin(w);
            fill(w, n, g);
            xc_shm_writer_end(w);
            nanosleep(&(struct timespec){0, 50000}, NULL);
        }
        _exit(0);
    }
    xc_shm_reader_t *r = xc_shm_reader_open(g_inst, &err);
    XC_REQUIRE(r, "reader");
    int torn = 0, snaps = 0, retried = 0, corrupt = 0;
    uint64_t distinct = 0, lastg = 0;
    int status;
    while (waitpid(pid, &status, WNOHANG) == 0 || snaps < 50) {
        xc_shm_snapshot_t s;
        int rc = xc_shm_reader_snapshot(r, &s, 100000);
        if (rc == XC_ECORRUPT) corrupt++;
        if (rc == XC_OK) {
            snaps++;
            retried += s.retries > 0;
            if (!consistent(&s)) torn++;
            if (s.hdr.gen != lastg) distinct++, lastg = s.hdr.gen;
        }
        xc_shm_snapshot_free(&s);
    }
    printf("# hammer: %d snapshots, %d needed retries, %lu distinct updates seen\n", snaps, retried,
           (unsigned long)distinct);
    XC_CHECK(torn == 0 && corrupt == 0, "%d torn, %d checksum failures in %d snapshots", torn, corrupt, snaps);
    XC_CHECK(distinct > 5, "reader saw only %lu updates", (unsigned long)distinct);
    xc_shm_reader_close(&r);
    xc_shm_writer_close(&w, 1);
}

static void test_stale_object_replaced(void)
{
    char why[256];
    int err;
    xc_shm_writer_t *w1 = xc_shm_writer_open(g_inst, 10, 4, 0, 0640, NULL, &err, why, sizeof why);
    XC_REQUIRE(w1, "writer1");
    xc_shm_writer_close(&w1, 0); /* as if the daemon had crashed: object left behind */
    xc_shm_writer_t *w2 = xc_shm_writer_open(g_inst, 20, 4, 1, 0640, NULL, &err, why, sizeof why);
    XC_REQUIRE(w2, "restart over a stale object: %s", why);
    xc_shm_reader_t *r = xc_shm_reader_open(g_inst, &err);
    XC_REQUIRE(r, "reader");
    xc_shm_snapshot_t s;
    XC_CHECK(xc_shm_reader_snapshot(r, &s, 10) == XC_OK && s.hdr.n_latents == 20 && s.hdr.model == 1, "new object");
    xc_shm_snapshot_free(&s);
    xc_shm_reader_close(&r);
    xc_shm_writer_close(&w2, 1);
}

/* Two daemons with the same instance name (different run_dirs): the second is
 * refused with the first's pid and run_dir, and no writer ever unlinks an object
 * that is not its own. A killed writer's object is stale and replaced. */
static void test_live_owner_refused(void)
{
    char why[256] = "", path[128];
    int err, fds[2];
    struct stat st;
    snprintf(path, sizeof path, "/dev/shm/xcoderd.%s", g_inst);
    XC_REQUIRE(pipe(fds) == 0, "pipe");
    pid_t pid = fork();
    if (pid == 0) {
        xc_shm_writer_t *w = xc_shm_writer_open(g_inst, 10, 4, 0, 0640, "/run/first", &err, NULL, 0);
        char c = w ? 'y' : 'n';
        if (write(fds[1], &c, 1) != 1) _exit(1);
        pause(); /* a live daemon: killed by the parent */
        _exit(0);
    }
    char c = 0;
    XC_REQUIRE(read(fds[0], &c, 1) == 1 && c == 'y', "child writer");
    xc_shm_writer_t *w2 = xc_shm_writer_open(g_inst, 10, 4, 0, 0640, "/run/second", &err, why, sizeof why);
    char want[64];
    snprintf(want, sizeof want, "pid %d, run_dir /run/first", (int)pid);
    XC_CHECK(!w2 && err == XC_ESTATE, "second writer of a live object: err %d", err);
    XC_CHECK(strstr(why, want) != NULL, "message names the owner: %.200s", why);
    XC_CHECK(stat(path, &st) == 0, "refused writer removed the owner's object");
    xc_shm_writer_close(&w2, 1);
    kill(pid, SIGKILL); /* the first daemon crashes: its object becomes stale */
    waitpid(pid, NULL, 0);
    close(fds[0]);
    close(fds[1]);
    xc_shm_writer_t *w3 = xc_shm_writer_open(g_inst, 10, 4, 0, 0640, "/run/second", &err, why, sizeof why);
    XC_REQUIRE(w3, "replacing a dead writer's object: %.200s", why);
    /* the name now belongs to a newer object: closing w3 must not unlink it */
    xc_shm_writer_t *w4 = xc_shm_writer_open(g_inst, 12, 4, 0, 0640, "/run/third", &err, why, sizeof why);
    XC_REQUIRE(w4, "same-process replacement: %.200s", why);
    xc_shm_writer_close(&w3, 1);
    xc_shm_reader_t *r = xc_shm_reader_open(g_inst, &err);
    XC_CHECK(r != NULL, "an older writer's close unlinked the newer object");
    if (r) {
        xc_shm_snapshot_t s;
        XC_CHECK(xc_shm_reader_snapshot(r, &s, 10) == XC_OK && s.hdr.n_latents == 12 && s.hdr.alive == 1 &&
                     strcmp(s.hdr.owner, "/run/third") == 0,
                 "newer object intact");
        xc_shm_snapshot_free(&s);
        xc_shm_reader_close(&r);
    }
    xc_shm_writer_close(&w4, 1);
    XC_CHECK(stat(path, &st) != 0, "own object not unlinked");
}

static void test_classes(void)
{
    xc_class_thresholds_t t;
    xc_class_thresholds_default(&t);
    XC_CHECK(xc_latent_class(0.95f, 0, &t) == XC_CLASS_CHAT_ONLY, "chat-only");
    XC_CHECK(xc_latent_class(0.05f, 0, &t) == XC_CLASS_BASE_ONLY, "base-only");
    XC_CHECK(xc_latent_class(0.5f, 0, &t) == XC_CLASS_SHARED, "shared");
    XC_CHECK(xc_latent_class(0.6f, 0, &t) == XC_CLASS_OTHER, "0.6 is other");
    XC_CHECK(xc_latent_class(0.4f, 0, &t) == XC_CLASS_SHARED, "0.4 is shared");
    XC_CHECK(xc_latent_class(0.95f, 1, &t) == XC_CLASS_DEAD, "dead wins");
    XC_CHECK(xc_latent_chat_specific(0.95f, 0.1f, 0.3f, &t), "chat-specific");
    XC_CHECK(!xc_latent_chat_specific(0.95f, 0.3f, 0.3f, &t), "nu_err too high");
    XC_CHECK(!xc_latent_chat_specific(0.95f, 0.1f, 0.6f, &t), "nu_rec too high");
    XC_CHECK(!xc_latent_chat_specific(0.95f, NAN, 0.1f, &t), "undefined nu");
    XC_CHECK(!xc_latent_chat_specific(0.85f, 0.0f, 0.0f, &t), "not chat-only");
}

static void test_publisher_from_engine(void)
{
    xc_engine_config_t c;
    xc_cfg_engine_defaults(&c, XC_MODEL_BATCHTOPK);
    c.d = 16, c.dict_size = 64, c.batch_size = 32, c.k = 4, c.threads = 2, c.warmup_steps = 0;
    xc_engine_t *e = xc_engine_new(&c, NULL);
    XC_REQUIRE(e, "engine");
    float x[32 * 32];
    for (int i = 0; i < 32 * 32; i++) x[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
    for (int s = 0; s < 5; s++) XC_REQUIRE(xc_engine_train_step(e, x, 32) == 0, "step");
    xc_class_thresholds_t th;
    xc_class_thresholds_default(&th);
    char why[256];
    int err;
    xc_shmpub_t *p = xc_shmpub_new(g_inst, e, 0640, NULL, &th, &err, why, sizeof why);
    XC_REQUIRE(p, "publisher: %s", why);
    XC_CHECK(xc_shmpub_update(p, e, 123.0) == 0, "update");
    xc_shm_reader_t *r = xc_shm_reader_open(g_inst, &err);
    XC_REQUIRE(r, "reader");
    xc_shm_snapshot_t s;
    XC_REQUIRE(xc_shm_reader_snapshot(r, &s, 10) == XC_OK, "snapshot");
    xc_latent_stats_t ls[64];
    xc_engine_latent_stats(e, ls);
    const float *dn = xc_shm_snapshot_array(&s, XC_SHM_DELTA_NORM);
    const uint8_t *cls = xc_shm_snapshot_array(&s, XC_SHM_CLASS);
    int same = 1;
    uint32_t sum = 0;
    for (int j = 0; j < 64; j++) same &= dn[j] == ls[j].delta_norm && cls[j] == xc_latent_class(ls[j].delta_norm, ls[j].dead, &th);
    for (int k = 0; k < XC_CLASS_N; k++) sum += s.hdr.class_counts[k];
    XC_CHECK(same, "per-latent values differ from the engine's");
    XC_CHECK(sum == 64, "class counts sum to %u", sum);
    XC_CHECK(s.hdr.step == 5 && s.hdr.tokens == 160 && s.hdr.tokens_per_s == 123.0, "header metrics");
    xc_shm_snapshot_free(&s);
    xc_shm_reader_close(&r);
    xc_shmpub_destroy(&p, 1);
    xc_engine_destroy(&e);
}

int main(void)
{
    snprintf(g_inst, sizeof g_inst, "test-%d", (int)getpid());
    XC_RUN(test_round_trip);
    XC_RUN(test_hammer_never_torn);
    XC_RUN(test_stale_object_replaced);
    XC_RUN(test_live_owner_refused);
    XC_RUN(test_classes);
    XC_RUN(test_publisher_from_engine);
    XC_TEST_EXIT();
}
