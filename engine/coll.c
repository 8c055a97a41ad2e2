/* The one-process collective table (xc_coll.h): with a single shard every
 * reduction and broadcast is the identity, and a gather is a copy. Keeping it a
 * real table (rather than `if (size > 1)` in the engine) means the sharded code
 * path is the only code path, so one-process runs exercise it. */
#include "xc_coll.h"
#include "xc_error.h"

#include <string.h>

static int single_allreduce(xc_coll_t *c, void *buf, long n, xc_coll_type_t t, xc_coll_op_t op)
{
    (void)c; (void)buf; (void)n; (void)t; (void)op;
    return 0;
}

static int single_bcast(xc_coll_t *c, void *buf, size_t bytes, int root)
{
    (void)c; (void)buf; (void)bytes;
    return root == 0 ? 0 : XC_EINVAL;
}

static int single_allgatherv(xc_coll_t *c, const void *send, size_t send_bytes, void *recv,
                             const size_t *recv_bytes)
{
    (void)c;
    if (recv_bytes[0] != send_bytes) return XC_EINVAL;
    if (send_bytes && recv != send) memmove(recv, send, send_bytes);
    return 0;
}

static int single_gatherv(xc_coll_t *c, const void *send, size_t send_bytes, void *recv,
                          const size_t *recv_bytes, int root)
{
    if (root != 0) return XC_EINVAL;
    return single_allgatherv(c, send, send_bytes, recv, recv_bytes);
}

xc_coll_t *xc_coll_single(void)
{
    /* Shared by every engine of the process and never written: its accounting
     * fields stay 0 (nothing crosses a network). */
    static xc_coll_t one = {.rank = 0, .size = 1, .impl = NULL, .allreduce = single_allreduce,
                            .bcast = single_bcast, .allgatherv = single_allgatherv,
                            .gatherv = single_gatherv};
    return &one;
}

void xc_coll_slice(long F, int size, int rank, long *lo, long *n)
{
    long base = F / size, extra = F % size;
    *n = base + (rank < extra ? 1 : 0);
    *lo = rank * base + (rank < extra ? rank : extra);
}
