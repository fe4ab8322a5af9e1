/* Coordinator side of a worker grid (see grid.h).
 *
 * Steps are submitted and collected separately so that several can be in flight: each
 * worker serves its STEP messages in order, so while the last stage works on step k the
 * first stage can already run step k + 1, and a pipeline of P stages stays busy with P
 * micro-batches. Results arrive tagged with their step id, from the last stage's EP ranks
 * in any order, and are written straight into the outputs of the batch given at submit.
 *
 * Sample requests go to the last stage only (the other stages get the same plan without
 * them); it samples where the logits are and returns ids and logprobs, so a sampled
 * sequence costs a few bytes on the way back instead of a logit row of the vocabulary. */
#include "grid.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dsr1_build_config.h"
#include "log.h"
#include "placement.h"
#include "wire.h"
#include "worker_loop.h"

typedef struct {
    uint64_t step;
    const dsr1_batch *b; /* borrowed until the step is waited for */
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
    /* membership (dsr1_grid_params.regroup) */
    bool regroup;
    int n_experts, replicas, timeout_ms;
    int *owners;          /* [n_experts * replicas] */
    uint32_t epoch;       /* 0 before the first */
    uint64_t dropped;     /* steps up to this id were dropped by a change of epoch */
    bool *live;           /* [workers] */
    bool *reported;       /* [workers]: sent an ERROR in the failure being handled */
    bool *suspect;        /* [workers]: named by a peer, or unreachable */
    bool *lane_live;      /* [ep] */
    char lost_names[256]; /* of every worker lost so far */
    void **waddr;         /* [workers]: world addresses the workers gave (ADDR) */
    size_t *wlen;
    /* the survivors cannot serve (coverage): no steps until workers join */
    bool suspended;
    char why[512];
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void worker_name(const dsr1_grid *g, int i, char *buf, size_t cap)
{
    snprintf(buf, cap, "worker %d (stage %d, EP %d)", i, i / g->ep, i % g->ep);
}

/* The workers lost now, by name, for messages and the membership. */
static void name_lost(dsr1_grid *g)
{
    size_t o = 0;
    g->lost_names[0] = 0;
    for (int i = 0; i < g->workers && o < sizeof(g->lost_names) - 1; i++)
        if (!g->live[i]) {
            char name[64];
            worker_name(g, i, name, sizeof(name));
            o += (size_t)snprintf(g->lost_names + o, sizeof(g->lost_names) - o, "%s%s",
                                  o ? ", " : "", name);
        }
}

static void update_lanes(dsr1_grid *g)
{
    name_lost(g);
    for (int e = 0; e < g->ep; e++) {
        g->lane_live[e] = true;
        for (int s = 0; s < g->pp; s++) g->lane_live[e] &= g->live[s * g->ep + e];
    }
}

static dsr1_status regroup(dsr1_grid *g);
static dsr1_status on_failure(dsr1_grid *g, dsr1_status st);

dsr1_status dsr1_grid_create(dsr1_comm *world, const dsr1_grid_params *p, dsr1_grid **out)
{
    const int workers = p->workers, pp = p->pp;
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
    g->vocab = p->vocab;
    g->regroup = p->regroup;
    g->n_experts = p->n_experts;
    g->replicas = p->replicas > 0 ? p->replicas : 1;
    g->timeout_ms = p->timeout_ms;
    g->live = calloc((size_t)workers, sizeof(bool));
    g->reported = calloc((size_t)workers, sizeof(bool));
    g->suspect = calloc((size_t)workers, sizeof(bool));
    g->lane_live = calloc((size_t)g->ep, sizeof(bool));
    g->waddr = calloc((size_t)workers, sizeof(void *));
    g->wlen = calloc((size_t)workers, sizeof(size_t));
    const size_t no = (size_t)(p->regroup ? p->n_experts * g->replicas : 0);
    g->owners = malloc(sizeof(int) * (no + 1));
    if (!g->live || !g->reported || !g->suspect || !g->lane_live || !g->owners || !g->waddr ||
        !g->wlen) {
        dsr1_grid_destroy(g);
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    }
    if (no) memcpy(g->owners, p->owners, sizeof(int) * no);
    for (int i = 0; i < workers; i++) g->live[i] = true;
    update_lanes(g);
    dsr1_status st = g->regroup ? regroup(g) : DSR1_OK;
    if (st != DSR1_OK) {
        dsr1_grid_destroy(g);
        return st;
    }
    *out = g;
    return DSR1_OK;
}

static dsr1_status fail(dsr1_grid *c, dsr1_status st)
{
    c->broken = 1;
    dsr1_comm_abort(c->world, dsr1_errmsg());
    return st;
}

/* The EP rank a sequence lives on: its rank with a block table, else by its slot. */
static int seq_rank(const dsr1_grid *c, const dsr1_seq_step *sq)
{
    return sq->blocks ? sq->rank : sq->slot % c->ep;
}

/* A sequence's sample request, when it has logits to sample (it is ignored otherwise). */
static const dsr1_seq_sample *seq_sample(const dsr1_seq_step *sq)
{
    return sq->logits != DSR1_LOGITS_NONE ? sq->sample : NULL;
}

/* A STEP plan being built for one EP rank: room for every sequence of the batch. */
typedef struct {
    dsr1_wire_step p;
    dsr1_wire_seq *seqs;
    int32_t *tokens, *blocks, *bias_ids, *history;
    float *bias_values;
    uint32_t *masks;
    dsr1_wire_sample *samples;
} plan_buf;

static void plan_free(plan_buf *pb)
{
    free(pb->seqs);
    free(pb->tokens);
    free(pb->blocks);
    free(pb->bias_ids);
    free(pb->bias_values);
    free(pb->history);
    free(pb->masks);
    free(pb->samples);
}

static dsr1_status plan_alloc(plan_buf *pb, const dsr1_batch *b)
{
    size_t ntok = 0, nblk = 0, nbias = 0, nhist = 0, nmask = 0;
    for (int q = 0; q < b->n_seqs; q++) {
        const dsr1_seq_step *sq = &b->seqs[q];
        ntok += (size_t)sq->n_tokens;
        nblk += sq->blocks ? (size_t)sq->n_blocks : 0;
        const dsr1_seq_sample *r = seq_sample(sq);
        if (!r) continue;
        nbias += (size_t)r->params.n_bias;
        const dsr1_wire_sample w = dsr1_wire_sample_pack(r);
        nhist += (size_t)w.n_history;
        nmask += (size_t)w.mask_words;
    }
    memset(pb, 0, sizeof(*pb));
    const size_t n = (size_t)b->n_seqs + 1;
    pb->seqs = malloc(sizeof(*pb->seqs) * n);
    pb->samples = malloc(sizeof(*pb->samples) * n);
    pb->tokens = malloc(sizeof(int32_t) * (ntok + 1));
    pb->blocks = malloc(sizeof(int32_t) * (nblk + 1));
    pb->bias_ids = malloc(sizeof(int32_t) * (nbias + 1));
    pb->bias_values = malloc(sizeof(float) * (nbias + 1));
    pb->history = malloc(sizeof(int32_t) * (nhist + 1));
    pb->masks = malloc(sizeof(uint32_t) * (nmask + 1));
    if (!pb->seqs || !pb->samples || !pb->tokens || !pb->blocks || !pb->bias_ids ||
        !pb->bias_values || !pb->history || !pb->masks) {
        plan_free(pb);
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    }
    return DSR1_OK;
}

/* Appends sequence sq to the plan; with_sample: its sample request too. */
static void plan_add(plan_buf *pb, const dsr1_grid *c, const dsr1_seq_step *sq, bool with_sample)
{
    dsr1_wire_step *p = &pb->p;
    const int n_blocks = sq->blocks ? sq->n_blocks : 0;
    const dsr1_seq_sample *r = with_sample ? seq_sample(sq) : NULL;
    pb->seqs[p->n_seqs++] = (dsr1_wire_seq){
        sq->blocks ? 0 : sq->slot / c->ep, sq->pos, sq->n_tokens, sq->logits, n_blocks, r != NULL};
    memcpy(pb->tokens + p->n_tokens, sq->tokens, sizeof(int32_t) * (size_t)sq->n_tokens);
    p->n_tokens += sq->n_tokens;
    if (n_blocks) memcpy(pb->blocks + p->n_block_ids, sq->blocks, sizeof(int32_t) * n_blocks);
    p->n_block_ids += n_blocks;
    if (!r) return;
    const dsr1_wire_sample w = dsr1_wire_sample_pack(r);
    pb->samples[p->n_samples++] = w;
    if (w.n_bias) {
        memcpy(pb->bias_ids + p->n_bias, r->params.bias_ids, sizeof(int32_t) * w.n_bias);
        memcpy(pb->bias_values + p->n_bias, r->params.bias_values, sizeof(float) * w.n_bias);
    }
    p->n_bias += w.n_bias;
    if (w.n_history) memcpy(pb->history + p->n_history, r->history, sizeof(int32_t) * w.n_history);
    p->n_history += w.n_history;
    if (w.mask_words)
        memcpy(pb->masks + p->n_mask_words, r->params.allowed, sizeof(uint32_t) * w.mask_words);
    p->n_mask_words += w.mask_words;
}

/* Encodes EP rank e's plan (with the sample requests for the last stage) and sends it to
 * stages [first, last]. */
static dsr1_status send_plan(dsr1_grid *c, plan_buf *pb, const dsr1_batch *b, int e,
                             bool with_samples, int first, int last, uint64_t step)
{
    dsr1_wire_step *p = &pb->p;
    *p = (dsr1_wire_step){0};
    for (int q = 0; q < b->n_seqs; q++)
        if (seq_rank(c, &b->seqs[q]) == e) plan_add(pb, c, &b->seqs[q], with_samples);
    p->seqs = pb->seqs;
    p->tokens = pb->tokens;
    p->blocks = pb->blocks;
    p->samples = pb->samples;
    p->bias_ids = pb->bias_ids;
    p->bias_values = pb->bias_values;
    p->history = pb->history;
    p->masks = pb->masks;
    void *msg;
    size_t len;
    dsr1_status st = dsr1_wire_step_encode(step, p, &msg, &len);
    if (st != DSR1_OK) return st;
    for (int s = first; s <= last && st == DSR1_OK; s++)
        if (c->live[s * c->ep + e])
            st = dsr1_comm_send(c->world, dsr1_world_rank(s, e, c->ep), DSR1_TAG_CTRL, msg, len);
    free(msg);
    return st;
}

/* One STEP plan per EP rank, sent to that rank in every stage; only the last stage's
 * carries the sample requests. */
static dsr1_status send_plans(dsr1_grid *c, const dsr1_batch *b, uint64_t step)
{
    plan_buf pb;
    dsr1_status st = plan_alloc(&pb, b);
    if (st != DSR1_OK) return st;
    for (int e = 0; e < c->ep && st == DSR1_OK; e++) {
        if (c->pp > 1) st = send_plan(c, &pb, b, e, false, 0, c->pp - 2, step);
        if (st == DSR1_OK) st = send_plan(c, &pb, b, e, true, c->pp - 1, c->pp - 1, step);
    }
    plan_free(&pb);
    return st;
}

/* What the coordinator needs to route each sequence, and the sample requests, so that a bad
 * one is refused here rather than failing the grid (the workers check the rest). */
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
        if (!c->lane_live[seq_rank(c, sq)])
            return dsr1_error(DSR1_ERR_LOST,
                              "sequence %d: attention rank %d lost a worker (epoch %u)", q,
                              seq_rank(c, sq), c->epoch);
        dsr1_status st = dsr1_seq_sample_check(sq, q, c->vocab);
        if (st != DSR1_OK) return st;
    }
    return DSR1_OK;
}

/* While suspended: tells the live workers the coordinator is there (they wait for the
 * next epoch, and give up on a silent coordinator). */
static void ping(dsr1_grid *g)
{
    void *msg;
    size_t len;
    if (dsr1_wire_simple_encode(DSR1_MSG_PING, g->step, NULL, 0, &msg, &len) != DSR1_OK) return;
    for (int i = 0; i < g->workers; i++)
        if (g->live[i]) dsr1_comm_send(g->world, 1 + i, DSR1_TAG_CTRL, msg, len);
    free(msg);
}

dsr1_status dsr1_grid_submit(dsr1_grid *c, const dsr1_batch *b, uint64_t *step_out)
{
    if (c->broken)
        return dsr1_error(DSR1_ERR_IO, "the worker grid failed earlier and cannot run steps");
    if (c->suspended) {
        ping(c);
        return dsr1_error(DSR1_ERR_UNAVAILABLE, "%s", c->why);
    }
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
    f->arrived = calloc((size_t)c->ep, 1);
    f->pending = 0;
    if (!f->arrived) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    for (int e = 0; e < c->ep; e++) { /* a lost last-stage worker owes nothing */
        f->arrived[e] = !c->live[(c->pp - 1) * c->ep + e];
        f->pending += !f->arrived[e];
    }
    f->step = ++c->step;
    c->nq++;
    if ((st = send_plans(c, b, f->step)) != DSR1_OK) return on_failure(c, st);
    if (step_out) *step_out = f->step;
    return DSR1_OK;
}

/* Where the outputs of a batch's sequence go: its first logit row, sample and row logprob. */
typedef struct {
    int row, sample, row_lp;
} out_pos;

/* Advances o past sequence sq's outputs. */
static void skip_outputs(out_pos *o, const dsr1_seq_step *sq)
{
    const dsr1_batch one = {1, sq};
    o->row += dsr1_batch_logit_rows(&one);
    o->sample += dsr1_batch_samples(&one);
    o->row_lp += dsr1_batch_row_logprobs(&one);
}

/* Place one RESULT message of EP rank e into its step's batch: the logit rows, samples and
 * row logprobs of e's sequences, in their order. */
static dsr1_status take_result(dsr1_grid *c, inflight *f, int e, int src, const void *msg,
                               size_t len)
{
    dsr1_wire_result r;
    dsr1_status st = dsr1_wire_result_decode(msg, len, &r);
    if (st != DSR1_OK) return st;
    const dsr1_batch *b = f->b;
    out_pos want = {0}, at = {0};
    for (int q = 0; q < b->n_seqs; q++)
        if (seq_rank(c, &b->seqs[q]) == e) skip_outputs(&want, &b->seqs[q]);
    if (r.vocab != c->vocab || r.rows != want.row || r.n_samples != want.sample ||
        r.n_row_logprobs != want.row_lp)
        return dsr1_error(DSR1_ERR_FORMAT,
                          "worker %d returned %d logit rows of %d, %d samples and %d row "
                          "logprobs for step %llu; expected %d, %d, %d",
                          src - 1, r.rows, r.vocab, r.n_samples, r.n_row_logprobs,
                          (unsigned long long)f->step, want.row, want.sample, want.row_lp);
    /* the results hold e's samples in order, then its row logprobs in order */
    const size_t V = (size_t)c->vocab;
    int row = 0;
    for (int q = 0; q < b->n_seqs && st == DSR1_OK; skip_outputs(&at, &b->seqs[q]), q++) {
        const dsr1_batch one = {1, &b->seqs[q]};
        if (seq_rank(c, &b->seqs[q]) != e) continue;
        const int n = dsr1_batch_logit_rows(&one);
        if (n) memcpy(b->logits + at.row * V, r.logits + row * V, sizeof(float) * n * V);
        row += n;
        if (dsr1_batch_samples(&one)) st = dsr1_wire_result_next(&r, &b->samples[at.sample]);
    }
    at = (out_pos){0};
    for (int q = 0; q < b->n_seqs && st == DSR1_OK; skip_outputs(&at, &b->seqs[q]), q++) {
        const dsr1_batch one = {1, &b->seqs[q]};
        if (seq_rank(c, &b->seqs[q]) != e) continue;
        for (int i = 0; i < dsr1_batch_row_logprobs(&one) && st == DSR1_OK; i++)
            st = dsr1_wire_result_next(&r, &b->row_logprobs[at.row_lp + i]);
    }
    return st;
}

/* Whether a message's step or epoch is from before the last change of epoch: what the
 * workers sent for steps that were dropped. */
static bool stale(const dsr1_grid *c, const dsr1_wire_header *h)
{
    return h->type == DSR1_MSG_ADDR ? h->step < c->epoch : h->step <= c->dropped;
}

/* Receive one result message and account it to its step. With regroup, an ERROR blaming
 * a lost peer marks it suspect and returns DSR1_ERR_LOST. */
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
        if (c->regroup && (stale(c, &h) || src < 1 || src > c->workers || !c->live[src - 1])) {
            /* from a step or epoch that was dropped, or from a worker taken for lost */
        } else if (h.type == DSR1_MSG_ERROR) {
            int status, rank;
            char text[1024];
            if (dsr1_wire_error_decode(msg, len, &status, &rank, text, sizeof(text)) == DSR1_OK) {
                st = dsr1_error((dsr1_status)status, "worker %d failed: %s", src - 1, text);
                if (c->regroup && status == DSR1_ERR_LOST) {
                    c->reported[src - 1] = true;
                    if (rank >= 1 && rank <= c->workers) c->suspect[rank - 1] = true;
                }
            }
        } else if (h.type != DSR1_MSG_RESULT) {
            st = dsr1_error(DSR1_ERR_FORMAT, "worker %d sent message type %u for a result",
                            src - 1, h.type);
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
            else if ((st = take_result(c, f, e, src, msg, len)) == DSR1_OK) {
                f->arrived[e] = 1;
                f->pending--;
            }
        }
    }
    free(msg);
    return st;
}

/* ---- membership ---------------------------------------------------------------------------- */

/* What the survivors cannot serve without: a stage without a complete lane, or experts of a
 * stage without a live copy. Names them in the error. */
static dsr1_status check_coverage(dsr1_grid *g)
{
    update_lanes(g);
    int lanes = 0;
    for (int e = 0; e < g->ep; e++) lanes += g->lane_live[e];
    if (lanes == 0) {
        char st_names[128] = "";
        size_t o = 0;
        for (int s = 0; s < g->pp && o < sizeof(st_names) - 16; s++) {
            bool any = false;
            for (int e = 0; e < g->ep; e++) any |= g->live[s * g->ep + e];
            if (!any) o += (size_t)snprintf(st_names + o, sizeof(st_names) - o, " %d", s);
        }
        return dsr1_error(DSR1_ERR_UNAVAILABLE,
                          "no attention rank has a live worker in every stage (stages without "
                          "any live worker:%s); lost: %s",
                          o ? st_names : " none", g->lost_names);
    }
    int *missing = malloc(sizeof(int) * (size_t)(g->n_experts + 1));
    bool *live = malloc(sizeof(bool) * (size_t)g->ep);
    if (!missing || !live) {
        free(missing);
        free(live);
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    }
    dsr1_status st = DSR1_OK;
    for (int s = 0; s < g->pp && st == DSR1_OK; s++) {
        for (int e = 0; e < g->ep; e++) live[e] = g->live[s * g->ep + e];
        const int n = dsr1_placement_uncovered(g->owners, g->n_experts, g->replicas, live, missing);
        if (n == 0) continue;
        char ids[160] = "";
        size_t o = 0;
        for (int i = 0; i < n && o < sizeof(ids) - 16; i++)
            o += (size_t)snprintf(ids + o, sizeof(ids) - o, "%s%d", i ? ", " : "", missing[i]);
        st = dsr1_error(DSR1_ERR_UNAVAILABLE,
                        "stage %d has no live copy of %d routed expert(s): %s%s (with "
                        "--expert-replicas %d); lost: %s",
                        s, n, ids, o >= sizeof(ids) - 16 ? ", ..." : "", g->replicas,
                        g->lost_names);
    }
    free(missing);
    free(live);
    return st;
}

/* Keeps worker i's world address (a copy), for the CONNECTs that tell the others. */
static dsr1_status remember_address(dsr1_grid *g, int i, const void *addr, size_t len)
{
    if (g->waddr[i] && g->wlen[i] == len && !memcmp(g->waddr[i], addr, len)) return DSR1_OK;
    void *copy = malloc(len);
    if (!copy) return DSR1_ERR_NOMEM;
    memcpy(copy, addr, len);
    free(g->waddr[i]);
    g->waddr[i] = copy;
    g->wlen[i] = len;
    return DSR1_OK;
}

/* Takes every live worker under suspicion for lost, saying why in one line each (the line
 * the operators and the cluster tests look for: "grid: worker N (...) lost"), and renames
 * the lost. Both ways of losing a worker (a failed step, a regroup round it did not answer)
 * come here, so they cannot drift apart. The caller clears the suspicions when it is done
 * (on_failure after its regroup); lanes and coverage are worked out again by the regroup
 * that always follows. */
static void mark_lost(dsr1_grid *g, const char *why)
{
    for (int i = 0; i < g->workers; i++)
        if (g->live[i] && g->suspect[i]) {
            char name[64];
            worker_name(g, i, name, sizeof(name));
            DSR1_WARN("grid: %s lost (%s)", name, why);
            g->live[i] = false;
        }
    name_lost(g);
}

/* Moves the grid to a new epoch over the live workers: REGROUP to each, their ADDR back,
 * everyone's addresses to each (CONNECT). A worker that cannot be reached or does not
 * answer within the timeout is lost too, and the round starts again. */
static dsr1_status regroup(dsr1_grid *g)
{
    const int n = g->workers;
    int32_t *flags = malloc(sizeof(int32_t) * (size_t)n);
    dsr1_wire_addr *addr = calloc((size_t)n, sizeof(*addr));
    void **held = calloc((size_t)n, sizeof(void *)); /* each worker's ADDR message */
    dsr1_status st = DSR1_OK;
    if (!flags || !addr || !held) st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    for (bool again = true; st == DSR1_OK && again;) {
        again = false;
        if ((st = check_coverage(g)) != DSR1_OK) break;
        g->epoch++;
        g->dropped = g->step;
        for (int i = 0; i < n; i++) flags[i] = g->live[i];
        dsr1_wire_regroup rg = {g->epoch, g->step + 1, n, flags};
        void *msg;
        size_t len;
        if ((st = dsr1_wire_regroup_encode(&rg, &msg, &len)) != DSR1_OK) break;
        for (int i = 0; i < n; i++)
            if (g->live[i] && dsr1_comm_send(g->world, 1 + i, DSR1_TAG_CTRL, msg, len) != DSR1_OK)
                g->suspect[i] = again = true;
        free(msg);
        for (int i = 0; i < n; i++) {
            free(held[i]);
            held[i] = NULL;
        }
        int waiting = 0;
        for (int i = 0; i < n; i++) waiting += g->live[i] && !g->suspect[i];
        while (!again && waiting > 0) {
            int src;
            if (dsr1_comm_recv(g->world, DSR1_COMM_ANY, DSR1_TAG_RESULT, &msg, &len, &src)) {
                const int lost = dsr1_comm_culprit(g->world); /* found gone; else the silent */
                if (lost >= 1 && !(g->live[lost - 1] && !held[lost - 1]))
                    continue; /* a peer this round does not wait for */
                for (int i = 0; i < n; i++)
                    if (g->live[i] && !held[i] && (lost < 1 || lost == 1 + i)) g->suspect[i] = true;
                again = true;
                break;
            }
            dsr1_wire_header h;
            uint32_t epoch;
            int k;
            dsr1_wire_addr a;
            if (src >= 1 && src <= n && g->live[src - 1] && !held[src - 1] &&
                dsr1_wire_header_decode(msg, len, &h) == DSR1_OK && h.type == DSR1_MSG_ADDR &&
                dsr1_wire_addrs_decode(msg, len, &epoch, &a, 1, &k) == DSR1_OK && k == 1 &&
                epoch == g->epoch && a.rank == src) {
                held[src - 1] = msg;
                addr[src - 1] = a;
                waiting--;
                if (a.world_len > 0 && remember_address(g, src - 1, a.world_addr,
                                                        (size_t)a.world_len) != DSR1_OK) {
                    st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
                    break;
                }
                continue;
            }
            free(msg); /* results and errors of the dropped steps */
        }
        for (int i = 0; i < n; i++) /* the world group found them gone meanwhile */
            if (g->live[i] && dsr1_comm_peer_lost(g->world, 1 + i)) g->suspect[i] = again = true;
        if (again) {
            char why[48];
            snprintf(why, sizeof(why), "did not join epoch %u", g->epoch);
            mark_lost(g, why);
            continue;
        }
        if (st != DSR1_OK) break;
        int m = 0;
        for (int i = 0; i < n; i++)
            if (g->live[i]) {
                addr[m] = addr[i];
                addr[m].world_addr = g->waddr[i];
                addr[m++].world_len = (int32_t)g->wlen[i];
            }
        if ((st = dsr1_wire_addrs_encode(DSR1_MSG_CONNECT, g->epoch, addr, m, &msg, &len)))
            break;
        for (int i = 0; i < n; i++)
            if (g->live[i]) dsr1_comm_send(g->world, 1 + i, DSR1_TAG_CTRL, msg, len);
        free(msg); /* a worker that fails now fails the next step: another epoch */
    }
    for (int i = 0; held && i < n; i++) free(held[i]);
    free(flags);
    free(addr);
    free(held);
    if (st == DSR1_OK) {
        update_lanes(g);
        int wl = 0, ll = 0;
        for (int i = 0; i < n; i++) wl += g->live[i];
        for (int e = 0; e < g->ep; e++) ll += g->lane_live[e];
        if (wl == n)
            DSR1_INFO("grid: epoch %u, all %d workers live", g->epoch, n);
        else
            DSR1_WARN("grid: epoch %u: %d of %d workers live, %d of %d attention ranks serve; "
                      "lost: %s",
                      g->epoch, wl, n, ll, g->ep, g->lost_names);
    }
    return st;
}

/* The survivors cannot serve (dsr1_errmsg() says why): no steps until workers join. */
static dsr1_status suspend(dsr1_grid *g)
{
    snprintf(g->why, sizeof(g->why), "%s", dsr1_errmsg());
    g->suspended = true;
    DSR1_ERROR("grid: %s; waiting for workers to join", g->why);
    ping(g);
    return dsr1_error(DSR1_ERR_UNAVAILABLE, "%s", g->why);
}

/* Hands over the failure of a step (st, from a send or a receive): without regroup, fails
 * the grid. With it: gathers the reports still coming for a moment, takes the workers they
 * blame (or that the world group found gone; failing both, those that owe the oldest step
 * its results) for lost, and moves to a new epoch; DSR1_ERR_LOST, or a fatal error when
 * the survivors cannot serve. */
static dsr1_status on_failure(dsr1_grid *g, dsr1_status st)
{
    if (!g->regroup) return fail(g, st);
    char first[512];
    snprintf(first, sizeof(first), "%s", dsr1_errmsg());
    if (st != DSR1_ERR_LOST && st != DSR1_ERR_IO) return fail(g, st); /* not a lost peer */
    /* A report that blames nobody (a peer woken by the abort of a worker that found the
     * culprit) may arrive before the one that does: wait for more while nobody is blamed
     * and someone has yet to report (bounded by the world group's timeout). */
    for (;;) {
        bool blamed = false, pending = false;
        for (int i = 0; i < g->workers; i++) {
            if (g->live[i] && dsr1_comm_peer_lost(g->world, 1 + i)) g->suspect[i] = true;
            blamed |= g->live[i] && g->suspect[i] && !g->reported[i];
            pending |= g->live[i] && !g->reported[i];
        }
        if (blamed || !pending || st != DSR1_ERR_LOST) break;
        dsr1_status more = receive_one(g);
        if (more != DSR1_OK && more != DSR1_ERR_LOST) break;
    }
    int n_lost = 0;
    for (int i = 0; i < g->workers; i++) {
        if (g->live[i] && dsr1_comm_peer_lost(g->world, 1 + i)) g->suspect[i] = true;
        if (g->reported[i]) g->suspect[i] = false; /* it spoke: alive */
        n_lost += g->live[i] && g->suspect[i];
    }
    if (n_lost == 0 && g->nq > 0) /* nobody blamed: those that owe the oldest step */
        for (int e = 0; e < g->ep; e++) {
            const int i = (g->pp - 1) * g->ep + e;
            if (!g->q[0].arrived[e] && g->live[i] && !g->reported[i]) g->suspect[i] = true;
            n_lost += g->suspect[i];
        }
    if (n_lost == 0) return fail(g, dsr1_error(st, "%s (no worker to blame)", first));
    mark_lost(g, first);
    /* the steps in flight are dropped: their workers were told to stop or failed */
    for (int i = 0; i < g->nq; i++) free(g->q[i].arrived);
    g->nq = 0;
    const int64_t t0 = now_ms();
    st = regroup(g);
    memset(g->reported, 0, sizeof(bool) * (size_t)g->workers);
    memset(g->suspect, 0, sizeof(bool) * (size_t)g->workers);
    if (st == DSR1_ERR_UNAVAILABLE) return suspend(g);
    if (st != DSR1_OK) return fail(g, st);
    /* tell the workers left out to go (a stopped process that wakes up finds this) */
    void *msg;
    size_t len;
    if (dsr1_wire_simple_encode(DSR1_MSG_SHUTDOWN, g->step, NULL, 0, &msg, &len) == DSR1_OK) {
        for (int i = 0; i < g->workers; i++)
            if (!g->live[i] && !dsr1_comm_peer_lost(g->world, 1 + i))
                dsr1_comm_send(g->world, 1 + i, DSR1_TAG_CTRL, msg, len);
        free(msg);
    }
    return dsr1_error(DSR1_ERR_LOST, "%s; the grid goes on in epoch %u (regrouped in %lld ms)",
                      first, g->epoch, (long long)(now_ms() - t0));
}

int dsr1_grid_vacancy(const dsr1_grid *g, int want)
{
    if (!g->regroup || g->broken) return -1; /* suspended: places to take */
    if (want >= 0) return want < g->workers && !g->live[want] ? want : -1;
    for (int i = 0; i < g->workers; i++)
        if (!g->live[i]) return i;
    return -1;
}

int dsr1_grid_in_flight(const dsr1_grid *g)
{
    return g->nq;
}

dsr1_status dsr1_grid_admit(dsr1_grid *g, int index, const void *addr, size_t len)
{
    if (dsr1_grid_vacancy(g, index) != index || g->nq > 0)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "worker %d cannot join now (%s, %d steps in flight)",
                          index, index >= 0 && index < g->workers && g->live[index] ? "live" : "no place",
                          g->nq);
#if DSR1_HAVE_UCX
    dsr1_status st = dsr1_comm_ucx_replace_peer(g->world, 1 + index, addr, len);
    if (st == DSR1_OK) st = remember_address(g, index, addr, len);
    if (st != DSR1_OK) return st;
    char name[64];
    worker_name(g, index, name, sizeof(name));
    g->live[index] = true;
    g->suspect[index] = false;
    const int64_t t0 = now_ms();
    st = regroup(g);
    if (st == DSR1_ERR_UNAVAILABLE) { /* still not enough: stays suspended */
        DSR1_INFO("grid: %s joined; still waiting: %s", name, dsr1_errmsg());
        return suspend(g);
    }
    if (st != DSR1_OK) return fail(g, st);
    if (g->suspended) DSR1_WARN("grid: the grid can serve again");
    g->suspended = false;
    DSR1_INFO("grid: %s joined", name);
    return dsr1_error(DSR1_ERR_LOST, "%s joined; the grid goes on in epoch %u (regrouped in %lld ms)",
                      name, g->epoch, (long long)(now_ms() - t0));
#else
    (void)addr;
    (void)len;
    return dsr1_error(DSR1_ERR_UNSUPPORTED, "joining needs a build with UCX");
#endif
}

void dsr1_grid_membership(const dsr1_grid *g, dsr1_grid_health *out, bool *alive)
{
    memset(out, 0, sizeof(*out));
    out->epoch = g->epoch;
    out->workers = g->workers;
    out->lanes = g->ep;
    out->replicas = g->replicas;
    for (int i = 0; i < g->workers; i++) out->workers_live += g->live[i];
    for (int e = 0; e < g->ep; e++) {
        out->lanes_live += g->lane_live[e];
        if (alive) alive[e] = g->lane_live[e];
    }
    snprintf(out->lost, sizeof(out->lost), "%s", g->lost_names);
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
        if (st == DSR1_OK) continue;
        /* the endpoint of a worker taken out earlier closing (it died, or came back from a
         * partition and was killed) is no failure of this step */
        const int r = dsr1_comm_culprit(c->world);
        if (c->regroup && st == DSR1_ERR_IO && r >= 1 && r <= c->workers && !c->live[r - 1])
            continue;
        return on_failure(c, st);
    }
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
    for (int i = 0; i < c->workers; i++)
        if (c->live[i]) dsr1_comm_send(c->world, 1 + i, DSR1_TAG_CTRL, msg, len);
    free(msg);
}

void dsr1_grid_destroy(dsr1_grid *g)
{
    if (!g) return;
    for (int i = 0; i < g->nq; i++) free(g->q[i].arrived);
    free(g->q);
    free(g->live);
    free(g->reported);
    free(g->suspect);
    free(g->lane_live);
    free(g->owners);
    for (int i = 0; g->waddr && i < g->workers; i++) free(g->waddr[i]);
    free(g->waddr);
    free(g->wlen);
    free(g);
}
