/* Collectives for a latent-sharded engine.
 *
 * The engine may own only a slice of the dictionary (a contiguous range of
 * latents: their encoder columns, decoder rows, encoder biases, Adam moments and
 * statistics). A training step then needs a handful of collectives across the
 * shards: the selection histograms and boundary candidates, the partial
 * reconstructions, AuxK's per-token candidates, the squared gradient norm, theta's
 * minimum and the step's scalar metrics. The engine does no I/O, so it reaches its
 * peers only through this table of function pointers; the service supplies the
 * implementation (daemon/: MPI), and xc_coll_single() is the one-process one,
 * under which every call is the identity and the engine behaves exactly as an
 * unsharded one.
 *
 * Contract for every implementation:
 *   - every rank calls the same collectives in the same order with the same
 *     counts and types (the engine guarantees this: its control flow depends only
 *     on values that were themselves all-reduced or broadcast);
 *   - the calls are made from one thread (the engine's calling thread, never a
 *     pool worker);
 *   - each returns 0 or XC_ECOLL (a peer died, a collective made no progress
 *     within the implementation's timeout, or the transport failed); after
 *     XC_ECOLL the engine stops the step and the caller must end the job: the
 *     ranks' states can no longer be assumed equal.
 * The table is borrowed by the engine for its lifetime; its owner frees it after
 * destroying every engine that uses it. */
#ifndef XC_COLL_H
#define XC_COLL_H

#include <stddef.h>
#include <stdint.h>

typedef enum { XC_COLL_F32 = 0, XC_COLL_F64, XC_COLL_I64, XC_COLL_U64 } xc_coll_type_t;
typedef enum { XC_COLL_SUM = 0, XC_COLL_MAX, XC_COLL_MIN } xc_coll_op_t;

typedef struct xc_coll xc_coll_t;
struct xc_coll {
    int rank;   /* this process's index, 0 .. size-1 */
    int size;   /* number of shards (1: unsharded) */
    void *impl; /* the implementation's own state */
    /* buf (n elements of type t) is replaced on every rank by the element-wise
     * reduction over all ranks. Sums of floats are reduced in rank order, so
     * every rank holds bit-identical results. */
    int (*allreduce)(xc_coll_t *c, void *buf, long n, xc_coll_type_t t, xc_coll_op_t op);
    /* bytes of buf on root are copied to every other rank's buf. */
    int (*bcast)(xc_coll_t *c, void *buf, size_t bytes, int root);
    /* Each rank contributes send_bytes; recv (on every rank) receives all
     * contributions concatenated in rank order; recv_bytes[r] is rank r's
     * contribution size and must be known to every rank (all-reduce or
     * all-gather the sizes first when they vary). */
    int (*allgatherv)(xc_coll_t *c, const void *send, size_t send_bytes, void *recv,
                      const size_t *recv_bytes);
    /* As allgatherv, but only root receives (recv and recv_bytes are read only
     * on root; others may pass NULL). */
    int (*gatherv)(xc_coll_t *c, const void *send, size_t send_bytes, void *recv,
                   const size_t *recv_bytes, int root);
    /* Accounting, updated by the implementation: bytes this rank sent and
     * received through collectives, and wall seconds spent inside them. */
    uint64_t bytes;
    double seconds;
    uint64_t calls;
};

/* The one-process implementation: size 1, rank 0, every call the identity (a
 * copy for the gathers). A static object; never freed. */
xc_coll_t *xc_coll_single(void);

/* The contiguous latent slice of a rank: F latents over R ranks, the first
 * F % R ranks own one more. [*lo, *lo + *n). */
void xc_coll_slice(long F, int size, int rank, long *lo, long *n);

#endif
