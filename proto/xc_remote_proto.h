/* Remote access over the control socket (PROTOCOL.md 2.1, 2.2), the parts the
 * daemon and the clients share:
 *   xc_sha256_*   SHA-256 (FIPS 180-4): the checksum `fetch` announces for a
 *                 whole checkpoint file ("sha256:<64 hex digits>", what
 *                 `sha256sum FILE` prints)
 *   xc_table_*    the column catalogue of the `table` op: every per-latent
 *                 array of proto/SHM.md under the same name and dtype, plus a
 *                 few the control socket adds
 *   xc_ckpt_name_ok  which file names `fetch` serves
 * Nothing here touches a socket or a file. */
#ifndef XC_REMOTE_PROTO_H
#define XC_REMOTE_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "xc_schema.h"

#ifdef __cplusplus
extern "C" {
#endif

#define XC_FETCH_CHUNK_MAX (1u << 20)   /* bytes of file data in one fetch reply */
#define XC_FETCH_CHECKSUM_PREFIX "sha256:"

/* ---------------------------------------------------------------- SHA-256 -- */
typedef struct {
    uint32_t h[8];
    uint64_t total;     /* bytes hashed */
    uint8_t block[64];
    size_t fill;        /* bytes in block */
} xc_sha256_t;

void xc_sha256_init(xc_sha256_t *s);
void xc_sha256_update(xc_sha256_t *s, const void *p, size_t n);
void xc_sha256_final(xc_sha256_t *s, uint8_t digest[32]);
/* "sha256:" + 64 lowercase hex digits + NUL: out needs 72 bytes. */
void xc_sha256_checksum(const uint8_t digest[32], char out[72]);

/* ------------------------------------------------------------------ table -- */
/* Column dtypes; the values are SHM.md's array dtype codes. */
enum {
#define XC_TCOL_ENUM(tok, name, code, size) XC_TCOL_##tok = code,
    XC_COLUMN_DTYPES(XC_TCOL_ENUM)
#undef XC_TCOL_ENUM
};

typedef struct {
    const char *name;   /* column name (SHM.md's array name where it has one) */
    int dtype;          /* XC_TCOL_* */
    int shm;            /* xc_shm_array_t index, -1 for a column shared memory lacks */
    int by_default;     /* in the reply when the request names no fields */
} xc_table_col_t;

/* The catalogue, in reply order: XC_LATENT_COLUMNS of proto/xc_schema.h (the
 * 24 arrays of SHM.md, indices 0..23 = the shm indices, then fired,
 * tokens_since_fired, dead, j). */
extern const xc_table_col_t xc_table_cols[];
extern const int xc_table_ncols;
/* Index of the column named s[0, len), -1 if none. */
int xc_table_col_find(const char *s, size_t len);
const char *xc_table_dtype_name(int dtype);   /* "f32" "f64" "i64" "u8"; "?" */
size_t xc_table_dtype_size(int dtype);        /* 4 8 8 1; 0 */
int xc_table_dtype_parse(const char *s, size_t len); /* XC_TCOL_* or 0 */

/* 1 when name is a file `fetch` may serve: 1..200 bytes of [A-Za-z0-9._-], not
 * starting with '.', ending in ".safetensors" (so no path, no temp file). */
int xc_ckpt_name_ok(const char *name, size_t len);
/* Names are NAME-STEP.safetensors (a checkpoint) or NAME-STEP.KIND.safetensors
 * (another file of that step, e.g. KIND "resume"). The step, -1 if none. */
long xc_ckpt_name_step(const char *name, size_t len);
/* "checkpoint", KIND, or "other" (no -STEP part) into out. */
void xc_ckpt_name_kind(const char *name, size_t len, char *out, size_t out_len);

#ifdef __cplusplus
}
#endif
#endif
