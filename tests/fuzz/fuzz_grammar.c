/* libFuzzer target of the grammar engine: the grammar text and regex compilers on hostile
 * input (small limits, so each run stays fast), then a walk of the matcher over a small
 * synthetic vocabulary where every mask is checked against brute force (token allowed iff
 * advance over its bytes succeeds), forced bytes against the mask, and rollback.
 *
 * Input: byte 0 picks the compiler (even: grammar text, odd: regex); the text runs to the
 * first NUL; each byte after it steers one step of the walk (which allowed token to take,
 * or 0xff: roll back). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "grammar.h"

static const char *const extra[] = {
    "ab",   "abc",          "{\"",  "\":",      "\",\"",    "true",     "false", "null",     "12",
    "0.",   "e+",           "[]",   "{}",       "  ",       "\\n",      "\\u00", "\xc3\xa9", "\xc3",
    "\xa9", "\xe4\xb8\xad", "\xe4", "\xb8\xad", "a\"",      "\"}",      "\"]",   "\n\n",     "root",
    "-1",   "1,",           "},{",  "aaaa",     "\xf0\x9f", "\x98\x80",
};

static dsr1_grammar_vocab *vocab;
static int32_t nv, eos;
static const uint8_t *tb[256];
static uint32_t tl[256];

static void init_vocab(void)
{
    static uint8_t single[128];
    nv = 0;
    for (int c = 0; c < 128; c++) {
        single[c] = (uint8_t)c;
        if (c >= 32 || c == '\n' || c == '\t') {
            tb[nv] = &single[c];
            tl[nv++] = 1;
        }
    }
    for (size_t i = 0; i < sizeof(extra) / sizeof(extra[0]); i++) {
        tb[nv] = (const uint8_t *)extra[i];
        tl[nv++] = (uint32_t)strlen(extra[i]);
    }
    tb[nv] = NULL; /* a special token */
    tl[nv++] = 0;
    eos = nv++;
    tb[eos] = NULL;
    tl[eos] = 0;
    if (dsr1_grammar_vocab_create_raw(nv, tb, tl, eos, &vocab) != DSR1_OK) abort();
}

static bool bit(const uint32_t *mask, int32_t t)
{
    return (mask[t >> 5] >> (t & 31)) & 1;
}

static void walk(const dsr1_grammar *g, const uint8_t *ctl, size_t n)
{
    dsr1_matcher *m;
    if (dsr1_matcher_create(g, &m) != DSR1_OK) abort();
    uint32_t mask[16];
    int32_t allowed[256];
    int depth = 0;
    for (size_t s = 0; s < n && s < 32 && !dsr1_matcher_ended(m); s++) {
        if (ctl[s] == 0xff) {
            int k = depth < 3 ? depth : 3;
            if (dsr1_matcher_rollback(m, k) != DSR1_OK) abort();
            depth -= k;
            continue;
        }
        dsr1_matcher_mask(m, mask);
        int na = 0;
        for (int32_t t = 0; t < nv; t++) {
            bool ok;
            if (t == eos) {
                ok = dsr1_matcher_accepting(m);
            } else {
                dsr1_status st = tl[t] ? dsr1_matcher_advance(m, t) : DSR1_ERR_INVALID_ARG;
                if (st == DSR1_ERR_RANGE) goto out; /* too ambiguous: a limit, not a bug */
                ok = st == DSR1_OK;
                if (ok && dsr1_matcher_rollback(m, 1) != DSR1_OK) abort();
            }
            if (ok != bit(mask, t)) abort(); /* the mask disagrees with brute force */
            if (ok) allowed[na++] = t;
        }
        uint8_t forced[32];
        size_t nf = dsr1_matcher_forced_bytes(m, forced, sizeof(forced));
        if (nf) {
            for (int i = 0; i < na; i++) {
                size_t k = tl[allowed[i]] < nf ? tl[allowed[i]] : nf;
                if (allowed[i] == eos || memcmp(tb[allowed[i]], forced, k)) abort();
            }
            if (dsr1_matcher_advance_bytes(m, forced, nf) != DSR1_OK) abort();
            if (dsr1_matcher_rollback(m, 1) != DSR1_OK) abort();
        }
        if (!na) break;
        if (dsr1_matcher_advance(m, allowed[ctl[s] % na]) != DSR1_OK) abort();
        depth++;
    }
out:
    dsr1_matcher_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!vocab) init_vocab();
    if (size < 1) return 0;
    const uint8_t *text = data + 1;
    size_t len = 0;
    while (1 + len < size && text[len]) len++;
    const uint8_t *ctl = text + len + (1 + len < size);
    size_t nctl = size - (size_t)(ctl - data);
    dsr1_grammar_opts o = {
        .max_source = 4096, .max_rules = 200, .max_repeat = 64, .max_states = 20000};
    dsr1_grammar *g = NULL;
    dsr1_status st = data[0] & 1
                         ? dsr1_grammar_compile_regex(vocab, (const char *)text, len, &o, &g)
                         : dsr1_grammar_compile_ebnf(vocab, (const char *)text, len, &o, &g);
    if (st == DSR1_OK) {
        dsr1_grammar_stats stats;
        dsr1_grammar_get_stats(g, &stats);
        walk(g, ctl, nctl);
        dsr1_grammar_free(g);
    } else if (g) {
        abort(); /* no output on failure */
    }
    return 0;
}
