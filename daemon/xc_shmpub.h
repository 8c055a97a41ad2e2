/* Publishes the engine's per-latent statistics and Latent Scaling estimates into
 * the shared-memory object (include/xc_shm.h). Runs on the trainer thread between
 * steps, so it reads the engine without locks. Also keeps the last computed
 * records for the control socket's latent/top queries. */
#ifndef XC_SHMPUB_H
#define XC_SHMPUB_H

#include "xc_engine.h"
#include "xc_norm.h"
#include "xc_schema.h"
#include "xc_shm.h"

#include <stdint.h>
#include <sys/types.h>

typedef struct xc_shmpub xc_shmpub_t;

/* Every latent's record at one step: the arrays the columns of the schema
 * (XC_LATENT_COLUMNS, proto/xc_schema.h) read. The trainer's snapshots for the
 * loop (xc_trainer.h) are this type; so is the view shmpub publishes from. */
typedef struct {
    long step;                     /* dictionary step the records describe */
    uint64_t gen;                  /* newest snapshot request it answers (0: none yet) */
    long F;                        /* dict_size */
    xc_latent_stats_t *st;         /* (F) statistics */
    xc_scaling_stats_t *running;   /* (F) running Latent Scaling estimates */
    xc_scaling_stats_t *exact;     /* (F) last exact pass, NULL when there is none */
    long exact_step;               /* its dictionary step (-1: none) */
    uint64_t exact_tokens;
    uint8_t *cls, *flags;          /* (F) XC_CLASS_*, XC_FLAG_* */
} xc_snapshot_t;

/* Column col (enum xc_col, the schema's order) of latent j: an integer column
 * exactly in *i (and as a double in *d), a float column in *d (NaN where
 * undefined; exact_active 0 before an exact pass). */
void xc_latent_column(const xc_snapshot_t *x, int col, long j, double *d, int64_t *i);
/* The column named s[0, len) (or the alias "last_step_fired"); -1 if none. */
int xc_latent_column_find(const char *s, size_t len);

/* instance NULL: compute the records only (no shared memory). NULL on failure
 * with *err and a reason in why. */
xc_shmpub_t *xc_shmpub_new(const char *instance, const xc_engine_t *e, mode_t mode, const char *owner,
                           const xc_class_thresholds_t *th, int *err, char *why, size_t why_len);
/* Stores a copy of an exact Latent Scaling pass's results (dict_size entries),
 * published from the next update on beside the running estimates. */
int xc_shmpub_set_exact(xc_shmpub_t *p, const xc_scaling_stats_t *exact, long step, uint64_t tokens);
/* The activation normaliser whose units the running Latent Scaling estimates
 * are converted to (xc_norm_scaling_to_original; borrowed, must outlive p;
 * NULL = as the engine computes them). Exact results are converted by whoever
 * stores them. */
void xc_shmpub_set_norm(xc_shmpub_t *p, const xc_norm_t *norm);
/* The stored exact results (NULL if none yet) and the step/tokens behind them. */
const xc_scaling_stats_t *xc_shmpub_exact(const xc_shmpub_t *p, long *step, uint64_t *tokens);
/* Recomputes every latent's record from e (running Latent Scaling estimates,
 * classes; chat-specific from the exact nu when an exact pass exists) and, when
 * publishing, writes the shared-memory object. */
int xc_shmpub_update(xc_shmpub_t *p, const xc_engine_t *e, double tokens_per_s);
/* The same from records gathered elsewhere (a latent-sharded job's rank 0):
 * lat, run dict_size entries each (NULL: keep the last), m the step's metrics. */
int xc_shmpub_update_from(xc_shmpub_t *p, const xc_latent_stats_t *lat, const xc_scaling_stats_t *run,
                          const xc_engine_metrics_t *m, double tokens_per_s);
/* Last computed records (dict_size entries each); valid until the next update. */
const xc_latent_stats_t *xc_shmpub_latents(const xc_shmpub_t *p);
const xc_scaling_stats_t *xc_shmpub_scaling(const xc_shmpub_t *p);
const uint8_t *xc_shmpub_classes(const xc_shmpub_t *p);
const uint8_t *xc_shmpub_flags(const xc_shmpub_t *p);
void xc_shmpub_class_counts(const xc_shmpub_t *p, uint32_t counts[8]);
void xc_shmpub_destroy(xc_shmpub_t **p, int unlink_it);

#endif
