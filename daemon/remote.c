/* Remote access over the control socket: checkpoints, fetch, table
 * (xc_remote.h, PROTOCOL.md 2.1 and 2.2). */
#include "xc_remote.h"
#include "xc_log.h"
#include "xc_remote_proto.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "table columns are written as host-order arrays; add byte swapping for a big-endian host"
#endif

#define NAME_MAX_BYTES 208
#define CACHE_N 32          /* checksums remembered */
#define LIST_MAX 10000      /* files in one checkpoints reply */
#define TABLE_ROWS_MAX (1L << 20)

typedef struct {
    char name[NAME_MAX_BYTES];
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    char sum[72];
} sum_entry_t;

typedef struct job {
    uv_work_t work;
    struct job *next;
    xc_remote_t *r;
    uint8_t *raw;           /* the request frame; owned */
    size_t raw_len;
    uint8_t *tag;           /* owned copy of the caller's tag */
    char name[NAME_MAX_BYTES];
    int has_name;
    uint64_t offset, length;
    /* results (worker thread) */
    int rc;
    char why[XC_PROTO_REASON_MAX];
    uint64_t size;
    double mtime;
    char sum[72];
    uint8_t *data;          /* owned; n bytes */
    size_t n;
} job_t;

struct xc_remote {
    uv_loop_t *loop;
    char *state_dir;
    size_t tag_size;
    xc_remote_reply_fn fn;
    void *ctx;
    pthread_mutex_t mu;     /* guards the checksum cache (workers and loop) */
    sum_entry_t cache[CACHE_N];
    int cache_next;
    job_t *head, *tail;     /* waiting for a worker */
    int queued, running;
};

xc_remote_t *xc_remote_new(uv_loop_t *loop, const char *state_dir, size_t tag_size, xc_remote_reply_fn fn,
                           void *ctx)
{
    xc_remote_t *r = calloc(1, sizeof *r); /* owned by the caller */
    if (!r) return NULL;
    r->state_dir = strdup(state_dir ? state_dir : ".");
    if (!r->state_dir) {
        free(r);
        return NULL;
    }
    r->loop = loop;
    r->tag_size = tag_size;
    r->fn = fn;
    r->ctx = ctx;
    pthread_mutex_init(&r->mu, NULL);
    return r;
}

static void job_free(job_t *j)
{
    if (!j) return;
    free(j->raw);
    free(j->tag);
    free(j->data);
    free(j);
}

void xc_remote_destroy(xc_remote_t **pr)
{
    xc_remote_t *r = pr ? *pr : NULL;
    if (!r) return;
    while (r->head) { /* never started (the loop ended first) */
        job_t *j = r->head;
        r->head = j->next;
        job_free(j);
    }
    pthread_mutex_destroy(&r->mu);
    free(r->state_dir);
    free(r);
    *pr = NULL;
}

int xc_remote_busy(const xc_remote_t *r) { return r ? r->queued + r->running : 0; }

static double ts_seconds(const struct timespec *t) { return (double)t->tv_sec + t->tv_nsec / 1e9; }

/* ------------------------------------------------------------ checksums -- */
static int cache_get(xc_remote_t *r, const char *name, const struct stat *st, char sum[72])
{
    int hit = 0;
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < CACHE_N && !hit; i++) {
        const sum_entry_t *e = &r->cache[i];
        if (e->sum[0] && e->dev == st->st_dev && e->ino == st->st_ino && e->size == st->st_size &&
            e->mtime.tv_sec == st->st_mtim.tv_sec && e->mtime.tv_nsec == st->st_mtim.tv_nsec &&
            strcmp(e->name, name) == 0) {
            memcpy(sum, e->sum, 72);
            hit = 1;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return hit;
}

static void cache_put(xc_remote_t *r, const char *name, const struct stat *st, const char sum[72])
{
    pthread_mutex_lock(&r->mu);
    sum_entry_t *e = &r->cache[r->cache_next];
    r->cache_next = (r->cache_next + 1) % CACHE_N;
    snprintf(e->name, sizeof e->name, "%s", name);
    e->dev = st->st_dev;
    e->ino = st->st_ino;
    e->size = st->st_size;
    e->mtime = st->st_mtim;
    memcpy(e->sum, sum, 72);
    pthread_mutex_unlock(&r->mu);
}

/* Reads exactly n bytes at off (pread, retried on short reads / EINTR). */
static int read_at(int fd, uint8_t *buf, size_t n, uint64_t off)
{
    size_t got = 0;
    while (got < n) {
        ssize_t k = pread(fd, buf + got, n - got, (off_t)(off + got));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return k < 0 ? -errno : -EIO;
        got += (size_t)k;
    }
    return 0;
}

/* --------------------------------------------------------------- listing -- */
typedef struct {
    char name[NAME_MAX_BYTES];
    uint64_t size;
    long step;
    int plain;              /* NAME-STEP.safetensors, not NAME-STEP.KIND.safetensors */
    char kind[32];
    struct timespec mtime;
    struct stat st;
} entry_t;

static int entry_cmp(const void *pa, const void *pb)
{
    const entry_t *a = pa, *b = pb;
    if (a->step != b->step) return a->step < b->step ? -1 : 1;
    if (a->plain != b->plain) return a->plain ? 1 : -1; /* the checkpoint itself is the newest of its step */
    if (a->mtime.tv_sec != b->mtime.tv_sec) return a->mtime.tv_sec < b->mtime.tv_sec ? -1 : 1;
    if (a->mtime.tv_nsec != b->mtime.tv_nsec) return a->mtime.tv_nsec < b->mtime.tv_nsec ? -1 : 1;
    return strcmp(a->name, b->name);
}

/* Every checkpoint file in state_dir, oldest first (by step, then mtime,
 * then name). *out owned by the caller (free). Returns the count, or an
 * XC_E* with why. */
static long list_dir(const char *dir, entry_t **out, int *truncated, char *why, size_t wl)
{
    *out = NULL;
    *truncated = 0;
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) return 0;
        xc_why(why, wl, "cannot read the state directory: %s", strerror(errno));
        return XC_EIO;
    }
    long n = 0, cap = 0;
    entry_t *v = NULL;
    struct dirent *de;
    int dfd = dirfd(d);
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (!xc_ckpt_name_ok(de->d_name, len)) continue;
        struct stat st;
        if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) || !S_ISREG(st.st_mode)) continue;
        if (n >= LIST_MAX) {
            *truncated = 1;
            break;
        }
        if (n == cap) {
            long nc = cap ? cap * 2 : 16;
            entry_t *nv = realloc(v, (size_t)nc * sizeof *nv);
            if (!nv) {
                free(v);
                closedir(d);
                xc_why(why, wl, "out of memory listing checkpoints");
                return XC_ENOMEM;
            }
            v = nv;
            cap = nc;
        }
        entry_t *e = &v[n++];
        memcpy(e->name, de->d_name, len + 1); /* len <= 200 (xc_ckpt_name_ok) */
        e->size = (uint64_t)st.st_size;
        e->step = xc_ckpt_name_step(de->d_name, len);
        xc_ckpt_name_kind(de->d_name, len, e->kind, sizeof e->kind);
        e->plain = strcmp(e->kind, "checkpoint") == 0;
        e->mtime = st.st_mtim;
        e->st = st;
    }
    closedir(d);
    if (n > 1) qsort(v, (size_t)n, sizeof *v, entry_cmp);
    *out = v;
    return n;
}

void xc_remote_checkpoints(xc_remote_t *r, const xc_request_t *req, const void *raw, size_t raw_len,
                           xc_buf_t *out)
{
    char why[XC_PROTO_REASON_MAX];
    entry_t *v = NULL;
    int truncated = 0;
    xc_buf_reset(out);
    long n = list_dir(r->state_dir, &v, &truncated, why, sizeof why);
    if (n < 0) {
        xc_proto_error_encode(out, req, (int)n, why);
        return;
    }
    xc_mpw_t w;
    xc_mpw_init(&w, out);
    xc_proto_reply_begin(&w, req);
    xc_mpw_str(&w, "checkpoints");
    xc_mpw_array_begin(&w);
    for (long i = 0; i < n; i++) {
        char sum[72];
        xc_mpw_map_begin(&w);
        xc_mpw_kv_str(&w, "name", v[i].name);
        xc_mpw_kv_uint(&w, "size", v[i].size);
        xc_mpw_kv_int(&w, "step", v[i].step);
        xc_mpw_kv_str(&w, "kind", v[i].kind);
        xc_mpw_kv_double(&w, "mtime", ts_seconds(&v[i].mtime));
        if (cache_get(r, v[i].name, &v[i].st, sum)) xc_mpw_kv_str(&w, "checksum", sum);
        xc_mpw_map_end(&w);
    }
    xc_mpw_array_end(&w);
    if (n > 0) xc_mpw_kv_str(&w, "newest", v[n - 1].name);
    else xc_mpw_kv_nil(&w, "newest");
    xc_mpw_kv_bool(&w, "truncated", truncated);
    xc_mpw_map_end(&w);
    free(v);
    if (xc_mpw_finish(&w)) {
        xc_buf_reset(out);
        xc_proto_error_encode(out, req, XC_ENOMEM, "could not encode the reply");
    }
}

/* ----------------------------------------------------------------- fetch -- */
/* Worker thread: resolve the file, checksum it (cached), read the chunk. */
static void fetch_work(uv_work_t *wq)
{
    job_t *j = wq->data;
    xc_remote_t *r = j->r;
    uint8_t *buf = NULL;
    int fd = -1;
    if (!j->has_name) {
        entry_t *v = NULL;
        int truncated;
        long n = list_dir(r->state_dir, &v, &truncated, j->why, sizeof j->why);
        if (n <= 0) {
            j->rc = n < 0 ? (int)n : XC_ENOTFOUND;
            if (n == 0) xc_why(j->why, sizeof j->why, "no checkpoint has been written yet");
            free(v);
            return;
        }
        snprintf(j->name, sizeof j->name, "%s", v[n - 1].name);
        free(v);
    }
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", r->state_dir, j->name) >= sizeof path) {
        j->rc = XC_EINVAL;
        xc_why(j->why, sizeof j->why, "state_dir path too long");
        return;
    }
    /* O_NONBLOCK: a FIFO or device planted under a checkpoint's name must not
     * block the worker (and with it every later fetch and the shutdown); only
     * regular files with one link, owned by this user, are served (a hard link
     * could name any file the daemon can read) */
    fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    struct stat st, st2;
    if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (st.st_nlink != 1 || st.st_uid != geteuid())) {
        j->rc = XC_EPERM;
        xc_why(j->why, sizeof j->why, "'%s' is not served: a checkpoint file has exactly one link and belongs "
               "to the daemon's user (this one has %lu links, owner uid %lu)", j->name,
               (unsigned long)st.st_nlink, (unsigned long)st.st_uid);
        goto out;
    }
    if (fd < 0 || fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        int e = errno;
        j->rc = fd < 0 && e != ENOENT && e != ELOOP ? XC_EIO : XC_ENOTFOUND;
        if (j->rc == XC_ENOTFOUND)
            xc_why(j->why, sizeof j->why, "no checkpoint '%s' (it may have been removed; op checkpoints lists "
                    "the retained ones)", j->name);
        else xc_why(j->why, sizeof j->why, "cannot open checkpoint '%s': %s", j->name, strerror(e));
        goto out;
    }
    j->size = (uint64_t)st.st_size;
    j->mtime = ts_seconds(&st.st_mtim);
    if (j->offset > j->size) {
        j->rc = XC_EINVAL;
        xc_why(j->why, sizeof j->why, "offset %llu is beyond the end of '%s' (%llu bytes)",
                (unsigned long long)j->offset, j->name, (unsigned long long)j->size);
        goto out;
    }
    j->n = (size_t)(j->size - j->offset < j->length ? j->size - j->offset : j->length);
    int cached = cache_get(r, j->name, &st, j->sum);
    size_t blen = cached ? j->n : XC_FETCH_CHUNK_MAX;
    buf = malloc(blen ? blen : 1); /* one buffer: the hash streams through it, then the chunk */
    if (!buf) {
        j->rc = XC_ENOMEM;
        xc_why(j->why, sizeof j->why, "out of memory for a %zu-byte chunk", blen);
        goto out;
    }
    if (!cached) {
        xc_sha256_t h;
        uint8_t dg[32];
        xc_sha256_init(&h);
        for (uint64_t off = 0; off < j->size;) {
            size_t k = j->size - off < XC_FETCH_CHUNK_MAX ? (size_t)(j->size - off) : XC_FETCH_CHUNK_MAX;
            int e = read_at(fd, buf, k, off);
            if (e) {
                j->rc = XC_EIO;
                xc_why(j->why, sizeof j->why, "cannot read checkpoint '%s': %s", j->name,
                        e == -EIO ? "file shorter than its size" : strerror(-e));
                goto out;
            }
            xc_sha256_update(&h, buf, k);
            off += k;
        }
        xc_sha256_final(&h, dg);
        xc_sha256_checksum(dg, j->sum);
        if (fstat(fd, &st2) || st2.st_size != st.st_size || st2.st_mtim.tv_sec != st.st_mtim.tv_sec ||
            st2.st_mtim.tv_nsec != st.st_mtim.tv_nsec) {
            j->rc = XC_EAGAIN;
            xc_why(j->why, sizeof j->why, "checkpoint '%s' changed while its checksum was computed; retry",
                    j->name);
            goto out;
        }
        cache_put(r, j->name, &st, j->sum);
    }
    if (j->n) {
        int e = read_at(fd, buf, j->n, j->offset);
        if (e) {
            j->rc = XC_EIO;
            xc_why(j->why, sizeof j->why, "cannot read checkpoint '%s' at %llu: %s", j->name,
                    (unsigned long long)j->offset, e == -EIO ? "file shorter than its size" : strerror(-e));
            goto out;
        }
    }
    j->data = buf;
    buf = NULL;
out:
    free(buf);
    if (fd >= 0) close(fd);
}

static void start_jobs(xc_remote_t *r);

/* Loop thread: encode and hand the reply to the service. */
static void fetch_done(uv_work_t *wq, int status)
{
    job_t *j = wq->data;
    xc_remote_t *r = j->r;
    xc_request_t req;
    char why[XC_PROTO_REASON_MAX];
    xc_buf_t out;
    r->running--;
    xc_buf_init(&out);
    int rc = xc_proto_request_decode(j->raw, j->raw_len, &req, why, sizeof why);
    if (rc == 0 && status == UV_ECANCELED) {
        j->rc = XC_ESHUTDOWN;
        xc_why(j->why, sizeof j->why, "the daemon stopped before the chunk was read");
    }
    if (rc) {
        xc_proto_error_encode(&out, &req, rc, why);
    } else if (j->rc) {
        xc_proto_error_encode(&out, &req, j->rc, j->why);
    } else {
        xc_mpw_t w;
        xc_mpw_init(&w, &out);
        xc_proto_reply_begin(&w, &req);
        xc_mpw_kv_str(&w, "name", j->name);
        xc_mpw_kv_uint(&w, "size", j->size);
        xc_mpw_kv_str(&w, "checksum", j->sum);
        xc_mpw_kv_int(&w, "step", xc_ckpt_name_step(j->name, strlen(j->name)));
        xc_mpw_kv_double(&w, "mtime", j->mtime);
        xc_mpw_kv_uint(&w, "offset", j->offset);
        xc_mpw_kv_bool(&w, "eof", j->offset + j->n == j->size);
        xc_mpw_str(&w, "data");
        xc_mpw_bin(&w, j->data, j->n);
        xc_mpw_map_end(&w);
        if (xc_mpw_finish(&w)) {
            j->rc = XC_ENOMEM;
            xc_buf_reset(&out);
            xc_proto_error_encode(&out, &req, XC_ENOMEM, "could not encode the reply");
        }
    }
    if (!out.err && out.len) r->fn(r->ctx, j->tag, out.data, out.len, rc || j->rc);
    xc_proto_request_free(&req);
    xc_buf_free(&out);
    job_free(j);
    start_jobs(r);
}

static void start_jobs(xc_remote_t *r)
{
    while (r->head && r->running < XC_REMOTE_WORKERS) {
        job_t *j = r->head;
        r->head = j->next;
        if (!r->head) r->tail = NULL;
        r->queued--;
        j->work.data = j;
        if (uv_queue_work(r->loop, &j->work, fetch_work, fetch_done)) {
            j->rc = XC_ESYS; /* cannot happen with a live loop; answer rather than drop */
            xc_why(j->why, sizeof j->why, "cannot queue the read");
            r->running++;
            fetch_done(&j->work, 0);
            continue;
        }
        r->running++;
    }
}

static int arg_u64(const xc_request_t *req, const char *key, uint64_t *out, char *why, size_t wl)
{
    xc_mp_node_t n = xc_mp_get(req->root, key);
    if (xc_mp_type(n) == XC_MP_NONE || xc_mp_type(n) == XC_MP_NIL) return 0;
    if (xc_mp_as_u64(n, out)) {
        xc_why(why, wl, "argument '%s' must be an unsigned integer", key);
        return XC_EINVAL;
    }
    return 1;
}

int xc_remote_fetch(xc_remote_t *r, const xc_request_t *req, const void *raw, size_t raw_len, const void *tag,
                    char *why, size_t wl)
{
    job_t *j;
    const char *s;
    size_t sl;
    int rc;
    if (r->queued >= XC_REMOTE_QUEUE_MAX) {
        xc_why(why, wl, "too many fetch requests waiting (%d); retry", r->queued);
        return XC_EAGAIN;
    }
    j = calloc(1, sizeof *j); /* owned by the queue, then by the work item */
    if (!j) goto nomem;
    xc_mp_node_t f = xc_mp_get(req->root, "file");
    if (xc_mp_type(f) != XC_MP_NONE && xc_mp_type(f) != XC_MP_NIL) {
        if (xc_mp_as_str(f, &s, &sl)) {
            xc_why(why, wl, "argument 'file' must be a string (a name from the checkpoints op)");
            rc = XC_EINVAL;
            goto fail;
        }
        if (!xc_ckpt_name_ok(s, sl)) {
            xc_why(why, wl, "'%.*s' is not a checkpoint file name: only NAME.safetensors files in the "
                    "daemon's state_dir are served (no paths)", (int)(sl > 100 ? 100 : sl), s);
            rc = XC_EINVAL;
            goto fail;
        }
        memcpy(j->name, s, sl);
        j->name[sl] = 0;
        j->has_name = 1;
    }
    j->length = XC_FETCH_CHUNK_MAX;
    if ((rc = arg_u64(req, "offset", &j->offset, why, wl)) < 0) goto fail;
    if ((rc = arg_u64(req, "length", &j->length, why, wl)) < 0) goto fail;
    if (j->length > XC_FETCH_CHUNK_MAX) j->length = XC_FETCH_CHUNK_MAX;
    j->r = r;
    j->raw = malloc(raw_len ? raw_len : 1);
    j->tag = malloc(r->tag_size ? r->tag_size : 1);
    if (!j->raw || !j->tag) goto nomem;
    memcpy(j->raw, raw, raw_len);
    j->raw_len = raw_len;
    memcpy(j->tag, tag, r->tag_size);
    if (r->tail) r->tail->next = j;
    else r->head = j;
    r->tail = j;
    r->queued++;
    start_jobs(r);
    return XC_OK;
nomem:
    xc_why(why, wl, "out of memory");
    rc = XC_ENOMEM;
fail:
    job_free(j);
    return rc;
}

/* ----------------------------------------------------------------- table -- */
typedef struct {
    int cols[64];
    int ncols;
    uint64_t start, count;
    const uint64_t *js;     /* NULL: the range */
    uint64_t *js_owned;
} table_args_t;

static int table_args(const xc_request_t *req, long F, table_args_t *a, char *why, size_t wl)
{
    memset(a, 0, sizeof *a);
    xc_mp_node_t f = xc_mp_get(req->root, "fields");
    xc_mp_type_t ft = xc_mp_type(f);
    if (ft == XC_MP_NONE || ft == XC_MP_NIL) {
        for (int c = 0; c < xc_table_ncols; c++)
            if (xc_table_cols[c].by_default) a->cols[a->ncols++] = c;
    } else if (ft == XC_MP_ARRAY || ft == XC_MP_STR) {
        size_t n = ft == XC_MP_ARRAY ? xc_mp_len(f) : 1;
        const char *list = NULL;
        size_t ll = 0;
        if (ft == XC_MP_STR) xc_mp_as_str(f, &list, &ll);
        size_t pos = 0;
        for (size_t i = 0; ft == XC_MP_ARRAY ? i < n : pos <= ll; i++) {
            const char *s;
            size_t sl;
            if (ft == XC_MP_ARRAY) {
                if (xc_mp_as_str(xc_mp_at(f, i), &s, &sl)) {
                    xc_why(why, wl, "argument 'fields' must be an array of strings (or one comma-separated "
                            "string)");
                    return XC_EINVAL;
                }
            } else { /* "a,b,c" */
                const char *comma = memchr(list + pos, ',', ll - pos);
                s = list + pos;
                sl = comma ? (size_t)(comma - s) : ll - pos;
                pos += sl + 1;
                if (sl == 0) continue;
            }
            int c = xc_table_col_find(s, sl);
            if (c < 0) {
                xc_why(why, wl, "unknown table field '%.*s'; fields are the arrays of proto/SHM.md "
                        "(delta_norm, cosine, norm_base, ..., class, flags) and fired, tokens_since_fired, "
                        "dead, j", (int)(sl > 40 ? 40 : sl), s);
                return XC_EINVAL;
            }
            int dup = 0;
            for (int k = 0; k < a->ncols; k++) dup |= a->cols[k] == c;
            if (!dup && a->ncols < (int)(sizeof a->cols / sizeof a->cols[0])) a->cols[a->ncols++] = c;
        }
        if (a->ncols == 0) {
            xc_why(why, wl, "argument 'fields' names no field");
            return XC_EINVAL;
        }
    } else {
        xc_why(why, wl, "argument 'fields' must be an array of strings (or one comma-separated string)");
        return XC_EINVAL;
    }
    xc_mp_node_t js = xc_mp_get(req->root, "js");
    int has_range = xc_mp_type(xc_mp_get(req->root, "start")) != XC_MP_NONE ||
                    xc_mp_type(xc_mp_get(req->root, "count")) != XC_MP_NONE;
    if (xc_mp_type(js) != XC_MP_NONE && xc_mp_type(js) != XC_MP_NIL) {
        if (has_range) {
            xc_why(why, wl, "give either 'js' or 'start'/'count', not both");
            return XC_EINVAL;
        }
        if (xc_mp_type(js) != XC_MP_ARRAY) {
            xc_why(why, wl, "argument 'js' must be an array of latent indices");
            return XC_EINVAL;
        }
        size_t n = xc_mp_len(js);
        a->js_owned = malloc((n ? n : 1) * sizeof *a->js_owned); /* freed by table_args_free */
        if (!a->js_owned) {
            xc_why(why, wl, "out of memory");
            return XC_ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
            uint64_t v;
            if (xc_mp_as_u64(xc_mp_at(js, i), &v)) {
                xc_why(why, wl, "argument 'js' must hold unsigned integers (item %zu does not)", i);
                return XC_EINVAL;
            }
            if (v >= (uint64_t)F) {
                xc_why(why, wl, "latent %llu does not exist (dict_size = %ld)", (unsigned long long)v, F);
                return XC_ENOTFOUND;
            }
            a->js_owned[i] = v;
        }
        a->js = a->js_owned;
        a->count = n;
        return XC_OK;
    }
    int rc;
    a->count = UINT64_MAX;
    if ((rc = arg_u64(req, "start", &a->start, why, wl)) < 0) return rc;
    if ((rc = arg_u64(req, "count", &a->count, why, wl)) < 0) return rc;
    if (a->start > (uint64_t)F) {
        xc_why(why, wl, "start %llu is beyond dict_size = %ld", (unsigned long long)a->start, F);
        return XC_ENOTFOUND;
    }
    if (a->count > (uint64_t)F - a->start) a->count = (uint64_t)F - a->start;
    if (a->count > (uint64_t)TABLE_ROWS_MAX) {
        xc_why(why, wl, "%llu rows asked for; one reply holds at most %ld: page with start/count",
                (unsigned long long)a->count, TABLE_ROWS_MAX);
        return XC_ETOOBIG;
    }
    return XC_OK;
}

static void table_args_free(table_args_t *a) { free(a->js_owned); }

int xc_remote_table_check(const xc_request_t *req, long dict_size, char *why, size_t wl)
{
    table_args_t a;
    int rc = table_args(req, dict_size, &a, why, wl);
    table_args_free(&a);
    return rc;
}

/* One column value of latent j into dst (host order = little-endian), read
 * through the schema's column accessor. */
static void col_value(int c, const xc_snapshot_t *x, long j, uint8_t *dst)
{
    double d;
    int64_t i;
    xc_latent_column(x, c, j, &d, &i);
    switch (xc_table_cols[c].dtype) {
    case XC_TCOL_F32: {
        float f = (float)d;
        memcpy(dst, &f, 4);
        break;
    }
    case XC_TCOL_F64: memcpy(dst, &d, 8); break;
    case XC_TCOL_I64: memcpy(dst, &i, 8); break;
    default: *dst = (uint8_t)i; break;
    }
}

int xc_remote_table(const xc_snapshot_t *x, long F, const xc_request_t *req, xc_buf_t *out, char *why, size_t wl)
{
    table_args_t a;
    int rc = table_args(req, F, &a, why, wl);
    if (rc) {
        table_args_free(&a);
        return rc;
    }
    if (!x) {
        table_args_free(&a);
        xc_why(why, wl, "no latent snapshot yet; retry");
        return XC_EAGAIN;
    }
    size_t n = (size_t)a.count;
    uint8_t *col = malloc(n ? n * 8 : 1); /* one column at a time */
    if (!col) {
        table_args_free(&a);
        xc_why(why, wl, "out of memory for %zu rows", n);
        return XC_ENOMEM;
    }
    xc_mpw_t w;
    xc_buf_reset(out);
    xc_mpw_init(&w, out);
    xc_proto_reply_begin(&w, req);
    xc_mpw_kv_int(&w, "snapshot_step", x->step);
    xc_mpw_kv_int(&w, "dict_size", F);
    xc_mpw_kv_uint(&w, "n", n);
    if (!a.js) xc_mpw_kv_uint(&w, "start", a.start);
    xc_mpw_kv_int(&w, "scaling_step", x->exact ? x->exact_step : -1);
    xc_mpw_kv_uint(&w, "scaling_tokens", x->exact ? x->exact_tokens : 0);
    xc_mpw_str(&w, "fields");
    xc_mpw_array_begin(&w);
    for (int k = 0; k < a.ncols; k++) xc_mpw_str(&w, xc_table_cols[a.cols[k]].name);
    xc_mpw_array_end(&w);
    xc_mpw_str(&w, "dtypes");
    xc_mpw_map_begin(&w);
    for (int k = 0; k < a.ncols; k++)
        xc_mpw_kv_str(&w, xc_table_cols[a.cols[k]].name, xc_table_dtype_name(xc_table_cols[a.cols[k]].dtype));
    xc_mpw_map_end(&w);
    xc_mpw_str(&w, "columns");
    xc_mpw_map_begin(&w);
    for (int k = 0; k < a.ncols; k++) {
        int c = a.cols[k];
        size_t es = xc_table_dtype_size(xc_table_cols[c].dtype);
        for (size_t i = 0; i < n; i++)
            col_value(c, x, a.js ? (long)a.js[i] : (long)(a.start + i), col + i * es);
        xc_mpw_str(&w, xc_table_cols[c].name);
        xc_mpw_bin(&w, col, n * es);
    }
    xc_mpw_map_end(&w);
    xc_mpw_map_end(&w);
    free(col);
    table_args_free(&a);
    rc = xc_mpw_finish(&w);
    if (rc) xc_why(why, wl, "could not encode the table (%zu rows)", n);
    return rc;
}
