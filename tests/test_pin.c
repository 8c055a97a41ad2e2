/* Pins of byte-level formats that must not change by accident: the
 * checkpoint pair (model file + training-state file) written from a
 * deterministically filled engine state, an exported model file in F16 and
 * BF16, and the shared-memory layout (header field offsets, array
 * descriptors). The expected SHA-256 values were computed with the code that
 * defined the formats; a restructuring that changes one byte fails here.
 *
 * Why filled, not trained: a trained state depends on the BLAS kernels and the
 * CPU's instruction set; the formula below gives every parameter, moment,
 * counter and scalar the same value on every machine, so the digests pin the
 * file writer, the layout and the metadata alone.
 *
 * Two metadata values are different in every write and are masked before
 * hashing: "created" (the time) and "checkpoint_id" (random), and with them
 * the CRC-32 digits that cover them. The CRC itself is checked by loading the
 * pair back through the daemon's verifying loader. */
/* failure messages quote paths and reasons; truncating them is harmless */
#pragma GCC diagnostic ignored "-Wformat-truncation"

#include "xc_ckpt.h"
#include "xc_config.h"
#include "xc_engine.h"
#include "xc_error.h"
#include "xc_remote_proto.h"
#include "xc_shm.h"
#include "xc_test.h"

#include <stddef.h>
#include <stdint.h>
#include <unistd.h>

/* SHA-256 (hex) of the masked files, from the format-defining code. Print the
 * current values with `build/tests/test_pin --print`. */
#define PIN_BTK_MODEL "6e44a959865383262d27f8604bdb3d71524d590cde36f737fe98d5a235f483cf"
#define PIN_BTK_TRAIN "6297e25b505141bb6ad4b70f0985d156e9363c5b1d55e4cacb50e445fb3f81b2"
#define PIN_L1_MODEL "37d00a280d35ae634b04e6ace53b3a7d8c780f86f2d6428a2461ec70cfe4eaac"
#define PIN_L1_TRAIN "b1e8b76f3b11c6afab4db1d2a776de54c0b67bda1d13731c9a1f18ec9eda1083"
#define PIN_EXPORT_F16 "3f526593ddb29ad9ba5c0fd947c31b93fbaa43dc428c2d501c6f7bdc9e284304"
#define PIN_EXPORT_BF16 "4ff534c558f007e83331d285f4f7f79f0622766bfe1634b3220aaf0a83e899aa"
#define PIN_SHM_LAYOUT "a48f3d67eb6e045b35207f706f7dc10cfe7310a86a51c905c44fdaaaf9530525"

static char g_dir[256];
static int g_print; /* --print: show the digests instead of only comparing */

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = n >= 0 ? malloc((size_t)n + 1) : NULL; /* owned by the caller */
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    if (p) p[n] = 0;
    *len = (size_t)n;
    return p;
}

static void sha_hex(const void *p, size_t n, char out[65])
{
    xc_sha256_t s;
    uint8_t dg[32];
    xc_sha256_init(&s);
    xc_sha256_update(&s, p, n);
    xc_sha256_final(&s, dg);
    for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", dg[i]);
}

/* Overwrites the string value of "key" in the header (the first 8 + len
 * bytes) with c, keeping its length. Returns 1 if the key was found. */
static int mask_value(uint8_t *buf, size_t n, const char *key, size_t skip, char c)
{
    if (n < 8) return 0;
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++) hl |= (uint64_t)buf[i] << (8 * i);
    if (hl > n - 8) return 0;
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":\"", key);
    size_t pl = strlen(pat);
    for (size_t i = 8; i + pl <= 8 + hl; i++) {
        if (memcmp(buf + i, pat, pl) != 0) continue;
        size_t v = i + pl + skip;
        while (v < 8 + hl && buf[v] != '"') buf[v++] = (uint8_t)c;
        return 1;
    }
    return 0;
}

/* The digest of a checkpoint file with its per-write values masked. */
static int masked_digest(const char *path, int model_file, char out[65])
{
    size_t n;
    uint8_t *b = slurp(path, &n);
    if (!b) return -1;
    int ok = mask_value(b, n, "created", 0, 'x') & mask_value(b, n, "checkpoint_id", 0, 'x') &
             mask_value(b, n, "checksum", strlen("crc32:"), '0');
    if (model_file) ok &= mask_value(b, n, "train_checksum", strlen("crc32:"), '0');
    sha_hex(b, n, out);
    free(b);
    return ok ? 0 : -1;
}

static int check_pin(const char *what, const char *got, const char *want)
{
    if (g_print) printf("# %s %s\n", what, got);
    return strcmp(got, want) == 0;
}

/* Value of element i of state view number vi: exact in float, so every
 * machine stores the same bits. */
static double fill_value(int vi, size_t i)
{
    uint32_t h = (uint32_t)(i * 2654435761u + (uint32_t)vi * 40503u);
    return (double)((int)(h % 2001u) - 1000) / 256.0;
}

/* Sets every state view of e from fill_value (integers for the counters) and
 * the scalars to chosen values, then lets the engine recompute its caches. */
static void fill_state(xc_engine_t *e)
{
    xc_state_view_t v[XC_ENGINE_STATE_MAX];
    int n = xc_engine_state_views(e, v, XC_ENGINE_STATE_MAX);
    for (int vi = 0; vi < n; vi++) {
        size_t cnt = v[vi].bytes / (v[vi].dtype == XC_ST_F32 ? 4 : 8);
        for (size_t i = 0; i < cnt; i++) {
            double x = fill_value(vi, i);
            switch (v[vi].dtype) {
            case XC_ST_F32: ((float *)v[vi].data)[i] = (float)x; break;
            case XC_ST_F64: ((double *)v[vi].data)[i] = x / 4; break;
            case XC_ST_I64: ((int64_t *)v[vi].data)[i] = (int64_t)(x * 256) + 1000 * vi; break;
            case XC_ST_U64: ((uint64_t *)v[vi].data)[i] = (uint64_t)(x * 256 + 1000) * 977u + (uint64_t)vi; break;
            }
        }
        if (strcmp(v[vi].name, "scalars") == 0) { /* theta, tau, tau_frac, full selections */
            double *s = v[vi].data;
            s[0] = 0.75;
            s[1] = 0.5;
            s[2] = 0.25;
            s[3] = 3;
        } else if (strcmp(v[vi].name, "step") == 0) {
            *(int64_t *)v[vi].data = 1234;
        } else if (strcmp(v[vi].name, "tokens") == 0) {
            *(uint64_t *)v[vi].data = 1234u * 8u;
        }
    }
    xc_engine_state_restored(e);
}

static xc_engine_t *filled_engine(xc_model_kind_t model)
{
    xc_engine_config_t c;
    xc_cfg_engine_defaults(&c, model);
    c.d = 6;
    c.dict_size = 10;
    c.k = 3;
    c.batch_size = 8;
    c.threads = 1;
    c.seed = 5;
    int err;
    xc_engine_t *e = xc_engine_new(&c, &err);
    if (e) fill_state(e);
    return e;
}

/* A checkpoint pair with a fixed run id and serial and two trainer extras. */
static void pin_pair(xc_model_kind_t model, const char *sub, const char *want_model, const char *want_train)
{
    char dir[300], dm[65], dt[65], why[512];
    snprintf(dir, sizeof dir, "%s/%s", g_dir, sub);
    xc_engine_t *e = filled_engine(model);
    XC_REQUIRE(e, "engine");
    uint64_t rng[4] = {1, 22, 333, 4444};
    float mix[3][4];
    for (int i = 0; i < 12; i++) mix[i / 4][i % 4] = (float)(i - 6) / 8;
    xc_state_view_t extras[2] = {{"trainer.rng", XC_ST_U64, 1, {4, 0, 0}, rng, sizeof rng, 0},
                                 {"trainer.mix", XC_ST_F32, 2, {3, 4, 0}, mix, sizeof mix, 0}};
    xc_ckpt_writer_opts_t wo = {dir, "pin", "{\"d\":6,\"dict_size\":10}", 0, NULL, NULL};
    int err;
    xc_ckpt_writer_t *w = xc_ckpt_writer_new(&wo, &err);
    XC_REQUIRE(w, "writer: %s", xc_strerror(err));
    xc_ckpt_writer_continue(w, "0123456789abcdef", 42, -1, NULL, NULL);
    xc_ckpt_info_t info;
    int rc = xc_ckpt_writer_submit(w, e, extras, 2, "pin", 0, 1, &info);
    xc_ckpt_writer_destroy(&w);
    XC_REQUIRE(rc == 1 && info.rc == 0, "write: %d %s", rc, info.why);
    XC_CHECK(strstr(info.path, "/pin-000001234.safetensors") != NULL, "model path %s", info.path);
    XC_REQUIRE(masked_digest(info.path, 1, dm) == 0, "cannot read or mask %s", info.path);
    XC_REQUIRE(masked_digest(info.train_path, 0, dt) == 0, "cannot read or mask %s", info.train_path);
    XC_CHECK(check_pin("model", dm, want_model), "model file digest %s, pinned %s", dm, want_model);
    XC_CHECK(check_pin("train", dt, want_train), "training file digest %s, pinned %s", dt, want_train);

    /* the unmasked pair verifies (CRC, pairing) and restores the same state */
    xc_engine_t *e2 = filled_engine(model);
    XC_REQUIRE(e2, "engine");
    xc_engine_params_t p2;
    xc_engine_params(e2, &p2);
    memset(p2.w_dec, 0, sizeof(float) * 10 * 12);
    uint64_t rng2[4] = {0};
    float mix2[3][4] = {{0}};
    xc_state_view_t extras2[2] = {{"trainer.rng", XC_ST_U64, 1, {4, 0, 0}, rng2, sizeof rng2, 0},
                                  {"trainer.mix", XC_ST_F32, 2, {3, 4, 0}, mix2, sizeof mix2, 0}};
    rc = xc_ckpt_load_pair(e2, extras2, 2, info.path, info.train_path, NULL, why, sizeof why);
    XC_CHECK(rc == 0, "load: %s", why);
    xc_engine_params_t p1;
    xc_engine_params(e, &p1);
    XC_CHECK(memcmp(p1.w_dec, p2.w_dec, sizeof(float) * 10 * 12) == 0, "w_dec differs after load");
    XC_CHECK(memcmp(rng, rng2, sizeof rng) == 0 && memcmp(mix, mix2, sizeof mix) == 0, "extras differ after load");
    xc_engine_destroy(&e);
    xc_engine_destroy(&e2);
}

static void test_pin_checkpoint_batchtopk(void) { pin_pair(XC_MODEL_BATCHTOPK, "btk", PIN_BTK_MODEL, PIN_BTK_TRAIN); }
static void test_pin_checkpoint_l1(void) { pin_pair(XC_MODEL_L1, "l1", PIN_L1_MODEL, PIN_L1_TRAIN); }

/* A model file in the reference layout with half-precision parameters, as
 * `xcoder ckpt export` writes it (fully deterministic: no per-write values). */
static void pin_export(const char *dtype, const char *want)
{
    enum { D = 5, F = 7 };
    static float w_enc[2 * D * F], b_enc[F], w_dec[2 * F * D], b_dec[2 * D];
    for (int i = 0; i < 2 * D * F; i++) {
        w_enc[i] = (float)fill_value(1, (size_t)i) / 3;
        w_dec[i] = (float)fill_value(2, (size_t)i) * 1e-3f;
    }
    for (int i = 0; i < F; i++) b_enc[i] = (float)fill_value(3, (size_t)i);
    for (int i = 0; i < 2 * D; i++) b_dec[i] = (float)fill_value(4, (size_t)i) * 1e5f;
    xc_ckpt_model_t m = {.model = XC_CKPT_BATCHTOPK, .d = D, .dict_size = F, .k = 2, .threshold = 0.125f,
                         .engine_layout = 0, .w_enc = w_enc, .b_enc = b_enc, .w_dec = w_dec, .b_dec = b_dec};
    char file[64], path[600], why[512], dg[65];
    uint64_t bytes;
    xc_st_t *st = xc_st_new();
    XC_REQUIRE(st, "xc_st_new");
    xc_st_checksum(st);
    int rc = xc_st_meta(st, "format", "xcoderd-pin");
    rc = rc ? rc : xc_st_meta(st, "quote\"and\\slash", "tab\there\x01");
    rc = rc ? rc : xc_ckpt_add_model(st, &m, dtype);
    snprintf(file, sizeof file, "export-%s.safetensors", dtype);
    rc = rc ? rc : xc_st_write(st, g_dir, file, path, sizeof path, &bytes, why, sizeof why);
    XC_REQUIRE(rc == 0, "write: %s", why);
    xc_st_destroy(&st);
    size_t n;
    uint8_t *b = slurp(path, &n);
    XC_REQUIRE(b, "cannot read %s", path);
    XC_CHECK(n == bytes, "size %zu, reported %llu", n, (unsigned long long)bytes);
    sha_hex(b, n, dg);
    free(b);
    XC_CHECK(check_pin(dtype, dg, want), "%s export digest %s, pinned %s", dtype, dg, want);
}

static void test_pin_export_f16(void) { pin_export("F16", PIN_EXPORT_F16); }
static void test_pin_export_bf16(void) { pin_export("BF16", PIN_EXPORT_BF16); }

/* The shared-memory layout: the header's field offsets as documented in
 * include/xc_shm.h and proto/SHM.md, and the array descriptors the writer
 * lays out for a given size. */
static void test_pin_shm_layout(void)
{
#define OFF(f, want) XC_CHECK(offsetof(xc_shm_header_t, f) == (want), #f " at %zu, documented %d", offsetof(xc_shm_header_t, f), want)
    OFF(magic, 0);
    OFF(layout_version, 4);
    OFF(header_size, 8);
    OFF(n_arrays, 12);
    OFF(total_size, 16);
    OFF(n_latents, 24);
    OFF(d, 28);
    OFF(model, 32);
    OFF(writer_pid, 36);
    OFF(seq, 40);
    OFF(gen, 48);
    OFF(checksum, 56);
    OFF(step, 64);
    OFF(tokens, 72);
    OFF(updated_unix, 80);
    OFF(loss, 88);
    OFF(recon_l2, 96);
    OFF(recon_mse, 104);
    OFF(aux, 112);
    OFF(fve_base, 120);
    OFF(fve_chat, 128);
    OFF(l0, 136);
    OFF(dead_fraction, 144);
    OFF(theta, 152);
    OFF(tokens_per_s, 160);
    OFF(scaling_step, 168);
    OFF(scaling_tokens, 176);
    OFF(class_counts, 184);
    OFF(alive, 216);
    OFF(reserved0, 220);
    OFF(thresholds, 224);
    OFF(pad0, 248);
    OFF(arrays, 256);
    OFF(owner, 768);
#undef OFF
    XC_CHECK(sizeof(xc_shm_header_t) == 1024, "header %zu bytes", sizeof(xc_shm_header_t));
    XC_CHECK(sizeof(xc_shm_array_desc_t) == 16, "array descriptor %zu bytes", sizeof(xc_shm_array_desc_t));
    XC_CHECK(XC_SHM_MAGIC == 0x4d485358u && XC_SHM_LAYOUT_VERSION == 2 && XC_SHM_NARRAYS == 28 && XC_CLASS_N == 5,
             "constants changed");

    /* the writer's array placement for 37 latents (odd: exposes alignment) */
    char inst[64], why[256], dg[65];
    int err;
    snprintf(inst, sizeof inst, "test-pin-%ld", (long)getpid());
    xc_shm_writer_t *w = xc_shm_writer_open(inst, 37, 6, 1, 0600, NULL, &err, why, sizeof why);
    XC_REQUIRE(w, "shm writer: %s (needs /dev/shm)", why);
    const xc_shm_header_t *h = xc_shm_writer_header(w);
    uint8_t rec[8 + 4 * 4 + XC_SHM_MAX_ARRAYS * 16];
    size_t u = 0;
    memcpy(rec + u, &h->total_size, 8), u += 8;
    memcpy(rec + u, &h->header_size, 4), u += 4;
    memcpy(rec + u, &h->n_arrays, 4), u += 4;
    memcpy(rec + u, &h->n_latents, 4), u += 4;
    memcpy(rec + u, &h->d, 4), u += 4;
    memcpy(rec + u, h->arrays, sizeof h->arrays), u += sizeof h->arrays;
    XC_CHECK(h->arrays[XC_SHM_DELTA_NORM].offset == 1024, "first array at %llu",
             (unsigned long long)h->arrays[XC_SHM_DELTA_NORM].offset);
    xc_shm_writer_close(&w, 1);
    sha_hex(rec, u, dg);
    XC_CHECK(check_pin("shm", dg, PIN_SHM_LAYOUT), "shm layout digest %s, pinned %s", dg, PIN_SHM_LAYOUT);
}

int main(int argc, char **argv)
{
    g_print = argc > 1 && strcmp(argv[1], "--print") == 0;
    snprintf(g_dir, sizeof g_dir, "/tmp/xc-test-pin-%ld", (long)getpid());
    char why[256];
    if (xc_mkdirs(g_dir, why, sizeof why)) {
        printf("not ok - setup: %s\n", why);
        return 1;
    }
    XC_RUN(test_pin_checkpoint_batchtopk);
    XC_RUN(test_pin_checkpoint_l1);
    XC_RUN(test_pin_export_f16);
    XC_RUN(test_pin_export_bf16);
    XC_RUN(test_pin_shm_layout);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (system(cmd)) { /* best effort */
    }
    XC_TEST_EXIT();
}
