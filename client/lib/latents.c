/* Per-latent records from shared memory or from the daemon's replies, sorted,
 * filtered and written back out the same way. See xc_latents.h. */
#include "xc_latents.h"
#include "xc_remote_proto.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const g_field_names[XC_LAT_NFIELDS] = {
#define XC_LAT_F_NAME(e, name, expr) name,
    XC_LAT_FIELDS(XC_LAT_F_NAME)
#undef XC_LAT_F_NAME
};

int xc_lat_field(const char *name)
{
    for (int f = 0; name && f < XC_LAT_NFIELDS; f++)
        if (!strcmp(name, g_field_names[f])) return f;
    return -1;
}

const char *xc_lat_field_name(int f) { return f >= 0 && f < XC_LAT_NFIELDS ? g_field_names[f] : "?"; }

/* The shared-memory array of sort field f, from the column schema (by name;
 * last_step_fired is the column last_step); -1 where shared memory lacks it. */
static int shm_array_of(int f)
{
    const char *name = xc_lat_field_name(f);
    int c = xc_table_col_find(name, strlen(name));
    if (c < 0 && !strcmp(name, XC_TOP_ALIAS_LAST_STEP)) c = XC_COL_last_step;
    return c < 0 ? -1 : xc_table_cols[c].shm;
}

int xc_lat_field_in_shm(int f) { return f >= 0 && f < XC_LAT_NFIELDS && shm_array_of(f) >= 0; }

const char *xc_lat_field_list(void) { return XC_LAT_FIELD_NAMES; }

/* The sort value of record l: one case per row of XC_LAT_FIELDS. */
double xc_lat_value(const xc_lat_t *l, int f)
{
    switch (f) {
#define XC_LAT_F_CASE(e, name, expr) \
    case XC_LAT_F_##e: return (double)(expr);
        XC_LAT_FIELDS(XC_LAT_F_CASE)
#undef XC_LAT_F_CASE
    default: return NAN;
    }
}

int xc_lat_class_parse(const char *s)
{
    static const struct {
        const char *name;
        int cls;
    } t[] = {{"other", XC_CLASS_OTHER},         {"shared", XC_CLASS_SHARED},
             {"chat_only", XC_CLASS_CHAT_ONLY}, {"chat-only", XC_CLASS_CHAT_ONLY},
             {"base_only", XC_CLASS_BASE_ONLY}, {"base-only", XC_CLASS_BASE_ONLY},
             {"dead", XC_CLASS_DEAD},           {"chat_specific", XC_LAT_CLASS_CHAT_SPECIFIC},
             {"chat-specific", XC_LAT_CLASS_CHAT_SPECIFIC}};
    for (size_t i = 0; s && i < sizeof t / sizeof t[0]; i++)
        if (!strcmp(s, t[i].name)) return t[i].cls;
    return -1;
}

int xc_lat_in_class(const xc_lat_t *l, int cls)
{
    if (cls < 0) return 1;
    if (cls == XC_LAT_CLASS_CHAT_SPECIFIC) return l->chat_specific != 0;
    return l->cls == cls;
}

/* ------------------------------------------------------------ from shm */

static double f32_at(const xc_shm_snapshot_t *s, xc_shm_array_t a, long j)
{
    return (double)((const float *)xc_shm_snapshot_array(s, a))[j];
}

static double f64_at(const xc_shm_snapshot_t *s, xc_shm_array_t a, long j)
{
    return ((const double *)xc_shm_snapshot_array(s, a))[j];
}

void xc_lat_from_shm(const xc_shm_snapshot_t *s, long j, xc_lat_t *o)
{
    memset(o, 0, sizeof *o);
    o->j = j;
    o->norm_base = f32_at(s, XC_SHM_NORM_BASE, j);
    o->norm_chat = f32_at(s, XC_SHM_NORM_CHAT, j);
    o->delta_norm = f32_at(s, XC_SHM_DELTA_NORM, j);
    o->cosine = f32_at(s, XC_SHM_COSINE, j);
    o->freq = f32_at(s, XC_SHM_FREQ, j);
    o->mean_act = f32_at(s, XC_SHM_MEAN_ACT, j);
    o->max_act = f32_at(s, XC_SHM_MAX_ACT, j);
    o->fired = NAN;
    o->tokens_since_fired = NAN;
    o->last_step_fired = ((const int64_t *)xc_shm_snapshot_array(s, XC_SHM_LAST_STEP))[j];
    o->cls = ((const uint8_t *)xc_shm_snapshot_array(s, XC_SHM_CLASS))[j];
    o->dead = o->cls == XC_CLASS_DEAD;
    o->chat_specific = (((const uint8_t *)xc_shm_snapshot_array(s, XC_SHM_FLAGS))[j] & XC_FLAG_CHAT_SPECIFIC) != 0;
    o->nu_unstable = (((const uint8_t *)xc_shm_snapshot_array(s, XC_SHM_FLAGS))[j] & XC_FLAG_NU_UNSTABLE) != 0;
    o->run = (xc_lat_scaling_t){f32_at(s, XC_SHM_BETA_ERR_BASE, j), f32_at(s, XC_SHM_BETA_ERR_CHAT, j),
                                f32_at(s, XC_SHM_BETA_REC_BASE, j), f32_at(s, XC_SHM_BETA_REC_CHAT, j),
                                f32_at(s, XC_SHM_NU_ERR, j),        f32_at(s, XC_SHM_NU_REC, j),
                                f64_at(s, XC_SHM_ACTIVE, j),        f32_at(s, XC_SHM_BETA_ERR_CHAT_SE, j),
                                f32_at(s, XC_SHM_BETA_REC_CHAT_SE, j)};
    o->has_exact = s->hdr.scaling_step >= 0;
    if (o->has_exact)
        o->exact = (xc_lat_scaling_t){f32_at(s, XC_SHM_EXACT_BETA_ERR_BASE, j), f32_at(s, XC_SHM_EXACT_BETA_ERR_CHAT, j),
                                      f32_at(s, XC_SHM_EXACT_BETA_REC_BASE, j), f32_at(s, XC_SHM_EXACT_BETA_REC_CHAT, j),
                                      f32_at(s, XC_SHM_EXACT_NU_ERR, j),        f32_at(s, XC_SHM_EXACT_NU_REC, j),
                                      f64_at(s, XC_SHM_EXACT_ACTIVE, j),        f32_at(s, XC_SHM_EXACT_BETA_ERR_CHAT_SE, j),
                                      f32_at(s, XC_SHM_EXACT_BETA_REC_CHAT_SE, j)};
    else
        o->exact = (xc_lat_scaling_t){NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN};
}

/* --------------------------------------------------------- from a reply */

static double getnum(const xc_client_value_t *m, const char *k) { return xc_client_value_getnum(m, k, NAN); }

static void scaling_from_value(const xc_client_value_t *m, xc_lat_scaling_t *o)
{
    o->beta_err_base = getnum(m, "beta_err_base");
    o->beta_err_chat = getnum(m, "beta_err_chat");
    o->beta_rec_base = getnum(m, "beta_rec_base");
    o->beta_rec_chat = getnum(m, "beta_rec_chat");
    o->nu_err = getnum(m, "nu_err");
    o->nu_rec = getnum(m, "nu_rec");
    o->active = getnum(m, "active");
    o->beta_err_chat_se = getnum(m, "beta_err_chat_se");
    o->beta_rec_chat_se = getnum(m, "beta_rec_chat_se");
}

static int getbool(const xc_client_value_t *m, const char *k)
{
    const xc_client_value_t *v = xc_client_value_get(m, k);
    double x = 0;
    if (!v) return 0;
    if (v->type == XC_VAL_BOOL) return v->u.b != 0;
    return xc_client_value_num(v, &x) == XC_OK && x != 0 && !isnan(x);
}

int xc_lat_from_value(const xc_client_value_t *m, long j, xc_lat_t *o)
{
    memset(o, 0, sizeof *o);
    if (!m || m->type != XC_VAL_MAP || !xc_client_value_get(m, "delta_norm")) return XC_EPROTO;
    o->j = j >= 0 ? j : (long)xc_client_value_getnum(m, "j", -1);
    o->norm_base = getnum(m, "norm_base");
    o->norm_chat = getnum(m, "norm_chat");
    o->delta_norm = getnum(m, "delta_norm");
    o->cosine = getnum(m, "cosine");
    o->freq = getnum(m, "freq");
    o->mean_act = getnum(m, "mean_act");
    o->max_act = getnum(m, "max_act");
    o->fired = getnum(m, "fired");
    o->tokens_since_fired = getnum(m, "tokens_since_fired");
    double ls = getnum(m, "last_step_fired");
    o->last_step_fired = isfinite(ls) ? (int64_t)ls : -1;
    o->dead = getbool(m, "dead");
    const char *cls = xc_client_value_getstr(m, "class", NULL);
    o->cls = cls ? xc_lat_class_parse(cls) : -1;
    if (o->cls < 0 || o->cls >= XC_CLASS_N) { /* an older daemon: by Δ with the default thresholds */
        xc_class_thresholds_t t;
        xc_class_thresholds_default(&t);
        o->cls = xc_latent_class((float)o->delta_norm, o->dead, &t);
    }
    o->chat_specific = getbool(m, "chat_specific");
    const xc_client_value_t *sc = xc_client_value_get(m, "scaling");
    scaling_from_value(sc && sc->type == XC_VAL_MAP ? sc : NULL, &o->run);
    const xc_client_value_t *ex = xc_client_value_get(m, "scaling_exact");
    o->has_exact = ex && ex->type == XC_VAL_MAP;
    scaling_from_value(o->has_exact ? ex : NULL, &o->exact);
    /* the daemon judges with the exact pass's nu where it has one */
    const xc_client_value_t *dec = o->has_exact && isfinite(o->exact.nu_err) ? ex : sc;
    o->nu_unstable = dec && dec->type == XC_VAL_MAP && getbool(dec, "nu_unstable");
    return XC_OK;
}

/* ------------------------------------------------------------- sorting */

typedef struct {
    double v;
    long j;   /* latent index: ties */
    long pos; /* where the record is */
} lat_key_t;

static int key_cmp_desc(const void *pa, const void *pb)
{
    const lat_key_t *a = pa, *b = pb;
    int na = isnan(a->v), nb = isnan(b->v);
    if (na != nb) return na ? 1 : -1; /* undefined last */
    if (!na && a->v != b->v) return a->v > b->v ? -1 : 1;
    return a->j < b->j ? -1 : a->j > b->j;
}

static int key_cmp_asc(const void *pa, const void *pb)
{
    const lat_key_t *a = pa, *b = pb;
    int na = isnan(a->v), nb = isnan(b->v);
    if (na != nb) return na ? 1 : -1;
    if (!na && a->v != b->v) return a->v < b->v ? -1 : 1;
    return a->j < b->j ? -1 : a->j > b->j;
}

void xc_lat_sort(xc_lat_t *l, size_t n, int f, int asc)
{
    /* sort (value, position) keys, then permute: records are large */
    lat_key_t *k = malloc((n ? n : 1) * sizeof *k);
    xc_lat_t *tmp = malloc((n ? n : 1) * sizeof *tmp);
    if (!k || !tmp) { /* out of memory: leave the order as it is */
        free(k);
        free(tmp);
        return;
    }
    for (size_t i = 0; i < n; i++) k[i] = (lat_key_t){xc_lat_value(&l[i], f), l[i].j, (long)i};
    qsort(k, n, sizeof *k, asc ? key_cmp_asc : key_cmp_desc);
    for (size_t i = 0; i < n; i++) tmp[i] = l[k[i].pos];
    memcpy(l, tmp, n * sizeof *l);
    free(k);
    free(tmp);
}

/* A scalar array of the snapshot for field f, as doubles (caller frees). */
static double *field_column(const xc_shm_snapshot_t *s, int f)
{
    long F = s->hdr.n_latents;
    double *v = malloc((size_t)(F ? F : 1) * sizeof *v);
    if (!v) return NULL;
    xc_shm_array_t a = (xc_shm_array_t)shm_array_of(f);
    int exact_missing = (f == XC_LAT_F_EXACT_NU_ERR || f == XC_LAT_F_EXACT_NU_REC) && s->hdr.scaling_step < 0;
    for (long j = 0; j < F; j++) {
        if (exact_missing) v[j] = NAN;
        else if (a == XC_SHM_LAST_STEP) v[j] = (double)((const int64_t *)xc_shm_snapshot_array(s, a))[j];
        else v[j] = f32_at(s, a, j);
    }
    return v;
}

int xc_lat_select_shm(const xc_shm_snapshot_t *s, int f, int asc, int alive_only, int cls, size_t n,
                      xc_lat_t **out, size_t *n_out)
{
    *out = NULL;
    *n_out = 0;
    if (!xc_lat_field_in_shm(f)) return XC_EINVAL;
    long F = s->hdr.n_latents;
    const uint8_t *cl = xc_shm_snapshot_array(s, XC_SHM_CLASS);
    const uint8_t *fl = xc_shm_snapshot_array(s, XC_SHM_FLAGS);
    double *v = field_column(s, f);
    lat_key_t *k = malloc((size_t)(F ? F : 1) * sizeof *k);
    if (!v || !k) {
        free(v);
        free(k);
        return XC_ENOMEM;
    }
    size_t m = 0;
    for (long j = 0; j < F; j++) {
        if (alive_only && cl[j] == XC_CLASS_DEAD) continue;
        if (cls == XC_LAT_CLASS_CHAT_SPECIFIC ? !(fl[j] & XC_FLAG_CHAT_SPECIFIC) : (cls >= 0 && cl[j] != cls)) continue;
        k[m++] = (lat_key_t){v[j], j, j};
    }
    qsort(k, m, sizeof *k, asc ? key_cmp_asc : key_cmp_desc);
    if (m > n) m = n;
    xc_lat_t *o = malloc((m ? m : 1) * sizeof *o);
    if (!o) {
        free(v);
        free(k);
        return XC_ENOMEM;
    }
    for (size_t i = 0; i < m; i++) xc_lat_from_shm(s, k[i].j, &o[i]);
    free(v);
    free(k);
    *out = o;
    *n_out = m;
    return XC_OK;
}

/* ------------------------------------------------------------- writing */

static void kv_num(xc_mpw_t *w, const char *k, double x)
{
    xc_mpw_str(w, k);
    if (isnan(x)) xc_mpw_nil(w);
    else xc_mpw_double(w, x);
}

static void kv_count(xc_mpw_t *w, const char *k, double x)
{
    xc_mpw_str(w, k);
    if (isnan(x) || x < 0) xc_mpw_nil(w);
    else xc_mpw_uint(w, (uint64_t)x);
}

static void write_scaling(xc_mpw_t *w, const xc_lat_scaling_t *s)
{
    xc_mpw_map_begin(w);
    kv_num(w, "beta_err_base", s->beta_err_base);
    kv_num(w, "beta_err_chat", s->beta_err_chat);
    kv_num(w, "beta_rec_base", s->beta_rec_base);
    kv_num(w, "beta_rec_chat", s->beta_rec_chat);
    kv_num(w, "nu_err", s->nu_err);
    kv_num(w, "nu_rec", s->nu_rec);
    kv_num(w, "active", s->active);
    kv_num(w, "beta_err_chat_se", s->beta_err_chat_se);
    kv_num(w, "beta_rec_chat_se", s->beta_rec_chat_se);
    xc_mpw_map_end(w);
}

void xc_lat_write(xc_mpw_t *w, const xc_lat_t *l, int with_j)
{
    if (with_j) xc_mpw_kv_int(w, "j", l->j);
    xc_mpw_kv_str(w, "class", xc_class_name(l->cls));
    xc_mpw_kv_bool(w, "chat_specific", l->chat_specific);
    xc_mpw_kv_bool(w, "nu_unstable", l->nu_unstable);
    kv_num(w, "delta_norm", l->delta_norm);
    kv_num(w, "cosine", l->cosine);
    kv_num(w, "norm_base", l->norm_base);
    kv_num(w, "norm_chat", l->norm_chat);
    kv_num(w, "freq", l->freq);
    kv_num(w, "mean_act", l->mean_act);
    kv_num(w, "max_act", l->max_act);
    kv_count(w, "fired", l->fired);
    kv_count(w, "tokens_since_fired", l->tokens_since_fired);
    xc_mpw_kv_int(w, "last_step_fired", l->last_step_fired);
    xc_mpw_kv_bool(w, "dead", l->dead);
    xc_mpw_str(w, "scaling");
    write_scaling(w, &l->run);
    xc_mpw_str(w, "scaling_exact");
    if (l->has_exact) write_scaling(w, &l->exact);
    else xc_mpw_nil(w);
}

static int dbl_cmp(const void *pa, const void *pb)
{
    double a = *(const double *)pa, b = *(const double *)pb;
    return a < b ? -1 : a > b;
}

double xc_lat_median(double *v, size_t n, size_t *n_def)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(v[i])) v[m++] = v[i];
    if (n_def) *n_def = m;
    if (!m) return NAN;
    qsort(v, m, sizeof *v, dbl_cmp);
    return m % 2 ? v[m / 2] : 0.5 * (v[m / 2 - 1] + v[m / 2]);
}
