/* Generic decoded values (xc_client_value_t): conversion from a msgpack object
 * tree into one self-contained allocation, lookups, and the JSON renderer used
 * by every `--json` output of the CLI. */
#include "xcoder.h"
#include "xc_client_internal.h"
#include "xc_proto.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- parsed MessagePack (proto's xc_mp reader) -> value ----
 * Two passes: measure, then fill one block, so a tree is one allocation. */

#define XC_VALUE_MAX_DEPTH 64

static size_t align8(size_t n) { return (n + 7u) & ~(size_t)7u; }

/* Bytes needed below (not including) the node itself; -1 on too-deep input. */
static long value_size(xc_mp_node_t o, int depth)
{
    if (depth > XC_VALUE_MAX_DEPTH) return -1;
    size_t sz = 0, n = xc_mp_len(o);
    switch (xc_mp_type(o)) {
    case XC_MP_STR:
    case XC_MP_BIN: return (long)align8(n + 1);
    case XC_MP_ARRAY:
        sz = align8(sizeof(xc_client_value_t) * n);
        for (size_t i = 0; i < n; i++) {
            long s = value_size(xc_mp_at(o, i), depth + 1);
            if (s < 0) return -1;
            sz += (size_t)s;
        }
        return (long)sz;
    case XC_MP_MAP:
        sz = align8(sizeof(xc_client_value_t) * 2 * n);
        for (size_t i = 0; i < n; i++) {
            long a = value_size(xc_mp_map_key(o, i), depth + 1);
            long b = value_size(xc_mp_map_val(o, i), depth + 1);
            if (a < 0 || b < 0) return -1;
            sz += (size_t)a + (size_t)b;
        }
        return (long)sz;
    default: return 0;
    }
}

/* Fills *v from o, carving child storage from *cur. */
static void value_fill(xc_client_value_t *v, xc_mp_node_t o, char **cur)
{
    size_t n = xc_mp_len(o);
    memset(v, 0, sizeof *v);
    switch (xc_mp_type(o)) {
    case XC_MP_BOOL: v->type = XC_VAL_BOOL; xc_mp_as_bool(o, &v->u.b); break;
    case XC_MP_INT:
        if (xc_mp_as_i64(o, &v->u.i) == XC_OK) {
            v->type = XC_VAL_INT;
        } else {
            v->type = XC_VAL_UINT;
            xc_mp_as_u64(o, &v->u.u);
        }
        break;
    case XC_MP_FLOAT: v->type = XC_VAL_FLOAT; xc_mp_as_f64(o, &v->u.f); break;
    case XC_MP_STR:
    case XC_MP_BIN: {
        const void *src = NULL;
        size_t len = 0;
        const char *s = NULL;
        if (xc_mp_type(o) == XC_MP_STR) {
            xc_mp_as_str(o, &s, &len);
            src = s;
            v->type = XC_VAL_STR;
        } else {
            xc_mp_as_bin(o, &src, &len);
            v->type = XC_VAL_BIN;
        }
        char *dst = *cur;
        *cur += align8(n + 1);
        if (len > n) len = n;
        if (len) memcpy(dst, src, len);
        dst[len] = 0;
        v->u.s.ptr = dst;
        v->u.s.len = len;
        break;
    }
    case XC_MP_ARRAY: {
        xc_client_value_t *items = (xc_client_value_t *)(void *)*cur;
        *cur += align8(sizeof(xc_client_value_t) * n);
        for (size_t i = 0; i < n; i++) value_fill(&items[i], xc_mp_at(o, i), cur);
        v->type = XC_VAL_ARRAY;
        v->u.a.items = items;
        v->u.a.n = n;
        break;
    }
    case XC_MP_MAP: {
        xc_client_value_t *kv = (xc_client_value_t *)(void *)*cur;
        *cur += align8(sizeof(xc_client_value_t) * 2 * n);
        for (size_t i = 0; i < n; i++) {
            value_fill(&kv[2 * i], xc_mp_map_key(o, i), cur);
            value_fill(&kv[2 * i + 1], xc_mp_map_val(o, i), cur);
        }
        v->type = XC_VAL_MAP;
        v->u.m.kv = kv;
        v->u.m.n = n;
        break;
    }
    default: v->type = XC_VAL_NIL; break; /* nil, ext (unused by the protocol) */
    }
}

/* Two passes (measure, fill) so that a tree is one allocation; a tree
 * nested deeper than XC_VALUE_MAX_DEPTH is refused. */
xc_client_value_t *xc_client_value_from_node(xc_mp_node_t o, int *err)
{
    long below = value_size(o, 0);
    if (below < 0) {
        if (err) *err = XC_EPROTO;
        return NULL;
    }
    size_t total = align8(sizeof(xc_client_value_t)) + (size_t)below;
    char *block = malloc(total);
    if (!block) {
        if (err) *err = XC_ENOMEM;
        return NULL;
    }
    char *cur = block + align8(sizeof(xc_client_value_t));
    value_fill((xc_client_value_t *)(void *)block, o, &cur);
    if (err) *err = XC_OK;
    return (xc_client_value_t *)(void *)block;
}

xc_client_value_t *xc_client_value_parse(const void *buf, size_t len, int *err)
{
    xc_mp_doc_t *doc = NULL;
    int rc = xc_mp_doc_parse(buf, len, &doc, NULL, 0);
    if (rc != XC_OK) {
        if (err) *err = rc;
        return NULL;
    }
    xc_client_value_t *v = xc_client_value_from_node(xc_mp_root(doc), err);
    xc_mp_doc_free(&doc);
    return v;
}

void xc_client_value_free(xc_client_value_t **v)
{
    if (!v || !*v) return;
    free(*v);
    *v = NULL;
}

/* ---- lookups ---- */

/* Linear lookup: replies have a few dozen keys. Only string keys match. */
const xc_client_value_t *xc_client_value_get(const xc_client_value_t *v, const char *key)
{
    if (!v || v->type != XC_VAL_MAP || !key) return NULL;
    size_t kl = strlen(key);
    for (size_t i = 0; i < v->u.m.n; i++) {
        const xc_client_value_t *k = &v->u.m.kv[2 * i];
        if (k->type == XC_VAL_STR && k->u.s.len == kl && memcmp(k->u.s.ptr, key, kl) == 0)
            return &v->u.m.kv[2 * i + 1];
    }
    return NULL;
}

/* "a.b.3.c": map keys, or array indices where the value is an array. */
const xc_client_value_t *xc_client_value_path(const xc_client_value_t *v, const char *path)
{
    char key[128];
    while (v && path && *path) {
        const char *dot = strchr(path, '.');
        size_t n = dot ? (size_t)(dot - path) : strlen(path);
        if (n >= sizeof key) return NULL;
        memcpy(key, path, n);
        key[n] = 0;
        if (v->type == XC_VAL_ARRAY && n > 0 && key[0] >= '0' && key[0] <= '9') {
            char *end;
            unsigned long idx = strtoul(key, &end, 10);
            v = (*end == 0) ? xc_client_value_at(v, idx) : NULL;
        } else {
            v = xc_client_value_get(v, key);
        }
        path = dot ? dot + 1 : NULL;
    }
    return v;
}

const xc_client_value_t *xc_client_value_at(const xc_client_value_t *v, size_t i)
{
    if (!v || v->type != XC_VAL_ARRAY || i >= v->u.a.n) return NULL;
    return &v->u.a.items[i];
}

/* Any number (and bool, nil as NaN) as a double. */
int xc_client_value_num(const xc_client_value_t *v, double *out)
{
    if (!v) return XC_ENOTFOUND;
    switch (v->type) {
    case XC_VAL_INT: *out = (double)v->u.i; return XC_OK;
    case XC_VAL_UINT: *out = (double)v->u.u; return XC_OK;
    case XC_VAL_FLOAT: *out = v->u.f; return XC_OK;
    case XC_VAL_BOOL: *out = v->u.b ? 1.0 : 0.0; return XC_OK;
    case XC_VAL_NIL: *out = NAN; return XC_OK;
    default: return XC_EINVAL;
    }
}

double xc_client_value_getnum(const xc_client_value_t *v, const char *path, double dflt)
{
    double x;
    if (xc_client_value_num(xc_client_value_path(v, path), &x) != XC_OK) return dflt;
    return x;
}

const char *xc_client_value_getstr(const xc_client_value_t *v, const char *path, const char *dflt)
{
    const xc_client_value_t *s = xc_client_value_path(v, path);
    if (!s || s->type != XC_VAL_STR) return dflt;
    return s->u.s.ptr;
}

/* ---- JSON ----
 * One renderer for every JSON the project prints: proto's xc_mp_json. A value
 * tree is written back to MessagePack (linear) and rendered from there, with
 * the CLI's style: shortest floats, bin as base64, two-space indent. */

/* Writes v into an open writer position (depth bounded by the tree's, which
 * the reader capped). */
static void value_write(xc_mpw_t *w, const xc_client_value_t *v)
{
    if (!v) {
        xc_mpw_nil(w);
        return;
    }
    switch (v->type) {
    case XC_VAL_NIL: xc_mpw_nil(w); break;
    case XC_VAL_BOOL: xc_mpw_bool(w, v->u.b); break;
    case XC_VAL_INT: xc_mpw_int(w, v->u.i); break;
    case XC_VAL_UINT: xc_mpw_uint(w, v->u.u); break;
    case XC_VAL_FLOAT: xc_mpw_double(w, v->u.f); break;
    case XC_VAL_STR: xc_mpw_strn(w, v->u.s.ptr, v->u.s.len); break;
    case XC_VAL_BIN: xc_mpw_bin(w, v->u.s.ptr, v->u.s.len); break;
    case XC_VAL_ARRAY:
        xc_mpw_array_begin(w);
        for (size_t i = 0; i < v->u.a.n && !w->err; i++) value_write(w, &v->u.a.items[i]);
        xc_mpw_array_end(w);
        break;
    case XC_VAL_MAP:
        xc_mpw_map_begin(w);
        for (size_t i = 0; i < 2 * v->u.m.n && !w->err; i++) value_write(w, &v->u.m.kv[i]);
        xc_mpw_map_end(w);
        break;
    }
}

/* Back to MessagePack (linear, depth bounded by the tree's), then proto's
 * renderer: so the CLI prints JSON exactly as every other part does. */
int xc_client_value_json(const xc_client_value_t *v, int pretty, xc_buf_t *out, char *why, size_t why_len)
{
    xc_buf_t mp;
    xc_mpw_t w;
    xc_mp_doc_t *doc = NULL;
    xc_json_opts_t o = {pretty ? 2 : 0, XC_JSON_SHORTEST | XC_JSON_BASE64, 0};
    xc_buf_init(&mp);
    xc_mpw_init(&w, &mp);
    value_write(&w, v);
    int rc = xc_mpw_finish(&w);
    if (rc) xc_why(why, why_len, "%s", rc == XC_ENOMEM ? "out of memory" : "the value nests too deep to render");
    else rc = xc_mp_doc_parse(mp.data, mp.len, &doc, why, why_len);
    if (!rc) rc = xc_mp_json(xc_mp_root(doc), out, &o, why, why_len);
    xc_mp_doc_free(&doc);
    xc_buf_free(&mp);
    return rc;
}

char *xc_client_value_to_json(const xc_client_value_t *v, int pretty)
{
    xc_buf_t b;
    size_t len;
    xc_buf_init(&b);
    if (xc_client_value_json(v, pretty, &b, NULL, 0) || xc_buf_append(&b, "", 1)) {
        xc_buf_free(&b);
        return NULL;
    }
    return (char *)xc_buf_take(&b, &len); /* owned by the caller */
}

int xc_client_value_print_json(FILE *f, const xc_client_value_t *v, int pretty)
{
    xc_buf_t b;
    xc_buf_init(&b);
    int rc = xc_client_value_json(v, pretty, &b, NULL, 0);
    if (!rc) {
        xc_buf_append(&b, "\n", 1);
        rc = fwrite(b.data, 1, b.len, f) == b.len ? XC_OK : XC_EIO;
    }
    xc_buf_free(&b);
    return rc;
}
