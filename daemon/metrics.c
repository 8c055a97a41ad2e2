/* Prometheus text exposition of an xcoderd instance (see xc_metrics.h). */
#include "xc_metrics.h"
#include "xc_afile.h"

#include "xc_error.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef enum { V_F64, V_LONG, V_U64 } vkind_t;

/* One unlabelled family: the value lives at `off` in xc_metrics_t. */
typedef struct {
    const char *name, *type, *help;
    vkind_t kind;
    size_t off;
} mdef_t;

#define M(field) offsetof(xc_metrics_t, field)

/* The scalar families, in output order. Labelled families (info, state, loss,
 * fve, refusals, service counters) are written by render_labelled below. */
static const mdef_t g_metrics[] = {
    {"xcoderd_step", "gauge", "Training steps completed (a resumed run continues the checkpoint's count).",
     V_LONG, M(step)},
    {"xcoderd_tokens_trained_total", "counter", "Tokens the trainer has drawn into training steps.", V_U64,
     M(tokens_trained)},
    {"xcoderd_tokens_acked_total", "counter", "Tokens accepted from producers (acknowledged).", V_U64,
     M(tokens_acked)},
    {"xcoderd_tokens_failed_total", "counter",
     "Accepted tokens lost to a failed training step (batch refused inside the step).", V_U64,
     M(tokens_failed)},
    {"xcoderd_batches_acked_total", "counter", "Batches accepted from producers.", V_U64, M(batches_acked)},
    {"xcoderd_tokens_buffered", "gauge", "Accepted tokens waiting in the mixing buffer.", V_U64,
     M(tokens_buffered)},
    {"xcoderd_tokens_queued", "gauge", "Accepted tokens waiting in the queue in front of the trainer.", V_U64,
     M(tokens_queued)},
    {"xcoderd_queue_depth", "gauge", "Batches waiting in the queue in front of the trainer.", V_LONG,
     M(queue_depth)},
    {"xcoderd_queue_capacity", "gauge", "Queue capacity (queue_size); a full queue stops ingest (backpressure).",
     V_LONG, M(queue_capacity)},
    {"xcoderd_tokens_per_second", "gauge", "Training throughput over the last stats interval.", V_F64,
     M(tokens_per_s)},
    {"xcoderd_steps_per_second", "gauge", "Training steps per second over the last stats interval.", V_F64,
     M(steps_per_s)},
    {"xcoderd_step_duration_seconds", "gauge", "Wall time of the last training step.", V_F64,
     M(step_seconds)},
    {"xcoderd_l0", "gauge", "Mean active latents per token in the last step.", V_F64, M(l0)},
    {"xcoderd_dead_fraction", "gauge", "Fraction of latents unfired for dead_tokens tokens.", V_F64,
     M(dead_fraction)},
    {"xcoderd_threshold", "gauge", "BatchTopK inference threshold theta (0 before threshold_start_step).",
     V_F64, M(theta)},
    {"xcoderd_grad_norm", "gauge", "Global gradient norm of the last step (before clipping).", V_F64,
     M(grad_norm)},
    {"xcoderd_learning_rate", "gauge", "Learning rate of the last step (warm-up and decay applied).", V_F64,
     M(lr)},
    {"xcoderd_uptime_seconds", "gauge", "Seconds since the daemon started.", V_F64, M(uptime_s)},
    {"xcoderd_start_time_seconds", "gauge", "Start time of the daemon, seconds since the Unix epoch.", V_F64,
     M(start_time_unix)},
    {"xcoderd_last_checkpoint_timestamp_seconds", "gauge",
     "Time the last checkpoint was written, seconds since the Unix epoch; 0 = none by this process.", V_F64,
     M(last_checkpoint_unix)},
    {"xcoderd_last_checkpoint_step", "gauge", "Training step of the last checkpoint written; -1 = none.",
     V_LONG, M(last_checkpoint_step)},
    {"xcoderd_checkpoint_age_seconds", "gauge",
     "Seconds since the last checkpoint was written (since start when none yet): what a crash would lose.",
     V_F64, M(checkpoint_age_s)},
};

/* Help for the service counters the daemon is known to export; others get a
 * generic line (a new counter still appears, named after its field). */
static const struct {
    const char *name, *help;
} g_counter_help[] = {
    {"control_requests", "Control requests received."},
    {"control_errors", "Control requests answered with an error."},
    {"checkpoints_written", "Checkpoints written (interval, request, shutdown)."},
    {"checkpoints_failed", "Checkpoints that failed to write."},
    {"events_published", "Events published on the events socket."},
    {"ingest_blocked", "Times the queue was full and ingest stopped reading (backpressure)."},
    {"zmq_errors", "ZeroMQ send/receive errors."},
    {"control_denied", "Control requests refused with XC_EPERM (the key lacks the role)."},
    {"replies_deferred", "Control replies held in the backlog until the client read more."},
    {"replies_busy", "Control replies replaced by XC_EBUSY (the 64 MiB reply backlog was full)."},
    {"replies_dropped", "Control replies lost: the client left, or never read 65,536 replies."},
};

static const char *const g_states[] = {"starting", "running", "paused", "stopping"};

/* ------------------------------------------------------------ appending -- */
static void put(xc_buf_t *b, const char *s) { xc_buf_append(b, s, strlen(s)); }

static void putf(xc_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(xc_buf_t *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        xc_buf_append(b, tmp, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->err = XC_ENOMEM;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    xc_buf_append(b, big, (size_t)n);
    free(big);
}

/* A sample value as Prometheus writes floats: NaN, +Inf, -Inf, else the
 * shortest of %.15g / %.17g that reads back exactly. */
static void put_double(xc_buf_t *b, double v)
{
    char s[40];
    if (isnan(v)) {
        put(b, "NaN");
        return;
    }
    if (isinf(v)) {
        put(b, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    snprintf(s, sizeof s, "%.15g", v);
    if (strtod(s, NULL) != v) snprintf(s, sizeof s, "%.17g", v);
    put(b, s);
}

/* A label value: backslash, double quote and newline escaped (exposition
 * format 0.0.4); other bytes, UTF-8 included, as they are. */
static void put_label_value(xc_buf_t *b, const char *v)
{
    for (const char *p = v ? v : ""; *p; p++) {
        if (*p == '\\') put(b, "\\\\");
        else if (*p == '"') put(b, "\\\"");
        else if (*p == '\n') put(b, "\\n");
        else xc_buf_append(b, p, 1);
    }
}

/* A metric name from a field name: [a-zA-Z0-9_:] kept, anything else '_'. */
static void put_name_part(xc_buf_t *b, const char *s)
{
    for (const char *p = s; *p; p++) {
        char c = *p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                 c == ':';
        xc_buf_append(b, ok ? &c : "_", 1);
    }
}

/* "# HELP" text: backslash and newline escaped. */
static void put_header(xc_buf_t *b, const char *prefix, const char *name, const char *suffix, const char *type,
                       const char *help)
{
    put(b, "# HELP ");
    put(b, prefix);
    put_name_part(b, name);
    put(b, suffix);
    put(b, " ");
    for (const char *p = help; *p; p++) {
        if (*p == '\\') put(b, "\\\\");
        else if (*p == '\n') put(b, "\\n");
        else xc_buf_append(b, p, 1);
    }
    put(b, "\n# TYPE ");
    put(b, prefix);
    put_name_part(b, name);
    put(b, suffix);
    put(b, " ");
    put(b, type);
    put(b, "\n");
}

/* Starts a sample line: NAME{name="INSTANCE" — the caller adds labels and
 * closes it with end_sample. */
static void begin_sample(xc_buf_t *b, const xc_metrics_t *m, const char *prefix, const char *name,
                         const char *suffix)
{
    put(b, prefix);
    put_name_part(b, name);
    put(b, suffix);
    put(b, "{name=\"");
    put_label_value(b, m->name);
    put(b, "\"");
}

static void label(xc_buf_t *b, const char *key, const char *value)
{
    put(b, ",");
    put(b, key);
    put(b, "=\"");
    put_label_value(b, value);
    put(b, "\"");
}

static void end_sample(xc_buf_t *b, double v)
{
    put(b, "} ");
    put_double(b, v);
    put(b, "\n");
}

static void end_sample_u64(xc_buf_t *b, uint64_t v)
{
    putf(b, "} %llu\n", (unsigned long long)v);
}

/* ------------------------------------------------------------ families -- */
static void render_scalar(xc_buf_t *b, const xc_metrics_t *m, const mdef_t *d)
{
    const char *base = (const char *)m + d->off;
    put_header(b, "", d->name, "", d->type, d->help);
    begin_sample(b, m, "", d->name, "");
    switch (d->kind) {
    case V_F64: end_sample(b, *(const double *)base); break;
    case V_LONG: putf(b, "} %ld\n", *(const long *)base); break;
    case V_U64: end_sample_u64(b, *(const uint64_t *)base); break;
    }
}

static void render_info(xc_buf_t *b, const xc_metrics_t *m)
{
    char v[4][24];
    snprintf(v[0], sizeof v[0], "%ld", m->d);
    snprintf(v[1], sizeof v[1], "%ld", m->dict_size);
    snprintf(v[2], sizeof v[2], "%ld", m->k);
    snprintf(v[3], sizeof v[3], "%ld", m->batch_size);
    put_header(b, "", "xcoderd_info", "", "gauge", "Model of this instance (value always 1).");
    begin_sample(b, m, "", "xcoderd_info", "");
    label(b, "model", m->model);
    label(b, "d", v[0]);
    label(b, "dict_size", v[1]);
    label(b, "k", v[2]);
    label(b, "batch_size", v[3]);
    end_sample(b, 1);

    put_header(b, "", "xcoderd_state", "", "gauge", "Daemon state: 1 for the current state, 0 for the others.");
    for (size_t i = 0; i < sizeof g_states / sizeof g_states[0]; i++) {
        begin_sample(b, m, "", "xcoderd_state", "");
        label(b, "state", g_states[i]);
        end_sample(b, m->state && strcmp(m->state, g_states[i]) == 0);
    }
}

static void render_quality(xc_buf_t *b, const xc_metrics_t *m)
{
    const char *terms[] = {"total", "recon_l2", "recon_mse", "aux", "l1"};
    const double vals[] = {m->loss, m->recon_l2, m->recon_mse, m->aux, m->l1};
    put_header(b, "", "xcoderd_loss", "", "gauge",
               "Loss of the last step by term: total (what is optimised), recon_l2 (un-squared L2), recon_mse, "
               "aux (AuxK), l1 (sparsity penalty).");
    for (int i = 0; i < 5; i++) {
        begin_sample(b, m, "", "xcoderd_loss", "");
        label(b, "term", terms[i]);
        end_sample(b, vals[i]);
    }
    put_header(b, "", "xcoderd_fve", "", "gauge", "Fraction of variance explained in the last step, per model.");
    for (int i = 0; i < 2; i++) {
        begin_sample(b, m, "", "xcoderd_fve", "");
        label(b, "model", i ? "chat" : "base");
        end_sample(b, m->fve[i]);
    }
}

static void render_classes(xc_buf_t *b, const xc_metrics_t *m)
{
    put_header(b, "", "xcoderd_latents", "", "gauge",
               "Latents per class (decoder-norm and Latent Scaling classes of the last analysis update).");
    for (int i = 0; i < m->n_classes && i < XC_METRICS_MAX_COUNTERS; i++) {
        begin_sample(b, m, "", "xcoderd_latents", "");
        label(b, "class", m->classes[i].name);
        end_sample_u64(b, m->classes[i].value);
    }
}

static void render_counters(xc_buf_t *b, const xc_metrics_t *m)
{
    put_header(b, "", "xcoderd_batches_refused_total", "", "counter",
               "Batches refused (nacked), by reason (the XC_E* code of the nack).");
    for (int i = 0; i < m->n_refused && i < XC_METRICS_MAX_COUNTERS; i++) {
        begin_sample(b, m, "", "xcoderd_batches_refused_total", "");
        label(b, "reason", m->refused[i].name);
        end_sample_u64(b, m->refused[i].value);
    }
    for (int i = 0; i < m->n_counters && i < XC_METRICS_MAX_COUNTERS; i++) {
        const xc_metrics_counter_t *c = &m->counters[i];
        const char *help = "Service counter (see xcoderd(8)).";
        for (size_t j = 0; j < sizeof g_counter_help / sizeof g_counter_help[0]; j++)
            if (strcmp(g_counter_help[j].name, c->name) == 0) help = g_counter_help[j].help;
        put_header(b, "xcoderd_", c->name, "_total", "counter", help);
        begin_sample(b, m, "xcoderd_", c->name, "_total");
        end_sample_u64(b, c->value);
    }
}

/* --------------------------------------------------------------- public -- */
void xc_metrics_init(xc_metrics_t *m)
{
    memset(m, 0, sizeof *m);
    m->name = "default";
    m->model = "";
    m->state = "starting";
    for (size_t i = 0; i < sizeof g_metrics / sizeof g_metrics[0]; i++)
        if (g_metrics[i].kind == V_F64) *(double *)((char *)m + g_metrics[i].off) = NAN;
    m->loss = m->recon_l2 = m->recon_mse = m->aux = m->l1 = NAN;
    m->fve[0] = m->fve[1] = NAN;
    m->last_checkpoint_unix = 0;
    m->last_checkpoint_step = -1;
}

int xc_metrics_render(const xc_metrics_t *m, xc_buf_t *out)
{
    render_info(out, m);
    for (size_t i = 0; i < sizeof g_metrics / sizeof g_metrics[0]; i++) render_scalar(out, m, &g_metrics[i]);
    render_quality(out, m);
    render_classes(out, m);
    render_counters(out, m);
    return out->err ? XC_ENOMEM : XC_OK;
}

/* Through the one atomic-write routine, so a scrape never sees half a file. */
int xc_metrics_write_file(const char *path, const void *text, size_t len, char *why, size_t why_len)
{
    xc_afile_t f;
    char sub[600];
    if (xc_afile_open(&f, path, NULL, XC_AFILE_NOSYNC, 0644, sub, sizeof sub)) {
        xc_why(why, why_len, "%s (check metrics_file and that the directory is writable)", sub);
        return XC_EIO;
    }
    /* whatever the umask: node-exporter reads the file as another user */
    if (xc_afile_write(&f, text, len) || fchmod(f.fd, 0644) < 0) {
        xc_why(why, why_len, "cannot write %s: %s", f.tmp, strerror(errno));
        xc_afile_abort(&f, 0);
        return XC_EIO;
    }
    return xc_afile_commit(&f, why, why_len);
}
