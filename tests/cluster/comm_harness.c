/* The thread harness of the comm backend tests and their shared random all-to-all
 * (comm_harness.h). */
#include "comm_harness.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

double comm_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void comm_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

uint64_t comm_rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

void comm_data_error(comm_job *j, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&j->mu);
    j->fails++;
    pthread_mutex_unlock(&j->mu);
}

void comm_record(comm_job *j, int r, dsr1_status st, double t0)
{
    j->st[r] = st;
    j->secs[r] = comm_now_s() - t0;
    snprintf(j->msg[r], sizeof(j->msg[r]), "%s", st ? dsr1_errmsg() : "");
    if (st) fprintf(stderr, "rank %d: %s (after %.2f s)\n", r, j->msg[r], j->secs[r]);
}

void comm_job_init(comm_job *j, int n, uint64_t seed, comm_rank_fn fn)
{
    memset(j, 0, sizeof(*j));
    j->n = n;
    j->fn = fn;
    j->seed = seed;
}

typedef struct {
    comm_job *j;
    int r;
} thread_arg;

static void *thread_main(void *p)
{
    const thread_arg *a = p;
    comm_job *j = a->j;
    if (j->begin && !j->begin(j, a->r)) return NULL;
    j->fn(j, a->r);
    if (j->end) j->end(j, a->r);
    return NULL;
}

void comm_job_run(comm_job *j)
{
    assert_true(j->n >= 1 && j->n <= COMM_MAXR);
    pthread_mutex_init(&j->mu, NULL);
    pthread_t t[COMM_MAXR];
    thread_arg a[COMM_MAXR];
    for (int r = 0; r < j->n; r++) {
        a[r] = (thread_arg){j, r};
        assert_int_equal(pthread_create(&t[r], NULL, thread_main, &a[r]), 0);
    }
    for (int r = 0; r < j->n; r++) pthread_join(t[r], NULL);
    pthread_mutex_destroy(&j->mu);
}

/* ---- all-to-all -------------------------------------------------------------------- */

size_t comm_pair_bytes(uint64_t seed, int k, int s, int d, size_t max_bytes)
{
    uint64_t x = seed ^ ((uint64_t)k * 1000003u + (uint64_t)s * 101u + (uint64_t)d + 1);
    for (int i = 0; i < 3; i++) comm_rnd(&x);
    switch (x % 4) {
    case 0:
        return 0;
    case 1:
        return x % 97;
    case 2:
        return (x >> 8) % 5000;
    default:
        return (x >> 8) % max_bytes; /* past the backend's eager or staging sizes */
    }
}

unsigned char comm_pair_byte(uint64_t seed, int k, int s, int d, size_t i)
{
    return (unsigned char)((i * 131u + (unsigned)s * 7u + (unsigned)d * 13u + (unsigned)k) ^
                           (seed >> 11));
}

void comm_a2a_rank(comm_job *j, int r, size_t max_bytes)
{
    const int n = j->n;
    const double t0 = comm_now_s();
    for (int k = 0; k < 12; k++) {
        size_t sb[COMM_MAXR], rb[COMM_MAXR], so = 0, ro = 0;
        for (int p = 0; p < n; p++) {
            sb[p] = comm_pair_bytes(j->seed, k, r, p, max_bytes);
            so += sb[p];
        }
        /* learn the receive sizes through alltoall_sizes, then check them */
        dsr1_status st = dsr1_comm_alltoall_sizes(j->c[r], sb, rb);
        if (st) {
            comm_record(j, r, st, t0);
            return;
        }
        for (int p = 0; p < n; p++) {
            const size_t want = comm_pair_bytes(j->seed, k, p, r, max_bytes);
            if (rb[p] != want)
                comm_data_error(j, "round %d: rank %d expects %zu bytes from %d, told %zu\n", k, r,
                                want, p, rb[p]);
            ro += rb[p];
        }
        unsigned char *send = malloc(so + 1), *recv = malloc(ro + 1);
        if (!send || !recv) abort(); /* no cmocka assertions outside the test's thread */
        for (size_t p = 0, o = 0; p < (size_t)n; o += sb[p], p++)
            for (size_t i = 0; i < sb[p]; i++)
                send[o + i] = comm_pair_byte(j->seed, k, r, (int)p, i);
        memset(recv, 0xee, ro + 1);
        st = dsr1_comm_alltoallv(j->c[r], send, sb, recv, rb);
        if (!st) {
            size_t o = 0;
            for (int p = 0; p < n; o += rb[p], p++)
                for (size_t i = 0; i < rb[p]; i++)
                    if (recv[o + i] != comm_pair_byte(j->seed, k, p, r, i)) {
                        comm_data_error(j, "round %d: rank %d: byte %zu from %d wrong\n", k, r, i,
                                        p);
                        break;
                    }
            if (recv[ro] != 0xee) comm_data_error(j, "rank %d: write past the receive buffer\n", r);
        }
        free(send);
        free(recv);
        if (st) {
            comm_record(j, r, st, t0);
            return;
        }
    }
    comm_record(j, r, dsr1_comm_barrier(j->c[r]), t0);
}
