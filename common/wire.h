/* Control messages between the coordinator and the workers: fixed schema, versioned,
 * little-endian, bounds-checked on decode. Never trusted: a truncated, oversized or
 * inconsistent message is rejected with a clear error.
 *
 * Every message starts with a 24-byte header:
 *   u32 magic "DSR1" | u16 version | u16 type | u64 step id | u32 body bytes | u32 reserved (0)
 * Bodies:
 *   STEP      i32 n_seqs, i32 n_tokens, i32 n_block_ids, then n_seqs x {i32 slot, i32 pos,
 *             i32 n_tokens, i32 logits mode, i32 n_blocks}, then n_tokens x i32 token ids,
 *             then n_block_ids x i32 cache block ids (both sequence after sequence; a
 *             sequence with n_blocks 0 has no block table: it uses its cache slot)
 *   LOGITS    i32 rows, i32 vocab, then rows x vocab f32
 *   ERROR     i32 status, i32 rank, then a UTF-8 message (no NUL)
 *   SHUTDOWN  empty */
#ifndef DSR1_WIRE_H
#define DSR1_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define DSR1_WIRE_MAGIC      0x31525344u /* "DSR1" little-endian */
#define DSR1_WIRE_VERSION    2
#define DSR1_WIRE_HEADER     24
#define DSR1_WIRE_MAX_SEQS   65536
#define DSR1_WIRE_MAX_TOKENS (1 << 24)
#define DSR1_WIRE_MAX_BLOCKS (1 << 24) /* block ids in one STEP */

typedef enum {
    DSR1_MSG_STEP = 1,
    DSR1_MSG_LOGITS = 2,
    DSR1_MSG_ERROR = 3,
    DSR1_MSG_SHUTDOWN = 4,
} dsr1_msg_type;

typedef struct {
    int32_t slot, pos, n_tokens, logits, n_blocks;
} dsr1_wire_seq;

/* A decoded STEP plan; the arrays point into the message. */
typedef struct {
    int n_seqs, n_tokens, n_block_ids;
    const dsr1_wire_seq *seqs;
    const int32_t *tokens; /* each sequence's n_tokens, in order */
    const int32_t *blocks; /* each sequence's n_blocks, in order */
} dsr1_wire_step;

typedef struct {
    uint16_t type;
    uint64_t step;
    uint32_t body_bytes;
} dsr1_wire_header;

/* Check magic, version, a known type, and that the body fits: len is the bytes received. */
dsr1_status dsr1_wire_header_decode(const void *msg, size_t len, dsr1_wire_header *out);

/* Encoders return a malloc'ed message and its size. `blocks` holds every sequence's
 * n_blocks ids, sequence after sequence (may be NULL when all are 0). */
dsr1_status dsr1_wire_step_encode(uint64_t step, int n_seqs, const dsr1_wire_seq *seqs,
                                  const int32_t *tokens, const int32_t *blocks, void **msg,
                                  size_t *len);
/* On success the plan's arrays point into msg (aligned: the header and records are
 * multiples of 4 bytes); counts are checked against the body size and the limits, each
 * sequence's n_tokens >= 1 and n_blocks >= 0, and the sums equal to n_tokens and
 * n_block_ids. Block ids themselves are checked by the engine against its pool. */
dsr1_status dsr1_wire_step_decode(const void *msg, size_t len, uint64_t *step,
                                  dsr1_wire_step *plan);
dsr1_status dsr1_wire_simple_encode(dsr1_msg_type type, uint64_t step, const void *body,
                                    size_t body_bytes, void **msg, size_t *len);
/* A LOGITS message with room for rows x vocab floats, which the caller fills at *data. */
dsr1_status dsr1_wire_logits_alloc(uint64_t step, int rows, int vocab, void **msg, size_t *len,
                                   float **data);
/* LOGITS body: rows x vocab floats follow the two counts. */
dsr1_status dsr1_wire_logits_decode(const void *msg, size_t len, int *rows, int *vocab,
                                    const float **data);
dsr1_status dsr1_wire_error_decode(const void *msg, size_t len, int *status, int *rank, char *text,
                                   size_t cap);

#endif
