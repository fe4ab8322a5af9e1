/* JSON Schema converter: from the grammar IR to the grammar text. Finds the rules that
 * derive no finite string (least fixpoint of productivity), prunes them and everything that
 * needs them, simplifies (nested sequences and alternations spliced, adjacent literals
 * joined, (x)? of x+ as x*), and prints the rules reachable from the root. */
#include <stdlib.h>
#include <string.h>

#include "json_schema_internal.h"

/* ---- productivity, pruning, printing ---- */

static bool productive1(const js_ctx *c, js_x *x);
static bool productive(const js_ctx *c, js_x *x)
{
    if (x->epoch == c->epoch) return x->prod;
    x->prod = productive1(c, x);
    x->epoch = c->epoch;
    return x->prod;
}

static bool productive1(const js_ctx *c, js_x *x)
{
    switch (x->k) {
    case X_NOTHING:
        return false;
    case X_EMPTY:
    case X_LIT:
    case X_RAW:
        return true;
    case X_RULE:
        return c->rules[x->rule].productive;
    case X_SEQ:
        for (int i = 0; i < x->n; i++)
            if (!productive(c, x->kids[i])) return false;
        return true;
    case X_ALT:
        for (int i = 0; i < x->n; i++)
            if (productive(c, x->kids[i])) return true;
        return false;
    case X_REP:
        return x->min == 0 || productive(c, x->kids[0]);
    }
    return false;
}

/* Rewrites x without NOTHING (unless x itself derives nothing) and without EMPTY inside
 * sequences and alternatives. Shared subtrees are rewritten once (x->rule caches). */
static js_x *prune1(js_ctx *c, js_x *x);
static js_x *prune(js_ctx *c, js_x *x)
{
    if (!x->done) x->done = prune1(c, x);
    return x->done;
}

static js_x *prune1(js_ctx *c, js_x *x)
{
    static js_x nothing = {.k = X_NOTHING}, empty = {.k = X_EMPTY};
    switch (x->k) {
    case X_NOTHING:
    case X_EMPTY:
    case X_LIT:
    case X_RAW:
        return x;
    case X_RULE: {
        js_rule *r = &c->rules[x->rule];
        if (!r->productive) return &nothing;
        return x;
    }
    case X_SEQ: {
        /* pruned kids, nested sequences spliced in, adjacent literals joined ("\"name\":"
         * rather than "\"name\"" ":") */
        int cap = 0;
        for (int i = 0; i < x->n; i++) {
            js_x *k = prune(c, x->kids[i]);
            if (k->k == X_NOTHING) return &nothing;
            x->kids[i] = k;
            cap += k->k == X_SEQ ? k->n : 1;
        }
        js_x **kids = dsr1__js_alloc(c, (cap ? cap : 1) * sizeof *kids);
        if (!kids) return x; /* out of memory: the unspliced form is still correct */
        int m = 0;
        for (int i = 0; i < x->n; i++) {
            js_x *k = x->kids[i];
            int nk = k->k == X_SEQ ? k->n : 1;
            for (int j = 0; j < nk; j++) {
                js_x *e = k->k == X_SEQ ? k->kids[j] : k;
                if (e->k == X_EMPTY) continue;
                if (m && e->k == X_LIT && kids[m - 1]->k == X_LIT) {
                    js_x *p = kids[m - 1];
                    js_x *q = dsr1__js_node(c, X_LIT);
                    char *t = q ? dsr1__js_alloc(c, p->len + e->len + 1) : NULL;
                    if (t) {
                        memcpy(t, p->text, p->len);
                        memcpy(t + p->len, e->text, e->len);
                        q->text = t;
                        q->len = p->len + e->len;
                        kids[m - 1] = q;
                        continue;
                    }
                }
                kids[m++] = e;
            }
        }
        x->kids = kids;
        x->n = m;
        if (m == 0) return &empty;
        return m == 1 ? x->kids[0] : x;
    }
    case X_ALT: {
        int cap = 0;
        for (int i = 0; i < x->n; i++) {
            x->kids[i] = prune(c, x->kids[i]);
            cap += x->kids[i]->k == X_ALT ? x->kids[i]->n : 1;
        }
        js_x **kids = dsr1__js_alloc(c, (cap ? cap : 1) * sizeof *kids);
        if (!kids) return x;
        int m = 0;
        bool eps = false;
        for (int i = 0; i < x->n; i++) { /* nested alternations spliced in */
            js_x *k = x->kids[i];
            int nk = k->k == X_ALT ? k->n : 1;
            for (int j = 0; j < nk; j++) {
                js_x *e = k->k == X_ALT ? k->kids[j] : k;
                if (e->k == X_EMPTY)
                    eps = true;
                else if (e->k != X_NOTHING)
                    kids[m++] = e;
            }
        }
        x->kids = kids;
        x->n = m;
        js_x *r = m == 0 ? (eps ? &empty : &nothing) : m == 1 ? x->kids[0] : x;
        if (eps && m) {
            js_x *q = dsr1__js_node(c, X_REP);
            if (!q) return r; /* budget spent: keep the (still correct) looser form */
            q->kids = dsr1__js_alloc(c, sizeof *q->kids);
            if (!q->kids) return r;
            q->kids[0] = r;
            q->n = 1;
            q->min = 0;
            q->max = 1;
            if (r->k == X_REP && r->min <= 1) { /* (y+)? is y* */
                q->kids[0] = r->kids[0];
                q->max = r->max;
            }
            return q;
        }
        return r;
    }
    case X_REP: {
        js_x *k = prune(c, x->kids[0]);
        if (k->k == X_NOTHING) return x->min == 0 ? &empty : &nothing;
        if (k->k == X_EMPTY || x->max == 0) return &empty;
        if (x->min == 1 && x->max == 1) return k;
        if (k->k == X_REP && x->min == 0 && x->max == 1 && k->min <= 1) {
            /* (y{0|1,m})? is y{0,m} */
            x->kids[0] = k->kids[0];
            x->max = k->max;
            return x;
        }
        x->kids[0] = k;
        return x;
    }
    }
    return x;
}

static void mark(js_ctx *c, const js_x *x, int *stack, int *sp)
{
    if (x->k == X_RULE) {
        if (!c->rules[x->rule].reachable) {
            c->rules[x->rule].reachable = true;
            stack[(*sp)++] = x->rule;
        }
        return;
    }
    for (int i = 0; i < x->n; i++) mark(c, x->kids[i], stack, sp);
}

static void print_lit(js_buf *b, const char *s, size_t n)
{
    dsr1_strbuf_add(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            char e[2] = {'\\', (char)ch};
            dsr1_strbuf_add(b, e, 2);
        } else if (ch < 0x20 || ch == 0x7f) {
            dsr1_strbuf_fmt(b, "\\x%02x", ch);
        } else {
            dsr1_strbuf_add(b, (const char *)&ch, 1);
        }
    }
    dsr1_strbuf_add(b, "\"", 1);
}

/* prec: 0 inside an alternation, 1 inside a sequence, 2 under a postfix operator */
static void print_x(const js_ctx *c, js_buf *b, const js_x *x, int prec)
{
    switch (x->k) {
    case X_NOTHING:
    case X_EMPTY:
        dsr1_strbuf_str(b, "\"\"");
        break;
    case X_LIT:
        print_lit(b, x->text, x->len);
        break;
    case X_RAW: {
        bool simple = x->text[0] == '[' || x->text[0] == '/' || x->text[0] == '"';
        if (!simple || prec == 0) {
            bool paren = !simple && prec > 0;
            if (paren) dsr1_strbuf_add(b, "(", 1);
            dsr1_strbuf_add(b, x->text, x->len);
            if (paren) dsr1_strbuf_add(b, ")", 1);
        } else {
            /* a class, a regex or a literal possibly followed by a quantifier */
            bool quant = x->text[x->len - 1] == '}' || x->text[x->len - 1] == '*' ||
                         x->text[x->len - 1] == '+' || x->text[x->len - 1] == '?';
            bool sp = strchr(x->text, ' ') != NULL && x->text[0] != '/' && x->text[0] != '[';
            bool paren = (prec == 2 && quant) || sp;
            if (paren) dsr1_strbuf_add(b, "(", 1);
            dsr1_strbuf_add(b, x->text, x->len);
            if (paren) dsr1_strbuf_add(b, ")", 1);
        }
        break;
    }
    case X_RULE:
        dsr1_strbuf_str(b, c->rules[x->rule].name);
        break;
    case X_SEQ:
    case X_ALT: {
        int my = x->k == X_ALT ? 0 : 1;
        bool paren = prec > my;
        if (paren) dsr1_strbuf_add(b, "(", 1);
        for (int i = 0; i < x->n; i++) {
            if (i) dsr1_strbuf_str(b, my ? " " : " | ");
            print_x(c, b, x->kids[i], 1);
            if (b->n > JS_MAX_OUTPUT) return;
        }
        if (paren) dsr1_strbuf_add(b, ")", 1);
        break;
    }
    case X_REP:
        if (x->kids[0]->k == X_REP) dsr1_strbuf_add(b, "(", 1);
        print_x(c, b, x->kids[0], 2);
        if (x->kids[0]->k == X_REP) dsr1_strbuf_add(b, ")", 1);
        if (x->min == 0 && x->max == 1)
            dsr1_strbuf_add(b, "?", 1);
        else if (x->min == 0 && x->max == JS_INF)
            dsr1_strbuf_add(b, "*", 1);
        else if (x->min == 1 && x->max == JS_INF)
            dsr1_strbuf_add(b, "+", 1);
        else if (x->max == JS_INF)
            dsr1_strbuf_fmt(b, "{%d,}", x->min);
        else if (x->min == x->max)
            dsr1_strbuf_fmt(b, "{%d}", x->min);
        else
            dsr1_strbuf_fmt(b, "{%d,%d}", x->min, x->max);
        break;
    }
}

int dsr1__js_emit(js_ctx *c, int root, js_buf *b)
{
    /* least fixpoint of productivity; later rules are mostly children, so go backwards */
    for (bool changed = true; changed;) {
        changed = false;
        c->epoch++;
        for (int i = c->nrules; i-- > 0;)
            if (!c->rules[i].productive && c->rules[i].body && productive(c, c->rules[i].body))
                c->rules[i].productive = changed = true;
    }
    if (!c->rules[root].productive)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "JSON Schema: no JSON value satisfies the schema (a false schema, "
                          "contradicting keywords, or a $ref cycle with no base case)");
    for (int i = c->nrules; i-- > 0;)
        if (c->rules[i].productive) c->rules[i].body = prune(c, c->rules[i].body);
    int *stack = malloc(c->nrules * sizeof *stack), sp = 0;
    if (!stack) return dsr1_error(DSR1_ERR_NOMEM, "JSON Schema: out of memory");
    c->rules[root].reachable = true;
    stack[sp++] = root;
    while (sp) {
        int r = stack[--sp];
        mark(c, c->rules[r].body, stack, &sp);
    }
    free(stack);
    for (int i = 0; i < c->nrules && !b->oom && b->n <= JS_MAX_OUTPUT; i++) {
        if (!c->rules[i].reachable) continue;
        dsr1_strbuf_str(b, c->rules[i].name);
        dsr1_strbuf_str(b, " ::= ");
        print_x(c, b, c->rules[i].body, 0);
        dsr1_strbuf_add(b, "\n", 1);
    }
    if (b->oom) return dsr1_error(DSR1_ERR_NOMEM, "JSON Schema: out of memory");
    if (b->n > JS_MAX_OUTPUT)
        return dsr1_error(DSR1_ERR_RANGE, "JSON Schema: the grammar text passes %zu bytes",
                          JS_MAX_OUTPUT);
    return 0;
}
