/* libFuzzer: a .npy header (xcoder push, offline scaling/examples inputs). */
#include "xcoder.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    xc_client_npy_t npy;
    char why[256];
    xc_client_npy_parse_header(d, n, &npy, why, sizeof why);
    return 0;
}
