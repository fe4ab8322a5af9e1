/* Added tokens (`<｜User｜>`, `<think>`, ...) are cut out of the raw text before the
 * regexes see it, so that `a<think>b` gives three pieces whatever the regexes would do.
 *
 * Matching follows HF's AddedVocabulary: the leftmost match wins, and among matches that
 * start at the same byte the longest; scanning resumes after the match (Aho-Corasick's
 * LeftmostLongest). A byte trie with a 256-way root gives that directly: at each byte,
 * walk the trie as far as the text allows and remember the last token end seen; bytes
 * that start no token cost one table lookup. Tokens with lstrip/rstrip swallow the
 * Unicode White_Space next to them (never text an earlier match already claimed). With
 * DSR1_ENCODE_SPECIAL_AS_TEXT a matched special token is left in the text, as HF's
 * encode_special_tokens does (its bytes are still consumed by the match, so a token
 * starting inside it is not found either). */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

void dsr1__trie_init(dsr1__trie *t)
{
    memset(t, 0, sizeof(*t));
    for (int i = 0; i < 256; i++) t->root[i] = -1;
}

void dsr1__trie_free(dsr1__trie *t)
{
    free(t->nodes);
    dsr1__trie_init(t);
}

static int32_t new_node(dsr1__trie *t, uint8_t byte)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        dsr1__trie_node *p = realloc(t->nodes, cap * sizeof(*p));
        if (!p) return -1;
        t->nodes = p;
        t->cap = cap;
    }
    dsr1__trie_node *nd = &t->nodes[t->n];
    nd->first_child = -1;
    nd->next_sibling = -1;
    nd->token = -1;
    nd->byte = byte;
    return (int32_t)t->n++;
}

dsr1_status dsr1__trie_add(dsr1__trie *t, const char *s, size_t len, int32_t token)
{
    if (len == 0) return dsr1_error(DSR1_ERR_FORMAT, "tokenizer: an added token is empty");
    const uint8_t *b = (const uint8_t *)s;
    int32_t cur = t->root[b[0]];
    if (cur < 0) {
        cur = new_node(t, b[0]);
        if (cur < 0) goto err_nomem;
        t->root[b[0]] = cur;
    }
    for (size_t i = 1; i < len; i++) {
        int32_t child = t->nodes[cur].first_child;
        while (child >= 0 && t->nodes[child].byte != b[i]) child = t->nodes[child].next_sibling;
        if (child < 0) {
            child = new_node(t, b[i]);
            if (child < 0) goto err_nomem;
            t->nodes[child].next_sibling = t->nodes[cur].first_child;
            t->nodes[cur].first_child = child;
        }
        cur = child;
    }
    t->nodes[cur].token = token; /* a duplicate content: the later entry wins, as in HF */
    t->count++;
    return DSR1_OK;
err_nomem:
    return dsr1_error(DSR1_ERR_NOMEM, "tokenizer: out of memory for the added-token trie");
}

int32_t dsr1__trie_longest(const dsr1__trie *t, const uint8_t *text, size_t len, size_t pos,
                           size_t *mlen)
{
    int32_t cur = t->root[text[pos]], best = -1;
    if (cur < 0) return -1;
    size_t i = pos + 1;
    for (;;) {
        if (t->nodes[cur].token >= 0) {
            best = t->nodes[cur].token;
            *mlen = i - pos;
        }
        if (i >= len) break;
        int32_t child = t->nodes[cur].first_child;
        while (child >= 0 && t->nodes[child].byte != text[i]) child = t->nodes[child].next_sibling;
        if (child < 0) break;
        cur = child;
        i++;
    }
    return best;
}
