/* Internals of the chat-template engine, a subset of Jinja2 (see chat_template.h for
 * what the subset is). Shared by its files only:
 *   chat_template_lex.c    source -> tokens, with Jinja's whitespace control
 *   chat_template_parse.c  tokens -> syntax tree
 *   chat_template_value.c  run-time values: Python semantics of truth, equality, str()
 *   chat_template_eval.c   expressions, filters, tests, methods
 *   chat_template.c        statements, rendering, loading tokenizer_config.json
 *
 * Memory: a compiled template and each render own one arena; every node, token, string
 * and value is carved from it and freed with it, so nothing inside is freed one by one.
 * Errors: the lexer, parser and renderer stop at the first error by longjmp'ing to their
 * entry point (ct_fail), which records the message and frees the arena; the arena is the
 * only resource, so unwinding cannot leak. */
#ifndef DSR1_CHAT_TEMPLATE_INTERNAL_H
#define DSR1_CHAT_TEMPLATE_INTERNAL_H

#include <setjmp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* ---- arena ---- */
typedef struct ct_block ct_block_mem;
typedef struct {
    ct_block_mem *head;
    size_t total;
    size_t limit; /* bytes; exceeding it is an error, not an abort */
} ct_arena;

/* ---- error context: where ct_fail jumps to ---- */
typedef struct {
    jmp_buf jmp;
    dsr1_status status;
    char msg[512];
} ct_err;

_Noreturn void dsr1__ct_fail(ct_err *e, dsr1_status st, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Zeroed memory from the arena; fails through e when out of memory or over the limit. */
void *dsr1__ct_alloc(ct_arena *a, ct_err *e, size_t n);
void dsr1__ct_arena_free(ct_arena *a);
char *dsr1__ct_strdup(ct_arena *a, ct_err *e, const char *s, size_t n);

/* ---- values ---- */
typedef enum {
    CT_UNDEF, /* jinja2.Undefined: prints as "", false, error on most operations */
    CT_NONE,
    CT_BOOL,
    CT_INT,
    CT_FLOAT,
    CT_STR,
    CT_LIST,   /* also tuples (flag) */
    CT_DICT,   /* also namespace() and loop (flag) */
    CT_METHOD, /* a bound method: recv.name */
    CT_FUNC,   /* a global function: namespace, range, raise_exception, dict */
} ct_type;

typedef struct ct_value ct_value;
typedef struct ct_list ct_list;
typedef struct ct_dict ct_dict;

typedef struct {
    const char *p;
    size_t n;
} ct_str;

struct ct_value {
    ct_type t;
    union {
        bool b;
        int64_t i;
        double f;
        ct_str s;
        ct_list *l;
        ct_dict *d;
        struct {
            const ct_value *recv;
            const char *name;
        } m;
        const char *fn;   /* CT_FUNC: its name */
        const char *hint; /* CT_UNDEF: what was missing, for the error if it is used */
    };
};

struct ct_list {
    ct_value *v;
    size_t n, cap;
    bool tuple;
};

enum { CT_DICT_PLAIN = 0, CT_DICT_NAMESPACE = 1, CT_DICT_LOOP = 2 };

struct ct_dict {
    ct_str *k;
    ct_value *v;
    size_t n, cap;
    int kind;
};

/* A variable scope: the template's top level, or one iteration of a for loop. */
typedef struct ct_frame ct_frame;
struct ct_frame {
    ct_frame *parent;
    ct_dict *vars;
};

/* Evaluation context of one render. */
typedef struct {
    ct_arena arena;
    ct_err err;
    ct_frame *frame;
    char *out; /* rendered text (malloc'd, not in the arena: it is the result) */
    size_t out_len, out_cap;
    int line;       /* line of the statement being run, for messages */
    uint64_t steps; /* statements run: bounds runaway loops */
} ct_ctx;

#define CT_FAIL(c, ...) dsr1__ct_fail(&(c)->err, DSR1_ERR_FORMAT, (c)->line, __VA_ARGS__)

static inline ct_value ct_undef(void)
{
    ct_value v = {.t = CT_UNDEF};
    return v;
}
static inline ct_value ct_none(void)
{
    ct_value v = {.t = CT_NONE};
    return v;
}
static inline ct_value ct_bool(bool b)
{
    ct_value v = {.t = CT_BOOL, .b = b};
    return v;
}
static inline ct_value ct_int(int64_t i)
{
    ct_value v = {.t = CT_INT, .i = i};
    return v;
}
static inline ct_value ct_float(double f)
{
    ct_value v = {.t = CT_FLOAT, .f = f};
    return v;
}
static inline ct_value ct_strv(const char *p, size_t n)
{
    ct_value v = {.t = CT_STR, .s = {p, n}};
    return v;
}

const char *dsr1__ct_type_name(const ct_value *v);
bool dsr1__ct_truthy(const ct_value *v);
bool dsr1__ct_equal(const ct_value *a, const ct_value *b);
/* Python str(): the text {{ v }} prints. Lists and dicts are an error (their repr is
 * Python-specific and no chat template prints one). */
ct_str dsr1__ct_to_str(ct_ctx *c, const ct_value *v);
/* Python's repr() of a float, which is also what str() gives. */
size_t dsr1__ct_format_float(double f, char *buf, size_t cap);
/* json.dumps(v, ensure_ascii=False, indent=indent or none when < 0), as transformers'
 * tojson filter does. */
ct_str dsr1__ct_tojson(ct_ctx *c, const ct_value *v, int indent);

ct_list *dsr1__ct_list_new(ct_ctx *c, size_t cap);
void dsr1__ct_list_push(ct_ctx *c, ct_list *l, ct_value v);
ct_dict *dsr1__ct_dict_new(ct_ctx *c, size_t cap, int kind);
/* Sets key (copied by reference: the key must live in the arena or longer). */
void dsr1__ct_dict_set(ct_ctx *c, ct_dict *d, const char *k, size_t kn, ct_value v);
/* NULL when absent. */
ct_value *dsr1__ct_dict_get(const ct_dict *d, const char *k, size_t kn);

/* Converts a parsed JSON value (jansson json_t *) into arena values. */
ct_value dsr1__ct_from_json(ct_ctx *c, const void *json);

/* Output buffer. */
void dsr1__ct_emit(ct_ctx *c, const char *s, size_t n);

/* Python str.isspace() for one code point. */
bool dsr1__ct_is_py_space(uint32_t cp);
/* Decodes the UTF-8 character at s[i] (valid input assumed; invalid bytes read as
 * themselves); *n gets its length. */
uint32_t dsr1__ct_utf8_at(const char *s, size_t len, size_t i, size_t *n);

/* ---- tokens ---- */
typedef enum {
    TK_TEXT,
    TK_VAR_BEGIN,
    TK_VAR_END,
    TK_BLOCK_BEGIN,
    TK_BLOCK_END,
    TK_NAME,
    TK_STRING, /* s: decoded value */
    TK_INT,
    TK_FLOAT,
    TK_OP, /* s: the operator */
    TK_EOF,
} ct_tkind;

typedef struct {
    ct_tkind k;
    int line;
    ct_str s;
    int64_t i;
    double f;
} ct_token;

typedef struct {
    ct_token *v;
    size_t n, cap;
} ct_tokens;

/* Tokenizes src the way Jinja's lexer does with trim_blocks and lstrip_blocks on
 * (transformers' settings). */
void dsr1__ct_lex(ct_arena *a, ct_err *e, const char *src, size_t len, ct_tokens *out);

/* ---- syntax tree ---- */
typedef enum {
    X_LIT,
    X_NAME,
    X_GETATTR, /* a.name */
    X_GETITEM, /* a[b] */
    X_SLICE,   /* a[b:c:d], each of b, c, d may be NULL */
    X_CALL,    /* a(args) */
    X_FILTER,  /* a | name(args) */
    X_TEST,    /* a is [not] name(args) */
    X_NOT,
    X_NEG,
    X_POS,
    X_BIN, /* a op b: + - * / // % ** ~ */
    X_AND,
    X_OR,
    X_CMP,  /* args[0] ops[0] args[1] ops[1] ... */
    X_COND, /* b if a else c */
    X_LIST,
    X_TUPLE,
    X_DICT, /* args: k0, v0, k1, v1, ... */
} ct_xkind;

typedef struct ct_expr ct_expr;
struct ct_expr {
    ct_xkind k;
    int line;
    ct_value lit;
    const char *name;
    ct_expr *a, *b, *c, *d;
    ct_expr **args;
    const char **kw; /* per arg: keyword name, or NULL for positional */
    const char **ops;
    size_t nargs;
    const char *op;
    bool negate;
};

typedef struct ct_stmt ct_stmt;
typedef struct {
    ct_stmt **v;
    size_t n, cap;
} ct_body;

typedef enum { S_TEXT, S_PRINT, S_IF, S_FOR, S_SET, S_BREAK, S_CONTINUE } ct_skind;

struct ct_stmt {
    ct_skind k;
    int line;
    ct_str text;     /* S_TEXT */
    ct_expr *expr;   /* S_PRINT, S_SET value, S_FOR iterable */
    ct_expr **conds; /* S_IF: one per branch (if, elifs) */
    ct_body *bodies; /* S_IF: one per branch, plus the else body at [nconds] */
    size_t nconds;
    const char **targets; /* S_FOR loop variables, S_SET: [0] name */
    size_t ntargets;
    const char *attr;  /* S_SET: ns.attr target */
    ct_expr *filter;   /* S_FOR: `for x in y if filter` */
    ct_body body;      /* S_FOR */
    ct_body else_body; /* S_FOR */
};

/* Parses tokens into a statement list. */
void dsr1__ct_parse(ct_arena *a, ct_err *e, const ct_tokens *toks, ct_body *out);

/* ---- evaluation ---- */
ct_value dsr1__ct_eval(ct_ctx *c, const ct_expr *x);
/* Variable lookup through the frames; CT_UNDEF when unknown. */
ct_value dsr1__ct_lookup(ct_ctx *c, const char *name);

#endif
