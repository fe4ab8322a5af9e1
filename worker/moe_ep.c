/* Expert parallelism for one MoE layer: dispatch, local experts, combine (see moe.h).
 *
 * Dispatch record, one per (token, destination rank owning at least one of its experts):
 *   hidden [hidden_size] f32 | expert ids [topk] i32 (-1 where the destination does not own
 *   the expert) | routing weights [topk] f32
 * so a token crosses the network once per destination rank, not once per expert. The
 * combine returns one hidden_size row per record, in the order received; the sender adds
 * them in rank order, so results are deterministic. */
#include <stdlib.h>
#include <string.h>

#include "moe.h"

dsr1_status dsr1_moe_experts_ep(const dsr1_kernels *k, dsr1_pool *pool,
                                const dsr1_model_config *cfg, const dsr1_layer_weights *L,
                                const bool *owned, const int *owner, dsr1_comm *ep, const float *x,
                                int m, const int *ids, const float *weights, float *y)
{
    const int n = ep->size, me = ep->rank, K = cfg->num_experts_per_tok, D = cfg->hidden_size;
    const size_t rec = sizeof(float) * (size_t)(D + 2 * K), row = sizeof(float) * (size_t)D;
    dsr1_status st = DSR1_OK;
    size_t *cnt = calloc((size_t)n, sizeof(size_t)), *rcnt = calloc((size_t)n, sizeof(size_t));
    size_t *sb = calloc((size_t)n, sizeof(size_t)), *rb = calloc((size_t)n, sizeof(size_t));
    int *sent_tok = malloc(sizeof(int) * ((size_t)m * n + 1));
    unsigned char *send = NULL, *recv = NULL;
    float *xin = NULL, *rw = NULL, *yr = NULL, *back = NULL;
    int *rids = NULL;
    if (!cnt || !rcnt || !sb || !rb || !sent_tok) goto nomem;

    /* dispatch: records grouped by destination rank, tokens in order */
    size_t total = 0;
    for (int r = 0; r < n; r++)
        for (int t = 0; t < m; t++)
            for (int j = 0; j < K; j++)
                if (owner[ids[(size_t)t * K + j]] == r) {
                    cnt[r]++;
                    total++;
                    break;
                }
    if (!(send = malloc(total * rec + 1))) goto nomem;
    unsigned char *p = send;
    size_t ns = 0;
    for (int r = 0; r < n; r++) {
        for (int t = 0; t < m; t++) {
            int any = 0;
            for (int j = 0; j < K; j++) any |= owner[ids[(size_t)t * K + j]] == r;
            if (!any) continue;
            memcpy(p, x + (size_t)t * D, row);
            int32_t *pid = (int32_t *)(p + row);
            float *pw = (float *)(p + row + sizeof(int32_t) * K);
            for (int j = 0; j < K; j++) {
                const int e = ids[(size_t)t * K + j];
                pid[j] = owner[e] == r ? e : -1;
                pw[j] = weights[(size_t)t * K + j];
            }
            p += rec;
            sent_tok[ns++] = t;
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

    /* local experts over everything received */
    xin = malloc(row * rtotal + 1);
    rw = malloc(sizeof(float) * K * rtotal + 1);
    rids = malloc(sizeof(int) * K * rtotal + 1);
    yr = calloc(rtotal * D + 1, sizeof(float));
    if (!xin || !rw || !rids || !yr) goto nomem;
    for (size_t i = 0; i < rtotal; i++) {
        const unsigned char *q = recv + i * rec;
        memcpy(xin + i * D, q, row);
        const int32_t *qid = (const int32_t *)(q + row);
        const float *qw = (const float *)(q + row + sizeof(int32_t) * K);
        for (int j = 0; j < K; j++) {
            const int e = qid[j];
            if (e != -1 && (e < 0 || e >= cfg->n_routed_experts || !owned[e])) {
                st = dsr1_error(DSR1_ERR_FORMAT,
                                "EP rank %d: received a token for expert %d, "
                                "which this rank does not own (placement tables differ?)",
                                me, e);
                goto out;
            }
            rids[i * K + j] = e;
            rw[i * K + j] = qw[j];
        }
    }
    if (rtotal &&
        (st = dsr1_moe_experts(k, pool, cfg, L, owned, xin, (int)rtotal, rids, rw, yr)) != DSR1_OK)
        goto out;

    /* combine: one row back per record received, in the order received */
    for (int r = 0; r < n; r++) {
        sb[r] = rcnt[r] * row;
        rb[r] = cnt[r] * row;
    }
    if (!(back = malloc(row * total + 1))) goto nomem;
    if ((st = dsr1_comm_alltoallv(ep, yr, sb, back, rb)) != DSR1_OK) goto out;
    for (size_t i = 0; i < total; i++) {
        float *yt = y + (size_t)sent_tok[i] * D;
        const float *b = back + i * D;
        for (int c = 0; c < D; c++) yt[c] += b[c];
    }
    goto out;
nomem:
    st = dsr1_error(DSR1_ERR_NOMEM, "EP rank %d: out of memory", me);
out:
    free(cnt);
    free(rcnt);
    free(sb);
    free(rb);
    free(sent_tok);
    free(send);
    free(recv);
    free(xin);
    free(rw);
    free(rids);
    free(yr);
    free(back);
    return st;
}
