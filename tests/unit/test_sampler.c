/* Sampler tests: every sampled token equals the one a naive reference picks (full sort,
 * penalties by rescanning the history, inverse CDF with the same uniform number) on random
 * rows and parameters; empirical frequencies match the filtered distribution; greedy,
 * seeded determinism, top_p's minimal prefix, penalties and logit_bias, log-probabilities
 * against a double-precision log-softmax, and the validation messages. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sampler.h"

/* ---- random test data ---- */

static uint64_t rng_state = 0x5eed5a3b1e;

static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static double unif(void)
{
    return (double)(rnd() >> 11) * 0x1p-53;
}

static int below(int n)
{
    return (int)(rnd() % (uint64_t)n);
}

/* Logits spread over `spread` units, with some repeated values (ties) and, when masked,
 * a few -inf entries (never all). */
static void random_row(float *x, int n, double spread, bool masked)
{
    for (int i = 0; i < n; i++) x[i] = (float)((unif() + unif() + unif() - 1.5) * spread);
    for (int i = 0; i < n / 8; i++) x[below(n)] = x[below(n)];
    if (masked)
        for (int i = 0; i < n / 10; i++) x[below(n)] = -INFINITY;
    x[below(n)] = (float)spread; /* at least one finite logit */
}

/* ---- the naive reference ---- */

typedef struct {
    int32_t id;
    float w;
} ref_entry;

static int ref_cmp(const void *a, const void *b)
{
    const ref_entry *x = a, *y = b;
    if (x->w != y->w) return x->w > y->w ? -1 : 1;
    return x->id - y->id;
}

static float ref_to_logit(double v)
{
    if (v == -INFINITY) return -INFINITY;
    return (float)fmax(-3.4028234663852886e38, fmin(3.4028234663852886e38, v));
}

static int ref_count(const int32_t *ids, int n, int32_t id)
{
    int c = 0;
    for (int i = 0; i < n; i++) c += ids[i] == id;
    return c;
}

/* The penalised row, by the formulas of sampler.h, token by token. */
static void ref_penalise(const dsr1_sampling *p, const float *x, int n, const dsr1_token_history *h,
                         float *w)
{
    for (int i = 0; i < n; i++) {
        double v = x[i];
        if (p->allowed && !(p->allowed[i / 32] >> (i % 32) & 1)) v = -INFINITY;
        for (int j = 0; j < p->n_bias; j++)
            if (p->bias_ids[j] == i) v = ref_to_logit(v + p->bias_values[j]);
        int in_prompt = h ? ref_count(h->prompt, h->n_prompt, i) : 0;
        int out = h ? ref_count(h->output, h->n_output, i) : 0;
        if (p->repetition_penalty != 1 && (in_prompt || out))
            v = v > 0 ? v / p->repetition_penalty : v * p->repetition_penalty;
        if (out && (p->presence_penalty != 0 || p->frequency_penalty != 0))
            v -= p->presence_penalty + (double)p->frequency_penalty * out;
        w[i] = ref_to_logit(v);
    }
}

/* The kept ids in sorted order with their weights (returns how many) and the chosen id
 * for uniform u. *ambiguous: some decision was within rounding of a boundary. */
static int ref_sample(const dsr1_sampling *p, const float *x, int n, const dsr1_token_history *h,
                      double u, ref_entry *order, double *e, int32_t *token, bool *ambiguous)
{
    float *w = malloc((size_t)n * sizeof(float));
    ref_penalise(p, x, n, h, w);
    int m = 0;
    for (int i = 0; i < n; i++)
        if (w[i] != -INFINITY) order[m++] = (ref_entry){i, w[i]};
    qsort(order, (size_t)m, sizeof(ref_entry), ref_cmp);
    free(w);
    *ambiguous = false;
    if (p->temperature == 0) {
        *token = order[0].id;
        return 1;
    }
    for (int i = 0; i < m; i++)
        e[i] = exp(-((double)order[0].w - (double)order[i].w) / p->temperature);
    if (p->top_k > 0 && p->top_k < m) m = p->top_k;
    double z = 0, cum = 0;
    for (int i = 0; i < m; i++) z += e[i];
    if (p->top_p < 1) {
        double target = p->top_p * z;
        int i = 0;
        for (; i < m - 1 && cum + e[i] < target; i++) cum += e[i];
        if (fabs(cum + e[i] - target) < 1e-9 * z || fabs(cum - target) < 1e-9 * z)
            *ambiguous = true;
        m = i + 1;
    }
    if (p->min_p > 0) {
        int i = 0;
        while (i < m && e[i] >= p->min_p) i++;
        if (i < m && fabs(e[i] - p->min_p) < 1e-12) *ambiguous = true;
        m = i;
    }
    z = 0;
    for (int i = 0; i < m; i++) z += e[i];
    double t = u * z;
    cum = 0;
    int i = 0;
    for (; i < m - 1 && cum + e[i] <= t; i++) cum += e[i];
    if (fabs(cum + e[i] - t) < 1e-9 * z || (i > 0 && fabs(cum - t) < 1e-9 * z)) *ambiguous = true;
    *token = order[i].id;
    return m;
}

/* log-softmax of the raw row in double */
static double ref_logprob(const float *x, int n, int32_t id)
{
    double max = -INFINITY, sum = 0;
    for (int i = 0; i < n; i++) max = fmax(max, x[i]);
    for (int i = 0; i < n; i++) sum += exp((double)x[i] - max);
    return (double)x[id] - max - log(sum);
}

/* ---- random parameters ---- */

typedef struct {
    dsr1_sampling p;
    int32_t bias_ids[8];
    float bias_values[8];
    int32_t prompt[64], output[64];
    dsr1_token_history h;
} random_request;

static void random_params(random_request *r, int vocab)
{
    static const float temps[] = {0, 0.05f, 0.6f, 1, 2.5f, 100};
    static const int top_ks[] = {0, 0, 1, 5, 40};
    static const float top_ps[] = {1, 1, 0.95f, 0.5f, 0.01f};
    static const float min_ps[] = {0, 0, 0.05f, 0.5f, 1};
    dsr1_sampling *p = &r->p;
    *p = dsr1_sampling_defaults();
    p->temperature = temps[below(6)];
    p->top_k = top_ks[below(5)];
    if (below(8) == 0) p->top_k = vocab + 3;
    p->top_p = top_ps[below(5)];
    p->min_p = min_ps[below(5)];
    p->seed = rnd();
    if (below(2)) {
        p->repetition_penalty = (float)(0.5 + 1.5 * unif());
        p->presence_penalty = (float)(4 * unif() - 2);
        p->frequency_penalty = (float)(4 * unif() - 2);
    }
    p->n_bias = below(9);
    for (int i = 0; i < p->n_bias; i++) {
        r->bias_ids[i] = below(vocab);
        r->bias_values[i] = (float)(200 * unif() - 100);
    }
    p->bias_ids = r->bias_ids;
    p->bias_values = r->bias_values;
    p->top_logprobs = below(DSR1_MAX_TOP_LOGPROBS + 1);
    r->h = (dsr1_token_history){r->prompt, below(65), r->output, below(65)};
    for (int i = 0; i < 64; i++) { /* repeated ids, so counts above 1 occur */
        r->prompt[i] = below(vocab < 20 ? vocab : 20);
        r->output[i] = below(vocab < 30 ? vocab : 30);
    }
}

/* A float log-probability against the double reference: a few float ulps. */
static void check_logprob(float got, double want)
{
    if (isinf(want))
        assert_true(got == -INFINITY);
    else
        assert_true(fabs(got - want) < 1e-6 * fabs(want) + 1e-5);
}

static void check_top(const dsr1_sample_result *r, const float *x, int n)
{
    for (int j = 0; j < r->n_top; j++) {
        int32_t id = r->top[j].token_id;
        assert_true(id >= 0 && id < n);
        check_logprob(r->top[j].logprob, ref_logprob(x, n, id));
        if (j > 0) { /* most likely first, lower id first on ties */
            int32_t prev = r->top[j - 1].token_id;
            assert_true(x[prev] > x[id] || (x[prev] == x[id] && prev < id));
        }
    }
    if (r->n_top > 0) { /* nothing outside the list beats its last entry */
        int32_t last = r->top[r->n_top - 1].token_id;
        int better = 0;
        for (int i = 0; i < n; i++) better += x[i] > x[last] || (x[i] == x[last] && i < last);
        assert_int_equal(better, r->n_top - 1);
    }
}

/* ---- tests ---- */

static void test_matches_reference(void **state)
{
    (void)state;
    static const int vocabs[] = {1, 2, 7, 50, 1000, 5000};
    static const double spreads[] = {0.5, 8, 30, 200};
    ref_entry *order = malloc(5000 * sizeof(ref_entry));
    double *e = malloc(5000 * sizeof(double));
    float *x = malloc(5000 * sizeof(float));
    int ambiguous_count = 0, trials = 0;
    for (int vi = 0; vi < 6; vi++) {
        int n = vocabs[vi];
        dsr1_sampler *s;
        assert_int_equal(dsr1_sampler_create(n, &s), DSR1_OK);
        for (int trial = 0; trial < (n > 1000 ? 150 : 400); trial++) {
            random_row(x, n, spreads[below(4)], below(2));
            random_request r;
            random_params(&r, n);
            const dsr1_token_history *h = below(4) ? &r.h : NULL;
            uint32_t mask[5000 / 32 + 1];
            if (below(3) == 0) { /* a grammar's mask: a random third, and the first maximum */
                int top = 0;
                for (int i = 0; i < n; i++) {
                    if (x[i] > x[top]) top = i;
                    if (i % 32 == 0) mask[i / 32] = 0;
                    if (below(3) == 0) mask[i / 32] |= 1u << (i % 32);
                }
                mask[top / 32] |= 1u << (top % 32);
                r.p.allowed = mask;
                r.p.mask_words = (n + 31) / 32;
            }
            uint64_t step = rnd() % 1000;
            dsr1_sample_result got;
            assert_int_equal(dsr1_sample(s, &r.p, x, h, step, &got), DSR1_OK);
            int32_t token_only; /* the token without the logprob: the same draw */
            assert_int_equal(dsr1_sample_token(s, &r.p, x, h, step, &token_only), DSR1_OK);
            assert_int_equal(token_only, got.token);
            int32_t want;
            bool ambiguous;
            ref_sample(&r.p, x, n, h, dsr1_sample_uniform(r.p.seed, step), order, e, &want,
                       &ambiguous);
            if (got.token != want) {
                assert_true(ambiguous);
                ambiguous_count++;
            }
            trials++;
            if (r.p.allowed) assert_true(mask[got.token / 32] >> (got.token % 32) & 1);
            check_logprob(got.logprob, ref_logprob(x, n, got.token));
            assert_int_equal(got.n_top, r.p.top_logprobs < n ? r.p.top_logprobs : n);
            check_top(&got, x, n);
        }
        dsr1_sampler_destroy(s);
    }
    assert_true(ambiguous_count * 100 < trials);
    free(order);
    free(e);
    free(x);
}

/* The empirical frequencies of many steps match the filtered distribution (chi-square),
 * and no id outside it is ever drawn. */
static void check_frequencies(const dsr1_sampling *p, const float *x, int n)
{
    enum { STEPS = 20000 };
    ref_entry order[64];
    double e[64];
    int32_t tok;
    bool amb;
    int m = ref_sample(p, x, n, NULL, 0, order, e, &tok, &amb);
    double z = 0;
    for (int i = 0; i < m; i++) z += e[i];
    int hits[64] = {0};
    dsr1_sampler *s;
    assert_int_equal(dsr1_sampler_create(n, &s), DSR1_OK);
    for (uint64_t step = 0; step < STEPS; step++) {
        dsr1_sample_result r;
        assert_int_equal(dsr1_sample(s, p, x, NULL, step, &r), DSR1_OK);
        hits[r.token]++;
    }
    dsr1_sampler_destroy(s);
    double chi2 = 0;
    int kept_hits = 0;
    for (int i = 0; i < m; i++) {
        double want = STEPS * e[i] / z;
        int got = hits[order[i].id];
        kept_hits += got;
        if (want > 0) chi2 += (got - want) * (got - want) / want;
    }
    assert_int_equal(kept_hits, STEPS);
    /* df = m - 1 <= 15: P(chi2 > 45) < 1e-4 */
    assert_true(chi2 < 45);
}

static void test_frequencies(void **state)
{
    (void)state;
    float x[16];
    for (int i = 0; i < 16; i++) x[i] = (float)(2 * unif() - 1) * 2;
    dsr1_sampling p = dsr1_sampling_defaults();
    p.seed = 1234;
    check_frequencies(&p, x, 16); /* plain softmax */
    p.temperature = 0.7f;
    check_frequencies(&p, x, 16);
    p.temperature = 3;
    check_frequencies(&p, x, 16);
    p.temperature = 1.3f;
    p.top_k = 5;
    check_frequencies(&p, x, 16);
    p.top_k = 0;
    p.top_p = 0.6f;
    check_frequencies(&p, x, 16);
    p.top_p = 1;
    p.min_p = 0.3f;
    check_frequencies(&p, x, 16);
    p.top_k = 10;
    p.top_p = 0.8f;
    p.min_p = 0.1f;
    check_frequencies(&p, x, 16);
}

static void test_greedy(void **state)
{
    (void)state;
    enum { N = 3000 };
    float x[N];
    dsr1_sampler *s;
    assert_int_equal(dsr1_sampler_create(N, &s), DSR1_OK);
    dsr1_sampling p = dsr1_sampling_defaults();
    p.temperature = 0;
    for (int trial = 0; trial < 50; trial++) {
        random_row(x, N, 10, trial & 1);
        int32_t best = 0;
        for (int i = 1; i < N; i++)
            if (x[i] > x[best]) best = i;
        dsr1_sample_result r;
        assert_int_equal(dsr1_sample(s, &p, x, NULL, (uint64_t)trial, &r), DSR1_OK);
        assert_int_equal(r.token, best);
    }
    x[100] = x[2000] = 1000; /* ties: the lower id */
    dsr1_sample_result r;
    assert_int_equal(dsr1_sample(s, &p, x, NULL, 0, &r), DSR1_OK);
    assert_int_equal(r.token, 100);
    dsr1_sampler_destroy(s);
}

static void test_determinism(void **state)
{
    (void)state;
    enum { N = 500, STEPS = 200 };
    float x[N];
    random_row(x, N, 1, false); /* flat: many ids are likely */
    dsr1_sampling p = dsr1_sampling_defaults();
    p.seed = 42;
    dsr1_sampler *a, *b;
    assert_int_equal(dsr1_sampler_create(N, &a), DSR1_OK);
    assert_int_equal(dsr1_sampler_create(N, &b), DSR1_OK);
    int32_t first[STEPS];
    for (int i = 0; i < STEPS; i++) {
        dsr1_sample_result r;
        assert_int_equal(dsr1_sample(a, &p, x, NULL, (uint64_t)i, &r), DSR1_OK);
        first[i] = r.token;
    }
    /* the same steps in another order, on another sampler, interleaved with other work */
    int distinct_seed = 0, distinct_steps = 0;
    for (int i = STEPS - 1; i >= 0; i--) {
        dsr1_sampling q = p;
        q.seed = 43;
        dsr1_sample_result r, other;
        assert_int_equal(dsr1_sample(b, &q, x, NULL, (uint64_t)i, &other), DSR1_OK);
        assert_int_equal(dsr1_sample(b, &p, x, NULL, (uint64_t)i, &r), DSR1_OK);
        assert_int_equal(r.token, first[i]);
        distinct_seed += other.token != first[i];
        distinct_steps += i > 0 && first[i] != first[i - 1];
    }
    assert_true(distinct_seed > STEPS / 2);
    assert_true(distinct_steps > STEPS / 2);
    assert_true(dsr1_sample_uniform(7, 3) == dsr1_sample_uniform(7, 3));
    assert_true(dsr1_sample_uniform(7, 3) != dsr1_sample_uniform(7, 4));
    assert_true(dsr1_sample_uniform(7, 3) != dsr1_sample_uniform(8, 3));
    dsr1_sampler_destroy(a);
    dsr1_sampler_destroy(b);
}

/* Draws many steps and returns the set of ids seen as a bit mask. */
static unsigned seen_ids(const dsr1_sampling *p, const float *x, int n)
{
    dsr1_sampler *s;
    assert_int_equal(dsr1_sampler_create(n, &s), DSR1_OK);
    unsigned mask = 0;
    for (uint64_t step = 0; step < 3000; step++) {
        dsr1_sample_result r;
        assert_int_equal(dsr1_sample(s, p, x, NULL, step, &r), DSR1_OK);
        mask |= 1u << r.token;
    }
    dsr1_sampler_destroy(s);
    return mask;
}

static void test_top_p_prefix(void **state)
{
    (void)state;
    /* probabilities 0.5, 0.3, 0.15, 0.05 at ids 2, 0, 3, 1 */
    const float x[4] = {logf(0.3f), logf(0.05f), logf(0.5f), logf(0.15f)};
    dsr1_sampling p = dsr1_sampling_defaults();
    p.top_p = 0.45f;
    assert_int_equal(seen_ids(&p, x, 4), 1u << 2);
    p.top_p = 0.79f; /* 0.5 + 0.3 reaches it */
    assert_int_equal(seen_ids(&p, x, 4), 1u << 2 | 1u << 0);
    p.top_p = 0.81f;
    assert_int_equal(seen_ids(&p, x, 4), 1u << 2 | 1u << 0 | 1u << 3);
    p.top_p = 1;
    assert_int_equal(seen_ids(&p, x, 4), 15u);
    p.min_p = 0.5f; /* 0.3 / 0.5 >= 0.5, 0.15 / 0.5 < 0.5 */
    assert_int_equal(seen_ids(&p, x, 4), 1u << 2 | 1u << 0);
    p.min_p = 0;
    p.top_k = 3;
    assert_int_equal(seen_ids(&p, x, 4), 1u << 2 | 1u << 0 | 1u << 3);
}

static void test_penalties(void **state)
{
    (void)state;
    const float x[6] = {2.0f, 1.9f, -1.0f, -1.05f, 0.5f, 0.4f};
    dsr1_sampler *s;
    assert_int_equal(dsr1_sampler_create(6, &s), DSR1_OK);
    dsr1_sampling p = dsr1_sampling_defaults();
    p.temperature = 0;
    dsr1_sample_result r;
    /* repetition divides a positive logit: 2 / 1.1 < 1.9 */
    const int32_t prompt[] = {0, 0, 2};
    dsr1_token_history h = {prompt, 3, NULL, 0};
    p.repetition_penalty = 1.1f;
    assert_int_equal(dsr1_sample(s, &p, x, &h, 0, &r), DSR1_OK);
    assert_int_equal(r.token, 1);
    assert_int_equal(dsr1_sample(s, &p, x, NULL, 0, &r), DSR1_OK); /* no history: no change */
    assert_int_equal(r.token, 0);
    /* presence and frequency count generated tokens only, not the prompt */
    p.repetition_penalty = 1;
    p.presence_penalty = 0.05f;
    p.frequency_penalty = 0.03f;
    assert_int_equal(dsr1_sample(s, &p, x, &h, 0, &r), DSR1_OK);
    assert_int_equal(r.token, 0);
    const int32_t out[] = {0, 0, 4, 0};
    h = (dsr1_token_history){prompt, 3, out, 4};
    assert_int_equal(dsr1_sample(s, &p, x, &h, 0, &r), DSR1_OK); /* 2 - 0.05 - 0.09 < 1.9 */
    assert_int_equal(r.token, 1);
    /* repetition multiplies a negative logit: only ids 2..3 left, -1 * 1.1 < -1.05 */
    p.presence_penalty = p.frequency_penalty = 0;
    p.repetition_penalty = 1.1f;
    const int32_t bias_ids[] = {0, 1, 4, 5};
    const float bias_values[] = {-100, -100, -100, -100};
    p.n_bias = 4;
    p.bias_ids = bias_ids;
    p.bias_values = bias_values;
    assert_int_equal(dsr1_sample(s, &p, x, &h, 0, &r), DSR1_OK);
    assert_int_equal(r.token, 3);
    /* the raw logprob ignores all of it */
    check_logprob(r.logprob, ref_logprob(x, 6, 3));
    /* a negative presence penalty boosts */
    p.n_bias = 0;
    p.repetition_penalty = 1;
    p.presence_penalty = -2;
    assert_int_equal(dsr1_sample(s, &p, x, &h, 0, &r), DSR1_OK);
    assert_int_equal(r.token, 0);
    const int32_t out4[] = {4};
    h.output = out4;
    h.n_output = 1;
    assert_int_equal(dsr1_sample(s, &p, x, &h, 0, &r), DSR1_OK); /* 0.5 + 2 > 2 */
    assert_int_equal(r.token, 4);
    /* a bad history id is an error, and leaves no count behind: with frequency -1, one 4
     * gives 0.5 + 1 < 2, a stale second one would give 0.5 + 2 > 2 */
    const int32_t bad[] = {4, 6};
    h = (dsr1_token_history){NULL, 0, bad, 2};
    p.presence_penalty = 0;
    p.frequency_penalty = -1;
    assert_int_equal(dsr1_sample(s, &p, x, &h, 0, &r), DSR1_ERR_RANGE);
    h.n_output = 1;
    assert_int_equal(dsr1_sample(s, &p, x, &h, 0, &r), DSR1_OK);
    assert_int_equal(r.token, 0);
    dsr1_sampler_destroy(s);
}

static void test_logit_bias(void **state)
{
    (void)state;
    enum { N = 1000 };
    float x[N];
    random_row(x, N, 5, false);
    dsr1_sampler *s;
    assert_int_equal(dsr1_sampler_create(N, &s), DSR1_OK);
    dsr1_sampling p = dsr1_sampling_defaults();
    const int32_t ids[] = {17, 17, 900};
    const float values[] = {60, 50, 100};
    p.n_bias = 1;
    p.bias_ids = ids;
    p.bias_values = values;
    p.top_k = 1;
    dsr1_sample_result r;
    assert_int_equal(dsr1_sample(s, &p, x, NULL, 9, &r), DSR1_OK);
    assert_int_equal(r.token, 17);
    p.n_bias = 3; /* 17 gets 60 + 50, more than 900's 100 */
    assert_int_equal(dsr1_sample(s, &p, x, NULL, 9, &r), DSR1_OK);
    assert_int_equal(r.token, x[17] + 110 > x[900] + 100 ? 17 : 900);
    dsr1_sampler_destroy(s);
}

static void test_logprobs(void **state)
{
    (void)state;
    enum { N = 129280 }; /* R1's vocabulary */
    float *x = malloc(N * sizeof(float));
    random_row(x, N, 30, true);
    x[5] = x[77] = x[70000] = 50; /* a three-way tie at the top (the rest is below 45) */
    dsr1_sampler *s;
    assert_int_equal(dsr1_sampler_create(N, &s), DSR1_OK);
    dsr1_sample_result r;
    for (int32_t id = 0; id < N; id += 9973) {
        assert_int_equal(dsr1_logprobs(s, x, id, DSR1_MAX_TOP_LOGPROBS, &r), DSR1_OK);
        assert_int_equal(r.token, id);
        check_logprob(r.logprob, ref_logprob(x, N, id));
        assert_int_equal(r.n_top, DSR1_MAX_TOP_LOGPROBS);
        check_top(&r, x, N);
    }
    assert_int_equal(r.top[0].token_id, 5);
    assert_int_equal(r.top[1].token_id, 77);
    assert_int_equal(r.top[2].token_id, 70000);
    assert_int_equal(dsr1_logprobs(s, x, 3, 0, &r), DSR1_OK);
    assert_int_equal(r.n_top, 0);
    /* sampling at R1's settings on R1's vocabulary agrees with the reference */
    dsr1_sampling p = dsr1_sampling_defaults();
    p.temperature = 0.6f;
    p.top_p = 0.95f;
    p.top_logprobs = 5;
    ref_entry *order = malloc(N * sizeof(ref_entry));
    double *e = malloc(N * sizeof(double));
    random_row(x, N, 12, false);
    for (uint64_t step = 0; step < 20; step++) {
        assert_int_equal(dsr1_sample(s, &p, x, NULL, step, &r), DSR1_OK);
        int32_t want;
        bool amb;
        ref_sample(&p, x, N, NULL, dsr1_sample_uniform(p.seed, step), order, e, &want, &amb);
        assert_true(r.token == want || amb);
        check_top(&r, x, N);
    }
    /* bad rows */
    int32_t tok;
    x[10] = NAN;
    assert_int_equal(dsr1_logprobs(s, x, 3, 2, &r), DSR1_ERR_RANGE);
    assert_int_equal(dsr1_sample(s, &p, x, NULL, 0, &r), DSR1_ERR_RANGE);
    assert_int_equal(dsr1_sample_token(s, &p, x, NULL, 0, &tok), DSR1_ERR_RANGE);
    x[10] = INFINITY;
    assert_int_equal(dsr1_sample(s, &p, x, NULL, 0, &r), DSR1_ERR_RANGE);
    assert_int_equal(dsr1_sample_token(s, &p, x, NULL, 0, &tok), DSR1_ERR_RANGE);
    for (int i = 0; i < N; i++) x[i] = -INFINITY;
    assert_int_equal(dsr1_sample(s, &p, x, NULL, 0, &r), DSR1_ERR_RANGE);
    assert_int_equal(dsr1_sample_token(s, &p, x, NULL, 0, &tok), DSR1_ERR_RANGE);
    assert_int_equal(dsr1_logprobs(s, x, N, 2, &r), DSR1_ERR_RANGE);
    assert_int_equal(dsr1_logprobs(s, x, 0, 21, &r), DSR1_ERR_INVALID_ARG);
    dsr1_sampler_destroy(s);
    free(order);
    free(e);
    free(x);
}

/* An invalid field fails validation with a message naming it. */
static void expect_invalid(const dsr1_sampling *p, const char *field)
{
    assert_int_equal(dsr1_sampling_validate(p, 100), DSR1_ERR_INVALID_ARG);
    assert_non_null(strstr(dsr1_errmsg(), field));
}

/* A token mask: only allowed tokens are drawn, greedy or sampled, whatever the bias says;
 * logprobs stay those of the raw row; a mask leaving no finite logit, or of the wrong size,
 * is an error. */
static void test_mask(void **state)
{
    (void)state;
    enum { N = 1000 };
    float x[N];
    random_row(x, N, 8, false);
    dsr1_sampler *s;
    assert_int_equal(dsr1_sampler_create(N, &s), DSR1_OK);
    uint32_t mask[(N + 31) / 32] = {0};
    const int32_t ok[3] = {7, 500, 999};
    for (int i = 0; i < 3; i++) mask[ok[i] / 32] |= 1u << (ok[i] % 32);
    int32_t bias_id = 3;
    float bias_value = 100; /* a huge bias on a token the mask forbids changes nothing */
    dsr1_sampling p = dsr1_sampling_defaults();
    p.allowed = mask;
    p.mask_words = (N + 31) / 32;
    p.n_bias = 1;
    p.bias_ids = &bias_id;
    p.bias_values = &bias_value;
    int hits[3] = {0};
    for (int t = 0; t < 2; t++) {
        p.temperature = t ? 1.5f : 0;
        for (uint64_t step = 0; step < 300; step++) {
            dsr1_sample_result r;
            assert_int_equal(dsr1_sample(s, &p, x, NULL, step, &r), DSR1_OK);
            int k = r.token == ok[0] ? 0 : r.token == ok[1] ? 1 : r.token == ok[2] ? 2 : -1;
            assert_true(k >= 0);
            hits[k]++;
            check_logprob(r.logprob, ref_logprob(x, N, r.token));
        }
    }
    int greedy = ok[0]; /* the greedy pick is the largest allowed logit */
    for (int i = 1; i < 3; i++)
        if (x[ok[i]] > x[greedy]) greedy = ok[i];
    dsr1_sample_result r;
    p.temperature = 0;
    assert_int_equal(dsr1_sample(s, &p, x, NULL, 0, &r), DSR1_OK);
    assert_int_equal(r.token, greedy);
    /* every allowed token gets drawn at temperature 1.5 over 300 steps unless far below */
    for (int i = 0; i < 3; i++)
        if (x[greedy] - x[ok[i]] < 2) assert_true(hits[i] > 0);
    /* the only allowed token at -inf: nothing to draw */
    float y[N];
    memcpy(y, x, sizeof(y));
    uint32_t one[(N + 31) / 32] = {0};
    one[0] = 1u << 5;
    y[5] = -INFINITY;
    p.allowed = one;
    assert_int_equal(dsr1_sample(s, &p, y, NULL, 0, &r), DSR1_ERR_RANGE);
    assert_non_null(strstr(dsr1_errmsg(), "mask allows no token"));
    p.mask_words = 3;
    assert_int_equal(dsr1_sample(s, &p, x, NULL, 0, &r), DSR1_ERR_INVALID_ARG);
    assert_non_null(strstr(dsr1_errmsg(), "token mask has 3 words"));
    dsr1_sampler_destroy(s);
}

static void test_validate(void **state)
{
    (void)state;
    dsr1_sampling d = dsr1_sampling_defaults();
    assert_int_equal(dsr1_sampling_validate(&d, 100), DSR1_OK);
    assert_true(d.temperature == 1 && d.top_p == 1 && d.repetition_penalty == 1);
    assert_true(d.top_k == 0 && d.min_p == 0 && d.n_bias == 0 && d.top_logprobs == 0);
    /* each float field just outside its range (and NaN), then the int fields */
    static const struct {
        size_t offset;
        const char *field;
        float bad[2];
    } floats[] = {
        {offsetof(dsr1_sampling, temperature), "temperature", {-0.01f, 100.5f}},
        {offsetof(dsr1_sampling, top_p), "top_p", {0, 1.01f}},
        {offsetof(dsr1_sampling, min_p), "min_p", {-0.1f, 1.01f}},
        {offsetof(dsr1_sampling, presence_penalty), "presence_penalty", {-2.01f, 2.5f}},
        {offsetof(dsr1_sampling, frequency_penalty), "frequency_penalty", {-2.5f, 2.01f}},
        {offsetof(dsr1_sampling, repetition_penalty), "repetition_penalty", {0, 2.01f}},
    };
    dsr1_sampling p;
    for (size_t i = 0; i < sizeof(floats) / sizeof(floats[0]); i++)
        for (int k = 0; k < 3; k++) {
            p = d;
            float v = k < 2 ? floats[i].bad[k] : NAN;
            memcpy((char *)&p + floats[i].offset, &v, sizeof(v));
            expect_invalid(&p, floats[i].field);
        }
    p = d;
    p.top_k = -1;
    expect_invalid(&p, "top_k");
    p = d;
    p.top_logprobs = 21;
    expect_invalid(&p, "top_logprobs");
    p = d;
    p.n_bias = 1;
    expect_invalid(&p, "logit_bias");
    const int32_t ids[] = {100};
    const float values[] = {1};
    p.bias_ids = ids;
    p.bias_values = values;
    expect_invalid(&p, "logit_bias");
    const int32_t ok_ids[] = {99};
    const float big[] = {100.5f};
    p.bias_ids = ok_ids;
    p.bias_values = big;
    expect_invalid(&p, "logit_bias");
    p.bias_values = values;
    assert_int_equal(dsr1_sampling_validate(&p, 100), DSR1_OK);
    /* dsr1_sample validates too */
    dsr1_sampler *s;
    float x[100];
    random_row(x, 100, 3, false);
    assert_int_equal(dsr1_sampler_create(100, &s), DSR1_OK);
    dsr1_sample_result r;
    p.top_p = 2;
    assert_int_equal(dsr1_sample(s, &p, x, NULL, 0, &r), DSR1_ERR_INVALID_ARG);
    dsr1_sampler_destroy(s);
    assert_int_equal(dsr1_sampler_create(0, &s), DSR1_ERR_INVALID_ARG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_reference),
        cmocka_unit_test(test_frequencies),
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_top_p_prefix),
        cmocka_unit_test(test_penalties),
        cmocka_unit_test(test_logit_bias),
        cmocka_unit_test(test_logprobs),
        cmocka_unit_test(test_mask),
        cmocka_unit_test(test_validate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
