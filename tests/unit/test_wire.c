/* The coordinator-worker control messages: round trips of every message type, and every
 * malformed form rejected with an error — truncations at every length, a wrong magic,
 * another protocol version, an unknown type, a body size that disagrees with the header,
 * counts out of bounds, sequences whose tokens, block tables, sample records, logit biases
 * or histories do not add up (truncated or oversize), bad sequence and sample record fields,
 * RESULT messages with bad counts, tokens, alternatives or trailing bytes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "wire.h"

/* Three sequences: one in slot mode (no block table), two with tables of 3 and 2 blocks; the
 * first and the last with sample requests (the first with two logit biases and a history of
 * 5 ids, 3 of them the prompt; the last scoring a known next token, with prompt logprobs). */
static const dsr1_wire_seq seqs3[3] = {{0, 0, 4, 2, 0, 1}, {1, 7, 1, 1, 3, 0}, {5, 3, 2, 2, 2, 1}};
static const dsr1_wire_sample samples2[2] = {{0.7f,
                                              0.9f,
                                              0.05f,
                                              0.5f,
                                              -0.25f,
                                              1.2f,
                                              40,
                                              3,
                                              {7, 1},
                                              {9, 0},
                                              DSR1_WIRE_LOGPROBS,
                                              0,
                                              2,
                                              3,
                                              5,
                                              3},
                                             {1,
                                              1,
                                              0,
                                              0,
                                              0,
                                              1,
                                              0,
                                              2,
                                              {0, 0},
                                              {0, 0},
                                              DSR1_WIRE_PROMPT_LOGPROBS | DSR1_WIRE_NEXT,
                                              77,
                                              0,
                                              0,
                                              0,
                                              0}};

/* Offsets in the message of step_msg: the counts, the sequence records, the sample records. */
#define COUNTS  DSR1_WIRE_HEADER
#define SEQ(i)  (COUNTS + 28 + (i) * sizeof(dsr1_wire_seq))
#define SMP(i)  (SEQ(3) + 4 * (7 + 5) + (i) * sizeof(dsr1_wire_sample))
#define SMP_END SMP(2)

typedef struct {
    int32_t tok[7], blk[5], bias_ids[2], hist[5];
    float bias_values[2];
    uint32_t mask[3]; /* the first sample record's token mask */
} plan_data;

static dsr1_wire_step plan3(plan_data *d)
{
    for (int i = 0; i < 7; i++) d->tok[i] = 1000 + rand() % 5000;
    for (int i = 0; i < 5; i++) d->blk[i] = rand() % 100;
    for (int i = 0; i < 5; i++) d->hist[i] = rand() % 5000;
    for (int i = 0; i < 3; i++) d->mask[i] = (uint32_t)rand() * 2654435761u;
    for (int i = 0; i < 2; i++) {
        d->bias_ids[i] = rand() % 5000;
        d->bias_values[i] = (float)(rand() % 200) - 100;
    }
    return (dsr1_wire_step){3,
                            7,
                            5,
                            2,
                            2,
                            5,
                            3,
                            seqs3,
                            d->tok,
                            d->blk,
                            samples2,
                            d->bias_ids,
                            d->bias_values,
                            d->hist,
                            d->mask};
}

static void *step_msg(size_t *len)
{
    plan_data d;
    const dsr1_wire_step p = plan3(&d);
    void *msg;
    assert_int_equal(dsr1_wire_step_encode(42, &p, &msg, len), DSR1_OK);
    return msg;
}

static void test_step_round_trip(void **state)
{
    (void)state;
    srand(5);
    plan_data d;
    const dsr1_wire_step in = plan3(&d);
    void *msg;
    size_t len;
    assert_int_equal(dsr1_wire_step_encode(42, &in, &msg, &len), DSR1_OK);
    uint64_t step;
    dsr1_wire_step p;
    assert_int_equal(dsr1_wire_step_decode(msg, len, &step, &p), DSR1_OK);
    assert_int_equal(step, 42);
    assert_int_equal(p.n_seqs, 3);
    assert_int_equal(p.n_tokens, 7);
    assert_int_equal(p.n_block_ids, 5);
    assert_int_equal(p.n_samples, 2);
    assert_int_equal(p.n_bias, 2);
    assert_int_equal(p.n_history, 5);
    assert_int_equal(p.n_mask_words, 3);
    assert_memory_equal(p.seqs, seqs3, sizeof(seqs3));
    assert_memory_equal(p.tokens, d.tok, sizeof(d.tok));
    assert_memory_equal(p.blocks, d.blk, sizeof(d.blk));
    assert_memory_equal(p.samples, samples2, sizeof(samples2));
    assert_memory_equal(p.bias_ids, d.bias_ids, sizeof(d.bias_ids));
    assert_memory_equal(p.bias_values, d.bias_values, sizeof(d.bias_values));
    assert_memory_equal(p.history, d.hist, sizeof(d.hist));
    assert_memory_equal(p.masks, d.mask, sizeof(d.mask));
    assert_int_equal(len, SMP_END + 4 * (2 + 2 + 5 + 3));
    /* every truncation (of every section), and one byte too many, is refused */
    for (size_t cut = 0; cut < len; cut++)
        assert_int_not_equal(dsr1_wire_step_decode(msg, cut, &step, &p), DSR1_OK);
    unsigned char *big = malloc(len + 1);
    memcpy(big, msg, len);
    big[len] = 0;
    assert_int_equal(dsr1_wire_step_decode(big, len + 1, &step, &p), DSR1_ERR_FORMAT);
    free(big);
    free(msg);
    /* no block tables nor samples at all: nothing beyond the tokens needed */
    const dsr1_wire_seq plain = {3, 2, 7, 1, 0, 0};
    const dsr1_wire_step one = {1, 7, .seqs = &plain, .tokens = d.tok};
    assert_int_equal(dsr1_wire_step_encode(43, &one, &msg, &len), DSR1_OK);
    assert_int_equal(dsr1_wire_step_decode(msg, len, &step, &p), DSR1_OK);
    assert_int_equal(p.n_block_ids + p.n_samples + p.n_bias + p.n_history + p.n_mask_words, 0);
    assert_memory_equal(p.seqs, &plain, sizeof(plain));
    free(msg);
}

/* Overwrite 4 bytes at `off` of a fresh STEP message and expect `want`. */
static void corrupt(size_t off, uint32_t v, dsr1_status want, const char *needle)
{
    size_t len;
    unsigned char *m = step_msg(&len);
    memcpy(m + off, &v, 4);
    uint64_t step;
    dsr1_wire_step p;
    assert_int_equal(dsr1_wire_step_decode(m, len, &step, &p), want);
    if (!strstr(dsr1_errmsg(), needle)) fail_msg("'%s' does not say '%s'", dsr1_errmsg(), needle);
    free(m);
}

static void test_step_malformed(void **state)
{
    (void)state;
    srand(6);
    const size_t flags = offsetof(dsr1_wire_sample, flags);
    const size_t n_bias = offsetof(dsr1_wire_sample, n_bias);
    const size_t n_prompt = offsetof(dsr1_wire_sample, n_prompt);
    const size_t n_history = offsetof(dsr1_wire_sample, n_history);
    const size_t mask_words = offsetof(dsr1_wire_sample, mask_words);
    corrupt(0, 0x12345678, DSR1_ERR_FORMAT, "magic");
    corrupt(4, 9 | (1u << 16), DSR1_ERR_UNSUPPORTED, "version 9"); /* version 9, type STEP */
    corrupt(4, 2 | (1u << 16), DSR1_ERR_UNSUPPORTED, "version 2"); /* before sample records */
    corrupt(4, DSR1_WIRE_VERSION | (99u << 16), DSR1_ERR_FORMAT, "unknown message type 99");
    corrupt(16, 3, DSR1_ERR_FORMAT, "header says 3");                /* body size */
    corrupt(20, 1, DSR1_ERR_FORMAT, "unknown message type");         /* reserved word */
    corrupt(COUNTS, (uint32_t)-1, DSR1_ERR_FORMAT, "out of bounds"); /* n_seqs */
    corrupt(COUNTS, 70000, DSR1_ERR_FORMAT, "out of bounds");
    corrupt(COUNTS, 2, DSR1_ERR_FORMAT, "need"); /* counts vs body size */
    corrupt(COUNTS + 4, 8, DSR1_ERR_FORMAT, "need");
    corrupt(COUNTS + 8, (uint32_t)-1, DSR1_ERR_FORMAT, "out of bounds"); /* n_block_ids */
    corrupt(COUNTS + 8, DSR1_WIRE_MAX_BLOCKS + 1, DSR1_ERR_FORMAT, "out of bounds");
    corrupt(COUNTS + 8, 6, DSR1_ERR_FORMAT, "need");                      /* a table cut short */
    corrupt(COUNTS + 12, 4, DSR1_ERR_FORMAT, "out of bounds");            /* samples > seqs */
    corrupt(COUNTS + 12, (uint32_t)-1, DSR1_ERR_FORMAT, "out of bounds"); /* n_samples */
    corrupt(COUNTS + 12, 3, DSR1_ERR_FORMAT, "need");
    corrupt(COUNTS + 16, DSR1_WIRE_MAX_BIAS + 1, DSR1_ERR_FORMAT, "out of bounds");
    corrupt(COUNTS + 16, 1, DSR1_ERR_FORMAT, "need");
    corrupt(COUNTS + 20, (uint32_t)-3, DSR1_ERR_FORMAT, "out of bounds"); /* n_history */
    corrupt(COUNTS + 20, DSR1_WIRE_MAX_HISTORY + 1, DSR1_ERR_FORMAT, "out of bounds");
    corrupt(COUNTS + 20, 7, DSR1_ERR_FORMAT, "need");
    corrupt(COUNTS + 24, (uint32_t)-1, DSR1_ERR_FORMAT, "out of bounds"); /* n_mask_words */
    corrupt(COUNTS + 24, DSR1_WIRE_MAX_MASK + 1, DSR1_ERR_FORMAT, "out of bounds");
    corrupt(COUNTS + 24, 4, DSR1_ERR_FORMAT, "need");
    corrupt(SEQ(0) + 8, 0, DSR1_ERR_FORMAT, "malformed");             /* seq 0: n_tokens 0 */
    corrupt(SEQ(0) + 4, (uint32_t)-5, DSR1_ERR_FORMAT, "malformed");  /* seq 0: pos < 0 */
    corrupt(SEQ(0) + 12, 7, DSR1_ERR_FORMAT, "malformed");            /* logits mode */
    corrupt(SEQ(0) + 16, (uint32_t)-1, DSR1_ERR_FORMAT, "malformed"); /* n_blocks < 0 */
    corrupt(SEQ(0) + 20, 2, DSR1_ERR_FORMAT, "malformed");            /* sample flag */
    corrupt(SEQ(1) + 8, 2, DSR1_ERR_FORMAT, "header says");           /* tokens 8 != 7 */
    corrupt(SEQ(1) + 16, 4, DSR1_ERR_FORMAT, "header says");          /* blocks 6 != 5 */
    corrupt(SEQ(1) + 16, 1 << 30, DSR1_ERR_FORMAT, "header says");    /* oversize table */
    corrupt(SEQ(1) + 20, 1, DSR1_ERR_FORMAT, "3 samples, 2 sample records");
    corrupt(SEQ(2) + 20, 0, DSR1_ERR_FORMAT, "1 samples, 2 sample records");
    corrupt(SMP(0) + flags, 8, DSR1_ERR_FORMAT, "sample record 0 is malformed");
    corrupt(SMP(1) + n_bias, (uint32_t)-1, DSR1_ERR_FORMAT, "sample record 1 is malformed");
    corrupt(SMP(0) + n_prompt, 6, DSR1_ERR_FORMAT, "malformed"); /* prompt > history */
    corrupt(SMP(0) + n_prompt, (uint32_t)-1, DSR1_ERR_FORMAT, "malformed");
    corrupt(SMP(0) + n_bias, 1, DSR1_ERR_FORMAT, "header says");       /* biases 1 != 2 */
    corrupt(SMP(1) + n_bias, 1 << 30, DSR1_ERR_FORMAT, "header says"); /* oversize */
    corrupt(SMP(1) + n_history, 2, DSR1_ERR_FORMAT, "header says");    /* history 7 != 5 */
    corrupt(SMP(0) + n_history, 1u << 31, DSR1_ERR_FORMAT, "malformed");
    corrupt(SMP(0) + mask_words, (uint32_t)-3, DSR1_ERR_FORMAT, "malformed");
    corrupt(SMP(1) + mask_words, 2, DSR1_ERR_FORMAT, "header says"); /* mask words 5 != 3 */

    /* the encoder refuses what the decoder would */
    srand(7);
    plan_data d;
    dsr1_wire_step p = plan3(&d);
    dsr1_wire_seq bad[3];
    dsr1_wire_sample badr[2];
    memcpy(bad, seqs3, sizeof(bad));
    memcpy(badr, samples2, sizeof(badr));
    p.seqs = bad;
    p.samples = badr;
    void *msg;
    size_t len;
    bad[1].n_blocks = -1;
    assert_int_equal(dsr1_wire_step_encode(1, &p, &msg, &len), DSR1_ERR_RANGE);
    bad[1].n_blocks = DSR1_WIRE_MAX_BLOCKS + 1;
    assert_int_equal(dsr1_wire_step_encode(1, &p, &msg, &len), DSR1_ERR_RANGE);
    bad[1].n_blocks = 3;
    bad[1].sample = 1;
    assert_int_equal(dsr1_wire_step_encode(1, &p, &msg, &len), DSR1_ERR_RANGE);
    bad[1].sample = 0;
    badr[0].n_history = 4;
    assert_int_equal(dsr1_wire_step_encode(1, &p, &msg, &len), DSR1_ERR_RANGE);
    badr[0].n_history = 5;
    p.n_bias = -1;
    assert_int_equal(dsr1_wire_step_encode(1, &p, &msg, &len), DSR1_ERR_RANGE);
    p.n_bias = 2;
    assert_int_equal(dsr1_wire_step_encode(1, &p, &msg, &len), DSR1_OK);
    free(msg);
}

/* Two samples (one with 3 alternatives, one that failed) and three row logprobs after two
 * logit rows of 11 floats. */
static void *result_msg(size_t *len, dsr1_sample_result *res, float *rows)
{
    for (int i = 0; i < 5; i++) {
        res[i] = (dsr1_sample_result){.token = rand() % 11, .logprob = -(float)i / 3};
        res[i].n_top = i == 0 ? 3 : i == 2 ? 20 : 0;
        for (int j = 0; j < res[i].n_top; j++)
            res[i].top[j] = (dsr1_logprob){rand() % 11, -(float)j};
    }
    res[1].token = DSR1_SAMPLE_FAILED;
    void *msg;
    float *lg;
    assert_int_equal(dsr1_wire_result_alloc(7, 2, 11, 2, 3, &msg, &lg), DSR1_OK);
    for (int i = 0; i < 22; i++) lg[i] = rows[i] = (float)i * 0.5f - 3;
    dsr1_wire_result_seal(msg, res, res + 2, len);
    return msg;
}

/* Overwrite 4 bytes at `off` of a fresh RESULT message and expect a refusal saying needle. */
static void corrupt_result(size_t off, uint32_t v, const char *needle)
{
    dsr1_sample_result res[5];
    float rows[22];
    size_t len;
    unsigned char *m = result_msg(&len, res, rows);
    memcpy(m + off, &v, 4);
    dsr1_wire_result r;
    assert_int_equal(dsr1_wire_result_decode(m, len, &r), DSR1_ERR_FORMAT);
    if (!strstr(dsr1_errmsg(), needle)) fail_msg("'%s' does not say '%s'", dsr1_errmsg(), needle);
    free(m);
}

static void test_result(void **state)
{
    (void)state;
    srand(8);
    dsr1_sample_result res[5], got;
    float rows[22];
    size_t len;
    void *msg = result_msg(&len, res, rows);
    /* results carry only their alternatives: 12 bytes each plus 8 per alternative */
    assert_int_equal(len, DSR1_WIRE_HEADER + 16 + 22 * 4 + 5 * 12 + 23 * 8);
    dsr1_wire_result r;
    assert_int_equal(dsr1_wire_result_decode(msg, len, &r), DSR1_OK);
    assert_int_equal(r.rows, 2);
    assert_int_equal(r.vocab, 11);
    assert_int_equal(r.n_samples, 2);
    assert_int_equal(r.n_row_logprobs, 3);
    assert_memory_equal(r.logits, rows, sizeof(rows));
    for (int i = 0; i < 5; i++) {
        assert_int_equal(dsr1_wire_result_next(&r, &got), DSR1_OK);
        assert_int_equal(got.token, res[i].token);
        assert_true(got.logprob == res[i].logprob);
        assert_int_equal(got.n_top, res[i].n_top);
        assert_memory_equal(got.top, res[i].top, sizeof(dsr1_logprob) * (size_t)got.n_top);
    }
    assert_int_equal(dsr1_wire_result_next(&r, &got), DSR1_ERR_FORMAT);
    for (size_t cut = 0; cut < len; cut++)
        assert_int_not_equal(dsr1_wire_result_decode(msg, cut, &r), DSR1_OK);
    unsigned char *big = malloc(len + 4);
    memcpy(big, msg, len);
    const uint32_t body = (uint32_t)(len + 4 - DSR1_WIRE_HEADER);
    memcpy(big + 16, &body, 4);
    assert_int_equal(dsr1_wire_result_decode(big, len + 4, &r), DSR1_ERR_FORMAT);
    assert_non_null(strstr(dsr1_errmsg(), "after its last result"));
    free(big);
    uint64_t step;
    dsr1_wire_step p;
    assert_int_equal(dsr1_wire_step_decode(msg, len, &step, &p), DSR1_ERR_FORMAT);
    free(msg);

    const size_t first = DSR1_WIRE_HEADER + 16 + 22 * 4; /* the first result */
    corrupt_result(DSR1_WIRE_HEADER, 3, "RESULT");       /* rows: the results shift */
    corrupt_result(DSR1_WIRE_HEADER, (uint32_t)-1, "RESULT of -1");
    corrupt_result(DSR1_WIRE_HEADER + 4, 0, "RESULT of 2 x 0"); /* vocab */
    corrupt_result(DSR1_WIRE_HEADER + 4, 1 << 30, "-byte body");
    corrupt_result(DSR1_WIRE_HEADER + 8, 3, "truncated");                /* samples */
    corrupt_result(DSR1_WIRE_HEADER + 12, (uint32_t)-2, "row logprobs"); /* row logprobs */
    corrupt_result(DSR1_WIRE_HEADER + 12, 2, "after its last result");   /* one fewer */
    corrupt_result(first, 11, "token 11 is outside");                    /* token */
    corrupt_result(first, (uint32_t)-2, "token -2 is outside");
    corrupt_result(first + 8, 21, "21 alternatives"); /* n_top */
    corrupt_result(first + 8, (uint32_t)-1, "-1 alternatives");
    corrupt_result(first + 8, 200, "200 alternatives");
    corrupt_result(first + 12 + 8, 11, "alternative 1 is token 11"); /* an alternative */
    assert_int_equal(dsr1_wire_result_alloc(1, -1, 11, 0, 0, &msg, (float **)&big), DSR1_ERR_RANGE);
    assert_int_equal(dsr1_wire_result_alloc(1, 1 << 20, 1 << 12, 0, 0, &msg, (float **)&big),
                     DSR1_ERR_RANGE);
}

static void test_other_messages(void **state)
{
    (void)state;
    void *msg;
    size_t len;
    unsigned char body[8 + 5];
    int32_t h[2] = {DSR1_ERR_RANGE, 3};
    memcpy(body, h, 8);
    memcpy(body + 8, "oops!", 5);
    assert_int_equal(dsr1_wire_simple_encode(DSR1_MSG_ERROR, 9, body, sizeof(body), &msg, &len),
                     DSR1_OK);
    int status, rank;
    char text[4];
    assert_int_equal(dsr1_wire_error_decode(msg, len, &status, &rank, text, sizeof(text)), DSR1_OK);
    assert_int_equal(status, DSR1_ERR_RANGE);
    assert_int_equal(rank, 3);
    assert_string_equal(text, "oop"); /* truncated to the caller's buffer, terminated */
    free(msg);
    h[0] = 12345; /* not a status: reported as internal, never trusted */
    memcpy(body, h, 8);
    assert_int_equal(dsr1_wire_simple_encode(DSR1_MSG_ERROR, 9, body, sizeof(body), &msg, &len),
                     DSR1_OK);
    assert_int_equal(dsr1_wire_error_decode(msg, len, &status, &rank, text, sizeof(text)), DSR1_OK);
    assert_int_equal(status, DSR1_ERR_INTERNAL);
    free(msg);

    assert_int_equal(dsr1_wire_simple_encode(DSR1_MSG_SHUTDOWN, 1, NULL, 0, &msg, &len), DSR1_OK);
    dsr1_wire_header hd;
    assert_int_equal(dsr1_wire_header_decode(msg, len, &hd), DSR1_OK);
    assert_int_equal(hd.type, DSR1_MSG_SHUTDOWN);
    assert_int_equal(hd.body_bytes, 0);
    free(msg);
}

/* Membership messages: REGROUP, ADDR/CONNECT, JOIN, WELCOME round trip, and every cut or
 * corrupted length is refused. */
static void test_membership(void **state)
{
    (void)state;
    void *msg;
    size_t len;
    const int32_t live[5] = {1, 0, 1, 1, 1};
    dsr1_wire_regroup rg = {7, 1234, 5, live}, rd;
    assert_int_equal(dsr1_wire_regroup_encode(&rg, &msg, &len), DSR1_OK);
    assert_int_equal(dsr1_wire_regroup_decode(msg, len, &rd), DSR1_OK);
    assert_int_equal(rd.epoch, 7);
    assert_int_equal(rd.first_step, 1234);
    assert_int_equal(rd.n_workers, 5);
    assert_memory_equal(rd.live, live, sizeof(live));
    for (size_t cut = DSR1_WIRE_HEADER; cut < len; cut++)
        assert_int_not_equal(dsr1_wire_regroup_decode(msg, cut, &rd), DSR1_OK);
    ((int32_t *)((char *)msg + DSR1_WIRE_HEADER + 8))[1] = 2; /* a flag that is not 0/1 */
    assert_int_equal(dsr1_wire_regroup_decode(msg, len, &rd), DSR1_ERR_FORMAT);
    free(msg);

    const char ep0[] = "ep-address-0", w0[] = "world0", w2[] = "world-address-two";
    dsr1_wire_addr a[3] = {{1, sizeof(ep0), sizeof(w0), ep0, w0},
                           {2, 0, 0, NULL, NULL},
                           {3, 5, sizeof(w2), "abcde", w2}},
                   b[3];
    uint32_t epoch;
    int n;
    assert_int_equal(dsr1_wire_addrs_encode(DSR1_MSG_CONNECT, 9, a, 3, &msg, &len), DSR1_OK);
    assert_int_equal(dsr1_wire_addrs_decode(msg, len, &epoch, b, 3, &n), DSR1_OK);
    assert_int_equal(epoch, 9);
    assert_int_equal(n, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(b[i].rank, a[i].rank);
        assert_int_equal(b[i].len, a[i].len);
        assert_int_equal(b[i].world_len, a[i].world_len);
        if (a[i].len) assert_memory_equal(b[i].addr, a[i].addr, (size_t)a[i].len);
        if (a[i].world_len) assert_memory_equal(b[i].world_addr, a[i].world_addr, (size_t)a[i].world_len);
    }
    assert_int_equal(dsr1_wire_addrs_decode(msg, len, &epoch, b, 2, &n), DSR1_ERR_FORMAT);
    for (size_t cut = DSR1_WIRE_HEADER; cut < len; cut++)
        assert_int_not_equal(dsr1_wire_addrs_decode(msg, cut, &epoch, b, 3, &n), DSR1_OK);
    free(msg);

    dsr1_wire_join j = {0x1122334455667788ull, 42, 1, 3, 1, "host-a", sizeof(w2), w2}, jd;
    assert_int_equal(dsr1_wire_join_encode(&j, &msg, &len), DSR1_OK);
    assert_int_equal(dsr1_wire_join_decode(msg, len, &jd), DSR1_OK);
    assert_true(jd.config_hash == j.config_hash && jd.seed == 42 && jd.dummy == 1 && jd.want == 3 &&
                jd.ready == 1 && jd.len == (int32_t)sizeof(w2));
    assert_string_equal(jd.host, "host-a");
    assert_memory_equal(jd.addr, w2, sizeof(w2));
    for (size_t cut = DSR1_WIRE_HEADER; cut < len; cut++)
        assert_int_not_equal(dsr1_wire_join_decode(msg, cut, &jd), DSR1_OK);
    free(msg);
    j.len = 0; /* ready without an address */
    assert_int_equal(dsr1_wire_join_encode(&j, &msg, &len), DSR1_ERR_RANGE);

    const int32_t owners[6] = {0, 1, 1, 0, 2, 3}, lens[3] = {sizeof(w0), 0, 5};
    const void *addrs[3] = {w0, NULL, "abcde"};
    dsr1_wire_welcome w = {2, 1, 4, 64, 3000, 100, 16, 2, 1, 1, 6, owners, lens, addrs}, wd;
    assert_int_equal(dsr1_wire_welcome_encode(&w, &msg, &len), DSR1_OK);
    assert_int_equal(dsr1_wire_welcome_decode(msg, len, &wd), DSR1_OK);
    assert_true(wd.workers == 2 && wd.pp == 1 && wd.kv_blocks == 100 && wd.replicas == 2 &&
                wd.fast == 1 && wd.index == 1 && wd.n_owners == 6);
    assert_memory_equal(wd.owners, owners, sizeof(owners));
    assert_memory_equal(wd.lens, lens, sizeof(lens));
    assert_memory_equal(wd.addrs[0], w0, sizeof(w0));
    assert_memory_equal(wd.addrs[2], "abcde", 5);
    free((void *)wd.lens);
    free((void *)wd.addrs);
    for (size_t cut = DSR1_WIRE_HEADER; cut < len; cut++)
        assert_int_not_equal(dsr1_wire_welcome_decode(msg, cut, &wd), DSR1_OK);
    ((int32_t *)((char *)msg + DSR1_WIRE_HEADER))[9] = 2; /* index past the workers */
    assert_int_equal(dsr1_wire_welcome_decode(msg, len, &wd), DSR1_ERR_FORMAT);
    free(msg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_step_round_trip),
        cmocka_unit_test(test_step_malformed),
        cmocka_unit_test(test_result),
        cmocka_unit_test(test_other_messages),
        cmocka_unit_test(test_membership),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
