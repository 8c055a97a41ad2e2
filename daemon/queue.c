/* Bounded batch queue (see xc_queue.h): a ring of items under one mutex. */
#include "xc_queue.h"
#include "xc_error.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct xc_queue {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    xc_qitem_t *ring; /* (capacity) */
    long cap, head, count;
    int kicked;
    int want_space;   /* a producer found the queue full */
    void (*on_space)(void *);
    void *ctx;
    xc_queue_counts_t c;
};

xc_queue_t *xc_queue_new(long capacity, void (*on_space)(void *), void *ctx)
{
    if (capacity < 1) return NULL;
    xc_queue_t *q = calloc(1, sizeof *q); /* owned by the caller; xc_queue_destroy */
    if (!q) return NULL;
    q->ring = calloc((size_t)capacity, sizeof *q->ring);
    if (!q->ring) goto out_free_q;
    if (pthread_mutex_init(&q->mu, NULL)) goto out_free_ring;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&q->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (rc) goto out_destroy_mu;
    q->cap = capacity;
    q->on_space = on_space;
    q->ctx = ctx;
    q->c.capacity = capacity;
    return q;
out_destroy_mu:
    pthread_mutex_destroy(&q->mu);
out_free_ring:
    free(q->ring);
out_free_q:
    free(q);
    return NULL;
}

void xc_queue_destroy(xc_queue_t **pq)
{
    xc_queue_t *q = pq ? *pq : NULL;
    if (!q) return;
    for (long i = 0; i < q->count; i++) {
        free(q->ring[(q->head + i) % q->cap].x);
        free(q->ring[(q->head + i) % q->cap].meta);
    }
    pthread_cond_destroy(&q->cv);
    pthread_mutex_destroy(&q->mu);
    free(q->ring);
    free(q);
    *pq = NULL;
}

int xc_queue_full(xc_queue_t *q)
{
    pthread_mutex_lock(&q->mu);
    int full = q->count == q->cap;
    if (full) q->want_space = 1;
    pthread_mutex_unlock(&q->mu);
    return full;
}

int xc_queue_push(xc_queue_t *q, const xc_qitem_t *item)
{
    pthread_mutex_lock(&q->mu);
    if (q->count == q->cap) {
        q->want_space = 1;
        pthread_mutex_unlock(&q->mu);
        return XC_EAGAIN;
    }
    q->ring[(q->head + q->count) % q->cap] = *item;
    q->count++;
    q->c.tokens_acked += (uint64_t)item->n;
    q->c.tokens_queued += (uint64_t)item->n;
    q->c.batches_acked++;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
    return XC_OK;
}

/* Called with the lock held and count > 0. Returns whether to call on_space. */
static int take(xc_queue_t *q, xc_qitem_t *out)
{
    *out = q->ring[q->head];
    memset(&q->ring[q->head], 0, sizeof q->ring[q->head]);
    q->head = (q->head + 1) % q->cap;
    q->count--;
    int notify = q->want_space;
    q->want_space = 0;
    return notify;
}

static struct timespec deadline(int timeout_ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    return dl;
}

void xc_queue_wait(xc_queue_t *q, int timeout_ms, int want_items)
{
    struct timespec dl = deadline(timeout_ms);
    pthread_mutex_lock(&q->mu);
    while (!q->kicked && !(want_items && q->count > 0))
        if (pthread_cond_timedwait(&q->cv, &q->mu, &dl) == ETIMEDOUT) break;
    q->kicked = 0;
    pthread_mutex_unlock(&q->mu);
}

int xc_queue_pop(xc_queue_t *q, xc_qitem_t *out, int timeout_ms)
{
    struct timespec dl = deadline(timeout_ms);
    pthread_mutex_lock(&q->mu);
    while (q->count == 0 && !q->kicked) {
        if (pthread_cond_timedwait(&q->cv, &q->mu, &dl) == ETIMEDOUT) break;
    }
    q->kicked = 0;
    if (q->count == 0) {
        pthread_mutex_unlock(&q->mu);
        return XC_EAGAIN;
    }
    int notify = take(q, out);
    pthread_mutex_unlock(&q->mu);
    if (notify && q->on_space) q->on_space(q->ctx);
    return XC_OK;
}

int xc_queue_try_pop(xc_queue_t *q, xc_qitem_t *out)
{
    pthread_mutex_lock(&q->mu);
    if (q->count == 0) {
        pthread_mutex_unlock(&q->mu);
        return XC_EAGAIN;
    }
    int notify = take(q, out);
    pthread_mutex_unlock(&q->mu);
    if (notify && q->on_space) q->on_space(q->ctx);
    return XC_OK;
}

void xc_queue_kick(xc_queue_t *q)
{
    pthread_mutex_lock(&q->mu);
    q->kicked = 1;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

void xc_queue_note_buffered(xc_queue_t *q, uint64_t n)
{
    pthread_mutex_lock(&q->mu);
    q->c.tokens_queued -= n;
    q->c.tokens_buffered += n;
    pthread_mutex_unlock(&q->mu);
}

void xc_queue_note_trained(xc_queue_t *q, uint64_t n, int failed)
{
    pthread_mutex_lock(&q->mu);
    q->c.tokens_buffered -= n;
    if (failed) q->c.tokens_failed += n;
    else q->c.tokens_trained += n;
    pthread_mutex_unlock(&q->mu);
}

void xc_queue_note_restored(xc_queue_t *q, uint64_t n)
{
    pthread_mutex_lock(&q->mu);
    q->c.tokens_restored += n;
    q->c.tokens_buffered += n;
    pthread_mutex_unlock(&q->mu);
}

void xc_queue_counts(xc_queue_t *q, xc_queue_counts_t *out)
{
    pthread_mutex_lock(&q->mu);
    *out = q->c;
    out->depth = q->count;
    pthread_mutex_unlock(&q->mu);
}
