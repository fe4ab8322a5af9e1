/* The Earley parser over the rule automata: a chart of item sets, one per byte consumed.
 * An item is (automaton state, origin set). Scanning a byte moves every item along its
 * byte edge; closing a set predicts the rules called from its items (with the
 * Aycock-Horspool step over nullable rules) and completes rules that reached a final
 * state, advancing the callers in the origin set. Left recursion predicts an item that is
 * already there, so it terminates. Items with origin DSR1__ORG_ROOT belong to the mask
 * cache's one-state parses: their completion is only recorded (rootdone). */
#include <stdlib.h>
#include <string.h>

#include "grammar_internal.h"

#define LINEAR_MAX 16 /* sets up to this size are deduplicated by a linear scan */

void dsr1__chart_init(dsr1__chart *c, const dsr1_grammar *g)
{
    memset(c, 0, sizeof(*c));
    c->g = g;
    c->gen = 1;
}

void dsr1__chart_free(dsr1__chart *c)
{
    free(c->it);
    free(c->set);
    free(c->rootdone);
    free(c->hkey);
    free(c->hgen);
    free(c->cx);
    free(c->cxoff);
    free(c->cxon);
    memset(c, 0, sizeof(*c));
}

void dsr1__chart_clear(dsr1__chart *c)
{
    c->n = 0;
    c->nset = 0;
    c->ncx = 0;
    c->oom = c->overflow = false;
    if (c->set) c->set[0] = 0, c->cxoff[0] = 0;
}

static size_t h64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return (size_t)k;
}

static bool hash_insert(dsr1__chart *c, uint64_t key)
{
    size_t m = c->hcap - 1, h = h64(key) & m;
    while (c->hgen[h] == c->gen) {
        if (c->hkey[h] == key) return false;
        h = (h + 1) & m;
    }
    c->hgen[h] = c->gen;
    c->hkey[h] = key;
    return true;
}

/* Rebuilds the hash of the open set with room for `need` items. */
static bool hash_rebuild(dsr1__chart *c, size_t need)
{
    size_t lo = c->set[c->nset - 1];
    if (need * 2 > c->hcap) {
        size_t cap = c->hcap ? c->hcap : 64;
        while (need * 2 > cap) cap *= 2;
        uint64_t *k = realloc(c->hkey, cap * sizeof(uint64_t));
        if (!k) return false;
        c->hkey = k;
        uint32_t *gn = realloc(c->hgen, cap * sizeof(uint32_t));
        if (!gn) return false;
        c->hgen = gn;
        memset(c->hgen, 0, cap * sizeof(uint32_t));
        c->hcap = (uint32_t)cap;
        c->gen = 1;
    } else if (++c->gen == 0) {
        memset(c->hgen, 0, c->hcap * sizeof(uint32_t));
        c->gen = 1;
    }
    for (size_t i = lo; i < c->n; i++) hash_insert(c, (uint64_t)c->it[i].st << 32 | c->it[i].org);
    return true;
}

bool dsr1__chart_begin(dsr1__chart *c)
{
    if (c->nset + 2 > c->setcap) {
        size_t nc = c->setcap ? c->setcap * 2 : 64;
        uint32_t *s = realloc(c->set, nc * sizeof(uint32_t));
        if (!s) return c->oom = true, false;
        c->set = s;
        uint8_t *r = realloc(c->rootdone, nc);
        if (!r) return c->oom = true, false;
        c->rootdone = r;
        uint32_t *xo = realloc(c->cxoff, nc * sizeof(uint32_t));
        if (!xo) return c->oom = true, false;
        c->cxoff = xo;
        uint8_t *xn = realloc(c->cxon, nc);
        if (!xn) return c->oom = true, false;
        c->cxon = xn;
        c->setcap = nc;
    }
    c->set[c->nset] = (uint32_t)c->n;
    c->rootdone[c->nset] = 0;
    c->cxoff[c->nset] = (uint32_t)c->ncx;
    c->cxon[c->nset] = 0;
    c->nset++;
    c->set[c->nset] = (uint32_t)c->n;
    c->cxoff[c->nset] = (uint32_t)c->ncx;
    return true;
}

bool dsr1__chart_add(dsr1__chart *c, uint32_t st, uint32_t org)
{
    size_t lo = c->set[c->nset - 1], cnt = c->n - lo;
    if (cnt < LINEAR_MAX) {
        for (size_t i = lo; i < c->n; i++)
            if (c->it[i].st == st && c->it[i].org == org) return true;
    } else {
        if (cnt == LINEAR_MAX || (cnt + 1) * 2 > c->hcap) {
            if (!hash_rebuild(c, 2 * (cnt + 1))) return c->oom = true, false;
        }
        if (!hash_insert(c, (uint64_t)st << 32 | org)) return true;
    }
    if (cnt >= DSR1__MAX_SET_ITEMS) return c->oom = c->overflow = true, false;
    if (!DSR1_GROW(c->it, c->cap, c->n + 1)) return c->oom = true, false;
    c->it[c->n++] = (dsr1__item){st, org};
    c->set[c->nset] = (uint32_t)c->n;
    return true;
}

#define INDEX_MIN 8 /* sets with more items index their waiters by rule */

void dsr1__chart_complete(dsr1__chart *c, uint32_t rule, uint32_t org)
{
    const dsr1_grammar *g = c->g;
    if (org + 1 < c->nset && c->cxon[org]) {
        size_t lo = c->cxoff[org], hi = c->cxoff[org + 1];
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (c->cx[mid].rule < rule)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (size_t i = lo; i < c->cxoff[org + 1] && c->cx[i].rule == rule; i++)
            dsr1__chart_add(c, c->cx[i].target, c->cx[i].org);
        return;
    }
    for (size_t i = c->set[org]; i < (org + 1 == c->nset ? c->n : c->set[org + 1]); i++) {
        dsr1__item it = c->it[i];
        const dsr1__gstate *s = &g->st[it.st];
        for (uint32_t k = 0; k < s->ncalls; k++) {
            const dsr1__gcall *cl = &g->calls[s->calls + k];
            if (cl->rule == rule) dsr1__chart_add(c, cl->target, it.org);
        }
    }
}

static int cmp_waiter(const void *a, const void *b)
{
    const dsr1__waiter *x = a, *y = b;
    return x->rule < y->rule ? -1 : x->rule > y->rule;
}

/* Indexes the waiters of the (now closed) last set when it is large. */
static void index_set(dsr1__chart *c)
{
    const dsr1_grammar *g = c->g;
    uint32_t cur = (uint32_t)c->nset - 1;
    size_t lo = c->set[cur], start = c->ncx;
    if (c->n - lo <= INDEX_MIN) return;
    for (size_t i = lo; i < c->n; i++) {
        const dsr1__gstate *s = &g->st[c->it[i].st];
        for (uint32_t k = 0; k < s->ncalls; k++) {
            if (!DSR1_GROW(c->cx, c->cxcap, c->ncx + 1)) {
                c->ncx = start;
                return; /* unindexed: scanned instead */
            }
            c->cx[c->ncx++] = (dsr1__waiter){g->calls[s->calls + k].rule,
                                             g->calls[s->calls + k].target, c->it[i].org};
        }
    }
    if (c->ncx > start) /* none: cx may still be NULL */
        qsort(c->cx + start, c->ncx - start, sizeof(dsr1__waiter), cmp_waiter);
    c->cxon[cur] = 1;
    c->cxoff[cur + 1] = (uint32_t)c->ncx;
}

bool dsr1__chart_close(dsr1__chart *c)
{
    const dsr1_grammar *g = c->g;
    uint32_t cur = (uint32_t)c->nset - 1;
    for (size_t i = c->set[cur]; i < c->n && !c->oom; i++) {
        dsr1__item it = c->it[i];
        const dsr1__gstate *s = &g->st[it.st];
        if (s->final) {
            if (it.org == DSR1__ORG_ROOT)
                c->rootdone[cur] = 1;
            else
                dsr1__chart_complete(c, s->rule, it.org);
        }
        for (uint32_t k = 0; k < s->ncalls; k++) {
            const dsr1__gcall *cl = &g->calls[s->calls + k];
            dsr1__chart_add(c, g->rules[cl->rule].start, cur);
            if (g->rules[cl->rule].nullable) dsr1__chart_add(c, cl->target, it.org);
        }
    }
    if (c->n == c->set[cur] || c->oom) {
        c->nset--;
        c->n = c->set[c->nset];
        c->ncx = c->cxoff[c->nset];
        return false;
    }
    index_set(c);
    return true;
}

bool dsr1__chart_scan(dsr1__chart *c, uint8_t b)
{
    const dsr1_grammar *g = c->g;
    if (!c->nset) return false;
    size_t lo = c->set[c->nset - 1], hi = c->n;
    if (hi - lo == 1) {
        /* one item moving to a state that neither calls nor ends: nothing to close */
        dsr1__item it = c->it[lo];
        int32_t t = dsr1__step(g, it.st, b);
        if (t < 0) return false;
        if (!g->st[t].ncalls && !g->st[t].final) {
            if (!dsr1__chart_begin(c) || !DSR1_GROW(c->it, c->cap, c->n + 1)) return false;
            c->it[c->n++] = (dsr1__item){(uint32_t)t, it.org};
            c->set[c->nset] = (uint32_t)c->n;
            return true;
        }
    }
    if (!dsr1__chart_begin(c)) return false;
    for (size_t i = lo; i < hi; i++) {
        int32_t t = dsr1__step(g, c->it[i].st, b);
        if (t >= 0) dsr1__chart_add(c, (uint32_t)t, c->it[i].org);
    }
    return dsr1__chart_close(c);
}
