/* A worker's serving loop: receive a STEP plan from the coordinator, run the step for the
 * sequences of this worker's attention-data-parallel rank (hidden states in from the
 * previous pipeline stage or embedded here, MoE through the stage's expert-parallel group),
 * pass hidden states to the next stage or, on the last stage, sample the sequences that
 * bring a sample request and return their ids (and logprobs), and the logit rows of the
 * others.
 * The worker makes no scheduling decisions. Ends on SHUTDOWN, or on an error, after
 * telling the coordinator (an ERROR message naming this rank) and aborting its
 * expert-parallel group so that no peer waits for it. */
#ifndef DSR1_WORKER_LOOP_H
#define DSR1_WORKER_LOOP_H

#include "comm.h"
#include "ckpt.h"
#include "placement.h"
#include "forward.h"
#include "moe.h"
#include "wire.h"

/* Message tags on the world group (HIDDEN: the base of dsr1_hidden_tag). */
enum { DSR1_TAG_CTRL = 1, DSR1_TAG_HIDDEN = 2, DSR1_TAG_RESULT = 3 };

/* The tag of hidden states between stages in an epoch. */
static inline int dsr1_hidden_tag(uint32_t epoch)
{
    return DSR1_TAG_HIDDEN + 16 * (int)(epoch & 0xffffff);
}

/* World ranks: 0 is the coordinator, worker (stage s, EP index e) is 1 + s * ep + e. */
static inline int dsr1_world_rank(int stage, int ep_index, int ep)
{
    return 1 + stage * ep + ep_index;
}

/* A worker's bound on its waits on the world group, given the coordinator's: longer, so
 * that when a peer goes silent mid-step the coordinator (which waits for the step's results
 * with its own bound) finds it and regroups before the survivors give up on the
 * coordinator. */
static inline int dsr1_worker_world_timeout(int coordinator_timeout_ms)
{
    return coordinator_timeout_ms > 0 ? 2 * coordinator_timeout_ms : coordinator_timeout_ms;
}

/* Layers of pipeline stage s of pp: [s * L / pp, (s + 1) * L / pp). */
static inline int dsr1_stage_first_layer(int layers, int pp, int s)
{
    return (int)((long)s * layers / pp);
}

typedef struct {
    int stage, n_stages, ep_index, ep_size;
    int numa_node;    /* its threads' and weights' NUMA node; -1: not bound */
    dsr1_comm *world; /* coordinator + all workers */
    /* The EP group. Fixed (in-process transport): set by the launcher. With `regroup`
     * (UCX), the grid's membership protocol makes one for every epoch over the stage's live
     * workers (see dsr1_worker_serve). Hidden states travel over world, tagged with the
     * epoch (dsr1_hidden_tag) so that a dropped step's never meet a later one's. */
    dsr1_comm *ep;
    bool regroup;
    int timeout_ms;      /* of the world group; the data groups' is dsr1_ep_timeout of it */
    uint32_t epoch;      /* 0 until the first REGROUP */
    uint64_t first_step; /* STEPs before it are from an earlier epoch: dropped */
    bool broken;         /* a step failed in this epoch: steps are dropped until the next */
    bool degraded;       /* some epoch left workers out (MPI_Finalize would wait for them) */
    bool hidden_sent;    /* the step in progress has passed its hidden states on */
    /* [workers]: the world addresses CONNECTs gave (a changed one is a worker that joined
     * in a lost one's place: its world endpoint is replaced) */
    void **peer_addr;
    size_t *peer_len;
    int test_crash_alltoall; /* test hook: > 0, die halfway through that EP all-to-all */
    int *member;         /* [ep_size]: an EP index's rank in `ep`, -1 when lost */
    dsr1_moe_placement placement;
    dsr1_engine *engine;
    const dsr1_model_config *cfg;
    /* owned by dsr1_worker_init / dsr1_worker_fini */
    dsr1_weights *weights;
    dsr1_pool *pool;
    int *owners; /* [n_routed_experts * replicas] */
} dsr1_worker;

typedef struct {
    const dsr1_ckpt *ckpt;              /* weights from this checkpoint (kept open by caller) */
    const dsr1_model_config *dummy_cfg; /* or random weights made from this config */
    uint64_t seed;
    int workers, pp, stage, ep_index;
    const dsr1_kernels *kernels;
    int threads;    /* this worker's CPU threads */
    int n_slots;    /* cache slots of this worker (its attention-DP share) */
    int max_tokens; /* cache capacity per slot */
    /* > 0: a paged cache of kv_blocks blocks of block_tokens tokens (n_slots and max_tokens
     * unused); every sequence of a step then brings its block table */
    int kv_blocks;
    int block_tokens;
    int replicas;      /* copies of every routed expert in the stage (< 1: 1) */
    const int *hosts;  /* [ep]: host id of each EP index of the stage, or NULL */
    const int *owners; /* or the placement itself ([E * replicas], as the coordinator sent it) */
} dsr1_worker_params;

/* The placement every worker and the coordinator compute alike: owners[E * replicas]. */
dsr1_status dsr1_worker_placement(const dsr1_model_config *cfg, int ep, int replicas,
                                  const int *hosts, int **owners);

/* Load the slice of worker (stage, ep_index) and create its engine; world and ep comms
 * are set by the caller afterwards. */
dsr1_status dsr1_worker_init(dsr1_worker *w, const dsr1_worker_params *p);
void dsr1_worker_fini(dsr1_worker *w);

/* A sample request as a STEP sample record and back. Packing leaves the arrays out (the
 * grid copies the logit_bias pairs, the history only when a penalty reads it (the record's
 * n_history is 0 otherwise) and the token mask when there is one into the plan's sections).
 * The unpacked request borrows the record (`next`) and the arrays given, which hold its
 * n_bias, n_history and mask_words entries. */
dsr1_wire_sample dsr1_wire_sample_pack(const dsr1_seq_sample *q);
dsr1_seq_sample dsr1_wire_sample_unpack(const dsr1_wire_sample *r, const int32_t *bias_ids,
                                        const float *bias_values, const int32_t *history,
                                        const uint32_t *mask);

/* Serve steps until SHUTDOWN (DSR1_OK) or an error (returned after reporting it).
 *
 * With w->regroup the worker survives the loss of others: a step that fails is reported
 * (an ERROR naming the peer whose loss failed it, status DSR1_ERR_LOST), its data groups
 * is aborted and the next stage is told (an empty hidden-state message) so that no peer
 * waits for it, and it drops steps until the coordinator's REGROUP for a new epoch: it
 * then makes a new EP endpoint, sends its address (ADDR), connects to its stage's
 * (CONNECT) and serves the new epoch's steps. A worker
 * that the REGROUP leaves out, or that loses the coordinator, ends with an error. */
dsr1_status dsr1_worker_serve(dsr1_worker *w);

#endif
