/* The MPI implementation of the engine's collective table (engine/xc_coll.h).
 *
 * `mpirun -np R xcoderd ...` starts R processes; each calls xc_mpi_start() before
 * anything else, which initialises MPI when the process was started by an MPI
 * launcher (mpirun, srun, a hostfile...) and otherwise leaves the daemon a
 * single-process one without touching MPI at all. The collectives run as MPI's
 * non-blocking operations polled against a deadline, so a peer that died or
 * stopped answering turns into XC_ECOLL (with the reason logged) instead of a
 * hang; the caller then ends the job with xc_mpi_abort().
 *
 * Built only when OpenMPI's headers are present (the Makefile defines
 * XC_HAVE_MPI); otherwise every function here reports that MPI is absent. */
#ifndef XC_COLL_MPI_H
#define XC_COLL_MPI_H

#include "xc_coll.h"

#include <stddef.h>

/* 1 when this build has MPI and the process was started by an MPI launcher
 * (the launcher's environment says so); reads the environment only. */
int xc_mpi_launched(void);

/* Initialises MPI (threads: the calling thread makes every MPI call) when
 * xc_mpi_launched(); sets *rank and *size (0 and 1 otherwise). 0, or XC_ESYS /
 * XC_ECONFIG with the reason in why (a launched process in a build without MPI,
 * MPI_Init_thread failing). Call once, first thing in main. */
int xc_mpi_start(int *argc, char ***argv, int *rank, int *size, char *why, size_t why_len);

/* The collective table over MPI_COMM_WORLD, progress timeout `timeout_s` seconds
 * (a collective that has not completed by then returns XC_ECOLL). NULL with the
 * reason in why when MPI is not running. The caller owns the table: free it with
 * xc_coll_mpi_free after every engine using it is destroyed. */
xc_coll_t *xc_coll_mpi_new(double timeout_s, char *why, size_t why_len);
void xc_coll_mpi_free(xc_coll_t **c);
/* Changes the progress timeout (e.g. a follower waiting for its next command
 * while rank 0 is idle uses a longer one). */
void xc_coll_mpi_set_timeout(xc_coll_t *c, double timeout_s);
/* How long a wait spins (driving MPI's progress at full speed) before it
 * sleeps between tests: by default the whole timeout, as inside a training
 * step; a wait expected to be idle (a follower waiting for its next command)
 * sets a short spin so an idle job costs no CPU, then restores it with 1e30. */
void xc_coll_mpi_set_spin(xc_coll_t *c, double spin_s);
/* The reason of the last XC_ECOLL on this table ("" if none). */
const char *xc_coll_mpi_error(const xc_coll_t *c);

/* Ends MPI: xc_mpi_finalize after an orderly stop of every rank; xc_mpi_abort
 * when a peer is lost (terminates every rank of the job with code). No-ops when
 * MPI is not running. */
void xc_mpi_finalize(void);
void xc_mpi_abort(int code);

#endif
