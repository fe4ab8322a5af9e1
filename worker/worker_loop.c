/* The worker serving loop (see worker_loop.h). */
#include "worker_loop.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "numa_bind.h"
#include "wire.h"

static void report_error(dsr1_worker *w, dsr1_status st, uint64_t step)
{
    const char *m = dsr1_errmsg();
    char text[1024];
    int n = snprintf(text, sizeof(text), "stage %d, EP rank %d: %s", w->stage, w->ep_index, m);
    if (n < 0) n = 0;
    if ((size_t)n >= sizeof(text)) n = sizeof(text) - 1;
    unsigned char *body = malloc(8 + (size_t)n);
    if (body) {
        int32_t h[2] = {st, w->world->rank};
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
    if (w->stage > 0 && n_tokens > 0) {
        int src = dsr1_world_rank(w->stage - 1, w->ep_index, w->ep_size);
        if ((st = dsr1_comm_recv(w->world, src, DSR1_TAG_HIDDEN, &msg, &len, NULL))) goto out;
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
    dsr1_step_io io = {w->stage > 0 ? hin : NULL, last ? NULL : hout, w->ep, w->expert_owner};
    if (n_seqs == 0 && !w->ep) { /* nothing to do, no group to serve */
    } else if ((st = dsr1_engine_step(w->engine, &b, &io)) != DSR1_OK) {
        goto out;
    }
    if (!last) {
        if (n_tokens > 0)
            st = dsr1_comm_send(w->world, dsr1_world_rank(w->stage + 1, w->ep_index, w->ep_size),
                                DSR1_TAG_HIDDEN, hout, sizeof(float) * (size_t)n_tokens * D);
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

dsr1_status dsr1_worker_init(dsr1_worker *w, const dsr1_worker_params *p)
{
    const dsr1_model_config *cfg = p->ckpt ? dsr1_ckpt_config(p->ckpt) : p->dummy_cfg;
    const int L = cfg->num_hidden_layers, E = cfg->n_routed_experts, ep = p->workers / p->pp;
    memset(w, 0, sizeof(*w));
    w->owner_table = malloc(sizeof(int) * (size_t)E);
    int *mine = malloc(sizeof(int) * (size_t)E), n = 0;
    dsr1_status st = DSR1_OK;
    if (!w->owner_table || !mine) {
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        goto out;
    }
    dsr1_placement_balanced(E, ep, w->owner_table);
    for (int x = 0; x < E; x++)
        if (w->owner_table[x] == p->ep_index) mine[n++] = x;
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
    w->expert_owner = w->owner_table;
    w->cfg = &w->weights->cfg;
    DSR1_INFO("worker %d: stage %d/%d (layers [%d, %d)), EP rank %d/%d, %d routed experts "
              "[%d..%d], %.1f MB of weights",
              p->stage * ep + p->ep_index, p->stage, p->pp, s.layer_begin, s.layer_end, p->ep_index,
              ep, n, n ? mine[0] : -1, n ? mine[n - 1] : -1, w->weights->bytes / 1e6);
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
    free(w->owner_table);
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

dsr1_status dsr1_worker_serve(dsr1_worker *w)
{
    char tag[64];
    snprintf(tag, sizeof(tag), "worker %d (stage %d, EP %d)", w->world->rank - 1, w->stage,
             w->ep_index);
    dsr1_log_set_tag(tag);
    dsr1_numa_bind(w->numa_node, NULL); /* this thread is thread 0 of the worker's pool */
    for (;;) {
        void *msg;
        size_t len;
        dsr1_status st = dsr1_comm_recv(w->world, 0, DSR1_TAG_CTRL, &msg, &len, NULL);
        if (st != DSR1_OK) {
            DSR1_ERROR("waiting for the coordinator: %s", dsr1_errmsg());
            if (w->ep) dsr1_comm_abort(w->ep, "lost the coordinator");
            return st;
        }
        dsr1_wire_header h;
        uint64_t step = 0;
        if ((st = dsr1_wire_header_decode(msg, len, &h)) == DSR1_OK) {
            step = h.step;
            if (h.type == DSR1_MSG_SHUTDOWN) {
                free(msg);
                return DSR1_OK;
            }
            dsr1_wire_step plan;
            if ((st = dsr1_wire_step_decode(msg, len, &step, &plan)) == DSR1_OK)
                st = run_step(w, step, &plan);
        }
        free(msg);
        if (st != DSR1_OK) {
            report_error(w, st, step);
            return await_verdict(w, st);
        }
    }
}
