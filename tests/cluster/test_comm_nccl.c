/* Tests of the NCCL comm backend, every rank a thread of this process on its own GPU (up
 * to 4; NCCL allows one rank of a group per device): all-to-all with random sizes (zeros
 * included) and random bytes, point-to-point with tags received out of order, a barrier
 * that really waits, abort waking every rank of an in-process group, timeouts naming the
 * silent rank (in a collective, in a recv, while the group forms), and argument errors.
 * With one GPU the groups have one rank and the tests that need two are skipped.
 * Exit 77 (skip) when the build has no NCCL or the machine no usable GPU. */
#include <setjmp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "comm.h"
#include "comm_harness.h"
#include "dsr1_build_config.h"
#include "status.h"

#if DSR1_HAVE_NCCL

#define MAXR 4 /* NCCL: one rank per GPU, at most 4 used */
_Static_assert(MAXR <= COMM_MAXR, "the harness holds MAXR ranks");

typedef struct {
    int ranks; /* ranks per group: the GPUs, at most MAXR */
    uint64_t seed;
} env_t;

/* What a job's threads need to make their handles (comm_job.user). */
typedef struct {
    int timeout_ms;
    bool local; /* made by dsr1_comm_nccl_create_local, else by each thread */
    unsigned char id[DSR1_NCCL_ID_BYTES];
} nccl_setup;

static bool nccl_begin(comm_job *j, int r)
{
    const nccl_setup *s = j->user;
    if (s->local) return true;
    dsr1_status st = dsr1_comm_nccl_create(r, j->n, s->id, r, s->timeout_ms, &j->c[r]);
    if (st) {
        comm_record(j, r, st, comm_now_s());
        comm_data_error(j, "rank %d: creating the group failed\n", r);
        return false;
    }
    return true;
}

/* every rank destroys its own handle at the same time: finalizing waits for the group */
static void nccl_end(comm_job *j, int r)
{
    dsr1_comm_destroy(j->c[r]);
    j->c[r] = NULL;
}

static void run(comm_job *j, const env_t *e, int n, int timeout_ms, bool local, comm_rank_fn fn)
{
    nccl_setup s = {.timeout_ms = timeout_ms, .local = local};
    comm_job_init(j, n, e->seed, fn);
    j->begin = nccl_begin;
    j->end = nccl_end;
    j->user = &s;
    if (local)
        assert_int_equal(dsr1_comm_nccl_create_local(n, NULL, timeout_ms, j->c), DSR1_OK);
    else
        assert_int_equal(dsr1_nccl_unique_id(s.id), DSR1_OK);
    comm_job_run(j);
    j->user = NULL; /* s ends here */
}

/* ---- all-to-all -------------------------------------------------------------------- */

static void a2a_rank(comm_job *j, int r)
{
    comm_a2a_rank(j, r, 3000000); /* past the first staging size, several times */
}

static void test_alltoallv_random(void **state)
{
    const env_t *e = *state;
    static comm_job j;
    run(&j, e, e->ranks, 30000, false, a2a_rank);
    for (int r = 0; r < e->ranks; r++) assert_int_equal(j.st[r], DSR1_OK);
    assert_int_equal(j.fails, 0);
}

/* ---- point to point ---------------------------------------------------------------- */

#define NMSG 7
/* message m of a sender: its tag (two share tag 12, to check their order) and size */
static const int msg_tag[NMSG] = {10, 11, 12, 13, 12, 14, 15};

static size_t msg_bytes(uint64_t seed, int s, int m)
{
    uint64_t x = seed ^ ((uint64_t)s * 7919u + (uint64_t)m * 104729u + 3);
    for (int i = 0; i < 3; i++) comm_rnd(&x);
    return m == 1 ? 0 : m == 3 ? 1500000 + x % 1000 : x % 20000;
}

static unsigned char msg_byte(int s, int m, size_t i)
{
    return (unsigned char)(i * 29u + (unsigned)s * 5u + (unsigned)m * 71u + 1);
}

static dsr1_status send_all(comm_job *j, int r, int to)
{
    dsr1_status st = DSR1_OK;
    for (int m = 0; m < NMSG && !st; m++) {
        const size_t len = msg_bytes(j->seed, r, m);
        unsigned char *b = malloc(len + 1);
        for (size_t i = 0; i < len; i++) b[i] = msg_byte(r, m, i);
        st = dsr1_comm_send(j->c[r], to, msg_tag[m], b, len);
        free(b);
    }
    return st;
}

/* receive a sender's messages newest tag first: the earlier ones wait in the reorder
 * buffer, and the two of tag 12 must come out in the order they were sent */
static dsr1_status recv_all(comm_job *j, int r, int from)
{
    static const int order[NMSG] = {6, 2, 0, 5, 4, 1, 3}; /* message indices */
    for (int k = 0; k < NMSG; k++) {
        const int m = order[k];
        void *d;
        size_t len;
        int src = -1;
        dsr1_status st = dsr1_comm_recv(j->c[r], from, msg_tag[m], &d, &len, &src);
        if (st) return st;
        const unsigned char *b = d;
        if (src != from || len != msg_bytes(j->seed, from, m))
            comm_data_error(j, "rank %d: message %d from %d: %zu bytes from %d\n", r, m, from, len,
                            src);
        else
            for (size_t i = 0; i < len; i++)
                if (b[i] != msg_byte(from, m, i)) {
                    comm_data_error(j, "rank %d: message %d from %d: byte %zu\n", r, m, from, i);
                    break;
                }
        free(d);
    }
    return DSR1_OK;
}

static void p2p_rank(comm_job *j, int r)
{
    const double t0 = comm_now_s();
    dsr1_status st;
    void *d;
    size_t len;
    /* what NCCL cannot do is refused up front, the handle stays usable */
    st = dsr1_comm_recv(j->c[r], DSR1_COMM_ANY, 1, &d, &len, NULL);
    if (st != DSR1_ERR_UNSUPPORTED || !strstr(dsr1_errmsg(), "any rank"))
        comm_data_error(j, "rank %d: recv from any rank: %d (%s)\n", r, st, dsr1_errmsg());
    st = dsr1_comm_send(j->c[r], j->n, 1, "x", 1);
    if (st != DSR1_ERR_INVALID_ARG)
        comm_data_error(j, "rank %d: send to rank %d: %d\n", r, j->n, st);
    /* to itself: no NCCL, the same reordering */
    if ((st = send_all(j, r, r)) || (st = recv_all(j, r, r))) {
        comm_record(j, r, st, t0);
        return;
    }
    if (dsr1_comm_recv(j->c[r], r, 10, &d, &len, NULL) == DSR1_OK)
        comm_data_error(j, "rank %d: a message from itself out of nowhere\n", r);
    /* pairs (0,1), (2,3): the even rank sends first, then the odd one. Sends complete when
     * received, so a pair must not send to each other at the same time. */
    const int mate = r ^ 1;
    if (mate < j->n) {
        if (r % 2 == 0) {
            if (!(st = send_all(j, r, mate))) st = recv_all(j, r, mate);
        } else {
            if (!(st = recv_all(j, r, mate))) st = send_all(j, r, mate);
        }
    }
    if (!st) st = dsr1_comm_barrier(j->c[r]);
    comm_record(j, r, st, t0);
}

static void test_p2p_out_of_order(void **state)
{
    const env_t *e = *state;
    static comm_job j;
    const int n = e->ranks >= 2 ? e->ranks & ~1 : 1;
    run(&j, e, n, 30000, false, p2p_rank);
    for (int r = 0; r < n; r++) assert_int_equal(j.st[r], DSR1_OK);
    assert_int_equal(j.fails, 0);
}

/* ---- barrier ----------------------------------------------------------------------- */

/* rank 0 comes 300 ms late: nobody may leave the barrier before it arrives */
static void barrier_rank(comm_job *j, int r)
{
    dsr1_status st = DSR1_OK;
    for (int k = 0; k < 5 && !st; k++) st = dsr1_comm_barrier(j->c[r]);
    const double t1 = comm_now_s();
    if (r == 0) comm_sleep_ms(300);
    if (!st) st = dsr1_comm_barrier(j->c[r]);
    comm_record(j, r, st, t1);
}

static void test_barrier(void **state)
{
    const env_t *e = *state;
    static comm_job j;
    run(&j, e, e->ranks, 30000, false, barrier_rank);
    for (int r = 0; r < e->ranks; r++) {
        assert_int_equal(j.st[r], DSR1_OK);
        assert_true(j.secs[r] >= 0.25);
    }
}

/* ---- abort ------------------------------------------------------------------------- */

/* rank 0 aborts while the others wait for its bytes in an all-to-all */
static void abort_rank(comm_job *j, int r)
{
    const double t0 = comm_now_s();
    if (r == 0) {
        comm_sleep_ms(200);
        dsr1_comm_abort(j->c[0], "disk on fire");
        comm_record(j, 0, dsr1_comm_barrier(j->c[0]), t0); /* sticky */
        return;
    }
    size_t sb[MAXR], rb[MAXR];
    unsigned char s[64 * MAXR], d[64 * MAXR];
    for (int p = 0; p < j->n; p++) sb[p] = rb[p] = 64;
    for (size_t i = 0; i < sizeof(s); i++) s[i] = (unsigned char)(i * 3 + (size_t)r);
    comm_record(j, r, dsr1_comm_alltoallv(j->c[r], s, sb, d, rb), t0);
}

static void test_abort(void **state)
{
    const env_t *e = *state;
    static comm_job j;
    run(&j, e, e->ranks, 20000, true, abort_rank);
    for (int r = 0; r < e->ranks; r++) {
        assert_int_not_equal(j.st[r], DSR1_OK);
        assert_non_null(strstr(j.msg[r], "disk on fire"));
        assert_non_null(strstr(j.msg[r], "rank 0"));
        assert_true(j.secs[r] < 5.0); /* woken by the abort, long before the timeout */
    }
}

/* ---- timeouts ---------------------------------------------------------------------- */

/* rank 1 stays silent: rank 0 waits in an all-to-all, the others in a recv from rank 1 */
static void silent_rank(comm_job *j, int r)
{
    const double t0 = comm_now_s();
    if (r == 1) {
        comm_sleep_ms(2500);
        return;
    }
    if (r == 0) {
        size_t sb[MAXR], rb[MAXR];
        unsigned char s[32 * MAXR], d[32 * MAXR];
        for (int p = 0; p < j->n; p++) sb[p] = rb[p] = 32;
        for (size_t i = 0; i < sizeof(s); i++) s[i] = (unsigned char)(i * 5 + 1);
        comm_record(j, r, dsr1_comm_alltoallv(j->c[r], s, sb, d, rb), t0);
        return;
    }
    void *d;
    size_t len;
    comm_record(j, r, dsr1_comm_recv(j->c[r], 1, 3, &d, &len, NULL), t0);
}

static void test_timeout(void **state)
{
    const env_t *e = *state;
    if (e->ranks < 2) skip();
    static comm_job j;
    run(&j, e, e->ranks, 1000, false, silent_rank);
    for (int r = 0; r < e->ranks; r++) {
        if (r == 1) continue;
        assert_int_not_equal(j.st[r], DSR1_OK);
        assert_non_null(strstr(j.msg[r], "rank 1"));
        assert_non_null(strstr(j.msg[r], "1000 ms"));
        assert_true(j.secs[r] >= 0.9 && j.secs[r] < 2.5);
    }
    /* the late rank's handle is then unusable or its peers gone: no hang either way */
}

/* a group of 2 of which only rank 0 ever comes: creation gives up */
static void test_create_timeout(void **state)
{
    (void)state;
    unsigned char id[DSR1_NCCL_ID_BYTES];
    assert_int_equal(dsr1_nccl_unique_id(id), DSR1_OK);
    dsr1_comm *c = NULL;
    const double t0 = comm_now_s();
    dsr1_status st = dsr1_comm_nccl_create(0, 2, id, 0, 1000, &c);
    const double t = comm_now_s() - t0;
    fprintf(stderr, "create alone: %s (after %.2f s)\n", dsr1_errmsg(), t);
    assert_int_not_equal(st, DSR1_OK);
    assert_null(c);
    assert_non_null(strstr(dsr1_errmsg(), "did not form within 1000 ms"));
    assert_true(t < 5.0);
}

static void test_bad_arguments(void **state)
{
    const env_t *e = *state;
    unsigned char id[DSR1_NCCL_ID_BYTES];
    assert_int_equal(dsr1_nccl_unique_id(id), DSR1_OK);
    dsr1_comm *c = NULL;
    assert_int_equal(dsr1_comm_nccl_create(2, 2, id, 0, 1000, &c), DSR1_ERR_INVALID_ARG);
    assert_int_equal(dsr1_comm_nccl_create(0, 0, id, 0, 1000, &c), DSR1_ERR_INVALID_ARG);
    assert_null(c);
    /* a device that does not exist is named */
    int dev = e->ranks + 64;
    char want[32];
    snprintf(want, sizeof(want), "device %d", dev);
    dsr1_comm *cs[1] = {NULL};
    assert_int_not_equal(dsr1_comm_nccl_create_local(1, &dev, 1000, cs), DSR1_OK);
    assert_non_null(strstr(dsr1_errmsg(), want));
    assert_null(cs[0]);
}

int main(void)
{
    int ndev = 0;
    dsr1_status st = dsr1_cuda_device_count(&ndev);
    if (st != DSR1_OK || ndev < 1) {
        char why[512];
        snprintf(why, sizeof(why), "%s", st ? dsr1_errmsg() : "the CUDA runtime sees no device");
        /* without a GPU, creating a handle must fail cleanly, never crash */
        unsigned char id[DSR1_NCCL_ID_BYTES] = {1};
        dsr1_comm *c = NULL;
        if (dsr1_comm_nccl_create(0, 1, id, 0, 1000, &c) == DSR1_OK || c) {
            fprintf(stderr, "a handle was created without a GPU\n");
            return 1;
        }
        printf("skip: no usable GPU (%s); NCCL backend not exercised\n", why);
        return 77;
    }
    env_t env = {ndev < MAXR ? ndev : MAXR, (uint64_t)time(NULL) * 2654435761u + 17};
    printf("NCCL tests: %d GPU(s), groups of %d rank(s), seed %llu\n", ndev, env.ranks,
           (unsigned long long)env.seed);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_prestate(test_alltoallv_random, &env),
        cmocka_unit_test_prestate(test_p2p_out_of_order, &env),
        cmocka_unit_test_prestate(test_barrier, &env),
        cmocka_unit_test_prestate(test_abort, &env),
        cmocka_unit_test_prestate(test_timeout, &env),
        cmocka_unit_test_prestate(test_create_timeout, &env),
        cmocka_unit_test_prestate(test_bad_arguments, &env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

#else

int main(void)
{
    printf("skip: built without NCCL\n");
    return 77;
}

#endif
