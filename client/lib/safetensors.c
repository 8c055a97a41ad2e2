/* Read-only access to .safetensors files (the daemon's checkpoints): an 8-byte
 * little-endian header length, a JSON header naming each tensor's dtype, shape
 * and byte range, then the data. The file is mapped; every offset is checked
 * against the file size before anything is read. */
#include "xcoder.h"
#include "xc_client_internal.h"
#include "xc_proto.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER (64u << 20)

struct xc_client_st {
    void *map;
    size_t map_len;
    const unsigned char *data;    /* start of the data section */
    size_t data_len;
    xc_client_value_t *header;    /* owned */
};

static int stfail(char *why, size_t n, int err, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int stfail(char *why, size_t n, int err, const char *fmt, ...)
{
    if (why && n) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, n, fmt, ap);
        va_end(ap);
    }
    return err;
}

static size_t dtype_size(const char *dt)
{
    if (!strcmp(dt, "F32") || !strcmp(dt, "I32") || !strcmp(dt, "U32")) return 4;
    if (!strcmp(dt, "F16") || !strcmp(dt, "BF16") || !strcmp(dt, "I16") || !strcmp(dt, "U16")) return 2;
    if (!strcmp(dt, "F64") || !strcmp(dt, "I64") || !strcmp(dt, "U64")) return 8;
    if (!strcmp(dt, "U8") || !strcmp(dt, "I8") || !strcmp(dt, "BOOL")) return 1;
    return 0;
}

xc_client_st_t *xc_client_st_open(const char *path, int *err, char *why, size_t why_len)
{
    int rc = XC_EIO;
    struct stat st;
    xc_client_st_t *s = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        stfail(why, why_len, XC_EIO, "cannot open %s: %s", path, strerror(errno));
        goto out;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size < 10) {
        rc = stfail(why, why_len, XC_ECORRUPT, "%s is not a safetensors file (too short or not a regular file)", path);
        goto out_close;
    }
    s = calloc(1, sizeof *s);
    if (!s) {
        rc = stfail(why, why_len, XC_ENOMEM, "out of memory");
        goto out_close;
    }
    s->map_len = (size_t)st.st_size;
    s->map = mmap(NULL, s->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (s->map == MAP_FAILED) {
        s->map = NULL;
        rc = stfail(why, why_len, XC_EIO, "cannot map %s: %s", path, strerror(errno));
        goto out_free;
    }
    const unsigned char *b = s->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | b[i];
    if (hlen < 2 || hlen > ST_MAX_HEADER || hlen > s->map_len - 8) {
        rc = stfail(why, why_len, XC_ECORRUPT, "%s: bad safetensors header length %llu (file is %zu bytes)", path,
                    (unsigned long long)hlen, s->map_len);
        goto out_unmap;
    }
    char jwhy[200];
    s->header = xc_client_json_parse((const char *)b + 8, (size_t)hlen, &rc, jwhy, sizeof jwhy);
    if (!s->header || s->header->type != XC_VAL_MAP) {
        rc = stfail(why, why_len, XC_ECORRUPT, "%s: safetensors header is not a JSON object: %s", path,
                    s->header ? "wrong type" : jwhy);
        goto out_unmap;
    }
    s->data = b + 8 + hlen;
    s->data_len = s->map_len - 8 - (size_t)hlen;
    close(fd);
    if (err) *err = XC_OK;
    return s;

out_unmap:
    xc_client_value_free(&s->header);
    munmap(s->map, s->map_len);
out_free:
    free(s);
out_close:
    close(fd);
out:
    if (err) *err = rc;
    return NULL;
}

void xc_client_st_close(xc_client_st_t **sp)
{
    if (!sp || !*sp) return;
    xc_client_st_t *s = *sp;
    xc_client_value_free(&s->header);
    if (s->map) munmap(s->map, s->map_len);
    free(s);
    *sp = NULL;
}

const xc_client_value_t *xc_client_st_header(const xc_client_st_t *s) { return s ? s->header : NULL; }

int xc_client_st_tensor(const xc_client_st_t *s, const char *name, xc_client_tensor_t *out, char *why,
                        size_t why_len)
{
    memset(out, 0, sizeof *out);
    if (!s || !name) return stfail(why, why_len, XC_EINVAL, "no file or name");
    const xc_client_value_t *t = xc_client_value_get(s->header, name);
    if (!t) return stfail(why, why_len, XC_ENOTFOUND, "no tensor '%s' in the checkpoint", name);
    const char *dt = xc_client_value_getstr(t, "dtype", NULL);
    const xc_client_value_t *shape = xc_client_value_get(t, "shape");
    const xc_client_value_t *offs = xc_client_value_get(t, "data_offsets");
    if (!dt || !shape || shape->type != XC_VAL_ARRAY || shape->u.a.n > XC_CLIENT_NPY_MAX_DIMS || !offs ||
        offs->type != XC_VAL_ARRAY || offs->u.a.n != 2)
        return stfail(why, why_len, XC_ECORRUPT, "tensor '%s': malformed entry (needs dtype, shape, data_offsets)", name);
    size_t isz = dtype_size(dt);
    if (!isz) return stfail(why, why_len, XC_EDTYPE, "tensor '%s': unknown dtype '%s'", name, dt);
    size_t count = 1;
    for (size_t i = 0; i < shape->u.a.n; i++) {
        const xc_client_value_t *e = &shape->u.a.items[i];
        if (e->type != XC_VAL_INT || e->u.i < 0 || e->u.i > (1LL << 40))
            return stfail(why, why_len, XC_ECORRUPT, "tensor '%s': bad shape", name);
        out->shape[i] = (long)e->u.i;
        if (e->u.i && count > ((size_t)1 << 46) / (size_t)e->u.i)
            return stfail(why, why_len, XC_ECORRUPT, "tensor '%s': shape too large", name);
        count *= (size_t)e->u.i;
    }
    const xc_client_value_t *b0 = &offs->u.a.items[0], *b1 = &offs->u.a.items[1];
    if (b0->type != XC_VAL_INT || b1->type != XC_VAL_INT || b0->u.i < 0 || b1->u.i < b0->u.i ||
        (uint64_t)b1->u.i > s->data_len)
        return stfail(why, why_len, XC_ECORRUPT, "tensor '%s': data_offsets outside the file (truncated?)", name);
    size_t bytes = (size_t)(b1->u.i - b0->u.i);
    if (bytes != count * isz)
        return stfail(why, why_len, XC_ECORRUPT, "tensor '%s': %zu bytes but dtype %s x shape needs %zu", name, bytes, dt,
                      count * isz);
    snprintf(out->dtype, sizeof out->dtype, "%s", dt);
    out->ndim = (int)shape->u.a.n;
    out->count = count;
    out->bytes = bytes;
    out->data = s->data + b0->u.i;
    return XC_OK;
}

float *xc_client_st_read_f32(const xc_client_st_t *s, const char *name, xc_client_tensor_t *info, int *err,
                             char *why, size_t why_len)
{
    xc_client_tensor_t t;
    int rc = xc_client_st_tensor(s, name, &t, why, why_len);
    if (info) *info = t;
    if (rc < 0) {
        if (err) *err = rc;
        return NULL;
    }
    float *out = malloc(t.count ? t.count * sizeof(float) : 1);
    if (!out) {
        if (err) *err = stfail(why, why_len, XC_ENOMEM, "out of memory reading '%s'", name);
        return NULL;
    }
    const unsigned char *p = t.data; /* may be unaligned: copy element by element */
    for (size_t i = 0; i < t.count; i++) {
        if (!strcmp(t.dtype, "F32")) {
            memcpy(&out[i], p + 4 * i, 4);
        } else if (!strcmp(t.dtype, "F64")) {
            double x;
            memcpy(&x, p + 8 * i, 8);
            out[i] = (float)x;
        } else if (!strcmp(t.dtype, "F16") || !strcmp(t.dtype, "BF16")) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = t.dtype[0] == 'F' ? xc_f16_to_f32(h) : xc_bf16_to_f32(h);
        } else {
            free(out);
            if (err) *err = stfail(why, why_len, XC_EDTYPE, "tensor '%s' has dtype %s, not a float type", name, t.dtype);
            return NULL;
        }
    }
    if (err) *err = XC_OK;
    return out;
}
