/* Expert placement with redundant copies (see placement.h): filling the table, choosing the
 * live copy that serves a token, and the questions the grid and `dsr1 inspect` ask of it.
 *
 * Copy c of expert x starts its search at the rank c * ranks / R past its primary (so the
 * copies of one contiguous block land on a shifted block, which keeps every rank's count
 * even) and moves on to the next rank that (1) holds no earlier copy of x, (2) is on a host
 * none of those copies is on, while such a host exists, and (3) is not yet over its share,
 * ceil((c + 1) * E / ranks) experts after c + 1 copies; if every rank meeting (1) and (2) is
 * full, the first that meets them. Everything depends only on the arguments, so every
 * process computes the same table. */
#include "placement.h"

#include <stdlib.h>

/* Whether rank r may hold the next copy of the expert whose earlier copies are prev[0..n). */
static bool acceptable(const int *prev, int n, const int *host, bool new_host, int r)
{
    for (int i = 0; i < n; i++) {
        if (prev[i] == r) return false;
        if (new_host && host && host[prev[i]] == host[r]) return false;
    }
    return true;
}

/* Whether some rank is on a host that none of prev[0..n) is on. */
static bool host_left(const int *prev, int n, const int *host, int ranks)
{
    for (int r = 0; r < ranks; r++)
        if (acceptable(prev, n, host, true, r)) return true;
    return false;
}

/* Distinct hosts (ranks when host is NULL) among the copies own[0..R) of one expert, with
 * copy c on rank r instead; 0 when r already holds another copy. */
static int spread_with(const int *own, int R, const int *host, int c, int r)
{
    int n = 0;
    for (int i = 0; i < R; i++) {
        const int ri = i == c ? r : own[i];
        if (i != c && ri == r) return 0;
        bool seen = false;
        for (int j = 0; j < i; j++) {
            const int rj = j == c ? r : own[j];
            seen |= (host ? host[rj] : rj) == (host ? host[ri] : ri);
        }
        n += !seen;
    }
    return n;
}

/* Moves a copy other than the first from a fullest rank to an emptiest one that takes it
 * without bringing the expert's copies onto fewer hosts. false: none can move. */
static bool even_out(int n_experts, int ranks, int R, const int *host, int *owners, int *load)
{
    int lo = load[0], hi = load[0];
    for (int r = 1; r < ranks; r++) {
        lo = load[r] < lo ? load[r] : lo;
        hi = load[r] > hi ? load[r] : hi;
    }
    if (hi - lo <= 1) return false;
    for (int x = n_experts - 1; x >= 0; x--) {
        int *own = owners + (size_t)x * R;
        for (int c = 1; c < R; c++) {
            if (load[own[c]] != hi) continue;
            const int before = spread_with(own, R, host, c, own[c]);
            for (int r = 0; r < ranks; r++)
                if (load[r] == lo && spread_with(own, R, host, c, r) >= before) {
                    load[own[c]]--;
                    load[r]++;
                    own[c] = r;
                    return true;
                }
        }
    }
    return false;
}

dsr1_status dsr1_placement_replicated(int n_experts, int ranks, int replicas, const int *host,
                                      int *owners)
{
    if (n_experts < 1 || ranks < 1 || replicas < 1 || replicas > ranks)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "expert placement: %d copies of %d experts over %d EP ranks (copies "
                          "must be between 1 and the number of ranks)",
                          replicas, n_experts, ranks);
    int *load = calloc((size_t)ranks, sizeof(int)), *prev = malloc(sizeof(int) * (size_t)replicas);
    int *primary = malloc(sizeof(int) * (size_t)n_experts);
    if (!load || !prev || !primary) {
        free(load);
        free(prev);
        free(primary);
        return dsr1_error(DSR1_ERR_NOMEM, "expert placement: out of memory for %d experts",
                          n_experts);
    }
    dsr1_placement_balanced(n_experts, ranks, primary);
    for (int x = 0; x < n_experts; x++) {
        owners[(size_t)x * replicas] = primary[x];
        load[primary[x]]++;
    }
    for (int c = 1; c < replicas; c++) {
        const long cap = ((long)(c + 1) * n_experts + ranks - 1) / ranks;
        for (int x = 0; x < n_experts; x++) {
            for (int i = 0; i < c; i++) prev[i] = owners[(size_t)x * replicas + i];
            const bool new_host = host && host_left(prev, c, host, ranks);
            const int start = (int)((primary[x] + (long)c * ranks / replicas) % ranks);
            int pick = -1, first = -1;
            for (int i = 0; i < ranks && pick < 0; i++) {
                const int r = (start + i) % ranks;
                if (!acceptable(prev, c, host, new_host, r)) continue;
                if (first < 0) first = r;
                if (load[r] < cap) pick = r;
            }
            if (pick < 0) pick = first; /* replicas <= ranks: some rank holds no copy yet */
            owners[(size_t)x * replicas + c] = pick;
            load[pick]++;
        }
    }
    while (even_out(n_experts, ranks, replicas, host, owners, load)) {
    }
    free(load);
    free(prev);
    free(primary);
    return DSR1_OK;
}

int dsr1_placement_pick(const int *owners, int replicas, const bool *live, int x, int t)
{
    const int *own = owners + (size_t)x * replicas;
    int n_live = 0;
    for (int c = 0; c < replicas; c++) n_live += !live || live[own[c]];
    if (n_live == 0) return -1;
    long i = ((long)t + x) % n_live;
    for (int c = 0; c < replicas; c++)
        if (!live || live[own[c]])
            if (i-- == 0) return own[c];
    return -1; /* not reached */
}

int dsr1_placement_uncovered(const int *owners, int n_experts, int replicas, const bool *live,
                             int *missing)
{
    int n = 0;
    for (int x = 0; x < n_experts; x++)
        if (dsr1_placement_pick(owners, replicas, live, x, 0) < 0) missing[n++] = x;
    return n;
}

int dsr1_placement_count(const int *owners, int n_experts, int replicas, int r)
{
    int n = 0;
    for (int x = 0; x < n_experts; x++)
        for (int c = 0; c < replicas; c++)
            if (owners[(size_t)x * replicas + c] == r) {
                n++;
                break;
            }
    return n;
}
