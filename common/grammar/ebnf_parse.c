/* The grammar text parser (the format in grammar.h): rules `name ::= alternatives`,
 * literals, code point classes, /regex/ terminals, groups and postfix repetition, parsed
 * by recursive descent into the AST. A rule ends where the next `name ::=` begins, so rules
 * may span lines. Errors name the line and column. */
#include <stdlib.h>
#include <string.h>

#include "grammar_internal.h"

typedef struct {
    dsr1__arena *a;
    const dsr1__src *src;
    const dsr1_grammar_opts *o;
    size_t p;
    int depth;
    dsr1__rules *rs;
} ep;

#define EP_ERR(e, off, st, ...) dsr1__src_error((e)->src, (off), (st), __VA_ARGS__)
#define EP_OOM()                dsr1_error(DSR1_ERR_NOMEM, "grammar: out of memory")

static int at(const ep *e, size_t p)
{
    return p < e->src->len ? (uint8_t)e->src->text[p] : -1;
}

static void skip_ws(ep *e)
{
    for (;;) {
        int c = at(e, e->p);
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            e->p++;
        } else if (c == '#') {
            while (e->p < e->src->len && e->src->text[e->p] != '\n') e->p++;
        } else {
            return;
        }
    }
}

static bool name_start(int c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}
static bool name_char(int c)
{
    return name_start(c) || (c >= '0' && c <= '9') || c == '-';
}

/* Whether a rule definition `name ::=` starts at p. */
static bool rule_start(const ep *e, size_t p)
{
    if (!name_start(at(e, p))) return false;
    while (name_char(at(e, p))) p++;
    ep t = *e;
    t.p = p;
    skip_ws(&t);
    return at(&t, t.p) == ':' && at(&t, t.p + 1) == ':' && at(&t, t.p + 2) == '=';
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* One character of a literal or class at e->p (escapes decoded). *cls receives d/w/s/D/W/S
 * for a class escape when cls is not NULL. */
static dsr1_status char_at(ep *e, uint32_t *cp, char *cls)
{
    size_t start = e->p;
    int c = at(e, e->p);
    if (cls) *cls = 0;
    if (c == '\n' || c == '\r' || c < 0)
        return EP_ERR(e, start, DSR1_ERR_INVALID_ARG, "unterminated %s",
                      cls ? "character class" : "string literal");
    if (c != '\\') {
        int32_t v = dsr1__utf8_decode((const uint8_t *)e->src->text, e->src->len, &e->p);
        if (v < 0) return EP_ERR(e, start, DSR1_ERR_INVALID_ARG, "invalid UTF-8");
        *cp = (uint32_t)v;
        return DSR1_OK;
    }
    c = at(e, e->p + 1);
    e->p += 2;
    int nhex = 0;
    switch (c) {
    case 'n':
        *cp = '\n';
        return DSR1_OK;
    case 'r':
        *cp = '\r';
        return DSR1_OK;
    case 't':
        *cp = '\t';
        return DSR1_OK;
    case 'x':
        nhex = 2;
        break;
    case 'u':
        nhex = 4;
        break;
    case 'U':
        nhex = 8;
        break;
    case 'd':
    case 'w':
    case 's':
    case 'D':
    case 'W':
    case 'S':
        if (!cls) break;
        *cls = (char)c;
        return DSR1_OK;
    case '\\':
    case '"':
    case '/':
    case '\'':
    case '[':
    case ']':
    case '-':
    case '^':
        *cp = (uint32_t)c;
        return DSR1_OK;
    default:
        break;
    }
    if (!nhex) {
        if (c < 0) return EP_ERR(e, start, DSR1_ERR_INVALID_ARG, "'\\' at the end of the text");
        return EP_ERR(e, start, DSR1_ERR_INVALID_ARG, "unknown escape '\\%c'", c);
    }
    uint32_t v = 0;
    for (int i = 0; i < nhex; i++) {
        int h = hexval(at(e, e->p));
        if (h < 0)
            return EP_ERR(e, start, DSR1_ERR_INVALID_ARG, "escape \\%c needs %d hex digits", c,
                          nhex);
        v = v * 16 + (uint32_t)h;
        e->p++;
    }
    if (c == 'u' && v >= 0xd800 && v <= 0xdbff && at(e, e->p) == '\\' && at(e, e->p + 1) == 'u') {
        uint32_t lo = 0;
        int i;
        for (i = 0; i < 4 && hexval(at(e, e->p + 2 + (size_t)i)) >= 0; i++)
            lo = lo * 16 + (uint32_t)hexval(at(e, e->p + 2 + (size_t)i));
        if (i == 4 && lo >= 0xdc00 && lo <= 0xdfff) {
            v = 0x10000 + ((v - 0xd800) << 10) + (lo - 0xdc00);
            e->p += 6;
        }
    }
    if (v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
        return EP_ERR(e, start, DSR1_ERR_INVALID_ARG, "escape is not a Unicode scalar value");
    *cp = v;
    return DSR1_OK;
}

static dsr1_status literal(ep *e, dsr1__ast **out)
{
    size_t start = e->p++;
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    dsr1_status st = DSR1_OK;
    for (;;) {
        if (at(e, e->p) == '"') {
            e->p++;
            break;
        }
        uint32_t cp;
        if ((st = char_at(e, &cp, NULL))) {
            if (at(e, e->p) < 0 || at(e, e->p) == '\n')
                st = EP_ERR(e, start, DSR1_ERR_INVALID_ARG, "unterminated string literal");
            goto out;
        }
        if (!DSR1_GROW(buf, cap, n + 4)) goto oom;
        n += (size_t)dsr1__utf8_encode(cp, buf + n);
    }
    if (n == 0) {
        *out = dsr1__ast_new(e->a, DSR1__A_EMPTY);
    } else if ((*out = dsr1__ast_new(e->a, DSR1__A_BYTES))) {
        (*out)->n = (int)n;
        if (((*out)->bytes = dsr1__arena_alloc(e->a, n)))
            memcpy((*out)->bytes, buf, n);
        else
            *out = NULL;
    }
    if (!*out) goto oom;
    e->rs->terminals++;
    goto out;
oom:
    st = EP_OOM();
out:
    free(buf);
    return st;
}

/* <|TEXT|>: exactly the special token whose text is TEXT. TEXT runs to the first "|>" that
 * is not followed by another "|>" (so `<|<|eot_id|>|>` names <|eot_id|>), on one line. */
static dsr1_status special_token(ep *e, dsr1__ast **out)
{
    size_t start = e->p, p = e->p + 2, end = 0;
    for (; at(e, p) >= 0 && at(e, p) != '\n'; p++) {
        if (at(e, p) == '|' && at(e, p + 1) == '>' && p > start + 2 &&
            !(at(e, p + 2) == '|' && at(e, p + 3) == '>')) {
            end = p;
            break;
        }
    }
    if (!end) return EP_ERR(e, start, DSR1_ERR_INVALID_ARG, "unterminated special token '<|'");
    const char *text = e->src->text + start + 2;
    size_t len = end - start - 2;
    int32_t id = dsr1__vocab_special(e->src->vocab, text, len);
    if (id < 0)
        return EP_ERR(e, start, DSR1_ERR_INVALID_ARG, "unknown special token '%.*s'",
                      (int)(len > 200 ? 200 : len), text);
    if (id == e->src->vocab->eos)
        return EP_ERR(e, start, DSR1_ERR_INVALID_ARG,
                      "special token '%.*s' is the end of sequence, which follows a complete "
                      "sentence by itself",
                      (int)len, text);
    dsr1__ast *x = dsr1__ast_new(e->a, DSR1__A_BYTES);
    if (!x || !(x->bytes = dsr1__arena_alloc(e->a, DSR1__SPECIAL_LEN))) return EP_OOM();
    x->n = DSR1__SPECIAL_LEN;
    dsr1__special_bytes(id, x->bytes);
    e->p = end + 2;
    e->rs->terminals++;
    *out = x;
    return DSR1_OK;
}

static dsr1_status char_class(ep *e, dsr1__ast **out)
{
    size_t start = e->p++;
    bool neg = false;
    if (at(e, e->p) == '^') neg = true, e->p++;
    dsr1__ranges rs = {0};
    dsr1_status st = DSR1_OK;
    for (;;) {
        int c = at(e, e->p);
        if (c == ']') {
            e->p++;
            break;
        }
        if (c < 0 || c == '\n') {
            st = EP_ERR(e, start, DSR1_ERR_INVALID_ARG, "unterminated character class");
            goto out;
        }
        uint32_t lo, hi;
        char cls;
        if ((st = char_at(e, &lo, &cls))) goto out;
        if (cls) {
            if (!dsr1__ranges_add_escape(&rs, cls)) goto oom;
            continue;
        }
        hi = lo;
        if (at(e, e->p) == '-' && at(e, e->p + 1) != ']') {
            size_t dash = e->p++;
            if ((st = char_at(e, &hi, NULL))) goto out;
            if (hi < lo) {
                st = EP_ERR(e, dash, DSR1_ERR_INVALID_ARG, "range out of order in class");
                goto out;
            }
        }
        if (!dsr1__ranges_add(&rs, lo, hi)) goto oom;
    }
    if (neg && !dsr1__ranges_negate(&rs)) goto oom;
    dsr1__ranges_normalize(&rs);
    if (!(*out = dsr1__ast_class(e->a, &rs))) goto oom;
    e->rs->terminals++;
    goto out;
oom:
    st = EP_OOM();
out:
    free(rs.r);
    return st;
}

static dsr1_status regex_term(ep *e, dsr1__ast **out)
{
    size_t start = e->p++;
    bool in_class = false;
    size_t p = e->p;
    for (;; p++) {
        int c = at(e, p);
        if (c < 0 || c == '\n')
            return EP_ERR(e, start, DSR1_ERR_INVALID_ARG, "unterminated /regex/");
        if (c == '\\') {
            p++;
            if (at(e, p) < 0 || at(e, p) == '\n')
                return EP_ERR(e, start, DSR1_ERR_INVALID_ARG, "unterminated /regex/");
        } else if (c == '[') {
            in_class = true;
        } else if (c == ']') {
            in_class = false;
        } else if (c == '/' && !in_class) {
            break;
        }
    }
    dsr1_status st = dsr1__regex_parse(e->a, e->src, e->p, p, e->o, out, &e->rs->terminals);
    e->p = p + 1;
    return st;
}

static dsr1_status alternatives(ep *e, dsr1__ast **out);

static dsr1_status atom(ep *e, dsr1__ast **out)
{
    int c = at(e, e->p);
    size_t start = e->p;
    if (c == '"') return literal(e, out);
    if (c == '[') return char_class(e, out);
    if (c == '/') return regex_term(e, out);
    if (c == '<' && at(e, e->p + 1) == '|') return special_token(e, out);
    if (c == '.') {
        e->p++;
        dsr1__ranges rs = {0};
        bool ok = dsr1__ranges_add(&rs, '\n', '\n') && dsr1__ranges_negate(&rs) &&
                  (*out = dsr1__ast_class(e->a, &rs)) != NULL;
        free(rs.r);
        e->rs->terminals++;
        return ok ? DSR1_OK : EP_OOM();
    }
    if (c == '(') {
        if (++e->depth > DSR1__MAX_NEST)
            return EP_ERR(e, start, DSR1_ERR_RANGE, "groups nested deeper than %d", DSR1__MAX_NEST);
        e->p++;
        dsr1_status st = alternatives(e, out);
        if (st) return st;
        skip_ws(e);
        if (at(e, e->p) != ')') return EP_ERR(e, start, DSR1_ERR_INVALID_ARG, "unclosed '('");
        e->p++;
        e->depth--;
        return DSR1_OK;
    }
    if (name_start(c)) {
        dsr1__ast *r = dsr1__ast_new(e->a, DSR1__A_REF);
        if (!r) return EP_OOM();
        r->name = e->src->text + e->p;
        r->pos = e->p;
        while (name_char(at(e, e->p))) e->p++;
        r->name_len = (int)(e->p - start);
        r->rule = -1;
        *out = r;
        return DSR1_OK;
    }
    if (c < 0) return EP_ERR(e, start, DSR1_ERR_INVALID_ARG, "unexpected end of the grammar");
    if (c >= 0x20 && c < 0x7f)
        return EP_ERR(e, start, DSR1_ERR_INVALID_ARG, "unexpected character '%c'", c);
    return EP_ERR(e, start, DSR1_ERR_INVALID_ARG, "unexpected byte 0x%02x", c);
}

static dsr1_status postfix(ep *e, dsr1__ast **x)
{
    for (;;) {
        int c = at(e, e->p);
        size_t start = e->p;
        long mn, mx;
        if (c == '*') {
            mn = 0, mx = -1, e->p++;
        } else if (c == '+') {
            mn = 1, mx = -1, e->p++;
        } else if (c == '?') {
            mn = 0, mx = 1, e->p++;
        } else if (c == '{') {
            e->p++;
            long v[2] = {0, 0};
            int nd[2] = {0, 0}, k = 0;
            for (;;) {
                int d = at(e, e->p);
                if (d >= '0' && d <= '9') {
                    if (v[k] < 100000000) v[k] = v[k] * 10 + (d - '0');
                    nd[k]++;
                } else if (d == ',' && k == 0) {
                    k = 1;
                } else if (d == ' ') {
                } else {
                    break;
                }
                e->p++;
            }
            if (at(e, e->p) != '}' || !nd[0])
                return EP_ERR(e, start, DSR1_ERR_INVALID_ARG,
                              "bad repetition: expected {n}, {n,} or {n,m}");
            e->p++;
            mn = v[0];
            mx = k == 0 ? v[0] : nd[1] ? v[1] : -1;
            if (mx >= 0 && mx < mn)
                return EP_ERR(e, start, DSR1_ERR_INVALID_ARG, "repetition {%ld,%ld} out of order",
                              mn, mx);
        } else {
            return DSR1_OK;
        }
        if (mn > e->o->max_repeat || mx > e->o->max_repeat)
            return EP_ERR(e, start, DSR1_ERR_RANGE, "repetition bound %ld exceeds max_repeat %d",
                          mx > mn ? mx : mn, e->o->max_repeat);
        dsr1__ast *rep = dsr1__ast_new(e->a, DSR1__A_REPEAT);
        dsr1__ast **k1 = dsr1__arena_alloc(e->a, sizeof(*k1));
        if (!rep || !k1) return EP_OOM();
        k1[0] = *x;
        rep->kids = k1;
        rep->n = 1;
        rep->min = (int)mn;
        rep->max = (int)mx;
        *x = rep;
    }
}

static dsr1_status sequence(ep *e, dsr1__ast **out)
{
    dsr1__ast **kids = NULL;
    size_t n = 0, cap = 0;
    dsr1_status st = DSR1_OK;
    for (;;) {
        skip_ws(e);
        int c = at(e, e->p);
        if (c < 0 || c == '|' || c == ')' || rule_start(e, e->p)) break;
        dsr1__ast *x;
        if ((st = atom(e, &x)) || (st = postfix(e, &x))) goto out;
        if (!DSR1_GROW(kids, cap, n + 1)) {
            st = EP_OOM();
            goto out;
        }
        kids[n++] = x;
    }
    if (!(*out = dsr1__ast_kids(e->a, DSR1__A_SEQ, kids, (int)n))) st = EP_OOM();
out:
    free(kids);
    return st;
}

static dsr1_status alternatives(ep *e, dsr1__ast **out)
{
    dsr1__ast **kids = NULL;
    size_t n = 0, cap = 0;
    dsr1_status st = DSR1_OK;
    for (;;) {
        dsr1__ast *x;
        if ((st = sequence(e, &x))) goto out;
        if (!DSR1_GROW(kids, cap, n + 1)) {
            st = EP_OOM();
            goto out;
        }
        kids[n++] = x;
        skip_ws(e);
        if (at(e, e->p) != '|') break;
        e->p++;
    }
    if (!(*out = dsr1__ast_kids(e->a, DSR1__A_ALT, kids, (int)n))) st = EP_OOM();
out:
    free(kids);
    return st;
}

typedef struct {
    const char *name;
    int len, rule;
} name_ix;

static int cmp_name(const void *a, const void *b)
{
    const name_ix *x = a, *y = b;
    int n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->name, y->name, (size_t)n);
    if (c) return c;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return x->rule - y->rule;
}

static int find_rule(const name_ix *ix, int n, const char *name, int len)
{
    int lo = 0, hi = n;
    name_ix key = {name, len, -1};
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (cmp_name(&ix[mid], &key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < n && ix[lo].len == len && memcmp(ix[lo].name, name, (size_t)len) == 0)
        return ix[lo].rule;
    return -1;
}

static dsr1_status resolve(ep *e, dsr1__ast *x, const name_ix *ix, int n)
{
    if (x->kind == DSR1__A_REF) {
        x->rule = find_rule(ix, n, x->name, x->name_len);
        if (x->rule < 0)
            return EP_ERR(e, x->pos, DSR1_ERR_INVALID_ARG, "undefined rule '%.*s'", x->name_len,
                          x->name);
        return DSR1_OK;
    }
    if (x->kind == DSR1__A_SEQ || x->kind == DSR1__A_ALT || x->kind == DSR1__A_REPEAT) {
        for (int i = 0; i < x->n; i++) {
            dsr1_status st = resolve(e, x->kids[i], ix, n);
            if (st) return st;
        }
    }
    return DSR1_OK;
}

dsr1_status dsr1__ebnf_parse(dsr1__arena *a, const dsr1__src *src, const dsr1_grammar_opts *o,
                             dsr1__rules *out)
{
    memset(out, 0, sizeof(*out));
    ep e = {.a = a, .src = src, .o = o, .rs = out};
    dsr1_status st;
    for (;;) {
        skip_ws(&e);
        if (e.p >= src->len) break;
        size_t start = e.p;
        if (!name_start(at(&e, e.p)))
            return EP_ERR(&e, start, DSR1_ERR_INVALID_ARG, "expected a rule name");
        while (name_char(at(&e, e.p))) e.p++;
        int nlen = (int)(e.p - start);
        skip_ws(&e);
        if (!(at(&e, e.p) == ':' && at(&e, e.p + 1) == ':' && at(&e, e.p + 2) == '='))
            return EP_ERR(&e, e.p, DSR1_ERR_INVALID_ARG, "expected '::=' after rule name '%.*s'",
                          nlen, src->text + start);
        e.p += 3;
        if (out->nrules >= o->max_rules)
            return EP_ERR(&e, start, DSR1_ERR_RANGE, "more than max_rules (%d) rules",
                          o->max_rules);
        dsr1__ast *body;
        if ((st = alternatives(&e, &body))) return st;
        skip_ws(&e);
        if (e.p < src->len && !rule_start(&e, e.p))
            return EP_ERR(&e, e.p, DSR1_ERR_INVALID_ARG, "unexpected '%c'", src->text[e.p]);
        if (out->nrules == out->cap) {
            int nc = out->cap ? out->cap * 2 : 16;
            dsr1__rule_src *r = dsr1__arena_alloc(a, (size_t)nc * sizeof(*r));
            if (!r) return EP_OOM();
            if (out->nrules) memcpy(r, out->rules, (size_t)out->nrules * sizeof(*r));
            out->rules = r;
            out->cap = nc;
        }
        out->rules[out->nrules++] = (dsr1__rule_src){
            .name = src->text + start, .name_len = nlen, .body = body, .pos = start};
    }
    if (out->nrules == 0) return dsr1_error(DSR1_ERR_INVALID_ARG, "grammar: no rules");
    name_ix *ix = malloc((size_t)out->nrules * sizeof(*ix));
    if (!ix) return EP_OOM();
    for (int i = 0; i < out->nrules; i++)
        ix[i] = (name_ix){out->rules[i].name, out->rules[i].name_len, i};
    qsort(ix, (size_t)out->nrules, sizeof(*ix), cmp_name);
    st = DSR1_OK;
    for (int i = 1; i < out->nrules && !st; i++) {
        if (ix[i].len == ix[i - 1].len && !memcmp(ix[i].name, ix[i - 1].name, (size_t)ix[i].len))
            st = EP_ERR(&e, out->rules[ix[i].rule].pos, DSR1_ERR_INVALID_ARG,
                        "rule '%.*s' is defined twice", ix[i].len, ix[i].name);
    }
    for (int i = 0; i < out->nrules && !st; i++)
        st = resolve(&e, out->rules[i].body, ix, out->nrules);
    if (!st) {
        out->root = find_rule(ix, out->nrules, "root", 4);
        if (out->root < 0) out->root = find_rule(ix, out->nrules, "start", 5);
        if (out->root < 0)
            st = dsr1_error(DSR1_ERR_INVALID_ARG, "grammar: no rule named 'root' or 'start'");
    }
    free(ix);
    return st;
}
