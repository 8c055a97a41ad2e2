/* Error strings from the XC_ERRNO_MAP table (include/xc_error.h). */
#include "xc_error.h"

#include <stdarg.h>
#include <stdio.h>

const char *xc_strerror(int err)
{
    switch (err) {
#define XC_ERRNO_STR(name, val, msg) case val: return msg;
        XC_ERRNO_MAP(XC_ERRNO_STR)
#undef XC_ERRNO_STR
    }
    return "unknown error";
}

const char *xc_errname(int err)
{
    switch (err) {
#define XC_ERRNO_NAME(name, val, msg) case val: return #name;
        XC_ERRNO_MAP(XC_ERRNO_NAME)
#undef XC_ERRNO_NAME
    }
    return "XC_E?";
}

void xc_why(char *why, size_t why_len, const char *fmt, ...)
{
    va_list ap;
    if (!why || why_len == 0) return;
    va_start(ap, fmt);
    vsnprintf(why, why_len, fmt, ap);
    va_end(ap);
}
