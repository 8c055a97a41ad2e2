/* The checkpoint layout (proto/CHECKPOINT.md), the one home of everything a
 * reader or writer of xcoderd checkpoints must agree on, used by the daemon,
 * the CLI (inspect, export), libxcoder, tests and benches:
 *   - a checkpoint is a PAIR of safetensors files, NAME-STEP.safetensors (the
 *     model: exactly the reference BatchTopKCrossCoder / CrossCoder state
 *     dict, loadable with strict=True) and NAME-STEP.resume.safetensors (the
 *     training state), STEP zero-padded to 9 digits;
 *   - the metadata "format" and "format_version" of each file, the pairing
 *     (checkpoint_id, run_id, step, and the model file naming the training
 *     file's CRC-32, see xc_stfile.h for the checksum itself);
 *   - the reference tensor names, dtypes and shapes of the model file, and the
 *     transposes between the engine's row layout and the reference layout.
 * No engine, thread or log code: the training state's tensors are whatever
 * the writer is given (daemon/ckpt.c passes the engine's state views). */
#ifndef XC_CKPTLAYOUT_H
#define XC_CKPTLAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include "xc_stfile.h"

#define XC_CKPT_MODEL_VERSION "2" /* format_version of the model file */
#define XC_CKPT_TRAIN_VERSION "2" /* format_version of the training-state file (2: scaling.sums [F, 8]) */
#define XC_STF_MODEL_FORMAT "xcoderd-crosscoder"  /* metadata "format" of a model file */
#define XC_STF_TRAIN_FORMAT "xcoderd-train-state" /* ... of a training-state file */
#define XC_STF_TRAIN_SUFFIX ".resume.safetensors" /* NAME-STEP.resume.safetensors beside NAME-STEP.safetensors */

/* The crosscoder kinds a model file can hold (metadata "model"). */
typedef enum { XC_CKPT_BATCHTOPK = 0, XC_CKPT_L1 = 1 } xc_ckpt_kind_t;
/* "batchtopk" | "l1" */
const char *xc_ckpt_kind_name(xc_ckpt_kind_t k);

enum { XC_STF_OTHER = 0, XC_STF_MODEL = 1, XC_STF_TRAIN = 2 };
/* By the metadata "format": XC_STF_MODEL, XC_STF_TRAIN or XC_STF_OTHER. */
int xc_stf_kind(const xc_stf_t *f);
/* Do these files form one checkpoint? Same checkpoint_id, run_id and step, and
 * the model file names the training file's checksum. Checks metadata only
 * (xc_stf_verify checks each file's content). 0 or XC_ECORRUPT with the reason. */
int xc_stf_pair_check(const xc_stf_t *model, const xc_stf_t *train, char *why, size_t why_len);
/* Given either file of a pair, the paths of both. 0 or XC_EINVAL (not a
 * *.safetensors name). */
int xc_ckpt_pair_paths(const char *path, char *model, size_t model_len, char *train, size_t train_len);

/* ------------------------------------------------------- the model file -- */
/* A crosscoder's parameters, in the engine's layout (w_enc, w_dec (F, 2, d)
 * rows) or in the reference layout (w_enc [2, d, F], w_dec [2, F, d]). Pointers
 * are borrowed; the struct itself must outlive the xc_st_write (it is the
 * context of the fill callbacks). */
typedef struct {
    xc_ckpt_kind_t model;
    int d, dict_size, k;
    float threshold;           /* theta; -1 until estimated */
    int code_norm_id;          /* the reference's CodeNormalization value; 0 means 1 (CROSSCODER) */
    float threshold_m[2];      /* DECOUPLED BatchTopK (5): theta per model, the threshold tensor [2] */
    double alpha_sae, alpha_cc; /* MIXED (3): its two weights, written as metadata (the reference's
                                 * code_normalization_alpha_sae / _cc are constructor arguments) */
    int engine_layout;
    const float *w_enc, *b_enc, *w_dec, *b_dec;
    /* the activation normaliser (xc_norm.h), as the reference's NormalizableMixin
     * buffers: act_mean, act_std (2, d) and act_scale (2), borrowed; NULL = none
     * (NaN mean and std, scale 1, as the reference registers them without one);
     * target_rms <= 0 is written as 1 (the reference's default) */
    const float *act_mean, *act_std, *act_scale;
    float target_rms;
    /* private: fill contexts */
    struct { const void *m; int which; int out; } fc[4];
    int64_t cn_id;
} xc_ckpt_model_t;

/* CodeNormalization names by value ("CROSSCODER" .. "DECOUPLED"); NULL outside 1-5. */
const char *xc_ckpt_code_norm_name(int id);

/* Adds the reference state dict: encoder.weight, encoder.bias, decoder.weight,
 * decoder.bias, (BatchTopK:) threshold, k, and code_normalization_id plus the
 * NormalizableMixin buffers target_rms, activation_mean, activation_std,
 * activation_global_scale (m->act_*; without a normaliser NaN mean/std, scale 1). float_dtype
 * "F32" (NULL), "F16" or "BF16" for the four parameter tensors. */
int xc_ckpt_add_model(xc_st_t *st, xc_ckpt_model_t *m, const char *float_dtype);
/* Checks that a model file holds exactly the reference tensors of a float32
 * model of this kind, code normalisation (threshold [2] for DECOUPLED BatchTopK) and shape (names, dtypes, shapes, nothing else).
 * 0 or XC_ECORRUPT with the reason. */
int xc_ckpt_check_model_tensors(const xc_stf_t *f, xc_ckpt_kind_t kind, int code_norm_id, int d, int dict_size, char *why,
                                size_t why_len);
/* The "layout" metadata of model files. */
#define XC_CKPT_LAYOUT_NOTE "encoder.weight [2,d,F], decoder.weight [2,F,d]; index 0 = base, 1 = chat"
/* The metadata every xcoderd checkpoint file and export begins with, in this
 * order: format, format_version, model, d, dict_size, k, step, tokens, theta
 * (m->threshold, "%.9g"), created; then, only for a code normalisation other
 * than CROSSCODER, code_normalization (its name) and for MIXED
 * code_normalization_alpha_sae and _alpha_cc ("%.9g"). 0 or a negative XC_E*. */
int xc_ckpt_meta_common(xc_st_t *st, const char *format, const char *version, const xc_ckpt_model_t *m, long step,
                        uint64_t tokens, const char *created);
/* Current time as RFC 3339 UTC with microseconds ("2025-01-02T03:04:05.123456Z"),
 * the "created" metadata. */
void xc_ckpt_now_rfc3339(char *out, size_t n);

#endif
