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
    uint32_t ns, accept;
} nfa;

typedef struct {
    const dsr1__rules *rs;
    const dsr1_grammar_opts *o;
    uint8_t *rec, *inl, *queued;
    uint64_t *est;
    int32_t *queue;
    int nqueue;
    nfa cur;
    size_t ecap;
    size_t total_nfa, nfa_limit;
    int depth;
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
                b->inl[w] = !b->rec[w] && w != b->rs->root && b->est[w] <= INLINE_MAX_STATES;
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

static uint32_t build(ab *b, const dsr1__ast *x, uint32_t from)
{
    if (b->err) return UINT32_MAX;
    switch (x->kind) {
    case DSR1__A_EMPTY:
        return from;
    case DSR1__A_BYTES: {
        uint32_t s = from;
        for (int i = 0; i < x->n; i++) {
            uint32_t t = new_state(b);
            edge(b, s, t, -1, x->bytes[i], x->bytes[i]);
            s = t;
        }
        return s;
    }
    case DSR1__A_CLASS: {
        uint32_t to = new_state(b);
        for (int i = 0; i < x->n && !b->err; i++)
            utf8_range(b, from, to, x->ranges[2 * i], x->ranges[2 * i + 1]);
        return to;
    }
    case DSR1__A_SEQ: {
        uint32_t s = from;
        for (int i = 0; i < x->n; i++) s = build(b, x->kids[i], s);
        return s;
    }
    case DSR1__A_ALT: {
        uint32_t to = new_state(b);
        for (int i = 0; i < x->n && !b->err; i++) {
            uint32_t s = new_state(b);
            EPS(b, from, s);
            EPS(b, build(b, x->kids[i], s), to);
        }
        return to;
    }
    case DSR1__A_REPEAT: {
        uint32_t s = from;
        for (int i = 0; i < x->min && !b->err; i++) s = build(b, x->kids[0], s);
        if (x->max < 0) {
            uint32_t loop = new_state(b);
            EPS(b, s, loop);
            EPS(b, build(b, x->kids[0], loop), loop);
            return loop;
        }
        if (x->max == x->min) return s;
        uint32_t to = new_state(b);
        for (int i = x->min; i < x->max && !b->err; i++) {
            EPS(b, s, to);
            s = build(b, x->kids[0], s);
        }
        EPS(b, s, to);
        return to;
    }
    case DSR1__A_REF: {
        int q = x->rule;
        if (b->inl[q] && b->depth < INLINE_MAX_DEPTH) {
            b->depth++;
            uint32_t t = build(b, b->rs->rules[q].body, from);
            b->depth--;
            return t;
        }
        uint32_t to = new_state(b);
        edge(b, from, to, q, 1, 0);
        if (!b->queued[q]) {
            b->queued[q] = 1;
            b->queue[b->nqueue++] = q;
        }
        return to;
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

static dsr1_status determinize(ab *b, const nfa *n, const uint8_t *prod, dfa *d, size_t *total_dfa)
{
    dsr1_status st = DSR1_OK;
    csr c = {0};
    setmap m = {0};
    u32vec cur = {0}, *bucket = NULL;
    callpair *cp = NULL;
    size_t cpcap = 0, tcap = 0, fcap = 0, ccap = 0, cocap = 0;
    uint32_t *mark = calloc(n->ns ? n->ns : 1, sizeof(uint32_t)), stamp = 0;
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

    if (!push(&cur, 0) || !closure(&c, &cur, mark, ++stamp)) goto oom;
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
            if (bucket[k].n) {
                cur.n = 0;
                for (size_t i = 0; i < bucket[k].n; i++)
                    if (!push(&cur, bucket[k].v[i])) goto oom;
                if (!closure(&c, &cur, mark, ++stamp)) goto oom;
                uint32_t id = set_id(&m, cur.v, (uint32_t)cur.n, &added);
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
            if (!closure(&c, &cur, mark, ++stamp)) goto oom;
            uint32_t id = set_id(&m, cur.v, (uint32_t)cur.n, &added);
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
    return st;
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
    seen[0] = 1;
    uint32_t sp = 0;
    stack[sp++] = 0;
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

/* ---- the whole build ---- */

dsr1_status dsr1__automaton_build(const dsr1__rules *rs, const dsr1_grammar_opts *o,
                                  dsr1_grammar *g)
{
    int nr = rs->nrules;
    dsr1_status st = DSR1_OK;
    ab b = {.rs = rs, .o = o};
    nfa *nfas = calloc((size_t)nr, sizeof(nfa));
    dfa *dfas = calloc((size_t)nr, sizeof(dfa));
    uint8_t *prod = calloc((size_t)nr, 1);
    b.rec = calloc((size_t)nr, 1);
    b.inl = calloc((size_t)nr, 1);
    b.queued = calloc((size_t)nr, 1);
    b.est = calloc((size_t)nr, sizeof(uint64_t));
    b.queue = malloc((size_t)nr * sizeof(int32_t));
    b.nfa_limit = (size_t)o->max_states * 4;
    uint8_t *seen = NULL;
    uint32_t *stack = NULL, *base = NULL;
    if (!nfas || !dfas || !prod || !b.rec || !b.inl || !b.queued || !b.est || !b.queue) goto oom;
    if ((st = analyse(&b))) goto out;

    /* NFAs of the root and of every rule called (not inlined) */
    b.queue[b.nqueue++] = rs->root;
    b.queued[rs->root] = 1;
    size_t maxns = 1;
    for (int qi = 0; qi < b.nqueue; qi++) {
        int r = b.queue[qi];
        memset(&b.cur, 0, sizeof(b.cur));
        b.ecap = 0;
        uint32_t s0 = new_state(&b);
        (void)s0;
        uint32_t end = build(&b, rs->rules[r].body, 0);
        nfas[r] = b.cur;
        nfas[r].accept = end;
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
            if (!prod[r] && nfa_productive(&nfas[r], prod, seen, stack))
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
        if ((st = determinize(&b, &nfas[r], prod, &dfas[r], &total))) goto out;
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
    if (!g->st || !g->trans || !g->cmaps || !g->calls || !g->rules || !g->ci) goto oom;
    g->nst = nst;
    g->nrules = (uint32_t)nr;
    g->root = (uint32_t)rs->root;
    size_t tp = 0, cpos = 0, cm = 0;
    for (int r = 0; r < nr; r++) {
        dfa *d = &dfas[r];
        g->rules[r].start = d->ns ? base[r] : UINT32_MAX;
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

    /* live states: can reach a final state (backward fixpoint; DFAs are small) */
    uint8_t *live = calloc(nst ? nst : 1, 1);
    if (!live) goto oom;
    for (uint32_t s = 0; s < nst; s++) live[s] = g->st[s].final;
    for (bool changed = true; changed;) {
        changed = false;
        for (uint32_t s = nst; s-- > 0;) {
            if (live[s]) continue;
            const dsr1__gstate *gs = &g->st[s];
            uint32_t ncls = dfas[gs->rule].ncls;
            bool l = false;
            for (uint32_t k = 0; k < ncls && !l; k++) {
                int32_t t = g->trans[gs->trans + (int32_t)k];
                l = t >= 0 && live[t];
            }
            for (uint32_t k = 0; k < gs->ncalls && !l; k++)
                l = live[g->calls[gs->calls + k].target];
            if (l) live[s] = 1, changed = true;
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
    for (uint32_t s = 0; s < nst; s++) g->st[s].reach_calls = g->st[s].ncalls > 0;
    for (bool changed = true; changed;) {
        changed = false;
        for (uint32_t s = nst; s-- > 0;) {
            dsr1__gstate *gs = &g->st[s];
            if (gs->reach_calls) continue;
            uint32_t ncls = dfas[gs->rule].ncls;
            for (uint32_t k = 0; k < ncls; k++) {
                int32_t t = g->trans[gs->trans + (int32_t)k];
                if (t >= 0 && g->st[t].reach_calls) {
                    gs->reach_calls = 1;
                    changed = true;
                    break;
                }
            }
        }
    }
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
    free(b.rec);
    free(b.inl);
    free(b.queued);
    free(b.est);
    free(b.queue);
    free(seen);
    free(stack);
    free(base);
    return st;
}
