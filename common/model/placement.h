/* Expert placement: which expert-parallel ranks of a stage hold each routed expert.
 *
 * A table, not arithmetic spread through the code, so that redundant copies
 * (`--expert-replicas R`) or uneven rank counts only change how the table is filled. The
 * engine, the grid's coverage check and `dsr1 inspect`'s memory report all use these
 * functions.
 *
 * With R copies, owners[x * R + c] is the EP rank of copy c of expert x. Copy 0 is the
 * balanced contiguous block (dsr1_placement_balanced); the copies of one expert are on
 * different ranks and, where the hosts allow, on different hosts, so that losing one host
 * loses at most one copy of any expert. Which copy serves a token is chosen per token
 * among the live ones (dsr1_placement_pick): deterministic, and balanced over the batch. */
#ifndef DSR1_PLACEMENT_H
#define DSR1_PLACEMENT_H

#include <stdbool.h>

#include "status.h"

/* Balanced contiguous blocks: expert x on rank x * ranks / n_experts. */
static inline void dsr1_placement_balanced(int n_experts, int ranks, int *owner)
{
    for (int x = 0; x < n_experts; x++) owner[x] = (int)((long)x * ranks / n_experts);
}

/* owners[n_experts * replicas] for `replicas` copies of every expert over `ranks` EP ranks.
 * host[r] (NULL: every rank on its own host) is a host id per rank: copies of one expert
 * go to different hosts while there are hosts left, then to different ranks.
 * DSR1_ERR_INVALID_ARG when replicas < 1 or replicas > ranks. R = 1 gives the balanced
 * table. */
dsr1_status dsr1_placement_replicated(int n_experts, int ranks, int replicas, const int *host,
                                      int *owners);

/* The copy of expert x that serves token t (an index within the step), among the copies
 * whose rank is live (live[rank]; NULL: all): the (t + x)-th live copy, modulo their
 * number. Returns its rank, or -1 when no copy is live. */
int dsr1_placement_pick(const int *owners, int replicas, const bool *live, int x, int t);

/* The experts of one stage without any live copy: writes their ids to missing (room for
 * n_experts) and returns how many. */
int dsr1_placement_uncovered(const int *owners, int n_experts, int replicas, const bool *live,
                             int *missing);

/* Routed experts held by EP rank r (copies of different experts; an expert counts once). */
int dsr1_placement_count(const int *owners, int n_experts, int replicas, int r);

#endif
