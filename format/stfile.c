/* safetensors reading and checking, CRC-32, JSON to MessagePack (see xc_stfile.h). */
#include "xc_stfile.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the safetensors reader hands out little-endian data as host values"
#endif

/* ------------------------------------------------------------------ CRC-32 -- */
/* Slice-by-8 tables for the reflected polynomial 0xEDB88320. */
static uint32_t g_crc[8][256];
static pthread_once_t g_crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        g_crc[0][i] = c;
    }
    for (int t = 1; t < 8; t++)
        for (int i = 0; i < 256; i++) g_crc[t][i] = (g_crc[t - 1][i] >> 8) ^ g_crc[0][g_crc[t - 1][i] & 0xff];
}

uint32_t xc_crc32(uint32_t crc, const void *p, size_t n)
{
    const uint8_t *b = p;
    pthread_once(&g_crc_once, crc_init);
    crc = ~crc;
    while (n && ((uintptr_t)b & 7)) {
        crc = g_crc[0][(crc ^ *b++) & 0xff] ^ (crc >> 8);
        n--;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, b, 8);
        uint32_t lo = (uint32_t)w ^ crc, hi = (uint32_t)(w >> 32);
        crc = g_crc[7][lo & 0xff] ^ g_crc[6][(lo >> 8) & 0xff] ^ g_crc[5][(lo >> 16) & 0xff] ^
              g_crc[4][lo >> 24] ^ g_crc[3][hi & 0xff] ^ g_crc[2][(hi >> 8) & 0xff] ^
              g_crc[1][(hi >> 16) & 0xff] ^ g_crc[0][hi >> 24];
        b += 8;
        n -= 8;
    }
    while (n--) crc = g_crc[0][(crc ^ *b++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* -------------------------------------------------------- JSON -> MessagePack -- */
#define JSON_MAX_DEPTH 64

typedef struct {
    const char *p, *start, *end;
    xc_mpw_t *w;
    xc_buf_t str; /* scratch for one decoded string */
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

static void put_utf8(xc_buf_t *b, unsigned cp)
{
    uint8_t u[4];
    size_t n;
    if (cp < 0x80) { u[0] = (uint8_t)cp; n = 1; }
    else if (cp < 0x800) { u[0] = (uint8_t)(0xC0 | (cp >> 6)); u[1] = (uint8_t)(0x80 | (cp & 0x3F)); n = 2; }
    else if (cp < 0x10000) {
        u[0] = (uint8_t)(0xE0 | (cp >> 12)); u[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (uint8_t)(0x80 | (cp & 0x3F)); n = 3;
    } else {
        u[0] = (uint8_t)(0xF0 | (cp >> 18)); u[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F)); u[3] = (uint8_t)(0x80 | (cp & 0x3F)); n = 4;
    }
    xc_buf_append(b, u, n);
}

/* Parses the string at j->p (on its opening quote) into j->str and writes it. */
static int jstring(jp_t *j)
{
    static const char esc_in[] = "\"\\/bfnrt", esc_out[] = "\"\\/\b\f\n\r\t";
    xc_buf_reset(&j->str);
    j->p++;
    while (j->p < j->end && *j->p != '"') {
        unsigned char ch = (unsigned char)*j->p;
        if (ch < 0x20) return jfail(j, "control character in string");
        if (ch != '\\') {
            const char *run = j->p;
            while (j->p < j->end && *j->p != '"' && *j->p != '\\' && (unsigned char)*j->p >= 0x20) j->p++;
            xc_buf_append(&j->str, run, (size_t)(j->p - run));
            continue;
        }
        j->p++;
        if (j->p >= j->end) break;
        char e = *j->p++;
        const char *k = e ? strchr(esc_in, e) : NULL;
        if (k) {
            xc_buf_append(&j->str, &esc_out[k - esc_in], 1);
        } else if (e == 'u') {
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
            put_utf8(&j->str, cp);
        } else {
            return jfail(j, "bad escape \\%c", e);
        }
    }
    if (j->p >= j->end) return jfail(j, "unterminated string");
    j->p++;
    if (j->str.err) {
        j->err = XC_ENOMEM;
        return -1;
    }
    xc_mpw_strn(j->w, j->str.len ? (const char *)j->str.data : "", j->str.len);
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
            if (jstring(j) < 0) return -1;
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
    case '"': return jstring(j);
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

int xc_json_to_mp(const char *s, size_t len, xc_buf_t *out, char *why, size_t why_len)
{
    xc_mpw_t w;
    int rc;
    if (why && why_len) why[0] = 0;
    if (!s || !out) return XC_EINVAL;
    xc_mpw_init(&w, out);
    jp_t j = {s, s, s + len, &w, {0}, why, why_len, 0};
    xc_buf_init(&j.str);
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
    if (rc < 0) xc_why(why, why_len, "JSON: %s", xc_strerror(rc));
out:
    xc_buf_free(&j.str);
    return rc;
}

/* -------------------------------------------------------------- the reader -- */
struct xc_stf {
    char *path;               /* owned */
    const uint8_t *map;       /* the whole file */
    size_t size;
    size_t hlen;              /* JSON bytes after the 8-byte length */
    xc_stf_tensor_t *t;       /* sorted by offset; names owned */
    int nt;
    char **mk, **mv;          /* metadata keys / values; owned */
    int nm;
    /* lazy handles (xc_stf_open_lazy): the parsed header, entries checked on lookup */
    int lazy;
    xc_buf_t mp;              /* the header as MessagePack; owned */
    xc_mp_doc_t *doc;         /* parsed from mp; owned */
};

size_t xc_stf_dtype_size(const char *dt)
{
    static const struct { const char *n; size_t s; } k[] = {
        {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1},
        {"U64", 8}, {"U32", 4}, {"U16", 2}, {"U8", 1},   {"BOOL", 1}};
    for (size_t i = 0; dt && i < sizeof k / sizeof k[0]; i++)
        if (strcmp(dt, k[i].n) == 0) return k[i].s;
    return 0;
}

void xc_stf_close(xc_stf_t **pf)
{
    xc_stf_t *f = pf ? *pf : NULL;
    if (!f) return;
    for (int i = 0; i < f->nt; i++) free((char *)f->t[i].name);
    for (int i = 0; i < f->nm; i++) {
        free(f->mk[i]);
        free(f->mv[i]);
    }
    free(f->t);
    free(f->mk);
    free(f->mv);
    xc_mp_doc_free(&f->doc);
    xc_buf_free(&f->mp);
    if (f->map) munmap((void *)f->map, f->size);
    free(f->path);
    free(f);
    *pf = NULL;
}

static char *dup_str(xc_mp_node_t n)
{
    const char *s;
    size_t len;
    if (xc_mp_as_str(n, &s, &len)) return NULL;
    char *o = malloc(len + 1);
    if (!o) return NULL;
    memcpy(o, s, len);
    o[len] = 0;
    return o;
}

static int parse_meta(xc_stf_t *f, xc_mp_node_t m, char *why, size_t wl)
{
    size_t n = xc_mp_len(m);
    if (xc_mp_type(m) != XC_MP_MAP) {
        xc_why(why, wl, "%s: __metadata__ is not a JSON object", f->path);
        return XC_ECORRUPT;
    }
    f->mk = calloc(n + 1, sizeof *f->mk);
    f->mv = calloc(n + 1, sizeof *f->mv);
    if (!f->mk || !f->mv) return XC_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        xc_mp_node_t v = xc_mp_map_val(m, i);
        if (xc_mp_type(v) != XC_MP_STR) {
            xc_why(why, wl, "%s: __metadata__ values must be strings", f->path);
            return XC_ECORRUPT;
        }
        f->mk[i] = dup_str(xc_mp_map_key(m, i));
        f->mv[i] = dup_str(v);
        f->nm = (int)i + 1;
        if (!f->mk[i] || !f->mv[i]) return XC_ENOMEM;
    }
    return XC_OK;
}

/* One tensor entry {dtype, shape, data_offsets}; offsets relative to the data.
 * With dup_name the tensor gets its own copy of the name (else name is NULL).
 * XC_EDTYPE for a dtype this reader does not know (the strict open reports it
 * as corruption; a lazy lookup as what it is). */
static int parse_tensor(xc_stf_t *f, xc_mp_node_t key, xc_mp_node_t e, xc_stf_tensor_t *t, int dup_name,
                        char *why, size_t wl)
{
    char name[128];
    if (xc_mp_copy_str(key, name, sizeof name)) snprintf(name, sizeof name, "(a name over 127 bytes)");
    xc_mp_node_t dt = xc_mp_get(e, "dtype"), sh = xc_mp_get(e, "shape"), of = xc_mp_get(e, "data_offsets");
    if (xc_mp_type(e) != XC_MP_MAP || xc_mp_type(dt) != XC_MP_STR || xc_mp_type(sh) != XC_MP_ARRAY ||
        xc_mp_type(of) != XC_MP_ARRAY || xc_mp_len(of) != 2) {
        xc_why(why, wl, "%s: tensor '%s': malformed entry (needs dtype, shape, data_offsets)", f->path, name);
        return XC_ECORRUPT;
    }
    if (xc_mp_copy_str(dt, t->dtype, sizeof t->dtype) || !xc_stf_dtype_size(t->dtype)) {
        xc_why(why, wl, "%s: tensor '%s': unknown dtype", f->path, name);
        return XC_EDTYPE;
    }
    size_t es = xc_stf_dtype_size(t->dtype);
    t->ndim = (int)xc_mp_len(sh);
    if (t->ndim > XC_STF_MAX_DIMS) {
        xc_why(why, wl, "%s: tensor '%s': %d dimensions (at most %d)", f->path, name, t->ndim, XC_STF_MAX_DIMS);
        return XC_ECORRUPT;
    }
    uint64_t count = 1;
    for (int i = 0; i < t->ndim; i++) {
        int64_t v;
        if (xc_mp_as_i64(xc_mp_at(sh, (size_t)i), &v) || v < 0 || (v && count > (UINT64_MAX >> 4) / (uint64_t)v)) {
            xc_why(why, wl, "%s: tensor '%s': bad shape", f->path, name);
            return XC_ECORRUPT;
        }
        t->shape[i] = v;
        count *= (uint64_t)v;
    }
    uint64_t a, b, data_len = f->size - 8 - f->hlen;
    if (xc_mp_as_u64(xc_mp_at(of, 0), &a) || xc_mp_as_u64(xc_mp_at(of, 1), &b) || b < a) {
        xc_why(why, wl, "%s: tensor '%s': bad data_offsets", f->path, name);
        return XC_ECORRUPT;
    }
    if (count > (UINT64_MAX >> 4) / es || b - a != count * es) {
        xc_why(why, wl, "%s: tensor '%s': %llu bytes but %s x shape needs %llu", f->path, name,
                (unsigned long long)(b - a), t->dtype, (unsigned long long)(count * es));
        return XC_ECORRUPT;
    }
    if (b > data_len) {
        xc_why(why, wl, "%s: truncated: tensor '%s' ends at byte %llu of the data but the file holds %llu "
                "(%zu bytes in all)", f->path, name, (unsigned long long)b, (unsigned long long)data_len, f->size);
        return XC_ECORRUPT;
    }
    t->count = count;
    t->bytes = (size_t)(b - a);
    t->offset = 8 + f->hlen + (size_t)a;
    t->data = f->map + t->offset;
    if (!dup_name) return XC_OK;
    t->name = dup_str(key);
    return t->name ? XC_OK : XC_ENOMEM;
}

static int by_offset(const void *a, const void *b)
{
    const xc_stf_tensor_t *x = a, *y = b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return x->bytes < y->bytes ? -1 : x->bytes > y->bytes;
}

/* The header as a parsed MessagePack document kept in f (f->mp, f->doc). */
static int parse_json(xc_stf_t *f, char *why, size_t wl)
{
    char jwhy[200];
    int rc = xc_json_to_mp((const char *)f->map + 8, f->hlen, &f->mp, jwhy, sizeof jwhy);
    if (rc == 0) rc = xc_mp_doc_parse(f->mp.data, f->mp.len, &f->doc, jwhy, sizeof jwhy);
    if (rc) {
        if (rc != XC_ENOMEM) {
            xc_why(why, wl, "%s: the safetensors header is not valid JSON (%s)", f->path, jwhy);
            rc = XC_ECORRUPT;
        }
        return rc;
    }
    if (xc_mp_type(xc_mp_root(f->doc)) != XC_MP_MAP) {
        xc_why(why, wl, "%s: the safetensors header is not a JSON object", f->path);
        return XC_ECORRUPT;
    }
    return XC_OK;
}

/* Every entry checked, and the data section tiled exactly by the tensors. */
static int parse_header(xc_stf_t *f, char *why, size_t wl)
{
    int rc = parse_json(f, why, wl);
    if (rc) goto out;
    xc_mp_node_t root = xc_mp_root(f->doc);
    size_t n = xc_mp_len(root);
    f->t = calloc(n + 1, sizeof *f->t);
    if (!f->t) {
        rc = XC_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        xc_mp_node_t k = xc_mp_map_key(root, i), v = xc_mp_map_val(root, i);
        if (xc_mp_type(k) != XC_MP_STR) {
            xc_why(why, wl, "%s: a header key is not a string", f->path);
            rc = XC_ECORRUPT;
            goto out;
        }
        if (xc_mp_str_eq(k, "__metadata__")) {
            if (f->mk) {
                xc_why(why, wl, "%s: __metadata__ appears twice", f->path);
                rc = XC_ECORRUPT;
                goto out;
            }
            if ((rc = parse_meta(f, v, why, wl))) goto out;
            continue;
        }
        rc = parse_tensor(f, k, v, &f->t[f->nt], 1, why, wl);
        if (rc == XC_EDTYPE) rc = XC_ECORRUPT;
        if (f->t[f->nt].name) f->nt++;
        if (rc) goto out;
        for (int q = 0; q < f->nt - 1; q++)
            if (strcmp(f->t[q].name, f->t[f->nt - 1].name) == 0) {
                xc_why(why, wl, "%s: tensor '%s' appears twice", f->path, f->t[q].name);
                rc = XC_ECORRUPT;
                goto out;
            }
    }
    qsort(f->t, (size_t)f->nt, sizeof *f->t, by_offset);
    size_t pos = 8 + f->hlen;
    for (int i = 0; i < f->nt; i++) {
        if (f->t[i].offset != pos) {
            xc_why(why, wl, "%s: tensor '%s' %s", f->path, f->t[i].name,
                    f->t[i].offset < pos ? "overlaps another tensor" : "leaves a gap before it");
            rc = XC_ECORRUPT;
            goto out;
        }
        pos += f->t[i].bytes;
    }
    if (pos != f->size) {
        xc_why(why, wl, "%s: %zu bytes after the last tensor (corrupt, or not a safetensors file)", f->path,
                f->size - pos);
        rc = XC_ECORRUPT;
        goto out;
    }
    rc = XC_OK;
out:
    if (rc == XC_ENOMEM) xc_why(why, wl, "%s: out of memory reading the header", f->path);
    xc_mp_doc_free(&f->doc); /* everything is in f->t and the metadata now */
    xc_buf_free(&f->mp);
    return rc;
}

static xc_stf_t *open_file(const char *path, int lazy, int *err, char *why, size_t wl)
{
    struct stat sb;
    int rc = XC_ENOMEM;
    xc_stf_t *f = calloc(1, sizeof *f); /* owned by the caller; xc_stf_close */
    if (f) xc_buf_init(&f->mp);
    if (!f || !(f->path = strdup(path ? path : ""))) {
        xc_why(why, wl, "out of memory");
        goto fail;
    }
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        xc_why(why, wl, "cannot open %s: %s", f->path, strerror(errno));
        rc = XC_EIO;
        goto fail;
    }
    if (fstat(fd, &sb) || !S_ISREG(sb.st_mode)) {
        xc_why(why, wl, "%s is not a regular file", f->path);
        close(fd);
        rc = XC_EIO;
        goto fail;
    }
    f->size = (size_t)sb.st_size;
    if (f->size < 10) {
        xc_why(why, wl, "%s: %zu bytes, too short for a safetensors file (truncated?)", f->path, f->size);
        close(fd);
        rc = XC_ECORRUPT;
        goto fail;
    }
    void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        xc_why(why, wl, "cannot map %s: %s", f->path, strerror(errno));
        rc = XC_EIO;
        goto fail;
    }
    f->map = m;
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | f->map[i];
    if (hl < 2 || hl > XC_STF_HEADER_MAX) {
        xc_why(why, wl, "%s: header length %llu is implausible; not a safetensors file", f->path,
                (unsigned long long)hl);
        rc = XC_ECORRUPT;
        goto fail;
    }
    if (hl > f->size - 8) {
        xc_why(why, wl, "%s: truncated: the header claims %llu bytes but the file has %zu after the length",
                f->path, (unsigned long long)hl, f->size - 8);
        rc = XC_ECORRUPT;
        goto fail;
    }
    f->hlen = (size_t)hl;
    f->lazy = lazy;
    if ((rc = lazy ? parse_json(f, why, wl) : parse_header(f, why, wl))) {
        if (rc == XC_ENOMEM) xc_why(why, wl, "%s: out of memory reading the header", f->path);
        goto fail;
    }
    if (err) *err = XC_OK;
    return f;
fail:
    xc_stf_close(&f);
    if (err) *err = rc;
    return NULL;
}

xc_stf_t *xc_stf_open(const char *path, int *err, char *why, size_t wl) { return open_file(path, 0, err, why, wl); }
xc_stf_t *xc_stf_open_lazy(const char *path, int *err, char *why, size_t wl) { return open_file(path, 1, err, why, wl); }

int xc_stf_lookup(const xc_stf_t *f, const char *name, xc_stf_tensor_t *out, char *why, size_t wl)
{
    memset(out, 0, sizeof *out);
    if (!f || !name) {
        xc_why(why, wl, "no file or name");
        return XC_EINVAL;
    }
    if (!f->lazy) { /* checked at open */
        const xc_stf_tensor_t *t = xc_stf_find(f, name);
        if (!t) {
            xc_why(why, wl, "no tensor '%s' in the checkpoint", name);
            return XC_ENOTFOUND;
        }
        *out = *t;
        return XC_OK;
    }
    xc_mp_node_t root = xc_mp_root(f->doc);
    for (size_t i = 0; i < xc_mp_len(root); i++) {
        xc_mp_node_t k = xc_mp_map_key(root, i);
        if (!xc_mp_str_eq(k, name) || xc_mp_str_eq(k, "__metadata__")) continue;
        int rc = parse_tensor((xc_stf_t *)f, k, xc_mp_map_val(root, i), out, 0, why, wl);
        if (rc) return rc;
        out->name = name;
        return XC_OK;
    }
    xc_why(why, wl, "no tensor '%s' in the checkpoint", name);
    return XC_ENOTFOUND;
}

const char *xc_stf_path(const xc_stf_t *f) { return f->path; }
size_t xc_stf_size(const xc_stf_t *f) { return f->size; }

const char *xc_stf_header(const xc_stf_t *f, size_t *len)
{
    if (len) *len = f->hlen;
    return (const char *)f->map + 8;
}

int xc_stf_count(const xc_stf_t *f) { return f->nt; }

const xc_stf_tensor_t *xc_stf_at(const xc_stf_t *f, int i) { return i >= 0 && i < f->nt ? &f->t[i] : NULL; }

const xc_stf_tensor_t *xc_stf_find(const xc_stf_t *f, const char *name)
{
    for (int i = 0; name && i < f->nt; i++)
        if (strcmp(f->t[i].name, name) == 0) return &f->t[i];
    return NULL;
}

int xc_stf_meta_count(const xc_stf_t *f) { return f->nm; }
const char *xc_stf_meta_key(const xc_stf_t *f, int i) { return i >= 0 && i < f->nm ? f->mk[i] : NULL; }
const char *xc_stf_meta_val(const xc_stf_t *f, int i) { return i >= 0 && i < f->nm ? f->mv[i] : NULL; }

const char *xc_stf_meta(const xc_stf_t *f, const char *key)
{
    for (int i = 0; key && i < f->nm; i++)
        if (strcmp(f->mk[i], key) == 0) return f->mv[i];
    return NULL;
}

const char *xc_stf_checksum(const xc_stf_t *f) { return xc_stf_meta(f, XC_STF_CHECKSUM_KEY); }

int xc_stf_verify(const xc_stf_t *f, char *why, size_t wl)
{
    const char *v = xc_stf_checksum(f);
    if (!v) {
        xc_why(why, wl, "%s: no checksum in the metadata (not written by xcoderd)", f->path);
        return XC_ENOTFOUND;
    }
    const char *h = (const char *)f->map + 8, *p = memmem(h, f->hlen, XC_STF_CHECKSUM_PAT, strlen(XC_STF_CHECKSUM_PAT));
    size_t at = p ? (size_t)(p - h) + strlen(XC_STF_CHECKSUM_PAT) : 0;
    char digits[9];
    if (!p || at + 9 > f->hlen || strncmp(v, "crc32:", 6) != 0 || strlen(v) != 14 ||
        memcmp(h + at, v + 6, 8) != 0 || h[at + 8] != '"') {
        xc_why(why, wl, "%s: malformed checksum entry '%.40s'", f->path, v);
        return XC_ECORRUPT;
    }
    for (int i = 0; i < 8; i++)
        if (!isxdigit((unsigned char)v[6 + i])) {
            xc_why(why, wl, "%s: malformed checksum entry '%.40s'", f->path, v);
            return XC_ECORRUPT;
        }
    size_t pos = 8 + at; /* file offset of the digits */
    uint32_t crc = xc_crc32(0, f->map, pos);
    crc = xc_crc32(crc, "00000000", 8);
    crc = xc_crc32(crc, f->map + pos + 8, f->size - pos - 8);
    snprintf(digits, sizeof digits, "%08x", crc);
    if (strncmp(digits, v + 6, 8) != 0) { /* lowercase, as written: a flipped case is a flipped bit */
        xc_why(why, wl, "%s: checksum mismatch: the file says crc32:%.8s, its content gives crc32:%s "
                "(corrupt or modified)", f->path, v + 6, digits);
        return XC_ECORRUPT;
    }
    return XC_OK;
}

/* A tensor must exist with this dtype and shape (the error code is the caller's:
 * a corrupt file, or one of another version). */
static int shape_str(char *out, size_t n, int ndim, const int64_t *s)
{
    size_t u = 0;
    u += (size_t)snprintf(out, n, "[");
    for (int i = 0; i < ndim && u < n; i++) u += (size_t)snprintf(out + u, n - u, "%s%lld", i ? ", " : "", (long long)s[i]);
    if (u < n) snprintf(out + u, n - u, "]");
    return 0;
}

int xc_stf_expect(const xc_stf_t *f, const char *name, const char *dtype, int ndim, const int64_t *shape,
                  int code, char *why, size_t wl)
{
    const xc_stf_tensor_t *t = xc_stf_find(f, name);
    char a[96], b[96];
    if (!t) {
        xc_why(why, wl, "%s: no tensor '%s'%s", xc_stf_path(f), name,
                code == XC_EVERSION ? " (written by an incompatible xcoderd?)" : "");
        return code;
    }
    int same = strcmp(t->dtype, dtype) == 0 && t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        shape_str(a, sizeof a, t->ndim, t->shape);
        shape_str(b, sizeof b, ndim, shape);
        xc_why(why, wl, "%s: tensor '%s' is %s %s, expected %s %s", xc_stf_path(f), name, t->dtype, a, dtype, b);
        return code;
    }
    return XC_OK;
}
