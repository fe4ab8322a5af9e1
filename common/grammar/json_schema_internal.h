/* Internals of the JSON Schema converter (json_schema*.c), shared by its files only.
 *
 * The converter builds a small grammar IR (rules whose bodies are expression trees), so that
 * it can tell which rules derive no string at all (`false` schemas, a required property that
 * can never be satisfied, `{"$ref":"#"}` with no base case) and prune them before printing the
 * grammar text that grammar.h documents. */
#ifndef DSR1_JSON_SCHEMA_INTERNAL_H
#define DSR1_JSON_SCHEMA_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "grammar.h"
#include "strbuf.h"

#define JS_INF (-1) /* an unbounded repetition's max */

/* Records an error (message in dsr1_errmsg) and its status in the context. */
#define JS_FAIL(c, st, ...) ((c)->err = dsr1_error((st), __VA_ARGS__))

typedef enum {
    X_NOTHING, /* derives no string */
    X_EMPTY,   /* derives only "" */
    X_LIT,     /* a literal (bytes in text, len) */
    X_RAW,     /* grammar text as is: a class [..] or a /regex/ terminal */
    X_RULE,    /* a reference to rule `rule` */
    X_SEQ,
    X_ALT,
    X_REP, /* kids[0]{min,max}, max JS_INF = unbounded */
} js_xkind;

typedef struct js_x {
    js_xkind k;
    int n; /* kids */
    struct js_x **kids;
    char *text;
    size_t len;
    int rule;
    int min, max;
    struct js_x *done; /* prune's result, so shared subtrees are rewritten once */
    int epoch;         /* productivity memo: valid when epoch == the pass number */
    bool prod;
} js_x;

typedef struct {
    char *name;
    js_x *body; /* NULL while being built (a recursive reference) */
    bool productive, reachable;
} js_rule;

/* The converter's string builder (common/base/strbuf.h). */
typedef dsr1_strbuf js_buf;

typedef struct js_ctx {
    const dsr1_grammar_opts *opts;
    int max_rules, max_repeat;
    json_t *root; /* the schema document */
    json_t *keep; /* schemas synthesised by allOf merging, kept alive until the end */
    js_rule *rules;
    int nrules, cap_rules;
    /* $ref target (json_t *) -> rule index; open addressing */
    const void **memo_key;
    int *memo_val;
    size_t memo_cap, memo_n;
    /* arena of IR nodes and strings */
    void **blocks;
    size_t nblocks, cap_blocks;
    char *arena;
    size_t arena_left;
    size_t budget; /* IR nodes left before DSR1_ERR_RANGE */
    int merges;    /* allOf merges left */
    int epoch;
    int depth;
    int in_id;                  /* inside subschemas with their own (non-fragment) $id */
    bool ref_alone;             /* $schema is draft-04/06/07: keywords beside a $ref are ignored */
    int err;                    /* the status of the first error (its message is in dsr1_errmsg) */
    int common[12];             /* lazily created shared rules (JS_R_*), -1 until created */
    dsr1_grammar_vocab *rvocab; /* a one-token vocabulary for matching names to patterns */
    char path[1024];
    size_t path_len;
    bool path_cut;
} js_ctx;

enum {
    JS_R_CHAR,
    JS_R_STRING,
    JS_R_VALUE,
    JS_R_OBJECT,
    JS_R_ARRAY,
    JS_R_NUMBER,
    JS_R_INTEGER,
    JS_R_WS,
    JS_R_KCHAR,
    JS_R_KESC
};

#define JS_MAX_DEPTH  128
#define JS_MAX_ENUM   10000
#define JS_MAX_NODES  1000000
#define JS_MAX_MERGES 20000
#define JS_MAX_OUTPUT ((size_t)64 << 20)

/* Type bits of a schema's `type` (T_NUM includes the integers). */
enum { T_NULL = 1, T_BOOL = 2, T_OBJ = 4, T_ARR = 8, T_STR = 16, T_NUM = 32, T_INT = 64 };
#define T_ALL (T_NULL | T_BOOL | T_OBJ | T_ARR | T_STR | T_NUM | T_INT)

/* json_schema.c */
js_x *dsr1__js_node(js_ctx *c, js_xkind k);
js_x *dsr1__js_lit(js_ctx *c, const char *s, size_t len);
js_x *dsr1__js_raw(js_ctx *c, const char *s);
js_x *dsr1__js_seq(js_ctx *c, int n, js_x **kids);
js_x *dsr1__js_alt(js_ctx *c, int n, js_x **kids);
js_x *dsr1__js_rep(js_ctx *c, js_x *kid, int min, int max);
void *dsr1__js_alloc(js_ctx *c, size_t n);
js_x *dsr1__js_rule_ref(js_ctx *c, int r);
/* The shared rules (JS_R_*), created on first use. */
js_x *dsr1__js_common(js_ctx *c, int which);
#define SEQ(...)                                                                                   \
    dsr1__js_seq(c, sizeof((js_x *[]){__VA_ARGS__}) / sizeof(js_x *), (js_x *[]){__VA_ARGS__})
#define LIT(s) dsr1__js_lit(c, s, strlen(s))
#define RAW(s) dsr1__js_raw(c, s)

/* Helpers of the generator, shared with json_schema_object.c and json_schema_number.c. */
int dsr1__js_new_rule(js_ctx *c, const char *hint, int *out);
js_x *dsr1__js_share(js_ctx *c, js_x *x, const char *hint); /* x as a rule if compound */
js_x *dsr1__js_ws(js_ctx *c);                               /* optional whitespace */
int dsr1__js_too_complex(js_ctx *c);
/* A non-negative integer keyword into *out (untouched when absent). */
int dsr1__js_get_count(js_ctx *c, json_t *s, const char *k, long long *out);
int dsr1__js_check_repeat(js_ctx *c, const char *k, long long v); /* v <= max_repeat */
/* unit{lo,hi} (hi < 0: unbounded); past max_repeat as counted blocks (up to max_repeat
 * squared). `what` names the keyword for messages. */
js_x *dsr1__js_counted(js_ctx *c, js_x *unit, long long lo, long long hi, const char *what);
/* The subschema s at path (current)/k1[/k2][/idx] (idx < 0: none). */
js_x *dsr1__js_gen_at(js_ctx *c, json_t *s, const char *k1, const char *k2, long idx);

/* json_schema_emit.c: prunes the IR (rule root's body set) and prints the grammar text
 * into b; DSR1_ERR_INVALID_ARG when the root derives nothing. */
int dsr1__js_emit(js_ctx *c, int root, js_buf *b);

/* json_schema_props.c: patternProperties, dependencies. */
typedef struct {
    const char *pattern;
    json_t *schema;
    char *re;        /* the translated /regex/ over a name's JSON text */
    bool universal;  /* matches every name */
    dsr1_grammar *g; /* re compiled, for matching names (NULL until needed) */
} js_pat;
typedef struct {
    js_pat p[64];
    size_t n;
    bool all_trivial, same, any_universal;
} js_pats;
/* Whether the JSON text name[0 .. len) (between the quotes) matches the pattern. */
int dsr1__js_name_matches(js_ctx *c, js_pat *p, const char *name, size_t len, bool *out);
void dsr1__js_pats_free(js_pats *ps); /* the compiled patterns (not ps itself) */
/* s's patternProperties, translated (n = 0 when none). */
int dsr1__js_pattern_props(js_ctx *c, json_t *s, js_pats *out);
/* The schema a declared name's value must satisfy: base (NULL: none) and every matching
 * pattern's schema that constrains something (an allOf kept by c->keep; base itself when
 * none does). *matched: whether some pattern matches the name. */
int dsr1__js_pattern_value(js_ctx *c, js_pats *ps, const char *name, json_t *base, json_t **out,
                           bool *matched);
/* s with dependentRequired/dependencies (array form) as an anyOf of copies of s. */
int dsr1__js_dependencies(js_ctx *c, json_t *s, json_t **out);
/* Whether a key is no constraining keyword (an annotation or unknown). */
bool dsr1__js_annotation(const char *key);

/* json_schema_object.c */
js_x *dsr1__js_gen_object(js_ctx *c, json_t *s);
js_x *dsr1__js_gen_array(js_ctx *c, json_t *s);

/* json_schema_number.c: integers and numbers with their bounds (minimum, maximum,
 * exclusiveMinimum, exclusiveMaximum; draft-04's boolean exclusive forms too). */
js_x *dsr1__js_gen_numeric(js_ctx *c, json_t *s, int mask);
/* Appends /seg (escaped as a JSON pointer) to c->path; returns the old length to restore. */
size_t dsr1__js_push(js_ctx *c, const char *seg);
size_t dsr1__js_push_index(js_ctx *c, size_t i);
void dsr1__js_pop(js_ctx *c, size_t old);
const char *dsr1__js_where(const js_ctx *c); /* the path, "" shown as "/" in messages */

/* json_schema_merge.c: allOf. The schema s as one schema without $ref/allOf at its top,
 * or a pure {"anyOf": [...]} (borrowed: kept alive by c->keep or the document). */
int dsr1__js_merge_allof(js_ctx *c, json_t *s, json_t **out);
/* Resolves a local $ref ("#", "#/$defs/a", "#/definitions/a", any "#/json/pointer"). */
int dsr1__js_resolve_ref(js_ctx *c, const char *ref, json_t **out);
/* An error naming the first keyword of s that the converter does not enforce. */
int dsr1__js_check_keywords(js_ctx *c, json_t *s);
/* Whether the document's $schema is a draft before 2019-09, where a $ref's siblings are
 * ignored. */
bool dsr1__js_ref_alone(const json_t *root);
/* Whether the keyword is a JSON Schema keyword the converter does not enforce. */
bool dsr1__js_unsupported(const char *key, json_t *val);

/* json_schema_pattern.c: the JSON string contents (between the quotes) that decode to a
 * string matching `pattern` (ECMAScript, unanchored as JSON Schema says), as a /regex/
 * terminal in *out (arena). `what` names the keyword for messages. */
int dsr1__js_pattern(js_ctx *c, const char *pattern, size_t len, const char *what, char **out);
/* The pattern (anchored) of a `format`, NULL when unknown. */
const char *dsr1__js_format_pattern(const char *format);

/* json_schema_serial.c: compact JSON in canonical form (numbers positionally in their
 * shortest round-trip digits, so 1.0 is 1; strings escaping only " \ and control
 * characters; objects in their own key order). Appends to b. */
void dsr1__js_dump(js_buf *b, const json_t *v);
/* v >= 0 in its shortest round-trip digits, positionally: integer part (no leading zeros)
 * and fraction digits (no trailing zeros, "" when none). */
void dsr1__js_decimal(double v, char *ip, size_t ipn, char *fp, size_t fpn);
/* JSON Schema equality (1 == 1.0, objects regardless of order). */
bool dsr1__js_equal(const json_t *a, const json_t *b);
/* Parses JSON text with jansson; on failure a message "what: line L column C: text". */
int dsr1__js_parse(const char *text, size_t len, const char *what, json_t **out);

#endif
