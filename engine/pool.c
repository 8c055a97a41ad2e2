/* The engine's worker pool (see xc_pool.h): n-1 threads that sleep on a
 * condition variable between passes, and the caller as worker 0. */
#include "xc_pool.h"

#include <pthread.h>
#include <stdlib.h>

struct xc_pool {
    int n;
    pthread_t *threads;          /* n-1 workers; owned */
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    xc_pool_fn fn;
    void *ctx;
    unsigned long generation;    /* bumped per run; workers wait for a change */
    int pending;                 /* workers still running the current pass */
    int quit;
};

struct worker_arg { xc_pool_t *p; int tid; };

/* A worker waits for the generation counter to move (a new pass; a spurious
 * wake-up or a broadcast it already served changes nothing), runs its share
 * outside the lock, and the last one to finish wakes the caller. */
static void *worker_main(void *arg)
{
    struct worker_arg wa = *(struct worker_arg *)arg;
    xc_pool_t *p = wa.p;
    unsigned long seen = 0;

    free(arg);
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (p->generation == seen && !p->quit) pthread_cond_wait(&p->go, &p->mu);
        if (p->quit) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        seen = p->generation;
        xc_pool_fn fn = p->fn;
        void *ctx = p->ctx;
        pthread_mutex_unlock(&p->mu);

        fn(ctx, wa.tid, p->n);

        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_signal(&p->done);
        pthread_mutex_unlock(&p->mu);
    }
}

/* Starts the n-1 extra threads; if one cannot be created, those already
 * running are stopped and joined, so a failed new leaves nothing behind. */
xc_pool_t *xc_pool_new(int nthreads)
{
    xc_pool_t *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = nthreads < 1 ? 1 : nthreads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    p->threads = calloc((size_t)p->n, sizeof *p->threads);
    if (!p->threads) goto out_free;
    for (int i = 1; i < p->n; i++) {
        struct worker_arg *wa = malloc(sizeof *wa);
        if (!wa) goto out_stop;
        wa->p = p;
        wa->tid = i;
        if (pthread_create(&p->threads[i], NULL, worker_main, wa) != 0) {
            free(wa);
            goto out_stop;
        }
        continue;
    out_stop:
        p->n = i; /* only workers 1..i-1 exist */
        xc_pool_destroy(&p);
        return NULL;
    }
    return p;
out_free:
    free(p);
    return NULL;
}

void xc_pool_destroy(xc_pool_t **pp)
{
    xc_pool_t *p = pp ? *pp : NULL;
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    free(p->threads);
    free(p);
    *pp = NULL;
}

int xc_pool_size(const xc_pool_t *p) { return p->n; }

/* One pass: publish fn, wake everyone, do worker 0's share on the calling
 * thread (no idle core while others work), then wait for the rest. A pool of
 * one calls fn directly, without locking. */
void xc_pool_run(xc_pool_t *p, xc_pool_fn fn, void *ctx)
{
    if (p->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->pending = p->n - 1;
    p->generation++;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);

    fn(ctx, 0, p->n);

    pthread_mutex_lock(&p->mu);
    while (p->pending > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

/* Contiguous, balanced to within one item, and a function of (n, tid, nthreads)
 * alone: the same split every time, hence the same summation order. */
void xc_pool_range(long n, int tid, int nthreads, long *lo, long *hi)
{
    long q = n / nthreads, r = n % nthreads;
    *lo = tid * q + (tid < r ? tid : r);
    *hi = *lo + q + (tid < r ? 1 : 0);
}
