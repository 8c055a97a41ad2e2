/* xcoderd configuration: ONE declarative table (config.c, g_keys) of every key
 * with its type, default, bounds and help text drives the config file parser,
 * the --KEY VALUE command line, --help, validation, the `config` control op,
 * the example file (xcoderd --print-config) and the engine's configuration:
 * every engine hyper-parameter is a key, and the engine has no defaults of its
 * own (xc_cfg_engine_defaults gives tests and benchmarks the table's).
 * Precedence: built-in defaults < config file (--config FILE) < command line.
 * SIGHUP re-runs the whole load and applies only the keys marked reloadable,
 * each through its apply hook. */
#ifndef XC_CONFIG_H
#define XC_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#include "xc_engine.h"
#include "xc_log.h"
#include "xc_shm.h"
#include "xc_proto.h"

#define XC_CFG_STR_MAX 512

/* The effective configuration (plain values; no heap memory). */
typedef struct {
    /* instance and files */
    char name[64];
    char run_dir[XC_CFG_STR_MAX];
    char state_dir[XC_CFG_STR_MAX];
    char ingest[XC_CFG_STR_MAX];
    char control[XC_CFG_STR_MAX];
    char events[XC_CFG_STR_MAX];
    xc_log_level_t log_level;
    char log_file[XC_CFG_STR_MAX];
    /* security */
    char curve_secret_key[XC_CFG_STR_MAX];
    char allow_producers[XC_CFG_STR_MAX], allow_readers[XC_CFG_STR_MAX], allow_admins[XC_CFG_STR_MAX];
    int insecure_tcp;          /* on (1) / off (0) */
    /* model and training (passed to the engine; NaN = "auto", by model kind) */
    xc_model_kind_t model;
    long d, dict_size, k, batch_size;
    long k_max, k_annealing_steps;  /* BatchTopK k-annealing: k_max -> k; 0 / 0 = off */
    xc_code_norm_t code_normalization;
    double code_normalization_alpha_sae, code_normalization_alpha_cc;
    double init_norm, lr, adam_beta1, adam_beta2, adam_eps, clip_norm;
    long warmup_steps, decay_start, total_steps;
    long max_tokens;           /* token budget; 0 = none */
    int lr_decay_to_budget;    /* on (1): total_steps = the budget's steps */
    xc_loss_kind_t loss;
    double l1_coef, aux_coef;
    long dead_tokens, threshold_start_step;
    double threshold_beta;
    long seed, threads;
    xc_prec_t encoder_precision;
    /* activation normalisation and intake exclusions (xc_norm.h) */
    int normalize;             /* xc_norm_mode_t: off, global, neuron */
    long normalize_tokens;     /* tokens of the statistics pass */
    double target_rms;
    long exclude_positions_below; /* tokens at document positions < this are not trained; 0 = none */
    double outlier_norm_factor;   /* tokens with norm > factor x their batch's median are not trained; 0 = off */
    /* service */
    long queue_size, mix_tokens, max_msg_bytes, ingest_hwm;
    char stream_mix[XC_CFG_STR_MAX]; /* "web:0.5,chat:0.5" (daemon/xc_mixbuf.h); "" = none */
    long stream_hold;          /* with stream_mix: batches held unanswered for full streams */
    double max_abs_value;
    long memory_limit, max_connections;
    double stats_interval, checkpoint_interval, dead_alert_jump;
    double mpi_timeout;        /* seconds; a sharded job's collective progress timeout */
    long checkpoint_steps, checkpoint_keep;
    char metrics_file[XC_CFG_STR_MAX];
    double metrics_interval;
    long history_max_bytes;
    /* analysis: per-latent statistics, Latent Scaling, shared memory, classes */
    double stats_half_life, scaling_half_life, scaling_min_active;
    long scaling_max_tokens;
    int scaling_running;       /* on (1) / off (0) */
    int shm;                   /* on (1) / off (0) */
    char shm_mode[8];
    double shm_interval;
    double chat_only_min, base_only_max, shared_lo, shared_hi, nu_err_max, nu_rec_max;
    double scaling_nu_min_z;
    long examples_top, examples_random, examples_window, examples_store_tokens, examples_vocab_bytes;
    char vocab_file[XC_CFG_STR_MAX];
    /* start-up only, from the command line (not keys): --resume PATH, --fresh */
    char resume[XC_CFG_STR_MAX];
    int fresh;
} xc_cfg_t;

/* INT: long; FLOAT: double; STR: char[]; ENUM: an enum (int-sized) whose value
 * is the index of its name in names; BOOL: int, written on / off. */
typedef enum { XC_CFG_INT, XC_CFG_FLOAT, XC_CFG_STR, XC_CFG_ENUM, XC_CFG_BOOL } xc_cfg_type_t;

/* What must happen when a reloadable key changes at run time: its apply hook.
 * The caller of xc_cfg_apply_reload supplies the functions (they act on objects
 * only it knows); each runs once per reload, after every changed key is copied.
 * NONE: the value is read where it is used, so the next use sees it. */
typedef enum {
    XC_CFG_HOOK_NONE = 0,
    XC_CFG_HOOK_LOG_LEVEL,  /* the process's log level (xc_cfg_apply_log_level) */
    XC_CFG_HOOK_TIMERS,     /* the service's periodic timers: stats, checkpoints, metrics */
    XC_CFG_HOOK_CHECKPOINT, /* the trainer's checkpoint policy: keep, every N steps */
    XC_CFG_HOOK_N
} xc_cfg_hook_t;

typedef void (*xc_cfg_hook_fn)(void *ctx, const xc_cfg_t *c);
/* The functions of the hooks (NULL: nothing to do) and their context. */
typedef struct {
    xc_cfg_hook_fn fn[XC_CFG_HOOK_N];
    void *ctx;
} xc_cfg_hooks_t;

/* One row of the table. */
typedef struct {
    const char *name;
    xc_cfg_type_t type;
    const char *def;     /* default, as it would be written in the file */
    double min, max;     /* INT / FLOAT bounds (inclusive) */
    const char *const *names; /* ENUM: the value names, NULL-terminated, index = value */
    size_t offset, size; /* where the value lives in xc_cfg_t */
    int reloadable;      /* applied on SIGHUP */
    xc_cfg_hook_t hook;  /* reloadable keys: what a change sets in motion */
    /* FLOAT keys that accept "auto" (stored as NaN): the value auto stands for,
     * which may depend on other keys (init_norm and clip_norm on the model kind) */
    double (*auto_value)(const xc_cfg_t *c);
    const char *section; /* heading in --help and the example file */
    const char *help;
} xc_cfg_key_t;

/* The table (NULL-name terminated) and a lookup by name (NULL if unknown). */
const xc_cfg_key_t *xc_cfg_keys(void);
const xc_cfg_key_t *xc_cfg_key(const char *name);

/* Fills every key with its default. */
void xc_cfg_defaults(xc_cfg_t *c);
/* Parses and validates one value. XC_ENOTFOUND (unknown key, with the nearest
 * known one suggested) or XC_ECONFIG; why says which and why. */
int xc_cfg_set(xc_cfg_t *c, const char *key, const char *value, char *why, size_t why_len);
/* Reads `key = value` lines ('#' starts a comment; blank lines ignored; values
 * may be "quoted"). Errors name the file and line. XC_EIO if unreadable. */
int xc_cfg_load_file(xc_cfg_t *c, const char *path, char *why, size_t why_len);

/* Command-line result of xc_cfg_load. */
typedef struct {
    int help;             /* --help / -h seen */
    int print_config;     /* --print-config seen: print the effective config file */
    int print_example;    /* --print-example seen: print the documented example file */
    const char *config;   /* --config FILE (borrowed from argv), NULL if none */
} xc_cfg_cli_t;

/* The whole load: defaults, then --config FILE, then every --KEY VALUE /
 * --KEY=VALUE of argv, then xc_cfg_finalize. argv[0] is skipped. */
int xc_cfg_load(xc_cfg_t *c, int argc, char **argv, xc_cfg_cli_t *cli, char *why, size_t why_len);
/* Derived defaults (empty run_dir, state_dir, endpoints, mix_tokens = 0) and
 * checks across keys (k <= dict_size, mix_tokens >= batch_size, ...). */
int xc_cfg_finalize(xc_cfg_t *c, char *why, size_t why_len);

/* The engine configuration for c: every field from its key ("auto" keys
 * resolved for c's model kind). */
void xc_cfg_engine(const xc_cfg_t *c, xc_engine_config_t *ec);
/* The engine configuration of the table's defaults for a model kind: the one
 * set of defaults for tests and benchmarks that build an engine directly. */
void xc_cfg_engine_defaults(xc_engine_config_t *ec, xc_model_kind_t model);
/* What ZeroMQ may hold per connection of the control and events sockets
 * (svc_loop.c sets these options; xc_cfg_memory_bound counts them). */
#define XC_CFG_CONTROL_FRAME_MAX (1 << 20) /* ZMQ_MAXMSGSIZE of the control socket */
#define XC_CFG_CONTROL_RCVHWM 4            /* requests waiting per control connection */
#define XC_CFG_CONTROL_SNDHWM 8            /* replies per control connection */
#define XC_CFG_EVENTS_FRAME_MAX 1024       /* ZMQ_MAXMSGSIZE of the events socket (subscriptions) */
#define XC_CFG_EVENTS_RCVHWM 16            /* subscription messages per subscriber */
#define XC_CFG_EVENTS_SNDHWM 64            /* events queued per subscriber */
#define XC_CFG_EVENT_MAX (256 << 10)       /* larger events are not sent */
#define XC_CFG_CONN_OVERHEAD (256 << 10)   /* a connection's own buffers (engine, session, kernel-side excluded) */

/* The ingest socket's ZMQ_RCVHWM: ingest_hwm, at least 2 (libzmq 4.3.4 never
 * delivers to a ROUTER whose receive high-water mark is 1 once a ZAP domain is
 * set, and every socket has one: auth.c). */
long xc_cfg_ingest_rcvhwm(const xc_cfg_t *c);
/* The configured worst case of the daemon's memory in bytes: model and Adam
 * state, queue, mixing buffer, reply backlog, and max_connections times
 * *per_connection (may be NULL): what ZeroMQ may buffer for one connection of
 * each socket (ingest, control, events) together. */
double xc_cfg_memory_bound(const xc_cfg_t *c, double *per_connection);
/* shm_mode as permission bits (validated by finalize). */
int xc_cfg_shm_mode(const xc_cfg_t *c, unsigned *mode);
/* The latent-class thresholds of the analysis section. */
void xc_cfg_thresholds(const xc_cfg_t *c, xc_class_thresholds_t *t);

/* A key's value as text (as it would appear in the config file). */
int xc_cfg_get(const xc_cfg_t *c, const char *key, char *out, size_t out_len);
/* Writes one key (key != NULL) or every key as MessagePack key/value pairs into
 * an open map (ints as ints, floats as floats, strings as strings). */
int xc_cfg_to_mp(const xc_cfg_t *c, const char *key, xc_mpw_t *w);
/* Copies the reloadable keys of next into cur, then runs the apply hook of
 * every changed key once (hooks may be NULL: copy only); for every other key
 * that differs, writes its name into changed_fixed (comma separated) so the
 * caller can warn that it needs a restart. Returns the number of keys applied. */
int xc_cfg_apply_reload(xc_cfg_t *cur, const xc_cfg_t *next, const xc_cfg_hooks_t *hooks,
                        char *changed_fixed, size_t len);
/* The LOG_LEVEL hook: sets the process's log level from c (ctx unused). */
void xc_cfg_apply_log_level(void *ctx, const xc_cfg_t *c);
/* The name of an ENUM or BOOL key's value (e.g. "batchtopk"); NULL if the key is
 * not an enum or the value out of range. */
const char *xc_cfg_enum_name(const char *key, int value);

/* --help text: usage, then every key with type, default and meaning. */
void xc_cfg_print_help(FILE *f, const char *argv0);
/* A complete config file: every key documented; values from c (or defaults
 * when c is NULL, all commented out). */
void xc_cfg_print_file(FILE *f, const xc_cfg_t *c);

#endif
