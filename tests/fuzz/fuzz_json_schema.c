/* libFuzzer target for the JSON Schema converter (dsr1_json_schema_to_ebnf): any bytes must
 * give either an error with a message, or grammar text that the engine's parser accepts
 * (a limit reached there is fine; a syntax error means the converter wrote bad text, which
 * traps). The first byte picks the options. Built by run_schema_fuzz.sh. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "grammar.h"

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) __builtin_trap();                                                                \
    } while (0)

static dsr1_grammar_vocab *vocab(void)
{
    static dsr1_grammar_vocab *v;
    if (!v) {
        static uint8_t b[256];
        const uint8_t *p[257];
        uint32_t l[257];
        for (int i = 0; i < 256; i++) b[i] = (uint8_t)i, p[i] = &b[i], l[i] = 1;
        p[256] = b;
        l[256] = 0;
        CHECK(dsr1_grammar_vocab_create_raw(257, p, l, 256, &v) == DSR1_OK);
    }
    return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    dsr1_grammar_opts o = {.json_whitespace = data[0] & 1,
                           .strict_objects = (data[0] >> 1) & 1,
                           .max_rules = (data[0] & 4) ? 50 : 0,
                           .max_repeat = (data[0] & 8) ? 20 : 0,
                           /* the engine bounds determinization by states, not time:
                            * a small limit keeps each input well under the timeout */
                           .max_states = 20000};
    char *text = (char *)0x1;
    size_t n = 0;
    dsr1_status st = dsr1_json_schema_to_ebnf((const char *)data + 1, size - 1, &o, &text, &n);
    if (st != DSR1_OK) {
        CHECK(st == DSR1_ERR_INVALID_ARG || st == DSR1_ERR_RANGE || st == DSR1_ERR_NOMEM);
        CHECK(dsr1_errmsg()[0] != '\0');
        CHECK(text == (char *)0x1);
        return 0;
    }
    CHECK(text && strlen(text) == n && n > 0);
    dsr1_grammar *g = NULL;
    st = dsr1_grammar_compile_ebnf(vocab(), text, n, &o, &g);
    CHECK(st == DSR1_OK || st == DSR1_ERR_RANGE || st == DSR1_ERR_NOMEM);
    if (g) {
        dsr1_matcher *m;
        if (dsr1_matcher_create(g, &m) == DSR1_OK) {
            uint32_t mask[(257 + 31) / 32];
            dsr1_matcher_mask(m, mask);
            bool any = false;
            for (int i = 0; i < 9; i++) any |= mask[i] != 0;
            CHECK(any); /* a converted schema always derives some text */
            dsr1_matcher_free(m);
        }
        dsr1_grammar_free(g);
    }
    free(text);
    return 0;
}
