/* The grammar AST and what both parsers share: a bump arena, growable arrays, code point
 * range sets (classes, \d \w \s, negation over Unicode scalar values), UTF-8 helpers and
 * "line:column" error messages. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grammar_internal.h"

bool dsr1__grow(void **p, size_t *cap, size_t n, size_t sz)
{
    if (n <= *cap) return true;
    size_t c = *cap ? *cap : 8;
    while (c < n) c *= 2;
    void *q = realloc(*p, c * sz);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

struct dsr1__arena_chunk {
    dsr1__arena_chunk *next;
    max_align_t data[];
};

void *dsr1__arena_alloc(dsr1__arena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (!a->head || a->used + n > a->size) {
        size_t sz = n > 65536 ? n : 65536;
        dsr1__arena_chunk *c = malloc(sizeof(*c) + sz);
        if (!c) return NULL;
        c->next = a->head;
        a->head = c;
        a->used = 0;
        a->size = sz;
    }
    void *p = (char *)a->head->data + a->used;
    a->used += n;
    memset(p, 0, n);
    return p;
}

void dsr1__arena_free(dsr1__arena *a)
{
    dsr1__arena_chunk *c = a->head;
    while (c) {
        dsr1__arena_chunk *n = c->next;
        free(c);
        c = n;
    }
    a->head = NULL;
    a->used = a->size = 0;
}

dsr1_status dsr1__src_error(const dsr1__src *s, size_t off, dsr1_status st, const char *fmt, ...)
{
    size_t line = 1, col = 1;
    for (size_t i = 0; i < off && i < s->len; i++) {
        if (s->text[i] == '\n') {
            line++;
            col = 1;
        } else if (((uint8_t)s->text[i] & 0xc0) != 0x80) {
            col++;
        }
    }
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return dsr1_error(st, "%s %zu:%zu: %s", s->what, line, col, msg);
}

bool dsr1__ranges_add(dsr1__ranges *rs, uint32_t lo, uint32_t hi)
{
    if (!DSR1_GROW(rs->r, rs->cap, 2 * (rs->n + 1))) return false;
    rs->r[2 * rs->n] = lo;
    rs->r[2 * rs->n + 1] = hi;
    rs->n++;
    return true;
}

static int cmp_pair(const void *a, const void *b)
{
    const uint32_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

void dsr1__ranges_normalize(dsr1__ranges *rs)
{
    if (rs->n == 0) return;
    qsort(rs->r, rs->n, 2 * sizeof(uint32_t), cmp_pair);
    size_t k = 0;
    for (size_t i = 1; i < rs->n; i++) {
        uint32_t lo = rs->r[2 * i], hi = rs->r[2 * i + 1];
        if (lo <= rs->r[2 * k + 1] + 1) {
            if (hi > rs->r[2 * k + 1]) rs->r[2 * k + 1] = hi;
        } else {
            k++;
            rs->r[2 * k] = lo;
            rs->r[2 * k + 1] = hi;
        }
    }
    rs->n = k + 1;
}

/* Complement within the Unicode scalar values (no surrogates). */
bool dsr1__ranges_negate(dsr1__ranges *rs)
{
    dsr1__ranges_normalize(rs);
    dsr1__ranges out = {0};
    uint32_t next = 0;
    for (size_t i = 0; i < rs->n; i++) {
        if (rs->r[2 * i] > next && !dsr1__ranges_add(&out, next, rs->r[2 * i] - 1)) goto oom;
        next = rs->r[2 * i + 1] + 1;
    }
    if (next <= 0x10ffff && !dsr1__ranges_add(&out, next, 0x10ffff)) goto oom;
    /* remove surrogates */
    dsr1__ranges res = {0};
    for (size_t i = 0; i < out.n; i++) {
        uint32_t lo = out.r[2 * i], hi = out.r[2 * i + 1];
        if (hi < 0xd800 || lo > 0xdfff) {
            if (!dsr1__ranges_add(&res, lo, hi)) goto oom2;
            continue;
        }
        if (lo < 0xd800 && !dsr1__ranges_add(&res, lo, 0xd7ff)) goto oom2;
        if (hi > 0xdfff && !dsr1__ranges_add(&res, 0xe000, hi)) goto oom2;
    }
    free(out.r);
    free(rs->r);
    *rs = res;
    return true;
oom2:
    free(res.r);
oom:
    free(out.r);
    return false;
}

bool dsr1__ranges_add_escape(dsr1__ranges *rs, char c)
{
    dsr1__ranges t = {0};
    bool ok = true;
    switch (c | 0x20) {
    case 'd':
        ok = dsr1__ranges_add(&t, '0', '9');
        break;
    case 'w':
        ok = dsr1__ranges_add(&t, '0', '9') && dsr1__ranges_add(&t, 'A', 'Z') &&
             dsr1__ranges_add(&t, '_', '_') && dsr1__ranges_add(&t, 'a', 'z');
        break;
    case 's': {
        /* ECMAScript WhiteSpace and LineTerminator */
        static const uint32_t ws[][2] = {{9, 13},          {32, 32},         {0xa0, 0xa0},
                                         {0x1680, 0x1680}, {0x2000, 0x200a}, {0x2028, 0x2029},
                                         {0x202f, 0x202f}, {0x205f, 0x205f}, {0x3000, 0x3000},
                                         {0xfeff, 0xfeff}};
        for (size_t i = 0; ok && i < sizeof(ws) / sizeof(ws[0]); i++)
            ok = dsr1__ranges_add(&t, ws[i][0], ws[i][1]);
        break;
    }
    default:
        ok = false;
    }
    if (ok && c >= 'A' && c <= 'Z') ok = dsr1__ranges_negate(&t);
    for (size_t i = 0; ok && i < t.n; i++) ok = dsr1__ranges_add(rs, t.r[2 * i], t.r[2 * i + 1]);
    free(t.r);
    return ok;
}

dsr1__ast *dsr1__ast_new(dsr1__arena *a, dsr1__ast_kind k)
{
    dsr1__ast *n = dsr1__arena_alloc(a, sizeof(*n));
    if (n) n->kind = k;
    return n;
}

dsr1__ast *dsr1__ast_class(dsr1__arena *a, const dsr1__ranges *rs)
{
    dsr1__ast *n = dsr1__ast_new(a, DSR1__A_CLASS);
    if (!n) return NULL;
    n->n = (int)rs->n;
    n->ranges = dsr1__arena_alloc(a, 2 * rs->n * sizeof(uint32_t) + 1);
    if (!n->ranges) return NULL;
    if (rs->n) memcpy(n->ranges, rs->r, 2 * rs->n * sizeof(uint32_t));
    return n;
}

dsr1__ast *dsr1__ast_kids(dsr1__arena *a, dsr1__ast_kind k, dsr1__ast **kids, int n)
{
    if (n == 1 && (k == DSR1__A_SEQ || k == DSR1__A_ALT)) return kids[0];
    if (n == 0 && k == DSR1__A_SEQ) return dsr1__ast_new(a, DSR1__A_EMPTY);
    dsr1__ast *x = dsr1__ast_new(a, k);
    if (!x) return NULL;
    x->n = n;
    x->kids = dsr1__arena_alloc(a, (size_t)n * sizeof(*kids) + 1);
    if (!x->kids) return NULL;
    if (n) memcpy(x->kids, kids, (size_t)n * sizeof(*kids));
    return x;
}

int32_t dsr1__utf8_decode(const uint8_t *s, size_t len, size_t *i)
{
    size_t p = *i;
    uint8_t c = s[p];
    if (c < 0x80) {
        *i = p + 1;
        return c;
    }
    int n;
    uint32_t cp, min;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 1, cp = c & 0x1f, min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 2, cp = c & 0x0f, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 3, cp = c & 0x07, min = 0x10000;
    } else {
        return -1;
    }
    if (p + (size_t)n >= len) return -1;
    for (int k = 1; k <= n; k++) {
        uint8_t d = s[p + (size_t)k];
        if ((d & 0xc0) != 0x80) return -1;
        cp = (cp << 6) | (d & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return -1;
    *i = p + (size_t)n + 1;
    return (int32_t)cp;
}

int dsr1__utf8_encode(uint32_t cp, uint8_t *o)
{
    if (cp < 0x80) {
        o[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (uint8_t)(0xc0 | (cp >> 6));
        o[1] = (uint8_t)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xe0 | (cp >> 12));
        o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (uint8_t)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (uint8_t)(0xf0 | (cp >> 18));
    o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (uint8_t)(0x80 | (cp & 0x3f));
    return 4;
}
