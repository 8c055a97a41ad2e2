/* libFuzzer: a .safetensors file (a fetched or hand-made checkpoint) through
 * the one reader: header parsing, tensor table, metadata, checksum. */
#define _GNU_SOURCE
#include "xc_stfile.h"

#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    int fd = memfd_create("st", 0);
    if (fd < 0) return 0;
    if (write(fd, d, n) != (ssize_t)n) {
        close(fd);
        return 0;
    }
    char path[64], why[256];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    int err;
    for (int lazy = 0; lazy < 2; lazy++) {
        xc_stf_t *f = lazy ? xc_stf_open_lazy(path, &err, why, sizeof why) : xc_stf_open(path, &err, why, sizeof why);
        if (!f) continue;
        for (int i = 0; i < xc_stf_count(f); i++) xc_stf_at(f, i);
        for (int i = 0; i < xc_stf_meta_count(f); i++) {
            xc_stf_meta_key(f, i);
            xc_stf_meta_val(f, i);
        }
        xc_stf_verify(f, why, sizeof why);
        xc_stf_close(&f);
    }
    close(fd);
    return 0;
}
