/* Latent-sharded training across ranks: the command stream (see xc_shard.h). */
#include "xc_shard.h"
#include "xc_coll_mpi.h"
#include "xc_error.h"
#include "xc_log.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { CMD_TRAIN = 1, CMD_SCAL_NEW, CMD_SCAL_END, CMD_STATS, CMD_GATHER, CMD_SCATTER, CMD_PING, CMD_STOP };
#define CMD_FEED 1   /* TRAIN: feed the exact pass first */
#define CMD_KEEP 1   /* SCAL_END: gather the results (else drop them) */
#define CHUNK_BYTES ((size_t)64 << 20) /* SCATTER broadcasts views in pieces of this size */

typedef struct {
    int32_t op, flags;
    int64_t arg;
} cmd_t;

/* A rank's report at the end of every command. */
typedef struct {
    double rc, step_ms, comm_s, comm_bytes;
} report_t;

struct xc_shard {
    xc_coll_t *c;          /* borrowed */
    xc_engine_t *e;        /* borrowed: this rank's shard */
    xc_engine_t *full;     /* borrowed, rank 0 only: the unsharded container */
    int rank, size;
    int mpi;               /* c is the MPI table (xc_coll_mpi.h): its timeout and reasons apply */
    long F, lo, n;
    long *lo_r, *n_r;      /* (size) every rank's slice; owned */
    size_t *rb;            /* (size) scratch for receive sizes; owned */
    report_t *rep;         /* (size) rank 0: the last reports; owned */
    xc_scaling_t *pass;    /* ranks > 0: this rank's exact pass; owned */
    double last_cmd;       /* rank 0: monotonic seconds of the last command */
    double step_ms;        /* this rank's last step */
    double comm_s0;        /* the table's seconds when the command began */
    uint64_t comm_b0;
    double step_comm_s;    /* rank 0: its last TRAIN's collective seconds */
    uint64_t step_comm_b;
    /* the last step's global selection (rank 0), and the packing scratch */
    long *sel_rp;          /* (B+1) owned */
    int *sel_col;          /* owned, grows */
    float *sel_val;        /* owned, grows */
    long sel_nnz, sel_cap;
    uint8_t *pack;         /* owned, grows: this rank's packed selection / rank 0's received */
    size_t pack_cap;
    char err[256];
};

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Records the first failure in sh->err and passes rc through. */
static int fail(xc_shard_t *sh, int rc, const char *what)
{
    if (!rc) return rc;
    if (!sh->err[0]) {
        const char *why = rc == XC_ECOLL && sh->mpi ? xc_coll_mpi_error(sh->c) : "";
        snprintf(sh->err, sizeof sh->err, "rank %d: %s: %s%s%s", sh->rank, what, xc_strerror(rc), *why ? ": " : "",
                 why);
    }
    return rc;
}

int xc_shard_hello(xc_coll_t *c, xc_shard_hello_t *h)
{
    return c->bcast(c, h, sizeof *h, 0);
}

xc_shard_t *xc_shard_new(xc_coll_t *c, xc_engine_t *e, xc_engine_t *full, int *err)
{
    xc_shard_t *sh = calloc(1, sizeof *sh); /* owned by the caller; xc_shard_destroy */
    const xc_engine_config_t *ec = xc_engine_config(e);
    *err = XC_ENOMEM;
    if (!sh) return NULL;
    sh->c = c;
    sh->e = e;
    sh->full = full;
    sh->rank = c->rank;
    sh->size = c->size;
    sh->mpi = xc_mpi_launched(); /* else a test's in-process table (tests/xc_coll_threads.h) */
    sh->F = ec->dict_size;
    xc_engine_shard(e, &sh->lo, &sh->n);
    sh->lo_r = calloc((size_t)sh->size, sizeof *sh->lo_r);
    sh->n_r = calloc((size_t)sh->size, sizeof *sh->n_r);
    sh->rb = calloc((size_t)sh->size, sizeof *sh->rb);
    sh->rep = calloc((size_t)sh->size, sizeof *sh->rep);
    sh->sel_rp = calloc((size_t)ec->batch_size + 1, sizeof *sh->sel_rp);
    if (!sh->lo_r || !sh->n_r || !sh->rb || !sh->rep || !sh->sel_rp) {
        xc_shard_destroy(&sh);
        return NULL;
    }
    for (int r = 0; r < sh->size; r++) xc_coll_slice(sh->F, sh->size, r, &sh->lo_r[r], &sh->n_r[r]);
    sh->last_cmd = mono_s();
    *err = XC_OK;
    return sh;
}

void xc_shard_destroy(xc_shard_t **psh)
{
    xc_shard_t *sh = psh ? *psh : NULL;
    if (!sh) return;
    xc_scaling_destroy(&sh->pass);
    free(sh->lo_r);
    free(sh->n_r);
    free(sh->rb);
    free(sh->rep);
    free(sh->sel_rp);
    free(sh->sel_col);
    free(sh->sel_val);
    free(sh->pack);
    free(sh);
    *psh = NULL;
}

int xc_shard_rank(const xc_shard_t *sh) { return sh->rank; }
int xc_shard_size(const xc_shard_t *sh) { return sh->size; }
const char *xc_shard_error(const xc_shard_t *sh) { return sh->err; }
double xc_shard_idle_s(const xc_shard_t *sh) { return mono_s() - sh->last_cmd; }

static int grow(void **p, size_t *cap, size_t need)
{
    if (need <= *cap) return XC_OK;
    size_t n = need + need / 2 + 64;
    void *q = realloc(*p, n);
    if (!q) return XC_ENOMEM;
    *p = q;
    *cap = n;
    return XC_OK;
}

/* ------------------------------------------------------------ the pieces --
 * Each runs on every rank, in the same order. */

/* Per-latent records (rec bytes each) of every rank's slice, concatenated in
 * rank order on rank 0 = the global array (slices are contiguous in rank order). */
static int gather_rows(xc_shard_t *sh, const void *mine, void *all, size_t rec)
{
    for (int r = 0; r < sh->size; r++) sh->rb[r] = (size_t)sh->n_r[r] * rec;
    return sh->c->gatherv(sh->c, mine, (size_t)sh->n * rec, all, sh->rb, 0);
}

/* The view of the same name in the unsharded container (rank 0). */
static xc_state_view_t *full_view(xc_state_view_t *fv, int nf, const char *name)
{
    for (int i = 0; i < nf; i++)
        if (strcmp(fv[i].name, name) == 0) return &fv[i];
    return NULL;
}

static size_t row_bytes(const xc_state_view_t *v)
{
    size_t b = v->dtype == XC_ST_F32 ? 4 : 8;
    for (int i = 1; i < v->ndim; i++) b *= (size_t)v->shape[i];
    return b;
}

/* GATHER: every sharded view's slices into the container; the replicated ones
 * are rank 0's own (identical on every rank). */
static int do_gather(xc_shard_t *sh)
{
    xc_state_view_t v[XC_ENGINE_STATE_MAX], fv[XC_ENGINE_STATE_MAX];
    int n = xc_engine_state_views(sh->e, v, XC_ENGINE_STATE_MAX), nf = 0, rc = XC_OK;
    if (sh->full) nf = xc_engine_state_views(sh->full, fv, XC_ENGINE_STATE_MAX);
    for (int i = 0; i < n && !rc; i++) {
        xc_state_view_t *f = sh->full ? full_view(fv, nf, v[i].name) : NULL;
        if (sh->full && !f) {
            snprintf(sh->err, sizeof sh->err, "state view %s has no unsharded counterpart", v[i].name);
            return XC_EINVAL;
        }
        if (v[i].sharded) rc = fail(sh, gather_rows(sh, v[i].data, f ? f->data : NULL, row_bytes(&v[i])), v[i].name);
        else if (f) memcpy(f->data, v[i].data, f->bytes < v[i].bytes ? f->bytes : v[i].bytes);
    }
    if (!rc && sh->full) xc_engine_state_restored(sh->full);
    return rc;
}

/* SCATTER: the container's views, broadcast in pieces; each rank keeps its
 * slice of a sharded view and the whole of a replicated one. */
static int do_scatter(xc_shard_t *sh)
{
    xc_state_view_t v[XC_ENGINE_STATE_MAX], fv[XC_ENGINE_STATE_MAX];
    int n = xc_engine_state_views(sh->e, v, XC_ENGINE_STATE_MAX), nf = 0, rc = XC_OK;
    uint8_t *tmp = NULL; /* owned here: one piece (ranks > 0) */
    if (sh->full) nf = xc_engine_state_views(sh->full, fv, XC_ENGINE_STATE_MAX);
    else if (!(tmp = malloc(CHUNK_BYTES))) return XC_ENOMEM;
    for (int i = 0; i < n && !rc; i++) {
        xc_state_view_t *f = sh->full ? full_view(fv, nf, v[i].name) : NULL;
        if (sh->full && !f) {
            snprintf(sh->err, sizeof sh->err, "state view %s has no unsharded counterpart", v[i].name);
            rc = XC_EINVAL;
            break;
        }
        if (!v[i].sharded) {
            if (f) memcpy(v[i].data, f->data, v[i].bytes);
            rc = fail(sh, sh->c->bcast(sh->c, v[i].data, v[i].bytes, 0), v[i].name);
            continue;
        }
        size_t row = row_bytes(&v[i]), total = row * (size_t)sh->F;
        size_t mlo = row * (size_t)sh->lo, mhi = mlo + v[i].bytes;
        for (size_t off = 0; off < total && !rc; off += CHUNK_BYTES) {
            size_t len = total - off < CHUNK_BYTES ? total - off : CHUNK_BYTES;
            uint8_t *piece = f ? (uint8_t *)f->data + off : tmp;
            rc = fail(sh, sh->c->bcast(sh->c, piece, len, 0), v[i].name);
            size_t a = off > mlo ? off : mlo, b = off + len < mhi ? off + len : mhi;
            if (!rc && a < b) memcpy((uint8_t *)v[i].data + (a - mlo), piece + (a - off), b - a);
        }
    }
    free(tmp);
    if (!rc) xc_engine_state_restored(sh->e);
    return rc;
}

/* The step's selection: every rank's entries (global latent indices, its own
 * slice's) to rank 0, which merges them per token in rank order: latents
 * ascend within a token as with one process. */
static int gather_selection(xc_shard_t *sh)
{
    const xc_engine_config_t *ec = xc_engine_config(sh->e);
    long B = ec->batch_size;
    const long *rp = NULL;
    const int *col = NULL;
    const float *val = NULL;
    long nnz = xc_engine_selection(sh->e, &rp, &col, &val);
    if (nnz < 0) nnz = 0;
    int64_t mine = nnz, *counts = NULL;
    int rc;
    /* packed: int32 per-token counts (B), then (int32 latent, float value) per entry */
    size_t bytes = (size_t)B * 4 + (size_t)nnz * 8;
    if ((rc = grow((void **)&sh->pack, &sh->pack_cap, bytes))) return rc;
    int32_t *cnt = (int32_t *)sh->pack;
    uint8_t *ent = sh->pack + (size_t)B * 4;
    for (long b = 0; b < B; b++) cnt[b] = nnz ? (int32_t)(rp[b + 1] - rp[b]) : 0;
    for (long p = 0; p < nnz; p++) {
        int32_t j = col[p];
        memcpy(ent + (size_t)p * 8, &j, 4);
        memcpy(ent + (size_t)p * 8 + 4, &val[p], 4);
    }
    if (sh->rank == 0 && !(counts = malloc(sizeof *counts * (size_t)sh->size))) return XC_ENOMEM;
    for (int r = 0; r < sh->size; r++) sh->rb[r] = sizeof(int64_t);
    rc = fail(sh, sh->c->gatherv(sh->c, &mine, sizeof mine, counts, sh->rb, 0), "selection sizes");
    uint8_t *all = NULL; /* owned here (rank 0) */
    size_t total = 0;
    if (!rc && sh->rank == 0) {
        for (int r = 0; r < sh->size; r++) total += sh->rb[r] = (size_t)B * 4 + (size_t)counts[r] * 8;
        if (!(all = malloc(total ? total : 1))) rc = XC_ENOMEM;
    }
    /* (rank 0 out of memory leaves the gather: the others time out, the job ends) */
    if (!rc) rc = fail(sh, sh->c->gatherv(sh->c, sh->pack, bytes, all, sh->rb, 0), "selection");
    if (!rc && sh->rank == 0) {
        long K = 0;
        for (int r = 0; r < sh->size; r++) K += counts[r];
        if (K > sh->sel_cap) {
            int *nc = realloc(sh->sel_col, sizeof *nc * (size_t)K);
            if (nc) sh->sel_col = nc;
            float *nv = realloc(sh->sel_val, sizeof *nv * (size_t)K);
            if (nv) sh->sel_val = nv;
            if (!nc || !nv) rc = XC_ENOMEM;
            else sh->sel_cap = K;
        }
        if (!rc) {
            /* offsets of every rank's block, and a cursor into its entries */
            size_t off = 0;
            long q = 0;
            uint8_t **blk = malloc(sizeof *blk * (size_t)sh->size);
            long *cur = calloc((size_t)sh->size, sizeof *cur);
            if (!blk || !cur) rc = XC_ENOMEM;
            for (int r = 0; r < sh->size && !rc; r++) blk[r] = all + off, off += sh->rb[r];
            for (long b = 0; b < B && !rc; b++) {
                sh->sel_rp[b] = q;
                for (int r = 0; r < sh->size; r++) {
                    int32_t c;
                    memcpy(&c, blk[r] + (size_t)b * 4, 4);
                    const uint8_t *es = blk[r] + (size_t)B * 4;
                    for (int32_t i = 0; i < c; i++, cur[r]++) {
                        memcpy(&sh->sel_col[q], es + (size_t)cur[r] * 8, 4);
                        memcpy(&sh->sel_val[q], es + (size_t)cur[r] * 8 + 4, 4);
                        q++;
                    }
                }
            }
            sh->sel_rp[B] = q;
            sh->sel_nnz = rc ? 0 : q;
            free(blk);
            free(cur);
        }
    }
    if (rc) sh->sel_nnz = 0;
    free(all);
    free(counts);
    return rc;
}

/* The end of every command: each rank's result and counters to rank 0. The
 * command's result is the first failure of any rank. */
static int finish(xc_shard_t *sh, int rc)
{
    report_t me = {(double)rc, sh->step_ms, sh->c->seconds, (double)sh->c->bytes};
    for (int r = 0; r < sh->size; r++) sh->rb[r] = sizeof(report_t);
    if (rc == XC_ECOLL) return rc; /* the transport is gone: nothing more can be said */
    int g = sh->c->gatherv(sh->c, &me, sizeof me, sh->rep, sh->rb, 0);
    if (g) return fail(sh, g, "report");
    if (sh->rank != 0) return rc;
    for (int r = 0; r < sh->size && !rc; r++)
        if (sh->rep[r].rc != 0) {
            rc = (int)sh->rep[r].rc;
            if (!sh->err[0]) snprintf(sh->err, sizeof sh->err, "rank %d failed a command: %s", r, xc_strerror(rc));
        }
    sh->last_cmd = mono_s();
    return rc;
}

/* Runs one command on this rank (rank 0 after broadcasting it). x: the TRAIN
 * batch (rank 0: the trainer's; others: received into a buffer here). */
static int run_cmd(xc_shard_t *sh, const cmd_t *cmd, float *x, xc_scaling_t **pass, void *out0, void *out1,
                   int *step_rc, int *add_rc)
{
    const xc_engine_config_t *ec = xc_engine_config(sh->e);
    int rc = XC_OK;
    switch (cmd->op) {
    case CMD_TRAIN: {
        size_t bytes = sizeof(float) * (size_t)ec->batch_size * 2 * (size_t)ec->d;
        rc = fail(sh, sh->c->bcast(sh->c, x, bytes, 0), "batch");
        if (rc) break;
        int arc = XC_OK, src;
        if ((cmd->flags & CMD_FEED) && pass && *pass) arc = xc_scaling_add(*pass, x, ec->batch_size);
        else if (cmd->flags & CMD_FEED) arc = XC_ESTATE; /* rank 0 has a pass and this rank none */
        double t0 = mono_s();
        src = xc_engine_train_step(sh->e, x, ec->batch_size);
        sh->step_ms = (mono_s() - t0) * 1e3;
        if (step_rc) *step_rc = src;
        if (add_rc) *add_rc = arc;
        if (src == XC_ECOLL || arc == XC_ECOLL) {
            rc = fail(sh, XC_ECOLL, "training step");
            break;
        }
        if (arc && (cmd->flags & CMD_FEED) && sh->rank != 0) rc = fail(sh, arc, "exact Latent Scaling pass");
        if (!rc && src == XC_OK) rc = gather_selection(sh);
        else if (!rc) sh->sel_nnz = 0;
        break;
    }
    case CMD_SCAL_NEW: {
        int err = XC_OK;
        xc_scaling_destroy(pass);
        *pass = xc_scaling_new(sh->e, &err);
        if (!*pass) rc = fail(sh, err ? err : XC_ENOMEM, "exact Latent Scaling pass");
        break;
    }
    case CMD_SCAL_END: {
        if (cmd->flags & CMD_KEEP) {
            /* (a rank out of memory here leaves the gather: the others time out, the job ends) */
            xc_scaling_stats_t *mine = malloc(sizeof *mine * (size_t)(sh->n ? sh->n : 1)); /* owned here */
            if (!mine || !*pass) rc = mine ? XC_ESTATE : XC_ENOMEM;
            else {
                xc_scaling_result(*pass, mine);
                rc = fail(sh, gather_rows(sh, mine, out0, sizeof *mine), "exact Latent Scaling results");
            }
            free(mine);
        }
        xc_scaling_destroy(pass);
        break;
    }
    case CMD_STATS: {
        size_t nn = (size_t)(sh->n ? sh->n : 1);
        xc_latent_stats_t *lat = malloc(sizeof *lat * nn);   /* owned here */
        xc_scaling_stats_t *run = malloc(sizeof *run * nn);  /* owned here */
        if (lat && run) {
            xc_engine_latent_stats(sh->e, lat);
            xc_engine_scaling_running(sh->e, run);
            rc = fail(sh, gather_rows(sh, lat, out0, sizeof *lat), "latent statistics");
            if (!rc) rc = fail(sh, gather_rows(sh, run, out1, sizeof *run), "running Latent Scaling");
        } else {
            rc = XC_ENOMEM;
        }
        free(lat);
        free(run);
        break;
    }
    case CMD_GATHER: rc = do_gather(sh); break;
    case CMD_SCATTER: rc = do_scatter(sh); break;
    case CMD_PING:
    case CMD_STOP: break;
    default: rc = XC_EPROTO; snprintf(sh->err, sizeof sh->err, "rank %d: unknown command %d", sh->rank, cmd->op);
    }
    return finish(sh, rc);
}

/* ------------------------------------------------------------ rank 0 -- */
static int lead(xc_shard_t *sh, int op, int flags, float *x, xc_scaling_t **pass, void *o0, void *o1, int *step_rc,
                int *add_rc)
{
    cmd_t cmd = {op, flags, 0};
    double c0 = sh->c->seconds;
    uint64_t b0 = sh->c->bytes;
    if (sh->rank != 0) return XC_EINVAL;
    int rc = fail(sh, sh->c->bcast(sh->c, &cmd, sizeof cmd, 0), "command");
    if (!rc) rc = run_cmd(sh, &cmd, x, pass, o0, o1, step_rc, add_rc);
    if (op == CMD_TRAIN) { /* a step's whole traffic: command, batch, the step's collectives, selection, reports */
        sh->step_comm_s = sh->c->seconds - c0;
        sh->step_comm_b = sh->c->bytes - b0;
    }
    return rc;
}

int xc_shard_scatter(xc_shard_t *sh) { return lead(sh, CMD_SCATTER, 0, NULL, NULL, NULL, NULL, NULL, NULL); }
int xc_shard_gather(xc_shard_t *sh) { return lead(sh, CMD_GATHER, 0, NULL, NULL, NULL, NULL, NULL, NULL); }
int xc_shard_ping(xc_shard_t *sh) { return lead(sh, CMD_PING, 0, NULL, NULL, NULL, NULL, NULL, NULL); }
int xc_shard_stop(xc_shard_t *sh) { return lead(sh, CMD_STOP, 0, NULL, NULL, NULL, NULL, NULL, NULL); }

int xc_shard_train(xc_shard_t *sh, const float *x, long B, xc_scaling_t *pass, int *step_rc, int *add_rc)
{
    (void)B;
    *step_rc = *add_rc = XC_OK;
    xc_scaling_t *p = pass;
    /* the batch is only read (rank 0 broadcasts from it) */
    return lead(sh, CMD_TRAIN, pass ? CMD_FEED : 0, (float *)x, &p, NULL, NULL, step_rc, add_rc);
}

long xc_shard_selection(const xc_shard_t *sh, const long **row_ptr, const int **col, const float **val)
{
    if (row_ptr) *row_ptr = sh->sel_rp;
    if (col) *col = sh->sel_col;
    if (val) *val = sh->sel_val;
    return sh->sel_nnz;
}

int xc_shard_scaling_new(xc_shard_t *sh, xc_scaling_t **pass)
{
    return lead(sh, CMD_SCAL_NEW, 0, NULL, pass, NULL, NULL, NULL, NULL);
}

int xc_shard_scaling_end(xc_shard_t *sh, xc_scaling_t **pass, xc_scaling_stats_t *out)
{
    return lead(sh, CMD_SCAL_END, out ? CMD_KEEP : 0, NULL, pass, out, NULL, NULL, NULL);
}

int xc_shard_stats(xc_shard_t *sh, xc_latent_stats_t *lat, xc_scaling_stats_t *run)
{
    return lead(sh, CMD_STATS, 0, NULL, NULL, lat, run, NULL, NULL);
}

void xc_shard_report(const xc_shard_t *sh, xc_shard_report_t *out)
{
    memset(out, 0, sizeof *out);
    out->ranks = sh->size;
    out->ranks_shown = sh->size < XC_SHARD_REPORT_RANKS ? sh->size : XC_SHARD_REPORT_RANKS;
    for (int r = 0; r < sh->size; r++) {
        if (r < XC_SHARD_REPORT_RANKS) out->step_ms[r] = sh->rep[r].step_ms;
        if (sh->rep[r].step_ms > out->step_ms_max) out->step_ms_max = sh->rep[r].step_ms;
    }
    out->comm_ms = sh->step_comm_s * 1e3;
    out->comm_bytes = sh->step_comm_b;
    out->comm_bytes_total = sh->c->bytes;
}

/* ------------------------------------------------------------ ranks > 0 -- */
int xc_shard_follow(xc_shard_t *sh, double timeout_s)
{
    const xc_engine_config_t *ec = xc_engine_config(sh->e);
    float *x = malloc(sizeof(float) * (size_t)ec->batch_size * 2 * (size_t)ec->d); /* owned here */
    int rc = XC_OK;
    if (!x) return XC_ENOMEM;
    /* the first command (the model's slices) follows rank 0's loading of a
     * checkpoint, which may take long; later ones come at least every second */
    if (sh->mpi) xc_coll_mpi_set_timeout(sh->c, timeout_s > 3600 ? timeout_s : 3600);
    for (int first = 1;; first = 0) {
        cmd_t cmd;
        /* idle between commands: nap instead of spinning; spin again while a command runs */
        if (sh->mpi) xc_coll_mpi_set_spin(sh->c, 0.002);
        rc = fail(sh, sh->c->bcast(sh->c, &cmd, sizeof cmd, 0), "waiting for rank 0's next command");
        if (sh->mpi) xc_coll_mpi_set_spin(sh->c, 1e30);
        if (first && sh->mpi) xc_coll_mpi_set_timeout(sh->c, timeout_s);
        if (rc) break;
        rc = run_cmd(sh, &cmd, x, &sh->pass, NULL, NULL, NULL, NULL);
        if (rc || cmd.op == CMD_STOP) break;
    }
    free(x);
    return rc;
}
