/* The one-line text view of an example (PROTOCOL.md 2.3 "Rendering"), the
 * same in every client: C here, Python wire.render_example, JS
 * wire.renderExample; proto/vectors.json pins the result. */
#include "xc_proto.h"

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

int xc_proto_example_render(xc_mp_node_t ex, xc_buf_t *out)
{
    xc_mp_node_t toks = xc_mp_get(ex, "tokens"), pieces = xc_mp_get(ex, "pieces");
    int64_t at = -1;
    if (xc_mp_type(toks) != XC_MP_ARRAY) return XC_EINVAL;
    if (xc_mp_as_i64(xc_mp_get(ex, "at"), &at)) at = -1;
    int have_pieces = xc_mp_type(pieces) == XC_MP_ARRAY;
    for (size_t i = 0; i < xc_mp_len(toks); i++) {
        const char *s;
        size_t sl;
        char tmp[32];
        if ((int64_t)i == at) xc_buf_append(out, "[[", 2);
        if (have_pieces && xc_mp_as_str(xc_mp_at(pieces, i), &s, &sl) == 0) {
            put_piece(out, s, sl);
        } else {
            uint64_t id;
            if (xc_mp_as_u64(xc_mp_at(toks, i), &id) == 0) snprintf(tmp, sizeof tmp, "<%llu>", (unsigned long long)id);
            else snprintf(tmp, sizeof tmp, "<?>");
            xc_buf_append(out, tmp, strlen(tmp));
        }
        if ((int64_t)i == at) xc_buf_append(out, "]]", 2);
    }
    return out->err;
}
