/* A small persistent thread pool for data-parallel kernels.
 *
 * dsr1_pool_run() splits [0, n) into contiguous chunks, one per thread (the caller is
 * thread 0 and works too), and returns when all are done. Workers wait on a condition
 * variable between calls, so an idle pool costs nothing; a short spin before sleeping
 * keeps per-call dispatch cheap for the many small kernels of a decode step.
 * One pool is used by one caller thread at a time (not re-entrant). */
#ifndef DSR1_THREADPOOL_H
#define DSR1_THREADPOOL_H

#include "status.h"

typedef struct dsr1_pool dsr1_pool;

/* fn handles items [begin, end) on thread `tid` (0 <= tid < nthreads). */
typedef void (*dsr1_pool_fn)(void *arg, int begin, int end, int tid);

/* nthreads <= 0: use DSR1_THREADS from the environment, else the number of online CPUs. */
dsr1_status dsr1_pool_create(int nthreads, dsr1_pool **out);
void dsr1_pool_destroy(dsr1_pool *p);
int dsr1_pool_size(const dsr1_pool *p);
/* Run fn over [0, n) in at most size(p) contiguous chunks. `grain`: the smallest chunk
 * worth a thread (fewer threads are used for small n). p may be NULL: runs inline. */
void dsr1_pool_run(dsr1_pool *p, int n, int grain, dsr1_pool_fn fn, void *arg);

#endif
