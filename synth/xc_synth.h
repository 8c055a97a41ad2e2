/* Synthetic paired activations from known ("planted") sparse features, for
 * recovery tests and the CLI's `xcoder synth` producer. Pure compute, no I/O.
 *
 * Each planted feature i has a kind, a strength per model, a firing probability
 * p_i and an activation scale. On every token it fires independently with
 * probability p_i and then takes the value a_i = scale_i * (0.5 + Exp(1)) > 0;
 * the same a_i drives both models (the tokens are paired):
 *   x^base = sum_i a_i * strength_base_i * u_b_i + bias_base + noise
 *   x^chat = sum_i a_i * strength_chat_i * u_c_i + bias_chat + noise
 * with noise iid N(0, noise_std^2) per coordinate. Output layout is float32
 * [n_tokens, 2, d] (per token the base model's d values, then the chat model's),
 * the same as the engine's batches.
 *
 * Directions. When they fit in d (see xc_synth_new) every model's set of
 * directions is exactly orthonormal, every SHARED/SHRUNK pair has the exact
 * cosine asked for, and the planted 2d "true decoder" vectors
 * [strength_base * u_b, strength_chat * u_c] are mutually orthogonal. Otherwise
 * the directions are independent random unit vectors (pairs still exact).
 *
 * Everything is drawn from xc_rng seeded by cfg.seed, so a seed fixes the
 * features and the whole token stream on every machine. */
#ifndef XC_SYNTH_H
#define XC_SYNTH_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    XC_SYNTH_SHARED = 0,    /* both models, equal strength, cos(u_b, u_c) = shared_cos */
    XC_SYNTH_CHAT_ONLY = 1, /* chat only (base strength 0) */
    XC_SYNTH_BASE_ONLY = 2, /* base only (chat strength 0) */
    XC_SYNTH_SHRUNK = 3     /* chat at strength 1, base at shrunk_scale, cos = shrunk_cos */
} xc_synth_kind_t;

typedef struct {
    int d;                  /* activation width of each model */
    int n_shared, n_chat_only, n_base_only, n_shrunk; /* features of each kind */
    float shared_cos;       /* cos(u_b, u_c) of SHARED features, in [-1, 1] */
    float shrunk_scale;     /* base strength of SHRUNK features (chat is 1), >= 0 */
    float shrunk_cos;       /* cos(u_b, u_c) of SHRUNK features, in [-1, 1] */
    float mean_active;      /* expected active features per token (sum of p_i) */
    float prob_exponent;    /* p_i proportional to rank^-prob_exponent (0 = uniform) */
    float max_prob;         /* cap on any p_i, in (0, 1) */
    float scale_min, scale_max; /* per-feature activation scale, uniform in this range */
    float bias_norm;        /* norm of each model's fixed random bias vector, >= 0 */
    float noise_std;        /* iid Gaussian noise per coordinate, >= 0 */
    uint64_t seed;
} xc_synth_config_t;

/* What a planted feature is. Pointers are borrowed from the generator and stay
 * valid until xc_synth_destroy. */
typedef struct {
    xc_synth_kind_t kind;
    float strength_base, strength_chat;
    float prob;             /* firing probability per token */
    float scale;            /* a = scale * (0.5 + Exp(1)) when firing; mean 1.5 * scale */
    const float *dir_base;  /* (d) unit vector u_b; NULL for CHAT_ONLY */
    const float *dir_chat;  /* (d) unit vector u_c; NULL for BASE_ONLY */
} xc_synth_feature_t;

/* Best latent of a learned dictionary for one planted feature. */
typedef struct {
    int latent;             /* argmax_j cos(w_dec row j, true decoder); -1 if none */
    float cosine;           /* that cosine (signed; 0 when latent is -1) */
    float delta_norm;       /* relative decoder norm of row `latent` (0.5 if -1) */
} xc_synth_match_t;

typedef struct xc_synth xc_synth_t;

/* Defaults for width d: 40 shared / 12 chat-only / 12 base-only / 0 shrunk
 * features scaled by d/64 (at least 1 shared), shared_cos 0.95, shrunk_scale 0.3,
 * shrunk_cos 0.9, mean_active 4, prob_exponent 0.5, max_prob 0.5, scale in
 * [0.5, 1], bias_norm 1, noise_std 0.02, seed 1. */
void xc_synth_config_default(xc_synth_config_t *c, int d);
/* 0, XC_EINVAL (c NULL) or XC_ECONFIG with a human-readable reason in why
 * (why may be NULL). */
int xc_synth_config_validate(const xc_synth_config_t *c, char *why, size_t why_len);

/* Builds the planted features (directions, probabilities, scales, biases). NULL
 * on failure with *err (may be NULL) set to XC_EINVAL, XC_ECONFIG or XC_ENOMEM.
 * The generator owns its memory; free it with xc_synth_destroy. Orthonormal
 * directions cost O(m^2 d) once (BLAS), m <= d the number of basis vectors
 * used: about 1.4 s for the d = 2304 default on 2 cores. */
xc_synth_t *xc_synth_new(const xc_synth_config_t *cfg, int *err);
/* Frees *s and sets it to NULL; NULL or *s NULL is a no-op. */
void xc_synth_destroy(xc_synth_t **s);

/* Writes n_tokens paired tokens to out (n_tokens, 2, d), caller-owned. codes,
 * if not NULL, receives the ground-truth activations a (n_tokens, n_features),
 * 0 where a feature did not fire; asking for codes never changes the stream.
 * Consecutive calls continue one stream: two calls of n1 and n2 tokens give the
 * same bytes as one call of n1 + n2. 0 or XC_EINVAL (n_tokens < 0, NULL). Not
 * thread-safe on one generator; the const accessors below are. */
int xc_synth_generate(xc_synth_t *s, long n_tokens, float *out, float *codes);
/* Restarts the token stream from stream_seed, keeping the planted features
 * (held-out data from the same features). The initial stream is the one that
 * xc_synth_reseed_stream(s, cfg.seed) would give. */
void xc_synth_reseed_stream(xc_synth_t *s, uint64_t stream_seed);
/* Tokens generated since creation or the last reseed. */
uint64_t xc_synth_tokens(const xc_synth_t *s);

/* Features are ordered by kind: shared, chat-only, base-only, shrunk. */
int xc_synth_n_features(const xc_synth_t *s);
/* 0 or XC_EINVAL (i out of range, NULL). */
int xc_synth_feature(const xc_synth_t *s, int i, xc_synth_feature_t *out);
/* Writes feature i's true decoder [strength_base * u_b, strength_chat * u_c]
 * (2d floats, not normalised) to out, caller-owned. 0 or XC_EINVAL. */
int xc_synth_true_decoder(const xc_synth_t *s, int i, float *out);
/* The fixed biases (2, d): base then chat. Borrowed; valid until destroy. */
const float *xc_synth_bias(const xc_synth_t *s);
/* 1 if the directions were built orthonormal (they fit in d), else 0. */
int xc_synth_orthonormal(const xc_synth_t *s);

/* Matches a learned dictionary to the planted features. w_dec (F, 2, d): row j =
 * (base half, chat half), borrowed. For every planted feature i, out[i] gets the
 * latent whose 2d decoder row has the largest cosine with feature i's true
 * decoder (ties: lowest j; zero rows never match). out: n_features entries,
 * caller-owned. 0 or XC_EINVAL. Cost O(n_features * F * d). */
int xc_synth_match(const xc_synth_t *s, const float *w_dec, int F, xc_synth_match_t *out);

/* Relative decoder norm of one 2d row (base half, chat half) of width d
 * (method.md 3): 0.5 * ((|d_chat| - |d_base|) / max(|d_chat|, |d_base|) + 1);
 * 0.5 when both halves are zero. 1 = chat only, 0 = base only. */
float xc_synth_delta_norm(const float *row, int d);

/* "shared", "chat_only", "base_only", "shrunk"; "unknown" otherwise. */
const char *xc_synth_kind_name(int kind);

#endif
