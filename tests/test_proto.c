/* Tests of the wire codec (proto/): MessagePack writer/reader, the ingest
 * header and its refusal classes, payload conversion, control and event
 * messages, hostile input, and the shared test vectors (proto/vectors.json).
 *
 * `test_proto --vectors` prints the vectors file; the normal run checks that
 * the committed proto/vectors.json matches the codec byte for byte. */
#include "xc_proto.h"
#include "xc_stfile.h"
#include "xc_test.h"

#include <stdint.h>

/* ------------------------------------------------------------- helpers -- */
static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}

static xc_batch_hdr_t hdr_make(uint64_t seq, uint64_t n, uint32_t d, xc_dtype_t t)
{
    xc_batch_hdr_t h;
    memset(&h, 0, sizeof h);
    strcpy(h.producer, "test");
    h.seq = seq;
    h.n = n;
    h.d = d;
    h.dtype = t;
    return h;
}

/* Encodes an arbitrary map from a tiny script: pairs of key and a typed value. */
typedef struct {
    const char *k;
    char t; /* 'u' uint, 'i' int, 's' str, 'b' bool, 'n' nil, 'f' double */
    uint64_t u;
    const char *s;
} kv_t;

static void enc_map(xc_buf_t *b, const kv_t *kv, int n)
{
    xc_mpw_t w;
    xc_buf_reset(b);
    xc_mpw_init(&w, b);
    xc_mpw_map_begin(&w);
    for (int i = 0; i < n; i++) {
        xc_mpw_str(&w, kv[i].k);
        switch (kv[i].t) {
        case 'u': xc_mpw_uint(&w, kv[i].u); break;
        case 'i': xc_mpw_int(&w, (int64_t)kv[i].u); break;
        case 's': xc_mpw_str(&w, kv[i].s); break;
        case 'b': xc_mpw_bool(&w, (int)kv[i].u); break;
        case 'f': xc_mpw_double(&w, (double)kv[i].u); break;
        default: xc_mpw_nil(&w); break;
        }
    }
    xc_mpw_map_end(&w);
    xc_mpw_finish(&w);
}

static int hdr_decode_kv(const kv_t *kv, int n, xc_batch_hdr_t *h, char *why, size_t wl)
{
    xc_buf_t b;
    xc_buf_init(&b);
    enc_map(&b, kv, n);
    int rc = xc_proto_batch_hdr_decode(b.data, b.len, h, why, wl);
    xc_buf_free(&b);
    return rc;
}

/* -------------------------------------------------------------- writer -- */
static void test_writer_nesting(void)
{
    xc_buf_t b;
    xc_mpw_t w;
    xc_mp_doc_t *doc = NULL;
    char why[128];
    xc_buf_init(&b);
    xc_mpw_init(&w, &b);
    xc_mpw_map_begin(&w);
    xc_mpw_kv_int(&w, "a", -5);
    xc_mpw_str(&w, "arr");
    xc_mpw_array_begin(&w);
    for (int i = 0; i < 300; i++) xc_mpw_uint(&w, (uint64_t)i * 1000000007ull);
    xc_mpw_array_end(&w);
    xc_mpw_str(&w, "m");
    xc_mpw_map_begin(&w);
    xc_mpw_kv_double(&w, "x", 0.25);
    xc_mpw_kv_bool(&w, "t", 1);
    xc_mpw_kv_nil(&w, "z");
    xc_mpw_map_end(&w);
    xc_mpw_map_end(&w);
    XC_REQUIRE(xc_mpw_finish(&w) == 0, "finish");
    XC_REQUIRE(xc_mp_doc_parse(b.data, b.len, &doc, why, sizeof why) == 0, "parse: %s", why);
    xc_mp_node_t r = xc_mp_root(doc);
    int64_t a;
    uint64_t u;
    double x;
    int t;
    XC_CHECK(xc_mp_len(r) == 3, "root has %zu entries", xc_mp_len(r));
    XC_CHECK(xc_mp_as_i64(xc_mp_get(r, "a"), &a) == 0 && a == -5, "a");
    XC_CHECK(xc_mp_len(xc_mp_get(r, "arr")) == 300, "arr len");
    XC_CHECK(xc_mp_as_u64(xc_mp_at(xc_mp_get(r, "arr"), 299), &u) == 0 && u == 299ull * 1000000007ull,
             "arr[299]");
    XC_CHECK(xc_mp_type(xc_mp_at(xc_mp_get(r, "arr"), 300)) == XC_MP_NONE, "out of range");
    xc_mp_node_t m = xc_mp_get(r, "m");
    XC_CHECK(xc_mp_as_f64(xc_mp_get(m, "x"), &x) == 0 && x == 0.25, "x");
    XC_CHECK(xc_mp_as_bool(xc_mp_get(m, "t"), &t) == 0 && t == 1, "t");
    XC_CHECK(xc_mp_type(xc_mp_get(m, "z")) == XC_MP_NIL, "z nil");
    XC_CHECK(xc_mp_as_u64(xc_mp_get(r, "a"), &u) == XC_EINVAL, "negative as u64");
    XC_CHECK(xc_mp_as_u64(xc_mp_get(r, "nope"), &u) == XC_ENOTFOUND, "absent");
    xc_mp_doc_free(&doc);
    XC_CHECK(doc == NULL, "doc freed");
    xc_buf_free(&b);
}

static void test_writer_errors(void)
{
    xc_buf_t b;
    xc_mpw_t w;
    xc_buf_init(&b);
    xc_mpw_init(&w, &b);
    xc_mpw_map_begin(&w);
    XC_CHECK(xc_mpw_finish(&w) == XC_EINVAL, "unclosed map must fail");
    xc_buf_reset(&b);
    xc_mpw_init(&w, &b);
    xc_mpw_map_begin(&w);
    xc_mpw_str(&w, "k");
    xc_mpw_map_end(&w);
    XC_CHECK(xc_mpw_finish(&w) == XC_EINVAL, "odd map must fail");
    xc_buf_reset(&b);
    xc_mpw_init(&w, &b);
    xc_mpw_array_begin(&w);
    xc_mpw_map_end(&w);
    XC_CHECK(xc_mpw_finish(&w) == XC_EINVAL, "mismatched close must fail");
    xc_buf_reset(&b);
    xc_mpw_init(&w, &b);
    for (int i = 0; i < XC_PROTO_MPW_DEPTH + 1; i++) xc_mpw_array_begin(&w);
    XC_CHECK(xc_mpw_finish(&w) == XC_EINVAL, "too deep must fail");
    xc_buf_free(&b);
    size_t len = 1;
    XC_CHECK(xc_buf_take(&b, &len) == NULL && len == 0, "take of empty");
}

/* -------------------------------------------------------------- reader -- */
static void test_reader_hostile(void)
{
    xc_mp_doc_t *doc = NULL;
    char why[128];
    /* array32 claiming 4 billion elements in 5 bytes: refused before allocating */
    const uint8_t big_arr[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
    XC_CHECK(xc_mp_doc_parse(big_arr, sizeof big_arr, &doc, why, sizeof why) == XC_EPROTO,
             "huge array count");
    const uint8_t big_map[] = {0xdf, 0x7f, 0xff, 0xff, 0xff, 0x01};
    XC_CHECK(xc_mp_doc_parse(big_map, sizeof big_map, &doc, why, sizeof why) == XC_EPROTO,
             "huge map count");
    const uint8_t big_str[] = {0xdb, 0xff, 0xff, 0xff, 0xf0, 'a'};
    XC_CHECK(xc_mp_doc_parse(big_str, sizeof big_str, &doc, why, sizeof why) == XC_EPROTO,
             "truncated str32");
    const uint8_t trailing[] = {0x01, 0x02};
    XC_CHECK(xc_mp_doc_parse(trailing, sizeof trailing, &doc, why, sizeof why) == XC_EPROTO,
             "trailing bytes");
    const uint8_t never[] = {0xc1};
    XC_CHECK(xc_mp_doc_parse(never, sizeof never, &doc, why, sizeof why) == XC_EPROTO,
             "0xc1 is never used");
    XC_CHECK(xc_mp_doc_parse(NULL, 0, &doc, why, sizeof why) == XC_EPROTO, "empty");
    uint8_t deep[200];
    memset(deep, 0x91, sizeof deep); /* fixarray of 1, nested 199 deep */
    deep[199] = 0x00;
    XC_CHECK(xc_mp_doc_parse(deep, sizeof deep, &doc, why, sizeof why) == XC_EPROTO,
             "deep nesting");
    XC_CHECK(strstr(why, "nested") != NULL, "reason names nesting: %s", why);
    uint8_t ok_deep[20];
    memset(ok_deep, 0x91, sizeof ok_deep);
    ok_deep[19] = 0x07;
    XC_CHECK(xc_mp_doc_parse(ok_deep, sizeof ok_deep, &doc, why, sizeof why) == 0,
             "19 levels parse: %s", why);
    xc_mp_doc_free(&doc);
    /* fixext and ext are skipped correctly */
    const uint8_t ext[] = {0x92, 0xd4, 0x01, 0x02, 0xc7, 0x02, 0x05, 0xaa, 0xbb};
    XC_CHECK(xc_mp_doc_parse(ext, sizeof ext, &doc, why, sizeof why) == 0, "ext: %s", why);
    XC_CHECK(xc_mp_type(xc_mp_at(xc_mp_root(doc), 1)) == XC_MP_EXT, "ext type");
    xc_mp_doc_free(&doc);
}

/* Random bytes and mutations of valid messages never crash any decoder. */
static void test_fuzz_decoders(void)
{
    xc_buf_t b;
    xc_batch_hdr_t h = hdr_make(7, 3, 4, XC_DTYPE_F16);
    uint8_t m[512];
    char why[256];
    xc_buf_init(&b);
    h.has_tokens = 1;
    XC_REQUIRE(xc_proto_batch_hdr_encode(&b, &h) == 0, "encode");
    size_t base_len = b.len;
    XC_REQUIRE(base_len < sizeof m, "header size");
    int decoded_ok = 0;
    for (int it = 0; it < 20000; it++) {
        size_t len;
        if (it % 2) {
            memcpy(m, b.data, base_len);
            len = base_len;
            int flips = 1 + (int)(rnd() % 4);
            for (int f = 0; f < flips; f++) m[rnd() % len] = (uint8_t)rnd();
            if (rnd() % 4 == 0) len = rnd() % (len + 1);
        } else {
            len = rnd() % 64;
            for (size_t i = 0; i < len; i++) m[i] = (uint8_t)rnd();
        }
        xc_batch_hdr_t out;
        if (xc_proto_batch_hdr_decode(m, len, &out, why, sizeof why) == 0) decoded_ok++;
        xc_request_t req;
        xc_proto_request_decode(m, len, &req, why, sizeof why);
        xc_buf_t e;
        xc_buf_init(&e);
        XC_CHECK(xc_proto_error_encode(&e, &req, XC_EPROTO, why) == 0, "error reply encodes");
        xc_buf_free(&e);
        xc_proto_request_free(&req);
        xc_ingest_reply_t r;
        xc_proto_ingest_reply_decode(m, len, &r, why, sizeof why);
        xc_mp_doc_t *doc = NULL;
        if (xc_proto_reply_decode(m, len, &doc, why, sizeof why) != XC_EPROTO || doc)
            xc_mp_doc_free(&doc);
        if (xc_mp_doc_parse(m, len, &doc, why, sizeof why) == 0) {
            xc_buf_t j;
            xc_buf_init(&j);
            xc_mp_to_json(xc_mp_root(doc), &j, 1);
            xc_buf_free(&j);
            xc_mp_doc_free(&doc);
        }
    }
    XC_CHECK(decoded_ok > 0, "some mutations still decode");
    xc_buf_free(&b);
}

/* -------------------------------------------------------------- header -- */
static void test_header_roundtrip(void)
{
    xc_buf_t b;
    xc_batch_hdr_t h = hdr_make(UINT64_MAX - 3, 2048, 2304, XC_DTYPE_BF16), o;
    char why[256];
    h.has_pos = 1;
    xc_buf_init(&b);
    XC_REQUIRE(xc_proto_batch_hdr_encode(&b, &h) == 0, "encode");
    XC_REQUIRE(xc_proto_batch_hdr_decode(b.data, b.len, &o, why, sizeof why) == 0, "%s", why);
    XC_CHECK(o.v == 1 && o.seq == h.seq && o.n == 2048 && o.d == 2304, "fields");
    XC_CHECK(o.dtype == XC_DTYPE_BF16 && o.has_pos == 1 && o.has_tokens == 0 && o.has_seq, "flags");
    XC_CHECK(strcmp(o.producer, "test") == 0, "producer %s", o.producer);
    XC_CHECK(xc_proto_payload_bytes(&o) == 2048u * 2 * 2304 * 2, "payload bytes");
    h.n = 0;
    XC_CHECK(xc_proto_batch_hdr_encode(&b, &h) == XC_EINVAL, "n = 0 refused by the encoder");
    xc_buf_free(&b);
}

static void test_header_refusals(void)
{
    xc_batch_hdr_t h;
    char why[256];
    kv_t good[] = {{"v", 'u', 1, 0},       {"type", 's', 0, "batch"}, {"seq", 'u', 9, 0},
                   {"n", 'u', 4, 0},       {"d", 'u', 8, 0},          {"dtype", 's', 0, "f32"},
                   {"extra", 's', 0, "ignored"}};
    XC_CHECK(hdr_decode_kv(good, 7, &h, why, sizeof why) == 0, "minimal header: %s", why);
    XC_CHECK(h.producer[0] == 0 && !h.has_tokens, "defaults");

    kv_t t[7];
#define CASE(i, field, val, code, text)                                         \
    do {                                                                        \
        memcpy(t, good, sizeof good);                                           \
        t[i] = (kv_t)field;                                                     \
        (void)val;                                                              \
        int rc_ = hdr_decode_kv(t, 7, &h, why, sizeof why);                     \
        XC_CHECK(rc_ == (code), "%s: got %s (%s)", text, xc_errname(rc_), why); \
        XC_CHECK(h.has_seq == (i != 2 || (code) == 0), "%s: seq echo", text);   \
    } while (0)
    CASE(0, ((kv_t){"v", 'u', 2, 0}), 0, XC_EVERSION, "v = 2");
    CASE(0, ((kv_t){"v", 's', 0, "1"}), 0, XC_EPROTO, "v as string");
    CASE(0, ((kv_t){"w", 'u', 1, 0}), 0, XC_EPROTO, "v missing");
    CASE(1, ((kv_t){"type", 's', 0, "ack"}), 0, XC_EPROTO, "type ack");
    CASE(2, ((kv_t){"seq", 'i', (uint64_t)-1, 0}), 0, XC_EPROTO, "negative seq");
    CASE(3, ((kv_t){"n", 'u', 0, 0}), 0, XC_EPROTO, "n = 0");
    CASE(3, ((kv_t){"n", 'f', 4, 0}), 0, XC_EPROTO, "n float");
    CASE(4, ((kv_t){"d", 'u', 0, 0}), 0, XC_EPROTO, "d = 0");
    CASE(5, ((kv_t){"dtype", 's', 0, "f64"}), 0, XC_EDTYPE, "dtype f64");
    CASE(5, ((kv_t){"dtype", 'u', 3, 0}), 0, XC_EPROTO, "dtype int");
    CASE(5, ((kv_t){"dtyp", 's', 0, "f32"}), 0, XC_EPROTO, "dtype missing");
    CASE(6, ((kv_t){"layout", 's', 0, "2nd"}), 0, XC_EPROTO, "layout");
    CASE(6, ((kv_t){"has_tokens", 'u', 1, 0}), 0, XC_EPROTO, "has_tokens int");
    CASE(6, ((kv_t){"producer", 's', 0,
                    "0123456789012345678901234567890123456789012345678901234567890123456789"}),
         0, XC_EPROTO, "producer too long");
    CASE(6, ((kv_t){"producer", 'n', 0, 0}), 0, 0, "producer nil");
#undef CASE
    /* v is checked before the other fields: a v2 header with other keys is a version error */
    kv_t v2[] = {{"v", 'u', 2, 0}, {"kind", 's', 0, "tensor"}};
    XC_CHECK(hdr_decode_kv(v2, 2, &h, why, sizeof why) == XC_EVERSION, "v2 first");
    const uint8_t arr[] = {0x91, 0x01};
    XC_CHECK(xc_proto_batch_hdr_decode(arr, 2, &h, why, sizeof why) == XC_EPROTO, "not a map");
    const uint8_t junk[] = {'h', 'i'};
    XC_CHECK(xc_proto_batch_hdr_decode(junk, 2, &h, why, sizeof why) == XC_EPROTO, "junk");
}

static void test_batch_check(void)
{
    xc_buf_t b;
    xc_batch_hdr_t h = hdr_make(42, 3, 4, XC_DTYPE_F32), o;
    xc_batch_limits_t lim = {.d = 4, .max_msg_bytes = 1 << 20};
    float payload[3 * 2 * 4] = {0};
    uint32_t tok[3] = {1, 2, 3}, pos[6] = {0};
    char why[256];
    xc_buf_init(&b);
    h.has_tokens = 1;
    h.has_pos = 1;
    XC_REQUIRE(xc_proto_batch_hdr_encode(&b, &h) == 0, "encode");
    xc_frame_t f[4] = {{b.data, b.len}, {payload, sizeof payload}, {tok, sizeof tok}, {pos, sizeof pos}};
    XC_CHECK(xc_proto_batch_check(f, 4, &lim, &o, why, sizeof why) == 0, "valid: %s", why);
    int rc;
    rc = xc_proto_batch_check(f, 3, &lim, &o, why, sizeof why);
    XC_CHECK(rc == XC_EPROTO && o.has_seq && o.seq == 42, "frame count: %s", xc_errname(rc));
    XC_CHECK(strstr(why, "expected 4 frames") != NULL, "reason: %s", why);
    f[1].len -= 4;
    rc = xc_proto_batch_check(f, 4, &lim, &o, why, sizeof why);
    XC_CHECK(rc == XC_ELENGTH && strstr(why, "payload is 92 bytes") != NULL, "payload: %s", why);
    f[1].len += 4;
    f[2].len = 8;
    rc = xc_proto_batch_check(f, 4, &lim, &o, why, sizeof why);
    XC_CHECK(rc == XC_ELENGTH && strstr(why, "token-id") != NULL, "tokens: %s", why);
    f[2].len = sizeof tok;
    f[3].len = 20;
    rc = xc_proto_batch_check(f, 4, &lim, &o, why, sizeof why);
    XC_CHECK(rc == XC_ELENGTH && strstr(why, "position") != NULL, "pos: %s", why);
    f[3].len = sizeof pos;
    lim.d = 8;
    rc = xc_proto_batch_check(f, 4, &lim, &o, why, sizeof why);
    XC_CHECK(rc == XC_ESHAPE && strstr(why, "d = 4") && strstr(why, "d = 8"), "shape: %s", why);
    lim.d = 4;
    lim.max_msg_bytes = 100;
    rc = xc_proto_batch_check(f, 4, &lim, &o, why, sizeof why);
    XC_CHECK(rc == XC_ETOOBIG && o.has_seq && o.seq == 42, "too big: %s", why);
    XC_CHECK(xc_proto_batch_check(f, 0, &lim, &o, why, sizeof why) == XC_EPROTO, "no frames");
    xc_buf_free(&b);
}

/* ------------------------------------------------------------- payload -- */
static void test_f16_conversion(void)
{
    int mism = 0;
    for (uint32_t u = 0; u < 65536; u++) {
        float f = xc_f16_to_f32((uint16_t)u);
#ifdef __FLT16_MAX__
        _Float16 ref;
        uint16_t uu = (uint16_t)u;
        memcpy(&ref, &uu, 2);
        if (!isnan(f) && f != (float)ref) mism++;
        if (isnan(f) != isnan((float)ref)) mism++;
#endif
        if (!isnan(f) && xc_f32_to_f16(f) != u) mism++;
    }
    XC_CHECK(mism == 0, "%d half patterns mismatch", mism);
#ifdef __FLT16_MAX__
    /* rounding of arbitrary floats against the compiler's conversion */
    int bad = 0;
    for (int i = 0; i < 200000; i++) {
        uint32_t u = (uint32_t)rnd();
        float f;
        memcpy(&f, &u, 4);
        if (isnan(f)) continue;
        _Float16 ref = (_Float16)f;
        uint16_t ru;
        memcpy(&ru, &ref, 2);
        if (xc_f32_to_f16(f) != ru) bad++;
    }
    XC_CHECK(bad == 0, "%d f32->f16 roundings differ from the compiler's", bad);
#endif
    XC_CHECK(xc_f32_to_f16(65520.f) == 0x7c00, "65520 rounds to Inf");
    XC_CHECK(xc_f32_to_f16(65519.f) == 0x7bff, "65519 rounds to max");
    XC_CHECK(xc_f32_to_f16(5.9604645e-08f) == 0x0001, "min subnormal");
    XC_CHECK(xc_f32_to_f16(2.9802322e-08f) == 0x0000, "half of min subnormal ties to 0");
    XC_CHECK((xc_f32_to_f16(NAN) & 0x7c00) == 0x7c00 && (xc_f32_to_f16(NAN) & 0x3ff), "NaN");
}

static void test_bf16_conversion(void)
{
    int bad = 0;
    for (uint32_t u = 0; u < 65536; u++) {
        float f = xc_bf16_to_f32((uint16_t)u);
        if (!isnan(f) && xc_f32_to_bf16(f) != u) bad++;
    }
    XC_CHECK(bad == 0, "%d bf16 patterns do not round-trip", bad);
    bad = 0;
    for (int i = 0; i < 200000; i++) { /* nearest of the two neighbours, ties to even */
        uint32_t u = (uint32_t)rnd() & 0x7f7fffff;
        float f;
        memcpy(&f, &u, 4);
        uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
        double vh = hi == 0x7f80 ? ldexp(1.0, 128) : (double)xc_bf16_to_f32(hi); /* IEEE overflow */
        double dl = fabs((double)f - xc_bf16_to_f32(lo)), dh = fabs(vh - f);
        uint16_t want = dl < dh ? lo : dh < dl ? hi : (lo & 1 ? hi : lo);
        if (xc_f32_to_bf16(f) != want) bad++;
    }
    XC_CHECK(bad == 0, "%d f32->bf16 roundings wrong", bad);
}

static void test_payload_nonfinite(void)
{
    xc_batch_hdr_t h = hdr_make(1, 3, 4, XC_DTYPE_F32);
    float src[24], dst[24];
    uint8_t p16[96];
    char why[256];
    for (int i = 0; i < 24; i++) src[i] = (float)i * 0.5f - 3.f;
    for (int t = 0; t < 3; t++) {
        h.dtype = (xc_dtype_t)t;
        xc_proto_f32_to_payload(src, 24, h.dtype, p16);
        XC_CHECK(xc_proto_payload_to_f32(&h, h.dtype == XC_DTYPE_F32 ? (void *)src : p16, dst, why,
                                         sizeof why) == 0,
                 "%s clean: %s", xc_dtype_name(h.dtype), why);
        XC_CHECK(memcmp(src, dst, sizeof src) == 0, "%s values exact", xc_dtype_name(h.dtype));
    }
    src[1 * 8 + 4 + 2] = NAN; /* token 1, chat, dim 2 */
    src[2 * 8 + 1] = INFINITY;
    for (int t = 0; t < 3; t++) {
        h.dtype = (xc_dtype_t)t;
        uint8_t buf[96];
        xc_proto_f32_to_payload(src, 24, h.dtype, buf);
        int rc = xc_proto_payload_to_f32(&h, buf, dst, why, sizeof why);
        XC_CHECK(rc == XC_ENONFINITE, "%s: %s", xc_dtype_name(h.dtype), xc_errname(rc));
        XC_CHECK(strcmp(why, "token 1, chat, dim 2: NaN") == 0, "%s reason: %s",
                 xc_dtype_name(h.dtype), why);
    }
    src[1 * 8 + 4 + 2] = 0;
    h.dtype = XC_DTYPE_F32;
    XC_CHECK(xc_proto_payload_to_f32(&h, src, dst, why, sizeof why) == XC_ENONFINITE &&
                 strcmp(why, "token 2, base, dim 1: +Inf") == 0,
             "inf reason: %s", why);
    /* unaligned source */
    uint8_t un[4 * 24 + 1];
    src[2 * 8 + 1] = 1;
    h.dtype = XC_DTYPE_F32;
    memcpy(un + 1, src, sizeof src);
    XC_CHECK(xc_proto_payload_to_f32(&h, un + 1, dst, why, sizeof why) == 0 &&
                 memcmp(dst, src, sizeof src) == 0,
             "unaligned");
}

/* ------------------------------------------------------------- replies -- */
static void test_ack_nack(void)
{
    xc_buf_t b;
    xc_ingest_reply_t r;
    xc_batch_hdr_t h = hdr_make(77, 1, 1, XC_DTYPE_F32);
    char why[128];
    xc_buf_init(&b);
    XC_REQUIRE(xc_proto_ack_encode(&b, 5, 2048, 3) == 0, "ack");
    XC_REQUIRE(xc_proto_ingest_reply_decode(b.data, b.len, &r, why, sizeof why) == 0, "%s", why);
    XC_CHECK(r.ack && r.seq == 5 && r.n == 2048 && r.credit == 3, "ack fields");
    xc_buf_reset(&b);
    h.has_seq = 1;
    XC_REQUIRE(xc_proto_nack_encode(&b, &h, XC_ENONFINITE, "token 0, base, dim 0: NaN") == 0, "nack");
    XC_REQUIRE(xc_proto_ingest_reply_decode(b.data, b.len, &r, why, sizeof why) == 0, "%s", why);
    XC_CHECK(!r.ack && r.has_seq && r.seq == 77 && r.code == XC_ENONFINITE, "nack fields");
    XC_CHECK(strcmp(r.reason, "token 0, base, dim 0: NaN") == 0, "reason %s", r.reason);
    xc_buf_reset(&b);
    XC_REQUIRE(xc_proto_nack_encode(&b, NULL, XC_EPROTO, NULL) == 0, "nack without seq");
    XC_REQUIRE(xc_proto_ingest_reply_decode(b.data, b.len, &r, why, sizeof why) == 0, "%s", why);
    XC_CHECK(!r.ack && !r.has_seq && r.code == XC_EPROTO && strcmp(r.reason, xc_strerror(XC_EPROTO)) == 0,
             "defaults");
    XC_CHECK(xc_proto_errcode("XC_ENOPE", 8) == XC_EPROTO, "unknown name");
    XC_CHECK(xc_proto_errcode("XC_ESHAPE", 9) == XC_ESHAPE, "known name");
    xc_buf_free(&b);
}

static void test_request_reply(void)
{
    xc_buf_t b, rb;
    xc_mpw_t w;
    xc_request_t req;
    xc_mp_doc_t *doc = NULL;
    char why[256];
    uint64_t j;
    xc_buf_init(&b);
    xc_buf_init(&rb);
    xc_mpw_init(&w, &b);
    xc_proto_request_begin(&w, "latent", 12);
    xc_mpw_kv_uint(&w, "j", 3);
    xc_mpw_map_end(&w);
    XC_REQUIRE(xc_mpw_finish(&w) == 0, "encode request");
    XC_REQUIRE(xc_proto_request_decode(b.data, b.len, &req, why, sizeof why) == 0, "%s", why);
    XC_CHECK(req.op == XC_OP_LATENT && strcmp(req.op_name, "latent") == 0, "op");
    XC_CHECK(xc_mp_as_u64(xc_mp_get(req.root, "j"), &j) == 0 && j == 3, "arg j");
    xc_mpw_init(&w, &rb);
    xc_proto_reply_begin(&w, &req);
    xc_mpw_kv_uint(&w, "j", 3);
    xc_mpw_map_end(&w);
    XC_REQUIRE(xc_mpw_finish(&w) == 0, "encode reply");
    xc_proto_request_free(&req);
    XC_REQUIRE(xc_proto_reply_decode(rb.data, rb.len, &doc, why, sizeof why) == 0, "%s", why);
    int64_t id;
    XC_CHECK(xc_mp_as_i64(xc_mp_get(xc_mp_root(doc), "id"), &id) == 0 && id == 12, "id echoed");
    XC_CHECK(xc_mp_str_eq(xc_mp_get(xc_mp_root(doc), "op"), "latent"), "op echoed");
    xc_mp_doc_free(&doc);

    /* unknown op with a string id: error reply echoes both */
    kv_t unk[] = {{"v", 'u', 1, 0}, {"op", 's', 0, "frobnicate"}, {"id", 's', 0, "abc"}};
    enc_map(&b, unk, 3);
    int rc = xc_proto_request_decode(b.data, b.len, &req, why, sizeof why);
    XC_CHECK(rc == XC_EUNKNOWN && strstr(why, "frobnicate") && strstr(why, "status"),
             "unknown: %s %s", xc_errname(rc), why);
    xc_buf_reset(&rb);
    XC_REQUIRE(xc_proto_error_encode(&rb, &req, rc, why) == 0, "error encode");
    xc_proto_request_free(&req);
    rc = xc_proto_reply_decode(rb.data, rb.len, &doc, why, sizeof why);
    XC_CHECK(rc == XC_EUNKNOWN && strstr(why, "unknown op"), "remote code: %d %s", rc, why);
    XC_CHECK(xc_mp_str_eq(xc_mp_get(xc_mp_root(doc), "id"), "abc"), "string id echoed");
    XC_CHECK(xc_mp_str_eq(xc_mp_get(xc_mp_root(doc), "code"), "XC_EUNKNOWN"), "code name");
    xc_mp_doc_free(&doc);

    kv_t nov[] = {{"op", 's', 0, "status"}};
    enc_map(&b, nov, 1);
    XC_CHECK(xc_proto_request_decode(b.data, b.len, &req, why, sizeof why) == XC_EPROTO, "no v");
    xc_proto_request_free(&req);
    kv_t v9[] = {{"v", 'u', 9, 0}, {"op", 's', 0, "status"}};
    enc_map(&b, v9, 2);
    XC_CHECK(xc_proto_request_decode(b.data, b.len, &req, why, sizeof why) == XC_EVERSION, "v9");
    xc_proto_request_free(&req);
    kv_t noop[] = {{"v", 'u', 1, 0}, {"op", 'u', 1, 0}};
    enc_map(&b, noop, 2);
    XC_CHECK(xc_proto_request_decode(b.data, b.len, &req, why, sizeof why) == XC_EPROTO, "op int");
    xc_proto_request_free(&req);
    XC_CHECK(xc_proto_request_decode("\x01", 1, &req, why, sizeof why) == XC_EPROTO, "not a map");
    xc_proto_request_free(&req);
    static uint8_t huge[XC_PROTO_REQUEST_MAX + 1];
    XC_CHECK(xc_proto_request_decode(huge, sizeof huge, &req, why, sizeof why) == XC_ETOOBIG, "big");
    xc_proto_request_free(&req);
    XC_CHECK(xc_proto_reply_decode("\x80", 1, &doc, why, sizeof why) == XC_EPROTO && !doc, "no v");
    for (int i = 0; i < XC_OP__COUNT; i++)
        XC_CHECK(xc_proto_op_parse(xc_proto_op_name((xc_op_t)i), strlen(xc_proto_op_name((xc_op_t)i))) == i,
                 "op table %d", i);
    xc_buf_free(&b);
    xc_buf_free(&rb);
}

static void test_event_json(void)
{
    xc_buf_t b, j;
    xc_mpw_t w;
    xc_mp_doc_t *doc = NULL;
    char topic[16], why[128];
    xc_buf_init(&b);
    xc_buf_init(&j);
    xc_mpw_init(&w, &b);
    xc_proto_event_begin(&w, XC_EVENT_ALERT, "inst\"1", 1700000000.5);
    xc_mpw_kv_str(&w, "kind", "refused");
    xc_mpw_kv_double(&w, "nan", NAN);
    xc_mpw_str(&w, "fve");
    xc_mpw_array_begin(&w);
    xc_mpw_double(&w, 0.1);
    xc_mpw_double(&w, -2.5e-7);
    xc_mpw_array_end(&w);
    xc_mpw_kv_str(&w, "ctl", "a\nb");
    xc_mpw_map_end(&w);
    XC_REQUIRE(xc_mpw_finish(&w) == 0, "encode");
    XC_REQUIRE(xc_proto_event_decode("alert", 5, b.data, b.len, topic, sizeof topic, &doc, why,
                                     sizeof why) == 0, "%s", why);
    XC_CHECK(strcmp(topic, "alert") == 0, "topic");
    XC_REQUIRE(xc_mp_to_json(xc_mp_root(doc), &j, 0) == 0, "json");
    xc_buf_append(&j, "", 1);
    const char *want = "{\"v\":1,\"type\":\"alert\",\"name\":\"inst\\\"1\",\"time\":1700000000.5,"
                       "\"kind\":\"refused\",\"nan\":null,\"fve\":[0.1,-2.5e-07],\"ctl\":\"a\\nb\"}";
    XC_CHECK(strcmp((char *)j.data, want) == 0, "json: %s", (char *)j.data);
    xc_mp_doc_free(&doc);
    XC_CHECK(xc_proto_event_decode("a-very-long-topic-name", 22, b.data, b.len, topic, sizeof topic,
                                   &doc, why, sizeof why) == XC_ETOOBIG, "long topic");
    xc_buf_free(&b);
    xc_buf_free(&j);
}

/* ------------------------------------------------------------- JSON -- */
/* Map keys that are maps, nested 26 deep: 53 bytes that used to render to
 * 134 MB (each level re-rendered and re-escaped the key below it). The
 * rendering must be linear: a few bytes per input byte, compact or indented. */
static void test_json_nested_keys_linear(void)
{
    uint8_t m[53];
    memset(m, 0x81, 26);      /* fixmap of 1, whose key is the next map */
    m[26] = 0xc0;             /* the innermost key: nil */
    memset(m + 27, 0x00, 26); /* every value: 0 */
    xc_mp_doc_t *doc = NULL;
    char why[160];
    XC_REQUIRE(xc_mp_doc_parse(m, sizeof m, &doc, why, sizeof why) == 0, "parse: %s", why);
    for (int indent = 0; indent <= 2; indent += 2) {
        xc_buf_t j, back;
        xc_buf_init(&j);
        xc_buf_init(&back);
        xc_json_opts_t o = {indent, 0, 0};
        XC_CHECK(xc_mp_json(xc_mp_root(doc), &j, &o, why, sizeof why) == 0, "render: %s", why);
        XC_CHECK(j.len <= 8 * sizeof m, "indent %d: %zu bytes of JSON from %zu bytes", indent, j.len, sizeof m);
        XC_CHECK(xc_json_to_mp((const char *)j.data, j.len, &back, why, sizeof why) == 0, "valid JSON: %s", why);
        xc_buf_free(&j);
        xc_buf_free(&back);
    }
    xc_buf_t j;
    xc_buf_init(&j);
    XC_CHECK(xc_mp_to_json(xc_mp_root(doc), &j, 0) == 0 && j.len == 11 && memcmp(j.data, "{\"<map>\":0}", 11) == 0,
             "outer map: %.*s", (int)j.len, (const char *)j.data);
    xc_buf_free(&j);
    xc_mp_doc_free(&doc);
}

/* Keys that are not strings render as strings, each once; caps give errors
 * that say which and leave the output as it was. */
static void test_json_keys_and_caps(void)
{
    xc_buf_t b, j;
    xc_mpw_t w;
    xc_mp_doc_t *doc = NULL;
    char why[160] = "";
    xc_buf_init(&b);
    xc_buf_init(&j);
    xc_mpw_init(&w, &b);
    xc_mpw_map_begin(&w);
    xc_mpw_int(&w, 5), xc_mpw_str(&w, "five");
    xc_mpw_int(&w, -2), xc_mpw_int(&w, 1);
    xc_mpw_bool(&w, 1), xc_mpw_int(&w, 2);
    xc_mpw_nil(&w), xc_mpw_int(&w, 3);
    xc_mpw_double(&w, 0.5), xc_mpw_int(&w, 4);
    xc_mpw_bin(&w, "\x01\xff", 2), xc_mpw_int(&w, 5);
    xc_mpw_array_begin(&w), xc_mpw_int(&w, 1), xc_mpw_array_end(&w), xc_mpw_int(&w, 6);
    xc_mpw_map_begin(&w), xc_mpw_map_end(&w), xc_mpw_int(&w, 7);
    xc_mpw_kv_str(&w, "s", "a\x01\x7f\xff\"");
    xc_mpw_map_end(&w);
    XC_REQUIRE(xc_mpw_finish(&w) == 0 && xc_mp_doc_parse(b.data, b.len, &doc, why, sizeof why) == 0, "%s", why);
    XC_REQUIRE(xc_mp_json(xc_mp_root(doc), &j, NULL, why, sizeof why) == 0, "%s", why);
    xc_buf_append(&j, "", 1);
    const char *want = "{\"5\":\"five\",\"-2\":1,\"true\":2,\"null\":3,\"0.5\":4,\"01ff\":5,\"<array>\":6,\"<map>\":7,"
                       "\"s\":\"a\\u0001\\u007f\xef\xbf\xbd\\\"\"}";
    XC_CHECK(strcmp((const char *)j.data, want) == 0, "got %s", (const char *)j.data);
    /* the CLI's style: base64 bins, shortest floats with .0 */
    xc_buf_reset(&j);
    xc_json_opts_t cli = {0, XC_JSON_SHORTEST | XC_JSON_BASE64, 0};
    XC_CHECK(xc_mp_json(xc_mp_at(xc_mp_root(doc), 0), &j, &cli, why, sizeof why) == XC_ENOTFOUND, "NONE node");
    xc_buf_reset(&j);
    XC_CHECK(xc_mp_json(xc_mp_root(doc), &j, &cli, why, sizeof why) == 0, "%s", why);
    xc_buf_append(&j, "", 1);
    XC_CHECK(strstr((const char *)j.data, "\"Af8=\":5"), "base64 key: %s", (const char *)j.data);
    /* the size cap: an error naming it, nothing appended */
    xc_buf_reset(&j);
    xc_buf_append(&j, "keep", 4);
    xc_json_opts_t small = {2, 0, 40};
    XC_CHECK(xc_mp_json(xc_mp_root(doc), &j, &small, why, sizeof why) == XC_ETOOBIG && strstr(why, "40 bytes"),
             "cap: %s", why);
    XC_CHECK(j.len == 4 && !j.err, "output left as it was (%zu bytes)", j.len);
    xc_mp_doc_free(&doc);
    xc_buf_free(&b);
    xc_buf_free(&j);
}

/* -------------------------------------------------------------- vectors -- */
/* A value as compact JSON like xc_mp_to_json, except that a bin becomes
 * {"$bin": "<hex>"} (so a reader can tell bytes from a string). */
static void vec_json(xc_mp_node_t n, xc_buf_t *out)
{
    static const char hex[] = "0123456789abcdef";
    xc_mp_type_t t = xc_mp_type(n);
    if (t == XC_MP_BIN) {
        const uint8_t *p;
        size_t len;
        xc_mp_as_bin(n, (const void **)&p, &len);
        xc_buf_append(out, "{\"$bin\":\"", 9);
        for (size_t i = 0; i < len; i++) {
            char e[2] = {hex[p[i] >> 4], hex[p[i] & 15]};
            xc_buf_append(out, e, 2);
        }
        xc_buf_append(out, "\"}", 2);
    } else if (t == XC_MP_MAP) {
        xc_buf_append(out, "{", 1);
        for (size_t i = 0; i < xc_mp_len(n); i++) {
            if (i) xc_buf_append(out, ",", 1);
            xc_mp_to_json(xc_mp_map_key(n, i), out, 0);
            xc_buf_append(out, ":", 1);
            vec_json(xc_mp_map_val(n, i), out);
        }
        xc_buf_append(out, "}", 1);
    } else if (t == XC_MP_ARRAY) {
        xc_buf_append(out, "[", 1);
        for (size_t i = 0; i < xc_mp_len(n); i++) {
            if (i) xc_buf_append(out, ",", 1);
            vec_json(xc_mp_at(n, i), out);
        }
        xc_buf_append(out, "]", 1);
    } else {
        xc_mp_to_json(n, out, 0);
    }
}

/* Each vector: encoded bytes (hex) and their meaning as JSON. */
static void vec_emit(xc_buf_t *out, int *first, const char *name, const char *kind,
                     const char *note, const void *bytes, size_t len, int is_msgpack)
{
    static const char hex[] = "0123456789abcdef";
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s\n    {\"name\": \"%s\", \"kind\": \"%s\",\n     \"note\": \"%s\",\n     \"hex\": \"",
             *first ? "" : ",", name, kind, note);
    *first = 0;
    xc_buf_append(out, tmp, strlen(tmp));
    for (size_t i = 0; i < len; i++) {
        char e[2] = {hex[((const uint8_t *)bytes)[i] >> 4], hex[((const uint8_t *)bytes)[i] & 15]};
        xc_buf_append(out, e, 2);
    }
    xc_buf_append(out, "\"", 1);
    if (is_msgpack) {
        xc_mp_doc_t *doc = NULL;
        char why[64];
        xc_buf_append(out, ",\n     \"value\": ", 16);
        if (xc_mp_doc_parse(bytes, len, &doc, why, sizeof why) == 0)
            vec_json(xc_mp_root(doc), out);
        xc_mp_doc_free(&doc);
    }
    xc_buf_append(out, "}", 1);
}

static void vec_req(xc_buf_t *out, int *first, const char *name, const char *note, const char *op,
                    int64_t id, const char *k, uint64_t kv, const char *k2, const char *sv)
{
    xc_buf_t b;
    xc_mpw_t w;
    xc_buf_init(&b);
    xc_mpw_init(&w, &b);
    xc_proto_request_begin(&w, op, id);
    if (k) xc_mpw_kv_uint(&w, k, kv);
    if (k2) xc_mpw_kv_str(&w, k2, sv);
    xc_mpw_map_end(&w);
    xc_mpw_finish(&w);
    vec_emit(out, first, name, "control.request", note, b.data, b.len, 1);
    xc_buf_free(&b);
}

/* Remote access (PROTOCOL.md 2.1, 2.2): checkpoints, fetch, table. */
static void vectors_remote(xc_buf_t *out, int *first)
{
    xc_buf_t b, rb;
    xc_mpw_t w;
    xc_request_t req;
    char why[128];
    xc_buf_init(&b);
    xc_buf_init(&rb);

    xc_mpw_init(&w, &b);
    xc_proto_request_begin(&w, "checkpoints", 11);
    xc_mpw_map_end(&w);
    xc_mpw_finish(&w);
    vec_emit(out, first, "req_checkpoints", "control.request", "list the checkpoint files", b.data, b.len, 1);
    xc_proto_request_decode(b.data, b.len, &req, why, sizeof why);
    xc_mpw_init(&w, &rb);
    xc_proto_reply_begin(&w, &req);
    xc_mpw_str(&w, "checkpoints");
    xc_mpw_array_begin(&w);
    xc_mpw_map_begin(&w);
    xc_mpw_kv_str(&w, "name", "default-000001000.safetensors");
    xc_mpw_kv_uint(&w, "size", 2097160);
    xc_mpw_kv_int(&w, "step", 1000);
    xc_mpw_kv_str(&w, "kind", "checkpoint");
    xc_mpw_kv_double(&w, "mtime", 1700000000.5);
    xc_mpw_kv_str(&w, "checksum", "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    xc_mpw_map_end(&w);
    xc_mpw_array_end(&w);
    xc_mpw_kv_str(&w, "newest", "default-000001000.safetensors");
    xc_mpw_kv_bool(&w, "truncated", 0);
    xc_mpw_map_end(&w);
    xc_mpw_finish(&w);
    vec_emit(out, first, "reply_checkpoints", "control.reply", "one retained checkpoint", rb.data, rb.len, 1);
    xc_proto_request_free(&req);

    xc_buf_reset(&b);
    xc_mpw_init(&w, &b);
    xc_proto_request_begin(&w, "fetch", 12);
    xc_mpw_kv_str(&w, "file", "default-000001000.safetensors");
    xc_mpw_kv_uint(&w, "offset", 2097152);
    xc_mpw_kv_uint(&w, "length", 1048576);
    xc_mpw_map_end(&w);
    xc_mpw_finish(&w);
    vec_emit(out, first, "req_fetch", "control.request", "the chunk at 2 MiB of a checkpoint", b.data, b.len, 1);
    xc_proto_request_decode(b.data, b.len, &req, why, sizeof why);
    xc_buf_reset(&rb);
    xc_mpw_init(&w, &rb);
    xc_proto_reply_begin(&w, &req);
    xc_mpw_kv_str(&w, "name", "default-000001000.safetensors");
    xc_mpw_kv_uint(&w, "size", 2097160);
    xc_mpw_kv_str(&w, "checksum", "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    xc_mpw_kv_int(&w, "step", 1000);
    xc_mpw_kv_double(&w, "mtime", 1700000000.5);
    xc_mpw_kv_uint(&w, "offset", 2097152);
    xc_mpw_kv_bool(&w, "eof", 1);
    const uint8_t chunk[8] = {0x20, 0x20, 0x20, 0x20, 0x00, 0x00, 0x80, 0x3f};
    xc_mpw_str(&w, "data");
    xc_mpw_bin(&w, chunk, sizeof chunk);
    xc_mpw_map_end(&w);
    xc_mpw_finish(&w);
    vec_emit(out, first, "reply_fetch", "control.reply", "the last 8 bytes of the file (eof)", rb.data, rb.len, 1);
    xc_buf_reset(&rb);
    xc_proto_error_encode(&rb, &req, XC_ENOTFOUND,
                          "no checkpoint 'default-000001000.safetensors' (it may have been removed; op checkpoints "
                          "lists the retained ones)");
    vec_emit(out, first, "reply_fetch_ENOTFOUND", "control.reply", "the file was removed (retention)", rb.data,
             rb.len, 1);
    xc_proto_request_free(&req);

    xc_buf_reset(&b);
    xc_mpw_init(&w, &b);
    xc_proto_request_begin(&w, "table", 13);
    xc_mpw_str(&w, "fields");
    xc_mpw_array_begin(&w);
    xc_mpw_str(&w, "delta_norm");
    xc_mpw_str(&w, "last_step");
    xc_mpw_str(&w, "class");
    xc_mpw_array_end(&w);
    xc_mpw_kv_uint(&w, "start", 4);
    xc_mpw_kv_uint(&w, "count", 2);
    xc_mpw_map_end(&w);
    xc_mpw_finish(&w);
    vec_emit(out, first, "req_table", "control.request", "three columns of latents 4 and 5", b.data, b.len, 1);
    xc_proto_request_decode(b.data, b.len, &req, why, sizeof why);
    xc_buf_reset(&rb);
    xc_mpw_init(&w, &rb);
    xc_proto_reply_begin(&w, &req);
    xc_mpw_kv_int(&w, "snapshot_step", 1000);
    xc_mpw_kv_int(&w, "dict_size", 512);
    xc_mpw_kv_uint(&w, "n", 2);
    xc_mpw_kv_uint(&w, "start", 4);
    xc_mpw_kv_int(&w, "scaling_step", -1);
    xc_mpw_kv_uint(&w, "scaling_tokens", 0);
    xc_mpw_str(&w, "fields");
    xc_mpw_array_begin(&w);
    xc_mpw_str(&w, "delta_norm");
    xc_mpw_str(&w, "last_step");
    xc_mpw_str(&w, "class");
    xc_mpw_array_end(&w);
    xc_mpw_str(&w, "dtypes");
    xc_mpw_map_begin(&w);
    xc_mpw_kv_str(&w, "delta_norm", "f32");
    xc_mpw_kv_str(&w, "last_step", "i64");
    xc_mpw_kv_str(&w, "class", "u8");
    xc_mpw_map_end(&w);
    xc_mpw_str(&w, "columns");
    xc_mpw_map_begin(&w);
    const float dn[2] = {0.5f, 0.9375f};
    const int64_t ls[2] = {-1, 998};
    const uint8_t cl[2] = {1, 2};
    xc_mpw_str(&w, "delta_norm");
    xc_mpw_bin(&w, dn, sizeof dn);
    xc_mpw_str(&w, "last_step");
    xc_mpw_bin(&w, ls, sizeof ls);
    xc_mpw_str(&w, "class");
    xc_mpw_bin(&w, cl, sizeof cl);
    xc_mpw_map_end(&w);
    xc_mpw_map_end(&w);
    xc_mpw_finish(&w);
    vec_emit(out, first, "reply_table", "control.reply",
             "delta_norm f32 (0.5, 0.9375), last_step i64 (-1, 998), class u8 (1 shared, 2 chat-only)", rb.data,
             rb.len, 1);
    xc_proto_request_free(&req);
    xc_buf_free(&b);
    xc_buf_free(&rb);
}

/* --------------------------------------------------------------- examples -- */
/* One example map, keys in the daemon's order (daemon/examples.c encode_one). */
static void ex_map(xc_mpw_t *w, double act, int64_t step, const char *stream, uint32_t doc, uint32_t pos,
                   uint32_t token, const int64_t *toks, int nt, int at, const char *const *pieces)
{
    xc_mpw_map_begin(w);
    xc_mpw_kv_double(w, "act", act);
    xc_mpw_kv_int(w, "step", step);
    xc_mpw_kv_str(w, "producer", "lm");
    xc_mpw_kv_str(w, "stream", stream);
    xc_mpw_kv_uint(w, "doc", doc);
    xc_mpw_kv_uint(w, "pos", pos);
    xc_mpw_kv_uint(w, "token", token);
    xc_mpw_str(w, "tokens");
    xc_mpw_array_begin(w);
    for (int i = 0; i < nt; i++) {
        if (toks[i] < 0) xc_mpw_nil(w);
        else xc_mpw_uint(w, (uint64_t)toks[i]);
    }
    xc_mpw_array_end(w);
    xc_mpw_kv_int(w, "at", at);
    if (pieces) {
        xc_mpw_str(w, "pieces");
        xc_mpw_array_begin(w);
        for (int i = 0; i < nt; i++) xc_mpw_str(w, pieces[i]); /* NULL: nil */
        xc_mpw_array_end(w);
    }
    xc_mpw_map_end(w);
}

/* The examples reply of the vectors: latent 7 with W = 2, two top examples
 * (a chat one with a vocabulary, a web one without, whose right neighbour's id
 * was not sent) and one random example. tests/test_examples.c checks that the
 * daemon's encoder writes exactly these bytes for the same stream. */
static const char *const EX_RENDERED[3] = {"<start_of_turn>Hello[[,]] world\\n", "[[<7>]]<?>", "\\n\\t[[<9>]]"};

static void examples_reply(xc_buf_t *rb, int64_t id)
{
    xc_buf_t b;
    xc_mpw_t w;
    xc_request_t req;
    char why[64];
    xc_buf_init(&b);
    xc_mpw_init(&w, &b);
    xc_proto_request_begin(&w, "examples", id);
    xc_mpw_kv_uint(&w, "j", 7);
    xc_mpw_map_end(&w);
    xc_mpw_finish(&w);
    xc_proto_request_decode(b.data, b.len, &req, why, sizeof why);
    xc_mpw_init(&w, rb);
    xc_proto_reply_begin(&w, &req);
    xc_mpw_kv_int(&w, "j", 7);
    xc_mpw_kv_int(&w, "window", 2);
    xc_mpw_kv_int(&w, "top_n", 2);
    xc_mpw_kv_int(&w, "random_n", 1);
    xc_mpw_kv_uint(&w, "seen", 3);
    static const int64_t t0[] = {5, 0, 1, 2, 3}, t1[] = {7, -1}, t2[] = {3, 4, 9};
    static const char *const p0[] = {"<start_of_turn>", "Hello", ",", " world", "\n"}, *const p2[] = {"\n", "\t", NULL};
    xc_mpw_str(&w, "top");
    xc_mpw_array_begin(&w);
    ex_map(&w, 3.5, 12, "chat", 0, 2, 1, t0, 5, 2, p0);
    ex_map(&w, 2.25, 12, "web", 1, 0, 7, t1, 2, 0, NULL);
    xc_mpw_array_end(&w);
    xc_mpw_str(&w, "random");
    xc_mpw_array_begin(&w);
    ex_map(&w, 0.25, 11, "chat", 0, 6, 9, t2, 3, 2, p2);
    xc_mpw_array_end(&w);
    xc_mpw_map_end(&w);
    xc_mpw_finish(&w);
    xc_proto_request_free(&req);
    xc_buf_free(&b);
}

/* Reopens the object vec_emit just closed and appends extra JSON fields. */
static void vec_extra(xc_buf_t *out, const char *json)
{
    out->len--;
    xc_buf_append(out, json, strlen(json));
    xc_buf_append(out, "}", 1);
}

/* Context for examples (PROTOCOL.md 1.1 stream, 1.5 vocab, 2.3 examples). */
static void vectors_examples(xc_buf_t *out, int *first)
{
    xc_buf_t b;
    xc_mpw_t w;
    xc_buf_init(&b);
    xc_batch_hdr_t h = hdr_make(3, 4, 2, XC_DTYPE_F32);
    strcpy(h.producer, "lm-server");
    strcpy(h.stream, "chat");
    h.has_tokens = h.has_pos = 1;
    xc_proto_batch_hdr_encode(&b, &h);
    vec_emit(out, first, "batch_header_stream", "ingest.header",
             "4 tokens, d = 2, f32, token ids and positions, stream tag chat", b.data, b.len, 1);

    xc_buf_reset(&b);
    memset(&h, 0, sizeof h);
    strcpy(h.producer, "lm-server");
    strcpy(h.stream, "chat");
    h.seq = 4;
    h.n = 6;
    xc_proto_vocab_hdr_encode(&b, &h);
    vec_emit(out, first, "vocab_header", "ingest.vocab",
             "the vocabulary of stream chat, ids 0..5; frames: header, lengths, bytes", b.data, b.len, 1);
    vec_extra(out, ",\n     \"pieces\": [\"Hello\", \",\", \" world\", \"\\n\", \"\\t\", \"<start_of_turn>\"],"
                   "\n     \"lengths_hex\": \"05000000010000000600000001000000010000000f000000\","
                   "\n     \"bytes_hex\": \"48656c6c6f2c20776f726c640a093c73746172745f6f665f7475726e3e\"");

    xc_buf_reset(&b);
    xc_mpw_init(&w, &b);
    xc_proto_request_begin(&w, "examples", 13);
    xc_mpw_kv_uint(&w, "j", 7);
    xc_mpw_kv_uint(&w, "n", 5);
    xc_mpw_map_end(&w);
    xc_mpw_finish(&w);
    vec_emit(out, first, "req_examples", "control.request", "latent 7's examples, at most 5 of each kind", b.data,
             b.len, 1);
    xc_buf_reset(&b);
    examples_reply(&b, 13);
    vec_emit(out, first, "reply_examples", "control.reply",
             "two top examples and one random one; rendered: each example's text line (top, then random)", b.data,
             b.len, 1);
    char json[256];
    snprintf(json, sizeof json, ",\n     \"rendered\": [\"%s\", \"%s\", \"%s\"]", "<start_of_turn>Hello[[,]] world\\\\n",
             "[[<7>]]<?>", "\\\\n\\\\t[[<9>]]");
    vec_extra(out, json);
    vec_req(out, first, "req_examples_reset", "forget latent 7's examples", "examples_reset", 14, "j", 7, NULL, NULL);
    xc_buf_free(&b);
}

/* The C renderer gives the vectors' lines; a reply without pieces renders ids. */
static void test_examples_render(void)
{
    xc_buf_t b, t;
    xc_mp_doc_t *doc = NULL;
    char why[64];
    xc_buf_init(&b);
    xc_buf_init(&t);
    examples_reply(&b, 1);
    XC_REQUIRE(xc_mp_doc_parse(b.data, b.len, &doc, why, sizeof why) == 0, "parse: %s", why);
    xc_mp_node_t r = xc_mp_root(doc);
    xc_mp_node_t exs[3] = {xc_mp_at(xc_mp_get(r, "top"), 0), xc_mp_at(xc_mp_get(r, "top"), 1),
                           xc_mp_at(xc_mp_get(r, "random"), 0)};
    for (int i = 0; i < 3; i++) {
        xc_buf_reset(&t);
        XC_CHECK(xc_proto_example_render(exs[i], &t) == 0, "render %d", i);
        xc_buf_append(&t, "", 1);
        XC_CHECK(strcmp((const char *)t.data, EX_RENDERED[i]) == 0, "example %d: '%s' vs '%s'", i, (const char *)t.data,
                 EX_RENDERED[i]);
    }
    XC_CHECK(xc_proto_example_render(r, &t) == XC_EINVAL, "not an example");
    xc_mp_doc_free(&doc);
    xc_buf_free(&b);
    xc_buf_free(&t);
}

/* Stream tags and vocab messages: what is refused, and why. */
static void test_stream_and_vocab(void)
{
    xc_buf_t b;
    char why[256];
    xc_batch_hdr_t h = hdr_make(1, 2, 3, XC_DTYPE_F32), g;
    xc_buf_init(&b);
    strcpy(h.stream, "chat");
    XC_REQUIRE(xc_proto_batch_hdr_encode(&b, &h) == 0, "encode");
    XC_CHECK(xc_proto_batch_hdr_decode(b.data, b.len, &g, why, sizeof why) == 0 && strcmp(g.stream, "chat") == 0,
             "stream read back: %s", why);
    XC_CHECK(!xc_proto_ingest_is_vocab(b.data, b.len), "a batch is not a vocab");
    /* a bad tag */
    xc_mpw_t w;
    xc_buf_reset(&b);
    xc_mpw_init(&w, &b);
    xc_mpw_map_begin(&w);
    xc_mpw_kv_uint(&w, "v", 1);
    xc_mpw_kv_str(&w, "type", "batch");
    xc_mpw_kv_uint(&w, "seq", 1);
    xc_mpw_kv_uint(&w, "n", 2);
    xc_mpw_kv_uint(&w, "d", 3);
    xc_mpw_kv_str(&w, "dtype", "f32");
    xc_mpw_kv_str(&w, "stream", "no spaces");
    xc_mpw_map_end(&w);
    xc_mpw_finish(&w);
    XC_CHECK(xc_proto_batch_hdr_decode(b.data, b.len, &g, why, sizeof why) == XC_EPROTO && strstr(why, "stream"),
             "bad tag: %s", why);
    /* vocab: lengths must match */
    memset(&h, 0, sizeof h);
    h.n = 2;
    h.first = 10;
    strcpy(h.stream, "web");
    xc_buf_reset(&b);
    XC_REQUIRE(xc_proto_vocab_hdr_encode(&b, &h) == 0, "vocab encode");
    XC_CHECK(xc_proto_ingest_is_vocab(b.data, b.len), "is vocab");
    uint8_t lens[8] = {1, 0, 0, 0, 2, 0, 0, 0};
    xc_frame_t f[3] = {{b.data, b.len}, {lens, 8}, {"abc", 3}};
    XC_CHECK(xc_proto_vocab_check(f, 3, 1 << 20, &g, why, sizeof why) == 0 && g.n == 2 && g.first == 10 &&
                 strcmp(g.stream, "web") == 0, "valid vocab: %s", why);
    f[2].len = 2;
    XC_CHECK(xc_proto_vocab_check(f, 3, 1 << 20, &g, why, sizeof why) == XC_ELENGTH && strstr(why, "add up"),
             "short bytes: %s", why);
    f[1].len = 4;
    XC_CHECK(xc_proto_vocab_check(f, 3, 1 << 20, &g, why, sizeof why) == XC_ELENGTH, "short lengths");
    XC_CHECK(xc_proto_vocab_check(f, 2, 1 << 20, &g, why, sizeof why) == XC_EPROTO, "two frames");
    f[1].len = 8, f[2].len = 3;
    XC_CHECK(xc_proto_vocab_check(f, 3, 16, &g, why, sizeof why) == XC_ETOOBIG && g.has_seq, "too big: %s", why);
    xc_buf_free(&b);
}

/* Builds the whole vectors.json text into out (NUL-terminated). */
static void vectors_build(xc_buf_t *out)
{
    xc_buf_t b;
    int first = 1;
    const char *head = "{\n  \"protocol\": 1,\n  \"generated_by\": \"build/tests/test_proto --vectors\",\n"
                       "  \"about\": \"Encoded messages of proto/PROTOCOL.md. hex: the exact bytes the C codec "
                       "writes (maps as map32). value: the decoded MessagePack as JSON (a bin as {\\\"$bin\\\": hex}). Payload vectors: "
                       "little-endian bytes and the float32 values they decode to. error_codes: the number of "
                       "every code a reply or nack names (include/xc_error.h).\",\n";
    xc_buf_append(out, head, strlen(head));
    /* the error codes by number, so that every client checks numbers, not only names */
    const char *ec = "  \"error_codes\": {";
    xc_buf_append(out, ec, strlen(ec));
    int ecn = 0;
#define XC_VEC_CODE(name, val, msg)                                                            \
    {                                                                                          \
        char t_[64];                                                                           \
        int n_ = snprintf(t_, sizeof t_, "%s\"%s\": %d", ecn++ ? ", " : "", #name, (int)(val)); \
        xc_buf_append(out, t_, (size_t)n_);                                                    \
    }
    XC_ERRNO_MAP(XC_VEC_CODE)
#undef XC_VEC_CODE
    const char *vh = "},\n  \"vectors\": [";
    xc_buf_append(out, vh, strlen(vh));
    xc_buf_init(&b);

    xc_batch_hdr_t h = hdr_make(0, 2, 3, XC_DTYPE_F32);
    strcpy(h.producer, "p0");
    xc_proto_batch_hdr_encode(&b, &h);
    vec_emit(out, &first, "batch_header_f32", "ingest.header", "2 tokens, d = 3, f32; payload 48 bytes",
             b.data, b.len, 1);
    xc_buf_reset(&b);
    h = hdr_make(7, 1, 2, XC_DTYPE_BF16);
    strcpy(h.producer, "gemma-2-2b/l13");
    h.has_tokens = 1;
    h.has_pos = 1;
    xc_proto_batch_hdr_encode(&b, &h);
    vec_emit(out, &first, "batch_header_bf16_tokens_pos", "ingest.header",
             "1 token, d = 2, bf16, with token-id and position frames", b.data, b.len, 1);

    /* payloads: [n=1, 2, d=2] values base (1, -2), chat (0.5, 65504) */
    const float vals[4] = {1.0f, -2.0f, 0.5f, 65504.0f};
    uint8_t pl[16];
    char note[160];
    for (int t = 0; t < 3; t++) {
        xc_proto_f32_to_payload(vals, 4, (xc_dtype_t)t, pl);
        snprintf(note, sizeof note, "[1, 2, 2] %s little-endian: base (1, -2), chat (0.5, 65504)",
                 xc_dtype_name((xc_dtype_t)t));
        char name[32];
        snprintf(name, sizeof name, "payload_%s", xc_dtype_name((xc_dtype_t)t));
        vec_emit(out, &first, name, "ingest.payload", note, pl, 4 * xc_dtype_size((xc_dtype_t)t), 0);
        const char *v = t == XC_DTYPE_BF16 ? ",\n     \"dtype\": \"bf16\", \"values\": [1.0, -2.0, 0.5, 65536.0]"
                                           : t == XC_DTYPE_F16 ? ",\n     \"dtype\": \"f16\", \"values\": [1.0, -2.0, 0.5, 65504.0]"
                                                               : ",\n     \"dtype\": \"f32\", \"values\": [1.0, -2.0, 0.5, 65504.0]";
        out->len--; /* reopen the object to add the decoded values */
        xc_buf_append(out, v, strlen(v));
        xc_buf_append(out, "}", 1);
    }

    xc_buf_reset(&b);
    xc_proto_ack_encode(&b, 0, 2, 7);
    vec_emit(out, &first, "ack", "ingest.reply", "batch seq 0 accepted, 2 tokens, 7 free queue slots",
             b.data, b.len, 1);
    struct { int code; const char *reason; int has_seq; } nacks[] = {
        {XC_ESHAPE, "batch has d = 3 but this daemon trains d = 32", 1},
        {XC_ENONFINITE, "token 1, chat, dim 2: NaN", 1},
        {XC_ELENGTH, "payload is 44 bytes but n = 2 x 2 x d = 3 x 4 (f32) needs 48", 1},
        {XC_EDTYPE, "dtype \"f64\" is not supported; send f32, f16 or bf16", 1},
        {XC_EVERSION, "protocol version 2 is not supported (this side speaks 1)", 1},
        {XC_ETOOBIG, "message is 70000000 bytes; this daemon accepts at most 67108864 (max_msg_bytes)", 1},
        {XC_EPROTO, "header is not valid MessagePack: truncated MessagePack (3 bytes)", 0},
    };
    for (size_t i = 0; i < sizeof nacks / sizeof nacks[0]; i++) {
        xc_batch_hdr_t nh = hdr_make(3, 1, 1, XC_DTYPE_F32);
        nh.has_seq = nacks[i].has_seq;
        xc_buf_reset(&b);
        xc_proto_nack_encode(&b, &nh, nacks[i].code, nacks[i].reason);
        char name[48];
        snprintf(name, sizeof name, "nack_%s", xc_errname(nacks[i].code) + 3);
        vec_emit(out, &first, name, "ingest.reply",
                 nacks[i].has_seq ? "refused batch seq 3" : "refused; the header was unreadable so seq is absent",
                 b.data, b.len, 1);
    }

    vec_req(out, &first, "req_status", "status request with id 1", "status", 1, NULL, 0, NULL, NULL);
    vec_req(out, &first, "req_latent", "statistics of latent 5", "latent", 2, "j", 5, NULL, NULL);
    vec_req(out, &first, "req_top", "top 10 latents by delta_norm", "top", 3, "n", 10, "by", "delta_norm");
    vec_req(out, &first, "req_checkpoint", "checkpoint now, no id", "checkpoint", -1, NULL, 0, NULL, NULL);
    vec_req(out, &first, "req_config_key", "one config key", "config", 4, NULL, 0, "key", "batch_size");

    xc_request_t req;
    char why[XC_PROTO_REASON_MAX];
    kv_t preq[] = {{"v", 'u', 1, 0}, {"op", 's', 0, "pause"}, {"id", 'u', 9, 0}};
    xc_buf_t rb;
    xc_buf_init(&rb);
    enc_map(&b, preq, 3);
    xc_proto_request_decode(b.data, b.len, &req, why, sizeof why);
    xc_mpw_t w;
    xc_mpw_init(&w, &rb);
    xc_proto_reply_begin(&w, &req);
    xc_mpw_kv_bool(&w, "paused", 1);
    xc_mpw_map_end(&w);
    xc_mpw_finish(&w);
    vec_emit(out, &first, "reply_pause", "control.reply", "success reply to pause id 9", rb.data, rb.len, 1);
    xc_proto_request_free(&req);
    kv_t ureq[] = {{"v", 'u', 1, 0}, {"op", 's', 0, "frobnicate"}, {"id", 'u', 10, 0}};
    enc_map(&b, ureq, 3);
    int rc = xc_proto_request_decode(b.data, b.len, &req, why, sizeof why);
    xc_buf_reset(&rb);
    xc_proto_error_encode(&rb, &req, rc, why);
    vec_emit(out, &first, "reply_unknown_op", "control.reply", "error reply to an unknown op", rb.data,
             rb.len, 1);
    xc_proto_request_free(&req);

    xc_buf_reset(&rb);
    xc_mpw_init(&w, &rb);
    xc_proto_event_begin(&w, XC_EVENT_CHECKPOINT, "default", 1700000000.25);
    xc_mpw_kv_str(&w, "path", "/var/lib/xcoderd/default/ckpt-000001000.safetensors");
    xc_mpw_kv_uint(&w, "step", 1000);
    xc_mpw_kv_uint(&w, "bytes", 1234567);
    xc_mpw_kv_str(&w, "reason", "request");
    xc_mpw_map_end(&w);
    xc_mpw_finish(&w);
    vec_emit(out, &first, "event_checkpoint", "event.body", "topic frame \\\"checkpoint\\\" (bytes 636865636b706f696e74)",
             rb.data, rb.len, 1);
    vectors_remote(out, &first);
    vectors_examples(out, &first);
    xc_buf_free(&rb);
    xc_buf_free(&b);
    const char *tail = "\n  ]\n}\n";
    xc_buf_append(out, tail, strlen(tail) + 1);
}

/* Every code's name reads back to its number through the codec (what a
 * client does with the name on the wire); vectors.json lists the same pairs. */
static void test_error_code_numbers(void)
{
#define XC_CODE_CHECK(name, val, msg)                                                              \
    XC_CHECK(xc_proto_errcode(#name, strlen(#name)) == (val) || (val) == 0, "%s is not %d", #name, \
             (int)(val));                                                                          \
    XC_CHECK(strcmp(xc_errname(val), #name) == 0, "xc_errname(%d) = %s", (int)(val), xc_errname(val));
    XC_ERRNO_MAP(XC_CODE_CHECK)
#undef XC_CODE_CHECK
}

static void test_vectors_file(void)
{
    xc_buf_t v;
    xc_buf_init(&v);
    vectors_build(&v);
    XC_REQUIRE(v.err == 0, "build");
    FILE *f = fopen("proto/vectors.json", "rb");
    XC_REQUIRE(f != NULL, "cannot open proto/vectors.json (run from the repository root)");
    static char file[1 << 16];
    size_t n = fread(file, 1, sizeof file - 1, f);
    fclose(f);
    file[n] = 0;
    XC_CHECK(strcmp(file, (char *)v.data) == 0,
             "proto/vectors.json differs from the codec; regenerate with "
             "build/tests/test_proto --vectors > proto/vectors.json");
    xc_buf_free(&v);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--vectors") == 0) {
        xc_buf_t v;
        xc_buf_init(&v);
        vectors_build(&v);
        fputs((char *)v.data, stdout);
        xc_buf_free(&v);
        return 0;
    }
    XC_RUN(test_writer_nesting);
    XC_RUN(test_writer_errors);
    XC_RUN(test_reader_hostile);
    XC_RUN(test_fuzz_decoders);
    XC_RUN(test_json_nested_keys_linear);
    XC_RUN(test_json_keys_and_caps);
    XC_RUN(test_header_roundtrip);
    XC_RUN(test_header_refusals);
    XC_RUN(test_batch_check);
    XC_RUN(test_f16_conversion);
    XC_RUN(test_bf16_conversion);
    XC_RUN(test_payload_nonfinite);
    XC_RUN(test_ack_nack);
    XC_RUN(test_request_reply);
    XC_RUN(test_event_json);
    XC_RUN(test_examples_render);
    XC_RUN(test_stream_and_vocab);
    XC_RUN(test_error_code_numbers);
    XC_RUN(test_vectors_file);
    XC_TEST_EXIT();
}
