/* `xcoder history`: the daemon's stats history (the `history` op: the newest
 * lines of STATE_DIR/history.jsonl, each one stats event as JSON). --json
 * prints the lines unchanged, one JSON object per line (what the file holds,
 * for jq or pandas.read_json(lines=True)); otherwise a table of the curves. */
#include "xc_cli.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static double num(const xc_client_value_t *v, const char *path) { return xc_client_value_getnum(v, path, NAN); }

/* One table row from one history line; a line that is not JSON is shown as
 * such, never skipped silently. */
static void print_row(const char *line, size_t len)
{
    int err = 0;
    char why[128], when[32], b1[32], b2[32];
    xc_client_value_t *e = xc_client_json_parse(line, len, &err, why, sizeof why);
    if (!e) {
        printf("(unreadable line: %s)\n", why);
        return;
    }
    time_t t = (time_t)num(e, "time");
    struct tm tm;
    if (isnan(num(e, "time")) || !gmtime_r(&t, &tm) || !strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm))
        snprintf(when, sizeof when, "?");
    const xc_client_value_t *fve = xc_client_value_get(e, "fve");
    double fb = NAN, fc = NAN;
    if (fve && fve->type == XC_VAL_ARRAY && fve->u.a.n == 2) {
        xc_client_value_num(xc_client_value_at(fve, 0), &fb);
        xc_client_value_num(xc_client_value_at(fve, 1), &fc);
    }
    printf("%-19s %10.0f %9s %11.5g %7.4f %7.4f %7.2f %6.2f%% %9s\n", when, num(e, "step"),
           xc_cli_fmt_count(num(e, "tokens"), b1, sizeof b1), num(e, "loss"), fb, fc, num(e, "l0"),
           100.0 * num(e, "dead_fraction"), xc_cli_fmt_count(num(e, "tokens_per_s"), b2, sizeof b2));
    xc_client_value_free(&e);
}

int xc_cli_cmd_history(xc_cli_args_t *a)
{
    long n;
    if (xc_cli_opt_long(a, "count", 20, 1, 100000, &n)) return XC_CLI_USAGE;
    xc_client_t *c = xc_cli_client(a, 0);
    if (!c) return XC_CLI_FAIL;
    xc_client_arg_t arg = {.key = "n", .type = XC_ARG_INT, .i = n};
    xc_client_value_t *r = NULL;
    int out = XC_CLI_OK, rc = xc_client_request(c, "history", &arg, 1, &r);
    if (rc < 0) {
        out = xc_cli_fail(a, c, rc);
        goto out;
    }
    const xc_client_value_t *lines = xc_client_value_get(r, "lines");
    if (!lines || lines->type != XC_VAL_ARRAY) {
        xc_cli_err(a, "the daemon's history reply has no 'lines' (protocol mismatch?)");
        out = XC_CLI_FAIL;
        goto out;
    }
    if (!a->json) {
        if (!xc_client_value_getnum(r, "enabled", 1))
            printf("(history is off on this daemon: history_max_bytes = 0)\n");
        else if (lines->u.a.n == 0)
            printf("(no history yet: a line is written with every stats event)\n");
        else
            printf("%-19s %10s %9s %11s %7s %7s %7s %7s %9s\n", "time (UTC)", "step", "tokens", "loss", "fve_b",
                   "fve_c", "l0", "dead", "tokens/s");
    }
    for (size_t i = 0; i < lines->u.a.n; i++) {
        const xc_client_value_t *l = xc_client_value_at(lines, i);
        if (l->type != XC_VAL_STR) continue;
        if (a->json) fwrite(l->u.s.ptr, 1, l->u.s.len, stdout), fputc('\n', stdout);
        else print_row(l->u.s.ptr, l->u.s.len);
    }
    if (!a->json && xc_client_value_getnum(r, "more", 0))
        fprintf(stderr, "(older lines left out; -n N shows more, or read %s in the daemon's state_dir)\n",
                "history.jsonl[.1]");
    if (fflush(stdout) != 0) out = XC_CLI_FAIL;
out:
    xc_client_value_free(&r);
    xc_client_destroy(&c);
    return out;
}
