/* Remote access (daemon/remote.c, proto/remote_proto.c): SHA-256 against the
 * FIPS 180-4 examples, checkpoint names, the table catalogue against the
 * shared-memory layout, and the fetch / checkpoints ops on a real libuv loop
 * and threadpool over a temp state_dir: chunks equal the file, the checksum is
 * the whole file's, resuming at any offset, path traversal refused, a file
 * replaced under its name gets a new checksum, the FIFO bounds, errors. */
#include "xc_remote.h"
#include "xc_remote_proto.h"
#include "xc_shm.h"
#include "xc_test.h"

#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

static void hex_of(const uint8_t *d, size_t n, char *out)
{
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hx[d[i] >> 4];
        out[2 * i + 1] = hx[d[i] & 15];
    }
    out[2 * n] = 0;
}

static void sha_hex(const void *p, size_t n, size_t step, char out[65])
{
    xc_sha256_t s;
    uint8_t dg[32];
    xc_sha256_init(&s);
    for (size_t off = 0; off < n; off += step)
        xc_sha256_update(&s, (const uint8_t *)p + off, n - off < step ? n - off : step);
    xc_sha256_final(&s, dg);
    hex_of(dg, 32, out);
}

static void test_sha256_vectors(void)
{
    char h[65];
    sha_hex("", 0, 1, h);
    XC_CHECK(strcmp(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == 0, "empty: %s", h);
    sha_hex("abc", 3, 1, h);
    XC_CHECK(strcmp(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0, "abc: %s", h);
    const char *m2 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    for (size_t step = 1; step <= 64; step += 7) {
        sha_hex(m2, strlen(m2), step, h);
        XC_CHECK(strcmp(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1") == 0,
                 "448-bit message in pieces of %zu: %s", step, h);
    }
    size_t n = 1000000;
    char *a = malloc(n);
    XC_REQUIRE(a, "malloc");
    memset(a, 'a', n);
    sha_hex(a, n, 4093, h);
    XC_CHECK(strcmp(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0,
             "a million a: %s", h);
    free(a);
    uint8_t dg[32] = {0xab, 0x01};
    char sum[72];
    xc_sha256_checksum(dg, sum);
    XC_CHECK(strncmp(sum, "sha256:ab01", 11) == 0 && strlen(sum) == 71, "checksum string %s", sum);
}

static void test_names(void)
{
    struct { const char *s; int ok; long step; const char *kind; } v[] = {
        {"default-000001000.safetensors", 1, 1000, "checkpoint"},
        {"run-a-000000042.resume.safetensors", 1, 42, "resume"},
        {"x.safetensors", 1, -1, "other"},
        {"a-12-b.safetensors", 1, -1, "other"},
        {".default-000001000.safetensors.tmp.12", 0, -1, "other"},
        {".hidden.safetensors", 0, -1, "other"},
        {"../etc.safetensors", 0, -1, "other"},
        {"a/b.safetensors", 0, -1, "other"},
        {"/etc/passwd", 0, -1, "other"},
        {".safetensors", 0, -1, "other"},
        {"plain.txt", 0, -1, "other"},
        {"sp ace.safetensors", 0, -1, "other"},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        size_t l = strlen(v[i].s);
        char kind[32];
        XC_CHECK(xc_ckpt_name_ok(v[i].s, l) == v[i].ok, "name_ok(%s)", v[i].s);
        if (!v[i].ok) continue;
        XC_CHECK(xc_ckpt_name_step(v[i].s, l) == v[i].step, "step(%s) = %ld", v[i].s, xc_ckpt_name_step(v[i].s, l));
        xc_ckpt_name_kind(v[i].s, l, kind, sizeof kind);
        XC_CHECK(strcmp(kind, v[i].kind) == 0, "kind(%s) = %s", v[i].s, kind);
    }
    char longname[260];
    memset(longname, 'a', sizeof longname);
    memcpy(longname + 201 - 12, ".safetensors", 13);
    XC_CHECK(!xc_ckpt_name_ok(longname, strlen(longname)), "201-byte name refused");
}

/* The table's first 24 columns are SHM.md's arrays, same order and dtype. */
static void test_table_catalogue(void)
{
    char inst[64];
    int err = 0;
    snprintf(inst, sizeof inst, "xctest-remote-%ld", (long)getpid());
    xc_shm_writer_t *w = xc_shm_writer_open(inst, 8, 4, 0, 0600, NULL, &err, NULL, 0);
    XC_REQUIRE(w, "shm writer: %d", err);
    xc_shm_header_t *h = xc_shm_writer_header(w);
    XC_CHECK(h->n_arrays == XC_SHM_NARRAYS, "n_arrays");
    for (int a = 0; a < XC_SHM_NARRAYS; a++) {
        XC_CHECK(xc_table_cols[a].shm == a, "column %d is shm array %d", a, xc_table_cols[a].shm);
        XC_CHECK((uint32_t)xc_table_cols[a].dtype == h->arrays[a].dtype, "dtype of %s", xc_table_cols[a].name);
        XC_CHECK(xc_table_dtype_size(xc_table_cols[a].dtype) == h->arrays[a].elem_size, "size of %s",
                 xc_table_cols[a].name);
        XC_CHECK(xc_table_col_find(xc_table_cols[a].name, strlen(xc_table_cols[a].name)) == a, "find");
    }
    xc_shm_writer_close(&w, 1);
    XC_CHECK(xc_table_col_find("j", 1) == xc_table_ncols - 1 && !xc_table_cols[xc_table_ncols - 1].by_default,
             "j is last and only on request");
    XC_CHECK(xc_table_col_find("nope", 4) == -1, "unknown");
    XC_CHECK(xc_table_dtype_parse("i64", 3) == XC_TCOL_I64 && xc_table_dtype_parse("f16", 3) == 0, "dtype parse");
}

/* ------------------------------------------------- fetch on a real loop -- */
typedef struct {
    int replies, errors;
    xc_buf_t last;
    int last_tag;
} sink_t;

static void sink_fn(void *ctx, const void *tag, const void *body, size_t len, int is_error)
{
    sink_t *k = ctx;
    k->replies++;
    k->errors += is_error;
    memcpy(&k->last_tag, tag, sizeof k->last_tag);
    xc_buf_reset(&k->last);
    xc_buf_append(&k->last, body, len);
}

static int make_request(xc_buf_t *b, const char *op, const char *file, int64_t offset, int64_t length)
{
    xc_mpw_t w;
    xc_buf_reset(b);
    xc_mpw_init(&w, b);
    xc_proto_request_begin(&w, op, 7);
    if (file) xc_mpw_kv_str(&w, "file", file);
    if (offset >= 0) xc_mpw_kv_int(&w, "offset", offset);
    if (length >= 0) xc_mpw_kv_int(&w, "length", length);
    xc_mpw_map_end(&w);
    return xc_mpw_finish(&w);
}

typedef struct {
    uv_loop_t loop;
    xc_remote_t *r;
    sink_t sink;
    xc_buf_t req;
    char dir[64];
} fx_t;

/* Runs one request through the remote module; returns the error code of the
 * immediate refusal, or 0 with the reply parsed into *doc (caller frees). */
static int fetch_one(fx_t *fx, const char *file, int64_t offset, int64_t length, xc_mp_doc_t **doc, int *code)
{
    xc_request_t req;
    char why[256];
    *doc = NULL;
    *code = 0;
    make_request(&fx->req, "fetch", file, offset, length);
    if (xc_proto_request_decode(fx->req.data, fx->req.len, &req, why, sizeof why)) return XC_EPROTO;
    int tag = 42, before = fx->sink.replies;
    int rc = xc_remote_fetch(fx->r, &req, fx->req.data, fx->req.len, &tag, why, sizeof why);
    xc_proto_request_free(&req);
    if (rc) return rc;
    while (fx->sink.replies == before) uv_run(&fx->loop, UV_RUN_ONCE);
    char msg[256];
    *code = xc_proto_reply_decode(fx->sink.last.data, fx->sink.last.len, doc, msg, sizeof msg);
    return 0;
}

static void write_file(const char *dir, const char *name, const uint8_t *p, size_t n)
{
    char path[256], tmp[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s/.tmp", dir);
    FILE *f = fopen(tmp, "wb");
    if (!f) return;
    fwrite(p, 1, n, f);
    fclose(f);
    rename(tmp, path); /* like the daemon: a new inode under the name */
}

static void fx_open(fx_t *fx)
{
    memset(fx, 0, sizeof *fx);
    snprintf(fx->dir, sizeof fx->dir, "/tmp/xcremote.XXXXXX");
    if (!mkdtemp(fx->dir)) fx->dir[0] = 0;
    uv_loop_init(&fx->loop);
    xc_buf_init(&fx->sink.last);
    xc_buf_init(&fx->req);
    fx->r = xc_remote_new(&fx->loop, fx->dir, sizeof(int), sink_fn, &fx->sink);
}

static void fx_close(fx_t *fx)
{
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    xc_remote_destroy(&fx->r);
    uv_loop_close(&fx->loop);
    xc_buf_free(&fx->sink.last);
    xc_buf_free(&fx->req);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fx->dir);
    if (fx->dir[0] && system(cmd)) {
    }
}

static void test_fetch_chunks(void)
{
    fx_t fx;
    fx_open(&fx);
    XC_REQUIRE(fx.dir[0] && fx.r, "fixture");
    size_t n = 3 * XC_FETCH_CHUNK_MAX + 12345;
    uint8_t *data = malloc(n), *got = calloc(1, n);
    XC_REQUIRE(data && got, "malloc");
    for (size_t i = 0; i < n; i++) data[i] = (uint8_t)(i * 2654435761u >> 13);
    write_file(fx.dir, "t-000000010.safetensors", data, 5);
    write_file(fx.dir, "t-000000020.resume.safetensors", data, 7);
    write_file(fx.dir, "t-000000020.safetensors", data, n);
    write_file(fx.dir, ".t-000000030.safetensors.tmp.1", data, 9); /* a checkpoint being written */
    char want[72], hx[65];
    sha_hex(data, n, 65536, hx);
    snprintf(want, sizeof want, "sha256:%s", hx);

    xc_mp_doc_t *doc;
    int code;
    /* default: the newest checkpoint (step 20, the checkpoint itself, not .resume) */
    XC_REQUIRE(fetch_one(&fx, NULL, -1, 0, &doc, &code) == 0 && code == 0, "announce: %d", code);
    xc_mp_node_t root = xc_mp_root(doc);
    uint64_t size = 0;
    char name[64] = "", sum[80] = "";
    xc_mp_copy_str(xc_mp_get(root, "name"), name, sizeof name);
    xc_mp_copy_str(xc_mp_get(root, "checksum"), sum, sizeof sum);
    xc_mp_as_u64(xc_mp_get(root, "size"), &size);
    XC_CHECK(strcmp(name, "t-000000020.safetensors") == 0, "newest: %s", name);
    XC_CHECK(size == n, "size %llu", (unsigned long long)size);
    XC_CHECK(strcmp(sum, want) == 0, "checksum %s vs %s", sum, want);
    XC_CHECK(xc_mp_len(xc_mp_get(root, "data")) == 0, "length 0: no data");
    xc_mp_doc_free(&doc);

    /* chunks of odd sizes from an odd offset (a resumed transfer) reassemble the file */
    size_t off = 777;
    memcpy(got, data, off);
    int chunks = 0, eof = 0;
    while (!eof) {
        XC_REQUIRE(fetch_one(&fx, name, (int64_t)off, 1000003, &doc, &code) == 0 && code == 0, "chunk at %zu", off);
        root = xc_mp_root(doc);
        const void *p;
        size_t len;
        uint64_t o;
        xc_mp_as_bin(xc_mp_get(root, "data"), &p, &len);
        xc_mp_as_u64(xc_mp_get(root, "offset"), &o);
        xc_mp_as_bool(xc_mp_get(root, "eof"), &eof);
        xc_mp_copy_str(xc_mp_get(root, "checksum"), sum, sizeof sum);
        XC_CHECK(o == off && off + len <= n && strcmp(sum, want) == 0, "chunk header at %zu", off);
        XC_CHECK(len == (n - off < 1000003 ? n - off : 1000003), "chunk length %zu", len);
        memcpy(got + off, p, len);
        off += len;
        chunks++;
        xc_mp_doc_free(&doc);
        XC_REQUIRE(chunks < 100, "no eof");
    }
    XC_CHECK(off == n && memcmp(got, data, n) == 0, "reassembled file differs");
    /* length is capped at 1 MiB */
    XC_REQUIRE(fetch_one(&fx, name, 0, 1 << 30, &doc, &code) == 0 && code == 0, "big length");
    XC_CHECK(xc_mp_len(xc_mp_get(xc_mp_root(doc), "data")) == XC_FETCH_CHUNK_MAX, "cap");
    xc_mp_doc_free(&doc);
    /* offset == size: empty, eof; beyond: XC_EINVAL */
    XC_REQUIRE(fetch_one(&fx, name, (int64_t)n, -1, &doc, &code) == 0 && code == 0, "at end");
    xc_mp_as_bool(xc_mp_get(xc_mp_root(doc), "eof"), &eof);
    XC_CHECK(eof && xc_mp_len(xc_mp_get(xc_mp_root(doc), "data")) == 0, "eof at end");
    xc_mp_doc_free(&doc);
    XC_REQUIRE(fetch_one(&fx, name, (int64_t)n + 1, -1, &doc, &code) == 0, "beyond");
    XC_CHECK(code == XC_EINVAL, "beyond end: %d", code);
    xc_mp_doc_free(&doc);

    /* the file replaced under the same name: a new checksum and size */
    data[100] ^= 0xff;
    write_file(fx.dir, name, data, n - 1);
    XC_REQUIRE(fetch_one(&fx, name, 0, 16, &doc, &code) == 0 && code == 0, "replaced");
    xc_mp_copy_str(xc_mp_get(xc_mp_root(doc), "checksum"), sum, sizeof sum);
    xc_mp_as_u64(xc_mp_get(xc_mp_root(doc), "size"), &size);
    sha_hex(data, n - 1, 1 << 20, hx);
    XC_CHECK(strcmp(sum + 7, hx) == 0 && size == n - 1, "replaced file: checksum %s", sum);
    xc_mp_doc_free(&doc);
    /* removed: XC_ENOTFOUND */
    char path[256];
    snprintf(path, sizeof path, "%s/%s", fx.dir, name);
    unlink(path);
    XC_REQUIRE(fetch_one(&fx, name, 0, 16, &doc, &code) == 0, "removed");
    XC_CHECK(code == XC_ENOTFOUND, "removed file: %d", code);
    xc_mp_doc_free(&doc);
    /* names that are not checkpoints are refused before any I/O */
    const char *bad[] = {"../t-000000010.safetensors", "/etc/passwd", ".t-000000030.safetensors.tmp.1",
                         "sub/t.safetensors", "t-000000010.safetensors/..", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        XC_CHECK(fetch_one(&fx, bad[i], 0, 16, &doc, &code) == XC_EINVAL, "'%s' not refused", bad[i]);
    /* a symlink named like a checkpoint is not followed */
    char target[256];
    snprintf(path, sizeof path, "%s/link-000000001.safetensors", fx.dir);
    snprintf(target, sizeof target, "%s/t-000000010.safetensors", fx.dir);
    XC_CHECK(symlink(target, path) == 0, "symlink");
    XC_REQUIRE(fetch_one(&fx, "link-000000001.safetensors", 0, 16, &doc, &code) == 0, "symlink");
    XC_CHECK(code == XC_ENOTFOUND, "symlink followed: %d", code);
    xc_mp_doc_free(&doc);
    XC_CHECK(fx.sink.last_tag == 42, "tag");
    XC_CHECK(xc_remote_busy(fx.r) == 0, "idle");
    free(data);
    free(got);
    fx_close(&fx);
}

static void test_checkpoints_listing(void)
{
    fx_t fx;
    fx_open(&fx);
    XC_REQUIRE(fx.dir[0] && fx.r, "fixture");
    const uint8_t bytes[16] = {1, 2, 3};
    write_file(fx.dir, "t-000000200.safetensors", bytes, 16);
    write_file(fx.dir, "t-000000100.safetensors", bytes, 3);
    write_file(fx.dir, "t-000000200.resume.safetensors", bytes, 8);
    write_file(fx.dir, "notes.txt", bytes, 8);
    write_file(fx.dir, ".t-000000300.safetensors.tmp.9", bytes, 8);
    xc_buf_t out;
    xc_buf_init(&out);
    xc_request_t req;
    char why[256];
    make_request(&fx.req, "checkpoints", NULL, -1, -1);
    XC_REQUIRE(xc_proto_request_decode(fx.req.data, fx.req.len, &req, why, sizeof why) == 0, "decode");
    xc_remote_checkpoints(fx.r, &req, fx.req.data, fx.req.len, &out);
    xc_proto_request_free(&req);
    xc_mp_doc_t *doc = NULL;
    XC_REQUIRE(xc_proto_reply_decode(out.data, out.len, &doc, why, sizeof why) == 0, "reply: %s", why);
    xc_mp_node_t list = xc_mp_get(xc_mp_root(doc), "checkpoints");
    XC_CHECK(xc_mp_len(list) == 3, "3 files, got %zu", xc_mp_len(list));
    const char *order[] = {"t-000000100.safetensors", "t-000000200.resume.safetensors", "t-000000200.safetensors"};
    const char *kinds[] = {"checkpoint", "resume", "checkpoint"};
    const uint64_t sizes[] = {3, 8, 16};
    for (size_t i = 0; i < 3 && i < xc_mp_len(list); i++) {
        xc_mp_node_t e = xc_mp_at(list, i);
        uint64_t sz = 0;
        int64_t step = 0;
        xc_mp_as_u64(xc_mp_get(e, "size"), &sz);
        xc_mp_as_i64(xc_mp_get(e, "step"), &step);
        XC_CHECK(xc_mp_str_eq(xc_mp_get(e, "name"), order[i]), "entry %zu name", i);
        XC_CHECK(xc_mp_str_eq(xc_mp_get(e, "kind"), kinds[i]), "entry %zu kind", i);
        XC_CHECK(sz == sizes[i] && step == (i ? 200 : 100), "entry %zu size/step", i);
    }
    XC_CHECK(xc_mp_str_eq(xc_mp_get(xc_mp_root(doc), "newest"), "t-000000200.safetensors"), "newest");
    xc_mp_doc_free(&doc);
    xc_buf_free(&out);
    fx_close(&fx);
}

/* Requests beyond the workers wait in the FIFO and are all answered, in order of completion. */
static void test_fetch_queue(void)
{
    fx_t fx;
    fx_open(&fx);
    XC_REQUIRE(fx.dir[0] && fx.r, "fixture");
    uint8_t bytes[4096];
    for (size_t i = 0; i < sizeof bytes; i++) bytes[i] = (uint8_t)i;
    write_file(fx.dir, "q-000000001.safetensors", bytes, sizeof bytes);
    int N = 50;
    for (int i = 0; i < N; i++) {
        xc_request_t req;
        char why[256];
        make_request(&fx.req, "fetch", "q-000000001.safetensors", i * 64, 64);
        XC_REQUIRE(xc_proto_request_decode(fx.req.data, fx.req.len, &req, why, sizeof why) == 0, "decode");
        XC_CHECK(xc_remote_fetch(fx.r, &req, fx.req.data, fx.req.len, &i, why, sizeof why) == 0, "queue %d", i);
        xc_proto_request_free(&req);
    }
    XC_CHECK(xc_remote_busy(fx.r) == N, "busy %d", xc_remote_busy(fx.r));
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    XC_CHECK(fx.sink.replies == N && fx.sink.errors == 0, "%d replies, %d errors", fx.sink.replies, fx.sink.errors);
    XC_CHECK(xc_remote_busy(fx.r) == 0, "idle");
    fx_close(&fx);
}

/* A FIFO planted under a checkpoint's name is answered (not served) at once,
 * even by more requests than there are workers; a hard link is refused. */
static void test_fetch_special_files(void)
{
    fx_t fx;
    fx_open(&fx);
    XC_REQUIRE(fx.dir[0] && fx.r, "fixture");
    char p[256], q[256];
    snprintf(p, sizeof p, "%s/f-000000001.safetensors", fx.dir);
    XC_REQUIRE(mkfifo(p, 0600) == 0, "mkfifo");
    uint8_t bytes[64] = {1, 2, 3};
    write_file(fx.dir, "secret.txt", bytes, sizeof bytes);
    snprintf(p, sizeof p, "%s/secret.txt", fx.dir);
    snprintf(q, sizeof q, "%s/h-000000002.safetensors", fx.dir);
    XC_REQUIRE(link(p, q) == 0, "link");
    xc_mp_doc_t *doc;
    int code;
    for (int i = 0; i < 6; i++) {
        XC_REQUIRE(fetch_one(&fx, "f-000000001.safetensors", 0, 64, &doc, &code) == 0, "fifo %d", i);
        XC_CHECK(code == XC_ENOTFOUND, "fifo %d: code %d", i, code);
        xc_mp_doc_free(&doc);
    }
    XC_REQUIRE(fetch_one(&fx, "h-000000002.safetensors", 0, 64, &doc, &code) == 0, "hard link");
    XC_CHECK(code == XC_EPERM, "hard link served: code %d", code);
    xc_mp_doc_free(&doc);
    XC_CHECK(xc_remote_busy(fx.r) == 0, "workers stuck: %d", xc_remote_busy(fx.r));
    fx_close(&fx);
}

/* A test that would hang (a blocked worker) fails instead. */
static void on_alarm(int sig)
{
    static const char m[] = "not ok - timeout: a fetch worker blocked\n";
    if (write(1, m, sizeof m - 1)) {
    }
    _exit(1);
}

int main(void)
{
    signal(SIGALRM, on_alarm);
    alarm(60);
    XC_RUN(test_sha256_vectors);
    XC_RUN(test_names);
    XC_RUN(test_table_catalogue);
    XC_RUN(test_fetch_chunks);
    XC_RUN(test_checkpoints_listing);
    XC_RUN(test_fetch_queue);
    XC_RUN(test_fetch_special_files);
    XC_TEST_EXIT();
}
