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

int xc_ratelimit_ok(xc_ratelimit_t *rl, unsigned long long *suppressed)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double t = (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
    *suppressed = 0;
    if (t - rl->start >= rl->window) {
        rl->start = t;
        rl->used = 0;
    }
    if (rl->used >= rl->burst) {
        rl->suppressed++;
        return 0;
    }
    rl->used++;
    *suppressed = rl->suppressed;
    rl->suppressed = 0;
    return 1;
}

/* Length of the valid UTF-8 sequence at s (1-4), or 0 if it is not one. */
static int utf8_len(const unsigned char *s)
{
    if (s[0] < 0x80) return 1;
    int n = s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc2 && s[0] < 0xe0 ? 2 : 0;
    for (int i = 1; i < n; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    return n;
}

/* Copies msg into out with every control byte and every byte outside a valid
 * UTF-8 sequence written as \xNN: a peer's id or field name can never start a
 * new log line or send escape sequences to a terminal (log injection). */
static void escape_into(const char *msg, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)msg; *p && o + 5 < cap;) {
        int n = utf8_len(p);
        if (n == 1 && *p >= 0x20 && *p != 0x7f) out[o++] = (char)*p++;
        else if (n > 1) {
            if (o + (size_t)n + 1 >= cap) break;
            memcpy(out + o, p, (size_t)n);
            o += (size_t)n;
            p += n;
        } else {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
            p++;
        }
    }
    out[o] = 0;
}

void xc_log_msg(xc_log_level_t lvl, const char *file, int line, const char *fmt, ...)
{
    char raw[1024], msg[4100], ts[32];
    struct timespec now;
    struct tm tm;
    va_list ap;

    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    escape_into(raw, msg, sizeof msg);
    const char *base = strrchr(file, '/');
    fprintf(stderr, "%s.%03ldZ %-5s [%s:%d] %s\n", ts, now.tv_nsec / 1000000L,
            g_names[lvl < 0 || lvl > 3 ? 3 : lvl], base ? base + 1 : file, line, msg);
}
