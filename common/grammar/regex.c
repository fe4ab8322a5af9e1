/* Regular expressions (the ECMAScript subset JSON Schema's `pattern` uses) parsed into the
 * grammar AST, for /.../ terminals and dsr1_grammar_compile_regex. The match is always of
 * the whole text: ^ and $ are accepted at the ends only. Lookaround, backreferences and
 * word boundaries are errors that name the construct. */
#include <stdlib.h>
#include <string.h>

#include "grammar_internal.h"

typedef struct {
    dsr1__arena *a;
    const dsr1__src *src;
    const dsr1_grammar_opts *o;
    size_t start, p, end;
    int depth;
} rp;

#define RE_ERR(r, off, st, ...) dsr1__src_error((r)->src, (off), (st), __VA_ARGS__)

static int peek(const rp *r)
{
    return r->p < r->end ? (uint8_t)r->src->text[r->p] : -1;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* n hex digits at r->p; -1 when not there */
static int32_t hexn(rp *r, int n)
{
    int32_t v = 0;
    for (int i = 0; i < n; i++) {
        int h = r->p + (size_t)i < r->end ? hexval((uint8_t)r->src->text[r->p + (size_t)i]) : -1;
        if (h < 0) return -1;
        v = v * 16 + h;
    }
    r->p += (size_t)n;
    return v;
}

/* One source code point (literal). */
static dsr1_status src_cp(rp *r, uint32_t *cp)
{
    size_t at = r->p;
    int32_t c = dsr1__utf8_decode((const uint8_t *)r->src->text, r->end, &r->p);
    if (c < 0) return RE_ERR(r, at, DSR1_ERR_INVALID_ARG, "invalid UTF-8");
    *cp = (uint32_t)c;
    return DSR1_OK;
}

/* After a backslash: a code point escape. `cls` (out, may be NULL) receives d/w/s/D/W/S
 * for a class escape instead. */
static dsr1_status escape(rp *r, uint32_t *cp, char *cls, bool in_class)
{
    size_t at = r->p - 1;
    int c = peek(r);
    if (c < 0) return RE_ERR(r, at, DSR1_ERR_INVALID_ARG, "'\\' at the end of the pattern");
    r->p++;
    if (cls) *cls = 0;
    switch (c) {
    case 'd':
    case 'D':
    case 'w':
    case 'W':
    case 's':
    case 'S':
        if (!cls) return RE_ERR(r, at, DSR1_ERR_INVALID_ARG, "class escape \\%c in a range", c);
        *cls = (char)c;
        return DSR1_OK;
    case 'n':
        *cp = '\n';
        return DSR1_OK;
    case 'r':
        *cp = '\r';
        return DSR1_OK;
    case 't':
        *cp = '\t';
        return DSR1_OK;
    case 'f':
        *cp = '\f';
        return DSR1_OK;
    case 'v':
        *cp = '\v';
        return DSR1_OK;
    case 'b':
        if (in_class) {
            *cp = 8;
            return DSR1_OK;
        }
        return RE_ERR(r, at, DSR1_ERR_INVALID_ARG, "word boundary \\b is not supported");
    case 'B':
        return RE_ERR(r, at, DSR1_ERR_INVALID_ARG, "word boundary \\B is not supported");
    case '0':
        if (peek(r) >= '0' && peek(r) <= '9')
            return RE_ERR(r, at, DSR1_ERR_INVALID_ARG, "octal escapes are not supported");
        *cp = 0;
        return DSR1_OK;
    case 'c': {
        int d = peek(r);
        if ((d >= 'a' && d <= 'z') || (d >= 'A' && d <= 'Z')) {
            r->p++;
            *cp = (uint32_t)(d % 32);
            return DSR1_OK;
        }
        return RE_ERR(r, at, DSR1_ERR_INVALID_ARG, "bad control escape \\c");
    }
    case 'x': {
        int32_t v = hexn(r, 2);
        if (v < 0) return RE_ERR(r, at, DSR1_ERR_INVALID_ARG, "bad escape \\x: two hex digits");
        *cp = (uint32_t)v;
        return DSR1_OK;
    }
    case 'u': {
        int32_t v;
        if (peek(r) == '{') {
            r->p++;
            v = 0;
            int nd = 0;
            while (hexval(peek(r)) >= 0 && nd < 8) v = v * 16 + hexval(peek(r)), r->p++, nd++;
            if (peek(r) != '}' || nd == 0 || v > 0x10ffff)
                return RE_ERR(r, at, DSR1_ERR_INVALID_ARG, "bad escape \\u{...}");
            r->p++;
        } else {
            v = hexn(r, 4);
            if (v < 0)
                return RE_ERR(r, at, DSR1_ERR_INVALID_ARG, "bad escape \\u: four hex digits");
            if (v >= 0xd800 && v <= 0xdbff && peek(r) == '\\' && r->p + 1 < r->end &&
                r->src->text[r->p + 1] == 'u') {
                size_t save = r->p;
                r->p += 2;
                int32_t lo = hexn(r, 4);
                if (lo >= 0xdc00 && lo <= 0xdfff)
                    v = 0x10000 + ((v - 0xd800) << 10) + (lo - 0xdc00);
                else
                    r->p = save;
            }
        }
        if (v >= 0xd800 && v <= 0xdfff)
            return RE_ERR(r, at, DSR1_ERR_INVALID_ARG, "lone surrogate \\u%04X", (unsigned)v);
        *cp = (uint32_t)v;
        return DSR1_OK;
    }
    case 'k':
        return RE_ERR(r, at, DSR1_ERR_INVALID_ARG, "backreferences are not supported");
    default:
        break;
    }
    if (c >= '1' && c <= '9')
        return RE_ERR(r, at, DSR1_ERR_INVALID_ARG, "backreferences are not supported");
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return RE_ERR(r, at, DSR1_ERR_INVALID_ARG, "unknown escape \\%c", c);
    r->p--;
    return src_cp(r, cp);
}

static dsr1_status parse_class(rp *r, dsr1__ast **out)
{
    size_t at = r->p;
    r->p++; /* [ */
    bool neg = false;
    if (peek(r) == '^') neg = true, r->p++;
    dsr1__ranges rs = {0};
    dsr1_status st = DSR1_OK;
    for (;;) {
        int c = peek(r);
        if (c < 0) {
            st = RE_ERR(r, at, DSR1_ERR_INVALID_ARG, "unterminated character class");
            goto out;
        }
        if (c == ']') {
            r->p++;
            break;
        }
        uint32_t lo = 0;
        char cls = 0;
        if (c == '\\') {
            r->p++;
            if ((st = escape(r, &lo, &cls, true))) goto out;
        } else if ((st = src_cp(r, &lo))) {
            goto out;
        }
        if (cls) {
            if (!dsr1__ranges_add_escape(&rs, cls)) goto oom;
            continue;
        }
        uint32_t hi = lo;
        if (peek(r) == '-' && r->p + 1 < r->end && r->src->text[r->p + 1] != ']') {
            size_t dash = r->p;
            r->p++;
            if (peek(r) == '\\') {
                r->p++;
                if ((st = escape(r, &hi, NULL, true))) goto out;
            } else if ((st = src_cp(r, &hi))) {
                goto out;
            }
            if (hi < lo) {
                st = RE_ERR(r, dash, DSR1_ERR_INVALID_ARG, "range out of order in class");
                goto out;
            }
        }
        if (!dsr1__ranges_add(&rs, lo, hi)) goto oom;
    }
    if (neg && !dsr1__ranges_negate(&rs)) goto oom;
    dsr1__ranges_normalize(&rs);
    if (!(*out = dsr1__ast_class(r->a, &rs))) goto oom;
    goto out;
oom:
    st = dsr1_error(DSR1_ERR_NOMEM, "regex: out of memory");
out:
    free(rs.r);
    return st;
}

static dsr1__ast *cp_node(dsr1__arena *a, uint32_t cp)
{
    dsr1__ast *n = dsr1__ast_new(a, DSR1__A_BYTES);
    if (!n || !(n->bytes = dsr1__arena_alloc(a, 4))) return NULL;
    n->n = dsr1__utf8_encode(cp, n->bytes);
    return n;
}

static dsr1_status parse_alt(rp *r, dsr1__ast **out);

/* {n}, {n,}, {n,m} at r->p; false (r->p unchanged) when the text is not a quantifier. */
static bool brace_quant(rp *r, long *mn, long *mx)
{
    size_t p = r->p + 1;
    const char *t = r->src->text;
    long a = 0, b;
    int nd = 0;
    while (p < r->end && t[p] >= '0' && t[p] <= '9') {
        if (a < 100000000) a = a * 10 + (t[p] - '0');
        p++, nd++;
    }
    if (!nd) return false;
    b = a;
    if (p < r->end && t[p] == ',') {
        p++;
        b = -1;
        int md = 0;
        long v = 0;
        while (p < r->end && t[p] >= '0' && t[p] <= '9') {
            if (v < 100000000) v = v * 10 + (t[p] - '0');
            p++, md++;
        }
        if (md) b = v;
    }
    if (p >= r->end || t[p] != '}') return false;
    r->p = p + 1;
    *mn = a;
    *mx = b;
    return true;
}

static dsr1_status parse_atom(rp *r, dsr1__ast **out)
{
    size_t at = r->p;
    int c = peek(r);
    dsr1_status st;
    if (c == '(') {
        if (++r->depth > DSR1__MAX_NEST)
            return RE_ERR(r, at, DSR1_ERR_RANGE, "groups nested deeper than %d", DSR1__MAX_NEST);
        r->p++;
        if (peek(r) == '?') {
            const char *t = r->src->text + r->p;
            size_t left = r->end - r->p;
            if (left >= 2 && t[1] == ':') {
                r->p += 2;
            } else if (left >= 2 && (t[1] == '=' || t[1] == '!')) {
                return RE_ERR(r, at, DSR1_ERR_INVALID_ARG, "lookahead is not supported");
            } else if (left >= 3 && t[1] == '<' && (t[2] == '=' || t[2] == '!')) {
                return RE_ERR(r, at, DSR1_ERR_INVALID_ARG, "lookbehind is not supported");
            } else if (left >= 2 && t[1] == '<') {
                size_t q = r->p + 2;
                while (q < r->end && r->src->text[q] != '>') q++;
                if (q >= r->end) return RE_ERR(r, at, DSR1_ERR_INVALID_ARG, "bad group name");
                r->p = q + 1;
            } else {
                return RE_ERR(r, at, DSR1_ERR_INVALID_ARG, "unsupported group syntax '(?'");
            }
        }
        if ((st = parse_alt(r, out))) return st;
        if (peek(r) != ')') return RE_ERR(r, at, DSR1_ERR_INVALID_ARG, "unclosed group '('");
        r->p++;
        r->depth--;
        return DSR1_OK;
    }
    if (c == '[') return parse_class(r, out);
    if (c == '.') {
        r->p++;
        dsr1__ranges rs = {0};
        bool ok = dsr1__ranges_add(&rs, '\n', '\n') && dsr1__ranges_negate(&rs) &&
                  (*out = dsr1__ast_class(r->a, &rs)) != NULL;
        free(rs.r);
        return ok ? DSR1_OK : dsr1_error(DSR1_ERR_NOMEM, "regex: out of memory");
    }
    if (c == '^' || c == '$') {
        if ((c == '^' && r->p != r->start) || (c == '$' && r->p + 1 != r->end))
            return RE_ERR(r, at, DSR1_ERR_INVALID_ARG,
                          "'%c' is supported only at the %s of the pattern", c,
                          c == '^' ? "start" : "end");
        r->p++;
        *out = dsr1__ast_new(r->a, DSR1__A_EMPTY);
        return *out ? DSR1_OK : dsr1_error(DSR1_ERR_NOMEM, "regex: out of memory");
    }
    if (c == '*' || c == '+' || c == '?')
        return RE_ERR(r, at, DSR1_ERR_INVALID_ARG, "nothing to repeat before '%c'", c);
    if (c == '{') {
        long a, b;
        size_t save = r->p;
        if (brace_quant(r, &a, &b)) {
            r->p = save;
            return RE_ERR(r, at, DSR1_ERR_INVALID_ARG, "nothing to repeat before '{'");
        }
    }
    uint32_t cp;
    char cls = 0;
    if (c == '\\') {
        r->p++;
        if ((st = escape(r, &cp, &cls, false))) return st;
    } else if ((st = src_cp(r, &cp))) {
        return st;
    }
    if (cls) {
        dsr1__ranges rs = {0};
        bool ok = dsr1__ranges_add_escape(&rs, cls);
        if (ok) dsr1__ranges_normalize(&rs);
        ok = ok && (*out = dsr1__ast_class(r->a, &rs)) != NULL;
        free(rs.r);
        return ok ? DSR1_OK : dsr1_error(DSR1_ERR_NOMEM, "regex: out of memory");
    }
    *out = cp_node(r->a, cp);
    return *out ? DSR1_OK : dsr1_error(DSR1_ERR_NOMEM, "regex: out of memory");
}

static dsr1_status parse_seq(rp *r, dsr1__ast **out)
{
    dsr1__ast **kids = NULL;
    size_t n = 0, cap = 0;
    dsr1_status st = DSR1_OK;
    while (r->p < r->end && peek(r) != '|' && peek(r) != ')') {
        dsr1__ast *x;
        if ((st = parse_atom(r, &x))) goto out;
        int c = peek(r);
        long mn = -2, mx = -2;
        size_t qat = r->p;
        if (c == '*')
            mn = 0, mx = -1, r->p++;
        else if (c == '+')
            mn = 1, mx = -1, r->p++;
        else if (c == '?')
            mn = 0, mx = 1, r->p++;
        else if (c == '{' && !brace_quant(r, &mn, &mx))
            mn = -2;
        if (mn != -2) {
            if (peek(r) == '?') r->p++; /* lazy: same language */
            int max_rep = r->o->max_repeat;
            if (mn > max_rep || mx > max_rep) {
                st = RE_ERR(r, qat, DSR1_ERR_RANGE, "repetition bound %ld exceeds max_repeat %d",
                            mx > mn ? mx : mn, max_rep);
                goto out;
            }
            if (mx >= 0 && mx < mn) {
                st = RE_ERR(r, qat, DSR1_ERR_INVALID_ARG, "numbers out of order in {%ld,%ld}", mn,
                            mx);
                goto out;
            }
            int q = peek(r);
            long t1, t2;
            size_t save = r->p;
            if (q == '*' || q == '+' || q == '?' || (q == '{' && brace_quant(r, &t1, &t2))) {
                r->p = save;
                st = RE_ERR(r, save, DSR1_ERR_INVALID_ARG, "nothing to repeat before '%c'", q);
                goto out;
            }
            dsr1__ast *rep = dsr1__ast_new(r->a, DSR1__A_REPEAT);
            dsr1__ast **k1 = dsr1__arena_alloc(r->a, sizeof(*k1));
            if (!rep || !k1) goto oom;
            k1[0] = x;
            rep->kids = k1;
            rep->n = 1;
            rep->min = (int)mn;
            rep->max = (int)mx;
            x = rep;
        }
        if (!DSR1_GROW(kids, cap, n + 1)) goto oom;
        kids[n++] = x;
    }
    if (!(*out = dsr1__ast_kids(r->a, DSR1__A_SEQ, kids, (int)n))) goto oom;
    goto out;
oom:
    st = dsr1_error(DSR1_ERR_NOMEM, "regex: out of memory");
out:
    free(kids);
    return st;
}

static dsr1_status parse_alt(rp *r, dsr1__ast **out)
{
    dsr1__ast **kids = NULL;
    size_t n = 0, cap = 0;
    dsr1_status st = DSR1_OK;
    for (;;) {
        dsr1__ast *x;
        if ((st = parse_seq(r, &x))) goto out;
        if (!DSR1_GROW(kids, cap, n + 1)) goto oom;
        kids[n++] = x;
        if (peek(r) != '|') break;
        r->p++;
    }
    if (!(*out = dsr1__ast_kids(r->a, DSR1__A_ALT, kids, (int)n))) goto oom;
    goto out;
oom:
    st = dsr1_error(DSR1_ERR_NOMEM, "regex: out of memory");
out:
    free(kids);
    return st;
}

dsr1_status dsr1__regex_parse(dsr1__arena *a, const dsr1__src *src, size_t start, size_t end,
                              const dsr1_grammar_opts *o, dsr1__ast **out, int *terminals)
{
    rp r = {.a = a, .src = src, .o = o, .start = start, .p = start, .end = end};
    dsr1_status st = parse_alt(&r, out);
    if (st) return st;
    if (r.p < r.end) return RE_ERR(&r, r.p, DSR1_ERR_INVALID_ARG, "unmatched ')'");
    if (terminals) (*terminals)++;
    return DSR1_OK;
}
