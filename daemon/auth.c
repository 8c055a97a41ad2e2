/* The ZAP handler and role checks (see xc_auth.h). */
#include "xc_auth.h"
#include "xc_error.h"
#include "xc_keys.h"
#include "xc_log.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"

/* One socket whose connections are counted: its monitor's events arrive on
 * mon (a PAIR connected to the monitor endpoint). */
typedef struct {
    void *sock;            /* borrowed: the watched socket (the loop thread's) */
    void *mon;             /* owned: PAIR, used only by the handler thread after start */
    char domain[16];
} xc_auth_watch_t;

struct xc_auth {
    void *zap;             /* REP socket, used only by the handler thread after start */
    pthread_t thread;
    int started;
    volatile int stop;     /* set by destroy; the thread polls with a short timeout */
    pthread_mutex_t mu;    /* guards lists and counts (reload runs on the loop thread) */
    xc_keylist_t lists[3]; /* producer, reader, admin */
    xc_auth_counts_t counts;
    long max_conn;         /* live connections allowed per watched socket */
    xc_auth_watch_t watch[XC_AUTH_SOCKETS];
    int n_watch;
};

/* Loads the three lists into fresh storage; nothing changes on error. */
static int load_lists(const xc_auth_lists_t *l, xc_keylist_t out[3], char *why, size_t wl)
{
    const char *paths[3] = {l ? l->producers : "", l ? l->readers : "", l ? l->admins : ""};
    memset(out, 0, 3 * sizeof *out);
    for (int i = 0; i < 3; i++) {
        int rc = xc_keylist_load(paths[i] ? paths[i] : "", &out[i], why, wl);
        if (rc) {
            for (int j = 0; j < i; j++) xc_keylist_free(&out[j]);
            return rc;
        }
    }
    return XC_OK;
}

/* The roles of a 32-byte client key: the union over the lists that name it. */
static int roles_of_key(xc_auth_t *a, const unsigned char key[32])
{
    int roles = 0;
    pthread_mutex_lock(&a->mu);
    for (int i = 0; i < 3; i++)
        if (xc_keylist_has(&a->lists[i], key)) roles |= 1 << i;
    pthread_mutex_unlock(&a->mu);
    return roles;
}

/* Sends one ZAP reply (RFC 27): version, request id, status, text, user id,
 * metadata. */
static void zap_reply(void *sock, const zmq_msg_t *reqid, const char *code, const char *text,
                      const char *user)
{
    zmq_send(sock, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(sock, zmq_msg_data((zmq_msg_t *)reqid), zmq_msg_size((zmq_msg_t *)reqid), ZMQ_SNDMORE);
    zmq_send(sock, code, strlen(code), ZMQ_SNDMORE);
    zmq_send(sock, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(sock, user, strlen(user), ZMQ_SNDMORE);
    zmq_send(sock, "", 0, 0);
}

/* Reads every pending monitor event of every watched socket: ACCEPTED adds a
 * live connection, DISCONNECTED (sent for every accepted connection that
 * ends, a refused handshake included) removes one. Handler thread only. */
static void drain_monitors(xc_auth_t *a)
{
    for (int i = 0; i < a->n_watch; i++) {
        for (;;) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, a->watch[i].mon, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&m);
                break;
            }
            uint16_t ev = 0;
            if (zmq_msg_size(&m) >= 6) memcpy(&ev, zmq_msg_data(&m), sizeof ev);
            int more = zmq_msg_more(&m);
            zmq_msg_close(&m);
            while (more) { /* the endpoint frame: the rest of one message is there at once */
                zmq_msg_init(&m);
                if (zmq_msg_recv(&m, a->watch[i].mon, 0) < 0) more = 0;
                else more = zmq_msg_more(&m);
                zmq_msg_close(&m);
            }
            pthread_mutex_lock(&a->mu);
            if (ev == ZMQ_EVENT_ACCEPTED) a->counts.live[i]++;
            else if (ev == ZMQ_EVENT_DISCONNECTED && a->counts.live[i] > 0) a->counts.live[i]--;
            pthread_mutex_unlock(&a->mu);
        }
    }
}

/* The live connections of the socket of a ZAP domain, the one asking
 * included (its ACCEPTED event came before its handshake); 0 for a domain
 * not watched. Handler thread only. */
static long watch_live(xc_auth_t *a, const char *domain)
{
    drain_monitors(a);
    long live = 0;
    pthread_mutex_lock(&a->mu);
    for (int i = 0; i < a->n_watch; i++)
        if (strcmp(a->watch[i].domain, domain) == 0) live = a->counts.live[i];
    pthread_mutex_unlock(&a->mu);
    return live;
}

/* Answers one ZAP request. Frames: version, request id, domain, address,
 * routing id, mechanism, credentials... A malformed request still gets a
 * reply (a REP socket must answer to receive again). */
static void zap_handle(xc_auth_t *a)
{
    enum { NF = 7 };
    zmq_msg_t f[NF];
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t tmp, *m = n < NF ? &f[n] : &tmp;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, a->zap, 0) < 0) {
            zmq_msg_close(m);
            for (int i = 0; i < n && i < NF; i++) zmq_msg_close(&f[i]);
            return;
        }
        more = zmq_msg_more(m);
        if (m == &tmp) zmq_msg_close(&tmp);
        else n++;
    }
    const char *code = "400", *text = "unknown key";
    char user[32] = "";
    int roles = 0;
    char domain[16] = "";
    if (n >= 6) {
        size_t dl = zmq_msg_size(&f[2]);
        if (dl < sizeof domain) {
            memcpy(domain, zmq_msg_data(&f[2]), dl);
            domain[dl] = 0;
        }
        int curve = zmq_msg_size(&f[5]) == 5 && memcmp(zmq_msg_data(&f[5]), "CURVE", 5) == 0;
        int null = zmq_msg_size(&f[5]) == 4 && memcmp(zmq_msg_data(&f[5]), "NULL", 4) == 0;
        long live = watch_live(a, domain);
        if (live > a->max_conn) {
            /* 300: a temporary refusal (RFC 27); the peer may come back later */
            code = "300";
            text = "too many connections (max_connections)";
            pthread_mutex_lock(&a->mu);
            uint64_t r = ++a->counts.conn_refused;
            pthread_mutex_unlock(&a->mu);
            if (r <= 10 || (r & (r - 1)) == 0)
                xc_log(XC_LOG_WARN, "refused a connection on the %s socket: %ld connections, max_connections is %ld "
                       "(%llu refused so far)", domain, live, a->max_conn, (unsigned long long)r);
            goto reply;
        }
        if (null) {
            /* a socket that is no CURVE server (ipc, or tcp without keys): its
             * peers are local or accepted by the operator, and hold every role */
            code = "200";
            text = "OK";
            snprintf(user, sizeof user, "xc-roles:%d", XC_ROLE_LOCAL);
            goto reply;
        }
        if (!curve) text = "CURVE required";
        else if (n >= 7 && zmq_msg_size(&f[6]) == 32) {
            roles = roles_of_key(a, zmq_msg_data(&f[6]));
            /* the events socket cannot answer a request with XC_EPERM: readers
             * and admins only, refused at the handshake */
            if (strcmp(domain, "events") == 0) roles &= XC_ROLE_READER | XC_ROLE_ADMIN;
            if (roles) {
                code = "200";
                text = "OK";
                snprintf(user, sizeof user, "xc-roles:%d", roles);
            }
        }
    }
    pthread_mutex_lock(&a->mu);
    if (roles) a->counts.accepted++;
    else a->counts.refused++;
    uint64_t refused = a->counts.refused;
    pthread_mutex_unlock(&a->mu);
    if (!roles) {
        /* peer-triggered: at most the first 10, then one line per power of two */
        if (refused <= 10 || (refused & (refused - 1)) == 0)
            xc_log(XC_LOG_WARN, "refused a client on the %s socket: %s (%llu refused so far)",
                   domain[0] ? domain : "?", text, (unsigned long long)refused);
    }
reply:
    if (n >= 2) zap_reply(a->zap, &f[1], code, text, user);
    else {
        zmq_msg_t empty;
        zmq_msg_init(&empty);
        zap_reply(a->zap, &empty, "500", "malformed ZAP request", "");
        zmq_msg_close(&empty);
    }
    for (int i = 0; i < n && i < NF; i++) zmq_msg_close(&f[i]);
}

/* The handler thread: polls the ZAP socket and the monitors with a short
 * timeout so destroy can stop it without terminating the context. Reading
 * the monitors promptly matters: libzmq's I/O thread waits when a monitor's
 * pipe is full. */
static void *zap_thread(void *arg)
{
    xc_auth_t *a = arg;
    while (!a->stop) {
        zmq_pollitem_t it[1 + XC_AUTH_SOCKETS];
        it[0] = (zmq_pollitem_t){a->zap, 0, ZMQ_POLLIN, 0};
        for (int i = 0; i < a->n_watch; i++) it[1 + i] = (zmq_pollitem_t){a->watch[i].mon, 0, ZMQ_POLLIN, 0};
        int r = zmq_poll(it, 1 + a->n_watch, 100);
        if (r < 0) {
            if (errno == EINTR) continue;
            break; /* context terminated */
        }
        /* the monitors first: a connection's ACCEPTED precedes its ZAP request */
        drain_monitors(a);
        if (it[0].revents & ZMQ_POLLIN) zap_handle(a);
    }
    return NULL;
}

xc_auth_t *xc_auth_new(void *zctx, const xc_auth_lists_t *lists, long max_connections, int *err, char *why,
                       size_t wl)
{
    int rc = XC_ENOMEM;
    xc_auth_t *a = calloc(1, sizeof *a); /* owned by the caller: xc_auth_destroy */
    if (!a) goto out;
    pthread_mutex_init(&a->mu, NULL);
    a->max_conn = max_connections > 0 ? max_connections : LONG_MAX;
    if ((rc = load_lists(lists, a->lists, why, wl))) goto out_free;
    a->zap = zmq_socket(zctx, ZMQ_REP);
    int linger = 0;
    if (!a->zap || zmq_setsockopt(a->zap, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_bind(a->zap, ZAP_ENDPOINT) != 0) {
        xc_why(why, wl, "cannot start the ZAP authentication handler: %s", zmq_strerror(errno));
        rc = XC_ESYS;
        goto out_lists;
    }
    if (err) *err = XC_OK;
    return a;
out_lists:
    if (a->zap) zmq_close(a->zap);
    for (int i = 0; i < 3; i++) xc_keylist_free(&a->lists[i]);
out_free:
    pthread_mutex_destroy(&a->mu);
    free(a);
    a = NULL;
out:
    if (err) *err = rc;
    return NULL;
}

int xc_auth_watch(xc_auth_t *a, void *zctx, void *sock, const char *domain, char *why, size_t wl)
{
    if (a->started || a->n_watch >= XC_AUTH_SOCKETS || strlen(domain) >= sizeof a->watch[0].domain) {
        xc_why(why, wl, "cannot watch the %s socket: too many sockets, or the handler runs already", domain);
        return XC_EINVAL;
    }
    xc_auth_watch_t *w = &a->watch[a->n_watch];
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://xc-monitor.%s", domain);
    int linger = 0;
    if (zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, domain, strlen(domain)) ||
        zmq_socket_monitor(sock, ep, ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED) ||
        !(w->mon = zmq_socket(zctx, ZMQ_PAIR)) || zmq_setsockopt(w->mon, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_connect(w->mon, ep)) {
        xc_why(why, wl, "cannot count the connections of the %s socket: %s", domain, zmq_strerror(errno));
        if (w->mon) zmq_close(w->mon);
        w->mon = NULL;
        zmq_socket_monitor(sock, NULL, 0);
        return XC_ESYS;
    }
    w->sock = sock;
    snprintf(w->domain, sizeof w->domain, "%s", domain);
    a->n_watch++;
    return XC_OK;
}

int xc_auth_start(xc_auth_t *a, char *why, size_t wl)
{
    if (a->started) return XC_OK;
    if (pthread_create(&a->thread, NULL, zap_thread, a) != 0) {
        xc_why(why, wl, "cannot start the ZAP handler thread");
        return XC_ESYS;
    }
    a->started = 1;
    return XC_OK;
}

void xc_auth_unwatch(xc_auth_t *a)
{
    if (!a) return;
    for (int i = 0; i < a->n_watch; i++)
        if (a->watch[i].sock) {
            zmq_socket_monitor(a->watch[i].sock, NULL, 0);
            a->watch[i].sock = NULL;
        }
}

int xc_auth_reload(xc_auth_t *a, const xc_auth_lists_t *lists, char *why, size_t wl)
{
    xc_keylist_t fresh[3];
    int rc = load_lists(lists, fresh, why, wl);
    if (rc) return rc;
    pthread_mutex_lock(&a->mu);
    for (int i = 0; i < 3; i++) {
        xc_keylist_free(&a->lists[i]);
        a->lists[i] = fresh[i]; /* a owns the new storage */
    }
    pthread_mutex_unlock(&a->mu);
    return XC_OK;
}

void xc_auth_counts(xc_auth_t *a, xc_auth_counts_t *out)
{
    memset(out, 0, sizeof *out);
    if (!a) return;
    pthread_mutex_lock(&a->mu);
    *out = a->counts;
    pthread_mutex_unlock(&a->mu);
}

void xc_auth_destroy(xc_auth_t **pa)
{
    if (!pa || !*pa) return;
    xc_auth_t *a = *pa;
    a->stop = 1;
    if (a->started) pthread_join(a->thread, NULL);
    for (int i = 0; i < a->n_watch; i++) zmq_close(a->watch[i].mon);
    zmq_close(a->zap);
    for (int i = 0; i < 3; i++) xc_keylist_free(&a->lists[i]);
    pthread_mutex_destroy(&a->mu);
    free(a);
    *pa = NULL;
}

int xc_auth_curve_server(void *sock, const char *domain, const char *secret_z85, char *why,
                         size_t wl)
{
    int one = 1;
    if (zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, domain, strlen(domain)) ||
        zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, secret_z85, XC_KEY_Z85_LEN)) {
        xc_why(why, wl, "cannot make the %s socket a CURVE server: %s", domain, zmq_strerror(errno));
        return XC_ESYS;
    }
    return XC_OK;
}

int xc_auth_roles_of(void *zmq_msg)
{
    const char *u = zmq_msg_gets((zmq_msg_t *)zmq_msg, "User-Id");
    if (!u) return XC_ROLE_LOCAL; /* no ZAP on this socket (ipc, or tcp without keys) */
    if (strncmp(u, "xc-roles:", 9) != 0) return 0;
    int r = atoi(u + 9);
    return r & XC_ROLE_LOCAL;
}

const char *xc_auth_role_name(int roles)
{
    static const char *const names[8] = {"none", "producer", "reader", "producer+reader", "admin",
                                         "producer+admin", "reader+admin", "local"};
    return names[roles & 7];
}

int xc_auth_allowed(int roles, int need, const char *op_name, char *why, size_t wl)
{
    if (roles & need) return 1;
    xc_why(why, wl, "'%s' needs the %s role; this client's key has role %s (the daemon's operator adds "
           "public keys to allow_readers / allow_admins)",
           op_name, need == XC_ROLE_ADMIN ? "admin" : (need & XC_ROLE_READER) ? "reader" : "producer",
           xc_auth_role_name(roles));
    return 0;
}

int xc_auth_endpoint_tcp(const char *ep) { return ep && strncmp(ep, "tcp://", 6) == 0; }

int xc_auth_endpoint_remote(const char *ep)
{
    if (!xc_auth_endpoint_tcp(ep)) return 0;
    const char *h = ep + 6;
    /* an interface name or address before the port; "*" binds every interface */
    if (strncmp(h, "127.", 4) == 0 || strncmp(h, "localhost:", 10) == 0 || strncmp(h, "[::1]:", 6) == 0 ||
        strncmp(h, "lo:", 3) == 0)
        return 0;
    return 1;
}
