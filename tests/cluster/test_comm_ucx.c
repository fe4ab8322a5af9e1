/* Unit tests of the UCX comm backend, every rank a thread of this process over loopback:
 * all-to-all with random sizes (zeros included) and random bytes, point-to-point with a
 * fixed peer and with DSR1_COMM_ANY, a size mismatch, a timeout naming the rank that never
 * answers, abort waking every rank with the origin's reason, and the simulated crash of
 * the test hook. Then tolerant groups (comm.h): a crashed rank, a silent one, ranks that
 * know only some addresses, and a replaced rank, each leaving the group usable with the
 * others. Exit 77 (skip) when the build has no UCX. */
#include <setjmp.h>
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

#if DSR1_HAVE_UCX

/* Every handle of a job is made before its threads start and destroyed after they end. */
static void run(comm_job *j, int n, int timeout_ms, comm_rank_fn fn)
{
    comm_job_init(j, n, (uint64_t)time(NULL) * 2654435761u + 17, fn);
    assert_int_equal(dsr1_comm_ucx_create_local(n, timeout_ms, "test", NULL, j->c), DSR1_OK);
    comm_job_run(j);
    for (int r = 0; r < n; r++) dsr1_comm_destroy(j->c[r]);
}

/* ---- all-to-all -------------------------------------------------------------------- */

static void a2a_rank(comm_job *j, int r)
{
    comm_a2a_rank(j, r, 300000); /* large messages: past the eager size, by rendezvous */
}

static void test_alltoallv_random(void **state)
{
    (void)state;
    static comm_job j;
    for (int n = 1; n <= 4; n += 3) {
        run(&j, n, 10000, a2a_rank);
        for (int r = 0; r < n; r++) assert_int_equal(j.st[r], DSR1_OK);
        assert_int_equal(j.fails, 0);
    }
}

/* ---- point to point ---------------------------------------------------------------- */

static void p2p_rank(comm_job *j, int r)
{
    double t0 = comm_now_s();
    dsr1_status st = DSR1_OK;
    if (r > 0) {
        /* three messages in order on tag 5, one on tag 9, of random contents */
        for (int m = 0; m < 3 && !st; m++) {
            size_t len = (size_t)(r * 1000 + m * 70000);
            unsigned char *b = malloc(len + 1);
            for (size_t i = 0; i < len; i++) b[i] = (unsigned char)(i * 7 + (size_t)r + (size_t)m);
            st = dsr1_comm_send(j->c[r], 0, 5, b, len);
            free(b);
        }
        int32_t v = 1000 + r;
        if (!st) st = dsr1_comm_send(j->c[r], 0, 9, &v, sizeof(v));
        /* sends are buffered: a rank must keep progressing (here, in a barrier) until its
         * receiver has taken them */
        if (!st) st = dsr1_comm_barrier(j->c[r]);
    } else {
        int next[COMM_MAXR] = {0}, seen9[COMM_MAXR] = {0};
        /* tag 9 from anyone first: messages on another tag must not get in the way */
        for (int k = 1; k < j->n && !st; k++) {
            void *d;
            size_t len;
            int src = -1;
            if ((st = dsr1_comm_recv(j->c[0], DSR1_COMM_ANY, 9, &d, &len, &src))) break;
            if (src < 1 || src >= j->n || len != 4 || *(int32_t *)d != 1000 + src || seen9[src]++)
                comm_data_error(j, "tag 9: bad message from %d (%zu bytes)\n", src, len);
            free(d);
        }
        for (int k = 0; k < 3 * (j->n - 1) && !st; k++) {
            void *d;
            size_t len;
            int src = -1;
            /* alternate: from anyone, then from a fixed peer */
            int want = k % 2 ? 1 + k % (j->n - 1) : DSR1_COMM_ANY;
            if (want != DSR1_COMM_ANY && next[want] == 3) want = DSR1_COMM_ANY;
            if ((st = dsr1_comm_recv(j->c[0], want, 5, &d, &len, &src))) break;
            const int m = next[src]++;
            const unsigned char *b = d;
            if (len != (size_t)(src * 1000 + m * 70000) || (want >= 0 && src != want))
                comm_data_error(j, "tag 5: message %d from %d: %zu bytes\n", m, src, len);
            else
                for (size_t i = 0; i < len; i++)
                    if (b[i] != (unsigned char)(i * 7 + (size_t)src + (size_t)m)) {
                        comm_data_error(j, "tag 5: message %d from %d: byte %zu\n", m, src, i);
                        break;
                    }
            free(d);
        }
        if (!st) st = dsr1_comm_barrier(j->c[0]);
    }
    comm_record(j, r, st, t0);
}

static void test_p2p(void **state)
{
    (void)state;
    static comm_job j;
    run(&j, 4, 10000, p2p_rank);
    for (int r = 0; r < 4; r++) assert_int_equal(j.st[r], DSR1_OK);
    assert_int_equal(j.fails, 0);
}

/* ---- failures ---------------------------------------------------------------------- */

static void mismatch_rank(comm_job *j, int r)
{
    size_t sb[2] = {8, 8}, rb[2] = {8, r == 0 ? 4 : 8}; /* rank 0 expects too little */
    char s[16] = "0123456789abcde", d[16];
    comm_record(j, r, dsr1_comm_alltoallv(j->c[r], s, sb, d, rb), comm_now_s());
}

static void test_size_mismatch(void **state)
{
    (void)state;
    static comm_job j;
    run(&j, 2, 3000, mismatch_rank);
    assert_int_not_equal(j.st[0], DSR1_OK);
    assert_non_null(strstr(j.msg[0], "mismatch"));
}

static int culprit_of[COMM_MAXR]; /* dsr1_comm_culprit of each rank after its failure */

/* rank 2 never shows up; rank 1 waits for a message nobody sends */
static void silent_rank(comm_job *j, int r)
{
    double t0 = comm_now_s();
    if (r == 0) comm_record(j, r, dsr1_comm_barrier(j->c[r]), t0);
    if (r == 1) {
        void *d;
        size_t len;
        comm_record(j, r, dsr1_comm_recv(j->c[r], 0, 3, &d, &len, NULL), t0);
    }
    culprit_of[r] = dsr1_comm_culprit(j->c[r]);
    if (r == 2) comm_sleep_ms(1500);
}

static void test_timeout(void **state)
{
    (void)state;
    static comm_job j;
    run(&j, 3, 400, silent_rank);
    assert_int_not_equal(j.st[0], DSR1_OK);
    assert_non_null(strstr(j.msg[0], "rank 2"));
    assert_non_null(strstr(j.msg[0], "400 ms"));
    assert_true(j.secs[0] >= 0.35 && j.secs[0] < 1.4);
    assert_int_not_equal(j.st[1], DSR1_OK);
    assert_true(j.secs[1] >= 0.35 && j.secs[1] < 1.4);
    assert_int_equal(culprit_of[0], 1); /* the first of those that did not answer */
    /* its own timeout blames rank 0; rank 0's abort notice (if first) blames nobody */
    assert_true(culprit_of[1] == 0 || culprit_of[1] == -1);
}

/* rank 1 aborts while the others wait: in a barrier, in a recv from anyone */
static void abort_rank(comm_job *j, int r)
{
    double t0 = comm_now_s();
    if (r == 1) {
        comm_sleep_ms(200);
        dsr1_comm_abort(j->c[r], "disk on fire");
        comm_record(j, r, dsr1_comm_barrier(j->c[r]), t0); /* sticky */
    } else if (r == 0) {
        void *d;
        size_t len;
        comm_record(j, r, dsr1_comm_recv(j->c[r], DSR1_COMM_ANY, 1, &d, &len, NULL), t0);
    } else {
        comm_record(j, r, dsr1_comm_barrier(j->c[r]), t0);
    }
}

static void test_abort(void **state)
{
    (void)state;
    static comm_job j;
    run(&j, 4, 20000, abort_rank);
    for (int r = 0; r < 4; r++) {
        assert_int_not_equal(j.st[r], DSR1_OK);
        assert_non_null(strstr(j.msg[r], "disk on fire"));
        assert_non_null(strstr(j.msg[r], "rank 1"));
        assert_true(j.secs[r] < 5.0); /* woken by the notice, long before the timeout */
    }
}

/* rank 2 "crashes" on its first recv of tag 4; the others then wait for it in a barrier */
static void crash_rank(comm_job *j, int r)
{
    double t0 = comm_now_s();
    if (r == 2) {
        dsr1_comm_ucx_crash_after(j->c[2], 4, 1, NULL);
        void *d;
        size_t len;
        comm_record(j, r, dsr1_comm_recv(j->c[2], 0, 4, &d, &len, NULL), t0);
        return;
    }
    if (r == 0) {
        int32_t v = 1;
        dsr1_status st = dsr1_comm_send(j->c[0], 2, 4, &v, sizeof(v));
        if (st) {
            comm_record(j, r, st, t0);
            culprit_of[r] = dsr1_comm_culprit(j->c[r]);
            return;
        }
    }
    comm_record(j, r, dsr1_comm_barrier(j->c[r]), t0);
    culprit_of[r] = dsr1_comm_culprit(j->c[r]);
}

static void test_crash(void **state)
{
    (void)state;
    static comm_job j;
    run(&j, 3, 1500, crash_rank);
    assert_int_not_equal(j.st[2], DSR1_OK);
    assert_non_null(strstr(j.msg[2], "test hook"));
    for (int r = 0; r < 2; r++) {
        assert_int_not_equal(j.st[r], DSR1_OK);
        /* lost (transport noticed) or silent (timeout): either way rank 2 is named */
        assert_non_null(strstr(j.msg[r], "rank 2"));
        assert_true(j.secs[r] < 5.0);
        /* blamed on rank 2; or unknown (-1) when the other's abort notice came first */
        assert_true(culprit_of[r] == 2 || culprit_of[r] == -1);
    }
    assert_true(culprit_of[0] == 2 || culprit_of[1] == 2);
}

/* ---- tolerant groups --------------------------------------------------------------- */

/* Worker addresses, copied out of their locals (which the groups come to own). */
typedef struct {
    void *addr[COMM_MAXR];
    size_t len[COMM_MAXR];
} addrbook;

static void make_locals(int n, dsr1_ucx_local **loc, addrbook *ab)
{
    for (int r = 0; r < n; r++) {
        assert_int_equal(dsr1_ucx_local_create(&loc[r]), DSR1_OK);
        const void *a;
        dsr1_ucx_local_address(loc[r], &a, &ab->len[r]);
        ab->addr[r] = malloc(ab->len[r]);
        memcpy(ab->addr[r], a, ab->len[r]);
    }
}

static void free_book(int n, addrbook *ab)
{
    for (int r = 0; r < n; r++) free(ab->addr[r]);
}

/* Rank `rank`'s handle on a tolerant group of `size`, knowing the addresses of the ranks
 * whose bit is set in `known` (its own always). */
static dsr1_comm *tol_connect(dsr1_ucx_local *l, int rank, int size, int timeout_ms,
                              const addrbook *ab, unsigned known)
{
    const void *addrs[COMM_MAXR] = {0};
    size_t lens[COMM_MAXR] = {0};
    for (int p = 0; p < size; p++)
        if (p == rank || (known >> p & 1)) {
            addrs[p] = ab->addr[p];
            lens[p] = ab->len[p];
        }
    dsr1_ucx_group_params gp = {
        .rank = rank, .size = size, .timeout_ms = timeout_ms, .name = "world", .tolerant = true};
    dsr1_comm *c = NULL;
    assert_int_equal(dsr1_comm_ucx_connect(l, &gp, addrs, lens, &c), DSR1_OK);
    return c;
}

/* A tolerant job: every rank knows every address. */
static void run_tolerant(comm_job *j, int n, int timeout_ms, comm_rank_fn fn)
{
    dsr1_ucx_local *loc[COMM_MAXR];
    addrbook ab;
    comm_job_init(j, n, (uint64_t)time(NULL) * 2654435761u + 29, fn);
    make_locals(n, loc, &ab);
    for (int r = 0; r < n; r++) j->c[r] = tol_connect(loc[r], r, n, timeout_ms, &ab, ~0u);
    comm_job_run(j);
    for (int r = 0; r < n; r++) dsr1_comm_destroy(j->c[r]);
    free_book(n, &ab);
}

/* Sends one int32 `v` to `peer` on `tag`. */
static dsr1_status send_int(dsr1_comm *c, int peer, int tag, int32_t v)
{
    return dsr1_comm_send(c, peer, tag, &v, sizeof(v));
}

/* Receives one int32 from `peer` on `tag`: its value, or -1 (data error counted) when the
 * message is not one, or the failing status in *st. */
static int32_t recv_int(comm_job *j, dsr1_comm *c, int peer, int tag, int *src, dsr1_status *st)
{
    void *d = NULL;
    size_t len = 0;
    int32_t v = -1;
    if ((*st = dsr1_comm_recv(c, peer, tag, &d, &len, src)) != DSR1_OK) return -1;
    if (len == sizeof(v))
        memcpy(&v, d, sizeof(v));
    else
        comm_data_error(j, "tag %d: %zu bytes, 4 expected\n", tag, len);
    free(d);
    return v;
}

#define EXPECT(cond)                                                                               \
    do {                                                                                           \
        if (!(cond))                                                                               \
            comm_data_error(j, "rank %d: %s:%d: expected %s\n", r, __FILE__, __LINE__, #cond);     \
    } while (0)

/* (1) rank 2 sends rank 0 a message, then "crashes"; rank 0 still gets it, then finds
 * rank 2 lost (blamed, named), and goes on with rank 1. */
static void tol_crash_rank(comm_job *j, int r)
{
    double t0 = comm_now_s();
    dsr1_comm *c = j->c[r];
    dsr1_status st = DSR1_OK;
    int src = -1;
    if (r == 2) {
        dsr1_comm_ucx_crash_after(c, 4, 1, NULL);
        if ((st = send_int(c, 0, 7, 72)) == DSR1_OK) recv_int(j, c, 0, 4, NULL, &st);
        comm_record(j, r, st, t0); /* the hook's error */
        return;
    }
    if (r == 1) {
        if (recv_int(j, c, 0, 8, NULL, &st) == 80 && (st = send_int(c, 0, 7, 71)) == DSR1_OK &&
            recv_int(j, c, 0, 9, NULL, &st) == 90 && (st = send_int(c, 0, 10, 100)) == DSR1_OK)
            recv_int(j, c, 0, 11, NULL, &st);
        comm_record(j, r, st, t0);
        return;
    }
    /* rank 0 */
    if ((st = send_int(c, 2, 4, 40)) != DSR1_OK) goto out;
    /* what rank 2 sent before it died is still delivered */
    EXPECT(recv_int(j, c, DSR1_COMM_ANY, 7, &src, &st) == 72 && src == 2);
    if (st) goto out;
    /* a recv from rank 2 fails once the loss is noticed (long before the timeout) */
    const double t1 = comm_now_s();
    recv_int(j, c, 2, 5, NULL, &st);
    EXPECT(st != DSR1_OK && strstr(dsr1_errmsg(), "rank 2") && strstr(dsr1_errmsg(), "lost"));
    EXPECT(comm_now_s() - t1 < 4.0);
    EXPECT(dsr1_comm_culprit(c) == 2 && dsr1_comm_peer_lost(c, 2) && !dsr1_comm_peer_lost(c, 1));
    /* a send to it fails at once, naming it */
    const double t2 = comm_now_s();
    st = send_int(c, 2, 6, 60);
    EXPECT(st != DSR1_OK && strstr(dsr1_errmsg(), "rank 2") && comm_now_s() - t2 < 0.1);
    EXPECT(dsr1_comm_culprit(c) == 2);
    /* the survivors go on: recv from anyone skips the lost rank */
    if ((st = send_int(c, 1, 8, 80)) != DSR1_OK) goto out;
    EXPECT(recv_int(j, c, DSR1_COMM_ANY, 7, &src, &st) == 71 && src == 1);
    if (st || (st = send_int(c, 1, 9, 90)) != DSR1_OK) goto out;
    EXPECT(recv_int(j, c, 1, 10, NULL, &st) == 100);
    if (!st) st = send_int(c, 1, 11, 110);
out:
    comm_record(j, r, st, t0);
}

static void test_tolerant_crash(void **state)
{
    (void)state;
    static comm_job j;
    run_tolerant(&j, 3, 5000, tol_crash_rank);
    assert_int_equal(j.fails, 0);
    assert_int_equal(j.st[0], DSR1_OK);
    assert_int_equal(j.st[1], DSR1_OK);
    assert_int_not_equal(j.st[2], DSR1_OK);
    assert_non_null(strstr(j.msg[2], "test hook"));
}

/* (2) rank 2 is alive but silent for 1.25 s (timeout 0.5 s): rank 0's recv from it and
 * the first barrier of ranks 0 and 1 time out blaming it; the group is not aborted, rank 2
 * catches up (its late barrier meets the others' buffered parts) and all goes on. */
static void tol_silent_rank(comm_job *j, int r)
{
    double t0 = comm_now_s();
    dsr1_comm *c = j->c[r];
    dsr1_status st = DSR1_OK;
    if (r == 2) {
        comm_sleep_ms(1250);
        if ((st = dsr1_comm_barrier(c)) == DSR1_OK && (st = dsr1_comm_barrier(c)) == DSR1_OK &&
            recv_int(j, c, 0, 3, NULL, &st) == 30 && (st = send_int(c, 0, 4, 40)) == DSR1_OK)
            st = dsr1_comm_barrier(c);
        comm_record(j, r, st, t0);
        return;
    }
    if (r == 0) {
        recv_int(j, c, 2, 1, NULL, &st);
        EXPECT(st != DSR1_OK && strstr(dsr1_errmsg(), "rank 2") && strstr(dsr1_errmsg(), "500 ms"));
        EXPECT(comm_now_s() - t0 > 0.4 && comm_now_s() - t0 < 0.9);
        EXPECT(dsr1_comm_culprit(c) == 2 && !dsr1_comm_peer_lost(c, 2));
    } else {
        comm_sleep_ms(500);
    }
    st = dsr1_comm_barrier(c);
    EXPECT(st != DSR1_OK && strstr(dsr1_errmsg(), "rank 2") && dsr1_comm_culprit(c) == 2);
    EXPECT(!dsr1_comm_peer_lost(c, 2));
    if ((st = dsr1_comm_barrier(c)) != DSR1_OK) goto out;
    if (r == 0 && (st = send_int(c, 2, 3, 30)) == DSR1_OK)
        EXPECT(recv_int(j, c, 2, 4, NULL, &st) == 40);
    if (!st) st = dsr1_comm_barrier(c);
out:
    comm_record(j, r, st, t0);
}

static void test_tolerant_silent(void **state)
{
    (void)state;
    static comm_job j;
    run_tolerant(&j, 3, 500, tol_silent_rank);
    assert_int_equal(j.fails, 0);
    for (int r = 0; r < 3; r++) assert_int_equal(j.st[r], DSR1_OK);
}

/* (3) rank 2 knows only rank 0's address (a worker on the world group) */
static void tol_partial_rank(comm_job *j, int r)
{
    double t0 = comm_now_s();
    dsr1_comm *c = j->c[r];
    dsr1_status st = DSR1_OK;
    if (r == 0) {
        int seen = 0, src = -1;
        for (int k = 0; k < 2 && !st; k++) {
            int32_t v = recv_int(j, c, DSR1_COMM_ANY, 1, &src, &st);
            EXPECT(st || ((src == 1 || src == 2) && v == 10 + src));
            if (!st) seen |= 1 << src;
        }
        EXPECT(st || seen == 6);
        for (int p = 1; p < 3 && !st; p++) st = send_int(c, p, 2, 20 + p);
        for (int p = 1; p < 3 && !st; p++) EXPECT(recv_int(j, c, p, 3, NULL, &st) == 30 + p);
    } else {
        if (r == 2) {
            EXPECT(dsr1_comm_peer_lost(c, 1) && !dsr1_comm_peer_lost(c, 0));
            const double t1 = comm_now_s();
            dsr1_status s2 = send_int(c, 1, 1, 99);
            EXPECT(s2 != DSR1_OK && strstr(dsr1_errmsg(), "rank 1") && comm_now_s() - t1 < 0.1);
            EXPECT(dsr1_comm_culprit(c) == 1);
            void *d;
            size_t len;
            EXPECT(dsr1_comm_recv(c, 1, 1, &d, &len, NULL) != DSR1_OK && comm_now_s() - t1 < 0.1);
        }
        if ((st = send_int(c, 0, 1, 10 + r)) == DSR1_OK) {
            EXPECT(recv_int(j, c, 0, 2, NULL, &st) == 20 + r);
            if (!st) st = send_int(c, 0, 3, 30 + r);
            /* stay until rank 0 has it: its last send goes to rank 2, so wait for a closing word */
            if (!st) EXPECT(recv_int(j, c, 0, 4, NULL, &st) == 4);
        }
    }
    if (r == 0)
        for (int p = 1; p < 3 && !st; p++) st = send_int(c, p, 4, 4);
    comm_record(j, r, st, t0);
}

static void test_tolerant_partial(void **state)
{
    (void)state;
    static comm_job j;
    dsr1_ucx_local *loc[3];
    addrbook ab;
    comm_job_init(&j, 3, 1, tol_partial_rank);
    make_locals(3, loc, &ab);
    j.c[0] = tol_connect(loc[0], 0, 3, 5000, &ab, ~0u);
    j.c[1] = tol_connect(loc[1], 1, 3, 5000, &ab, ~0u);
    j.c[2] = tol_connect(loc[2], 2, 3, 5000, &ab, 1u); /* rank 0 only */
    comm_job_run(&j);
    for (int r = 0; r < 3; r++) dsr1_comm_destroy(j.c[r]);
    free_book(3, &ab);
    assert_int_equal(j.fails, 0);
    for (int r = 0; r < 3; r++) assert_int_equal(j.st[r], DSR1_OK);
}

/* (4) rank 1 dies; a new process (thread 2 here) takes its place: rank 0 replaces the
 * peer, the newcomer connects knowing rank 0's address only. */
static void tol_replace_rank(comm_job *j, int r)
{
    double t0 = comm_now_s();
    dsr1_comm *c = j->c[r];
    dsr1_status st = DSR1_OK;
    const addrbook *ab = j->user;
    if (r == 1) { /* the old rank 1 */
        dsr1_comm_ucx_crash_after(c, 4, 1, NULL);
        if ((st = send_int(c, 0, 1, 11)) == DSR1_OK) recv_int(j, c, 0, 4, NULL, &st);
        comm_record(j, r, st, t0);
        return;
    }
    if (r == 2) { /* the new rank 1 */
        EXPECT(recv_int(j, c, 0, 6, NULL, &st) == 60);
        if (!st) st = send_int(c, 0, 7, 70);
        if (!st) EXPECT(recv_int(j, c, 0, 8, NULL, &st) == 80);
        comm_record(j, r, st, t0);
        return;
    }
    EXPECT(recv_int(j, c, 1, 1, NULL, &st) == 11);
    if (st || (st = send_int(c, 1, 4, 40)) != DSR1_OK) goto out;
    recv_int(j, c, 1, 5, NULL, &st);
    EXPECT(st != DSR1_OK && dsr1_comm_culprit(c) == 1 && dsr1_comm_peer_lost(c, 1));
    if ((st = dsr1_comm_ucx_replace_peer(c, 1, ab->addr[2], ab->len[2])) != DSR1_OK) goto out;
    EXPECT(dsr1_comm_culprit(c) == -1 && !dsr1_comm_peer_lost(c, 1));
    if ((st = send_int(c, 1, 6, 60)) != DSR1_OK) goto out;
    EXPECT(recv_int(j, c, 1, 7, NULL, &st) == 70);
    if (!st) st = send_int(c, 1, 8, 80);
out:
    comm_record(j, r, st, t0);
}

static void test_tolerant_replace(void **state)
{
    (void)state;
    static comm_job j;
    dsr1_ucx_local *loc[3];
    addrbook ab;
    comm_job_init(&j, 3, 1, tol_replace_rank);
    make_locals(3, loc, &ab);
    j.user = &ab;
    j.c[0] = tol_connect(loc[0], 0, 2, 5000, &ab, ~0u);
    j.c[1] = tol_connect(loc[1], 1, 2, 5000, &ab, ~0u);
    /* the newcomer is rank 1 of the 2, at the address of local 2, knowing rank 0 only */
    addrbook nb = {{ab.addr[0], ab.addr[2]}, {ab.len[0], ab.len[2]}};
    j.c[2] = tol_connect(loc[2], 1, 2, 5000, &nb, 1u);
    comm_job_run(&j);
    for (int r = 0; r < 3; r++) dsr1_comm_destroy(j.c[r]);
    free_book(3, &ab);
    assert_int_equal(j.fails, 0);
    assert_int_equal(j.st[0], DSR1_OK);
    assert_int_equal(j.st[2], DSR1_OK);
    assert_non_null(strstr(j.msg[1], "test hook"));
}

/* replace_peer is refused on a group that is not tolerant */
static void test_replace_needs_tolerant(void **state)
{
    (void)state;
    dsr1_comm *c[2];
    assert_int_equal(dsr1_comm_ucx_create_local(2, 1000, "test", NULL, c), DSR1_OK);
    const void *a;
    size_t len;
    dsr1_ucx_local *l;
    assert_int_equal(dsr1_ucx_local_create(&l), DSR1_OK);
    dsr1_ucx_local_address(l, &a, &len);
    assert_int_equal(dsr1_comm_ucx_replace_peer(c[0], 1, a, len), DSR1_ERR_INVALID_ARG);
    assert_int_equal(dsr1_comm_culprit(c[0]), -1);
    assert_false(dsr1_comm_peer_lost(c[0], 1));
    dsr1_ucx_local_destroy(l);
    for (int r = 0; r < 2; r++) dsr1_comm_destroy(c[r]);
}

/* The in-process backend's culprit: the rank a timed-out barrier waited for (on the rank
 * whose timer fired and on the one its abort woke), and the peer of a timed-out recv. */
static void inproc_late_rank(comm_job *j, int r)
{
    double t0 = comm_now_s();
    if (r < 2) {
        comm_record(j, r, dsr1_comm_barrier(j->c[r]), t0);
        culprit_of[r] = dsr1_comm_culprit(j->c[r]);
    } else {
        comm_sleep_ms(600);
        culprit_of[r] = dsr1_comm_culprit(j->c[r]); /* no failed call yet */
    }
}

static void test_inproc_culprit(void **state)
{
    (void)state;
    static comm_job j;
    comm_job_init(&j, 3, 1, inproc_late_rank);
    assert_int_equal(dsr1_comm_inproc_create(3, 300, j.c), DSR1_OK);
    comm_job_run(&j);
    for (int r = 0; r < 3; r++) dsr1_comm_destroy(j.c[r]);
    assert_int_not_equal(j.st[0], DSR1_OK);
    assert_int_not_equal(j.st[1], DSR1_OK);
    assert_int_equal(culprit_of[0], 2);
    assert_int_equal(culprit_of[1], 2);
    assert_int_equal(culprit_of[2], -1);
    dsr1_comm *c[2];
    assert_int_equal(dsr1_comm_inproc_create(2, 100, c), DSR1_OK);
    void *d;
    size_t len;
    assert_int_not_equal(dsr1_comm_recv(c[0], 1, 3, &d, &len, NULL), DSR1_OK);
    assert_int_equal(dsr1_comm_culprit(c[0]), 1);
    assert_int_not_equal(dsr1_comm_recv(c[0], DSR1_COMM_ANY, 3, &d, &len, NULL), DSR1_OK);
    assert_int_equal(dsr1_comm_culprit(c[0]), -1);
    for (int r = 0; r < 2; r++) dsr1_comm_destroy(c[r]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alltoallv_random),
        cmocka_unit_test(test_p2p),
        cmocka_unit_test(test_size_mismatch),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_abort),
        cmocka_unit_test(test_crash),
        cmocka_unit_test(test_tolerant_crash),
        cmocka_unit_test(test_tolerant_silent),
        cmocka_unit_test(test_tolerant_partial),
        cmocka_unit_test(test_tolerant_replace),
        cmocka_unit_test(test_replace_needs_tolerant),
        cmocka_unit_test(test_inproc_culprit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

#else

int main(void)
{
    printf("skip: built without UCX\n");
    return 77;
}

#endif
