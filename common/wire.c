/* Encoding and strict decoding of the control messages (see wire.h). The hosts this runs on
 * are little-endian (x86-64, aarch64); the encoders write native order and a big-endian
 * build refuses to compile rather than speak a different protocol. */
#include "wire.h"

#include <stdlib.h>
#include <string.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the wire protocol is little-endian"
#endif

static void put_header(unsigned char *p, uint16_t type, uint64_t step, uint32_t body)
{
    uint32_t magic = DSR1_WIRE_MAGIC, zero = 0;
    uint16_t ver = DSR1_WIRE_VERSION;
    memcpy(p, &magic, 4);
    memcpy(p + 4, &ver, 2);
    memcpy(p + 6, &type, 2);
    memcpy(p + 8, &step, 8);
    memcpy(p + 16, &body, 4);
    memcpy(p + 20, &zero, 4);
}

dsr1_status dsr1_wire_header_decode(const void *msg, size_t len, dsr1_wire_header *out)
{
    const unsigned char *p = msg;
    if (len < DSR1_WIRE_HEADER)
        return dsr1_error(DSR1_ERR_FORMAT, "message of %zu bytes is shorter than its header", len);
    uint32_t magic, body, reserved;
    uint16_t ver, type;
    memcpy(&magic, p, 4);
    memcpy(&ver, p + 4, 2);
    memcpy(&type, p + 6, 2);
    memcpy(&out->step, p + 8, 8);
    memcpy(&body, p + 16, 4);
    memcpy(&reserved, p + 20, 4);
    if (magic != DSR1_WIRE_MAGIC)
        return dsr1_error(DSR1_ERR_FORMAT, "message does not start with the DSR1 magic");
    if (ver != DSR1_WIRE_VERSION)
        return dsr1_error(DSR1_ERR_UNSUPPORTED, "peer speaks protocol version %u, this build %u",
                          ver, DSR1_WIRE_VERSION);
    if (type < DSR1_MSG_STEP || type > DSR1_MSG_SHUTDOWN || reserved != 0)
        return dsr1_error(DSR1_ERR_FORMAT, "unknown message type %u", type);
    if (body != len - DSR1_WIRE_HEADER)
        return dsr1_error(DSR1_ERR_FORMAT, "message body is %zu bytes, header says %u",
                          len - DSR1_WIRE_HEADER, body);
    out->type = type;
    out->body_bytes = body;
    return DSR1_OK;
}

dsr1_status dsr1_wire_simple_encode(dsr1_msg_type type, uint64_t step, const void *body,
                                    size_t body_bytes, void **msg, size_t *len)
{
    if (body_bytes > UINT32_MAX - DSR1_WIRE_HEADER)
        return dsr1_error(DSR1_ERR_RANGE, "message body of %zu bytes too large", body_bytes);
    unsigned char *p = malloc(DSR1_WIRE_HEADER + body_bytes);
    if (!p) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    put_header(p, (uint16_t)type, step, (uint32_t)body_bytes);
    if (body_bytes) memcpy(p + DSR1_WIRE_HEADER, body, body_bytes);
    *msg = p;
    *len = DSR1_WIRE_HEADER + body_bytes;
    return DSR1_OK;
}

/* STEP body: three counts, the sequence records, the token ids, the block ids */
#define STEP_COUNTS 12

static size_t step_body_bytes(int64_t n_seqs, int64_t n_tokens, int64_t n_block_ids)
{
    return STEP_COUNTS + sizeof(dsr1_wire_seq) * (size_t)n_seqs + 4 * (size_t)n_tokens +
           4 * (size_t)n_block_ids;
}

dsr1_status dsr1_wire_step_encode(uint64_t step, int n_seqs, const dsr1_wire_seq *seqs,
                                  const int32_t *tokens, const int32_t *blocks, void **msg,
                                  size_t *len)
{
    if (n_seqs < 0 || n_seqs > DSR1_WIRE_MAX_SEQS)
        return dsr1_error(DSR1_ERR_RANGE, "step of %d sequences", n_seqs);
    int64_t nt = 0, nb = 0;
    for (int i = 0; i < n_seqs; i++) {
        if (seqs[i].n_blocks < 0)
            return dsr1_error(DSR1_ERR_RANGE, "sequence %d: block table of %d blocks", i,
                              seqs[i].n_blocks);
        nt += seqs[i].n_tokens;
        nb += seqs[i].n_blocks;
    }
    if (nt > DSR1_WIRE_MAX_TOKENS || nb > DSR1_WIRE_MAX_BLOCKS)
        return dsr1_error(DSR1_ERR_RANGE, "step of %lld tokens and %lld cache blocks",
                          (long long)nt, (long long)nb);
    const size_t body = step_body_bytes(n_seqs, nt, nb);
    unsigned char *p = malloc(DSR1_WIRE_HEADER + body), *o = p + DSR1_WIRE_HEADER;
    if (!p) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    put_header(p, DSR1_MSG_STEP, step, (uint32_t)body);
    const int32_t counts[3] = {n_seqs, (int32_t)nt, (int32_t)nb};
    memcpy(o, counts, STEP_COUNTS);
    o += STEP_COUNTS;
    if (n_seqs) memcpy(o, seqs, sizeof(dsr1_wire_seq) * (size_t)n_seqs);
    o += sizeof(dsr1_wire_seq) * (size_t)n_seqs;
    if (nt) memcpy(o, tokens, 4 * (size_t)nt);
    if (nb) memcpy(o + 4 * (size_t)nt, blocks, 4 * (size_t)nb);
    *msg = p;
    *len = DSR1_WIRE_HEADER + body;
    return DSR1_OK;
}

dsr1_status dsr1_wire_step_decode(const void *msg, size_t len, uint64_t *step, dsr1_wire_step *plan)
{
    dsr1_wire_header h;
    dsr1_status st = dsr1_wire_header_decode(msg, len, &h);
    if (st != DSR1_OK) return st;
    if (h.type != DSR1_MSG_STEP)
        return dsr1_error(DSR1_ERR_FORMAT, "expected a STEP message, got type %u", h.type);
    const unsigned char *b = (const unsigned char *)msg + DSR1_WIRE_HEADER;
    if (h.body_bytes < STEP_COUNTS)
        return dsr1_error(DSR1_ERR_FORMAT, "STEP body of %u bytes is truncated", h.body_bytes);
    int32_t counts[3];
    memcpy(counts, b, STEP_COUNTS);
    if (counts[0] < 0 || counts[0] > DSR1_WIRE_MAX_SEQS || counts[1] < 0 ||
        counts[1] > DSR1_WIRE_MAX_TOKENS || counts[2] < 0 || counts[2] > DSR1_WIRE_MAX_BLOCKS)
        return dsr1_error(DSR1_ERR_FORMAT,
                          "STEP with %d sequences, %d tokens and %d cache blocks is out of bounds",
                          counts[0], counts[1], counts[2]);
    const size_t want = step_body_bytes(counts[0], counts[1], counts[2]);
    if (want != h.body_bytes)
        return dsr1_error(DSR1_ERR_FORMAT,
                          "STEP body is %u bytes; %d sequences, %d tokens and %d cache blocks "
                          "need %zu",
                          h.body_bytes, counts[0], counts[1], counts[2], want);
    const dsr1_wire_seq *s = (const dsr1_wire_seq *)(b + STEP_COUNTS);
    int64_t sum = 0, blocks = 0;
    for (int i = 0; i < counts[0]; i++) {
        if (s[i].n_tokens < 1 || s[i].pos < 0 || s[i].slot < 0 || s[i].logits < 0 ||
            s[i].logits > 2 || s[i].n_blocks < 0)
            return dsr1_error(DSR1_ERR_FORMAT,
                              "STEP sequence %d is malformed (slot %d, pos %d, %d tokens, logits "
                              "%d, %d cache blocks)",
                              i, s[i].slot, s[i].pos, s[i].n_tokens, s[i].logits, s[i].n_blocks);
        sum += s[i].n_tokens;
        blocks += s[i].n_blocks;
    }
    if (sum != counts[1] || blocks != counts[2])
        return dsr1_error(DSR1_ERR_FORMAT,
                          "STEP sequences hold %lld tokens and %lld cache blocks, header says %d "
                          "and %d",
                          (long long)sum, (long long)blocks, counts[1], counts[2]);
    const int32_t *tokens =
        (const int32_t *)(b + STEP_COUNTS + sizeof(dsr1_wire_seq) * (size_t)counts[0]);
    *step = h.step;
    *plan = (dsr1_wire_step){counts[0], counts[1], counts[2], s, tokens, tokens + counts[1]};
    return DSR1_OK;
}

dsr1_status dsr1_wire_logits_alloc(uint64_t step, int rows, int vocab, void **msg, size_t *len,
                                   float **data)
{
    if (rows < 0 || vocab < 1 || (uint64_t)rows * (uint64_t)vocab > (UINT32_MAX - 64) / 4)
        return dsr1_error(DSR1_ERR_RANGE, "LOGITS of %d x %d floats", rows, vocab);
    const size_t body = 8 + sizeof(float) * (size_t)rows * (size_t)vocab;
    unsigned char *p = malloc(DSR1_WIRE_HEADER + body);
    if (!p) return dsr1_error(DSR1_ERR_NOMEM, "out of memory for %d logit rows", rows);
    put_header(p, DSR1_MSG_LOGITS, step, (uint32_t)body);
    int32_t c[2] = {rows, vocab};
    memcpy(p + DSR1_WIRE_HEADER, c, 8);
    *msg = p;
    *len = DSR1_WIRE_HEADER + body;
    *data = (float *)(p + DSR1_WIRE_HEADER + 8);
    return DSR1_OK;
}

dsr1_status dsr1_wire_logits_decode(const void *msg, size_t len, int *rows, int *vocab,
                                    const float **data)
{
    dsr1_wire_header h;
    dsr1_status st = dsr1_wire_header_decode(msg, len, &h);
    if (st != DSR1_OK) return st;
    if (h.type != DSR1_MSG_LOGITS || h.body_bytes < 8)
        return dsr1_error(DSR1_ERR_FORMAT, "expected a LOGITS message");
    int32_t c[2];
    memcpy(c, (const unsigned char *)msg + DSR1_WIRE_HEADER, 8);
    if (c[0] < 0 || c[1] < 1 || (uint64_t)c[0] * (uint64_t)c[1] * 4 + 8 != h.body_bytes)
        return dsr1_error(DSR1_ERR_FORMAT, "LOGITS of %d x %d floats in a %u-byte body", c[0], c[1],
                          h.body_bytes);
    *rows = c[0];
    *vocab = c[1];
    *data = (const float *)((const unsigned char *)msg + DSR1_WIRE_HEADER + 8);
    return DSR1_OK;
}

dsr1_status dsr1_wire_error_decode(const void *msg, size_t len, int *status, int *rank, char *text,
                                   size_t cap)
{
    dsr1_wire_header h;
    dsr1_status st = dsr1_wire_header_decode(msg, len, &h);
    if (st != DSR1_OK) return st;
    if (h.type != DSR1_MSG_ERROR || h.body_bytes < 8 || cap == 0)
        return dsr1_error(DSR1_ERR_FORMAT, "expected an ERROR message");
    int32_t c[2];
    const unsigned char *b = (const unsigned char *)msg + DSR1_WIRE_HEADER;
    memcpy(c, b, 8);
    size_t n = h.body_bytes - 8 < cap - 1 ? h.body_bytes - 8 : cap - 1;
    memcpy(text, b + 8, n);
    text[n] = 0;
    *status = c[0] < 0 && c[0] >= DSR1_ERR_INTERNAL ? c[0] : DSR1_ERR_INTERNAL;
    *rank = c[1];
    return DSR1_OK;
}
