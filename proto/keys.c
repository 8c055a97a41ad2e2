/* CurveZMQ key files and allow-lists (see xc_keys.h for the formats). */
#include "xc_keys.h"
#include "xc_error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

int xc_keys_valid_z85(const char *s, size_t len)
{
    unsigned char bin[32];
    char tmp[XC_KEY_Z85_LEN + 1];
    if (!s || len != XC_KEY_Z85_LEN) return 0;
    memcpy(tmp, s, len);
    tmp[len] = 0;
    return zmq_z85_decode(bin, tmp) != NULL;
}

int xc_keys_generate(xc_keypair_t *kp, char *why, size_t why_len)
{
    memset(kp, 0, sizeof *kp);
    if (!zmq_has("curve")) {
        xc_why(why, why_len, "this libzmq was built without CURVE support (install Debian's libzmq5)");
        return XC_ESYS;
    }
    if (zmq_curve_keypair(kp->public_z85, kp->secret_z85) != 0) {
        xc_why(why, why_len, "cannot generate a CURVE key pair: %s", zmq_strerror(errno));
        return XC_ESYS;
    }
    return XC_OK;
}

/* Creates path exclusively (never through a link, never over an existing
 * file: a key must not silently replace another) and writes text. */
static int write_new(const char *path, const char *text, mode_t mode, char *why, size_t why_len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0) {
        xc_why(why, why_len, "cannot create %s: %s%s", path, strerror(errno),
               errno == EEXIST ? " (remove it first: keys are never overwritten)" : "");
        return XC_EIO;
    }
    size_t len = strlen(text);
    int ok = fchmod(fd, mode) == 0 && write(fd, text, len) == (ssize_t)len && fsync(fd) == 0;
    int e = errno;
    if (close(fd) != 0) ok = 0;
    if (!ok) {
        unlink(path);
        xc_why(why, why_len, "cannot write %s: %s", path, strerror(e));
        return XC_EIO;
    }
    return XC_OK;
}

int xc_keys_write(const char *base, const xc_keypair_t *kp, char *why, size_t why_len)
{
    char path[4096], text[512];
    int rc;
    if (!base || !*base || strlen(base) + 5 > sizeof path) {
        xc_why(why, why_len, "key file name missing or too long");
        return XC_EINVAL;
    }
    snprintf(path, sizeof path, "%s.key", base);
    snprintf(text, sizeof text,
             "# xcoderd CURVE key pair. SECRET: keep this file private (mode 0600).\n"
             "public-key = \"%s\"\nsecret-key = \"%s\"\n",
             kp->public_z85, kp->secret_z85);
    if ((rc = write_new(path, text, 0600, why, why_len))) return rc;
    snprintf(path, sizeof path, "%s.pub", base);
    snprintf(text, sizeof text,
             "# xcoderd CURVE public key: give it to the daemon's operator (allow-list)\n"
             "public-key = \"%s\"\n",
             kp->public_z85);
    return write_new(path, text, 0644, why, why_len);
}

/* Finds `name = "Z85"` (quotes optional) on one line; 1 and the key in out. */
static int line_key(const char *line, const char *name, char out[XC_KEY_Z85_LEN + 1])
{
    size_t nl = strlen(name);
    while (*line == ' ' || *line == '\t') line++;
    if (strncmp(line, name, nl) != 0) return 0;
    line += nl;
    while (*line == ' ' || *line == '\t') line++;
    if (*line++ != '=') return 0;
    while (*line == ' ' || *line == '\t') line++;
    if (*line == '"') line++;
    if (!xc_keys_valid_z85(line, strnlen(line, XC_KEY_Z85_LEN + 1) >= XC_KEY_Z85_LEN ? XC_KEY_Z85_LEN : 0))
        return 0;
    memcpy(out, line, XC_KEY_Z85_LEN);
    out[XC_KEY_Z85_LEN] = 0;
    return 1;
}

/* Reads a small text file (keys and allow-lists are tiny) without following a
 * link; *out is malloc'd and owned by the caller. */
static int slurp(const char *path, char **out, struct stat *st, char *why, size_t why_len)
{
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        xc_why(why, why_len, "cannot open key file %s: %s", path, strerror(errno));
        return XC_EIO;
    }
    if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode) || st->st_size > (1 << 20)) {
        close(fd);
        xc_why(why, why_len, "key file %s is not a regular file of at most 1 MiB", path);
        return XC_EIO;
    }
    char *buf = malloc((size_t)st->st_size + 1);
    if (!buf) {
        close(fd);
        return XC_ENOMEM;
    }
    ssize_t n = read(fd, buf, (size_t)st->st_size);
    close(fd);
    if (n < 0) {
        free(buf);
        xc_why(why, why_len, "cannot read key file %s: %s", path, strerror(errno));
        return XC_EIO;
    }
    buf[n] = 0;
    *out = buf;
    return XC_OK;
}

int xc_keys_read(const char *path, xc_keypair_t *kp, char *why, size_t why_len)
{
    char *buf = NULL;
    struct stat st;
    memset(kp, 0, sizeof *kp);
    int rc = slurp(path, &buf, &st, why, why_len);
    if (rc) return rc;
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        line_key(line, "public-key", kp->public_z85);
        line_key(line, "secret-key", kp->secret_z85);
    }
    free(buf);
    if (kp->secret_z85[0]) {
        char derived[XC_KEY_Z85_LEN + 1];
        if (st.st_mode & 077) {
            xc_why(why, why_len, "secret key file %s is readable by group or others (mode %03o); "
                   "chmod 600 it", path, (unsigned)(st.st_mode & 0777));
            return XC_EPERM;
        }
        if (zmq_curve_public(derived, kp->secret_z85) != 0) {
            xc_why(why, why_len, "key file %s: the secret key is not valid", path);
            return XC_ECORRUPT;
        }
        if (kp->public_z85[0] && strcmp(derived, kp->public_z85) != 0) {
            xc_why(why, why_len, "key file %s: the public key does not belong to the secret key", path);
            return XC_ECORRUPT;
        }
        memcpy(kp->public_z85, derived, sizeof derived);
    }
    if (!kp->public_z85[0]) {
        xc_why(why, why_len, "key file %s holds no 'public-key = \"...\"' line (make one with "
               "`xcoder keygen BASE`)", path);
        return XC_ECORRUPT;
    }
    return XC_OK;
}

int xc_keys_public_from(const char *text_or_path, char out[XC_KEY_Z85_LEN + 1], char *why,
                        size_t why_len)
{
    if (!text_or_path || !*text_or_path) {
        xc_why(why, why_len, "no public key given");
        return XC_EINVAL;
    }
    if (xc_keys_valid_z85(text_or_path, strlen(text_or_path))) {
        memcpy(out, text_or_path, XC_KEY_Z85_LEN + 1);
        return XC_OK;
    }
    xc_keypair_t kp;
    int rc = xc_keys_read(text_or_path, &kp, why, why_len);
    if (rc) return rc;
    memcpy(out, kp.public_z85, sizeof kp.public_z85);
    return XC_OK;
}

int xc_keylist_load(const char *path, xc_keylist_t *out, char *why, size_t why_len)
{
    xc_keylist_t l = {0};
    char *buf = NULL;
    struct stat st;
    if (!path || !*path) {
        *out = l;
        return XC_OK;
    }
    int rc = slurp(path, &buf, &st, why, why_len);
    if (rc) return rc;
    size_t cap = 0;
    int lineno = 0;
    for (char *line = buf, *next; line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        lineno++;
        char *p = line;
        while (*p == ' ' || *p == '\t' || *p == '\r') p++;
        char z85[XC_KEY_Z85_LEN + 1];
        /* Z85 uses '#' too: a line is a key when it starts with 40 key
         * characters followed by a blank or its end, else '#' makes a comment */
        size_t n = strcspn(p, " \t\r");
        int bare = xc_keys_valid_z85(p, n);
        if (!*p || (*p == '#' && !bare)) continue;
        if (!line_key(p, "public-key", z85)) {
            if (!bare) {
                xc_why(why, why_len, "%s:%d: not a public key (a 40-character Z85 key or a "
                       "'public-key = \"...\"' line expected)", path, lineno);
                rc = XC_ECORRUPT;
                goto out_free;
            }
            memcpy(z85, p, XC_KEY_Z85_LEN);
            z85[XC_KEY_Z85_LEN] = 0;
        }
        if (l.n == cap) {
            size_t nc = cap ? 2 * cap : 16;
            void *nk = realloc(l.keys, nc * sizeof *l.keys);
            if (!nk) {
                rc = XC_ENOMEM;
                goto out_free;
            }
            l.keys = nk;
            cap = nc;
        }
        zmq_z85_decode(l.keys[l.n++], z85);
    }
    free(buf);
    *out = l; /* the caller owns l.keys */
    return XC_OK;
out_free:
    free(buf);
    free(l.keys);
    return rc;
}

int xc_keylist_has(const xc_keylist_t *l, const unsigned char key[32])
{
    for (size_t i = 0; l && i < l->n; i++)
        if (memcmp(l->keys[i], key, 32) == 0) return 1;
    return 0;
}

void xc_keylist_free(xc_keylist_t *l)
{
    if (!l) return;
    free(l->keys);
    l->keys = NULL;
    l->n = 0;
}
