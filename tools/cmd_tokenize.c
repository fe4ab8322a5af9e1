/* `dsr1 tokenize`, `dsr1 detokenize`, `dsr1 chat-template`: the tokenizer and the chat
 * template from the command line, for checking prompts by hand and for scripts (the
 * jinja2 comparison test drives chat-template). Text goes out byte for byte as the
 * library produces it, with no added newline, so outputs can be compared exactly. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template.h"
#include "args.h"
#include "commands.h"
#include "detok.h"
#include "tokenizer.h"

#define MAX_INPUT_BYTES ((size_t)1 << 30)

/* Reads all of f (a file or stdin); NULL with a message on failure. */
static char *read_all(FILE *f, const char *what, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        if (cap >= MAX_INPUT_BYTES) {
            fprintf(stderr, "dsr1: %s is larger than 1 GiB\n", what);
            free(buf);
            return NULL;
        }
        char *b = realloc(buf, cap * 2 + 1);
        if (!b) free(buf);
        buf = b;
        cap *= 2;
    }
    if (!buf || ferror(f)) {
        fprintf(stderr, "dsr1: cannot read %s\n", what);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static char *read_path(const char *path, size_t *len)
{
    if (!strcmp(path, "-")) return read_all(stdin, "stdin", len);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "dsr1: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    char *s = read_all(f, path, len);
    fclose(f);
    return s;
}

static void print_ids(const int32_t *ids, size_t n, bool json)
{
    if (json) fputs("{\"ids\":[", stdout);
    for (size_t i = 0; i < n; i++) printf(i ? ",%d" : "%d", ids[i]);
    puts(json ? "]}" : "");
}

static int load_tokenizer(const char *cmd, const char *model, dsr1_tokenizer **tok)
{
    if (!model) {
        fprintf(stderr, "dsr1 %s: --model DIR is required (see --help)\n", cmd);
        return 2;
    }
    if (dsr1_tokenizer_load(model, tok)) {
        fprintf(stderr, "dsr1 %s: %s\n", cmd, dsr1_errmsg());
        return 1;
    }
    return 0;
}

static void tokenize_usage(FILE *f)
{
    fprintf(f, "usage: dsr1 tokenize --model DIR [--text STR] [options]\n\n"
               "Encode text (from --text, else all of stdin) with the checkpoint's tokenizer and\n"
               "print the ids comma-separated. No BOS is added.\n\n"
               "  --model DIR         checkpoint directory (reads DIR/tokenizer.json)\n"
               "  --text STR          text to encode (default: read stdin)\n"
               "  --json              print {\"ids\":[...]}\n"
               "  --special-as-text   do not recognise special tokens (<｜User｜>...) in the text\n"
               "  -h, --help          this text\n");
}

int dsr1_cmd_tokenize(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"text", required_argument, 0, 't'},
        {"json", no_argument, 0, 'j'},        {"special-as-text", no_argument, 0, 's'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    const char *model = NULL, *text = NULL;
    bool json = false;
    unsigned flags = 0;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case 't':
            text = optarg;
            break;
        case 'j':
            json = true;
            break;
        case 's':
            flags |= DSR1_ENCODE_SPECIAL_AS_TEXT;
            break;
        case 'h':
            tokenize_usage(stdout);
            return 0;
        default:
            tokenize_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "dsr1 tokenize: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    dsr1_tokenizer *tok;
    int rc = load_tokenizer("tokenize", model, &tok);
    if (rc) return rc;
    size_t len = text ? strlen(text) : 0;
    char *input = text ? NULL : read_all(stdin, "stdin", &len);
    int32_t *ids = NULL;
    size_t n = 0;
    if (!text && !input) {
        rc = 1;
    } else if (dsr1_tokenizer_encode(tok, text ? text : input, len, flags, &ids, &n)) {
        fprintf(stderr, "dsr1 tokenize: %s\n", dsr1_errmsg());
        rc = 1;
    } else {
        print_ids(ids, n, json);
    }
    free(ids);
    free(input);
    dsr1_tokenizer_free(tok);
    return rc;
}

static void detokenize_usage(FILE *f)
{
    fprintf(f, "usage: dsr1 detokenize --model DIR [--ids 1,2,3] [options]\n\n"
               "Decode token ids (comma- or space-separated; from --ids, else stdin) and print\n"
               "the text exactly, without a trailing newline.\n\n"
               "  --model DIR       checkpoint directory (reads DIR/tokenizer.json)\n"
               "  --ids IDS         the ids\n"
               "  --skip-special    drop special tokens (<｜end▁of▁sentence｜>...)\n"
               "  --stream          decode one id at a time with the streaming detokenizer,\n"
               "                    writing each piece as soon as it is complete UTF-8\n"
               "  -h, --help        this text\n");
}

static int detok_stream(const dsr1_tokenizer *tok, const int32_t *ids, size_t n, bool skip)
{
    dsr1_detok *d;
    const char *text;
    size_t len;
    if (dsr1_detok_create(tok, skip ? DSR1_DETOK_SKIP_SPECIAL : 0, &d)) return 1;
    for (size_t i = 0; i < n; i++) {
        if (dsr1_detok_push(d, ids[i], &text, &len)) {
            fprintf(stderr, "dsr1 detokenize: ids[%zu]: %s\n", i, dsr1_errmsg());
            dsr1_detok_free(d);
            return 1;
        }
        fwrite(text, 1, len, stdout);
        fflush(stdout);
    }
    if (!dsr1_detok_flush(d, &text, &len)) fwrite(text, 1, len, stdout);
    dsr1_detok_free(d);
    return 0;
}

int dsr1_cmd_detokenize(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},  {"ids", required_argument, 0, 'i'},
        {"skip-special", no_argument, 0, 's'}, {"stream", no_argument, 0, 'S'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    const char *model = NULL, *ids_arg = NULL;
    bool skip = false, stream = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case 'i':
            ids_arg = optarg;
            break;
        case 's':
            skip = true;
            break;
        case 'S':
            stream = true;
            break;
        case 'h':
            detokenize_usage(stdout);
            return 0;
        default:
            detokenize_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "dsr1 detokenize: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    size_t len;
    char *input = ids_arg ? NULL : read_all(stdin, "stdin", &len);
    if (!ids_arg && !input) return 1;
    int32_t *ids;
    size_t n;
    int rc = dsr1_arg_ids("dsr1 detokenize", ids_arg ? "--ids" : "stdin", ids_arg ? ids_arg : input,
                          &ids, &n);
    free(input);
    if (rc) return 2;
    dsr1_tokenizer *tok;
    if ((rc = load_tokenizer("detokenize", model, &tok))) {
        free(ids);
        return rc;
    }
    if (stream) {
        rc = detok_stream(tok, ids, n, skip);
    } else {
        char *text;
        if (dsr1_tokenizer_decode(tok, ids, n, skip, &text, &len)) {
            fprintf(stderr, "dsr1 detokenize: %s\n", dsr1_errmsg());
            rc = 1;
        } else {
            fwrite(text, 1, len, stdout);
            free(text);
        }
    }
    free(ids);
    dsr1_tokenizer_free(tok);
    return rc;
}

static void chat_usage(FILE *f)
{
    fprintf(f,
            "usage: dsr1 chat-template --model DIR --messages FILE.json [options]\n\n"
            "Render a conversation with the checkpoint's chat template (as transformers'\n"
            "apply_chat_template does) and print the prompt exactly, without a trailing\n"
            "newline. FILE.json (or - for stdin) holds a JSON array of messages, or an object\n"
            "of template variables ({\"messages\": [...], \"tools\": [...], ...}).\n\n"
            "  --model DIR               checkpoint directory (tokenizer_config.json,\n"
            "                            chat_template.jinja, tokenizer.json)\n"
            "  --messages FILE           the conversation\n"
            "  --no-generation-prompt    do not open the assistant's turn at the end\n"
            "  --ids                     print the prompt's token ids instead of its text\n"
            "  --template FILE           render this Jinja file instead of the model's template\n"
            "                            (--model then only supplies bos/eos tokens, and is\n"
            "                            optional)\n"
            "  -h, --help                this text\n");
}

static int load_template(const char *model, const char *template_path, dsr1_chat_template **t)
{
    if (!template_path) {
        if (dsr1_chat_template_load(model, t)) goto err;
        return 0;
    }
    size_t len;
    char *src = read_path(template_path, &len);
    if (!src) return 1;
    char *bos = NULL, *eos = NULL;
    if (model) { /* the checkpoint's special tokens, as the model's own template gets */
        char path[4096];
        snprintf(path, sizeof(path), "%s/tokenizer_config.json", model);
        json_t *cfg = json_load_file(path, 0, NULL);
        const char *keys[2] = {"bos_token", "eos_token"};
        char **dst[2] = {&bos, &eos};
        for (int i = 0; i < 2; i++) {
            json_t *v = json_object_get(cfg, keys[i]);
            if (json_is_object(v)) v = json_object_get(v, "content");
            if (json_is_string(v)) *dst[i] = strdup(json_string_value(v));
        }
        json_decref(cfg);
    }
    dsr1_status st = dsr1_chat_template_compile(src, len, bos, eos, t);
    free(src);
    free(bos);
    free(eos);
    if (st) goto err;
    return 0;
err:
    fprintf(stderr, "dsr1 chat-template: %s\n", dsr1_errmsg());
    return 1;
}

/* The render context from the messages file: an array becomes {"messages": [...]}. */
static char *make_context(const char *text, bool gen_prompt)
{
    json_error_t err;
    json_t *v = json_loads(text, JSON_ALLOW_NUL, &err);
    if (!v) {
        fprintf(stderr, "dsr1 chat-template: messages: line %d: %s\n", err.line, err.text);
        return NULL;
    }
    json_t *ctx = v;
    if (json_is_array(v)) {
        ctx = json_object();
        json_object_set_new(ctx, "messages", v);
    } else if (!json_is_object(v)) {
        fprintf(stderr, "dsr1 chat-template: messages must be a JSON array or object\n");
        json_decref(v);
        return NULL;
    }
    if (!json_object_get(ctx, "add_generation_prompt"))
        json_object_set_new(ctx, "add_generation_prompt", json_boolean(gen_prompt));
    char *s = json_dumps(ctx, JSON_COMPACT);
    json_decref(ctx);
    return s;
}

int dsr1_cmd_chat_template(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"messages", required_argument, 0, 'M'},
                                         {"no-generation-prompt", no_argument, 0, 'n'},
                                         {"ids", no_argument, 0, 'i'},
                                         {"template", required_argument, 0, 't'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *model = NULL, *messages = NULL, *template_path = NULL;
    bool gen_prompt = true, want_ids = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case 'M':
            messages = optarg;
            break;
        case 'n':
            gen_prompt = false;
            break;
        case 'i':
            want_ids = true;
            break;
        case 't':
            template_path = optarg;
            break;
        case 'h':
            chat_usage(stdout);
            return 0;
        default:
            chat_usage(stderr);
            return 2;
        }
    }
    if (optind < argc || !messages || (!model && (!template_path || want_ids))) {
        fprintf(stderr, "dsr1 chat-template: --model DIR and --messages FILE are required "
                        "(see --help)\n");
        return 2;
    }
    size_t len;
    char *text = read_path(messages, &len);
    if (!text) return 1;
    char *ctx = make_context(text, gen_prompt);
    free(text);
    if (!ctx) return 1;
    dsr1_chat_template *t = NULL;
    dsr1_tokenizer *tok = NULL;
    char *prompt = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = load_template(model, template_path, &t);
    if (!rc && want_ids) rc = load_tokenizer("chat-template", model, &tok);
    if (!rc && dsr1_chat_template_render_context(t, ctx, &prompt, &len)) {
        fprintf(stderr, "dsr1 chat-template: %s\n", dsr1_errmsg());
        rc = 1;
    }
    if (!rc && want_ids) {
        if (dsr1_tokenizer_encode(tok, prompt, len, 0, &ids, &n)) {
            fprintf(stderr, "dsr1 chat-template: %s\n", dsr1_errmsg());
            rc = 1;
        } else {
            print_ids(ids, n, false);
        }
    } else if (!rc) {
        fwrite(prompt, 1, len, stdout);
    }
    free(ids);
    free(prompt);
    free(ctx);
    dsr1_chat_template_free(t);
    dsr1_tokenizer_free(tok);
    return rc;
}
