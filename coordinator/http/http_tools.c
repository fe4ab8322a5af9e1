/* R1's tool-call format, parsed incrementally out of generated content, and dsr1's tool
 * prompt (http_tools.h).
 *
 * The parser keeps the text it has not decided in `hold` and moves through the states
 * TEXT (content) -> CALLS (between calls) -> HEADER (type, separator, name, the opening
 * fence) -> ARGS (the arguments, streamed) -> CALLS ... -> DONE (after the calls; what
 * follows is content again). In TEXT and ARGS, a tail of hold that could begin the next
 * marker is held back; everything before it is released. */
#include "http_tools.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

enum { TEXT, CALLS, HEADER, ARGS, DONE };

typedef struct {
    char *p;
    size_t n, cap;
} buf;

struct dsr1_toolparse {
    int state;
    int index; /* of the call being parsed (calls begun - 1) */
    bool fenced, complete;
    buf hold, content;
    dsr1_tool_event *ev;
    int n_ev, cap_ev;
};

static dsr1_status buf_add(buf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return dsr1_error(DSR1_ERR_NOMEM, "tool parser: out of memory");
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return DSR1_OK;
}

static void buf_drop(buf *b, size_t n)
{
    memmove(b->p, b->p + n, b->n - n);
    b->n -= n;
    b->p[b->n] = '\0';
}

dsr1_status dsr1_toolparse_create(dsr1_toolparse **out)
{
    dsr1_toolparse *p = calloc(1, sizeof(*p));
    if (!p || buf_add(&p->hold, "", 0) || buf_add(&p->content, "", 0)) {
        dsr1_toolparse_destroy(p);
        return dsr1_error(DSR1_ERR_NOMEM, "tool parser: out of memory");
    }
    p->index = -1;
    *out = p;
    return DSR1_OK;
}

static void events_clear(dsr1_toolparse *p)
{
    for (int i = 0; i < p->n_ev; i++) {
        free(p->ev[i].name);
        free(p->ev[i].args);
    }
    p->n_ev = 0;
}

void dsr1_toolparse_destroy(dsr1_toolparse *p)
{
    if (!p) return;
    events_clear(p);
    free(p->ev);
    free(p->hold.p);
    free(p->content.p);
    free(p);
}

static char *dupn(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/* Adds an event: a name (the call's first) or an arguments fragment, merged into the
 * previous event of the same call when it has no name to announce. */
static dsr1_status event(dsr1_toolparse *p, const char *name, size_t name_len, const char *args,
                         size_t args_len)
{
    if (!name && !args_len) return DSR1_OK;
    dsr1_tool_event *last = p->n_ev ? &p->ev[p->n_ev - 1] : NULL;
    if (!name && last && last->index == p->index) {
        size_t n = last->args_len;
        char *a = realloc(last->args, n + args_len + 1);
        if (!a) return dsr1_error(DSR1_ERR_NOMEM, "tool parser: out of memory");
        memcpy(a + n, args, args_len);
        a[n + args_len] = '\0';
        last->args = a;
        last->args_len = n + args_len;
        return DSR1_OK;
    }
    if (p->n_ev == p->cap_ev) {
        int cap = p->cap_ev ? 2 * p->cap_ev : 8;
        dsr1_tool_event *e = realloc(p->ev, (size_t)cap * sizeof(*e));
        if (!e) return dsr1_error(DSR1_ERR_NOMEM, "tool parser: out of memory");
        p->ev = e;
        p->cap_ev = cap;
    }
    dsr1_tool_event *e = &p->ev[p->n_ev];
    *e = (dsr1_tool_event){p->index, name ? dupn(name, name_len) : NULL, dupn(args, args_len),
                           args_len};
    if ((name && !e->name) || !e->args) {
        free(e->name);
        free(e->args);
        return dsr1_error(DSR1_ERR_NOMEM, "tool parser: out of memory");
    }
    p->n_ev++;
    return DSR1_OK;
}

/* The length of the longest tail of s[0, n) that is a proper prefix of marker. */
static size_t partial_tail(const char *s, size_t n, const char *marker)
{
    size_t m = strlen(marker);
    for (size_t k = m - 1 < n ? m - 1 : n; k > 0; k--)
        if (!memcmp(s + n - k, marker, k)) return k;
    return 0;
}

static bool starts(const buf *b, const char *marker)
{
    size_t m = strlen(marker);
    return b->n >= m && !memcmp(b->p, marker, m);
}

/* Whether hold is a proper prefix of marker (more text needed to decide). */
static bool maybe(const buf *b, const char *marker)
{
    size_t m = strlen(marker);
    return b->n < m && !memcmp(b->p, marker, b->n);
}

static bool is_space(char c)
{
    return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

static size_t skip_space(const buf *b)
{
    size_t i = 0;
    while (i < b->n && is_space(b->p[i])) i++;
    return i;
}

/* One step of the state machine; *progress false when it needs more text. */
static dsr1_status step(dsr1_toolparse *p, bool final, bool *progress)
{
    buf *h = &p->hold;
    dsr1_status st = DSR1_OK;
    *progress = false;
    switch (p->state) {
    case TEXT:
    case DONE: {
        const char *m = p->state == TEXT ? memmem(h->p, h->n, DSR1_TOOL_CALLS_BEGIN,
                                                  strlen(DSR1_TOOL_CALLS_BEGIN))
                                         : NULL;
        if (m) {
            size_t at = (size_t)(m - h->p);
            st = buf_add(&p->content, h->p, at);
            buf_drop(h, at + strlen(DSR1_TOOL_CALLS_BEGIN));
            p->state = CALLS;
            *progress = true;
            return st;
        }
        size_t keep =
            final || p->state == DONE ? 0 : partial_tail(h->p, h->n, DSR1_TOOL_CALLS_BEGIN);
        st = buf_add(&p->content, h->p, h->n - keep);
        buf_drop(h, h->n - keep);
        return st;
    }
    case CALLS: {
        size_t ws = skip_space(h);
        buf_drop(h, ws);
        if (starts(h, DSR1_TOOL_CALL_BEGIN)) {
            buf_drop(h, strlen(DSR1_TOOL_CALL_BEGIN));
            p->state = HEADER;
            p->index++;
            p->complete = false;
            *progress = true;
        } else if (starts(h, DSR1_TOOL_CALLS_END)) {
            buf_drop(h, strlen(DSR1_TOOL_CALLS_END));
            p->state = DONE;
            *progress = true;
        } else if (h->n && !maybe(h, DSR1_TOOL_CALL_BEGIN) && !maybe(h, DSR1_TOOL_CALLS_END)) {
            p->state = DONE; /* not a call: the rest is content */
            *progress = true;
        }
        return DSR1_OK;
    }
    case HEADER: {
        const char *sep = memmem(h->p, h->n, DSR1_TOOL_SEP, strlen(DSR1_TOOL_SEP));
        if (!sep) return DSR1_OK;
        const char *name = sep + strlen(DSR1_TOOL_SEP);
        const char *nl = memchr(name, '\n', (size_t)(h->p + h->n - name));
        if (!nl) return DSR1_OK;
        size_t after = (size_t)(nl + 1 - h->p);
        /* the opening fence, when there is one */
        const char *rest = nl + 1;
        size_t rn = h->n - after;
        static const char *const fences[] = {"```json\n", "```\n"};
        size_t fence = 0;
        for (int i = 0; i < 2 && !fence; i++) {
            size_t fl = strlen(fences[i]);
            if (rn >= fl && !memcmp(rest, fences[i], fl))
                fence = fl;
            else if (rn < fl && !memcmp(rest, fences[i], rn) && !final)
                return DSR1_OK; /* undecided */
        }
        size_t nlen = (size_t)(nl - name);
        while (nlen && (name[nlen - 1] == ' ' || name[nlen - 1] == '\r')) nlen--;
        while (nlen && *name == ' ') name++, nlen--;
        st = event(p, name, nlen, "", 0);
        buf_drop(h, after + fence);
        p->fenced = fence > 0;
        p->state = ARGS;
        *progress = true;
        return st;
    }
    case ARGS: {
        const char *end = memmem(h->p, h->n, DSR1_TOOL_CALL_END, strlen(DSR1_TOOL_CALL_END));
        if (end) {
            /* the arguments end before whitespace, the closing fence, whitespace */
            size_t n = (size_t)(end - h->p);
            size_t drop = n + strlen(DSR1_TOOL_CALL_END);
            while (n && is_space(h->p[n - 1])) n--;
            if (p->fenced && n >= 3 && !memcmp(h->p + n - 3, "```", 3)) n -= 3;
            while (n && is_space(h->p[n - 1])) n--;
            st = event(p, NULL, 0, h->p, n);
            buf_drop(h, drop);
            p->state = CALLS;
            p->complete = true;
            *progress = true;
            return st;
        }
        /* hold back what the end would trim: whitespace, a fence, whitespace, and the start
         * of the end marker */
        size_t j = h->n;
        if (!final) {
            j -= partial_tail(h->p, h->n, DSR1_TOOL_CALL_END);
            while (j && is_space(h->p[j - 1])) j--;
            for (int bt = 0; bt < 3 && j && h->p[j - 1] == '`'; bt++) j--;
            while (j && is_space(h->p[j - 1])) j--;
        }
        st = event(p, NULL, 0, h->p, j);
        buf_drop(h, j);
        return st;
    }
    }
    return DSR1_OK;
}

dsr1_status dsr1_toolparse_feed(dsr1_toolparse *p, const char *text, size_t len, bool final)
{
    events_clear(p);
    p->content.n = 0;
    p->content.p[0] = '\0';
    dsr1_status st = buf_add(&p->hold, text, len);
    bool progress = true;
    while (st == DSR1_OK && progress) st = step(p, final, &progress);
    if (st == DSR1_OK && final && p->hold.n) {
        /* an unfinished header or stray text between calls: dropped */
        p->hold.n = 0;
        p->hold.p[0] = '\0';
    }
    return st;
}

const char *dsr1_toolparse_content(const dsr1_toolparse *p, size_t *len)
{
    *len = p->content.n;
    return p->content.p;
}

const dsr1_tool_event *dsr1_toolparse_events(const dsr1_toolparse *p, int *n)
{
    *n = p->n_ev;
    return p->ev;
}

int dsr1_toolparse_calls(const dsr1_toolparse *p)
{
    return p->index + 1;
}

bool dsr1_toolparse_complete(const dsr1_toolparse *p)
{
    return p->index < 0 || p->complete;
}

/* ---- the tool prompt ---- */

/* Ours (docs/api.md, "Tool calls"): what the tools are, then the exact format, with the
 * special tokens spelled out, since R1 was trained on them but its template never says. */
static const char PROMPT_HEAD[] =
    "## Tools\n\n"
    "You can call the functions below. Each is given as a JSON object with its name, what it "
    "does, and a JSON Schema of its parameters:\n\n";
static const char PROMPT_FORMAT[] =
    "\nTo call functions, answer with the calls only, in exactly this form "
    "(one " DSR1_TOOL_CALL_BEGIN " ... " DSR1_TOOL_CALL_END
    " per call, arguments as one JSON object "
    "matching the schema):\n\n" DSR1_TOOL_CALLS_BEGIN DSR1_TOOL_CALL_BEGIN "function" DSR1_TOOL_SEP
    "NAME\n```json\n{\"parameter\": \"value\"}\n```" DSR1_TOOL_CALL_END DSR1_TOOL_CALLS_END "\n\n"
    "The results come back in the next message. Call functions only when they help to answer; "
    "otherwise answer normally.";

dsr1_status dsr1_tool_prompt(const char *tools_json, const char *choice_note, char **out)
{
    json_t *tools = json_loads(tools_json, 0, NULL);
    if (!json_is_array(tools)) {
        json_decref(tools);
        return dsr1_error(DSR1_ERR_INVALID_ARG, "tools: not a JSON array");
    }
    buf b = {0};
    dsr1_status st = buf_add(&b, PROMPT_HEAD, strlen(PROMPT_HEAD));
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t)
    {
        json_t *fn = json_object_get(t, "function");
        json_t *o = json_pack("{s:O, s:O?, s:O?}", "name", json_object_get(fn, "name"),
                              "description", json_object_get(fn, "description"), "parameters",
                              json_object_get(fn, "parameters"));
        char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!s) st = dsr1_error(DSR1_ERR_NOMEM, "tool prompt: out of memory");
        if (!st) st = buf_add(&b, "- ", 2);
        if (!st) st = buf_add(&b, s, strlen(s));
        if (!st) st = buf_add(&b, "\n", 1);
        free(s);
        if (st) break;
    }
    json_decref(tools);
    if (!st) st = buf_add(&b, PROMPT_FORMAT, strlen(PROMPT_FORMAT));
    if (!st && choice_note && *choice_note) {
        st = buf_add(&b, " ", 1);
        if (!st) st = buf_add(&b, choice_note, strlen(choice_note));
    }
    if (st) {
        free(b.p);
        return st;
    }
    *out = b.p;
    return DSR1_OK;
}
