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

#define xc_log(lvl, ...)                                                        \
    do {                                                                        \
        if ((lvl) >= xc_log_get_level()) xc_log_msg((lvl), __FILE__, __LINE__, __VA_ARGS__); \
    } while (0)

#endif
