/* The latent-sharded engine against the unsharded one: R ranks run as R threads
 * over an in-process collective table (tests/xc_coll_threads.h) and train the
 * same seed on the same planted-feature stream as one rank. Checked: the initial
 * parameters are exactly the unsharded slices; every step selects the same
 * entries (the union of the ranks' selections); the replicated metrics are
 * bit-identical across ranks and match R=1 (loss, FVE, L0, dead count, theta,
 * gradient norm); the final parameters match within 1e-4 relative; AuxK, theta
 * and clipping are active during the run; encode/decode give the full codes and
 * reconstruction on every rank; per-latent statistics, running and exact Latent
 * Scaling and compute_grads match; a failed collective leaves the model as it
 * was; L1, decoupled codes and too many ranks are refused. Reduced-precision scoring (bf16, int8) is
 * checked where the CPU runs it. */
#include "xc_coll_threads.h"
#include "xc_config.h"
#include "xc_engine.h"
#include "xc_error.h"
#include "xc_synth.h"
#include "xc_test.h"

#include <pthread.h>
#include <stdint.h>

enum { SD = 32, SF = 100, SB = 64, SK = 8 };

typedef struct {
    double loss, fve0, fve1, l0, theta, gn, aux, dead_frac;
    double fallbacks, fp32_steps, candidates; /* the scorer's path: the same on every rank */
    int n_dead;
} stepm_t;

typedef struct {
    xc_engine_config_t cfg;
    int R, steps;
    const float *stream;     /* (steps, B, 2d) */
    tc_group_t *g;
    /* per rank: selections (steps, K) as global flat indices and their counts */
    long *sel[TC_MAXR];
    long *nsel[TC_MAXR];
    stepm_t *m[TC_MAXR];     /* (steps) */
    /* global tensors assembled from the ranks' slices */
    float *w_enc0, *w_enc, *b_enc, *w_dec, *b_dec, *b_dec_r[TC_MAXR];
    float *codes, *xhat;     /* encode / decode of the last batch after training */
    uint64_t *fired;         /* (F) per-latent statistics: activations counted */
    float *beta_run, *beta_exact; /* (F, 2) beta_err of the running and exact Latent Scaling */
    int rc[TC_MAXR];
    int ecoll_ok[TC_MAXR];   /* 1: the failed step returned XC_ECOLL and changed nothing */
    int fail_step;           /* >= 0: collectives fail from this step on (ECOLL check) */
    xc_prec_t prec;          /* what rank 0's product ran at */
    long score_steps, score_fp32;
} run_t;

typedef struct {
    run_t *run;
    int rank;
} targ_t;

static void copy_rows(float *dst, const float *src, long lo, long n, long width)
{
    memcpy(dst + (size_t)lo * width, src, sizeof(float) * (size_t)n * width);
}

static void *rank_main(void *p)
{
    targ_t *a = p;
    run_t *run = a->run;
    int r = a->rank, err = 0, d2 = 2 * run->cfg.d, B = run->cfg.batch_size, Fg = run->cfg.dict_size;
    long K = (long)run->cfg.k * B;
    xc_engine_t *e = xc_engine_new_sharded(&run->cfg, &run->g->tab[r], &err);
    run->rc[r] = err;
    if (!e) return NULL;
    long lo, n;
    xc_engine_shard(e, &lo, &n);
    xc_engine_params_t pv;
    xc_engine_params(e, &pv);
    copy_rows(run->w_enc0, pv.w_enc, lo, n, d2);
    for (int s = 0; s < run->steps; s++) {
        const float *x = run->stream + (size_t)s * B * d2;
        if (s == run->fail_step) {
            /* every later collective fails: the step must report it and keep the model */
            float *keep = malloc(sizeof(float) * (size_t)n * d2);
            memcpy(keep, pv.w_dec, sizeof(float) * (size_t)n * d2);
            long step0 = xc_engine_metrics(e)->step;
            run->g->fail_at = run->g->ncalls[r] + 1;
            int rc = xc_engine_train_step(e, x, B);
            run->ecoll_ok[r] = rc == XC_ECOLL && memcmp(keep, pv.w_dec, sizeof(float) * (size_t)n * d2) == 0 &&
                               xc_engine_metrics(e)->step == step0;
            free(keep);
            break;
        }
        int rc = xc_engine_train_step(e, x, B);
        if (rc) {
            run->rc[r] = rc;
            break;
        }
        const long *rp;
        const int *col;
        long nnz = xc_engine_selection(e, &rp, &col, NULL);
        long *out = run->sel[r] + (size_t)s * K;
        long q = 0;
        for (long b = 0; b < B; b++)
            for (long i = rp[b]; i < rp[b + 1] && q < K; i++) out[q++] = b * Fg + col[i];
        run->nsel[r][s] = nnz;
        const xc_engine_metrics_t *m = xc_engine_metrics(e);
        run->m[r][s] = (stepm_t){m->loss, m->fve[0], m->fve[1], m->l0, m->theta, m->grad_norm, m->aux,
                                 m->dead_fraction, (double)m->score_fallbacks, (double)m->score_fp32_steps,
                                 (double)m->select_candidates, m->n_dead};
    }
    if (r == 0) {
        run->prec = xc_engine_metrics(e)->precision;
        run->score_steps = xc_engine_metrics(e)->score_steps;
        run->score_fp32 = xc_engine_metrics(e)->score_fp32_steps;
    }
    if (run->fail_step < 0 && !run->rc[r]) {
        copy_rows(run->w_enc, pv.w_enc, lo, n, d2);
        copy_rows(run->w_dec, pv.w_dec, lo, n, d2);
        copy_rows(run->b_enc, pv.b_enc, lo, n, 1);
        memcpy(run->b_dec_r[r], pv.b_dec, sizeof(float) * (size_t)d2);
        if (r == 0) memcpy(run->b_dec, pv.b_dec, sizeof(float) * (size_t)d2);
        /* inference: full codes and reconstruction on every rank */
        const float *x = run->stream + (size_t)(run->steps - 1) * B * d2;
        float *f = malloc(sizeof(float) * (size_t)B * Fg), *xh = malloc(sizeof(float) * (size_t)B * d2);
        int rc1 = xc_engine_encode(e, x, B, f), rc2 = xc_engine_decode(e, f, B, xh);
        if (rc1 || rc2) run->rc[r] = rc1 ? rc1 : rc2;
        if (r == run->R - 1) { /* the last rank's copy: shows it got the others' part */
            memcpy(run->codes, f, sizeof(float) * (size_t)B * Fg);
            memcpy(run->xhat, xh, sizeof(float) * (size_t)B * d2);
        }
        free(f);
        free(xh);
        /* per-latent outputs cover the shard: statistics, running and exact Latent Scaling */
        xc_latent_stats_t *ls = calloc((size_t)n, sizeof *ls);
        xc_scaling_stats_t *sr = calloc((size_t)n, sizeof *sr), *se = calloc((size_t)n, sizeof *se);
        xc_engine_latent_stats(e, ls);
        xc_engine_scaling_running(e, sr);
        xc_scaling_t *sc = xc_scaling_new(e, &err);
        if (!sc || xc_scaling_add(sc, run->stream + (size_t)(run->steps - 40) * B * d2, 40L * B)) run->rc[r] = XC_EINVAL;
        if (sc) xc_scaling_result(sc, se);
        xc_scaling_destroy(&sc);
        for (long j = 0; j < n; j++) {
            run->fired[lo + j] = ls[j].fired;
            for (int m = 0; m < 2; m++) {
                run->beta_run[2 * (lo + j) + m] = sr[j].beta_err[m];
                run->beta_exact[2 * (lo + j) + m] = se[j].beta_err[m];
            }
        }
        free(ls);
        free(sr);
        free(se);
    }
    xc_engine_destroy(&e);
    return NULL;
}

static void run_free(run_t *run)
{
    for (int r = 0; r < TC_MAXR; r++) {
        free(run->sel[r]);
        free(run->nsel[r]);
        free(run->m[r]);
        free(run->b_dec_r[r]);
    }
    free(run->w_enc0);
    free(run->w_enc);
    free(run->b_enc);
    free(run->w_dec);
    free(run->b_dec);
    free(run->codes);
    free(run->xhat);
    free(run->fired);
    free(run->beta_run);
    free(run->beta_exact);
    tc_group_free(run->g);
}

/* Trains R ranks on the stream; 0 when every rank ran every step. */
static int run_ranks(run_t *run, const xc_engine_config_t *cfg, int R, int steps, const float *stream,
                     int fail_step)
{
    memset(run, 0, sizeof *run);
    run->cfg = *cfg;
    run->R = R;
    run->steps = steps;
    run->stream = stream;
    run->fail_step = fail_step;
    run->g = tc_group_new(R);
    size_t K = (size_t)cfg->k * cfg->batch_size, Fg = (size_t)cfg->dict_size, d2 = 2 * (size_t)cfg->d;
    for (int r = 0; r < R; r++) {
        run->sel[r] = calloc((size_t)steps * K, sizeof(long));
        run->nsel[r] = calloc((size_t)steps, sizeof(long));
        run->m[r] = calloc((size_t)steps, sizeof(stepm_t));
        run->b_dec_r[r] = calloc(d2, sizeof(float));
    }
    run->w_enc0 = calloc(Fg * d2, sizeof(float));
    run->w_enc = calloc(Fg * d2, sizeof(float));
    run->w_dec = calloc(Fg * d2, sizeof(float));
    run->b_enc = calloc(Fg, sizeof(float));
    run->b_dec = calloc(d2, sizeof(float));
    run->codes = calloc((size_t)cfg->batch_size * Fg, sizeof(float));
    run->xhat = calloc((size_t)cfg->batch_size * d2, sizeof(float));
    run->fired = calloc(Fg, sizeof(uint64_t));
    run->beta_run = calloc(2 * Fg, sizeof(float));
    run->beta_exact = calloc(2 * Fg, sizeof(float));
    pthread_t th[TC_MAXR];
    targ_t ta[TC_MAXR];
    for (int r = 0; r < R; r++) {
        ta[r] = (targ_t){run, r};
        pthread_create(&th[r], NULL, rank_main, &ta[r]);
    }
    for (int r = 0; r < R; r++) pthread_join(th[r], NULL);
    int bad = 0;
    for (int r = 0; r < R; r++) bad |= run->rc[r] != 0;
    return bad;
}

static double rel_diff(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static int cmp_l(const void *pa, const void *pb)
{
    long a = *(const long *)pa, b = *(const long *)pb;
    return (a > b) - (a < b);
}

/* The union of the ranks' selections of step s, sorted, into out; returns its size. */
static long union_sel(const run_t *run, int s, long *out)
{
    long K = (long)run->cfg.k * run->cfg.batch_size, n = 0;
    for (int r = 0; r < run->R; r++) {
        long c = run->nsel[r][s] < K ? run->nsel[r][s] : K;
        memcpy(out + n, run->sel[r] + (size_t)s * K, sizeof(long) * (size_t)c);
        n += c;
    }
    qsort(out, (size_t)n, sizeof(long), cmp_l);
    return n;
}

static float *make_stream(int steps, int d, int B)
{
    xc_synth_config_t sc;
    xc_synth_config_default(&sc, d);
    sc.seed = 11;
    int err;
    xc_synth_t *syn = xc_synth_new(&sc, &err);
    float *x = malloc(sizeof(float) * (size_t)steps * B * 2 * d);
    if (!syn || !x || xc_synth_generate(syn, (long)steps * B, x, NULL)) {
        free(x);
        x = NULL;
    }
    xc_synth_destroy(&syn);
    return x;
}

static void base_cfg(xc_engine_config_t *c, xc_prec_t prec)
{
    xc_cfg_engine_defaults(c, XC_MODEL_BATCHTOPK);
    c->d = SD;
    c->dict_size = SF;
    c->batch_size = SB;
    c->k = SK;
    c->threads = 1;
    c->seed = 3;
    c->warmup_steps = 10;
    c->lr = 2e-3f;
    c->dead_tokens = 4 * SB;        /* latents die within a few steps: AuxK runs */
    c->threshold_start_step = 20;   /* theta updates during the run */
    c->clip_norm = 0.6f;            /* clipping active on part of the run */
    c->encoder_precision = prec;
}

/* R = 1 against R = 2 and 3 (uneven: 100 latents over 3 ranks) at one precision. */
static void compare_at(xc_prec_t prec, int steps)
{
    xc_engine_config_t c;
    base_cfg(&c, prec);
    float *x = make_stream(steps, SD, SB);
    XC_REQUIRE(x, "stream");
    run_t ref;
    int bad = run_ranks(&ref, &c, 1, steps, x, -1);
    XC_REQUIRE(!bad, "R=1 run failed: %s", xc_strerror(ref.rc[0]));
    XC_CHECK(ref.prec == prec && (prec == XC_PREC_FP32 || ref.score_steps - ref.score_fp32 > steps / 2),
             "%s run: product at %s, %ld reduced steps", xc_prec_name(prec), xc_prec_name(ref.prec),
             ref.score_steps - ref.score_fp32);
    long K = (long)SK * SB;
    long *ua = malloc(sizeof(long) * (size_t)K * TC_MAXR), *ub = malloc(sizeof(long) * (size_t)K * TC_MAXR);
    long aux_steps = 0, theta_steps = 0, clip_steps = 0;
    for (int s = 0; s < steps; s++) {
        aux_steps += ref.m[0][s].aux > 0;
        theta_steps += ref.m[0][s].theta > 0;
        clip_steps += ref.m[0][s].gn > c.clip_norm;
    }
    XC_CHECK(aux_steps > steps / 10, "AuxK active on only %ld of %d steps", aux_steps, steps);
    XC_CHECK(theta_steps > steps / 2, "theta set on only %ld of %d steps", theta_steps, steps);
    XC_CHECK(clip_steps > 0 && clip_steps < steps, "clipping active on %ld of %d steps", clip_steps, steps);
    for (int R = 2; R <= 3; R++) {
        run_t sh;
        bad = run_ranks(&sh, &c, R, steps, x, -1);
        XC_CHECK(!bad, "R=%d run failed: %s", R, xc_strerror(sh.rc[0] ? sh.rc[0] : sh.rc[R - 1]));
        if (bad) {
            run_free(&sh);
            continue;
        }
        /* initial parameters: exactly the unsharded engine's */
        XC_CHECK(memcmp(ref.w_enc0, sh.w_enc0, sizeof(float) * SF * 2 * SD) == 0,
                 "R=%d initial w_enc differs from the unsharded slices", R);
        long total = 0, differ = 0, steps_differ = 0, repl_bad = 0;
        double worst_m = 0;
        for (int s = 0; s < steps; s++) {
            long na = union_sel(&ref, s, ua), nb = union_sel(&sh, s, ub), i = 0, j = 0, d = 0;
            while (i < na || j < nb) {
                if (j >= nb || (i < na && ua[i] < ub[j])) d++, i++;
                else if (i >= na || ub[j] < ua[i]) d++, j++;
                else i++, j++;
            }
            total += na;
            differ += d;
            steps_differ += d > 0;
            for (int r = 1; r < R; r++)
                if (memcmp(&sh.m[r][s], &sh.m[0][s], sizeof(stepm_t)) != 0) {
                    const double *pa = (const double *)&sh.m[r][s], *pb = (const double *)&sh.m[0][s];
                    if (!repl_bad)
                        for (int q = 0; q < 11; q++)
                            if (memcmp(&pa[q], &pb[q], sizeof(double)) != 0)
                                printf("# R=%d step %d: field %d differs, rank %d %.17g, rank 0 %.17g\n", R, s, q, r, pa[q], pb[q]);
                    repl_bad++;
                }
            const stepm_t *a = &ref.m[0][s], *b = &sh.m[0][s];
            double dm[] = {a->fve0 - b->fve0, a->fve1 - b->fve1, (a->l0 - b->l0) / SK,
                           (a->loss - b->loss) / fmax(fabs(a->loss), 1e-12)};
            for (int q = 0; q < 4; q++) worst_m = fmax(worst_m, fabs(dm[q]));
            XC_CHECK(a->n_dead == b->n_dead || d > 0, "R=%d step %d: %d dead vs %d", R, s, b->n_dead, a->n_dead);
        }
        double agree = total ? 1.0 - (double)differ / (2.0 * total) : 0;
        XC_CHECK(agree >= 0.9999, "R=%d selection agrees on %.6f of entries (%ld differ over %ld steps)", R, agree,
                 differ, steps_differ);
        XC_CHECK(repl_bad == 0, "R=%d: replicated metrics differ between ranks on %ld rank-steps", R, repl_bad);
        XC_CHECK(worst_m <= 1e-4, "R=%d: FVE/L0/loss differ by %.3g", R, worst_m);
        const stepm_t *la = &ref.m[0][steps - 1], *lb = &sh.m[0][steps - 1];
        XC_CHECK(fabs(la->theta - lb->theta) <= 1e-4 * fabs(la->theta), "R=%d theta %.9g vs %.9g", R, lb->theta,
                 la->theta);
        double rw = rel_diff(sh.w_enc, ref.w_enc, (size_t)SF * 2 * SD),
               rd = rel_diff(sh.w_dec, ref.w_dec, (size_t)SF * 2 * SD), rb = rel_diff(sh.b_enc, ref.b_enc, SF),
               rbd = rel_diff(sh.b_dec, ref.b_dec, 2 * SD);
        XC_CHECK(rw <= 1e-4 && rd <= 1e-4 && rb <= 1e-4 && rbd <= 1e-4,
                 "R=%d parameters differ: w_enc %.3g w_dec %.3g b_enc %.3g b_dec %.3g", R, rw, rd, rb, rbd);
        for (int r = 1; r < R; r++)
            XC_CHECK(memcmp(sh.b_dec_r[r], sh.b_dec_r[0], sizeof(float) * 2 * SD) == 0,
                     "R=%d: b_dec differs between rank 0 and rank %d", R, r);
        XC_CHECK(memcmp(sh.fired, ref.fired, sizeof(uint64_t) * SF) == 0, "R=%d: per-latent fire counts differ", R);
        long nan_mis = 0, defined = 0;
        double wr = 0, we = 0;
        for (int i = 0; i < 2 * SF; i++) {
            float a1 = ref.beta_run[i], b1 = sh.beta_run[i], a2 = ref.beta_exact[i], b2 = sh.beta_exact[i];
            nan_mis += (isnan(a1) != isnan(b1)) + (isnan(a2) != isnan(b2));
            if (!isnan(a1) && !isnan(b1)) wr = fmax(wr, fabs(a1 - b1) / fmax(fabs(a1), 1e-3));
            if (!isnan(a2) && !isnan(b2)) we = fmax(we, fabs(a2 - b2) / fmax(fabs(a2), 1e-3)), defined++;
        }
        XC_CHECK(nan_mis == 0 && wr <= 1e-3 && we <= 1e-3 && defined > 20,
                 "R=%d Latent Scaling: %ld undefined in one only, running beta diff %.3g, exact %.3g (%ld defined)", R,
                 nan_mis, wr, we, defined);
        double rc_ = rel_diff(sh.codes, ref.codes, (size_t)SB * SF), rx = rel_diff(sh.xhat, ref.xhat, (size_t)SB * 2 * SD);
        XC_CHECK(rc_ <= 1e-3 && rx <= 1e-3, "R=%d encode/decode differ: codes %.3g xhat %.3g", R, rc_, rx);
        printf("# %s R=%d vs 1: %ld fallbacks, %ld fp32 steps; %d steps, selection %.6f agree (%ld entries differ), metrics max diff %.2g, "
               "params rel diff w_enc %.2g w_dec %.2g b_enc %.2g b_dec %.2g; AuxK on %ld steps, theta %.4g, "
               "clipped %ld steps, dead %d at the end\n",
               xc_prec_name(prec), R, (long)lb->fallbacks, (long)lb->fp32_steps, steps, agree, differ, worst_m, rw, rd, rb, rbd, aux_steps, lb->theta,
               clip_steps, lb->n_dead);
        run_free(&sh);
    }
    free(ua);
    free(ub);
    run_free(&ref);
    free(x);
}

static void test_shard_fp32(void) { compare_at(XC_PREC_FP32, 300); }

/* bf16 and int8 scoring pick candidates from bounds that must be global too. */
static void test_shard_reduced(void)
{
    xc_prec_t p[2] = {XC_PREC_BF16, XC_PREC_INT8};
    for (int q = 0; q < 2; q++) {
        char why[200] = "";
        if (!xc_score_supported(p[q], why, sizeof why)) {
            printf("# %s not checked: %s\n", xc_prec_name(p[q]), why);
            continue;
        }
        compare_at(p[q], 150);
    }
    /* the scorer's other paths, taken on every shard at once: a margin too thin
     * on every call (candidates redone with the proven bound), and a candidate
     * limit so low that some calls score in fp32 */
    char why[200] = "";
    if (!xc_score_supported(XC_PREC_INT8, why, sizeof why)) {
        printf("# int8 fallback paths not checked: %s\n", why);
        return;
    }
    setenv("XC_SCORE_LAMBDA", "0.001", 1);
    compare_at(XC_PREC_INT8, 60);
    unsetenv("XC_SCORE_LAMBDA");
    setenv("XC_SCORE_CAND_LIMIT", "1.3", 1);
    compare_at(XC_PREC_INT8, 60);
    unsetenv("XC_SCORE_CAND_LIMIT");
}

/* A collective that fails mid-step: XC_ECOLL on every rank, the model unchanged. */
static void test_shard_ecoll(void)
{
    xc_engine_config_t c;
    base_cfg(&c, XC_PREC_FP32);
    float *x = make_stream(12, SD, SB);
    XC_REQUIRE(x, "stream");
    run_t run;
    run_ranks(&run, &c, 2, 12, x, 10);
    for (int r = 0; r < 2; r++)
        XC_CHECK(run.ecoll_ok[r], "rank %d: a failed collective must give XC_ECOLL and leave the model", r);
    run_free(&run);
    free(x);
}

/* compute_grads over shards: a few steps, then the gradient of the next batch,
 * assembled from the slices, equals the unsharded one (and its norm). */
typedef struct {
    tc_group_t *g;
    const xc_engine_config_t *c;
    const float *x;
    int rank, rc;
    float *ge, *gd, *gb, *gbd; /* global (F, 2d), (F, 2d), (F), (2d) */
    double norm, loss;
} grad_arg_t;

static void *grad_rank(void *p)
{
    grad_arg_t *a = p;
    int err, d2 = 2 * a->c->d, B = a->c->batch_size;
    xc_engine_t *e = xc_engine_new_sharded(a->c, &a->g->tab[a->rank], &err);
    if (!e) {
        a->rc = err;
        return NULL;
    }
    long lo, n;
    xc_engine_shard(e, &lo, &n);
    for (int s = 0; s < 30 && !a->rc; s++) a->rc = xc_engine_train_step(e, a->x + (size_t)s * B * d2, B);
    xc_engine_params_t g = {a->ge + (size_t)lo * d2, a->gb + lo, a->gd + (size_t)lo * d2, a->gbd};
    float *bd = malloc(sizeof(float) * (size_t)d2);
    if (a->rank != 0) g.b_dec = bd; /* replicated: rank 0's copy is kept */
    xc_engine_metrics_t m;
    if (!a->rc) a->rc = xc_engine_compute_grads(e, a->x + (size_t)30 * B * d2, B, &g, &m);
    a->norm = m.grad_norm;
    a->loss = m.loss;
    free(bd);
    xc_engine_destroy(&e);
    return NULL;
}

static void test_shard_grads(void)
{
    xc_engine_config_t c;
    base_cfg(&c, XC_PREC_FP32);
    float *x = make_stream(31, SD, SB);
    XC_REQUIRE(x, "stream");
    size_t nw = (size_t)SF * 2 * SD;
    float *buf = calloc(2 * (2 * nw + SF + 2 * SD), sizeof(float));
    XC_REQUIRE(buf, "memory");
    grad_arg_t res[2][TC_MAXR];
    for (int v = 0; v < 2; v++) {
        int R = v ? 3 : 1;
        float *b0 = buf + (size_t)v * (2 * nw + SF + 2 * SD);
        tc_group_t *g = tc_group_new(R);
        pthread_t th[TC_MAXR];
        for (int r = 0; r < R; r++) {
            res[v][r] = (grad_arg_t){g, &c, x, r, 0, b0, b0 + nw, b0 + 2 * nw, b0 + 2 * nw + SF, 0, 0};
            pthread_create(&th[r], NULL, grad_rank, &res[v][r]);
        }
        for (int r = 0; r < R; r++) pthread_join(th[r], NULL);
        for (int r = 0; r < R; r++) XC_CHECK(res[v][r].rc == 0, "R=%d rank %d: %s", R, r, xc_strerror(res[v][r].rc));
        for (int r = 1; r < R; r++)
            XC_CHECK(res[v][r].norm == res[v][0].norm && res[v][r].loss == res[v][0].loss,
                     "R=%d: gradient norm or loss differs between ranks", R);
        tc_group_free(g);
    }
    const grad_arg_t *a = &res[0][0], *b = &res[1][0];
    double re = rel_diff(b->ge, a->ge, nw), rd = rel_diff(b->gd, a->gd, nw), rb = rel_diff(b->gb, a->gb, SF),
           rbd = rel_diff(b->gbd, a->gbd, 2 * SD);
    XC_CHECK(re <= 1e-5 && rd <= 1e-5 && rb <= 1e-5 && rbd <= 1e-5,
             "R=3 gradients differ: w_enc %.3g w_dec %.3g b_enc %.3g b_dec %.3g", re, rd, rb, rbd);
    XC_CHECK(fabs(a->norm - b->norm) <= 1e-6 * a->norm && a->norm > 0, "grad norm %.9g vs %.9g", b->norm, a->norm);
    printf("# compute_grads R=3 vs 1: rel diff w_enc %.2g w_dec %.2g b_enc %.2g b_dec %.2g, norm %.6g vs %.6g\n", re, rd,
           rb, rbd, b->norm, a->norm);
    free(buf);
    free(x);
}

/* What cannot be sharded is refused with XC_ECONFIG. */
static void test_shard_refusals(void)
{
    xc_engine_config_t c;
    base_cfg(&c, XC_PREC_FP32);
    tc_group_t *g = tc_group_new(2);
    int err = 0;
    xc_engine_config_t l1 = c;
    xc_cfg_engine_defaults(&l1, XC_MODEL_L1);
    l1.d = SD, l1.dict_size = SF, l1.batch_size = SB, l1.threads = 1;
    xc_engine_t *e = xc_engine_new_sharded(&l1, &g->tab[0], &err);
    XC_CHECK(!e && err == XC_ECONFIG, "L1 over 2 ranks: got %s", e ? "an engine" : xc_strerror(err));
    xc_engine_destroy(&e);
    xc_engine_config_t dc = c;
    dc.code_norm = XC_CODE_DECOUPLED;
    e = xc_engine_new_sharded(&dc, &g->tab[0], &err);
    XC_CHECK(!e && err == XC_ECONFIG, "decoupled codes over 2 ranks: got %s", e ? "an engine" : xc_strerror(err));
    xc_engine_destroy(&e);
    xc_engine_config_t tiny = c;
    tiny.dict_size = 1, tiny.k = 1;
    e = xc_engine_new_sharded(&tiny, &g->tab[1], &err);
    XC_CHECK(!e && err == XC_ECONFIG, "1 latent over 2 ranks: got %s", e ? "an engine" : xc_strerror(err));
    xc_engine_destroy(&e);
    /* the unsharded engine is the one-rank sharded engine */
    e = xc_engine_new(&c, &err);
    XC_REQUIRE(e, "engine");
    long lo = -1, n = -1;
    xc_engine_shard(e, &lo, &n);
    XC_CHECK(lo == 0 && n == SF && xc_engine_coll(e) == xc_coll_single() && xc_engine_metrics(e)->ranks == 1,
             "unsharded: slice %ld+%ld", lo, n);
    xc_state_view_t v[XC_ENGINE_STATE_MAX];
    int nv = xc_engine_state_views(e, v, XC_ENGINE_STATE_MAX), nsh = 0;
    for (int i = 0; i < nv; i++) {
        int want = strcmp(v[i].name, "b_dec") && strcmp(v[i].name, "adam.m.b_dec") &&
                   strcmp(v[i].name, "adam.v.b_dec") && v[i].ndim > 0 && strcmp(v[i].name, "rng") &&
                   strcmp(v[i].name, "scalars");
        XC_CHECK(v[i].sharded == want, "view %s: sharded %d", v[i].name, v[i].sharded);
        nsh += v[i].sharded;
    }
    XC_CHECK(nsh == 16, "%d sharded views", nsh);
    xc_engine_destroy(&e);
    tc_group_free(g);
}

int main(void)
{
    XC_RUN(test_shard_refusals);
    XC_RUN(test_shard_fp32);
    XC_RUN(test_shard_ecoll);
    XC_RUN(test_shard_grads);
    XC_RUN(test_shard_reduced);
    XC_TEST_EXIT();
}
