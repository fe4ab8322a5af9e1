/* Byte-level BPE of one pre-token: start from one symbol per byte, repeatedly merge the
 * adjacent pair with the lowest merge rank (the leftmost one on ties), stop when no
 * adjacent pair has a merge. This is HF's rule; both implementations below follow it.
 *
 * Short words (almost all of them) use a direct scan over an array of pair ranks: no
 * allocation, a few cache lines, and only the two pairs next to a merge are looked up
 * again. Long words (a 100 KB run of letters is a single pre-token) would make that scan
 * quadratic, so they use a doubly linked list of symbols plus a binary heap of candidate
 * pairs keyed by (rank, position): O(n log n). Heap entries are never removed; a popped
 * entry whose pair no longer exists (a neighbour merged first) is recognised as stale by
 * comparing the ids it recorded with the list, and skipped. */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

/* A heap entry: rank in the high half, the left symbol's position in the low half, so
 * that one integer comparison orders by (rank, position). The pair itself is not stored:
 * a rank names exactly one pair, so an entry is still valid iff the pair now at its
 * position has the same rank. */
typedef uint64_t heap_entry;

void dsr1__bpe_scratch_free(dsr1__bpe_scratch *s)
{
    free(s->sym);
    free(s->prev);
    free(s->next);
    free(s->heap);
    memset(s, 0, sizeof(*s));
}

static dsr1_status scratch_reserve(dsr1__bpe_scratch *s, size_t n, bool lists)
{
    if (n > INT32_MAX)
        return dsr1_error(DSR1_ERR_RANGE, "tokenizer: a %zu-byte pre-token is too long", n);
    if (n > s->cap || (lists && !s->prev)) {
        size_t cap = n > s->cap ? n : s->cap;
        int32_t *sym = realloc(s->sym, cap * sizeof(int32_t));
        if (!sym) return dsr1_error(DSR1_ERR_NOMEM, "tokenizer: out of memory for BPE");
        s->sym = sym;
        int32_t *p = realloc(s->prev, cap * sizeof(int32_t));
        if (!p) return dsr1_error(DSR1_ERR_NOMEM, "tokenizer: out of memory for BPE");
        s->prev = p;
        int32_t *q = realloc(s->next, cap * sizeof(int32_t));
        if (!q) return dsr1_error(DSR1_ERR_NOMEM, "tokenizer: out of memory for BPE");
        s->next = q;
        s->cap = cap;
    }
    if (lists && n * 2 > s->heap_cap) {
        heap_entry *h = realloc(s->heap, n * 2 * sizeof(heap_entry));
        if (!h) return dsr1_error(DSR1_ERR_NOMEM, "tokenizer: out of memory for BPE");
        s->heap = h;
        s->heap_cap = n * 2;
    }
    return DSR1_OK;
}

static inline int32_t pair_rank(const dsr1__merges *m, int32_t a, int32_t b)
{
    const dsr1__merge_slot *s = dsr1__merges_get(m, a, b);
    return s ? s->rank : INT32_MAX;
}

/* The quadratic scan for short words; sym has room for len ids. */
static dsr1_status bpe_scan(const dsr1_tokenizer *tok, const uint8_t *word, size_t len,
                            dsr1__ids *out)
{
    int32_t sym[DSR1__BPE_SHORT_WORD * 4], rank[DSR1__BPE_SHORT_WORD * 4];
    int32_t *s = sym, *r = rank;
    int32_t *heap_s = NULL;
    if (len > sizeof(sym) / sizeof(sym[0])) {
        heap_s = malloc(2 * len * sizeof(int32_t));
        if (!heap_s) return dsr1_error(DSR1_ERR_NOMEM, "tokenizer: out of memory for BPE");
        s = heap_s;
        r = heap_s + len;
    }
    size_t n = len;
    for (size_t i = 0; i < n; i++) s[i] = tok->byte_token[word[i]];
    for (size_t i = 0; i + 1 < n; i++) r[i] = pair_rank(&tok->merges, s[i], s[i + 1]);
    while (n > 1) {
        size_t best = 0;
        for (size_t i = 1; i + 1 < n; i++)
            if (r[i] < r[best]) best = i;
        if (r[best] == INT32_MAX) break;
        s[best] = dsr1__merges_get(&tok->merges, s[best], s[best + 1])->merged;
        memmove(s + best + 1, s + best + 2, (n - best - 2) * sizeof(int32_t));
        memmove(r + best + 1, r + best + 2, (n > best + 3 ? n - best - 3 : 0) * sizeof(int32_t));
        n--;
        if (best > 0) r[best - 1] = pair_rank(&tok->merges, s[best - 1], s[best]);
        if (best + 1 < n) r[best] = pair_rank(&tok->merges, s[best], s[best + 1]);
    }
    dsr1_status st = dsr1__ids_reserve(out, n);
    if (!st) {
        memcpy(out->v + out->n, s, n * sizeof(int32_t));
        out->n += n;
    }
    free(heap_s);
    return st;
}

static void heap_push(heap_entry *h, size_t *n, heap_entry e)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (h[parent] <= e) break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = e;
}

static heap_entry heap_pop(heap_entry *h, size_t *n)
{
    heap_entry top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && h[c + 1] < h[c]) c++;
        if (last <= h[c]) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = last;
    return top;
}

/* Rank of the pair starting at symbol position left, INT32_MAX if none. */
static inline int32_t rank_at(const dsr1_tokenizer *tok, const dsr1__bpe_scratch *s, int32_t left)
{
    int32_t right = s->next[left];
    return right < 0 ? INT32_MAX : pair_rank(&tok->merges, s->sym[left], s->sym[right]);
}

/* The heap never holds more than 2 * len entries: it starts with at most len - 1 pairs,
 * and each merge pops one entry and pushes at most two. */
static void push_pair(const dsr1_tokenizer *tok, dsr1__bpe_scratch *s, size_t *hn, int32_t left)
{
    int32_t r = rank_at(tok, s, left);
    if (r != INT32_MAX) heap_push((heap_entry *)s->heap, hn, ((uint64_t)r << 32) | (uint32_t)left);
}

static dsr1_status bpe_heap(const dsr1_tokenizer *tok, const uint8_t *word, size_t len,
                            dsr1__bpe_scratch *s, dsr1__ids *out)
{
    dsr1_status st = scratch_reserve(s, len, true);
    if (st) return st;
    int32_t n = (int32_t)len;
    for (int32_t i = 0; i < n; i++) {
        s->sym[i] = tok->byte_token[word[i]];
        s->prev[i] = i - 1;
        s->next[i] = i + 1 < n ? i + 1 : -1;
    }
    size_t hn = 0;
    for (int32_t i = 0; i + 1 < n; i++) push_pair(tok, s, &hn, i);
    heap_entry *h = s->heap;
    size_t remaining = len;
    while (hn) {
        heap_entry e = heap_pop(h, &hn);
        int32_t pos = (int32_t)(uint32_t)e, rank = (int32_t)(e >> 32);
        /* stale: the symbol died, or it or its right neighbour merged with something else */
        if (s->sym[pos] < 0 || rank_at(tok, s, pos) != rank) continue;
        int32_t right = s->next[pos], after = s->next[right];
        s->sym[pos] = dsr1__merges_get(&tok->merges, s->sym[pos], s->sym[right])->merged;
        s->next[pos] = after;
        if (after >= 0) s->prev[after] = pos;
        s->sym[right] = -1;
        remaining--;
        if (s->prev[pos] >= 0) push_pair(tok, s, &hn, s->prev[pos]);
        if (after >= 0) push_pair(tok, s, &hn, pos);
    }
    st = dsr1__ids_reserve(out, remaining);
    if (st) return st;
    for (int32_t i = 0; i >= 0; i = s->next[i]) out->v[out->n++] = s->sym[i];
    return DSR1_OK;
}

/* Byte-level form of a word, for ignore_merges' whole-word lookup. */
static int32_t whole_word_id(const dsr1_tokenizer *tok, const uint8_t *word, size_t len)
{
    char buf[256];
    if (len * 2 > sizeof(buf)) return -1; /* longer words are not vocabulary entries */
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        uint32_t cp = dsr1__byte_level_cp(word[i]);
        if (cp < 0x80) {
            buf[k++] = (char)cp;
        } else {
            buf[k++] = (char)(0xC0 | (cp >> 6));
            buf[k++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    return dsr1__strmap_get(&tok->vocab, buf, k);
}

dsr1_status dsr1__bpe_word(const dsr1_tokenizer *tok, const uint8_t *word, size_t len,
                           dsr1__bpe_scratch *scratch, dsr1__ids *out, int force)
{
    if (len == 0) return DSR1_OK;
    if (len == 1) return dsr1__ids_push(out, tok->byte_token[word[0]]);
    if (tok->ignore_merges) {
        int32_t id = whole_word_id(tok, word, len);
        if (id >= 0) return dsr1__ids_push(out, id);
    }
    bool scan = force == 1 || (force == 0 && len <= DSR1__BPE_SHORT_WORD);
    return scan ? bpe_scan(tok, word, len, out) : bpe_heap(tok, word, len, scratch, out);
}
