/* Tests of the bounded batch queue (daemon/queue.c): the bound, the on_space
 * wake-up that ends backpressure, kicks, the token accounting, and a
 * producer/consumer run across threads (order kept, nothing lost). */
#include "xc_error.h"
#include "xc_queue.h"
#include "xc_test.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

static atomic_int g_space;
static void on_space(void *ctx) { atomic_fetch_add(&g_space, 1); }

static xc_qitem_t item(long n, uint64_t seq)
{
    xc_qitem_t it;
    memset(&it, 0, sizeof it);
    it.x = malloc((size_t)n * sizeof(float));
    if (it.x) it.x[0] = (float)seq;
    it.n = n;
    it.seq = seq;
    return it;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void test_bound_and_space(void)
{
    xc_queue_t *q = xc_queue_new(3, on_space, NULL);
    xc_qitem_t it, out;
    xc_queue_counts_t c;
    atomic_store(&g_space, 0);
    XC_REQUIRE(q != NULL, "new");
    XC_CHECK(xc_queue_new(0, NULL, NULL) == NULL, "capacity 0 refused");
    for (int i = 0; i < 3; i++) {
        it = item(10, (uint64_t)i);
        XC_CHECK(xc_queue_push(q, &it) == 0, "push %d", i);
    }
    XC_CHECK(xc_queue_full(q), "full");
    it = item(10, 9);
    XC_CHECK(xc_queue_push(q, &it) == XC_EAGAIN, "push beyond the bound");
    free(it.x);
    xc_queue_counts(q, &c);
    XC_CHECK(c.depth == 3 && c.capacity == 3 && c.tokens_acked == 30 && c.tokens_queued == 30 && c.batches_acked == 3,
             "counts");
    XC_CHECK(xc_queue_try_pop(q, &out) == 0 && out.seq == 0, "FIFO");
    XC_CHECK(atomic_load(&g_space) == 1, "on_space after a pop that ends backpressure (%d)", atomic_load(&g_space));
    free(out.x);
    XC_CHECK(xc_queue_try_pop(q, &out) == 0 && out.seq == 1, "FIFO 2");
    XC_CHECK(atomic_load(&g_space) == 1, "no on_space when nobody waited");
    free(out.x);
    xc_queue_note_buffered(q, 20);
    xc_queue_note_trained(q, 15, 0);
    xc_queue_note_trained(q, 5, 1);
    xc_queue_counts(q, &c);
    XC_CHECK(c.tokens_queued == 10 && c.tokens_buffered == 0 && c.tokens_trained == 15 && c.tokens_failed == 5,
             "accounting");
    XC_CHECK(c.tokens_acked == c.tokens_queued + c.tokens_buffered + c.tokens_trained + c.tokens_failed, "sum");
    xc_queue_destroy(&q); /* frees the item still queued (ASan checks) */
    XC_CHECK(q == NULL, "destroy clears");
}

static xc_queue_t *g_q;
static void *kicker(void *arg)
{
    struct timespec ts = {0, 50 * 1000000L};
    nanosleep(&ts, NULL);
    xc_queue_kick(g_q);
    return NULL;
}

static void test_kick_and_wait(void)
{
    xc_qitem_t out;
    g_q = xc_queue_new(2, NULL, NULL);
    XC_REQUIRE(g_q != NULL, "new");
    double t0 = now_s();
    XC_CHECK(xc_queue_pop(g_q, &out, 60) == XC_EAGAIN, "timeout");
    XC_CHECK(now_s() - t0 >= 0.05, "timed out too early");
    pthread_t th;
    pthread_create(&th, NULL, kicker, NULL);
    t0 = now_s();
    XC_CHECK(xc_queue_pop(g_q, &out, 5000) == XC_EAGAIN, "kick");
    XC_CHECK(now_s() - t0 < 2.0, "kick did not wake the pop");
    pthread_join(th, NULL);
    xc_qitem_t it = item(1, 1);
    xc_queue_push(g_q, &it);
    t0 = now_s();
    xc_queue_wait(g_q, 5000, 1);
    XC_CHECK(now_s() - t0 < 1.0, "wait(want_items) returns at once with an item queued");
    t0 = now_s();
    xc_queue_wait(g_q, 80, 0);
    XC_CHECK(now_s() - t0 >= 0.07, "wait(!want_items) ignores items");
    xc_queue_destroy(&g_q);
}

#define N_ITEMS 20000
static void *consumer(void *arg)
{
    long *bad = arg;
    for (uint64_t want = 0; want < N_ITEMS;) {
        xc_qitem_t out;
        if (xc_queue_pop(g_q, &out, 1000)) continue;
        if (out.seq != want || out.x[0] != (float)want) (*bad)++;
        xc_queue_note_buffered(g_q, (uint64_t)out.n);
        xc_queue_note_trained(g_q, (uint64_t)out.n, 0);
        free(out.x);
        want++;
    }
    return NULL;
}

static void test_threads(void)
{
    long bad = 0;
    pthread_t th;
    atomic_store(&g_space, 0);
    g_q = xc_queue_new(4, on_space, NULL);
    XC_REQUIRE(g_q != NULL, "new");
    pthread_create(&th, NULL, consumer, &bad);
    long full = 0;
    for (uint64_t s = 0; s < N_ITEMS;) {
        xc_qitem_t it = item(3, s);
        if (xc_queue_push(g_q, &it) == 0) {
            s++;
        } else {
            free(it.x);
            full++;
            while (xc_queue_full(g_q)) sched_yield();
        }
    }
    pthread_join(th, NULL);
    xc_queue_counts_t c;
    xc_queue_counts(g_q, &c);
    XC_CHECK(bad == 0, "%ld items out of order", bad);
    XC_CHECK(c.tokens_acked == 3 * N_ITEMS && c.tokens_trained == 3 * N_ITEMS && c.depth == 0, "counts");
    XC_CHECK(full == 0 || atomic_load(&g_space) > 0, "queue was full %ld times but on_space never fired", full);
    xc_queue_destroy(&g_q);
}

int main(void)
{
    XC_RUN(test_bound_and_space);
    XC_RUN(test_kick_and_wait);
    XC_RUN(test_threads);
    XC_TEST_EXIT();
}
