/* Internals of the tokenizer shared by its files (tokenizer.c loads and decodes,
 * tokenizer_encode.c runs the pipeline, tokenizer_bpe.c merges, tokenizer_pretok.c runs
 * the Split regexes, tokenizer_added.c finds added tokens, tokenizer_map.c hashes; UTF-8
 * checks are public, utf8.h). Not a public interface: only the files of common/text/ and
 * the tokenizer's tests include it. Everything
 * here is immutable after load, which is what makes concurrent encodes safe. */
#ifndef DSR1_TOKENIZER_INTERNAL_H
#define DSR1_TOKENIZER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "status.h"
#include "tokenizer.h"
#include "utf8.h"

/* ---- string -> id map (open addressing, keys copied into an arena) ---- */
typedef struct {
    uint32_t *slot_id;  /* id + 1; 0 = empty */
    uint32_t *slot_off; /* key offset in arena */
    uint32_t *slot_len;
    size_t mask;
    size_t count;
    char *arena;
    size_t arena_len, arena_cap;
} dsr1__strmap;

dsr1_status dsr1__strmap_init(dsr1__strmap *m, size_t expected);
void dsr1__strmap_free(dsr1__strmap *m);
/* Inserts or overwrites key -> id. */
dsr1_status dsr1__strmap_put(dsr1__strmap *m, const char *key, size_t len, int32_t id);
/* The id for key, or -1. */
int32_t dsr1__strmap_get(const dsr1__strmap *m, const char *key, size_t len);

/* ---- BPE merges: (left id, right id) -> (rank, merged id) ---- */
typedef struct {
    uint64_t key; /* left << 32 | right; UINT64_MAX = empty */
    int32_t rank;
    int32_t merged;
} dsr1__merge_slot;

typedef struct {
    dsr1__merge_slot *slots;
    size_t mask;
    size_t count;
} dsr1__merges;

dsr1_status dsr1__merges_init(dsr1__merges *m, size_t expected);
void dsr1__merges_free(dsr1__merges *m);
/* Inserts or overwrites (a, b) -> (rank, merged): a later duplicate wins, as in HF. */
void dsr1__merges_put(dsr1__merges *m, int32_t a, int32_t b, int32_t rank, int32_t merged);

static inline const dsr1__merge_slot *dsr1__merges_get(const dsr1__merges *m, int32_t a, int32_t b)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & m->mask;
    for (;;) {
        const dsr1__merge_slot *s = &m->slots[i];
        if (s->key == key) return s;
        if (s->key == UINT64_MAX) return NULL;
        i = (i + 1) & m->mask;
    }
}

/* ---- growable id vector ---- */
typedef struct {
    int32_t *v;
    size_t n, cap;
} dsr1__ids;

dsr1_status dsr1__ids_reserve(dsr1__ids *ids, size_t extra);
static inline dsr1_status dsr1__ids_push(dsr1__ids *ids, int32_t id)
{
    if (ids->n == ids->cap) {
        dsr1_status st = dsr1__ids_reserve(ids, 1);
        if (st) return st;
    }
    ids->v[ids->n++] = id;
    return DSR1_OK;
}

/* Scratch memory one BPE call reuses across words (owned by one encode call). */
typedef struct {
    int32_t *sym;  /* symbol ids */
    int32_t *prev; /* linked list over positions; -1 ends */
    int32_t *next;
    void *heap; /* heap entries for long words */
    size_t cap, heap_cap;
} dsr1__bpe_scratch;

void dsr1__bpe_scratch_free(dsr1__bpe_scratch *s);

/* Words at most this long (in bytes) use the direct O(n^2) scan, longer ones a heap. */
#define DSR1__BPE_SHORT_WORD 64

/* BPE of one pre-token (raw bytes), appending ids. force: 0 = choose by length,
 * 1 = always the scan, 2 = always the heap (tests compare the two). */
dsr1_status dsr1__bpe_word(const dsr1_tokenizer *tok, const uint8_t *word, size_t len,
                           dsr1__bpe_scratch *scratch, dsr1__ids *out, int force);

/* ---- added tokens: byte trie, longest match at a position ---- */
typedef struct {
    int32_t first_child;
    int32_t next_sibling;
    int32_t token; /* index into tok->added, -1 if no token ends here */
    uint8_t byte;
} dsr1__trie_node;

typedef struct {
    int32_t root[256]; /* child of the root per first byte, -1 = none */
    dsr1__trie_node *nodes;
    size_t n, cap;
    size_t count; /* tokens inserted */
} dsr1__trie;

void dsr1__trie_init(dsr1__trie *t);
void dsr1__trie_free(dsr1__trie *t);
dsr1_status dsr1__trie_add(dsr1__trie *t, const char *s, size_t len, int32_t token);
/* The longest token matching text[pos..]: its index (length in *mlen), or -1. */
int32_t dsr1__trie_longest(const dsr1__trie *t, const uint8_t *text, size_t len, size_t pos,
                           size_t *mlen);

typedef struct {
    char *content;
    size_t len;
    int32_t id;
    bool special, lstrip, rstrip, normalized;
} dsr1__added;

/* ---- pre-tokenizer: a sequence of Split regexes ---- */
#define DSR1__MAX_SPLITS 8

typedef struct {
    pcre2_code *re[DSR1__MAX_SPLITS];
    bool jit[DSR1__MAX_SPLITS];
    int n;
    uint32_t max_capture_pairs;
    pcre2_match_context *mctx; /* lifts the match limit; read-only, shared by threads */
} dsr1__pretok;

/* Compiles a Split pattern (HF/Oniguruma syntax) into slot p->n. `what` names it in
 * errors ("pre_tokenizer.pretokenizers[2]"). */
dsr1_status dsr1__pretok_add(dsr1__pretok *p, const char *pattern, size_t len, const char *what);
void dsr1__pretok_free(dsr1__pretok *p);
/* Rewrites \s and \S outside character classes into explicit White_Space classes (see
 * tokenizer_pretok.c). *out is malloc'd and NUL-terminated. */
dsr1_status dsr1__pretok_rewrite(const char *pattern, size_t len, char **out);

/* Called per final piece in order; returns non-zero status to stop. */
typedef dsr1_status (*dsr1__piece_fn)(void *ctx, const uint8_t *piece, size_t len);

/* Splits text with every regex in turn (Isolated: matches and the gaps between them both
 * become pieces) and calls fn on each final piece. md: match data from
 * pcre2_match_data_create(p->max_capture_pairs, NULL), owned by the caller. */
dsr1_status dsr1__pretok_run(const dsr1__pretok *p, const uint8_t *text, size_t len,
                             pcre2_match_data *md, dsr1__piece_fn fn, void *ctx);

/* ---- byte-level alphabet (GPT-2): every byte is a printable code point ---- */
/* The code point byte b is written as in byte-level vocabularies: printable Latin-1 maps
 * to itself, the other 68 bytes to U+0100..U+0143 in byte order. */
static inline uint32_t dsr1__byte_level_cp(uint8_t b)
{
    if (b <= 32) return 256u + b;
    if (b >= 127 && b <= 160) return 289u + (b - 127u);
    if (b == 173) return 323u;
    return b;
}
/* The inverse: the byte of code point cp, or -1 when cp is not in the alphabet. */
static inline int dsr1__byte_level_byte(uint32_t cp)
{
    if ((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || (cp >= 174 && cp <= 255))
        return (int)cp;
    if (cp >= 256 && cp <= 288) return (int)(cp - 256);
    if (cp >= 289 && cp <= 322) return (int)(cp - 289 + 127);
    if (cp == 323) return 173;
    return -1;
}

/* ---- the tokenizer ---- */
enum { DSR1__TOK_PRESENT = 1, DSR1__TOK_ADDED = 2, DSR1__TOK_SPECIAL = 4 };

struct dsr1_tokenizer {
    int32_t n_vocab;                 /* one past the largest id */
    uint8_t *flags;                  /* per id: DSR1__TOK_* */
    uint32_t *bytes_off, *bytes_len; /* per id: what it decodes to, in bytes[] */
    uint8_t *bytes;
    dsr1__strmap vocab;      /* BPE vocabulary string (byte-level form) -> id */
    dsr1__strmap added_map;  /* added token content -> id */
    int32_t byte_token[256]; /* the single-byte token of each byte */
    dsr1__merges merges;
    bool ignore_merges;
    /* Memo of BPE on whole words: raw bytes of every vocabulary token that BPE turns into
     * exactly itself -> its id. Most pre-tokens are such words, so one lookup replaces
     * the merge loop; any other piece goes through BPE as usual (exact either way). */
    dsr1__strmap words;
    size_t max_word_len;
    dsr1__added *added;
    size_t n_added;
    dsr1__trie trie_raw;  /* added tokens with normalized=false */
    dsr1__trie trie_norm; /* added tokens with normalized=true */
    dsr1__pretok pretok;
};

#endif
