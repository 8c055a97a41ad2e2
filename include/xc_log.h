/* One logging macro with levels and timestamps, to stderr (thread-safe). */
#ifndef XC_LOG_H
#define XC_LOG_H

#include <stdarg.h>

typedef enum { XC_LOG_DEBUG = 0, XC_LOG_INFO, XC_LOG_WARN, XC_LOG_ERROR } xc_log_level_t;

void xc_log_set_level(xc_log_level_t lvl);
xc_log_level_t xc_log_get_level(void);
/* Parses "debug|info|warn|error"; returns 0 or XC_EINVAL. */
int xc_log_parse_level(const char *s, xc_log_level_t *out);
void xc_log_msg(xc_log_level_t lvl, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Peer-triggered log lines go through a rate limiter: at most `burst` lines per
 * `window` seconds; the lines it holds back are counted and reported by the
 * next line it lets through ("(N similar lines suppressed)"). Zero-initialise
 * with XC_RATELIMIT_INIT(burst, window); not thread-safe (one per thread). */
typedef struct {
    int burst;
    double window;
    double start;
    int used;
    unsigned long long suppressed;
} xc_ratelimit_t;
#define XC_RATELIMIT_INIT(b, w) {(b), (w), 0.0, 0, 0ull}
/* 1: log now (*suppressed = lines held back since the last one let through);
 * 0: hold this one back (counted). */
int xc_ratelimit_ok(xc_ratelimit_t *rl, unsigned long long *suppressed);

#define xc_log_rl(rl, lvl, ...)                                                 \
    do {                                                                        \
        unsigned long long xc_rl_sup_;                                          \
        if ((lvl) >= xc_log_get_level() && xc_ratelimit_ok((rl), &xc_rl_sup_)) { \
            if (xc_rl_sup_)                                                     \
                xc_log_msg((lvl), __FILE__, __LINE__, "(%llu similar lines suppressed)", xc_rl_sup_); \
            xc_log_msg((lvl), __FILE__, __LINE__, __VA_ARGS__);                 \
        }                                                                       \
    } while (0)

#define xc_log(lvl, ...)                                                        \
    do {                                                                        \
        if ((lvl) >= xc_log_get_level()) xc_log_msg((lvl), __FILE__, __LINE__, __VA_ARGS__); \
    } while (0)

#endif
