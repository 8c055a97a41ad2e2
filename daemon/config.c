/* The configuration table and everything it drives (see xc_config.h). */
#include "xc_config.h"
#include "xc_mixbuf.h"
#include "xc_norm.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* Row constructors (redis createIntConfig style): a key's type, default,
 * bounds, field and text; optional trailing designators such as RELOAD(hook)
 * or AUTO(fn). Every value lives in one field of xc_cfg_t. */
#define FIELD(f) .offset = offsetof(xc_cfg_t, f), .size = sizeof(((xc_cfg_t *)0)->f)
#define KEY_INT(n, d, lo, hi, f, sec, h, ...) \
    {.name = n, .type = XC_CFG_INT, .def = d, .min = lo, .max = hi, FIELD(f), .section = sec, .help = h, __VA_ARGS__}
#define KEY_FLOAT(n, d, lo, hi, f, sec, h, ...) \
    {.name = n, .type = XC_CFG_FLOAT, .def = d, .min = lo, .max = hi, FIELD(f), .section = sec, .help = h, __VA_ARGS__}
#define KEY_STR(n, d, f, sec, h, ...) \
    {.name = n, .type = XC_CFG_STR, .def = d, FIELD(f), .section = sec, .help = h, __VA_ARGS__}
#define KEY_ENUM(n, d, nm, f, sec, h, ...) \
    {.name = n, .type = XC_CFG_ENUM, .def = d, .names = nm, FIELD(f), .section = sec, .help = h, __VA_ARGS__}
#define KEY_BOOL(n, d, f, sec, h, ...) \
    {.name = n, .type = XC_CFG_BOOL, .def = d, .names = g_onoff, FIELD(f), .section = sec, .help = h, __VA_ARGS__}
#define RELOAD(hk) .reloadable = 1, .hook = hk
#define AUTO(fn) .auto_value = fn
#define BIG 9.2e18

/* Enum value names, in the order of the enum's values. */
static const char *const g_models[] = {"batchtopk", "l1", NULL};   /* xc_model_kind_t */
static const char *const g_losses[] = {"l2", "mse", NULL};         /* xc_loss_kind_t */
static const char *const g_levels[] = {"debug", "info", "warn", "error", NULL}; /* xc_log_level_t */
static const char *const g_onoff[] = {"off", "on", NULL};
static const char *const g_precs[] = {"fp32", "auto", "bf16", "int8", NULL}; /* xc_prec_t */
static const char *const g_codenorms[] = {"crosscoder", "sae", "mixed", "none", "decoupled", NULL}; /* xc_code_norm_t */
static const char *const g_norms[] = {"off", "global", "neuron", NULL};       /* xc_norm_mode_t */
_Static_assert(XC_NORM_NEURON == 2, "normalize names out of order");
_Static_assert(XC_MODEL_L1 == 1 && XC_LOSS_MSE == 1 && XC_LOG_ERROR == 3 && XC_PREC_AUTO == 1 && XC_PREC_INT8 == 3 &&
                   XC_CODE_DECOUPLED == 4,
               "enum names out of order");
_Static_assert(sizeof(xc_model_kind_t) == sizeof(int) && sizeof(xc_loss_kind_t) == sizeof(int) &&
                   sizeof(xc_log_level_t) == sizeof(int) && sizeof(xc_prec_t) == sizeof(int) &&
                   sizeof(xc_code_norm_t) == sizeof(int),
               "ENUM keys are stored as int-sized enums");

/* init_norm = auto: method.md 1 (encoder columns at 1.0 for BatchTopK, 0.005 for L1). */
static double auto_init_norm(const xc_cfg_t *c) { return c->model == XC_MODEL_L1 ? 0.005 : 1.0; }
/* clip_norm = auto: BatchTopK clips the global gradient norm at 1.0; L1 does not clip. */
static double auto_clip_norm(const xc_cfg_t *c) { return c->model == XC_MODEL_L1 ? 0.0 : 1.0; }

/* The one table. Keep it in the order the file and --help show it. */
static const xc_cfg_key_t g_keys[] = {
    /* instance and files */
    KEY_STR("name", "default", name, "instance",
            "instance name: tags events, log lines and checkpoint files; [A-Za-z0-9._-], at most 63 bytes"),
    KEY_STR("run_dir", "", run_dir, "instance",
            "directory of the ipc:// sockets; empty = $XDG_RUNTIME_DIR/xcoderd-NAME, or /tmp/xcoderd-NAME "
            "without XDG_RUNTIME_DIR; created if missing"),
    KEY_STR("state_dir", "", state_dir, "instance",
            "directory for checkpoints; empty = RUN_DIR/state; created if missing"),
    KEY_STR("ingest", "", ingest, "instance",
            "ingest endpoint (ROUTER, producers connect DEALER); empty = ipc://RUN_DIR/ingest.sock; "
            "tcp://HOST:PORT works too"),
    KEY_STR("control", "", control, "instance",
            "control endpoint (ROUTER, request/reply); empty = ipc://RUN_DIR/control.sock"),
    KEY_STR("events", "", events, "instance", "events endpoint (PUB); empty = ipc://RUN_DIR/events.sock"),
    KEY_ENUM("log_level", "info", g_levels, log_level, "instance", "least severe log level written",
             RELOAD(XC_CFG_HOOK_LOG_LEVEL)),
    KEY_STR("log_file", "", log_file, "instance",
            "append log lines to this file instead of stderr; reopened on SIGHUP (log rotation)",
            RELOAD(XC_CFG_HOOK_NONE)),
    /* security: CurveZMQ on tcp endpoints (README "Security"); the allow-list files are
     * re-read on every SIGHUP, changed or not */
    KEY_STR("curve_secret_key", "", curve_secret_key, "security",
            "the daemon's CURVE key file (from `xcoderd --keygen BASE`: BASE.key, mode 0600); when set, "
            "every tcp:// endpoint requires CURVE and a client key listed in an allow-list; empty = no "
            "encryption or authentication"),
    KEY_STR("allow_producers", "", allow_producers, "security",
            "file of client public keys (one per line, or `cat NAME.pub >> FILE`) allowed to push batches",
            RELOAD(XC_CFG_HOOK_NONE)),
    KEY_STR("allow_readers", "", allow_readers, "security",
            "file of client public keys allowed to read: status, latent, top, table, events, metrics, "
            "checkpoints, fetch of model files",
            RELOAD(XC_CFG_HOOK_NONE)),
    KEY_STR("allow_admins", "", allow_admins, "security",
            "file of client public keys allowed everything: pause, resume, checkpoint, scaling, shutdown, "
            "fetch of training-state files (which hold producers' raw activations)",
            RELOAD(XC_CFG_HOOK_NONE)),
    KEY_BOOL("insecure_tcp", "off", insecure_tcp, "security",
             "on: allow binding a non-loopback tcp address without curve_secret_key (anyone who reaches "
             "it owns the daemon); the daemon refuses to start that way otherwise"),
    /* model and training */
    KEY_ENUM("model", "batchtopk", g_models, model, "model",
             "crosscoder kind: batchtopk (recommended) or l1 (the baseline with sparsity artefacts)"),
    KEY_INT("d", "64", 1, 1048576, d, "model",
            "activation width of each model (Gemma 2 2B residual: 2304); every batch must match"),
    KEY_INT("dict_size", "1024", 1, 1e8, dict_size, "model", "number of latents F (paper: 73728)"),
    KEY_INT("k", "8", 1, 1e8, k, "model",
            "BatchTopK: mean active latents per token (paper: 100); must be <= dict_size"),
    KEY_INT("k_max", "0", 0, 1e8, k_max, "model",
            "BatchTopK k-annealing (reference trainer): k starts at k_max and falls (or rises) linearly to k over "
            "k_annealing_steps steps, k = max(1, round(k_max - (k_max - k) step / k_annealing_steps)); AuxK and "
            "theta run unchanged meanwhile; 0 = k (no annealing)"),
    KEY_INT("k_annealing_steps", "0", 0, BIG, k_annealing_steps, "model",
            "BatchTopK: steps of the k_max -> k schedule; needed when k_max differs from k"),
    KEY_ENUM("code_normalization", "crosscoder", g_codenorms, code_normalization, "model",
             "the code normalisation s_j in every score u s_j (BatchTopK ranking, AuxK, theta) and in the L1 "
             "penalty, as the reference's CodeNormalization: crosscoder (||d_base|| + ||d_chat||), sae (norm of "
             "the concatenated decoder rows), mixed (alpha_sae sae + alpha_cc crosscoder), none (1), decoupled "
             "(batchtopk: per-model codes, each model its own top k*B of u ||d_j^m|| and theta, fp32 scoring, "
             "one process, no Latent Scaling; l1: the same as crosscoder); written as code_normalization_id in "
             "checkpoints"),
    KEY_FLOAT("code_normalization_alpha_sae", "1", 0, 1e6, code_normalization_alpha_sae, "model",
              "mixed code normalisation: weight of the sae norm (reference default 1.0)"),
    KEY_FLOAT("code_normalization_alpha_cc", "0.1", 0, 1e6, code_normalization_alpha_cc, "model",
              "mixed code normalisation: weight of the crosscoder norm (reference default 0.1)"),
    KEY_INT("batch_size", "256", 1, 1e7, batch_size, "model", "tokens per training step B (paper: 2048)"),
    KEY_FLOAT("init_norm", "auto", 1e-30, 1e6, init_norm, "model",
              "norm of every encoder column (and decoder row) at initialisation; auto = 1.0 for "
              "batchtopk, 0.005 for l1 (method.md 1)",
              AUTO(auto_init_norm)),
    KEY_FLOAT("lr", "1e-4", 1e-12, 10, lr, "model", "Adam learning rate after warm-up"),
    KEY_FLOAT("adam_beta1", "0.9", 0, 1, adam_beta1, "model", "Adam: decay of the first moment, in [0, 1)"),
    KEY_FLOAT("adam_beta2", "0.999", 0, 1, adam_beta2, "model", "Adam: decay of the second moment, in [0, 1)"),
    KEY_FLOAT("adam_eps", "1e-8", 1e-30, 1, adam_eps, "model", "Adam: epsilon added to the root of the second moment"),
    KEY_FLOAT("clip_norm", "auto", 0, 1e12, clip_norm, "model",
              "clip the global gradient norm at this value; 0 = off; auto = 1.0 for batchtopk, off for l1",
              AUTO(auto_clip_norm)),
    KEY_INT("warmup_steps", "1000", 0, 1e9, warmup_steps, "model", "linear learning-rate warm-up steps"),
    KEY_INT("decay_start", "0", 0, BIG, decay_start, "model",
            "step at which linear decay to 0 starts; 0 = constant learning rate"),
    KEY_INT("total_steps", "0", 0, BIG, total_steps, "model",
            "end of the linear decay (needed when decay_start > 0)"),
    KEY_INT("max_tokens", "0", 0, BIG, max_tokens, "model",
            "token budget: once the model has trained this many tokens (counted across resumes) training "
            "stops after that step, a final checkpoint is written and further batches are refused with "
            "XC_ESTATE; status shows tokens_budget, budget_fraction and eta_s; 0 = no budget"),
    KEY_BOOL("lr_decay_to_budget", "off", lr_decay_to_budget, "model",
             "on: the linear learning-rate decay ends at the budget (total_steps = ceil(max_tokens / "
             "batch_size)); needs max_tokens and decay_start"),
    KEY_ENUM("loss", "l2", g_losses, loss, "model",
             "reconstruction term: l2 (un-squared norm, reference default) or mse (squared)"),
    KEY_FLOAT("l1_coef", "0.041", 0, 1e6, l1_coef, "model", "L1 model: sparsity coefficient mu"),
    KEY_FLOAT("aux_coef", "0.03125", 0, 1e6, aux_coef, "model", "BatchTopK: AuxK loss weight (1/32)"),
    KEY_INT("dead_tokens", "10000000", 1, BIG, dead_tokens, "model",
            "a latent unfired for this many tokens is dead (AuxK, dead fraction)"),
    KEY_INT("threshold_start_step", "1000", 0, BIG, threshold_start_step, "model",
            "BatchTopK: the inference threshold theta is estimated after this step"),
    KEY_FLOAT("threshold_beta", "0.999", 0, 1, threshold_beta, "model",
              "BatchTopK: theta's moving-average factor (theta = beta theta + (1 - beta) this step's "
              "smallest selected score)"),
    KEY_INT("seed", "0", 0, BIG, seed, "model", "random seed (initialisation and the mixing buffer's draws)"),
    KEY_INT("threads", "0", 0, 256, threads, "model", "compute threads of the trainer; 0 = all online CPUs"),
    KEY_ENUM("encoder_precision", "auto", g_precs, encoder_precision, "model",
             "BatchTopK encoder product: auto = int8 where the CPU has VNNI, else bf16 where it has native "
             "BF16, else fp32; the selection stays exact (candidates recomputed in fp32, the step redone in "
             "fp32 when a margin check fails); a precision the CPU or build lacks runs fp32 with a warning"),
    KEY_ENUM("normalize", "off", g_norms, normalize, "model",
             "activation normalisation as the reference's NormalizableMixin: global = mean subtracted and one "
             "scale per model, target_rms / sqrt(sum of the variances) (keep_relative_variance, the "
             "reference's default); neuron = per-dimension z-scoring; statistics from a pass over the first "
             "normalize_tokens tokens, during which training waits; written into the checkpoint's "
             "activation_mean / activation_std / activation_global_scale / target_rms; off = train on the "
             "activations as sent"),
    KEY_INT("normalize_tokens", "100000", 2, BIG, normalize_tokens, "model",
            "tokens of the normalisation statistics pass (the first ones that arrive, after the exclusions "
            "below); those that fit in the mixing buffer are trained on after the pass, the rest only feed "
            "the statistics (counted in tokens_stats_only)"),
    KEY_FLOAT("target_rms", "100", 1e-12, 1e12, target_rms, "model",
              "normalize = global: the root of the summed per-dimension variances after scaling (diffing-toolkit "
              "uses 100; the reference class's default is 1)"),
    KEY_INT("exclude_positions_below", "0", 0, 4294967295.0, exclude_positions_below, "model",
            "tokens sent with a document position below this (e.g. 1: the first token of every document, "
            "whose norm is often 10-100x the rest) are neither trained on nor used for statistics; counted "
            "in tokens_excluded_position; tokens sent without positions are kept; 0 = none"),
    KEY_FLOAT("outlier_norm_factor", "0", 0, 1e12, outlier_norm_factor, "model",
              "tokens whose activation norm in either model exceeds this factor x that model's median norm in "
              "the batch they arrived in (batches of 16 tokens or more; smaller ones use the last such median) "
              "are neither trained on nor used for statistics; counted in tokens_excluded_outlier; 0 = off"),
    /* service */
    KEY_INT("queue_size", "64", 1, 1e6, queue_size, "service",
            "accepted batches waiting for the trainer; when full the daemon stops reading the ingest "
            "socket (backpressure); with stream_mix, per stream (a full stream's batches are held instead)"),
    KEY_INT("mix_tokens", "0", 0, 1e9, mix_tokens, "service",
            "mixing buffer size in tokens (training batches are drawn at random from it); "
            "0 = 8 x batch_size; must be >= batch_size"),
    KEY_STR("stream_mix", "", stream_mix, "service",
            "training mixture by stream tag, e.g. web:0.5,chat:0.5 (weights, normalised): every training batch "
            "takes each stream's share of batch_size tokens, and a stream that arrives faster waits (its "
            "producers' acks are held) instead of crowding out a slower one; '*:W' takes every other stream, "
            "untagged batches included; without '*' such batches are refused with XC_EINVAL; empty = no "
            "mixture (batches trained in the proportion they arrive)"),
    KEY_INT("stream_hold", "64", 1, 1e6, stream_hold, "service",
            "with stream_mix: batches of streams ahead of the mixture held unanswered (their producers wait), "
            "all streams together; when this many are held the daemon stops reading ingest, so keep it above "
            "the in-flight windows of the fast streams' producers (8 each by default)"),
    KEY_INT("max_msg_bytes", "67108864", 1024, 4e9, max_msg_bytes, "service",
            "largest ingest message accepted (all frames); larger ones get an XC_ETOOBIG nack, and a "
            "single frame over twice this makes ZeroMQ drop the connection"),
    KEY_INT("memory_limit", "0", 0, 9e18, memory_limit, "service",
            "bytes: refuse to start when the configured worst case exceeds this (model, Adam, queue of "
            "queue_size x max_msg_bytes, mixing buffer, 64 MiB reply backlog, and max_connections x what "
            "ZeroMQ may buffer per connection: (ingest_hwm + 1) x 2 x max_msg_bytes on ingest, about 13 MiB "
            "on control, 16 MiB on events; the log and status state the bound); set it below the unit's "
            "MemoryMax=; 0 = no check"),
    KEY_INT("max_connections", "64", 1, 1e6, max_connections, "service",
            "live connections allowed on each socket (ingest, control, events counted apart); one more is "
            "refused at the handshake (ZAP status 300) and counted (connections_refused): memory stays "
            "bounded whatever peers do"),
    KEY_INT("ingest_hwm", "16", 1, 1e6, ingest_hwm, "service",
            "ZeroMQ receive high-water mark of the ingest socket (messages, per connection; 1 acts as 2)"),
    KEY_FLOAT("stats_interval", "1", 0.05, 86400, stats_interval, "service", "seconds between stats events",
              RELOAD(XC_CFG_HOOK_TIMERS)),
    KEY_FLOAT("mpi_timeout", "120", 1, 86400, mpi_timeout, "service",
              "mpirun -np R (R > 1): seconds a collective may make no progress before the job ends with an "
              "error (a rank died, hung or lost its link); above the slowest rank's step time"),
    KEY_FLOAT("checkpoint_interval", "1800", 0, 1e9, checkpoint_interval, "service",
              "seconds between periodic checkpoints; 0 = only on request and at shutdown",
              RELOAD(XC_CFG_HOOK_TIMERS)),
    KEY_INT("checkpoint_steps", "0", 0, BIG, checkpoint_steps, "service",
            "also write a checkpoint every this many training steps; 0 = off", RELOAD(XC_CFG_HOOK_CHECKPOINT)),
    KEY_INT("checkpoint_keep", "3", 0, 1e6, checkpoint_keep, "service",
            "checkpoints of the current run kept in state_dir (each a model file and its .resume "
            "training state); older ones are removed after a new one is written; 0 = keep all",
            RELOAD(XC_CFG_HOOK_CHECKPOINT)),
    KEY_FLOAT("max_abs_value", "1e6", 0, 3e38, max_abs_value, "service",
              "batches holding a value of larger magnitude are refused with XC_ERANGE (finite values near the "
              "float range, e.g. bf16 0x7f7f, overflow the training step); 0 = no limit",
              RELOAD(XC_CFG_HOOK_NONE)),
    KEY_FLOAT("dead_alert_jump", "0.05", 0, 1, dead_alert_jump, "service",
              "publish an alert when the dead fraction rises by at least this much between stats events",
              RELOAD(XC_CFG_HOOK_NONE)),
    KEY_STR("metrics_file", "", metrics_file, "service",
            "Prometheus metrics in the text format, rewritten atomically (temp file + rename, mode 0644) "
            "every metrics_interval seconds, e.g. into node-exporter's textfile directory "
            "/var/lib/prometheus/node-exporter/xcoderd-NAME.prom; empty = off; `xcoder metrics` prints the "
            "same text",
            RELOAD(XC_CFG_HOOK_TIMERS)),
    KEY_FLOAT("metrics_interval", "15", 0.01, 86400, metrics_interval, "service",
              "seconds between rewrites of metrics_file", RELOAD(XC_CFG_HOOK_TIMERS)),
    KEY_INT("history_max_bytes", "67108864", 0, BIG, history_max_bytes, "service",
            "every stats event is also appended as a JSON line to STATE_DIR/history.jsonl (`xcoder history`); "
            "when the next line would pass this size the file is renamed to history.jsonl.1 (replacing the "
            "older one) and a new one begun; 0 = no history",
            RELOAD(XC_CFG_HOOK_NONE)),
    /* analysis */
    KEY_FLOAT("stats_half_life", "1000000", 1, 1e15, stats_half_life, "analysis",
              "tokens; half-life of each latent's firing-frequency average"),
    KEY_BOOL("scaling_running", "on", scaling_running, "analysis",
             "keep running Latent Scaling estimates during training (0.4% of a step at d=768, "
             "dict_size=16384: make bench, scaling_cost_fraction)"),
    KEY_FLOAT("scaling_half_life", "1000000", 1, 1e15, scaling_half_life, "analysis",
              "tokens; window (exponential half-life) of the running Latent Scaling estimates"),
    KEY_INT("scaling_max_tokens", "1000000000", 1, 1099511627776.0, scaling_max_tokens, "analysis",
            "largest exact Latent Scaling pass a request may ask for (tokens); larger requests get XC_EINVAL",
            .reloadable = 1),
    KEY_FLOAT("scaling_min_active", "20", 0, 1e15, scaling_min_active, "analysis",
              "activations a latent needs before its beta and nu are defined (else NaN / null)"),
    KEY_FLOAT("scaling_nu_min_z", "2", 0, 1e6, scaling_nu_min_z, "analysis",
              "nu = beta_base / beta_chat is unstable when |beta_chat| < this x the standard error of beta_chat "
              "(flag nu_unstable); such a latent is never chat-specific; 0 = off"),
    KEY_BOOL("shm", "on", shm, "analysis",
             "publish per-latent statistics in POSIX shared memory /xcoderd.NAME (proto/SHM.md)"),
    KEY_STR("shm_mode", "0640", shm_mode, "analysis", "permission bits (octal) of the shared-memory object"),
    KEY_FLOAT("shm_interval", "1", 0.01, 86400, shm_interval, "analysis",
              "seconds between shared-memory updates (taken between training steps)"),
    KEY_FLOAT("chat_only_min", "0.9", 0, 1, chat_only_min, "analysis",
              "class chat-only: relative decoder norm >= this"),
    KEY_FLOAT("base_only_max", "0.1", 0, 1, base_only_max, "analysis",
              "class base-only: relative decoder norm <= this"),
    KEY_FLOAT("shared_lo", "0.4", 0, 1, shared_lo, "analysis",
              "class shared: shared_lo <= relative decoder norm < shared_hi"),
    KEY_FLOAT("shared_hi", "0.6", 0, 1, shared_hi, "analysis", "upper bound of the shared class"),
    KEY_FLOAT("nu_err_max", "0.2", 0, 1e6, nu_err_max, "analysis", "chat-specific: chat-only and nu_err below this"),
    KEY_FLOAT("nu_rec_max", "0.5", 0, 1e6, nu_rec_max, "analysis", "chat-specific: chat-only and nu_rec below this"),
    /* examples (daemon/xc_examples.h) */
    KEY_INT("examples_top", "20", 0, 255, examples_top, "analysis",
            "max-activating examples kept per latent (the `examples` op); 0 with examples_random 0 = off"),
    KEY_INT("examples_random", "5", 0, 255, examples_random, "analysis",
            "random activating examples kept per latent (a uniform reservoir sample)"),
    KEY_INT("examples_window", "16", 0, 1024, examples_window, "analysis",
            "token ids kept each side of an example (its context window)"),
    KEY_INT("examples_store_tokens", "0", 0, 1073741824, examples_store_tokens, "analysis",
            "recent tokens (ids, documents, positions) kept to cut windows from, 24 bytes each; "
            "0 = 16 x mix_tokens, at least 65536"),
    KEY_INT("examples_vocab_bytes", "8388608", 8, 2147483648.0, examples_vocab_bytes, "analysis",
            "bytes for the vocabularies producers register (every stream together)"),
    KEY_STR("vocab_file", "", vocab_file, "analysis",
            "default vocabulary (token id -> text) for streams without their own: a JSON array of strings, a "
            "{piece: id} object or a tokenizer.json; empty = none"),
    {.name = NULL},
};

const xc_cfg_key_t *xc_cfg_keys(void) { return g_keys; }

const xc_cfg_key_t *xc_cfg_key(const char *name)
{
    for (const xc_cfg_key_t *k = g_keys; k->name; k++)
        if (name && strcmp(k->name, name) == 0) return k;
    return NULL;
}

/* Edit distance, for "did you mean" on unknown keys. */
static int edit_distance(const char *a, const char *b)
{
    int la = (int)strlen(a), lb = (int)strlen(b), prev[64], cur[64];
    if (la > 63 || lb > 63) return 99;
    for (int j = 0; j <= lb; j++) prev[j] = j;
    for (int i = 1; i <= la; i++) {
        cur[0] = i;
        for (int j = 1; j <= lb; j++) {
            int c = prev[j - 1] + (a[i - 1] != b[j - 1]);
            if (prev[j] + 1 < c) c = prev[j] + 1;
            if (cur[j - 1] + 1 < c) c = cur[j - 1] + 1;
            cur[j] = c;
        }
        memcpy(prev, cur, sizeof(int) * (size_t)(lb + 1));
    }
    return prev[lb];
}

/* Unknown keys are almost always typos: suggest the nearest known key when it
 * is close enough (edit distance < 4) to be the one meant. */
static int unknown_key(const char *key, char *why, size_t why_len)
{
    const char *best = NULL;
    int bd = 4;
    for (const xc_cfg_key_t *k = g_keys; k->name; k++) {
        int dd = edit_distance(key, k->name);
        if (dd < bd) {
            bd = dd;
            best = k->name;
        }
    }
    if (best)
        xc_why(why, why_len, "unknown config key '%s' (did you mean '%s'? --help lists all keys)", key,
                best);
    else
        xc_why(why, why_len, "unknown config key '%s' (--help lists all keys)", key);
    return XC_ENOTFOUND;
}

/* The index of v among an ENUM key's names, or -1. */
static int choice_index(const xc_cfg_key_t *k, const char *v)
{
    for (int i = 0; k->names[i]; i++)
        if (strcmp(k->names[i], v) == 0) return i;
    return -1;
}

/* An ENUM key's names as the help shows them ("a|b|c"; on|off for BOOL). */
static const char *choices_text(const xc_cfg_key_t *k, char *buf, size_t len)
{
    size_t used = 0;
    if (k->type == XC_CFG_BOOL) return "on|off";
    buf[0] = 0;
    for (int i = 0; k->names[i] && used < len; i++) {
        int n = snprintf(buf + used, len - used, "%s%s", i ? "|" : "", k->names[i]);
        if (n > 0) used += (size_t)n;
    }
    return buf;
}

/* Parses value as k's type, checks it against k's bounds or names, and stores
 * it; nothing is written on error. Integers may be written 1e6-style (never
 * octal); "auto" is accepted where the key has an auto value (stored as NaN). */
static int set_key(xc_cfg_t *c, const xc_cfg_key_t *k, const char *value, char *why, size_t why_len)
{
    char *base = (char *)c + k->offset, *end, buf[128];
    switch (k->type) {
    case XC_CFG_INT: {
        errno = 0;
        double dv;
        long long v = strtoll(value, &end, 10);
        if (errno == 0 && end != value && *end == 0) {
            dv = (double)v;
        } else { /* accept 1e6-style integers */
            errno = 0;
            dv = strtod(value, &end);
            if (end == value || *end || errno || dv != floor(dv)) {
                xc_why(why, why_len, "%s must be an integer, got '%s'", k->name, value);
                return XC_ECONFIG;
            }
            v = (long long)dv;
        }
        if (dv < k->min || dv > k->max) {
            xc_why(why, why_len, "%s must be in [%.15g, %.15g], got %s", k->name, k->min, k->max, value);
            return XC_ECONFIG;
        }
        *(long *)base = (long)v;
        return XC_OK;
    }
    case XC_CFG_FLOAT: {
        if (k->auto_value && strcmp(value, "auto") == 0) {
            *(double *)base = NAN;
            return XC_OK;
        }
        errno = 0;
        double v = strtod(value, &end);
        if (end == value || *end || errno || !isfinite(v)) {
            xc_why(why, why_len, "%s must be a number%s, got '%s'", k->name, k->auto_value ? " or auto" : "",
                   value);
            return XC_ECONFIG;
        }
        if (v < k->min || v > k->max) {
            xc_why(why, why_len, "%s must be in [%g, %g], got %s", k->name, k->min, k->max, value);
            return XC_ECONFIG;
        }
        *(double *)base = v;
        return XC_OK;
    }
    case XC_CFG_ENUM:
    case XC_CFG_BOOL: {
        int i = choice_index(k, value);
        if (i < 0) {
            xc_why(why, why_len, "%s must be one of %s, got '%s'", k->name, choices_text(k, buf, sizeof buf),
                   value);
            return XC_ECONFIG;
        }
        *(int *)base = i; /* the enum's value (BOOL: off 0, on 1) */
        return XC_OK;
    }
    case XC_CFG_STR:
        if (strlen(value) >= k->size) {
            xc_why(why, why_len, "%s is longer than %zu bytes", k->name, k->size - 1);
            return XC_ECONFIG;
        }
        strcpy(base, value);
        return XC_OK;
    }
    return XC_ECONFIG;
}

int xc_cfg_set(xc_cfg_t *c, const char *key, const char *value, char *why, size_t why_len)
{
    const xc_cfg_key_t *k = xc_cfg_key(key);
    if (!k) return unknown_key(key ? key : "", why, why_len);
    if (!value) {
        xc_why(why, why_len, "%s needs a value", key);
        return XC_ECONFIG;
    }
    return set_key(c, k, value, why, why_len);
}

/* Defaults go through the same parser as user values, so a default is never a
 * value the parser would reject; a bad one is a build bug and aborts at once. */
void xc_cfg_defaults(xc_cfg_t *c)
{
    char why[128];
    memset(c, 0, sizeof *c);
    for (const xc_cfg_key_t *k = g_keys; k->name; k++)
        if (set_key(c, k, k->def, why, sizeof why)) abort(); /* a bad default is a build bug */
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = 0;
    return s;
}

/* Line by line, each error naming file and line; the first bad line stops the
 * load (a half-applied file would be worse than none). */
int xc_cfg_load_file(xc_cfg_t *c, const char *path, char *why, size_t why_len)
{
    char line[4096], sub[256];
    int lineno = 0, rc = XC_OK;
    FILE *f = fopen(path, "r");
    if (!f) {
        xc_why(why, why_len, "cannot read config file %s: %s", path, strerror(errno));
        return XC_EIO;
    }
    while (fgets(line, sizeof line, f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) {
            xc_why(why, why_len, "%s:%d: line longer than %zu bytes", path, lineno, sizeof line - 2);
            rc = XC_ECONFIG;
            goto out_close;
        }
        char *s = line, *q = NULL;
        /* strip a comment that is not inside quotes */
        for (char *p = s; *p; p++) {
            if (*p == '"') q = q ? NULL : p;
            else if (*p == '#' && !q) {
                *p = 0;
                break;
            }
        }
        s = trim(s);
        if (!*s) continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            xc_why(why, why_len, "%s:%d: expected 'key = value', got '%.60s'", path, lineno, s);
            rc = XC_ECONFIG;
            goto out_close;
        }
        *eq = 0;
        char *key = trim(s), *val = trim(eq + 1);
        size_t vl = strlen(val);
        if (vl >= 2 && val[0] == '"' && val[vl - 1] == '"') {
            val[vl - 1] = 0;
            val++;
        }
        rc = xc_cfg_set(c, key, val, sub, sizeof sub);
        if (rc) {
            xc_why(why, why_len, "%s:%d: %s", path, lineno, sub);
            goto out_close;
        }
    }
    if (ferror(f)) {
        xc_why(why, why_len, "error reading %s: %s", path, strerror(errno));
        rc = XC_EIO;
    }
out_close:
    fclose(f);
    return rc;
}

/* Two passes over argv so --config FILE applies before every --KEY, wherever
 * it stands on the line: the command line always wins over the file. */
int xc_cfg_load(xc_cfg_t *c, int argc, char **argv, xc_cfg_cli_t *cli, char *why, size_t why_len)
{
    int rc;
    memset(cli, 0, sizeof *cli);
    xc_cfg_defaults(c);
    /* pass 1: flags and --config, so the file is applied before the other keys */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            cli->help = 1;
        } else if (strcmp(a, "--print-config") == 0) {
            cli->print_config = 1;
        } else if (strcmp(a, "--print-example") == 0) {
            cli->print_example = 1;
        } else if (strcmp(a, "--config") == 0) {
            if (i + 1 >= argc) {
                xc_why(why, why_len, "--config needs a file name");
                return XC_ECONFIG;
            }
            cli->config = argv[++i];
        } else if (strncmp(a, "--config=", 9) == 0) {
            cli->config = a + 9;
        } else if (strcmp(a, "--fresh") == 0) {
            c->fresh = 1;
        } else if (strcmp(a, "--resume") == 0 || strncmp(a, "--resume=", 9) == 0) {
            const char *p = a[8] == '=' ? a + 9 : i + 1 < argc ? argv[++i] : NULL;
            if (!p || !*p || strlen(p) >= sizeof c->resume) {
                xc_why(why, why_len, "--resume needs a checkpoint file (NAME-STEP.safetensors or its .resume file)");
                return XC_ECONFIG;
            }
            strcpy(c->resume, p);
        } else if (strncmp(a, "--", 2) == 0 && !strchr(a, '=')) {
            i++; /* skip its value in this pass */
        }
    }
    if (cli->help || cli->print_example) return XC_OK;
    if (c->fresh && c->resume[0]) {
        xc_why(why, why_len, "--fresh and --resume exclude each other");
        return XC_ECONFIG;
    }
    if (cli->config && (rc = xc_cfg_load_file(c, cli->config, why, why_len))) return rc;
    /* pass 2: --KEY VALUE and --KEY=VALUE */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        char key[128];
        const char *val;
        if (strcmp(a, "--print-config") == 0 || strcmp(a, "--print-example") == 0) continue;
        if (strcmp(a, "--config") == 0) {
            i++;
            continue;
        }
        if (strncmp(a, "--config=", 9) == 0 || strcmp(a, "--fresh") == 0 || strncmp(a, "--resume=", 9) == 0) continue;
        if (strcmp(a, "--resume") == 0) {
            i++;
            continue;
        }
        if (strncmp(a, "--", 2) != 0) {
            xc_why(why, why_len, "unexpected argument '%s' (options are --KEY VALUE; see --help)", a);
            return XC_ECONFIG;
        }
        const char *eq = strchr(a + 2, '=');
        size_t kl = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        if (kl >= sizeof key) kl = sizeof key - 1;
        memcpy(key, a + 2, kl);
        key[kl] = 0;
        for (char *p = key; *p; p++)
            if (*p == '-') *p = '_'; /* --batch-size works like --batch_size */
        if (eq) {
            val = eq + 1;
        } else {
            if (!xc_cfg_key(key)) return unknown_key(key, why, why_len);
            if (i + 1 >= argc) {
                xc_why(why, why_len, "--%s needs a value", key);
                return XC_ECONFIG;
            }
            val = argv[++i];
        }
        if ((rc = xc_cfg_set(c, key, val, why, why_len))) return rc;
    }
    return xc_cfg_finalize(c, why, why_len);
}

/* An empty endpoint becomes ipc://RUN_DIR/SOCK; refused when the path would not
 * fit a Unix socket address, which ZeroMQ would only report at bind time. */
static int endpoint_default(char *dst, size_t len, const char *run_dir, const char *sock,
                            const char *key, char *why, size_t why_len)
{
    if (dst[0]) return XC_OK;
    int n = snprintf(dst, len, "ipc://%s/%s", run_dir, sock);
    /* sun_path holds 107 bytes */
    if (n < 0 || (size_t)n >= len || strlen(run_dir) + 1 + strlen(sock) > 107) {
        dst[0] = 0;
        xc_why(why, why_len,
                "run_dir '%s' is too long for an ipc:// socket path (107 bytes); choose a shorter "
                "run_dir or set %s explicitly",
                run_dir, key);
        return XC_ECONFIG;
    }
    return XC_OK;
}

/* What no single key can check: derived defaults, then the rules across keys,
 * then the engine's own validation of the configuration it will receive (so a
 * bad value fails at start-up, with the key named, not at the first step). */
int xc_cfg_finalize(xc_cfg_t *c, char *why, size_t why_len)
{
    int rc;
    for (const char *p = c->name; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '_' && *p != '-') {
            xc_why(why, why_len, "name '%s' may only hold letters, digits, '.', '_' and '-'", c->name);
            return XC_ECONFIG;
        }
    if (!c->name[0]) {
        xc_why(why, why_len, "name must not be empty");
        return XC_ECONFIG;
    }
    if (!c->run_dir[0]) {
        const char *x = getenv("XDG_RUNTIME_DIR");
        int n = x && *x ? snprintf(c->run_dir, sizeof c->run_dir, "%s/xcoderd-%s", x, c->name)
                        : snprintf(c->run_dir, sizeof c->run_dir, "/tmp/xcoderd-%s", c->name);
        if (n < 0 || (size_t)n >= sizeof c->run_dir) {
            xc_why(why, why_len, "derived run_dir is too long; set run_dir");
            return XC_ECONFIG;
        }
    }
    if (!c->state_dir[0]) {
        int n = snprintf(c->state_dir, sizeof c->state_dir, "%s/state", c->run_dir);
        if (n < 0 || (size_t)n >= sizeof c->state_dir) {
            xc_why(why, why_len, "derived state_dir is too long; set state_dir");
            return XC_ECONFIG;
        }
    }
    if ((rc = endpoint_default(c->ingest, sizeof c->ingest, c->run_dir, "ingest.sock", "ingest", why,
                               why_len)))
        return rc;
    if ((rc = endpoint_default(c->control, sizeof c->control, c->run_dir, "control.sock", "control",
                               why, why_len)))
        return rc;
    if ((rc = endpoint_default(c->events, sizeof c->events, c->run_dir, "events.sock", "events", why,
                               why_len)))
        return rc;
    if (c->lr_decay_to_budget) { /* the decay (decay_start -> total_steps) ends at the budget's last step */
        if (c->max_tokens <= 0 || c->decay_start <= 0) {
            xc_why(why, why_len, "lr_decay_to_budget needs max_tokens (the budget) and decay_start (the step the "
                   "decay begins)");
            return XC_ECONFIG;
        }
        long steps = (c->max_tokens + c->batch_size - 1) / c->batch_size;
        if (c->total_steps && c->total_steps != steps) {
            xc_why(why, why_len, "total_steps (%ld) contradicts lr_decay_to_budget (max_tokens / batch_size = %ld "
                   "steps); leave total_steps unset", c->total_steps, steps);
            return XC_ECONFIG;
        }
        if (steps <= c->decay_start) {
            xc_why(why, why_len, "decay_start (%ld) must be below the budget's %ld steps (max_tokens / batch_size)",
                   c->decay_start, steps);
            return XC_ECONFIG;
        }
        c->total_steps = steps;
    }
    if (c->mix_tokens == 0) c->mix_tokens = 8 * c->batch_size;
    if (c->mix_tokens < c->batch_size) {
        xc_why(why, why_len, "mix_tokens (%ld) must be >= batch_size (%ld)", c->mix_tokens,
                c->batch_size);
        return XC_ECONFIG;
    }
    {
        xc_mix_spec_t mix;
        if (xc_mix_parse(c->stream_mix, &mix, why, why_len)) return XC_ECONFIG;
    }
    if (c->examples_top + c->examples_random > 255) {
        xc_why(why, why_len, "examples_top + examples_random (%ld) must be at most 255",
                c->examples_top + c->examples_random);
        return XC_ECONFIG;
    }
    if (c->examples_store_tokens && c->examples_store_tokens < 2 * c->examples_window + 1) {
        xc_why(why, why_len, "examples_store_tokens (%ld) must hold a window (2 x examples_window + 1)",
                c->examples_store_tokens);
        return XC_ECONFIG;
    }
    if (c->model == XC_MODEL_BATCHTOPK && c->k > c->dict_size) {
        xc_why(why, why_len, "k (%ld) must be <= dict_size (%ld)", c->k, c->dict_size);
        return XC_ECONFIG;
    }
    if (c->max_msg_bytes < 2 * c->d * 2 + 64) {
        xc_why(why, why_len, "max_msg_bytes (%ld) cannot hold even one f16 token of d = %ld",
                c->max_msg_bytes, c->d);
        return XC_ECONFIG;
    }
    if (c->model == XC_MODEL_BATCHTOPK && c->code_normalization == XC_CODE_DECOUPLED && c->normalize != 0)
        xc_log(XC_LOG_WARN, "code_normalization = decoupled with normalize on: the reference's encode_decoupled "
               "normalises the encoder's input a second time (it calls CrossCoder.encode with normalisation on), "
               "xcoderd once; the two models differ there (README \"The engine\")");
    xc_engine_config_t ec;
    xc_cfg_engine(c, &ec);
    char ew[200];
    if (xc_engine_config_validate(&ec, ew, sizeof ew)) {
        xc_why(why, why_len, "%s", ew);
        return XC_ECONFIG;
    }
    unsigned mode;
    if (xc_cfg_shm_mode(c, &mode)) {
        xc_why(why, why_len, "shm_mode must be octal permission bits such as 0640, got '%s'", c->shm_mode);
        return XC_ECONFIG;
    }
    if (!(c->shared_lo < c->shared_hi)) {
        xc_why(why, why_len, "shared_lo (%g) must be below shared_hi (%g)", c->shared_lo, c->shared_hi);
        return XC_ECONFIG;
    }
    double bound = xc_cfg_memory_bound(c, NULL);
    if (c->memory_limit > 0 && bound > (double)c->memory_limit) {
        xc_why(why, why_len, "the configuration may use %.0f MiB, more than memory_limit (%.0f MiB): lower "
               "queue_size (%ld), max_msg_bytes (%ld), max_connections (%ld) or ingest_hwm (%ld), or raise "
               "memory_limit", bound / 1048576.0, (double)c->memory_limit / 1048576.0, c->queue_size,
               c->max_msg_bytes, c->max_connections, c->ingest_hwm);
        return XC_ECONFIG;
    }
    return XC_OK;
}

long xc_cfg_ingest_rcvhwm(const xc_cfg_t *c) { return c->ingest_hwm < 2 ? 2 : c->ingest_hwm; }

double xc_cfg_memory_bound(const xc_cfg_t *c, double *per_connection)
{
    /* engine: encoder and decoder (2 x F x 2d floats each), with Adam's two
     * moments and a gradient: 4 copies; the checkpoint copy once more */
    double model = 5.0 * 2.0 * (double)c->dict_size * 2.0 * (double)c->d * 4.0;
    /* queued batches are stored as f32: an f16/bf16 message doubles */
    char mwhy[8];
    xc_mix_spec_t ms;
    if (xc_mix_parse(c->stream_mix, &ms, mwhy, sizeof mwhy)) ms.n = 0;
    /* a queue lane per stream of the mixture, and the batches held for full streams */
    double queue = (double)c->queue_size * xc_mix_lanes(&ms) * 2.0 * (double)c->max_msg_bytes;
    if (ms.n > 0) queue += (double)c->stream_hold * 2.0 * (double)c->max_msg_bytes;
    /* the lanes round their shares up: at most one slot more each */
    double mix = (double)(c->mix_tokens + ms.n) * 2.0 * (double)c->d * 4.0;
    double backlog = 64.0 * 1048576.0; /* control replies waiting (svc_loop.c) */
    /* per connection, ZeroMQ holds up to its receive high-water mark of
     * messages plus the one being decoded, and its send high-water mark of
     * replies or events; frames are capped by ZMQ_MAXMSGSIZE. The largest
     * control reply: a 1 MiB fetch chunk, or a full table (~256 bytes a latent). */
    double reply = (double)c->dict_size * 256.0 > 1048576.0 ? (double)c->dict_size * 256.0 : 1048576.0;
    double ingest = ((double)xc_cfg_ingest_rcvhwm(c) + 1.0) * 2.0 * (double)c->max_msg_bytes;
    double control = (XC_CFG_CONTROL_RCVHWM + 1.0) * XC_CFG_CONTROL_FRAME_MAX + XC_CFG_CONTROL_SNDHWM * reply;
    double events = (XC_CFG_EVENTS_RCVHWM + 1.0) * XC_CFG_EVENTS_FRAME_MAX + (double)XC_CFG_EVENTS_SNDHWM * XC_CFG_EVENT_MAX;
    double per = ingest + control + events + 3.0 * XC_CFG_CONN_OVERHEAD;
    if (per_connection) *per_connection = per;
    return model + queue + mix + backlog + (double)c->max_connections * per;
}

/* A FLOAT key's effective value: its own, or what "auto" stands for in c. */
static double resolved(const xc_cfg_t *c, const xc_cfg_key_t *k)
{
    double v = *(const double *)((const char *)c + k->offset);
    return isnan(v) && k->auto_value ? k->auto_value(c) : v;
}

/* Every engine field from its key: the engine keeps no defaults of its own,
 * so a value here is the value the model trains with. */
void xc_cfg_engine(const xc_cfg_t *c, xc_engine_config_t *ec)
{
    memset(ec, 0, sizeof *ec);
    ec->model = c->model;
    ec->d = (int)c->d;
    ec->dict_size = (int)c->dict_size;
    ec->k = (int)c->k;
    ec->k_max = (int)c->k_max;
    ec->k_annealing_steps = c->k_annealing_steps;
    ec->code_norm = c->code_normalization;
    ec->code_alpha_sae = (float)c->code_normalization_alpha_sae;
    ec->code_alpha_cc = (float)c->code_normalization_alpha_cc;
    ec->batch_size = (int)c->batch_size;
    ec->init_norm = (float)resolved(c, xc_cfg_key("init_norm"));
    ec->lr = (float)c->lr;
    ec->adam_beta1 = (float)c->adam_beta1;
    ec->adam_beta2 = (float)c->adam_beta2;
    ec->adam_eps = (float)c->adam_eps;
    ec->clip_norm = (float)resolved(c, xc_cfg_key("clip_norm"));
    ec->warmup_steps = (int)c->warmup_steps;
    ec->decay_start = c->decay_start;
    ec->total_steps = c->total_steps;
    ec->loss = c->loss;
    ec->l1_coef = (float)c->l1_coef;
    ec->aux_coef = (float)c->aux_coef;
    ec->dead_tokens = c->dead_tokens;
    ec->threshold_start_step = c->threshold_start_step;
    ec->threshold_beta = (float)c->threshold_beta;
    ec->seed = (uint64_t)c->seed;
    ec->threads = (int)c->threads;
    ec->stats_half_life = c->stats_half_life;
    ec->scaling_half_life = c->scaling_half_life;
    ec->scaling_min_active = c->scaling_min_active;
    ec->scaling_nu_min_z = c->scaling_nu_min_z;
    ec->scaling_running = c->scaling_running;
    ec->encoder_precision = c->encoder_precision;
}

void xc_cfg_engine_defaults(xc_engine_config_t *ec, xc_model_kind_t model)
{
    xc_cfg_t c;
    xc_cfg_defaults(&c);
    c.model = model;
    xc_cfg_engine(&c, ec);
}

const char *xc_cfg_enum_name(const char *key, int value)
{
    const xc_cfg_key_t *k = xc_cfg_key(key);
    if (!k || (k->type != XC_CFG_ENUM && k->type != XC_CFG_BOOL) || value < 0) return NULL;
    for (int i = 0; k->names[i]; i++)
        if (i == value) return k->names[i];
    return NULL;
}

void xc_cfg_apply_log_level(void *ctx, const xc_cfg_t *c)
{
    (void)ctx;
    xc_log_set_level(c->log_level);
}

int xc_cfg_shm_mode(const xc_cfg_t *c, unsigned *mode)
{
    char *end;
    long v = strtol(c->shm_mode, &end, 8);
    if (!c->shm_mode[0] || *end || v < 0 || v > 0777) return XC_ECONFIG;
    *mode = (unsigned)v;
    return XC_OK;
}

void xc_cfg_thresholds(const xc_cfg_t *c, xc_class_thresholds_t *t)
{
    t->chat_only_min = (float)c->chat_only_min;
    t->base_only_max = (float)c->base_only_max;
    t->shared_lo = (float)c->shared_lo;
    t->shared_hi = (float)c->shared_hi;
    t->nu_err_max = (float)c->nu_err_max;
    t->nu_rec_max = (float)c->nu_rec_max;
}

/* A key's value as the config file writes it (so --print-config loads back
 * to the same configuration): "auto" stays auto, enums by name. */
static void value_text(const xc_cfg_t *c, const xc_cfg_key_t *k, char *out, size_t len)
{
    const char *base = (const char *)c + k->offset;
    switch (k->type) {
    case XC_CFG_INT: snprintf(out, len, "%ld", *(const long *)base); break;
    case XC_CFG_FLOAT:
        if (k->auto_value && isnan(*(const double *)base)) snprintf(out, len, "auto");
        else snprintf(out, len, "%.15g", *(const double *)base);
        break;
    case XC_CFG_ENUM:
    case XC_CFG_BOOL: snprintf(out, len, "%s", k->names[*(const int *)base]); break;
    default: snprintf(out, len, "%s", base); break;
    }
}

int xc_cfg_get(const xc_cfg_t *c, const char *key, char *out, size_t out_len)
{
    const xc_cfg_key_t *k = xc_cfg_key(key);
    if (!k) return XC_ENOTFOUND;
    value_text(c, k, out, out_len);
    return XC_OK;
}

/* A key for the `config` op and the checkpoint's config record: numbers as
 * numbers (an "auto" key as the value it resolves to, so readers always get a
 * number), enums by name, strings as strings. */
static void key_to_mp(const xc_cfg_t *c, const xc_cfg_key_t *k, xc_mpw_t *w)
{
    const char *base = (const char *)c + k->offset;
    xc_mpw_str(w, k->name);
    switch (k->type) {
    case XC_CFG_INT: xc_mpw_int(w, *(const long *)base); break;
    case XC_CFG_FLOAT: xc_mpw_double(w, resolved(c, k)); break;
    case XC_CFG_ENUM:
    case XC_CFG_BOOL: xc_mpw_str(w, k->names[*(const int *)base]); break;
    default: xc_mpw_str(w, base); break;
    }
}

int xc_cfg_to_mp(const xc_cfg_t *c, const char *key, xc_mpw_t *w)
{
    if (key) {
        const xc_cfg_key_t *k = xc_cfg_key(key);
        if (!k) return XC_ENOTFOUND;
        key_to_mp(c, k, w);
        return XC_OK;
    }
    for (const xc_cfg_key_t *k = g_keys; k->name; k++) key_to_mp(c, k, w);
    return XC_OK;
}

/* Redis-style reload: each changed reloadable key is copied, then the hooks of
 * the changed keys run once each, in hook order, on the new configuration. */
int xc_cfg_apply_reload(xc_cfg_t *cur, const xc_cfg_t *next, const xc_cfg_hooks_t *hooks,
                        char *changed_fixed, size_t len)
{
    int applied = 0;
    unsigned fire = 0;
    size_t used = 0;
    if (changed_fixed && len) changed_fixed[0] = 0;
    for (const xc_cfg_key_t *k = g_keys; k->name; k++) {
        char *a = (char *)cur + k->offset;
        const char *b = (const char *)next + k->offset;
        if (memcmp(a, b, k->size) == 0) continue;
        if (k->reloadable) {
            memcpy(a, b, k->size);
            applied++;
            fire |= 1u << k->hook;
        } else if (changed_fixed && used < len) {
            int n = snprintf(changed_fixed + used, len - used, "%s%s", used ? ", " : "", k->name);
            if (n > 0) used += (size_t)n;
        }
    }
    for (int h = XC_CFG_HOOK_NONE + 1; hooks && h < XC_CFG_HOOK_N; h++)
        if ((fire >> h & 1u) && hooks->fn[h]) hooks->fn[h](hooks->ctx, cur);
    return applied;
}

static const char *type_name(const xc_cfg_key_t *k, char *buf, size_t len)
{
    switch (k->type) {
    case XC_CFG_INT: return "int";
    case XC_CFG_FLOAT: return k->auto_value ? "float|auto" : "float";
    case XC_CFG_ENUM:
    case XC_CFG_BOOL: return choices_text(k, buf, len);
    default: return "string";
    }
}

/* --help: generated from the table, so it cannot drift from what is parsed. */
void xc_cfg_print_help(FILE *f, const char *argv0)
{
    const char *sec = "";
    char buf[128];
    fprintf(f,
            "usage: %s [--config FILE] [--KEY VALUE | --KEY=VALUE ...] [--resume CKPT | --fresh]\n"
            "       %s [--print-config | --print-example | --help]\n"
            "\n"
            "xcoderd trains a crosscoder on activations streamed over ZeroMQ (proto/PROTOCOL.md).\n"
            "Every key below can be set in the config file (`key = value`) or on the command line;\n"
            "the command line wins. Keys marked [reload] are re-read on SIGHUP.\n"
            "--print-config prints the effective configuration as a config file and exits;\n"
            "--print-example prints the documented default file (systemd/xcoderd.conf.example).\n"
            "Signals: SIGTERM/SIGINT stop intake, finish the step, checkpoint, exit 0; SIGHUP reloads.\n"
            "At start the newest valid checkpoint of NAME in state_dir is loaded and training goes on\n"
            "from it (torn or corrupt ones are skipped; one of another shape or model is refused);\n"
            "--resume CKPT loads that checkpoint (either file of its pair) instead; --fresh starts a\n"
            "new model and leaves existing checkpoints alone (proto/CHECKPOINT.md).\n",
            argv0, argv0);
    for (const xc_cfg_key_t *k = g_keys; k->name; k++) {
        if (strcmp(sec, k->section) != 0) {
            sec = k->section;
            fprintf(f, "\n%s:\n", sec);
        }
        fprintf(f, "  --%-22s %s (default: %s)%s\n      %s\n", k->name, type_name(k, buf, sizeof buf),
                k->def[0] ? k->def : "\"\"", k->reloadable ? " [reload]" : "", k->help);
    }
}

/* Wraps help text into '# ' comment lines of at most ~88 columns. */
static void print_comment(FILE *f, const char *text)
{
    const char *p = text;
    while (*p) {
        size_t n = strlen(p);
        if (n > 86) {
            n = 86;
            while (n > 20 && p[n] != ' ') n--;
        }
        fprintf(f, "# %.*s\n", (int)n, p);
        p += n;
        while (*p == ' ') p++;
    }
}

/* The example file (c NULL: defaults, commented out) or the effective
 * configuration, both from the table; test_config checks the shipped example
 * is this output byte for byte. */
void xc_cfg_print_file(FILE *f, const xc_cfg_t *c)
{
    const char *sec = "";
    char v[XC_CFG_STR_MAX + 8], buf[128];
    fprintf(f, "# xcoderd configuration (`key = value`, '#' starts a comment).\n"
               "# Every key can also be given on the command line as --KEY VALUE (which wins).\n"
               "# Keys marked [reload] take effect on SIGHUP; the others need a restart.\n");
    for (const xc_cfg_key_t *k = g_keys; k->name; k++) {
        if (strcmp(sec, k->section) != 0) {
            sec = k->section;
            fprintf(f, "\n# ---- %s ----\n", sec);
        }
        fprintf(f, "\n");
        print_comment(f, k->help);
        fprintf(f, "# type: %s; default: %s%s\n", type_name(k, buf, sizeof buf), k->def[0] ? k->def : "\"\"",
                k->reloadable ? " [reload]" : "");
        if (c) {
            value_text(c, k, v, sizeof v);
            fprintf(f, k->type == XC_CFG_STR ? "%s = \"%s\"\n" : "%s = %s\n", k->name, v);
        } else {
            fprintf(f, k->type == XC_CFG_STR ? "#%s = \"%s\"\n" : "#%s = %s\n", k->name, k->def);
        }
    }
}
