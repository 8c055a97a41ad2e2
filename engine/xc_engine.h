/* The crosscoder engine: pure compute (no sockets, no files). One object holds a
 * BatchTopK or L1 crosscoder, its Adam state and its per-latent statistics; the
 * maths follows shared/method.md (sections 1-3).
 *
 * Activations are float32 laid out [n_tokens, 2, d]: for each token the base
 * model's d values, then the chat model's. Internally every latent's encoder
 * column and decoder row are stored as one contiguous row of 2d floats
 * (base half, chat half), so the sparse passes read one cache-friendly row per
 * active latent; checkpoints transpose to the reference layout. */
#ifndef XC_ENGINE_H
#define XC_ENGINE_H

#include "xc_coll.h"
#include "xc_score.h"

#include <stddef.h>
#include <stdint.h>

typedef enum { XC_MODEL_BATCHTOPK = 0, XC_MODEL_L1 = 1 } xc_model_kind_t;
typedef enum { XC_LOSS_L2 = 0, XC_LOSS_MSE = 1 } xc_loss_kind_t;
/* The code normalisation s_j (the reference's CodeNormalization; its enum value
 * is this value + 1, xc_code_norm_id): the factor of every score u s_j (the
 * BatchTopK ranking, AuxK, theta) and of the L1 penalty u s_j.
 *   crosscoder  s_j = ||d_j^base|| + ||d_j^chat||
 *   sae         s_j = ||(d_j^base, d_j^chat)||, the norm of the concatenated rows
 *   mixed       s_j = alpha_sae * sae + alpha_cc * crosscoder
 *   none        s_j = 1
 *   decoupled   per-model codes: model m's score is u ||d_j^m||, each model keeps
 *               its own top k*B and theta_m, and x^m is decoded from its own
 *               codes; a latent fired when either model selected it; AuxK ranks by
 *               u (||d_j^base|| + ||d_j^chat||). BatchTopK only on one process (not
 *               sharded), scored in fp32, without running Latent Scaling sums. The L1
 *               model has no per-model codes: there it is crosscoder, as in the reference. */
typedef enum {
    XC_CODE_CROSSCODER = 0,
    XC_CODE_SAE = 1,
    XC_CODE_MIXED = 2,
    XC_CODE_NONE = 3,
    XC_CODE_DECOUPLED = 4
} xc_code_norm_t;
/* The reference's CodeNormalization value (CROSSCODER = 1 ... DECOUPLED = 5). */
static inline int xc_code_norm_id(xc_code_norm_t c) { return (int)c + 1; }

/* The engine's hyper-parameters. The engine has no defaults: every field is a
 * key of the daemon's config table (daemon/config.c), which holds the one set
 * of defaults (xc_cfg_engine / xc_cfg_engine_defaults fill this struct). */
typedef struct {
    xc_model_kind_t model;
    int d;                     /* activation width of each model */
    int dict_size;             /* F, number of latents */
    int k;                     /* BatchTopK: mean active latents per token (after annealing) */
    int k_max;                 /* BatchTopK: k at step 0, annealed to k; 0 = k (no annealing) */
    long k_annealing_steps;    /* steps of the linear k_max -> k schedule (xc_engine_k_at) */
    xc_code_norm_t code_norm;  /* the code normalisation s_j (above) */
    float code_alpha_sae;      /* mixed: weight of the sae norm (reference default 1.0) */
    float code_alpha_cc;       /* mixed: weight of the crosscoder norm (reference default 0.1) */
    int batch_size;            /* B, tokens per training step */
    float lr;                  /* Adam learning rate after warm-up */
    int warmup_steps;          /* linear warm-up from lr/warmup to lr */
    long decay_start;          /* step at which linear decay to 0 starts; 0 = never */
    long total_steps;          /* end of the decay (needed when decay_start > 0) */
    float aux_coef;            /* AuxK weight (1/32) */
    long dead_tokens;          /* a latent is dead after this many tokens unfired */
    float init_norm;           /* encoder column norm at init (1.0 BatchTopK, 0.005 L1) */
    float l1_coef;             /* L1 sparsity coefficient mu */
    xc_loss_kind_t loss;       /* reconstruction term used for training */
    long threshold_start_step; /* theta updates start after this step */
    float threshold_beta;      /* theta EMA factor (0.999) */
    float clip_norm;           /* global gradient-norm clip; 0 = off */
    float adam_beta1, adam_beta2, adam_eps;
    uint64_t seed;
    int threads;               /* compute threads; 0 = online CPUs */
    double stats_half_life;    /* tokens; half-life of the firing-frequency EMA */
    double scaling_half_life;  /* tokens; window of the running Latent Scaling estimates */
    double scaling_min_active; /* activations a latent needs before its beta is defined */
    double scaling_nu_min_z;   /* nu is unstable when |beta_chat| < this x its standard error; 0 = off */
    int scaling_running;       /* keep running Latent Scaling estimates (1) or not (0) */
    xc_prec_t encoder_precision; /* BatchTopK scoring: auto|fp32|bf16|int8 (xc_score.h); L1 is fp32 */
} xc_engine_config_t;

typedef struct {
    long step;                 /* completed training steps */
    uint64_t tokens;           /* tokens trained on */
    double loss;               /* total training loss of the last step */
    double recon_l2;           /* (1/2B) sum ||e|| (un-squared) */
    double recon_mse;          /* (1/2B) sum ||e||^2 */
    double aux;                /* AuxK term (before the 1/32 weight) */
    double l1;                 /* L1: (1/B) sum u s (before mu) */
    double fve[2];             /* fraction of variance explained, base / chat */
    double l0;                 /* mean active latents per token */
    double dead_fraction;      /* latents unfired for >= dead_tokens */
    double theta;              /* BatchTopK inference threshold (-1 until set); decoupled: base model's */
    double theta_m[2];         /* decoupled: per-model thresholds (theta_m[0] == theta); else both theta */
    int k;                     /* BatchTopK: the k of the last step (k_max before the first; xc_engine_k_at) */
    double grad_norm;          /* global gradient norm before clipping */
    double lr;                 /* learning rate used by the last step */
    int n_dead;
    long select_candidates;    /* entries that passed the selection prefilter last step */
    long full_selects;         /* steps that needed the full-batch selection path */
    xc_prec_t precision;       /* what the encoder product runs at (fp32, bf16, int8) */
    long score_steps;          /* steps scored at reduced precision (selection exact) */
    long score_fallbacks;      /* of those, steps whose margin check failed: candidates redone with the proven bound */
    long score_fp32_steps;     /* of those, steps scored by the fp32 product (too many candidates) */
    int score_outliers;        /* fp32 outlier dimensions of the last reduced step */
    double score_lambda;       /* int8 margin, as a fraction of the proven bound (1 = proof) */
    long score_candidates;     /* entries the last reduced step recomputed exactly (k*B at least) */
    /* wall time of the last training step's phases, ms (see XC_PHASE_*) */
    double phase_ms[7];
    /* sharding (the only per-rank fields besides phase_ms): shard count, and this
     * rank's traffic, calls and wall seconds inside collectives: the collective
     * table's own counters (cumulative since the table was made), read after each
     * collective call of the engine */
    int ranks;
    uint64_t comm_bytes, comm_calls;
    double comm_seconds;
} xc_engine_metrics_t;

enum { XC_PHASE_ENCODE = 0, /* dense encoder sgemm + ReLU */
       XC_PHASE_SELECT,     /* BatchTopK selection (histogram, candidates, CSR) */
       XC_PHASE_DECODE,     /* decoder forward, loss, dL/df */
       XC_PHASE_AUXK,       /* dead latents' auxiliary loss */
       XC_PHASE_GRAD,       /* encoder/decoder gradients */
       XC_PHASE_ADAM,       /* clip + Adam over every parameter + decoder norms */
       XC_PHASE_TOTAL };

typedef struct {
    float norm_base, norm_chat;/* decoder row norms */
    float delta_norm;          /* relative decoder norm (method.md 3) */
    float cosine;              /* cos(d_base, d_chat); 0 when a norm is 0 */
    float freq;                /* firing frequency, EMA over stats_half_life tokens */
    float mean_act;            /* mean activation when firing (cumulative) */
    float max_act;             /* max activation ever seen */
    uint64_t fired;            /* token-activations counted */
    uint64_t tokens_since_fired;
    long last_step_fired;      /* -1 if never */
    int dead;                  /* tokens_since_fired >= dead_tokens */
} xc_latent_stats_t;

/* Latent Scaling (method.md 4) of one latent: v = the chat decoder row. beta_*
 * and nu_* are NaN where undefined (the latent fired fewer than min_active times,
 * a zero decoder row, or a zero chat beta for the ratio).
 *
 * A ratio is only as good as its denominator: beta_chat is a least-squares
 * slope through the origin of t_i = <v, y_i> / |v|^2 on f_i, whose standard
 * error is se = sqrt(s^2 / sum f^2) with s^2 = sum (t - beta f)^2 / (n - 1).
 * nu is UNSTABLE when |beta_chat| < scaling_nu_min_z x se (or se is
 * undefined, n < 2): a chat beta indistinguishable from 0 makes the ratio
 * arbitrary, so such a latent is never called chat-specific. */
enum { XC_NU_UNSTABLE_ERR = 1, XC_NU_UNSTABLE_REC = 2 };
typedef struct {
    float beta_err[2];         /* error target, base / chat model */
    float beta_rec[2];         /* reconstruction target, base / chat model */
    float nu_err, nu_rec;      /* beta base / beta chat */
    double active;             /* activations counted (EMA-weighted for running estimates) */
    float se_err_chat, se_rec_chat; /* standard errors of beta_err[1], beta_rec[1] (NaN undefined) */
    int nu_unstable;           /* XC_NU_UNSTABLE_*: which nu is unstable */
} xc_scaling_stats_t;

/* Sets o->nu_unstable from o's chat betas and standard errors (the rule
 * above; min_z <= 0 turns it off). */
void xc_scaling_stability(xc_scaling_stats_t *o, double min_z);

/* Views of the parameters (or of gradients); row-major shapes in comments. */
typedef struct {
    float *w_enc;  /* (F, 2, d): row j = encoder column j, base half then chat half */
    float *b_enc;  /* (F) */
    float *w_dec;  /* (F, 2, d): row j = (d_j^base, d_j^chat) */
    float *b_dec;  /* (2, d) */
} xc_engine_params_t;

typedef struct xc_engine xc_engine_t;

/* BatchTopK's k at a (0-based) training step, the reference trainer's schedule:
 * with k_annealing_steps > 0 and k_max != k, for step < k_annealing_steps
 * max(1, round(k_max - (k_max - k) * step / k_annealing_steps)) (round half to
 * even, as Python's round), k afterwards; otherwise k_max (k when k_max is 0). */
int xc_engine_k_at(const xc_engine_config_t *c, long step);

/* 0 or XC_ECONFIG with a human-readable reason in why. */
int xc_engine_config_validate(const xc_engine_config_t *c, char *why, size_t why_len);

/* Creates and initialises a model (method.md 1). NULL on failure, *err set.
 * The engine owns all its memory; free it with xc_engine_destroy.
 * xc_engine_new(cfg, err) == xc_engine_new_sharded(cfg, xc_coll_single(), err). */
xc_engine_t *xc_engine_new(const xc_engine_config_t *cfg, int *err);

/* ---------------------------------------------------------------- sharding
 * A latent-sharded engine owns latents [lo, lo + n) of dict_size, the slice
 * xc_coll_slice(dict_size, coll->size, coll->rank) (every rank needs n >= 1).
 * Its initial parameters equal that slice of the unsharded engine's for the
 * same seed (the (d, F) init matrix is streamed from the RNG, never held whole;
 * the RNG state after init is the same on every rank), and a training step over
 * all ranks computes the single-rank maths (method.md 2): the global BatchTopK
 * cut, x-hat summed over shards, global loss, clip, AuxK and theta. The L1 model
 * is not sharded (its dense codes would need a [B, F] exchange): coll->size > 1
 * with model l1 is XC_ECONFIG, as is code_normalization decoupled (per-model
 * codes) and a shard without a latent (coll->size > dict_size).
 *
 * COLLECTIVE calls (every rank, same order, identical arguments; the service
 * broadcasts the batch): xc_engine_new_sharded, xc_engine_train_step,
 * xc_engine_compute_grads, xc_engine_encode, xc_engine_decode,
 * xc_engine_selection_check, xc_engine_state_restored (it re-counts the global
 * dead latents), xc_scaling_new and xc_scaling_add. An XC_ECOLL from any of them
 * leaves this rank's model as it was where possible; the job must end.
 *
 * What is local and what is global:
 *   - per-latent data covers the local slice, indexed 0 .. n-1 (local latent i
 *     is global latent lo + i): xc_engine_params' w_enc/b_enc/w_dec rows,
 *     xc_engine_adam_state, xc_engine_latent_stats, xc_engine_scaling_running,
 *     xc_scaling_result, xc_engine_dead_counters, compute_grads' latent arrays
 *     (each n entries / rows);
 *   - xc_engine_selection: CSR over the batch's tokens of THIS rank's selected
 *     entries; col[] holds GLOBAL latent indices (lo + i);
 *   - xc_engine_encode: f_out is (n_rows, dict_size), the full codes, on every
 *     rank; xc_engine_decode reads f as (n_rows, dict_size), the full codes,
 *     and returns the full x-hat on every rank;
 *   - replicated, identical on every rank: b_dec, its Adam moments, step,
 *     tokens, rng, scalars (theta and the selection prefilter), and
 *     xc_engine_metrics except phase_ms and the comm_* fields (per rank);
 *   - xc_state_view_t.sharded = 1 for views whose axis 0 is the latent
 *     (shape[0] = n, rows lo .. lo+n-1 of the global tensor), 0 for replicated
 *     ones. */
xc_engine_t *xc_engine_new_sharded(const xc_engine_config_t *cfg, xc_coll_t *coll, int *err);
/* This engine's latent slice [*lo, *lo + *n) of dict_size. */
void xc_engine_shard(const xc_engine_t *e, long *lo, long *n);
/* The collective table the engine was made with (borrowed). */
xc_coll_t *xc_engine_coll(const xc_engine_t *e);
void xc_engine_destroy(xc_engine_t **e);
const xc_engine_config_t *xc_engine_config(const xc_engine_t *e);

/* 0, XC_ESHAPE (n_tokens != batch_size or NULL), XC_ENONFINITE. Reads only. */
int xc_engine_check_batch(const xc_engine_t *e, const float *x, long n_tokens);
/* One training step on exactly batch_size tokens. The batch is checked first;
 * on error nothing in the model changes. x is borrowed for the call. */
int xc_engine_train_step(xc_engine_t *e, const float *x, long n_tokens);

/* Inference (threshold mode for BatchTopK: f = u * 1[u s > theta]; L1: f = u;
 * decoupled: f = u where u ||d_j^m|| > theta_m for either model m, the union of
 * the two models' codes).
 * f_out (n, F) dense. Any n >= 1; uses the engine's scratch up to batch_size rows
 * per chunk. Not thread-safe against train_step on the same engine. */
int xc_engine_encode(xc_engine_t *e, const float *x, long n, float *f_out);
/* xhat_out (n, 2, d) = f W_dec + b_dec. */
int xc_engine_decode(xc_engine_t *e, const float *f, long n, float *xhat_out);

const xc_engine_metrics_t *xc_engine_metrics(const xc_engine_t *e);
/* Per-dimension weights (2d, copied) of the FVE the metrics report:
 * FVE_m = 1 - sum_i w_i Var(e_i) / sum_i w_i Var(x_i); NULL = all 1 (the
 * default). For reporting FVE in original units when training on normalised
 * activations (xc_norm.h). 0 or XC_ENOMEM. Between steps. */
int xc_engine_set_fve_weights(xc_engine_t *e, const float *w);
/* out: dict_size entries, caller-owned. */
void xc_engine_latent_stats(const xc_engine_t *e, xc_latent_stats_t *out);
/* Live views of the parameters (valid until destroy; do not write during a step). */
void xc_engine_params(xc_engine_t *e, xc_engine_params_t *out);
/* Marks cached decoder norms stale after a caller wrote parameters directly. */
void xc_engine_params_changed(xc_engine_t *e);

/* For tests: run forward + backward on a batch without updating anything and
 * fill dense gradients of the training loss (before clipping) into g (caller-
 * owned arrays of parameter shape). Also reports the loss terms in *m. */
int xc_engine_compute_grads(xc_engine_t *e, const float *x, long n_tokens,
                            xc_engine_params_t *g, xc_engine_metrics_t *m);
/* For tests: the tokens-since-fired counters (F entries, writable) and theta. */
uint64_t *xc_engine_dead_counters(xc_engine_t *e);
void xc_engine_set_theta(xc_engine_t *e, double theta);

/* The BatchTopK selection of the last training forward (CSR over tokens:
 * entries row_ptr[b] .. row_ptr[b+1]-1 hold latent col[] with activation val[]).
 * Returns the number of entries (0 for L1). Views valid until the next step. */
long xc_engine_selection(const xc_engine_t *e, const long **row_ptr, const int **col,
                         const float **val);
/* Decoupled code normalisation: which models selected each entry of
 * xc_engine_selection (bit 0 base, bit 1 chat; f^m = val on model m's entries,
 * 0 elsewhere). NULL for every other configuration. */
const unsigned char *xc_engine_selection_models(const xc_engine_t *e);
/* Sets theta per model (decoupled; otherwise both are theta = base). */
void xc_engine_set_theta_models(xc_engine_t *e, double base, double chat);
/* Live views of the Adam moments (same shapes as the parameters) and the number
 * of completed steps (Adam's t before the next step). */
void xc_engine_adam_state(xc_engine_t *e, xc_engine_params_t *m, xc_engine_params_t *v, long *step);

/* Running Latent Scaling estimates, from the training steps' activations and
 * residuals with the current chat decoder rows, exponentially weighted over
 * scaling_half_life tokens. out: dict_size entries, caller-owned. */
void xc_engine_scaling_running(const xc_engine_t *e, xc_scaling_stats_t *out);
/* Turns the running estimates on or off between steps (e.g. to measure their cost). */
void xc_engine_set_scaling_running(xc_engine_t *e, int on);

/* Exact Latent Scaling pass: xc_scaling_new freezes a copy of the current
 * dictionary (parameters, theta); xc_scaling_add encodes activations with it in
 * threshold mode and accumulates the exact sums. Use it from the thread that
 * trains e, between steps (it borrows the engine's worker pool). The object owns
 * its copy; free it with xc_scaling_destroy. */
typedef struct xc_scaling xc_scaling_t;
xc_scaling_t *xc_scaling_new(xc_engine_t *e, int *err); /* XC_EINVAL: decoupled codes (no one f_j) */
int xc_scaling_add(xc_scaling_t *s, const float *x, long n_tokens);
uint64_t xc_scaling_tokens(const xc_scaling_t *s);
long xc_scaling_step(const xc_scaling_t *s); /* training step the dictionary was frozen at */
void xc_scaling_result(const xc_scaling_t *s, xc_scaling_stats_t *out);
void xc_scaling_destroy(xc_scaling_t **s);

/* The complete training state as named views (for checkpoints): parameters in
 * the engine's layout, Adam moments, counters, statistics, Latent Scaling sums and
 * scalars. Writing a checkpoint copies these; restoring writes into them and
 * then calls xc_engine_state_restored(). Resuming from a restored state gives the
 * same next steps, bit for bit, for the same batches and thread count. */
typedef enum { XC_ST_F32 = 0, XC_ST_F64, XC_ST_I64, XC_ST_U64 } xc_state_dtype_t;
typedef struct {
    const char *name;   /* stable key, e.g. "adam.m.w_dec" */
    xc_state_dtype_t dtype;
    int ndim;
    long shape[3];
    void *data;         /* live view into the engine */
    size_t bytes;
    int sharded;        /* 1: axis 0 is the latent, this rank's rows [lo, lo+n) of the
                         * global tensor (shape[0] = n); 0: replicated on every rank */
} xc_state_view_t;
#define XC_ENGINE_STATE_MAX 40
/* Fills up to max views; returns how many. */
int xc_engine_state_views(xc_engine_t *e, xc_state_view_t *out, int max);
/* After writing into the views: recompute cached values (decoder norms, metrics). */
void xc_engine_state_restored(xc_engine_t *e);

/* Sets the encoder product's precision (auto resolves by CPU, xc_score_resolve).
 * A precision this build or CPU lacks runs fp32, with the reason in why; XC_ENOMEM
 * or XC_ESTATE (oneDNN refused the shape) leave fp32 in place. Between steps. */
int xc_engine_set_precision(xc_engine_t *e, xc_prec_t p, char *why, size_t why_len);
/* The product's implementation ("openblas sgemm", oneDNN's "brg:avx512_core_vnni"). */
const char *xc_engine_score_kernel(const xc_engine_t *e);
/* For tests and benches: scores x (batch_size tokens) at the engine's precision and
 * in fp32 with the current parameters, changes no parameter, and compares the two
 * selections. *differ: entries in one and not the other; *mismatch: those where the
 * reduced-precision selection is wrong by the scorer's exact values (the fp32 dot
 * products of xc_score_dot); the rest are ties within fp32 rounding of the sgemm. *fell_back:
 * the reduced scoring fell back to fp32 (nothing compared). */
int xc_engine_selection_check(xc_engine_t *e, const float *x, long n_tokens, long *differ, long *mismatch,
                              int *fell_back);

/* Geometric median of n points in R^dim (Weiszfeld from the mean, as the
 * reference trainer: <= max_iter iterations, stop when the shift < tol).
 * points (n, stride) with the dim values at offset 0 of each row. */
void xc_geometric_median(const float *points, long n, int dim, long stride, int max_iter,
                         double tol, float *out);

#endif
