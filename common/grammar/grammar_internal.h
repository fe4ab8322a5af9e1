/* Internal structures of the grammar engine, shared by its files (not part of the API).
 *
 * Pipeline: grammar text (ebnf_parse.c) and /regex/ terminals (regex.c) parse to an AST of
 * byte strings, code point classes, sequences, alternations, repetitions and rule
 * references (ast.c). automaton.c turns each rule that is called (rules that are not
 * recursive are inlined into their callers) into a DFA over bytes whose edges may also
 * call a rule. earley.c runs an Earley parser over those automata (a chart of item sets,
 * one set per byte). vocab.c builds the token trie, mask.c computes masks with the
 * per-state caches, matcher.c is one request's parser. */
#ifndef DSR1_GRAMMAR_INTERNAL_H
#define DSR1_GRAMMAR_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "grammar.h"

/* ---- small growable arrays ---- */

/* Grows *p (element size sz) to hold at least n elements; false when out of memory. */
bool dsr1__grow(void **p, size_t *cap, size_t n, size_t sz);
#define DSR1_GROW(p, cap, n) dsr1__grow((void **)&(p), &(cap), (n), sizeof(*(p)))

/* ---- bump arena for the AST ---- */

typedef struct dsr1__arena_chunk dsr1__arena_chunk;
typedef struct {
    dsr1__arena_chunk *head;
    size_t used, size; /* within head */
} dsr1__arena;
void *dsr1__arena_alloc(dsr1__arena *a, size_t n); /* zeroed; NULL when out of memory */
void dsr1__arena_free(dsr1__arena *a);

/* ---- AST ---- */

typedef enum {
    DSR1__A_EMPTY,  /* matches "" */
    DSR1__A_BYTES,  /* a byte string */
    DSR1__A_CLASS,  /* one code point from sorted, disjoint [lo, hi] ranges */
    DSR1__A_SEQ,    /* kids in order */
    DSR1__A_ALT,    /* one of the kids */
    DSR1__A_REPEAT, /* kid repeated min..max times (max < 0: unbounded) */
    DSR1__A_REF,    /* rule `rule` */
} dsr1__ast_kind;

typedef struct dsr1__ast dsr1__ast;
struct dsr1__ast {
    dsr1__ast_kind kind;
    int n;        /* bytes / ranges (pairs) / kids */
    int min, max; /* REPEAT */
    int rule;     /* REF: rule index (after resolution) */
    size_t pos;   /* REF: offset of the name in the source, for errors */
    const char *name;
    int name_len;
    uint8_t *bytes;
    uint32_t *ranges; /* 2n values */
    dsr1__ast **kids;
};

typedef struct {
    const char *text;
    size_t len;
    const char *what;                /* "grammar" or "regex": the prefix of error messages */
    const dsr1_grammar_vocab *vocab; /* resolves special-token terminals (may be NULL) */
} dsr1__src;

/* Records an error at byte offset `off` of the source: "<what> LINE:COL: message". */
dsr1_status dsr1__src_error(const dsr1__src *s, size_t off, dsr1_status st, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Sorted, merged code point ranges (pairs), complement over Unicode scalar values. */
typedef struct {
    uint32_t *r;
    size_t n, cap; /* n pairs */
} dsr1__ranges;
bool dsr1__ranges_add(dsr1__ranges *rs, uint32_t lo, uint32_t hi);
void dsr1__ranges_normalize(dsr1__ranges *rs);
bool dsr1__ranges_negate(dsr1__ranges *rs);
/* \d \w \s (lower case) and their negations (upper case) into rs. */
bool dsr1__ranges_add_escape(dsr1__ranges *rs, char c);
dsr1__ast *dsr1__ast_class(dsr1__arena *a, const dsr1__ranges *rs);
dsr1__ast *dsr1__ast_new(dsr1__arena *a, dsr1__ast_kind k);
dsr1__ast *dsr1__ast_kids(dsr1__arena *a, dsr1__ast_kind k, dsr1__ast **kids, int n);
/* Decodes one UTF-8 code point at s[*i] (advancing *i); -1 when invalid. */
int32_t dsr1__utf8_decode(const uint8_t *s, size_t len, size_t *i);
int dsr1__utf8_encode(uint32_t cp, uint8_t *out);

#define DSR1__MAX_NEST 256 /* parentheses / groups deep, in grammar text and regexes */

/* Parses a regex in src->text[start, end) (the whole of it for a standalone regex). */
dsr1_status dsr1__regex_parse(dsr1__arena *a, const dsr1__src *src, size_t start, size_t end,
                              const dsr1_grammar_opts *o, dsr1__ast **out, int *terminals);

typedef struct {
    const char *name;
    int name_len;
    dsr1__ast *body;
    size_t pos;
} dsr1__rule_src;

typedef struct {
    dsr1__rule_src *rules;
    int nrules, cap;
    int root;
    int terminals;
} dsr1__rules;

/* Parses grammar text into rules (references resolved, start rule found). */
dsr1_status dsr1__ebnf_parse(dsr1__arena *a, const dsr1__src *src, const dsr1_grammar_opts *o,
                             dsr1__rules *out);

/* ---- the compiled grammar ---- */

#define DSR1__ORG_ROOT UINT32_MAX
/* Items in one Earley set: past this the grammar is too ambiguous at that point and the
 * advance fails (DSR1_ERR_RANGE) instead of slowing down without bound. */
#define DSR1__MAX_SET_ITEMS 2048

typedef struct {
    int32_t trans;  /* offset into g->trans of this state's targets, one per byte class */
    uint32_t cmap;  /* offset into g->cmaps of the rule's 256-byte class map */
    uint32_t calls; /* g->calls[calls .. calls + ncalls) */
    uint32_t ncalls;
    uint32_t rule;
    uint8_t final;       /* the rule may end here */
    uint8_t reach_calls; /* a call edge is reachable from here (else: a plain DFA) */
    uint8_t scans;       /* has a byte edge or a call edge */
    uint8_t pad;
} dsr1__gstate;

typedef struct {
    uint32_t rule, target;
} dsr1__gcall;

typedef struct {
    uint32_t start; /* its states are [start, start + nst), UINT32_MAX when not built */
    uint32_t nst, ncls;
    bool nullable, leaf; /* leaf: calls no rule (its states' masks depend on the DFA alone) */
} dsr1__grule;

/* One entry of the per-state cache (mask.c). */
typedef struct dsr1__ci dsr1__ci;
void dsr1__ci_free(dsr1__ci *c);
size_t dsr1__ci_bytes(const dsr1__ci *c, const dsr1_grammar_vocab *v);

/* A DFA state as the vocabulary's cache knows it: the automaton reachable from it (no
 * calls), numbered breadth first and serialized byte by byte. States with the same key
 * accept the same tokens in every grammar (the inside of a JSON string, a bounded string
 * with n characters left, an email address), so they share one cache entry. */
typedef struct dsr1__shared_dfa dsr1__shared_dfa;
struct dsr1__shared_dfa {
    uint64_t hash;
    uint8_t *blob;
    size_t len;
    dsr1__ci *_Atomic ci;
    dsr1__shared_dfa *next;
};
/* Finds or adds the state serialized in blob; NULL when the cache is full. */
dsr1__shared_dfa *dsr1__vocab_share_dfa(const dsr1_grammar_vocab *v, const uint8_t *blob,
                                        size_t len);
/* A leaf rule's minimized DFA, under its body with inlined rules expanded: grammars that
 * use the same rule (a JSON Schema format, the JSON string) skip building it again. */
typedef struct dsr1__dfa_entry dsr1__dfa_entry;
struct dsr1__dfa_entry {
    uint64_t hash;
    uint8_t *key;
    size_t keylen;
    uint32_t ns, ncls;
    uint8_t cmap[256];
    int32_t *trans; /* ns * ncls, local targets or -1 */
    uint8_t *final;
    dsr1__dfa_entry *next;
};
const dsr1__dfa_entry *dsr1__vocab_dfa_get(const dsr1_grammar_vocab *v, const uint8_t *key,
                                           size_t len);
void dsr1__vocab_dfa_put(const dsr1_grammar_vocab *v, const uint8_t *key, size_t len, uint32_t ns,
                         uint32_t ncls, const uint8_t *cmap, const int32_t *trans,
                         const uint8_t *final);
/* Reserves bytes of the cache's budget for one more entry; false when over budget. */
bool dsr1__vocab_reserve(const dsr1_grammar_vocab *v, size_t bytes);
void dsr1__vocab_unreserve(const dsr1_grammar_vocab *v, size_t bytes);

struct dsr1_grammar {
    const dsr1_grammar_vocab *vocab;
    dsr1__gstate *st;
    uint32_t nst;
    int32_t *trans;
    uint8_t *cmaps;
    dsr1__gcall *calls;
    dsr1__grule *rules;
    uint32_t nrules;
    uint32_t root;                        /* automaton rule index of the start rule */
    dsr1__ci *_Atomic *ci;                /* per state, filled lazily */
    struct dsr1__shared_dfa *_Atomic *sh; /* per plain-DFA state: its shared entry, lazily */
    dsr1_grammar_stats stats;
};

static inline int32_t dsr1__step(const dsr1_grammar *g, uint32_t s, uint8_t b)
{
    const dsr1__gstate *st = &g->st[s];
    return g->trans[st->trans + g->cmaps[st->cmap + b]];
}

/* Compiles parsed rules to the automata of g (g->vocab set by the caller). */
dsr1_status dsr1__automaton_build(const dsr1__rules *rs, const dsr1_grammar_opts *o,
                                  dsr1_grammar *g);
void dsr1__grammar_free_ci(dsr1_grammar *g);

/* ---- the vocabulary trie ---- */

/* Byte categories, so that a walk can take a whole subtree at once when every byte below
 * a node moves the DFA along the same states whatever the byte (the inside of a string,
 * bounded or not): ASCII letters and digits, space, other printable ASCII but the quote and
 * backslash, the quote, the backslash, controls, non-ASCII. */
#define DSR1__NBYTECAT 7
static inline uint8_t dsr1__bytecat(uint8_t b)
{
    if ((b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') || (b >= '0' && b <= '9')) return 0;
    if (b == ' ') return 1;
    if (b == '"') return 3;
    if (b == '\\') return 4;
    if (b < 0x20) return 5;
    if (b >= 0x80) return 6;
    return 2;
}

/* A UTF-8 decoder over "safe text" (JSON string content: no quote, backslash or control),
 * shared by the trie's safe-text runs (vocab.c) and the DFA side of the subtree shortcut
 * (mask.c): state 0 is a character boundary; 1-3 expect that many more continuation bytes;
 * 4-7 are the restricted second bytes after E0, ED, F0, F4. -1: not safe text. */
int dsr1__safe_utf8_next(int ds, uint8_t b);

/* Preorder trie node (the root itself is not stored): the byte on the edge into it, its
 * depth (1 = first byte) and the index one past its subtree. */
typedef struct {
    uint32_t end;
    uint32_t tok; /* a token ending here (UINT32_MAX: none; more: see tok_lo) */
    uint16_t depth;
    uint8_t byte;
    uint8_t ntok; /* tokens ending here, saturated at 255 */
} dsr1__tnode;

/* A trie of token byte strings (the vocabulary's). The tokens under node i are toks[tok_lo[i] ..
 * tok_lo[nodes[i].end]), those ending at it toks[tok_lo[i] .. tok_lo[i + 1]). */
typedef struct {
    const dsr1__tnode *nodes;
    uint32_t nnodes;
    const uint32_t *toks, *tok_lo;
} dsr1__trie_view;

/* Special tokens in the automata: a special token matches the 4 bytes FF, then its id in
 * three 7-bit groups (high first) each with bit 7 set. Grammar text is UTF-8, which never
 * contains FF, so text cannot match a special token nor a special token text; vocabulary
 * tokens whose bytes contain FF are dropped from the trie (no grammar could allow them). */
#define DSR1__SPECIAL_BYTE 0xffu
#define DSR1__SPECIAL_LEN  4
#define DSR1__SPECIAL_MAX  (1 << 21) /* ids representable */
static inline void dsr1__special_bytes(int32_t id, uint8_t out[DSR1__SPECIAL_LEN])
{
    out[0] = DSR1__SPECIAL_BYTE;
    out[1] = (uint8_t)(0x80u | ((uint32_t)id >> 14 & 0x7fu));
    out[2] = (uint8_t)(0x80u | ((uint32_t)id >> 7 & 0x7fu));
    out[3] = (uint8_t)(0x80u | ((uint32_t)id & 0x7fu));
}
/* The id of the special token whose text is text[0 .. len), -1 when there is none. */
int32_t dsr1__vocab_special(const dsr1_grammar_vocab *v, const char *text, size_t len);

#define DSR1__SHARED_BUCKETS   256
#define DSR1__SHARED_MAX_DFAS  4096
#define DSR1__SHARED_MAX_BYTES ((size_t)256 << 20)

struct dsr1_grammar_vocab {
    int32_t n, eos;
    pthread_mutex_t lock; /* the shared DFA table (entries are never removed) */
    dsr1__shared_dfa *shared[DSR1__SHARED_BUCKETS];
    size_t nshared;
    _Atomic size_t shared_bytes;
    dsr1__dfa_entry *dfas[DSR1__SHARED_BUCKETS]; /* leaf rule DFAs (never removed) */
    size_t ndfas, dfa_bytes;
    uint8_t *bytes;
    uint64_t *off;
    uint32_t *len;
    uint32_t *sorted; /* ids of matchable tokens sorted by their bytes */
    uint32_t nsorted;
    dsr1__tnode *nodes;
    uint32_t nnodes;
    uint32_t *tok_lo; /* per node (+ sentinel): first index in sorted of its subtree */
    uint8_t *subcat;  /* per node: the byte categories (dsr1__bytecat) below it; bit 7:
                         what is below is safe text from a character boundary (whole or
                         partial UTF-8 characters, no quote, backslash or control) */
    uint8_t *below;   /* per node: how many bytes its longest descendant adds (saturated) */
    uint32_t maxlen;
    /* The safe-text split (mask.c): safe_le + c * mask words: the tokens whose bytes are all
     * safe text from a character boundary (as subcat's bit 7) and begin at most c characters
     * (c <= maxlen); the exception trie (xnodes ..., as nodes ...) holds every other token
     * of the trie. no_split: masks walk the whole trie (tests compare the two). */
    uint32_t *safe_le;
    uint32_t *xsorted, nxsorted, *xtok_lo, nxnodes;
    dsr1__tnode *xnodes;
    uint8_t *xsubcat, *xbelow;
    bool no_split;
    /* special tokens that grammars may name: ids, and their texts sp_text[sp_off[i] ..
     * sp_off[i + 1]) */
    uint32_t nspecial;
    int32_t *sp_id;
    size_t *sp_off;
    char *sp_text;
};

/* Builds a preorder trie over n byte strings given in sorted order (duplicates allowed);
 * a node's tok is ids[i] (i when ids is NULL) of the first string ending there, `none`
 * where none ends; node_of[i]
 * (optional) receives the node where string i ends, tok_lo as above. */
dsr1_status dsr1__trie_build(uint32_t n, const uint8_t *const *s, const uint32_t *len,
                             const uint32_t *ids, uint32_t none, dsr1__tnode **nodes,
                             uint32_t *nnodes, uint32_t *tok_lo_out, uint32_t *node_of);

/* ---- Earley chart ---- */

typedef struct {
    uint32_t st, org;
} dsr1__item;

/* An item of a closed set waiting for `rule` to complete, then moving to `target`. */
typedef struct {
    uint32_t rule, target, org;
} dsr1__waiter;

typedef struct {
    const dsr1_grammar *g;
    dsr1__item *it;
    size_t n, cap;
    /* per set k: its waiters cx[cxoff[k] .. cxoff[k + 1]) sorted by rule when cxon[k]
     * (large sets only; small ones are scanned) */
    dsr1__waiter *cx;
    size_t ncx, cxcap;
    uint32_t *cxoff;
    uint8_t *cxon;
    uint32_t *set; /* set k = it[set[k] .. set[k+1]); set[nset] == n */
    size_t nset, setcap;
    uint8_t *rootdone; /* per set: an item with origin ORG_ROOT completed there */
    uint64_t *hkey;
    uint32_t *hgen;
    uint32_t hcap, gen;
    bool oom;      /* out of memory, or a set past DSR1__MAX_SET_ITEMS (too ambiguous) */
    bool overflow; /* the latter */
} dsr1__chart;

void dsr1__chart_init(dsr1__chart *c, const dsr1_grammar *g);
void dsr1__chart_free(dsr1__chart *c);
void dsr1__chart_clear(dsr1__chart *c);
/* Starts a new set; add items with dsr1__chart_add, then dsr1__chart_close. */
bool dsr1__chart_begin(dsr1__chart *c);
bool dsr1__chart_add(dsr1__chart *c, uint32_t st, uint32_t org);
/* Closes the last set (predictions, completions); false (set removed) when empty. */
bool dsr1__chart_close(dsr1__chart *c);
/* Scans byte b from the last set into a new one; false (nothing added) when no item can. */
bool dsr1__chart_scan(dsr1__chart *c, uint8_t b);
/* Adds to the open set the items of set org waiting for `rule`, advanced over it. */
void dsr1__chart_complete(dsr1__chart *c, uint32_t rule, uint32_t org);
static inline void dsr1__chart_truncate(dsr1__chart *c, size_t nset)
{
    c->nset = nset;
    c->n = c->set[nset];
    c->ncx = c->cxoff[nset];
}

/* ---- masks ---- */

typedef struct dsr1__scratch dsr1__scratch;
dsr1__scratch *dsr1__scratch_new(const dsr1_grammar *g);
void dsr1__scratch_free(dsr1__scratch *s);
/* Trie and suffix-trie nodes visited by the masks computed with s (a deterministic measure
 * of their work; dsr1_matcher_mask_work). */
uint64_t dsr1__scratch_work(const dsr1__scratch *s);
/* Computes the cache of every plain-DFA state of g (vocabulary warm-up). */
void dsr1__grammar_warm(const dsr1_grammar *g);
/* The token mask of the chart's last set (text tokens only; the caller adds eos). */
void dsr1__mask_compute(const dsr1_grammar *g, dsr1__chart *c, dsr1__scratch *s, uint32_t *mask);

#endif
