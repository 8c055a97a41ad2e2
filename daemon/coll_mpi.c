/* The engine's collective table over MPI (xc_coll_mpi.h).
 *
 * Why non-blocking collectives polled against a deadline rather than MPI's
 * blocking calls: a blocking MPI_Allreduce waits forever for a peer that
 * stopped (a hung rank, a stalled link), and the job would hang silently. Each
 * operation here is started with MPI_I*, then tested until it completes or the
 * table's timeout passes; a timeout or an MPI error becomes XC_ECOLL with the
 * reason kept for the log, and the daemon ends the job (xc_mpi_abort).
 *
 * Why float sums go through reduce-to-0 then broadcast: MPI does not promise
 * that an all-reduce of floats gives every rank the same bits (the combination
 * order may differ per rank), and replicated state (b_dec, its Adam moments,
 * theta) must stay bit-identical on every rank or the shards drift apart. One
 * rank's result, broadcast, is identical everywhere by construction. Maxima,
 * minima and integer sums are exact in any order and use MPI_Iallreduce. */
#include "xc_coll_mpi.h"
#include "xc_error.h"
#include "xc_log.h"

#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int xc_mpi_launched(void)
{
    /* OpenMPI's mpirun, and the PMI/PMIx of Slurm's srun and other launchers. */
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        if (getenv(vars[i])) return 1;
    return 0;
}

#ifdef XC_HAVE_MPI
#include <mpi.h>

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The table's own state (c->impl); owned by the table. */
typedef struct {
    double timeout_s;
    double spin_s; /* spin this long in a wait before napping (xc_coll_mpi_set_spin) */
    char err[256];
} coll_mpi_t;

static int mpi_running = 0;

int xc_mpi_start(int *argc, char ***argv, int *rank, int *size, char *why, size_t why_len)
{
    *rank = 0;
    *size = 1;
    if (!xc_mpi_launched()) return 0;
    /* SERIALIZED: the trainer thread makes the collective calls while main()
     * initialised MPI; never two threads at once. */
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS) {
        xc_why(why, why_len, "MPI_Init_thread failed: is this process started by mpirun?");
        return XC_ESYS;
    }
    mpi_running = 1;
    if (provided < MPI_THREAD_SERIALIZED) {
        xc_why(why, why_len, "this MPI library gives thread level %d, xcoderd needs MPI_THREAD_SERIALIZED (%d)",
               provided, MPI_THREAD_SERIALIZED);
        return XC_ECONFIG;
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, rank);
    MPI_Comm_size(MPI_COMM_WORLD, size);
    return 0;
}

void xc_mpi_finalize(void)
{
    if (!mpi_running) return;
    mpi_running = 0;
    MPI_Finalize();
}

void xc_mpi_abort(int code)
{
    if (mpi_running) MPI_Abort(MPI_COMM_WORLD, code);
}

static int fail(xc_coll_t *c, const char *what, int mrc)
{
    coll_mpi_t *m = c->impl;
    char msg[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    if (mrc != MPI_SUCCESS) MPI_Error_string(mrc, msg, &len);
    /* the reason is cut to the buffer (a full MPI error string may not fit) */
    int n = snprintf(m->err, sizeof m->err, "rank %d of %d: %s", c->rank, c->size, what);
    if (len && n > 0 && (size_t)n < sizeof m->err)
        snprintf(m->err + n, sizeof m->err - (size_t)n, ": %.*s", (int)(sizeof m->err - (size_t)n), msg);
    xc_log(XC_LOG_ERROR, "mpi: %s", m->err);
    return XC_ECOLL;
}

/* Waits for a started operation until it completes or the deadline passes.
 * MPI's non-blocking collectives advance only inside MPI calls: a large
 * broadcast or reduction runs as many rounds, each started by an MPI_Test, so a
 * wait that naps between tests makes every round cost a nap (bench_mpi saw a
 * 39 MB step exchange take 2.2 s instead of 54 ms). So a wait spins (MPI_Test,
 * yielding the core to the process's other threads) for spin_s, which is the
 * whole timeout inside a step, and only a wait expected to be idle (a follower
 * waiting for rank 0's next command: xc_coll_mpi_set_spin) sleeps in growing
 * slices up to 1 ms after its spin budget. */
static int wait_req(xc_coll_t *c, MPI_Request *req, const char *what, double t0)
{
    coll_mpi_t *m = c->impl;
    double deadline = t0 + m->timeout_s;
    long nap_ns = 20000;
    for (;;) {
        int done = 0;
        int mrc = MPI_Test(req, &done, MPI_STATUS_IGNORE);
        if (mrc != MPI_SUCCESS) return fail(c, what, mrc);
        if (done) return 0;
        double now = mono_s();
        if (now > deadline) {
            char w[160];
            snprintf(w, sizeof w, "%s made no progress for %.1f s (a peer rank died, hung or lost its link)", what,
                     m->timeout_s);
            /* The request cannot be completed; leave it (the job ends). */
            return fail(c, w, MPI_SUCCESS);
        }
        if (now - t0 > m->spin_s) {
            struct timespec ts = {0, nap_ns};
            nanosleep(&ts, NULL);
            if (nap_ns < 1000000) nap_ns *= 2;
        } else {
            sched_yield();
        }
    }
}

static MPI_Datatype mpi_type(xc_coll_type_t t, size_t *sz)
{
    switch (t) {
    case XC_COLL_F32: *sz = 4; return MPI_FLOAT;
    case XC_COLL_F64: *sz = 8; return MPI_DOUBLE;
    case XC_COLL_I64: *sz = 8; return MPI_INT64_T;
    case XC_COLL_U64: *sz = 8; return MPI_UINT64_T;
    }
    *sz = 0;
    return MPI_DATATYPE_NULL;
}

static void account(xc_coll_t *c, uint64_t bytes, double t0)
{
    c->bytes += bytes;
    c->seconds += mono_s() - t0;
    c->calls++;
}

static int mpi_allreduce(xc_coll_t *c, void *buf, long n, xc_coll_type_t t, xc_coll_op_t op)
{
    size_t sz;
    MPI_Datatype dt = mpi_type(t, &sz);
    if (dt == MPI_DATATYPE_NULL || n < 0 || n > INT_MAX) return XC_EINVAL;
    if (n == 0 || c->size == 1) return 0;
    MPI_Op mop = op == XC_COLL_SUM ? MPI_SUM : op == XC_COLL_MAX ? MPI_MAX : MPI_MIN;
    double t0 = mono_s();
    MPI_Request req;
    int rc;
    if (op == XC_COLL_SUM && (t == XC_COLL_F32 || t == XC_COLL_F64)) {
        int mrc = MPI_Ireduce(c->rank == 0 ? MPI_IN_PLACE : buf, c->rank == 0 ? buf : NULL, (int)n, dt, mop, 0,
                              MPI_COMM_WORLD, &req);
        if (mrc != MPI_SUCCESS) return fail(c, "reduce", mrc);
        if ((rc = wait_req(c, &req, "reduce", t0))) return rc;
        mrc = MPI_Ibcast(buf, (int)n, dt, 0, MPI_COMM_WORLD, &req);
        if (mrc != MPI_SUCCESS) return fail(c, "broadcast of a reduction", mrc);
        rc = wait_req(c, &req, "broadcast of a reduction", t0);
    } else {
        int mrc = MPI_Iallreduce(MPI_IN_PLACE, buf, (int)n, dt, mop, MPI_COMM_WORLD, &req);
        if (mrc != MPI_SUCCESS) return fail(c, "all-reduce", mrc);
        rc = wait_req(c, &req, "all-reduce", t0);
    }
    account(c, 2 * (uint64_t)n * sz, t0);
    return rc;
}

/* Moves `bytes` in pieces of at most INT_MAX (MPI counts are int). */
static int mpi_bcast(xc_coll_t *c, void *buf, size_t bytes, int root)
{
    if (root < 0 || root >= c->size) return XC_EINVAL;
    if (c->size == 1 || bytes == 0) return 0;
    double t0 = mono_s();
    for (size_t off = 0; off < bytes;) {
        size_t piece = bytes - off > (size_t)INT_MAX ? (size_t)INT_MAX : bytes - off;
        MPI_Request req;
        int mrc = MPI_Ibcast((char *)buf + off, (int)piece, MPI_BYTE, root, MPI_COMM_WORLD, &req);
        if (mrc != MPI_SUCCESS) return fail(c, "broadcast", mrc);
        int rc = wait_req(c, &req, "broadcast", t0);
        if (rc) return rc;
        off += piece;
    }
    account(c, bytes, t0);
    return 0;
}

/* The counts and displacements of a v-collective as MPI's ints; XC_EINVAL when
 * a contribution or the total exceeds INT_MAX bytes. counts/displs: size
 * entries, caller's. */
static int v_layout(const xc_coll_t *c, const size_t *recv_bytes, int *counts, int *displs, uint64_t *total)
{
    size_t off = 0;
    for (int r = 0; r < c->size; r++) {
        if (recv_bytes[r] > (size_t)INT_MAX || off > (size_t)INT_MAX) return XC_EINVAL;
        counts[r] = (int)recv_bytes[r];
        displs[r] = (int)off;
        off += recv_bytes[r];
    }
    *total = off;
    return off > (size_t)INT_MAX ? XC_EINVAL : 0;
}

static int mpi_gather_common(xc_coll_t *c, const void *send, size_t send_bytes, void *recv,
                             const size_t *recv_bytes, int root, int all)
{
    if (send_bytes > (size_t)INT_MAX) return XC_EINVAL;
    if (!all && (root < 0 || root >= c->size)) return XC_EINVAL;
    int *counts = NULL, *displs = NULL; /* owned here */
    uint64_t total = 0;
    int need = all || c->rank == root;
    if (need) {
        if (!recv_bytes || recv_bytes[c->rank] != send_bytes) return XC_EINVAL;
        counts = malloc(sizeof *counts * (size_t)c->size);
        displs = malloc(sizeof *displs * (size_t)c->size);
        if (!counts || !displs) {
            free(counts);
            free(displs);
            return XC_ENOMEM;
        }
        if (v_layout(c, recv_bytes, counts, displs, &total)) {
            free(counts);
            free(displs);
            return XC_EINVAL;
        }
    }
    double t0 = mono_s();
    MPI_Request req;
    int mrc = all ? MPI_Iallgatherv(send, (int)send_bytes, MPI_BYTE, recv, counts, displs, MPI_BYTE,
                                    MPI_COMM_WORLD, &req)
                  : MPI_Igatherv(send, (int)send_bytes, MPI_BYTE, recv, counts, displs, MPI_BYTE, root,
                                 MPI_COMM_WORLD, &req);
    int rc = mrc != MPI_SUCCESS ? fail(c, all ? "all-gather" : "gather", mrc)
                                : wait_req(c, &req, all ? "all-gather" : "gather", t0);
    free(counts);
    free(displs);
    if (!rc) account(c, send_bytes + (need ? total : 0), t0);
    return rc;
}

static int mpi_allgatherv(xc_coll_t *c, const void *send, size_t send_bytes, void *recv, const size_t *recv_bytes)
{
    return mpi_gather_common(c, send, send_bytes, recv, recv_bytes, 0, 1);
}

static int mpi_gatherv(xc_coll_t *c, const void *send, size_t send_bytes, void *recv, const size_t *recv_bytes,
                       int root)
{
    return mpi_gather_common(c, send, send_bytes, recv, recv_bytes, root, 0);
}

xc_coll_t *xc_coll_mpi_new(double timeout_s, char *why, size_t why_len)
{
    if (!mpi_running) {
        xc_why(why, why_len, "MPI is not running (the process was not started by mpirun)");
        return NULL;
    }
    xc_coll_t *c = calloc(1, sizeof *c);  /* owned by the caller (xc_coll_mpi_free) */
    coll_mpi_t *m = calloc(1, sizeof *m); /* owned by c */
    if (!c || !m) {
        free(c);
        free(m);
        xc_why(why, why_len, "out of memory");
        return NULL;
    }
    m->timeout_s = timeout_s > 0 ? timeout_s : 60;
    m->spin_s = 1e30; /* spin through every wait until told otherwise */
    c->impl = m;
    MPI_Comm_rank(MPI_COMM_WORLD, &c->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &c->size);
    c->allreduce = mpi_allreduce;
    c->bcast = mpi_bcast;
    c->allgatherv = mpi_allgatherv;
    c->gatherv = mpi_gatherv;
    return c;
}

#else /* no MPI in this build */

int xc_mpi_start(int *argc, char ***argv, int *rank, int *size, char *why, size_t why_len)
{
    (void)argc;
    (void)argv;
    *rank = 0;
    *size = 1;
    if (!xc_mpi_launched()) return 0;
    xc_why(why, why_len, "started by an MPI launcher, but this xcoderd was built without MPI "
                         "(install libopenmpi-dev, e.g. `make deps`, and rebuild)");
    return XC_ECONFIG;
}

void xc_mpi_finalize(void) {}
void xc_mpi_abort(int code) { (void)code; }

xc_coll_t *xc_coll_mpi_new(double timeout_s, char *why, size_t why_len)
{
    (void)timeout_s;
    xc_why(why, why_len, "this xcoderd was built without MPI");
    return NULL;
}

#endif

void xc_coll_mpi_free(xc_coll_t **c)
{
    if (!c || !*c) return;
    free((*c)->impl);
    free(*c);
    *c = NULL;
}

void xc_coll_mpi_set_timeout(xc_coll_t *c, double timeout_s)
{
#ifdef XC_HAVE_MPI
    if (c && c->impl && timeout_s > 0) ((coll_mpi_t *)c->impl)->timeout_s = timeout_s;
#else
    (void)c;
    (void)timeout_s;
#endif
}

void xc_coll_mpi_set_spin(xc_coll_t *c, double spin_s)
{
#ifdef XC_HAVE_MPI
    if (c && c->impl && spin_s >= 0) ((coll_mpi_t *)c->impl)->spin_s = spin_s;
#else
    (void)c;
    (void)spin_s;
#endif
}

const char *xc_coll_mpi_error(const xc_coll_t *c)
{
#ifdef XC_HAVE_MPI
    if (c && c->impl) return ((const coll_mpi_t *)c->impl)->err;
#else
    (void)c;
#endif
    return "";
}
