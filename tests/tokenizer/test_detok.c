/* Streaming detokenizer tests: text is emitted only as complete UTF-8, the concatenation
 * of everything emitted equals dsr1_tokenizer_decode() of the whole sequence (random id
 * sequences, with and without special tokens), errors leave the stream intact.
 *
 * usage: test_detok GOLDEN_DIR   (exit 77 when GOLDEN_DIR has no tokenizer) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "detok.h"
#include "tok_test_util.h"
#include "tokenizer.h"
#include "tokenizer_internal.h"

static char model_dir[256];
static dsr1_tokenizer *tok;

static bool valid_utf8(const char *s, size_t n)
{
    return dsr1_utf8_valid_prefix((const uint8_t *)s, n) == n;
}

/* Streams ids through a detokenizer; returns the concatenated text (malloc'd). */
static char *stream(const int32_t *ids, size_t n, unsigned flags, size_t *len)
{
    dsr1_detok *d;
    assert_int_equal(dsr1_detok_create(tok, flags, &d), DSR1_OK);
    size_t cap = 64, k = 0;
    char *all = malloc(cap);
    for (size_t i = 0; i <= n; i++) {
        const char *text;
        size_t tl;
        if (i < n)
            assert_int_equal(dsr1_detok_push(d, ids[i], &text, &tl), DSR1_OK);
        else
            assert_int_equal(dsr1_detok_flush(d, &text, &tl), DSR1_OK);
        assert_true(valid_utf8(text, tl)); /* never a broken character */
        assert_int_equal(text[tl], '\0');
        while (k + tl + 1 > cap) all = realloc(all, cap *= 2);
        memcpy(all + k, text, tl);
        k += tl;
        all[k] = '\0';
    }
    assert_int_equal(dsr1_detok_pending(d), 0);
    dsr1_detok_free(d);
    *len = k;
    return all;
}

static void test_split_character(void **state)
{
    (void)state;
    dsr1_detok *d;
    const char *text;
    size_t len;
    assert_int_equal(dsr1_detok_create(tok, 0, &d), DSR1_OK);
    /* 你 = E4 BD A0, one byte token at a time */
    assert_int_equal(dsr1_detok_push(d, tok->byte_token[0xE4], &text, &len), DSR1_OK);
    assert_int_equal(len, 0);
    assert_int_equal(dsr1_detok_pending(d), 1);
    assert_int_equal(dsr1_detok_push(d, tok->byte_token[0xBD], &text, &len), DSR1_OK);
    assert_int_equal(len, 0);
    assert_int_equal(dsr1_detok_pending(d), 2);
    /* an id out of range is an error and does not disturb the held bytes */
    assert_int_equal(dsr1_detok_push(d, -3, &text, &len), DSR1_ERR_RANGE);
    assert_int_equal(dsr1_detok_push(d, 1 << 30, &text, &len), DSR1_ERR_RANGE);
    assert_int_equal(dsr1_detok_pending(d), 2);
    assert_int_equal(dsr1_detok_push(d, tok->byte_token[0xA0], &text, &len), DSR1_OK);
    assert_string_equal(text, "你");
    assert_int_equal(dsr1_detok_pending(d), 0);
    /* a lead byte followed by ASCII: the lead byte is U+FFFD at once, then the letter */
    assert_int_equal(dsr1_detok_push(d, tok->byte_token[0xE4], &text, &len), DSR1_OK);
    assert_int_equal(dsr1_detok_push(d, tok->byte_token['a'], &text, &len), DSR1_OK);
    assert_string_equal(text, "\xEF\xBF\xBD"
                              "a");
    /* held bytes at the end of the stream come out of flush as U+FFFD */
    assert_int_equal(dsr1_detok_push(d, tok->byte_token[0xF0], &text, &len), DSR1_OK);
    assert_int_equal(dsr1_detok_push(d, tok->byte_token[0x9F], &text, &len), DSR1_OK);
    assert_int_equal(len, 0);
    assert_int_equal(dsr1_detok_flush(d, &text, &len), DSR1_OK);
    assert_string_equal(text, "\xEF\xBF\xBD");
    assert_int_equal(dsr1_detok_flush(d, &text, &len), DSR1_OK);
    assert_int_equal(len, 0);
    /* reset drops held bytes */
    assert_int_equal(dsr1_detok_push(d, tok->byte_token[0xE4], &text, &len), DSR1_OK);
    dsr1_detok_reset(d);
    assert_int_equal(dsr1_detok_push(d, tok->byte_token['b'], &text, &len), DSR1_OK);
    assert_string_equal(text, "b");
    dsr1_detok_free(d);
}

/* Regression (found by fuzz_tokenizer under UBSan): a skipped special token as the very
 * first id made the detokenizer memcpy from its not-yet-allocated buffer. */
static void test_first_id_skipped(void **state)
{
    (void)state;
    dsr1_detok *d;
    const char *text;
    size_t len = 99;
    assert_int_equal(dsr1_detok_create(tok, DSR1_DETOK_SKIP_SPECIAL, &d), DSR1_OK);
    assert_int_equal(dsr1_detok_push(d, 1, &text, &len), DSR1_OK);
    assert_int_equal(len, 0);
    assert_string_equal(text, "");
    assert_int_equal(dsr1_detok_flush(d, &text, &len), DSR1_OK);
    assert_int_equal(len, 0);
    dsr1_detok_free(d);
}

static void test_special_tokens(void **state)
{
    (void)state;
    int32_t hi = dsr1_tokenizer_token_id(tok, "hi");
    int32_t ids[] = {0, 128803, hi, 128798, 1};
    size_t len;
    char *s = stream(ids, 5, 0, &len);
    assert_string_equal(s, "<｜begin▁of▁sentence｜><｜User｜>hi<think><｜end▁of▁sentence｜>");
    free(s);
    s = stream(ids, 5, DSR1_DETOK_SKIP_SPECIAL, &len);
    /* in R1 only BOS/EOS-like tokens are special; <｜User｜> and <think> are not */
    assert_string_equal(s, "<｜User｜>hi<think>");
    free(s);
}

/* Random ids, biased towards single-byte tokens (broken characters) and added tokens. */
static void test_matches_decode(void **state)
{
    (void)state;
    tok_rng r = {2024};
    int32_t ids[64];
    int32_t nv = dsr1_tokenizer_vocab_size(tok);
    for (int t = 0; t < 3000; t++) {
        size_t n = tok_rng_below(&r, 64);
        for (size_t i = 0; i < n; i++) {
            uint32_t k = tok_rng_below(&r, 4);
            ids[i] = k == 0   ? tok->byte_token[tok_rng_below(&r, 256)]
                     : k == 1 ? 128000 + (int32_t)tok_rng_below(&r, (uint32_t)(nv - 128000))
                              : (int32_t)tok_rng_below(&r, 128000);
        }
        for (int skip = 0; skip < 2; skip++) {
            char *want;
            size_t wlen, glen;
            assert_int_equal(dsr1_tokenizer_decode(tok, ids, n, skip, &want, &wlen), DSR1_OK);
            char *got = stream(ids, n, skip ? DSR1_DETOK_SKIP_SPECIAL : 0, &glen);
            assert_int_equal(glen, wlen);
            assert_memory_equal(got, want, wlen);
            free(got);
            free(want);
        }
    }
}

/* Encoding real text and streaming it back gives the text, piece by piece. */
static void test_roundtrip_text(void **state)
{
    (void)state;
    const char *s =
        "emoji 🚀🔥👨‍👩‍👧 中文字符 ελληνικά <think>\nx\n</think> done";
    int32_t *ids;
    size_t n, len;
    assert_int_equal(dsr1_tokenizer_encode(tok, s, strlen(s), 0, &ids, &n), DSR1_OK);
    char *got = stream(ids, n, 0, &len);
    assert_string_equal(got, s);
    free(got);
    free(ids);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_character), cmocka_unit_test(test_first_id_skipped),
        cmocka_unit_test(test_special_tokens),  cmocka_unit_test(test_matches_decode),
        cmocka_unit_test(test_roundtrip_text),
    };
    return tok_test_main(argc, argv, tests, sizeof(tests) / sizeof(tests[0]), model_dir,
                         sizeof(model_dir), &tok, NULL);
}
