/* The grammar engine on DeepSeek-R1's real vocabulary (129,280 tokens): masks against
 * brute force (every token tried by advance + rollback) along random walks for a JSON
 * object grammar and a schema-shaped grammar, and a timing print (not an assertion) of
 * mask time per token (thread CPU time) over tokenized JSON documents: "cold" is the first
 * pass of a fresh grammar (its caches filling), "warm" the second. Special-token terminals
 * (<|TEXT|>): masks against brute force over every token, special ones included, and
 * compile errors.
 *
 * argv[1]: ../shared/golden (its tokenizer/); exits 77 without it. */
#include <time.h>
#include <unistd.h>

#include "grammar_test_util.h"
#include "tokenizer.h"

static dsr1_tokenizer *tok;
static dsr1_grammar_vocab *vocab;
static int32_t nvocab, eos;
static const uint8_t **tb;
static uint32_t *tl;

/* What the JSON Schema converter produces for a typical schema (compact JSON, properties
 * in order, optional ones in a fixed order). */
static const char schema_grammar[] =
    "root ::= \"{\" \"\\\"name\\\":\" string \",\\\"age\\\":\" integer "
    "\",\\\"email\\\":\" email \",\\\"tags\\\":\" tags \",\\\"address\\\":\" address "
    "(\",\\\"active\\\":\" boolean)? (\",\\\"score\\\":\" number)? \"}\"\n"
    "address ::= \"{\\\"street\\\":\" string \",\\\"city\\\":\" string "
    "\",\\\"zip\\\":\\\"\" /[0-9]{5}/ \"\\\"\" \"}\"\n"
    "tags ::= \"[\" (string (\",\" string){0,9})? \"]\"\n"
    "email ::= \"\\\"\" /[a-z0-9._]+@[a-z0-9]+\\.[a-z]{2,6}/ \"\\\"\"\n"
    "string ::= \"\\\"\" char* \"\\\"\"\n"
    "char ::= [^\"\\\\\\x00-\\x1f] | \"\\\\\" ([\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4})\n"
    "integer ::= \"-\"? (\"0\" | [1-9] [0-9]{0,15})\n"
    "number ::= integer (\".\" [0-9]+)? ([eE] [+-]? [0-9]+)?\n"
    "boolean ::= \"true\" | \"false\"\n";

static const char *docs[] = {
    "{\"name\":\"Ada Lovelace\",\"age\":36,\"email\":\"ada@example.org\",\"tags\":[\"math\","
    "\"poetry\",\"engines\"],\"address\":{\"street\":\"12 St James's Square\",\"city\":"
    "\"London\",\"zip\":\"10001\"},\"active\":true,\"score\":98.5}",
    "{\"name\":\"Zhang Wei \xe5\xbc\xa0\xe4\xbc\x9f\",\"age\":41,\"email\":\"zw.test@mail.cn\","
    "\"tags\":[],\"address\":{\"street\":\"No. 88 \\\"Century\\\" Avenue, Pudong\",\"city\":"
    "\"Shanghai\",\"zip\":\"20012\"},\"score\":-1.25e3}",
    "{\"name\":\"Grace Hopper\",\"age\":85,\"email\":\"grace_hopper@navy.mil\",\"tags\":[\"cobol\","
    "\"compilers\",\"debugging\",\"rear admiral\",\"\\u00e9t\\u00e9\"],\"address\":{\"street\":"
    "\"1 Navy Yard\\nBuilding 7\",\"city\":\"Arlington\",\"zip\":\"22201\"},\"active\":false}",
    "{\"name\":\"O'Brien, Siobh\xc3\xa1n\",\"age\":0,\"email\":\"s@ie.ie\",\"tags\":[\"a\",\"b\","
    "\"c\",\"d\",\"e\",\"f\",\"g\"],\"address\":{\"street\":\"\",\"city\":\"Dublin 4\",\"zip\":"
    "\"00000\"},\"active\":true,\"score\":100}",
};

static void check_walks(const dsr1_grammar *g, uint64_t seed, int walks, int steps)
{
    for (int w = 0; w < walks; w++) gt_random_walk(g, nvocab, tb, tl, eos, &seed, steps);
}

static void test_json_object_masks(void **state)
{
    (void)state;
    dsr1_grammar *g = NULL;
    assert_int_equal(dsr1_grammar_compile_json_object(vocab, NULL, &g), DSR1_OK);
    check_walks(g, 1, 2, 12);
    dsr1_grammar_free(g);
    dsr1_grammar_opts o = {.json_whitespace = true};
    assert_int_equal(dsr1_grammar_compile_json_object(vocab, &o, &g), DSR1_OK);
    check_walks(g, 2, 1, 12);
    dsr1_grammar_free(g);
}

static void test_schema_masks(void **state)
{
    (void)state;
    dsr1_grammar *g = NULL;
    assert_int_equal(
        dsr1_grammar_compile_ebnf(vocab, schema_grammar, strlen(schema_grammar), NULL, &g),
        DSR1_OK);
    check_walks(g, 3, 2, 14);
    /* along a real document too: every prefix's mask equals brute force */
    int32_t *ids;
    size_t n;
    assert_int_equal(dsr1_tokenizer_encode(tok, docs[1], strlen(docs[1]), 0, &ids, &n), DSR1_OK);
    dsr1_matcher *m;
    assert_int_equal(dsr1_matcher_create(g, &m), DSR1_OK);
    uint32_t *mask = calloc(dsr1_grammar_mask_words(nvocab), 4);
    for (size_t i = 0; i < n; i += 4) {
        gt_check_mask(m, nvocab, tb, tl, eos, mask);
        for (size_t k = i; k < i + 4 && k < n; k++)
            assert_int_equal(dsr1_matcher_advance(m, ids[k]), DSR1_OK);
    }
    gt_check_mask(m, nvocab, tb, tl, eos, mask);
    assert_true(dsr1_matcher_accepting(m));
    free(mask);
    free(ids);
    dsr1_matcher_free(m);
    dsr1_grammar_free(g);
}

/* R1's special tokens of the tool-call format (UTF-8: ｜ is EF BD 9C, ▁ is E2 96 81). */
#define BAR       "\xef\xbd\x9c"
#define SP        "\xe2\x96\x81"
#define CALLS_BEG "<" BAR "tool" SP "calls" SP "begin" BAR ">"
#define CALLS_END "<" BAR "tool" SP "calls" SP "end" BAR ">"
#define CALL_BEG  "<" BAR "tool" SP "call" SP "begin" BAR ">"
#define CALL_END  "<" BAR "tool" SP "call" SP "end" BAR ">"
#define TOOL_SEP  "<" BAR "tool" SP "sep" BAR ">"

/* A tool-call grammar: special-token terminals around text and a JSON object. */
static const char calls_grammar[] =
    "root ::= <|" CALLS_BEG "|> call (\"\\n\" call)? <|" CALLS_END "|>\n"
    "call ::= <|" CALL_BEG "|> \"function\" <|" TOOL_SEP "|> name \"\\n```json\\n\" args "
    "\"\\n```\" <|" CALL_END "|>\n"
    "name ::= \"get_weather\" | \"sum\"\n"
    "args ::= \"{\\\"city\\\":\" str (\",\\\"days\\\":\" [1-9])? \"}\"\n"
    "str ::= \"\\\"\" [a-zA-Z ]{0,12} \"\\\"\"\n";

static int32_t special_id(const char *text)
{
    int32_t id = dsr1_tokenizer_token_id(tok, text);
    assert_true(id >= 0);
    assert_int_equal(dsr1_grammar_vocab_special_id(vocab, text, strlen(text)), id);
    return id;
}

/* Masks with special-token terminals equal brute force (every token, special ones included,
 * tried by advance); at a special terminal the mask is exactly that token; a real tool call
 * tokenized with its special tokens walks to the end. */
static void test_special_token_masks(void **state)
{
    (void)state;
    dsr1_grammar *g = NULL;
    assert_int_equal(
        dsr1_grammar_compile_ebnf(vocab, calls_grammar, strlen(calls_grammar), NULL, &g), DSR1_OK);
    const int32_t beg = special_id(CALLS_BEG), cbeg = special_id(CALL_BEG);
    /* vocabulary entries are text, whatever their bytes */
    assert_int_equal(dsr1_grammar_vocab_special_id(vocab, "function", 8), -1);
    assert_int_equal(dsr1_grammar_vocab_special_id(vocab, "{\"", 2), -1);
    assert_int_equal(dsr1_grammar_vocab_special_id(vocab, "\xef\xbd\x9c", 3), -1);
    dsr1_matcher *m;
    assert_int_equal(dsr1_matcher_create(g, &m), DSR1_OK);
    uint32_t *mask = calloc(dsr1_grammar_mask_words(nvocab), 4);
    assert_int_equal(gt_check_mask(m, nvocab, tb, tl, eos, mask), 1);
    assert_true(mask[beg >> 5] >> (beg & 31) & 1);
    /* no forced text before a special token, and text never stands for it */
    uint8_t forced[16];
    assert_int_equal(dsr1_matcher_forced_bytes(m, forced, sizeof(forced)), 0);
    assert_int_not_equal(
        dsr1_matcher_advance_bytes(m, (const uint8_t *)CALLS_BEG, strlen(CALLS_BEG)), DSR1_OK);
    const uint8_t ff[4] = {0xff, 0x80, 0x80, 0x80};
    assert_int_not_equal(dsr1_matcher_advance_bytes(m, ff, 4), DSR1_OK);
    assert_int_not_equal(dsr1_matcher_advance(m, cbeg), DSR1_OK);
    assert_int_equal(dsr1_matcher_advance(m, beg), DSR1_OK);
    assert_int_equal(gt_check_mask(m, nvocab, tb, tl, eos, mask), 1);
    assert_true(mask[cbeg >> 5] >> (cbeg & 31) & 1);
    assert_int_equal(dsr1_matcher_advance(m, cbeg), DSR1_OK);
    /* "function" is forced text after the special token */
    assert_int_equal(dsr1_matcher_forced_bytes(m, forced, sizeof(forced)), 8);
    assert_memory_equal(forced, "function", 8);
    dsr1_matcher_free(m);

    /* a whole answer as the model would write it, masks checked every few tokens */
    const char *text = CALLS_BEG CALL_BEG "function" TOOL_SEP "get_weather\n```json\n"
                                          "{\"city\":\"Paris\",\"days\":3}\n```" CALL_END
                                          "\n" CALL_BEG "function" TOOL_SEP "sum\n```json\n"
                                          "{\"city\":\"\"}\n```" CALL_END CALLS_END;
    int32_t *ids;
    size_t n;
    assert_int_equal(dsr1_tokenizer_encode(tok, text, strlen(text), 0, &ids, &n), DSR1_OK);
    assert_int_equal(ids[0], beg);
    assert_int_equal(dsr1_matcher_create(g, &m), DSR1_OK);
    for (size_t i = 0; i < n; i++) {
        if (i % 3 == 0) gt_check_mask(m, nvocab, tb, tl, eos, mask);
        assert_int_equal(dsr1_matcher_advance(m, ids[i]), DSR1_OK);
    }
    gt_check_mask(m, nvocab, tb, tl, eos, mask);
    assert_true(dsr1_matcher_accepting(m));
    assert_int_equal(dsr1_matcher_advance(m, eos), DSR1_OK);
    free(ids);
    dsr1_matcher_free(m);
    check_walks(g, 11, 3, 30);
    dsr1_grammar_free(g);

    /* the same text as a literal never allows the special token, only text tokens */
    const char lit[] = "root ::= \"" CALLS_BEG "\" \"x\"";
    assert_int_equal(dsr1_grammar_compile_ebnf(vocab, lit, strlen(lit), NULL, &g), DSR1_OK);
    assert_int_equal(dsr1_matcher_create(g, &m), DSR1_OK);
    assert_true(gt_check_mask(m, nvocab, tb, tl, eos, mask) > 0);
    assert_false(mask[beg >> 5] >> (beg & 31) & 1);
    assert_int_not_equal(dsr1_matcher_advance(m, beg), DSR1_OK);
    assert_int_equal(dsr1_matcher_advance_bytes(m, (const uint8_t *)CALLS_BEG, strlen(CALLS_BEG)),
                     DSR1_OK);
    dsr1_matcher_free(m);
    dsr1_grammar_free(g);
    free(mask);
}

static void expect_error(const char *src, const char *needle)
{
    dsr1_grammar *g = NULL;
    assert_int_equal(dsr1_grammar_compile_ebnf(vocab, src, strlen(src), NULL, &g),
                     DSR1_ERR_INVALID_ARG);
    if (!strstr(dsr1_errmsg(), needle)) {
        fprintf(stderr, "'%s': message '%s' lacks '%s'\n", src, dsr1_errmsg(), needle);
        fail();
    }
    assert_null(g);
}

static void test_special_token_errors(void **state)
{
    (void)state;
    expect_error("root ::= \"a\" <|<" BAR "no" SP "such" BAR ">|>",
                 "unknown special token '<" BAR "no" SP "such" BAR ">'");
    expect_error("root ::= <|think|>", "unknown special token 'think'");
    expect_error("root ::= \"a\" <|<" BAR "end" SP "of" SP "sentence" BAR ">|>", "end of sequence");
    expect_error("root ::= <|" CALLS_BEG, "unterminated special token");
    expect_error("root ::= <||>", "unterminated special token");
}

/* Thread CPU time: the build machines are shared, wall time would time the neighbours. */
static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec * 1e-3;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Mask time per token over the documents; pass 0 starts with empty caches. */
static void time_grammar(const char *label, const dsr1_grammar *g, int passes)
{
    uint32_t *mask = calloc(dsr1_grammar_mask_words(nvocab), 4);
    double *t = malloc(4096 * sizeof(double));
    for (int pass = 0; pass < passes; pass++) {
        int nt = 0;
        for (size_t d = 0; d < sizeof(docs) / sizeof(docs[0]); d++) {
            int32_t *ids;
            size_t n;
            assert_int_equal(dsr1_tokenizer_encode(tok, docs[d], strlen(docs[d]), 0, &ids, &n),
                             DSR1_OK);
            dsr1_matcher *m;
            assert_int_equal(dsr1_matcher_create(g, &m), DSR1_OK);
            for (size_t i = 0; i <= n && nt < 4096; i++) {
                double t0 = now_us();
                dsr1_matcher_mask(m, mask);
                t[nt++] = now_us() - t0;
                int32_t next = i < n ? ids[i] : eos;
                assert_true((mask[next >> 5] >> (next & 31)) & 1);
                assert_int_equal(dsr1_matcher_advance(m, next), DSR1_OK);
            }
            free(ids);
            dsr1_matcher_free(m);
        }
        qsort(t, (size_t)nt, sizeof(double), cmp_d);
        double sum = 0;
        for (int i = 0; i < nt; i++) sum += t[i];
        printf(
            "mask time %-18s %s: %d tokens, p50 %.1f us, p99 %.1f us, max %.1f us, mean %.1f us\n",
            label, pass ? "warm" : "cold", nt, t[nt / 2], t[(nt * 99) / 100], t[nt - 1], sum / nt);
    }
    free(mask);
    free(t);
}

static void test_timing(void **state)
{
    (void)state;
    dsr1_grammar *g = NULL;
    double t0 = now_us();
    assert_int_equal(
        dsr1_grammar_compile_ebnf(vocab, schema_grammar, strlen(schema_grammar), NULL, &g),
        DSR1_OK);
    dsr1_grammar_stats s;
    dsr1_grammar_get_stats(g, &s);
    printf("compile schema grammar: %.0f us (%d rules, %d states)\n", now_us() - t0, s.rules,
           s.states);
    time_grammar("schema grammar", g, 2);
    dsr1_grammar_free(g);
    t0 = now_us();
    assert_int_equal(dsr1_grammar_compile_json_object(vocab, NULL, &g), DSR1_OK);
    printf("compile json_object: %.0f us\n", now_us() - t0);
    time_grammar("json_object", g, 2);
    dsr1_grammar_free(g);
}

/* The safe-text split (mask.c) against the whole-trie walk: a second vocabulary built with
 * DSR1_GRAMMAR_NO_SPLIT set, the same grammars compiled on both, random walks (seeded) with
 * the two masks compared at every step. Schemas: bounded strings (the chain and its end),
 * object keys that must not be a named property (exception first bytes), and random ones. */
static dsr1_grammar_vocab *nosplit_vocab(void)
{
    dsr1_grammar_vocab *v = NULL;
    setenv("DSR1_GRAMMAR_NO_SPLIT", "1", 1);
    assert_int_equal(dsr1_grammar_vocab_create(tok, eos, &v), DSR1_OK);
    unsetenv("DSR1_GRAMMAR_NO_SPLIT");
    return v;
}

/* Compares the masks of one schema on the two vocabularies along walks; returns the
 * trie nodes visited by the split side and the whole-trie side. */
static void compare_split(dsr1_grammar_vocab *ns, const char *schema, uint64_t *seed, int walks,
                          int steps, uint64_t work[2])
{
    dsr1_grammar *g[2] = {NULL, NULL};
    if (dsr1_grammar_compile_json_schema(vocab, schema, strlen(schema), NULL, &g[0]) != DSR1_OK)
        return; /* a random schema the converter refuses */
    assert_int_equal(dsr1_grammar_compile_json_schema(ns, schema, strlen(schema), NULL, &g[1]),
                     DSR1_OK);
    size_t nw = dsr1_grammar_mask_words(nvocab);
    uint32_t *mk[2] = {calloc(nw, 4), calloc(nw, 4)};
    int32_t *cand = malloc((size_t)nvocab * sizeof(int32_t));
    for (int w = 0; w < walks; w++) {
        dsr1_matcher *m[2];
        assert_int_equal(dsr1_matcher_create(g[0], &m[0]), DSR1_OK);
        assert_int_equal(dsr1_matcher_create(g[1], &m[1]), DSR1_OK);
        for (int step = 0; step < steps; step++) {
            for (int k = 0; k < 2; k++) {
                uint64_t w0 = dsr1_matcher_mask_work(m[k]);
                dsr1_matcher_mask(m[k], mk[k]);
                work[k] += dsr1_matcher_mask_work(m[k]) - w0;
            }
            if (memcmp(mk[0], mk[1], nw * 4)) {
                for (size_t i = 0; i < nw; i++)
                    if (mk[0][i] != mk[1][i])
                        fprintf(stderr, "schema %s step %d: word %zu split %08x whole %08x\n",
                                schema, step, i, mk[0][i], mk[1][i]);
                fail_msg("split mask differs");
            }
            /* a token with a quote a quarter of the time (leaves strings), else any */
            size_t nc = 0, nq = 0;
            bool quote = gt_rand(seed) % 4 == 0;
            for (int32_t t = 0; t < nvocab; t++) {
                if (!(mk[0][t >> 5] >> (t & 31) & 1) || t == eos) continue;
                cand[nc++] = t;
                if (quote && tl[t] && memchr(tb[t], '"', tl[t])) nq++;
            }
            if (!nc) break;
            int32_t pick = cand[gt_rand(seed) % nc];
            if (quote && nq) {
                size_t want = gt_rand(seed) % nq;
                for (size_t i = 0; i < nc; i++)
                    if (tl[cand[i]] && memchr(tb[cand[i]], '"', tl[cand[i]]) && !want--) {
                        pick = cand[i];
                        break;
                    }
            }
            assert_int_equal(dsr1_matcher_advance(m[0], pick), DSR1_OK);
            assert_int_equal(dsr1_matcher_advance(m[1], pick), DSR1_OK);
        }
        dsr1_matcher_free(m[0]);
        dsr1_matcher_free(m[1]);
    }
    free(cand);
    free(mk[0]);
    free(mk[1]);
    dsr1_grammar_free(g[0]);
    dsr1_grammar_free(g[1]);
}

static void test_split_masks(void **state)
{
    (void)state;
    dsr1_grammar_vocab *ns = nosplit_vocab();
    static const char *fixed[] = {
        "{\"type\":\"string\",\"maxLength\":40}",
        "{\"type\":\"string\",\"minLength\":3,\"maxLength\":7}",
        "{\"type\":\"string\",\"minLength\":150}",
        "{\"type\":\"array\",\"items\":{\"type\":\"string\",\"maxLength\":3}}",
        "{\"type\":\"object\",\"properties\":{\"s\":{\"type\":\"string\"},\"sa\":{\"type\":"
        "\"integer\"},\"name\":{\"type\":\"string\",\"maxLength\":12}},\"additionalProperties\":"
        "{\"type\":\"string\",\"maxLength\":5}}",
        "{\"type\":\"object\",\"properties\":{\"a\":{\"enum\":[\"x\",\"xy\",\"yz\"]},\"b\":{"
        "\"type\":\"string\",\"pattern\":\"^[a-z]{2,9}$\"}},\"required\":[\"a\",\"b\"]}",
    };
    uint64_t seed = 12345, work[2] = {0, 0};
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++)
        compare_split(ns, fixed[i], &seed, 3, 24, work);
    /* the split visits fewer trie nodes on these (deterministic: the counter, not time) */
    printf("split: %llu trie nodes, whole trie: %llu\n", (unsigned long long)work[0],
           (unsigned long long)work[1]);
    assert_true(work[0] < work[1]);
    static const char *names[] = {"a", "ab", "abc", "b", "s", "sx", "x", "\\u00e9", "k1", "k12"};
    for (int n = 0; n < 16; n++) {
        char schema[1024];
        int len = snprintf(schema, sizeof schema, "{\"type\":\"object\",\"properties\":{");
        int np = 1 + (int)(gt_rand(&seed) % 4);
        for (int p = 0; p < np; p++) {
            long lo = (long)(gt_rand(&seed) % 4), hi = lo + (long)(gt_rand(&seed) % 140);
            len += snprintf(schema + len, sizeof schema - (size_t)len,
                            "%s\"%s\":{\"type\":\"string\",\"minLength\":%ld,\"maxLength\":%ld}",
                            p ? "," : "", names[gt_rand(&seed) % 10], lo, hi);
        }
        int ap = (int)(gt_rand(&seed) % 3);
        snprintf(schema + len, sizeof schema - (size_t)len, "},\"additionalProperties\":%s}",
                 ap == 0   ? "false"
                 : ap == 1 ? "true"
                           : "{\"type\":\"string\",\"maxLength\":9}");
        compare_split(ns, schema, &seed, 2, 20, work);
    }
    dsr1_grammar_vocab_free(ns);
}

int main(int argc, char **argv)
{
    const char *golden = argc > 1 ? argv[1] : "../shared/golden";
    char path[1024];
    snprintf(path, sizeof(path), "%s/tokenizer/tokenizer.json", golden);
    if (access(path, R_OK) != 0) {
        fprintf(stderr, "skipped: no tokenizer at %s\n", path);
        return 77;
    }
    if (dsr1_tokenizer_load_file(path, &tok) != DSR1_OK) {
        fprintf(stderr, "tokenizer: %s\n", dsr1_errmsg());
        return 1;
    }
    eos = dsr1_tokenizer_token_id(tok, "<\xef\xbd\x9c"
                                       "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>");
    nvocab = dsr1_tokenizer_vocab_size(tok);
    double t0 = now_us();
    if (eos < 0 || dsr1_grammar_vocab_create(tok, eos, &vocab) != DSR1_OK) {
        fprintf(stderr, "vocab: %s\n", dsr1_errmsg());
        return 1;
    }
    printf("vocab: %d tokens, trie built in %.1f ms\n", (int)nvocab, (now_us() - t0) / 1000);
    tb = calloc((size_t)nvocab, sizeof(*tb));
    tl = calloc((size_t)nvocab, sizeof(*tl));
    for (int32_t i = 0; i < nvocab; i++) {
        size_t len;
        /* special tokens too (by their text): brute force tries every token */
        if (!dsr1_tokenizer_id_valid(tok, i) || i == eos) continue;
        if (dsr1_tokenizer_token_bytes(tok, i, &tb[i], &len) == DSR1_OK) tl[i] = (uint32_t)len;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_object_masks),   cmocka_unit_test(test_schema_masks),
        cmocka_unit_test(test_special_token_masks), cmocka_unit_test(test_special_token_errors),
        cmocka_unit_test(test_split_masks),         cmocka_unit_test(test_timing),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    free(tb);
    free(tl);
    dsr1_grammar_vocab_free(vocab);
    dsr1_tokenizer_free(tok);
    return rc;
}
