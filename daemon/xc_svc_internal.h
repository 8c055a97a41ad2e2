/* The service's private parts, shared by its four files (xc_service.h is the
 * public face):
 *
 *   svc_loop.c     the libuv loop, the sockets, draining, timers, signals,
 *                  start-up and shutdown, the trainer's notifications
 *   svc_ingest.c   ingest batches: check, convert, queue, ack / nack; refusal
 *                  counters, rate-limited logs and aggregated alerts
 *   svc_control.c  the control ops as a table (g_ops) and their handlers,
 *                  requests deferred until the trainer answers
 *   svc_render.c   every rendering of the service's state: the stats event,
 *                  status, Prometheus text, per-latent records, other events
 *
 * Everything here runs on the loop thread. */
#ifndef XC_SVC_INTERNAL_H
#define XC_SVC_INTERNAL_H

#include "xc_auth.h"
#include "xc_ckpt.h"
#include "xc_config.h"
#include "xc_keys.h"
#include "xc_log.h"
#include "xc_proto.h"
#include "xc_queue.h"
#include "xc_remote.h"
#include "xc_schema.h"
#include "xc_service.h"
#include "xc_shard.h"
#include "xc_trainer.h"

#include <stdint.h>
#include <uv.h>
#include <zmq.h>

#define XC_SVC_MAX_FRAMES 8 /* identity + delimiter + header + payload + tokens + pos + spare */
#define XC_SVC_LOG_BUDGET 10 /* refusal log lines per class per second */

/* Refusal classes, in the order of PROTOCOL.md; counters are indexed by this. */
#define XC_SVC_REFUSALS(X)                                                                       \
    X(XC_ESHUTDOWN) X(XC_ETOOBIG) X(XC_EPROTO) X(XC_EVERSION) X(XC_EDTYPE) X(XC_ESHAPE)          \
    X(XC_ELENGTH) X(XC_ENONFINITE) X(XC_ERANGE) X(XC_ENOMEM) X(XC_EPERM) X(XC_ESTATE) X(XC_EINVAL)
#define XC_SVC_REFUSE_COUNT(c) +1
enum { XC_SVC_N_REFUSE = 0 XC_SVC_REFUSALS(XC_SVC_REFUSE_COUNT) };
#define XC_SVC_PRODUCERS 16 /* distinct producer ids counted in status */
#undef XC_SVC_REFUSE_COUNT
extern const int xc_svc_refuse_codes[XC_SVC_N_REFUSE];

/* The refusals by class, then every service counter of the schema
 * (XC_COUNTER_FIELDS, proto/xc_schema.h). */
typedef struct {
    uint64_t refused[XC_SVC_N_REFUSE];
#define XC_SVC_CTR_FIELD(n, prom, help) uint64_t n;
    XC_COUNTER_FIELDS(XC_SVC_CTR_FIELD)
#undef XC_SVC_CTR_FIELD
} xc_svc_counters_t;

/* Routing envelope of a ROUTER message: identity, and a REQ delimiter or not. */
typedef struct {
    uint8_t id[256];
    size_t id_len;
    int delim;
} xc_svc_envelope_t;

/* A control request answered later (checkpoint, or a snapshot for latent, top,
 * table). */
typedef struct xc_svc_pending {
    struct xc_svc_pending *next;
    xc_op_t op;
    int waits_ckpt;     /* 1: for a checkpoint result; 0: for a snapshot */
    uint64_t gen;       /* trainer generation that answers it */
    xc_svc_envelope_t env;
    uint8_t *req;       /* raw request frame; owned */
    size_t req_len;
} xc_svc_pending_t;

/* A control reply that the client's pipe could not take yet (ROUTER_MANDATORY
 * said EAGAIN: the client is not reading). Kept in order per client and sent
 * when its pipe has room; the backlog's bytes are bounded globally. */
typedef struct xc_svc_backlog {
    struct xc_svc_backlog *next;
    xc_svc_envelope_t env;
    size_t len;
    uint8_t body[]; /* owned with the item */
} xc_svc_backlog_t;

/* A batch held for its stream (stream_mix: the stream's queue lane is full,
 * the stream is ahead of the mixture): checked and converted, not answered;
 * its ack goes out when it enters the queue, so its producer waits. */
typedef struct {
    xc_svc_envelope_t env;
    xc_qitem_t item;  /* owns x and meta */
} xc_svc_held_t;

/* One multipart message as received (frames beyond XC_SVC_MAX_FRAMES counted). */
typedef struct {
    zmq_msg_t m[XC_SVC_MAX_FRAMES];
    int n;              /* frames stored */
    int extra;          /* frames beyond XC_SVC_MAX_FRAMES (dropped) */
} xc_svc_mmsg_t;

struct xc_svc {
    xc_cfg_t cfg;
    xc_auth_t *auth;    /* ZAP handler when curve_secret_key is set (auth.c); else NULL */
    char curve_secret[XC_KEY_Z85_LEN + 1];
    int insecure_remote; /* a non-loopback tcp endpoint without CURVE (insecure_tcp = on) */
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
    xc_engine_t *engine;  /* a sharded job: this rank's slice */
    xc_engine_t *full;    /* a sharded job: the unsharded container (xc_shard.h); else NULL */
    xc_shard_t *shard;    /* a sharded job: the other ranks; else NULL */
    xc_queue_t *queue;
    xc_trainer_t *trainer;
    xc_snapshot_t *snap; /* owned: the latent snapshot the loop answers from (xc_trainer.h) */
    int ingest_blocked;
    int stopping;
    int closing;
    int result;         /* of xc_svc_run */
    xc_svc_counters_t cnt;
    double t_start;
    double t_start_unix;
    double last_ckpt_unix;  /* 0 = no checkpoint written yet */
    long last_ckpt_step;    /* -1 = none */
    int metrics_failing;    /* the last metrics_file write failed (logged once) */
    int history_failing;    /* the last history append failed (logged once) */
    /* rates over the last stats interval */
    double rate_t;
    uint64_t rate_tokens;
    long rate_step;
    double tokens_per_s, steps_per_s;
    double rate_avg;        /* tokens/s averaged over about a minute (the budget's ETA) */
    double last_dead;
    int have_dead;
    /* tokens accepted per producer id (the first XC_SVC_PRODUCERS ids; the rest
     * in producers_other): what fed this run, for status and `xcoder report` */
    struct {
        char id[XC_PROTO_PRODUCER_MAX + 1];
        uint64_t tokens;
    } producers[XC_SVC_PRODUCERS];
    int n_producers;
    uint64_t producers_other;
    /* alert aggregation per refusal class */
    uint64_t alert_count[XC_SVC_N_REFUSE];
    char alert_producer[XC_SVC_N_REFUSE][XC_PROTO_PRODUCER_MAX + 1];
    char alert_reason[XC_SVC_N_REFUSE][XC_PROTO_REASON_MAX];
    double alert_last[XC_SVC_N_REFUSE];
    int log_budget[XC_SVC_N_REFUSE];
    uint64_t log_suppressed[XC_SVC_N_REFUSE];
    xc_svc_pending_t *pending;
    int n_pending;
    xc_svc_backlog_t *backlog, *backlog_tail; /* control replies waiting for room (svc_loop.c) */
    size_t backlog_bytes, backlog_n;
    xc_ratelimit_t rl_reply;  /* log lines about replies that could not be delivered */
    xc_ratelimit_t rl_control; /* log lines about refused control requests (peer-triggered) */
    int ckpt_failing;   /* the last checkpoint failed: one alert per change of state */
    int ledger_fd;      /* >= 0: STATE_DIR/NAME.ledger (acknowledged tokens so far) in use */
    int ledger_failing; /* the last ledger write failed (said once) */
    uint64_t ledger_base;    /* acked tokens the resumed checkpoint covers */
    uint64_t ledger_written; /* the acked count last written */
    xc_buf_t out;       /* scratch for replies */
    xc_remote_t *remote; /* checkpoints, fetch, table (remote.c) */
    /* the stream mixture (stream_mix; n = 0: none) and the batches held for it */
    xc_mix_spec_t mix;
    xc_svc_held_t *held; /* (stream_hold), owned; in arrival order */
    long n_held;
    uint64_t lane_held_tokens[XC_MIX_MAX], lane_held_batches[XC_MIX_MAX], lane_holds[XC_MIX_MAX];
};

/* ---- svc_loop.c */
double xc_svc_mono_s(void);
double xc_svc_unix_s(void);
/* Splits off the routing envelope; returns the index of the first body frame. */
int xc_svc_envelope_split(const xc_svc_mmsg_t *mm, xc_svc_envelope_t *env);
/* Sends [envelope][body] on a ROUTER socket (counted and logged on failure). */
void xc_svc_send_reply(xc_svc_t *s, void *sock, const xc_svc_envelope_t *env, const void *body, size_t len);
/* Reads every socket that has messages waiting (within the per-drain budget). */
void xc_svc_drain_all(xc_svc_t *s);
void xc_svc_begin_shutdown(xc_svc_t *s, const char *why);

/* ---- svc_ingest.c */
void xc_svc_handle_ingest(xc_svc_t *s, xc_svc_mmsg_t *mm);
/* Refusal alerts (at most one per class per second unless force) and log budgets. */
void xc_svc_flush_alerts(xc_svc_t *s, int force);

/* Accepts the held batches whose stream lane has room now (in arrival
 * order), acking each; refuse_code != 0 (XC_ESHUTDOWN) refuses every one instead. */
void xc_svc_release_held(xc_svc_t *s, int refuse_code);

/* ---- svc_control.c */
void xc_svc_handle_control(xc_svc_t *s, xc_svc_mmsg_t *mm);
/* Answers deferred requests the trainer's results satisfy; fail_code != 0
 * answers all that remain with that error. */
void xc_svc_backlog_free(xc_svc_t *s);
void xc_svc_answer_pending(xc_svc_t *s, const xc_ckpt_result_t *ck, int have_ck, uint64_t snap_gen,
                           int fail_code);
void xc_svc_pending_free_all(xc_svc_t *s);
/* The first op without a row in the op table (XC_OP_UNKNOWN: none). */
xc_op_t xc_svc_op_unhandled(void);
/* remote.c's reply callback (fetch replies); tag is the request's envelope. */
void xc_svc_remote_reply(void *ctx, const void *tag, const void *body, size_t len, int is_error);

/* ---- svc_render.c */
/* Sends one event [topic][body] on the events socket. */
void xc_svc_event_send(xc_svc_t *s, const char *topic, const xc_buf_t *body);
/* The stats fields of PROTOCOL.md 3.1 into an open map (stats event, status). */
void xc_svc_render_stats(xc_svc_t *s, xc_mpw_t *w);
/* The configuration as a map. */
void xc_svc_render_config(xc_svc_t *s, xc_mpw_t *w);
/* The Prometheus text (metrics_file and the metrics op). 0 or XC_ENOMEM. */
int xc_svc_metrics_text(xc_svc_t *s, xc_buf_t *out);
void xc_svc_write_metrics(xc_svc_t *s);
/* Events: stats (with rates and the dead-fraction alert), checkpoint / alert
 * for a checkpoint result, scaling for a finished exact pass. */
void xc_svc_publish_stats(xc_svc_t *s);
void xc_svc_publish_ckpt(xc_svc_t *s, const xc_ckpt_result_t *ck);
void xc_svc_publish_scaling(xc_svc_t *s);
/* The configuration as JSON text for checkpoints (malloc'd, caller frees; NULL
 * when out of memory). */
char *xc_svc_config_json(const xc_cfg_t *c);

/* Per-latent fields (PROTOCOL.md 3.3) of latent j into an open map. */
void xc_svc_render_latent(xc_mpw_t *w, const xc_snapshot_t *L, long j);

#endif
