/* The one-line text view of an example (PROTOCOL.md 2.3 "Rendering"), the
 * same in every client: C here, Python wire.render_example, JS
 * wire.renderExample; proto/vectors.json pins the result. */
#include "xc_proto.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* A piece with its control characters escaped (\n \r \t, else \xHH). */
static void put_piece(xc_buf_t *out, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        char e[8];
        if (c == '\n') xc_buf_append(out, "\\n", 2);
        else if (c == '\r') xc_buf_append(out, "\\r", 2);
        else if (c == '\t') xc_buf_append(out, "\\t", 2);
        else if (c < 0x20 || c == 0x7f) {
            snprintf(e, sizeof e, "\\x%02x", c);
            xc_buf_append(out, e, 4);
        } else {
            xc_buf_append(out, &p[i], 1);
        }
    }
}

void xc_proto_render_window(xc_buf_t *out, size_t n, long at, const int64_t *ids, const char *const *pieces,
                            const size_t *lens)
{
    for (size_t i = 0; i < n; i++) {
        char tmp[32];
        if ((long)i == at) xc_buf_append(out, "[[", 2);
        if (pieces && pieces[i]) {
            put_piece(out, pieces[i], lens[i]);
        } else {
            if (ids[i] >= 0) snprintf(tmp, sizeof tmp, "<%lld>", (long long)ids[i]);
            else snprintf(tmp, sizeof tmp, "<?>");
            xc_buf_append(out, tmp, strlen(tmp));
        }
        if ((long)i == at) xc_buf_append(out, "]]", 2);
    }
}

int xc_proto_example_render(xc_mp_node_t ex, xc_buf_t *out)
{
    xc_mp_node_t toks = xc_mp_get(ex, "tokens"), pieces = xc_mp_get(ex, "pieces");
    int64_t at = -1;
    if (xc_mp_type(toks) != XC_MP_ARRAY) return XC_EINVAL;
    if (xc_mp_as_i64(xc_mp_get(ex, "at"), &at)) at = -1;
    size_t n = xc_mp_len(toks);
    int64_t ids[1024 * 2 + 1];
    const char *ps[1024 * 2 + 1];
    size_t lens[1024 * 2 + 1];
    if (n > sizeof ids / sizeof ids[0]) return XC_ETOOBIG;
    for (size_t i = 0; i < n; i++) {
        uint64_t id;
        ids[i] = xc_mp_as_u64(xc_mp_at(toks, i), &id) == 0 && id <= INT64_MAX ? (int64_t)id : -1;
        ps[i] = NULL;
        if (xc_mp_type(pieces) == XC_MP_ARRAY && xc_mp_as_str(xc_mp_at(pieces, i), &ps[i], &lens[i])) ps[i] = NULL;
    }
    xc_proto_render_window(out, n, (long)at, ids, ps, lens);
    return out->err;
}
