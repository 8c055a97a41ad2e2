/* One training job over R latent shards (`mpirun -np R xcoderd ...`).
 *
 * Every rank holds a latent-sharded engine (engine/xc_engine.h,
 * xc_engine_new_sharded): the latents [lo, lo+n) of xc_coll_slice. Rank 0 is
 * the whole service as with one process (sockets, queue, mixing buffer,
 * control, shared memory, checkpoints); ranks > 0 hold no socket, no file and
 * no shared memory: they run xc_shard_follow, which obeys a small command
 * stream that rank 0 broadcasts through the engine's collective table:
 *
 *   TRAIN     the drawn batch; every rank feeds the exact Latent Scaling pass
 *             (when one runs) and trains on it; the step's selection and each
 *             rank's step time come back to rank 0 (examples, status)
 *   SCAL_NEW  freeze the dictionary for an exact Latent Scaling pass
 *   SCAL_END  the pass's per-latent results gathered on rank 0 (or dropped)
 *   STATS     per-latent statistics and running Latent Scaling estimates
 *             gathered on rank 0 (shared memory, table / latent / top)
 *   GATHER    the whole training state gathered on rank 0 into an unsharded
 *             engine of the full shape (the checkpoint's global layout)
 *   SCATTER   that engine's state sliced out to every rank (start and resume,
 *             whatever R the checkpoint was written at)
 *   PING      nothing: rank 0 sends it about once a second while it does not
 *             train, so a follower's wait for the next command is bounded
 *   STOP      the follower returns (after rank 0 gathered the final state)
 *
 * Every command ends with each rank's report gathered on rank 0 (its result
 * code, step time and collective counters), so a rank that failed or died is
 * noticed by rank 0 at the latest at the next command; every collective is
 * bounded by the collective table's progress timeout, so nobody waits forever.
 * A call that returns XC_ECOLL means the ranks can no longer be assumed to
 * hold one model: the caller ends the job (no final checkpoint from a
 * partial state).
 *
 * Rank 0's unsharded engine (`full`) is a container: it never trains; it holds
 * the gathered state for the checkpoint writer and the loader (so checkpoints
 * have one layout whatever R is), at the memory cost of one unsharded training
 * state on rank 0.
 *
 * Threads: every function here makes collective calls; on each rank one thread
 * at a time calls them (rank 0: start-up on the main thread, then the trainer
 * thread). */
#ifndef XC_SHARD_H
#define XC_SHARD_H

#include "xc_coll.h"
#include "xc_engine.h"

#include <stdint.h>

#define XC_SHARD_REPORT_RANKS 64 /* ranks whose step time status shows one by one */

typedef struct xc_shard xc_shard_t;

/* What rank 0 knows after the last TRAIN. */
typedef struct {
    int ranks;
    int ranks_shown;                          /* min(ranks, XC_SHARD_REPORT_RANKS) */
    double step_ms[XC_SHARD_REPORT_RANKS];    /* each rank's wall time of the step */
    double step_ms_max;                       /* the slowest rank's, over all ranks */
    double comm_ms;                           /* rank 0: time inside collectives, last step */
    uint64_t comm_bytes;                      /* rank 0: bytes sent + received, last step */
    double comm_ms_max;                       /* the largest of every rank's comm time */
    uint64_t comm_bytes_total;                /* rank 0, since start */
} xc_shard_report_t;

/* The settings rank 0 sends every follower at start, so that followers need
 * neither the configuration file nor the command line (other machines). */
typedef struct {
    xc_engine_config_t ec;
    double timeout_s;   /* collectives' progress timeout (mpi_timeout) */
    int log_level;
    int ok;             /* 0: rank 0 failed to start; followers exit */
} xc_shard_hello_t;

/* Start-up handshake: rank 0 sends *h, followers receive it into *h (within
 * the table's timeout). 0 or XC_ECOLL. */
int xc_shard_hello(xc_coll_t *c, xc_shard_hello_t *h);

/* e: this rank's sharded engine (borrowed); full: on rank 0 an unsharded engine
 * of the same configuration (borrowed), NULL on other ranks. c borrowed. NULL
 * with *err when out of memory. */
xc_shard_t *xc_shard_new(xc_coll_t *c, xc_engine_t *e, xc_engine_t *full, int *err);
void xc_shard_destroy(xc_shard_t **sh);
int xc_shard_rank(const xc_shard_t *sh);
int xc_shard_size(const xc_shard_t *sh);

/* ---- rank 0: each returns 0, XC_ECOLL (a peer is lost: end the job), or a
 * rank's own failure (XC_ENOMEM ...: also ends the job, the states differ). */
int xc_shard_scatter(xc_shard_t *sh);
/* One training step on x (B tokens) on every rank; pass: rank 0's exact pass
 * or NULL (every rank feeds its own). *step_rc: the step's result (the same on
 * every rank: XC_ENONFINITE ... refuse the batch everywhere). *add_rc: the
 * pass's xc_scaling_add result. */
int xc_shard_train(xc_shard_t *sh, const float *x, long B, xc_scaling_t *pass, int *step_rc, int *add_rc);
/* The last step's selection over all ranks (global latent indices, CSR over
 * tokens), as xc_engine_selection. */
long xc_shard_selection(const xc_shard_t *sh, const long **row_ptr, const int **col, const float **val);
int xc_shard_scaling_new(xc_shard_t *sh, xc_scaling_t **pass);
/* Ends the pass on every rank; out (dict_size entries) receives the results,
 * NULL drops them (cancel). *pass is destroyed. */
int xc_shard_scaling_end(xc_shard_t *sh, xc_scaling_t **pass, xc_scaling_stats_t *out);
/* lat, run: dict_size entries each on rank 0. */
int xc_shard_stats(xc_shard_t *sh, xc_latent_stats_t *lat, xc_scaling_stats_t *run);
/* Every state view into `full`, then xc_engine_state_restored(full). */
int xc_shard_gather(xc_shard_t *sh);
int xc_shard_ping(xc_shard_t *sh);
int xc_shard_stop(xc_shard_t *sh);
/* Seconds since rank 0's last command (for the heartbeat). */
double xc_shard_idle_s(const xc_shard_t *sh);
void xc_shard_report(const xc_shard_t *sh, xc_shard_report_t *out);
/* A line saying what failed last ("" if nothing). */
const char *xc_shard_error(const xc_shard_t *sh);

/* ---- ranks > 0: obeys rank 0 until STOP (0) or a failure (XC_ECOLL: rank 0 or
 * a peer is lost; another code: this rank failed a command). */
int xc_shard_follow(xc_shard_t *sh, double timeout_s);

#endif
