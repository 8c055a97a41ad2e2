/* The collective table's one-process implementation and the latent partition
 * (engine/xc_coll.h): the slices tile [0, F) without gaps or overlap and differ
 * in size by at most one, for every F and R a job can have. */
#include "xc_coll.h"
#include "xc_error.h"
#include "xc_test.h"

static void test_slices_tile(void)
{
    for (long F = 1; F <= 300; F += 7)
        for (int R = 1; R <= 17; R++) {
            long next = 0, mn = F, mx = 0;
            for (int r = 0; r < R; r++) {
                long lo, n;
                xc_coll_slice(F, R, r, &lo, &n);
                XC_CHECK(lo == next, "F=%ld R=%d rank %d starts at %ld, expected %ld", F, R, r, lo, next);
                next = lo + n;
                if (n < mn) mn = n;
                if (n > mx) mx = n;
            }
            XC_CHECK(next == F, "F=%ld R=%d slices end at %ld", F, R, next);
            XC_CHECK(mx - mn <= 1, "F=%ld R=%d unbalanced: %ld..%ld", F, R, mn, mx);
        }
    long lo, n;
    xc_coll_slice(73728, 3, 2, &lo, &n);
    XC_CHECK(lo == 49152 && n == 24576, "paper shape over 3 ranks: %ld+%ld", lo, n);
}

static void test_single_identity(void)
{
    xc_coll_t *c = xc_coll_single();
    XC_REQUIRE(c && c->size == 1 && c->rank == 0, "single table shape");
    double v[3] = {1.5, -2, 3};
    XC_CHECK(c->allreduce(c, v, 3, XC_COLL_F64, XC_COLL_SUM) == 0, "allreduce");
    XC_CHECK(v[0] == 1.5 && v[1] == -2 && v[2] == 3, "allreduce changed the buffer");
    XC_CHECK(c->bcast(c, v, sizeof v, 0) == 0, "bcast from 0");
    XC_CHECK(c->bcast(c, v, sizeof v, 1) == XC_EINVAL, "bcast from a rank that does not exist");
    char out[8] = {0};
    size_t sz = 5;
    XC_CHECK(c->allgatherv(c, "abcde", 5, out, &sz) == 0 && memcmp(out, "abcde", 5) == 0, "allgatherv copy");
    sz = 4;
    XC_CHECK(c->gatherv(c, "abcde", 5, out, &sz, 0) == XC_EINVAL, "gatherv size mismatch refused");
    XC_CHECK(c->bytes == 0 && c->seconds == 0, "one process moves no bytes");
}

int main(void)
{
    XC_RUN(test_slices_tile);
    XC_RUN(test_single_identity);
    XC_TEST_EXIT();
}
