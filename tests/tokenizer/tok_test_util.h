/* Helpers shared by the tokenizer tests: a DeepSeek-R1 tokenizer directory built from the
 * published DeepSeek-V3 files in ../shared/golden/tokenizer by dsr1_mkmodel_tokenizer (the
 * edits make_tiny.py makes), so the C tests need neither Python nor numpy; and a small
 * deterministic random generator. */
#ifndef DSR1_TOK_TEST_UTIL_H
#define DSR1_TOK_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

#define TOK_TEST_SKIP 77 /* meson's exit code for a skipped test */

struct CMUnitTest;
/* The main() of a cmocka group over R1's tokenizer: argv[1] is GOLDEN_DIR; writes the
 * tokenizer directory into model_dir (cap bytes), loads it into *tok when tok is not NULL,
 * runs setup (may be NULL) once loaded, runs the tests, then frees and removes everything.
 * Returns the exit status (2 on usage, TOK_TEST_SKIP when GOLDEN_DIR lacks the tokenizer). */
int tok_test_main(int argc, char **argv, const struct CMUnitTest *tests, size_t n_tests,
                  char *model_dir, size_t cap, dsr1_tokenizer **tok, int (*setup)(void));

/* Writes tokenizer.json and tokenizer_config.json for R1 into a fresh temporary
 * directory, copied to dir (cap bytes). Returns 0, TOK_TEST_SKIP when golden_dir lacks
 * the tokenizer, or 1 on error (message on stderr). */
int tok_test_make_r1_dir(const char *golden_dir, char *dir, size_t cap);
/* Removes what tok_test_make_r1_dir wrote. */
void tok_test_remove_dir(const char *dir);

/* xorshift64*: reproducible random test data from a seed. */
typedef struct {
    uint64_t s;
} tok_rng;

static inline uint64_t tok_rng_next(tok_rng *r)
{
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 2685821657736338717ull;
}

static inline uint32_t tok_rng_below(tok_rng *r, uint32_t n)
{
    return (uint32_t)(tok_rng_next(r) % n);
}

/* Appends the UTF-8 encoding of cp to buf at *len (buf needs 4 free bytes). */
void tok_test_put_utf8(char *buf, size_t *len, uint32_t cp);

/* Appends a random piece of "nasty" text (see tok_test_util.c for the mix) to buf
 * (at least 1024 free bytes), for differential and fuzz-style tests. */
void tok_test_random_piece(tok_rng *r, char *buf, size_t *len);

#endif
