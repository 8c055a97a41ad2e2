/* A test double of the collective table (engine/xc_coll.h): R ranks as R threads
 * of one process, each calling through its own xc_coll_t. Every collective is
 * three barrier phases: publish a pointer, combine (rank 0 for reductions, each
 * rank for gathers), copy out. Float sums are added in rank order, as the
 * contract asks of every implementation, so every rank gets the same bits.
 * fail_at makes the n-th collective (counted per rank, so the same call on every
 * rank) and every later one return XC_ECOLL, as a dead peer would. Header-only:
 * a test includes it once. */
#ifndef XC_COLL_THREADS_H
#define XC_COLL_THREADS_H

#include "xc_coll.h"
#include "xc_error.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TC_MAXR 8

typedef struct {
    int R;
    pthread_barrier_t bar;
    const void *slot[TC_MAXR];
    unsigned char *res; /* rank 0's combined reduction; owned */
    size_t res_cap;
    long fail_at;       /* 0: never; else the 1-based collective that fails */
    long ncalls[TC_MAXR];
    xc_coll_t tab[TC_MAXR];
} tc_group_t;

static double tc_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Counts the call; 1 when it must fail. */
static int tc_enter(xc_coll_t *c)
{
    tc_group_t *g = c->impl;
    long n = ++g->ncalls[c->rank];
    c->calls++;
    return g->fail_at > 0 && n >= g->fail_at;
}

static size_t tc_esize(xc_coll_type_t t) { return t == XC_COLL_F32 ? 4 : 8; }

#define TC_COMBINE(T)                                                                   \
    do {                                                                                \
        T *o = (T *)(void *)g->res;                                                     \
        memcpy(o, g->slot[0], (size_t)n * sizeof(T));                                   \
        for (int r = 1; r < g->R; r++) {                                                \
            const T *v = g->slot[r];                                                    \
            for (long i = 0; i < n; i++)                                                \
                o[i] = op == XC_COLL_SUM ? (T)(o[i] + v[i])                             \
                       : op == XC_COLL_MAX ? (v[i] > o[i] ? v[i] : o[i])                \
                                           : (v[i] < o[i] ? v[i] : o[i]);               \
        }                                                                               \
    } while (0)

static int tc_allreduce(xc_coll_t *c, void *buf, long n, xc_coll_type_t t, xc_coll_op_t op)
{
    if (tc_enter(c)) return XC_ECOLL;
    tc_group_t *g = c->impl;
    double t0 = tc_now();
    size_t bytes = (size_t)n * tc_esize(t);
    g->slot[c->rank] = buf;
    pthread_barrier_wait(&g->bar);
    if (c->rank == 0) {
        if (bytes > g->res_cap) {
            free(g->res);
            g->res = malloc(bytes);
            g->res_cap = bytes;
        }
        switch (t) {
        case XC_COLL_F32: TC_COMBINE(float); break;
        case XC_COLL_F64: TC_COMBINE(double); break;
        case XC_COLL_I64: TC_COMBINE(int64_t); break;
        case XC_COLL_U64: TC_COMBINE(uint64_t); break;
        }
    }
    pthread_barrier_wait(&g->bar);
    memcpy(buf, g->res, bytes);
    pthread_barrier_wait(&g->bar);
    c->bytes += 2 * bytes;
    c->seconds += tc_now() - t0;
    return 0;
}

static int tc_bcast(xc_coll_t *c, void *buf, size_t bytes, int root)
{
    if (tc_enter(c)) return XC_ECOLL;
    tc_group_t *g = c->impl;
    if (c->rank == root) g->slot[root] = buf;
    pthread_barrier_wait(&g->bar);
    if (c->rank != root) memcpy(buf, g->slot[root], bytes);
    pthread_barrier_wait(&g->bar);
    c->bytes += bytes;
    return 0;
}

static int tc_gather_to(xc_coll_t *c, const void *send, void *recv, const size_t *recv_bytes, int root)
{
    if (tc_enter(c)) return XC_ECOLL;
    tc_group_t *g = c->impl;
    double t0 = tc_now();
    g->slot[c->rank] = send;
    pthread_barrier_wait(&g->bar);
    if (root < 0 || c->rank == root) {
        size_t off = 0;
        for (int r = 0; r < g->R; r++) {
            if (recv_bytes[r]) memcpy((char *)recv + off, g->slot[r], recv_bytes[r]);
            off += recv_bytes[r];
            if (r != c->rank) c->bytes += recv_bytes[r];
        }
    }
    pthread_barrier_wait(&g->bar);
    c->seconds += tc_now() - t0;
    return 0;
}

static int tc_allgatherv(xc_coll_t *c, const void *send, size_t send_bytes, void *recv, const size_t *recv_bytes)
{
    (void)send_bytes;
    return tc_gather_to(c, send, recv, recv_bytes, -1);
}

static int tc_gatherv(xc_coll_t *c, const void *send, size_t send_bytes, void *recv, const size_t *recv_bytes,
                      int root)
{
    (void)send_bytes;
    return tc_gather_to(c, send, recv, recv_bytes, root);
}

/* A group of R ranks (R <= TC_MAXR); tc_group_free releases it. */
static tc_group_t *tc_group_new(int R)
{
    tc_group_t *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->R = R;
    pthread_barrier_init(&g->bar, NULL, (unsigned)R);
    for (int r = 0; r < R; r++)
        g->tab[r] = (xc_coll_t){.rank = r, .size = R, .impl = g, .allreduce = tc_allreduce, .bcast = tc_bcast,
                                .allgatherv = tc_allgatherv, .gatherv = tc_gatherv};
    return g;
}

static void tc_group_free(tc_group_t *g)
{
    if (!g) return;
    pthread_barrier_destroy(&g->bar);
    free(g->res);
    free(g);
}

#endif
