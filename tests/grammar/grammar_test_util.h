/* Helpers shared by the grammar engine's tests: a vocabulary of the 256 single bytes,
 * whole-text matching, the brute-force mask (token allowed iff advancing over its bytes
 * succeeds) and a random walk that checks masks and forced bytes at every step. */
#ifndef DSR1_GRAMMAR_TEST_UTIL_H
#define DSR1_GRAMMAR_TEST_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "grammar.h"

/* xorshift64* */
static inline uint64_t gt_rand(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

/* Tokens 0..255 are the single bytes, 256 is eos. */
static inline dsr1_grammar_vocab *gt_byte_vocab(void)
{
    static uint8_t b[256];
    const uint8_t *p[257];
    uint32_t l[257];
    for (int i = 0; i < 256; i++) b[i] = (uint8_t)i, p[i] = &b[i], l[i] = 1;
    p[256] = NULL;
    l[256] = 0;
    dsr1_grammar_vocab *v = NULL;
    assert_int_equal(dsr1_grammar_vocab_create_raw(257, p, l, 256, &v), DSR1_OK);
    return v;
}

/* Whether the whole text is a sentence of g. */
static inline bool gt_match(const dsr1_grammar *g, const char *text, size_t n)
{
    dsr1_matcher *m;
    assert_int_equal(dsr1_matcher_create(g, &m), DSR1_OK);
    bool ok = dsr1_matcher_advance_bytes(m, (const uint8_t *)text, n) == DSR1_OK &&
              dsr1_matcher_accepting(m);
    dsr1_matcher_free(m);
    return ok;
}

/* Checks the mask against advance + rollback for every token, and forced bytes against the
 * mask. Token bytes come from tb/tl (NULL/0 for specials). Returns the allowed count. */
static char gt_text[4096]; /* the walk's text so far, printed on failures */
static size_t gt_ntext;

static inline int gt_check_mask(dsr1_matcher *m, int32_t n, const uint8_t *const *tb,
                                const uint32_t *tl, int32_t eos, uint32_t *mask)
{
    dsr1_matcher_mask(m, mask);
    int allowed = 0;
    for (int32_t t = 0; t < n; t++) {
        bool in = (mask[t >> 5] >> (t & 31)) & 1;
        bool ok;
        if (t == eos) {
            ok = dsr1_matcher_accepting(m);
        } else if (!tl[t]) {
            ok = false;
        } else {
            ok = dsr1_matcher_advance(m, t) == DSR1_OK;
            if (ok) assert_int_equal(dsr1_matcher_rollback(m, 1), DSR1_OK);
        }
        if (in != ok) {
            fprintf(stderr, "token %d (len %u): mask %d, advance %d after '%.*s'\n", (int)t, tl[t],
                    in, ok, (int)gt_ntext, gt_text);
            fail();
        }
        allowed += ok;
    }
    if (!dsr1_matcher_ended(m) && !allowed)
        fprintf(stderr, "no token allowed after '%.*s'\n", (int)gt_ntext, gt_text);
    if (!dsr1_matcher_ended(m)) assert_true(allowed > 0);
    uint8_t forced[64];
    size_t nf = dsr1_matcher_forced_bytes(m, forced, sizeof(forced));
    if (nf) {
        assert_false(dsr1_matcher_accepting(m));
        for (int32_t t = 0; t < n; t++) {
            if (!((mask[t >> 5] >> (t & 31)) & 1) || t == eos) continue;
            size_t k = tl[t] < nf ? tl[t] : nf;
            assert_memory_equal(tb[t], forced, k);
        }
        assert_int_equal(dsr1_matcher_advance_bytes(m, forced, nf), DSR1_OK);
        assert_int_equal(dsr1_matcher_rollback(m, 1), DSR1_OK);
    }
    return allowed;
}

/* A random walk of `steps` tokens, checking every mask; prefers eos rarely. */
static inline void gt_random_walk(const dsr1_grammar *g, int32_t n, const uint8_t *const *tb,
                                  const uint32_t *tl, int32_t eos, uint64_t *seed, int steps)
{
    dsr1_matcher *m;
    assert_int_equal(dsr1_matcher_create(g, &m), DSR1_OK);
    uint32_t *mask = calloc(dsr1_grammar_mask_words(n), sizeof(uint32_t));
    int32_t *cand = malloc((size_t)n * sizeof(int32_t));
    gt_ntext = 0;
    for (int s = 0; s < steps && !dsr1_matcher_ended(m); s++) {
        gt_check_mask(m, n, tb, tl, eos, mask);
        int nc = 0;
        for (int32_t t = 0; t < n; t++)
            if ((mask[t >> 5] >> (t & 31)) & 1 && t != eos) cand[nc++] = t;
        bool take_eos = dsr1_matcher_accepting(m) && (nc == 0 || gt_rand(seed) % 8 == 0);
        int32_t t = take_eos ? eos : cand[gt_rand(seed) % (uint64_t)nc];
        assert_int_equal(dsr1_matcher_advance(m, t), DSR1_OK);
        if (t != eos && gt_ntext + tl[t] < sizeof(gt_text)) {
            memcpy(gt_text + gt_ntext, tb[t], tl[t]);
            gt_ntext += tl[t];
        }
    }
    free(mask);
    free(cand);
    dsr1_matcher_free(m);
}

#endif
