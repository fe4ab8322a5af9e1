/* Expert placement with redundant copies (common/model/placement.h), checked against its
 * contract rather than against stored tables: the copies of an expert are on distinct
 * ranks, and on distinct hosts whenever there are at least as many hosts as copies; every
 * rank holds R * E / ranks experts give or take one (max - min <= 1 when every rank has its
 * own host or the hosts are equal-sized; at most 2 is accepted for lopsided host sets);
 * one copy gives the balanced table; bad copy counts are refused. The pick uses only live
 * copies, is deterministic and spreads a batch evenly over the live copies; uncovered lists
 * exactly the experts whose copies are all lost. The census (`dsr1 inspect
 * --expert-replicas`) charges a worker every expert it holds a copy of, once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "test_util.h"

#include "census.h"
#include "placement.h"
#include "tensor_plan.h"

/* Build a table and check every property that does not depend on liveness. */
static int *check_table(int ne, int ranks, int R, const int *host, int max_spread)
{
    int *own = malloc(sizeof(int) * (size_t)ne * R);
    assert_int_equal(dsr1_placement_replicated(ne, ranks, R, host, own), DSR1_OK);
    /* deterministic */
    int *again = malloc(sizeof(int) * (size_t)ne * R);
    assert_int_equal(dsr1_placement_replicated(ne, ranks, R, host, again), DSR1_OK);
    assert_memory_equal(own, again, sizeof(int) * (size_t)ne * R);
    free(again);
    /* copy 0 is the balanced table */
    int *bal = malloc(sizeof(int) * (size_t)ne);
    dsr1_placement_balanced(ne, ranks, bal);
    int n_hosts = 0, hosts_seen[64] = {0};
    for (int r = 0; r < ranks; r++) {
        const int h = host ? host[r] : r;
        if (!hosts_seen[h]++) n_hosts++;
    }
    for (int x = 0; x < ne; x++) {
        assert_int_equal(own[x * R], bal[x]);
        for (int c = 0; c < R; c++) {
            const int r = own[x * R + c];
            assert_true(r >= 0 && r < ranks);
            for (int d = 0; d < c; d++) {
                assert_int_not_equal(own[x * R + d], r);
                /* distinct hosts while there are hosts left for copy c */
                if (c < n_hosts && host) assert_int_not_equal(host[own[x * R + d]], host[r]);
            }
        }
    }
    free(bal);
    /* every copy counted, per-rank counts within max_spread */
    int lo = ne, hi = 0, sum = 0;
    for (int r = 0; r < ranks; r++) {
        const int n = dsr1_placement_count(own, ne, R, r);
        lo = n < lo ? n : lo;
        hi = n > hi ? n : hi;
        sum += n;
    }
    assert_int_equal(sum, ne * R);
    assert_true(hi - lo <= max_spread);
    assert_true(hi <= (R * ne + ranks - 1) / ranks + max_spread - 1);
    return own;
}

static void test_replicated_tables(void **state)
{
    (void)state;
    const int h8on4[8] = {0, 0, 1, 1, 2, 2, 3, 3}, h8on4i[8] = {0, 1, 2, 3, 0, 1, 2, 3};
    const int h6on2[6] = {0, 0, 0, 1, 1, 1}, h6on2i[6] = {0, 1, 0, 1, 0, 1};
    const int h5lop[5] = {0, 0, 0, 0, 1}; /* one host with four ranks, one with one */
    const int ne[] = {256, 16, 7, 9};
    for (size_t i = 0; i < sizeof ne / sizeof ne[0]; i++) {
        const int E = ne[i];
        for (int ranks = 1; ranks <= 9; ranks++)
            for (int R = 1; R <= ranks && R <= 4; R++) free(check_table(E, ranks, R, NULL, 1));
        for (int R = 1; R <= 4; R++) {
            free(check_table(E, 8, R, h8on4, 1));
            free(check_table(E, 8, R, h8on4i, 1));
        }
        for (int R = 1; R <= 3; R++) {
            free(check_table(E, 6, R, h6on2, 1));
            free(check_table(E, 6, R, h6on2i, 1));
        }
        /* lopsided hosts: the second copy of every expert of host 0 must go to rank 4,
         * so the counts cannot be even; host diversity still holds */
        int *own = check_table(E, 5, 2, h5lop, E);
        for (int x = 0; x < E; x++)
            if (own[x * 2] != 4) assert_int_equal(own[x * 2 + 1], 4);
        free(own);
    }
}

static void test_invalid(void **state)
{
    (void)state;
    int own[64];
    assert_int_equal(dsr1_placement_replicated(8, 4, 0, NULL, own), DSR1_ERR_INVALID_ARG);
    assert_int_equal(dsr1_placement_replicated(8, 4, 5, NULL, own), DSR1_ERR_INVALID_ARG);
    assert_int_equal(dsr1_placement_replicated(8, 0, 1, NULL, own), DSR1_ERR_INVALID_ARG);
    assert_int_equal(dsr1_placement_replicated(0, 4, 1, NULL, own), DSR1_ERR_INVALID_ARG);
    assert_int_equal(dsr1_placement_replicated(8, 4, -1, NULL, own), DSR1_ERR_INVALID_ARG);
}

static void test_pick(void **state)
{
    (void)state;
    enum { E = 32, RANKS = 8, R = 3, T = 600 };
    int *own = check_table(E, RANKS, R, NULL, 1);
    bool live[RANKS];
    unsigned seed = 7;
    for (int trial = 0; trial < 64; trial++) {
        for (int r = 0; r < RANKS; r++) {
            seed = seed * 1103515245u + 12345u;
            live[r] = trial == 0 || (seed >> 16) % 3 != 0;
        }
        int missing[E], n_missing = dsr1_placement_uncovered(own, E, R, live, missing), mi = 0;
        for (int x = 0; x < E; x++) {
            int n_live = 0;
            for (int c = 0; c < R; c++) n_live += live[own[x * R + c]];
            /* uncovered: exactly the experts without a live copy, in increasing id */
            if (n_live == 0) {
                assert_true(mi < n_missing);
                assert_int_equal(missing[mi++], x);
            }
            int hits[RANKS] = {0};
            for (int t = 0; t < T; t++) {
                const int r = dsr1_placement_pick(own, R, live, x, t);
                assert_int_equal(r, dsr1_placement_pick(own, R, live, x, t));
                if (n_live == 0) {
                    assert_int_equal(r, -1);
                    continue;
                }
                assert_true(r >= 0 && r < RANKS && live[r]);
                int is_copy = 0;
                for (int c = 0; c < R; c++) is_copy |= own[x * R + c] == r;
                assert_true(is_copy);
                hits[r]++;
            }
            /* balanced over consecutive tokens: T / n_live each (T divisible by 1, 2, 3) */
            for (int r = 0; r < RANKS; r++)
                if (hits[r]) assert_int_equal(hits[r], T / n_live);
        }
        assert_int_equal(mi, n_missing);
    }
    /* NULL live: every copy live */
    for (int x = 0; x < E; x++)
        for (int t = 0; t < 2 * R; t++)
            assert_int_equal(dsr1_placement_pick(own, R, NULL, x, t), own[x * R + (t + x) % R]);
    free(own);
}

static void test_census_copies(void **state)
{
    (void)state;
    dsr1_model_config c = test_config();
    assert_int_equal(c.num_nextn_predict_layers, 0);
    dsr1_tensor_plan plan = {0};
    dsr1_census cs;
    assert_int_equal(dsr1_tensor_plan_build(&c, &plan), DSR1_OK);
    assert_int_equal(dsr1_census_init(&cs, &c, &plan), DSR1_OK);
    dsr1_census_add_plan(&cs);
    const int E = c.n_routed_experts;
    const uint64_t per_expert = cs.kind[DSR1_TK_ROUTED_EXPERT].bytes / (uint64_t)E;
    assert_true(per_expert > 0);
    for (int n = 1; n <= 6; n++)
        for (int R = 1; R <= n && R <= 3; R++) {
            int own[64 * 3];
            assert_int_equal(dsr1_placement_replicated(E, n, R, NULL, own), DSR1_OK);
            for (int w = 0; w < n; w++) {
                uint64_t held = 0;
                for (int x = 0; x < E; x++) {
                    int h = 0;
                    for (int k = 0; k < R; k++) h |= own[x * R + k] == w;
                    held += (uint64_t)h;
                }
                const uint64_t b = dsr1_census_worker_bytes_placed(&cs, own, R, w);
                assert_int_equal(b, cs.replicated_bytes + held * per_expert);
                if (R == 1) assert_int_equal(b, dsr1_census_worker_bytes(&cs, n, w));
            }
        }
    dsr1_census_free(&cs);
    dsr1_tensor_plan_free(&plan);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replicated_tables),
        cmocka_unit_test(test_invalid),
        cmocka_unit_test(test_pick),
        cmocka_unit_test(test_census_copies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
