/* The grammar engine: constrains decoding to a language (an EBNF grammar, a regular
 * expression, a JSON Schema, or any JSON value).
 *
 * Three objects, from shared to per request:
 *
 *   dsr1_grammar_vocab   the vocabulary's byte strings as a token trie, built once per
 *                        tokenizer and shared by every grammar and request (read only).
 *   dsr1_grammar         a compiled grammar: immutable, shared by every request that asks
 *                        for the same grammar, safe to use from several threads at once. It
 *                        owns the caches of token masks per parser state (adaptive, filled
 *                        lazily; internally locked).
 *   dsr1_matcher         one request's position in its grammar: mask, advance, forced
 *                        tokens. Owned by one thread at a time.
 *
 * Where it runs: the coordinator's scheduler keeps a request's matcher beside its sampling
 * parameters. Before each step it asks the matcher for the mask of allowed next tokens and
 * sends it with the sample request; the sampler on the last pipeline stage applies it before
 * logit_bias, penalties, temperature and the top-k/top-p/min-p filters (so a constrained
 * request stays batch-invariant and seeded). When the sampled token comes back, the
 * scheduler advances the matcher. A preempted request keeps its matcher: recomputing its
 * cache does not change the tokens it has generated.
 *
 * The grammar text format (dsr1_grammar_compile_ebnf), GBNF-style with Lark's regex
 * terminals:
 *
 *   root      ::= "{" ws members? ws "}"        # a rule: name ::= alternatives
 *   members   ::= member ("," ws member)*
 *   member    ::= string ":" ws value
 *   string    ::= "\"" ( [^"\\\x00-\x1f] | "\\" escape )* "\""
 *   digits    ::= [0-9]{1,16}                    # bounded repetition {n}, {n,}, {n,m}
 *   date      ::= /[0-9]{4}-[0-9]{2}-[0-9]{2}/   # a regular expression terminal
 *   ws        ::= [ \t\n]*
 *
 * - Rule names: [A-Za-z_][A-Za-z0-9_-]*. The start rule is `root` (or `start` when there is
 *   no `root`). Every referenced rule must be defined; recursion is allowed (left recursion
 *   included).
 * - Literals "..." with escapes \n \r \t \\ \" \/ \xHH \uHHHH \UHHHHHHHH; character classes
 *   [...] and [^...] over Unicode code points (ranges a-z, the same escapes, plus \d \w \s);
 *   `.` any code point but newline; grouping ( ); postfix * + ? {n} {n,} {n,m}; `|`; `#`
 *   comments to the end of the line. Text is UTF-8 and classes match whole code points.
 * - Special tokens: <|TEXT|> matches exactly the one special token whose text is TEXT (an
 *   added token of the vocabulary, special or not, e.g. <|<｜tool▁call▁begin｜>|> for R1's), and
 * nothing else: text never matches a special token, a special token never matches a literal or
 *   class. TEXT runs to the first `|>` that is not followed by another `|>` (so
 *   <|<|eot_id|>|> names <|eot_id|>), on one line. An unknown name is an error naming it;
 *   the end-of-sequence token cannot be named (it follows a complete sentence by itself).
 * - /regex/ terminals: ECMAScript syntax as JSON Schema's `pattern` uses it (literals,
 *   classes, \d \w \s \D \W \S, . (any but newline), groups (?:...), alternation,
 *   quantifiers * + ? {n} {n,} {n,m} (lazy variants match like greedy ones), ^ and $ only
 *   at the ends). Backreferences and lookaround are errors that say so.
 * - Limits (dsr1_grammar_opts): source size, rules, repetition bounds and automaton states
 *   are bounded; past a bound compilation fails with DSR1_ERR_RANGE and a message naming
 *   the limit, never by running out of memory or time.
 *
 * JSON Schema (dsr1_grammar_compile_json_schema) compiles to this format: compact JSON (no
 * free whitespace unless opts.json_whitespace), properties in the order of `properties`,
 * `additionalProperties` as JSON Schema says (true when absent) unless opts.strict_objects
 * (OpenAI strict mode: false when absent). A keyword the engine cannot enforce is an error
 * naming the keyword and its JSON pointer (e.g. "unsupported keyword 'not' at
 * /properties/a"), never silently ignored.
 *
 * Errors: every compile function returns DSR1_ERR_INVALID_ARG (bad grammar, schema or
 * regex; the message gives the line and column, or the JSON pointer) or DSR1_ERR_RANGE (a
 * limit), with the message in dsr1_errmsg(). */
#ifndef DSR1_GRAMMAR_H
#define DSR1_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"
#include "tokenizer.h"

/* ---- the vocabulary ---- */

typedef struct dsr1_grammar_vocab dsr1_grammar_vocab;

/* From the tokenizer: every id's byte string (dsr1_tokenizer_token_bytes). Special tokens
 * (added tokens such as <｜end▁of▁sentence｜>, and added tokens the tokenizer does not mark
 * special but matches whole in text, such as R1's <｜tool▁calls▁begin｜>) never match
 * grammar text; a grammar names them by their text as <|TEXT|> terminals. `eos_id` is the token
 * that ends a constrained output (allowed exactly when the grammar is complete). */
dsr1_status dsr1_grammar_vocab_create(const dsr1_tokenizer *tok, int32_t eos_id,
                                      dsr1_grammar_vocab **out);
/* From raw byte strings (tests, benchmarks): n tokens, token i is bytes[i][0 .. lens[i]);
 * lens[i] == 0 marks a token that never matches (special). */
dsr1_status dsr1_grammar_vocab_create_raw(int32_t n, const uint8_t *const *bytes,
                                          const uint32_t *lens, int32_t eos_id,
                                          dsr1_grammar_vocab **out);
/* The same with special tokens: special[i] non-NULL (a NUL-terminated text) makes token i a
 * special token that grammars name as <|text|> (its bytes are ignored). special may be NULL. */
dsr1_status dsr1_grammar_vocab_create_raw_special(int32_t n, const uint8_t *const *bytes,
                                                  const uint32_t *lens, const char *const *special,
                                                  int32_t eos_id, dsr1_grammar_vocab **out);
/* The id of the special token with text text[0 .. len), -1 when none. */
int32_t dsr1_grammar_vocab_special_id(const dsr1_grammar_vocab *v, const char *text, size_t len);
int32_t dsr1_grammar_vocab_size(const dsr1_grammar_vocab *v);
void dsr1_grammar_vocab_free(dsr1_grammar_vocab *v);

/* ---- compiling ---- */

typedef struct {
    bool json_whitespace; /* JSON: allow optional whitespace between tokens (default: none) */
    bool strict_objects;  /* JSON Schema: additionalProperties false when absent (OpenAI strict) */
    size_t max_source;    /* bytes of grammar/schema text; 0: default 1 MiB */
    int max_rules;        /* 0: default 10,000 */
    int max_repeat;       /* largest {n,m} bound expanded; 0: default 1,000 */
    int max_states;       /* automaton states over all terminals and rules; 0: default 1M */
} dsr1_grammar_opts;

typedef struct dsr1_grammar dsr1_grammar;

/* The vocabulary must outlive the grammar. opts may be NULL (defaults). */
dsr1_status dsr1_grammar_compile_ebnf(const dsr1_grammar_vocab *v, const char *src, size_t len,
                                      const dsr1_grammar_opts *opts, dsr1_grammar **out);
dsr1_status dsr1_grammar_compile_regex(const dsr1_grammar_vocab *v, const char *re, size_t len,
                                       const dsr1_grammar_opts *opts, dsr1_grammar **out);
dsr1_status dsr1_grammar_compile_json_schema(const dsr1_grammar_vocab *v, const char *schema,
                                             size_t len, const dsr1_grammar_opts *opts,
                                             dsr1_grammar **out);
/* Any JSON value whose top level is an object (OpenAI's json_object mode). */
dsr1_status dsr1_grammar_compile_json_object(const dsr1_grammar_vocab *v,
                                             const dsr1_grammar_opts *opts, dsr1_grammar **out);
/* JSON Schema to grammar text (what compile_json_schema feeds compile_ebnf), for
 * `dsr1 grammar compile --print` and tests. *out is malloc'd and NUL-terminated. */
dsr1_status dsr1_json_schema_to_ebnf(const char *schema, size_t len, const dsr1_grammar_opts *opts,
                                     char **out, size_t *out_len);

typedef struct {
    int rules, terminals, states; /* sizes after compilation */
    double compile_s;
} dsr1_grammar_stats;
void dsr1_grammar_get_stats(const dsr1_grammar *g, dsr1_grammar_stats *out);
/* The vocabulary the grammar was compiled for (its masks have dsr1_grammar_vocab_size bits). */
const dsr1_grammar_vocab *dsr1_grammar_get_vocab(const dsr1_grammar *g);
void dsr1_grammar_free(dsr1_grammar *g);

/* ---- one request ---- */

typedef struct dsr1_matcher dsr1_matcher;

/* The grammar must outlive the matcher. */
dsr1_status dsr1_matcher_create(const dsr1_grammar *g, dsr1_matcher **out);
void dsr1_matcher_free(dsr1_matcher *m);

/* Words of a token mask: (vocab + 31) / 32; bit (id % 32) of word (id / 32) set = allowed. */
static inline size_t dsr1_grammar_mask_words(int32_t vocab)
{
    return ((size_t)vocab + 31) / 32;
}

/* The tokens allowed next: every token whose bytes continue a valid prefix of the language,
 * plus eos_id when the text so far is a complete sentence. Never empty while the matcher
 * has not ended. */
void dsr1_matcher_mask(dsr1_matcher *m, uint32_t *mask);
/* The work of this matcher's masks so far: vocabulary-trie and suffix-trie nodes visited
 * (cache misses' trie walks, uncertain tokens' checks), summed. Deterministic for a given
 * order of grammars and tokens (the caches shared through the vocabulary fill in that
 * order), unlike time: benchmarks report it per mask beside the time. */
uint64_t dsr1_matcher_mask_work(const dsr1_matcher *m);
/* Consumes a token. A token the mask would not allow is DSR1_ERR_INVALID_ARG and leaves the
 * matcher unchanged. After eos_id the matcher has ended (dsr1_matcher_ended). */
dsr1_status dsr1_matcher_advance(dsr1_matcher *m, int32_t token);
/* Consumes raw bytes instead of a token (text forced into the output, tests); text only:
 * a special token is consumed by dsr1_matcher_advance. */
dsr1_status dsr1_matcher_advance_bytes(dsr1_matcher *m, const uint8_t *bytes, size_t n);
/* Whether the text so far is a complete sentence (eos allowed), and whether eos was taken. */
bool dsr1_matcher_accepting(const dsr1_matcher *m);
bool dsr1_matcher_ended(const dsr1_matcher *m);
/* The bytes that every continuation must begin with (e.g. `{"name":"` after `{` in a
 * schema with one required first property), up to max bytes; they stop before a special
 * token. Returns the byte count. The scheduler does not use them: its jump-forward appends,
 * without sampling, only a token that the mask alone allows (a mask of one token), so the
 * tokens are exactly those sampling would draw (coordinator/sched, forced_token). */
size_t dsr1_matcher_forced_bytes(dsr1_matcher *m, uint8_t *out, size_t max);
/* Undo the last n advances (n <= the advances kept, at least 16). */
dsr1_status dsr1_matcher_rollback(dsr1_matcher *m, int n);

#endif
