/* safetensors files, read side, shared by the daemon (resume), libxcoder (the
 * checkpoint loader) and the CLI (inspect, export); proto/CHECKPOINT.md is the
 * format. Three pieces:
 *   xc_crc32       CRC-32 (ISO-HDLC, the one zlib and Python's zlib.crc32 compute)
 *   xc_json_to_mp  a strict JSON (RFC 8259) parser that writes MessagePack, so
 *                  a parsed header is an ordinary xc_mp_doc
 *   xc_stf_*       a mapped safetensors file whose layout is checked completely
 *                  at open: header length, JSON, every entry's dtype / shape /
 *                  byte range, the ranges tiling the data section exactly (no gap,
 *                  no overlap, nothing after), metadata strings. The content
 *                  checksum of xcoderd files is checked on request (xc_stf_verify).
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

/* ------------------------------------------------- xcoderd checkpoint pairs -- */
#define XC_STF_MODEL_FORMAT "xcoderd-crosscoder"  /* metadata "format" of a model file */
#define XC_STF_TRAIN_FORMAT "xcoderd-train-state" /* ... of a training-state file */
#define XC_STF_TRAIN_SUFFIX ".resume.safetensors" /* NAME-STEP.resume.safetensors beside NAME-STEP.safetensors */
enum { XC_STF_OTHER = 0, XC_STF_MODEL = 1, XC_STF_TRAIN = 2 };
/* By the metadata "format": XC_STF_MODEL, XC_STF_TRAIN or XC_STF_OTHER. */
int xc_stf_kind(const xc_stf_t *f);
/* Do these files form one checkpoint? Same checkpoint_id, run_id and step, and
 * the model file names the training file's checksum. Checks metadata only
 * (xc_stf_verify checks each file's content). 0 or XC_ECORRUPT with the reason. */
int xc_stf_pair_check(const xc_stf_t *model, const xc_stf_t *train, char *why, size_t why_len);

#endif
