/* Coordinator side of a worker grid (see grid.h).
 *
 * Steps are submitted and collected separately so that several can be in flight: each
 * worker serves its STEP messages in order, so while the last stage works on step k the
 * first stage can already run step k + 1, and a pipeline of P stages stays busy with P
 * micro-batches. Results arrive tagged with their step id, from the last stage's EP ranks
 * in any order, and are written straight into the logits of the batch given at submit. */
#include "grid.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"
#include "worker_loop.h"

typedef struct {
    uint64_t step;
    const dsr1_batch *b; /* borrowed until the step is waited for */
    int *row_of;         /* first output row of each sequence */
    char *arrived;       /* [ep]: result of that EP rank received */
    int pending;         /* EP ranks still owing their result */
} inflight;

struct dsr1_grid {
    dsr1_comm *world;
    int workers, pp, ep, vocab;
    uint64_t step;
    int broken;
    inflight *q; /* in submission order */
    int nq, cap;
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

static int seq_rows(const dsr1_seq_step *sq)
{
    return sq->logits == DSR1_LOGITS_ALL ? sq->n_tokens : sq->logits == DSR1_LOGITS_LAST;
}

/* The EP rank a sequence lives on: its rank with a block table, else by its slot. */
static int seq_rank(const dsr1_grid *c, const dsr1_seq_step *sq)
{
    return sq->blocks ? sq->rank : sq->slot % c->ep;
}

/* One STEP plan per EP rank, sent to that rank in every stage. */
static dsr1_status send_plans(dsr1_grid *c, const dsr1_batch *b, uint64_t step)
{
    size_t ntok = 0, nblk = 0;
    for (int q = 0; q < b->n_seqs; q++) {
        ntok += (size_t)b->seqs[q].n_tokens;
        nblk += b->seqs[q].blocks ? (size_t)b->seqs[q].n_blocks : 0;
    }
    dsr1_wire_seq *ws = malloc(sizeof(*ws) * ((size_t)b->n_seqs + 1));
    int32_t *tok = malloc(sizeof(int32_t) * (ntok + 1)),
            *blk = malloc(sizeof(int32_t) * (nblk + 1));
    dsr1_status st = DSR1_OK;
    if (!ws || !tok || !blk) st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    for (int e = 0; e < c->ep && st == DSR1_OK; e++) {
        int n = 0;
        size_t nt = 0, nb = 0;
        for (int q = 0; q < b->n_seqs; q++) {
            const dsr1_seq_step *sq = &b->seqs[q];
            if (seq_rank(c, sq) != e) continue;
            const int n_blocks = sq->blocks ? sq->n_blocks : 0;
            ws[n++] = (dsr1_wire_seq){sq->blocks ? 0 : sq->slot / c->ep, sq->pos, sq->n_tokens,
                                      sq->logits, n_blocks};
            memcpy(tok + nt, sq->tokens, sizeof(int32_t) * (size_t)sq->n_tokens);
            nt += (size_t)sq->n_tokens;
            if (n_blocks) memcpy(blk + nb, sq->blocks, sizeof(int32_t) * (size_t)n_blocks);
            nb += (size_t)n_blocks;
        }
        void *msg;
        size_t len;
        if ((st = dsr1_wire_step_encode(step, n, ws, tok, blk, &msg, &len)) != DSR1_OK) break;
        for (int s = 0; s < c->pp && st == DSR1_OK; s++)
            st = dsr1_comm_send(c->world, dsr1_world_rank(s, e, c->ep), DSR1_TAG_CTRL, msg, len);
        free(msg);
    }
    free(ws);
    free(tok);
    free(blk);
    return st;
}

/* What the coordinator needs to route each sequence (the workers check the rest). */
static dsr1_status check_routes(const dsr1_grid *c, const dsr1_batch *b)
{
    for (int q = 0; q < b->n_seqs; q++) {
        const dsr1_seq_step *sq = &b->seqs[q];
        if (sq->n_tokens < 1)
            return dsr1_error(DSR1_ERR_RANGE, "sequence %d: %d tokens", q, sq->n_tokens);
        if (!sq->blocks && sq->slot < 0)
            return dsr1_error(DSR1_ERR_RANGE, "sequence %d: cache slot %d", q, sq->slot);
        if (sq->blocks && (sq->rank < 0 || sq->rank >= c->ep))
            return dsr1_error(DSR1_ERR_RANGE,
                              "sequence %d: attention data-parallel rank %d outside [0, %d)", q,
                              sq->rank, c->ep);
        if (sq->blocks && sq->n_blocks < 1)
            return dsr1_error(DSR1_ERR_RANGE, "sequence %d: block table of %d blocks", q,
                              sq->n_blocks);
    }
    return DSR1_OK;
}

dsr1_status dsr1_grid_submit(dsr1_grid *c, const dsr1_batch *b, uint64_t *step_out)
{
    if (c->broken)
        return dsr1_error(DSR1_ERR_IO, "the worker grid failed earlier and cannot run steps");
    dsr1_status st = check_routes(c, b);
    if (st != DSR1_OK) return st;
    if (c->nq == c->cap) {
        int cap = c->cap ? 2 * c->cap : 8;
        inflight *g = realloc(c->q, sizeof(*g) * (size_t)cap);
        if (!g) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        c->q = g;
        c->cap = cap;
    }
    inflight *f = &c->q[c->nq];
    f->b = b;
    f->row_of = malloc(sizeof(int) * ((size_t)b->n_seqs + 1));
    f->arrived = calloc((size_t)c->ep, 1);
    f->pending = c->ep;
    if (!f->row_of || !f->arrived) {
        free(f->row_of);
        free(f->arrived);
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    }
    for (int q = 0, r = 0; q < b->n_seqs; r += seq_rows(&b->seqs[q]), q++) f->row_of[q] = r;
    f->step = ++c->step;
    c->nq++;
    if ((st = send_plans(c, b, f->step)) != DSR1_OK) return fail(c, st);
    if (step_out) *step_out = f->step;
    return DSR1_OK;
}

/* Place one LOGITS message of EP rank e into its step's batch. */
static dsr1_status take_logits(dsr1_grid *c, inflight *f, int e, int src, const void *msg,
                               size_t len)
{
    int rows, vocab;
    const float *data;
    dsr1_status st = dsr1_wire_logits_decode(msg, len, &rows, &vocab, &data);
    if (st != DSR1_OK) return st;
    const dsr1_batch *b = f->b;
    int r = 0;
    for (int q = 0; q < b->n_seqs; q++) {
        const dsr1_seq_step *sq = &b->seqs[q];
        if (seq_rank(c, sq) != e) continue;
        const int n = seq_rows(sq);
        if (r + n > rows || vocab != c->vocab)
            return dsr1_error(DSR1_ERR_FORMAT,
                              "worker %d returned %d logit rows of %d for step "
                              "%llu",
                              src - 1, rows, vocab, (unsigned long long)f->step);
        memcpy(b->logits + (size_t)f->row_of[q] * c->vocab, data + (size_t)r * c->vocab,
               sizeof(float) * (size_t)n * c->vocab);
        r += n;
    }
    return DSR1_OK;
}

/* Receive one result message and account it to its step. */
static dsr1_status receive_one(dsr1_grid *c)
{
    void *msg;
    size_t len;
    int src;
    dsr1_status st = dsr1_comm_recv(c->world, DSR1_COMM_ANY, DSR1_TAG_RESULT, &msg, &len, &src);
    if (st != DSR1_OK) {
        /* name the workers that owe results: the last stage's ranks not heard from */
        char who[256] = "";
        size_t o = 0;
        const inflight *f = &c->q[0];
        for (int e = 0; e < c->ep && o < sizeof(who) - 40; e++)
            if (!f->arrived[e])
                o += (size_t)snprintf(who + o, sizeof(who) - o, "%sworker %d (stage %d, EP %d)",
                                      o ? ", " : "", (c->pp - 1) * c->ep + e, c->pp - 1, e);
        return dsr1_error_context(st, "step %llu: no result from %s", (unsigned long long)f->step,
                                  who);
    }
    dsr1_wire_header h;
    if ((st = dsr1_wire_header_decode(msg, len, &h)) == DSR1_OK) {
        if (h.type == DSR1_MSG_ERROR) {
            int status, rank;
            char text[1024];
            if (dsr1_wire_error_decode(msg, len, &status, &rank, text, sizeof(text)) == DSR1_OK)
                st = dsr1_error((dsr1_status)status, "worker %d failed: %s", src - 1, text);
        } else if (src < 1 + (c->pp - 1) * c->ep || src > c->workers) {
            st = dsr1_error(DSR1_ERR_FORMAT, "rank %d, not on the last stage, sent a result", src);
        } else {
            const int e = (src - 1) % c->ep;
            inflight *f = NULL;
            for (int i = 0; i < c->nq && !f; i++)
                if (c->q[i].step == h.step) f = &c->q[i];
            if (!f || f->arrived[e])
                st = dsr1_error(DSR1_ERR_FORMAT,
                                "worker %d sent an unexpected result for step "
                                "%llu",
                                src - 1, (unsigned long long)h.step);
            else if ((st = take_logits(c, f, e, src, msg, len)) == DSR1_OK) {
                f->arrived[e] = 1;
                f->pending--;
            }
        }
    }
    free(msg);
    return st;
}

dsr1_status dsr1_grid_wait(dsr1_grid *c, uint64_t step)
{
    if (c->broken)
        return dsr1_error(DSR1_ERR_IO, "the worker grid failed earlier and cannot run steps");
    if (c->nq == 0 || c->q[0].step != step)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "step %llu is not the oldest step in flight",
                          (unsigned long long)step);
    while (c->q[0].pending > 0) {
        dsr1_status st = receive_one(c);
        if (st != DSR1_OK) return fail(c, st);
    }
    free(c->q[0].row_of);
    free(c->q[0].arrived);
    memmove(c->q, c->q + 1, sizeof(*c->q) * (size_t)(c->nq - 1));
    c->nq--;
    return DSR1_OK;
}

dsr1_status dsr1_grid_step(dsr1_grid *c, const dsr1_batch *b)
{
    uint64_t step;
    dsr1_status st = dsr1_grid_submit(c, b, &step);
    return st != DSR1_OK ? st : dsr1_grid_wait(c, step);
}

void dsr1_grid_shutdown(dsr1_grid *c)
{
    if (c->broken || c->nq > 0) {
        dsr1_comm_abort(c->world, c->broken ? "coordinator shutting down after a failure"
                                            : "coordinator shutting down with steps in flight");
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
    if (!g) return;
    for (int i = 0; i < g->nq; i++) {
        free(g->q[i].row_of);
        free(g->q[i].arrived);
    }
    free(g->q);
    free(g);
}
