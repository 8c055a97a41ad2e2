/* The checkpoint layout: pairs, the reference model tensors (see xc_ckptlayout.h). */
#include "xc_ckptlayout.h"
#include "xc_error.h"
#include "xc_proto.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------- pairs -- */
int xc_stf_kind(const xc_stf_t *f)
{
    const char *fmt = xc_stf_meta(f, "format");
    if (fmt && strcmp(fmt, XC_STF_MODEL_FORMAT) == 0) return XC_STF_MODEL;
    if (fmt && strcmp(fmt, XC_STF_TRAIN_FORMAT) == 0) return XC_STF_TRAIN;
    return XC_STF_OTHER;
}

static int meta_same(const xc_stf_t *a, const char *ka, const xc_stf_t *b, const char *kb, const char **va,
                     const char **vb)
{
    *va = xc_stf_meta(a, ka);
    *vb = xc_stf_meta(b, kb);
    return *va && *vb && **va && strcmp(*va, *vb) == 0;
}

int xc_stf_pair_check(const xc_stf_t *model, const xc_stf_t *train, char *why, size_t wl)
{
    const char *a, *b;
    if (xc_stf_kind(model) != XC_STF_MODEL || xc_stf_kind(train) != XC_STF_TRAIN) {
        xc_why(why, wl, "%s and %s are not a model file and a training-state file of xcoderd", xc_stf_path(model),
                xc_stf_path(train));
        return XC_ECORRUPT;
    }
    if (!meta_same(model, "checkpoint_id", train, "checkpoint_id", &a, &b)) {
        xc_why(why, wl, "%s and %s belong to different checkpoints (checkpoint_id %.40s vs %.40s)", xc_stf_path(model),
                xc_stf_path(train), a ? a : "none", b ? b : "none");
        return XC_ECORRUPT;
    }
    if (!meta_same(model, "train_checksum", train, XC_STF_CHECKSUM_KEY, &a, &b)) {
        xc_why(why, wl, "%s names training state %.40s but %s has %.40s", xc_stf_path(model), a ? a : "none",
                xc_stf_path(train), b ? b : "none");
        return XC_ECORRUPT;
    }
    if (!meta_same(model, "run_id", train, "run_id", &a, &b) || !meta_same(model, "step", train, "step", &a, &b)) {
        xc_why(why, wl, "%s and %s disagree on run_id or step", xc_stf_path(model), xc_stf_path(train));
        return XC_ECORRUPT;
    }
    return XC_OK;
}

int xc_ckpt_pair_paths(const char *path, char *model, size_t ml, char *train, size_t tl)
{
    size_t n = strlen(path), ts = strlen(XC_STF_TRAIN_SUFFIX), ms = strlen(".safetensors");
    if (n > ts && strcmp(path + n - ts, XC_STF_TRAIN_SUFFIX) == 0) {
        snprintf(model, ml, "%.*s.safetensors", (int)(n - ts), path);
        snprintf(train, tl, "%s", path);
        return XC_OK;
    }
    if (n > ms && strcmp(path + n - ms, ".safetensors") == 0) {
        snprintf(model, ml, "%s", path);
        snprintf(train, tl, "%.*s%s", (int)(n - ms), path, XC_STF_TRAIN_SUFFIX);
        return XC_OK;
    }
    return XC_EINVAL;
}

/* ------------------------------------------------------- the model file -- */
enum { MT_ENC = 0, MT_BENC, MT_DEC, MT_BDEC };
enum { OUT_F32 = 0, OUT_F16, OUT_BF16 };

const char *xc_ckpt_kind_name(xc_ckpt_kind_t k) { return k == XC_CKPT_L1 ? "l1" : "batchtopk"; }

/* Produces n floats of tensor `which` starting at element first, in the
 * reference layout, into o. */
static void model_floats(const xc_ckpt_model_t *m, int which, size_t first, size_t n, float *o)
{
    size_t F = (size_t)m->dict_size, d = (size_t)m->d, D2 = 2 * d;
    const float *src = which == MT_ENC ? m->w_enc : which == MT_BENC ? m->b_enc : which == MT_DEC ? m->w_dec : m->b_dec;
    if (!m->engine_layout || which == MT_BENC || which == MT_BDEC) {
        memcpy(o, src + first, n * sizeof(float));
        return;
    }
    size_t g = first, end = first + n;
    if (which == MT_ENC) { /* [2d rows, F cols] = transpose of the engine's (F, 2d) */
        while (g < end) {
            size_t r = g / F, j0 = g % F;
            if (j0 == 0 && end - g >= F) { /* whole rows: read each engine row once */
                size_t R = (end - g) / F;
                for (size_t j = 0; j < F; j++) {
                    const float *s = src + j * D2 + r;
                    for (size_t q = 0; q < R; q++) o[q * F + j] = s[q];
                }
                o += R * F;
                g += R * F;
            } else {
                size_t stop = (r + 1) * F < end ? (r + 1) * F : end;
                for (size_t j = j0; g < stop; j++, g++) *o++ = src[j * D2 + r];
            }
        }
        return;
    }
    while (g < end) { /* decoder.weight [m, j, i] = engine row j, half m, element i */
        size_t mm = g / (F * d), r = g % (F * d), j = r / d, i = r % d;
        size_t run = d - i < end - g ? d - i : end - g;
        memcpy(o, src + j * D2 + mm * d + i, run * sizeof(float));
        o += run;
        g += run;
    }
}

static int model_fill(void *ctx, size_t offset, void *out, size_t len)
{
    const struct { const void *m; int which; int out; } *fc = ctx;
    const xc_ckpt_model_t *m = fc->m;
    if (fc->out == OUT_F32) {
        model_floats(m, fc->which, offset / 4, len / 4, out);
        return XC_OK;
    }
    size_t n = len / 2;
    float *tmp = malloc(n * sizeof(float));
    if (!tmp) return XC_ENOMEM;
    model_floats(m, fc->which, offset / 2, n, tmp);
    uint16_t *h = out;
    for (size_t i = 0; i < n; i++) h[i] = fc->out == OUT_F16 ? xc_f32_to_f16(tmp[i]) : xc_f32_to_bf16(tmp[i]);
    free(tmp);
    return XC_OK;
}

static int nan_fill(void *ctx, size_t offset, void *out, size_t len)
{
    float *o = out;
    for (size_t i = 0; i < len / 4; i++) o[i] = NAN;
    return XC_OK;
}

int xc_ckpt_add_model(xc_st_t *st, xc_ckpt_model_t *m, const char *float_dtype)
{
    static const float target_rms = 1.0f, ones[2] = {1.0f, 1.0f};
    int out = OUT_F32;
    const char *dt = "F32";
    if (float_dtype && strcmp(float_dtype, "F16") == 0) out = OUT_F16, dt = "F16";
    else if (float_dtype && strcmp(float_dtype, "BF16") == 0) out = OUT_BF16, dt = "BF16";
    else if (float_dtype && strcmp(float_dtype, "F32") != 0) return XC_EDTYPE;
    int64_t d = m->d, F = m->dict_size;
    int64_t s_enc[3] = {2, d, F}, s_b[1] = {F}, s_dec[3] = {2, F, d}, s_bd[2] = {2, d}, s_two[1] = {2};
    for (int i = 0; i < 4; i++) {
        m->fc[i].m = m;
        m->fc[i].which = i;
        m->fc[i].out = out;
    }
    int rc = 0;
    m->cn_id = m->code_norm_id > 0 ? m->code_norm_id : 1;
    rc = rc ? rc : xc_st_add(st, "code_normalization_id", "I64", 0, NULL, &m->cn_id);
    rc = rc ? rc : xc_st_add_fill(st, "encoder.weight", dt, 3, s_enc, model_fill, &m->fc[MT_ENC]);
    rc = rc ? rc : xc_st_add_fill(st, "encoder.bias", dt, 1, s_b, model_fill, &m->fc[MT_BENC]);
    rc = rc ? rc : xc_st_add_fill(st, "decoder.weight", dt, 3, s_dec, model_fill, &m->fc[MT_DEC]);
    rc = rc ? rc : xc_st_add_fill(st, "decoder.bias", dt, 2, s_bd, model_fill, &m->fc[MT_BDEC]);
    if (m->model == XC_CKPT_BATCHTOPK && m->cn_id == 5) { /* decoupled: one threshold per model */
        rc = rc ? rc : xc_st_add(st, "threshold", "F32", 1, s_two, m->threshold_m);
        rc = rc ? rc : xc_st_add(st, "k", "I32", 0, NULL, &m->k);
    } else if (m->model == XC_CKPT_BATCHTOPK) {
        rc = rc ? rc : xc_st_add(st, "threshold", "F32", 0, NULL, &m->threshold);
        rc = rc ? rc : xc_st_add(st, "k", "I32", 0, NULL, &m->k);
    }
    rc = rc ? rc : xc_st_add(st, "target_rms", "F32", 0, NULL, m->target_rms > 0 ? &m->target_rms : &target_rms);
    if (m->act_mean && m->act_std && m->act_scale) {
        rc = rc ? rc : xc_st_add(st, "activation_mean", "F32", 2, s_bd, m->act_mean);
        rc = rc ? rc : xc_st_add(st, "activation_std", "F32", 2, s_bd, m->act_std);
        rc = rc ? rc : xc_st_add(st, "activation_global_scale", "F32", 1, s_two, m->act_scale);
        return rc;
    }
    /* no normaliser, as the reference registers these buffers without one */
    rc = rc ? rc : xc_st_add_fill(st, "activation_mean", "F32", 2, s_bd, nan_fill, NULL);
    rc = rc ? rc : xc_st_add_fill(st, "activation_std", "F32", 2, s_bd, nan_fill, NULL);
    rc = rc ? rc : xc_st_add(st, "activation_global_scale", "F32", 1, s_two, ones);
    return rc;
}

/* One spelling of the shared keys for the daemon's pairs and the CLI's exports
 * (readers look them up by name; the order is part of the pinned bytes). */
int xc_ckpt_meta_common(xc_st_t *st, const char *format, const char *version, const xc_ckpt_model_t *m, long step,
                        uint64_t tokens, const char *created)
{
    char v[64];
    int rc = xc_st_meta(st, "format", format);
    rc = rc ? rc : xc_st_meta(st, "format_version", version);
    rc = rc ? rc : xc_st_meta(st, "model", xc_ckpt_kind_name(m->model));
    snprintf(v, sizeof v, "%d", m->d);
    rc = rc ? rc : xc_st_meta(st, "d", v);
    snprintf(v, sizeof v, "%d", m->dict_size);
    rc = rc ? rc : xc_st_meta(st, "dict_size", v);
    snprintf(v, sizeof v, "%d", m->k);
    rc = rc ? rc : xc_st_meta(st, "k", v);
    snprintf(v, sizeof v, "%ld", step);
    rc = rc ? rc : xc_st_meta(st, "step", v);
    snprintf(v, sizeof v, "%llu", (unsigned long long)tokens);
    rc = rc ? rc : xc_st_meta(st, "tokens", v);
    snprintf(v, sizeof v, "%.9g", (double)m->threshold);
    rc = rc ? rc : xc_st_meta(st, "theta", v);
    rc = rc ? rc : xc_st_meta(st, "created", created);
    /* only where the code normalisation is not the default, so default files keep their bytes */
    if (m->code_norm_id > 1 && xc_ckpt_code_norm_name(m->code_norm_id)) {
        rc = rc ? rc : xc_st_meta(st, "code_normalization", xc_ckpt_code_norm_name(m->code_norm_id));
        if (m->code_norm_id == 3) {
            snprintf(v, sizeof v, "%.9g", m->alpha_sae);
            rc = rc ? rc : xc_st_meta(st, "code_normalization_alpha_sae", v);
            snprintf(v, sizeof v, "%.9g", m->alpha_cc);
            rc = rc ? rc : xc_st_meta(st, "code_normalization_alpha_cc", v);
        }
    }
    return rc;
}

const char *xc_ckpt_code_norm_name(int id)
{
    static const char *const names[] = {NULL, "CROSSCODER", "SAE", "MIXED", "NONE", "DECOUPLED"};
    return id >= 1 && id <= 5 ? names[id] : NULL;
}

void xc_ckpt_now_rfc3339(char *out, size_t n)
{
    struct timespec ts;
    struct tm tm;
    char b[32];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, n, "%s.%06ldZ", b, ts.tv_nsec / 1000);
}

/* Exactly the reference state dict: a strict=True load in the reference would
 * fail on a missing or extra key, so a file with either is refused here too. */
int xc_ckpt_check_model_tensors(const xc_stf_t *f, xc_ckpt_kind_t kind, int code_norm_id, int d_, int dict_size, char *why,
                                size_t wl)
{
    int64_t d = d_, F = dict_size;
    int64_t s_enc[3] = {2, d, F}, s_b[1] = {F}, s_dec[3] = {2, F, d}, s_bd[2] = {2, d}, s_two[1] = {2};
    int btk = kind == XC_CKPT_BATCHTOPK, rc, dc = btk && code_norm_id == 5;
    if ((rc = xc_stf_expect(f, "encoder.weight", "F32", 3, s_enc, XC_ECORRUPT, why, wl)) ||
        (rc = xc_stf_expect(f, "encoder.bias", "F32", 1, s_b, XC_ECORRUPT, why, wl)) ||
        (rc = xc_stf_expect(f, "decoder.weight", "F32", 3, s_dec, XC_ECORRUPT, why, wl)) ||
        (rc = xc_stf_expect(f, "decoder.bias", "F32", 2, s_bd, XC_ECORRUPT, why, wl)) ||
        (rc = xc_stf_expect(f, "code_normalization_id", "I64", 0, NULL, XC_ECORRUPT, why, wl)) ||
        (btk && (rc = xc_stf_expect(f, "threshold", "F32", dc ? 1 : 0, dc ? s_two : NULL, XC_ECORRUPT, why, wl))) ||
        (btk && (rc = xc_stf_expect(f, "k", "I32", 0, NULL, XC_ECORRUPT, why, wl))) ||
        (rc = xc_stf_expect(f, "target_rms", "F32", 0, NULL, XC_ECORRUPT, why, wl)) ||
        (rc = xc_stf_expect(f, "activation_mean", "F32", 2, s_bd, XC_ECORRUPT, why, wl)) ||
        (rc = xc_stf_expect(f, "activation_std", "F32", 2, s_bd, XC_ECORRUPT, why, wl)) ||
        (rc = xc_stf_expect(f, "activation_global_scale", "F32", 1, s_two, XC_ECORRUPT, why, wl)))
        return rc;
    if (xc_stf_count(f) != (btk ? 11 : 9)) {
        xc_why(why, wl, "%s: %d tensors, a %s model file has %d", xc_stf_path(f), xc_stf_count(f),
                xc_ckpt_kind_name(kind), btk ? 11 : 9);
        return XC_ECORRUPT;
    }
    return XC_OK;
}
