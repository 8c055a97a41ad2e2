/* libxcoder internals shared between its files (not installed, not public). */
#ifndef XC_CLIENT_INTERNAL_H
#define XC_CLIENT_INTERNAL_H

#include <stddef.h>

#include "xc_proto.h"
#include "xcoder.h"

/* Appends v as JSON to out (proto's xc_mp_json in the CLI's style: shortest
 * floats, bin as base64, pretty = two-space indent). 0 or XC_E* with why. */
int xc_client_value_json(const xc_client_value_t *v, int pretty, xc_buf_t *out, char *why, size_t why_len);

/* Converts a parsed MessagePack node into one value block (caller frees with
 * xc_client_value_free). NULL with *err = XC_EPROTO (nested > 64 deep) or
 * XC_ENOMEM. */
xc_client_value_t *xc_client_value_from_node(xc_mp_node_t o, int *err);

#endif
