/* xcoderd checkpoints in libxcoder (see xcoder.h): a thin layer over proto's
 * checked safetensors reader (format/xc_stfile.h), which the daemon's resume
 * uses too, plus the crosscoder's parameters in the reference layout. */
#include "xcoder.h"
#include "xc_client_internal.h"
#include "xc_proto.h"
#include "xc_ckptlayout.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct xc_client_ckpt {
    xc_stf_t *f; /* owned */
};

xc_client_ckpt_t *xc_client_ckpt_open(const char *path, int *err, char *why, size_t why_len)
{
    xc_client_ckpt_t *c = calloc(1, sizeof *c); /* owned by the caller */
    if (!c) {
        xc_why(why, why_len, "out of memory");
        if (err) *err = XC_ENOMEM;
        return NULL;
    }
    c->f = xc_stf_open(path, err, why, why_len);
    if (!c->f) {
        free(c);
        return NULL;
    }
    return c;
}

void xc_client_ckpt_close(xc_client_ckpt_t **pc)
{
    if (!pc || !*pc) return;
    xc_stf_close(&(*pc)->f);
    free(*pc);
    *pc = NULL;
}

xc_client_ckpt_kind_t xc_client_ckpt_kind(const xc_client_ckpt_t *c)
{
    int k = xc_stf_kind(c->f);
    return k == XC_STF_MODEL ? XC_CLIENT_CKPT_MODEL : k == XC_STF_TRAIN ? XC_CLIENT_CKPT_TRAIN : XC_CLIENT_CKPT_OTHER;
}

const char *xc_client_ckpt_path(const xc_client_ckpt_t *c) { return xc_stf_path(c->f); }
size_t xc_client_ckpt_size(const xc_client_ckpt_t *c) { return xc_stf_size(c->f); }

size_t xc_client_ckpt_header_size(const xc_client_ckpt_t *c)
{
    size_t n;
    xc_stf_header(c->f, &n);
    return n;
}

int xc_client_ckpt_verify(const xc_client_ckpt_t *c, char *why, size_t why_len) { return xc_stf_verify(c->f, why, why_len); }

int xc_client_ckpt_verify_pair(const xc_client_ckpt_t *model, const xc_client_ckpt_t *train, char *why, size_t why_len)
{
    return xc_stf_pair_check(model->f, train->f, why, why_len);
}

int xc_client_ckpt_partner(const char *path, char *out, size_t out_len)
{
    const char *ts = XC_STF_TRAIN_SUFFIX, *ms = ".safetensors";
    size_t n = path ? strlen(path) : 0, tl = strlen(ts), ml = strlen(ms);
    int w;
    if (n > tl && strcmp(path + n - tl, ts) == 0) w = snprintf(out, out_len, "%.*s%s", (int)(n - tl), path, ms);
    else if (n > ml && strcmp(path + n - ml, ms) == 0) w = snprintf(out, out_len, "%.*s%s", (int)(n - ml), path, ts);
    else return XC_EINVAL;
    return w < 0 || (size_t)w >= out_len ? XC_ETOOBIG : XC_OK;
}

const char *xc_client_ckpt_meta(const xc_client_ckpt_t *c, const char *key) { return xc_stf_meta(c->f, key); }
int xc_client_ckpt_meta_count(const xc_client_ckpt_t *c) { return xc_stf_meta_count(c->f); }
const char *xc_client_ckpt_meta_key(const xc_client_ckpt_t *c, int i) { return xc_stf_meta_key(c->f, i); }
const char *xc_client_ckpt_meta_val(const xc_client_ckpt_t *c, int i) { return xc_stf_meta_val(c->f, i); }
int xc_client_ckpt_count(const xc_client_ckpt_t *c) { return xc_stf_count(c->f); }

static void to_client(const xc_stf_tensor_t *t, xc_client_tensor_t *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->dtype, sizeof out->dtype, "%s", t->dtype);
    out->ndim = t->ndim;
    for (int i = 0; i < t->ndim && i < XC_CLIENT_NPY_MAX_DIMS; i++) out->shape[i] = (long)t->shape[i];
    out->count = (size_t)t->count;
    out->bytes = t->bytes;
    out->data = t->data;
}

int xc_client_ckpt_tensor_at(const xc_client_ckpt_t *c, int i, const char **name, xc_client_tensor_t *out)
{
    const xc_stf_tensor_t *t = xc_stf_at(c->f, i);
    if (!t) return XC_ENOTFOUND;
    if (name) *name = t->name;
    if (out) to_client(t, out);
    return XC_OK;
}

int xc_client_ckpt_tensor(const xc_client_ckpt_t *c, const char *name, xc_client_tensor_t *out, char *why,
                          size_t why_len)
{
    const xc_stf_tensor_t *t = xc_stf_find(c->f, name);
    if (!t) {
        xc_why(why, why_len, "%s: no tensor '%s'", xc_stf_path(c->f), name ? name : "");
        return XC_ENOTFOUND;
    }
    if (out) to_client(t, out);
    return XC_OK;
}

/* ------------------------------------------------------------ the model -- */
void xc_client_model_free(xc_client_model_t *m)
{
    if (!m) return;
    free(m->w_enc);
    free(m->b_enc);
    free(m->w_dec);
    free(m->b_dec);
    memset(m, 0, sizeof *m);
}

/* A float tensor of exactly `ndim` dims `shape` into a new float32 array. */
static float *floats(const xc_stf_t *f, const char *name, int ndim, const int64_t *shape, int *rc, char *why,
                     size_t wl)
{
    const xc_stf_tensor_t *t = xc_stf_find(f, name);
    if (!t) {
        xc_why(why, wl, "%s: no tensor '%s'", xc_stf_path(f), name);
        *rc = XC_ECORRUPT;
        return NULL;
    }
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        xc_why(why, wl, "%s: tensor '%s' has a shape inconsistent with the others", xc_stf_path(f), name);
        *rc = XC_ECORRUPT;
        return NULL;
    }
    size_t n = (size_t)t->count;
    float *o = malloc((n ? n : 1) * sizeof(float));
    if (!o) {
        xc_why(why, wl, "out of memory reading '%s'", name);
        *rc = XC_ENOMEM;
        return NULL;
    }
    const uint8_t *p = t->data; /* copied element by element: may be unaligned in a foreign file */
    if (!strcmp(t->dtype, "F32")) {
        memcpy(o, p, n * 4);
    } else if (!strcmp(t->dtype, "F64")) {
        for (size_t i = 0; i < n; i++) {
            double x;
            memcpy(&x, p + 8 * i, 8);
            o[i] = (float)x;
        }
    } else if (!strcmp(t->dtype, "F16") || !strcmp(t->dtype, "BF16")) {
        int bf = t->dtype[0] == 'B';
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            o[i] = bf ? xc_bf16_to_f32(h) : xc_f16_to_f32(h);
        }
    } else {
        free(o);
        xc_why(why, wl, "%s: tensor '%s' is %s, not a float type", xc_stf_path(f), name, t->dtype);
        *rc = XC_EDTYPE;
        return NULL;
    }
    return o;
}

static long meta_long(const xc_stf_t *f, const char *key, long dflt)
{
    const char *s = xc_stf_meta(f, key);
    return s && *s ? strtol(s, NULL, 10) : dflt;
}

static int model_from_model_file(const xc_stf_t *f, xc_client_model_t *m, char *why, size_t wl)
{
    const xc_stf_tensor_t *e = xc_stf_find(f, "encoder.weight"), *t;
    int rc = XC_OK;
    if (!e || e->ndim != 3 || e->shape[0] != 2 || e->shape[1] <= 0 || e->shape[2] <= 0 || e->shape[1] > (1 << 24) ||
        e->shape[2] > (1 << 28)) {
        xc_why(why, wl, "%s: no crosscoder encoder.weight [2, d, F]", xc_stf_path(f));
        return XC_ECORRUPT;
    }
    m->d = (int)e->shape[1];
    m->dict_size = (int)e->shape[2];
    int64_t d = m->d, F = m->dict_size, s_enc[3] = {2, d, F}, s_b[1] = {F}, s_dec[3] = {2, F, d}, s_bd[2] = {2, d};
    if (!(m->w_enc = floats(f, "encoder.weight", 3, s_enc, &rc, why, wl)) ||
        !(m->b_enc = floats(f, "encoder.bias", 1, s_b, &rc, why, wl)) ||
        !(m->w_dec = floats(f, "decoder.weight", 3, s_dec, &rc, why, wl)) ||
        !(m->b_dec = floats(f, "decoder.bias", 2, s_bd, &rc, why, wl)))
        return rc;
    const char *kind = xc_stf_meta(f, "model");
    int btk = kind ? strcmp(kind, "l1") != 0 : xc_stf_find(f, "threshold") != NULL;
    snprintf(m->model, sizeof m->model, "%s", btk ? "batchtopk" : "l1");
    if (btk) {
        if ((t = xc_stf_find(f, "threshold")) && t->count == 1 && !strcmp(t->dtype, "F32")) memcpy(&m->threshold, t->data, 4);
        else m->threshold = -1;
        m->threshold_m[0] = m->threshold_m[1] = m->threshold;
        if (t && t->count == 2 && !strcmp(t->dtype, "F32")) { /* decoupled: one per model */
            memcpy(m->threshold_m, t->data, 8);
            m->threshold = m->threshold_m[0];
        }
        int32_t k = 0;
        if ((t = xc_stf_find(f, "k")) && t->count == 1 && !strcmp(t->dtype, "I32")) memcpy(&k, t->data, 4);
        m->k = k ? k : (int)meta_long(f, "k", 0);
    }
    return XC_OK;
}

/* The training state holds the engine's layout: w_enc, w_dec (F, 2, d) rows. */
static int model_from_train_file(const xc_stf_t *f, xc_client_model_t *m, char *why, size_t wl)
{
    const xc_stf_tensor_t *e = xc_stf_find(f, "w_enc"), *sc = xc_stf_find(f, "scalars");
    float *we = NULL, *wd = NULL;
    int rc = XC_OK;
    if (!e || e->ndim != 3 || e->shape[1] != 2 || e->shape[0] <= 0 || e->shape[2] <= 0 || e->shape[0] > (1 << 28) ||
        e->shape[2] > (1 << 24)) {
        xc_why(why, wl, "%s: no engine parameters w_enc (F, 2, d)", xc_stf_path(f));
        return XC_ECORRUPT;
    }
    m->dict_size = (int)e->shape[0];
    m->d = (int)e->shape[2];
    size_t d = (size_t)m->d, F = (size_t)m->dict_size, D2 = 2 * d;
    int64_t s_w[3] = {(int64_t)F, 2, (int64_t)d}, s_b[1] = {(int64_t)F}, s_bd[2] = {2, (int64_t)d};
    if (!(we = floats(f, "w_enc", 3, s_w, &rc, why, wl)) || !(wd = floats(f, "w_dec", 3, s_w, &rc, why, wl)) ||
        !(m->b_enc = floats(f, "b_enc", 1, s_b, &rc, why, wl)) || !(m->b_dec = floats(f, "b_dec", 2, s_bd, &rc, why, wl)))
        goto out;
    m->w_enc = malloc(F * D2 * sizeof(float));
    m->w_dec = malloc(F * D2 * sizeof(float));
    if (!m->w_enc || !m->w_dec) {
        xc_why(why, wl, "out of memory");
        rc = XC_ENOMEM;
        goto out;
    }
    for (size_t j = 0; j < F; j++)
        for (size_t r = 0; r < D2; r++) m->w_enc[r * F + j] = we[j * D2 + r]; /* [2, d, F] */
    for (size_t mm = 0; mm < 2; mm++)
        for (size_t j = 0; j < F; j++)
            memcpy(m->w_dec + (mm * F + j) * d, wd + j * D2 + mm * d, d * sizeof(float)); /* [2, F, d] */
    const char *kind = xc_stf_meta(f, "model");
    snprintf(m->model, sizeof m->model, "%s", kind && !strcmp(kind, "l1") ? "l1" : "batchtopk");
    if (strcmp(m->model, "l1") != 0) {
        double theta = -1;
        if (sc && !strcmp(sc->dtype, "F64") && sc->count >= 1) memcpy(&theta, sc->data, 8);
        m->threshold = (float)theta;
        m->threshold_m[0] = m->threshold_m[1] = m->threshold;
        const xc_stf_tensor_t *tc = xc_stf_find(f, "theta.chat"); /* decoupled engines only */
        if (tc && tc->count == 1 && !strcmp(tc->dtype, "F64")) {
            double v;
            memcpy(&v, tc->data, 8);
            m->threshold_m[1] = (float)v;
        }
        m->k = (int)meta_long(f, "k", 0);
    }
out:
    free(we);
    free(wd);
    return rc;
}

int xc_client_ckpt_model(const xc_client_ckpt_t *c, xc_client_model_t *out, char *why, size_t why_len)
{
    memset(out, 0, sizeof *out);
    int train = xc_stf_kind(c->f) == XC_STF_TRAIN;
    int rc = train ? model_from_train_file(c->f, out, why, why_len) : model_from_model_file(c->f, out, why, why_len);
    if (rc) {
        xc_client_model_free(out);
        return rc;
    }
    /* the code normalisation: the model file's tensor, else the metadata a
     * non-default one writes (training-state files), else CROSSCODER */
    const xc_stf_tensor_t *cn = xc_stf_find(c->f, "code_normalization_id");
    const char *cname = xc_stf_meta(c->f, "code_normalization");
    out->code_norm_id = 1;
    if (cn && cn->count == 1 && !strcmp(cn->dtype, "I64")) {
        int64_t v;
        memcpy(&v, cn->data, sizeof v);
        out->code_norm_id = (int)v;
    } else if (cname) {
        for (int i = 1; i <= 5; i++)
            if (!strcmp(cname, xc_ckpt_code_norm_name(i))) out->code_norm_id = i;
    }
    if (out->code_norm_id < 1 || out->code_norm_id > 5) {
        xc_why(why, why_len, "%s: code_normalization_id %d is not a CodeNormalization value (1-5)", xc_stf_path(c->f),
               out->code_norm_id);
        xc_client_model_free(out);
        return XC_ECORRUPT;
    }
    const char *as = xc_stf_meta(c->f, "code_normalization_alpha_sae"), *ac = xc_stf_meta(c->f, "code_normalization_alpha_cc");
    out->alpha_sae = as ? strtod(as, NULL) : 1.0;
    out->alpha_cc = ac ? strtod(ac, NULL) : 0.1;
    out->step = meta_long(c->f, "step", -1);
    const char *tk = xc_stf_meta(c->f, "tokens");
    out->tokens = tk ? strtoull(tk, NULL, 10) : 0;
    return XC_OK;
}
