/* Every rendering of the service's state (xc_svc_internal.h): the stats
 * event and the status reply (one function, xc_svc_render_stats), the
 * Prometheus text, per-latent records, and the other events. */
#include "xc_svc_internal.h"
#include "xc_history.h"
#include "xc_log.h"
#include "xc_metrics.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>

/* Events are best effort (PUB drops for slow subscribers); a failed send is
 * counted, never retried: the next stats event supersedes it. An event over
 * XC_CFG_EVENT_MAX is not sent (counted): the memory bound counts each
 * subscriber's queue at that size. */
void xc_svc_event_send(xc_svc_t *s, const char *topic, const xc_buf_t *body)
{
    if (!s->events || body->err) return;
    if (body->len + strlen(topic) > XC_CFG_EVENT_MAX) {
        s->cnt.zmq_errors++;
        return;
    }
    if (zmq_send(s->events, topic, strlen(topic), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(s->events, body->data, body->len, ZMQ_DONTWAIT) < 0) {
        s->cnt.zmq_errors++;
        return;
    }
    s->cnt.events_published++;
}

/* ------------------------------------------------------------- rendering -- */
static const char *state_name(xc_svc_t *s, const xc_trainer_status_t *ts)
{
    if (s->stopping) return "stopping";
    switch (ts->state) {
    case XC_TR_STARTING: return "starting";
    case XC_TR_PAUSED: return "paused";
    case XC_TR_RUNNING: return ts->paused ? "paused" : "running";
    default: return "stopping";
    }
}

/* One value of the stats event from xc_metrics_t by kind (a row of the schema). */
static void render_value(xc_mpw_t *w, int kind, const void *p)
{
    switch (kind) {
    case XC_SK_U64: xc_mpw_uint(w, *(const uint64_t *)p); break;
    case XC_SK_I64: xc_mpw_int(w, *(const long *)p); break;
    case XC_SK_F64: xc_mpw_double(w, *(const double *)p); break;
    case XC_SK_BOOL: xc_mpw_bool(w, *(const int *)p); break;
    case XC_SK_STR: xc_mpw_str(w, *(const char *const *)p); break;
    case XC_SK_F64X2:
        xc_mpw_array_begin(w);
        xc_mpw_double(w, ((const double *)p)[0]);
        xc_mpw_double(w, ((const double *)p)[1]);
        xc_mpw_array_end(w);
        break;
    default: xc_mpw_nil(w); break;
    }
}

/* The "classes" map: latents per class, then the chat-specific count. */
static void render_classes(xc_mpw_t *w, const xc_metrics_t *m)
{
    xc_mpw_map_begin(w);
    for (int i = 0; i < m->n_classes; i++) xc_mpw_kv_uint(w, m->classes[i].name, m->classes[i].value);
    xc_mpw_map_end(w);
}

/* The "scaling" map (XC_STAT_SCALING_FIELDS). */
static void render_scaling_status(xc_mpw_t *w, const xc_metrics_t *m)
{
    xc_mpw_map_begin(w);
#define XC_SVC_SCAL(member, kind, key) xc_mpw_str(w, key), render_value(w, XC_SK_##kind, &m->member);
    XC_STAT_SCALING_FIELDS(XC_SVC_SCAL)
#undef XC_SVC_SCAL
    xc_mpw_map_end(w);
}

/* The counters map: the refusals by reason, then every service counter. */
static void render_counters(xc_mpw_t *w, const xc_metrics_t *m)
{
    xc_mpw_map_begin(w);
    for (int i = 0; i < m->n_refused; i++) xc_mpw_kv_uint(w, m->refused[i].name, m->refused[i].value);
    for (int i = 0; i < m->n_counters; i++) xc_mpw_kv_uint(w, m->counters[i].name, m->counters[i].value);
    xc_mpw_map_end(w);
}

/* The "streams" map: one map per stream of the mixture (XC_STREAM_FIELDS). */
static void render_streams(xc_mpw_t *w, const xc_metrics_t *m)
{
    xc_mpw_map_begin(w);
    for (int i = 0; i < m->n_streams; i++) {
        const xc_metrics_stream_t *st = &m->streams[i];
        xc_mpw_str(w, st->stream);
        xc_mpw_map_begin(w);
#define XC_SVC_STREAM(member, kind, key, prom, ptype, help) xc_mpw_str(w, key), render_value(w, XC_SK_##kind, &st->member);
        XC_STREAM_FIELDS(XC_SVC_STREAM)
#undef XC_SVC_STREAM
        xc_mpw_map_end(w);
    }
    xc_mpw_map_end(w);
}

/* Per stream of the mixture: its share, the queue's lane counts, the
 * trainer's buffer lane and batch composition, the loop's held batches. */
static void fill_streams(xc_svc_t *s, xc_metrics_t *m, const xc_trainer_status_t *ts, const xc_queue_counts_t *qc)
{
    _Static_assert(XC_METRICS_MAX_STREAMS >= XC_MIX_MAX, "a metrics slot per stream of a mixture");
    for (int l = 0; l < s->mix.n && l < ts->lanes; l++) {
        xc_metrics_stream_t *st = &m->streams[m->n_streams++];
        st->stream = s->mix.name[l];
        st->share = s->mix.share[l];
        st->tokens_acked = qc->lane_acked[l];
        st->tokens_trained = ts->lane_trained[l];
        st->tokens_buffered = (uint64_t)ts->lane_buffered[l];
        st->tokens_queued = qc->lane_queued[l];
        st->tokens_held = s->lane_held_tokens[l];
        st->batches_held = s->lane_held_batches[l];
        st->holds = s->lane_holds[l];
        st->batch_tokens = ts->lane_batch_last[l];
        st->batch_min = ts->lane_batch_min[l];
        st->batch_max = ts->lane_batch_max[l];
        st->waiting = ts->mix_waiting == l;
    }
}

/* Everything the stats event, status and the Prometheus text show, read once
 * from its sources (trainer status, queue counts, the service's own counters
 * and clocks): the one place that knows where each statistic comes from. */
static void fill_stats(xc_svc_t *s, xc_metrics_t *m)
{
    xc_trainer_status_t ts;
    xc_queue_counts_t qc;
    xc_trainer_status(s->trainer, &ts);
    xc_queue_counts(s->queue, &qc);
    xc_metrics_init(m);
    m->name = s->cfg.name;
    m->model = xc_cfg_enum_name("model", s->cfg.model);
    m->d = s->cfg.d;
    m->dict_size = s->cfg.dict_size;
    m->k = s->cfg.k;
    m->batch_size = s->cfg.batch_size;
    m->state = state_name(s, &ts);
    m->paused = ts.paused;
    xc_metrics_set_engine(m, &ts.m); /* tokens: the model's, across resumes; tokens_trained: this process */
    m->tokens_acked = qc.tokens_acked;
    m->tokens_trained = qc.tokens_trained;
    m->tokens_buffered = qc.tokens_buffered;
    m->tokens_queued = qc.tokens_queued;
    m->tokens_failed = qc.tokens_failed;
    m->tokens_restored = qc.tokens_restored;
    m->batches_acked = qc.batches_acked;
    m->mix_tokens = s->cfg.mix_tokens;
    m->queue_depth = qc.depth;
    m->queue_capacity = qc.capacity;
    m->tokens_per_s = s->tokens_per_s;
    m->steps_per_s = s->steps_per_s;
    m->step_ms = ts.last_step_ms;
    /* a sharded job (xc_shard.h): ranks, each rank's step, rank 0's communication */
    m->ranks = ts.shard.ranks;
    m->n_rank_step = ts.shard.ranks > 1 ? ts.shard.ranks_shown : 1;
    for (int r = 0; r < m->n_rank_step && r < 64; r++) m->rank_step[r] = ts.shard.ranks > 1 ? ts.shard.step_ms[r] : ts.last_step_ms;
    m->rank_step_ms_max = ts.shard.ranks > 1 ? ts.shard.step_ms_max : ts.last_step_ms;
    m->comm_ms = ts.shard.comm_ms;
    m->comm_bytes = ts.shard.comm_bytes;
    m->comm_bytes_total = ts.shard.comm_bytes_total;
    m->uptime_s = xc_svc_mono_s() - s->t_start;
    m->budget_reached = ts.budget_reached;
    if (s->cfg.max_tokens > 0) { /* progress against the budget; the ETA at the smoothed rate */
        double left = (double)s->cfg.max_tokens - (double)ts.m.tokens;
        m->tokens_budget = (uint64_t)s->cfg.max_tokens;
        m->budget_fraction = (double)ts.m.tokens / (double)s->cfg.max_tokens;
        m->eta_s = ts.budget_reached || left <= 0 ? 0.0 : s->rate_avg > 0 ? left / s->rate_avg : NAN;
    }
    m->shm = ts.shm;
    /* the encoder product: what runs (auto resolved) and its kernel */
    m->encoder_precision = xc_prec_name(ts.m.precision);
    m->encoder_kernel = xc_engine_score_kernel(s->engine);
    m->encoder_fallbacks = (uint64_t)ts.m.score_fallbacks;
    m->encoder_fp32_steps = (uint64_t)ts.m.score_fp32_steps;
    /* activation normalisation: what the reported statistics' units are (README "Activation normalisation") */
    m->normalize = xc_cfg_enum_name("normalize", ts.norm_mode);
    m->normalize_state = ts.norm_state == 2 ? "ready" : ts.norm_state == 1 ? "collecting" : "off";
    m->normalize_tokens_seen = ts.norm_tokens;
    m->normalize_scale[0] = ts.norm_scale[0];
    m->normalize_scale[1] = ts.norm_scale[1];
    m->fve_units = "original";
    m->scaling_units = ts.scaling_units ? "original" : "normalised";
    m->tokens_stats_only = ts.tokens_stats_only;
    m->tokens_excluded_position = ts.tokens_excluded_position;
    m->tokens_excluded_outlier = ts.tokens_excluded_outlier;
    /* curve: tcp endpoints need an allow-listed key; insecure_tcp: one is reachable
     * beyond loopback without it (the operator accepted the risk) */
    m->curve = s->curve_secret[0] != 0;
    m->insecure_tcp = s->insecure_remote;
    m->scaling_running = ts.scaling_running;
    m->scaling_done = ts.scaling_done;
    m->scaling_target = ts.scaling_target;
    m->scaling_last_step = ts.scaling_last_step;
    m->scaling_last_tokens = ts.scaling_last_tokens;
    m->scaling_passes = ts.scaling_passes;
    m->scaling_cancelled = ts.scaling_cancelled;
    m->start_time_unix = s->t_start_unix;
    m->last_checkpoint_unix = s->last_ckpt_unix;
    m->last_checkpoint_step = s->last_ckpt_step;
    m->checkpoint_age_s = s->last_ckpt_unix > 0 ? xc_svc_unix_s() - s->last_ckpt_unix : m->uptime_s;
    xc_auth_counts_t ac;
    xc_auth_counts(s->auth, &ac); /* the auth module keeps them */
    s->cnt.auth_accepted = ac.accepted;
    s->cnt.auth_refused = ac.refused;
    s->cnt.connections_refused = ac.conn_refused;
    m->memory_bound = xc_cfg_memory_bound(&s->cfg, NULL);
    m->max_connections = s->cfg.max_connections;
    m->connections_ingest = ac.live[0]; /* watched in open order: ingest, control, events */
    m->connections_control = ac.live[1];
    m->connections_events = ac.live[2];
    for (int i = 0; i < XC_SVC_N_REFUSE && m->n_refused < XC_METRICS_MAX_COUNTERS; i++)
        m->refused[m->n_refused++] = (xc_metrics_counter_t){xc_errname(xc_svc_refuse_codes[i]), s->cnt.refused[i]};
#define XC_SVC_CTR_FILL(n, prom, help)                          \
    if (m->n_counters < XC_METRICS_MAX_COUNTERS)                \
        m->counters[m->n_counters++] = (xc_metrics_counter_t){#n, s->cnt.n};
    XC_COUNTER_FIELDS(XC_SVC_CTR_FILL)
#undef XC_SVC_CTR_FILL
    for (int c = 0; c < XC_CLASS_N; c++)
        m->classes[m->n_classes++] = (xc_metrics_counter_t){xc_class_name(c), ts.class_counts[c]};
    m->classes[m->n_classes++] =
        (xc_metrics_counter_t){XC_COUNT_CHAT_SPECIFIC_NAME, ts.class_counts[XC_COUNT_CHAT_SPECIFIC]};
    fill_streams(s, m, &ts, &qc);
}

/* The RANKS group: each rank's last step time (ms) as a list, rank order. */
static void render_ranks(xc_mpw_t *w, const xc_metrics_t *m)
{
    xc_mpw_array_begin(w);
    for (int r = 0; r < m->n_rank_step; r++) xc_mpw_double(w, m->rank_step[r]);
    xc_mpw_array_end(w);
}

/* The stats fields of PROTOCOL.md 3.1 into an open map, in the schema's order
 * (XC_STAT_FIELDS): scalars from m, the classes, scaling and counters maps
 * from their own tables. */
static void render_stats_of(xc_mpw_t *w, const xc_metrics_t *m)
{
#define XC_SVC_STAT(member, kind, key, prom, ptype, pdiv, shm, help) \
    if ((key)[0]) {                                                    \
        render_stat_##kind(w, m, key, member);                         \
    }
#define render_stat_U64(w, m, key, member) xc_mpw_str(w, key), render_value(w, XC_SK_U64, &(m)->member)
#define render_stat_I64(w, m, key, member) xc_mpw_str(w, key), render_value(w, XC_SK_I64, &(m)->member)
#define render_stat_F64(w, m, key, member) xc_mpw_str(w, key), render_value(w, XC_SK_F64, &(m)->member)
#define render_stat_F64X2(w, m, key, member) xc_mpw_str(w, key), render_value(w, XC_SK_F64X2, (m)->member)
#define render_stat_BOOL(w, m, key, member) xc_mpw_str(w, key), render_value(w, XC_SK_BOOL, &(m)->member)
#define render_stat_STR(w, m, key, member) xc_mpw_str(w, key), render_value(w, XC_SK_STR, &(m)->member)
#define render_stat_CLASSES(w, m, key, member) xc_mpw_str(w, key), render_classes(w, m)
#define render_stat_SCALING(w, m, key, member) xc_mpw_str(w, key), render_scaling_status(w, m)
#define render_stat_COUNTERS(w, m, key, member) xc_mpw_str(w, key), render_counters(w, m)
#define render_stat_STREAMS(w, m, key, member) xc_mpw_str(w, key), render_streams(w, m)
#define render_stat_RANKS(w, m, key, member) xc_mpw_str(w, key), render_ranks(w, m)
    XC_STAT_FIELDS(XC_SVC_STAT)
#undef XC_SVC_STAT
}

void xc_svc_render_stats(xc_svc_t *s, xc_mpw_t *w)
{
    xc_metrics_t m;
    fill_stats(s, &m);
    render_stats_of(w, &m);
}

/* The Prometheus text (daemon/metrics.c renders it) from the same statistics
 * as the stats event; metrics_file and the `metrics` op both come from here. */
int xc_svc_metrics_text(xc_svc_t *s, xc_buf_t *out)
{
    xc_metrics_t m;
    fill_stats(s, &m);
    return xc_metrics_render(&m, out);
}

/* Rewrites metrics_file (when set). A failure is logged once until a write
 * works again, not every interval. */
void xc_svc_write_metrics(xc_svc_t *s)
{
    char why[2 * XC_CFG_STR_MAX + 160];
    xc_buf_t b;
    if (!s->cfg.metrics_file[0]) return;
    xc_buf_init(&b);
    int rc = xc_svc_metrics_text(s, &b);
    if (rc) xc_why(why, sizeof why, "out of memory rendering the metrics");
    else rc = xc_metrics_write_file(s->cfg.metrics_file, b.data, b.len, why, sizeof why);
    if (rc && !s->metrics_failing)
        xc_log(XC_LOG_WARN, "metrics_file not written (said once until it works again): %s", why);
    else if (!rc && s->metrics_failing)
        xc_log(XC_LOG_INFO, "metrics_file %s written again", s->cfg.metrics_file);
    s->metrics_failing = rc != 0;
    xc_buf_free(&b);
}

void xc_svc_render_config(xc_svc_t *s, xc_mpw_t *w)
{
    xc_mpw_map_begin(w);
    xc_cfg_to_mp(&s->cfg, NULL, w);
    xc_mpw_map_end(w);
}

static void kv_nullable(xc_mpw_t *w, const char *k, double v)
{
    /* undefined values (NaN) travel as nil, never as a number */
    xc_mpw_str(w, k);
    if (isnan(v)) xc_mpw_nil(w);
    else xc_mpw_double(w, v);
}

/* A Latent Scaling map: the running columns of the schema (src RUN), keyed by
 * their names, from one record (running or exact). f32 values that are
 * undefined (NaN) travel as nil; active is a count. */
static void render_scaling(xc_mpw_t *w, const xc_scaling_stats_t *sc)
{
    xc_mpw_map_begin(w);
#define XC_SCAL_KV_F32(key, v) kv_nullable(w, key, v)
#define XC_SCAL_KV_F64(key, v) xc_mpw_kv_double(w, key, v)
#define XC_SCAL_KV_I64(key, v)
#define XC_SCAL_KV_U8(key, v) xc_mpw_kv_bool(w, key, (v) != 0)
#define XC_SCAL_SRC_RUN(name, dtype, field) XC_SCAL_KV_##dtype(#name, sc->field);
#define XC_SCAL_SRC_LAT(name, dtype, field)
#define XC_SCAL_SRC_EXACT(name, dtype, field)
#define XC_SCAL_SRC_CLS(name, dtype, field)
#define XC_SCAL_SRC_FLAGS(name, dtype, field)
#define XC_SCAL_SRC_J(name, dtype, field)
#define XC_SCAL_ROW(name, dtype, shm, dflt, src, field) XC_SCAL_SRC_##src(name, dtype, field)
    XC_LATENT_COLUMNS(XC_SCAL_ROW)
#undef XC_SCAL_ROW
    xc_mpw_map_end(w);
}

/* Per-latent fields (PROTOCOL.md 3.3), into an open map. */
void xc_svc_render_latent(xc_mpw_t *w, const xc_snapshot_t *L, long j)
{
    const xc_latent_stats_t *l = &L->st[j];
    xc_mpw_kv_double(w, "norm_base", l->norm_base);
    xc_mpw_kv_double(w, "norm_chat", l->norm_chat);
    xc_mpw_kv_double(w, "delta_norm", l->delta_norm);
    xc_mpw_kv_double(w, "cosine", l->cosine);
    xc_mpw_kv_double(w, "freq", l->freq);
    xc_mpw_kv_double(w, "mean_act", l->mean_act);
    xc_mpw_kv_double(w, "max_act", l->max_act);
    xc_mpw_kv_uint(w, "fired", l->fired);
    xc_mpw_kv_uint(w, "tokens_since_fired", l->tokens_since_fired);
    xc_mpw_kv_int(w, "last_step_fired", l->last_step_fired);
    xc_mpw_kv_bool(w, "dead", l->dead);
    xc_mpw_kv_str(w, "class", xc_class_name(L->cls[j]));
    xc_mpw_kv_bool(w, "chat_specific", (L->flags[j] & XC_FLAG_CHAT_SPECIFIC) != 0);
    xc_mpw_str(w, "scaling");
    render_scaling(w, &L->running[j]);
    xc_mpw_str(w, "scaling_exact");
    if (L->exact) render_scaling(w, &L->exact[j]);
    else xc_mpw_nil(w);
}

/* "scaling" event: an exact Latent Scaling pass finished. */
void xc_svc_publish_scaling(xc_svc_t *s)
{
    xc_trainer_status_t ts;
    xc_buf_t b;
    xc_mpw_t w;
    xc_trainer_status(s->trainer, &ts);
    xc_buf_init(&b);
    xc_mpw_init(&w, &b);
    xc_proto_event_begin(&w, "scaling", s->cfg.name, xc_svc_unix_s());
    xc_mpw_kv_int(&w, "step", ts.scaling_last_step);
    xc_mpw_kv_uint(&w, "tokens", ts.scaling_last_tokens);
    xc_mpw_kv_uint(&w, XC_COUNT_CHAT_SPECIFIC_NAME, ts.class_counts[XC_COUNT_CHAT_SPECIFIC]);
    xc_mpw_kv_uint(&w, "chat_only", ts.class_counts[XC_CLASS_CHAT_ONLY]);
    xc_mpw_map_end(&w);
    xc_svc_event_send(s, "scaling", &b);
    xc_buf_free(&b);
}

/* The stats event just rendered (body, MessagePack) as one JSON line of the
 * history (xc_history.h): the same renderer as every JSON view, so a line's
 * fields are the event's (NaN as null). A failure is logged once until an
 * append works again; training never waits on it. */
static void append_history(xc_svc_t *s, const xc_buf_t *body)
{
    char why[XC_CFG_STR_MAX + 200];
    xc_mp_doc_t *doc = NULL;
    xc_buf_t j;
    int rc;
    if (s->cfg.history_max_bytes <= 0) return;
    xc_buf_init(&j);
    rc = xc_mp_doc_parse(body->data, body->len, &doc, why, sizeof why);
    if (rc == 0 && (rc = xc_mp_to_json(xc_mp_root(doc), &j, 0)) != 0)
        xc_why(why, sizeof why, "out of memory rendering the history line");
    if (rc == 0) rc = xc_history_append(s->cfg.state_dir, (const char *)j.data, j.len, s->cfg.history_max_bytes,
                                        why, sizeof why);
    if (rc && !s->history_failing)
        xc_log(XC_LOG_WARN, "history not written (said once until it works again): %s", why);
    else if (!rc && s->history_failing)
        xc_log(XC_LOG_INFO, "history in %s written again", s->cfg.state_dir);
    s->history_failing = rc != 0;
    xc_mp_doc_free(&doc);
    xc_buf_free(&j);
}

/* The stats event: the rates over the interval since the last one, the
 * stats fields, and an alert when the dead fraction jumped; the systemd
 * STATUS line follows the same numbers. */
void xc_svc_publish_stats(xc_svc_t *s)
{
    xc_trainer_status_t ts;
    xc_queue_counts_t qc;
    double now = xc_svc_mono_s();
    xc_trainer_status(s->trainer, &ts);
    xc_queue_counts(s->queue, &qc);
    double dt = now - s->rate_t;
    if (dt > 0) {
        s->tokens_per_s = (double)(qc.tokens_trained - s->rate_tokens) / dt;
        s->steps_per_s = (double)(ts.m.step - s->rate_step) / dt;
    }
    if (dt > 0) { /* the ETA's rate: an exponential average over about a minute, idle intervals included */
        double a = dt / 60.0 < 1.0 ? dt / 60.0 : 1.0;
        s->rate_avg = s->rate_avg > 0 ? (1.0 - a) * s->rate_avg + a * s->tokens_per_s : s->tokens_per_s;
    }
    s->rate_t = now;
    s->rate_tokens = qc.tokens_trained;
    s->rate_step = ts.m.step;

    xc_mpw_t w;
    xc_buf_reset(&s->out);
    xc_mpw_init(&w, &s->out);
    xc_proto_event_begin(&w, XC_EVENT_STATS, s->cfg.name, xc_svc_unix_s());
    xc_svc_render_stats(s, &w);
    xc_mpw_map_end(&w);
    if (xc_mpw_finish(&w) == 0) {
        xc_svc_event_send(s, XC_EVENT_STATS, &s->out);
        append_history(s, &s->out);
    }

    double dead = ts.m.dead_fraction;
    if (s->have_dead && dead - s->last_dead >= s->cfg.dead_alert_jump && s->cfg.dead_alert_jump > 0) {
        char msg[160];
        snprintf(msg, sizeof msg, "dead fraction rose from %.4f to %.4f at step %ld", s->last_dead, dead,
                 ts.m.step);
        xc_log(XC_LOG_WARN, "%s", msg);
        xc_buf_reset(&s->out);
        xc_mpw_init(&w, &s->out);
        xc_proto_event_begin(&w, XC_EVENT_ALERT, s->cfg.name, xc_svc_unix_s());
        xc_mpw_kv_str(&w, "kind", "dead_fraction");
        xc_mpw_kv_double(&w, "from", s->last_dead);
        xc_mpw_kv_double(&w, "to", dead);
        xc_mpw_kv_int(&w, "step", ts.m.step);
        xc_mpw_kv_str(&w, "message", msg);
        xc_mpw_map_end(&w);
        if (xc_mpw_finish(&w) == 0) xc_svc_event_send(s, XC_EVENT_ALERT, &s->out);
    }
    s->last_dead = dead;
    s->have_dead = 1;
    sd_notifyf(0, "STATUS=step %ld, %.0f tokens/s, queue %ld/%ld", ts.m.step, s->tokens_per_s, qc.depth,
               qc.capacity);
}

/* A checkpoint result as an event: "checkpoint" when written (and the time
 * and step remembered for the metrics), an "alert" when it failed. */
void xc_svc_publish_ckpt(xc_svc_t *s, const xc_ckpt_result_t *ck)
{
    xc_mpw_t w;
    xc_buf_reset(&s->out);
    xc_mpw_init(&w, &s->out);
    if (ck->rc == 0) {
        s->ckpt_failing = 0;
        s->cnt.checkpoints_written++;
        s->last_ckpt_unix = xc_svc_unix_s();
        s->last_ckpt_step = ck->step;
        xc_proto_event_begin(&w, XC_EVENT_CHECKPOINT, s->cfg.name, xc_svc_unix_s());
        xc_mpw_kv_str(&w, "path", ck->path);
        xc_mpw_kv_int(&w, "step", ck->step);
        xc_mpw_kv_uint(&w, "bytes", ck->bytes);
        xc_mpw_kv_str(&w, "train_path", ck->train_path);
        xc_mpw_kv_str(&w, "reason", ck->reason);
        xc_mpw_map_end(&w);
        if (xc_mpw_finish(&w) == 0) xc_svc_event_send(s, XC_EVENT_CHECKPOINT, &s->out);
    } else {
        s->cnt.checkpoints_failed++;
        if (s->ckpt_failing) return; /* alerted when the failures began; status counts them */
        s->ckpt_failing = 1;
        xc_proto_event_begin(&w, XC_EVENT_ALERT, s->cfg.name, xc_svc_unix_s());
        xc_mpw_kv_str(&w, "kind", "checkpoint_failed");
        xc_mpw_kv_str(&w, "code", xc_errname(ck->rc));
        xc_mpw_kv_str(&w, "message", ck->why);
        xc_mpw_map_end(&w);
        if (xc_mpw_finish(&w) == 0) xc_svc_event_send(s, XC_EVENT_ALERT, &s->out);
    }
}

/* The configuration as compact JSON (stored in checkpoints): rendered from
 * the same MessagePack map as the config op, by the one JSON renderer. */
char *xc_svc_config_json(const xc_cfg_t *c)
{
    xc_buf_t b, j;
    xc_mpw_t w;
    xc_mp_doc_t *doc = NULL;
    char why[64], *out = NULL;
    xc_buf_init(&b);
    xc_buf_init(&j);
    xc_mpw_init(&w, &b);
    xc_mpw_map_begin(&w);
    xc_cfg_to_mp(c, NULL, &w);
    xc_mpw_map_end(&w);
    if (xc_mpw_finish(&w) == 0 && xc_mp_doc_parse(b.data, b.len, &doc, why, sizeof why) == 0 &&
        xc_mp_to_json(xc_mp_root(doc), &j, 0) == 0 && xc_buf_append(&j, "", 1) == 0) {
        size_t len;
        out = (char *)xc_buf_take(&j, &len); /* owned by the caller */
    }
    xc_mp_doc_free(&doc);
    xc_buf_free(&b);
    xc_buf_free(&j);
    return out;
}
