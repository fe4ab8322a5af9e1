/* The HTTP API's tool-call parser (coordinator/http/http_tools.h) on R1's format: content
 * before the calls, one and several calls, arguments with braces, backticks and newlines,
 * every split of the text into feeds (as tokens arrive) giving the same content and calls
 * as one feed, no marker text ever released as content, malformed and unfinished calls,
 * the tool prompt naming every tool and the format, and the tool-call grammar
 * (dsr1_tool_grammar) compiled on a byte vocabulary with R1's markers as special tokens:
 * well-formed calls accepted, calls with the wrong function, arguments the schema rejects,
 * marker text instead of the marker token and a second call where one is allowed refused,
 * and unsupported keywords named with the function and the JSON pointer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grammar.h"
#include "http_tools.h"

#define CALL(name, args)                                                                           \
    DSR1_TOOL_CALL_BEGIN "function" DSR1_TOOL_SEP name "\n```json\n" args "\n``"                   \
                         "`" DSR1_TOOL_CALL_END

typedef struct {
    char content[4096];
    int n_calls;
    char name[8][64];
    char args[8][1024];
} parsed;

/* Feeds text in pieces cut at the given offsets (sorted, ending with len), collecting. */
static void parse_split(const char *text, const size_t *cuts, int n_cuts, parsed *out)
{
    memset(out, 0, sizeof(*out));
    dsr1_toolparse *p;
    assert_int_equal(dsr1_toolparse_create(&p), DSR1_OK);
    size_t at = 0;
    for (int i = 0; i <= n_cuts; i++) {
        size_t end = i < n_cuts ? cuts[i] : strlen(text);
        assert_int_equal(dsr1_toolparse_feed(p, text + at, end - at, i == n_cuts), DSR1_OK);
        at = end;
        size_t n;
        const char *c = dsr1_toolparse_content(p, &n);
        assert_true(strlen(out->content) + n < sizeof(out->content));
        strncat(out->content, c, n);
        int ne;
        const dsr1_tool_event *ev = dsr1_toolparse_events(p, &ne);
        for (int k = 0; k < ne; k++) {
            assert_true(ev[k].index >= 0 && ev[k].index < 8);
            if (ev[k].name) {
                assert_int_equal(ev[k].index, out->n_calls); /* names first, in order */
                snprintf(out->name[ev[k].index], 64, "%s", ev[k].name);
                out->n_calls++;
            } else {
                assert_true(ev[k].index < out->n_calls); /* arguments after the name */
            }
            strcat(out->args[ev[k].index], ev[k].args);
        }
    }
    dsr1_toolparse_destroy(p);
}

static void parse_whole(const char *text, parsed *out)
{
    parse_split(text, NULL, 0, out);
}

static void test_plain_text(void **state)
{
    (void)state;
    parsed r;
    parse_whole("Just an answer, with ``` and <｜tool but no call.", &r);
    assert_string_equal(r.content, "Just an answer, with ``` and <｜tool but no call.");
    assert_int_equal(r.n_calls, 0);
}

static void test_one_and_several_calls(void **state)
{
    (void)state;
    parsed r;
    parse_whole("Let me check." DSR1_TOOL_CALLS_BEGIN CALL("get_weather", "{\"city\": \"Paris\"}")
                    DSR1_TOOL_CALLS_END,
                &r);
    assert_string_equal(r.content, "Let me check.");
    assert_int_equal(r.n_calls, 1);
    assert_string_equal(r.name[0], "get_weather");
    assert_string_equal(r.args[0], "{\"city\": \"Paris\"}");

    const char *args2 = "{\"code\": \"print(1)\\n```x```\", \"nested\": {\"a\": [1, {}]}}";
    char text[2048];
    snprintf(text, sizeof(text),
             DSR1_TOOL_CALLS_BEGIN CALL(
                 "a", "{}") "\n" DSR1_TOOL_CALL_BEGIN "function" DSR1_TOOL_SEP
                            "b.c-d\n```json\n%s\n```" DSR1_TOOL_CALL_END DSR1_TOOL_CALLS_END,
             args2);
    parse_whole(text, &r);
    assert_string_equal(r.content, "");
    assert_int_equal(r.n_calls, 2);
    assert_string_equal(r.name[0], "a");
    assert_string_equal(r.args[0], "{}");
    assert_string_equal(r.name[1], "b.c-d");
    assert_string_equal(r.args[1], args2);
}

/* Every way of cutting the text in two or three pieces gives the same result, and no
 * released content ever holds part of a marker. */
static void test_every_split(void **state)
{
    (void)state;
    const char *text = "Sure.\n" DSR1_TOOL_CALLS_BEGIN CALL("f", "{\"x\": \"a\\nb```\"}")
        CALL("g", "[1,2]") DSR1_TOOL_CALLS_END;
    parsed whole, r;
    parse_whole(text, &whole);
    assert_int_equal(whole.n_calls, 2);
    assert_string_equal(whole.content, "Sure.\n");
    assert_string_equal(whole.args[0], "{\"x\": \"a\\nb```\"}");
    assert_string_equal(whole.args[1], "[1,2]");
    size_t n = strlen(text);
    for (size_t a = 1; a < n; a++) {
        size_t cuts[1] = {a};
        parse_split(text, cuts, 1, &r);
        assert_memory_equal(&r, &whole, sizeof(r));
    }
    /* random three-way cuts (seeded) */
    srand(12345);
    for (int t = 0; t < 2000; t++) {
        size_t c1 = 1 + (size_t)rand() % (n - 1), c2 = 1 + (size_t)rand() % (n - 1);
        size_t cuts[2] = {c1 < c2 ? c1 : c2, c1 < c2 ? c2 : c1};
        parse_split(text, cuts, 2, &r);
        assert_memory_equal(&r, &whole, sizeof(r));
    }
}

static void test_malformed(void **state)
{
    (void)state;
    parsed r;
    /* unfinished: the name and the arguments so far are reported */
    parse_whole(DSR1_TOOL_CALLS_BEGIN DSR1_TOOL_CALL_BEGIN "function" DSR1_TOOL_SEP
                                                           "f\n```json\n{\"a\": 1",
                &r);
    assert_int_equal(r.n_calls, 1);
    assert_string_equal(r.name[0], "f");
    assert_string_equal(r.args[0], "{\"a\": 1");
    dsr1_toolparse *p;
    assert_int_equal(dsr1_toolparse_create(&p), DSR1_OK);
    assert_int_equal(dsr1_toolparse_feed(p,
                                         DSR1_TOOL_CALLS_BEGIN DSR1_TOOL_CALL_BEGIN
                                         "function" DSR1_TOOL_SEP "f\n```json\n{",
                                         strlen(DSR1_TOOL_CALLS_BEGIN DSR1_TOOL_CALL_BEGIN
                                                "function" DSR1_TOOL_SEP "f\n```json\n{"),
                                         true),
                     DSR1_OK);
    assert_int_equal(dsr1_toolparse_calls(p), 1);
    assert_false(dsr1_toolparse_complete(p));
    dsr1_toolparse_destroy(p);
    /* text between the calls that is not a call ends the calls: it is content */
    parse_whole(DSR1_TOOL_CALLS_BEGIN CALL("f", "{}") "oops, more text", &r);
    assert_int_equal(r.n_calls, 1);
    assert_string_equal(r.content, "oops, more text");
    /* without a fence the arguments run to the call's end marker */
    parse_whole(DSR1_TOOL_CALLS_BEGIN DSR1_TOOL_CALL_BEGIN
                "function" DSR1_TOOL_SEP "f\n{\"k\": true}" DSR1_TOOL_CALL_END DSR1_TOOL_CALLS_END,
                &r);
    assert_int_equal(r.n_calls, 1);
    assert_string_equal(r.args[0], "{\"k\": true}");
}

static void test_prompt(void **state)
{
    (void)state;
    char *text;
    const char *tools = "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
                        "\"description\":\"Weather of a city\",\"parameters\":{\"type\":"
                        "\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}}}},"
                        "{\"type\":\"function\",\"function\":{\"name\":\"noargs\"}}]";
    assert_int_equal(dsr1_tool_prompt(tools, "Now you must call the function noargs.", &text),
                     DSR1_OK);
    assert_non_null(strstr(text, "\"name\":\"get_weather\""));
    assert_non_null(strstr(text, "Weather of a city"));
    assert_non_null(strstr(text, "\"name\":\"noargs\""));
    assert_non_null(
        strstr(text, DSR1_TOOL_CALLS_BEGIN DSR1_TOOL_CALL_BEGIN "function" DSR1_TOOL_SEP));
    assert_non_null(strstr(text, "Now you must call the function noargs."));
    /* the example call in the prompt parses as one call */
    parsed r;
    parse_whole(strstr(text, DSR1_TOOL_CALLS_BEGIN), &r);
    assert_true(r.n_calls == 1);
    assert_string_equal(r.name[0], "NAME");
    free(text);
    assert_int_equal(dsr1_tool_prompt("{\"not\": \"an array\"}", "", &text), DSR1_ERR_INVALID_ARG);
}

/* ---- the tool-call grammar ---- */

/* Tokens: the 256 bytes (id = byte value), then R1's five markers, then EOS. */
enum { T_CALLS_BEGIN = 256, T_CALLS_END, T_CALL_BEGIN, T_CALL_END, T_SEP, T_EOS, T_N };
static const char *const marker[] = {DSR1_TOOL_CALLS_BEGIN, DSR1_TOOL_CALLS_END,
                                     DSR1_TOOL_CALL_BEGIN, DSR1_TOOL_CALL_END, DSR1_TOOL_SEP};

static dsr1_grammar_vocab *marker_vocab(void)
{
    static uint8_t b[256];
    const uint8_t *p[T_N];
    uint32_t l[T_N];
    const char *sp[T_N] = {0};
    for (int i = 0; i < T_N; i++) {
        if (i < 256) b[i] = (uint8_t)i;
        p[i] = i < 256 ? &b[i] : NULL;
        l[i] = i < 256 ? 1 : 0;
        if (i >= 256 && i < T_EOS) sp[i] = marker[i - 256];
    }
    sp[T_EOS] = "<eos>";
    dsr1_grammar_vocab *v = NULL;
    assert_int_equal(dsr1_grammar_vocab_create_raw_special(T_N, p, l, sp, T_EOS, &v), DSR1_OK);
    return v;
}

/* Feeds text to a matcher: the markers' texts as their tokens, the rest byte by byte;
 * true when every token is allowed and the text is complete (EOS allowed). */
static bool accepts(const dsr1_grammar *g, const char *text)
{
    dsr1_matcher *m;
    assert_int_equal(dsr1_matcher_create(g, &m), DSR1_OK);
    bool ok = true;
    for (size_t i = 0; ok && text[i];) {
        int tok = (uint8_t)text[i];
        size_t n = 1;
        for (int k = 0; k < 5; k++)
            if (!strncmp(text + i, marker[k], strlen(marker[k]))) {
                tok = 256 + k;
                n = strlen(marker[k]);
            }
        ok = dsr1_matcher_advance(m, tok) == DSR1_OK;
        i += n;
    }
    ok = ok && dsr1_matcher_advance(m, T_EOS) == DSR1_OK;
    dsr1_matcher_free(m);
    return ok;
}

static const char tools_json[] =
    "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"strict\":true,"
    "\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\","
    "\"pattern\":\"^[a-z/\\\\]]+$\"},\"days\":{\"type\":\"integer\",\"minimum\":1}},"
    "\"required\":[\"city\"]}}},"
    "{\"type\":\"function\",\"function\":{\"name\":\"now\"}},"
    "{\"type\":\"function\",\"function\":{\"name\":\"any.thing\",\"parameters\":{}}}]";

static dsr1_grammar *tool_grammar(const dsr1_grammar_vocab *v, const char *only, bool parallel,
                                  bool after_begin)
{
    char *text = NULL, param[32] = "";
    size_t len = 0;
    assert_int_equal(dsr1_tool_grammar(tools_json, only, parallel, after_begin, &text, &len, param,
                                       sizeof(param)),
                     DSR1_OK);
    dsr1_grammar *g = NULL;
    if (dsr1_grammar_compile_ebnf(v, text, len, NULL, &g) != DSR1_OK) {
        fprintf(stderr, "%s\n%s\n", dsr1_errmsg(), text);
        fail();
    }
    free(text);
    return g;
}

#define WEATHER(args) CALL("get_weather", args)

static void test_grammar(void **state)
{
    (void)state;
    dsr1_grammar_vocab *v = marker_vocab();
    dsr1_grammar *g = tool_grammar(v, NULL, true, false);
    const char *B = DSR1_TOOL_CALLS_BEGIN, *E = DSR1_TOOL_CALLS_END;
    char t[1024];
#define OK(body, want)                                                                             \
    do {                                                                                           \
        snprintf(t, sizeof(t), "%s%s%s", B, body, E);                                              \
        if (accepts(g, t) != (want)) {                                                             \
            fprintf(stderr, "expected %s: %s\n", (want) ? "accepted" : "refused", t);              \
            fail();                                                                                \
        }                                                                                          \
    } while (0)
    OK(WEATHER("{\"city\":\"paris\"}"), true);
    OK(WEATHER("{\"city\":\"a/]b\",\"days\":3}"), true);
    OK(WEATHER("{\"city\":\"paris\"}") CALL("now", "{}") CALL("any.thing", "{\"x\":[1]}"), true);
    OK(WEATHER("{\"city\":\"Paris\"}"), false);         /* the pattern */
    OK(WEATHER("{\"city\":\"paris\",\"x\":1}"), false); /* strict */
    OK(WEATHER("{\"city\": \"paris\"}"), false);        /* compact */
    OK(WEATHER("{\"days\":3}"), false);                 /* required */
    OK(CALL("now", "{\"a\":1}"), false);                /* no parameters: {} */
    OK(CALL("get_time", "{}"), false);                  /* not a declared function */
    OK("", false);                                      /* at least one call */
    OK(WEATHER("{\"city\":\"x\"}") "\n", false);
    /* the markers' text is not the markers */
    assert_false(accepts(g, "<｜tool▁calls▁begin｜>" DSR1_TOOL_CALLS_END));
    dsr1_grammar_free(g);

    g = tool_grammar(v, "now", false, false); /* named: exactly one call of it */
    OK(CALL("now", "{}"), true);
    OK(CALL("now", "{}") CALL("now", "{}"), false);
    OK(WEATHER("{\"city\":\"x\"}"), false);
    dsr1_grammar_free(g);

    g = tool_grammar(v, NULL, false, true); /* auto: after <｜tool▁calls▁begin｜> */
    B = "";
    OK(CALL("now", "{}"), true);
    OK(CALL("now", "{}") CALL("now", "{}"), false);
    B = DSR1_TOOL_CALLS_BEGIN;
    OK(CALL("now", "{}"), false);
    dsr1_grammar_free(g);
#undef OK
    dsr1_grammar_vocab_free(v);
}

static void test_grammar_errors(void **state)
{
    (void)state;
    char *text = NULL, param[32] = "";
    size_t len = 0;
    const char bad[] = "[{\"type\":\"function\",\"function\":{\"name\":\"ok\"}},"
                       "{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":"
                       "{\"type\":\"object\",\"properties\":{\"a\":{\"not\":{}}}}}}]";
    assert_int_equal(dsr1_tool_grammar(bad, NULL, true, false, &text, &len, param, sizeof(param)),
                     DSR1_ERR_INVALID_ARG);
    assert_string_equal(param, "tools");
    const char *msg = dsr1_errmsg();
    if (!strstr(msg, "tools[1]") || !strstr(msg, "'f'") || !strstr(msg, "'not'") ||
        !strstr(msg, "/properties/a")) {
        fprintf(stderr, "message: %s\n", msg);
        fail();
    }
    /* a named function leaves the others' schemas alone */
    assert_int_equal(dsr1_tool_grammar(bad, "ok", false, false, &text, &len, param, sizeof(param)),
                     DSR1_OK);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_text),     cmocka_unit_test(test_one_and_several_calls),
        cmocka_unit_test(test_every_split),    cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_prompt),         cmocka_unit_test(test_grammar),
        cmocka_unit_test(test_grammar_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
