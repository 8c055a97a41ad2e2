/* Per-latent records (PROTOCOL.md §3.3) read from either source a client has:
 * the shared-memory object (proto/SHM.md, a consistent snapshot) or the
 * daemon's `latent` / `top` replies. Both are turned into the same record, so
 * what a client prints does not depend on where the numbers came from. Part of
 * libxcoder, not installed (used by the xcoder CLI and the tests). */
#ifndef XC_LATENTS_H
#define XC_LATENTS_H

#include <stddef.h>
#include <stdint.h>

#include "xc_proto.h"
#include "xc_shm.h"
#include "xcoder.h"

enum { XC_LAT_SRC_SHM = 1, XC_LAT_SRC_CONTROL = 2 };
/* A class filter beside XC_CLASS_*: chat-specific latents (any class). */
#define XC_LAT_CLASS_CHAT_SPECIFIC XC_COUNT_CHAT_SPECIFIC

/* Latent Scaling estimates; NaN = undefined (nil on the wire, null in JSON). */
typedef struct {
    double beta_err_base, beta_err_chat, beta_rec_base, beta_rec_chat, nu_err, nu_rec, active;
    double beta_err_chat_se, beta_rec_chat_se; /* standard errors of the chat betas */
} xc_lat_scaling_t;

typedef struct {
    long j;
    double norm_base, norm_chat, delta_norm, cosine, freq, mean_act, max_act;
    double fired, tokens_since_fired; /* NaN where the source lacks them (shared memory) */
    int64_t last_step_fired;          /* -1 never */
    int dead, cls, chat_specific;     /* cls: XC_CLASS_* */
    int nu_unstable;                  /* the nu that decides chat_specific is unstable (beta_chat within noise of 0) */
    int has_exact;                    /* an exact pass exists: `exact` holds its results */
    xc_lat_scaling_t run, exact;
} xc_lat_t;

/* Sort fields (names the daemon's `top` accepts; proto/xc_schema.h has the
 * full column list), declared once: X(enum suffix, name, value of an xc_lat_t
 * record as an expression of `l`). */
#define XC_LAT_FIELDS(X)                                                           \
    X(NORM_BASE, "norm_base", l->norm_base)                                        \
    X(NORM_CHAT, "norm_chat", l->norm_chat)                                        \
    X(DELTA_NORM, "delta_norm", l->delta_norm)                                     \
    X(COSINE, "cosine", l->cosine)                                                 \
    X(FREQ, "freq", l->freq)                                                       \
    X(MEAN_ACT, "mean_act", l->mean_act)                                           \
    X(MAX_ACT, "max_act", l->max_act)                                              \
    X(FIRED, "fired", l->fired)                                                    \
    X(TOKENS_SINCE_FIRED, "tokens_since_fired", l->tokens_since_fired)             \
    X(LAST_STEP_FIRED, "last_step_fired", (double)l->last_step_fired)              \
    X(NU_ERR, "nu_err", l->run.nu_err)                                             \
    X(NU_REC, "nu_rec", l->run.nu_rec)                                             \
    X(BETA_ERR_BASE, "beta_err_base", l->run.beta_err_base)                        \
    X(BETA_ERR_CHAT, "beta_err_chat", l->run.beta_err_chat)                        \
    X(BETA_REC_BASE, "beta_rec_base", l->run.beta_rec_base)                        \
    X(BETA_REC_CHAT, "beta_rec_chat", l->run.beta_rec_chat)                        \
    X(EXACT_NU_ERR, "exact_nu_err", l->has_exact ? l->exact.nu_err : NAN)          \
    X(EXACT_NU_REC, "exact_nu_rec", l->has_exact ? l->exact.nu_rec : NAN)
typedef enum {
#define XC_LAT_F_ENUM(e, name, expr) XC_LAT_F_##e,
    XC_LAT_FIELDS(XC_LAT_F_ENUM)
#undef XC_LAT_F_ENUM
    XC_LAT_NFIELDS
} xc_lat_field_t;
/* "norm_base norm_chat ... exact_nu_rec " as one string literal (help texts). */
#define XC_LAT_F_NAME_LIST(e, name, expr) name " "
#define XC_LAT_FIELD_NAMES XC_LAT_FIELDS(XC_LAT_F_NAME_LIST)

/* Field by name: its index, or -1. */
int xc_lat_field(const char *name);
const char *xc_lat_field_name(int f);
/* 1 when shared memory carries the field (all but fired, tokens_since_fired). */
int xc_lat_field_in_shm(int f);
/* "norm_base norm_chat ... " for messages (static). */
const char *xc_lat_field_list(void);
/* The field's value (NaN when undefined). */
double xc_lat_value(const xc_lat_t *l, int f);

/* "chat_only" ... "dead", "chat_specific" (also "chat-only" spellings): XC_CLASS_*
 * or XC_LAT_CLASS_CHAT_SPECIFIC; -1 if unknown. */
int xc_lat_class_parse(const char *s);
/* 1 when l passes the filter (cls < 0: no filter). */
int xc_lat_in_class(const xc_lat_t *l, int cls);

/* Record j (< hdr.n_latents) of a snapshot. */
void xc_lat_from_shm(const xc_shm_snapshot_t *s, long j, xc_lat_t *out);
/* Record from a daemon map (a `top` entry, or a `latent` reply's stats with
 * j >= 0). j < 0: the map's own "j". 0 or XC_EPROTO (not a map / no delta_norm). */
int xc_lat_from_value(const xc_client_value_t *m, long j, xc_lat_t *out);

/* Sorts by field f, largest first unless asc; undefined (NaN) values last in
 * either order; ties by index. */
void xc_lat_sort(xc_lat_t *l, size_t n, int f, int asc);
/* The snapshot's latents that pass alive_only / cls, sorted as xc_lat_sort, at
 * most n: *out (caller frees) and *n_out. 0 or XC_ENOMEM / XC_EINVAL (field). */
int xc_lat_select_shm(const xc_shm_snapshot_t *s, int f, int asc, int alive_only, int cls, size_t n,
                      xc_lat_t **out, size_t *n_out);

/* Writes l's fields (PROTOCOL.md §3.3 names, plus "j" when with_j) into an open
 * map; NaN as nil. */
void xc_lat_write(xc_mpw_t *w, const xc_lat_t *l, int with_j);

/* Median of the finite values of v[0, n) (reorders v); NaN when none. *n_def
 * (may be NULL) receives how many were finite. */
double xc_lat_median(double *v, size_t n, size_t *n_def);

#endif
