/* Token masks, with the per-state cache that makes them cheap (XGrammar's adaptive token
 * mask cache, on an Earley chart).
 *
 * A token is allowed when some item of the current set can consume all of its bytes. Every
 * derivation of a token starts at a "kernel" item (origin before the current set, or the
 * root item at the start); items predicted in the current set are descendants of one.
 * For a kernel item in automaton state s, the token either stays inside that item's rule
 * (its bytes run from s, through any rules called from there, without the rule ending
 * before the last byte), or the rule ends after a proper prefix and the rest of the token
 * must continue in the caller. The first kind depends on s alone: "accepted" tokens are
 * computed once per state by walking the vocabulary trie from a one-item parse, and
 * cached in the grammar. Tokens of the second kind are "uncertain": the cache keeps, per
 * such token, the suffixes left after each place the rule can end, in a small trie. At
 * mask time the accepted set is OR'ed in and only the suffix trie is walked, from the
 * caller items that ending the rule produces (the rest of the chart decides those). */
#include <stdlib.h>
#include <string.h>

#include "grammar_internal.h"

struct dsr1__ci {
    uint32_t *acc_bits; /* mask words, or NULL with acc_list */
    uint32_t *acc_list;
    uint32_t nacc;
    uint32_t nunc; /* uncertain (token, suffix node) pairs */
    uint32_t *unc_tok, *unc_node;
    dsr1__tnode *suf;
    uint32_t nsuf;
};

typedef struct {
    uint32_t tok, j;
} upair;

struct dsr1__scratch {
    dsr1__chart mini;
    int32_t *dst;
    uint32_t *ncomp;
    size_t dcap;
    uint32_t *accbits; /* mask words: the accepted tokens of the state being computed */
    size_t nacc;
    upair *pairs;
    size_t npairs, pcap;
    uint8_t *sufacc;
    size_t sufcap;
    uint8_t *uni;
    int32_t *uninext;
    size_t unicap, unncap;
    uint16_t *crun; /* per state: char_run, memoized */
    size_t cucap;
    uint8_t *key; /* canonical keys */
    size_t nkey, keycap;
    uint32_t *loc, *queue;
    size_t loccap, qcap;
    uint8_t *seen; /* per local state: visited by mid_nonfinal */
    size_t seencap;
    uint64_t work; /* trie nodes visited */
};

uint64_t dsr1__scratch_work(const dsr1__scratch *s)
{
    return s ? s->work : 0;
}

dsr1__scratch *dsr1__scratch_new(const dsr1_grammar *g)
{
    dsr1__scratch *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    dsr1__chart_init(&s->mini, g);
    size_t d = (size_t)g->vocab->maxlen + 2;
    s->dst = malloc(d * sizeof(int32_t));
    s->ncomp = malloc(d * sizeof(uint32_t));
    s->dcap = d;
    s->accbits = malloc((dsr1_grammar_mask_words(g->vocab->n) + 1) * sizeof(uint32_t));
    if (!s->dst || !s->ncomp || !s->accbits) {
        dsr1__scratch_free(s);
        return NULL;
    }
    return s;
}

void dsr1__scratch_free(dsr1__scratch *s)
{
    if (!s) return;
    dsr1__chart_free(&s->mini);
    free(s->dst);
    free(s->ncomp);
    free(s->accbits);
    free(s->pairs);
    free(s->sufacc);
    free(s->uni);
    free(s->uninext);
    free(s->crun);
    free(s->key);
    free(s->loc);
    free(s->queue);
    free(s->seen);
    free(s);
}

void dsr1__ci_free(dsr1__ci *c)
{
    if (!c) return;
    free(c->acc_bits);
    free(c->acc_list);
    free(c->unc_tok);
    free(c->unc_node);
    free(c->suf);
    free(c);
}

void dsr1__grammar_free_ci(dsr1_grammar *g)
{
    for (uint32_t s = 0; g->ci && s < g->nst; s++) dsr1__ci_free(atomic_load(&g->ci[s]));
    free((void *)g->ci);
    free((void *)g->sh);
    g->ci = NULL;
    g->sh = NULL;
}

/* Tokens under trie node i (first byte at depth d rejected): uncertain at every earlier
 * position where the rule ended. */
static bool dead_subtree(const dsr1__trie_view *tv, dsr1__scratch *s, uint32_t i, uint32_t d)
{
    uint32_t lo = tv->tok_lo[i], hi = tv->tok_lo[tv->nodes[i].end];
    for (uint32_t j = 1; j < d; j++) {
        if (s->ncomp[j] == s->ncomp[j - 1]) continue;
        if (!DSR1_GROW(s->pairs, s->pcap, s->npairs + (hi - lo))) return false;
        for (uint32_t k = lo; k < hi; k++) s->pairs[s->npairs++] = (upair){tv->toks[k], j};
    }
    return true;
}

/* Tokens ending at node i are accepted. A node without one has tok == vocab size, a bit
 * past the last id that compute_ci clears, so the common case has no branch. */
static inline void accept_here(const dsr1__trie_view *tv, dsr1__scratch *s, uint32_t i)
{
    const dsr1__tnode *nd = &tv->nodes[i];
    s->accbits[nd->tok >> 5] |= 1u << (nd->tok & 31);
    if (__builtin_expect(nd->ntok > 1, 0))
        for (uint32_t k = tv->tok_lo[i]; k < tv->tok_lo[i + 1]; k++)
            s->accbits[tv->toks[k] >> 5] |= 1u << (tv->toks[k] & 31);
}

typedef struct {
    const uint8_t *p;
    uint32_t len, id;
} sref;

static int cmp_sref(const void *a, const void *b)
{
    const sref *x = a, *y = b;
    uint32_t m = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->p, y->p, m);
    if (c) return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

/* For local state q: the byte categories all of whose bytes go to the state that the
 * letters and digits go to (none when those differ or die), and that state. */
static void uniform(const int32_t *T, const uint8_t *cmap, uint32_t ncls, uint32_t first, int32_t q,
                    dsr1__scratch *s)
{
    const int32_t *row = T + (uint32_t)q * ncls;
    int32_t to = row[cmap['a']];
    uint8_t cats = 0;
    if (to >= 0) {
        cats = (uint8_t)((1u << DSR1__NBYTECAT) - 1);
        for (int b = 0; b < 256; b++)
            if (row[cmap[b]] != to) cats &= (uint8_t) ~(1u << dsr1__bytecat((uint8_t)b));
    }
    s->uni[q] = cats;
    s->uninext[q] = to < 0 ? -1 : to - (int32_t)first;
}

/* Whether every way to finish the character begun in local state q (decoder state ds)
 * ends in global state `to`, every byte on the way alive. */
static bool char_rest(const int32_t *T, const uint8_t *cmap, uint32_t ncls, uint32_t first,
                      int32_t q, int ds, int32_t to)
{
    int prev = -1, prevds = -1;
    for (int b = 0x80; b <= 0xbf; b++) {
        int nds = dsr1__safe_utf8_next(ds, (uint8_t)b);
        if (nds < 0 || (cmap[b] == prev && nds == prevds)) continue;
        prev = cmap[b], prevds = nds;
        int32_t t = T[(uint32_t)q * ncls + cmap[b]];
        if (t < 0) return false;
        if (nds == 0 ? t != to : !char_rest(T, cmap, ncls, first, t - (int32_t)first, nds, to))
            return false;
    }
    return true;
}

/* Whether every safe character (any Unicode scalar value but the quote, backslash and
 * controls) takes local state q to the same state as 'a' does. */
static bool charuni(const int32_t *T, const uint8_t *cmap, uint32_t ncls, uint32_t first, int32_t q)
{
    const int32_t *row = T + (uint32_t)q * ncls;
    int32_t to = row[cmap['a']];
    if (to < 0) return false;
    for (int b = 0x20; b < 0x80; b++)
        if (b != '"' && b != '\\' && row[cmap[b]] != to) return false;
    int prev = -1, prevds = -1;
    for (int b = 0xc2; b <= 0xf4; b++) {
        int nds = dsr1__safe_utf8_next(0, (uint8_t)b);
        if (nds < 0 || (cmap[b] == prev && nds == prevds)) continue;
        prev = cmap[b], prevds = nds;
        int32_t t = row[cmap[b]];
        if (t < 0 || !char_rest(T, cmap, ncls, first, t - (int32_t)first, nds, to)) return false;
    }
    return true;
}

/* How many characters of safe text local state q surely takes, all alive (255: any
 * number), memoized in s->crun (0xffff: not known yet). */
static uint32_t char_run(const int32_t *T, const uint8_t *cmap, uint32_t ncls, uint32_t first,
                         int32_t q, dsr1__scratch *s, int depth)
{
    if (s->crun[q] != 0xffff) return s->crun[q];
    uint32_t run = 0;
    if (depth < 255 && charuni(T, cmap, ncls, first, q)) {
        int32_t nq = T[(uint32_t)q * ncls + cmap['a']] - (int32_t)first;
        run = nq == q ? 255 : 1 + char_run(T, cmap, ncls, first, nq, s, depth + 1);
        if (run > 255) run = 255;
    }
    s->crun[q] = (uint16_t)run;
    return run;
}

/* Whether every state that the bytes of a safe character's rest take local state q
 * through (decoder state ds) is not final; the character's last byte excluded. */
static bool mid_nonfinal(const int32_t *T, const uint8_t *cmap, uint32_t ncls, uint32_t first,
                         const dsr1__gstate *S, int32_t q, int ds, dsr1__scratch *s)
{
    int prev = -1, prevds = -1;
    for (int b = 0x80; b <= 0xbf; b++) {
        int nds = dsr1__safe_utf8_next(ds, (uint8_t)b);
        if (nds <= 0 || (cmap[b] == prev && nds == prevds)) continue;
        prev = cmap[b], prevds = nds;
        int32_t t = T[(uint32_t)q * ncls + cmap[b]] - (int32_t)first;
        if (t < 0 || S[t].final) return false;
        if (!(s->seen[t] >> nds & 1)) {
            s->seen[t] |= (uint8_t)(1u << nds);
            if (!mid_nonfinal(T, cmap, ncls, first, S, t, nds, s)) return false;
        }
    }
    return true;
}

/* Whether the safe tokens that begin more than r characters from local state q0, whose
 * safe characters run along a chain of r states (char_run), die at their (r + 1)-th
 * character with no state on their way final (neither accepted nor uncertain); the final
 * flag of q0 itself is not looked at. */
static bool chain_ends(const int32_t *T, const uint8_t *cmap, uint32_t ncls, uint32_t first,
                       const dsr1__gstate *S, int32_t q0, uint32_t r, dsr1__scratch *s)
{
    int32_t q = q0;
    for (uint32_t k = 0; k < r; k++) {
        const int32_t *row = T + (uint32_t)q * ncls;
        int prev = -1, prevds = -1;
        for (int b = 0xc2; b <= 0xf4; b++) { /* the states inside a character */
            int nds = dsr1__safe_utf8_next(0, (uint8_t)b);
            if (nds < 0 || (cmap[b] == prev && nds == prevds)) continue;
            prev = cmap[b], prevds = nds;
            int32_t t = row[cmap[b]] - (int32_t)first;
            if (t < 0 || S[t].final) return false;
            if (!(s->seen[t] >> nds & 1)) {
                s->seen[t] |= (uint8_t)(1u << nds);
                if (!mid_nonfinal(T, cmap, ncls, first, S, t, nds, s)) return false;
            }
        }
        q = row[cmap['a']] - (int32_t)first; /* the next character boundary */
        if (q < 0 || S[q].final) return false;
    }
    const int32_t *row = T + (uint32_t)q * ncls; /* the chain's end: no safe character */
    for (int b = 0x20; b <= 0xf4; b++)
        if (dsr1__safe_utf8_next(0, (uint8_t)b) >= 0 && row[cmap[b]] >= 0) return false;
    return true;
}

/* A trie to walk: the vocabulary's, or its exception trie. */
typedef struct {
    dsr1__trie_view tv;
    const uint8_t *subcat, *below;
} wtrie;

/* One DFA walk's fixed parts. */
typedef struct {
    const int32_t *T;
    const uint8_t *cmap;
    const dsr1__gstate *S;
    uint32_t ncls, first;
} wdfa;

/* Walks the trie nodes [lo, hi) (whole subtrees) from dst[0]: one table lookup per node,
 * the rule's states being contiguous. */
static bool walk_nodes(const wdfa *a, const wtrie *w, uint32_t lo, uint32_t hi, dsr1__scratch *s)
{
    const int32_t *T = a->T;
    const uint8_t *cmap = a->cmap;
    const dsr1__gstate *S = a->S;
    const uint32_t ncls = a->ncls, first = a->first;
    const dsr1__trie_view tv = w->tv;
    const dsr1__tnode *nodes = tv.nodes;
    const uint8_t *subcat = w->subcat, *below = w->below;
    int32_t *dst = s->dst;
    uint32_t *ncomp = s->ncomp;
    uint32_t visited = 0;
    for (uint32_t i = lo; i < hi; visited++) {
        const dsr1__tnode *nd = &nodes[i];
        uint32_t d = nd->depth;
        int32_t t = T[(uint32_t)dst[d - 1] * ncls + cmap[nd->byte]];
        if (t < 0) {
            if (ncomp[d - 1] && !dead_subtree(&tv, s, i, d)) return false;
            i = nd->end;
            continue;
        }
        t -= (int32_t)first;
        dst[d] = t;
        ncomp[d] = ncomp[d - 1] + S[t].final;
        accept_here(&tv, s, i);
        uint8_t sc = subcat[i] & 0x7f;
        if (sc && below[i] < 255 && tv.tok_lo[nd->end] - tv.tok_lo[i + 1] >= 2) {
            /* every byte below loops on the state, or the text below is safe and every
             * character moves the DFA along one path that lives as deep as the subtree:
             * all the tokens below are accepted */
            if (s->uni[t] & 0x80) uniform(T, cmap, ncls, first, t, s);
            if ((s->uninext[t] == t && !(sc & ~s->uni[t])) ||
                ((subcat[i] & 0x80) && char_run(T, cmap, ncls, first, t, s, 0) >= below[i])) {
                for (uint32_t k = tv.tok_lo[i + 1]; k < tv.tok_lo[nd->end]; k++)
                    s->accbits[tv.toks[k] >> 5] |= 1u << (tv.toks[k] & 31);
                i = nd->end;
                continue;
            }
        }
        i++;
    }
    s->work += visited;
    return true;
}

/* The safe-text split. From local state q0, the safe characters that begin with an
 * "ordinary" byte all end in one state `to` (the one most printable ASCII bytes go to),
 * alive; the other first bytes are exceptions (e.g. the first letters of the names an
 * object key must not be). When from `to` the safe characters run along a chain of r
 * states that ends in no safe character, states not final (chain_ends), or the chain is as
 * long as the longest token: the safe tokens beginning with an ordinary byte are accepted
 * when they begin at most 1 + r characters (safe_le), and otherwise neither accepted nor
 * uncertain. So the mask is safe_le[1 + r], less the tokens under the exception bytes,
 * plus the walk of the subtrees of the exception bytes and of the exception trie's other
 * subtrees (the tokens that are not safe text). Returns false, nothing done, when the
 * conditions fail. exc[b]: first byte b is an exception (filled here). */
static bool split_ok(const dsr1_grammar_vocab *v, const wdfa *a, int32_t q0, uint32_t nst,
                     dsr1__scratch *s, bool exc[256], uint32_t *idx)
{
    const int32_t *T = a->T, *row = T + (uint32_t)q0 * a->ncls;
    const uint8_t *cmap = a->cmap;
    const uint32_t ncls = a->ncls, first = a->first;
    int32_t to = -1;
    uint32_t best = 0;
    for (int b = 0x20; b < 0x7f; b++) { /* the most common target */
        int32_t t = row[cmap[b]];
        if (t < 0 || b == '"' || b == '\\') continue;
        uint32_t n = 0;
        for (int c = 0x20; c < 0x7f; c++) n += row[cmap[c]] == t;
        if (n > best) best = n, to = t;
    }
    if (to < 0) return false;
    int32_t lto = to - (int32_t)first;
    for (int b = 0; b < 256; b++) {
        int nds = dsr1__safe_utf8_next(0, (uint8_t)b);
        int32_t t = row[cmap[b]];
        exc[b] = false;
        if (nds < 0) continue; /* not safe: its tokens are all in the exception trie */
        exc[b] = nds == 0 ? t != to
                          : t < 0 || !char_rest(T, cmap, ncls, first, t - (int32_t)first, nds, to);
    }
    uint32_t r = char_run(T, cmap, ncls, first, lto, s, 0);
    *idx = 1 + r < v->maxlen ? 1 + r : v->maxlen;
    if (1 + r >= v->maxlen) return true; /* every safe ordinary token is accepted */
    /* safe ordinary tokens that die: no state final on their way (the first character's
     * inner states and `to` included) */
    if (a->S[lto].final || !DSR1_GROW(s->seen, s->seencap, nst)) return false;
    memset(s->seen, 0, nst);
    int prev = -1, prevds = -1;
    for (int b = 0xc2; b <= 0xf4; b++) {
        int nds = dsr1__safe_utf8_next(0, (uint8_t)b);
        if (nds < 0 || exc[b] || (cmap[b] == prev && nds == prevds)) continue;
        prev = cmap[b], prevds = nds;
        int32_t t = row[cmap[b]] - (int32_t)first;
        if (a->S[t].final || !mid_nonfinal(T, cmap, ncls, first, a->S, t, nds, s)) return false;
    }
    memset(s->seen, 0, nst);
    return chain_ends(T, cmap, ncls, first, a->S, lto, r, s);
}

/* The trie walk from a state whose rule is a plain DFA from here on (no calls reachable),
 * split (split_ok) when it can be. */
static bool walk_dfa(const dsr1_grammar *g, uint32_t st, dsr1__scratch *s)
{
    const dsr1_grammar_vocab *v = g->vocab;
    const dsr1__grule *r = &g->rules[g->st[st].rule];
    const wdfa a = {g->trans + g->st[r->start].trans, g->cmaps + g->st[st].cmap, g->st + r->start,
                    r->ncls, r->start};
    const wtrie full = {{v->nodes, v->nnodes, v->sorted, v->tok_lo}, v->subcat, v->below};
    /* per state of the rule: the byte categories whose bytes all go to one state, the
     * state they go to (uni 0x80: not known yet) */
    if (!DSR1_GROW(s->uni, s->unicap, r->nst) || !DSR1_GROW(s->uninext, s->unncap, r->nst) ||
        !DSR1_GROW(s->crun, s->cucap, r->nst))
        return false;
    memset(s->uni, 0x80, r->nst);
    memset(s->crun, 0xff, r->nst * sizeof(uint16_t));
    s->dst[0] = (int32_t)(st - a.first);
    bool exc[256];
    uint32_t idx;
    if (v->no_split || !v->safe_le || v->maxlen > 255 ||
        !split_ok(v, &a, s->dst[0], r->nst, s, exc, &idx))
        return walk_nodes(&a, &full, 0, full.tv.nnodes, s);
    const size_t nw = dsr1_grammar_mask_words(v->n);
    const uint32_t *sl = v->safe_le + (size_t)idx * nw;
    for (size_t k = 0; k < nw; k++) s->accbits[k] |= sl[k];
    const wtrie x = {{v->xnodes, v->nxnodes, v->xsorted, v->xtok_lo}, v->xsubcat, v->xbelow};
    for (uint32_t i = 0; i < full.tv.nnodes; i = full.tv.nodes[i].end) { /* first bytes */
        if (!exc[full.tv.nodes[i].byte]) continue;
        for (uint32_t k = full.tv.tok_lo[i]; k < full.tv.tok_lo[full.tv.nodes[i].end]; k++)
            s->accbits[full.tv.toks[k] >> 5] &= ~(1u << (full.tv.toks[k] & 31));
        if (!walk_nodes(&a, &full, i, full.tv.nodes[i].end, s)) return false;
    }
    for (uint32_t i = 0; i < x.tv.nnodes; i = x.tv.nodes[i].end)
        if (!exc[x.tv.nodes[i].byte] && !walk_nodes(&a, &x, i, x.tv.nodes[i].end, s)) return false;
    return true;
}

/* The trie walk with a one-item Earley parse (calls reachable from st). */
static bool walk_earley(const dsr1_grammar *g, uint32_t st, dsr1__scratch *s)
{
    const dsr1_grammar_vocab *v = g->vocab;
    const dsr1__trie_view tv = {v->nodes, v->nnodes, v->sorted, v->tok_lo};
    dsr1__chart *c = &s->mini;
    dsr1__chart_clear(c);
    if (!dsr1__chart_begin(c) || !dsr1__chart_add(c, st, DSR1__ORG_ROOT) || !dsr1__chart_close(c))
        return false;
    uint32_t visited = 0;
    for (uint32_t i = 0; i < v->nnodes; visited++) {
        const dsr1__tnode *nd = &v->nodes[i];
        uint32_t d = nd->depth;
        dsr1__chart_truncate(c, d);
        if (!dsr1__chart_scan(c, nd->byte)) {
            if (c->oom) return false;
            if (s->ncomp[d - 1] && !dead_subtree(&tv, s, i, d)) return false;
            i = nd->end;
            continue;
        }
        s->ncomp[d] = s->ncomp[d - 1] + c->rootdone[d];
        accept_here(&tv, s, i);
        i++;
    }
    s->work += visited;
    return true;
}

static dsr1__ci *compute_ci(const dsr1_grammar *g, uint32_t st, dsr1__scratch *s)
{
    const dsr1_grammar_vocab *v = g->vocab;
    size_t nw = dsr1_grammar_mask_words(v->n);
    s->nacc = s->npairs = 0;
    s->ncomp[0] = 0;
    memset(s->accbits, 0, (nw + 1) * sizeof(uint32_t));
    if (!(g->st[st].reach_calls ? walk_earley(g, st, s) : walk_dfa(g, st, s))) return NULL;
    s->accbits[(uint32_t)v->n >> 5] &= ~(1u << ((uint32_t)v->n & 31));
    s->accbits[nw] = 0;
    for (size_t w = 0; w < nw; w++) s->nacc += (size_t)__builtin_popcount(s->accbits[w]);

    dsr1__ci *ci = calloc(1, sizeof(*ci));
    if (!ci) return NULL;
    if (s->nacc > nw) {
        if (!(ci->acc_bits = malloc(nw * sizeof(uint32_t)))) goto oom;
        memcpy(ci->acc_bits, s->accbits, nw * sizeof(uint32_t));
    } else if (s->nacc) {
        if (!(ci->acc_list = malloc(s->nacc * sizeof(uint32_t)))) goto oom;
        size_t k = 0;
        for (size_t w = 0; w < nw; w++)
            for (uint32_t b = s->accbits[w]; b; b &= b - 1)
                ci->acc_list[k++] = (uint32_t)(w * 32 + (uint32_t)__builtin_ctz(b));
        s->nacc = k;
    }
    ci->nacc = (uint32_t)s->nacc;
    if (s->npairs) {
        uint32_t n = (uint32_t)s->npairs;
        sref *sr = malloc(n * sizeof(*sr));
        const uint8_t **sp = malloc(n * sizeof(*sp));
        uint32_t *sl = malloc(n * sizeof(*sl)), *node_of = malloc(n * sizeof(uint32_t));
        ci->unc_tok = malloc(n * sizeof(uint32_t));
        ci->unc_node = malloc(n * sizeof(uint32_t));
        bool fine = sr && sp && sl && node_of && ci->unc_tok && ci->unc_node;
        if (fine) {
            for (uint32_t k = 0; k < n; k++) {
                upair p = s->pairs[k];
                sr[k] = (sref){v->bytes + v->off[p.tok] + p.j, v->len[p.tok] - p.j, k};
            }
            qsort(sr, n, sizeof(*sr), cmp_sref);
            for (uint32_t k = 0; k < n; k++) sp[k] = sr[k].p, sl[k] = sr[k].len;
            fine = dsr1__trie_build(n, sp, sl, NULL, UINT32_MAX, &ci->suf, &ci->nsuf, NULL,
                                    node_of) == DSR1_OK;
            for (uint32_t k = 0; fine && k < n; k++) {
                ci->unc_tok[k] = s->pairs[sr[k].id].tok;
                ci->unc_node[k] = node_of[k];
            }
            ci->nunc = n;
        }
        free(sr);
        free(sp);
        free(sl);
        free(node_of);
        if (!fine) goto oom;
    }
    return ci;
oom:
    dsr1__ci_free(ci);
    return NULL;
}

size_t dsr1__ci_bytes(const dsr1__ci *c, const dsr1_grammar_vocab *v)
{
    size_t acc = c->acc_bits ? dsr1_grammar_mask_words(v->n) : c->nacc;
    return sizeof(*c) + 4 * acc + 8 * (size_t)c->nunc + sizeof(dsr1__tnode) * c->nsuf;
}

#define CANON_MAX_STATES 4096
#define CANON_MAX_BYTES  ((size_t)1 << 20)

static dsr1__shared_dfa no_share; /* marks a state whose key is too large to share */

static bool put(dsr1__scratch *s, const void *p, size_t n)
{
    if (!DSR1_GROW(s->key, s->keycap, s->nkey + n)) return false;
    memcpy(s->key + s->nkey, p, n);
    s->nkey += n;
    return true;
}

/* The vocabulary's entry for plain-DFA state st: the DFA reachable from it, breadth first,
 * each state as its final flag and its byte runs (first byte, target). */
static dsr1__shared_dfa *canonical(const dsr1_grammar *g, uint32_t st, dsr1__scratch *s)
{
    const dsr1__grule *r = &g->rules[g->st[st].rule];
    const int32_t *T = g->trans + g->st[r->start].trans;
    const uint8_t *cmap = g->cmaps + g->st[st].cmap;
    const uint32_t ncls = r->ncls, first = r->start;
    if (!DSR1_GROW(s->loc, s->loccap, r->nst) || !DSR1_GROW(s->queue, s->qcap, r->nst))
        return &no_share;
    memset(s->loc, 0xff, r->nst * sizeof(uint32_t));
    uint8_t bnd[256];
    int nb = 0;
    for (int b = 0; b < 256; b++)
        if (!b || cmap[b] != cmap[b - 1]) bnd[nb++] = (uint8_t)b;
    uint32_t nq = 0;
    s->loc[st - first] = 0;
    s->queue[nq++] = st - first;
    s->nkey = 0;
    for (uint32_t qi = 0; qi < nq; qi++) {
        uint32_t q = s->queue[qi];
        uint8_t fin = g->st[first + q].final;
        if (!put(s, &fin, 1)) return &no_share;
        int32_t prev = -2;
        for (int j = 0; j < nb; j++) {
            int b = bnd[j]; /* bytes of one class have one target: runs break at classes */
            int32_t t = T[q * ncls + cmap[b]], lt = -1;
            if (t >= 0) {
                uint32_t lq = (uint32_t)t - first;
                if (s->loc[lq] == UINT32_MAX) {
                    if (nq >= CANON_MAX_STATES) return &no_share;
                    s->loc[lq] = nq;
                    s->queue[nq++] = lq;
                }
                lt = (int32_t)s->loc[lq];
            }
            if (lt == prev) continue;
            prev = lt;
            uint8_t bb = (uint8_t)b;
            if (!put(s, &bb, 1) || !put(s, &lt, 4)) return &no_share;
        }
        if (s->nkey > CANON_MAX_BYTES) return &no_share;
    }
    dsr1__shared_dfa *e = dsr1__vocab_share_dfa(g->vocab, s->key, s->nkey);
    return e ? e : &no_share;
}

/* The cache entry of state st: the vocabulary's (plain-DFA states, within its budget) or
 * the grammar's own; computed by the first matcher that needs it, installed atomically. */
static const dsr1__ci *get_ci(const dsr1_grammar *g, uint32_t st, dsr1__scratch *s)
{
    dsr1__ci *c = atomic_load_explicit(&g->ci[st], memory_order_acquire);
    if (c) return c;
    dsr1__shared_dfa *e = NULL;
    if (!g->st[st].reach_calls) {
        e = atomic_load_explicit(&g->sh[st], memory_order_acquire);
        if (!e) {
            e = canonical(g, st, s);
            atomic_store_explicit(&g->sh[st], e, memory_order_release);
        }
        if (e == &no_share) e = NULL;
        if (e && (c = atomic_load_explicit(&e->ci, memory_order_acquire))) return c;
    }
    dsr1__ci *mine = compute_ci(g, st, s);
    if (!mine) return NULL;
    dsr1__ci *expected = NULL;
    if (e) {
        size_t bytes = dsr1__ci_bytes(mine, g->vocab);
        if (dsr1__vocab_reserve(g->vocab, bytes)) {
            if (atomic_compare_exchange_strong_explicit(&e->ci, &expected, mine,
                                                        memory_order_acq_rel, memory_order_acquire))
                return mine;
            dsr1__vocab_unreserve(g->vocab, bytes);
            dsr1__ci_free(mine);
            return expected;
        }
    }
    if (atomic_compare_exchange_strong_explicit(&g->ci[st], &expected, mine, memory_order_acq_rel,
                                                memory_order_acquire))
        return mine;
    dsr1__ci_free(mine);
    return expected;
}

/* The uncertain tokens of kernel item (rule of st, org): walk the suffix trie from the
 * items that ending the rule gives its callers. */
static void check_uncertain(dsr1__chart *c, dsr1__scratch *s, const dsr1__ci *ci, uint32_t rule,
                            uint32_t org, uint32_t *mask)
{
    size_t nset0 = c->nset;
    if (!dsr1__chart_begin(c)) return;
    dsr1__chart_complete(c, rule, org);
    if (!dsr1__chart_close(c)) {
        c->oom = c->overflow = false;
        return;
    }
    if (!DSR1_GROW(s->sufacc, s->sufcap, ci->nsuf)) {
        dsr1__chart_truncate(c, nset0);
        return;
    }
    memset(s->sufacc, 0, ci->nsuf);
    size_t base = c->nset;
    for (uint32_t i = 0; i < ci->nsuf; s->work++) {
        const dsr1__tnode *nd = &ci->suf[i];
        dsr1__chart_truncate(c, base + nd->depth - 1);
        if (!dsr1__chart_scan(c, nd->byte)) {
            i = nd->end;
            continue;
        }
        s->sufacc[i++] = 1;
    }
    dsr1__chart_truncate(c, nset0);
    c->oom = c->overflow = false;
    for (uint32_t k = 0; k < ci->nunc; k++)
        if (s->sufacc[ci->unc_node[k]]) mask[ci->unc_tok[k] >> 5] |= 1u << (ci->unc_tok[k] & 31);
}

void dsr1__mask_compute(const dsr1_grammar *g, dsr1__chart *c, dsr1__scratch *s, uint32_t *mask)
{
    size_t nw = dsr1_grammar_mask_words(g->vocab->n);
    memset(mask, 0, nw * sizeof(uint32_t));
    if (!c->nset) return;
    uint32_t cur = (uint32_t)c->nset - 1;
    size_t lo = c->set[cur], hi = c->set[cur + 1];
    for (size_t i = lo; i < hi; i++) {
        dsr1__item it = c->it[i];
        if (cur == 0 ? it.st != g->rules[g->root].start : it.org >= cur) continue;
        if (!g->st[it.st].scans) continue;
        /* the same state from an earlier item: its accepted tokens are in already */
        bool seen = false;
        for (size_t k = lo; k < i && !seen; k++) seen = c->it[k].st == it.st && c->it[k].org < cur;
        const dsr1__ci *ci = get_ci(g, it.st, s);
        if (!ci) continue;
        if (!seen) {
            if (ci->acc_bits) {
                for (size_t w = 0; w < nw; w++) mask[w] |= ci->acc_bits[w];
            } else {
                for (uint32_t k = 0; k < ci->nacc; k++)
                    mask[ci->acc_list[k] >> 5] |= 1u << (ci->acc_list[k] & 31);
            }
        }
        if (ci->nunc) check_uncertain(c, s, ci, g->st[it.st].rule, it.org, mask);
    }
}

void dsr1__grammar_warm(const dsr1_grammar *g)
{
    dsr1__scratch *s = dsr1__scratch_new(g);
    if (!s) return;
    for (uint32_t st = 0; st < g->nst; st++)
        if (g->st[st].scans && !g->st[st].reach_calls) get_ci(g, st, s);
    dsr1__scratch_free(s);
}
