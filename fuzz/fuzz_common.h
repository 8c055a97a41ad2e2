/* Shared by the libFuzzer harnesses: splitting one input into frames the way a
 * ZeroMQ multipart message arrives (a peer controls every byte and length). */
#ifndef XC_FUZZ_COMMON_H
#define XC_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "xc_proto.h"

/* Input layout: byte 0 = frame count - 1 (mod 4) + 1; then for every frame
 * but the last a 16-bit little-endian length, then the frames' bytes in order
 * (lengths are clipped to what is left; the last frame takes the rest). */
static inline size_t fuzz_frames(const uint8_t *d, size_t n, xc_frame_t *f, size_t max)
{
    if (n == 0) return 0;
    size_t k = (size_t)(d[0] % max) + 1, pos = 1;
    size_t lens[8] = {0};
    for (size_t i = 0; i + 1 < k; i++) {
        lens[i] = pos + 2 <= n ? (size_t)(d[pos] | d[pos + 1] << 8) : 0;
        pos = pos + 2 <= n ? pos + 2 : n;
    }
    for (size_t i = 0; i < k; i++) {
        size_t left = n - pos, l = i + 1 < k ? (lens[i] < left ? lens[i] : left) : left;
        f[i].data = d + pos;
        f[i].len = l;
        pos += l;
    }
    return k;
}

#endif
