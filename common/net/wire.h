/* Control messages between the coordinator and the workers: fixed schema, versioned,
 * little-endian, bounds-checked on decode. Never trusted: a truncated, oversized or
 * inconsistent message is rejected with a clear error.
 *
 * Every message starts with a 24-byte header:
 *   u32 magic "DSR1" | u16 version | u16 type | u64 step id | u32 body bytes | u32 reserved (0)
 * Bodies (every field 4 bytes; arrays sequence after sequence):
 *   STEP      i32 n_seqs, n_tokens, n_block_ids, n_samples, n_bias, n_history, n_mask_words,
 *             then
 *             n_seqs x dsr1_wire_seq, n_tokens x i32 token ids, n_block_ids x i32 cache block
 *             ids (a sequence with n_blocks 0 has no block table: it uses its cache slot),
 *             n_samples x dsr1_wire_sample (one per sequence with `sample` set: the last
 *             stage samples it), n_bias x i32 logit_bias ids, n_bias x f32 their values,
 *             n_history x i32 history ids (only for requests with a penalty on), n_mask_words x u32
 *             token masks (each sample record's mask_words: a grammar's allowed tokens)
 *   RESULT    i32 rows, vocab, n_samples, n_row_logprobs, then rows x vocab f32 logits (the
 *             sequences without a sample request), then n_samples + n_row_logprobs results,
 *             each i32 token, f32 logprob, i32 n_top (0..20), n_top x {i32 id, f32 logprob}
 *   ERROR     i32 status, i32 rank, then a UTF-8 message (no NUL). rank is the world rank at
 *             fault: the sender itself, or, with status DSR1_ERR_LOST, the peer whose loss
 *             failed the sender's step (-1: not known)
 *   SHUTDOWN  empty
 *   PING      empty: the coordinator is there (while the grid waits for workers to join)
 * Membership (a new epoch of the grid; see coordinator/grid/grid.c):
 *   REGROUP   coordinator -> each live worker; step id = the epoch's first step (STEPs with
 *             a smaller id are from an earlier epoch and are dropped):
 *             u32 epoch, i32 n_workers, n_workers x i32 live (0/1)
 *   ADDR      worker -> coordinator: the address of its new EP-group endpoint and of its
 *             world endpoint
 *   CONNECT   coordinator -> each live worker: everyone's addresses
 *             both: u32 epoch, i32 n, n x {i32 world rank, i32 len, i32 world_len}, then
 *             each entry's EP address (empty for a worker without an EP group) and world
 *             address (empty where not known), each padded to 4 bytes
 * Joining (over the TCP rendezvous, common/net/rendezvous.h, not the world group):
 *   JOIN      worker -> coordinator: u64 config hash, u64 seed, i32 dummy, i32 index wanted
 *             (-1: any), i32 ready, 64 bytes host name (NUL-padded), i32 len, its world
 *             address (ready 0: asking for a place, no address; 1: loaded, reachable)
 *   WELCOME   coordinator -> worker: i32 workers, pp, n_slots, max_tokens, timeout_ms,
 *             kv_blocks, block_tokens, replicas, fast, index given, n_owners, then n_owners x i32
 *             expert placement (placement.h), then workers + 1 x {i32 len, world address
 *             padded to 4} (the coordinator's first; len 0: a worker not reachable) */
#ifndef DSR1_WIRE_H
#define DSR1_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "model_config.h"
#include "sampling.h"
#include "status.h"

#define DSR1_WIRE_MAGIC       0x31525344u /* "DSR1" little-endian */
#define DSR1_WIRE_VERSION     5
#define DSR1_WIRE_HEADER      24
#define DSR1_WIRE_MAX_SEQS    65536
#define DSR1_WIRE_MAX_TOKENS  (1 << 24)
#define DSR1_WIRE_MAX_BLOCKS  (1 << 24) /* block ids in one STEP */
#define DSR1_WIRE_MAX_BIAS    (1 << 24) /* logit_bias entries in one STEP */
#define DSR1_WIRE_MAX_HISTORY (1 << 26) /* history ids in one STEP */
#define DSR1_WIRE_MAX_MASK    (1 << 24) /* token mask words in one STEP (64 MiB) */

typedef enum {
    DSR1_MSG_STEP = 1,
    DSR1_MSG_RESULT = 2,
    DSR1_MSG_ERROR = 3,
    DSR1_MSG_SHUTDOWN = 4,
    DSR1_MSG_REGROUP = 5,
    DSR1_MSG_ADDR = 6,
    DSR1_MSG_CONNECT = 7,
    DSR1_MSG_JOIN = 8,
    DSR1_MSG_WELCOME = 9,
    DSR1_MSG_PING = 10,
} dsr1_msg_type;

#define DSR1_WIRE_MAX_WORKERS 65536
#define DSR1_WIRE_MAX_ADDR    (1 << 16) /* bytes of one endpoint address */

typedef struct {
    int32_t slot, pos, n_tokens, logits, n_blocks;
    int32_t sample; /* 1: a sample record follows in the sample section; 0: none */
} dsr1_wire_seq;

/* dsr1_wire_sample.flags */
enum {
    DSR1_WIRE_LOGPROBS = 1,        /* dsr1_seq_sample.logprobs */
    DSR1_WIRE_PROMPT_LOGPROBS = 2, /* dsr1_seq_sample.prompt_logprobs */
    DSR1_WIRE_NEXT = 4,            /* dsr1_seq_sample.next is set: next_token */
};

/* A sequence's sample request (worker/forward.h: dsr1_seq_sample) as sent to the last stage. */
typedef struct {
    float temperature, top_p, min_p, presence_penalty, frequency_penalty, repetition_penalty;
    int32_t top_k, top_logprobs;
    uint32_t seed[2], step[2]; /* 64-bit values as two words, low first */
    int32_t flags, next_token;
    int32_t n_bias;              /* its entries in the bias section */
    int32_t n_prompt, n_history; /* its ids in the history section, the prompt's first */
    int32_t mask_words;          /* its token mask in the mask section; 0: none */
} dsr1_wire_sample;

/* A STEP plan. Decoded: the arrays point into the message. To encode: the counts must be
 * what the records add up to; an array may be NULL when its count is 0. */
typedef struct {
    int n_seqs, n_tokens, n_block_ids, n_samples, n_bias, n_history, n_mask_words;
    const dsr1_wire_seq *seqs;
    const int32_t *tokens; /* each sequence's n_tokens, in order */
    const int32_t *blocks; /* each sequence's n_blocks, in order */
    const dsr1_wire_sample *samples;
    const int32_t *bias_ids; /* each sample record's n_bias, in order */
    const float *bias_values;
    const int32_t *history; /* each sample record's n_history, in order */
    const uint32_t *masks;  /* each sample record's mask_words, in order */
} dsr1_wire_step;

typedef struct {
    uint16_t type;
    uint64_t step;
    uint32_t body_bytes;
} dsr1_wire_header;

/* Check magic, version, a known type, and that the body fits: len is the bytes received. */
dsr1_status dsr1_wire_header_decode(const void *msg, size_t len, dsr1_wire_header *out);

/* Encoders return a malloc'ed message and its size. The plan is checked as the decoder
 * checks it (DSR1_ERR_RANGE). */
dsr1_status dsr1_wire_step_encode(uint64_t step, const dsr1_wire_step *plan, void **msg,
                                  size_t *len);
/* On success the plan's arrays point into msg (aligned: the header and records are
 * multiples of 4 bytes); counts are checked against the body size and the limits, each
 * sequence's n_tokens >= 1, pos, slot and n_blocks >= 0, a known logits mode, each sample
 * record's flags known, n_bias >= 0, 0 <= n_prompt <= n_history, mask_words >= 0, and the sums
 * equal to the counts. Block ids, token ids and sampling values are checked by the engine. */
dsr1_status dsr1_wire_step_decode(const void *msg, size_t len, uint64_t *step,
                                  dsr1_wire_step *plan);
dsr1_status dsr1_wire_simple_encode(dsr1_msg_type type, uint64_t step, const void *body,
                                    size_t body_bytes, void **msg, size_t *len);

/* A RESULT message is built in two calls so that the logit rows are written in place:
 * alloc reserves room for rows x vocab floats (the caller fills them at *logits) and for the
 * results; seal writes the n_samples and n_row_logprobs results given to alloc (n_top
 * alternatives each) after the rows and gives the message's final size. */
dsr1_status dsr1_wire_result_alloc(uint64_t step, int rows, int vocab, int n_samples,
                                   int n_row_logprobs, void **msg, float **logits);
void dsr1_wire_result_seal(void *msg, const dsr1_sample_result *samples,
                           const dsr1_sample_result *row_logprobs, size_t *len);

/* A decoded RESULT: the rows point into the message, the results are read in order (the
 * samples, then the row logprobs) with dsr1_wire_result_next. */
typedef struct {
    int rows, vocab, n_samples, n_row_logprobs;
    const float *logits;
    const unsigned char *next; /* the next result to read */
    int left;                  /* results not read yet */
} dsr1_wire_result;

/* Checks the whole message: counts, every result (n_top in [0, 20], token in [-1, vocab)
 * (-1: DSR1_SAMPLE_FAILED), alternative ids in [0, vocab)) and the body size. */
dsr1_status dsr1_wire_result_decode(const void *msg, size_t len, dsr1_wire_result *out);
/* The next result of a decoded message; DSR1_ERR_FORMAT when none is left. */
dsr1_status dsr1_wire_result_next(dsr1_wire_result *r, dsr1_sample_result *out);
/* REGROUP: the live workers of a new epoch. Decoded, live points into the message. */
typedef struct {
    uint32_t epoch;
    uint64_t first_step;
    int n_workers;
    const int32_t *live; /* [n_workers]: 1 live, 0 lost */
} dsr1_wire_regroup;

dsr1_status dsr1_wire_regroup_encode(const dsr1_wire_regroup *r, void **msg, size_t *len);
/* Checks n_workers in [1, DSR1_WIRE_MAX_WORKERS], every flag 0 or 1, and the size. */
dsr1_status dsr1_wire_regroup_decode(const void *msg, size_t len, dsr1_wire_regroup *out);

/* One worker's EP-group endpoint address (ADDR, CONNECT; len 0: none) and world address
 * (world_len 0: not sent). Decoded, the addresses point into the message. */
typedef struct {
    int32_t rank;
    int32_t len, world_len;
    const void *addr, *world_addr;
} dsr1_wire_addr;

/* type is DSR1_MSG_ADDR or DSR1_MSG_CONNECT. */
dsr1_status dsr1_wire_addrs_encode(dsr1_msg_type type, uint32_t epoch, const dsr1_wire_addr *a,
                                   int n, void **msg, size_t *len);
/* Checks the type, n in [0, cap], lengths in [0, DSR1_WIRE_MAX_ADDR] and the size. */
dsr1_status dsr1_wire_addrs_decode(const void *msg, size_t len, uint32_t *epoch,
                                   dsr1_wire_addr *a, int cap, int *n);

/* JOIN: a worker asking for a place in a running grid. */
typedef struct {
    uint64_t config_hash, seed;
    int32_t dummy, want; /* want: the worker index asked for, -1: any lost one */
    int32_t ready;       /* 0: asking for a place; 1: loaded, at `addr` */
    char host[64];       /* NUL-terminated */
    int32_t len;
    const void *addr; /* its world endpoint's address (ready only) */
} dsr1_wire_join;

/* WELCOME: its place. Decoded, the arrays point into the message. */
typedef struct {
    int32_t workers, pp, n_slots, max_tokens, timeout_ms, kv_blocks, block_tokens, replicas;
    int32_t fast; /* 1: the fast precision mode, 0: exact */
    int32_t index, n_owners;
    const int32_t *owners;
    const int32_t *lens;      /* [workers + 1] world address lengths (0: none) */
    const void *const *addrs; /* [workers + 1] */
} dsr1_wire_welcome;

dsr1_status dsr1_wire_join_encode(const dsr1_wire_join *j, void **msg, size_t *len);
dsr1_status dsr1_wire_join_decode(const void *msg, size_t len, dsr1_wire_join *out);
dsr1_status dsr1_wire_welcome_encode(const dsr1_wire_welcome *w, void **msg, size_t *len);
/* Checks the counts and sizes; on success out->lens and out->addrs are malloc'ed arrays
 * of workers + 1 entries (the addresses point into msg): free both. */
dsr1_status dsr1_wire_welcome_decode(const void *msg, size_t len, dsr1_wire_welcome *out);

/* FNV-1a over every field of the config, by value (independent of struct layout), and over
 * an expert placement table: a worker and its coordinator must agree on both. */
uint64_t dsr1_config_hash(const dsr1_model_config *cfg);
uint64_t dsr1_placement_hash(const int *owner, int n_experts);

dsr1_status dsr1_wire_error_decode(const void *msg, size_t len, int *status, int *rank, char *text,
                                   size_t cap);

#endif
