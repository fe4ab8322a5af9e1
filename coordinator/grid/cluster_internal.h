/* The cluster's state, shared by cluster.c (the launchers) and join.c (workers joining
 * over TCP). Not for use outside coordinator/grid. */
#ifndef DSR1_CLUSTER_INTERNAL_H
#define DSR1_CLUSTER_INTERNAL_H

#include <pthread.h>

#include "cluster.h"
#include "grid.h"
#include "rendezvous.h"
#include "worker_loop.h"

typedef struct {
    dsr1_worker w;
    pthread_t thread;
    int started;
    dsr1_status result;
} worker_slot;

struct dsr1_cluster {
    int workers, pp, ep;
    dsr1_comm **world;    /* [workers + 1], rank 0 is the coordinator's */
    dsr1_comm **ep_comms; /* [workers]: stage s, index e at s * ep + e */
    worker_slot *slots;
    dsr1_grid *grid;
    int transport, failed;
    void *mpi;     /* dsr1_mpi of the MPI transport */
    int mpi_clean; /* every rank can still reach MPI_Finalize */
    /* joining (join_listen): what a joining worker is told and checked against */
    dsr1_rdv *rdv;
    dsr1_cluster_params p; /* the scalars (n_slots, kv_blocks, ...; timeout_ms resolved) */
    uint64_t config_hash;
    int *owners; /* [n_owners]: the placement every worker loads */
    int n_owners;
    int *crash_a2a; /* [workers]: test hook, die in that EP all-to-all (embedded UCX) */
};

/* join.c: listen for joining workers at hostport. */
dsr1_status dsr1__join_listen(dsr1_cluster *c, const char *hostport);
/* join.c (DSR1_TRANSPORT_JOIN): the coordinator's world group with every worker unknown,
 * then places for the first `workers` JOINs (the placement made from their hosts) and
 * their READYs, each replacing its world endpoint. Waits for them without a bound, with a
 * log line now and then. */
dsr1_status dsr1__join_start(dsr1_cluster *c, const dsr1_model_config *cfg);
/* join.c, between steps (no step in flight): answers the JOINs waiting; a READY for a lost
 * worker's place is admitted into the grid (dsr1_grid_admit: DSR1_ERR_LOST, a new epoch). */
dsr1_status dsr1__join_poll(dsr1_cluster *c);

#endif
