/* Conformance of the JSON Schema converter with the official JSON-Schema-Test-Suite
 * (vendored under tests/grammar/JSON-Schema-Test-Suite, see its README.md).
 *
 * For every test-case schema the converter accepts, every instance the suite labels valid,
 * serialised compactly in schema property order (json_schema_instance.h), must be accepted
 * token by token with R1's tokenizer: each token must be in the matcher's mask and advance
 * it, and end-of-sequence must be allowed at the end. Invalid instances the grammar accepts
 * are reported, not failed: oneOf is taken as anyOf and formats are regular
 * over-approximations by design; those whose serialisation equals a valid instance's cannot
 * be told apart by any grammar (marked "hidden"). Schemas the converter rejects are counted
 * (with the first error per file shown with -v).
 *
 *   test_schema_suite SUITE_DIR GOLDEN_DIR [-v]     (exit 77 without GOLDEN_DIR/tokenizer) */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "grammar.h"
#include "json_schema_instance.h"
#include "tokenizer.h"

static const char *const files[] = {
    "draft2020-12/type.json",
    "draft2020-12/properties.json",
    "draft2020-12/required.json",
    "draft2020-12/enum.json",
    "draft2020-12/const.json",
    "draft2020-12/items.json",
    "draft2020-12/prefixItems.json",
    "draft2020-12/minItems.json",
    "draft2020-12/maxItems.json",
    "draft2020-12/minLength.json",
    "draft2020-12/maxLength.json",
    "draft2020-12/anyOf.json",
    "draft2020-12/oneOf.json",
    "draft2020-12/allOf.json",
    "draft2020-12/ref.json",
    "draft2020-12/defs.json",
    "draft2020-12/additionalProperties.json",
    "draft2020-12/patternProperties.json",
    "draft2020-12/minProperties.json",
    "draft2020-12/maxProperties.json",
    "draft2020-12/dependentRequired.json",
    "draft2020-12/pattern.json",
    "draft2020-12/minimum.json",
    "draft2020-12/maximum.json",
    "draft2020-12/exclusiveMinimum.json",
    "draft2020-12/exclusiveMaximum.json",
    "draft2020-12/boolean_schema.json",
    "draft2020-12/default.json",
    "draft2020-12/optional/format/date.json",
    "draft2020-12/optional/format/time.json",
    "draft2020-12/optional/format/date-time.json",
    "draft2020-12/optional/format/uuid.json",
    "draft2020-12/optional/format/email.json",
    "draft2020-12/optional/format/ipv4.json",
    "draft2020-12/optional/format/ipv6.json",
    "draft2020-12/optional/format/hostname.json",
    "draft2020-12/optional/format/duration.json",
    "draft2020-12/optional/format/uri.json",
    "draft7/items.json",
    "draft7/additionalItems.json",
    "draft7/ref.json",
    "draft7/dependencies.json",
};

typedef struct {
    const dsr1_tokenizer *tok;
    const dsr1_grammar_vocab *v;
    int32_t eos, vsize;
    uint32_t *mask;
    bool verbose;
    int groups, compiled, valid_ok, valid_fail, invalid_rejected, invalid_accepted, hidden;
} suite;

/* 1: the text is accepted token by token; 0: rejected (*at: the token index, n: at end). */
static int walk(suite *s, const dsr1_grammar *g, const char *text, size_t len, size_t *at)
{
    int32_t *ids = NULL;
    size_t n = 0;
    if (dsr1_tokenizer_encode(s->tok, text, len, DSR1_ENCODE_SPECIAL_AS_TEXT, &ids, &n)) {
        fprintf(stderr, "tokenizing %s: %s\n", text, dsr1_errmsg());
        exit(1);
    }
    dsr1_matcher *m;
    if (dsr1_matcher_create(g, &m)) {
        fprintf(stderr, "matcher: %s\n", dsr1_errmsg());
        exit(1);
    }
    int ok = 1;
    for (size_t i = 0; i <= n && ok; i++) {
        int32_t id = i < n ? ids[i] : s->eos;
        dsr1_matcher_mask(m, s->mask);
        bool in = (s->mask[id / 32] >> (id % 32)) & 1;
        bool adv = dsr1_matcher_advance(m, id) == DSR1_OK;
        if (in != adv) {
            fprintf(stderr, "FAIL: mask and advance disagree on token %d of %s\n", id, text);
            exit(1);
        }
        if (!in) {
            ok = 0;
            *at = i;
        }
    }
    dsr1_matcher_free(m);
    free(ids);
    return ok;
}

static void run_file(suite *s, const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/%s", dir, name);
    json_error_t e;
    json_t *doc = json_load_file(path, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    if (!doc) {
        fprintf(stderr, "%s: line %d: %s\n", path, e.line, e.text);
        exit(1);
    }
    bool format = strstr(name, "/format/") != NULL;
    int skipped = 0;
    size_t gi;
    json_t *group;
    json_array_foreach(doc, gi, group)
    {
        s->groups++;
        const char *gdesc = json_string_value(json_object_get(group, "description"));
        json_t *sch = json_object_get(group, "schema");
        /* the suite runs draft7/ under draft-07 without saying so in the schemas */
        if (!strncmp(name, "draft7/", 7) && json_is_object(sch) && !json_object_get(sch, "$schema"))
            json_object_set_new(sch, "$schema",
                                json_string("http://json-schema.org/draft-07/schema#"));
        char *schema = json_dumps(sch, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
        dsr1_grammar *g = NULL;
        if (dsr1_grammar_compile_json_schema(s->v, schema, strlen(schema), NULL, &g)) {
            if (s->verbose) printf("  skip %s: %s: %s\n", name, gdesc, dsr1_errmsg());
            skipped++;
            free(schema);
            continue;
        }
        s->compiled++;
        json_t *tests = json_object_get(group, "tests"), *t;
        size_t ti;
        /* serialised texts of the valid instances, to tell "hidden" differences */
        char *texts[64] = {0};
        bool valid[64] = {0};
        json_array_foreach(tests, ti, t)
        {
            if (ti >= 64) break;
            char *inst = json_dumps(json_object_get(t, "data"), JSON_COMPACT | JSON_ENCODE_ANY);
            size_t len;
            if (dsr1_json_schema_serialize_instance(schema, strlen(schema), inst, strlen(inst),
                                                    &texts[ti], &len)) {
                fprintf(stderr, "serialise %s: %s\n", inst, dsr1_errmsg());
                exit(1);
            }
            free(inst);
            valid[ti] = json_is_true(json_object_get(t, "valid"));
        }
        json_array_foreach(tests, ti, t)
        {
            if (ti >= 64) break;
            const char *tdesc = json_string_value(json_object_get(t, "description"));
            size_t at = 0;
            int ok = walk(s, g, texts[ti], strlen(texts[ti]), &at);
            if (valid[ti] && ok) {
                s->valid_ok++;
            } else if (valid[ti]) {
                s->valid_fail++;
                printf("FAIL %s: %s: %s: valid %s rejected at token %zu\n", name, gdesc, tdesc,
                       texts[ti], at);
            } else if (!ok) {
                s->invalid_rejected++;
            } else {
                bool hidden = false;
                for (size_t k = 0; k < json_array_size(tests) && k < 64; k++)
                    hidden |= valid[k] && !strcmp(texts[k], texts[ti]);
                if (hidden)
                    s->hidden++;
                else
                    s->invalid_accepted++;
                if (s->verbose || !format)
                    printf("  note %s: %s: %s: invalid %s accepted%s\n", name, gdesc, tdesc,
                           texts[ti], hidden ? " (hidden by the serialisation)" : "");
            }
        }
        for (int k = 0; k < 64; k++) free(texts[k]);
        dsr1_grammar_free(g);
        free(schema);
    }
    printf("%-45s %3zu groups, %2d not convertible\n", name, json_array_size(doc), skipped);
    json_decref(doc);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s SUITE_DIR GOLDEN_DIR [-v]\n", argv[0]);
        return 2;
    }
    char tokdir[4096];
    snprintf(tokdir, sizeof tokdir, "%s/tokenizer/tokenizer.json", argv[2]);
    if (access(tokdir, R_OK)) {
        printf("skipped: no %s\n", tokdir);
        return 77;
    }
    snprintf(tokdir, sizeof tokdir, "%s/tokenizer", argv[2]);
    suite s = {.verbose = argc > 3 && !strcmp(argv[3], "-v")};
    dsr1_tokenizer *tok;
    dsr1_grammar_vocab *v;
    if (dsr1_tokenizer_load(tokdir, &tok)) {
        fprintf(stderr, "%s\n", dsr1_errmsg());
        return 1;
    }
    s.tok = tok;
    s.eos = dsr1_tokenizer_token_id(tok, "<｜end▁of▁sentence｜>");
    if (s.eos < 0 || dsr1_grammar_vocab_create(tok, s.eos, &v)) {
        fprintf(stderr, "vocabulary: %s\n", dsr1_errmsg());
        return 1;
    }
    s.v = v;
    s.vsize = dsr1_grammar_vocab_size(v);
    s.mask = malloc(dsr1_grammar_mask_words(s.vsize) * sizeof *s.mask);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) run_file(&s, argv[1], files[i]);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("\n%d groups, %d converted; valid instances: %d accepted, %d rejected; invalid: %d "
           "rejected, %d accepted (+%d hidden by the serialisation); %.1f s\n",
           s.groups, s.compiled, s.valid_ok, s.valid_fail, s.invalid_rejected, s.invalid_accepted,
           s.hidden, (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    free(s.mask);
    dsr1_grammar_vocab_free(v);
    dsr1_tokenizer_free(tok);
    return s.valid_fail ? 1 : 0;
}
