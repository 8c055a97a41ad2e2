/* Minimal test harness: each test binary runs its cases in order and prints one
 * TAP-like line per case ("ok - name" / "not ok - name: why"); tests/run.sh counts
 * them across binaries and prints the closing "N passed, N failed" line. */
#ifndef XC_TEST_H
#define XC_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int xc_test_failed_ = 0;      /* failures in the current case */
static int xc_test_total_fail_ = 0;  /* failing cases in this binary */
static char xc_test_why_[512];

#define XC_CHECK(cond, ...)                                                     \
    do {                                                                        \
        if (!(cond)) {                                                          \
            if (!xc_test_failed_) {                                             \
                int n_ = snprintf(xc_test_why_, sizeof xc_test_why_, "%s:%d: ", \
                                  __FILE__, __LINE__);                          \
                snprintf(xc_test_why_ + n_, sizeof xc_test_why_ - (size_t)n_,   \
                         __VA_ARGS__);                                          \
            }                                                                   \
            xc_test_failed_++;                                                  \
        }                                                                       \
    } while (0)

/* Check and bail out of the case (for preconditions later checks rely on). */
#define XC_REQUIRE(cond, ...)                                                   \
    do {                                                                        \
        int ok_ = !!(cond); /* evaluated once: cond may have side effects */    \
        XC_CHECK(ok_, __VA_ARGS__);                                             \
        if (!ok_) return;                                                       \
    } while (0)

#define XC_CHECK_CLOSE(a, b, rtol, atol)                                        \
    do {                                                                        \
        double a_ = (double)(a), b_ = (double)(b);                              \
        XC_CHECK(fabs(a_ - b_) <= (atol) + (rtol) * fabs(b_),                   \
                 "%s = %.9g vs %s = %.9g", #a, a_, #b, b_);                     \
    } while (0)

#define XC_RUN(fn)                                                              \
    do {                                                                        \
        xc_test_failed_ = 0;                                                    \
        xc_test_why_[0] = 0;                                                    \
        fn();                                                                   \
        if (xc_test_failed_) {                                                  \
            xc_test_total_fail_++;                                              \
            printf("not ok - %s: %s\n", #fn, xc_test_why_);                     \
        } else {                                                                \
            printf("ok - %s\n", #fn);                                           \
        }                                                                       \
        fflush(stdout);                                                         \
    } while (0)

#define XC_TEST_EXIT() return xc_test_total_fail_ ? 1 : 0

#endif
