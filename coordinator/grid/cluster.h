/* The coordinator's view of a worker grid, and the embedded launcher that runs the whole
 * grid as threads of this process over the in-process transport (`dsr1 run --workers N
 * --pp P`). The same worker loop and control messages serve the multi-process cluster.
 *
 * Grid: pp pipeline stages x ep = workers / pp expert-parallel ranks per stage. Stage s
 * holds layers [s*L/pp, (s+1)*L/pp); EP rank e holds the routed experts the placement
 * table gives it (balanced contiguous blocks by default) plus everything replicated.
 * Sequences are attention-data-parallel (see grid.h): a sequence with a block table lives on
 * its EP rank, one without, in cache slot q, on EP rank q % ep (local slot q / ep). */
#ifndef DSR1_CLUSTER_H
#define DSR1_CLUSTER_H

#include <stdint.h>

#include "ckpt.h"
#include "grid.h"
#include "forward.h"
#include "kernels.h"

/* How the workers are reached. INPROC and UCX start them as threads of this process (UCX:
 * over loopback, to exercise that transport without a launcher); MPI attaches to worker
 * processes started beside this one by mpirun or srun (this process must be MPI rank 0;
 * the world size gives the number of workers; the steps travel over UCX). */
typedef enum {
    DSR1_TRANSPORT_INPROC = 0,
    DSR1_TRANSPORT_UCX = 1,
    DSR1_TRANSPORT_MPI = 2,
    /* no launcher: `workers` worker processes join over TCP at join_listen
     * (`dsr1-worker --join HOST:PORT`), then talk over UCX */
    DSR1_TRANSPORT_JOIN = 3,
} dsr1_transport;

typedef struct {
    const dsr1_ckpt *ckpt;              /* weights from this checkpoint (kept open by caller) */
    const dsr1_model_config *dummy_cfg; /* or random weights from this config */
    uint64_t seed;                      /* of the dummy weights */
    int workers, pp;
    const dsr1_kernels *kernels;
    int threads;    /* CPU threads shared by all workers (<= 0: all cores) */
    int n_slots;    /* cache slots in the whole grid */
    int max_tokens; /* cache capacity per slot */
    int timeout_ms; /* bound on every wait for a peer */
    int transport;  /* dsr1_transport; with MPI, workers may be 0 (taken from the job) */
    /* > 0: every worker has a paged cache of kv_blocks blocks of block_tokens tokens (its
     * EP rank's pool; n_slots and max_tokens unused) and every sequence brings its block
     * table and rank. 0: slot mode (n_slots, max_tokens). */
    int kv_blocks;
    int block_tokens;
    /* copies of every routed expert in each stage (--expert-replicas; < 1: 1), on different
     * EP ranks (and hosts, under MPI) so that the grid survives lost workers: with UCX or
     * MPI a lost worker costs its lane, not the service (grid.h) */
    int replicas;
    /* "HOST:PORT" where worker processes may join (`dsr1-worker --join`): with UCX or MPI, a
     * replacement for a lost worker (capacity comes back in the next epoch); with
     * DSR1_TRANSPORT_JOIN, every worker. NULL: none. */
    const char *join_listen;
} dsr1_cluster_params;

typedef struct dsr1_cluster dsr1_cluster;

dsr1_status dsr1_cluster_create(const dsr1_cluster_params *p, dsr1_cluster **out);
/* One step across the grid; same contract as dsr1_engine_forward. A worker failure is
 * returned as an error naming the worker, stage and EP rank; the grid is unusable after —
 * except with UCX or MPI, where a lost worker gives DSR1_ERR_LOST and the grid goes on
 * without it (see dsr1_grid_step). */
dsr1_status dsr1_cluster_step(dsr1_cluster *c, const dsr1_batch *b);
/* Several steps in flight (see dsr1_grid_submit / dsr1_grid_wait in grid.h). */
dsr1_status dsr1_cluster_submit(dsr1_cluster *c, const dsr1_batch *b, uint64_t *step);
dsr1_status dsr1_cluster_wait(dsr1_cluster *c, uint64_t step);
/* Shut the workers down and free everything. */
void dsr1_cluster_destroy(dsr1_cluster *c);
/* Workers in the grid (with MPI: the job's worker ranks). */
int dsr1_cluster_workers(const dsr1_cluster *c);
/* The grid's membership and which lanes (attention ranks) serve (see grid.h). */
void dsr1_cluster_membership(const dsr1_cluster *c, dsr1_grid_health *out, bool *alive);

#endif
