/* The block manager: allocation and release counts, exact prefix matching along a chain,
 * least-recently-released eviction, and no stale match after a parent block is reused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>

#include <cmocka.h>

#include "blocks.h"

enum { BT = 4 };

static void random_ids(int32_t *ids, int n)
{
    for (int i = 0; i < n; i++) ids[i] = rand() % 100000;
}

/* Allocates blocks for tokens[0..n) and commits the full ones as a sequence would. */
static int fill(dsr1_blocks *b, const int32_t *tokens, int n, int32_t *ids)
{
    const int nb = (n + BT - 1) / BT;
    for (int i = 0; i < nb; i++) {
        ids[i] = dsr1_blocks_alloc(b);
        assert_true(ids[i] >= 0);
    }
    for (int i = 0; i < n / BT; i++)
        dsr1_blocks_commit(b, ids[i], i ? ids[i - 1] : -1, tokens + i * BT);
    return nb;
}

static void release_all(dsr1_blocks *b, const int32_t *ids, int n)
{
    for (int i = 0; i < n; i++) dsr1_blocks_release(b, ids[i]);
}

static void test_counts_and_exhaustion(void **state)
{
    (void)state;
    dsr1_blocks *b;
    assert_int_equal(dsr1_blocks_create(0, BT, &b), DSR1_ERR_INVALID_ARG);
    assert_int_equal(dsr1_blocks_create(8, BT, &b), DSR1_OK);
    int32_t ids[8];
    for (int i = 0; i < 8; i++) ids[i] = dsr1_blocks_alloc(b);
    assert_int_equal(dsr1_blocks_alloc(b), -1);
    assert_int_equal(dsr1_blocks_used(b), 8);
    assert_int_equal(dsr1_blocks_available(b), 0);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < i; j++) assert_int_not_equal(ids[i], ids[j]);
    release_all(b, ids, 8);
    assert_int_equal(dsr1_blocks_used(b), 0);
    assert_int_equal(dsr1_blocks_available(b), 8);
    assert_int_equal(dsr1_blocks_cached(b), 0);
    dsr1_blocks_destroy(b);
}

static void test_prefix_match(void **state)
{
    (void)state;
    dsr1_blocks *b;
    assert_int_equal(dsr1_blocks_create(16, BT, &b), DSR1_OK);
    int32_t a[14], ids[8], got[8];
    random_ids(a, 14);
    const int nb = fill(b, a, 14, ids); /* 3 full blocks + 1 partial */
    release_all(b, ids, nb);
    assert_int_equal(dsr1_blocks_cached(b), 3);
    /* the same tokens: 3 blocks; capped by max_blocks; without take nothing is held */
    assert_int_equal(dsr1_blocks_match(b, a, 14, 8, false, NULL), 3);
    assert_int_equal(dsr1_blocks_match(b, a, 14, 2, false, NULL), 2);
    assert_int_equal(dsr1_blocks_match(b, a, 11, 8, false, NULL), 2); /* 2 full blocks in 11 */
    assert_int_equal(dsr1_blocks_used(b), 0);
    /* a different second block stops the chain after the first */
    int32_t c[14];
    for (int i = 0; i < 14; i++) c[i] = a[i];
    c[5] ^= 1;
    assert_int_equal(dsr1_blocks_match(b, c, 14, 8, false, NULL), 1);
    /* the same third block after a different second block does not match either */
    int32_t d[12];
    random_ids(d, 12);
    for (int i = 8; i < 12; i++) d[i] = a[i];
    assert_int_equal(dsr1_blocks_match(b, d, 12, 8, false, NULL), 0);
    /* take: references held, ids in order */
    assert_int_equal(dsr1_blocks_match(b, a, 14, 8, true, got), 3);
    for (int i = 0; i < 3; i++) assert_int_equal(got[i], ids[i]);
    assert_int_equal(dsr1_blocks_used(b), 3);
    assert_int_equal(dsr1_blocks_cached(b), 0);
    release_all(b, got, 3);
    dsr1_blocks_destroy(b);
}

static void test_eviction_is_lru_and_exact(void **state)
{
    (void)state;
    dsr1_blocks *b;
    assert_int_equal(dsr1_blocks_create(6, BT, &b), DSR1_OK);
    int32_t a[8], c[8], ids[4], ids2[4];
    random_ids(a, 8);
    random_ids(c, 8);
    release_all(b, ids, fill(b, a, 8, ids));   /* a's 2 blocks cached first */
    release_all(b, ids2, fill(b, c, 8, ids2)); /* then c's */
    assert_int_equal(dsr1_blocks_cached(b), 4);
    /* 2 plain blocks, then the oldest cached (a's first, then a's second) are evicted */
    int32_t x[4];
    for (int i = 0; i < 3; i++) x[i] = dsr1_blocks_alloc(b);
    assert_int_equal(x[2], ids[0]);
    assert_int_equal(dsr1_blocks_match(b, a, 8, 8, false, NULL), 0);
    assert_int_equal(dsr1_blocks_match(b, c, 8, 8, false, NULL), 2);
    /* a's second block is still cached but its parent was reused: committing new content
     * into the parent must not make the old child match after it */
    dsr1_blocks_commit(b, x[2], -1, a); /* the same first tokens, a new generation */
    assert_int_equal(dsr1_blocks_match(b, a, 8, 8, false, NULL), 1);
    release_all(b, x, 3);
    dsr1_blocks_destroy(b);
}

static void test_duplicate_commit(void **state)
{
    (void)state;
    dsr1_blocks *b;
    assert_int_equal(dsr1_blocks_create(8, BT, &b), DSR1_OK);
    int32_t a[4], i1[1], i2[1];
    random_ids(a, 4);
    fill(b, a, 4, i1);
    fill(b, a, 4, i2); /* same content computed twice at once: the second stays plain */
    release_all(b, i1, 1);
    release_all(b, i2, 1);
    assert_int_equal(dsr1_blocks_cached(b), 1);
    int32_t got;
    assert_int_equal(dsr1_blocks_match(b, a, 4, 1, true, &got), 1);
    assert_int_equal(got, i1[0]);
    dsr1_blocks_release(b, got);
    dsr1_blocks_destroy(b);
}

int main(void)
{
    srand(17);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts_and_exhaustion),
        cmocka_unit_test(test_prefix_match),
        cmocka_unit_test(test_eviction_is_lru_and_exact),
        cmocka_unit_test(test_duplicate_commit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
