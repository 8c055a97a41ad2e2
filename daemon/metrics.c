/* Prometheus text exposition of an xcoderd instance (see xc_metrics.h). */
#include "xc_metrics.h"
#include "xc_afile.h"

#include "xc_error.h"

#include <stddef.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* One scalar statistic as Prometheus shows it: a row of XC_STAT_FIELDS
 * (proto/xc_schema.h) whose prom column is set; the value lives at `off` in
 * xc_metrics_t. */
typedef struct {
    const char *prom, *type, *help;
    int kind;                   /* XC_SK_* */
    double div;
    size_t off;
} mdef_t;

#define XC_MDEF_OFF_U64(m) offsetof(xc_metrics_t, m)
#define XC_MDEF_OFF_I64(m) offsetof(xc_metrics_t, m)
#define XC_MDEF_OFF_F64(m) offsetof(xc_metrics_t, m)
#define XC_MDEF_OFF_F64X2(m) offsetof(xc_metrics_t, m)
#define XC_MDEF_OFF_BOOL(m) offsetof(xc_metrics_t, m)
#define XC_MDEF_OFF_STR(m) offsetof(xc_metrics_t, m)
#define XC_MDEF_OFF_CLASSES(m) 0
#define XC_MDEF_OFF_SCALING(m) 0
#define XC_MDEF_OFF_COUNTERS(m) 0
#define XC_MDEF_OFF_STREAMS(m) 0
#define XC_MDEF_OFF_RANKS(m) 0
#define XC_MDEF_ROW(member, kind, key, prom, ptype, pdiv, shm, help) \
    {prom, ptype, help, XC_SK_##kind, pdiv, XC_MDEF_OFF_##kind(member)},
static const mdef_t g_stats[] = {XC_STAT_FIELDS(XC_MDEF_ROW)};
#undef XC_MDEF_ROW

/* Help of the service counters: the counter schema. */
static const struct {
    const char *name, *help;
    int prom;
} g_counter_help[] = {
#define XC_COUNTER_HELP(name, prom, help) {#name, help, prom},
    XC_COUNTER_FIELDS(XC_COUNTER_HELP)
#undef XC_COUNTER_HELP
};

static const char *const g_states[] = {"starting", "running", "paused", "stopping"};

/* ------------------------------------------------------------ appending -- */
static void put(xc_buf_t *b, const char *s) { xc_buf_append(b, s, strlen(s)); }

static void putf(xc_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* printf into the buffer, without a size limit (a long value falls back to
 * a heap buffer). */
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
/* The family of a prom column ("xcoderd_loss{term=total}" -> "xcoderd_loss",
 * label term="total"; "xcoderd_fve{model}" -> label key model, no value). */
static void split_prom(const char *prom, char *fam, size_t fl, char *lk, size_t kl, char *lv, size_t vl)
{
    const char *br = strchr(prom, '{'), *eq = br ? strchr(br, '=') : NULL;
    size_t n = br ? (size_t)(br - prom) : strlen(prom);
    snprintf(fam, fl, "%.*s", (int)n, prom);
    lk[0] = lv[0] = 0;
    if (!br) return;
    const char *end = strchr(br, '}');
    if (!end) return;
    if (eq && eq < end) {
        snprintf(lk, kl, "%.*s", (int)(eq - br - 1), br + 1);
        snprintf(lv, vl, "%.*s", (int)(end - eq - 1), eq + 1);
    } else {
        snprintf(lk, kl, "%.*s", (int)(end - br - 1), br + 1);
    }
}

/* Every statistic with a Prometheus family, in schema order: a HELP/TYPE
 * header when the family starts, then its sample (a labelled family's rows
 * are adjacent in the schema; fve gives a base and a chat sample). */
static void render_stats(xc_buf_t *b, const xc_metrics_t *m)
{
    char last[96] = "";
    for (size_t i = 0; i < sizeof g_stats / sizeof g_stats[0]; i++) {
        const mdef_t *d = &g_stats[i];
        char fam[96], lk[32], lv[32];
        if (!d->prom[0]) continue;
        split_prom(d->prom, fam, sizeof fam, lk, sizeof lk, lv, sizeof lv);
        if (strcmp(fam, last) != 0) put_header(b, "", fam, "", d->type, d->help);
        snprintf(last, sizeof last, "%s", fam);
        const char *base = (const char *)m + d->off;
        if (d->kind == XC_SK_F64X2) {
            for (int k = 0; k < 2; k++) {
                begin_sample(b, m, "", fam, "");
                label(b, lk, k ? "chat" : "base");
                end_sample(b, ((const double *)(const void *)base)[k] / d->div);
            }
            continue;
        }
        begin_sample(b, m, "", fam, "");
        if (lk[0]) label(b, lk, lv);
        switch (d->kind) {
        case XC_SK_F64: end_sample(b, *(const double *)(const void *)base / d->div); break;
        case XC_SK_I64: putf(b, "} %ld\n", *(const long *)(const void *)base); break;
        case XC_SK_U64: end_sample_u64(b, *(const uint64_t *)(const void *)base); break;
        default: end_sample(b, NAN); break;
        }
    }
}

/* xcoderd_info (the model's shape as labels, value 1) and xcoderd_state
 * (1 for the current state, 0 for the others). */
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

/* xcoderd_latents{class}: latents per class, then chat_specific. */
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

/* xcoderd_rank_step_duration_seconds{rank}: each rank's last step (sharded jobs). */
static void render_ranks(xc_buf_t *b, const xc_metrics_t *m)
{
    char r[16];
    if (m->n_rank_step <= 0) return;
    put_header(b, "", "xcoderd_rank_step_duration_seconds", "", "gauge",
               "Wall time of the last training step on each MPI rank (sharded jobs; the first 64 ranks).");
    for (int i = 0; i < m->n_rank_step && i < 64; i++) {
        begin_sample(b, m, "", "xcoderd_rank_step_duration_seconds", "");
        snprintf(r, sizeof r, "%d", i);
        label(b, "rank", r);
        end_sample(b, m->rank_step[i] / 1000.0);
    }
}

/* The stream mixture: a family per XC_STREAM_FIELDS row with a prom name, a
 * sample per stream (label stream); nothing without a mixture. */
static const struct {
    const char *prom, *type, *help;
    int kind;
    size_t off;
} g_stream_defs[] = {
#define XC_STREAM_DEF(member, kind, key, prom, ptype, help) \
    {prom, ptype, help, XC_SK_##kind, offsetof(xc_metrics_stream_t, member)},
    XC_STREAM_FIELDS(XC_STREAM_DEF)
#undef XC_STREAM_DEF
};

static void render_streams(xc_buf_t *b, const xc_metrics_t *m)
{
    if (m->n_streams <= 0) return;
    for (size_t i = 0; i < sizeof g_stream_defs / sizeof g_stream_defs[0]; i++) {
        if (!g_stream_defs[i].prom[0]) continue;
        put_header(b, "", g_stream_defs[i].prom, "", g_stream_defs[i].type, g_stream_defs[i].help);
        for (int k = 0; k < m->n_streams && k < XC_METRICS_MAX_STREAMS; k++) {
            const char *p = (const char *)&m->streams[k] + g_stream_defs[i].off;
            begin_sample(b, m, "", g_stream_defs[i].prom, "");
            label(b, "stream", m->streams[k].stream);
            switch (g_stream_defs[i].kind) {
            case XC_SK_F64: end_sample(b, *(const double *)(const void *)p); break;
            case XC_SK_U64: end_sample_u64(b, *(const uint64_t *)(const void *)p); break;
            case XC_SK_I64: putf(b, "} %ld\n", *(const long *)(const void *)p); break;
            case XC_SK_BOOL: end_sample(b, *(const int *)(const void *)p); break;
            default: end_sample(b, NAN); break;
            }
        }
    }
}

/* Refusals by reason in one family, then each service counter the counter
 * schema gives a family of its own (xcoderd_NAME_total). */
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
        int prom = 1;
        for (size_t j = 0; j < sizeof g_counter_help / sizeof g_counter_help[0]; j++)
            if (strcmp(g_counter_help[j].name, c->name) == 0) help = g_counter_help[j].help, prom = g_counter_help[j].prom;
        if (!prom) continue; /* e.g. batches_refused: the family by reason above has it */
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
    for (size_t i = 0; i < sizeof g_stats / sizeof g_stats[0]; i++) {
        double *v = (double *)(void *)((char *)m + g_stats[i].off);
        if (g_stats[i].kind == XC_SK_F64) v[0] = NAN;
        if (g_stats[i].kind == XC_SK_F64X2) v[0] = v[1] = NAN;
    }
    m->last_checkpoint_unix = 0;
    m->last_checkpoint_step = -1;
    m->scaling_last_step = -1;
}

int xc_metrics_render(const xc_metrics_t *m, xc_buf_t *out)
{
    render_info(out, m);
    render_stats(out, m);
    render_classes(out, m);
    render_streams(out, m);
    render_ranks(out, m);
    render_counters(out, m);
    return out->err ? XC_ENOMEM : XC_OK;
}

void xc_metrics_set_engine(xc_metrics_t *m, const xc_engine_metrics_t *e)
{
    m->step = e->step;
    m->tokens = e->tokens;
    m->loss = e->loss;
    m->recon_l2 = e->recon_l2;
    m->recon_mse = e->recon_mse;
    m->aux = e->aux;
    m->l1 = e->l1;
    m->fve[0] = e->fve[0];
    m->fve[1] = e->fve[1];
    m->l0 = e->l0;
    m->dead_fraction = e->dead_fraction;
    m->theta = e->theta;
    m->k_current = e->k;
    m->theta_m[0] = e->theta_m[0];
    m->theta_m[1] = e->theta_m[1];
    m->grad_norm = e->grad_norm;
    m->lr = e->lr;
}

void xc_metrics_to_shm_header(const xc_metrics_t *m, xc_shm_header_t *h)
{
    char *hp = (char *)h;
#define XC_SHM_PUT_U64(member, off) memcpy(hp + (off), &(uint64_t){m->member}, 8)
#define XC_SHM_PUT_I64(member, off) memcpy(hp + (off), &(int64_t){m->member}, 8)
#define XC_SHM_PUT_F64(member, off) memcpy(hp + (off), &m->member, 8)
#define XC_SHM_PUT_F64X2(member, off) memcpy(hp + (off), m->member, 16)
#define XC_SHM_PUT_BOOL(member, off)
#define XC_SHM_PUT_STR(member, off)
#define XC_SHM_PUT_CLASSES(member, off)
#define XC_SHM_PUT_SCALING(member, off)
#define XC_SHM_PUT_COUNTERS(member, off)
#define XC_SHM_PUT_STREAMS(member, off)
#define XC_SHM_PUT_RANKS(member, off)
#define XC_SHM_ROW(member, kind, key, prom, ptype, pdiv, shm, help) \
    if ((shm) >= 0) {                                              \
        XC_SHM_PUT_##kind(member, (size_t)(shm));                   \
    }
    XC_STAT_FIELDS(XC_SHM_ROW)
#undef XC_SHM_ROW
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
