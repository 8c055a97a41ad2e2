/* Timestamped, levelled log lines on stderr; one fprintf per line so that
 * lines from the loop and trainer threads never interleave mid-line. */
#include "xc_log.h"
#include "xc_error.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static volatile int g_level = XC_LOG_INFO;
static const char *const g_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

void xc_log_set_level(xc_log_level_t lvl) { g_level = (int)lvl; }
xc_log_level_t xc_log_get_level(void) { return (xc_log_level_t)g_level; }

int xc_log_parse_level(const char *s, xc_log_level_t *out)
{
    static const char *const lower[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (s && strcmp(s, lower[i]) == 0) {
            *out = (xc_log_level_t)i;
            return XC_OK;
        }
    return XC_EINVAL;
}

void xc_log_msg(xc_log_level_t lvl, const char *file, int line, const char *fmt, ...)
{
    char msg[1024], ts[32];
    struct timespec now;
    struct tm tm;
    va_list ap;

    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *base = strrchr(file, '/');
    fprintf(stderr, "%s.%03ldZ %-5s [%s:%d] %s\n", ts, now.tv_nsec / 1000000L,
            g_names[lvl < 0 || lvl > 3 ? 3 : lvl], base ? base + 1 : file, line, msg);
}
