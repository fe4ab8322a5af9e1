/* libFuzzer target: the HTTP API's tool-call parser (coordinator/http/http_tools.h) over
 * arbitrary generated text, fed in pieces cut where the input's first bytes say. Whatever the
 * cuts, the content and calls must equal those of one whole feed (so no piece of a marker is
 * ever released as streamed content: the whole feed would have parsed it); a call's name comes
 * before its arguments; lengths agree with the NUL-terminated strings. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http_tools.h"

typedef struct {
    char *content;
    size_t n;
    int calls;
    char *args; /* every call's arguments, joined with \x01 between calls */
    size_t an;
} result;

static void add(char **p, size_t *n, const char *s, size_t k)
{
    *p = realloc(*p, *n + k + 1);
    if (!*p) abort();
    memcpy(*p + *n, s, k);
    *n += k;
    (*p)[*n] = '\0';
}

static void run(const char *text, size_t len, const uint8_t *cuts, size_t n_cuts, result *r)
{
    memset(r, 0, sizeof(*r));
    add(&r->content, &r->n, "", 0);
    add(&r->args, &r->an, "", 0);
    dsr1_toolparse *p;
    if (dsr1_toolparse_create(&p)) abort();
    size_t at = 0;
    for (size_t i = 0; i <= n_cuts; i++) {
        size_t end = i < n_cuts ? at + cuts[i] % 64 : len;
        if (end > len) end = len;
        if (dsr1_toolparse_feed(p, text + at, end - at, i == n_cuts)) abort();
        at = end;
        size_t k;
        const char *c = dsr1_toolparse_content(p, &k);
        add(&r->content, &r->n, c, k);
        int ne;
        const dsr1_tool_event *ev = dsr1_toolparse_events(p, &ne);
        for (int e = 0; e < ne; e++) {
            if (ev[e].name) {
                if (ev[e].index != r->calls) abort(); /* names first, in order */
                if (r->calls++) add(&r->args, &r->an, "\x01", 1);
            } else if (ev[e].index != r->calls - 1) {
                abort(); /* arguments of the call being parsed */
            }
            if (strlen(ev[e].args) > ev[e].args_len || ev[e].args[ev[e].args_len]) abort();
            add(&r->args, &r->an, ev[e].args, ev[e].args_len);
        }
    }
    dsr1_toolparse_destroy(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    size_t n_cuts = data[0] % 16;
    if (size < 1 + n_cuts) return 0;
    const uint8_t *cuts = data + 1;
    const char *text = (const char *)data + 1 + n_cuts;
    size_t len = size - 1 - n_cuts;
    result whole, split;
    run(text, len, NULL, 0, &whole);
    run(text, len, cuts, n_cuts, &split);
    if (whole.n != split.n || memcmp(whole.content, split.content, whole.n) ||
        whole.calls != split.calls || whole.an != split.an ||
        memcmp(whole.args, split.args, whole.an))
        abort();
    free(whole.content);
    free(whole.args);
    free(split.content);
    free(split.args);
    return 0;
}
