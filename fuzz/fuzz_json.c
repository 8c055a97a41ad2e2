/* libFuzzer: any MessagePack document rendered as JSON (the CLI's --json, the
 * daemon's config text): linear in the input, depth and size capped, never a
 * crash. The output must stay within a fixed multiple of the input. */
#include "fuzz_common.h"
#include "xc_error.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    xc_mp_doc_t *doc = NULL;
    char why[256];
    if (xc_mp_doc_parse(d, n, &doc, why, sizeof why) == XC_OK) {
        xc_buf_t out;
        xc_buf_init(&out);
        if (xc_mp_to_json(xc_mp_root(doc), &out, 1) == XC_OK && out.len > 64 * n + 4096)
            abort(); /* exponential or runaway rendering */
        xc_buf_free(&out);
    }
    xc_mp_doc_free(&doc);
    return 0;
}
