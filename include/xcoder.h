/* libxcoder: the C client library of xcoderd.
 *
 * A client (xc_client_t, opaque) talks to one daemon over three ZeroMQ
 * endpoints (ipc:// or tcp://): ingest (push activation batches, get an ack or
 * a nack per batch), control (request/reply) and events (publish/subscribe).
 * The wire format is proto/PROTOCOL.md; this library is one implementation.
 *
 * Conventions
 *  - Every action returns 0 or a negative XC_E* code (include/xc_error.h).
 *    After a failure xc_client_last_error() says what went wrong and what to do,
 *    including the daemon's own reason for a nack or an error reply.
 *  - Objects are created with *_new() (NULL on failure) and destroyed with
 *    *_destroy(&p), which frees and sets p to NULL.
 *  - Decoded replies and events are xc_client_value_t trees, owned by the
 *    caller, freed with xc_client_value_free(&v). Pointers into a tree (strings,
 *    child values) stay valid until that tree is freed.
 *  - A client is not thread-safe: use one per thread (they are cheap).
 */
#ifndef XCODER_H
#define XCODER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "xc_error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ values */

typedef enum {
    XC_VAL_NIL = 0,
    XC_VAL_BOOL,
    XC_VAL_INT,   /* u.i: every integer that fits int64 */
    XC_VAL_UINT,  /* u.u: integers above INT64_MAX */
    XC_VAL_FLOAT, /* u.f */
    XC_VAL_STR,   /* u.s: NUL-terminated copy, len bytes (may hold NULs) */
    XC_VAL_BIN,   /* u.s: raw bytes (NUL-terminated for convenience) */
    XC_VAL_ARRAY, /* u.a: n items */
    XC_VAL_MAP    /* u.m: n pairs, kv[2i] key, kv[2i+1] value, in wire order */
} xc_client_value_type_t;

typedef struct xc_client_value xc_client_value_t;
struct xc_client_value {
    xc_client_value_type_t type;
    union {
        int b;
        int64_t i;
        uint64_t u;
        double f;
        struct { const char *ptr; size_t len; } s;
        struct { const xc_client_value_t *items; size_t n; } a;
        struct { const xc_client_value_t *kv; size_t n; } m;
    } u;
};

/* Decodes one MessagePack object from buf (borrowed) into a new tree, owned by
 * the caller. NULL on failure with *err (may be NULL) = XC_EPROTO / XC_ENOMEM. */
xc_client_value_t *xc_client_value_parse(const void *buf, size_t len, int *err);
/* Frees a tree and sets *v to NULL; NULL-safe. */
void xc_client_value_free(xc_client_value_t **v);

/* Lookups; all return borrowed pointers into v, or NULL when absent. */
const xc_client_value_t *xc_client_value_get(const xc_client_value_t *map, const char *key);
const xc_client_value_t *xc_client_value_at(const xc_client_value_t *array, size_t i);
/* Dotted path: "config.d", "latents.0.delta_norm" (numbers index arrays). */
const xc_client_value_t *xc_client_value_path(const xc_client_value_t *v, const char *path);
/* Any number (or bool, nil -> NaN) as double: 0, XC_ENOTFOUND (v NULL), XC_EINVAL. */
int xc_client_value_num(const xc_client_value_t *v, double *out);
/* Shortcuts: the value at path as a number / string, or dflt. */
double xc_client_value_getnum(const xc_client_value_t *v, const char *path, double dflt);
const char *xc_client_value_getstr(const xc_client_value_t *v, const char *path, const char *dflt);

/* JSON rendering (RFC 8259): NaN/Inf -> null, bin -> base64 string, invalid
 * UTF-8 -> U+FFFD, non-string map keys as strings ("5"; a map or array key as
 * "<map>" / "<array>"), linear in the value's size, capped at 32 levels and
 * 256 MiB. pretty: indent by 2. Returns a malloc'd string the caller frees,
 * NULL when out of memory or over a cap. */
char *xc_client_value_to_json(const xc_client_value_t *v, int pretty);
/* Writes the JSON and a newline to f: 0, XC_ENOMEM, XC_ETOOBIG, XC_EPROTO
 * (too deep) or XC_EIO. */
int xc_client_value_print_json(FILE *f, const xc_client_value_t *v, int pretty);

/* -------------------------------------------------------------------- .npy */

typedef enum {
    XC_CLIENT_DTYPE_F32 = 0,
    XC_CLIENT_DTYPE_F16 = 1,
    XC_CLIENT_DTYPE_BF16 = 2
} xc_client_dtype_t;

#define XC_CLIENT_NPY_MAX_DIMS 8

/* An opened .npy file of activations [N, 2, d] (float32 or float16). */
typedef struct {
    xc_client_dtype_t dtype;
    size_t itemsize;          /* 4 or 2 */
    int swap;                 /* stored big-endian: bytes must be swapped */
    int ndim;
    long shape[XC_CLIENT_NPY_MAX_DIMS];
    long n_tokens, d;         /* shape[0], shape[2] */
    size_t data_offset;       /* header size */
    size_t data_bytes;        /* n_tokens * 2 * d * itemsize */
    const void *data;         /* read-only view of the data (xc_client_npy_open) */
    /* private */
    int fd;
    void *map;
    size_t map_len;
    char shape_str[96];
} xc_client_npy_t;

/* Parses a .npy header from buf (borrowed; at least the header bytes). Checks
 * magic, version, dtype (float32/float16, either byte order), C order and the
 * shape [N, 2, d]. 0 or XC_ECORRUPT / XC_EDTYPE / XC_ESHAPE with a message in
 * why (may be NULL). Does not set data. */
int xc_client_npy_parse_header(const void *buf, size_t len, xc_client_npy_t *out, char *why,
                               size_t why_len);
/* Opens and maps path read-only, parses the header and checks the file size
 * matches the shape. Close with xc_client_npy_close. 0 or XC_EIO / XC_ECORRUPT /
 * XC_EDTYPE / XC_ESHAPE / XC_ELENGTH with a message naming the file in why. */
int xc_client_npy_open(const char *path, xc_client_npy_t *out, char *why, size_t why_len);
void xc_client_npy_close(xc_client_npy_t *n);
/* "[N, 2, d]" for messages; storage inside *n. */
const char *xc_client_npy_shape_str(const xc_client_npy_t *n);
/* Writes x (n, 2, d) float32 (borrowed) to path as .npy. 0 or XC_EIO/XC_EINVAL. */
int xc_client_npy_write_f32(const char *path, const float *x, long n, long d, char *why,
                            size_t why_len);

/* ------------------------------------------------------------------- JSON */

/* Parses JSON text s[0, len) (borrowed) into a new tree owned by the caller.
 * Integers that fit int64/uint64 become INT/UINT, other numbers FLOAT. Nesting
 * is limited to 16 levels. NULL on failure with *err (may be NULL) = XC_EPROTO
 * (message with the byte offset in why, may be NULL) / XC_ENOMEM. */
xc_client_value_t *xc_client_json_parse(const char *s, size_t len, int *err, char *why, size_t why_len);

/* ------------------------------------------------------------ safetensors */

typedef struct xc_client_st xc_client_st_t;
typedef struct {
    char dtype[8];          /* "F32", "F16", "BF16", "F64", "I64", ... */
    int ndim;
    long shape[XC_CLIENT_NPY_MAX_DIMS];
    size_t count;           /* elements */
    size_t bytes;
    const void *data;       /* borrowed view into the mapped file; may be unaligned */
} xc_client_tensor_t;

/* Maps a .safetensors file read-only and parses its header. NULL on failure
 * with *err = XC_EIO / XC_ECORRUPT / XC_ENOMEM and a message in why. The caller
 * owns the handle: xc_client_st_close(&st). */
xc_client_st_t *xc_client_st_open(const char *path, int *err, char *why, size_t why_len);
void xc_client_st_close(xc_client_st_t **st);
/* The parsed header (tensor entries and "__metadata__"), borrowed. */
const xc_client_value_t *xc_client_st_header(const xc_client_st_t *st);
/* Looks a tensor up and checks its byte range: 0, XC_ENOTFOUND, XC_ECORRUPT,
 * XC_EDTYPE (message in why). out->data is valid until close. */
int xc_client_st_tensor(const xc_client_st_t *st, const char *name, xc_client_tensor_t *out, char *why,
                        size_t why_len);
/* A float tensor (F32/F16/BF16/F64) as a new float32 array the caller frees;
 * info (may be NULL) receives its description. NULL on failure with *err. */
float *xc_client_st_read_f32(const xc_client_st_t *st, const char *name, xc_client_tensor_t *info, int *err,
                             char *why, size_t why_len);

/* ------------------------------------------------------------ checkpoints */
/* xcoderd's checkpoints (proto/CHECKPOINT.md): a model file NAME-STEP.safetensors
 * (the reference crosscoder state dict) and its training state
 * NAME-STEP.resume.safetensors, each with a CRC-32 of its content in the
 * metadata. The loader maps a file, checks its whole layout at open (header,
 * every tensor's dtype, shape and byte range, nothing missing or left over),
 * and checks the checksum and the pairing on request. */
typedef struct xc_client_ckpt xc_client_ckpt_t;
typedef enum {
    XC_CLIENT_CKPT_OTHER = 0,  /* a safetensors file not written by xcoderd */
    XC_CLIENT_CKPT_MODEL = 1,  /* NAME-STEP.safetensors (or an exported model) */
    XC_CLIENT_CKPT_TRAIN = 2   /* NAME-STEP.resume.safetensors */
} xc_client_ckpt_kind_t;

/* NULL on failure with *err (may be NULL) = XC_EIO / XC_ECORRUPT / XC_ENOMEM and
 * the reason in why. The caller owns the handle: xc_client_ckpt_close(&c). */
xc_client_ckpt_t *xc_client_ckpt_open(const char *path, int *err, char *why, size_t why_len);
void xc_client_ckpt_close(xc_client_ckpt_t **c);
xc_client_ckpt_kind_t xc_client_ckpt_kind(const xc_client_ckpt_t *c);
const char *xc_client_ckpt_path(const xc_client_ckpt_t *c);
size_t xc_client_ckpt_size(const xc_client_ckpt_t *c);        /* file bytes */
size_t xc_client_ckpt_header_size(const xc_client_ckpt_t *c); /* JSON header bytes */
/* The content checksum: 0 valid, XC_ENOTFOUND none (a foreign file),
 * XC_ECORRUPT mismatch (why gives both values). */
int xc_client_ckpt_verify(const xc_client_ckpt_t *c, char *why, size_t why_len);
/* Do a model file and a training-state file form one checkpoint (same
 * checkpoint id, run and step; the model names the training file's checksum)?
 * Metadata only: verify each file's checksum too. 0 or XC_ECORRUPT. */
int xc_client_ckpt_verify_pair(const xc_client_ckpt_t *model, const xc_client_ckpt_t *train, char *why,
                               size_t why_len);
/* The other file of path's pair (NAME-STEP.safetensors <-> NAME-STEP.resume.safetensors).
 * 0 or XC_EINVAL (not a .safetensors name) / XC_ETOOBIG. */
int xc_client_ckpt_partner(const char *path, char *out, size_t out_len);
/* __metadata__ (values are strings; borrowed until close). */
const char *xc_client_ckpt_meta(const xc_client_ckpt_t *c, const char *key); /* NULL if absent */
int xc_client_ckpt_meta_count(const xc_client_ckpt_t *c);
const char *xc_client_ckpt_meta_key(const xc_client_ckpt_t *c, int i);
const char *xc_client_ckpt_meta_val(const xc_client_ckpt_t *c, int i);
/* Tensors in file order; out->data views the mapping (valid until close). */
int xc_client_ckpt_count(const xc_client_ckpt_t *c);
int xc_client_ckpt_tensor_at(const xc_client_ckpt_t *c, int i, const char **name, xc_client_tensor_t *out);
int xc_client_ckpt_tensor(const xc_client_ckpt_t *c, const char *name, xc_client_tensor_t *out, char *why,
                          size_t why_len); /* 0 or XC_ENOTFOUND */

/* A crosscoder's parameters in the reference layout (index 0 = base, 1 = chat),
 * float32 copies owned by the struct (xc_client_model_free). */
typedef struct {
    char model[16];            /* "batchtopk" | "l1" */
    int d, dict_size, k;       /* k: 0 for L1 */
    float threshold;           /* BatchTopK theta (-1 until estimated); 0 for L1; DECOUPLED: the base model's */
    float threshold_m[2];      /* BatchTopK theta per model (DECOUPLED: the threshold tensor [2]; else both theta) */
    int code_norm_id;          /* the reference's CodeNormalization value: 1 CROSSCODER (s_j = the sum of the two
                                * decoder norms), 2 SAE (norm of the concatenated rows), 3 MIXED
                                * (alpha_sae SAE + alpha_cc CROSSCODER), 4 NONE (s_j = 1), 5 DECOUPLED */
    double alpha_sae, alpha_cc; /* MIXED's weights (reference defaults 1.0, 0.1 when the file does not say) */
    long step;                 /* -1 if the file does not say */
    unsigned long long tokens;
    float *w_enc;              /* [2, d, F] */
    float *b_enc;              /* [F] */
    float *w_dec;              /* [2, F, d] */
    float *b_dec;              /* [2, d] */
} xc_client_model_t;
/* From a model file (F32/F16/BF16/F64 tensors) or a training-state file (the
 * engine's layout, transposed here). 0, XC_ECORRUPT (tensors missing or of
 * inconsistent shapes), XC_EDTYPE, XC_ENOMEM; why says which. */
int xc_client_ckpt_model(const xc_client_ckpt_t *c, xc_client_model_t *out, char *why, size_t why_len);
void xc_client_model_free(xc_client_model_t *m);

/* ------------------------------------------------------------------ client */

typedef struct xc_client xc_client_t;

/* Where the daemon listens and how the client behaves. Strings are borrowed
 * during xc_client_new only (the client copies them). */
typedef struct {
    const char *run_dir;   /* directory of the daemon's ipc sockets; NULL = derived
                              like the daemon's: $XDG_RUNTIME_DIR/xcoderd-NAME, else
                              /tmp/xcoderd-NAME */
    const char *name;      /* instance name (the daemon's `name`); NULL = "default" */
    const char *ingest;    /* endpoint URIs; NULL = ipc://RUN_DIR/ingest.sock, ... */
    const char *control;
    const char *events;
    const char *producer;  /* producer id sent with batches (<= 64 bytes); NULL = "" */
    int window;            /* batches in flight before push waits (default 8) */
    int timeout_ms;        /* push window wait / request reply / flush; < 0 = forever
                              (default 30000) */
    /* CurveZMQ on tcp:// endpoints (a daemon with curve_secret_key): the server's
     * public key (Z85 text, or the path of its .pub file) and this client's key
     * file (BASE.key from `xcoder keygen BASE`, mode 0600). NULL = from
     * $XCODER_SERVER_KEY / $XCODER_CLIENT_KEY; no server key = plain tcp.
     * ipc:// endpoints never use them (file permissions protect them). */
    const char *server_key;
    const char *client_key;
} xc_client_options_t;

/* Defaults: run_dir from $XCODER_RUN_DIR when set (else NULL: derived from the
 * name as the daemon does), name NULL, window 8, timeout 30 s. */
void xc_client_options_default(xc_client_options_t *o);
/* The run_dir the daemon derives for instance `name` (NULL = "default") when
 * none is configured; written to out. When no daemon listens there but one run
 * by systemd does (/run/xcoderd for "default", /run/xcoderd-NAME otherwise), that
 * directory instead. 0 or XC_EINVAL (does not fit). */
int xc_client_default_run_dir(const char *name, char *out, size_t out_len);
/* "/run", or $XCODER_SYSTEM_RUN_ROOT when set (tests). */
const char *xc_client_system_run_root(void);

/* Creates a client; sockets connect lazily (ingest on the first push, control
 * on the first request, events on the first subscribe), and ZeroMQ reconnects
 * by itself, so this succeeds whether or not the daemon is up. NULL on failure
 * with *err (may be NULL) = XC_EINVAL (bad option) / XC_ENOMEM / XC_ESYS. The
 * caller owns the client: xc_client_destroy(&c). */
xc_client_t *xc_client_new(const xc_client_options_t *o, int *err);
/* Why the last xc_client_new on this thread failed ("" if it did not). */
const char *xc_client_new_error(void);
/* Closes the sockets (batches not yet acked are dropped: xc_client_flush
 * first) and frees the client; sets *c = NULL. NULL-safe. */
void xc_client_destroy(xc_client_t **c);

/* The last failure, as a sentence to show the user ("" if none). Borrowed,
 * valid until the next call on c. */
const char *xc_client_last_error(const xc_client_t *c);
/* Endpoint in use: which = "ingest" | "control" | "events" (NULL otherwise). */
const char *xc_client_endpoint(const xc_client_t *c, const char *which);
/* Changes the timeout of later calls (ms, < 0 = forever). */
void xc_client_set_timeout(xc_client_t *c, int timeout_ms);
/* When *flag becomes non-zero (e.g. from a signal handler), blocking calls
 * return XC_EAGAIN ("interrupted") at their next wake-up. flag is borrowed and
 * must outlive the client; NULL disables. */
void xc_client_set_cancel_flag(xc_client_t *c, const volatile int *flag);

/* ----- ingest */

/* Sends one batch: data (borrowed; copied before return) holds n_tokens x 2 x d
 * little-endian values of dtype (per token: base model's d values, then chat
 * model's). When `window` batches are already in flight it first waits for
 * replies (backpressure: the daemon replies only once it has room).
 * Returns 0 when the batch was sent and no refusal has arrived so far.
 * Returns the daemon's code (XC_ESHAPE, XC_ENONFINITE, ...) when a reply to an
 * earlier batch, or this one, is a nack: then this batch was NOT sent, and
 * xc_client_last_error() / xc_client_last_nack() give the daemon's reason.
 * XC_ETIMEDOUT when no reply came within the timeout (daemon down or stuck);
 * XC_EINVAL for bad arguments (nothing sent). */
int xc_client_push(xc_client_t *c, const void *data, xc_client_dtype_t dtype, long n_tokens,
                   int d);
/* xc_client_push with each token's context, for the daemon's examples
 * (PROTOCOL.md 1.1, 2.3): token_ids (n u32, or NULL), positions (n x (doc id,
 * position) u32 pairs, or NULL), stream (a tag such as "web" or "chat", at
 * most 31 bytes of [A-Za-z0-9._:/-]; NULL or "" for none). All borrowed. */
int xc_client_push_ctx(xc_client_t *c, const void *data, xc_client_dtype_t dtype, long n_tokens, int d,
                       const uint32_t *token_ids, const uint32_t *positions, const char *stream);
/* Registers the text of token ids first .. first + n - 1 of a stream (PROTOCOL.md
 * 1.5; "" = the default vocabulary): pieces[i] NUL-terminated UTF-8 (NULL: none).
 * Waits for batches in flight first, then for the vocabulary's acks. 0 or the
 * daemon's code (XC_ETOOBIG: its examples_vocab_bytes is too small). */
int xc_client_send_vocab(xc_client_t *c, const char *stream, uint32_t first, uint32_t n, const char *const *pieces);
/* Waits until every batch in flight is acked: 0, the first nack's code, or
 * XC_ETIMEDOUT. */
int xc_client_flush(xc_client_t *c);

typedef struct {
    uint64_t batches_sent, batches_acked, batches_nacked;
    uint64_t tokens_sent, tokens_acked;
    int in_flight;
    int64_t credit;           /* last advisory credit from the daemon, -1 none */
} xc_client_push_stats_t;
void xc_client_push_stats(const xc_client_t *c, xc_client_push_stats_t *out);

/* The last nack received: seq of the refused batch (the k-th batch sent by this
 * client has seq k-1), its XC_E* code and the daemon's reason. 0, or
 * XC_ENOTFOUND if there was none. reason is borrowed (valid until next push). */
int xc_client_last_nack(const xc_client_t *c, uint64_t *seq, int *code, const char **reason);

/* ----- control: every helper waits for the reply (up to the timeout). On
 * success *reply (if reply is not NULL) receives the whole reply map, owned by
 * the caller (xc_client_value_free). On an error reply the daemon's code is
 * returned and last_error holds its message; *reply is then NULL. */

typedef enum { XC_ARG_INT, XC_ARG_DOUBLE, XC_ARG_STR, XC_ARG_BOOL } xc_client_arg_type_t;
typedef struct {
    const char *key;
    xc_client_arg_type_t type;
    int64_t i;       /* INT, BOOL */
    double f;        /* DOUBLE */
    const char *s;   /* STR (borrowed) */
} xc_client_arg_t;

/* Any op with arguments (nargs may be 0). */
int xc_client_request(xc_client_t *c, const char *op, const xc_client_arg_t *args, size_t nargs,
                      xc_client_value_t **reply);
int xc_client_ping(xc_client_t *c, xc_client_value_t **reply);
int xc_client_status(xc_client_t *c, xc_client_value_t **reply);
int xc_client_latent(xc_client_t *c, long j, xc_client_value_t **reply);
/* by: a per-latent field (PROTOCOL.md 3.3); n top latents; ascending: smallest
 * first; alive_only: skip dead latents. Reply field "latents": array of maps. */
int xc_client_top(xc_client_t *c, const char *by, long n, int ascending, int alive_only,
                  xc_client_value_t **reply);
/* Replies once the checkpoint is written: fields path, step, bytes. */
int xc_client_checkpoint(xc_client_t *c, xc_client_value_t **reply);
int xc_client_pause(xc_client_t *c, xc_client_value_t **reply);
int xc_client_resume(xc_client_t *c, xc_client_value_t **reply);
int xc_client_shutdown(xc_client_t *c, xc_client_value_t **reply);
/* key NULL: every key. Reply field "config": map key -> value. */
int xc_client_config(xc_client_t *c, const char *key, xc_client_value_t **reply);

/* ----- events */

/* Subscribes to a topic prefix ("stats", "checkpoint", "alert"; "" or NULL =
 * all). May be called several times. */
int xc_client_subscribe(xc_client_t *c, const char *topic);
/* Waits up to timeout_ms (< 0 forever, 0 poll) for the next event. On success
 * *event (caller frees) holds the body map; its "type" is the topic.
 * XC_ETIMEDOUT when none came; XC_EPROTO for a malformed event (skipped). */
int xc_client_next_event(xc_client_t *c, int timeout_ms, xc_client_value_t **event);

#ifdef __cplusplus
}
#endif
#endif
