/* Expert parallelism (worker/moe_ep.c) is bit-identical to one rank holding every expert.
 *
 * A random MoE layer (dsr1_weights_dummy, seeded), random hidden states routed by the
 * layer's own router, and random non-zero starting y: dsr1_moe_experts on one rank owning
 * every expert gives the reference; the batch is then split over the live ranks of an
 * in-process group (threads) which call dsr1_moe_experts_ep, each holding only the experts
 * the placement gives its EP rank, and the concatenated y must be the same bytes. Over 2, 3
 * and 4 EP ranks, one and two copies, with ranks lost (member[] -1 and a group of the
 * survivors only), with every batch-invariant kernel variant this build and CPU can run. An expert
 * with no live copy: every live rank returns DSR1_ERR_LOST and leaves y alone. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "test_util.h"

#include "comm.h"
#include "kernels.h"
#include "moe.h"
#include "placement.h"
#include "threadpool.h"
#include "weights.h"

enum { M = 37, MAXR = 4 };

typedef struct {
    const dsr1_kernels *k;
    const dsr1_model_config *c;
    const dsr1_layer_weights *L;
    const dsr1_moe_placement *pl;
    dsr1_comm *comm;
    bool owned[64];
    const float *x, *w;
    const int *ids;
    int m;
    float *y;
    dsr1_status st;
} rank_job;

static void *run_rank(void *arg)
{
    rank_job *j = arg;
    j->st = dsr1_moe_experts_ep(j->k, NULL, j->c, j->L, j->owned, j->pl, j->comm, j->x, j->m,
                                j->ids, j->w, j->y);
    return NULL;
}

static float frand(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    const float v = (float)((*s >> 8) & 0xffff) / 65536.0f;
    return (*s & 1) ? v + 0.01f : -v - 0.01f; /* never zero */
}

typedef struct {
    dsr1_model_config c;
    dsr1_weights *w;
    const dsr1_layer_weights *L;
    float x[M * 160], y0[M * 160], ref[M * 160], rw[M * 8];
    int ids[M * 8];
} layer_case;

static void case_init(layer_case *lc, const dsr1_kernels *k, unsigned seed)
{
    lc->c = test_config();
    assert_int_equal(lc->c.hidden_size, 160);
    dsr1_slice all = dsr1_slice_all(&lc->c);
    assert_int_equal(dsr1_weights_dummy(&lc->c, &all, seed, &lc->w), DSR1_OK);
    lc->L = &lc->w->layers[lc->c.first_k_dense_replace];
    assert_true(lc->L->moe);
    for (int i = 0; i < M * 160; i++) {
        lc->x[i] = frand(&seed);
        lc->y0[i] = frand(&seed);
    }
    assert_int_equal(dsr1_moe_route(k, NULL, &lc->c, lc->L, lc->x, M, lc->ids, lc->rw), DSR1_OK);
    /* the reference on three threads, the ranks on one each */
    dsr1_pool *pool;
    assert_int_equal(dsr1_pool_create(3, &pool), DSR1_OK);
    memcpy(lc->ref, lc->y0, sizeof lc->ref);
    assert_int_equal(dsr1_moe_experts(k, pool, &lc->c, lc->L, lc->w->expert_owned, lc->x, M,
                                      lc->ids, lc->rw, lc->ref),
                     DSR1_OK);
    dsr1_pool_destroy(pool);
    /* the layer does add something to every row */
    for (int t = 0; t < M; t++)
        assert_memory_not_equal(lc->ref + t * 160, lc->y0 + t * 160, sizeof(float) * 160);
}

/* The layer over `ranks` EP ranks with R copies; lost[r]: rank r is gone. Returns the
 * status every live rank agreed on; compares y with the reference when it is DSR1_OK. */
static dsr1_status run_ep(const layer_case *lc, const dsr1_kernels *k, int ranks, int R,
                          const bool *lost)
{
    const int ne = lc->c.n_routed_experts, K = lc->c.num_experts_per_tok, D = 160;
    int owners[64 * MAXR], member[MAXR], n_live = 0;
    assert_int_equal(dsr1_placement_replicated(ne, ranks, R, NULL, owners), DSR1_OK);
    for (int r = 0; r < ranks; r++) member[r] = lost && lost[r] ? -1 : n_live++;
    dsr1_moe_placement pl = {ranks, R, owners, lost ? member : NULL};
    dsr1_comm *comms[MAXR];
    assert_int_equal(dsr1_comm_inproc_create(n_live, 20000, comms), DSR1_OK);
    float *y = malloc(sizeof(float) * M * D);
    memcpy(y, lc->y0, sizeof(float) * M * D);
    rank_job jobs[MAXR];
    pthread_t th[MAXR];
    int t0 = 0;
    for (int r = 0, g = 0; r < ranks; r++) {
        if (member[r] < 0) continue;
        rank_job *j = &jobs[g];
        /* uneven shares; the last live rank gets none when there are 3 or more */
        const int m = g == n_live - 1 ? M - t0 : (n_live >= 3 && g == n_live - 2 ? M - t0 : M / 3);
        *j = (rank_job){k,
                        &lc->c,
                        lc->L,
                        &pl,
                        comms[g],
                        {0},
                        lc->x + (size_t)t0 * D,
                        lc->rw + t0 * K,
                        lc->ids + t0 * K,
                        m,
                        y + (size_t)t0 * D,
                        DSR1_OK};
        for (int x = 0; x < ne; x++)
            for (int c = 0; c < R; c++) j->owned[x] |= owners[x * R + c] == r;
        t0 += m;
        g++;
    }
    assert_int_equal(t0, M);
    for (int g = 0; g < n_live; g++)
        assert_int_equal(pthread_create(&th[g], NULL, run_rank, &jobs[g]), 0);
    for (int g = 0; g < n_live; g++) pthread_join(th[g], NULL);
    const dsr1_status st = jobs[0].st;
    for (int g = 0; g < n_live; g++) {
        assert_int_equal(jobs[g].st, st);
        dsr1_comm_destroy(comms[g]);
    }
    if (st == DSR1_OK)
        assert_memory_equal(y, lc->ref, sizeof(float) * M * D);
    else
        assert_memory_equal(y, lc->y0, sizeof(float) * M * D);
    free(y);
    return st;
}

static void bit_identical(const dsr1_kernels *k)
{
    layer_case *lc = malloc(sizeof *lc);
    case_init(lc, k, 1234);
    for (int ranks = 2; ranks <= MAXR; ranks++)
        for (int R = 1; R <= 2; R++) assert_int_equal(run_ep(lc, k, ranks, R, NULL), DSR1_OK);
    /* lost ranks with two copies: every expert keeps one */
    const bool lose1of3[3] = {false, true, false}, lose0of4[4] = {true, false, false, false};
    const bool lose01of4[4] = {true, true, false, false};
    assert_int_equal(run_ep(lc, k, 3, 2, lose1of3), DSR1_OK);
    assert_int_equal(run_ep(lc, k, 4, 2, lose0of4), DSR1_OK);
    assert_int_equal(run_ep(lc, k, 4, 2, lose01of4), DSR1_OK);
    assert_int_equal(run_ep(lc, k, 4, 3, lose01of4), DSR1_OK);
    /* no live copy of some expert */
    const bool lose1of2[2] = {false, true}, lose02of4[4] = {true, false, true, false};
    assert_int_equal(run_ep(lc, k, 2, 1, lose1of2), DSR1_ERR_LOST);
    assert_int_equal(run_ep(lc, k, 4, 1, lose0of4), DSR1_ERR_LOST);
    assert_int_equal(run_ep(lc, k, 4, 2, lose02of4), DSR1_ERR_LOST);
    dsr1_weights_destroy(lc->w);
    free(lc);
}

/* Every batch-invariant kernel variant this build and CPU have: each keeps a token's
 * expert output independent of the other rows of the call and adds it without contraction.
 * (avx512-bf16, whose result depended on whether an expert had 16 rows or more in the call,
 * is retired: the name now selects bf16-tiles.) */
static void test_bit_identical(void **state)
{
    (void)state;
    const char *names[] = {"portable", "avx512", "bf16-tiles", "bf16-tiles-emulated"};
    int ran = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const dsr1_kernels *k = dsr1_kernels_select(names[i]);
        if (k) {
            bit_identical(k);
            ran++;
        }
    }
    assert_true(ran >= 1);
}

/* A placement that does not fit the group is refused before any exchange. */
static void test_bad_placement(void **state)
{
    (void)state;
    layer_case *lc = malloc(sizeof *lc);
    const dsr1_kernels *k = dsr1_kernels_portable();
    case_init(lc, k, 99);
    const int ne = lc->c.n_routed_experts;
    int owners[64 * 2], twice[3] = {0, 0, -1}, two_live[3] = {0, 1, -1}, past[2] = {0, 1};
    assert_int_equal(dsr1_placement_replicated(ne, 3, 2, NULL, owners), DSR1_OK);
    dsr1_comm *comm;
    assert_int_equal(dsr1_comm_inproc_create(1, 1000, &comm), DSR1_OK);
    float *y = malloc(sizeof lc->y0);
    memcpy(y, lc->y0, sizeof lc->y0);
    const dsr1_moe_placement bad[] = {
        {3, 2, owners, NULL},     /* 3 EP ranks, a group of 1, no member map */
        {3, 2, owners, twice},    /* two EP ranks on member 0 */
        {3, 2, owners, two_live}, /* two live ranks, a group of 1 */
        {2, 2, owners, past},     /* member 1 of a 1-rank group; owners past 2 ranks */
        {3, 4, owners, two_live}, /* more copies than ranks */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(dsr1_moe_experts_ep(k, NULL, &lc->c, lc->L, lc->w->expert_owned, &bad[i],
                                             comm, lc->x, M, lc->ids, lc->rw, y),
                         DSR1_ERR_INVALID_ARG);
    assert_memory_equal(y, lc->y0, sizeof lc->y0);
    dsr1_comm_destroy(comm);
    free(y);
    dsr1_weights_destroy(lc->w);
    free(lc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bit_identical),
        cmocka_unit_test(test_bad_placement),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
