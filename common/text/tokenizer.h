/* The DeepSeek-V3/R1 tokenizer: text <-> token ids, exactly as Hugging Face's `tokenizers`
 * does it, from the `tokenizer.json` that ships with every checkpoint.
 *
 * What is understood (anything else in tokenizer.json is rejected at load time with
 * DSR1_ERR_UNSUPPORTED and a message naming the part): an identity normalizer (null or an
 * empty Sequence); a pre-tokenizer made of `Split` regexes (behavior "Isolated", invert
 * false) followed by `ByteLevel` (add_prefix_space false; use_regex true adds GPT-2's
 * regex); a byte-level `BPE` model (no dropout, no byte fallback, no subword affixes);
 * a `ByteLevel` post-processor (offsets only, no tokens added) and decoder; added tokens
 * (special or not, lstrip/rstrip, normalized or not; single_word is rejected).
 *
 * Encoding: added tokens are found in the raw text first (leftmost, longest match wins;
 * those with normalized=false in a first pass, the others in the gaps), the rest goes
 * through the Split regexes (PCRE2 with UTF + UCP; `\s` means Unicode White_Space as in
 * Oniguruma, which HF's Rust tokenizers use), then byte-level BPE. No BOS/EOS is added:
 * the chat template writes `<｜begin▁of▁sentence｜>` itself.
 *
 * Input must be valid UTF-8 (HF's API takes only Unicode strings): anything else is
 * DSR1_ERR_INVALID_ARG naming the byte offset. NUL bytes are ordinary characters.
 * Decoding maps ids back to bytes and replaces invalid UTF-8 with U+FFFD (one per maximal
 * invalid subpart, as Rust's from_utf8_lossy and WHATWG's TextDecoder do); ids outside
 * the vocabulary are DSR1_ERR_RANGE.
 *
 * Threads: after dsr1_tokenizer_load() returns, a tokenizer is immutable; any number of
 * threads may encode/decode with it concurrently. Destroy it after the last user. */
#ifndef DSR1_TOKENIZER_H
#define DSR1_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef struct dsr1_tokenizer dsr1_tokenizer;

/* Loads MODEL_DIR/tokenizer.json (tokenizer_config.json is read by the chat template).
 * On success *out owns a tokenizer to free with dsr1_tokenizer_free(). */
dsr1_status dsr1_tokenizer_load(const char *model_dir, dsr1_tokenizer **out);
/* Same, from the path of a tokenizer.json file. */
dsr1_status dsr1_tokenizer_load_file(const char *tokenizer_json_path, dsr1_tokenizer **out);
void dsr1_tokenizer_free(dsr1_tokenizer *tok);

enum {
    /* Treat the text of special added tokens (`<｜User｜>`, ...) as plain text, as HF's
     * `encode_special_tokens=True` does: for user-supplied text that must not be able to
     * forge control tokens. Non-special added tokens (`<think>`) are still matched. */
    DSR1_ENCODE_SPECIAL_AS_TEXT = 1u << 0,
};

/* Encodes len bytes of UTF-8 text (NUL bytes allowed). On success *ids is a malloc'd
 * array of *n ids (NULL when *n == 0) that the caller frees with free(). */
dsr1_status dsr1_tokenizer_encode(const dsr1_tokenizer *tok, const char *text, size_t len,
                                  unsigned flags, int32_t **ids, size_t *n);

/* Decodes n ids to NUL-terminated UTF-8 (*out malloc'd, caller frees; *out_len excludes
 * the NUL and may be NULL). skip_special drops ids of special tokens. */
dsr1_status dsr1_tokenizer_decode(const dsr1_tokenizer *tok, const int32_t *ids, size_t n,
                                  bool skip_special, char **out, size_t *out_len);

/* The id of a token given its text: an added token's content (`<｜end▁of▁sentence｜>`,
 * `</think>`) or a vocabulary entry in byte-level form (`Ġthe`). -1 when unknown. */
int32_t dsr1_tokenizer_token_id(const dsr1_tokenizer *tok, const char *token);

/* One past the largest id. Ids in [0, vocab_size) that no token uses are out of range. */
int32_t dsr1_tokenizer_vocab_size(const dsr1_tokenizer *tok);
/* Whether id is a token (false for holes and ids out of range). */
bool dsr1_tokenizer_id_valid(const dsr1_tokenizer *tok, int32_t id);
/* Whether id is a special added token (false for unknown ids). */
bool dsr1_tokenizer_is_special(const dsr1_tokenizer *tok, int32_t id);
/* Whether id is an added token, special or not (R1's <｜tool▁calls▁begin｜> and <｜User｜>
 * are added but not special): matched as a whole in text, never built by BPE merges. */
bool dsr1_tokenizer_is_added(const dsr1_tokenizer *tok, int32_t id);
/* The bytes a token decodes to (not NUL-terminated; not necessarily complete UTF-8).
 * Borrowed from tok. DSR1_ERR_RANGE for unknown ids. */
dsr1_status dsr1_tokenizer_token_bytes(const dsr1_tokenizer *tok, int32_t id, const uint8_t **bytes,
                                       size_t *len);

#endif
