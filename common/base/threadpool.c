/* Persistent pthread pool (see threadpool.h).
 *
 * A job is split into chunks that participants claim one at a time from a shared atomic
 * word holding (job generation << 32 | next chunk). The caller claims chunks too, so when
 * the machine is oversubscribed and a worker thread is not running, the caller simply does
 * that worker's share instead of waiting for it to be scheduled. A worker that wakes late
 * cannot claim a chunk of a finished job: its compare-and-swap names the generation it
 * read, and the word has moved on. The job's fields are read between loading the word and
 * the successful CAS, during which the job cannot have ended (an unclaimed chunk remains).
 *
 * Results never depend on the split: every kernel computes each output element in a fixed
 * order whatever the chunk boundaries. */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#else
#define cpu_relax() ((void)0)
#endif

struct dsr1_pool {
    int nthreads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
    _Atomic uint64_t word; /* generation << 32 | next chunk to claim */
    atomic_int done;       /* chunks finished in the current job */
    /* the current job: written by the caller before it publishes the job's generation.
     * Atomic (relaxed) because a worker late from the previous job may read them while they
     * change; its claim then fails on the generation, but the read must not be a race. */
    _Atomic(dsr1_pool_fn) fn;
    _Atomic(void *) arg;
    atomic_int n, nchunks;
};

static uint32_t word_gen(uint64_t w)
{
    return (uint32_t)(w >> 32);
}

/* Claim and run chunks of generation `gen` until none is left. */
static void work(dsr1_pool *p, uint32_t gen, int tid)
{
    for (;;) {
        uint64_t w = atomic_load_explicit(&p->word, memory_order_acquire);
        if (word_gen(w) != gen) return;
        const int c = (int)(uint32_t)w;
        const int nchunks = atomic_load_explicit(&p->nchunks, memory_order_relaxed);
        const int n = atomic_load_explicit(&p->n, memory_order_relaxed);
        dsr1_pool_fn fn = atomic_load_explicit(&p->fn, memory_order_relaxed);
        void *arg = atomic_load_explicit(&p->arg, memory_order_relaxed);
        if (c >= nchunks) return;
        if (!atomic_compare_exchange_weak_explicit(&p->word, &w, w + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        const int begin = (int)((long)n * c / nchunks), end = (int)((long)n * (c + 1) / nchunks);
        if (begin < end) fn(arg, begin, end, tid);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
    }
}

typedef struct {
    dsr1_pool *p;
    int tid;
} pool_thread_arg;

static void *pool_main(void *varg)
{
    pool_thread_arg a = *(pool_thread_arg *)varg;
    free(varg);
    dsr1_pool *p = a.p;
    uint32_t seen = 0;
    for (;;) {
        uint32_t gen = word_gen(atomic_load_explicit(&p->word, memory_order_acquire));
        /* spin briefly: a decode step posts many small jobs back to back */
        for (int i = 0; i < 4000 && gen == seen; i++) {
            cpu_relax();
            gen = word_gen(atomic_load_explicit(&p->word, memory_order_acquire));
        }
        if (gen == seen) {
            pthread_mutex_lock(&p->mu);
            while (!p->stop &&
                   (gen = word_gen(atomic_load_explicit(&p->word, memory_order_acquire))) == seen)
                pthread_cond_wait(&p->cv, &p->mu);
            int stop = p->stop;
            pthread_mutex_unlock(&p->mu);
            if (stop) return NULL;
        }
        seen = gen;
        work(p, gen, a.tid);
    }
}

dsr1_status dsr1_pool_create(int nthreads, dsr1_pool **out)
{
    if (nthreads <= 0) {
        const char *env = getenv("DSR1_THREADS");
        nthreads = env ? atoi(env) : 0;
        if (nthreads <= 0) nthreads = (int)sysconf(_SC_NPROCESSORS_ONLN);
        if (nthreads <= 0) nthreads = 1;
    }
    if (nthreads > 1024)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "thread count %d too large (max 1024)", nthreads);
    dsr1_pool *p = calloc(1, sizeof(*p));
    if (!p) return dsr1_error(DSR1_ERR_NOMEM, "thread pool: out of memory");
    p->threads = calloc((size_t)nthreads, sizeof(pthread_t));
    if (!p->threads) {
        free(p);
        return dsr1_error(DSR1_ERR_NOMEM, "thread pool: out of memory");
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->nthreads = 1;
    for (int t = 1; t < nthreads; t++) {
        pool_thread_arg *a = malloc(sizeof(*a));
        if (!a) break;
        a->p = p;
        a->tid = t;
        if (pthread_create(&p->threads[t], NULL, pool_main, a) != 0) {
            free(a);
            break;
        }
        p->nthreads++;
    }
    if (p->nthreads != nthreads) {
        dsr1_pool_destroy(p);
        return dsr1_error(DSR1_ERR_NOMEM, "thread pool: cannot start %d threads", nthreads);
    }
    *out = p;
    return DSR1_OK;
}

void dsr1_pool_destroy(dsr1_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int t = 1; t < p->nthreads; t++) pthread_join(p->threads[t], NULL);
    free(p->threads);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
}

int dsr1_pool_size(const dsr1_pool *p)
{
    return p ? p->nthreads : 1;
}

void dsr1_pool_run(dsr1_pool *p, int n, int grain, dsr1_pool_fn fn, void *arg)
{
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    /* a few chunks per thread, so that uneven progress evens out */
    int nchunks = p ? p->nthreads * 4 : 1;
    if (nchunks > (n + grain - 1) / grain) nchunks = (n + grain - 1) / grain;
    if (nchunks <= 1 || p->nthreads == 1) {
        fn(arg, 0, n, 0);
        return;
    }
    atomic_store_explicit(&p->fn, fn, memory_order_relaxed);
    atomic_store_explicit(&p->arg, arg, memory_order_relaxed);
    atomic_store_explicit(&p->n, n, memory_order_relaxed);
    atomic_store_explicit(&p->nchunks, nchunks, memory_order_relaxed);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    uint32_t gen = word_gen(atomic_load_explicit(&p->word, memory_order_relaxed)) + 1;
    atomic_store_explicit(&p->word, (uint64_t)gen << 32, memory_order_release);
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    work(p, gen, 0);
    /* only chunks already claimed by running threads remain */
    for (int i = 0; atomic_load_explicit(&p->done, memory_order_acquire) < nchunks; i++) {
        if (i < 1000)
            cpu_relax();
        else
            sched_yield();
    }
}
