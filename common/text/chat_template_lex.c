/* Chat-template lexer: Jinja2's tokenizer for the environment transformers renders chat
 * templates with (trim_blocks=True, lstrip_blocks=True, default delimiters).
 *
 * Whitespace handling is where a renderer most easily goes wrong by one newline, so it
 * follows jinja2/lexer.py rule by rule: the source's \r\n and \r become \n and one
 * trailing newline is dropped (keep_trailing_newline=False); `{%-`/`{{-`/`{#-` strip all
 * whitespace before the tag; otherwise, for `{%` and `{#` (not `{{`, not `{%+`), the
 * spaces between the last newline (or the start of a line) and the tag are dropped
 * (lstrip_blocks); `-%}`/`-}}`/`-#}` strip all whitespace after the tag; a plain `%}` or
 * `#}` eats one following newline (trim_blocks). "Whitespace" is Python's str.isspace().
 * String literals are decoded like Python's unicode-escape codec, which is what Jinja
 * applies to them, quirks included. `{% raw %}` is rejected. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template_internal.h"

typedef struct {
    ct_arena *a;
    ct_err *e;
    const char *s;
    size_t n, pos;
    int line;
    bool line_starting;
    ct_tokens *out;
} lexer;

static void push(lexer *L, ct_tkind k, const char *p, size_t n)
{
    ct_tokens *t = L->out;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        ct_token *v = dsr1__ct_alloc(L->a, L->e, cap * sizeof(*v));
        if (t->n) memcpy(v, t->v, t->n * sizeof(*v));
        t->v = v;
        t->cap = cap;
    }
    ct_token *tk = &t->v[t->n++];
    memset(tk, 0, sizeof(*tk));
    tk->k = k;
    tk->line = L->line;
    tk->s.p = p;
    tk->s.n = n;
}

static void count_lines(lexer *L, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        if (L->s[i] == '\n') L->line++;
}

/* Length of the whitespace run at s[i..n). */
static size_t space_run(const char *s, size_t n, size_t i)
{
    size_t j = i, k;
    while (j < n && dsr1__ct_is_py_space(dsr1__ct_utf8_at(s, n, j, &k))) j += k;
    return j - i;
}

/* Python str.rstrip(): length of text without its trailing whitespace. */
static size_t rstrip_len(const char *s, size_t n)
{
    size_t end = n;
    while (end > 0) {
        size_t p = end - 1, k;
        while (p > 0 && ((unsigned char)s[p] & 0xC0) == 0x80) p--;
        if (!dsr1__ct_is_py_space(dsr1__ct_utf8_at(s, n, p, &k))) break;
        end = p;
    }
    return end;
}

static void put_utf8(char *o, size_t *k, uint32_t c)
{
    if (c < 0x80) {
        o[(*k)++] = (char)c;
    } else if (c < 0x800) {
        o[(*k)++] = (char)(0xC0 | (c >> 6));
        o[(*k)++] = (char)(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
        o[(*k)++] = (char)(0xE0 | (c >> 12));
        o[(*k)++] = (char)(0x80 | ((c >> 6) & 0x3F));
        o[(*k)++] = (char)(0x80 | (c & 0x3F));
    } else {
        o[(*k)++] = (char)(0xF0 | (c >> 18));
        o[(*k)++] = (char)(0x80 | ((c >> 12) & 0x3F));
        o[(*k)++] = (char)(0x80 | ((c >> 6) & 0x3F));
        o[(*k)++] = (char)(0x80 | (c & 0x3F));
    }
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes the body of a string literal (between the quotes). */
static ct_str decode_string(lexer *L, const char *s, size_t n)
{
    char *o = dsr1__ct_alloc(L->a, L->e, n * 4 + 1); /* an escape never grows 4x */
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        if (s[i] != '\\' || i + 1 >= n) {
            o[k++] = s[i++];
            continue;
        }
        char c = s[i + 1];
        i += 2;
        uint32_t cp;
        int digits = 0;
        switch (c) {
        case '\n':
            continue; /* line continuation */
        case '\\':
            o[k++] = '\\';
            continue;
        case '\'':
            o[k++] = '\'';
            continue;
        case '"':
            o[k++] = '"';
            continue;
        case 'a':
            o[k++] = '\a';
            continue;
        case 'b':
            o[k++] = '\b';
            continue;
        case 'f':
            o[k++] = '\f';
            continue;
        case 'n':
            o[k++] = '\n';
            continue;
        case 'r':
            o[k++] = '\r';
            continue;
        case 't':
            o[k++] = '\t';
            continue;
        case 'v':
            o[k++] = '\v';
            continue;
        case 'x':
            digits = 2;
            break;
        case 'u':
            digits = 4;
            break;
        case 'U':
            digits = 8;
            break;
        case 'N':
            dsr1__ct_fail(L->e, DSR1_ERR_UNSUPPORTED, L->line,
                          "\\N{...} escapes are not "
                          "supported");
        default:
            if (c >= '0' && c <= '7') { /* up to 3 octal digits */
                cp = (uint32_t)(c - '0');
                for (int d = 0; d < 2 && i < n && s[i] >= '0' && s[i] <= '7'; d++)
                    cp = cp * 8 + (uint32_t)(s[i++] - '0');
                put_utf8(o, &k, cp);
            } else if ((unsigned char)c >= 0x80) {
                /* Jinja first turns non-ASCII into \xNN / \uNNNN / \UNNNNNNNN escapes,
                 * so this backslash escapes *that* backslash: "\é" reads as "\xe9". */
                size_t cl;
                uint32_t u = dsr1__ct_utf8_at(s, n, i - 1, &cl);
                char esc[12];
                int w = u <= 0xFF     ? snprintf(esc, sizeof(esc), "\\x%02x", u)
                        : u <= 0xFFFF ? snprintf(esc, sizeof(esc), "\\u%04x", u)
                                      : snprintf(esc, sizeof(esc), "\\U%08x", u);
                memcpy(o + k, esc, (size_t)w);
                k += (size_t)w;
                i += cl - 1;
            } else { /* unknown escape: kept as written */
                o[k++] = '\\';
                o[k++] = c;
            }
            continue;
        }
        cp = 0;
        for (int d = 0; d < digits; d++) {
            int h = i < n ? hexval(s[i]) : -1;
            if (h < 0)
                dsr1__ct_fail(L->e, DSR1_ERR_FORMAT, L->line,
                              "truncated \\%c escape in a "
                              "string literal",
                              c);
            cp = cp * 16 + (uint32_t)h;
            i++;
        }
        if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            dsr1__ct_fail(L->e, DSR1_ERR_FORMAT, L->line,
                          "string escape U+%X is not a "
                          "Unicode scalar value",
                          cp);
        put_utf8(o, &k, cp);
    }
    o[k] = '\0';
    return (ct_str){o, k};
}

static const char *const OPS2[] = {"//", "**", "==", "!=", ">=", "<="};
static const char OPS1[] = "+-/*%~[](){}><=.:|,;";

/* Tokens inside {{ }} or {% %} up to and including the end tag. */
static void lex_tag(lexer *L, bool block)
{
    char stack[64];
    size_t depth = 0;
    const char *s = L->s;
    size_t n = L->n;
    for (;;) {
        size_t i = L->pos;
        if (i >= n)
            dsr1__ct_fail(L->e, DSR1_ERR_FORMAT, L->line,
                          "unexpected end of template inside "
                          "a %s tag",
                          block ? "{% %}" : "{{ }}");
        /* the end tag, when brackets are balanced */
        const char *end = block ? "%}" : "}}";
        if (depth == 0) {
            size_t m = 0;
            bool eat_space = false, eat_newline = false;
            if (block && s[i] == '+' && !strncmp(s + i + 1, end, 2))
                m = 3;
            else if (s[i] == '-' && !strncmp(s + i + 1, end, 2))
                m = 3, eat_space = true;
            else if (!strncmp(s + i, end, 2))
                m = 2, eat_newline = block;
            if (m) {
                size_t j = i + m;
                if (eat_space) j += space_run(s, n, j);
                if (eat_newline && j < n && s[j] == '\n') j++;
                push(L, block ? TK_BLOCK_END : TK_VAR_END, s + i, m);
                count_lines(L, i, j);
                L->line_starting = s[j - 1] == '\n';
                L->pos = j;
                return;
            }
        }
        size_t k, w = space_run(s, n, i);
        if (w) {
            count_lines(L, i, i + w);
            L->pos = i + w;
            continue;
        }
        char c = s[i];
        if (c >= '0' && c <= '9') {
            size_t j = i;
            while (j < n && s[j] >= '0' && s[j] <= '9') j++;
            bool is_float = false;
            if (j + 1 < n && s[j] == '.' && s[j + 1] >= '0' && s[j + 1] <= '9') {
                is_float = true;
                for (j++; j < n && s[j] >= '0' && s[j] <= '9'; j++) {
                }
            }
            if (j < n && (s[j] == 'e' || s[j] == 'E')) {
                size_t e = j + 1;
                if (e < n && (s[e] == '+' || s[e] == '-')) e++;
                if (e < n && s[e] >= '0' && s[e] <= '9') {
                    is_float = true;
                    for (j = e; j < n && s[j] >= '0' && s[j] <= '9'; j++) {
                    }
                }
            }
            char num[64];
            if (j - i >= sizeof(num))
                dsr1__ct_fail(L->e, DSR1_ERR_UNSUPPORTED, L->line, "number literal too long");
            memcpy(num, s + i, j - i);
            num[j - i] = '\0';
            push(L, is_float ? TK_FLOAT : TK_INT, s + i, j - i);
            ct_token *t = &L->out->v[L->out->n - 1];
            if (is_float)
                t->f = strtod(num, NULL);
            else
                t->i = strtoll(num, NULL, 10);
            L->pos = j;
            continue;
        }
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') {
            size_t j = i + 1;
            while (j < n && ((s[j] >= 'a' && s[j] <= 'z') || (s[j] >= 'A' && s[j] <= 'Z') ||
                             (s[j] >= '0' && s[j] <= '9') || s[j] == '_'))
                j++;
            push(L, TK_NAME, dsr1__ct_strdup(L->a, L->e, s + i, j - i), j - i);
            L->pos = j;
            continue;
        }
        if (c == '\'' || c == '"') {
            size_t j = i + 1;
            while (j < n && s[j] != c) j += (s[j] == '\\' && j + 1 < n) ? 2 : 1;
            if (j >= n)
                dsr1__ct_fail(L->e, DSR1_ERR_FORMAT, L->line, "unterminated string literal");
            push(L, TK_STRING, NULL, 0);
            ct_str v = decode_string(L, s + i + 1, j - i - 1);
            L->out->v[L->out->n - 1].s = v;
            count_lines(L, i, j);
            L->pos = j + 1;
            continue;
        }
        size_t oplen = 0;
        for (size_t o = 0; o < sizeof(OPS2) / sizeof(OPS2[0]) && !oplen; o++)
            if (!strncmp(s + i, OPS2[o], 2)) oplen = 2;
        if (!oplen && c && strchr(OPS1, c)) oplen = 1;
        if (!oplen) {
            dsr1__ct_utf8_at(s, n, i, &k);
            dsr1__ct_fail(L->e, DSR1_ERR_FORMAT, L->line,
                          "unexpected character '%.*s' in a "
                          "tag",
                          (int)k, s + i);
        }
        if (oplen == 1 && (c == '(' || c == '[' || c == '{')) {
            if (depth == sizeof(stack))
                dsr1__ct_fail(L->e, DSR1_ERR_UNSUPPORTED, L->line, "brackets nested too deep");
            stack[depth++] = c == '(' ? ')' : c == '[' ? ']' : '}';
        } else if (oplen == 1 && (c == ')' || c == ']' || c == '}')) {
            if (!depth || stack[depth - 1] != c)
                dsr1__ct_fail(L->e, DSR1_ERR_FORMAT, L->line, "unexpected '%c'", c);
            depth--;
        }
        push(L, TK_OP, s + i, oplen);
        L->pos = i + oplen;
    }
}

/* Skips a comment; pos is just after its opener. */
static void lex_comment(lexer *L)
{
    const char *s = L->s, *p = NULL;
    size_t n = L->n;
    for (size_t i = L->pos; i + 1 < n; i++)
        if (s[i] == '#' && s[i + 1] == '}') {
            p = s + i;
            break;
        }
    if (!p) dsr1__ct_fail(L->e, DSR1_ERR_FORMAT, L->line, "missing end of comment tag");
    size_t i = (size_t)(p - s), j = i + 2;
    if (i > L->pos && s[i - 1] == '-')
        j += space_run(s, n, j);
    else if (!(i > L->pos && s[i - 1] == '+') && j < n && s[j] == '\n')
        j++;
    count_lines(L, L->pos, j);
    L->line_starting = s[j - 1] == '\n';
    L->pos = j;
}

static bool is_raw_tag(const char *s, size_t n, size_t i)
{
    i += 2;
    if (i < n && (s[i] == '-' || s[i] == '+')) i++;
    i += space_run(s, n, i);
    return n - i >= 3 && !strncmp(s + i, "raw", 3) &&
           (i + 3 >= n || !((s[i + 3] >= 'a' && s[i + 3] <= 'z') || s[i + 3] == '_'));
}

void dsr1__ct_lex(ct_arena *a, ct_err *e, const char *src, size_t len, ct_tokens *out)
{
    /* Newlines normalised to \n, one trailing newline dropped, as Jinja does. */
    char *s = dsr1__ct_alloc(a, e, len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') i++;
        } else {
            s[n++] = src[i];
        }
    }
    if (n && s[n - 1] == '\n') n--;
    lexer L = {a, e, s, n, 0, 1, true, out};
    while (L.pos < n) {
        size_t i = L.pos, open = n;
        char kind = 0;
        for (size_t j = i; j + 1 < n; j++)
            if (s[j] == '{' && (s[j + 1] == '{' || s[j + 1] == '%' || s[j + 1] == '#')) {
                open = j;
                kind = s[j + 1];
                break;
            }
        size_t text_len = open - i;
        char sign = open + 2 < n ? s[open + 2] : 0;
        if (kind && sign == '-') {
            text_len = rstrip_len(s + i, text_len);
        } else if (kind && kind != '{' && sign != '+') {
            size_t l_pos = text_len;
            while (l_pos > 0 && s[i + l_pos - 1] != '\n') l_pos--;
            if ((l_pos > 0 || L.line_starting) && l_pos < text_len &&
                space_run(s + i, text_len, l_pos) == text_len - l_pos)
                text_len = l_pos;
        }
        if (text_len) push(&L, TK_TEXT, s + i, text_len);
        count_lines(&L, i, open);
        if (!kind) break;
        if (kind == '%' && is_raw_tag(s, n, open))
            dsr1__ct_fail(e, DSR1_ERR_UNSUPPORTED, L.line, "{%% raw %%} is not supported");
        L.line_starting = false;
        L.pos = open + 2 + (sign == '-' || sign == '+');
        if (kind == '#') {
            lex_comment(&L);
            continue;
        }
        push(&L, kind == '%' ? TK_BLOCK_BEGIN : TK_VAR_BEGIN, s + open, 2);
        lex_tag(&L, kind == '%');
    }
    push(&L, TK_EOF, s + n, 0);
}
