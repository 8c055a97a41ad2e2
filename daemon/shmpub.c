/* Per-latent records and their shared-memory publication (xc_shmpub.h). */
#include "xc_shmpub.h"

#include "xc_error.h"
#include "xc_metrics.h"
#include "xc_remote_proto.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct xc_shmpub {
    xc_shm_writer_t *w;          /* owned; NULL when publishing is off */
    int F;
    xc_class_thresholds_t th;
    xc_latent_stats_t *lat;      /* (F) owned */
    xc_scaling_stats_t *sc;      /* (F) owned */
    uint8_t *cls, *flags;        /* (F) owned */
    uint32_t counts[8];
    xc_scaling_stats_t *exact;   /* (F) owned; NULL until an exact pass completes */
    long exact_step;
    uint64_t exact_tokens;
    const xc_norm_t *norm;       /* borrowed: the units of the running estimates; NULL = engine's */
};

void xc_shmpub_set_norm(xc_shmpub_t *p, const xc_norm_t *norm) { p->norm = norm; }

xc_shmpub_t *xc_shmpub_new(const char *instance, const xc_engine_t *e, mode_t mode, const char *owner,
                           const xc_class_thresholds_t *th, int *err, char *why, size_t why_len)
{
    const xc_engine_config_t *c = xc_engine_config(e);
    xc_shmpub_t *p = calloc(1, sizeof *p);
    int rc = XC_ENOMEM;
    if (!p) goto out;
    p->F = c->dict_size;
    p->th = *th;
    p->lat = calloc((size_t)p->F, sizeof *p->lat);
    p->sc = calloc((size_t)p->F, sizeof *p->sc);
    p->cls = calloc((size_t)p->F, 1);
    p->flags = calloc((size_t)p->F, 1);
    if (!p->lat || !p->sc || !p->cls || !p->flags) goto out_free;
    if (instance) {
        p->w = xc_shm_writer_open(instance, (uint32_t)p->F, (uint32_t)c->d, (uint32_t)c->model, mode, owner, &rc, why,
                                  why_len);
        if (!p->w) goto out_free;
    }
    if (err) *err = XC_OK;
    return p;
out_free:
    xc_shmpub_destroy(&p, 0);
out:
    if (err) *err = rc;
    return NULL;
}

int xc_shmpub_set_exact(xc_shmpub_t *p, const xc_scaling_stats_t *exact, long step, uint64_t tokens)
{
    if (!p->exact) {
        p->exact = malloc(sizeof(*p->exact) * (size_t)p->F);
        if (!p->exact) return XC_ENOMEM;
    }
    memcpy(p->exact, exact, sizeof(*p->exact) * (size_t)p->F);
    p->exact_step = step;
    p->exact_tokens = tokens;
    return XC_OK;
}

const xc_scaling_stats_t *xc_shmpub_exact(const xc_shmpub_t *p, long *step, uint64_t *tokens)
{
    if (step) *step = p->exact ? p->exact_step : -1;
    if (tokens) *tokens = p->exact ? p->exact_tokens : 0;
    return p->exact;
}

/* Recomputes every latent's record (statistics, running Latent Scaling,
 * class, chat-specific flag from the exact nu where there is one) and, when
 * publishing, writes the header statistics and every array under the
 * seqlock, both driven by the schema. */
int xc_shmpub_update(xc_shmpub_t *p, const xc_engine_t *e, double tokens_per_s)
{
    xc_engine_latent_stats(e, p->lat);
    xc_engine_scaling_running(e, p->sc);
    return xc_shmpub_update_from(p, NULL, NULL, xc_engine_metrics(e), tokens_per_s);
}

int xc_shmpub_update_from(xc_shmpub_t *p, const xc_latent_stats_t *lat, const xc_scaling_stats_t *run,
                          const xc_engine_metrics_t *m, double tokens_per_s)
{
    int F = p->F;
    const xc_scaling_stats_t *exact = p->exact;
    if (lat) memcpy(p->lat, lat, sizeof *p->lat * (size_t)F);
    if (run) memcpy(p->sc, run, sizeof *p->sc * (size_t)F);
    if (p->norm) xc_norm_scaling_to_original(p->norm, p->sc, F); /* original units where a scalar factor exists */
    memset(p->counts, 0, sizeof p->counts);
    for (int j = 0; j < F; j++) {
        const xc_latent_stats_t *l = &p->lat[j];
        /* the exact pass's nu, where it has one, decides chat-specificity */
        const xc_scaling_stats_t *src = exact && !isnan(exact[j].nu_err) ? &exact[j] : &p->sc[j];
        p->cls[j] = (uint8_t)xc_latent_class(l->delta_norm, l->dead, &p->th);
        /* an unstable nu (a chat beta within noise of 0) counts as undefined */
        float nu_e = src->nu_unstable & XC_NU_UNSTABLE_ERR ? NAN : src->nu_err;
        float nu_r = src->nu_unstable & XC_NU_UNSTABLE_REC ? NAN : src->nu_rec;
        p->flags[j] = (uint8_t)((src != &p->sc[j] ? XC_FLAG_SCALING_EXACT : 0) |
                                (src->nu_unstable ? XC_FLAG_NU_UNSTABLE : 0) |
                                (!l->dead && xc_latent_chat_specific(l->delta_norm, nu_e, nu_r, &p->th)
                                     ? XC_FLAG_CHAT_SPECIFIC
                                     : 0));
        p->counts[p->cls[j]]++;
        p->counts[XC_COUNT_CHAT_SPECIFIC] += (p->flags[j] & XC_FLAG_CHAT_SPECIFIC) != 0;
    }
    if (!p->w) return XC_OK;

    xc_shm_writer_t *w = p->w;
    xc_shm_header_t *h = xc_shm_writer_header(w);
    xc_metrics_t st;
    xc_metrics_init(&st);
    xc_metrics_set_engine(&st, m);
    st.tokens_per_s = tokens_per_s;
    const xc_snapshot_t view = {0, 0, F, p->lat, p->sc, (xc_scaling_stats_t *)exact, 0, 0, p->cls, p->flags};

    xc_shm_writer_begin(w);
    xc_metrics_to_shm_header(&st, h); /* the statistics the schema places in the header */
    h->scaling_step = exact ? p->exact_step : -1;
    h->scaling_tokens = exact ? p->exact_tokens : 0;
    memcpy(h->class_counts, p->counts, sizeof p->counts);
    float th[6] = {p->th.chat_only_min, p->th.base_only_max, p->th.shared_lo, p->th.shared_hi, p->th.nu_err_max,
                   p->th.nu_rec_max};
    memcpy(h->thresholds, th, sizeof th);
    /* every column the schema gives a shared-memory array, by its dtype */
    for (int c = 0; c < XC_COL__COUNT; c++) {
        const xc_table_col_t *col = &xc_table_cols[c];
        if (col->shm < 0) continue;
        void *a = xc_shm_writer_array(w, (xc_shm_array_t)col->shm);
        for (int j = 0; j < F; j++) {
            double d;
            int64_t i;
            xc_latent_column(&view, c, j, &d, &i);
            switch (col->dtype) {
            case XC_TCOL_F32: ((float *)a)[j] = (float)d; break;
            case XC_TCOL_F64: ((double *)a)[j] = d; break;
            case XC_TCOL_I64: ((int64_t *)a)[j] = i; break;
            default: ((uint8_t *)a)[j] = (uint8_t)i; break;
            }
        }
    }
    xc_shm_writer_end(w);
    return XC_OK;
}

/* The column accessor: one case per row of XC_LATENT_COLUMNS, reading the
 * record the schema names with the dtype it gives. */
void xc_latent_column(const xc_snapshot_t *x, int col, long j, double *d, int64_t *i)
{
    static const xc_scaling_stats_t none = {{NAN, NAN}, {NAN, NAN}, NAN, NAN, 0.0, NAN, NAN,
                                            XC_NU_UNSTABLE_ERR | XC_NU_UNSTABLE_REC}; /* no exact pass yet */
    const xc_latent_stats_t *l = &x->st[j];
    const xc_scaling_stats_t *r = &x->running[j], *e = x->exact ? &x->exact[j] : &none;
    *d = NAN;
    *i = 0;
#define SRC_LAT(f) (l->f)
#define SRC_RUN(f) (r->f)
#define SRC_EXACT(f) (e->f)
#define SRC_CLS(f) (x->cls[j])
#define SRC_FLAGS(f) (x->flags[j])
#define SRC_J(f) (j)
#define GET_F32(v) *d = (double)(v)
#define GET_F64(v) *d = (double)(v)
#define GET_I64(v) *i = (int64_t)(v), *d = (double)(v)
#define GET_U8(v) *i = (uint8_t)(v), *d = (double)*i
#define XC_COL_CASE(name, dtype, shm, dflt, src, field) \
    case XC_COL_##name: GET_##dtype(SRC_##src(field)); break;
    switch (col) {
        XC_LATENT_COLUMNS(XC_COL_CASE)
    default: break;
    }
#undef XC_COL_CASE
}

int xc_latent_column_find(const char *s, size_t len)
{
    int c = xc_table_col_find(s, len);
    if (c < 0 && len == strlen(XC_TOP_ALIAS_LAST_STEP) && memcmp(s, XC_TOP_ALIAS_LAST_STEP, len) == 0)
        c = XC_COL_last_step;
    return c;
}

const xc_latent_stats_t *xc_shmpub_latents(const xc_shmpub_t *p) { return p->lat; }
const xc_scaling_stats_t *xc_shmpub_scaling(const xc_shmpub_t *p) { return p->sc; }
const uint8_t *xc_shmpub_classes(const xc_shmpub_t *p) { return p->cls; }
const uint8_t *xc_shmpub_flags(const xc_shmpub_t *p) { return p->flags; }
void xc_shmpub_class_counts(const xc_shmpub_t *p, uint32_t counts[8]) { memcpy(counts, p->counts, sizeof p->counts); }

void xc_shmpub_destroy(xc_shmpub_t **pp, int unlink_it)
{
    xc_shmpub_t *p = pp ? *pp : NULL;
    if (!p) return;
    xc_shm_writer_close(&p->w, unlink_it);
    free(p->lat);
    free(p->sc);
    free(p->cls);
    free(p->flags);
    free(p->exact);
    free(p);
    *pp = NULL;
}
