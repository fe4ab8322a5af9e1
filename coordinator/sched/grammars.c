/* The server's grammar cache (grammars.h): a list of entries in least-recently-used order
 * under one mutex. Lookups compare the full key (kind, options, text) after a hash; a
 * server holds at most a few hundred grammars, so a linear scan of the hashes is cheap next
 * to compiling. Compilation runs outside the lock, so one slow schema does not hold up
 * other requests; two threads compiling the same new text both compile, and the second
 * keeps the first one's entry. */
#include "grammars.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry {
    struct entry *prev, *next; /* most recently used first */
    uint64_t hash;
    dsr1_grammar_kind kind;
    dsr1_grammar_opts opts;
    char *text;
    size_t len;
    dsr1_grammar *g;
    int refs;
} entry;

struct dsr1_grammars {
    pthread_mutex_t mu;
    dsr1_grammar_vocab *vocab;
    entry *head, *tail;
    int n, capacity, referenced;
    int64_t compiled, hits, failed;
};

/* FNV-1a over the key's bytes. */
static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

static uint64_t key_hash(dsr1_grammar_kind kind, const dsr1_grammar_opts *o, const char *text,
                         size_t len)
{
    uint64_t h = fnv(0xcbf29ce484222325ull, &kind, sizeof(kind));
    h = fnv(h, o, sizeof(*o));
    return fnv(h, text, len);
}

static bool same_opts(const dsr1_grammar_opts *a, const dsr1_grammar_opts *b)
{
    return a->json_whitespace == b->json_whitespace && a->strict_objects == b->strict_objects &&
           a->max_source == b->max_source && a->max_rules == b->max_rules &&
           a->max_repeat == b->max_repeat && a->max_states == b->max_states;
}

static void unlink_entry(dsr1_grammars *c, entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void push_front(dsr1_grammars *c, entry *e)
{
    e->next = c->head;
    if (c->head) c->head->prev = e;
    c->head = e;
    if (!c->tail) c->tail = e;
}

static void entry_free(entry *e)
{
    dsr1_grammar_free(e->g);
    free(e->text);
    free(e);
}

/* Drops unreferenced entries from the cold end while the cache is over capacity. */
static void evict(dsr1_grammars *c)
{
    for (entry *e = c->tail; e && c->n > c->capacity;) {
        entry *prev = e->prev;
        if (!e->refs) {
            unlink_entry(c, e);
            entry_free(e);
            c->n--;
        }
        e = prev;
    }
}

dsr1_status dsr1_grammars_create(const dsr1_tokenizer *tok, int32_t eos_id, int capacity,
                                 dsr1_grammars **out)
{
    dsr1_grammars *c = calloc(1, sizeof(*c));
    if (!c) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    dsr1_status st = dsr1_grammar_vocab_create(tok, eos_id, &c->vocab);
    if (st != DSR1_OK) {
        free(c);
        return st;
    }
    pthread_mutex_init(&c->mu, NULL);
    c->capacity = capacity > 0 ? capacity : 256;
    *out = c;
    return DSR1_OK;
}

void dsr1_grammars_destroy(dsr1_grammars *c)
{
    if (!c) return;
    for (entry *e = c->head; e;) {
        entry *next = e->next;
        entry_free(e);
        e = next;
    }
    dsr1_grammar_vocab_free(c->vocab);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static dsr1_status compile(const dsr1_grammars *c, dsr1_grammar_kind kind, const char *text,
                           size_t len, const dsr1_grammar_opts *o, dsr1_grammar **g)
{
    switch (kind) {
    case DSR1_GRAMMAR_JSON_SCHEMA:
        return dsr1_grammar_compile_json_schema(c->vocab, text, len, o, g);
    case DSR1_GRAMMAR_REGEX:
        return dsr1_grammar_compile_regex(c->vocab, text, len, o, g);
    case DSR1_GRAMMAR_EBNF:
        return dsr1_grammar_compile_ebnf(c->vocab, text, len, o, g);
    case DSR1_GRAMMAR_JSON_OBJECT:
        return dsr1_grammar_compile_json_object(c->vocab, o, g);
    }
    return dsr1_error(DSR1_ERR_INVALID_ARG, "unknown grammar kind %d", (int)kind);
}

/* The entry of the key, moved to the front with a reference taken; NULL when absent. */
static entry *find(dsr1_grammars *c, uint64_t h, dsr1_grammar_kind kind, const dsr1_grammar_opts *o,
                   const char *text, size_t len)
{
    for (entry *e = c->head; e; e = e->next)
        if (e->hash == h && e->kind == kind && e->len == len && same_opts(&e->opts, o) &&
            !memcmp(e->text, text, len)) {
            unlink_entry(c, e);
            push_front(c, e);
            if (!e->refs++) c->referenced++;
            return e;
        }
    return NULL;
}

dsr1_status dsr1_grammars_get(dsr1_grammars *c, dsr1_grammar_kind kind, const char *text,
                              size_t len, const dsr1_grammar_opts *opts, const dsr1_grammar **out)
{
    dsr1_grammar_opts o = opts ? *opts : (dsr1_grammar_opts){0};
    if (!o.max_states) o.max_states = DSR1_GRAMMARS_MAX_STATES;
    if (kind == DSR1_GRAMMAR_JSON_OBJECT) len = 0;
    if (len && !text) return dsr1_error(DSR1_ERR_INVALID_ARG, "grammar: no text");
    const uint64_t h = key_hash(kind, &o, text, len);
    pthread_mutex_lock(&c->mu);
    entry *e = find(c, h, kind, &o, text, len);
    if (e) c->hits++;
    pthread_mutex_unlock(&c->mu);
    if (e) {
        *out = e->g;
        return DSR1_OK;
    }
    dsr1_grammar *g;
    dsr1_status st = compile(c, kind, text, len, &o, &g);
    pthread_mutex_lock(&c->mu);
    if (st != DSR1_OK) {
        c->failed++;
        pthread_mutex_unlock(&c->mu);
        return st;
    }
    c->compiled++;
    if ((e = find(c, h, kind, &o, text, len))) { /* another thread was first */
        pthread_mutex_unlock(&c->mu);
        dsr1_grammar_free(g);
        *out = e->g;
        return DSR1_OK;
    }
    e = calloc(1, sizeof(*e));
    char *copy = malloc(len + 1);
    if (!e || !copy) {
        pthread_mutex_unlock(&c->mu);
        free(e);
        free(copy);
        dsr1_grammar_free(g);
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory for a grammar");
    }
    if (len) memcpy(copy, text, len);
    copy[len] = '\0';
    *e = (entry){.hash = h, .kind = kind, .opts = o, .text = copy, .len = len, .g = g, .refs = 1};
    push_front(c, e);
    c->n++;
    c->referenced++;
    evict(c);
    pthread_mutex_unlock(&c->mu);
    *out = g;
    return DSR1_OK;
}

void dsr1_grammars_retain(dsr1_grammars *c, const dsr1_grammar *g)
{
    if (!c || !g) return;
    pthread_mutex_lock(&c->mu);
    for (entry *e = c->head; e; e = e->next)
        if (e->g == g) {
            if (!e->refs++) c->referenced++;
            break;
        }
    pthread_mutex_unlock(&c->mu);
}

void dsr1_grammars_release(dsr1_grammars *c, const dsr1_grammar *g)
{
    if (!c || !g) return;
    pthread_mutex_lock(&c->mu);
    for (entry *e = c->head; e; e = e->next)
        if (e->g == g) {
            if (e->refs > 0 && !--e->refs) c->referenced--;
            break;
        }
    evict(c);
    pthread_mutex_unlock(&c->mu);
}

void dsr1_grammars_get_stats(dsr1_grammars *c, dsr1_grammars_stats *out)
{
    pthread_mutex_lock(&c->mu);
    *out = (dsr1_grammars_stats){c->compiled, c->hits, c->failed, c->n, c->referenced};
    pthread_mutex_unlock(&c->mu);
}
