/* The tokenizer's hash tables and growable id vector (see tokenizer_internal.h).
 *
 * Two tables, both open addressing with linear probing and a power-of-two size kept at
 * most half full: string -> id for the vocabulary and the added tokens (keys copied into
 * one arena, so the table owns everything it points at), and (left, right) -> merge for
 * BPE, the table the encoder hits once per adjacent pair, which is why its lookup is
 * inline in the header. Both are filled at load time and only read afterwards. */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

static size_t table_size(size_t expected)
{
    size_t n = 16;
    while (n < expected * 2) n <<= 1;
    return n;
}

/* FNV-1a: keys are short token strings, the distribution only needs to be decent. */
static uint32_t hash_bytes(const char *s, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

dsr1_status dsr1__strmap_init(dsr1__strmap *m, size_t expected)
{
    memset(m, 0, sizeof(*m));
    size_t n = table_size(expected);
    m->slot_id = calloc(n, sizeof(uint32_t));
    m->slot_off = malloc(n * sizeof(uint32_t));
    m->slot_len = malloc(n * sizeof(uint32_t));
    if (!m->slot_id || !m->slot_off || !m->slot_len) {
        dsr1__strmap_free(m);
        return dsr1_error(DSR1_ERR_NOMEM, "tokenizer: out of memory for a %zu-slot table", n);
    }
    m->mask = n - 1;
    return DSR1_OK;
}

void dsr1__strmap_free(dsr1__strmap *m)
{
    free(m->slot_id);
    free(m->slot_off);
    free(m->slot_len);
    free(m->arena);
    memset(m, 0, sizeof(*m));
}

static size_t strmap_find(const dsr1__strmap *m, const char *key, size_t len)
{
    size_t i = hash_bytes(key, len) & m->mask;
    while (m->slot_id[i]) {
        if (m->slot_len[i] == len && !memcmp(m->arena + m->slot_off[i], key, len)) return i;
        i = (i + 1) & m->mask;
    }
    return i;
}

static dsr1_status strmap_grow(dsr1__strmap *m)
{
    dsr1__strmap bigger = *m;
    size_t n = (m->mask + 1) * 2;
    bigger.slot_id = calloc(n, sizeof(uint32_t));
    bigger.slot_off = malloc(n * sizeof(uint32_t));
    bigger.slot_len = malloc(n * sizeof(uint32_t));
    if (!bigger.slot_id || !bigger.slot_off || !bigger.slot_len) {
        free(bigger.slot_id);
        free(bigger.slot_off);
        free(bigger.slot_len);
        return dsr1_error(DSR1_ERR_NOMEM, "tokenizer: out of memory growing a table");
    }
    bigger.mask = n - 1;
    for (size_t i = 0; i <= m->mask; i++) {
        if (!m->slot_id[i]) continue;
        size_t j = strmap_find(&bigger, m->arena + m->slot_off[i], m->slot_len[i]);
        bigger.slot_id[j] = m->slot_id[i];
        bigger.slot_off[j] = m->slot_off[i];
        bigger.slot_len[j] = m->slot_len[i];
    }
    free(m->slot_id);
    free(m->slot_off);
    free(m->slot_len);
    *m = bigger;
    return DSR1_OK;
}

dsr1_status dsr1__strmap_put(dsr1__strmap *m, const char *key, size_t len, int32_t id)
{
    if (len > UINT32_MAX || id < 0)
        return dsr1_error(DSR1_ERR_RANGE, "tokenizer: token too long or negative id");
    if ((m->count + 1) * 2 > m->mask + 1) {
        dsr1_status st = strmap_grow(m);
        if (st) return st;
    }
    size_t i = strmap_find(m, key, len);
    if (m->slot_id[i]) {
        m->slot_id[i] = (uint32_t)id + 1;
        return DSR1_OK;
    }
    if (m->arena_len + len > m->arena_cap) {
        size_t cap = m->arena_cap ? m->arena_cap : 4096;
        while (cap < m->arena_len + len) cap *= 2;
        if (cap > UINT32_MAX)
            return dsr1_error(DSR1_ERR_RANGE, "tokenizer: vocabulary strings exceed 4 GiB");
        char *a = realloc(m->arena, cap);
        if (!a) return dsr1_error(DSR1_ERR_NOMEM, "tokenizer: out of memory for token strings");
        m->arena = a;
        m->arena_cap = cap;
    }
    memcpy(m->arena + m->arena_len, key, len);
    m->slot_id[i] = (uint32_t)id + 1;
    m->slot_off[i] = (uint32_t)m->arena_len;
    m->slot_len[i] = (uint32_t)len;
    m->arena_len += len;
    m->count++;
    return DSR1_OK;
}

int32_t dsr1__strmap_get(const dsr1__strmap *m, const char *key, size_t len)
{
    if (!m->slot_id) return -1;
    size_t i = strmap_find(m, key, len);
    return m->slot_id[i] ? (int32_t)(m->slot_id[i] - 1) : -1;
}

dsr1_status dsr1__merges_init(dsr1__merges *m, size_t expected)
{
    size_t n = table_size(expected);
    m->slots = malloc(n * sizeof(*m->slots));
    if (!m->slots) return dsr1_error(DSR1_ERR_NOMEM, "tokenizer: out of memory for merges");
    for (size_t i = 0; i < n; i++) m->slots[i].key = UINT64_MAX;
    m->mask = n - 1;
    m->count = 0;
    return DSR1_OK;
}

void dsr1__merges_free(dsr1__merges *m)
{
    free(m->slots);
    memset(m, 0, sizeof(*m));
}

/* The table is sized for the merge count before filling, so it never needs to grow. */
void dsr1__merges_put(dsr1__merges *m, int32_t a, int32_t b, int32_t rank, int32_t merged)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & m->mask;
    while (m->slots[i].key != UINT64_MAX && m->slots[i].key != key) i = (i + 1) & m->mask;
    if (m->slots[i].key == UINT64_MAX) m->count++;
    m->slots[i].key = key;
    m->slots[i].rank = rank;
    m->slots[i].merged = merged;
}

dsr1_status dsr1__ids_reserve(dsr1__ids *ids, size_t extra)
{
    if (ids->n + extra <= ids->cap) return DSR1_OK;
    size_t cap = ids->cap ? ids->cap : 64;
    while (cap < ids->n + extra) cap *= 2;
    int32_t *v = realloc(ids->v, cap * sizeof(int32_t));
    if (!v) return dsr1_error(DSR1_ERR_NOMEM, "tokenizer: out of memory for %zu ids", cap);
    ids->v = v;
    ids->cap = cap;
    return DSR1_OK;
}
