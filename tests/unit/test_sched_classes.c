/* The scheduler's priority classes and bounded-bypass admission, on a real (small, random)
 * paged engine whose step can be held, so that requests arrive at a known step: an
 * interactive request arriving while batch items fill the cache (or the running set) runs
 * in the very next step, the batch items it preempts finish with the tokens of a run
 * without it (seeded sampling); interactive requests are admitted before batch items; a
 * prompt too large for the free cache lets smaller ones pass, DSR1_SCHED_MAX_BYPASS times;
 * batch items are not bounded by max_queued. And jump-forward: the tokens a grammar alone
 * allows are appended without a step of their own, with the ids of a masked greedy run.
 *
 * argv[1]: ../shared/golden (its tokenizer); exits 77 without it. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "forward.h"
#include "scheduler.h"
#include "test_util.h"
#include "weights.h"

#define VOCAB  129280 /* the tokenizer's */
#define MAXOUT 32

static const char *golden;

/* Everything below is guarded by mu: the executor and the callbacks run on the scheduler
 * thread, the test on its own. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

typedef struct {
    dsr1_model_config cfg;
    dsr1_weights *w;
    dsr1_pool *pool;
    dsr1_tokenizer *tok;
    dsr1_engine *eng;
    int steps;   /* steps started */
    int hold_at; /* the step that waits until released (0: none) */
    bool held, released;
    int events; /* events sent so far: their order */
    /* a pipelining executor (depth 2, as a grid of 2 stages): its steps in flight */
    int depth;
    const dsr1_batch *queued[2];
    uint64_t next_id, done_id;
    int max_inflight, violations;
} fixture;

static fixture *fx; /* the callbacks' */

/* The executor: the paged engine; step hold_at waits for release(). */
static dsr1_status fx_step(void *ctx, const dsr1_batch *b)
{
    fixture *f = ctx;
    pthread_mutex_lock(&mu);
    if (++f->steps == f->hold_at) {
        f->held = true;
        pthread_cond_broadcast(&cv);
        while (!f->released) pthread_cond_wait(&cv, &mu);
    }
    pthread_mutex_unlock(&mu);
    return dsr1_engine_forward(f->eng, b);
}

/* The pipelining executor: submit queues the step, wait runs the oldest. Steps in flight
 * must hold disjoint requests (checked by their block tables). Scheduler thread only. */
static dsr1_status fx_submit(void *ctx, const dsr1_batch *b, uint64_t *id)
{
    fixture *f = ctx;
    f->violations += f->next_id - f->done_id >= 2;
    f->queued[f->next_id % 2] = b;
    *id = f->next_id++;
    if ((int)(f->next_id - f->done_id) > f->max_inflight)
        f->max_inflight = (int)(f->next_id - f->done_id);
    return DSR1_OK;
}

static dsr1_status fx_wait(void *ctx, uint64_t id)
{
    fixture *f = ctx;
    f->violations += id != f->done_id;
    const dsr1_batch *b = f->queued[f->done_id++ % 2];
    for (int i = 0; i < b->n_seqs; i++)
        for (uint64_t j = f->done_id; j < f->next_id; j++)
            for (int k = 0; k < f->queued[j % 2]->n_seqs; k++)
                f->violations += b->seqs[i].blocks == f->queued[j % 2]->seqs[k].blocks;
    return fx_step(ctx, b);
}

static void hold(fixture *f, int step)
{
    pthread_mutex_lock(&mu);
    f->hold_at = step;
    f->held = f->released = false;
    pthread_mutex_unlock(&mu);
}

static void wait_held(fixture *f)
{
    pthread_mutex_lock(&mu);
    while (!f->held) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
}

static void release(fixture *f)
{
    pthread_mutex_lock(&mu);
    f->released = true;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

typedef struct {
    int32_t ids[MAXOUT];
    int n_ids;
    bool done;
    dsr1_finish finish;
    int first_step; /* the step that gave the first token */
    int first_ev, final_ev;
} result;

static void on_event(const dsr1_sched_event *ev)
{
    result *r = ev->ctx;
    pthread_mutex_lock(&mu);
    const int seq = ++fx->events;
    if (ev->kind == DSR1_EV_DELTA) {
        if (!r->n_ids) {
            r->first_step = fx->steps;
            r->first_ev = seq;
        }
        for (int i = 0; i < ev->n_ids && r->n_ids < MAXOUT; i++) r->ids[r->n_ids++] = ev->ids[i];
    } else {
        r->done = true;
        r->finish = ev->finish;
        r->final_ev = seq;
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
    fx = f;
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

/* A scheduler over a fresh paged engine of `blocks` blocks of `bt` tokens, one rank. */
static dsr1_sched *start(fixture *f, int blocks, int bt, int step_tokens, int max_running,
                         int max_queued)
{
    dsr1_engine_destroy(f->eng);
    assert_int_equal(dsr1_engine_create_paged(f->w, dsr1_kernels_select(NULL), f->pool, blocks, bt,
                                              step_tokens, &f->eng),
                     DSR1_OK);
    hold(f, 0);
    f->steps = f->events = 0;
    f->next_id = f->done_id = 0;
    f->max_inflight = f->violations = 0;
    dsr1_sched_params p = {{f, fx_step, 1, blocks, bt},
                           f->tok,
                           VOCAB,
                           f->cfg.max_position_embeddings,
                           step_tokens,
                           max_running,
                           max_queued,
                           true,
                           NULL};
    if (f->depth > 1) {
        p.exec.submit = fx_submit;
        p.exec.wait = fx_wait;
        p.exec.depth = f->depth;
    }
    dsr1_sched *s;
    assert_int_equal(dsr1_sched_create(&p, &s), DSR1_OK);
    return s;
}

/* A request sampled at temperature 1 with its own seed (batch-invariant, not greedy). */
static dsr1_sched_request request(const char *id, dsr1_sched_class cls, const int32_t *prompt,
                                  int n, int max_tokens, uint64_t seed, result *r)
{
    dsr1_sched_request q = {0};
    q.id = id;
    q.cls = cls;
    q.prompt = prompt;
    q.n_prompt = n;
    q.sampling = dsr1_sampling_defaults();
    q.sampling.temperature = 1.0f;
    q.sampling.seed = seed;
    q.max_tokens = max_tokens;
    q.text = (dsr1_textout_params){
        .skip_special = true, .eos_id = 1, .ignore_eos = true, .think_end_id = -1};
    q.callback = on_event;
    q.ctx = r;
    memset(r, 0, sizeof(*r));
    return q;
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
    assert_int_equal(in.queued_batch, 0);
    assert_int_equal(in.running_batch, 0);
    assert_int_equal(in.blocks_used, 0);
}

/* ---- an interactive request among batch items ---- */

enum { NB = 4, BPROMPT = 20, BTOKENS = 12 };

typedef struct {
    int blocks, max_running; /* the scheduler's (4-token blocks, 64-token steps) */
    int hold_at;             /* the step during which the interactive request arrives */
    int iprompt, itokens;    /* its size */
    bool late;               /* with it, one more batch item arrives just before it (and waits) */
} load_case;

/* Runs NB seeded batch items (all admitted by step 2: the first alone in step 1, then the
 * others), with an interactive request submitted during step c->hold_at unless
 * c->iprompt is 0. out: the batch items' results (NB, then the late one's); *inter: the
 * interactive one's. */
static void run_load(fixture *f, const load_case *c, int32_t prompts[NB][BPROMPT], result *out,
                     result *inter, dsr1_sched_info *info)
{
    dsr1_sched *s = start(f, c->blocks, 4, 64, c->max_running, 2);
    char ids[NB][16];
    hold(f, 1);
    for (int i = 0; i < NB; i++) {
        snprintf(ids[i], sizeof(ids[i]), "b%d", i);
        dsr1_sched_request q = request(ids[i], DSR1_SCHED_BATCH, prompts[i], BPROMPT, BTOKENS,
                                       100 + (uint64_t)i, &out[i]);
        assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
        if (i == 0) wait_held(f); /* the others arrive during step 1 */
    }
    int32_t iprompt[64], late[BPROMPT];
    random_ids(iprompt, c->iprompt);
    random_ids(late, BPROMPT);
    if (c->iprompt) {
        hold(f, c->hold_at);
        release(f);
        wait_held(f);
        dsr1_sched_info in;
        dsr1_sched_get_info(s, &in);
        assert_int_equal(in.running_batch, NB); /* the cache or the running set is theirs */
        assert_int_equal(in.queued_batch, 0);
        if (c->late) {
            dsr1_sched_request l =
                request("late", DSR1_SCHED_BATCH, late, BPROMPT, BTOKENS, 99, &out[NB]);
            assert_int_equal(dsr1_sched_submit(s, &l), DSR1_OK);
        }
        dsr1_sched_request q = request("interactive", DSR1_SCHED_INTERACTIVE, iprompt, c->iprompt,
                                       c->itokens, 7, inter);
        assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
    }
    release(f);
    wait_done(out, NB + c->late);
    if (c->iprompt) wait_done(inter, 1);
    assert_idle(s);
    dsr1_sched_get_info(s, info);
    dsr1_sched_destroy(s);
}

/* The interactive request's first token comes from the step after the one it arrived
 * during, batch items were preempted for it (never it for them), and every batch item
 * finishes with the tokens it gives without it. */
static void check_load(fixture *f, const load_case *c)
{
    int32_t prompts[NB][BPROMPT];
    srand(21);
    for (int i = 0; i < NB; i++) random_ids(prompts[i], BPROMPT);
    result alone[NB], loaded[NB + 1], inter;
    dsr1_sched_info in;
    const load_case quiet = {c->blocks, c->max_running, 0, 0, 0, false};
    run_load(f, &quiet, prompts, alone, NULL, &in);
    assert_int_equal(in.preemptions, 0); /* they fit together */
    run_load(f, c, prompts, loaded, &inter, &in);
    assert_int_equal(inter.finish, DSR1_FINISH_LENGTH);
    assert_int_equal(inter.n_ids, c->itokens);
    assert_int_equal(inter.first_step, c->hold_at + 1);
    assert_true(in.preemptions_batch >= 1);
    assert_int_equal(in.preemptions, in.preemptions_batch);
    for (int i = 0; i < NB; i++) {
        assert_int_equal(loaded[i].finish, DSR1_FINISH_LENGTH);
        assert_int_equal(loaded[i].n_ids, BTOKENS);
        assert_memory_equal(loaded[i].ids, alone[i].ids, sizeof(int32_t) * BTOKENS);
    }
    if (c->late) { /* the preempted item took the first free slot, the late one the next */
        int first_final = loaded[0].final_ev;
        for (int i = 1; i < NB; i++)
            if (loaded[i].final_ev < first_final) first_final = loaded[i].final_ev;
        assert_int_equal(loaded[NB].n_ids, BTOKENS);
        assert_true(loaded[NB].first_ev > first_final);
    }
}

/* 32 blocks: the 4 batch items (8 blocks each at their end) fill them; by step 4 they hold
 * at least 24, and the interactive request needs 9 (36 tokens). */
static void test_interactive_takes_blocks(void **state)
{
    const load_case c = {32, 8, 4, 36, 4, false};
    check_load(*state, &c);
}

/* A running set of 4, all batch items, and plenty of blocks: the interactive request
 * takes the youngest batch item's slot; that item resumes before a batch item that was
 * waiting. */
static void test_interactive_takes_slot(void **state)
{
    const load_case c = {200, NB, 3, 8, 4, true};
    check_load(*state, &c);
}

/* One running slot, held by an interactive request; a batch item then an interactive one
 * wait: the interactive one runs (and ends) before the batch item starts. */
static void test_interactive_admitted_first(void **state)
{
    fixture *f = *state;
    int32_t prompt[3][8];
    srand(22);
    for (int i = 0; i < 3; i++) random_ids(prompt[i], 8);
    dsr1_sched *s = start(f, 64, 4, 64, 1, 8);
    result hog, batch, inter;
    hold(f, 1);
    dsr1_sched_request q = request("hog", DSR1_SCHED_INTERACTIVE, prompt[0], 8, 6, 1, &hog);
    assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
    wait_held(f);
    q = request("batch", DSR1_SCHED_BATCH, prompt[1], 8, 4, 2, &batch);
    assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
    q = request("inter", DSR1_SCHED_INTERACTIVE, prompt[2], 8, 4, 3, &inter);
    assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
    release(f);
    wait_done(&hog, 1);
    wait_done(&batch, 1);
    wait_done(&inter, 1);
    assert_true(hog.final_ev < inter.first_ev); /* a batch item never preempts */
    assert_true(inter.final_ev < batch.first_ev);
    assert_int_equal(batch.n_ids, 4);
    dsr1_sched_info in;
    dsr1_sched_get_info(s, &in);
    assert_int_equal(in.preemptions, 0);
    assert_idle(s);
    dsr1_sched_destroy(s);
}

/* A running interactive request that needs a block takes it from a batch item, even an
 * older one, rather than from a younger interactive request. 11 blocks of 4 tokens: a
 * batch item (3 blocks after step 2) then two interactive requests (4 each) fill them;
 * in step 3 the older interactive one needs a fifth block. */
static void test_running_interactive_preempts_batch(void **state)
{
    fixture *f = *state;
    int32_t prompt[3][16];
    srand(25);
    for (int i = 0; i < 3; i++) random_ids(prompt[i], 16);
    result alone, batch, inter[2];
    dsr1_sched *s = start(f, 11, 4, 64, 8, 8);
    dsr1_sched_request q = request("batch", DSR1_SCHED_BATCH, prompt[0], 8, 8, 3, &alone);
    assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
    wait_done(&alone, 1);
    dsr1_sched_destroy(s);

    s = start(f, 11, 4, 64, 8, 8);
    hold(f, 1);
    q = request("batch", DSR1_SCHED_BATCH, prompt[0], 8, 8, 3, &batch);
    assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
    wait_held(f);
    q = request("i0", DSR1_SCHED_INTERACTIVE, prompt[1], 16, 4, 4, &inter[0]);
    assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
    q = request("i1", DSR1_SCHED_INTERACTIVE, prompt[2], 16, 4, 5, &inter[1]);
    assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
    release(f);
    wait_done(inter, 2);
    wait_done(&batch, 1);
    dsr1_sched_info in;
    dsr1_sched_get_info(s, &in);
    assert_true(in.preemptions_batch >= 1);
    assert_int_equal(in.preemptions, in.preemptions_batch);
    assert_int_equal(batch.n_ids, 8);
    assert_memory_equal(batch.ids, alone.ids, sizeof(int32_t) * 8);
    assert_idle(s);
    dsr1_sched_destroy(s);
}

/* Interactive requests and batch items mixed, through a cache too small for them all and
 * two steps in flight (a 2-stage pipeline): steps hold disjoint requests, batch items are
 * preempted, and every request's seeded tokens are those it gives alone. */
static void test_mixed_pipelined(void **state)
{
    fixture *f = *state;
    enum { N = 12 };
    int32_t prompts[N][32], alone[N][MAXOUT];
    int np[N], nt[N];
    char ids[N][16];
    result rs[N];
    srand(27);
    for (int i = 0; i < N; i++) {
        np[i] = 6 + rand() % 26;
        nt[i] = 4 + rand() % 9;
        random_ids(prompts[i], np[i]);
        snprintf(ids[i], sizeof(ids[i]), "%c%d", i % 2 ? 'i' : 'b', i);
    }
    f->depth = 1;
    dsr1_sched *s = start(f, 400, 4, 64, 16, 16);
    for (int i = 0; i < N; i++) {
        dsr1_sched_request q =
            request(ids[i], DSR1_SCHED_INTERACTIVE, prompts[i], np[i], nt[i], (uint64_t)i, &rs[i]);
        assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
        wait_done(&rs[i], 1); /* alone */
        memcpy(alone[i], rs[i].ids, sizeof(int32_t) * (size_t)nt[i]);
    }
    dsr1_sched_destroy(s);

    /* 24 blocks of 4 tokens: fewer than the requests need together */
    f->depth = 2;
    s = start(f, 24, 4, 32, 8, 16);
    hold(f, 1);
    for (int i = 0; i < N; i++) {
        dsr1_sched_request q = request(ids[i], i % 2 ? DSR1_SCHED_INTERACTIVE : DSR1_SCHED_BATCH,
                                       prompts[i], np[i], nt[i], (uint64_t)i, &rs[i]);
        assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
        if (i == 0) wait_held(f); /* the others arrive during step 1 */
    }
    release(f);
    wait_done(rs, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(rs[i].finish, DSR1_FINISH_LENGTH);
        assert_int_equal(rs[i].n_ids, nt[i]);
        assert_memory_equal(rs[i].ids, alone[i], sizeof(int32_t) * (size_t)nt[i]);
    }
    dsr1_sched_info in;
    dsr1_sched_get_info(s, &in);
    assert_true(in.preemptions_batch > 0);
    assert_int_equal(f->max_inflight, 2);
    assert_int_equal(f->violations, 0);
    assert_idle(s);
    dsr1_sched_destroy(s);
    f->depth = 1;
}

/* ---- bounded bypass ---- */

enum { NS = DSR1_SCHED_MAX_BYPASS + 4 };

/* 24 blocks of 4 tokens, 8 running, 64-token steps. A hog holds 10 to 13 blocks for 12
 * steps, so a 60-token prompt (15 blocks) cannot be admitted before it ends; 4-token
 * prompts (1 block, 1 token: one step each) queued behind it pass it, exactly
 * DSR1_SCHED_MAX_BYPASS of them, and the rest wait for it. */
static void check_bypass(fixture *f, dsr1_sched_class cls)
{
    int32_t hog_prompt[40], big_prompt[60], small[NS][4];
    srand(23);
    random_ids(hog_prompt, 40);
    random_ids(big_prompt, 60);
    for (int i = 0; i < NS; i++) random_ids(small[i], 4);
    dsr1_sched *s = start(f, 24, 4, 64, 8, 64);
    result hog, big, rs[NS];
    char ids[NS][16];
    hold(f, 1);
    dsr1_sched_request q = request("hog", cls, hog_prompt, 40, 12, 1, &hog);
    assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
    wait_held(f);
    q = request("big", cls, big_prompt, 60, 2, 2, &big);
    assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
    for (int i = 0; i < NS; i++) {
        snprintf(ids[i], sizeof(ids[i]), "s%d", i);
        q = request(ids[i], cls, small[i], 4, 1, 10 + (uint64_t)i, &rs[i]);
        assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
    }
    release(f);
    wait_done(&hog, 1);
    wait_done(&big, 1);
    wait_done(rs, NS);
    assert_int_equal(big.finish, DSR1_FINISH_LENGTH);
    assert_int_equal(big.n_ids, 2);
    assert_true(big.first_ev > hog.final_ev); /* it never fitted beside the hog */
    for (int i = 0; i < NS; i++) {
        assert_int_equal(rs[i].n_ids, 1);
        if (i < DSR1_SCHED_MAX_BYPASS && rs[i].first_ev > big.first_ev)
            fail_msg("small %d waited for the big prompt (first event %d, big's %d)", i,
                     rs[i].first_ev, big.first_ev);
        if (i >= DSR1_SCHED_MAX_BYPASS && rs[i].first_ev < big.first_ev)
            fail_msg("small %d passed the big prompt beyond the bound (first event %d, big's %d)",
                     i, rs[i].first_ev, big.first_ev);
    }
    dsr1_sched_info in;
    dsr1_sched_get_info(s, &in);
    assert_int_equal(in.preemptions, 0);
    assert_idle(s);
    dsr1_sched_destroy(s);
}

static void test_bypass_interactive(void **state)
{
    check_bypass(*state, DSR1_SCHED_INTERACTIVE);
}

static void test_bypass_batch(void **state)
{
    check_bypass(*state, DSR1_SCHED_BATCH);
}

/* max_queued bounds waiting interactive requests only; a bad class is refused. */
static void test_batch_not_queue_bounded(void **state)
{
    fixture *f = *state;
    enum { N = 10 };
    int32_t prompt[N + 3][6];
    srand(24);
    for (int i = 0; i < N + 3; i++) random_ids(prompt[i], 6);
    dsr1_sched *s = start(f, 64, 4, 64, 1, 2);
    result hog, rs[N], is[2], x;
    char ids[N][16];
    hold(f, 1);
    dsr1_sched_request q = request("hog", DSR1_SCHED_INTERACTIVE, prompt[N], 6, 3, 1, &hog);
    assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
    wait_held(f);
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof(ids[i]), "b%d", i);
        q = request(ids[i], DSR1_SCHED_BATCH, prompt[i], 6, 2, (uint64_t)i, &rs[i]);
        assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
    }
    q = request("i0", DSR1_SCHED_INTERACTIVE, prompt[N + 1], 6, 2, 5, &is[0]);
    assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
    q = request("i1", DSR1_SCHED_INTERACTIVE, prompt[N + 2], 6, 2, 6, &is[1]);
    assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
    q = request("i2", DSR1_SCHED_INTERACTIVE, prompt[N + 2], 6, 2, 6, &x);
    assert_int_equal(dsr1_sched_submit(s, &q), DSR1_ERR_BUSY);
    dsr1_sched_info in;
    dsr1_sched_get_info(s, &in);
    assert_int_equal(in.queued, N + 2);
    assert_int_equal(in.queued_batch, N);
    q = request("bad", (dsr1_sched_class)2, prompt[0], 6, 2, 6, &x);
    assert_int_equal(dsr1_sched_check(s, &q), DSR1_ERR_INVALID_ARG);
    assert_int_equal(dsr1_sched_submit(s, &q), DSR1_ERR_INVALID_ARG);
    release(f);
    wait_done(rs, N);
    wait_done(is, 2);
    for (int i = 0; i < N; i++) {
        assert_int_equal(rs[i].finish, DSR1_FINISH_LENGTH);
        assert_true(rs[i].first_ev > is[1].final_ev); /* one slot: the interactive ones first */
    }
    assert_idle(s);
    dsr1_sched_destroy(s);
}

/* ---- jump-forward ---- */

/* Greedy ids of a prompt under a grammar, run alone through a slot-mode engine: the first
 * largest allowed logit at each position, the matcher advanced by hand, up to EOS (id 1). */
static int masked_reference(fixture *f, const int32_t *prompt, int n, const dsr1_grammar *g,
                            int max_tokens, int32_t *out)
{
    dsr1_engine *e;
    dsr1_matcher *m;
    assert_int_equal(
        dsr1_engine_create(f->w, dsr1_kernels_select(NULL), f->pool, 1, n + max_tokens, &e),
        DSR1_OK);
    assert_int_equal(dsr1_matcher_create(g, &m), DSR1_OK);
    uint32_t *mask = calloc(dsr1_grammar_mask_words(VOCAB), sizeof(uint32_t));
    float *lg = malloc(sizeof(float) * VOCAB * (size_t)n);
    dsr1_seq_step q = {0, 0, n, prompt, DSR1_LOGITS_ALL};
    dsr1_batch b = {1, &q, lg};
    assert_int_equal(dsr1_engine_forward(e, &b), DSR1_OK);
    const float *last = lg + (size_t)(n - 1) * VOCAB;
    int k = 0;
    while (k < max_tokens) {
        dsr1_matcher_mask(m, mask);
        int32_t best = -1;
        for (int v = 0; v < VOCAB; v++)
            if ((mask[v / 32] >> (v % 32) & 1) && (best < 0 || last[v] > last[best])) best = v;
        assert_true(best >= 0);
        assert_int_equal(dsr1_matcher_advance(m, best), DSR1_OK);
        out[k++] = best;
        if (best == 1) break;
        q = (dsr1_seq_step){0, n + k - 1, 1, &out[k - 1], DSR1_LOGITS_LAST};
        assert_int_equal(dsr1_engine_forward(e, &b), DSR1_OK);
        last = lg;
    }
    free(lg);
    free(mask);
    dsr1_matcher_free(m);
    dsr1_engine_destroy(e);
    return k;
}

/* Tokens a grammar allows alone (two special tokens, then after a sampled digit a third
 * and EOS) are appended without a step of their own: a greedy request gives the ids of the
 * masked greedy reference in 2 steps instead of 5; with logprobs (which need each token's
 * logits) every token takes its step, with the same ids. */
static void test_forced_tokens(void **state)
{
    fixture *f = *state;
    const char *src = "root ::= <|<｜fim▁begin｜>|> <|<｜fim▁hole｜>|> [0-9] <|<｜fim▁end｜>|>";
    dsr1_grammar_vocab *gv;
    dsr1_grammar *g;
    assert_int_equal(dsr1_grammar_vocab_create(f->tok, 1, &gv), DSR1_OK);
    assert_int_equal(dsr1_grammar_compile_ebnf(gv, src, strlen(src), NULL, &g), DSR1_OK);
    const int32_t hole = dsr1_tokenizer_token_id(f->tok, "<｜fim▁hole｜>");
    const int32_t end = dsr1_tokenizer_token_id(f->tok, "<｜fim▁end｜>");
    int32_t prompt[12], want[8];
    srand(26);
    random_ids(prompt, 12);
    const int n_want = masked_reference(f, prompt, 12, g, 8, want);
    assert_int_equal(n_want, 5);
    assert_int_equal(want[1], hole);
    assert_int_equal(want[3], end);
    for (int with_lp = 0; with_lp < 2; with_lp++) {
        dsr1_sched *s = start(f, 64, 4, 64, 4, 4);
        result r;
        dsr1_sched_request q = request("forced", DSR1_SCHED_INTERACTIVE, prompt, 12, 8, 0, &r);
        q.sampling.temperature = 0;
        q.grammar = g;
        q.text.ignore_eos = false;
        q.logprobs = with_lp;
        assert_int_equal(dsr1_sched_submit(s, &q), DSR1_OK);
        wait_done(&r, 1);
        assert_int_equal(r.finish, DSR1_FINISH_STOP);
        assert_int_equal(r.n_ids, n_want);
        assert_memory_equal(r.ids, want, sizeof(int32_t) * (size_t)n_want);
        pthread_mutex_lock(&mu);
        const int steps = f->steps;
        pthread_mutex_unlock(&mu);
        assert_int_equal(steps, with_lp ? 5 : 2);
        assert_idle(s);
        dsr1_sched_destroy(s);
    }
    dsr1_grammar_free(g);
    dsr1_grammar_vocab_free(gv);
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
        cmocka_unit_test_setup_teardown(test_interactive_takes_blocks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_interactive_takes_slot, setup, teardown),
        cmocka_unit_test_setup_teardown(test_interactive_admitted_first, setup, teardown),
        cmocka_unit_test_setup_teardown(test_running_interactive_preempts_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mixed_pipelined, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bypass_interactive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bypass_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_not_queue_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forced_tokens, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
