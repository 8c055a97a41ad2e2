/* Tests of the daemon configuration (daemon/config.c): the table, parsing of
 * values, files and command lines, precedence, derived defaults, cross-key
 * validation, reload, rendering, and that systemd/xcoderd.conf.example is
 * exactly what the table generates. */
#include "xc_config.h"
#include "xc_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_tmp[256];

static const char *write_tmp(const char *name, const char *text)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", g_tmp, name);
    FILE *f = fopen(path, "w");
    if (!f) return NULL;
    fputs(text, f);
    fclose(f);
    return path;
}

static int load(xc_cfg_t *c, char *why, size_t wl, int argc, const char **argv)
{
    xc_cfg_cli_t cli;
    return xc_cfg_load(c, argc, (char **)argv, &cli, why, wl);
}

static void test_defaults_and_derived(void)
{
    xc_cfg_t c;
    char why[256];
    unsetenv("XDG_RUNTIME_DIR");
    const char *argv[] = {"xcoderd", "--name", "lab-1"};
    XC_REQUIRE(load(&c, why, sizeof why, 3, argv) == 0, "%s", why);
    XC_CHECK(strcmp(c.run_dir, "/tmp/xcoderd-lab-1") == 0, "run_dir %.200s", c.run_dir);
    XC_CHECK(strcmp(c.state_dir, "/tmp/xcoderd-lab-1/state") == 0, "state_dir %.200s", c.state_dir);
    XC_CHECK(strcmp(c.ingest, "ipc:///tmp/xcoderd-lab-1/ingest.sock") == 0, "ingest %.200s", c.ingest);
    XC_CHECK(strcmp(c.control, "ipc:///tmp/xcoderd-lab-1/control.sock") == 0, "control %.200s", c.control);
    XC_CHECK(strcmp(c.events, "ipc:///tmp/xcoderd-lab-1/events.sock") == 0, "events %.200s", c.events);
    XC_CHECK(c.mix_tokens == 8 * c.batch_size, "mix_tokens %ld", c.mix_tokens);
    XC_CHECK(c.d == 64 && c.k == 8 && c.lr == 1e-4 && c.model == XC_MODEL_BATCHTOPK, "defaults");
    setenv("XDG_RUNTIME_DIR", "/run/user/7", 1);
    XC_REQUIRE(load(&c, why, sizeof why, 3, argv) == 0, "%s", why);
    XC_CHECK(strcmp(c.run_dir, "/run/user/7/xcoderd-lab-1") == 0, "xdg run_dir %.200s", c.run_dir);
    unsetenv("XDG_RUNTIME_DIR");
    /* every default in the table parses and is in range */
    for (const xc_cfg_key_t *k = xc_cfg_keys(); k->name; k++) {
        xc_cfg_t d;
        xc_cfg_defaults(&d);
        XC_CHECK(xc_cfg_set(&d, k->name, k->def, why, sizeof why) == 0, "default of %s: %s", k->name, why);
        XC_CHECK(k->help && strlen(k->help) > 10, "%s has no help", k->name);
    }
}

static void test_values(void)
{
    xc_cfg_t c;
    char why[256];
    xc_cfg_defaults(&c);
    XC_CHECK(xc_cfg_set(&c, "d", "2304", why, sizeof why) == 0 && c.d == 2304, "d");
    XC_CHECK(xc_cfg_set(&c, "dict_size", "7.3728e4", why, sizeof why) == 0 && c.dict_size == 73728,
             "1e-style integer: %s", why);
    XC_CHECK(xc_cfg_set(&c, "d", "010", why, sizeof why) == 0 && c.d == 10, "no octal");
    XC_CHECK(xc_cfg_set(&c, "d", "12x", why, sizeof why) == XC_ECONFIG && strstr(why, "integer"), "junk: %s", why);
    XC_CHECK(xc_cfg_set(&c, "d", "1.5", why, sizeof why) == XC_ECONFIG, "fraction");
    XC_CHECK(xc_cfg_set(&c, "d", "0", why, sizeof why) == XC_ECONFIG && strstr(why, "[1, 1048576]"),
             "range: %s", why);
    XC_CHECK(xc_cfg_set(&c, "d", "99999999999999999999999", why, sizeof why) == XC_ECONFIG, "overflow");
    XC_CHECK(xc_cfg_set(&c, "lr", "3e-4", why, sizeof why) == 0 && c.lr == 3e-4, "lr");
    XC_CHECK(xc_cfg_set(&c, "lr", "nan", why, sizeof why) == XC_ECONFIG, "lr nan");
    XC_CHECK(xc_cfg_set(&c, "lr", "-1", why, sizeof why) == XC_ECONFIG, "lr negative");
    XC_CHECK(xc_cfg_set(&c, "model", "l1", why, sizeof why) == 0 && c.model == XC_MODEL_L1, "enum");
    XC_CHECK(xc_cfg_set(&c, "model", "topk", why, sizeof why) == XC_ECONFIG && strstr(why, "batchtopk|l1"),
             "enum choices: %s", why);
    XC_CHECK(xc_cfg_set(&c, "log_level", "debug", why, sizeof why) == 0, "log level");
    char longname[100];
    memset(longname, 'a', 99);
    longname[99] = 0;
    XC_CHECK(xc_cfg_set(&c, "name", longname, why, sizeof why) == XC_ECONFIG && strstr(why, "longer"), "long");
    XC_CHECK(xc_cfg_set(&c, "batch_sise", "1", why, sizeof why) == XC_ENOTFOUND &&
                 strstr(why, "did you mean 'batch_size'"),
             "suggestion: %s", why);
    XC_CHECK(xc_cfg_set(&c, "zzzzzzzzzzzz", "1", why, sizeof why) == XC_ENOTFOUND && !strstr(why, "did you"),
             "no wild suggestion: %s", why);
    XC_CHECK(xc_cfg_set(&c, "d", NULL, why, sizeof why) == XC_ECONFIG, "NULL value");
}

static void test_file(void)
{
    xc_cfg_t c;
    char why[256];
    const char *p = write_tmp("a.conf", "# comment line\n\n  d = 48   # trailing comment\n"
                                        "name = \"with#hash\"\nlr=0.001\nmodel = l1\n");
    XC_REQUIRE(p != NULL, "tmp file");
    xc_cfg_defaults(&c);
    XC_REQUIRE(xc_cfg_load_file(&c, p, why, sizeof why) == 0, "%s", why);
    XC_CHECK(c.d == 48 && c.lr == 0.001 && c.model == XC_MODEL_L1, "values");
    XC_CHECK(strcmp(c.name, "with#hash") == 0, "quoted hash: %s", c.name);
    p = write_tmp("b.conf", "d = 48\n\nbatchsize = 5\n");
    XC_CHECK(xc_cfg_load_file(&c, p, why, sizeof why) == XC_ENOTFOUND && strstr(why, "b.conf:3:") &&
                 strstr(why, "batch_size"),
             "line number: %s", why);
    p = write_tmp("c.conf", "just words\n");
    XC_CHECK(xc_cfg_load_file(&c, p, why, sizeof why) == XC_ECONFIG && strstr(why, "c.conf:1: expected"),
             "no '=': %s", why);
    p = write_tmp("d.conf", "k = -3\n");
    XC_CHECK(xc_cfg_load_file(&c, p, why, sizeof why) == XC_ECONFIG && strstr(why, "d.conf:1: k must be"),
             "range in file: %s", why);
    XC_CHECK(xc_cfg_load_file(&c, "/nonexistent/x.conf", why, sizeof why) == XC_EIO &&
                 strstr(why, "cannot read config file /nonexistent/x.conf"),
             "missing file: %s", why);
}

static void test_command_line(void)
{
    xc_cfg_t c;
    xc_cfg_cli_t cli;
    char why[256];
    const char *p = write_tmp("e.conf", "d = 48\nk = 16\nbatch_size = 128\n");
    XC_REQUIRE(p != NULL, "tmp");
    const char *a1[] = {"xcoderd", "--k", "12", "--config", p, "--batch-size=100", "--lr", "2e-4"};
    XC_REQUIRE(xc_cfg_load(&c, 8, (char **)a1, &cli, why, sizeof why) == 0, "%s", why);
    XC_CHECK(c.d == 48, "file value kept: %ld", c.d);
    XC_CHECK(c.k == 12, "command line wins over the file, wherever --config is: %ld", c.k);
    XC_CHECK(c.batch_size == 100 && c.lr == 2e-4, "--key=value and dashes");
    XC_CHECK(cli.config == p && !cli.help, "cli");
    const char *a2[] = {"xcoderd", "--d"};
    XC_CHECK(load(&c, why, sizeof why, 2, a2) == XC_ECONFIG && strstr(why, "--d needs a value"), "%s", why);
    const char *a3[] = {"xcoderd", "stray"};
    XC_CHECK(load(&c, why, sizeof why, 2, a3) == XC_ECONFIG && strstr(why, "unexpected argument 'stray'"),
             "%s", why);
    const char *a4[] = {"xcoderd", "--bogus", "1"};
    XC_CHECK(load(&c, why, sizeof why, 3, a4) == XC_ENOTFOUND, "unknown key: %s", why);
    const char *a5[] = {"xcoderd", "--d", "abc", "--help"};
    XC_CHECK(xc_cfg_load(&c, 4, (char **)a5, &cli, why, sizeof why) == 0 && cli.help, "--help first");
    const char *a6[] = {"xcoderd", "--config"};
    XC_CHECK(load(&c, why, sizeof why, 2, a6) == XC_ECONFIG, "--config without file");
    const char *a7[] = {"xcoderd", "--print-config", "--d", "40"};
    XC_CHECK(xc_cfg_load(&c, 4, (char **)a7, &cli, why, sizeof why) == 0 && cli.print_config && c.d == 40,
             "--print-config");
}

static void test_cross_key(void)
{
    xc_cfg_t c;
    char why[256];
    const char *a1[] = {"xcoderd", "--k", "300", "--dict_size", "256"};
    XC_CHECK(load(&c, why, sizeof why, 5, a1) == XC_ECONFIG && strstr(why, "k (300)"), "%s", why);
    const char *a2[] = {"xcoderd", "--k", "300", "--dict_size", "256", "--model", "l1"};
    XC_CHECK(load(&c, why, sizeof why, 7, a2) == 0, "L1 ignores k: %s", why);
    const char *a3[] = {"xcoderd", "--mix_tokens", "100", "--batch_size", "256"};
    XC_CHECK(load(&c, why, sizeof why, 5, a3) == XC_ECONFIG && strstr(why, "mix_tokens (100)"), "%s", why);
    const char *a4[] = {"xcoderd", "--name", "a/b"};
    XC_CHECK(load(&c, why, sizeof why, 3, a4) == XC_ECONFIG && strstr(why, "name 'a/b'"), "%s", why);
    char longdir[200];
    memset(longdir, 'x', sizeof longdir - 1);
    longdir[0] = '/';
    longdir[sizeof longdir - 1] = 0;
    const char *a5[] = {"xcoderd", "--run_dir", longdir};
    XC_CHECK(load(&c, why, sizeof why, 3, a5) == XC_ECONFIG && strstr(why, "too long for an ipc://"), "%s", why);
    const char *a6[] = {"xcoderd", "--run_dir", longdir, "--ingest", "tcp://127.0.0.1:5555", "--control",
                        "tcp://127.0.0.1:5556", "--events", "tcp://127.0.0.1:5557"};
    XC_CHECK(load(&c, why, sizeof why, 9, a6) == 0, "explicit endpoints: %s", why);
    const char *a7[] = {"xcoderd", "--decay_start", "100", "--total_steps", "50"};
    XC_CHECK(load(&c, why, sizeof why, 5, a7) == XC_ECONFIG && strstr(why, "decay_start"),
             "engine validation: %s", why);
}

static void test_engine_mapping(void)
{
    xc_cfg_t c;
    xc_engine_config_t ec;
    char why[256];
    const char *a[] = {"xcoderd", "--model", "l1", "--d", "40", "--dict_size", "300", "--loss", "mse",
                       "--seed", "9", "--threads", "2", "--l1_coef", "0.5"};
    XC_REQUIRE(load(&c, why, sizeof why, 15, a) == 0, "%s", why);
    xc_cfg_engine(&c, &ec);
    XC_CHECK(ec.model == XC_MODEL_L1 && ec.d == 40 && ec.dict_size == 300 && ec.loss == XC_LOSS_MSE, "kind");
    XC_CHECK(ec.seed == 9 && ec.threads == 2 && fabsf(ec.l1_coef - 0.5f) < 1e-7f, "values");
    XC_CHECK(ec.init_norm == 0.005f && ec.clip_norm == 0.0f, "L1 engine defaults kept");
}

/* Every engine hyper-parameter is a key: the new keys reach the engine, "auto"
 * resolves by model kind (the values the engine always had), enums map to their
 * enum values, and the table's defaults are the engine defaults. */
static void test_engine_keys(void)
{
    xc_cfg_t c;
    xc_engine_config_t ec, dflt;
    char why[256], v[64];
    const char *a[] = {"xcoderd"};
    XC_REQUIRE(load(&c, why, sizeof why, 1, a) == 0, "%s", why);
    xc_cfg_engine(&c, &ec);
    XC_CHECK(ec.init_norm == 1.0f && ec.clip_norm == 1.0f, "batchtopk auto: init %g clip %g", ec.init_norm,
             ec.clip_norm);
    XC_CHECK(ec.adam_beta1 == 0.9f && ec.adam_beta2 == 0.999f && ec.adam_eps == 1e-8f && ec.threshold_beta == 0.999f,
             "Adam and theta defaults");
    xc_cfg_engine_defaults(&dflt, XC_MODEL_BATCHTOPK);
    XC_CHECK(memcmp(&dflt, &ec, sizeof ec) == 0, "xc_cfg_engine_defaults differs from the table's defaults");
    XC_CHECK(dflt.dict_size == 1024, "one default dict_size: %d", dflt.dict_size);
    XC_CHECK(xc_cfg_get(&c, "init_norm", v, sizeof v) == 0 && strcmp(v, "auto") == 0, "auto kept as text: %s", v);

    const char *b[] = {"xcoderd", "--init_norm", "0.25", "--clip_norm", "0", "--adam_beta1", "0.8",
                       "--adam_beta2", "0.99", "--adam_eps", "1e-6", "--threshold_beta", "0.5", "--loss", "mse"};
    XC_REQUIRE(load(&c, why, sizeof why, 15, b) == 0, "%s", why);
    xc_cfg_engine(&c, &ec);
    XC_CHECK(ec.init_norm == 0.25f && ec.clip_norm == 0.0f && ec.adam_beta1 == 0.8f && ec.adam_beta2 == 0.99f &&
                 ec.adam_eps == 1e-6f && ec.threshold_beta == 0.5f && ec.loss == XC_LOSS_MSE,
             "explicit values reach the engine");
    const char *d[] = {"xcoderd", "--adam_beta2", "1"};
    XC_CHECK(load(&c, why, sizeof why, 3, d) == XC_ECONFIG && strstr(why, "adam_beta"),
             "beta 1 refused by the engine's check: %s", why);
    xc_cfg_defaults(&c);
    XC_CHECK(xc_cfg_set(&c, "clip_norm", "big", why, sizeof why) == XC_ECONFIG && strstr(why, "or auto"),
             "auto named in the error: %s", why);
    XC_CHECK(xc_cfg_set(&c, "lr", "auto", why, sizeof why) == XC_ECONFIG, "auto only where a key has it");
    XC_CHECK(xc_cfg_set(&c, "scaling_running", "off", why, sizeof why) == 0 && c.scaling_running == 0, "bool off");
    XC_CHECK(xc_cfg_set(&c, "scaling_running", "yes", why, sizeof why) == XC_ECONFIG && strstr(why, "on|off"),
             "bool choices: %s", why);
    XC_CHECK(strcmp(xc_cfg_enum_name("model", XC_MODEL_L1), "l1") == 0 &&
                 strcmp(xc_cfg_enum_name("loss", XC_LOSS_MSE), "mse") == 0 && !xc_cfg_enum_name("model", 7) &&
                 !xc_cfg_enum_name("d", 0),
             "enum names");

    /* the config op reports the value auto stands for, as a number */
    xc_buf_t buf;
    xc_mpw_t w;
    xc_mp_doc_t *doc = NULL;
    xc_cfg_defaults(&c);
    XC_REQUIRE(xc_cfg_set(&c, "model", "l1", why, sizeof why) == 0, "%s", why);
    xc_buf_init(&buf);
    xc_mpw_init(&w, &buf);
    xc_mpw_map_begin(&w);
    xc_cfg_to_mp(&c, NULL, &w);
    xc_mpw_map_end(&w);
    XC_REQUIRE(xc_mpw_finish(&w) == 0 && xc_mp_doc_parse(buf.data, buf.len, &doc, why, sizeof why) == 0, "%s", why);
    double in = -1, cn = -1;
    XC_CHECK(xc_mp_type(xc_mp_get(xc_mp_root(doc), "init_norm")) == XC_MP_FLOAT &&
                 xc_mp_as_f64(xc_mp_get(xc_mp_root(doc), "init_norm"), &in) == 0 &&
                 xc_mp_as_f64(xc_mp_get(xc_mp_root(doc), "clip_norm"), &cn) == 0 && in == 0.005 && cn == 0.0,
             "l1 auto values %g %g", in, cn);
    xc_mp_doc_free(&doc);
    xc_buf_free(&buf);
}

/* Apply hooks: each runs once per reload when one of its keys changed, after
 * every key is copied (it sees the new values), and never for a fixed key. */
static int g_hook_calls[XC_CFG_HOOK_N];
static double g_hook_seen;
static void count_timers(void *ctx, const xc_cfg_t *c)
{
    g_hook_calls[XC_CFG_HOOK_TIMERS]++;
    g_hook_seen = c->metrics_interval;
}
static void count_checkpoint(void *ctx, const xc_cfg_t *c) { g_hook_calls[XC_CFG_HOOK_CHECKPOINT]++; }
static void count_log(void *ctx, const xc_cfg_t *c) { g_hook_calls[XC_CFG_HOOK_LOG_LEVEL]++; }

static void test_apply_hooks(void)
{
    xc_cfg_t cur, next;
    char why[256], fixed[256];
    const char *a[] = {"xcoderd"};
    xc_cfg_hooks_t hooks = {{[XC_CFG_HOOK_LOG_LEVEL] = count_log, [XC_CFG_HOOK_TIMERS] = count_timers,
                             [XC_CFG_HOOK_CHECKPOINT] = count_checkpoint},
                            NULL};
    for (const xc_cfg_key_t *k = xc_cfg_keys(); k->name; k++)
        XC_CHECK(k->reloadable || k->hook == XC_CFG_HOOK_NONE, "fixed key %s has a hook", k->name);
    XC_REQUIRE(load(&cur, why, sizeof why, 1, a) == 0, "%s", why);
    next = cur;
    next.stats_interval = 3;
    next.metrics_interval = 7;
    next.checkpoint_keep = 9;
    next.dead_alert_jump = 0.5;
    next.batch_size = 17;
    memset(g_hook_calls, 0, sizeof g_hook_calls);
    int n = xc_cfg_apply_reload(&cur, &next, &hooks, fixed, sizeof fixed);
    XC_CHECK(n == 4, "applied %d", n);
    XC_CHECK(g_hook_calls[XC_CFG_HOOK_TIMERS] == 1 && g_hook_seen == 7, "timers hook %d times, saw %g",
             g_hook_calls[XC_CFG_HOOK_TIMERS], g_hook_seen);
    XC_CHECK(g_hook_calls[XC_CFG_HOOK_CHECKPOINT] == 1 && g_hook_calls[XC_CFG_HOOK_LOG_LEVEL] == 0, "other hooks");
    XC_CHECK(strcmp(fixed, "batch_size") == 0 && cur.batch_size != 17, "fixed '%s'", fixed);
    memset(g_hook_calls, 0, sizeof g_hook_calls);
    n = xc_cfg_apply_reload(&cur, &cur, &hooks, fixed, sizeof fixed);
    XC_CHECK(n == 0 && !g_hook_calls[XC_CFG_HOOK_TIMERS] && !g_hook_calls[XC_CFG_HOOK_CHECKPOINT],
             "nothing changed, no hook");
}

static void test_reload_and_render(void)
{
    xc_cfg_t cur, next;
    char why[256], fixed[256], v[64];
    const char *a[] = {"xcoderd"};
    XC_REQUIRE(load(&cur, why, sizeof why, 1, a) == 0, "%s", why);
    next = cur;
    next.stats_interval = 5;
    next.log_level = XC_LOG_DEBUG;
    next.d = 77;
    next.queue_size = 3;
    int n = xc_cfg_apply_reload(&cur, &next, NULL, fixed, sizeof fixed);
    XC_CHECK(n == 2 && cur.stats_interval == 5 && cur.log_level == XC_LOG_DEBUG, "applied %d", n);
    XC_CHECK(cur.d == 64 && cur.queue_size == 64, "fixed keys untouched");
    XC_CHECK(strcmp(fixed, "d, queue_size") == 0, "fixed list '%s'", fixed);
    XC_CHECK(xc_cfg_get(&cur, "stats_interval", v, sizeof v) == 0 && strcmp(v, "5") == 0, "get %s", v);
    XC_CHECK(xc_cfg_get(&cur, "nope", v, sizeof v) == XC_ENOTFOUND, "get unknown");

    /* to_mp: every key, with its type */
    xc_buf_t b;
    xc_mpw_t w;
    xc_mp_doc_t *doc = NULL;
    xc_buf_init(&b);
    xc_mpw_init(&w, &b);
    xc_mpw_map_begin(&w);
    xc_cfg_to_mp(&cur, NULL, &w);
    xc_mpw_map_end(&w);
    XC_REQUIRE(xc_mpw_finish(&w) == 0, "encode");
    XC_REQUIRE(xc_mp_doc_parse(b.data, b.len, &doc, why, sizeof why) == 0, "%s", why);
    int nkeys = 0;
    for (const xc_cfg_key_t *k = xc_cfg_keys(); k->name; k++, nkeys++) {
        xc_mp_type_t t = xc_mp_type(xc_mp_get(xc_mp_root(doc), k->name));
        xc_mp_type_t want = k->type == XC_CFG_INT ? XC_MP_INT : k->type == XC_CFG_FLOAT ? XC_MP_FLOAT : XC_MP_STR;
        XC_CHECK(t == want, "%s has type %d", k->name, (int)t);
    }
    XC_CHECK(xc_mp_len(xc_mp_root(doc)) == (size_t)nkeys, "key count");
    xc_mp_doc_free(&doc);
    xc_buf_free(&b);
    XC_CHECK(xc_cfg_to_mp(&cur, "nope", &w) == XC_ENOTFOUND, "unknown key");
}

/* The effective config printed as a file loads back to the same values. */
static void test_print_roundtrip(void)
{
    xc_cfg_t c, back;
    char why[256];
    const char *a[] = {"xcoderd", "--name", "rt", "--lr", "0.000123456789", "--model", "l1", "--d", "40",
                       "--log_file", "/var/log/x y.log"};
    XC_REQUIRE(load(&c, why, sizeof why, 11, a) == 0, "%s", why);
    char path[512];
    snprintf(path, sizeof path, "%s/rt.conf", g_tmp);
    FILE *f = fopen(path, "w");
    XC_REQUIRE(f != NULL, "open");
    xc_cfg_print_file(f, &c);
    fclose(f);
    xc_cfg_defaults(&back);
    XC_REQUIRE(xc_cfg_load_file(&back, path, why, sizeof why) == 0, "%s", why);
    XC_CHECK(xc_cfg_finalize(&back, why, sizeof why) == 0, "%s", why);
    XC_CHECK(memcmp(&c, &back, sizeof c) == 0, "printed config does not load back identically");

    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    XC_REQUIRE(m != NULL, "memstream");
    xc_cfg_print_help(m, "xcoderd");
    fclose(m);
    for (const xc_cfg_key_t *k = xc_cfg_keys(); k->name; k++) {
        char pat[80];
        snprintf(pat, sizeof pat, "--%s ", k->name);
        XC_CHECK(strstr(buf, pat) != NULL, "--help lacks %s", k->name);
    }
    free(buf);
}

/* systemd/xcoderd.conf.example is the generated documentation of every key. */
static void test_example_file_in_sync(void)
{
    char *buf = NULL, file[1 << 15];
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    XC_REQUIRE(m != NULL, "memstream");
    xc_cfg_print_file(m, NULL);
    fclose(m);
    FILE *f = fopen("systemd/xcoderd.conf.example", "r");
    XC_REQUIRE(f != NULL, "cannot open systemd/xcoderd.conf.example (run from the repository root)");
    size_t n = fread(file, 1, sizeof file - 1, f);
    fclose(f);
    file[n] = 0;
    XC_CHECK(strcmp(file, buf) == 0,
             "systemd/xcoderd.conf.example is stale; regenerate: build/xcoderd --print-example > "
             "systemd/xcoderd.conf.example");
    /* and the example, all commented out, loads to the defaults */
    xc_cfg_t a, b;
    char why[256];
    xc_cfg_defaults(&a);
    xc_cfg_defaults(&b);
    XC_CHECK(xc_cfg_load_file(&a, "systemd/xcoderd.conf.example", why, sizeof why) == 0, "%s", why);
    XC_CHECK(memcmp(&a, &b, sizeof a) == 0, "example changes defaults");
    free(buf);
}

int main(void)
{
    snprintf(g_tmp, sizeof g_tmp, "/tmp/xc-test-config-%ld", (long)getpid());
    if (mkdir(g_tmp, 0700)) {
        perror("mkdir");
        return 1;
    }
    XC_RUN(test_defaults_and_derived);
    XC_RUN(test_values);
    XC_RUN(test_file);
    XC_RUN(test_command_line);
    XC_RUN(test_cross_key);
    XC_RUN(test_engine_mapping);
    XC_RUN(test_engine_keys);
    XC_RUN(test_apply_hooks);
    XC_RUN(test_reload_and_render);
    XC_RUN(test_print_roundtrip);
    XC_RUN(test_example_file_in_sync);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd)) { /* best effort */
    }
    XC_TEST_EXIT();
}
