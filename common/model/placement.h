/* Expert placement: which expert-parallel rank holds each routed expert.
 *
 * A table (expert -> rank), not arithmetic spread through the code, so that redundant
 * copies of hot experts or uneven rank counts only change how the table is filled. The
 * engine, the MPI bootstrap's placement check and `dsr1 inspect`'s memory report all use
 * this one function. */
#ifndef DSR1_PLACEMENT_H
#define DSR1_PLACEMENT_H

/* Balanced contiguous blocks: expert x on rank x * ranks / n_experts. */
static inline void dsr1_placement_balanced(int n_experts, int ranks, int *owner)
{
    for (int x = 0; x < n_experts; x++) owner[x] = (int)((long)x * ranks / n_experts);
}

#endif
