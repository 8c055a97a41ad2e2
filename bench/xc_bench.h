/* Helpers shared by the benchmarks (bench_*.c): a monotonic clock and the
 * median of repeated timings (robust to one slow repetition on a shared machine). */
#ifndef XC_BENCH_H
#define XC_BENCH_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* The machine every benchmark names with its figures: the CPU model, the
 * number of logical CPUs and the vector ISA extensions that decide which
 * kernels run (from /proc/cpuinfo; "unknown" where it is unreadable). */
static inline void xc_bench_cpu(char *model, size_t model_len, char *isa, size_t isa_len, int *ncpu)
{
    static const char *want[] = {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
                                 "avx512_bf16", "amx_bf16", "amx_int8"};
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[8192];
    int have_flags = 0;
    snprintf(model, model_len, "unknown");
    isa[0] = 0;
    *ncpu = 0;
    while (f && fgets(line, sizeof line, f)) {
        if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
            snprintf(model, model_len, "%s", strchr(line, ':') + 2);
            model[strcspn(model, "\n")] = 0;
            (*ncpu)++;
        }
        if (!have_flags && !strncmp(line, "flags", 5)) {
            have_flags = 1;
            char *nl = strchr(line, '\n');
            if (nl) *nl = ' ';
            for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
                char pat[64];
                snprintf(pat, sizeof pat, " %s ", want[i]);
                size_t n = strlen(isa);
                if (strstr(line, pat)) snprintf(isa + n, isa_len - n, "%s ", want[i]);
            }
        }
    }
    if (f) fclose(f);
}

#endif
