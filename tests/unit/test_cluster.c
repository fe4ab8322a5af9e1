/* The embedded worker grid (threads over the in-process transport) against the single
 * process engine: expert parallelism (dispatch/combine all-to-all), pipeline stages and
 * attention data parallelism (sequences spread over EP ranks by slot, or by rank with
 * block tables into the workers' paged caches) give the same logits within float rounding,
 * bit-identical from run to run; a failing step returns an error naming the worker and
 * never hangs the grid. Sample requests travel to the last stage, which returns exactly what
 * the sampler gives on the grid's own logit rows. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "test_util.h"

#include "cluster.h"
#include "forward.h"
#include "progress.h"
#include "sample_ref.h"
#include "weights.h"

static dsr1_model_config cfg_small(void)
{
    dsr1_model_config c = test_config();
    c.vocab_size = 400;
    c.num_hidden_layers = 4;
    c.num_attention_heads = 2;
    c.kv_lora_rank = 64;
    c.v_head_dim = 16;
    c.intermediate_size = 192;
    c.n_routed_experts = 24;
    c.num_experts_per_tok = 6;
    return c;
}

#define NSEQ 4
static const int prompt_len[NSEQ] = {7, 3, 9, 1};

/* The paged runs: a pool of POOL blocks of BT tokens (per worker), and each sequence's block
 * table, ids in no order. */
#define POOL 16
#define BT   4
static const int32_t tables[NSEQ][3] = {{11, 2, 7}, {5, 14, 0}, {9, 3, 12}, {6, 15, 1}};

/* Two steps over NSEQ sequences: prefills, then one decode each (logits of every token),
 * through `step`. ep 0: in slots 0..3; else with block tables, sequence s on rank s % ep.
 * Returns the rows (caller frees). */
typedef dsr1_status (*step_fn)(void *ctx, const dsr1_batch *b);

static void use_table(dsr1_seq_step *s, int q, int ep)
{
    if (!ep) return;
    s->slot = -1; /* ignored */
    s->blocks = tables[q];
    s->n_blocks = 3;
    s->rank = q % ep;
}

static void make_tokens(const dsr1_model_config *c, int32_t tok[NSEQ][12])
{
    srand(42);
    for (int s = 0; s < NSEQ; s++)
        for (int i = 0; i < 12; i++) tok[s][i] = rand() % c->vocab_size;
}

/* Step `step` of the two (0: the prompts, every row; 1: one decode token each). */
static void fill_steps(int step, int32_t tok[NSEQ][12], int ep, dsr1_seq_step *ss)
{
    for (int s = 0; s < NSEQ; s++) {
        ss[s] = step == 0 ? (dsr1_seq_step){s, 0, prompt_len[s], tok[s], DSR1_LOGITS_ALL}
                          : (dsr1_seq_step){s, prompt_len[s], 1, tok[s] + prompt_len[s],
                                            DSR1_LOGITS_LAST};
        use_table(&ss[s], s, ep);
    }
}

static float *two_steps(const dsr1_model_config *c, step_fn step, void *ctx, int ep, int *nrows)
{
    int32_t tok[NSEQ][12];
    make_tokens(c, tok);
    int rows = 0;
    for (int s = 0; s < NSEQ; s++) rows += prompt_len[s] + 1;
    float *out = malloc(sizeof(float) * rows * c->vocab_size);
    dsr1_seq_step ss[NSEQ];
    fill_steps(0, tok, ep, ss);
    dsr1_batch b = {NSEQ, ss, out};
    assert_int_equal(step(ctx, &b), DSR1_OK);
    int r = dsr1_batch_logit_rows(&b);
    fill_steps(1, tok, ep, ss);
    b.logits = out + (size_t)r * c->vocab_size;
    assert_int_equal(step(ctx, &b), DSR1_OK);
    *nrows = rows;
    return out;
}

static dsr1_status engine_step(void *ctx, const dsr1_batch *b)
{
    return dsr1_engine_forward(ctx, b);
}

static dsr1_status cluster_step(void *ctx, const dsr1_batch *b)
{
    return dsr1_cluster_step(ctx, b);
}

/* The single engine; paged: with block tables. */
static float *reference(const dsr1_model_config *c, int paged, int *rows)
{
    dsr1_slice all = dsr1_slice_all(c);
    dsr1_weights *w;
    assert_int_equal(dsr1_weights_dummy(c, &all, 77, &w), DSR1_OK);
    dsr1_engine *e;
    const dsr1_kernels *k = dsr1_kernels_portable();
    assert_int_equal(paged ? dsr1_engine_create_paged(w, k, NULL, POOL, BT, 64, &e)
                           : dsr1_engine_create(w, k, NULL, NSEQ, 16, &e),
                     DSR1_OK);
    float *out = two_steps(c, engine_step, e, paged, rows);
    dsr1_engine_destroy(e);
    dsr1_weights_destroy(w);
    return out;
}

/* An embedded grid; paged: workers with paged caches of POOL blocks of BT tokens, else
 * NSEQ cache slots of 16 tokens. */
static dsr1_cluster *grid_open(const dsr1_model_config *c, int workers, int pp, int paged)
{
    dsr1_cluster_params p = {NULL, c, 77, workers, pp, dsr1_kernels_portable(), 2, NSEQ, 16, 20000};
    if (paged) {
        p.kv_blocks = POOL;
        p.block_tokens = BT;
    }
    dsr1_cluster *cl;
    assert_int_equal(dsr1_cluster_create(&p, &cl), DSR1_OK);
    return cl;
}

/* paged: workers with paged caches, sequences with block tables */
static float *grid_run(const dsr1_model_config *c, int workers, int pp, int paged, int *rows)
{
    dsr1_cluster *cl = grid_open(c, workers, pp, paged);
    float *out = two_steps(c, cluster_step, cl, paged ? workers / pp : 0, rows);
    dsr1_cluster_destroy(cl);
    return out;
}

/* The largest difference of got from ref in any row, in standard deviations of ref's row. */
static double worst_error(const float *ref, const float *got, int rows, int vocab)
{
    double worst = 0;
    for (int r = 0; r < rows; r++) {
        double m = 0, v = 0, e = 0;
        const float *a = ref + (size_t)r * vocab, *b = got + (size_t)r * vocab;
        for (int i = 0; i < vocab; i++) m += a[i];
        m /= vocab;
        for (int i = 0; i < vocab; i++) v += (a[i] - m) * (a[i] - m);
        for (int i = 0; i < vocab; i++) e = fmax(e, fabs(a[i] - b[i]));
        worst = fmax(worst, e / sqrt(v / vocab));
    }
    return worst;
}

static void compare_grid(int workers, int pp)
{
    dsr1_model_config c = cfg_small();
    int rows, rows2, rows3;
    float *ref = reference(&c, 0, &rows);
    float *got = grid_run(&c, workers, pp, 0, &rows2);
    float *again = grid_run(&c, workers, pp, 0, &rows3);
    assert_int_equal(rows, rows2);
    const double worst = worst_error(ref, got, rows, c.vocab_size);
    print_message("workers %d pp %d: worst error %.2e std\n", workers, pp, worst);
    assert_true(worst < 1e-5);
    assert_memory_equal(got, again, sizeof(float) * rows * c.vocab_size); /* deterministic */
    free(ref);
    free(got);
    free(again);
}

static void test_ep4(void **state)
{
    (void)state;
    compare_grid(4, 1);
}

static void test_ep2_pp2(void **state)
{
    (void)state;
    compare_grid(4, 2);
}

static void test_ep3_uneven(void **state)
{
    (void)state;
    compare_grid(3, 1); /* 24 experts over 3 ranks, 4 sequences over 3 DP ranks */
}

static void test_pp4(void **state)
{
    (void)state;
    compare_grid(4, 4);
}

/* Paged caches on the workers: the grid routes each sequence by its rank and the workers
 * read the block tables. Bit-identical to the same grid in slot mode, and to the paged
 * single engine where the grid has one EP rank (with several, the expert sums are added in
 * rank order, so the single engine is matched within rounding as in compare_grid). */
static void test_paged_grid(void **state)
{
    (void)state;
    dsr1_model_config c = cfg_small();
    const size_t V = (size_t)c.vocab_size;
    int rows, r2;
    float *ref = reference(&c, 1, &rows), *slots = reference(&c, 0, &r2);
    assert_memory_equal(ref, slots, sizeof(float) * rows * V);
    free(slots);
    float *pp2 = grid_run(&c, 2, 2, 1, &r2); /* 2 stages x 1 EP rank */
    assert_memory_equal(pp2, ref, sizeof(float) * rows * V);
    free(pp2);
    static const int shapes[][2] = {{2, 1}, {4, 2}}; /* 2 EP ranks, in 1 and 2 stages */
    for (int i = 0; i < 2; i++) {
        float *paged = grid_run(&c, shapes[i][0], shapes[i][1], 1, &r2);
        float *slotted = grid_run(&c, shapes[i][0], shapes[i][1], 0, &r2);
        assert_memory_equal(paged, slotted, sizeof(float) * rows * V);
        assert_true(worst_error(ref, paged, rows, c.vocab_size) < 1e-5);
        free(paged);
        free(slotted);
    }
    free(ref);

    /* a rank outside the grid is refused before anything is sent; a sequence without a
     * block table is refused by its worker, named */
    dsr1_cluster_params p = {NULL, &c, 77, 2, 1, dsr1_kernels_portable(), 2, 0, 0, 20000};
    p.kv_blocks = POOL;
    p.block_tokens = BT;
    dsr1_cluster *cl;
    assert_int_equal(dsr1_cluster_create(&p, &cl), DSR1_OK);
    float lg[400];
    int32_t ok[1] = {5};
    dsr1_seq_step s = {0, 0, 1, ok, DSR1_LOGITS_LAST, tables[0], 3, 2};
    dsr1_batch b = {1, &s, lg};
    assert_int_equal(dsr1_cluster_step(cl, &b), DSR1_ERR_RANGE);
    assert_non_null(strstr(dsr1_errmsg(), "rank 2 outside [0, 2)"));
    s.rank = 1;
    assert_int_equal(dsr1_cluster_step(cl, &b), DSR1_OK);
    s = (dsr1_seq_step){1, 0, 1, ok, DSR1_LOGITS_LAST};
    assert_int_equal(dsr1_cluster_step(cl, &b), DSR1_ERR_INVALID_ARG);
    assert_non_null(strstr(dsr1_errmsg(), "worker 1 failed"));
    assert_non_null(strstr(dsr1_errmsg(), "no block table"));
    dsr1_cluster_destroy(cl);
}

/* ---- sampling on the last stage ---- */

/* Sample requests for the two steps of two_steps (sequence 3 has none: its rows come back):
 * sequence 0 draws with top_p, penalties over its history and logit biases, with logprobs
 * and prompt logprobs; 1 is greedy with logprobs under a token mask allowing 5 random ids (a
 * grammar's, which travels in the STEP); 2 scores its known next token with prompt logprobs,
 * then draws. */
typedef struct {
    int32_t bias_ids[2];
    float bias_values[2];
    uint32_t mask[(400 + 31) / 32];
    dsr1_seq_sample req[2][NSEQ - 1];
} grid_samples;

#define GS_SAMPLES 3
#define GS_ROW_LP  ((7 - 1) + (9 - 1)) /* prompt logprobs of sequences 0 and 2 */

static void grid_samples_init(grid_samples *k, int32_t tok[NSEQ][12])
{
    k->bias_ids[0] = tok[0][3];
    k->bias_ids[1] = 123;
    k->bias_values[0] = -1.5f;
    k->bias_values[1] = 2.5f;
    dsr1_sampling p = dsr1_sampling_defaults();
    p.temperature = 0.7f;
    p.top_p = 0.9f;
    p.seed = 11;
    p.top_logprobs = 3;
    p.repetition_penalty = 1.2f;
    p.presence_penalty = 0.3f;
    p.n_bias = 2;
    p.bias_ids = k->bias_ids;
    p.bias_values = k->bias_values;
    const int n0 = prompt_len[0];
    k->req[0][0] = (dsr1_seq_sample){p, 0, tok[0], n0, n0, true, true};
    k->req[1][0] = (dsr1_seq_sample){p, 1, tok[0], n0, n0 + 1, true};
    p = dsr1_sampling_defaults();
    p.temperature = 0;
    p.top_logprobs = 4;
    memset(k->mask, 0, sizeof(k->mask));
    for (int i = 0; i < 5; i++) {
        const int id = rand() % 400;
        k->mask[id / 32] |= 1u << (id % 32);
    }
    p.allowed = k->mask;
    p.mask_words = (400 + 31) / 32;
    k->req[0][1] = (dsr1_seq_sample){p, .logprobs = true};
    k->req[1][1] = (dsr1_seq_sample){p, 1, .logprobs = true};
    p = dsr1_sampling_defaults();
    p.seed = 3;
    p.top_logprobs = 2;
    k->req[0][2] = (dsr1_seq_sample){p, .prompt_logprobs = true, .next = &tok[2][prompt_len[2]]};
    k->req[1][2] = (dsr1_seq_sample){p};
}

/* Runs two_steps without sample requests, then the same two steps with them (rewriting the
 * same cache rows), and checks that the samples and row logprobs equal the sampler's on the
 * rows of the first run, and the rows of sequence 3 those of the first run. Returns the
 * results of both steps: 2 x GS_SAMPLES samples, GS_ROW_LP row logprobs. */
static void sampled_steps(const dsr1_model_config *c, step_fn step, void *ctx, int ep,
                          dsr1_sample_result *samples, dsr1_sample_result *row_lp)
{
    const size_t V = (size_t)c->vocab_size;
    int n_rows;
    float *rows = two_steps(c, step, ctx, ep, &n_rows), back[400];
    int32_t tok[NSEQ][12];
    make_tokens(c, tok);
    grid_samples k;
    grid_samples_init(&k, tok);
    dsr1_seq_step ss[NSEQ];
    const float *at = rows;
    dsr1_sample_result want[GS_SAMPLES], want_lp[GS_ROW_LP];
    for (int st = 0; st < 2; st++) {
        fill_steps(st, tok, ep, ss);
        dsr1_batch b = {NSEQ, ss};
        const int n = dsr1_batch_logit_rows(&b);
        for (int q = 0; q < NSEQ - 1; q++) ss[q].sample = &k.req[st][q];
        b = (dsr1_batch){NSEQ, ss, back, samples + st * GS_SAMPLES, row_lp};
        assert_int_equal(dsr1_batch_samples(&b), GS_SAMPLES);
        assert_int_equal(dsr1_batch_row_logprobs(&b), st ? 0 : GS_ROW_LP);
        assert_int_equal(dsr1_batch_logit_rows(&b), 1);
        assert_int_equal(step(ctx, &b), DSR1_OK);
        assert_true(sample_reference(&b, at, (int)V, want, want_lp));
        for (int i = 0; i < GS_SAMPLES; i++) assert_true(same_result(&b.samples[i], &want[i]));
        const int32_t masked = b.samples[1].token; /* sequence 1 draws under its mask */
        assert_true(masked >= 0 && (k.mask[masked / 32] >> (masked % 32) & 1));
        for (int i = 0; i < dsr1_batch_row_logprobs(&b); i++)
            assert_true(same_result(&row_lp[i], &want_lp[i]));
        at += (size_t)n * V;
        assert_memory_equal(back, at - V, sizeof(float) * V); /* sequence 3's last row */
    }
    assert_int_equal(samples[2].token, tok[2][prompt_len[2]]); /* scored, not drawn */
    free(rows);
}

static void grid_sampled(const dsr1_model_config *c, int workers, int pp, int paged,
                         dsr1_sample_result *samples, dsr1_sample_result *row_lp)
{
    dsr1_cluster *cl = grid_open(c, workers, pp, paged);
    sampled_steps(c, cluster_step, cl, paged ? workers / pp : 0, samples, row_lp);
    dsr1_cluster_destroy(cl);
}

static void assert_same_results(const dsr1_sample_result *a, const dsr1_sample_result *b, int n)
{
    for (int i = 0; i < n; i++) assert_true(same_result(&a[i], &b[i]));
}

/* The last stage samples: each grid returns what the sampler gives on its own logit rows;
 * with one EP rank (pipeline stages only) that is the single engine's result bit for bit,
 * with several (whose expert sums are added in another order) the same grid in slot mode's. A
 * bad sample request is refused before it travels, and the grid stays usable. */
static void test_grid_sampling(void **state)
{
    (void)state;
    dsr1_model_config c = cfg_small();
    dsr1_sample_result ref[2 * GS_SAMPLES], ref_lp[GS_ROW_LP], got[2 * GS_SAMPLES],
        got_lp[GS_ROW_LP], slot[2 * GS_SAMPLES], slot_lp[GS_ROW_LP];
    dsr1_slice all = dsr1_slice_all(&c);
    dsr1_weights *w;
    assert_int_equal(dsr1_weights_dummy(&c, &all, 77, &w), DSR1_OK);
    dsr1_engine *e;
    assert_int_equal(dsr1_engine_create_paged(w, dsr1_kernels_portable(), NULL, POOL, BT, 64, &e),
                     DSR1_OK);
    sampled_steps(&c, engine_step, e, 1, ref, ref_lp);
    dsr1_engine_destroy(e);
    dsr1_weights_destroy(w);

    grid_sampled(&c, 2, 2, 1, got, got_lp); /* 2 stages x 1 EP rank */
    assert_same_results(got, ref, 2 * GS_SAMPLES);
    assert_same_results(got_lp, ref_lp, GS_ROW_LP);
    static const int shapes[][2] = {{2, 1}, {4, 2}}; /* 2 EP ranks, in 1 and 2 stages */
    for (int i = 0; i < 2; i++) {
        grid_sampled(&c, shapes[i][0], shapes[i][1], 1, got, got_lp);
        grid_sampled(&c, shapes[i][0], shapes[i][1], 0, slot, slot_lp);
        assert_same_results(got, slot, 2 * GS_SAMPLES);
        assert_same_results(got_lp, slot_lp, GS_ROW_LP);
    }

    dsr1_cluster *cl = grid_open(&c, 4, 2, 1);
    int32_t tok[2] = {5, 6}, far = 400;
    dsr1_seq_sample r = {dsr1_sampling_defaults(), .next = &far};
    dsr1_seq_step s = {0, 0, 2, tok, DSR1_LOGITS_LAST, tables[0], 3, 1, &r};
    dsr1_batch b = {1, &s, NULL, got};
    assert_int_equal(dsr1_cluster_step(cl, &b), DSR1_ERR_RANGE);
    assert_non_null(strstr(dsr1_errmsg(), "sequence 0: next token id 400"));
    r.next = NULL;
    r.params.temperature = 0;
    assert_int_equal(dsr1_cluster_step(cl, &b), DSR1_OK);
    assert_true(got[0].token >= 0 && got[0].token < c.vocab_size);
    dsr1_cluster_destroy(cl);
}

/* Micro-batches in flight: K prefills in separate slots, then teacher-forced decode steps of
 * every sequence, all submitted before any is waited for, give bit-identical logits to the
 * same steps run one at a time. */
static void in_flight(int workers, int pp)
{
    enum { K = 4, DEC = 3, LEN = 5 };
    dsr1_model_config c = cfg_small();
    dsr1_cluster_params p = {NULL, &c, 77, workers, pp, dsr1_kernels_select(NULL), 2, K, 16, 20000};
    int32_t tok[K][LEN + DEC];
    srand(9);
    for (int s = 0; s < K; s++)
        for (int i = 0; i < LEN + DEC; i++) tok[s][i] = rand() % c.vocab_size;
    const size_t V = (size_t)c.vocab_size, steps = K * (1 + DEC);
    float *seq = malloc(sizeof(float) * V * steps), *par = malloc(sizeof(float) * V * steps);
    dsr1_seq_step ss[K * (1 + DEC)];
    dsr1_batch bb[K * (1 + DEC)];
    for (int s = 0, k = 0; s < K; s++)
        for (int d = 0; d <= DEC; d++, k++) {
            ss[k] =
                d == 0 ? (dsr1_seq_step){s, 0, LEN, tok[s], DSR1_LOGITS_LAST}
                       : (dsr1_seq_step){s, LEN + d - 1, 1, tok[s] + LEN + d - 1, DSR1_LOGITS_LAST};
        }
    /* order: all prefills, then decode round by round */
    int order[K * (1 + DEC)], n = 0;
    for (int d = 0; d <= DEC; d++)
        for (int s = 0; s < K; s++) order[n++] = s * (1 + DEC) + d;
    for (int pass = 0; pass < 2; pass++) {
        dsr1_cluster *cl;
        assert_int_equal(dsr1_cluster_create(&p, &cl), DSR1_OK);
        float *out = pass ? par : seq;
        uint64_t ids[K * (1 + DEC)];
        double t0 = dsr1_now();
        for (int i = 0; i < n; i++) {
            const int k = order[i];
            bb[k] = (dsr1_batch){1, &ss[k], out + (size_t)k * V};
            assert_int_equal(dsr1_cluster_submit(cl, &bb[k], &ids[i]), DSR1_OK);
            if (!pass) assert_int_equal(dsr1_cluster_wait(cl, ids[i]), DSR1_OK);
        }
        if (pass) {
            assert_int_equal(dsr1_cluster_wait(cl, ids[1]), DSR1_ERR_INVALID_ARG); /* not oldest */
            for (int i = 0; i < n; i++) assert_int_equal(dsr1_cluster_wait(cl, ids[i]), DSR1_OK);
        }
        print_message("workers %d pp %d: %d steps %s: %.1f ms\n", workers, pp, n,
                      pass ? "in flight" : "one at a time", (dsr1_now() - t0) * 1e3);
        dsr1_cluster_destroy(cl);
    }
    assert_memory_equal(seq, par, sizeof(float) * V * steps);
    free(seq);
    free(par);
}

static void test_in_flight(void **state)
{
    (void)state;
    in_flight(4, 2);
    in_flight(4, 4);
    in_flight(2, 1);
}

static void test_failure_names_worker(void **state)
{
    (void)state;
    dsr1_model_config c = cfg_small();
    dsr1_cluster_params p = {NULL, &c, 77, 4, 2, dsr1_kernels_portable(), 2, 4, 8, 20000};
    dsr1_cluster *cl;
    assert_int_equal(dsr1_cluster_create(&p, &cl), DSR1_OK);
    float lg[400];
    int32_t bad[2] = {5, 4000};
    dsr1_seq_step s = {1, 0, 2, bad, DSR1_LOGITS_LAST}; /* slot 1: EP rank 1 */
    dsr1_batch b = {1, &s, lg};
    assert_int_equal(dsr1_cluster_step(cl, &b), DSR1_ERR_RANGE);
    assert_non_null(strstr(dsr1_errmsg(), "worker 1 failed"));
    assert_non_null(strstr(dsr1_errmsg(), "token id 4000"));
    int32_t ok[1] = {5};
    s = (dsr1_seq_step){0, 0, 1, ok, DSR1_LOGITS_LAST};
    assert_int_not_equal(dsr1_cluster_step(cl, &b), DSR1_OK); /* the grid is down */
    dsr1_cluster_destroy(cl);                                 /* joins every worker: no hang */
    p.workers = 3;
    p.pp = 2;
    assert_int_equal(dsr1_cluster_create(&p, &cl), DSR1_ERR_INVALID_ARG);
    p.workers = 8;
    p.pp = 8;
    assert_int_equal(dsr1_cluster_create(&p, &cl), DSR1_ERR_INVALID_ARG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ep4),        cmocka_unit_test(test_ep2_pp2),
        cmocka_unit_test(test_ep3_uneven), cmocka_unit_test(test_pp4),
        cmocka_unit_test(test_in_flight),  cmocka_unit_test(test_failure_names_worker),
        cmocka_unit_test(test_paged_grid), cmocka_unit_test(test_grid_sampling),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
