/* Token sampling (see sampler.h).
 *
 * Cost per call: O(vocab) passes plus sorting small groups, never the whole vocabulary.
 * The raw row is scanned once for its maximum and top-n alternatives and once for its
 * log-sum-exp. Penalties copy the row and touch only the ids of the history (counted in
 * per-id arrays that are reset through the list of ids touched, so O(history)).
 *
 * Sampling buckets every id by its gap below the largest penalised logit (GAP_STEPS
 * buckets per unit, one last bucket for gaps of GAP_MAX or more) and sums each bucket's
 * count and weight exp(-gap / temperature) in one pass. Bucket order is the sorted order
 * (logit descending, lower id first on ties) up to the order inside a bucket, so every
 * filter keeps a prefix of that order: the buckets before some bucket b whole, and the
 * first c members of b. Each filter finds its b from the bucket sums and then sorts the
 * members of that one bucket only; the draw does the same to find where u * total weight
 * falls. That is the inverse CDF over the kept ids in sorted order, exactly as a full sort
 * would give (up to the rounding of sums taken in another order). */
#include "sampler.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define GAP_STEPS 32 /* buckets per unit of logit below the maximum */
#define GAP_MAX   64 /* gaps from here on share the last bucket */
#define N_BUCKETS (GAP_STEPS * GAP_MAX + 1)
#define NO_BUCKET UINT16_MAX /* -inf logits: never drawn */

enum { SEEN_PROMPT = 1, SEEN_OUTPUT = 2 };

typedef struct {
    int32_t id;
    float w;  /* penalised logit */
    double e; /* weight exp(-gap / temperature) */
} member;

struct dsr1_sampler {
    int vocab;
    float *work;      /* the penalised row, when some penalty or bias applies */
    int32_t *count;   /* per id: occurrences among the generated tokens */
    uint8_t *seen;    /* per id: SEEN_* */
    int32_t *touched; /* ids with count or seen set, reset after each call */
    int n_touched;
    uint16_t *bucket; /* per id: its gap bucket */
    int32_t bcount[N_BUCKETS];
    double bmass[N_BUCKETS];
    double bmaxgap[N_BUCKETS]; /* the largest gap in the bucket: its least likely member */
    member *members;           /* the members of bucket `loaded`, sorted */
    int loaded;                /* -1: none */
};

/* The penalised row being sampled. */
typedef struct {
    const float *w;
    float wmax;
    double temp;
} dist;

/* The kept ids: buckets before b whole, and the first c members of bucket b, whose weight
 * is part. */
typedef struct {
    int b, c;
    double part;
} kept;

/* SplitMix64's output function (Steele, Lea, Flood 2014; Stafford's mix 13). */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double dsr1_sample_uniform(uint64_t seed, uint64_t step)
{
    uint64_t state = mix64(seed) + (step + 1) * 0x9e3779b97f4a7c15ull;
    return (double)(mix64(state) >> 11) * 0x1p-53;
}

dsr1_status dsr1_sampler_create(int vocab, dsr1_sampler **out)
{
    if (vocab < 1 || !out)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "sampler: vocabulary size %d", vocab);
    dsr1_sampler *s = calloc(1, sizeof(*s));
    size_t n = (size_t)vocab;
    if (s) {
        s->work = malloc(n * sizeof(*s->work));
        s->count = calloc(n, sizeof(*s->count));
        s->seen = calloc(n, sizeof(*s->seen));
        s->touched = malloc(n * sizeof(*s->touched));
        s->bucket = malloc(n * sizeof(*s->bucket));
        s->members = malloc(n * sizeof(*s->members));
    }
    if (!s || !s->work || !s->count || !s->seen || !s->touched || !s->bucket || !s->members) {
        dsr1_sampler_destroy(s);
        return dsr1_error(DSR1_ERR_NOMEM, "sampler: out of memory for %d ids", vocab);
    }
    s->vocab = vocab;
    *out = s;
    return DSR1_OK;
}

void dsr1_sampler_destroy(dsr1_sampler *s)
{
    if (!s) return;
    free(s->work);
    free(s->count);
    free(s->seen);
    free(s->touched);
    free(s->bucket);
    free(s->members);
    free(s);
}

/* ---- the raw row: checks, top alternatives, log-sum-exp ---- */

/* Inserts (id, logit) into top[0..*k) (at most n, logit descending); ids arrive in
 * ascending order, so an equal logit goes after the ones already there. */
static void top_insert(dsr1_logprob *top, int *k, int n, int32_t id, float v)
{
    int j = *k < n ? (*k)++ : n - 1;
    for (; j > 0 && top[j - 1].logprob < v; j--) top[j] = top[j - 1];
    top[j] = (dsr1_logprob){.token_id = id, .logprob = v};
}

/* Checks a raw row (no NaN or +inf, some finite logit), fills r->top with its n_top most
 * likely ids (fewer only when the vocabulary is smaller) as log-probabilities, and returns
 * its log-sum-exp in *lse. */
static dsr1_status raw_row(const dsr1_sampler *s, const float *x, int n_top, dsr1_sample_result *r,
                           double *lse)
{
    float max = -INFINITY;
    int k = 0;
    for (int i = 0; i < s->vocab; i++) {
        float v = x[i];
        if (!(v < INFINITY))
            return dsr1_error(DSR1_ERR_RANGE, "sampler: logit of token %d is %s", i,
                              isnan(v) ? "NaN" : "+inf");
        if (v > max) max = v;
        if (n_top && (k < n_top || v > r->top[n_top - 1].logprob))
            top_insert(r->top, &k, n_top, i, v);
    }
    if (max == -INFINITY) return dsr1_error(DSR1_ERR_RANGE, "sampler: no token has a finite logit");
    double sum = 0;
    for (int i = 0; i < s->vocab; i++) sum += exp((double)x[i] - max);
    *lse = max + log(sum);
    for (int j = 0; j < n_top; j++) r->top[j].logprob = (float)(r->top[j].logprob - *lse);
    r->n_top = k;
    return DSR1_OK;
}

/* ---- penalties ---- */

/* A penalised logit as a float: -inf stays -inf (masked), anything else stays finite. */
static int mask_words_of(int vocab)
{
    return (vocab + 31) / 32;
}

static float to_logit(double v)
{
    return v == -INFINITY ? -INFINITY : (float)fmax(-FLT_MAX, fmin(FLT_MAX, v));
}

static dsr1_status count_history(dsr1_sampler *s, const int32_t *ids, int n, uint8_t kind,
                                 const char *what)
{
    if (n < 0 || (n > 0 && !ids))
        return dsr1_error(DSR1_ERR_INVALID_ARG, "sampler: history %s: %d ids and no array", what,
                          n);
    for (int i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= s->vocab)
            return dsr1_error(DSR1_ERR_RANGE,
                              "sampler: history %s[%d] = %d is outside the vocabulary (%d ids)",
                              what, i, (int)id, s->vocab);
        if (!s->seen[id]) s->touched[s->n_touched++] = id;
        s->seen[id] |= kind;
        if (kind == SEEN_OUTPUT) s->count[id]++;
    }
    return DSR1_OK;
}

static void apply_penalties(dsr1_sampler *s, const dsr1_sampling *p)
{
    double rep = p->repetition_penalty;
    for (int i = 0; i < s->n_touched; i++) {
        int32_t id = s->touched[i];
        double v = s->work[id];
        if (rep != 1) v = v > 0 ? v / rep : v * rep;
        if (s->count[id]) v -= p->presence_penalty + (double)p->frequency_penalty * s->count[id];
        s->work[id] = to_logit(v);
    }
}

/* Sets the tokens the mask does not allow to -inf in s->work; at least one allowed token
 * must keep a finite logit. */
static dsr1_status no_allowed_token(void)
{
    return dsr1_error(DSR1_ERR_RANGE,
                      "sampler: the token mask allows no token with a finite logit");
}

/* Sets the tokens the mask does not allow to -inf in s->work, a word of the mask at a time
 * (a grammar's mask is mostly empty words); at least one allowed token must keep a finite
 * logit. */
static dsr1_status apply_mask(dsr1_sampler *s, const uint32_t *allowed)
{
    bool any = false;
    for (int wd = 0; wd < mask_words_of(s->vocab); wd++) {
        const uint32_t bits = allowed[wd];
        const int base = wd * 32, n = base + 32 < s->vocab ? 32 : s->vocab - base;
        float *w = s->work + base;
        if (bits == 0) {
            for (int i = 0; i < n; i++) w[i] = -INFINITY;
            continue;
        }
        for (int i = 0; i < n; i++)
            if (!(bits >> i & 1))
                w[i] = -INFINITY;
            else
                any |= w[i] > -INFINITY;
    }
    return any ? DSR1_OK : no_allowed_token();
}

/* Greedy under a mask alone (no bias, no penalty): the first largest allowed logit, read
 * in place, visiting only the mask's set bits. */
static dsr1_status masked_argmax(const dsr1_sampler *s, const uint32_t *allowed,
                                 const float *logits, int32_t *token)
{
    int32_t best = -1;
    for (int wd = 0; wd < mask_words_of(s->vocab); wd++)
        for (uint32_t bits = allowed[wd]; bits; bits &= bits - 1) {
            const int32_t id = wd * 32 + __builtin_ctz(bits);
            if (id >= s->vocab) break;
            if (logits[id] > -INFINITY && (best < 0 || logits[id] > logits[best])) best = id;
        }
    if (best < 0) return no_allowed_token();
    *token = best;
    return DSR1_OK;
}

/* Points *w at the row to sample: logits itself, or a copy with the token mask, logit_bias
 * and the penalties applied. */
static dsr1_status penalise(dsr1_sampler *s, const dsr1_sampling *p, const float *logits,
                            const dsr1_token_history *h, const float **w)
{
    const bool rep = p->repetition_penalty != 1;
    const bool history = h && dsr1_sampling_uses_history(p);
    *w = logits;
    if (!p->n_bias && !history && !p->allowed) return DSR1_OK;
    memcpy(s->work, logits, (size_t)s->vocab * sizeof(*logits));
    if (p->allowed) {
        dsr1_status st = apply_mask(s, p->allowed);
        if (st) return st;
    }
    for (int i = 0; i < p->n_bias; i++)
        s->work[p->bias_ids[i]] = to_logit((double)s->work[p->bias_ids[i]] + p->bias_values[i]);
    dsr1_status st = DSR1_OK;
    if (history) {
        if (rep) st = count_history(s, h->prompt, h->n_prompt, SEEN_PROMPT, "prompt");
        if (!st) st = count_history(s, h->output, h->n_output, SEEN_OUTPUT, "output");
        if (!st) apply_penalties(s, p);
        for (int i = 0; i < s->n_touched; i++) {
            s->seen[s->touched[i]] = 0;
            s->count[s->touched[i]] = 0;
        }
        s->n_touched = 0;
    }
    if (!st) *w = s->work;
    return st;
}

/* ---- the draw ---- */

/* The first id of the largest logit. */
static int32_t row_argmax(const float *w, int n)
{
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (w[i] > w[best]) best = i;
    return best;
}

static double gap_of(const dist *d, float w)
{
    return (double)d->wmax - (double)w;
}

static double weight_of_gap(const dist *d, double gap)
{
    return exp(-gap / d->temp);
}

/* Buckets every id of finite logit; per bucket: count, total weight, largest gap. */
static void bucket_row(dsr1_sampler *s, const dist *d)
{
    memset(s->bcount, 0, sizeof(s->bcount));
    memset(s->bmass, 0, sizeof(s->bmass));
    memset(s->bmaxgap, 0, sizeof(s->bmaxgap));
    s->loaded = -1;
    for (int i = 0; i < s->vocab; i++) {
        if (d->w[i] == -INFINITY) {
            s->bucket[i] = NO_BUCKET;
            continue;
        }
        double gap = gap_of(d, d->w[i]);
        int b = gap < GAP_MAX ? (int)(gap * GAP_STEPS) : N_BUCKETS - 1;
        s->bucket[i] = (uint16_t)b;
        s->bcount[b]++;
        s->bmass[b] += weight_of_gap(d, gap);
        if (gap > s->bmaxgap[b]) s->bmaxgap[b] = gap;
    }
}

static int by_logit(const void *a, const void *b)
{
    const member *x = a, *y = b;
    if (x->w != y->w) return x->w > y->w ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Gathers and sorts the members of bucket b into s->members. */
static void load_bucket(dsr1_sampler *s, const dist *d, int b)
{
    if (s->loaded == b) return;
    int n = 0;
    for (int i = 0; i < s->vocab; i++)
        if (s->bucket[i] == b) s->members[n++] = (member){.id = i, .w = d->w[i]};
    qsort(s->members, (size_t)n, sizeof(member), by_logit);
    for (int j = 0; j < n; j++) s->members[j].e = weight_of_gap(d, gap_of(d, s->members[j].w));
    s->loaded = b;
}

static int kept_limit(const dsr1_sampler *s, const kept *k, int b)
{
    return b < k->b ? s->bcount[b] : k->c;
}

static double kept_weight(const dsr1_sampler *s, const kept *k, int b)
{
    return b < k->b ? s->bmass[b] : k->part;
}

static double kept_total(const dsr1_sampler *s, const kept *k)
{
    double z = 0;
    for (int b = 0; b <= k->b; b++) z += kept_weight(s, k, b);
    return z;
}

/* Keeps the buckets before b and the first c members of b. */
static void cut(dsr1_sampler *s, const dist *d, kept *k, int b, int c)
{
    k->b = b;
    k->c = c;
    if (c == s->bcount[b]) {
        k->part = s->bmass[b];
        return;
    }
    load_bucket(s, d, b);
    k->part = 0;
    for (int j = 0; j < c; j++) k->part += s->members[j].e;
}

static kept keep_all(const dsr1_sampler *s)
{
    int b = N_BUCKETS - 1;
    while (b > 0 && !s->bcount[b]) b--;
    return (kept){.b = b, .c = s->bcount[b], .part = s->bmass[b]};
}

static void keep_top_k(dsr1_sampler *s, const dist *d, kept *k, int top_k)
{
    if (top_k <= 0) return;
    int64_t before = 0;
    for (int b = 0; b <= k->b; b++) {
        int n = kept_limit(s, k, b);
        if (before + n >= top_k) {
            cut(s, d, k, b, (int)(top_k - before));
            return;
        }
        before += n;
    }
}

/* The first kept position at which the running weight reaches t (passes it, when strict),
 * as (bucket, members up to it); bucket *b is left loaded. When rounding leaves t beyond
 * the running total, the last member of positive weight. */
static void locate(dsr1_sampler *s, const dist *d, const kept *k, double t, bool strict, int *b,
                   int *c)
{
    double before = 0;
    int last = 0;
    for (int i = 0; i <= k->b; i++) {
        double m = kept_weight(s, k, i);
        if (m > 0) last = i;
        if (strict ? before + m <= t : before + m < t) {
            before += m;
            continue;
        }
        load_bucket(s, d, i);
        int lim = kept_limit(s, k, i);
        for (int j = 0; j < lim; j++) {
            before += s->members[j].e;
            if (strict ? before > t : before >= t) {
                *b = i;
                *c = j + 1;
                return;
            }
        }
        last = i;
        break;
    }
    load_bucket(s, d, last);
    int j = kept_limit(s, k, last);
    while (j > 1 && s->members[j - 1].e == 0) j--;
    *b = last;
    *c = j;
}

static void keep_top_p(dsr1_sampler *s, const dist *d, kept *k, float top_p)
{
    if (top_p >= 1) return;
    int b, c;
    locate(s, d, k, top_p * kept_total(s, k), false, &b, &c);
    cut(s, d, k, b, c);
}

/* Keeps the ids whose probability is at least min_p times the largest (weight 1). */
static void keep_min_p(dsr1_sampler *s, const dist *d, kept *k, float min_p)
{
    if (min_p <= 0) return;
    for (int b = 0; b <= k->b; b++) {
        if (weight_of_gap(d, s->bmaxgap[b]) >= min_p) continue;
        load_bucket(s, d, b);
        int lim = kept_limit(s, k, b), c = 0;
        while (c < lim && s->members[c].e >= min_p) c++;
        cut(s, d, k, b, c);
        return;
    }
}

static int32_t draw(dsr1_sampler *s, const dsr1_sampling *p, const float *w, double u)
{
    dist d = {.w = w, .wmax = w[row_argmax(w, s->vocab)], .temp = p->temperature};
    bucket_row(s, &d);
    kept k = keep_all(s);
    keep_top_k(s, &d, &k, p->top_k);
    keep_top_p(s, &d, &k, p->top_p);
    keep_min_p(s, &d, &k, p->min_p);
    int b, c;
    locate(s, &d, &k, u * kept_total(s, &k), true, &b, &c);
    return s->members[c - 1].id;
}

/* The arguments of a sampling call: present, and parameters in range. */
static dsr1_status check_call(const dsr1_sampler *s, const dsr1_sampling *p, const float *logits,
                              const void *out)
{
    if (!s || !p || !logits || !out)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "sampler: NULL argument");
    return dsr1_sampling_validate(p, s->vocab);
}

/* Draws the token of step `step` (after the penalties; greedy at temperature 0). */
static dsr1_status pick(dsr1_sampler *s, const dsr1_sampling *p, const float *logits,
                        const dsr1_token_history *h, uint64_t step, int32_t *token)
{
    if (p->allowed && p->temperature == 0 && !p->n_bias && !(h && dsr1_sampling_uses_history(p)))
        return masked_argmax(s, p->allowed, logits, token);
    const float *w;
    dsr1_status st = penalise(s, p, logits, h, &w);
    if (st) return st;
    *token = p->temperature == 0 ? row_argmax(w, s->vocab)
                                 : draw(s, p, w, dsr1_sample_uniform(p->seed, step));
    return DSR1_OK;
}

dsr1_status dsr1_sample(dsr1_sampler *s, const dsr1_sampling *p, const float *logits,
                        const dsr1_token_history *h, uint64_t step, dsr1_sample_result *out)
{
    dsr1_status st = check_call(s, p, logits, out);
    if (st) return st;
    dsr1_sample_result r = {0};
    double lse;
    if ((st = raw_row(s, logits, p->top_logprobs, &r, &lse))) return st;
    if ((st = pick(s, p, logits, h, step, &r.token))) return st;
    r.logprob = (float)(logits[r.token] - lse);
    *out = r;
    return DSR1_OK;
}

dsr1_status dsr1_sample_token(dsr1_sampler *s, const dsr1_sampling *p, const float *logits,
                              const dsr1_token_history *h, uint64_t step, int32_t *token)
{
    dsr1_status st = check_call(s, p, logits, token);
    if (st) return st;
    float max = -INFINITY;
    for (int i = 0; i < s->vocab; i++) { /* the checks of raw_row, without its exp pass */
        if (!(logits[i] < INFINITY))
            return dsr1_error(DSR1_ERR_RANGE, "sampler: logit of token %d is %s", i,
                              isnan(logits[i]) ? "NaN" : "+inf");
        max = logits[i] > max ? logits[i] : max;
    }
    if (max == -INFINITY) return dsr1_error(DSR1_ERR_RANGE, "sampler: no token has a finite logit");
    return pick(s, p, logits, h, step, token);
}

dsr1_status dsr1_logprobs(dsr1_sampler *s, const float *logits, int32_t token, int n_top,
                          dsr1_sample_result *out)
{
    if (!s || !logits || !out) return dsr1_error(DSR1_ERR_INVALID_ARG, "logprobs: NULL argument");
    if (token < 0 || token >= s->vocab)
        return dsr1_error(DSR1_ERR_RANGE, "logprobs: token %d is outside the vocabulary (%d ids)",
                          (int)token, s->vocab);
    if (n_top < 0 || n_top > DSR1_MAX_TOP_LOGPROBS)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "sampling: top_logprobs = %d is outside [0, 20]",
                          n_top);
    dsr1_sample_result r = {0};
    double lse;
    dsr1_status st = raw_row(s, logits, n_top, &r, &lse);
    if (st) return st;
    r.token = token;
    r.logprob = (float)(logits[token] - lse);
    *out = r;
    return DSR1_OK;
}
