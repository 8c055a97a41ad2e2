/* The service loop and its sockets (see xc_service.h, xc_svc_internal.h and
 * proto/PROTOCOL.md).
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
 * slot and wakes the loop through uv_async_send. With a stream mixture the
 * queue has a lane per stream and a batch for a full lane is held unanswered
 * (its producer waits on its window) while other streams' batches are still
 * read; reading stops only when stream_hold batches are held. */
#include "xc_svc_internal.h"
#include "xc_log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#define DRAIN_BUDGET 64     /* messages per socket per drain */
/* Control replies a client's pipe could not take wait in the daemon's backlog:
 * at most BACKLOG_BYTES in all clients together (beyond, a reply becomes a
 * small XC_EBUSY error) and BACKLOG_ITEMS (beyond, the reply is dropped and
 * counted: that client has not read thousands of replies). */
#define BACKLOG_BYTES ((size_t)64 << 20)
#define BACKLOG_ITEMS 65536

double xc_svc_mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

double xc_svc_unix_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------ messages -- */
static void mmsg_close(xc_svc_mmsg_t *mm)
{
    for (int i = 0; i < mm->n; i++) zmq_msg_close(&mm->m[i]);
    mm->n = 0;
    mm->extra = 0;
}

/* Receives one whole multipart message without blocking. 0, XC_EAGAIN (none
 * waiting) or XC_EIO. */
static int mmsg_recv(void *sock, xc_svc_mmsg_t *mm)
{
    int more = 1;
    mm->n = 0;
    mm->extra = 0;
    while (more) {
        zmq_msg_t tmp, *m = mm->n < XC_SVC_MAX_FRAMES ? &mm->m[mm->n] : &tmp;
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
int xc_svc_envelope_split(const xc_svc_mmsg_t *mm, xc_svc_envelope_t *env)
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

/* One send of [envelope][body]: 0, or the errno (EAGAIN: the peer's pipe is
 * full, EHOSTUNREACH: the peer is gone — both only with ROUTER_MANDATORY,
 * before any frame went out). */
static int send_frames(void *sock, const xc_svc_envelope_t *env, const void *body, size_t len)
{
    int rc = zmq_send(sock, env->id, env->id_len, ZMQ_SNDMORE | ZMQ_DONTWAIT);
    if (rc >= 0 && env->delim) rc = zmq_send(sock, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT);
    if (rc >= 0) rc = zmq_send(sock, body, len, ZMQ_DONTWAIT);
    return rc < 0 ? errno : 0;
}

static int same_peer(const xc_svc_envelope_t *a, const xc_svc_envelope_t *b)
{
    return a->id_len == b->id_len && memcmp(a->id, b->id, a->id_len) == 0;
}

/* A small XC_EBUSY error for the request a reply body answers (its op and id
 * read back from the reply); 0 or -1 when the body is not a reply map. */
static int busy_reply(const void *body, size_t len, xc_buf_t *out)
{
    xc_request_t req;
    char why[160];
    int rc = xc_proto_request_decode(body, len, &req, why, sizeof why);
    if (rc == 0 || rc == XC_EUNKNOWN)
        rc = xc_proto_error_encode(out, &req, XC_EBUSY, "this reply did not fit the daemon's reply budget "
                                   "(64 MiB for all clients): read replies before sending more requests, "
                                   "then retry");
    xc_proto_request_free(&req);
    return rc ? -1 : 0;
}

/* Appends a reply to the backlog (copied): within the byte budget as it is,
 * beyond it as XC_EBUSY, beyond the item cap not at all (counted, logged). */
static void backlog_push(xc_svc_t *s, const xc_svc_envelope_t *env, const void *body, size_t len)
{
    xc_buf_t busy;
    xc_buf_init(&busy);
    if (s->backlog_bytes + len > BACKLOG_BYTES && busy_reply(body, len, &busy) == 0) {
        s->cnt.replies_busy++;
        body = busy.data;
        len = busy.len;
    }
    xc_svc_backlog_t *b = NULL;
    if (s->backlog_n < BACKLOG_ITEMS && s->backlog_bytes + len <= BACKLOG_BYTES + ((size_t)1 << 20))
        b = malloc(sizeof *b + len); /* owned by the backlog; freed when sent */
    if (!b) {
        s->cnt.replies_dropped++;
        xc_log_rl(&s->rl_reply, XC_LOG_WARN, "a control reply was dropped: the client has %zu unread "
                  "replies waiting (it does not read its socket)", s->backlog_n);
        xc_buf_free(&busy);
        return;
    }
    b->next = NULL;
    b->env = *env;
    b->len = len;
    memcpy(b->body, body, len);
    if (s->backlog_tail) s->backlog_tail->next = b;
    else s->backlog = b;
    s->backlog_tail = b;
    s->backlog_bytes += len;
    s->backlog_n++;
    s->cnt.replies_deferred++;
    xc_buf_free(&busy);
}

/* Sends what the clients' pipes take now, in order per client: a client
 * whose pipe is still full keeps its remaining replies. */
static void backlog_flush(xc_svc_t *s)
{
    enum { MAX_BLOCKED = 32 };
    xc_svc_envelope_t blocked[MAX_BLOCKED];
    int nb = 0;
    xc_svc_backlog_t **pp = &s->backlog, *prev = NULL;
    while (*pp) {
        xc_svc_backlog_t *b = *pp;
        int skip = 0;
        for (int i = 0; i < nb && !skip; i++) skip = same_peer(&blocked[i], &b->env);
        int e = skip ? EAGAIN : send_frames(s->control, &b->env, b->body, b->len);
        if (e == EAGAIN) {
            if (!skip && nb < MAX_BLOCKED) blocked[nb++] = b->env;
            if (nb == MAX_BLOCKED) break; /* the rest waits for the next flush */
            prev = b;
            pp = &b->next;
            continue;
        }
        if (e) s->cnt.replies_dropped++; /* EHOSTUNREACH: the client left */
        *pp = b->next;
        if (s->backlog_tail == b) s->backlog_tail = prev;
        s->backlog_bytes -= b->len;
        s->backlog_n--;
        free(b);
    }
}

/* Frees the replies still held for slow clients (shutdown: nobody reads them). */
void xc_svc_backlog_free(xc_svc_t *s)
{
    while (s->backlog) {
        xc_svc_backlog_t *b = s->backlog;
        s->backlog = b->next;
        free(b);
    }
    s->backlog_tail = NULL;
    s->backlog_bytes = s->backlog_n = 0;
}

/* Sends [envelope][body] on a ROUTER socket. Control replies are never lost
 * to a full pipe: they wait in the backlog, behind any older reply for the
 * same client. The caller drains afterwards (a send consumes the ZMQ_FD edge). */
void xc_svc_send_reply(xc_svc_t *s, void *sock, const xc_svc_envelope_t *env, const void *body, size_t len)
{
    if (sock == s->control) {
        for (xc_svc_backlog_t *b = s->backlog; b; b = b->next)
            if (same_peer(&b->env, env)) {
                backlog_push(s, env, body, len);
                return;
            }
    }
    int e = send_frames(sock, env, body, len);
    if (!e) return;
    if (sock == s->control && e == EAGAIN) {
        backlog_push(s, env, body, len);
    } else if (sock == s->control && e == EHOSTUNREACH) {
        s->cnt.replies_dropped++; /* the client disconnected before its reply */
    } else {
        s->cnt.zmq_errors++;
        xc_log_rl(&s->rl_reply, XC_LOG_WARN, "reply not sent: %s", zmq_strerror(e));
    }
}

/* ------------------------------------------------------------ draining -- */
/* Handles up to DRAIN_BUDGET messages of one socket; 1 if more may wait. */
static int drain_socket(xc_svc_t *s, void *sock, int is_ingest)
{
    xc_svc_mmsg_t mm;
    for (int i = 0; i < DRAIN_BUDGET; i++) {
        int ev = 0;
        size_t el = sizeof ev;
        if (!sock || s->closing) return 0;
        if (zmq_getsockopt(sock, ZMQ_EVENTS, &ev, &el) || !(ev & ZMQ_POLLIN)) return 0;
        if (is_ingest && !s->stopping) {
            if (s->ingest_blocked) return 0;
            /* with a stream mixture the stream is known only once read: a batch for a
             * full lane is held (svc_ingest.c), and reading stops when stream_hold are */
            if (s->mix.n > 0 ? s->n_held >= s->cfg.stream_hold : xc_queue_full(s->queue)) {
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
            if (is_ingest) xc_svc_handle_ingest(s, &mm);
            else xc_svc_handle_control(s, &mm);
        }
        mmsg_close(&mm);
    }
    return 1;
}

static void idle_cb(uv_idle_t *h) { xc_svc_drain_all(h->data); }

/* Drains control, then ingest, then control again (replies sent while
 * draining ingest may have consumed a ZMQ_FD edge); when a budget ran out,
 * the idle handle comes back for the rest, so no socket starves the other. */
void xc_svc_drain_all(xc_svc_t *s)
{
    if (s->closing) return;
    if (s->backlog) backlog_flush(s);
    int more = drain_socket(s, s->control, 0);
    more |= drain_socket(s, s->ingest, 1);
    more |= drain_socket(s, s->control, 0); /* replies sent above may have eaten an edge */
    if (more) uv_idle_start(&s->idle, idle_cb);
    else uv_idle_stop(&s->idle);
}

static void poll_cb(uv_poll_t *h, int status, int events) { xc_svc_drain_all(h->data); }

/* ------------------------------------------------------------- timers -- */

static void stats_cb(uv_timer_t *h)
{
    xc_svc_t *s = h->data;
    xc_svc_publish_stats(s);
    xc_svc_drain_all(s);
}

static void ckpt_cb(uv_timer_t *h)
{
    xc_svc_t *s = h->data;
    if (!s->stopping) xc_trainer_request_checkpoint(s->trainer, "interval");
}

static void ledger_update(xc_svc_t *s);

static void tick_cb(uv_timer_t *h)
{
    xc_svc_t *s = h->data;
    xc_svc_flush_alerts(s, 0);
    ledger_update(s);
    xc_svc_drain_all(s); /* safety net for a missed ZMQ_FD edge */
}

static void metrics_cb(uv_timer_t *h) { xc_svc_write_metrics(h->data); }

/* systemd's watchdog: pinged from the loop, so a stalled loop gets restarted. */
static void watchdog_cb(uv_timer_t *h) { sd_notify(0, "WATCHDOG=1"); }

/* (Re)starts the periodic timers from the configuration: at start and after
 * SIGHUP, which may have changed the intervals. */
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

/* Closes every libuv handle once (the loop then ends when their close
 * callbacks have run); later calls do nothing. */
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

/* Shutdown, once, from a signal or the shutdown op: stop intake and the
 * timers, and ask the trainer to finish its step and write the final
 * checkpoint; the loop ends when the trainer reports that it stopped. */
void xc_svc_begin_shutdown(xc_svc_t *s, const char *why)
{
    if (s->stopping) {
        xc_log(XC_LOG_INFO, "%s: already stopping (finishing the step and the final checkpoint)", why);
        return;
    }
    s->stopping = 1;
    xc_log(XC_LOG_INFO, "%s: stopping intake, finishing the current step, writing a checkpoint", why);
    if (s->n_held) xc_svc_release_held(s, XC_ESHUTDOWN); /* every batch gets its one reply */
    sd_notify(0, "STOPPING=1\nSTATUS=stopping: finishing the step, writing the final checkpoint");
    uv_timer_stop(&s->stats_timer);
    uv_timer_stop(&s->ckpt_timer);
    xc_trainer_stop(s->trainer);
}


/* The trainer's notification (uv_async_send coalesces them): take the newest
 * snapshot (a pointer swap), publish checkpoint and scaling events, answer
 * the requests the results satisfy; on the final stop, answer the rest with
 * XC_ESHUTDOWN, publish the last stats and close the loop. */
static void async_cb(uv_async_t *h)
{
    xc_svc_t *s = h->data;
    xc_ckpt_result_t ck;
    int ev = xc_trainer_poll(s->trainer, &ck, NULL);
    if (ev & XC_TR_EV_SNAPSHOT) s->snap = xc_trainer_snapshot_swap(s->trainer, s->snap); /* O(1) */
    if (ev & XC_TR_EV_CKPT) xc_svc_publish_ckpt(s, &ck);
    if (ev & XC_TR_EV_SCALING) xc_svc_publish_scaling(s);
    if (ev & (XC_TR_EV_CKPT | XC_TR_EV_SNAPSHOT))
        xc_svc_answer_pending(s, &ck, ev & XC_TR_EV_CKPT, s->snap ? s->snap->gen : 0, 0);
    if (ev & XC_TR_EV_STOPPED) {
        xc_trainer_status_t ts;
        xc_trainer_status(s->trainer, &ts);
        s->result = (ev & XC_TR_EV_CKPT) && ck.rc == 0 ? XC_OK : (ev & XC_TR_EV_CKPT) ? ck.rc : XC_EIO;
        xc_svc_answer_pending(s, &ck, 0, 0, XC_ESHUTDOWN);
        xc_svc_flush_alerts(s, 1);
        xc_svc_publish_stats(s);
        xc_svc_write_metrics(s);
        xc_queue_counts_t qc;
        xc_queue_counts(s->queue, &qc);
        xc_log(XC_LOG_INFO, "trainer stopped at step %ld; %llu acked tokens left untrained (%llu buffered, "
               "%llu queued)", ts.m.step, (unsigned long long)(qc.tokens_buffered + qc.tokens_queued),
               (unsigned long long)qc.tokens_buffered, (unsigned long long)qc.tokens_queued);
        if (s->result == XC_ECOLL) /* a sharded job lost a rank: nothing to fix on this machine's disk */
            xc_log(XC_LOG_ERROR, "the job lost a rank (%s): training since the last checkpoint (step %ld) and the "
                   "%llu buffered tokens are lost; exit status 1 (restart the job: it resumes from the last "
                   "checkpoint)", (ev & XC_TR_EV_CKPT) ? ck.why : "no result", s->last_ckpt_step,
                   (unsigned long long)qc.tokens_buffered);
        else if (s->result)
            xc_log(XC_LOG_ERROR, "the final checkpoint failed (%s): training since the last checkpoint (step %ld) "
                   "and the %llu buffered tokens are lost; exit status 1 (free space in state_dir, then restart: "
                   "the daemon resumes from the last checkpoint)", (ev & XC_TR_EV_CKPT) ? ck.why : "no result",
                   s->last_ckpt_step, (unsigned long long)qc.tokens_buffered);
        close_handles(s);
        return;
    }
    if (s->n_held) xc_svc_release_held(s, 0); /* the trainer took from a lane: held batches may enter */
    if (s->ingest_blocked && (s->mix.n > 0 ? s->n_held < s->cfg.stream_hold : !xc_queue_full(s->queue))) {
        s->ingest_blocked = 0;
        xc_log(XC_LOG_DEBUG, "queue has room: ingest resumed");
    }
    xc_svc_drain_all(s);
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

/* The allow-list files of the configuration. */
static xc_auth_lists_t auth_lists(const xc_cfg_t *c)
{
    xc_auth_lists_t l = {c->allow_producers, c->allow_readers, c->allow_admins};
    return l;
}

/* Apply hooks of the reloadable keys (daemon/xc_config.h). */
static void hook_timers(void *ctx, const xc_cfg_t *c)
{
    xc_svc_t *s = ctx;
    if (!s->stopping) start_timers(s);
}

static void hook_checkpoint(void *ctx, const xc_cfg_t *c)
{
    xc_svc_t *s = ctx;
    xc_trainer_set_checkpoint_policy(s->trainer, (int)c->checkpoint_keep, c->checkpoint_steps);
}

/* SIGHUP: the whole configuration loaded again; the changed reloadable keys
 * copied with their apply hooks; then what every SIGHUP does whether or not a
 * key changed: the allow-list files re-read and the log file reopened (rotation). */
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
    xc_cfg_hooks_t hooks = {{[XC_CFG_HOOK_LOG_LEVEL] = xc_cfg_apply_log_level,
                             [XC_CFG_HOOK_TIMERS] = hook_timers,
                             [XC_CFG_HOOK_CHECKPOINT] = hook_checkpoint},
                            s};
    int n = xc_cfg_apply_reload(&s->cfg, &next, &hooks, fixed, sizeof fixed);
    if (s->curve_secret[0]) {
        xc_auth_lists_t l = auth_lists(&s->cfg);
        if (xc_auth_reload(s->auth, &l, why, sizeof why))
            xc_log(XC_LOG_ERROR, "SIGHUP: allow-lists not reloaded (the previous ones stay): %s", why);
        else xc_log(XC_LOG_INFO, "SIGHUP: allow-lists reloaded");
    }
    if (xc_svc_open_log(s->cfg.log_file, why, sizeof why)) xc_log(XC_LOG_ERROR, "SIGHUP: %s", why);
    xc_log(XC_LOG_INFO, "SIGHUP: log reopened, %d key(s) reloaded", n);
    if (fixed[0]) xc_log(XC_LOG_WARN, "SIGHUP: changed keys need a restart to take effect: %s", fixed);
}

/* SIGHUP reloads (telling systemd RELOADING / READY); SIGTERM and SIGINT
 * begin the clean shutdown. Handlers run on the loop, never in signal context. */
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
    } else xc_svc_begin_shutdown(s, signum == SIGTERM ? "SIGTERM" : "SIGINT");
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
    /* what each connection may hold: the per-connection terms of
     * xc_cfg_memory_bound (xc_config.h), times max_connections */
    if (type == ZMQ_ROUTER && strcmp(what, "ingest") == 0) {
        int hwm = (int)xc_cfg_ingest_rcvhwm(&s->cfg);
        /* hard per-frame limit: ZeroMQ drops the peer beyond it; up to it we nack XC_ETOOBIG */
        int64_t maxf = 2 * (int64_t)s->cfg.max_msg_bytes;
        zmq_setsockopt(z, ZMQ_RCVHWM, &hwm, sizeof hwm);
        zmq_setsockopt(z, ZMQ_MAXMSGSIZE, &maxf, sizeof maxf);
    } else if (type == ZMQ_ROUTER) {
        int64_t maxf = XC_CFG_CONTROL_FRAME_MAX;
        int sndhwm = XC_CFG_CONTROL_SNDHWM, rcvhwm = XC_CFG_CONTROL_RCVHWM, mandatory = 1;
        zmq_setsockopt(z, ZMQ_MAXMSGSIZE, &maxf, sizeof maxf);
        zmq_setsockopt(z, ZMQ_SNDHWM, &sndhwm, sizeof sndhwm);
        zmq_setsockopt(z, ZMQ_RCVHWM, &rcvhwm, sizeof rcvhwm);
        /* a full pipe says EAGAIN instead of dropping the reply (backlog) */
        zmq_setsockopt(z, ZMQ_ROUTER_MANDATORY, &mandatory, sizeof mandatory);
    } else {
        /* events: subscriptions are short; events beyond XC_CFG_EVENT_MAX are not sent */
        int64_t maxf = XC_CFG_EVENTS_FRAME_MAX;
        int sndhwm = XC_CFG_EVENTS_SNDHWM, rcvhwm = XC_CFG_EVENTS_RCVHWM;
        zmq_setsockopt(z, ZMQ_MAXMSGSIZE, &maxf, sizeof maxf);
        zmq_setsockopt(z, ZMQ_SNDHWM, &sndhwm, sizeof sndhwm);
        zmq_setsockopt(z, ZMQ_RCVHWM, &rcvhwm, sizeof rcvhwm);
    }
    if (s->curve_secret[0] && xc_auth_endpoint_tcp(ep)) {
        int rc = xc_auth_curve_server(z, what, s->curve_secret, why, wl);
        if (rc) {
            zmq_close(z);
            return rc;
        }
    }
    /* every peer passes the ZAP handler, which counts and bounds connections */
    int wrc = xc_auth_watch(s->auth, s->zctx, z, what, why, wl);
    if (wrc) {
        zmq_close(z);
        return wrc;
    }
    if (zmq_bind(z, ep) < 0) {
        xc_why(why, wl, "cannot bind the %s socket to %s: %s", what, ep, zmq_strerror(errno));
        xc_auth_unwatch(s->auth); /* before z closes; start-up fails anyway */
        zmq_close(z);
        return XC_EIO;
    }
    /* the umask (027) leaves the group without write, which connecting to a
     * unix socket needs: members of the run_dir's group may use the sockets */
    if (strncmp(ep, "ipc://", 6) == 0 && ep[6] != '@' && ep[6] != '*') chmod(ep + 6, 0770);
    *out = z;
    return XC_OK;
}

/* Creates dir if missing and checks that it is ours: a directory owned by
 * this user and not writable by others. A run_dir under /tmp that another
 * user made first (with a planted lock link or socket) is refused, never used. */
static int private_dir(const char *key, const char *dir, char *why, size_t wl)
{
    struct stat st;
    int rc = xc_mkdirs(dir, why, wl);
    if (rc) return rc;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        xc_why(why, wl, "%s %s is not a directory", key, dir);
        return XC_ECONFIG;
    }
    if (st.st_uid != geteuid() || (st.st_mode & S_IWOTH)) {
        xc_why(why, wl, "%s %s is %s (owner uid %lu, mode %03o): another user could plant files there; "
               "remove it or choose another %s", key, dir, st.st_uid != geteuid() ? "not owned by this user"
               : "writable by others", (unsigned long)st.st_uid, (unsigned)(st.st_mode & 0777), key);
        return XC_ECONFIG;
    }
    return XC_OK;
}

/* One daemon per run_dir: an advisory lock on RUN_DIR/xcoderd.lock (an ipc://
 * bind would silently steal another instance's socket files). The lock file
 * is never opened through a link. */
static int take_lock(xc_svc_t *s, char *why, size_t wl)
{
    char path[XC_CFG_STR_MAX + 80];
    int rc = private_dir("run_dir", s->cfg.run_dir, why, wl);
    if (rc) return rc;
    snprintf(path, sizeof path, "%s/xcoderd.lock", s->cfg.run_dir);
    s->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0640);
    struct stat st;
    if (s->lock_fd >= 0 && (fstat(s->lock_fd, &st) || !S_ISREG(st.st_mode) || st.st_uid != geteuid())) {
        xc_why(why, wl, "lock file %s is not a regular file of this user; remove it", path);
        return XC_ECONFIG;
    }
    if (s->lock_fd < 0) {
        xc_why(why, wl, "cannot open lock file %s: %s%s", path, strerror(errno),
               errno == ELOOP ? " (a symbolic link: remove it)" : "");
        return errno == ELOOP ? XC_ECONFIG : XC_EIO;
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


/* The ack ledger. An ack promises the tokens are queued in memory, not on
 * disk: a crash loses what was acked after the last checkpoint (beyond the
 * saved mixing buffer). To say how much, the loop keeps the number of tokens
 * acknowledged so far (all processes of this state_dir) in STATE_DIR/NAME.ledger,
 * rewritten in place at most every 100 ms (a process crash keeps the page
 * cache; a power loss may lose the last updates). At start, that number minus
 * what the resumed checkpoint covers (tokens trained + tokens in its saved
 * buffer) is what the previous process lost: logged, and counted in status
 * and the metrics as tokens_lost_at_start. */
static void ledger_path(const xc_svc_t *s, char *p, size_t n)
{
    snprintf(p, n, "%s/%s.ledger", s->cfg.state_dir, s->cfg.name);
}

static void ledger_open(xc_svc_t *s)
{
    char path[XC_CFG_STR_MAX + 80], buf[128];
    xc_trainer_status_t ts;
    xc_queue_counts_t qc;
    xc_trainer_status(s->trainer, &ts);
    xc_queue_counts(s->queue, &qc);
    s->ledger_base = ts.m.tokens + qc.tokens_restored; /* what the checkpoint covers */
    s->ledger_written = UINT64_MAX;
    s->ledger_fd = 1; /* in use; the file is opened for each update (a held fd would pin the filesystem rw) */
    ledger_path(s, path, sizeof path);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) return;
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    close(fd);
    unsigned long long acked = 0;
    if (n > 0) {
        buf[n] = 0;
        if (sscanf(buf, "acked %llu", &acked) == 1 && acked > s->ledger_base) {
            s->cnt.tokens_lost_at_start = acked - s->ledger_base;
            xc_log(XC_LOG_WARN, "the previous process acknowledged %llu tokens that its last checkpoint does not "
                   "hold (acked %llu, checkpoint covers %llu): they were lost (crash or failed final checkpoint)",
                   (unsigned long long)s->cnt.tokens_lost_at_start, acked, (unsigned long long)s->ledger_base);
        }
    }
}

/* Rewrites the ledger when the acked count changed (loop thread, tick). A
 * failure (full or read-only disk) is said once until a write works again. */
static void ledger_update(xc_svc_t *s)
{
    if (s->ledger_fd < 0) return;
    xc_queue_counts_t qc;
    xc_queue_counts(s->queue, &qc);
    uint64_t acked = s->ledger_base + qc.tokens_acked;
    if (acked == s->ledger_written) return;
    char path[XC_CFG_STR_MAX + 80], line[64];
    ledger_path(s, path, sizeof path);
    int n = snprintf(line, sizeof line, "acked %-20llu\n", (unsigned long long)acked); /* fixed width */
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0640);
    int ok = fd >= 0 && pwrite(fd, line, (size_t)n, 0) == n;
    int e = errno;
    if (fd >= 0) close(fd);
    if (ok) {
        s->ledger_written = acked;
        s->ledger_failing = 0;
    } else if (!s->ledger_failing) {
        s->ledger_failing = 1;
        xc_log(XC_LOG_WARN, "cannot update the ack ledger %s: %s (said once until it works again)", path,
               strerror(e));
    }
}

/* The ZAP handler, always: it bounds every socket's connections
 * (max_connections). CurveZMQ: with curve_secret_key, load the key and the
 * allow-lists (before any bind, so no client ever connects unauthenticated);
 * without it, a tcp endpoint beyond loopback is refused unless insecure_tcp = on. */
static int start_security(xc_svc_t *s, char *why, size_t wl)
{
    const char *eps[3] = {s->cfg.ingest, s->cfg.control, s->cfg.events};
    int rc;
    if (!s->cfg.curve_secret_key[0]) {
        xc_auth_lists_t none = {"", "", ""};
        s->auth = xc_auth_new(s->zctx, &none, s->cfg.max_connections, &rc, why, wl);
        if (!s->auth) return rc;
    }
    if (s->cfg.curve_secret_key[0]) {
        xc_keypair_t kp;
        rc = xc_keys_read(s->cfg.curve_secret_key, &kp, why, wl);
        if (rc) return rc;
        if (!kp.secret_z85[0]) {
            xc_why(why, wl, "curve_secret_key %s holds no secret key (give the BASE.key file of "
                   "`xcoderd --keygen BASE`)", s->cfg.curve_secret_key);
            return XC_ECONFIG;
        }
        memcpy(s->curve_secret, kp.secret_z85, sizeof s->curve_secret);
        char pub[XC_KEY_Z85_LEN + 1];
        memcpy(pub, kp.public_z85, sizeof pub);
        explicit_bzero(&kp, sizeof kp);
        xc_auth_lists_t l = auth_lists(&s->cfg);
        s->auth = xc_auth_new(s->zctx, &l, s->cfg.max_connections, &rc, why, wl);
        if (!s->auth) return rc;
        xc_log(XC_LOG_INFO, "tcp endpoints require CURVE (allow-lists: producers '%s', readers '%s', admins "
               "'%s'); server public key %s", s->cfg.allow_producers, s->cfg.allow_readers, s->cfg.allow_admins, pub);
        return XC_OK;
    }
    for (int i = 0; i < 3; i++) {
        if (!xc_auth_endpoint_remote(eps[i])) continue;
        if (!s->cfg.insecure_tcp) {
            xc_why(why, wl, "endpoint %s is reachable from other machines but no curve_secret_key is set: "
                   "anyone who reaches it could push data, read checkpoints and shut the daemon down. Make "
                   "keys (`xcoderd --keygen BASE`, set curve_secret_key and allow_* lists), bind "
                   "tcp://127.0.0.1 instead, or set insecure_tcp = on to accept the risk", eps[i]);
            return XC_ECONFIG;
        }
        s->insecure_remote = 1;
    }
    if (s->insecure_remote)
        xc_log(XC_LOG_WARN, "INSECURE: a tcp endpoint beyond loopback without CURVE (insecure_tcp = on): "
               "anyone who reaches it owns this daemon");
    return XC_OK;
}

/* Builds the service in dependency order: lock, model, queue, trainer
 * (resuming from a checkpoint), sockets, loop handles. Any failure unwinds
 * through xc_svc_destroy, which copes with a half-built service. */
xc_svc_t *xc_svc_new(const xc_cfg_t *cfg, int argc, char **argv, int *err, char *why, size_t wl)
{
    return xc_svc_new_sharded(cfg, NULL, argc, argv, err, why, wl);
}

xc_svc_t *xc_svc_new_sharded(const xc_cfg_t *cfg, xc_coll_t *coll, int argc, char **argv, int *err, char *why,
                             size_t wl)
{
    xc_engine_config_t ec;
    char *cj = NULL;
    int rc;
    double shard_extra = 0; /* rank 0 of a sharded job: its slice, beyond the bound */
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
    s->ledger_fd = -1;
    s->t_start = s->rate_t = xc_svc_mono_s();
    s->t_start_unix = xc_svc_unix_s();
    s->last_ckpt_step = -1;
    xc_buf_init(&s->out);
    for (int i = 0; i < XC_SVC_N_REFUSE; i++) s->log_budget[i] = XC_SVC_LOG_BUDGET;
    s->rl_reply = (xc_ratelimit_t)XC_RATELIMIT_INIT(5, 10.0);
    s->rl_control = (xc_ratelimit_t)XC_RATELIMIT_INIT(10, 1.0);

    if ((rc = take_lock(s, why, wl))) goto fail;
    if ((rc = private_dir("state_dir", s->cfg.state_dir, why, wl))) goto fail;
    xc_cfg_engine(&s->cfg, &ec);
    if (coll && coll->size > 1) {
        /* this rank's slice, and the unsharded container checkpoints go through
         * (one thread, fp32, a batch of one: it never trains, and its state views
         * do not depend on the batch size, so its step scratch stays small) */
        xc_engine_config_t fc = ec;
        fc.threads = 1;
        fc.encoder_precision = XC_PREC_FP32;
        fc.batch_size = 1;
        if (fc.k > fc.dict_size) fc.k = fc.dict_size;
        s->engine = xc_engine_new_sharded(&ec, coll, &rc);
        if (s->engine) s->full = xc_engine_new(&fc, &rc);
        if (s->full) s->shard = xc_shard_new(coll, s->engine, s->full, &rc);
    } else {
        s->engine = xc_engine_new(&ec, &rc);
    }
    if (!s->engine || (coll && coll->size > 1 && !s->shard)) {
        xc_why(why, wl, "cannot create the model (d = %ld, dict_size = %ld): %s", s->cfg.d,
                s->cfg.dict_size, xc_strerror(rc));
        goto fail;
    }
    if (s->shard) {
        long lo, n;
        xc_engine_shard(s->engine, &lo, &n);
        /* the memory bound counts one unsharded model (here: the container) and the
         * checkpoint copy; rank 0 also holds its slice (parameters, Adam, gradients) */
        shard_extra = 4.0 * 2.0 * (double)n * 2.0 * (double)s->cfg.d * 4.0;
        double bound0 = xc_cfg_memory_bound(&s->cfg, NULL);
        if (s->cfg.memory_limit > 0 && bound0 + shard_extra > (double)s->cfg.memory_limit) {
            rc = XC_ECONFIG;
            xc_why(why, wl, "rank 0 of %d may use %.0f MiB (the configuration's bound and its slice of %ld "
                   "latents), more than memory_limit (%.0f MiB): raise memory_limit, or lower queue_size, "
                   "max_msg_bytes, max_connections or ingest_hwm", coll->size, (bound0 + shard_extra) / 1048576.0,
                   n, (double)s->cfg.memory_limit / 1048576.0);
            goto fail;
        }
        xc_log(XC_LOG_INFO, "rank 0 of %d: latents [%ld, %ld) of %ld here; mpi_timeout = %g s", coll->size, lo,
               lo + n, s->cfg.dict_size, s->cfg.mpi_timeout);
    }
    {
        /* which product the encoder runs, and why not the one asked for */
        xc_prec_t want = ec.encoder_precision, got = xc_engine_metrics(s->engine)->precision;
        char pw[256] = "";
        if (want != XC_PREC_AUTO && want != got) {
            if (xc_score_supported(want, pw, sizeof pw))
                snprintf(pw, sizeof pw, "%s",
                         ec.model != XC_MODEL_BATCHTOPK ? "the L1 model scores in fp32" : "oneDNN refused the shape");
            xc_log(XC_LOG_WARN, "encoder_precision = %s not used: %s; running %s", xc_prec_name(want), pw,
                   xc_prec_name(got));
        }
        xc_log(XC_LOG_INFO, "encoder product: %s (%s), encoder_precision = %s, oneDNN isa %s", xc_prec_name(got),
               xc_engine_score_kernel(s->engine), xc_prec_name(want), xc_score_isa());
    }
    rc = XC_ENOMEM;
    if (xc_mix_parse(s->cfg.stream_mix, &s->mix, why, wl)) { /* checked by the config already */
        rc = XC_ECONFIG;
        goto fail;
    }
    s->queue = xc_queue_new_lanes(s->cfg.queue_size, xc_mix_lanes(&s->mix), wake_loop, s);
    if (s->mix.n > 0) s->held = calloc((size_t)s->cfg.stream_hold, sizeof *s->held); /* owned; xc_svc_destroy */
    cj = xc_svc_config_json(&s->cfg);
    if (!s->queue || !cj || (s->mix.n > 0 && !s->held)) {
        xc_why(why, wl, "out of memory creating the queue");
        goto fail;
    }
    if (s->mix.n > 0) {
        char desc[XC_MIX_MAX * 48] = "";
        for (int l = 0; l < s->mix.n; l++)
            snprintf(desc + strlen(desc), sizeof desc - strlen(desc), "%s%s %.3g", l ? ", " : "", s->mix.name[l],
                     s->mix.share[l]);
        xc_log(XC_LOG_INFO, "stream mixture: %s of every batch; %s; up to %ld batches of streams ahead held", desc,
               s->mix.other >= 0 ? "other streams and untagged batches share '*'" :
               "other streams and untagged batches are refused", s->cfg.stream_hold);
    }
    xc_trainer_opts_t to;
    memset(&to, 0, sizeof to);
    to.mix_tokens = s->cfg.mix_tokens;
    to.mix = &s->mix;
    to.seed = (uint64_t)s->cfg.seed;
    to.state_dir = s->cfg.state_dir;
    to.name = s->cfg.name;
    to.config_json = cj;
    to.notify = wake_loop;
    to.notify_ctx = s;
    unsigned shm_mode = 0640;
    xc_cfg_shm_mode(&s->cfg, &shm_mode);
    to.shm_instance = s->cfg.shm ? s->cfg.name : NULL;
    to.shm_mode = shm_mode;
    to.shm_owner = s->cfg.run_dir;
    to.why = why;
    to.why_len = wl;
    to.shm_interval = s->cfg.shm_interval;
    xc_cfg_thresholds(&s->cfg, &to.thresholds);
    to.checkpoint_keep = (int)s->cfg.checkpoint_keep;
    to.checkpoint_steps = s->cfg.checkpoint_steps;
    to.max_tokens = s->cfg.max_tokens > 0 ? (uint64_t)s->cfg.max_tokens : 0;
    to.normalize = s->cfg.normalize;
    to.normalize_tokens = s->cfg.normalize_tokens;
    to.target_rms = s->cfg.target_rms;
    to.exclude_positions_below = s->cfg.exclude_positions_below;
    to.outlier_norm_factor = s->cfg.outlier_norm_factor;
    xc_examples_config_default(&to.examples);
    to.examples.top_n = (int)s->cfg.examples_top;
    to.examples.random_n = (int)s->cfg.examples_random;
    to.examples.window = (int)s->cfg.examples_window;
    to.examples.store_tokens = s->cfg.examples_store_tokens;
    to.examples.vocab_bytes = ((size_t)s->cfg.examples_vocab_bytes + 7) & ~(size_t)7;
    to.examples.seed = (uint64_t)s->cfg.seed;
    to.vocab_file = s->cfg.vocab_file;
    to.full = s->full;
    to.shard = s->shard;
    s->trainer = xc_trainer_new(s->engine, s->queue, &to, &rc);
    free(cj);
    cj = NULL;
    if (!s->trainer && rc != XC_ESTATE) {
        xc_why(why, wl, "cannot create the trainer (mixing buffer of %ld tokens): %s", s->cfg.mix_tokens,
                xc_strerror(rc));
        goto fail;
    }
    if (!s->trainer) goto fail; /* why names the daemon that holds the shared memory */
    /* continue from the newest valid checkpoint (or --resume / --fresh) */
    if ((rc = xc_trainer_resume(s->trainer, s->cfg.resume[0] ? s->cfg.resume : NULL, s->cfg.fresh, why, wl)))
        goto fail;
    ledger_open(s);
    double per_conn, bound = xc_cfg_memory_bound(&s->cfg, &per_conn) + shard_extra;
    xc_log(XC_LOG_INFO, "memory bound: %.0f MiB = model and Adam%s, queue, mixing buffer, reply backlog, and "
           "max_connections (%ld per socket) x %.1f MiB per connection of each socket (ZeroMQ's buffers)%s",
           bound / 1048576.0, shard_extra > 0 ? " (and rank 0's slice)" : "", s->cfg.max_connections,
           per_conn / 1048576.0,
           s->cfg.memory_limit > 0 ? "; within memory_limit" : "");
    s->zctx = zmq_ctx_new();
    if (!s->zctx) {
        rc = XC_ESYS;
        xc_why(why, wl, "cannot create a ZeroMQ context: %s", zmq_strerror(errno));
        goto fail;
    }
    if ((rc = start_security(s, why, wl))) goto fail;
    if ((rc = open_socket(s, &s->ingest, ZMQ_ROUTER, s->cfg.ingest, "ingest", why, wl)) ||
        (rc = open_socket(s, &s->control, ZMQ_ROUTER, s->cfg.control, "control", why, wl)) ||
        (rc = open_socket(s, &s->events, ZMQ_PUB, s->cfg.events, "events", why, wl)) ||
        (rc = xc_auth_start(s->auth, why, wl)))
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
    s->remote = xc_remote_new(&s->loop, s->cfg.state_dir, sizeof(xc_svc_envelope_t), xc_svc_remote_reply, s);
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

/* Starts the trainer and every handle, tells systemd READY, and runs the
 * loop until the shutdown path closes it; the result is the final
 * checkpoint's. */
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
           s->cfg.name, xc_cfg_enum_name("model", s->cfg.model), s->cfg.d, s->cfg.dict_size, s->cfg.k, s->cfg.batch_size, s->cfg.ingest,
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
    xc_svc_drain_all(s);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    xc_trainer_join(s->trainer);
    return s->result;
}

/* Tears down in reverse order; safe on a half-built service (xc_svc_new
 * failing) and after a run. The ipc socket files we bound are removed. */
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
    xc_auth_unwatch(s->auth); /* the monitors stop before their sockets close */
    if (s->ingest) zmq_close(s->ingest);
    if (s->control) zmq_close(s->control);
    if (s->events) zmq_close(s->events);
    xc_auth_destroy(&s->auth); /* its thread and socket go before the context */
    explicit_bzero(s->curve_secret, sizeof s->curve_secret);
    if (s->zctx) zmq_ctx_term(s->zctx);
    if (s->bound) { /* libzmq leaves ipc:// socket files behind; they are ours (we bound them) */
        const char *eps[] = {s->cfg.ingest, s->cfg.control, s->cfg.events};
        for (int i = 0; i < 3; i++)
            if (strncmp(eps[i], "ipc://", 6) == 0 && eps[i][6] != '*' && eps[i][6] != '@')
                unlink(eps[i] + 6);
    }
    if (s->ledger_fd >= 0 && s->queue) ledger_update(s); /* the last acks; before the queue goes */
    xc_svc_pending_free_all(s);
    xc_svc_backlog_free(s);
    xc_remote_destroy(&s->remote);
    xc_snapshot_free(&s->snap);
    xc_trainer_destroy(&s->trainer);
    for (long i = 0; i < s->n_held; i++) { /* normally answered at shutdown already */
        free(s->held[i].item.x);
        free(s->held[i].item.meta);
    }
    free(s->held);
    xc_queue_destroy(&s->queue);
    xc_shard_destroy(&s->shard);
    xc_engine_destroy(&s->full);
    xc_engine_destroy(&s->engine);
    if (s->lock_fd >= 0) close(s->lock_fd);
    xc_buf_free(&s->out);
    free(s);
    *ps = NULL;
}

