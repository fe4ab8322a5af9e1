/* Coordinator side of a worker grid (see grid.h). */
#include "grid.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"
#include "worker_loop.h"

struct dsr1_grid {
    dsr1_comm *world;
    int workers, pp, ep, vocab;
    uint64_t step;
    int broken;
};

dsr1_status dsr1_grid_create(dsr1_comm *world, int workers, int pp, int vocab, dsr1_grid **out)
{
    if (world->rank != 0 || world->size != workers + 1 || pp < 1 || workers % pp)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "grid of %d workers in %d stages needs a world "
                          "group of %d ranks with the coordinator at rank 0 (have rank %d of %d)",
                          workers, pp, workers + 1, world->rank, world->size);
    dsr1_grid *g = calloc(1, sizeof(*g));
    if (!g) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    g->world = world;
    g->workers = workers;
    g->pp = pp;
    g->ep = workers / pp;
    g->vocab = vocab;
    *out = g;
    return DSR1_OK;
}

static dsr1_status fail(dsr1_grid *c, dsr1_status st)
{
    c->broken = 1;
    dsr1_comm_abort(c->world, dsr1_errmsg());
    return st;
}

dsr1_status dsr1_grid_step(dsr1_grid *c, const dsr1_batch *b)
{
    if (c->broken)
        return dsr1_error(DSR1_ERR_IO, "the worker grid failed earlier and cannot run steps");
    const uint64_t step = ++c->step;
    const int V = c->vocab;
    dsr1_status st = DSR1_OK;
    dsr1_wire_seq *ws = malloc(sizeof(*ws) * ((size_t)b->n_seqs + 1));
    int32_t *tok = NULL;
    int *row_of = malloc(sizeof(int) * ((size_t)b->n_seqs + 1)); /* first output row */
    char *arrived = malloc((size_t)c->ep);
    size_t ntok = 0;
    for (int q = 0; q < b->n_seqs; q++) ntok += (size_t)b->seqs[q].n_tokens;
    tok = malloc(sizeof(int32_t) * (ntok + 1));
    if (!ws || !tok || !row_of || !arrived) {
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (int q = 0, r = 0; q < b->n_seqs; q++) {
        row_of[q] = r;
        const dsr1_seq_step *sq = &b->seqs[q];
        r += sq->logits == DSR1_LOGITS_ALL ? sq->n_tokens : sq->logits == DSR1_LOGITS_LAST;
        if (sq->slot < 0 || sq->n_tokens < 1) {
            st = dsr1_error(DSR1_ERR_RANGE, "sequence %d: cache slot %d, %d tokens", q, sq->slot,
                            sq->n_tokens);
            goto out;
        }
    }
    /* one plan per EP rank, sent to that rank in every stage */
    for (int e = 0; e < c->ep && st == DSR1_OK; e++) {
        int n = 0;
        size_t nt = 0;
        for (int q = 0; q < b->n_seqs; q++) {
            const dsr1_seq_step *sq = &b->seqs[q];
            if (sq->slot % c->ep != e) continue;
            ws[n++] = (dsr1_wire_seq){sq->slot / c->ep, sq->pos, sq->n_tokens, sq->logits};
            memcpy(tok + nt, sq->tokens, sizeof(int32_t) * (size_t)sq->n_tokens);
            nt += (size_t)sq->n_tokens;
        }
        void *msg;
        size_t len;
        if ((st = dsr1_wire_step_encode(step, n, ws, tok, &msg, &len)) != DSR1_OK) break;
        for (int s = 0; s < c->pp && st == DSR1_OK; s++)
            st = dsr1_comm_send(c->world, dsr1_world_rank(s, e, c->ep), DSR1_TAG_CTRL, msg, len);
        free(msg);
    }
    if (st != DSR1_OK) {
        st = fail(c, st);
        goto out;
    }
    /* one result per EP rank, from the last stage, in whatever order they finish */
    memset(arrived, 0, sizeof(char) * (size_t)c->ep);
    for (int got = 0; got < c->ep; got++) {
        void *msg;
        size_t len;
        int src;
        if ((st = dsr1_comm_recv(c->world, DSR1_COMM_ANY, DSR1_TAG_RESULT, &msg, &len, &src))) {
            /* name the workers that owe a result: the last stage's ranks not heard from */
            char who[256] = "";
            size_t o = 0;
            for (int e = 0; e < c->ep && o < sizeof(who) - 40; e++)
                if (!arrived[e])
                    o += (size_t)snprintf(who + o, sizeof(who) - o, "%sworker %d (stage %d, EP %d)",
                                          o ? ", " : "", (c->pp - 1) * c->ep + e, c->pp - 1, e);
            st = fail(c, dsr1_error_context(st, "step %llu: no result from %s",
                                            (unsigned long long)step, who));
            goto out;
        }
        if (src >= 1 + (c->pp - 1) * c->ep && src <= c->workers) arrived[(src - 1) % c->ep] = 1;
        dsr1_wire_header h;
        int rows, vocab;
        const float *data;
        if ((st = dsr1_wire_header_decode(msg, len, &h)) == DSR1_OK && h.type == DSR1_MSG_ERROR) {
            int status, rank;
            char text[1024];
            if (dsr1_wire_error_decode(msg, len, &status, &rank, text, sizeof(text)) == DSR1_OK)
                st = dsr1_error((dsr1_status)status, "worker %d failed: %s", src - 1, text);
        } else if (st == DSR1_OK &&
                   (st = dsr1_wire_logits_decode(msg, len, &rows, &vocab, &data)) == DSR1_OK) {
            const int e = (src - 1) % c->ep;
            int r = 0;
            for (int q = 0; q < b->n_seqs; q++) {
                const dsr1_seq_step *sq = &b->seqs[q];
                if (sq->slot % c->ep != e) continue;
                const int n =
                    sq->logits == DSR1_LOGITS_ALL ? sq->n_tokens : sq->logits == DSR1_LOGITS_LAST;
                if (r + n > rows || vocab != V || h.step != step) {
                    st = dsr1_error(DSR1_ERR_FORMAT,
                                    "worker %d returned %d logit rows of %d "
                                    "for step %llu",
                                    src - 1, rows, vocab, (unsigned long long)h.step);
                    break;
                }
                memcpy(b->logits + (size_t)row_of[q] * V, data + (size_t)r * V,
                       sizeof(float) * (size_t)n * V);
                r += n;
            }
        }
        free(msg);
        if (st != DSR1_OK) {
            st = fail(c, st);
            goto out;
        }
    }
out:
    free(ws);
    free(tok);
    free(row_of);
    free(arrived);
    return st;
}

void dsr1_grid_shutdown(dsr1_grid *c)
{
    if (c->broken) {
        dsr1_comm_abort(c->world, "coordinator shutting down after a failure");
        return;
    }
    void *msg;
    size_t len;
    if (dsr1_wire_simple_encode(DSR1_MSG_SHUTDOWN, c->step, NULL, 0, &msg, &len) != DSR1_OK) {
        dsr1_comm_abort(c->world, "coordinator shutting down");
        return;
    }
    for (int i = 0; i < c->workers; i++) dsr1_comm_send(c->world, 1 + i, DSR1_TAG_CTRL, msg, len);
    free(msg);
}

void dsr1_grid_destroy(dsr1_grid *g)
{
    free(g);
}
