/* Loading tokenizer.json into a dsr1_tokenizer, decoding ids, and the small accessors
 * (see tokenizer.h for the contract; tokenizer_encode.c does the encoding).
 *
 * Loading is strict on purpose: a tokenizer the engine half understands produces prompts
 * that are wrong in ways nobody notices (the model still answers, just worse). So every
 * part of tokenizer.json that changes ids is checked against what we implement, and
 * anything else is an error naming the part, e.g. "tokenizer.json: pre_tokenizer
 * .pretokenizers[1]: Split behavior 'Removed' is not supported". Structure errors are
 * DSR1_ERR_FORMAT, well-formed features we lack DSR1_ERR_UNSUPPORTED.
 *
 * Each id gets the bytes it decodes to, computed once here with the rule of HF's
 * ByteLevel decoder: a token whose characters are all in the byte-level alphabet stands
 * for those bytes, any other token (`<｜User｜>`) for its own UTF-8 text. */
#include "tokenizer_internal.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_VOCAB (1 << 24) /* far above any real vocabulary; bounds what a file can ask */

/* GPT-2's pre-tokenizer regex: what ByteLevel with use_regex=true splits with. */
static const char GPT2_REGEX[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static bool is_null_or_absent(const json_t *v)
{
    return !v || json_is_null(v);
}

static const char *type_of(const json_t *obj)
{
    const char *t = json_string_value(json_object_get(obj, "type"));
    return t ? t : "";
}

static bool bool_or(const json_t *obj, const char *key, bool def)
{
    const json_t *v = json_object_get(obj, key);
    return json_is_boolean(v) ? json_is_true(v) : def;
}

static dsr1_status check_normalizer(const json_t *n)
{
    if (is_null_or_absent(n)) return DSR1_OK;
    if (!strcmp(type_of(n), "Sequence")) {
        const json_t *list = json_object_get(n, "normalizers");
        if (json_is_array(list) && json_array_size(list) == 0) return DSR1_OK;
    }
    return dsr1_error(DSR1_ERR_UNSUPPORTED,
                      "tokenizer.json: normalizer of type '%s' is not supported (only none or "
                      "an empty Sequence)",
                      type_of(n));
}

/* A Split pattern given as a literal {"String": ...}: escape it for PCRE2. */
static dsr1_status literal_regex(const char *s, size_t len, char **out)
{
    char *o = malloc(len * 2 + 1);
    if (!o) return dsr1_error(DSR1_ERR_NOMEM, "tokenizer: out of memory");
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        bool plain =
            c >= 0x80 || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        if (!plain) o[k++] = '\\';
        o[k++] = (char)c;
    }
    o[k] = '\0';
    *out = o;
    return DSR1_OK;
}

static dsr1_status add_split(dsr1_tokenizer *tok, const json_t *step, const char *what)
{
    const char *behavior = json_string_value(json_object_get(step, "behavior"));
    if (!behavior || strcmp(behavior, "Isolated"))
        return dsr1_error(DSR1_ERR_UNSUPPORTED,
                          "tokenizer.json: %s: Split behavior '%s' is not supported (only "
                          "'Isolated')",
                          what, behavior ? behavior : "(missing)");
    if (bool_or(step, "invert", false))
        return dsr1_error(DSR1_ERR_UNSUPPORTED,
                          "tokenizer.json: %s: Split with invert=true "
                          "is not supported",
                          what);
    const json_t *pat = json_object_get(step, "pattern");
    const json_t *re = json_object_get(pat, "Regex"), *lit = json_object_get(pat, "String");
    if (json_is_string(re))
        return dsr1__pretok_add(&tok->pretok, json_string_value(re), json_string_length(re), what);
    if (json_is_string(lit)) {
        char *escaped = NULL;
        dsr1_status st = literal_regex(json_string_value(lit), json_string_length(lit), &escaped);
        if (st) return st;
        st = dsr1__pretok_add(&tok->pretok, escaped, strlen(escaped), what);
        free(escaped);
        return st;
    }
    return dsr1_error(DSR1_ERR_FORMAT,
                      "tokenizer.json: %s: Split needs a pattern with a "
                      "'Regex' or 'String'",
                      what);
}

static dsr1_status add_pretokenizer(dsr1_tokenizer *tok, const json_t *step, const char *what,
                                    bool last, bool *saw_byte_level)
{
    const char *type = type_of(step);
    if (!strcmp(type, "Split")) {
        if (*saw_byte_level)
            return dsr1_error(DSR1_ERR_UNSUPPORTED,
                              "tokenizer.json: %s: a Split after "
                              "ByteLevel is not supported",
                              what);
        return add_split(tok, step, what);
    }
    if (!strcmp(type, "ByteLevel")) {
        if (!last)
            return dsr1_error(DSR1_ERR_UNSUPPORTED,
                              "tokenizer.json: %s: ByteLevel must be "
                              "the last pre-tokenizer",
                              what);
        if (bool_or(step, "add_prefix_space", false))
            return dsr1_error(DSR1_ERR_UNSUPPORTED,
                              "tokenizer.json: %s: ByteLevel with "
                              "add_prefix_space=true is not supported",
                              what);
        *saw_byte_level = true;
        if (bool_or(step, "use_regex", true))
            return dsr1__pretok_add(&tok->pretok, GPT2_REGEX, strlen(GPT2_REGEX), what);
        return DSR1_OK;
    }
    return dsr1_error(DSR1_ERR_UNSUPPORTED,
                      "tokenizer.json: %s: pre-tokenizer type '%s' is "
                      "not supported (only Split and ByteLevel)",
                      what, type);
}

static dsr1_status load_pretokenizer(dsr1_tokenizer *tok, const json_t *pt)
{
    bool saw_byte_level = false;
    dsr1_status st;
    if (!json_is_object(pt))
        return dsr1_error(DSR1_ERR_UNSUPPORTED, "tokenizer.json: a byte-level pre_tokenizer "
                                                "is required");
    if (!strcmp(type_of(pt), "Sequence")) {
        const json_t *list = json_object_get(pt, "pretokenizers");
        if (!json_is_array(list))
            return dsr1_error(DSR1_ERR_FORMAT, "tokenizer.json: pre_tokenizer.pretokenizers "
                                               "must be an array");
        for (size_t i = 0; i < json_array_size(list); i++) {
            char what[64];
            snprintf(what, sizeof(what), "pre_tokenizer.pretokenizers[%zu]", i);
            st = add_pretokenizer(tok, json_array_get(list, i), what,
                                  i + 1 == json_array_size(list), &saw_byte_level);
            if (st) return st;
        }
    } else if ((st = add_pretokenizer(tok, pt, "pre_tokenizer", true, &saw_byte_level))) {
        return st;
    }
    if (!saw_byte_level)
        return dsr1_error(DSR1_ERR_UNSUPPORTED, "tokenizer.json: pre_tokenizer has no "
                                                "ByteLevel step; only byte-level BPE is supported");
    return DSR1_OK;
}

static dsr1_status check_model_options(const json_t *model)
{
    if (strcmp(type_of(model), "BPE"))
        return dsr1_error(DSR1_ERR_UNSUPPORTED,
                          "tokenizer.json: model type '%s' is not "
                          "supported (only BPE)",
                          type_of(model));
    const json_t *dropout = json_object_get(model, "dropout");
    if (!is_null_or_absent(dropout))
        return dsr1_error(DSR1_ERR_UNSUPPORTED, "tokenizer.json: model.dropout is set; "
                                                "BPE dropout is not supported");
    static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (size_t i = 0; i < 2; i++) {
        const json_t *v = json_object_get(model, affixes[i]);
        if (!is_null_or_absent(v) && !(json_is_string(v) && json_string_length(v) == 0))
            return dsr1_error(DSR1_ERR_UNSUPPORTED, "tokenizer.json: model.%s is not supported",
                              affixes[i]);
    }
    if (bool_or(model, "byte_fallback", false))
        return dsr1_error(DSR1_ERR_UNSUPPORTED, "tokenizer.json: model.byte_fallback is not "
                                                "supported");
    return DSR1_OK;
}

/* The raw bytes of a token string per the ByteLevel decoder rule (see top of file). */
static dsr1_status token_bytes(const char *s, size_t len, uint8_t *out, size_t *out_len)
{
    size_t k = 0;
    for (size_t i = 0; i < len;) {
        uint8_t c = (uint8_t)s[i];
        uint32_t cp;
        size_t n;
        if (c < 0x80)
            cp = c, n = 1;
        else if ((c & 0xE0) == 0xC0 && i + 1 < len)
            cp = ((c & 0x1Fu) << 6) | (s[i + 1] & 0x3F), n = 2;
        else
            cp = UINT32_MAX, n = 1; /* 3-4 byte characters are never in the alphabet */
        int b = cp == UINT32_MAX ? -1 : dsr1__byte_level_byte(cp);
        if (b < 0) {
            memcpy(out, s, len);
            *out_len = len;
            return DSR1_OK;
        }
        out[k++] = (uint8_t)b;
        i += n;
    }
    *out_len = k;
    return DSR1_OK;
}

static dsr1_status check_id(const json_t *v, const char *what, const char *name, int32_t *id)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= MAX_VOCAB)
        return dsr1_error(DSR1_ERR_FORMAT,
                          "tokenizer.json: %s '%s': id must be an integer in "
                          "[0, %d)",
                          what, name, MAX_VOCAB);
    *id = (int32_t)json_integer_value(v);
    return DSR1_OK;
}

/* Sizes the per-id tables: one past the largest id of the vocabulary and added tokens. */
static dsr1_status size_vocab(dsr1_tokenizer *tok, const json_t *vocab, const json_t *added)
{
    int32_t max_id = -1, id = 0;
    const char *key;
    const json_t *v;
    dsr1_status st;
    json_object_foreach((json_t *)vocab, key, v)
    {
        if ((st = check_id(v, "model.vocab entry", key, &id))) return st;
        if (id > max_id) max_id = id;
    }
    for (size_t i = 0; i < json_array_size(added); i++) {
        const json_t *a = json_array_get(added, i);
        const char *content = json_string_value(json_object_get(a, "content"));
        if (!json_is_object(a) || !content)
            return dsr1_error(DSR1_ERR_FORMAT,
                              "tokenizer.json: added_tokens[%zu] needs a "
                              "string 'content'",
                              i);
        if ((st = check_id(json_object_get(a, "id"), "added token", content, &id))) return st;
        if (id > max_id) max_id = id;
    }
    if (max_id < 0) return dsr1_error(DSR1_ERR_FORMAT, "tokenizer.json: the vocabulary is empty");
    tok->n_vocab = max_id + 1;
    size_t n = (size_t)tok->n_vocab;
    tok->flags = calloc(n, 1);
    tok->bytes_off = calloc(n, sizeof(uint32_t));
    tok->bytes_len = calloc(n, sizeof(uint32_t));
    if (!tok->flags || !tok->bytes_off || !tok->bytes_len)
        return dsr1_error(DSR1_ERR_NOMEM, "tokenizer: out of memory for %zu tokens", n);
    return DSR1_OK;
}

/* Records what id decodes to; bytes[] grows in *cap. */
static dsr1_status set_token(dsr1_tokenizer *tok, int32_t id, const char *s, size_t len,
                             size_t *used, size_t *cap)
{
    if (*used + len > *cap) {
        size_t c = *cap ? *cap : 1 << 20;
        while (c < *used + len) c *= 2;
        if (c > UINT32_MAX) return dsr1_error(DSR1_ERR_RANGE, "tokenizer: tokens exceed 4 GiB");
        uint8_t *b = realloc(tok->bytes, c);
        if (!b) return dsr1_error(DSR1_ERR_NOMEM, "tokenizer: out of memory for token bytes");
        tok->bytes = b;
        *cap = c;
    }
    size_t n;
    token_bytes(s, len, tok->bytes + *used, &n);
    tok->bytes_off[id] = (uint32_t)*used;
    tok->bytes_len[id] = (uint32_t)n;
    tok->flags[id] |= DSR1__TOK_PRESENT;
    *used += n;
    return DSR1_OK;
}

static dsr1_status load_vocab(dsr1_tokenizer *tok, const json_t *vocab, size_t *used, size_t *cap)
{
    const char *key;
    const json_t *v;
    dsr1_status st = dsr1__strmap_init(&tok->vocab, json_object_size(vocab));
    if (st) return st;
    json_object_foreach((json_t *)vocab, key, v)
    {
        int32_t id = (int32_t)json_integer_value(v);
        if ((st = dsr1__strmap_put(&tok->vocab, key, strlen(key), id))) return st;
        if ((st = set_token(tok, id, key, strlen(key), used, cap))) return st;
    }
    for (int b = 0; b < 256; b++) {
        char s[3];
        uint32_t cp = dsr1__byte_level_cp((uint8_t)b);
        size_t n = 1;
        if (cp < 0x80)
            s[0] = (char)cp;
        else
            s[0] = (char)(0xC0 | (cp >> 6)), s[1] = (char)(0x80 | (cp & 0x3F)), n = 2;
        tok->byte_token[b] = dsr1__strmap_get(&tok->vocab, s, n);
        if (tok->byte_token[b] < 0)
            return dsr1_error(DSR1_ERR_UNSUPPORTED,
                              "tokenizer.json: model.vocab has no token "
                              "for byte 0x%02X ('%.*s'); not a byte-level BPE vocabulary",
                              b, (int)n, s);
    }
    return DSR1_OK;
}

static dsr1_status merge_parts(const json_t *m, size_t i, const char **a, size_t *alen,
                               const char **b, size_t *blen)
{
    if (json_is_string(m)) { /* legacy "left right" */
        const char *s = json_string_value(m), *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' '))
            return dsr1_error(DSR1_ERR_FORMAT,
                              "tokenizer.json: model.merges[%zu] '%s' is not "
                              "two tokens separated by one space",
                              i, s);
        *a = s, *alen = (size_t)(sp - s), *b = sp + 1, *blen = strlen(sp + 1);
        return DSR1_OK;
    }
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        *a = json_string_value(json_array_get(m, 0));
        *alen = json_string_length(json_array_get(m, 0));
        *b = json_string_value(json_array_get(m, 1));
        *blen = json_string_length(json_array_get(m, 1));
        return DSR1_OK;
    }
    return dsr1_error(DSR1_ERR_FORMAT,
                      "tokenizer.json: model.merges[%zu] must be a string "
                      "or a pair of strings",
                      i);
}

static dsr1_status load_merges(dsr1_tokenizer *tok, const json_t *merges)
{
    size_t n = json_array_size(merges);
    if (n > INT32_MAX) return dsr1_error(DSR1_ERR_RANGE, "tokenizer.json: too many merges");
    dsr1_status st = dsr1__merges_init(&tok->merges, n);
    if (st) return st;
    char *joined = NULL;
    size_t joined_cap = 0;
    for (size_t i = 0; i < n; i++) {
        const char *a = NULL, *b = NULL;
        size_t alen = 0, blen = 0;
        if ((st = merge_parts(json_array_get(merges, i), i, &a, &alen, &b, &blen))) break;
        if (alen + blen > joined_cap) {
            joined_cap = (alen + blen) * 2;
            char *j = realloc(joined, joined_cap);
            if (!j) {
                st = dsr1_error(DSR1_ERR_NOMEM, "tokenizer: out of memory for merges");
                break;
            }
            joined = j;
        }
        memcpy(joined, a, alen);
        memcpy(joined + alen, b, blen);
        int32_t ia = dsr1__strmap_get(&tok->vocab, a, alen);
        int32_t ib = dsr1__strmap_get(&tok->vocab, b, blen);
        int32_t im = dsr1__strmap_get(&tok->vocab, joined, alen + blen);
        if (ia < 0 || ib < 0 || im < 0) {
            st = dsr1_error(DSR1_ERR_FORMAT,
                            "tokenizer.json: model.merges[%zu] ('%.*s' + "
                            "'%.*s'): '%.*s' is not in model.vocab",
                            i, (int)alen, a, (int)blen, b,
                            ia < 0   ? (int)alen
                            : ib < 0 ? (int)blen
                                     : (int)(alen + blen),
                            ia < 0   ? a
                            : ib < 0 ? b
                                     : joined);
            break;
        }
        dsr1__merges_put(&tok->merges, ia, ib, (int32_t)i, im);
    }
    free(joined);
    return st;
}

/* Fills tok->words (see tokenizer_internal.h): BPE every vocabulary token once. */
static dsr1_status build_word_memo(dsr1_tokenizer *tok)
{
    dsr1_status st = dsr1__strmap_init(&tok->words, tok->vocab.count);
    if (st) return st;
    dsr1__bpe_scratch scratch = {0};
    dsr1__ids ids = {0};
    for (int32_t id = 0; id < tok->n_vocab && !st; id++) {
        if (!(tok->flags[id] & DSR1__TOK_PRESENT) || (tok->flags[id] & DSR1__TOK_ADDED)) continue;
        const uint8_t *b = tok->bytes + tok->bytes_off[id];
        size_t len = tok->bytes_len[id];
        ids.n = 0;
        st = dsr1__bpe_word(tok, b, len, &scratch, &ids, 0);
        if (!st && ids.n == 1 && ids.v[0] == id) {
            st = dsr1__strmap_put(&tok->words, (const char *)b, len, id);
            if (len > tok->max_word_len) tok->max_word_len = len;
        }
    }
    free(ids.v);
    dsr1__bpe_scratch_free(&scratch);
    return st;
}

static dsr1_status load_added(dsr1_tokenizer *tok, const json_t *added, size_t *used, size_t *cap)
{
    size_t n = json_array_size(added);
    dsr1_status st = dsr1__strmap_init(&tok->added_map, n);
    if (st) return st;
    tok->added = calloc(n ? n : 1, sizeof(*tok->added));
    if (!tok->added) return dsr1_error(DSR1_ERR_NOMEM, "tokenizer: out of memory");
    for (size_t i = 0; i < n; i++) {
        const json_t *a = json_array_get(added, i), *c = json_object_get(a, "content");
        dsr1__added *t = &tok->added[tok->n_added];
        t->id = (int32_t)json_integer_value(json_object_get(a, "id"));
        t->len = json_string_length(c);
        t->special = bool_or(a, "special", false);
        t->lstrip = bool_or(a, "lstrip", false);
        t->rstrip = bool_or(a, "rstrip", false);
        /* HF's default: special tokens are not normalized, the others are. */
        t->normalized = bool_or(a, "normalized", !t->special);
        if (bool_or(a, "single_word", false))
            return dsr1_error(DSR1_ERR_UNSUPPORTED,
                              "tokenizer.json: added token '%s' has "
                              "single_word=true, which is not supported",
                              json_string_value(c));
        if (t->len == 0)
            return dsr1_error(DSR1_ERR_FORMAT, "tokenizer.json: added_tokens[%zu] is empty", i);
        t->content = malloc(t->len + 1);
        if (!t->content) return dsr1_error(DSR1_ERR_NOMEM, "tokenizer: out of memory");
        memcpy(t->content, json_string_value(c), t->len + 1);
        tok->n_added++;
        if ((st = dsr1__strmap_put(&tok->added_map, t->content, t->len, t->id))) return st;
        if ((st = set_token(tok, t->id, t->content, t->len, used, cap))) return st;
        tok->flags[t->id] |= DSR1__TOK_ADDED;
        if (t->special)
            tok->flags[t->id] |= DSR1__TOK_SPECIAL;
        else
            tok->flags[t->id] &= (uint8_t)~DSR1__TOK_SPECIAL;
        st = dsr1__trie_add(t->normalized ? &tok->trie_norm : &tok->trie_raw, t->content, t->len,
                            (int32_t)(tok->n_added - 1));
        if (st) return st;
    }
    return DSR1_OK;
}

static dsr1_status check_post_and_decoder(const json_t *root)
{
    static const char *const keys[] = {"post_processor", "decoder"};
    for (size_t i = 0; i < 2; i++) {
        const json_t *v = json_object_get(root, keys[i]);
        if (!is_null_or_absent(v) && strcmp(type_of(v), "ByteLevel"))
            return dsr1_error(DSR1_ERR_UNSUPPORTED,
                              "tokenizer.json: %s of type '%s' is not "
                              "supported (only ByteLevel)",
                              keys[i], type_of(v));
    }
    static const char *const unset[] = {"truncation", "padding"};
    for (size_t i = 0; i < 2; i++)
        if (!is_null_or_absent(json_object_get(root, unset[i])))
            return dsr1_error(DSR1_ERR_UNSUPPORTED,
                              "tokenizer.json: '%s' is set; dsr1 "
                              "never truncates or pads, set it to null",
                              unset[i]);
    return DSR1_OK;
}

static dsr1_status load_json(dsr1_tokenizer *tok, const json_t *root)
{
    dsr1_status st;
    if (!json_is_object(root))
        return dsr1_error(DSR1_ERR_FORMAT, "tokenizer.json: the top level is not an object");
    const json_t *model = json_object_get(root, "model");
    const json_t *vocab = json_object_get(model, "vocab");
    const json_t *merges = json_object_get(model, "merges");
    const json_t *added = json_object_get(root, "added_tokens");
    if (!json_is_object(model) || !json_is_object(vocab) || !json_is_array(merges))
        return dsr1_error(DSR1_ERR_FORMAT, "tokenizer.json: needs a 'model' object with a "
                                           "'vocab' object and a 'merges' array");
    if (!is_null_or_absent(added) && !json_is_array(added))
        return dsr1_error(DSR1_ERR_FORMAT, "tokenizer.json: 'added_tokens' must be an array");
    if ((st = check_model_options(model)) || (st = check_post_and_decoder(root)) ||
        (st = check_normalizer(json_object_get(root, "normalizer"))) ||
        (st = load_pretokenizer(tok, json_object_get(root, "pre_tokenizer"))))
        return st;
    tok->ignore_merges = bool_or(model, "ignore_merges", false);
    size_t used = 0, cap = 0;
    if ((st = size_vocab(tok, vocab, added)) || (st = load_vocab(tok, vocab, &used, &cap)) ||
        (st = load_merges(tok, merges)) || (st = build_word_memo(tok)) ||
        (st = load_added(tok, added, &used, &cap)))
        return st;
    return DSR1_OK;
}

dsr1_status dsr1_tokenizer_load_file(const char *path, dsr1_tokenizer **out)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_ALLOW_NUL, &jerr);
    if (!root) {
        FILE *f = fopen(path, "rb");
        if (!f) return dsr1_error(DSR1_ERR_IO, "%s: cannot open", path);
        fclose(f);
        return dsr1_error(DSR1_ERR_FORMAT, "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
    }
    dsr1_tokenizer *tok = calloc(1, sizeof(*tok));
    if (!tok) {
        json_decref(root);
        return dsr1_error(DSR1_ERR_NOMEM, "tokenizer: out of memory");
    }
    dsr1__trie_init(&tok->trie_raw);
    dsr1__trie_init(&tok->trie_norm);
    dsr1_status st = load_json(tok, root);
    json_decref(root);
    if (st) {
        dsr1_error_context(st, "%s", path);
        dsr1_tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return DSR1_OK;
}

dsr1_status dsr1_tokenizer_load(const char *model_dir, dsr1_tokenizer **out)
{
    if (!model_dir || !out) return dsr1_error(DSR1_ERR_INVALID_ARG, "tokenizer: NULL argument");
    size_t n = strlen(model_dir) + sizeof("/tokenizer.json");
    char *path = malloc(n);
    if (!path) return dsr1_error(DSR1_ERR_NOMEM, "tokenizer: out of memory");
    snprintf(path, n, "%s/tokenizer.json", model_dir);
    dsr1_status st = dsr1_tokenizer_load_file(path, out);
    free(path);
    return st;
}

void dsr1_tokenizer_free(dsr1_tokenizer *tok)
{
    if (!tok) return;
    free(tok->flags);
    free(tok->bytes_off);
    free(tok->bytes_len);
    free(tok->bytes);
    dsr1__strmap_free(&tok->vocab);
    dsr1__strmap_free(&tok->added_map);
    dsr1__strmap_free(&tok->words);
    dsr1__merges_free(&tok->merges);
    for (size_t i = 0; i < tok->n_added; i++) free(tok->added[i].content);
    free(tok->added);
    dsr1__trie_free(&tok->trie_raw);
    dsr1__trie_free(&tok->trie_norm);
    dsr1__pretok_free(&tok->pretok);
    free(tok);
}

bool dsr1_tokenizer_id_valid(const dsr1_tokenizer *tok, int32_t id)
{
    return id >= 0 && id < tok->n_vocab && (tok->flags[id] & DSR1__TOK_PRESENT);
}

bool dsr1_tokenizer_is_special(const dsr1_tokenizer *tok, int32_t id)
{
    return dsr1_tokenizer_id_valid(tok, id) && (tok->flags[id] & DSR1__TOK_SPECIAL);
}

bool dsr1_tokenizer_is_added(const dsr1_tokenizer *tok, int32_t id)
{
    return dsr1_tokenizer_id_valid(tok, id) && (tok->flags[id] & DSR1__TOK_ADDED);
}

int32_t dsr1_tokenizer_vocab_size(const dsr1_tokenizer *tok)
{
    return tok->n_vocab;
}

int32_t dsr1_tokenizer_token_id(const dsr1_tokenizer *tok, const char *token)
{
    if (!token) return -1;
    int32_t id = dsr1__strmap_get(&tok->added_map, token, strlen(token));
    return id >= 0 ? id : dsr1__strmap_get(&tok->vocab, token, strlen(token));
}

dsr1_status dsr1_tokenizer_token_bytes(const dsr1_tokenizer *tok, int32_t id, const uint8_t **bytes,
                                       size_t *len)
{
    if (!dsr1_tokenizer_id_valid(tok, id))
        return dsr1_error(DSR1_ERR_RANGE, "token id %d is not in the vocabulary (size %d)", (int)id,
                          (int)tok->n_vocab);
    *bytes = tok->bytes + tok->bytes_off[id];
    *len = tok->bytes_len[id];
    return DSR1_OK;
}

dsr1_status dsr1_tokenizer_decode(const dsr1_tokenizer *tok, const int32_t *ids, size_t n,
                                  bool skip_special, char **out, size_t *out_len)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (!dsr1_tokenizer_id_valid(tok, ids[i]))
            return dsr1_error(DSR1_ERR_RANGE,
                              "decode: ids[%zu] = %d is not in the vocabulary "
                              "(size %d)",
                              i, (int)ids[i], (int)tok->n_vocab);
        if (!(skip_special && (tok->flags[ids[i]] & DSR1__TOK_SPECIAL)))
            total += tok->bytes_len[ids[i]];
    }
    uint8_t *raw = malloc(total ? total : 1);
    if (!raw) return dsr1_error(DSR1_ERR_NOMEM, "decode: out of memory for %zu bytes", total);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (skip_special && (tok->flags[ids[i]] & DSR1__TOK_SPECIAL)) continue;
        memcpy(raw + k, tok->bytes + tok->bytes_off[ids[i]], tok->bytes_len[ids[i]]);
        k += tok->bytes_len[ids[i]];
    }
    char *text = NULL;
    size_t len = 0, cap = 0;
    dsr1_status st = dsr1_utf8_lossy_append(raw, k, &text, &len, &cap);
    free(raw);
    if (st) return st;
    *out = text;
    if (out_len) *out_len = len;
    return DSR1_OK;
}
