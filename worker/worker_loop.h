/* A worker's serving loop: receive a STEP plan from the coordinator, run the step for the
 * sequences of this worker's attention-data-parallel rank (hidden states in from the
 * previous pipeline stage or embedded here, MoE through the stage's expert-parallel group),
 * pass hidden states to the next stage or, on the last stage, return the logit rows.
 * The worker makes no scheduling decisions. Ends on SHUTDOWN, or on an error, after
 * telling the coordinator (an ERROR message naming this rank) and aborting its
 * expert-parallel group so that no peer waits for it. */
#ifndef DSR1_WORKER_LOOP_H
#define DSR1_WORKER_LOOP_H

#include "comm.h"
#include "forward.h"

/* Message tags on the world group. */
enum { DSR1_TAG_CTRL = 1, DSR1_TAG_HIDDEN = 2, DSR1_TAG_RESULT = 3 };

/* World ranks: 0 is the coordinator, worker (stage s, EP index e) is 1 + s * ep + e. */
static inline int dsr1_world_rank(int stage, int ep_index, int ep)
{
    return 1 + stage * ep + ep_index;
}

typedef struct {
    int stage, n_stages, ep_index, ep_size;
    dsr1_comm *world;        /* coordinator + all workers */
    dsr1_comm *ep;           /* this stage's EP group (rank = ep_index), NULL when ep_size 1 */
    const int *expert_owner; /* [n_routed_experts] -> EP index */
    dsr1_engine *engine;
    const dsr1_model_config *cfg;
} dsr1_worker;

/* Serve steps until SHUTDOWN (DSR1_OK) or an error (returned after reporting it). */
dsr1_status dsr1_worker_serve(dsr1_worker *w);

#endif
