/* Streaming detokenizer: turns generated ids into text one id at a time, for streaming
 * responses.
 *
 * Byte-level BPE tokens are byte strings, not characters: `你` may arrive as two tokens
 * carrying 2 + 1 of its 3 bytes. A detokenizer emits text only once it is complete
 * UTF-8: trailing bytes that could still become a character are held until the next id
 * decides them; bytes that can never become one are emitted as U+FFFD right away. The
 * concatenation of everything push and flush return equals dsr1_tokenizer_decode() of the
 * whole sequence (same flags), byte for byte.
 *
 * A detokenizer belongs to one stream (one thread at a time); any number of them may share
 * one tokenizer, which must outlive them. */
#ifndef DSR1_DETOK_H
#define DSR1_DETOK_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"
#include "tokenizer.h"

typedef struct dsr1_detok dsr1_detok;

enum {
    DSR1_DETOK_SKIP_SPECIAL = 1u << 0, /* drop special tokens (`<｜end▁of▁sentence｜>`) */
};

dsr1_status dsr1_detok_create(const dsr1_tokenizer *tok, unsigned flags, dsr1_detok **out);
void dsr1_detok_free(dsr1_detok *d);

/* Feeds one id. On success *text / *len is the text it completed: valid UTF-8, often
 * empty, NUL-terminated, borrowed from d until its next call. An id outside the vocabulary
 * is DSR1_ERR_RANGE and leaves d as it was. */
dsr1_status dsr1_detok_push(dsr1_detok *d, int32_t id, const char **text, size_t *len);

/* End of stream: the held bytes, each maximal invalid part as U+FFFD (empty when
 * nothing is held). d is then ready for a new stream. */
dsr1_status dsr1_detok_flush(dsr1_detok *d, const char **text, size_t *len);

/* Bytes currently held back (0..3): a client can tell "no text yet" from "nothing". */
size_t dsr1_detok_pending(const dsr1_detok *d);

/* Drops held bytes without emitting them. */
void dsr1_detok_reset(dsr1_detok *d);

#endif
