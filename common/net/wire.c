/* Encoding and strict decoding of the control messages (see wire.h). The hosts this runs on
 * are little-endian (x86-64, aarch64); the encoders write native order and a big-endian
 * build refuses to compile rather than speak a different protocol. */
#include "wire.h"

#include <stdbool.h>
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
    if (type < DSR1_MSG_STEP || type > DSR1_MSG_PING || reserved != 0)
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

/* STEP body: seven counts, then the sections in the order of dsr1_wire_step */
#define STEP_COUNTS 28

static size_t step_body_bytes(const dsr1_wire_step *p)
{
    return STEP_COUNTS + sizeof(dsr1_wire_seq) * (size_t)p->n_seqs + 4 * (size_t)p->n_tokens +
           4 * (size_t)p->n_block_ids + sizeof(dsr1_wire_sample) * (size_t)p->n_samples +
           8 * (size_t)p->n_bias + 4 * (size_t)p->n_history + 4 * (size_t)p->n_mask_words;
}

/* The counts within the limits (so that the body size cannot overflow). */
static dsr1_status check_counts(const dsr1_wire_step *p, dsr1_status bad)
{
    if (p->n_seqs < 0 || p->n_seqs > DSR1_WIRE_MAX_SEQS || p->n_tokens < 0 ||
        p->n_tokens > DSR1_WIRE_MAX_TOKENS || p->n_block_ids < 0 ||
        p->n_block_ids > DSR1_WIRE_MAX_BLOCKS || p->n_samples < 0 || p->n_samples > p->n_seqs ||
        p->n_bias < 0 || p->n_bias > DSR1_WIRE_MAX_BIAS || p->n_history < 0 ||
        p->n_history > DSR1_WIRE_MAX_HISTORY || p->n_mask_words < 0 ||
        p->n_mask_words > DSR1_WIRE_MAX_MASK)
        return dsr1_error(bad,
                          "STEP with %d sequences, %d tokens, %d cache blocks, %d sample records, "
                          "%d logit biases, %d history ids and %d mask words is out of bounds",
                          p->n_seqs, p->n_tokens, p->n_block_ids, p->n_samples, p->n_bias,
                          p->n_history, p->n_mask_words);
    return DSR1_OK;
}

/* Every record well formed, and the records adding up to the counts. */
static dsr1_status check_records(const dsr1_wire_step *p, dsr1_status bad)
{
    int64_t tokens = 0, blocks = 0, samples = 0, bias = 0, history = 0, mask = 0;
    for (int i = 0; i < p->n_seqs; i++) {
        const dsr1_wire_seq *s = &p->seqs[i];
        if (s->n_tokens < 1 || s->pos < 0 || s->slot < 0 || s->logits < 0 || s->logits > 2 ||
            s->n_blocks < 0 || s->sample < 0 || s->sample > 1)
            return dsr1_error(bad,
                              "STEP sequence %d is malformed (slot %d, pos %d, %d tokens, logits "
                              "%d, %d cache blocks, sample %d)",
                              i, s->slot, s->pos, s->n_tokens, s->logits, s->n_blocks, s->sample);
        tokens += s->n_tokens;
        blocks += s->n_blocks;
        samples += s->sample;
    }
    if (samples != p->n_samples)
        return dsr1_error(bad, "STEP sequences ask for %lld samples, %d sample records follow",
                          (long long)samples, p->n_samples);
    const int known = DSR1_WIRE_LOGPROBS | DSR1_WIRE_PROMPT_LOGPROBS | DSR1_WIRE_NEXT;
    for (int i = 0; i < p->n_samples; i++) {
        const dsr1_wire_sample *r = &p->samples[i];
        if ((r->flags & ~known) || r->n_bias < 0 || r->n_prompt < 0 || r->n_history < r->n_prompt ||
            r->mask_words < 0)
            return dsr1_error(bad,
                              "STEP sample record %d is malformed (flags %#x, %d logit biases, "
                              "history of %d ids with %d of the prompt, %d mask words)",
                              i, (unsigned)r->flags, r->n_bias, r->n_history, r->n_prompt,
                              r->mask_words);
        bias += r->n_bias;
        history += r->n_history;
        mask += r->mask_words;
    }
    if (tokens != p->n_tokens || blocks != p->n_block_ids || bias != p->n_bias ||
        history != p->n_history || mask != p->n_mask_words)
        return dsr1_error(bad,
                          "STEP records hold %lld tokens, %lld cache blocks, %lld logit biases, "
                          "%lld history ids and %lld mask words, header says %d, %d, %d, %d and "
                          "%d",
                          (long long)tokens, (long long)blocks, (long long)bias, (long long)history,
                          (long long)mask, p->n_tokens, p->n_block_ids, p->n_bias, p->n_history,
                          p->n_mask_words);
    return DSR1_OK;
}

/* Appends n bytes of src (may be NULL when n is 0) at *o. */
static void put(unsigned char **o, const void *src, size_t n)
{
    if (n) memcpy(*o, src, n);
    *o += n;
}

dsr1_status dsr1_wire_step_encode(uint64_t step, const dsr1_wire_step *plan, void **msg,
                                  size_t *len)
{
    dsr1_status st = check_counts(plan, DSR1_ERR_RANGE);
    if (st == DSR1_OK) st = check_records(plan, DSR1_ERR_RANGE);
    if (st != DSR1_OK) return st;
    const size_t body = step_body_bytes(plan);
    unsigned char *p = malloc(DSR1_WIRE_HEADER + body), *o = p + DSR1_WIRE_HEADER;
    if (!p) return dsr1_error(DSR1_ERR_NOMEM, "out of memory for a STEP of %zu bytes", body);
    put_header(p, DSR1_MSG_STEP, step, (uint32_t)body);
    const int32_t counts[7] = {plan->n_seqs, plan->n_tokens,  plan->n_block_ids, plan->n_samples,
                               plan->n_bias, plan->n_history, plan->n_mask_words};
    put(&o, counts, STEP_COUNTS);
    put(&o, plan->seqs, sizeof(dsr1_wire_seq) * (size_t)plan->n_seqs);
    put(&o, plan->tokens, 4 * (size_t)plan->n_tokens);
    put(&o, plan->blocks, 4 * (size_t)plan->n_block_ids);
    put(&o, plan->samples, sizeof(dsr1_wire_sample) * (size_t)plan->n_samples);
    put(&o, plan->bias_ids, 4 * (size_t)plan->n_bias);
    put(&o, plan->bias_values, 4 * (size_t)plan->n_bias);
    put(&o, plan->history, 4 * (size_t)plan->n_history);
    put(&o, plan->masks, 4 * (size_t)plan->n_mask_words);
    *msg = p;
    *len = DSR1_WIRE_HEADER + body;
    return DSR1_OK;
}

/* Points *at at n bytes of the body at *o and moves *o past them. */
static const void *take(const unsigned char **o, size_t n)
{
    const void *at = *o;
    *o += n;
    return at;
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
    int32_t c[7];
    memcpy(c, b, STEP_COUNTS);
    dsr1_wire_step p = {c[0], c[1], c[2], c[3], c[4], c[5], c[6]};
    if ((st = check_counts(&p, DSR1_ERR_FORMAT)) != DSR1_OK) return st;
    const size_t want = step_body_bytes(&p);
    if (want != h.body_bytes)
        return dsr1_error(DSR1_ERR_FORMAT,
                          "STEP body is %u bytes; %d sequences, %d tokens, %d cache blocks, %d "
                          "sample records, %d logit biases, %d history ids and %d mask words "
                          "need %zu",
                          h.body_bytes, p.n_seqs, p.n_tokens, p.n_block_ids, p.n_samples, p.n_bias,
                          p.n_history, p.n_mask_words, want);
    const unsigned char *o = b + STEP_COUNTS;
    p.seqs = take(&o, sizeof(dsr1_wire_seq) * (size_t)p.n_seqs);
    p.tokens = take(&o, 4 * (size_t)p.n_tokens);
    p.blocks = take(&o, 4 * (size_t)p.n_block_ids);
    p.samples = take(&o, sizeof(dsr1_wire_sample) * (size_t)p.n_samples);
    p.bias_ids = take(&o, 4 * (size_t)p.n_bias);
    p.bias_values = take(&o, 4 * (size_t)p.n_bias);
    p.history = take(&o, 4 * (size_t)p.n_history);
    p.masks = take(&o, 4 * (size_t)p.n_mask_words);
    if ((st = check_records(&p, DSR1_ERR_FORMAT)) != DSR1_OK) return st;
    *step = h.step;
    *plan = p;
    return DSR1_OK;
}

/* RESULT body: four counts, the logit rows, the results */
#define RESULT_COUNTS 16
#define RESULT_FIXED  12 /* token, logprob, n_top */

dsr1_status dsr1_wire_result_alloc(uint64_t step, int rows, int vocab, int n_samples,
                                   int n_row_logprobs, void **msg, float **logits)
{
    /* the largest result has every alternative; seal writes what the results hold */
    const uint64_t per_result = RESULT_FIXED + sizeof(dsr1_logprob) * DSR1_MAX_TOP_LOGPROBS;
    const bool ok = rows >= 0 && vocab >= 1 && n_samples >= 0 && n_row_logprobs >= 0;
    const uint64_t most = !ok ? 0
                              : RESULT_COUNTS + 4 * (uint64_t)rows * (uint64_t)vocab +
                                    ((uint64_t)n_samples + (uint64_t)n_row_logprobs) * per_result;
    if (!ok || most > UINT32_MAX - DSR1_WIRE_HEADER)
        return dsr1_error(DSR1_ERR_RANGE, "RESULT of %d x %d floats, %d samples, %d row logprobs",
                          rows, vocab, n_samples, n_row_logprobs);
    unsigned char *p = malloc(DSR1_WIRE_HEADER + (size_t)most);
    if (!p) return dsr1_error(DSR1_ERR_NOMEM, "out of memory for %d logit rows", rows);
    put_header(p, DSR1_MSG_RESULT, step, (uint32_t)most);
    const int32_t c[4] = {rows, vocab, n_samples, n_row_logprobs};
    memcpy(p + DSR1_WIRE_HEADER, c, RESULT_COUNTS);
    *msg = p;
    *logits = (float *)(p + DSR1_WIRE_HEADER + RESULT_COUNTS);
    return DSR1_OK;
}

static void put_result(unsigned char **o, const dsr1_sample_result *r)
{
    const int32_t n_top = r->n_top;
    put(o, &r->token, 4);
    put(o, &r->logprob, 4);
    put(o, &n_top, 4);
    put(o, r->top, sizeof(dsr1_logprob) * (size_t)n_top);
}

void dsr1_wire_result_seal(void *msg, const dsr1_sample_result *samples,
                           const dsr1_sample_result *row_logprobs, size_t *len)
{
    unsigned char *p = msg;
    int32_t c[4];
    memcpy(c, p + DSR1_WIRE_HEADER, RESULT_COUNTS);
    unsigned char *o = p + DSR1_WIRE_HEADER + RESULT_COUNTS + 4 * (size_t)c[0] * (size_t)c[1];
    for (int i = 0; i < c[2]; i++) put_result(&o, &samples[i]);
    for (int i = 0; i < c[3]; i++) put_result(&o, &row_logprobs[i]);
    const uint32_t body = (uint32_t)(o - p - DSR1_WIRE_HEADER);
    memcpy(p + 16, &body, 4); /* the header's body size */
    *len = DSR1_WIRE_HEADER + body;
}

/* Reads one result at *o, which has `left` bytes after it, checked against the vocabulary,
 * and moves *o past it. */
static dsr1_status get_result(const unsigned char **o, size_t left, int vocab,
                              dsr1_sample_result *r)
{
    int32_t n_top;
    if (left < RESULT_FIXED) return dsr1_error(DSR1_ERR_FORMAT, "RESULT is truncated");
    memcpy(&r->token, *o, 4);
    memcpy(&r->logprob, *o + 4, 4);
    memcpy(&n_top, *o + 8, 4);
    if (n_top < 0 || n_top > DSR1_MAX_TOP_LOGPROBS ||
        left - RESULT_FIXED < sizeof(dsr1_logprob) * (size_t)n_top)
        return dsr1_error(DSR1_ERR_FORMAT, "RESULT entry with %d alternatives in %zu bytes", n_top,
                          left);
    r->n_top = n_top;
    memcpy(r->top, *o + RESULT_FIXED, sizeof(dsr1_logprob) * (size_t)n_top);
    *o += RESULT_FIXED + sizeof(dsr1_logprob) * (size_t)n_top;
    if (r->token < DSR1_SAMPLE_FAILED || r->token >= vocab)
        return dsr1_error(DSR1_ERR_FORMAT, "RESULT token %d is outside the vocabulary [0, %d)",
                          r->token, vocab);
    for (int j = 0; j < n_top; j++)
        if (r->top[j].token_id < 0 || r->top[j].token_id >= vocab)
            return dsr1_error(DSR1_ERR_FORMAT,
                              "RESULT alternative %d is token %d, outside the vocabulary [0, %d)",
                              j, r->top[j].token_id, vocab);
    return DSR1_OK;
}

dsr1_status dsr1_wire_result_decode(const void *msg, size_t len, dsr1_wire_result *out)
{
    dsr1_wire_header h;
    dsr1_status st = dsr1_wire_header_decode(msg, len, &h);
    if (st != DSR1_OK) return st;
    if (h.type != DSR1_MSG_RESULT || h.body_bytes < RESULT_COUNTS)
        return dsr1_error(DSR1_ERR_FORMAT, "expected a RESULT message");
    const unsigned char *b = (const unsigned char *)msg + DSR1_WIRE_HEADER;
    int32_t c[4];
    memcpy(c, b, RESULT_COUNTS);
    if (c[0] < 0 || c[1] < 1 || c[2] < 0 || c[3] < 0 ||
        (uint64_t)c[0] * (uint64_t)c[1] * 4 + RESULT_COUNTS > h.body_bytes)
        return dsr1_error(DSR1_ERR_FORMAT,
                          "RESULT of %d x %d floats, %d samples and %d row logprobs in a %u-byte "
                          "body",
                          c[0], c[1], c[2], c[3], h.body_bytes);
    dsr1_wire_result r = {c[0], c[1], c[2], c[3], (const float *)(b + RESULT_COUNTS)};
    r.next = b + RESULT_COUNTS + 4 * (size_t)c[0] * (size_t)c[1];
    r.left = c[2] + c[3];
    const unsigned char *o = r.next, *end = b + h.body_bytes;
    for (int64_t i = 0; i < (int64_t)c[2] + c[3]; i++) {
        dsr1_sample_result one;
        if ((st = get_result(&o, (size_t)(end - o), c[1], &one)) != DSR1_OK) return st;
    }
    if (o != end)
        return dsr1_error(DSR1_ERR_FORMAT, "RESULT has %zu bytes after its last result",
                          (size_t)(end - o));
    *out = r;
    return DSR1_OK;
}

dsr1_status dsr1_wire_result_next(dsr1_wire_result *r, dsr1_sample_result *out)
{
    if (r->left <= 0) return dsr1_error(DSR1_ERR_FORMAT, "RESULT has no more results");
    r->left--;
    /* checked by dsr1_wire_result_decode: it cannot fail or run past the message */
    return get_result(&r->next, SIZE_MAX, r->vocab, out);
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
    *status = c[0] < 0 && c[0] >= DSR1_ERR_LOST ? c[0] : DSR1_ERR_INTERNAL;
    *rank = c[1];
    return DSR1_OK;
}

dsr1_status dsr1_wire_regroup_encode(const dsr1_wire_regroup *r, void **msg, size_t *len)
{
    if (r->n_workers < 1 || r->n_workers > DSR1_WIRE_MAX_WORKERS)
        return dsr1_error(DSR1_ERR_RANGE, "REGROUP of %d workers", r->n_workers);
    const size_t body = 8 + 4 * (size_t)r->n_workers;
    unsigned char *b = malloc(body);
    if (!b) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    int32_t n = r->n_workers;
    memcpy(b, &r->epoch, 4);
    memcpy(b + 4, &n, 4);
    memcpy(b + 8, r->live, 4 * (size_t)n);
    dsr1_status st = dsr1_wire_simple_encode(DSR1_MSG_REGROUP, r->first_step, b, body, msg, len);
    free(b);
    return st;
}

dsr1_status dsr1_wire_regroup_decode(const void *msg, size_t len, dsr1_wire_regroup *out)
{
    dsr1_wire_header h;
    dsr1_status st = dsr1_wire_header_decode(msg, len, &h);
    if (st != DSR1_OK) return st;
    const unsigned char *b = (const unsigned char *)msg + DSR1_WIRE_HEADER;
    int32_t n;
    if (h.type != DSR1_MSG_REGROUP || h.body_bytes < 8)
        return dsr1_error(DSR1_ERR_FORMAT, "expected a REGROUP message");
    memcpy(&out->epoch, b, 4);
    memcpy(&n, b + 4, 4);
    if (n < 1 || n > DSR1_WIRE_MAX_WORKERS || h.body_bytes != 8 + 4 * (size_t)n)
        return dsr1_error(DSR1_ERR_FORMAT, "REGROUP of %d workers in %u bytes", n, h.body_bytes);
    out->first_step = h.step;
    out->n_workers = n;
    out->live = (const int32_t *)(b + 8);
    for (int i = 0; i < n; i++)
        if (out->live[i] != 0 && out->live[i] != 1)
            return dsr1_error(DSR1_ERR_FORMAT, "REGROUP: worker %d has live flag %d", i,
                              out->live[i]);
    return DSR1_OK;
}

static size_t pad4(size_t n)
{
    return (n + 3) & ~(size_t)3;
}

dsr1_status dsr1_wire_addrs_encode(dsr1_msg_type type, uint32_t epoch, const dsr1_wire_addr *a,
                                   int n, void **msg, size_t *len)
{
    if (n < 0 || n > DSR1_WIRE_MAX_WORKERS)
        return dsr1_error(DSR1_ERR_RANGE, "%d addresses in one message", n);
    size_t body = 8 + 12 * (size_t)n;
    for (int i = 0; i < n; i++) {
        if (a[i].len < 0 || a[i].len > DSR1_WIRE_MAX_ADDR || a[i].world_len < 0 ||
            a[i].world_len > DSR1_WIRE_MAX_ADDR)
            return dsr1_error(DSR1_ERR_RANGE, "endpoint addresses of %d and %d bytes", a[i].len,
                              a[i].world_len);
        body += pad4((size_t)a[i].len) + pad4((size_t)a[i].world_len);
    }
    unsigned char *b = calloc(1, body), *p = b;
    if (!b) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    int32_t n32 = n;
    memcpy(p, &epoch, 4);
    memcpy(p + 4, &n32, 4);
    p += 8;
    for (int i = 0; i < n; i++, p += 12) {
        memcpy(p, &a[i].rank, 4);
        memcpy(p + 4, &a[i].len, 4);
        memcpy(p + 8, &a[i].world_len, 4);
    }
    for (int i = 0; i < n; i++) {
        if (a[i].len) memcpy(p, a[i].addr, (size_t)a[i].len);
        p += pad4((size_t)a[i].len);
        if (a[i].world_len) memcpy(p, a[i].world_addr, (size_t)a[i].world_len);
        p += pad4((size_t)a[i].world_len);
    }
    dsr1_status st = dsr1_wire_simple_encode(type, epoch, b, body, msg, len);
    free(b);
    return st;
}

/* Takes a length-prefixed-elsewhere field of l bytes at b + *at (padded), checked. */
static bool take_bytes(const unsigned char *b, size_t body, size_t *at, int32_t l,
                       const void **out)
{
    if (l < 0 || l > DSR1_WIRE_MAX_ADDR || *at + pad4((size_t)l) > body) return false;
    *out = b + *at;
    *at += pad4((size_t)l);
    return true;
}

dsr1_status dsr1_wire_addrs_decode(const void *msg, size_t len, uint32_t *epoch,
                                   dsr1_wire_addr *a, int cap, int *n)
{
    dsr1_wire_header h;
    dsr1_status st = dsr1_wire_header_decode(msg, len, &h);
    if (st != DSR1_OK) return st;
    if ((h.type != DSR1_MSG_ADDR && h.type != DSR1_MSG_CONNECT) || h.body_bytes < 8)
        return dsr1_error(DSR1_ERR_FORMAT, "expected an ADDR or CONNECT message");
    const unsigned char *b = (const unsigned char *)msg + DSR1_WIRE_HEADER;
    int32_t m;
    memcpy(epoch, b, 4);
    memcpy(&m, b + 4, 4);
    if (m < 0 || m > cap || 8 + 12 * (size_t)m > h.body_bytes)
        return dsr1_error(DSR1_ERR_FORMAT, "%d addresses (room for %d) in %u bytes", m, cap,
                          h.body_bytes);
    size_t at = 8 + 12 * (size_t)m;
    for (int i = 0; i < m; i++) {
        memcpy(&a[i].rank, b + 8 + 12 * (size_t)i, 4);
        memcpy(&a[i].len, b + 12 + 12 * (size_t)i, 4);
        memcpy(&a[i].world_len, b + 16 + 12 * (size_t)i, 4);
        if (!take_bytes(b, h.body_bytes, &at, a[i].len, &a[i].addr) ||
            !take_bytes(b, h.body_bytes, &at, a[i].world_len, &a[i].world_addr))
            return dsr1_error(DSR1_ERR_FORMAT, "address %d: %d + %d bytes past the message", i,
                              a[i].len, a[i].world_len);
    }
    if (at != h.body_bytes)
        return dsr1_error(DSR1_ERR_FORMAT, "addresses end at %zu of %u bytes", at, h.body_bytes);
    *n = m;
    return DSR1_OK;
}

dsr1_status dsr1_wire_join_encode(const dsr1_wire_join *j, void **msg, size_t *len)
{
    if (j->len < 0 || j->len > DSR1_WIRE_MAX_ADDR || (j->ready && j->len < 1))
        return dsr1_error(DSR1_ERR_RANGE, "JOIN with an address of %d bytes", j->len);
    const size_t body = 28 + 64 + 4 + pad4((size_t)j->len);
    unsigned char *b = calloc(1, body);
    if (!b) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    memcpy(b, &j->config_hash, 8);
    memcpy(b + 8, &j->seed, 8);
    memcpy(b + 16, &j->dummy, 4);
    memcpy(b + 20, &j->want, 4);
    memcpy(b + 24, &j->ready, 4);
    memcpy(b + 28, j->host, strnlen(j->host, 63));
    memcpy(b + 92, &j->len, 4);
    if (j->len) memcpy(b + 96, j->addr, (size_t)j->len);
    dsr1_status st = dsr1_wire_simple_encode(DSR1_MSG_JOIN, 0, b, body, msg, len);
    free(b);
    return st;
}

dsr1_status dsr1_wire_join_decode(const void *msg, size_t len, dsr1_wire_join *out)
{
    dsr1_wire_header h;
    dsr1_status st = dsr1_wire_header_decode(msg, len, &h);
    if (st != DSR1_OK) return st;
    const unsigned char *b = (const unsigned char *)msg + DSR1_WIRE_HEADER;
    if (h.type != DSR1_MSG_JOIN || h.body_bytes < 96)
        return dsr1_error(DSR1_ERR_FORMAT, "expected a JOIN message");
    memcpy(&out->config_hash, b, 8);
    memcpy(&out->seed, b + 8, 8);
    memcpy(&out->dummy, b + 16, 4);
    memcpy(&out->want, b + 20, 4);
    memcpy(&out->ready, b + 24, 4);
    memcpy(out->host, b + 28, 64);
    out->host[63] = 0;
    memcpy(&out->len, b + 92, 4);
    size_t at = 96;
    if (!take_bytes(b, h.body_bytes, &at, out->len, &out->addr) || at != h.body_bytes ||
        (out->dummy != 0 && out->dummy != 1) || out->want < -1 ||
        (out->ready != 0 && out->ready != 1) || (out->ready && out->len < 1))
        return dsr1_error(DSR1_ERR_FORMAT,
                          "malformed JOIN (address of %d bytes, dummy %d, index %d, ready %d)",
                          out->len, out->dummy, out->want, out->ready);
    return DSR1_OK;
}

dsr1_status dsr1_wire_welcome_encode(const dsr1_wire_welcome *w, void **msg, size_t *len)
{
    if (w->workers < 1 || w->workers > DSR1_WIRE_MAX_WORKERS || w->n_owners < 0 ||
        w->n_owners > (1 << 20))
        return dsr1_error(DSR1_ERR_RANGE, "WELCOME for %d workers, %d owners", w->workers,
                          w->n_owners);
    size_t body = 44 + 4 * (size_t)w->n_owners;
    for (int i = 0; i <= w->workers; i++) {
        if (w->lens[i] < 0 || w->lens[i] > DSR1_WIRE_MAX_ADDR)
            return dsr1_error(DSR1_ERR_RANGE, "world address of %d bytes", w->lens[i]);
        body += 4 + pad4((size_t)w->lens[i]);
    }
    unsigned char *b = calloc(1, body), *p = b;
    if (!b) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    const int32_t f[11] = {w->workers,    w->pp,        w->n_slots,      w->max_tokens,
                           w->timeout_ms, w->kv_blocks, w->block_tokens, w->replicas,
                           w->fast,       w->index,     w->n_owners};
    memcpy(p, f, 44);
    p += 44;
    memcpy(p, w->owners, 4 * (size_t)w->n_owners);
    p += 4 * (size_t)w->n_owners;
    for (int i = 0; i <= w->workers; i++) {
        memcpy(p, &w->lens[i], 4);
        if (w->lens[i]) memcpy(p + 4, w->addrs[i], (size_t)w->lens[i]);
        p += 4 + pad4((size_t)w->lens[i]);
    }
    dsr1_status st = dsr1_wire_simple_encode(DSR1_MSG_WELCOME, 0, b, body, msg, len);
    free(b);
    return st;
}

dsr1_status dsr1_wire_welcome_decode(const void *msg, size_t len, dsr1_wire_welcome *out)
{
    dsr1_wire_header h;
    dsr1_status st = dsr1_wire_header_decode(msg, len, &h);
    if (st != DSR1_OK) return st;
    const unsigned char *b = (const unsigned char *)msg + DSR1_WIRE_HEADER;
    if (h.type != DSR1_MSG_WELCOME || h.body_bytes < 44)
        return dsr1_error(DSR1_ERR_FORMAT, "expected a WELCOME message");
    int32_t f[11];
    memcpy(f, b, 44);
    *out = (dsr1_wire_welcome){f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10]};
    if (out->workers < 1 || out->workers > DSR1_WIRE_MAX_WORKERS || out->n_owners < 0 ||
        out->n_owners > (1 << 20) || out->index < 0 || out->index >= out->workers ||
        (out->fast != 0 && out->fast != 1) || 44 + 4 * (size_t)out->n_owners > h.body_bytes)
        return dsr1_error(DSR1_ERR_FORMAT, "malformed WELCOME (%d workers, index %d, %d owners)",
                          out->workers, out->index, out->n_owners);
    out->owners = (const int32_t *)(b + 44);
    size_t at = 44 + 4 * (size_t)out->n_owners;
    const void **addrs = calloc((size_t)out->workers + 1, sizeof(void *));
    int32_t *lens = calloc((size_t)out->workers + 1, sizeof(int32_t));
    if (!addrs || !lens) {
        free(addrs);
        free(lens);
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i <= out->workers; i++) {
        if (at + 4 > h.body_bytes) break;
        memcpy(&lens[i], b + at, 4);
        at += 4;
        if (!take_bytes(b, h.body_bytes, &at, lens[i], &addrs[i])) {
            at = SIZE_MAX;
            break;
        }
        if (i == out->workers) at = at == h.body_bytes ? at : SIZE_MAX;
    }
    if (at != h.body_bytes) {
        free(addrs);
        free(lens);
        return dsr1_error(DSR1_ERR_FORMAT, "malformed WELCOME addresses");
    }
    out->lens = lens;
    out->addrs = addrs;
    return DSR1_OK;
}

/* ---- hashes: what both sides of the wire must agree on ----------------------------- */

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * UINT64_C(0x100000001b3);
    return h;
}
static uint64_t fnv_i(uint64_t h, int64_t v)
{
    unsigned char b[8];
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)v >> (8 * i));
    return fnv(h, b, 8);
}
static uint64_t fnv_d(uint64_t h, double v)
{
    int64_t bits;
    memcpy(&bits, &v, 8);
    return fnv_i(h, bits);
}

uint64_t dsr1_config_hash(const dsr1_model_config *c)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    const int64_t ints[] = {c->vocab_size,
                            c->hidden_size,
                            c->num_hidden_layers,
                            c->num_nextn_predict_layers,
                            c->first_k_dense_replace,
                            c->moe_layer_freq,
                            c->num_attention_heads,
                            c->q_lora_rank,
                            c->kv_lora_rank,
                            c->qk_nope_head_dim,
                            c->qk_rope_head_dim,
                            c->v_head_dim,
                            c->intermediate_size,
                            c->moe_intermediate_size,
                            c->n_routed_experts,
                            c->num_experts_per_tok,
                            c->n_group,
                            c->topk_group,
                            c->n_shared_experts,
                            c->norm_topk_prob,
                            c->max_position_embeddings,
                            c->bos_token_id,
                            c->eos_token_id,
                            c->tie_word_embeddings,
                            c->rope_type,
                            c->rope_original_max_position_embeddings,
                            c->fp8,
                            c->weight_block[0],
                            c->weight_block[1]};
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) h = fnv_i(h, ints[i]);
    const double reals[] = {c->routed_scaling_factor, c->rms_norm_eps,       c->rope_theta,
                            c->rope_factor,           c->rope_beta_fast,     c->rope_beta_slow,
                            c->rope_mscale,           c->rope_mscale_all_dim};
    for (size_t i = 0; i < sizeof(reals) / sizeof(reals[0]); i++) h = fnv_d(h, reals[i]);
    return h;
}

uint64_t dsr1_placement_hash(const int *owner, int n_experts)
{
    uint64_t h = fnv_i(UINT64_C(0xcbf29ce484222325), n_experts);
    for (int x = 0; x < n_experts; x++) h = fnv_i(h, owner[x]);
    return h;
}

