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
#include "xc_examples.h"
#include "xc_mixbuf.h"
#include "xc_queue.h"
#include "xc_shard.h"
#include "xc_shm.h"
#include "xc_shmpub.h"

typedef struct xc_trainer xc_trainer_t;

typedef struct {
    long mix_tokens;          /* mixing buffer capacity, >= batch_size */
    const xc_mix_spec_t *mix; /* stream mixture (copied); NULL or n = 0: none. The queue must
                               * have xc_mix_lanes(mix) lanes */
    uint64_t seed;            /* for the draws */
    const char *state_dir;    /* checkpoints (copied) */
    const char *name;         /* instance name (copied) */
    const char *config_json;  /* stored in checkpoints (copied) */
    void (*notify)(void *ctx);/* called from the trainer thread when results are ready */
    void *notify_ctx;
    const char *shm_instance; /* publish shared memory /xcoderd.NAME; NULL = off */
    unsigned shm_mode;        /* permission bits of the object */
    const char *shm_owner;    /* recorded in the object as its owner (the run_dir) */
    char *why;                /* optional: why xc_trainer_new failed, when it can say */
    size_t why_len;
    double shm_interval;      /* seconds between shared-memory updates */
    xc_class_thresholds_t thresholds;
    int checkpoint_keep;      /* newest checkpoints of this run kept; 0 = all */
    long checkpoint_steps;    /* a checkpoint every N steps; 0 = off */
    xc_examples_config_t examples; /* store_tokens 0: 16 x mix_tokens, at least 65536 */
    const char *vocab_file;   /* the default vocabulary (xc_examples_load_vocab_file); NULL/"" none */
    xc_engine_t *full;        /* a latent-sharded job's rank 0 (xc_shard.h): the unsharded container that
                               * checkpoints are written from and loaded into (borrowed); NULL otherwise */
    xc_shard_t *shard;        /* with full: drives the other ranks (borrowed) */
    uint64_t max_tokens;      /* token budget of the model (across resumes): 0 = none; reached ->
                               * a final checkpoint ("budget") and no more steps */
    int normalize;            /* xc_norm_mode_t (xc_norm.h): off, global, neuron */
    long normalize_tokens;    /* tokens of the statistics pass; training waits for it */
    double target_rms;
    long exclude_positions_below; /* intake: tokens at positions < this are not trained; 0 = none */
    double outlier_norm_factor;   /* intake: norm > factor x batch median in either model; 0 = off */
} xc_trainer_opts_t;

typedef enum { XC_TR_STARTING = 0, XC_TR_RUNNING, XC_TR_PAUSED, XC_TR_STOPPING, XC_TR_STOPPED } xc_tr_state_t;

/* What the loop reads for status / stats events (a copy, taken under a lock:
 * a few hundred bytes, never per-latent data). */
typedef struct {
    xc_engine_metrics_t m;    /* of the last completed step */
    xc_tr_state_t state;
    int paused;
    double last_step_ms;
    uint64_t step_errors;
    int shm;                  /* shared memory is being published */
    uint32_t class_counts[8]; /* latents per XC_CLASS_*; [XC_COUNT_CHAT_SPECIFIC] chat-specific (last publish) */
    int scaling_running;      /* an exact Latent Scaling pass is under way (or asked for) */
    uint64_t scaling_done, scaling_target; /* its progress in tokens */
    long scaling_last_step;   /* the last completed pass: dictionary step (-1 none) */
    uint64_t scaling_last_tokens, scaling_passes;
    uint64_t scaling_cancelled; /* passes cancelled by request */
    int budget_reached;       /* max_tokens trained: training has stopped for good */
    /* per lane of the mixing buffer (one without a stream mixture) */
    int lanes;
    uint64_t lane_trained[XC_MIX_MAX];   /* tokens of the lane in training steps (this process) */
    long lane_buffered[XC_MIX_MAX];      /* tokens in the lane's part of the buffer */
    long lane_batch_last[XC_MIX_MAX];    /* tokens of the lane in the last step's batch */
    long lane_batch_min[XC_MIX_MAX], lane_batch_max[XC_MIX_MAX]; /* over this process's steps; -1 none */
    int mix_waiting;          /* the buffer waits for the lane below (its stream is behind), -1 none */
    xc_shard_report_t shard;  /* ranks, per-rank step time, communication (ranks = 1: one process) */
    /* activation normalisation (xc_norm.h) and intake exclusions */
    int norm_mode;            /* xc_norm_mode_t of the model */
    int norm_state;           /* 0 off, 1 statistics pass under way (training waits), 2 ready */
    uint64_t norm_tokens;     /* tokens seen by the pass */
    float norm_scale[2];      /* activation_global_scale a_base, a_chat (1 until ready, and in neuron mode) */
    int scaling_units;        /* Latent Scaling's betas and nus: 1 original units, 0 normalised (neuron mode) */
    uint64_t tokens_stats_only;       /* pass tokens beyond the mixing buffer: statistics only, not trained */
    uint64_t tokens_excluded_position;/* not trained: position < exclude_positions_below */
    uint64_t tokens_excluded_outlier; /* not trained: norm > outlier_norm_factor x batch median */
} xc_trainer_status_t;

/* Result of the latest checkpoint. */
typedef struct {
    uint64_t gen;             /* request generation it satisfied */
    int rc;                   /* 0 or XC_E* */
    char path[1024];          /* the model file */
    char train_path[1024];    /* its training state */
    char why[512];
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
/* 1 once the token budget (opts.max_tokens) is reached: intake should stop. */
int xc_trainer_budget_reached(xc_trainer_t *t);
/* Before xc_trainer_start: continue from a checkpoint (daemon/xc_ckpt.h,
 * xc_ckpt_resume): path (either file of a pair), or NULL for the newest valid
 * pair of this name in state_dir; fresh = 1 loads nothing. 0 when training can
 * start (resumed, or a new model when there is nothing to resume); otherwise the
 * refusal (XC_ESHAPE: a different model; XC_ECORRUPT/XC_EIO/XC_EVERSION for an
 * explicit path), why says which and what to do. */
int xc_trainer_resume(xc_trainer_t *t, const char *path, int fresh, char *why, size_t why_len);
/* Reloadable: keep the newest `keep` checkpoints (0 = all), one every `steps` steps (0 = off). */
void xc_trainer_set_checkpoint_policy(xc_trainer_t *t, int keep, long steps);
/* Asks for a checkpoint; returns its generation (answered when a result with
 * gen >= it is reported). reason: "request", "interval", "steps" (static string).
 * Checkpoints are copied between two steps and written on a writer thread;
 * requests made while one is written are served together by the next. */
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
#define XC_TR_EV_SCALING 8
int xc_trainer_poll(xc_trainer_t *t, xc_ckpt_result_t *ck, uint64_t *snapshot_gen);

/* The latent snapshot: an immutable copy of every latent's record, which the
 * trainer hands to the loop by pointer swap so that the loop reads, sorts and
 * encodes it without any lock and the trainer never waits for the loop.
 *
 * Ownership: the trainer fills a snapshot on its thread, then parks it as
 * "ready" (under its mutex) and notifies the loop (XC_TR_EV_SNAPSHOT). The loop
 * takes it with xc_trainer_snapshot_swap, which in the same O(1) step gives
 * back the loop's previous one as a "spare" for the trainer to refill. So at
 * most three are alive: the loop's, the ready (or being filled) one, and the
 * spare; a ready one the loop has not taken is refilled in place. */
/* (xc_snapshot_t: daemon/xc_shmpub.h) */

/* Loop side: the newest ready snapshot, taking ownership of it, and gives
 * `mine` (the loop's previous one, or NULL) back to the trainer. Returns mine
 * unchanged when no newer one is ready. Free the last with xc_snapshot_free. */
xc_snapshot_t *xc_trainer_snapshot_swap(xc_trainer_t *t, xc_snapshot_t *mine);
void xc_snapshot_free(xc_snapshot_t **snap);
/* Snapshots allocated and not yet freed in this process (for tests). */
long xc_snapshot_alive(void);
/* Starts an exact Latent Scaling pass over the next `tokens` trained tokens
 * (dictionary frozen at the next step). XC_ESTATE if one is under way. */
int xc_trainer_request_scaling(xc_trainer_t *t, uint64_t tokens);
/* Cancels the exact pass under way or asked for: 0, or XC_ENOTFOUND when there
 * is none. The trainer drops it before its next step. */
int xc_trainer_cancel_scaling(xc_trainer_t *t);

/* The live examples (owned by the trainer; its queries and requests are
 * thread-safe, see xc_examples.h). */
xc_examples_t *xc_trainer_examples(xc_trainer_t *t);

#endif
