/* Helpers shared by the benchmarks (bench_*.c): a monotonic clock and the
 * median of repeated timings (robust to one slow repetition on a shared machine). */
#ifndef XC_BENCH_H
#define XC_BENCH_H

#include <stdlib.h>
#include <time.h>

static inline double xc_bench_now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static inline int xc_bench_cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts v in place; 0 for an empty set. */
static inline double xc_bench_median(double *v, int n)
{
    if (n <= 0) return 0;
    qsort(v, (size_t)n, sizeof *v, xc_bench_cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#endif
