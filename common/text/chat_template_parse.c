/* Chat-template parser: tokens -> statement tree, by recursive descent with Jinja2's
 * grammar and operator precedence (jinja2/parser.py), loosest first:
 *   x if c else y  <  or  <  and  <  not  <  == != < <= > >= in, not in  <  + -
 *   <  ~  <  * / // %  <  **  <  unary - +  <  primary . [] () | is
 * Statements: if/elif/else, for (tuple targets, `if` filter, else), set (name or
 * namespace attribute), break, continue, and transformers' generation/endgeneration
 * markers (rendered as their body). Anything else (macro, call, include, block set, ...)
 * is a DSR1_ERR_UNSUPPORTED error naming the tag, so an unknown template fails loudly at
 * load time instead of rendering a wrong prompt. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template_internal.h"

#define MAX_DEPTH 200

typedef struct {
    ct_arena *a;
    ct_err *e;
    const ct_tokens *t;
    size_t i;
    int depth;
} parser;

static const ct_token *cur(parser *P)
{
    return &P->t->v[P->i];
}

_Noreturn static void fail(parser *P, dsr1_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
_Noreturn static void fail(parser *P, dsr1_status st, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    dsr1__ct_fail(P->e, st, cur(P)->line, "%s", msg);
}

static const char *describe(const ct_token *t)
{
    switch (t->k) {
    case TK_TEXT:
        return "template text";
    case TK_VAR_BEGIN:
        return "'{{'";
    case TK_VAR_END:
        return "'}}'";
    case TK_BLOCK_BEGIN:
        return "'{%'";
    case TK_BLOCK_END:
        return "'%}'";
    case TK_NAME:
        return "a name";
    case TK_STRING:
        return "a string";
    case TK_INT:
    case TK_FLOAT:
        return "a number";
    case TK_OP:
        return "an operator";
    case TK_EOF:
        return "the end of the template";
    }
    return "?";
}

static bool is_op(parser *P, const char *op)
{
    const ct_token *t = cur(P);
    return t->k == TK_OP && t->s.n == strlen(op) && !memcmp(t->s.p, op, t->s.n);
}

static bool is_name(parser *P, const char *name)
{
    const ct_token *t = cur(P);
    return t->k == TK_NAME && !strcmp(t->s.p, name);
}

static bool skip_op(parser *P, const char *op)
{
    if (!is_op(P, op)) return false;
    P->i++;
    return true;
}

static bool skip_name(parser *P, const char *name)
{
    if (!is_name(P, name)) return false;
    P->i++;
    return true;
}

static void expect_op(parser *P, const char *op)
{
    if (!skip_op(P, op)) fail(P, DSR1_ERR_FORMAT, "expected '%s', got %s", op, describe(cur(P)));
}

static const char *expect_name(parser *P)
{
    if (cur(P)->k != TK_NAME) fail(P, DSR1_ERR_FORMAT, "expected a name, got %s", describe(cur(P)));
    return P->t->v[P->i++].s.p;
}

static ct_expr *node(parser *P, ct_xkind k)
{
    ct_expr *x = dsr1__ct_alloc(P->a, P->e, sizeof(*x));
    x->k = k;
    x->line = cur(P)->line;
    return x;
}

/* Growable argument arrays while parsing a call or literal. */
typedef struct {
    ct_expr **v;
    const char **kw;
    size_t n, cap;
} arglist;

static void arg_push(parser *P, arglist *l, ct_expr *x, const char *kw)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        ct_expr **v = dsr1__ct_alloc(P->a, P->e, cap * sizeof(*v));
        const char **k = dsr1__ct_alloc(P->a, P->e, cap * sizeof(*k));
        if (l->n) {
            memcpy(v, l->v, l->n * sizeof(*v));
            memcpy(k, l->kw, l->n * sizeof(*k));
        }
        l->v = v;
        l->kw = k;
        l->cap = cap;
    }
    l->v[l->n] = x;
    l->kw[l->n++] = kw;
}

static ct_expr *parse_expr(parser *P);
static ct_expr *parse_or(parser *P);
static ct_expr *parse_unary(parser *P, bool with_filter);
static ct_expr *parse_primary(parser *P);
static ct_expr *parse_postfix(parser *P, ct_expr *x);

static void enter(parser *P)
{
    if (++P->depth > MAX_DEPTH) fail(P, DSR1_ERR_UNSUPPORTED, "expression nested too deep");
}

/* (args) after a callee, filter or test: positional then keyword arguments. */
static void parse_call_args(parser *P, ct_expr *x)
{
    arglist l = {0};
    expect_op(P, "(");
    while (!is_op(P, ")")) {
        if (l.n) expect_op(P, ",");
        if (is_op(P, ")")) break;
        if (is_op(P, "*") || is_op(P, "**"))
            fail(P, DSR1_ERR_UNSUPPORTED, "*args / **kwargs in calls are not supported");
        const char *kw = NULL;
        if (cur(P)->k == TK_NAME && P->i + 1 < P->t->n && P->t->v[P->i + 1].k == TK_OP &&
            P->t->v[P->i + 1].s.n == 1 && P->t->v[P->i + 1].s.p[0] == '=') {
            kw = expect_name(P);
            P->i++;
        } else if (l.n && l.kw[l.n - 1]) {
            fail(P, DSR1_ERR_FORMAT, "a positional argument follows a keyword argument");
        }
        arg_push(P, &l, parse_expr(P), kw);
    }
    expect_op(P, ")");
    x->args = l.v;
    x->kw = l.kw;
    x->nargs = l.n;
}

/* a[...] after '[': an index or a slice. */
static ct_expr *parse_subscript(parser *P, ct_expr *target)
{
    ct_expr *parts[3] = {NULL, NULL, NULL};
    int nparts = 0;
    bool slice = false;
    for (;;) {
        if (!is_op(P, ":") && !is_op(P, "]")) parts[nparts] = parse_expr(P);
        if (skip_op(P, ":")) {
            slice = true;
            if (++nparts > 2) fail(P, DSR1_ERR_FORMAT, "too many ':' in a slice");
            continue;
        }
        break;
    }
    expect_op(P, "]");
    ct_expr *x = node(P, slice ? X_SLICE : X_GETITEM);
    x->a = target;
    if (slice) {
        x->b = parts[0], x->c = parts[1], x->d = parts[2];
    } else {
        if (!parts[0]) fail(P, DSR1_ERR_FORMAT, "empty subscript");
        x->b = parts[0];
    }
    return x;
}

static ct_expr *parse_postfix(parser *P, ct_expr *x)
{
    for (;;) {
        if (skip_op(P, ".")) {
            ct_expr *g;
            if (cur(P)->k == TK_INT) { /* a.0 is a[0] */
                g = node(P, X_GETITEM);
                g->b = node(P, X_LIT);
                g->b->lit = ct_int(P->t->v[P->i++].i);
            } else {
                g = node(P, X_GETATTR);
                g->name = expect_name(P);
            }
            g->a = x;
            x = g;
        } else if (skip_op(P, "[")) {
            x = parse_subscript(P, x);
        } else if (is_op(P, "(")) {
            ct_expr *c = node(P, X_CALL);
            c->a = x;
            parse_call_args(P, c);
            x = c;
        } else {
            return x;
        }
    }
}

/* `| name(args)` and `is [not] name args` chains. */
static ct_expr *parse_filter_expr(parser *P, ct_expr *x)
{
    for (;;) {
        if (skip_op(P, "|")) {
            ct_expr *f = node(P, X_FILTER);
            f->a = x;
            f->name = expect_name(P);
            if (is_op(P, "(")) parse_call_args(P, f);
            x = f;
        } else if (skip_name(P, "is")) {
            ct_expr *t = node(P, X_TEST);
            t->a = x;
            t->negate = skip_name(P, "not");
            t->name = expect_name(P);
            const ct_token *c = cur(P);
            if (is_op(P, "(")) {
                parse_call_args(P, t);
            } else if ((c->k == TK_NAME || c->k == TK_STRING || c->k == TK_INT ||
                        c->k == TK_FLOAT || is_op(P, "[") || is_op(P, "{")) &&
                       !is_name(P, "else") && !is_name(P, "or") && !is_name(P, "and")) {
                /* Jinja's one-argument form: `x is divisibleby 3`, `x is sameas none` */
                if (is_name(P, "is")) fail(P, DSR1_ERR_FORMAT, "tests cannot be chained");
                arglist l = {0};
                arg_push(P, &l, parse_postfix(P, parse_primary(P)), NULL);
                t->args = l.v, t->kw = l.kw, t->nargs = 1;
            }
            x = t;
        } else if (is_op(P, "(")) {
            ct_expr *c = node(P, X_CALL);
            c->a = x;
            parse_call_args(P, c);
            x = c;
        } else {
            return x;
        }
    }
}

/* [a, b], (a, b), {k: v}: the opening bracket is already consumed. */
static ct_expr *parse_sequence(parser *P, ct_xkind k, const char *close)
{
    ct_expr *x = node(P, k);
    arglist l = {0};
    while (!is_op(P, close)) {
        if (l.n) expect_op(P, ",");
        if (is_op(P, close)) break;
        arg_push(P, &l, parse_expr(P), NULL);
        if (k == X_DICT) {
            expect_op(P, ":");
            arg_push(P, &l, parse_expr(P), NULL);
        }
    }
    expect_op(P, close);
    x->args = l.v;
    x->nargs = l.n;
    return x;
}

static ct_expr *parse_primary(parser *P)
{
    const ct_token *t = cur(P);
    ct_expr *x;
    enter(P);
    if (t->k == TK_NAME) {
        x = node(P, X_LIT);
        const char *n = t->s.p;
        if (!strcmp(n, "true") || !strcmp(n, "True"))
            x->lit = ct_bool(true);
        else if (!strcmp(n, "false") || !strcmp(n, "False"))
            x->lit = ct_bool(false);
        else if (!strcmp(n, "none") || !strcmp(n, "None"))
            x->lit = ct_none();
        else
            x->k = X_NAME, x->name = n;
        P->i++;
    } else if (t->k == TK_STRING) {
        /* adjacent literals concatenate: 'a' 'b' == 'ab' */
        size_t total = 0, j = P->i;
        for (; j < P->t->n && P->t->v[j].k == TK_STRING; j++) total += P->t->v[j].s.n;
        char *s = dsr1__ct_alloc(P->a, P->e, total + 1);
        size_t k = 0;
        for (; P->i < j; P->i++) {
            memcpy(s + k, P->t->v[P->i].s.p, P->t->v[P->i].s.n);
            k += P->t->v[P->i].s.n;
        }
        x = node(P, X_LIT);
        x->lit = ct_strv(s, total);
    } else if (t->k == TK_INT || t->k == TK_FLOAT) {
        x = node(P, X_LIT);
        x->lit = t->k == TK_INT ? ct_int(t->i) : ct_float(t->f);
        P->i++;
    } else if (skip_op(P, "(")) {
        if (skip_op(P, ")")) {
            x = node(P, X_TUPLE);
        } else {
            x = parse_expr(P);
            if (is_op(P, ",")) { /* a tuple */
                ct_expr *tu = node(P, X_TUPLE);
                arglist l = {0};
                arg_push(P, &l, x, NULL);
                while (skip_op(P, ",") && !is_op(P, ")")) arg_push(P, &l, parse_expr(P), NULL);
                tu->args = l.v;
                tu->nargs = l.n;
                x = tu;
            }
            expect_op(P, ")");
        }
    } else if (skip_op(P, "[")) {
        x = parse_sequence(P, X_LIST, "]");
    } else if (skip_op(P, "{")) {
        x = parse_sequence(P, X_DICT, "}");
    } else {
        fail(P, DSR1_ERR_FORMAT, "unexpected %s in an expression", describe(t));
    }
    P->depth--;
    return x;
}

static ct_expr *parse_unary(parser *P, bool with_filter)
{
    ct_expr *x;
    enter(P);
    if (skip_op(P, "-")) {
        x = node(P, X_NEG);
        x->a = parse_unary(P, false);
    } else if (skip_op(P, "+")) {
        x = node(P, X_POS);
        x->a = parse_unary(P, false);
    } else {
        x = parse_primary(P);
    }
    x = parse_postfix(P, x);
    if (with_filter) x = parse_filter_expr(P, x);
    P->depth--;
    return x;
}

static ct_expr *binop(parser *P, ct_expr *a, const char *op, ct_expr *b)
{
    ct_expr *x = node(P, X_BIN);
    x->a = a, x->b = b, x->op = op;
    return x;
}

static ct_expr *parse_pow(parser *P)
{
    ct_expr *x = parse_unary(P, true);
    while (skip_op(P, "**")) x = binop(P, x, "**", parse_unary(P, true));
    return x;
}

static ct_expr *parse_math2(parser *P)
{
    ct_expr *x = parse_pow(P);
    for (;;) {
        const char *op = is_op(P, "*")    ? "*"
                         : is_op(P, "/")  ? "/"
                         : is_op(P, "//") ? "//"
                         : is_op(P, "%")  ? "%"
                                          : NULL;
        if (!op) return x;
        P->i++;
        x = binop(P, x, op, parse_pow(P));
    }
}

static ct_expr *parse_concat(parser *P)
{
    ct_expr *x = parse_math2(P);
    while (skip_op(P, "~")) x = binop(P, x, "~", parse_math2(P));
    return x;
}

static ct_expr *parse_math1(parser *P)
{
    ct_expr *x = parse_concat(P);
    for (;;) {
        const char *op = is_op(P, "+") ? "+" : is_op(P, "-") ? "-" : NULL;
        if (!op) return x;
        P->i++;
        x = binop(P, x, op, parse_concat(P));
    }
}

static ct_expr *parse_compare(parser *P)
{
    ct_expr *first = parse_math1(P);
    arglist l = {0};
    const char **ops = NULL;
    size_t nops = 0, cap = 0;
    for (;;) {
        const char *op = NULL;
        static const char *const cmp[] = {"==", "!=", "<", "<=", ">", ">="};
        for (size_t k = 0; k < 6 && !op; k++)
            if (is_op(P, cmp[k])) op = cmp[k];
        if (op) {
            P->i++;
        } else if (skip_name(P, "in")) {
            op = "in";
        } else if (is_name(P, "not") && P->i + 1 < P->t->n && P->t->v[P->i + 1].k == TK_NAME &&
                   !strcmp(P->t->v[P->i + 1].s.p, "in")) {
            P->i += 2;
            op = "notin";
        } else {
            break;
        }
        if (!l.n) arg_push(P, &l, first, NULL);
        arg_push(P, &l, parse_math1(P), NULL);
        if (nops == cap) {
            cap = cap ? cap * 2 : 4;
            const char **o = dsr1__ct_alloc(P->a, P->e, cap * sizeof(*o));
            if (nops) memcpy(o, ops, nops * sizeof(*o));
            ops = o;
        }
        ops[nops++] = op;
    }
    if (!nops) return first;
    ct_expr *x = node(P, X_CMP);
    x->args = l.v;
    x->nargs = l.n;
    x->ops = ops;
    return x;
}

static ct_expr *parse_not(parser *P)
{
    if (skip_name(P, "not")) {
        enter(P);
        ct_expr *x = node(P, X_NOT);
        x->a = parse_not(P);
        P->depth--;
        return x;
    }
    return parse_compare(P);
}

static ct_expr *parse_and(parser *P)
{
    ct_expr *x = parse_not(P);
    while (skip_name(P, "and")) {
        ct_expr *y = node(P, X_AND);
        y->a = x, y->b = parse_not(P);
        x = y;
    }
    return x;
}

static ct_expr *parse_or(parser *P)
{
    ct_expr *x = parse_and(P);
    while (skip_name(P, "or")) {
        ct_expr *y = node(P, X_OR);
        y->a = x, y->b = parse_and(P);
        x = y;
    }
    return x;
}

static ct_expr *parse_expr(parser *P)
{
    enter(P);
    ct_expr *x = parse_or(P);
    while (skip_name(P, "if")) {
        ct_expr *c = node(P, X_COND);
        c->a = parse_or(P); /* condition */
        c->b = x;           /* value when true */
        c->c = skip_name(P, "else") ? parse_expr(P) : NULL;
        x = c;
    }
    P->depth--;
    return x;
}

/* ---- statements ---- */

static void body_push(parser *P, ct_body *b, ct_stmt *s)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 8;
        ct_stmt **v = dsr1__ct_alloc(P->a, P->e, cap * sizeof(*v));
        if (b->n) memcpy(v, b->v, b->n * sizeof(*v));
        b->v = v;
        b->cap = cap;
    }
    b->v[b->n++] = s;
}

static ct_stmt *stmt(parser *P, ct_skind k)
{
    ct_stmt *s = dsr1__ct_alloc(P->a, P->e, sizeof(*s));
    s->k = k;
    s->line = cur(P)->line;
    return s;
}

static void expect_block_end(parser *P)
{
    if (cur(P)->k != TK_BLOCK_END)
        fail(P, DSR1_ERR_FORMAT, "expected '%%}', got %s", describe(cur(P)));
    P->i++;
}

/* Parses statements into b until a `{% name %}` with name in ends (NULL-terminated);
 * returns that name with the parser just after it (before its arguments). At top level
 * (ends == NULL) parses to the end. */
static const char *parse_body(parser *P, ct_body *b, const char *const *ends);

static bool is_end(const char *name, const char *const *ends)
{
    for (; ends && *ends; ends++)
        if (!strcmp(name, *ends)) return true;
    return false;
}

static void parse_if(parser *P, ct_stmt *s)
{
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    ct_expr *conds[64];
    ct_body bodies[65];
    size_t n = 0;
    const char *end = "elif";
    while (!strcmp(end, "elif")) {
        if (n == 64) fail(P, DSR1_ERR_UNSUPPORTED, "more than 64 elif branches");
        conds[n] = parse_expr(P);
        expect_block_end(P);
        memset(&bodies[n], 0, sizeof(bodies[n]));
        end = parse_body(P, &bodies[n++], ends);
    }
    memset(&bodies[n], 0, sizeof(bodies[n]));
    if (!strcmp(end, "else")) {
        static const char *const endif[] = {"endif", NULL};
        expect_block_end(P);
        parse_body(P, &bodies[n], endif);
    }
    expect_block_end(P);
    s->nconds = n;
    s->conds = dsr1__ct_alloc(P->a, P->e, n * sizeof(*s->conds));
    s->bodies = dsr1__ct_alloc(P->a, P->e, (n + 1) * sizeof(*s->bodies));
    memcpy(s->conds, conds, n * sizeof(*conds));
    memcpy(s->bodies, bodies, (n + 1) * sizeof(*bodies));
}

static void parse_for(parser *P, ct_stmt *s)
{
    const char *targets[8];
    size_t n = 0;
    bool paren = skip_op(P, "(");
    do {
        if (n == 8) fail(P, DSR1_ERR_UNSUPPORTED, "more than 8 loop variables");
        targets[n++] = expect_name(P);
    } while (skip_op(P, ","));
    if (paren) expect_op(P, ")");
    if (!skip_name(P, "in")) fail(P, DSR1_ERR_FORMAT, "expected 'in' in a for loop");
    /* the iterable stops before a filter `if`: parse below the conditional expression */
    s->expr = parse_or(P);
    if (skip_name(P, "if")) s->filter = parse_expr(P);
    if (is_name(P, "recursive"))
        fail(P, DSR1_ERR_UNSUPPORTED, "recursive for loops are not supported");
    expect_block_end(P);
    s->targets = dsr1__ct_alloc(P->a, P->e, n * sizeof(*targets));
    memcpy(s->targets, targets, n * sizeof(*targets));
    s->ntargets = n;
    static const char *const ends[] = {"else", "endfor", NULL};
    const char *end = parse_body(P, &s->body, ends);
    if (!strcmp(end, "else")) {
        static const char *const endfor[] = {"endfor", NULL};
        expect_block_end(P);
        parse_body(P, &s->else_body, endfor);
    }
    expect_block_end(P);
}

static void parse_set(parser *P, ct_stmt *s)
{
    const char *name = expect_name(P);
    if (skip_op(P, ".")) s->attr = expect_name(P);
    if (is_op(P, ","))
        fail(P, DSR1_ERR_UNSUPPORTED,
             "{%% set a, b = ... %%} (tuple assignment) is not "
             "supported");
    if (!skip_op(P, "="))
        fail(P, DSR1_ERR_UNSUPPORTED,
             "block assignments ({%% set %s %%}...{%% endset %%}) "
             "are not supported",
             name);
    s->targets = dsr1__ct_alloc(P->a, P->e, sizeof(*s->targets));
    s->targets[0] = name;
    s->ntargets = 1;
    s->expr = parse_expr(P);
    expect_block_end(P);
}

static const char *parse_body(parser *P, ct_body *b, const char *const *ends)
{
    enter(P);
    for (;;) {
        const ct_token *t = cur(P);
        if (t->k == TK_EOF) {
            if (ends)
                fail(P, DSR1_ERR_FORMAT,
                     "unexpected end of template, expected "
                     "{%% %s %%}",
                     ends[0]);
            P->depth--;
            return NULL;
        }
        if (t->k == TK_TEXT) {
            ct_stmt *s = stmt(P, S_TEXT);
            s->text = t->s;
            body_push(P, b, s);
            P->i++;
        } else if (t->k == TK_VAR_BEGIN) {
            P->i++;
            ct_stmt *s = stmt(P, S_PRINT);
            s->expr = parse_expr(P);
            if (cur(P)->k != TK_VAR_END)
                fail(P, DSR1_ERR_FORMAT, "expected '}}', got %s", describe(cur(P)));
            P->i++;
            body_push(P, b, s);
        } else if (t->k == TK_BLOCK_BEGIN) {
            P->i++;
            const char *name = expect_name(P);
            if (is_end(name, ends)) {
                P->depth--;
                return name;
            }
            ct_stmt *s = NULL;
            if (!strcmp(name, "if")) {
                s = stmt(P, S_IF);
                parse_if(P, s);
            } else if (!strcmp(name, "for")) {
                s = stmt(P, S_FOR);
                parse_for(P, s);
            } else if (!strcmp(name, "set")) {
                s = stmt(P, S_SET);
                parse_set(P, s);
            } else if (!strcmp(name, "break") || !strcmp(name, "continue")) {
                s = stmt(P, name[0] == 'b' ? S_BREAK : S_CONTINUE);
                expect_block_end(P);
            } else if (!strcmp(name, "generation")) {
                /* transformers' assistant-mask marker: its body renders as usual */
                static const char *const endgen[] = {"endgeneration", NULL};
                expect_block_end(P);
                parse_body(P, b, endgen);
                expect_block_end(P);
                continue;
            } else if (!strncmp(name, "end", 3) || !strcmp(name, "elif") || !strcmp(name, "else")) {
                fail(P, DSR1_ERR_FORMAT, "unexpected {%% %s %%}", name);
            } else {
                fail(P, DSR1_ERR_UNSUPPORTED, "the {%% %s %%} tag is not supported", name);
            }
            body_push(P, b, s);
        } else {
            fail(P, DSR1_ERR_FORMAT, "unexpected %s", describe(t));
        }
    }
}

void dsr1__ct_parse(ct_arena *a, ct_err *e, const ct_tokens *toks, ct_body *out)
{
    parser P = {a, e, toks, 0, 0};
    memset(out, 0, sizeof(*out));
    parse_body(&P, out, NULL);
}
