/* The thread harness of the comm backend tests (test_comm_ucx.c, test_comm_nccl.c): every
 * rank of a group is a thread of the test process, running one rank function; the harness
 * starts and joins the threads, keeps each rank's status, error message and seconds, counts
 * the data errors the ranks find (their messages go to stderr), and holds the random
 * all-to-all that both backends must pass. How handles are made is the test's business:
 * before comm_job_run (all at once, into c[]) or in each thread in the begin hook. */
#ifndef DSR1_TESTS_COMM_HARNESS_H
#define DSR1_TESTS_COMM_HARNESS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "comm.h"
#include "status.h"

#define COMM_MAXR 8 /* ranks of a job at most */

typedef struct comm_job comm_job;
/* What rank r does; it ends with comm_record (of its status) unless it only waits. */
typedef void (*comm_rank_fn)(comm_job *j, int r);
/* Optional, in rank r's thread: before fn (false: skip fn and end), and after it. */
typedef bool (*comm_begin_fn)(comm_job *j, int r);
typedef void (*comm_end_fn)(comm_job *j, int r);

struct comm_job {
    dsr1_comm *c[COMM_MAXR];
    int n;
    comm_rank_fn fn;
    comm_begin_fn begin; /* may be NULL */
    comm_end_fn end;     /* may be NULL */
    void *user;          /* the test's own state (backend settings) */
    /* results per rank */
    dsr1_status st[COMM_MAXR];
    char msg[COMM_MAXR][1024];
    double secs[COMM_MAXR];
    int fails; /* data errors found by the rank threads */
    pthread_mutex_t mu;
    uint64_t seed; /* of the random data */
};

/* Clears j and sets up a job of n ranks (n <= COMM_MAXR) running fn; the caller then sets
 * begin, end, user and the handles as it needs. */
void comm_job_init(comm_job *j, int n, uint64_t seed, comm_rank_fn fn);
/* Runs the n rank threads (begin, fn, end in each) and joins them. Fails the cmocka test
 * when a thread cannot be started. */
void comm_job_run(comm_job *j);

/* Rank r's result: st, its error message when not ok (also printed) and the seconds since
 * t0. */
void comm_record(comm_job *j, int r, dsr1_status st, double t0);
/* Prints a data error found by a rank (printf format) and counts it in j->fails. */
void comm_data_error(comm_job *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

double comm_now_s(void); /* monotonic seconds */
void comm_sleep_ms(int ms);
uint64_t comm_rnd(uint64_t *s); /* xorshift64, s != 0 */

/* Bytes rank s sends rank d in round k of the random all-to-all: often zero, often small,
 * up to max_bytes; and byte i of them. The same on both sides. */
size_t comm_pair_bytes(uint64_t seed, int k, int s, int d, size_t max_bytes);
unsigned char comm_pair_byte(uint64_t seed, int k, int s, int d, size_t i);
/* Rank r's part of 12 rounds of all-to-all of random sizes (messages up to max_bytes) and
 * random bytes: the sizes through alltoall_sizes, the bytes through alltoallv, each checked
 * (data errors counted), then a barrier; records the first failing status or the barrier's. */
void comm_a2a_rank(comm_job *j, int r, size_t max_bytes);

#endif
