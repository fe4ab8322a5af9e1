/* Encoding: UTF-8 check, then three nested stages, each handing the text between its
 * matches to the next:
 *   1. added tokens with normalized=false, found in the raw text (`<｜User｜>`);
 *   2. added tokens with normalized=true (`<think>`), found in what stage 1 left (HF
 *      normalizes in between; DeepSeek's normalizer is the identity);
 *   3. the Split regexes (tokenizer_pretok.c), each final piece BPE'd (tokenizer_bpe.c).
 * Everything an encode needs to write (ids, BPE scratch, PCRE2 match data) belongs to
 * the call, which is why one tokenizer serves many threads at once. */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    const dsr1_tokenizer *tok;
    unsigned flags;
    dsr1__ids out;
    dsr1__bpe_scratch scratch;
    pcre2_match_data *md;
} encoder;

/* Unicode White_Space: what HF strips next to lstrip/rstrip tokens (Rust's is_whitespace). */
static bool is_white_space(uint32_t c)
{
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* Decodes the (valid) character at s[i]; *n gets its length. */
static uint32_t char_at(const uint8_t *s, size_t i, size_t *n)
{
    uint8_t c = s[i];
    if (c < 0x80) return *n = 1, c;
    if (c < 0xE0) return *n = 2, ((c & 0x1Fu) << 6) | (s[i + 1] & 0x3Fu);
    if (c < 0xF0)
        return *n = 3, ((c & 0x0Fu) << 12) | ((s[i + 1] & 0x3Fu) << 6) | (s[i + 2] & 0x3Fu);
    *n = 4;
    return ((c & 0x07u) << 18) | ((s[i + 1] & 0x3Fu) << 12) | ((s[i + 2] & 0x3Fu) << 6) |
           (s[i + 3] & 0x3Fu);
}

static size_t strip_left(const uint8_t *s, size_t start, size_t floor)
{
    while (start > floor) {
        size_t p = start - 1, n;
        while (p > floor && (s[p] & 0xC0) == 0x80) p--;
        if (!is_white_space(char_at(s, p, &n))) break;
        start = p;
    }
    return start;
}

static size_t strip_right(const uint8_t *s, size_t stop, size_t len)
{
    while (stop < len) {
        size_t n;
        if (!is_white_space(char_at(s, stop, &n))) break;
        stop += n;
    }
    return stop;
}

static dsr1_status on_piece(void *ctx, const uint8_t *piece, size_t len)
{
    encoder *e = ctx;
    if (len > 1 && len <= e->tok->max_word_len) {
        int32_t id = dsr1__strmap_get(&e->tok->words, (const char *)piece, len);
        if (id >= 0) return dsr1__ids_push(&e->out, id);
    }
    return dsr1__bpe_word(e->tok, piece, len, &e->scratch, &e->out, 0);
}

static dsr1_status encode_gap(encoder *e, int stage, const uint8_t *s, size_t len);

/* Stage 1 or 2: cut added tokens out of s, pass the gaps on to the next stage. */
static dsr1_status split_added(encoder *e, int stage, const uint8_t *s, size_t len)
{
    const dsr1__trie *trie = stage == 0 ? &e->tok->trie_raw : &e->tok->trie_norm;
    dsr1_status st;
    if (trie->count == 0) return encode_gap(e, stage, s, len);
    size_t prev_end = 0, i = 0;
    while (i < len) {
        if (trie->root[s[i]] < 0) {
            i++;
            continue;
        }
        size_t mlen = 0;
        int32_t t = dsr1__trie_longest(trie, s, len, i, &mlen);
        if (t < 0) {
            i++;
            continue;
        }
        const dsr1__added *a = &e->tok->added[t];
        size_t start = i, stop = i + mlen;
        i = stop;
        if ((e->flags & DSR1_ENCODE_SPECIAL_AS_TEXT) && a->special) continue;
        if (a->lstrip) start = strip_left(s, start, prev_end);
        if (a->rstrip) stop = i = strip_right(s, stop, len);
        if (start > prev_end && (st = encode_gap(e, stage, s + prev_end, start - prev_end)))
            return st;
        if ((st = dsr1__ids_push(&e->out, a->id))) return st;
        prev_end = stop;
    }
    if (prev_end < len) return encode_gap(e, stage, s + prev_end, len - prev_end);
    return DSR1_OK;
}

static dsr1_status encode_gap(encoder *e, int stage, const uint8_t *s, size_t len)
{
    if (stage == 0) return split_added(e, 1, s, len);
    return dsr1__pretok_run(&e->tok->pretok, s, len, e->md, on_piece, e);
}

dsr1_status dsr1_tokenizer_encode(const dsr1_tokenizer *tok, const char *text, size_t len,
                                  unsigned flags, int32_t **ids, size_t *n)
{
    if (!tok || (!text && len) || !ids || !n)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "encode: NULL argument");
    const uint8_t *s = (const uint8_t *)text;
    size_t bad = dsr1_utf8_valid_prefix(s, len);
    if (bad < len)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "encode: input is not valid UTF-8 at byte %zu "
                          "(0x%02X)",
                          bad, s[bad]);
    encoder e = {.tok = tok, .flags = flags};
    e.md = pcre2_match_data_create(tok->pretok.max_capture_pairs + 1, NULL);
    if (!e.md) return dsr1_error(DSR1_ERR_NOMEM, "encode: out of memory");
    /* ~4 bytes per token on mixed text: one reservation covers most inputs. */
    dsr1_status st = dsr1__ids_reserve(&e.out, len / 3 + 16);
    if (!st && len) st = split_added(&e, 0, s, len);
    pcre2_match_data_free(e.md);
    dsr1__bpe_scratch_free(&e.scratch);
    if (st) {
        free(e.out.v);
        return st;
    }
    if (e.out.n == 0) {
        free(e.out.v);
        e.out.v = NULL;
    }
    *ids = e.out.v;
    *n = e.out.n;
    return DSR1_OK;
}
