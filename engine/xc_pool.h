/* A fixed pool of worker threads for the engine's parallel passes. The caller
 * thread takes part as worker 0, so a pool of n uses n-1 extra threads. Workers
 * block on a condition variable between passes (they never spin, so they do not
 * steal cycles from OpenBLAS or the event loop). Work is split statically by
 * worker index, which keeps results deterministic for a given thread count. */
#ifndef XC_POOL_H
#define XC_POOL_H

typedef struct xc_pool xc_pool_t;
/* fn(ctx, tid, nthreads): one call per worker, tid in [0, nthreads). */
typedef void (*xc_pool_fn)(void *ctx, int tid, int nthreads);

/* NULL on failure (errno-style failure of pthread_create or malloc). */
xc_pool_t *xc_pool_new(int nthreads);
void xc_pool_destroy(xc_pool_t **p);
int xc_pool_size(const xc_pool_t *p);
/* Runs fn on every worker and returns when all have finished. Not reentrant. */
void xc_pool_run(xc_pool_t *p, xc_pool_fn fn, void *ctx);
/* Static split of [0, n) for worker tid: *lo .. *hi. */
void xc_pool_range(long n, int tid, int nthreads, long *lo, long *hi);

#endif
