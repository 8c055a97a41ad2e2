/* Tests of the trainer's snapshot hand-off (daemon/xc_trainer.h): the loop
 * takes immutable snapshots by pointer swap while the trainer keeps training
 * and refreshing its records; a snapshot the loop holds never changes under
 * it; a requested generation arrives; and at most three snapshots are ever
 * alive (the loop's, the ready one, the spare). */
#include "xc_config.h"
#include "xc_trainer.h"
#include "xc_test.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define D 8
#define NF 64
#define BS 16

static atomic_int g_notified;
static void on_notify(void *ctx) { atomic_fetch_add(&g_notified, 1); }

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Pushes one batch of n random tokens; 0 when the queue took it. */
static int push_batch(xc_queue_t *q, uint64_t seq, unsigned *seed)
{
    xc_qitem_t it;
    memset(&it, 0, sizeof it);
    it.n = BS;
    it.seq = seq;
    it.x = malloc(sizeof(float) * BS * 2 * D); /* owned by the queue once pushed */
    if (!it.x) return -1;
    for (int i = 0; i < BS * 2 * D; i++) it.x[i] = (float)rand_r(seed) / RAND_MAX - 0.5f;
    if (xc_queue_push(q, &it)) {
        free(it.x);
        return -1;
    }
    return 0;
}

static void test_snapshot_handoff(void)
{
    char dir[] = "/tmp/xc_test_trainer.XXXXXX";
    XC_REQUIRE(mkdtemp(dir), "temp dir");
    xc_engine_config_t ec;
    xc_cfg_engine_defaults(&ec, XC_MODEL_BATCHTOPK);
    ec.d = D, ec.dict_size = NF, ec.batch_size = BS, ec.k = 2, ec.threads = 1;
    xc_engine_t *e = xc_engine_new(&ec, NULL);
    xc_queue_t *q = xc_queue_new(8, NULL, NULL);
    XC_REQUIRE(e && q, "engine and queue");
    xc_trainer_opts_t o;
    memset(&o, 0, sizeof o);
    o.mix_tokens = 2 * BS;
    o.seed = 7;
    o.state_dir = dir;
    o.name = "snap";
    o.config_json = "{}";
    o.notify = on_notify;
    o.shm_interval = 0.001; /* refresh the records (and hand over a snapshot) every step */
    xc_class_thresholds_default(&o.thresholds);
    xc_examples_config_default(&o.examples);
    int err = 0;
    char why[256] = "";
    xc_trainer_t *t = xc_trainer_new(e, q, &o, &err);
    XC_REQUIRE(t, "trainer: %d", err);
    XC_REQUIRE(xc_trainer_resume(t, NULL, 1, why, sizeof why) == 0, "fresh start: %s", why);
    XC_REQUIRE(xc_trainer_start(t) == 0, "start");

    xc_snapshot_t *mine = NULL;
    xc_latent_stats_t held0;
    long held_step = -2, max_alive = 0, swaps = 0, steps_seen = 0;
    uint64_t want_gen = 0, seq = 0;
    unsigned seed = 1;
    double t0 = now_s();
    while (now_s() - t0 < 1.5) {
        push_batch(q, seq++, &seed); /* a full queue refuses: the trainer catches up */
        xc_snapshot_t *next = xc_trainer_snapshot_swap(t, mine);
        if (next != mine) {
            swaps++;
            mine = next;
            held_step = mine->step;
            held0 = mine->st[0];
        } else if (mine) { /* held: the trainer must not have written into it */
            XC_CHECK(mine->step == held_step && memcmp(&held0, &mine->st[0], sizeof held0) == 0,
                     "the loop's snapshot changed under it (step %ld -> %ld)", held_step, mine->step);
        }
        long alive = xc_snapshot_alive();
        if (alive > max_alive) max_alive = alive;
        if (mine && mine->step > steps_seen) steps_seen = mine->step;
        if (!want_gen && now_s() - t0 > 0.5) want_gen = xc_trainer_request_snapshot(t);
        usleep(500);
    }
    /* the requested generation arrives */
    double t1 = now_s();
    while ((!mine || mine->gen < want_gen) && now_s() - t1 < 10.0) {
        mine = xc_trainer_snapshot_swap(t, mine);
        usleep(1000);
    }
    XC_CHECK(want_gen > 0 && mine && mine->gen >= want_gen, "snapshot of request %llu never came (have %llu)",
             (unsigned long long)want_gen, mine ? (unsigned long long)mine->gen : 0ull);
    XC_CHECK(mine && mine->F == NF && mine->exact == NULL && mine->exact_step == -1, "shape and no exact pass");
    XC_CHECK(swaps >= 3 && steps_seen > 0, "snapshots kept coming while training (%ld swaps, step %ld)", swaps,
             steps_seen);
    XC_CHECK(max_alive <= 3, "%ld snapshots alive at once (bound 3)", max_alive);
    xc_trainer_stop(t);
    xc_trainer_join(t);
    xc_snapshot_free(&mine);
    xc_trainer_destroy(&t);
    XC_CHECK(xc_snapshot_alive() == 0, "%ld snapshots leaked", xc_snapshot_alive());
    xc_queue_destroy(&q);
    xc_engine_destroy(&e);
    char cmd[96];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

int main(void)
{
    XC_RUN(test_snapshot_handoff);
    XC_TEST_EXIT();
}
