/* The selection boundary (engine/xc_engine_internal.h), white-box: candidates
 * handed in from outside (xc_select_from_candidates, the entry point of a
 * reduced-precision scorer) give the very selection the engine's own full path
 * gives, whatever superset of the top k*B they are, with ties, for 1 and 3
 * threads; fewer than k*B candidates (all the batch's positives) are all taken. */
#include "xc_config.h"
#include "xc_engine_internal.h"
#include "xc_error.h"
#include "xc_rng.h"
#include "xc_score.h"
#include "xc_test.h"

#include <stdlib.h>

typedef struct {
    long nnz;
    long *row_ptr;
    int *col;
    float *val;
} csr_t;

static csr_t copy_csr(const xc_engine_t *e)
{
    csr_t c = {e->nnz, malloc(sizeof(long) * (size_t)(e->B + 1)), malloc(sizeof(int) * (size_t)e->nnz + 1),
               malloc(sizeof(float) * (size_t)e->nnz + 1)};
    memcpy(c.row_ptr, e->row_ptr, sizeof(long) * (size_t)(e->B + 1));
    memcpy(c.col, e->col, sizeof(int) * (size_t)e->nnz);
    memcpy(c.val, e->val, sizeof(float) * (size_t)e->nnz);
    return c;
}

static int same_csr(const csr_t *a, const xc_engine_t *e)
{
    return a->nnz == e->nnz && memcmp(a->row_ptr, e->row_ptr, sizeof(long) * (size_t)(e->B + 1)) == 0 &&
           memcmp(a->col, e->col, sizeof(int) * (size_t)e->nnz) == 0 &&
           memcmp(a->val, e->val, sizeof(float) * (size_t)e->nnz) == 0;
}

/* Every positive entry with r >= lo, in row order, as a scorer would list them. */
static long list_from(const xc_engine_t *e, float lo, xc_score_cand_t *out)
{
    long n = 0;
    for (int b = 0; b < e->B; b++)
        for (int j = 0; j < e->F; j++) {
            float u = xc_relu_u(e, e->pre + (size_t)b * e->F, j), r = u * e->s[j];
            if (r > 0.0f && r >= lo) out[n++] = (xc_score_cand_t){b, j, r, u};
        }
    return n;
}

static void test_candidates_match_topk(void)
{
    int threads[] = {1, 3};
    for (int t = 0; t < 2; t++) {
        xc_engine_config_t c;
        xc_cfg_engine_defaults(&c, XC_MODEL_BATCHTOPK);
        c.d = 8, c.dict_size = 200, c.batch_size = 16, c.k = 5, c.threads = threads[t], c.seed = 3;
        xc_engine_t *e = xc_engine_new(&c, NULL);
        XC_REQUIRE(e, "engine");
        xc_rng_t r;
        xc_rng_seed(&r, 11);
        /* pre-activations on a coarse grid: many exact ties in r within a latent */
        for (long i = 0; i < (long)e->B * e->F; i++) e->pre[i] = 0.5f * (float)(int)(4.0 * xc_rng_normal(&r));
        e->n = e->B;
        XC_REQUIRE(e->sel.tau == 0.0f, "a new engine starts on the full path");
        XC_REQUIRE(xc_select_topk(e) == XC_OK && e->nnz == e->K, "full path: %ld of %d", e->nnz, e->K);
        csr_t want = copy_csr(e);
        float cut = e->sel.cut_r;
        xc_score_cand_t *list = malloc(sizeof(xc_score_cand_t) * (size_t)e->B * e->F);
        float lows[] = {0.0f, 0.5f * cut, cut};
        for (int q = 0; q < 3; q++) {
            long n = list_from(e, lows[q], list);
            memset(e->col, 0xff, sizeof(int) * (size_t)e->K);
            XC_CHECK(xc_select_from_candidates(e, list, n) == XC_OK, "candidates (%ld from %g)", n, lows[q]);
            XC_CHECK(same_csr(&want, e), "threads %d: %ld candidates from r >= %g select differently", threads[t], n,
                     lows[q]);
            XC_CHECK(e->met.select_candidates == n, "candidates counted: %ld", e->met.select_candidates);
        }
        long few = e->K - 1;
        XC_CHECK(xc_select_from_candidates(e, list, few) == XC_OK && e->nnz == few && e->col[0] == list[0].j &&
                     e->val[few - 1] == list[few - 1].u,
                 "fewer than k*B candidates: all taken (%ld of %ld)", e->nnz, few);
        free(list);
        free(want.row_ptr), free(want.col), free(want.val);
        xc_engine_destroy(&e);
    }
}

int main(void)
{
    XC_RUN(test_candidates_match_topk);
    XC_TEST_EXIT();
}
