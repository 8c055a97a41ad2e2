/* libFuzzer: an ingest message from a hostile producer — batch or vocabulary
 * header, payload, token and position frames — through every check the loop
 * thread runs before acking (xc_proto_batch_check / xc_proto_vocab_check,
 * conversion to f32, the magnitude limit). Must never crash, read out of
 * bounds or accept a payload whose length does not match its header. */
#include "fuzz_common.h"
#include "xc_error.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    xc_frame_t f[4];
    size_t k = fuzz_frames(d, n, f, 4);
    if (!k) return 0;
    xc_batch_hdr_t h;
    char why[XC_PROTO_REASON_MAX];
    memset(&h, 0, sizeof h);
    if (xc_proto_ingest_is_vocab(f[0].data, f[0].len)) {
        xc_proto_vocab_check(f, k, 1 << 20, &h, why, sizeof why);
        return 0;
    }
    xc_batch_limits_t lim = {16, 1 << 20};
    if (xc_proto_batch_check(f, k, &lim, &h, why, sizeof why) != XC_OK) return 0;
    size_t count = (size_t)h.n * 2 * h.d;
    if (f[1].len != xc_proto_payload_bytes(&h)) abort(); /* the check must guarantee it */
    float *x = malloc(count * sizeof *x);
    if (!x) return 0;
    if (xc_proto_payload_to_f32(&h, f[1].data, x, why, sizeof why) == XC_OK)
        xc_proto_payload_check_range(&h, x, 1e6f, why, sizeof why);
    free(x);
    return 0;
}
