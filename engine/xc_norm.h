/* Activation normalisation, as the reference's NormalizableMixin does it
 * (science-of-finetuning/dictionary_learning, dictionary.py): pure compute,
 * no I/O. Per model m (0 = base, 1 = chat) a streaming pass gives the mean
 * mu_m and the Bessel-corrected std sigma_m of every dimension (the
 * reference's RunningStatWelford: float64, one Chan-Golub-LeVeque merge per
 * batch); then, with the reference's exact float32 formulas,
 *   global (keep_relative_variance = True, the reference's default):
 *     a_m = target_rms / sqrt(sum_i sigma_mi^2 + 1e-8)   (one scale per model)
 *     normalise   x' = (x - mu_m) * a_m
 *     denormalise x  = x' / (a_m + 1e-8) + mu_m
 *   neuron (keep_relative_variance = False, per-dimension z-scoring):
 *     normalise   x' = (x - mu_m) / (sigma_m + 1e-8)
 *     denormalise x  = x' * (sigma_m + 1e-8) + mu_m
 * The crosscoder trains on x' (every loss and threshold in normalised units);
 * the model file carries mu, sigma, a and target_rms as the reference's
 * buffers activation_mean, activation_std, activation_global_scale and
 * target_rms, so the reference class loaded from it normalises and
 * denormalises exactly as here.
 *
 * Also here: the outlier rule of the daemon's intake (tokens whose norm is
 * more than a factor times the median norm of their batch). */
#ifndef XC_NORM_H
#define XC_NORM_H

#include "xc_engine.h"

#include <stddef.h>
#include <stdint.h>

typedef enum { XC_NORM_OFF = 0, XC_NORM_GLOBAL = 1, XC_NORM_NEURON = 2 } xc_norm_mode_t;

/* The normaliser of a crosscoder over activations [n, 2, d]. Plain data (the
 * caller may keep it in a checkpoint as it is): the Welford sums while the
 * pass runs, the reference's buffers once xc_norm_finish has run. */
typedef struct {
    xc_norm_mode_t mode;
    int d;
    float target_rms;
    int ready;          /* 1 once finished: mean/std/scale valid */
    uint64_t count;     /* tokens seen by the pass */
    double *w_mean;     /* (2, d) Welford running mean (owned) */
    double *w_m2;       /* (2, d) Welford sum of squared deviations (owned) */
    double *w_tmp;      /* (2, 2, d) one batch's mean and squared deviations (owned scratch) */
    float *mean;        /* (2, d) activation_mean (owned) */
    float *std;         /* (2, d) activation_std (owned) */
    float scale[2];     /* activation_global_scale: a_m (global), 1 (neuron, as the reference) */
} xc_norm_t;

/* A normaliser for width d (mode off is allowed: nothing to do). 0 or
 * XC_ENOMEM / XC_EINVAL. The struct is the caller's; xc_norm_free its arrays. */
int xc_norm_init(xc_norm_t *z, int d, xc_norm_mode_t mode, float target_rms);
void xc_norm_free(xc_norm_t *z);

/* Adds n tokens x (n, 2, d) to the pass: the batch's float64 mean and squared
 * deviations merged into the running ones (Chan et al.), as RunningStatWelford.update. */
void xc_norm_add(xc_norm_t *z, const float *x, long n);
/* Ends the pass: mean, std (Bessel-corrected, n - 1) and scale. XC_ESTATE when
 * fewer than 2 tokens were seen; XC_ENONFINITE when a statistic is not finite
 * or the total variance of a model is 0 (constant activations cannot be
 * normalised). */
int xc_norm_finish(xc_norm_t *z);
/* Sets the finished buffers directly (a resumed checkpoint). */
void xc_norm_restore(xc_norm_t *z, const float *mean, const float *std, const float scale[2]);

/* In place, n tokens (n, 2, d): the reference's normalize_activations /
 * denormalize_activations. No-ops unless ready. */
void xc_norm_apply(const xc_norm_t *z, float *x, long n);
void xc_norm_unapply(const xc_norm_t *z, float *x, long n);

/* Weights w (2, d) that turn a normalised FVE into the original units' one:
 * FVE_m = 1 - sum_i w_i Var(e'_i) / sum_i w_i Var(x'_i) with w_i the square of
 * the denormalisation's factor (global: constant per model, so FVE is
 * unchanged; neuron: (sigma_i + 1e-8)^2). All ones when not ready. */
void xc_norm_fve_weights(const xc_norm_t *z, float *w);

/* Latent Scaling's ratios in original units from normalised ones: with v the
 * chat decoder row (original units: v'/(a_chat)), an error target in model m
 * (original: e'/a_m) gives beta_orig = beta_norm * a_chat / a_m, so
 *   nu_orig = nu_norm * a_chat / a_base.
 * Global mode only (*factor = a_chat / a_base, 0 returned); neuron mode has no
 * scalar factor (XC_EINVAL; those ratios stay in normalised units); off or
 * not ready: factor 1. Each beta_m is multiplied by a_chat / a_m. */
int xc_norm_nu_factor(const xc_norm_t *z, double *factor);
int xc_norm_beta_factor(const xc_norm_t *z, int m, double *factor);

/* Converts Latent Scaling results (xc_engine.h, n latents) in place from
 * normalised to original units: beta_m *= a_chat / a_m, nu *= a_chat / a_base.
 * 1 when converted (global mode, ready), 0 when left in normalised units
 * (neuron mode: no scalar factor) or nothing to convert (off). */
int xc_norm_scaling_to_original(const xc_norm_t *z, xc_scaling_stats_t *stats, long n);

/* The outlier rule: keep[b] = 0 for a token whose L2 norm in either model
 * exceeds factor times that model's median norm over these n tokens (n >= 16;
 * smaller batches use *median, the last such medians, and leave them
 * unchanged; with no median yet, keep everything). median (2): updated from
 * batches of >= 16 tokens. scratch: n floats. Returns the tokens dropped. */
long xc_norm_outliers(const float *x, long n, int d, double factor, double median[2], float *scratch,
                      unsigned char *keep);

#endif
