/* The stats history (see xc_history.h). */
#include "xc_history.h"
#include "xc_afile.h"
#include "xc_error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

static int join(char *out, size_t n, const char *dir, const char *file, char *why, size_t wl)
{
    int k = snprintf(out, n, "%s/%s", dir, file);
    if (k < 0 || (size_t)k >= n) {
        xc_why(why, wl, "state_dir too long for the history file: %.100s...", dir);
        return XC_EINVAL;
    }
    return XC_OK;
}

/* Rotation happens before the line that would pass the limit, so a file never
 * exceeds max_bytes unless one line alone does; the rename replaces the old
 * file atomically, so a reader sees either generation whole. */
int xc_history_append(const char *dir, const char *line, size_t len, long max_bytes, char *why, size_t wl)
{
    char path[XC_AFILE_PATH_MAX], old[XC_AFILE_PATH_MAX];
    if (max_bytes <= 0) return XC_OK;
    int rc = join(path, sizeof path, dir, XC_HISTORY_FILE, why, wl);
    if (rc || (rc = join(old, sizeof old, dir, XC_HISTORY_OLD, why, wl))) return rc;
    struct stat st;
    if (stat(path, &st) == 0 && st.st_size > 0 && (uint64_t)st.st_size + len + 1 > (uint64_t)max_bytes) {
        if (rename(path, old)) {
            xc_why(why, wl, "cannot rotate %s to %s: %s", path, old, strerror(errno));
            return XC_EIO;
        }
    }
    int fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0) {
        xc_why(why, wl, "cannot open %s: %s", path, strerror(errno));
        return XC_EIO;
    }
    /* a line torn by an earlier failure (disk full) is ended first, so it
     * stays one unreadable line instead of spoiling this one */
    char last = '\n';
    struct stat fs;
    if (fstat(fd, &fs) == 0 && fs.st_size > 0 && pread(fd, &last, 1, fs.st_size - 1) != 1) last = '\n';
    int torn = last != '\n';
    /* one write(2) of line + newline: O_APPEND places it whole at the end */
    struct iovec iov[3] = {{"\n", 1}, {(void *)line, len}, {"\n", 1}};
    ssize_t w;
    do {
        w = writev(fd, iov + !torn, 2 + torn);
    } while (w < 0 && errno == EINTR);
    int err = w < 0 ? errno : 0;
    close(fd);
    if (w < 0 || (size_t)w != len + 1 + (size_t)torn) {
        xc_why(why, wl, "cannot append to %s: %s", path, w < 0 ? strerror(err) : "short write (disk full?)");
        return XC_EIO;
    }
    return XC_OK;
}

/* The last cap bytes of path into *buf (caller frees); *whole = 1 when that is
 * the whole file. A missing file is empty and whole. */
static int read_tail(const char *path, size_t cap, char **buf, size_t *len, int *whole, char *why, size_t wl)
{
    *buf = NULL;
    *len = 0;
    *whole = 1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return XC_OK;
        xc_why(why, wl, "cannot open %s: %s", path, strerror(errno));
        return XC_EIO;
    }
    struct stat st;
    int rc = XC_OK;
    if (fstat(fd, &st)) {
        xc_why(why, wl, "cannot stat %s: %s", path, strerror(errno));
        rc = XC_EIO;
        goto out_close;
    }
    size_t sz = (size_t)st.st_size, n = sz > cap ? cap : sz;
    off_t off = (off_t)(sz - n);
    *whole = off == 0;
    *buf = malloc(n ? n : 1); /* owned by the caller */
    if (!*buf) {
        xc_why(why, wl, "out of memory reading %s", path);
        rc = XC_ENOMEM;
        goto out_close;
    }
    while (*len < n) {
        ssize_t r = pread(fd, *buf + *len, n - *len, off + (off_t)*len);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            xc_why(why, wl, "cannot read %s: %s", path, strerror(errno));
            rc = XC_EIO;
            break;
        }
        if (r == 0) break; /* truncated meanwhile: what was read is what there is */
        *len += (size_t)r;
    }
out_close:
    close(fd);
    return rc;
}

/* The complete lines of b: [*lo, *hi). A partial first line (the window
 * began mid-line) and a torn last one (no newline yet) are left out. */
static void complete_lines(const char *b, size_t len, int whole, size_t *lo, size_t *hi)
{
    size_t l = 0, h = len;
    if (!whole) {
        const char *nl = memchr(b, '\n', len);
        l = nl ? (size_t)(nl - b) + 1 : len;
    }
    while (h > l && b[h - 1] != '\n') h--;
    *lo = l;
    *hi = h;
}

/* Where the last k lines of b[lo, hi) (complete lines) begin; *got the lines
 * taken, *left 1 when lines before them were left out. */
static size_t last_lines(const char *b, size_t lo, size_t hi, long k, long *got, int *left)
{
    size_t p = hi;
    *got = 0;
    *left = 0;
    while (p > lo) {
        size_t q = p - 1; /* at the newline ending the line before p */
        while (q > lo && b[q - 1] != '\n') q--;
        if (*got == k) {
            *left = 1;
            break;
        }
        (*got)++;
        p = q;
    }
    return p;
}

static int emit(const char *b, size_t from, size_t hi, xc_history_line_fn fn, void *ctx)
{
    while (from < hi) {
        const char *nl = memchr(b + from, '\n', hi - from);
        size_t e = (size_t)(nl - b);
        if (e > from && fn(ctx, b + from, e - from)) return 1;
        from = e + 1;
    }
    return 0;
}

/* The newest lines first decide what is taken (the current file, then the
 * rotated one for what n and the byte budget leave); they are given oldest
 * first. Each file is read only as far back as the budget reaches. */
int xc_history_tail(const char *dir, long n, size_t max_bytes, xc_history_line_fn fn, void *ctx, int *more,
                    char *why, size_t wl)
{
    char path[XC_AFILE_PATH_MAX], old[XC_AFILE_PATH_MAX];
    char *cb = NULL, *ob = NULL;
    size_t cl, ol = 0, clo, chi, olo = 0, ohi = 0, cfrom, ofrom = 0;
    int cwhole, owhole = 1, left;
    long got_c, got_o = 0;
    *more = 0;
    int rc = join(path, sizeof path, dir, XC_HISTORY_FILE, why, wl);
    if (rc || (rc = join(old, sizeof old, dir, XC_HISTORY_OLD, why, wl))) return rc;
    if (n <= 0) return XC_OK;
    if ((rc = read_tail(path, max_bytes, &cb, &cl, &cwhole, why, wl))) goto out_free;
    complete_lines(cb, cl, cwhole, &clo, &chi);
    cfrom = last_lines(cb, clo, chi, n, &got_c, &left);
    *more = left || !cwhole;
    if (!*more && got_c < n && cl < max_bytes) {
        if ((rc = read_tail(old, max_bytes - cl, &ob, &ol, &owhole, why, wl))) goto out_free;
        complete_lines(ob, ol, owhole, &olo, &ohi);
        ofrom = last_lines(ob, olo, ohi, n - got_c, &got_o, &left);
        *more = left || !owhole;
    } else if (!*more) {
        struct stat st; /* n lines or the budget taken here: older ones may wait in the rotated file */
        *more = stat(old, &st) == 0 && st.st_size > 0;
    }
    if (ob && emit(ob, ofrom, ohi, fn, ctx)) goto out_free;
    emit(cb, cfrom, chi, fn, ctx);
out_free:
    free(cb);
    free(ob);
    return rc;
}
