/* Chat-template expressions: evaluation of the syntax tree with Python's operator rules
 * and jinja2's attribute/item lookup (built-in filters, tests and methods are in
 * chat_template_builtins.c).
 *
 * Undefined values behave like jinja2.Undefined (transformers' default): printing one
 * gives "", it is false, `is defined` says no, iterating it yields nothing; but arithmetic
 * on it or looking inside it is an error. Such errors name what was missing ("'dict
 * object' has no attribute 'content'"), because that is usually a malformed message. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template_builtins.h"
#include "chat_template_internal.h"

static ct_value undef_hint(ct_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static ct_value undef_hint(ct_ctx *c, const char *fmt, ...)
{
    char buf[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    ct_value v = ct_undef();
    v.hint = dsr1__ct_strdup(&c->arena, &c->err, buf, strlen(buf));
    return v;
}

_Noreturn void dsr1__ct_fail_undef(ct_ctx *c, const ct_value *v)
{
    CT_FAIL(c, "%s", v->hint ? v->hint : "an undefined value was used");
}

ct_value dsr1__ct_lookup(ct_ctx *c, const char *name)
{
    size_t n = strlen(name);
    for (ct_frame *f = c->frame; f; f = f->parent) {
        ct_value *v = dsr1__ct_dict_get(f->vars, name, n);
        if (v) return *v;
    }
    if (dsr1__ct_is_global(name)) {
        ct_value v = {.t = CT_FUNC, .fn = name};
        return v;
    }
    return undef_hint(c, "'%s' is undefined", name);
}

ct_value dsr1__ct_getattr(ct_ctx *c, const ct_value *obj, const char *name, size_t n)
{
    if (obj->t == CT_UNDEF) dsr1__ct_fail_undef(c, obj);
    if (n && name[0] == '_') /* the sandbox hides private attributes */
        return undef_hint(c, "access to attribute '%.*s' is unsafe", (int)n, name);
    if (dsr1__ct_has_method(obj, name, n)) {
        ct_value m = {.t = CT_METHOD};
        ct_value *recv = dsr1__ct_alloc(&c->arena, &c->err, sizeof(*recv));
        *recv = *obj;
        m.m.recv = recv;
        m.m.name = dsr1__ct_strdup(&c->arena, &c->err, name, n);
        return m;
    }
    if (obj->t == CT_DICT) {
        ct_value *v = dsr1__ct_dict_get(obj->d, name, n);
        if (v) return *v;
    }
    return undef_hint(c, "'%s object' has no attribute '%.*s'", dsr1__ct_type_name(obj), (int)n,
                      name);
}

/* Python's index normalisation: -1 is the last element; -1 when out of range. */
static int64_t norm_index(int64_t i, size_t len)
{
    if (i < 0) i += (int64_t)len;
    return i < 0 || i >= (int64_t)len ? -1 : i;
}

/* Byte offset of code point number k in s (k <= number of code points). */
static size_t cp_offset(const ct_str *s, size_t k)
{
    size_t i = 0;
    while (k-- && i < s->n) {
        size_t l;
        dsr1__ct_utf8_at(s->p, s->n, i, &l);
        i += l;
    }
    return i;
}

size_t dsr1__ct_cp_count(const ct_str *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->n; i++) n += ((unsigned char)s->p[i] & 0xC0) != 0x80;
    return n;
}

static bool as_index(const ct_value *v, int64_t *i)
{
    if (v->t == CT_INT)
        *i = v->i;
    else if (v->t == CT_BOOL)
        *i = v->b;
    else
        return false;
    return true;
}

ct_value dsr1__ct_getitem(ct_ctx *c, const ct_value *obj, const ct_value *key)
{
    int64_t i;
    if (obj->t == CT_UNDEF) dsr1__ct_fail_undef(c, obj);
    if (obj->t == CT_DICT && key->t == CT_STR) {
        ct_value *v = dsr1__ct_dict_get(obj->d, key->s.p, key->s.n);
        if (v) return *v;
    }
    if (obj->t == CT_LIST && as_index(key, &i)) {
        int64_t k = norm_index(i, obj->l->n);
        if (k >= 0) return obj->l->v[k];
        return undef_hint(c, "list index %lld out of range", (long long)i);
    }
    if (obj->t == CT_STR && as_index(key, &i)) {
        i = norm_index(i, dsr1__ct_cp_count(&obj->s));
        if (i < 0) return undef_hint(c, "string index out of range");
        size_t a = cp_offset(&obj->s, (size_t)i), l;
        dsr1__ct_utf8_at(obj->s.p, obj->s.n, a, &l);
        return ct_strv(obj->s.p + a, l);
    }
    if (key->t == CT_STR) return dsr1__ct_getattr(c, obj, key->s.p, key->s.n);
    return undef_hint(c, "'%s object' has no such item", dsr1__ct_type_name(obj));
}

/* Python slice semantics (PySlice_AdjustIndices). */
static ct_value slice(ct_ctx *c, const ct_value *obj, const ct_value *lo, const ct_value *hi,
                      const ct_value *st)
{
    int64_t step = 1, start, stop;
    if (st && st->t != CT_NONE && !as_index(st, &step)) CT_FAIL(c, "slice step must be an int");
    if (step == 0) CT_FAIL(c, "slice step cannot be zero");
    size_t len;
    if (obj->t == CT_LIST)
        len = obj->l->n;
    else if (obj->t == CT_STR)
        len = dsr1__ct_cp_count(&obj->s);
    else if (obj->t == CT_UNDEF)
        dsr1__ct_fail_undef(c, obj);
    else
        CT_FAIL(c, "cannot slice a %s", dsr1__ct_type_name(obj));
    int64_t n = (int64_t)len;
    const ct_value *bounds[2] = {lo, hi};
    int64_t *out[2] = {&start, &stop};
    for (int b = 0; b < 2; b++) {
        int64_t v;
        if (!bounds[b] || bounds[b]->t == CT_NONE) {
            v = b == 0 ? (step < 0 ? n - 1 : 0) : (step < 0 ? -1 : n);
        } else {
            if (!as_index(bounds[b], &v)) CT_FAIL(c, "slice indices must be integers");
            if (v < 0) {
                v += n;
                if (v < 0) v = step < 0 ? -1 : 0;
            } else if (v >= n) {
                v = step < 0 ? n - 1 : n;
            }
        }
        *out[b] = v;
    }
    ct_list *l = dsr1__ct_list_new(c, 0);
    char *buf = obj->t == CT_STR ? dsr1__ct_alloc(&c->arena, &c->err, obj->s.n + 1) : NULL;
    size_t k = 0;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        if (obj->t == CT_LIST) {
            dsr1__ct_list_push(c, l, obj->l->v[i]);
        } else {
            size_t a = cp_offset(&obj->s, (size_t)i), cl;
            dsr1__ct_utf8_at(obj->s.p, obj->s.n, a, &cl);
            memcpy(buf + k, obj->s.p + a, cl);
            k += cl;
        }
    }
    if (obj->t == CT_STR) return ct_strv(buf, k);
    l->tuple = obj->l->tuple;
    ct_value v = {.t = CT_LIST, .l = l};
    return v;
}

static bool both_int(const ct_value *a, const ct_value *b)
{
    return (a->t == CT_INT || a->t == CT_BOOL) && (b->t == CT_INT || b->t == CT_BOOL);
}

static bool is_num(const ct_value *v)
{
    return v->t == CT_INT || v->t == CT_BOOL || v->t == CT_FLOAT;
}

static int64_t ival(const ct_value *v)
{
    return v->t == CT_INT ? v->i : v->b;
}

static double fval(const ct_value *v)
{
    return v->t == CT_FLOAT ? v->f : (double)ival(v);
}

static ct_value concat_str(ct_ctx *c, ct_str a, ct_str b)
{
    char *p = dsr1__ct_alloc(&c->arena, &c->err, a.n + b.n + 1);
    memcpy(p, a.p, a.n);
    memcpy(p + a.n, b.p, b.n);
    return ct_strv(p, a.n + b.n);
}

_Noreturn static void type_error(ct_ctx *c, const char *op, const ct_value *a, const ct_value *b)
{
    if (a->t == CT_UNDEF) dsr1__ct_fail_undef(c, a);
    if (b->t == CT_UNDEF) dsr1__ct_fail_undef(c, b);
    CT_FAIL(c, "unsupported operand types for %s: '%s' and '%s'", op, dsr1__ct_type_name(a),
            dsr1__ct_type_name(b));
}

static ct_value repeat(ct_ctx *c, const ct_value *seq, int64_t times)
{
    if (times < 0) times = 0;
    if (seq->t == CT_STR) {
        if (seq->s.n && (uint64_t)times > (64u << 20) / seq->s.n)
            CT_FAIL(c, "string repetition too large");
        char *p = dsr1__ct_alloc(&c->arena, &c->err, seq->s.n * (size_t)times + 1);
        for (int64_t i = 0; i < times; i++) memcpy(p + seq->s.n * (size_t)i, seq->s.p, seq->s.n);
        return ct_strv(p, seq->s.n * (size_t)times);
    }
    ct_list *l = dsr1__ct_list_new(c, 0);
    if (seq->l->n && (uint64_t)times > (1u << 20) / seq->l->n)
        CT_FAIL(c, "list repetition too large");
    for (int64_t i = 0; i < times; i++)
        for (size_t j = 0; j < seq->l->n; j++) dsr1__ct_list_push(c, l, seq->l->v[j]);
    l->tuple = seq->l->tuple;
    ct_value v = {.t = CT_LIST, .l = l};
    return v;
}

static ct_value arith(ct_ctx *c, const char *op, const ct_value *a, const ct_value *b)
{
    int64_t r;
    switch (op[0]) {
    case '~':
        return concat_str(c, dsr1__ct_to_str(c, a), dsr1__ct_to_str(c, b));
    case '+':
        if (a->t == CT_STR && b->t == CT_STR) return concat_str(c, a->s, b->s);
        if (a->t == CT_LIST && b->t == CT_LIST && a->l->tuple == b->l->tuple) {
            ct_list *l = dsr1__ct_list_new(c, a->l->n + b->l->n);
            for (size_t i = 0; i < a->l->n; i++) dsr1__ct_list_push(c, l, a->l->v[i]);
            for (size_t i = 0; i < b->l->n; i++) dsr1__ct_list_push(c, l, b->l->v[i]);
            l->tuple = a->l->tuple;
            ct_value v = {.t = CT_LIST, .l = l};
            return v;
        }
        if (both_int(a, b)) {
            if (__builtin_add_overflow(ival(a), ival(b), &r)) CT_FAIL(c, "integer overflow");
            return ct_int(r);
        }
        if (is_num(a) && is_num(b)) return ct_float(fval(a) + fval(b));
        break;
    case '-':
        if (both_int(a, b)) {
            if (__builtin_sub_overflow(ival(a), ival(b), &r)) CT_FAIL(c, "integer overflow");
            return ct_int(r);
        }
        if (is_num(a) && is_num(b)) return ct_float(fval(a) - fval(b));
        break;
    case '*':
        if (op[1] == '*') { /* ** */
            if (both_int(a, b) && ival(b) >= 0) {
                int64_t base = ival(a), e = ival(b);
                r = 1;
                while (e--)
                    if (__builtin_mul_overflow(r, base, &r)) CT_FAIL(c, "integer overflow");
                return ct_int(r);
            }
            if (is_num(a) && is_num(b)) return ct_float(pow(fval(a), fval(b)));
            break;
        }
        if (both_int(a, b)) {
            if (__builtin_mul_overflow(ival(a), ival(b), &r)) CT_FAIL(c, "integer overflow");
            return ct_int(r);
        }
        if (is_num(a) && is_num(b)) return ct_float(fval(a) * fval(b));
        if ((a->t == CT_STR || a->t == CT_LIST) && both_int(b, b)) return repeat(c, a, ival(b));
        if ((b->t == CT_STR || b->t == CT_LIST) && both_int(a, a)) return repeat(c, b, ival(a));
        break;
    case '/':
    case '%':
        if (!is_num(a) || !is_num(b)) {
            if (op[0] == '%' && a->t == CT_STR)
                CT_FAIL(c, "printf-style string formatting ('%%') is not supported");
            break;
        }
        if (fval(b) == 0.0) CT_FAIL(c, "division by zero");
        if (op[0] == '/' && op[1] == '\0') return ct_float(fval(a) / fval(b));
        if (both_int(a, b)) { /* Python floors: -7 // 2 == -4, -7 % 2 == 1 */
            int64_t x = ival(a), y = ival(b), q = x / y, m = x % y;
            if (m != 0 && ((m < 0) != (y < 0))) q--, m += y;
            return op[0] == '/' ? ct_int(q) : ct_int(m);
        }
        if (op[0] == '/') return ct_float(floor(fval(a) / fval(b)));
        {
            double m = fmod(fval(a), fval(b));
            if (m != 0 && ((m < 0) != (fval(b) < 0))) m += fval(b);
            return ct_float(m);
        }
    }
    type_error(c, op, a, b);
}

static bool contains(ct_ctx *c, const ct_value *item, const ct_value *seq)
{
    switch (seq->t) {
    case CT_UNDEF:
        return false; /* iterating Undefined yields nothing */
    case CT_STR:
        if (item->t != CT_STR)
            CT_FAIL(c, "'in <string>' requires a string as left operand, not %s",
                    dsr1__ct_type_name(item));
        if (!item->s.n) return true;
        return memmem(seq->s.p, seq->s.n, item->s.p, item->s.n) != NULL;
    case CT_LIST:
        for (size_t i = 0; i < seq->l->n; i++)
            if (dsr1__ct_equal(item, &seq->l->v[i])) return true;
        return false;
    case CT_DICT:
        return item->t == CT_STR && dsr1__ct_dict_get(seq->d, item->s.p, item->s.n) != NULL;
    default:
        CT_FAIL(c, "argument of type '%s' is not iterable", dsr1__ct_type_name(seq));
    }
}

/* <, <=, >, >= : -1, 0, 1 like strcmp, numbers, strings and lists only. */
static int order(ct_ctx *c, const char *op, const ct_value *a, const ct_value *b)
{
    if (is_num(a) && is_num(b)) {
        if (both_int(a, b)) return (ival(a) > ival(b)) - (ival(a) < ival(b));
        return (fval(a) > fval(b)) - (fval(a) < fval(b));
    }
    if (a->t == CT_STR && b->t == CT_STR) {
        size_t n = a->s.n < b->s.n ? a->s.n : b->s.n;
        int r = memcmp(a->s.p, b->s.p, n);
        return r ? (r > 0) - (r < 0) : (a->s.n > b->s.n) - (a->s.n < b->s.n);
    }
    if (a->t == CT_LIST && b->t == CT_LIST) {
        for (size_t i = 0; i < a->l->n && i < b->l->n; i++)
            if (!dsr1__ct_equal(&a->l->v[i], &b->l->v[i]))
                return order(c, op, &a->l->v[i], &b->l->v[i]);
        return (a->l->n > b->l->n) - (a->l->n < b->l->n);
    }
    if (a->t == CT_UNDEF) dsr1__ct_fail_undef(c, a);
    if (b->t == CT_UNDEF) dsr1__ct_fail_undef(c, b);
    CT_FAIL(c, "'%s' not supported between instances of '%s' and '%s'", op, dsr1__ct_type_name(a),
            dsr1__ct_type_name(b));
}

bool dsr1__ct_compare(ct_ctx *c, const char *op, const ct_value *a, const ct_value *b)
{
    if (!strcmp(op, "==")) return dsr1__ct_equal(a, b);
    if (!strcmp(op, "!=")) return !dsr1__ct_equal(a, b);
    if (!strcmp(op, "in")) return contains(c, a, b);
    if (!strcmp(op, "notin")) return !contains(c, a, b);
    int r = order(c, op, a, b);
    if (!strcmp(op, "<")) return r < 0;
    if (!strcmp(op, "<=")) return r <= 0;
    if (!strcmp(op, ">")) return r > 0;
    return r >= 0;
}

/* Evaluates call arguments into arena arrays. */
static ct_value *eval_args(ct_ctx *c, const ct_expr *x)
{
    ct_value *args = dsr1__ct_alloc(&c->arena, &c->err, (x->nargs + 1) * sizeof(*args));
    for (size_t i = 0; i < x->nargs; i++) args[i] = dsr1__ct_eval(c, x->args[i]);
    return args;
}

ct_value dsr1__ct_eval(ct_ctx *c, const ct_expr *x)
{
    ct_value a, b;
    switch (x->k) {
    case X_LIT:
        return x->lit;
    case X_NAME:
        return dsr1__ct_lookup(c, x->name);
    case X_GETATTR:
        a = dsr1__ct_eval(c, x->a);
        return dsr1__ct_getattr(c, &a, x->name, strlen(x->name));
    case X_GETITEM:
        a = dsr1__ct_eval(c, x->a);
        b = dsr1__ct_eval(c, x->b);
        return dsr1__ct_getitem(c, &a, &b);
    case X_SLICE: {
        a = dsr1__ct_eval(c, x->a);
        ct_value lo, hi, st;
        if (x->b) lo = dsr1__ct_eval(c, x->b);
        if (x->c) hi = dsr1__ct_eval(c, x->c);
        if (x->d) st = dsr1__ct_eval(c, x->d);
        return slice(c, &a, x->b ? &lo : NULL, x->c ? &hi : NULL, x->d ? &st : NULL);
    }
    case X_CALL:
        a = dsr1__ct_eval(c, x->a);
        return dsr1__ct_call(c, &a, eval_args(c, x), x->kw, x->nargs);
    case X_FILTER:
        a = dsr1__ct_eval(c, x->a);
        return dsr1__ct_filter(c, x->name, &a, eval_args(c, x), x->kw, x->nargs);
    case X_TEST:
        a = dsr1__ct_eval(c, x->a);
        return ct_bool(dsr1__ct_test(c, x->name, &a, eval_args(c, x), x->nargs) != x->negate);
    case X_NOT:
        a = dsr1__ct_eval(c, x->a);
        return ct_bool(!dsr1__ct_truthy(&a));
    case X_NEG:
    case X_POS:
        a = dsr1__ct_eval(c, x->a);
        if (a.t == CT_FLOAT) return ct_float(x->k == X_NEG ? -a.f : a.f);
        if (a.t == CT_INT || a.t == CT_BOOL) {
            int64_t v = ival(&a);
            if (x->k == X_NEG && v == INT64_MIN) CT_FAIL(c, "integer overflow");
            return ct_int(x->k == X_NEG ? -v : v);
        }
        if (a.t == CT_UNDEF) dsr1__ct_fail_undef(c, &a);
        CT_FAIL(c, "bad operand type for unary %c: '%s'", x->k == X_NEG ? '-' : '+',
                dsr1__ct_type_name(&a));
    case X_BIN:
        a = dsr1__ct_eval(c, x->a);
        b = dsr1__ct_eval(c, x->b);
        return arith(c, x->op, &a, &b);
    case X_AND: /* Python returns the deciding operand, not a bool */
        a = dsr1__ct_eval(c, x->a);
        return dsr1__ct_truthy(&a) ? dsr1__ct_eval(c, x->b) : a;
    case X_OR:
        a = dsr1__ct_eval(c, x->a);
        return dsr1__ct_truthy(&a) ? a : dsr1__ct_eval(c, x->b);
    case X_CMP:
        a = dsr1__ct_eval(c, x->args[0]);
        for (size_t i = 1; i < x->nargs; i++) {
            b = dsr1__ct_eval(c, x->args[i]);
            if (!dsr1__ct_compare(c, x->ops[i - 1], &a, &b)) return ct_bool(false);
            a = b;
        }
        return ct_bool(true);
    case X_COND:
        a = dsr1__ct_eval(c, x->a);
        if (dsr1__ct_truthy(&a)) return dsr1__ct_eval(c, x->b);
        return x->c ? dsr1__ct_eval(c, x->c) : ct_undef();
    case X_LIST:
    case X_TUPLE: {
        ct_list *l = dsr1__ct_list_new(c, x->nargs);
        for (size_t i = 0; i < x->nargs; i++)
            dsr1__ct_list_push(c, l, dsr1__ct_eval(c, x->args[i]));
        l->tuple = x->k == X_TUPLE;
        ct_value v = {.t = CT_LIST, .l = l};
        return v;
    }
    case X_DICT: {
        ct_dict *d = dsr1__ct_dict_new(c, x->nargs / 2, CT_DICT_PLAIN);
        for (size_t i = 0; i + 1 < x->nargs; i += 2) {
            ct_value k = dsr1__ct_eval(c, x->args[i]);
            if (k.t != CT_STR) CT_FAIL(c, "dict literal keys must be strings here");
            dsr1__ct_dict_set(c, d, k.s.p, k.s.n, dsr1__ct_eval(c, x->args[i + 1]));
        }
        ct_value v = {.t = CT_DICT, .d = d};
        return v;
    }
    }
    CT_FAIL(c, "internal error: unknown expression");
}
