/* Differential test against Hugging Face's tokenizers: thousands of random strings built
 * to hit every branch of the DeepSeek regexes, the added-token matcher and both BPE paths
 * are encoded by us and by @huggingface/tokenizers (hf_reference.mjs under node), and the
 * ids and decoded text must agree exactly. The fixed golden cases are in test_tokenizer.c;
 * this catches what a hand-picked list misses.
 *
 * usage: test_tokenizer_hf GOLDEN_DIR HF_REFERENCE_MJS [COUNT] [SEED]
 * Skips (77) without the golden files, node or the npm package. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tok_test_util.h"
#include "tokenizer.h"

static int compare(const dsr1_tokenizer *tok, json_t *texts, json_t *ref)
{
    int bad = 0;
    for (size_t i = 0; i < json_array_size(texts); i++) {
        json_t *t = json_array_get(texts, i), *r = json_array_get(ref, i);
        json_t *rids = json_object_get(r, "ids"), *rdec = json_object_get(r, "decoded");
        int32_t *ids = NULL;
        size_t n = 0;
        char *dec = NULL;
        size_t dlen = 0;
        if (dsr1_tokenizer_encode(tok, json_string_value(t), json_string_length(t), 0, &ids, &n) ||
            dsr1_tokenizer_decode(tok, ids, n, false, &dec, &dlen)) {
            fprintf(stderr, "case %zu: %s\n", i, dsr1_errmsg());
            free(ids);
            return 1;
        }
        bool same = n == json_array_size(rids) && dlen == json_string_length(rdec) &&
                    !memcmp(dec, json_string_value(rdec), dlen);
        for (size_t k = 0; same && k < n; k++)
            same = ids[k] == json_integer_value(json_array_get(rids, k));
        if (!same && bad++ < 10) {
            char *q = json_dumps(t, JSON_ENCODE_ANY);
            fprintf(stderr, "MISMATCH case %zu: %s\n  ours:", i, q);
            free(q);
            for (size_t k = 0; k < n; k++) fprintf(stderr, " %d", ids[k]);
            fprintf(stderr, "\n  hf:  ");
            for (size_t k = 0; k < json_array_size(rids); k++)
                fprintf(stderr, " %lld", (long long)json_integer_value(json_array_get(rids, k)));
            fprintf(stderr, "\n");
        }
        free(ids);
        free(dec);
    }
    printf("%zu random strings, %d mismatches\n", json_array_size(texts), bad);
    return bad ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s GOLDEN_DIR HF_REFERENCE_MJS [COUNT] [SEED]\n", argv[0]);
        return 2;
    }
    size_t count = argc > 3 ? strtoul(argv[3], NULL, 10) : 3000;
    tok_rng rng = {argc > 4 ? strtoull(argv[4], NULL, 10) : 0x5EED5EEDull};
    if (system("node --version >/dev/null 2>&1")) {
        fprintf(stderr, "skip: node not found\n");
        return TOK_TEST_SKIP;
    }
    char dir[256];
    int rc = tok_test_make_r1_dir(argv[1], dir, sizeof(dir));
    if (rc) return rc;
    dsr1_tokenizer *tok = NULL;
    if (dsr1_tokenizer_load(dir, &tok)) {
        fprintf(stderr, "load: %s\n", dsr1_errmsg());
        tok_test_remove_dir(dir);
        return 1;
    }
    json_t *texts = json_array();
    char *buf = malloc(1 << 16);
    for (size_t i = 0; i < count; i++) {
        size_t len = 0, pieces = 1 + tok_rng_below(&rng, 12);
        for (size_t p = 0; p < pieces; p++) tok_test_random_piece(&rng, buf, &len);
        json_array_append_new(texts, json_stringn(buf, len));
    }
    free(buf);
    char in[300], out[300], cmd[1400];
    snprintf(in, sizeof(in), "%s/in.json", dir);
    snprintf(out, sizeof(out), "%s/out.json", dir);
    json_dump_file(texts, in, JSON_COMPACT);
    snprintf(cmd, sizeof(cmd), "node '%s' '%s' '%s' '%s'", argv[2], dir, in, out);
    int st = system(cmd);
    json_t *ref = NULL;
    if (WIFEXITED(st) && WEXITSTATUS(st) == TOK_TEST_SKIP) {
        rc = TOK_TEST_SKIP;
    } else if (st) {
        fprintf(stderr, "reference failed: %s\n", cmd);
        rc = 1;
    } else {
        json_error_t err;
        ref = json_load_file(out, JSON_ALLOW_NUL, &err);
        rc = ref && json_array_size(ref) == count ? compare(tok, texts, ref) : 1;
    }
    json_decref(ref);
    json_decref(texts);
    unlink(in);
    unlink(out);
    tok_test_remove_dir(dir);
    dsr1_tokenizer_free(tok);
    return rc;
}
