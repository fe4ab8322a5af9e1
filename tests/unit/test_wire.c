/* The coordinator-worker control messages: round trips of every message type, and every
 * malformed form rejected with an error — truncations at every length, a wrong magic,
 * another protocol version, an unknown type, a body size that disagrees with the header,
 * counts out of bounds, sequences whose tokens or block tables do not add up (truncated or
 * oversize tables), bad sequence fields. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "wire.h"

/* Three sequences: one in slot mode (no block table), two with tables of 3 and 2 blocks. */
static const dsr1_wire_seq seqs3[3] = {{0, 0, 4, 2, 0}, {1, 7, 1, 1, 3}, {5, 3, 2, 0, 2}};

static void *step_msg(size_t *len)
{
    int32_t tok[7], blk[5];
    for (int i = 0; i < 7; i++) tok[i] = 1000 + rand() % 5000;
    for (int i = 0; i < 5; i++) blk[i] = rand() % 100;
    void *msg;
    assert_int_equal(dsr1_wire_step_encode(42, 3, seqs3, tok, blk, &msg, len), DSR1_OK);
    return msg;
}

static void test_step_round_trip(void **state)
{
    (void)state;
    srand(5);
    int32_t tok[7], blk[5];
    for (int i = 0; i < 7; i++) tok[i] = rand();
    for (int i = 0; i < 5; i++) blk[i] = rand();
    void *msg;
    size_t len;
    assert_int_equal(dsr1_wire_step_encode(42, 3, seqs3, tok, blk, &msg, &len), DSR1_OK);
    uint64_t step;
    dsr1_wire_step p;
    assert_int_equal(dsr1_wire_step_decode(msg, len, &step, &p), DSR1_OK);
    assert_int_equal(step, 42);
    assert_int_equal(p.n_seqs, 3);
    assert_int_equal(p.n_tokens, 7);
    assert_int_equal(p.n_block_ids, 5);
    assert_memory_equal(p.seqs, seqs3, sizeof(seqs3));
    assert_memory_equal(p.tokens, tok, sizeof(tok));
    assert_memory_equal(p.blocks, blk, sizeof(blk));
    /* every truncation (of the block table too), and one byte too many, is refused */
    for (size_t cut = 0; cut < len; cut++)
        assert_int_not_equal(dsr1_wire_step_decode(msg, cut, &step, &p), DSR1_OK);
    unsigned char *big = malloc(len + 1);
    memcpy(big, msg, len);
    big[len] = 0;
    assert_int_equal(dsr1_wire_step_decode(big, len + 1, &step, &p), DSR1_ERR_FORMAT);
    free(big);
    free(msg);
    /* no block tables at all: no block ids needed */
    const dsr1_wire_seq plain = {3, 2, 7, 1, 0};
    assert_int_equal(dsr1_wire_step_encode(43, 1, &plain, tok, NULL, &msg, &len), DSR1_OK);
    assert_int_equal(dsr1_wire_step_decode(msg, len, &step, &p), DSR1_OK);
    assert_int_equal(p.n_block_ids, 0);
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
    assert_non_null(strstr(dsr1_errmsg(), needle));
    free(m);
}

static void test_step_malformed(void **state)
{
    (void)state;
    srand(6);
    const size_t s0 = 36, s1 = s0 + sizeof(dsr1_wire_seq); /* sequence records */
    corrupt(0, 0x12345678, DSR1_ERR_FORMAT, "magic");
    corrupt(4, 3 | (1u << 16), DSR1_ERR_UNSUPPORTED, "version 3"); /* version 3, type STEP */
    corrupt(4, DSR1_WIRE_VERSION | (9u << 16), DSR1_ERR_FORMAT, "unknown message type 9");
    corrupt(16, 3, DSR1_ERR_FORMAT, "header says 3");            /* body size */
    corrupt(20, 1, DSR1_ERR_FORMAT, "unknown message type");     /* reserved word */
    corrupt(24, (uint32_t)-1, DSR1_ERR_FORMAT, "out of bounds"); /* n_seqs */
    corrupt(24, 70000, DSR1_ERR_FORMAT, "out of bounds");
    corrupt(24, 2, DSR1_ERR_FORMAT, "need"); /* counts vs body size */
    corrupt(28, 8, DSR1_ERR_FORMAT, "need");
    corrupt(32, (uint32_t)-1, DSR1_ERR_FORMAT, "out of bounds"); /* n_block_ids */
    corrupt(32, DSR1_WIRE_MAX_BLOCKS + 1, DSR1_ERR_FORMAT, "out of bounds");
    corrupt(32, 6, DSR1_ERR_FORMAT, "need");                      /* a table cut short */
    corrupt(s0 + 8, 0, DSR1_ERR_FORMAT, "malformed");             /* seq 0: n_tokens 0 */
    corrupt(s0 + 4, (uint32_t)-5, DSR1_ERR_FORMAT, "malformed");  /* seq 0: pos < 0 */
    corrupt(s0 + 12, 7, DSR1_ERR_FORMAT, "malformed");            /* logits mode */
    corrupt(s0 + 16, (uint32_t)-1, DSR1_ERR_FORMAT, "malformed"); /* n_blocks < 0 */
    corrupt(s1 + 8, 2, DSR1_ERR_FORMAT, "header says");           /* tokens 8 != 7 */
    corrupt(s1 + 16, 4, DSR1_ERR_FORMAT, "header says");          /* blocks 6 != 5 */
    corrupt(s1 + 16, 1 << 30, DSR1_ERR_FORMAT, "header says");    /* oversize table */

    /* the encoder refuses what the decoder would */
    dsr1_wire_seq bad = {0, 0, 1, 1, -1};
    int32_t tok = 1;
    void *msg;
    size_t len;
    assert_int_equal(dsr1_wire_step_encode(1, 1, &bad, &tok, NULL, &msg, &len), DSR1_ERR_RANGE);
    bad.n_blocks = DSR1_WIRE_MAX_BLOCKS + 1;
    assert_int_equal(dsr1_wire_step_encode(1, 1, &bad, &tok, NULL, &msg, &len), DSR1_ERR_RANGE);
}

static void test_other_messages(void **state)
{
    (void)state;
    void *msg;
    size_t len;
    float *data;
    assert_int_equal(dsr1_wire_logits_alloc(7, 3, 11, &msg, &len, &data), DSR1_OK);
    for (int i = 0; i < 33; i++) data[i] = (float)i * 0.5f - 3;
    int rows, vocab;
    const float *got;
    assert_int_equal(dsr1_wire_logits_decode(msg, len, &rows, &vocab, &got), DSR1_OK);
    assert_int_equal(rows, 3);
    assert_int_equal(vocab, 11);
    assert_memory_equal(got, data, 33 * sizeof(float));
    for (size_t cut = 0; cut < len; cut++)
        assert_int_not_equal(dsr1_wire_logits_decode(msg, cut, &rows, &vocab, &got), DSR1_OK);
    uint64_t step;
    dsr1_wire_step p;
    assert_int_equal(dsr1_wire_step_decode(msg, len, &step, &p), DSR1_ERR_FORMAT);
    int32_t twelve = 12; /* rows x vocab no longer matches the body */
    memcpy((unsigned char *)msg + DSR1_WIRE_HEADER + 4, &twelve, 4);
    assert_int_equal(dsr1_wire_logits_decode(msg, len, &rows, &vocab, &got), DSR1_ERR_FORMAT);
    free(msg);

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_step_round_trip),
        cmocka_unit_test(test_step_malformed),
        cmocka_unit_test(test_other_messages),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
