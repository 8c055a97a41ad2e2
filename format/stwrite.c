/* The safetensors writer (see xc_stfile.h): tensors are borrowed or produced
 * by fill callbacks chunk by chunk, so a checkpoint of several hundred MB is
 * written without a second copy of the state; the file is written through the
 * one atomic-write routine (xc_afile.h) and can carry its own CRC-32. */
#include "xc_afile.h"
#include "xc_error.h"
#include "xc_proto.h"
#include "xc_stfile.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors files are written from host memory and assume a little-endian host"
#endif

#define ST_MAX_TENSORS 64
#define ST_MAX_META 48
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
    int checksum;          /* write "checksum" first, fill it in at the end */
    char sum[16];          /* "crc32:xxxxxxxx" after a write */
    long long fault_after; /* < 0: off */
};

/* ---------------------------------------------------- safetensors writer -- */
xc_st_t *xc_st_new(void)
{
    xc_st_t *st = calloc(1, sizeof(xc_st_t));
    if (st) st->fault_after = -1;
    return st;
}

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

void xc_st_checksum(xc_st_t *st) { st->checksum = 1; }
const char *xc_st_checksum_value(const xc_st_t *st) { return st->sum; }
void xc_st_fault_after(xc_st_t *st, long long n) { st->fault_after = n; }

static int add(xc_st_t *st, const char *name, const char *dtype, int ndim, const int64_t *shape,
               const void *data, xc_st_fill_fn fn, void *ctx)
{
    size_t es = xc_stf_dtype_size(dtype);
    if (!st || st->nt == ST_MAX_TENSORS || !name || strlen(name) >= 64 || !es || strlen(dtype) >= 8 ||
        ndim < 0 || ndim > 4 || (!data && !fn))
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

/* The JSON header, padded with spaces to a multiple of 8 bytes. With a
 * checksum, *sum_at receives the header offset of its 8 placeholder digits. */
static int build_header(const xc_st_t *st, xc_buf_t *b, size_t *sum_at)
{
    char tmp[160];
    size_t off = 0;
    xc_buf_append(b, "{", 1);
    if (st->nm || st->checksum) {
        xc_buf_append(b, "\"__metadata__\":{", 16);
        if (st->checksum) {
            xc_buf_append(b, XC_STF_CHECKSUM_PAT, strlen(XC_STF_CHECKSUM_PAT));
            *sum_at = b->len;
            xc_buf_append(b, "00000000\"", 9);
        }
        for (int i = 0; i < st->nm; i++) {
            if (i || st->checksum) xc_buf_append(b, ",", 1);
            json_str(b, st->meta_k[i]);
            xc_buf_append(b, ":", 1);
            json_str(b, st->meta_v[i]);
        }
        xc_buf_append(b, "}", 1);
    }
    for (int i = 0; i < st->nt; i++) {
        const st_tensor_t *t = &st->t[i];
        if (i || st->nm || st->checksum) xc_buf_append(b, ",", 1);
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

/* An output file: the atomic file, the running CRC, and the fault-injection
 * budget (a test hook that stops the write after N bytes as if the process
 * had died there). */
typedef struct {
    xc_afile_t f;
    uint64_t written;
    long long budget; /* < 0: none */
    uint32_t crc;
    int faulted;
} out_t;

static int put(out_t *o, const void *p, size_t n)
{
    o->crc = xc_crc32(o->crc, p, n);
    if (o->budget >= 0 && o->written + n > (uint64_t)o->budget) {
        n = (size_t)((uint64_t)o->budget - o->written);
        o->faulted = 1;
    }
    if (xc_afile_write(&o->f, p, n)) return -1;
    o->written += n;
    return o->faulted ? -1 : 0;
}

/* Header, then every tensor in order (fill callbacks produce theirs chunk by
 * chunk into one buffer), then the CRC digits patched into the header, then
 * the atomic commit. */
int xc_st_write(xc_st_t *st, const char *dir, const char *file, char *path_out, size_t path_len,
                uint64_t *bytes, char *why, size_t why_len)
{
    char fin[XC_AFILE_PATH_MAX], sub[600];
    xc_buf_t hdr;
    uint8_t *chunk = NULL;
    size_t sum_at = 0;
    out_t o = {.written = 0, .budget = st->fault_after, .crc = 0, .faulted = 0};
    int rc;

    o.f.fd = -1;
    st->sum[0] = 0;
    xc_buf_init(&hdr);
    if ((rc = xc_mkdirs(dir, why, why_len))) return rc;
    if ((size_t)snprintf(fin, sizeof fin, "%s/%s", dir, file) >= sizeof fin - 32) {
        xc_why(why, why_len, "checkpoint path too long");
        return XC_EINVAL;
    }
    if (build_header(st, &hdr, &sum_at)) {
        xc_why(why, why_len, "out of memory building the checkpoint header");
        rc = XC_ENOMEM;
        goto out_free;
    }
    chunk = malloc(ST_CHUNK); /* owned here */
    if (!chunk) {
        xc_why(why, why_len, "out of memory for the checkpoint write buffer");
        rc = XC_ENOMEM;
        goto out_free;
    }
    if ((rc = xc_afile_open(&o.f, fin, NULL, 0, 0644, why, why_len))) goto out_free;
    uint8_t len8[8];
    uint64_t hl = hdr.len;
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)(hl >> (8 * i));
    if (put(&o, len8, 8) || put(&o, hdr.data, hdr.len)) goto io_error;
    for (int i = 0; i < st->nt; i++) {
        const st_tensor_t *t = &st->t[i];
        for (size_t off = 0; off < t->bytes; off += ST_CHUNK) {
            size_t n = t->bytes - off < ST_CHUNK ? t->bytes - off : ST_CHUNK;
            const void *src = (const uint8_t *)t->data + off;
            if (!t->data) {
                if ((rc = t->fill(t->ctx, off, chunk, n))) {
                    xc_why(why, why_len, "cannot produce tensor %s: %s", t->name, xc_strerror(rc));
                    goto out_unlink;
                }
                src = chunk;
            }
            if (put(&o, src, n)) goto io_error;
        }
    }
    if (st->checksum) { /* the digits were written as '0': patch them in */
        char digits[9];
        snprintf(digits, sizeof digits, "%08x", o.crc);
        if (pwrite(o.f.fd, digits, 8, (off_t)(8 + sum_at)) != 8) goto io_error;
        snprintf(st->sum, sizeof st->sum, "crc32:%s", digits);
    }
    if (xc_afile_commit(&o.f, sub, sizeof sub)) {
        xc_why(why, why_len, "writing checkpoint %s failed: %s", fin, sub);
        st->sum[0] = 0;
        rc = XC_EIO;
        goto out_free;
    }
    if (path_out && path_len) snprintf(path_out, path_len, "%s", fin);
    if (bytes) *bytes = o.written;
    rc = XC_OK;
    goto out_free;
io_error:
    if (o.faulted) { /* as if the process died here: leave the temp file */
        xc_why(why, why_len, "fault injection: writing %s stopped after %llu bytes", fin,
                (unsigned long long)o.written);
        xc_afile_abort(&o.f, 1);
        st->sum[0] = 0;
        rc = XC_EIO;
        goto out_free;
    }
    xc_why(why, why_len, "writing checkpoint %s failed: %s", fin, strerror(errno));
    rc = XC_EIO;
out_unlink:
    st->sum[0] = 0;
    xc_afile_abort(&o.f, 0);
out_free:
    free(chunk);
    xc_buf_free(&hdr);
    return rc;
}
