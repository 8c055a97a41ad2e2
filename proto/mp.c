/* MessagePack plumbing for the codec: byte buffer, writer, reader, JSON.
 * Parsing is done by msgpack-c after a bounds pre-scan of our own (see
 * mp_prescan), so hostile counts never turn into large allocations. */
#include "xc_proto.h"

#include <math.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MP_MAX_DEPTH 32 /* nesting accepted by the reader (msgpack-c's stack is 32) */

/* ------------------------------------------------------------ byte buffer -- */
void xc_buf_init(xc_buf_t *b) { memset(b, 0, sizeof *b); }

void xc_buf_reset(xc_buf_t *b)
{
    b->len = 0;
    b->err = 0;
}

void xc_buf_free(xc_buf_t *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

int xc_buf_append(xc_buf_t *b, const void *p, size_t n)
{
    if (b->err) return b->err;
    if (n > SIZE_MAX - b->len) return b->err = XC_ENOMEM;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) {
            if (cap > SIZE_MAX / 2) { cap = b->len + n; break; }
            cap *= 2;
        }
        uint8_t *nd = realloc(b->data, cap); /* owned by b */
        if (!nd) return b->err = XC_ENOMEM;
        b->data = nd;
        b->cap = cap;
    }
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    return XC_OK;
}

uint8_t *xc_buf_take(xc_buf_t *b, size_t *len)
{
    uint8_t *p = NULL;
    *len = 0;
    if (!b->err && b->len) {
        p = b->data;
        *len = b->len;
        b->data = NULL;
    }
    xc_buf_free(b);
    return p;
}

/* ------------------------------------------------------ MessagePack reader -- */
struct xc_mp_doc {
    msgpack_unpacked up; /* owns the zone with every object */
};

static uint64_t rd_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

/* Walks the encoding without building anything: checks that every length
 * fits in the buffer, that every container count is at most the bytes left
 * (each element takes at least one), the nesting depth, and that exactly one
 * value fills the buffer. */
static int mp_prescan(const uint8_t *p, size_t len, char *why, size_t why_len)
{
    uint64_t rem[MP_MAX_DEPTH + 1];
    int top = 0;
    size_t off = 0;

    rem[0] = 1;
    while (top >= 0) {
        if (rem[top] == 0) { top--; continue; }
        rem[top]--;
        if (off >= len) goto truncated;
        uint8_t b = p[off++];
        uint64_t skip = 0, count = 0;
        int fixed = 0; /* bytes of the length/value field after the tag */
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            continue;
        } else if ((b & 0xf0) == 0x80) {
            count = 2u * (b & 0x0f);
        } else if ((b & 0xf0) == 0x90) {
            count = b & 0x0f;
        } else if ((b & 0xe0) == 0xa0) {
            skip = b & 0x1f;
        } else {
            switch (b) {
            case 0xc4: case 0xd9: fixed = 1; break;               /* bin8/str8 */
            case 0xc5: case 0xda: fixed = 2; break;               /* bin16/str16 */
            case 0xc6: case 0xdb: fixed = 4; break;               /* bin32/str32 */
            case 0xc7: fixed = 1; skip = 1; break;                /* ext8 (+type) */
            case 0xc8: fixed = 2; skip = 1; break;
            case 0xc9: fixed = 4; skip = 1; break;
            case 0xca: skip = 4; break;
            case 0xcb: skip = 8; break;
            case 0xcc: case 0xd0: skip = 1; break;
            case 0xcd: case 0xd1: skip = 2; break;
            case 0xce: case 0xd2: skip = 4; break;
            case 0xcf: case 0xd3: skip = 8; break;
            case 0xd4: skip = 2; break;                           /* fixext1 */
            case 0xd5: skip = 3; break;
            case 0xd6: skip = 5; break;
            case 0xd7: skip = 9; break;
            case 0xd8: skip = 17; break;
            case 0xdc: case 0xde: fixed = 2; break;               /* array16/map16 */
            case 0xdd: case 0xdf: fixed = 4; break;               /* array32/map32 */
            default:
                xc_why(why, why_len, "invalid MessagePack byte 0x%02x at offset %zu", b, off - 1);
                return XC_EPROTO;
            }
            if (fixed) {
                if (len - off < (size_t)fixed) goto truncated;
                uint64_t n = rd_be(p + off, fixed);
                off += (size_t)fixed;
                if (b == 0xdc || b == 0xdd) count = n;
                else if (b == 0xde || b == 0xdf) count = 2 * n;
                else skip += n;
            }
        }
        if (skip) {
            if (len - off < skip) goto truncated;
            off += (size_t)skip;
        }
        if (count) {
            if (count > len - off) goto truncated;
            if (top == MP_MAX_DEPTH) {
                xc_why(why, why_len, "MessagePack nested deeper than %d levels", MP_MAX_DEPTH);
                return XC_EPROTO;
            }
            rem[++top] = count;
        }
    }
    if (off != len) {
        xc_why(why, why_len, "%zu trailing bytes after the MessagePack value", len - off);
        return XC_EPROTO;
    }
    return XC_OK;
truncated:
    xc_why(why, why_len, "truncated MessagePack (%zu bytes)", len);
    return XC_EPROTO;
}

int xc_mp_doc_parse(const void *buf, size_t len, xc_mp_doc_t **out, char *why, size_t why_len)
{
    int rc;
    *out = NULL;
    if (!buf || len == 0) {
        xc_why(why, why_len, "empty frame where a MessagePack value was expected");
        return XC_EPROTO;
    }
    rc = mp_prescan(buf, len, why, why_len);
    if (rc) return rc;
    xc_mp_doc_t *doc = malloc(sizeof *doc); /* owned by the caller via *out */
    if (!doc) {
        xc_why(why, why_len, "out of memory parsing a %zu-byte frame", len);
        return XC_ENOMEM;
    }
    msgpack_unpacked_init(&doc->up);
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack_next(&doc->up, buf, len, &off);
    if (ur != MSGPACK_UNPACK_SUCCESS || off != len) {
        rc = ur == MSGPACK_UNPACK_NOMEM_ERROR ? XC_ENOMEM : XC_EPROTO;
        xc_why(why, why_len, "MessagePack parse error (%d) in a %zu-byte frame", (int)ur, len);
        goto out_free_doc;
    }
    *out = doc;
    return XC_OK;
out_free_doc:
    msgpack_unpacked_destroy(&doc->up);
    free(doc);
    return rc;
}

void xc_mp_doc_free(xc_mp_doc_t **doc)
{
    if (!doc || !*doc) return;
    msgpack_unpacked_destroy(&(*doc)->up);
    free(*doc);
    *doc = NULL;
}

static const msgpack_object *O(xc_mp_node_t n) { return (const msgpack_object *)n.o; }
static xc_mp_node_t N(const msgpack_object *o) { return (xc_mp_node_t){o}; }

xc_mp_node_t xc_mp_root(const xc_mp_doc_t *doc) { return N(doc ? &doc->up.data : NULL); }

xc_mp_type_t xc_mp_type(xc_mp_node_t n)
{
    const msgpack_object *o = O(n);
    if (!o) return XC_MP_NONE;
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: return XC_MP_NIL;
    case MSGPACK_OBJECT_BOOLEAN: return XC_MP_BOOL;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return XC_MP_INT;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return XC_MP_FLOAT;
    case MSGPACK_OBJECT_STR: return XC_MP_STR;
    case MSGPACK_OBJECT_BIN: return XC_MP_BIN;
    case MSGPACK_OBJECT_ARRAY: return XC_MP_ARRAY;
    case MSGPACK_OBJECT_MAP: return XC_MP_MAP;
    case MSGPACK_OBJECT_EXT: return XC_MP_EXT;
    }
    return XC_MP_NONE;
}

size_t xc_mp_len(xc_mp_node_t n)
{
    const msgpack_object *o = O(n);
    if (!o) return 0;
    switch (o->type) {
    case MSGPACK_OBJECT_ARRAY: return o->via.array.size;
    case MSGPACK_OBJECT_MAP: return o->via.map.size;
    case MSGPACK_OBJECT_STR: return o->via.str.size;
    case MSGPACK_OBJECT_BIN: return o->via.bin.size;
    default: return 0;
    }
}

xc_mp_node_t xc_mp_get(xc_mp_node_t map, const char *key)
{
    const msgpack_object *o = O(map);
    if (!o || o->type != MSGPACK_OBJECT_MAP || !key) return N(NULL);
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == kl &&
            memcmp(k->via.str.ptr, key, kl) == 0)
            return N(&o->via.map.ptr[i].val);
    }
    return N(NULL);
}

xc_mp_node_t xc_mp_at(xc_mp_node_t array, size_t i)
{
    const msgpack_object *o = O(array);
    if (!o || o->type != MSGPACK_OBJECT_ARRAY || i >= o->via.array.size) return N(NULL);
    return N(&o->via.array.ptr[i]);
}

xc_mp_node_t xc_mp_map_key(xc_mp_node_t map, size_t i)
{
    const msgpack_object *o = O(map);
    if (!o || o->type != MSGPACK_OBJECT_MAP || i >= o->via.map.size) return N(NULL);
    return N(&o->via.map.ptr[i].key);
}

xc_mp_node_t xc_mp_map_val(xc_mp_node_t map, size_t i)
{
    const msgpack_object *o = O(map);
    if (!o || o->type != MSGPACK_OBJECT_MAP || i >= o->via.map.size) return N(NULL);
    return N(&o->via.map.ptr[i].val);
}

int xc_mp_as_bool(xc_mp_node_t n, int *out)
{
    const msgpack_object *o = O(n);
    if (!o) return XC_ENOTFOUND;
    if (o->type != MSGPACK_OBJECT_BOOLEAN) return XC_EINVAL;
    *out = o->via.boolean ? 1 : 0;
    return XC_OK;
}

int xc_mp_as_i64(xc_mp_node_t n, int64_t *out)
{
    const msgpack_object *o = O(n);
    if (!o) return XC_ENOTFOUND;
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = o->via.i64;
        return XC_OK;
    }
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= (uint64_t)INT64_MAX) {
        *out = (int64_t)o->via.u64;
        return XC_OK;
    }
    return XC_EINVAL;
}

int xc_mp_as_u64(xc_mp_node_t n, uint64_t *out)
{
    const msgpack_object *o = O(n);
    if (!o) return XC_ENOTFOUND;
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) return XC_EINVAL;
    *out = o->via.u64;
    return XC_OK;
}

int xc_mp_as_f64(xc_mp_node_t n, double *out)
{
    const msgpack_object *o = O(n);
    if (!o) return XC_ENOTFOUND;
    switch (o->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: *out = o->via.f64; return XC_OK;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: *out = (double)o->via.u64; return XC_OK;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: *out = (double)o->via.i64; return XC_OK;
    default: return XC_EINVAL;
    }
}

int xc_mp_as_str(xc_mp_node_t n, const char **s, size_t *len)
{
    const msgpack_object *o = O(n);
    if (!o) return XC_ENOTFOUND;
    if (o->type != MSGPACK_OBJECT_STR) return XC_EINVAL;
    *s = o->via.str.ptr;
    *len = o->via.str.size;
    return XC_OK;
}

int xc_mp_as_bin(xc_mp_node_t n, const void **p, size_t *len)
{
    const msgpack_object *o = O(n);
    if (!o) return XC_ENOTFOUND;
    if (o->type != MSGPACK_OBJECT_BIN) return XC_EINVAL;
    *p = o->via.bin.ptr;
    *len = o->via.bin.size;
    return XC_OK;
}

int xc_mp_copy_str(xc_mp_node_t n, char *dst, size_t dst_len)
{
    const char *s;
    size_t len;
    int rc = xc_mp_as_str(n, &s, &len);
    if (rc) return rc;
    if (!dst || len >= dst_len) return XC_ETOOBIG;
    memcpy(dst, s, len);
    dst[len] = 0;
    return XC_OK;
}

int xc_mp_str_eq(xc_mp_node_t n, const char *s)
{
    const char *p;
    size_t len;
    if (xc_mp_as_str(n, &p, &len)) return 0;
    return strlen(s) == len && memcmp(p, s, len) == 0;
}

/* ------------------------------------------------------------------ JSON -- */
/* The one JSON renderer of parsed MessagePack (daemon, CLI, libxcoder). Every
 * byte of input is rendered once: map keys that are not strings are rendered
 * without rendering anything twice (scalars as their text, bin/ext as their
 * encoded string, containers as a "<map>" / "<array>" marker), so the output
 * is linear in the input (at most about (6 + 2 * indent * depth) bytes per
 * input byte). Nesting is capped at XC_JSON_MAX_DEPTH and the output at
 * max_bytes, each with an error that says so. */
typedef struct {
    xc_buf_t *out;
    size_t start, limit;   /* out->len at entry; most bytes this call may add */
    int indent;
    unsigned flags;
    int err;               /* sticky: XC_ETOOBIG, XC_EPROTO, XC_ENOMEM */
} json_ctx_t;

static void jput(json_ctx_t *c, const void *p, size_t n)
{
    if (c->err) return;
    if (c->out->len - c->start + n > c->limit) {
        c->err = XC_ETOOBIG;
        return;
    }
    if (xc_buf_append(c->out, p, n)) c->err = XC_ENOMEM;
}

/* Length of a valid UTF-8 sequence at s (at most n bytes), 0 when invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0], min;
    size_t len;
    if (c < 0x80) return 1;
    if ((c & 0xE0) == 0xC0) len = 2, min = 0x80, c &= 0x1F;
    else if ((c & 0xF0) == 0xE0) len = 3, min = 0x800, c &= 0x0F;
    else if ((c & 0xF8) == 0xF0) len = 4, min = 0x10000, c &= 0x07;
    else return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
    return len;
}

/* A JSON string: the usual escapes, other control bytes and DEL as \u00XX,
 * invalid UTF-8 as U+FFFD, so the output is always valid JSON. Runs of plain
 * bytes are appended at once. */
static void json_str(json_ctx_t *c, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, run = 0;
    jput(c, "\"", 1);
    while (i < n && !c->err) {
        unsigned char ch = p[i];
        const char *esc = NULL;
        char u[6];
        size_t el = 2, l = 1;
        switch (ch) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        default:
            if (ch < 0x20 || ch == 0x7f) {
                u[0] = '\\', u[1] = 'u', u[2] = '0', u[3] = '0', u[4] = hex[ch >> 4], u[5] = hex[ch & 15];
                esc = u, el = 6;
            } else if (ch >= 0x80 && (l = utf8_seq(p + i, n - i)) == 0) {
                esc = "\xef\xbf\xbd", el = 3, l = 1; /* U+FFFD */
            }
        }
        if (!esc) { /* part of a plain run */
            run += l;
            i += l;
            continue;
        }
        if (run) jput(c, p + i - run, run);
        run = 0;
        jput(c, esc, el);
        i += l;
    }
    if (run) jput(c, p + i - run, run); /* an empty string may have p == NULL */
    jput(c, "\"", 1);
}

static void json_indent(json_ctx_t *c, int level)
{
    static const char sp[] = "                                ";
    if (c->indent <= 0) return;
    jput(c, "\n", 1);
    for (size_t todo = (size_t)level * (size_t)c->indent; todo && !c->err;) {
        size_t n = todo < sizeof sp - 1 ? todo : sizeof sp - 1;
        jput(c, sp, n);
        todo -= n;
    }
}

/* A double as text into tmp (>= 40 bytes); "null" when not finite (JSON has
 * no NaN/Inf). Default: %.15g, or %.17g when that does not read back.
 * XC_JSON_SHORTEST: the shortest %g that reads back (as the same float when x
 * is exactly a float32, as most statistics are), with ".0" on integral values
 * so typed readers see a float. */
static size_t json_double_text(char *tmp, double v, unsigned flags)
{
    if (!isfinite(v)) return (size_t)snprintf(tmp, 40, "null");
    if (!(flags & XC_JSON_SHORTEST)) {
        snprintf(tmp, 40, "%.15g", v);
        if (strtod(tmp, NULL) != v) snprintf(tmp, 40, "%.17g", v);
        return strlen(tmp);
    }
    int n = 0, is_f32 = (double)(float)v == v;
    for (int p = 1; p <= 17; p++) {
        n = snprintf(tmp, 40, "%.*g", p, v);
        double back = strtod(tmp, NULL);
        if (is_f32 ? (float)back == (float)v : back == v) break;
    }
    if (!strpbrk(tmp, ".eE")) {
        tmp[n++] = '.';
        tmp[n++] = '0';
        tmp[n] = 0;
    }
    return (size_t)n;
}

/* bin / ext bytes as a JSON string: lowercase hex, or base64 (XC_JSON_BASE64). */
static void json_bytes(json_ctx_t *c, const unsigned char *p, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    jput(c, "\"", 1);
    if (c->flags & XC_JSON_BASE64) {
        for (size_t i = 0; i < n && !c->err; i += 3) {
            unsigned v = (unsigned)p[i] << 16;
            if (i + 1 < n) v |= (unsigned)p[i + 1] << 8;
            if (i + 2 < n) v |= p[i + 2];
            char q[4] = {b64[(v >> 18) & 63], b64[(v >> 12) & 63], i + 1 < n ? b64[(v >> 6) & 63] : '=',
                         i + 2 < n ? b64[v & 63] : '='};
            jput(c, q, 4);
        }
    } else {
        for (size_t i = 0; i < n && !c->err; i++) {
            char e[2] = {hex[p[i] >> 4], hex[p[i] & 15]};
            jput(c, e, 2);
        }
    }
    jput(c, "\"", 1);
}

/* A scalar's text (no quotes) into tmp (>= 48 bytes): nil, bool, int, float. */
static size_t json_scalar_text(char *tmp, const msgpack_object *o, unsigned flags)
{
    switch (o->type) {
    case MSGPACK_OBJECT_BOOLEAN: return (size_t)snprintf(tmp, 48, "%s", o->via.boolean ? "true" : "false");
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return (size_t)snprintf(tmp, 48, "%llu", (unsigned long long)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return (size_t)snprintf(tmp, 48, "%lld", (long long)o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return json_double_text(tmp, o->via.f64, flags);
    default: return (size_t)snprintf(tmp, 48, "null");
    }
}

static void json_node(json_ctx_t *c, const msgpack_object *o, int level);

/* A map key: JSON keys are strings. A str key as itself; a scalar as its text
 * in quotes ("5", "true"); bin / ext as its encoded string; a container as a
 * "<map>" / "<array>" marker. Nothing is rendered twice, so nested keys cost
 * what they weigh. */
static void json_key(json_ctx_t *c, const msgpack_object *k)
{
    char tmp[48];
    switch (k->type) {
    case MSGPACK_OBJECT_STR: json_str(c, k->via.str.ptr, k->via.str.size); break;
    case MSGPACK_OBJECT_BIN: json_bytes(c, (const unsigned char *)k->via.bin.ptr, k->via.bin.size); break;
    case MSGPACK_OBJECT_EXT: json_bytes(c, (const unsigned char *)k->via.ext.ptr, k->via.ext.size); break;
    case MSGPACK_OBJECT_MAP: jput(c, "\"<map>\"", 7); break;
    case MSGPACK_OBJECT_ARRAY: jput(c, "\"<array>\"", 9); break;
    default: {
        size_t n = json_scalar_text(tmp, k, c->flags);
        jput(c, "\"", 1);
        jput(c, tmp, n);
        jput(c, "\"", 1);
    }
    }
}

/* One value, recursively (depth bounded by XC_JSON_MAX_DEPTH). */
static void json_node(json_ctx_t *c, const msgpack_object *o, int level)
{
    char tmp[48];
    if (c->err) return;
    if (level > XC_JSON_MAX_DEPTH) {
        c->err = XC_EPROTO;
        return;
    }
    switch (o->type) {
    case MSGPACK_OBJECT_STR: json_str(c, o->via.str.ptr, o->via.str.size); break;
    case MSGPACK_OBJECT_BIN: json_bytes(c, (const unsigned char *)o->via.bin.ptr, o->via.bin.size); break;
    case MSGPACK_OBJECT_EXT: json_bytes(c, (const unsigned char *)o->via.ext.ptr, o->via.ext.size); break;
    case MSGPACK_OBJECT_ARRAY:
        jput(c, "[", 1);
        for (uint32_t i = 0; i < o->via.array.size && !c->err; i++) {
            if (i) jput(c, ",", 1);
            json_indent(c, level + 1);
            json_node(c, &o->via.array.ptr[i], level + 1);
        }
        if (o->via.array.size) json_indent(c, level);
        jput(c, "]", 1);
        break;
    case MSGPACK_OBJECT_MAP:
        jput(c, "{", 1);
        for (uint32_t i = 0; i < o->via.map.size && !c->err; i++) {
            if (i) jput(c, ",", 1);
            json_indent(c, level + 1);
            json_key(c, &o->via.map.ptr[i].key);
            jput(c, c->indent > 0 ? ": " : ":", c->indent > 0 ? 2 : 1);
            json_node(c, &o->via.map.ptr[i].val, level + 1);
        }
        if (o->via.map.size) json_indent(c, level);
        jput(c, "}", 1);
        break;
    default: jput(c, tmp, json_scalar_text(tmp, o, c->flags)); break;
    }
}

int xc_mp_json(xc_mp_node_t n, xc_buf_t *out, const xc_json_opts_t *opts, char *why, size_t why_len)
{
    static const xc_json_opts_t dflt = {0, 0, 0};
    const xc_json_opts_t *o = opts ? opts : &dflt;
    if (!O(n)) {
        xc_why(why, why_len, "no value to render");
        return XC_ENOTFOUND;
    }
    if (out->err) return out->err;
    json_ctx_t c = {out, out->len, o->max_bytes ? o->max_bytes : XC_JSON_MAX_BYTES, o->indent, o->flags, 0};
    json_node(&c, O(n), 0);
    if (c.err) {
        out->len = c.start; /* no partial JSON */
        if (out->err == XC_ENOMEM) out->err = 0;
        if (c.err == XC_ETOOBIG)
            xc_why(why, why_len, "the value renders to more than %zu bytes of JSON", c.limit);
        else if (c.err == XC_EPROTO)
            xc_why(why, why_len, "the value nests deeper than %d levels", XC_JSON_MAX_DEPTH);
        else
            xc_why(why, why_len, "out of memory rendering JSON");
    }
    return c.err;
}

int xc_mp_to_json(xc_mp_node_t n, xc_buf_t *out, int pretty)
{
    xc_json_opts_t o = {pretty > 0 ? pretty : 0, 0, 0};
    return xc_mp_json(n, out, &o, NULL, 0);
}

/* ------------------------------------------------------ MessagePack writer -- */
static int mpw_sink(void *data, const char *buf, size_t len)
{
    return xc_buf_append((xc_buf_t *)data, buf, len) ? -1 : 0;
}

void xc_mpw_init(xc_mpw_t *w, xc_buf_t *buf)
{
    memset(w, 0, sizeof *w);
    w->buf = buf;
    if (!buf) w->err = XC_EINVAL;
}

/* Counts one element in the open container; 0 when writing may go on. */
static int mpw_item(xc_mpw_t *w)
{
    if (w->err) return w->err;
    if (w->buf->err) return w->err = w->buf->err;
    if (w->depth > 0) w->count[w->depth - 1]++;
    return 0;
}

static void mpw_check(xc_mpw_t *w)
{
    if (!w->err && w->buf->err) w->err = w->buf->err;
}

static void mpw_open(xc_mpw_t *w, int is_map)
{
    uint8_t hdr[5] = {is_map ? 0xdf : 0xdd, 0, 0, 0, 0};
    if (mpw_item(w)) return;
    if (w->depth == XC_PROTO_MPW_DEPTH) {
        w->err = XC_EINVAL;
        return;
    }
    w->open_at[w->depth] = w->buf->len;
    w->count[w->depth] = 0;
    w->is_map[w->depth] = is_map;
    w->depth++;
    xc_buf_append(w->buf, hdr, sizeof hdr);
    mpw_check(w);
}

static void mpw_close(xc_mpw_t *w, int is_map)
{
    if (w->err) return;
    if (w->depth == 0 || w->is_map[w->depth - 1] != is_map) {
        w->err = XC_EINVAL;
        return;
    }
    w->depth--;
    uint32_t n = w->count[w->depth];
    if (is_map) {
        if (n % 2) {
            w->err = XC_EINVAL; /* a key without a value */
            return;
        }
        n /= 2;
    }
    uint8_t *p = w->buf->data + w->open_at[w->depth] + 1;
    p[0] = (uint8_t)(n >> 24);
    p[1] = (uint8_t)(n >> 16);
    p[2] = (uint8_t)(n >> 8);
    p[3] = (uint8_t)n;
}

void xc_mpw_map_begin(xc_mpw_t *w) { mpw_open(w, 1); }
void xc_mpw_map_end(xc_mpw_t *w) { mpw_close(w, 1); }
void xc_mpw_array_begin(xc_mpw_t *w) { mpw_open(w, 0); }
void xc_mpw_array_end(xc_mpw_t *w) { mpw_close(w, 0); }

#define MPW_PACK(w, call)                                                       \
    do {                                                                        \
        msgpack_packer pk_;                                                     \
        if (mpw_item(w)) return;                                                \
        msgpack_packer_init(&pk_, (w)->buf, mpw_sink);                          \
        (void)(call);                                                           \
        mpw_check(w);                                                           \
    } while (0)

void xc_mpw_nil(xc_mpw_t *w) { MPW_PACK(w, msgpack_pack_nil(&pk_)); }
void xc_mpw_bool(xc_mpw_t *w, int v)
{
    MPW_PACK(w, v ? msgpack_pack_true(&pk_) : msgpack_pack_false(&pk_));
}
void xc_mpw_int(xc_mpw_t *w, int64_t v) { MPW_PACK(w, msgpack_pack_int64(&pk_, v)); }
void xc_mpw_uint(xc_mpw_t *w, uint64_t v) { MPW_PACK(w, msgpack_pack_uint64(&pk_, v)); }
void xc_mpw_double(xc_mpw_t *w, double v) { MPW_PACK(w, msgpack_pack_double(&pk_, v)); }

void xc_mpw_strn(xc_mpw_t *w, const char *s, size_t n)
{
    if (n > UINT32_MAX) {
        w->err = w->err ? w->err : XC_ETOOBIG;
        return;
    }
    MPW_PACK(w, (msgpack_pack_str(&pk_, n), msgpack_pack_str_body(&pk_, s, n)));
}

void xc_mpw_str(xc_mpw_t *w, const char *s)
{
    if (!s) xc_mpw_nil(w);
    else xc_mpw_strn(w, s, strlen(s));
}

void xc_mpw_bin(xc_mpw_t *w, const void *p, size_t n)
{
    if (n > UINT32_MAX) {
        w->err = w->err ? w->err : XC_ETOOBIG;
        return;
    }
    MPW_PACK(w, (msgpack_pack_bin(&pk_, n), msgpack_pack_bin_body(&pk_, p, n)));
}

void xc_mpw_node(xc_mpw_t *w, xc_mp_node_t n)
{
    if (!O(n)) {
        xc_mpw_nil(w);
        return;
    }
    MPW_PACK(w, msgpack_pack_object(&pk_, *O(n)));
}

void xc_mpw_kv_nil(xc_mpw_t *w, const char *k) { xc_mpw_str(w, k); xc_mpw_nil(w); }
void xc_mpw_kv_bool(xc_mpw_t *w, const char *k, int v) { xc_mpw_str(w, k); xc_mpw_bool(w, v); }
void xc_mpw_kv_int(xc_mpw_t *w, const char *k, int64_t v) { xc_mpw_str(w, k); xc_mpw_int(w, v); }
void xc_mpw_kv_uint(xc_mpw_t *w, const char *k, uint64_t v) { xc_mpw_str(w, k); xc_mpw_uint(w, v); }
void xc_mpw_kv_double(xc_mpw_t *w, const char *k, double v) { xc_mpw_str(w, k); xc_mpw_double(w, v); }
void xc_mpw_kv_str(xc_mpw_t *w, const char *k, const char *v) { xc_mpw_str(w, k); xc_mpw_str(w, v); }

int xc_mpw_finish(xc_mpw_t *w)
{
    mpw_check(w);
    if (w->err) return w->err;
    if (w->depth != 0) return w->err = XC_EINVAL;
    return XC_OK;
}
