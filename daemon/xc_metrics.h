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
 * durations and ages are in seconds. The metric list is the table g_metrics
 * in metrics.c; `xcoderd(8)` documents it. */
#ifndef XC_METRICS_H
#define XC_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "xc_proto.h"

#define XC_METRICS_MAX_COUNTERS 32

/* A named counter: refusals by reason, or a service counter. name is borrowed
 * (a static string, or one that outlives the render call). */
typedef struct {
    const char *name;
    uint64_t value;
} xc_metrics_counter_t;

/* Plain values; strings are borrowed. NaN doubles are written as NaN. */
typedef struct {
    /* identity */
    const char *name;            /* instance name: the name="..." label of every series */
    const char *model;           /* batchtopk | l1 */
    const char *state;           /* starting | running | paused | stopping */
    long d, dict_size, k, batch_size;
    /* progress */
    long step;
    uint64_t tokens_trained, tokens_acked, tokens_buffered, tokens_queued, tokens_failed;
    uint64_t batches_acked;
    long queue_depth, queue_capacity;
    double tokens_per_s, steps_per_s, step_seconds; /* over the last stats interval / last step */
    /* model quality, of the last completed step */
    double loss, recon_l2, recon_mse, aux, l1;
    double fve[2];               /* base, chat */
    double l0, dead_fraction, theta, grad_norm, lr;
    /* time */
    double uptime_s, start_time_unix;
    double last_checkpoint_unix; /* 0 = none written by this process yet */
    long last_checkpoint_step;   /* -1 = none */
    double checkpoint_age_s;     /* since the last checkpoint, or since start when none */
    /* counters */
    xc_metrics_counter_t refused[XC_METRICS_MAX_COUNTERS]; /* by reason (XC_E* name) */
    int n_refused;
    xc_metrics_counter_t counters[XC_METRICS_MAX_COUNTERS]; /* xcoderd_NAME_total */
    int n_counters;
    xc_metrics_counter_t classes[XC_METRICS_MAX_COUNTERS]; /* xcoderd_latents{class} (gauges) */
    int n_classes;
} xc_metrics_t;

/* Zeroes m and sets the doubles to NaN and last_checkpoint_step to -1, so a
 * field the caller does not know renders as NaN rather than a false 0. */
void xc_metrics_init(xc_metrics_t *m);
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
