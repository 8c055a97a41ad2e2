/* libxcoder internals shared between its files (not installed, not public). */
#ifndef XC_CLIENT_INTERNAL_H
#define XC_CLIENT_INTERNAL_H

#include <stddef.h>

#include "xc_proto.h"
#include "xcoder.h"

/* Growable NUL-terminated string buffer; on allocation failure sets `failed`
 * and ignores further writes. The caller owns `buf` and frees it. */
typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} xc_client_sbuf_t;

void xc_client_sbuf_put(xc_client_sbuf_t *b, const char *s, size_t n);
void xc_client_sbuf_printf(xc_client_sbuf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void xc_client_json_string(xc_client_sbuf_t *b, const char *s, size_t n);
void xc_client_json_number(xc_client_sbuf_t *b, double x);

/* Converts a parsed MessagePack node into one value block (caller frees with
 * xc_client_value_free). NULL with *err = XC_EPROTO (nested > 64 deep) or
 * XC_ENOMEM. */
xc_client_value_t *xc_client_value_from_node(xc_mp_node_t o, int *err);

#endif
