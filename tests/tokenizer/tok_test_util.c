/* See tok_test_util.h. The R1 edits mirror make_tiny.py's write_tokenizer/R1_TEMPLATE. */
#include "tok_test_util.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char V3_ASSISTANT[] =
    "{%- else %}{{'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}";
static const char R1_ASSISTANT[] =
    "{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}"
    "{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}";
static const char V3_GEN[] = "{{'<｜Assistant｜>'}}{% endif %}";
static const char R1_GEN[] = "{{'<｜Assistant｜><think>\\n'}}{% endif %}";

char *tok_test_r1_template(const char *v3)
{
    const char *at = strstr(v3, V3_ASSISTANT);
    size_t n = strlen(v3), gl = strlen(V3_GEN);
    if (!at || n < gl || strcmp(v3 + n - gl, V3_GEN)) return NULL;
    char *out = malloc(n + strlen(R1_ASSISTANT) + strlen(R1_GEN) + 1);
    if (!out) return NULL;
    size_t k = 0, pre = (size_t)(at - v3);
    memcpy(out, v3, pre);
    k = pre;
    memcpy(out + k, R1_ASSISTANT, strlen(R1_ASSISTANT));
    k += strlen(R1_ASSISTANT);
    size_t rest = n - gl - (pre + strlen(V3_ASSISTANT));
    memcpy(out + k, at + strlen(V3_ASSISTANT), rest);
    k += rest;
    memcpy(out + k, R1_GEN, strlen(R1_GEN) + 1);
    return out;
}

int tok_test_make_r1_dir(const char *golden, char *dir, size_t cap)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/tokenizer/tokenizer.json", golden);
    if (access(path, R_OK)) {
        fprintf(stderr, "skip: %s not found\n", path);
        return TOK_TEST_SKIP;
    }
    json_error_t err;
    json_t *tj = json_load_file(path, 0, &err);
    snprintf(path, sizeof(path), "%s/tokenizer/tokenizer_config.json", golden);
    json_t *tc = json_load_file(path, 0, &err);
    if (!tj || !tc) {
        fprintf(stderr, "cannot parse the golden tokenizer files: %s\n", err.text);
        goto err;
    }
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(tj, "added_tokens"), i, a)
    {
        json_int_t id = json_integer_value(json_object_get(a, "id"));
        if (id == 128798 || id == 128799) {
            json_object_set_new(a, "content", json_string(id == 128798 ? "<think>" : "</think>"));
            json_object_set_new(a, "special", json_false());
        }
    }
    char *tmpl = tok_test_r1_template(json_string_value(json_object_get(tc, "chat_template")));
    if (!tmpl) {
        fprintf(stderr, "unexpected V3 chat template\n");
        goto err;
    }
    json_object_set_new(tc, "chat_template", json_string(tmpl));
    free(tmpl);
    char tmp[] = "/tmp/dsr1-tok-XXXXXX";
    if (!mkdtemp(tmp) || strlen(tmp) + 1 > cap) goto err;
    strcpy(dir, tmp);
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    if (json_dump_file(tj, path, JSON_COMPACT)) goto err;
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    if (json_dump_file(tc, path, JSON_INDENT(1))) goto err;
    json_decref(tj);
    json_decref(tc);
    return 0;
err:
    json_decref(tj);
    json_decref(tc);
    return 1;
}

void tok_test_remove_dir(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    unlink(path);
    rmdir(dir);
}

void tok_test_put_utf8(char *b, size_t *len, uint32_t c)
{
    size_t n = *len;
    if (c < 0x80) {
        b[n++] = (char)c;
    } else if (c < 0x800) {
        b[n++] = (char)(0xC0 | (c >> 6));
        b[n++] = (char)(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
        b[n++] = (char)(0xE0 | (c >> 12));
        b[n++] = (char)(0x80 | ((c >> 6) & 0x3F));
        b[n++] = (char)(0x80 | (c & 0x3F));
    } else {
        b[n++] = (char)(0xF0 | (c >> 18));
        b[n++] = (char)(0x80 | ((c >> 12) & 0x3F));
        b[n++] = (char)(0x80 | ((c >> 6) & 0x3F));
        b[n++] = (char)(0x80 | (c & 0x3F));
    }
    *len = n;
}

/* Code point ranges chosen to hit every branch of the DeepSeek regexes: letters of
 * several scripts, marks, digits of several kinds (\p{N} includes ² and Ⅻ), ASCII and
 * Unicode punctuation and symbols, the CJK/kana ranges of the second Split, and all
 * kinds of White_Space (plus U+180E and U+FEFF, which are not). All were assigned by
 * Unicode 14, the version of Debian's PCRE2, so the reference's newer tables agree. */
static const uint32_t RANGES[][2] = {
    {'a', 'z'},       {'A', 'Z'},       {'0', '9'},         {'!', '/'},         {':', '@'},
    {'[', '`'},       {'{', '~'},       {0xC0, 0xFF},       {0x391, 0x3C9},     {0x410, 0x44F},
    {0x300, 0x36F},   {0x5D0, 0x5EA},   {0x627, 0x64A},     {0x660, 0x669},     {0x905, 0x939},
    {0x93E, 0x94D},   {0xB2, 0xB3},     {0x2160, 0x216B},   {0xFF10, 0xFF19},   {0x2010, 0x2027},
    {0x2030, 0x205E}, {0x20A0, 0x20BF}, {0x2190, 0x21FF},   {0x2200, 0x22FF},   {0x3000, 0x3003},
    {0x300C, 0x3011}, {0x4E00, 0x4E80}, {0x9F9F, 0x9FAF},   {0x3041, 0x3096},   {0x30A1, 0x30FA},
    {0x3400, 0x3420}, {0xAC00, 0xAC40}, {0x1F600, 0x1F64F}, {0x1F300, 0x1F320}, {0xFE0F, 0xFE0F},
    {0x200D, 0x200D}, {0xFF01, 0xFF0F}, {0xE000, 0xE010},   {0xFFFD, 0xFFFD},   {0x1D400, 0x1D420},
};
static const uint32_t SPACES[] = {' ',    '\t',   '\n',   '\r',   0x0B,   0x0C,   0x85,
                                  0xA0,   0x1680, 0x2000, 0x2009, 0x200A, 0x2028, 0x2029,
                                  0x202F, 0x205F, 0x3000, 0x180E, 0xFEFF, 0x200B, 0};
static const char *const SNIPPETS[] = {
    "<｜User｜>",
    "<｜Assistant｜>",
    "<think>",
    "</think>",
    "<｜end▁of▁sentence｜>",
    "<｜begin▁of▁sentence｜>",
    "<｜tool▁sep｜>",
    "<|EOT|>",
    "<｜",
    "<｜end▁of",
    "<thin",
    "</think",
    "<｜place▁holder▁no▁7｜>",
    "'s",
    "'ll",
    " the",
    "https://",
    "\\n",
    "```",
    "    ",
    "\r\n",
    "...",
    "1,000",
    "3.14",
};

void tok_test_random_piece(tok_rng *r, char *buf, size_t *len)
{
    uint32_t kind = tok_rng_below(r, 10), n = 1 + tok_rng_below(r, 6);
    if (kind == 0) {
        const char *s = SNIPPETS[tok_rng_below(r, sizeof(SNIPPETS) / sizeof(SNIPPETS[0]))];
        memcpy(buf + *len, s, strlen(s));
        *len += strlen(s);
    } else if (kind <= 2) {
        for (uint32_t i = 0; i < n; i++)
            tok_test_put_utf8(buf, len, SPACES[tok_rng_below(r, sizeof(SPACES) / 4)]);
    } else if (kind == 3 && tok_rng_below(r, 4) == 0) { /* a long word: the heap BPE path */
        uint32_t m = 25 + tok_rng_below(r, 200), lo = tok_rng_below(r, 2) ? 'a' : 0x4E00;
        for (uint32_t i = 0; i < m; i++) tok_test_put_utf8(buf, len, lo + tok_rng_below(r, 3));
    } else {
        const uint32_t *rg = RANGES[tok_rng_below(r, sizeof(RANGES) / sizeof(RANGES[0]))];
        for (uint32_t i = 0; i < n; i++)
            tok_test_put_utf8(buf, len, rg[0] + tok_rng_below(r, rg[1] - rg[0] + 1));
    }
}
