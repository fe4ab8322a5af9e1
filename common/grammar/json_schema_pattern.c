/* JSON Schema converter: `pattern` and `format` as a regex over the string's JSON text.
 *
 * A pattern describes the decoded string, but the grammar constrains the JSON text between
 * the quotes, where `"`, `\` and control characters appear escaped. So the pattern is parsed
 * (ECMAScript syntax, as JSON Schema specifies) and every atom is rewritten as the set of its
 * characters' encodings: characters that need no escaping stand for themselves, `"` may be
 * written \" or \u0022, a newline \n or \u000a, and so on (the forms the canonical
 * serialiser and ordinary JSON writers use). Structure (groups, alternation, quantifiers)
 * is kept. JSON Schema patterns are not anchored, so a branch without ^ or $ gets any JSON
 * string text before or after it. Constructs a grammar cannot express (backreferences,
 * lookaround, \b, anchors inside groups, Unicode property escapes) are errors naming the
 * construct.
 *
 * `format` is a fixed pattern per format name: date, time and date-time exactly as RFC 3339
 * says (calendar and leap seconds included, with the two deliberate exclusions below), the
 * others written to accept every valid value (hostname and uri also accept some invalid
 * ones: label and total lengths, punycode, percent-encoding). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_schema_internal.h"

#define MAX_RANGES 4096
#define MAX_CP     0x10FFFF

typedef struct {
    uint32_t lo, hi;
} range;

typedef struct {
    range r[MAX_RANGES];
    int n;
} cset;

typedef struct {
    js_ctx *c;
    const char *what;
    const char *p, *end;
    js_buf out;
    int depth;
    int err;
} pctx;

static int perr(pctx *x, const char *fmt, const char *arg)
{
    if (!x->err) {
        char msg[200];
        snprintf(msg, sizeof msg, fmt, arg);
        x->err = JS_FAIL(x->c, DSR1_ERR_INVALID_ARG, "'%s' at %s: %s", x->what,
                         dsr1__js_where(x->c), msg);
    }
    return x->err;
}

/* ---- code points and sets ---- */

static int next_cp(pctx *x, uint32_t *cp)
{
    const unsigned char *s = (const unsigned char *)x->p;
    size_t left = (size_t)(x->end - x->p);
    if (!left) return perr(x, "%s", "unexpected end of the pattern");
    int n = s[0] < 0x80             ? 1
            : (s[0] & 0xE0) == 0xC0 ? 2
            : (s[0] & 0xF0) == 0xE0 ? 3
            : (s[0] & 0xF8) == 0xF0 ? 4
                                    : 0;
    if (!n || (size_t)n > left) return perr(x, "%s", "invalid UTF-8");
    uint32_t v = n == 1 ? s[0] : s[0] & (0x7F >> n);
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return perr(x, "%s", "invalid UTF-8");
        v = (v << 6) | (s[i] & 0x3F);
    }
    x->p += n;
    *cp = v;
    return 0;
}

static int add_range(pctx *x, cset *s, uint32_t lo, uint32_t hi)
{
    if (s->n >= MAX_RANGES) return perr(x, "%s", "a character class is too complex");
    s->r[s->n++] = (range){lo, hi};
    return 0;
}

static int cmp_range(const void *a, const void *b)
{
    const range *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

static void normalize(cset *s)
{
    qsort(s->r, s->n, sizeof s->r[0], cmp_range);
    int m = 0;
    for (int i = 0; i < s->n; i++) {
        if (m && s->r[i].lo <= s->r[m - 1].hi + 1) {
            if (s->r[i].hi > s->r[m - 1].hi) s->r[m - 1].hi = s->r[i].hi;
        } else {
            s->r[m++] = s->r[i];
        }
    }
    s->n = m;
}

static void complement(cset *s)
{
    normalize(s);
    cset t;
    t.n = 0;
    uint32_t next = 0;
    for (int i = 0; i < s->n; i++) {
        if (s->r[i].lo > next) t.r[t.n++] = (range){next, s->r[i].lo - 1};
        next = s->r[i].hi + 1;
    }
    if (next <= MAX_CP) t.r[t.n++] = (range){next, MAX_CP};
    *s = t;
}

/* \d \w \s (upper case: the complement) into s */
static int class_escape(pctx *x, cset *s, char e)
{
    cset t;
    t.n = 0;
    char l = (char)(e | 0x20);
    if (l == 'd') {
        add_range(x, &t, '0', '9');
    } else if (l == 'w') {
        add_range(x, &t, '0', '9');
        add_range(x, &t, 'A', 'Z');
        add_range(x, &t, '_', '_');
        add_range(x, &t, 'a', 'z');
    } else {
        static const uint32_t ws[][2] = {{9, 13},          {32, 32},         {0xA0, 0xA0},
                                         {0x1680, 0x1680}, {0x2000, 0x200A}, {0x2028, 0x2029},
                                         {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000},
                                         {0xFEFF, 0xFEFF}};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) add_range(x, &t, ws[i][0], ws[i][1]);
    }
    if (e != l) complement(&t);
    for (int i = 0; i < t.n; i++)
        if (add_range(x, s, t.r[i].lo, t.r[i].hi)) return x->err;
    return 0;
}

static int hexdigits(pctx *x, int n, uint32_t *v)
{
    *v = 0;
    for (int i = 0; i < n; i++) {
        if (x->p >= x->end) return -1;
        char ch = *x->p;
        int d = ch >= '0' && ch <= '9'   ? ch - '0'
                : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                         : -1;
        if (d < 0) return -1;
        *v = *v * 16 + (uint32_t)d;
        x->p++;
    }
    return 0;
}

/* After a backslash: a character (*cp) or a class escape added to s (returns 1). */
static int escape(pctx *x, cset *s, bool in_class, uint32_t *cp)
{
    if (x->p >= x->end) return perr(x, "%s", "a trailing backslash");
    char e = *x->p++;
    switch (e) {
    case 'd':
    case 'D':
    case 'w':
    case 'W':
    case 's':
    case 'S':
        return class_escape(x, s, e) ? x->err : 1;
    case 'b':
        if (in_class) {
            *cp = 8;
            return 0;
        }
        return perr(x, "%s", "word boundaries (\\b) are not supported");
    case 'B':
        return perr(x, "%s", "word boundaries (\\B) are not supported");
    case 't':
        *cp = '\t';
        return 0;
    case 'n':
        *cp = '\n';
        return 0;
    case 'r':
        *cp = '\r';
        return 0;
    case 'v':
        *cp = '\v';
        return 0;
    case 'f':
        *cp = '\f';
        return 0;
    case '0':
        *cp = 0;
        return 0;
    case 'c':
        if (x->p < x->end && ((*x->p | 0x20) >= 'a' && (*x->p | 0x20) <= 'z')) {
            *cp = (uint32_t)(*x->p++ % 32);
            return 0;
        }
        *cp = '\\';
        x->p--;
        return 0;
    case 'x':
        if (hexdigits(x, 2, cp)) return perr(x, "%s", "a malformed \\x escape");
        return 0;
    case 'u':
        if (x->p < x->end && *x->p == '{') {
            x->p++;
            uint32_t v = 0;
            int n = 0;
            while (x->p < x->end && *x->p != '}' && n < 7) {
                uint32_t d;
                if (hexdigits(x, 1, &d)) return perr(x, "%s", "a malformed \\u{...} escape");
                v = v * 16 + d;
                n++;
            }
            if (x->p >= x->end || *x->p != '}' || !n || v > MAX_CP)
                return perr(x, "%s", "a malformed \\u{...} escape");
            x->p++;
            *cp = v;
            return 0;
        }
        if (hexdigits(x, 4, cp)) return perr(x, "%s", "a malformed \\u escape");
        if (*cp >= 0xD800 && *cp <= 0xDBFF && x->end - x->p >= 6 && x->p[0] == '\\' &&
            x->p[1] == 'u') { /* a surrogate pair */
            const char *save = x->p;
            uint32_t lo;
            x->p += 2;
            if (!hexdigits(x, 4, &lo) && lo >= 0xDC00 && lo <= 0xDFFF)
                *cp = 0x10000 + ((*cp - 0xD800) << 10) + (lo - 0xDC00);
            else
                x->p = save;
        }
        return 0;
    case 'p':
    case 'P':
        return perr(x, "%s", "Unicode property escapes (\\p{...}) are not supported");
    case 'k':
        return perr(x, "%s", "backreferences (\\k<name>) are not supported");
    default:
        if (e >= '1' && e <= '9') return perr(x, "%s", "backreferences (\\1...) are not supported");
        x->p--;
        return next_cp(x, cp); /* identity escape */
    }
}

/* ---- output ---- */

static void put_cp(js_buf *b, uint32_t cp)
{
    char u[4];
    int n;
    if (cp < 0x80)
        u[0] = (char)cp, n = 1;
    else if (cp < 0x800)
        u[0] = (char)(0xC0 | cp >> 6), u[1] = (char)(0x80 | (cp & 63)), n = 2;
    else if (cp < 0x10000)
        u[0] = (char)(0xE0 | cp >> 12), u[1] = (char)(0x80 | ((cp >> 6) & 63)),
        u[2] = (char)(0x80 | (cp & 63)), n = 3;
    else
        u[0] = (char)(0xF0 | cp >> 18), u[1] = (char)(0x80 | ((cp >> 12) & 63)),
        u[2] = (char)(0x80 | ((cp >> 6) & 63)), u[3] = (char)(0x80 | (cp & 63)), n = 4;
    dsr1_strbuf_add(b, u, n);
}

static bool unsafe(uint32_t cp)
{
    return cp < 0x20 || cp == '"' || cp == '\\';
}

static void put_class_cp(js_buf *b, uint32_t cp)
{
    if (cp < 0x80 && cp && strchr("\\]^-[/", (int)cp)) dsr1_strbuf_add(b, "\\", 1);
    put_cp(b, cp);
}

/* The JSON text forms of one character that must be escaped. */
static void put_escaped(js_buf *b, uint32_t cp)
{
    static const char shorts[] = {'b', 8, 'f', 12, 'n', 10, 'r', 13, 't', 9, '"', '"', '\\', '\\'};
    for (size_t i = 0; i < sizeof shorts; i += 2)
        if ((uint32_t)(unsigned char)shorts[i + 1] == cp) {
            dsr1_strbuf_str(b, "\\\\");
            if (cp == '\\')
                dsr1_strbuf_str(b, "\\\\");
            else
                dsr1_strbuf_add(b, &shorts[i], 1);
            dsr1_strbuf_add(b, "|", 1);
        }
    const char *hex = "0123456789abcdef";
    dsr1_strbuf_fmt(b, "\\\\u00%c", hex[cp >> 4]);
    char lo = hex[cp & 15];
    if (lo >= 'a')
        dsr1_strbuf_fmt(b, "[%c%c]", lo, lo - 32);
    else
        dsr1_strbuf_add(b, &lo, 1);
}

/* The encodings of the characters of s, as one regex atom. */
static void put_set(pctx *x, cset *s)
{
    normalize(s);
    js_buf *b = &x->out;
    /* safe part: s minus controls, '"', '\\' and the surrogates */
    cset safe;
    safe.n = 0;
    int nunsafe = 0;
    bool all_ctl = true;
    for (uint32_t u = 0; u < 0x20; u++) {
        bool in = false;
        for (int i = 0; i < s->n && !in; i++) in = s->r[i].lo <= u && u <= s->r[i].hi;
        if (!in) all_ctl = false;
    }
    for (int i = 0; i < s->n; i++) {
        uint32_t lo = s->r[i].lo, hi = s->r[i].hi;
        for (uint32_t u = lo; u <= hi && u < 0x60; u++) nunsafe += unsafe(u);
        /* split around the unsafe characters and the surrogates */
        static const range cuts[] = {{0, 0x1F}, {'"', '"'}, {'\\', '\\'}, {0xD800, 0xDFFF}};
        uint32_t a = lo;
        for (size_t k = 0; k < 4 && a <= hi; k++) {
            if (cuts[k].hi < a) continue;
            if (cuts[k].lo > hi) break;
            if (cuts[k].lo > a) safe.r[safe.n++] = (range){a, cuts[k].lo - 1};
            a = cuts[k].hi + 1;
        }
        if (a <= hi && safe.n < MAX_RANGES) safe.r[safe.n++] = (range){a, hi};
    }
    if (!nunsafe && !safe.n) {
        perr(x, "%s", "a character class that matches nothing");
        return;
    }
    bool group = nunsafe > 0;
    if (group) dsr1_strbuf_str(b, "(?:");
    bool sep = false;
    if (safe.n == 1 && safe.r[0].lo == safe.r[0].hi) {
        uint32_t cp = safe.r[0].lo;
        if (cp < 0x80 && strchr("\\^$.|?*+()[]{}/", (int)cp)) dsr1_strbuf_add(b, "\\", 1);
        put_cp(b, cp);
        sep = true;
    } else if (safe.n) {
        dsr1_strbuf_add(b, "[", 1);
        for (int i = 0; i < safe.n; i++) {
            put_class_cp(b, safe.r[i].lo);
            if (safe.r[i].hi > safe.r[i].lo) {
                if (safe.r[i].hi > safe.r[i].lo + 1) dsr1_strbuf_add(b, "-", 1);
                put_class_cp(b, safe.r[i].hi);
            }
        }
        dsr1_strbuf_add(b, "]", 1);
        sep = true;
    }
    if (all_ctl) {
        dsr1_strbuf_str(b, sep ? "|\\\\[bfnrt]|\\\\u00[01][0-9a-fA-F]"
                               : "\\\\[bfnrt]|\\\\u00[01][0-9a-fA-F]");
        sep = true;
    }
    for (int i = 0; i < s->n; i++)
        for (uint32_t u = s->r[i].lo; u <= s->r[i].hi && u < 0x60; u++) {
            if (!unsafe(u) || (all_ctl && u < 0x20)) continue;
            if (sep) dsr1_strbuf_add(b, "|", 1);
            put_escaped(b, u);
            sep = true;
        }
    if (group) dsr1_strbuf_add(b, ")", 1);
}

/* ---- the parser ---- */

static int parse_alt(pctx *x, bool top);

static int parse_class(pctx *x)
{
    cset *s = calloc(1, sizeof *s);
    if (!s) return x->err = JS_FAIL(x->c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
    bool neg = x->p < x->end && *x->p == '^';
    if (neg) x->p++;
    bool first = true;
    while (!x->err) {
        if (x->p >= x->end) {
            perr(x, "%s", "an unterminated character class");
            break;
        }
        if (*x->p == ']' && !first) {
            x->p++;
            break;
        }
        first = false;
        uint32_t a, b;
        int k;
        if (*x->p == '\\') {
            x->p++;
            if ((k = escape(x, s, true, &a)) != 0) {
                if (k < 0) break;
                continue; /* a class escape */
            }
        } else if (next_cp(x, &a)) {
            break;
        }
        if (x->p + 1 < x->end && x->p[0] == '-' && x->p[1] != ']') {
            x->p++;
            if (*x->p == '\\') {
                x->p++;
                if ((k = escape(x, s, true, &b)) != 0) {
                    if (k > 0) perr(x, "%s", "a class escape as a range bound");
                    break;
                }
            } else if (next_cp(x, &b)) {
                break;
            }
            if (b < a) {
                perr(x, "%s", "a character range out of order");
                break;
            }
            add_range(x, s, a, b);
        } else {
            add_range(x, s, a, a);
        }
    }
    if (!x->err) {
        if (neg) complement(s);
        put_set(x, s);
    }
    free(s);
    return x->err;
}

static int parse_quant(pctx *x)
{
    if (x->p >= x->end) return 0;
    char ch = *x->p;
    if (ch == '*' || ch == '+' || ch == '?') {
        x->p++;
        dsr1_strbuf_add(&x->out, &ch, 1);
    } else if (ch == '{') {
        const char *q = x->p + 1;
        long lo = 0, hi = -1;
        int nd = 0;
        while (q < x->end && *q >= '0' && *q <= '9' && nd < 9) lo = lo * 10 + (*q++ - '0'), nd++;
        if (!nd) return 0; /* a literal '{' */
        bool comma = q < x->end && *q == ',';
        if (comma) {
            q++;
            int nh = 0;
            long h = 0;
            while (q < x->end && *q >= '0' && *q <= '9' && nh < 9) h = h * 10 + (*q++ - '0'), nh++;
            if (nh) hi = h;
        } else {
            hi = lo;
        }
        if (q >= x->end || *q != '}') return 0;
        if (hi >= 0 && hi < lo) return perr(x, "%s", "a quantifier {n,m} with m < n");
        if (lo > x->c->max_repeat || hi > x->c->max_repeat) {
            char tmp[64];
            snprintf(tmp, sizeof tmp, "%d", x->c->max_repeat);
            x->err = JS_FAIL(x->c, DSR1_ERR_RANGE,
                             "'%s' at %s: a quantifier exceeds the repetition limit %s "
                             "(max_repeat)",
                             x->what, dsr1__js_where(x->c), tmp);
            return x->err;
        }
        dsr1_strbuf_add(&x->out, x->p, (size_t)(q + 1 - x->p));
        x->p = q + 1;
        (void)comma;
    } else {
        return 0;
    }
    if (x->p < x->end && *x->p == '?') x->p++; /* lazy: same language */
    if (x->p < x->end && strchr("*+?{", *x->p) && *x->p != '{')
        return perr(x, "%s", "a quantifier after a quantifier");
    return 0;
}

/* One branch: atoms until '|' or ')' or the end. */
static int parse_branch(pctx *x, bool top, bool *anchored_start, bool *anchored_end)
{
    *anchored_start = *anchored_end = false;
    if (top && x->p < x->end && *x->p == '^') {
        x->p++;
        *anchored_start = true;
    }
    while (!x->err && x->p < x->end && *x->p != '|' && *x->p != ')') {
        char ch = *x->p;
        if (ch == '^')
            return perr(x, "%s", "'^' is supported only at the start of a top-level branch");
        if (ch == '$') {
            x->p++;
            if (top && (x->p == x->end || *x->p == '|')) {
                *anchored_end = true;
                break;
            }
            return perr(x, "%s", "'$' is supported only at the end of a top-level branch");
        }
        if (ch == '*' || ch == '+' || ch == '?')
            return perr(x, "%s", "a quantifier with nothing to repeat");
        if (ch == '(') {
            x->p++;
            if (x->p < x->end && *x->p == '?') {
                if (x->end - x->p >= 2 && x->p[1] == ':') {
                    x->p += 2;
                } else if (x->end - x->p >= 3 && x->p[1] == '<' && x->p[2] != '=' &&
                           x->p[2] != '!') {
                    const char *q = memchr(x->p, '>', (size_t)(x->end - x->p));
                    if (!q) return perr(x, "%s", "a malformed named group");
                    x->p = q + 1;
                } else {
                    return perr(
                        x, "%s",
                        "lookahead and lookbehind ((?=, (?!, (?<=, (?<!) are not supported");
                }
            }
            if (++x->depth > 64) return perr(x, "%s", "groups nested deeper than 64");
            dsr1_strbuf_str(&x->out, "(?:");
            if (parse_alt(x, false)) return x->err;
            x->depth--;
            if (x->p >= x->end || *x->p != ')') return perr(x, "%s", "an unclosed group");
            x->p++;
            dsr1_strbuf_add(&x->out, ")", 1);
        } else if (ch == '[') {
            x->p++;
            if (parse_class(x)) return x->err;
        } else {
            cset *s = calloc(1, sizeof *s);
            if (!s) return x->err = JS_FAIL(x->c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
            uint32_t cp;
            int k = 0;
            if (ch == '.') {
                x->p++;
                add_range(x, s, 0, 9);
                add_range(x, s, 11, 12);
                add_range(x, s, 14, 0x2027);
                add_range(x, s, 0x202A, MAX_CP);
            } else if (ch == '\\') {
                x->p++;
                k = escape(x, s, false, &cp);
                if (!k) add_range(x, s, cp, cp);
            } else if (!next_cp(x, &cp)) {
                add_range(x, s, cp, cp);
            }
            if (!x->err) put_set(x, s);
            free(s);
            if (x->err) return x->err;
        }
        if (parse_quant(x)) return x->err;
    }
    return x->err;
}

#define ANY "(?:[^\"\\\\\\x00-\\x1f]|\\\\[\"\\\\/bfnrt]|\\\\u[0-9a-fA-F]{4})*"

static int parse_alt(pctx *x, bool top)
{
    for (;;) {
        bool as, ae;
        size_t mark = x->out.n;
        if (top) dsr1_strbuf_str(&x->out, "(?:");
        if (top) mark = x->out.n;
        (void)mark;
        /* unanchored: the prefix goes in front, decided after ^ is seen */
        if (top && x->p < x->end && *x->p != '^') dsr1_strbuf_str(&x->out, ANY);
        if (parse_branch(x, top, &as, &ae)) return x->err;
        if (top && !ae) dsr1_strbuf_str(&x->out, ANY);
        if (top) dsr1_strbuf_add(&x->out, ")", 1);
        if (top && x->p == x->end && !as && 0) break;
        if (x->p < x->end && *x->p == '|') {
            x->p++;
            dsr1_strbuf_add(&x->out, "|", 1);
            continue;
        }
        break;
    }
    if (top && x->p < x->end) return perr(x, "%s", "an unmatched ')'");
    return x->err;
}

int dsr1__js_pattern(js_ctx *c, const char *pattern, size_t len, const char *what, char **out)
{
    pctx x = {.c = c, .what = what, .p = pattern, .end = pattern + len};
    dsr1_strbuf_add(&x.out, "/", 1);
    if (len == 0) { /* the empty pattern matches every string */
        dsr1_strbuf_str(&x.out, ANY);
    } else if (parse_alt(&x, true)) {
        free(x.out.p);
        return x.err;
    }
    dsr1_strbuf_add(&x.out, "/", 1);
    if (x.out.oom) {
        free(x.out.p);
        return JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
    }
    *out = dsr1__js_alloc(c, x.out.n + 1);
    if (*out) memcpy(*out, x.out.p, x.out.n + 1);
    free(x.out.p);
    return *out ? 0 : JS_FAIL(c, DSR1_ERR_NOMEM, "JSON Schema: out of memory");
}

/* ---- formats ---- */

/* RFC 3339 full-date, exactly: days per month, February 29 only in leap years (divisible
 * by 4, centuries only when divisible by 400). Years 0001-9999: 0000 is a valid full-date
 * but no common validator's calendar has it (Python's datetime starts at year 1), so it is
 * left out. */
#define YEAR  "(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])"
#define LEAP  "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
#define DAY31 "(?:0[1-9]|[12][0-9]|3[01])"
#define DAY30 "(?:0[1-9]|[12][0-9]|30)"
#define DAY28 "(?:0[1-9]|1[0-9]|2[0-8])"
#define DATE                                                                                       \
    "(?:" YEAR "-(?:(?:0[13578]|1[02])-" DAY31 "|(?:0[469]|11)-" DAY30 "|02-" DAY28 ")|" LEAP      \
    "-02-29)"
/* RFC 3339 full-time: hours 00-23, minutes and seconds 00-59. A leap second (:60) is
 * 23:59:60 UTC only, so the local time it is written in depends on the offset: LEAP_TIMES
 * (built once, leap_times()) pairs each local hour and minute with its offset, for offsets
 * whose minutes are 00, 30 or 45 (every offset in use); a leap second with another offset
 * (valid, e.g. 12:16:60+12:17) is not generated. */
#define FRAC "(?:\\.[0-9]+)?"
#define TIME_PLAIN                                                                                 \
    "(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]" FRAC "(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-"  \
    "9])"
#define H16   "[0-9A-Fa-f]{1,4}"
#define OCTET "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
#define IPV4  OCTET "(?:\\." OCTET "){3}"
#define IPV6                                                                                       \
    "(?:(?:" H16 ":){7}" H16 "|(?:" H16 ":){1,7}:|(?:" H16 ":){1,6}:" H16 "|(?:" H16               \
    ":){1,5}(?::" H16 "){1,2}|(?:" H16 ":){1,4}(?::" H16 "){1,3}|(?:" H16 ":){1,3}(?::" H16        \
    "){1,4}|(?:" H16 ":){1,2}(?::" H16 "){1,5}|" H16 ":(?::" H16 "){1,6}|:(?:(?::" H16             \
    "){1,7}|:)|(?:" H16 ":){6}" IPV4 "|::(?:" H16 ":){0,5}" IPV4 "|(?:" H16 ":){1,5}:(?:" H16      \
    ":){0,4}" IPV4 ")"
/* A hostname label (RFC 1123): 1-63 letters, digits and hyphens, no hyphen at either end;
 * no trailing dot. Not checked: the total length (253) and the punycode of "xn--" labels. */
#define LABEL    "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#define HOSTNAME LABEL "(?:\\." LABEL ")*"
#define DUR_TIME "T(?:[0-9]+H(?:[0-9]+M(?:[0-9]+S)?)?|[0-9]+M(?:[0-9]+S)?|[0-9]+S)"
#define DUR_DATE "(?:[0-9]+Y(?:[0-9]+M(?:[0-9]+D)?)?|[0-9]+M(?:[0-9]+D)?|[0-9]+D)"

static const struct {
    const char *name, *re;
} formats[] = {
    {"date", "^" DATE "$"},
    {"time", NULL},
    {"date-time", NULL},
    {"uuid", "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"},
    {"email",
     "^(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
     "|\"(?:[^\"\\\\\\r\\n]|\\\\.)*\")@(?:" HOSTNAME "|\\[" IPV4 "\\]|\\[IPv6:" IPV6 "\\])$"},
    {"ipv4", "^" IPV4 "$"},
    {"ipv6", "^" IPV6 "$"},
    {"hostname", "^" HOSTNAME "$"},
    {"duration", "^P(?:" DUR_DATE "(?:" DUR_TIME ")?|" DUR_TIME "|[0-9]+W)$"},
    {"uri", "^[A-Za-z][A-Za-z0-9+.-]*:[^\\s\"<>\\\\^`{|}]*$"},
};

static char time_re[16384], date_time_re[16384];
static pthread_once_t time_once = PTHREAD_ONCE_INIT;

/* The leap seconds: local HH:MM:60 with the offset that makes it 23:59 UTC. */
static void leap_times(void)
{
    js_buf b = {0};
    dsr1_strbuf_str(&b, "23:59:60" FRAC "[Zz]");
    static const int mins[3] = {0, 30, 45};
    for (int h = 0; h < 24; h++)
        for (int m = 0; m < 3; m++)
            for (int sign = 0; sign < 2; sign++) {
                /* local = 23:59 UTC + offset (mod 24 h) */
                int o = mins[m], oh = h;
                int total = sign ? -(oh * 60 + o) : oh * 60 + o;
                int local = ((23 * 60 + 59 + total) % 1440 + 1440) % 1440;
                dsr1_strbuf_fmt(&b, "|%02d:%02d:60" FRAC "%s%02d:%02d", local / 60, local % 60,
                                sign ? "-" : "\\+", oh, o);
            }
    snprintf(time_re, sizeof time_re, "^(?:" TIME_PLAIN "|%s)$", b.oom ? "" : b.p);
    snprintf(date_time_re, sizeof date_time_re, "^" DATE "[Tt](?:" TIME_PLAIN "|%s)$",
             b.oom ? "" : b.p);
    free(b.p);
}

const char *dsr1__js_format_pattern(const char *format)
{
    if (!strcmp(format, "time") || !strcmp(format, "date-time")) {
        pthread_once(&time_once, leap_times);
        return format[1] == 'i' ? time_re : date_time_re;
    }
    for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++)
        if (!strcmp(formats[i].name, format)) return formats[i].re;
    return NULL;
}
