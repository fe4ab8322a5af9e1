/* Streaming detokenizer (see detok.h). State is the at most three trailing bytes of an
 * unfinished UTF-8 character. Each push appends the token's bytes to them, asks how many
 * trailing bytes are still a possible prefix of a character (tokenizer_utf8.c), and
 * repairs and emits everything before that. Because lossy repair of a byte string only
 * depends on bytes up to the point where a sequence breaks, emitting that way gives the
 * same text as decoding the whole sequence at once. */
#include "detok.h"

#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

struct dsr1_detok {
    const dsr1_tokenizer *tok;
    unsigned flags;
    uint8_t held[4];
    size_t nheld;
    uint8_t *work; /* held bytes + the current token's */
    size_t work_cap;
    char *out; /* the text returned by the last call */
    size_t out_cap;
};

dsr1_status dsr1_detok_create(const dsr1_tokenizer *tok, unsigned flags, dsr1_detok **out)
{
    if (!tok || !out) return dsr1_error(DSR1_ERR_INVALID_ARG, "detok: NULL argument");
    dsr1_detok *d = calloc(1, sizeof(*d));
    if (!d) return dsr1_error(DSR1_ERR_NOMEM, "detok: out of memory");
    d->tok = tok;
    d->flags = flags;
    *out = d;
    return DSR1_OK;
}

void dsr1_detok_free(dsr1_detok *d)
{
    if (!d) return;
    free(d->work);
    free(d->out);
    free(d);
}

static dsr1_status emit(dsr1_detok *d, const uint8_t *bytes, size_t n, const char **text,
                        size_t *len)
{
    size_t out_len = 0;
    dsr1_status st = dsr1_utf8_lossy_append(bytes, n, &d->out, &out_len, &d->out_cap);
    if (st) return st;
    *text = d->out;
    *len = out_len;
    return DSR1_OK;
}

dsr1_status dsr1_detok_push(dsr1_detok *d, int32_t id, const char **text, size_t *len)
{
    const uint8_t *tb;
    size_t tn;
    dsr1_status st = dsr1_tokenizer_token_bytes(d->tok, id, &tb, &tn);
    if (st) return st;
    if ((d->flags & DSR1_DETOK_SKIP_SPECIAL) && dsr1_tokenizer_is_special(d->tok, id)) tn = 0;
    size_t n = d->nheld + tn;
    if (n > d->work_cap || !d->work) {
        size_t cap = n < 64 ? 64 : n * 2;
        uint8_t *w = realloc(d->work, cap);
        if (!w) return dsr1_error(DSR1_ERR_NOMEM, "detok: out of memory");
        d->work = w;
        d->work_cap = cap;
    }
    memcpy(d->work, d->held, d->nheld);
    memcpy(d->work + d->nheld, tb, tn);
    size_t keep = dsr1_utf8_incomplete_tail(d->work, n);
    if ((st = emit(d, d->work, n - keep, text, len))) return st;
    memcpy(d->held, d->work + n - keep, keep);
    d->nheld = keep;
    return DSR1_OK;
}

dsr1_status dsr1_detok_flush(dsr1_detok *d, const char **text, size_t *len)
{
    uint8_t held[4];
    size_t n = d->nheld;
    memcpy(held, d->held, n);
    dsr1_status st = emit(d, held, n, text, len);
    if (!st) d->nheld = 0;
    return st;
}

size_t dsr1_detok_pending(const dsr1_detok *d)
{
    return d->nheld;
}

void dsr1_detok_reset(dsr1_detok *d)
{
    d->nheld = 0;
}
