/* Authentication: CURVE key files, allow-lists, the ZAP handler with real
 * CurveZMQ handshakes on loopback, role checks per op, log-line escaping and
 * the peer-triggered log rate limiter. */
#include "xc_auth.h"
#include "xc_error.h"
#include "xc_keys.h"
#include "xc_log.h"
#include "xc_test.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

static char g_tmp[] = "/tmp/xc_auth_XXXXXX";

static void path_of(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", g_tmp, name); }

static void test_keygen_files(void)
{
    xc_keypair_t kp, back, pub;
    char why[300], base[256], p[300];
    struct stat st;
    XC_REQUIRE(xc_keys_generate(&kp, why, sizeof why) == 0, "%.200s", why);
    XC_CHECK(strlen(kp.public_z85) == 40 && strlen(kp.secret_z85) == 40, "key lengths");
    path_of(base, sizeof base, "alice");
    XC_REQUIRE(xc_keys_write(base, &kp, why, sizeof why) == 0, "%.200s", why);
    snprintf(p, sizeof p, "%s.key", base);
    XC_CHECK(stat(p, &st) == 0 && (st.st_mode & 0777) == 0600, "secret key mode %o", st.st_mode & 0777);
    XC_CHECK(xc_keys_read(p, &back, why, sizeof why) == 0, "%.200s", why);
    XC_CHECK(strcmp(back.public_z85, kp.public_z85) == 0 && strcmp(back.secret_z85, kp.secret_z85) == 0,
             "round trip");
    snprintf(p, sizeof p, "%s.pub", base);
    XC_CHECK(xc_keys_read(p, &pub, why, sizeof why) == 0 && strcmp(pub.public_z85, kp.public_z85) == 0 &&
                 pub.secret_z85[0] == 0,
             "public file: %.200s", why);
    /* never overwritten */
    XC_CHECK(xc_keys_write(base, &kp, why, sizeof why) == XC_EIO && strstr(why, "never overwritten"), "%s",
             why);
    /* a secret key readable by others is refused */
    snprintf(p, sizeof p, "%s.key", base);
    chmod(p, 0644);
    XC_CHECK(xc_keys_read(p, &back, why, sizeof why) == XC_EPERM && strstr(why, "chmod 600"), "%.200s", why);
    chmod(p, 0600);
    /* a link is not followed */
    char link[300];
    path_of(link, sizeof link, "link.key");
    XC_REQUIRE(symlink(p, link) == 0, "symlink");
    XC_CHECK(xc_keys_read(link, &back, why, sizeof why) == XC_EIO, "link followed");
    /* a public key that does not belong to the secret one */
    xc_keypair_t other;
    xc_keys_generate(&other, why, sizeof why);
    path_of(p, sizeof p, "mixed.key");
    FILE *f = fopen(p, "w");
    XC_REQUIRE(f, "fopen");
    fprintf(f, "public-key = \"%s\"\nsecret-key = \"%s\"\n", other.public_z85, kp.secret_z85);
    fclose(f);
    chmod(p, 0600);
    XC_CHECK(xc_keys_read(p, &back, why, sizeof why) == XC_ECORRUPT, "mismatched pair accepted");
}

static void test_allow_list(void)
{
    xc_keypair_t a, b, c;
    char why[300], p[300];
    xc_keys_generate(&a, why, sizeof why);
    xc_keys_generate(&b, why, sizeof why);
    xc_keys_generate(&c, why, sizeof why);
    path_of(p, sizeof p, "readers.allow");
    FILE *f = fopen(p, "w");
    XC_REQUIRE(f, "fopen");
    fprintf(f, "# readers\n\n%s alice's laptop\npublic-key = \"%s\"  # bob\n", a.public_z85, b.public_z85);
    fclose(f);
    xc_keylist_t l;
    XC_REQUIRE(xc_keylist_load(p, &l, why, sizeof why) == 0, "%.200s", why);
    unsigned char bin[32];
    XC_CHECK(l.n == 2, "n = %zu", l.n);
    zmq_z85_decode(bin, a.public_z85);
    XC_CHECK(xc_keylist_has(&l, bin), "a missing");
    zmq_z85_decode(bin, b.public_z85);
    XC_CHECK(xc_keylist_has(&l, bin), "b missing");
    zmq_z85_decode(bin, c.public_z85);
    XC_CHECK(!xc_keylist_has(&l, bin), "c present");
    xc_keylist_free(&l);
    f = fopen(p, "a");
    fprintf(f, "not-a-key\n");
    fclose(f);
    XC_CHECK(xc_keylist_load(p, &l, why, sizeof why) == XC_ECORRUPT && strstr(why, ":5:"), "%.200s", why);
    XC_CHECK(xc_keylist_load("", &l, why, sizeof why) == 0 && l.n == 0, "empty path");
}

static void write_list(const char *name, const char *z85)
{
    char p[300];
    path_of(p, sizeof p, name);
    FILE *f = fopen(p, "w");
    if (!f) return;
    if (z85) fprintf(f, "%s\n", z85);
    fclose(f);
}

/* Connects a DEALER with key kp to ep, sends "hi", and returns the roles the
 * server saw (-1 when nothing arrived within 1.5 s: refused). */
static int roles_seen(void *ctx, void *server, const char *ep, const char *server_pub, const xc_keypair_t *kp)
{
    void *d = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, roles = -1;
    zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(d, ZMQ_CURVE_SERVERKEY, server_pub, 40);
    zmq_setsockopt(d, ZMQ_CURVE_PUBLICKEY, kp->public_z85, 40);
    zmq_setsockopt(d, ZMQ_CURVE_SECRETKEY, kp->secret_z85, 40);
    zmq_connect(d, ep);
    zmq_send(d, "hi", 2, ZMQ_DONTWAIT);
    zmq_pollitem_t it = {server, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, 1500) == 1) {
        zmq_msg_t id, body;
        zmq_msg_init(&id);
        zmq_msg_init(&body);
        zmq_msg_recv(&id, server, 0);
        zmq_msg_recv(&body, server, 0);
        roles = xc_auth_roles_of(&body);
        zmq_msg_close(&id);
        zmq_msg_close(&body);
    }
    zmq_close(d);
    return roles;
}

static void test_zap_roles(void)
{
    xc_keypair_t srv, prod, reader, admin, stranger;
    char why[300], pp[300], pr[300], pa[300], ep[64];
    xc_keys_generate(&srv, why, sizeof why);
    xc_keys_generate(&prod, why, sizeof why);
    xc_keys_generate(&reader, why, sizeof why);
    xc_keys_generate(&admin, why, sizeof why);
    xc_keys_generate(&stranger, why, sizeof why);
    write_list("p.allow", prod.public_z85);
    write_list("r.allow", reader.public_z85);
    write_list("a.allow", admin.public_z85);
    path_of(pp, sizeof pp, "p.allow");
    path_of(pr, sizeof pr, "r.allow");
    path_of(pa, sizeof pa, "a.allow");
    void *ctx = zmq_ctx_new();
    int err;
    xc_auth_lists_t lists = {pp, pr, pa};
    xc_auth_t *a = xc_auth_new(ctx, &lists, 0, &err, why, sizeof why);
    XC_REQUIRE(a, "%.200s", why);
    XC_REQUIRE(xc_auth_start(a, why, sizeof why) == 0, "%.200s", why);
    void *server = zmq_socket(ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(server, ZMQ_LINGER, &linger, sizeof linger);
    XC_REQUIRE(xc_auth_curve_server(server, "control", srv.secret_z85, why, sizeof why) == 0, "%.200s", why);
    XC_REQUIRE(zmq_bind(server, "tcp://127.0.0.1:*") == 0, "bind");
    size_t el = sizeof ep;
    zmq_getsockopt(server, ZMQ_LAST_ENDPOINT, ep, &el);

    XC_CHECK(roles_seen(ctx, server, ep, srv.public_z85, &prod) == XC_ROLE_PRODUCER, "producer");
    XC_CHECK(roles_seen(ctx, server, ep, srv.public_z85, &reader) == XC_ROLE_READER, "reader");
    XC_CHECK(roles_seen(ctx, server, ep, srv.public_z85, &admin) == XC_ROLE_ADMIN, "admin");
    XC_CHECK(roles_seen(ctx, server, ep, srv.public_z85, &stranger) == -1, "unknown key got through");
    /* a client that believes in another server key gets nothing either */
    XC_CHECK(roles_seen(ctx, server, ep, stranger.public_z85, &admin) == -1, "wrong server key got through");
    xc_auth_counts_t n;
    xc_auth_counts(a, &n);
    XC_CHECK(n.accepted == 3 && n.refused >= 1, "counts accepted %llu refused %llu",
             (unsigned long long)n.accepted, (unsigned long long)n.refused);

    /* reload: the stranger becomes a reader; a broken list leaves the old ones */
    write_list("r.allow", stranger.public_z85);
    XC_CHECK(xc_auth_reload(a, &lists, why, sizeof why) == 0, "%.200s", why);
    XC_CHECK(roles_seen(ctx, server, ep, srv.public_z85, &stranger) == XC_ROLE_READER, "reloaded reader");
    XC_CHECK(roles_seen(ctx, server, ep, srv.public_z85, &reader) == -1, "removed reader still in");
    write_list("r.allow", "garbage");
    XC_CHECK(xc_auth_reload(a, &lists, why, sizeof why) == XC_ECORRUPT, "broken list accepted");
    XC_CHECK(roles_seen(ctx, server, ep, srv.public_z85, &stranger) == XC_ROLE_READER, "old list lost");

    zmq_close(server);
    xc_auth_destroy(&a);
    XC_CHECK(a == NULL, "destroy");
    zmq_ctx_term(ctx);
}

/* max_connections: a socket without CURVE (the NULL mechanism) still passes
 * the handler once watched; with a limit of 2, of 6 peers that connect and
 * each send one message, exactly 2 reach the server, the other 4 are refused
 * and counted (refused peers come back every reconnect interval, and are
 * refused again), and every peer gets the local roles. After the first two
 * leave, a newcomer gets in (the count follows disconnects). */
static void test_connection_limit(void)
{
    char why[300], ep[80];
    int err, linger = 0;
    void *ctx = zmq_ctx_new();
    xc_auth_lists_t none = {"", "", ""};
    xc_auth_t *a = xc_auth_new(ctx, &none, 2, &err, why, sizeof why);
    XC_REQUIRE(a, "%.200s", why);
    void *server = zmq_socket(ctx, ZMQ_ROUTER);
    zmq_setsockopt(server, ZMQ_LINGER, &linger, sizeof linger);
    XC_REQUIRE(xc_auth_watch(a, ctx, server, "ingest", why, sizeof why) == 0, "%.200s", why);
    XC_REQUIRE(xc_auth_start(a, why, sizeof why) == 0, "%.200s", why);
    snprintf(ep, sizeof ep, "ipc://%s/limit.sock", g_tmp);
    XC_REQUIRE(zmq_bind(server, ep) == 0, "bind %s", ep);
    enum { N = 6 };
    void *peer[N];
    int got = 0, roles_ok = 1;
    for (int i = 0; i < N; i++) {
        peer[i] = zmq_socket(ctx, ZMQ_DEALER);
        zmq_setsockopt(peer[i], ZMQ_LINGER, &linger, sizeof linger);
        zmq_connect(peer[i], ep);
        zmq_send(peer[i], "hi", 2, ZMQ_DONTWAIT);
        if (i < 2) usleep(200000); /* the first two are in before the rest arrive */
    }
    zmq_pollitem_t it = {server, 0, ZMQ_POLLIN, 0};
    while (zmq_poll(&it, 1, 1500) == 1) {
        zmq_msg_t id, body;
        zmq_msg_init(&id);
        zmq_msg_init(&body);
        zmq_msg_recv(&id, server, 0);
        zmq_msg_recv(&body, server, 0);
        roles_ok &= xc_auth_roles_of(&body) == XC_ROLE_LOCAL;
        zmq_msg_close(&id);
        zmq_msg_close(&body);
        got++;
    }
    xc_auth_counts_t n;
    xc_auth_counts(a, &n);
    XC_CHECK(got == 2, "%d of %d peers got through a limit of 2", got, N);
    XC_CHECK(roles_ok, "a NULL-mechanism peer lacks the local roles");
    XC_CHECK(n.conn_refused >= N - 2, "refusals counted: %llu", (unsigned long long)n.conn_refused);
    for (int i = 0; i < N; i++) zmq_close(peer[i]);
    /* everyone left: a newcomer gets in */
    for (int t = 0; t < 100; t++) {
        xc_auth_counts(a, &n);
        if (n.live[0] == 0) break;
        usleep(20000);
    }
    XC_CHECK(n.live[0] == 0, "live %ld after every peer left", n.live[0]);
    void *late = zmq_socket(ctx, ZMQ_DEALER);
    zmq_setsockopt(late, ZMQ_LINGER, &linger, sizeof linger);
    zmq_connect(late, ep);
    zmq_send(late, "hi", 2, ZMQ_DONTWAIT);
    XC_CHECK(zmq_poll(&it, 1, 1500) == 1, "a newcomer after the others left was refused");
    zmq_close(late);
    xc_auth_unwatch(a);
    zmq_close(server);
    xc_auth_destroy(&a);
    zmq_ctx_term(ctx);
}

static void test_op_roles(void)
{
    char why[300];
    int read = XC_ROLE_READER | XC_ROLE_ADMIN;
    XC_CHECK(xc_auth_allowed(XC_ROLE_READER, read, "status", why, sizeof why), "reader status");
    XC_CHECK(!xc_auth_allowed(XC_ROLE_READER, XC_ROLE_ADMIN, "pause", why, sizeof why) && strstr(why, "admin") &&
                 strstr(why, "'pause'"),
             "reader pause: %.200s", why);
    XC_CHECK(!xc_auth_allowed(XC_ROLE_PRODUCER, read, "table", why, sizeof why) && strstr(why, "reader"),
             "producer table");
    XC_CHECK(xc_auth_allowed(XC_ROLE_LOCAL, XC_ROLE_ADMIN, "shutdown", why, sizeof why), "local shutdown");
    XC_CHECK(!xc_auth_endpoint_remote("tcp://127.0.0.1:5555") && !xc_auth_endpoint_remote("tcp://[::1]:1") &&
                 !xc_auth_endpoint_remote("ipc:///tmp/x") && xc_auth_endpoint_remote("tcp://*:5555") &&
                 xc_auth_endpoint_remote("tcp://10.0.0.1:5555"),
             "endpoint classification");
}

/* Runs xc_log with stderr redirected into a file and returns what it wrote. */
static void capture_log(const char *id, char *out, size_t n)
{
    char p[300];
    path_of(p, sizeof p, "log.txt");
    fflush(stderr);
    int saved = dup(2), fd = open(p, O_CREAT | O_TRUNC | O_RDWR, 0600);
    dup2(fd, 2);
    xc_log(XC_LOG_WARN, "refused batch from '%s'", id);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    lseek(fd, 0, SEEK_SET);
    ssize_t r = read(fd, out, n - 1);
    out[r > 0 ? r : 0] = 0;
    close(fd);
}

static void test_log_escaping(void)
{
    char out[2048];
    capture_log("evil\n2026-01-01T00:00:00.000Z INFO  [x] forged\x1b[2J", out, sizeof out);
    XC_CHECK(strchr(out, '\n') == out + strlen(out) - 1, "a peer's newline split the line: %.200s", out);
    XC_CHECK(!strchr(out, 0x1b), "escape byte written");
    XC_CHECK(strstr(out, "evil\\x0a2026") && strstr(out, "\\x1b[2J"), "escaped form: %.200s", out);
    capture_log("caf\xc3\xa9 \xff\xfe", out, sizeof out);
    XC_CHECK(strstr(out, "caf\xc3\xa9 \\xff\\xfe"), "UTF-8 kept, invalid bytes escaped: %.200s", out);
}

static void test_ratelimit(void)
{
    xc_ratelimit_t rl = XC_RATELIMIT_INIT(5, 3600.0);
    unsigned long long sup = 0;
    int passed = 0;
    for (int i = 0; i < 10000; i++) passed += xc_ratelimit_ok(&rl, &sup);
    XC_CHECK(passed == 5, "passed %d of 10000", passed);
    XC_CHECK(rl.suppressed == 9995, "suppressed %llu", rl.suppressed);
    rl.start -= 7200; /* the window has passed */
    XC_CHECK(xc_ratelimit_ok(&rl, &sup) && sup == 9995, "report of the suppressed lines: %llu", sup);
}

int main(void)
{
    if (!mkdtemp(g_tmp)) {
        printf("not ok - setup: mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    XC_RUN(test_keygen_files);
    XC_RUN(test_allow_list);
    XC_RUN(test_zap_roles);
    XC_RUN(test_connection_limit);
    XC_RUN(test_op_roles);
    XC_RUN(test_log_escaping);
    XC_RUN(test_ratelimit);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmp);
    XC_TEST_EXIT();
}
