/* xcoderd configuration: ONE declarative table (config.c, g_keys) of every key
 * with its type, default, bounds and help text drives the config file parser,
 * the --KEY VALUE command line, --help, validation, the `config` control op
 * and the example file (xcoderd --print-config). Precedence: built-in defaults
 * < config file (--config FILE) < command line. SIGHUP re-runs the whole load
 * and applies only the keys marked reloadable. */
#ifndef XC_CONFIG_H
#define XC_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#include "xc_engine.h"
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
    char log_level[16];
    char log_file[XC_CFG_STR_MAX];
    /* security */
    char curve_secret_key[XC_CFG_STR_MAX];
    char allow_producers[XC_CFG_STR_MAX], allow_readers[XC_CFG_STR_MAX], allow_admins[XC_CFG_STR_MAX];
    char insecure_tcp[8];
    /* model and training (passed to the engine) */
    char model[16];
    long d, dict_size, k, batch_size;
    double lr;
    long warmup_steps, decay_start, total_steps;
    char loss[8];
    double l1_coef, aux_coef;
    long dead_tokens, threshold_start_step;
    long seed, threads;
    /* service */
    long queue_size, mix_tokens, max_msg_bytes, ingest_hwm;
    double max_abs_value;
    double stats_interval, checkpoint_interval, dead_alert_jump;
    long checkpoint_steps, checkpoint_keep;
    char metrics_file[XC_CFG_STR_MAX];
    double metrics_interval;
    /* analysis: per-latent statistics, Latent Scaling, shared memory, classes */
    double stats_half_life, scaling_half_life, scaling_min_active;
    char scaling_running[8];
    char shm[8];
    char shm_mode[8];
    double shm_interval;
    double chat_only_min, base_only_max, shared_lo, shared_hi, nu_err_max, nu_rec_max;
    long examples_top, examples_random, examples_window, examples_store_tokens, examples_vocab_bytes;
    char vocab_file[XC_CFG_STR_MAX];
    /* start-up only, from the command line (not keys): --resume PATH, --fresh */
    char resume[XC_CFG_STR_MAX];
    int fresh;
} xc_cfg_t;

typedef enum { XC_CFG_INT, XC_CFG_FLOAT, XC_CFG_STR, XC_CFG_ENUM } xc_cfg_type_t;

/* One row of the table. */
typedef struct {
    const char *name;
    xc_cfg_type_t type;
    const char *def;     /* default, as it would be written in the file */
    double min, max;     /* INT / FLOAT bounds (inclusive) */
    const char *choices; /* ENUM: "a|b|c" */
    size_t offset, size; /* where the value lives in xc_cfg_t */
    int reloadable;      /* applied on SIGHUP */
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

/* The engine configuration for c (engine defaults for everything not a key). */
void xc_cfg_engine(const xc_cfg_t *c, xc_engine_config_t *ec);
/* shm_mode as permission bits (validated by finalize). */
int xc_cfg_shm_mode(const xc_cfg_t *c, unsigned *mode);
/* The latent-class thresholds of the analysis section. */
void xc_cfg_thresholds(const xc_cfg_t *c, xc_class_thresholds_t *t);

/* A key's value as text (as it would appear in the config file). */
int xc_cfg_get(const xc_cfg_t *c, const char *key, char *out, size_t out_len);
/* Writes one key (key != NULL) or every key as MessagePack key/value pairs into
 * an open map (ints as ints, floats as floats, strings as strings). */
int xc_cfg_to_mp(const xc_cfg_t *c, const char *key, xc_mpw_t *w);
/* Copies the reloadable keys of next into cur; for every other key that
 * differs, writes its name into changed_fixed (comma separated) so the caller
 * can warn that it needs a restart. Returns the number of keys applied. */
int xc_cfg_apply_reload(xc_cfg_t *cur, const xc_cfg_t *next, char *changed_fixed, size_t len);

/* --help text: usage, then every key with type, default and meaning. */
void xc_cfg_print_help(FILE *f, const char *argv0);
/* A complete config file: every key documented; values from c (or defaults
 * when c is NULL, all commented out). */
void xc_cfg_print_file(FILE *f, const xc_cfg_t *c);

#endif
