/* The sharded job's command stream (daemon/shard.c) with R ranks as threads over
 * the in-process collective table (tests/xc_coll_threads.h): rank 0 drives,
 * ranks > 0 follow, against one unsharded engine trained on the same batches.
 *   - SCATTER hands every rank its slice of rank 0's container (uneven slices);
 *   - TRAIN: the gathered model equals the single engine's (1e-4), and the merged
 *     selection (global latent indices, per token) is the single engine's;
 *   - STATS: every latent's record gathered in order equals the single engine's;
 *   - an exact pass starts and ends on every rank, its counts and betas as one
 *     engine's;
 *   - STOP ends every follower with 0; a lost peer (the table failing) gives
 *     XC_ECOLL on rank 0 and on the followers, never a hang.
 * Runs under ASan/UBSan too (make test). */
#include "xc_coll_threads.h"
#include "xc_config.h"
#include "xc_engine.h"
#include "xc_error.h"
#include "xc_rng.h"
#include "xc_shard.h"
#include "xc_test.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define R 3
#define STEPS 6

typedef struct {
    tc_group_t *g;
    xc_engine_config_t cfg;
    const float *stream;    /* STEPS batches */
    long fail;              /* > 0: the table fails from this collective on (on every rank: the same call) */
    int rc[R];
    /* rank 0's results */
    int lead_rc, step_rc;
    float *w_enc, *w_dec;   /* the gathered container's (F, 2d) */
    long *sel_rp;           /* the last step's merged selection */
    int *sel_col;
    long sel_nnz;
    xc_latent_stats_t *lat;
    xc_scaling_stats_t *run, *exact;
} job_t;

typedef struct {
    job_t *job;
    int rank;
} arg_t;

static void *rank_main(void *p)
{
    arg_t *a = p;
    job_t *j = a->job;
    int r = a->rank, err = 0;
    long F = j->cfg.dict_size, B = j->cfg.batch_size, d2 = 2L * j->cfg.d;
    xc_engine_t *e = xc_engine_new_sharded(&j->cfg, &j->g->tab[r], &err);
    xc_engine_t *full = NULL;
    xc_shard_t *sh = NULL;
    if (!e) {
        j->rc[r] = err ? err : XC_ENOMEM;
        return NULL;
    }
    if (r == 0) {
        xc_engine_config_t fc = j->cfg;
        fc.threads = 1, fc.batch_size = 1;
        full = xc_engine_new(&fc, &err);
    }
    sh = (r == 0 && !full) ? NULL : xc_shard_new(&j->g->tab[r], e, full, &err);
    if (!sh) {
        j->rc[r] = err ? err : XC_ENOMEM;
        goto out;
    }
    if (r > 0) {
        j->rc[r] = xc_shard_follow(sh, 10);
        goto out;
    }
    /* rank 0 */
    int rc = xc_shard_scatter(sh);
    xc_scaling_t *pass = NULL;
    for (int s = 0; s < STEPS && !rc; s++) {
        if (s == 1) rc = xc_shard_scaling_new(sh, &pass);
        if (rc) break;
        int add_rc = 0;
        rc = xc_shard_train(sh, j->stream + (size_t)s * B * d2, B, pass, &j->step_rc, &add_rc);
        if (!rc && j->step_rc) rc = j->step_rc;
    }
    if (!rc) {
        const long *rp;
        const int *col;
        j->sel_nnz = xc_shard_selection(sh, &rp, &col, NULL);
        memcpy(j->sel_rp, rp, sizeof(long) * (size_t)(B + 1));
        memcpy(j->sel_col, col, sizeof(int) * (size_t)j->sel_nnz);
        rc = xc_shard_scaling_end(sh, &pass, j->exact);
    }
    if (!rc) rc = xc_shard_stats(sh, j->lat, j->run);
    if (!rc) rc = xc_shard_ping(sh);
    if (!rc) rc = xc_shard_gather(sh);
    if (!rc) {
        xc_engine_params_t pv;
        xc_engine_params(full, &pv);
        memcpy(j->w_enc, pv.w_enc, sizeof(float) * (size_t)(F * d2));
        memcpy(j->w_dec, pv.w_dec, sizeof(float) * (size_t)(F * d2));
        rc = xc_shard_stop(sh);
    }
    xc_scaling_destroy(&pass);
    j->lead_rc = rc;
out:
    xc_shard_destroy(&sh);
    xc_engine_destroy(&full);
    xc_engine_destroy(&e);
    return NULL;
}

static void run_job(job_t *j)
{
    pthread_t th[R];
    arg_t a[R];
    j->g = tc_group_new(R);
    j->g->fail_at = j->fail;
    for (int r = 0; r < R; r++) {
        a[r] = (arg_t){j, r};
        pthread_create(&th[r], NULL, rank_main, &a[r]);
    }
    for (int r = 0; r < R; r++) pthread_join(th[r], NULL);
    tc_group_free(j->g);
}

static void config(xc_engine_config_t *c)
{
    xc_cfg_engine_defaults(c, XC_MODEL_BATCHTOPK);
    c->d = 12, c->dict_size = 50, c->k = 3, c->batch_size = 32, c->threads = 1, c->seed = 9;
    c->encoder_precision = XC_PREC_FP32;
    c->warmup_steps = 2, c->threshold_start_step = 2, c->dead_tokens = 64, c->scaling_min_active = 2;
}

static float *make_stream(const xc_engine_config_t *c)
{
    size_t n = (size_t)STEPS * c->batch_size * 2 * c->d;
    float *x = malloc(sizeof(float) * n);
    xc_rng_t rng;
    xc_rng_seed(&rng, 4);
    for (size_t i = 0; i < n; i++) x[i] = (float)xc_rng_normal(&rng) * (i % 7 == 0 ? 3.0f : 1.0f);
    return x;
}

static void test_commands_match_one_engine(void)
{
    job_t j;
    memset(&j, 0, sizeof j);
    config(&j.cfg);
    long F = j.cfg.dict_size, B = j.cfg.batch_size, d2 = 2L * j.cfg.d;
    float *x = make_stream(&j.cfg);
    j.stream = x;
    j.w_enc = calloc((size_t)(F * d2), sizeof(float));
    j.w_dec = calloc((size_t)(F * d2), sizeof(float));
    j.sel_rp = calloc((size_t)B + 1, sizeof(long));
    j.sel_col = calloc((size_t)j.cfg.k * B, sizeof(int));
    j.lat = calloc((size_t)F, sizeof *j.lat);
    j.run = calloc((size_t)F, sizeof *j.run);
    j.exact = calloc((size_t)F, sizeof *j.exact);
    run_job(&j);
    for (int r = 0; r < R; r++) XC_CHECK(j.rc[r] == 0, "rank %d: %s", r, xc_strerror(j.rc[r]));
    XC_REQUIRE(j.lead_rc == 0, "rank 0: %s", xc_strerror(j.lead_rc));

    /* the same batches on one engine */
    int err;
    xc_engine_t *one = xc_engine_new(&j.cfg, &err);
    XC_REQUIRE(one != NULL, "engine");
    xc_scaling_t *pass = NULL;
    for (int s = 0; s < STEPS; s++) {
        if (s == 1) pass = xc_scaling_new(one, &err);
        if (pass) xc_scaling_add(pass, x + (size_t)s * B * d2, B);
        XC_REQUIRE(xc_engine_train_step(one, x + (size_t)s * B * d2, B) == 0, "step");
    }
    xc_engine_params_t pv;
    xc_engine_params(one, &pv);
    double dw = 0, mw = 0;
    for (long i = 0; i < F * d2; i++) {
        dw = fmax(dw, fabs((double)pv.w_enc[i] - j.w_enc[i]) + fabs((double)pv.w_dec[i] - j.w_dec[i]));
        mw = fmax(mw, fabs((double)pv.w_enc[i]) + fabs((double)pv.w_dec[i]));
    }
    XC_CHECK(dw <= 1e-4 * mw, "gathered parameters differ from one engine's by %g (scale %g)", dw, mw);

    const long *rp;
    const int *col;
    long nnz = xc_engine_selection(one, &rp, &col, NULL);
    XC_CHECK(nnz == j.sel_nnz, "selection sizes %ld / %ld", nnz, j.sel_nnz);
    long same = 0;
    for (long b = 0; b < B && nnz == j.sel_nnz; b++) {
        XC_CHECK(rp[b + 1] - rp[b] == j.sel_rp[b + 1] - j.sel_rp[b], "token %ld: %ld / %ld entries", b,
                 rp[b + 1] - rp[b], j.sel_rp[b + 1] - j.sel_rp[b]);
        for (long p = rp[b]; p < rp[b + 1]; p++)
            for (long q = j.sel_rp[b]; q < j.sel_rp[b + 1]; q++) same += col[p] == j.sel_col[q];
    }
    XC_CHECK(same == nnz, "merged selection: %ld of %ld entries as one engine's", same, nnz);

    xc_latent_stats_t *lat = calloc((size_t)F, sizeof *lat);
    xc_scaling_stats_t *ex = calloc((size_t)F, sizeof *ex);
    xc_engine_latent_stats(one, lat);
    xc_scaling_result(pass, ex);
    int bad = 0;
    for (long q = 0; q < F; q++) {
        bad += lat[q].fired != j.lat[q].fired || lat[q].last_step_fired != j.lat[q].last_step_fired;
        bad += fabsf(lat[q].norm_chat - j.lat[q].norm_chat) > 1e-4f * fmaxf(1.0f, lat[q].norm_chat);
        bad += ex[q].active != j.exact[q].active;
        for (int m = 0; m < 2; m++) /* the pass's sums use the reconstruction over every rank */
            bad += isnan(ex[q].beta_err[m]) != isnan(j.exact[q].beta_err[m]) ||
                   (!isnan(ex[q].beta_err[m]) &&
                    fabsf(ex[q].beta_err[m] - j.exact[q].beta_err[m]) > 1e-3f * fmaxf(1.0f, fabsf(ex[q].beta_err[m])));
    }
    XC_CHECK(bad == 0, "%d per-latent records differ from one engine's", bad);
    int defined = 0;
    for (long q = 0; q < F; q++) defined += !isnan(j.exact[q].beta_err[1]);
    XC_CHECK(defined >= 5, "only %d latents have an exact beta: the comparison says little", defined);
    free(lat);
    free(ex);
    xc_scaling_destroy(&pass);
    xc_engine_destroy(&one);
    free(x), free(j.w_enc), free(j.w_dec), free(j.sel_rp), free(j.sel_col), free(j.lat), free(j.run), free(j.exact);
}

static void test_lost_peer_ends_every_rank(void)
{
    job_t j;
    memset(&j, 0, sizeof j);
    config(&j.cfg);
    long F = j.cfg.dict_size, B = j.cfg.batch_size, d2 = 2L * j.cfg.d;
    float *x = make_stream(&j.cfg);
    j.stream = x;
    j.fail = 150;
    j.w_enc = calloc((size_t)(F * d2), sizeof(float));
    j.w_dec = calloc((size_t)(F * d2), sizeof(float));
    j.sel_rp = calloc((size_t)B + 1, sizeof(long));
    j.sel_col = calloc((size_t)j.cfg.k * B, sizeof(int));
    j.lat = calloc((size_t)F, sizeof *j.lat);
    j.run = calloc((size_t)F, sizeof *j.run);
    j.exact = calloc((size_t)F, sizeof *j.exact);
    run_job(&j); /* returns: nobody waits forever */
    XC_CHECK(j.lead_rc == XC_ECOLL, "rank 0: %s", xc_strerror(j.lead_rc));
    for (int r = 1; r < R; r++) XC_CHECK(j.rc[r] == XC_ECOLL, "rank %d: %s", r, xc_strerror(j.rc[r]));
    free(x), free(j.w_enc), free(j.w_dec), free(j.sel_rp), free(j.sel_col), free(j.lat), free(j.run), free(j.exact);
}

int main(void)
{
    XC_RUN(test_commands_match_one_engine);
    XC_RUN(test_lost_peer_ends_every_rank);
    XC_TEST_EXIT();
}
