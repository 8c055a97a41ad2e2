/* xcoderd error codes, shared by the daemon, the engine, the codec and the clients.
 * Every action returns 0 or a negative XC_E* code; xc_strerror() names it. */
#ifndef XC_ERROR_H
#define XC_ERROR_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* X(name, value, message): one table drives the enum and xc_strerror(). */
#define XC_ERRNO_MAP(X)                                                          \
    X(XC_OK, 0, "success")                                                       \
    X(XC_EINVAL, -1, "invalid argument")                                         \
    X(XC_ENOMEM, -2, "out of memory")                                            \
    X(XC_ESHAPE, -3, "wrong shape: batch dimensions do not match the model")     \
    X(XC_ENONFINITE, -4, "batch holds NaN or Inf values")                        \
    X(XC_EIO, -5, "input/output error")                                          \
    X(XC_EPROTO, -6, "malformed message")                                        \
    X(XC_EVERSION, -7, "unsupported protocol version")                           \
    X(XC_EDTYPE, -8, "unknown or unsupported dtype")                             \
    X(XC_ELENGTH, -9, "payload length does not match the header")               \
    X(XC_ETOOBIG, -10, "message too large")                                      \
    X(XC_EAGAIN, -11, "resource temporarily unavailable; retry later")           \
    X(XC_ETIMEDOUT, -12, "timed out")                                            \
    X(XC_ENOTFOUND, -13, "not found")                                            \
    X(XC_EUNKNOWN, -14, "unknown request")                                       \
    X(XC_ESTATE, -15, "operation not allowed in the current state")              \
    X(XC_ECONFIG, -16, "invalid configuration")                                  \
    X(XC_ECORRUPT, -17, "corrupt or foreign file")                               \
    X(XC_ESYS, -18, "system call failed")                                        \
    X(XC_ESHUTDOWN, -19, "daemon is shutting down")                             \
    X(XC_EPERM, -20, "permission denied: the client's key or role may not do this") \
    X(XC_ERANGE, -21, "value out of range: finite but beyond the configured limit") \
    X(XC_EBUSY, -22, "busy: too many requests in flight; retry later")           \
    X(XC_ECANCELED, -23, "operation cancelled")                                    \
    X(XC_ECOLL, -24, "a peer rank failed or stopped answering: the sharded job must end")

typedef enum {
#define XC_ERRNO_ENUM(name, val, msg) name = val,
    XC_ERRNO_MAP(XC_ERRNO_ENUM)
#undef XC_ERRNO_ENUM
} xc_errno_t;

/* Static string for an XC_E* code (never NULL). */
const char *xc_strerror(int err);
/* Short symbolic name ("XC_ESHAPE") for logs and wire replies (never NULL). */
const char *xc_errname(int err);
/* printf into a caller's reason buffer (why may be NULL or why_len 0: nothing). */
void xc_why(char *why, size_t why_len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#ifdef __cplusplus
}
#endif
#endif
