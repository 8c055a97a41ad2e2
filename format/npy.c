/* The one home of the .npy format (used by libxcoder, whose public xc_client_npy_*
 * API this implements, the CLI, tests and benches). .npy files (NumPy format 1.0/2.0/3.0) holding activations [N, 2, d] as
 * float32 or float16: header parsing (a Python dict literal, parsed properly,
 * not pattern-matched), a read-only mmap of the data, and a float32 writer. */
#include "xcoder.h"
#include "xc_error.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAX_HEADER (1u << 20)

/* ---- a tiny parser for the header dict: {'key': value, ...} ---- */

typedef struct {
    const char *p, *end;
} npy_lex_t;

static void skip_ws(npy_lex_t *l)
{
    while (l->p < l->end && isspace((unsigned char)*l->p)) l->p++;
}

static int eat(npy_lex_t *l, char c)
{
    skip_ws(l);
    if (l->p < l->end && *l->p == c) {
        l->p++;
        return 1;
    }
    return 0;
}

/* A quoted Python string ('...' or "..."), no escapes needed for npy keys/descr. */
static int parse_str(npy_lex_t *l, char *out, size_t cap)
{
    skip_ws(l);
    if (l->p >= l->end || (*l->p != '\'' && *l->p != '"')) return -1;
    char q = *l->p++;
    size_t n = 0;
    while (l->p < l->end && *l->p != q) {
        if (*l->p == '\\' || n + 1 >= cap) return -1;
        out[n++] = *l->p++;
    }
    if (l->p >= l->end) return -1;
    l->p++;
    out[n] = 0;
    return 0;
}

static int parse_word(npy_lex_t *l, const char *w)
{
    skip_ws(l);
    size_t n = strlen(w);
    if ((size_t)(l->end - l->p) >= n && memcmp(l->p, w, n) == 0) {
        l->p += n;
        return 1;
    }
    return 0;
}

/* (a, b, c) or (a,) or (); ints may carry an L suffix (old Python 2 files). */
static int parse_shape(npy_lex_t *l, long *shape, int *ndim)
{
    *ndim = 0;
    if (!eat(l, '(')) return -1;
    for (;;) {
        if (eat(l, ')')) return 0;
        skip_ws(l);
        if (l->p >= l->end || !isdigit((unsigned char)*l->p)) return -1;
        long v = 0;
        while (l->p < l->end && isdigit((unsigned char)*l->p)) {
            if (v > (long)1e15) return -1;
            v = v * 10 + (*l->p++ - '0');
        }
        if (l->p < l->end && *l->p == 'L') l->p++;
        if (*ndim >= XC_CLIENT_NPY_MAX_DIMS) return -1;
        shape[(*ndim)++] = v;
        if (eat(l, ',')) continue;
        if (eat(l, ')')) return 0;
        return -1;
    }
}

int xc_client_npy_parse_header(const void *buf, size_t len, xc_client_npy_t *out, char *why,
                               size_t why_len)
{
    const unsigned char *b = buf;
    char descr[32] = "";
    int have_descr = 0, have_order = 0, have_shape = 0, fortran = 0;

    memset(out, 0, sizeof *out);
    out->fd = -1;
    if (len < 10 || memcmp(b, NPY_MAGIC, 6) != 0) {
        xc_why(why, why_len, "not a .npy file (no \\x93NUMPY magic); save the array with numpy.save()");
        return XC_ECORRUPT;
    }
    unsigned major = b[6];
    size_t hlen, hoff;
    if (major == 1) {
        hlen = (size_t)b[8] | (size_t)b[9] << 8;
        hoff = 10;
    } else if (major == 2 || major == 3) {
        if (len < 12) {
            xc_why(why, why_len, "truncated .npy header");
            return XC_ECORRUPT;
        }
        hlen = (size_t)b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
        hoff = 12;
    } else {
        xc_why(why, why_len, ".npy format version %u.%u is not supported (1.0, 2.0 and 3.0 are)", major, b[7]);
        return XC_ECORRUPT;
    }
    if (hlen > NPY_MAX_HEADER || hoff + hlen > len) {
        xc_why(why, why_len, "truncated .npy header (%zu bytes announced)", hlen);
        return XC_ECORRUPT;
    }

    npy_lex_t l = {(const char *)b + hoff, (const char *)b + hoff + hlen};
    if (!eat(&l, '{')) {
        xc_why(why, why_len, "malformed .npy header: expected a dict");
        return XC_ECORRUPT;
    }
    for (;;) {
        char key[32];
        if (eat(&l, '}')) break;
        if (parse_str(&l, key, sizeof key) < 0 || !eat(&l, ':')) {
            xc_why(why, why_len, "malformed .npy header: bad key");
            return XC_ECORRUPT;
        }
        if (strcmp(key, "descr") == 0) {
            if (parse_str(&l, descr, sizeof descr) < 0) {
                xc_why(why, why_len, "malformed .npy header: 'descr' is not a simple dtype string (structured arrays are not supported)");
                return XC_ECORRUPT;
            }
            have_descr = 1;
        } else if (strcmp(key, "fortran_order") == 0) {
            if (parse_word(&l, "True")) fortran = 1;
            else if (parse_word(&l, "False")) fortran = 0;
            else {
                xc_why(why, why_len, "malformed .npy header: bad fortran_order");
                return XC_ECORRUPT;
            }
            have_order = 1;
        } else if (strcmp(key, "shape") == 0) {
            if (parse_shape(&l, out->shape, &out->ndim) < 0) {
                xc_why(why, why_len, "malformed .npy header: bad shape tuple");
                return XC_ECORRUPT;
            }
            have_shape = 1;
        } else {
            xc_why(why, why_len, "malformed .npy header: unknown key '%s'", key);
            return XC_ECORRUPT;
        }
        if (eat(&l, ',')) continue;
        if (eat(&l, '}')) break;
        xc_why(why, why_len, "malformed .npy header: expected ',' or '}'");
        return XC_ECORRUPT;
    }
    if (!have_descr || !have_order || !have_shape) {
        xc_why(why, why_len, "malformed .npy header: needs descr, fortran_order and shape");
        return XC_ECORRUPT;
    }

    /* dtype: float32 or float16, either byte order ('|' only for 1-byte types) */
    char order = descr[0];
    const char *t = descr + 1;
    if (order != '<' && order != '>' && order != '=') {
        xc_why(why, why_len, "unsupported dtype '%s': need float32 or float16", descr);
        return XC_EDTYPE;
    }
    if (strcmp(t, "f4") == 0) {
        out->dtype = XC_CLIENT_DTYPE_F32;
        out->itemsize = 4;
    } else if (strcmp(t, "f2") == 0) {
        out->dtype = XC_CLIENT_DTYPE_F16;
        out->itemsize = 2;
    } else {
        xc_why(why, why_len, "unsupported dtype '%s': need float32 ('<f4') or float16 ('<f2'); convert with arr.astype(np.float32)", descr);
        return XC_EDTYPE;
    }
    out->swap = (order == '>'); /* this client runs little-endian only */
    if (fortran) {
        xc_why(why, why_len, "array is in Fortran order; save np.ascontiguousarray(arr) instead");
        return XC_ESHAPE;
    }
    if (out->ndim != 3 || out->shape[1] != 2) {
        xc_why(why, why_len, "array has shape %s; need [N, 2, d] (base then chat activations per token)", xc_client_npy_shape_str(out));
        return XC_ESHAPE;
    }
    if (out->shape[0] < 1 || out->shape[2] < 1) {
        xc_why(why, why_len, "array has shape %s; N and d must be positive", xc_client_npy_shape_str(out));
        return XC_ESHAPE;
    }
    out->n_tokens = out->shape[0];
    out->d = out->shape[2];
    out->data_offset = hoff + hlen;
    out->data_bytes = (size_t)out->n_tokens * 2u * (size_t)out->d * out->itemsize;
    return XC_OK;
}

const char *xc_client_npy_shape_str(const xc_client_npy_t *n)
{
    /* Owned by the struct; valid until it changes. */
    xc_client_npy_t *m = (xc_client_npy_t *)n;
    size_t off = 0;
    off += (size_t)snprintf(m->shape_str, sizeof m->shape_str, "[");
    for (int i = 0; i < n->ndim && off < sizeof m->shape_str; i++)
        off += (size_t)snprintf(m->shape_str + off, sizeof m->shape_str - off, "%s%ld", i ? ", " : "", n->shape[i]);
    if (off < sizeof m->shape_str) snprintf(m->shape_str + off, sizeof m->shape_str - off, "]");
    return m->shape_str;
}

int xc_client_npy_open(const char *path, xc_client_npy_t *out, char *why, size_t why_len)
{
    struct stat st;
    memset(out, 0, sizeof *out);
    out->fd = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        xc_why(why, why_len, "cannot open %s: %s", path, strerror(errno));
        return XC_EIO;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        xc_why(why, why_len, "%s is not a regular file", path);
        return XC_EIO;
    }
    if (st.st_size < 10) {
        close(fd);
        xc_why(why, why_len, "%s is too short to be a .npy file (%lld bytes)", path, (long long)st.st_size);
        return XC_ECORRUPT;
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        int e = errno;
        close(fd);
        xc_why(why, why_len, "cannot map %s: %s", path, strerror(e));
        return XC_EIO;
    }
    char msg[256];
    int rc = xc_client_npy_parse_header(map, (size_t)st.st_size, out, msg, sizeof msg);
    if (rc == XC_OK && out->data_offset + out->data_bytes != (size_t)st.st_size) {
        xc_why(msg, sizeof msg, "data is %zu bytes but shape %s needs %zu; the file is truncated or corrupt",
               (size_t)st.st_size - out->data_offset, xc_client_npy_shape_str(out), out->data_bytes);
        rc = XC_ELENGTH;
    }
    if (rc != XC_OK) {
        munmap(map, (size_t)st.st_size);
        close(fd);
        memset(out, 0, sizeof *out);
        out->fd = -1;
        xc_why(why, why_len, "%s: %s", path, msg);
        return rc;
    }
    out->fd = fd;
    out->map = map;
    out->map_len = (size_t)st.st_size;
    out->data = (const char *)map + out->data_offset;
    madvise(map, out->map_len, MADV_SEQUENTIAL);
    return XC_OK;
}

void xc_client_npy_close(xc_client_npy_t *n)
{
    if (!n) return;
    if (n->map) munmap(n->map, n->map_len);
    if (n->fd >= 0) close(n->fd);
    memset(n, 0, sizeof *n);
    n->fd = -1;
}

/* Writes float32 [n, 2, d] as a version 1.0 .npy file (header padded to 64 bytes). */
int xc_client_npy_write_f32(const char *path, const float *x, long n, long d, char *why, size_t why_len)
{
    char hdr[128];
    if (!path || !x || n < 1 || d < 1) {
        xc_why(why, why_len, "npy write: empty array");
        return XC_EINVAL;
    }
    int h = snprintf(hdr + 10, sizeof hdr - 10, "{'descr': '<f4', 'fortran_order': False, 'shape': (%ld, 2, %ld), }", n, d);
    size_t total = 10 + (size_t)h + 1;
    size_t padded = (total + 63) / 64 * 64;
    if (padded > sizeof hdr) {
        xc_why(why, why_len, "npy write: shape too large");
        return XC_EINVAL;
    }
    memset(hdr + 10 + h, ' ', padded - 10 - (size_t)h - 1);
    hdr[padded - 1] = '\n';
    memcpy(hdr, NPY_MAGIC, 6);
    hdr[6] = 1;
    hdr[7] = 0;
    hdr[8] = (char)((padded - 10) & 0xff);
    hdr[9] = (char)((padded - 10) >> 8);
    FILE *f = fopen(path, "wb");
    if (!f) {
        xc_why(why, why_len, "cannot create %s: %s", path, strerror(errno));
        return XC_EIO;
    }
    size_t cnt = (size_t)n * 2u * (size_t)d;
    int ok = fwrite(hdr, 1, padded, f) == padded && fwrite(x, sizeof(float), cnt, f) == cnt;
    ok = (fclose(f) == 0) && ok;
    if (!ok) {
        xc_why(why, why_len, "cannot write %s: %s", path, strerror(errno));
        return XC_EIO;
    }
    return XC_OK;
}
