/* Compiling: grammar text, a regex, a JSON Schema (through dsr1_json_schema_to_ebnf) or
 * "any JSON object" to a dsr1_grammar, with the limits of dsr1_grammar_opts resolved and
 * enforced; stats and freeing. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "grammar_internal.h"
#include "utf8.h"

static dsr1_grammar_opts resolve(const dsr1_grammar_opts *o)
{
    dsr1_grammar_opts r = o ? *o : (dsr1_grammar_opts){0};
    if (!r.max_source) r.max_source = 1u << 20;
    if (r.max_rules <= 0) r.max_rules = 10000;
    if (r.max_repeat <= 0) r.max_repeat = 1000;
    if (r.max_states <= 0) r.max_states = 1000000;
    return r;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef enum { SRC_EBNF, SRC_REGEX } src_kind;

static dsr1_status compile(const dsr1_grammar_vocab *v, const char *text, size_t len, src_kind kind,
                           const dsr1_grammar_opts *opts, dsr1_grammar **out)
{
    double t0 = now_s();
    if (!v || !out || (!text && len))
        return dsr1_error(DSR1_ERR_INVALID_ARG, "grammar: missing vocabulary, text or output");
    dsr1_grammar_opts o = resolve(opts);
    const char *what = kind == SRC_EBNF ? "grammar" : "regex";
    if (len > o.max_source)
        return dsr1_error(DSR1_ERR_RANGE, "%s: %zu bytes exceed max_source (%zu)", what, len,
                          o.max_source);
    dsr1__src src = {text ? text : "", len, what, v};
    size_t bad = dsr1_utf8_valid_prefix((const uint8_t *)src.text, len);
    if (bad < len) return dsr1__src_error(&src, bad, DSR1_ERR_INVALID_ARG, "invalid UTF-8");
    dsr1__arena a = {0};
    dsr1__rules rs = {0};
    dsr1_status st;
    if (kind == SRC_EBNF) {
        st = dsr1__ebnf_parse(&a, &src, &o, &rs);
    } else {
        dsr1__ast *body = NULL;
        rs.rules = dsr1__arena_alloc(&a, sizeof(*rs.rules));
        st = rs.rules ? dsr1__regex_parse(&a, &src, 0, len, &o, &body, &rs.terminals)
                      : dsr1_error(DSR1_ERR_NOMEM, "regex: out of memory");
        if (!st) {
            rs.rules[0] = (dsr1__rule_src){.name = "root", .name_len = 4, .body = body};
            rs.nrules = rs.cap = 1;
            rs.root = 0;
        }
    }
    dsr1_grammar *g = NULL;
    if (!st) {
        g = calloc(1, sizeof(*g));
        if (!g) st = dsr1_error(DSR1_ERR_NOMEM, "grammar: out of memory");
    }
    if (!st) {
        g->vocab = v;
        st = dsr1__automaton_build(&rs, &o, g);
    }
    dsr1__arena_free(&a);
    if (st) {
        dsr1_grammar_free(g);
        return st;
    }
    g->stats.compile_s = now_s() - t0;
    *out = g;
    return DSR1_OK;
}

dsr1_status dsr1_grammar_compile_ebnf(const dsr1_grammar_vocab *v, const char *src, size_t len,
                                      const dsr1_grammar_opts *opts, dsr1_grammar **out)
{
    return compile(v, src, len, SRC_EBNF, opts, out);
}

dsr1_status dsr1_grammar_compile_regex(const dsr1_grammar_vocab *v, const char *re, size_t len,
                                       const dsr1_grammar_opts *opts, dsr1_grammar **out)
{
    return compile(v, re, len, SRC_REGEX, opts, out);
}

dsr1_status dsr1_grammar_compile_json_schema(const dsr1_grammar_vocab *v, const char *schema,
                                             size_t len, const dsr1_grammar_opts *opts,
                                             dsr1_grammar **out)
{
    double t0 = now_s();
    char *text = NULL;
    size_t tlen = 0;
    dsr1_grammar_opts o = resolve(opts);
    if (!schema && len) return dsr1_error(DSR1_ERR_INVALID_ARG, "JSON Schema: no text");
    if (len > o.max_source)
        return dsr1_error(DSR1_ERR_RANGE, "JSON Schema: %zu bytes exceed max_source (%zu)", len,
                          o.max_source);
    dsr1_status st = dsr1_json_schema_to_ebnf(schema, len, &o, &text, &tlen);
    if (st) return st;
    /* the converter's output may be larger than the schema: it is ours, not the user's */
    dsr1_grammar_opts o2 = o;
    if (tlen > o2.max_source) o2.max_source = tlen;
    st = dsr1_grammar_compile_ebnf(v, text, tlen, &o2, out);
    free(text);
    if (!st) (*out)->stats.compile_s = now_s() - t0;
    return st;
}

/* Any JSON value with an object at the top (RFC 8259), whitespace as opts says. */
static const char json_object_compact[] =
    "root   ::= object\n"
    "value  ::= object | array | string | number | \"true\" | \"false\" | \"null\"\n"
    "object ::= \"{\" ( member ( \",\" member )* )? \"}\"\n"
    "member ::= string \":\" value\n"
    "array  ::= \"[\" ( value ( \",\" value )* )? \"]\"\n"
    "string ::= \"\\\"\" ( [^\"\\\\\\x00-\\x1f] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" "
    "[0-9a-fA-F]{4} ) )* \"\\\"\"\n"
    "number ::= \"-\"? ( \"0\" | [1-9] [0-9]* ) ( \".\" [0-9]+ )? ( [eE] [+-]? [0-9]+ )?\n";

static const char json_object_ws[] =
    "root   ::= object\n"
    "value  ::= object | array | string | number | \"true\" | \"false\" | \"null\"\n"
    "object ::= \"{\" ws ( member ( ws \",\" ws member )* ws )? \"}\"\n"
    "member ::= string ws \":\" ws value\n"
    "array  ::= \"[\" ws ( value ( ws \",\" ws value )* ws )? \"]\"\n"
    "string ::= \"\\\"\" ( [^\"\\\\\\x00-\\x1f] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" "
    "[0-9a-fA-F]{4} ) )* \"\\\"\"\n"
    "number ::= \"-\"? ( \"0\" | [1-9] [0-9]* ) ( \".\" [0-9]+ )? ( [eE] [+-]? [0-9]+ )?\n"
    "ws     ::= [ \\t\\n\\r]*\n";

dsr1_status dsr1_grammar_compile_json_object(const dsr1_grammar_vocab *v,
                                             const dsr1_grammar_opts *opts, dsr1_grammar **out)
{
    bool ws = opts && opts->json_whitespace;
    const char *t = ws ? json_object_ws : json_object_compact;
    dsr1_grammar_opts o = resolve(opts);
    if (o.max_source < 4096) o.max_source = 4096;
    return dsr1_grammar_compile_ebnf(v, t, strlen(t), &o, out);
}

void dsr1_grammar_get_stats(const dsr1_grammar *g, dsr1_grammar_stats *out)
{
    if (g && out) *out = g->stats;
}

void dsr1_grammar_free(dsr1_grammar *g)
{
    if (!g) return;
    dsr1__grammar_free_ci(g);
    free(g->st);
    free(g->trans);
    free(g->cmaps);
    free(g->calls);
    free(g->rules);
    free(g);
}

const dsr1_grammar_vocab *dsr1_grammar_get_vocab(const dsr1_grammar *g)
{
    return g ? g->vocab : NULL;
}
