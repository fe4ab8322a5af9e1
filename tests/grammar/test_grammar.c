/* The grammar engine on small vocabularies: every construct of the grammar text, errors
 * with line:column, regexes against a reference matcher on random strings, left
 * recursion, limits, and token masks against brute force (token allowed iff advancing
 * over its bytes succeeds) on random vocabularies, with forced bytes and rollback. */
#include <pthread.h>

#include "grammar_test_util.h"

static dsr1_grammar_vocab *bytes_vocab;

static int setup(void **state)
{
    (void)state;
    bytes_vocab = gt_byte_vocab();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    dsr1_grammar_vocab_free(bytes_vocab);
    return 0;
}

static dsr1_grammar *ebnf(const char *src)
{
    dsr1_grammar *g = NULL;
    dsr1_status st = dsr1_grammar_compile_ebnf(bytes_vocab, src, strlen(src), NULL, &g);
    if (st) fprintf(stderr, "compile failed: %s\n", dsr1_errmsg());
    assert_int_equal(st, DSR1_OK);
    return g;
}

#define M(g, s) gt_match(g, s, strlen(s))

static void test_literals(void **state)
{
    (void)state;
    dsr1_grammar *g = ebnf("root ::= \"a\\n\\t\\r\\\\\\\"\\/\\x41\\u00e9\\U0001F600\"");
    assert_true(M(g, "a\n\t\r\\\"/A\xc3\xa9\xf0\x9f\x98\x80"));
    assert_false(M(g, "a\n\t\r\\\"/A\xc3\xa9"));
    assert_false(M(g, "a"));
    dsr1_grammar_free(g);
    g = ebnf("root ::= \"\"");
    assert_true(M(g, ""));
    assert_false(M(g, "a"));
    dsr1_grammar_free(g);
    g = ebnf("root ::= \"ab\" \"cd\" | \"x\"");
    assert_true(M(g, "abcd"));
    assert_true(M(g, "x"));
    assert_false(M(g, "ab"));
    assert_false(M(g, "abcdx"));
    dsr1_grammar_free(g);
}

static void test_classes(void **state)
{
    (void)state;
    dsr1_grammar *g = ebnf("root ::= [a-cx] [^\"\\\\\\x00-\\x1f] [\\d] [\\w] [\\s] . [é-ü]");
    assert_true(M(g, "cZ5_ q\xc3\xa9"));
    assert_true(M(g, "x\xe4\xb8\xad"
                     "9a\t\xf0\x9f\x98\x80\xc3\xbc"));
    assert_false(M(g, "d"
                      "Z5_ q\xc3\xa9"));    /* d not in [a-cx] */
    assert_false(M(g, "c\"5_ q\xc3\xa9"));  /* quote excluded */
    assert_false(M(g, "cZx_ q\xc3\xa9"));   /* not a digit */
    assert_false(M(g, "cZ5- q\xc3\xa9"));   /* not a word char */
    assert_false(M(g, "cZ5_xq\xc3\xa9"));   /* not a space */
    assert_false(M(g, "cZ5_ \nq\xc3\xa9")); /* . excludes newline */
    assert_false(M(g, "cZ5_ qa"));          /* below é */
    assert_false(M(g, "cZ5_ q\xc3"));       /* incomplete UTF-8 */
    dsr1_grammar_free(g);
    /* negated classes match whole code points, never surrogates or bad bytes */
    g = ebnf("root ::= [^a]");
    assert_true(M(g, "\xf4\x8f\xbf\xbf"));
    assert_false(M(g, "\xed\xa0\x80"));
    assert_false(M(g, "\xff"));
    assert_false(M(g, "\xc0\x80"));
    dsr1_grammar_free(g);
}

static void test_repetition(void **state)
{
    (void)state;
    dsr1_grammar *g = ebnf("root ::= \"a\"* \"b\"+ \"c\"? \"d\"{2} \"e\"{1,} \"f\"{0,2}");
    assert_true(M(g, "bdde"));
    assert_true(M(g, "aaabbcddeeeff"));
    assert_false(M(g, "bde"));
    assert_false(M(g, "ddde"));
    assert_false(M(g, "bddefff"));
    assert_false(M(g, "bdd"));
    dsr1_grammar_free(g);
    g = ebnf("root ::= (\"ab\" | \"c\")+ (\"x\" \"y\")?");
    assert_true(M(g, "abcab"));
    assert_true(M(g, "cxy"));
    assert_false(M(g, "cx"));
    assert_false(M(g, ""));
    dsr1_grammar_free(g);
}

static void test_rules_comments_start(void **state)
{
    (void)state;
    /* rules span lines, comments anywhere, `start` when there is no root */
    dsr1_grammar *g = ebnf("# a comment\n"
                           "start ::= item\n"
                           "   (\",\" item)*   # more\n"
                           "item ::= [0-9]+ | \"[\" start? \"]\"\n");
    assert_true(M(g, "1,22,[3,[4]],[]"));
    assert_false(M(g, "1,,2"));
    assert_false(M(g, "[1"));
    dsr1_grammar_free(g);
    /* rule names with - and digits; root preferred over start */
    g = ebnf("start ::= \"s\"\nroot ::= my-rule2\nmy-rule2 ::= \"r\"");
    assert_true(M(g, "r"));
    assert_false(M(g, "s"));
    dsr1_grammar_free(g);
}

static void test_left_recursion(void **state)
{
    (void)state;
    dsr1_grammar *g = ebnf("root ::= expr\n"
                           "expr ::= expr [+-] term | term\n"
                           "term ::= term \"*\" fac | fac\n"
                           "fac ::= [0-9]+ | \"(\" expr \")\"\n");
    assert_true(M(g, "1+2*3-(4*5+6)*7"));
    assert_true(M(g, "((1))"));
    assert_false(M(g, "1+"));
    assert_false(M(g, "1+*2"));
    assert_false(M(g, "(1"));
    dsr1_grammar_free(g);
    /* hidden and indirect left recursion, nullable prefix */
    g = ebnf("root ::= a\na ::= b \"x\" | \"y\"\nb ::= e a | a\ne ::= \"\"?\n");
    assert_true(M(g, "y"));
    assert_true(M(g, "yxxx"));
    assert_false(M(g, "x"));
    dsr1_grammar_free(g);
    /* ambiguous: root ::= root root | "a" */
    g = ebnf("root ::= root root | \"a\" | \"\"");
    assert_true(M(g, ""));
    assert_true(M(g, "aaaaaaa"));
    assert_false(M(g, "ab"));
    dsr1_grammar_free(g);
}

static void test_regex_terminals(void **state)
{
    (void)state;
    dsr1_grammar *g = ebnf("root ::= /[0-9]{4}-[0-9]{2}/ \"/\" /(?:ab|c)+\\/x?/");
    assert_true(M(g, "2024-01/abcab/"));
    assert_true(M(g, "2024-01/c/x"));
    assert_false(M(g, "2024-1/c/"));
    dsr1_grammar_free(g);
    g = NULL;
    const char *re = "^[A-Z][a-z]*(?<rest>\\s\\w+)*?\\.$";
    assert_int_equal(dsr1_grammar_compile_regex(bytes_vocab, re, strlen(re), NULL, &g), DSR1_OK);
    assert_true(M(g, "Hello big world."));
    assert_true(M(g, "A."));
    assert_false(M(g, "hello."));
    assert_false(M(g, "Hello"));
    dsr1_grammar_free(g);
}

static void expect_error(const char *src, dsr1_status want, const char *needle,
                         const dsr1_grammar_opts *o)
{
    dsr1_grammar *g = NULL;
    dsr1_status st = dsr1_grammar_compile_ebnf(bytes_vocab, src, strlen(src), o, &g);
    if (st != want || !strstr(dsr1_errmsg(), needle))
        fprintf(stderr, "for %s: status %d, message '%s', expected '%s'\n", src, st, dsr1_errmsg(),
                needle);
    assert_int_equal(st, want);
    assert_non_null(strstr(dsr1_errmsg(), needle));
    assert_null(g);
}

static void test_errors(void **state)
{
    (void)state;
    const dsr1_status E = DSR1_ERR_INVALID_ARG;
    expect_error("root ::= \"a\"\nx ::= [abc\n", E, "2:7: unterminated character class", NULL);
    expect_error("root ::= \"abc\n", E, "1:10: unterminated string literal", NULL);
    expect_error("root ::= foo", E, "1:10: undefined rule 'foo'", NULL);
    expect_error("root ::= \"a\"\n  \"b\" := \"c\"", E, "2:7", NULL);
    expect_error("root = \"a\"", E, "1:6: expected '::='", NULL);
    expect_error("root ::= \"a\"\nroot ::= \"b\"", E, "2:1: rule 'root' is defined twice", NULL);
    expect_error("root ::= \"\\q\"", E, "1:11: unknown escape", NULL);
    expect_error("root ::= \"a\"{3,1}", E, "1:13: repetition {3,1} out of order", NULL);
    expect_error("root ::= \"a\"{x}", E, "1:13: bad repetition", NULL);
    expect_error("root ::= (\"a\"", E, "1:10: unclosed '('", NULL);
    expect_error("root ::= /a(?=b)/", E, "1:12: lookahead is not supported", NULL);
    expect_error("root ::= /a(?<!b)/", E, "lookbehind is not supported", NULL);
    expect_error("root ::= /(a)\\1/", E, "1:14: backreferences are not supported", NULL);
    expect_error("root ::= /a\\bc/", E, "word boundary", NULL);
    expect_error("root ::= /a^b/", E, "1:12: '^' is supported only at the start", NULL);
    expect_error("root ::= /*a/", E, "nothing to repeat", NULL);
    expect_error("root ::= /a**/", E, "nothing to repeat", NULL);
    expect_error("root ::= /[z-a]/", E, "range out of order", NULL);
    expect_error("root ::= /(ab/", E, "unclosed group", NULL);
    expect_error("root ::= /ab)/", E, "unmatched ')'", NULL);
    expect_error("root ::= /abc", E, "1:10: unterminated /regex/", NULL);
    expect_error("main ::= \"a\"", E, "no rule named 'root' or 'start'", NULL);
    expect_error("root ::= \"a\" root", E, "matches no finite text", NULL);
    expect_error("root ::= [^\\x00-\\U0010FFFF]", E, "matches no finite text", NULL);
    expect_error("root ::= \"a\" @", E, "1:14: unexpected character '@'", NULL);
    expect_error("", E, "no rules", NULL);
    expect_error("root ::= \"\xff\"", E, "1:11: invalid UTF-8", NULL);
    /* a rule that cannot finish is dropped, and the rest still works */
    dsr1_grammar *g = ebnf("root ::= \"a\" | \"b\" loop\nloop ::= \"c\" loop");
    assert_true(M(g, "a"));
    assert_false(M(g, "b"));
    dsr1_grammar_free(g);
}

static void test_limits(void **state)
{
    (void)state;
    const dsr1_status R = DSR1_ERR_RANGE;
    expect_error("root ::= \"a\"{0,5000}", R, "exceeds max_repeat 1000", NULL);
    expect_error("root ::= /a{1001}/", R, "exceeds max_repeat", NULL);
    dsr1_grammar_opts o = {.max_repeat = 10};
    expect_error("root ::= \"a\"{11}", R, "exceeds max_repeat 10", &o);
    o = (dsr1_grammar_opts){.max_states = 5000};
    expect_error("root ::= ([a-z]{100}){100}", R, "max_states", &o);
    expect_error("root ::= /(a|b)*a(a|b){20}/", R, "max_states", &o);
    o = (dsr1_grammar_opts){.max_rules = 3};
    expect_error("root ::= a\na ::= b\nb ::= c\nc ::= \"x\"", R, "4:1: more than max_rules (3)",
                 &o);
    o = (dsr1_grammar_opts){.max_source = 10};
    expect_error("root ::= \"abcdef\"", R, "max_source", &o);
    /* deep nesting: parentheses and regex groups */
    char *deep = malloc(4096);
    strcpy(deep, "root ::= ");
    for (int i = 0; i < 1000; i++) strcat(deep, "(");
    expect_error(deep, R, "nested deeper than", NULL);
    strcpy(deep, "root ::= /");
    for (int i = 0; i < 1000; i++) strcat(deep, "(");
    strcat(deep, "/");
    expect_error(deep, R, "nested deeper than", NULL);
    free(deep);
    /* a long chain of inlined rules and a huge alternation compile (no stack blow-up) */
    size_t cap = 1 << 20;
    char *big = malloc(cap), *p = big;
    p += sprintf(p, "root ::= r0\n");
    for (int i = 0; i < 5000; i++) p += sprintf(p, "r%d ::= \"x\" r%d | \"y\"\n", i, i + 1);
    p += sprintf(p, "r5000 ::= \"z\"\n");
    dsr1_grammar *g = ebnf(big);
    assert_true(M(g, "xxxy"));
    dsr1_grammar_free(g);
    p = big;
    p += sprintf(p, "root ::= \"w0\"");
    for (int i = 1; i < 20000; i++) p += sprintf(p, " | \"w%d\"", i);
    g = ebnf(big);
    assert_true(M(g, "w19999"));
    assert_false(M(g, "w20000"));
    dsr1_grammar_free(g);
    free(big);
}

/* An ambiguous grammar on a long input: the advance fails with the item limit instead
 * of slowing down without bound; the matcher stays usable where it was. */
static void test_ambiguity_limit(void **state)
{
    (void)state;
    dsr1_grammar *g = ebnf("root ::= expr .?\nexpr ::= expr [+)] term | term\n"
                           "term ::= term root* fac | fac\nfac ::= [0-9]?+\n");
    dsr1_matcher *m;
    assert_int_equal(dsr1_matcher_create(g, &m), DSR1_OK);
    int i;
    dsr1_status st = DSR1_OK;
    for (i = 0; i < 3000 && st == DSR1_OK; i++)
        st = dsr1_matcher_advance_bytes(m, (const uint8_t *)(i % 3 ? "1" : "+"), 1);
    assert_int_equal(st, DSR1_ERR_RANGE); /* sets grow with the input here */
    {
        assert_non_null(strstr(dsr1_errmsg(), "too ambiguous"));
        uint32_t mask[9];
        dsr1_matcher_mask(m, mask); /* still answers */
        assert_int_equal(dsr1_matcher_rollback(m, 10), DSR1_OK);
        assert_int_equal(dsr1_matcher_advance_bytes(m, (const uint8_t *)"a", 1), DSR1_OK);
    }
    dsr1_matcher_free(m);
    dsr1_grammar_free(g);
}

/* ---- regexes against a reference matcher on random strings ---- */

typedef struct rnode {
    int kind; /* 0 char, 1 class [xy], 2 negclass [^x], 3 dot, 4 cat, 5 alt, 6 rep */
    char c, d;
    int min, max;
    struct rnode *a, *b;
} rnode;

static rnode *gen_re(uint64_t *s, int depth)
{
    rnode *n = calloc(1, sizeof(*n));
    int k = depth <= 0 ? (int)(gt_rand(s) % 4) : (int)(gt_rand(s) % 7);
    n->kind = k;
    n->c = (char)('a' + gt_rand(s) % 3);
    n->d = (char)('a' + gt_rand(s) % 3);
    if (k >= 4) {
        n->a = gen_re(s, depth - 1);
        if (k != 6) n->b = gen_re(s, depth - 1);
        n->min = (int)(gt_rand(s) % 3);
        n->max = gt_rand(s) % 3 == 0 ? -1 : n->min + (int)(gt_rand(s) % 3);
    }
    return n;
}

static void render(const rnode *n, char *out)
{
    char buf[64];
    switch (n->kind) {
    case 0:
        sprintf(buf, "%c", n->c);
        strcat(out, buf);
        break;
    case 1:
        sprintf(buf, "[%c%c]", n->c, n->d);
        strcat(out, buf);
        break;
    case 2:
        sprintf(buf, "[^%c]", n->c);
        strcat(out, buf);
        break;
    case 3:
        strcat(out, ".");
        break;
    case 4:
        strcat(out, "(?:");
        render(n->a, out);
        render(n->b, out);
        strcat(out, ")");
        break;
    case 5:
        strcat(out, "(?:");
        render(n->a, out);
        strcat(out, "|");
        render(n->b, out);
        strcat(out, ")");
        break;
    default:
        strcat(out, "(?:");
        render(n->a, out);
        if (n->max < 0)
            sprintf(buf, "){%d,}", n->min);
        else
            sprintf(buf, "){%d,%d}", n->min, n->max);
        strcat(out, buf);
    }
}

/* Set of end positions (bit i) reachable matching n from `from` in s[0..len). */
static uint32_t ends(const rnode *n, const char *s, int len, int from)
{
    uint32_t r = 0;
    switch (n->kind) {
    case 0:
        return from < len && s[from] == n->c ? 1u << (from + 1) : 0;
    case 1:
        return from < len && (s[from] == n->c || s[from] == n->d) ? 1u << (from + 1) : 0;
    case 2:
        return from < len && s[from] != n->c ? 1u << (from + 1) : 0;
    case 3:
        return from < len && s[from] != '\n' ? 1u << (from + 1) : 0;
    case 4:
        for (int e = 0; e <= len; e++)
            if (ends(n->a, s, len, from) >> e & 1) r |= ends(n->b, s, len, e);
        return r;
    case 5:
        return ends(n->a, s, len, from) | ends(n->b, s, len, from);
    default: {
        uint32_t cur = 1u << from;
        int reps = 0;
        for (;;) {
            if (reps >= n->min && (n->max < 0 || reps <= n->max)) r |= cur;
            if (n->max >= 0 && reps >= n->max) break;
            uint32_t next = 0;
            for (int e = 0; e <= len; e++)
                if (cur >> e & 1) next |= ends(n->a, s, len, e);
            reps++;
            if (n->max < 0 && reps > n->min && (r | next) == r) break;
            cur = next;
            if (!cur) break;
        }
        return r;
    }
    }
}

static void free_re(rnode *n)
{
    if (!n) return;
    free_re(n->a);
    free_re(n->b);
    free(n);
}

static void test_regex_random(void **state)
{
    (void)state;
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    int agree_true = 0;
    for (int it = 0; it < 300; it++) {
        rnode *re = gen_re(&seed, 4);
        char text[4096] = "";
        render(re, text);
        dsr1_grammar *g = NULL;
        assert_int_equal(dsr1_grammar_compile_regex(bytes_vocab, text, strlen(text), NULL, &g),
                         DSR1_OK);
        for (int k = 0; k < 40; k++) {
            char s[12];
            int len = (int)(gt_rand(&seed) % 9);
            for (int i = 0; i < len; i++) s[i] = "abcd"[gt_rand(&seed) % 4];
            bool want = ends(re, s, len, 0) >> len & 1;
            bool got = gt_match(g, s, (size_t)len);
            if (want != got) fprintf(stderr, "regex %s on '%.*s': want %d\n", text, len, s, want);
            assert_int_equal(want, got);
            agree_true += want;
        }
        dsr1_grammar_free(g);
        free_re(re);
    }
    assert_true(agree_true > 500); /* the test saw matches, not only rejections */
}

/* ---- masks on random vocabularies ---- */

typedef struct {
    int32_t n;
    uint8_t **b;
    uint32_t *l;
    dsr1_grammar_vocab *v;
} rvocab;

/* n tokens: every single character of `alpha`, then random strings of 1..5 of them
 * (multi-byte characters may be split between tokens), a few specials, eos last. */
static rvocab make_vocab(uint64_t *s, int32_t n, const char *alpha)
{
    rvocab r = {n, calloc((size_t)n, sizeof(uint8_t *)), calloc((size_t)n, sizeof(uint32_t)), 0};
    size_t na = strlen(alpha);
    for (int32_t t = 0; t < n - 1; t++) {
        r.b[t] = malloc(8);
        if ((size_t)t < na) {
            r.b[t][0] = (uint8_t)alpha[t];
            r.l[t] = 1;
        } else if (t % 50 == 7) {
            r.l[t] = 0; /* special */
        } else {
            r.l[t] = 1 + (uint32_t)(gt_rand(s) % 5);
            for (uint32_t i = 0; i < r.l[t]; i++) r.b[t][i] = (uint8_t)alpha[gt_rand(s) % na];
        }
    }
    r.b[n - 1] = malloc(8);
    memcpy(r.b[n - 1], "</s>", 4);
    r.l[n - 1] = 4; /* eos has text, which never matches */
    assert_int_equal(
        dsr1_grammar_vocab_create_raw(n, (const uint8_t *const *)r.b, r.l, n - 1, &r.v), DSR1_OK);
    r.l[n - 1] = 0;
    return r;
}

static void free_vocab(rvocab *r)
{
    for (int32_t t = 0; t < r->n; t++) free(r->b[t]);
    free(r->b);
    free(r->l);
    dsr1_grammar_vocab_free(r->v);
}

static void walk_grammar(rvocab *rv, const char *src, uint64_t *seed, int walks, int steps)
{
    dsr1_grammar *g = NULL;
    dsr1_status st = dsr1_grammar_compile_ebnf(rv->v, src, strlen(src), NULL, &g);
    if (st) fprintf(stderr, "%s\n", dsr1_errmsg());
    assert_int_equal(st, DSR1_OK);
    for (int w = 0; w < walks; w++)
        gt_random_walk(g, rv->n, (const uint8_t *const *)rv->b, rv->l, rv->n - 1, seed, steps);
    dsr1_grammar_free(g);
}

static void test_mask_random_vocab(void **state)
{
    (void)state;
    uint64_t seed = 12345;
    rvocab j = make_vocab(&seed, 600, "{}[]\",:0123456789.-eE+truefalsnmgb\\u \xc3\xa9\n");
    dsr1_grammar *g = NULL;
    assert_int_equal(dsr1_grammar_compile_json_object(j.v, NULL, &g), DSR1_OK);
    for (int w = 0; w < 6; w++)
        gt_random_walk(g, j.n, (const uint8_t *const *)j.b, j.l, j.n - 1, &seed, 60);
    dsr1_grammar_free(g);
    dsr1_grammar_opts o = {.json_whitespace = true};
    assert_int_equal(dsr1_grammar_compile_json_object(j.v, &o, &g), DSR1_OK);
    for (int w = 0; w < 4; w++)
        gt_random_walk(g, j.n, (const uint8_t *const *)j.b, j.l, j.n - 1, &seed, 60);
    dsr1_grammar_free(g);
    walk_grammar(&j,
                 "root ::= \"{\\\"name\\\":\" str \",\\\"age\\\":\" /[1-9][0-9]{0,2}/ "
                 "(\",\\\"tags\\\":[\" (str (\",\" str)*)? \"]\")? \"}\"\n"
                 "str ::= \"\\\"\" ([^\"\\\\] | \"\\\\\" [\"\\\\nu])* \"\\\"\"\n",
                 &seed, 6, 50);
    free_vocab(&j);

    rvocab e = make_vocab(&seed, 300, "0123456789+-*()xy");
    walk_grammar(&e,
                 "root ::= expr\nexpr ::= expr [+-] term | term\nterm ::= term \"*\" fac | fac\n"
                 "fac ::= [0-9]+ | \"(\" expr \")\" | var\nvar ::= [xy]+\n",
                 &seed, 8, 40);
    walk_grammar(
        &e,
        "root ::= a b\na ::= \"x\"* | \"\"\nb ::= \"x\"? \"y\"* c\nc ::= \"\" | \"(\" root \")\"\n",
        &seed, 8, 30);
    walk_grammar(&e, "root ::= root root | \"(\" root? \")\" | [0-9]\n", &seed, 6, 25);
    free_vocab(&e);
}

static void test_forced_rollback(void **state)
{
    (void)state;
    dsr1_grammar *g =
        ebnf("root ::= \"{\\\"name\\\":\\\"\" [a-z]+ \"\\\",\\\"x\\\":\" (\"1\" | \"2\") \"}\"");
    dsr1_matcher *m;
    assert_int_equal(dsr1_matcher_create(g, &m), DSR1_OK);
    uint8_t buf[64];
    size_t n = dsr1_matcher_forced_bytes(m, buf, sizeof(buf));
    assert_int_equal(n, 9);
    assert_memory_equal(buf, "{\"name\":\"", 9);
    assert_int_equal(dsr1_matcher_forced_bytes(m, buf, 4), 4);
    assert_int_equal(dsr1_matcher_advance_bytes(m, buf, 4), DSR1_OK);
    assert_int_equal(dsr1_matcher_forced_bytes(m, buf, sizeof(buf)), 5);
    assert_int_equal(dsr1_matcher_advance_bytes(m, (const uint8_t *)"me\":\"ab", 7), DSR1_OK);
    assert_int_equal(dsr1_matcher_forced_bytes(m, buf, sizeof(buf)), 0); /* letter or quote */
    assert_int_equal(dsr1_matcher_advance(m, '"'), DSR1_OK);
    n = dsr1_matcher_forced_bytes(m, buf, sizeof(buf));
    assert_int_equal(n, 5);
    assert_memory_equal(buf, ",\"x\":", 5);
    /* rejected input leaves the matcher as it was */
    assert_int_equal(dsr1_matcher_advance(m, 'q'), DSR1_ERR_INVALID_ARG);
    assert_int_equal(dsr1_matcher_advance_bytes(m, (const uint8_t *)",\"y", 3),
                     DSR1_ERR_INVALID_ARG);
    assert_int_equal(dsr1_matcher_forced_bytes(m, buf, sizeof(buf)), 5);
    uint32_t m1[9], m2[9];
    dsr1_matcher_mask(m, m1);
    assert_int_equal(dsr1_matcher_advance_bytes(m, (const uint8_t *)",\"x\":1", 6), DSR1_OK);
    assert_int_equal(dsr1_matcher_advance(m, '}'), DSR1_OK);
    assert_true(dsr1_matcher_accepting(m));
    assert_int_equal(dsr1_matcher_advance(m, 256), DSR1_OK); /* eos */
    assert_true(dsr1_matcher_ended(m));
    assert_int_equal(dsr1_matcher_advance(m, '}'), DSR1_ERR_INVALID_ARG);
    dsr1_matcher_mask(m, m2);
    assert_int_equal(m2[8], 1u); /* eos only */
    assert_int_equal(dsr1_matcher_rollback(m, 3), DSR1_OK);
    assert_false(dsr1_matcher_ended(m));
    dsr1_matcher_mask(m, m2);
    assert_memory_equal(m1, m2, sizeof(m1));
    assert_int_equal(dsr1_matcher_rollback(m, 100), DSR1_ERR_RANGE);
    assert_int_equal(dsr1_matcher_rollback(m, 3), DSR1_OK); /* back to the start */
    assert_int_equal(dsr1_matcher_forced_bytes(m, buf, sizeof(buf)), 9);
    assert_int_equal(dsr1_matcher_advance(m, 256), DSR1_ERR_INVALID_ARG); /* not complete */
    dsr1_matcher_free(m);
    dsr1_grammar_free(g);
    /* forced bytes stop before an incomplete character */
    g = ebnf("root ::= \"a\xc3\xa9\" [\xc3\xa0-\xc3\xa1]");
    assert_int_equal(dsr1_matcher_create(g, &m), DSR1_OK);
    assert_int_equal(dsr1_matcher_forced_bytes(m, buf, sizeof(buf)), 3);
    dsr1_matcher_free(m);
    dsr1_grammar_free(g);
}

static void test_json_object(void **state)
{
    (void)state;
    dsr1_grammar *g = NULL;
    assert_int_equal(dsr1_grammar_compile_json_object(bytes_vocab, NULL, &g), DSR1_OK);
    assert_true(M(g, "{}"));
    assert_true(M(g, "{\"a\":[1,-2.5e+3,true,null,{\"b\":\"\\u00e9\\n\xc3\xa9\"}],\"c\":{}}"));
    assert_false(M(g, "[1]"));
    assert_false(M(g, "{ }"));
    assert_false(M(g, "{\"a\":01}"));
    assert_false(M(g, "{\"a\":\"\n\"}"));
    dsr1_grammar_free(g);
    dsr1_grammar_opts o = {.json_whitespace = true};
    assert_int_equal(dsr1_grammar_compile_json_object(bytes_vocab, &o, &g), DSR1_OK);
    assert_true(M(g, "{ \"a\" : [ 1 ,\n\t2 ] }"));
    assert_false(M(g, " {}"));
    dsr1_grammar_free(g);
}

/* Several threads fill one grammar's lazy caches at once; masks equal a private run's. */
typedef struct {
    const dsr1_grammar *g;
    const int32_t *toks;
    int n;
    uint32_t *masks; /* n * words */
    size_t words;
} thr_arg;

static void *thr_main(void *p)
{
    thr_arg *a = p;
    dsr1_matcher *m;
    if (dsr1_matcher_create(a->g, &m)) return NULL;
    for (int i = 0; i < a->n; i++) {
        dsr1_matcher_mask(m, a->masks + (size_t)i * a->words);
        if (dsr1_matcher_advance(m, a->toks[i])) break;
    }
    dsr1_matcher_free(m);
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    const char *text = "{\"k\":[1,2,{\"x\":\"y\\\"z\"}],\"q\":false}";
    int n = (int)strlen(text);
    int32_t toks[64];
    for (int i = 0; i < n; i++) toks[i] = (uint8_t)text[i];
    dsr1_grammar *ref = NULL, *shared = NULL;
    assert_int_equal(dsr1_grammar_compile_json_object(bytes_vocab, NULL, &ref), DSR1_OK);
    assert_int_equal(dsr1_grammar_compile_json_object(bytes_vocab, NULL, &shared), DSR1_OK);
    size_t words = dsr1_grammar_mask_words(257);
    thr_arg want = {ref, toks, n, calloc((size_t)n * words, 4), words};
    thr_main(&want);
    pthread_t th[4];
    thr_arg got[4];
    for (int t = 0; t < 4; t++) {
        got[t] = (thr_arg){shared, toks, n, calloc((size_t)n * words, 4), words};
        pthread_create(&th[t], NULL, thr_main, &got[t]);
    }
    for (int t = 0; t < 4; t++) {
        pthread_join(th[t], NULL);
        assert_memory_equal(got[t].masks, want.masks, (size_t)n * words * 4);
        free(got[t].masks);
    }
    free(want.masks);
    dsr1_grammar_free(ref);
    dsr1_grammar_free(shared);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_literals),
        cmocka_unit_test(test_classes),
        cmocka_unit_test(test_repetition),
        cmocka_unit_test(test_rules_comments_start),
        cmocka_unit_test(test_left_recursion),
        cmocka_unit_test(test_regex_terminals),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_ambiguity_limit),
        cmocka_unit_test(test_regex_random),
        cmocka_unit_test(test_mask_random_vocab),
        cmocka_unit_test(test_forced_rollback),
        cmocka_unit_test(test_json_object),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
