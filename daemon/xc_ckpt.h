/* Checkpoints (proto/CHECKPOINT.md): a checkpoint is a PAIR of safetensors files
 * in the state directory,
 *   NAME-STEP.safetensors          the model: exactly the reference
 *                                  BatchTopKCrossCoder / CrossCoder state dict
 *                                  (dictionary_learning), loadable with strict=True
 *   NAME-STEP.resume.safetensors   the training state: every engine state view
 *                                  (parameters in the engine layout, Adam moments,
 *                                  counters, statistics, Latent Scaling sums,
 *                                  scalars, RNG) plus the trainer's extras
 * (STEP zero-padded to 9 digits). Each file carries a CRC-32 of its content in
 * its metadata; the model file names the training file's checksum and both
 * carry the same checkpoint_id, so a pair is verified to belong together. The
 * training file is written first, then the model file, each atomically (temp
 * file, fsync, rename, fsync of the directory): a model file appears only once
 * its pair is complete.
 *
 * The file formats live in format/: the safetensors reader and writer
 * (xc_stfile.h), the pair layout and the reference model tensors
 * (xc_ckptlayout.h), the atomic write (xc_afile.h). This module is the
 * daemon's use of them:
 *   xc_ckpt_writer_*   captures an engine's state between two steps (a memcpy)
 *                  and writes the pair on its own thread; keeps the newest K
 *   xc_ckpt_load_pair / xc_ckpt_resume  verify a pair completely (sizes, header,
 *                  dtype and shape of every tensor against the engine, checksums,
 *                  pairing) and only then copy it into the engine. */
#ifndef XC_CKPT_H
#define XC_CKPT_H

#include <stddef.h>
#include <stdint.h>

#include "xc_afile.h" /* xc_mkdirs, the atomic write */
#include "xc_ckptlayout.h"
#include "xc_engine.h"

/* "batchtopk" | "l1" */
const char *xc_ckpt_model_name(xc_model_kind_t k);

/* ------------------------------------------------------------ the writer -- */
typedef struct {
    int rc;                    /* 0 or XC_E* */
    uint64_t gen;              /* the caller's request generation it satisfies */
    char path[1024];           /* model file */
    char train_path[1024];     /* training-state file */
    char why[512];
    char reason[16];
    long step;
    uint64_t tokens;
    uint64_t bytes;            /* the model file */
    uint64_t train_bytes;      /* the training-state file */
    double capture_ms;         /* the copy taken on the training thread */
    double write_ms;           /* serialising and writing (writer thread) */
    int reused;                /* same step as the previous checkpoint: nothing new written */
} xc_ckpt_info_t;

typedef struct {
    const char *state_dir;     /* created if missing (copied) */
    const char *name;          /* instance name (copied) */
    const char *config_json;   /* effective config, stored in both files (copied) */
    int keep;                  /* newest pairs of this run kept; 0 = all */
    /* Called on the writer thread when an asynchronous write finished. */
    void (*done)(void *ctx, const xc_ckpt_info_t *r);
    void *done_ctx;
} xc_ckpt_writer_opts_t;

typedef struct xc_ckpt_writer xc_ckpt_writer_t;

/* NULL on failure (*err). Starts the writer thread. Removes temp files that
 * dead writers of this NAME left in state_dir. The environment variable
 * XC_CKPT_FAULT_AFTER=N makes every pair write stop after N bytes (counted over
 * the training file, then the model file) as if the process died: for tests. */
xc_ckpt_writer_t *xc_ckpt_writer_new(const xc_ckpt_writer_opts_t *o, int *err);
/* Waits for a write in flight, stops the thread, frees. */
void xc_ckpt_writer_destroy(xc_ckpt_writer_t **w);
void xc_ckpt_writer_set_keep(xc_ckpt_writer_t *w, int keep);
/* Test hook, as XC_CKPT_FAULT_AFTER (n < 0: off). */
void xc_ckpt_writer_set_fault(xc_ckpt_writer_t *w, long long n);
/* Continue a run: its id, the serial to count on from, and the pair just
 * loaded (a checkpoint at the same step is then not written again). */
void xc_ckpt_writer_continue(xc_ckpt_writer_t *w, const char *run_id, uint64_t next_serial, long step,
                             const char *path, const char *train_path);
const char *xc_ckpt_writer_run_id(const xc_ckpt_writer_t *w);

/* Checkpoints e, which the calling thread owns, between two steps. extras:
 * further state saved in the training file under their names (e.g. the
 * trainer's RNG); borrowed for the call.
 * sync = 0: copies the state (the only time spent on this thread) and returns
 *   0; the writer thread writes the pair and calls done(). XC_EAGAIN, with
 *   nothing copied, while a previous write is still in flight, and the first
 *   time, while the writer thread allocates (and faults in) the copy's memory:
 *   call again after the next step. XC_ENOMEM (out filled) if it could not.
 * sync = 1: waits for a write in flight, then writes from the live state on
 *   this thread (no copy) and fills *out; returns its rc.
 * When nothing changed since the last pair (same step), the pair is reused:
 * rc 0, out->reused = 1. */
int xc_ckpt_writer_submit(xc_ckpt_writer_t *w, xc_engine_t *e, const xc_state_view_t *extras, int n_extras,
                          const char *reason, uint64_t gen, int sync, xc_ckpt_info_t *out);

/* 1 while a write (or the copy's allocation) is in flight: an asynchronous
 * submit would answer XC_EAGAIN. Lets a caller skip costly work (a sharded
 * job's gather) that such a submit would waste. */
int xc_ckpt_writer_busy(xc_ckpt_writer_t *w);

/* Has the writer thread allocate and fault in the memory of the copy now (in
 * the background), so the first asynchronous checkpoint need not wait for it.
 * The copy is one training state (parameters, Adam moments, statistics: about
 * 3 x the parameters) and is kept for later checkpoints. */
void xc_ckpt_writer_prepare(xc_ckpt_writer_t *w, xc_engine_t *e, const xc_state_view_t *extras, int n_extras);

/* One synchronous pair for e (a temporary writer, a new run id, no rotation). */
typedef struct {
    const char *state_dir;
    const char *name;
    const char *config_json;
    const char *reason;
} xc_ckpt_opts_t;
int xc_ckpt_write(xc_engine_t *e, const xc_ckpt_opts_t *o, char *path_out, size_t path_len,
                  uint64_t *bytes, char *why, size_t why_len);

/* ------------------------------------------------------------ loading -- */
typedef struct {
    char path[1024];           /* model file */
    char train_path[1024];
    long step;
    uint64_t tokens;
    uint64_t serial;
    char run_id[40];
    char created[40];
    char config_json[8192];    /* the checkpoint's config (truncated if longer) */
} xc_ckpt_loaded_t;

/* Verifies the pair (model_path, train_path) completely against e and its
 * extras, and only then copies the training state into e's views and the
 * extras and calls xc_engine_state_restored. Returns 0; XC_ECORRUPT (torn,
 * truncated, bit-flipped, garbage, foreign, or files of different pairs);
 * XC_ESHAPE (d, dict_size or model differ from e: a different model);
 * XC_EVERSION (an intact file of an incompatible format or state layout);
 * XC_EIO (unreadable). why always names the file and the problem. */
int xc_ckpt_load_pair(xc_engine_t *e, const xc_state_view_t *extras, int n_extras, const char *model_path,
                      const char *train_path, xc_ckpt_loaded_t *info, char *why, size_t why_len);

typedef struct {
    const char *state_dir;
    const char *name;
    const char *path;          /* --resume PATH (either file of a pair), or NULL */
    int fresh;                 /* --fresh: load nothing */
} xc_ckpt_resume_opts_t;

/* Start-up: with path, loads that pair (any failure is returned); with fresh,
 * loads nothing; otherwise tries the pairs NAME-*.safetensors of state_dir
 * newest first (by the serial in their metadata, then step), skipping with a
 * log line every pair that is incomplete or corrupt, and stops at the first
 * one that loads or at one that is intact but does not fit e (XC_ESHAPE /
 * XC_EVERSION: returned). XC_ENOTFOUND: nothing loaded (a fresh start).
 * *next_serial: the serial a new checkpoint should carry (above every one seen). */
int xc_ckpt_resume(xc_engine_t *e, const xc_state_view_t *extras, int n_extras, const xc_ckpt_resume_opts_t *o,
                   xc_ckpt_loaded_t *info, uint64_t *next_serial, char *why, size_t why_len);

#endif
