/* The mixing buffer (PROTOCOL.md 1.4, 1.6): the token slots the trainer fills
 * from the queue and draws each training batch from, uniformly at random
 * without replacement, so that documents streamed in order are mixed.
 *
 * With a stream mixture (config key stream_mix, e.g. "web:0.5,chat:0.5") the
 * buffer is split into one lane per named stream, lane l holding
 * ceil(capacity x share_l) slots. A batch is drawn only when every lane is
 * full, and takes q_l tokens from lane l, where q_l is B x share_l rounded by
 * systematic sampling: floor(B share_l) always, and the R = B - sum floor
 * tokens left over go to R distinct lanes, lane l with probability equal to
 * the fractional part of B share_l. So E[q_l] = B share_l exactly, and each
 * batch is off the ratio by less than one token per stream. A lane refills
 * only from its own stream (xc_queue lanes), so a fast stream waits for a slow
 * one instead of crowding it out.
 *
 * Without a mixture the buffer is one lane of `capacity` slots and a draw is
 * exactly the plain draw (the same random numbers, the same order), so a run
 * without stream_mix trains and checkpoints bit for bit as before.
 *
 * Threads: one owner (the trainer); no locks. The engine's PRNG is passed in. */
#ifndef XC_MIXBUF_H
#define XC_MIXBUF_H

#include <stdint.h>

#include "xc_examples.h"
#include "xc_proto.h"
#include "xc_queue.h"
#include "xc_rng.h"

#define XC_MIX_MAX XC_QUEUE_LANES_MAX /* streams in a mixture */
#define XC_MIX_OTHER "*"              /* the mixture entry of every stream not named */

/* A parsed stream mixture. n = 0: no mixture (one lane takes every stream). */
typedef struct {
    int n;
    char name[XC_MIX_MAX][XC_PROTO_STREAM_MAX + 1]; /* stream tag, or "*" */
    double share[XC_MIX_MAX]; /* normalised: sum 1 */
    int other;                /* the index of "*", -1 when absent */
} xc_mix_spec_t;

/* Parses "web:0.5,chat:0.5" (weights > 0, normalised to shares; spaces
 * ignored; "" = no mixture). A name is a stream tag (PROTOCOL.md 1.1) or "*"
 * (every stream not named, untagged batches included). XC_ECONFIG with why
 * naming the entry. */
int xc_mix_parse(const char *text, xc_mix_spec_t *out, char *why, size_t why_len);
/* The lane a batch of stream `stream` ("" = untagged) goes to: 0 without a
 * mixture; its entry, else "*"; -1 when the mixture takes it nowhere. */
int xc_mix_lane(const xc_mix_spec_t *m, const char *stream);
/* Lanes of the mixture: max(1, n). */
int xc_mix_lanes(const xc_mix_spec_t *m);
/* The lane capacities for a buffer of `capacity` tokens (sum >= capacity);
 * returns the sum. */
long xc_mix_capacities(const xc_mix_spec_t *m, long capacity, long *cap);
/* The tokens each lane gives to a batch of B (systematic sampling, above):
 * q[0..lanes) sums to B. Draws one uniform from rng only when some B share_l
 * is not an integer. */
void xc_mix_quota(const xc_mix_spec_t *m, long B, xc_rng_t *rng, long *q);

typedef struct xc_mixbuf xc_mixbuf_t;

/* A buffer of (sum of lane capacities) x d2 floats and their token context.
 * m is copied. NULL with *err (XC_ENOMEM, XC_EINVAL). Owned by the caller. */
xc_mixbuf_t *xc_mixbuf_new(const xc_mix_spec_t *m, long capacity, long batch, int d2, int *err);
void xc_mixbuf_destroy(xc_mixbuf_t **mb);

int xc_mixbuf_lanes(const xc_mixbuf_t *mb);
/* Free slots of a lane. */
long xc_mixbuf_room(const xc_mixbuf_t *mb, int lane);
/* Tokens held: in one lane, or (lane -1) in all. */
long xc_mixbuf_buffered(const xc_mixbuf_t *mb, int lane);
/* Every lane full: a batch may be drawn. */
int xc_mixbuf_ready(const xc_mixbuf_t *mb);
/* Copies n <= room tokens (x: (n, d2); tm: (n) or NULL = no context) into a lane. */
void xc_mixbuf_put(xc_mixbuf_t *mb, int lane, const float *x, const xc_tokmeta_t *tm, long n);
/* Draws one training batch of B tokens (the buffer must be ready): the one
 * place a batch is made. batch (B, d2) and batch_tm (B) receive the tokens
 * lane by lane; counts (lanes), when not NULL, how many came from each. */
void xc_mixbuf_draw(xc_mixbuf_t *mb, xc_rng_t *rng, float *batch, xc_tokmeta_t *batch_tm, long *counts);

/* Checkpoint views of the buffer: the rows (slots, d2), the context (slots),
 * and a lane table (lanes, 3) of capacity, fill and a hash of the lane's
 * name (only meaningful with a mixture). Pointers stay valid for the buffer's
 * life; the caller copies them into state views. */
float *xc_mixbuf_rows(xc_mixbuf_t *mb, long *slots);
xc_tokmeta_t *xc_mixbuf_context(xc_mixbuf_t *mb);
int64_t *xc_mixbuf_lane_table(xc_mixbuf_t *mb);
/* Marks the lane table as "not loaded" before a checkpoint is read into it. */
void xc_mixbuf_lane_table_clear(xc_mixbuf_t *mb);
/* After a checkpoint was read into the views: takes the saved fill. Without a
 * mixture `meta` = {buffered, slots} as saved; with one, the lane table must
 * have been loaded and match this mixture (names, capacities). Returns the
 * tokens restored (0: none, why says why when it is not just an empty buffer). */
long xc_mixbuf_restore(xc_mixbuf_t *mb, const int64_t meta[2], char *why, size_t why_len);

#endif
