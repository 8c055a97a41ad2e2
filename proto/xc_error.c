/* Error strings from the XC_ERRNO_MAP table (include/xc_error.h). */
#include "xc_error.h"

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
