/* Files that appear whole or not at all: every file xcoderd and its tools
 * replace (checkpoints, exports, the Prometheus text file, fetched
 * checkpoints) is written through this one routine:
 *   temp file in the same directory -> write -> fsync -> close -> rename over
 *   the final name -> fsync the directory
 * so a crash at any point leaves either the old file or the new one, never a
 * torn one, and the rename itself is durable.
 *
 * The temp file is DIR/.BASENAME.tmp.PID unless the caller names one (e.g.
 * `xcoder fetch` keeps OUT.part to resume a download). Writers that died leave
 * their temp files; callers that know their names remove them (the checkpoint
 * writer does at start-up). */
#ifndef XC_AFILE_H
#define XC_AFILE_H

#include <stddef.h>
#include <sys/types.h>

#define XC_AFILE_PATH_MAX 1100

typedef struct {
    int fd;                        /* the temp file, open for writing; -1 when closed */
    int flags;                     /* XC_AFILE_* given to open */
    char tmp[XC_AFILE_PATH_MAX];   /* its path */
    char path[XC_AFILE_PATH_MAX];  /* the final path */
} xc_afile_t;

enum {
    XC_AFILE_KEEP = 1,   /* open an existing temp file as it is (read-write, no truncation) */
    XC_AFILE_NOSYNC = 2  /* skip both fsyncs: for a file rewritten every few seconds from
                          * live state (the Prometheus text) by a thread that must not wait
                          * on the disk; still whole-or-nothing, only not durable */
};

/* Creates (truncates) the temp file for path, or opens tmp when given (with
 * XC_AFILE_KEEP: keeps its content). mode as for open(2) (the umask applies).
 * 0 or XC_EINVAL (path too long) / XC_EIO with the reason in why. */
int xc_afile_open(xc_afile_t *a, const char *path, const char *tmp, int flags, mode_t mode, char *why,
                  size_t why_len);
/* Writes all of p (retrying short writes and EINTR). 0 or -1 with errno set. */
int xc_afile_write(xc_afile_t *a, const void *p, size_t n);
/* fsync, close, rename over the final path, fsync its directory (no fsyncs
 * with XC_AFILE_NOSYNC). 0 or XC_EIO
 * with the reason in why; on failure the temp file is removed. */
int xc_afile_commit(xc_afile_t *a, char *why, size_t why_len);
/* Closes the temp file; removes it unless keep_tmp (a resumable download, or
 * a simulated crash in tests). */
void xc_afile_abort(xc_afile_t *a, int keep_tmp);

/* The whole file from one buffer: open, write, commit. 0 or XC_EIO / XC_EINVAL. */
int xc_afile_write_all(const char *path, const void *data, size_t len, int flags, mode_t mode, char *why,
                       size_t why_len);

/* Makes renames and unlinks in dir durable (best effort). */
void xc_fsync_dir(const char *dir);
/* The directory part of path into out ("." when there is none). */
void xc_dirname(const char *path, char *out, size_t out_len);
/* mkdir -p; 0 or XC_EIO / XC_EINVAL with the reason. */
int xc_mkdirs(const char *path, char *why, size_t why_len);

#endif
