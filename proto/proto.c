/* The protocol messages of PROTOCOL.md on top of mp.c: dtypes and payload
 * conversion, the ingest header and its checks, ack/nack, control requests and
 * replies, events. */
#include "xc_proto.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* 1 if s[0..len) is valid UTF-8 without control bytes: a producer id is echoed
 * into logs, alert events and JSON, where anything else would be injected or
 * dropped by a strict decoder. */
static int id_text_ok(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s, *e = p + len;
    while (p < e) {
        unsigned c = *p;
        int n = c < 0x80 ? 1 : (c >= 0xc2 && c < 0xe0) ? 2 : (c >= 0xe0 && c < 0xf0) ? 3 : (c >= 0xf0 && c < 0xf5) ? 4 : 0;
        if (!n || p + n > e || (n == 1 && (c < 0x20 || c == 0x7f))) return 0;
        for (int i = 1; i < n; i++)
            if ((p[i] & 0xc0) != 0x80) return 0;
        if (n == 3 && ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] >= 0xa0))) return 0; /* overlong, surrogate */
        if (n == 4 && ((c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] >= 0x90))) return 0;
        p += n;
    }
    return 1;
}

/* ----------------------------------------------------------------- errors -- */
int xc_proto_errcode(const char *name, size_t len)
{
    if (!name) return XC_EPROTO;
#define XC_ERRNO_FIND(ename, val, msg)                                          \
    if (len == sizeof(#ename) - 1 && memcmp(name, #ename, len) == 0) return val;
    XC_ERRNO_MAP(XC_ERRNO_FIND)
#undef XC_ERRNO_FIND
    return XC_EPROTO;
}

/* ----------------------------------------------------------------- dtypes -- */
static const char *const g_dtype_names[] = {"f32", "f16", "bf16"};

const char *xc_dtype_name(xc_dtype_t t)
{
    return (unsigned)t < 3 ? g_dtype_names[t] : "?";
}

size_t xc_dtype_size(xc_dtype_t t) { return t == XC_DTYPE_F32 ? 4 : 2; }

int xc_dtype_parse(const char *s, size_t len, xc_dtype_t *out)
{
    for (int i = 0; i < 3; i++)
        if (s && strlen(g_dtype_names[i]) == len && memcmp(s, g_dtype_names[i], len) == 0) {
            *out = (xc_dtype_t)i;
            return XC_OK;
        }
    return XC_EDTYPE;
}

static uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float xc_f16_to_f32(uint16_t h)
{
    uint32_t s = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0) {
        if (m == 0) return u2f(s);
        e = 113; /* normalise the subnormal: value = m * 2^-24 */
        while (!(m & 0x400)) {
            m <<= 1;
            e--;
        }
        return u2f(s | (e << 23) | ((m & 0x3ff) << 13));
    }
    if (e == 31) return u2f(s | 0x7f800000 | (m << 13));
    return u2f(s | ((e + 112) << 23) | (m << 13));
}

uint16_t xc_f32_to_f16(float f)
{
    uint32_t x = f2u(f), sign = (x >> 16) & 0x8000, ax = x & 0x7fffffff;
    if (ax >= 0x7f800000) return (uint16_t)(sign | (ax > 0x7f800000 ? 0x7e00 : 0x7c00));
    if (ax >= 0x47800000) return (uint16_t)(sign | 0x7c00); /* >= 65536: Inf */
    uint32_t e = ax >> 23;
    if (e < 113) { /* below 2^-14: subnormal half (or zero) */
        uint32_t shift = 126 - e, m = (ax & 0x7fffff) | 0x800000;
        if (shift > 24) return (uint16_t)sign;
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((e - 112) << 10) | ((ax & 0x7fffff) >> 13), rem = ax & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++; /* may carry into Inf: correct */
    return (uint16_t)(sign | r);
}

float xc_bf16_to_f32(uint16_t h) { return u2f((uint32_t)h << 16); }

uint16_t xc_f32_to_bf16(float f)
{
    uint32_t x = f2u(f);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x40);
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

static uint16_t rd_le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static uint32_t rd_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

/* ----------------------------------------------------------------- ingest -- */
int xc_proto_batch_hdr_encode(xc_buf_t *out, const xc_batch_hdr_t *h)
{
    xc_mpw_t w;
    if (!h || h->n == 0 || h->d == 0 || (unsigned)h->dtype > XC_DTYPE_BF16 ||
        strnlen(h->producer, sizeof h->producer) > XC_PROTO_PRODUCER_MAX)
        return XC_EINVAL;
    xc_mpw_init(&w, out);
    xc_mpw_map_begin(&w);
    xc_mpw_kv_uint(&w, "v", XC_PROTO_VERSION);
    xc_mpw_kv_str(&w, "type", "batch");
    xc_mpw_kv_str(&w, "producer", h->producer);
    xc_mpw_kv_uint(&w, "seq", h->seq);
    xc_mpw_kv_uint(&w, "n", h->n);
    xc_mpw_kv_uint(&w, "d", h->d);
    xc_mpw_kv_str(&w, "dtype", xc_dtype_name(h->dtype));
    xc_mpw_kv_str(&w, "layout", "n2d");
    xc_mpw_kv_bool(&w, "has_tokens", h->has_tokens);
    xc_mpw_kv_bool(&w, "has_pos", h->has_pos);
    if (h->stream[0]) xc_mpw_kv_str(&w, "stream", h->stream); /* absent = "" (older producers) */
    xc_mpw_map_end(&w);
    return xc_mpw_finish(&w);
}

/* Reads an optional bool key; XC_EPROTO when present with another type. */
static int opt_bool(xc_mp_node_t map, const char *key, int *out, char *why, size_t why_len)
{
    xc_mp_node_t n = xc_mp_get(map, key);
    *out = 0;
    if (xc_mp_type(n) == XC_MP_NONE) return XC_OK;
    if (xc_mp_as_bool(n, out)) {
        xc_why(why, why_len, "header field '%s' must be a bool", key);
        return XC_EPROTO;
    }
    return XC_OK;
}

/* Reads a required unsigned key. */
static int req_uint(xc_mp_node_t map, const char *key, uint64_t *out, char *why, size_t why_len)
{
    int rc = xc_mp_as_u64(xc_mp_get(map, key), out);
    if (rc == XC_ENOTFOUND) {
        xc_why(why, why_len, "header field '%s' is missing", key);
        return XC_EPROTO;
    }
    if (rc) {
        xc_why(why, why_len, "header field '%s' must be an unsigned integer", key);
        return XC_EPROTO;
    }
    return XC_OK;
}

/* 1 when s[0, n) is a valid stream tag: 1..XC_PROTO_STREAM_MAX bytes of
 * [A-Za-z0-9._:/-] (printable in logs and file names, no escaping anywhere). */
static int stream_ok(const char *s, size_t n)
{
    if (n == 0 || n > XC_PROTO_STREAM_MAX) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("._:/-", c)))
            return 0;
    }
    return 1;
}

/* The optional producer and stream keys shared by batch and vocab headers. */
static int names_fields(xc_mp_node_t root, xc_batch_hdr_t *h, char *why, size_t why_len)
{
    const char *s;
    size_t sl;
    xc_mp_node_t p = xc_mp_get(root, "producer");
    if (xc_mp_type(p) != XC_MP_NONE && xc_mp_type(p) != XC_MP_NIL) {
        if (xc_mp_as_str(p, &s, &sl) || sl > XC_PROTO_PRODUCER_MAX) {
            xc_why(why, why_len, "header field 'producer' must be a string of at most %d bytes",
                    XC_PROTO_PRODUCER_MAX);
            return XC_EPROTO;
        }
        if (!id_text_ok(s, sl)) {
            xc_why(why, why_len, "header field 'producer' must be printable UTF-8 text (no control bytes)");
            return XC_EPROTO;
        }
        memcpy(h->producer, s, sl);
        h->producer[sl] = 0;
    }
    xc_mp_node_t st = xc_mp_get(root, "stream");
    if (xc_mp_type(st) != XC_MP_NONE && xc_mp_type(st) != XC_MP_NIL) {
        if (xc_mp_as_str(st, &s, &sl) || (sl > 0 && !stream_ok(s, sl))) {
            xc_why(why, why_len, "header field 'stream' must be a tag of at most %d bytes of "
                    "[A-Za-z0-9._:/-] (e.g. \"web\", \"chat\")", XC_PROTO_STREAM_MAX);
            return XC_EPROTO;
        }
        memcpy(h->stream, s, sl);
        h->stream[sl] = 0;
    }
    return XC_OK;
}

static int hdr_fields(xc_mp_node_t root, xc_batch_hdr_t *h, char *why, size_t why_len)
{
    uint64_t v, n, d;
    const char *s;
    size_t sl;
    int rc;

    if ((rc = req_uint(root, "v", &v, why, why_len))) return rc;
    if (v != XC_PROTO_VERSION) {
        xc_why(why, why_len, "protocol version %llu is not supported (this side speaks %d)",
                (unsigned long long)v, XC_PROTO_VERSION);
        return XC_EVERSION;
    }
    h->v = (uint32_t)v;
    xc_mp_node_t t = xc_mp_get(root, "type");
    if (!xc_mp_str_eq(t, "batch")) {
        xc_why(why, why_len, "header field 'type' must be \"batch\"");
        return XC_EPROTO;
    }
    if ((rc = req_uint(root, "seq", &h->seq, why, why_len))) return rc;
    if ((rc = req_uint(root, "n", &n, why, why_len))) return rc;
    if (n == 0) {
        xc_why(why, why_len, "header field 'n' must be at least 1");
        return XC_EPROTO;
    }
    h->n = n;
    if ((rc = req_uint(root, "d", &d, why, why_len))) return rc;
    if (d == 0 || d > UINT32_MAX) {
        xc_why(why, why_len, "header field 'd' = %llu is out of range", (unsigned long long)d);
        return XC_EPROTO;
    }
    h->d = (uint32_t)d;
    if ((rc = names_fields(root, h, why, why_len))) return rc;
    xc_mp_node_t l = xc_mp_get(root, "layout");
    if (xc_mp_type(l) != XC_MP_NONE && !xc_mp_str_eq(l, "n2d")) {
        xc_why(why, why_len, "header field 'layout' must be \"n2d\" ([n_tokens, 2, d])");
        return XC_EPROTO;
    }
    if ((rc = opt_bool(root, "has_tokens", &h->has_tokens, why, why_len))) return rc;
    if ((rc = opt_bool(root, "has_pos", &h->has_pos, why, why_len))) return rc;
    rc = xc_mp_as_str(xc_mp_get(root, "dtype"), &s, &sl);
    if (rc == XC_ENOTFOUND) {
        xc_why(why, why_len, "header field 'dtype' is missing");
        return XC_EPROTO;
    }
    if (rc) {
        xc_why(why, why_len, "header field 'dtype' must be a string (f32, f16 or bf16)");
        return XC_EPROTO;
    }
    if (xc_dtype_parse(s, sl, &h->dtype)) {
        xc_why(why, why_len, "dtype \"%.*s\" is not supported; send f32, f16 or bf16",
                (int)(sl > 32 ? 32 : sl), s);
        return XC_EDTYPE;
    }
    return XC_OK;
}

int xc_proto_batch_hdr_decode(const void *buf, size_t len, xc_batch_hdr_t *h, char *why,
                              size_t why_len)
{
    xc_mp_doc_t *doc = NULL;
    int rc;

    memset(h, 0, sizeof *h);
    if (len > XC_PROTO_HEADER_MAX) {
        xc_why(why, why_len, "header frame is %zu bytes; the limit is %d", len,
                XC_PROTO_HEADER_MAX);
        return XC_ETOOBIG;
    }
    char pwhy[160];
    rc = xc_mp_doc_parse(buf, len, &doc, pwhy, sizeof pwhy);
    if (rc) {
        xc_why(why, why_len, "header is not valid MessagePack: %s", pwhy);
        return rc == XC_ENOMEM ? rc : XC_EPROTO;
    }
    xc_mp_node_t root = xc_mp_root(doc);
    if (xc_mp_type(root) != XC_MP_MAP) {
        xc_why(why, why_len, "header must be a MessagePack map");
        rc = XC_EPROTO;
        goto out_free_doc;
    }
    h->has_seq = xc_mp_as_u64(xc_mp_get(root, "seq"), &h->seq) == XC_OK;
    rc = hdr_fields(root, h, why, why_len);
out_free_doc:
    xc_mp_doc_free(&doc);
    return rc;
}

/* ------------------------------------------------------- vocabularies -- */
int xc_proto_ingest_is_vocab(const void *buf, size_t len)
{
    xc_mp_doc_t *doc = NULL;
    char why[8];
    if (len > XC_PROTO_HEADER_MAX || xc_mp_doc_parse(buf, len, &doc, why, sizeof why)) return 0;
    int is = xc_mp_str_eq(xc_mp_get(xc_mp_root(doc), "type"), "vocab");
    xc_mp_doc_free(&doc);
    return is;
}

int xc_proto_vocab_hdr_encode(xc_buf_t *out, const xc_batch_hdr_t *h)
{
    xc_mpw_t w;
    size_t sl = h ? strnlen(h->stream, sizeof h->stream) : 0;
    if (!h || strnlen(h->producer, sizeof h->producer) > XC_PROTO_PRODUCER_MAX || (sl && !stream_ok(h->stream, sl)))
        return XC_EINVAL;
    xc_mpw_init(&w, out);
    xc_mpw_map_begin(&w);
    xc_mpw_kv_uint(&w, "v", XC_PROTO_VERSION);
    xc_mpw_kv_str(&w, "type", "vocab");
    xc_mpw_kv_str(&w, "producer", h->producer);
    xc_mpw_kv_uint(&w, "seq", h->seq);
    xc_mpw_kv_str(&w, "stream", h->stream);
    xc_mpw_kv_uint(&w, "first", h->first);
    xc_mpw_kv_uint(&w, "n", h->n);
    xc_mpw_map_end(&w);
    return xc_mpw_finish(&w);
}

/* The header of a vocab message: v first, then type, seq, first, n, names. */
static int vocab_hdr_decode(const void *buf, size_t len, xc_batch_hdr_t *h, char *why, size_t why_len)
{
    xc_mp_doc_t *doc = NULL;
    uint64_t v, first, n;
    char pwhy[160];
    int rc;
    if (len > XC_PROTO_HEADER_MAX) {
        xc_why(why, why_len, "header frame is %zu bytes; the limit is %d", len, XC_PROTO_HEADER_MAX);
        return XC_ETOOBIG;
    }
    if ((rc = xc_mp_doc_parse(buf, len, &doc, pwhy, sizeof pwhy))) {
        xc_why(why, why_len, "header is not valid MessagePack: %s", pwhy);
        return rc == XC_ENOMEM ? rc : XC_EPROTO;
    }
    xc_mp_node_t root = xc_mp_root(doc);
    h->has_seq = xc_mp_as_u64(xc_mp_get(root, "seq"), &h->seq) == XC_OK;
    if ((rc = req_uint(root, "v", &v, why, why_len))) goto out;
    if (v != XC_PROTO_VERSION) {
        xc_why(why, why_len, "protocol version %llu is not supported (this side speaks %d)", (unsigned long long)v,
                XC_PROTO_VERSION);
        rc = XC_EVERSION;
        goto out;
    }
    h->v = (uint32_t)v;
    if ((rc = req_uint(root, "seq", &h->seq, why, why_len)) || (rc = req_uint(root, "n", &n, why, why_len)))
        goto out;
    first = 0;
    if (xc_mp_type(xc_mp_get(root, "first")) != XC_MP_NONE && (rc = req_uint(root, "first", &first, why, why_len)))
        goto out;
    if (n == 0 || n > UINT32_MAX || first > UINT32_MAX - n) {
        xc_why(why, why_len, "vocab header: n = %llu pieces from id %llu is out of range (1 <= n, first + n < 2^32)",
                (unsigned long long)n, (unsigned long long)first);
        rc = XC_EPROTO;
        goto out;
    }
    h->n = n;
    h->first = (uint32_t)first;
    rc = names_fields(root, h, why, why_len);
out:
    xc_mp_doc_free(&doc);
    return rc;
}

int xc_proto_vocab_check(const xc_frame_t *frames, size_t nframes, size_t max_msg_bytes, xc_batch_hdr_t *h,
                         char *why, size_t why_len)
{
    size_t total = 0;
    int rc;
    memset(h, 0, sizeof *h);
    if (nframes == 0 || frames[0].len == 0) {
        xc_why(why, why_len, "no header frame: send [header][lengths][bytes]");
        return XC_EPROTO;
    }
    for (size_t i = 0; i < nframes; i++) total += frames[i].len;
    if (total > max_msg_bytes) {
        char tmp[8];
        vocab_hdr_decode(frames[0].data, frames[0].len, h, tmp, sizeof tmp);
        xc_why(why, why_len, "message is %zu bytes; this daemon accepts at most %zu (max_msg_bytes): send the "
                "vocabulary in chunks (first = the id of a chunk's first piece)", total, max_msg_bytes);
        return XC_ETOOBIG;
    }
    if ((rc = vocab_hdr_decode(frames[0].data, frames[0].len, h, why, why_len))) return rc;
    if (nframes != 3) {
        xc_why(why, why_len, "a vocab message has 3 frames (header, lengths, bytes) but got %zu", nframes);
        return XC_EPROTO;
    }
    if (frames[1].len != 4 * (size_t)h->n) {
        xc_why(why, why_len, "lengths frame is %zu bytes but n = %llu pieces need %llu", frames[1].len,
                (unsigned long long)h->n, 4ull * h->n);
        return XC_ELENGTH;
    }
    size_t sum = 0;
    for (uint64_t i = 0; i < h->n; i++) sum += rd_le32((const uint8_t *)frames[1].data + 4 * i);
    if (sum != frames[2].len) {
        xc_why(why, why_len, "the piece lengths add up to %zu bytes but the bytes frame has %zu", sum, frames[2].len);
        return XC_ELENGTH;
    }
    return XC_OK;
}

size_t xc_proto_payload_bytes(const xc_batch_hdr_t *h)
{
    uint64_t per = 2ull * h->d * xc_dtype_size(h->dtype);
    if (h->n == 0 || per == 0 || h->n > SIZE_MAX / per) return 0;
    return (size_t)(h->n * per);
}

int xc_proto_batch_check(const xc_frame_t *frames, size_t nframes, const xc_batch_limits_t *lim,
                         xc_batch_hdr_t *h, char *why, size_t why_len)
{
    size_t total = 0, want;
    int rc;

    memset(h, 0, sizeof *h);
    if (nframes == 0 || frames[0].len == 0) {
        xc_why(why, why_len, "no header frame: send [header][payload]");
        return XC_EPROTO;
    }
    for (size_t i = 0; i < nframes; i++) total += frames[i].len;
    if (total > lim->max_msg_bytes) {
        char tmp[8];
        /* best effort: read seq for the nack; the error itself is the size */
        xc_proto_batch_hdr_decode(frames[0].data, frames[0].len, h, tmp, sizeof tmp);
        xc_why(why, why_len, "message is %zu bytes; this daemon accepts at most %zu (max_msg_bytes)",
                total, lim->max_msg_bytes);
        return XC_ETOOBIG;
    }
    rc = xc_proto_batch_hdr_decode(frames[0].data, frames[0].len, h, why, why_len);
    if (rc) return rc;
    if (h->d != lim->d) {
        xc_why(why, why_len, "batch has d = %u but this daemon trains d = %u", h->d, lim->d);
        return XC_ESHAPE;
    }
    size_t want_frames = 2 + (h->has_tokens ? 1 : 0) + (h->has_pos ? 1 : 0);
    if (nframes != want_frames) {
        xc_why(why, why_len,
                "expected %zu frames (header, payload%s%s) but got %zu", want_frames,
                h->has_tokens ? ", tokens" : "", h->has_pos ? ", positions" : "", nframes);
        return XC_EPROTO;
    }
    want = xc_proto_payload_bytes(h);
    if (want == 0 || frames[1].len != want) {
        xc_why(why, why_len,
                "payload is %zu bytes but n = %llu x 2 x d = %u x %zu (%s) needs %zu",
                frames[1].len, (unsigned long long)h->n, h->d, xc_dtype_size(h->dtype),
                xc_dtype_name(h->dtype), want);
        return XC_ELENGTH;
    }
    size_t fi = 2;
    if (h->has_tokens) {
        if (frames[fi].len / 4 != h->n || frames[fi].len % 4) {
            xc_why(why, why_len, "token-id frame is %zu bytes but n = %llu u32 ids need %llu",
                    frames[fi].len, (unsigned long long)h->n, (unsigned long long)h->n * 4);
            return XC_ELENGTH;
        }
        fi++;
    }
    if (h->has_pos) {
        if (frames[fi].len / 8 != h->n || frames[fi].len % 8) {
            xc_why(why, why_len,
                    "position frame is %zu bytes but n = %llu (doc, pos) u32 pairs need %llu",
                    frames[fi].len, (unsigned long long)h->n, (unsigned long long)h->n * 8);
            return XC_ELENGTH;
        }
    }
    return XC_OK;
}

static int nonfinite_at(const xc_batch_hdr_t *h, size_t i, float v, char *why, size_t why_len)
{
    size_t d = h->d;
    xc_why(why, why_len, "token %zu, %s, dim %zu: %s", i / (2 * d),
            (i / d) % 2 ? "chat" : "base", i % d, isnan(v) ? "NaN" : (v > 0 ? "+Inf" : "-Inf"));
    return XC_ENONFINITE;
}

int xc_proto_payload_to_f32(const xc_batch_hdr_t *h, const void *src, float *dst, char *why,
                            size_t why_len)
{
    size_t count = (size_t)h->n * 2 * h->d;
    const uint8_t *p = src;
    uint32_t bad = 0;

    switch (h->dtype) {
    case XC_DTYPE_F32:
        for (size_t i = 0; i < count; i++) {
            uint32_t u = rd_le32(p + 4 * i);
            bad |= (u & 0x7f800000) == 0x7f800000;
            dst[i] = u2f(u);
        }
        break;
    case XC_DTYPE_F16:
        for (size_t i = 0; i < count; i++) {
            uint16_t u = rd_le16(p + 2 * i);
            bad |= (u & 0x7c00) == 0x7c00;
            dst[i] = xc_f16_to_f32(u);
        }
        break;
    case XC_DTYPE_BF16:
        for (size_t i = 0; i < count; i++) {
            uint16_t u = rd_le16(p + 2 * i);
            bad |= (u & 0x7f80) == 0x7f80;
            dst[i] = xc_bf16_to_f32(u);
        }
        break;
    default:
        xc_why(why, why_len, "unknown dtype %d", (int)h->dtype);
        return XC_EDTYPE;
    }
    if (!bad) return XC_OK;
    for (size_t i = 0; i < count; i++) /* rare path: find the first one for the reason */
        if (!isfinite(dst[i])) return nonfinite_at(h, i, dst[i], why, why_len);
    return XC_OK;
}

int xc_proto_payload_check_range(const xc_batch_hdr_t *h, const float *x, float max_abs, char *why,
                                 size_t why_len)
{
    size_t count = (size_t)h->n * 2 * h->d;
    float m = 0.f;
    if (!(max_abs > 0.f)) return XC_OK;
    for (size_t i = 0; i < count; i++) m = fmaxf(m, fabsf(x[i]));
    if (m <= max_abs) return XC_OK;
    size_t d = h->d;
    for (size_t i = 0; i < count; i++) /* rare path: name the first one */
        if (fabsf(x[i]) > max_abs) {
            xc_why(why, why_len, "token %zu, %s, dim %zu: |%g| exceeds max_abs_value %g (finite, but it "
                   "would overflow the training step; scale the activations or raise max_abs_value)",
                   i / (2 * d), (i / d) % 2 ? "chat" : "base", i % d, (double)x[i], (double)max_abs);
            break;
        }
    return XC_ERANGE;
}

void xc_proto_f32_to_payload(const float *src, size_t count, xc_dtype_t t, void *dst)
{
    uint8_t *p = dst;
    for (size_t i = 0; i < count; i++) {
        if (t == XC_DTYPE_F32) {
            uint32_t u = f2u(src[i]);
            p[4 * i] = (uint8_t)u;
            p[4 * i + 1] = (uint8_t)(u >> 8);
            p[4 * i + 2] = (uint8_t)(u >> 16);
            p[4 * i + 3] = (uint8_t)(u >> 24);
        } else {
            uint16_t u = t == XC_DTYPE_F16 ? xc_f32_to_f16(src[i]) : xc_f32_to_bf16(src[i]);
            p[2 * i] = (uint8_t)u;
            p[2 * i + 1] = (uint8_t)(u >> 8);
        }
    }
}

int xc_proto_ack_encode(xc_buf_t *out, uint64_t seq, uint64_t n, int64_t credit)
{
    xc_mpw_t w;
    xc_mpw_init(&w, out);
    xc_mpw_map_begin(&w);
    xc_mpw_kv_uint(&w, "v", XC_PROTO_VERSION);
    xc_mpw_kv_str(&w, "type", "ack");
    xc_mpw_kv_uint(&w, "seq", seq);
    xc_mpw_kv_uint(&w, "n", n);
    if (credit >= 0) xc_mpw_kv_int(&w, "credit", credit);
    xc_mpw_map_end(&w);
    return xc_mpw_finish(&w);
}

int xc_proto_nack_encode(xc_buf_t *out, const xc_batch_hdr_t *h, int code, const char *reason)
{
    xc_mpw_t w;
    xc_mpw_init(&w, out);
    xc_mpw_map_begin(&w);
    xc_mpw_kv_uint(&w, "v", XC_PROTO_VERSION);
    xc_mpw_kv_str(&w, "type", "nack");
    if (h && h->has_seq) xc_mpw_kv_uint(&w, "seq", h->seq);
    xc_mpw_kv_str(&w, "code", xc_errname(code));
    xc_mpw_kv_str(&w, "reason", reason && *reason ? reason : xc_strerror(code));
    xc_mpw_map_end(&w);
    return xc_mpw_finish(&w);
}

/* Checks {v: 1, ...} on a parsed map; XC_EPROTO / XC_EVERSION. */
static int check_version(xc_mp_node_t root, const char *what, char *why, size_t why_len)
{
    uint64_t v;
    if (xc_mp_type(root) != XC_MP_MAP) {
        xc_why(why, why_len, "%s must be a MessagePack map", what);
        return XC_EPROTO;
    }
    int rc = xc_mp_as_u64(xc_mp_get(root, "v"), &v);
    if (rc) {
        xc_why(why, why_len, "%s has no unsigned 'v' (protocol version)", what);
        return XC_EPROTO;
    }
    if (v != XC_PROTO_VERSION) {
        xc_why(why, why_len, "%s uses protocol version %llu; this side speaks %d", what,
                (unsigned long long)v, XC_PROTO_VERSION);
        return XC_EVERSION;
    }
    return XC_OK;
}

int xc_proto_ingest_reply_decode(const void *buf, size_t len, xc_ingest_reply_t *r, char *why,
                                 size_t why_len)
{
    xc_mp_doc_t *doc = NULL;
    const char *s;
    size_t sl;
    int rc;

    memset(r, 0, sizeof *r);
    r->credit = -1;
    if ((rc = xc_mp_doc_parse(buf, len, &doc, why, why_len))) return rc;
    xc_mp_node_t root = xc_mp_root(doc);
    if ((rc = check_version(root, "ingest reply", why, why_len))) goto out_free_doc;
    r->has_seq = xc_mp_as_u64(xc_mp_get(root, "seq"), &r->seq) == XC_OK;
    xc_mp_node_t t = xc_mp_get(root, "type");
    if (xc_mp_str_eq(t, "ack")) {
        r->ack = 1;
        if (!r->has_seq || xc_mp_as_u64(xc_mp_get(root, "n"), &r->n)) {
            xc_why(why, why_len, "ack without seq or n");
            rc = XC_EPROTO;
            goto out_free_doc;
        }
        int64_t c;
        if (xc_mp_as_i64(xc_mp_get(root, "credit"), &c) == XC_OK) r->credit = c;
    } else if (xc_mp_str_eq(t, "nack")) {
        r->ack = 0;
        if (xc_mp_as_str(xc_mp_get(root, "code"), &s, &sl)) {
            xc_why(why, why_len, "nack without a code");
            rc = XC_EPROTO;
            goto out_free_doc;
        }
        r->code = xc_proto_errcode(s, sl);
        if (r->code == XC_OK) r->code = XC_EPROTO;
        if (xc_mp_as_str(xc_mp_get(root, "reason"), &s, &sl) == XC_OK) {
            if (sl >= sizeof r->reason) sl = sizeof r->reason - 1;
            memcpy(r->reason, s, sl);
            r->reason[sl] = 0;
        }
    } else {
        xc_why(why, why_len, "ingest reply 'type' must be \"ack\" or \"nack\"");
        rc = XC_EPROTO;
    }
out_free_doc:
    xc_mp_doc_free(&doc);
    return rc;
}

/* ---------------------------------------------------------------- control -- */
static const char *const g_op_names[] = {
#define XC_OP_NAME(e, s) s,
    XC_OP_MAP(XC_OP_NAME)
#undef XC_OP_NAME
};

const char *xc_proto_op_name(xc_op_t op)
{
    return op >= 0 && op < XC_OP__COUNT ? g_op_names[op] : "?";
}

xc_op_t xc_proto_op_parse(const char *s, size_t len)
{
    for (int i = 0; i < XC_OP__COUNT; i++)
        if (s && strlen(g_op_names[i]) == len && memcmp(s, g_op_names[i], len) == 0)
            return (xc_op_t)i;
    return XC_OP_UNKNOWN;
}

int xc_proto_request_decode(const void *buf, size_t len, xc_request_t *req, char *why,
                            size_t why_len)
{
    const char *s;
    size_t sl;
    char pwhy[160];
    int rc;

    memset(req, 0, sizeof *req);
    req->op = XC_OP_UNKNOWN;
    if (len > XC_PROTO_REQUEST_MAX) {
        xc_why(why, why_len, "request is %zu bytes; the limit is %d", len, XC_PROTO_REQUEST_MAX);
        return XC_ETOOBIG;
    }
    rc = xc_mp_doc_parse(buf, len, &req->doc, pwhy, sizeof pwhy);
    if (rc) {
        xc_why(why, why_len, "request is not valid MessagePack: %s", pwhy);
        return rc == XC_ENOMEM ? rc : XC_EPROTO;
    }
    req->root = xc_mp_root(req->doc);
    if (xc_mp_type(req->root) != XC_MP_MAP) {
        xc_why(why, why_len, "request must be a MessagePack map {v, op, ...}");
        return XC_EPROTO;
    }
    req->id = xc_mp_get(req->root, "id");
    if (xc_mp_as_str(xc_mp_get(req->root, "op"), &s, &sl) == XC_OK) {
        size_t cl = sl > XC_PROTO_OP_MAX ? XC_PROTO_OP_MAX : sl;
        memcpy(req->op_name, s, cl);
        req->op_name[cl] = 0;
        req->op = xc_proto_op_parse(s, sl);
    }
    if ((rc = check_version(req->root, "request", why, why_len))) return rc;
    req->v = XC_PROTO_VERSION;
    if (xc_mp_as_str(xc_mp_get(req->root, "op"), &s, &sl)) {
        xc_why(why, why_len, "request has no string 'op'");
        return XC_EPROTO;
    }
    if (req->op == XC_OP_UNKNOWN) {
        char known[160];
        size_t kl = 0;
        known[0] = 0;
        for (int i = 0; i < XC_OP__COUNT && kl < sizeof known; i++)
            kl += (size_t)snprintf(known + kl, sizeof known - kl, "%s%s", i ? ", " : "",
                                   g_op_names[i]);
        xc_why(why, why_len, "unknown op \"%s\"; known ops: %s", req->op_name, known);
        return XC_EUNKNOWN;
    }
    return XC_OK;
}

void xc_proto_request_free(xc_request_t *req)
{
    if (!req) return;
    xc_mp_doc_free(&req->doc);
    req->root.o = NULL;
    req->id.o = NULL;
}

void xc_proto_request_begin(xc_mpw_t *w, const char *op, int64_t id)
{
    xc_mpw_map_begin(w);
    xc_mpw_kv_uint(w, "v", XC_PROTO_VERSION);
    xc_mpw_kv_str(w, "op", op);
    if (id >= 0) xc_mpw_kv_int(w, "id", id);
}

static void reply_head(xc_mpw_t *w, const xc_request_t *req, int ok)
{
    xc_mpw_map_begin(w);
    xc_mpw_kv_uint(w, "v", XC_PROTO_VERSION);
    xc_mpw_kv_bool(w, "ok", ok);
    if (req && req->op_name[0]) xc_mpw_kv_str(w, "op", req->op_name);
    if (req && xc_mp_type(req->id) != XC_MP_NONE) {
        xc_mpw_str(w, "id");
        xc_mpw_node(w, req->id);
    }
}

void xc_proto_reply_begin(xc_mpw_t *w, const xc_request_t *req) { reply_head(w, req, 1); }

int xc_proto_error_encode(xc_buf_t *out, const xc_request_t *req, int code, const char *message)
{
    xc_mpw_t w;
    xc_mpw_init(&w, out);
    reply_head(&w, req, 0);
    xc_mpw_kv_str(&w, "code", xc_errname(code));
    xc_mpw_kv_str(&w, "message", message && *message ? message : xc_strerror(code));
    xc_mpw_map_end(&w);
    return xc_mpw_finish(&w);
}

int xc_proto_reply_decode(const void *buf, size_t len, xc_mp_doc_t **doc, char *msg,
                          size_t msg_len)
{
    const char *s;
    size_t sl;
    int ok, rc;

    *doc = NULL;
    if (msg && msg_len) msg[0] = 0;
    if ((rc = xc_mp_doc_parse(buf, len, doc, msg, msg_len))) return rc == XC_ENOMEM ? rc : XC_EPROTO;
    xc_mp_node_t root = xc_mp_root(*doc);
    if ((rc = check_version(root, "reply", msg, msg_len))) goto out_free_doc;
    if (xc_mp_as_bool(xc_mp_get(root, "ok"), &ok)) {
        xc_why(msg, msg_len, "reply has no bool 'ok'");
        rc = XC_EPROTO;
        goto out_free_doc;
    }
    if (ok) return XC_OK;
    if (xc_mp_as_str(xc_mp_get(root, "code"), &s, &sl)) {
        xc_why(msg, msg_len, "error reply without a code");
        rc = XC_EPROTO;
        goto out_free_doc;
    }
    rc = xc_proto_errcode(s, sl);
    if (rc == XC_OK) rc = XC_EPROTO;
    if (xc_mp_as_str(xc_mp_get(root, "message"), &s, &sl) == XC_OK && msg && msg_len) {
        if (sl >= msg_len) sl = msg_len - 1;
        memcpy(msg, s, sl);
        msg[sl] = 0;
    }
    return rc; /* *doc kept for extra fields */
out_free_doc:
    xc_mp_doc_free(doc);
    return rc;
}

/* ----------------------------------------------------------------- events -- */
void xc_proto_event_begin(xc_mpw_t *w, const char *topic, const char *instance, double unix_time)
{
    xc_mpw_map_begin(w);
    xc_mpw_kv_uint(w, "v", XC_PROTO_VERSION);
    xc_mpw_kv_str(w, "type", topic);
    xc_mpw_kv_str(w, "name", instance ? instance : "");
    xc_mpw_kv_double(w, "time", unix_time);
}

int xc_proto_event_decode(const void *topic, size_t topic_len, const void *body, size_t body_len,
                          char *topic_out, size_t topic_out_len, xc_mp_doc_t **doc, char *why,
                          size_t why_len)
{
    int rc;
    *doc = NULL;
    if (!topic_out || topic_len >= topic_out_len) {
        xc_why(why, why_len, "event topic of %zu bytes does not fit", topic_len);
        return XC_ETOOBIG;
    }
    memcpy(topic_out, topic, topic_len);
    topic_out[topic_len] = 0;
    if ((rc = xc_mp_doc_parse(body, body_len, doc, why, why_len))) return rc;
    if ((rc = check_version(xc_mp_root(*doc), "event body", why, why_len)))
        xc_mp_doc_free(doc);
    return rc;
}
