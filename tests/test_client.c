/* Tests of libxcoder and the xcoder CLI that need no daemon: .npy parsing
 * (good and bad files), value trees and the JSON renderer/parser, the
 * safetensors reader, the client against an in-process fake daemon (window
 * backpressure, nack reasons, request ids, error replies, events, timeouts),
 * and the CLI's argument errors and exit codes (build/xcoder run as a child). */
#include "xc_latents.h"
#include "xc_proto.h"
#include "xc_shm.h"
#include "xc_test.h"
#include "xcoder.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

static char g_tmp[256];     /* per-run temp dir */
static char g_xcoder[512];  /* path of build/xcoder */

static void path_in_tmp(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", g_tmp, name); }

static int write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, len, f);
    fclose(f);
    return w == len ? 0 : -1;
}

/* A .npy v1 file with the given header dict text and `payload` bytes of data. */
static int write_npy_raw(const char *path, int major, const char *dict, size_t payload)
{
    size_t dl = strlen(dict), pre = major == 1 ? 10 : 12;
    size_t total = (pre + dl + 1 + 63) / 64 * 64, hl = total - pre;
    unsigned char *b = calloc(1, total + payload);
    if (!b) return -1;
    memcpy(b, "\x93NUMPY", 6);
    b[6] = (unsigned char)major;
    b[7] = 0;
    if (major == 1) {
        b[8] = (unsigned char)(hl & 0xff);
        b[9] = (unsigned char)(hl >> 8);
    } else {
        for (int i = 0; i < 4; i++) b[8 + i] = (unsigned char)(hl >> (8 * i));
    }
    memcpy(b + pre, dict, dl);
    memset(b + pre + dl, ' ', hl - dl - 1);
    b[total - 1] = '\n';
    for (size_t i = 0; i < payload; i++) b[total + i] = (unsigned char)(i * 7);
    int rc = write_file(path, b, total + payload);
    free(b);
    return rc;
}

/* ------------------------------------------------------------------- .npy */

static void test_npy_roundtrip(void)
{
    char p[300], why[256];
    float x[3 * 2 * 4];
    for (int i = 0; i < 24; i++) x[i] = (float)i * 0.5f - 3.0f;
    path_in_tmp(p, sizeof p, "rt.npy");
    XC_REQUIRE(xc_client_npy_write_f32(p, x, 3, 4, why, sizeof why) == XC_OK, "write: %s", why);
    xc_client_npy_t n;
    XC_REQUIRE(xc_client_npy_open(p, &n, why, sizeof why) == XC_OK, "open: %s", why);
    XC_CHECK(n.dtype == XC_CLIENT_DTYPE_F32 && n.itemsize == 4 && !n.swap, "dtype");
    XC_CHECK(n.n_tokens == 3 && n.d == 4 && n.ndim == 3, "shape %ld %ld", n.n_tokens, n.d);
    XC_CHECK(n.data_offset % 64 == 0, "header padded to 64: %zu", n.data_offset);
    XC_CHECK(memcmp(n.data, x, sizeof x) == 0, "data differs");
    XC_CHECK(strcmp(xc_client_npy_shape_str(&n), "[3, 2, 4]") == 0, "shape str %s", xc_client_npy_shape_str(&n));
    xc_client_npy_close(&n);
    XC_CHECK(n.data == NULL && n.fd == -1, "close resets");
    xc_client_npy_close(&n); /* twice is harmless */
}

static void test_npy_variants(void)
{
    char p[300], why[256];
    xc_client_npy_t n;
    path_in_tmp(p, sizeof p, "f16.npy");
    XC_REQUIRE(write_npy_raw(p, 1, "{'descr': '<f2', 'fortran_order': False, 'shape': (5, 2, 3), }", 5 * 2 * 3 * 2) == 0, "w");
    XC_CHECK(xc_client_npy_open(p, &n, why, sizeof why) == XC_OK, "f16: %s", why);
    XC_CHECK(n.dtype == XC_CLIENT_DTYPE_F16 && n.itemsize == 2 && n.n_tokens == 5 && n.d == 3, "f16 fields");
    xc_client_npy_close(&n);

    path_in_tmp(p, sizeof p, "v2.npy");
    XC_REQUIRE(write_npy_raw(p, 2, "{\"shape\": (2,2,8), \"fortran_order\": False, \"descr\": \">f4\"}", 2 * 2 * 8 * 4) == 0, "w");
    XC_CHECK(xc_client_npy_open(p, &n, why, sizeof why) == XC_OK, "v2 big-endian: %s", why);
    XC_CHECK(n.swap == 1 && n.n_tokens == 2 && n.d == 8, "v2 fields");
    xc_client_npy_close(&n);

    /* Python 2 style long ints */
    path_in_tmp(p, sizeof p, "long.npy");
    XC_REQUIRE(write_npy_raw(p, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1L, 2L, 2L), }", 16) == 0, "w");
    XC_CHECK(xc_client_npy_open(p, &n, why, sizeof why) == XC_OK, "L suffix: %s", why);
    xc_client_npy_close(&n);
}

/* Each bad file gives its code and a message that says what to do. */
static void test_npy_bad_files(void)
{
    static const struct {
        const char *dict;
        size_t payload;
        int code;
        const char *msg;
    } cases[] = {
        {"{'descr': '<i4', 'fortran_order': False, 'shape': (2, 2, 4), }", 64, XC_EDTYPE, "astype(np.float32)"},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2, 4), }", 128, XC_EDTYPE, "float32"},
        {"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", 8, XC_ECORRUPT, "structured"},
        {"{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2, 4), }", 64, XC_ESHAPE, "ascontiguousarray"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (8, 4), }", 128, XC_ESHAPE, "[N, 2, d]"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), }", 96, XC_ESHAPE, "[2, 3, 4]"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (0, 2, 4), }", 0, XC_ESHAPE, "positive"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2, 4), }", 60, XC_ELENGTH, "truncated"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2, 4), }", 70, XC_ELENGTH, "needs 64"},
        {"{'descr': '<f4', 'shape': (2, 2, 4), }", 64, XC_ECORRUPT, "fortran_order"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2, 4), 'x': 1}", 64, XC_ECORRUPT, "unknown key"},
        {"['descr', '<f4']", 64, XC_ECORRUPT, "dict"},
        {"{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2, 2, 4), }", 64, XC_ECORRUPT, "fortran_order"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, -2, 4), }", 64, XC_ECORRUPT, "shape"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2, 4, }", 64, XC_ECORRUPT, "shape"},
    };
    char p[300], why[256];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        xc_client_npy_t n;
        path_in_tmp(p, sizeof p, "bad.npy");
        XC_REQUIRE(write_npy_raw(p, 1, cases[i].dict, cases[i].payload) == 0, "write");
        why[0] = 0;
        int rc = xc_client_npy_open(p, &n, why, sizeof why);
        XC_CHECK(rc == cases[i].code, "case %zu: rc %s, want %s (%s)", i, xc_errname(rc), xc_errname(cases[i].code), why);
        XC_CHECK(strstr(why, cases[i].msg) != NULL, "case %zu: message '%s' lacks '%s'", i, why, cases[i].msg);
        XC_CHECK(strstr(why, p) != NULL, "case %zu: message does not name the file: %s", i, why);
        XC_CHECK(n.data == NULL, "case %zu: data set on failure", i);
    }
    /* not npy at all, empty, missing, a directory, truncated header */
    path_in_tmp(p, sizeof p, "text.npy");
    write_file(p, "hello world, not numpy", 22);
    xc_client_npy_t n;
    XC_CHECK(xc_client_npy_open(p, &n, why, sizeof why) == XC_ECORRUPT && strstr(why, "numpy.save"), "text: %s", why);
    path_in_tmp(p, sizeof p, "empty.npy");
    write_file(p, "", 0);
    XC_CHECK(xc_client_npy_open(p, &n, why, sizeof why) == XC_ECORRUPT, "empty: %s", why);
    path_in_tmp(p, sizeof p, "missing.npy");
    XC_CHECK(xc_client_npy_open(p, &n, why, sizeof why) == XC_EIO && strstr(why, "No such file"), "missing: %s", why);
    XC_CHECK(xc_client_npy_open(g_tmp, &n, why, sizeof why) == XC_EIO, "dir: %s", why);
    unsigned char hdr[12] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0xff, 0x7f, '{', '}'};
    path_in_tmp(p, sizeof p, "trunc.npy");
    write_file(p, hdr, sizeof hdr);
    XC_CHECK(xc_client_npy_open(p, &n, why, sizeof why) == XC_ECORRUPT && strstr(why, "truncated"), "trunc: %s", why);
    hdr[6] = 9;
    write_file(p, hdr, sizeof hdr);
    XC_CHECK(xc_client_npy_open(p, &n, why, sizeof why) == XC_ECORRUPT && strstr(why, "version"), "version: %s", why);
}

/* Random garbage headers never crash the parser. */
static void test_npy_fuzz(void)
{
    uint64_t r = 12345;
    unsigned char buf[200];
    for (int it = 0; it < 20000; it++) {
        size_t len = 10 + (size_t)(r % 190);
        for (size_t i = 0; i < len; i++) {
            r ^= r << 13, r ^= r >> 7, r ^= r << 17;
            static const char alphabet[] = " {}():,'\"<f4TrueFalsedescrshape0123456789L";
            buf[i] = (unsigned char)alphabet[r % (sizeof alphabet - 1)];
        }
        memcpy(buf, "\x93NUMPY\x01\x00", 8);
        buf[8] = (unsigned char)(len - 10);
        buf[9] = 0;
        xc_client_npy_t n;
        char why[128];
        int rc = xc_client_npy_parse_header(buf, len, &n, why, sizeof why);
        XC_CHECK(rc == XC_OK || rc == XC_ECORRUPT || rc == XC_EDTYPE || rc == XC_ESHAPE, "rc %d", rc);
    }
}

/* ----------------------------------------------------------- values, JSON */

static xc_client_value_t *sample_value(void)
{
    xc_buf_t b;
    xc_mpw_t w;
    xc_buf_init(&b);
    xc_mpw_init(&w, &b);
    xc_mpw_map_begin(&w);
    xc_mpw_kv_int(&w, "step", 42);
    xc_mpw_kv_int(&w, "neg", -7);
    xc_mpw_kv_uint(&w, "big", 18446744073709551615ull);
    xc_mpw_kv_double(&w, "loss", 0.1);
    xc_mpw_kv_double(&w, "one", 1.0);
    xc_mpw_kv_double(&w, "nan", NAN);
    xc_mpw_kv_double(&w, "inf", -INFINITY);
    xc_mpw_kv_bool(&w, "ok", 1);
    xc_mpw_kv_nil(&w, "none");
    xc_mpw_kv_str(&w, "s", "a\"b\\c\nd\te\x01 é ☃");
    xc_mpw_str(&w, "bad");
    xc_mpw_strn(&w, "x\xff\xc3y", 4); /* invalid UTF-8 */
    xc_mpw_str(&w, "bin");
    xc_mpw_bin(&w, "\x00\x01\x02\xff", 4);
    xc_mpw_str(&w, "fve");
    xc_mpw_array_begin(&w);
    xc_mpw_double(&w, 0.5);
    xc_mpw_double(&w, 0.25);
    xc_mpw_array_end(&w);
    xc_mpw_str(&w, "empty");
    xc_mpw_map_begin(&w);
    xc_mpw_map_end(&w);
    xc_mpw_int(&w, 5); /* integer key */
    xc_mpw_str(&w, "five");
    xc_mpw_map_end(&w);
    int rc = xc_mpw_finish(&w);
    xc_client_value_t *v = rc ? NULL : xc_client_value_parse(b.data, b.len, &rc);
    xc_buf_free(&b);
    return v;
}

static void test_value_lookup(void)
{
    xc_client_value_t *v = sample_value();
    XC_REQUIRE(v && v->type == XC_VAL_MAP, "parse");
    XC_CHECK(xc_client_value_getnum(v, "step", -1) == 42, "step");
    XC_CHECK(xc_client_value_getnum(v, "neg", 0) == -7, "neg");
    XC_CHECK(xc_client_value_get(v, "big")->type == XC_VAL_UINT, "big is uint");
    XC_CHECK(xc_client_value_getnum(v, "fve.1", -1) == 0.25, "array path");
    XC_CHECK(xc_client_value_getnum(v, "fve.2", -1) == -1, "out of range");
    XC_CHECK(xc_client_value_getnum(v, "nope.x", -3) == -3, "missing path");
    XC_CHECK(xc_client_value_getnum(v, "s", -4) == -4, "string is not a number");
    XC_CHECK(isnan(xc_client_value_getnum(v, "none", 0)), "nil -> NaN");
    XC_CHECK(xc_client_value_getnum(v, "ok", 0) == 1, "bool");
    XC_CHECK(strcmp(xc_client_value_getstr(v, "s", ""), "a\"b\\c\nd\te\x01 é ☃") == 0, "str");
    XC_CHECK(xc_client_value_getstr(v, "step", NULL) == NULL, "not a str");
    XC_CHECK(xc_client_value_get(NULL, "x") == NULL && xc_client_value_at(v, 0) == NULL, "NULL-safe");
    xc_client_value_free(&v);
    XC_CHECK(v == NULL, "free sets NULL");
    xc_client_value_free(&v);
    int err = 0;
    XC_CHECK(xc_client_value_parse("\xc1", 1, &err) == NULL && err == XC_EPROTO, "bad msgpack: %d", err);
    XC_CHECK(xc_client_value_parse("\x92\x01", 2, &err) == NULL && err == XC_EPROTO, "truncated msgpack: %d", err);
}

static void test_json_render(void)
{
    xc_client_value_t *v = sample_value();
    XC_REQUIRE(v, "parse");
    char *j = xc_client_value_to_json(v, 0);
    XC_REQUIRE(j, "render");
    const char *want =
        "{\"step\":42,\"neg\":-7,\"big\":18446744073709551615,\"loss\":0.1,\"one\":1.0,\"nan\":null,\"inf\":null,"
        "\"ok\":true,\"none\":null,\"s\":\"a\\\"b\\\\c\\nd\\te\\u0001 é ☃\",\"bad\":\"x\xef\xbf\xbd\xef\xbf\xbdy\","
        "\"bin\":\"AAEC/w==\",\"fve\":[0.5,0.25],\"empty\":{},\"5\":\"five\"}";
    XC_CHECK(strcmp(j, want) == 0, "got %s", j);

    /* the renderer's output is valid JSON: parse it back and compare */
    char why[128];
    int err;
    xc_client_value_t *back = xc_client_json_parse(j, strlen(j), &err, why, sizeof why);
    XC_REQUIRE(back, "reparse: %s", why);
    XC_CHECK(xc_client_value_getnum(back, "loss", 0) == 0.1, "loss round trip");
    XC_CHECK(xc_client_value_get(back, "big")->type == XC_VAL_UINT, "uint round trip");
    XC_CHECK(strcmp(xc_client_value_getstr(back, "s", ""), xc_client_value_getstr(v, "s", "?")) == 0, "string round trip");
    char *j2 = xc_client_value_to_json(back, 0);
    XC_CHECK(j2 && strcmp(j, j2) == 0, "render(parse(render)) differs: %s", j2 ? j2 : "");
    free(j2);
    xc_client_value_free(&back);

    char *pj = xc_client_value_to_json(v, 1);
    XC_CHECK(pj && strstr(pj, "\n  \"step\": 42,\n"), "pretty: %s", pj ? pj : "");
    back = pj ? xc_client_json_parse(pj, strlen(pj), &err, why, sizeof why) : NULL;
    XC_CHECK(back != NULL, "pretty reparse: %s", why);
    xc_client_value_free(&back);
    free(pj);
    free(j);
    xc_client_value_free(&v);

    char *n = xc_client_value_to_json(NULL, 0);
    XC_CHECK(n && !strcmp(n, "null"), "NULL -> null");
    free(n);
}

/* Floats print in their shortest round-trip form. */
static void test_json_numbers(void)
{
    static const struct {
        double x;
        const char *s;
    } cases[] = {{0.1, "0.1"}, {1.0, "1.0"}, {-2.5, "-2.5"}, {1e300, "1e+300"}, {0.30000001192092896, "0.3"},
                 {123456789.0, "123456789.0"}, {1.0 / 3.0, "0.3333333333333333"}, {0.0, "0.0"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        xc_buf_t b;
        xc_mpw_t w;
        xc_buf_init(&b);
        xc_mpw_init(&w, &b);
        xc_mpw_double(&w, cases[i].x);
        xc_mpw_finish(&w);
        int err;
        xc_client_value_t *v = xc_client_value_parse(b.data, b.len, &err);
        char *j = v ? xc_client_value_to_json(v, 0) : NULL;
        XC_CHECK(j && strcmp(j, cases[i].s) == 0, "%.17g -> %s, want %s", cases[i].x, j ? j : "(null)", cases[i].s);
        free(j);
        xc_client_value_free(&v);
        xc_buf_free(&b);
    }
}

static void test_json_parse_errors(void)
{
    static const char *const bad[] = {"", "{", "[1,]", "{\"a\" 1}", "{\"a\":1,}", "\"abc", "\"\\q\"", "\"\\ud800\"",
                                      "01", "1.", "-", "tru", "nul", "[1] 2", "{1:2}", "\"a\x01\"",
                                      "[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char why[128] = "";
        int err = 0;
        xc_client_value_t *v = xc_client_json_parse(bad[i], strlen(bad[i]), &err, why, sizeof why);
        XC_CHECK(v == NULL && err == XC_EPROTO && why[0], "'%s' accepted (err %d)", bad[i], err);
        xc_client_value_free(&v);
    }
    const char *good = " { \"a\" : [ 1 , -2.5e3 , true , false , null , \"\\u00e9\\ud83d\\ude00\\/\" ] } ";
    int err;
    xc_client_value_t *v = xc_client_json_parse(good, strlen(good), &err, NULL, 0);
    XC_REQUIRE(v, "good rejected");
    XC_CHECK(xc_client_value_getnum(v, "a.1", 0) == -2500, "number");
    XC_CHECK(strcmp(xc_client_value_getstr(v, "a.5", ""), "é😀/") == 0, "unicode escapes");
    xc_client_value_free(&v);
}

/* ------------------------------------------------------------ safetensors */

static void test_safetensors(void)
{
    char p[300], why[256];
    const char *hdr = "{\"__metadata__\":{\"step\":\"7\"},\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                      "\"h\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[24,28]},"
                      "\"bad\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[24,40]},"
                      "\"odd\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,12]},"
                      "\"i\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}";
    size_t hl = strlen(hdr);
    unsigned char buf[1024];
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(hl >> (8 * i));
    memcpy(buf + 8, hdr, hl);
    float w[6] = {1, 2, 3, 4, 5, 6};
    memcpy(buf + 8 + hl, w, 24);
    uint16_t h[2] = {xc_f32_to_f16(0.5f), xc_f32_to_f16(-2.0f)};
    memcpy(buf + 8 + hl + 24, h, 4);
    path_in_tmp(p, sizeof p, "t.safetensors");
    XC_REQUIRE(write_file(p, buf, 8 + hl + 28) == 0, "write");
    int err;
    xc_client_st_t *st = xc_client_st_open(p, &err, why, sizeof why);
    XC_REQUIRE(st, "open: %s", why);
    XC_CHECK(strcmp(xc_client_value_getstr(xc_client_st_header(st), "__metadata__.step", ""), "7") == 0, "metadata");
    xc_client_tensor_t t;
    float *f = xc_client_st_read_f32(st, "w", &t, &err, why, sizeof why);
    XC_CHECK(f && t.ndim == 2 && t.shape[0] == 2 && t.shape[1] == 3 && f[5] == 6.0f, "w: %s", why);
    free(f);
    f = xc_client_st_read_f32(st, "h", &t, &err, why, sizeof why);
    XC_CHECK(f && f[0] == 0.5f && f[1] == -2.0f, "f16: %s", why);
    free(f);
    XC_CHECK(xc_client_st_tensor(st, "bad", &t, why, sizeof why) == XC_ECORRUPT, "offsets past the end: %s", why);
    XC_CHECK(xc_client_st_tensor(st, "odd", &t, why, sizeof why) == XC_ECORRUPT, "size mismatch: %s", why);
    XC_CHECK(xc_client_st_tensor(st, "nope", &t, why, sizeof why) == XC_ENOTFOUND, "missing");
    XC_CHECK(xc_client_st_read_f32(st, "i", &t, &err, why, sizeof why) == NULL && err == XC_EDTYPE, "int tensor");
    xc_client_st_close(&st);
    XC_CHECK(st == NULL, "close");
    /* header length beyond the file */
    buf[0] = 0xff;
    buf[1] = 0xff;
    write_file(p, buf, 8 + hl + 28);
    st = xc_client_st_open(p, &err, why, sizeof why);
    XC_CHECK(!st && err == XC_ECORRUPT, "bad header length: %s", why);
    xc_client_st_close(&st);
}

/* -------------------------------------------- client against a fake daemon */

typedef struct {
    void *zctx;
    char ingest[300], control[300], events[300];
    volatile int mode;        /* what the fake does; see fake_thread */
    volatile int stop;
    volatile int received;    /* ingest messages received */
    volatile int hold;        /* ingest: hold replies while set */
    pthread_t th;
    int bound;                /* set by the thread once its sockets are bound */
} fake_t;

/* The fake daemon: ROUTER ingest (acks, or a nack for seq 1 in mode 1; holds
 * replies while `hold`), ROUTER control (status reply; a stale reply with a
 * wrong id first; error reply for op "latent"), PUB events. */
static void *fake_thread(void *arg)
{
    fake_t *f = arg;
    void *ing = zmq_socket(f->zctx, ZMQ_ROUTER), *ctl = zmq_socket(f->zctx, ZMQ_ROUTER);
    void *pub = zmq_socket(f->zctx, ZMQ_PUB);
    zmq_bind(ing, f->ingest);
    zmq_bind(ctl, f->control);
    zmq_bind(pub, f->events);
    __atomic_store_n(&f->bound, 1, __ATOMIC_RELEASE);
    zmq_msg_t held_id[64];
    uint64_t held_seq[64];
    int nheld = 0;
    xc_buf_t b;
    xc_buf_init(&b);
    while (!f->stop) {
        zmq_pollitem_t it[2] = {{ing, 0, ZMQ_POLLIN, 0}, {ctl, 0, ZMQ_POLLIN, 0}};
        zmq_poll(it, 2, 20);
        /* events: publish a stats event every turn */
        xc_mpw_t w;
        xc_buf_reset(&b);
        xc_mpw_init(&w, &b);
        xc_proto_event_begin(&w, "stats", "fake", 1.0);
        xc_mpw_kv_int(&w, "step", 3);
        xc_mpw_map_end(&w);
        xc_mpw_finish(&w);
        zmq_send(pub, "stats", 5, ZMQ_SNDMORE);
        zmq_send(pub, b.data, b.len, 0);
        if (it[0].revents & ZMQ_POLLIN) {
            zmq_msg_t id, hdr, body;
            zmq_msg_init(&id);
            zmq_msg_init(&hdr);
            zmq_msg_recv(&id, ing, 0);
            zmq_msg_recv(&hdr, ing, 0);
            while (zmq_msg_more(&hdr) || 0) { /* drain the payload frames */
                zmq_msg_init(&body);
                zmq_msg_recv(&body, ing, 0);
                int more = zmq_msg_more(&body);
                zmq_msg_close(&body);
                if (!more) break;
            }
            xc_batch_hdr_t h;
            char why[128];
            xc_proto_batch_hdr_decode(zmq_msg_data(&hdr), zmq_msg_size(&hdr), &h, why, sizeof why);
            zmq_msg_close(&hdr);
            f->received++;
            if (nheld < 64) {
                held_seq[nheld] = h.seq;
                held_id[nheld++] = id;
            } else {
                zmq_msg_close(&id);
            }
        }
        while (!f->hold && nheld > 0) {
            xc_buf_reset(&b);
            uint64_t seq = held_seq[0];
            if (f->mode == 1 && seq == 1) {
                xc_batch_hdr_t h;
                memset(&h, 0, sizeof h);
                h.seq = seq;
                h.has_seq = 1;
                xc_proto_nack_encode(&b, &h, XC_ESHAPE, "d = 32 but this daemon trains d = 64");
            } else {
                xc_proto_ack_encode(&b, seq, 16, 4);
            }
            zmq_msg_send(&held_id[0], ing, ZMQ_SNDMORE);
            zmq_send(ing, b.data, b.len, 0);
            memmove(held_id, held_id + 1, (size_t)(nheld - 1) * sizeof held_id[0]);
            memmove(held_seq, held_seq + 1, (size_t)(nheld - 1) * sizeof held_seq[0]);
            nheld--;
        }
        if (it[1].revents & ZMQ_POLLIN) {
            zmq_msg_t id, body;
            zmq_msg_init(&id);
            zmq_msg_init(&body);
            zmq_msg_recv(&id, ctl, 0);
            zmq_msg_recv(&body, ctl, 0);
            xc_request_t req;
            char why[128];
            xc_proto_request_decode(zmq_msg_data(&body), zmq_msg_size(&body), &req, why, sizeof why);
            /* a stale reply (another id) first: the client must skip it */
            xc_buf_reset(&b);
            xc_mpw_init(&w, &b);
            xc_mpw_map_begin(&w);
            xc_mpw_kv_uint(&w, "v", 1);
            xc_mpw_kv_bool(&w, "ok", 1);
            xc_mpw_kv_int(&w, "id", 999999);
            xc_mpw_kv_int(&w, "step", -1);
            xc_mpw_map_end(&w);
            xc_mpw_finish(&w);
            zmq_send(ctl, zmq_msg_data(&id), zmq_msg_size(&id), ZMQ_SNDMORE);
            zmq_send(ctl, b.data, b.len, 0);
            xc_buf_reset(&b);
            if (req.op == XC_OP_LATENT) {
                xc_proto_error_encode(&b, &req, XC_ENOTFOUND, "latent 9999 out of range: dict_size is 512");
            } else {
                xc_mpw_init(&w, &b);
                xc_proto_reply_begin(&w, &req);
                xc_mpw_kv_int(&w, "step", 1234);
                xc_mpw_kv_str(&w, "state", "running");
                if (req.op == XC_OP_CONFIG) { /* a reply too big for ZeroMQ's inline messages */
                    static char big[100001];
                    memset(big, 'x', sizeof big - 1);
                    xc_mpw_kv_str(&w, "big", big);
                }
                xc_mpw_map_end(&w);
                xc_mpw_finish(&w);
            }
            zmq_msg_send(&id, ctl, ZMQ_SNDMORE);
            zmq_send(ctl, b.data, b.len, 0);
            zmq_msg_close(&body);
            xc_proto_request_free(&req);
        }
    }
    for (int i = 0; i < nheld; i++) zmq_msg_close(&held_id[i]);
    xc_buf_free(&b);
    int z = 0;
    zmq_setsockopt(ing, ZMQ_LINGER, &z, sizeof z);
    zmq_setsockopt(ctl, ZMQ_LINGER, &z, sizeof z);
    zmq_setsockopt(pub, ZMQ_LINGER, &z, sizeof z);
    zmq_close(ing);
    zmq_close(ctl);
    zmq_close(pub);
    return NULL;
}

static void fake_start(fake_t *f, const char *tag, int mode)
{
    memset(f, 0, sizeof *f);
    f->zctx = zmq_ctx_new();
    f->mode = mode;
    snprintf(f->ingest, sizeof f->ingest, "ipc://%s/%s-ingest.sock", g_tmp, tag);
    snprintf(f->control, sizeof f->control, "ipc://%s/%s-control.sock", g_tmp, tag);
    snprintf(f->events, sizeof f->events, "ipc://%s/%s-events.sock", g_tmp, tag);
    pthread_create(&f->th, NULL, fake_thread, f);
    /* clients fail at once while an ipc socket file is missing: wait for the binds */
    while (!__atomic_load_n(&f->bound, __ATOMIC_ACQUIRE)) usleep(1000);
}

static void fake_stop(fake_t *f)
{
    f->stop = 1;
    pthread_join(f->th, NULL);
    zmq_ctx_term(f->zctx);
}

static xc_client_t *client_for(const fake_t *f, int window, int timeout_ms)
{
    xc_client_options_t o;
    xc_client_options_default(&o);
    o.ingest = f->ingest;
    o.control = f->control;
    o.events = f->events;
    o.window = window;
    o.timeout_ms = timeout_ms;
    o.producer = "test";
    return xc_client_new(&o, NULL);
}

/* At most `window` batches go out before replies come back. */
static void test_client_window(void)
{
    fake_t f;
    fake_start(&f, "win", 0);
    f.hold = 1;
    xc_client_t *c = client_for(&f, 2, 300);
    XC_REQUIRE(c, "new");
    float x[16 * 2 * 4] = {0};
    XC_CHECK(xc_client_push(c, x, XC_CLIENT_DTYPE_F32, 16, 4) == XC_OK, "push 1: %s", xc_client_last_error(c));
    XC_CHECK(xc_client_push(c, x, XC_CLIENT_DTYPE_F32, 16, 4) == XC_OK, "push 2: %s", xc_client_last_error(c));
    int rc = xc_client_push(c, x, XC_CLIENT_DTYPE_F32, 16, 4);
    XC_CHECK(rc == XC_ETIMEDOUT, "third push with the window full: %s", xc_errname(rc));
    XC_CHECK(strstr(xc_client_last_error(c), "2 batch(es) in flight") != NULL, "msg: %s", xc_client_last_error(c));
    XC_CHECK(f.received == 2, "the fake saw %d messages, want 2", f.received);
    f.hold = 0; /* replies flow: the window opens */
    XC_CHECK(xc_client_push(c, x, XC_CLIENT_DTYPE_F32, 16, 4) == XC_OK, "push after acks: %s", xc_client_last_error(c));
    XC_CHECK(xc_client_flush(c) == XC_OK, "flush: %s", xc_client_last_error(c));
    xc_client_push_stats_t st;
    xc_client_push_stats(c, &st);
    XC_CHECK(st.batches_sent == 3 && st.batches_acked == 3 && st.in_flight == 0 && st.tokens_acked == 48,
             "stats sent %llu acked %llu in flight %d", (unsigned long long)st.batches_sent,
             (unsigned long long)st.batches_acked, st.in_flight);
    XC_CHECK(st.credit == 4, "credit %lld", (long long)st.credit);
    xc_client_destroy(&c);
    XC_CHECK(c == NULL, "destroy sets NULL");
    fake_stop(&f);
}

/* A nack's reason reaches the caller, with the refused batch's seq. */
static void test_client_nack(void)
{
    fake_t f;
    fake_start(&f, "nack", 1);
    xc_client_t *c = client_for(&f, 8, 2000);
    XC_REQUIRE(c, "new");
    float x[16 * 2 * 4] = {0};
    int rc = XC_OK, pushes = 0;
    while (rc == XC_OK && pushes < 50) {
        rc = xc_client_push(c, x, XC_CLIENT_DTYPE_F32, 16, 4);
        pushes++;
        if (rc == XC_OK && pushes == 4) rc = xc_client_flush(c);
    }
    XC_CHECK(rc == XC_ESHAPE, "rc %s: %s", xc_errname(rc), xc_client_last_error(c));
    XC_CHECK(strstr(xc_client_last_error(c), "d = 32 but this daemon trains d = 64") &&
                 strstr(xc_client_last_error(c), "XC_ESHAPE"),
             "message: %s", xc_client_last_error(c));
    uint64_t seq = 99;
    int code = 0;
    const char *reason = NULL;
    XC_CHECK(xc_client_last_nack(c, &seq, &code, &reason) == XC_OK && seq == 1 && code == XC_ESHAPE && reason,
             "last nack seq %llu code %d", (unsigned long long)seq, code);
    XC_CHECK(xc_client_flush(c) == XC_OK, "the nack is reported once: %s", xc_client_last_error(c));
    xc_client_destroy(&c);
    fake_stop(&f);
}

static void test_client_requests(void)
{
    fake_t f;
    fake_start(&f, "req", 0);
    xc_client_t *c = client_for(&f, 8, 2000);
    XC_REQUIRE(c, "new");
    xc_client_value_t *r = NULL;
    int rc = xc_client_status(c, &r);
    XC_CHECK(rc == XC_OK, "status: %s", xc_client_last_error(c));
    XC_CHECK(xc_client_value_getnum(r, "step", 0) == 1234, "the stale reply (id 999999) was not skipped");
    XC_CHECK(strcmp(xc_client_value_getstr(r, "op", ""), "status") == 0, "op echoed");
    xc_client_value_free(&r);
    rc = xc_client_latent(c, 9999, &r);
    XC_CHECK(rc == XC_ENOTFOUND && r == NULL, "error reply: %s", xc_errname(rc));
    XC_CHECK(strstr(xc_client_last_error(c), "dict_size is 512") != NULL, "message: %s", xc_client_last_error(c));
    XC_CHECK(xc_client_latent(c, -1, &r) == XC_EINVAL, "negative j");
    XC_CHECK(xc_client_top(c, "", 5, 0, 0, &r) == XC_EINVAL, "empty field");
    XC_CHECK(xc_client_request(c, "an-op-name-that-is-much-too-long-x", NULL, 0, &r) == XC_EINVAL, "long op");
    /* after errors the client still works */
    XC_CHECK(xc_client_ping(c, NULL) == XC_OK, "ping: %s", xc_client_last_error(c));
    /* a large reply: its strings outlive the received frame */
    rc = xc_client_config(c, NULL, &r);
    const xc_client_value_t *big = xc_client_value_get(r, "big");
    XC_CHECK(rc == XC_OK && big && big->type == XC_VAL_STR && big->u.s.len == 100000 && big->u.s.ptr[0] == 'x' &&
                 big->u.s.ptr[99999] == 'x',
             "large reply: %s", xc_client_last_error(c));
    xc_client_value_free(&r);

    /* events */
    XC_CHECK(xc_client_next_event(c, 10, &r) == XC_ESTATE, "next_event before subscribe");
    XC_REQUIRE(xc_client_subscribe(c, "stats") == XC_OK, "subscribe: %s", xc_client_last_error(c));
    rc = xc_client_next_event(c, 3000, &r);
    XC_CHECK(rc == XC_OK && strcmp(xc_client_value_getstr(r, "type", ""), "stats") == 0 &&
                 xc_client_value_getnum(r, "step", 0) == 3,
             "event: %s", xc_client_last_error(c));
    xc_client_value_free(&r);
    xc_client_destroy(&c);
    fake_stop(&f);
}

/* No daemon: with no socket file, requests and pushes fail at once
 * (XC_ENOTFOUND, a message naming the missing file); with a socket file nobody
 * answers on, they time out. */
static void test_client_no_daemon(void)
{
    xc_client_options_t o;
    char dir[300];
    path_in_tmp(dir, sizeof dir, "nodaemon");
    xc_client_options_default(&o);
    o.run_dir = dir;
    o.timeout_ms = 200;
    xc_client_t *c = xc_client_new(&o, NULL);
    XC_REQUIRE(c, "new");
    XC_CHECK(strstr(xc_client_endpoint(c, "control"), "nodaemon/control.sock") != NULL, "endpoint %s",
             xc_client_endpoint(c, "control"));
    xc_client_value_t *r = NULL;
    int rc = xc_client_status(c, &r);
    XC_CHECK(rc == XC_ENOTFOUND && r == NULL, "status: %s", xc_errname(rc));
    XC_CHECK(strstr(xc_client_last_error(c), "does not exist") != NULL, "message: %s", xc_client_last_error(c));
    float x0[8] = {0};
    XC_CHECK(xc_client_push(c, x0, XC_CLIENT_DTYPE_F32, 1, 4) == XC_ENOTFOUND, "push with no socket file");
    float x[8] = {0};
    XC_CHECK(xc_client_push(c, NULL, XC_CLIENT_DTYPE_F32, 1, 4) == XC_EINVAL, "NULL data");
    XC_CHECK(xc_client_push(c, x, XC_CLIENT_DTYPE_F32, 0, 4) == XC_EINVAL, "n = 0");
    XC_CHECK(xc_client_push(c, x, (xc_client_dtype_t)7, 1, 4) == XC_EDTYPE, "dtype 7");
    XC_CHECK(strstr(xc_client_last_error(c), "dtype") != NULL, "dtype message");
    /* push into a socket file nobody answers on: the first `window` succeed
     * (queued), then a timeout */
    char sock[400];
    mkdir(dir, 0700);
    snprintf(sock, sizeof sock, "%s/ingest.sock", dir);
    FILE *f = fopen(sock, "w");
    XC_REQUIRE(f, "create %s", sock);
    fclose(f);
    o.window = 1;
    xc_client_destroy(&c);
    c = xc_client_new(&o, NULL);
    XC_REQUIRE(c, "new 2");
    XC_CHECK(xc_client_push(c, x, XC_CLIENT_DTYPE_F32, 1, 4) == XC_OK, "queued push");
    XC_CHECK(xc_client_push(c, x, XC_CLIENT_DTYPE_F32, 1, 4) == XC_ETIMEDOUT, "second push times out");
    XC_CHECK(xc_client_flush(c) == XC_ETIMEDOUT, "flush times out");
    xc_client_destroy(&c);
    xc_client_destroy(&c); /* NULL-safe */
    unlink(sock);
    rmdir(dir);

    int err = 0;
    o.window = 100000;
    XC_CHECK(xc_client_new(&o, &err) == NULL && err == XC_EINVAL, "window too large");
    o.window = 8;
    o.producer = "a-producer-name-longer-than-sixty-four-bytes-is-refused-by-the-protocol-xxxxxxxx";
    XC_CHECK(xc_client_new(&o, &err) == NULL && err == XC_EINVAL, "producer too long");
    o.producer = NULL;
    o.control = "nonsense://x";
    c = xc_client_new(&o, NULL);
    XC_REQUIRE(c, "bad endpoints are reported on use");
    XC_CHECK(xc_client_ping(c, NULL) == XC_EINVAL && strstr(xc_client_last_error(c), "nonsense://x"),
             "bad endpoint: %s", xc_client_last_error(c));
    xc_client_destroy(&c);
}

/* --------------------------------------------------------------------- CLI */

/* The last 300 bytes of a captured output, for failure messages. */
static const char *tail(const char *s)
{
    size_t n = strlen(s);
    return n > 300 ? s + n - 300 : s;
}

/* Runs xcoder with args; captures stdout+stderr into out (NUL-terminated).
 * Returns the exit status, or -1. */
static int run_cli(char *out, size_t out_len, const char *const *args)
{
    char *argv[32];
    int n = 0, pfd[2];
    argv[n++] = g_xcoder;
    for (; *args && n < 31; args++) argv[n++] = (char *)*args;
    argv[n] = NULL;
    if (pipe(pfd) < 0) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pfd[1], 1);
        dup2(pfd[1], 2);
        close(pfd[0]);
        execv(g_xcoder, argv);
        _exit(127);
    }
    close(pfd[1]);
    size_t got = 0;
    ssize_t r;
    while ((r = read(pfd[0], out + got, out_len - 1 - got)) > 0) got += (size_t)r;
    out[got] = 0;
    close(pfd[0]);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_cli_usage_errors(void)
{
    char nodaemon[300], bad[300];
    path_in_tmp(nodaemon, sizeof nodaemon, "nodaemon");
    path_in_tmp(bad, sizeof bad, "text.npy");
    struct {
        const char *args[12];
        int code;
        const char *msg;
    } cases[] = {
        {{NULL}, 2, "usage: xcoder"},
        {{"frobnicate", NULL}, 2, "unknown command 'frobnicate'"},
        {{"status", "--frob", NULL}, 2, "unknown option --frob"},
        {{"status", "extra", NULL}, 2, "unexpected argument 'extra'"},
        {{"latent", NULL}, 2, "missing argument"},
        {{"latent", "abc", NULL}, 2, "not an integer"},
        {{"latent", "-3", NULL}, 2, "not an integer"},
        {{"latents", "--top", NULL}, 2, "--top needs a value"},
        {{"latents", "--top", "0", NULL}, 2, "not an integer in [1,"},
        {{"--timeout", "soon", "status", NULL}, 2, "--timeout"},
        {{"watch", "--json", NULL}, 2, "--json is not supported"},
        {{"watch", "--interval", "0", NULL}, 2, "--interval"},
        {{"synth", "--out", "x.npy", NULL}, 2, "--out needs --tokens"},
        {{"synth", "--dtype", "f64", "--out", "x.npy", NULL}, 2, "not one of f32, f16, bf16"},
        {{"synth", "--out", "x.npy", "--tokens", "10", "--d", "4", "--shared-cos", "2", NULL}, 2, "--shared-cos"},
        {{"report", "--offline", NULL}, 2, "--offline needs --checkpoint"},
        {{"push", NULL}, 2, "missing argument"},
        {{"push", "/nonexistent/x.npy", NULL}, 1, "cannot open /nonexistent/x.npy"},
        {{"push", bad, NULL}, 1, "not a .npy file"},
        {{"-x", NULL}, 2, "unknown option '-x'"},
        {{"latents", "-n", "0", NULL}, 2, "--top"},          /* -n is --top ... */
        {{"latents", "-n0", NULL}, 2, "--top"},
        {{"watch", "-n", "many", NULL}, 2, "--count"},       /* ... or --count */
        {{"status", "-n", "3", NULL}, 2, "-n (--top / --count) is not an option"},
        {{"watch", "-j", NULL}, 2, "-j (--json) is not supported"},
        {{"-n", "3", "latents", NULL}, 2, "comes after the command"},
        {{"--run-dir", nodaemon, "--timeout", "20", "status", NULL}, 1, "does not exist"},
        {{"--run-dir", nodaemon, "--timeout", "20", "watch", "--count", "1", NULL}, 1, "does not exist"},
        {{"scaling", "--tokens", "0", NULL}, 2, "not an integer in [1,"},
        {{"scaling", "--source", "ram", NULL}, 2, "not one of auto, shm, control"},
        {{"latents", "--class", "chatty", NULL}, 2, "not one of chat_only"},
        {{"latents", "--by", "fired", "--source", "shm", NULL}, 2, "not in shared memory"},
        {{"--name", "no-such-xcoderd-instance", "latents", "--source", "shm", NULL}, 1, "no shared memory"},
        {{"--name", "no-such-xcoderd-instance", "latent", "1", "--source", "shm", NULL}, 1, "no shared memory"},
        {{"--name", "no-such-xcoderd-instance", "watch", "--source", "shm", NULL}, 1, "no shared memory"},
        {{"--run-dir", nodaemon, "--timeout", "20", "scaling", NULL}, 1, "does not exist"},
    };
    char out[8192];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = run_cli(out, sizeof out, cases[i].args);
        XC_CHECK(rc == cases[i].code, "case %zu (%s %s): exit %d, want %d: %.300s", i, cases[i].args[0] ? cases[i].args[0] : "",
                 cases[i].args[0] && cases[i].args[1] ? cases[i].args[1] : "", rc, cases[i].code, tail(out));
        XC_CHECK(strstr(out, cases[i].msg) != NULL, "case %zu: output lacks '%s': %.300s", i, cases[i].msg, tail(out));
    }
}

static void test_cli_help(void)
{
    static const char *const cmds[] = {"push", "status", "ping", "watch", "latents", "latent", "checkpoint", "pause",
                                       "resume", "shutdown", "config", "events", "synth", "report", "scaling"};
    char out[16384];
    const char *a0[] = {"--help", NULL};
    XC_CHECK(run_cli(out, sizeof out, a0) == 0 && strstr(out, "commands:"), "xcoder --help: %.300s", tail(out));
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        const char *a[] = {cmds[i], "--help", NULL};
        int rc = run_cli(out, sizeof out, a);
        char want[64];
        snprintf(want, sizeof want, "usage: xcoder %s", cmds[i]);
        XC_CHECK(rc == 0 && strstr(out, want) && strstr(out, "--run-dir"), "%s --help (exit %d): %.300s", cmds[i], rc, tail(out));
    }
}

/* synth --out writes a file that push's reader accepts, deterministically. */
static void test_cli_synth_file(void)
{
    char p1[300], p2[300], out[4096], why[256];
    path_in_tmp(p1, sizeof p1, "s1.npy");
    path_in_tmp(p2, sizeof p2, "s2.npy");
    const char *a1[] = {"synth", "--out", p1, "--tokens", "300", "--d", "16", "--seed", "5", NULL};
    const char *a2[] = {"synth", "--out", p2, "--tokens", "300", "--d", "16", "--seed", "5", NULL};
    XC_REQUIRE(run_cli(out, sizeof out, a1) == 0, "synth 1: %.300s", tail(out));
    XC_REQUIRE(run_cli(out, sizeof out, a2) == 0, "synth 2: %.300s", tail(out));
    xc_client_npy_t n1, n2;
    XC_REQUIRE(xc_client_npy_open(p1, &n1, why, sizeof why) == XC_OK, "%s", why);
    XC_REQUIRE(xc_client_npy_open(p2, &n2, why, sizeof why) == XC_OK, "%s", why);
    XC_CHECK(n1.n_tokens == 300 && n1.d == 16, "shape");
    XC_CHECK(n1.data_bytes == n2.data_bytes && memcmp(n1.data, n2.data, n1.data_bytes) == 0, "same seed, same data");
    double s = 0;
    const float *x = n1.data;
    for (size_t i = 0; i < 300 * 32; i++) s += fabs(x[i]);
    XC_CHECK(s > 0 && isfinite(s), "data is not all zero");
    xc_client_npy_close(&n1);
    xc_client_npy_close(&n2);
}

/* ------------------------------------------------- per-latent records, shm */

/* A shared-memory object as the daemon would write it: 8 latents with known
 * values; latent 3 dead, 5 and 6 chat-only (6 chat-specific), nu undefined
 * (NaN) for 2 and 7, an exact pass when `exact`. */
static xc_shm_writer_t *fake_shm(const char *inst, int exact)
{
    int err = 0;
    char why[256];
    xc_shm_writer_t *w = xc_shm_writer_open(inst, 8, 4, 0, 0600, NULL, &err, why, sizeof why);
    if (!w) return NULL;
    static const float dn[8] = {0.5f, 0.05f, 0.45f, 0.97f, 0.3f, 0.95f, 0.99f, 0.7f};
    static const uint8_t cls[8] = {XC_CLASS_SHARED, XC_CLASS_BASE_ONLY, XC_CLASS_SHARED,   XC_CLASS_DEAD,
                                   XC_CLASS_OTHER,  XC_CLASS_CHAT_ONLY, XC_CLASS_CHAT_ONLY, XC_CLASS_OTHER};
    static const float nu[8] = {0.9f, 1.2f, NAN, 0.5f, 0.8f, 0.6f, 0.05f, NAN};
    xc_shm_writer_begin(w);
    xc_shm_header_t *h = xc_shm_writer_header(w);
    h->step = 77;
    h->tokens = 77 * 256;
    h->class_counts[XC_CLASS_SHARED] = 2;
    h->class_counts[XC_CLASS_BASE_ONLY] = 1;
    h->class_counts[XC_CLASS_DEAD] = 1;
    h->class_counts[XC_CLASS_OTHER] = 2;
    h->class_counts[XC_CLASS_CHAT_ONLY] = 2;
    h->class_counts[XC_COUNT_CHAT_SPECIFIC] = 1;
    h->thresholds[0] = 0.9f, h->thresholds[1] = 0.1f, h->thresholds[2] = 0.4f, h->thresholds[3] = 0.6f;
    h->thresholds[4] = 0.2f, h->thresholds[5] = 0.5f;
    h->scaling_step = exact ? 70 : -1;
    h->scaling_tokens = exact ? 5000 : 0;
    for (int a = 0; a < XC_SHM_NARRAYS; a++) {
        if (a == XC_SHM_CLASS || a == XC_SHM_FLAGS || a == XC_SHM_LAST_STEP || a == XC_SHM_ACTIVE ||
            a == XC_SHM_EXACT_ACTIVE)
            continue;
        float *v = xc_shm_writer_array(w, (xc_shm_array_t)a);
        for (int j = 0; j < 8; j++) v[j] = 0.01f * (float)(a + 1) + 0.1f * (float)j;
    }
    float *d = xc_shm_writer_array(w, XC_SHM_DELTA_NORM), *ne = xc_shm_writer_array(w, XC_SHM_NU_ERR),
          *xe = xc_shm_writer_array(w, XC_SHM_EXACT_NU_ERR);
    int64_t *last = xc_shm_writer_array(w, XC_SHM_LAST_STEP);
    double *act = xc_shm_writer_array(w, XC_SHM_ACTIVE), *xact = xc_shm_writer_array(w, XC_SHM_EXACT_ACTIVE);
    uint8_t *c = xc_shm_writer_array(w, XC_SHM_CLASS), *fl = xc_shm_writer_array(w, XC_SHM_FLAGS);
    for (int j = 0; j < 8; j++) {
        d[j] = dn[j];
        ne[j] = nu[j];
        xe[j] = exact ? nu[j] * 0.5f : NAN;
        last[j] = j == 3 ? -1 : 70 + j;
        act[j] = 100.0 * j;
        xact[j] = 10.0 * j;
        c[j] = cls[j];
        fl[j] = j == 6 ? (XC_FLAG_CHAT_SPECIFIC | (exact ? XC_FLAG_SCALING_EXACT : 0)) : j == 5 ? XC_FLAG_NU_UNSTABLE : 0;
    }
    xc_shm_writer_end(w);
    return w;
}

static void test_latents_records(void)
{
    char inst[64];
    snprintf(inst, sizeof inst, "xctest-rec-%d", (int)getpid());
    xc_shm_writer_t *w = fake_shm(inst, 1);
    XC_REQUIRE(w, "writer");
    int err = 0;
    xc_shm_reader_t *r = xc_shm_reader_open(inst, &err);
    XC_REQUIRE(r, "reader: %s", xc_errname(err));
    xc_shm_snapshot_t s;
    XC_REQUIRE(xc_shm_reader_snapshot(r, &s, 1000) == XC_OK, "snapshot");

    /* a record from shared memory */
    xc_lat_t l;
    xc_lat_from_shm(&s, 6, &l);
    XC_CHECK(l.j == 6 && l.cls == XC_CLASS_CHAT_ONLY && l.chat_specific && !l.dead, "latent 6: cls %d cs %d", l.cls,
             l.chat_specific);
    XC_CHECK(l.delta_norm == (double)0.99f && l.run.nu_err == (double)0.05f && l.exact.nu_err == (double)0.025f,
             "latent 6 values %g %g %g", l.delta_norm, l.run.nu_err, l.exact.nu_err);
    XC_CHECK(l.has_exact && l.exact.active == 60.0 && l.run.active == 600.0 && l.last_step_fired == 76, "latent 6 exact");
    XC_CHECK(isnan(l.fired) && isnan(l.tokens_since_fired), "fired is not in shared memory");
    XC_CHECK(!l.nu_unstable, "latent 6 stable");
    xc_lat_from_shm(&s, 5, &l);
    XC_CHECK(l.nu_unstable && !l.chat_specific, "latent 5: flag bit 2 read as an unstable nu");
    xc_lat_from_shm(&s, 3, &l);
    XC_CHECK(l.dead && l.cls == XC_CLASS_DEAD && l.last_step_fired == -1, "latent 3 is dead");

    /* written out and read back as the daemon's map would be: the same record */
    for (int j = 0; j < 8; j++) {
        xc_lat_t a, b;
        xc_lat_from_shm(&s, j, &a);
        xc_buf_t buf;
        xc_mpw_t mw;
        xc_buf_init(&buf);
        xc_mpw_init(&mw, &buf);
        xc_mpw_map_begin(&mw);
        xc_lat_write(&mw, &a, 1);
        xc_mpw_map_end(&mw);
        XC_REQUIRE(xc_mpw_finish(&mw) == XC_OK, "write %d", j);
        xc_client_value_t *v = xc_client_value_parse(buf.data, buf.len, NULL);
        XC_REQUIRE(v, "parse %d", j);
        XC_CHECK(xc_lat_from_value(v, -1, &b) == XC_OK, "from value %d", j);
        const xc_client_value_t *nu = xc_client_value_path(v, "scaling.nu_err");
        XC_CHECK(nu && (isnan(a.run.nu_err) ? nu->type == XC_VAL_NIL : nu->type == XC_VAL_FLOAT), "NaN travels as nil (%d)", j);
        XC_CHECK(b.j == a.j && b.cls == a.cls && b.dead == a.dead && b.chat_specific == a.chat_specific &&
                     b.delta_norm == a.delta_norm && b.last_step_fired == a.last_step_fired && b.has_exact == a.has_exact,
                 "round trip %d", j);
        for (int f = 0; f < XC_LAT_NFIELDS; f++) {
            double x = xc_lat_value(&a, f), y = xc_lat_value(&b, f);
            XC_CHECK((isnan(x) && isnan(y)) || x == y, "round trip %d field %s: %g vs %g", j, xc_lat_field_name(f), x, y);
        }
        xc_client_value_free(&v);
        xc_buf_free(&buf);
    }

    /* selection: order (undefined last either way, ties by index), filters */
    xc_lat_t *o = NULL;
    size_t n = 0;
    XC_REQUIRE(xc_lat_select_shm(&s, XC_LAT_F_NU_ERR, 0, 0, -1, 100, &o, &n) == XC_OK && n == 8, "select all");
    long want_desc[8] = {1, 0, 4, 5, 3, 6, 2, 7};
    for (size_t i = 0; i < n; i++) XC_CHECK(o[i].j == want_desc[i], "desc by nu_err: position %zu is %ld", i, o[i].j);
    free(o);
    XC_REQUIRE(xc_lat_select_shm(&s, XC_LAT_F_NU_ERR, 1, 1, -1, 5, &o, &n) == XC_OK && n == 5, "select asc alive");
    long want_asc[5] = {6, 5, 4, 0, 1};
    for (size_t i = 0; i < n; i++) XC_CHECK(o[i].j == want_asc[i], "asc by nu_err: position %zu is %ld", i, o[i].j);
    free(o);
    XC_REQUIRE(xc_lat_select_shm(&s, XC_LAT_F_DELTA_NORM, 0, 0, XC_CLASS_CHAT_ONLY, 10, &o, &n) == XC_OK, "chat-only");
    XC_CHECK(n == 2 && o[0].j == 6 && o[1].j == 5, "chat-only by delta: n %zu", n);
    free(o);
    XC_REQUIRE(xc_lat_select_shm(&s, XC_LAT_F_DELTA_NORM, 0, 0, XC_LAT_CLASS_CHAT_SPECIFIC, 10, &o, &n) == XC_OK, "cs");
    XC_CHECK(n == 1 && o[0].j == 6, "chat-specific: n %zu", n);
    free(o);
    XC_CHECK(xc_lat_select_shm(&s, XC_LAT_F_FIRED, 0, 0, -1, 10, &o, &n) == XC_EINVAL, "fired is not in shm");
    /* xc_lat_sort on records in another order gives the same answer */
    xc_lat_t all[8];
    for (int j = 0; j < 8; j++) xc_lat_from_shm(&s, 7 - j, &all[j]);
    xc_lat_sort(all, 8, XC_LAT_F_NU_ERR, 0);
    for (int i = 0; i < 8; i++) XC_CHECK(all[i].j == want_desc[i], "sort desc: position %d is %ld", i, all[i].j);

    /* names */
    XC_CHECK(xc_lat_field("exact_nu_rec") == XC_LAT_F_EXACT_NU_REC && xc_lat_field("nope") < 0, "field names");
    for (int f = 0; f < XC_LAT_NFIELDS; f++)
        XC_CHECK(xc_lat_field(xc_lat_field_name(f)) == f && strstr(xc_lat_field_list(), xc_lat_field_name(f)),
                 "field %d", f);
    XC_CHECK(xc_lat_class_parse("chat_only") == XC_CLASS_CHAT_ONLY && xc_lat_class_parse("dead") == XC_CLASS_DEAD &&
                 xc_lat_class_parse("chat-specific") == XC_LAT_CLASS_CHAT_SPECIFIC && xc_lat_class_parse("x") < 0,
             "class names");
    double med[5] = {3, NAN, 1, 2, 10};
    size_t def = 0;
    XC_CHECK(xc_lat_median(med, 5, &def) == 2.5 && def == 4, "median of the defined values");
    XC_CHECK(isnan(xc_lat_median(med, 0, &def)) && def == 0, "median of nothing");

    /* no exact pass: exact fields undefined */
    xc_shm_snapshot_free(&s);
    xc_shm_reader_close(&r);
    xc_shm_writer_close(&w, 1);
    w = fake_shm(inst, 0);
    XC_REQUIRE(w, "writer 2");
    r = xc_shm_reader_open(inst, &err);
    XC_REQUIRE(r && xc_shm_reader_snapshot(r, &s, 1000) == XC_OK, "snapshot 2");
    xc_lat_from_shm(&s, 6, &l);
    XC_CHECK(!l.has_exact && isnan(xc_lat_value(&l, XC_LAT_F_EXACT_NU_ERR)), "no exact pass");
    xc_shm_snapshot_free(&s);
    xc_shm_reader_close(&r);
    xc_shm_writer_close(&w, 1);
}

/* The CLI on a shared-memory object: same fields as from the daemon, filters,
 * and clear errors for a missing or stale object. */
static void test_cli_latents_shm(void)
{
    char inst[64], out[32768];
    snprintf(inst, sizeof inst, "xctest-cli-%d", (int)getpid());
    xc_shm_writer_t *w = fake_shm(inst, 1);
    XC_REQUIRE(w, "writer");
    const char *a1[] = {"--name", inst, "latents", "--source", "shm", "--json", "--by", "nu_err", "--top", "3", NULL};
    XC_CHECK(run_cli(out, sizeof out, a1) == 0, "latents: %.300s", tail(out));
    xc_client_value_t *v = xc_client_json_parse(out, strlen(out), NULL, NULL, 0);
    XC_REQUIRE(v, "JSON: %.300s", tail(out));
    XC_CHECK(!strcmp(xc_client_value_getstr(v, "source", ""), "shm") && xc_client_value_getnum(v, "snapshot_step", 0) == 77,
             "source/step: %.300s", out);
    XC_CHECK(xc_client_value_getnum(v, "latents.0.j", -1) == 1 && xc_client_value_getnum(v, "latents.2.j", -1) == 4,
             "order: %.300s", out);
    static const char *const keys[] = {"j", "class", "chat_specific", "delta_norm", "cosine", "norm_base", "norm_chat",
                                       "freq", "mean_act", "max_act", "fired", "tokens_since_fired", "last_step_fired",
                                       "dead", "scaling", "scaling_exact"};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
        XC_CHECK(xc_client_value_get(xc_client_value_path(v, "latents.0"), keys[k]), "field %s missing", keys[k]);
    xc_client_value_free(&v);

    const char *a2[] = {"--name", inst, "latents", "--class", "chat_specific", "--json", NULL};
    XC_CHECK(run_cli(out, sizeof out, a2) == 0, "class filter: %.300s", tail(out));
    v = xc_client_json_parse(out, strlen(out), NULL, NULL, 0);
    const xc_client_value_t *arr = xc_client_value_get(v, "latents");
    XC_CHECK(arr && arr->u.a.n == 1 && xc_client_value_getnum(v, "latents.0.j", -1) == 6 &&
                 !strcmp(xc_client_value_getstr(v, "source", ""), "shm"),
             "chat_specific: %.300s", out);
    const xc_client_value_t *nu = xc_client_value_path(v, "latents.0.scaling_exact.nu_err");
    XC_CHECK(nu && nu->type == XC_VAL_FLOAT && fabs(nu->u.f - 0.025) < 1e-6, "exact nu");
    xc_client_value_free(&v);

    const char *a3[] = {"--name", inst, "latent", "7", "--json", NULL};
    XC_CHECK(run_cli(out, sizeof out, a3) == 0, "latent: %.300s", tail(out));
    v = xc_client_json_parse(out, strlen(out), NULL, NULL, 0);
    nu = xc_client_value_path(v, "stats.scaling.nu_err");
    XC_CHECK(nu && nu->type == XC_VAL_NIL && xc_client_value_getnum(v, "j", -1) == 7, "undefined nu is null: %.300s", out);
    xc_client_value_free(&v);

    const char *a4[] = {"--name", inst, "-v", "latents", "--class", "dead", NULL};
    XC_CHECK(run_cli(out, sizeof out, a4) == 0 && strstr(out, "source shm: /xcoderd.") && strstr(out, "from shm") &&
                 strstr(out, "      3 ") && strstr(out, "dead"),
             "text + -v: %.300s", tail(out));
    const char *a5[] = {"--name", inst, "latent", "8", NULL};
    XC_CHECK(run_cli(out, sizeof out, a5) == 1 && strstr(out, "latent 8 does not exist (dict_size = 8)"), "range: %.300s",
             tail(out));

    /* a stale object: its writer has gone */
    pid_t child = fork();
    if (child == 0) _exit(0);
    waitpid(child, NULL, 0);
    xc_shm_writer_begin(w);
    xc_shm_writer_header(w)->writer_pid = (uint32_t)child;
    xc_shm_writer_end(w);
    const char *a6[] = {"--name", inst, "latents", "--source", "shm", NULL};
    XC_CHECK(run_cli(out, sizeof out, a6) == 1 && strstr(out, "is stale"), "stale: %.300s", tail(out));
    xc_shm_writer_close(&w, 1);
    XC_CHECK(run_cli(out, sizeof out, a6) == 1 && strstr(out, "no shared memory /xcoderd.xctest-cli-"), "gone: %.300s",
             tail(out));
}

/* ------------------------------------------------------------------- main */

static void find_xcoder(const char *argv0)
{
    const char *env = getenv("XCODER_BIN");
    if (env && access(env, X_OK) == 0) {
        snprintf(g_xcoder, sizeof g_xcoder, "%s", env);
        return;
    }
    char dir[400];
    snprintf(dir, sizeof dir, "%s", argv0);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    const char *rel[] = {"/../xcoder", "/../../xcoder", NULL};
    for (int i = 0; rel[i]; i++) {
        snprintf(g_xcoder, sizeof g_xcoder, "%s%s", dir, rel[i]);
        if (access(g_xcoder, X_OK) == 0) return;
    }
    snprintf(g_xcoder, sizeof g_xcoder, "build/xcoder");
}

/* The default run_dir falls back to systemd's RuntimeDirectory when a daemon
 * listens there and none in the per-user location. */
static void test_default_run_dir_systemd(void)
{
    char root[600], dir[700], sock[800], out[1024];
    /* paths stay short (g_tmp is a short mkdtemp name); precisions keep -Wformat-truncation quiet */
    snprintf(root, sizeof root, "%.400s/sysrun", g_tmp);
    snprintf(dir, sizeof dir, "%.500s/xcoderd-svc%d", root, (int)getpid());
    XC_REQUIRE(mkdir(root, 0755) == 0 || errno == EEXIST, "mkdir %.200s", root);
    XC_REQUIRE(mkdir(dir, 0755) == 0, "mkdir %.200s", dir);
    setenv("XCODER_SYSTEM_RUN_ROOT", root, 1);
    setenv("XDG_RUNTIME_DIR", g_tmp, 1);
    char name[64];
    snprintf(name, sizeof name, "svc%d", (int)getpid());
    XC_CHECK(xc_client_default_run_dir(name, out, sizeof out) == 0, "derive");
    XC_CHECK(strstr(out, g_tmp) == out && strstr(out, "sysrun") == NULL, "no daemon anywhere: per-user dir, got %.200s", out);
    snprintf(sock, sizeof sock, "%.700s/control.sock", dir);
    FILE *f = fopen(sock, "w");
    XC_REQUIRE(f, "create %.200s", sock);
    fclose(f);
    XC_CHECK(xc_client_default_run_dir(name, out, sizeof out) == 0 && strcmp(out, dir) == 0,
             "systemd's directory expected, got %.200s", out);
    unlink(sock);
    rmdir(dir);
    unsetenv("XCODER_SYSTEM_RUN_ROOT");
}

int main(int argc, char **argv)
{
    (void)argc;
    snprintf(g_tmp, sizeof g_tmp, "/tmp/xc_test_client.XXXXXX");
    if (!mkdtemp(g_tmp)) {
        printf("not ok - setup: mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    find_xcoder(argv[0]);
    XC_RUN(test_npy_roundtrip);
    XC_RUN(test_npy_variants);
    XC_RUN(test_npy_bad_files);
    XC_RUN(test_npy_fuzz);
    XC_RUN(test_value_lookup);
    XC_RUN(test_json_render);
    XC_RUN(test_json_numbers);
    XC_RUN(test_json_parse_errors);
    XC_RUN(test_safetensors);
    XC_RUN(test_client_window);
    XC_RUN(test_client_nack);
    XC_RUN(test_client_requests);
    XC_RUN(test_client_no_daemon);
    XC_RUN(test_cli_usage_errors);
    XC_RUN(test_cli_help);
    XC_RUN(test_cli_synth_file);
    XC_RUN(test_latents_records);
    XC_RUN(test_cli_latents_shm);
    XC_RUN(test_default_run_dir_systemd);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmp);
    XC_TEST_EXIT();
}
