/* Remote access over the control socket (PROTOCOL.md 2.1, 2.2): the ops that
 * let a client on another host get what a local one reads from disk or shared
 * memory.
 *
 *   checkpoints  lists the checkpoint files in state_dir (on the loop thread:
 *                one readdir of a directory that holds a handful of files)
 *   fetch        one chunk of a checkpoint file, with its size and SHA-256.
 *                The file is read with pread on libuv's threadpool
 *                (uv_queue_work), never on the loop thread and never whole:
 *                at most XC_REMOTE_WORKERS chunks (1 MiB each) are in memory;
 *                further requests wait in a bounded FIFO. A file's SHA-256 is
 *                computed once (streamed through the same 1 MiB buffer) and
 *                cached by (name, inode, size, mtime): files are immutable once
 *                renamed into state_dir.
 *   table        per-latent columns from the loop's immutable latent snapshot
 *                (no lock; the caller decides when the snapshot is fresh, as for
 *                latent / top).
 *
 * The service owns the control socket; replies that are ready later (fetch)
 * come back through the reply callback, on the loop thread, with the opaque
 * tag (the routing envelope) the service passed in. */
#ifndef XC_REMOTE_H
#define XC_REMOTE_H

#include <stddef.h>
#include <uv.h>

#include "xc_proto.h"
#include "xc_trainer.h"

#define XC_REMOTE_WORKERS 4      /* fetch chunks read at once */
#define XC_REMOTE_QUEUE_MAX 1024 /* fetch requests waiting for a worker */

typedef struct xc_remote xc_remote_t;

/* body: a complete reply frame (success or error; is_error tells which). */
typedef void (*xc_remote_reply_fn)(void *ctx, const void *tag, const void *body, size_t len, int is_error);

/* Borrowed: loop (must outlive the object). state_dir is copied. tag_size:
 * bytes copied from each fetch's tag. NULL when out of memory. */
xc_remote_t *xc_remote_new(uv_loop_t *loop, const char *state_dir, size_t tag_size, xc_remote_reply_fn fn,
                           void *ctx);
/* Call after the loop has run to completion (every queued work item has
 * called back). */
void xc_remote_destroy(xc_remote_t **r);

/* "checkpoints": writes a complete reply (success or error) into out. */
void xc_remote_checkpoints(xc_remote_t *r, const xc_request_t *req, const void *raw, size_t raw_len,
                           xc_buf_t *out);
/* "fetch": checks the arguments and queues the read. 0: the reply will come
 * through the callback; else an XC_E* with why (the caller replies). raw is
 * the request frame (copied). */
int xc_remote_fetch(xc_remote_t *r, const xc_request_t *req, const void *raw, size_t raw_len, const void *tag,
                    char *why, size_t why_len);
/* Requests queued or being read. */
int xc_remote_busy(const xc_remote_t *r);

/* "table": argument check only (0 or XC_E* with why). */
int xc_remote_table_check(const xc_request_t *req, long dict_size, char *why, size_t why_len);
/* "table": the reply from the loop's latent snapshot (borrowed; NULL: none yet,
 * XC_EAGAIN). 0 with a complete success reply in out, or XC_E* with why. */
int xc_remote_table(const xc_snapshot_t *snap, long dict_size, const xc_request_t *req, xc_buf_t *out, char *why,
                    size_t why_len);

#endif
