/* SHA-256, the table column catalogue and checkpoint names (xc_remote_proto.h). */
#include "xc_remote_proto.h"

#include <stdio.h>
#include <string.h>

/* ---------------------------------------------------------------- SHA-256 -- */
static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(uint32_t h[8], const uint8_t *p)
{
    uint32_t w[64], a, b, c, d, e, f, g, hh;
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = hh + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
}

void xc_sha256_init(xc_sha256_t *s)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, iv, sizeof iv);
    s->total = 0;
    s->fill = 0;
}

void xc_sha256_update(xc_sha256_t *s, const void *data, size_t n)
{
    const uint8_t *p = data;
    s->total += n;
    if (s->fill) {
        size_t k = 64 - s->fill < n ? 64 - s->fill : n;
        memcpy(s->block + s->fill, p, k);
        s->fill += k, p += k, n -= k;
        if (s->fill < 64) return;
        sha256_block(s->h, s->block);
        s->fill = 0;
    }
    for (; n >= 64; p += 64, n -= 64) sha256_block(s->h, p);
    memcpy(s->block, p, n);
    s->fill = n;
}

void xc_sha256_final(xc_sha256_t *s, uint8_t digest[32])
{
    uint64_t bits = s->total * 8;
    uint8_t pad[72] = {0x80};
    size_t padlen = s->fill < 56 ? 56 - s->fill : 120 - s->fill;
    for (int i = 0; i < 8; i++) pad[padlen + i] = (uint8_t)(bits >> (56 - 8 * i));
    uint64_t keep = s->total;
    xc_sha256_update(s, pad, padlen + 8);
    s->total = keep;
    for (int i = 0; i < 8; i++) {
        digest[4 * i] = (uint8_t)(s->h[i] >> 24);
        digest[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
        digest[4 * i + 2] = (uint8_t)(s->h[i] >> 8);
        digest[4 * i + 3] = (uint8_t)s->h[i];
    }
}

void xc_sha256_checksum(const uint8_t digest[32], char out[72])
{
    static const char hex[] = "0123456789abcdef";
    memcpy(out, XC_FETCH_CHECKSUM_PREFIX, 7);
    for (int i = 0; i < 32; i++) {
        out[7 + 2 * i] = hex[digest[i] >> 4];
        out[8 + 2 * i] = hex[digest[i] & 15];
    }
    out[71] = 0;
}

/* ------------------------------------------------------------------ table -- */
/* The catalogue is the column schema (proto/xc_schema.h). */
#define XC_TCOL_ROW(name, dtype, shm, dflt, src, field) {#name, XC_TCOL_##dtype, shm, dflt},
const xc_table_col_t xc_table_cols[] = {XC_LATENT_COLUMNS(XC_TCOL_ROW)};
#undef XC_TCOL_ROW
const int xc_table_ncols = (int)(sizeof xc_table_cols / sizeof xc_table_cols[0]);

int xc_table_col_find(const char *s, size_t len)
{
    for (int i = 0; i < xc_table_ncols; i++)
        if (strlen(xc_table_cols[i].name) == len && memcmp(xc_table_cols[i].name, s, len) == 0) return i;
    return -1;
}

#define XC_TDT_NAME(tok, name, code, size) [code] = name,
#define XC_TDT_SIZE(tok, name, code, size) [code] = size,
static const char *const g_tdtype[] = {[0] = "?", XC_COLUMN_DTYPES(XC_TDT_NAME)};
static const size_t g_tsize[] = {[0] = 0, XC_COLUMN_DTYPES(XC_TDT_SIZE)};
#undef XC_TDT_NAME
#undef XC_TDT_SIZE

const char *xc_table_dtype_name(int t) { return t >= 1 && t <= 4 ? g_tdtype[t] : "?"; }
size_t xc_table_dtype_size(int t) { return t >= 1 && t <= 4 ? g_tsize[t] : 0; }

int xc_table_dtype_parse(const char *s, size_t len)
{
    for (int t = 1; t <= 4; t++)
        if (strlen(g_tdtype[t]) == len && memcmp(g_tdtype[t], s, len) == 0) return t;
    return 0;
}

/* ------------------------------------------------------- checkpoint names -- */
int xc_ckpt_name_ok(const char *name, size_t len)
{
    static const char ext[] = ".safetensors";
    size_t el = sizeof ext - 1;
    if (!name || len <= el || len > 200 || name[0] == '.') return 0;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-'))
            return 0;
    }
    return memcmp(name + len - el, ext, el) == 0;
}

/* Finds NAME-STEP[.KIND].safetensors: *step and the KIND span (empty for a
 * plain checkpoint). 0 when the name has no -STEP part. */
static int name_parts(const char *name, size_t len, long *step, const char **kind, size_t *kind_len)
{
    static const char ext[] = ".safetensors";
    size_t el = sizeof ext - 1;
    if (!name || len <= el || memcmp(name + len - el, ext, el) != 0) return 0;
    size_t end = len - el;
    for (size_t dash = end; dash-- > 0;) {
        if (name[dash] != '-') continue;
        size_t i = dash + 1, d0 = i;
        while (i < end && name[i] >= '0' && name[i] <= '9') i++;
        if (i == d0 || i - d0 > 18 || (i < end && name[i] != '.')) continue;
        long v = 0;
        for (size_t k = d0; k < i; k++) v = v * 10 + (name[k] - '0');
        *step = v;
        *kind = i < end ? name + i + 1 : name + end;
        *kind_len = i < end ? end - i - 1 : 0;
        return 1;
    }
    return 0;
}

long xc_ckpt_name_step(const char *name, size_t len)
{
    long step;
    const char *k;
    size_t kl;
    return name_parts(name, len, &step, &k, &kl) ? step : -1;
}

void xc_ckpt_name_kind(const char *name, size_t len, char *out, size_t out_len)
{
    long step;
    const char *k;
    size_t kl;
    if (!out_len) return;
    if (!name_parts(name, len, &step, &k, &kl)) snprintf(out, out_len, "other");
    else if (kl == 0) snprintf(out, out_len, "checkpoint");
    else snprintf(out, out_len, "%.*s", (int)kl, k);
}
