/* UTF-8 checks for the tokenizer: strict validation of encoder input, lossy repair of
 * decoder output, and the "how many trailing bytes are an unfinished character" question
 * the streaming detokenizer asks after every token.
 *
 * Validity follows the Unicode standard (Table 3-7): no overlong forms, no surrogates,
 * nothing above U+10FFFF. Repair replaces each *maximal subpart* of an ill-formed
 * sequence with one U+FFFD (Unicode's recommended practice, which Rust's
 * String::from_utf8_lossy and the WHATWG TextDecoder both implement), so our decode
 * output matches Hugging Face's byte for byte even for garbage id sequences. */
#include "utf8.h"

#include <stdlib.h>
#include <string.h>

/* Looks at the sequence starting at s[0] (avail >= 1 bytes). Sets *full to the length a
 * complete sequence with this lead byte has (0: s[0] cannot start one) and returns how
 * many bytes from s[0] are consistent with it: == *full means a complete character. */
static size_t seq_prefix(const uint8_t *s, size_t avail, size_t *full)
{
    uint8_t c = s[0], lo = 0x80, hi = 0xBF;
    size_t n;
    if (c < 0x80) {
        *full = 1;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        *full = 0;
        return 0;
    }
    *full = n;
    size_t k = 1;
    if (k >= avail || s[k] < lo || s[k] > hi) return k;
    k++;
    while (k < n && k < avail && (s[k] & 0xC0) == 0x80) k++;
    return k;
}

size_t dsr1_utf8_valid_prefix(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        /* ASCII runs dominate real text: test 8 bytes at a time. */
        while (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull) break;
            i += 8;
        }
        if (i >= len) break;
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t full, k = seq_prefix(s + i, len - i, &full);
        if (full == 0 || k != full) return i;
        i += k;
    }
    return len;
}

size_t dsr1_utf8_incomplete_tail(const uint8_t *s, size_t len)
{
    for (size_t back = 1; back <= 3 && back <= len; back++) {
        uint8_t c = s[len - back];
        if ((c & 0xC0) == 0x80) continue; /* a continuation byte: look further back */
        size_t full, k = seq_prefix(s + len - back, back, &full);
        return (full > back && k == back) ? back : 0;
    }
    return 0;
}

static dsr1_status grow(char **out, size_t *cap, size_t need)
{
    if (need <= *cap) return DSR1_OK;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    char *p = realloc(*out, c);
    if (!p) return dsr1_error(DSR1_ERR_NOMEM, "tokenizer: out of memory for %zu bytes", c);
    *out = p;
    *cap = c;
    return DSR1_OK;
}

dsr1_status dsr1_utf8_lossy_append(const uint8_t *s, size_t len, char **out, size_t *out_len,
                                    size_t *out_cap)
{
    /* Worst case every byte becomes a 3-byte U+FFFD; +1 keeps room for a NUL. */
    dsr1_status st = grow(out, out_cap, *out_len + len * 3 + 1);
    if (st) return st;
    char *o = *out + *out_len;
    size_t i = 0;
    while (i < len) {
        size_t full, k = seq_prefix(s + i, len - i, &full);
        if (full != 0 && k == full) {
            memcpy(o, s + i, k);
            o += k;
            i += k;
            continue;
        }
        memcpy(o, "\xEF\xBF\xBD", 3);
        o += 3;
        i += k ? k : 1;
    }
    *out_len = (size_t)(o - *out);
    (*out)[*out_len] = '\0';
    return DSR1_OK;
}
