/* Remote access commands: checkpoints, fetch, table (xc_cli_remote.h;
 * PROTOCOL.md 2.1, 2.2). Everything goes through the control socket, so they
 * work from another host (--control tcp://HOST:PORT). */
#include "xc_afile.h"
#include "xc_cli_remote.h"
#include "xc_remote_proto.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const xc_cli_optdef_t xc_cli_checkpoints_opts[] = {{NULL, NULL, NULL}};

const xc_cli_optdef_t xc_cli_fetch_opts[] = {
    {"resume", NULL, "continue from the bytes already in OUT.part (default: start over)"},
    {"chunk", "BYTES", "bytes per request, at most 1048576 (default 1048576)"},
    {"quiet", NULL, "no progress line"},
    {NULL, NULL, NULL}};

const xc_cli_optdef_t xc_cli_table_opts[] = {
    {"fields", "LIST", "comma-separated columns (default: all but j; proto/SHM.md): " XC_COL_NAMES_LIST},
    {"range", "A:B", "latents A <= j < B (A: or :B open-ended; default all)"},
    {"npy", "DIR", "write DIR/FIELD.npy per column (and DIR/j.npy) instead of printing"},
    {NULL, NULL, NULL}};

/* ------------------------------------------------------------ checkpoints */

int xc_cli_cmd_checkpoints(xc_cli_args_t *a)
{
    xc_client_t *c = xc_cli_client(a, 0);
    if (!c) return XC_CLI_FAIL;
    xc_client_value_t *r = NULL;
    int rc = xc_client_request(c, "checkpoints", NULL, 0, &r), out = XC_CLI_OK;
    if (rc < 0) out = xc_cli_fail(a, c, rc);
    else if (a->json) out = xc_cli_print_json(a, r);
    else {
        const xc_client_value_t *l = xc_client_value_get(r, "checkpoints");
        size_t n = l && l->type == XC_VAL_ARRAY ? l->u.a.n : 0;
        if (n == 0) printf("no checkpoint yet\n");
        else printf("%-44s %10s %10s  %-10s %s\n", "NAME", "SIZE", "STEP", "KIND", "WRITTEN");
        for (size_t i = 0; i < n; i++) {
            const xc_client_value_t *e = &l->u.a.items[i];
            char sz[32], when[32] = "?";
            time_t t = (time_t)xc_client_value_getnum(e, "mtime", 0);
            struct tm tm;
            if (localtime_r(&t, &tm)) strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
            printf("%-44s %10s %10.0f  %-10s %s\n", xc_client_value_getstr(e, "name", "?"),
                   xc_cli_fmt_bytes(xc_client_value_getnum(e, "size", 0), sz, sizeof sz),
                   xc_client_value_getnum(e, "step", -1), xc_client_value_getstr(e, "kind", "?"), when);
        }
    }
    xc_client_value_free(&r);
    xc_client_destroy(&c);
    return out;
}

/* ------------------------------------------------------------------ fetch */

typedef struct {
    char name[208];
    uint64_t size;
    char checksum[80];
    double step;
} announce_t;

static int read_announce(const xc_client_value_t *r, announce_t *an)
{
    const char *name = xc_client_value_getstr(r, "name", NULL), *sum = xc_client_value_getstr(r, "checksum", NULL);
    double size = xc_client_value_getnum(r, "size", NAN);
    if (!name || !sum || !(size >= 0) || strlen(name) >= sizeof an->name || strlen(sum) >= sizeof an->checksum)
        return XC_EPROTO;
    snprintf(an->name, sizeof an->name, "%s", name);
    snprintf(an->checksum, sizeof an->checksum, "%s", sum);
    an->size = (uint64_t)size;
    an->step = xc_client_value_getnum(r, "step", -1);
    return XC_OK;
}

static int fetch_req(xc_client_t *c, const char *file, uint64_t off, uint64_t len, xc_client_value_t **r)
{
    xc_client_arg_t args[3] = {{"offset", XC_ARG_INT, (int64_t)off, 0, NULL},
                               {"length", XC_ARG_INT, (int64_t)len, 0, NULL},
                               {"file", XC_ARG_STR, 0, 0, file}};
    return xc_client_request(c, "fetch", args, file ? 3 : 2, r);
}

/* Hashes the first n bytes of fd. 0 or -errno. */
static int hash_prefix(int fd, uint64_t n, xc_sha256_t *h, uint8_t *buf)
{
    for (uint64_t off = 0; off < n;) {
        size_t k = n - off < XC_FETCH_CHUNK_MAX ? (size_t)(n - off) : XC_FETCH_CHUNK_MAX;
        ssize_t got = pread(fd, buf, k, (off_t)off);
        if (got <= 0) return got < 0 ? -errno : -EIO;
        xc_sha256_update(h, buf, (size_t)got);
        off += (uint64_t)got;
    }
    return 0;
}

static int write_all(int fd, const void *p, size_t n, uint64_t off)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t k = pwrite(fd, b, n, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return -errno;
        b += k, n -= (size_t)k, off += (uint64_t)k;
    }
    return 0;
}

int xc_cli_cmd_fetch(xc_cli_args_t *a)
{
    const char *ckpt = a->npos == 2 ? a->pos[0] : NULL, *out = a->pos[a->npos - 1];
    long chunk;
    if (xc_cli_opt_long(a, "chunk", XC_FETCH_CHUNK_MAX, 1, XC_FETCH_CHUNK_MAX, &chunk)) return XC_CLI_USAGE;
    int resume = xc_cli_flag(a, "resume"), quiet = xc_cli_flag(a, "quiet") || a->json;
    const char *file = NULL;
    if (ckpt) { /* a path the daemon reported: its basename is the name */
        const char *sl = strrchr(ckpt, '/');
        file = sl ? sl + 1 : ckpt;
        if (!xc_ckpt_name_ok(file, strlen(file))) {
            xc_cli_err(a, "'%s' is not a checkpoint name (NAME-STEP.safetensors; see xcoder checkpoints)", ckpt);
            return XC_CLI_USAGE;
        }
    }
    size_t plen = strlen(out) + 6;
    char *part = malloc(plen);
    uint8_t *buf = malloc(XC_FETCH_CHUNK_MAX);
    if (!part || !buf) {
        free(part);
        free(buf);
        xc_cli_err(a, "out of memory");
        return XC_CLI_FAIL;
    }
    snprintf(part, plen, "%s.part", out);
    xc_cli_trap_signals();
    xc_client_t *c = xc_cli_client(a, 0);
    int ret = XC_CLI_FAIL;
    xc_afile_t f = {.fd = -1}; /* OUT.part, renamed to OUT once its SHA-256 matches */
    xc_client_value_t *r = NULL;
    announce_t an;
    uint64_t resumed_from = 0, fetched = 0;
    if (!c) goto done;
    for (int attempt = 0; attempt < 2; attempt++) {
        int rc = fetch_req(c, file, 0, 0, &r);
        if (rc < 0) {
            ret = xc_cli_fail(a, c, rc);
            goto done;
        }
        if (read_announce(r, &an)) {
            xc_cli_err(a, "the daemon's fetch reply lacks name/size/checksum");
            goto done;
        }
        xc_client_value_free(&r);
        file = an.name; /* pinned for the rest of the transfer */
        struct stat st;
        uint64_t start = 0;
        if (resume && attempt == 0 && stat(part, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size <= an.size)
            start = (uint64_t)st.st_size;
        char why[600];
        if (xc_afile_open(&f, out, part, XC_AFILE_KEEP, 0644, why, sizeof why)) {
            xc_cli_err(a, "%s", why);
            goto done;
        }
        if (ftruncate(f.fd, (off_t)start)) {
            xc_cli_err(a, "cannot write %s: %s", part, strerror(errno));
            goto done;
        }
        xc_sha256_t h;
        xc_sha256_init(&h);
        if (start && (rc = hash_prefix(f.fd, start, &h, buf))) {
            xc_cli_err(a, "cannot read %s: %s", part, strerror(-rc));
            goto done;
        }
        resumed_from = start;
        if (start && a->verbose) fprintf(stderr, "xcoder fetch: resuming %s at byte %llu of %llu\n", an.name,
                                         (unsigned long long)start, (unsigned long long)an.size);
        int changed = 0;
        uint64_t off = start;
        xc_cli_progress_t pg; /* on a terminal: bytes of the size, rate, ETA */
        xc_cli_progress_start(&pg, "xcoder fetch", "B", (double)an.size, quiet);
        pg.base = (double)start;
        while (off < an.size) {
            rc = xc_cli_stop ? XC_EAGAIN : fetch_req(c, an.name, off, (uint64_t)chunk, &r);
            if (rc < 0) {
                xc_cli_progress_end(&pg);
                if (rc == XC_EAGAIN && xc_cli_stop) {
                    if (fsync(f.fd)) { /* best effort: --resume re-hashes what is there */
                    }
                    xc_cli_err(a, "interrupted at byte %llu of %llu; `xcoder fetch %s %s --resume` continues",
                               (unsigned long long)off, (unsigned long long)an.size, an.name, out);
                    goto done;
                }
                ret = xc_cli_fail(a, c, rc);
                goto done;
            }
            announce_t now;
            const xc_client_value_t *d = xc_client_value_get(r, "data");
            if (read_announce(r, &now) || strcmp(now.name, an.name) || now.size != an.size ||
                strcmp(now.checksum, an.checksum)) {
                changed = 1;
                break;
            }
            if (!d || d->type != XC_VAL_BIN || d->u.s.len == 0 ||
                xc_client_value_getnum(r, "offset", -1) != (double)off) {
                xc_cli_err(a, "bad fetch reply at byte %llu (no data or wrong offset)", (unsigned long long)off);
                goto done;
            }
            if ((rc = write_all(f.fd, d->u.s.ptr, d->u.s.len, off))) {
                xc_cli_err(a, "cannot write %s: %s", part, strerror(-rc));
                goto done;
            }
            xc_sha256_update(&h, d->u.s.ptr, d->u.s.len);
            off += d->u.s.len;
            fetched += d->u.s.len;
            xc_client_value_free(&r);
            xc_cli_progress_update(&pg, (double)off);
        }
        xc_client_value_free(&r);
        xc_cli_progress_end(&pg);
        uint8_t dg[32];
        char got[72];
        xc_sha256_final(&h, dg);
        xc_sha256_checksum(dg, got);
        if (!changed && strcmp(got, an.checksum) == 0) {
            if (xc_afile_commit(&f, why, sizeof why)) { /* fsync, rename to OUT, fsync the directory */
                xc_cli_err(a, "%s", why);
                goto done;
            }
            ret = XC_CLI_OK;
            break;
        }
        xc_afile_abort(&f, 1); /* kept: the next attempt starts it again from byte 0 */
        if (attempt == 1) {
            xc_cli_err(a, "%s: %s", an.name,
                       changed ? "the file changed on the daemon during the transfer twice; try again"
                               : "the SHA-256 of the download does not match the daemon's checksum");
            goto done;
        }
        fprintf(stderr, "xcoder fetch: %s; fetching %s again from the start\n",
                changed ? "the file changed on the daemon during the transfer"
                        : "OUT.part does not hold the start of this file (checksum mismatch)",
                an.name);
        resume = 0;
    }
    if (a->json) {
        xc_buf_t b;
        xc_mpw_t w;
        xc_buf_init(&b);
        xc_mpw_init(&w, &b);
        xc_mpw_map_begin(&w);
        xc_mpw_kv_str(&w, "path", out);
        xc_mpw_kv_str(&w, "name", an.name);
        xc_mpw_kv_uint(&w, "size", an.size);
        xc_mpw_kv_str(&w, "checksum", an.checksum);
        xc_mpw_kv_int(&w, "step", (int64_t)an.step);
        xc_mpw_kv_uint(&w, "resumed_from", resumed_from);
        xc_mpw_kv_uint(&w, "fetched", fetched);
        xc_mpw_map_end(&w);
        ret = xc_cli_print_mpw(a, &w);
        xc_buf_free(&b);
    } else {
        char b1[32];
        printf("%s: %s (step %.0f, %s, %s)%s\n", out, an.name, an.step, xc_cli_fmt_bytes((double)an.size, b1, sizeof b1),
               an.checksum, resumed_from ? " resumed" : "");
    }
done:
    if (f.fd >= 0) xc_afile_abort(&f, 1); /* OUT.part stays for --resume */
    xc_client_value_free(&r);
    xc_client_destroy(&c);
    free(part);
    free(buf);
    return ret;
}

/* ------------------------------------------------------------------ table */

typedef struct {
    const char *name;
    int dtype;
    const uint8_t *p;
    size_t n; /* rows */
} col_t;

static double col_num(const col_t *c, size_t i)
{
    switch (c->dtype) {
    case XC_TCOL_F32: {
        float f;
        memcpy(&f, c->p + 4 * i, 4);
        return f;
    }
    case XC_TCOL_F64: {
        double d;
        memcpy(&d, c->p + 8 * i, 8);
        return d;
    }
    case XC_TCOL_I64: {
        int64_t v;
        memcpy(&v, c->p + 8 * i, 8);
        return (double)v;
    }
    default: return c->p[i];
    }
}

static void col_print(const col_t *c, size_t i)
{
    if (c->dtype == XC_TCOL_I64) {
        int64_t v;
        memcpy(&v, c->p + 8 * i, 8);
        printf("%lld", (long long)v);
    } else if (c->dtype == XC_TCOL_U8) {
        static const char *const cls[] = {"other", "shared", "chat_only", "base_only", "dead"};
        if (!strcmp(c->name, "class") && c->p[i] < 5) printf("%s", cls[c->p[i]]);
        else printf("%u", c->p[i]);
    } else {
        double v = col_num(c, i);
        if (isnan(v)) printf("nan");
        else printf("%.7g", v);
    }
}

/* A 1-D .npy (version 1.0) of n elements of the column's dtype. */
static int write_npy(const char *dir, const char *name, const void *p, int dtype, size_t n, char *why, size_t wl)
{
    static const char *const descr[] = {"", "<f4", "<f8", "<i8", "|u1"};
    char path[4096], hdr[128];
    snprintf(path, sizeof path, "%s/%s.npy", dir, name);
    int hl = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (%zu,), }", descr[dtype], n);
    int total = 10 + hl + 1, pad = (64 - total % 64) % 64;
    FILE *f = fopen(path, "wb");
    if (!f) {
        snprintf(why, wl, "cannot write %.400s: %s", path, strerror(errno));
        return XC_EIO;
    }
    uint16_t hlen = (uint16_t)(hl + pad + 1);
    uint8_t pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (uint8_t)(hlen & 0xff), (uint8_t)(hlen >> 8)};
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(hdr, 1, (size_t)hl, f) == (size_t)hl;
    for (int i = 0; ok && i < pad; i++) ok = fputc(' ', f) != EOF;
    ok = ok && fputc('\n', f) != EOF;
    size_t bytes = n * xc_table_dtype_size(dtype);
    ok = ok && (bytes == 0 || fwrite(p, 1, bytes, f) == bytes);
    ok = (fclose(f) == 0) && ok;
    if (!ok) {
        snprintf(why, wl, "cannot write %.400s: %s", path, strerror(errno));
        return XC_EIO;
    }
    return XC_OK;
}

int xc_cli_cmd_table(xc_cli_args_t *a)
{
    const char *fields = xc_cli_opt(a, "fields"), *range = xc_cli_opt(a, "range"), *npy = xc_cli_opt(a, "npy");
    xc_client_arg_t args[3];
    size_t nargs = 0;
    long lo = 0, hi = -1;
    if (range) {
        const char *colon = strchr(range, ':');
        char buf[64];
        if (!colon || strlen(range) >= sizeof buf) {
            xc_cli_err(a, "--range: '%s' is not A:B", range);
            return XC_CLI_USAGE;
        }
        snprintf(buf, sizeof buf, "%.*s", (int)(colon - range), range);
        if (buf[0] && xc_cli_parse_long("table --range start", buf, 0, 1L << 40, &lo)) return XC_CLI_USAGE;
        if (colon[1] && xc_cli_parse_long("table --range end", colon + 1, 0, 1L << 40, &hi)) return XC_CLI_USAGE;
        if (hi >= 0 && hi < lo) {
            xc_cli_err(a, "--range: end %ld is before start %ld", hi, lo);
            return XC_CLI_USAGE;
        }
        args[nargs++] = (xc_client_arg_t){"start", XC_ARG_INT, lo, 0, NULL};
        if (hi >= 0) args[nargs++] = (xc_client_arg_t){"count", XC_ARG_INT, hi - lo, 0, NULL};
    }
    if (fields) args[nargs++] = (xc_client_arg_t){"fields", XC_ARG_STR, 0, 0, fields};
    xc_client_t *c = xc_cli_client(a, 0);
    if (!c) return XC_CLI_FAIL;
    xc_client_value_t *r = NULL;
    int rc = xc_client_request(c, "table", args, nargs, &r), ret = XC_CLI_FAIL;
    col_t cols[64];
    size_t ncols = 0, n = 0;
    if (rc < 0) {
        ret = xc_cli_fail(a, c, rc);
        goto done;
    }
    n = (size_t)xc_client_value_getnum(r, "n", 0);
    lo = (long)xc_client_value_getnum(r, "start", 0);
    const xc_client_value_t *fl = xc_client_value_get(r, "fields"), *dt = xc_client_value_get(r, "dtypes"),
                            *cv = xc_client_value_get(r, "columns");
    for (size_t i = 0; fl && fl->type == XC_VAL_ARRAY && i < fl->u.a.n && ncols < 64; i++) {
        const xc_client_value_t *nm = &fl->u.a.items[i], *d, *b;
        if (nm->type != XC_VAL_STR || !(d = xc_client_value_get(dt, nm->u.s.ptr)) || d->type != XC_VAL_STR ||
            !(b = xc_client_value_get(cv, nm->u.s.ptr)) || b->type != XC_VAL_BIN) {
            xc_cli_err(a, "malformed table reply (column %zu)", i);
            goto done;
        }
        col_t *cl = &cols[ncols++];
        cl->name = nm->u.s.ptr;
        cl->dtype = xc_table_dtype_parse(d->u.s.ptr, d->u.s.len);
        cl->p = (const uint8_t *)b->u.s.ptr;
        cl->n = n;
        if (!cl->dtype || b->u.s.len != n * xc_table_dtype_size(cl->dtype)) {
            xc_cli_err(a, "malformed table reply (column %s: dtype %s, %zu bytes for %zu rows)", cl->name,
                       d->u.s.ptr, b->u.s.len, n);
            goto done;
        }
    }
    if (npy) {
        char why[512];
        if (mkdir(npy, 0755) && errno != EEXIST) {
            xc_cli_err(a, "cannot create %s: %s", npy, strerror(errno));
            goto done;
        }
        int64_t *j = malloc((n ? n : 1) * sizeof *j);
        if (!j) goto done;
        for (size_t i = 0; i < n; i++) j[i] = lo + (int64_t)i;
        rc = write_npy(npy, "j", j, XC_TCOL_I64, n, why, sizeof why);
        free(j);
        for (size_t k = 0; rc == 0 && k < ncols; k++)
            if (strcmp(cols[k].name, "j")) rc = write_npy(npy, cols[k].name, cols[k].p, cols[k].dtype, n, why, sizeof why);
        if (rc) {
            xc_cli_err(a, "%s", why);
            goto done;
        }
        if (a->verbose)
            fprintf(stderr, "xcoder table: %zu columns of %zu latents (snapshot step %.0f) in %s\n", ncols, n,
                    xc_client_value_getnum(r, "snapshot_step", -1), npy);
        ret = XC_CLI_OK;
    } else if (a->json) {
        xc_buf_t b;
        xc_mpw_t w;
        xc_buf_init(&b);
        xc_mpw_init(&w, &b);
        xc_mpw_map_begin(&w);
        xc_mpw_kv_int(&w, "snapshot_step", (int64_t)xc_client_value_getnum(r, "snapshot_step", -1));
        xc_mpw_kv_int(&w, "dict_size", (int64_t)xc_client_value_getnum(r, "dict_size", -1));
        xc_mpw_kv_uint(&w, "start", (uint64_t)lo);
        xc_mpw_kv_uint(&w, "n", n);
        xc_mpw_str(&w, "columns");
        xc_mpw_map_begin(&w);
        for (size_t k = 0; k < ncols; k++) {
            xc_mpw_str(&w, cols[k].name);
            xc_mpw_array_begin(&w);
            for (size_t i = 0; i < n; i++) {
                if (cols[k].dtype == XC_TCOL_I64) {
                    int64_t v;
                    memcpy(&v, cols[k].p + 8 * i, 8);
                    xc_mpw_int(&w, v);
                } else if (cols[k].dtype == XC_TCOL_U8) {
                    xc_mpw_uint(&w, cols[k].p[i]);
                } else {
                    xc_mpw_double(&w, col_num(&cols[k], i)); /* NaN renders as null */
                }
            }
            xc_mpw_array_end(&w);
        }
        xc_mpw_map_end(&w);
        xc_mpw_map_end(&w);
        ret = xc_cli_print_mpw(a, &w);
        xc_buf_free(&b);
    } else {
        printf("j");
        for (size_t k = 0; k < ncols; k++)
            if (strcmp(cols[k].name, "j")) printf("\t%s", cols[k].name);
        printf("\n");
        for (size_t i = 0; i < n; i++) {
            printf("%ld", lo + (long)i);
            for (size_t k = 0; k < ncols; k++) {
                if (!strcmp(cols[k].name, "j")) continue;
                putchar('\t');
                col_print(&cols[k], i);
            }
            putchar('\n');
        }
        ret = fflush(stdout) == 0 ? XC_CLI_OK : XC_CLI_FAIL;
    }
done:
    xc_client_value_free(&r);
    xc_client_destroy(&c);
    return ret;
}
