/* A small strict JSON parser (RFC 8259) into xc_client_value_t trees: used for
 * safetensors headers and to check the JSON renderer. It writes MessagePack
 * with proto's writer and converts that, so one tree builder serves both. */
#include "xcoder.h"
#include "xc_client_internal.h"
#include "xc_proto.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 64

typedef struct {
    const char *p, *start, *end;
    xc_mpw_t *w;
    char *why;
    size_t why_len;
    int err;
} jp_t;

static int jfail(jp_t *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int jfail(jp_t *j, const char *fmt, ...)
{
    if (j->err) return -1;
    j->err = XC_EPROTO;
    if (j->why && j->why_len) {
        char msg[160];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        snprintf(j->why, j->why_len, "JSON error at byte %ld: %s", (long)(j->p - j->start), msg);
    }
    return -1;
}

static void ws(jp_t *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static int hex4(jp_t *j, unsigned *out)
{
    if (j->end - j->p < 4) return jfail(j, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char ch = j->p[i];
        v <<= 4;
        if (ch >= '0' && ch <= '9') v |= (unsigned)(ch - '0');
        else if (ch >= 'a' && ch <= 'f') v |= (unsigned)(ch - 'a' + 10);
        else if (ch >= 'A' && ch <= 'F') v |= (unsigned)(ch - 'A' + 10);
        else return jfail(j, "bad \\u escape");
    }
    j->p += 4;
    *out = v;
    return 0;
}

static void put_utf8(xc_client_sbuf_t *b, unsigned cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) { u[0] = (char)cp; n = 1; }
    else if (cp < 0x800) { u[0] = (char)(0xC0 | (cp >> 6)); u[1] = (char)(0x80 | (cp & 0x3F)); n = 2; }
    else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12)); u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F)); n = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18)); u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); u[3] = (char)(0x80 | (cp & 0x3F)); n = 4;
    }
    xc_client_sbuf_put(b, u, n);
}

/* Parses a string at j->p (on the opening quote) into b (caller frees b->buf). */
static int jstring(jp_t *j, xc_client_sbuf_t *b)
{
    j->p++;
    xc_client_sbuf_put(b, "", 0);
    while (j->p < j->end && *j->p != '"') {
        unsigned char ch = (unsigned char)*j->p;
        if (ch < 0x20) return jfail(j, "control character in string");
        if (ch != '\\') {
            xc_client_sbuf_put(b, j->p, 1);
            j->p++;
            continue;
        }
        j->p++;
        if (j->p >= j->end) break;
        char e = *j->p++;
        switch (e) {
        case '"': xc_client_sbuf_put(b, "\"", 1); break;
        case '\\': xc_client_sbuf_put(b, "\\", 1); break;
        case '/': xc_client_sbuf_put(b, "/", 1); break;
        case 'b': xc_client_sbuf_put(b, "\b", 1); break;
        case 'f': xc_client_sbuf_put(b, "\f", 1); break;
        case 'n': xc_client_sbuf_put(b, "\n", 1); break;
        case 'r': xc_client_sbuf_put(b, "\r", 1); break;
        case 't': xc_client_sbuf_put(b, "\t", 1); break;
        case 'u': {
            unsigned cp, lo;
            if (hex4(j, &cp) < 0) return -1;
            if (cp >= 0xD800 && cp <= 0xDBFF) { /* surrogate pair */
                if (j->end - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u') return jfail(j, "lone surrogate");
                j->p += 2;
                if (hex4(j, &lo) < 0) return -1;
                if (lo < 0xDC00 || lo > 0xDFFF) return jfail(j, "bad surrogate pair");
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return jfail(j, "lone surrogate");
            }
            put_utf8(b, cp);
            break;
        }
        default: return jfail(j, "bad escape \\%c", e);
        }
    }
    if (j->p >= j->end) return jfail(j, "unterminated string");
    j->p++;
    if (b->failed) {
        j->err = XC_ENOMEM;
        return -1;
    }
    return 0;
}

static int jnumber(jp_t *j)
{
    const char *s = j->p;
    int is_float = 0;
    if (j->p < j->end && *j->p == '-') j->p++;
    if (j->p >= j->end || !isdigit((unsigned char)*j->p)) return jfail(j, "bad number");
    if (*j->p == '0') j->p++;
    else while (j->p < j->end && isdigit((unsigned char)*j->p)) j->p++;
    if (j->p < j->end && *j->p == '.') {
        is_float = 1;
        j->p++;
        if (j->p >= j->end || !isdigit((unsigned char)*j->p)) return jfail(j, "bad number");
        while (j->p < j->end && isdigit((unsigned char)*j->p)) j->p++;
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        is_float = 1;
        j->p++;
        if (j->p < j->end && (*j->p == '+' || *j->p == '-')) j->p++;
        if (j->p >= j->end || !isdigit((unsigned char)*j->p)) return jfail(j, "bad number");
        while (j->p < j->end && isdigit((unsigned char)*j->p)) j->p++;
    }
    char tmp[64];
    size_t n = (size_t)(j->p - s);
    if (n >= sizeof tmp) is_float = 1;
    if (n >= sizeof tmp) n = sizeof tmp - 1; /* only a huge float can be this long */
    memcpy(tmp, s, n);
    tmp[n] = 0;
    if (!is_float) {
        errno = 0;
        if (tmp[0] == '-') {
            long long v = strtoll(tmp, NULL, 10);
            if (errno == 0) { xc_mpw_int(j->w, v); return 0; }
        } else {
            unsigned long long v = strtoull(tmp, NULL, 10);
            if (errno == 0) { xc_mpw_uint(j->w, v); return 0; }
        }
    }
    xc_mpw_double(j->w, strtod(tmp, NULL));
    return 0;
}

static int jvalue(jp_t *j, int depth);

static int jcontainer(jp_t *j, int depth, int is_map)
{
    char close = is_map ? '}' : ']';
    j->p++;
    if (is_map) xc_mpw_map_begin(j->w);
    else xc_mpw_array_begin(j->w);
    ws(j);
    if (j->p < j->end && *j->p == close) {
        j->p++;
        goto done;
    }
    for (;;) {
        ws(j);
        if (is_map) {
            if (j->p >= j->end || *j->p != '"') return jfail(j, "expected a string key");
            xc_client_sbuf_t k = {0};
            int rc = jstring(j, &k);
            if (rc == 0) xc_mpw_strn(j->w, k.buf, k.len);
            free(k.buf);
            if (rc < 0) return -1;
            ws(j);
            if (j->p >= j->end || *j->p != ':') return jfail(j, "expected ':'");
            j->p++;
        }
        if (jvalue(j, depth + 1) < 0) return -1;
        ws(j);
        if (j->p < j->end && *j->p == ',') {
            j->p++;
            continue;
        }
        if (j->p < j->end && *j->p == close) {
            j->p++;
            break;
        }
        return jfail(j, "expected ',' or '%c'", close);
    }
done:
    if (is_map) xc_mpw_map_end(j->w);
    else xc_mpw_array_end(j->w);
    return 0;
}

static int jvalue(jp_t *j, int depth)
{
    if (depth > JSON_MAX_DEPTH || depth >= XC_PROTO_MPW_DEPTH) return jfail(j, "nested too deeply");
    ws(j);
    if (j->p >= j->end) return jfail(j, "unexpected end of input");
    switch (*j->p) {
    case '{': return jcontainer(j, depth, 1);
    case '[': return jcontainer(j, depth, 0);
    case '"': {
        xc_client_sbuf_t s = {0};
        int rc = jstring(j, &s);
        if (rc == 0) xc_mpw_strn(j->w, s.buf, s.len);
        free(s.buf);
        return rc;
    }
    case 't':
        if (j->end - j->p >= 4 && memcmp(j->p, "true", 4) == 0) { j->p += 4; xc_mpw_bool(j->w, 1); return 0; }
        break;
    case 'f':
        if (j->end - j->p >= 5 && memcmp(j->p, "false", 5) == 0) { j->p += 5; xc_mpw_bool(j->w, 0); return 0; }
        break;
    case 'n':
        if (j->end - j->p >= 4 && memcmp(j->p, "null", 4) == 0) { j->p += 4; xc_mpw_nil(j->w); return 0; }
        break;
    default:
        if (*j->p == '-' || isdigit((unsigned char)*j->p)) return jnumber(j);
    }
    return jfail(j, "unexpected character '%c'", *j->p);
}

xc_client_value_t *xc_client_json_parse(const char *s, size_t len, int *err, char *why, size_t why_len)
{
    xc_buf_t buf;
    xc_mpw_t w;
    xc_client_value_t *v = NULL;
    int rc;
    if (why && why_len) why[0] = 0;
    if (!s) {
        if (err) *err = XC_EINVAL;
        return NULL;
    }
    xc_buf_init(&buf);
    xc_mpw_init(&w, &buf);
    jp_t j = {s, s, s + len, &w, why, why_len, 0};
    if (jvalue(&j, 0) < 0) {
        rc = j.err ? j.err : XC_EPROTO;
        goto out;
    }
    ws(&j);
    if (j.p != j.end) {
        jfail(&j, "trailing characters");
        rc = XC_EPROTO;
        goto out;
    }
    rc = xc_mpw_finish(&w);
    if (rc < 0) {
        if (why && why_len) snprintf(why, why_len, "JSON: %s", xc_strerror(rc));
        goto out;
    }
    v = xc_client_value_parse(buf.data, buf.len, &rc);
out:
    xc_buf_free(&buf);
    if (err) *err = rc;
    return v;
}
