/* Human-readable number formatting for the CLI's text output. */
#include "xc_cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

const char *xc_cli_fmt_count(double x, char *buf, size_t n)
{
    static const char *const suf[] = {"", "k", "M", "G", "T", "P"};
    int i = 0;
    if (!isfinite(x)) {
        snprintf(buf, n, "-");
        return buf;
    }
    double ax = fabs(x);
    while (ax >= 999.5 && i < 5) {
        ax /= 1000;
        x /= 1000;
        i++;
    }
    if (i == 0) snprintf(buf, n, "%.0f", x);
    else snprintf(buf, n, ax < 9.995 ? "%.2f%s" : ax < 99.95 ? "%.1f%s" : "%.0f%s", x, suf[i]);
    return buf;
}

const char *xc_cli_fmt_duration(double s, char *buf, size_t n)
{
    if (!isfinite(s) || s < 0) s = 0;
    long t = (long)(s + 0.5);
    if (t < 60) snprintf(buf, n, "%lds", t);
    else if (t < 3600) snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, n, "%ldh%02ldm%02lds", t / 3600, (t / 60) % 60, t % 60);
    return buf;
}

const char *xc_cli_fmt_bytes(double b, char *buf, size_t n)
{
    static const char *const suf[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (b >= 1024 && i < 4) {
        b /= 1024;
        i++;
    }
    snprintf(buf, n, i ? "%.1f %s" : "%.0f %s", b, suf[i]);
    return buf;
}

const char *xc_cli_fmt_value(const xc_client_value_t *v, char *buf, size_t n)
{
    if (!v) {
        snprintf(buf, n, "-");
        return buf;
    }
    switch (v->type) {
    case XC_VAL_NIL: snprintf(buf, n, "null"); break;
    case XC_VAL_BOOL: snprintf(buf, n, "%s", v->u.b ? "true" : "false"); break;
    case XC_VAL_INT: snprintf(buf, n, "%lld", (long long)v->u.i); break;
    case XC_VAL_UINT: snprintf(buf, n, "%llu", (unsigned long long)v->u.u); break;
    case XC_VAL_FLOAT: snprintf(buf, n, "%.6g", v->u.f); break;
    case XC_VAL_STR: snprintf(buf, n, "%s", v->u.s.ptr); break;
    default: {
        char *j = xc_client_value_to_json(v, 0);
        snprintf(buf, n, "%s", j ? j : "?");
        free(j);
    }
    }
    return buf;
}
