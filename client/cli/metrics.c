/* `xcoder metrics`: the daemon's Prometheus text, printed unchanged. The daemon
 * renders it (daemon/metrics.c) for the `metrics` op exactly as it does for
 * metrics_file, so this prints what node-exporter would read, without needing
 * metrics_file to be set. */
#include "xc_cli.h"

#include <stdio.h>

int xc_cli_cmd_metrics(xc_cli_args_t *a)
{
    xc_client_t *c = xc_cli_client(a, 0);
    if (!c) return XC_CLI_FAIL;
    xc_client_value_t *r = NULL;
    int out = XC_CLI_OK;
    int rc = xc_client_request(c, "metrics", NULL, 0, &r);
    if (rc < 0) {
        out = xc_cli_fail(a, c, rc);
    } else {
        const char *text = xc_client_value_getstr(r, "text", NULL);
        if (!text) {
            xc_cli_err(a, "the daemon's metrics reply has no 'text' (protocol mismatch?)");
            out = XC_CLI_FAIL;
        } else if (fputs(text, stdout) < 0 || fflush(stdout) != 0) {
            out = XC_CLI_FAIL;
        }
    }
    xc_client_value_free(&r);
    xc_client_destroy(&c);
    return out;
}
