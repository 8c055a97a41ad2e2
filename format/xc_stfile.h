/* safetensors files, the one reader and the one writer, shared by the daemon
 * (checkpoints, resume), libxcoder (the checkpoint loader, xc_client_st_*), the
 * CLI (inspect, export), tests and benches; proto/CHECKPOINT.md is the format
 * and xc_ckptlayout.h what xcoderd puts in it. Four pieces:
 *   xc_crc32       CRC-32 (ISO-HDLC, the one zlib and Python's zlib.crc32 compute)
 *   xc_json_to_mp  a strict JSON (RFC 8259) parser that writes MessagePack, so
 *                  a parsed header is an ordinary xc_mp_doc
 *   xc_stf_*       a mapped safetensors file whose layout is checked completely
 *                  at open: header length, JSON, every entry's dtype / shape /
 *                  byte range, the ranges tiling the data section exactly (no gap,
 *                  no overlap, nothing after), metadata strings. The content
 *                  checksum of xcoderd files is checked on request (xc_stf_verify).
 *                  Or lazily (xc_stf_open_lazy): the header is parsed, each entry
 *                  is checked when it is looked up (xc_stf_lookup), for files of
 *                  other tools that a reader only takes a few tensors from.
 *   xc_st_*        the writer: borrowed tensors or fill callbacks (e.g. a
 *                  transpose, so no second copy is needed), metadata, an
 *                  optional CRC-32 of the content; written atomically (xc_afile.h)
 * Nothing here trusts the file: a truncated, garbage or hostile file gives
 * XC_ECORRUPT with a reason that names the problem, never a crash. */
#ifndef XC_STFILE_H
#define XC_STFILE_H

#include <stddef.h>
#include <stdint.h>

#include "xc_proto.h"

#define XC_STF_HEADER_MAX (100u << 20) /* the safetensors library's own limit */
#define XC_STF_MAX_DIMS 8
/* xcoderd's content checksum: the first metadata entry of the files it writes,
 * "checksum": "crc32:XXXXXXXX" (8 lowercase hex digits). The CRC covers the whole
 * file with those 8 digits replaced by the character '0'. */
#define XC_STF_CHECKSUM_KEY "checksum"
#define XC_STF_CHECKSUM_PAT "\"checksum\":\"crc32:"

/* Continues a CRC-32 over p[0, n): crc = xc_crc32(0, NULL, 0) to start. */
uint32_t xc_crc32(uint32_t crc, const void *p, size_t n);

/* Parses JSON text s[0, len) into one MessagePack value appended to out
 * (integers that fit int64/uint64 stay integers; other numbers are float64).
 * 0, XC_EPROTO with "JSON error at byte N: ..." in why, or XC_ENOMEM. */
int xc_json_to_mp(const char *s, size_t len, xc_buf_t *out, char *why, size_t why_len);

/* Bytes per element of a safetensors dtype name ("F32", "BF16", "I64" ...); 0 if unknown. */
size_t xc_stf_dtype_size(const char *dtype);

typedef struct {
    const char *name;          /* NUL-terminated; owned by the file handle */
    char dtype[8];
    int ndim;                  /* 0 = scalar */
    int64_t shape[XC_STF_MAX_DIMS];
    uint64_t count;            /* elements */
    size_t bytes;
    size_t offset;             /* from the start of the file */
    const void *data;          /* view into the mapping; 8-byte aligned in xcoderd files */
} xc_stf_tensor_t;

typedef struct xc_stf xc_stf_t;

/* Maps path read-only and checks its layout (above). NULL on failure with *err
 * (may be NULL) = XC_EIO (cannot open/read), XC_ECORRUPT or XC_ENOMEM, and a
 * reason naming the file in why. The caller owns the handle (xc_stf_close). */
xc_stf_t *xc_stf_open(const char *path, int *err, char *why, size_t why_len);
void xc_stf_close(xc_stf_t **f);

const char *xc_stf_path(const xc_stf_t *f);
size_t xc_stf_size(const xc_stf_t *f);          /* file bytes */
const char *xc_stf_header(const xc_stf_t *f, size_t *len); /* raw JSON, borrowed, not NUL-terminated */
/* Tensors in file order (by offset). */
int xc_stf_count(const xc_stf_t *f);
const xc_stf_tensor_t *xc_stf_at(const xc_stf_t *f, int i);
const xc_stf_tensor_t *xc_stf_find(const xc_stf_t *f, const char *name); /* NULL if absent */
/* __metadata__ entries in header order; values are NUL-terminated copies. */
int xc_stf_meta_count(const xc_stf_t *f);
const char *xc_stf_meta_key(const xc_stf_t *f, int i);
const char *xc_stf_meta_val(const xc_stf_t *f, int i);
const char *xc_stf_meta(const xc_stf_t *f, const char *key); /* NULL if absent */

/* Checks the content checksum. 0 when it matches; XC_ENOTFOUND when the file
 * has none (not written by xcoderd); XC_ECORRUPT on a mismatch or a malformed
 * checksum entry (why says stored and computed values). */
int xc_stf_verify(const xc_stf_t *f, char *why, size_t why_len);
/* The checksum the file claims ("crc32:XXXXXXXX"), or NULL. */
const char *xc_stf_checksum(const xc_stf_t *f);

/* A tensor must exist with this dtype and shape: 0, or `code` with the reason. */
int xc_stf_expect(const xc_stf_t *f, const char *name, const char *dtype, int ndim, const int64_t *shape,
                  int code, char *why, size_t why_len);

/* Maps path and parses its header as JSON but checks no tensor entry: for
 * files of other tools whose entries a reader checks one at a time with
 * xc_stf_lookup. xc_stf_count and the metadata accessors see nothing of such a
 * handle. NULL on failure as xc_stf_open. */
xc_stf_t *xc_stf_open_lazy(const char *path, int *err, char *why, size_t why_len);
/* Finds and checks one entry (dtype, shape, offsets inside the data section,
 * size = dtype x shape). 0; XC_ENOTFOUND (no such tensor); XC_EDTYPE (a dtype
 * this reader does not know); XC_ECORRUPT; the reason in why. Works on either
 * kind of handle; out->name is borrowed from the handle. */
int xc_stf_lookup(const xc_stf_t *f, const char *name, xc_stf_tensor_t *out, char *why, size_t why_len);

/* ------------------------------------------------------------ the writer -- */
typedef struct xc_st xc_st_t;
/* Produces bytes [offset, offset + len) of a tensor into out. offset and len
 * are multiples of the dtype size. Returns 0 or a negative XC_E*. */
typedef int (*xc_st_fill_fn)(void *ctx, size_t offset, void *out, size_t len);

xc_st_t *xc_st_new(void); /* NULL on allocation failure; free with xc_st_destroy */
void xc_st_destroy(xc_st_t **st);
/* dtype: "F32", "F16", "BF16", "I32", "I64", "U32" ...; ndim 0..4 (0 = scalar).
 * data is borrowed until xc_st_write returns. Names are copied. */
int xc_st_add(xc_st_t *st, const char *name, const char *dtype, int ndim, const int64_t *shape,
              const void *data);
int xc_st_add_fill(xc_st_t *st, const char *name, const char *dtype, int ndim,
                   const int64_t *shape, xc_st_fill_fn fn, void *ctx);
/* A __metadata__ entry (key and value copied). */
int xc_st_meta(xc_st_t *st, const char *key, const char *value);
/* Makes the file carry its content checksum: "checksum": "crc32:XXXXXXXX" as the
 * first metadata entry, the CRC-32 of the whole file with those 8 digits read as
 * '0' (computed while writing; see XC_STF_CHECKSUM_PAT above). */
void xc_st_checksum(xc_st_t *st);
/* After a successful xc_st_write with a checksum: "crc32:XXXXXXXX"; else "". */
const char *xc_st_checksum_value(const xc_st_t *st);
/* Test hook: the write stops after n bytes as if the process had died there
 * (the temp file is left behind, nothing is renamed) and returns XC_EIO.
 * n < 0: off (the default). */
void xc_st_fault_after(xc_st_t *st, long long n);
/* Writes dir/file atomically (creating dir). path_out gets the final path;
 * *bytes the size. XC_EIO / XC_ENOMEM / XC_EINVAL with the reason in why. */
int xc_st_write(xc_st_t *st, const char *dir, const char *file, char *path_out, size_t path_len,
                uint64_t *bytes, char *why, size_t why_len);

#endif
