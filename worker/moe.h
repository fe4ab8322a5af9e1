/* Mixture-of-experts pieces of a MoE layer, split so that expert parallelism can insert
 * its dispatch/combine all-to-all between routing and expert computation:
 *   dsr1_moe_route()   — router scores -> top-k (expert, weight) per token (any rank);
 *   dsr1_moe_experts() — run the *owned* experts on the tokens routed to them and add
 *                        weight * output into y (a rank with a subset of experts adds its
 *                        part; the sum over ranks is the full MoE output);
 * the shared expert is a plain FFN (dsr1_ffn_forward). */
#ifndef DSR1_MOE_H
#define DSR1_MOE_H

#include "comm.h"
#include "kernels.h"
#include "weights.h"

/* y[m][hidden] = down(silu(gate x) * up x); scratch: 2 * m * inter floats. */
void dsr1_ffn_forward(const dsr1_kernels *k, dsr1_pool *pool, const dsr1_ffn_weights *f,
                      const float *x, int m, float *y, float *scratch);

/* Sigmoid / noaux_tc group-limited routing (MODEL.md "Router"): for each of m tokens,
 * ids[m][topk] and weights[m][topk] (normalised, times routed_scaling_factor). */
dsr1_status dsr1_moe_route(const dsr1_kernels *k, dsr1_pool *pool, const dsr1_model_config *cfg,
                           const dsr1_layer_weights *L, const float *x, int m, int *ids,
                           float *weights);

/* y[m][hidden] += sum over owned experts e chosen for the token of w_e * expert_e(x). */
dsr1_status dsr1_moe_experts(const dsr1_kernels *k, dsr1_pool *pool, const dsr1_model_config *cfg,
                             const dsr1_layer_weights *L, const bool *owned, const float *x, int m,
                             const int *ids, const float *weights, float *y);

/* Where a stage's routed experts are in the current epoch of the grid. */
typedef struct {
    int ranks;         /* EP ranks of the stage, live or not */
    int replicas;      /* copies of every expert */
    const int *owners; /* [n_routed_experts * replicas]: the EP rank of each copy (placement.h) */
    /* [ranks]: the rank of EP rank r in the group's comm, -1 when r is lost; NULL: r
     * itself, every rank live */
    const int *member;
} dsr1_moe_placement;

/* The same sum across an expert-parallel group: each token's hidden state is sent once to
 * every rank that serves at least one of its experts (the live copy that
 * dsr1_placement_pick chooses for the token: dispatch all-to-all), each rank runs its
 * experts on what it received and returns one weighted output row per (token, expert)
 * (combine all-to-all), and the sender adds them into y in increasing expert id, as
 * dsr1_moe_experts adds its experts — so y is bit-identical to dsr1_moe_experts on one
 * rank owning everything, whatever the placement, the number of ranks or which copies
 * are live. Collective: every live rank of `ep` calls it for the same layer, m may be 0.
 * DSR1_ERR_LOST (nothing added) when an expert of a token has no live copy. */
dsr1_status dsr1_moe_experts_ep(const dsr1_kernels *k, dsr1_pool *pool,
                                const dsr1_model_config *cfg, const dsr1_layer_weights *L,
                                const bool *owned, const dsr1_moe_placement *pl, dsr1_comm *ep,
                                const float *x, int m, const int *ids, const float *weights,
                                float *y);

#endif
