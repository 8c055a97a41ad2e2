/* Offline checkpoint commands: inspect, export (xc_cli_ckpt.h). They read
 * files with libxcoder's checkpoint loader and need no daemon. */
#include "xc_cli_ckpt.h"
#include "xc_afile.h"
#include "xc_ckptlayout.h"
#include "xc_stfile.h"

#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

const xc_cli_optdef_t xc_cli_inspect_opts[] = {
    {"full", NULL, "print long metadata values (the config) in full"},
    {"no-verify", NULL, "skip the checksums (they read the whole file)"},
    {NULL, NULL, NULL}};

const xc_cli_optdef_t xc_cli_export_opts[] = {
    {"dtype", "T", "f32 (default), f16 or bf16 for the parameter tensors"},
    {"hf", "DIR", "write a Hugging-Face-style directory instead of OUT: DIR/model.safetensors, DIR/config.json "
                  "(what the reference's from_pretrained(DIR, from_hub=True) reads) and DIR/README.md"},
    {NULL, NULL, NULL}};

static const char *kind_name(xc_client_ckpt_kind_t k)
{
    return k == XC_CLIENT_CKPT_MODEL ? "model" : k == XC_CLIENT_CKPT_TRAIN ? "training state" : "other";
}

static void shape_text(const xc_client_tensor_t *t, char *out, size_t n)
{
    size_t u = (size_t)snprintf(out, n, "[");
    for (int i = 0; i < t->ndim && u < n; i++) u += (size_t)snprintf(out + u, n - u, "%s%ld", i ? ", " : "", t->shape[i]);
    if (u < n) snprintf(out + u, n - u, "]");
}

/* The state of one check: verified (0), skipped, or failed with a reason. */
typedef struct {
    int rc;            /* 0 valid, XC_ENOTFOUND none, other: failed */
    int checked;
    char why[600];
} check_t;

typedef struct {
    char path[1100];
    int present;
    check_t open, sum, pair;
} partner_t;

static void check_partner(const xc_client_ckpt_t *c, int verify, partner_t *p)
{
    memset(p, 0, sizeof *p);
    xc_client_ckpt_kind_t k = xc_client_ckpt_kind(c);
    if (k == XC_CLIENT_CKPT_OTHER || !xc_client_ckpt_meta(c, "checkpoint_id") || /* exported: no pair */
        xc_client_ckpt_partner(xc_client_ckpt_path(c), p->path, sizeof p->path))
        return;
    int err;
    xc_client_ckpt_t *o = xc_client_ckpt_open(p->path, &err, p->open.why, sizeof p->open.why);
    p->open.checked = 1;
    p->open.rc = o ? 0 : err;
    p->present = o || err != XC_EIO;
    if (!o) return;
    if (verify) {
        p->sum.checked = 1;
        p->sum.rc = xc_client_ckpt_verify(o, p->sum.why, sizeof p->sum.why);
    }
    p->pair.checked = 1;
    p->pair.rc = k == XC_CLIENT_CKPT_MODEL ? xc_client_ckpt_verify_pair(c, o, p->pair.why, sizeof p->pair.why)
                                           : xc_client_ckpt_verify_pair(o, c, p->pair.why, sizeof p->pair.why);
    xc_client_ckpt_close(&o);
}

static void json_check(xc_mpw_t *w, const char *key, const check_t *c)
{
    xc_mpw_str(w, key);
    xc_mpw_map_begin(w);
    xc_mpw_kv_bool(w, "checked", c->checked);
    if (c->checked) {
        xc_mpw_kv_bool(w, "valid", c->rc == 0);
        if (c->rc) xc_mpw_kv_str(w, "error", c->why);
    }
    xc_mpw_map_end(w);
}

static int inspect_json(const xc_cli_args_t *a, const xc_client_ckpt_t *c, const check_t *sum, const partner_t *p)
{
    xc_buf_t b;
    xc_mpw_t w;
    xc_buf_init(&b);
    xc_mpw_init(&w, &b);
    xc_mpw_map_begin(&w);
    xc_mpw_kv_str(&w, "path", xc_client_ckpt_path(c));
    xc_mpw_kv_uint(&w, "size", xc_client_ckpt_size(c));
    xc_mpw_kv_uint(&w, "header_size", xc_client_ckpt_header_size(c));
    xc_mpw_kv_str(&w, "kind", xc_client_ckpt_kind(c) == XC_CLIENT_CKPT_MODEL   ? "model"
                              : xc_client_ckpt_kind(c) == XC_CLIENT_CKPT_TRAIN ? "train"
                                                                               : "other");
    const char *cs = xc_client_ckpt_meta(c, "checksum");
    if (cs) xc_mpw_kv_str(&w, "checksum", cs);
    else xc_mpw_kv_nil(&w, "checksum");
    json_check(&w, "checksum_check", sum);
    if (p->path[0]) {
        xc_mpw_str(&w, "pair");
        xc_mpw_map_begin(&w);
        xc_mpw_kv_str(&w, "path", p->path);
        xc_mpw_kv_bool(&w, "present", p->present);
        json_check(&w, "open", &p->open);
        json_check(&w, "checksum_check", &p->sum);
        json_check(&w, "pairing", &p->pair);
        xc_mpw_map_end(&w);
    }
    xc_mpw_str(&w, "tensors");
    xc_mpw_array_begin(&w);
    for (int i = 0; i < xc_client_ckpt_count(c); i++) {
        const char *name;
        xc_client_tensor_t t;
        xc_client_ckpt_tensor_at(c, i, &name, &t);
        xc_mpw_map_begin(&w);
        xc_mpw_kv_str(&w, "name", name);
        xc_mpw_kv_str(&w, "dtype", t.dtype);
        xc_mpw_str(&w, "shape");
        xc_mpw_array_begin(&w);
        for (int q = 0; q < t.ndim; q++) xc_mpw_int(&w, t.shape[q]);
        xc_mpw_array_end(&w);
        xc_mpw_kv_uint(&w, "bytes", t.bytes);
        xc_mpw_map_end(&w);
    }
    xc_mpw_array_end(&w);
    xc_mpw_str(&w, "metadata");
    xc_mpw_map_begin(&w);
    for (int i = 0; i < xc_client_ckpt_meta_count(c); i++)
        xc_mpw_kv_str(&w, xc_client_ckpt_meta_key(c, i), xc_client_ckpt_meta_val(c, i));
    xc_mpw_map_end(&w);
    xc_mpw_map_end(&w);
    int rc = xc_cli_print_mpw(a, &w);
    xc_buf_free(&b);
    return rc;
}

static const char *check_text(const check_t *c, char *buf, size_t n)
{
    if (!c->checked) snprintf(buf, n, "not checked");
    else if (c->rc == 0) snprintf(buf, n, "valid");
    else if (c->rc == XC_ENOTFOUND) snprintf(buf, n, "none (not written by xcoderd)");
    else snprintf(buf, n, "INVALID: %s", c->why);
    return buf;
}

static void inspect_text(const xc_cli_args_t *a, const xc_client_ckpt_t *c, const check_t *sum, const partner_t *p)
{
    char b1[64], b2[700];
    const char *m;
    int full = xc_cli_flag(a, "full");
    xc_client_ckpt_kind_t k = xc_client_ckpt_kind(c);
    printf("file       %s\n", xc_client_ckpt_path(c));
    printf("size       %s (%zu bytes; header %zu bytes), %d tensors\n", xc_cli_fmt_bytes((double)xc_client_ckpt_size(c), b1, sizeof b1),
           xc_client_ckpt_size(c), xc_client_ckpt_header_size(c), xc_client_ckpt_count(c));
    printf("kind       %s", kind_name(k));
    if ((m = xc_client_ckpt_meta(c, "format"))) printf(" (%s v%s)", m, xc_client_ckpt_meta(c, "format_version") ? xc_client_ckpt_meta(c, "format_version") : "?");
    printf("\n");
    if (k != XC_CLIENT_CKPT_OTHER) {
        printf("model      %s  d=%s  dict_size=%s", xc_client_ckpt_meta(c, "model") ? xc_client_ckpt_meta(c, "model") : "?",
               xc_client_ckpt_meta(c, "d") ? xc_client_ckpt_meta(c, "d") : "?",
               xc_client_ckpt_meta(c, "dict_size") ? xc_client_ckpt_meta(c, "dict_size") : "?");
        if ((m = xc_client_ckpt_meta(c, "model")) && strcmp(m, "l1") != 0)
            printf("  k=%s  theta=%s", xc_client_ckpt_meta(c, "k") ? xc_client_ckpt_meta(c, "k") : "?",
                   xc_client_ckpt_meta(c, "theta") ? xc_client_ckpt_meta(c, "theta") : "?");
        printf("\n");
        printf("trained    step %s, %s tokens\n", xc_client_ckpt_meta(c, "step") ? xc_client_ckpt_meta(c, "step") : "?",
               xc_client_ckpt_meta(c, "tokens") ? xc_client_ckpt_meta(c, "tokens") : "?");
        const char *meta[5] = {"created", "run_id", "checkpoint_id", "serial", "reason"}, *val[5];
        for (int i = 0; i < 5; i++) val[i] = (m = xc_client_ckpt_meta(c, meta[i])) ? m : "-";
        if (!xc_client_ckpt_meta(c, "reason") && xc_client_ckpt_meta(c, "exported_from")) val[4] = "exported";
        printf("written    %s  run %s  checkpoint %s  serial %s  (%s)\n", val[0], val[1], val[2], val[3], val[4]);
    }
    printf("checksum   %s  %s\n", (m = xc_client_ckpt_meta(c, "checksum")) ? m : "-", check_text(sum, b2, sizeof b2));
    if (p->path[0]) {
        if (!p->present) {
            printf("pair       %s: missing%s\n", p->path,
                   k == XC_CLIENT_CKPT_MODEL ? " (cannot resume from this model file)" : " (the checkpoint is incomplete)");
        } else if (p->open.rc) {
            printf("pair       %s: UNREADABLE: %s\n", p->path, p->open.why);
        } else {
            printf("pair       %s: checksum %s", p->path, check_text(&p->sum, b2, sizeof b2));
            printf(", %s\n", p->pair.rc ? p->pair.why : "belongs to this file");
        }
    }
    printf("tensors\n");
    for (int i = 0; i < xc_client_ckpt_count(c); i++) {
        const char *name;
        xc_client_tensor_t t;
        char sh[96];
        xc_client_ckpt_tensor_at(c, i, &name, &t);
        shape_text(&t, sh, sizeof sh);
        printf("  %-26s %-5s %-20s %10s\n", name, t.dtype, sh, xc_cli_fmt_bytes((double)t.bytes, b1, sizeof b1));
    }
    printf("metadata\n");
    for (int i = 0; i < xc_client_ckpt_meta_count(c); i++) {
        const char *v = xc_client_ckpt_meta_val(c, i);
        int cut = !full && strlen(v) > 100;
        printf("  %-16s %.*s%s\n", xc_client_ckpt_meta_key(c, i), cut ? 100 : (int)strlen(v), v, cut ? "... (--full)" : "");
    }
}

int xc_cli_cmd_inspect(xc_cli_args_t *a)
{
    char why[700];
    int err, verify = !xc_cli_flag(a, "no-verify");
    xc_client_ckpt_t *c = xc_client_ckpt_open(a->pos[0], &err, why, sizeof why);
    if (!c) {
        xc_cli_err(a, "%s", why);
        return XC_CLI_FAIL;
    }
    check_t sum = {0, 0, ""};
    partner_t p;
    if (verify) {
        sum.checked = 1;
        sum.rc = xc_client_ckpt_verify(c, sum.why, sizeof sum.why);
    }
    check_partner(c, verify, &p);
    int rc = a->json ? inspect_json(a, c, &sum, &p) : (inspect_text(a, c, &sum, &p), XC_CLI_OK);
    int bad = (sum.checked && sum.rc && sum.rc != XC_ENOTFOUND) ||
              (p.present && (p.open.rc || (p.sum.checked && p.sum.rc) || p.pair.rc));
    xc_client_ckpt_close(&c);
    return rc ? rc : bad ? XC_CLI_FAIL : XC_CLI_OK;
}

/* ------------------------------------------------------------------ export */
/* The files beside DIR/model.safetensors that make DIR loadable with the
 * reference's PyTorchModelHubMixin route (from_pretrained(DIR, from_hub=True)):
 * config.json holds the class's __init__ arguments and nothing else (the
 * mixin passes every key to __init__, which refuses unknown ones); the code
 * normalisation is read back from the written model file, so the two cannot
 * disagree. The class name, which config.json cannot carry, is in README.md. */
static int write_hf_files(const char *dir, const char *model_path, const xc_client_model_t *m, const char *cls,
                          char *why, size_t wl)
{
    char path[XC_AFILE_PATH_MAX], text[4096];
    int err, rc;
    long cn = 1;
    xc_client_st_t *st = xc_client_st_open(model_path, &err, why, wl);
    if (!st) return err;
    xc_client_tensor_t t;
    if (xc_client_st_tensor(st, "code_normalization_id", &t, why, wl) == 0 && !strcmp(t.dtype, "I64") && t.count == 1) {
        int64_t v;
        memcpy(&v, t.data, sizeof v);
        cn = (long)v;
    }
    xc_client_st_close(&st);
    if (cn < 1 || cn > 5) {
        xc_why(why, wl, "code_normalization_id %ld is not a CodeNormalization value (1-5)", cn);
        return XC_ECORRUPT;
    }
    /* MIXED's weights are constructor arguments too (the state dict does not hold them) */
    char alphas[160] = "";
    if (cn == 3)
        snprintf(alphas, sizeof alphas, ",\n  \"code_normalization_alpha_sae\": %.9g,\n  \"code_normalization_alpha_cc\": %.9g",
                 m->alpha_sae, m->alpha_cc);
    int n = strcmp(cls, "BatchTopKCrossCoder") == 0
                ? snprintf(text, sizeof text, "{\n  \"activation_dim\": %d,\n  \"dict_size\": %d,\n  \"num_layers\": 2,\n"
                           "  \"k\": %d,\n  \"code_normalization\": \"%s\"%s\n}\n", m->d, m->dict_size, m->k,
                           xc_ckpt_code_norm_name((int)cn), alphas)
                : snprintf(text, sizeof text, "{\n  \"activation_dim\": %d,\n  \"dict_size\": %d,\n  \"num_layers\": 2,\n"
                           "  \"code_normalization\": \"%s\"%s\n}\n", m->d, m->dict_size, xc_ckpt_code_norm_name((int)cn),
                           alphas);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if ((rc = xc_afile_write_all(path, text, (size_t)n, 0, 0644, why, wl))) return rc;
    char kk[32] = "";
    if (m->k > 0 && strcmp(cls, "BatchTopKCrossCoder") == 0) snprintf(kk, sizeof kk, ", k = %d", m->k);
    n = snprintf(text, sizeof text,
                 "---\nlibrary_name: dictionary_learning\ntags:\n- crosscoder\n- model_hub_mixin\n---\n\n"
                 "# %s (d = %d, dict_size = %d%s), exported by xcoderd\n\n"
                 "A `%s` of `science-of-finetuning/dictionary_learning` (`dictionary_learning/dictionary.py`): "
                 "index 0 of the layer axis is the base model, 1 the chat model; trained for %ld steps on %llu "
                 "tokens.\n\n```python\nfrom dictionary_learning.dictionary import %s\n"
                 "model = %s.from_pretrained(\"DIR\", from_hub=True)  # this directory, or its hub id\n```\n",
                 cls, m->d, m->dict_size, kk, cls, m->step, m->tokens, cls, cls);
    snprintf(path, sizeof path, "%s/README.md", dir);
    return xc_afile_write_all(path, text, (size_t)n, 0, 0644, why, wl);
}

static int copy_meta(xc_st_t *st, const xc_client_ckpt_t *c, const char *key)
{
    const char *v = xc_client_ckpt_meta(c, key);
    return v ? xc_st_meta(st, key, v) : XC_OK;
}

/* The activation normaliser of the source file, as the export's model
 * tensors: the model file's NormalizableMixin buffers (activation_mean, ...),
 * or a training file's trainer.norm_* once ready. Copies into mean/std
 * (2d floats), scale[2], *rms; 1 when there is one (F32, the right shapes). */
static int export_norm(const xc_client_ckpt_t *c, long d, float *mean, float *std, float *scale, float *rms)
{
    char why[200];
    xc_client_tensor_t tm, ts, tc, tr;
    int train = xc_client_ckpt_tensor(c, "trainer.norm_meta", &tr, why, sizeof why) == XC_OK;
    const char *nm = train ? "trainer.norm_mean" : "activation_mean", *ns = train ? "trainer.norm_std" : "activation_std";
    const char *nc = train ? "trainer.norm_scale" : "activation_global_scale";
    if (xc_client_ckpt_tensor(c, nm, &tm, why, sizeof why) || xc_client_ckpt_tensor(c, ns, &ts, why, sizeof why) ||
        xc_client_ckpt_tensor(c, nc, &tc, why, sizeof why) || strcmp(tm.dtype, "F32") || strcmp(ts.dtype, "F32") ||
        strcmp(tc.dtype, "F32") || tm.count != 2 * (size_t)d || ts.count != 2 * (size_t)d || tc.count != 2)
        return 0;
    memcpy(mean, tm.data, tm.bytes);
    memcpy(std, ts.data, ts.bytes);
    memcpy(scale, tc.data, tc.bytes);
    if (train) {
        double meta[4];
        if (strcmp(tr.dtype, "F64") || tr.count != 4) return 0;
        memcpy(meta, tr.data, sizeof meta);
        if (!(meta[0] > 0 && meta[1] > 0)) return 0;
        *rms = (float)meta[2];
    } else {
        if (xc_client_ckpt_tensor(c, "target_rms", &tr, why, sizeof why) || strcmp(tr.dtype, "F32") || tr.count != 1)
            return 0;
        memcpy(rms, tr.data, sizeof *rms);
    }
    return !isnan(mean[0]) && !isnan(std[0]);
}

int xc_cli_cmd_export(xc_cli_args_t *a)
{
    char why[700], created[40], dirb[1100], fileb[1100], path[1200];
    const char *dt = xc_cli_opt(a, "dtype"), *std = "F32";
    int err, rc, out = XC_CLI_FAIL;
    if (dt && !strcmp(dt, "f16")) std = "F16";
    else if (dt && !strcmp(dt, "bf16")) std = "BF16";
    else if (dt && strcmp(dt, "f32") != 0) {
        xc_cli_err(a, "--dtype: f32, f16 or bf16, got '%s'", dt);
        return XC_CLI_USAGE;
    }
    const char *hf = xc_cli_opt(a, "hf");
    if (hf ? a->npos != 1 : a->npos != 2) {
        xc_cli_err(a, hf ? "with --hf DIR give only CKPT (usage: xcoder export --hf DIR CKPT)"
                         : "needs CKPT and OUT (usage: xcoder export CKPT OUT, or --hf DIR CKPT)");
        return XC_CLI_USAGE;
    }
    if (hf && xc_mkdirs(hf, why, sizeof why)) {
        xc_cli_err(a, "--hf: %s", why);
        return XC_CLI_FAIL;
    }
    xc_client_ckpt_t *c = xc_client_ckpt_open(a->pos[0], &err, why, sizeof why);
    if (!c) {
        xc_cli_err(a, "%s", why);
        return XC_CLI_FAIL;
    }
    xc_client_model_t m;
    float *nmean = NULL, *nstd = NULL, nscale[2]; /* owned here: the exported normaliser */
    xc_st_t *st = NULL;
    memset(&m, 0, sizeof m);
    rc = xc_client_ckpt_verify(c, why, sizeof why);
    if (rc == XC_ENOTFOUND) {
        fprintf(stderr, "xcoder export: note: %s; exporting it unverified\n", why);
    } else if (rc) {
        xc_cli_err(a, "refusing to export: %s", why);
        goto out;
    }
    if ((rc = xc_client_ckpt_model(c, &m, why, sizeof why))) {
        xc_cli_err(a, "%s", why);
        goto out;
    }
    xc_ckpt_model_t cm = {.model = strcmp(m.model, "l1") == 0 ? XC_CKPT_L1 : XC_CKPT_BATCHTOPK,
                          .d = m.d, .dict_size = m.dict_size, .k = m.k, .threshold = m.threshold,
                          .code_norm_id = m.code_norm_id, .alpha_sae = m.alpha_sae, .alpha_cc = m.alpha_cc,
                          .threshold_m = {m.threshold_m[0], m.threshold_m[1]},
                          .engine_layout = 0, .w_enc = m.w_enc, .b_enc = m.b_enc, .w_dec = m.w_dec, .b_dec = m.b_dec};
    nmean = malloc(sizeof(float) * 2 * (size_t)m.d);
    nstd = malloc(sizeof(float) * 2 * (size_t)m.d);
    if (nmean && nstd && export_norm(c, m.d, nmean, nstd, nscale, &cm.target_rms))
        cm.act_mean = nmean, cm.act_std = nstd, cm.act_scale = nscale;
    st = xc_st_new();
    if (!st) {
        xc_cli_err(a, "out of memory");
        goto out;
    }
    xc_st_checksum(st);
    xc_ckpt_now_rfc3339(created, sizeof created);
    snprintf(fileb, sizeof fileb, "%s", a->pos[0]);
    rc = xc_ckpt_meta_common(st, XC_STF_MODEL_FORMAT, XC_CKPT_MODEL_VERSION, &cm, m.step, m.tokens, created);
    rc = rc ? rc : xc_st_meta(st, "exported_from", basename(fileb));
    rc = rc ? rc : xc_st_meta(st, "exported_from_checksum", xc_client_ckpt_meta(c, "checksum") ? xc_client_ckpt_meta(c, "checksum") : "none");
    rc = rc ? rc : xc_st_meta(st, "content", "inference only: parameters, threshold, k; no training state");
    rc = rc ? rc : xc_st_meta(st, "layout", XC_CKPT_LAYOUT_NOTE);
    rc = rc ? rc : copy_meta(st, c, "run_id");
    rc = rc ? rc : copy_meta(st, c, "name");
    rc = rc ? rc : copy_meta(st, c, "config");
    rc = rc ? rc : xc_ckpt_add_model(st, &cm, std);
    if (rc) {
        xc_cli_err(a, "cannot describe the export: %s", xc_strerror(rc));
        goto out;
    }
    if (hf) snprintf(dirb, sizeof dirb, "%s/model.safetensors", hf);
    else snprintf(dirb, sizeof dirb, "%s", a->pos[1]);
    snprintf(fileb, sizeof fileb, "%s", dirb);
    uint64_t bytes = 0;
    if ((rc = xc_st_write(st, dirname(dirb), basename(fileb), path, sizeof path, &bytes, why, sizeof why))) {
        xc_cli_err(a, "%s", why);
        goto out;
    }
    const char *cls = cm.model == XC_CKPT_L1 ? "CrossCoder" : "BatchTopKCrossCoder";
    if (hf && (rc = write_hf_files(hf, path, &m, cls, why, sizeof why))) {
        xc_cli_err(a, "--hf: %s", why);
        goto out;
    }
    if (a->json) {
        xc_buf_t b;
        xc_mpw_t w;
        xc_buf_init(&b);
        xc_mpw_init(&w, &b);
        xc_mpw_map_begin(&w);
        xc_mpw_kv_str(&w, "path", path);
        xc_mpw_kv_uint(&w, "bytes", bytes);
        xc_mpw_kv_str(&w, "model", m.model);
        xc_mpw_kv_int(&w, "step", m.step);
        xc_mpw_kv_str(&w, "dtype", std);
        xc_mpw_kv_str(&w, "checksum", xc_st_checksum_value(st));
        if (hf) {
            xc_mpw_kv_str(&w, "hf_dir", hf);
            xc_mpw_kv_str(&w, "class", cls);
        }
        xc_mpw_map_end(&w);
        out = xc_cli_print_mpw(a, &w);
        xc_buf_free(&b);
    } else {
        char b1[32];
        printf("exported %s: %s crosscoder d=%d dict_size=%d, step %ld, %s parameters, %s (%s)\n", path, m.model, m.d,
               m.dict_size, m.step, std, xc_cli_fmt_bytes((double)bytes, b1, sizeof b1), xc_st_checksum_value(st));
        if (hf) printf("  with %s/config.json and README.md: %s.from_pretrained(\"%s\", from_hub=True) loads it\n", hf,
                       cls, hf);
        out = XC_CLI_OK;
    }
out:
    xc_st_destroy(&st);
    xc_client_model_free(&m);
    free(nmean);
    free(nstd);
    xc_client_ckpt_close(&c);
    return out;
}
