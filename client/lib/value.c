/* Generic decoded values (xc_client_value_t): conversion from a msgpack object
 * tree into one self-contained allocation, lookups, and the JSON renderer used
 * by every `--json` output of the CLI. */
#include "xcoder.h"
#include "xc_client_internal.h"
#include "xc_proto.h"

#include <math.h>
#include <stdarg.h>
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

/* ---- JSON ---- */

static int sb_grow(xc_client_sbuf_t *b, size_t extra)
{
    if (b->failed) return -1;
    if (b->len + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) cap *= 2;
    char *p = realloc(b->buf, cap);
    if (!p) {
        b->failed = 1;
        return -1;
    }
    b->buf = p;
    b->cap = cap;
    return 0;
}

void xc_client_sbuf_put(xc_client_sbuf_t *b, const char *s, size_t n)
{
    if (sb_grow(b, n) < 0) return;
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = 0;
}

void xc_client_sbuf_printf(xc_client_sbuf_t *b, const char *fmt, ...)
{
    va_list ap;
    char tmp[256];
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        xc_client_sbuf_put(b, tmp, (size_t)n);
        return;
    }
    if (sb_grow(b, (size_t)n) < 0) return;
    va_start(ap, fmt);
    vsnprintf(b->buf + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* Length of a valid UTF-8 sequence starting at s (max n bytes), 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c < 0x80) return 1;
    if ((c & 0xE0) == 0xC0) { len = 2; min = 0x80; c &= 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; min = 0x800; c &= 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; min = 0x10000; c &= 0x07; }
    else return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
    return len;
}

void xc_client_json_string(xc_client_sbuf_t *b, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    xc_client_sbuf_put(b, "\"", 1);
    size_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        const char *esc = NULL;
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        default: break;
        }
        if (esc) {
            xc_client_sbuf_put(b, esc, strlen(esc));
            i++;
        } else if (c < 0x20 || c == 0x7f) {
            xc_client_sbuf_printf(b, "\\u%04x", c);
            i++;
        } else {
            size_t l = utf8_seq(p + i, n - i);
            if (l == 0) {
                xc_client_sbuf_put(b, "\xef\xbf\xbd", 3); /* invalid byte: U+FFFD */
                i++;
            } else {
                xc_client_sbuf_put(b, (const char *)p + i, l);
                i += l;
            }
        }
    }
    xc_client_sbuf_put(b, "\"", 1);
}

/* Shortest %g form that reads back as the same double (or as the same float
 * when x is exactly a float32, which most daemon statistics are). */
void xc_client_json_number(xc_client_sbuf_t *b, double x)
{
    if (!isfinite(x)) {
        xc_client_sbuf_put(b, "null", 4); /* JSON has no NaN/Inf */
        return;
    }
    char tmp[40];
    int n = 0, is_f32 = (double)(float)x == x;
    for (int p = 1; p <= 17; p++) {
        n = snprintf(tmp, sizeof tmp, "%.*g", p, x);
        double back = strtod(tmp, NULL);
        if (is_f32 ? (float)back == (float)x : back == x) break;
    }
    /* keep floats recognisable as floats for typed JSON readers */
    if (!strpbrk(tmp, ".eE")) {
        tmp[n++] = '.';
        tmp[n++] = '0';
        tmp[n] = 0;
    }
    xc_client_sbuf_put(b, tmp, (size_t)n);
}

static void json_base64(xc_client_sbuf_t *b, const unsigned char *p, size_t n)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    xc_client_sbuf_put(b, "\"", 1);
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16;
        if (i + 1 < n) v |= (unsigned)p[i + 1] << 8;
        if (i + 2 < n) v |= p[i + 2];
        char q[4] = {tbl[(v >> 18) & 63], tbl[(v >> 12) & 63],
                     i + 1 < n ? tbl[(v >> 6) & 63] : '=', i + 2 < n ? tbl[v & 63] : '='};
        xc_client_sbuf_put(b, q, 4);
    }
    xc_client_sbuf_put(b, "\"", 1);
}

static void json_indent(xc_client_sbuf_t *b, int pretty, int depth)
{
    if (!pretty) return;
    xc_client_sbuf_put(b, "\n", 1);
    for (int i = 0; i < depth; i++) xc_client_sbuf_put(b, "  ", 2);
}

static void json_value(xc_client_sbuf_t *b, const xc_client_value_t *v, int pretty, int depth)
{
    if (!v) {
        xc_client_sbuf_put(b, "null", 4);
        return;
    }
    switch (v->type) {
    case XC_VAL_NIL: xc_client_sbuf_put(b, "null", 4); break;
    case XC_VAL_BOOL: v->u.b ? xc_client_sbuf_put(b, "true", 4) : xc_client_sbuf_put(b, "false", 5); break;
    case XC_VAL_INT: xc_client_sbuf_printf(b, "%lld", (long long)v->u.i); break;
    case XC_VAL_UINT: xc_client_sbuf_printf(b, "%llu", (unsigned long long)v->u.u); break;
    case XC_VAL_FLOAT: xc_client_json_number(b, v->u.f); break;
    case XC_VAL_STR: xc_client_json_string(b, v->u.s.ptr, v->u.s.len); break;
    case XC_VAL_BIN: json_base64(b, (const unsigned char *)v->u.s.ptr, v->u.s.len); break;
    case XC_VAL_ARRAY:
        xc_client_sbuf_put(b, "[", 1);
        for (size_t i = 0; i < v->u.a.n; i++) {
            if (i) xc_client_sbuf_put(b, ",", 1);
            json_indent(b, pretty, depth + 1);
            json_value(b, &v->u.a.items[i], pretty, depth + 1);
        }
        if (v->u.a.n) json_indent(b, pretty, depth);
        xc_client_sbuf_put(b, "]", 1);
        break;
    case XC_VAL_MAP:
        xc_client_sbuf_put(b, "{", 1);
        for (size_t i = 0; i < v->u.m.n; i++) {
            const xc_client_value_t *k = &v->u.m.kv[2 * i];
            if (i) xc_client_sbuf_put(b, ",", 1);
            json_indent(b, pretty, depth + 1);
            if (k->type == XC_VAL_STR) {
                xc_client_json_string(b, k->u.s.ptr, k->u.s.len);
            } else { /* JSON keys are strings: render the key, then quote it */
                xc_client_sbuf_t kb = {0};
                json_value(&kb, k, 0, 0);
                xc_client_json_string(b, kb.buf ? kb.buf : "", kb.len);
                free(kb.buf);
            }
            xc_client_sbuf_put(b, pretty ? ": " : ":", pretty ? 2 : 1);
            json_value(b, &v->u.m.kv[2 * i + 1], pretty, depth + 1);
        }
        if (v->u.m.n) json_indent(b, pretty, depth);
        xc_client_sbuf_put(b, "}", 1);
        break;
    }
}

char *xc_client_value_to_json(const xc_client_value_t *v, int pretty)
{
    xc_client_sbuf_t b = {0};
    json_value(&b, v, pretty, 0);
    if (b.failed) {
        free(b.buf);
        return NULL;
    }
    return b.buf;
}

int xc_client_value_print_json(FILE *f, const xc_client_value_t *v, int pretty)
{
    char *s = xc_client_value_to_json(v, pretty);
    if (!s) return XC_ENOMEM;
    int rc = fprintf(f, "%s\n", s) < 0 ? XC_EIO : XC_OK;
    free(s);
    return rc;
}
