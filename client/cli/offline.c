/* The offline commands that compute with the engine run in xcoder-offline, a
 * binary beside xcoder (the walls: xcoder itself links no engine code). This
 * file finds it and hands it the command line. */
#include "xc_cli.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* $XCODER_OFFLINE, else xcoder-offline in this binary's directory, else the
 * PATH's. */
static void offline_path(char *out, size_t n)
{
    const char *env = getenv("XCODER_OFFLINE");
    char self[PATH_MAX];
    ssize_t len;
    if (env && *env) {
        snprintf(out, n, "%s", env);
        return;
    }
    len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len > 0) {
        self[len] = 0;
        char *slash = strrchr(self, '/');
        if (slash) {
            *slash = 0;
            snprintf(out, n, "%s/xcoder-offline", self);
            if (access(out, X_OK) == 0) return;
        }
    }
    snprintf(out, n, "xcoder-offline");
}

int xc_cli_scaling_offline(xc_cli_args_t *a, const char *ckpt, const char *data, long top)
{
    char exe[PATH_MAX + 32], topbuf[32];
    const char *argv[16];
    int n = 0;
    offline_path(exe, sizeof exe);
    snprintf(topbuf, sizeof topbuf, "%ld", top);
    argv[n++] = exe;
    argv[n++] = "scaling";
    argv[n++] = "--checkpoint";
    argv[n++] = ckpt;
    argv[n++] = "--data";
    argv[n++] = data;
    argv[n++] = "--top";
    argv[n++] = topbuf;
    if (xc_cli_opt(a, "min-active")) {
        argv[n++] = "--min-active";
        argv[n++] = xc_cli_opt(a, "min-active");
    }
    if (a->pretty) argv[n++] = "--pretty";
    else if (a->json) argv[n++] = "--json";
    if (xc_cli_flag(a, "quiet")) argv[n++] = "--quiet";
    argv[n] = NULL;
    fflush(NULL);
    execvp(exe, (char *const *)argv);
    xc_cli_err(a, "cannot run %s: %s (it is built and installed beside xcoder; XCODER_OFFLINE names another)", exe,
               strerror(errno));
    return XC_CLI_FAIL;
}
