/* The text side of one generation (see textout.h).
 *
 * Text flows in three stages. The detokenizer holds the bytes of an unfinished UTF-8
 * character; what it releases goes to `pending`, which holds the tail that could still
 * begin a stop string; what is decided goes to the current part (reasoning or content),
 * which keeps the whole text, so a delta is the part's growth during one call. A stop
 * string is looked for in pending only: the released text ends before the first position
 * from which the rest could begin one, so no match can start in it. Among several
 * matches the one that completes first wins (at the same end, the longest), which is the
 * one a character-by-character stream would meet first, so the result does not depend on
 * how the text was split into tokens. The end of a part (`</think>`, a stop id, finish)
 * flushes the detokenizer and decides everything pending.
 *
 * Opening the think block from the generation (detect_think): until the first text is
 * decided, released text collects in `lead`; while lead (less leading whitespace) is a
 * proper prefix of "<think>" it is held, once it begins with "<think>" that much is dropped
 * and the rest goes to reasoning, otherwise all of it goes on as content. */
#include "textout.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "detok.h"
#include "utf8.h"

enum { REASONING = 0, CONTENT = 1 };

/* A growing string, NUL-terminated after each append (deltas point into it). */
typedef struct {
    char *p;
    size_t n, cap;
} textbuf;

struct dsr1_textout {
    const dsr1_tokenizer *tok;
    dsr1_detok *detok;
    int32_t eos_id; /* -1 when none or ignored */
    int32_t think_end_id;
    int32_t *stop_ids;
    int n_stop_ids;
    char *stop[DSR1_MAX_STOP_STRINGS];
    size_t stop_len[DSR1_MAX_STOP_STRINGS];
    int n_stop;
    size_t max_stop_len;
    int part;          /* REASONING or CONTENT: where released text goes */
    bool armed;        /* detect_think: the generation may still open <think> */
    bool skip_newline; /* drop one "\n" at the start of reasoning opened by the generation */
    int32_t think_start_id;
    textbuf lead; /* armed: text released so far, not yet decided */
    bool done;    /* stopped or finished: no more ids */
    textbuf pending;
    textbuf text[2];     /* everything released, per part */
    size_t call_mark[2]; /* text[i].n when the current call began */
    const char *reason;  /* set by the call that stops */
    char id_reason[16];
};

static dsr1_status textbuf_append(textbuf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return dsr1_error(DSR1_ERR_NOMEM, "textout: out of memory");
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return DSR1_OK;
}

static dsr1_status check_id(const dsr1_tokenizer *tok, const char *field, int32_t id)
{
    if (id == -1 || dsr1_tokenizer_id_valid(tok, id)) return DSR1_OK;
    return dsr1_error(DSR1_ERR_INVALID_ARG, "textout: %s %d is not in the vocabulary", field,
                      (int)id);
}

dsr1_status dsr1_textout_params_check(const dsr1_tokenizer *tok, const dsr1_textout_params *p)
{
    if (!tok || !p) return dsr1_error(DSR1_ERR_INVALID_ARG, "textout: NULL argument");
    dsr1_status st = check_id(tok, "eos_id", p->eos_id);
    if (!st) st = check_id(tok, "think_end_id", p->think_end_id);
    if (!st && p->detect_think) st = check_id(tok, "think_start_id", p->think_start_id);
    if (st) return st;
    if (p->n_stop_ids < 0 || (p->n_stop_ids > 0 && !p->stop_ids))
        return dsr1_error(DSR1_ERR_INVALID_ARG, "textout: %d stop ids and no array", p->n_stop_ids);
    for (int i = 0; i < p->n_stop_ids; i++)
        if (!dsr1_tokenizer_id_valid(tok, p->stop_ids[i]))
            return dsr1_error(DSR1_ERR_INVALID_ARG, "textout: stop id %d is not in the vocabulary",
                              (int)p->stop_ids[i]);
    if (p->n_stop < 0 || p->n_stop > DSR1_MAX_STOP_STRINGS || (p->n_stop > 0 && !p->stop))
        return dsr1_error(DSR1_ERR_INVALID_ARG, "textout: %d stop strings (at most %d)", p->n_stop,
                          DSR1_MAX_STOP_STRINGS);
    for (int i = 0; i < p->n_stop; i++) {
        const char *s = p->stop[i];
        size_t n = s ? strlen(s) : 0;
        if (n == 0 || n > DSR1_MAX_STOP_STRING_BYTES)
            return dsr1_error(DSR1_ERR_INVALID_ARG,
                              "textout: stop string %d has %zu bytes (1 to %d allowed)", i, n,
                              DSR1_MAX_STOP_STRING_BYTES);
        if (dsr1_utf8_valid_prefix((const uint8_t *)s, n) != n)
            return dsr1_error(DSR1_ERR_INVALID_ARG, "textout: stop string %d is not valid UTF-8",
                              i);
    }
    return DSR1_OK;
}

static dsr1_status copy_params(dsr1_textout *t, const dsr1_textout_params *p)
{
    t->eos_id = p->ignore_eos ? -1 : p->eos_id;
    t->think_end_id = p->think_end_id;
    t->part = p->in_reasoning && p->think_end_id >= 0 ? REASONING : CONTENT;
    t->armed = p->detect_think && p->think_end_id >= 0 && t->part == CONTENT;
    t->think_start_id = p->detect_think ? p->think_start_id : -1;
    if (p->n_stop_ids > 0) {
        t->stop_ids = malloc((size_t)p->n_stop_ids * sizeof(*t->stop_ids));
        if (!t->stop_ids) return dsr1_error(DSR1_ERR_NOMEM, "textout: out of memory");
        memcpy(t->stop_ids, p->stop_ids, (size_t)p->n_stop_ids * sizeof(*t->stop_ids));
        t->n_stop_ids = p->n_stop_ids;
    }
    for (; t->n_stop < p->n_stop; t->n_stop++) {
        size_t n = strlen(p->stop[t->n_stop]);
        if (!(t->stop[t->n_stop] = strdup(p->stop[t->n_stop])))
            return dsr1_error(DSR1_ERR_NOMEM, "textout: out of memory");
        t->stop_len[t->n_stop] = n;
        if (n > t->max_stop_len) t->max_stop_len = n;
    }
    return DSR1_OK;
}

dsr1_status dsr1_textout_create(const dsr1_tokenizer *tok, const dsr1_textout_params *p,
                                dsr1_textout **out)
{
    if (!tok || !p || !out) return dsr1_error(DSR1_ERR_INVALID_ARG, "textout: NULL argument");
    dsr1_status st = dsr1_textout_params_check(tok, p);
    if (st) return st;
    dsr1_textout *t = calloc(1, sizeof(*t));
    if (!t) return dsr1_error(DSR1_ERR_NOMEM, "textout: out of memory");
    t->tok = tok;
    st = dsr1_detok_create(tok, p->skip_special ? DSR1_DETOK_SKIP_SPECIAL : 0, &t->detok);
    if (!st) st = copy_params(t, p);
    if (st) {
        dsr1_textout_destroy(t);
        return st;
    }
    *out = t;
    return DSR1_OK;
}

void dsr1_textout_destroy(dsr1_textout *t)
{
    if (!t) return;
    dsr1_detok_free(t->detok);
    free(t->stop_ids);
    for (int i = 0; i < t->n_stop; i++) free(t->stop[i]);
    free(t->pending.p);
    free(t->lead.p);
    free(t->text[REASONING].p);
    free(t->text[CONTENT].p);
    free(t);
}

/* Moves the first n pending bytes to the current part. */
static dsr1_status release(dsr1_textout *t, size_t n)
{
    if (n == 0) return DSR1_OK;
    dsr1_status st = textbuf_append(&t->text[t->part], t->pending.p, n);
    if (st) return st;
    memmove(t->pending.p, t->pending.p + n, t->pending.n - n);
    t->pending.n -= n;
    return DSR1_OK;
}

/* The stop string that completes first in pending (at the same end, the longest), with
 * where it starts; -1 when none does. */
static int find_stop(const dsr1_textout *t, size_t *start)
{
    int best = -1;
    size_t best_end = 0;
    for (int i = 0; i < t->n_stop; i++) {
        const char *hit = memmem(t->pending.p, t->pending.n, t->stop[i], t->stop_len[i]);
        if (!hit) continue;
        size_t s = (size_t)(hit - t->pending.p), e = s + t->stop_len[i];
        if (best < 0 || e < best_end || (e == best_end && s < *start)) {
            best = i;
            best_end = e;
            *start = s;
        }
    }
    return best;
}

/* The first position of pending from which the rest is a proper prefix of a stop string
 * (pending.n when none): the text from there on is not decided yet. */
static size_t undecided_from(const dsr1_textout *t)
{
    size_t n = t->pending.n;
    for (size_t p = n >= t->max_stop_len ? n - t->max_stop_len + 1 : 0; p < n; p++)
        for (int i = 0; i < t->n_stop; i++)
            if (n - p < t->stop_len[i] && !memcmp(t->pending.p + p, t->stop[i], n - p)) return p;
    return n;
}

/* Applies the stop strings to pending: on a match releases the text before it, drops the
 * rest and stops; otherwise releases what is decided (everything at the end of a part). */
static dsr1_status settle(dsr1_textout *t, bool end_of_part)
{
    size_t start = 0;
    int i = t->pending.n ? find_stop(t, &start) : -1;
    if (i < 0) return release(t, end_of_part ? t->pending.n : undecided_from(t));
    t->done = true;
    t->reason = t->stop[i];
    dsr1_status st = release(t, start);
    t->pending.n = 0;
    return st;
}

static dsr1_status add_decided(dsr1_textout *t, const char *s, size_t n, bool end_of_part)
{
    if (t->skip_newline && n) {
        t->skip_newline = false;
        if (s[0] == '\n') s++, n--;
    }
    dsr1_status st = textbuf_append(&t->pending, s, n);
    return st ? st : settle(t, end_of_part);
}

static const char THINK_OPEN[] = "<think>";

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Enters the reasoning part opened by the generation. */
static void open_think(dsr1_textout *t)
{
    t->armed = false;
    t->part = REASONING;
    t->skip_newline = true;
}

/* Whether lead holds only whitespace (what may precede the <think> token). */
static bool lead_blank(const dsr1_textout *t)
{
    for (size_t i = 0; i < t->lead.n; i++)
        if (!is_space(t->lead.p[i])) return false;
    return true;
}

/* While armed, text goes through lead first (see the top of the file). */
static dsr1_status add_text(dsr1_textout *t, const char *s, size_t n, bool end_of_part)
{
    if (!t->armed) return add_decided(t, s, n, end_of_part);
    dsr1_status st = textbuf_append(&t->lead, s, n);
    if (st) return st;
    size_t ws = 0;
    while (ws < t->lead.n && is_space(t->lead.p[ws])) ws++;
    size_t rest = t->lead.n - ws, k = sizeof(THINK_OPEN) - 1;
    bool prefix = rest < k && !memcmp(t->lead.p + ws, THINK_OPEN, rest);
    if (prefix && !end_of_part) return DSR1_OK; /* undecided: hold */
    t->lead.n = 0;
    if (rest >= k && !memcmp(t->lead.p + ws, THINK_OPEN, k)) {
        open_think(t);
        return add_decided(t, t->lead.p + ws + k, rest - k, end_of_part);
    }
    t->armed = false;
    return add_decided(t, t->lead.p, ws + rest, end_of_part);
}

static dsr1_status end_part(dsr1_textout *t)
{
    const char *s;
    size_t n;
    dsr1_status st = dsr1_detok_flush(t->detok, &s, &n);
    return st ? st : add_text(t, s, n, true);
}

static bool is_stop_id(const dsr1_textout *t, int32_t id)
{
    if (id == t->eos_id) return true;
    for (int i = 0; i < t->n_stop_ids; i++)
        if (t->stop_ids[i] == id) return true;
    return false;
}

static void begin_call(dsr1_textout *t)
{
    t->call_mark[REASONING] = t->text[REASONING].n;
    t->call_mark[CONTENT] = t->text[CONTENT].n;
    t->reason = NULL;
}

/* This call's growth of a part ("" when none). */
static const char *grown(const dsr1_textout *t, int part, size_t *len)
{
    *len = t->text[part].n - t->call_mark[part];
    return t->text[part].p ? t->text[part].p + t->call_mark[part] : "";
}

static void end_call(const dsr1_textout *t, dsr1_textout_delta *d)
{
    d->reasoning = grown(t, REASONING, &d->reasoning_len);
    d->content = grown(t, CONTENT, &d->content_len);
    d->stopped = t->reason != NULL;
    d->stop_reason = t->reason;
}

dsr1_status dsr1_textout_push(dsr1_textout *t, int32_t id, dsr1_textout_delta *d)
{
    if (!t || !d) return dsr1_error(DSR1_ERR_INVALID_ARG, "textout: NULL argument");
    if (t->done) return dsr1_error(DSR1_ERR_INVALID_ARG, "textout: generation already ended");
    if (id < 0) return dsr1_error(DSR1_ERR_RANGE, "textout: token id %d is negative", (int)id);
    begin_call(t);
    dsr1_status st;
    if (is_stop_id(t, id)) {
        st = end_part(t);
        if (!t->reason) {
            snprintf(t->id_reason, sizeof(t->id_reason), "%d", (int)id);
            t->reason = t->id_reason;
        }
        t->done = true;
    } else if (t->armed && id == t->think_start_id && lead_blank(t)) {
        st = DSR1_OK;
        t->lead.n = 0;
        open_think(t);
    } else if (id == t->think_end_id && t->part == REASONING) {
        st = end_part(t);
        t->part = CONTENT;
    } else if (!dsr1_tokenizer_id_valid(t->tok, id)) {
        st = DSR1_OK; /* an id of the model's vocabulary that the tokenizer lacks: no text */
    } else {
        const char *s;
        size_t n;
        st = dsr1_detok_push(t->detok, id, &s, &n);
        if (!st) st = add_text(t, s, n, false);
    }
    if (st) return st;
    end_call(t, d);
    return DSR1_OK;
}

dsr1_status dsr1_textout_finish(dsr1_textout *t, dsr1_textout_delta *d)
{
    if (!t || !d) return dsr1_error(DSR1_ERR_INVALID_ARG, "textout: NULL argument");
    begin_call(t);
    if (!t->done) {
        dsr1_status st = end_part(t);
        if (st) return st;
        t->done = true;
    }
    end_call(t, d);
    return DSR1_OK;
}

const char *dsr1_textout_reasoning(const dsr1_textout *t, size_t *len)
{
    if (len) *len = t->text[REASONING].n;
    return t->text[REASONING].p ? t->text[REASONING].p : "";
}

const char *dsr1_textout_content(const dsr1_textout *t, size_t *len)
{
    if (len) *len = t->text[CONTENT].n;
    return t->text[CONTENT].p ? t->text[CONTENT].p : "";
}

bool dsr1_textout_prompt_in_reasoning(const char *text, size_t n)
{
    while (n && (text[n - 1] == '\n' || text[n - 1] == ' ' || text[n - 1] == '\r' ||
                 text[n - 1] == '\t'))
        n--;
    return n >= 7 && !memcmp(text + n - 7, "<think>", 7);
}
