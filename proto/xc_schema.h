/* The field schema: every per-step statistic, service counter, latent class
 * and per-latent column is declared ONCE here, as an X-macro table. Everything
 * that names or renders them expands these tables:
 *
 *   the stats event and the status reply    daemon/svc_render.c
 *   the Prometheus text                     daemon/metrics.c (xc_metrics_t)
 *   the shared-memory header and arrays     daemon/shmpub.c, proto/shm.c
 *   the `table` op's columns, `top` keys    proto/remote_proto.c, daemon/remote.c,
 *                                           daemon/svc_render.c
 *   the CLI's field lists                   client/cli
 *   the Python and JS constants             scripts/gen_constants.c writes
 *                                           client/python/xcoder/_generated.py and
 *                                           client/js/lib/generated.js (`make
 *                                           generate`; tests/integ_generated.sh
 *                                           fails when they are stale)
 *
 * Error codes have their table in include/xc_error.h (XC_ERRNO_MAP), latent
 * classes and shared-memory arrays theirs in include/xc_shm.h (public). This
 * header only declares: it holds no code. */
#ifndef XC_SCHEMA_H
#define XC_SCHEMA_H

#include "xc_shm.h"

#include <stddef.h>

/* ------------------------------------------------------- statistics -- */
/* Per-step statistics, in the order of the stats event and the status reply
 * (PROTOCOL.md 3.1), then those only Prometheus shows.
 *
 * X(member, kind, key, prom, ptype, pdiv, shm, help)
 *   member  the field of xc_metrics_t (daemon/xc_metrics.h) that holds it
 *   kind    U64 | I64 | F64 | F64X2 (base, chat) | BOOL | STR, or a group
 *           rendered from its own table: CLASSES, SCALING, COUNTERS, STREAMS, RANKS
 *           (each rank's step time: a list, xcoderd_rank_step_duration_seconds{rank})
 *   key     its key in the stats event / status; "" = not there
 *   prom    Prometheus family, with an optional label: "xcoderd_loss{term=total}";
 *           rows of one family are adjacent; "" = none
 *   ptype   "gauge" | "counter"
 *   pdiv    the Prometheus value is the member divided by this (ms -> s)
 *   shm     the xc_shm_header_t field it fills (XC_SCHEMA_SHM(field)), or
 *           XC_SCHEMA_NOSHM
 *   help    the Prometheus HELP text (the first row of a family gives it) */
#define XC_SCHEMA_SHM(field) ((long)offsetof(xc_shm_header_t, field))
#define XC_SCHEMA_NOSHM (-1L)

#define XC_STAT_FIELDS(X)                                                                                      \
    X(state, STR, "state", "", "", 1, XC_SCHEMA_NOSHM, "")                                                      \
    X(paused, BOOL, "paused", "", "", 1, XC_SCHEMA_NOSHM, "")                                                   \
    X(step, I64, "step", "xcoderd_step", "gauge", 1, XC_SCHEMA_SHM(step),                                       \
      "Training steps completed (a resumed run continues the checkpoint's count).")                             \
    X(tokens, U64, "tokens", "", "", 1, XC_SCHEMA_SHM(tokens), "")                                              \
    X(tokens_acked, U64, "tokens_acked", "xcoderd_tokens_acked_total", "counter", 1, XC_SCHEMA_NOSHM,           \
      "Tokens accepted from producers (acknowledged).")                                                         \
    X(tokens_trained, U64, "tokens_trained", "xcoderd_tokens_trained_total", "counter", 1, XC_SCHEMA_NOSHM,     \
      "Tokens the trainer has drawn into training steps.")                                                      \
    X(tokens_buffered, U64, "tokens_buffered", "xcoderd_tokens_buffered", "gauge", 1, XC_SCHEMA_NOSHM,          \
      "Accepted tokens waiting in the mixing buffer.")                                                          \
    X(tokens_queued, U64, "tokens_queued", "xcoderd_tokens_queued", "gauge", 1, XC_SCHEMA_NOSHM,                \
      "Accepted tokens waiting in the queue in front of the trainer.")                                          \
    X(tokens_failed, U64, "tokens_failed", "xcoderd_tokens_failed_total", "counter", 1, XC_SCHEMA_NOSHM,        \
      "Accepted tokens lost to a failed training step (batch refused inside the step).")                        \
    X(tokens_restored, U64, "tokens_restored", "", "", 1, XC_SCHEMA_NOSHM, "")                                  \
    X(batches_acked, U64, "batches_acked", "xcoderd_batches_acked_total", "counter", 1, XC_SCHEMA_NOSHM,        \
      "Batches accepted from producers.")                                                                       \
    X(mix_tokens, I64, "mix_tokens", "", "", 1, XC_SCHEMA_NOSHM, "")                                            \
    X(queue_depth, I64, "queue_depth", "xcoderd_queue_depth", "gauge", 1, XC_SCHEMA_NOSHM,                      \
      "Batches waiting in the queue in front of the trainer.")                                                  \
    X(queue_capacity, I64, "queue_size", "xcoderd_queue_capacity", "gauge", 1, XC_SCHEMA_NOSHM,                 \
      "Queue capacity (queue_size); a full queue stops ingest (backpressure).")                                 \
    X(streams, STREAMS, "streams", "", "", 1, XC_SCHEMA_NOSHM, "")                                              \
    X(loss, F64, "loss", "xcoderd_loss{term=total}", "gauge", 1, XC_SCHEMA_SHM(loss),                           \
      "Loss of the last step by term: total (what is optimised), recon_l2 (un-squared L2), recon_mse, "         \
      "aux (AuxK), l1 (sparsity penalty).")                                                                     \
    X(recon_l2, F64, "recon_l2", "xcoderd_loss{term=recon_l2}", "gauge", 1, XC_SCHEMA_SHM(recon_l2), "")        \
    X(recon_mse, F64, "recon_mse", "xcoderd_loss{term=recon_mse}", "gauge", 1, XC_SCHEMA_SHM(recon_mse), "")    \
    X(aux, F64, "aux", "xcoderd_loss{term=aux}", "gauge", 1, XC_SCHEMA_SHM(aux), "")                            \
    X(l1, F64, "l1", "xcoderd_loss{term=l1}", "gauge", 1, XC_SCHEMA_NOSHM, "")                                  \
    X(fve, F64X2, "fve", "xcoderd_fve{model}", "gauge", 1, XC_SCHEMA_SHM(fve_base),                             \
      "Fraction of variance explained in the last step, per model.")                                            \
    X(l0, F64, "l0", "xcoderd_l0", "gauge", 1, XC_SCHEMA_SHM(l0), "Mean active latents per token in the last step.") \
    X(dead_fraction, F64, "dead_fraction", "xcoderd_dead_fraction", "gauge", 1, XC_SCHEMA_SHM(dead_fraction),   \
      "Fraction of latents unfired for dead_tokens tokens.")                                                    \
    X(theta, F64, "theta", "xcoderd_threshold", "gauge", 1, XC_SCHEMA_SHM(theta),                               \
      "BatchTopK inference threshold theta (0 before threshold_start_step).")                                   \
    X(theta_m, F64X2, "theta_models", "xcoderd_threshold_model{model}", "gauge", 1, XC_SCHEMA_NOSHM,              \
      "BatchTopK inference threshold per model (code_normalization = decoupled: one each; otherwise both theta).") \
    X(k_current, I64, "k_current", "xcoderd_k_current", "gauge", 1, XC_SCHEMA_NOSHM,                            \
      "BatchTopK: k of the last step (k_max falling to k under k-annealing; k otherwise).")                     \
    X(grad_norm, F64, "grad_norm", "xcoderd_grad_norm", "gauge", 1, XC_SCHEMA_NOSHM,                            \
      "Global gradient norm of the last step (before clipping).")                                               \
    X(lr, F64, "lr", "xcoderd_learning_rate", "gauge", 1, XC_SCHEMA_NOSHM,                                      \
      "Learning rate of the last step (warm-up and decay applied).")                                            \
    X(tokens_per_s, F64, "tokens_per_s", "xcoderd_tokens_per_second", "gauge", 1, XC_SCHEMA_SHM(tokens_per_s),  \
      "Training throughput over the last stats interval.")                                                      \
    X(steps_per_s, F64, "steps_per_s", "xcoderd_steps_per_second", "gauge", 1, XC_SCHEMA_NOSHM,                 \
      "Training steps per second over the last stats interval.")                                                \
    X(step_ms, F64, "step_ms", "xcoderd_step_duration_seconds", "gauge", 1000.0, XC_SCHEMA_NOSHM,               \
      "Wall time of the last training step.")                                                                   \
    X(ranks, I64, "ranks", "xcoderd_ranks", "gauge", 1, XC_SCHEMA_NOSHM,                                        \
      "MPI ranks the latents are sharded over (mpirun -np R); 1 = one process.")                               \
    X(rank_step_ms, RANKS, "rank_step_ms", "", "", 1, XC_SCHEMA_NOSHM, "")                                      \
    X(rank_step_ms_max, F64, "rank_step_ms_max", "xcoderd_rank_step_duration_max_seconds", "gauge", 1000.0,     \
      XC_SCHEMA_NOSHM, "Wall time of the last training step on the slowest rank (sharded jobs).")              \
    X(comm_ms, F64, "comm_ms", "xcoderd_comm_duration_seconds", "gauge", 1000.0, XC_SCHEMA_NOSHM,              \
      "Time rank 0 spent inside collectives during the last training step (0 for one process).")              \
    X(comm_bytes, U64, "comm_bytes", "xcoderd_comm_bytes", "gauge", 1, XC_SCHEMA_NOSHM,                         \
      "Bytes rank 0 sent and received in collectives during the last training step.")                         \
    X(comm_bytes_total, U64, "comm_bytes_total", "xcoderd_comm_bytes_total", "counter", 1, XC_SCHEMA_NOSHM,     \
      "Bytes rank 0 sent and received in collectives since start (steps, gathers, checkpoints).")             \
    X(uptime_s, F64, "uptime_s", "xcoderd_uptime_seconds", "gauge", 1, XC_SCHEMA_NOSHM,                         \
      "Seconds since the daemon started.")                                                                      \
    X(tokens_budget, U64, "tokens_budget", "xcoderd_tokens_budget", "gauge", 1, XC_SCHEMA_NOSHM,                \
      "Token budget (max_tokens): training stops once the model has trained this many; 0 = none.")            \
    X(budget_fraction, F64, "budget_fraction", "xcoderd_budget_fraction", "gauge", 1, XC_SCHEMA_NOSHM,          \
      "Fraction of the token budget trained (tokens / max_tokens); NaN without a budget.")                      \
    X(eta_s, F64, "eta_s", "xcoderd_budget_eta_seconds", "gauge", 1, XC_SCHEMA_NOSHM,                           \
      "Seconds until the budget is reached at the measured rate (last minute); NaN without a budget or rate.")  \
    X(budget_reached, BOOL, "budget_reached", "", "", 1, XC_SCHEMA_NOSHM, "")                                   \
    X(classes, CLASSES, "classes", "", "", 1, XC_SCHEMA_NOSHM, "")                                              \
    X(scaling, SCALING, "scaling", "", "", 1, XC_SCHEMA_NOSHM, "")                                              \
    X(shm, BOOL, "shm", "", "", 1, XC_SCHEMA_NOSHM, "")                                                         \
    X(curve, BOOL, "curve", "", "", 1, XC_SCHEMA_NOSHM, "")                                                     \
    X(insecure_tcp, BOOL, "insecure_tcp", "", "", 1, XC_SCHEMA_NOSHM, "")                                       \
    X(memory_bound, F64, "memory_bound", "xcoderd_memory_bound_bytes", "gauge", 1, XC_SCHEMA_NOSHM,             \
      "The configured worst case of the daemon's memory in bytes (what memory_limit is checked against).")     \
    X(max_connections, I64, "max_connections", "", "", 1, XC_SCHEMA_NOSHM, "")                                  \
    X(connections_ingest, I64, "connections_ingest", "xcoderd_connections{socket=ingest}", "gauge", 1,          \
      XC_SCHEMA_NOSHM, "Live connections per socket (each at most max_connections).")                          \
    X(connections_control, I64, "connections_control", "xcoderd_connections{socket=control}", "gauge", 1,       \
      XC_SCHEMA_NOSHM, "")                                                                                      \
    X(connections_events, I64, "connections_events", "xcoderd_connections{socket=events}", "gauge", 1,          \
      XC_SCHEMA_NOSHM, "")                                                                                      \
    X(encoder_precision, STR, "encoder_precision", "", "", 1, XC_SCHEMA_NOSHM, "")                              \
    X(encoder_kernel, STR, "encoder_kernel", "", "", 1, XC_SCHEMA_NOSHM, "")                                    \
    X(encoder_fallbacks, U64, "encoder_fallbacks", "xcoderd_encoder_fallbacks_total", "counter", 1,             \
      XC_SCHEMA_NOSHM,                                                                                          \
      "Reduced-precision steps whose margin check failed (candidates taken again with the proven bound).")     \
    X(encoder_fp32_steps, U64, "encoder_fp32_steps", "xcoderd_encoder_fp32_steps_total", "counter", 1,          \
      XC_SCHEMA_NOSHM, "Reduced-precision steps scored by the fp32 product (too many candidates).")            \
    X(normalize, STR, "normalize", "", "", 1, XC_SCHEMA_NOSHM, "")                                              \
    X(normalize_state, STR, "normalize_state", "", "", 1, XC_SCHEMA_NOSHM, "")                                  \
    X(normalize_tokens_seen, U64, "normalize_tokens_seen", "xcoderd_normalize_tokens", "gauge", 1,              \
      XC_SCHEMA_NOSHM, "Tokens seen by the activation-normalisation statistics pass (training waits for it).")  \
    X(normalize_scale, F64X2, "normalize_scale", "xcoderd_normalize_scale{model}", "gauge", 1, XC_SCHEMA_NOSHM, \
      "activation_global_scale per model: inputs are multiplied by it (1 without normalisation or in neuron mode).") \
    X(fve_units, STR, "fve_units", "", "", 1, XC_SCHEMA_NOSHM, "")                                              \
    X(scaling_units, STR, "scaling_units", "", "", 1, XC_SCHEMA_NOSHM, "")                                      \
    X(tokens_stats_only, U64, "tokens_stats_only", "xcoderd_tokens_stats_only_total", "counter", 1,            \
      XC_SCHEMA_NOSHM, "Tokens used only for the normalisation statistics (beyond the mixing buffer): not trained.") \
    X(tokens_excluded_position, U64, "tokens_excluded_position", "xcoderd_tokens_excluded_total{reason=position}", \
      "counter", 1, XC_SCHEMA_NOSHM,                                                                            \
      "Tokens not trained on by reason: position (below exclude_positions_below), outlier (norm above "         \
      "outlier_norm_factor x the batch median).")                                                               \
    X(tokens_excluded_outlier, U64, "tokens_excluded_outlier", "xcoderd_tokens_excluded_total{reason=outlier}",  \
      "counter", 1, XC_SCHEMA_NOSHM, "")                                                                        \
    X(counters, COUNTERS, "counters", "", "", 1, XC_SCHEMA_NOSHM, "")                                           \
    X(start_time_unix, F64, "", "xcoderd_start_time_seconds", "gauge", 1, XC_SCHEMA_NOSHM,                      \
      "Start time of the daemon, seconds since the Unix epoch.")                                                \
    X(last_checkpoint_unix, F64, "", "xcoderd_last_checkpoint_timestamp_seconds", "gauge", 1, XC_SCHEMA_NOSHM,  \
      "Time the last checkpoint was written, seconds since the Unix epoch; 0 = none by this process.")          \
    X(last_checkpoint_step, I64, "", "xcoderd_last_checkpoint_step", "gauge", 1, XC_SCHEMA_NOSHM,               \
      "Training step of the last checkpoint written; -1 = none.")                                               \
    X(checkpoint_age_s, F64, "", "xcoderd_checkpoint_age_seconds", "gauge", 1, XC_SCHEMA_NOSHM,                 \
      "Seconds since the last checkpoint was written (since start when none yet): what a crash would lose.")

/* The "scaling" map of the stats event: the exact Latent Scaling pass.
 * X(member, kind, key) -- member of xc_metrics_t. */
#define XC_STAT_SCALING_FIELDS(X)                  \
    X(scaling_running, BOOL, "running")            \
    X(scaling_done, U64, "tokens_done")            \
    X(scaling_target, U64, "tokens_target")        \
    X(scaling_last_step, I64, "last_step")         \
    X(scaling_last_tokens, U64, "last_tokens")     \
    X(scaling_passes, U64, "passes")               \
    X(scaling_cancelled, U64, "cancelled")

/* The "streams" map of the stats event: with stream_mix, one map per stream
 * of the mixture keyed by its tag ("*" for the others); empty without a
 * mixture. Prometheus: one family per row with a prom name, a sample per
 * stream labelled stream="TAG".
 * X(member, kind, key, prom, ptype, help) -- member of xc_metrics_stream_t. */
#define XC_STREAM_FIELDS(X)                                                                                    \
    X(share, F64, "share", "xcoderd_stream_share", "gauge",                                                     \
      "Share of every training batch the mixture gives the stream (stream_mix, normalised).")                  \
    X(tokens_acked, U64, "tokens_acked", "xcoderd_stream_tokens_acked_total", "counter",                        \
      "Tokens of the stream accepted (acknowledged).")                                                          \
    X(tokens_trained, U64, "tokens_trained", "xcoderd_stream_tokens_trained_total", "counter",                  \
      "Tokens of the stream in training steps.")                                                                \
    X(tokens_buffered, U64, "tokens_buffered", "xcoderd_stream_tokens_buffered", "gauge",                       \
      "Tokens of the stream waiting in its part of the mixing buffer.")                                         \
    X(tokens_queued, U64, "tokens_queued", "xcoderd_stream_tokens_queued", "gauge",                             \
      "Tokens of the stream waiting in its lane of the queue.")                                                 \
    X(tokens_held, U64, "tokens_held", "xcoderd_stream_tokens_held", "gauge",                                   \
      "Tokens of the stream held unanswered while the stream is ahead of the mixture (its producers wait).")   \
    X(batches_held, U64, "batches_held", "xcoderd_stream_batches_held", "gauge",                                \
      "Batches of the stream held unanswered now.")                                                             \
    X(holds, U64, "holds", "xcoderd_stream_holds_total", "counter",                                             \
      "Batches of the stream held before they were accepted (backpressure on its producers; none dropped).")   \
    X(batch_tokens, I64, "batch_tokens", "xcoderd_stream_batch_tokens", "gauge",                                \
      "Tokens of the stream in the last training batch.")                                                       \
    X(batch_min, I64, "batch_min", "", "", "")                                                                  \
    X(batch_max, I64, "batch_max", "", "", "")                                                                  \
    X(waiting, BOOL, "waiting", "", "", "")

/* C types of the scalar kinds (members of xc_metrics_t); groups have none. */
#define XC_SCHEMA_CTYPE_U64(m) uint64_t m;
#define XC_SCHEMA_CTYPE_I64(m) long m;
#define XC_SCHEMA_CTYPE_F64(m) double m;
#define XC_SCHEMA_CTYPE_F64X2(m) double m[2];
#define XC_SCHEMA_CTYPE_BOOL(m) int m;
#define XC_SCHEMA_CTYPE_STR(m) const char *m;
#define XC_SCHEMA_CTYPE_CLASSES(m)
#define XC_SCHEMA_CTYPE_SCALING(m)
#define XC_SCHEMA_CTYPE_COUNTERS(m)
#define XC_SCHEMA_CTYPE_STREAMS(m)
#define XC_SCHEMA_CTYPE_RANKS(m)

/* Kind codes, for tables built from the X-macros. */
enum {
    XC_SK_U64 = 1, XC_SK_I64, XC_SK_F64, XC_SK_F64X2, XC_SK_BOOL, XC_SK_STR,
    XC_SK_CLASSES, XC_SK_SCALING, XC_SK_COUNTERS, XC_SK_STREAMS, XC_SK_RANKS
};

/* ---------------------------------------------------------- counters -- */
/* Service counters, in the order of the stats event's "counters" map (after
 * the refusals by reason). X(name, prom, help): prom 1 = its own Prometheus
 * family xcoderd_NAME_total (batches_refused is xcoderd_batches_refused_total
 * by reason instead; the auth_* counts are the auth module's, copied in when
 * rendering). */
#define XC_COUNTER_FIELDS(X)                                                                  \
    X(batches_refused, 0, "Batches refused (nacked), all reasons.")                           \
    X(control_requests, 1, "Control requests received.")                                      \
    X(control_errors, 1, "Control requests answered with an error.")                          \
    X(checkpoints_written, 1, "Checkpoints written (interval, request, shutdown).")           \
    X(checkpoints_failed, 1, "Checkpoints that failed to write.")                             \
    X(events_published, 1, "Events published on the events socket.")                         \
    X(ingest_blocked, 1, "Times the queue was full and ingest stopped reading (backpressure).") \
    X(zmq_errors, 1, "ZeroMQ send/receive errors.")                                           \
    X(control_denied, 1, "Control requests refused with XC_EPERM (the key lacks the role).")  \
    X(replies_deferred, 1, "Control replies held in the backlog until the client read more.") \
    X(replies_busy, 1, "Control replies replaced by XC_EBUSY (the 64 MiB reply backlog was full).") \
    X(replies_dropped, 1, "Control replies lost: the client left, or never read 65,536 replies.") \
    X(tokens_lost_at_start, 1, "Tokens the previous process acknowledged after its last checkpoint (lost).") \
    X(auth_accepted, 0, "CURVE handshakes accepted (the stats event only).")                 \
    X(auth_refused, 0, "CURVE handshakes refused (the stats event only).")                   \
    X(connections_refused, 1, "Connections refused at the handshake: their socket had max_connections.")

/* ------------------------------------------------------ latent columns -- */
/* Per-latent columns: the `table` op's catalogue in reply order (its first 28
 * are the shared-memory arrays of include/xc_shm.h in object order), the keys
 * `top` sorts by, and the clients' column lists.
 *
 * X(name, dtype, shm, dflt, src, field)
 *   dtype  F32 | F64 | I64 | U8 (XC_TCOL_*, = SHM.md's dtype codes)
 *   shm    the xc_shm_array_t index, or -1 where shared memory lacks it
 *   dflt   1 = in a table reply when the request names no fields
 *   src    where a record keeps it: LAT (xc_latent_stats_t), RUN (running
 *          Latent Scaling), EXACT (the exact pass; NaN / 0 before one), CLS,
 *          FLAGS, J (the index)
 *   field  the member of that record */
#define XC_LATENT_COLUMNS(X)                                                        \
    X(delta_norm, F32, XC_SHM_DELTA_NORM, 1, LAT, delta_norm)                       \
    X(cosine, F32, XC_SHM_COSINE, 1, LAT, cosine)                                   \
    X(norm_base, F32, XC_SHM_NORM_BASE, 1, LAT, norm_base)                          \
    X(norm_chat, F32, XC_SHM_NORM_CHAT, 1, LAT, norm_chat)                          \
    X(freq, F32, XC_SHM_FREQ, 1, LAT, freq)                                         \
    X(mean_act, F32, XC_SHM_MEAN_ACT, 1, LAT, mean_act)                             \
    X(max_act, F32, XC_SHM_MAX_ACT, 1, LAT, max_act)                                \
    X(last_step, I64, XC_SHM_LAST_STEP, 1, LAT, last_step_fired)                    \
    X(beta_err_base, F32, XC_SHM_BETA_ERR_BASE, 1, RUN, beta_err[0])                \
    X(beta_err_chat, F32, XC_SHM_BETA_ERR_CHAT, 1, RUN, beta_err[1])                \
    X(beta_rec_base, F32, XC_SHM_BETA_REC_BASE, 1, RUN, beta_rec[0])                \
    X(beta_rec_chat, F32, XC_SHM_BETA_REC_CHAT, 1, RUN, beta_rec[1])                \
    X(nu_err, F32, XC_SHM_NU_ERR, 1, RUN, nu_err)                                   \
    X(nu_rec, F32, XC_SHM_NU_REC, 1, RUN, nu_rec)                                   \
    X(active, F64, XC_SHM_ACTIVE, 1, RUN, active)                                   \
    X(exact_beta_err_base, F32, XC_SHM_EXACT_BETA_ERR_BASE, 1, EXACT, beta_err[0])  \
    X(exact_beta_err_chat, F32, XC_SHM_EXACT_BETA_ERR_CHAT, 1, EXACT, beta_err[1])  \
    X(exact_beta_rec_base, F32, XC_SHM_EXACT_BETA_REC_BASE, 1, EXACT, beta_rec[0])  \
    X(exact_beta_rec_chat, F32, XC_SHM_EXACT_BETA_REC_CHAT, 1, EXACT, beta_rec[1])  \
    X(exact_nu_err, F32, XC_SHM_EXACT_NU_ERR, 1, EXACT, nu_err)                     \
    X(exact_nu_rec, F32, XC_SHM_EXACT_NU_REC, 1, EXACT, nu_rec)                     \
    X(exact_active, F64, XC_SHM_EXACT_ACTIVE, 1, EXACT, active)                     \
    X(class, U8, XC_SHM_CLASS, 1, CLS, cls)                                         \
    X(flags, U8, XC_SHM_FLAGS, 1, FLAGS, flags)                                     \
    X(beta_err_chat_se, F32, XC_SHM_BETA_ERR_CHAT_SE, 1, RUN, se_err_chat)          \
    X(beta_rec_chat_se, F32, XC_SHM_BETA_REC_CHAT_SE, 1, RUN, se_rec_chat)          \
    X(exact_beta_err_chat_se, F32, XC_SHM_EXACT_BETA_ERR_CHAT_SE, 1, EXACT, se_err_chat) \
    X(exact_beta_rec_chat_se, F32, XC_SHM_EXACT_BETA_REC_CHAT_SE, 1, EXACT, se_rec_chat) \
    X(nu_unstable, U8, -1, 1, RUN, nu_unstable)                                     \
    X(exact_nu_unstable, U8, -1, 1, EXACT, nu_unstable)                             \
    X(fired, I64, -1, 1, LAT, fired)                                                \
    X(tokens_since_fired, I64, -1, 1, LAT, tokens_since_fired)                      \
    X(dead, U8, -1, 1, LAT, dead)                                                   \
    X(j, I64, -1, 0, J, j)

/* Column indices: XC_COL_delta_norm = 0, ... in the order above. */
enum xc_col {
#define XC_COL_ENUM(name, dtype, shm, dflt, src, field) XC_COL_##name,
    XC_LATENT_COLUMNS(XC_COL_ENUM)
#undef XC_COL_ENUM
    XC_COL__COUNT
};
/* "delta_norm cosine ... j ": the column names as one string literal. */
#define XC_COL_NAME_SP(name, dtype, shm, dflt, src, field) #name " "
#define XC_COL_NAMES_LIST XC_LATENT_COLUMNS(XC_COL_NAME_SP)

/* Column dtypes; the values are SHM.md's array dtype codes. X(name, code, size). */
#define XC_COLUMN_DTYPES(X) X(F32, "f32", 1, 4) X(F64, "f64", 2, 8) X(I64, "i64", 3, 8) X(U8, "u8", 4, 1)

/* `top` also accepts this older name of last_step. */
#define XC_TOP_ALIAS_LAST_STEP "last_step_fired"

#endif
