/* libFuzzer: a control request frame from a hostile client: decoding, op
 * lookup, and the error reply every request gets (id echoed when readable). */
#include "fuzz_common.h"
#include "xc_error.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    xc_request_t req;
    char why[XC_PROTO_REASON_MAX];
    xc_buf_t out;
    xc_buf_init(&out);
    int rc = xc_proto_request_decode(d, n, &req, why, sizeof why);
    xc_proto_error_encode(&out, &req, rc ? rc : XC_EINVAL, why);
    xc_proto_request_free(&req);
    xc_buf_free(&out);
    return 0;
}
