/* The service loop (see xc_service.h and proto/PROTOCOL.md).
 *
 * ZMQ_FD is edge-triggered: a readable wake-up only says "something changed".
 * So the loop drains a socket while ZMQ_EVENTS reports POLLIN, after every
 * poll wake-up, after every send (sends also consume the edge), after every
 * trainer notification, and from a 100 ms timer as a safety net. A drain
 * handles at most DRAIN_BUDGET messages per socket and then yields through a
 * uv_idle handle, so one busy producer cannot starve the control socket.
 *
 * Backpressure: before reading an ingest message the loop checks that the
 * queue has a free slot. If not, it stops reading (messages wait in ZeroMQ's
 * bounded pipes, producers wait on their window) until the trainer frees a
 * slot and wakes the loop through uv_async_send. */
#include "xc_service.h"
#include "xc_ckpt.h"
#include "xc_log.h"
#include "xc_metrics.h"
#include "xc_proto.h"
#include "xc_queue.h"
#include "xc_remote.h"
#include "xc_trainer.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>
#include <zmq.h>

#define MAX_FRAMES 8        /* identity + delimiter + header + payload + tokens + pos + spare */
#define DRAIN_BUDGET 64     /* messages per socket per drain */
#define LOG_BUDGET 10       /* refusal log lines per class per second */
#define TOP_MAX 100000      /* most latents in one top reply */
#define PENDING_MAX 1024    /* deferred control requests (checkpoint, latent, top) */
#define CONTROL_FRAME_MAX (1 << 20) /* ZMQ_MAXMSGSIZE of the control socket */
#define CONTROL_SNDHWM 64   /* replies queued per client (fetch replies are up to 1 MiB) */

/* Refusal classes, in the order of PROTOCOL.md; counters are indexed by this. */
static const int g_refuse_codes[] = {XC_ESHUTDOWN, XC_ETOOBIG, XC_EPROTO,  XC_EVERSION, XC_EDTYPE,
                                     XC_ESHAPE,    XC_ELENGTH, XC_ENONFINITE, XC_ENOMEM};
#define N_REFUSE ((int)(sizeof g_refuse_codes / sizeof g_refuse_codes[0]))

/* Every other counter: one X-macro renders them all in one place. */
#define XC_SVC_COUNTERS(X)                                                      \
    X(batches_refused)                                                          \
    X(control_requests)                                                         \
    X(control_errors)                                                           \
    X(checkpoints_written)                                                      \
    X(checkpoints_failed)                                                       \
    X(events_published)                                                         \
    X(ingest_blocked)   /* times the queue was full and reading stopped */     \
    X(zmq_errors)

typedef struct {
    uint64_t refused[N_REFUSE];
#define XC_SVC_CTR_FIELD(n) uint64_t n;
    XC_SVC_COUNTERS(XC_SVC_CTR_FIELD)
#undef XC_SVC_CTR_FIELD
} svc_counters_t;

/* Routing envelope of a ROUTER message: identity, and a REQ delimiter or not. */
typedef struct {
    uint8_t id[256];
    size_t id_len;
    int delim;
} envelope_t;

/* A control request answered later (checkpoint, latent, top). */
typedef struct pending {
    struct pending *next;
    xc_op_t op;
    uint64_t gen;       /* trainer generation that answers it */
    envelope_t env;
    uint8_t *req;       /* raw request frame; owned */
    size_t req_len;
} pending_t;

typedef struct {
    zmq_msg_t m[MAX_FRAMES];
    int n;              /* frames stored */
    int extra;          /* frames beyond MAX_FRAMES (dropped) */
} mmsg_t;

struct xc_svc {
    xc_cfg_t cfg;
    int argc;
    char **argv;        /* borrowed, for SIGHUP */
    uv_loop_t loop;
    uv_poll_t ingest_poll, control_poll;
    uv_timer_t stats_timer, ckpt_timer, tick_timer;
    uv_timer_t metrics_timer;  /* rewrites metrics_file */
    uv_timer_t watchdog_timer; /* WATCHDOG=1 to systemd, when it asks (WATCHDOG_USEC) */
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_async_t async;
    uv_idle_t idle;
    int handles_open;
    void *zctx, *ingest, *control, *events;
    int lock_fd;
    int bound;          /* all three sockets bound (their ipc files are ours) */
    xc_engine_t *engine;
    xc_queue_t *queue;
    xc_trainer_t *trainer;
    int ingest_blocked;
    int stopping;
    int closing;
    int result;         /* of xc_svc_run */
    svc_counters_t cnt;
    double t_start;
    double t_start_unix;
    double last_ckpt_unix;  /* 0 = no checkpoint written yet */
    long last_ckpt_step;    /* -1 = none */
    int metrics_failing;    /* the last metrics_file write failed (logged once) */
    /* rates over the last stats interval */
    double rate_t;
    uint64_t rate_tokens;
    long rate_step;
    double tokens_per_s, steps_per_s;
    double last_dead;
    int have_dead;
    /* alert aggregation per refusal class */
    uint64_t alert_count[N_REFUSE];
    char alert_producer[N_REFUSE][XC_PROTO_PRODUCER_MAX + 1];
    char alert_reason[N_REFUSE][XC_PROTO_REASON_MAX];
    double alert_last[N_REFUSE];
    int log_budget[N_REFUSE];
    uint64_t log_suppressed[N_REFUSE];
    pending_t *pending;
    int n_pending;
    xc_buf_t out;       /* scratch for replies */
    xc_remote_t *remote; /* checkpoints, fetch, table (remote.c) */
};

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double unix_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int refuse_index(int code)
{
    for (int i = 0; i < N_REFUSE; i++)
        if (g_refuse_codes[i] == code) return i;
    return 2; /* XC_EPROTO */
}

static void drain_all(xc_svc_t *s);

/* ------------------------------------------------------------ messages -- */
static void mmsg_close(mmsg_t *mm)
{
    for (int i = 0; i < mm->n; i++) zmq_msg_close(&mm->m[i]);
    mm->n = 0;
    mm->extra = 0;
}

/* Receives one whole multipart message without blocking. 0, XC_EAGAIN (none
 * waiting) or XC_EIO. */
static int mmsg_recv(void *sock, mmsg_t *mm)
{
    int more = 1;
    mm->n = 0;
    mm->extra = 0;
    while (more) {
        zmq_msg_t tmp, *m = mm->n < MAX_FRAMES ? &mm->m[mm->n] : &tmp;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, sock, mm->n == 0 && mm->extra == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            int e = errno;
            zmq_msg_close(m);
            mmsg_close(mm);
            return e == EAGAIN ? XC_EAGAIN : XC_EIO;
        }
        more = zmq_msg_more(m);
        if (m == &tmp) {
            zmq_msg_close(m);
            mm->extra++;
        } else {
            mm->n++;
        }
    }
    return XC_OK;
}

/* Splits off the envelope; returns the index of the first body frame. */
static int envelope_split(const mmsg_t *mm, envelope_t *env)
{
    memset(env, 0, sizeof *env);
    size_t l = zmq_msg_size((zmq_msg_t *)&mm->m[0]);
    env->id_len = l > sizeof env->id ? sizeof env->id : l;
    memcpy(env->id, zmq_msg_data((zmq_msg_t *)&mm->m[0]), env->id_len);
    if (mm->n >= 2 && zmq_msg_size((zmq_msg_t *)&mm->m[1]) == 0) {
        env->delim = 1;
        return 2;
    }
    return 1;
}

/* Sends [envelope][body] on a ROUTER socket, then drains (the send consumed
 * the edge of ZMQ_FD). */
static void send_reply(xc_svc_t *s, void *sock, const envelope_t *env, const void *body, size_t len)
{
    int rc = zmq_send(sock, env->id, env->id_len, ZMQ_SNDMORE | ZMQ_DONTWAIT);
    if (rc >= 0 && env->delim) rc = zmq_send(sock, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT);
    if (rc >= 0) rc = zmq_send(sock, body, len, ZMQ_DONTWAIT);
    if (rc < 0) {
        s->cnt.zmq_errors++;
        xc_log(XC_LOG_WARN, "reply not sent: %s", zmq_strerror(errno));
    }
}

static void publish(xc_svc_t *s, const char *topic, const xc_buf_t *body)
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
    for (int i = 0; i < N_REFUSE; i++) xc_mpw_kv_uint(w, xc_errname(g_refuse_codes[i]), s->cnt.refused[i]);
#define XC_SVC_CTR_RENDER(n) xc_mpw_kv_uint(w, #n, s->cnt.n);
    XC_SVC_COUNTERS(XC_SVC_CTR_RENDER)
#undef XC_SVC_CTR_RENDER
    xc_mpw_map_end(w);
}

/* The stats fields of PROTOCOL.md 3.1 (into an open map). */
static void render_stats(xc_svc_t *s, xc_mpw_t *w)
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
    xc_mpw_kv_double(w, "uptime_s", mono_s() - s->t_start);
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
    xc_mpw_str(w, "counters");
    render_counters(s, w);
}

/* The Prometheus text (daemon/metrics.c renders it) from the same sources as
 * render_stats; metrics_file and the `metrics` op both come from here. */
static int metrics_text(xc_svc_t *s, xc_buf_t *out)
{
    xc_trainer_status_t ts;
    xc_queue_counts_t qc;
    xc_metrics_t m;
    xc_trainer_status(s->trainer, &ts);
    xc_queue_counts(s->queue, &qc);
    xc_metrics_init(&m);
    m.name = s->cfg.name;
    m.model = s->cfg.model;
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
    m.uptime_s = mono_s() - s->t_start;
    m.start_time_unix = s->t_start_unix;
    m.last_checkpoint_unix = s->last_ckpt_unix;
    m.last_checkpoint_step = s->last_ckpt_step;
    m.checkpoint_age_s = s->last_ckpt_unix > 0 ? unix_s() - s->last_ckpt_unix : m.uptime_s;
    for (int i = 0; i < N_REFUSE && m.n_refused < XC_METRICS_MAX_COUNTERS; i++)
        m.refused[m.n_refused++] = (xc_metrics_counter_t){xc_errname(g_refuse_codes[i]), s->cnt.refused[i]};
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
static void write_metrics(xc_svc_t *s)
{
    char why[2 * XC_CFG_STR_MAX + 160];
    xc_buf_t b;
    if (!s->cfg.metrics_file[0]) return;
    xc_buf_init(&b);
    int rc = metrics_text(s, &b);
    if (rc) xc_why(why, sizeof why, "out of memory rendering the metrics");
    else rc = xc_metrics_write_file(s->cfg.metrics_file, b.data, b.len, why, sizeof why);
    if (rc && !s->metrics_failing)
        xc_log(XC_LOG_WARN, "metrics_file not written (said once until it works again): %s", why);
    else if (!rc && s->metrics_failing)
        xc_log(XC_LOG_INFO, "metrics_file %s written again", s->cfg.metrics_file);
    s->metrics_failing = rc != 0;
    xc_buf_free(&b);
}

static void render_config(xc_svc_t *s, xc_mpw_t *w)
{
    xc_mpw_map_begin(w);
    xc_cfg_to_mp(&s->cfg, NULL, w);
    xc_mpw_map_end(w);
}

/* One latent's record: statistics, Latent Scaling and class (snapshot lock held). */
typedef struct {
    const xc_latent_stats_t *st;
    xc_trainer_extra_t x;
} latents_t;

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
static void render_latent(xc_mpw_t *w, const latents_t *L, long j)
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
    xc_mpw_kv_str(w, "class", xc_class_name(L->x.cls[j]));
    xc_mpw_kv_bool(w, "chat_specific", (L->x.flags[j] & XC_FLAG_CHAT_SPECIFIC) != 0);
    xc_mpw_str(w, "scaling");
    render_scaling(w, &L->x.running[j]);
    xc_mpw_str(w, "scaling_exact");
    if (L->x.exact) render_scaling(w, &L->x.exact[j]);
    else xc_mpw_nil(w);
}

typedef double (*field_fn)(const latents_t *, long j);
#define LAT_FIELD(nm, expr) \
    static double f_##nm(const latents_t *L, long j) { return (double)(expr); }
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
LAT_FIELD(nu_err, L->x.running[j].nu_err)
LAT_FIELD(nu_rec, L->x.running[j].nu_rec)
LAT_FIELD(beta_err_base, L->x.running[j].beta_err[0])
LAT_FIELD(beta_err_chat, L->x.running[j].beta_err[1])
LAT_FIELD(beta_rec_base, L->x.running[j].beta_rec[0])
LAT_FIELD(beta_rec_chat, L->x.running[j].beta_rec[1])
LAT_FIELD(exact_nu_err, L->x.exact ? L->x.exact[j].nu_err : NAN)
LAT_FIELD(exact_nu_rec, L->x.exact ? L->x.exact[j].nu_rec : NAN)
#undef LAT_FIELD

static const struct {
    const char *name;
    field_fn fn;
} g_fields[] = {{"norm_base", f_norm_base}, {"norm_chat", f_norm_chat},
                {"delta_norm", f_delta_norm}, {"cosine", f_cosine},
                {"freq", f_freq},           {"mean_act", f_mean_act},
                {"max_act", f_max_act},     {"fired", f_fired},
                {"tokens_since_fired", f_since}, {"last_step_fired", f_last},
                {"nu_err", f_nu_err},       {"nu_rec", f_nu_rec},
                {"beta_err_base", f_beta_err_base}, {"beta_err_chat", f_beta_err_chat},
                {"beta_rec_base", f_beta_rec_base}, {"beta_rec_chat", f_beta_rec_chat},
                {"exact_nu_err", f_exact_nu_err}, {"exact_nu_rec", f_exact_nu_rec}};

static field_fn field_lookup(const char *s, size_t len)
{
    for (size_t i = 0; i < sizeof g_fields / sizeof g_fields[0]; i++)
        if (strlen(g_fields[i].name) == len && memcmp(g_fields[i].name, s, len) == 0)
            return g_fields[i].fn;
    return NULL;
}

/* ----------------------------------------------------------- refusals -- */
static void refuse(xc_svc_t *s, const envelope_t *env, const xc_batch_hdr_t *h, int code,
                   const char *why)
{
    int i = refuse_index(code);
    s->cnt.refused[i]++;
    s->cnt.batches_refused++;
    if (s->log_budget[i] > 0) {
        s->log_budget[i]--;
        xc_log(XC_LOG_WARN, "refused batch%s%llu from '%s': %s: %s", h && h->has_seq ? " seq " : "",
               h && h->has_seq ? (unsigned long long)h->seq : 0ull, h ? h->producer : "",
               xc_errname(code), why);
    } else {
        s->log_suppressed[i]++;
    }
    s->alert_count[i]++;
    snprintf(s->alert_producer[i], sizeof s->alert_producer[i], "%s", h ? h->producer : "");
    snprintf(s->alert_reason[i], sizeof s->alert_reason[i], "%s", why);
    xc_buf_reset(&s->out);
    if (xc_proto_nack_encode(&s->out, h, code, why) == 0)
        send_reply(s, s->ingest, env, s->out.data, s->out.len);
}

/* Publishes aggregated refusal alerts (at most one per class per second) and
 * the count of suppressed log lines. */
static void flush_alerts(xc_svc_t *s, int force)
{
    double now = mono_s();
    for (int i = 0; i < N_REFUSE; i++) {
        s->log_budget[i] = LOG_BUDGET;
        if (s->log_suppressed[i]) {
            xc_log(XC_LOG_WARN, "%llu more %s refusals not logged", (unsigned long long)s->log_suppressed[i],
                   xc_errname(g_refuse_codes[i]));
            s->log_suppressed[i] = 0;
        }
        if (!s->alert_count[i] || (!force && now - s->alert_last[i] < 1.0)) continue;
        char msg[XC_PROTO_REASON_MAX + 96];
        snprintf(msg, sizeof msg, "%llu batch(es) refused with %s; last: %s",
                 (unsigned long long)s->alert_count[i], xc_errname(g_refuse_codes[i]), s->alert_reason[i]);
        xc_mpw_t w;
        xc_buf_reset(&s->out);
        xc_mpw_init(&w, &s->out);
        xc_proto_event_begin(&w, XC_EVENT_ALERT, s->cfg.name, unix_s());
        xc_mpw_kv_str(&w, "kind", "refused");
        xc_mpw_kv_str(&w, "code", xc_errname(g_refuse_codes[i]));
        xc_mpw_kv_str(&w, "producer", s->alert_producer[i]);
        xc_mpw_kv_uint(&w, "count", s->alert_count[i]);
        xc_mpw_kv_str(&w, "message", msg);
        xc_mpw_map_end(&w);
        if (xc_mpw_finish(&w) == 0) publish(s, XC_EVENT_ALERT, &s->out);
        s->alert_count[i] = 0;
        s->alert_last[i] = now;
    }
}

/* -------------------------------------------------------------- ingest -- */
static void handle_ingest(xc_svc_t *s, mmsg_t *mm)
{
    envelope_t env;
    xc_batch_hdr_t h;
    xc_frame_t f[MAX_FRAMES];
    char why[XC_PROTO_REASON_MAX];
    int b0 = envelope_split(mm, &env), nb = mm->n - b0, rc;

    memset(&h, 0, sizeof h);
    for (int i = 0; i < nb; i++) {
        f[i].data = zmq_msg_data(&mm->m[b0 + i]);
        f[i].len = zmq_msg_size(&mm->m[b0 + i]);
    }
    if (s->stopping) {
        if (nb > 0) xc_proto_batch_hdr_decode(f[0].data, f[0].len, &h, why, sizeof why);
        refuse(s, &env, &h, XC_ESHUTDOWN, "the daemon is shutting down; batch not accepted");
        return;
    }
    if (mm->extra || nb > 4) {
        if (nb > 0) xc_proto_batch_hdr_decode(f[0].data, f[0].len, &h, why, sizeof why);
        snprintf(why, sizeof why, "%d body frames; a batch has at most 4 (header, payload, tokens, positions)",
                 nb + mm->extra);
        refuse(s, &env, &h, XC_EPROTO, why);
        return;
    }
    xc_batch_limits_t lim = {(uint32_t)s->cfg.d, (size_t)s->cfg.max_msg_bytes};
    rc = xc_proto_batch_check(f, (size_t)nb, &lim, &h, why, sizeof why);
    if (rc) {
        refuse(s, &env, &h, rc, why);
        return;
    }
    size_t count = (size_t)h.n * 2 * h.d;
    xc_qitem_t item;
    memset(&item, 0, sizeof item);
    item.x = malloc(count * sizeof(float)); /* owned by the queue after a push */
    if (!item.x) {
        snprintf(why, sizeof why, "out of memory for %llu tokens; retry later or send smaller batches",
                 (unsigned long long)h.n);
        refuse(s, &env, &h, XC_ENOMEM, why);
        return;
    }
    rc = xc_proto_payload_to_f32(&h, f[1].data, item.x, why, sizeof why);
    if (rc) {
        free(item.x);
        refuse(s, &env, &h, rc, why);
        return;
    }
    item.n = (long)h.n;
    item.seq = h.seq;
    memcpy(item.producer, h.producer, sizeof item.producer);
    if (xc_queue_push(s->queue, &item)) { /* cannot happen: room was checked before reading */
        free(item.x);
        refuse(s, &env, &h, XC_EAGAIN, "queue full; retry");
        return;
    }
    xc_queue_counts_t qc;
    xc_queue_counts(s->queue, &qc);
    xc_buf_reset(&s->out);
    if (xc_proto_ack_encode(&s->out, h.seq, h.n, qc.capacity - qc.depth) == 0)
        send_reply(s, s->ingest, &env, s->out.data, s->out.len);
}

/* ------------------------------------------------------------- control -- */
static void reply_error(xc_svc_t *s, const envelope_t *env, const xc_request_t *req, int code,
                        const char *why)
{
    s->cnt.control_errors++;
    xc_log(XC_LOG_WARN, "control request%s%s refused: %s: %s", req && req->op_name[0] ? " " : "",
           req ? req->op_name : "", xc_errname(code), why);
    xc_buf_reset(&s->out);
    if (xc_proto_error_encode(&s->out, req, code, why) == 0)
        send_reply(s, s->control, env, s->out.data, s->out.len);
}

static void reply_buf(xc_svc_t *s, const envelope_t *env, xc_mpw_t *w, const xc_request_t *req)
{
    int rc = xc_mpw_finish(w);
    if (rc) {
        reply_error(s, env, req, rc, "could not encode the reply");
        return;
    }
    send_reply(s, s->control, env, s->out.data, s->out.len);
}

/* Reads an optional unsigned argument; 1 when present. XC_EINVAL on wrong type. */
static int arg_u64(const xc_request_t *req, const char *key, uint64_t *out, char *why, size_t wl)
{
    xc_mp_node_t n = xc_mp_get(req->root, key);
    if (xc_mp_type(n) == XC_MP_NONE) return 0;
    if (xc_mp_as_u64(n, out)) {
        xc_why(why, wl, "argument '%s' must be an unsigned integer", key);
        return XC_EINVAL;
    }
    return 1;
}

static int arg_str(const xc_request_t *req, const char *key, const char **out, size_t *len,
                   char *why, size_t wl)
{
    xc_mp_node_t n = xc_mp_get(req->root, key);
    if (xc_mp_type(n) == XC_MP_NONE) return 0;
    if (xc_mp_as_str(n, out, len)) {
        xc_why(why, wl, "argument '%s' must be a string", key);
        return XC_EINVAL;
    }
    return 1;
}

typedef struct {
    uint64_t j;         /* latent */
    field_fn by;
    char by_name[32];
    uint64_t n;
    int asc, alive_only;
} latent_args_t;

/* Validates the arguments of latent / top. 0 or an XC_E* with why. */
static int latent_args(xc_svc_t *s, const xc_request_t *req, latent_args_t *a, char *why, size_t wl)
{
    const char *str;
    size_t sl;
    int rc;
    memset(a, 0, sizeof a[0]);
    if (req->op == XC_OP_LATENT) {
        rc = arg_u64(req, "j", &a->j, why, wl);
        if (rc < 0) return rc;
        if (rc == 0) {
            xc_why(why, wl, "latent needs argument 'j' (0 <= j < %ld)", s->cfg.dict_size);
            return XC_EINVAL;
        }
        if (a->j >= (uint64_t)s->cfg.dict_size) {
            xc_why(why, wl, "latent %llu does not exist (dict_size = %ld)", (unsigned long long)a->j,
                    s->cfg.dict_size);
            return XC_ENOTFOUND;
        }
        return XC_OK;
    }
    rc = arg_str(req, "by", &str, &sl, why, wl);
    if (rc < 0) return rc;
    if (rc == 0) {
        str = "delta_norm";
        sl = strlen(str);
    }
    a->by = field_lookup(str, sl);
    if (!a->by) {
        xc_why(why, wl, "unknown field '%.*s' for top; use one of norm_base, norm_chat, delta_norm, "
                "cosine, freq, mean_act, max_act, fired, tokens_since_fired, last_step_fired, nu_err, nu_rec, "
                "beta_err_base, beta_err_chat, beta_rec_base, beta_rec_chat, exact_nu_err, exact_nu_rec",
                (int)(sl > 40 ? 40 : sl), str);
        return XC_EINVAL;
    }
    snprintf(a->by_name, sizeof a->by_name, "%.*s", (int)sl, str);
    a->n = 10;
    if ((rc = arg_u64(req, "n", &a->n, why, wl)) < 0) return rc;
    if (a->n > (uint64_t)s->cfg.dict_size) a->n = (uint64_t)s->cfg.dict_size;
    if (a->n > TOP_MAX) a->n = TOP_MAX;
    rc = arg_str(req, "order", &str, &sl, why, wl);
    if (rc < 0) return rc;
    if (rc == 1) {
        if (sl == 3 && memcmp(str, "asc", 3) == 0) a->asc = 1;
        else if (!(sl == 4 && memcmp(str, "desc", 4) == 0)) {
            xc_why(why, wl, "argument 'order' must be \"asc\" or \"desc\"");
            return XC_EINVAL;
        }
    }
    xc_mp_node_t al = xc_mp_get(req->root, "alive_only");
    if (xc_mp_type(al) != XC_MP_NONE && xc_mp_as_bool(al, &a->alive_only)) {
        xc_why(why, wl, "argument 'alive_only' must be a bool");
        return XC_EINVAL;
    }
    return XC_OK;
}

typedef struct {
    const latents_t *L;
    field_fn by;
    int asc;
} sort_ctx_t;

static int top_cmp(const void *pa, const void *pb, void *pc)
{
    const sort_ctx_t *c = pc;
    int a = *(const int *)pa, b = *(const int *)pb;
    double va = c->by(c->L, a), vb = c->by(c->L, b);
    if (isnan(va) != isnan(vb)) return isnan(va) ? 1 : -1; /* undefined values last, either order */
    if (va != vb) return (va > vb) == !c->asc ? -1 : 1;
    return a < b ? -1 : a > b; /* stable order by index */
}

/* Answers latent / top from the current snapshot. */
static void answer_latent(xc_svc_t *s, const envelope_t *env, const xc_request_t *req)
{
    if (req->op == XC_OP_TABLE) { /* remote.c encodes it from the same snapshot */
        char twhy[XC_PROTO_REASON_MAX];
        int trc = xc_remote_table(s->trainer, s->cfg.dict_size, req, &s->out, twhy, sizeof twhy);
        if (trc) reply_error(s, env, req, trc, twhy);
        else send_reply(s, s->control, env, s->out.data, s->out.len);
        return;
    }
    latent_args_t a;
    char why[XC_PROTO_REASON_MAX];
    long step;
    int rc = latent_args(s, req, &a, why, sizeof why);
    if (rc) {
        reply_error(s, env, req, rc, why);
        return;
    }
    latents_t L;
    L.st = xc_trainer_snapshot_lock(s->trainer, &step, NULL);
    xc_trainer_snapshot_extra(s->trainer, &L.x);
    const xc_latent_stats_t *st = L.st;
    xc_mpw_t w;
    xc_buf_reset(&s->out);
    xc_mpw_init(&w, &s->out);
    xc_proto_reply_begin(&w, req);
    xc_mpw_kv_int(&w, "snapshot_step", step);
    if (req->op == XC_OP_LATENT) {
        xc_mpw_kv_uint(&w, "j", a.j);
        xc_mpw_str(&w, "stats");
        xc_mpw_map_begin(&w);
        render_latent(&w, &L, (long)a.j);
        xc_mpw_map_end(&w);
    } else {
        long F = s->cfg.dict_size, n = 0;
        int *idx = malloc((size_t)F * sizeof *idx); /* owned here */
        if (!idx) {
            xc_trainer_snapshot_unlock(s->trainer);
            reply_error(s, env, req, XC_ENOMEM, "out of memory sorting latents");
            return;
        }
        for (long j = 0; j < F; j++)
            if (!a.alive_only || !st[j].dead) idx[n++] = (int)j;
        sort_ctx_t c = {&L, a.by, a.asc};
        qsort_r(idx, (size_t)n, sizeof *idx, top_cmp, &c);
        if ((uint64_t)n > a.n) n = (long)a.n;
        xc_mpw_kv_str(&w, "by", a.by_name);
        xc_mpw_kv_str(&w, "order", a.asc ? "asc" : "desc");
        xc_mpw_str(&w, "latents");
        xc_mpw_array_begin(&w);
        for (long i = 0; i < n; i++) {
            xc_mpw_map_begin(&w);
            xc_mpw_kv_int(&w, "j", idx[i]);
            render_latent(&w, &L, idx[i]);
            xc_mpw_map_end(&w);
        }
        xc_mpw_array_end(&w);
        free(idx);
    }
    xc_trainer_snapshot_unlock(s->trainer);
    xc_mpw_map_end(&w);
    reply_buf(s, env, &w, req);
}

static int defer(xc_svc_t *s, const envelope_t *env, xc_op_t op, uint64_t gen, const void *req,
                 size_t len)
{
    if (s->n_pending >= PENDING_MAX) return XC_EAGAIN;
    pending_t *p = calloc(1, sizeof *p); /* owned by s->pending */
    if (!p) return XC_ENOMEM;
    p->req = malloc(len ? len : 1);
    if (!p->req) {
        free(p);
        return XC_ENOMEM;
    }
    memcpy(p->req, req, len);
    p->req_len = len;
    p->env = *env;
    p->op = op;
    p->gen = gen;
    p->next = s->pending;
    s->pending = p;
    s->n_pending++;
    return XC_OK;
}

static void begin_shutdown(xc_svc_t *s, const char *why);

/* "scaling" event: an exact Latent Scaling pass finished. */
static void publish_scaling(xc_svc_t *s)
{
    xc_trainer_status_t ts;
    xc_buf_t b;
    xc_mpw_t w;
    xc_trainer_status(s->trainer, &ts);
    xc_buf_init(&b);
    xc_mpw_init(&w, &b);
    xc_proto_event_begin(&w, "scaling", s->cfg.name, unix_s());
    xc_mpw_kv_int(&w, "step", ts.scaling_last_step);
    xc_mpw_kv_uint(&w, "tokens", ts.scaling_last_tokens);
    xc_mpw_kv_uint(&w, "chat_specific", ts.class_counts[5]);
    xc_mpw_kv_uint(&w, "chat_only", ts.class_counts[XC_CLASS_CHAT_ONLY]);
    xc_mpw_map_end(&w);
    publish(s, "scaling", &b);
    xc_buf_free(&b);
}

/* remote.c's fetch replies, on the loop thread; tag is the request's envelope. */
static void remote_reply(void *ctx, const void *tag, const void *body, size_t len, int is_error)
{
    xc_svc_t *s = ctx;
    if (is_error) s->cnt.control_errors++;
    send_reply(s, s->control, tag, body, len);
    drain_all(s); /* the send consumed the ZMQ_FD edge */
}

static void handle_control(xc_svc_t *s, mmsg_t *mm)
{
    envelope_t env;
    xc_request_t req;
    xc_mpw_t w;
    char why[XC_PROTO_REASON_MAX];
    int b0 = envelope_split(mm, &env), nb = mm->n - b0 + mm->extra, rc;

    s->cnt.control_requests++;
    if (nb != 1) {
        snprintf(why, sizeof why, "a request is exactly one MessagePack frame after the envelope; got %d",
                 nb);
        reply_error(s, &env, NULL, XC_EPROTO, why);
        return;
    }
    const void *body = zmq_msg_data(&mm->m[b0]);
    size_t blen = zmq_msg_size(&mm->m[b0]);
    rc = xc_proto_request_decode(body, blen, &req, why, sizeof why);
    if (rc) {
        reply_error(s, &env, &req, rc, why);
        goto out_free_req;
    }
    xc_log(XC_LOG_DEBUG, "control op %s", req.op_name);
    xc_buf_reset(&s->out);
    xc_mpw_init(&w, &s->out);
    switch (req.op) {
    case XC_OP_PING:
        xc_proto_reply_begin(&w, &req);
        xc_mpw_kv_uint(&w, "proto", XC_PROTO_VERSION);
        xc_mpw_kv_str(&w, "name", s->cfg.name);
        xc_mpw_kv_double(&w, "uptime_s", mono_s() - s->t_start);
        xc_mpw_map_end(&w);
        reply_buf(s, &env, &w, &req);
        break;
    case XC_OP_STATUS:
        xc_proto_reply_begin(&w, &req);
        render_stats(s, &w);
        xc_mpw_str(&w, "config");
        render_config(s, &w);
        xc_mpw_map_end(&w);
        reply_buf(s, &env, &w, &req);
        break;
    case XC_OP_CONFIG: {
        const char *key;
        size_t kl;
        char k[64];
        rc = arg_str(&req, "key", &key, &kl, why, sizeof why);
        if (rc < 0) {
            reply_error(s, &env, &req, rc, why);
            break;
        }
        snprintf(k, sizeof k, "%.*s", (int)(kl < 63 ? kl : 63), rc ? key : "");
        if (rc == 1 && !xc_cfg_key(k)) {
            snprintf(why, sizeof why, "unknown config key '%s'", k);
            reply_error(s, &env, &req, XC_ENOTFOUND, why);
            break;
        }
        xc_proto_reply_begin(&w, &req);
        xc_mpw_str(&w, "config");
        xc_mpw_map_begin(&w);
        xc_cfg_to_mp(&s->cfg, rc == 1 ? k : NULL, &w);
        xc_mpw_map_end(&w);
        xc_mpw_map_end(&w);
        reply_buf(s, &env, &w, &req);
        break;
    }
    case XC_OP_PAUSE:
    case XC_OP_RESUME: {
        int p = req.op == XC_OP_PAUSE;
        if (s->stopping) {
            reply_error(s, &env, &req, XC_ESHUTDOWN, "the daemon is shutting down");
            break;
        }
        xc_trainer_set_paused(s->trainer, p);
        xc_log(XC_LOG_INFO, "training %s by request", p ? "paused" : "resumed");
        xc_proto_reply_begin(&w, &req);
        xc_mpw_kv_bool(&w, "paused", p);
        xc_mpw_map_end(&w);
        reply_buf(s, &env, &w, &req);
        break;
    }
    case XC_OP_SHUTDOWN:
        xc_proto_reply_begin(&w, &req);
        xc_mpw_kv_bool(&w, "shutting_down", 1);
        xc_mpw_map_end(&w);
        reply_buf(s, &env, &w, &req);
        begin_shutdown(s, "shutdown requested");
        break;
    case XC_OP_CHECKPOINT: {
        if (s->stopping) { /* the final checkpoint answers it */
            uint64_t gen = xc_trainer_request_checkpoint(s->trainer, "shutdown");
            if (defer(s, &env, req.op, gen, body, blen))
                reply_error(s, &env, &req, XC_EAGAIN, "too many requests waiting for the trainer; retry");
            break;
        }
        uint64_t gen = xc_trainer_request_checkpoint(s->trainer, "request");
        if (defer(s, &env, req.op, gen, body, blen))
            reply_error(s, &env, &req, XC_EAGAIN, "too many requests waiting for the trainer; retry");
        break;
    }
    case XC_OP_SCALING: {
        uint64_t tokens = 1000000;
        rc = arg_u64(&req, "tokens", &tokens, why, sizeof why);
        if (rc < 0 || tokens == 0 || tokens > (1ull << 40)) {
            if (rc >= 0) snprintf(why, sizeof why, "argument 'tokens' must be in [1, 2^40], got %llu",
                                  (unsigned long long)tokens);
            reply_error(s, &env, &req, rc < 0 ? rc : XC_EINVAL, why);
            break;
        }
        if (s->stopping) {
            reply_error(s, &env, &req, XC_ESHUTDOWN, "the daemon is shutting down");
            break;
        }
        if (xc_trainer_request_scaling(s->trainer, tokens)) {
            xc_trainer_status_t ts;
            xc_trainer_status(s->trainer, &ts);
            snprintf(why, sizeof why, "an exact Latent Scaling pass is already under way (%llu of %llu tokens); "
                     "wait for its 'scaling' event", (unsigned long long)ts.scaling_done,
                     (unsigned long long)ts.scaling_target);
            reply_error(s, &env, &req, XC_ESTATE, why);
            break;
        }
        xc_log(XC_LOG_INFO, "exact Latent Scaling pass over %llu tokens requested", (unsigned long long)tokens);
        xc_proto_reply_begin(&w, &req);
        xc_mpw_kv_bool(&w, "started", 1);
        xc_mpw_kv_uint(&w, "tokens", tokens);
        xc_mpw_map_end(&w);
        reply_buf(s, &env, &w, &req);
        break;
    }
    case XC_OP_METRICS: {
        xc_buf_t text;
        xc_buf_init(&text);
        if (metrics_text(s, &text) || xc_buf_append(&text, "", 1)) {
            reply_error(s, &env, &req, XC_ENOMEM, "out of memory rendering the metrics");
        } else {
            xc_proto_reply_begin(&w, &req);
            xc_mpw_kv_str(&w, "format", "text/plain; version=0.0.4");
            xc_mpw_kv_str(&w, "text", (const char *)text.data);
            xc_mpw_map_end(&w);
            reply_buf(s, &env, &w, &req);
        }
        xc_buf_free(&text);
        break;
    }
    case XC_OP_CHECKPOINTS:
        xc_remote_checkpoints(s->remote, &req, body, blen, &s->out);
        send_reply(s, s->control, &env, s->out.data, s->out.len);
        break;
    case XC_OP_FETCH: /* answered from remote.c's threadpool callback (remote_reply) */
        if ((rc = xc_remote_fetch(s->remote, &req, body, blen, &env, why, sizeof why)))
            reply_error(s, &env, &req, rc, why);
        break;
    case XC_OP_LATENT:
    case XC_OP_TOP:
    case XC_OP_TABLE: {
        latent_args_t a;
        long snap_step;
        uint64_t snap_gen;
        rc = req.op == XC_OP_TABLE ? xc_remote_table_check(&req, s->cfg.dict_size, why, sizeof why)
                                   : latent_args(s, &req, &a, why, sizeof why);
        if (rc) {
            reply_error(s, &env, &req, rc, why);
            break;
        }
        xc_trainer_status_t ts;
        xc_trainer_status(s->trainer, &ts);
        xc_trainer_snapshot_lock(s->trainer, &snap_step, &snap_gen);
        xc_trainer_snapshot_unlock(s->trainer);
        if (snap_gen > 0 && snap_step == ts.m.step) { /* no step since: still exact */
            answer_latent(s, &env, &req);
            break;
        }
        if (s->stopping && ts.state == XC_TR_STOPPED) {
            answer_latent(s, &env, &req);
            break;
        }
        uint64_t gen = xc_trainer_request_snapshot(s->trainer);
        if (defer(s, &env, req.op, gen, body, blen))
            reply_error(s, &env, &req, XC_EAGAIN, "too many requests waiting for the trainer; retry");
        break;
    }
    default:
        reply_error(s, &env, &req, XC_EUNKNOWN, "op not implemented");
        break;
    }
out_free_req:
    xc_proto_request_free(&req);
}

/* Answers deferred requests that the trainer's results satisfy. With
 * fail_code != 0 answers every remaining one with that error. */
static void answer_pending(xc_svc_t *s, const xc_ckpt_result_t *ck, int have_ck, uint64_t snap_gen,
                           int fail_code)
{
    pending_t **pp = &s->pending;
    while (*pp) {
        pending_t *p = *pp;
        int ready = fail_code || (p->op == XC_OP_CHECKPOINT ? have_ck && ck->gen >= p->gen
                                                            : snap_gen >= p->gen);
        if (!ready) {
            pp = &p->next;
            continue;
        }
        *pp = p->next;
        s->n_pending--;
        xc_request_t req;
        char why[XC_PROTO_REASON_MAX];
        if (xc_proto_request_decode(p->req, p->req_len, &req, why, sizeof why) == 0) {
            if (fail_code) {
                reply_error(s, &p->env, &req, fail_code, "the daemon stopped before answering");
            } else if (p->op == XC_OP_CHECKPOINT) {
                if (ck->rc) {
                    reply_error(s, &p->env, &req, ck->rc, ck->why);
                } else {
                    xc_mpw_t w;
                    xc_buf_reset(&s->out);
                    xc_mpw_init(&w, &s->out);
                    xc_proto_reply_begin(&w, &req);
                    xc_mpw_kv_str(&w, "path", ck->path);
                    xc_mpw_kv_int(&w, "step", ck->step);
                    xc_mpw_kv_uint(&w, "bytes", ck->bytes);
                    xc_mpw_kv_str(&w, "train_path", ck->train_path);
                    xc_mpw_map_end(&w);
                    reply_buf(s, &p->env, &w, &req);
                }
            } else {
                answer_latent(s, &p->env, &req);
            }
        }
        xc_proto_request_free(&req);
        free(p->req);
        free(p);
    }
}

/* ------------------------------------------------------------ draining -- */
/* Handles up to DRAIN_BUDGET messages of one socket; 1 if more may wait. */
static int drain_socket(xc_svc_t *s, void *sock, int is_ingest)
{
    mmsg_t mm;
    for (int i = 0; i < DRAIN_BUDGET; i++) {
        int ev = 0;
        size_t el = sizeof ev;
        if (!sock || s->closing) return 0;
        if (zmq_getsockopt(sock, ZMQ_EVENTS, &ev, &el) || !(ev & ZMQ_POLLIN)) return 0;
        if (is_ingest && !s->stopping) {
            if (s->ingest_blocked) return 0;
            if (xc_queue_full(s->queue)) {
                s->ingest_blocked = 1;
                s->cnt.ingest_blocked++;
                xc_log(XC_LOG_DEBUG, "queue full: ingest paused (backpressure)");
                return 0;
            }
        }
        int rc = mmsg_recv(sock, &mm);
        if (rc == XC_EAGAIN) return 0;
        if (rc) {
            s->cnt.zmq_errors++;
            xc_log(XC_LOG_WARN, "receive failed: %s", zmq_strerror(errno));
            return 0;
        }
        if (mm.n > 0) {
            if (is_ingest) handle_ingest(s, &mm);
            else handle_control(s, &mm);
        }
        mmsg_close(&mm);
    }
    return 1;
}

static void idle_cb(uv_idle_t *h) { drain_all(h->data); }

static void drain_all(xc_svc_t *s)
{
    if (s->closing) return;
    int more = drain_socket(s, s->control, 0);
    more |= drain_socket(s, s->ingest, 1);
    more |= drain_socket(s, s->control, 0); /* replies sent above may have eaten an edge */
    if (more) uv_idle_start(&s->idle, idle_cb);
    else uv_idle_stop(&s->idle);
}

static void poll_cb(uv_poll_t *h, int status, int events) { drain_all(h->data); }

/* ------------------------------------------------------------- timers -- */
static void publish_stats(xc_svc_t *s)
{
    xc_trainer_status_t ts;
    xc_queue_counts_t qc;
    double now = mono_s();
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
    xc_proto_event_begin(&w, XC_EVENT_STATS, s->cfg.name, unix_s());
    render_stats(s, &w);
    xc_mpw_map_end(&w);
    if (xc_mpw_finish(&w) == 0) publish(s, XC_EVENT_STATS, &s->out);

    double dead = ts.m.dead_fraction;
    if (s->have_dead && dead - s->last_dead >= s->cfg.dead_alert_jump && s->cfg.dead_alert_jump > 0) {
        char msg[160];
        snprintf(msg, sizeof msg, "dead fraction rose from %.4f to %.4f at step %ld", s->last_dead, dead,
                 ts.m.step);
        xc_log(XC_LOG_WARN, "%s", msg);
        xc_buf_reset(&s->out);
        xc_mpw_init(&w, &s->out);
        xc_proto_event_begin(&w, XC_EVENT_ALERT, s->cfg.name, unix_s());
        xc_mpw_kv_str(&w, "kind", "dead_fraction");
        xc_mpw_kv_double(&w, "from", s->last_dead);
        xc_mpw_kv_double(&w, "to", dead);
        xc_mpw_kv_int(&w, "step", ts.m.step);
        xc_mpw_kv_str(&w, "message", msg);
        xc_mpw_map_end(&w);
        if (xc_mpw_finish(&w) == 0) publish(s, XC_EVENT_ALERT, &s->out);
    }
    s->last_dead = dead;
    s->have_dead = 1;
    sd_notifyf(0, "STATUS=step %ld, %.0f tokens/s, queue %ld/%ld", ts.m.step, s->tokens_per_s, qc.depth,
               qc.capacity);
}

static void stats_cb(uv_timer_t *h)
{
    xc_svc_t *s = h->data;
    publish_stats(s);
    drain_all(s);
}

static void ckpt_cb(uv_timer_t *h)
{
    xc_svc_t *s = h->data;
    if (!s->stopping) xc_trainer_request_checkpoint(s->trainer, "interval");
}

static void tick_cb(uv_timer_t *h)
{
    xc_svc_t *s = h->data;
    flush_alerts(s, 0);
    drain_all(s); /* safety net for a missed ZMQ_FD edge */
}

static void metrics_cb(uv_timer_t *h) { write_metrics(h->data); }

/* systemd's watchdog: pinged from the loop, so a stalled loop gets restarted. */
static void watchdog_cb(uv_timer_t *h) { sd_notify(0, "WATCHDOG=1"); }

static void start_timers(xc_svc_t *s)
{
    uint64_t st = (uint64_t)(s->cfg.stats_interval * 1000.0);
    uv_timer_start(&s->stats_timer, stats_cb, st, st);
    uv_timer_stop(&s->ckpt_timer);
    if (s->cfg.checkpoint_interval > 0) {
        uint64_t ct = (uint64_t)(s->cfg.checkpoint_interval * 1000.0);
        uv_timer_start(&s->ckpt_timer, ckpt_cb, ct, ct);
    }
    uv_timer_stop(&s->metrics_timer);
    if (s->cfg.metrics_file[0]) {
        uint64_t mt = (uint64_t)(s->cfg.metrics_interval * 1000.0);
        uv_timer_start(&s->metrics_timer, metrics_cb, 0, mt); /* the first file at once */
    }
}

/* ------------------------------------------------------------ shutdown -- */
static void close_cb(uv_handle_t *h) {}

static void close_handles(xc_svc_t *s)
{
    if (s->closing) return;
    s->closing = 1;
    uv_handle_t *hs[] = {(uv_handle_t *)&s->ingest_poll, (uv_handle_t *)&s->control_poll,
                         (uv_handle_t *)&s->stats_timer, (uv_handle_t *)&s->ckpt_timer,
                         (uv_handle_t *)&s->tick_timer,  (uv_handle_t *)&s->sig_term,
                         (uv_handle_t *)&s->sig_int,     (uv_handle_t *)&s->sig_hup,
                         (uv_handle_t *)&s->async,       (uv_handle_t *)&s->idle,
                         (uv_handle_t *)&s->metrics_timer, (uv_handle_t *)&s->watchdog_timer};
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++)
        if (!uv_is_closing(hs[i])) uv_close(hs[i], close_cb);
}

static void begin_shutdown(xc_svc_t *s, const char *why)
{
    if (s->stopping) {
        xc_log(XC_LOG_INFO, "%s: already stopping (finishing the step and the final checkpoint)", why);
        return;
    }
    s->stopping = 1;
    xc_log(XC_LOG_INFO, "%s: stopping intake, finishing the current step, writing a checkpoint", why);
    sd_notify(0, "STOPPING=1\nSTATUS=stopping: finishing the step, writing the final checkpoint");
    uv_timer_stop(&s->stats_timer);
    uv_timer_stop(&s->ckpt_timer);
    xc_trainer_stop(s->trainer);
}

static void publish_ckpt(xc_svc_t *s, const xc_ckpt_result_t *ck)
{
    xc_mpw_t w;
    xc_buf_reset(&s->out);
    xc_mpw_init(&w, &s->out);
    if (ck->rc == 0) {
        s->cnt.checkpoints_written++;
        s->last_ckpt_unix = unix_s();
        s->last_ckpt_step = ck->step;
        xc_proto_event_begin(&w, XC_EVENT_CHECKPOINT, s->cfg.name, unix_s());
        xc_mpw_kv_str(&w, "path", ck->path);
        xc_mpw_kv_int(&w, "step", ck->step);
        xc_mpw_kv_uint(&w, "bytes", ck->bytes);
        xc_mpw_kv_str(&w, "train_path", ck->train_path);
        xc_mpw_kv_str(&w, "reason", ck->reason);
        xc_mpw_map_end(&w);
        if (xc_mpw_finish(&w) == 0) publish(s, XC_EVENT_CHECKPOINT, &s->out);
    } else {
        s->cnt.checkpoints_failed++;
        xc_proto_event_begin(&w, XC_EVENT_ALERT, s->cfg.name, unix_s());
        xc_mpw_kv_str(&w, "kind", "checkpoint_failed");
        xc_mpw_kv_str(&w, "code", xc_errname(ck->rc));
        xc_mpw_kv_str(&w, "message", ck->why);
        xc_mpw_map_end(&w);
        if (xc_mpw_finish(&w) == 0) publish(s, XC_EVENT_ALERT, &s->out);
    }
}

static void async_cb(uv_async_t *h)
{
    xc_svc_t *s = h->data;
    xc_ckpt_result_t ck;
    uint64_t snap_gen = 0;
    int ev = xc_trainer_poll(s->trainer, &ck, &snap_gen);
    if (ev & XC_TR_EV_CKPT) publish_ckpt(s, &ck);
    if (ev & XC_TR_EV_SCALING) publish_scaling(s);
    if (ev & (XC_TR_EV_CKPT | XC_TR_EV_SNAPSHOT)) answer_pending(s, &ck, ev & XC_TR_EV_CKPT, snap_gen, 0);
    if (ev & XC_TR_EV_STOPPED) {
        xc_trainer_status_t ts;
        xc_trainer_status(s->trainer, &ts);
        s->result = (ev & XC_TR_EV_CKPT) && ck.rc == 0 ? XC_OK : (ev & XC_TR_EV_CKPT) ? ck.rc : XC_EIO;
        answer_pending(s, &ck, 0, 0, XC_ESHUTDOWN);
        flush_alerts(s, 1);
        publish_stats(s);
        write_metrics(s);
        xc_queue_counts_t qc;
        xc_queue_counts(s->queue, &qc);
        xc_log(XC_LOG_INFO, "trainer stopped at step %ld; %llu acked tokens left untrained (%llu buffered, "
               "%llu queued)", ts.m.step, (unsigned long long)(qc.tokens_buffered + qc.tokens_queued),
               (unsigned long long)qc.tokens_buffered, (unsigned long long)qc.tokens_queued);
        close_handles(s);
        return;
    }
    if (s->ingest_blocked && !xc_queue_full(s->queue)) {
        s->ingest_blocked = 0;
        xc_log(XC_LOG_DEBUG, "queue has room: ingest resumed");
    }
    drain_all(s);
}

/* Trainer and queue callbacks: from the trainer thread. */
static void wake_loop(void *ctx) { uv_async_send(&((xc_svc_t *)ctx)->async); }

/* --------------------------------------------------------------- signals -- */
int xc_svc_open_log(const char *path, char *why, size_t why_len)
{
    if (!path || !*path) return XC_OK;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        xc_why(why, why_len, "cannot open log file %s: %s", path, strerror(errno));
        return XC_EIO;
    }
    fflush(stderr);
    if (dup2(fd, STDERR_FILENO) < 0) {
        xc_why(why, why_len, "cannot redirect stderr to %s: %s", path, strerror(errno));
        close(fd);
        return XC_EIO;
    }
    close(fd);
    return XC_OK;
}

static void reload(xc_svc_t *s)
{
    xc_cfg_t next;
    xc_cfg_cli_t cli;
    char why[512], fixed[512];
    int rc = xc_cfg_load(&next, s->argc, s->argv, &cli, why, sizeof why);
    if (rc) {
        xc_log(XC_LOG_ERROR, "SIGHUP: configuration not reloaded: %s", why);
        return;
    }
    int n = xc_cfg_apply_reload(&s->cfg, &next, fixed, sizeof fixed);
    xc_trainer_set_checkpoint_policy(s->trainer, (int)s->cfg.checkpoint_keep, s->cfg.checkpoint_steps);
    if (xc_svc_open_log(s->cfg.log_file, why, sizeof why)) xc_log(XC_LOG_ERROR, "SIGHUP: %s", why);
    xc_log_level_t lvl;
    if (xc_log_parse_level(s->cfg.log_level, &lvl) == 0) xc_log_set_level(lvl);
    if (!s->stopping) start_timers(s);
    xc_log(XC_LOG_INFO, "SIGHUP: log reopened, %d key(s) reloaded", n);
    if (fixed[0]) xc_log(XC_LOG_WARN, "SIGHUP: changed keys need a restart to take effect: %s", fixed);
}

static void signal_cb(uv_signal_t *h, int signum)
{
    xc_svc_t *s = h->data;
    if (signum == SIGHUP) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
                   (unsigned long long)now.tv_sec * 1000000ull + (unsigned long long)now.tv_nsec / 1000ull);
        reload(s);
        sd_notify(0, "READY=1");
    } else begin_shutdown(s, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* ------------------------------------------------------------ lifecycle -- */
static int open_socket(xc_svc_t *s, void **out, int type, const char *ep, const char *what, char *why,
                       size_t wl)
{
    int linger = 1000;
    void *z = zmq_socket(s->zctx, type); /* owned by s; closed in destroy */
    if (!z) {
        xc_why(why, wl, "cannot create the %s socket: %s", what, zmq_strerror(errno));
        return XC_ESYS;
    }
    zmq_setsockopt(z, ZMQ_LINGER, &linger, sizeof linger);
    if (type == ZMQ_ROUTER && strcmp(what, "ingest") == 0) {
        int hwm = (int)s->cfg.ingest_hwm;
        /* hard per-frame limit: ZeroMQ drops the peer beyond it; up to it we nack XC_ETOOBIG */
        int64_t maxf = 2 * (int64_t)s->cfg.max_msg_bytes;
        zmq_setsockopt(z, ZMQ_RCVHWM, &hwm, sizeof hwm);
        zmq_setsockopt(z, ZMQ_MAXMSGSIZE, &maxf, sizeof maxf);
    } else if (type == ZMQ_ROUTER) {
        int64_t maxf = CONTROL_FRAME_MAX;
        int sndhwm = CONTROL_SNDHWM;
        zmq_setsockopt(z, ZMQ_MAXMSGSIZE, &maxf, sizeof maxf);
        zmq_setsockopt(z, ZMQ_SNDHWM, &sndhwm, sizeof sndhwm);
    }
    if (zmq_bind(z, ep) < 0) {
        xc_why(why, wl, "cannot bind the %s socket to %s: %s", what, ep, zmq_strerror(errno));
        zmq_close(z);
        return XC_EIO;
    }
    *out = z;
    return XC_OK;
}

/* One daemon per run_dir: an advisory lock on RUN_DIR/xcoderd.lock (an ipc://
 * bind would silently steal another instance's socket files). */
static int take_lock(xc_svc_t *s, char *why, size_t wl)
{
    char path[XC_CFG_STR_MAX + 80];
    int rc = xc_mkdirs(s->cfg.run_dir, why, wl);
    if (rc) return rc;
    snprintf(path, sizeof path, "%s/xcoderd.lock", s->cfg.run_dir);
    s->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (s->lock_fd < 0) {
        xc_why(why, wl, "cannot open lock file %s: %s", path, strerror(errno));
        return XC_EIO;
    }
    if (flock(s->lock_fd, LOCK_EX | LOCK_NB)) {
        xc_why(why, wl, "another xcoderd instance runs with run_dir %s (lock %s held); give each "
                "instance its own run_dir", s->cfg.run_dir, path);
        return XC_ESTATE;
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(s->lock_fd, 0) == 0 && write(s->lock_fd, pid, (size_t)n) < 0) { /* informative only */
    }
    return XC_OK;
}

static char *config_json(const xc_cfg_t *c)
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

xc_svc_t *xc_svc_new(const xc_cfg_t *cfg, int argc, char **argv, int *err, char *why, size_t wl)
{
    xc_engine_config_t ec;
    char *cj = NULL;
    int rc;
    xc_svc_t *s = calloc(1, sizeof *s); /* owned by the caller; xc_svc_destroy */
    if (!s) {
        *err = XC_ENOMEM;
        xc_why(why, wl, "out of memory");
        return NULL;
    }
    s->cfg = *cfg;
    s->argc = argc;
    s->argv = argv;
    s->lock_fd = -1;
    s->t_start = s->rate_t = mono_s();
    s->t_start_unix = unix_s();
    s->last_ckpt_step = -1;
    xc_buf_init(&s->out);
    for (int i = 0; i < N_REFUSE; i++) s->log_budget[i] = LOG_BUDGET;

    if ((rc = take_lock(s, why, wl))) goto fail;
    if ((rc = xc_mkdirs(s->cfg.state_dir, why, wl))) goto fail;
    xc_cfg_engine(&s->cfg, &ec);
    s->engine = xc_engine_new(&ec, &rc);
    if (!s->engine) {
        xc_why(why, wl, "cannot create the model (d = %ld, dict_size = %ld): %s", s->cfg.d,
                s->cfg.dict_size, xc_strerror(rc));
        goto fail;
    }
    rc = XC_ENOMEM;
    s->queue = xc_queue_new(s->cfg.queue_size, wake_loop, s);
    cj = config_json(&s->cfg);
    if (!s->queue || !cj) {
        xc_why(why, wl, "out of memory creating the queue");
        goto fail;
    }
    xc_trainer_opts_t to;
    memset(&to, 0, sizeof to);
    to.mix_tokens = s->cfg.mix_tokens;
    to.seed = (uint64_t)s->cfg.seed;
    to.state_dir = s->cfg.state_dir;
    to.name = s->cfg.name;
    to.config_json = cj;
    to.notify = wake_loop;
    to.notify_ctx = s;
    unsigned shm_mode = 0640;
    xc_cfg_shm_mode(&s->cfg, &shm_mode);
    to.shm_instance = strcmp(s->cfg.shm, "on") == 0 ? s->cfg.name : NULL;
    to.shm_mode = shm_mode;
    to.shm_interval = s->cfg.shm_interval;
    xc_cfg_thresholds(&s->cfg, &to.thresholds);
    to.checkpoint_keep = (int)s->cfg.checkpoint_keep;
    to.checkpoint_steps = s->cfg.checkpoint_steps;
    s->trainer = xc_trainer_new(s->engine, s->queue, &to, &rc);
    free(cj);
    cj = NULL;
    if (!s->trainer) {
        xc_why(why, wl, "cannot create the trainer (mixing buffer of %ld tokens): %s", s->cfg.mix_tokens,
                xc_strerror(rc));
        goto fail;
    }
    /* continue from the newest valid checkpoint (or --resume / --fresh) */
    if ((rc = xc_trainer_resume(s->trainer, s->cfg.resume[0] ? s->cfg.resume : NULL, s->cfg.fresh, why, wl)))
        goto fail;
    s->zctx = zmq_ctx_new();
    if (!s->zctx) {
        rc = XC_ESYS;
        xc_why(why, wl, "cannot create a ZeroMQ context: %s", zmq_strerror(errno));
        goto fail;
    }
    if ((rc = open_socket(s, &s->ingest, ZMQ_ROUTER, s->cfg.ingest, "ingest", why, wl)) ||
        (rc = open_socket(s, &s->control, ZMQ_ROUTER, s->cfg.control, "control", why, wl)) ||
        (rc = open_socket(s, &s->events, ZMQ_PUB, s->cfg.events, "events", why, wl)))
        goto fail;
    s->bound = 1;

    int fd_in, fd_ctl;
    size_t fl = sizeof(int);
    if (zmq_getsockopt(s->ingest, ZMQ_FD, &fd_in, &fl) ||
        zmq_getsockopt(s->control, ZMQ_FD, &fd_ctl, &(size_t){sizeof(int)})) {
        rc = XC_ESYS;
        xc_why(why, wl, "cannot get ZMQ_FD: %s", zmq_strerror(errno));
        goto fail;
    }
    if (uv_loop_init(&s->loop)) {
        rc = XC_ESYS;
        xc_why(why, wl, "cannot create the event loop");
        goto fail;
    }
    s->handles_open = 1;
    uv_poll_init(&s->loop, &s->ingest_poll, fd_in);
    uv_poll_init(&s->loop, &s->control_poll, fd_ctl);
    uv_timer_init(&s->loop, &s->stats_timer);
    uv_timer_init(&s->loop, &s->ckpt_timer);
    uv_timer_init(&s->loop, &s->tick_timer);
    uv_timer_init(&s->loop, &s->metrics_timer);
    uv_timer_init(&s->loop, &s->watchdog_timer);
    uv_signal_init(&s->loop, &s->sig_term);
    uv_signal_init(&s->loop, &s->sig_int);
    uv_signal_init(&s->loop, &s->sig_hup);
    uv_async_init(&s->loop, &s->async, async_cb);
    uv_idle_init(&s->loop, &s->idle);
    s->remote = xc_remote_new(&s->loop, s->cfg.state_dir, sizeof(envelope_t), remote_reply, s);
    if (!s->remote) {
        rc = XC_ENOMEM;
        xc_why(why, wl, "out of memory");
        goto fail;
    }
    s->ingest_poll.data = s->control_poll.data = s->stats_timer.data = s->ckpt_timer.data = s;
    s->tick_timer.data = s->sig_term.data = s->sig_int.data = s->sig_hup.data = s;
    s->async.data = s->idle.data = s;
    s->metrics_timer.data = s->watchdog_timer.data = s;
    *err = XC_OK;
    return s;
fail:
    free(cj);
    *err = rc ? rc : XC_EIO;
    xc_svc_destroy(&s);
    return NULL;
}

int xc_svc_run(xc_svc_t *s)
{
    int rc;
    if ((rc = xc_trainer_start(s->trainer))) {
        xc_log(XC_LOG_ERROR, "cannot start the trainer thread");
        return rc;
    }
    uv_poll_start(&s->ingest_poll, UV_READABLE, poll_cb);
    uv_poll_start(&s->control_poll, UV_READABLE, poll_cb);
    uv_signal_start(&s->sig_term, signal_cb, SIGTERM);
    uv_signal_start(&s->sig_int, signal_cb, SIGINT);
    uv_signal_start(&s->sig_hup, signal_cb, SIGHUP);
    uv_timer_start(&s->tick_timer, tick_cb, 100, 100);
    start_timers(s);
    xc_log(XC_LOG_INFO,
           "xcoderd '%s' ready: %s d=%ld dict_size=%ld k=%ld batch_size=%ld; ingest %s, control %s, "
           "events %s; checkpoints in %s",
           s->cfg.name, s->cfg.model, s->cfg.d, s->cfg.dict_size, s->cfg.k, s->cfg.batch_size, s->cfg.ingest,
           s->cfg.control, s->cfg.events, s->cfg.state_dir);
    uint64_t wd_usec = 0;
    if (sd_watchdog_enabled(0, &wd_usec) > 0 && wd_usec > 0) {
        uint64_t ms = wd_usec / 2000 ? wd_usec / 2000 : 1; /* half of WatchdogSec */
        uv_timer_start(&s->watchdog_timer, watchdog_cb, ms, ms);
        xc_log(XC_LOG_INFO, "systemd watchdog: WATCHDOG=1 every %llu ms", (unsigned long long)ms);
    }
    /* sockets bound and model initialised (xc_svc_new): clients may connect */
    sd_notifyf(0, "READY=1\nSTATUS=ready: step 0, waiting for activations on %s", s->cfg.ingest);
    s->result = XC_EIO;
    drain_all(s);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    xc_trainer_join(s->trainer);
    return s->result;
}

void xc_svc_destroy(xc_svc_t **ps)
{
    xc_svc_t *s = ps ? *ps : NULL;
    if (!s) return;
    if (s->trainer) { /* in case run was never called or returned early */
        xc_trainer_stop(s->trainer);
        xc_trainer_join(s->trainer);
    }
    if (s->handles_open) {
        close_handles(s);
        uv_run(&s->loop, UV_RUN_DEFAULT); /* runs the close callbacks */
        uv_loop_close(&s->loop);
    }
    if (s->ingest) zmq_close(s->ingest);
    if (s->control) zmq_close(s->control);
    if (s->events) zmq_close(s->events);
    if (s->zctx) zmq_ctx_term(s->zctx);
    if (s->bound) { /* libzmq leaves ipc:// socket files behind; they are ours (we bound them) */
        const char *eps[] = {s->cfg.ingest, s->cfg.control, s->cfg.events};
        for (int i = 0; i < 3; i++)
            if (strncmp(eps[i], "ipc://", 6) == 0 && eps[i][6] != '*' && eps[i][6] != '@')
                unlink(eps[i] + 6);
    }
    while (s->pending) {
        pending_t *p = s->pending;
        s->pending = p->next;
        free(p->req);
        free(p);
    }
    xc_remote_destroy(&s->remote);
    xc_trainer_destroy(&s->trainer);
    xc_queue_destroy(&s->queue);
    xc_engine_destroy(&s->engine);
    if (s->lock_fd >= 0) close(s->lock_fd);
    xc_buf_free(&s->out);
    free(s);
    *ps = NULL;
}
