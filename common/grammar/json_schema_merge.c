/* JSON Schema converter: local $ref resolution and allOf merging.
 *
 * A grammar cannot intersect two languages, so `allOf` (and keywords beside a `$ref`, an
 * `anyOf` or a `oneOf`, which mean the same thing) is turned into one schema: type sets are
 * intersected, properties merged (a name declared on one side only must also satisfy the
 * other side's additionalProperties, exactly as JSON Schema says), required lists joined,
 * bounds tightened, enums intersected, and anyOf distributed over the rest (A and (B or C) =
 * (A and B) or (A and C)). Subschemas that meet under one name are merged lazily, as a new
 * {"allOf": [a, b]}, when the generator reaches them, so recursive schemas stay finite. What
 * has no single-schema form (two different patterns, two tuple forms) is an error. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "json_schema_internal.h"

#define MERGE_MAX_DEPTH 32

/* ---- $ref ---- */

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

bool dsr1__js_ref_alone(const json_t *root)
{
    const char *v = json_string_value(json_object_get(root, "$schema"));
    return v && (strstr(v, "draft-04") || strstr(v, "draft-06") || strstr(v, "draft-07"));
}

int dsr1__js_resolve_ref(js_ctx *c, const char *ref, json_t **out)
{
    if (ref[0] != '#' || (ref[1] && ref[1] != '/'))
        return JS_FAIL(c, DSR1_ERR_INVALID_ARG,
                       "unsupported $ref '%.200s' at %s (only local JSON pointers: \"#\", "
                       "\"#/$defs/name\", \"#/definitions/name\", \"#/...\")",
                       ref, dsr1__js_where(c));
    if (c->in_id)
        return JS_FAIL(c, DSR1_ERR_INVALID_ARG,
                       "$ref '%.200s' at %s is inside a subschema with its own $id (a new base "
                       "URI): not supported",
                       ref, dsr1__js_where(c));
    json_t *t = c->root;
    const char *p = ref + 1;
    char seg[512];
    while (*p == '/') {
        p++;
        size_t n = 0;
        while (*p && *p != '/') {
            char ch = *p++;
            if (ch == '%' && hexval(p[0]) >= 0 && hexval(p[1]) >= 0) {
                ch = (char)(hexval(p[0]) * 16 + hexval(p[1]));
                p += 2;
            } else if (ch == '~' && (*p == '0' || *p == '1')) {
                ch = *p++ == '0' ? '~' : '/';
            }
            if (n + 1 >= sizeof seg)
                return JS_FAIL(c, DSR1_ERR_RANGE, "$ref at %s: a segment is too long",
                               dsr1__js_where(c));
            seg[n++] = ch;
        }
        seg[n] = '\0';
        json_t *next = NULL;
        if (json_is_object(t)) {
            next = json_object_get(t, seg);
        } else if (json_is_array(t) && n && n < 10 && strspn(seg, "0123456789") == n &&
                   (seg[0] != '0' || n == 1)) {
            next = json_array_get(t, (size_t)atol(seg));
        }
        if (!next)
            return JS_FAIL(c, DSR1_ERR_INVALID_ARG, "$ref '%.200s' at %s points at nothing", ref,
                           dsr1__js_where(c));
        json_t *id = json_object_get(next, "$id");
        if (json_is_object(next) && json_is_string(id) && json_string_value(id)[0] != '#')
            return JS_FAIL(c, DSR1_ERR_INVALID_ARG,
                           "$ref '%.200s' at %s enters a subschema with its own $id (a new base "
                           "URI): not supported",
                           ref, dsr1__js_where(c));
        t = next;
    }
    if (*p)
        return JS_FAIL(c, DSR1_ERR_INVALID_ARG, "$ref '%.200s' at %s is not a JSON pointer", ref,
                       dsr1__js_where(c));
    *out = t;
    return 0;
}

/* ---- merging ---- */

static json_t *keep(js_ctx *c, json_t *x)
{
    if (!x) {
        JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
        return NULL;
    }
    if (json_array_append_new(c->keep, x)) {
        JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
        return NULL;
    }
    return x;
}

static bool is_combinator(const char *k)
{
    return !strcmp(k, "$ref") || !strcmp(k, "allOf") || !strcmp(k, "anyOf") || !strcmp(k, "oneOf");
}

/* The schema that both a and b describe, lazily: {"allOf": [a, b]}. */
static json_t *both(js_ctx *c, json_t *a, json_t *b)
{
    if (!a || json_is_true(a)) return b;
    if (!b || json_is_true(b)) return a;
    if (json_is_false(a) || json_is_false(b)) return json_false();
    json_t *o = keep(c, json_object());
    json_t *l = json_array();
    if (!o || !l || json_array_append(l, a) || json_array_append(l, b) ||
        json_object_set_new(o, "allOf", l)) {
        JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
        return NULL;
    }
    return o;
}

static int type_set(json_t *t)
{
    static const char *names[] = {"null",   "boolean", "object", "array",
                                  "string", "number",  "integer"};
    if (!t) return 127;
    int m = 0;
    size_t n = json_is_array(t) ? json_array_size(t) : 1;
    for (size_t i = 0; i < n; i++) {
        const char *s = json_string_value(json_is_array(t) ? json_array_get(t, i) : t);
        for (int j = 0; s && j < 7; j++)
            if (!strcmp(s, names[j])) m |= 1 << j;
    }
    if (m & 32) m |= 64; /* number includes integer */
    return m;
}

static json_t *type_json(int m)
{
    static const char *names[] = {"null",   "boolean", "object", "array",
                                  "string", "number",  "integer"};
    if (m & 32) m &= ~64;
    json_t *a = json_array();
    for (int j = 0; a && j < 7; j++)
        if (m & (1 << j)) json_array_append_new(a, json_string(names[j]));
    return a;
}

static int set(js_ctx *c, json_t *o, const char *k, json_t *v)
{
    if (!v || json_object_set(o, k, v))
        return c->err ? c->err : JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
    return 0;
}

static int set_new(js_ctx *c, json_t *o, const char *k, json_t *v)
{
    if (!v || json_object_set_new(o, k, v))
        return JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
    return 0;
}

static json_t *default_ap(js_ctx *c)
{
    return c->opts->strict_objects ? json_false() : json_true();
}

static int merge_props(js_ctx *c, json_t *r, json_t *a, json_t *b)
{
    json_t *pa = json_object_get(a, "properties"), *pb = json_object_get(b, "properties");
    json_t *aa = json_object_get(a, "additionalProperties"),
           *ab = json_object_get(b, "additionalProperties");
    if (!pa && !pb && !aa && !ab) return 0;
    if (!aa) aa = default_ap(c);
    if (!ab) ab = default_ap(c);
    json_t *p = json_object();
    if (set_new(c, r, "properties", p)) return c->err;
    const char *k;
    json_t *v;
    json_object_foreach(pa, k, v)
    {
        json_t *w = json_object_get(pb, k);
        if (set(c, p, k, both(c, v, w ? w : ab))) return c->err;
    }
    json_object_foreach(pb, k, v)
    {
        if (json_object_get(pa, k)) continue;
        if (set(c, p, k, both(c, aa, v))) return c->err;
    }
    return set(c, r, "additionalProperties", both(c, aa, ab));
}

static int merge_items(js_ctx *c, json_t *r, json_t *a, json_t *b)
{
    json_t *pa = json_object_get(a, "prefixItems"), *pb = json_object_get(b, "prefixItems");
    json_t *ia = json_object_get(a, "items"), *ib = json_object_get(b, "items");
    if (json_is_array(ia) || json_is_array(ib) || json_object_get(a, "additionalItems") ||
        json_object_get(b, "additionalItems"))
        return JS_FAIL(c, DSR1_ERR_INVALID_ARG,
                       "allOf at %s: draft-07 tuple 'items' cannot be merged (use prefixItems)",
                       dsr1__js_where(c));
    if (pa && pb)
        return JS_FAIL(c, DSR1_ERR_INVALID_ARG, "allOf at %s: two 'prefixItems' cannot be merged",
                       dsr1__js_where(c));
    json_t *pre = pa ? pa : pb, *other = pa ? ib : ia;
    if (pre && other && !json_is_true(other)) {
        json_t *np = json_array();
        if (set_new(c, r, "prefixItems", np)) return c->err;
        for (size_t i = 0; i < json_array_size(pre); i++) {
            json_t *x = both(c, json_array_get(pre, i), other);
            if (!x || json_array_append(np, x))
                return c->err ? c->err : JS_FAIL(c, DSR1_ERR_NOMEM, "out of memory");
        }
    } else if (pre) {
        if (set(c, r, "prefixItems", pre)) return c->err;
    }
    if (ia && ib) return set(c, r, "items", both(c, ia, ib));
    return 0;
}

static json_t *flatten(js_ctx *c, json_t *s, int depth);

static json_t *merge2(js_ctx *c, json_t *a, json_t *b, int depth)
{
    if (c->merges-- <= 0) {
        JS_FAIL(c, DSR1_ERR_RANGE, "allOf at %s: more than %d merges (schema too complex)",
                dsr1__js_where(c), JS_MAX_MERGES);
        return NULL;
    }
    if (json_is_false(a) || json_is_false(b)) return json_false();
    if (json_is_true(a)) return b;
    if (json_is_true(b)) return a;
    json_t *any = json_object_get(a, "anyOf"), *rest = b;
    if (!any) any = json_object_get(a, "oneOf"); /* oneOf is taken as anyOf */
    if (!any) {
        any = json_object_get(b, "anyOf");
        if (!any) any = json_object_get(b, "oneOf");
        rest = a;
    }
    if (any) { /* distribute */
        json_t *l = json_array(), *o = keep(c, json_object());
        if (!l || !o || set_new(c, o, "anyOf", l)) return NULL;
        for (size_t i = 0; i < json_array_size(any); i++) {
            size_t old = dsr1__js_push_index(c, i);
            json_t *f = flatten(c, json_array_get(any, i), depth + 1);
            json_t *m = f ? merge2(c, f, rest, depth + 1) : NULL;
            if (!m) return NULL;
            dsr1__js_pop(c, old);
            if (!json_is_false(m) && json_array_append(l, m)) {
                JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
                return NULL;
            }
        }
        return json_array_size(l) ? o : json_false();
    }
    json_t *r = keep(c, json_object());
    if (!r) return NULL;
    const char *k;
    json_t *v;
    json_object_foreach(a, k, v) if (set(c, r, k, v)) return NULL;
    /* additionalProperties does not apply to names that match a pattern, so merge_props
     * would be wrong beside one */
    json_t *ppa = json_object_get(a, "patternProperties"),
           *ppb = json_object_get(b, "patternProperties");
    if ((ppa || ppb) &&
        !(ppa && ppb && json_equal(ppa, ppb) && !json_object_get(a, "properties") &&
          !json_object_get(b, "properties")) &&
        (json_object_get(ppa ? b : a, "properties") ||
         json_object_get(ppa ? b : a, "additionalProperties") || (ppa && ppb))) {
        JS_FAIL(c, DSR1_ERR_INVALID_ARG,
                "allOf at %s: 'patternProperties' beside another subschema's properties cannot "
                "be merged",
                dsr1__js_where(c));
        return NULL;
    }
    if (merge_props(c, r, a, b) || merge_items(c, r, a, b)) return NULL;
    json_object_foreach(b, k, v)
    {
        json_t *x = json_object_get(a, k);
        if (!x) {
            if (!json_object_get(r, k) && set(c, r, k, v)) return NULL;
            continue;
        }
        if (!strcmp(k, "properties") || !strcmp(k, "additionalProperties") ||
            !strcmp(k, "prefixItems") || !strcmp(k, "items"))
            continue; /* done above */
        if (!strcmp(k, "type")) {
            int m = type_set(x) & type_set(v);
            if (!m) return json_false();
            if (set_new(c, r, k, type_json(m))) return NULL;
        } else if (!strcmp(k, "required")) {
            json_t *l = json_deep_copy(x);
            if (set_new(c, r, k, l)) return NULL;
            for (size_t i = 0; i < json_array_size(v); i++) {
                bool dup = false;
                for (size_t j = 0; j < json_array_size(x) && !dup; j++)
                    dup = json_equal(json_array_get(v, i), json_array_get(x, j));
                if (!dup) json_array_append(l, json_array_get(v, i));
            }
        } else if (!strcmp(k, "minItems") || !strcmp(k, "minLength") || !strcmp(k, "minimum") ||
                   !strcmp(k, "maxItems") || !strcmp(k, "maxLength") || !strcmp(k, "maximum") ||
                   !strcmp(k, "exclusiveMinimum") || !strcmp(k, "exclusiveMaximum") ||
                   !strcmp(k, "minProperties") || !strcmp(k, "maxProperties")) {
            if (!json_is_number(x) || !json_is_number(v)) {
                JS_FAIL(c, DSR1_ERR_INVALID_ARG, "allOf at %s: '%s' values cannot be merged",
                        dsr1__js_where(c), k);
                return NULL;
            }
            bool upper = strstr(k, "max") || strstr(k, "Max");
            double dx = json_number_value(x), dv = json_number_value(v);
            if (set(c, r, k, (upper ? dv < dx : dv > dx) ? v : x)) return NULL;
        } else if (!strcmp(k, "enum")) {
            json_t *l = json_array();
            if (set_new(c, r, k, l)) return NULL;
            for (size_t i = 0; i < json_array_size(x); i++)
                for (size_t j = 0; j < json_array_size(v); j++)
                    if (dsr1__js_equal(json_array_get(x, i), json_array_get(v, j))) {
                        json_array_append(l, json_array_get(x, i));
                        break;
                    }
            if (!json_array_size(l)) return json_false();
        } else if (!strcmp(k, "const")) {
            if (!dsr1__js_equal(x, v)) return json_false();
        } else if (!strcmp(k, "nullable")) {
            if (set(c, r, k, json_is_true(x) && json_is_true(v) ? x : json_false())) return NULL;
        } else if (!strcmp(k, "pattern") || !strcmp(k, "format") || !strcmp(k, "uniqueItems") ||
                   !strcmp(k, "patternProperties") || !strcmp(k, "dependentRequired") ||
                   !strcmp(k, "dependencies")) {
            if (!json_equal(x, v)) {
                JS_FAIL(c, DSR1_ERR_INVALID_ARG,
                        "allOf at %s: two different '%s' values cannot be merged",
                        dsr1__js_where(c), k);
                return NULL;
            }
        } /* annotations and unknown keys: the first wins */
    }
    return r;
}

/* s without $ref/allOf/anyOf/oneOf at its top, or a pure {"anyOf": [...]} (borrowed). */
static json_t *flatten(js_ctx *c, json_t *s, int depth)
{
    if (!json_is_object(s)) {
        if (json_is_boolean(s)) return s;
        JS_FAIL(c, DSR1_ERR_INVALID_ARG, "the schema at %s must be an object or a boolean",
                dsr1__js_where(c));
        return NULL;
    }
    if (depth > MERGE_MAX_DEPTH) {
        JS_FAIL(c, DSR1_ERR_RANGE,
                "allOf/$ref at %s: nested deeper than %d (a $ref cycle through allOf?)",
                dsr1__js_where(c), MERGE_MAX_DEPTH);
        return NULL;
    }
    if (dsr1__js_check_keywords(c, s)) return NULL;
    json_t *ref = json_object_get(s, "$ref"), *all = json_object_get(s, "allOf"),
           *any = json_object_get(s, "anyOf"), *one = json_object_get(s, "oneOf");
    if (json_is_string(ref) && c->ref_alone) { /* draft-07 and before: siblings ignored */
        json_t *t;
        if (dsr1__js_resolve_ref(c, json_string_value(ref), &t)) return NULL;
        return flatten(c, t, depth + 1);
    }
    if (!ref && !all && !((any || one) && json_object_size(s) > 1)) return s;
    if ((all && (!json_is_array(all) || !json_array_size(all))) ||
        (any && (!json_is_array(any) || !json_array_size(any))) ||
        (one && (!json_is_array(one) || !json_array_size(one))) || (ref && !json_is_string(ref))) {
        JS_FAIL(c, DSR1_ERR_INVALID_ARG, "'%s' at %s has the wrong type",
                ref && !json_is_string(ref)  ? "$ref"
                : all && !json_is_array(all) ? "allOf"
                : any                        ? "anyOf"
                                             : "oneOf",
                dsr1__js_where(c));
        return NULL;
    }
    json_t *acc = keep(c, json_object());
    if (!acc) return NULL;
    const char *k;
    json_t *v;
    json_object_foreach(s, k, v) if (!is_combinator(k) && set(c, acc, k, v)) return NULL;
    json_t *res = acc;
    if (ref) {
        json_t *t;
        if (dsr1__js_resolve_ref(c, json_string_value(ref), &t)) return NULL;
        /* inside the target, paths are its pointer (as for every $ref target) */
        char saved[sizeof c->path];
        size_t saved_len = c->path_len;
        memcpy(saved, c->path, saved_len + 1);
        const char *ptr = json_string_value(ref) + 1;
        size_t n = strlen(ptr) < sizeof c->path - 8 ? strlen(ptr) : sizeof c->path - 8;
        memcpy(c->path, ptr, n);
        c->path[n] = '\0';
        c->path_len = n;
        json_t *f = flatten(c, t, depth + 1);
        if (!f || !(res = merge2(c, res, f, depth + 1))) return NULL;
        memcpy(c->path, saved, saved_len + 1);
        c->path_len = saved_len;
    }
    for (size_t i = 0; i < json_array_size(all); i++) {
        size_t old = dsr1__js_push(c, "allOf");
        dsr1__js_push_index(c, i);
        json_t *f = flatten(c, json_array_get(all, i), depth + 1);
        if (!f || !(res = merge2(c, res, f, depth + 1))) return NULL;
        dsr1__js_pop(c, old);
    }
    json_t *alts[2] = {any, one};
    for (int a = 0; a < 2; a++) {
        if (!alts[a]) continue;
        size_t old = dsr1__js_push(c, a ? "oneOf" : "anyOf");
        json_t *o = keep(c, json_object());
        if (!o || set(c, o, "anyOf", alts[a]) || !(res = merge2(c, res, o, depth + 1))) return NULL;
        dsr1__js_pop(c, old);
    }
    return res;
}

int dsr1__js_merge_allof(js_ctx *c, json_t *s, json_t **out)
{
    json_t *f = flatten(c, s, 0);
    if (!f) return c->err ? c->err : JS_FAIL(c, DSR1_ERR_INTERNAL, "allOf: merge failed");
    *out = f;
    return 0;
}
