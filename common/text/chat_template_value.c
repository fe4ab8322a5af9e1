/* Chat-template run-time values and the memory they live in.
 *
 * Templates are Python programs in disguise: what `{{ x }}` prints, what counts as true,
 * and when two values are equal all follow Python (str(1.0) is "1.0", True == 1,
 * "" is false), because jinja2 simply runs Python. This file holds those rules, the
 * arena every value lives in, the error exit, and conversions from JSON input and to
 * JSON output (transformers' `tojson`: json.dumps with ensure_ascii=False). */
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template_internal.h"

struct ct_block {
    struct ct_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

_Noreturn void dsr1__ct_fail(ct_err *e, dsr1_status st, int line, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    e->status = st;
    if (line > 0)
        snprintf(e->msg, sizeof(e->msg), "line %d: %s", line, msg);
    else
        snprintf(e->msg, sizeof(e->msg), "%s", msg);
    longjmp(e->jmp, 1);
}

void *dsr1__ct_alloc(ct_arena *a, ct_err *e, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (!a->head || a->head->cap - a->head->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        if (a->total + cap > a->limit)
            dsr1__ct_fail(e, DSR1_ERR_RANGE, 0, "template memory limit of %zu MiB exceeded",
                          a->limit >> 20);
        struct ct_block *b = malloc(sizeof(*b) + cap);
        if (!b) dsr1__ct_fail(e, DSR1_ERR_NOMEM, 0, "out of memory");
        b->next = a->head;
        b->used = 0;
        b->cap = cap;
        a->head = b;
        a->total += cap;
    }
    void *p = a->head->data + a->head->used;
    a->head->used += n;
    memset(p, 0, n);
    return p;
}

void dsr1__ct_arena_free(ct_arena *a)
{
    while (a->head) {
        struct ct_block *next = a->head->next;
        free(a->head);
        a->head = next;
    }
    a->total = 0;
}

char *dsr1__ct_strdup(ct_arena *a, ct_err *e, const char *s, size_t n)
{
    char *p = dsr1__ct_alloc(a, e, n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

bool dsr1__ct_is_py_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

uint32_t dsr1__ct_utf8_at(const char *s, size_t len, size_t i, size_t *n)
{
    const unsigned char *u = (const unsigned char *)s;
    unsigned char c = u[i];
    size_t need = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (i + need > len) need = 1;
    *n = need;
    switch (need) {
    case 2:
        return ((c & 0x1Fu) << 6) | (u[i + 1] & 0x3Fu);
    case 3:
        return ((c & 0x0Fu) << 12) | ((u[i + 1] & 0x3Fu) << 6) | (u[i + 2] & 0x3Fu);
    case 4:
        return ((c & 0x07u) << 18) | ((u[i + 1] & 0x3Fu) << 12) | ((u[i + 2] & 0x3Fu) << 6) |
               (u[i + 3] & 0x3Fu);
    }
    return c;
}

void dsr1__ct_emit(ct_ctx *c, const char *s, size_t n)
{
    if (c->out_len + n + 1 > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + n + 1) cap *= 2;
        char *o = realloc(c->out, cap);
        if (!o) dsr1__ct_fail(&c->err, DSR1_ERR_NOMEM, c->line, "out of memory for the output");
        c->out = o;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, s, n);
    c->out_len += n;
    c->out[c->out_len] = '\0';
}

const char *dsr1__ct_type_name(const ct_value *v)
{
    switch (v->t) {
    case CT_UNDEF:
        return "undefined";
    case CT_NONE:
        return "none";
    case CT_BOOL:
        return "bool";
    case CT_INT:
        return "int";
    case CT_FLOAT:
        return "float";
    case CT_STR:
        return "str";
    case CT_LIST:
        return v->l->tuple ? "tuple" : "list";
    case CT_DICT:
        return v->d->kind == CT_DICT_NAMESPACE ? "namespace"
               : v->d->kind == CT_DICT_LOOP    ? "loop"
                                               : "dict";
    case CT_METHOD:
        return "method";
    case CT_FUNC:
        return "function";
    }
    return "?";
}

bool dsr1__ct_truthy(const ct_value *v)
{
    switch (v->t) {
    case CT_UNDEF:
    case CT_NONE:
        return false;
    case CT_BOOL:
        return v->b;
    case CT_INT:
        return v->i != 0;
    case CT_FLOAT:
        return v->f != 0.0;
    case CT_STR:
        return v->s.n > 0;
    case CT_LIST:
        return v->l->n > 0;
    case CT_DICT:
        return v->d->kind != CT_DICT_PLAIN || v->d->n > 0;
    case CT_METHOD:
    case CT_FUNC:
        return true;
    }
    return false;
}

static bool is_number(const ct_value *v)
{
    return v->t == CT_BOOL || v->t == CT_INT || v->t == CT_FLOAT;
}

static double as_double(const ct_value *v)
{
    return v->t == CT_FLOAT ? v->f : v->t == CT_INT ? (double)v->i : (double)v->b;
}

bool dsr1__ct_equal(const ct_value *a, const ct_value *b)
{
    if (is_number(a) && is_number(b)) {
        if (a->t != CT_FLOAT && b->t != CT_FLOAT)
            return (a->t == CT_INT ? a->i : a->b) == (b->t == CT_INT ? b->i : b->b);
        return as_double(a) == as_double(b);
    }
    if (a->t != b->t) return false;
    switch (a->t) {
    case CT_UNDEF:
    case CT_NONE:
        return true;
    case CT_STR:
        return a->s.n == b->s.n && !memcmp(a->s.p, b->s.p, a->s.n);
    case CT_LIST:
        if (a->l->n != b->l->n || a->l->tuple != b->l->tuple) return false;
        for (size_t i = 0; i < a->l->n; i++)
            if (!dsr1__ct_equal(&a->l->v[i], &b->l->v[i])) return false;
        return true;
    case CT_DICT:
        if (a->d == b->d) return true;
        if (a->d->kind != CT_DICT_PLAIN || b->d->kind != CT_DICT_PLAIN || a->d->n != b->d->n)
            return false;
        for (size_t i = 0; i < a->d->n; i++) {
            const ct_value *o = dsr1__ct_dict_get(b->d, a->d->k[i].p, a->d->k[i].n);
            if (!o || !dsr1__ct_equal(&a->d->v[i], o)) return false;
        }
        return true;
    case CT_METHOD:
        return a->m.recv == b->m.recv && !strcmp(a->m.name, b->m.name);
    case CT_FUNC:
        return !strcmp(a->fn, b->fn);
    default:
        return false;
    }
}

size_t dsr1__ct_format_float(double f, char *buf, size_t cap)
{
    if (isnan(f)) return (size_t)snprintf(buf, cap, "nan");
    if (isinf(f)) return (size_t)snprintf(buf, cap, f < 0 ? "-inf" : "inf");
    /* shortest "%.*e" that reads back as f: Python's repr digits */
    char e[40];
    for (int p = 0; p < 17; p++) {
        snprintf(e, sizeof(e), "%.*e", p, f);
        if (strtod(e, NULL) == f) break;
    }
    char digits[24];
    size_t nd = 0;
    const char *q = e;
    bool neg = *q == '-';
    if (neg) q++;
    for (; *q && *q != 'e'; q++)
        if (*q != '.') digits[nd++] = *q;
    int exp = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    size_t k = 0;
    char out[64];
    if (neg) out[k++] = '-';
    if (exp >= -4 && exp < 16) {
        if (exp < 0) {
            out[k++] = '0';
            out[k++] = '.';
            for (int z = 0; z < -exp - 1; z++) out[k++] = '0';
            memcpy(out + k, digits, nd);
            k += nd;
        } else {
            for (int i = 0; i <= exp; i++) out[k++] = (size_t)i < nd ? digits[i] : '0';
            out[k++] = '.';
            if ((size_t)exp + 1 < nd) {
                memcpy(out + k, digits + exp + 1, nd - (size_t)exp - 1);
                k += nd - (size_t)exp - 1;
            } else {
                out[k++] = '0';
            }
        }
    } else {
        out[k++] = digits[0];
        if (nd > 1) {
            out[k++] = '.';
            memcpy(out + k, digits + 1, nd - 1);
            k += nd - 1;
        }
        k += (size_t)snprintf(out + k, sizeof(out) - k, "e%c%02d", exp < 0 ? '-' : '+',
                              exp < 0 ? -exp : exp);
    }
    out[k] = '\0';
    return (size_t)snprintf(buf, cap, "%s", out);
}

ct_str dsr1__ct_to_str(ct_ctx *c, const ct_value *v)
{
    char buf[64];
    size_t n;
    switch (v->t) {
    case CT_UNDEF:
        return (ct_str){"", 0};
    case CT_NONE:
        return (ct_str){"None", 4};
    case CT_BOOL:
        return v->b ? (ct_str){"True", 4} : (ct_str){"False", 5};
    case CT_STR:
        return v->s;
    case CT_INT:
        n = (size_t)snprintf(buf, sizeof(buf), "%lld", (long long)v->i);
        break;
    case CT_FLOAT:
        n = dsr1__ct_format_float(v->f, buf, sizeof(buf));
        break;
    default:
        dsr1__ct_fail(&c->err, DSR1_ERR_UNSUPPORTED, c->line,
                      "converting a %s to text is not "
                      "supported (use |tojson)",
                      dsr1__ct_type_name(v));
    }
    return (ct_str){dsr1__ct_strdup(&c->arena, &c->err, buf, n), n};
}

ct_list *dsr1__ct_list_new(ct_ctx *c, size_t cap)
{
    ct_list *l = dsr1__ct_alloc(&c->arena, &c->err, sizeof(*l));
    if (cap) l->v = dsr1__ct_alloc(&c->arena, &c->err, cap * sizeof(ct_value));
    l->cap = cap;
    return l;
}

void dsr1__ct_list_push(ct_ctx *c, ct_list *l, ct_value v)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        ct_value *nv = dsr1__ct_alloc(&c->arena, &c->err, cap * sizeof(*nv));
        if (l->n) memcpy(nv, l->v, l->n * sizeof(*nv));
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = v;
}

ct_dict *dsr1__ct_dict_new(ct_ctx *c, size_t cap, int kind)
{
    ct_dict *d = dsr1__ct_alloc(&c->arena, &c->err, sizeof(*d));
    d->kind = kind;
    if (cap) {
        d->k = dsr1__ct_alloc(&c->arena, &c->err, cap * sizeof(ct_str));
        d->v = dsr1__ct_alloc(&c->arena, &c->err, cap * sizeof(ct_value));
    }
    d->cap = cap;
    return d;
}

ct_value *dsr1__ct_dict_get(const ct_dict *d, const char *k, size_t kn)
{
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].n == kn && !memcmp(d->k[i].p, k, kn)) return &d->v[i];
    return NULL;
}

void dsr1__ct_dict_set(ct_ctx *c, ct_dict *d, const char *k, size_t kn, ct_value v)
{
    ct_value *old = dsr1__ct_dict_get(d, k, kn);
    if (old) {
        *old = v;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4;
        ct_str *nk = dsr1__ct_alloc(&c->arena, &c->err, cap * sizeof(*nk));
        ct_value *nv = dsr1__ct_alloc(&c->arena, &c->err, cap * sizeof(*nv));
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof(*nk));
            memcpy(nv, d->v, d->n * sizeof(*nv));
        }
        d->k = nk, d->v = nv, d->cap = cap;
    }
    d->k[d->n] = (ct_str){k, kn};
    d->v[d->n++] = v;
}

ct_value dsr1__ct_from_json(ct_ctx *c, const void *jv)
{
    const json_t *j = jv;
    ct_value v = ct_none();
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        const char *key;
        json_t *item;
        v.t = CT_DICT;
        v.d = dsr1__ct_dict_new(c, json_object_size(j), CT_DICT_PLAIN);
        json_object_foreach((json_t *)j, key, item)
        {
            ct_value iv = dsr1__ct_from_json(c, item);
            dsr1__ct_dict_set(c, v.d, key, strlen(key), iv);
        }
        break;
    }
    case JSON_ARRAY:
        v.t = CT_LIST;
        v.l = dsr1__ct_list_new(c, json_array_size(j));
        for (size_t i = 0; i < json_array_size(j); i++)
            dsr1__ct_list_push(c, v.l, dsr1__ct_from_json(c, json_array_get(j, i)));
        break;
    case JSON_STRING:
        v = ct_strv(json_string_value(j), json_string_length(j));
        break;
    case JSON_INTEGER:
        v = ct_int(json_integer_value(j));
        break;
    case JSON_REAL:
        v = ct_float(json_real_value(j));
        break;
    case JSON_TRUE:
        v = ct_bool(true);
        break;
    case JSON_FALSE:
        v = ct_bool(false);
        break;
    case JSON_NULL:
        break;
    }
    return v;
}

/* ---- tojson ---- */

typedef struct {
    ct_ctx *c;
    char *p;
    size_t n, cap;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = dsr1__ct_alloc(&b->c->arena, &b->c->err, cap);
        if (b->n) memcpy(p, b->p, b->n);
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void json_string_out(sbuf *b, const char *s, size_t n)
{
    sb_put(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        const char *esc = NULL;
        char u[8];
        if (ch == '"')
            esc = "\\\"";
        else if (ch == '\\')
            esc = "\\\\";
        else if (ch == '\n')
            esc = "\\n";
        else if (ch == '\r')
            esc = "\\r";
        else if (ch == '\t')
            esc = "\\t";
        else if (ch == '\b')
            esc = "\\b";
        else if (ch == '\f')
            esc = "\\f";
        else if (ch < 0x20)
            snprintf(u, sizeof(u), "\\u%04x", ch), esc = u;
        if (!esc) continue;
        sb_put(b, s + run, i - run);
        sb_put(b, esc, strlen(esc));
        run = i + 1;
    }
    sb_put(b, s + run, n - run);
    sb_put(b, "\"", 1);
}

static void newline_indent(sbuf *b, int indent, int level)
{
    sb_put(b, "\n", 1);
    for (int i = 0; i < indent * level; i++) sb_put(b, " ", 1);
}

static void json_out(sbuf *b, const ct_value *v, int indent, int level)
{
    char num[64];
    size_t n;
    const char *item_sep = indent >= 0 ? "," : ", ";
    switch (v->t) {
    case CT_NONE:
        sb_put(b, "null", 4);
        return;
    case CT_BOOL:
        sb_put(b, v->b ? "true" : "false", v->b ? 4 : 5);
        return;
    case CT_INT:
        n = (size_t)snprintf(num, sizeof(num), "%lld", (long long)v->i);
        sb_put(b, num, n);
        return;
    case CT_FLOAT:
        if (isnan(v->f))
            sb_put(b, "NaN", 3);
        else if (isinf(v->f))
            sb_put(b, v->f < 0 ? "-Infinity" : "Infinity", v->f < 0 ? 9 : 8);
        else
            sb_put(b, num, dsr1__ct_format_float(v->f, num, sizeof(num)));
        return;
    case CT_STR:
        json_string_out(b, v->s.p, v->s.n);
        return;
    case CT_LIST:
        if (!v->l->n) {
            sb_put(b, "[]", 2);
            return;
        }
        sb_put(b, "[", 1);
        for (size_t i = 0; i < v->l->n; i++) {
            if (i) sb_put(b, item_sep, strlen(item_sep));
            if (indent >= 0) newline_indent(b, indent, level + 1);
            json_out(b, &v->l->v[i], indent, level + 1);
        }
        if (indent >= 0) newline_indent(b, indent, level);
        sb_put(b, "]", 1);
        return;
    case CT_DICT:
        if (v->d->kind == CT_DICT_PLAIN) {
            if (!v->d->n) {
                sb_put(b, "{}", 2);
                return;
            }
            sb_put(b, "{", 1);
            for (size_t i = 0; i < v->d->n; i++) {
                if (i) sb_put(b, item_sep, strlen(item_sep));
                if (indent >= 0) newline_indent(b, indent, level + 1);
                json_string_out(b, v->d->k[i].p, v->d->k[i].n);
                sb_put(b, ": ", 2);
                json_out(b, &v->d->v[i], indent, level + 1);
            }
            if (indent >= 0) newline_indent(b, indent, level);
            sb_put(b, "}", 1);
            return;
        }
        break;
    default:
        break;
    }
    dsr1__ct_fail(&b->c->err, DSR1_ERR_FORMAT, b->c->line, "a %s is not JSON serializable",
                  dsr1__ct_type_name(v));
}

ct_str dsr1__ct_tojson(ct_ctx *c, const ct_value *v, int indent)
{
    sbuf b = {c, NULL, 0, 0};
    json_out(&b, v, indent, 0);
    return (ct_str){b.p, b.n};
}
