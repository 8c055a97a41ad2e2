/* Tests of the Prometheus renderer (daemon/metrics.c): every line is a valid
 * HELP / TYPE / sample line of the text format 0.0.4, each family is declared
 * once and before its samples, counters end in _total, label values are
 * escaped, NaN/Inf are spelled as Prometheus spells them, and the file writer
 * is atomic, world-readable whatever the umask, and leaves no temp file.
 * (tests/integ_metrics.py parses the daemon's real output with
 * prometheus_client's parser.) */
#include "xc_metrics.h"
#include "xc_error.h"
#include "xc_test.h"

#include <ctype.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_tmp[256];

static void fill(xc_metrics_t *m)
{
    xc_metrics_init(m);
    m->name = "lab-1";
    m->model = "batchtopk";
    m->state = "running";
    m->d = 64;
    m->dict_size = 1024;
    m->k = 8;
    m->batch_size = 256;
    m->step = 1234;
    m->tokens_trained = 1234 * 256;
    m->tokens_acked = 400000;
    m->batches_acked = 100;
    m->queue_depth = 3;
    m->queue_capacity = 64;
    m->tokens_per_s = 5123.5;
    m->loss = 0.25;
    m->recon_l2 = 0.2;
    m->fve[0] = 0.9;
    m->fve[1] = 0.85;
    m->l0 = 8;
    m->dead_fraction = 0.01;
    m->uptime_s = 12.5;
    m->checkpoint_age_s = 12.5;
    m->refused[0] = (xc_metrics_counter_t){"XC_ESHAPE", 2};
    m->refused[1] = (xc_metrics_counter_t){"XC_ENONFINITE", 1};
    m->n_refused = 2;
    m->counters[0] = (xc_metrics_counter_t){"control_requests", 7};
    m->counters[1] = (xc_metrics_counter_t){"zmq_errors", 0};
    m->n_counters = 2;
    m->classes[0] = (xc_metrics_counter_t){"chat_only", 12};
    m->n_classes = 1;
}

static char *render(const xc_metrics_t *m)
{
    xc_buf_t b;
    size_t len;
    xc_buf_init(&b);
    if (xc_metrics_render(m, &b) || xc_buf_append(&b, "", 1)) {
        xc_buf_free(&b);
        return NULL;
    }
    return (char *)xc_buf_take(&b, &len); /* owned by the caller */
}

static int name_ok(const char *s, size_t n)
{
    if (n == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_' || s[0] == ':')) return 0;
    for (size_t i = 1; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == ':')) return 0;
    return 1;
}

/* Parses the labels of a sample line from p (just after '{'); returns the
 * character after '}' or NULL when malformed. */
static const char *parse_labels(const char *p)
{
    for (;;) {
        const char *k = p;
        while (isalnum((unsigned char)*p) || *p == '_') p++;
        if (p == k || !name_ok(k, (size_t)(p - k)) || *p++ != '=' || *p++ != '"') return NULL;
        while (*p && *p != '"') {
            if (*p == '\n') return NULL;
            if (*p == '\\') {
                p++;
                if (*p != '\\' && *p != '"' && *p != 'n') return NULL;
            }
            p++;
        }
        if (*p++ != '"') return NULL;
        if (*p == '}') return p + 1;
        if (*p++ != ',') return NULL;
    }
}

static int value_ok(const char *v)
{
    if (!strcmp(v, "NaN") || !strcmp(v, "+Inf") || !strcmp(v, "-Inf")) return 1;
    char *end;
    strtod(v, &end);
    return end != v && *end == 0;
}

/* Checks the whole text; fills why and returns 0 on the first bad line. */
static int check_text(const char *text, char *why, size_t wl)
{
    char declared[64][128], typed[64][128];
    int nd = 0, nt = 0, lineno = 0;
    const char *p = text;
    while (*p) {
        const char *e = strchr(p, '\n');
        if (!e) {
            snprintf(why, wl, "text does not end with a newline");
            return 0;
        }
        char line[1024];
        size_t n = (size_t)(e - p);
        if (n >= sizeof line) n = sizeof line - 1;
        memcpy(line, p, n);
        line[n] = 0;
        lineno++;
        p = e + 1;
        if (strncmp(line, "# HELP ", 7) == 0 || strncmp(line, "# TYPE ", 7) == 0) {
            const char *nm = line + 7, *sp = strchr(nm, ' ');
            if (!sp || !name_ok(nm, (size_t)(sp - nm))) {
                snprintf(why, wl, "line %d: bad name: %.200s", lineno, line);
                return 0;
            }
            char (*list)[128] = line[2] == 'H' ? declared : typed;
            int *cnt = line[2] == 'H' ? &nd : &nt;
            for (int i = 0; i < *cnt; i++)
                if (strncmp(list[i], nm, (size_t)(sp - nm)) == 0 && list[i][sp - nm] == 0) {
                    snprintf(why, wl, "line %d: %.4s declared twice: %.200s", lineno, line + 2, line);
                    return 0;
                }
            if (*cnt < 64) snprintf(list[(*cnt)++], 128, "%.*s", (int)(sp - nm), nm);
            if (line[2] == 'T') {
                const char *t = sp + 1;
                if (strcmp(t, "gauge") && strcmp(t, "counter")) {
                    snprintf(why, wl, "line %d: type %.40s", lineno, t);
                    return 0;
                }
                if (!strcmp(t, "counter") && (sp - nm < 6 || strncmp(sp - 6, "_total", 6))) {
                    snprintf(why, wl, "line %d: counter without _total: %.200s", lineno, line);
                    return 0;
                }
            }
            continue;
        }
        if (line[0] == '#' || line[0] == 0) {
            snprintf(why, wl, "line %d: unexpected: %.200s", lineno, line);
            return 0;
        }
        const char *b = strchr(line, '{');
        if (!b || !name_ok(line, (size_t)(b - line))) {
            snprintf(why, wl, "line %d: bad sample: %.200s", lineno, line);
            return 0;
        }
        /* the family must be the last one declared (samples follow their TYPE) */
        if (nt == 0 || strncmp(typed[nt - 1], line, (size_t)(b - line)) || typed[nt - 1][b - line]) {
            snprintf(why, wl, "line %d: sample outside its family: %.200s", lineno, line);
            return 0;
        }
        const char *a = parse_labels(b + 1);
        if (!a || *a != ' ' || !value_ok(a + 1)) {
            snprintf(why, wl, "line %d: bad labels or value: %.200s", lineno, line);
            return 0;
        }
    }
    if (nd != nt) {
        snprintf(why, wl, "%d HELP lines but %d TYPE lines", nd, nt);
        return 0;
    }
    return 1;
}

static void test_render_valid(void)
{
    xc_metrics_t m;
    char why[512];
    fill(&m);
    char *t = render(&m);
    XC_REQUIRE(t, "render failed");
    XC_CHECK(check_text(t, why, sizeof why), "%.300s", why);
    XC_CHECK(strstr(t, "xcoderd_step{name=\"lab-1\"} 1234\n"), "step line");
    XC_CHECK(strstr(t, "xcoderd_tokens_trained_total{name=\"lab-1\"} 315904\n"), "tokens line");
    XC_CHECK(strstr(t, "xcoderd_fve{name=\"lab-1\",model=\"chat\"} 0.85\n"), "fve chat");
    XC_CHECK(strstr(t, "xcoderd_loss{name=\"lab-1\",term=\"total\"} 0.25\n"), "loss");
    XC_CHECK(strstr(t, "xcoderd_batches_refused_total{name=\"lab-1\",reason=\"XC_ESHAPE\"} 2\n"), "refused");
    XC_CHECK(strstr(t, "xcoderd_control_requests_total{name=\"lab-1\"} 7\n"), "counter");
    XC_CHECK(strstr(t, "xcoderd_state{name=\"lab-1\",state=\"running\"} 1\n"), "state running");
    XC_CHECK(strstr(t, "xcoderd_state{name=\"lab-1\",state=\"paused\"} 0\n"), "state paused");
    XC_CHECK(strstr(t, "xcoderd_queue_depth{name=\"lab-1\"} 3\n"), "queue depth");
    XC_CHECK(strstr(t, "xcoderd_latents{name=\"lab-1\",class=\"chat_only\"} 12\n"), "classes");
    XC_CHECK(strstr(t, "xcoderd_tokens_per_second{name=\"lab-1\"} 5123.5\n"), "tokens/s");
    XC_CHECK(strstr(t, "xcoderd_checkpoint_age_seconds{name=\"lab-1\"} 12.5\n"), "checkpoint age");
    XC_CHECK(strstr(t, "xcoderd_last_checkpoint_step{name=\"lab-1\"} -1\n"), "no checkpoint yet");
    XC_CHECK(strstr(t, "xcoderd_info{name=\"lab-1\",model=\"batchtopk\",d=\"64\",dict_size=\"1024\",k=\"8\","
                       "batch_size=\"256\"} 1\n"),
             "info");
    free(t);
}

static void test_special_values(void)
{
    xc_metrics_t m;
    char why[512];
    fill(&m);
    m.l0 = NAN; /* unknown before the first step */
    m.theta = INFINITY;
    m.grad_norm = -INFINITY;
    m.lr = 1e-4;
    m.start_time_unix = 1700000000.123456;
    char *t = render(&m);
    XC_REQUIRE(t, "render failed");
    XC_CHECK(check_text(t, why, sizeof why), "%.300s", why);
    XC_CHECK(strstr(t, "xcoderd_l0{name=\"lab-1\"} NaN\n"), "NaN");
    XC_CHECK(strstr(t, "xcoderd_threshold{name=\"lab-1\"} +Inf\n"), "+Inf");
    XC_CHECK(strstr(t, "xcoderd_grad_norm{name=\"lab-1\"} -Inf\n"), "-Inf");
    XC_CHECK(strstr(t, "xcoderd_learning_rate{name=\"lab-1\"} 0.0001\n"), "1e-4 short form");
    const char *st = strstr(t, "xcoderd_start_time_seconds{name=\"lab-1\"} ");
    XC_CHECK(st && strtod(strchr(st, '}') + 2, NULL) == 1700000000.123456, "start time round-trips");
    free(t);
}

static void test_escaping(void)
{
    xc_metrics_t m;
    char why[512];
    fill(&m);
    m.name = "a\"b\\c\nd"; /* config.c forbids this; the renderer must still be safe */
    m.counters[1] = (xc_metrics_counter_t){"odd-name.x", 5};
    char *t = render(&m);
    XC_REQUIRE(t, "render failed");
    XC_CHECK(check_text(t, why, sizeof why), "%.300s", why);
    XC_CHECK(strstr(t, "xcoderd_step{name=\"a\\\"b\\\\c\\nd\"} 1234\n"), "escaped label value");
    XC_CHECK(strstr(t, "xcoderd_odd_name_x_total{name="), "counter name sanitised");
    free(t);
}

static void test_unknown_counter_and_empty(void)
{
    xc_metrics_t m;
    char why[512];
    xc_metrics_init(&m); /* nothing known: NaNs, no refusals */
    char *t = render(&m);
    XC_REQUIRE(t, "render failed");
    XC_CHECK(check_text(t, why, sizeof why), "%.300s", why);
    XC_CHECK(strstr(t, "xcoderd_tokens_per_second{name=\"default\"} NaN\n"), "NaN default");
    XC_CHECK(strstr(t, "# TYPE xcoderd_batches_refused_total counter\n"), "family declared without samples");
    XC_CHECK(strstr(t, "xcoderd_state{name=\"default\",state=\"starting\"} 1\n"), "starting");
    free(t);
}

static void test_write_file(void)
{
    char path[512], why[256];
    xc_metrics_t m;
    fill(&m);
    char *t = render(&m);
    XC_REQUIRE(t, "render failed");
    snprintf(path, sizeof path, "%s/x.prom", g_tmp);
    mode_t old = umask(077);
    int rc = xc_metrics_write_file(path, "old\n", 4, why, sizeof why);
    XC_CHECK(rc == 0, "first write: %s", why);
    rc = xc_metrics_write_file(path, t, strlen(t), why, sizeof why);
    umask(old);
    XC_CHECK(rc == 0, "second write: %s", why);
    struct stat st;
    XC_REQUIRE(stat(path, &st) == 0, "no file");
    XC_CHECK((st.st_mode & 0777) == 0644, "mode %o", (unsigned)(st.st_mode & 0777));
    XC_CHECK((size_t)st.st_size == strlen(t), "size %ld vs %zu", (long)st.st_size, strlen(t));
    FILE *f = fopen(path, "r");
    XC_REQUIRE(f, "cannot reopen");
    char *back = calloc(1, strlen(t) + 1);
    size_t got = fread(back, 1, strlen(t), f);
    fclose(f);
    XC_CHECK(got == strlen(t) && memcmp(back, t, got) == 0, "content differs");
    free(back);
    int n = 0;
    DIR *dir = opendir(g_tmp);
    for (struct dirent *e; dir && (e = readdir(dir));)
        if (e->d_name[0] != '.') n++;
    if (dir) closedir(dir);
    XC_CHECK(n == 1, "%d entries in the directory (a temp file left?)", n);
    free(t);
}

static void test_write_file_fails(void)
{
    char path[512], why[256] = "";
    snprintf(path, sizeof path, "%s/missing-dir/x.prom", g_tmp);
    int rc = xc_metrics_write_file(path, "x\n", 2, why, sizeof why);
    XC_CHECK(rc == XC_EIO, "rc %d", rc);
    XC_CHECK(strstr(why, "missing-dir"), "why names the path: %s", why);
}

int main(void)
{
    snprintf(g_tmp, sizeof g_tmp, "/tmp/xc_test_metrics.XXXXXX");
    if (!mkdtemp(g_tmp)) return 1;
    XC_RUN(test_render_valid);
    XC_RUN(test_special_values);
    XC_RUN(test_escaping);
    XC_RUN(test_unknown_counter_and_empty);
    XC_RUN(test_write_file);
    XC_RUN(test_write_file_fails);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd)) { /* best effort */
    }
    XC_TEST_EXIT();
}
