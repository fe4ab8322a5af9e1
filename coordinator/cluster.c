/* Coordinator side of a worker grid and the embedded (threads + in-process transport)
 * launcher (see cluster.h). */
#include "cluster.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "wire.h"
#include "worker_loop.h"

typedef struct {
    dsr1_worker w;
    dsr1_weights *weights;
    dsr1_pool *pool;
    pthread_t thread;
    int started;
    dsr1_status result;
} worker_slot;

struct dsr1_cluster {
    int workers, pp, ep, vocab;
    dsr1_comm **world;    /* [workers + 1], rank 0 is ours */
    dsr1_comm **ep_comms; /* [workers]: stage s, index e at s * ep + e */
    int *owner;
    worker_slot *slots;
    uint64_t step;
    int broken;
};

static void *worker_main(void *arg)
{
    worker_slot *s = arg;
    s->result = dsr1_worker_serve(&s->w);
    return NULL;
}

static dsr1_status load_worker(dsr1_cluster *c, const dsr1_cluster_params *p,
                               const dsr1_model_config *cfg, int stage, int e, worker_slot *ws)
{
    const int L = cfg->num_hidden_layers, E = cfg->n_routed_experts;
    int *mine = malloc(sizeof(int) * (size_t)E), n = 0;
    if (!mine) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    for (int x = 0; x < E; x++)
        if (c->owner[x] == e) mine[n++] = x;
    dsr1_slice s = {stage * L / c->pp, (stage + 1) * L / c->pp, n, mine};
    dsr1_status st = p->ckpt ? dsr1_weights_load(p->ckpt, &s, &ws->weights)
                             : dsr1_weights_dummy(cfg, &s, p->seed, &ws->weights);
    free(mine);
    if (st != DSR1_OK) return st;
    int threads = p->threads > 0 ? p->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    threads = threads / c->workers > 1 ? threads / c->workers : 1;
    if ((st = dsr1_pool_create(threads, &ws->pool)) != DSR1_OK) return st;
    const int local_slots = (p->n_slots + c->ep - 1) / c->ep;
    if ((st = dsr1_engine_create(ws->weights, p->kernels, ws->pool, local_slots, p->max_tokens,
                                 &ws->w.engine)) != DSR1_OK)
        return st;
    ws->w.stage = stage;
    ws->w.n_stages = c->pp;
    ws->w.ep_index = e;
    ws->w.ep_size = c->ep;
    ws->w.world = c->world[dsr1_world_rank(stage, e, c->ep)];
    ws->w.ep = c->ep > 1 ? c->ep_comms[stage * c->ep + e] : NULL;
    ws->w.expert_owner = c->owner;
    ws->w.cfg = &ws->weights->cfg;
    DSR1_INFO("worker %d: stage %d (layers [%d, %d)), EP rank %d/%d, experts [%d..%d], "
              "%.1f MB of weights",
              stage * c->ep + e, stage, s.layer_begin, s.layer_end, e, c->ep,
              n ? (int)(e * (long)E / c->ep) : -1, n ? (int)((e + 1) * (long)E / c->ep) - 1 : -1,
              ws->weights->bytes / 1e6);
    return DSR1_OK;
}

dsr1_status dsr1_cluster_create(const dsr1_cluster_params *p, dsr1_cluster **out)
{
    const dsr1_model_config *cfg = p->ckpt ? dsr1_ckpt_config(p->ckpt) : p->dummy_cfg;
    if (p->workers < 1 || p->pp < 1 || p->workers % p->pp)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "%d workers cannot form %d pipeline stages "
                          "(workers must be a multiple of --pp)",
                          p->workers, p->pp);
    if (p->pp > cfg->num_hidden_layers)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "%d pipeline stages for %d layers", p->pp,
                          cfg->num_hidden_layers);
    if (p->workers / p->pp > cfg->n_routed_experts)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "%d expert-parallel ranks for %d experts",
                          p->workers / p->pp, cfg->n_routed_experts);
    dsr1_cluster *c = calloc(1, sizeof(*c));
    if (!c) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    c->workers = p->workers;
    c->pp = p->pp;
    c->ep = p->workers / p->pp;
    c->vocab = cfg->vocab_size;
    c->world = calloc((size_t)p->workers + 1, sizeof(dsr1_comm *));
    c->ep_comms = calloc((size_t)p->workers, sizeof(dsr1_comm *));
    c->owner = malloc(sizeof(int) * (size_t)cfg->n_routed_experts);
    c->slots = calloc((size_t)p->workers, sizeof(worker_slot));
    dsr1_status st;
    if (!c->world || !c->ep_comms || !c->owner || !c->slots) {
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        goto err;
    }
    for (int x = 0; x < cfg->n_routed_experts; x++)
        c->owner[x] = (int)((long)x * c->ep / cfg->n_routed_experts);
    const int timeout = p->timeout_ms > 0 ? p->timeout_ms : 60000;
    if ((st = dsr1_comm_inproc_create(p->workers + 1, timeout, c->world)) != DSR1_OK) goto err;
    for (int s = 0; s < c->pp && c->ep > 1; s++)
        if ((st = dsr1_comm_inproc_create(c->ep, timeout, c->ep_comms + s * c->ep)) != DSR1_OK)
            goto err;
    DSR1_INFO("grid: %d workers = %d pipeline stage(s) x %d expert-parallel rank(s), in-process "
              "transport",
              c->workers, c->pp, c->ep);
    for (int s = 0; s < c->pp; s++)
        for (int e = 0; e < c->ep; e++)
            if ((st = load_worker(c, p, cfg, s, e, &c->slots[s * c->ep + e])) != DSR1_OK) goto err;
    for (int i = 0; i < c->workers; i++) {
        if (pthread_create(&c->slots[i].thread, NULL, worker_main, &c->slots[i]) != 0) {
            st = dsr1_error(DSR1_ERR_NOMEM, "cannot start worker thread %d", i);
            goto err;
        }
        c->slots[i].started = 1;
    }
    *out = c;
    return DSR1_OK;
err:
    dsr1_cluster_destroy(c);
    return st;
}

static dsr1_status fail(dsr1_cluster *c, dsr1_status st)
{
    c->broken = 1;
    dsr1_comm_abort(c->world[0], dsr1_errmsg());
    return st;
}

dsr1_status dsr1_cluster_step(dsr1_cluster *c, const dsr1_batch *b)
{
    if (c->broken)
        return dsr1_error(DSR1_ERR_IO, "the worker grid failed earlier and cannot run steps");
    const uint64_t step = ++c->step;
    const int V = c->vocab;
    dsr1_status st = DSR1_OK;
    dsr1_wire_seq *ws = malloc(sizeof(*ws) * ((size_t)b->n_seqs + 1));
    int32_t *tok = NULL;
    int *row_of = malloc(sizeof(int) * ((size_t)b->n_seqs + 1)); /* first output row */
    size_t ntok = 0;
    for (int q = 0; q < b->n_seqs; q++) ntok += (size_t)b->seqs[q].n_tokens;
    tok = malloc(sizeof(int32_t) * (ntok + 1));
    if (!ws || !tok || !row_of) {
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
            st = dsr1_comm_send(c->world[0], dsr1_world_rank(s, e, c->ep), DSR1_TAG_CTRL, msg, len);
        free(msg);
    }
    if (st != DSR1_OK) {
        st = fail(c, st);
        goto out;
    }
    /* one result per EP rank, from the last stage, in whatever order they finish */
    for (int got = 0; got < c->ep; got++) {
        void *msg;
        size_t len;
        int src;
        if ((st = dsr1_comm_recv(c->world[0], DSR1_COMM_ANY, DSR1_TAG_RESULT, &msg, &len, &src))) {
            st = fail(c, dsr1_error_context(st, "waiting for the workers"));
            goto out;
        }
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
    return st;
}

void dsr1_cluster_destroy(dsr1_cluster *c)
{
    if (!c) return;
    if (c->world && c->world[0] && !c->broken) {
        void *msg;
        size_t len;
        if (dsr1_wire_simple_encode(DSR1_MSG_SHUTDOWN, c->step, NULL, 0, &msg, &len) == DSR1_OK) {
            for (int i = 0; i < c->workers; i++)
                if (c->slots[i].started)
                    dsr1_comm_send(c->world[0], 1 + i, DSR1_TAG_CTRL, msg, len);
            free(msg);
        }
    } else if (c->world && c->world[0]) {
        dsr1_comm_abort(c->world[0], "coordinator shutting down");
    }
    for (int i = 0; c->slots && i < c->workers; i++) {
        worker_slot *s = &c->slots[i];
        if (s->started) pthread_join(s->thread, NULL);
        dsr1_engine_destroy(s->w.engine);
        dsr1_pool_destroy(s->pool);
        dsr1_weights_destroy(s->weights);
    }
    for (int i = 0; c->world && i <= c->workers; i++) dsr1_comm_destroy(c->world[i]);
    for (int i = 0; c->ep_comms && i < c->workers; i++) dsr1_comm_destroy(c->ep_comms[i]);
    free(c->world);
    free(c->ep_comms);
    free(c->owner);
    free(c->slots);
    free(c);
}

uint64_t dsr1_cluster_worker_bytes(const dsr1_cluster *c, int i)
{
    return i >= 0 && i < c->workers && c->slots[i].weights ? c->slots[i].weights->bytes : 0;
}
