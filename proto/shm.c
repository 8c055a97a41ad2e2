/* Shared-memory statistics: layout helpers, writer (daemon) and reader (clients).
 * See include/xc_shm.h and proto/SHM.md. */
#include "xc_shm.h"
#include "xc_schema.h"

#include "xc_error.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

_Static_assert(sizeof(xc_shm_header_t) == 1024, "shm header must stay 1024 bytes");
_Static_assert(offsetof(xc_shm_header_t, seq) == 40, "layout v1: seq at 40");
_Static_assert(offsetof(xc_shm_header_t, class_counts) == 184, "layout v1");
_Static_assert(offsetof(xc_shm_header_t, thresholds) == 224, "layout v1");
_Static_assert(offsetof(xc_shm_header_t, arrays) == 256, "layout v1");

/* The arrays' dtypes come from the column schema (proto/xc_schema.h): every
 * column with a shared-memory index names its array's dtype. */
typedef struct {
    int shm;
    uint32_t dtype, size;
} arr_dtype_t;
#define XC_SHM_DT_F32 XC_SHM_F32, 4
#define XC_SHM_DT_F64 XC_SHM_F64, 8
#define XC_SHM_DT_I64 XC_SHM_I64, 8
#define XC_SHM_DT_U8 XC_SHM_U8, 1
#define XC_SHM_ARR(name, dtype, shm, dflt, src, field) {shm, XC_SHM_DT_##dtype},
static const arr_dtype_t g_cols[] = {XC_LATENT_COLUMNS(XC_SHM_ARR)};
#undef XC_SHM_ARR

/* The dtype entry of array a (every array has one: checked by tests/test_shm). */
static arr_dtype_t arr_dtype(int a)
{
    for (size_t i = 0; i < sizeof g_cols / sizeof g_cols[0]; i++)
        if (g_cols[i].shm == a) return g_cols[i];
    return (arr_dtype_t){a, XC_SHM_U8, 1};
}

/* ------------------------------------------------------------------ classes */

void xc_class_thresholds_default(xc_class_thresholds_t *t)
{
    *t = (xc_class_thresholds_t){0.9f, 0.1f, 0.4f, 0.6f, 0.2f, 0.5f};
}

int xc_latent_class(float delta, int dead, const xc_class_thresholds_t *t)
{
    if (dead) return XC_CLASS_DEAD;
    if (delta >= t->chat_only_min) return XC_CLASS_CHAT_ONLY;
    if (delta <= t->base_only_max) return XC_CLASS_BASE_ONLY;
    if (delta >= t->shared_lo && delta < t->shared_hi) return XC_CLASS_SHARED;
    return XC_CLASS_OTHER;
}

int xc_latent_chat_specific(float delta, float nu_err, float nu_rec, const xc_class_thresholds_t *t)
{
    /* NaN compares false: an undefined nu never makes a latent chat-specific */
    return delta >= t->chat_only_min && nu_err < t->nu_err_max && nu_rec < t->nu_rec_max;
}

const char *xc_class_name(int cls)
{
#define XC_CLASS_NAME(e, v, name) [v] = name,
    static const char *const n[XC_CLASS_N] = {XC_CLASS_MAP(XC_CLASS_NAME)};
#undef XC_CLASS_NAME
    return cls >= 0 && cls < XC_CLASS_N ? n[cls] : "unknown";
}

int xc_shm_name(const char *instance, char *out, size_t out_len)
{
    if (!instance || !*instance || strlen(instance) > 200) return XC_EINVAL;
    for (const char *p = instance; *p; p++)
        if (*p == '/' || (unsigned char)*p < 0x20) return XC_EINVAL;
    int n = snprintf(out, out_len, "/xcoderd.%s", instance);
    return n > 0 && (size_t)n < out_len ? XC_OK : XC_EINVAL;
}

uint64_t xc_shm_checksum(const void *data, size_t len)
{
    const uint8_t *p = data;
    uint64_t h = 0xcbf29ce484222325ULL;
    size_t i = 0;
    /* FNV-1a over 8-byte words (then the tail bytes): cheap enough per update */
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0x100000001b3ULL;
    }
    for (; i < len; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

static size_t layout(uint32_t n_latents, xc_shm_array_desc_t *desc)
{
    size_t off = sizeof(xc_shm_header_t);
    for (int a = 0; a < XC_SHM_NARRAYS; a++) {
        off = (off + 63) & ~(size_t)63; /* every array 64-byte aligned */
        desc[a].offset = off;
        arr_dtype_t t = arr_dtype(a);
        desc[a].dtype = t.dtype;
        desc[a].elem_size = t.size;
        off += (size_t)n_latents * t.size;
    }
    return (off + 63) & ~(size_t)63;
}

/* ------------------------------------------------------------------ writer */

struct xc_shm_writer {
    char name[256];
    uint8_t *map;   /* owned mapping */
    size_t size;
    dev_t dev;      /* identity of the object this writer created, so that close */
    ino_t ino;      /* never unlinks a newer object of the same name */
};

/* Whether the object now named `name` is held by another live writer: its
 * header says alive and names a pid other than ours that still runs. Such an
 * object is another daemon's (same instance name, another run_dir): replacing or
 * unlinking it would leave that daemon publishing into a nameless object. A
 * crashed writer's object (pid gone) or a cleanly closed one is stale.
 * 1 with why set when busy, else 0. */
static int held_by_other(const char *name, char *why, size_t why_len)
{
    int fd = shm_open(name, O_RDONLY, 0);
    if (fd < 0) return 0;
    struct stat st;
    xc_shm_header_t h;
    int busy = 0;
    if (fstat(fd, &st) == 0 && (size_t)st.st_size >= sizeof h && pread(fd, &h, sizeof h, 0) == (ssize_t)sizeof h &&
        h.magic == XC_SHM_MAGIC && h.alive && h.writer_pid > 0 && (pid_t)h.writer_pid != getpid() &&
        (kill((pid_t)h.writer_pid, 0) == 0 || errno == EPERM)) {
        busy = 1;
        h.owner[sizeof h.owner - 1] = 0;
        if (why)
            snprintf(why, why_len,
                     "shared-memory object %s belongs to another running xcoderd (pid %u, run_dir %s); give this "
                     "instance another name (--name), or stop that one (if pid %u is not an xcoderd, remove "
                     "/dev/shm%s)",
                     name, h.writer_pid, h.owner[0] ? h.owner : "unknown", h.writer_pid, name);
    }
    close(fd);
    return busy;
}

xc_shm_writer_t *xc_shm_writer_open(const char *instance, uint32_t n_latents, uint32_t d, uint32_t model,
                                    mode_t mode, const char *owner, int *err, char *why, size_t why_len)
{
    xc_shm_writer_t *w = calloc(1, sizeof *w);
    int fd = -1, rc = XC_ENOMEM;
    if (!w) goto out_err;
    rc = xc_shm_name(instance, w->name, sizeof w->name);
    if (rc) {
        snprintf(why, why_len, "instance name '%s' cannot name a shared-memory object (no '/', 1-200 chars)",
                 instance ? instance : "");
        goto out_free;
    }
    xc_shm_array_desc_t desc[XC_SHM_NARRAYS];
    w->size = layout(n_latents, desc);
    /* a stale object (a crashed earlier run) is replaced: readers that still map
     * it see alive = 0 on it and reopen by name; a live writer's is refused */
    rc = XC_ESTATE;
    if (held_by_other(w->name, why, why_len)) goto out_free;
    shm_unlink(w->name);
    fd = shm_open(w->name, O_CREAT | O_EXCL | O_RDWR, mode);
    if (fd < 0 && errno == EEXIST) {
        /* another writer created it between our unlink and open */
        if (!held_by_other(w->name, why, why_len) && why)
            snprintf(why, why_len, "shared-memory object %s was created by another process while this one "
                     "started; is another xcoderd with this name starting?", w->name);
        goto out_free;
    }
    rc = XC_ESYS;
    if (fd < 0) {
        snprintf(why, why_len, "shm_open(%s): %s", w->name, strerror(errno));
        goto out_free;
    }
    fchmod(fd, mode); /* umask must not narrow the configured mode */
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(why, why_len, "fstat(%s): %s", w->name, strerror(errno));
        goto out_unlink;
    }
    w->dev = st.st_dev;
    w->ino = st.st_ino;
    if (ftruncate(fd, (off_t)w->size) != 0) {
        snprintf(why, why_len, "ftruncate(%s, %zu): %s (is /dev/shm full?)", w->name, w->size, strerror(errno));
        goto out_unlink;
    }
    w->map = mmap(NULL, w->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (w->map == MAP_FAILED) {
        w->map = NULL;
        snprintf(why, why_len, "mmap(%s): %s", w->name, strerror(errno));
        goto out_unlink;
    }
    close(fd);
    xc_shm_header_t *h = (xc_shm_header_t *)w->map;
    memset(h, 0, sizeof *h);
    h->layout_version = XC_SHM_LAYOUT_VERSION;
    h->header_size = sizeof *h;
    h->n_arrays = XC_SHM_NARRAYS;
    h->total_size = w->size;
    h->n_latents = n_latents;
    h->d = d;
    h->model = model;
    h->writer_pid = (uint32_t)getpid();
    if (owner) snprintf(h->owner, sizeof h->owner, "%s", owner);
    h->scaling_step = -1;
    h->alive = 1;
    memcpy(h->arrays, desc, sizeof desc);
    xc_shm_writer_begin(w);
    xc_shm_writer_end(w);
    /* magic last: a reader never accepts a half-initialised header */
    __atomic_store_n(&h->magic, XC_SHM_MAGIC, __ATOMIC_RELEASE);
    if (err) *err = XC_OK;
    return w;
out_unlink:
    close(fd);
    shm_unlink(w->name);
out_free:
    free(w);
out_err:
    if (err) *err = rc;
    return NULL;
}

xc_shm_header_t *xc_shm_writer_header(xc_shm_writer_t *w) { return (xc_shm_header_t *)w->map; }

void *xc_shm_writer_array(xc_shm_writer_t *w, xc_shm_array_t a)
{
    return w->map + ((xc_shm_header_t *)w->map)->arrays[a].offset;
}

void xc_shm_writer_begin(xc_shm_writer_t *w)
{
    xc_shm_header_t *h = (xc_shm_header_t *)w->map;
    __atomic_store_n(&h->seq, h->seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
}

void xc_shm_writer_end(xc_shm_writer_t *w)
{
    xc_shm_header_t *h = (xc_shm_header_t *)w->map;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    h->gen++;
    h->updated_unix = ts.tv_sec + ts.tv_nsec * 1e-9;
    h->checksum = xc_shm_checksum(w->map + h->header_size, w->size - h->header_size);
    __atomic_store_n(&h->seq, h->seq + 1, __ATOMIC_RELEASE);
}

void xc_shm_writer_close(xc_shm_writer_t **pw, int unlink_it)
{
    xc_shm_writer_t *w = pw ? *pw : NULL;
    if (!w) return;
    if (w->map) {
        if (unlink_it) {
            xc_shm_writer_begin(w);
            ((xc_shm_header_t *)w->map)->alive = 0;
            xc_shm_writer_end(w);
        }
        munmap(w->map, w->size);
    }
    if (unlink_it) {
        /* only our own object: the name may meanwhile belong to a newer writer */
        struct stat st;
        int fd = shm_open(w->name, O_RDONLY, 0);
        if (fd >= 0) {
            if (fstat(fd, &st) == 0 && st.st_dev == w->dev && st.st_ino == w->ino) shm_unlink(w->name);
            close(fd);
        }
    }
    free(w);
    *pw = NULL;
}

/* ------------------------------------------------------------------ reader */

struct xc_shm_reader {
    const uint8_t *map; /* owned read-only mapping */
    size_t size;
};

xc_shm_reader_t *xc_shm_reader_open(const char *instance, int *err)
{
    char name[256];
    int rc = xc_shm_name(instance, name, sizeof name);
    xc_shm_reader_t *r = NULL;
    struct stat st;
    int fd = -1;
    if (rc) goto out;
    fd = shm_open(name, O_RDONLY, 0);
    if (fd < 0) {
        rc = errno == ENOENT ? XC_ENOTFOUND : XC_ESYS;
        goto out;
    }
    rc = XC_ECORRUPT;
    if (fstat(fd, &st) != 0 || (size_t)st.st_size < sizeof(xc_shm_header_t)) goto out;
    r = calloc(1, sizeof *r);
    rc = XC_ENOMEM;
    if (!r) goto out;
    r->size = (size_t)st.st_size;
    r->map = mmap(NULL, r->size, PROT_READ, MAP_SHARED, fd, 0);
    rc = XC_ESYS;
    if (r->map == MAP_FAILED) goto out_free;
    const xc_shm_header_t *h = (const xc_shm_header_t *)r->map;
    rc = XC_ECORRUPT;
    if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != XC_SHM_MAGIC ||
        h->layout_version != XC_SHM_LAYOUT_VERSION || h->header_size != sizeof *h ||
        h->total_size > r->size || h->n_arrays != XC_SHM_NARRAYS)
        goto out_unmap;
    for (int a = 0; a < XC_SHM_NARRAYS; a++)
        if (h->arrays[a].offset + (uint64_t)h->n_latents * h->arrays[a].elem_size > h->total_size) goto out_unmap;
    close(fd);
    if (err) *err = XC_OK;
    return r;
out_unmap:
    munmap((void *)r->map, r->size);
out_free:
    free(r);
    r = NULL;
out:
    if (fd >= 0) close(fd);
    if (err) *err = rc;
    return NULL;
}

void xc_shm_reader_close(xc_shm_reader_t **pr)
{
    xc_shm_reader_t *r = pr ? *pr : NULL;
    if (!r) return;
    munmap((void *)r->map, r->size);
    free(r);
    *pr = NULL;
}

int xc_shm_reader_snapshot(xc_shm_reader_t *r, xc_shm_snapshot_t *out, int max_retries)
{
    const xc_shm_header_t *h = (const xc_shm_header_t *)r->map;
    size_t total = h->total_size;
    memset(out, 0, sizeof *out);
    out->data = malloc(total);
    if (!out->data) return XC_ENOMEM;
    for (int tries = 0; tries <= max_retries; tries++) {
        uint64_t s1 = __atomic_load_n(&h->seq, __ATOMIC_ACQUIRE);
        if (s1 & 1) {
            sched_yield();
            continue;
        }
        memcpy(out->data, r->map, total);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        uint64_t s2 = __atomic_load_n(&h->seq, __ATOMIC_RELAXED);
        if (s1 != s2) continue;
        memcpy(&out->hdr, out->data, sizeof out->hdr);
        out->retries = tries;
        uint64_t ck = xc_shm_checksum(out->data + out->hdr.header_size, total - out->hdr.header_size);
        return ck == out->hdr.checksum ? XC_OK : XC_ECORRUPT;
    }
    xc_shm_snapshot_free(out);
    return XC_EAGAIN;
}

const void *xc_shm_snapshot_array(const xc_shm_snapshot_t *s, xc_shm_array_t a)
{
    return s->data + s->hdr.arrays[a].offset;
}

void xc_shm_snapshot_free(xc_shm_snapshot_t *s)
{
    if (!s) return;
    free(s->data);
    s->data = NULL;
}
