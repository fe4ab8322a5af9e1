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
 * annotations) are ignored too, as validators do. Deliberate approximations: oneOf is
 * taken as anyOf (an instance matching two branches is not excluded), the formats hostname
 * and uri are regular over-approximations (date, time and date-time are exact, see
 * json_schema_pattern.c), and the output's form is canonical where JSON allows several (one
 * escape form per character in names and patterns, no exponent in bounded numbers, no
 * "-0").
 *
 * Files: json_schema.c (IR, keywords, the generator and $ref), json_schema_object.c,
 * json_schema_props.c (patternProperties, dependencies), json_schema_number.c,
 * json_schema_pattern.c (pattern, format), json_schema_merge.c
 * (allOf, $ref resolution), json_schema_emit.c (pruning, printing), json_schema_serial.c
 * (canonical JSON, instance serialiser). */
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

js_x *dsr1__js_rule_ref(js_ctx *c, int r)
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

int dsr1__js_too_complex(js_ctx *c)
{
    if (c->err) return c->err;
    return JS_FAIL(c, DSR1_ERR_RANGE,
                   "JSON Schema at %s: the grammar grows past %d nodes (schema too complex)",
                   dsr1__js_where(c), JS_MAX_NODES);
}

/* ---- rules ---- */

int dsr1__js_new_rule(js_ctx *c, const char *hint, int *out)
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

/* x as a rule when it is compound, so that referring to it twice does not copy it. */
js_x *dsr1__js_share(js_ctx *c, js_x *x, const char *hint)
{
    if (!x || x->k == X_RULE || x->k == X_LIT || x->k == X_RAW || x->k == X_NOTHING ||
        x->k == X_EMPTY)
        return x;
    int r;
    if (dsr1__js_new_rule(c, hint, &r)) return NULL;
    c->rules[r].body = x;
    return dsr1__js_rule_ref(c, r);
}

/* The shared rules: char, string, value, object, array, number, integer. */
js_x *dsr1__js_common(js_ctx *c, int which)
{
    static const char *names[] = {"char",   "string",  "value", "object", "array",
                                  "number", "integer", "ws",    "kchar",  "kesc"};
    if (c->common[which] >= 0) return dsr1__js_rule_ref(c, c->common[which]);
    int r = c->nrules;
    if (dsr1__js_new_rule(c, "x", &r)) return NULL;
    c->rules[r].name = (char *)names[which];
    c->common[which] = r;
    js_x *body = NULL,
         *comma = which == JS_R_WS ? NULL : SEQ(dsr1__js_ws(c), LIT(","), dsr1__js_ws(c));
    switch (which) {
    case JS_R_CHAR:
        /* one code point: raw (no quote, backslash or control), a short escape, \uXXXX
         * outside the surrogates, or a surrogate pair; so {n,m} of it counts code points */
        body = RAW("[^\"\\\\\\x00-\\x1f] | \"\\\\\" [\"\\\\/bfnrt] | \"\\\\u\" "
                   "([0-9a-cA-CefEF] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2}) | "
                   "\"\\\\u\" [dD] [89abAB] [0-9a-fA-F]{2} \"\\\\u\" [dD] [c-fC-F] [0-9a-fA-F]{2}");
        break;
    case JS_R_STRING:
        body = SEQ(LIT("\""), dsr1__js_rep(c, dsr1__js_common(c, JS_R_CHAR), 0, JS_INF), LIT("\""));
        break;
    case JS_R_VALUE:
        body = dsr1__js_alt(
            c, 7,
            (js_x *[]){dsr1__js_common(c, JS_R_OBJECT), dsr1__js_common(c, JS_R_ARRAY),
                       dsr1__js_common(c, JS_R_STRING), dsr1__js_common(c, JS_R_NUMBER),
                       LIT("true"), LIT("false"), LIT("null")});
        break;
    case JS_R_OBJECT: {
        js_x *member = SEQ(dsr1__js_common(c, JS_R_STRING), dsr1__js_ws(c), LIT(":"),
                           dsr1__js_ws(c), dsr1__js_common(c, JS_R_VALUE));
        js_x *members = SEQ(member, dsr1__js_rep(c, SEQ(comma, member), 0, JS_INF), dsr1__js_ws(c));
        body = SEQ(LIT("{"), dsr1__js_ws(c), dsr1__js_rep(c, members, 0, 1), LIT("}"));
        break;
    }
    case JS_R_ARRAY: {
        js_x *v = dsr1__js_common(c, JS_R_VALUE);
        js_x *items = SEQ(v, dsr1__js_rep(c, SEQ(comma, v), 0, JS_INF), dsr1__js_ws(c));
        body = SEQ(LIT("["), dsr1__js_ws(c), dsr1__js_rep(c, items, 0, 1), LIT("]"));
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
    return dsr1__js_rule_ref(c, r);
}

/* Optional whitespace between tokens: bounded (a model cannot loop on it). */
js_x *dsr1__js_ws(js_ctx *c)
{
    if (!c->opts->json_whitespace) return dsr1__js_node(c, X_EMPTY);
    return dsr1__js_common(c, JS_R_WS);
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
                                        "maxProperties",
                                        "patternProperties",
                                        "dependentRequired",
                                        "dependencies",
                                        NULL};
static const char *const unsupported[] = {"dependentSchemas",
                                          "if",
                                          "then",
                                          "else",
                                          "not",
                                          "multipleOf",
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
    return false;
}

bool dsr1__js_annotation(const char *key)
{
    return !in(supported, key) && !in(unsupported, key);
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
int dsr1__js_get_count(js_ctx *c, json_t *s, const char *k, long long *out)
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

int dsr1__js_check_repeat(js_ctx *c, const char *k, long long v)
{
    if (v > c->max_repeat)
        return JS_FAIL(c, DSR1_ERR_RANGE,
                       "'%s' %lld at %s exceeds the repetition limit %d (max_repeat)", k, v,
                       dsr1__js_where(c), c->max_repeat);
    return 0;
}

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

js_x *dsr1__js_gen_at(js_ctx *c, json_t *s, const char *k1, const char *k2, long idx)
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
            return c->budget ? NULL : (dsr1__js_too_complex(c), NULL);
        }
    }
    js_x *x = m ? dsr1__js_alt(c, m, alts) : dsr1__js_node(c, X_NOTHING);
    free(alts);
    return x;
}

/* ---- strings ---- */

/* minLength/maxLength beside a pattern that is one character repeated, anchored at both
 * ends (^[a-z0-9-]+$, ^\\d{9}$, ^.*$): the length bounds and the quantifier's intersect, and
 * the character's encodings are repeated that many times (exact: one repetition is one
 * code point). 0 when done (*out set), 1 when the pattern has another form. */
static int length_pattern(js_ctx *c, json_t *s, long long lo, long long hi, js_x **out)
{
    const char *p = json_string_value(json_object_get(s, "pattern"));
    size_t n = strlen(p);
    if (n < 3 || p[0] != '^' || p[n - 1] != '$' || p[n - 2] == '\\') return 1;
    const char *a = p + 1, *e = a; /* the atom: [...], \\X or one character */
    if (*e == '[') {
        e++;
        if (*e == '^') e++;
        if (*e == ']') e++;
        while (*e && *e != ']') e += *e == '\\' && e[1] ? 2 : 1;
        if (*e != ']') return 1;
        e++;
    } else if (*e == '\\') {
        if (!e[1] || !strchr("dDwWsS", e[1])) return 1;
        e += 2;
    } else if (*e == '.') {
        e++;
    } else {
        return 1;
    }
    long long qa = 1, qb = 1; /* the quantifier */
    const char *q = e;
    if (*q == '*' || *q == '+' || *q == '?') {
        qa = *q == '+';
        qb = *q == '?' ? 1 : -1;
        q++;
    } else if (*q == '{') {
        char *end;
        qa = strtoll(q + 1, &end, 10);
        if (end == q + 1) return 1;
        if (*end == '}') {
            qb = qa;
        } else if (*end == ',' && end[1] == '}') {
            qb = -1;
            end++;
        } else if (*end == ',') {
            char *e2;
            qb = strtoll(end + 1, &e2, 10);
            if (e2 == end + 1 || *e2 != '}') return 1;
            end = e2;
        } else {
            return 1;
        }
        q = end + 1;
    }
    if (q != p + n - 1) return 1; /* more than one atom (or a lazy quantifier) */
    long long l = lo > qa ? lo : qa;
    long long h = hi < 0 ? qb : qb < 0 ? hi : hi < qb ? hi : qb;
    if (h >= 0 && l > h) {
        *out = dsr1__js_node(c, X_NOTHING);
        return 0;
    }
    char atom[1024];
    if ((size_t)(e - a) + 3 > sizeof atom) return 1;
    snprintf(atom, sizeof atom, "^%.*s$", (int)(e - a), a);
    char *re;
    if (dsr1__js_pattern(c, atom, strlen(atom), "pattern", &re)) return -1;
    js_x *rep =
        dsr1__js_counted(c, RAW(re), l, h, lo > (hi < 0 ? 0 : hi) ? "minLength" : "maxLength");
    *out = rep ? SEQ(LIT("\""), rep, LIT("\"")) : NULL;
    return *out ? 0 : -1;
}

/* minLength/maxLength beside a format whose values all have one length (date: 10 code
 * points, uuid: 36): the bounds either hold for every value or for none. */
static int length_format(js_ctx *c, json_t *s, long long lo, long long hi, js_x **out)
{
    const char *f = json_string_value(json_object_get(s, "format"));
    long long len = !strcmp(f, "date") ? 10 : !strcmp(f, "uuid") ? 36 : -1;
    if (len < 0) return 1;
    if (len < lo || (hi >= 0 && len > hi)) {
        *out = dsr1__js_node(c, X_NOTHING);
        return 0;
    }
    const char *re = dsr1__js_format_pattern(f);
    char *x;
    if (dsr1__js_pattern(c, re, strlen(re), "format", &x)) return -1;
    *out = SEQ(LIT("\""), RAW(x), LIT("\""));
    return *out ? 0 : -1;
}

static js_x *gen_string(js_ctx *c, json_t *s)
{
    long long lo = 0, hi = -1;
    if (dsr1__js_get_count(c, s, "minLength", &lo) || dsr1__js_get_count(c, s, "maxLength", &hi))
        return NULL;
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
            js_x *x = NULL;
            if (pat ? !length_pattern(c, s, lo, hi, &x) : !length_format(c, s, lo, hi, &x))
                return x;
            if (c->err) return NULL;
            JS_FAIL(c, DSR1_ERR_INVALID_ARG,
                    "'%s' beside '%s' at %s is not supported (only beside a pattern of one "
                    "character class repeated, ^[...]{n,m}$, or a fixed-length format)",
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
    if (!lo && hi < 0) return dsr1__js_common(c, JS_R_STRING);
    js_x *chars = dsr1__js_counted(c, dsr1__js_common(c, JS_R_CHAR), lo, hi,
                                   lo > (hi < 0 ? 0 : hi) ? "minLength" : "maxLength");
    return chars ? SEQ(LIT("\""), chars, LIT("\"")) : NULL;
}

/* unit{lo,hi} (hi < 0: unbounded). Past max_repeat, as blocks: a rule blk ::= unit{B} with
 * B about the square root of the bound, and unit{lo,hi} = blk{k} unit{j..} by the quotient
 * and remainder of the length (L = B k + j, 0 <= j < B), so the automata grow with the
 * square root of the bound instead of the bound (blk is a free-text rule of its own: the
 * caller's automaton counts blocks, blk's counts characters). Exact: the alternatives are
 * the lengths' disjoint ranges. Refused only past max_repeat squared. */
js_x *dsr1__js_counted(js_ctx *c, js_x *unit, long long lo, long long hi, const char *what)
{
    long long top = hi < 0 ? lo : hi;
    if (!unit) return NULL;
    if (top <= c->max_repeat) return dsr1__js_rep(c, unit, (int)lo, hi < 0 ? JS_INF : (int)hi);
    long long b = 1;
    while (b * b < top) b++;
    if (b > c->max_repeat)
        return JS_FAIL(c, DSR1_ERR_RANGE,
                       "'%s' %lld at %s exceeds the repetition limit %d squared (max_repeat)", what,
                       top, dsr1__js_where(c), c->max_repeat),
               NULL;
    int r;
    if (dsr1__js_new_rule(c, "block", &r)) return NULL;
    c->rules[r].body = dsr1__js_rep(c, unit, (int)b, (int)b);
    if (!c->rules[r].body) return NULL;
    js_x *blk = dsr1__js_rule_ref(c, r);
    long long klo = lo / b, jlo = lo % b;
    if (hi < 0) /* unit{lo} unit* */
        return SEQ(dsr1__js_rep(c, blk, (int)klo, (int)klo),
                   dsr1__js_rep(c, unit, (int)jlo, (int)jlo), dsr1__js_rep(c, unit, 0, JS_INF));
    long long khi = hi / b, jhi = hi % b;
    if (klo == khi)
        return SEQ(dsr1__js_rep(c, blk, (int)klo, (int)klo),
                   dsr1__js_rep(c, unit, (int)jlo, (int)jhi));
    js_x *alts[3];
    int n = 0;
    alts[n++] =
        SEQ(dsr1__js_rep(c, blk, (int)klo, (int)klo), dsr1__js_rep(c, unit, (int)jlo, (int)b - 1));
    if (khi - 1 >= klo + 1)
        alts[n++] = SEQ(dsr1__js_rep(c, blk, (int)klo + 1, (int)khi - 1),
                        dsr1__js_rep(c, unit, 0, (int)b - 1));
    alts[n++] = SEQ(dsr1__js_rep(c, blk, (int)khi, (int)khi), dsr1__js_rep(c, unit, 0, (int)jhi));
    return dsr1__js_alt(c, n, alts);
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
        if (c->memo_key[i]) return dsr1__js_rule_ref(c, c->memo_val[i]);
    }
    const char *hint = strrchr(ref, '/');
    int r;
    if (dsr1__js_new_rule(c, hint && hint[1] ? hint + 1 : "ref", &r) || memo_put(c, t, r))
        return NULL;
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
    return dsr1__js_rule_ref(c, r);
}

/* ---- one schema ---- */

static js_x *gen_types(js_ctx *c, json_t *s)
{
    int mask;
    if (get_types(c, s, &mask)) return NULL;
    if (json_object_get(s, "enum") || json_object_get(s, "const")) return gen_enum(c, s, mask);
    js_x *alts[6];
    int n = 0;
    if (mask & T_OBJ && !(alts[n++] = dsr1__js_gen_object(c, s))) return NULL;
    if (mask & T_ARR && !(alts[n++] = dsr1__js_gen_array(c, s))) return NULL;
    if (mask & T_STR && !(alts[n++] = gen_string(c, s))) return NULL;
    if (mask & (T_NUM | T_INT) && !(alts[n++] = dsr1__js_gen_numeric(c, s, mask))) return NULL;
    if (mask & T_BOOL && !(alts[n++] = dsr1__js_alt(c, 2, (js_x *[]){LIT("true"), LIT("false")})))
        return NULL;
    if (mask & T_NULL && !(alts[n++] = LIT("null"))) return NULL;
    return n ? dsr1__js_alt(c, n, alts) : dsr1__js_node(c, X_NOTHING);
}

static js_x *gen(js_ctx *c, json_t *s)
{
    if (!c->budget) return dsr1__js_too_complex(c), NULL;
    if (json_is_true(s)) return dsr1__js_common(c, JS_R_VALUE);
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
    if (!has_other(s, none)) return dsr1__js_common(c, JS_R_VALUE); /* {} or annotations only */
    /* a nested $id starts a new base URI: "#/..." inside it would mean its own root */
    json_t *id = json_object_get(s, "$id");
    bool new_base = s != c->root && json_is_string(id) && json_string_value(id)[0] != '#';
    c->in_id += new_base;
    c->depth++;
    js_x *x = NULL;
    json_t *ref = json_object_get(s, "$ref"), *any = json_object_get(s, "anyOf"),
           *one = json_object_get(s, "oneOf");
    static const char *const only_ref[] = {"$ref", NULL}, *const only_any[] = {"anyOf", NULL},
                             *const only_one[] = {"oneOf", NULL};
    if (ref && !json_is_string(ref)) {
        JS_FAIL(c, DSR1_ERR_INVALID_ARG, "'$ref' at %s must be a string", dsr1__js_where(c));
    } else if (ref && c->ref_alone) { /* draft-07 and before: siblings of $ref are ignored */
        x = gen_ref(c, json_string_value(ref));
    } else if (json_object_get(s, "dependentRequired") || json_object_get(s, "dependencies")) {
        json_t *alts;
        if (!dsr1__js_dependencies(c, s, &alts)) x = gen(c, alts);
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
                if (!(alts[i] = dsr1__js_gen_at(c, json_array_get(l, i), k, NULL, (long)i))) break;
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
    c->in_id -= new_base;
    if (!x && !c->budget) dsr1__js_too_complex(c);
    return x;
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
    dsr1_grammar_vocab_free(c->rvocab);
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
    c.ref_alone = dsr1__js_ref_alone(c.root);
    c.keep = json_array();
    int root;
    js_x *body = NULL;
    if (!c.keep)
        rc = dsr1_error(DSR1_ERR_NOMEM, "JSON Schema: out of memory");
    else if (!(rc = dsr1__js_new_rule(&c, "root", &root)) && !(rc = memo_put(&c, c.root, root)))
        body = gen(&c, c.root);
    if (!rc && !body)
        rc = c.err ? c.err : dsr1_error(DSR1_ERR_INTERNAL, "JSON Schema: conversion failed");
    js_buf b = {0};
    if (body) {
        c.rules[root].body = body;
        rc = dsr1__js_emit(&c, root, &b);
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
