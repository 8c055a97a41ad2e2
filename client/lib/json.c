/* JSON text into xc_client_value_t trees: used for safetensors headers and to
 * check the JSON renderer. proto's strict parser (xc_json_to_mp, shared with the
 * daemon) writes MessagePack, and one tree builder serves both. */
#include "xcoder.h"
#include "xc_client_internal.h"
#include "xc_proto.h"
#include "xc_stfile.h"

#include <stdlib.h>

xc_client_value_t *xc_client_json_parse(const char *s, size_t len, int *err, char *why, size_t why_len)
{
    xc_buf_t buf;
    xc_client_value_t *v = NULL;
    int rc;
    if (why && why_len) why[0] = 0;
    if (!s) {
        if (err) *err = XC_EINVAL;
        return NULL;
    }
    xc_buf_init(&buf);
    rc = xc_json_to_mp(s, len, &buf, why, why_len);
    if (rc == 0) v = xc_client_value_parse(buf.data, buf.len, &rc);
    xc_buf_free(&buf);
    if (err) *err = rc;
    return v;
}
