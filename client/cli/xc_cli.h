/* The `xcoder` command line: internals shared by its files (not installed). */
#ifndef XC_CLI_H
#define XC_CLI_H

#include <stddef.h>
#include <stdint.h>

#include "xc_latents.h"
#include "xc_proto.h"
#include "xcoder.h"

/* Exit codes: 0 success, 1 the action failed (daemon error, refused batch,
 * I/O), 2 the command line is wrong, 3 the daemon did not answer in time. */
enum { XC_CLI_OK = 0, XC_CLI_FAIL = 1, XC_CLI_USAGE = 2, XC_CLI_TIMEOUT = 3 };

#define XC_CLI_MAX_OPTS 48
#define XC_CLI_MAX_POS 8

/* One option of a command: --name [METAVAR]; metavar NULL = a flag. */
typedef struct {
    const char *name;
    const char *metavar;
    const char *help;
} xc_cli_optdef_t;

struct xc_cli_cmd;

/* Everything parsed from argv (pointers borrowed from argv). */
typedef struct {
    const struct xc_cli_cmd *cmd;
    /* global options */
    const char *run_dir, *name, *ingest, *control, *events;
    const char *server_key, *client_key; /* --server-key, --key (CurveZMQ on tcp) */
    double timeout_s;
    int json, pretty;
    int verbose; /* -v / --verbose: say on stderr where data came from */
    /* command options, by index in cmd->opts (NULL = not given; flags "1") */
    const char *val[XC_CLI_MAX_OPTS];
    const char *pos[XC_CLI_MAX_POS];
    int npos;
} xc_cli_args_t;

typedef struct xc_cli_cmd {
    const char *name;
    const char *usage;      /* after "xcoder NAME " */
    const char *summary;    /* one line */
    const char *help;       /* paragraph(s) */
    const xc_cli_optdef_t *opts; /* NULL-terminated by name */
    int min_pos, max_pos;
    int json;               /* accepts --json */
    int (*run)(xc_cli_args_t *a);
} xc_cli_cmd_t;

/* Parsing (main.c). Returns XC_CLI_OK or XC_CLI_USAGE (message printed);
 * *help set when --help was asked for (help already printed). */
int xc_cli_parse(int argc, char **argv, xc_cli_args_t *a, int *help);

/* Option access. Typed getters print "xcoder CMD: --opt: ..." and return
 * XC_CLI_USAGE on a bad value; XC_CLI_OK otherwise (*out = dflt if absent). */
const char *xc_cli_opt(const xc_cli_args_t *a, const char *name);
int xc_cli_flag(const xc_cli_args_t *a, const char *name);
int xc_cli_opt_long(const xc_cli_args_t *a, const char *name, long dflt, long min, long max, long *out);
int xc_cli_opt_double(const xc_cli_args_t *a, const char *name, double dflt, double min, double max,
                      double *out);
int xc_cli_parse_long(const char *what, const char *s, long min, long max, long *out);

/* Error output: "xcoder CMD: message" on stderr. */
void xc_cli_err(const xc_cli_args_t *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Maps a library failure to an exit code after printing last_error. */
int xc_cli_fail(const xc_cli_args_t *a, xc_client_t *c, int rc);

/* A connected client from the global options (caller destroys); NULL after
 * printing why. window <= 0: the library default. */
xc_client_t *xc_cli_client(const xc_cli_args_t *a, int window);
int xc_cli_timeout_ms(const xc_cli_args_t *a);
/* Prints a reply as JSON to stdout (honours --pretty). */
int xc_cli_print_json(const xc_cli_args_t *a, const xc_client_value_t *v);
/* Finishes a writer holding one map (built with proto's xc_mpw_*) and prints
 * it as JSON with the same renderer; the buffer stays the caller's. */
int xc_cli_print_mpw(const xc_cli_args_t *a, xc_mpw_t *w);

/* Human formatting helpers (fmt.c). Results live in the caller's buffer. */
const char *xc_cli_fmt_count(double x, char *buf, size_t n);    /* 1234567 -> "1.23M" */
const char *xc_cli_fmt_duration(double s, char *buf, size_t n); /* 3725 -> "1h02m05s" */
const char *xc_cli_fmt_bytes(double b, char *buf, size_t n);
/* Renders one scalar value compactly (numbers with %g, strings raw). */
const char *xc_cli_fmt_value(const xc_client_value_t *v, char *buf, size_t n);

/* Where per-latent statistics come from (latents.c): the daemon's shared
 * memory when it is on this machine, else the control socket. */
typedef struct {
    int kind;                 /* XC_LAT_SRC_SHM or XC_LAT_SRC_CONTROL */
    xc_shm_reader_t *rd;      /* owned, when shm */
    xc_shm_snapshot_t snap;   /* the snapshot taken while checking the object */
    int have_snap;
    char instance[208];       /* instance names are at most 200 bytes */
    char why[1024];           /* why not shm (when control) */
} xc_cli_source_t;
/* --source auto|shm|control -> 0 | XC_LAT_SRC_SHM | XC_LAT_SRC_CONTROL. */
int xc_cli_source_mode(const xc_cli_args_t *a, int *mode);
/* Picks the source: shm when mode allows, no_shm_why is NULL and the object
 * of the addressed daemon can be read; --source shm fails (XC_CLI_FAIL, message
 * printed) when it cannot. -v reports the choice on stderr. */
int xc_cli_source_open(const xc_cli_args_t *a, int mode, const char *no_shm_why, xc_cli_source_t *s);
/* A consistent snapshot (XC_ESTATE when the writer has gone: reopen). */
int xc_cli_source_snapshot(xc_cli_source_t *s, xc_shm_snapshot_t *out);
void xc_cli_source_close(xc_cli_source_t *s);

/* A latent's live examples as text lines (examples.c): at most `top` best and
 * `random` sampled ones; nothing when there are none or the daemon lacks the op. */
void xc_cli_print_examples(FILE *f, xc_client_t *c, long j, long top, long random, const char *indent);

/* A progress line on stderr with ETA (progress.c), drawn only when stderr is a
 * terminal and quiet is 0; end() clears it. */
typedef struct {
    int on, drawn;
    char what[48], unit[16];
    double total, t0, t_last;
    double base; /* progress already made at start (excluded from the rate) */
} xc_cli_progress_t;
void xc_cli_progress_start(xc_cli_progress_t *p, const char *what, const char *unit, double total, int quiet);
void xc_cli_progress_update(xc_cli_progress_t *p, double done);
void xc_cli_progress_end(xc_cli_progress_t *p);

/* Offline exact Latent Scaling of a checkpoint over a .npy file, the daemon's
 * exact pass code: `xcoder scaling --checkpoint CKPT --data FILE.npy` runs
 * xcoder-offline (client/offline; offline.c finds it and execs it). */
int xc_cli_scaling_offline(xc_cli_args_t *a, const char *ckpt, const char *data, long top);

/* Signal flag set by SIGINT/SIGTERM while a command wants to stop gracefully. */
extern volatile int xc_cli_stop;
void xc_cli_trap_signals(void);

/* Synthetic generator options shared by `synth` and `report` (synth.c):
 * spliced into both option tables, read back by xc_cli_synth_config. */
#define XC_CLI_SYNTH_SHAPE_OPTS                                                              \
    {"seed", "N", "generator seed: fixes the planted features and the token stream (1)"}, \
    {"shared", "N", "shared features (default 40 x d/64)"},                               \
    {"chat-only", "N", "chat-only features (default 12 x d/64)"},                         \
    {"base-only", "N", "base-only features (default 12 x d/64)"},                         \
    {"shrunk", "N", "features weaker in the base model (default 0)"},                     \
    {"shared-cos", "C", "cosine between base and chat directions of shared features (0.95)"}, \
    {"shrunk-scale", "S", "base strength of shrunk features (0.3)"},                      \
    {"shrunk-cos", "C", "cosine of shrunk feature pairs (0.9)"},                          \
    {"mean-active", "K", "expected active features per token (4)"},                       \
    {"prob-exponent", "A", "firing probability ~ rank^-A (0.5)"},                         \
    {"max-prob", "P", "cap on a feature's firing probability (0.5)"},                     \
    {"noise", "S", "Gaussian noise per coordinate (0.02)"},                               \
    {"bias-norm", "B", "norm of each model's fixed bias (1)"}
/* Fills cfg (an xc_synth_config_t *) from defaults for width d and the options. */
int xc_cli_synth_config(const xc_cli_args_t *a, int d, void *cfg);

/* Commands. */
int xc_cli_cmd_push(xc_cli_args_t *a);
int xc_cli_cmd_status(xc_cli_args_t *a);
int xc_cli_cmd_ping(xc_cli_args_t *a);
int xc_cli_cmd_latents(xc_cli_args_t *a);
int xc_cli_cmd_latent(xc_cli_args_t *a);
int xc_cli_cmd_examples(xc_cli_args_t *a);
int xc_cli_examples_offline(xc_cli_args_t *a);
int xc_cli_cmd_scaling(xc_cli_args_t *a);
int xc_cli_cmd_checkpoint(xc_cli_args_t *a);
int xc_cli_cmd_pause(xc_cli_args_t *a);
int xc_cli_cmd_resume(xc_cli_args_t *a);
int xc_cli_cmd_shutdown(xc_cli_args_t *a);
int xc_cli_cmd_config(xc_cli_args_t *a);
int xc_cli_cmd_watch(xc_cli_args_t *a);
int xc_cli_cmd_events(xc_cli_args_t *a);
int xc_cli_cmd_metrics(xc_cli_args_t *a);
int xc_cli_cmd_history(xc_cli_args_t *a);
int xc_cli_cmd_keygen(xc_cli_args_t *a);
int xc_cli_cmd_synth(xc_cli_args_t *a);
int xc_cli_cmd_report(xc_cli_args_t *a);
int xc_cli_cmd_dashboard(xc_cli_args_t *a);

#endif
