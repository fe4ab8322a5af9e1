/* The coordinator's handle on a grid of workers reachable through a world comm (rank 0 is
 * the coordinator, worker (stage s, EP rank e) is 1 + s * ep + e). It turns a batch into
 * one STEP plan per attention-data-parallel rank, sent to that rank in every stage (the
 * last stage's with the sample requests, checked here first), and gathers the results of
 * the last stage: sampled ids and logprobs, and the logit rows of unsampled sequences. How
 * the workers were started (threads of this process, or mpirun/Slurm processes) does not
 * matter here.
 *
 * Sequences are attention-data-parallel, each on one EP rank in every stage: a sequence
 * with a block table on its `rank` (the table names blocks of that rank's cache pool), one
 * without in cache slot q on EP rank q % ep (local slot q / ep). */
#ifndef DSR1_GRID_H
#define DSR1_GRID_H

#include "comm.h"
#include "forward.h"

typedef struct dsr1_grid dsr1_grid;

/* A grid's membership. The epoch starts at 1 and grows by one at every change of the
 * live set (a worker lost, a worker joined). An attention rank ("lane") serves while its
 * worker is live in every stage. */
typedef struct {
    uint64_t epoch;
    int workers, workers_live;
    int lanes, lanes_live;
    int replicas;   /* copies of every routed expert (--expert-replicas) */
    char lost[256]; /* the lost workers, "worker 2 (stage 0, EP 2), ..."; "" when none */
} dsr1_grid_health;

typedef struct {
    int workers, pp, vocab;
    /* A grid that survives lost workers (the world group is a tolerant UCX group and the
     * workers regroup): the placement of the routed experts, the same table in every
     * stage (placement.h: owners[n_experts * replicas] over the stage's EP ranks), and the
     * world group's timeout. regroup false: a lost worker ends the grid. */
    bool regroup;
    int n_experts, replicas;
    const int *owners; /* copied */
    int timeout_ms;
} dsr1_grid_params;

/* world is borrowed and must outlive the grid. With regroup, the grid forms its first
 * epoch at once (the workers must be serving: dsr1_worker_serve). */
dsr1_status dsr1_grid_create(dsr1_comm *world, const dsr1_grid_params *p, dsr1_grid **out);
/* Send a step's plans without waiting for it (*step receives its id). The batch (its
 * sequences and output buffers) must stay valid until the step is waited for; tokens,
 * block tables and sample requests are copied into the plans.
 * Workers serve steps in submission order, each stage on its own, so with several steps
 * in flight the pipeline stages overlap; steps in flight must not depend on each other's
 * output (different sequences, or tokens known in advance). */
dsr1_status dsr1_grid_submit(dsr1_grid *g, const dsr1_batch *b, uint64_t *step);
/* Wait for the oldest step in flight (which `step` must be) and fill its outputs. */
dsr1_status dsr1_grid_wait(dsr1_grid *g, uint64_t step);
/* submit + wait. Same contract as dsr1_engine_forward. A worker failure is returned as an error
 * naming the worker, stage and EP rank, after aborting the world group so that no worker
 * waits; the grid refuses further steps.
 *
 * With regroup, a worker lost (its process gone, silent past a timeout, or named by the
 * peers whose step it failed) moves the grid to a new epoch on the survivors instead, and
 * submit, wait or step return DSR1_ERR_LOST: none of the steps in flight ran (their
 * outputs are not written), and sequences of lanes that lost a worker can no longer be
 * submitted (dsr1_grid_lanes). When the survivors cannot serve — a stage without a
 * complete lane, or an expert without a live copy in some stage — the error names what is
 * missing and the grid is failed as above. */
dsr1_status dsr1_grid_step(dsr1_grid *g, const dsr1_batch *b);
/* Joining (regroup only): the place of a lost worker for a replacement — `want` if that
 * one is lost, any lost one when want < 0 (the lowest); -1 when there is none. */
int dsr1_grid_vacancy(const dsr1_grid *g, int want);
/* Steps submitted and not yet waited for. */
int dsr1_grid_in_flight(const dsr1_grid *g);
/* A replacement for lost worker `index` is reachable at this world address (the process
 * has the same model and slice): its world endpoint is replaced and the grid moves to a
 * new epoch with it, whose lanes serve again once live in every stage. Only with no step
 * in flight. Returns DSR1_ERR_LOST, as after a loss (the caller reads the new lanes from
 * dsr1_grid_membership), or the error that failed the regroup. */
dsr1_status dsr1_grid_admit(dsr1_grid *g, int index, const void *addr, size_t len);
/* The grid's membership; alive (may be NULL) receives one flag per lane (EP rank). */
void dsr1_grid_membership(const dsr1_grid *g, dsr1_grid_health *out, bool *alive);
/* Tell every worker to exit (or abort the group when the grid failed). */
void dsr1_grid_shutdown(dsr1_grid *g);
void dsr1_grid_destroy(dsr1_grid *g);

#endif
