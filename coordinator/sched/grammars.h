/* The compiled grammars of a server: one vocabulary trie built at start-up, and a cache of
 * compiled grammars shared by every frontend (gRPC, HTTP) and request.
 *
 * Clients send the same schema again and again (a tool's parameters, an application's
 * response format), and compiling is the expensive part, so a grammar is compiled once per
 * distinct (kind, text, options) and shared by reference. A reference is taken by
 * dsr1_grammars_get and given back once: by the scheduler when a request that carried it
 * ends (dsr1_sched_request.grammar), or by the frontend when the request never reached it.
 * Unreferenced grammars stay cached, least recently used evicted first beyond `capacity`.
 * Thread-safe. */
#ifndef DSR1_GRAMMARS_H
#define DSR1_GRAMMARS_H

#include <stddef.h>
#include <stdint.h>

#include "grammar.h"
#include "status.h"
#include "tokenizer.h"

typedef enum {
    DSR1_GRAMMAR_JSON_SCHEMA = 1, /* text: a JSON Schema */
    DSR1_GRAMMAR_REGEX = 2,       /* text: a regular expression */
    DSR1_GRAMMAR_EBNF = 3,        /* text: grammar.h's EBNF */
    DSR1_GRAMMAR_JSON_OBJECT = 4, /* any JSON object; no text */
} dsr1_grammar_kind;

typedef struct dsr1_grammars dsr1_grammars;

/* The vocabulary from the tokenizer (which must outlive the cache), eos_id ending a
 * constrained output; capacity: grammars kept (0: 256). */
dsr1_status dsr1_grammars_create(const dsr1_tokenizer *tok, int32_t eos_id, int capacity,
                                 dsr1_grammars **out);
/* Every reference must have been given back. */
void dsr1_grammars_destroy(dsr1_grammars *c);

/* Automaton states a client's grammar may need here (opts->max_states when 0): about 0.5 s of
 * compilation at most on one core, where the engine's own default (1M) allows about 10 s —
 * a server must not let one request hold a frontend thread that long. Real schemas need a
 * few thousand. */
#define DSR1_GRAMMARS_MAX_STATES 50000

/* The grammar of (kind, text, opts), compiled now or found in the cache, with a reference
 * for the caller. Compile errors are those of grammar.h (DSR1_ERR_INVALID_ARG naming the
 * keyword and JSON pointer, or line and column; DSR1_ERR_RANGE for a limit); they are not
 * cached. opts may be NULL. */
dsr1_status dsr1_grammars_get(dsr1_grammars *c, dsr1_grammar_kind kind, const char *text,
                              size_t len, const dsr1_grammar_opts *opts, const dsr1_grammar **out);
/* One more reference on a grammar this cache gave out (g may be NULL: nothing), e.g. one
 * per scheduler request when several share it (n choices). */
void dsr1_grammars_retain(dsr1_grammars *c, const dsr1_grammar *g);
/* Gives back a reference taken by dsr1_grammars_get or _retain (g may be NULL: nothing). */
void dsr1_grammars_release(dsr1_grammars *c, const dsr1_grammar *g);

typedef struct {
    int64_t compiled, hits, failed; /* since creation */
    int cached, referenced;         /* now */
} dsr1_grammars_stats;
void dsr1_grammars_get_stats(dsr1_grammars *c, dsr1_grammars_stats *out);

#endif
