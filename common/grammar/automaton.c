/* From the AST to the automata the parser runs: one DFA over bytes per called rule.
 *
 * Rules that are not recursive (and not too large) are inlined into their callers, so a
 * JSON string or number is a plain DFA inside the rule that uses it. The others become
 * "call" edges. Each rule is built as a Thompson NFA (code point classes expanded to UTF-8
 * byte sequences, bounded repetition copied out), then determinized by subset construction
 * over byte classes and call symbols. Rules that cannot finish are removed (with the
 * calls to them) and states that cannot reach an end are trimmed, so every prefix the
 * parser accepts can be completed. Every step counts states against opts.max_states. */
#include <stdlib.h>
#include <string.h>

#include "grammar_internal.h"

#define INLINE_MAX_STATES 4096 /* largest rule (estimated NFA states) inlined */
#define INLINE_MAX_DEPTH  64

typedef struct {
    uint32_t from, to;
    int32_t rule;    /* >= 0: a call edge */
    uint16_t lo, hi; /* byte edge when lo <= hi; epsilon when lo > hi and rule < 0 */
} nedge;

typedef struct {
    nedge *e;
    size_t ne;
    uint32_t ns, accept, start;
} nfa;

typedef struct {
    const struct dsr1__ast *x;
    uint64_t h;
    uint32_t next, start;
} memo_ent;

typedef struct {
    const dsr1__rules *rs;
    const dsr1_grammar_opts *o;
    uint8_t *rec, *inl, *queued;
    uint8_t *bigcls, *bigrep; /* per rule: has a large class / a long repetition of one */
    uint64_t *est;
    int32_t *queue;
    int nqueue;
    nfa cur;
    size_t ecap;
    size_t total_nfa, nfa_limit;
    int depth;
    memo_ent *memo;
    size_t nmemo, memocap;
    dsr1_status err;
} ab;

/* ---- recursion and inlining ---- */

static void refs_of(const dsr1__ast *x, int32_t **out, size_t *n, size_t *cap, bool *oom)
{
    if (*oom) return;
    if (x->kind == DSR1__A_REF) {
        if (!DSR1_GROW(*out, *cap, *n + 1)) {
            *oom = true;
            return;
        }
        (*out)[(*n)++] = x->rule;
    } else if (x->kind == DSR1__A_SEQ || x->kind == DSR1__A_ALT || x->kind == DSR1__A_REPEAT) {
        for (int i = 0; i < x->n; i++) refs_of(x->kids[i], out, n, cap, oom);
    }
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    uint64_t s = a + b;
    return s > (1ull << 40) ? (1ull << 40) : s;
}
static uint64_t sat_mul(uint64_t a, uint64_t b)
{
    if (a && b > (1ull << 40) / a) return 1ull << 40;
    return a * b;
}

/* Free text: a long or unbounded repetition of something with a large class (a JSON
 * string, `.*`). Such rules stay rules of their own even when they could be inlined: the
 * mask cache of their states is then shared by every use (and by every grammar with the
 * same rule, through the vocabulary), and a token running past their end is checked
 * against the caller only for its few bytes after the end. */
#define BIG_CLASS   64 /* code points */
#define LONG_REPEAT 8

static void textlike(const ab *b, const dsr1__ast *x, bool *cls, bool *rep)
{
    switch (x->kind) {
    case DSR1__A_CLASS: {
        uint64_t n = 0;
        for (int i = 0; i < x->n; i++) n += (uint64_t)x->ranges[2 * i + 1] - x->ranges[2 * i] + 1;
        if (n >= BIG_CLASS) *cls = true;
        return;
    }
    case DSR1__A_REF:
        if (b->inl[x->rule]) {
            *cls |= b->bigcls[x->rule];
            *rep |= b->bigrep[x->rule];
        }
        return;
    case DSR1__A_REPEAT: {
        bool c = false, r = false;
        textlike(b, x->kids[0], &c, &r);
        *cls |= c;
        *rep |= r || (c && (x->max < 0 || x->max >= LONG_REPEAT));
        return;
    }
    case DSR1__A_SEQ:
    case DSR1__A_ALT:
        for (int i = 0; i < x->n; i++) textlike(b, x->kids[i], cls, rep);
        return;
    default:
        return;
    }
}

static uint64_t estimate(const ab *b, const dsr1__ast *x)
{
    switch (x->kind) {
    case DSR1__A_EMPTY:
        return 1;
    case DSR1__A_BYTES:
        return (uint64_t)x->n + 1;
    case DSR1__A_CLASS:
        return (uint64_t)x->n * 8 + 2;
    case DSR1__A_REF:
        return b->inl[x->rule] ? b->est[x->rule] : 2;
    case DSR1__A_REPEAT: {
        uint64_t k = estimate(b, x->kids[0]);
        uint64_t times = x->max < 0 ? (uint64_t)x->min + 1 : (uint64_t)x->max;
        return sat_add(sat_mul(k, times ? times : 1), 2);
    }
    default: {
        uint64_t s = 2;
        for (int i = 0; i < x->n; i++) s = sat_add(s, estimate(b, x->kids[i]));
        return s;
    }
    }
}

/* Tarjan's SCCs (iterative); rules are visited callees first, which is the order the
 * size estimates need. Marks rec[] and fills est[] / inl[]. */
static dsr1_status analyse(ab *b)
{
    int n = b->rs->nrules;
    dsr1_status st = DSR1_OK;
    int32_t **adj = calloc((size_t)n, sizeof(*adj));
    size_t *deg = calloc((size_t)n, sizeof(*deg));
    int32_t *idx = malloc((size_t)n * sizeof(int32_t)), *low = malloc((size_t)n * sizeof(int32_t));
    int32_t *stk = malloc((size_t)n * sizeof(int32_t)), *cs = malloc((size_t)n * sizeof(int32_t));
    size_t *ci = malloc((size_t)n * sizeof(size_t));
    uint8_t *on = calloc((size_t)n, 1);
    if (!adj || !deg || !idx || !low || !stk || !cs || !ci || !on) goto oom;
    for (int r = 0; r < n; r++) {
        size_t cap = 0;
        bool oom = false;
        refs_of(b->rs->rules[r].body, &adj[r], &deg[r], &cap, &oom);
        if (oom) goto oom;
        for (size_t k = 0; k < deg[r]; k++)
            if (adj[r][k] == r) b->rec[r] = 1;
    }
    for (int r = 0; r < n; r++) idx[r] = -1;
    int counter = 0, sp = 0;
    for (int r0 = 0; r0 < n; r0++) {
        if (idx[r0] >= 0) continue;
        int csp = 0;
        cs[csp] = r0;
        ci[csp++] = 0;
        idx[r0] = low[r0] = counter++;
        stk[sp++] = r0;
        on[r0] = 1;
        while (csp) {
            int v = cs[csp - 1];
            if (ci[csp - 1] < deg[v]) {
                int w = adj[v][ci[csp - 1]++];
                if (idx[w] < 0) {
                    idx[w] = low[w] = counter++;
                    stk[sp++] = w;
                    on[w] = 1;
                    cs[csp] = w;
                    ci[csp++] = 0;
                } else if (on[w] && idx[w] < low[v]) {
                    low[v] = idx[w];
                }
                continue;
            }
            csp--;
            if (csp && low[v] < low[cs[csp - 1]]) low[cs[csp - 1]] = low[v];
            if (low[v] != idx[v]) continue;
            int first = sp;
            do first--;
            while (stk[first] != v);
            bool multi = sp - first > 1;
            for (int k = first; k < sp; k++) {
                int w = stk[k];
                on[w] = 0;
                if (multi) b->rec[w] = 1;
            }
            /* callees are done: estimate this component's rules */
            for (int k = first; k < sp; k++) {
                int w = stk[k];
                b->est[w] = estimate(b, b->rs->rules[w].body);
                bool cls = false, rep = false;
                textlike(b, b->rs->rules[w].body, &cls, &rep);
                b->bigcls[w] = cls;
                b->bigrep[w] = rep;
                b->inl[w] =
                    !b->rec[w] && w != b->rs->root && !rep && b->est[w] <= INLINE_MAX_STATES;
            }
            sp = first;
        }
    }
    goto out;
oom:
    st = dsr1_error(DSR1_ERR_NOMEM, "grammar: out of memory");
out:
    if (adj)
        for (int r = 0; r < n; r++) free(adj[r]);
    free(adj);
    free(deg);
    free(idx);
    free(low);
    free(stk);
    free(cs);
    free(ci);
    free(on);
    return st;
}

/* ---- NFA construction ---- */

static uint32_t new_state(ab *b)
{
    if (b->err) return UINT32_MAX;
    if (++b->total_nfa > b->nfa_limit) {
        b->err = dsr1_error(DSR1_ERR_RANGE,
                            "grammar: automaton exceeds max_states (%d states); simplify the "
                            "grammar or raise the limit",
                            b->o->max_states);
        return UINT32_MAX;
    }
    return b->cur.ns++;
}

static void edge(ab *b, uint32_t from, uint32_t to, int32_t rule, int lo, int hi)
{
    if (b->err) return;
    if (!DSR1_GROW(b->cur.e, b->ecap, b->cur.ne + 1)) {
        b->err = dsr1_error(DSR1_ERR_NOMEM, "grammar: out of memory");
        return;
    }
    b->cur.e[b->cur.ne++] = (nedge){from, to, rule, (uint16_t)lo, (uint16_t)hi};
}
#define EPS(b, f, t) edge(b, f, t, -1, 1, 0)

static void byte_seq(ab *b, uint32_t from, uint32_t to, const uint8_t *lo, const uint8_t *hi, int n)
{
    uint32_t s = from;
    for (int i = 0; i < n; i++) {
        uint32_t t = i == n - 1 ? to : new_state(b);
        if (b->err) return;
        edge(b, s, t, -1, lo[i], hi[i]);
        s = t;
    }
}

/* Code points [lo, hi] (one UTF-8 length, no surrogates) as byte-range sequences. */
static void utf8_range(ab *b, uint32_t from, uint32_t to, uint32_t lo, uint32_t hi)
{
    static const uint32_t lens[] = {0x7f, 0x7ff, 0xffff, 0x10ffff};
    for (int k = 0; k < 3; k++) {
        if (lo <= lens[k] && hi > lens[k]) {
            utf8_range(b, from, to, lo, lens[k]);
            utf8_range(b, from, to, lens[k] + 1, hi);
            return;
        }
    }
    if (lo < 0xd800 && hi > 0xdfff) {
        utf8_range(b, from, to, lo, 0xd7ff);
        utf8_range(b, from, to, 0xe000, hi);
        return;
    }
    if (lo >= 0xd800 && hi <= 0xdfff) return;
    if (lo >= 0xd800 && lo <= 0xdfff) lo = 0xe000;
    if (hi >= 0xd800 && hi <= 0xdfff) hi = 0xd7ff;
    if (lo > hi) return;
    uint8_t a[4], z[4];
    int n = dsr1__utf8_encode(lo, a);
    for (int i = 1; i < n; i++) {
        uint32_t m = (1u << (6 * i)) - 1;
        if ((lo & ~m) != (hi & ~m)) {
            if ((lo & m) != 0) {
                utf8_range(b, from, to, lo, lo | m);
                utf8_range(b, from, to, (lo | m) + 1, hi);
                return;
            }
            if ((hi & m) != m) {
                utf8_range(b, from, to, lo, (hi & ~m) - 1);
                utf8_range(b, from, to, hi & ~m, hi);
                return;
            }
        }
    }
    dsr1__utf8_encode(hi, z);
    byte_seq(b, from, to, a, z, n);
}

/* Structural hash and equality of AST nodes (rule references by index), so that equal
 * subtrees followed by the same state are built once (see build). */
static uint64_t ast_hash(const dsr1__ast *x)
{
    uint64_t h = 0x9e3779b97f4a7c15ull * ((uint64_t)x->kind + 1);
    h ^= (uint64_t)(uint32_t)x->n * 0xff51afd7ed558ccdull;
    switch (x->kind) {
    case DSR1__A_BYTES:
        for (int i = 0; i < x->n; i++) h = (h ^ x->bytes[i]) * 1099511628211ull;
        break;
    case DSR1__A_CLASS:
        for (int i = 0; i < 2 * x->n; i++) h = (h ^ x->ranges[i]) * 1099511628211ull;
        break;
    case DSR1__A_REF:
        h = (h ^ (uint64_t)(uint32_t)x->rule) * 1099511628211ull;
        break;
    case DSR1__A_REPEAT:
        h = (h ^ (uint64_t)(uint32_t)x->min << 32 ^ (uint64_t)(uint32_t)x->max) * 1099511628211ull;
        /* fall through */
    default:
        for (int i = 0; i < (x->kind == DSR1__A_REPEAT ? 1 : x->n); i++)
            h = (h ^ ast_hash(x->kids[i])) * 0xc4ceb9fe1a85ec53ull;
    }
    return h ^ (h >> 31);
}

static bool ast_equal(const dsr1__ast *x, const dsr1__ast *y)
{
    if (x == y) return true;
    if (x->kind != y->kind || x->n != y->n) return false;
    switch (x->kind) {
    case DSR1__A_EMPTY:
        return true;
    case DSR1__A_BYTES:
        return !memcmp(x->bytes, y->bytes, (size_t)x->n);
    case DSR1__A_CLASS:
        return !memcmp(x->ranges, y->ranges, 2 * (size_t)x->n * sizeof(uint32_t));
    case DSR1__A_REF:
        return x->rule == y->rule;
    case DSR1__A_REPEAT:
        if (x->min != y->min || x->max != y->max) return false;
        return ast_equal(x->kids[0], y->kids[0]);
    default:
        for (int i = 0; i < x->n; i++)
            if (!ast_equal(x->kids[i], y->kids[i])) return false;
        return true;
    }
}

/* NFA construction in continuation-passing style: build(x, next) returns a state from
 * which the paths match x and then go on at `next`. Edges only ever leave new states, so
 * a fragment, once built, never changes and may be shared: equal subtrees with the same
 * continuation (the tails of an alternation, an inlined rule used in several branches)
 * are built once, which keeps the subset construction from copying them. */
static uint32_t build(ab *b, const dsr1__ast *x, uint32_t next);

static uint32_t build_memo(ab *b, const dsr1__ast *x, uint32_t next)
{
    if (b->err) return UINT32_MAX;
    if (x->kind == DSR1__A_EMPTY) return next;
    uint64_t h = ast_hash(x) ^ ((uint64_t)next * 0x9e3779b97f4a7c15ull);
    if (b->nmemo * 2 + 2 > b->memocap) {
        size_t nc = b->memocap ? b->memocap * 2 : 256;
        memo_ent *t = calloc(nc, sizeof(*t));
        if (!t) {
            b->err = dsr1_error(DSR1_ERR_NOMEM, "grammar: out of memory");
            return UINT32_MAX;
        }
        for (size_t i = 0; i < b->memocap; i++) {
            if (!b->memo[i].x) continue;
            size_t j = b->memo[i].h & (nc - 1);
            while (t[j].x) j = (j + 1) & (nc - 1);
            t[j] = b->memo[i];
        }
        free(b->memo);
        b->memo = t;
        b->memocap = nc;
    }
    size_t j = h & (b->memocap - 1);
    for (; b->memo[j].x; j = (j + 1) & (b->memocap - 1))
        if (b->memo[j].h == h && b->memo[j].next == next && ast_equal(b->memo[j].x, x))
            return b->memo[j].start;
    uint32_t s = build(b, x, next);
    if (b->err) return UINT32_MAX;
    /* the table may have grown meanwhile: find the slot again */
    j = h & (b->memocap - 1);
    while (b->memo[j].x) j = (j + 1) & (b->memocap - 1);
    b->memo[j] = (memo_ent){x, h, next, s};
    b->nmemo++;
    return s;
}

static uint32_t build(ab *b, const dsr1__ast *x, uint32_t next)
{
    if (b->err) return UINT32_MAX;
    switch (x->kind) {
    case DSR1__A_EMPTY:
        return next;
    case DSR1__A_BYTES: {
        uint32_t s = next;
        for (int i = x->n - 1; i >= 0; i--) {
            uint32_t t = new_state(b);
            edge(b, t, s, -1, x->bytes[i], x->bytes[i]);
            s = t;
        }
        return s;
    }
    case DSR1__A_CLASS: {
        uint32_t s = new_state(b);
        for (int i = 0; i < x->n && !b->err; i++)
            utf8_range(b, s, next, x->ranges[2 * i], x->ranges[2 * i + 1]);
        return s;
    }
    case DSR1__A_SEQ: {
        uint32_t s = next;
        for (int i = x->n - 1; i >= 0; i--) s = build_memo(b, x->kids[i], s);
        return s;
    }
    case DSR1__A_ALT: {
        uint32_t s = new_state(b);
        for (int i = 0; i < x->n && !b->err; i++) EPS(b, s, build_memo(b, x->kids[i], next));
        return s;
    }
    case DSR1__A_REPEAT: {
        uint32_t cur = next;
        if (x->max < 0) {
            cur = new_state(b);
            EPS(b, cur, next);
            EPS(b, cur, build(b, x->kids[0], cur));
        } else {
            for (int i = x->min; i < x->max && !b->err; i++) {
                uint32_t s = new_state(b);
                EPS(b, s, next);
                EPS(b, s, build_memo(b, x->kids[0], cur));
                cur = s;
            }
        }
        for (int i = 0; i < x->min && !b->err; i++) cur = build_memo(b, x->kids[0], cur);
        return cur;
    }
    case DSR1__A_REF: {
        int q = x->rule;
        if (b->inl[q] && b->depth < INLINE_MAX_DEPTH) {
            b->depth++;
            uint32_t t = build_memo(b, b->rs->rules[q].body, next);
            b->depth--;
            return t;
        }
        uint32_t s = new_state(b);
        edge(b, s, next, q, 1, 0);
        if (!b->queued[q]) {
            b->queued[q] = 1;
            b->queue[b->nqueue++] = q;
        }
        return s;
    }
    }
    return UINT32_MAX;
}

/* ---- determinization ---- */

typedef struct {
    /* per rule NFA in CSR form */
    uint32_t *off; /* ns + 1 */
    nedge *e;      /* sorted by from */
} csr;

static bool to_csr(const nfa *n, csr *c)
{
    c->off = calloc((size_t)n->ns + 1, sizeof(uint32_t));
    c->e = malloc((n->ne + 1) * sizeof(nedge));
    if (!c->off || !c->e) return false;
    for (size_t i = 0; i < n->ne; i++) c->off[n->e[i].from + 1]++;
    for (uint32_t s = 0; s < n->ns; s++) c->off[s + 1] += c->off[s];
    uint32_t *pos = malloc(((size_t)n->ns + 1) * sizeof(uint32_t));
    if (!pos) return false;
    memcpy(pos, c->off, ((size_t)n->ns + 1) * sizeof(uint32_t));
    for (size_t i = 0; i < n->ne; i++) c->e[pos[n->e[i].from]++] = n->e[i];
    free(pos);
    return true;
}

typedef struct {
    /* the DFA of one rule */
    uint32_t ns, ncls;
    uint8_t cmap[256];
    int32_t *trans; /* ns * ncls, local targets */
    uint8_t *final;
    dsr1__gcall *calls; /* local targets */
    uint32_t *call_off; /* ns + 1 */
} dfa;

typedef struct {
    uint32_t *pool;
    size_t npool, pcap;
    uint32_t *set_off, *set_len; /* per DFA state */
    size_t nsets, scap, lcap;
    uint32_t *htab;
    size_t hcap;
} setmap;

static uint64_t hash_set(const uint32_t *s, uint32_t n)
{
    uint64_t h = 1469598103934665603ull ^ n;
    for (uint32_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Finds or adds the (sorted, unique) set; returns its id, UINT32_MAX on out of memory. */
static uint32_t set_id(setmap *m, const uint32_t *s, uint32_t n, bool *added)
{
    if (m->nsets * 2 + 2 > m->hcap) {
        size_t nc = m->hcap ? m->hcap * 2 : 64;
        uint32_t *t = malloc(nc * sizeof(uint32_t));
        if (!t) return UINT32_MAX;
        memset(t, 0xff, nc * sizeof(uint32_t));
        for (size_t i = 0; i < m->nsets; i++) {
            size_t h = hash_set(m->pool + m->set_off[i], m->set_len[i]) & (nc - 1);
            while (t[h] != UINT32_MAX) h = (h + 1) & (nc - 1);
            t[h] = (uint32_t)i;
        }
        free(m->htab);
        m->htab = t;
        m->hcap = nc;
    }
    size_t h = hash_set(s, n) & (m->hcap - 1);
    while (m->htab[h] != UINT32_MAX) {
        uint32_t k = m->htab[h];
        if (m->set_len[k] == n && !memcmp(m->pool + m->set_off[k], s, n * sizeof(uint32_t))) {
            *added = false;
            return k;
        }
        h = (h + 1) & (m->hcap - 1);
    }
    size_t c1 = m->scap, c2 = m->lcap;
    if (!DSR1_GROW(m->pool, m->pcap, m->npool + n + 1) ||
        !DSR1_GROW(m->set_off, c1, m->nsets + 1) || !DSR1_GROW(m->set_len, c2, m->nsets + 1))
        return UINT32_MAX;
    m->scap = c1;
    m->lcap = c2;
    memcpy(m->pool + m->npool, s, n * sizeof(uint32_t));
    m->set_off[m->nsets] = (uint32_t)m->npool;
    m->set_len[m->nsets] = n;
    m->npool += n;
    m->htab[h] = (uint32_t)m->nsets;
    *added = true;
    return (uint32_t)m->nsets++;
}

typedef struct {
    uint32_t *v;
    size_t n, cap;
} u32vec;

static bool same_u32(const u32vec *a, const u32vec *b)
{
    if (a->n != b->n) return false;
    for (size_t i = 0; i < a->n; i++)
        if (a->v[i] != b->v[i]) return false;
    return true;
}

static bool push(u32vec *v, uint32_t x)
{
    if (!DSR1_GROW(v->v, v->cap, v->n + 1)) return false;
    v->v[v->n++] = x;
    return true;
}

/* Epsilon closure of v (in place, sorted, unique). mark: ns stamps. */
static bool closure(const csr *c, u32vec *v, uint32_t *mark, uint32_t stamp)
{
    size_t n0 = v->n;
    v->n = 0;
    for (size_t i = 0; i < n0; i++)
        if (mark[v->v[i]] != stamp) mark[v->v[i]] = stamp, v->v[v->n++] = v->v[i];
    for (size_t i = 0; i < v->n; i++) {
        uint32_t s = v->v[i];
        for (uint32_t k = c->off[s]; k < c->off[s + 1]; k++) {
            const nedge *e = &c->e[k];
            if (e->rule < 0 && e->lo > e->hi && mark[e->to] != stamp) {
                mark[e->to] = stamp;
                if (!push(v, e->to)) return false;
            }
        }
    }
    qsort(v->v, v->n, sizeof(uint32_t), cmp_u32);
    return true;
}

typedef struct {
    uint32_t rule, to;
} callpair;

static int cmp_call(const void *a, const void *b)
{
    const callpair *x = a, *y = b;
    if (x->rule != y->rule) return x->rule < y->rule ? -1 : 1;
    return x->to < y->to ? -1 : x->to > y->to;
}

/* The DFA state for a kernel (the NFA states reached before the epsilon closure): kernels
 * seen before are looked up without computing their closure again. */
typedef struct {
    const csr *c;
    setmap *m, km;
    uint32_t *kval;
    size_t kvcap;
    uint32_t *mark, stamp;
} kernels;

static uint32_t kernel_target(kernels *k, u32vec *cur)
{
    qsort(cur->v, cur->n, sizeof(uint32_t), cmp_u32);
    size_t w = 0;
    for (size_t i = 0; i < cur->n; i++)
        if (!w || cur->v[w - 1] != cur->v[i]) cur->v[w++] = cur->v[i];
    cur->n = w;
    bool added;
    uint32_t kid = set_id(&k->km, cur->v, (uint32_t)cur->n, &added);
    if (kid == UINT32_MAX) return UINT32_MAX;
    if (!added) return k->kval[kid];
    if (!closure(k->c, cur, k->mark, ++k->stamp)) return UINT32_MAX;
    uint32_t id = set_id(k->m, cur->v, (uint32_t)cur->n, &added);
    if (id == UINT32_MAX || !DSR1_GROW(k->kval, k->kvcap, (size_t)kid + 1)) return UINT32_MAX;
    k->kval[kid] = id;
    return id;
}

static dsr1_status determinize(ab *b, const nfa *n, const uint8_t *prod, dfa *d, size_t *total_dfa)
{
    dsr1_status st = DSR1_OK;
    csr c = {0};
    setmap m = {0};
    u32vec cur = {0}, *bucket = NULL;
    callpair *cp = NULL;
    size_t cpcap = 0, tcap = 0, fcap = 0, ccap = 0, cocap = 0;
    uint32_t *mark = calloc(n->ns ? n->ns : 1, sizeof(uint32_t)), stamp = 0;
    kernels kn = {0};
    size_t ncalls = 0;
    memset(d, 0, sizeof(*d));
    if (!mark || !to_csr(n, &c)) goto oom;
    /* byte classes */
    uint8_t bound[257] = {0};
    for (size_t i = 0; i < n->ne; i++)
        if (n->e[i].rule < 0 && n->e[i].lo <= n->e[i].hi)
            bound[n->e[i].lo] = 1, bound[n->e[i].hi + 1] = 1;
    uint32_t ncls = 0;
    for (int x = 0; x < 256; x++) {
        if (x > 0 && bound[x]) ncls++;
        d->cmap[x] = (uint8_t)ncls;
    }
    d->ncls = ++ncls;
    bucket = calloc(ncls, sizeof(*bucket));
    if (!bucket) goto oom;
    kn.c = &c;
    kn.m = &m;
    kn.mark = mark;

    if (!push(&cur, n->start) || !closure(&c, &cur, mark, ++stamp)) goto oom;
    kn.stamp = stamp;
    bool added;
    if (set_id(&m, cur.v, (uint32_t)cur.n, &added) == UINT32_MAX) goto oom;
    for (size_t ds = 0; ds < m.nsets; ds++) {
        if (++*total_dfa > (size_t)b->o->max_states) {
            st = dsr1_error(DSR1_ERR_RANGE,
                            "grammar: automaton exceeds max_states (%d states); simplify the "
                            "grammar or raise the limit",
                            b->o->max_states);
            goto out;
        }
        if (!DSR1_GROW(d->trans, tcap, (ds + 1) * ncls) || !DSR1_GROW(d->final, fcap, ds + 1) ||
            !DSR1_GROW(d->call_off, cocap, ds + 2))
            goto oom;
        d->final[ds] = 0;
        d->call_off[ds] = (uint32_t)ncalls;
        size_t ncp = 0;
        for (uint32_t k = 0; k < ncls; k++) bucket[k].n = 0;
        for (uint32_t i = 0; i < m.set_len[ds]; i++) {
            uint32_t s = m.pool[m.set_off[ds] + i];
            if (s == n->accept) d->final[ds] = 1;
            for (uint32_t k = c.off[s]; k < c.off[s + 1]; k++) {
                const nedge *e = &c.e[k];
                if (e->rule >= 0) {
                    if (!prod[e->rule]) continue;
                    if (!DSR1_GROW(cp, cpcap, ncp + 1)) goto oom;
                    cp[ncp++] = (callpair){(uint32_t)e->rule, e->to};
                } else if (e->lo <= e->hi) {
                    for (uint32_t k2 = d->cmap[e->lo]; k2 <= d->cmap[e->hi]; k2++)
                        if (!push(&bucket[k2], e->to)) goto oom;
                }
            }
        }
        for (uint32_t k = 0; k < ncls; k++) {
            int32_t t = -1;
            if (k && same_u32(&bucket[k], &bucket[k - 1])) {
                t = d->trans[ds * ncls + k - 1]; /* same targets as the class before */
            } else if (bucket[k].n) {
                cur.n = 0;
                for (size_t i = 0; i < bucket[k].n; i++)
                    if (!push(&cur, bucket[k].v[i])) goto oom;
                uint32_t id = kernel_target(&kn, &cur);
                if (id == UINT32_MAX) goto oom;
                t = (int32_t)id;
            }
            d->trans[ds * ncls + k] = t;
        }
        if (ncp) qsort(cp, ncp, sizeof(*cp), cmp_call);
        for (size_t i = 0; i < ncp;) {
            size_t j = i;
            cur.n = 0;
            while (j < ncp && cp[j].rule == cp[i].rule)
                if (!push(&cur, cp[j++].to)) goto oom;
            uint32_t id = kernel_target(&kn, &cur);
            if (id == UINT32_MAX || !DSR1_GROW(d->calls, ccap, ncalls + 1)) goto oom;
            d->calls[ncalls++] = (dsr1__gcall){cp[i].rule, id};
            i = j;
        }
    }
    d->ns = (uint32_t)m.nsets;
    if (!DSR1_GROW(d->call_off, cocap, d->ns + 1)) goto oom;
    d->call_off[d->ns] = (uint32_t)ncalls;
    goto out;
oom:
    st = dsr1_error(DSR1_ERR_NOMEM, "grammar: out of memory");
out:
    free(c.off);
    free(c.e);
    free(m.pool);
    free(m.set_off);
    free(m.set_len);
    free(m.htab);
    free(cur.v);
    if (bucket)
        for (uint32_t k = 0; k < d->ncls; k++) free(bucket[k].v);
    free(bucket);
    free(cp);
    free(mark);
    free(kn.km.pool);
    free(kn.km.set_off);
    free(kn.km.set_len);
    free(kn.km.htab);
    free(kn.kval);
    return st;
}

/* Trims the states that cannot reach a final state (every rule still called is
 * productive, so this is local to the rule) and merges equivalent states (Hopcroft),
 * numbering the result in breadth-first order from the start. false: out of memory. */
static uint32_t callee(const dfa *d, const uint8_t *live, uint32_t rule, uint32_t q, uint32_t sink)
{
    for (uint32_t c = d->call_off[q]; c < d->call_off[q + 1]; c++)
        if (d->calls[c].rule == rule && live[d->calls[c].target]) return d->calls[c].target;
    return sink;
}

static bool minimize(dfa *d)
{
    uint32_t ns = d->ns, k = d->ncls;
    bool ok = false;
    uint8_t *live = calloc(ns, 1);
    uint32_t *roff = calloc((size_t)ns + 1, sizeof(uint32_t)), *redge = NULL, *q = NULL;
    uint32_t *cls = NULL, *rep = NULL, *ruleix = NULL, *ioff = NULL, *inv = NULL;
    uint32_t *elem = NULL, *loc = NULL, *blk = NULL, *bfirst = NULL, *bend = NULL, *bmark = NULL;
    uint32_t *wl = NULL, *touched = NULL, *snap = NULL, nclass = 0;
    uint8_t *inw = NULL;
    uint32_t *newid = NULL, *order = NULL;
    int32_t *trans = NULL;
    uint8_t *fin = NULL;
    dsr1__gcall *calls = NULL;
    uint32_t *coff = NULL;
    if (!live || !roff) goto out;
    /* live states: backward search from the final ones */
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t s = 0; s < ns; s++) {
            int32_t prev = -1;
            for (uint32_t c = 0; c < k; c++) {
                int32_t t = d->trans[s * k + c];
                if (t < 0 || t == prev) continue;
                prev = t;
                if (pass)
                    redge[roff[t]++] = s;
                else
                    roff[t + 1]++;
            }
            for (uint32_t c = d->call_off[s]; c < d->call_off[s + 1]; c++) {
                uint32_t t = d->calls[c].target;
                if (pass)
                    redge[roff[t]++] = s;
                else
                    roff[t + 1]++;
            }
        }
        if (pass) {
            for (uint32_t s = ns; s > 0; s--) roff[s] = roff[s - 1];
            roff[0] = 0;
        } else {
            for (uint32_t s = 0; s < ns; s++) roff[s + 1] += roff[s];
            redge = malloc(((size_t)roff[ns] + 1) * sizeof(uint32_t));
            q = malloc(((size_t)ns + 1) * sizeof(uint32_t));
            if (!redge || !q) goto out;
        }
    }
    size_t qn = 0;
    for (uint32_t s = 0; s < ns; s++)
        if (d->final[s]) live[s] = 1, q[qn++] = s;
    for (size_t qi = 0; qi < qn; qi++)
        for (uint32_t e = roff[q[qi]]; e < roff[q[qi] + 1]; e++)
            if (!live[redge[e]]) live[redge[e]] = 1, q[qn++] = redge[e];
    for (uint32_t s = 0; s < ns; s++)
        for (uint32_t c = 0; c < k; c++)
            if (d->trans[s * k + c] >= 0 && !live[d->trans[s * k + c]]) d->trans[s * k + c] = -1;

    /* Hopcroft's partition refinement over the byte classes and the called rules as
     * symbols, with a sink state (ns) for missing edges */
    if (!live[0]) {
        ok = true;
        goto out;
    }
    {
        uint32_t nrule = 0;
        ruleix = NULL;
        for (uint32_t c = 0; c < d->call_off[ns]; c++) {
            uint32_t r = d->calls[c].rule, j;
            for (j = 0; j < nrule && ruleix[j] != r; j++) {
            }
            if (j == nrule) {
                uint32_t *t = realloc(ruleix, (nrule + 1) * sizeof(uint32_t));
                if (!t) goto out;
                ruleix = t;
                ruleix[nrule++] = r;
            }
        }
        uint32_t nsym = k + nrule, nq = ns + 1;
        /* target of (q, a), ns (the sink) when missing */
#define DELTA(q0, a0)                                                                              \
    ((a0) < k ? (d->trans[(q0)*k + (a0)] < 0 ? ns : (uint32_t)d->trans[(q0)*k + (a0)])             \
              : callee(d, live, ruleix[(a0)-k], (q0), ns))
        /* inverse over the real edges only: inv[ioff[t * nsym + a] ..) = q, delta(q, a) = t */
        ioff = calloc((size_t)ns * nsym + 2, sizeof(uint32_t));
        if (!ioff) goto out;
        for (uint32_t q0 = 0; q0 < ns; q0++) {
            if (!live[q0]) continue;
            for (uint32_t a0 = 0; a0 < nsym; a0++) {
                uint32_t t = DELTA(q0, a0);
                if (t != ns) ioff[(size_t)t * nsym + a0 + 1]++;
            }
        }
        for (size_t i = 0; i < (size_t)ns * nsym; i++) ioff[i + 1] += ioff[i];
        inv = malloc(((size_t)ioff[(size_t)ns * nsym] + 1) * sizeof(uint32_t));
        if (!inv) goto out;
        for (uint32_t q0 = 0; q0 < ns; q0++) {
            if (!live[q0]) continue;
            for (uint32_t a0 = 0; a0 < nsym; a0++) {
                uint32_t t = DELTA(q0, a0);
                if (t != ns) inv[ioff[(size_t)t * nsym + a0]++] = q0;
            }
        }
        for (size_t i = (size_t)ns * nsym; i > 0; i--) ioff[i] = ioff[i - 1];
        ioff[0] = 0;
        /* partition: elem[] grouped by block; blocks [bfirst, bend) */
        elem = malloc(nq * sizeof(uint32_t));
        loc = malloc(nq * sizeof(uint32_t));
        blk = malloc(nq * sizeof(uint32_t));
        bfirst = malloc((nq + 1) * sizeof(uint32_t));
        bend = malloc((nq + 1) * sizeof(uint32_t));
        bmark = calloc(nq + 1, sizeof(uint32_t));
        inw = calloc(nq + 1, 1);
        wl = malloc((nq + 1) * sizeof(uint32_t));
        touched = malloc((nq + 1) * sizeof(uint32_t));
        snap = malloc(nq * sizeof(uint32_t));
        if (!elem || !loc || !blk || !bfirst || !bend || !bmark || !inw || !wl || !touched || !snap)
            goto out;
        /* blocks: final, other live, and the sink with the dead states (all equivalent).
         * The DFA with its sink is complete, so splitting by every block but the sink's
         * is enough: the sink's block is never a splitter and never split. */
        uint32_t n = 0, nb = 0, nw = 0;
        for (int f = 2; f >= 0; f--) {
            uint32_t first = n;
            for (uint32_t q0 = 0; q0 < nq; q0++) {
                int kind = q0 == ns || !live[q0] ? 0 : d->final[q0] ? 2 : 1;
                if (kind != f) continue;
                elem[n] = q0;
                loc[q0] = n++;
                blk[q0] = nb;
            }
            if (n > first) {
                bfirst[nb] = first;
                bend[nb] = n;
                if (f) wl[nw++] = nb, inw[nb] = 1;
                nb++;
            }
        }
        while (nw) {
            uint32_t A = wl[--nw];
            inw[A] = 0;
            uint32_t na = bend[A] - bfirst[A];
            memcpy(snap, elem + bfirst[A], na * sizeof(uint32_t));
            for (uint32_t a0 = 0; a0 < nsym; a0++) {
                uint32_t nt = 0;
#define MARK(p_)                                                                                   \
    do {                                                                                           \
        uint32_t p = (p_), B = blk[p], pos = bfirst[B] + bmark[B];                                 \
        if (loc[p] >= pos) {                                                                       \
            if (!bmark[B]) touched[nt++] = B;                                                      \
            uint32_t other = elem[pos];                                                            \
            elem[pos] = p;                                                                         \
            elem[loc[p]] = other;                                                                  \
            loc[other] = loc[p];                                                                   \
            loc[p] = pos;                                                                          \
            bmark[B]++;                                                                            \
        }                                                                                          \
    } while (0)
                for (uint32_t i = 0; i < na; i++) {
                    if (snap[i] >= ns) continue; /* never: the sink's block is no splitter */
                    size_t key = (size_t)snap[i] * nsym + a0;
                    for (uint32_t e = ioff[key]; e < ioff[key + 1]; e++) MARK(inv[e]);
                }
#undef MARK
                for (uint32_t i = 0; i < nt; i++) {
                    uint32_t B = touched[i], m = bmark[B];
                    bmark[B] = 0;
                    if (m == bend[B] - bfirst[B]) continue;
                    /* the marked part [bfirst, bfirst + m) becomes block nb */
                    uint32_t C = nb++;
                    bfirst[C] = bfirst[B];
                    bend[C] = bfirst[B] + m;
                    bfirst[B] += m;
                    for (uint32_t j = bfirst[C]; j < bend[C]; j++) blk[elem[j]] = C;
                    if (inw[B] || m <= bend[B] - bfirst[B]) {
                        wl[nw++] = C;
                        inw[C] = 1;
                    } else {
                        wl[nw++] = B;
                        inw[B] = 1;
                    }
                }
            }
        }
#undef DELTA
        cls = malloc(ns * sizeof(uint32_t));
        rep = malloc((nb + 1) * sizeof(uint32_t));
        if (!cls || !rep) goto out;
        for (uint32_t q0 = 0; q0 < ns; q0++) {
            cls[q0] = blk[q0];
            rep[blk[q0]] = q0;
        }
        nclass = nb;
    }
    /* the minimal DFA, breadth first from the start */
    newid = malloc(nclass * sizeof(uint32_t));
    order = malloc(nclass * sizeof(uint32_t));
    trans = malloc((size_t)nclass * k * sizeof(int32_t));
    fin = malloc(nclass);
    coff = malloc(((size_t)nclass + 1) * sizeof(uint32_t));
    calls = malloc(((size_t)d->call_off[ns] + 1) * sizeof(dsr1__gcall));
    if (!newid || !order || !trans || !fin || !coff || !calls) goto out;
    memset(newid, 0xff, nclass * sizeof(uint32_t));
    uint32_t nn = 0, nc = 0;
    newid[cls[0]] = nn;
    order[nn++] = cls[0];
    for (uint32_t i = 0; i < nn; i++) {
        uint32_t s = rep[order[i]];
        for (uint32_t c = 0; c < k; c++) {
            int32_t t = d->trans[s * k + c];
            if (t >= 0 && newid[cls[t]] == UINT32_MAX) newid[cls[t]] = nn, order[nn++] = cls[t];
        }
        for (uint32_t c = d->call_off[s]; c < d->call_off[s + 1]; c++) {
            uint32_t t = d->calls[c].target;
            if (live[t] && newid[cls[t]] == UINT32_MAX) newid[cls[t]] = nn, order[nn++] = cls[t];
        }
    }
    for (uint32_t i = 0; i < nn; i++) {
        uint32_t s = rep[order[i]];
        fin[i] = d->final[s];
        for (uint32_t c = 0; c < k; c++) {
            int32_t t = d->trans[s * k + c];
            trans[(size_t)i * k + c] = t < 0 ? -1 : (int32_t)newid[cls[t]];
        }
        coff[i] = nc;
        for (uint32_t c = d->call_off[s]; c < d->call_off[s + 1]; c++)
            if (live[d->calls[c].target])
                calls[nc++] = (dsr1__gcall){d->calls[c].rule, newid[cls[d->calls[c].target]]};
    }
    coff[nn] = nc;
    free(d->trans);
    free(d->final);
    free(d->calls);
    free(d->call_off);
    d->trans = trans, d->final = fin, d->calls = calls, d->call_off = coff, d->ns = nn;
    trans = NULL, fin = NULL, calls = NULL, coff = NULL;
    ok = true;
out:
    free(live);
    free(roff);
    free(redge);
    free(q);
    free(cls);
    free(rep);
    free(ruleix);
    free(ioff);
    free(inv);
    free(elem);
    free(loc);
    free(blk);
    free(bfirst);
    free(bend);
    free(bmark);
    free(inw);
    free(wl);
    free(touched);
    free(snap);
    free(newid);
    free(order);
    free(trans);
    free(fin);
    free(calls);
    free(coff);
    return ok;
}

static bool dfa_from_entry(dfa *d, const dsr1__dfa_entry *e)
{
    memset(d, 0, sizeof(*d));
    d->ns = e->ns;
    d->ncls = e->ncls;
    memcpy(d->cmap, e->cmap, 256);
    d->trans = malloc((size_t)e->ns * e->ncls * sizeof(int32_t));
    d->final = malloc(e->ns);
    d->call_off = calloc((size_t)e->ns + 1, sizeof(uint32_t));
    if (!d->trans || !d->final || !d->call_off) {
        free(d->trans);
        free(d->final);
        free(d->call_off);
        memset(d, 0, sizeof(*d));
        return false;
    }
    memcpy(d->trans, e->trans, (size_t)e->ns * e->ncls * sizeof(int32_t));
    memcpy(d->final, e->final, e->ns);
    return true;
}

static void dfa_free(dfa *d)
{
    free(d->trans);
    free(d->final);
    free(d->calls);
    free(d->call_off);
}

/* Whether the NFA (edges sorted by `from`) reaches its accept state using epsilon, byte
 * and productive call edges. */
static bool nfa_productive(const nfa *n, const uint8_t *prod, uint8_t *seen, uint32_t *stack)
{
    memset(seen, 0, n->ns);
    seen[n->start] = 1;
    uint32_t sp = 0;
    stack[sp++] = n->start;
    while (sp) {
        uint32_t s = stack[--sp];
        if (s == n->accept) return true;
        size_t lo = 0, hi = n->ne;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (n->e[mid].from < s)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (size_t i = lo; i < n->ne && n->e[i].from == s; i++) {
            const nedge *e = &n->e[i];
            if (seen[e->to] || (e->rule >= 0 && !prod[e->rule])) continue;
            seen[e->to] = 1;
            stack[sp++] = e->to;
        }
    }
    return false;
}

static int cmp_from(const void *a, const void *b)
{
    const nedge *x = a, *y = b;
    return x->from < y->from ? -1 : x->from > y->from;
}

/* ---- the vocabulary's cache of leaf rules' DFAs ---- */

#define LEAF_KEY_MAX ((size_t)256 << 10)

typedef struct {
    uint8_t *p;
    size_t n, cap;
    bool ok;
} keybuf;

static void kput(keybuf *k, const void *p, size_t n)
{
    if (!k->ok) return;
    if (k->n + n > LEAF_KEY_MAX || !DSR1_GROW(k->p, k->cap, k->n + n)) {
        k->ok = false;
        return;
    }
    memcpy(k->p + k->n, p, n);
    k->n += n;
}

/* The body as build() expands it (inlined rules in place); not ok when it calls a rule. */
static void leaf_key(const ab *b, const dsr1__ast *x, int depth, keybuf *k)
{
    if (!k->ok) return;
    uint8_t kind = (uint8_t)x->kind;
    if (x->kind == DSR1__A_REF) {
        if (!b->inl[x->rule] || depth >= INLINE_MAX_DEPTH) {
            k->ok = false;
            return;
        }
        leaf_key(b, b->rs->rules[x->rule].body, depth + 1, k);
        return;
    }
    kput(k, &kind, 1);
    kput(k, &x->n, sizeof(x->n));
    switch (x->kind) {
    case DSR1__A_BYTES:
        kput(k, x->bytes, (size_t)x->n);
        break;
    case DSR1__A_CLASS:
        kput(k, x->ranges, 2 * (size_t)x->n * sizeof(uint32_t));
        break;
    case DSR1__A_REPEAT:
        kput(k, &x->min, sizeof(x->min));
        kput(k, &x->max, sizeof(x->max));
        leaf_key(b, x->kids[0], depth, k);
        break;
    case DSR1__A_SEQ:
    case DSR1__A_ALT:
        for (int i = 0; i < x->n; i++) leaf_key(b, x->kids[i], depth, k);
        break;
    default:
        break;
    }
}

/* ---- the whole build ---- */

dsr1_status dsr1__automaton_build(const dsr1__rules *rs, const dsr1_grammar_opts *o,
                                  dsr1_grammar *g)
{
    int nr = rs->nrules;
    dsr1_status st = DSR1_OK;
    ab b = {.rs = rs, .o = o};
    nfa *nfas = calloc((size_t)nr, sizeof(nfa));
    dfa *dfas = calloc((size_t)nr, sizeof(dfa));
    uint8_t *prod = calloc((size_t)nr, 1), *cached = calloc((size_t)nr, 1);
    uint8_t **keys = calloc((size_t)nr, sizeof(uint8_t *));
    size_t *keylens = calloc((size_t)nr, sizeof(size_t));
    b.rec = calloc((size_t)nr, 1);
    b.inl = calloc((size_t)nr, 1);
    b.bigcls = calloc((size_t)nr, 1);
    b.bigrep = calloc((size_t)nr, 1);
    b.queued = calloc((size_t)nr, 1);
    b.est = calloc((size_t)nr, sizeof(uint64_t));
    b.queue = malloc((size_t)nr * sizeof(int32_t));
    b.nfa_limit = (size_t)o->max_states * 4;
    uint8_t *seen = NULL;
    uint32_t *stack = NULL, *base = NULL;
    if (!nfas || !dfas || !prod || !cached || !keys || !keylens || !b.rec || !b.inl || !b.bigcls ||
        !b.bigrep || !b.queued || !b.est || !b.queue)
        goto oom;
    if ((st = analyse(&b))) goto out;

    /* NFAs of the root and of every rule called (not inlined) */
    b.queue[b.nqueue++] = rs->root;
    b.queued[rs->root] = 1;
    size_t maxns = 1;
    for (int qi = 0; qi < b.nqueue; qi++) {
        int r = b.queue[qi];
        /* a leaf rule compiled before (any grammar on this vocabulary): its DFA as is */
        keybuf kb = {.ok = true};
        leaf_key(&b, rs->rules[r].body, 0, &kb);
        if (kb.ok) {
            const dsr1__dfa_entry *e = dsr1__vocab_dfa_get(g->vocab, kb.p, kb.n);
            if (e && dfa_from_entry(&dfas[r], e)) {
                free(kb.p);
                cached[r] = prod[r] = 1;
                continue;
            }
            keys[r] = kb.p;
            keylens[r] = kb.n;
        } else {
            free(kb.p);
        }
        memset(&b.cur, 0, sizeof(b.cur));
        b.ecap = 0;
        b.nmemo = 0;
        if (b.memo) memset(b.memo, 0, b.memocap * sizeof(*b.memo));
        uint32_t acc = new_state(&b);
        uint32_t start = build_memo(&b, rs->rules[r].body, acc);
        nfas[r] = b.cur;
        nfas[r].accept = acc;
        nfas[r].start = start;
        if (b.err) {
            st = b.err;
            goto out;
        }
        if (nfas[r].ne) qsort(nfas[r].e, nfas[r].ne, sizeof(nedge), cmp_from);
        if (nfas[r].ns > maxns) maxns = nfas[r].ns;
    }
    /* productive rules, to a fixpoint (callees first converges fast) */
    seen = malloc(maxns);
    stack = malloc(maxns * sizeof(uint32_t) + 4);
    if (!seen || !stack) goto oom;
    for (bool changed = true; changed;) {
        changed = false;
        for (int qi = b.nqueue - 1; qi >= 0; qi--) {
            int r = b.queue[qi];
            if (!prod[r] && !cached[r] && nfa_productive(&nfas[r], prod, seen, stack))
                prod[r] = 1, changed = true;
        }
    }
    if (!prod[rs->root]) {
        st = dsr1_error(DSR1_ERR_INVALID_ARG, "grammar: rule '%.*s' matches no finite text",
                        rs->rules[rs->root].name_len, rs->rules[rs->root].name);
        goto out;
    }
    size_t total = 0;
    for (int qi = 0; qi < b.nqueue; qi++) {
        int r = b.queue[qi];
        if (!prod[r]) continue;
        if (cached[r]) {
            total += dfas[r].ns;
            if (total > (size_t)o->max_states) {
                st = dsr1_error(DSR1_ERR_RANGE,
                                "grammar: automaton exceeds max_states (%d states); simplify the "
                                "grammar or raise the limit",
                                o->max_states);
                goto out;
            }
            continue;
        }
        if ((st = determinize(&b, &nfas[r], prod, &dfas[r], &total))) goto out;
        if (!minimize(&dfas[r])) goto oom;
        if (keys[r] && dfas[r].call_off[dfas[r].ns] == 0)
            dsr1__vocab_dfa_put(g->vocab, keys[r], keylens[r], dfas[r].ns, dfas[r].ncls,
                                dfas[r].cmap, dfas[r].trans, dfas[r].final);
    }

    /* global numbering */
    base = malloc((size_t)nr * sizeof(uint32_t));
    if (!base) goto oom;
    size_t ntrans = 0, ncalls = 0, ncm = 0;
    uint32_t nst = 0;
    for (int r = 0; r < nr; r++) {
        base[r] = nst;
        if (!dfas[r].ns) continue;
        nst += dfas[r].ns;
        ntrans += (size_t)dfas[r].ns * dfas[r].ncls;
        ncalls += dfas[r].call_off[dfas[r].ns];
        ncm += 256;
    }
    g->st = calloc(nst, sizeof(dsr1__gstate));
    g->trans = malloc((ntrans + 1) * sizeof(int32_t));
    g->cmaps = malloc(ncm + 1);
    g->calls = malloc((ncalls + 1) * sizeof(dsr1__gcall));
    g->rules = calloc((size_t)nr, sizeof(dsr1__grule));
    g->ci = calloc(nst ? nst : 1, sizeof(*g->ci));
    g->sh = calloc(nst ? nst : 1, sizeof(*g->sh));
    if (!g->st || !g->trans || !g->cmaps || !g->calls || !g->rules || !g->ci || !g->sh) goto oom;
    g->nst = nst;
    g->nrules = (uint32_t)nr;
    g->root = (uint32_t)rs->root;
    size_t tp = 0, cpos = 0, cm = 0;
    for (int r = 0; r < nr; r++) {
        dfa *d = &dfas[r];
        g->rules[r].start = d->ns ? base[r] : UINT32_MAX;
        g->rules[r].nst = d->ns;
        g->rules[r].ncls = d->ncls;
        g->rules[r].leaf = d->ns && d->call_off[d->ns] == 0;
        if (!d->ns) continue;
        memcpy(g->cmaps + cm, d->cmap, 256);
        for (uint32_t s = 0; s < d->ns; s++) {
            dsr1__gstate *gs = &g->st[base[r] + s];
            gs->rule = (uint32_t)r;
            gs->final = d->final[s];
            gs->cmap = (uint32_t)cm;
            gs->trans = (int32_t)tp;
            for (uint32_t k = 0; k < d->ncls; k++) {
                int32_t t = d->trans[s * d->ncls + k];
                g->trans[tp++] = t < 0 ? -1 : (int32_t)(base[r] + (uint32_t)t);
            }
            gs->calls = (uint32_t)cpos;
            for (uint32_t k = d->call_off[s]; k < d->call_off[s + 1]; k++) {
                g->calls[cpos++] = (dsr1__gcall){d->calls[k].rule, base[r] + d->calls[k].target};
            }
            gs->ncalls = (uint32_t)cpos - gs->calls;
        }
        cm += 256;
    }

    /* reverse edges (bit 31: a call edge), for the backward searches below */
    uint32_t *roff = calloc((size_t)nst + 1, sizeof(uint32_t)), *redge = NULL, *queue = NULL;
    uint8_t *live = calloc(nst ? nst : 1, 1);
    if (!roff || !live) {
        free(roff);
        free(live);
        goto oom;
    }
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t s = 0; s < nst; s++) {
            const dsr1__gstate *gs = &g->st[s];
            uint32_t ncls = dfas[gs->rule].ncls;
            int32_t prev = -1;
            for (uint32_t k = 0; k < ncls; k++) {
                int32_t t = g->trans[gs->trans + (int32_t)k];
                if (t < 0 || t == prev) continue;
                prev = t;
                if (pass)
                    redge[roff[t]++] = s;
                else
                    roff[t + 1]++;
            }
            for (uint32_t k = 0; k < gs->ncalls; k++) {
                uint32_t t = g->calls[gs->calls + k].target;
                if (pass)
                    redge[roff[t]++] = s | 0x80000000u;
                else
                    roff[t + 1]++;
            }
        }
        if (pass) {
            for (uint32_t s = nst; s > 0; s--) roff[s] = roff[s - 1];
            roff[0] = 0;
        } else {
            for (uint32_t s = 0; s < nst; s++) roff[s + 1] += roff[s];
            redge = malloc(((size_t)roff[nst] + 1) * sizeof(uint32_t));
            queue = malloc(((size_t)nst + 1) * sizeof(uint32_t));
            if (!redge || !queue) {
                free(roff);
                free(redge);
                free(queue);
                free(live);
                goto oom;
            }
        }
    }
    /* live states: can reach a final state */
    size_t qn = 0;
    for (uint32_t s = 0; s < nst; s++)
        if (g->st[s].final) live[s] = 1, queue[qn++] = s;
    for (size_t qi = 0; qi < qn; qi++) {
        uint32_t t = queue[qi];
        for (uint32_t k = roff[t]; k < roff[t + 1]; k++) {
            uint32_t s = redge[k] & 0x7fffffffu;
            if (!live[s]) live[s] = 1, queue[qn++] = s;
        }
    }
    for (uint32_t s = 0; s < nst; s++) {
        dsr1__gstate *gs = &g->st[s];
        uint32_t ncls = dfas[gs->rule].ncls;
        bool scans = false;
        for (uint32_t k = 0; k < ncls; k++) {
            int32_t *t = &g->trans[gs->trans + (int32_t)k];
            if (*t >= 0 && !live[*t]) *t = -1;
            if (*t >= 0) scans = true;
        }
        uint32_t w = gs->calls;
        for (uint32_t k = 0; k < gs->ncalls; k++) {
            dsr1__gcall c = g->calls[gs->calls + k];
            if (live[c.target]) g->calls[w++] = c;
        }
        gs->ncalls = w - gs->calls;
        gs->scans = scans || gs->ncalls;
        if (!live[s]) gs->scans = 0, gs->ncalls = 0;
    }
    /* nullable rules: start reaches a final state through calls of nullable rules */
    for (bool changed = true; changed;) {
        changed = false;
        for (int r = 0; r < nr; r++) {
            if (!dfas[r].ns || g->rules[r].nullable) continue;
            /* BFS over call edges to nullable rules */
            uint32_t sp = 0, n0 = dfas[r].ns;
            uint8_t *vis = calloc(n0, 1);
            uint32_t *q = malloc(n0 * sizeof(uint32_t));
            if (!vis || !q) {
                free(vis);
                free(q);
                free(live);
                free(roff);
                free(redge);
                free(queue);
                goto oom;
            }
            vis[0] = 1;
            q[sp++] = 0;
            bool nul = false;
            while (sp && !nul) {
                uint32_t s = q[--sp];
                const dsr1__gstate *gs = &g->st[base[r] + s];
                if (gs->final) nul = true;
                for (uint32_t k = 0; k < gs->ncalls; k++) {
                    dsr1__gcall c = g->calls[gs->calls + k];
                    uint32_t t = c.target - base[r];
                    if (g->rules[c.rule].nullable && !vis[t]) vis[t] = 1, q[sp++] = t;
                }
            }
            free(vis);
            free(q);
            if (nul) g->rules[r].nullable = true, changed = true;
        }
    }
    /* reach_calls: a call edge reachable over byte edges */
    qn = 0;
    for (uint32_t s = 0; s < nst; s++) {
        g->st[s].reach_calls = g->st[s].ncalls > 0;
        if (g->st[s].reach_calls) queue[qn++] = s;
    }
    for (size_t qi = 0; qi < qn; qi++) {
        uint32_t t = queue[qi];
        for (uint32_t k = roff[t]; k < roff[t + 1]; k++) {
            uint32_t s = redge[k];
            if (s & 0x80000000u || g->st[s].reach_calls || !live[s]) continue;
            g->st[s].reach_calls = 1;
            queue[qn++] = s;
        }
    }
    free(roff);
    free(redge);
    free(queue);
    free(live);
    g->stats.rules = nr;
    g->stats.terminals = rs->terminals;
    g->stats.states = (int)nst;
    goto out;
oom:
    st = dsr1_error(DSR1_ERR_NOMEM, "grammar: out of memory");
out:
    for (int r = 0; nfas && r < nr; r++) free(nfas[r].e);
    for (int r = 0; dfas && r < nr; r++) dfa_free(&dfas[r]);
    free(nfas);
    free(dfas);
    free(prod);
    free(cached);
    for (int r = 0; keys && r < nr; r++) free(keys[r]);
    free(keys);
    free(keylens);
    free(b.rec);
    free(b.inl);
    free(b.bigcls);
    free(b.bigrep);
    free(b.queued);
    free(b.est);
    free(b.queue);
    free(b.memo);
    free(seen);
    free(stack);
    free(base);
    return st;
}
