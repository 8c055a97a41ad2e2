/* Prometheus metrics of one xcoderd instance, in the text exposition format
 * (version 0.0.4, what node-exporter's textfile collector reads).
 *
 * ONE renderer: the service fills an xc_metrics_t from its state (trainer
 * status, queue counts, counters) and xc_metrics_render() turns it into text.
 * The same text goes to `metrics_file` (written atomically by
 * xc_metrics_write_file every `metrics_interval` seconds) and into the reply
 * of the `metrics` control op, which `xcoder metrics` prints unchanged.
 *
 * Every series carries the label name="INSTANCE" so that several instances can
 * share one textfile directory (the label is not called `instance`, which
 * Prometheus sets on scrape). Names: xcoderd_*; counters end in _total;
 * durations and ages are in seconds. The metric list is the statistics
 * schema (XC_STAT_FIELDS, XC_COUNTER_FIELDS in proto/xc_schema.h); `xcoderd(8)`
 * documents it. */
#ifndef XC_METRICS_H
#define XC_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "xc_engine.h"
#include "xc_proto.h"
#include "xc_shm.h"
#include "xc_schema.h"

#define XC_METRICS_MAX_COUNTERS 32
#define XC_METRICS_MAX_STREAMS 16

/* One stream of the mixture (XC_STREAM_FIELDS); stream is borrowed. */
typedef struct {
    const char *stream;
#define XC_METRICS_STREAM_MEMBER(member, kind, key, prom, ptype, help) XC_SCHEMA_CTYPE_##kind(member)
    XC_STREAM_FIELDS(XC_METRICS_STREAM_MEMBER)
#undef XC_METRICS_STREAM_MEMBER
} xc_metrics_stream_t;

/* A named counter: refusals by reason, or a service counter. name is borrowed
 * (a static string, or one that outlives the render call). */
typedef struct {
    const char *name;
    uint64_t value;
} xc_metrics_counter_t;

/* One instance's statistics: what the stats event, the status reply and the
 * Prometheus text all render (the service fills it once per rendering). The
 * statistics are the members XC_STAT_FIELDS and XC_STAT_SCALING_FIELDS of
 * proto/xc_schema.h declare; strings are borrowed. NaN doubles are written as
 * NaN. */
typedef struct {
    /* identity */
    const char *name;            /* instance name: the name="..." label of every series */
    const char *model;           /* batchtopk | l1 */
    long d, dict_size, k, batch_size;
    /* statistics (state: starting | running | paused | stopping) */
#define XC_METRICS_MEMBER(member, kind, key, prom, ptype, pdiv, shm, help) XC_SCHEMA_CTYPE_##kind(member)
    XC_STAT_FIELDS(XC_METRICS_MEMBER)
#undef XC_METRICS_MEMBER
#define XC_METRICS_SCALING_MEMBER(member, kind, key) XC_SCHEMA_CTYPE_##kind(member)
    XC_STAT_SCALING_FIELDS(XC_METRICS_SCALING_MEMBER)
#undef XC_METRICS_SCALING_MEMBER
    /* the RANKS group: each rank's wall time of the last step (ms), the first
     * n_rank_step ranks */
    double rank_step[64];
    int n_rank_step;
    /* counters */
    xc_metrics_counter_t refused[XC_METRICS_MAX_COUNTERS]; /* by reason (XC_E* name) */
    int n_refused;
    xc_metrics_counter_t counters[XC_METRICS_MAX_COUNTERS]; /* xcoderd_NAME_total (XC_COUNTER_FIELDS) */
    int n_counters;
    xc_metrics_counter_t classes[XC_METRICS_MAX_COUNTERS]; /* xcoderd_latents{class} (gauges) */
    int n_classes;
    xc_metrics_stream_t streams[XC_METRICS_MAX_STREAMS]; /* the stream mixture; none without one */
    int n_streams;
} xc_metrics_t;

/* Zeroes m and sets the doubles to NaN and last_checkpoint_step to -1, so a
 * field the caller does not know renders as NaN rather than a false 0. */
void xc_metrics_init(xc_metrics_t *m);
/* Sets the statistics an engine step produces (step, tokens, losses, fve, l0,
 * dead fraction, theta, gradient norm, lr): the one mapping from the engine's
 * metrics, for the service and the shared-memory header alike. */
void xc_metrics_set_engine(xc_metrics_t *m, const xc_engine_metrics_t *e);
/* Writes the statistics the schema places in the shared-memory header (its
 * shm column) into h; the other header fields are the caller's. */
void xc_metrics_to_shm_header(const xc_metrics_t *m, xc_shm_header_t *h);
/* Appends the exposition text of m to out (not NUL-terminated). 0 or XC_ENOMEM. */
int xc_metrics_render(const xc_metrics_t *m, xc_buf_t *out);
/* Writes len bytes of text to path atomically (format/xc_afile.h: a temp file
 * in the same directory, mode 0644 (node-exporter runs as another user), then
 * rename(2)). Readers see the old file or the new one, never a part. No fsync
 * (XC_AFILE_NOSYNC): metrics are rewritten every interval, and the loop thread
 * must not wait on the disk.
 * 0 or XC_EIO with why naming the file. */
int xc_metrics_write_file(const char *path, const void *text, size_t len, char *why, size_t why_len);

#endif
