/* The trainer thread: the only thread that touches the engine after start.
 * It moves accepted batches from the queue into the token mixing buffer,
 * draws training batches from it at random (PROTOCOL.md 1.4), runs
 * xc_engine_train_step, and between steps serves the loop's requests
 * (pause, checkpoint, latent-statistics snapshot, stop). Results go back via
 * the notify callback (the service passes one that calls uv_async_send); the
 * loop then reads them with xc_trainer_poll. The trainer never touches a socket. */
#ifndef XC_TRAINER_H
#define XC_TRAINER_H

#include <stdint.h>

#include "xc_engine.h"
#include "xc_queue.h"

typedef struct xc_trainer xc_trainer_t;

typedef struct {
    long mix_tokens;          /* mixing buffer capacity, >= batch_size */
    uint64_t seed;            /* for the draws */
    const char *state_dir;    /* checkpoints (copied) */
    const char *name;         /* instance name (copied) */
    const char *config_json;  /* stored in checkpoints (copied) */
    void (*notify)(void *ctx);/* called from the trainer thread when results are ready */
    void *notify_ctx;
} xc_trainer_opts_t;

typedef enum { XC_TR_STARTING = 0, XC_TR_RUNNING, XC_TR_PAUSED, XC_TR_STOPPING, XC_TR_STOPPED } xc_tr_state_t;

/* What the loop reads for status / stats events (a copy, taken under a lock). */
typedef struct {
    xc_engine_metrics_t m;    /* of the last completed step */
    xc_tr_state_t state;
    int paused;
    double last_step_ms;
    uint64_t step_errors;
} xc_trainer_status_t;

/* Result of the latest checkpoint. */
typedef struct {
    uint64_t gen;             /* request generation it satisfied */
    int rc;                   /* 0 or XC_E* */
    char path[1024];
    char why[256];
    char reason[16];
    long step;
    uint64_t bytes;
} xc_ckpt_result_t;

/* Borrowed: e (the trainer uses it exclusively once started, until joined), q.
 * NULL on failure with *err set. */
xc_trainer_t *xc_trainer_new(xc_engine_t *e, xc_queue_t *q, const xc_trainer_opts_t *o, int *err);
int xc_trainer_start(xc_trainer_t *t);
/* Frees the trainer; the thread must have been joined (xc_trainer_join). */
void xc_trainer_destroy(xc_trainer_t **t);

void xc_trainer_set_paused(xc_trainer_t *t, int paused);
/* Asks for a checkpoint; returns its generation (answered when a result with
 * gen >= it is reported). reason: "request", "interval" (static string). */
uint64_t xc_trainer_request_checkpoint(xc_trainer_t *t, const char *reason);
/* Asks for a fresh latent-statistics snapshot; returns its generation. */
uint64_t xc_trainer_request_snapshot(xc_trainer_t *t);
/* Stop: finish the current step, write the final checkpoint ("shutdown"), exit. */
void xc_trainer_stop(xc_trainer_t *t);
void xc_trainer_join(xc_trainer_t *t);

void xc_trainer_status(xc_trainer_t *t, xc_trainer_status_t *out);

/* Loop side: collects results since the last poll. Returns a bit set of
 * XC_TR_EV_*; fills *ck when a checkpoint finished. */
#define XC_TR_EV_CKPT 1
#define XC_TR_EV_SNAPSHOT 2
#define XC_TR_EV_STOPPED 4
int xc_trainer_poll(xc_trainer_t *t, xc_ckpt_result_t *ck, uint64_t *snapshot_gen);

/* The snapshot (dict_size entries): lock, read, unlock. step: when taken. */
const xc_latent_stats_t *xc_trainer_snapshot_lock(xc_trainer_t *t, long *step, uint64_t *gen);
void xc_trainer_snapshot_unlock(xc_trainer_t *t);

#endif
