/* The MPI collective table (daemon/coll_mpi.c) on two ranks.
 *
 * Run directly (as the suite does), the program starts itself again under
 * `mpirun -np 2` and reports what the ranks saw; rank 0 prints the cases. It
 * checks each collective against values computed locally from what every rank
 * contributed, that float sums are bit-identical on both ranks (replicated
 * state depends on it), large and uneven gathers, the byte accounting, and that
 * a rank which stops answering turns into XC_ECOLL within the progress timeout
 * instead of a hang. Without MPI in the build, or without mpirun, it says so and
 * checks only that a launched-looking process is refused with a clear reason. */
#include "xc_coll_mpi.h"
#include "xc_error.h"
#include "xc_test.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef XC_HAVE_MPI
static xc_coll_t *C;

static void test_sum_bit_identical(void)
{
    /* values whose float sum depends on the order of addition */
    enum { N = 4099 };
    float *v = malloc(sizeof *v * N), *both = malloc(sizeof *both * 2 * N);
    double *dv = malloc(sizeof *dv * N);
    XC_REQUIRE(v && both && dv, "alloc");
    for (int i = 0; i < N; i++) {
        v[i] = (C->rank ? 1e-3f : 1e4f) * (float)((i * 7919) % 1000 - 500) / 7.0f;
        dv[i] = (double)v[i] * (C->rank + 1);
    }
    float expect0 = 0;
    for (int r = 0; r < 2; r++) expect0 += (r ? 1e-3f : 1e4f) * (float)((0 * 7919) % 1000 - 500) / 7.0f;
    XC_REQUIRE(C->allreduce(C, v, N, XC_COLL_F32, XC_COLL_SUM) == 0, "f32 sum");
    XC_REQUIRE(C->allreduce(C, dv, N, XC_COLL_F64, XC_COLL_SUM) == 0, "f64 sum");
    XC_CHECK_CLOSE(v[0], expect0, 1e-6, 1e-6);
    /* every rank's result, side by side: identical bits */
    size_t sz[2] = {sizeof *v * N, sizeof *v * N};
    XC_REQUIRE(C->allgatherv(C, v, sz[0], both, sz) == 0, "allgatherv of the sums");
    XC_CHECK(memcmp(both, both + N, sz[0]) == 0, "the two ranks hold different bits for the same float sum");
    for (int i = 0; i < N; i++) {
        double want = 0;
        for (int r = 0; r < 2; r++) want += (double)((r ? 1e-3f : 1e4f) * (float)((i * 7919) % 1000 - 500) / 7.0f) * (r + 1);
        XC_CHECK_CLOSE(dv[i], want, 1e-12, 1e-12);
    }
    free(v);
    free(both);
    free(dv);
}

static void test_max_min_int(void)
{
    int64_t a[3] = {C->rank ? -5 : 7, C->rank ? 40 : 2, (int64_t)1 << 40};
    uint64_t u[2] = {C->rank ? 3u : 1u, UINT64_MAX / 4};
    float m[2] = {C->rank ? -1.5f : 2.5f, C->rank ? 9.0f : -9.0f};
    XC_REQUIRE(C->allreduce(C, a, 3, XC_COLL_I64, XC_COLL_SUM) == 0, "i64 sum");
    XC_CHECK(a[0] == 2 && a[1] == 42 && a[2] == ((int64_t)1 << 41), "i64 sum: %lld %lld %lld", (long long)a[0],
             (long long)a[1], (long long)a[2]);
    XC_REQUIRE(C->allreduce(C, u, 2, XC_COLL_U64, XC_COLL_MAX) == 0, "u64 max");
    XC_CHECK(u[0] == 3 && u[1] == UINT64_MAX / 4, "u64 max");
    XC_REQUIRE(C->allreduce(C, m, 2, XC_COLL_F32, XC_COLL_MIN) == 0, "f32 min");
    XC_CHECK(m[0] == -1.5f && m[1] == -9.0f, "f32 min: %g %g", m[0], m[1]);
    XC_CHECK(C->allreduce(C, m, -1, XC_COLL_F32, XC_COLL_MIN) == XC_EINVAL, "a negative count is refused");
}

static void test_bcast_large(void)
{
    size_t n = (size_t)12 << 20; /* a [2048, 2, 768] float batch is 12.6 MB */
    unsigned char *b = malloc(n);
    XC_REQUIRE(b, "alloc");
    for (size_t i = 0; i < n; i++) b[i] = C->rank == 1 ? (unsigned char)(i * 31 + 7) : 0;
    uint64_t before = C->bytes;
    XC_REQUIRE(C->bcast(C, b, n, 1) == 0, "bcast from rank 1");
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += b[i] != (unsigned char)(i * 31 + 7);
    XC_CHECK(bad == 0, "%zu bytes differ after the broadcast", bad);
    XC_CHECK(C->bytes - before == n, "accounted %llu bytes for a %zu-byte broadcast",
             (unsigned long long)(C->bytes - before), n);
    XC_CHECK(C->bcast(C, b, 1, 2) == XC_EINVAL, "a root outside the job is refused");
    free(b);
}

static void test_gathers_uneven(void)
{
    /* rank 0 sends 3 bytes, rank 1 sends 100001 (the boundary candidates of a
     * selection differ per shard) */
    size_t sz[2] = {3, 100001};
    size_t mine = sz[C->rank];
    unsigned char *s = malloc(mine), *all = malloc(sz[0] + sz[1]), *g = malloc(sz[0] + sz[1]);
    XC_REQUIRE(s && all && g, "alloc");
    for (size_t i = 0; i < mine; i++) s[i] = (unsigned char)(C->rank * 100 + i % 97);
    XC_REQUIRE(C->allgatherv(C, s, mine, all, sz) == 0, "allgatherv");
    int bad = 0;
    for (size_t i = 0; i < sz[0]; i++) bad += all[i] != (unsigned char)(i % 97);
    for (size_t i = 0; i < sz[1]; i++) bad += all[sz[0] + i] != (unsigned char)(100 + i % 97);
    XC_CHECK(bad == 0, "allgatherv: %d bytes out of place", bad);
    memset(g, 0xee, sz[0] + sz[1]);
    XC_REQUIRE(C->gatherv(C, s, mine, C->rank == 1 ? g : NULL, C->rank == 1 ? sz : NULL, 1) == 0, "gatherv to 1");
    if (C->rank == 1) XC_CHECK(memcmp(g, all, sz[0] + sz[1]) == 0, "gatherv differs from allgatherv");
    size_t wrong[2] = {4, 100001};
    /* a size that does not match this rank's contribution is refused locally,
     * before any rank starts the collective */
    if (C->rank == 0) XC_CHECK(C->allgatherv(C, s, mine, all, wrong) == XC_EINVAL, "mismatched size refused");
    free(s);
    free(all);
    free(g);
}

/* Rank 1 stops answering; rank 0's next collective must give up within the
 * timeout with XC_ECOLL and a reason, then the job is aborted (the ranks'
 * states can no longer agree). The parent checks that mpirun ended. */
static void test_silent_peer(void)
{
    xc_coll_mpi_set_timeout(C, 0.5);
    if (C->rank == 1) {
        sleep(30); /* "hung": never joins; the abort below kills it */
        return;
    }
    double x = 1;
    int rc = C->allreduce(C, &x, 1, XC_COLL_F64, XC_COLL_SUM);
    XC_CHECK(rc == XC_ECOLL, "a silent peer gave %d, not XC_ECOLL", rc);
    XC_CHECK(strstr(xc_coll_mpi_error(C), "no progress") != NULL, "reason: '%s'", xc_coll_mpi_error(C));
}

/* Parent: runs this program under mpirun with `mode`, relays rank 0's lines. */
static int relaunch(const char *self, const char *mode)
{
    pid_t pid = fork();
    if (pid == 0) {
        /* OpenMPI and its runtime plugins keep allocations until exit, from
         * frames LeakSanitizer cannot name (so no suppression can match them):
         * leak checking is off in the ranks; ASan's other checks stay on. */
        const char *asan = getenv("ASAN_OPTIONS");
        char opts[512];
        snprintf(opts, sizeof opts, "%s%sdetect_leaks=0", asan ? asan : "", asan && *asan ? ":" : "");
        setenv("ASAN_OPTIONS", opts, 1);
        /* containers often forbid the cross-process copies of OpenMPI's shared-
         * memory transport (ptrace rules); plain copies work everywhere */
        setenv("OMPI_MCA_btl_vader_single_copy_mechanism", "none", 1);
        execlp("timeout", "timeout", "120", "mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", self,
               mode, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
#else
/* Without MPI in the build, a process an MPI launcher started is refused with
 * the reason (rather than running as one of R unconnected single daemons). */
static void test_launched_without_mpi_refused(void)
{
    setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
    int argc = 0, r = -1, s = -1;
    char **argv = NULL, why[256] = "";
    int rc = xc_mpi_start(&argc, &argv, &r, &s, why, sizeof why);
    XC_CHECK(rc == XC_ECONFIG && strstr(why, "without MPI"), "%d '%s'", rc, why);
    XC_CHECK(r == 0 && s == 1, "rank %d size %d", r, s);
    unsetenv("OMPI_COMM_WORLD_SIZE");
}
#endif

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : NULL;
    if (!xc_mpi_launched()) {
#ifdef XC_HAVE_MPI
        if (system("command -v mpirun >/dev/null 2>&1") != 0) {
            printf("# mpirun not found (openmpi-bin, installed by make deps): the MPI collectives were not run\n");
            printf("not ok - mpirun_present: install openmpi-bin\n");
            return 1;
        }
        int rc = relaunch(argv[0], "cases");
        printf("%s - mpi_job_exit: mpirun -np 2 exited %d\n", rc == 0 ? "ok" : "not ok", rc);
        rc = relaunch(argv[0], "silent");
        /* the job is aborted on purpose: any end but timeout's 124 (a hang) will do */
        printf("%s - mpi_silent_peer_ends_job: exit %d%s\n", rc != 0 && rc != 124 ? "ok" : "not ok", rc,
               rc == 124 ? " (hung: killed after 120 s)" : "");
        return 0;
#else
        printf("# this build has no MPI (libopenmpi-dev absent): only the refusal is checked\n");
        XC_RUN(test_launched_without_mpi_refused);
        XC_TEST_EXIT();
#endif
    }
#ifdef XC_HAVE_MPI
    int rank, size;
    char why[256] = "";
    if (xc_mpi_start(&argc, &argv, &rank, &size, why, sizeof why) || size != 2) {
        printf("not ok - mpi_start: %s (size %d)\n", why, size);
        return 1;
    }
    C = xc_coll_mpi_new(20, why, sizeof why);
    if (!C) {
        printf("not ok - coll_new: %s\n", why);
        xc_mpi_abort(1);
    }
    if (rank != 0) {
        /* rank 1's checks report through rank 0's lines: keep its output quiet */
        if (!freopen("/dev/null", "w", stdout)) return 1;
    }
    if (mode && strcmp(mode, "silent") == 0) {
        XC_RUN(test_silent_peer);
        fflush(stdout);
        xc_mpi_abort(3);
        return 3;
    }
    XC_RUN(test_sum_bit_identical);
    XC_RUN(test_max_min_int);
    XC_RUN(test_bcast_large);
    XC_RUN(test_gathers_uneven);
    /* a failure on rank 1 must reach rank 0's report */
    int64_t f = xc_test_total_fail_;
    C->allreduce(C, &f, 1, XC_COLL_I64, XC_COLL_SUM);
    if (rank == 0 && f != xc_test_total_fail_) printf("not ok - rank_1_cases: %lld failed on rank 1\n", (long long)(f - xc_test_total_fail_));
    xc_coll_mpi_free(&C);
    xc_mpi_finalize();
    return f ? 1 : 0;
#else
    (void)mode;
    return 1;
#endif
}
