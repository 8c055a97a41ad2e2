/* The bounded batch queue between the loop thread (producer side: it pushes
 * accepted batches, never blocks) and the trainer thread (consumer side: it
 * pops, blocking with a timeout). One mutex + condition variable. The queue
 * also keeps the token accounting of PROTOCOL.md 1.3 under that same lock, so
 * a status read sees acked = trained + buffered + queued (+ failed) exactly. */
#ifndef XC_QUEUE_H
#define XC_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#include "xc_examples.h"

/* Lanes: with a stream mixture (xc_mixbuf.h) each stream has its own lane of
 * `capacity` items, so that a full lane (a fast stream) never keeps a slow
 * stream's batches from the trainer. Without one there is one lane. */
#define XC_QUEUE_LANES_MAX 16

/* One accepted batch: n tokens of [2, d] float32, x heap-allocated, and the
 * tokens' context (ids, documents, positions) when the producer sent any. */
typedef struct {
    float *x;          /* (n, 2, d); owned by whoever holds the item */
    xc_tokmeta_t *meta;/* (n) or NULL; owned like x */
    long n;
    int lane;          /* 0 .. lanes - 1 (the stream's lane; 0 without a mixture) */
    uint64_t seq;
    char producer[65];
    char stream[XC_PROTO_STREAM_MAX + 1];
} xc_qitem_t;

typedef struct {
    uint64_t tokens_acked, batches_acked;
    uint64_t tokens_queued;   /* in the queue, or popped but not yet in the buffer */
    uint64_t tokens_buffered; /* in the mixing buffer */
    uint64_t tokens_trained;
    uint64_t tokens_failed;   /* trained on but the step failed (should stay 0) */
    uint64_t tokens_restored; /* put back into the buffer from a checkpoint at start */
    long depth, capacity;     /* items (all lanes; capacity per lane) */
    int lanes;
    long lane_depth[XC_QUEUE_LANES_MAX];       /* items per lane */
    uint64_t lane_queued[XC_QUEUE_LANES_MAX];  /* tokens in each lane's ring */
    uint64_t lane_acked[XC_QUEUE_LANES_MAX];   /* tokens pushed into each lane */
} xc_queue_counts_t;

typedef struct xc_queue xc_queue_t;

/* on_space(ctx) is called (from the consumer thread, without the lock held)
 * when a pop frees a slot after a push found the queue full. NULL on failure. */
xc_queue_t *xc_queue_new(long capacity, void (*on_space)(void *), void *ctx);
/* The same with `lanes` lanes (1 .. XC_QUEUE_LANES_MAX) of `capacity` items each. */
xc_queue_t *xc_queue_new_lanes(long capacity, int lanes, void (*on_space)(void *), void *ctx);
/* Frees the queue and every item still in it. */
void xc_queue_destroy(xc_queue_t **q);

/* 1 when a push would fail (every lane full); arms on_space so the caller hears about room. */
int xc_queue_full(xc_queue_t *q);
/* 1 when a push into this lane would fail; arms on_space likewise. */
int xc_queue_lane_full(xc_queue_t *q, int lane);
/* Into lane item->lane. Takes ownership of item->x and item->meta on success (0); XC_EAGAIN when
 * that lane is full (item untouched). */
int xc_queue_push(xc_queue_t *q, const xc_qitem_t *item);
/* Waits up to timeout_ms for an item; 0 and *out (caller owns out->x, out->meta), or
 * XC_EAGAIN on timeout or after xc_queue_kick. */
int xc_queue_pop(xc_queue_t *q, xc_qitem_t *out, int timeout_ms);
/* Non-blocking pop (the first lane holding an item). */
int xc_queue_try_pop(xc_queue_t *q, xc_qitem_t *out);
/* Non-blocking pop from one lane. */
int xc_queue_try_pop_lane(xc_queue_t *q, int lane, xc_qitem_t *out);
/* Waits up to timeout_ms for a kick, or for an item to be queued in a lane
 * whose bit is set in want_lanes (1: lane 0); pops nothing. */
void xc_queue_wait(xc_queue_t *q, int timeout_ms, unsigned want_lanes);
/* Wakes a waiting pop / wait (commands for the trainer). */
void xc_queue_kick(xc_queue_t *q);

/* Accounting moves by the consumer: queued -> buffered, buffered -> trained / failed. */
void xc_queue_note_buffered(xc_queue_t *q, uint64_t n);
void xc_queue_note_trained(xc_queue_t *q, uint64_t n, int failed);
/* n popped tokens that will not be trained (intake exclusions, statistics-only
 * tokens of the normalisation pass): they leave tokens_queued; the trainer counts why. */
void xc_queue_note_excluded(xc_queue_t *q, uint64_t n);
/* n tokens restored into the mixing buffer from a checkpoint (acked by an earlier run). */
void xc_queue_note_restored(xc_queue_t *q, uint64_t n);
void xc_queue_counts(xc_queue_t *q, xc_queue_counts_t *out);

#endif
