/* Every rendering of the service's state (xc_svc_internal.h): the stats
 * event and the status reply (one function, xc_svc_render_stats), the
 * Prometheus text, per-latent records, and the other events. */
#include "xc_svc_internal.h"
#include "xc_log.h"
#include "xc_metrics.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>

/* Events are best effort (PUB drops for slow subscribers); a failed send is
 * counted, never retried: the next stats event supersedes it. */
void xc_svc_event_send(xc_svc_t *s, const char *topic, const xc_buf_t *body)
{
    if (!s->events || body->err) return;
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

/* The counters map: every counter, rendered here and nowhere else. */
static void render_counters(xc_svc_t *s, xc_mpw_t *w)
{
    xc_mpw_map_begin(w);
    for (int i = 0; i < XC_SVC_N_REFUSE; i++) xc_mpw_kv_uint(w, xc_errname(xc_svc_refuse_codes[i]), s->cnt.refused[i]);
#define XC_SVC_CTR_RENDER(n) xc_mpw_kv_uint(w, #n, s->cnt.n);
    XC_SVC_COUNTERS(XC_SVC_CTR_RENDER)
#undef XC_SVC_CTR_RENDER
    xc_auth_counts_t ac;
    xc_auth_counts(s->auth, &ac); /* zeros without CURVE */
    xc_mpw_kv_uint(w, "auth_accepted", ac.accepted);
    xc_mpw_kv_uint(w, "auth_refused", ac.refused);
    xc_mpw_map_end(w);
}

/* The stats fields of PROTOCOL.md 3.1 (into an open map). */
void xc_svc_render_stats(xc_svc_t *s, xc_mpw_t *w)
{
    xc_trainer_status_t ts;
    xc_queue_counts_t qc;
    xc_trainer_status(s->trainer, &ts);
    xc_queue_counts(s->queue, &qc);
    const xc_engine_metrics_t *m = &ts.m;
    xc_mpw_kv_str(w, "state", state_name(s, &ts));
    xc_mpw_kv_bool(w, "paused", ts.paused);
    xc_mpw_kv_int(w, "step", m->step);
    xc_mpw_kv_uint(w, "tokens", m->tokens); /* the model's, across resumes; tokens_trained: this process */
    xc_mpw_kv_uint(w, "tokens_acked", qc.tokens_acked);
    xc_mpw_kv_uint(w, "tokens_trained", qc.tokens_trained);
    xc_mpw_kv_uint(w, "tokens_buffered", qc.tokens_buffered);
    xc_mpw_kv_uint(w, "tokens_queued", qc.tokens_queued);
    xc_mpw_kv_uint(w, "tokens_failed", qc.tokens_failed);
    xc_mpw_kv_uint(w, "tokens_restored", qc.tokens_restored);
    xc_mpw_kv_uint(w, "batches_acked", qc.batches_acked);
    xc_mpw_kv_int(w, "mix_tokens", s->cfg.mix_tokens);
    xc_mpw_kv_int(w, "queue_depth", qc.depth);
    xc_mpw_kv_int(w, "queue_size", qc.capacity);
    xc_mpw_kv_double(w, "loss", m->loss);
    xc_mpw_kv_double(w, "recon_l2", m->recon_l2);
    xc_mpw_kv_double(w, "recon_mse", m->recon_mse);
    xc_mpw_kv_double(w, "aux", m->aux);
    xc_mpw_kv_double(w, "l1", m->l1);
    xc_mpw_str(w, "fve");
    xc_mpw_array_begin(w);
    xc_mpw_double(w, m->fve[0]);
    xc_mpw_double(w, m->fve[1]);
    xc_mpw_array_end(w);
    xc_mpw_kv_double(w, "l0", m->l0);
    xc_mpw_kv_double(w, "dead_fraction", m->dead_fraction);
    xc_mpw_kv_double(w, "theta", m->theta);
    xc_mpw_kv_double(w, "grad_norm", m->grad_norm);
    xc_mpw_kv_double(w, "lr", m->lr);
    xc_mpw_kv_double(w, "tokens_per_s", s->tokens_per_s);
    xc_mpw_kv_double(w, "steps_per_s", s->steps_per_s);
    xc_mpw_kv_double(w, "step_ms", ts.last_step_ms);
    xc_mpw_kv_double(w, "uptime_s", xc_svc_mono_s() - s->t_start);
    xc_mpw_str(w, "classes");
    xc_mpw_map_begin(w);
    for (int c = 0; c < XC_CLASS_N; c++) xc_mpw_kv_uint(w, xc_class_name(c), ts.class_counts[c]);
    xc_mpw_kv_uint(w, "chat_specific", ts.class_counts[5]);
    xc_mpw_map_end(w);
    xc_mpw_str(w, "scaling");
    xc_mpw_map_begin(w);
    xc_mpw_kv_bool(w, "running", ts.scaling_running);
    xc_mpw_kv_uint(w, "tokens_done", ts.scaling_done);
    xc_mpw_kv_uint(w, "tokens_target", ts.scaling_target);
    xc_mpw_kv_int(w, "last_step", ts.scaling_last_step);
    xc_mpw_kv_uint(w, "last_tokens", ts.scaling_last_tokens);
    xc_mpw_kv_uint(w, "passes", ts.scaling_passes);
    xc_mpw_map_end(w);
    xc_mpw_kv_bool(w, "shm", ts.shm);
    /* curve: tcp endpoints need an allow-listed key; insecure_tcp: one is reachable
     * beyond loopback without it (the operator accepted the risk) */
    xc_mpw_kv_bool(w, "curve", s->auth != NULL);
    xc_mpw_kv_bool(w, "insecure_tcp", s->insecure_remote);
    xc_mpw_str(w, "counters");
    render_counters(s, w);
}

/* The Prometheus text (daemon/metrics.c renders it) from the same sources as
 * render_stats; metrics_file and the `metrics` op both come from here. */
int xc_svc_metrics_text(xc_svc_t *s, xc_buf_t *out)
{
    xc_trainer_status_t ts;
    xc_queue_counts_t qc;
    xc_metrics_t m;
    xc_trainer_status(s->trainer, &ts);
    xc_queue_counts(s->queue, &qc);
    xc_metrics_init(&m);
    m.name = s->cfg.name;
    m.model = xc_cfg_enum_name("model", s->cfg.model);
    m.state = state_name(s, &ts);
    m.d = s->cfg.d;
    m.dict_size = s->cfg.dict_size;
    m.k = s->cfg.k;
    m.batch_size = s->cfg.batch_size;
    m.step = ts.m.step;
    m.tokens_trained = qc.tokens_trained;
    m.tokens_acked = qc.tokens_acked;
    m.tokens_buffered = qc.tokens_buffered;
    m.tokens_queued = qc.tokens_queued;
    m.tokens_failed = qc.tokens_failed;
    m.batches_acked = qc.batches_acked;
    m.queue_depth = qc.depth;
    m.queue_capacity = qc.capacity;
    m.tokens_per_s = s->tokens_per_s;
    m.steps_per_s = s->steps_per_s;
    m.step_seconds = ts.last_step_ms / 1000.0;
    m.loss = ts.m.loss;
    m.recon_l2 = ts.m.recon_l2;
    m.recon_mse = ts.m.recon_mse;
    m.aux = ts.m.aux;
    m.l1 = ts.m.l1;
    m.fve[0] = ts.m.fve[0];
    m.fve[1] = ts.m.fve[1];
    m.l0 = ts.m.l0;
    m.dead_fraction = ts.m.dead_fraction;
    m.theta = ts.m.theta;
    m.grad_norm = ts.m.grad_norm;
    m.lr = ts.m.lr;
    m.uptime_s = xc_svc_mono_s() - s->t_start;
    m.start_time_unix = s->t_start_unix;
    m.last_checkpoint_unix = s->last_ckpt_unix;
    m.last_checkpoint_step = s->last_ckpt_step;
    m.checkpoint_age_s = s->last_ckpt_unix > 0 ? xc_svc_unix_s() - s->last_ckpt_unix : m.uptime_s;
    for (int i = 0; i < XC_SVC_N_REFUSE && m.n_refused < XC_METRICS_MAX_COUNTERS; i++)
        m.refused[m.n_refused++] = (xc_metrics_counter_t){xc_errname(xc_svc_refuse_codes[i]), s->cnt.refused[i]};
    /* every counter but the sum of the refusals (xcoderd_batches_refused_total has them by reason) */
#define XC_SVC_CTR_METRIC(n)                                                                     \
    if (strcmp(#n, "batches_refused") != 0 && m.n_counters < XC_METRICS_MAX_COUNTERS)            \
        m.counters[m.n_counters++] = (xc_metrics_counter_t){#n, s->cnt.n};
    XC_SVC_COUNTERS(XC_SVC_CTR_METRIC)
#undef XC_SVC_CTR_METRIC
    for (int c = 0; c < XC_CLASS_N; c++)
        m.classes[m.n_classes++] = (xc_metrics_counter_t){xc_class_name(c), ts.class_counts[c]};
    m.classes[m.n_classes++] = (xc_metrics_counter_t){"chat_specific", ts.class_counts[5]};
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

static void render_scaling(xc_mpw_t *w, const xc_scaling_stats_t *sc)
{
    xc_mpw_map_begin(w);
    kv_nullable(w, "beta_err_base", sc->beta_err[0]);
    kv_nullable(w, "beta_err_chat", sc->beta_err[1]);
    kv_nullable(w, "beta_rec_base", sc->beta_rec[0]);
    kv_nullable(w, "beta_rec_chat", sc->beta_rec[1]);
    kv_nullable(w, "nu_err", sc->nu_err);
    kv_nullable(w, "nu_rec", sc->nu_rec);
    xc_mpw_kv_double(w, "active", sc->active);
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

#define LAT_FIELD(nm, expr) \
    static double f_##nm(const xc_snapshot_t *L, long j) { return (double)(expr); }
LAT_FIELD(norm_base, L->st[j].norm_base)
LAT_FIELD(norm_chat, L->st[j].norm_chat)
LAT_FIELD(delta_norm, L->st[j].delta_norm)
LAT_FIELD(cosine, L->st[j].cosine)
LAT_FIELD(freq, L->st[j].freq)
LAT_FIELD(mean_act, L->st[j].mean_act)
LAT_FIELD(max_act, L->st[j].max_act)
LAT_FIELD(fired, L->st[j].fired)
LAT_FIELD(since, L->st[j].tokens_since_fired)
LAT_FIELD(last, L->st[j].last_step_fired)
LAT_FIELD(nu_err, L->running[j].nu_err)
LAT_FIELD(nu_rec, L->running[j].nu_rec)
LAT_FIELD(beta_err_base, L->running[j].beta_err[0])
LAT_FIELD(beta_err_chat, L->running[j].beta_err[1])
LAT_FIELD(beta_rec_base, L->running[j].beta_rec[0])
LAT_FIELD(beta_rec_chat, L->running[j].beta_rec[1])
LAT_FIELD(exact_nu_err, L->exact ? L->exact[j].nu_err : NAN)
LAT_FIELD(exact_nu_rec, L->exact ? L->exact[j].nu_rec : NAN)
#undef LAT_FIELD

static const struct {
    const char *name;
    xc_svc_field_fn fn;
} g_fields[] = {{"norm_base", f_norm_base}, {"norm_chat", f_norm_chat},
                {"delta_norm", f_delta_norm}, {"cosine", f_cosine},
                {"freq", f_freq},           {"mean_act", f_mean_act},
                {"max_act", f_max_act},     {"fired", f_fired},
                {"tokens_since_fired", f_since}, {"last_step_fired", f_last},
                {"nu_err", f_nu_err},       {"nu_rec", f_nu_rec},
                {"beta_err_base", f_beta_err_base}, {"beta_err_chat", f_beta_err_chat},
                {"beta_rec_base", f_beta_rec_base}, {"beta_rec_chat", f_beta_rec_chat},
                {"exact_nu_err", f_exact_nu_err}, {"exact_nu_rec", f_exact_nu_rec}};

xc_svc_field_fn xc_svc_latent_field(const char *s, size_t len)
{
    for (size_t i = 0; i < sizeof g_fields / sizeof g_fields[0]; i++)
        if (strlen(g_fields[i].name) == len && memcmp(g_fields[i].name, s, len) == 0)
            return g_fields[i].fn;
    return NULL;
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
    xc_mpw_kv_uint(&w, "chat_specific", ts.class_counts[5]);
    xc_mpw_kv_uint(&w, "chat_only", ts.class_counts[XC_CLASS_CHAT_ONLY]);
    xc_mpw_map_end(&w);
    xc_svc_event_send(s, "scaling", &b);
    xc_buf_free(&b);
}

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
    s->rate_t = now;
    s->rate_tokens = qc.tokens_trained;
    s->rate_step = ts.m.step;

    xc_mpw_t w;
    xc_buf_reset(&s->out);
    xc_mpw_init(&w, &s->out);
    xc_proto_event_begin(&w, XC_EVENT_STATS, s->cfg.name, xc_svc_unix_s());
    xc_svc_render_stats(s, &w);
    xc_mpw_map_end(&w);
    if (xc_mpw_finish(&w) == 0) xc_svc_event_send(s, XC_EVENT_STATS, &s->out);

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

void xc_svc_publish_ckpt(xc_svc_t *s, const xc_ckpt_result_t *ck)
{
    xc_mpw_t w;
    xc_buf_reset(&s->out);
    xc_mpw_init(&w, &s->out);
    if (ck->rc == 0) {
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
        xc_proto_event_begin(&w, XC_EVENT_ALERT, s->cfg.name, xc_svc_unix_s());
        xc_mpw_kv_str(&w, "kind", "checkpoint_failed");
        xc_mpw_kv_str(&w, "code", xc_errname(ck->rc));
        xc_mpw_kv_str(&w, "message", ck->why);
        xc_mpw_map_end(&w);
        if (xc_mpw_finish(&w) == 0) xc_svc_event_send(s, XC_EVENT_ALERT, &s->out);
    }
}

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
