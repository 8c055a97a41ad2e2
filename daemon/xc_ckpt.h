/* Checkpoints as safetensors files, written atomically (temp file, fsync,
 * rename, fsync of the directory), so a reader never sees a partial file.
 *
 * Two layers: xc_st_* is a generic safetensors writer (tensors given as
 * borrowed memory or as a fill callback that produces bytes on demand, e.g.
 * a transpose, so no second copy of the model is ever held); xc_ckpt_write
 * lays out a crosscoder with the tensor names of the reference
 * BatchTopKCrossCoder state dict (dictionary_learning):
 *   encoder.weight [2, d, F]  encoder.bias [F]  decoder.weight [2, F, d]
 *   decoder.bias [2, d]  threshold f32 []  k i32 []  code_normalization_id i64 []
 * plus __metadata__ strings (format, step, tokens, model, config as JSON). */
#ifndef XC_CKPT_H
#define XC_CKPT_H

#include <stddef.h>
#include <stdint.h>

#include "xc_engine.h"

typedef struct xc_st xc_st_t;
/* Produces bytes [offset, offset + len) of a tensor into out. offset and len
 * are multiples of the dtype size. Returns 0 or a negative XC_E*. */
typedef int (*xc_st_fill_fn)(void *ctx, size_t offset, void *out, size_t len);

xc_st_t *xc_st_new(void); /* NULL on allocation failure; free with xc_st_destroy */
void xc_st_destroy(xc_st_t **st);
/* dtype: "F32", "F16", "BF16", "I32", "I64", "U32" …; ndim 0..4 (0 = scalar).
 * data is borrowed until xc_st_write returns. Names are copied. */
int xc_st_add(xc_st_t *st, const char *name, const char *dtype, int ndim, const int64_t *shape,
              const void *data);
int xc_st_add_fill(xc_st_t *st, const char *name, const char *dtype, int ndim,
                   const int64_t *shape, xc_st_fill_fn fn, void *ctx);
/* A __metadata__ entry (key and value copied). */
int xc_st_meta(xc_st_t *st, const char *key, const char *value);
/* Writes dir/file atomically. path_out gets the final path; *bytes the size.
 * XC_EIO / XC_ENOMEM / XC_EINVAL with the reason in why. */
int xc_st_write(xc_st_t *st, const char *dir, const char *file, char *path_out, size_t path_len,
                uint64_t *bytes, char *why, size_t why_len);

typedef struct {
    const char *state_dir;   /* created if missing */
    const char *name;        /* instance name: file is NAME-STEP.safetensors */
    const char *config_json; /* effective config, stored in __metadata__["config"] */
    const char *reason;      /* stored in __metadata__["reason"] */
} xc_ckpt_opts_t;

/* Writes the engine's parameters. Must run on the thread that owns the engine,
 * between steps. */
int xc_ckpt_write(xc_engine_t *e, const xc_ckpt_opts_t *o, char *path_out, size_t path_len,
                  uint64_t *bytes, char *why, size_t why_len);

/* mkdir -p; 0 or XC_EIO with the reason. */
int xc_mkdirs(const char *path, char *why, size_t why_len);

#endif
