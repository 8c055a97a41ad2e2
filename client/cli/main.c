/* `xcoder`: the command line client of xcoderd. This file holds the command
 * table, argument parsing, help, and the helpers every command shares. */
#include "xc_cli.h"
#include "xc_cli_remote.h"
#include "xc_cli_ckpt.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ the commands */

static const xc_cli_optdef_t no_opts[] = {{NULL, NULL, NULL}};

static const xc_cli_optdef_t push_opts[] = {
    {"batch", "N", "tokens per message (default 4096; the daemon re-batches them)"},
    {"window", "W", "messages in flight before waiting for acks (default 8)"},
    {"producer", "ID", "producer id shown in the daemon's logs (default xcoder-push)"},
    {"quiet", NULL, "no progress line"},
    {NULL, NULL, NULL}};

#define SOURCE_OPT {"source", "S", "auto (shared memory when local, else the control socket), shm or control"}
static const xc_cli_optdef_t latents_opts[] = {
    {"top", "N", "how many latents (default 10)"},
    {"by", "FIELD", "sort field, one of: " XC_LAT_FIELD_NAMES "(default delta_norm)"},
    {"asc", NULL, "smallest first"},
    {"alive", NULL, "skip dead latents"},
    {"class", "C", "only chat_only, base_only, shared, other, dead or chat_specific latents"},
    SOURCE_OPT,
    {NULL, NULL, NULL}};

static const xc_cli_optdef_t latent_opts[] = {SOURCE_OPT, {NULL, NULL, NULL}};
static const xc_cli_optdef_t examples_opts[] = {
    {"n", "N", "examples of each kind (top, random) to show (default 20)"},
    {"checkpoint", "CKPT", "offline: the dictionary (a model or training-state file) to find the examples of"},
    {"data", "ACTS.npy", "offline: activations [N, 2, d] (float32 or float16)"},
    {"tokens", "IDS.npy", "offline: the token ids [N] (int32/int64)"},
    {"docs", "DOCS.npy", "offline: document ids [N] (windows stop at their edges; default: one document)"},
    {"vocab", "V.json", "offline: the text of each id (a JSON array, {piece: id} or tokenizer.json)"},
    {"window", "W", "offline: tokens each side of an example (default 16)"},
    {NULL, NULL, NULL}};

static const xc_cli_optdef_t scaling_opts[] = {
    {"tokens", "N", "tokens in the exact pass (default: the daemon's, 1,000,000)"},
    {"wait", NULL, "wait for the pass to finish, then summarise it (--timeout: longest time without progress)"},
    {"top", "N", "chat-only latents listed after --wait (default 10)"},
    {"cancel", NULL, "cancel the pass under way"},
    {"checkpoint", "FILE", "offline: the dictionary of this model file (no daemon; needs --data)"},
    {"data", "FILE.npy", "offline: activations [N, 2, d] (float32 or float16) to compute β/ν over"},
    {"min-active", "N", "offline: activations a latent needs for a defined β (default: the checkpoint's "
                        "scaling_min_active)"},
    {"quiet", NULL, "no progress line"},
    SOURCE_OPT,
    {NULL, NULL, NULL}};

static const xc_cli_optdef_t shutdown_opts[] = {
    {"wait", NULL, "wait until the daemon has stopped answering (checkpoint written, exited)"},
    {NULL, NULL, NULL}};

static const xc_cli_optdef_t watch_opts[] = {
    {"interval", "S", "seconds between refreshes (default 1)"},
    {"count", "N", "stop after N frames (default 0: until Ctrl-C)"},
    {"plain", NULL, "no ANSI codes: print frames one after another (default when stdout is not a terminal)"},
    {"ansi", NULL, "refresh in place with ANSI codes even when stdout is not a terminal"},
    {"bins", "N", "Δnorm histogram bins (default 10)"},
    SOURCE_OPT,
    {NULL, NULL, NULL}};

static const xc_cli_optdef_t events_opts[] = {
    {"topic", "T", "topic prefix: stats, checkpoint, alert (default: all)"},
    {"count", "N", "stop after N events (default 0: until Ctrl-C)"},
    {"wait", "S", "give up after S seconds without an event (default 0: never)"},
    {NULL, NULL, NULL}};

static const xc_cli_optdef_t history_opts[] = {
    {"count", "N", "the newest N stats events (default 20, at most 100000; a reply holds at most 4 MiB)"},
    {NULL, NULL, NULL}};

static const xc_cli_optdef_t synth_opts[] = {
    {"tokens", "N", "tokens to send (default 0: until Ctrl-C)"},
    {"rate", "R", "tokens per second (default 0: as fast as the daemon accepts)"},
    {"batch", "N", "tokens per message (default 1024)"},
    {"d", "D", "activation width (default: the daemon's d, asked with `config`)"},
    {"dtype", "T", "wire dtype: f32, f16 or bf16 (default f32)"},
    {"window", "W", "messages in flight before waiting for acks (default 8)"},
    {"producer", "ID", "producer id (default xcoder-synth)"},
    {"stream", "TAG", "stream tag of the batches (default synth); token ids name each token's strongest planted "
                      "feature, documents are 64 tokens, and a vocabulary names the features"},
    {"out", "FILE", "write a .npy file [N, 2, d] instead of sending (needs --tokens and --d)"},
    {"quiet", NULL, "no progress line"},
    XC_CLI_SYNTH_SHAPE_OPTS,
    {NULL, NULL, NULL}};

static const xc_cli_optdef_t report_opts[] = {
    {"checkpoint", "FILE", "checkpoint to read (default: the daemon's newest)"},
    {"new-checkpoint", NULL, "have the daemon write a checkpoint now and report on it"},
    {"synthetic", NULL, "show the planted-feature recovery of `xcoder synth` (default: only for runs fed by "
                        "xcoder synth alone, or when a planted-feature option is given)"},
    {"top", "N", "chat-only latents to list (default 10)"},
    {"offline", NULL, "do not contact the daemon (needs --checkpoint; no firing statistics)"},
    {"d", "D", "activation width of the planted features (default: the checkpoint's)"},
    XC_CLI_SYNTH_SHAPE_OPTS,
    {NULL, NULL, NULL}};

static const xc_cli_optdef_t dashboard_opts[] = {
    {"host", "ADDR", "address to serve on (default 127.0.0.1)"},
    {"port", "N", "port (default 8765; 0 = any free port)"},
    {"admin", NULL, "enable the admin buttons with a random token, printed in the URL"},
    {"admin-token-file", "FILE", "enable them for browsers presenting the token in FILE"},
    {"poll", "S", "seconds between health checks of the daemon (default 1)"},
    {"history", "N", "time-series points kept (default 3600)"},
    {NULL, NULL, NULL}};

static const xc_cli_cmd_t commands[] = {
    {"push", "FILE.npy", "send a .npy file of activations [N, 2, d] (float32 or float16)",
     "Streams the array in messages of --batch tokens, keeping at most --window of them\n"
     "unacknowledged (the daemon slows the producer down when training falls behind).\n"
     "Stops at the first refused batch and prints the daemon's reason.",
     push_opts, 1, 1, 1, xc_cli_cmd_push},
    {"status", "", "training state: step, tokens, losses, FVE, L0, dead latents, queue",
     "One `status` request; --json prints the daemon's whole reply.", no_opts, 0, 0, 1, xc_cli_cmd_status},
    {"ping", "", "check that the daemon answers", "Prints the instance name and uptime.", no_opts, 0, 0, 1,
     xc_cli_cmd_ping},
    {"watch", "", "live view: step, tokens/s, losses, FVE, L0, dead %, a Δnorm histogram",
     "Polls `status` every --interval seconds and redraws in place; the Δnorm histogram,\n"
     "class counts and ν summary come from shared memory when local (--source), else `top`.\n"
     "Ctrl-C stops it. Use --count to run it non-interactively.",
     watch_opts, 0, 0, 0, xc_cli_cmd_watch},
    {"latents", "", "top latents by a statistic",
     "Lists the --top N latents ordered by --by (descending unless --asc; undefined values\n"
     "last), with class, chat-specific flag and running/exact Latent Scaling ν. Reads the\n"
     "daemon's shared memory when it is on this machine (--source), else asks the daemon.",
     latents_opts, 0, 0, 1, xc_cli_cmd_latents},
    {"latent", "J", "statistics of latent J",
     "Decoder norms, Δnorm, cosine, class, firing statistics, and the running and exact\n"
     "Latent Scaling β/ν (null where undefined). Same sources as `latents`.",
     latent_opts, 1, 1, 1, xc_cli_cmd_latent},
    {"examples", "J", "the token contexts that activate latent J most (and a random sample)",
     "The daemon keeps, for every latent, the --n most activating token occurrences seen in\n"
     "training and a uniform random sample of its activations, each with its stream, document,\n"
     "position and a window of token ids (text when the producer registered a vocabulary).\n"
     "Each line: activation, stream doc:position, the window with the token in [[ ]].\n"
     "Offline, on your data: --checkpoint CKPT --data ACTS.npy --tokens IDS.npy [--docs]\n"
     "[--vocab] gives every latent's --n top examples for that frozen dictionary (threshold\n"
     "mode, one streaming pass), each window with the latent's activation at every token.",
     examples_opts, 0, 1, 1, xc_cli_cmd_examples},
    {"scaling", "", "run an exact Latent Scaling pass (and with --wait, summarise it)",
     "Asks the daemon to freeze its dictionary and compute exact β/ν over the next --tokens\n"
     "trained tokens. With --wait, waits for the pass (the 'scaling' event; --timeout is the\n"
     "longest wait without progress, 0 = forever) showing tokens done of the target with an\n"
     "ETA, then prints the chat-only and chat-specific counts and the top chat-only latents\n"
     "with their exact ν^ε and ν^r; when a pass is already under way, --wait waits for that\n"
     "one. --cancel stops the pass under way.\n"
     "Offline, with --checkpoint CKPT --data FILE.npy: the same exact pass (the engine's code)\n"
     "over the activations you give, e.g. a held-out set, with no daemon; --json gives every\n"
     "latent's β, ν, activation count and Δnorm (null where undefined).",
     scaling_opts, 0, 0, 1, xc_cli_cmd_scaling},
    {"checkpoint", "", "write a checkpoint now and print its path",
     "Replies once the file is written (temp file, fsync, rename).", no_opts, 0, 0, 1, xc_cli_cmd_checkpoint},
    {"pause", "", "pause training (intake continues until the queue is full)", "", no_opts, 0, 0, 1,
     xc_cli_cmd_pause},
    {"resume", "", "resume training", "", no_opts, 0, 0, 1, xc_cli_cmd_resume},
    {"shutdown", "", "stop the daemon cleanly (finish the step, checkpoint, exit)",
     "Same as SIGTERM. --wait returns only once the daemon no longer answers.", shutdown_opts, 0, 0, 1,
     xc_cli_cmd_shutdown},
    {"config", "[KEY]", "the daemon's effective configuration (or one key)", "", no_opts, 0, 1, 1,
     xc_cli_cmd_config},
    {"events", "", "print events (stats, checkpoint, alert) as they arrive",
     "One line per event; with --json one JSON object per line.", events_opts, 0, 0, 1, xc_cli_cmd_events},
    {"metrics", "", "Prometheus metrics of the daemon (text format, as in its metrics_file)",
     "Asks the daemon for its metrics (the `metrics` op) and prints them unchanged: the same\n"
     "renderer writes metrics_file for node-exporter's textfile collector (xcoderd(8)).",
     no_opts, 0, 0, 0, xc_cli_cmd_metrics},
    {"history", "", "the stats history: loss, FVE, L0, dead fraction over time",
     "Asks the daemon for the newest -n N lines of its history (STATE_DIR/history.jsonl: every\n"
     "stats event, kept across restarts, rotated at history_max_bytes) and shows them as a\n"
     "table, oldest first; --json prints the lines unchanged, one JSON object per line.",
     history_opts, 0, 0, 1, xc_cli_cmd_history},
    {"synth", "", "produce synthetic activations with planted features",
     "Generates paired base/chat activations from known sparse features (shared,\n"
     "chat-only, base-only, shrunk) and streams them to the daemon at --rate, or writes\n"
     "them to a .npy file with --out. The same --seed and shape options give the same\n"
     "features, so `xcoder report` can later check what the crosscoder recovered.",
     synth_opts, 0, 0, 1, xc_cli_cmd_synth},
    {"report", "", "what the crosscoder learned: latent classes, chat-only latents, recovery",
     "Reads a checkpoint's decoder (the daemon's newest; --checkpoint FILE, or\n"
     "--new-checkpoint to have one written first), classifies latents by Δnorm (chat-only\n"
     "Δ >= 0.9, base-only Δ <= 0.1, shared 0.4 <= Δ < 0.6) and lists the top chat-only\n"
     "latents. For a run fed by `xcoder synth` alone (the daemon's status names its\n"
     "producers), or with --synthetic or a planted-feature option, it also matches the\n"
     "decoder against the planted features (same --seed and shape options) to say how\n"
     "well they were recovered.",
     report_opts, 0, 0, 1, xc_cli_cmd_report},
    {"keygen", "BASE", "make a CURVE key pair: BASE.key (secret, mode 0600) and BASE.pub",
     "For tcp endpoints of a daemon with curve_secret_key: give BASE.pub to the daemon's\n"
     "operator (who appends it to allow_producers, allow_readers or allow_admins) and use\n"
     "--key BASE.key (or XCODER_CLIENT_KEY) with --server-key (or XCODER_SERVER_KEY).\n"
     "Existing files are never overwritten.",
     no_opts, 1, 1, 0, xc_cli_cmd_keygen},
    {"dashboard", "", "live web dashboard of the daemon (a Node.js process; prints its URL)",
     "Runs node on client/js/dashboard/server.js (found next to this binary, or\n"
     "$XCODER_DASHBOARD) with the endpoints and keys the other commands use: overview curves,\n"
     "the latents' Δnorm histogram, ν scatter and table, one page per latent. Bound to\n"
     "127.0.0.1 by default; read-only unless --admin or --admin-token-file. Ctrl-C stops it.",
     dashboard_opts, 0, 0, 0, xc_cli_cmd_dashboard},
    XC_CLI_REMOTE_COMMANDS /* checkpoints, fetch, table (remote.c) */
    XC_CLI_CKPT_COMMANDS   /* inspect, export (ckpt.c) */
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

/* ------------------------------------------------------------------ globals */

static const xc_cli_optdef_t global_opts[] = {
    {"run-dir", "DIR", "the daemon's run_dir: endpoints default to ipc://DIR/{ingest,control,events}.sock "
                       "(default $XCODER_RUN_DIR, else like the daemon: $XDG_RUNTIME_DIR/xcoderd-NAME or "
                       "/tmp/xcoderd-NAME)"},
    {"name", "NAME", "the daemon's instance name, used to derive run_dir (default: default)"},
    {"endpoint", "URI", "control endpoint (alias of --control)"},
    {"ingest", "URI", "ingest endpoint, e.g. tcp://127.0.0.1:5555"},
    {"control", "URI", "control endpoint"},
    {"events", "URI", "events endpoint"},
    {"server-key", "KEY", "the daemon's CURVE public key (Z85, or its .pub file) for tcp endpoints "
                          "(default $XCODER_SERVER_KEY)"},
    {"key", "FILE", "this client's CURVE key file BASE.key from `xcoder keygen` (default $XCODER_CLIENT_KEY)"},
    {"timeout", "S", "seconds to wait for the daemon (default 30; 0 = forever)"},
    {"json", NULL, "machine-readable JSON output (query commands; also -j)"},
    {"verbose", NULL, "say on stderr where data came from (also -v)"},
    {"pretty", NULL, "indent JSON output"},
    {NULL, NULL, NULL}};

static void print_opts(FILE *f, const xc_cli_optdef_t *o)
{
    for (; o->name; o++) {
        char head[64];
        snprintf(head, sizeof head, "--%s%s%s", o->name, o->metavar ? " " : "", o->metavar ? o->metavar : "");
        fprintf(f, "  %-22s %s\n", head, o->help);
    }
}

static void usage_main(FILE *f)
{
    fprintf(f, "usage: xcoder [global options] COMMAND [options]\n\n"
               "Client of xcoderd, the crosscoder training daemon.\n\ncommands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++) fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nglobal options (before or after the command):\n");
    print_opts(f, global_opts);
    fprintf(f, "\nShort forms: -h = --help, -j = --json, -n N = --top N (--count N for watch and events),\n"
               "-v = --verbose.\n");
    fprintf(f, "\n`xcoder COMMAND --help` describes a command. Exit status: 0 ok, 1 failed (also at once\n"
               "when an ipc socket file does not exist), 2 bad command line, 3 the daemon did not answer\n"
               "in time.\n");
}

static void usage_cmd(FILE *f, const xc_cli_cmd_t *c)
{
    fprintf(f, "usage: xcoder %s [options]%s%s\n\n%s.\n", c->name, c->usage[0] ? " " : "", c->usage, c->summary);
    if (c->help[0]) fprintf(f, "\n%s\n", c->help);
    if (c->opts[0].name) {
        fprintf(f, "\noptions:\n");
        print_opts(f, c->opts);
    }
    fprintf(f, "\nglobal options:\n");
    for (const xc_cli_optdef_t *o = global_opts; o->name; o++) {
        if ((!strcmp(o->name, "json") || !strcmp(o->name, "pretty")) && !c->json) continue;
        char head[64];
        snprintf(head, sizeof head, "--%s%s%s", o->name, o->metavar ? " " : "", o->metavar ? o->metavar : "");
        fprintf(f, "  %-22s %s\n", head, o->help);
    }
}

/* ------------------------------------------------------------------ parsing */

static const xc_cli_optdef_t *find_opt(const xc_cli_optdef_t *t, const char *name, size_t len, int *idx)
{
    for (int i = 0; t[i].name; i++)
        if (strlen(t[i].name) == len && strncmp(t[i].name, name, len) == 0) {
            if (idx) *idx = i;
            return &t[i];
        }
    return NULL;
}

static int set_global(xc_cli_args_t *a, const char *name, const char *v)
{
    if (!strcmp(name, "run-dir")) a->run_dir = v;
    else if (!strcmp(name, "name")) a->name = v;
    else if (!strcmp(name, "endpoint") || !strcmp(name, "control")) a->control = v;
    else if (!strcmp(name, "ingest")) a->ingest = v;
    else if (!strcmp(name, "events")) a->events = v;
    else if (!strcmp(name, "server-key")) a->server_key = v;
    else if (!strcmp(name, "key")) a->client_key = v;
    else if (!strcmp(name, "json")) a->json = 1;
    else if (!strcmp(name, "verbose")) a->verbose = 1;
    else if (!strcmp(name, "pretty")) a->pretty = a->json = 1;
    else if (!strcmp(name, "timeout")) {
        char *end;
        errno = 0;
        double t = strtod(v, &end);
        if (errno || end == v || *end || !(t >= 0) || t > 1e6) {
            fprintf(stderr, "xcoder: --timeout: '%s' is not a number of seconds in [0, 1e6]\n", v);
            return XC_CLI_USAGE;
        }
        a->timeout_s = t;
    }
    return XC_CLI_OK;
}

int xc_cli_parse(int argc, char **argv, xc_cli_args_t *a, int *help)
{
    int only_pos = 0;
    memset(a, 0, sizeof *a);
    a->timeout_s = 30;
    *help = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!only_pos && !strcmp(arg, "--")) {
            only_pos = 1;
            continue;
        }
        if (!only_pos && (!strcmp(arg, "-h") || !strcmp(arg, "--help"))) {
            *help = 1;
            if (a->cmd) usage_cmd(stdout, a->cmd);
            else usage_main(stdout);
            return XC_CLI_OK;
        }
        if (!only_pos && arg[0] == '-' && arg[1] == '-' && arg[2]) {
            const char *name = arg + 2, *eq = strchr(name, '=');
            size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
            int idx = -1;
            const xc_cli_optdef_t *o = find_opt(global_opts, name, nlen, NULL);
            int is_global = o != NULL;
            if (!o && a->cmd) o = find_opt(a->cmd->opts, name, nlen, &idx);
            if (!o) {
                if (a->cmd)
                    fprintf(stderr, "xcoder %s: unknown option --%.*s (see xcoder %s --help)\n", a->cmd->name, (int)nlen,
                            name, a->cmd->name);
                else
                    fprintf(stderr, "xcoder: unknown option --%.*s before the command (see xcoder --help)\n", (int)nlen,
                            name);
                return XC_CLI_USAGE;
            }
            if (is_global && a->cmd && !a->cmd->json && (!strcmp(o->name, "json") || !strcmp(o->name, "pretty"))) {
                fprintf(stderr, "xcoder %s: --%s is not supported by this command\n", a->cmd->name, o->name);
                return XC_CLI_USAGE;
            }
            const char *v = "1";
            if (o->metavar) {
                if (eq) v = eq + 1;
                else if (i + 1 < argc) v = argv[++i];
                else {
                    fprintf(stderr, "xcoder%s%s: --%s needs a value (%s)\n", a->cmd ? " " : "", a->cmd ? a->cmd->name : "",
                            o->name, o->metavar);
                    return XC_CLI_USAGE;
                }
            } else if (eq) {
                fprintf(stderr, "xcoder: --%s takes no value\n", o->name);
                return XC_CLI_USAGE;
            }
            if (is_global) {
                if (set_global(a, o->name, v) != XC_CLI_OK) return XC_CLI_USAGE;
            } else {
                a->val[idx] = v;
            }
            continue;
        }
        if (!only_pos && !strcmp(arg, "-v")) {
            a->verbose = 1;
            continue;
        }
        /* the short forms people expect: -j = --json, -n N = --top N (or --count N
         * for commands that count frames or events) */
        if (!only_pos && !strcmp(arg, "-j")) {
            if (a->cmd && !a->cmd->json) {
                fprintf(stderr, "xcoder %s: -j (--json) is not supported by this command\n", a->cmd->name);
                return XC_CLI_USAGE;
            }
            a->json = 1;
            continue;
        }
        if (!only_pos && !strncmp(arg, "-n", 2)) {
            int idx = -1;
            if (!a->cmd || (!find_opt(a->cmd->opts, "top", 3, &idx) && !find_opt(a->cmd->opts, "count", 5, &idx))) {
                if (a->cmd)
                    fprintf(stderr, "xcoder %s: -n (--top / --count) is not an option of this command (see xcoder %s "
                            "--help)\n", a->cmd->name, a->cmd->name);
                else
                    fprintf(stderr, "xcoder: -n (--top / --count) comes after the command (see xcoder --help)\n");
                return XC_CLI_USAGE;
            }
            if (arg[2]) a->val[idx] = arg + 2;
            else if (i + 1 < argc) a->val[idx] = argv[++i];
            else {
                fprintf(stderr, "xcoder %s: -n needs a value (N)\n", a->cmd->name);
                return XC_CLI_USAGE;
            }
            continue;
        }
        if (!only_pos && arg[0] == '-' && arg[1] && !(arg[1] >= '0' && arg[1] <= '9')) {
            fprintf(stderr, "xcoder: unknown option '%s' (options are --long, and -h, -j, -n N, -v; see xcoder --help)\n",
                    arg);
            return XC_CLI_USAGE;
        }
        if (!a->cmd) {
            for (size_t k = 0; k < N_COMMANDS; k++)
                if (!strcmp(commands[k].name, arg)) a->cmd = &commands[k];
            if (!a->cmd) {
                fprintf(stderr, "xcoder: unknown command '%s' (see xcoder --help)\n", arg);
                return XC_CLI_USAGE;
            }
            continue;
        }
        if (a->npos >= a->cmd->max_pos || a->npos >= XC_CLI_MAX_POS) {
            fprintf(stderr, "xcoder %s: unexpected argument '%s' (usage: xcoder %s %s)\n", a->cmd->name, arg,
                    a->cmd->name, a->cmd->usage);
            return XC_CLI_USAGE;
        }
        a->pos[a->npos++] = arg;
    }
    if (!a->cmd) {
        usage_main(stderr);
        return XC_CLI_USAGE;
    }
    if (a->npos < a->cmd->min_pos) {
        fprintf(stderr, "xcoder %s: missing argument (usage: xcoder %s %s)\n", a->cmd->name, a->cmd->name,
                a->cmd->usage);
        return XC_CLI_USAGE;
    }
    if (a->json && !a->cmd->json) {
        fprintf(stderr, "xcoder %s: --json is not supported by this command\n", a->cmd->name);
        return XC_CLI_USAGE;
    }
    return XC_CLI_OK;
}

/* ------------------------------------------------------------- option access */

static int opt_index(const xc_cli_args_t *a, const char *name)
{
    int idx = -1;
    if (!a->cmd || !find_opt(a->cmd->opts, name, strlen(name), &idx)) return -1;
    return idx;
}

const char *xc_cli_opt(const xc_cli_args_t *a, const char *name)
{
    int i = opt_index(a, name);
    return i < 0 ? NULL : a->val[i];
}

int xc_cli_flag(const xc_cli_args_t *a, const char *name) { return xc_cli_opt(a, name) != NULL; }

int xc_cli_parse_long(const char *what, const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    /* accept 1e6 / 2.5e5 style for token counts */
    if (!errno && (*end == 'e' || *end == 'E' || *end == '.')) {
        double d = strtod(s, &end);
        if (!*end && d == floor(d) && fabs(d) < 9e18) v = (long)d;
        else end = (char *)s;
    }
    if (errno || end == s || *end || v < min || v > max) {
        fprintf(stderr, "xcoder: %s: '%s' is not an integer in [%ld, %ld]\n", what, s, min, max);
        return XC_CLI_USAGE;
    }
    *out = v;
    return XC_CLI_OK;
}

int xc_cli_opt_long(const xc_cli_args_t *a, const char *name, long dflt, long min, long max, long *out)
{
    const char *v = xc_cli_opt(a, name);
    char what[64];
    *out = dflt;
    if (!v) return XC_CLI_OK;
    snprintf(what, sizeof what, "%s --%s", a->cmd->name, name);
    return xc_cli_parse_long(what, v, min, max, out);
}

int xc_cli_opt_double(const xc_cli_args_t *a, const char *name, double dflt, double min, double max,
                      double *out)
{
    const char *v = xc_cli_opt(a, name);
    *out = dflt;
    if (!v) return XC_CLI_OK;
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !(x >= min && x <= max)) {
        fprintf(stderr, "xcoder %s: --%s: '%s' is not a number in [%g, %g]\n", a->cmd->name, name, v, min, max);
        return XC_CLI_USAGE;
    }
    *out = x;
    return XC_CLI_OK;
}

/* ------------------------------------------------------------ shared helpers */

void xc_cli_err(const xc_cli_args_t *a, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "xcoder %s: ", a && a->cmd ? a->cmd->name : "");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int xc_cli_fail(const xc_cli_args_t *a, xc_client_t *c, int rc)
{
    const char *msg = c ? xc_client_last_error(c) : "";
    xc_cli_err(a, "%s", msg[0] ? msg : xc_strerror(rc));
    return rc == XC_ETIMEDOUT ? XC_CLI_TIMEOUT : XC_CLI_FAIL;
}

int xc_cli_timeout_ms(const xc_cli_args_t *a)
{
    if (a->timeout_s <= 0) return -1;
    double ms = a->timeout_s * 1000.0;
    return ms > 2e9 ? 2000000000 : (int)ms;
}

xc_client_t *xc_cli_client(const xc_cli_args_t *a, int window)
{
    xc_client_options_t o;
    xc_client_options_default(&o);
    if (a->run_dir) o.run_dir = a->run_dir;
    o.name = a->name;
    o.ingest = a->ingest;
    o.control = a->control;
    o.events = a->events;
    o.server_key = a->server_key;
    o.client_key = a->client_key;
    o.timeout_ms = xc_cli_timeout_ms(a);
    if (window > 0) o.window = window;
    int err = 0;
    xc_client_t *c = xc_client_new(&o, &err);
    if (!c) xc_cli_err(a, "cannot create a client: %s", xc_client_new_error()[0] ? xc_client_new_error()
                                                                                : xc_strerror(err));
    else xc_client_set_cancel_flag(c, &xc_cli_stop);
    return c;
}

int xc_cli_print_json(const xc_cli_args_t *a, const xc_client_value_t *v)
{
    char *j = xc_client_value_to_json(v, a->pretty); /* owned here */
    if (!j) {
        xc_cli_err(a, "cannot render the reply as JSON: it nests deeper than %d levels, renders to more "
                   "than %zu bytes, or memory ran out", XC_JSON_MAX_DEPTH, (size_t)XC_JSON_MAX_BYTES);
        return XC_CLI_FAIL;
    }
    int rc = printf("%s\n", j) < 0 ? XC_EIO : XC_OK;
    free(j);
    fflush(stdout);
    if (rc < 0) {
        xc_cli_err(a, "cannot write JSON: %s", xc_strerror(rc));
        return XC_CLI_FAIL;
    }
    return XC_CLI_OK;
}

int xc_cli_print_mpw(const xc_cli_args_t *a, xc_mpw_t *w)
{
    int rc = xc_mpw_finish(w);
    xc_client_value_t *v = rc < 0 ? NULL : xc_client_value_parse(w->buf->data, w->buf->len, &rc);
    if (!v) {
        xc_cli_err(a, "cannot build JSON output: %s", xc_strerror(rc));
        return XC_CLI_FAIL;
    }
    rc = xc_cli_print_json(a, v);
    xc_client_value_free(&v);
    return rc;
}

volatile int xc_cli_stop = 0;

static void on_signal(int sig)
{
    (void)sig;
    xc_cli_stop = 1;
}

void xc_cli_trap_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: blocking waits wake up and see the flag */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

int main(int argc, char **argv)
{
    xc_cli_args_t a;
    int help = 0;
    signal(SIGPIPE, SIG_IGN);
    int rc = xc_cli_parse(argc, argv, &a, &help);
    if (rc != XC_CLI_OK || help) return rc;
    return a.cmd->run(&a);
}
