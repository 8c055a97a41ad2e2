/* Bounded batch queue (see xc_queue.h): a ring of items per lane under one mutex. */
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
    xc_qitem_t *ring; /* (lanes, capacity): lane l's ring at ring + l * cap */
    long cap, head[XC_QUEUE_LANES_MAX], count[XC_QUEUE_LANES_MAX];
    int lanes;
    int kicked;
    int want_space;   /* a producer found the queue full */
    void (*on_space)(void *);
    void *ctx;
    xc_queue_counts_t c;
};

xc_queue_t *xc_queue_new(long capacity, void (*on_space)(void *), void *ctx)
{
    return xc_queue_new_lanes(capacity, 1, on_space, ctx);
}

xc_queue_t *xc_queue_new_lanes(long capacity, int lanes, void (*on_space)(void *), void *ctx)
{
    if (capacity < 1 || lanes < 1 || lanes > XC_QUEUE_LANES_MAX) return NULL;
    xc_queue_t *q = calloc(1, sizeof *q); /* owned by the caller; xc_queue_destroy */
    if (!q) return NULL;
    q->lanes = lanes;
    q->c.lanes = lanes;
    q->ring = calloc((size_t)capacity * (size_t)lanes, sizeof *q->ring);
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
    for (int l = 0; l < q->lanes; l++)
        for (long i = 0; i < q->count[l]; i++) {
            xc_qitem_t *it = &q->ring[l * q->cap + (q->head[l] + i) % q->cap];
            free(it->x);
            free(it->meta);
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
    int full = 1;
    for (int l = 0; l < q->lanes; l++) full &= q->count[l] == q->cap;
    if (full) q->want_space = 1;
    pthread_mutex_unlock(&q->mu);
    return full;
}

int xc_queue_lane_full(xc_queue_t *q, int lane)
{
    if (lane < 0 || lane >= q->lanes) return 1;
    pthread_mutex_lock(&q->mu);
    int full = q->count[lane] == q->cap;
    if (full) q->want_space = 1;
    pthread_mutex_unlock(&q->mu);
    return full;
}

int xc_queue_push(xc_queue_t *q, const xc_qitem_t *item)
{
    int l = item->lane;
    if (l < 0 || l >= q->lanes) return XC_EINVAL;
    pthread_mutex_lock(&q->mu);
    if (q->count[l] == q->cap) {
        q->want_space = 1;
        pthread_mutex_unlock(&q->mu);
        return XC_EAGAIN;
    }
    q->ring[l * q->cap + (q->head[l] + q->count[l]) % q->cap] = *item;
    q->count[l]++;
    q->c.tokens_acked += (uint64_t)item->n;
    q->c.tokens_queued += (uint64_t)item->n;
    q->c.lane_acked[l] += (uint64_t)item->n;
    q->c.lane_queued[l] += (uint64_t)item->n;
    q->c.batches_acked++;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
    return XC_OK;
}

/* Called with the lock held and count[l] > 0. Returns whether to call on_space. */
static int take(xc_queue_t *q, int l, xc_qitem_t *out)
{
    xc_qitem_t *it = &q->ring[l * q->cap + q->head[l]];
    *out = *it;
    memset(it, 0, sizeof *it);
    q->head[l] = (q->head[l] + 1) % q->cap;
    q->count[l]--;
    q->c.lane_queued[l] -= (uint64_t)out->n;
    int notify = q->want_space;
    q->want_space = 0;
    return notify;
}

/* The first lane holding an item, -1 when all are empty (lock held). */
static int first_lane(const xc_queue_t *q, unsigned mask)
{
    for (int l = 0; l < q->lanes; l++)
        if ((mask >> l & 1u) && q->count[l] > 0) return l;
    return -1;
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

void xc_queue_wait(xc_queue_t *q, int timeout_ms, unsigned want_lanes)
{
    struct timespec dl = deadline(timeout_ms);
    pthread_mutex_lock(&q->mu);
    while (!q->kicked && first_lane(q, want_lanes) < 0)
        if (pthread_cond_timedwait(&q->cv, &q->mu, &dl) == ETIMEDOUT) break;
    q->kicked = 0;
    pthread_mutex_unlock(&q->mu);
}

int xc_queue_pop(xc_queue_t *q, xc_qitem_t *out, int timeout_ms)
{
    struct timespec dl = deadline(timeout_ms);
    pthread_mutex_lock(&q->mu);
    while (first_lane(q, ~0u) < 0 && !q->kicked) {
        if (pthread_cond_timedwait(&q->cv, &q->mu, &dl) == ETIMEDOUT) break;
    }
    q->kicked = 0;
    int l = first_lane(q, ~0u);
    if (l < 0) {
        pthread_mutex_unlock(&q->mu);
        return XC_EAGAIN;
    }
    int notify = take(q, l, out);
    pthread_mutex_unlock(&q->mu);
    if (notify && q->on_space) q->on_space(q->ctx);
    return XC_OK;
}

int xc_queue_try_pop(xc_queue_t *q, xc_qitem_t *out)
{
    pthread_mutex_lock(&q->mu);
    int l = first_lane(q, ~0u);
    if (l < 0) {
        pthread_mutex_unlock(&q->mu);
        return XC_EAGAIN;
    }
    int notify = take(q, l, out);
    pthread_mutex_unlock(&q->mu);
    if (notify && q->on_space) q->on_space(q->ctx);
    return XC_OK;
}

int xc_queue_try_pop_lane(xc_queue_t *q, int lane, xc_qitem_t *out)
{
    if (lane < 0 || lane >= q->lanes) return XC_EAGAIN;
    pthread_mutex_lock(&q->mu);
    if (q->count[lane] == 0) {
        pthread_mutex_unlock(&q->mu);
        return XC_EAGAIN;
    }
    int notify = take(q, lane, out);
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

void xc_queue_note_excluded(xc_queue_t *q, uint64_t n)
{
    pthread_mutex_lock(&q->mu);
    q->c.tokens_queued -= n;
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
    out->depth = 0;
    for (int l = 0; l < q->lanes; l++) {
        out->lane_depth[l] = q->count[l];
        out->depth += q->count[l];
    }
    pthread_mutex_unlock(&q->mu);
}
