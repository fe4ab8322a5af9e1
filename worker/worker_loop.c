/* The worker serving loop (see worker_loop.h). */
#include "worker_loop.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bootstrap_mpi.h"
#include "dsr1_build_config.h"
#include "log.h"
#include "numa_bind.h"
#include "wire.h"

/* The world rank whose loss failed the step (-1: not known): the culprit of a data group
 * mapped back to the grid. */
static int lost_peer(const dsr1_worker *w)
{
    if (w->ep) {
        const int r = dsr1_comm_culprit(w->ep);
        for (int e = 0; r >= 0 && e < w->ep_size; e++)
            if ((w->member ? w->member[e] : e) == r)
                return dsr1_world_rank(w->stage, e, w->ep_size);
    }
    const int r = dsr1_comm_culprit(w->world);
    return r > 0 ? r : -1;
}

/* Tells the coordinator why step `step` failed: with regrouping, a communication failure
 * is DSR1_ERR_LOST naming the peer to blame; anything else names this worker. Then aborts
 * the data groups so that no peer waits for this worker. */
static void report_error(dsr1_worker *w, dsr1_status st, uint64_t step)
{
    const char *m = dsr1_errmsg();
    char text[1024];
    int n = snprintf(text, sizeof(text), "stage %d, EP rank %d: %s", w->stage, w->ep_index, m);
    if (n < 0) n = 0;
    if ((size_t)n >= sizeof(text)) n = sizeof(text) - 1;
    const int peer = w->regroup && st == DSR1_ERR_IO ? lost_peer(w) : -2;
    int32_t h[2] = {peer >= -1 ? DSR1_ERR_LOST : st, peer >= -1 ? peer : w->world->rank};
    unsigned char *body = malloc(8 + (size_t)n);
    if (body) {
        memcpy(body, h, 8);
        memcpy(body + 8, text, (size_t)n);
        void *msg;
        size_t len;
        if (dsr1_wire_simple_encode(DSR1_MSG_ERROR, step, body, 8 + (size_t)n, &msg, &len) ==
            DSR1_OK) {
            dsr1_comm_send(w->world, 0, DSR1_TAG_RESULT, msg, len);
            free(msg);
        }
        free(body);
    }
    DSR1_ERROR("%s", text);
    if (w->ep) dsr1_comm_abort(w->ep, text);
    if (w->regroup && w->stage + 1 < w->n_stages && !w->hidden_sent) /* nothing comes */
        dsr1_comm_send(w->world, dsr1_world_rank(w->stage + 1, w->ep_index, w->ep_size),
                       dsr1_hidden_tag(w->epoch), "", 0);
}

dsr1_wire_sample dsr1_wire_sample_pack(const dsr1_seq_sample *q)
{
    const dsr1_sampling *p = &q->params;
    const bool history = dsr1_sampling_uses_history(p);
    const int32_t flags = (q->logprobs ? DSR1_WIRE_LOGPROBS : 0) |
                          (q->prompt_logprobs ? DSR1_WIRE_PROMPT_LOGPROBS : 0) |
                          (q->next ? DSR1_WIRE_NEXT : 0);
    return (dsr1_wire_sample){p->temperature,
                              p->top_p,
                              p->min_p,
                              p->presence_penalty,
                              p->frequency_penalty,
                              p->repetition_penalty,
                              p->top_k,
                              p->top_logprobs,
                              {(uint32_t)p->seed, (uint32_t)(p->seed >> 32)},
                              {(uint32_t)q->step, (uint32_t)(q->step >> 32)},
                              flags,
                              q->next ? *q->next : 0,
                              p->n_bias,
                              history ? q->n_prompt : 0,
                              history ? q->n_history : 0,
                              p->allowed ? p->mask_words : 0};
}

dsr1_seq_sample dsr1_wire_sample_unpack(const dsr1_wire_sample *r, const int32_t *bias_ids,
                                        const float *bias_values, const int32_t *history,
                                        const uint32_t *mask)
{
    dsr1_seq_sample q = {0};
    q.params = (dsr1_sampling){.temperature = r->temperature,
                               .top_p = r->top_p,
                               .top_k = r->top_k,
                               .min_p = r->min_p,
                               .seed = r->seed[0] | (uint64_t)r->seed[1] << 32,
                               .presence_penalty = r->presence_penalty,
                               .frequency_penalty = r->frequency_penalty,
                               .repetition_penalty = r->repetition_penalty,
                               .n_bias = r->n_bias,
                               .bias_ids = bias_ids,
                               .bias_values = bias_values,
                               .top_logprobs = r->top_logprobs,
                               .allowed = r->mask_words ? mask : NULL,
                               .mask_words = r->mask_words};
    q.step = r->step[0] | (uint64_t)r->step[1] << 32;
    q.history = history;
    q.n_prompt = r->n_prompt;
    q.n_history = r->n_history;
    q.logprobs = r->flags & DSR1_WIRE_LOGPROBS;
    q.prompt_logprobs = r->flags & DSR1_WIRE_PROMPT_LOGPROBS;
    q.next = r->flags & DSR1_WIRE_NEXT ? &r->next_token : NULL;
    return q;
}

/* The steps of a decoded STEP plan's sequences; their sample requests go to req. */
static void plan_seqs(const dsr1_worker *w, const dsr1_wire_step *plan, dsr1_seq_step *seqs,
                      dsr1_seq_sample *req)
{
    const dsr1_wire_seq *ws = plan->seqs;
    int t = 0, k = 0, m = 0, bias = 0, hist = 0, words = 0;
    for (int i = 0; i < plan->n_seqs; t += ws[i].n_tokens, k += ws[i].n_blocks, i++) {
        seqs[i] = (dsr1_seq_step){ws[i].slot,
                                  ws[i].pos,
                                  ws[i].n_tokens,
                                  plan->tokens + t,
                                  (dsr1_logits_mode)ws[i].logits,
                                  ws[i].n_blocks ? plan->blocks + k : NULL,
                                  ws[i].n_blocks,
                                  w->ep_index};
        if (!ws[i].sample) continue;
        const dsr1_wire_sample *r = &plan->samples[m];
        req[m] = dsr1_wire_sample_unpack(r, plan->bias_ids + bias, plan->bias_values + bias,
                                         plan->history + hist, plan->masks + words);
        seqs[i].sample = &req[m++];
        bias += r->n_bias;
        hist += r->n_history;
        words += r->mask_words;
    }
}

/* One step; `plan` is a decoded STEP message. */
static dsr1_status run_step(dsr1_worker *w, uint64_t step, const dsr1_wire_step *plan)
{
    const int n_seqs = plan->n_seqs, n_tokens = plan->n_tokens;
    const int D = w->cfg->hidden_size, V = w->cfg->vocab_size;
    const int last = w->stage == w->n_stages - 1;
    dsr1_status st = DSR1_OK;
    dsr1_seq_step *seqs = calloc((size_t)n_seqs + 1, sizeof(*seqs));
    dsr1_seq_sample *req = calloc((size_t)plan->n_samples + 1, sizeof(*req));
    dsr1_sample_result *res = NULL;
    float *hin = NULL, *hout = NULL, *logits = NULL;
    void *msg = NULL;
    size_t len;
    if (!seqs || !req) goto nomem;
    plan_seqs(w, plan, seqs, req);
    dsr1_batch b = {n_seqs, seqs};
    const int rows = dsr1_batch_logit_rows(&b), n_samples = dsr1_batch_samples(&b),
              n_row_lp = dsr1_batch_row_logprobs(&b);
    w->hidden_sent = false;
    if (w->stage > 0 && n_tokens > 0) {
        const int src = dsr1_world_rank(w->stage - 1, w->ep_index, w->ep_size);
        if ((st = dsr1_comm_recv(w->world, src, dsr1_hidden_tag(w->epoch), &msg, &len, NULL)))
            goto out;
        if (len == 0) { /* the previous stage gave up on this step */
            st = dsr1_error(DSR1_ERR_IO, "step %llu: stage %d gave up on it",
                            (unsigned long long)step, w->stage - 1);
            goto out;
        }
        if (len != sizeof(float) * (size_t)n_tokens * D) {
            st = dsr1_error(DSR1_ERR_FORMAT,
                            "step %llu: %zu bytes of hidden states from stage %d "
                            "for %d tokens",
                            (unsigned long long)step, len, w->stage - 1, n_tokens);
            goto out;
        }
        hin = msg;
        msg = NULL;
    }
    if (!last && !(hout = malloc(sizeof(float) * ((size_t)n_tokens * D + 1)))) goto nomem;
    if (last) {
        /* the logit rows go straight into the RESULT message, the samples after them */
        st = dsr1_wire_result_alloc(step, rows, V, n_samples, n_row_lp, &msg, &logits);
        if (st != DSR1_OK) goto out;
        if (!(res = malloc(sizeof(*res) * ((size_t)n_samples + n_row_lp + 1)))) goto nomem;
        b = (dsr1_batch){n_seqs, seqs, logits, res, res + n_samples};
    }
    dsr1_step_io io = {w->stage > 0 ? hin : NULL, last ? NULL : hout, w->ep, &w->placement};
    if (n_seqs == 0 && !w->ep) { /* nothing to do, no group to serve */
    } else if ((st = dsr1_engine_step(w->engine, &b, &io)) != DSR1_OK) {
        goto out;
    }
    if (!last) {
        if (n_tokens > 0)
            st = dsr1_comm_send(w->world, dsr1_world_rank(w->stage + 1, w->ep_index, w->ep_size),
                                dsr1_hidden_tag(w->epoch), hout,
                                sizeof(float) * (size_t)n_tokens * D);
        w->hidden_sent = true;
    } else {
        dsr1_wire_result_seal(msg, res, res + n_samples, &len);
        st = dsr1_comm_send(w->world, 0, DSR1_TAG_RESULT, msg, len);
    }
    goto out;
nomem:
    st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
out:
    free(seqs);
    free(req);
    free(res);
    free(hin);
    free(hout);
    free(msg);
    return st;
}

/* A paged worker's bound on the tokens of one step: every token of a step writes its own
 * cache row, and a STEP message carries at most DSR1_WIRE_MAX_TOKENS. */
static int paged_step_tokens(const dsr1_worker_params *p)
{
    const int64_t rows = (int64_t)p->kv_blocks * p->block_tokens;
    return rows < DSR1_WIRE_MAX_TOKENS ? (int)rows : DSR1_WIRE_MAX_TOKENS;
}

dsr1_status dsr1_worker_placement(const dsr1_model_config *cfg, int ep, int replicas,
                                  const int *hosts, int **owners)
{
    const int E = cfg->n_routed_experts, R = replicas > 0 ? replicas : 1;
    *owners = malloc(sizeof(int) * (size_t)E * R);
    if (!*owners) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    dsr1_status st = dsr1_placement_replicated(E, ep, R, hosts, *owners);
    if (st != DSR1_OK) {
        free(*owners);
        *owners = NULL;
        return dsr1_error_context(st, "--expert-replicas %d over %d EP ranks", R, ep);
    }
    return DSR1_OK;
}

dsr1_status dsr1_worker_init(dsr1_worker *w, const dsr1_worker_params *p)
{
    const dsr1_model_config *cfg = p->ckpt ? dsr1_ckpt_config(p->ckpt) : p->dummy_cfg;
    const int L = cfg->num_hidden_layers, E = cfg->n_routed_experts, ep = p->workers / p->pp;
    const int R = p->replicas > 0 ? p->replicas : 1;
    memset(w, 0, sizeof(*w));
    int *mine = malloc(sizeof(int) * (size_t)E), n = 0;
    w->member = malloc(sizeof(int) * (size_t)ep);
    w->peer_addr = calloc((size_t)p->workers, sizeof(void *));
    w->peer_len = calloc((size_t)p->workers, sizeof(size_t));
    dsr1_status st = DSR1_OK;
    if (!mine || !w->member || !w->peer_addr || !w->peer_len) {
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (p->owners) {
        if (!(w->owners = malloc(sizeof(int) * (size_t)E * R))) {
            st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
            goto out;
        }
        for (int i = 0; i < E * R; i++) {
            if (p->owners[i] < 0 || p->owners[i] >= ep) {
                st = dsr1_error(DSR1_ERR_INVALID_ARG, "expert placement names EP rank %d of %d",
                                p->owners[i], ep);
                goto out;
            }
            w->owners[i] = p->owners[i];
        }
    } else if ((st = dsr1_worker_placement(cfg, ep, R, p->hosts, &w->owners)) != DSR1_OK) {
        goto out;
    }
    for (int x = 0; x < E; x++)
        for (int c = 0; c < R; c++)
            if (w->owners[x * R + c] == p->ep_index) {
                mine[n++] = x;
                break;
            }
    for (int e = 0; e < ep; e++) w->member[e] = e;
    w->placement = (dsr1_moe_placement){ep, R, w->owners, w->member};
    dsr1_slice s = {dsr1_stage_first_layer(L, p->pp, p->stage),
                    dsr1_stage_first_layer(L, p->pp, p->stage + 1), n, mine};
    /* the slice is faulted in, and the pool's threads start, on the worker's node */
    w->numa_node = dsr1_numa_node_for(p->stage * ep + p->ep_index);
    dsr1_numa_binding caller;
    dsr1_numa_bind(w->numa_node, &caller);
    st = p->ckpt ? dsr1_weights_load(p->ckpt, &s, &w->weights)
                 : dsr1_weights_dummy(cfg, &s, p->seed, &w->weights);
    if (st == DSR1_OK) st = dsr1_pool_create(p->threads > 0 ? p->threads : 1, &w->pool);
    dsr1_numa_unbind(&caller);
    if (st != DSR1_OK) goto out;
    st = p->kv_blocks > 0
             ? dsr1_engine_create_paged(w->weights, p->kernels, w->pool, p->kv_blocks,
                                        p->block_tokens, paged_step_tokens(p), &w->engine)
             : dsr1_engine_create(w->weights, p->kernels, w->pool, p->n_slots, p->max_tokens,
                                  &w->engine);
    if (st != DSR1_OK) goto out;
    w->stage = p->stage;
    w->n_stages = p->pp;
    w->ep_index = p->ep_index;
    w->ep_size = ep;
    w->cfg = &w->weights->cfg;
    DSR1_INFO("worker %d: stage %d/%d (layers [%d, %d)), EP rank %d/%d, %d routed experts "
              "(%d cop%s of each in the stage), %.1f MB of weights",
              p->stage * ep + p->ep_index, p->stage, p->pp, s.layer_begin, s.layer_end, p->ep_index,
              ep, n, R, R == 1 ? "y" : "ies", w->weights->bytes / 1e6);
out:
    free(mine);
    if (st != DSR1_OK) dsr1_worker_fini(w);
    return st;
}

void dsr1_worker_fini(dsr1_worker *w)
{
    dsr1_engine_destroy(w->engine);
    dsr1_pool_destroy(w->pool);
    dsr1_weights_destroy(w->weights);
    free(w->owners);
    free(w->member);
    for (int i = 0; w->peer_addr && i < w->n_stages * w->ep_size; i++) free(w->peer_addr[i]);
    free(w->peer_addr);
    free(w->peer_len);
    memset(w, 0, sizeof(*w));
}

/* After reporting a failure, waits for the coordinator's verdict (it aborts the world
 * group, or shuts it down) before returning: a worker process that exited at once could
 * take the job down (mpirun ends a job whose process failed) before the coordinator has
 * read the report, which would then blame this worker instead of the one at fault. Steps
 * still arriving are dropped; the wait is bounded by the group's timeout. Returns st with
 * the report's message. */
static dsr1_status await_verdict(dsr1_worker *w, dsr1_status st)
{
    char text[1024];
    snprintf(text, sizeof(text), "%s", dsr1_errmsg());
    for (;;) {
        void *msg;
        size_t len;
        if (dsr1_comm_recv(w->world, 0, DSR1_TAG_CTRL, &msg, &len, NULL) != DSR1_OK) break;
        dsr1_wire_header h;
        const bool shutdown =
            dsr1_wire_header_decode(msg, len, &h) == DSR1_OK && h.type == DSR1_MSG_SHUTDOWN;
        free(msg);
        if (shutdown) break;
    }
    return dsr1_error(st, "%s", text);
}

/* Drops the EP group of the last epoch (aborted first, so that closing it waits for no
 * peer); a fixed group stays. */
static void drop_groups(dsr1_worker *w)
{
    if (!w->regroup) return; /* fixed groups belong to the launcher */
    if (w->ep) dsr1_comm_abort(w->ep, "the grid moves to a new epoch");
    dsr1_comm_destroy(w->ep);
    w->ep = NULL;
}

#if DSR1_HAVE_UCX
/* Worker wi's world address as a CONNECT gives it: recorded the first time, and a changed
 * one (a worker that joined in its place) replaces the world endpoint. */
static dsr1_status update_peer(dsr1_worker *w, int wi, const void *addr, size_t len)
{
    if (!len || wi == w->world->rank - 1) return DSR1_OK;
    /* known, or reachable already (connected at start-up); a worker that joined knows only
     * the coordinator at first */
    const bool known = w->peer_addr[wi] != NULL || dsr1_comm_peer_lost(w->world, 1 + wi);
    if (known && w->peer_len[wi] == len && !memcmp(w->peer_addr[wi], addr, len)) return DSR1_OK;
    void *copy = malloc(len);
    if (!copy) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    memcpy(copy, addr, len);
    free(w->peer_addr[wi]);
    w->peer_addr[wi] = copy;
    w->peer_len[wi] = len;
    if (!known) return DSR1_OK;
    DSR1_DEBUG("worker %d: world endpoint at a new address", wi);
    return dsr1_comm_ucx_replace_peer(w->world, 1 + wi, addr, len);
}

/* The EP group of a new epoch over the live workers of this stage, from everyone's
 * addresses (a decoded CONNECT). Takes the local (NULL: no EP group). *peer_failed: the
 * group could not be connected (a peer gone, or its endpoints closed, while the epoch
 * formed: it failed the epoch's first step, or died), which is no failure of this
 * worker's own. */
static dsr1_status connect_ep(dsr1_worker *w, uint32_t epoch, const dsr1_wire_addr *a, int n,
                              dsr1_ucx_local *le, bool *peer_failed)
{
    *peer_failed = false;
    const int workers = w->n_stages * w->ep_size, me = w->world->rank - 1;
    const void **addrs = calloc((size_t)n + 1, sizeof(void *));
    size_t *lens = calloc((size_t)n + 1, sizeof(size_t));
    char(*names)[64] = calloc((size_t)n + 1, 64);
    const char **labels = calloc((size_t)n + 1, sizeof(char *));
    dsr1_status st = DSR1_OK;
    if (!addrs || !lens || !names || !labels) {
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (int e = 0; e < w->ep_size; e++) w->member[e] = -1;
    int k = 0, mine = -1;
    for (int i = 0; i < n; i++) {
        const int wi = a[i].rank - 1;
        if (wi < 0 || wi >= workers) {
            st = dsr1_error(DSR1_ERR_FORMAT, "CONNECT names world rank %d", a[i].rank);
            goto out;
        }
        if ((st = update_peer(w, wi, a[i].world_addr, (size_t)a[i].world_len)) != DSR1_OK) goto out;
        if (wi / w->ep_size != w->stage) continue;
        if (le && a[i].len <= 0) {
            st = dsr1_error(DSR1_ERR_FORMAT, "CONNECT: worker %d has no EP address", wi);
            goto out;
        }
        if (wi == me) mine = k;
        w->member[wi % w->ep_size] = k;
        addrs[k] = a[i].addr;
        lens[k] = (size_t)a[i].len;
        snprintf(names[k], 64, "worker %d (stage %d, EP %d)", wi, wi / w->ep_size, wi % w->ep_size);
        labels[k] = names[k];
        k++;
    }
    if (mine < 0) {
        st = dsr1_error(DSR1_ERR_UNAVAILABLE, "epoch %u leaves this worker out", epoch);
        goto out;
    }
    if (le) {
        char gname[48];
        snprintf(gname, sizeof(gname), "stage %d EP, epoch %u", w->stage, epoch);
        dsr1_ucx_group_params gp = {mine, k, dsr1_ep_timeout(w->timeout_ms), gname, labels, false};
        st = dsr1_comm_ucx_connect(le, &gp, addrs, lens, &w->ep);
        le = NULL;
        *peer_failed = st != DSR1_OK;
        if (st == DSR1_OK && w->test_crash_alltoall > 0) { /* and its world handle with it */
            dsr1_comm_ucx_crash_after(w->ep, DSR1_COMM_CRASH_COLLECTIVE, w->test_crash_alltoall,
                                      w->world);
            w->test_crash_alltoall = 0;
        }
    }
out:
    dsr1_ucx_local_destroy(le);
    free(addrs);
    free(lens);
    free(names);
    free(labels);
    return st;
}
#endif

/* A REGROUP for a new epoch: new endpoints, their addresses to the coordinator, then
 * everyone's back (CONNECT) and the groups connected. *next receives a message that ends
 * the wait instead (a newer REGROUP, SHUTDOWN), to be handled by the caller. */
static dsr1_status regroup(dsr1_worker *w, const dsr1_wire_regroup *rg, void **next, size_t *nlen)
{
#if DSR1_HAVE_UCX
    const int workers = w->n_stages * w->ep_size, me = w->world->rank - 1;
    if (rg->n_workers != workers)
        return dsr1_error(DSR1_ERR_FORMAT, "REGROUP for %d workers in a grid of %d", rg->n_workers,
                          workers);
    drop_groups(w);
    for (int i = 0; i < workers; i++) w->degraded |= !rg->live[i];
    if (!rg->live[me])
        return dsr1_error(DSR1_ERR_UNAVAILABLE,
                          "the coordinator left this worker out of epoch %u (it was taken "
                          "for lost)",
                          rg->epoch);
    dsr1_ucx_local *le = NULL;
    dsr1_status st = DSR1_OK;
    if (w->ep_size > 1) st = dsr1_ucx_local_create(&le);
    dsr1_wire_addr mine = {w->world->rank, 0, 0, NULL, NULL};
    size_t l;
    if (le) {
        dsr1_ucx_local_address(le, &mine.addr, &l);
        mine.len = (int32_t)l;
    }
    dsr1_comm_ucx_address(w->world, &mine.world_addr, &l);
    mine.world_len = (int32_t)l;
    void *msg = NULL;
    size_t len;
    bool peer_failed = false;
    if (st == DSR1_OK) st = dsr1_wire_addrs_encode(DSR1_MSG_ADDR, rg->epoch, &mine, 1, &msg, &len);
    if (st == DSR1_OK) st = dsr1_comm_send(w->world, 0, DSR1_TAG_RESULT, msg, len);
    free(msg);
    dsr1_wire_addr *a = malloc(sizeof(*a) * (size_t)workers);
    if (st == DSR1_OK && !a) st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    while (st == DSR1_OK) {
        if ((st = dsr1_comm_recv(w->world, 0, DSR1_TAG_CTRL, &msg, &len, NULL)) != DSR1_OK) break;
        dsr1_wire_header h;
        uint32_t epoch;
        int n;
        if (dsr1_wire_header_decode(msg, len, &h) != DSR1_OK || h.type == DSR1_MSG_STEP) {
            free(msg); /* a step of the old epoch */
            continue;
        }
        if (h.type == DSR1_MSG_CONNECT) {
            st = dsr1_wire_addrs_decode(msg, len, &epoch, a, workers, &n);
            if (st == DSR1_OK && epoch == rg->epoch) {
                st = connect_ep(w, epoch, a, n, le, &peer_failed);
                le = NULL;
                free(msg);
                if (peer_failed) { /* the coordinator forms the next epoch without it */
                    DSR1_WARN("epoch %u: %s; this worker waits for the next epoch", epoch,
                              dsr1_errmsg());
                    drop_groups(w);
                    st = DSR1_OK;
                }
                break;
            }
            free(msg);
            continue;
        }
        *next = msg; /* REGROUP or SHUTDOWN: the caller's */
        *nlen = len;
        break;
    }
    free(a);
    dsr1_ucx_local_destroy(le);
    if (st == DSR1_OK && !*next) {
        w->epoch = rg->epoch;
        w->first_step = rg->first_step;
        w->broken = peer_failed; /* its steps are skipped until the next REGROUP */
        int live = 0;
        for (int i = 0; i < workers; i++) live += rg->live[i];
        DSR1_DEBUG("epoch %u: %d of %d workers live", rg->epoch, live, workers);
    }
    return st;
#else
    (void)rg;
    (void)next;
    (void)nlen;
    return dsr1_error(DSR1_ERR_UNSUPPORTED, "REGROUP needs a build with UCX");
#endif
}

dsr1_status dsr1_worker_serve(dsr1_worker *w)
{
    char tag[64];
    snprintf(tag, sizeof(tag), "worker %d (stage %d, EP %d)", w->world->rank - 1, w->stage,
             w->ep_index);
    dsr1_log_set_tag(tag);
    dsr1_numa_bind(w->numa_node, NULL); /* this thread is thread 0 of the worker's pool */
    void *msg = NULL;
    size_t len;
    for (;;) {
        dsr1_status st = DSR1_OK;
        if (!msg && (st = dsr1_comm_recv(w->world, 0, DSR1_TAG_CTRL, &msg, &len, NULL))) {
            DSR1_ERROR("waiting for the coordinator: %s", dsr1_errmsg());
            if (w->ep) dsr1_comm_abort(w->ep, "lost the coordinator");
            return st;
        }
        void *m = msg;
        msg = NULL;
        dsr1_wire_header h;
        uint64_t step = 0;
        if ((st = dsr1_wire_header_decode(m, len, &h)) == DSR1_OK) {
            step = h.step;
            if (h.type == DSR1_MSG_SHUTDOWN) {
                free(m);
                drop_groups(w);
                return DSR1_OK;
            }
            if (h.type == DSR1_MSG_REGROUP && w->regroup) {
                dsr1_wire_regroup rg;
                if ((st = dsr1_wire_regroup_decode(m, len, &rg)) == DSR1_OK && rg.epoch > w->epoch)
                    st = regroup(w, &rg, &msg, &len);
                free(m);
                if (st != DSR1_OK) {
                    DSR1_ERROR("joining a new epoch: %s", dsr1_errmsg());
                    drop_groups(w);
                    return st;
                }
                continue;
            }
            if (h.type == DSR1_MSG_PING || h.type == DSR1_MSG_CONNECT ||
                (w->regroup && (w->broken || step < w->first_step))) {
                free(m); /* of an epoch this worker has left */
                continue;
            }
            dsr1_wire_step plan;
            if ((st = dsr1_wire_step_decode(m, len, &step, &plan)) == DSR1_OK)
                st = run_step(w, step, &plan);
        }
        free(m);
        if (st != DSR1_OK) {
            report_error(w, st, step);
            if (!w->regroup) return await_verdict(w, st);
            w->broken = true; /* the coordinator regroups, or shuts down */
        }
    }
}
