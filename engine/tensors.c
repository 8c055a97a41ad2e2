/* The engine's tensors: the table in xc_engine_internal.h laid out in one block,
 * and the named state views that checkpoints copy. */
#include "xc_engine_internal.h"

#include "xc_error.h"

#include <stdlib.h>

#define ALIGN 64

/* Table row count, for the offset array. */
#define COUNT_ROW(...) +1
enum { N_TENSORS = 0 XC_ENGINE_TENSORS(COUNT_ROW, COUNT_ROW) };
#undef COUNT_ROW

/* Places the next tensor at the next 64-byte boundary: every tensor starts on
 * its own cache line, as when each had its own aligned allocation. */
static size_t take(size_t *total, size_t bytes)
{
    size_t at = (*total + ALIGN - 1) / ALIGN * ALIGN;
    *total = at + bytes;
    return at;
}

/* The sizes the table's shapes are written in, from the configured engine. */
static xc_engine_dims_t dims_of(const xc_engine_t *e)
{
    size_t per_line = ALIGN / sizeof(xc_scored_t);
    xc_engine_dims_t z = {.F = (size_t)e->F, .d = (size_t)e->d, .d2 = (size_t)e->d2, .B = (size_t)e->B,
                          .K = (size_t)e->K_alloc, .KA = (size_t)e->B * (size_t)e->kaux_max,
                          .L1 = e->cfg.model == XC_MODEL_L1, .DC = (size_t)e->dc, .nth = (size_t)e->nth,
                          .FW = ((size_t)e->F + per_line - 1) / per_line * per_line};
    return z;
}

/* Lays the whole table out in one zeroed, 64-byte-aligned allocation and points
 * every field at its slice (llm.c's fill_in_parameter_sizes + malloc_and_point):
 * two walks of the same list, so a tensor added to the table is sized, placed,
 * freed and (if SAVED) checkpointed without another line elsewhere. Then hands
 * each worker its slices. XC_ENOMEM if the block does not fit. */
int xc_engine_alloc_tensors(xc_engine_t *e)
{
    xc_engine_dims_t z = dims_of(e);
    size_t off[N_TENSORS], total = 0;
    int i = 0;
#define OFF_SAVED(f, ctype, kind, key, dt, nd, s0, s1, s2) off[i++] = take(&total, sizeof(ctype) * (s0) * (s1) * (s2));
#define OFF_WORK(f, ctype, kind, s0, s1, s2) off[i++] = take(&total, sizeof(ctype) * (s0) * (s1) * (s2));
    XC_ENGINE_TENSORS(OFF_SAVED, OFF_WORK)
#undef OFF_SAVED
#undef OFF_WORK
    void *block = NULL;
    if (posix_memalign(&block, ALIGN, total ? total : ALIGN) != 0) return XC_ENOMEM;
    memset(block, 0, total);
    e->block = block; /* owned by e; xc_engine_free_tensors */
    e->block_bytes = total;
    char *base = block;
    i = 0;
#define POINT(f, ctype, ...) e->f = (ctype *)(void *)(base + off[i++]);
    XC_ENGINE_TENSORS(POINT, POINT)
#undef POINT
    for (int t = 0; t < e->nth; t++) {
        xc_worker_t *w = &e->w[t];
        w->hist = e->w_hist + (size_t)t * XC_NBUCKET;
        w->dead_sc = e->w_dead_sc + (size_t)t * z.FW;
        w->acc = e->w_acc + (size_t)t * 4 * z.d2;
    }
    return XC_OK;
}

void xc_engine_free_tensors(xc_engine_t *e)
{
    free(e->block);
    e->block = NULL;
    e->block_bytes = 0;
}

/* The SAVED rows of the table in their order, then the four scalars the struct
 * holds (step, tokens, the RNG state, and theta with the selection prefilter).
 * This order, with names, dtypes and shapes, is the checkpoint's training state. */
int xc_engine_state_views(xc_engine_t *e, xc_state_view_t *out, int max)
{
    xc_engine_dims_t z = dims_of(e);
    int n = 0;
#define VIEW(nm, dt, esz, p, nd, s0, s1, s2, sh)                                                  \
    do {                                                                                       \
        if (n < max) {                                                                         \
            out[n] = (xc_state_view_t){nm, dt, nd, {s0, s1, s2}, p, 0, sh};                    \
            out[n].bytes = (size_t)(esz) * (size_t)((nd) > 0 ? (s0) : 1) *                     \
                           (size_t)((nd) > 1 ? (s1) : 1) * (size_t)((nd) > 2 ? (s2) : 1);      \
        }                                                                                      \
        n++;                                                                                   \
    } while (0);
    /* unused trailing dimensions are 0 in the view, as the format has always written them;
     * a row whose first dimension is z.F is per latent (this shard's rows) */
#define SAVED_VIEW(f, ctype, kind, key, dt, nd, s0, s1, s2)                                       \
    VIEW(key, dt, sizeof(ctype), e->f, nd, (long)(s0), (nd) > 1 ? (long)(s1) : 0, (nd) > 2 ? (long)(s2) : 0, \
         strcmp(#s0, "z.F") == 0)
#define NO_VIEW(...)
    XC_ENGINE_TENSORS(SAVED_VIEW, NO_VIEW)
    (void)z;
    e->scal[0] = e->theta;
    e->scal[1] = e->sel.tau;
    e->scal[2] = e->sel.tau_frac;
    e->scal[3] = (double)e->sel.n_full;
    VIEW("step", XC_ST_I64, 8, &e->step, 0, 0, 0, 0, 0)
    VIEW("tokens", XC_ST_U64, 8, &e->tokens, 0, 0, 0, 0, 0)
    VIEW("rng", XC_ST_U64, 8, e->rng.s, 1, 4, 0, 0, 0)
    VIEW("scalars", XC_ST_F64, 8, e->scal, 1, 4, 0, 0, 0)
    if (e->dc) VIEW("theta.chat", XC_ST_F64, 8, &e->theta_m[1], 0, 0, 0, 0, 0) /* decoupled only */
#undef SAVED_VIEW
#undef NO_VIEW
#undef VIEW
    return n < max ? n : max;
}

/* After a restore wrote the views: the scalars back into their fields, and every
 * cached value (decoder norms, the metrics a status reads before the next step)
 * recomputed from the restored state. Collective: the dead count is summed over
 * the shards (on XC_ECOLL the count stays this shard's). */
void xc_engine_state_restored(xc_engine_t *e)
{
    e->theta = e->scal[0];
    e->theta_m[0] = e->theta;
    if (!e->dc) e->theta_m[1] = e->theta;
    e->met.theta_m[0] = e->theta_m[0];
    e->met.theta_m[1] = e->theta_m[1];
    e->sel.tau = (float)e->scal[1];
    e->sel.tau_frac = (float)e->scal[2];
    e->sel.n_full = (long)e->scal[3];
    e->norms_valid = 0;
    xc_engine_ensure_norms(e);
    e->met.step = e->step;
    e->met.tokens = e->tokens;
    e->met.theta = e->theta;
    if (e->cfg.model == XC_MODEL_BATCHTOPK) { /* the k of the last step trained, as the reference's k buffer */
        e->met.k = xc_engine_k_at(&e->cfg, e->step > 0 ? e->step - 1 : 0);
        e->K = xc_engine_k_at(&e->cfg, e->step) * e->B;
    }
    int64_t n_dead = 0;
    for (int j = 0; j < e->F; j++) n_dead += e->since_fired[j] >= (uint64_t)e->cfg.dead_tokens;
    (void)xc_ar(e, &n_dead, 1, XC_COLL_I64, XC_COLL_SUM);
    e->met.n_dead = (int)n_dead;
    e->met.dead_fraction = (double)n_dead / e->Fg;
}
