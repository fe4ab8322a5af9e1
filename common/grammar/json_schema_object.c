/* JSON Schema converter: objects and arrays.
 *
 * Objects: members in the order of `properties`, required ones mandatory and optional ones
 * optional but still in order, then additional members (additionalProperties) whose names
 * exclude the declared ones. The comma problem (a member writes a comma only after another
 * member) is solved with one alternative per possible first member and a chain of "rest"
 * rules, so the text stays linear in the number of properties; with minProperties or
 * maxProperties the rest rules also carry the count of members written (counted_members).
 * patternProperties (json_schema_props.c) give the declared names' values more schemas and
 * may replace additionalProperties. Arrays: prefixItems (or draft-07's array items), then
 * items, within minItems..maxItems. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_schema_internal.h"

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
    dsr1_strbuf_str(&b, "[^\"\\\\\\x00-\\x1f");
    bool ctl_child = false;
    for (int i = 0; i < n; i++) {
        uint32_t cp = cps[i];
        if (cp < 0x20 || cp == '"' || cp == '\\') {
            ctl_child = true;
            continue;
        }
        if (cp < 0x80 && strchr("\\]^-[", (int)cp)) dsr1_strbuf_add(&b, "\\", 1);
        js_x *u = key_unit(c, cp);
        if (!u) break;
        dsr1_strbuf_add(&b, u->text, u->len);
    }
    dsr1_strbuf_str(&b, "]");
    js_x *alts[40];
    int m = 0;
    if (!b.oom) alts[m++] = RAW(b.p);
    free(b.p);
    if (!ctl_child) {
        alts[m++] = dsr1__js_common(c, JS_R_KESC);
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
    if (depth > 1024) { /* the name trie nests one level per character */
        JS_FAIL(c, DSR1_ERR_RANGE, "object at %s: a property name is longer than 1024 characters",
                dsr1__js_where(c));
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
    alts[na++] = SEQ(key_other(c, cps, (int)groups),
                     dsr1__js_rep(c, dsr1__js_common(c, JS_R_KCHAR), 0, JS_INF));
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
    if (!n) return dsr1__js_common(c, JS_R_STRING);
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

/* The members of an object with minProperties/maxProperties: the same order as without
 * them (declared members in order, then additional ones), with the count of members
 * written so far in the rules' names: rest(i, k) writes members i.. after k members
 * (saturated at the largest bound that matters), and the additional tail its count
 * between what minProperties still needs and what maxProperties still allows. */
#define MAX_COUNTED 4096 /* rest rules */

static js_x *counted_members(js_ctx *c, const char **keys, js_x **vals, const bool *reqd, size_t n,
                             js_x *akey, js_x *add, long long minp, long long maxp)
{
    long long cap = maxp >= 0 ? maxp : minp; /* counts past cap behave alike */
    if ((long long)(n + 1) * (cap + 1) > MAX_COUNTED) {
        JS_FAIL(c, DSR1_ERR_RANGE,
                "'%s' at %s: %zu properties x a count up to %lld exceed %d grammar rules",
                maxp >= 0 ? "maxProperties" : "minProperties", dsr1__js_where(c), n, cap,
                MAX_COUNTED);
        return NULL;
    }
    if (dsr1__js_check_repeat(c, "minProperties", minp)) return NULL;
    size_t w = (size_t)cap + 1;
    js_x **rest = calloc((n + 1) * w, sizeof *rest), *out = NULL;
    js_x **alts = calloc(n + 2, sizeof *alts);
    if (!rest || !alts) {
        JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
        goto done;
    }
    js_x *comma = SEQ(dsr1__js_ws(c), LIT(","), dsr1__js_ws(c)),
         *colon = SEQ(dsr1__js_ws(c), LIT(":"), dsr1__js_ws(c));
    js_x *addkv = dsr1__js_share(c, SEQ(akey, colon, add), "additional-member");
    if (!addkv) goto done;
    js_x **kv = calloc(n + 1, sizeof *kv);
    if (!kv) {
        JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        js_buf kb = {0};
        json_t *ks = json_string(keys[i]);
        if (ks) dsr1__js_dump(&kb, ks);
        json_decref(ks);
        js_x *key = kb.oom || !ks ? NULL : dsr1__js_lit(c, kb.p, kb.n);
        free(kb.p);
        if (!key || !(kv[i] = dsr1__js_share(c, SEQ(key, colon, vals[i]), keys[i]))) break;
    }
    for (size_t k = 0; k < w && !c->err; k++) { /* the additional tail after k members */
        long long lo = minp > (long long)k ? minp - (long long)k : 0;
        long long hi = maxp >= 0 ? maxp - (long long)k : JS_INF;
        if (maxp < 0 && (long long)k < cap) hi = JS_INF;
        js_x *t = dsr1__js_rep(c, SEQ(comma, addkv), (int)lo, (int)hi);
        int r;
        if (!t || dsr1__js_new_rule(c, "tail", &r)) break;
        c->rules[r].body = t;
        rest[n * w + k] = dsr1__js_rule_ref(c, r);
    }
    for (size_t i = n; i-- > 0 && !c->err;)
        for (size_t k = 0; k < w; k++) {
            size_t k1 = k + 1 < w ? k + 1 : w - 1;
            bool over = maxp >= 0 && (long long)k >= maxp; /* no room for member i */
            js_x *with =
                over ? dsr1__js_node(c, X_NOTHING) : SEQ(comma, kv[i], rest[(i + 1) * w + k1]);
            js_x *body =
                reqd[i] ? with : dsr1__js_alt(c, 2, (js_x *[]){with, rest[(i + 1) * w + k]});
            int r;
            if (!body || dsr1__js_new_rule(c, "rest", &r)) break;
            c->rules[r].body = body;
            rest[i * w + k] = dsr1__js_rule_ref(c, r);
        }
    if (c->err) goto done_kv;
    /* the first member: declared member i (those before it absent, so optional), or an
     * additional one when none is required; or none at all */
    size_t na = 0, i = 0;
    size_t k1 = 1 < w ? 1 : 0;
    for (; i < n; i++) {
        if (maxp != 0) alts[na++] = SEQ(kv[i], rest[(i + 1) * w + k1]);
        if (reqd[i]) break;
    }
    if (i == n) {
        if (maxp != 0) {
            long long lo = minp > 1 ? minp - 1 : 0;
            alts[na++] = SEQ(addkv, dsr1__js_rep(c, SEQ(comma, addkv), (int)lo,
                                                 maxp >= 0 ? (int)maxp - 1 : JS_INF));
        }
        if (minp == 0) alts[na++] = dsr1__js_node(c, X_EMPTY);
    }
    js_x *body = na ? dsr1__js_alt(c, (int)na, alts) : dsr1__js_node(c, X_NOTHING);
    out = SEQ(LIT("{"), dsr1__js_ws(c), body, dsr1__js_ws(c), LIT("}"));
done_kv:
    free(kv);
done:
    free(rest);
    free(alts);
    if (!out && !c->err) dsr1__js_too_complex(c);
    return out;
}

js_x *dsr1__js_gen_object(js_ctx *c, json_t *s)
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
    long long minp = 0, maxp = -1;
    if (dsr1__js_get_count(c, s, "minProperties", &minp) ||
        dsr1__js_get_count(c, s, "maxProperties", &maxp))
        return NULL;
    if (maxp >= 0 && minp > maxp) return dsr1__js_node(c, X_NOTHING);
    js_pats *ps = calloc(1, sizeof *ps);
    if (!ps) {
        JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
        return NULL;
    }
    if (dsr1__js_pattern_props(c, s, ps)) {
        dsr1__js_pats_free(ps);
        free(ps);
        return NULL;
    }
    size_t np = json_object_size(props), nr = json_array_size(req), n = 0;
    if (!np && !nr && !ap && !c->opts->strict_objects && !ps->n && !minp && maxp < 0) {
        dsr1__js_pats_free(ps);
        free(ps);
        return dsr1__js_common(c, JS_R_OBJECT);
    }
    if (np + nr > 100000) {
        JS_FAIL(c, DSR1_ERR_RANGE, "object at %s declares too many properties", dsr1__js_where(c));
        dsr1__js_pats_free(ps);
        free(ps);
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
    bool ap_false = ap ? json_is_false(ap) : c->opts->strict_objects;
    bool ap_any = ap ? json_is_true(ap) || (json_is_object(ap) && !json_object_size(ap))
                     : !c->opts->strict_objects;
    /* the members that are not declared: additionalProperties, or the patterns' one schema
     * (json_schema_props.c says when that is exact) */
    int pmode = 0; /* 0: additionalProperties; 1: names matching a pattern; 2: every name */
    if (ps->n && !(ps->all_trivial && ap_any)) {
        if (!ps->same || !(ap_false || ps->any_universal)) {
            JS_FAIL(c, DSR1_ERR_INVALID_ARG,
                    "unsupported keyword 'patternProperties' at %s: %s cannot be enforced exactly",
                    dsr1__js_where(c),
                    !ps->same ? "patterns with different schemas (a name matching several must "
                                "satisfy all of them)"
                              : "a pattern beside additionalProperties other than false (a name "
                                "matching no pattern takes additionalProperties)");
            goto done;
        }
        pmode = ps->any_universal ? 2 : 1;
    }
    js_x *add;
    if (pmode) {
        size_t old = dsr1__js_push(c, "patternProperties");
        add = dsr1__js_gen_at(c, ps->p[0].schema, ps->p[0].pattern, NULL, -1);
        if (add) dsr1__js_pop(c, old);
    } else {
        add = ap ? dsr1__js_gen_at(c, ap, "additionalProperties", NULL, -1)
                 : (c->opts->strict_objects ? dsr1__js_node(c, X_NOTHING)
                                            : dsr1__js_common(c, JS_R_VALUE));
    }
    if (!(add = dsr1__js_share(c, add, "additional"))) goto done;
    const char *k;
    json_t *v;
    json_object_foreach(props, k, v)
    {
        keys[n] = k;
        json_t *vs;
        bool pm;
        if (dsr1__js_pattern_value(c, ps, k, v, &vs, &pm)) goto done;
        if (!(vals[n] = dsr1__js_gen_at(c, vs, "properties", k, -1))) goto done;
        if (n >= 1 && !(vals[n] = dsr1__js_share(c, vals[n], k)))
            goto done; /* written twice below */
        n++;
    }
    for (size_t i = 0; i < nr; i++) {
        const char *r = json_string_value(json_array_get(req, i));
        size_t j = 0;
        while (j < n && strcmp(keys[j], r)) j++;
        if (j == n) {
            /* a required name not declared: the matching patterns' schemas, else
             * additionalProperties */
            json_t *vs;
            bool pm;
            keys[n] = r;
            if (dsr1__js_pattern_value(c, ps, r, NULL, &vs, &pm)) goto done;
            if (vs) {
                if (!(vals[n] = dsr1__js_gen_at(c, vs, "required", NULL, (long)i))) goto done;
            } else if (pm) { /* matching patterns whose schemas accept anything */
                vals[n] = dsr1__js_common(c, JS_R_VALUE);
            } else { /* additionalProperties */
                vals[n] = pmode ? (ap && !ap_false ? NULL : dsr1__js_node(c, X_NOTHING)) : add;
                if (!vals[n] &&
                    !(vals[n] = dsr1__js_gen_at(c, ap, "additionalProperties", NULL, -1)))
                    goto done;
            }
            n++;
        }
        reqd[j] = true;
    }
    js_x *comma = SEQ(dsr1__js_ws(c), LIT(","), dsr1__js_ws(c)),
         *colon = SEQ(dsr1__js_ws(c), LIT(":"), dsr1__js_ws(c));
    /* the names of additional members exclude the declared ones (a repeated name would
     * escape its schema); a rule, as the name appears twice */
    js_x *akey = NULL;
    if (pmode == 1) { /* a name matching a pattern; no declared name may match one */
        js_x **pk = calloc(ps->n, sizeof *pk);
        if (!pk) {
            JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
            goto done;
        }
        for (size_t i = 0; i < ps->n; i++) {
            for (size_t j = 0; j < n; j++) {
                bool m = false;
                js_buf kb = {0};
                json_t *ks = json_string(keys[j]);
                if (ks) dsr1__js_dump(&kb, ks);
                json_decref(ks);
                int rc = ks && !kb.oom ? dsr1__js_name_matches(c, &ps->p[i], kb.p + 1, kb.n - 2, &m)
                                       : JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
                free(kb.p);
                if (rc) break;
                if (m) {
                    JS_FAIL(c, DSR1_ERR_INVALID_ARG,
                            "unsupported keyword 'patternProperties' at %s: the declared name "
                            "'%s' matches the pattern '%s' (a name matching a pattern but not "
                            "a declared one cannot be written exactly)",
                            dsr1__js_where(c), keys[j], ps->p[i].pattern);
                    break;
                }
            }
            if (c->err) break;
            pk[i] = SEQ(LIT("\""), RAW(ps->p[i].re), LIT("\""));
        }
        if (!c->err) akey = dsr1__js_share(c, dsr1__js_alt(c, (int)ps->n, pk), "pattern-name");
        free(pk);
    } else {
        akey = dsr1__js_share(c, additional_key(c, keys, n), "additional-name");
    }
    if (!akey) goto done;
    if (minp > 0 || maxp >= 0) {
        out = counted_members(c, keys, vals, reqd, n, akey, add, minp, maxp);
        goto done;
    }
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
                dsr1__js_too_complex(c);
            else
                JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
            goto done;
        }
        js_x *kv = SEQ(key, colon, vals[i]);
        js_x *item = SEQ(comma, kv);
        js_x *next = rest[i + 1];
        if (i + 1 >= 2 && i + 1 <= first_req + 1 && i + 1 < n) { /* shared: make it a rule */
            int r;
            if (dsr1__js_new_rule(c, "rest", &r)) goto done;
            c->rules[r].body = next;
            next = dsr1__js_rule_ref(c, r);
            rest[i + 1] = next;
        }
        rest[i] = SEQ(reqd[i] ? item : dsr1__js_rep(c, item, 0, 1), next);
        alts[i] = SEQ(kv, next);
    }
    size_t na = first_req < n ? first_req + 1 : n;
    if (first_req >= n) alts[na++] = dsr1__js_rep(c, SEQ(addkv, tail), 0, 1);
    js_x *body = dsr1__js_alt(c, (int)na, alts);
    out = SEQ(LIT("{"), dsr1__js_ws(c), body, dsr1__js_ws(c), LIT("}"));
    if (!out && !c->budget) dsr1__js_too_complex(c);
done:
    dsr1__js_pats_free(ps);
    free(ps);
    free(keys);
    free(vals);
    free(reqd);
    free(alts);
    free(rest);
    return out;
}

/* ---- arrays ---- */

js_x *dsr1__js_gen_array(js_ctx *c, json_t *s)
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
    if (dsr1__js_get_count(c, s, "minItems", &lo) || dsr1__js_get_count(c, s, "maxItems", &hi))
        return NULL;
    if (!pre && !items && lo == 0 && hi < 0) return dsr1__js_common(c, JS_R_ARRAY);
    size_t k = json_array_size(pre);
    if (json_is_false(items) && (hi < 0 || (size_t)hi > k)) hi = (long long)k;
    if (hi >= 0 && lo > hi) return dsr1__js_node(c, X_NOTHING);
    long long rlo = lo > (long long)k ? lo - (long long)k : 0,
              rhi = hi < 0 ? -1 : hi - (long long)k;
    if (dsr1__js_check_repeat(c, "minItems", rlo) || dsr1__js_check_repeat(c, "maxItems", rhi))
        return NULL;
    if (k > 1000) { /* the tuple nests one level per entry */
        JS_FAIL(c, DSR1_ERR_RANGE, "'%s' at %s has more than 1000 entries", pre_key,
                dsr1__js_where(c));
        return NULL;
    }
    js_x *item =
        items ? dsr1__js_gen_at(c, items, items_key, NULL, -1) : dsr1__js_common(c, JS_R_VALUE);
    if (!(item = dsr1__js_share(c, item, "item"))) return NULL;
    js_x *comma = SEQ(dsr1__js_ws(c), LIT(","), dsr1__js_ws(c));
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
        js_x *pj = dsr1__js_gen_at(c, json_array_get(pre, j), pre_key, NULL, (long)j);
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
    return SEQ(LIT("["), dsr1__js_ws(c), content, dsr1__js_ws(c), LIT("]"));
}
