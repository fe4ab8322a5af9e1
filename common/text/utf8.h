/* UTF-8 checks shared by everything that handles text: strict validation (Unicode's Table
 * 3-7: no overlong forms, no surrogates, nothing above U+10FFFF), the "how many trailing
 * bytes are an unfinished character" question a streaming decoder asks, and lossy repair
 * (each maximal ill-formed subpart becomes one U+FFFD). */
#ifndef DSR1_UTF8_H
#define DSR1_UTF8_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* Offset of the first byte that is not part of valid UTF-8, or len when all is valid. */
size_t dsr1_utf8_valid_prefix(const uint8_t *s, size_t len);
/* Length of the longest suffix of s that is a proper prefix of some valid UTF-8 sequence
 * (0..3): bytes a streaming decoder must hold back until more arrive. */
size_t dsr1_utf8_incomplete_tail(const uint8_t *s, size_t len);
/* Appends s to out (capacity grown with realloc), replacing each maximal invalid subpart
 * with U+FFFD. */
dsr1_status dsr1_utf8_lossy_append(const uint8_t *s, size_t len, char **out, size_t *out_len,
                                   size_t *out_cap);

#endif
