/* libxcoder: connection, ingest with a window of unacked batches, control
 * requests and event subscription over ZeroMQ (PROTOCOL.md). Frames are built
 * and parsed only by proto/ (xc_proto_*); this file moves them. */
#include "xcoder.h"
#include "xc_client_internal.h"
#include "xc_keys.h"
#include "xc_proto.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <time.h>
#include <zmq.h>

_Static_assert((int)XC_CLIENT_DTYPE_F32 == (int)XC_DTYPE_F32, "dtype codes differ");
_Static_assert((int)XC_CLIENT_DTYPE_F16 == (int)XC_DTYPE_F16, "dtype codes differ");
_Static_assert((int)XC_CLIENT_DTYPE_BF16 == (int)XC_DTYPE_BF16, "dtype codes differ");

#define XC_CLIENT_WINDOW_MAX 1024
#define XC_CLIENT_POLL_SLICE_MS 200 /* re-check the cancel flag at least this often */

typedef enum { SOCK_INGEST = 0, SOCK_CONTROL, SOCK_EVENTS, SOCK__N } sock_kind_t;
static const char *const sock_names[SOCK__N] = {"ingest", "control", "events"};

struct xc_client {
    void *zctx;
    void *sock[SOCK__N];          /* NULL until first use */
    char *endpoint[SOCK__N];      /* owned */
    char producer[XC_PROTO_PRODUCER_MAX + 1];
    int window, timeout_ms;
    const volatile int *cancel;   /* borrowed */

    /* ingest */
    uint64_t next_seq;
    int vocab_only;           /* only vocabulary chunks in flight: their acks count pieces, not tokens */
    int in_flight;
    xc_client_push_stats_t st;
    int pending_err;              /* first nack code not yet returned, 0 none */
    int have_nack;
    uint64_t nack_seq;
    int nack_code;
    char nack_reason[XC_PROTO_REASON_MAX + 64];

    /* control */
    int64_t next_id;

    /* CurveZMQ for tcp:// endpoints; curve == 0: plain */
    int curve;
    xc_keypair_t key;
    char server_pub[XC_KEY_Z85_LEN + 1];

    xc_buf_t buf;                 /* scratch for encoding */
    char err[768];
};

/* ------------------------------------------------------------------ errors */

static int set_err(xc_client_t *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int set_err(xc_client_t *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    return code;
}

const char *xc_client_last_error(const xc_client_t *c) { return c ? c->err : "no client"; }

/* ---------------------------------------------------------------- lifecycle */

void xc_client_options_default(xc_client_options_t *o)
{
    memset(o, 0, sizeof *o);
    const char *env = getenv("XCODER_RUN_DIR");
    o->run_dir = (env && *env) ? env : NULL;
    o->name = NULL;
    o->window = 8;
    o->timeout_ms = 30000;
    o->server_key = NULL;
    o->client_key = NULL;
}

static __thread char g_new_err[600];

const char *xc_client_new_error(void) { return g_new_err; }

/* Loads the CurveZMQ keys named by the options or the environment. */
static int load_curve(xc_client_t *c, const xc_client_options_t *o)
{
    const char *srv = o->server_key ? o->server_key : getenv("XCODER_SERVER_KEY");
    const char *cli = o->client_key ? o->client_key : getenv("XCODER_CLIENT_KEY");
    if (!srv || !*srv) return XC_OK;
    int rc = xc_keys_public_from(srv, c->server_pub, g_new_err, sizeof g_new_err);
    if (rc) return rc;
    if (!cli || !*cli) {
        xc_why(g_new_err, sizeof g_new_err, "a server key is set but no client key: give this client a key "
               "file (--key BASE.key or XCODER_CLIENT_KEY; make one with `xcoder keygen BASE`)");
        return XC_EINVAL;
    }
    if ((rc = xc_keys_read(cli, &c->key, g_new_err, sizeof g_new_err))) return rc;
    if (!c->key.secret_z85[0]) {
        xc_why(g_new_err, sizeof g_new_err, "client key %s holds no secret key (give the .key file, not the .pub)",
               cli);
        return XC_EINVAL;
    }
    c->curve = 1;
    return XC_OK;
}

/* Mirrors the daemon's derivation (daemon/config.c, xc_cfg_finalize). */
int xc_client_default_run_dir(const char *name, char *out, size_t out_len)
{
    const char *x = getenv("XDG_RUNTIME_DIR");
    char probe[600], sys[300];
    if (!name || !*name) name = "default";
    int n = x && *x ? snprintf(out, out_len, "%s/xcoderd-%s", x, name) : snprintf(out, out_len, "/tmp/xcoderd-%s", name);
    if (n < 0 || (size_t)n >= out_len) return XC_EINVAL;
    /* nothing listening there, but a daemon run by systemd (RuntimeDirectory: xcoderd.service
     * is /run/xcoderd, xcoderd@NAME.service /run/xcoderd-NAME) is: use that */
    snprintf(probe, sizeof probe, "%s/control.sock", out);
    if (access(probe, F_OK) == 0) return XC_OK;
    if (strcmp(name, "default") == 0) snprintf(sys, sizeof sys, "%s/xcoderd", xc_client_system_run_root());
    else snprintf(sys, sizeof sys, "%s/xcoderd-%s", xc_client_system_run_root(), name);
    snprintf(probe, sizeof probe, "%s/control.sock", sys);
    if (access(probe, F_OK) == 0 && strlen(sys) < out_len) snprintf(out, out_len, "%s", sys);
    return XC_OK;
}

const char *xc_client_system_run_root(void)
{
    const char *r = getenv("XCODER_SYSTEM_RUN_ROOT"); /* tests point it at a temp dir */
    return r && *r ? r : "/run";
}

static char *dup_endpoint(const char *given, const char *run_dir, const char *file)
{
    if (given && *given) return strdup(given);
    size_t n = strlen(run_dir) + strlen(file) + 16;
    char *s = malloc(n);
    if (s) snprintf(s, n, "ipc://%s/%s", run_dir, file);
    return s;
}

xc_client_t *xc_client_new(const xc_client_options_t *o, int *err)
{
    xc_client_options_t def;
    int rc = XC_ENOMEM;
    if (!o) {
        xc_client_options_default(&def);
        o = &def;
    }
    char derived[512];
    g_new_err[0] = 0;
    const char *run_dir = o->run_dir;
    if (!run_dir || !*run_dir) {
        if (xc_client_default_run_dir(o->name, derived, sizeof derived) != XC_OK) {
            rc = XC_EINVAL;
            goto out;
        }
        run_dir = derived;
    }
    if (o->window < 0 || o->window > XC_CLIENT_WINDOW_MAX ||
        (o->producer && strlen(o->producer) > XC_PROTO_PRODUCER_MAX)) {
        rc = XC_EINVAL;
        goto out;
    }
    xc_client_t *c = calloc(1, sizeof *c);
    if (!c) goto out;
    if ((rc = load_curve(c, o))) goto out_free_client;
    rc = XC_ENOMEM;
    c->window = o->window ? o->window : 8;
    c->timeout_ms = o->timeout_ms;
    if (o->producer) snprintf(c->producer, sizeof c->producer, "%s", o->producer);
    c->endpoint[SOCK_INGEST] = dup_endpoint(o->ingest, run_dir, "ingest.sock");
    c->endpoint[SOCK_CONTROL] = dup_endpoint(o->control, run_dir, "control.sock");
    c->endpoint[SOCK_EVENTS] = dup_endpoint(o->events, run_dir, "events.sock");
    if (!c->endpoint[0] || !c->endpoint[1] || !c->endpoint[2]) goto out_free_client;
    c->zctx = zmq_ctx_new();
    if (!c->zctx) {
        rc = XC_ESYS;
        goto out_free_client;
    }
    c->st.credit = -1;
    c->next_id = 1;
    xc_buf_init(&c->buf);
    if (err) *err = XC_OK;
    return c;

out_free_client:
    for (int i = 0; i < SOCK__N; i++) free(c->endpoint[i]);
    free(c);
out:
    if (err) *err = rc;
    return NULL;
}

void xc_client_destroy(xc_client_t **cp)
{
    if (!cp || !*cp) return;
    xc_client_t *c = *cp;
    for (int i = 0; i < SOCK__N; i++) {
        if (c->sock[i]) zmq_close(c->sock[i]);
        free(c->endpoint[i]);
    }
    if (c->zctx) zmq_ctx_term(c->zctx);
    explicit_bzero(&c->key, sizeof c->key); /* the secret key does not outlive the client */
    xc_buf_free(&c->buf);
    free(c);
    *cp = NULL;
}

const char *xc_client_endpoint(const xc_client_t *c, const char *which)
{
    if (!c || !which) return NULL;
    for (int i = 0; i < SOCK__N; i++)
        if (strcmp(which, sock_names[i]) == 0) return c->endpoint[i];
    return NULL;
}

void xc_client_set_timeout(xc_client_t *c, int timeout_ms)
{
    if (c) c->timeout_ms = timeout_ms;
}

void xc_client_set_cancel_flag(xc_client_t *c, const volatile int *flag)
{
    if (c) c->cancel = flag;
}

/* An ipc endpoint whose socket file does not exist has no daemon behind it:
 * say so at once instead of after the whole timeout. A tcp endpoint, or a socket
 * file nobody answers on, still waits for the timeout. */
static int ipc_present(xc_client_t *c, sock_kind_t k)
{
    const char *ep = c->endpoint[k];
    struct stat st;
    if (strncmp(ep, "ipc://", 6) != 0 || stat(ep + 6, &st) == 0) return XC_OK;
    return set_err(c, XC_ENOTFOUND,
                   "no daemon is listening: %s does not exist (start xcoderd, or pass the --run-dir or --name "
                   "it uses)",
                   ep + 6);
}

/* Opens socket `k` on first use. */
static int ensure_socket(xc_client_t *c, sock_kind_t k)
{
    static const int types[SOCK__N] = {ZMQ_DEALER, ZMQ_DEALER, ZMQ_SUB};
    if (c->sock[k]) return XC_OK;
    void *s = zmq_socket(c->zctx, types[k]);
    if (!s) return set_err(c, XC_ESYS, "cannot create the %s socket: %s", sock_names[k], zmq_strerror(errno));
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    if (c->curve && strncmp(c->endpoint[k], "tcp://", 6) == 0 &&
        (zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, c->server_pub, XC_KEY_Z85_LEN) ||
         zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, c->key.public_z85, XC_KEY_Z85_LEN) ||
         zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, c->key.secret_z85, XC_KEY_Z85_LEN))) {
        int e = errno;
        zmq_close(s);
        return set_err(c, XC_ESYS, "cannot set the CURVE keys on the %s socket: %s", sock_names[k],
                       zmq_strerror(e));
    }
    if (zmq_connect(s, c->endpoint[k]) != 0) {
        int e = errno;
        zmq_close(s);
        return set_err(c, XC_EINVAL, "cannot connect the %s socket to '%s': %s (endpoints look like ipc:///path/x.sock or tcp://host:port)",
                       sock_names[k], c->endpoint[k], zmq_strerror(e));
    }
    c->sock[k] = s;
    return XC_OK;
}

/* ------------------------------------------------------------------ timing */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t deadline_of(int timeout_ms) { return timeout_ms < 0 ? -1 : now_ms() + timeout_ms; }

/* Waits for `events` on socket k until the deadline (-1 = none). 1 ready, 0
 * timed out, negative code (cancelled, zmq failure). */
static int wait_sock(xc_client_t *c, sock_kind_t k, short events, int64_t deadline)
{
    for (;;) {
        if (c->cancel && *c->cancel) return set_err(c, XC_EAGAIN, "interrupted");
        long wait = XC_CLIENT_POLL_SLICE_MS;
        if (deadline >= 0) {
            int64_t left = deadline - now_ms();
            if (left <= 0) left = 0;
            if (left < wait) wait = (long)left;
        }
        zmq_pollitem_t it = {c->sock[k], 0, events, 0};
        int r = zmq_poll(&it, 1, wait);
        if (r < 0) {
            if (errno == EINTR) continue;
            return set_err(c, XC_ESYS, "waiting on the %s socket failed: %s", sock_names[k], zmq_strerror(errno));
        }
        if (r > 0 && (it.revents & events)) return 1;
        if (deadline >= 0 && now_ms() >= deadline) return 0;
    }
}

/* A hint for "nothing answered": is the ipc socket file there at all? */
static void no_daemon_hint(const xc_client_t *c, sock_kind_t k, char *out, size_t n)
{
    const char *ep = c->endpoint[k];
    struct stat st;
    if (strncmp(ep, "ipc://", 6) == 0 && stat(ep + 6, &st) != 0)
        snprintf(out, n, "no daemon is listening: %s does not exist (start xcoderd, or pass the --run-dir it uses)", ep + 6);
    else
        snprintf(out, n, "is xcoderd running and listening on %s?", ep);
}

/* Receives one whole message from socket k (DEALER: body frames only); keeps
 * the first and last frames of interest in msgs[0..n). */
static int recv_multipart(xc_client_t *c, sock_kind_t k, zmq_msg_t *msgs, int max, int *n)
{
    int more = 1;
    *n = 0;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, c->sock[k], ZMQ_DONTWAIT) < 0) {
            int e = errno;
            zmq_msg_close(&m);
            if (e == EINTR) continue;
            for (int i = 0; i < *n; i++) zmq_msg_close(&msgs[i]);
            *n = 0;
            if (e == EAGAIN) return XC_EAGAIN;
            return set_err(c, XC_ESYS, "receive on the %s socket failed: %s", sock_names[k], zmq_strerror(e));
        }
        more = zmq_msg_more(&m);
        if (*n < max) msgs[(*n)++] = m; /* moved */
        else zmq_msg_close(&m);         /* extra frames: ignored */
    }
    return XC_OK;
}

/* Sends frames[0..n) as one message, waiting for the socket to accept it. */
static int send_frames(xc_client_t *c, sock_kind_t k, const void *const *data, const size_t *len, int n,
                       int64_t deadline)
{
    for (int i = 0; i < n; i++) {
        int flags = ZMQ_DONTWAIT | (i + 1 < n ? ZMQ_SNDMORE : 0);
        for (;;) {
            if (zmq_send(c->sock[k], data[i], len[i], flags) >= 0) break;
            if (errno == EINTR) continue;
            if (errno != EAGAIN)
                return set_err(c, XC_ESYS, "send on the %s socket failed: %s", sock_names[k], zmq_strerror(errno));
            /* only the first frame can block: later frames of a message are atomic */
            int w = wait_sock(c, k, ZMQ_POLLOUT, deadline);
            if (w < 0) return w;
            if (w == 0) {
                char hint[400];
                no_daemon_hint(c, k, hint, sizeof hint);
                return set_err(c, XC_ETIMEDOUT, "could not send to the daemon (%s socket full): %s", sock_names[k], hint);
            }
        }
    }
    return XC_OK;
}

/* ------------------------------------------------------------------ ingest */

/* Handles one ingest reply frame: counts it, records a nack. */
static void handle_ingest_reply(xc_client_t *c, const void *buf, size_t len)
{
    xc_ingest_reply_t r;
    char why[256];
    if (c->in_flight > 0) c->in_flight--;
    int rc = xc_proto_ingest_reply_decode(buf, len, &r, why, sizeof why);
    if (rc != XC_OK) {
        /* Not understood: count it as a refusal so that the caller hears of it. */
        c->st.batches_nacked++;
        c->have_nack = 1;
        c->nack_seq = 0;
        c->nack_code = rc;
        snprintf(c->nack_reason, sizeof c->nack_reason, "unreadable reply from the daemon: %s", why);
        if (!c->pending_err) c->pending_err = rc;
        return;
    }
    if (r.ack) {
        c->st.batches_acked++;
        if (!c->vocab_only) c->st.tokens_acked += r.n;
        c->st.credit = r.credit;
        return;
    }
    c->st.batches_nacked++;
    c->have_nack = 1;
    c->nack_seq = r.has_seq ? r.seq : 0;
    c->nack_code = r.code < 0 ? r.code : XC_EPROTO;
    snprintf(c->nack_reason, sizeof c->nack_reason, "%s", r.reason);
    if (!c->pending_err) c->pending_err = c->nack_code;
}

/* Reads every reply available now (wait = 0) or waits for at least one. */
static int pump_ingest(xc_client_t *c, int64_t deadline, int wait)
{
    int got = 0;
    for (;;) {
        zmq_msg_t m[4];
        int n;
        int rc = recv_multipart(c, SOCK_INGEST, m, 4, &n);
        if (rc == XC_EAGAIN) {
            if (got || !wait) return XC_OK;
            int w = wait_sock(c, SOCK_INGEST, ZMQ_POLLIN, deadline);
            if (w < 0) return w;
            if (w == 0) {
                char hint[400];
                no_daemon_hint(c, SOCK_INGEST, hint, sizeof hint);
                return set_err(c, XC_ETIMEDOUT,
                               "no reply from the daemon for %d ms with %d batch(es) in flight: %s "
                               "(if the daemon is just slow, raise the timeout)",
                               c->timeout_ms, c->in_flight, hint);
            }
            continue;
        }
        if (rc < 0) return rc;
        if (n > 0) {
            /* the reply is the last frame (a REQ-style delimiter may precede it) */
            handle_ingest_reply(c, zmq_msg_data(&m[n - 1]), zmq_msg_size(&m[n - 1]));
            got = 1;
        }
        for (int i = 0; i < n; i++) zmq_msg_close(&m[i]);
    }
}

/* Returns (and clears) a nack seen since the last call, with its message. */
static int take_pending(xc_client_t *c)
{
    int e = c->pending_err;
    if (!e) return XC_OK;
    c->pending_err = 0;
    return set_err(c, e, "the daemon refused batch %llu: %s (%s)", (unsigned long long)c->nack_seq,
                   c->nack_reason, xc_errname(e));
}

int xc_client_push(xc_client_t *c, const void *data, xc_client_dtype_t dtype, long n_tokens, int d)
{
    return xc_client_push_ctx(c, data, dtype, n_tokens, d, NULL, NULL, NULL);
}

int xc_client_push_ctx(xc_client_t *c, const void *data, xc_client_dtype_t dtype, long n_tokens, int d,
                       const uint32_t *token_ids, const uint32_t *positions, const char *stream)
{
    if (!c) return XC_EINVAL;
    if (!data || n_tokens < 1 || d < 1)
        return set_err(c, XC_EINVAL, "push: need data and n_tokens >= 1, d >= 1 (got n_tokens %ld, d %d)", n_tokens, d);
    if (dtype != XC_CLIENT_DTYPE_F32 && dtype != XC_CLIENT_DTYPE_F16 && dtype != XC_CLIENT_DTYPE_BF16)
        return set_err(c, XC_EDTYPE, "push: unknown dtype %d (use XC_CLIENT_DTYPE_F32, _F16 or _BF16)", (int)dtype);
    int rc = c->sock[SOCK_INGEST] ? XC_OK : ipc_present(c, SOCK_INGEST);
    if (rc == XC_OK) rc = ensure_socket(c, SOCK_INGEST);
    if (rc < 0) return rc;
    int64_t deadline = deadline_of(c->timeout_ms);

    rc = pump_ingest(c, deadline, 0);
    while (rc == XC_OK && !c->pending_err && c->in_flight >= c->window) rc = pump_ingest(c, deadline, 1);
    if (rc < 0) return rc;
    if (c->pending_err) return take_pending(c);

    xc_batch_hdr_t h;
    memset(&h, 0, sizeof h);
    h.v = XC_PROTO_VERSION;
    snprintf(h.producer, sizeof h.producer, "%s", c->producer);
    h.seq = c->next_seq;
    h.has_seq = 1;
    h.n = (uint64_t)n_tokens;
    h.d = (uint32_t)d;
    h.dtype = (xc_dtype_t)dtype;
    h.has_tokens = token_ids != NULL;
    h.has_pos = positions != NULL;
    if (stream && strlen(stream) >= sizeof h.stream)
        return set_err(c, XC_EINVAL, "push: stream tag '%.40s' is longer than %d bytes", stream, XC_PROTO_STREAM_MAX);
    snprintf(h.stream, sizeof h.stream, "%s", stream ? stream : "");
    xc_buf_reset(&c->buf);
    rc = xc_proto_batch_hdr_encode(&c->buf, &h);
    if (rc < 0) return set_err(c, rc, "push: cannot encode the batch header: %s", xc_strerror(rc));
    size_t payload = xc_proto_payload_bytes(&h);
    if (payload == 0) return set_err(c, XC_ETOOBIG, "push: batch of %ld tokens x d %d is too large", n_tokens, d);

    /* token ids and (doc, pos) pairs travel as u32 LE: this library runs on
     * little-endian hosts only, as the payload (checked at build time by the tests) */
    const void *frames[4] = {c->buf.data, data};
    size_t lens[4] = {c->buf.len, payload};
    int nf = 2;
    if (token_ids) frames[nf] = token_ids, lens[nf++] = 4 * (size_t)n_tokens;
    if (positions) frames[nf] = positions, lens[nf++] = 8 * (size_t)n_tokens;
    rc = send_frames(c, SOCK_INGEST, frames, lens, nf, deadline);
    if (rc < 0) return rc;
    c->next_seq++;
    c->in_flight++;
    c->st.batches_sent++;
    c->st.tokens_sent += (uint64_t)n_tokens;
    return XC_OK;
}

int xc_client_send_vocab(xc_client_t *c, const char *stream, uint32_t first, uint32_t n, const char *const *pieces)
{
    if (!c) return XC_EINVAL;
    if (!pieces || n == 0) return set_err(c, XC_EINVAL, "send_vocab: need at least one piece");
    int rc = xc_client_flush(c); /* alone in flight: its acks count pieces */
    if (rc < 0) return rc;
    rc = ensure_socket(c, SOCK_INGEST);
    if (rc < 0) return rc;
    const uint32_t chunk = 65536;
    xc_buf_t lens, bytes;
    xc_buf_init(&lens);
    xc_buf_init(&bytes);
    c->vocab_only = 1;
    for (uint32_t i = 0; i < n && rc == XC_OK; i += chunk) {
        uint32_t m = n - i < chunk ? n - i : chunk;
        xc_batch_hdr_t h;
        memset(&h, 0, sizeof h);
        snprintf(h.producer, sizeof h.producer, "%s", c->producer);
        snprintf(h.stream, sizeof h.stream, "%s", stream ? stream : "");
        h.seq = c->next_seq;
        h.first = first + i;
        h.n = m;
        xc_buf_reset(&c->buf), xc_buf_reset(&lens), xc_buf_reset(&bytes);
        if ((rc = xc_proto_vocab_hdr_encode(&c->buf, &h)) < 0) {
            rc = set_err(c, rc, "send_vocab: bad stream tag '%.40s' (at most %d bytes of [A-Za-z0-9._:/-])",
                         stream ? stream : "", XC_PROTO_STREAM_MAX);
            break;
        }
        for (uint32_t k = 0; k < m; k++) {
            const char *p = pieces[i + k] ? pieces[i + k] : "";
            uint32_t len = (uint32_t)strlen(p);
            uint8_t le[4] = {(uint8_t)len, (uint8_t)(len >> 8), (uint8_t)(len >> 16), (uint8_t)(len >> 24)};
            xc_buf_append(&lens, le, 4);
            xc_buf_append(&bytes, p, len);
        }
        if (lens.err || bytes.err) {
            rc = set_err(c, XC_ENOMEM, "send_vocab: out of memory");
            break;
        }
        const void *frames[3] = {c->buf.data, lens.data, bytes.data ? (const void *)bytes.data : ""};
        size_t fl[3] = {c->buf.len, lens.len, bytes.len};
        rc = send_frames(c, SOCK_INGEST, frames, fl, 3, deadline_of(c->timeout_ms));
        if (rc < 0) break;
        c->next_seq++;
        c->in_flight++;
        c->st.batches_sent++;
    }
    if (rc >= 0) rc = xc_client_flush(c);
    c->vocab_only = 0;
    xc_buf_free(&lens);
    xc_buf_free(&bytes);
    return rc;
}

int xc_client_flush(xc_client_t *c)
{
    if (!c) return XC_EINVAL;
    if (!c->sock[SOCK_INGEST]) return XC_OK;
    int64_t deadline = deadline_of(c->timeout_ms);
    int rc = XC_OK;
    while (rc == XC_OK && c->in_flight > 0) rc = pump_ingest(c, deadline, 1);
    if (rc < 0) return rc;
    return take_pending(c);
}

void xc_client_push_stats(const xc_client_t *c, xc_client_push_stats_t *out)
{
    if (!c || !out) return;
    *out = c->st;
    out->in_flight = c->in_flight;
}

int xc_client_last_nack(const xc_client_t *c, uint64_t *seq, int *code, const char **reason)
{
    if (!c || !c->have_nack) return XC_ENOTFOUND;
    if (seq) *seq = c->nack_seq;
    if (code) *code = c->nack_code;
    if (reason) *reason = c->nack_reason;
    return XC_OK;
}

/* ----------------------------------------------------------------- control */

/* Is this reply the one for request `id`? (Replies to earlier requests that
 * timed out can still arrive on a DEALER socket; they are dropped.) */
static int reply_matches(const void *buf, size_t len, int64_t id)
{
    xc_mp_doc_t *doc = NULL;
    int64_t got = -1;
    if (xc_mp_doc_parse(buf, len, &doc, NULL, 0) != XC_OK) return 1; /* let decode report it */
    xc_mp_node_t n = xc_mp_get(xc_mp_root(doc), "id");
    int ok = xc_mp_type(n) == XC_MP_NONE || (xc_mp_as_i64(n, &got) == XC_OK && got == id);
    xc_mp_doc_free(&doc);
    return ok;
}

int xc_client_request(xc_client_t *c, const char *op, const xc_client_arg_t *args, size_t nargs,
                      xc_client_value_t **reply)
{
    if (reply) *reply = NULL;
    if (!c) return XC_EINVAL;
    if (!op || !*op || strlen(op) > XC_PROTO_OP_MAX || (nargs && !args))
        return set_err(c, XC_EINVAL, "request: need an op name of 1..%d bytes", XC_PROTO_OP_MAX);
    int rc = ipc_present(c, SOCK_CONTROL);
    if (rc == XC_OK) rc = ensure_socket(c, SOCK_CONTROL);
    if (rc < 0) return rc;

    int64_t id = c->next_id++;
    xc_mpw_t w;
    xc_buf_reset(&c->buf);
    xc_mpw_init(&w, &c->buf);
    xc_proto_request_begin(&w, op, id);
    for (size_t i = 0; i < nargs; i++) {
        const xc_client_arg_t *a = &args[i];
        if (!a->key) return set_err(c, XC_EINVAL, "request %s: argument %zu has no key", op, i);
        switch (a->type) {
        case XC_ARG_INT: xc_mpw_kv_int(&w, a->key, a->i); break;
        case XC_ARG_DOUBLE: xc_mpw_kv_double(&w, a->key, a->f); break;
        case XC_ARG_STR: xc_mpw_kv_str(&w, a->key, a->s); break;
        case XC_ARG_BOOL: xc_mpw_kv_bool(&w, a->key, a->i != 0); break;
        default: return set_err(c, XC_EINVAL, "request %s: argument '%s' has an unknown type", op, a->key);
        }
    }
    xc_mpw_map_end(&w);
    rc = xc_mpw_finish(&w);
    if (rc < 0) return set_err(c, rc, "request %s: cannot encode: %s", op, xc_strerror(rc));

    int64_t deadline = deadline_of(c->timeout_ms);
    const void *frames[1] = {c->buf.data};
    size_t lens[1] = {c->buf.len};
    rc = send_frames(c, SOCK_CONTROL, frames, lens, 1, deadline);
    if (rc < 0) return rc;

    for (;;) {
        zmq_msg_t m[4];
        int n;
        rc = recv_multipart(c, SOCK_CONTROL, m, 4, &n);
        if (rc == XC_EAGAIN) {
            int wr = wait_sock(c, SOCK_CONTROL, ZMQ_POLLIN, deadline);
            if (wr < 0) return wr;
            if (wr == 0) {
                char hint[400];
                no_daemon_hint(c, SOCK_CONTROL, hint, sizeof hint);
                return set_err(c, XC_ETIMEDOUT, "no reply to '%s' within %d ms: %s", op, c->timeout_ms, hint);
            }
            continue;
        }
        if (rc < 0) return rc;
        if (n == 0) continue;
        const void *body = zmq_msg_data(&m[n - 1]);
        size_t blen = zmq_msg_size(&m[n - 1]);
        if (!reply_matches(body, blen, id)) {
            for (int i = 0; i < n; i++) zmq_msg_close(&m[i]);
            continue;
        }
        xc_mp_doc_t *doc = NULL;
        char msg[XC_PROTO_REASON_MAX + 64] = "";
        rc = xc_proto_reply_decode(body, blen, &doc, msg, sizeof msg);
        /* the parsed doc points into the frame: keep the frames until it is converted */
        int e = XC_OK, had_doc = doc != NULL;
        if (rc >= 0 && reply) *reply = xc_client_value_from_node(xc_mp_root(doc), &e);
        xc_mp_doc_free(&doc);
        for (int i = 0; i < n; i++) zmq_msg_close(&m[i]);
        if ((rc == XC_EPROTO || rc == XC_EVERSION) && !had_doc)
            return set_err(c, rc, "unreadable reply to '%s': %s", op, msg[0] ? msg : xc_strerror(rc));
        if (rc < 0) {
            if (rc == XC_EUNKNOWN)
                return set_err(c, rc, "the daemon does not know '%s' (is it older than this client?): %s", op, msg);
            return set_err(c, rc, "the daemon refused '%s': %s (%s)", op, msg[0] ? msg : xc_strerror(rc), xc_errname(rc));
        }
        if (reply && !*reply) return set_err(c, e, "reply to '%s' could not be decoded: %s", op, xc_strerror(e));
        c->err[0] = 0;
        return XC_OK;
    }
}

int xc_client_ping(xc_client_t *c, xc_client_value_t **r) { return xc_client_request(c, "ping", NULL, 0, r); }
int xc_client_status(xc_client_t *c, xc_client_value_t **r) { return xc_client_request(c, "status", NULL, 0, r); }
int xc_client_checkpoint(xc_client_t *c, xc_client_value_t **r) { return xc_client_request(c, "checkpoint", NULL, 0, r); }
int xc_client_pause(xc_client_t *c, xc_client_value_t **r) { return xc_client_request(c, "pause", NULL, 0, r); }
int xc_client_resume(xc_client_t *c, xc_client_value_t **r) { return xc_client_request(c, "resume", NULL, 0, r); }
int xc_client_shutdown(xc_client_t *c, xc_client_value_t **r) { return xc_client_request(c, "shutdown", NULL, 0, r); }

int xc_client_latent(xc_client_t *c, long j, xc_client_value_t **r)
{
    if (r) *r = NULL;
    if (c && j < 0) return set_err(c, XC_EINVAL, "latent index must be >= 0 (got %ld)", j);
    xc_client_arg_t a = {.key = "j", .type = XC_ARG_INT, .i = j};
    return xc_client_request(c, "latent", &a, 1, r);
}

int xc_client_top(xc_client_t *c, const char *by, long n, int ascending, int alive_only,
                  xc_client_value_t **r)
{
    if (r) *r = NULL;
    if (c && (!by || !*by || n < 1))
        return set_err(c, XC_EINVAL, "top: need a field name and n >= 1");
    xc_client_arg_t a[4] = {
        {.key = "by", .type = XC_ARG_STR, .s = by},
        {.key = "n", .type = XC_ARG_INT, .i = n},
        {.key = "order", .type = XC_ARG_STR, .s = ascending ? "asc" : "desc"},
        {.key = "alive_only", .type = XC_ARG_BOOL, .i = alive_only != 0},
    };
    return xc_client_request(c, "top", a, 4, r);
}

int xc_client_config(xc_client_t *c, const char *key, xc_client_value_t **r)
{
    xc_client_arg_t a = {.key = "key", .type = XC_ARG_STR, .s = key};
    return xc_client_request(c, "config", &a, key ? 1 : 0, r);
}

/* ------------------------------------------------------------------ events */

int xc_client_subscribe(xc_client_t *c, const char *topic)
{
    if (!c) return XC_EINVAL;
    int rc = ensure_socket(c, SOCK_EVENTS);
    if (rc < 0) return rc;
    if (!topic) topic = "";
    if (zmq_setsockopt(c->sock[SOCK_EVENTS], ZMQ_SUBSCRIBE, topic, strlen(topic)) != 0)
        return set_err(c, XC_ESYS, "cannot subscribe to '%s': %s", topic, zmq_strerror(errno));
    return XC_OK;
}

int xc_client_next_event(xc_client_t *c, int timeout_ms, xc_client_value_t **event)
{
    if (event) *event = NULL;
    if (!c || !event) return XC_EINVAL;
    if (!c->sock[SOCK_EVENTS])
        return set_err(c, XC_ESTATE, "next_event: call xc_client_subscribe first");
    int64_t deadline = deadline_of(timeout_ms);
    for (;;) {
        zmq_msg_t m[2];
        int n;
        int rc = recv_multipart(c, SOCK_EVENTS, m, 2, &n);
        if (rc == XC_EAGAIN) {
            int w = wait_sock(c, SOCK_EVENTS, ZMQ_POLLIN, deadline);
            if (w < 0) return w;
            if (w == 0) return set_err(c, XC_ETIMEDOUT, "no event within %d ms from %s", timeout_ms, c->endpoint[SOCK_EVENTS]);
            continue;
        }
        if (rc < 0) return rc;
        if (n < 2) {
            for (int i = 0; i < n; i++) zmq_msg_close(&m[i]);
            return set_err(c, XC_EPROTO, "malformed event (expected [topic][body] frames)");
        }
        char topic[64], why[256];
        xc_mp_doc_t *doc = NULL;
        rc = xc_proto_event_decode(zmq_msg_data(&m[0]), zmq_msg_size(&m[0]), zmq_msg_data(&m[1]),
                                   zmq_msg_size(&m[1]), topic, sizeof topic, &doc, why, sizeof why);
        /* the parsed doc points into the body frame: convert before closing it */
        int e = XC_OK;
        if (rc >= 0) *event = xc_client_value_from_node(xc_mp_root(doc), &e);
        xc_mp_doc_free(&doc);
        zmq_msg_close(&m[0]);
        zmq_msg_close(&m[1]);
        if (rc < 0) return set_err(c, rc, "malformed event: %s", why);
        if (!*event) return set_err(c, e, "event could not be decoded: %s", xc_strerror(e));
        return XC_OK;
    }
}
