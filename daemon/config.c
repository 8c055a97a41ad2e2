/* The configuration table and everything it drives (see xc_config.h). */
#include "xc_config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define F(field) offsetof(xc_cfg_t, field), sizeof(((xc_cfg_t *)0)->field)
#define BIG 9.2e18

/* The one table. Keep it in the order the file and --help show it. */
static const xc_cfg_key_t g_keys[] = {
    /* instance and files */
    {"name", XC_CFG_STR, "default", 0, 0, NULL, F(name), 0, "instance",
     "instance name: tags events, log lines and checkpoint files; [A-Za-z0-9._-], at most 63 bytes"},
    {"run_dir", XC_CFG_STR, "", 0, 0, NULL, F(run_dir), 0, "instance",
     "directory of the ipc:// sockets; empty = $XDG_RUNTIME_DIR/xcoderd-NAME, or /tmp/xcoderd-NAME "
     "without XDG_RUNTIME_DIR; created if missing"},
    {"state_dir", XC_CFG_STR, "", 0, 0, NULL, F(state_dir), 0, "instance",
     "directory for checkpoints; empty = RUN_DIR/state; created if missing"},
    {"ingest", XC_CFG_STR, "", 0, 0, NULL, F(ingest), 0, "instance",
     "ingest endpoint (ROUTER, producers connect DEALER); empty = ipc://RUN_DIR/ingest.sock; "
     "tcp://HOST:PORT works too"},
    {"control", XC_CFG_STR, "", 0, 0, NULL, F(control), 0, "instance",
     "control endpoint (ROUTER, request/reply); empty = ipc://RUN_DIR/control.sock"},
    {"events", XC_CFG_STR, "", 0, 0, NULL, F(events), 0, "instance",
     "events endpoint (PUB); empty = ipc://RUN_DIR/events.sock"},
    {"log_level", XC_CFG_ENUM, "info", 0, 0, "debug|info|warn|error", F(log_level), 1, "instance",
     "least severe log level written"},
    {"log_file", XC_CFG_STR, "", 0, 0, NULL, F(log_file), 1, "instance",
     "append log lines to this file instead of stderr; reopened on SIGHUP (log rotation)"},
    /* security: CurveZMQ on tcp endpoints (README "Security") */
    {"curve_secret_key", XC_CFG_STR, "", 0, 0, NULL, F(curve_secret_key), 0, "security",
     "the daemon's CURVE key file (from `xcoderd --keygen BASE`: BASE.key, mode 0600); when set, "
     "every tcp:// endpoint requires CURVE and a client key listed in an allow-list; empty = no "
     "encryption or authentication"},
    {"allow_producers", XC_CFG_STR, "", 0, 0, NULL, F(allow_producers), 1, "security",
     "file of client public keys (one per line, or `cat NAME.pub >> FILE`) allowed to push batches"},
    {"allow_readers", XC_CFG_STR, "", 0, 0, NULL, F(allow_readers), 1, "security",
     "file of client public keys allowed to read: status, latent, top, table, events, metrics, "
     "checkpoints, fetch of model files"},
    {"allow_admins", XC_CFG_STR, "", 0, 0, NULL, F(allow_admins), 1, "security",
     "file of client public keys allowed everything: pause, resume, checkpoint, scaling, shutdown, "
     "fetch of training-state files (which hold producers' raw activations)"},
    {"insecure_tcp", XC_CFG_ENUM, "off", 0, 0, "on|off", F(insecure_tcp), 0, "security",
     "on: allow binding a non-loopback tcp address without curve_secret_key (anyone who reaches "
     "it owns the daemon); the daemon refuses to start that way otherwise"},
    /* model and training */
    {"model", XC_CFG_ENUM, "batchtopk", 0, 0, "batchtopk|l1", F(model), 0, "model",
     "crosscoder kind: batchtopk (recommended) or l1 (the baseline with sparsity artefacts)"},
    {"d", XC_CFG_INT, "64", 1, 1048576, NULL, F(d), 0, "model",
     "activation width of each model (Gemma 2 2B residual: 2304); every batch must match"},
    {"dict_size", XC_CFG_INT, "1024", 1, 1e8, NULL, F(dict_size), 0, "model",
     "number of latents F (paper: 73728)"},
    {"k", XC_CFG_INT, "8", 1, 1e8, NULL, F(k), 0, "model",
     "BatchTopK: mean active latents per token (paper: 100); must be <= dict_size"},
    {"batch_size", XC_CFG_INT, "256", 1, 1e7, NULL, F(batch_size), 0, "model",
     "tokens per training step B (paper: 2048)"},
    {"lr", XC_CFG_FLOAT, "1e-4", 1e-12, 10, NULL, F(lr), 0, "model",
     "Adam learning rate after warm-up"},
    {"warmup_steps", XC_CFG_INT, "1000", 0, 1e9, NULL, F(warmup_steps), 0, "model",
     "linear learning-rate warm-up steps"},
    {"decay_start", XC_CFG_INT, "0", 0, BIG, NULL, F(decay_start), 0, "model",
     "step at which linear decay to 0 starts; 0 = constant learning rate"},
    {"total_steps", XC_CFG_INT, "0", 0, BIG, NULL, F(total_steps), 0, "model",
     "end of the linear decay (needed when decay_start > 0)"},
    {"loss", XC_CFG_ENUM, "l2", 0, 0, "l2|mse", F(loss), 0, "model",
     "reconstruction term: l2 (un-squared norm, reference default) or mse (squared)"},
    {"l1_coef", XC_CFG_FLOAT, "0.041", 0, 1e6, NULL, F(l1_coef), 0, "model",
     "L1 model: sparsity coefficient mu"},
    {"aux_coef", XC_CFG_FLOAT, "0.03125", 0, 1e6, NULL, F(aux_coef), 0, "model",
     "BatchTopK: AuxK loss weight (1/32)"},
    {"dead_tokens", XC_CFG_INT, "10000000", 1, BIG, NULL, F(dead_tokens), 0, "model",
     "a latent unfired for this many tokens is dead (AuxK, dead fraction)"},
    {"threshold_start_step", XC_CFG_INT, "1000", 0, BIG, NULL, F(threshold_start_step), 0, "model",
     "BatchTopK: the inference threshold theta is estimated after this step"},
    {"seed", XC_CFG_INT, "0", 0, BIG, NULL, F(seed), 0, "model",
     "random seed (initialisation and the mixing buffer's draws)"},
    {"threads", XC_CFG_INT, "0", 0, 256, NULL, F(threads), 0, "model",
     "compute threads of the trainer; 0 = all online CPUs"},
    /* service */
    {"queue_size", XC_CFG_INT, "64", 1, 1e6, NULL, F(queue_size), 0, "service",
     "accepted batches waiting for the trainer; when full the daemon stops reading the ingest "
     "socket (backpressure)"},
    {"mix_tokens", XC_CFG_INT, "0", 0, 1e9, NULL, F(mix_tokens), 0, "service",
     "mixing buffer size in tokens (training batches are drawn at random from it); "
     "0 = 8 x batch_size; must be >= batch_size"},
    {"max_msg_bytes", XC_CFG_INT, "67108864", 1024, 4e9, NULL, F(max_msg_bytes), 0, "service",
     "largest ingest message accepted (all frames); larger ones get an XC_ETOOBIG nack, and a "
     "single frame over twice this makes ZeroMQ drop the connection"},
    {"ingest_hwm", XC_CFG_INT, "16", 1, 1e6, NULL, F(ingest_hwm), 0, "service",
     "ZeroMQ receive high-water mark of the ingest socket (messages)"},
    {"stats_interval", XC_CFG_FLOAT, "1", 0.05, 86400, NULL, F(stats_interval), 1, "service",
     "seconds between stats events"},
    {"checkpoint_interval", XC_CFG_FLOAT, "1800", 0, 1e9, NULL, F(checkpoint_interval), 1, "service",
     "seconds between periodic checkpoints; 0 = only on request and at shutdown"},
    {"checkpoint_steps", XC_CFG_INT, "0", 0, BIG, NULL, F(checkpoint_steps), 1, "service",
     "also write a checkpoint every this many training steps; 0 = off"},
    {"checkpoint_keep", XC_CFG_INT, "3", 0, 1e6, NULL, F(checkpoint_keep), 1, "service",
     "checkpoints of the current run kept in state_dir (each a model file and its .resume "
     "training state); older ones are removed after a new one is written; 0 = keep all"},
    {"max_abs_value", XC_CFG_FLOAT, "1e6", 0, 3e38, NULL, F(max_abs_value), 1, "service",
     "batches holding a value of larger magnitude are refused with XC_ERANGE (finite values near the "
     "float range, e.g. bf16 0x7f7f, overflow the training step); 0 = no limit"},
    {"dead_alert_jump", XC_CFG_FLOAT, "0.05", 0, 1, NULL, F(dead_alert_jump), 1, "service",
     "publish an alert when the dead fraction rises by at least this much between stats events"},
    {"metrics_file", XC_CFG_STR, "", 0, 0, NULL, F(metrics_file), 1, "service",
     "Prometheus metrics in the text format, rewritten atomically (temp file + rename, mode 0644) "
     "every metrics_interval seconds, e.g. into node-exporter's textfile directory "
     "/var/lib/prometheus/node-exporter/xcoderd-NAME.prom; empty = off; `xcoder metrics` prints the "
     "same text"},
    {"metrics_interval", XC_CFG_FLOAT, "15", 0.01, 86400, NULL, F(metrics_interval), 1, "service",
     "seconds between rewrites of metrics_file"},
    /* analysis */
    {"stats_half_life", XC_CFG_FLOAT, "1000000", 1, 1e15, NULL, F(stats_half_life), 0, "analysis",
     "tokens; half-life of each latent's firing-frequency average"},
    {"scaling_running", XC_CFG_ENUM, "on", 0, 0, "on|off", F(scaling_running), 0, "analysis",
     "keep running Latent Scaling estimates during training (0.4% of a step at d=768, dict_size=16384: make bench, scaling_cost_fraction)"},
    {"scaling_half_life", XC_CFG_FLOAT, "1000000", 1, 1e15, NULL, F(scaling_half_life), 0, "analysis",
     "tokens; window (exponential half-life) of the running Latent Scaling estimates"},
    {"scaling_min_active", XC_CFG_FLOAT, "20", 0, 1e15, NULL, F(scaling_min_active), 0, "analysis",
     "activations a latent needs before its beta and nu are defined (else NaN / null)"},
    {"shm", XC_CFG_ENUM, "on", 0, 0, "on|off", F(shm), 0, "analysis",
     "publish per-latent statistics in POSIX shared memory /xcoderd.NAME (proto/SHM.md)"},
    {"shm_mode", XC_CFG_STR, "0640", 0, 0, NULL, F(shm_mode), 0, "analysis",
     "permission bits (octal) of the shared-memory object"},
    {"shm_interval", XC_CFG_FLOAT, "1", 0.01, 86400, NULL, F(shm_interval), 0, "analysis",
     "seconds between shared-memory updates (taken between training steps)"},
    {"chat_only_min", XC_CFG_FLOAT, "0.9", 0, 1, NULL, F(chat_only_min), 0, "analysis",
     "class chat-only: relative decoder norm >= this"},
    {"base_only_max", XC_CFG_FLOAT, "0.1", 0, 1, NULL, F(base_only_max), 0, "analysis",
     "class base-only: relative decoder norm <= this"},
    {"shared_lo", XC_CFG_FLOAT, "0.4", 0, 1, NULL, F(shared_lo), 0, "analysis",
     "class shared: shared_lo <= relative decoder norm < shared_hi"},
    {"shared_hi", XC_CFG_FLOAT, "0.6", 0, 1, NULL, F(shared_hi), 0, "analysis",
     "upper bound of the shared class"},
    {"nu_err_max", XC_CFG_FLOAT, "0.2", 0, 1e6, NULL, F(nu_err_max), 0, "analysis",
     "chat-specific: chat-only and nu_err below this"},
    {"nu_rec_max", XC_CFG_FLOAT, "0.5", 0, 1e6, NULL, F(nu_rec_max), 0, "analysis",
     "chat-specific: chat-only and nu_rec below this"},
    /* examples (daemon/xc_examples.h) */
    {"examples_top", XC_CFG_INT, "20", 0, 255, NULL, F(examples_top), 0, "analysis",
     "max-activating examples kept per latent (the `examples` op); 0 with examples_random 0 = off"},
    {"examples_random", XC_CFG_INT, "5", 0, 255, NULL, F(examples_random), 0, "analysis",
     "random activating examples kept per latent (a uniform reservoir sample)"},
    {"examples_window", XC_CFG_INT, "16", 0, 1024, NULL, F(examples_window), 0, "analysis",
     "token ids kept each side of an example (its context window)"},
    {"examples_store_tokens", XC_CFG_INT, "0", 0, 1073741824, NULL, F(examples_store_tokens), 0, "analysis",
     "recent tokens (ids, documents, positions) kept to cut windows from, 24 bytes each; "
     "0 = 16 x mix_tokens, at least 65536"},
    {"examples_vocab_bytes", XC_CFG_INT, "8388608", 8, 2147483648.0, NULL, F(examples_vocab_bytes), 0, "analysis",
     "bytes for the vocabularies producers register (every stream together)"},
    {"vocab_file", XC_CFG_STR, "", 0, 0, NULL, F(vocab_file), 0, "analysis",
     "default vocabulary (token id -> text) for streams without their own: a JSON array of strings, a "
     "{piece: id} object or a tokenizer.json; empty = none"},
    {NULL, 0, NULL, 0, 0, NULL, 0, 0, 0, NULL, NULL},
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

static int choice_ok(const char *choices, const char *v)
{
    size_t vl = strlen(v);
    const char *p = choices;
    while (*p) {
        const char *e = strchr(p, '|');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == vl && strncmp(p, v, l) == 0) return 1;
        if (!e) break;
        p = e + 1;
    }
    return 0;
}

static int set_key(xc_cfg_t *c, const xc_cfg_key_t *k, const char *value, char *why, size_t why_len)
{
    char *base = (char *)c + k->offset, *end;
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
        errno = 0;
        double v = strtod(value, &end);
        if (end == value || *end || errno || !isfinite(v)) {
            xc_why(why, why_len, "%s must be a number, got '%s'", k->name, value);
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
        if (!choice_ok(k->choices, value)) {
            xc_why(why, why_len, "%s must be one of %s, got '%s'", k->name, k->choices, value);
            return XC_ECONFIG;
        }
        break; /* stored as a string, below */
    case XC_CFG_STR:
        break;
    }
    if (k->type == XC_CFG_STR || k->type == XC_CFG_ENUM) {
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
    if (c->mix_tokens == 0) c->mix_tokens = 8 * c->batch_size;
    if (c->mix_tokens < c->batch_size) {
        xc_why(why, why_len, "mix_tokens (%ld) must be >= batch_size (%ld)", c->mix_tokens,
                c->batch_size);
        return XC_ECONFIG;
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
    if (strcmp(c->model, "batchtopk") == 0 && c->k > c->dict_size) {
        xc_why(why, why_len, "k (%ld) must be <= dict_size (%ld)", c->k, c->dict_size);
        return XC_ECONFIG;
    }
    if (c->max_msg_bytes < 2 * c->d * 2 + 64) {
        xc_why(why, why_len, "max_msg_bytes (%ld) cannot hold even one f16 token of d = %ld",
                c->max_msg_bytes, c->d);
        return XC_ECONFIG;
    }
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
    return XC_OK;
}

void xc_cfg_engine(const xc_cfg_t *c, xc_engine_config_t *ec)
{
    xc_model_kind_t kind = strcmp(c->model, "l1") == 0 ? XC_MODEL_L1 : XC_MODEL_BATCHTOPK;
    xc_engine_config_default(ec, kind);
    ec->d = (int)c->d;
    ec->dict_size = (int)c->dict_size;
    ec->k = (int)c->k;
    ec->batch_size = (int)c->batch_size;
    ec->lr = (float)c->lr;
    ec->warmup_steps = (int)c->warmup_steps;
    ec->decay_start = c->decay_start;
    ec->total_steps = c->total_steps;
    ec->loss = strcmp(c->loss, "mse") == 0 ? XC_LOSS_MSE : XC_LOSS_L2;
    ec->l1_coef = (float)c->l1_coef;
    ec->aux_coef = (float)c->aux_coef;
    ec->dead_tokens = c->dead_tokens;
    ec->threshold_start_step = c->threshold_start_step;
    ec->seed = (uint64_t)c->seed;
    ec->threads = (int)c->threads;
    ec->stats_half_life = c->stats_half_life;
    ec->scaling_half_life = c->scaling_half_life;
    ec->scaling_min_active = c->scaling_min_active;
    ec->scaling_running = strcmp(c->scaling_running, "on") == 0;
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

static void value_text(const xc_cfg_t *c, const xc_cfg_key_t *k, char *out, size_t len)
{
    const char *base = (const char *)c + k->offset;
    switch (k->type) {
    case XC_CFG_INT: snprintf(out, len, "%ld", *(const long *)base); break;
    case XC_CFG_FLOAT: snprintf(out, len, "%.15g", *(const double *)base); break;
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

static void key_to_mp(const xc_cfg_t *c, const xc_cfg_key_t *k, xc_mpw_t *w)
{
    const char *base = (const char *)c + k->offset;
    xc_mpw_str(w, k->name);
    switch (k->type) {
    case XC_CFG_INT: xc_mpw_int(w, *(const long *)base); break;
    case XC_CFG_FLOAT: xc_mpw_double(w, *(const double *)base); break;
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

int xc_cfg_apply_reload(xc_cfg_t *cur, const xc_cfg_t *next, char *changed_fixed, size_t len)
{
    int applied = 0;
    size_t used = 0;
    if (changed_fixed && len) changed_fixed[0] = 0;
    for (const xc_cfg_key_t *k = g_keys; k->name; k++) {
        char *a = (char *)cur + k->offset;
        const char *b = (const char *)next + k->offset;
        if (memcmp(a, b, k->size) == 0) continue;
        if (k->reloadable) {
            memcpy(a, b, k->size);
            applied++;
        } else if (changed_fixed && used < len) {
            int n = snprintf(changed_fixed + used, len - used, "%s%s", used ? ", " : "", k->name);
            if (n > 0) used += (size_t)n;
        }
    }
    return applied;
}

static const char *type_name(const xc_cfg_key_t *k)
{
    switch (k->type) {
    case XC_CFG_INT: return "int";
    case XC_CFG_FLOAT: return "float";
    case XC_CFG_ENUM: return k->choices;
    default: return "string";
    }
}

void xc_cfg_print_help(FILE *f, const char *argv0)
{
    const char *sec = "";
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
        fprintf(f, "  --%-22s %s (default: %s)%s\n      %s\n", k->name, type_name(k),
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

void xc_cfg_print_file(FILE *f, const xc_cfg_t *c)
{
    const char *sec = "";
    char v[XC_CFG_STR_MAX + 8];
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
        fprintf(f, "# type: %s; default: %s%s\n", type_name(k), k->def[0] ? k->def : "\"\"",
                k->reloadable ? " [reload]" : "");
        if (c) {
            value_text(c, k, v, sizeof v);
            fprintf(f, k->type == XC_CFG_STR ? "%s = \"%s\"\n" : "%s = %s\n", k->name, v);
        } else {
            fprintf(f, k->type == XC_CFG_STR ? "#%s = \"%s\"\n" : "#%s = %s\n", k->name, k->def);
        }
    }
}
