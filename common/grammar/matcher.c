/* One request's position in its grammar: the Earley chart of the text so far (one set
 * per byte, kept whole so rollback is a truncation), the advance history, masks, and
 * jump-forward bytes. */
#include <stdlib.h>
#include <string.h>

#include "grammar_internal.h"
#include "utf8.h"

struct dsr1_matcher {
    const dsr1_grammar *g;
    dsr1__chart ch;
    dsr1__scratch *scratch;
    uint32_t *hist; /* chart sets before each advance */
    uint8_t *hist_ended;
    size_t nhist, hcap, hecap;
    bool ended;
};

dsr1_status dsr1_matcher_create(const dsr1_grammar *g, dsr1_matcher **out)
{
    if (!g || !out) return dsr1_error(DSR1_ERR_INVALID_ARG, "matcher: no grammar");
    dsr1_matcher *m = calloc(1, sizeof(*m));
    if (!m) return dsr1_error(DSR1_ERR_NOMEM, "matcher: out of memory");
    m->g = g;
    dsr1__chart_init(&m->ch, g);
    m->scratch = dsr1__scratch_new(g);
    if (!m->scratch || !dsr1__chart_begin(&m->ch) ||
        !dsr1__chart_add(&m->ch, g->rules[g->root].start, 0) || !dsr1__chart_close(&m->ch)) {
        dsr1_matcher_free(m);
        return dsr1_error(DSR1_ERR_NOMEM, "matcher: out of memory");
    }
    *out = m;
    return DSR1_OK;
}

void dsr1_matcher_free(dsr1_matcher *m)
{
    if (!m) return;
    dsr1__chart_free(&m->ch);
    dsr1__scratch_free(m->scratch);
    free(m->hist);
    free(m->hist_ended);
    free(m);
}

static bool accepting(const dsr1_matcher *m)
{
    const dsr1__chart *c = &m->ch;
    const dsr1_grammar *g = m->g;
    uint32_t cur = (uint32_t)c->nset - 1;
    for (size_t i = c->set[cur]; i < c->set[cur + 1]; i++) {
        dsr1__item it = c->it[i];
        if (it.org == 0 && g->st[it.st].final && g->st[it.st].rule == g->root) return true;
    }
    return false;
}

bool dsr1_matcher_accepting(const dsr1_matcher *m)
{
    return m && !m->ended && accepting(m);
}

bool dsr1_matcher_ended(const dsr1_matcher *m)
{
    return m && m->ended;
}

uint64_t dsr1_matcher_mask_work(const dsr1_matcher *m)
{
    return m ? dsr1__scratch_work(m->scratch) : 0;
}

void dsr1_matcher_mask(dsr1_matcher *m, uint32_t *mask)
{
    const dsr1_grammar_vocab *v = m->g->vocab;
    if (m->ended) {
        memset(mask, 0, dsr1_grammar_mask_words(v->n) * sizeof(uint32_t));
    } else {
        dsr1__mask_compute(m->g, &m->ch, m->scratch, mask);
        if (!accepting(m)) {
            mask[v->eos >> 5] &= ~(1u << (v->eos & 31));
            return;
        }
    }
    mask[v->eos >> 5] |= 1u << (v->eos & 31);
}

static bool push_hist(dsr1_matcher *m)
{
    size_t c1 = m->hcap, c2 = m->hecap;
    if (!DSR1_GROW(m->hist, c1, m->nhist + 1) || !DSR1_GROW(m->hist_ended, c2, m->nhist + 1))
        return false;
    m->hcap = c1;
    m->hecap = c2;
    m->hist[m->nhist] = (uint32_t)m->ch.nset;
    m->hist_ended[m->nhist] = m->ended;
    m->nhist++;
    return true;
}

/* Scans bytes; on failure the chart is as before and the status says why. */
static dsr1_status scan_bytes(dsr1_matcher *m, const uint8_t *b, size_t n, int32_t token)
{
    size_t nset0 = m->ch.nset;
    for (size_t i = 0; i < n; i++) {
        if (!dsr1__chart_scan(&m->ch, b[i])) {
            bool oom = m->ch.oom, over = m->ch.overflow;
            m->ch.oom = m->ch.overflow = false;
            dsr1__chart_truncate(&m->ch, nset0);
            if (over)
                return dsr1_error(DSR1_ERR_RANGE,
                                  "matcher: the grammar is too ambiguous here (more than %d "
                                  "parser items at byte %zu)",
                                  DSR1__MAX_SET_ITEMS, i);
            if (oom) return dsr1_error(DSR1_ERR_NOMEM, "matcher: out of memory");
            if (token >= 0)
                return dsr1_error(DSR1_ERR_INVALID_ARG,
                                  "matcher: token %d is not allowed by the grammar here "
                                  "(byte %zu of %zu)",
                                  (int)token, i, n);
            return dsr1_error(DSR1_ERR_INVALID_ARG,
                              "matcher: byte %zu (0x%02x) is not allowed by the grammar here", i,
                              b[i]);
        }
    }
    return DSR1_OK;
}

dsr1_status dsr1_matcher_advance(dsr1_matcher *m, int32_t token)
{
    const dsr1_grammar_vocab *v = m->g->vocab;
    if (m->ended) return dsr1_error(DSR1_ERR_INVALID_ARG, "matcher: already ended");
    if (token < 0 || token >= v->n)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "matcher: token %d out of range", (int)token);
    if (token == v->eos) {
        if (!accepting(m))
            return dsr1_error(DSR1_ERR_INVALID_ARG,
                              "matcher: end of sequence before the grammar is complete");
        if (!push_hist(m)) return dsr1_error(DSR1_ERR_NOMEM, "matcher: out of memory");
        m->ended = true;
        return DSR1_OK;
    }
    if (!v->len[token])
        return dsr1_error(DSR1_ERR_INVALID_ARG, "matcher: special token %d never matches text",
                          (int)token);
    if (!push_hist(m)) return dsr1_error(DSR1_ERR_NOMEM, "matcher: out of memory");
    dsr1_status st = scan_bytes(m, v->bytes + v->off[token], v->len[token], token);
    if (st) m->nhist--;
    return st;
}

dsr1_status dsr1_matcher_advance_bytes(dsr1_matcher *m, const uint8_t *bytes, size_t n)
{
    if (m->ended) return dsr1_error(DSR1_ERR_INVALID_ARG, "matcher: already ended");
    if (n && !bytes) return dsr1_error(DSR1_ERR_INVALID_ARG, "matcher: no bytes");
    const uint8_t *ff = n ? memchr(bytes, DSR1__SPECIAL_BYTE, n) : NULL;
    if (ff) /* only dsr1_matcher_advance consumes special tokens */
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "matcher: byte %zu (0xff) is not text (special tokens are tokens)",
                          (size_t)(ff - bytes));
    if (!push_hist(m)) return dsr1_error(DSR1_ERR_NOMEM, "matcher: out of memory");
    dsr1_status st = scan_bytes(m, bytes, n, -1);
    if (st) m->nhist--;
    return st;
}

dsr1_status dsr1_matcher_rollback(dsr1_matcher *m, int n)
{
    if (n < 0 || (size_t)n > m->nhist)
        return dsr1_error(DSR1_ERR_RANGE, "matcher: cannot roll back %d advances (%zu kept)", n,
                          m->nhist);
    if (n == 0) return DSR1_OK;
    m->nhist -= (size_t)n;
    dsr1__chart_truncate(&m->ch, m->hist[m->nhist]);
    m->ended = m->hist_ended[m->nhist];
    return DSR1_OK;
}

size_t dsr1_matcher_forced_bytes(dsr1_matcher *m, uint8_t *out, size_t max)
{
    if (m->ended) return 0;
    const dsr1_grammar *g = m->g;
    dsr1__chart *c = &m->ch;
    size_t nset0 = c->nset, n = 0;
    while (n < max && !accepting(m)) {
        uint32_t cur = (uint32_t)c->nset - 1;
        int only = -1;
        bool many = false;
        for (int b = 0; b < 256 && !many; b++) {
            for (size_t i = c->set[cur]; i < c->set[cur + 1]; i++) {
                if (dsr1__step(g, c->it[i].st, (uint8_t)b) >= 0) {
                    if (only >= 0) many = true;
                    only = b;
                    break;
                }
            }
        }
        /* a special token is a token, not text: forced bytes stop before it */
        if (many || only < 0 || only == (int)DSR1__SPECIAL_BYTE ||
            !dsr1__chart_scan(c, (uint8_t)only))
            break;
        out[n++] = (uint8_t)only;
    }
    dsr1__chart_truncate(c, nset0);
    c->oom = false;
    /* whole characters only: the caller tokenizes the text */
    return n - dsr1_utf8_incomplete_tail(out, n);
}
