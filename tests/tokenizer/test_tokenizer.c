/* Tokenizer tests: every case of ../shared/golden/tokenizer-cases.json (ids and decoded
 * text from Hugging Face's tokenizers), round trips, the two BPE implementations against
 * each other, speed on a 100 KB word, robustness (invalid UTF-8, NUL, 10 MB, bad ids),
 * concurrent encodes, and loader errors / added-token flags on small synthetic
 * tokenizer.json files.
 *
 * usage: test_tokenizer GOLDEN_DIR   (exit 77 when GOLDEN_DIR has no tokenizer) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tok_test_util.h"
#include "tokenizer.h"
#include "tokenizer_internal.h"

static const char *golden_dir;
static char model_dir[256];
static dsr1_tokenizer *tok; /* the R1 tokenizer, loaded once for the group */

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void encode_ok(const char *s, size_t len, unsigned flags, int32_t **ids, size_t *n)
{
    dsr1_status st = dsr1_tokenizer_encode(tok, s, len, flags, ids, n);
    if (st) fail_msg("encode failed: %s", dsr1_errmsg());
}

static void assert_roundtrip(const char *s, size_t len)
{
    int32_t *ids;
    size_t n, dlen;
    char *dec;
    encode_ok(s, len, 0, &ids, &n);
    assert_int_equal(dsr1_tokenizer_decode(tok, ids, n, false, &dec, &dlen), DSR1_OK);
    assert_int_equal(dlen, len);
    assert_memory_equal(dec, s, len);
    free(ids);
    free(dec);
}

static void test_golden_cases(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof(path), "%s/tokenizer-cases.json", golden_dir);
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!root) fail_msg("%s: %s", path, err.text);
    json_t *cases = json_object_get(root, "cases");
    size_t i, pass = 0;
    json_t *c;
    json_array_foreach(cases, i, c)
    {
        json_t *text = json_object_get(c, "text"), *want = json_object_get(c, "ids");
        const char *decoded = json_string_value(json_object_get(c, "decoded"));
        int32_t *ids;
        size_t n;
        char *dec;
        encode_ok(json_string_value(text), json_string_length(text), 0, &ids, &n);
        bool same = n == json_array_size(want);
        for (size_t k = 0; same && k < n; k++)
            same = ids[k] == json_integer_value(json_array_get(want, k));
        assert_int_equal(dsr1_tokenizer_decode(tok, ids, n, false, &dec, NULL), DSR1_OK);
        if (same && !strcmp(dec, decoded))
            pass++;
        else
            print_error("case %zu (%s): ids or decoded text differ\n", i, json_string_value(text));
        free(ids);
        free(dec);
    }
    print_message("golden tokenizer cases: %zu/%zu pass\n", pass, json_array_size(cases));
    assert_int_equal(pass, json_array_size(cases));
    assert_true(pass >= 168);
    json_decref(root);
}

static void test_roundtrip_random(void **state)
{
    (void)state;
    tok_rng r = {12345};
    char *buf = malloc(1 << 16);
    for (int i = 0; i < 2000; i++) {
        size_t len = 0;
        for (int p = 1 + (int)tok_rng_below(&r, 10); p > 0; p--)
            tok_test_random_piece(&r, buf, &len);
        assert_roundtrip(buf, len);
    }
    free(buf);
}

/* The scan (short words) and the heap (long words) must give the same merges. */
static void test_bpe_paths_agree(void **state)
{
    (void)state;
    tok_rng r = {777};
    dsr1__bpe_scratch scratch = {0};
    uint8_t word[3000];
    static const char alphabet[] = "aaabbbcdeeinorst  \xe4\xbd\xa0\xe5\xa5\xbd";
    for (int t = 0; t < 3000; t++) {
        size_t len = 2 + tok_rng_below(&r, t < 2500 ? 40 : sizeof(word) - 2);
        for (size_t i = 0; i < len; i++)
            word[i] = t % 3 == 0 ? (uint8_t)tok_rng_below(&r, 256)
                                 : (uint8_t)alphabet[tok_rng_below(&r, sizeof(alphabet) - 1)];
        dsr1__ids a = {0}, b = {0};
        assert_int_equal(dsr1__bpe_word(tok, word, len, &scratch, &a, 1), DSR1_OK);
        assert_int_equal(dsr1__bpe_word(tok, word, len, &scratch, &b, 2), DSR1_OK);
        assert_int_equal(a.n, b.n);
        assert_memory_equal(a.v, b.v, a.n * sizeof(int32_t));
        free(a.v);
        free(b.v);
    }
    dsr1__bpe_scratch_free(&scratch);
}

static void test_long_word_fast(void **state)
{
    (void)state;
    size_t len = 100 * 1000;
    char *s = malloc(len);
    tok_rng r = {9};
    for (size_t i = 0; i < len; i++) s[i] = (char)('a' + tok_rng_below(&r, 26));
    double t0 = now();
    int32_t *ids;
    size_t n;
    encode_ok(s, len, 0, &ids, &n);
    double dt = now() - t0;
    print_message("100 KB without spaces: %zu ids in %.3f s\n", n, dt);
    assert_true(dt < 2.0); /* ~0.02 s measured; quadratic BPE would take minutes */
    free(ids);
    memset(s, 'a', len); /* one repeated pair: every merge ties on rank */
    t0 = now();
    encode_ok(s, len, 0, &ids, &n);
    assert_true(now() - t0 < 2.0);
    assert_roundtrip(s, len);
    free(ids);
    free(s);
}

static void test_invalid_utf8(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "\x80", "ab\xC0\x80", "\xED\xA0\x80",    "\xF4\x90\x80\x80", "x\xE4\xBD",
        "\xFF", "\xC3",       "ok \xF0\x9F\x98", "\xE0\x80\xAF",     "\xF8\x88\x80\x80\x80",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int32_t *ids = (int32_t *)0x1;
        size_t n = 77;
        dsr1_status st = dsr1_tokenizer_encode(tok, bad[i], strlen(bad[i]), 0, &ids, &n);
        assert_int_equal(st, DSR1_ERR_INVALID_ARG);
        assert_non_null(strstr(dsr1_errmsg(), "not valid UTF-8 at byte"));
        assert_ptr_equal(ids, (int32_t *)0x1); /* outputs untouched on error */
        assert_int_equal(n, 77);
    }
    /* the offset names the first bad byte */
    int32_t *ids;
    size_t n;
    assert_int_equal(dsr1_tokenizer_encode(tok, "abc\xFF", 4, 0, &ids, &n), DSR1_ERR_INVALID_ARG);
    assert_non_null(strstr(dsr1_errmsg(), "byte 3"));
    /* every code point that is valid encodes: surrogate neighbours, U+10FFFF, U+FFFF */
    assert_roundtrip("\xED\x9F\xBF\xEE\x80\x80\xF4\x8F\xBF\xBF\xEF\xBF\xBF", 13);
}

static void test_nul_and_controls(void **state)
{
    (void)state;
    assert_roundtrip("a\0b", 3);
    assert_roundtrip("\0\0\0", 3);
    assert_roundtrip("\x01\x02\x7f\x1b[31m", 8);
    int32_t *ids;
    size_t n;
    encode_ok("", 0, 0, &ids, &n);
    assert_int_equal(n, 0);
    assert_null(ids);
    assert_int_equal(dsr1_tokenizer_encode(tok, NULL, 0, 0, &ids, &n), DSR1_OK);
    assert_int_equal(dsr1_tokenizer_encode(tok, NULL, 5, 0, &ids, &n), DSR1_ERR_INVALID_ARG);
}

static void test_ten_megabytes(void **state)
{
    (void)state;
    static const char *const parts[] = {
        "The quick brown fox jumps over the lazy dog. ",
        "深度求索的模型很好。",
        "def f(x):\n    return x * 2\n",
        "🚀🔥 émoji ",
        "1234567890 ",
        "<think>\n",
        "    \t\n\n",
        "<｜User｜>",
        "Привет, мир! ",
        "https://example.com/a?b=c ",
    };
    size_t cap = 10u << 20, len = 0;
    char *s = malloc(cap + 64);
    tok_rng r = {42};
    while (len < cap) {
        const char *p = parts[tok_rng_below(&r, sizeof(parts) / sizeof(parts[0]))];
        memcpy(s + len, p, strlen(p));
        len += strlen(p);
    }
    double t0 = now();
    int32_t *ids;
    size_t n;
    encode_ok(s, len, 0, &ids, &n);
    double dt = now() - t0;
    print_message("10 MB mixed text: %zu ids in %.2f s (%.1f MB/s)\n", n, dt, len / dt / 1e6);
    char *dec;
    size_t dlen;
    assert_int_equal(dsr1_tokenizer_decode(tok, ids, n, false, &dec, &dlen), DSR1_OK);
    assert_int_equal(dlen, len);
    assert_memory_equal(dec, s, len);
    free(dec);
    free(ids);
    /* one 10 MB whitespace run and one 10 MB letter run: regex and BPE limits */
    memset(s, ' ', cap);
    encode_ok(s, cap, 0, &ids, &n);
    free(ids);
    free(s);
}

static void test_decode_errors(void **state)
{
    (void)state;
    int32_t bad[] = {-1, dsr1_tokenizer_vocab_size(tok), INT32_MAX, INT32_MIN};
    for (size_t i = 0; i < 4; i++) {
        int32_t ids[3] = {1, 2, bad[i]};
        char *out = (char *)0x1;
        assert_int_equal(dsr1_tokenizer_decode(tok, ids, 3, false, &out, NULL), DSR1_ERR_RANGE);
        assert_non_null(strstr(dsr1_errmsg(), "ids[2]"));
        assert_ptr_equal(out, (char *)0x1);
        const uint8_t *b;
        size_t n;
        assert_int_equal(dsr1_tokenizer_token_bytes(tok, bad[i], &b, &n), DSR1_ERR_RANGE);
        assert_false(dsr1_tokenizer_id_valid(tok, bad[i]));
        assert_false(dsr1_tokenizer_is_special(tok, bad[i]));
    }
    char *out;
    size_t len = 99;
    assert_int_equal(dsr1_tokenizer_decode(tok, NULL, 0, false, &out, &len), DSR1_OK);
    assert_int_equal(len, 0);
    assert_string_equal(out, "");
    free(out);
}

static void test_token_ids(void **state)
{
    (void)state;
    assert_int_equal(dsr1_tokenizer_vocab_size(tok), 128815);
    assert_int_equal(dsr1_tokenizer_token_id(tok, "<｜begin▁of▁sentence｜>"), 0);
    assert_int_equal(dsr1_tokenizer_token_id(tok, "<｜end▁of▁sentence｜>"), 1);
    assert_int_equal(dsr1_tokenizer_token_id(tok, "<think>"), 128798);
    assert_int_equal(dsr1_tokenizer_token_id(tok, "</think>"), 128799);
    assert_int_equal(dsr1_tokenizer_token_id(tok, "<｜User｜>"), 128803);
    assert_int_equal(dsr1_tokenizer_token_id(tok, "no such token"), -1);
    assert_int_equal(dsr1_tokenizer_token_id(tok, NULL), -1);
    int32_t the = dsr1_tokenizer_token_id(tok, "Ġthe");
    assert_true(the > 0);
    const uint8_t *b;
    size_t n;
    assert_int_equal(dsr1_tokenizer_token_bytes(tok, the, &b, &n), DSR1_OK);
    assert_int_equal(n, 4);
    assert_memory_equal(b, " the", 4);
    assert_true(dsr1_tokenizer_is_special(tok, 1));
    assert_false(dsr1_tokenizer_is_special(tok, 128798)); /* R1 made <think> non-special */
    assert_false(dsr1_tokenizer_is_special(tok, the));
    /* added tokens, special or not: BOS/EOS are both; <think> and <｜User｜> added only */
    assert_true(dsr1_tokenizer_is_added(tok, 1));
    assert_true(dsr1_tokenizer_is_added(tok, 128798));
    assert_true(dsr1_tokenizer_is_added(tok, 128803));
    assert_false(dsr1_tokenizer_is_special(tok, 128803));
    assert_false(dsr1_tokenizer_is_added(tok, the));
    assert_false(dsr1_tokenizer_is_added(tok, -1));
    assert_false(dsr1_tokenizer_is_added(tok, 1 << 20));
}

static void test_special_as_text(void **state)
{
    (void)state;
    const char *s = "<｜User｜>hi<think>x</think><｜end▁of▁sentence｜>";
    int32_t *ids;
    size_t n;
    encode_ok(s, strlen(s), 0, &ids, &n);
    assert_int_equal(ids[0], 128803);
    assert_int_equal(ids[n - 1], 1);
    free(ids);
    encode_ok(s, strlen(s), DSR1_ENCODE_SPECIAL_AS_TEXT, &ids, &n);
    bool saw_think = false;
    for (size_t i = 0; i < n; i++) {
        assert_false(dsr1_tokenizer_is_special(tok, ids[i]));
        saw_think |= ids[i] == 128798;
    }
    assert_true(saw_think); /* non-special added tokens are still matched */
    char *dec;
    assert_int_equal(dsr1_tokenizer_decode(tok, ids, n, false, &dec, NULL), DSR1_OK);
    assert_string_equal(dec, s);
    free(dec);
    free(ids);
}

static void test_skip_special_and_lossy(void **state)
{
    (void)state;
    int32_t hi = dsr1_tokenizer_token_id(tok, "hi");
    int32_t ids[] = {0, 128803, hi, 128798, 1};
    char *dec;
    assert_int_equal(dsr1_tokenizer_decode(tok, ids, 5, true, &dec, NULL), DSR1_OK);
    assert_string_equal(dec, "<｜User｜>hi<think>"); /* R1: only 0, 1, ... are special */
    free(dec);
    /* byte tokens of an unfinished character: one U+FFFD per maximal invalid part */
    int32_t e4 = tok->byte_token[0xE4], bd = tok->byte_token[0xBD], a = tok->byte_token['a'];
    int32_t bad[] = {e4, bd, a, bd, e4};
    assert_int_equal(dsr1_tokenizer_decode(tok, bad, 5, false, &dec, NULL), DSR1_OK);
    assert_string_equal(dec, "\xEF\xBF\xBD"
                             "a"
                             "\xEF\xBF\xBD\xEF\xBF\xBD");
    free(dec);
}

typedef struct {
    const char *text;
    int32_t *want;
    size_t nwant;
    int ok;
} thread_job;

static void *encode_many(void *arg)
{
    thread_job *j = arg;
    j->ok = 1;
    for (int it = 0; it < 200; it++) {
        int32_t *ids;
        size_t n;
        if (dsr1_tokenizer_encode(tok, j->text, strlen(j->text), 0, &ids, &n) || n != j->nwant ||
            memcmp(ids, j->want, n * sizeof(int32_t)))
            j->ok = 0;
        free(ids);
    }
    return NULL;
}

static void test_concurrent_encode(void **state)
{
    (void)state;
    static const char *const texts[] = {
        "The quick brown fox jumps over the lazy dog, 1234567 times.",
        "深度求索 DeepSeek-R1 <think>\nreasoning\n</think> answer 🚀",
        "def f(x):\n    return [i ** 2 for i in range(x)]  # squares\n",
        "<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜>",
    };
    thread_job jobs[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        jobs[i].text = texts[i];
        encode_ok(texts[i], strlen(texts[i]), 0, &jobs[i].want, &jobs[i].nwant);
        pthread_create(&th[i], NULL, encode_many, &jobs[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_true(jobs[i].ok);
        free(jobs[i].want);
    }
}

typedef struct {
    size_t len[16];
    size_t n;
} pieces;

static dsr1_status collect_piece(void *ctx, const uint8_t *piece, size_t len)
{
    pieces *p = ctx;
    (void)piece;
    if (p->n < 16) p->len[p->n] = len;
    p->n++;
    return DSR1_OK;
}

static void test_regex_rewrite(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        {"\\s+(?!\\S)", "[\\t-\\r\\x{85}\\p{Z}]+(?![^\\t-\\r\\x{85}\\p{Z}])"},
        {"[\\s\\d]", "[\\t-\\r\\x{85}\\p{Z}\\d]"},
        {"\\\\s", "\\\\s"},
        {"[]\\s]", "[]\\t-\\r\\x{85}\\p{Z}]"},
        {"[^]]\\s", "[^]][\\t-\\r\\x{85}\\p{Z}]"},
        {"\\Q\\s\\E\\s", "\\Q\\s\\E[\\t-\\r\\x{85}\\p{Z}]"},
        {"[[:alpha:]\\s]x", "[[:alpha:]\\t-\\r\\x{85}\\p{Z}]x"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *out;
        assert_int_equal(dsr1__pretok_rewrite(cases[i][0], strlen(cases[i][0]), &out), DSR1_OK);
        assert_string_equal(out, cases[i][1]);
        free(out);
    }
    /* U+180E is not White_Space (Oniguruma, Rust, HF's JS port), though PCRE2's \s says so:
     * "a\u180E  b" must split as a | \u180E | " " | " b" */
    const char *text = "a\xE1\xA0\x8E  b";
    pieces got = {0};
    pcre2_match_data *md = pcre2_match_data_create(tok->pretok.max_capture_pairs + 1, NULL);
    assert_int_equal(dsr1__pretok_run(&tok->pretok, (const uint8_t *)text, strlen(text), md,
                                      collect_piece, &got),
                     DSR1_OK);
    pcre2_match_data_free(md);
    assert_int_equal(got.n, 4);
    assert_int_equal(got.len[0], 1);
    assert_int_equal(got.len[1], 3);
    assert_int_equal(got.len[2], 1);
    assert_int_equal(got.len[3], 2);
}

/* ---- synthetic tokenizers: loader errors and added-token flags ---- */

static json_t *byte_char(int b)
{
    char s[3];
    uint32_t cp = dsr1__byte_level_cp((uint8_t)b);
    size_t n = 1;
    if (cp < 0x80)
        s[0] = (char)cp;
    else
        s[0] = (char)(0xC0 | (cp >> 6)), s[1] = (char)(0x80 | (cp & 0x3F)), n = 2;
    return json_stringn(s, n);
}

/* A byte-level BPE tokenizer: ids 0..255 are the bytes, then merges' results in order. */
static json_t *synth(const char *const *merges, size_t nmerges)
{
    json_t *vocab = json_object(), *m = json_array();
    for (int b = 0; b < 256; b++) {
        json_t *c = byte_char(b);
        json_object_set_new(vocab, json_string_value(c), json_integer(b));
        json_decref(c);
    }
    for (size_t i = 0; i < nmerges; i++) {
        char joined[64];
        const char *sp = strchr(merges[i], ' ');
        snprintf(joined, sizeof(joined), "%.*s%s", (int)(sp - merges[i]), merges[i], sp + 1);
        if (!json_object_get(vocab, joined))
            json_object_set_new(vocab, joined, json_integer((json_int_t)json_object_size(vocab)));
        json_array_append_new(m, json_string(merges[i]));
    }
    return json_pack(
        "{s:n, s:n, s:[], s:{s:s, s:[]}, s:{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b, "
        "s:b}]}, s:{s:s, s:b, s:b, s:b}, s:{s:s, s:b, s:b, s:b}, s:{s:s, s:n, s:n, s:n, s:n, "
        "s:b, s:b, s:o, s:o}}",
        "truncation", "padding", "added_tokens", "normalizer", "type", "Sequence", "normalizers",
        "pre_tokenizer", "type", "Sequence", "pretokenizers", "type", "Split", "pattern", "Regex",
        "\\p{L}+|\\p{N}|\\s+|[^\\s\\p{L}\\p{N}]+", "behavior", "Isolated", "invert", 0, "type",
        "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 0, "post_processor",
        "type", "ByteLevel", "add_prefix_space", 1, "trim_offsets", 0, "use_regex", 1, "decoder",
        "type", "ByteLevel", "add_prefix_space", 1, "trim_offsets", 1, "use_regex", 1, "model",
        "type", "BPE", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix",
        "fuse_unk", 0, "byte_fallback", 0, "vocab", vocab, "merges", m);
}

static dsr1_status load_synth(json_t *j, dsr1_tokenizer **out)
{
    char path[300];
    snprintf(path, sizeof(path), "%s/synth.json", model_dir);
    assert_int_equal(json_dump_file(j, path, JSON_COMPACT), 0);
    json_decref(j);
    dsr1_status st = dsr1_tokenizer_load_file(path, out);
    unlink(path);
    return st;
}

static int32_t vid(json_t *j, const char *token)
{
    return (int32_t)json_integer_value(
        json_object_get(json_object_get(json_object_get(j, "model"), "vocab"), token));
}

static void encode_synth(dsr1_tokenizer *t, const char *s, const int32_t *want, size_t nwant)
{
    int32_t *ids;
    size_t n;
    assert_int_equal(dsr1_tokenizer_encode(t, s, strlen(s), 0, &ids, &n), DSR1_OK);
    assert_int_equal(n, nwant);
    assert_memory_equal(ids, want, n * sizeof(int32_t));
    free(ids);
}

static void test_synthetic_merge_order(void **state)
{
    (void)state;
    static const char *const merges[] = {"b c", "a b", "a a", "aa a"};
    json_t *j = synth(merges, 4);
    int32_t bc = vid(j, "bc"), aa = vid(j, "aa"), aaa = vid(j, "aaa");
    dsr1_tokenizer *t;
    json_incref(j);
    assert_int_equal(load_synth(j, &t), DSR1_OK);
    encode_synth(t, "abc", (int32_t[]){'a', bc}, 2); /* "b c" outranks "a b" */
    encode_synth(t, "ab", (int32_t[]){vid(j, "ab")}, 1);
    encode_synth(t, "aaaa", (int32_t[]){aa, aa}, 2);   /* ties go left to right */
    encode_synth(t, "aaa", (int32_t[]){aaa}, 1);       /* "a a" first, then "aa a" */
    encode_synth(t, "aaaaa", (int32_t[]){aa, aaa}, 2); /* aa|aa|a, then "aa a" on the right */
    json_decref(j);
    dsr1_tokenizer_free(t);
}

static void test_synthetic_added_flags(void **state)
{
    (void)state;
    json_t *j = synth(NULL, 0);
    json_t *added = json_object_get(j, "added_tokens");
    json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", 300,
                                           "content", "<X>", "single_word", 0, "lstrip", 1,
                                           "rstrip", 1, "normalized", 0, "special", 1));
    json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", 301,
                                           "content", "<X>>", "single_word", 0, "lstrip", 0,
                                           "rstrip", 0, "normalized", 1, "special", 0));
    json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", 302,
                                           "content", "ab", "single_word", 0, "lstrip", 0, "rstrip",
                                           0, "normalized", 1, "special", 0));
    dsr1_tokenizer *t;
    assert_int_equal(load_synth(j, &t), DSR1_OK);
    /* lstrip/rstrip swallow the spaces around <X> */
    encode_synth(t, "a  <X> \n b", (int32_t[]){'a', 300, 'b'}, 3);
    /* raw tokens are cut first: "<X>>" contains "<X>", which wins in pass one */
    encode_synth(t, "<X>>", (int32_t[]){300, '>'}, 2);
    /* normalized tokens are found in the gaps */
    encode_synth(t, "xab", (int32_t[]){'x', 302}, 2);
    dsr1_tokenizer_free(t);
}

typedef struct {
    const char *path; /* JSON pointer-ish: "a.b" object keys */
    json_t *value;
    dsr1_status want;
    const char *msg;
} mutation;

static void set_path(json_t *root, const char *path, json_t *value)
{
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", path);
    json_t *obj = root;
    char *save, *key = strtok_r(buf, ".", &save), *next;
    while ((next = strtok_r(NULL, ".", &save))) {
        obj = (*key >= '0' && *key <= '9') ? json_array_get(obj, (size_t)atoi(key))
                                           : json_object_get(obj, key);
        key = next;
    }
    json_object_set_new(obj, key, value);
}

static void test_loader_errors(void **state)
{
    (void)state;
    mutation cases[] = {
        {"normalizer", json_pack("{s:s}", "type", "NFC"), DSR1_ERR_UNSUPPORTED, "normalizer"},
        {"pre_tokenizer.pretokenizers.0.behavior", json_string("Removed"), DSR1_ERR_UNSUPPORTED,
         "behavior 'Removed'"},
        {"pre_tokenizer.pretokenizers.0.invert", json_true(), DSR1_ERR_UNSUPPORTED, "invert"},
        {"pre_tokenizer.pretokenizers.0.pattern", json_pack("{s:s}", "Regex", "(unclosed"),
         DSR1_ERR_UNSUPPORTED, "does not compile"},
        {"pre_tokenizer.pretokenizers.1.add_prefix_space", json_true(), DSR1_ERR_UNSUPPORTED,
         "add_prefix_space"},
        {"pre_tokenizer.type", json_string("Whitespace"), DSR1_ERR_UNSUPPORTED, "Whitespace"},
        {"model.type", json_string("WordPiece"), DSR1_ERR_UNSUPPORTED, "WordPiece"},
        {"model.dropout", json_real(0.1), DSR1_ERR_UNSUPPORTED, "dropout"},
        {"model.byte_fallback", json_true(), DSR1_ERR_UNSUPPORTED, "byte_fallback"},
        {"model.merges", json_pack("[s]", "x y"), DSR1_ERR_FORMAT, "not in model.vocab"},
        {"model.merges", json_pack("[s]", "nospace"), DSR1_ERR_FORMAT, "merges[0]"},
        {"model.vocab", json_pack("{s:i}", "a", 0), DSR1_ERR_UNSUPPORTED, "byte 0x00"},
        {"model.vocab", json_pack("{s:i}", "a", -5), DSR1_ERR_FORMAT, "id must be"},
        {"post_processor", json_pack("{s:s}", "type", "TemplateProcessing"), DSR1_ERR_UNSUPPORTED,
         "post_processor"},
        {"decoder", json_pack("{s:s}", "type", "WordPiece"), DSR1_ERR_UNSUPPORTED, "decoder"},
        {"truncation", json_pack("{s:i}", "max_length", 5), DSR1_ERR_UNSUPPORTED, "truncation"},
        {"added_tokens", json_pack("[{s:i, s:s, s:b}]", "id", 5, "content", "w", "single_word", 1),
         DSR1_ERR_UNSUPPORTED, "single_word"},
        {"added_tokens", json_pack("[{s:i}]", "id", 5), DSR1_ERR_FORMAT, "content"},
        {"model", json_string("x"), DSR1_ERR_FORMAT, "'model' object"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *j = synth(NULL, 0);
        set_path(j, cases[i].path, cases[i].value);
        dsr1_tokenizer *t = (dsr1_tokenizer *)0x1;
        dsr1_status st = load_synth(j, &t);
        if (st != cases[i].want || !strstr(dsr1_errmsg(), cases[i].msg))
            fail_msg("mutation %zu (%s): status %d, message '%s'", i, cases[i].path, st,
                     dsr1_errmsg());
        assert_ptr_equal(t, (dsr1_tokenizer *)0x1);
    }
    /* files that are missing or not JSON */
    dsr1_tokenizer *t;
    assert_int_equal(dsr1_tokenizer_load("/nonexistent-dir", &t), DSR1_ERR_IO);
    char path[300];
    snprintf(path, sizeof(path), "%s/garbage.json", model_dir);
    FILE *f = fopen(path, "w");
    fputs("{\"model\": [1, 2", f);
    fclose(f);
    assert_int_equal(dsr1_tokenizer_load_file(path, &t), DSR1_ERR_FORMAT);
    unlink(path);
}

int main(int argc, char **argv)
{
    golden_dir = argc > 1 ? argv[1] : NULL;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_cases),
        cmocka_unit_test(test_roundtrip_random),
        cmocka_unit_test(test_bpe_paths_agree),
        cmocka_unit_test(test_long_word_fast),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_nul_and_controls),
        cmocka_unit_test(test_ten_megabytes),
        cmocka_unit_test(test_decode_errors),
        cmocka_unit_test(test_token_ids),
        cmocka_unit_test(test_special_as_text),
        cmocka_unit_test(test_skip_special_and_lossy),
        cmocka_unit_test(test_concurrent_encode),
        cmocka_unit_test(test_regex_rewrite),
        cmocka_unit_test(test_synthetic_merge_order),
        cmocka_unit_test(test_synthetic_added_flags),
        cmocka_unit_test(test_loader_errors),
    };
    return tok_test_main(argc, argv, tests, sizeof(tests) / sizeof(tests[0]), model_dir,
                         sizeof(model_dir), &tok, NULL);
}
