/* Canonical compact JSON for the JSON Schema converter: the literals of enum/const values,
 * and the serialisation of instances in schema property order (json_schema_instance.h) that
 * `dsr1 grammar check` and the conformance test feed through a grammar. Both must agree with
 * the grammar that json_schema.c emits: same number form, same string escapes, same order of
 * object members. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_schema_instance.h"
#include "json_schema_internal.h"

#define SER_MAX_DEPTH 256

/* The shortest "%.*e" form of v >= 0 that reads back as v: its digits and exponent. */
static int shortest(double v, char *digits, size_t n)
{
    char tmp[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, v);
        if (strtod(tmp, NULL) == v) break;
    }
    char *e = strchr(tmp, 'e');
    size_t k = 0;
    for (char *p = tmp; p < e && k + 1 < n; p++)
        if (*p != '.') digits[k++] = *p;
    digits[k] = '\0';
    return atoi(e + 1);
}

void dsr1__js_decimal(double v, char *ip, size_t ipn, char *fp, size_t fpn)
{
    char d[24];
    int exp = shortest(v, d, sizeof d);
    size_t nd = strlen(d), ni = 0, nf = 0;
    if (exp >= 0) {
        for (int i = 0; i <= exp && ni + 1 < ipn; i++) ip[ni++] = (size_t)i < nd ? d[i] : '0';
        for (size_t i = (size_t)exp + 1; i < nd && nf + 1 < fpn; i++) fp[nf++] = d[i];
    } else {
        ip[ni++] = '0';
        for (int i = 0; i < -exp - 1 && nf + 1 < fpn; i++) fp[nf++] = '0';
        for (size_t i = 0; i < nd && nf + 1 < fpn; i++) fp[nf++] = d[i];
    }
    ip[ni] = '\0';
    while (nf && fp[nf - 1] == '0') nf--;
    fp[nf] = '\0';
    size_t z = 0;
    while (ip[z] == '0' && ip[z + 1]) z++;
    memmove(ip, ip + z, strlen(ip + z) + 1);
}

static void dump_number(js_buf *b, double x)
{
    if (x == floor(x) && fabs(x) < 9007199254740992.0) {
        dsr1_strbuf_fmt(b, "%.0f", x == 0 ? 0.0 : x); /* -0.0 -> 0 */
        return;
    }
    /* positional, as bounded-number grammars write numbers (a double has at most 309
     * integer digits and 341 fraction digits) */
    char ip[400], fp[400];
    dsr1__js_decimal(fabs(x), ip, sizeof ip, fp, sizeof fp);
    if (x < 0) dsr1_strbuf_add(b, "-", 1);
    dsr1_strbuf_str(b, ip);
    if (fp[0]) {
        dsr1_strbuf_add(b, ".", 1);
        dsr1_strbuf_str(b, fp);
    }
}

static void dump_string(js_buf *b, const char *s, size_t n)
{
    dsr1_strbuf_add(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        const char *esc = NULL;
        char u[8];
        switch (ch) {
        case '"':
            esc = "\\\"";
            break;
        case '\\':
            esc = "\\\\";
            break;
        case '\b':
            esc = "\\b";
            break;
        case '\f':
            esc = "\\f";
            break;
        case '\n':
            esc = "\\n";
            break;
        case '\r':
            esc = "\\r";
            break;
        case '\t':
            esc = "\\t";
            break;
        default:
            if (ch < 0x20) {
                snprintf(u, sizeof u, "\\u%04x", ch);
                esc = u;
            }
        }
        if (!esc) continue;
        dsr1_strbuf_add(b, s + run, i - run);
        dsr1_strbuf_str(b, esc);
        run = i + 1;
    }
    dsr1_strbuf_add(b, s + run, n - run);
    dsr1_strbuf_add(b, "\"", 1);
}

void dsr1__js_dump(js_buf *b, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *x;
        bool first = true;
        dsr1_strbuf_add(b, "{", 1);
        json_object_foreach((json_t *)v, k, x)
        {
            if (!first) dsr1_strbuf_add(b, ",", 1);
            first = false;
            dump_string(b, k, strlen(k));
            dsr1_strbuf_add(b, ":", 1);
            dsr1__js_dump(b, x);
        }
        dsr1_strbuf_add(b, "}", 1);
        break;
    }
    case JSON_ARRAY:
        dsr1_strbuf_add(b, "[", 1);
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i) dsr1_strbuf_add(b, ",", 1);
            dsr1__js_dump(b, json_array_get(v, i));
        }
        dsr1_strbuf_add(b, "]", 1);
        break;
    case JSON_STRING:
        dump_string(b, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        dsr1_strbuf_fmt(b, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        break;
    case JSON_REAL:
        dump_number(b, json_real_value(v));
        break;
    case JSON_TRUE:
        dsr1_strbuf_str(b, "true");
        break;
    case JSON_FALSE:
        dsr1_strbuf_str(b, "false");
        break;
    case JSON_NULL:
        dsr1_strbuf_str(b, "null");
        break;
    }
}

bool dsr1__js_equal(const json_t *a, const json_t *b)
{
    if (json_is_number(a) && json_is_number(b)) {
        if (json_is_integer(a) && json_is_integer(b))
            return json_integer_value(a) == json_integer_value(b);
        return json_number_value(a) == json_number_value(b);
    }
    if (json_typeof(a) != json_typeof(b)) return false;
    if (json_is_string(a))
        return json_string_length(a) == json_string_length(b) &&
               !memcmp(json_string_value(a), json_string_value(b), json_string_length(a));
    if (json_is_array(a)) {
        if (json_array_size(a) != json_array_size(b)) return false;
        for (size_t i = 0; i < json_array_size(a); i++)
            if (!dsr1__js_equal(json_array_get(a, i), json_array_get(b, i))) return false;
        return true;
    }
    if (json_is_object(a)) {
        if (json_object_size(a) != json_object_size(b)) return false;
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)a, k, x)
        {
            json_t *y = json_object_get(b, k);
            if (!y || !dsr1__js_equal(x, y)) return false;
        }
        return true;
    }
    return true; /* true, false, null */
}

int dsr1__js_parse(const char *text, size_t len, const char *what, json_t **out)
{
    json_error_t e;
    json_t *v =
        json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    if (!v)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "%s: line %d column %d: %s", what, e.line, e.column,
                          e.text);
    *out = v;
    return 0;
}

/* ---- instances in schema order ---- */

typedef struct {
    js_ctx *c;
    const char **keys; /* ordered, unique */
    json_t **schemas;  /* the first subschema that declares the key, NULL for required-only */
    size_t n, cap;
    json_t *additional; /* the first additionalProperties met */
    json_t *pattern;    /* the first patternProperties schema met */
} key_order;

static bool type_fits(const json_t *type, const json_t *v)
{
    if (!type) return true;
    if (json_is_array(type)) {
        for (size_t i = 0; i < json_array_size(type); i++)
            if (type_fits(json_array_get(type, i), v)) return true;
        return false;
    }
    const char *t = json_string_value(type);
    if (!t) return true;
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return !strcmp(t, "object");
    case JSON_ARRAY:
        return !strcmp(t, "array");
    case JSON_STRING:
        return !strcmp(t, "string");
    case JSON_INTEGER:
        return !strcmp(t, "integer") || !strcmp(t, "number");
    case JSON_REAL:
        return !strcmp(t, "number") ||
               (!strcmp(t, "integer") && json_real_value(v) == floor(json_real_value(v)));
    case JSON_TRUE:
    case JSON_FALSE:
        return !strcmp(t, "boolean");
    case JSON_NULL:
        return !strcmp(t, "null");
    }
    return false;
}

static json_t *deref(js_ctx *c, json_t *s)
{
    for (int i = 0; i < 16 && json_is_object(s); i++) {
        json_t *r = json_object_get(s, "$ref");
        if (!json_is_string(r) || json_object_size(s) != 1) break;
        json_t *t;
        if (dsr1__js_resolve_ref(c, json_string_value(r), &t)) return NULL;
        s = t;
    }
    return s;
}

/* Whether v plausibly is what branch s describes (picks the anyOf branch for ordering). */
static bool fits(js_ctx *c, json_t *s, const json_t *v)
{
    s = deref(c, s);
    if (!s || json_is_false(s)) return false;
    if (!json_is_object(s)) return true;
    json_t *cv = json_object_get(s, "const");
    if (cv && !dsr1__js_equal(cv, v)) return false;
    json_t *en = json_object_get(s, "enum");
    if (json_is_array(en)) {
        bool any = false;
        for (size_t i = 0; i < json_array_size(en) && !any; i++)
            any = dsr1__js_equal(json_array_get(en, i), v);
        if (!any) return false;
    }
    if (!type_fits(json_object_get(s, "type"), v)) return false;
    if (json_is_object(v)) {
        json_t *req = json_object_get(s, "required"), *props = json_object_get(s, "properties");
        for (size_t i = 0; i < json_array_size(req); i++) {
            const char *k = json_string_value(json_array_get(req, i));
            if (k && !json_object_get(v, k)) return false;
        }
        if (json_is_false(json_object_get(s, "additionalProperties"))) {
            const char *k;
            json_t *x;
            json_object_foreach((json_t *)v, k, x)
            {
                if (!json_object_get(props, k)) return false;
            }
        }
    }
    return true;
}

static void add_key(key_order *o, const char *k, json_t *schema)
{
    for (size_t i = 0; i < o->n; i++)
        if (!strcmp(o->keys[i], k)) {
            if (!o->schemas[i]) o->schemas[i] = schema;
            return;
        }
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 16;
        const char **nk = realloc(o->keys, cap * sizeof *nk);
        if (nk) o->keys = nk;
        json_t **ns = realloc(o->schemas, cap * sizeof *ns);
        if (ns) o->schemas = ns;
        if (!nk || !ns) return;
        o->cap = cap;
    }
    o->keys[o->n] = k;
    o->schemas[o->n++] = schema;
}

/* The declared properties in the converter's order: own, $ref target, allOf, anyOf branch. */
static void collect(key_order *o, json_t *s, const json_t *v, int depth, bool props_pass)
{
    if (depth > 32 || !json_is_object(s)) return;
    json_t *r0 = json_object_get(s, "$ref"), *t0;
    if (json_is_string(r0) && o->c->ref_alone) { /* draft-07: siblings of $ref ignored */
        if (!dsr1__js_resolve_ref(o->c, json_string_value(r0), &t0))
            collect(o, t0, v, depth + 1, props_pass);
        return;
    }
    if (props_pass) {
        const char *k;
        json_t *x;
        json_object_foreach(json_object_get(s, "properties"), k, x) add_key(o, k, x);
        json_t *ap = json_object_get(s, "additionalProperties");
        if (ap && !o->additional) o->additional = ap;
        json_t *pp = json_object_get(s, "patternProperties");
        if (json_is_object(pp) && json_object_size(pp) && !o->pattern)
            o->pattern = json_object_iter_value(json_object_iter(pp));
    } else {
        json_t *req = json_object_get(s, "required");
        for (size_t i = 0; i < json_array_size(req); i++) {
            const char *k = json_string_value(json_array_get(req, i));
            if (k) add_key(o, k, NULL);
        }
        /* then, as the converter requires them, each present dependency and its names */
        const char *dk[2] = {"dependentRequired", "dependencies"};
        for (int w = 0; w < 2; w++) {
            const char *k;
            json_t *l;
            json_object_foreach(json_object_get(s, dk[w]), k, l)
            {
                if (!json_is_array(l) || !json_array_size(l) || !json_object_get(v, k)) continue;
                add_key(o, k, NULL);
                for (size_t i = 0; i < json_array_size(l); i++)
                    if (json_is_string(json_array_get(l, i)))
                        add_key(o, json_string_value(json_array_get(l, i)), NULL);
            }
        }
    }
    json_t *r = json_object_get(s, "$ref"), *t;
    if (json_is_string(r) && !dsr1__js_resolve_ref(o->c, json_string_value(r), &t))
        collect(o, t, v, depth + 1, props_pass);
    json_t *all = json_object_get(s, "allOf");
    for (size_t i = 0; i < json_array_size(all); i++)
        collect(o, json_array_get(all, i), v, depth + 1, props_pass);
    const char *alts[2] = {"anyOf", "oneOf"};
    for (int a = 0; a < 2; a++) {
        json_t *any = json_object_get(s, alts[a]);
        for (size_t i = 0; i < json_array_size(any); i++)
            if (fits(o->c, json_array_get(any, i), v)) {
                collect(o, json_array_get(any, i), v, depth + 1, props_pass);
                break;
            }
    }
}

/* The subschema for array index i (prefixItems / draft-07 items array, then items). */
static json_t *item_schema(js_ctx *c, json_t *s, size_t i, int depth)
{
    if (depth > 32 || !json_is_object(s)) return NULL;
    json_t *pre = json_object_get(s, "prefixItems"), *items = json_object_get(s, "items");
    if (json_is_array(items)) {
        pre = items;
        items = json_object_get(s, "additionalItems");
    }
    if (i < json_array_size(pre)) return json_array_get(pre, i);
    if (items) return items;
    json_t *r = json_object_get(s, "$ref"), *t;
    if (json_is_string(r) && !dsr1__js_resolve_ref(c, json_string_value(r), &t)) {
        json_t *x = item_schema(c, t, i, depth + 1);
        if (x) return x;
    }
    json_t *all = json_object_get(s, "allOf");
    for (size_t k = 0; k < json_array_size(all); k++) {
        json_t *x = item_schema(c, json_array_get(all, k), i, depth + 1);
        if (x) return x;
    }
    return NULL;
}

static json_t *enum_match(js_ctx *c, json_t *s, const json_t *v, int depth)
{
    if (depth > 32 || !json_is_object(s)) return NULL;
    json_t *cv = json_object_get(s, "const");
    if (cv && dsr1__js_equal(cv, v)) return cv;
    json_t *en = json_object_get(s, "enum");
    for (size_t i = 0; i < json_array_size(en); i++)
        if (dsr1__js_equal(json_array_get(en, i), v)) return json_array_get(en, i);
    json_t *r = json_object_get(s, "$ref"), *t;
    if (json_is_string(r) && !dsr1__js_resolve_ref(c, json_string_value(r), &t))
        return enum_match(c, t, v, depth + 1);
    const char *lists[3] = {"allOf", "anyOf", "oneOf"};
    for (int l = 0; l < 3; l++) {
        json_t *all = json_object_get(s, lists[l]);
        for (size_t k = 0; k < json_array_size(all); k++) {
            json_t *x = enum_match(c, json_array_get(all, k), v, depth + 1);
            if (x) return x;
        }
    }
    return NULL;
}

static void ser(js_ctx *c, js_buf *b, const json_t *v, json_t *s, int depth)
{
    if (depth > SER_MAX_DEPTH) s = NULL;
    json_t *e = s ? enum_match(c, s, v, 0) : NULL;
    if (e) {
        dsr1__js_dump(b, e);
        return;
    }
    if (json_is_object(v)) {
        key_order o = {.c = c};
        if (s) {
            collect(&o, s, v, 0, true);
            collect(&o, s, v, 0, false);
        }
        bool first = true;
        dsr1_strbuf_add(b, "{", 1);
        for (size_t i = 0; i < o.n; i++) {
            json_t *x = json_object_get(v, o.keys[i]);
            if (!x) continue;
            if (!first) dsr1_strbuf_add(b, ",", 1);
            first = false;
            dump_string(b, o.keys[i], strlen(o.keys[i]));
            dsr1_strbuf_add(b, ":", 1);
            ser(c, b, x, o.schemas[i], depth + 1);
        }
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x)
        {
            bool seen = false;
            for (size_t i = 0; i < o.n && !seen; i++) seen = !strcmp(o.keys[i], k);
            if (seen) continue;
            if (!first) dsr1_strbuf_add(b, ",", 1);
            first = false;
            dump_string(b, k, strlen(k));
            dsr1_strbuf_add(b, ":", 1);
            ser(c, b, x, o.pattern ? o.pattern : o.additional, depth + 1);
        }
        dsr1_strbuf_add(b, "}", 1);
        free(o.keys);
        free(o.schemas);
        return;
    }
    if (json_is_array(v)) {
        dsr1_strbuf_add(b, "[", 1);
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i) dsr1_strbuf_add(b, ",", 1);
            ser(c, b, json_array_get(v, i), s ? item_schema(c, s, i, 0) : NULL, depth + 1);
        }
        dsr1_strbuf_add(b, "]", 1);
        return;
    }
    dsr1__js_dump(b, v);
}

dsr1_status dsr1_json_schema_serialize_instance(const char *schema, size_t schema_len,
                                                const char *instance, size_t instance_len,
                                                char **out, size_t *out_len)
{
    json_t *s = NULL, *v = NULL;
    if (!instance || !out) return dsr1_error(DSR1_ERR_INVALID_ARG, "serialize: NULL argument");
    if (schema && dsr1__js_parse(schema, schema_len, "schema", &s)) return DSR1_ERR_INVALID_ARG;
    if (dsr1__js_parse(instance, instance_len, "instance", &v)) {
        json_decref(s);
        return DSR1_ERR_INVALID_ARG;
    }
    js_ctx c = {.root = s, .ref_alone = s && dsr1__js_ref_alone(s)};
    js_buf b = {0};
    ser(&c, &b, v, s, 0);
    json_decref(s);
    json_decref(v);
    if (b.oom || !b.p) {
        free(b.p);
        return dsr1_error(DSR1_ERR_NOMEM, "serialize: out of memory");
    }
    *out = b.p;
    if (out_len) *out_len = b.n;
    return DSR1_OK;
}
