/* Persistent pthread pool (see threadpool.h). A generation counter tells workers that a new
 * job was posted; `pending` counts chunks not yet finished. */
#include "threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "log.h"

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#else
#define cpu_relax() ((void)0)
#endif

struct dsr1_pool {
    int nthreads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv_job, cv_done;
    atomic_int generation;
    atomic_int pending;
    int stop;
    /* the current job */
    dsr1_pool_fn fn;
    void *arg;
    int n, nchunks;
};

typedef struct {
    dsr1_pool *p;
    int tid;
} pool_thread_arg;

static void run_chunk(dsr1_pool *p, int tid)
{
    if (tid >= p->nchunks) return;
    int begin = (int)((long)p->n * tid / p->nchunks);
    int end = (int)((long)p->n * (tid + 1) / p->nchunks);
    if (begin < end) p->fn(p->arg, begin, end, tid);
}

static void *pool_main(void *varg)
{
    pool_thread_arg a = *(pool_thread_arg *)varg;
    free(varg);
    dsr1_pool *p = a.p;
    int seen = 0;
    for (;;) {
        /* spin briefly: decode steps post many tiny jobs back to back */
        for (int i = 0; i < 20000 && atomic_load(&p->generation) == seen; i++)
            cpu_relax();
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->generation) == seen && !p->stop) pthread_cond_wait(&p->cv_job, &p->mu);
        if (p->stop) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        seen = atomic_load(&p->generation);
        pthread_mutex_unlock(&p->mu);
        run_chunk(p, a.tid);
        if (atomic_fetch_sub(&p->pending, 1) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
        }
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
    if (nthreads > 1024) return dsr1_error(DSR1_ERR_INVALID_ARG, "thread count %d too large", nthreads);
    dsr1_pool *p = calloc(1, sizeof(*p));
    if (!p) return dsr1_error(DSR1_ERR_NOMEM, "thread pool: out of memory");
    p->nthreads = nthreads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_job, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    p->threads = calloc((size_t)nthreads, sizeof(pthread_t));
    if (!p->threads) goto err_free;
    for (int t = 1; t < nthreads; t++) {
        pool_thread_arg *a = malloc(sizeof(*a));
        if (!a) goto err_threads;
        a->p = p;
        a->tid = t;
        if (pthread_create(&p->threads[t], NULL, pool_main, a) != 0) {
            free(a);
            p->nthreads = t;
            goto err_threads;
        }
    }
    *out = p;
    return DSR1_OK;
err_threads:
    dsr1_pool_destroy(p);
    return dsr1_error(DSR1_ERR_NOMEM, "thread pool: cannot start %d threads", nthreads);
err_free:
    free(p);
    return dsr1_error(DSR1_ERR_NOMEM, "thread pool: out of memory");
}

void dsr1_pool_destroy(dsr1_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv_job);
    pthread_mutex_unlock(&p->mu);
    for (int t = 1; t < p->nthreads; t++) pthread_join(p->threads[t], NULL);
    free(p->threads);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv_job);
    pthread_cond_destroy(&p->cv_done);
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
    int nchunks = p ? p->nthreads : 1;
    if (nchunks > (n + grain - 1) / grain) nchunks = (n + grain - 1) / grain;
    if (nchunks <= 1) {
        fn(arg, 0, n, 0);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    p->n = n;
    p->nchunks = nchunks;
    atomic_store(&p->pending, p->nthreads - 1);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->generation, 1);
    pthread_cond_broadcast(&p->cv_job);
    pthread_mutex_unlock(&p->mu);
    run_chunk(p, 0);
    /* wait for the other threads (they decrement even when they had no chunk) */
    for (int i = 0; i < 200000 && atomic_load(&p->pending) > 0; i++) cpu_relax();
    if (atomic_load(&p->pending) > 0) {
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->pending) > 0) pthread_cond_wait(&p->cv_done, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}
