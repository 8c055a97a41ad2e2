/* Trainer thread (see xc_trainer.h). */
#include "xc_trainer.h"
#include "xc_ckpt.h"
#include "xc_config.h"
#include "xc_stfile.h"
#include "xc_error.h"
#include "xc_log.h"
#include "xc_norm.h"
#include "xc_rng.h"
#include "xc_shmpub.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* trainer.scaling_exact columns: beta_err base/chat, beta_rec base/chat, nu_err, nu_rec, active,
 * and the standard errors of beta_err chat and beta_rec chat */
#define EXACT_COLS 9

struct xc_trainer {
    xc_engine_t *e;   /* borrowed; used only by the thread once started; a shard in a sharded job */
    xc_engine_t *full;/* borrowed: what checkpoints and the loader see (e itself unless sharded) */
    xc_shard_t *sh;   /* borrowed: the other ranks of a sharded job (NULL: one process) */
    xc_latent_stats_t *g_lat;  /* (F) sharded: the gathered statistics; owned */
    xc_scaling_stats_t *g_run; /* (F) sharded: the gathered running estimates; owned */
    int lost;         /* a sharded command failed (XC_ECOLL ...): the job ends, no final checkpoint */
    xc_queue_t *q;    /* borrowed */
    int d2;           /* 2 * d floats per token */
    long B, C;        /* batch size, mixing buffer slots */
    xc_mixbuf_t *mix; /* the mixing buffer (lanes per stream with a mixture); owned */
    int lanes;        /* of mix and of the queue */
    int mixed;        /* a stream mixture is set: its lanes are checkpointed too */
    float *batch;     /* (B, 2, d) drawn batch; owned */
    xc_tokmeta_t *batch_tm; /* (B): each token's context beside it; owned */
    xc_examples_t *ex; /* owned: live examples (xc_examples.h) */
    int64_t mix_meta[3]; /* buffered, slots (and lanes, with a mixture: its own shape, so that a
                          * run without one never restores lanes as one buffer, nor the reverse) */
    xc_qitem_t cur[XC_MIX_MAX]; /* per lane: popped item being moved into mix (x NULL: none) */
    long cur_off[XC_MIX_MAX];
    long cur_pass[XC_MIX_MAX];  /* per lane: tokens of cur that went into the normalisation pass */
    xc_rng_t rng;
    char *state_dir, *name, *config_json; /* owned copies */
    void (*notify)(void *);
    void *notify_ctx;
    pthread_t thread;
    int started;

    pthread_mutex_t mu; /* guards everything below */
    int paused, stop;
    uint64_t ckpt_req, ckpt_done, snap_req, snap_done;
    const char *ckpt_reason;
    int events;                /* XC_TR_EV_* not yet polled */
    xc_ckpt_result_t ckpt;     /* latest result */
    xc_trainer_status_t st;

    uint64_t scal_req_tokens;  /* exact Latent Scaling pass asked for (0: none) */
    int scal_cancel;           /* under mu: drop the pass under way */

    xc_snapshot_t *snap_ready; /* under mu, owned: filled, not yet taken by the loop */
    xc_snapshot_t *snap_spare; /* under mu, owned: given back by the loop, to refill */

    xc_shmpub_t *pub;          /* owned, trainer thread only: per-latent records, shared memory */

    /* trainer-thread only */
    double shm_interval_ms, next_pub_ms;
    xc_scaling_t *pass;        /* owned; the running exact pass, NULL if none */
    double *exact_state;       /* (F, EXACT_COLS) owned: last exact pass, for checkpoints */
    int64_t exact_meta[2];     /* its dictionary step (-1: none) and tokens */
    uint64_t pass_target;

    xc_ckpt_writer_t *ckw;     /* owned: writes checkpoints on its own thread */
    uint64_t ckpt_started;     /* trainer thread: newest request handed to the writer */
    long ckpt_steps;           /* under mu: a checkpoint every N steps (0: off) */
    int ckpt_fail_streak;      /* under mu: checkpoints failed in a row */
    double ckpt_retry_ms;      /* under mu: no automatic checkpoint before this (backoff) */
    int ckpt_logged_failing;   /* a failure was logged and no success since */
    uint64_t max_tokens;       /* token budget; 0 = none */
    int budget_done;           /* trainer thread: the budget is reached, no more steps */

    /* activation normalisation (trainer thread; status copies under mu) */
    xc_norm_t norm;            /* owned arrays; the pass's sums, then the reference's buffers */
    double norm_meta[4];       /* as checkpointed: mode, ready, target_rms, pass tokens (-1: not restored) */
    uint64_t norm_target;      /* normalize_tokens */
    long excl_pos;             /* exclude_positions_below */
    double outlier_factor;     /* outlier_norm_factor */
    double out_median[2];      /* the last batch medians of the outlier rule */
    float *scratch;            /* (scratch_n) owned: token norms for the median */
    unsigned char *keep;       /* (scratch_n) owned */
    long scratch_n;
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void ckpt_written(void *ctx, const xc_ckpt_info_t *r);

xc_trainer_t *xc_trainer_new(xc_engine_t *e, xc_queue_t *q, const xc_trainer_opts_t *o, int *err)
{
    const xc_engine_config_t *c = xc_engine_config(e);
    xc_trainer_t *t = calloc(1, sizeof *t); /* owned by the caller; xc_trainer_destroy */
    *err = XC_ENOMEM;
    if (!t) return NULL;
    t->e = e;
    t->full = o->full && o->shard ? o->full : e;
    t->sh = o->full ? o->shard : NULL;
    t->q = q;
    t->d2 = 2 * c->d;
    t->B = c->batch_size;
    if (o->mix_tokens < t->B) {
        *err = XC_ECONFIG;
        free(t);
        return NULL;
    }
    {
        xc_mix_spec_t none = {.n = 0, .other = -1};
        const xc_mix_spec_t *ms = o->mix && o->mix->n > 0 ? o->mix : &none;
        t->mix = xc_mixbuf_new(ms, o->mix_tokens, t->B, t->d2, err);
        if (!t->mix) {
            free(t);
            return NULL;
        }
        t->lanes = xc_mixbuf_lanes(t->mix);
        t->mixed = ms->n > 0;
        xc_mixbuf_rows(t->mix, &t->C);
        for (int l = 0; l < t->lanes; l++) t->st.lane_batch_min[l] = t->st.lane_batch_max[l] = -1;
        t->st.lanes = t->lanes;
        t->st.mix_waiting = -1;
    }
    t->batch = malloc((size_t)t->B * t->d2 * sizeof(float));
    t->batch_tm = malloc((size_t)t->B * sizeof *t->batch_tm);
    t->exact_state = malloc(sizeof(double) * (size_t)c->dict_size * EXACT_COLS);
    t->state_dir = strdup(o->state_dir ? o->state_dir : ".");
    t->name = strdup(o->name ? o->name : "xcoderd");
    t->config_json = strdup(o->config_json ? o->config_json : "{}");
    if (t->sh) {
        t->g_lat = calloc((size_t)c->dict_size, sizeof *t->g_lat);
        t->g_run = calloc((size_t)c->dict_size, sizeof *t->g_run);
        if (!t->g_lat || !t->g_run) goto out_free;
    }
    if (!t->batch || !t->batch_tm || !t->exact_state || !t->state_dir || !t->name || !t->config_json)
        goto out_free;
    {
        xc_examples_config_t xcfg = o->examples;
        if (xcfg.store_tokens <= 0) xcfg.store_tokens = 16 * t->C > 65536 ? 16 * t->C : 65536;
        t->ex = xc_examples_new(&xcfg, c->dict_size, err);
        if (!t->ex) goto out_free;
        if (o->vocab_file && *o->vocab_file) {
            char why[512];
            int vrc = xc_examples_load_vocab_file(t->ex, o->vocab_file, why, sizeof why);
            if (vrc) xc_log(XC_LOG_WARN, "vocab_file: %s; examples show token ids", why);
        }
        xc_log(XC_LOG_INFO, "examples: top %d + random %d per latent, window +-%d, store of %ld tokens: %.1f MB",
               xcfg.top_n, xcfg.random_n, xcfg.window, xcfg.store_tokens,
               xc_examples_memory(&xcfg, c->dict_size) / 1e6);
    }
    for (size_t i = 0; i < (size_t)c->dict_size * EXACT_COLS; i++) t->exact_state[i] = NAN;
    t->exact_meta[0] = -1;
    t->exact_meta[1] = 0;
    {
        xc_ckpt_writer_opts_t wo = {t->state_dir, t->name, t->config_json, o->checkpoint_keep, ckpt_written, t};
        t->ckw = xc_ckpt_writer_new(&wo, err);
        if (!t->ckw) goto out_free;
        t->ckpt_steps = o->checkpoint_steps;
    }
    t->max_tokens = o->max_tokens;
    if (xc_norm_init(&t->norm, c->d, (xc_norm_mode_t)o->normalize, o->target_rms > 0 ? (float)o->target_rms : 1.0f)) {
        *err = XC_ECONFIG;
        goto out_free;
    }
    t->norm_target = o->normalize_tokens > 1 ? (uint64_t)o->normalize_tokens : 2;
    t->excl_pos = o->exclude_positions_below;
    t->outlier_factor = o->outlier_norm_factor;
    t->st.norm_mode = o->normalize;
    t->st.norm_state = o->normalize ? 1 : 0;
    t->st.norm_scale[0] = t->st.norm_scale[1] = 1.0f;
    t->st.scaling_units = o->normalize != XC_NORM_NEURON;
    {
        char why[256] = "";
        int rc;
        t->pub = xc_shmpub_new(o->shm_instance, t->full, (mode_t)o->shm_mode, o->shm_owner, &o->thresholds, &rc, why,
                               sizeof why);
        if (!t->pub && rc == XC_ESTATE) {
            /* another live daemon publishes under this name: refuse to start */
            if (o->why) snprintf(o->why, o->why_len, "%s", why);
            *err = rc;
            goto out_free;
        }
        if (!t->pub && o->shm_instance) {
            /* no shared memory (e.g. no /dev/shm): keep training, say so */
            xc_log(XC_LOG_WARN, "shared memory disabled: %s", why);
            t->pub = xc_shmpub_new(NULL, t->full, 0, NULL, &o->thresholds, &rc, why, sizeof why);
        } else if (o->shm_instance) {
            t->st.shm = 1;
        }
        if (!t->pub) goto out_free;
    }
    t->shm_interval_ms = o->shm_interval > 0 ? o->shm_interval * 1e3 : 1e3;
    if (pthread_mutex_init(&t->mu, NULL)) goto out_free;
    xc_rng_seed(&t->rng, o->seed ^ 0x6d69786275666672ull); /* "mixbuffr": not the init stream */
    t->notify = o->notify;
    t->notify_ctx = o->notify_ctx;
    t->st.m = *xc_engine_metrics(e);
    t->st.state = XC_TR_STARTING;
    t->st.scaling_last_step = -1;
    t->st.shard.ranks = t->sh ? xc_shard_size(t->sh) : 1;
    t->st.shard.ranks_shown = 1;
    *err = XC_OK;
    return t;
out_free:
    xc_ckpt_writer_destroy(&t->ckw);
    free(t->g_lat);
    free(t->g_run);
    xc_shmpub_destroy(&t->pub, 1);
    xc_mixbuf_destroy(&t->mix);
    xc_norm_free(&t->norm);
    free(t->exact_state);
    free(t->batch);
    free(t->batch_tm);
    xc_examples_destroy(&t->ex);
    free(t->state_dir);
    free(t->name);
    free(t->config_json);
    free(t);
    return NULL;
}

void xc_trainer_destroy(xc_trainer_t **pt)
{
    xc_trainer_t *t = pt ? *pt : NULL;
    if (!t) return;
    xc_ckpt_writer_destroy(&t->ckw); /* finishes a write in flight */
    for (int l = 0; l < XC_MIX_MAX; l++) {
        free(t->cur[l].x);
        free(t->cur[l].meta);
    }
    free(t->batch_tm);
    xc_examples_destroy(&t->ex);
    xc_mixbuf_destroy(&t->mix);
    free(t->exact_state);
    free(t->batch);
    free(t->g_lat);
    free(t->g_run);
    xc_scaling_destroy(&t->pass); /* (a sharded pass's other ranks end with the job) */
    xc_shmpub_destroy(&t->pub, 1); /* a clean exit unlinks the shared memory */
    xc_norm_free(&t->norm);
    free(t->scratch);
    free(t->keep);
    free(t->state_dir);
    free(t->name);
    free(t->config_json);
    xc_snapshot_free(&t->snap_ready);
    xc_snapshot_free(&t->snap_spare);
    pthread_mutex_destroy(&t->mu);
    free(t);
    *pt = NULL;
}

static void post(xc_trainer_t *t, int ev)
{
    pthread_mutex_lock(&t->mu);
    t->events |= ev;
    pthread_mutex_unlock(&t->mu);
    if (t->notify) t->notify(t->notify_ctx);
}

/* A popped batch's token context: its source (producer, stream) interned, and
 * every token with a document position into the examples' document store now,
 * before any of them is drawn, so a window's right side is usually there when
 * the token is trained. A batch sent without ids or positions gets context
 * "none" (its examples carry the stream only). */
static void item_context(xc_trainer_t *t, xc_qitem_t *it)
{
    uint16_t src = xc_examples_source(t->ex, it->producer, it->stream);
    if (!it->meta) {
        it->meta = malloc((size_t)it->n * sizeof *it->meta); /* owned with it->x */
        if (!it->meta) { /* no context for this batch (fill_buffer copes): train it anyway */
            xc_log(XC_LOG_WARN, "out of memory for the context of %ld tokens; they give no examples", it->n);
            return;
        }
        xc_tokmeta_fill(it->meta, it->n, NULL, NULL);
    }
    for (long i = 0; i < it->n; i++) it->meta[i].src = src;
    xc_examples_store(t->ex, it->meta, it->n);
}

/* The intake exclusions (exclude_positions_below, outlier_norm_factor) on a
 * popped item, before its tokens reach the statistics or the buffer: the kept
 * tokens are compacted in place (their context with them), the others
 * counted, never dropped silently. */
static void intake_filter(xc_trainer_t *t, xc_qitem_t *it)
{
    if (!t->excl_pos && !(t->outlier_factor > 0)) return;
    if (it->n > t->scratch_n) {
        float *sc = realloc(t->scratch, sizeof(float) * (size_t)it->n); /* owned by t */
        if (sc) t->scratch = sc;
        unsigned char *kp = realloc(t->keep, (size_t)it->n); /* owned by t */
        if (kp) t->keep = kp;
        if (!sc || !kp) {
            xc_log(XC_LOG_WARN, "out of memory for the intake exclusions of %ld tokens; trained unfiltered", it->n);
            return;
        }
        t->scratch_n = it->n;
    }
    long n0 = it->n, by_pos = 0, by_outlier = 0;
    /* the position rule first (exact, from the token's context), then the norm
     * rule on the tokens left (their median is the batch's, without the excluded) */
    for (int rule = 0; rule < 2; rule++) {
        if (rule == 0) {
            if (!t->excl_pos) continue;
            for (long b = 0; b < it->n; b++) {
                const xc_tokmeta_t *m = it->meta ? &it->meta[b] : NULL;
                t->keep[b] = !(m && (m->flags & XC_TM_POS) && (long)m->pos < t->excl_pos);
                by_pos += !t->keep[b];
            }
        } else {
            by_outlier = xc_norm_outliers(it->x, it->n, t->d2 / 2, t->outlier_factor, t->out_median, t->scratch,
                                          t->keep);
        }
        long n = 0;
        for (long b = 0; b < it->n; b++) {
            if (!t->keep[b]) continue;
            if (n != b) {
                memcpy(it->x + (size_t)n * t->d2, it->x + (size_t)b * t->d2, sizeof(float) * (size_t)t->d2);
                if (it->meta) it->meta[n] = it->meta[b];
            }
            n++;
        }
        it->n = n;
    }
    if (it->n == n0) return;
    xc_queue_note_excluded(t->q, (uint64_t)(n0 - it->n));
    pthread_mutex_lock(&t->mu);
    t->st.tokens_excluded_position += (uint64_t)by_pos;
    t->st.tokens_excluded_outlier += (uint64_t)by_outlier;
    pthread_mutex_unlock(&t->mu);
}

/* The normaliser is ready: FVE in original units, Latent Scaling's units, status. */
static void norm_ready(xc_trainer_t *t)
{
    float *w = malloc(sizeof(float) * (size_t)t->d2); /* owned here */
    if (w) {
        xc_norm_fve_weights(&t->norm, w);
        if (xc_engine_set_fve_weights(t->e, w)) xc_log(XC_LOG_WARN, "out of memory: FVE stays in normalised units");
        free(w);
    }
    xc_shmpub_set_norm(t->pub, &t->norm);
    pthread_mutex_lock(&t->mu);
    t->st.norm_state = 2;
    t->st.norm_tokens = t->norm.count;
    t->st.norm_scale[0] = t->norm.scale[0];
    t->st.norm_scale[1] = t->norm.scale[1];
    pthread_mutex_unlock(&t->mu);
}

static int norm_waiting(const xc_trainer_t *t) { return t->norm.mode != XC_NORM_OFF && !t->norm.ready; }

/* The statistics pass: the first normalize_tokens tokens popped (after the
 * intake exclusions, in the order the queue gives them) go into the Welford
 * sums; at the last one the buffers are computed. The mixing buffer keeps raw
 * tokens: a drawn batch is normalised (draw_batch), so nothing buffered needs
 * converting when the pass ends. Returns how many of x's n tokens it took. */
static long norm_collect(xc_trainer_t *t, const float *x, long n)
{
    if (!norm_waiting(t)) return 0;
    uint64_t need = t->norm_target - t->norm.count;
    long take = (uint64_t)n < need ? n : (long)need;
    xc_norm_add(&t->norm, x, take);
    pthread_mutex_lock(&t->mu);
    t->st.norm_tokens = t->norm.count;
    pthread_mutex_unlock(&t->mu);
    if (t->norm.count < t->norm_target) return take;
    int rc = xc_norm_finish(&t->norm);
    if (rc) { /* constant or non-finite activations: the pass starts again on new tokens */
        xc_log(XC_LOG_ERROR, "activation normalisation: the statistics of %llu tokens are unusable (%s: a model's "
               "activations are constant, or too large for float32); collecting %llu new tokens",
               (unsigned long long)t->norm.count, xc_strerror(rc), (unsigned long long)t->norm_target);
        memset(t->norm.w_mean, 0, sizeof(double) * (size_t)t->d2);
        memset(t->norm.w_m2, 0, sizeof(double) * (size_t)t->d2);
        t->norm.count = 0;
        return take;
    }
    norm_ready(t);
    xc_log(XC_LOG_INFO, "activation normalisation (%s) from %llu tokens: scale a_base %.6g, a_chat %.6g; training "
           "starts (%llu tokens were statistics only)", t->norm.mode == XC_NORM_GLOBAL ? "global" : "neuron",
           (unsigned long long)t->norm.count, (double)t->norm.scale[0], (double)t->norm.scale[1],
           (unsigned long long)t->st.tokens_stats_only);
    return take;
}

/* Pops lane l's next item into t->cur[l] with its context, the exclusions and
 * its part of the statistics pass; 0 or XC_EAGAIN. */
static int next_item(xc_trainer_t *t, int l)
{
    xc_qitem_t *cur = &t->cur[l];
    if (xc_queue_try_pop_lane(t->q, l, cur)) return XC_EAGAIN;
    t->cur_off[l] = 0;
    item_context(t, cur);
    intake_filter(t, cur);
    t->cur_pass[l] = norm_collect(t, cur->x, cur->n);
    return XC_OK;
}

static void drop_cur(xc_trainer_t *t, int l)
{
    free(t->cur[l].x);
    free(t->cur[l].meta);
    memset(&t->cur[l], 0, sizeof t->cur[l]);
}

/* Moves tokens from the queue into the mixing buffer: each lane from its own
 * queue lane, until the lane is full or its queue lane is empty. While the
 * normalisation pass runs and a lane is full, that lane's queue goes on
 * feeding the statistics alone (those tokens are counted, not trained), so the
 * pass never waits for a buffer that cannot drain before it ends. */
static void fill_buffer(xc_trainer_t *t)
{
    for (int l = 0; l < t->lanes; l++) {
        xc_qitem_t *cur = &t->cur[l];
        while (xc_mixbuf_room(t->mix, l) > 0) {
            if (!cur->x && next_item(t, l)) break;
            long take = cur->n - t->cur_off[l], room = xc_mixbuf_room(t->mix, l);
            if (take > room) take = room;
            xc_mixbuf_put(t->mix, l, cur->x + (size_t)t->cur_off[l] * t->d2, cur->meta ? cur->meta + t->cur_off[l] : NULL,
                          take);
            t->cur_off[l] += take;
            xc_queue_note_buffered(t->q, (uint64_t)take);
            if (t->cur_off[l] == cur->n) drop_cur(t, l);
        }
        while (norm_waiting(t) && xc_mixbuf_room(t->mix, l) == 0) {
            if (!cur->x && next_item(t, l)) break;
            long drop = t->cur_pass[l] - t->cur_off[l]; /* in the pass, not in the buffer */
            if (drop > 0) {
                xc_queue_note_excluded(t->q, (uint64_t)drop);
                pthread_mutex_lock(&t->mu);
                t->st.tokens_stats_only += (uint64_t)drop;
                pthread_mutex_unlock(&t->mu);
                t->cur_off[l] += drop;
            }
            if (t->cur_off[l] < cur->n) break; /* the pass ended inside it: the rest waits for room */
            drop_cur(t, l);
        }
    }
}

/* The queue lanes the trainer waits for: those whose buffer lane has room and
 * no item in hand (a bit per lane). */
static unsigned lanes_wanted(xc_trainer_t *t)
{
    unsigned m = 0;
    for (int l = 0; l < t->lanes; l++)
        if ((xc_mixbuf_room(t->mix, l) > 0 || norm_waiting(t)) && !t->cur[l].x) m |= 1u << l;
    return m;
}

/* One training batch from the mixing buffer (xc_mixbuf_draw: the one place a
 * batch is made), and the per-lane composition for status. */
static void draw_batch(xc_trainer_t *t)
{
    long counts[XC_MIX_MAX];
    xc_mixbuf_draw(t->mix, &t->rng, t->batch, t->batch_tm, counts);
    xc_norm_apply(&t->norm, t->batch, t->B); /* the buffer holds raw tokens; no-op without a normaliser */
    pthread_mutex_lock(&t->mu);
    for (int l = 0; l < t->lanes; l++) {
        t->st.lane_batch_last[l] = counts[l];
        if (t->st.lane_batch_min[l] < 0 || counts[l] < t->st.lane_batch_min[l]) t->st.lane_batch_min[l] = counts[l];
        if (counts[l] > t->st.lane_batch_max[l]) t->st.lane_batch_max[l] = counts[l];
    }
    pthread_mutex_unlock(&t->mu);
}

static void refresh_records(xc_trainer_t *t, uint64_t gen);
static uint64_t snap_gen_done(xc_trainer_t *t);
static void exact_to_rows(xc_trainer_t *t, const xc_scaling_stats_t *r, long step, uint64_t tokens);

/* The exact Latent Scaling pass sees the batches the trainer draws, before it
 * trains on them, with the dictionary frozen when the pass began. */
static void shard_lost(xc_trainer_t *t, int rc, const char *what);

static void scaling_feed(xc_trainer_t *t, int add_rc)
{
    if (!t->pass) return;
    int rc = t->sh ? add_rc : xc_scaling_add(t->pass, t->batch, t->B);
    uint64_t done = xc_scaling_tokens(t->pass);
    if (rc) xc_log(XC_LOG_ERROR, "exact Latent Scaling pass: %s", xc_strerror(rc));
    pthread_mutex_lock(&t->mu);
    t->st.scaling_done = done;
    pthread_mutex_unlock(&t->mu);
    if (done < t->pass_target && !rc) return;
    const xc_engine_config_t *c = xc_engine_config(t->e);
    xc_scaling_stats_t *res = malloc(sizeof *res * (size_t)c->dict_size); /* owned here */
    long step = xc_scaling_step(t->pass);
    if (t->sh) { /* every rank ends its pass; the results come to this one */
        int src = xc_shard_scaling_end(t->sh, &t->pass, res && !rc ? res : NULL);
        if (src) {
            free(res);
            shard_lost(t, src, "the exact Latent Scaling results");
            return;
        }
    } else if (res && !rc) {
        xc_scaling_result(t->pass, res);
    }
    if (res && !rc) {
        xc_norm_scaling_to_original(&t->norm, res, c->dict_size); /* as the running ones: original units */
        exact_to_rows(t, res, step, done);
        rc = xc_shmpub_set_exact(t->pub, res, step, done);
    }
    free(res);
    xc_scaling_destroy(&t->pass);
    pthread_mutex_lock(&t->mu);
    t->st.scaling_running = 0;
    if (!rc) {
        t->st.scaling_last_step = step;
        t->st.scaling_last_tokens = done;
        t->st.scaling_passes++;
    }
    pthread_mutex_unlock(&t->mu);
    xc_log(rc ? XC_LOG_ERROR : XC_LOG_INFO, "exact Latent Scaling pass on the step-%ld dictionary over %llu tokens: %s",
           step, (unsigned long long)done, rc ? xc_strerror(rc) : "done");
    refresh_records(t, snap_gen_done(t));
    post(t, XC_TR_EV_SCALING);
}

static void scaling_start(xc_trainer_t *t, uint64_t tokens)
{
    int err = XC_OK;
    if (t->sh) {
        err = xc_shard_scaling_new(t->sh, &t->pass);
        if (err == XC_ECOLL || (err && !t->pass)) {
            shard_lost(t, err, "starting the exact Latent Scaling pass");
            return;
        }
    } else {
        t->pass = xc_scaling_new(t->e, &err);
    }
    pthread_mutex_lock(&t->mu);
    t->st.scaling_running = t->pass != NULL;
    t->st.scaling_done = 0;
    t->st.scaling_target = tokens;
    pthread_mutex_unlock(&t->mu);
    t->pass_target = tokens;
    if (!t->pass && err == XC_EINVAL)
        xc_log(XC_LOG_ERROR, "cannot start the exact Latent Scaling pass: it is not defined for code_normalization "
               "= decoupled (each latent has one activation per model)");
    else if (!t->pass)
        xc_log(XC_LOG_ERROR, "cannot start the exact Latent Scaling pass: %s (it needs a copy of the model)",
               xc_strerror(err));
    else
        xc_log(XC_LOG_INFO, "exact Latent Scaling pass started: step-%ld dictionary, next %llu tokens",
               xc_scaling_step(t->pass), (unsigned long long)tokens);
}

/* Drops the pass under way (xc_trainer_cancel_scaling): its partial sums go,
 * the last completed pass stays published. */
static void scaling_cancel(xc_trainer_t *t)
{
    uint64_t done = xc_scaling_tokens(t->pass);
    if (t->sh) {
        int rc = xc_shard_scaling_end(t->sh, &t->pass, NULL);
        if (rc) shard_lost(t, rc, "cancelling the exact Latent Scaling pass");
    }
    xc_scaling_destroy(&t->pass);
    pthread_mutex_lock(&t->mu);
    t->st.scaling_running = 0;
    t->st.scaling_cancelled++;
    pthread_mutex_unlock(&t->mu);
    xc_log(XC_LOG_INFO, "exact Latent Scaling pass cancelled after %llu of %llu tokens", (unsigned long long)done,
           (unsigned long long)t->pass_target);
}

/* A sharded command failed: the ranks can no longer be assumed to hold one
 * model. Said once; the trainer stops without a final checkpoint and the
 * service ends the job (the other ranks end at their progress timeout, or
 * when mpirun takes the job down). */
static void shard_lost(xc_trainer_t *t, int rc, const char *what)
{
    if (t->lost) return;
    t->lost = rc ? rc : XC_ECOLL;
    xc_log(XC_LOG_ERROR, "sharded job: %s failed: %s (%s); stopping without a final checkpoint", what,
           xc_strerror(rc), xc_shard_error(t->sh));
    xc_trainer_stop(t);
}

static void do_step(xc_trainer_t *t)
{
    int rc, add_rc = XC_OK;
    double t0, ms;
    draw_batch(t);
    if (t->sh) { /* every rank feeds its pass and trains on the batch (xc_shard.h) */
        t0 = now_ms();
        int src = xc_shard_train(t->sh, t->batch, t->B, t->pass, &rc, &add_rc);
        ms = now_ms() - t0;
        if (src) {
            shard_lost(t, src, "a training step");
            return;
        }
        pthread_mutex_lock(&t->mu);
        xc_shard_report(t->sh, &t->st.shard);
        pthread_mutex_unlock(&t->mu);
        scaling_feed(t, add_rc);
    } else {
        scaling_feed(t, XC_OK);
        t0 = now_ms();
        rc = xc_engine_train_step(t->e, t->batch, t->B);
        ms = now_ms() - t0;
    }
    xc_queue_note_trained(t->q, (uint64_t)t->B, rc != 0);
    if (rc) xc_log(XC_LOG_ERROR, "training step failed: %s; %ld tokens discarded", xc_strerror(rc), t->B);
    pthread_mutex_lock(&t->mu);
    for (int l = 0; l < t->lanes && !rc; l++) t->st.lane_trained[l] += (uint64_t)t->st.lane_batch_last[l];
    t->st.m = *xc_engine_metrics(t->e);
    t->st.last_step_ms = ms;
    if (rc) t->st.step_errors++;
    pthread_mutex_unlock(&t->mu);
    if (!rc) { /* the step's selected entries feed the examples (BatchTopK; L1 selects none) */
        const long *rp;
        const int *col;
        const float *val;
        if ((t->sh ? xc_shard_selection(t->sh, &rp, &col, &val) : xc_engine_selection(t->e, &rp, &col, &val)) > 0)
            xc_examples_update(t->ex, t->batch_tm, t->B, rp, col, val, xc_engine_metrics(t->e)->step);
    }
}

/* The trainer's own state in the checkpoint: the mixing buffer's draws and the
 * last exact Latent Scaling pass (kept with the checkpoints that follow it),
 * the buffered tokens' context and the live examples; with a stream mixture
 * also the buffer's lanes (a run without one writes exactly what it did before
 * mixtures existed). */
#define N_EXTRAS (11 + XC_EXAMPLES_VIEWS)
static int ckpt_extras(xc_trainer_t *t, xc_state_view_t *v)
{
    long F = xc_engine_config(t->e)->dict_size;
    /* tokens acked but not trained yet travel with the checkpoint: the buffer whole
     * (a view's size is fixed for the writer's preallocated copy) and its fill */
    t->mix_meta[0] = xc_mixbuf_buffered(t->mix, -1);
    t->mix_meta[1] = t->C;
    t->mix_meta[2] = t->lanes;
    v[3] = (xc_state_view_t){"trainer.mix_buffer", XC_ST_F32, 2, {t->C, t->d2, 0}, xc_mixbuf_rows(t->mix, NULL),
                             sizeof(float) * (size_t)t->C * (size_t)t->d2, 0};
    v[4] = (xc_state_view_t){"trainer.mix_meta", XC_ST_I64, 1, {t->mixed ? 3 : 2, 0, 0}, t->mix_meta,
                             sizeof(int64_t) * (t->mixed ? 3 : 2), 0};
    v[0] = (xc_state_view_t){"trainer.mix_rng", XC_ST_U64, 1, {4, 0, 0}, t->rng.s, sizeof t->rng.s, 0};
    v[1] = (xc_state_view_t){"trainer.scaling_exact", XC_ST_F64, 2, {F, EXACT_COLS, 0}, t->exact_state,
                             sizeof(double) * (size_t)F * EXACT_COLS, 0};
    v[2] = (xc_state_view_t){"trainer.scaling_exact_meta", XC_ST_I64, 1, {2, 0, 0}, t->exact_meta,
                             sizeof t->exact_meta, 0};
    v[5] = (xc_state_view_t){"trainer.mix_context", XC_ST_U64, 2, {t->C, 2, 0}, xc_mixbuf_context(t->mix),
                             sizeof(xc_tokmeta_t) * (size_t)t->C, 0};
    int n = 6 + xc_examples_state_views(t->ex, v + 6, XC_EXAMPLES_VIEWS);
    if (t->mixed)
        v[n++] = (xc_state_view_t){"trainer.mix_lanes", XC_ST_I64, 2, {t->lanes, 3, 0}, xc_mixbuf_lane_table(t->mix),
                                   sizeof(int64_t) * 3 * (size_t)t->lanes, 0};
    /* the activation normaliser: its buffers and what they are */
    long d = t->d2 / 2;
    t->norm_meta[0] = t->norm.mode;
    t->norm_meta[1] = t->norm.ready;
    t->norm_meta[2] = t->norm.target_rms;
    t->norm_meta[3] = (double)t->norm.count;
    v[n++] = (xc_state_view_t){"trainer.norm_mean", XC_ST_F32, 2, {2, d, 0}, t->norm.mean, sizeof(float) * 2 * (size_t)d, 0};
    v[n++] = (xc_state_view_t){"trainer.norm_std", XC_ST_F32, 2, {2, d, 0}, t->norm.std, sizeof(float) * 2 * (size_t)d, 0};
    v[n++] = (xc_state_view_t){"trainer.norm_scale", XC_ST_F32, 1, {2, 0, 0}, t->norm.scale, sizeof t->norm.scale, 0};
    v[n++] = (xc_state_view_t){"trainer.norm_meta", XC_ST_F64, 1, {4, 0, 0}, t->norm_meta, sizeof t->norm_meta, 0};
    return n;
}

static const char *norm_name(int mode) { return mode == XC_NORM_GLOBAL ? "global" : mode == XC_NORM_NEURON ? "neuron" : "off"; }

/* After a resume wrote into the normaliser's views: a model keeps the
 * normalisation it was trained with. A checkpoint without these views (an
 * older one) was trained without. A mismatch with the configuration is
 * refused (training on differently scaled inputs would silently ruin the
 * model); a checkpoint of a model that never stepped starts the pass again. */
static int norm_resumed(xc_trainer_t *t, long step, char *why, size_t why_len)
{
    int mode = t->norm_meta[0] < 0 ? XC_NORM_OFF : (int)t->norm_meta[0], ready = t->norm_meta[0] >= 0 && t->norm_meta[1] > 0;
    if (step > 0 && (mode != (int)t->norm.mode || (mode != XC_NORM_OFF && !ready))) {
        xc_why(why, why_len, "the checkpoint's model was trained with normalize = %s, the configuration says "
               "normalize = %s: set normalize = %s to continue it (or start a new model with --fresh)",
               norm_name(mode), norm_name(t->norm.mode), norm_name(mode));
        return XC_ECONFIG;
    }
    if (!ready || t->norm.mode == XC_NORM_OFF) { /* nothing normalised yet: the pass runs (again) */
        for (size_t i = 0; i < (size_t)t->d2; i++) t->norm.mean[i] = t->norm.std[i] = NAN;
        t->norm.scale[0] = t->norm.scale[1] = 1.0f;
        return XC_OK;
    }
    if (t->norm_meta[2] > 0) t->norm.target_rms = (float)t->norm_meta[2]; /* the model's, not the config's */
    t->norm.count = (uint64_t)t->norm_meta[3];
    t->norm.ready = 1;
    norm_ready(t);
    xc_log(XC_LOG_INFO, "activation normalisation (%s) restored: a_base %.6g, a_chat %.6g, from %llu tokens",
           norm_name(mode), (double)t->norm.scale[0], (double)t->norm.scale[1], (unsigned long long)t->norm.count);
    return XC_OK;
}

/* exact results <-> the rows of trainer.scaling_exact */
static void exact_to_rows(xc_trainer_t *t, const xc_scaling_stats_t *r, long step, uint64_t tokens)
{
    long F = xc_engine_config(t->e)->dict_size;
    for (long j = 0; j < F; j++) {
        double *o = t->exact_state + (size_t)j * EXACT_COLS;
        o[0] = r[j].beta_err[0], o[1] = r[j].beta_err[1], o[2] = r[j].beta_rec[0], o[3] = r[j].beta_rec[1];
        o[4] = r[j].nu_err, o[5] = r[j].nu_rec, o[6] = r[j].active;
        o[7] = r[j].se_err_chat, o[8] = r[j].se_rec_chat;
    }
    t->exact_meta[0] = step;
    t->exact_meta[1] = (int64_t)tokens;
}

static int rows_to_exact(xc_trainer_t *t)
{
    long F = xc_engine_config(t->e)->dict_size;
    if (t->exact_meta[0] < 0) return XC_OK;
    xc_scaling_stats_t *r = malloc(sizeof *r * (size_t)F); /* owned here */
    if (!r) return XC_ENOMEM;
    for (long j = 0; j < F; j++) {
        const double *o = t->exact_state + (size_t)j * EXACT_COLS;
        r[j] = (xc_scaling_stats_t){{(float)o[0], (float)o[1]}, {(float)o[2], (float)o[3]}, (float)o[4], (float)o[5], o[6],
                                    (float)o[7], (float)o[8], 0};
        xc_scaling_stability(&r[j], xc_engine_config(t->e)->scaling_nu_min_z);
    }
    int rc = xc_shmpub_set_exact(t->pub, r, (long)t->exact_meta[0], (uint64_t)t->exact_meta[1]);
    free(r);
    pthread_mutex_lock(&t->mu);
    t->st.scaling_last_step = (long)t->exact_meta[0];
    t->st.scaling_last_tokens = (uint64_t)t->exact_meta[1];
    pthread_mutex_unlock(&t->mu);
    return rc;
}

/* A checkpoint finished (any thread): log it and report it to the loop. */
static void ckpt_finished(xc_trainer_t *t, const xc_ckpt_info_t *r)
{
    xc_ckpt_result_t res;
    memset(&res, 0, sizeof res);
    res.gen = r->gen;
    res.rc = r->rc;
    res.step = r->step;
    res.bytes = r->bytes;
    snprintf(res.path, sizeof res.path, "%s", r->path);
    snprintf(res.train_path, sizeof res.train_path, "%s", r->train_path);
    snprintf(res.why, sizeof res.why, "%s", r->why);
    snprintf(res.reason, sizeof res.reason, "%s", r->reason);
    /* Backoff: after a failure, automatic checkpoints (interval, steps) wait
     * 1 s, 2 s, 4 s ... up to 10 min; requests and the shutdown's still try.
     * One ERROR when writing starts failing, one INFO when it works again. */
    pthread_mutex_lock(&t->mu);
    int streak = r->rc ? ++t->ckpt_fail_streak : 0;
    if (r->rc) {
        double wait_ms = 1000.0 * (double)(1ull << (streak - 1 < 10 ? streak - 1 : 10));
        t->ckpt_retry_ms = now_ms() + (wait_ms < 600000.0 ? wait_ms : 600000.0);
    } else {
        t->ckpt_fail_streak = 0;
        t->ckpt_retry_ms = 0;
    }
    int recovered = !r->rc && t->ckpt_logged_failing;
    t->ckpt_logged_failing = r->rc != 0;
    pthread_mutex_unlock(&t->mu);
    if (r->rc && streak == 1)
        xc_log(XC_LOG_ERROR, "checkpoint (%s) failed: %s; automatic checkpoints back off (1 s, doubling up to "
               "10 min) until one succeeds", r->reason, r->why);
    else if (r->rc)
        xc_log((streak & (streak - 1)) == 0 ? XC_LOG_WARN : XC_LOG_DEBUG, "checkpoint (%s) still failing (%d in a "
               "row): %s", r->reason, streak, r->why);
    if (recovered) xc_log(XC_LOG_INFO, "checkpoints are written again");
    if (r->rc)
        ; /* said above */
    else if (r->reused)
        xc_log(XC_LOG_INFO, "checkpoint (%s) at step %ld: %s is current (nothing trained since)", r->reason, r->step,
               r->path);
    else
        xc_log(XC_LOG_INFO, "checkpoint (%s) at step %ld: %s (%llu bytes, training state %llu bytes); copy %.0f ms, "
               "write %.0f ms", r->reason, r->step, r->path, (unsigned long long)r->bytes,
               (unsigned long long)r->train_bytes, r->capture_ms, r->write_ms);
    pthread_mutex_lock(&t->mu);
    if (r->gen >= t->ckpt.gen) t->ckpt = res;
    if (r->gen > t->ckpt_done) t->ckpt_done = r->gen;
    pthread_mutex_unlock(&t->mu);
    post(t, XC_TR_EV_CKPT);
}

/* The writer thread's report of an asynchronous checkpoint. */
static void ckpt_written(void *ctx, const xc_ckpt_info_t *r)
{
    xc_trainer_t *t = ctx;
    ckpt_finished(t, r);
    xc_queue_kick(t->q); /* a request that waited for the writer goes next */
}

/* Hands a checkpoint to the writer: the state is copied now (the only time
 * training waits) and written on the writer's thread. sync: written here.
 * While a write is in flight the request stays pending (coalescing). */
static void do_checkpoint(xc_trainer_t *t, uint64_t gen, const char *reason, int sync)
{
    xc_ckpt_info_t r;
    xc_state_view_t ex[N_EXTRAS];
    if (t->sh && !sync) { /* the whole state comes to this rank first: not while the writer is busy */
        if (xc_ckpt_writer_busy(t->ckw)) return;
        int src = xc_shard_gather(t->sh);
        if (src) {
            shard_lost(t, src, "gathering the checkpoint");
            return;
        }
    }
    int rc = xc_ckpt_writer_submit(t->ckw, t->full, ex, ckpt_extras(t, ex), reason, gen, sync, &r);
    if (rc == XC_EAGAIN) return;
    t->ckpt_started = gen;
    if (rc == 0) return; /* the writer reports */
    ckpt_finished(t, &r); /* written here, current already, or failed */
}

/* Snapshots alive in this process (tests check the bound of three). */
static atomic_long g_snapshots_alive;

long xc_snapshot_alive(void) { return atomic_load(&g_snapshots_alive); }

/* One block holding a snapshot and its arrays (freed with one free). NULL
 * when out of memory. */
static xc_snapshot_t *snapshot_alloc(long F)
{
    size_t n = (size_t)F;
    size_t sz = sizeof(xc_snapshot_t) + n * sizeof(xc_latent_stats_t) + 2 * n * sizeof(xc_scaling_stats_t) + 2 * n;
    xc_snapshot_t *sn = calloc(1, sz); /* owned by the caller */
    if (!sn) return NULL;
    atomic_fetch_add(&g_snapshots_alive, 1);
    uint8_t *p = (uint8_t *)(sn + 1); /* the struct's size keeps the arrays aligned */
    sn->F = F;
    sn->st = (xc_latent_stats_t *)p;
    p += n * sizeof(xc_latent_stats_t);
    sn->running = (xc_scaling_stats_t *)p;
    p += n * sizeof(xc_scaling_stats_t);
    sn->exact = (xc_scaling_stats_t *)p; /* set to NULL in fills without an exact pass */
    p += n * sizeof(xc_scaling_stats_t);
    sn->cls = p;
    sn->flags = p + n;
    return sn;
}

void xc_snapshot_free(xc_snapshot_t **snap)
{
    if (!snap || !*snap) return;
    atomic_fetch_sub(&g_snapshots_alive, 1);
    free(*snap);
    *snap = NULL;
}

/* Recomputes the per-latent records (and writes shared memory), then hands a
 * copy to the loop as the ready snapshot (answering request gen). The copy is
 * O(F) on the trainer thread, between steps; the lock is held only to swap
 * pointers, so neither thread ever waits for the other's work. */
static void refresh_records(xc_trainer_t *t, uint64_t gen)
{
    pthread_mutex_lock(&t->mu);
    double ms = t->st.last_step_ms;
    pthread_mutex_unlock(&t->mu);
    double tps = ms > 0 ? t->B / (ms / 1e3) : 0.0;
    uint32_t counts[8];
    if (!t->sh) {
        xc_shmpub_update(t->pub, t->e, tps);
    } else if (!t->lost) { /* every rank's slice of the records comes here */
        int src = xc_shard_stats(t->sh, t->g_lat, t->g_run);
        if (src) shard_lost(t, src, "gathering the latent statistics");
        else xc_shmpub_update_from(t->pub, t->g_lat, t->g_run, xc_engine_metrics(t->e), tps);
    }
    xc_shmpub_class_counts(t->pub, counts);
    long F = xc_engine_config(t->e)->dict_size;

    /* the buffer to fill: a ready one the loop has not taken (recalled), else the spare */
    pthread_mutex_lock(&t->mu);
    xc_snapshot_t *sn = t->snap_ready ? t->snap_ready : t->snap_spare;
    if (sn == t->snap_ready) t->snap_ready = NULL;
    else t->snap_spare = NULL;
    pthread_mutex_unlock(&t->mu);
    if (!sn) sn = snapshot_alloc(F); /* owned here until parked as ready */
    if (sn) {
        size_t n = (size_t)F;
        const xc_scaling_stats_t *ex;
        sn->step = xc_engine_metrics(t->e)->step;
        sn->gen = gen;
        memcpy(sn->st, xc_shmpub_latents(t->pub), n * sizeof *sn->st);
        memcpy(sn->running, xc_shmpub_scaling(t->pub), n * sizeof *sn->running);
        memcpy(sn->cls, xc_shmpub_classes(t->pub), n);
        memcpy(sn->flags, xc_shmpub_flags(t->pub), n);
        sn->exact = (xc_scaling_stats_t *)(sn->running + n); /* the block's slot for it */
        ex = xc_shmpub_exact(t->pub, &sn->exact_step, &sn->exact_tokens);
        if (ex) memcpy(sn->exact, ex, n * sizeof *sn->exact);
        else sn->exact = NULL, sn->exact_step = -1, sn->exact_tokens = 0;
    } else {
        xc_log(XC_LOG_WARN, "out of memory for the latent snapshot; latent queries wait for the next one");
    }
    pthread_mutex_lock(&t->mu);
    memcpy(t->st.class_counts, counts, sizeof counts);
    if (sn) t->snap_ready = sn;
    pthread_mutex_unlock(&t->mu);
    t->next_pub_ms = now_ms() + t->shm_interval_ms;
    if (sn) post(t, XC_TR_EV_SNAPSHOT);
}

/* The gen the periodic refreshes carry: the newest request already answered. */
static uint64_t snap_gen_done(xc_trainer_t *t)
{
    pthread_mutex_lock(&t->mu);
    uint64_t g = t->snap_done;
    pthread_mutex_unlock(&t->mu);
    return g;
}

static void do_snapshot(xc_trainer_t *t, uint64_t gen)
{
    pthread_mutex_lock(&t->mu);
    t->snap_done = gen;
    pthread_mutex_unlock(&t->mu);
    refresh_records(t, gen);
}

/* The token budget: once the model has trained max_tokens tokens (counted
 * across resumes) training stops for good, after the step that reached it,
 * and a final checkpoint is asked for (reason "budget"; none when a resumed
 * checkpoint is already at the budget). Returns 1 when reached. */
static int budget_check(xc_trainer_t *t, int at_start)
{
    if (t->budget_done) return 1;
    uint64_t tokens = xc_engine_metrics(t->e)->tokens;
    if (!t->max_tokens || tokens < t->max_tokens) return 0;
    t->budget_done = 1;
    pthread_mutex_lock(&t->mu);
    t->st.budget_reached = 1;
    pthread_mutex_unlock(&t->mu);
    xc_log(XC_LOG_INFO, "token budget reached: %llu of max_tokens = %llu trained at step %ld; training stops%s",
           (unsigned long long)tokens, (unsigned long long)t->max_tokens, xc_engine_metrics(t->e)->step,
           at_start ? " (the resumed checkpoint is at the budget)" : ", writing the final checkpoint");
    if (!at_start) xc_trainer_request_checkpoint(t, "budget");
    return 1;
}

static void set_state(xc_trainer_t *t, xc_tr_state_t s)
{
    pthread_mutex_lock(&t->mu);
    t->st.state = s;
    pthread_mutex_unlock(&t->mu);
}

/* Status: each lane's fill, and which lane the buffer waits for (the first
 * lane with room whose queue lane is empty, while another lane is full). */
static void note_waiting(xc_trainer_t *t)
{
    int waiting = -1, some_full = 0;
    long fill[XC_MIX_MAX];
    for (int l = 0; l < t->lanes; l++) {
        fill[l] = xc_mixbuf_buffered(t->mix, l);
        if (xc_mixbuf_room(t->mix, l) == 0) some_full = 1;
        else if (waiting < 0) waiting = l;
    }
    pthread_mutex_lock(&t->mu);
    memcpy(t->st.lane_buffered, fill, sizeof(long) * (size_t)t->lanes);
    t->st.mix_waiting = t->mixed && some_full ? waiting : -1;
    pthread_mutex_unlock(&t->mu);
}

static void *trainer_main(void *arg)
{
    xc_trainer_t *t = arg;
    xc_state_view_t ex[N_EXTRAS];
    xc_ckpt_writer_prepare(t->ckw, t->full, ex, ckpt_extras(t, ex)); /* the checkpoint copy's memory, in the background */
    refresh_records(t, snap_gen_done(t));
    budget_check(t, 1);
    set_state(t, XC_TR_RUNNING);
    for (;;) {
        pthread_mutex_lock(&t->mu);
        int stop = t->stop, paused = t->paused;
        uint64_t scal = t->scal_req_tokens;
        int scal_cancel = t->scal_cancel;
        t->scal_req_tokens = 0;
        t->scal_cancel = 0;
        uint64_t ck = t->ckpt_req > t->ckpt_started ? t->ckpt_req : 0;
        uint64_t sn = t->snap_req > t->snap_done ? t->snap_req : 0;
        const char *reason = t->ckpt_reason;
        t->st.paused = paused;
        if (t->st.state == XC_TR_RUNNING || t->st.state == XC_TR_PAUSED)
            t->st.state = paused ? XC_TR_PAUSED : XC_TR_RUNNING;
        pthread_mutex_unlock(&t->mu);
        if (sn) do_snapshot(t, sn);
        if (stop || t->lost) break; /* pending checkpoint requests are answered by the final one */
        if (ck) do_checkpoint(t, ck, reason ? reason : "request", 0);
        if (scal_cancel && t->pass) scaling_cancel(t);
        if (scal && !t->pass) scaling_start(t, scal);
        if (now_ms() >= t->next_pub_ms) refresh_records(t, snap_gen_done(t));
        xc_examples_apply(t->ex); /* vocabularies and resets asked for meanwhile */
        fill_buffer(t);
        note_waiting(t);
        if (!paused && !t->budget_done && xc_mixbuf_ready(t->mix) && !norm_waiting(t)) {
            do_step(t);
            if (budget_check(t, 0)) continue;
            pthread_mutex_lock(&t->mu);
            long every = t->ckpt_steps;
            pthread_mutex_unlock(&t->mu);
            if (every > 0 && xc_engine_metrics(t->e)->step % every == 0) xc_trainer_request_checkpoint(t, "steps");
            continue;
        }
        if (t->sh && !t->lost && xc_shard_idle_s(t->sh) >= 1.0) { /* the followers' wait stays bounded */
            int src = xc_shard_ping(t->sh);
            if (src) shard_lost(t, src, "a heartbeat");
            continue;
        }
        xc_queue_wait(t->q, 250, t->budget_done ? 0u : lanes_wanted(t));
    }
    set_state(t, XC_TR_STOPPING);
    pthread_mutex_lock(&t->mu);
    uint64_t gen = ++t->ckpt_req;
    pthread_mutex_unlock(&t->mu);
    if (t->sh && !t->lost) { /* the final state comes here, then the other ranks stop */
        int src = xc_shard_gather(t->sh);
        if (!src) src = xc_shard_stop(t->sh);
        if (src) shard_lost(t, src, "the final gather");
    }
    if (t->lost) { /* no checkpoint from a partial state: the last one written stays the newest */
        xc_ckpt_info_t r;
        memset(&r, 0, sizeof r);
        r.rc = XC_ECOLL;
        r.gen = gen;
        r.step = xc_engine_metrics(t->e)->step;
        snprintf(r.reason, sizeof r.reason, "shutdown");
        xc_why(r.why, sizeof r.why, "a rank of the job was lost (%s); no final checkpoint", xc_shard_error(t->sh));
        ckpt_finished(t, &r);
    } else {
        do_checkpoint(t, gen, "shutdown", 1); /* waits for a write in flight, then writes here */
    }
    set_state(t, XC_TR_STOPPED);
    post(t, XC_TR_EV_STOPPED);
    return NULL;
}

int xc_trainer_start(xc_trainer_t *t)
{
    if (pthread_create(&t->thread, NULL, trainer_main, t)) return XC_ESYS;
    t->started = 1;
    return XC_OK;
}

void xc_trainer_join(xc_trainer_t *t)
{
    if (t && t->started) {
        pthread_join(t->thread, NULL);
        t->started = 0;
    }
}

void xc_trainer_set_paused(xc_trainer_t *t, int paused)
{
    pthread_mutex_lock(&t->mu);
    t->paused = paused;
    t->st.paused = paused;
    pthread_mutex_unlock(&t->mu);
    xc_queue_kick(t->q);
}

uint64_t xc_trainer_request_checkpoint(xc_trainer_t *t, const char *reason)
{
    pthread_mutex_lock(&t->mu);
    int automatic = strcmp(reason, "interval") == 0 || strcmp(reason, "steps") == 0;
    if (automatic && t->ckpt_fail_streak && now_ms() < t->ckpt_retry_ms) { /* backing off */
        uint64_t cur = t->ckpt_req;
        pthread_mutex_unlock(&t->mu);
        return cur;
    }
    uint64_t gen = ++t->ckpt_req;
    t->ckpt_reason = reason;
    pthread_mutex_unlock(&t->mu);
    xc_queue_kick(t->q);
    return gen;
}

int xc_trainer_cancel_scaling(xc_trainer_t *t)
{
    int rc = XC_OK;
    pthread_mutex_lock(&t->mu);
    if (!t->st.scaling_running) rc = XC_ENOTFOUND;
    else if (t->scal_req_tokens) { /* asked for, not started yet: never starts */
        t->scal_req_tokens = 0;
        t->st.scaling_running = 0;
        t->st.scaling_cancelled++;
    } else {
        t->scal_cancel = 1;
        t->st.scaling_running = 0; /* from now on; the trainer drops it between steps */
    }
    pthread_mutex_unlock(&t->mu);
    xc_queue_kick(t->q);
    return rc;
}

int xc_trainer_request_scaling(xc_trainer_t *t, uint64_t tokens)
{
    int rc = XC_OK;
    pthread_mutex_lock(&t->mu);
    if (t->st.scaling_running || t->scal_req_tokens || t->scal_cancel) rc = XC_ESTATE;
    else {
        t->scal_req_tokens = tokens;
        t->st.scaling_running = 1; /* from now on, until the pass ends */
        t->st.scaling_done = 0;
        t->st.scaling_target = tokens;
    }
    pthread_mutex_unlock(&t->mu);
    xc_queue_kick(t->q);
    return rc;
}

/* A resumed model keeps its shape (checked by the loader); other training keys may
 * have changed on purpose, but say which, so a run's history stays readable. */
static void warn_config_changes(const char *old_json, const char *new_json)
{
    xc_buf_t ob, nb, oj, nj;
    xc_mp_doc_t *od = NULL, *nd = NULL;
    char why[128];
    xc_buf_init(&ob), xc_buf_init(&nb), xc_buf_init(&oj), xc_buf_init(&nj);
    if (!old_json || !*old_json || xc_json_to_mp(old_json, strlen(old_json), &ob, why, sizeof why) ||
        xc_json_to_mp(new_json, strlen(new_json), &nb, why, sizeof why) ||
        xc_mp_doc_parse(ob.data, ob.len, &od, why, sizeof why) || xc_mp_doc_parse(nb.data, nb.len, &nd, why, sizeof why))
        goto out;
    for (const xc_cfg_key_t *k = xc_cfg_keys(); k->name; k++) {
        if (strcmp(k->section, "model") != 0 && strcmp(k->section, "analysis") != 0) continue;
        xc_mp_node_t a = xc_mp_get(xc_mp_root(od), k->name), b = xc_mp_get(xc_mp_root(nd), k->name);
        if (xc_mp_type(a) == XC_MP_NONE || xc_mp_type(b) == XC_MP_NONE) continue;
        xc_buf_reset(&oj), xc_buf_reset(&nj);
        xc_mp_to_json(a, &oj, 0), xc_mp_to_json(b, &nj, 0);
        if (oj.len != nj.len || memcmp(oj.data, nj.data, oj.len) != 0)
            xc_log(XC_LOG_WARN, "resuming with %s = %.*s (the checkpoint was trained with %.*s)", k->name,
                   (int)nj.len, (const char *)nj.data, (int)oj.len, (const char *)oj.data);
    }
out:
    xc_mp_doc_free(&od);
    xc_mp_doc_free(&nd);
    xc_buf_free(&ob), xc_buf_free(&nb), xc_buf_free(&oj), xc_buf_free(&nj);
}

int xc_trainer_resume(xc_trainer_t *t, const char *path, int fresh, char *why, size_t why_len)
{
    xc_ckpt_resume_opts_t o = {t->state_dir, t->name, path, fresh};
    xc_ckpt_loaded_t *li = calloc(1, sizeof *li); /* owned here */
    xc_state_view_t ex[N_EXTRAS];
    uint64_t next = 1;
    if (!li) return XC_ENOMEM;
    int n_ex = ckpt_extras(t, ex);
    t->mix_meta[0] = t->mix_meta[1] = -1; /* "not loaded" unless the checkpoint has them */
    xc_mixbuf_lane_table_clear(t->mix);
    t->norm_meta[0] = -1; /* stays -1 when the checkpoint has no normaliser views */
    int rc = xc_ckpt_resume(t->full, ex, n_ex, &o, li, &next, why, why_len);
    if (rc == XC_OK) rc = norm_resumed(t, li->step, why, why_len);
    if (rc == XC_OK) rc = rows_to_exact(t);
    if (rc == XC_OK) xc_examples_state_restored(t->ex);
    if (rc == XC_OK) {
        /* tokens an earlier run acked but had not trained: train them first (a buffer of
         * another capacity, or lanes of another mixture, are not restored) */
        char mwhy[256];
        long n = xc_mixbuf_restore(t->mix, t->mix_meta, mwhy, sizeof mwhy);
        if (n > 0) {
            xc_queue_note_restored(t->q, (uint64_t)n);
            xc_log(XC_LOG_INFO, "%ld buffered tokens restored from the checkpoint", n);
        } else if (mwhy[0]) {
            xc_log(XC_LOG_WARN, "the checkpoint's %lld buffered tokens are not restored: %s",
                   (long long)t->mix_meta[0], mwhy);
        }
        pthread_mutex_lock(&t->mu);
        for (int l = 0; l < t->lanes; l++) t->st.lane_buffered[l] = xc_mixbuf_buffered(t->mix, l);
        pthread_mutex_unlock(&t->mu);
    }
    if (rc == XC_OK) warn_config_changes(li->config_json, t->config_json);
    if ((rc == XC_OK || rc == XC_ENOTFOUND) && t->sh) {
        /* every rank takes its slice of the model (resumed, or the new one
         * initialised as one process would), whatever R wrote the checkpoint */
        int src = xc_shard_scatter(t->sh);
        if (src) {
            xc_why(why, why_len, "cannot hand the model to the other ranks: %s", xc_shard_error(t->sh));
            free(li);
            return src;
        }
        xc_log(XC_LOG_INFO, "model sliced over %d ranks", xc_shard_size(t->sh));
    }
    if (rc == XC_OK) {
        xc_ckpt_writer_continue(t->ckw, li->run_id, next, li->step, li->path, li->train_path);
        t->st.m = *xc_engine_metrics(t->full);
        xc_log(XC_LOG_INFO, "resumed from %s: step %ld, %llu tokens trained (run %s, written %s)", li->path, li->step,
               (unsigned long long)li->tokens, li->run_id, li->created);
    } else if (rc == XC_ENOTFOUND) {
        xc_ckpt_writer_continue(t->ckw, NULL, next, -1, NULL, NULL);
        xc_log(XC_LOG_INFO, "starting a new model (run %s): %s", xc_ckpt_writer_run_id(t->ckw), why);
        rc = XC_OK;
    }
    free(li);
    return rc;
}

void xc_trainer_set_checkpoint_policy(xc_trainer_t *t, int keep, long steps)
{
    xc_ckpt_writer_set_keep(t->ckw, keep);
    pthread_mutex_lock(&t->mu);
    t->ckpt_steps = steps;
    pthread_mutex_unlock(&t->mu);
}

uint64_t xc_trainer_request_snapshot(xc_trainer_t *t)
{
    pthread_mutex_lock(&t->mu);
    uint64_t gen = ++t->snap_req;
    pthread_mutex_unlock(&t->mu);
    xc_queue_kick(t->q);
    return gen;
}

int xc_trainer_budget_reached(xc_trainer_t *t)
{
    pthread_mutex_lock(&t->mu);
    int r = t->st.budget_reached;
    pthread_mutex_unlock(&t->mu);
    return r;
}

void xc_trainer_stop(xc_trainer_t *t)
{
    pthread_mutex_lock(&t->mu);
    t->stop = 1;
    pthread_mutex_unlock(&t->mu);
    xc_queue_kick(t->q);
}

void xc_trainer_status(xc_trainer_t *t, xc_trainer_status_t *out)
{
    pthread_mutex_lock(&t->mu);
    *out = t->st;
    pthread_mutex_unlock(&t->mu);
}

int xc_trainer_poll(xc_trainer_t *t, xc_ckpt_result_t *ck, uint64_t *snapshot_gen)
{
    pthread_mutex_lock(&t->mu);
    int ev = t->events;
    t->events = 0;
    if ((ev & XC_TR_EV_CKPT) && ck) *ck = t->ckpt;
    if (snapshot_gen) *snapshot_gen = t->snap_done;
    pthread_mutex_unlock(&t->mu);
    return ev;
}

/* The loop's side of the hand-off: O(1) under the mutex, so the loop never
 * waits for the trainer's work. The loop's previous snapshot becomes the
 * spare (freed if one is already there), keeping at most three alive. */
xc_snapshot_t *xc_trainer_snapshot_swap(xc_trainer_t *t, xc_snapshot_t *mine)
{
    xc_snapshot_t *drop = NULL;
    pthread_mutex_lock(&t->mu);
    xc_snapshot_t *next = t->snap_ready;
    if (next) {
        t->snap_ready = NULL;
        if (!t->snap_spare) t->snap_spare = mine;
        else drop = mine;
    }
    pthread_mutex_unlock(&t->mu);
    xc_snapshot_free(&drop);
    return next ? next : mine;
}

xc_examples_t *xc_trainer_examples(xc_trainer_t *t) { return t->ex; }
