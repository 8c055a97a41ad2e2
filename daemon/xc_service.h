/* The xcoderd service: a libuv loop thread that owns every ZeroMQ socket
 * (ingest ROUTER, control ROUTER, events PUB), the timers and the signals, in
 * front of a trainer thread (xc_trainer.h); they meet at the bounded queue
 * (xc_queue.h). The loop validates and converts incoming batches (O(bytes),
 * needed to ack or nack them) but never runs model maths; the trainer never
 * touches a socket. Wire format: proto/PROTOCOL.md. */
#ifndef XC_SERVICE_H
#define XC_SERVICE_H

#include "xc_coll.h"
#include "xc_config.h"

typedef struct xc_svc xc_svc_t;

/* Creates the engine, queue, trainer, sockets (bound) and loop handles.
 * argc/argv are kept (borrowed; they must outlive the service) so that SIGHUP
 * can re-run the configuration load. NULL on failure, with *err and why set. */
xc_svc_t *xc_svc_new(const xc_cfg_t *cfg, int argc, char **argv, int *err, char *why,
                     size_t why_len);
/* Runs until shutdown (SIGTERM, SIGINT or the shutdown op): stops intake,
 * lets the trainer finish its step and write the final checkpoint. Returns 0
 * when that checkpoint was written, else a negative XC_E*. */
/* As xc_svc_new, as rank 0 of a latent-sharded job over coll (xc_shard.h;
 * borrowed, outlives the service); coll NULL or of size 1: one process. */
xc_svc_t *xc_svc_new_sharded(const xc_cfg_t *cfg, xc_coll_t *coll, int argc, char **argv, int *err, char *why,
                             size_t why_len);
int xc_svc_run(xc_svc_t *s);
void xc_svc_destroy(xc_svc_t **s);

/* Opens (or reopens, for log rotation) path as stderr. "" keeps stderr. */
int xc_svc_open_log(const char *path, char *why, size_t why_len);

#endif
