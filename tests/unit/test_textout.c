/* Text output tests on R1's tokenizer: the reasoning/content split at </think>, stop
 * strings spanning tokens (cut, never partly streamed), held prefixes released once they
 * cannot complete, UTF-8 characters split across tokens, EOS, stop ids and ignore_eos,
 * finish, and random streams whose deltas must add up to the text a naive reference
 * computes from the whole decoded sequence.
 *
 * usage: test_textout GOLDEN_DIR   (exit 77 when GOLDEN_DIR has no tokenizer) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "textout.h"
#include "tok_test_util.h"
#include "tokenizer.h"
#include "tokenizer_internal.h"

static char model_dir[256];
static dsr1_tokenizer *tok;
static int32_t eos, think_end, think_start;

/* ---- helpers ---- */

typedef struct {
    char *p;
    size_t n;
} str;

static void str_add(str *s, const char *p, size_t n)
{
    s->p = realloc(s->p, s->n + n + 1);
    memcpy(s->p + s->n, p, n);
    s->n += n;
    s->p[s->n] = '\0';
}

static int32_t *ids_add(int32_t *ids, size_t *n, int32_t id)
{
    ids = realloc(ids, (*n + 1) * sizeof(*ids));
    ids[(*n)++] = id;
    return ids;
}

static int32_t *encode_add(int32_t *ids, size_t *n, const char *text)
{
    int32_t *e;
    size_t k;
    assert_int_equal(dsr1_tokenizer_encode(tok, text, strlen(text), 0, &e, &k), DSR1_OK);
    for (size_t i = 0; i < k; i++) ids = ids_add(ids, n, e[i]);
    free(e);
    return ids;
}

/* One byte token per byte of text: characters split across tokens. */
static int32_t *bytes_add(int32_t *ids, size_t *n, const char *text)
{
    for (const char *c = text; *c; c++) ids = ids_add(ids, n, tok->byte_token[(uint8_t)*c]);
    return ids;
}

static dsr1_textout_params params(void)
{
    return (dsr1_textout_params){.skip_special = true, .eos_id = eos, .think_end_id = think_end};
}

typedef struct {
    str reasoning, content;
    bool stopped;
    char reason[DSR1_MAX_STOP_STRING_BYTES + 1];
} result;

static void check_delta(const dsr1_textout_delta *d, result *r)
{
    const char *parts[2] = {d->reasoning, d->content};
    size_t lens[2] = {d->reasoning_len, d->content_len};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(parts[i][lens[i]], '\0');
        assert_int_equal(dsr1_utf8_valid_prefix((const uint8_t *)parts[i], lens[i]), lens[i]);
    }
    str_add(&r->reasoning, d->reasoning, d->reasoning_len);
    str_add(&r->content, d->content, d->content_len);
    assert_true(d->stopped == (d->stop_reason != NULL));
    if (d->stopped) {
        r->stopped = true;
        snprintf(r->reason, sizeof(r->reason), "%s", d->stop_reason);
    }
}

/* Streams ids until a stop (then finish when asked); checks every delta and that they add
 * up to the whole text. The caller frees r's strings. */
static void run(const dsr1_textout_params *p, const int32_t *ids, size_t n, bool finish, result *r)
{
    memset(r, 0, sizeof(*r));
    str_add(&r->reasoning, "", 0);
    str_add(&r->content, "", 0);
    dsr1_textout *t;
    assert_int_equal(dsr1_textout_create(tok, p, &t), DSR1_OK);
    dsr1_textout_delta d;
    for (size_t i = 0; i < n && !r->stopped; i++) {
        assert_int_equal(dsr1_textout_push(t, ids[i], &d), DSR1_OK);
        check_delta(&d, r);
    }
    if (r->stopped) assert_int_equal(dsr1_textout_push(t, ids[0], &d), DSR1_ERR_INVALID_ARG);
    if (finish) {
        assert_int_equal(dsr1_textout_finish(t, &d), DSR1_OK);
        check_delta(&d, r);
    }
    size_t len;
    const char *all = dsr1_textout_reasoning(t, &len);
    assert_int_equal(len, r->reasoning.n);
    assert_memory_equal(all, r->reasoning.p, len);
    all = dsr1_textout_content(t, &len);
    assert_int_equal(len, r->content.n);
    assert_memory_equal(all, r->content.p, len);
    dsr1_textout_destroy(t);
}

static void result_free(result *r)
{
    free(r->reasoning.p);
    free(r->content.p);
}

/* Pushes one id and returns the content it released. */
static const char *push(dsr1_textout *t, int32_t id, dsr1_textout_delta *d)
{
    assert_int_equal(dsr1_textout_push(t, id, d), DSR1_OK);
    return d->content;
}

/* ---- tests ---- */

static void test_reasoning_split(void **state)
{
    (void)state;
    size_t n = 0;
    int32_t *ids = encode_add(NULL, &n, "Let me think: 2+2.\n</think>\n\nThe answer is 4.");
    dsr1_textout_params p = params();
    p.in_reasoning = true;
    result r;
    run(&p, ids, n, true, &r);
    assert_string_equal(r.reasoning.p, "Let me think: 2+2.\n");
    assert_string_equal(r.content.p, "\n\nThe answer is 4.");
    assert_false(r.stopped);
    result_free(&r);
    /* not in a think block, or no </think> in the vocabulary: everything is content */
    p.in_reasoning = false;
    run(&p, ids, n, true, &r);
    assert_string_equal(r.reasoning.p, "");
    assert_string_equal(r.content.p, "Let me think: 2+2.\n</think>\n\nThe answer is 4.");
    result_free(&r);
    p.in_reasoning = true;
    p.think_end_id = -1;
    run(&p, ids, n, true, &r);
    assert_string_equal(r.content.p, "Let me think: 2+2.\n</think>\n\nThe answer is 4.");
    result_free(&r);
    /* a stop string is looked for in each part, never across the boundary */
    const char *stop[] = {".\n\n"};
    p = params();
    p.in_reasoning = true;
    p.stop = stop;
    p.n_stop = 1;
    run(&p, ids, n, true, &r);
    assert_string_equal(r.reasoning.p, "Let me think: 2+2.\n");
    assert_string_equal(r.content.p, "\n\nThe answer is 4.");
    result_free(&r);
    free(ids);
}

/* R1-0528's template leaves the prompt outside a think block: the model opens it, with the
 * <think> token or (however it is tokenized) its text, maybe after whitespace. R1's
 * template opens it in the prompt (in_reasoning, above); the same params serve both. */
static void test_generation_opens_think(void **state)
{
    (void)state;
    dsr1_textout_params p = params();
    p.detect_think = true;
    p.think_start_id = think_start;
    result r;
    /* the token, a newline, reasoning, </think>, the answer */
    size_t n = 0;
    int32_t *ids = ids_add(NULL, &n, think_start);
    ids = encode_add(ids, &n, "\nLet me think.\n");
    ids = ids_add(ids, &n, think_end);
    ids = encode_add(ids, &n, "\n\nIt is 4.");
    run(&p, ids, n, true, &r);
    assert_string_equal(r.reasoning.p, "Let me think.\n");
    assert_string_equal(r.content.p, "\n\nIt is 4.");
    result_free(&r);
    /* the same with R1's template: the prompt opened the block, the model does not */
    dsr1_textout_params q = p;
    q.in_reasoning = true;
    run(&q, ids + 2, n - 2, true, &r);
    assert_string_equal(r.reasoning.p, "Let me think.\n");
    assert_string_equal(r.content.p, "\n\nIt is 4.");
    result_free(&r);
    /* without detect_think the opener is content, as before */
    q = params();
    run(&q, ids, n, true, &r);
    assert_string_equal(r.reasoning.p, "");
    assert_non_null(strstr(r.content.p, "<think>"));
    result_free(&r);
    free(ids);
    /* the opener as text, one byte per token, after whitespace */
    n = 0;
    ids = bytes_add(NULL, &n, " \n<think>\nhmm");
    ids = ids_add(ids, &n, think_end);
    ids = bytes_add(ids, &n, "ok");
    run(&p, ids, n, true, &r);
    assert_string_equal(r.reasoning.p, "hmm");
    assert_string_equal(r.content.p, "ok");
    result_free(&r);
    free(ids);
    /* whitespace, then the token */
    n = 0;
    ids = bytes_add(NULL, &n, "\n");
    ids = ids_add(ids, &n, think_start);
    ids = bytes_add(ids, &n, "a");
    ids = ids_add(ids, &n, think_end);
    ids = bytes_add(ids, &n, "b");
    run(&p, ids, n, true, &r);
    assert_string_equal(r.reasoning.p, "a");
    assert_string_equal(r.content.p, "b");
    result_free(&r);
    free(ids);
    /* text that only begins like the opener is content, held until decided */
    const char *texts[] = {"<thinking about it", "<thi", "Hello <think>", "  <b>"};
    for (size_t k = 0; k < sizeof(texts) / sizeof(*texts); k++) {
        n = 0;
        ids = bytes_add(NULL, &n, texts[k]);
        run(&p, ids, n, true, &r);
        assert_string_equal(r.reasoning.p, "");
        assert_string_equal(r.content.p, texts[k]);
        result_free(&r);
        free(ids);
    }
    /* held text is not streamed before it is decided */
    dsr1_textout *t;
    dsr1_textout_delta d;
    assert_int_equal(dsr1_textout_create(tok, &p, &t), DSR1_OK);
    n = 0;
    ids = bytes_add(NULL, &n, "<thX");
    assert_string_equal(push(t, ids[0], &d), "");
    assert_string_equal(push(t, ids[1], &d), "");
    assert_string_equal(push(t, ids[2], &d), "");
    assert_string_equal(push(t, ids[3], &d), "<thX");
    dsr1_textout_destroy(t);
    free(ids);
    /* EOS right after the opener: an empty reasoning, nothing else */
    n = 0;
    ids = ids_add(NULL, &n, think_start);
    ids = ids_add(ids, &n, eos);
    run(&p, ids, n, false, &r);
    assert_true(r.stopped);
    assert_string_equal(r.reasoning.p, "");
    assert_string_equal(r.content.p, "");
    result_free(&r);
    free(ids);
}

static void test_stop_string_across_tokens(void **state)
{
    (void)state;
    const char *stop[] = {"never", "STOP here"};
    dsr1_textout_params p = params();
    p.stop = stop;
    p.n_stop = 2;
    for (int bytes = 0; bytes < 2; bytes++) {
        size_t n = 0;
        int32_t *ids = encode_add(NULL, &n, "abc ");
        ids = bytes ? bytes_add(ids, &n, "STOP here and more") : encode_add(ids, &n, "STOP here");
        result r;
        run(&p, ids, n, true, &r);
        assert_string_equal(r.content.p, "abc ");
        assert_true(r.stopped);
        assert_string_equal(r.reason, "STOP here");
        result_free(&r);
        free(ids);
    }
    /* the stop string that completes first wins, and what follows it never shows */
    const char *two[] = {"xyz", "y"};
    p.stop = two;
    size_t n = 0;
    int32_t *ids = encode_add(NULL, &n, "wxyz");
    result r;
    run(&p, ids, n, false, &r);
    assert_string_equal(r.content.p, "wx");
    assert_string_equal(r.reason, "y");
    result_free(&r);
    free(ids);
}

static void test_prefix_released(void **state)
{
    (void)state;
    const char *stop[] = {"STOP here"};
    dsr1_textout_params p = params();
    p.stop = stop;
    p.n_stop = 1;
    dsr1_textout *t;
    dsr1_textout_delta d;
    assert_int_equal(dsr1_textout_create(tok, &p, &t), DSR1_OK);
    str seen = {0};
    const char *text = "abc STOP there";
    for (size_t i = 0; i < strlen(text); i++) {
        const char *s = push(t, tok->byte_token[(uint8_t)text[i]], &d);
        str_add(&seen, s, d.content_len);
        if (i == 3) assert_string_equal(seen.p, "abc ");       /* a space: released */
        if (i == 8) assert_string_equal(seen.p, "abc ");       /* "STOP ": held */
        if (i == 9) assert_string_equal(seen.p, "abc STOP t"); /* 't' decides it */
    }
    assert_string_equal(seen.p, text);
    dsr1_textout_destroy(t);
    free(seen.p);
    /* one token whose text ends with all but the last byte of the stop string */
    const char *tail[] = {"｜>X"};
    p.stop = tail;
    p.skip_special = false;
    p.ignore_eos = true;
    assert_int_equal(dsr1_textout_create(tok, &p, &t), DSR1_OK);
    assert_string_equal(push(t, eos, &d), "<｜end▁of▁sentence");
    assert_string_equal(push(t, tok->byte_token['X'], &d), "");
    assert_true(d.stopped);
    dsr1_textout_destroy(t);
    p = params();
    p.stop = stop;
    p.n_stop = 1;
    /* held text (here all but the last byte of the stop string) is released by finish */
    size_t n = 0;
    int32_t *ids = bytes_add(NULL, &n, "abc STOP her");
    result r;
    run(&p, ids, n, false, &r);
    assert_string_equal(r.content.p, "abc ");
    result_free(&r);
    run(&p, ids, n, true, &r);
    assert_string_equal(r.content.p, "abc STOP her");
    assert_false(r.stopped);
    result_free(&r);
    free(ids);
}

static void test_utf8_split(void **state)
{
    (void)state;
    dsr1_textout_params p = params();
    dsr1_textout *t;
    dsr1_textout_delta d;
    assert_int_equal(dsr1_textout_create(tok, &p, &t), DSR1_OK);
    assert_string_equal(push(t, tok->byte_token[0xE4], &d), "");
    assert_string_equal(push(t, tok->byte_token[0xBD], &d), "");
    assert_string_equal(push(t, tok->byte_token[0xA0], &d), "你");
    dsr1_textout_destroy(t);
    /* the UTF-8 hold-back and the stop-string hold-back together */
    static const struct {
        const char *stop, *text, *want;
        bool stopped;
    } cases[] = {
        {"你好", "a你好b", "a", true}, {"好", "你好", "你", true},
        {"a你", "xa你", "x", true},    {"a你", "xa好!", "xa好!", false},
        {"é!", "café!", "caf", true},  {"\xEF\xBF\xBD", "ok\xE4!", "ok", true},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *stop[] = {cases[i].stop};
        p.stop = stop;
        p.n_stop = 1;
        size_t n = 0;
        int32_t *ids = bytes_add(NULL, &n, cases[i].text);
        result r;
        run(&p, ids, n, true, &r);
        assert_string_equal(r.content.p, cases[i].want);
        assert_true(r.stopped == cases[i].stopped);
        result_free(&r);
        free(ids);
    }
}

static void test_stop_ids(void **state)
{
    (void)state;
    size_t n = 0;
    int32_t *ids = encode_add(NULL, &n, "Hello");
    ids = ids_add(ids, &n, tok->byte_token[0xE4]); /* half a character, then EOS */
    ids = ids_add(ids, &n, eos);
    ids = encode_add(ids, &n, " world");
    dsr1_textout_params p = params();
    p.skip_special = false;
    result r;
    run(&p, ids, n, true, &r);
    assert_string_equal(r.content.p, "Hello\xEF\xBF\xBD"); /* EOS's own text is not emitted */
    assert_true(r.stopped);
    char want[16];
    snprintf(want, sizeof(want), "%d", (int)eos);
    assert_string_equal(r.reason, want);
    result_free(&r);
    /* ignore_eos: EOS is an ordinary token, its text shown unless special tokens are skipped */
    p.ignore_eos = true;
    run(&p, ids, n, true, &r);
    assert_string_equal(r.content.p, "Hello\xEF\xBF\xBD<｜end▁of▁sentence｜> world");
    assert_false(r.stopped);
    result_free(&r);
    p.skip_special = true;
    run(&p, ids, n, true, &r);
    assert_string_equal(r.content.p, "Hello\xEF\xBF\xBD world");
    result_free(&r);
    /* the request's stop ids */
    int32_t stop_id = ids[n - 1];
    p.stop_ids = &stop_id;
    p.n_stop_ids = 1;
    run(&p, ids, n, true, &r);
    assert_string_equal(r.content.p, "Hello\xEF\xBF\xBD");
    snprintf(want, sizeof(want), "%d", (int)stop_id);
    assert_string_equal(r.reason, want);
    result_free(&r);
    free(ids);
}

static void test_errors(void **state)
{
    (void)state;
    dsr1_textout *t;
    dsr1_textout_params p = params();
    const char *bad[] = {"ok", ""};
    p.stop = bad;
    p.n_stop = 2;
    assert_int_equal(dsr1_textout_create(tok, &p, &t), DSR1_ERR_INVALID_ARG);
    bad[1] = "\xC3(";
    assert_int_equal(dsr1_textout_create(tok, &p, &t), DSR1_ERR_INVALID_ARG);
    assert_non_null(strstr(dsr1_errmsg(), "UTF-8"));
    char long_stop[DSR1_MAX_STOP_STRING_BYTES + 2];
    memset(long_stop, 'x', sizeof(long_stop) - 1);
    long_stop[sizeof(long_stop) - 1] = '\0';
    bad[1] = long_stop;
    assert_int_equal(dsr1_textout_create(tok, &p, &t), DSR1_ERR_INVALID_ARG);
    p.n_stop = DSR1_MAX_STOP_STRINGS + 1;
    assert_int_equal(dsr1_textout_create(tok, &p, &t), DSR1_ERR_INVALID_ARG);
    p = params();
    int32_t stop_id = 1 << 30;
    p.stop_ids = &stop_id;
    p.n_stop_ids = 1;
    assert_int_equal(dsr1_textout_create(tok, &p, &t), DSR1_ERR_INVALID_ARG);
    p = params();
    p.eos_id = -5;
    assert_int_equal(dsr1_textout_create(tok, &p, &t), DSR1_ERR_INVALID_ARG);
    /* a negative id leaves the stream as it was */
    p = params();
    assert_int_equal(dsr1_textout_create(tok, &p, &t), DSR1_OK);
    dsr1_textout_delta d;
    push(t, tok->byte_token[0xE4], &d);
    assert_int_equal(dsr1_textout_push(t, -1, &d), DSR1_ERR_RANGE);
    /* an id the model has but the tokenizer lacks (R1: 129280 > tokenizer ids) has no text */
    assert_string_equal(push(t, dsr1_tokenizer_vocab_size(tok) + 7, &d), "");
    push(t, tok->byte_token[0xBD], &d);
    assert_string_equal(push(t, tok->byte_token[0xA0], &d), "你");
    assert_int_equal(dsr1_textout_finish(t, &d), DSR1_OK);
    assert_int_equal(dsr1_textout_push(t, eos, &d), DSR1_ERR_INVALID_ARG);
    assert_int_equal(dsr1_textout_finish(t, &d), DSR1_OK); /* again: nothing more */
    assert_int_equal(d.content_len, 0);
    dsr1_textout_destroy(t);
}

/* ---- random streams against a reference on the whole text ---- */

/* text cut at the stop string that completes first (at the same end, the longest), by
 * trying every position */
static bool ref_cut(char *text, const char *const *stop, int n_stop)
{
    size_t best_end = SIZE_MAX, best_start = 0;
    for (size_t at = 0; text[at]; at++)
        for (int i = 0; i < n_stop; i++) {
            size_t end = at + strlen(stop[i]);
            if (strncmp(text + at, stop[i], strlen(stop[i])) == 0 &&
                (end < best_end || (end == best_end && at < best_start))) {
                best_end = end;
                best_start = at;
            }
        }
    if (best_end == SIZE_MAX) return false;
    text[best_start] = '\0';
    return true;
}

static char *decode(const int32_t *ids, size_t n, bool skip_special)
{
    char *s = NULL;
    assert_int_equal(dsr1_tokenizer_decode(tok, ids, n, skip_special, &s, NULL), DSR1_OK);
    return s;
}

/* A random character-boundary substring of s (or a string absent from it). */
static void random_stop(tok_rng *g, const char *s, char *out)
{
    size_t n = strlen(s), a = n ? tok_rng_below(g, (uint32_t)n) : 0;
    size_t len = 1 + tok_rng_below(g, 8);
    if (n == 0 || tok_rng_below(g, 4) == 0) {
        strcpy(out, "\x01never\x02");
        return;
    }
    while (a > 0 && ((uint8_t)s[a] & 0xC0) == 0x80) a--;
    size_t b = a + len < n ? a + len : n;
    while (b < n && ((uint8_t)s[b] & 0xC0) == 0x80) b++;
    memcpy(out, s + a, b - a);
    out[b - a] = '\0';
}

static void test_random_streams(void **state)
{
    (void)state;
    tok_rng g = {0x7e47};
    for (int trial = 0; trial < 400; trial++) {
        size_t n = 0;
        int32_t *ids = NULL;
        int pieces = 1 + (int)tok_rng_below(&g, 12);
        for (int k = 0; k < pieces; k++) {
            char piece[1100];
            size_t len = 0;
            tok_test_random_piece(&g, piece, &len);
            piece[len] = '\0';
            if (strlen(piece) != len) continue; /* no NUL inside: stop strings are C strings */
            ids = tok_rng_below(&g, 3) ? encode_add(ids, &n, piece) : bytes_add(ids, &n, piece);
            if (tok_rng_below(&g, 8) == 0) ids = ids_add(ids, &n, think_end);
        }
        if (n == 0) ids = encode_add(ids, &n, "x");
        dsr1_textout_params p = params();
        p.in_reasoning = tok_rng_below(&g, 2);
        p.skip_special = tok_rng_below(&g, 2);
        p.ignore_eos = tok_rng_below(&g, 2);
        /* the reference: ids up to the first stop id, split at the first </think> */
        size_t end = 0, split = SIZE_MAX;
        while (end < n && !(ids[end] == eos && !p.ignore_eos)) {
            if (ids[end] == think_end && p.in_reasoning && split == SIZE_MAX) split = end;
            end++;
        }
        size_t r_end = !p.in_reasoning ? 0 : split < end ? split : end;
        size_t c_begin = !p.in_reasoning ? 0 : split < end ? split + 1 : end;
        char *reasoning = decode(ids, r_end, p.skip_special);
        char *content = decode(ids + c_begin, end - c_begin, p.skip_special);
        char stops[4][DSR1_MAX_STOP_STRING_BYTES + 1];
        const char *stop[4];
        p.n_stop = (int)tok_rng_below(&g, 5);
        for (int i = 0; i < p.n_stop; i++) {
            random_stop(&g, tok_rng_below(&g, 2) ? content : reasoning, stops[i]);
            stop[i] = stops[i];
        }
        p.stop = stop;
        bool stopped = ref_cut(reasoning, stop, p.n_stop);
        if (stopped)
            content[0] = '\0';
        else
            stopped = ref_cut(content, stop, p.n_stop);
        result r;
        run(&p, ids, n, true, &r);
        assert_string_equal(r.reasoning.p, reasoning);
        assert_string_equal(r.content.p, content);
        assert_true(r.stopped == (stopped || end < n));
        result_free(&r);
        free(reasoning);
        free(content);
        free(ids);
    }
}

/* The ids the tests look for, once the tokenizer is loaded. */
static int find_ids(void)
{
    eos = dsr1_tokenizer_token_id(tok, "<｜end▁of▁sentence｜>");
    think_end = dsr1_tokenizer_token_id(tok, "</think>");
    think_start = dsr1_tokenizer_token_id(tok, "<think>");
    return eos < 0 || think_end < 0 || think_start < 0 ? -1 : 0;
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reasoning_split),
        cmocka_unit_test(test_generation_opens_think),
        cmocka_unit_test(test_stop_string_across_tokens),
        cmocka_unit_test(test_prefix_released),
        cmocka_unit_test(test_utf8_split),
        cmocka_unit_test(test_stop_ids),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_random_streams),
    };
    return tok_test_main(argc, argv, tests, sizeof(tests) / sizeof(tests[0]), model_dir,
                         sizeof(model_dir), &tok, find_ids);
}
