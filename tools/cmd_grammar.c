/* `dsr1 grammar`: the grammar engine from the command line.
 *
 *   compile  builds a grammar (JSON Schema, regex, EBNF or "any JSON object") and reports
 *            its size and compile time, or the error; --print shows the grammar text.
 *   check    walks an instance through the grammar token by token, with the checkpoint's
 *            tokenizer, exactly as constrained decoding would: the first token the mask
 *            forbids is reported (id, text, byte position), with per-token mask timings.
 *
 * The JSON Schema conformance test (tests/grammar/check_schema_suite.py) drives `check`. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "commands.h"
#include "grammar.h"
#include "json_schema_instance.h"
#include "tokenizer.h"

#define MAX_FILE  ((size_t)64 << 20)
#define EOS_TOKEN "<｜end▁of▁sentence｜>"

typedef struct {
    const char *schema, *regex, *ebnf, *model, *instance;
    bool json_object, print, strict, whitespace, raw;
} gopts;

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: dsr1 grammar compile (--schema FILE | --regex RE | --ebnf FILE | --json-object)\n"
        "                            [--model DIR] [--print] [--strict] [--whitespace]\n"
        "       dsr1 grammar check (--schema FILE | --regex RE | --ebnf FILE | --json-object)\n"
        "                          --instance FILE --model DIR [--raw] [--strict] "
        "[--whitespace]\n\n"
        "compile: build the grammar and print its size (rules, terminals, automaton states)\n"
        "  and compile time, or the error (the JSON pointer or line:column at fault).\n"
        "  Without --model the vocabulary is the 256 single bytes.\n"
        "check: tokenize the instance with the checkpoint's tokenizer and walk it token by\n"
        "  token through a matcher (mask, then advance), then require end of sequence.\n"
        "  Prints \"accepted\", or the first token the mask forbids (id, text, byte\n"
        "  position), and percentiles of the per-token mask time.\n\n"
        "  --schema FILE     a JSON Schema (draft 2020-12 or draft-07 keywords)\n"
        "  --regex RE        a regular expression (ECMAScript syntax) for the whole output\n"
        "  --ebnf FILE       grammar text (the format in common/grammar/grammar.h)\n"
        "  --json-object     any JSON object (OpenAI json_object mode)\n"
        "  --model DIR       checkpoint or tokenizer directory (DIR/tokenizer.json)\n"
        "  --instance FILE   check: the output to walk. A JSON document, re-serialised\n"
        "                    compactly (with --schema: members in the schema's property\n"
        "                    order, as the grammar writes them); '-' reads stdin\n"
        "  --raw             check: walk the instance file's bytes as they are\n"
        "  --print           compile: also print the grammar text (JSON Schema: the\n"
        "                    converted grammar; EBNF: the file)\n"
        "  --strict          JSON Schema: additionalProperties false when absent (OpenAI\n"
        "                    strict mode)\n"
        "  --whitespace      JSON: allow bounded whitespace between tokens\n"
        "  -h, --help        this text\n\n"
        "exit status: 0 compiled / accepted; 1 rejected, or another failure (unreadable\n"
        "file, tokenizer); 2 the grammar could not be built, or a usage error.\n");
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f) {
        fprintf(stderr, "dsr1 grammar: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        if (cap >= MAX_FILE) {
            fprintf(stderr, "dsr1 grammar: %s is larger than 64 MiB\n", path);
            free(buf);
            buf = NULL;
            break;
        }
        char *b = realloc(buf, cap * 2 + 1);
        if (!b) free(buf);
        buf = b;
        cap *= 2;
    }
    if (buf && ferror(f)) {
        fprintf(stderr, "dsr1 grammar: cannot read %s\n", path);
        free(buf);
        buf = NULL;
    }
    if (f != stdin) fclose(f);
    if (!buf) return NULL;
    buf[n] = '\0';
    *len = n;
    return buf;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The vocabulary: the checkpoint's, or the 256 single bytes (id 256 = end). */
static int make_vocab(const char *model, dsr1_tokenizer **tok, dsr1_grammar_vocab **v)
{
    *tok = NULL;
    if (model) {
        if (dsr1_tokenizer_load(model, tok)) {
            fprintf(stderr, "dsr1 grammar: %s\n", dsr1_errmsg());
            return 1;
        }
        int32_t eos = dsr1_tokenizer_token_id(*tok, EOS_TOKEN);
        if (eos < 0) {
            fprintf(stderr, "dsr1 grammar: the tokenizer has no %s token\n", EOS_TOKEN);
            return 1;
        }
        if (dsr1_grammar_vocab_create(*tok, eos, v)) {
            fprintf(stderr, "dsr1 grammar: vocabulary: %s\n", dsr1_errmsg());
            return 1;
        }
        return 0;
    }
    static uint8_t bytes[256];
    const uint8_t *p[257];
    uint32_t lens[257];
    for (int i = 0; i < 256; i++) {
        bytes[i] = (uint8_t)i;
        p[i] = &bytes[i];
        lens[i] = 1;
    }
    p[256] = bytes;
    lens[256] = 0;
    if (dsr1_grammar_vocab_create_raw(257, p, lens, 256, v)) {
        fprintf(stderr, "dsr1 grammar: vocabulary: %s\n", dsr1_errmsg());
        return 1;
    }
    return 0;
}

/* Compiles the grammar the options name; 0, or 2 with the message printed. */
static int build(const gopts *o, const dsr1_grammar_vocab *v, const char *schema, size_t slen,
                 const char *ebnf, size_t elen, dsr1_grammar **g)
{
    dsr1_grammar_opts go = {.json_whitespace = o->whitespace, .strict_objects = o->strict};
    dsr1_status st;
    const char *what;
    if (o->schema) {
        what = o->schema;
        st = dsr1_grammar_compile_json_schema(v, schema, slen, &go, g);
    } else if (o->regex) {
        what = "--regex";
        st = dsr1_grammar_compile_regex(v, o->regex, strlen(o->regex), &go, g);
    } else if (o->ebnf) {
        what = o->ebnf;
        st = dsr1_grammar_compile_ebnf(v, ebnf, elen, &go, g);
    } else {
        what = "--json-object";
        st = dsr1_grammar_compile_json_object(v, &go, g);
    }
    if (st) {
        fprintf(stderr, "dsr1 grammar: %s: %s (%s)\n", what, dsr1_errmsg(), dsr1_status_str(st));
        return 2;
    }
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void print_token_text(const uint8_t *s, size_t n)
{
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"' || s[i] == '\\')
            printf("\\%c", s[i]);
        else if (s[i] < 0x20 || s[i] == 0x7f)
            printf("\\x%02x", s[i]);
        else
            putchar(s[i]);
    }
    putchar('"');
}

static int check(const gopts *o, dsr1_tokenizer *tok, const dsr1_grammar *g, const char *schema,
                 size_t slen)
{
    size_t ilen;
    char *raw = read_file(o->instance, &ilen), *text = NULL;
    if (!raw) return 1;
    size_t tlen = ilen;
    if (o->raw) {
        text = raw;
        raw = NULL;
    } else if (dsr1_json_schema_serialize_instance(o->schema ? schema : NULL, slen, raw, ilen,
                                                   &text, &tlen)) {
        fprintf(stderr, "dsr1 grammar: %s: %s\n", o->instance, dsr1_errmsg());
        free(raw);
        return 1;
    }
    free(raw);
    int32_t *ids = NULL;
    size_t n = 0;
    if (dsr1_tokenizer_encode(tok, text, tlen, DSR1_ENCODE_SPECIAL_AS_TEXT, &ids, &n)) {
        fprintf(stderr, "dsr1 grammar: tokenizing %s: %s\n", o->instance, dsr1_errmsg());
        free(text);
        return 1;
    }
    const dsr1_grammar_vocab *v = dsr1_grammar_get_vocab(g);
    int32_t vsize = dsr1_grammar_vocab_size(v);
    int32_t eos = dsr1_tokenizer_token_id(tok, EOS_TOKEN);
    uint32_t *mask = malloc(dsr1_grammar_mask_words(vsize) * sizeof *mask);
    double *times = malloc((n + 1) * sizeof *times);
    dsr1_matcher *m = NULL;
    int rc = 1;
    if (!mask || !times || dsr1_matcher_create(g, &m)) {
        fprintf(stderr, "dsr1 grammar: %s\n", mask && times ? dsr1_errmsg() : "out of memory");
        goto done;
    }
    size_t pos = 0, i;
    for (i = 0; i <= n; i++) {
        int32_t id = i < n ? ids[i] : eos;
        double t0 = now_s();
        dsr1_matcher_mask(m, mask);
        times[i] = now_s() - t0;
        bool ok = id >= 0 && id < vsize && (mask[id / 32] >> (id % 32) & 1);
        if (ok && dsr1_matcher_advance(m, id)) ok = false;
        const uint8_t *tb = NULL;
        size_t tn = 0;
        if (i < n) dsr1_tokenizer_token_bytes(tok, id, &tb, &tn);
        if (!ok) {
            if (i < n) {
                printf("rejected: token %zu of %zu, id %d ", i, n, id);
                print_token_text(tb, tn);
                printf(" at byte %zu\n", pos);
            } else {
                printf("rejected: the text ends at byte %zu where the grammar expects more\n", pos);
            }
            break;
        }
        pos += tn;
    }
    if (i > n) {
        printf("accepted: %zu tokens, %zu bytes\n", n, tlen);
        rc = 0;
    }
    size_t nt = i > n ? n + 1 : i + 1;
    qsort(times, nt, sizeof *times, cmp_double);
    printf("mask time per token (us): p50 %.1f  p90 %.1f  p99 %.1f  max %.1f  (%zu masks)\n",
           1e6 * times[nt / 2], 1e6 * times[nt * 9 / 10], 1e6 * times[nt * 99 / 100],
           1e6 * times[nt - 1], nt);
done:
    dsr1_matcher_free(m);
    free(mask);
    free(times);
    free(ids);
    free(text);
    return rc;
}

int dsr1_cmd_grammar(int argc, char **argv)
{
    static const struct option lopts[] = {
        {"schema", required_argument, 0, 's'}, {"regex", required_argument, 0, 'r'},
        {"ebnf", required_argument, 0, 'e'},   {"json-object", no_argument, 0, 'j'},
        {"model", required_argument, 0, 'm'},  {"instance", required_argument, 0, 'i'},
        {"print", no_argument, 0, 'p'},        {"strict", no_argument, 0, 'S'},
        {"whitespace", no_argument, 0, 'w'},   {"raw", no_argument, 0, 'R'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1];
    bool is_check = !strcmp(sub, "check");
    if (!is_check && strcmp(sub, "compile")) {
        fprintf(stderr, "dsr1 grammar: unknown subcommand '%s' (compile or check)\n", sub);
        return 2;
    }
    gopts o = {0};
    int c;
    optind = 1;
    while ((c = getopt_long(argc - 1, argv + 1, "h", lopts, NULL)) != -1) {
        switch (c) {
        case 's':
            o.schema = optarg;
            break;
        case 'r':
            o.regex = optarg;
            break;
        case 'e':
            o.ebnf = optarg;
            break;
        case 'j':
            o.json_object = true;
            break;
        case 'm':
            o.model = optarg;
            break;
        case 'i':
            o.instance = optarg;
            break;
        case 'p':
            o.print = true;
            break;
        case 'S':
            o.strict = true;
            break;
        case 'w':
            o.whitespace = true;
            break;
        case 'R':
            o.raw = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc - 1) {
        fprintf(stderr, "dsr1 grammar: unexpected argument '%s'\n", argv[optind + 1]);
        return 2;
    }
    if (!!o.schema + !!o.regex + !!o.ebnf + o.json_object != 1) {
        fprintf(stderr,
                "dsr1 grammar %s: give exactly one of --schema, --regex, --ebnf, "
                "--json-object\n",
                sub);
        return 2;
    }
    if (is_check && (!o.instance || !o.model)) {
        fprintf(stderr, "dsr1 grammar check: --instance FILE and --model DIR are required\n");
        return 2;
    }
    char *src = NULL;
    size_t len = 0;
    if ((o.schema || o.ebnf) && !(src = read_file(o.schema ? o.schema : o.ebnf, &len))) return 1;
    dsr1_tokenizer *tok = NULL;
    dsr1_grammar_vocab *v = NULL;
    dsr1_grammar *g = NULL;
    int rc = make_vocab(o.model, &tok, &v);
    if (!rc && o.print && !is_check) {
        if (o.schema) {
            dsr1_grammar_opts go = {.json_whitespace = o.whitespace, .strict_objects = o.strict};
            char *text;
            size_t tl;
            if (dsr1_json_schema_to_ebnf(src, len, &go, &text, &tl)) {
                fprintf(stderr, "dsr1 grammar: %s: %s\n", o.schema, dsr1_errmsg());
                rc = 2;
            } else {
                fwrite(text, 1, tl, stdout);
                free(text);
            }
        } else if (o.ebnf) {
            fwrite(src, 1, len, stdout);
            if (len && src[len - 1] != '\n') putchar('\n');
        }
    }
    if (!rc) rc = build(&o, v, src, len, src, len, &g);
    if (!rc && !is_check) {
        dsr1_grammar_stats s;
        dsr1_grammar_get_stats(g, &s);
        printf("ok: %d rules, %d terminals, %d states; compiled in %.3f ms (vocabulary %d)\n",
               s.rules, s.terminals, s.states, 1e3 * s.compile_s, dsr1_grammar_vocab_size(v));
    } else if (!rc) {
        rc = check(&o, tok, g, src, len);
    }
    dsr1_grammar_free(g);
    dsr1_grammar_vocab_free(v);
    dsr1_tokenizer_free(tok);
    free(src);
    return rc;
}
