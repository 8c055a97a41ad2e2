/* safetensors writer and the crosscoder checkpoint layout (see xc_ckpt.h). */
#include "xc_ckpt.h"
#include "xc_error.h"
#include "xc_proto.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoints are written from host memory and assume a little-endian host"
#endif

#define ST_MAX_TENSORS 32
#define ST_MAX_META 32
#define ST_CHUNK (1u << 20)

typedef struct {
    char name[64];
    char dtype[8];
    int ndim;
    int64_t shape[4];
    size_t bytes;
    const void *data;    /* borrowed, or NULL with fill */
    xc_st_fill_fn fill;
    void *ctx;
} st_tensor_t;

struct xc_st {
    st_tensor_t t[ST_MAX_TENSORS];
    int nt;
    char *meta_k[ST_MAX_META], *meta_v[ST_MAX_META]; /* owned */
    int nm;
};

static void why_set(char *why, size_t why_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void why_set(char *why, size_t why_len, const char *fmt, ...)
{
    va_list ap;
    if (!why || why_len == 0) return;
    va_start(ap, fmt);
    vsnprintf(why, why_len, fmt, ap);
    va_end(ap);
}

xc_st_t *xc_st_new(void) { return calloc(1, sizeof(xc_st_t)); }

void xc_st_destroy(xc_st_t **pst)
{
    xc_st_t *st = pst ? *pst : NULL;
    if (!st) return;
    for (int i = 0; i < st->nm; i++) {
        free(st->meta_k[i]);
        free(st->meta_v[i]);
    }
    free(st);
    *pst = NULL;
}

static size_t dtype_size(const char *dt)
{
    if (!strcmp(dt, "F32") || !strcmp(dt, "I32") || !strcmp(dt, "U32")) return 4;
    if (!strcmp(dt, "F16") || !strcmp(dt, "BF16") || !strcmp(dt, "I16")) return 2;
    if (!strcmp(dt, "F64") || !strcmp(dt, "I64") || !strcmp(dt, "U64")) return 8;
    if (!strcmp(dt, "U8") || !strcmp(dt, "I8") || !strcmp(dt, "BOOL")) return 1;
    return 0;
}

static int add(xc_st_t *st, const char *name, const char *dtype, int ndim, const int64_t *shape,
               const void *data, xc_st_fill_fn fn, void *ctx)
{
    size_t es = dtype_size(dtype);
    if (!st || st->nt == ST_MAX_TENSORS || !name || strlen(name) >= 64 || !es || ndim < 0 ||
        ndim > 4 || (!data && !fn))
        return XC_EINVAL;
    st_tensor_t *t = &st->t[st->nt];
    memset(t, 0, sizeof *t);
    strcpy(t->name, name);
    strcpy(t->dtype, dtype);
    t->ndim = ndim;
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (shape[i] && n > SIZE_MAX / (size_t)shape[i] / es)) return XC_EINVAL;
        t->shape[i] = shape[i];
        n *= (size_t)shape[i];
    }
    t->bytes = n * es;
    t->data = data;
    t->fill = fn;
    t->ctx = ctx;
    st->nt++;
    return XC_OK;
}

int xc_st_add(xc_st_t *st, const char *name, const char *dtype, int ndim, const int64_t *shape,
              const void *data)
{
    return add(st, name, dtype, ndim, shape, data, NULL, NULL);
}

int xc_st_add_fill(xc_st_t *st, const char *name, const char *dtype, int ndim,
                   const int64_t *shape, xc_st_fill_fn fn, void *ctx)
{
    return add(st, name, dtype, ndim, shape, NULL, fn, ctx);
}

int xc_st_meta(xc_st_t *st, const char *key, const char *value)
{
    if (!st || st->nm == ST_MAX_META || !key || !value) return XC_EINVAL;
    char *k = strdup(key), *v = strdup(value); /* owned by st */
    if (!k || !v) {
        free(k);
        free(v);
        return XC_ENOMEM;
    }
    st->meta_k[st->nm] = k;
    st->meta_v[st->nm] = v;
    st->nm++;
    return XC_OK;
}

static void json_str(xc_buf_t *b, const char *s)
{
    xc_buf_append(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char e[8];
        if (c == '"' || c == '\\') {
            e[0] = '\\';
            e[1] = (char)c;
            xc_buf_append(b, e, 2);
        } else if (c < 0x20) {
            snprintf(e, sizeof e, "\\u%04x", c);
            xc_buf_append(b, e, 6);
        } else {
            xc_buf_append(b, &c, 1);
        }
    }
    xc_buf_append(b, "\"", 1);
}

/* The JSON header, padded with spaces to a multiple of 8 bytes. */
static int build_header(const xc_st_t *st, xc_buf_t *b)
{
    char tmp[160];
    size_t off = 0;
    xc_buf_append(b, "{", 1);
    if (st->nm) {
        xc_buf_append(b, "\"__metadata__\":{", 16);
        for (int i = 0; i < st->nm; i++) {
            if (i) xc_buf_append(b, ",", 1);
            json_str(b, st->meta_k[i]);
            xc_buf_append(b, ":", 1);
            json_str(b, st->meta_v[i]);
        }
        xc_buf_append(b, "}", 1);
    }
    for (int i = 0; i < st->nt; i++) {
        const st_tensor_t *t = &st->t[i];
        if (i || st->nm) xc_buf_append(b, ",", 1);
        json_str(b, t->name);
        snprintf(tmp, sizeof tmp, ":{\"dtype\":\"%s\",\"shape\":[", t->dtype);
        xc_buf_append(b, tmp, strlen(tmp));
        for (int k = 0; k < t->ndim; k++) {
            snprintf(tmp, sizeof tmp, "%s%lld", k ? "," : "", (long long)t->shape[k]);
            xc_buf_append(b, tmp, strlen(tmp));
        }
        snprintf(tmp, sizeof tmp, "],\"data_offsets\":[%zu,%zu]}", off, off + t->bytes);
        xc_buf_append(b, tmp, strlen(tmp));
        off += t->bytes;
    }
    xc_buf_append(b, "}", 1);
    while (!b->err && b->len % 8) xc_buf_append(b, " ", 1);
    return b->err;
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

int xc_mkdirs(const char *path, char *why, size_t why_len)
{
    char p[1024];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof p) {
        why_set(why, why_len, "bad directory path '%s'", path);
        return XC_EINVAL;
    }
    memcpy(p, path, n + 1);
    for (char *s = p + 1; ; s++) {
        if (*s == '/' || *s == 0) {
            char c = *s;
            *s = 0;
            if (mkdir(p, 0755) && errno != EEXIST) {
                why_set(why, why_len, "cannot create directory %s: %s", p, strerror(errno));
                return XC_EIO;
            }
            *s = c;
            if (!c) break;
        }
    }
    struct stat sb;
    if (stat(path, &sb) || !S_ISDIR(sb.st_mode)) {
        why_set(why, why_len, "%s is not a directory", path);
        return XC_EIO;
    }
    return XC_OK;
}

int xc_st_write(xc_st_t *st, const char *dir, const char *file, char *path_out, size_t path_len,
                uint64_t *bytes, char *why, size_t why_len)
{
    char tmp[1100], fin[1100];
    xc_buf_t hdr;
    uint8_t *chunk = NULL;
    int fd = -1, rc;
    uint64_t total = 0;

    xc_buf_init(&hdr);
    if ((rc = xc_mkdirs(dir, why, why_len))) return rc;
    if ((size_t)snprintf(fin, sizeof fin, "%s/%s", dir, file) >= sizeof fin ||
        (size_t)snprintf(tmp, sizeof tmp, "%s/.%s.tmp.%ld", dir, file, (long)getpid()) >= sizeof tmp) {
        why_set(why, why_len, "checkpoint path too long");
        return XC_EINVAL;
    }
    if (build_header(st, &hdr)) {
        why_set(why, why_len, "out of memory building the checkpoint header");
        rc = XC_ENOMEM;
        goto out_free;
    }
    chunk = malloc(ST_CHUNK); /* owned here */
    if (!chunk) {
        why_set(why, why_len, "out of memory for the checkpoint write buffer");
        rc = XC_ENOMEM;
        goto out_free;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        why_set(why, why_len, "cannot create %s: %s", tmp, strerror(errno));
        rc = XC_EIO;
        goto out_free;
    }
    uint8_t len8[8];
    uint64_t hl = hdr.len;
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)(hl >> (8 * i));
    if (write_all(fd, len8, 8) || write_all(fd, hdr.data, hdr.len)) goto io_error;
    total = 8 + hdr.len;
    for (int i = 0; i < st->nt; i++) {
        const st_tensor_t *t = &st->t[i];
        if (t->data) {
            if (write_all(fd, t->data, t->bytes)) goto io_error;
        } else {
            for (size_t off = 0; off < t->bytes; off += ST_CHUNK) {
                size_t n = t->bytes - off < ST_CHUNK ? t->bytes - off : ST_CHUNK;
                if ((rc = t->fill(t->ctx, off, chunk, n))) {
                    why_set(why, why_len, "cannot produce tensor %s: %s", t->name, xc_strerror(rc));
                    goto out_unlink;
                }
                if (write_all(fd, chunk, n)) goto io_error;
            }
        }
        total += t->bytes;
    }
    if (fsync(fd)) goto io_error;
    if (close(fd)) {
        fd = -1;
        goto io_error;
    }
    fd = -1;
    if (rename(tmp, fin)) goto io_error;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) { /* make the rename durable */
        fsync(dfd);
        close(dfd);
    }
    if (path_out && path_len) snprintf(path_out, path_len, "%s", fin);
    if (bytes) *bytes = total;
    rc = XC_OK;
    goto out_free;
io_error:
    why_set(why, why_len, "writing checkpoint %s failed: %s", fin, strerror(errno));
    rc = XC_EIO;
out_unlink:
    if (fd >= 0) close(fd);
    fd = -1;
    unlink(tmp);
out_free:
    free(chunk);
    xc_buf_free(&hdr);
    return rc;
}

/* ------------------------------------------------ crosscoder layout -- */
typedef struct {
    const float *src; /* (F, 2, d) rows */
    long F, d;
} xpose_t;

/* encoder.weight [2, d, F]: element (m, i, j) = w_enc[j][m][i]. */
static int fill_enc(void *ctx, size_t offset, void *out, size_t len)
{
    const xpose_t *x = ctx;
    float *o = out;
    size_t first = offset / 4, n = len / 4, dF = (size_t)x->d * x->F;
    size_t m = first / dF, r = first % dF, i = r / x->F, j = r % x->F;
    for (size_t k = 0; k < n; k++) {
        o[k] = x->src[j * 2 * x->d + m * x->d + i];
        if (++j == (size_t)x->F) {
            j = 0;
            if (++i == (size_t)x->d) {
                i = 0;
                m++;
            }
        }
    }
    return XC_OK;
}

/* decoder.weight [2, F, d]: element (m, j, i) = w_dec[j][m][i]; rows copy whole. */
static int fill_dec(void *ctx, size_t offset, void *out, size_t len)
{
    const xpose_t *x = ctx;
    float *o = out;
    size_t first = offset / 4, n = len / 4, Fd = (size_t)x->F * x->d;
    for (size_t k = 0; k < n;) {
        size_t g = first + k, m = g / Fd, r = g % Fd, j = r / x->d, i = r % x->d;
        size_t run = (size_t)x->d - i;
        if (run > n - k) run = n - k;
        memcpy(o + k, x->src + j * 2 * x->d + m * x->d + i, run * 4);
        k += run;
    }
    return XC_OK;
}

int xc_ckpt_write(xc_engine_t *e, const xc_ckpt_opts_t *o, char *path_out, size_t path_len,
                  uint64_t *bytes, char *why, size_t why_len)
{
    const xc_engine_config_t *c = xc_engine_config(e);
    const xc_engine_metrics_t *m = xc_engine_metrics(e);
    xc_engine_params_t p;
    char file[160], v[64];
    int rc = XC_ENOMEM;

    xc_engine_params(e, &p);
    xc_st_t *st = xc_st_new(); /* owned here */
    if (!st) {
        why_set(why, why_len, "out of memory");
        return XC_ENOMEM;
    }
    xpose_t enc = {p.w_enc, c->dict_size, c->d}, dec = {p.w_dec, c->dict_size, c->d};
    float threshold = (float)m->theta;
    int32_t k = c->k;
    int64_t cnid = 1;
    int64_t s_enc[3] = {2, c->d, c->dict_size}, s_b[1] = {c->dict_size};
    int64_t s_dec[3] = {2, c->dict_size, c->d}, s_bd[2] = {2, c->d};
    if (xc_st_add_fill(st, "encoder.weight", "F32", 3, s_enc, fill_enc, &enc) ||
        xc_st_add(st, "encoder.bias", "F32", 1, s_b, p.b_enc) ||
        xc_st_add_fill(st, "decoder.weight", "F32", 3, s_dec, fill_dec, &dec) ||
        xc_st_add(st, "decoder.bias", "F32", 2, s_bd, p.b_dec) ||
        xc_st_add(st, "threshold", "F32", 0, NULL, &threshold) ||
        xc_st_add(st, "k", "I32", 0, NULL, &k) ||
        xc_st_add(st, "code_normalization_id", "I64", 0, NULL, &cnid)) {
        rc = XC_EINVAL;
        goto out_destroy;
    }
    rc = xc_st_meta(st, "format", "xcoderd-crosscoder");
    rc = rc ? rc : xc_st_meta(st, "format_version", "1");
    rc = rc ? rc : xc_st_meta(st, "model", c->model == XC_MODEL_L1 ? "l1" : "batchtopk");
    snprintf(v, sizeof v, "%ld", m->step);
    rc = rc ? rc : xc_st_meta(st, "step", v);
    snprintf(v, sizeof v, "%llu", (unsigned long long)m->tokens);
    rc = rc ? rc : xc_st_meta(st, "tokens", v);
    snprintf(v, sizeof v, "%.9g", m->theta);
    rc = rc ? rc : xc_st_meta(st, "theta", v);
    rc = rc ? rc : xc_st_meta(st, "layout", "encoder.weight [2,d,F], decoder.weight [2,F,d]; index 0 = base, 1 = chat");
    if (o->name) rc = rc ? rc : xc_st_meta(st, "name", o->name);
    if (o->reason) rc = rc ? rc : xc_st_meta(st, "reason", o->reason);
    if (o->config_json) rc = rc ? rc : xc_st_meta(st, "config", o->config_json);
    if (rc) goto out_destroy;
    snprintf(file, sizeof file, "%s-%09ld.safetensors", o->name ? o->name : "xcoderd", m->step);
    rc = xc_st_write(st, o->state_dir, file, path_out, path_len, bytes, why, why_len);
    xc_st_destroy(&st);
    return rc;
out_destroy:
    why_set(why, why_len, "cannot describe the checkpoint: %s", xc_strerror(rc ? rc : XC_EINVAL));
    xc_st_destroy(&st);
    return rc ? rc : XC_EINVAL;
}
