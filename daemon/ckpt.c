/* Checkpoints of the running engine: the writer thread, rotation, and verified
 * loading (see xc_ckpt.h, proto/CHECKPOINT.md); the file formats themselves are
 * in format/. */
#include "xc_afile.h"
#include "xc_ckpt.h"
#include "xc_error.h"
#include "xc_log.h"
#include "xc_proto.h"
#include "xc_stfile.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoints are written from host memory and assume a little-endian host"
#endif

#define CKPT_MAX_VIEWS (XC_ENGINE_STATE_MAX + 8)

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

const char *xc_ckpt_model_name(xc_model_kind_t k) { return k == XC_MODEL_L1 ? "l1" : "batchtopk"; }

static void random_hex(char *out, size_t n)
{
    uint64_t r = 0;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) { /* no entropy yet: time and pid */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        r = ((uint64_t)ts.tv_sec * 1000000007ull) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 40);
    }
    snprintf(out, n, "%016llx", (unsigned long long)r);
}

/* ------------------------------------------------------ directory scan -- */
/* One step's files in the state directory. */
typedef struct {
    long step;
    int has_model, has_train;
    int known;                 /* a header could be read: serial and run_id below */
    uint64_t serial;
    char run_id[40];
    char why[400];             /* !known: why no header could be read */
} entry_t;

/* Parses NAME-DIGITS.safetensors / NAME-DIGITS.resume.safetensors: 1 model, 2 train, 0 other. */
static int parse_name(const char *fn, const char *name, long *step)
{
    size_t nl = strlen(name);
    if (strncmp(fn, name, nl) != 0 || fn[nl] != '-') return 0;
    const char *p = fn + nl + 1, *q = p;
    while (*q >= '0' && *q <= '9') q++;
    if (q == p || q - p > 18) return 0;
    *step = strtol(p, NULL, 10);
    if (strcmp(q, ".safetensors") == 0) return 1;
    if (strcmp(q, XC_STF_TRAIN_SUFFIX) == 0) return 2;
    return 0;
}

static void pair_names(const char *dir, const char *name, long step, char *model, size_t ml, char *train, size_t tl)
{
    snprintf(model, ml, "%s/%s-%09ld.safetensors", dir, name, step);
    snprintf(train, tl, "%s/%s-%09ld%s", dir, name, step, XC_STF_TRAIN_SUFFIX);
}

/* Reads serial and run_id from the model file, else the training file. */
static void entry_meta(const char *dir, const char *name, entry_t *en)
{
    char m[1100], t[1100];
    pair_names(dir, name, en->step, m, sizeof m, t, sizeof t);
    for (int i = 0; i < 2 && !en->known; i++) {
        if (!(i == 0 ? en->has_model : en->has_train)) continue;
        xc_stf_t *f = xc_stf_open(i == 0 ? m : t, NULL, en->why, sizeof en->why);
        const char *s = f ? xc_stf_meta(f, "serial") : NULL, *r = f ? xc_stf_meta(f, "run_id") : NULL;
        if (f && (!s || !r)) snprintf(en->why, sizeof en->why, "%s is not an xcoderd checkpoint", xc_stf_path(f));
        if (s && r) {
            en->serial = strtoull(s, NULL, 10);
            snprintf(en->run_id, sizeof en->run_id, "%s", r);
            en->known = 1;
        }
        xc_stf_close(&f);
    }
}

/* Every step with a checkpoint file of NAME in dir; *out owned by the caller. */
static int list_entries(const char *dir, const char *name, entry_t **out, int *n_out)
{
    DIR *dp = opendir(dir);
    struct dirent *de;
    entry_t *v = NULL;
    int n = 0, cap = 0;
    *out = NULL;
    *n_out = 0;
    if (!dp) return errno == ENOENT ? XC_OK : XC_EIO;
    while ((de = readdir(dp))) {
        long step;
        int kind = parse_name(de->d_name, name, &step);
        if (!kind) continue;
        int i = 0;
        while (i < n && v[i].step != step) i++;
        if (i == n) {
            if (n == cap) {
                entry_t *nv = realloc(v, sizeof *v * (size_t)(cap = cap ? 2 * cap : 16));
                if (!nv) {
                    free(v);
                    closedir(dp);
                    return XC_ENOMEM;
                }
                v = nv;
            }
            memset(&v[n], 0, sizeof v[n]);
            v[n++].step = step;
        }
        if (kind == 1) v[i].has_model = 1;
        else v[i].has_train = 1;
    }
    closedir(dp);
    for (int i = 0; i < n; i++) entry_meta(dir, name, &v[i]);
    *out = v;
    *n_out = n;
    return XC_OK;
}

static int newest_first(const void *a, const void *b)
{
    const entry_t *x = a, *y = b;
    if (x->serial != y->serial) return x->serial > y->serial ? -1 : 1;
    return x->step > y->step ? -1 : x->step < y->step;
}

/* Removes temp files that writers of NAME left behind when they died. */
static void remove_stale_temps(const char *dir, const char *name)
{
    char pre[80], path[1100];
    DIR *dp = opendir(dir);
    struct dirent *de;
    int removed = 0;
    if (!dp) return;
    snprintf(pre, sizeof pre, ".%s-", name);
    while ((de = readdir(dp))) {
        const char *t = strstr(de->d_name, ".safetensors.tmp.");
        if (strncmp(de->d_name, pre, strlen(pre)) != 0 || !t) continue;
        long pid = strtol(t + 17, NULL, 10);
        if (pid != (long)getpid() && pid > 0 && !(kill((pid_t)pid, 0) && errno == ESRCH)) continue;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (unlink(path) == 0) {
            xc_log(XC_LOG_INFO, "removed %s, left by an interrupted checkpoint write", path);
            removed++;
        }
    }
    closedir(dp);
    if (removed) xc_fsync_dir(dir);
}

/* ------------------------------------------------------------ the writer -- */
typedef struct {
    xc_state_view_t v[CKPT_MAX_VIEWS]; /* data: the capture buffer, or live (sync) */
    char names[CKPT_MAX_VIEWS][64];
    int n;
    xc_ckpt_model_t model;             /* parameter pointers into v */
    long step;
    uint64_t tokens;
    char reason[16];
    uint64_t gen;
    double capture_ms;
} snap_t;

struct xc_ckpt_writer {
    char *dir, *name, *config_json; /* owned */
    int keep;
    long long fault;
    char run_id[40];
    uint64_t serial;                /* of the next pair */
    void (*done)(void *, const xc_ckpt_info_t *);
    void *done_ctx;
    pthread_t th;
    int started;
    pthread_mutex_t mu;             /* guards everything below */
    pthread_cond_t cv;
    int busy, has_job, quit;
    int prep;                       /* the writer thread is to allocate buf (prep_len bytes) */
    size_t prep_len;
    int prep_failed;
    long last_step;                 /* of the newest pair (-1 none) */
    char last_path[1024], last_train[1024];
    uint64_t last_bytes, last_train_bytes;
    snap_t job;
    uint8_t *buf;                   /* capture buffer (mmap); owned */
    size_t buf_len;
};

static const char *st_dtype(xc_state_dtype_t t)
{
    static const char *n[] = {"F32", "F64", "I64", "U64"};
    return (unsigned)t < 4 ? n[t] : "U8";
}

static size_t st_esize(xc_state_dtype_t t) { return t == XC_ST_F32 ? 4 : 8; }

/* Fills s from e's views and the extras; copy = 1 copies the data into w->buf. */
static int capture(xc_ckpt_writer_t *w, xc_engine_t *e, const xc_state_view_t *extras, int n_extras,
                   int copy, snap_t *s)
{
    const xc_engine_config_t *c = xc_engine_config(e);
    const xc_engine_metrics_t *m = xc_engine_metrics(e);
    double t0 = now_ms();
    memset(s, 0, sizeof *s);
    s->n = xc_engine_state_views(e, s->v, XC_ENGINE_STATE_MAX);
    if (s->n + n_extras > CKPT_MAX_VIEWS) return XC_EINVAL;
    for (int i = 0; i < n_extras; i++) s->v[s->n++] = extras[i];
    size_t total = 0;
    for (int i = 0; i < s->n; i++) {
        snprintf(s->names[i], sizeof s->names[i], "%s", s->v[i].name);
        s->v[i].name = s->names[i];
        total += (s->v[i].bytes + 63) & ~(size_t)63;
    }
    if (copy) {
        if (w->buf_len < total) return XC_ENOMEM; /* prepared by the writer thread first */
        size_t off = 0;
        for (int i = 0; i < s->n; i++) {
            memcpy(w->buf + off, s->v[i].data, s->v[i].bytes);
            s->v[i].data = w->buf + off;
            off += (s->v[i].bytes + 63) & ~(size_t)63;
        }
    }
    xc_ckpt_model_t *mo = &s->model;
    mo->model = c->model == XC_MODEL_L1 ? XC_CKPT_L1 : XC_CKPT_BATCHTOPK;
    mo->d = c->d;
    mo->dict_size = c->dict_size;
    mo->k = c->model == XC_MODEL_BATCHTOPK ? m->k : c->k; /* k-annealing: the k in use, as the reference's buffer */
    mo->threshold = (float)m->theta;
    mo->code_norm_id = xc_code_norm_id(c->code_norm);
    mo->threshold_m[0] = (float)m->theta_m[0];
    mo->threshold_m[1] = (float)m->theta_m[1];
    mo->alpha_sae = c->code_alpha_sae;
    mo->alpha_cc = c->code_alpha_cc;
    mo->engine_layout = 1;
    for (int i = 0; i < s->n; i++) {
        const char *nm = s->v[i].name;
        const float **dst = !strcmp(nm, "w_enc") ? &mo->w_enc : !strcmp(nm, "b_enc") ? &mo->b_enc
                          : !strcmp(nm, "w_dec") ? &mo->w_dec : !strcmp(nm, "b_dec") ? &mo->b_dec : NULL;
        if (dst) *dst = s->v[i].data;
    }
    if (!mo->w_enc || !mo->b_enc || !mo->w_dec || !mo->b_dec) return XC_EINVAL;
    /* the trainer's activation normaliser, once ready, as the reference's buffers */
    const double *nm = NULL;
    const float *nmean = NULL, *nstd = NULL, *nscale = NULL;
    mo->act_mean = mo->act_std = mo->act_scale = NULL;
    mo->target_rms = 0;
    for (int i = 0; i < s->n; i++) {
        const char *nmv = s->v[i].name;
        if (!strcmp(nmv, "trainer.norm_meta")) nm = s->v[i].data;
        else if (!strcmp(nmv, "trainer.norm_mean")) nmean = s->v[i].data;
        else if (!strcmp(nmv, "trainer.norm_std")) nstd = s->v[i].data;
        else if (!strcmp(nmv, "trainer.norm_scale")) nscale = s->v[i].data;
    }
    if (nm && nm[0] > 0 && nm[1] > 0 && nmean && nstd && nscale) {
        mo->act_mean = nmean, mo->act_std = nstd, mo->act_scale = nscale;
        mo->target_rms = (float)nm[2];
    }
    s->step = m->step;
    s->tokens = m->tokens;
    s->capture_ms = now_ms() - t0;
    return XC_OK;
}

static int common_meta(xc_st_t *st, const xc_ckpt_writer_t *w, const snap_t *s, const char *format,
                       const char *version, const char *created, const char *ckid)
{
    char v[64];
    int rc = xc_ckpt_meta_common(st, format, version, &s->model, s->step, s->tokens, created);
    rc = rc ? rc : xc_st_meta(st, "run_id", w->run_id);
    rc = rc ? rc : xc_st_meta(st, "checkpoint_id", ckid);
    snprintf(v, sizeof v, "%llu", (unsigned long long)w->serial);
    rc = rc ? rc : xc_st_meta(st, "serial", v);
    rc = rc ? rc : xc_st_meta(st, "name", w->name);
    rc = rc ? rc : xc_st_meta(st, "reason", s->reason);
    return rc;
}

/* Removes this run's pairs beyond the newest `keep` (other runs' and unreadable
 * files are never touched). */
static void rotate(xc_ckpt_writer_t *w, int keep)
{
    entry_t *v;
    int n, kept = 0, removed = 0;
    if (keep <= 0 || list_entries(w->dir, w->name, &v, &n)) return;
    if (n > 0) qsort(v, (size_t)n, sizeof *v, newest_first); /* v may be NULL when empty */
    for (int i = 0; i < n; i++) {
        if (!v[i].known || strcmp(v[i].run_id, w->run_id) != 0) continue;
        if (v[i].has_model && v[i].has_train && kept < keep) {
            kept++;
            continue;
        }
        char m[1100], t[1100];
        pair_names(w->dir, w->name, v[i].step, m, sizeof m, t, sizeof t);
        if ((v[i].has_model && unlink(m) == 0) | (v[i].has_train && unlink(t) == 0)) {
            removed++;
            xc_log(XC_LOG_DEBUG, "removed checkpoint %s (keeping the newest %d)", m, keep);
        }
    }
    free(v);
    if (removed) xc_fsync_dir(w->dir);
}

/* Makes room after a write failed for space: removes the oldest pair of this
 * run, but only while another complete pair of it remains (the newest valid
 * checkpoint is never removed). 1 if something was removed. */
static int make_room(xc_ckpt_writer_t *w)
{
    entry_t *v;
    int n, complete = 0, removed = 0;
    remove_stale_temps(w->dir, w->name); /* a failed write's leftovers of this name */
    if (list_entries(w->dir, w->name, &v, &n)) return 0;
    if (n > 0) qsort(v, (size_t)n, sizeof *v, newest_first);
    for (int i = 0; i < n; i++)
        complete += v[i].known && strcmp(v[i].run_id, w->run_id) == 0 && v[i].has_model && v[i].has_train;
    for (int i = n - 1; i >= 0 && !removed; i--) { /* oldest first */
        if (!v[i].known || strcmp(v[i].run_id, w->run_id) != 0) continue;
        int whole = v[i].has_model && v[i].has_train;
        if (whole && complete < 2) break;
        char m[1100], t[1100];
        pair_names(w->dir, w->name, v[i].step, m, sizeof m, t, sizeof t);
        removed = (v[i].has_model && unlink(m) == 0) | (v[i].has_train && unlink(t) == 0);
        if (removed)
            xc_log(XC_LOG_INFO, "disk full: removed the oldest checkpoint %s of this run to make room", m);
    }
    free(v);
    if (removed) xc_fsync_dir(w->dir);
    return removed;
}

/* 1 when a failed write ran out of space (errno right after it, or its reason). */
static int out_of_space(int e, const char *why)
{
    return e == ENOSPC || e == EDQUOT || strstr(why, strerror(ENOSPC)) || strstr(why, strerror(EDQUOT));
}

static int write_pair_once(xc_ckpt_writer_t *w, snap_t *s, xc_ckpt_info_t *r);

/* Writes the pair; when the disk is full, makes room (make_room) and tries
 * once more, so that rotation never waits for a success that cannot come. */
static int write_pair(xc_ckpt_writer_t *w, snap_t *s, xc_ckpt_info_t *r)
{
    int rc = write_pair_once(w, s, r);
    if (rc && out_of_space(errno, r->why) && make_room(w)) {
        double first_ms = r->write_ms;
        rc = write_pair_once(w, s, r);
        r->write_ms += first_ms;
    }
    return rc;
}

/* Writes the training file, then the model file; then rotates. */
static int write_pair_once(xc_ckpt_writer_t *w, snap_t *s, xc_ckpt_info_t *r)
{
    char created[40], ckid[24], tfile[160], mfile[160];
    uint64_t tbytes = 0, mbytes = 0;
    xc_st_t *ts = xc_st_new(), *ms = xc_st_new(); /* owned here */
    double t0 = now_ms();
    int rc = XC_ENOMEM;
    pthread_mutex_lock(&w->mu); /* the settings another thread may change */
    int keep = w->keep;
    long long fault = w->fault;
    pthread_mutex_unlock(&w->mu);

    memset(r, 0, sizeof *r);
    r->gen = s->gen;
    r->step = s->step;
    r->tokens = s->tokens;
    r->capture_ms = s->capture_ms;
    snprintf(r->reason, sizeof r->reason, "%s", s->reason);
    if (!ts || !ms) {
        xc_why(r->why, sizeof r->why, "out of memory");
        goto out;
    }
    xc_ckpt_now_rfc3339(created, sizeof created);
    random_hex(ckid, sizeof ckid);
    snprintf(tfile, sizeof tfile, "%s-%09ld%s", w->name, s->step, XC_STF_TRAIN_SUFFIX);
    snprintf(mfile, sizeof mfile, "%s-%09ld.safetensors", w->name, s->step);

    xc_st_checksum(ts);
    rc = common_meta(ts, w, s, XC_STF_TRAIN_FORMAT, XC_CKPT_TRAIN_VERSION, created, ckid);
    rc = rc ? rc : xc_st_meta(ts, "model_file", mfile);
    rc = rc ? rc : xc_st_meta(ts, "config", w->config_json);
    for (int pass = 0; pass < 2 && !rc; pass++) /* 8-byte dtypes first: every tensor stays aligned */
        for (int i = 0; i < s->n && !rc; i++) {
            const xc_state_view_t *v = &s->v[i];
            if ((st_esize(v->dtype) == 8) != (pass == 0)) continue;
            int64_t shape[4] = {v->shape[0], v->shape[1], v->shape[2], 0};
            rc = xc_st_add(ts, v->name, st_dtype(v->dtype), v->ndim, shape, v->data);
        }
    if (rc) {
        xc_why(r->why, sizeof r->why, "cannot describe the training state: %s", xc_strerror(rc));
        goto out;
    }
    if (fault >= 0) xc_st_fault_after(ts, fault);
    rc = xc_st_write(ts, w->dir, tfile, r->train_path, sizeof r->train_path, &tbytes, r->why, sizeof r->why);
    if (rc) goto out;

    xc_st_checksum(ms);
    rc = common_meta(ms, w, s, XC_STF_MODEL_FORMAT, XC_CKPT_MODEL_VERSION, created, ckid);
    rc = rc ? rc : xc_st_meta(ms, "train_file", tfile);
    rc = rc ? rc : xc_st_meta(ms, "train_checksum", xc_st_checksum_value(ts));
    rc = rc ? rc : xc_st_meta(ms, "layout", XC_CKPT_LAYOUT_NOTE);
    rc = rc ? rc : xc_st_meta(ms, "config", w->config_json);
    rc = rc ? rc : xc_ckpt_add_model(ms, &s->model, "F32");
    if (rc) {
        xc_why(r->why, sizeof r->why, "cannot describe the model: %s", xc_strerror(rc));
        goto out;
    }
    if (fault >= 0) xc_st_fault_after(ms, fault > (long long)tbytes ? fault - (long long)tbytes : 0);
    rc = xc_st_write(ms, w->dir, mfile, r->path, sizeof r->path, &mbytes, r->why, sizeof r->why);
    if (rc) goto out;
    w->serial++;
    r->bytes = mbytes;
    r->train_bytes = tbytes;
    rotate(w, keep);
out:
    r->rc = rc;
    r->write_ms = now_ms() - t0;
    xc_st_destroy(&ts);
    xc_st_destroy(&ms);
    return rc;
}

/* Records a finished write (under w->mu). */
static void note_result(xc_ckpt_writer_t *w, const xc_ckpt_info_t *r)
{
    w->busy = 0;
    if (r->rc == 0) {
        w->last_step = r->step;
        snprintf(w->last_path, sizeof w->last_path, "%s", r->path);
        snprintf(w->last_train, sizeof w->last_train, "%s", r->train_path);
        w->last_bytes = r->bytes;
        w->last_train_bytes = r->train_bytes;
    }
    pthread_cond_broadcast(&w->cv);
}

/* The capture buffer: anonymous memory touched here (on the writer thread) so
 * the copy on the training thread never waits for page faults (a first copy
 * into fresh memory took 1.6 s instead of 30 ms at the reference shape).
 * NULL on failure. */
static uint8_t *buf_alloc(size_t n)
{
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    for (size_t i = 0; i < n; i += 4096) ((volatile uint8_t *)p)[i] = 0;
    return p;
}

static size_t state_bytes(xc_engine_t *e, const xc_state_view_t *extras, int n_extras)
{
    xc_state_view_t v[XC_ENGINE_STATE_MAX];
    int n = xc_engine_state_views(e, v, XC_ENGINE_STATE_MAX);
    size_t total = 0;
    for (int i = 0; i < n + n_extras; i++) total += ((i < n ? v[i].bytes : extras[i - n].bytes) + 63) & ~(size_t)63;
    return total;
}

static void *writer_main(void *arg)
{
    xc_ckpt_writer_t *w = arg;
    /* below the training threads (nice 5): at d = 768, F = 16384 on 2 cores a
     * write then takes ~4.7 s with steps ~25 % slower meanwhile, against 3.2 s and
     * ~50 % at nice 0 and 9 s and ~15 % at nice 10 (about 1 s of training either way) */
    if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 5)) { /* best effort */
    }
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->has_job && !w->prep && !w->quit) pthread_cond_wait(&w->cv, &w->mu);
        if (w->prep) {
            size_t len = w->prep_len;
            pthread_mutex_unlock(&w->mu);
            uint8_t *nb = buf_alloc(len);
            pthread_mutex_lock(&w->mu);
            if (nb) {
                if (w->buf) munmap(w->buf, w->buf_len);
                w->buf = nb;
                w->buf_len = len;
            } else {
                w->prep_failed = 1;
            }
            w->prep = 0;
            w->busy = 0;
            pthread_cond_broadcast(&w->cv);
            continue;
        }
        if (!w->has_job) break;
        w->has_job = 0;
        pthread_mutex_unlock(&w->mu);
        xc_ckpt_info_t r;
        write_pair(w, &w->job, &r); /* the job stays untouched until busy is cleared */
        /* report before clearing busy: a synchronous submit (the final
         * checkpoint) then also waits for this report to be delivered */
        if (w->done) w->done(w->done_ctx, &r);
        pthread_mutex_lock(&w->mu);
        note_result(w, &r);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

xc_ckpt_writer_t *xc_ckpt_writer_new(const xc_ckpt_writer_opts_t *o, int *err)
{
    xc_ckpt_writer_t *w = calloc(1, sizeof *w); /* owned by the caller; xc_ckpt_writer_destroy */
    *err = XC_ENOMEM;
    if (!w) return NULL;
    w->dir = strdup(o->state_dir ? o->state_dir : ".");
    w->name = strdup(o->name ? o->name : "xcoderd");
    w->config_json = strdup(o->config_json ? o->config_json : "{}");
    if (!w->dir || !w->name || !w->config_json) goto out_free;
    w->keep = o->keep;
    w->done = o->done;
    w->done_ctx = o->done_ctx;
    w->last_step = -1;
    w->serial = 1;
    w->fault = -1;
    const char *fa = getenv("XC_CKPT_FAULT_AFTER");
    if (fa && *fa) {
        w->fault = atoll(fa);
        xc_log(XC_LOG_WARN, "XC_CKPT_FAULT_AFTER=%lld: every checkpoint write stops after that many bytes (a test hook)",
               w->fault);
    }
    random_hex(w->run_id, sizeof w->run_id);
    if (pthread_mutex_init(&w->mu, NULL)) goto out_free;
    if (pthread_cond_init(&w->cv, NULL)) goto out_mu;
    if (pthread_create(&w->th, NULL, writer_main, w)) {
        *err = XC_ESYS;
        goto out_cv;
    }
    w->started = 1;
    remove_stale_temps(w->dir, w->name);
    *err = XC_OK;
    return w;
out_cv:
    pthread_cond_destroy(&w->cv);
out_mu:
    pthread_mutex_destroy(&w->mu);
out_free:
    free(w->dir);
    free(w->name);
    free(w->config_json);
    free(w);
    return NULL;
}

void xc_ckpt_writer_destroy(xc_ckpt_writer_t **pw)
{
    xc_ckpt_writer_t *w = pw ? *pw : NULL;
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    w->quit = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (w->started) pthread_join(w->th, NULL); /* finishes a job in flight first */
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    if (w->buf) munmap(w->buf, w->buf_len);
    free(w->dir);
    free(w->name);
    free(w->config_json);
    free(w);
    *pw = NULL;
}

void xc_ckpt_writer_set_keep(xc_ckpt_writer_t *w, int keep)
{
    pthread_mutex_lock(&w->mu);
    w->keep = keep;
    pthread_mutex_unlock(&w->mu);
}

void xc_ckpt_writer_set_fault(xc_ckpt_writer_t *w, long long n)
{
    pthread_mutex_lock(&w->mu);
    w->fault = n;
    pthread_mutex_unlock(&w->mu);
}

void xc_ckpt_writer_continue(xc_ckpt_writer_t *w, const char *run_id, uint64_t next_serial, long step,
                             const char *path, const char *train_path)
{
    pthread_mutex_lock(&w->mu);
    if (run_id && *run_id) snprintf(w->run_id, sizeof w->run_id, "%s", run_id);
    if (next_serial > w->serial) w->serial = next_serial;
    size_t dl = strlen(w->dir);
    if (path && train_path && strncmp(path, w->dir, dl) == 0 && path[dl] == '/' && !strchr(path + dl + 1, '/')) {
        /* (a pair resumed from elsewhere is not reused: the next checkpoint goes to state_dir) */
        w->last_step = step;
        snprintf(w->last_path, sizeof w->last_path, "%s", path);
        snprintf(w->last_train, sizeof w->last_train, "%s", train_path);
        struct stat a, b;
        w->last_bytes = stat(path, &a) == 0 ? (uint64_t)a.st_size : 0;
        w->last_train_bytes = stat(train_path, &b) == 0 ? (uint64_t)b.st_size : 0;
    }
    pthread_mutex_unlock(&w->mu);
}

const char *xc_ckpt_writer_run_id(const xc_ckpt_writer_t *w) { return w->run_id; }

/* Under w->mu: the previous pair is the current state (same step, files present). */
static int reuse_last(xc_ckpt_writer_t *w, xc_engine_t *e, const char *reason, uint64_t gen, xc_ckpt_info_t *out)
{
    long step = xc_engine_metrics(e)->step;
    if (w->last_step != step || access(w->last_path, F_OK) || access(w->last_train, F_OK)) return 0;
    memset(out, 0, sizeof *out);
    out->gen = gen;
    out->step = step;
    out->tokens = xc_engine_metrics(e)->tokens;
    out->bytes = w->last_bytes;
    out->train_bytes = w->last_train_bytes;
    out->reused = 1;
    snprintf(out->path, sizeof out->path, "%s", w->last_path);
    snprintf(out->train_path, sizeof out->train_path, "%s", w->last_train);
    snprintf(out->reason, sizeof out->reason, "%s", reason);
    return 1;
}

int xc_ckpt_writer_busy(xc_ckpt_writer_t *w)
{
    pthread_mutex_lock(&w->mu);
    int b = w->busy;
    pthread_mutex_unlock(&w->mu);
    return b;
}

void xc_ckpt_writer_prepare(xc_ckpt_writer_t *w, xc_engine_t *e, const xc_state_view_t *extras, int n_extras)
{
    size_t need = state_bytes(e, extras, n_extras);
    pthread_mutex_lock(&w->mu);
    if (!w->busy && w->buf_len < need) {
        w->prep = 1;
        w->prep_len = need;
        w->busy = 1;
        pthread_cond_broadcast(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
}

int xc_ckpt_writer_submit(xc_ckpt_writer_t *w, xc_engine_t *e, const xc_state_view_t *extras, int n_extras,
                          const char *reason, uint64_t gen, int sync, xc_ckpt_info_t *out)
{
    xc_ckpt_info_t tmp;
    int rc;
    size_t need = sync ? 0 : state_bytes(e, extras, n_extras);
    if (!out) out = &tmp;
    pthread_mutex_lock(&w->mu);
    if (w->busy && !sync) {
        pthread_mutex_unlock(&w->mu);
        return XC_EAGAIN;
    }
    while (w->busy) pthread_cond_wait(&w->cv, &w->mu);
    if (reuse_last(w, e, reason, gen, out)) {
        pthread_mutex_unlock(&w->mu);
        return 1;
    }
    if (!sync && w->buf_len < need && !w->prep_failed) { /* first: the writer thread allocates the copy */
        w->prep = 1;
        w->prep_len = need;
        w->busy = 1;
        pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
        return XC_EAGAIN;
    }
    w->prep_failed = 0;
    w->busy = 1;
    pthread_mutex_unlock(&w->mu);

    snap_t *s = &w->job; /* ours while busy */
    rc = capture(w, e, extras, n_extras, !sync, s);
    snprintf(s->reason, sizeof s->reason, "%s", reason ? reason : "request");
    s->gen = gen;
    if (rc) {
        memset(out, 0, sizeof *out);
        out->rc = rc;
        out->gen = gen;
        snprintf(out->reason, sizeof out->reason, "%s", s->reason);
        xc_why(out->why, sizeof out->why, "cannot copy the training state: %s", xc_strerror(rc));
        pthread_mutex_lock(&w->mu);
        note_result(w, out);
        pthread_mutex_unlock(&w->mu);
        return rc;
    }
    if (!sync) {
        pthread_mutex_lock(&w->mu);
        w->has_job = 1;
        pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
        return 0;
    }
    rc = write_pair(w, s, out);
    pthread_mutex_lock(&w->mu);
    note_result(w, out);
    pthread_mutex_unlock(&w->mu);
    return rc ? rc : 1;
}

int xc_ckpt_write(xc_engine_t *e, const xc_ckpt_opts_t *o, char *path_out, size_t path_len,
                  uint64_t *bytes, char *why, size_t why_len)
{
    xc_ckpt_writer_opts_t wo = {o->state_dir, o->name, o->config_json, 0, NULL, NULL};
    xc_ckpt_info_t r;
    int err;
    xc_ckpt_writer_t *w = xc_ckpt_writer_new(&wo, &err);
    if (!w) {
        xc_why(why, why_len, "cannot start a checkpoint writer: %s", xc_strerror(err));
        return err;
    }
    int rc = xc_ckpt_writer_submit(w, e, NULL, 0, o->reason ? o->reason : "request", 0, 1, &r);
    xc_ckpt_writer_destroy(&w);
    if (rc < 0) {
        xc_why(why, why_len, "%s", r.why);
        return rc;
    }
    if (path_out && path_len) snprintf(path_out, path_len, "%s", r.path);
    if (bytes) *bytes = r.bytes;
    return XC_OK;
}

/* ------------------------------------------------------------ loading -- */
/* The checkpoint's model (kind, d, dict_size) against e's configuration. */
static int check_compatible(const xc_stf_t *f, const xc_engine_config_t *c, char *why, size_t wl)
{
    const char *model = xc_stf_meta(f, "model"), *ds = xc_stf_meta(f, "d"), *fs = xc_stf_meta(f, "dict_size");
    if (!model || !ds || !fs) {
        xc_why(why, wl, "%s: metadata lacks model, d or dict_size", xc_stf_path(f));
        return XC_ECORRUPT;
    }
    long d = strtol(ds, NULL, 10), F = strtol(fs, NULL, 10);
    if (strcmp(model, xc_ckpt_model_name(c->model)) != 0 || d != c->d || F != c->dict_size) {
        xc_why(why, wl,
                "%s holds a %s crosscoder with d = %ld, dict_size = %ld, but the configuration asks for a %s "
                "crosscoder with d = %d, dict_size = %d; start with --fresh for a new model (the old "
                "checkpoints stay), or use another state_dir or name",
                xc_stf_path(f), model, d, F, xc_ckpt_model_name(c->model), c->d, c->dict_size);
        return XC_ESHAPE;
    }
    /* a model trained with one code normalisation resumed with another would
     * silently change what its scores (and theta) mean */
    const xc_stf_tensor_t *cn = xc_stf_find(f, "code_normalization_id");
    int64_t id = 1;
    if (cn && cn->count == 1 && !strcmp(cn->dtype, "I64")) memcpy(&id, cn->data, sizeof id);
    if (id != xc_code_norm_id(c->code_norm)) {
        const char *have = xc_ckpt_code_norm_name((int)id);
        xc_why(why, wl,
                "%s was trained with code_normalization = %s (code_normalization_id %lld), but the configuration "
                "asks for %s; set code_normalization to match, or start with --fresh for a new model",
                xc_stf_path(f), have ? have : "?", (long long)id, xc_ckpt_code_norm_name(xc_code_norm_id(c->code_norm)));
        return XC_ESHAPE;
    }
    return XC_OK;
}

int xc_ckpt_load_pair(xc_engine_t *e, const xc_state_view_t *extras, int n_extras, const char *model_path,
                      const char *train_path, xc_ckpt_loaded_t *info, char *why, size_t wl)
{
    const xc_engine_config_t *c = xc_engine_config(e);
    xc_state_view_t v[CKPT_MAX_VIEWS];
    int err, rc;
    xc_stf_t *mf = xc_stf_open(model_path, &err, why, wl), *tf = NULL;
    if (!mf) return err;
    tf = xc_stf_open(train_path, &err, why, wl);
    if (!tf) {
        rc = err;
        goto out;
    }
    for (int i = 0; i < 2; i++) {
        xc_stf_t *f = i ? tf : mf;
        if (xc_stf_kind(f) != (i ? XC_STF_TRAIN : XC_STF_MODEL)) {
            const char *fmt = xc_stf_meta(f, "format");
            xc_why(why, wl, "%s is not an xcoderd %s file (format '%.40s')", xc_stf_path(f),
                    i ? "training-state" : "model", fmt ? fmt : "none");
            rc = XC_ECORRUPT;
            goto out;
        }
        if ((rc = xc_stf_verify(f, why, wl))) {
            if (rc == XC_ENOTFOUND) rc = XC_ECORRUPT;
            goto out;
        }
    }
    if ((rc = xc_stf_pair_check(mf, tf, why, wl))) goto out;
    const char *mv = xc_stf_meta(mf, "format_version"), *tv = xc_stf_meta(tf, "format_version");
    /* training-state version 1 kept 6 running Latent Scaling sums per latent
     * (no second moments): it resumes with those estimates restarted */
    int legacy_sums = tv && strcmp(tv, "1") == 0;
    if (!mv || !tv || strcmp(mv, XC_CKPT_MODEL_VERSION) || (strcmp(tv, XC_CKPT_TRAIN_VERSION) && !legacy_sums)) {
        xc_why(why, wl, "%s: format versions %s / %s; this xcoderd reads %s / %s", model_path, mv ? mv : "?",
                tv ? tv : "?", XC_CKPT_MODEL_VERSION, XC_CKPT_TRAIN_VERSION);
        rc = XC_EVERSION;
        goto out;
    }
    if ((rc = check_compatible(mf, c, why, wl)) || (rc = xc_ckpt_check_model_tensors(mf, c->model == XC_MODEL_L1 ? XC_CKPT_L1 : XC_CKPT_BATCHTOPK, xc_code_norm_id(c->code_norm), c->d, c->dict_size, why, wl))) goto out;
    /* every state view, with its dtype and shape, and nothing else */
    int n = xc_engine_state_views(e, v, XC_ENGINE_STATE_MAX), n_engine = n;
    for (int i = 0; i < n_extras && n < CKPT_MAX_VIEWS; i++) v[n++] = extras[i];
    for (int i = 0; i < n; i++) {
        int64_t shape[3] = {v[i].shape[0], v[i].shape[1], v[i].shape[2]};
        if (legacy_sums && strcmp(v[i].name, "scaling.sums") == 0) {
            xc_log(XC_LOG_WARN, "%s: a version-1 training state: the running Latent Scaling estimates restart "
                   "(they now keep second moments for the standard errors of beta)", train_path);
            v[i].data = NULL;
            continue;
        }
        if ((rc = xc_stf_expect(tf, v[i].name, st_dtype(v[i].dtype), v[i].ndim, shape, XC_EVERSION, why, wl))) {
            if (i < n_engine) goto out;
            /* the trainer's own state (e.g. the mixing buffer after mix_tokens changed)
             * is optional: the model resumes without it */
            xc_log(XC_LOG_WARN, "%s: not restoring %s: %s", train_path, v[i].name, why);
            v[i].data = NULL;
            rc = XC_OK;
        }
    }
    for (int i = 0; i < xc_stf_count(tf); i++) { /* the trainer's own state is optional to a reader */
        const char *tn = xc_stf_at(tf, i)->name;
        int known = strncmp(tn, "trainer.", 8) == 0;
        for (int q = 0; q < n && !known; q++) known = strcmp(tn, v[q].name) == 0;
        if (!known) {
            xc_why(why, wl, "%s: state tensor '%s' is unknown to this xcoderd (written by an incompatible version?)",
                    train_path, tn);
            rc = XC_EVERSION;
            goto out;
        }
    }
    /* everything checked: now copy */
    for (int i = 0; i < n; i++)
        if (v[i].data) memcpy(v[i].data, xc_stf_find(tf, v[i].name)->data, v[i].bytes);
    xc_engine_state_restored(e);
    if (info) {
        const char *s;
        memset(info, 0, sizeof *info);
        snprintf(info->path, sizeof info->path, "%s", model_path);
        snprintf(info->train_path, sizeof info->train_path, "%s", train_path);
        info->step = xc_engine_metrics(e)->step;
        info->tokens = xc_engine_metrics(e)->tokens;
        info->serial = (s = xc_stf_meta(mf, "serial")) ? strtoull(s, NULL, 10) : 0;
        snprintf(info->run_id, sizeof info->run_id, "%s", (s = xc_stf_meta(mf, "run_id")) ? s : "");
        snprintf(info->created, sizeof info->created, "%s", (s = xc_stf_meta(mf, "created")) ? s : "");
        snprintf(info->config_json, sizeof info->config_json, "%s", (s = xc_stf_meta(mf, "config")) ? s : "");
    }
    rc = XC_OK;
out:
    xc_stf_close(&mf);
    xc_stf_close(&tf);
    return rc;
}

int xc_ckpt_resume(xc_engine_t *e, const xc_state_view_t *extras, int n_extras, const xc_ckpt_resume_opts_t *o,
                   xc_ckpt_loaded_t *info, uint64_t *next_serial, char *why, size_t wl)
{
    char m[1100], t[1100], sub[700];
    entry_t *v;
    int n, rc, skipped = 0;
    uint64_t max_serial = 0;
    if ((rc = list_entries(o->state_dir, o->name, &v, &n))) {
        xc_why(why, wl, "cannot list %s: %s", o->state_dir, strerror(errno));
        return rc;
    }
    for (int i = 0; i < n; i++)
        if (v[i].known && v[i].serial > max_serial) max_serial = v[i].serial;
    if (next_serial) *next_serial = max_serial + 1;
    if (o->path) {
        free(v);
        if (xc_ckpt_pair_paths(o->path, m, sizeof m, t, sizeof t)) {
            xc_why(why, wl, "--resume %s: not a checkpoint file name (NAME-STEP.safetensors or NAME-STEP%s)", o->path,
                    XC_STF_TRAIN_SUFFIX);
            return XC_EINVAL;
        }
        return xc_ckpt_load_pair(e, extras, n_extras, m, t, info, why, wl);
    }
    if (o->fresh) {
        free(v);
        xc_why(why, wl, "a fresh start was asked for (--fresh); %d checkpoint(s) of '%s' in %s are left as they are", n,
                o->name, o->state_dir);
        return XC_ENOTFOUND;
    }
    if (n > 0) qsort(v, (size_t)n, sizeof *v, newest_first); /* v may be NULL when empty */
    for (int i = 0; i < n; i++) /* files whose header cannot even be read: no serial to order them by */
        if (!v[i].known) {
            xc_log(XC_LOG_WARN, "skipping checkpoint at step %ld: %s", v[i].step, v[i].why);
            skipped++;
        }
    for (int i = 0; i < n; i++) {
        if (!v[i].known) continue;
        pair_names(o->state_dir, o->name, v[i].step, m, sizeof m, t, sizeof t);
        if (!v[i].has_model || !v[i].has_train) {
            xc_log(XC_LOG_WARN, "skipping checkpoint at step %ld: %s is missing (an interrupted write)", v[i].step,
                   v[i].has_model ? t : m);
            skipped++;
            continue;
        }
        rc = xc_ckpt_load_pair(e, extras, n_extras, m, t, info, sub, sizeof sub);
        if (rc == XC_OK) {
            free(v);
            return XC_OK;
        }
        if (rc == XC_ESHAPE || rc == XC_EVERSION) {
            xc_why(why, wl, "%s", sub);
            free(v);
            return rc;
        }
        xc_log(XC_LOG_WARN, "skipping checkpoint at step %ld: %s", v[i].step, sub);
        skipped++;
    }
    free(v);
    if (skipped)
        xc_why(why, wl, "none of the %d checkpoint(s) of '%s' in %s is valid (see the lines above)", skipped, o->name,
                o->state_dir);
    else
        xc_why(why, wl, "no checkpoint of '%s' in %s", o->name, o->state_dir);
    return XC_ENOTFOUND;
}
