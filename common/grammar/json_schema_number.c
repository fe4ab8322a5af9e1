/* JSON Schema converter: integers and numbers with bounds (minimum, maximum,
 * exclusiveMinimum, exclusiveMaximum, draft-04's boolean exclusive forms too), as exact
 * digit-range grammars.
 *
 * Integers: the classic split of [lo, hi] by digit count and leading digit (12..345 is
 * 1[2-9] | [2-9][0-9] | [1-2][0-9]{2} | 3([0-3][0-9] | 4[0-5])); negatives by magnitude.
 * Numbers: the integer part as above, and at the bounds' own integer parts the fraction
 * digits compared digit by digit with the bound's (written in its shortest decimal form).
 * A bounded number is written without an exponent (1000, 0.00015), so the comparison is
 * exact; an unbounded one may use any JSON number form. Never "-0", never leading zeros. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_schema_internal.h"

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

static js_x *gen_integer(js_ctx *c, json_t *s, bool has_lo, long long lo, bool has_hi, long long hi)
{
    if (!has_lo && !has_hi) return dsr1__js_common(c, JS_R_INTEGER);
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

/* ---- numbers ---- */

typedef struct {
    bool has, incl;
    double v;
} nbound;

/* A decimal without sign: integer part (no leading zeros) and fraction digits (no trailing
 * zeros, possibly empty). */
typedef struct {
    unsigned long long ip;
    char fp[80];
} decimal;

static int to_decimal(js_ctx *c, const char *k, double v, decimal *d)
{
    char ip[64], fp[400];
    dsr1__js_decimal(fabs(v), ip, sizeof ip, fp, sizeof fp);
    if (strlen(fp) >= sizeof d->fp)
        return JS_FAIL(c, DSR1_ERR_RANGE, "'%s' at %s: %g has more than %zu decimal places", k,
                       dsr1__js_where(c), v, sizeof d->fp - 1);
    d->ip = strtoull(ip, NULL, 10);
    strcpy(d->fp, fp);
    return 0;
}

static bool zero_ok(const char *lo, bool li, const char *hi, bool hii)
{
    return (!lo || (!lo[0] && li)) && (!hi || hi[0] || hii);
}

static js_x *frac_digits(js_ctx *c, const char *lo, bool li, const char *hi, bool hii);

/* Digit strings D, possibly empty (the number has no more fraction digits), with
 * lo <= 0.D <= hi (strict where !li / !hii); lo, hi: the bounds' remaining fraction digits,
 * NULL when that side no longer constrains. */
static js_x *frac_rest(js_ctx *c, const char *lo, bool li, const char *hi, bool hii)
{
    js_x *ne = frac_digits(c, lo, li, hi, hii);
    if (!zero_ok(lo, li, hi, hii)) return ne;
    return dsr1__js_alt(c, 2, (js_x *[]){dsr1__js_node(c, X_EMPTY), ne});
}

/* The same, D non-empty. */
static js_x *frac_digits(js_ctx *c, const char *lo, bool li, const char *hi, bool hii)
{
    if (lo && !lo[0] && li) lo = NULL; /* >= 0 always holds */
    js_x *any = dsr1__js_rep(c, RAW("[0-9]"), 0, JS_INF);
    if (!lo && !hi) return dsr1__js_rep(c, RAW("[0-9]"), 1, JS_INF);
    if (hi && !hi[0]) { /* <= 0 from here: only zeros */
        if (hii && !lo) return dsr1__js_rep(c, LIT("0"), 1, JS_INF);
        return dsr1__js_node(c, X_NOTHING);
    }
    if (lo && !lo[0] && !hi) /* > 0: some non-zero digit */
        return SEQ(dsr1__js_rep(c, LIT("0"), 0, JS_INF), RAW("[1-9]"), any);
    int a = lo && lo[0] ? lo[0] - '0' : 0, b = hi ? hi[0] - '0' : 9;
    js_x *alts[3];
    int n = 0;
    if (a > b) return dsr1__js_node(c, X_NOTHING);
    bool lo_edge = lo != NULL, hi_edge = hi != NULL;
    char cls[8];
    if (lo_edge && hi_edge && a == b) {
        cls[0] = (char)('0' + a);
        return SEQ(dsr1__js_lit(c, cls, 1), frac_rest(c, lo[0] ? lo + 1 : lo, li, hi + 1, hii));
    }
    int from = a, to = b;
    if (lo_edge) {
        cls[0] = (char)('0' + a);
        alts[n++] = SEQ(dsr1__js_lit(c, cls, 1), frac_rest(c, lo[0] ? lo + 1 : lo, li, NULL, hii));
        from = a + 1;
    }
    if (hi_edge) to = b - 1;
    if (from <= to) {
        char r[6] = {'[', (char)('0' + from), '-', (char)('0' + to), ']', '\0'};
        memcpy(cls, r, sizeof r);
        alts[n++] = SEQ(RAW(cls), any);
    }
    if (hi_edge) {
        cls[0] = (char)('0' + b);
        alts[n++] = SEQ(dsr1__js_lit(c, cls, 1), frac_rest(c, NULL, li, hi + 1, hii));
    }
    return dsr1__js_alt(c, n, alts);
}

/* An optional fraction ("." digits) with the value bounds above. */
static js_x *fraction(js_ctx *c, const char *lo, bool li, const char *hi, bool hii)
{
    js_x *dot = SEQ(LIT("."), frac_digits(c, lo, li, hi, hii));
    if (!zero_ok(lo && !lo[0] && li ? NULL : lo, li, hi, hii)) return dot;
    return dsr1__js_alt(c, 2, (js_x *[]){dsr1__js_node(c, X_EMPTY), dot});
}

static js_x *ulit(js_ctx *c, unsigned long long v)
{
    char t[24];
    snprintf(t, sizeof t, "%llu", v);
    return LIT(t);
}

/* Non-negative decimals from lo (inclusive when li) up to hi (NULL: unbounded). */
static js_x *magnitude(js_ctx *c, const decimal *lo, bool li, const decimal *hi, bool hii)
{
    js_x *alts[3];
    int n = 0;
    if (hi && (lo->ip > hi->ip)) return dsr1__js_node(c, X_NOTHING);
    if (hi && lo->ip == hi->ip) return SEQ(ulit(c, lo->ip), fraction(c, lo->fp, li, hi->fp, hii));
    alts[n++] = SEQ(ulit(c, lo->ip), fraction(c, lo->fp, li, NULL, true));
    if (!hi) {
        alts[n++] =
            SEQ(nonneg_range(c, (long long)lo->ip + 1, -1), fraction(c, NULL, true, NULL, true));
    } else {
        if (lo->ip + 1 <= hi->ip - 1)
            alts[n++] = SEQ(nonneg_range(c, (long long)lo->ip + 1, (long long)hi->ip - 1),
                            fraction(c, NULL, true, NULL, true));
        alts[n++] = SEQ(ulit(c, hi->ip), fraction(c, NULL, true, hi->fp, hii));
    }
    return dsr1__js_alt(c, n, alts);
}

static js_x *gen_decimal(js_ctx *c, const nbound *lo, const nbound *hi)
{
    static const char *const names[] = {"minimum", "maximum"};
    decimal zero = {0, ""}, dl = zero, dh = zero;
    if ((lo->has && to_decimal(c, names[0], lo->v, &dl)) ||
        (hi->has && to_decimal(c, names[1], hi->v, &dh)))
        return NULL;
    if (lo->has && hi->has && (lo->v > hi->v || (lo->v == hi->v && !(lo->incl && hi->incl))))
        return dsr1__js_node(c, X_NOTHING);
    js_x *alts[2];
    int n = 0;
    /* x >= 0 */
    if (!hi->has || hi->v > 0 || (hi->v == 0 && hi->incl)) {
        bool pos_lo = lo->has && lo->v > 0;
        bool li = pos_lo ? lo->incl : !(lo->has && lo->v == 0 && !lo->incl);
        alts[n++] = magnitude(c, pos_lo ? &dl : &zero, li, hi->has ? &dh : NULL, hi->incl);
    }
    /* x < 0: "-" and the magnitude, which is never 0 (no "-0") */
    if (!lo->has || lo->v < 0) {
        bool neg_hi = hi->has && hi->v < 0;
        js_x *m = magnitude(c, neg_hi ? &dh : &zero, neg_hi ? hi->incl : false,
                            lo->has ? &dl : NULL, lo->incl);
        alts[n++] = SEQ(LIT("-"), m);
    }
    return dsr1__js_alt(c, n, alts);
}

/* Tightens b with keyword k (a number, or draft-04's boolean exclusive flag). */
static int read_bound(js_ctx *c, json_t *s, const char *k, bool upper, nbound *b)
{
    json_t *x = json_object_get(s, k);
    if (!x) return 0;
    bool excl = strstr(k, "exclusive") != NULL;
    double d;
    if (json_is_boolean(x)) { /* draft-04: exclusiveMinimum: true makes minimum strict */
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
    bool incl = !excl;
    if (!b->has || (upper ? d < b->v : d > b->v) || (d == b->v && !incl)) {
        b->v = d;
        b->incl = incl;
    }
    b->has = true;
    return 0;
}

js_x *dsr1__js_gen_numeric(js_ctx *c, json_t *s, int mask)
{
    nbound lo = {0}, hi = {0};
    if (read_bound(c, s, "minimum", false, &lo) ||
        read_bound(c, s, "exclusiveMinimum", false, &lo) ||
        read_bound(c, s, "maximum", true, &hi) || read_bound(c, s, "exclusiveMaximum", true, &hi))
        return NULL;
    if (mask & T_NUM) {
        if (!lo.has && !hi.has) return dsr1__js_common(c, JS_R_NUMBER);
        return gen_decimal(c, &lo, &hi);
    }
    long long l = 0, h = 0;
    if (lo.has) l = lo.incl ? (long long)ceil(lo.v) : (long long)floor(lo.v) + 1;
    if (hi.has) h = hi.incl ? (long long)floor(hi.v) : (long long)ceil(hi.v) - 1;
    return gen_integer(c, s, lo.has, l, hi.has, h);
}
