/* Atomic file replacement (see xc_afile.h). */
#include "xc_afile.h"
#include "xc_error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void xc_dirname(const char *path, char *out, size_t n)
{
    const char *sl = strrchr(path, '/');
    if (!sl) snprintf(out, n, ".");
    else if (sl == path) snprintf(out, n, "/");
    else snprintf(out, n, "%.*s", (int)(sl - path), path);
}

void xc_fsync_dir(const char *dir)
{
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) { /* makes renames and unlinks durable */
        if (fsync(dfd)) { /* best effort: some file systems refuse a directory fsync */
        }
        close(dfd);
    }
}

/* The default temp name sits beside the final file and starts with a dot, so
 * directory listings of finished files (checkpoints) never show it. */
int xc_afile_open(xc_afile_t *a, const char *path, const char *tmp, int flags, mode_t mode, char *why,
                  size_t wl)
{
    a->fd = -1;
    a->flags = flags;
    a->tmp[0] = a->path[0] = 0;
    if (!path || (size_t)snprintf(a->path, sizeof a->path, "%s", path) >= sizeof a->path) {
        xc_why(why, wl, "path too long: %.100s...", path ? path : "(none)");
        return XC_EINVAL;
    }
    int n;
    if (tmp) {
        n = snprintf(a->tmp, sizeof a->tmp, "%s", tmp);
    } else {
        const char *sl = strrchr(path, '/');
        n = sl ? snprintf(a->tmp, sizeof a->tmp, "%.*s/.%s.tmp.%ld", (int)(sl - path), path, sl + 1, (long)getpid())
               : snprintf(a->tmp, sizeof a->tmp, ".%s.tmp.%ld", path, (long)getpid());
    }
    if (n < 0 || (size_t)n >= sizeof a->tmp) {
        xc_why(why, wl, "path too long: %.100s...", path);
        return XC_EINVAL;
    }
    int of = O_CLOEXEC | ((flags & XC_AFILE_KEEP) ? O_RDWR | O_CREAT : O_WRONLY | O_CREAT | O_TRUNC);
    a->fd = open(a->tmp, of, mode);
    if (a->fd < 0) {
        xc_why(why, wl, "cannot create %s: %s", a->tmp, strerror(errno));
        return XC_EIO;
    }
    return XC_OK;
}

int xc_afile_write(xc_afile_t *a, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(a->fd, c, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

/* The order matters: the data must be on disk before the rename makes it the
 * file, and the directory entry must be on disk before we report success. */
int xc_afile_commit(xc_afile_t *a, char *why, size_t wl)
{
    char dir[XC_AFILE_PATH_MAX];
    int sync = !(a->flags & XC_AFILE_NOSYNC);
    if (sync && fsync(a->fd)) {
        xc_why(why, wl, "cannot sync %s: %s", a->tmp, strerror(errno));
        goto fail;
    }
    int rc = close(a->fd);
    a->fd = -1;
    if (rc) {
        xc_why(why, wl, "cannot write %s: %s", a->tmp, strerror(errno));
        goto fail;
    }
    if (rename(a->tmp, a->path)) {
        xc_why(why, wl, "cannot rename %s to %s: %s", a->tmp, a->path, strerror(errno));
        goto fail;
    }
    if (sync) {
        xc_dirname(a->path, dir, sizeof dir);
        xc_fsync_dir(dir);
    }
    return XC_OK;
fail:
    xc_afile_abort(a, 0);
    return XC_EIO;
}

void xc_afile_abort(xc_afile_t *a, int keep_tmp)
{
    if (a->fd >= 0) close(a->fd);
    a->fd = -1;
    if (!keep_tmp && a->tmp[0]) unlink(a->tmp);
}

int xc_afile_write_all(const char *path, const void *data, size_t len, int flags, mode_t mode, char *why,
                       size_t wl)
{
    xc_afile_t a;
    int rc = xc_afile_open(&a, path, NULL, flags, mode, why, wl);
    if (rc) return rc;
    if (xc_afile_write(&a, data, len)) {
        xc_why(why, wl, "cannot write %s: %s", a.tmp, strerror(errno));
        xc_afile_abort(&a, 0);
        return XC_EIO;
    }
    return xc_afile_commit(&a, why, wl);
}

int xc_mkdirs(const char *path, char *why, size_t why_len)
{
    char p[1024];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof p) {
        xc_why(why, why_len, "bad directory path '%s'", path);
        return XC_EINVAL;
    }
    memcpy(p, path, n + 1);
    for (char *s = p + 1; ; s++) {
        if (*s == '/' || *s == 0) {
            char c = *s;
            *s = 0;
            if (mkdir(p, 0755) && errno != EEXIST) {
                xc_why(why, why_len, "cannot create directory %s: %s", p, strerror(errno));
                return XC_EIO;
            }
            *s = c;
            if (!c) break;
        }
    }
    struct stat sb;
    if (stat(path, &sb) || !S_ISDIR(sb.st_mode)) {
        xc_why(why, why_len, "%s is not a directory", path);
        return XC_EIO;
    }
    return XC_OK;
}
