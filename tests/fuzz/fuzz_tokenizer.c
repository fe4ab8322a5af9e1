/* libFuzzer target for the tokenizer and its neighbours. The first input byte picks what
 * the rest is fed to:
 *   0-3  the encoder (bytes as text, with and without special tokens): it must reject
 *        invalid UTF-8 cleanly, and anything it accepts must decode back to the very same
 *        bytes, and stream back through the detokenizer to the same bytes too;
 *   4    the decoder and streaming detokenizer (bytes as little-endian int32 ids, in range
 *        or not): streaming must equal decode, and be valid UTF-8;
 *   5    the chat-template compiler and renderer (bytes as a template, rendered with a
 *        small conversation): any outcome but a crash or a hang is fine;
 *   6    the R1 chat template with the bytes as the messages JSON.
 * A broken property traps, so the fuzzer reports it. Built by run_tokenizer_fuzz.sh; the
 * tokenizer directory comes from DSR1_FUZZ_MODEL. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template.h"
#include "detok.h"
#include "tokenizer.h"

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) __builtin_trap();                                                                \
    } while (0)

static dsr1_tokenizer *tok;
static dsr1_chat_template *r1;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *dir = getenv("DSR1_FUZZ_MODEL");
    if (!dir || dsr1_tokenizer_load(dir, &tok) || dsr1_chat_template_load(dir, &r1)) {
        fprintf(stderr,
                "fuzz_tokenizer: set DSR1_FUZZ_MODEL to a directory with the R1 "
                "tokenizer.json and tokenizer_config.json (%s)\n",
                dsr1_errmsg());
        exit(1);
    }
    return 0;
}

/* Streams ids through a detokenizer; the concatenation must equal want. */
static void check_stream(const int32_t *ids, size_t n, unsigned flags, const char *want,
                         size_t wlen)
{
    dsr1_detok *d;
    CHECK(dsr1_detok_create(tok, flags, &d) == DSR1_OK);
    size_t k = 0;
    for (size_t i = 0; i <= n; i++) {
        const char *text;
        size_t len;
        dsr1_status st =
            i < n ? dsr1_detok_push(d, ids[i], &text, &len) : dsr1_detok_flush(d, &text, &len);
        if (st) {
            CHECK(st == DSR1_ERR_RANGE && !dsr1_tokenizer_id_valid(tok, ids[i]));
            continue;
        }
        CHECK(k + len <= wlen && !memcmp(want + k, text, len));
        k += len;
    }
    CHECK(k == wlen);
    dsr1_detok_free(d);
}

static void fuzz_encode(const uint8_t *data, size_t size, unsigned flags)
{
    int32_t *ids = NULL;
    size_t n = 0;
    if (dsr1_tokenizer_encode(tok, (const char *)data, size, flags, &ids, &n)) return;
    CHECK(n <= size); /* every token covers at least one byte */
    char *text;
    size_t len;
    CHECK(dsr1_tokenizer_decode(tok, ids, n, false, &text, &len) == DSR1_OK);
    CHECK(len == size && !memcmp(text, data, size));
    check_stream(ids, n, 0, text, len);
    free(text);
    free(ids);
}

static void fuzz_decode(const uint8_t *data, size_t size)
{
    size_t n = size / 4;
    int32_t *ids = malloc(n * sizeof(*ids) + 1);
    memcpy(ids, data, n * 4);
    /* mostly valid ids: fold most of them into the vocabulary */
    for (size_t i = 0; i < n; i++)
        if (i % 7) ids[i] = (int32_t)((uint32_t)ids[i] % (uint32_t)dsr1_tokenizer_vocab_size(tok));
    for (int skip = 0; skip < 2; skip++) {
        char *text;
        size_t len;
        bool all_valid = true;
        for (size_t i = 0; i < n; i++) all_valid &= dsr1_tokenizer_id_valid(tok, ids[i]);
        dsr1_status st = dsr1_tokenizer_decode(tok, ids, n, skip, &text, &len);
        CHECK(all_valid ? st == DSR1_OK : st == DSR1_ERR_RANGE);
        if (st) continue;
        /* decoded text is always valid UTF-8: re-encoding accepts it */
        int32_t *again;
        size_t m;
        CHECK(dsr1_tokenizer_encode(tok, text, len, 0, &again, &m) == DSR1_OK);
        free(again);
        check_stream(ids, n, skip ? DSR1_DETOK_SKIP_SPECIAL : 0, text, len);
        free(text);
    }
    free(ids);
}

static void fuzz_template(const uint8_t *data, size_t size)
{
    dsr1_chat_template *t;
    if (dsr1_chat_template_compile((const char *)data, size, "<s>", "</s>", &t)) return;
    char *out;
    if (!dsr1_chat_template_render(t,
                                   "[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\","
                                   "\"content\":\"u <think>x</think>\"},{\"role\":\"assistant\","
                                   "\"content\":null,\"tool_calls\":[{\"type\":\"function\","
                                   "\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]}]",
                                   true, &out, NULL))
        free(out);
    dsr1_chat_template_free(t);
}

static void fuzz_messages(const uint8_t *data, size_t size)
{
    char *json = malloc(size + 1);
    memcpy(json, data, size);
    json[size] = '\0';
    char *out;
    size_t len;
    if (!dsr1_chat_template_render(r1, json, size % 2, &out, &len)) {
        CHECK(strlen(out) <= len); /* NUL-terminated (content may hold NULs) */
        free(out);
    }
    free(json);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    uint8_t mode = data[0] % 7;
    data++, size--;
    switch (mode) {
    case 0:
    case 1:
    case 2:
        fuzz_encode(data, size, 0);
        break;
    case 3:
        fuzz_encode(data, size, DSR1_ENCODE_SPECIAL_AS_TEXT);
        break;
    case 4:
        fuzz_decode(data, size);
        break;
    case 5:
        fuzz_template(data, size);
        break;
    case 6:
        fuzz_messages(data, size);
        break;
    }
    return 0;
}
