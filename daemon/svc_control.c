/* The control socket (xc_svc_internal.h, PROTOCOL.md 2).
 *
 * The ops are a table (g_ops, indexed by xc_op_t): each row names its handler
 * and its flags. xc_svc_handle_control runs the checks every op shares once —
 * frame count, decoding, the op's argument check, the daemon's state, the
 * snapshot's freshness — and then dispatches, in the manner of redis's
 * processCommand. Adding an op is one row in XC_OP_MAP (proto/), one row here
 * and one handler. A handler answers with exactly one reply, or leaves that to
 * a later result (OP_DEFERRED).
 *
 * Requests that wait for the trainer (a checkpoint, a fresh latent snapshot)
 * are kept in s->pending with their raw frame and envelope, at most
 * PENDING_MAX of them, and answered from xc_svc_answer_pending when the
 * trainer's notification brings the result. */
#include "xc_svc_internal.h"
#include "xc_history.h"
#include "xc_log.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOP_MAX 100000      /* most latents in one top reply */
#define HISTORY_N_MAX 100000          /* most lines in one history reply */
#define HISTORY_BYTES_MAX (4u << 20)  /* most bytes of lines in one history reply */
#define PENDING_MAX 1024    /* deferred control requests (checkpoint, latent, top, table) */

/* Op flags: the shared checks they ask for. */
#define OP_REFUSED_STOPPING 0x1u /* XC_ESHUTDOWN once shutdown has begun */
#define OP_NEEDS_SNAPSHOT 0x2u   /* answered from a latent snapshot taken after the last step;
                                  * deferred until the trainer makes one when it is older */
#define OP_DEFERRED 0x4u         /* the handler does not reply: a later result does */

/* One request being handled: what every handler gets. */
typedef struct {
    xc_svc_envelope_t env;
    xc_request_t req;
    const void *body;            /* the raw request frame (borrowed; copied to defer) */
    int roles;                   /* the peer's XC_ROLE_* (xc_auth.h) */
    size_t blen;
    xc_mpw_t w;                  /* over s->out, reset */
    char why[XC_PROTO_REASON_MAX];
    union {                      /* arguments the op's check parsed */
        struct {
            uint64_t tokens;
            int cancel;
        } scal;                  /* scaling */
        struct {
            int has;
            char name[64];
        } key;                   /* config */
        struct {
            long j, n;           /* latent (-1: every one), cap per kind (-1: all) */
        } ex;                    /* examples, examples_reset */
        long hist_n;             /* history: lines asked for */
    } arg;
} call_t;

/* A row of the op table. roles: the XC_ROLE_* (xc_auth.h) any one of which
 * lets a peer call the op; ipc peers hold every role. */
typedef struct {
    unsigned flags;              /* OP_* */
    unsigned roles;
    int (*check)(xc_svc_t *s, call_t *c); /* arguments, before any state check; NULL: none */
    void (*run)(xc_svc_t *s, call_t *c);
} op_def_t;

/* ------------------------------------------------------------- replies -- */
/* Every refused request: counted, logged, answered with the code and reason. */
static void reply_error(xc_svc_t *s, const xc_svc_envelope_t *env, const xc_request_t *req, int code,
                        const char *why)
{
    s->cnt.control_errors++;
    xc_log_rl(&s->rl_control, XC_LOG_WARN, "control request%s%s refused: %s: %s", req && req->op_name[0] ? " " : "",
           req ? req->op_name : "", xc_errname(code), why);
    xc_buf_reset(&s->out);
    if (xc_proto_error_encode(&s->out, req, code, why) == 0)
        xc_svc_send_reply(s, s->control, env, s->out.data, s->out.len);
}

/* Sends the reply written into s->out, or an error if the writer failed. */
static void reply_buf(xc_svc_t *s, const xc_svc_envelope_t *env, xc_mpw_t *w, const xc_request_t *req)
{
    int rc = xc_mpw_finish(w);
    if (rc) {
        reply_error(s, env, req, rc, "could not encode the reply");
        return;
    }
    xc_svc_send_reply(s, s->control, env, s->out.data, s->out.len);
}

/* ----------------------------------------------------------- arguments -- */
/* Reads an optional unsigned argument; 1 when present. XC_EINVAL on wrong type. */
static int arg_u64(const xc_request_t *req, const char *key, uint64_t *out, char *why, size_t wl)
{
    xc_mp_node_t n = xc_mp_get(req->root, key);
    if (xc_mp_type(n) == XC_MP_NONE) return 0;
    if (xc_mp_as_u64(n, out)) {
        xc_why(why, wl, "argument '%s' must be an unsigned integer", key);
        return XC_EINVAL;
    }
    return 1;
}

/* Reads an optional string argument (borrowed view); 1 when present. XC_EINVAL
 * on wrong type. */
static int arg_str(const xc_request_t *req, const char *key, const char **out, size_t *len,
                   char *why, size_t wl)
{
    xc_mp_node_t n = xc_mp_get(req->root, key);
    if (xc_mp_type(n) == XC_MP_NONE) return 0;
    if (xc_mp_as_str(n, out, len)) {
        xc_why(why, wl, "argument '%s' must be a string", key);
        return XC_EINVAL;
    }
    return 1;
}

typedef struct {
    uint64_t j;         /* latent */
    int by;             /* column (enum xc_col) */
    char by_name[32];
    uint64_t n;
    int asc, alive_only;
} latent_args_t;

/* Validates the arguments of latent / top. 0 or an XC_E* with why. */
static int latent_args(xc_svc_t *s, const xc_request_t *req, latent_args_t *a, char *why, size_t wl)
{
    const char *str;
    size_t sl;
    int rc;
    memset(a, 0, sizeof a[0]);
    if (req->op == XC_OP_LATENT) {
        rc = arg_u64(req, "j", &a->j, why, wl);
        if (rc < 0) return rc;
        if (rc == 0) {
            xc_why(why, wl, "latent needs argument 'j' (0 <= j < %ld)", s->cfg.dict_size);
            return XC_EINVAL;
        }
        if (a->j >= (uint64_t)s->cfg.dict_size) {
            xc_why(why, wl, "latent %llu does not exist (dict_size = %ld)", (unsigned long long)a->j,
                    s->cfg.dict_size);
            return XC_ENOTFOUND;
        }
        return XC_OK;
    }
    rc = arg_str(req, "by", &str, &sl, why, wl);
    if (rc < 0) return rc;
    if (rc == 0) {
        str = "delta_norm";
        sl = strlen(str);
    }
    a->by = xc_latent_column_find(str, sl);
    if (a->by < 0) {
        xc_why(why, wl, "unknown field '%.*s' for top; use one of %s" XC_TOP_ALIAS_LAST_STEP,
               (int)(sl > 40 ? 40 : sl), str, XC_COL_NAMES_LIST);
        return XC_EINVAL;
    }
    snprintf(a->by_name, sizeof a->by_name, "%.*s", (int)sl, str);
    a->n = 10;
    if ((rc = arg_u64(req, "n", &a->n, why, wl)) < 0) return rc;
    if (a->n > (uint64_t)s->cfg.dict_size) a->n = (uint64_t)s->cfg.dict_size;
    if (a->n > TOP_MAX) a->n = TOP_MAX;
    rc = arg_str(req, "order", &str, &sl, why, wl);
    if (rc < 0) return rc;
    if (rc == 1) {
        if (sl == 3 && memcmp(str, "asc", 3) == 0) a->asc = 1;
        else if (!(sl == 4 && memcmp(str, "desc", 4) == 0)) {
            xc_why(why, wl, "argument 'order' must be \"asc\" or \"desc\"");
            return XC_EINVAL;
        }
    }
    xc_mp_node_t al = xc_mp_get(req->root, "alive_only");
    if (xc_mp_type(al) != XC_MP_NONE && xc_mp_as_bool(al, &a->alive_only)) {
        xc_why(why, wl, "argument 'alive_only' must be a bool");
        return XC_EINVAL;
    }
    return XC_OK;
}

typedef struct {
    const double *key;  /* (F) the sort field of every latent */
    int asc;
} sort_ctx_t;

/* qsort_r order for top: by the field, undefined (NaN) values last in either
 * order, ties by index so that equal values come out the same every time. */
static int top_cmp(const void *pa, const void *pb, void *pc)
{
    const sort_ctx_t *c = pc;
    int a = *(const int *)pa, b = *(const int *)pb;
    double va = c->key[a], vb = c->key[b];
    if (isnan(va) != isnan(vb)) return isnan(va) ? 1 : -1; /* undefined values last, either order */
    if (!isnan(va) && va != vb) return (va > vb) == !c->asc ? -1 : 1; /* two NaN: by index */
    return a < b ? -1 : a > b; /* stable order by index */
}

/* Keeps a request until the trainer answers it: a copy of its frame (decoded
 * again then) and its envelope. XC_EAGAIN when PENDING_MAX wait already. */
static int defer(xc_svc_t *s, const call_t *c, int waits_ckpt, uint64_t gen)
{
    if (s->n_pending >= PENDING_MAX) return XC_EAGAIN;
    xc_svc_pending_t *p = calloc(1, sizeof *p); /* owned by s->pending */
    if (!p) return XC_ENOMEM;
    p->req = malloc(c->blen ? c->blen : 1);
    if (!p->req) {
        free(p);
        return XC_ENOMEM;
    }
    memcpy(p->req, c->body, c->blen);
    p->req_len = c->blen;
    p->env = c->env;
    p->op = c->req.op;
    p->waits_ckpt = waits_ckpt;
    p->gen = gen;
    p->next = s->pending;
    s->pending = p;
    s->n_pending++;
    return XC_OK;
}

static void defer_or_refuse(xc_svc_t *s, call_t *c, int waits_ckpt, uint64_t gen)
{
    if (defer(s, c, waits_ckpt, gen))
        reply_error(s, &c->env, &c->req, XC_EAGAIN, "too many requests waiting for the trainer; retry");
}

/* ------------------------------------------------------------ handlers -- */
static void op_ping(xc_svc_t *s, call_t *c)
{
    xc_proto_reply_begin(&c->w, &c->req);
    xc_mpw_kv_uint(&c->w, "proto", XC_PROTO_VERSION);
    xc_mpw_kv_str(&c->w, "name", s->cfg.name);
    xc_mpw_kv_double(&c->w, "uptime_s", xc_svc_mono_s() - s->t_start);
    xc_mpw_map_end(&c->w);
    reply_buf(s, &c->env, &c->w, &c->req);
}

static void op_status(xc_svc_t *s, call_t *c)
{
    xc_proto_reply_begin(&c->w, &c->req);
    xc_svc_render_stats(s, &c->w);
    xc_mpw_str(&c->w, "producers"); /* what fed this run: accepted tokens per producer id */
    xc_mpw_map_begin(&c->w);
    for (int i = 0; i < s->n_producers; i++) xc_mpw_kv_uint(&c->w, s->producers[i].id, s->producers[i].tokens);
    if (s->producers_other) xc_mpw_kv_uint(&c->w, "(others)", s->producers_other);
    xc_mpw_map_end(&c->w);
    xc_mpw_str(&c->w, "config");
    xc_svc_render_config(s, &c->w);
    xc_mpw_map_end(&c->w);
    reply_buf(s, &c->env, &c->w, &c->req);
}

/* config {key?}: an unknown key is XC_ENOTFOUND, not an empty map. */
static int check_config(xc_svc_t *s, call_t *c)
{
    const char *key;
    size_t kl;
    int rc = arg_str(&c->req, "key", &key, &kl, c->why, sizeof c->why);
    if (rc < 0) return rc;
    c->arg.key.has = rc;
    snprintf(c->arg.key.name, sizeof c->arg.key.name, "%.*s", (int)(kl < 63 ? kl : 63), rc ? key : "");
    if (rc == 1 && !xc_cfg_key(c->arg.key.name)) {
        snprintf(c->why, sizeof c->why, "unknown config key '%s'", c->arg.key.name);
        return XC_ENOTFOUND;
    }
    return XC_OK;
}

/* config {key?}: every key, or the one asked for (check_config vetted it). */
static void op_config(xc_svc_t *s, call_t *c)
{
    xc_proto_reply_begin(&c->w, &c->req);
    xc_mpw_str(&c->w, "config");
    xc_mpw_map_begin(&c->w);
    xc_cfg_to_mp(&s->cfg, c->arg.key.has ? c->arg.key.name : NULL, &c->w);
    xc_mpw_map_end(&c->w);
    xc_mpw_map_end(&c->w);
    reply_buf(s, &c->env, &c->w, &c->req);
}

/* pause / resume: the trainer reads the flag between steps. */
static void op_pause(xc_svc_t *s, call_t *c)
{
    int p = c->req.op == XC_OP_PAUSE;
    xc_trainer_set_paused(s->trainer, p);
    xc_log(XC_LOG_INFO, "training %s by request", p ? "paused" : "resumed");
    xc_proto_reply_begin(&c->w, &c->req);
    xc_mpw_kv_bool(&c->w, "paused", p);
    xc_mpw_map_end(&c->w);
    reply_buf(s, &c->env, &c->w, &c->req);
}

/* shutdown: the reply goes out before the loop starts stopping. */
static void op_shutdown(xc_svc_t *s, call_t *c)
{
    xc_proto_reply_begin(&c->w, &c->req);
    xc_mpw_kv_bool(&c->w, "shutting_down", 1);
    xc_mpw_map_end(&c->w);
    reply_buf(s, &c->env, &c->w, &c->req);
    xc_svc_begin_shutdown(s, "shutdown requested");
}

/* checkpoint: answered when the trainer reports a result of this generation
 * or later; while stopping, the final checkpoint answers it. */
static void op_checkpoint(xc_svc_t *s, call_t *c)
{
    uint64_t gen = xc_trainer_request_checkpoint(s->trainer, s->stopping ? "shutdown" : "request");
    defer_or_refuse(s, c, 1, gen);
}

/* The reply to a checkpoint request once its result is known. */
static void reply_checkpoint(xc_svc_t *s, const xc_svc_envelope_t *env, const xc_request_t *req,
                             const xc_ckpt_result_t *ck)
{
    if (ck->rc) {
        reply_error(s, env, req, ck->rc, ck->why);
        return;
    }
    xc_mpw_t w;
    xc_buf_reset(&s->out);
    xc_mpw_init(&w, &s->out);
    xc_proto_reply_begin(&w, req);
    xc_mpw_kv_str(&w, "path", ck->path);
    xc_mpw_kv_int(&w, "step", ck->step);
    xc_mpw_kv_uint(&w, "bytes", ck->bytes);
    xc_mpw_kv_str(&w, "train_path", ck->train_path);
    xc_mpw_map_end(&w);
    reply_buf(s, env, &w, req);
}

/* scaling {tokens?, cancel?}: the count is bounded to [1, scaling_max_tokens]. */
static int check_scaling(xc_svc_t *s, call_t *c)
{
    c->arg.scal.tokens = 1000000;
    c->arg.scal.cancel = 0;
    int rc = arg_u64(&c->req, "tokens", &c->arg.scal.tokens, c->why, sizeof c->why);
    if (rc < 0) return rc;
    if (c->arg.scal.tokens == 0 || c->arg.scal.tokens > (uint64_t)s->cfg.scaling_max_tokens) {
        snprintf(c->why, sizeof c->why, "argument 'tokens' must be in [1, %ld] (scaling_max_tokens), got %llu",
                 s->cfg.scaling_max_tokens, (unsigned long long)c->arg.scal.tokens);
        return XC_EINVAL;
    }
    xc_mp_node_t cn = xc_mp_get(c->req.root, "cancel");
    if (xc_mp_type(cn) != XC_MP_NONE && xc_mp_as_bool(cn, &c->arg.scal.cancel)) {
        snprintf(c->why, sizeof c->why, "argument 'cancel' must be a boolean");
        return XC_EINVAL;
    }
    return XC_OK;
}

/* scaling: one exact pass at a time; the 'scaling' event reports its end.
 * {cancel: true} stops the pass under way (its partial sums are dropped). */
static void op_scaling(xc_svc_t *s, call_t *c)
{
    uint64_t tokens = c->arg.scal.tokens;
    xc_trainer_status_t ts;
    if (c->arg.scal.cancel) {
        xc_trainer_status(s->trainer, &ts);
        if (xc_trainer_cancel_scaling(s->trainer)) {
            reply_error(s, &c->env, &c->req, XC_ENOTFOUND, "no exact Latent Scaling pass is under way");
            return;
        }
        xc_log(XC_LOG_INFO, "exact Latent Scaling pass cancelled by request (%llu of %llu tokens)",
               (unsigned long long)ts.scaling_done, (unsigned long long)ts.scaling_target);
        xc_proto_reply_begin(&c->w, &c->req);
        xc_mpw_kv_bool(&c->w, "cancelled", 1);
        xc_mpw_kv_uint(&c->w, "tokens_done", ts.scaling_done);
        xc_mpw_kv_uint(&c->w, "tokens_target", ts.scaling_target);
        xc_mpw_map_end(&c->w);
        reply_buf(s, &c->env, &c->w, &c->req);
        return;
    }
    if (xc_trainer_request_scaling(s->trainer, tokens)) {
        xc_trainer_status(s->trainer, &ts);
        snprintf(c->why, sizeof c->why, "an exact Latent Scaling pass is already under way (%llu of %llu tokens); "
                 "wait for its 'scaling' event (xcoder scaling --wait attaches to it), or cancel it (xcoder scaling "
                 "--cancel)", (unsigned long long)ts.scaling_done, (unsigned long long)ts.scaling_target);
        reply_error(s, &c->env, &c->req, XC_ESTATE, c->why);
        return;
    }
    xc_log(XC_LOG_INFO, "exact Latent Scaling pass over %llu tokens requested", (unsigned long long)tokens);
    xc_proto_reply_begin(&c->w, &c->req);
    xc_mpw_kv_bool(&c->w, "started", 1);
    xc_mpw_kv_uint(&c->w, "tokens", tokens);
    xc_mpw_map_end(&c->w);
    reply_buf(s, &c->env, &c->w, &c->req);
}

/* metrics: the same text as metrics_file, in a string field. */
static void op_metrics(xc_svc_t *s, call_t *c)
{
    xc_buf_t text;
    xc_buf_init(&text);
    if (xc_svc_metrics_text(s, &text) || xc_buf_append(&text, "", 1)) {
        reply_error(s, &c->env, &c->req, XC_ENOMEM, "out of memory rendering the metrics");
    } else {
        xc_proto_reply_begin(&c->w, &c->req);
        xc_mpw_kv_str(&c->w, "format", "text/plain; version=0.0.4");
        xc_mpw_kv_str(&c->w, "text", (const char *)text.data);
        xc_mpw_map_end(&c->w);
        reply_buf(s, &c->env, &c->w, &c->req);
    }
    xc_buf_free(&text);
}

static void op_checkpoints(xc_svc_t *s, call_t *c)
{
    xc_remote_checkpoints(s->remote, &c->req, c->body, c->blen, &s->out);
    xc_svc_send_reply(s, s->control, &c->env, s->out.data, s->out.len);
}

/* fetch: answered from remote.c's threadpool callback (xc_svc_remote_reply). */
/* fetch: a training-state file holds the mixing buffer, i.e. producers' raw
 * activations: admins only. */
static int check_fetch(xc_svc_t *s, call_t *c)
{
    xc_mp_node_t n = xc_mp_get(c->req.root, "file");
    const char *name;
    size_t len;
    if (xc_mp_as_str(n, &name, &len) == 0 && memmem(name, len, ".resume.", 8) && !(c->roles & XC_ROLE_ADMIN)) {
        s->cnt.control_denied++;
        snprintf(c->why, sizeof c->why, "training-state files hold producers' raw activations: fetching one "
                 "needs the admin role (this key has %s)", xc_auth_role_name(c->roles));
        return XC_EPERM;
    }
    return XC_OK;
}

static void op_fetch(xc_svc_t *s, call_t *c)
{
    int rc = xc_remote_fetch(s->remote, &c->req, c->body, c->blen, &c->env, c->why, sizeof c->why);
    if (rc) reply_error(s, &c->env, &c->req, rc, c->why);
}

static int check_latent(xc_svc_t *s, call_t *c)
{
    latent_args_t a;
    return latent_args(s, &c->req, &a, c->why, sizeof c->why);
}

/* latent / top from the current snapshot (its freshness was checked by the
 * dispatcher, or the trainer just made it). */
static void op_latent(xc_svc_t *s, call_t *c)
{
    latent_args_t a;
    int rc = latent_args(s, &c->req, &a, c->why, sizeof c->why);
    if (rc) {
        reply_error(s, &c->env, &c->req, rc, c->why);
        return;
    }
    const xc_snapshot_t *L = s->snap; /* the loop's own: no lock */
    if (!L) {
        reply_error(s, &c->env, &c->req, XC_EAGAIN, "no latent snapshot yet; retry");
        return;
    }
    const xc_latent_stats_t *st = L->st;
    xc_mpw_t *w = &c->w;
    xc_proto_reply_begin(w, &c->req);
    xc_mpw_kv_int(w, "snapshot_step", L->step);
    if (c->req.op == XC_OP_LATENT) {
        xc_mpw_kv_uint(w, "j", a.j);
        xc_mpw_str(w, "stats");
        xc_mpw_map_begin(w);
        xc_svc_render_latent(w, L, (long)a.j);
        xc_mpw_map_end(w);
    } else {
        long F = s->cfg.dict_size, n = 0;
        int *idx = malloc((size_t)F * sizeof *idx);     /* owned here */
        double *key = malloc((size_t)F * sizeof *key); /* owned here */
        if (!idx || !key) {
            free(idx);
            free(key);
            reply_error(s, &c->env, &c->req, XC_ENOMEM, "out of memory sorting latents");
            return;
        }
        for (long j = 0; j < F; j++) {
            int64_t iv;
            xc_latent_column(L, a.by, j, &key[j], &iv);
            if (!a.alive_only || !st[j].dead) idx[n++] = (int)j;
        }
        sort_ctx_t sc = {key, a.asc};
        qsort_r(idx, (size_t)n, sizeof *idx, top_cmp, &sc);
        if ((uint64_t)n > a.n) n = (long)a.n;
        xc_mpw_kv_str(w, "by", a.by_name);
        xc_mpw_kv_str(w, "order", a.asc ? "asc" : "desc");
        xc_mpw_str(w, "latents");
        xc_mpw_array_begin(w);
        for (long i = 0; i < n; i++) {
            xc_mpw_map_begin(w);
            xc_mpw_kv_int(w, "j", idx[i]);
            xc_svc_render_latent(w, L, idx[i]);
            xc_mpw_map_end(w);
        }
        xc_mpw_array_end(w);
        free(idx);
        free(key);
    }
    xc_mpw_map_end(w);
    reply_buf(s, &c->env, w, &c->req);
}

static int check_table(xc_svc_t *s, call_t *c)
{
    return xc_remote_table_check(&c->req, s->cfg.dict_size, c->why, sizeof c->why);
}

/* table: remote.c encodes the columns from the same snapshot. */
static void op_table(xc_svc_t *s, call_t *c)
{
    int rc = xc_remote_table(s->snap, s->cfg.dict_size, &c->req, &s->out, c->why, sizeof c->why);
    if (rc) reply_error(s, &c->env, &c->req, rc, c->why);
    else xc_svc_send_reply(s, s->control, &c->env, s->out.data, s->out.len);
}

/* ----------------------------------------------------------- examples -- */
/* examples: j (required, < dict_size), n (optional cap per kind). */
static int check_examples(xc_svc_t *s, call_t *c)
{
    uint64_t j = 0, n = 0;
    int rc = arg_u64(&c->req, "j", &j, c->why, sizeof c->why);
    if (rc < 0) return rc;
    if (rc == 0) {
        xc_why(c->why, sizeof c->why, "%s needs argument 'j' (0 <= j < %ld)", c->req.op_name, s->cfg.dict_size);
        return XC_EINVAL;
    }
    if (j >= (uint64_t)s->cfg.dict_size) {
        xc_why(c->why, sizeof c->why, "latent %llu does not exist (dict_size = %ld)", (unsigned long long)j,
               s->cfg.dict_size);
        return XC_ENOTFOUND;
    }
    if ((rc = arg_u64(&c->req, "n", &n, c->why, sizeof c->why)) < 0) return rc;
    c->arg.ex.j = (long)j;
    c->arg.ex.n = rc ? (long)(n > 255 ? 255 : n) : -1;
    return XC_OK;
}

/* The latent's live examples straight from the store (its own short lock; the
 * trainer holds it for one step's update, about a millisecond). */
static void op_examples(xc_svc_t *s, call_t *c)
{
    xc_mpw_t *w = &c->w;
    xc_proto_reply_begin(w, &c->req);
    int rc = xc_examples_encode(xc_trainer_examples(s->trainer), c->arg.ex.j, c->arg.ex.n, w);
    xc_mpw_map_end(w);
    if (rc) reply_error(s, &c->env, &c->req, rc, "no such latent");
    else reply_buf(s, &c->env, w, &c->req);
}

/* examples_reset: j (one latent) or all: true (every latent). */
static int check_examples_reset(xc_svc_t *s, call_t *c)
{
    int all = 0;
    xc_mp_node_t a = xc_mp_get(c->req.root, "all");
    if (xc_mp_type(a) != XC_MP_NONE && xc_mp_as_bool(a, &all)) {
        xc_why(c->why, sizeof c->why, "argument 'all' must be a bool");
        return XC_EINVAL;
    }
    if (all) {
        if (xc_mp_type(xc_mp_get(c->req.root, "j")) != XC_MP_NONE) {
            xc_why(c->why, sizeof c->why, "give 'j' or 'all: true', not both");
            return XC_EINVAL;
        }
        c->arg.ex.j = -1;
        return XC_OK;
    }
    return check_examples(s, c);
}

static void op_examples_reset(xc_svc_t *s, call_t *c)
{
    int rc = xc_examples_request_reset(xc_trainer_examples(s->trainer), c->arg.ex.j);
    if (rc) {
        reply_error(s, &c->env, &c->req, rc, "too many resets waiting for the trainer; retry");
        return;
    }
    if (c->arg.ex.j < 0) xc_log(XC_LOG_INFO, "examples reset for every latent");
    else xc_log(XC_LOG_INFO, "examples reset for latent %ld", c->arg.ex.j);
    xc_mpw_t *w = &c->w;
    xc_proto_reply_begin(w, &c->req);
    if (c->arg.ex.j < 0) xc_mpw_kv_bool(w, "all", 1);
    else xc_mpw_kv_int(w, "j", c->arg.ex.j);
    xc_mpw_kv_bool(w, "reset", 1);
    xc_mpw_map_end(w);
    reply_buf(s, &c->env, w, &c->req);
}

/* history {n?}: the newest n lines (default 100, at most HISTORY_N_MAX). */
static int check_history(xc_svc_t *s, call_t *c)
{
    uint64_t n = 100;
    int rc = arg_u64(&c->req, "n", &n, c->why, sizeof c->why);
    if (rc < 0) return rc;
    if (n > HISTORY_N_MAX) {
        xc_why(c->why, sizeof c->why, "argument 'n' is at most %d (lines of history in one reply)", HISTORY_N_MAX);
        return XC_EINVAL;
    }
    c->arg.hist_n = (long)n;
    return XC_OK;
}

static int history_line(void *ctx, const char *line, size_t len)
{
    xc_mpw_strn(ctx, line, len);
    return 0;
}

/* history: the stats history's newest lines (xc_history.h), oldest first, each
 * the JSON text of one stats event, bounded by n and HISTORY_BYTES_MAX; `more`
 * says older lines were left out. Read from state_dir on the loop thread: at
 * most a few MiB from the page cache, like the checkpoint listing. */
static void op_history(xc_svc_t *s, call_t *c)
{
    char why[XC_CFG_STR_MAX + 200];
    int more = 0;
    xc_mpw_t *w = &c->w;
    xc_proto_reply_begin(w, &c->req);
    xc_mpw_kv_bool(w, "enabled", s->cfg.history_max_bytes > 0);
    xc_mpw_str(w, "lines");
    xc_mpw_array_begin(w);
    int rc = xc_history_tail(s->cfg.state_dir, c->arg.hist_n, HISTORY_BYTES_MAX, history_line, w, &more, why,
                             sizeof why);
    xc_mpw_array_end(w);
    xc_mpw_kv_bool(w, "more", more);
    xc_mpw_map_end(w);
    if (rc) reply_error(s, &c->env, &c->req, rc, why);
    else reply_buf(s, &c->env, w, &c->req);
}

/* ----------------------------------------------------------- the table -- */
/* Roles per op (README "Security"): readers read, admins also change things. */
#define R_ANY (XC_ROLE_PRODUCER | XC_ROLE_READER | XC_ROLE_ADMIN)
#define R_READ (XC_ROLE_READER | XC_ROLE_ADMIN)
#define R_ADMIN XC_ROLE_ADMIN
static const op_def_t g_ops[XC_OP__COUNT] = {
    [XC_OP_PING] = {0, R_ANY, NULL, op_ping},
    [XC_OP_STATUS] = {0, R_READ, NULL, op_status},
    [XC_OP_CONFIG] = {0, R_ANY, check_config, op_config}, /* producers ask d and dtype */
    [XC_OP_PAUSE] = {OP_REFUSED_STOPPING, R_ADMIN, NULL, op_pause},
    [XC_OP_RESUME] = {OP_REFUSED_STOPPING, R_ADMIN, NULL, op_pause},
    [XC_OP_SHUTDOWN] = {0, R_ADMIN, NULL, op_shutdown},
    [XC_OP_CHECKPOINT] = {OP_DEFERRED, R_ADMIN, NULL, op_checkpoint},
    [XC_OP_SCALING] = {OP_REFUSED_STOPPING, R_ADMIN, check_scaling, op_scaling},
    [XC_OP_METRICS] = {0, R_READ, NULL, op_metrics},
    [XC_OP_CHECKPOINTS] = {0, R_READ, NULL, op_checkpoints},
    [XC_OP_FETCH] = {OP_DEFERRED, R_READ, check_fetch, op_fetch},
    [XC_OP_LATENT] = {OP_NEEDS_SNAPSHOT, R_READ, check_latent, op_latent},
    [XC_OP_TOP] = {OP_NEEDS_SNAPSHOT, R_READ, check_latent, op_latent},
    [XC_OP_TABLE] = {OP_NEEDS_SNAPSHOT, R_READ, check_table, op_table},
    [XC_OP_EXAMPLES] = {0, R_READ, check_examples, op_examples},
    [XC_OP_EXAMPLES_RESET] = {OP_REFUSED_STOPPING, R_ADMIN, check_examples_reset, op_examples_reset},
    [XC_OP_HISTORY] = {0, R_READ, check_history, op_history},
};

/* The first op of XC_OP_MAP without a row (no handler, or no role that may
 * call it); XC_OP_UNKNOWN when every op has one. tests/test_service.c keeps
 * "one row in XC_OP_MAP, one row here" true. */
xc_op_t xc_svc_op_unhandled(void)
{
    for (int op = 0; op < XC_OP__COUNT; op++)
        if (!g_ops[op].run || !g_ops[op].roles) return (xc_op_t)op;
    return XC_OP_UNKNOWN;
}

/* 1 when the loop's snapshot answers a query now: taken after the last step
 * (no step since), or the trainer has stopped and no other will come. A
 * snapshot the trainer has parked since the last notification is taken first. */
static int snapshot_current(xc_svc_t *s)
{
    xc_trainer_status_t ts;
    xc_trainer_status(s->trainer, &ts);
    s->snap = xc_trainer_snapshot_swap(s->trainer, s->snap);
    if (s->snap && s->snap->gen > 0 && s->snap->step == ts.m.step) return 1;
    return s->stopping && ts.state == XC_TR_STOPPED;
}

/* --------------------------------------------------------- dispatching -- */
/* One control message: the shared checks in order (one frame, a valid
 * request, a known op, the op's arguments, the daemon's state, the snapshot),
 * then the op's handler. Every path replies exactly once, now or later. */
void xc_svc_handle_control(xc_svc_t *s, xc_svc_mmsg_t *mm)
{
    call_t c;
    int b0 = xc_svc_envelope_split(mm, &c.env), nb = mm->n - b0 + mm->extra, rc;

    s->cnt.control_requests++;
    if (nb != 1) {
        snprintf(c.why, sizeof c.why, "a request is exactly one MessagePack frame after the envelope; got %d",
                 nb);
        reply_error(s, &c.env, NULL, XC_EPROTO, c.why);
        return;
    }
    c.body = zmq_msg_data(&mm->m[b0]);
    c.blen = zmq_msg_size(&mm->m[b0]);
    memset(&c.arg, 0, sizeof c.arg);
    rc = xc_proto_request_decode(c.body, c.blen, &c.req, c.why, sizeof c.why);
    if (rc) {
        reply_error(s, &c.env, &c.req, rc, c.why);
        goto out_free_req;
    }
    xc_log(XC_LOG_DEBUG, "control op %s", c.req.op_name);
    const op_def_t *op = c.req.op >= 0 && c.req.op < XC_OP__COUNT ? &g_ops[c.req.op] : NULL;
    if (!op || !op->run) {
        reply_error(s, &c.env, &c.req, XC_EUNKNOWN, "op not implemented");
        goto out_free_req;
    }
    c.roles = xc_auth_roles_of(&mm->m[b0]);
    if (!xc_auth_allowed(c.roles, (int)op->roles, c.req.op_name, c.why, sizeof c.why)) {
        s->cnt.control_denied++;
        reply_error(s, &c.env, &c.req, XC_EPERM, c.why);
        goto out_free_req;
    }
    if (op->check && (rc = op->check(s, &c))) {
        reply_error(s, &c.env, &c.req, rc, c.why);
        goto out_free_req;
    }
    if ((op->flags & OP_REFUSED_STOPPING) && s->stopping) {
        reply_error(s, &c.env, &c.req, XC_ESHUTDOWN, "the daemon is shutting down");
        goto out_free_req;
    }
    if ((op->flags & OP_NEEDS_SNAPSHOT) && !snapshot_current(s)) {
        defer_or_refuse(s, &c, 0, xc_trainer_request_snapshot(s->trainer));
        goto out_free_req;
    }
    xc_buf_reset(&s->out);
    xc_mpw_init(&c.w, &s->out);
    op->run(s, &c);
out_free_req:
    xc_proto_request_free(&c.req);
}

/* Answers deferred requests that the trainer's results satisfy (a checkpoint
 * result of their generation or later; a snapshot of their generation or
 * later). With fail_code != 0 answers every remaining one with that error. */
void xc_svc_answer_pending(xc_svc_t *s, const xc_ckpt_result_t *ck, int have_ck, uint64_t snap_gen,
                           int fail_code)
{
    xc_svc_pending_t **pp = &s->pending;
    while (*pp) {
        xc_svc_pending_t *p = *pp;
        int ready = fail_code || (p->waits_ckpt ? have_ck && ck->gen >= p->gen : snap_gen >= p->gen);
        if (!ready) {
            pp = &p->next;
            continue;
        }
        *pp = p->next;
        s->n_pending--;
        call_t c;
        memset(&c.arg, 0, sizeof c.arg);
        c.env = p->env;
        c.body = p->req;
        c.blen = p->req_len;
        if (xc_proto_request_decode(p->req, p->req_len, &c.req, c.why, sizeof c.why) == 0) {
            if (fail_code) {
                reply_error(s, &c.env, &c.req, fail_code, "the daemon stopped before answering");
            } else if (p->waits_ckpt) {
                reply_checkpoint(s, &c.env, &c.req, ck);
            } else {
                xc_buf_reset(&s->out);
                xc_mpw_init(&c.w, &s->out);
                g_ops[c.req.op].run(s, &c);
            }
        }
        xc_proto_request_free(&c.req);
        free(p->req);
        free(p);
    }
}

/* Frees the requests still waiting (destroy: their clients get no reply). */
void xc_svc_pending_free_all(xc_svc_t *s)
{
    while (s->pending) {
        xc_svc_pending_t *p = s->pending;
        s->pending = p->next;
        free(p->req);
        free(p);
    }
    s->n_pending = 0;
}

/* remote.c's fetch replies, on the loop thread; tag is the request's envelope. */
void xc_svc_remote_reply(void *ctx, const void *tag, const void *body, size_t len, int is_error)
{
    xc_svc_t *s = ctx;
    if (is_error) s->cnt.control_errors++;
    xc_svc_send_reply(s, s->control, tag, body, len);
    xc_svc_drain_all(s); /* the send consumed the ZMQ_FD edge */
}
