/* libxcoder's public safetensors access (xc_client_st_*, xcoder.h) on the one
 * reader of format/stfile.c, opened lazily: files of other tools (a torch
 * state dict) are taken as they are and each tensor is checked when it is
 * looked up, while xcoderd's own checkpoints go through the strict loader
 * (ckptfile.c). The header is also handed out as a parsed JSON value. */
#include "xcoder.h"
#include "xc_client_internal.h"
#include "xc_proto.h"
#include "xc_stfile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct xc_client_st {
    xc_stf_t *f;                  /* owned */
    xc_client_value_t *header;    /* owned */
};

xc_client_st_t *xc_client_st_open(const char *path, int *err, char *why, size_t why_len)
{
    int rc;
    xc_client_st_t *s = calloc(1, sizeof *s); /* owned by the caller; xc_client_st_close */
    if (!s) {
        xc_why(why, why_len, "out of memory");
        rc = XC_ENOMEM;
        goto fail;
    }
    s->f = xc_stf_open_lazy(path, &rc, why, why_len);
    if (!s->f) goto fail;
    size_t hlen;
    const char *h = xc_stf_header(s->f, &hlen);
    s->header = xc_client_json_parse(h, hlen, &rc, why, why_len); /* a JSON object: checked at open */
    if (!s->header) goto fail;
    if (err) *err = XC_OK;
    return s;
fail:
    xc_client_st_close(&s);
    if (err) *err = rc;
    return NULL;
}

void xc_client_st_close(xc_client_st_t **sp)
{
    if (!sp || !*sp) return;
    xc_client_st_t *s = *sp;
    xc_client_value_free(&s->header);
    xc_stf_close(&s->f);
    free(s);
    *sp = NULL;
}

const xc_client_value_t *xc_client_st_header(const xc_client_st_t *s) { return s ? s->header : NULL; }

int xc_client_st_tensor(const xc_client_st_t *s, const char *name, xc_client_tensor_t *out, char *why,
                        size_t why_len)
{
    xc_stf_tensor_t t;
    memset(out, 0, sizeof *out);
    if (!s || !name) {
        xc_why(why, why_len, "no file or name");
        return XC_EINVAL;
    }
    int rc = xc_stf_lookup(s->f, name, &t, why, why_len);
    if (rc) return rc;
    if (t.ndim > XC_CLIENT_NPY_MAX_DIMS) {
        xc_why(why, why_len, "tensor '%s': %d dimensions (at most %d)", name, t.ndim, XC_CLIENT_NPY_MAX_DIMS);
        return XC_ECORRUPT;
    }
    snprintf(out->dtype, sizeof out->dtype, "%s", t.dtype);
    out->ndim = t.ndim;
    for (int i = 0; i < t.ndim; i++) out->shape[i] = (long)t.shape[i];
    out->count = (size_t)t.count;
    out->bytes = t.bytes;
    out->data = t.data;
    return XC_OK;
}

/* Converts element by element: the data of a foreign file may be unaligned. */
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
    float *out = malloc(t.count ? t.count * sizeof(float) : 1); /* owned by the caller */
    if (!out) {
        xc_why(why, why_len, "out of memory reading '%s'", name);
        if (err) *err = XC_ENOMEM;
        return NULL;
    }
    const unsigned char *p = t.data;
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
            xc_why(why, why_len, "tensor '%s' has dtype %s, not a float type", name, t.dtype);
            if (err) *err = XC_EDTYPE;
            return NULL;
        }
    }
    if (err) *err = XC_OK;
    return out;
}
