/* JSON Schema -> grammar text (dsr1_json_schema_to_ebnf), the front half of
 * dsr1_grammar_compile_json_schema.
 *
 * Every schema node becomes an expression of a small grammar IR (json_schema_internal.h);
 * each $ref target becomes one rule, so recursive schemas give recursive rules. The IR is
 * then checked for productivity (a rule that derives no finite string: `false`, a required
 * property whose schema accepts nothing, `{"$ref":"#"}`, a -> b -> a with no base case) and
 * pruned before it is printed, so the engine never gets a grammar whose mask could be empty.
 *
 * Semantics are JSON Schema's (draft 2020-12, draft-07 forms accepted): keywords apply to
 * their own type only, and a schema without `type` admits every type. A keyword that would
 * constrain the output but cannot be enforced is an error naming it and its JSON pointer;
 * annotations are ignored; keys that are not JSON Schema vocabulary at all (x-..., custom
 * annotations) are ignored too, as validators do. Known over-approximation: an additional
 * property may repeat the name of a declared one. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_schema_internal.h"

/* ---- arena and IR ---- */

void *dsr1__js_alloc(js_ctx *c, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (n > c->arena_left) {
        size_t sz = n > ((size_t)1 << 20) ? n : ((size_t)1 << 20);
        if (c->nblocks == c->cap_blocks) {
            size_t cap = c->cap_blocks ? c->cap_blocks * 2 : 16;
            void **b = realloc(c->blocks, cap * sizeof *b);
            if (!b) return NULL;
            c->blocks = b;
            c->cap_blocks = cap;
        }
        char *p = calloc(1, sz);
        if (!p) return NULL;
        c->blocks[c->nblocks++] = p;
        c->arena = p;
        c->arena_left = sz;
    }
    void *p = c->arena;
    c->arena += n;
    c->arena_left -= n;
    return p;
}

js_x *dsr1__js_node(js_ctx *c, js_xkind k)
{
    if (c->budget == 0) {
        if (!c->err)
            JS_FAIL(c, DSR1_ERR_RANGE,
                    "JSON Schema: the grammar grows past %d nodes (schema too "
                    "complex)",
                    JS_MAX_NODES);
        return NULL;
    }
    c->budget--;
    js_x *x = dsr1__js_alloc(c, sizeof *x);
    if (x)
        x->k = k;
    else
        JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
    return x;
}

js_x *dsr1__js_lit(js_ctx *c, const char *s, size_t len)
{
    js_x *x = dsr1__js_node(c, X_LIT);
    if (!x) return NULL;
    x->text = dsr1__js_alloc(c, len + 1);
    if (!x->text) return NULL;
    memcpy(x->text, s, len);
    x->len = len;
    return x;
}

js_x *dsr1__js_raw(js_ctx *c, const char *s)
{
    js_x *x = dsr1__js_lit(c, s, strlen(s));
    if (x) x->k = X_RAW;
    return x;
}

static js_x *list(js_ctx *c, js_xkind k, int n, js_x **kids)
{
    for (int i = 0; i < n; i++)
        if (!kids[i]) return NULL;
    js_x *x = dsr1__js_node(c, k);
    if (!x) return NULL;
    x->kids = dsr1__js_alloc(c, (n ? n : 1) * sizeof *x->kids);
    if (!x->kids) return NULL;
    memcpy(x->kids, kids, n * sizeof *kids);
    x->n = n;
    return x;
}

js_x *dsr1__js_seq(js_ctx *c, int n, js_x **kids)
{
    return list(c, X_SEQ, n, kids);
}
js_x *dsr1__js_alt(js_ctx *c, int n, js_x **kids)
{
    return n == 1 ? kids[0] : list(c, X_ALT, n, kids);
}

js_x *dsr1__js_rep(js_ctx *c, js_x *kid, int min, int max)
{
    if (!kid) return NULL;
    js_x *x = list(c, X_REP, 1, &kid);
    if (x) {
        x->min = min;
        x->max = max;
    }
    return x;
}

#define SEQ(...)                                                                                   \
    dsr1__js_seq(c, sizeof((js_x *[]){__VA_ARGS__}) / sizeof(js_x *), (js_x *[]){__VA_ARGS__})
#define LIT(s) dsr1__js_lit(c, s, strlen(s))
#define RAW(s) dsr1__js_raw(c, s)

static js_x *rule_ref(js_ctx *c, int r)
{
    js_x *x = dsr1__js_node(c, X_RULE);
    if (x) x->rule = r;
    return x;
}

/* ---- paths and errors ---- */

size_t dsr1__js_push(js_ctx *c, const char *seg)
{
    size_t old = c->path_len;
    char tmp[sizeof c->path];
    size_t n = 0;
    tmp[n++] = '/';
    for (const char *p = seg; *p && n + 3 < sizeof tmp; p++) {
        if (*p == '~' || *p == '/') {
            tmp[n++] = '~';
            tmp[n++] = *p == '~' ? '0' : '1';
        } else {
            tmp[n++] = *p;
        }
    }
    if (c->path_len + n + 4 >= sizeof c->path) {
        if (!c->path_cut) memcpy(c->path + c->path_len, "/...", 5);
        c->path_cut = true;
        return old;
    }
    memcpy(c->path + c->path_len, tmp, n);
    c->path_len += n;
    c->path[c->path_len] = '\0';
    return old;
}

size_t dsr1__js_push_index(js_ctx *c, size_t i)
{
    char tmp[24];
    snprintf(tmp, sizeof tmp, "%zu", i);
    return dsr1__js_push(c, tmp);
}

void dsr1__js_pop(js_ctx *c, size_t old)
{
    c->path_len = old;
    c->path[old] = '\0';
    c->path_cut = false;
}

const char *dsr1__js_where(const js_ctx *c)
{
    return c->path_len ? c->path : "the root";
}

static int too_complex(js_ctx *c)
{
    if (c->err) return c->err;
    return JS_FAIL(c, DSR1_ERR_RANGE,
                   "JSON Schema at %s: the grammar grows past %d nodes (schema too complex)",
                   dsr1__js_where(c), JS_MAX_NODES);
}

/* ---- rules ---- */

static int new_rule(js_ctx *c, const char *hint, int *out)
{
    if (c->nrules >= c->max_rules)
        return JS_FAIL(c, DSR1_ERR_RANGE,
                       "JSON Schema at %s: more than %d grammar rules (max_rules)",
                       dsr1__js_where(c), c->max_rules);
    if (c->nrules == c->cap_rules) {
        int cap = c->cap_rules ? c->cap_rules * 2 : 64;
        js_rule *r = realloc(c->rules, cap * sizeof *r);
        if (!r) return JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
        c->rules = r;
        c->cap_rules = cap;
    }
    char name[64];
    size_t n = 0;
    if (!hint || !((hint[0] >= 'a' && hint[0] <= 'z') || (hint[0] >= 'A' && hint[0] <= 'Z')))
        name[n++] = 'r';
    for (const char *p = hint ? hint : ""; *p && n < 32; p++) {
        char ch = *p;
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '_';
        if (ok || (n && name[n - 1] != '-')) name[n++] = ok ? ch : '-';
    }
    if (c->nrules)
        snprintf(name + n, sizeof name - n, "%s%d", n && name[n - 1] == '-' ? "" : "-", c->nrules);
    else
        name[n] = '\0';
    js_rule *r = &c->rules[c->nrules];
    memset(r, 0, sizeof *r);
    r->name = dsr1__js_alloc(c, strlen(name) + 1);
    if (!r->name) return JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
    strcpy(r->name, name);
    *out = c->nrules++;
    return 0;
}

static js_x *ws(js_ctx *c);

/* x as a rule when it is compound, so that referring to it twice does not copy it. */
static js_x *share(js_ctx *c, js_x *x, const char *hint)
{
    if (!x || x->k == X_RULE || x->k == X_LIT || x->k == X_RAW || x->k == X_NOTHING ||
        x->k == X_EMPTY)
        return x;
    int r;
    if (new_rule(c, hint, &r)) return NULL;
    c->rules[r].body = x;
    return rule_ref(c, r);
}

/* The shared rules: char, string, value, object, array, number, integer. */
static js_x *common(js_ctx *c, int which)
{
    static const char *names[] = {"char",   "string",  "value", "object", "array",
                                  "number", "integer", "ws",    "kchar",  "kesc"};
    if (c->common[which] >= 0) return rule_ref(c, c->common[which]);
    int r = c->nrules;
    if (new_rule(c, "x", &r)) return NULL;
    c->rules[r].name = (char *)names[which];
    c->common[which] = r;
    js_x *body = NULL, *comma = which == JS_R_WS ? NULL : SEQ(ws(c), LIT(","), ws(c));
    switch (which) {
    case JS_R_CHAR:
        /* one code point: raw (no quote, backslash or control), a short escape, \uXXXX
         * outside the surrogates, or a surrogate pair; so {n,m} of it counts code points */
        body = RAW("[^\"\\\\\\x00-\\x1f] | \"\\\\\" [\"\\\\/bfnrt] | \"\\\\u\" "
                   "([0-9a-cA-CefEF] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2}) | "
                   "\"\\\\u\" [dD] [89abAB] [0-9a-fA-F]{2} \"\\\\u\" [dD] [c-fC-F] [0-9a-fA-F]{2}");
        break;
    case JS_R_STRING:
        body = SEQ(LIT("\""), dsr1__js_rep(c, common(c, JS_R_CHAR), 0, JS_INF), LIT("\""));
        break;
    case JS_R_VALUE:
        body = dsr1__js_alt(c, 7,
                            (js_x *[]){common(c, JS_R_OBJECT), common(c, JS_R_ARRAY),
                                       common(c, JS_R_STRING), common(c, JS_R_NUMBER), LIT("true"),
                                       LIT("false"), LIT("null")});
        break;
    case JS_R_OBJECT: {
        js_x *member = SEQ(common(c, JS_R_STRING), ws(c), LIT(":"), ws(c), common(c, JS_R_VALUE));
        js_x *members = SEQ(member, dsr1__js_rep(c, SEQ(comma, member), 0, JS_INF), ws(c));
        body = SEQ(LIT("{"), ws(c), dsr1__js_rep(c, members, 0, 1), LIT("}"));
        break;
    }
    case JS_R_ARRAY: {
        js_x *v = common(c, JS_R_VALUE);
        js_x *items = SEQ(v, dsr1__js_rep(c, SEQ(comma, v), 0, JS_INF), ws(c));
        body = SEQ(LIT("["), ws(c), dsr1__js_rep(c, items, 0, 1), LIT("]"));
        break;
    }
    case JS_R_NUMBER:
        body = RAW("\"-\"? (\"0\" | [1-9] [0-9]*) (\".\" [0-9]+)? ([eE] [-+]? [0-9]+)?");
        break;
    case JS_R_INTEGER:
        body = RAW("\"-\"? (\"0\" | [1-9] [0-9]*)");
        break;
    case JS_R_WS:
        body = RAW("[ \\t\\n\\r]{0,20}");
        break;
    case JS_R_KESC:
        body = RAW("\"\\\\\" [\"\\\\bfnrt] | \"\\\\u00\" (\"0\" [0-7bBeEfF] | \"1\" [0-9a-fA-F])");
        break;
    case JS_R_KCHAR:
        /* a name character in one form only, so that names can be told from the declared
         * ones: raw, a short escape, or \u00XX for the other controls (as serialisers write) */
        body =
            RAW("[^\"\\\\\\x00-\\x1f] | \"\\\\\" [\"\\\\bfnrt] | \"\\\\u00\" (\"0\" [0-7bBeEfF] | "
                "\"1\" [0-9a-fA-F])");
        break;
    }
    if (!body) return NULL;
    c->rules[r].body = body;
    return rule_ref(c, r);
}

/* Optional whitespace between tokens: bounded (a model cannot loop on it). */
static js_x *ws(js_ctx *c)
{
    if (!c->opts->json_whitespace) return dsr1__js_node(c, X_EMPTY);
    return common(c, JS_R_WS);
}

/* ---- keywords ---- */

/* Annotations, ignored: title description $comment examples default $schema $id id
 * deprecated readOnly writeOnly $defs definitions $anchor $dynamicAnchor $vocabulary
 * contentEncoding contentMediaType contentSchema. Keys that are no JSON Schema keyword at
 * all are ignored too (custom annotations). */
static const char *const supported[] = {"type",
                                        "properties",
                                        "required",
                                        "additionalProperties",
                                        "items",
                                        "prefixItems",
                                        "additionalItems",
                                        "minItems",
                                        "maxItems",
                                        "enum",
                                        "const",
                                        "anyOf",
                                        "oneOf",
                                        "allOf",
                                        "$ref",
                                        "minLength",
                                        "maxLength",
                                        "pattern",
                                        "format",
                                        "minimum",
                                        "maximum",
                                        "exclusiveMinimum",
                                        "exclusiveMaximum",
                                        "nullable",
                                        "uniqueItems",
                                        "minProperties",
                                        NULL};
static const char *const unsupported[] = {"patternProperties",
                                          "dependentSchemas",
                                          "dependentRequired",
                                          "dependencies",
                                          "if",
                                          "then",
                                          "else",
                                          "not",
                                          "multipleOf",
                                          "maxProperties",
                                          "contains",
                                          "minContains",
                                          "maxContains",
                                          "propertyNames",
                                          "unevaluatedProperties",
                                          "unevaluatedItems",
                                          "$dynamicRef",
                                          "$recursiveRef",
                                          "$recursiveAnchor",
                                          NULL};

static bool in(const char *const *list, const char *k)
{
    for (; *list; list++)
        if (!strcmp(*list, k)) return true;
    return false;
}

bool dsr1__js_unsupported(const char *key, json_t *val)
{
    if (in(unsupported, key)) return true;
    /* the trivial values of two keywords constrain nothing */
    if (!strcmp(key, "uniqueItems")) return !json_is_false(val);
    if (!strcmp(key, "minProperties")) return !(json_is_number(val) && json_number_value(val) == 0);
    return false;
}

/* Constraining keywords other than the `skip` ones (annotations and unknowns excluded). */
static bool has_other(json_t *s, const char *const *skip)
{
    const char *k;
    json_t *v;
    json_object_foreach(s, k, v)
    {
        if (in(supported, k) && !in(skip, k)) return true;
    }
    return false;
}

int dsr1__js_check_keywords(js_ctx *c, json_t *s)
{
    const char *k;
    json_t *v;
    json_object_foreach(s, k, v)
    {
        if (dsr1__js_unsupported(k, v))
            return JS_FAIL(c, DSR1_ERR_INVALID_ARG, "unsupported keyword '%s' at %s", k,
                           dsr1__js_where(c));
    }
    return 0;
}

/* A non-negative integer keyword; *out untouched when absent. */
static int get_count(js_ctx *c, json_t *s, const char *k, long long *out)
{
    json_t *v = json_object_get(s, k);
    if (!v) return 0;
    double d = json_number_value(v);
    if (!json_is_number(v) || d < 0 || d != floor(d) || d > 1e15)
        return JS_FAIL(c, DSR1_ERR_INVALID_ARG, "'%s' at %s must be a non-negative integer", k,
                       dsr1__js_where(c));
    *out = (long long)d;
    return 0;
}

static int check_repeat(js_ctx *c, const char *k, long long v)
{
    if (v > c->max_repeat)
        return JS_FAIL(c, DSR1_ERR_RANGE,
                       "'%s' %lld at %s exceeds the repetition limit %d (max_repeat)", k, v,
                       dsr1__js_where(c), c->max_repeat);
    return 0;
}

enum { T_NULL = 1, T_BOOL = 2, T_OBJ = 4, T_ARR = 8, T_STR = 16, T_NUM = 32, T_INT = 64 };
#define T_ALL (T_NULL | T_BOOL | T_OBJ | T_ARR | T_STR | T_NUM | T_INT)

static int type_bit(const char *t)
{
    static const char *names[] = {"null",   "boolean", "object", "array",
                                  "string", "number",  "integer"};
    for (int i = 0; i < 7; i++)
        if (!strcmp(t, names[i])) return 1 << i;
    return 0;
}

static int get_types(js_ctx *c, json_t *s, int *mask)
{
    json_t *t = json_object_get(s, "type");
    *mask = T_ALL;
    if (t) {
        *mask = 0;
        size_t n = json_is_array(t) ? json_array_size(t) : 1;
        for (size_t i = 0; i < n; i++) {
            json_t *e = json_is_array(t) ? json_array_get(t, i) : t;
            int b = json_is_string(e) ? type_bit(json_string_value(e)) : 0;
            if (!b)
                return JS_FAIL(c, DSR1_ERR_INVALID_ARG,
                               "'type' at %s: expected a type name or an array of them",
                               dsr1__js_where(c));
            *mask |= b;
        }
    }
    if (json_is_true(json_object_get(s, "nullable"))) *mask |= T_NULL;
    if (*mask & T_NUM) *mask |= T_INT; /* number includes the integers */
    return 0;
}

static bool value_has_type(const json_t *v, int mask)
{
    switch (json_typeof(v)) {
    case JSON_NULL:
        return mask & T_NULL;
    case JSON_TRUE:
    case JSON_FALSE:
        return mask & T_BOOL;
    case JSON_OBJECT:
        return mask & T_OBJ;
    case JSON_ARRAY:
        return mask & T_ARR;
    case JSON_STRING:
        return mask & T_STR;
    case JSON_INTEGER:
        return mask & (T_INT | T_NUM);
    case JSON_REAL:
        return (mask & T_NUM) ||
               ((mask & T_INT) && json_real_value(v) == floor(json_real_value(v)));
    }
    return false;
}

/* ---- the generator ---- */

static js_x *gen(js_ctx *c, json_t *s);

static js_x *gen_at(js_ctx *c, json_t *s, const char *k1, const char *k2, long idx)
{
    size_t old = dsr1__js_push(c, k1);
    if (k2) dsr1__js_push(c, k2);
    if (idx >= 0) dsr1__js_push_index(c, (size_t)idx);
    js_x *x = gen(c, s);
    if (x) dsr1__js_pop(c, old); /* on error keep the path for the caller's message */
    return x;
}

static js_x *lit_value(js_ctx *c, const json_t *v)
{
    js_buf b = {0};
    dsr1__js_dump(&b, v);
    js_x *x = b.oom ? NULL : dsr1__js_lit(c, b.p ? b.p : "", b.n);
    if (b.oom) JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
    free(b.p);
    return x;
}

static js_x *gen_enum(js_ctx *c, json_t *s, int mask)
{
    static const char *const skip[] = {"enum", "const", "type", "nullable", NULL};
    if (has_other(s, skip)) {
        const char *k;
        json_t *v;
        json_object_foreach(s, k, v) if (in(supported, k) && !in(skip, k)) break;
        JS_FAIL(c, DSR1_ERR_INVALID_ARG, "'%s' beside 'enum'/'const' at %s is not supported", k,
                dsr1__js_where(c));
        return NULL;
    }
    json_t *cv = json_object_get(s, "const"), *en = json_object_get(s, "enum");
    if (en && !json_is_array(en)) {
        JS_FAIL(c, DSR1_ERR_INVALID_ARG, "'enum' at %s must be an array", dsr1__js_where(c));
        return NULL;
    }
    size_t n = en ? json_array_size(en) : 1;
    if (n > JS_MAX_ENUM) {
        JS_FAIL(c, DSR1_ERR_RANGE, "'enum' at %s has %zu values (limit %d)", dsr1__js_where(c), n,
                JS_MAX_ENUM);
        return NULL;
    }
    js_x **alts = malloc((n ? n : 1) * sizeof *alts);
    if (!alts) {
        JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
        return NULL;
    }
    int m = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *v = en ? json_array_get(en, i) : cv;
        if (!value_has_type(v, mask) || (en && cv && !dsr1__js_equal(v, cv))) continue;
        if (!(alts[m++] = lit_value(c, v))) {
            free(alts);
            return c->budget ? NULL : (too_complex(c), NULL);
        }
    }
    js_x *x = m ? dsr1__js_alt(c, m, alts) : dsr1__js_node(c, X_NOTHING);
    free(alts);
    return x;
}

/* ---- integers: exact digit-range grammars ---- */

static js_x *class_range(js_ctx *c, int a, int b)
{
    char tmp[8];
    if (a == b) {
        tmp[0] = (char)('0' + a);
        return dsr1__js_lit(c, tmp, 1);
    } else if (a == 0 && b == 9)
        snprintf(tmp, sizeof tmp, "[0-9]");
    else
        snprintf(tmp, sizeof tmp, "[%c-%c]", '0' + a, '0' + b);
    return RAW(tmp);
}

/* d-digit strings (leading zeros allowed) from a to b inclusive, a <= b. */
static js_x *digit_range(js_ctx *c, const char *a, const char *b, int d)
{
    if (d == 0) return dsr1__js_node(c, X_EMPTY);
    if (d == 1) return class_range(c, a[0] - '0', b[0] - '0');
    if (a[0] == b[0])
        return SEQ(class_range(c, a[0] - '0', a[0] - '0'), digit_range(c, a + 1, b + 1, d - 1));
    bool lo0 = strspn(a + 1, "0") == (size_t)(d - 1), hi9 = strspn(b + 1, "9") == (size_t)(d - 1);
    char nines[24], zeros[24];
    memset(nines, '9', d - 1);
    memset(zeros, '0', d - 1);
    js_x *alts[3];
    int n = 0;
    if (!lo0)
        alts[n++] =
            SEQ(class_range(c, a[0] - '0', a[0] - '0'), digit_range(c, a + 1, nines, d - 1));
    int lo = a[0] - '0' + !lo0, hi = b[0] - '0' - !hi9;
    if (lo <= hi)
        alts[n++] = SEQ(class_range(c, lo, hi), dsr1__js_rep(c, RAW("[0-9]"), d - 1, d - 1));
    if (!hi9)
        alts[n++] =
            SEQ(class_range(c, b[0] - '0', b[0] - '0'), digit_range(c, zeros, b + 1, d - 1));
    return dsr1__js_alt(c, n, alts);
}

/* Non-negative integers in [lo, hi] written without leading zeros; hi < 0: unbounded. */
static js_x *nonneg_range(js_ctx *c, long long lo, long long hi)
{
    char a[24], b[24];
    int dl = snprintf(a, sizeof a, "%lld", lo);
    int dh = hi < 0 ? dl : snprintf(b, sizeof b, "%lld", hi);
    js_x *alts[24];
    int n = 0;
    for (int d = dl; d <= dh; d++) {
        char x[24], y[24];
        if (d == dl)
            strcpy(x, a);
        else
            snprintf(x, sizeof x, "1%0*d", d - 1, 0);
        if (d == dh && hi >= 0)
            strcpy(y, b);
        else
            memset(y, '9', d), y[d] = '\0';
        alts[n++] = digit_range(c, x, y, d);
    }
    if (hi < 0) /* every longer number */
        alts[n++] = SEQ(RAW("[1-9]"), dsr1__js_rep(c, RAW("[0-9]"), dl, JS_INF));
    return dsr1__js_alt(c, n, alts);
}

static int bound(js_ctx *c, json_t *s, const char *k, bool upper, bool *has, long long *v)
{
    json_t *x = json_object_get(s, k);
    if (!x) return 0;
    bool excl = strstr(k, "exclusive") != NULL;
    double d;
    if (json_is_boolean(x)) { /* draft-04: exclusiveMinimum: true modifies minimum */
        json_t *m = json_object_get(s, upper ? "maximum" : "minimum");
        if (json_is_false(x) || !json_is_number(m)) return 0;
        d = json_number_value(m);
    } else if (json_is_number(x)) {
        d = json_number_value(x);
    } else {
        return JS_FAIL(c, DSR1_ERR_INVALID_ARG, "'%s' at %s must be a number", k,
                       dsr1__js_where(c));
    }
    if (fabs(d) > 1e18)
        return JS_FAIL(c, DSR1_ERR_RANGE, "'%s' at %s: %g is beyond the supported +-1e18", k,
                       dsr1__js_where(c), d);
    long long b;
    if (upper)
        b = excl ? (long long)ceil(d) - 1 : (long long)floor(d);
    else
        b = excl ? (long long)floor(d) + 1 : (long long)ceil(d);
    if (!*has || (upper ? b < *v : b > *v)) *v = b;
    *has = true;
    return 0;
}

static js_x *gen_integer(js_ctx *c, json_t *s, bool has_lo, long long lo, bool has_hi, long long hi)
{
    if (!has_lo && !has_hi) return common(c, JS_R_INTEGER);
    if (has_lo && has_hi && lo > hi) return dsr1__js_node(c, X_NOTHING);
    (void)s;
    js_x *alts[2];
    int n = 0;
    if (!has_lo || lo < 0) /* negatives, by magnitude */
        alts[n++] = SEQ(LIT("-"), nonneg_range(c, has_hi && hi < 0 ? -hi : 1, has_lo ? -lo : -1));
    if (!has_hi || hi >= 0)
        alts[n++] = nonneg_range(c, has_lo && lo > 0 ? lo : 0, has_hi ? hi : -1);
    return dsr1__js_alt(c, n, alts);
}

static js_x *gen_numeric(js_ctx *c, json_t *s, int mask)
{
    static const char *keys[] = {"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"};
    bool has_lo = false, has_hi = false;
    long long lo = 0, hi = 0;
    for (int i = 0; i < 4; i++) {
        if (!json_object_get(s, keys[i])) continue;
        if (mask & T_NUM) {
            JS_FAIL(c, DSR1_ERR_INVALID_ARG,
                    "unsupported keyword '%s' at %s: bounds are enforced on integers only "
                    "(use \"type\": \"integer\")",
                    keys[i], dsr1__js_where(c));
            return NULL;
        }
        if (bound(c, s, keys[i], i >= 2, i >= 2 ? &has_hi : &has_lo, i >= 2 ? &hi : &lo))
            return NULL;
    }
    if (mask & T_NUM) return common(c, JS_R_NUMBER);
    return gen_integer(c, s, has_lo, lo, has_hi, hi);
}

/* ---- strings ---- */

static js_x *gen_string(js_ctx *c, json_t *s)
{
    long long lo = 0, hi = -1;
    if (get_count(c, s, "minLength", &lo) || get_count(c, s, "maxLength", &hi)) return NULL;
    json_t *pat = json_object_get(s, "pattern"), *fmt = json_object_get(s, "format");
    if ((pat && !json_is_string(pat)) || (fmt && !json_is_string(fmt))) {
        JS_FAIL(c, DSR1_ERR_INVALID_ARG, "'%s' at %s must be a string",
                pat && !json_is_string(pat) ? "pattern" : "format", dsr1__js_where(c));
        return NULL;
    }
    if (pat || fmt) {
        const char *what = pat ? "pattern" : "format", *re;
        if (pat && fmt) {
            JS_FAIL(c, DSR1_ERR_INVALID_ARG,
                    "'pattern' beside 'format' at %s is not supported (one regex per string)",
                    dsr1__js_where(c));
            return NULL;
        }
        if (lo > 0 || hi >= 0) {
            JS_FAIL(c, DSR1_ERR_INVALID_ARG,
                    "'%s' beside '%s' at %s is not supported (put the length in the pattern)",
                    lo > 0 ? "minLength" : "maxLength", what, dsr1__js_where(c));
            return NULL;
        }
        if (pat) {
            re = json_string_value(pat);
        } else {
            re = dsr1__js_format_pattern(json_string_value(fmt));
            if (!re) {
                JS_FAIL(c, DSR1_ERR_INVALID_ARG, "unsupported format '%s' at %s",
                        json_string_value(fmt), dsr1__js_where(c));
                return NULL;
            }
        }
        char *out;
        if (dsr1__js_pattern(c, re, pat ? json_string_length(pat) : strlen(re), what, &out))
            return NULL;
        return SEQ(LIT("\""), RAW(out), LIT("\""));
    }
    if (hi >= 0 && lo > hi) return dsr1__js_node(c, X_NOTHING);
    if (!lo && hi < 0) return common(c, JS_R_STRING);
    if (check_repeat(c, "minLength", lo) || check_repeat(c, "maxLength", hi)) return NULL;
    return SEQ(LIT("\""), dsr1__js_rep(c, common(c, JS_R_CHAR), (int)lo, hi < 0 ? JS_INF : (int)hi),
               LIT("\""));
}

/* ---- objects ---- */

/* The one JSON text form of code point cp in an additional property's name (see kchar). */
static js_x *key_unit(js_ctx *c, uint32_t cp)
{
    static const char shorts[] = "\"\"\\\\b\bf\fn\nr\rt\t";
    for (size_t i = 0; shorts[i]; i += 2)
        if ((uint32_t)(unsigned char)shorts[i + 1] == cp) {
            char t[2] = {'\\', shorts[i]};
            return dsr1__js_lit(c, t, 2);
        }
    if (cp < 0x20) {
        char t[40];
        const char *hex = "0123456789abcdef";
        char lo = hex[cp & 15];
        if (lo >= 'a')
            snprintf(t, sizeof t, "\"\\\\u00%c\" [%c%c]", hex[cp >> 4], lo, lo - 32);
        else
            snprintf(t, sizeof t, "\"\\\\u00%c%c\"", hex[cp >> 4], lo);
        return RAW(t);
    }
    char u[4];
    int n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    if (n == 1)
        u[0] = (char)cp;
    else if (n == 2)
        u[0] = (char)(0xC0 | cp >> 6), u[1] = (char)(0x80 | (cp & 63));
    else if (n == 3)
        u[0] = (char)(0xE0 | cp >> 12), u[1] = (char)(0x80 | ((cp >> 6) & 63)),
        u[2] = (char)(0x80 | (cp & 63));
    else
        u[0] = (char)(0xF0 | cp >> 18), u[1] = (char)(0x80 | ((cp >> 12) & 63)),
        u[2] = (char)(0x80 | ((cp >> 6) & 63)), u[3] = (char)(0x80 | (cp & 63));
    return dsr1__js_lit(c, u, n);
}

static int utf8_next(const char *s, size_t len, size_t *off, uint32_t *cp)
{
    const unsigned char *p = (const unsigned char *)s + *off;
    size_t left = len - *off;
    int n = p[0] < 0x80 ? 1 : (p[0] & 0xE0) == 0xC0 ? 2 : (p[0] & 0xF0) == 0xE0 ? 3 : 4;
    if ((size_t)n > left) n = (int)left;
    uint32_t v = n == 1 ? p[0] : p[0] & (0x7F >> n);
    for (int i = 1; i < n; i++) v = (v << 6) | (p[i] & 0x3F);
    *off += (size_t)n;
    *cp = v;
    return n;
}

/* One name character other than the code points in cps[0..n): a raw character, a short
 * escape or a \u00XX control, each code point in exactly one form (kchar). */
static js_x *key_other(js_ctx *c, const uint32_t *cps, int n)
{
    js_buf b = {0};
    dsr1__js_buf_str(&b, "[^\"\\\\\\x00-\\x1f");
    bool ctl_child = false;
    for (int i = 0; i < n; i++) {
        uint32_t cp = cps[i];
        if (cp < 0x20 || cp == '"' || cp == '\\') {
            ctl_child = true;
            continue;
        }
        if (cp < 0x80 && strchr("\\]^-[", (int)cp)) dsr1__js_buf_add(&b, "\\", 1);
        js_x *u = key_unit(c, cp);
        if (!u) break;
        dsr1__js_buf_add(&b, u->text, u->len);
    }
    dsr1__js_buf_str(&b, "]");
    js_x *alts[40];
    int m = 0;
    if (!b.oom) alts[m++] = RAW(b.p);
    free(b.p);
    if (!ctl_child) {
        alts[m++] = common(c, JS_R_KESC);
    } else {
        for (uint32_t cp = 0; cp < 0x60; cp++) {
            if (!(cp < 0x20 || cp == '"' || cp == '\\')) continue;
            bool child = false;
            for (int i = 0; i < n && !child; i++) child = cps[i] == cp;
            if (!child) alts[m++] = key_unit(c, cp);
        }
    }
    return dsr1__js_alt(c, m, alts);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Names (between the quotes) other than keys[0..n) (sorted, sharing their first off bytes):
 * a trie walk where leaving the trie frees the rest of the name. */
static js_x *key_not_in(js_ctx *c, const char **keys, size_t n, size_t off, int depth)
{
    if (depth > 4096) {
        JS_FAIL(c, DSR1_ERR_RANGE, "object at %s: a property name is too long", dsr1__js_where(c));
        return NULL;
    }
    bool terminal = false;
    size_t i = 0, groups = 0;
    while (i < n && strlen(keys[i]) == off) terminal = true, i++;
    uint32_t *cps = malloc((n + 1) * sizeof *cps);
    js_x **alts = malloc((n + 2) * sizeof *alts);
    js_x *out = NULL;
    if (!cps || !alts) {
        JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
        goto done;
    }
    int na = 0;
    while (i < n) {
        size_t len = strlen(keys[i]), next = off;
        uint32_t cp;
        utf8_next(keys[i], len, &next, &cp);
        size_t j = i + 1;
        while (j < n && strlen(keys[j]) >= next &&
               !memcmp(keys[j] + off, keys[i] + off, next - off))
            j++;
        cps[groups++] = cp;
        js_x *sub = key_not_in(c, keys + i, j - i, next, depth + 1);
        if (!sub || !(alts[na++] = SEQ(key_unit(c, cp), sub))) goto done;
        i = j;
    }
    alts[na++] =
        SEQ(key_other(c, cps, (int)groups), dsr1__js_rep(c, common(c, JS_R_KCHAR), 0, JS_INF));
    if (!terminal) alts[na++] = dsr1__js_node(c, X_EMPTY);
    out = dsr1__js_alt(c, na, alts);
done:
    free(cps);
    free(alts);
    return out;
}

/* An additional property's name: a JSON string, but none of the declared names. */
static js_x *additional_key(js_ctx *c, const char **keys, size_t n)
{
    if (!n) return common(c, JS_R_STRING);
    const char **sorted = malloc(n * sizeof *sorted);
    if (!sorted) {
        JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
        return NULL;
    }
    memcpy(sorted, keys, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, cmp_str);
    js_x *x = key_not_in(c, sorted, n, 0, 0);
    free(sorted);
    return x ? SEQ(LIT("\""), x, LIT("\"")) : NULL;
}

static js_x *gen_object(js_ctx *c, json_t *s)
{
    json_t *props = json_object_get(s, "properties"), *req = json_object_get(s, "required");
    json_t *ap = json_object_get(s, "additionalProperties");
    if ((props && !json_is_object(props)) || (req && !json_is_array(req)) ||
        (ap && !json_is_object(ap) && !json_is_boolean(ap))) {
        JS_FAIL(c, DSR1_ERR_INVALID_ARG, "'%s' at %s has the wrong type",
                props && !json_is_object(props) ? "properties"
                : req && !json_is_array(req)    ? "required"
                                                : "additionalProperties",
                dsr1__js_where(c));
        return NULL;
    }
    for (size_t i = 0; i < json_array_size(req); i++)
        if (!json_is_string(json_array_get(req, i))) {
            JS_FAIL(c, DSR1_ERR_INVALID_ARG, "'required' at %s must list strings",
                    dsr1__js_where(c));
            return NULL;
        }
    size_t np = json_object_size(props), nr = json_array_size(req), n = 0;
    if (!np && !nr && !ap && !c->opts->strict_objects) return common(c, JS_R_OBJECT);
    if (np + nr > 100000) {
        JS_FAIL(c, DSR1_ERR_RANGE, "object at %s declares too many properties", dsr1__js_where(c));
        return NULL;
    }
    const char **keys = calloc(np + nr + 1, sizeof *keys);
    js_x **vals = calloc(np + nr + 1, sizeof *vals);
    bool *reqd = calloc(np + nr + 1, sizeof *reqd);
    js_x **alts = calloc(np + nr + 2, sizeof *alts);
    js_x **rest = calloc(np + nr + 2, sizeof *rest);
    js_x *out = NULL;
    if (!keys || !vals || !reqd || !alts || !rest) {
        JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
        goto done;
    }
    js_x *add =
        ap ? gen_at(c, ap, "additionalProperties", NULL, -1)
           : (c->opts->strict_objects ? dsr1__js_node(c, X_NOTHING) : common(c, JS_R_VALUE));
    if (!(add = share(c, add, "additional"))) goto done;
    const char *k;
    json_t *v;
    json_object_foreach(props, k, v)
    {
        keys[n] = k;
        if (!(vals[n] = gen_at(c, v, "properties", k, -1))) goto done;
        if (n >= 1 && !(vals[n] = share(c, vals[n], k))) goto done; /* written twice below */
        n++;
    }
    for (size_t i = 0; i < nr; i++) {
        const char *r = json_string_value(json_array_get(req, i));
        size_t j = 0;
        while (j < n && strcmp(keys[j], r)) j++;
        if (j == n) {
            keys[n] = r;
            vals[n++] = add; /* a required name not declared: additionalProperties applies */
        }
        reqd[j] = true;
    }
    js_x *comma = SEQ(ws(c), LIT(","), ws(c)), *colon = SEQ(ws(c), LIT(":"), ws(c));
    /* the names of additional members exclude the declared ones (a repeated name would
     * escape its schema); a rule, as the name appears twice */
    js_x *akey = share(c, additional_key(c, keys, n), "additional-name");
    if (!akey) goto done;
    js_x *addkv = SEQ(akey, colon, add);
    js_x *tail = dsr1__js_rep(c, SEQ(comma, addkv), 0, JS_INF);
    size_t first_req = 0;
    while (first_req < n && !reqd[first_req]) first_req++;
    /* rest[i]: members i.. after something was written (each with a leading comma); those
     * referenced twice (by rest[i-1] and by the alternative that starts with member i-1)
     * are rules, so the text stays linear in the number of properties */
    rest[n] = tail;
    for (size_t i = n; i-- > 0;) {
        js_buf kb = {0};
        json_t *ks = json_stringn(keys[i], strlen(keys[i]));
        if (ks) dsr1__js_dump(&kb, ks);
        json_decref(ks);
        js_x *key = kb.oom || !ks ? NULL : dsr1__js_lit(c, kb.p, kb.n);
        free(kb.p);
        if (!key) {
            if (!c->budget)
                too_complex(c);
            else
                JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
            goto done;
        }
        js_x *kv = SEQ(key, colon, vals[i]);
        js_x *item = SEQ(comma, kv);
        js_x *next = rest[i + 1];
        if (i + 1 >= 2 && i + 1 <= first_req + 1 && i + 1 < n) { /* shared: make it a rule */
            int r;
            if (new_rule(c, "rest", &r)) goto done;
            c->rules[r].body = next;
            next = rule_ref(c, r);
            rest[i + 1] = next;
        }
        rest[i] = SEQ(reqd[i] ? item : dsr1__js_rep(c, item, 0, 1), next);
        alts[i] = SEQ(kv, next);
    }
    size_t na = first_req < n ? first_req + 1 : n;
    if (first_req >= n) alts[na++] = dsr1__js_rep(c, SEQ(addkv, tail), 0, 1);
    js_x *body = dsr1__js_alt(c, (int)na, alts);
    out = SEQ(LIT("{"), ws(c), body, ws(c), LIT("}"));
    if (!out && !c->budget) too_complex(c);
done:
    free(keys);
    free(vals);
    free(reqd);
    free(alts);
    free(rest);
    return out;
}

/* ---- arrays ---- */

static js_x *gen_array(js_ctx *c, json_t *s)
{
    json_t *pre = json_object_get(s, "prefixItems"), *items = json_object_get(s, "items");
    const char *pre_key = "prefixItems", *items_key = "items";
    if (json_is_array(items)) { /* draft-07 tuple form */
        pre = items;
        pre_key = "items";
        items = json_object_get(s, "additionalItems");
        items_key = "additionalItems";
    }
    if ((pre && !json_is_array(pre)) ||
        (items && !json_is_object(items) && !json_is_boolean(items))) {
        JS_FAIL(c, DSR1_ERR_INVALID_ARG, "'%s' at %s has the wrong type",
                pre && !json_is_array(pre) ? pre_key : items_key, dsr1__js_where(c));
        return NULL;
    }
    long long lo = 0, hi = -1;
    if (get_count(c, s, "minItems", &lo) || get_count(c, s, "maxItems", &hi)) return NULL;
    if (!pre && !items && lo == 0 && hi < 0) return common(c, JS_R_ARRAY);
    size_t k = json_array_size(pre);
    if (json_is_false(items) && (hi < 0 || (size_t)hi > k)) hi = (long long)k;
    if (hi >= 0 && lo > hi) return dsr1__js_node(c, X_NOTHING);
    long long rlo = lo > (long long)k ? lo - (long long)k : 0,
              rhi = hi < 0 ? -1 : hi - (long long)k;
    if (check_repeat(c, "minItems", rlo) || check_repeat(c, "maxItems", rhi)) return NULL;
    if (k > 100000) {
        JS_FAIL(c, DSR1_ERR_RANGE, "'%s' at %s has too many entries", pre_key, dsr1__js_where(c));
        return NULL;
    }
    js_x *item = items ? gen_at(c, items, items_key, NULL, -1) : common(c, JS_R_VALUE);
    if (!(item = share(c, item, "item"))) return NULL;
    js_x *comma = SEQ(ws(c), LIT(","), ws(c));
    /* tail(j): elements j.. after element j-1, built from the end */
    size_t last = hi >= 0 && (size_t)hi < k ? (size_t)hi : k;
    js_x *tail;
    if (hi >= 0 && (size_t)hi <= k) {
        tail = dsr1__js_node(c, X_EMPTY);
    } else {
        long long need = lo > (long long)k ? lo - (long long)k : 0;
        tail = dsr1__js_rep(c, SEQ(comma, item), (int)need,
                            hi < 0 ? JS_INF : (int)(hi - (long long)k));
    }
    js_x *first = NULL;
    for (size_t j = last; j-- > 0;) {
        js_x *pj = gen_at(c, json_array_get(pre, j), pre_key, NULL, (long)j);
        if (!pj) return NULL;
        if (j == 0) {
            first = SEQ(pj, tail);
        } else {
            js_x *el = SEQ(comma, pj, tail);
            tail = (long long)j < lo ? el : dsr1__js_rep(c, el, 0, 1);
        }
    }
    if (!first) {
        if (k > 0 || hi == 0) {
            first = dsr1__js_node(c, X_EMPTY); /* maxItems 0 */
        } else {                               /* no prefix: item (, item){lo-1, hi-1} */
            first = SEQ(item, dsr1__js_rep(c, SEQ(comma, item), lo > 1 ? (int)lo - 1 : 0,
                                           hi < 0 ? JS_INF : (int)hi - 1));
        }
    }
    js_x *content = lo == 0 ? dsr1__js_rep(c, first, 0, 1) : first;
    return SEQ(LIT("["), ws(c), content, ws(c), LIT("]"));
}

/* ---- $ref ---- */

static size_t memo_slot(const js_ctx *c, const void *key)
{
    size_t h = ((uintptr_t)key >> 4) * 0x9e3779b97f4a7c15ull;
    size_t i = h & (c->memo_cap - 1);
    while (c->memo_key[i] && c->memo_key[i] != key) i = (i + 1) & (c->memo_cap - 1);
    return i;
}

static int memo_put(js_ctx *c, const void *key, int val)
{
    if ((c->memo_n + 1) * 2 > c->memo_cap) {
        size_t cap = c->memo_cap ? c->memo_cap * 2 : 64;
        const void **ok = c->memo_key;
        int *ov = c->memo_val;
        size_t ocap = c->memo_cap;
        c->memo_key = calloc(cap, sizeof *c->memo_key);
        c->memo_val = calloc(cap, sizeof *c->memo_val);
        if (!c->memo_key || !c->memo_val) {
            free(ok);
            free(ov);
            return JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
        }
        c->memo_cap = cap;
        for (size_t i = 0; i < ocap; i++)
            if (ok[i]) {
                size_t j = memo_slot(c, ok[i]);
                c->memo_key[j] = ok[i];
                c->memo_val[j] = ov[i];
            }
        free(ok);
        free(ov);
    }
    size_t i = memo_slot(c, key);
    c->memo_key[i] = key;
    c->memo_val[i] = val;
    c->memo_n++;
    return 0;
}

static js_x *gen_ref(js_ctx *c, const char *ref)
{
    json_t *t;
    if (dsr1__js_resolve_ref(c, ref, &t)) return NULL;
    if (c->memo_cap) {
        size_t i = memo_slot(c, t);
        if (c->memo_key[i]) return rule_ref(c, c->memo_val[i]);
    }
    const char *hint = strrchr(ref, '/');
    int r;
    if (new_rule(c, hint && hint[1] ? hint + 1 : "ref", &r) || memo_put(c, t, r)) return NULL;
    /* the target's path is its pointer, so messages name the definition */
    char saved[sizeof c->path];
    size_t saved_len = c->path_len;
    memcpy(saved, c->path, saved_len + 1);
    size_t n = strlen(ref + 1) < sizeof c->path - 8 ? strlen(ref + 1) : sizeof c->path - 8;
    memcpy(c->path, ref + 1, n);
    c->path[n] = '\0';
    c->path_len = n;
    js_x *body = gen(c, t);
    if (!body) return NULL;
    memcpy(c->path, saved, saved_len + 1);
    c->path_len = saved_len;
    c->rules[r].body = body;
    return rule_ref(c, r);
}

/* ---- one schema ---- */

static js_x *gen_types(js_ctx *c, json_t *s)
{
    int mask;
    if (get_types(c, s, &mask)) return NULL;
    if (json_object_get(s, "enum") || json_object_get(s, "const")) return gen_enum(c, s, mask);
    js_x *alts[6];
    int n = 0;
    if (mask & T_OBJ && !(alts[n++] = gen_object(c, s))) return NULL;
    if (mask & T_ARR && !(alts[n++] = gen_array(c, s))) return NULL;
    if (mask & T_STR && !(alts[n++] = gen_string(c, s))) return NULL;
    if (mask & (T_NUM | T_INT) && !(alts[n++] = gen_numeric(c, s, mask))) return NULL;
    if (mask & T_BOOL && !(alts[n++] = dsr1__js_alt(c, 2, (js_x *[]){LIT("true"), LIT("false")})))
        return NULL;
    if (mask & T_NULL && !(alts[n++] = LIT("null"))) return NULL;
    return n ? dsr1__js_alt(c, n, alts) : dsr1__js_node(c, X_NOTHING);
}

static js_x *gen(js_ctx *c, json_t *s)
{
    if (!c->budget) return too_complex(c), NULL;
    if (json_is_true(s)) return common(c, JS_R_VALUE);
    if (json_is_false(s)) return dsr1__js_node(c, X_NOTHING);
    if (!json_is_object(s)) {
        JS_FAIL(c, DSR1_ERR_INVALID_ARG, "the schema at %s must be an object or a boolean",
                dsr1__js_where(c));
        return NULL;
    }
    if (c->depth >= JS_MAX_DEPTH) {
        JS_FAIL(c, DSR1_ERR_RANGE, "JSON Schema at %s: nested deeper than %d", dsr1__js_where(c),
                JS_MAX_DEPTH);
        return NULL;
    }
    if (dsr1__js_check_keywords(c, s)) return NULL;
    static const char *const none[] = {NULL};
    if (!has_other(s, none)) return common(c, JS_R_VALUE); /* {} or annotations only */
    c->depth++;
    js_x *x = NULL;
    json_t *ref = json_object_get(s, "$ref"), *any = json_object_get(s, "anyOf"),
           *one = json_object_get(s, "oneOf");
    static const char *const only_ref[] = {"$ref", NULL}, *const only_any[] = {"anyOf", NULL},
                             *const only_one[] = {"oneOf", NULL};
    if (ref && !json_is_string(ref)) {
        JS_FAIL(c, DSR1_ERR_INVALID_ARG, "'$ref' at %s must be a string", dsr1__js_where(c));
    } else if (json_object_get(s, "allOf") || (ref && has_other(s, only_ref)) ||
               (any && has_other(s, only_any)) || (one && has_other(s, only_one))) {
        json_t *flat;
        if (!dsr1__js_merge_allof(c, s, &flat)) x = gen(c, flat);
    } else if (ref) {
        x = gen_ref(c, json_string_value(ref));
    } else if (any || one) {
        json_t *l = any ? any : one;
        const char *k = any ? "anyOf" : "oneOf";
        size_t n = json_array_size(l);
        if (!json_is_array(l) || !n) {
            JS_FAIL(c, DSR1_ERR_INVALID_ARG, "'%s' at %s must be a non-empty array", k,
                    dsr1__js_where(c));
        } else if (n > JS_MAX_ENUM) {
            JS_FAIL(c, DSR1_ERR_RANGE, "'%s' at %s has %zu subschemas (limit %d)", k,
                    dsr1__js_where(c), n, JS_MAX_ENUM);
        } else {
            js_x **alts = malloc(n * sizeof *alts);
            size_t i = 0;
            for (; alts && i < n; i++)
                if (!(alts[i] = gen_at(c, json_array_get(l, i), k, NULL, (long)i))) break;
            if (alts && i == n)
                x = dsr1__js_alt(c, (int)n, alts);
            else if (!alts)
                JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
            free(alts);
        }
    } else {
        x = gen_types(c, s);
    }
    c->depth--;
    if (!x && !c->budget) too_complex(c);
    return x;
}

/* ---- productivity, pruning, printing ---- */

static bool productive1(const js_ctx *c, js_x *x);
static bool productive(const js_ctx *c, js_x *x)
{
    if (x->epoch == c->epoch) return x->prod;
    x->prod = productive1(c, x);
    x->epoch = c->epoch;
    return x->prod;
}

static bool productive1(const js_ctx *c, js_x *x)
{
    switch (x->k) {
    case X_NOTHING:
        return false;
    case X_EMPTY:
    case X_LIT:
    case X_RAW:
        return true;
    case X_RULE:
        return c->rules[x->rule].productive;
    case X_SEQ:
        for (int i = 0; i < x->n; i++)
            if (!productive(c, x->kids[i])) return false;
        return true;
    case X_ALT:
        for (int i = 0; i < x->n; i++)
            if (productive(c, x->kids[i])) return true;
        return false;
    case X_REP:
        return x->min == 0 || productive(c, x->kids[0]);
    }
    return false;
}

/* Rewrites x without NOTHING (unless x itself derives nothing) and without EMPTY inside
 * sequences and alternatives. Shared subtrees are rewritten once (x->rule caches). */
static js_x *prune1(js_ctx *c, js_x *x);
static js_x *prune(js_ctx *c, js_x *x)
{
    if (!x->done) x->done = prune1(c, x);
    return x->done;
}

static js_x *prune1(js_ctx *c, js_x *x)
{
    static js_x nothing = {.k = X_NOTHING}, empty = {.k = X_EMPTY};
    switch (x->k) {
    case X_NOTHING:
    case X_EMPTY:
    case X_LIT:
    case X_RAW:
        return x;
    case X_RULE: {
        js_rule *r = &c->rules[x->rule];
        if (!r->productive) return &nothing;
        return x;
    }
    case X_SEQ: {
        /* pruned kids, nested sequences spliced in, adjacent literals joined ("\"name\":"
         * rather than "\"name\"" ":") */
        int cap = 0;
        for (int i = 0; i < x->n; i++) {
            js_x *k = prune(c, x->kids[i]);
            if (k->k == X_NOTHING) return &nothing;
            x->kids[i] = k;
            cap += k->k == X_SEQ ? k->n : 1;
        }
        js_x **kids = dsr1__js_alloc(c, (cap ? cap : 1) * sizeof *kids);
        if (!kids) return x; /* out of memory: the unspliced form is still correct */
        int m = 0;
        for (int i = 0; i < x->n; i++) {
            js_x *k = x->kids[i];
            int nk = k->k == X_SEQ ? k->n : 1;
            for (int j = 0; j < nk; j++) {
                js_x *e = k->k == X_SEQ ? k->kids[j] : k;
                if (e->k == X_EMPTY) continue;
                if (m && e->k == X_LIT && kids[m - 1]->k == X_LIT) {
                    js_x *p = kids[m - 1];
                    js_x *q = dsr1__js_node(c, X_LIT);
                    char *t = q ? dsr1__js_alloc(c, p->len + e->len + 1) : NULL;
                    if (t) {
                        memcpy(t, p->text, p->len);
                        memcpy(t + p->len, e->text, e->len);
                        q->text = t;
                        q->len = p->len + e->len;
                        kids[m - 1] = q;
                        continue;
                    }
                }
                kids[m++] = e;
            }
        }
        x->kids = kids;
        x->n = m;
        if (m == 0) return &empty;
        return m == 1 ? x->kids[0] : x;
    }
    case X_ALT: {
        int cap = 0;
        for (int i = 0; i < x->n; i++) {
            x->kids[i] = prune(c, x->kids[i]);
            cap += x->kids[i]->k == X_ALT ? x->kids[i]->n : 1;
        }
        js_x **kids = dsr1__js_alloc(c, (cap ? cap : 1) * sizeof *kids);
        if (!kids) return x;
        int m = 0;
        bool eps = false;
        for (int i = 0; i < x->n; i++) { /* nested alternations spliced in */
            js_x *k = x->kids[i];
            int nk = k->k == X_ALT ? k->n : 1;
            for (int j = 0; j < nk; j++) {
                js_x *e = k->k == X_ALT ? k->kids[j] : k;
                if (e->k == X_EMPTY)
                    eps = true;
                else if (e->k != X_NOTHING)
                    kids[m++] = e;
            }
        }
        x->kids = kids;
        x->n = m;
        js_x *r = m == 0 ? (eps ? &empty : &nothing) : m == 1 ? x->kids[0] : x;
        if (eps && m) {
            js_x *q = dsr1__js_node(c, X_REP);
            if (!q) return r; /* budget spent: keep the (still correct) looser form */
            q->kids = dsr1__js_alloc(c, sizeof *q->kids);
            if (!q->kids) return r;
            q->kids[0] = r;
            q->n = 1;
            q->min = 0;
            q->max = 1;
            return q;
        }
        return r;
    }
    case X_REP: {
        js_x *k = prune(c, x->kids[0]);
        if (k->k == X_NOTHING) return x->min == 0 ? &empty : &nothing;
        if (k->k == X_EMPTY || x->max == 0) return &empty;
        if (x->min == 1 && x->max == 1) return k;
        x->kids[0] = k;
        return x;
    }
    }
    return x;
}

static void mark(js_ctx *c, const js_x *x, int *stack, int *sp)
{
    if (x->k == X_RULE) {
        if (!c->rules[x->rule].reachable) {
            c->rules[x->rule].reachable = true;
            stack[(*sp)++] = x->rule;
        }
        return;
    }
    for (int i = 0; i < x->n; i++) mark(c, x->kids[i], stack, sp);
}

static void print_lit(js_buf *b, const char *s, size_t n)
{
    dsr1__js_buf_add(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            char e[2] = {'\\', (char)ch};
            dsr1__js_buf_add(b, e, 2);
        } else if (ch < 0x20 || ch == 0x7f) {
            dsr1__js_buf_fmt(b, "\\x%02x", ch);
        } else {
            dsr1__js_buf_add(b, (const char *)&ch, 1);
        }
    }
    dsr1__js_buf_add(b, "\"", 1);
}

/* prec: 0 inside an alternation, 1 inside a sequence, 2 under a postfix operator */
static void print_x(const js_ctx *c, js_buf *b, const js_x *x, int prec)
{
    switch (x->k) {
    case X_NOTHING:
    case X_EMPTY:
        dsr1__js_buf_str(b, "\"\"");
        break;
    case X_LIT:
        print_lit(b, x->text, x->len);
        break;
    case X_RAW: {
        bool simple = x->text[0] == '[' || x->text[0] == '/' || x->text[0] == '"';
        if (!simple || prec == 0) {
            bool paren = !simple && prec > 0;
            if (paren) dsr1__js_buf_add(b, "(", 1);
            dsr1__js_buf_add(b, x->text, x->len);
            if (paren) dsr1__js_buf_add(b, ")", 1);
        } else {
            /* a class, a regex or a literal possibly followed by a quantifier */
            bool quant = x->text[x->len - 1] == '}' || x->text[x->len - 1] == '*' ||
                         x->text[x->len - 1] == '+' || x->text[x->len - 1] == '?';
            bool sp = strchr(x->text, ' ') != NULL && x->text[0] != '/' && x->text[0] != '[';
            bool paren = (prec == 2 && quant) || sp;
            if (paren) dsr1__js_buf_add(b, "(", 1);
            dsr1__js_buf_add(b, x->text, x->len);
            if (paren) dsr1__js_buf_add(b, ")", 1);
        }
        break;
    }
    case X_RULE:
        dsr1__js_buf_str(b, c->rules[x->rule].name);
        break;
    case X_SEQ:
    case X_ALT: {
        int my = x->k == X_ALT ? 0 : 1;
        bool paren = prec > my;
        if (paren) dsr1__js_buf_add(b, "(", 1);
        for (int i = 0; i < x->n; i++) {
            if (i) dsr1__js_buf_str(b, my ? " " : " | ");
            print_x(c, b, x->kids[i], 1);
            if (b->n > JS_MAX_OUTPUT) return;
        }
        if (paren) dsr1__js_buf_add(b, ")", 1);
        break;
    }
    case X_REP:
        print_x(c, b, x->kids[0], 2);
        if (x->min == 0 && x->max == 1)
            dsr1__js_buf_add(b, "?", 1);
        else if (x->min == 0 && x->max == JS_INF)
            dsr1__js_buf_add(b, "*", 1);
        else if (x->min == 1 && x->max == JS_INF)
            dsr1__js_buf_add(b, "+", 1);
        else if (x->max == JS_INF)
            dsr1__js_buf_fmt(b, "{%d,}", x->min);
        else if (x->min == x->max)
            dsr1__js_buf_fmt(b, "{%d}", x->min);
        else
            dsr1__js_buf_fmt(b, "{%d,%d}", x->min, x->max);
        break;
    }
}

static void ctx_free(js_ctx *c)
{
    for (size_t i = 0; i < c->nblocks; i++) free(c->blocks[i]);
    free(c->blocks);
    free(c->rules);
    free(c->memo_key);
    free(c->memo_val);
    json_decref(c->keep);
    json_decref(c->root);
}

dsr1_status dsr1_json_schema_to_ebnf(const char *schema, size_t len, const dsr1_grammar_opts *opts,
                                     char **out, size_t *out_len)
{
    static const dsr1_grammar_opts defaults = {0};
    if (!schema || !out) return dsr1_error(DSR1_ERR_INVALID_ARG, "JSON Schema: NULL argument");
    if (!opts) opts = &defaults;
    size_t max_source = opts->max_source ? opts->max_source : (size_t)1 << 20;
    if (len > max_source)
        return dsr1_error(DSR1_ERR_RANGE,
                          "JSON Schema: %zu bytes exceed the limit of %zu "
                          "(max_source)",
                          len, max_source);
    js_ctx c = {.opts = opts,
                .max_rules = opts->max_rules > 0 ? opts->max_rules : 10000,
                .max_repeat = opts->max_repeat > 0 ? opts->max_repeat : 1000,
                .budget = JS_MAX_NODES,
                .merges = JS_MAX_MERGES};
    for (int i = 0; i < 12; i++) c.common[i] = -1;
    int rc = dsr1__js_parse(schema, len, "JSON Schema", &c.root);
    if (rc) return rc;
    c.keep = json_array();
    int root;
    js_x *body = NULL;
    if (!c.keep)
        rc = dsr1_error(DSR1_ERR_NOMEM, "JSON Schema: out of memory");
    else if (!(rc = new_rule(&c, "root", &root)) && !(rc = memo_put(&c, c.root, root)))
        body = gen(&c, c.root);
    if (!rc && !body)
        rc = c.err ? c.err : dsr1_error(DSR1_ERR_INTERNAL, "JSON Schema: conversion failed");
    if (body) {
        c.rules[root].body = body;
        /* least fixpoint of productivity; later rules are mostly children, so go backwards */
        for (bool changed = true; changed;) {
            changed = false;
            c.epoch++;
            for (int i = c.nrules; i-- > 0;)
                if (!c.rules[i].productive && c.rules[i].body && productive(&c, c.rules[i].body)) {
                    c.rules[i].productive = changed = true;
                }
        }
        if (!c.rules[root].productive) {
            rc = dsr1_error(DSR1_ERR_INVALID_ARG,
                            "JSON Schema: no JSON value satisfies the schema (a false schema, "
                            "contradicting keywords, or a $ref cycle with no base case)");
        }
    }
    js_buf b = {0};
    if (!rc) {
        for (int i = c.nrules; i-- > 0;)
            if (c.rules[i].productive) c.rules[i].body = prune(&c, c.rules[i].body);
        int *stack = malloc(c.nrules * sizeof *stack), sp = 0;
        if (!stack) {
            rc = dsr1_error(DSR1_ERR_NOMEM, "JSON Schema: out of memory");
        } else {
            c.rules[root].reachable = true;
            stack[sp++] = root;
            while (sp) {
                int r = stack[--sp];
                mark(&c, c.rules[r].body, stack, &sp);
            }
            free(stack);
            for (int i = 0; i < c.nrules && !b.oom && b.n <= JS_MAX_OUTPUT; i++) {
                if (!c.rules[i].reachable) continue;
                dsr1__js_buf_str(&b, c.rules[i].name);
                dsr1__js_buf_str(&b, " ::= ");
                print_x(&c, &b, c.rules[i].body, 0);
                dsr1__js_buf_add(&b, "\n", 1);
            }
            if (b.oom)
                rc = dsr1_error(DSR1_ERR_NOMEM, "JSON Schema: out of memory");
            else if (b.n > JS_MAX_OUTPUT)
                rc = dsr1_error(DSR1_ERR_RANGE, "JSON Schema: the grammar text passes %zu bytes",
                                JS_MAX_OUTPUT);
        }
    }
    ctx_free(&c);
    if (rc) {
        free(b.p);
        return rc;
    }
    *out = b.p;
    if (out_len) *out_len = b.n;
    return DSR1_OK;
}
