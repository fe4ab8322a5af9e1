/* See tok_test_util.h. */
#include "tok_test_util.h"

#include "mkmodel.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int tok_test_make_r1_dir(const char *golden, char *dir, size_t cap)
{
    char src[4096], path[4200];
    snprintf(src, sizeof(src), "%s/tokenizer", golden);
    snprintf(path, sizeof(path), "%s/tokenizer.json", src);
    if (access(path, R_OK)) {
        fprintf(stderr, "skip: %s not found\n", path);
        return TOK_TEST_SKIP;
    }
    char tmp[] = "/tmp/dsr1-tok-XXXXXX";
    if (!mkdtemp(tmp) || strlen(tmp) + 1 > cap) return 1;
    strcpy(dir, tmp);
    /* the same R1 edits dsr1 mkmodel applies (common/model/mkmodel_tokenizer.c) */
    if (dsr1_mkmodel_tokenizer(src, dir) != DSR1_OK) {
        fprintf(stderr, "cannot make R1's tokenizer files: %s\n", dsr1_errmsg());
        tok_test_remove_dir(dir);
        return 1;
    }
    return 0;
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

/* What the group's setup and teardown work on: one group per process. */
static struct {
    const char *model_dir;
    dsr1_tokenizer **tok;
    int (*setup)(void);
} group;

static int group_setup(void **state)
{
    (void)state;
    if (group.tok && dsr1_tokenizer_load(group.model_dir, group.tok)) {
        fprintf(stderr, "load: %s\n", dsr1_errmsg());
        return -1;
    }
    return group.setup ? group.setup() : 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (group.tok) dsr1_tokenizer_free(*group.tok);
    return 0;
}

int tok_test_main(int argc, char **argv, const struct CMUnitTest *tests, size_t n_tests,
                  char *model_dir, size_t cap, dsr1_tokenizer **tok, int (*setup)(void))
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s GOLDEN_DIR\n", argv[0]);
        return 2;
    }
    int rc = tok_test_make_r1_dir(argv[1], model_dir, cap);
    if (rc) return rc;
    group.model_dir = model_dir;
    group.tok = tok;
    group.setup = setup;
    rc = _cmocka_run_group_tests(argv[0], tests, n_tests, group_setup, group_teardown);
    tok_test_remove_dir(model_dir);
    return rc;
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
