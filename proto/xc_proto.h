/* xcoderd wire codec: the one place that builds and parses frames.
 * The daemon and libxcoder both link it; proto/PROTOCOL.md is the human spec
 * (field by field) and proto/vectors.json holds encoded examples.
 *
 * Four layers, bottom up:
 *   xc_buf_*   a growable byte buffer (the output of every encoder)
 *   xc_mpw_*   a MessagePack writer with open-ended maps/arrays (count patched
 *              on close), sticky errors: write everything, check once at the end
 *   xc_mp_*    a MessagePack reader: parse a frame into a document, look values
 *              up by key / index, render as JSON (for `--json` output)
 *   xc_proto_* the protocol messages: batch header + payload conversion,
 *              ack/nack, control requests/replies, events
 *
 * Every function that can fail returns 0 or a negative XC_E* code
 * (include/xc_error.h); those that take `why` also write a human reason there
 * (always NUL-terminated when why_len > 0). No function crashes or reads past
 * its input on malformed data. Nothing here touches a socket or a file. */
#ifndef XC_PROTO_H
#define XC_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "xc_error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- limits -- */
#define XC_PROTO_VERSION 1
#define XC_PROTO_PRODUCER_MAX 64       /* bytes in a producer id */
#define XC_PROTO_STREAM_MAX 31         /* bytes in a stream tag ([A-Za-z0-9._:/-]) */
#define XC_PROTO_HEADER_MAX 4096       /* bytes in an ingest header frame */
#define XC_PROTO_REQUEST_MAX 65536     /* bytes in a control request frame */
#define XC_PROTO_OP_MAX 31             /* bytes in an op name */
#define XC_PROTO_REASON_MAX 256        /* bytes in a nack reason / error message */
#define XC_PROTO_MPW_DEPTH 32          /* nesting depth of the writer (as the reader's) */

/* ------------------------------------------------------------ byte buffer -- */
/* Growable buffer; data is heap memory owned by the buffer. err is sticky
 * (XC_ENOMEM after a failed growth; later appends do nothing). */
typedef struct {
    uint8_t *data;
    size_t len, cap;
    int err;
} xc_buf_t;

void xc_buf_init(xc_buf_t *b);
void xc_buf_reset(xc_buf_t *b);          /* len = 0, err = 0, keeps capacity */
void xc_buf_free(xc_buf_t *b);           /* frees data, leaves an empty buffer */
int xc_buf_append(xc_buf_t *b, const void *p, size_t n);
/* Transfers ownership of the bytes to the caller (free() them); *len set. The
 * buffer is left empty. NULL when empty or after an error. */
uint8_t *xc_buf_take(xc_buf_t *b, size_t *len);

/* ------------------------------------------------------ MessagePack reader -- */
typedef enum {
    XC_MP_NONE = 0, /* absent key / out-of-range index / not a container */
    XC_MP_NIL, XC_MP_BOOL, XC_MP_INT, XC_MP_FLOAT, XC_MP_STR, XC_MP_BIN,
    XC_MP_ARRAY, XC_MP_MAP, XC_MP_EXT
} xc_mp_type_t;

typedef struct xc_mp_doc xc_mp_doc_t;      /* owns a parsed frame */
typedef struct { const void *o; } xc_mp_node_t; /* borrowed view into a doc */

/* Parses exactly one MessagePack value filling buf[0, len) (trailing bytes are
 * an error). Counts are checked against the bytes present before anything is
 * allocated, so a hostile header cannot make the parser allocate. *out is
 * owned by the caller (xc_mp_doc_free). XC_EPROTO / XC_ENOMEM. */
int xc_mp_doc_parse(const void *buf, size_t len, xc_mp_doc_t **out, char *why, size_t why_len);
void xc_mp_doc_free(xc_mp_doc_t **doc);
xc_mp_node_t xc_mp_root(const xc_mp_doc_t *doc);

xc_mp_type_t xc_mp_type(xc_mp_node_t n);
size_t xc_mp_len(xc_mp_node_t n);                    /* array/map entries, str/bin bytes */
xc_mp_node_t xc_mp_get(xc_mp_node_t map, const char *key); /* NONE if absent */
xc_mp_node_t xc_mp_at(xc_mp_node_t array, size_t i);
xc_mp_node_t xc_mp_map_key(xc_mp_node_t map, size_t i);
xc_mp_node_t xc_mp_map_val(xc_mp_node_t map, size_t i);
/* Typed reads: 0, or XC_ENOTFOUND (NONE node) / XC_EINVAL (wrong type or out of
 * range for the target). as_f64 accepts ints too; as_i64/as_u64 accept only
 * integers. as_str gives a borrowed, NOT NUL-terminated view. */
int xc_mp_as_bool(xc_mp_node_t n, int *out);
int xc_mp_as_i64(xc_mp_node_t n, int64_t *out);
int xc_mp_as_u64(xc_mp_node_t n, uint64_t *out);
int xc_mp_as_f64(xc_mp_node_t n, double *out);
int xc_mp_as_str(xc_mp_node_t n, const char **s, size_t *len);
int xc_mp_as_bin(xc_mp_node_t n, const void **p, size_t *len);
/* Copies a str node into dst (NUL-terminated); XC_ETOOBIG if it does not fit. */
int xc_mp_copy_str(xc_mp_node_t n, char *dst, size_t dst_len);
/* 1 when n is a str equal to s. */
int xc_mp_str_eq(xc_mp_node_t n, const char *s);
/* JSON rendering: the one renderer of MessagePack values (daemon, CLI and
 * libxcoder all use it). Output is always valid JSON (UTF-8 checked: invalid
 * bytes become U+FFFD), NaN/Inf are null, and it is linear in the input: a map
 * key that is not a string is rendered as a string without rendering anything
 * twice (a scalar as its text, "5"; bin as its encoded string; a map or array
 * key as the marker "<map>" / "<array>"). */
#define XC_JSON_MAX_DEPTH 32              /* nesting rendered (the reader accepts as much) */
#define XC_JSON_MAX_BYTES ((size_t)1 << 28) /* default cap on one rendering: 256 MiB */
#define XC_JSON_SHORTEST 0x1u /* floats: shortest text that reads back (as float32 when exactly
                               * one); integral values keep ".0". Default: %.15g, else %.17g */
#define XC_JSON_BASE64 0x2u   /* bin as base64; default: lowercase hex */
typedef struct {
    int indent;               /* spaces per nesting level; 0 = compact, one line */
    unsigned flags;           /* XC_JSON_* */
    size_t max_bytes;         /* cap on the bytes this call appends; 0 = XC_JSON_MAX_BYTES */
} xc_json_opts_t;
/* Appends n as JSON to out (opts NULL: compact, defaults). 0, or XC_ETOOBIG
 * (output over the cap), XC_EPROTO (deeper than XC_JSON_MAX_DEPTH), XC_ENOMEM,
 * XC_ENOTFOUND (NONE node), with why; out is then left as it was. */
int xc_mp_json(xc_mp_node_t n, xc_buf_t *out, const xc_json_opts_t *opts, char *why, size_t why_len);
/* xc_mp_json with indent = pretty (when > 0) and the default flags. */
int xc_mp_to_json(xc_mp_node_t n, xc_buf_t *out, int pretty);

/* ------------------------------------------------------ MessagePack writer -- */
/* Writer over a buffer (borrowed). Maps and arrays are opened and closed; their
 * element count is patched at close (they are written as map32/array32, which
 * every MessagePack decoder accepts). Inside a map, write key then value. */
typedef struct {
    xc_buf_t *buf;
    size_t open_at[XC_PROTO_MPW_DEPTH];
    uint32_t count[XC_PROTO_MPW_DEPTH];
    int is_map[XC_PROTO_MPW_DEPTH];
    int depth;
    int err; /* sticky: first error seen */
} xc_mpw_t;

void xc_mpw_init(xc_mpw_t *w, xc_buf_t *buf);
void xc_mpw_map_begin(xc_mpw_t *w);
void xc_mpw_map_end(xc_mpw_t *w);
void xc_mpw_array_begin(xc_mpw_t *w);
void xc_mpw_array_end(xc_mpw_t *w);
void xc_mpw_nil(xc_mpw_t *w);
void xc_mpw_bool(xc_mpw_t *w, int v);
void xc_mpw_int(xc_mpw_t *w, int64_t v);
void xc_mpw_uint(xc_mpw_t *w, uint64_t v);
void xc_mpw_double(xc_mpw_t *w, double v);
void xc_mpw_str(xc_mpw_t *w, const char *s);           /* NULL writes nil */
void xc_mpw_strn(xc_mpw_t *w, const char *s, size_t n);
void xc_mpw_bin(xc_mpw_t *w, const void *p, size_t n);
void xc_mpw_node(xc_mpw_t *w, xc_mp_node_t n);          /* deep copy of a parsed value */
/* key + value in one call, for maps */
void xc_mpw_kv_nil(xc_mpw_t *w, const char *k);
void xc_mpw_kv_bool(xc_mpw_t *w, const char *k, int v);
void xc_mpw_kv_int(xc_mpw_t *w, const char *k, int64_t v);
void xc_mpw_kv_uint(xc_mpw_t *w, const char *k, uint64_t v);
void xc_mpw_kv_double(xc_mpw_t *w, const char *k, double v);
void xc_mpw_kv_str(xc_mpw_t *w, const char *k, const char *v);
/* 0 when everything was written and every container closed; else the sticky
 * error (XC_ENOMEM, or XC_EINVAL for unbalanced / too deep / odd map). */
int xc_mpw_finish(xc_mpw_t *w);

/* ----------------------------------------------------------------- errors -- */
/* "XC_ESHAPE" -> XC_ESHAPE. Unknown names map to XC_EPROTO. (The reverse is
 * xc_errname() in xc_error.h.) */
int xc_proto_errcode(const char *name, size_t len);

/* ----------------------------------------------------------------- dtypes -- */
typedef enum { XC_DTYPE_F32 = 0, XC_DTYPE_F16 = 1, XC_DTYPE_BF16 = 2 } xc_dtype_t;
const char *xc_dtype_name(xc_dtype_t t);                 /* "f32" | "f16" | "bf16" */
size_t xc_dtype_size(xc_dtype_t t);                      /* 4 | 2 | 2 */
int xc_dtype_parse(const char *s, size_t len, xc_dtype_t *out); /* 0 / XC_EDTYPE */

/* Scalar conversions (IEEE binary16 and bfloat16; round to nearest even). */
float xc_f16_to_f32(uint16_t h);
uint16_t xc_f32_to_f16(float f);
float xc_bf16_to_f32(uint16_t h);
uint16_t xc_f32_to_bf16(float f);

/* ----------------------------------------------------------------- ingest -- */
/* The batch header (frame 1 of an ingest message, PROTOCOL.md "Ingest"). */
typedef struct {
    uint32_t v;                                /* protocol version */
    char producer[XC_PROTO_PRODUCER_MAX + 1];  /* "" when absent */
    uint64_t seq;
    int has_seq;                               /* decode: seq was read */
    uint64_t n;                                /* tokens */
    uint32_t d;                                /* activation width per model */
    xc_dtype_t dtype;
    int has_tokens;                            /* a u32 token-id frame follows */
    int has_pos;                               /* a (doc, pos) u32 pair frame follows */
    char stream[XC_PROTO_STREAM_MAX + 1];      /* stream tag, "" when absent */
    uint32_t first;                            /* vocab messages: id of the first piece */
} xc_batch_hdr_t;

/* Appends the header map to out. XC_EINVAL for n = 0, d = 0 or a producer id
 * longer than XC_PROTO_PRODUCER_MAX. */
int xc_proto_batch_hdr_encode(xc_buf_t *out, const xc_batch_hdr_t *h);
/* Parses a header frame: XC_EPROTO (not a map, missing / ill-typed field, bad
 * type or layout), XC_EVERSION, XC_EDTYPE. Unknown keys are ignored. h->has_seq
 * tells whether seq could be read, even on failure (for the nack). */
int xc_proto_batch_hdr_decode(const void *buf, size_t len, xc_batch_hdr_t *h,
                              char *why, size_t why_len);

/* Payload bytes n * 2 * d * sizeof(dtype); 0 on overflow. */
size_t xc_proto_payload_bytes(const xc_batch_hdr_t *h);

typedef struct { const void *data; size_t len; } xc_frame_t;
typedef struct {
    uint32_t d;            /* the daemon's d */
    size_t max_msg_bytes;  /* sum of all body frames */
} xc_batch_limits_t;

/* Vocabulary messages (PROTOCOL.md 1.5): [header {v, type: "vocab", producer,
 * seq, stream, first, n}][n u32 LE piece lengths][the pieces' UTF-8 bytes].
 * xc_proto_ingest_is_vocab: 1 when a header frame says type "vocab" (anything
 * else goes down the batch path, which reports what is wrong with it).
 * xc_proto_vocab_check: size, header, frame count and lengths, in the order of
 * a batch's checks; fills h (n, first, stream, seq, producer). The encoder
 * writes h's n, first, stream, seq and producer. */
int xc_proto_ingest_is_vocab(const void *buf, size_t len);
int xc_proto_vocab_hdr_encode(xc_buf_t *out, const xc_batch_hdr_t *h);
int xc_proto_vocab_check(const xc_frame_t *frames, size_t nframes, size_t max_msg_bytes, xc_batch_hdr_t *h,
                         char *why, size_t why_len);

/* Checks the body frames of an ingest message (envelope removed: frames[0] is
 * the header) in the order of PROTOCOL.md: size, header, version, dtype,
 * shape, frame count, lengths. Values are not looked at (NaN/Inf is found by
 * xc_proto_payload_to_f32). On success h is filled; on failure h holds what
 * could be read (has_seq). Codes: XC_ETOOBIG, XC_EPROTO, XC_EVERSION,
 * XC_EDTYPE, XC_ESHAPE, XC_ELENGTH. */
int xc_proto_batch_check(const xc_frame_t *frames, size_t nframes, const xc_batch_limits_t *lim,
                         xc_batch_hdr_t *h, char *why, size_t why_len);

/* Converts a checked payload (n * 2 * d values, little-endian dtype) to f32
 * into dst (caller-owned, n * 2 * d floats); src need not be aligned. Returns
 * XC_ENONFINITE at the first NaN/Inf and names it in why ("token 3, chat, dim
 * 17: NaN"); dst is then partly written. */
int xc_proto_payload_to_f32(const xc_batch_hdr_t *h, const void *src, float *dst,
                            char *why, size_t why_len);
/* The reverse, for producers: count f32 values to little-endian dtype into dst
 * (count * xc_dtype_size(t) bytes, caller-owned). */
/* XC_ERANGE when a converted value's magnitude exceeds max_abs (finite values
 * whose squares and products overflow the step: bf16 0x7f7f, f32 3e38), naming
 * the first one in why; max_abs <= 0 turns the check off. */
int xc_proto_payload_check_range(const xc_batch_hdr_t *h, const float *x, float max_abs, char *why,
                                 size_t why_len);
void xc_proto_f32_to_payload(const float *src, size_t count, xc_dtype_t t, void *dst);

/* The reply to one ingest message. */
typedef struct {
    int ack;                          /* 1: ack, 0: nack */
    int has_seq;
    uint64_t seq;
    uint64_t n;                       /* ack: tokens accepted */
    int64_t credit;                   /* ack: advisory free queue slots; -1 absent */
    int code;                         /* nack: XC_E* */
    char reason[XC_PROTO_REASON_MAX]; /* nack: human text */
} xc_ingest_reply_t;

int xc_proto_ack_encode(xc_buf_t *out, uint64_t seq, uint64_t n, int64_t credit);
/* seq is written only when h != NULL and h->has_seq. */
int xc_proto_nack_encode(xc_buf_t *out, const xc_batch_hdr_t *h, int code, const char *reason);
int xc_proto_ingest_reply_decode(const void *buf, size_t len, xc_ingest_reply_t *r,
                                 char *why, size_t why_len);

/* ---------------------------------------------------------------- control -- */
#define XC_OP_MAP(X)                  \
    X(XC_OP_PING, "ping")             \
    X(XC_OP_STATUS, "status")         \
    X(XC_OP_LATENT, "latent")         \
    X(XC_OP_TOP, "top")               \
    X(XC_OP_CHECKPOINT, "checkpoint") \
    X(XC_OP_PAUSE, "pause")           \
    X(XC_OP_RESUME, "resume")         \
    X(XC_OP_SHUTDOWN, "shutdown")     \
    X(XC_OP_CONFIG, "config")         \
    X(XC_OP_SCALING, "scaling")       \
    X(XC_OP_METRICS, "metrics")       \
    X(XC_OP_CHECKPOINTS, "checkpoints") \
    X(XC_OP_FETCH, "fetch")           \
    X(XC_OP_TABLE, "table")           \
    X(XC_OP_EXAMPLES, "examples")     \
    X(XC_OP_EXAMPLES_RESET, "examples_reset") \
    X(XC_OP_HISTORY, "history")

typedef enum {
    XC_OP_UNKNOWN = -1,
#define XC_OP_ENUM(e, s) e,
    XC_OP_MAP(XC_OP_ENUM)
#undef XC_OP_ENUM
    XC_OP__COUNT
} xc_op_t;

const char *xc_proto_op_name(xc_op_t op);              /* "?" for unknown */
xc_op_t xc_proto_op_parse(const char *s, size_t len);

/* A decoded request. doc owns the frame's values; args are read from root. */
typedef struct {
    uint32_t v;
    xc_op_t op;
    char op_name[XC_PROTO_OP_MAX + 1]; /* as sent (truncated), "" if absent */
    xc_mp_doc_t *doc;
    xc_mp_node_t root;                 /* the request map */
    xc_mp_node_t id;                   /* XC_MP_NONE when absent; echoed verbatim */
} xc_request_t;

/* Parses a request frame. Returns 0, or XC_EPROTO (not a map, no/ill-typed op),
 * XC_EVERSION, XC_ETOOBIG, XC_EUNKNOWN (op not in XC_OP_MAP). Even on failure
 * req is usable for xc_proto_error_encode (id echoed when it could be read);
 * always call xc_proto_request_free. */
int xc_proto_request_decode(const void *buf, size_t len, xc_request_t *req,
                            char *why, size_t why_len);
void xc_proto_request_free(xc_request_t *req);

/* Client side: opens a request map with v, op and (id >= 0) id. Add the op's
 * arguments with xc_mpw_kv_*, then xc_mpw_map_end and xc_mpw_finish. */
void xc_proto_request_begin(xc_mpw_t *w, const char *op, int64_t id);

/* Daemon side: opens a success reply map {v, ok: true, op, id?}. Add fields,
 * then xc_mpw_map_end and xc_mpw_finish. req may be NULL. */
void xc_proto_reply_begin(xc_mpw_t *w, const xc_request_t *req);
/* A complete error reply {v, ok: false, op?, id?, code: xc_errname(code),
 * message}. req may be NULL (or a failed decode). */
int xc_proto_error_encode(xc_buf_t *out, const xc_request_t *req, int code, const char *message);

/* Client side: parses a reply. Returns 0 and *doc (caller frees) when ok is
 * true; the daemon's negative code when ok is false (message copied into msg,
 * *doc still set so extra fields can be read); XC_EPROTO / XC_EVERSION when the
 * frame is not a reply (*doc NULL). */
int xc_proto_reply_decode(const void *buf, size_t len, xc_mp_doc_t **doc, char *msg,
                          size_t msg_len);

/* --------------------------------------------------------------- examples -- */
/* Appends the one-line text of one example map of an `examples` reply
 * (PROTOCOL.md 2.3): its window's pieces joined, the activating token (index
 * `at`) in [[ ]], a token without a piece as <id> (<?> for a nil id), control
 * characters escaped (\n, \r, \t, \xHH). XC_EINVAL without a tokens array. */
int xc_proto_example_render(xc_mp_node_t ex, xc_buf_t *out);
/* The same from arrays (for callers holding another tree): n window tokens,
 * ids[i] (-1: nil), pieces[i] of lens[i] bytes (pieces or pieces[i] NULL: none),
 * the token at index `at` marked. */
void xc_proto_render_window(xc_buf_t *out, size_t n, long at, const int64_t *ids, const char *const *pieces,
                            const size_t *lens);

/* ----------------------------------------------------------------- events -- */
#define XC_EVENT_STATS "stats"
#define XC_EVENT_CHECKPOINT "checkpoint"
#define XC_EVENT_ALERT "alert"

/* Opens an event body map {v, type: topic, name: instance, time: unix seconds}.
 * The topic frame itself is the bare topic string. Add fields, then close. */
void xc_proto_event_begin(xc_mpw_t *w, const char *topic, const char *instance, double unix_time);
/* Parses [topic][body]: copies the topic (XC_ETOOBIG if it does not fit) and
 * parses the body into *doc (caller frees). XC_EPROTO / XC_EVERSION. */
int xc_proto_event_decode(const void *topic, size_t topic_len, const void *body, size_t body_len,
                          char *topic_out, size_t topic_out_len, xc_mp_doc_t **doc,
                          char *why, size_t why_len);

#ifdef __cplusplus
}
#endif
#endif
