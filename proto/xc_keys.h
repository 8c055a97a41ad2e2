/* CurveZMQ key files, shared by the daemon, libxcoder and the CLI.
 *
 * Keys are Z85 text (40 characters for 32 bytes), as libzmq's zmq_curve_keypair
 * writes them. Two files per identity, written by `xcoder keygen BASE` or
 * `xcoderd --keygen BASE`:
 *   BASE.key  (mode 0600)  public-key = "Z85"  and  secret-key = "Z85"
 *   BASE.pub  (mode 0644)  public-key = "Z85"
 * An allow-list file holds public keys, one per line: either a bare Z85 key or
 * a `public-key = "Z85"` line (so `cat alice.pub >> readers.allow` works);
 * '#' starts a comment, text after the key on the same line is a free label. */
#ifndef XC_KEYS_H
#define XC_KEYS_H

#include <stddef.h>

#define XC_KEY_Z85_LEN 40

typedef struct {
    char public_z85[XC_KEY_Z85_LEN + 1];
    char secret_z85[XC_KEY_Z85_LEN + 1]; /* "" for a public-only key */
} xc_keypair_t;

/* A new random key pair (libzmq with CURVE support). 0 or XC_ESYS. */
int xc_keys_generate(xc_keypair_t *kp, char *why, size_t why_len);
/* Writes BASE.key (0600, created exclusively: an existing file is refused) and
 * BASE.pub (0644). 0, XC_EIO (with the file and errno in why). */
int xc_keys_write(const char *base, const xc_keypair_t *kp, char *why, size_t why_len);
/* Reads a key file: a .key file gives both keys (the public one is checked
 * against the secret one), a .pub file the public key only. A secret key file
 * readable by group or others is refused (XC_EPERM). 0, XC_EIO, XC_ECORRUPT,
 * XC_EPERM. */
int xc_keys_read(const char *path, xc_keypair_t *kp, char *why, size_t why_len);
/* A public key given as a Z85 string or as the path of a .pub/.key file. */
int xc_keys_public_from(const char *text_or_path, char out[XC_KEY_Z85_LEN + 1], char *why,
                        size_t why_len);
/* 1 if s is exactly one valid Z85-encoded 32-byte key. */
int xc_keys_valid_z85(const char *s, size_t len);

/* An allow-list: the public keys of one role, kept as 32-byte binary keys. */
typedef struct {
    unsigned char (*keys)[32]; /* owned; n entries */
    size_t n;
} xc_keylist_t;

/* Parses the allow-list file at path into *out (replacing nothing on error).
 * An empty path gives an empty list. Errors name the file and line. */
int xc_keylist_load(const char *path, xc_keylist_t *out, char *why, size_t why_len);
int xc_keylist_has(const xc_keylist_t *l, const unsigned char key[32]);
void xc_keylist_free(xc_keylist_t *l);

#endif
