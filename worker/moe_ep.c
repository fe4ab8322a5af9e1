/* Expert parallelism for one MoE layer: dispatch, local experts, combine (see moe.h).
 *
 * For every (token, expert) the serving copy is dsr1_placement_pick's among the live ones.
 * Dispatch record, one per (token, destination rank serving at least one of its experts):
 *   hidden [hidden_size] f32 | expert ids [topk] i32 (-1 where the destination does not
 *   serve the expert for this token) | routing weights [topk] f32
 * so a token crosses the network once per destination rank, not once per expert.
 *
 * The receiver gives every (record, expert) pair a row of its own, starting from zero, so
 * the row it returns is exactly round(output * weight) — what dsr1_moe_experts adds into y
 * for that expert. The combine returns one row per pair (records in the order received,
 * a record's experts in topk order), and the sender adds a token's rows into y in
 * increasing expert id, the order in which dsr1_moe_experts adds them: y ends up the same
 * bits as on one rank holding every expert, whoever served which expert. (It relies on the
 * expert kernels computing a token's expert output independently of the other tokens of
 * the call and adding without FMA contraction; tests/unit/test_moe_ep.c checks it.) */
#include <stdlib.h>
#include <string.h>

#include "moe.h"
#include "placement.h"

/* live[r] for the EP ranks of pl, after checking the table against the group; every rank of
 * the group decides on the same table, so all agree on DSR1_ERR_LOST without talking. */
static dsr1_status check_placement(const dsr1_moe_placement *pl, const dsr1_comm *ep, int ne,
                                   bool *live)
{
    if (!pl || pl->ranks < 1 || pl->replicas < 1 || pl->replicas > pl->ranks || !pl->owners)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "expert parallelism: no usable placement (%d EP "
                          "ranks, %d copies)",
                          pl ? pl->ranks : 0, pl ? pl->replicas : 0);
    if (!pl->member && ep->size != pl->ranks)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "expert parallelism: the EP group has %d ranks, the placement %d and "
                          "no member map",
                          ep->size, pl->ranks);
    /* the live EP ranks are the group's members, each once */
    int n_live = 0;
    for (int r = 0; r < pl->ranks; r++) {
        const int g = pl->member ? pl->member[r] : r;
        bool twice = false;
        for (int q = 0; q < r && g >= 0; q++) twice |= pl->member && pl->member[q] == g;
        if (g >= ep->size || twice)
            return dsr1_error(DSR1_ERR_INVALID_ARG,
                              "expert parallelism: EP rank %d is member %d of a %d-rank group%s", r,
                              g, ep->size, twice ? ", as is an earlier rank" : "");
        live[r] = g >= 0;
        n_live += live[r];
    }
    if (n_live != ep->size)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "expert parallelism: %d live EP ranks for a %d-rank group", n_live,
                          ep->size);
    for (size_t i = 0; i < (size_t)ne * pl->replicas; i++)
        if (pl->owners[i] < 0 || pl->owners[i] >= pl->ranks)
            return dsr1_error(DSR1_ERR_INVALID_ARG,
                              "expert parallelism: copy %zu of expert %zu on EP rank %d of %d",
                              i % pl->replicas, i / pl->replicas, pl->owners[i], pl->ranks);
    int *miss = malloc(sizeof(int) * (size_t)ne);
    if (!miss) return dsr1_error(DSR1_ERR_NOMEM, "expert parallelism: out of memory");
    const int n = dsr1_placement_uncovered(pl->owners, ne, pl->replicas, live, miss);
    const int x = n > 0 ? miss[0] : -1;
    free(miss);
    if (n > 0)
        return dsr1_error(DSR1_ERR_LOST,
                          "expert parallelism: %d routed experts (expert %d first) have no "
                          "live copy",
                          n, x);
    return DSR1_OK;
}

/* Run this rank's experts on the received records: one output row per (record, expert)
 * pair, in record order and topk order within a record. *np: the pairs. */
static dsr1_status serve(const dsr1_kernels *k, dsr1_pool *pool, const dsr1_model_config *cfg,
                         const dsr1_layer_weights *L, const bool *owned, int me,
                         const unsigned char *recv, size_t nrec, size_t *np, float **out)
{
    const int K = cfg->num_experts_per_tok, D = cfg->hidden_size, ne = cfg->n_routed_experts;
    const size_t row = sizeof(float) * (size_t)D, rec = row + (sizeof(int32_t) + sizeof(float)) * K;
    size_t n = 0;
    for (size_t i = 0; i < nrec; i++) {
        const int32_t *qid = (const int32_t *)(recv + i * rec + row);
        for (int j = 0; j < K; j++) {
            const int e = qid[j];
            if (e == -1) continue;
            if (e < 0 || e >= ne || !owned[e])
                return dsr1_error(DSR1_ERR_FORMAT,
                                  "EP rank %d: received a token for expert %d, which this rank "
                                  "does not hold (placement tables differ?)",
                                  me, e);
            n++;
        }
    }
    float *xin = malloc(row * n + 1), *rw = malloc(sizeof(float) * n + 1);
    float *y = calloc(n * D + 1, sizeof(float));
    int *rid = malloc(sizeof(int) * n + 1);
    dsr1_status st = DSR1_OK;
    if (!xin || !rw || !y || !rid) {
        st = dsr1_error(DSR1_ERR_NOMEM, "EP rank %d: out of memory for %zu expert rows", me, n);
        goto out;
    }
    size_t p = 0;
    for (size_t i = 0; i < nrec; i++) {
        const unsigned char *q = recv + i * rec;
        const int32_t *qid = (const int32_t *)(q + row);
        const float *qw = (const float *)(q + row + sizeof(int32_t) * K);
        for (int j = 0; j < K; j++)
            if (qid[j] != -1) {
                memcpy(xin + p * D, q, row);
                rid[p] = qid[j];
                rw[p++] = qw[j];
            }
    }
    /* one expert per row: the row's sum is that expert's weighted output alone */
    dsr1_model_config one = *cfg;
    one.num_experts_per_tok = 1;
    if (n) st = dsr1_moe_experts(k, pool, &one, L, owned, xin, (int)n, rid, rw, y);
out:
    free(xin);
    free(rw);
    free(rid);
    if (st == DSR1_OK) {
        *np = n;
        *out = y;
    } else {
        free(y);
    }
    return st;
}

dsr1_status dsr1_moe_experts_ep(const dsr1_kernels *k, dsr1_pool *pool,
                                const dsr1_model_config *cfg, const dsr1_layer_weights *L,
                                const bool *owned, const dsr1_moe_placement *pl, dsr1_comm *ep,
                                const float *x, int m, const int *ids, const float *weights,
                                float *y)
{
    const int n = ep->size, me = ep->rank, K = cfg->num_experts_per_tok, D = cfg->hidden_size;
    const int ne = cfg->n_routed_experts;
    const size_t row = sizeof(float) * (size_t)D, rec = row + (sizeof(int32_t) + sizeof(float)) * K;
    const size_t mk = (size_t)m * K;
    dsr1_status st = DSR1_OK;
    bool *live = malloc(sizeof(bool) * (size_t)(pl && pl->ranks > 0 ? pl->ranks : 1));
    int *dest = malloc(sizeof(int) * (mk + 1)), *slot = malloc(sizeof(int) * (mk + 1));
    size_t *cnt = calloc((size_t)n, sizeof(size_t)), *rcnt = calloc((size_t)n, sizeof(size_t));
    size_t *sb = calloc((size_t)n, sizeof(size_t)), *rb = calloc((size_t)n, sizeof(size_t));
    unsigned char *send = NULL, *recv = NULL;
    float *yr = NULL, *back = NULL;
    if (!live || !dest || !slot || !cnt || !rcnt || !sb || !rb) goto nomem;
    if ((st = check_placement(pl, ep, ne, live)) != DSR1_OK) goto out;

    /* the group member serving each (token, expert) */
    for (int t = 0; t < m; t++)
        for (int j = 0; j < K; j++) {
            const size_t i = (size_t)t * K + j;
            if (ids[i] < 0 || ids[i] >= ne) {
                st = dsr1_error(DSR1_ERR_INVALID_ARG, "EP rank %d: token %d routed to expert %d",
                                me, t, ids[i]);
                goto out;
            }
            const int r = dsr1_placement_pick(pl->owners, pl->replicas, live, ids[i], t);
            dest[i] = pl->member ? pl->member[r] : r;
        }

    /* dispatch: records grouped by destination, tokens in order; slot[i]: the row of pair
     * i in what comes back */
    size_t total = 0, pairs = 0;
    for (int r = 0; r < n; r++)
        for (int t = 0; t < m; t++)
            for (int j = 0; j < K; j++)
                if (dest[(size_t)t * K + j] == r) {
                    cnt[r]++;
                    total++;
                    break;
                }
    if (!(send = malloc(total * rec + 1))) goto nomem;
    unsigned char *p = send;
    for (int r = 0; r < n; r++) {
        for (int t = 0; t < m; t++) {
            const size_t i0 = (size_t)t * K;
            int any = 0;
            for (int j = 0; j < K; j++) any |= dest[i0 + j] == r;
            if (!any) continue;
            memcpy(p, x + (size_t)t * D, row);
            int32_t *pid = (int32_t *)(p + row);
            float *pw = (float *)(p + row + sizeof(int32_t) * K);
            for (int j = 0; j < K; j++) {
                const bool mine = dest[i0 + j] == r;
                pid[j] = mine ? ids[i0 + j] : -1;
                pw[j] = weights[i0 + j];
                if (mine) slot[i0 + j] = (int)pairs++;
            }
            p += rec;
        }
        sb[r] = cnt[r] * rec;
    }
    if ((st = dsr1_comm_alltoall_sizes(ep, sb, rb)) != DSR1_OK) goto out;
    size_t rtotal = 0;
    for (int r = 0; r < n; r++) {
        if (rb[r] % rec) {
            st = dsr1_error(DSR1_ERR_FORMAT,
                            "EP rank %d: rank %d dispatches %zu bytes, not a "
                            "whole number of %zu-byte records",
                            me, r, rb[r], rec);
            goto out;
        }
        rcnt[r] = rb[r] / rec;
        rtotal += rcnt[r];
    }
    if (!(recv = malloc(rtotal * rec + 1))) goto nomem;
    if ((st = dsr1_comm_alltoallv(ep, send, sb, recv, rb)) != DSR1_OK) goto out;

    /* this rank's experts; the pairs of each source's records are contiguous */
    size_t np = 0;
    if ((st = serve(k, pool, cfg, L, owned, me, recv, rtotal, &np, &yr)) != DSR1_OK) goto out;
    const unsigned char *q = recv;
    for (int r = 0; r < n; r++) {
        size_t c = 0;
        for (size_t i = 0; i < rcnt[r]; i++, q += rec) {
            const int32_t *qid = (const int32_t *)(q + row);
            for (int j = 0; j < K; j++) c += qid[j] != -1;
        }
        sb[r] = c * row;
        rb[r] = 0;
    }
    for (size_t i = 0; i < mk; i++) rb[dest[i]] += row;

    /* combine: one row back per pair; a token's rows added in increasing expert id */
    if (!(back = malloc(row * pairs + 1))) goto nomem;
    if ((st = dsr1_comm_alltoallv(ep, yr, sb, back, rb)) != DSR1_OK) goto out;
    for (int t = 0; t < m; t++) {
        float *yt = y + (size_t)t * D;
        const int *id = ids + (size_t)t * K;
        /* (expert id, topk index) in increasing order: dsr1_moe_experts's order */
        for (int pid = -1, pj = -1;;) {
            int j = -1;
            for (int jj = 0; jj < K; jj++)
                if ((id[jj] > pid || (id[jj] == pid && jj > pj)) &&
                    (j < 0 || id[jj] < id[j] || (id[jj] == id[j] && jj < j)))
                    j = jj;
            if (j < 0) break;
            const float *b = back + (size_t)slot[(size_t)t * K + j] * D;
            for (int c = 0; c < D; c++) yt[c] += b[c];
            pid = id[j];
            pj = j;
        }
    }
    goto out;
nomem:
    st = dsr1_error(DSR1_ERR_NOMEM, "EP rank %d: out of memory", me);
out:
    free(live);
    free(dest);
    free(slot);
    free(cnt);
    free(rcnt);
    free(sb);
    free(rb);
    free(send);
    free(recv);
    free(yr);
    free(back);
    return st;
}
