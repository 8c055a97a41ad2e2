/* The ZAP handler and role checks (see xc_auth.h). */
#include "xc_auth.h"
#include "xc_error.h"
#include "xc_keys.h"
#include "xc_log.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"

struct xc_auth {
    void *zap;             /* REP socket, used only by the handler thread after start */
    pthread_t thread;
    int started;
    volatile int stop;     /* set by destroy; the thread polls with a short timeout */
    pthread_mutex_t mu;    /* guards lists and counts (reload runs on the loop thread) */
    xc_keylist_t lists[3]; /* producer, reader, admin */
    xc_auth_counts_t counts;
    uint64_t refused_logged;
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
    if (n >= 2) zap_reply(a->zap, &f[1], code, text, user);
    else {
        zmq_msg_t empty;
        zmq_msg_init(&empty);
        zap_reply(a->zap, &empty, "500", "malformed ZAP request", "");
        zmq_msg_close(&empty);
    }
    for (int i = 0; i < n && i < NF; i++) zmq_msg_close(&f[i]);
}

/* The handler thread: polls with a short timeout so destroy can stop it
 * without terminating the context. */
static void *zap_thread(void *arg)
{
    xc_auth_t *a = arg;
    while (!a->stop) {
        zmq_pollitem_t it = {a->zap, 0, ZMQ_POLLIN, 0};
        int r = zmq_poll(&it, 1, 100);
        if (r < 0) {
            if (errno == EINTR) continue;
            break; /* context terminated */
        }
        if (r > 0) zap_handle(a);
    }
    return NULL;
}

xc_auth_t *xc_auth_new(void *zctx, const xc_auth_lists_t *lists, int *err, char *why, size_t wl)
{
    int rc = XC_ENOMEM;
    xc_auth_t *a = calloc(1, sizeof *a); /* owned by the caller: xc_auth_destroy */
    if (!a) goto out;
    pthread_mutex_init(&a->mu, NULL);
    if ((rc = load_lists(lists, a->lists, why, wl))) goto out_free;
    a->zap = zmq_socket(zctx, ZMQ_REP);
    int linger = 0;
    if (!a->zap || zmq_setsockopt(a->zap, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_bind(a->zap, ZAP_ENDPOINT) != 0) {
        xc_why(why, wl, "cannot start the ZAP authentication handler: %s", zmq_strerror(errno));
        rc = XC_ESYS;
        goto out_lists;
    }
    if (pthread_create(&a->thread, NULL, zap_thread, a) != 0) {
        xc_why(why, wl, "cannot start the ZAP handler thread");
        rc = XC_ESYS;
        goto out_lists;
    }
    a->started = 1;
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
