/* Per-latent commands: `latents`, `latent J` and `scaling`, and the choice of
 * where per-latent statistics come from: the daemon's shared-memory object
 * (proto/SHM.md; no round trip, read lock-free) when it is on this machine, or
 * the control socket (`top`, `latent`). Both give the same records
 * (client/lib/xc_latents.h), so text and --json carry the same fields either
 * way; --json says which source was used. */
#include "xc_cli.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------ the source */

static int pid_alive(long pid)
{
    return pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM);
}

/* pid of the daemon holding RUN_DIR/xcoderd.lock when the control socket is the
 * ipc one in run_dir and that process exists; 0 when unknown. */
static long run_dir_pid(const xc_cli_args_t *a)
{
    if (a->control) return 0; /* an explicit endpoint: no run_dir to look in */
    xc_client_options_t o;
    char derived[512], path[640], buf[32];
    xc_client_options_default(&o);
    const char *dir = a->run_dir ? a->run_dir : o.run_dir;
    if (!dir) {
        if (xc_client_default_run_dir(a->name, derived, sizeof derived)) return 0;
        dir = derived;
    }
    snprintf(path, sizeof path, "%s/xcoderd.lock", dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    long pid = strtol(buf, NULL, 10);
    return pid_alive(pid) ? pid : 0;
}

/* The instance whose object was written by `pid` (a scan of /dev/shm), or 0. */
static int instance_of_pid(long pid, char *out, size_t out_len)
{
    DIR *d = opendir("/dev/shm");
    struct dirent *e;
    int found = 0;
    if (!d) return 0;
    while (!found && (e = readdir(d))) {
        if (strncmp(e->d_name, "xcoderd.", 8) || !e->d_name[8]) continue;
        char path[300];
        xc_shm_header_t h;
        snprintf(path, sizeof path, "/dev/shm/%s", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        if (pread(fd, &h, sizeof h, 0) == (ssize_t)sizeof h && h.magic == XC_SHM_MAGIC && h.alive &&
            (long)h.writer_pid == pid) {
            snprintf(out, out_len, "%s", e->d_name + 8);
            found = 1;
        }
        close(fd);
    }
    closedir(d);
    return found;
}

/* A consistent snapshot, retrying a few times on a busy writer or a torn copy. */
static int take_snapshot(xc_shm_reader_t *r, xc_shm_snapshot_t *snap)
{
    int rc = XC_EAGAIN;
    for (int i = 0; i < 20; i++) {
        rc = xc_shm_reader_snapshot(r, snap, 100000);
        if (rc == XC_OK) return rc;
        if (rc == XC_ECORRUPT) xc_shm_snapshot_free(snap);
        if (rc == XC_ENOMEM) return rc;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return rc;
}

/* Opens and checks the shared-memory object of the addressed daemon: 0, or an
 * error code with the reason in s->why. */
static int shm_try(const xc_cli_args_t *a, xc_cli_source_t *s)
{
    long lock_pid = run_dir_pid(a);
    const char *inst = a->name;
    if (!inst) {
        if (!(lock_pid && instance_of_pid(lock_pid, s->instance, sizeof s->instance)))
            snprintf(s->instance, sizeof s->instance, "default");
    } else {
        snprintf(s->instance, sizeof s->instance, "%s", inst);
    }
    int err = 0;
    s->rd = xc_shm_reader_open(s->instance, &err);
    if (!s->rd) {
        int e = errno;
        if (err == XC_ENOTFOUND)
            snprintf(s->why, sizeof s->why,
                     "no shared memory /xcoderd.%s on this machine (is xcoderd '%s' running here with shm = on? "
                     "--name selects the instance)", s->instance, s->instance);
        else if (err == XC_ECORRUPT)
            snprintf(s->why, sizeof s->why, "/xcoderd.%s is not an xcoderd shared-memory object of layout version %u",
                     s->instance, XC_SHM_LAYOUT_VERSION);
        else if (err == XC_EINVAL)
            snprintf(s->why, sizeof s->why, "'%s' is not a valid instance name", s->instance);
        else
            snprintf(s->why, sizeof s->why, "cannot open shared memory /xcoderd.%s: %s", s->instance,
                     err == XC_ESYS ? strerror(e) : xc_strerror(err));
        return err ? err : XC_ESYS;
    }
    int rc = take_snapshot(s->rd, &s->snap);
    if (rc) {
        snprintf(s->why, sizeof s->why, "cannot read a consistent snapshot of /xcoderd.%s: %s", s->instance,
                 xc_strerror(rc));
        xc_shm_reader_close(&s->rd);
        return rc;
    }
    s->have_snap = 1;
    const xc_shm_header_t *h = &s->snap.hdr;
    if (!h->alive || !pid_alive((long)h->writer_pid)) {
        snprintf(s->why, sizeof s->why, "shared memory /xcoderd.%s is stale: its writer (pid %u) %s", s->instance,
                 h->writer_pid, h->alive ? "no longer exists" : "has exited");
        rc = XC_ESTATE;
    } else if (lock_pid && lock_pid != (long)h->writer_pid) {
        snprintf(s->why, sizeof s->why,
                 "shared memory /xcoderd.%s belongs to pid %u, not to the daemon addressed (pid %ld); "
                 "--name selects the instance", s->instance, h->writer_pid, lock_pid);
        rc = XC_ESTATE;
    }
    if (rc) xc_cli_source_close(s);
    return rc;
}

int xc_cli_source_mode(const xc_cli_args_t *a, int *mode)
{
    const char *m = xc_cli_opt(a, "source");
    if (!m || !strcmp(m, "auto")) *mode = 0;
    else if (!strcmp(m, "shm")) *mode = XC_LAT_SRC_SHM;
    else if (!strcmp(m, "control")) *mode = XC_LAT_SRC_CONTROL;
    else {
        xc_cli_err(a, "--source: '%s' is not one of auto, shm, control", m);
        return XC_CLI_USAGE;
    }
    return XC_CLI_OK;
}

int xc_cli_source_open(const xc_cli_args_t *a, int mode, const char *no_shm_why, xc_cli_source_t *s)
{
    memset(s, 0, sizeof *s);
    s->kind = XC_LAT_SRC_CONTROL;
    if (mode == XC_LAT_SRC_CONTROL) {
        snprintf(s->why, sizeof s->why, "--source control");
    } else if (no_shm_why) {
        snprintf(s->why, sizeof s->why, "%s", no_shm_why);
    } else if (shm_try(a, s) == XC_OK) {
        s->kind = XC_LAT_SRC_SHM;
    }
    if (mode == XC_LAT_SRC_SHM && s->kind != XC_LAT_SRC_SHM) {
        xc_cli_err(a, "--source shm: %s", s->why);
        return XC_CLI_FAIL;
    }
    if (a->verbose) {
        if (s->kind == XC_LAT_SRC_SHM)
            fprintf(stderr, "xcoder %s: source shm: /xcoderd.%s (writer pid %u, step %lld, update %llu)\n",
                    a->cmd->name, s->instance, s->snap.hdr.writer_pid, (long long)s->snap.hdr.step,
                    (unsigned long long)s->snap.hdr.gen);
        else
            fprintf(stderr, "xcoder %s: source control: %s\n", a->cmd->name, s->why);
    }
    return XC_CLI_OK;
}

int xc_cli_source_snapshot(xc_cli_source_t *s, xc_shm_snapshot_t *out)
{
    if (s->kind != XC_LAT_SRC_SHM || !s->rd) return XC_ESTATE;
    if (s->have_snap) { /* the one taken when the source was checked */
        *out = s->snap;
        memset(&s->snap, 0, sizeof s->snap);
        s->have_snap = 0;
        return XC_OK;
    }
    int rc = take_snapshot(s->rd, out);
    if (rc) return rc;
    if (!out->hdr.alive || !pid_alive((long)out->hdr.writer_pid)) {
        xc_shm_snapshot_free(out);
        return XC_ESTATE;
    }
    return XC_OK;
}

void xc_cli_source_close(xc_cli_source_t *s)
{
    if (s->have_snap) xc_shm_snapshot_free(&s->snap);
    s->have_snap = 0;
    xc_shm_reader_close(&s->rd);
}


/* ------------------------------------------------------------- output */

static const char *fmt_num(double x, const char *f, char *buf, size_t n)
{
    if (isnan(x)) snprintf(buf, n, "-");
    else snprintf(buf, n, f, x);
    return buf;
}

static void latent_header(FILE *f)
{
    /* "Δ", "ν" are 2 bytes but 1 column: pad them by hand */
    fprintf(f, "%7s   Δnorm %-9s %4s %7s %9s %8s %8s %9s   ν^ε run   ν^r run    ν^ε ex    ν^r ex\n", "latent", "class",
            "spec", "cosine", "freq", "mean_act", "max_act", "last_step");
}

static void latent_row(FILE *f, const xc_lat_t *l)
{
    char b[6][32];
    fprintf(f, "%7ld %7.3f %-9s %4s %7.3f %9.2e %8.3g %8.3g %9lld %9s %9s %9s %9s\n", l->j, l->delta_norm,
            xc_class_name(l->cls), l->chat_specific ? "yes" : l->nu_unstable ? "?" : "", l->cosine, l->freq, l->mean_act, l->max_act,
            (long long)l->last_step_fired, fmt_num(l->run.nu_err, "%.4f", b[0], 32),
            fmt_num(l->run.nu_rec, "%.4f", b[1], 32), fmt_num(l->has_exact ? l->exact.nu_err : NAN, "%.4f", b[2], 32),
            fmt_num(l->has_exact ? l->exact.nu_rec : NAN, "%.4f", b[3], 32));
}


/* "latents": an array of the records' maps, into an open map. */
static void write_latents(xc_mpw_t *w, const xc_lat_t *l, size_t n)
{
    xc_mpw_str(w, "latents");
    xc_mpw_array_begin(w);
    for (size_t i = 0; i < n; i++) {
        xc_mpw_map_begin(w);
        xc_lat_write(w, &l[i], 1);
        xc_mpw_map_end(w);
    }
    xc_mpw_array_end(w);
}

static int print_latents(const xc_cli_args_t *a, const char *source, long step, const char *by, int asc, int alive,
                         int cls, const xc_lat_t *l, size_t n)
{
    if (a->json) {
        xc_buf_t b;
        xc_mpw_t w;
        xc_buf_init(&b);
        xc_mpw_init(&w, &b);
        xc_mpw_map_begin(&w);
        xc_mpw_kv_str(&w, "source", source);
        xc_mpw_kv_int(&w, "snapshot_step", step);
        xc_mpw_kv_str(&w, "by", by);
        xc_mpw_kv_str(&w, "order", asc ? "asc" : "desc");
        xc_mpw_kv_bool(&w, "alive_only", alive);
        if (cls >= 0) xc_mpw_kv_str(&w, "class", cls == XC_LAT_CLASS_CHAT_SPECIFIC ? XC_COUNT_CHAT_SPECIFIC_NAME : xc_class_name(cls));
        write_latents(&w, l, n);
        xc_mpw_map_end(&w);
        int rc = xc_cli_print_mpw(a, &w);
        xc_buf_free(&b);
        return rc;
    }
    printf("top %zu latents by %s (%s)%s%s%s, step %ld, from %s\n", n, by, asc ? "asc" : "desc",
           cls >= 0 ? ", class " : "", cls >= 0 ? (cls == XC_LAT_CLASS_CHAT_SPECIFIC ? XC_COUNT_CHAT_SPECIFIC_NAME : xc_class_name(cls)) : "",
           alive ? ", alive only" : "", step, source);
    latent_header(stdout);
    for (size_t i = 0; i < n; i++) latent_row(stdout, &l[i]);
    fflush(stdout);
    return XC_CLI_OK;
}

/* Prints a value tree's scalars as "  key value" lines, nested maps dotted. */
static void print_flat(const xc_client_value_t *m, const char *prefix)
{
    for (size_t i = 0; m && m->type == XC_VAL_MAP && i < m->u.m.n; i++) {
        const xc_client_value_t *k = &m->u.m.kv[2 * i], *v = &m->u.m.kv[2 * i + 1];
        char key[96], b[128];
        if (k->type != XC_VAL_STR) continue;
        snprintf(key, sizeof key, "%s%s", prefix, k->u.s.ptr);
        if (v->type == XC_VAL_MAP) {
            char p2[100];
            snprintf(p2, sizeof p2, "%s.", key);
            print_flat(v, p2);
        } else {
            printf("  %-26s %s\n", key, xc_cli_fmt_value(v, b, sizeof b));
        }
    }
}

static int print_latent(const xc_cli_args_t *a, const char *source, long step, const xc_lat_t *l)
{
    xc_buf_t b;
    xc_mpw_t w;
    int rc;
    xc_buf_init(&b);
    xc_mpw_init(&w, &b);
    xc_mpw_map_begin(&w);
    xc_mpw_kv_str(&w, "source", source);
    xc_mpw_kv_int(&w, "j", l->j);
    xc_mpw_kv_int(&w, "snapshot_step", step);
    xc_mpw_str(&w, "stats");
    xc_mpw_map_begin(&w);
    xc_lat_write(&w, l, 0);
    xc_mpw_map_end(&w);
    xc_mpw_map_end(&w);
    if (a->json) {
        rc = xc_cli_print_mpw(a, &w);
    } else {
        rc = xc_mpw_finish(&w);
        xc_client_value_t *v = rc < 0 ? NULL : xc_client_value_parse(b.data, b.len, &rc);
        if (!v) {
            xc_cli_err(a, "cannot format the latent: %s", xc_strerror(rc));
            rc = XC_CLI_FAIL;
        } else {
            printf("latent %ld (step %ld, from %s)\n", l->j, step, source);
            print_flat(xc_client_value_get(v, "stats"), "");
            xc_client_t *c = xc_cli_client(a, 0); /* its examples live in the daemon (not in shared memory) */
            if (c) xc_cli_print_examples(stdout, c, l->j, 3, 0, "  ");
            xc_client_destroy(&c);
            fflush(stdout);
            rc = XC_CLI_OK;
        }
        xc_client_value_free(&v);
    }
    xc_buf_free(&b);
    return rc;
}

/* ------------------------------------------------------------ latents */

int xc_cli_cmd_latents(xc_cli_args_t *a)
{
    long n;
    int mode, rc = xc_cli_opt_long(a, "top", 10, 1, 1L << 30, &n);
    if (!rc) rc = xc_cli_source_mode(a, &mode);
    if (rc) return rc;
    const char *by = xc_cli_opt(a, "by"), *cname = xc_cli_opt(a, "class");
    if (!by) by = "delta_norm";
    int cls = -1, asc = xc_cli_flag(a, "asc"), alive = xc_cli_flag(a, "alive");
    if (cname && (cls = xc_lat_class_parse(cname)) < 0) {
        xc_cli_err(a, "--class: '%s' is not one of chat_only, base_only, shared, other, dead, chat_specific", cname);
        return XC_CLI_USAGE;
    }
    int f = xc_lat_field(by);
    const char *no_shm = NULL;
    char why[256];
    if (f < 0) {
        if (mode == XC_LAT_SRC_SHM) {
            xc_cli_err(a, "unknown field '%s' for --by; use one of %s", by, xc_lat_field_list());
            return XC_CLI_FAIL;
        }
        no_shm = "--by names a field this client does not know: the daemon decides"; /* a newer daemon may */
    } else if (!xc_lat_field_in_shm(f)) {
        snprintf(why, sizeof why, "--by %s is not in shared memory (only the daemon keeps it)", by);
        if (mode == XC_LAT_SRC_SHM) {
            xc_cli_err(a, "%s; use --source control", why);
            return XC_CLI_USAGE;
        }
        no_shm = why;
    }
    xc_cli_source_t src;
    if ((rc = xc_cli_source_open(a, mode, no_shm, &src))) return rc;
    int out = XC_CLI_OK;
    xc_lat_t *l = NULL;
    size_t m = 0;
    if (src.kind == XC_LAT_SRC_SHM) {
        xc_shm_snapshot_t snap;
        rc = xc_cli_source_snapshot(&src, &snap);
        if (rc == XC_OK) {
            rc = xc_lat_select_shm(&snap, f, asc, alive, cls, (size_t)n, &l, &m);
            if (rc == XC_OK)
                out = print_latents(a, "shm", (long)snap.hdr.step, by, asc, alive, cls, l, m);
            xc_shm_snapshot_free(&snap);
        }
        if (rc) {
            xc_cli_err(a, "shared memory /xcoderd.%s: %s", src.instance, xc_strerror(rc));
            out = XC_CLI_FAIL;
        }
    } else {
        xc_client_t *c = xc_cli_client(a, 0);
        xc_client_value_t *r = NULL;
        if (!c) out = XC_CLI_FAIL;
        /* a class filter is applied here: ask for every latent, in order */
        else if ((rc = xc_client_top(c, by, cls >= 0 ? 100000 : n, asc, alive, &r)) < 0) out = xc_cli_fail(a, c, rc);
        else {
            const xc_client_value_t *arr = xc_client_value_get(r, "latents");
            if (!arr || arr->type != XC_VAL_ARRAY) {
                xc_cli_err(a, "the daemon's reply has no 'latents' array (protocol mismatch?)");
                out = XC_CLI_FAIL;
            } else {
                l = calloc(arr->u.a.n ? arr->u.a.n : 1, sizeof *l);
                for (size_t i = 0; l && i < arr->u.a.n && m < (size_t)n; i++)
                    if (xc_lat_from_value(&arr->u.a.items[i], -1, &l[m]) == XC_OK && xc_lat_in_class(&l[m], cls)) m++;
                if (!l) {
                    xc_cli_err(a, "out of memory");
                    out = XC_CLI_FAIL;
                } else {
                    out = print_latents(a, "control", (long)xc_client_value_getnum(r, "snapshot_step", -1),
                                        xc_client_value_getstr(r, "by", by), asc, alive, cls, l, m);
                }
            }
        }
        xc_client_value_free(&r);
        xc_client_destroy(&c);
    }
    free(l);
    xc_cli_source_close(&src);
    return out;
}

int xc_cli_cmd_latent(xc_cli_args_t *a)
{
    long j;
    int mode, rc;
    if (xc_cli_parse_long("latent J", a->pos[0], 0, 1L << 40, &j)) return XC_CLI_USAGE;
    if ((rc = xc_cli_source_mode(a, &mode))) return rc;
    xc_cli_source_t src;
    if ((rc = xc_cli_source_open(a, mode, NULL, &src))) return rc;
    int out = XC_CLI_OK;
    xc_lat_t l;
    if (src.kind == XC_LAT_SRC_SHM) {
        xc_shm_snapshot_t snap;
        rc = xc_cli_source_snapshot(&src, &snap);
        if (rc) {
            xc_cli_err(a, "shared memory /xcoderd.%s: %s", src.instance, xc_strerror(rc));
            out = XC_CLI_FAIL;
        } else if (j >= (long)snap.hdr.n_latents) {
            xc_cli_err(a, "latent %ld does not exist (dict_size = %u) (XC_ENOTFOUND)", j, snap.hdr.n_latents);
            out = XC_CLI_FAIL;
        } else {
            xc_lat_from_shm(&snap, j, &l);
            out = print_latent(a, "shm", (long)snap.hdr.step, &l);
        }
        if (!rc) xc_shm_snapshot_free(&snap);
    } else {
        xc_client_t *c = xc_cli_client(a, 0);
        xc_client_value_t *r = NULL;
        if (!c) out = XC_CLI_FAIL;
        else if ((rc = xc_client_latent(c, j, &r)) < 0) out = xc_cli_fail(a, c, rc);
        else if (xc_lat_from_value(xc_client_value_get(r, "stats"), j, &l) != XC_OK) {
            xc_cli_err(a, "the daemon's reply has no latent statistics (protocol mismatch?)");
            out = XC_CLI_FAIL;
        } else {
            out = print_latent(a, "control", (long)xc_client_value_getnum(r, "snapshot_step", -1), &l);
        }
        xc_client_value_free(&r);
        xc_client_destroy(&c);
    }
    xc_cli_source_close(&src);
    return out;
}

/* ------------------------------------------------------------ scaling */

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct {
    long step;
    uint64_t tokens;
    long chat_only, chat_specific;
} pass_result_t;

/* Waits for the pass started just now: the `scaling` event, or (should the
 * subscription have missed it) status showing one more completed pass. Gives up
 * when tokens_done has not moved for the timeout. */
static int wait_pass(xc_cli_args_t *a, xc_client_t *c, double passes0, double cancelled0, pass_result_t *res)
{
    double stall_s = a->timeout_s, last_move = mono_s(), last_poll = 0, done_last = -1;
    int out = XC_CLI_OK, started = 0;
    xc_cli_progress_t pg;
    xc_cli_progress_start(&pg, "exact Latent Scaling pass", "tokens", 0, xc_cli_flag(a, "quiet"));
    for (;;) {
        xc_client_value_t *ev = NULL, *st = NULL;
        int rc = xc_client_next_event(c, 250, &ev);
        /* subscribed to "scaling" only; a daemon that leaves out "type" is tolerated */
        if (rc == XC_OK && !strcmp(xc_client_value_getstr(ev, "type", "scaling"), "scaling") &&
            xc_client_value_get(ev, "step")) {
            res->step = (long)xc_client_value_getnum(ev, "step", -1);
            res->tokens = (uint64_t)xc_client_value_getnum(ev, "tokens", 0);
            res->chat_only = (long)xc_client_value_getnum(ev, "chat_only", -1);
            res->chat_specific = (long)xc_client_value_getnum(ev, "chat_specific", -1);
            xc_client_value_free(&ev);
            break;
        }
        xc_client_value_free(&ev);
        if (xc_cli_stop) {
            xc_cli_err(a, "interrupted (the pass goes on in the daemon)");
            out = XC_CLI_FAIL;
            break;
        }
        if (mono_s() - last_poll < 1.0) continue;
        last_poll = mono_s();
        if ((rc = xc_client_status(c, &st)) < 0) {
            out = xc_cli_fail(a, c, rc);
            break;
        }
        double done = xc_client_value_getnum(st, "scaling.tokens_done", 0),
               target = xc_client_value_getnum(st, "scaling.tokens_target", 0),
               passes = xc_client_value_getnum(st, "scaling.passes", 0);
        const xc_client_value_t *running = xc_client_value_path(st, "scaling.running");
        double cancelled = xc_client_value_getnum(st, "scaling.cancelled", 0);
        if (running && running->type == XC_VAL_BOOL && !running->u.b && passes == passes0 && cancelled > cancelled0) {
            xc_client_value_free(&st);
            xc_cli_progress_end(&pg);
            xc_cli_err(a, "the exact pass was cancelled (xcoder scaling --cancel) after %.0f of %.0f tokens", done,
                       target);
            return XC_CLI_FAIL;
        }
        if (running && running->type == XC_VAL_BOOL && !running->u.b && passes > passes0) {
            /* finished, and the event did not reach us */
            res->step = (long)xc_client_value_getnum(st, "scaling.last_step", -1);
            res->tokens = (uint64_t)xc_client_value_getnum(st, "scaling.last_tokens", 0);
            res->chat_only = (long)xc_client_value_getnum(st, "classes.chat_only", -1);
            res->chat_specific = (long)xc_client_value_getnum(st, "classes." XC_COUNT_CHAT_SPECIFIC_NAME, -1);
            xc_client_value_free(&st);
            break;
        }
        xc_client_value_free(&st);
        if (done != done_last) {
            done_last = done;
            last_move = mono_s();
        }
        if (!started && target > 0) { /* the ETA counts from the first progress seen */
            xc_cli_progress_start(&pg, "exact Latent Scaling pass", "tokens", target, xc_cli_flag(a, "quiet"));
            started = 1;
            pg.base = done;
        }
        if (started) xc_cli_progress_update(&pg, done);
        if (stall_s > 0 && mono_s() - last_move > stall_s) {
            xc_cli_progress_end(&pg);
            xc_cli_err(a, "the exact pass made no progress for %g s (%.0f of %.0f tokens): is a producer streaming "
                       "tokens and training running? (--timeout sets this limit; the pass goes on in the daemon)",
                       stall_s, done, target);
            return XC_CLI_TIMEOUT;
        }
    }
    xc_cli_progress_end(&pg);
    return out;
}

/* The top chat-only latents by Δnorm after the pass, from shared memory when it
 * holds this pass's results, else from `top`. */
static int pass_latents(xc_cli_args_t *a, xc_client_t *c, int mode, long step, long top, xc_lat_t **l, size_t *n,
                        const char **source)
{
    xc_cli_source_t src;
    int rc = xc_cli_source_open(a, mode, NULL, &src);
    if (rc) return rc;
    *l = NULL;
    *n = 0;
    if (src.kind == XC_LAT_SRC_SHM) {
        /* the daemon writes shared memory before it announces the pass */
        for (int tries = 0; tries < 40; tries++) {
            xc_shm_snapshot_t snap;
            rc = xc_cli_source_snapshot(&src, &snap);
            if (rc) break;
            if (snap.hdr.scaling_step == step) {
                rc = xc_lat_select_shm(&snap, XC_LAT_F_DELTA_NORM, 0, 0, XC_CLASS_CHAT_ONLY, (size_t)top, l, n);
                xc_shm_snapshot_free(&snap);
                *source = "shm";
                break;
            }
            xc_shm_snapshot_free(&snap);
            rc = XC_ESTATE;
            struct timespec ts = {0, 50000000};
            nanosleep(&ts, NULL);
        }
        xc_cli_source_close(&src);
        if (rc == XC_OK) return XC_CLI_OK;
        if (mode == XC_LAT_SRC_SHM) {
            xc_cli_err(a, "shared memory /xcoderd.%s does not hold the step-%ld pass: %s", src.instance, step,
                       xc_strerror(rc));
            return XC_CLI_FAIL;
        }
        if (a->verbose) fprintf(stderr, "xcoder scaling: shared memory lacks the pass; asking the daemon\n");
    }
    xc_cli_source_close(&src);
    xc_client_value_t *r = NULL;
    /* alive latents by Δ: the chat-only ones come first */
    rc = xc_client_top(c, "delta_norm", top, 0, 1, &r);
    if (rc < 0) return xc_cli_fail(a, c, rc);
    const xc_client_value_t *arr = xc_client_value_get(r, "latents");
    size_t cap = arr && arr->type == XC_VAL_ARRAY ? arr->u.a.n : 0;
    *l = calloc(cap ? cap : 1, sizeof **l);
    for (size_t i = 0; *l && i < cap; i++)
        if (xc_lat_from_value(&arr->u.a.items[i], -1, &(*l)[*n]) == XC_OK && (*l)[*n].cls == XC_CLASS_CHAT_ONLY) (*n)++;
    xc_client_value_free(&r);
    *source = "control";
    return *l ? XC_CLI_OK : XC_CLI_FAIL;
}

static void print_pass(const pass_result_t *p, const char *source, const xc_lat_t *l, size_t n)
{
    char b[4][32];
    printf("exact Latent Scaling pass: dictionary of step %ld, %llu tokens\n", p->step, (unsigned long long)p->tokens);
    printf("chat-only latents: %ld, of which chat-specific: %ld\n", p->chat_only, p->chat_specific);
    if (!n) {
        printf("no chat-only latents\n");
        return;
    }
    printf("top %zu chat-only latents by Δnorm (from %s):\n", n, source);
    printf("%7s   Δnorm    ν^ε exact    ν^r exact   ν^ε run   ν^r run   activations  chat-specific\n", "latent");
    for (size_t i = 0; i < n; i++)
        printf("%7ld %7.4f %12s %12s %9s %9s %13.0f  %s\n", l[i].j, l[i].delta_norm,
               fmt_num(l[i].has_exact ? l[i].exact.nu_err : NAN, "%.4f", b[0], 32),
               fmt_num(l[i].has_exact ? l[i].exact.nu_rec : NAN, "%.4f", b[1], 32),
               fmt_num(l[i].run.nu_err, "%.4f", b[2], 32), fmt_num(l[i].run.nu_rec, "%.4f", b[3], 32),
               l[i].has_exact && isfinite(l[i].exact.active) ? l[i].exact.active : 0.0, l[i].chat_specific ? "yes" : "no");
    fflush(stdout);
}

int xc_cli_cmd_scaling(xc_cli_args_t *a)
{
    long tokens, top;
    int mode, rc = xc_cli_opt_long(a, "tokens", 1000000, 1, 1L << 40, &tokens);
    if (!rc) rc = xc_cli_opt_long(a, "top", 10, 1, 100000, &top);
    if (!rc) rc = xc_cli_source_mode(a, &mode);
    if (rc) return rc;
    const char *ckpt = xc_cli_opt(a, "checkpoint"), *data = xc_cli_opt(a, "data");
    if (ckpt || data) {
        if (!ckpt || !data) {
            xc_cli_err(a, "offline Latent Scaling needs both --checkpoint FILE and --data FILE.npy");
            return XC_CLI_USAGE;
        }
        return xc_cli_scaling_offline(a, ckpt, data, top);
    }
    int wait = xc_cli_flag(a, "wait"), cancel = xc_cli_flag(a, "cancel");
    if (cancel && (wait || xc_cli_opt(a, "tokens"))) {
        xc_cli_err(a, "--cancel takes neither --wait nor --tokens");
        return XC_CLI_USAGE;
    }
    xc_cli_trap_signals();
    xc_client_t *c = xc_cli_client(a, 0);
    if (!c) return XC_CLI_FAIL;
    xc_client_value_t *r = NULL;
    int out = XC_CLI_OK;
    double passes0 = 0, cancelled0 = 0;
    if (cancel) {
        xc_client_arg_t carg = {"cancel", XC_ARG_BOOL, 1, 0, NULL};
        if ((rc = xc_client_request(c, "scaling", &carg, 1, &r)) < 0) {
            out = xc_cli_fail(a, c, rc);
        } else if (a->json) {
            out = xc_cli_print_json(a, r);
        } else {
            printf("exact Latent Scaling pass cancelled after %.0f of %.0f tokens\n",
                   xc_client_value_getnum(r, "tokens_done", 0), xc_client_value_getnum(r, "tokens_target", 0));
        }
        goto done;
    }
    if (wait) {
        /* subscribe before the op: the event may follow it closely */
        if ((rc = xc_client_subscribe(c, "scaling")) < 0) {
            out = xc_cli_fail(a, c, rc);
            goto done;
        }
        if ((rc = xc_client_status(c, &r)) < 0) {
            out = xc_cli_fail(a, c, rc);
            goto done;
        }
        passes0 = xc_client_value_getnum(r, "scaling.passes", 0);
        cancelled0 = xc_client_value_getnum(r, "scaling.cancelled", 0);
        xc_client_value_free(&r);
    }
    xc_client_arg_t arg = {"tokens", XC_ARG_INT, tokens, 0, NULL};
    rc = xc_client_request(c, "scaling", xc_cli_opt(a, "tokens") ? &arg : NULL, xc_cli_opt(a, "tokens") ? 1 : 0, &r);
    if (rc == XC_ESTATE && wait) {
        /* a pass is under way: wait for that one rather than fail */
        fprintf(stderr, "xcoder scaling: attaching to the exact pass already under way\n");
    } else if (rc < 0) {
        out = xc_cli_fail(a, c, rc);
        goto done;
    }
    if (!wait) {
        if (a->json) out = xc_cli_print_json(a, r);
        else
            printf("exact Latent Scaling pass started over the next %.0f trained tokens; the 'scaling' event announces "
                   "the result (xcoder events --topic scaling)\n",
                   xc_client_value_getnum(r, "tokens", (double)tokens));
        goto done;
    }
    xc_client_value_free(&r);
    pass_result_t p = {-1, 0, -1, -1};
    if ((out = wait_pass(a, c, passes0, cancelled0, &p)) != XC_CLI_OK) goto done;
    xc_lat_t *l = NULL;
    size_t n = 0;
    const char *source = "control";
    if ((out = pass_latents(a, c, mode, p.step, top, &l, &n, &source)) != XC_CLI_OK) {
        free(l);
        goto done;
    }
    if (a->json) {
        xc_buf_t b;
        xc_mpw_t w;
        xc_buf_init(&b);
        xc_mpw_init(&w, &b);
        xc_mpw_map_begin(&w);
        xc_mpw_kv_int(&w, "step", p.step);
        xc_mpw_kv_uint(&w, "tokens", p.tokens);
        xc_mpw_kv_int(&w, "chat_only", p.chat_only);
        xc_mpw_kv_int(&w, "chat_specific", p.chat_specific);
        xc_mpw_kv_str(&w, "source", source);
        write_latents(&w, l, n);
        xc_mpw_map_end(&w);
        out = xc_cli_print_mpw(a, &w);
        xc_buf_free(&b);
    } else {
        print_pass(&p, source, l, n);
    }
    free(l);
done:
    xc_client_value_free(&r);
    xc_client_destroy(&c);
    return out;
}
