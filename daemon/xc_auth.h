/* Authentication and roles on tcp endpoints: CurveZMQ with a ZAP handler.
 *
 * When the daemon has a server secret key (config `curve_secret_key`), every
 * tcp:// socket is a CURVE server and libzmq asks this module's ZAP handler
 * (inproc://zeromq.zap.01, its own thread) about each connecting client's
 * public key. A key listed in one of the allow-lists (`allow_producers`,
 * `allow_readers`, `allow_admins`) is accepted and its roles travel with every
 * message it sends (ZeroMQ's "User-Id" property); any other key is refused at
 * the handshake. Each request is then checked against its roles
 * (xc_auth_op_allowed): a refused one gets XC_EPERM with a reason.
 *
 * ipc:// endpoints are protected by file permissions (the run_dir is 0750):
 * their peers are local and hold every role.
 *
 * Connections are bounded whatever the peers do: the handler also answers
 * for sockets without CURVE (libzmq asks ZAP about NULL-mechanism peers too
 * once a socket has a ZAP domain), counts each watched socket's live
 * connections from its monitor (ACCEPTED, DISCONNECTED) and refuses a
 * connection beyond max_connections with ZAP status 300 (temporary), so
 * ZeroMQ's per-connection buffers add up to at most max_connections times
 * their per-connection bound (xc_cfg_memory_bound). A peer that never
 * finishes its handshake holds a slot until libzmq's handshake timeout (30 s). */
#ifndef XC_AUTH_H
#define XC_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "xc_proto.h"

enum {
    XC_ROLE_PRODUCER = 1, /* ingest */
    XC_ROLE_READER = 2,   /* status, latent, top, table, events, metrics, ... */
    XC_ROLE_ADMIN = 4,    /* everything */
    XC_ROLE_LOCAL = 7     /* ipc peers and sockets without CURVE */
};

typedef struct xc_auth xc_auth_t;

typedef struct {
    const char *producers, *readers, *admins; /* allow-list files ("" = none) */
} xc_auth_lists_t;

#define XC_AUTH_SOCKETS 4 /* sockets one handler can watch */

typedef struct {
    uint64_t accepted;       /* CURVE handshakes accepted */
    uint64_t refused;        /* CURVE handshakes refused (unknown key, wrong mechanism) */
    uint64_t conn_refused;   /* connections refused: their socket had max_connections */
    long live[XC_AUTH_SOCKETS]; /* live connections per watched socket, in xc_auth_watch order */
} xc_auth_counts_t;

/* Loads the allow-lists and binds the ZAP handler's socket on zctx (which
 * must outlive the object); max_connections (per watched socket; <= 0 = no
 * limit). Then xc_auth_watch each socket, and xc_auth_start. Call before
 * binding any socket. NULL on failure (*err and why say which file and why).
 * Owned by the caller: xc_auth_destroy. */
xc_auth_t *xc_auth_new(void *zctx, const xc_auth_lists_t *lists, long max_connections, int *err, char *why,
                       size_t wl);
/* Before start and before sock binds: gives sock the ZAP domain (so every
 * peer passes the handler, CURVE or not) and counts its connections. */
int xc_auth_watch(xc_auth_t *a, void *zctx, void *sock, const char *domain, char *why, size_t wl);
/* Starts the handler thread; it owns the ZAP and monitor sockets from now on. */
int xc_auth_start(xc_auth_t *a, char *why, size_t wl);
/* Stops the watched sockets' monitors: call before closing those sockets. */
void xc_auth_unwatch(xc_auth_t *a);
/* Re-reads the allow-lists (SIGHUP). On any error the old lists stay in force. */
int xc_auth_reload(xc_auth_t *a, const xc_auth_lists_t *lists, char *why, size_t wl);
void xc_auth_counts(xc_auth_t *a, xc_auth_counts_t *out);
/* Stops the handler thread (before zmq_ctx_term) and frees everything; the
 * watched sockets must have been unwatched (xc_auth_unwatch) or closed. */
void xc_auth_destroy(xc_auth_t **a);

/* Makes sock a CURVE server with the given secret key, telling the ZAP
 * handler which socket it is by domain ("ingest", "control", "events"). */
int xc_auth_curve_server(void *sock, const char *domain, const char *secret_z85, char *why,
                         size_t wl);

/* The roles of the peer that sent msg (a zmq_msg_t* of the message): the
 * User-Id the ZAP handler set, or XC_ROLE_LOCAL on a socket without CURVE. */
int xc_auth_roles_of(void *zmq_msg);
/* 1 if a peer with roles may run op_name, which needs any one of need;
 * otherwise 0 and a reason in why naming the role to ask for. */
int xc_auth_allowed(int roles, int need, const char *op_name, char *why, size_t wl);
/* "producer+reader" style text of a role mask (static storage). */
const char *xc_auth_role_name(int roles);
/* 1 if the endpoint binds a tcp address that is not loopback (127.0.0.0/8,
 * ::1, localhost). */
int xc_auth_endpoint_remote(const char *endpoint);
int xc_auth_endpoint_tcp(const char *endpoint);

#endif
