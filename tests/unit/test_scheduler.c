/* The continuous-batching scheduler on a real (small, random) engine: every request's
 * tokens are those of the same request run alone through a plain engine, however it was
 * batched, chunked, preempted and recomputed, or served from the prefix cache; seeded
 * sampling is batch-invariant; aborts, deadlines, limits and executor failures end requests
 * with the right finish reason and leave no cache block held.
 *
 * argv[1]: ../shared/golden (its tokenizer); exits 77 without it. */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "forward.h"
#include "scheduler.h"
#include "test_util.h"
#include "weights.h"

#define VOCAB  129280 /* the tokenizer's */
#define MAXOUT 64

static const char *golden;

typedef struct {
    dsr1_model_config cfg;
    const dsr1_batch *queued[4]; /* the pipelining executor's steps in flight */
    uint64_t next_id, done_id;
    int depth, max_inflight, violations;
    dsr1_weights *w;
    dsr1_pool *pool;
    dsr1_tokenizer *tok;
    dsr1_engine *eng; /* paged, driven by the scheduler */
    int steps, fail_at, max_seqs;
    dsr1_grammars *grammars; /* given to the next scheduler started */
} fixture;

/* The executor: the paged engine, counting steps, failing on demand. */
static dsr1_status fx_step(void *ctx, const dsr1_batch *b)
{
    fixture *f = ctx;
    if (++f->steps == f->fail_at) return dsr1_error(DSR1_ERR_IO, "injected worker failure");
    if (b->n_seqs > f->max_seqs) f->max_seqs = b->n_seqs;
    return dsr1_engine_forward(f->eng, b);
}

/* A pipelining executor (as a grid of stages is): submit queues the step, wait runs the
 * oldest. Steps in flight must hold disjoint requests for the results to match. */
static dsr1_status fx_submit(void *ctx, const dsr1_batch *b, uint64_t *id)
{
    fixture *f = ctx;
    f->violations += f->next_id - f->done_id >= 4;
    f->queued[f->next_id % 4] = b;
    *id = f->next_id++;
    if ((int)(f->next_id - f->done_id) > f->max_inflight)
        f->max_inflight = (int)(f->next_id - f->done_id);
    return DSR1_OK;
}

/* (runs on the scheduler thread: violations are counted, and checked by the test) */
static dsr1_status fx_wait(void *ctx, uint64_t id)
{
    fixture *f = ctx;
    f->violations += id != f->done_id; /* oldest first */
    const dsr1_batch *b = f->queued[f->done_id++ % 4];
    for (int i = 0; i < b->n_seqs; i++) /* a request is in one step in flight at most */
        for (uint64_t j = f->done_id; j < f->next_id; j++)
            for (int k = 0; k < f->queued[j % 4]->n_seqs; k++)
                f->violations += b->seqs[i].blocks == f->queued[j % 4]->seqs[k].blocks;
    return fx_step(ctx, b);
}

typedef struct {
    pthread_mutex_t *mu;
    pthread_cond_t *cv;
    int32_t ids[MAXOUT];
    int n_ids, n_deltas;
    bool done;
    dsr1_finish finish;
    dsr1_status status;
    char error[128];
    int cached, completion;
    float lp[MAXOUT];
    dsr1_sample_result plp[64];
    int n_plp;
} result;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

static void on_event(const dsr1_sched_event *ev)
{
    result *r = ev->ctx;
    pthread_mutex_lock(&mu);
    if (ev->kind == DSR1_EV_DELTA) {
        for (int i = 0; i < ev->n_ids && r->n_ids < MAXOUT; i++) {
            if (ev->logprobs) r->lp[r->n_ids] = ev->logprobs[i].logprob;
            r->ids[r->n_ids++] = ev->ids[i];
        }
        r->n_deltas++;
        pthread_cond_broadcast(&cv);
    } else {
        r->done = true;
        r->finish = ev->finish;
        r->status = ev->status;
        r->cached = ev->cached_tokens;
        r->completion = ev->completion_tokens;
        snprintf(r->error, sizeof(r->error), "%s", ev->error ? ev->error : "");
        if (ev->prompt_logprobs)
            for (int i = 0; i < ev->prompt_tokens && i < 64; i++)
                r->plp[r->n_plp++] = ev->prompt_logprobs[i];
        pthread_cond_broadcast(&cv);
    }
    pthread_mutex_unlock(&mu);
}

static void wait_done(result *rs, int n)
{
    pthread_mutex_lock(&mu);
    for (int i = 0; i < n; i++)
        while (!rs[i].done) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
}

static void wait_deltas(result *r, int n)
{
    pthread_mutex_lock(&mu);
    while (r->n_deltas < n && !r->done) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    char path[1024];
    snprintf(path, sizeof(path), "%s/tokenizer/tokenizer.json", golden);
    assert_int_equal(dsr1_tokenizer_load_file(path, &f->tok), DSR1_OK);
    f->cfg = test_config();
    f->cfg.vocab_size = VOCAB;
    dsr1_slice all = dsr1_slice_all(&f->cfg);
    assert_int_equal(dsr1_weights_dummy(&f->cfg, &all, 11, &f->w), DSR1_OK);
    assert_int_equal(dsr1_pool_create(2, &f->pool), DSR1_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    dsr1_engine_destroy(f->eng);
    dsr1_pool_destroy(f->pool);
    dsr1_weights_destroy(f->w);
    dsr1_tokenizer_free(f->tok);
    free(f);
    return 0;
}

/* A scheduler over a fresh paged engine of `blocks` blocks of `bt` tokens. */
static dsr1_sched *start(fixture *f, int blocks, int bt, int step_tokens, int max_running,
                         int max_queued)
{
    dsr1_engine_destroy(f->eng);
    assert_int_equal(dsr1_engine_create_paged(f->w, dsr1_kernels_select(NULL), f->pool, blocks, bt,
                                              step_tokens, &f->eng),
                     DSR1_OK);
    f->steps = f->max_seqs = f->max_inflight = f->violations = 0;
    f->next_id = f->done_id = 0;
    f->fail_at = -1;
    dsr1_sched_params p = {{f, fx_step, 1, blocks, bt},
                           f->tok,
                           VOCAB,
                           f->cfg.max_position_embeddings,
                           step_tokens,
                           max_running,
                           max_queued,
                           true,
                           f->grammars};
    if (f->depth > 1) {
        p.exec.submit = fx_submit;
        p.exec.wait = fx_wait;
        p.exec.depth = f->depth;
    }
    dsr1_sched *s;
    assert_int_equal(dsr1_sched_create(&p, &s), DSR1_OK);
    return s;
}

static dsr1_sched_request request(const char *id, const int32_t *prompt, int n, int max_tokens,
                                  result *r)
{
    dsr1_sched_request q = {0};
    q.id = id;
    q.prompt = prompt;
    q.n_prompt = n;
    q.sampling = dsr1_sampling_defaults();
    q.sampling.temperature = 0;
    q.max_tokens = max_tokens;
    q.text = (dsr1_textout_params){
        .skip_special = true, .eos_id = 1, .ignore_eos = true, .think_end_id = -1};
    q.callback = on_event;
    q.ctx = r;
    memset(r, 0, sizeof(*r));
    return q;
}

/* Greedy ids of a prompt run alone through a slot-mode engine; rows: its logit rows (all
 * prompt positions, then one per generated token but the last), when not NULL. */
static void reference(fixture *f, const int32_t *prompt, int n, int max_tokens, int32_t *out,
                      float *rows)
{
    dsr1_engine *e;
    assert_int_equal(
        dsr1_engine_create(f->w, dsr1_kernels_select(NULL), f->pool, 1, n + max_tokens, &e),
        DSR1_OK);
    float *lg = malloc(sizeof(float) * VOCAB * (size_t)n);
    dsr1_seq_step q = {0, 0, n, prompt, DSR1_LOGITS_ALL};
    dsr1_batch b = {1, &q, lg};
    assert_int_equal(dsr1_engine_forward(e, &b), DSR1_OK);
    if (rows) memcpy(rows, lg, sizeof(float) * VOCAB * (size_t)n);
    const float *last = lg + (size_t)(n - 1) * VOCAB;
    for (int i = 0; i < max_tokens; i++) {
        int32_t best = 0;
        for (int v = 1; v < VOCAB; v++)
            if (last[v] > last[best]) best = v;
        out[i] = best;
        if (i + 1 == max_tokens) break;
        q = (dsr1_seq_step){0, n + i, 1, &out[i], DSR1_LOGITS_LAST};
        b.logits = lg;
        assert_int_equal(dsr1_engine_forward(e, &b), DSR1_OK);
        if (rows) memcpy(rows + (size_t)(n + i) * VOCAB, lg, sizeof(float) * VOCAB);
        last = lg;
    }
    free(lg);
    dsr1_engine_destroy(e);
}

static void random_ids(int32_t *ids, int n)
{
    for (int i = 0; i < n; i++) ids[i] = 2 + rand() % 5000;
}

static void assert_idle(dsr1_sched *s)
{
    dsr1_sched_info in;
    for (int i = 0; i < 100; i++) { /* the snapshot follows the finals within an iteration */
        dsr1_sched_get_info(s, &in);
        if (in.running == 0 && in.queued == 0) break;
        usleep(10000);
    }
    assert_int_equal(in.running, 0);
    assert_int_equal(in.queued, 0);
    assert_int_equal(in.blocks_used, 0);
}

/* 12 requests, 4 of them sharing a 24-token prefix, through a cache too small to hold them
 * all (preemption), with chunked prefill: every output equals the request alone. */
static void test_greedy_under_load(void **state)
{
    fixture *f = *state;
    enum { N = 12 };
    int32_t prompts[N][48], want[N][MAXOUT];
    int np[N], nt[N];
    srand(5);
    for (int i = 0; i < N; i++) {
        np[i] = 5 + rand() % 40;
        nt[i] = 3 + rand() % 10;
        random_ids(prompts[i], np[i]);
        if (i < 4) {
            if (np[i] < 30) np[i] = 30;
            if (i) memcpy(prompts[i], prompts[0], sizeof(int32_t) * 24);
        }
        reference(f, prompts[i], np[i], nt[i], want[i], NULL);
    }
    /* 30 blocks of 4 tokens: fewer than the requests need together */
    dsr1_sched *s = start(f, 30, 4, 16, 8, 64);
    result res[N];
    char ids[N][16];
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof(ids[i]), "r%d", i);
        dsr1_sched_request q = request(ids[i], prompts[i], np[i], nt[i], &res[i]);
        assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
        if (i == 0) wait_done(res, 1); /* its prefix blocks are then cached */
    }
    wait_done(res, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(res[i].finish, DSR1_FINISH_LENGTH);
        assert_int_equal(res[i].n_ids, nt[i]);
        assert_int_equal(res[i].completion, nt[i]);
        assert_memory_equal(res[i].ids, want[i], sizeof(int32_t) * (size_t)nt[i]);
    }
    for (int i = 1; i < 4; i++) assert_int_equal(res[i].cached, 24); /* 6 blocks of request 0 */
    dsr1_sched_info in;
    dsr1_sched_get_info(s, &in);
    assert_true(in.preemptions > 0);
    assert_true(f->max_seqs > 1); /* requests were batched */
    assert_idle(s);
    dsr1_sched_destroy(s);
}

/* The same with two steps in flight (a 2-stage pipeline): disjoint requests per step. */
static void test_greedy_under_load_pipelined(void **state)
{
    fixture *f = *state;
    f->depth = 2;
    test_greedy_under_load(state);
    assert_int_equal(f->max_inflight, 2);
    assert_int_equal(f->violations, 0);
}

/* A seeded request samples the same tokens alone and among others. */
static void test_seeded_batch_invariance(void **state)
{
    fixture *f = *state;
    int32_t prompt[20], other[8][30];
    srand(9);
    random_ids(prompt, 20);
    result alone, busy, others[8];
    dsr1_sched *s = start(f, 200, 8, 32, 16, 64);
    dsr1_sched_request q = request("seeded", prompt, 20, 12, &alone);
    q.sampling.temperature = 1.5f;
    q.sampling.top_p = 0.9f;
    q.sampling.seed = 1234;
    assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
    wait_done(&alone, 1);
    char ids[8][16];
    for (int i = 0; i < 8; i++) {
        random_ids(other[i], 30);
        snprintf(ids[i], sizeof(ids[i]), "o%d", i);
        dsr1_sched_request o = request(ids[i], other[i], 10 + i * 2, 5 + i, &others[i]);
        o.sampling.temperature = 1.0f;
        o.sampling.seed = (uint64_t)i;
        assert_int_equal(dsr1_sched_submit(s, &o), DSR1_OK);
    }
    dsr1_sched_request q2 = request("seeded", prompt, 20, 12, &busy);
    q2.sampling = q.sampling;
    assert_int_equal(dsr1_sched_submit(s, &q2), DSR1_OK);
    wait_done(others, 8);
    wait_done(&busy, 1);
    assert_int_equal(busy.n_ids, 12);
    assert_memory_equal(busy.ids, alone.ids, sizeof(int32_t) * 12);
    assert_idle(s);
    dsr1_sched_destroy(s);
}

static double log_softmax_at(const float *row, int32_t tok)
{
    double m = row[0], sum = 0;
    for (int v = 1; v < VOCAB; v++)
        if (row[v] > m) m = row[v];
    for (int v = 0; v < VOCAB; v++) sum += exp((double)row[v] - m);
    return (double)row[tok] - m - log(sum);
}

/* Prompt logprobs (teacher forcing through chunked prefill) and generated-token logprobs
 * equal the log-softmax of the reference engine's rows. */
static void test_logprobs(void **state)
{
    fixture *f = *state;
    int32_t prompt[23], want[6];
    srand(3);
    random_ids(prompt, 23);
    float *rows = malloc(sizeof(float) * VOCAB * (23 + 6));
    reference(f, prompt, 23, 6, want, rows);
    dsr1_sched *s = start(f, 64, 4, 8, 4, 8);
    result r;
    dsr1_sched_request q = request("lp", prompt, 23, 6, &r);
    q.logprobs = q.prompt_logprobs = true;
    q.sampling.top_logprobs = 3;
    assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
    wait_done(&r, 1);
    assert_memory_equal(r.ids, want, sizeof(want));
    assert_int_equal(r.n_plp, 23);
    for (int p = 1; p < 23; p++) {
        assert_int_equal(r.plp[p].token, prompt[p]);
        assert_float_equal(r.plp[p].logprob,
                           log_softmax_at(rows + (size_t)(p - 1) * VOCAB, prompt[p]), 1e-4);
        assert_int_equal(r.plp[p].n_top, 3);
    }
    for (int i = 0; i < 6; i++)
        assert_float_equal(r.lp[i], log_softmax_at(rows + (size_t)(22 + i) * VOCAB, want[i]), 1e-4);
    free(rows);
    dsr1_sched_destroy(s);
}

/* Abort and deadline end requests with ABORT and free their blocks; limits are refused. */
static void test_abort_deadline_limits(void **state)
{
    fixture *f = *state;
    int32_t prompt[40];
    srand(4);
    random_ids(prompt, 40);
    dsr1_sched *s = start(f, 40, 4, 16, 4, 2);
    result a, d, x;
    dsr1_sched_request q = request("long", prompt, 10, MAXOUT, &a);
    assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
    /* same id while live */
    dsr1_sched_request dup = request("long", prompt, 10, 4, &x);
    assert_int_equal(dsr1_sched_submit(s, &dup), DSR1_ERR_EXISTS);
    wait_deltas(&a, 2);
    assert_true(dsr1_sched_abort(s, "long"));
    wait_done(&a, 1);
    assert_int_equal(a.finish, DSR1_FINISH_ABORT);
    assert_true(a.n_ids < MAXOUT);
    assert_false(dsr1_sched_abort(s, "long"));

    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    dsr1_sched_request dq = request("late", prompt, 40, MAXOUT, &d);
    dq.deadline_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + 5 * 1000000;
    assert_int_equal(dsr1_sched_submit(s, &dq), DSR1_OK);
    wait_done(&d, 1);
    assert_int_equal(d.finish, DSR1_FINISH_ABORT);
    assert_string_equal(d.error, "deadline exceeded");

    /* 40 blocks of 4 = 160 tokens per rank */
    dsr1_sched_request big = request("big", prompt, 40, 150, &x);
    assert_int_equal(dsr1_sched_submit(s, &big), DSR1_ERR_RANGE);
    dsr1_sched_request zero = request("zero", prompt, 4, 0, &x);
    assert_int_equal(dsr1_sched_submit(s, &zero), DSR1_ERR_INVALID_ARG);
    int32_t bad = VOCAB;
    dsr1_sched_request oov = request("oov", &bad, 1, 1, &x);
    assert_int_equal(dsr1_sched_submit(s, &oov), DSR1_ERR_INVALID_ARG);
    assert_idle(s);
    dsr1_sched_destroy(s);
}

/* dsr1_sched_check refuses what submit refuses, with the same status, and queues nothing:
 * frontends call it on a batch's items before they reach the scheduler. */
static void test_check(void **state)
{
    fixture *f = *state;
    int32_t prompt[40];
    srand(5);
    random_ids(prompt, 40);
    dsr1_sched *s = start(f, 40, 4, 16, 4, 2);
    result x;
    int32_t bad = VOCAB;
    const char *long_stop = "0123456789012345678901234567890123456789012345678901234567890123"
                            "0123456789012345678901234567890123456789012345678901234567890123"
                            "0123456789012345678901234567890123456789012345678901234567890123"
                            "0123456789012345678901234567890123456789012345678901234567890123!";
    struct {
        const char *what;
        dsr1_sched_request q;
        dsr1_status st;
        const char *msg; /* a part of the message */
    } cases[] = {
        {"ok", request("ok", prompt, 8, 4, &x), DSR1_OK, NULL},
        {"empty", request("e", prompt, 0, 4, &x), DSR1_ERR_INVALID_ARG, "the prompt is empty"},
        {"zero", request("z", prompt, 4, 0, &x), DSR1_ERR_INVALID_ARG, "must be at least 1"},
        {"oov", request("o", &bad, 1, 1, &x), DSR1_ERR_INVALID_ARG, "outside the vocabulary"},
        {"kv", request("k", prompt, 40, 150, &x), DSR1_ERR_RANGE, "KV cache of one rank"},
        {"top", request("t", prompt, 4, 2, &x), DSR1_ERR_INVALID_ARG, "top_logprobs needs"},
        {"temp", request("m", prompt, 4, 2, &x), DSR1_ERR_INVALID_ARG, "temperature"},
        {"stop", request("s", prompt, 4, 2, &x), DSR1_ERR_INVALID_ARG, "stop string 0"},
    };
    cases[5].q.sampling.top_logprobs = 3;
    cases[6].q.sampling.temperature = -1;
    cases[7].q.text.stop = &long_stop;
    cases[7].q.text.n_stop = 1;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        dsr1_status st = dsr1_sched_check(s, &cases[i].q);
        if (st != cases[i].st || (cases[i].msg && !strstr(dsr1_errmsg(), cases[i].msg)))
            fail_msg("%s: status %d, message '%s'", cases[i].what, st, dsr1_errmsg());
        if (st != DSR1_OK) assert_int_equal(dsr1_sched_submit(s, &cases[i].q), st);
    }
    dsr1_sched_info info;
    dsr1_sched_get_info(s, &info);
    assert_int_equal(info.queued + info.running, 0);
    assert_idle(s);
    dsr1_sched_destroy(s);
}

/* ---- constrained decoding ---- */

#define SCHEMA                                                                                     \
    "{\"type\":\"object\",\"properties\":{\"n\":{\"type\":\"integer\",\"minimum\":0,"              \
    "\"maximum\":999},\"s\":{\"type\":\"string\",\"maxLength\":4},\"b\":{\"type\":"                \
    "\"boolean\"}},\"required\":[\"n\",\"s\",\"b\"],\"additionalProperties\":false}"

/* The JSON text of r's ids before its EOS (the grammar's end), checked independently of
 * the engine with jansson: an object with exactly n in [0, 999], s of at most 4 code
 * points, b a boolean. */
static void check_json_output(const fixture *f, const result *r, int from)
{
    assert_int_equal(r->finish, DSR1_FINISH_STOP);
    assert_true(r->n_ids > from && r->ids[r->n_ids - 1] == 1); /* ended by EOS */
    char *text;
    assert_int_equal(dsr1_tokenizer_decode(f->tok, r->ids + from, (size_t)(r->n_ids - from - 1),
                                           false, &text, NULL),
                     DSR1_OK);
    json_error_t err;
    json_t *v = json_loads(text, JSON_REJECT_DUPLICATES, &err);
    if (!v) fail_msg("not JSON: '%s' (%s)", text, err.text);
    json_t *n = json_object_get(v, "n"), *str = json_object_get(v, "s"),
           *b = json_object_get(v, "b");
    assert_int_equal(json_object_size(v), 3);
    assert_true(json_is_integer(n) && json_integer_value(n) >= 0 && json_integer_value(n) <= 999);
    assert_true(json_is_string(str) && json_string_length(str) <= 12); /* <= 4 code points */
    assert_true(json_is_boolean(b));
    assert_true(text[0] == '{' && text[strlen(text) - 1] == '}'); /* no free whitespace */
    json_decref(v);
    free(text);
}

/* Requests under a JSON Schema, sampled at temperature 1.5 by a random model, always give
 * valid JSON that ends with EOS; a seeded constrained request gives the same ids alone and
 * among unconstrained ones (the mask is part of its sampling, not of the batch); a request
 * that reasons is free until `</think>` (or opens `<think>` itself with detect_think), then
 * constrained. */
static void test_grammar(void **state)
{
    fixture *f = *state;
    dsr1_grammar_vocab *gv;
    dsr1_grammar *g;
    assert_int_equal(dsr1_grammar_vocab_create(f->tok, 1, &gv), DSR1_OK);
    assert_int_equal(dsr1_grammar_compile_json_schema(gv, SCHEMA, strlen(SCHEMA), NULL, &g),
                     DSR1_OK);
    /* V3's tokenizer (the golden one) has no <think> tokens: two other special tokens play
     * their part (the scheduler knows them by id only) */
    const int32_t think = dsr1_tokenizer_token_id(f->tok, "<｜fim▁begin｜>");
    const int32_t unthink = dsr1_tokenizer_token_id(f->tok, "<｜fim▁end｜>");
    assert_true(think >= 0 && unthink >= 0);
    enum { N = 6 };
    int32_t prompt[N][12];
    srand(8);
    for (int i = 0; i < N; i++) random_ids(prompt[i], 12);
    result alone, rs[N], free_rs[N];
    char ids[N][16];
    dsr1_sched *s = start(f, 64, 4, 32, 16, 32);
    dsr1_sched_request q = request("g-alone", prompt[0], 12, MAXOUT, &alone);
    q.grammar = g;
    q.sampling.temperature = 1.5f;
    q.sampling.seed = 42;
    q.text.ignore_eos = false;
    assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
    wait_done(&alone, 1);
    check_json_output(f, &alone, 0);
    /* the same request among others, constrained and free */
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof(ids[i]), "g%d", i);
        dsr1_sched_request o = request(ids[i], prompt[i], 12, MAXOUT, &rs[i]);
        o.grammar = g;
        o.sampling.temperature = 1.5f;
        o.sampling.seed = i ? 100 + (uint64_t)i : 42;
        o.text.ignore_eos = false;
        assert_int_equal(dsr1_sched_submit(s, &o), DSR1_OK);
        char fid[16];
        snprintf(fid, sizeof(fid), "f%d", i);
        dsr1_sched_request u = request(fid, prompt[i], 12, 20, &free_rs[i]);
        u.sampling.temperature = 1;
        assert_int_equal(dsr1_sched_submit(s, &u), DSR1_OK);
    }
    wait_done(rs, N);
    wait_done(free_rs, N);
    for (int i = 0; i < N; i++) check_json_output(f, &rs[i], 0);
    assert_int_equal(rs[0].n_ids, alone.n_ids);
    assert_memory_equal(rs[0].ids, alone.ids, sizeof(int32_t) * (size_t)alone.n_ids);

    /* reasoning first: </think> is drawn (a bias makes it certain), then the grammar holds */
    int32_t bias_ids[2] = {unthink, think};
    float bias_values[2] = {100, 50};
    result rz, ro;
    dsr1_sched_request z = request("g-reason", prompt[1], 12, MAXOUT, &rz);
    z.grammar = g;
    z.sampling.temperature = 1.5f;
    z.sampling.n_bias = 1;
    z.sampling.bias_ids = bias_ids;
    z.sampling.bias_values = bias_values;
    z.text.ignore_eos = false;
    z.text.in_reasoning = true;
    z.text.think_end_id = unthink;
    assert_int_equal(dsr1_sched_submit(s, &z), DSR1_OK);
    /* R1-0528: the generation may open <think> itself, then closes it, then the grammar */
    dsr1_sched_request o = z;
    o.id = "g-opens";
    o.ctx = &ro;
    memset(&ro, 0, sizeof(ro));
    o.text.in_reasoning = false;
    o.text.detect_think = true;
    o.text.think_start_id = think;
    o.sampling.n_bias = 2;
    assert_int_equal(dsr1_sched_submit(s, &o), DSR1_OK);
    wait_done(&rz, 1);
    wait_done(&ro, 1);
    assert_int_equal(rz.ids[0], unthink);
    check_json_output(f, &rz, 1);
    assert_int_equal(ro.ids[0], think);
    assert_int_equal(ro.ids[1], unthink);
    check_json_output(f, &ro, 2);

    /* a thinking budget of 5: </think> is forced after 5 reasoning tokens, then the grammar
     * holds; a request that opens its reasoning itself counts from there */
    result rb, rb2;
    dsr1_sched_request bz = request("g-budget", prompt[3], 12, MAXOUT, &rb);
    bz.grammar = g;
    bz.sampling.temperature = 1.5f;
    bz.text.ignore_eos = false;
    bz.text.in_reasoning = true;
    bz.text.think_end_id = unthink;
    bz.think_budget = 5;
    assert_int_equal(dsr1_sched_submit(s, &bz), DSR1_OK);
    dsr1_sched_request bo = bz;
    bo.id = "g-budget-opens";
    bo.ctx = &rb2;
    memset(&rb2, 0, sizeof(rb2));
    bo.text.in_reasoning = false;
    bo.text.detect_think = true;
    bo.text.think_start_id = think;
    bo.sampling.n_bias = 1;
    bo.sampling.bias_ids = bias_ids + 1; /* <think> first */
    bo.sampling.bias_values = bias_values + 1;
    assert_int_equal(dsr1_sched_submit(s, &bo), DSR1_OK);
    wait_done(&rb, 1);
    wait_done(&rb2, 1);
    for (int i = 0; i < 5; i++) assert_int_not_equal(rb.ids[i], unthink);
    assert_int_equal(rb.ids[5], unthink);
    check_json_output(f, &rb, 6);
    assert_int_equal(rb2.ids[0], think);
    assert_int_equal(rb2.ids[6], unthink);
    check_json_output(f, &rb2, 7);

    /* a structural tag: free until the trigger token (a bias makes it the first), then the
     * grammar (two digits), then EOS */
    dsr1_grammar *pair;
    assert_int_equal(dsr1_grammar_compile_regex(gv, "[0-9]{2}", 8, NULL, &pair), DSR1_OK);
    const int32_t trigger = dsr1_tokenizer_token_id(f->tok, "<｜fim▁hole｜>");
    assert_true(trigger >= 0);
    float big = 100;
    result rt;
    dsr1_sched_request tq = request("g-trigger", prompt[4], 12, 16, &rt);
    tq.grammar = pair;
    tq.grammar_after_trigger = true;
    tq.trigger_id = trigger;
    tq.text.ignore_eos = false;
    tq.sampling.n_bias = 1;
    tq.sampling.bias_ids = &trigger;
    tq.sampling.bias_values = &big;
    assert_int_equal(dsr1_sched_submit(s, &tq), DSR1_OK);
    wait_done(&rt, 1);
    assert_int_equal(rt.finish, DSR1_FINISH_STOP);
    assert_int_equal(rt.ids[0], trigger);
    assert_int_equal(rt.ids[rt.n_ids - 1], 1);
    char *dd;
    assert_int_equal(
        dsr1_tokenizer_decode(f->tok, rt.ids + 1, (size_t)(rt.n_ids - 2), false, &dd, NULL),
        DSR1_OK);
    assert_true(strlen(dd) == 2 && strspn(dd, "0123456789") == 2);
    free(dd);
    dsr1_grammar_free(pair);

    /* ignore_eos: past the grammar's end (its EOS) the output goes on, free, to its length */
    dsr1_grammar *digits;
    assert_int_equal(dsr1_grammar_compile_regex(gv, "[0-9]{2}", 8, NULL, &digits), DSR1_OK);
    result rd;
    dsr1_sched_request d = request("g-digits", prompt[2], 12, 12, &rd);
    d.grammar = digits;
    d.sampling.temperature = 1.5f;
    assert_int_equal(dsr1_sched_submit(s, &d), DSR1_OK);
    wait_done(&rd, 1);
    assert_int_equal(rd.finish, DSR1_FINISH_LENGTH);
    assert_int_equal(rd.n_ids, 12);
    int end = 0;
    while (end < rd.n_ids && rd.ids[end] != 1) end++;
    assert_true(end >= 1 && end <= 2 && end < rd.n_ids);
    char *two;
    assert_int_equal(dsr1_tokenizer_decode(f->tok, rd.ids, (size_t)end, false, &two, NULL),
                     DSR1_OK);
    assert_true(strlen(two) == 2 && strspn(two, "0123456789") == 2);
    free(two);
    dsr1_grammar_free(digits);
    assert_idle(s);
    dsr1_sched_destroy(s);
    dsr1_grammar_free(g);
    dsr1_grammar_vocab_free(gv);
}

/* The grammar cache: one compilation per distinct (kind, text, options), errors not cached,
 * unreferenced grammars evicted beyond the capacity but referenced ones never; the
 * scheduler gives a request's reference back when it ends, and a refused submit leaves it
 * with the caller. */
static void test_grammar_cache(void **state)
{
    fixture *f = *state;
    dsr1_grammars *c;
    assert_int_equal(dsr1_grammars_create(f->tok, 1, 2, &c), DSR1_OK);
    const char *re[3] = {"[0-9]{2,4}", "(yes|no)", "[a-f]+"};
    const dsr1_grammar *g[3], *again, *strict;
    for (int i = 0; i < 3; i++)
        assert_int_equal(
            dsr1_grammars_get(c, DSR1_GRAMMAR_REGEX, re[i], strlen(re[i]), NULL, &g[i]), DSR1_OK);
    assert_int_equal(dsr1_grammars_get(c, DSR1_GRAMMAR_REGEX, re[0], strlen(re[0]), NULL, &again),
                     DSR1_OK);
    assert_ptr_equal(again, g[0]);
    dsr1_grammar_opts o = {.strict_objects = true};
    assert_int_equal(dsr1_grammars_get(c, DSR1_GRAMMAR_REGEX, re[0], strlen(re[0]), &o, &strict),
                     DSR1_OK);
    assert_ptr_not_equal(strict, g[0]);
    assert_int_equal(dsr1_grammars_get(c, DSR1_GRAMMAR_EBNF, "root ::= (", 10, NULL, &again),
                     DSR1_ERR_INVALID_ARG);
    /* an unanchored counting pattern blows the automaton up: refused at the server's bound */
    const char *blowup = "{\"type\":\"string\",\"pattern\":\"x.{58}\"}";
    assert_int_equal(
        dsr1_grammars_get(c, DSR1_GRAMMAR_JSON_SCHEMA, blowup, strlen(blowup), NULL, &again),
        DSR1_ERR_RANGE);
    assert_non_null(strstr(dsr1_errmsg(), "max_states"));
    dsr1_grammars_stats st;
    dsr1_grammars_get_stats(c, &st);
    assert_int_equal(st.compiled, 4);
    assert_int_equal(st.hits, 1);
    assert_int_equal(st.failed, 2);
    assert_int_equal(st.cached, 4); /* over capacity, but every one is referenced */
    assert_int_equal(st.referenced, 4);
    dsr1_grammars_release(c, strict);
    dsr1_grammars_release(c, g[1]);
    dsr1_grammars_release(c, g[2]);
    dsr1_grammars_get_stats(c, &st);
    assert_int_equal(st.referenced, 1); /* g[0], twice */
    assert_int_equal(st.cached, 2);     /* g[0] and the most recent unreferenced one */

    /* a request under the scheduler: its reference comes back when it ends */
    f->grammars = c;
    dsr1_sched *s = start(f, 16, 4, 16, 2, 1);
    f->grammars = NULL;
    int32_t prompt[6];
    srand(9);
    random_ids(prompt, 6);
    result r, x;
    dsr1_sched_request q = request("gc", prompt, 6, 8, &r);
    q.grammar = g[0];
    q.text.ignore_eos = false;
    assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
    dsr1_sched_request bad = q; /* refused: the caller keeps its reference */
    bad.id = "gc-bad";
    bad.ctx = &x;
    bad.max_tokens = 0;
    assert_int_equal(dsr1_sched_submit(s, &bad), DSR1_ERR_INVALID_ARG);
    wait_done(&r, 1);
    dsr1_sched_destroy(s);
    dsr1_grammars_get_stats(c, &st);
    assert_int_equal(st.referenced, 1); /* the second reference, still ours */
    dsr1_grammars_release(c, g[0]);
    dsr1_grammars_get_stats(c, &st);
    assert_int_equal(st.referenced, 0);
    dsr1_grammars_destroy(c);
}

/* A queue of 2: the third waiting request is refused with BUSY. */
static void test_queue_full(void **state)
{
    fixture *f = *state;
    int32_t prompt[8];
    random_ids(prompt, 8);
    /* one running at a time, so the others wait */
    dsr1_sched *s = start(f, 40, 4, 16, 1, 2);
    result r[4];
    const char *ids[] = {"q0", "q1", "q2", "q3"};
    int busy = 0;
    for (int i = 0; i < 4; i++) {
        dsr1_sched_request q = request(ids[i], prompt, 8, 20, &r[i]);
        dsr1_status st = dsr1_sched_submit(s, &q);
        assert_true(st == DSR1_OK || st == DSR1_ERR_BUSY);
        busy += st == DSR1_ERR_BUSY;
    }
    assert_true(busy >= 1);
    dsr1_sched_destroy(s); /* aborts what is left */
}

/* An executor failure ends every request with ERROR and status DSR1_ERR_UNAVAILABLE (what
 * a submission gets from then on: the batch store keeps such items pending); the scheduler
 * then refuses work. */
static void test_executor_failure(void **state)
{
    fixture *f = *state;
    int32_t prompt[12];
    random_ids(prompt, 12);
    dsr1_sched *s = start(f, 40, 4, 16, 4, 8);
    f->fail_at = 3;
    result r[3];
    const char *ids[] = {"e0", "e1", "e2"};
    for (int i = 0; i < 3; i++) {
        dsr1_sched_request q = request(ids[i], prompt, 12, 20, &r[i]);
        assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
    }
    wait_done(r, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].finish, DSR1_FINISH_ERROR);
        assert_int_equal(r[i].status, DSR1_ERR_UNAVAILABLE);
        assert_non_null(strstr(r[i].error, "injected worker failure"));
    }
    result x;
    dsr1_sched_request q = request("after", prompt, 12, 2, &x);
    assert_int_equal(dsr1_sched_submit(s, &q), DSR1_ERR_UNAVAILABLE);
    dsr1_sched_info in;
    dsr1_sched_get_info(s, &in);
    assert_false(in.healthy);
    dsr1_sched_destroy(s);
}

int main(int argc, char **argv)
{
    golden = argc > 1 ? argv[1] : "../shared/golden";
    char path[1024];
    snprintf(path, sizeof(path), "%s/tokenizer/tokenizer.json", golden);
    if (access(path, R_OK) != 0) {
        fprintf(stderr, "skipped: no tokenizer at %s\n", path);
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_greedy_under_load, setup, teardown),
        cmocka_unit_test_setup_teardown(test_greedy_under_load_pipelined, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seeded_batch_invariance, setup, teardown),
        cmocka_unit_test_setup_teardown(test_logprobs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abort_deadline_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_check, setup, teardown),
        cmocka_unit_test_setup_teardown(test_grammar, setup, teardown),
        cmocka_unit_test_setup_teardown(test_grammar_cache, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_executor_failure, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
