#include "xc_shmpub.h"

#include "xc_error.h"

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
};

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

int xc_shmpub_update(xc_shmpub_t *p, const xc_engine_t *e, double tokens_per_s)
{
    int F = p->F;
    const xc_scaling_stats_t *exact = p->exact;
    xc_engine_latent_stats(e, p->lat);
    xc_engine_scaling_running(e, p->sc);
    memset(p->counts, 0, sizeof p->counts);
    for (int j = 0; j < F; j++) {
        const xc_latent_stats_t *l = &p->lat[j];
        /* the exact pass's nu, where it has one, decides chat-specificity */
        const xc_scaling_stats_t *src = exact && !isnan(exact[j].nu_err) ? &exact[j] : &p->sc[j];
        p->cls[j] = (uint8_t)xc_latent_class(l->delta_norm, l->dead, &p->th);
        p->flags[j] = (uint8_t)((src != &p->sc[j] ? XC_FLAG_SCALING_EXACT : 0) |
                                (!l->dead && xc_latent_chat_specific(l->delta_norm, src->nu_err, src->nu_rec, &p->th)
                                     ? XC_FLAG_CHAT_SPECIFIC
                                     : 0));
        p->counts[p->cls[j]]++;
        p->counts[5] += (p->flags[j] & XC_FLAG_CHAT_SPECIFIC) != 0;
    }
    if (!p->w) return XC_OK;

    xc_shm_writer_t *w = p->w;
    xc_shm_header_t *h = xc_shm_writer_header(w);
    const xc_engine_metrics_t *m = xc_engine_metrics(e);
    float *f[XC_SHM_NARRAYS];
    for (int a = 0; a < XC_SHM_NARRAYS; a++) f[a] = xc_shm_writer_array(w, (xc_shm_array_t)a);
    int64_t *last = (int64_t *)(void *)f[XC_SHM_LAST_STEP];
    double *active = (double *)(void *)f[XC_SHM_ACTIVE];
    uint8_t *cls = (uint8_t *)f[XC_SHM_CLASS], *flg = (uint8_t *)f[XC_SHM_FLAGS];

    xc_shm_writer_begin(w);
    h->step = m->step;
    h->tokens = m->tokens;
    h->loss = m->loss;
    h->recon_l2 = m->recon_l2;
    h->recon_mse = m->recon_mse;
    h->aux = m->aux;
    h->fve_base = m->fve[0];
    h->fve_chat = m->fve[1];
    h->l0 = m->l0;
    h->dead_fraction = m->dead_fraction;
    h->theta = m->theta;
    h->tokens_per_s = tokens_per_s;
    h->scaling_step = exact ? p->exact_step : -1;
    h->scaling_tokens = exact ? p->exact_tokens : 0;
    memcpy(h->class_counts, p->counts, sizeof p->counts);
    float th[6] = {p->th.chat_only_min, p->th.base_only_max, p->th.shared_lo, p->th.shared_hi, p->th.nu_err_max,
                   p->th.nu_rec_max};
    memcpy(h->thresholds, th, sizeof th);
    for (int j = 0; j < F; j++) {
        const xc_latent_stats_t *l = &p->lat[j];
        const xc_scaling_stats_t *s = &p->sc[j];
        f[XC_SHM_DELTA_NORM][j] = l->delta_norm;
        f[XC_SHM_COSINE][j] = l->cosine;
        f[XC_SHM_NORM_BASE][j] = l->norm_base;
        f[XC_SHM_NORM_CHAT][j] = l->norm_chat;
        f[XC_SHM_FREQ][j] = l->freq;
        f[XC_SHM_MEAN_ACT][j] = l->mean_act;
        f[XC_SHM_MAX_ACT][j] = l->max_act;
        last[j] = l->last_step_fired;
        f[XC_SHM_BETA_ERR_BASE][j] = s->beta_err[0];
        f[XC_SHM_BETA_ERR_CHAT][j] = s->beta_err[1];
        f[XC_SHM_BETA_REC_BASE][j] = s->beta_rec[0];
        f[XC_SHM_BETA_REC_CHAT][j] = s->beta_rec[1];
        f[XC_SHM_NU_ERR][j] = s->nu_err;
        f[XC_SHM_NU_REC][j] = s->nu_rec;
        active[j] = s->active;
        f[XC_SHM_EXACT_BETA_ERR_BASE][j] = exact ? exact[j].beta_err[0] : NAN;
        f[XC_SHM_EXACT_BETA_ERR_CHAT][j] = exact ? exact[j].beta_err[1] : NAN;
        f[XC_SHM_EXACT_BETA_REC_BASE][j] = exact ? exact[j].beta_rec[0] : NAN;
        f[XC_SHM_EXACT_BETA_REC_CHAT][j] = exact ? exact[j].beta_rec[1] : NAN;
        f[XC_SHM_EXACT_NU_ERR][j] = exact ? exact[j].nu_err : NAN;
        f[XC_SHM_EXACT_NU_REC][j] = exact ? exact[j].nu_rec : NAN;
        ((double *)(void *)f[XC_SHM_EXACT_ACTIVE])[j] = exact ? exact[j].active : 0.0;
        cls[j] = p->cls[j];
        flg[j] = p->flags[j];
    }
    xc_shm_writer_end(w);
    return XC_OK;
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
