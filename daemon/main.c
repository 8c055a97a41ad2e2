/* xcoderd: the crosscoder training daemon. Parses the configuration (file and
 * command line, see daemon/config.c), then runs the service until SIGTERM,
 * SIGINT or a shutdown request. Exit status: 0 after a clean shutdown with its
 * checkpoint written; 1 when the final checkpoint failed; 2 on a configuration
 * or start-up error.
 *
 * Under an MPI launcher (`mpirun -np R xcoderd ...`, R > 1) rank 0 runs the
 * service and drives the other ranks; ranks > 0 run follow() below: no socket,
 * no file, no configuration of their own (rank 0 sends them the model's).
 * A job that lost a rank ends with exit status 1 on every rank. */
#include "xc_coll_mpi.h"
#include "xc_config.h"
#include "xc_error.h"
#include "xc_keys.h"
#include "xc_log.h"
#include "xc_service.h"
#include "xc_shard.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

/* A rank > 0: the model's settings from rank 0, this rank's slice, then rank
 * 0's commands until it stops the job (xc_shard.h). Signals are rank 0's
 * business (mpirun forwards them to every rank): followers ignore SIGTERM and
 * SIGINT and stop when rank 0 says so, or when it is lost. */
static int follow(xc_coll_t *c)
{
    xc_shard_hello_t h;
    int err, rc;
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    memset(&h, 0, sizeof h);
    if (xc_shard_hello(c, &h)) {
        xc_log(XC_LOG_ERROR, "rank %d: no word from rank 0 (%s); ending the job", c->rank, xc_coll_mpi_error(c));
        xc_mpi_abort(1);
        return 1;
    }
    if (!h.ok) return 2; /* rank 0 did not start (it said why); the job ends */
    xc_log_set_level((xc_log_level_t)h.log_level);
    xc_coll_mpi_set_timeout(c, h.timeout_s);
    xc_engine_t *e = xc_engine_new_sharded(&h.ec, c, &err); /* owned here */
    xc_shard_t *sh = e ? xc_shard_new(c, e, NULL, &err) : NULL; /* owned here */
    if (!sh) {
        xc_log(XC_LOG_ERROR, "rank %d: cannot create its slice of the model (d = %d, dict_size = %d over %d ranks): "
               "%s; ending the job", c->rank, h.ec.d, h.ec.dict_size, c->size, xc_strerror(err));
        xc_mpi_abort(2);
        return 2;
    }
    long lo, n;
    xc_engine_shard(e, &lo, &n);
    xc_log(XC_LOG_INFO, "rank %d of %d: latents [%ld, %ld) of %d; following rank 0", c->rank, c->size, lo, lo + n,
           h.ec.dict_size);
    rc = xc_shard_follow(sh, h.timeout_s);
    if (rc) {
        xc_log(XC_LOG_ERROR, "rank %d: %s; ending the job", c->rank, xc_shard_error(sh));
        xc_mpi_abort(1);
        return 1;
    }
    xc_log(XC_LOG_INFO, "rank %d: stopped by rank 0", c->rank);
    xc_shard_destroy(&sh);
    xc_engine_destroy(&e);
    return 0;
}

static int run(int argc, char **argv, xc_coll_t *coll);

int main(int argc, char **argv)
{
    int rank = 0, size = 1, rc;
    char why[1024];
    xc_coll_t *coll = NULL; /* owned here: a sharded job's collectives */

    signal(SIGPIPE, SIG_IGN);
    if (xc_mpi_start(&argc, &argv, &rank, &size, why, sizeof why)) {
        fprintf(stderr, "xcoderd: %s\n", why);
        xc_mpi_abort(2);
        return 2;
    }
    if (size > 1) {
        /* rank 0 answers within its start-up; a follower's first wait is long */
        coll = xc_coll_mpi_new(rank ? 3600 : 120, why, sizeof why);
        if (!coll) {
            fprintf(stderr, "xcoderd: rank %d: %s\n", rank, why);
            xc_mpi_abort(2);
            return 2;
        }
    }
    rc = rank > 0 ? follow(coll) : run(argc, argv, coll);
    xc_coll_mpi_free(&coll);
    xc_mpi_finalize();
    return rc;
}

/* Rank 0 (or the only process): tells the followers whether it started. */
static void hello(xc_coll_t *coll, const xc_cfg_t *cfg, int ok)
{
    xc_shard_hello_t h;
    if (!coll) return;
    memset(&h, 0, sizeof h);
    if (ok) {
        xc_cfg_engine(cfg, &h.ec);
        h.timeout_s = cfg->mpi_timeout;
        h.log_level = (int)cfg->log_level;
        h.ok = 1;
        xc_coll_mpi_set_timeout(coll, cfg->mpi_timeout);
    }
    if (xc_shard_hello(coll, &h)) {
        xc_log(XC_LOG_ERROR, "cannot reach the other ranks: %s", xc_coll_mpi_error(coll));
        xc_mpi_abort(2);
    }
}

static int run(int argc, char **argv, xc_coll_t *coll)
{
    xc_cfg_t cfg;
    xc_cfg_cli_t cli;
    char why[1024];
    int err;

    /* whatever the caller's umask: run_dir, sockets, checkpoints and log are
     * 0750/0640 at most (shm_mode and the metrics file set their modes) */
    umask(umask(0) | 027);
    if (argc >= 2 && strcmp(argv[1], "--keygen") == 0) {
        /* the daemon's CURVE key pair: BASE.key (secret, 0600) and BASE.pub */
        xc_keypair_t kp;
        hello(coll, NULL, 0);
        if (argc != 3) {
            fprintf(stderr, "usage: xcoderd --keygen BASE  (writes BASE.key and BASE.pub)\n");
            return 2;
        }
        if (xc_keys_generate(&kp, why, sizeof why) || xc_keys_write(argv[2], &kp, why, sizeof why)) {
            fprintf(stderr, "xcoderd: %s\n", why);
            return 2;
        }
        printf("wrote %s.key (secret, mode 0600) and %s.pub\npublic key: %s\n", argv[2], argv[2],
               kp.public_z85);
        return 0;
    }
    if (xc_cfg_load(&cfg, argc, argv, &cli, why, sizeof why)) {
        hello(coll, NULL, 0);
        fprintf(stderr, "xcoderd: %s\n", why);
        return 2;
    }
    if (cli.help || cli.print_example || cli.print_config) hello(coll, NULL, 0);
    if (cli.help) {
        xc_cfg_print_help(stdout, argv[0]);
        return 0;
    }
    if (cli.print_example) {
        xc_cfg_print_file(stdout, NULL);
        return 0;
    }
    if (cli.print_config) {
        xc_cfg_print_file(stdout, &cfg);
        return 0;
    }
    xc_log_set_level(cfg.log_level);
    if (xc_svc_open_log(cfg.log_file, why, sizeof why)) {
        hello(coll, NULL, 0);
        fprintf(stderr, "xcoderd: %s\n", why);
        return 2;
    }
    hello(coll, &cfg, 1);
    xc_svc_t *svc = xc_svc_new_sharded(&cfg, coll, argc, argv, &err, why, sizeof why);
    if (!svc) {
        xc_log(XC_LOG_ERROR, "cannot start: %s", why);
        xc_mpi_abort(2); /* the other ranks wait for the model: end the job */
        return 2;
    }
    int rc = xc_svc_run(svc);
    xc_svc_destroy(&svc);
    if (rc) {
        xc_log(XC_LOG_ERROR, "exiting after a failed shutdown: %s", xc_strerror(rc));
        if (coll) xc_mpi_abort(1); /* ranks that did not get STOP would wait for their timeout */
        return 1;
    }
    xc_log(XC_LOG_INFO, "exiting cleanly");
    return 0;
}
