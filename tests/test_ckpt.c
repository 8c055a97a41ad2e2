/* Tests of checkpoints (daemon/ckpt.c, format/): the generic
 * safetensors writer (header, alignment, offsets, fill callbacks, metadata
 * escaping, atomic replace, failure leaves no temp file), the crosscoder layout
 * (transposes checked element by element against the engine's parameters), the
 * pair format (checksums, reference tensors), bit-exact round trip, resume
 * continuing bit-identically, fault injection at many byte counts, refusal of
 * truncated / bit-flipped / garbage / foreign / wrong-shape files, rotation,
 * the asynchronous writer.
 *
 * Helper mode for tests/integ_ckpt.py: `test_ckpt --reconstruct CKPT X.npy
 * OUT.npy` loads the pair of CKPT into an engine (the daemon's loader) and
 * writes its reconstruction of X (xc_engine_encode + xc_engine_decode). */
/* failure messages quote paths and reasons; truncating them is harmless */
#pragma GCC diagnostic ignored "-Wformat-truncation"

#include "xc_ckpt.h"
#include "xc_error.h"
#include "xc_config.h"
#include "xc_engine.h"
#include "xc_log.h"
#include "xc_rng.h"
#include "xc_stfile.h"
#include "xc_test.h"
#include "xcoder.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[256];

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc((size_t)n + 1);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    if (p) p[n] = 0;
    *len = (size_t)n;
    return p;
}

static int count_dotfiles(const char *dir)
{
    int n = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    if (!d) return -1;
    while ((e = readdir(d)))
        if (e->d_name[0] == '.' && strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static int fill_iota(void *ctx, size_t off, void *out, size_t len)
{
    int32_t *o = out;
    for (size_t i = 0; i < len / 4; i++) o[i] = (int32_t)(off / 4 + i);
    return 0;
}

static int fill_fail(void *ctx, size_t off, void *out, size_t len) { return XC_EIO; }

/* Finds "name":{...} in the header and reads its data_offsets. */
static int offsets(const char *hdr, const char *name, size_t *a, size_t *b)
{
    char pat[96];
    snprintf(pat, sizeof pat, "\"%s\":{", name);
    const char *p = strstr(hdr, pat);
    if (!p) return -1;
    p = strstr(p, "\"data_offsets\":[");
    if (!p) return -1;
    return sscanf(p, "\"data_offsets\":[%zu,%zu]", a, b) == 2 ? 0 : -1;
}

static void test_st_writer(void)
{
    xc_st_t *st = xc_st_new();
    char path[512], why[256];
    uint64_t bytes = 0;
    float small[3] = {1.5f, -2.f, 3.25f};
    int64_t s3[1] = {3}, big[2] = {600, 1000}; /* 2.4 MB: several fill chunks */
    XC_REQUIRE(st != NULL, "new");
    XC_CHECK(xc_st_add(st, "small", "F32", 1, s3, small) == 0, "add");
    XC_CHECK(xc_st_add_fill(st, "big", "I32", 2, big, fill_iota, NULL) == 0, "add fill");
    XC_CHECK(xc_st_meta(st, "note", "quote \" backslash \\ newline \n end") == 0, "meta");
    XC_CHECK(xc_st_add(st, "bad", "F99", 1, s3, small) == XC_EINVAL, "unknown dtype");
    XC_CHECK(xc_st_add(st, NULL, "F32", 1, s3, small) == XC_EINVAL, "no name");
    XC_REQUIRE(xc_st_write(st, g_dir, "a.safetensors", path, sizeof path, &bytes, why, sizeof why) == 0,
               "%s", why);
    size_t len;
    uint8_t *f = slurp(path, &len);
    XC_REQUIRE(f != NULL, "read back %.200s", path);
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++) hl |= (uint64_t)f[i] << (8 * i);
    XC_CHECK(hl % 8 == 0 && 8 + hl <= len, "header length %llu", (unsigned long long)hl);
    XC_CHECK(bytes == len && len == 8 + hl + 12 + 600 * 1000 * 4, "size %zu", len);
    char *hdr = malloc(hl + 1);
    memcpy(hdr, f + 8, hl);
    hdr[hl] = 0;
    XC_CHECK(strstr(hdr, "\"note\":\"quote \\\" backslash \\\\ newline \\u000a end\"") != NULL, "escaping: %s", hdr);
    size_t a, b;
    XC_CHECK(offsets(hdr, "small", &a, &b) == 0 && a == 0 && b == 12, "small offsets");
    XC_CHECK(memcmp(f + 8 + hl, small, 12) == 0, "small data");
    XC_CHECK(offsets(hdr, "big", &a, &b) == 0 && a == 12 && b == 12 + 2400000, "big offsets");
    const uint8_t *bd = f + 8 + hl + 12;
    int bad = 0;
    for (int i = 0; i < 600000; i++) {
        int32_t v;
        memcpy(&v, bd + 4 * (size_t)i, 4);
        if (v != i) bad++;
    }
    XC_CHECK(bad == 0, "%d wrong values across fill chunks", bad);
    XC_CHECK(count_dotfiles(g_dir) == 0, "temp file left");
    free(hdr);
    free(f);

    /* a failing fill leaves neither the file nor a temp file */
    xc_st_t *st2 = xc_st_new();
    XC_REQUIRE(st2 != NULL, "new");
    xc_st_add_fill(st2, "x", "F32", 1, s3, fill_fail, NULL);
    XC_CHECK(xc_st_write(st2, g_dir, "b.safetensors", path, sizeof path, &bytes, why, sizeof why) == XC_EIO &&
                 strstr(why, "cannot produce tensor x"),
             "fill failure: %s", why);
    XC_CHECK(access("b.safetensors", F_OK) != 0 && count_dotfiles(g_dir) == 0, "left-overs after failure");
    xc_st_destroy(&st2);

    /* an unwritable directory is an XC_EIO with the path in the reason */
    XC_CHECK(xc_st_write(st, "/proc/xc-no-such-dir", "c.safetensors", path, sizeof path, &bytes, why,
                         sizeof why) == XC_EIO && strstr(why, "/proc/xc-no-such-dir"),
             "unwritable: %s", why);
    xc_st_destroy(&st);
    XC_CHECK(st == NULL, "destroy clears");
}

static void test_crosscoder_layout(void)
{
    xc_engine_config_t c;
    int err;
    xc_cfg_engine_defaults(&c, XC_MODEL_BATCHTOPK);
    c.d = 5;
    c.dict_size = 7;
    c.k = 2;
    c.batch_size = 4;
    c.threads = 1;
    xc_engine_t *e = xc_engine_new(&c, &err);
    XC_REQUIRE(e != NULL, "engine: %s", xc_strerror(err));
    xc_engine_params_t p;
    xc_engine_params(e, &p);
    for (int j = 0; j < 7; j++) /* distinct values everywhere, so any transpose slip shows */
        for (int q = 0; q < 10; q++) {
            p.w_enc[j * 10 + q] = (float)(1000 + j * 10 + q);
            p.w_dec[j * 10 + q] = (float)(-1000 - j * 10 - q);
        }
    xc_engine_params_changed(e);
    char path[512], why[256];
    uint64_t bytes;
    xc_ckpt_opts_t o = {g_dir, "unit", "{\"d\":5}", "request"};
    XC_REQUIRE(xc_ckpt_write(e, &o, path, sizeof path, &bytes, why, sizeof why) == 0, "%s", why);
    XC_CHECK(strstr(path, "/unit-000000000.safetensors") != NULL, "name %.200s", path);
    size_t len;
    uint8_t *f = slurp(path, &len);
    XC_REQUIRE(f != NULL, "read");
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++) hl |= (uint64_t)f[i] << (8 * i);
    char *hdr = malloc(hl + 1);
    memcpy(hdr, f + 8, hl);
    hdr[hl] = 0;
    const uint8_t *data = f + 8 + hl;
    size_t a, b;
    XC_REQUIRE(offsets(hdr, "encoder.weight", &a, &b) == 0 && b - a == 2 * 5 * 7 * 4, "enc offsets");
    XC_CHECK(strstr(hdr, "\"encoder.weight\":{\"dtype\":\"F32\",\"shape\":[2,5,7]") != NULL, "enc shape");
    int bad = 0;
    for (int m = 0; m < 2; m++)
        for (int i = 0; i < 5; i++)
            for (int j = 0; j < 7; j++) {
                float v;
                memcpy(&v, data + a + 4 * (size_t)((m * 5 + i) * 7 + j), 4);
                if (v != p.w_enc[j * 10 + m * 5 + i]) bad++;
            }
    XC_CHECK(bad == 0, "%d encoder.weight elements misplaced", bad);
    XC_REQUIRE(offsets(hdr, "decoder.weight", &a, &b) == 0 && b - a == 2 * 7 * 5 * 4, "dec offsets");
    XC_CHECK(strstr(hdr, "\"decoder.weight\":{\"dtype\":\"F32\",\"shape\":[2,7,5]") != NULL, "dec shape");
    bad = 0;
    for (int m = 0; m < 2; m++)
        for (int j = 0; j < 7; j++)
            for (int i = 0; i < 5; i++) {
                float v;
                memcpy(&v, data + a + 4 * (size_t)((m * 7 + j) * 5 + i), 4);
                if (v != p.w_dec[j * 10 + m * 5 + i]) bad++;
            }
    XC_CHECK(bad == 0, "%d decoder.weight elements misplaced", bad);
    XC_CHECK(strstr(hdr, "\"threshold\":{\"dtype\":\"F32\",\"shape\":[]") != NULL, "threshold scalar");
    XC_CHECK(strstr(hdr, "\"k\":{\"dtype\":\"I32\",\"shape\":[]") != NULL, "k scalar");
    XC_CHECK(strstr(hdr, "\"code_normalization_id\":{\"dtype\":\"I64\",\"shape\":[]") != NULL, "cn id");
    XC_REQUIRE(offsets(hdr, "k", &a, &b) == 0, "k offsets");
    int32_t k;
    memcpy(&k, data + a, 4);
    XC_CHECK(k == 2, "k = %d", k);
    XC_CHECK(strstr(hdr, "\"config\":\"{\\\"d\\\":5}\"") && strstr(hdr, "\"reason\":\"request\""), "meta: %s", hdr);
    free(hdr);
    free(f);
    xc_engine_destroy(&e);
}


/* ------------------------------------------------------------ helpers -- */
static xc_engine_t *mk_engine(xc_model_kind_t model, int d, int F, uint64_t seed)
{
    xc_engine_config_t c;
    xc_cfg_engine_defaults(&c, model);
    c.d = d, c.dict_size = F, c.batch_size = 32, c.k = 4, c.threads = 2, c.seed = seed;
    c.warmup_steps = 2, c.dead_tokens = 96, c.threshold_start_step = 1, c.lr = 1e-3f;
    return xc_engine_new(&c, NULL);
}

/* Deterministic batch s of an engine's shape. */
static float *batch(const xc_engine_t *e, int s)
{
    const xc_engine_config_t *c = xc_engine_config(e);
    size_t n = (size_t)c->batch_size * 2 * c->d;
    float *x = malloc(n * sizeof(float));
    xc_rng_t r;
    xc_rng_seed(&r, 1000 + (uint64_t)s);
    for (size_t i = 0; i < n; i++) x[i] = (float)xc_rng_normal(&r) * (i % 7 == 0 ? 3.0f : 1.0f);
    return x;
}

static int train(xc_engine_t *e, int from, int to)
{
    for (int s = from; s < to; s++) {
        float *x = batch(e, s);
        int rc = xc_engine_train_step(e, x, xc_engine_config(e)->batch_size);
        free(x);
        if (rc) return rc;
    }
    return 0;
}

/* Number of state views whose bytes differ between a and b (-1: different views). */
static int state_diff(xc_engine_t *a, xc_engine_t *b)
{
    xc_state_view_t va[XC_ENGINE_STATE_MAX], vb[XC_ENGINE_STATE_MAX];
    int na = xc_engine_state_views(a, va, XC_ENGINE_STATE_MAX), nb = xc_engine_state_views(b, vb, XC_ENGINE_STATE_MAX);
    if (na != nb) return -1;
    int diff = 0;
    for (int i = 0; i < na; i++) {
        if (strcmp(va[i].name, vb[i].name) || va[i].bytes != vb[i].bytes) return -1;
        diff += memcmp(va[i].data, vb[i].data, va[i].bytes) != 0;
    }
    return diff;
}

static void rm_rf(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) { /* best effort */
    }
}

static int file_exists(const char *p) { return access(p, F_OK) == 0; }

static int write_bytes(const char *p, const void *b, size_t n)
{
    FILE *f = fopen(p, "wb");
    int rc = f && fwrite(b, 1, n, f) == n ? 0 : -1;
    if (f) fclose(f);
    return rc;
}

/* A fresh subdirectory of g_dir. */
static void subdir(char *out, size_t n, const char *name)
{
    char why[256];
    snprintf(out, n, "%s/%s", g_dir, name);
    rm_rf(out);
    xc_mkdirs(out, why, sizeof why);
}

static xc_ckpt_writer_t *mk_writer(const char *dir, int keep)
{
    xc_ckpt_writer_opts_t o = {dir, "unit", "{\"d\":16}", keep, NULL, NULL};
    int err;
    return xc_ckpt_writer_new(&o, &err);
}

/* ---------------------------------------------------------- the format -- */
static void test_pair_format(void)
{
    char dir[400], why[512];
    subdir(dir, sizeof dir, "format");
    xc_engine_t *e = mk_engine(XC_MODEL_BATCHTOPK, 16, 128, 3);
    XC_REQUIRE(e && train(e, 0, 3) == 0, "engine");
    xc_ckpt_writer_t *w = mk_writer(dir, 0);
    xc_ckpt_info_t r;
    XC_REQUIRE(w && xc_ckpt_writer_submit(w, e, NULL, 0, "request", 7, 1, &r) == 1, "write: %s", r.why);
    XC_CHECK(r.rc == 0 && r.step == 3 && r.gen == 7 && strstr(r.path, "/unit-000000003.safetensors") &&
                 strstr(r.train_path, "/unit-000000003.resume.safetensors") && r.bytes > 0,
             "result %s %s", r.path, r.train_path);
    int err;
    xc_stf_t *m = xc_stf_open(r.path, &err, why, sizeof why), *t = xc_stf_open(r.train_path, &err, why, sizeof why);
    XC_REQUIRE(m && t, "open: %s", why);
    XC_CHECK(xc_stf_verify(m, why, sizeof why) == 0 && xc_stf_verify(t, why, sizeof why) == 0, "checksums: %s", why);
    XC_CHECK(xc_stf_pair_check(m, t, why, sizeof why) == 0, "pair: %s", why);
    XC_CHECK(xc_stf_kind(m) == XC_STF_MODEL && xc_stf_kind(t) == XC_STF_TRAIN, "kinds");
    /* exactly the reference BatchTopKCrossCoder state dict */
    static const char *names[] = {"code_normalization_id", "encoder.weight", "encoder.bias", "decoder.weight",
                                  "decoder.bias", "threshold", "k", "target_rms", "activation_mean",
                                  "activation_std", "activation_global_scale"};
    XC_CHECK(xc_stf_count(m) == 11, "model tensors %d", xc_stf_count(m));
    for (int i = 0; i < 11; i++) XC_CHECK(xc_stf_find(m, names[i]) != NULL, "no %s", names[i]);
    const xc_stf_tensor_t *am = xc_stf_find(m, "activation_mean"), *gs = xc_stf_find(m, "activation_global_scale");
    float f0, f1;
    memcpy(&f0, am->data, 4);
    memcpy(&f1, gs->data, 4);
    XC_CHECK(am->ndim == 2 && am->shape[0] == 2 && am->shape[1] == 16 && isnan(f0) && f1 == 1.0f, "normaliser buffers");
    int64_t cn;
    memcpy(&cn, xc_stf_find(m, "code_normalization_id")->data, 8);
    XC_CHECK(cn == 1 && ((uintptr_t)xc_stf_find(m, "code_normalization_id")->data & 7) == 0, "code_normalization_id");
    static const char *keys[] = {"format", "format_version", "model", "d", "dict_size", "k", "step", "tokens",
                                 "created", "run_id", "checkpoint_id", "serial", "config", "train_checksum", "theta"};
    for (int i = 0; i < (int)(sizeof keys / sizeof keys[0]); i++) XC_CHECK(xc_stf_meta(m, keys[i]), "model meta %s", keys[i]);
    XC_CHECK(strcmp(xc_stf_meta_key(m, 0), "checksum") == 0, "checksum is the first metadata entry");
    const char *cr = xc_stf_meta(m, "created");
    XC_CHECK(strlen(cr) == 27 && cr[4] == '-' && cr[10] == 'T' && cr[26] == 'Z', "RFC 3339: %s", cr);
    /* every engine view in the training file, 8-byte tensors aligned */
    xc_state_view_t v[XC_ENGINE_STATE_MAX];
    int n = xc_engine_state_views(e, v, XC_ENGINE_STATE_MAX);
    XC_CHECK(xc_stf_count(t) == n, "train tensors %d vs %d views", xc_stf_count(t), n);
    for (int i = 0; i < n; i++) {
        const xc_stf_tensor_t *x = xc_stf_find(t, v[i].name);
        XC_CHECK(x && x->bytes == v[i].bytes && memcmp(x->data, v[i].data, v[i].bytes) == 0, "view %s", v[i].name);
        XC_CHECK(!x || xc_stf_dtype_size(x->dtype) != 8 || ((uintptr_t)x->data & 7) == 0, "alignment of %s", v[i].name);
    }
    xc_stf_close(&m);
    xc_stf_close(&t);
    /* the L1 model is the reference CrossCoder: no threshold, no k */
    xc_engine_t *l1 = mk_engine(XC_MODEL_L1, 16, 128, 3);
    xc_ckpt_writer_t *w1 = mk_writer(dir, 0);
    XC_REQUIRE(l1 && w1 && train(l1, 0, 1) == 0 && xc_ckpt_writer_submit(w1, l1, NULL, 0, "request", 1, 1, &r) == 1,
               "l1 write %s", r.why);
    m = xc_stf_open(r.path, &err, why, sizeof why);
    XC_CHECK(m && xc_stf_count(m) == 9 && !xc_stf_find(m, "threshold") && !xc_stf_find(m, "k") &&
                 strcmp(xc_stf_meta(m, "model"), "l1") == 0, "l1 layout");
    xc_stf_close(&m);
    xc_ckpt_writer_destroy(&w1);
    xc_ckpt_writer_destroy(&w);
    xc_engine_destroy(&l1);
    xc_engine_destroy(&e);
}

/* ----------------------------------------------------------- round trip -- */
static void test_round_trip_bit_exact(void)
{
    char dir[400], why[512];
    for (int model = 0; model < 2; model++) {
        subdir(dir, sizeof dir, model ? "rt-l1" : "rt-btk");
        xc_engine_t *a = mk_engine(model, 16, 128, 5), *b = mk_engine(model, 16, 128, 77);
        XC_REQUIRE(a && b && train(a, 0, 5) == 0, "engines");
        uint64_t rng_a[4] = {1, 2, 3, 0xdeadbeefcafef00dull}, rng_b[4] = {0};
        xc_state_view_t ex_a = {"trainer.mix_rng", XC_ST_U64, 1, {4, 0, 0}, rng_a, sizeof rng_a, 0};
        xc_state_view_t ex_b = ex_a;
        ex_b.data = rng_b;
        xc_ckpt_writer_t *w = mk_writer(dir, 0);
        xc_ckpt_info_t r;
        XC_REQUIRE(w && xc_ckpt_writer_submit(w, a, &ex_a, 1, "request", 1, 1, &r) == 1, "write %s", r.why);
        XC_CHECK(state_diff(a, b) > 0, "b starts different");
        xc_ckpt_loaded_t li;
        int rc = xc_ckpt_load_pair(b, &ex_b, 1, r.path, r.train_path, &li, why, sizeof why);
        XC_REQUIRE(rc == 0, "load: %s", why);
        XC_CHECK(state_diff(a, b) == 0, "model %d: state differs after the round trip", model);
        XC_CHECK(memcmp(rng_a, rng_b, sizeof rng_a) == 0, "extra view");
        XC_CHECK(li.step == 5 && xc_engine_metrics(b)->step == 5 && xc_engine_metrics(b)->tokens == 5 * 32 &&
                     xc_engine_metrics(b)->theta == xc_engine_metrics(a)->theta && strlen(li.run_id) == 16 &&
                     strcmp(li.config_json, "{\"d\":16}") == 0,
                 "loaded info step %ld", li.step);
        /* the trainer's state is optional for a reader that does not restore it */
        rc = xc_ckpt_load_pair(b, NULL, 0, r.path, r.train_path, NULL, why, sizeof why);
        XC_CHECK(rc == 0, "without the extra: %d %s", rc, why);
        /* and a trainer state the file lacks (or of another shape) is left as it was:
         * the model resumes without it */
        xc_state_view_t ex_c = ex_b;
        ex_c.name = "trainer.other";
        memset(rng_b, 0x5a, sizeof rng_b);
        rc = xc_ckpt_load_pair(b, &ex_c, 1, r.path, r.train_path, NULL, why, sizeof why);
        XC_CHECK(rc == 0 && rng_b[0] == 0x5a5a5a5a5a5a5a5aULL, "missing trainer state: %d %s", rc, why);
        ex_c = ex_b;
        ex_c.shape[0] = 5;
        ex_c.bytes = 5 * sizeof(uint64_t);
        rc = xc_ckpt_load_pair(b, &ex_c, 1, r.path, r.train_path, NULL, why, sizeof why);
        XC_CHECK(rc == 0 && rng_b[0] == 0x5a5a5a5a5a5a5a5aULL, "trainer state of another shape: %d %s", rc, why);
        xc_ckpt_writer_destroy(&w);
        xc_engine_destroy(&a);
        xc_engine_destroy(&b);
    }
}

/* A checkpoint taken with the asynchronous writer while A keeps training
 * captures the state of its step; B resumed from it continues exactly as A. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    xc_ckpt_info_t r;
} waiter_t;

static void on_done(void *ctx, const xc_ckpt_info_t *r)
{
    waiter_t *w = ctx;
    pthread_mutex_lock(&w->mu);
    w->r = *r;
    w->done++;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void wait_done(waiter_t *w, int n)
{
    pthread_mutex_lock(&w->mu);
    while (w->done < n) pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
}

static void test_resume_continues_identically(void)
{
    char dir[400], why[512];
    for (int model = 0; model < 2; model++) {
        subdir(dir, sizeof dir, "resume");
        xc_engine_t *a = mk_engine(model, 16, 128, 9), *b = mk_engine(model, 16, 128, 1234);
        XC_REQUIRE(a && b && train(a, 0, 6) == 0, "engines");
        int rc;
        waiter_t wt = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, {0}};
        xc_ckpt_writer_opts_t o = {dir, "unit", "{}", 3, on_done, &wt};
        int err;
        xc_ckpt_writer_t *w = xc_ckpt_writer_new(&o, &err);
        XC_REQUIRE(w, "writer");
        /* the first request has the writer thread allocate the copy: asked again, it is taken */
        int first = xc_ckpt_writer_submit(w, a, NULL, 0, "interval", 1, 0, NULL), tries = 0;
        XC_CHECK(first == XC_EAGAIN, "first request: %d (the copy's memory is prepared first)", first);
        while ((rc = xc_ckpt_writer_submit(w, a, NULL, 0, "interval", 1, 0, NULL)) == XC_EAGAIN && tries++ < 5000)
            usleep(1000);
        XC_REQUIRE(rc == 0, "async submit: %d", rc);
        XC_CHECK(xc_ckpt_writer_submit(w, a, NULL, 0, "interval", 2, 0, NULL) == XC_EAGAIN || wt.done,
                 "second request while writing");
        XC_REQUIRE(train(a, 6, 8) == 0, "a trains on while the writer writes"); /* the copy is what counts */
        wait_done(&wt, 1);
        XC_REQUIRE(wt.r.rc == 0 && wt.r.step == 6 && wt.r.capture_ms >= 0, "async result %s", wt.r.why);
        xc_ckpt_resume_opts_t ro = {dir, "unit", NULL, 0};
        xc_ckpt_loaded_t li;
        uint64_t next;
        rc = xc_ckpt_resume(b, NULL, 0, &ro, &li, &next, why, sizeof why);
        XC_REQUIRE(rc == 0 && li.step == 6 && next == 2, "resume: %d %s (next %llu)", rc, why, (unsigned long long)next);
        XC_REQUIRE(train(b, 6, 8) == 0, "b catches up");
        XC_CHECK(state_diff(a, b) == 0, "model %d: after catching up, state differs", model);
        XC_REQUIRE(train(a, 8, 14) == 0 && train(b, 8, 14) == 0, "both continue");
        XC_CHECK(state_diff(a, b) == 0, "model %d: %d state tensors differ after resuming", model, state_diff(a, b));
        XC_CHECK(xc_engine_metrics(a)->loss == xc_engine_metrics(b)->loss, "loss differs");
        xc_ckpt_writer_destroy(&w);
        xc_engine_destroy(&a);
        xc_engine_destroy(&b);
    }
}

/* ------------------------------------------------------ fault injection -- */
static int count_files(const char *dir, const char *suffix)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    if (!d) return -1;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name), s = strlen(suffix);
        if (e->d_name[0] != '.' && l >= s && strcmp(e->d_name + l - s, suffix) == 0) n++;
    }
    closedir(d);
    return n;
}

static void test_fault_injection(void)
{
    char dir[400], why[512];
    subdir(dir, sizeof dir, "fault");
    xc_engine_t *a = mk_engine(XC_MODEL_BATCHTOPK, 16, 64, 11), *c = mk_engine(XC_MODEL_BATCHTOPK, 16, 64, 99);
    XC_REQUIRE(a && c && train(a, 0, 3) == 0, "engines");
    xc_ckpt_writer_t *w = mk_writer(dir, 3);
    xc_ckpt_info_t r1, r2;
    XC_REQUIRE(w && xc_ckpt_writer_submit(w, a, NULL, 0, "request", 1, 1, &r1) == 1, "first: %s", r1.why);
    xc_engine_params_t p;
    xc_engine_params(a, &p);
    size_t pb = (size_t)64 * 32 * sizeof(float);
    float *w_enc1 = malloc(pb);
    memcpy(w_enc1, p.w_enc, pb);
    XC_REQUIRE(train(a, 3, 4) == 0, "step");
    /* the size of the second pair, from a clean write elsewhere */
    char dir2[400];
    subdir(dir2, sizeof dir2, "fault-ref");
    xc_ckpt_writer_t *w2 = mk_writer(dir2, 0);
    XC_REQUIRE(w2 && xc_ckpt_writer_submit(w2, a, NULL, 0, "request", 1, 1, &r2) == 1, "reference: %s", r2.why);
    struct stat ts;
    stat(r2.train_path, &ts);
    long long total = (long long)(r2.bytes + r2.train_bytes), tbytes = (long long)ts.st_size;
    xc_ckpt_writer_destroy(&w2);
    /* stop the writer after n bytes, for many n: the first pair must stay the one that loads */
    int tried = 0, bad = 0;
    char badwhy[600] = "";
    for (long long n = 0; n < total; n += n < 96 ? 1 : n < tbytes - 64 ? 397 : n < tbytes + 96 ? 1 : 211) {
        xc_ckpt_writer_set_fault(w, n);
        xc_ckpt_info_t r;
        int rc = xc_ckpt_writer_submit(w, a, NULL, 0, "request", 2, 1, &r);
        xc_ckpt_resume_opts_t ro = {dir, "unit", NULL, 0};
        xc_ckpt_loaded_t li;
        xc_log_level_t lvl = xc_log_get_level();
        xc_log_set_level(XC_LOG_ERROR); /* the skipped torn pair is logged each time */
        int lrc = xc_ckpt_resume(c, NULL, 0, &ro, &li, NULL, why, sizeof why);
        xc_log_set_level(lvl);
        xc_engine_params_t pc;
        xc_engine_params(c, &pc);
        if (rc != XC_EIO || !strstr(r.why, "fault injection") || lrc != 0 || li.step != 3 ||
            memcmp(pc.w_enc, w_enc1, pb) != 0) {
            if (!bad++)
                snprintf(badwhy, sizeof badwhy, "n=%lld: write rc %d (%s); load rc %d step %ld (%s)", n, rc, r.why, lrc,
                         li.step, why);
        }
        tried++;
    }
    XC_CHECK(bad == 0 && tried > 300, "%d of %d fault points broke the previous checkpoint; first: %s", bad, tried, badwhy);
    /* the torn writes left temp files (as a crash would); a new writer removes them */
    XC_CHECK(count_files(dir, ".safetensors") == 3, "final files: %d", count_files(dir, ".safetensors"));
    xc_ckpt_writer_destroy(&w);
    w = mk_writer(dir, 3);
    DIR *dp = opendir(dir);
    struct dirent *de;
    int temps = 0;
    while (dp && (de = readdir(dp))) temps += strstr(de->d_name, ".tmp.") != NULL;
    if (dp) closedir(dp);
    XC_CHECK(temps == 0, "%d temp files survive a new writer", temps);
    /* and without the fault the next pair is written and becomes the newest */
    xc_ckpt_writer_set_fault(w, -1);
    xc_ckpt_info_t r;
    XC_CHECK(xc_ckpt_writer_submit(w, a, NULL, 0, "request", 3, 1, &r) == 1 && r.step == 4, "after faults: %s", r.why);
    xc_ckpt_writer_destroy(&w);
    free(w_enc1);
    xc_engine_destroy(&a);
    xc_engine_destroy(&c);
}

/* ------------------------------------------------------ refusing files -- */
static int try_load(xc_engine_t *e, const char *m, const char *t, char *why, size_t wl)
{
    return xc_ckpt_load_pair(e, NULL, 0, m, t, NULL, why, wl);
}

static void test_refuse_bad_files(void)
{
    char dir[400], why[512], m[600], t[600];
    subdir(dir, sizeof dir, "bad");
    xc_engine_t *a = mk_engine(XC_MODEL_BATCHTOPK, 16, 64, 21), *b = mk_engine(XC_MODEL_BATCHTOPK, 16, 64, 22);
    XC_REQUIRE(a && b && train(a, 0, 2) == 0, "engines");
    xc_ckpt_writer_t *w = mk_writer(dir, 0);
    xc_ckpt_info_t r, r2;
    XC_REQUIRE(w && xc_ckpt_writer_submit(w, a, NULL, 0, "request", 1, 1, &r) == 1, "write %s", r.why);
    XC_REQUIRE(try_load(b, r.path, r.train_path, why, sizeof why) == 0, "intact pair: %s", why);
    size_t ml, tl;
    uint8_t *mb = slurp(r.path, &ml), *tb = slurp(r.train_path, &tl);
    XC_REQUIRE(mb && tb, "read back");
    snprintf(m, sizeof m, "%s/x-000000002.safetensors", dir);
    snprintf(t, sizeof t, "%s/x-000000002.resume.safetensors", dir);
    /* truncated, either file, at many lengths */
    int bad = 0, rc;
    char first[600] = "";
    for (int which = 0; which < 2; which++) {
        size_t len = which ? tl : ml;
        for (size_t cut = 0; cut < len; cut += cut < 64 ? 3 : len / 37 + 1) {
            write_bytes(m, mb, which ? ml : cut);
            write_bytes(t, tb, which ? cut : tl);
            rc = try_load(b, m, t, why, sizeof why);
            if (rc != XC_ECORRUPT || !(strstr(why, "truncated") || strstr(why, "too short") || strstr(why, "not valid JSON") ||
                                       strstr(why, "implausible"))) {
                if (!bad++) snprintf(first, sizeof first, "cut %zu of file %d: rc %d: %s", cut, which, rc, why);
            }
        }
    }
    XC_CHECK(bad == 0, "truncated files: %d loaded or unclear; first: %s", bad, first);
    write_bytes(m, mb, ml - 1);
    write_bytes(t, tb, tl);
    rc = try_load(b, m, t, why, sizeof why);
    XC_CHECK(rc == XC_ECORRUPT && strstr(why, "truncated"), "one byte short: %s", why);
    /* one flipped bit anywhere in either file (flipped in place, then restored) */
    bad = 0;
    write_bytes(m, mb, ml);
    write_bytes(t, tb, tl);
    for (int which = 0; which < 2; which++) {
        uint8_t *buf = which ? tb : mb;
        size_t len = which ? tl : ml;
        int fd = open(which ? t : m, O_WRONLY);
        for (size_t pos = 0; fd >= 0 && pos < len; pos += pos < 4096 ? 1 : 173) {
            int bit = (int)(pos * 7 % 8);
            uint8_t flipped = buf[pos] ^ (uint8_t)(1u << bit);
            if (pwrite(fd, &flipped, 1, (off_t)pos) != 1) break;
            rc = try_load(b, m, t, why, sizeof why);
            if (pwrite(fd, &buf[pos], 1, (off_t)pos) != 1) break;
            if (rc != XC_ECORRUPT && rc != XC_EVERSION) {
                if (!bad++) snprintf(first, sizeof first, "file %d byte %zu bit %d: rc %d: %s", which, pos, bit, rc, why);
            }
        }
        if (fd >= 0) close(fd);
    }
    XC_CHECK(bad == 0, "bit flips: %d not refused; first: %s", bad, first);
    mb[ml - 5] ^= 0x10;
    write_bytes(m, mb, ml);
    mb[ml - 5] ^= 0x10;
    write_bytes(t, tb, tl);
    rc = try_load(b, m, t, why, sizeof why);
    XC_CHECK(rc == XC_ECORRUPT && strstr(why, "checksum mismatch"), "data bit flip message: %s", why);
    /* garbage and foreign files */
    uint8_t junk[4096];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)(i * 2654435761u >> 13);
    write_bytes(m, junk, sizeof junk);
    write_bytes(t, tb, tl);
    rc = try_load(b, m, t, why, sizeof why);
    XC_CHECK(rc == XC_ECORRUPT && strstr(why, "x-000000002.safetensors"), "garbage: %d %s", rc, why);
    memset(junk, 0, sizeof junk);
    write_bytes(m, junk, sizeof junk);
    rc = try_load(b, m, t, why, sizeof why);
    XC_CHECK(rc == XC_ECORRUPT && strstr(why, "implausible"), "zeros: %d %s", rc, why);
    xc_st_t *st = xc_st_new(); /* a valid safetensors file, but not ours */
    float one = 1;
    xc_st_add(st, "weight", "F32", 0, NULL, &one);
    xc_st_meta(st, "format", "pt");
    char path[600];
    XC_REQUIRE(xc_st_write(st, dir, "x-000000002.safetensors", path, sizeof path, NULL, why, sizeof why) == 0, "%s", why);
    xc_st_destroy(&st);
    rc = try_load(b, m, t, why, sizeof why);
    XC_CHECK(rc == XC_ECORRUPT && strstr(why, "not an xcoderd model file (format 'pt')"), "foreign: %d %s", rc, why);
    /* files of two different checkpoints */
    XC_REQUIRE(train(a, 2, 3) == 0 && xc_ckpt_writer_submit(w, a, NULL, 0, "request", 2, 1, &r2) == 1, "second");
    rc = try_load(b, r.path, r2.train_path, why, sizeof why);
    XC_CHECK(rc == XC_ECORRUPT && strstr(why, "different checkpoints"), "mixed pair: %d %s", rc, why);
    /* the training file alone is missing */
    write_bytes(m, mb, ml);
    unlink(t);
    rc = try_load(b, m, t, why, sizeof why);
    XC_CHECK(rc == XC_EIO && strstr(why, "No such file"), "missing partner: %d %s", rc, why);
    /* another shape or model kind: refused as a different model */
    xc_engine_t *wide = mk_engine(XC_MODEL_BATCHTOPK, 8, 64, 1), *l1 = mk_engine(XC_MODEL_L1, 16, 64, 1);
    XC_REQUIRE(wide && l1, "engines");
    rc = try_load(wide, r.path, r.train_path, why, sizeof why);
    XC_CHECK(rc == XC_ESHAPE && strstr(why, "d = 16") && strstr(why, "d = 8") && strstr(why, "--fresh"),
             "wrong shape: %d %s", rc, why);
    rc = try_load(l1, r.path, r.train_path, why, sizeof why);
    XC_CHECK(rc == XC_ESHAPE && strstr(why, "batchtopk crosscoder") && strstr(why, "l1 crosscoder"), "wrong model: %d %s",
             rc, why);
    /* resume: the newest pair corrupt -> the older one loads; a wrong-shape newest -> refused */
    char sd[400];
    subdir(sd, sizeof sd, "bad-resume");
    xc_ckpt_writer_t *w3 = mk_writer(sd, 0);
    XC_REQUIRE(w3 && xc_ckpt_writer_submit(w3, a, NULL, 0, "request", 1, 1, &r) == 1, "older");
    XC_REQUIRE(train(a, 3, 4) == 0 && xc_ckpt_writer_submit(w3, a, NULL, 0, "request", 2, 1, &r2) == 1, "newer");
    size_t nl;
    uint8_t *nb = slurp(r2.path, &nl);
    nb[nl / 2] ^= 1;
    write_bytes(r2.path, nb, nl);
    free(nb);
    xc_ckpt_resume_opts_t ro = {sd, "unit", NULL, 0};
    xc_ckpt_loaded_t li;
    xc_log_set_level(XC_LOG_ERROR);
    rc = xc_ckpt_resume(b, NULL, 0, &ro, &li, NULL, why, sizeof why);
    XC_CHECK(rc == 0 && li.step == 3, "resume skips the corrupt newest: %d step %ld %s", rc, li.step, why);
    ro.path = r2.path; /* asked for explicitly: the error, no fallback */
    rc = xc_ckpt_resume(b, NULL, 0, &ro, &li, NULL, why, sizeof why);
    XC_CHECK(rc == XC_ECORRUPT && strstr(why, "checksum mismatch"), "--resume corrupt: %d %s", rc, why);
    ro.path = NULL;
    rc = xc_ckpt_resume(wide, NULL, 0, &ro, &li, NULL, why, sizeof why);
    XC_CHECK(rc == XC_ESHAPE, "resume into another shape: %d %s", rc, why);
    ro.fresh = 1;
    rc = xc_ckpt_resume(wide, NULL, 0, &ro, &li, NULL, why, sizeof why);
    XC_CHECK(rc == XC_ENOTFOUND && strstr(why, "--fresh"), "fresh: %d %s", rc, why);
    xc_log_set_level(XC_LOG_INFO);
    free(mb);
    free(tb);
    xc_ckpt_writer_destroy(&w);
    xc_ckpt_writer_destroy(&w3);
    xc_engine_destroy(&wide);
    xc_engine_destroy(&l1);
    xc_engine_destroy(&a);
    xc_engine_destroy(&b);
}

/* ------------------------------------------------- rotation and reuse -- */
static void test_rotation_and_reuse(void)
{
    char dir[400], m[600], t[600];
    subdir(dir, sizeof dir, "rotate");
    xc_engine_t *a = mk_engine(XC_MODEL_BATCHTOPK, 16, 64, 31), *o = mk_engine(XC_MODEL_BATCHTOPK, 16, 64, 32);
    XC_REQUIRE(a && o, "engines");
    /* another run's pair and a corrupt file of the same name: never removed */
    xc_ckpt_writer_t *other = mk_writer(dir, 0);
    xc_ckpt_info_t r;
    XC_REQUIRE(other && xc_ckpt_writer_submit(other, o, NULL, 0, "request", 1, 1, &r) == 1, "other run");
    xc_ckpt_writer_destroy(&other);
    snprintf(m, sizeof m, "%s/unit-000000099.resume.safetensors", dir);
    write_bytes(m, "garbage!garbage!", 16);
    xc_ckpt_writer_t *w = mk_writer(dir, 2);
    for (int s = 1; s <= 5; s++) {
        XC_REQUIRE(train(a, s - 1, s) == 0, "step");
        XC_REQUIRE(xc_ckpt_writer_submit(w, a, NULL, 0, "steps", (uint64_t)s, 1, &r) == 1, "write %d: %s", s, r.why);
    }
    for (int s = 0; s <= 5; s++) {
        snprintf(m, sizeof m, "%s/unit-%09d.safetensors", dir, s);
        snprintf(t, sizeof t, "%s/unit-%09d.resume.safetensors", dir, s);
        int want = s == 0 || s >= 4; /* the other run's step 0, and our newest two */
        XC_CHECK(file_exists(m) == want && file_exists(t) == want, "step %d: files %d %d, want %d", s, file_exists(m),
                 file_exists(t), want);
    }
    snprintf(m, sizeof m, "%s/unit-000000099.resume.safetensors", dir);
    XC_CHECK(file_exists(m), "an unreadable file was removed");
    /* the same step again: nothing new written */
    xc_ckpt_info_t r2;
    struct stat s1, s2;
    stat(r.path, &s1);
    XC_CHECK(xc_ckpt_writer_submit(w, a, NULL, 0, "request", 9, 1, &r2) == 1 && r2.reused && r2.gen == 9 &&
                 strcmp(r2.path, r.path) == 0 && r2.bytes == r.bytes,
             "reuse at the same step");
    stat(r.path, &s2);
    XC_CHECK(s1.st_ino == s2.st_ino && s1.st_mtim.tv_nsec == s2.st_mtim.tv_nsec, "rewritten");
    xc_ckpt_writer_destroy(&w);
    xc_engine_destroy(&a);
    xc_engine_destroy(&o);
}

/* Temp files of dead writers of this name are removed at start; others kept. */
static void test_stale_temps(void)
{
    char dir[400], p[600], q[600];
    subdir(dir, sizeof dir, "temps");
    snprintf(p, sizeof p, "%s/.unit-000000007.safetensors.tmp.%d", dir, 999999999);
    snprintf(q, sizeof q, "%s/.other-000000007.safetensors.tmp.%d", dir, 999999999);
    write_bytes(p, "x", 1);
    write_bytes(q, "x", 1);
    xc_ckpt_writer_t *w = mk_writer(dir, 3);
    XC_CHECK(w && !file_exists(p) && file_exists(q), "stale temp of this name removed, others kept");
    xc_ckpt_writer_destroy(&w);
}


/* ------------------------------------------------------ libxcoder loader -- */
static void test_client_loader(void)
{
    char dir[400], why[600], partner[1200];
    subdir(dir, sizeof dir, "client");
    xc_engine_t *e = mk_engine(XC_MODEL_BATCHTOPK, 16, 64, 41);
    XC_REQUIRE(e && train(e, 0, 4) == 0, "engine");
    xc_engine_set_theta(e, 0.25);
    xc_ckpt_writer_t *w = mk_writer(dir, 0);
    xc_ckpt_info_t r;
    XC_REQUIRE(w && xc_ckpt_writer_submit(w, e, NULL, 0, "request", 1, 1, &r) == 1, "write %s", r.why);
    int err;
    xc_client_ckpt_t *m = xc_client_ckpt_open(r.path, &err, why, sizeof why), *t = xc_client_ckpt_open(r.train_path, &err, why, sizeof why);
    XC_REQUIRE(m && t, "open: %s", why);
    XC_CHECK(xc_client_ckpt_kind(m) == XC_CLIENT_CKPT_MODEL && xc_client_ckpt_kind(t) == XC_CLIENT_CKPT_TRAIN, "kinds");
    XC_CHECK(xc_client_ckpt_verify(m, why, sizeof why) == 0 && xc_client_ckpt_verify(t, why, sizeof why) == 0, "%s", why);
    XC_CHECK(xc_client_ckpt_verify_pair(m, t, why, sizeof why) == 0, "pair: %s", why);
    XC_CHECK(xc_client_ckpt_partner(r.path, partner, sizeof partner) == 0 && strcmp(partner, r.train_path) == 0, "partner");
    XC_CHECK(xc_client_ckpt_partner(r.train_path, partner, sizeof partner) == 0 && strcmp(partner, r.path) == 0, "partner");
    XC_CHECK(strcmp(xc_client_ckpt_meta(m, "model"), "batchtopk") == 0 && xc_client_ckpt_count(m) == 11, "meta");
    xc_client_tensor_t ten;
    XC_CHECK(xc_client_ckpt_tensor(m, "decoder.weight", &ten, why, sizeof why) == 0 && ten.ndim == 3 && ten.shape[1] == 64 &&
                 xc_client_ckpt_tensor(m, "nope", &ten, why, sizeof why) == XC_ENOTFOUND, "tensor lookup");
    xc_client_model_t a, b;
    XC_REQUIRE(xc_client_ckpt_model(m, &a, why, sizeof why) == 0 && xc_client_ckpt_model(t, &b, why, sizeof why) == 0,
               "model: %s", why);
    size_t F = 64, d = 16;
    XC_CHECK(a.d == 16 && a.dict_size == 64 && a.k == 4 && a.threshold == 0.25f && a.step == 4 && b.step == 4 &&
                 b.threshold == 0.25f && b.k == 4 && !strcmp(b.model, "batchtopk"), "scalars");
    XC_CHECK(!memcmp(a.w_enc, b.w_enc, 2 * d * F * 4) && !memcmp(a.w_dec, b.w_dec, 2 * d * F * 4) &&
                 !memcmp(a.b_enc, b.b_enc, F * 4) && !memcmp(a.b_dec, b.b_dec, 2 * d * 4),
             "the model from the training file differs from the model file");
    xc_engine_params_t p;
    xc_engine_params(e, &p);
    int bad = 0;
    for (size_t mm = 0; mm < 2; mm++)
        for (size_t j = 0; j < F; j++)
            for (size_t i = 0; i < d; i++)
                bad += a.w_enc[(mm * d + i) * F + j] != p.w_enc[j * 2 * d + mm * d + i] ||
                       a.w_dec[(mm * F + j) * d + i] != p.w_dec[j * 2 * d + mm * d + i];
    XC_CHECK(bad == 0, "%d parameters misplaced", bad);
    xc_client_model_free(&a);
    xc_client_model_free(&b);
    xc_client_ckpt_close(&m);
    xc_client_ckpt_close(&t);
    XC_CHECK(m == NULL, "close clears");
    m = xc_client_ckpt_open("/nonexistent/x.safetensors", &err, why, sizeof why);
    XC_CHECK(!m && err == XC_EIO && strstr(why, "cannot open"), "missing file: %s", why);
    xc_ckpt_writer_destroy(&w);
    xc_engine_destroy(&e);
}

/* -------------------------------------------------------- helper mode -- */
/* test_ckpt --reconstruct CKPT X.npy OUT.npy: the engine, loaded from the
 * training-state file of CKPT's pair by the daemon's loader, reconstructs X
 * [N, 2, d] (threshold-mode encode, decode) into OUT [N, 2, d]. */
static int reconstruct(const char *ckpt, const char *xin, const char *out)
{
    char m[1100], t[1100], why[600];
    xc_client_npy_t nx;
    if (xc_ckpt_pair_paths(ckpt, m, sizeof m, t, sizeof t) || xc_client_npy_open(xin, &nx, why, sizeof why)) {
        fprintf(stderr, "reconstruct: bad arguments: %s\n", why);
        return 2;
    }
    int err;
    xc_stf_t *f = xc_stf_open(m, &err, why, sizeof why);
    if (!f) {
        fprintf(stderr, "reconstruct: %s\n", why);
        return 1;
    }
    xc_engine_config_t c;
    xc_cfg_engine_defaults(&c, strcmp(xc_stf_meta(f, "model"), "l1") == 0 ? XC_MODEL_L1 : XC_MODEL_BATCHTOPK);
    c.d = atoi(xc_stf_meta(f, "d"));
    c.dict_size = atoi(xc_stf_meta(f, "dict_size"));
    c.k = atoi(xc_stf_meta(f, "k"));
    c.batch_size = 64;
    c.threads = 1;
    xc_stf_close(&f);
    xc_engine_t *e = xc_engine_new(&c, &err);
    if (!e || xc_ckpt_load_pair(e, NULL, 0, m, t, NULL, why, sizeof why)) {
        fprintf(stderr, "reconstruct: %s\n", e ? why : "engine");
        return 1;
    }
    long n = nx.n_tokens;
    if (nx.dtype != XC_CLIENT_DTYPE_F32 || nx.swap || nx.d != c.d) {
        fprintf(stderr, "reconstruct: %s must be little-endian float32 [N, 2, %d]\n", xin, c.d);
        return 2;
    }
    float *x = malloc(sizeof(float) * (size_t)n * 2 * c.d), *fo = malloc(sizeof(float) * (size_t)n * c.dict_size),
          *xh = malloc(sizeof(float) * (size_t)n * 2 * c.d);
    memcpy(x, nx.data, sizeof(float) * (size_t)n * 2 * c.d);
    int rc = xc_engine_encode(e, x, n, fo) || xc_engine_decode(e, fo, n, xh);
    if (!rc) rc = xc_client_npy_write_f32(out, xh, n, c.d, why, sizeof why);
    xc_client_npy_close(&nx);
    free(x);
    free(fo);
    free(xh);
    xc_engine_destroy(&e);
    if (rc) fprintf(stderr, "reconstruct failed\n");
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "--reconstruct") == 0) return reconstruct(argv[2], argv[3], argv[4]);
    snprintf(g_dir, sizeof g_dir, "/tmp/xc-test-ckpt-%ld/nested/dir", (long)getpid());
    char why[256];
    if (xc_mkdirs(g_dir, why, sizeof why)) {
        printf("not ok - setup: %s\n", why);
        return 1;
    }
    XC_RUN(test_st_writer);
    XC_RUN(test_crosscoder_layout);
    XC_RUN(test_pair_format);
    XC_RUN(test_round_trip_bit_exact);
    XC_RUN(test_resume_continues_identically);
    XC_RUN(test_fault_injection);
    XC_RUN(test_refuse_bad_files);
    XC_RUN(test_rotation_and_reuse);
    XC_RUN(test_stale_temps);
    XC_RUN(test_client_loader);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf /tmp/xc-test-ckpt-%ld", (long)getpid());
    if (system(cmd)) { /* best effort */
    }
    XC_TEST_EXIT();
}
