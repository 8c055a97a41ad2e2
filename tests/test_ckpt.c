/* Tests of the checkpoint writer (daemon/ckpt.c): the generic safetensors
 * writer (header, alignment, offsets, fill callbacks, metadata escaping,
 * atomic replace, failure leaves no temp file) and the crosscoder layout
 * (transposes checked element by element against the engine's parameters). */
#include "xc_ckpt.h"
#include "xc_error.h"
#include "xc_engine.h"
#include "xc_test.h"

#include <dirent.h>
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
    xc_engine_config_default(&c, XC_MODEL_BATCHTOPK);
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

int main(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/xc-test-ckpt-%ld/nested/dir", (long)getpid());
    char why[256];
    if (xc_mkdirs(g_dir, why, sizeof why)) {
        printf("not ok - setup: %s\n", why);
        return 1;
    }
    XC_RUN(test_st_writer);
    XC_RUN(test_crosscoder_layout);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf /tmp/xc-test-ckpt-%ld", (long)getpid());
    if (system(cmd)) { /* best effort */
    }
    XC_TEST_EXIT();
}
