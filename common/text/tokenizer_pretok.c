/* The pre-tokenizer: a sequence of `Split` regexes, each applied to every piece the
 * previous one produced. With behavior "Isolated" and invert false (all DeepSeek uses),
 * a Split turns a piece into the alternating list of gaps and matches, dropping empty
 * ones; the next regex then sees each of those pieces as a whole string of its own, so a
 * look-ahead such as `\s+(?!\S)` ends at the piece's end, exactly as in HF where every
 * piece is a separate string. We run the pieces depth first instead of building lists:
 * the order of the final pieces is the same and nothing is allocated.
 *
 * The regexes are written for Oniguruma (what HF's Rust tokenizers compile them with).
 * PCRE2 with UTF + UCP reads them the same way except for `\s`: PCRE2 counts U+180E
 * (MONGOLIAN VOWEL SEPARATOR, no longer a space since Unicode 6.3) as a space and
 * Oniguruma does not. We therefore spell `\s`/`\S` outside character classes as the
 * White_Space class [\t-\r\x{85}\p{Z}] Oniguruma uses (HF's JavaScript port rewrites
 * `\s` to \p{White_Space} for the same reason). Inside a class, `\s` is rewritten too;
 * a `\S` inside a class keeps PCRE2's meaning (no tokenizer we know writes one).
 * Regexes are JIT-compiled; a compiled pattern and its JIT code are shared read-only
 * between threads, each encode brings its own match data. */
#include "tokenizer_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WS_CLASS_BODY "\\t-\\r\\x{85}\\p{Z}"

dsr1_status dsr1__pretok_rewrite(const char *pat, size_t len, char **out)
{
    /* Each 2-byte escape grows to at most sizeof("[^" WS_CLASS_BODY "]") bytes. */
    size_t cap = len * sizeof("[^" WS_CLASS_BODY "]") / 2 + 16, k = 0;
    char *o = malloc(cap);
    if (!o) return dsr1_error(DSR1_ERR_NOMEM, "tokenizer: out of memory for a regex");
    bool in_class = false;
    size_t class_start = 0;
    for (size_t i = 0; i < len; i++) {
        char c = pat[i];
        if (c == '\\' && i + 1 < len) {
            char e = pat[i + 1];
            if (e == 'Q') { /* \Q...\E is literal text: copy it untouched */
                const char *end = NULL;
                for (size_t j = i + 2; j + 1 < len; j++)
                    if (pat[j] == '\\' && pat[j + 1] == 'E') {
                        end = pat + j + 2;
                        break;
                    }
                size_t n = end ? (size_t)(end - (pat + i)) : len - i;
                memcpy(o + k, pat + i, n);
                k += n;
                i += n - 1;
                continue;
            }
            const char *rep = NULL;
            if (!in_class && e == 's') rep = "[" WS_CLASS_BODY "]";
            if (!in_class && e == 'S') rep = "[^" WS_CLASS_BODY "]";
            if (in_class && e == 's') rep = WS_CLASS_BODY;
            if (rep) {
                memcpy(o + k, rep, strlen(rep));
                k += strlen(rep);
            } else {
                o[k++] = c;
                o[k++] = e;
            }
            i++;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            class_start = i;
        } else if (in_class && c == '[' && i + 1 < len && pat[i + 1] == ':') {
            /* [:alpha:] inside a class: copy through its closing ":]" */
            const char *end = strstr(pat + i, ":]");
            if (end && (size_t)(end - pat) + 2 <= len) {
                size_t n = (size_t)(end - (pat + i)) + 2;
                memcpy(o + k, pat + i, n);
                k += n;
                i += n - 1;
                continue;
            }
        } else if (in_class && c == ']') {
            /* a ']' first in the class (after '[' or '[^') is a literal */
            bool first = i == class_start + 1 || (i == class_start + 2 && pat[i - 1] == '^');
            if (!first) in_class = false;
        }
        o[k++] = c;
    }
    o[k] = '\0';
    *out = o;
    return DSR1_OK;
}

dsr1_status dsr1__pretok_add(dsr1__pretok *p, const char *pattern, size_t len, const char *what)
{
    if (p->n >= DSR1__MAX_SPLITS)
        return dsr1_error(DSR1_ERR_UNSUPPORTED, "tokenizer.json: %s: more than %d Split steps",
                          what, DSR1__MAX_SPLITS);
    if (!p->mctx) {
        /* PCRE2's default limit of 10^7 backtracking steps stops a legitimate match of a
         * 10 MB whitespace run; every DeepSeek pattern is linear, so lift it. */
        p->mctx = pcre2_match_context_create(NULL);
        if (!p->mctx) return dsr1_error(DSR1_ERR_NOMEM, "tokenizer: out of memory");
        pcre2_set_match_limit(p->mctx, UINT32_MAX);
    }
    char *rewritten;
    dsr1_status st = dsr1__pretok_rewrite(pattern, len, &rewritten);
    if (st) return st;
    int err;
    PCRE2_SIZE erroff;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)rewritten, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP, &err, &erroff, NULL);
    free(rewritten);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof(msg));
        return dsr1_error(DSR1_ERR_UNSUPPORTED,
                          "tokenizer.json: %s: regex /%.*s/ does not compile: %s (near offset "
                          "%zu)",
                          what, (int)(len > 200 ? 200 : len), pattern, (const char *)msg,
                          (size_t)erroff);
    }
    /* JIT is an optimisation: without it (no JIT support, W^X policy) matching still works. */
    p->jit[p->n] = pcre2_jit_compile(re, PCRE2_JIT_COMPLETE) == 0;
    uint32_t captures = 0;
    pcre2_pattern_info(re, PCRE2_INFO_CAPTURECOUNT, &captures);
    if (captures + 1 > p->max_capture_pairs) p->max_capture_pairs = captures + 1;
    p->re[p->n++] = re;
    return DSR1_OK;
}

void dsr1__pretok_free(dsr1__pretok *p)
{
    for (int i = 0; i < p->n; i++) pcre2_code_free(p->re[i]);
    pcre2_match_context_free(p->mctx);
    memset(p, 0, sizeof(*p));
}

static int match_at(const dsr1__pretok *p, int level, const uint8_t *s, size_t len, size_t off,
                    pcre2_match_data *md)
{
    int rc;
    if (p->jit[level]) {
        rc = pcre2_jit_match(p->re[level], s, len, off, 0, md, p->mctx);
        /* The JIT's 32 KiB stack could run out on some pathological pattern; the
         * interpreter keeps its backtracking state on the heap instead. */
        if (rc != PCRE2_ERROR_JIT_STACKLIMIT) return rc;
    }
    return pcre2_match(p->re[level], s, len, off, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, p->mctx);
}

static dsr1_status split_level(const dsr1__pretok *p, int level, const uint8_t *s, size_t len,
                               pcre2_match_data *md, dsr1__piece_fn fn, void *ctx)
{
    if (len == 0) return DSR1_OK;
    if (level == p->n) return fn(ctx, s, len);
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    size_t prev = 0, off = 0;
    dsr1_status st;
    while (off <= len) {
        int rc = match_at(p, level, s, len, off, md);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof(msg));
            return dsr1_error(DSR1_ERR_INTERNAL, "tokenizer: pre-tokenizer regex %d failed: %s",
                              level, (const char *)msg);
        }
        /* Copy the offsets out: the recursion below reuses md. */
        size_t ms = ov[0], me = ov[1];
        if (ms > prev && (st = split_level(p, level + 1, s + prev, ms - prev, md, fn, ctx)))
            return st;
        if (me > ms && (st = split_level(p, level + 1, s + ms, me - ms, md, fn, ctx))) return st;
        prev = me;
        if (me > ms) {
            off = me;
        } else { /* an empty match: search again one character further on */
            if (me >= len) break;
            off = me + 1;
            while (off < len && (s[off] & 0xC0) == 0x80) off++;
        }
    }
    if (prev < len) return split_level(p, level + 1, s + prev, len - prev, md, fn, ctx);
    return DSR1_OK;
}

dsr1_status dsr1__pretok_run(const dsr1__pretok *p, const uint8_t *text, size_t len,
                             pcre2_match_data *md, dsr1__piece_fn fn, void *ctx)
{
    return split_level(p, 0, text, len, md, fn, ctx);
}
