/* JSON Schema converter: the object keywords beyond properties/required/additionalProperties
 * (patternProperties, minProperties/maxProperties, dependentRequired and the array form of
 * dependencies).
 *
 * patternProperties: a declared name that matches patterns must satisfy its own schema and
 * every matching pattern's (an allOf, merged exactly or refused by json_schema_merge.c);
 * whether it matches is decided by the engine itself (the pattern compiled as it is for
 * `pattern`, run over the name's JSON text), so the grammar and that decision never
 * disagree. Other names are exact in three cases, and refused otherwise: the patterns'
 * schemas accept anything and so does additionalProperties (nothing to enforce); all the
 * patterns have one schema and additionalProperties is false (a name matches some pattern,
 * no declared name may match one); one pattern matches every name (e.g. ".*"), so every
 * undeclared name takes the patterns' one schema. The remaining cases need a name's
 * language complemented (a name matching no pattern takes additionalProperties) or
 * intersected (a name matching two patterns with different schemas), which the grammar
 * text cannot say.
 *
 * dependentRequired / dependencies (array form) {a: [b, c]}: the object is the anyOf of "a
 * absent" and "a, b and c present", per dependency (at most 6: 64 branches). */
#include <stdlib.h>
#include <string.h>

#include "json_schema_internal.h"

/* Whether the JSON text name[0 .. len) (between the quotes) matches the pattern p (its
 * translated /regex/ compiled once, on a one-token vocabulary, and kept in p). */
int dsr1__js_name_matches(js_ctx *c, js_pat *p, const char *name, size_t len, bool *out)
{
    if (!c->rvocab) {
        static const uint8_t a = 'a';
        const uint8_t *bytes[2] = {&a, &a};
        const uint32_t lens[2] = {1, 0};
        if (dsr1_grammar_vocab_create_raw(2, bytes, lens, 1, &c->rvocab))
            return JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
    }
    dsr1_status st = 0;
    if (!p->g) {
        js_buf b = {0};
        dsr1_strbuf_str(&b, "root ::= ");
        dsr1_strbuf_str(&b, p->re);
        if (b.oom) {
            free(b.p);
            return JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
        }
        st = dsr1_grammar_compile_ebnf(c->rvocab, b.p, b.n, c->opts, &p->g);
        free(b.p);
    }
    dsr1_matcher *m = NULL;
    if (!st) st = dsr1_matcher_create(p->g, &m);
    if (st)
        return JS_FAIL(c, st, "'patternProperties' at %s: the pattern '%s': %s", dsr1__js_where(c),
                       p->pattern, dsr1_errmsg());
    *out = !dsr1_matcher_advance_bytes(m, (const uint8_t *)name, len) && dsr1_matcher_accepting(m);
    dsr1_matcher_free(m);
    return 0;
}

void dsr1__js_pats_free(js_pats *ps)
{
    for (size_t i = 0; ps && i < ps->n; i++) dsr1_grammar_free(ps->p[i].g);
}

static bool trivial(json_t *s)
{
    if (json_is_true(s)) return true;
    if (!json_is_object(s)) return false;
    const char *k;
    json_t *v;
    json_object_foreach(s, k, v) if (!dsr1__js_annotation(k)) return false;
    return true;
}

int dsr1__js_pattern_props(js_ctx *c, json_t *s, js_pats *out)
{
    memset(out, 0, sizeof *out);
    json_t *pp = json_object_get(s, "patternProperties");
    if (!pp) return 0;
    if (!json_is_object(pp))
        return JS_FAIL(c, DSR1_ERR_INVALID_ARG, "'patternProperties' at %s must be an object",
                       dsr1__js_where(c));
    size_t n = json_object_size(pp);
    if (n > 64)
        return JS_FAIL(c, DSR1_ERR_RANGE, "'patternProperties' at %s has more than 64 patterns",
                       dsr1__js_where(c));
    out->n = n;
    out->all_trivial = out->same = true;
    const char *k;
    json_t *v;
    size_t i = 0;
    json_object_foreach(pp, k, v)
    {
        size_t old = dsr1__js_push(c, "patternProperties");
        dsr1__js_push(c, k);
        js_pat *p = &out->p[i++];
        p->pattern = k;
        p->schema = v;
        int rc = dsr1__js_pattern(c, k, strlen(k), "patternProperties", &p->re);
        if (rc) return rc;
        /* universal: no anchor at the end and no escape or group construct (so nothing can
         * depend on what follows), and it matches the empty name: then it matches every name
         * (at its start) */
        bool m = false;
        if (!strchr(k, '$') && !strchr(k, '\\') && !strstr(k, "(?")) {
            if ((rc = dsr1__js_name_matches(c, p, "", 0, &m))) return rc;
        }
        p->universal = m;
        out->any_universal |= m;
        out->all_trivial &= trivial(v);
        if (i > 1 && !dsr1__js_equal(v, out->p[0].schema)) out->same = false;
        dsr1__js_pop(c, old);
    }
    return 0;
}

int dsr1__js_pattern_value(js_ctx *c, js_pats *ps, const char *name, json_t *base, json_t **out,
                           bool *matched)
{
    *out = base;
    *matched = false;
    if (!ps->n) return 0;
    js_buf b = {0};
    json_t *ks = json_string(name);
    if (ks) dsr1__js_dump(&b, ks);
    json_decref(ks);
    if (!ks || b.oom) {
        free(b.p);
        return JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
    }
    json_t *all = NULL;
    int rc = 0;
    for (size_t i = 0; i < ps->n && !rc; i++) {
        bool m;
        if ((rc = dsr1__js_name_matches(c, &ps->p[i], b.p + 1, b.n - 2, &m)) || !m) continue;
        *matched = true;
        if (trivial(ps->p[i].schema)) continue;
        if (!all) {
            all = json_array();
            if (!all || (base && json_array_append(all, base)))
                rc = JS_FAIL(c, DSR1_ERR_NOMEM, "out of memory");
        }
        if (!rc && json_array_append(all, ps->p[i].schema))
            rc = JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
    }
    free(b.p);
    if (rc || !all) {
        json_decref(all);
        return rc;
    }
    if (json_array_size(all) == 1) {
        *out = json_array_get(all, 0);
        json_decref(all);
        return 0;
    }
    json_t *o = json_object();
    if (!o || json_object_set_new(o, "allOf", all) || json_array_append_new(c->keep, o))
        return JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
    *out = o;
    return 0;
}

/* ---- dependentRequired / dependencies ---- */

#define MAX_DEPS 6

int dsr1__js_dependencies(js_ctx *c, json_t *s, json_t **out)
{
    *out = NULL;
    json_t *d[2] = {json_object_get(s, "dependentRequired"), json_object_get(s, "dependencies")};
    const char *dk[2] = {"dependentRequired", "dependencies"};
    const char *names[MAX_DEPS];
    json_t *lists[MAX_DEPS];
    int n = 0;
    for (int w = 0; w < 2; w++) {
        if (!d[w]) continue;
        if (!json_is_object(d[w]))
            return JS_FAIL(c, DSR1_ERR_INVALID_ARG, "'%s' at %s must be an object", dk[w],
                           dsr1__js_where(c));
        const char *k;
        json_t *v;
        json_object_foreach(d[w], k, v)
        {
            if (!json_is_array(v)) {
                dsr1__js_push(c, dk[w]);
                dsr1__js_push(c, k);
                return JS_FAIL(c, DSR1_ERR_INVALID_ARG,
                               "unsupported keyword '%s' at %s (the schema form: only lists of "
                               "names are supported)",
                               dk[w], dsr1__js_where(c));
            }
            for (size_t i = 0; i < json_array_size(v); i++)
                if (!json_is_string(json_array_get(v, i))) {
                    dsr1__js_push(c, dk[w]);
                    dsr1__js_push(c, k);
                    return JS_FAIL(c, DSR1_ERR_INVALID_ARG, "'%s' at %s must list names", dk[w],
                                   dsr1__js_where(c));
                }
            if (!json_array_size(v)) continue;
            if (n == MAX_DEPS)
                return JS_FAIL(c, DSR1_ERR_RANGE,
                               "'%s' at %s: more than %d dependencies (one anyOf branch per "
                               "combination)",
                               dk[w], dsr1__js_where(c), MAX_DEPS);
            names[n] = k;
            lists[n++] = v;
        }
    }
    /* shallow copies of the schema without the keywords (subschemas shared, so $ref
     * targets stay the same nodes), one per combination of presence */
    json_t *base = json_copy(s);
    json_t *any = json_array();
    if (!base || !any) goto oom;
    json_object_del(base, "dependentRequired");
    json_object_del(base, "dependencies");
    json_object_del(base, "$id"); /* a copy is no new base URI */
    json_object_del(base, "id");
    for (int mask = 0; mask < (1 << n); mask++) {
        json_t *b = json_copy(base);
        json_t *op = json_object_get(base, "properties"), *orq = json_object_get(base, "required");
        json_t *props = op ? json_copy(op) : json_object(),
               *rq = orq ? json_copy(orq) : json_array();
        bool dead = false;
        if (!b || !props || !rq || json_object_set_new(b, "properties", props) ||
            json_object_set_new(b, "required", rq)) {
            json_decref(b);
            goto oom;
        }
        for (int i = 0; i < n; i++) {
            if (mask >> i & 1) { /* present: it and its dependencies required */
                json_array_append_new(rq, json_string(names[i]));
                for (size_t j = 0; j < json_array_size(lists[i]); j++)
                    json_array_append(rq, json_array_get(lists[i], j));
            } else { /* absent: never written */
                for (size_t j = 0; j < json_array_size(rq); j++)
                    dead |= json_is_string(json_array_get(rq, j)) &&
                            !strcmp(json_string_value(json_array_get(rq, j)), names[i]);
                json_object_set_new(props, names[i], json_false());
            }
        }
        if (dead) {
            json_decref(b);
        } else if (json_array_append_new(any, b)) {
            goto oom;
        }
    }
    json_decref(base);
    if (!json_array_size(any)) {
        json_decref(any);
        *out = json_false();
        return 0;
    }
    json_t *o = json_object();
    if (!o || json_object_set_new(o, "anyOf", any) || json_array_append_new(c->keep, o)) goto oom;
    *out = o;
    return 0;
oom:
    json_decref(base);
    json_decref(any);
    return JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
}
