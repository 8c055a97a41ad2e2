/* `xcoder dashboard`: starts the web dashboard (client/js/dashboard/server.js,
 * a Node.js process on the JS client) against the daemon this CLI would talk
 * to, so `--name`, `--run-dir` and the endpoint options mean what they mean
 * for every other command, CURVE keys included. The process is replaced by
 * node (exec): its output, exit status and signals are the dashboard's. */
#include "xc_cli.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Finds server.js: $XCODER_DASHBOARD, else next to this binary in a source tree
 * (build/xcoder -> client/js/dashboard/server.js), else below the working
 * directory. Writes the path to out; -1 when none exists. */
static int find_script(char *out, size_t n)
{
    const char *env = getenv("XCODER_DASHBOARD");
    if (env && env[0]) {
        snprintf(out, n, "%s", env);
        return access(out, R_OK) == 0 ? 0 : -1;
    }
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len > 0) {
        exe[len] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            if ((size_t)snprintf(out, n, "%s/../client/js/dashboard/server.js", exe) < n && access(out, R_OK) == 0)
                return 0;
        }
    }
    snprintf(out, n, "client/js/dashboard/server.js");
    return access(out, R_OK) == 0 ? 0 : -1;
}

int xc_cli_cmd_dashboard(xc_cli_args_t *a)
{
    char script[PATH_MAX + 64];
    if (find_script(script, sizeof script) != 0) {
        xc_cli_err(a, "cannot find the dashboard (%s); set XCODER_DASHBOARD to the path of "
                      "client/js/dashboard/server.js", script);
        return XC_CLI_FAIL;
    }
    /* the endpoints every other command would use (nothing connects yet) */
    xc_client_t *c = xc_cli_client(a, 0);
    if (!c) return XC_CLI_FAIL;
    char control[1024], events[1024];
    snprintf(control, sizeof control, "%s", xc_client_endpoint(c, "control"));
    snprintf(events, sizeof events, "%s", xc_client_endpoint(c, "events"));
    xc_client_destroy(&c);
    const char *node = getenv("XCODER_NODE");
    if (!node || !node[0]) node = "node";
    const char *argv[32];
    int k = 0;
    argv[k++] = node;
    argv[k++] = script;
    argv[k++] = "--control";
    argv[k++] = control;
    argv[k++] = "--events";
    argv[k++] = events;
    /* CURVE keys: the options given here; from the environment node reads them itself */
    if (a->server_key) {
        argv[k++] = "--server-key";
        argv[k++] = a->server_key;
    }
    if (a->client_key) {
        argv[k++] = "--key";
        argv[k++] = a->client_key;
    }
    static const char *const pass[] = {"host", "port", "admin-token-file", "poll", "history"};
    char flags[sizeof pass / sizeof pass[0]][40];
    for (size_t i = 0; i < sizeof pass / sizeof pass[0]; i++) {
        const char *v = xc_cli_opt(a, pass[i]);
        if (!v) continue;
        snprintf(flags[i], sizeof flags[i], "--%s", pass[i]);
        argv[k++] = flags[i];
        argv[k++] = v;
    }
    if (xc_cli_flag(a, "admin")) argv[k++] = "--admin";
    argv[k] = NULL;
    fflush(stdout);
    execvp(node, (char *const *)argv);
    xc_cli_err(a, "cannot run %s: %s (install Node.js >= 18, or set XCODER_NODE)", node, strerror(errno));
    return XC_CLI_FAIL;
}
