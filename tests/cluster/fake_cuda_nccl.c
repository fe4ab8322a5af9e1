/* A stand-in for the CUDA runtime and NCCL, made of threads and host memory, so that the
 * NCCL backend (common/net/comm_nccl.c) runs its logic in CI, which has no GPU: test_comm_nccl
 * linked against this file instead of libcudart/libnccl (symbols defined in the executable
 * take precedence). It models what comm_nccl.c relies on, not all of NCCL: blocking
 * p2p matched in order per peer, grouped sends/receives, all-reduce, async errors, abort.
 * FAKE_NDEV sets the number of devices (default 4). Proves our logic, not NCCL's. */
#include <cuda_runtime.h>
#include <nccl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int ndev(void)
{
    const char *e = getenv("FAKE_NDEV");
    return e ? atoi(e) : 4;
}
static __thread int cur_dev;
static __thread cudaError_t last_err;
cudaError_t cudaGetDeviceCount(int *n)
{
    int k = ndev();
    if (k < 0) return cudaErrorInsufficientDriver;
    if (!k) return cudaErrorNoDevice;
    *n = k;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int d)
{
    if (d < 0 || d >= ndev()) return last_err = cudaErrorInvalidDevice;
    cur_dev = d;
    return cudaSuccess;
}
cudaError_t cudaGetDevice(int *d)
{
    *d = cur_dev;
    return cudaSuccess;
}
const char *cudaGetErrorString(cudaError_t e)
{
    return e == cudaErrorInvalidDevice ? "invalid device ordinal"
           : e == cudaErrorNotReady    ? "not ready"
                                       : "fake cuda error";
}
cudaError_t cudaGetLastError(void)
{
    cudaError_t e = last_err;
    last_err = cudaSuccess;
    return e;
}
cudaError_t cudaMalloc(void **p, size_t n)
{
    *p = malloc(n ? n : 1);
    memset(*p, 0xcd, n);
    return cudaSuccess;
}
cudaError_t cudaFree(void *p)
{
    free(p);
    return cudaSuccess;
}
cudaError_t cudaHostAlloc(void **p, size_t n, unsigned f)
{
    (void)f;
    *p = malloc(n ? n : 1);
    return cudaSuccess;
}
cudaError_t cudaFreeHost(void *p)
{
    free(p);
    return cudaSuccess;
}
cudaError_t cudaMemset(void *p, int v, size_t n)
{
    memset(p, v, n);
    return cudaSuccess;
}

typedef struct item {
    int kind;
    void *buf;
    size_t n;
    int peer;
    struct ncclComm *c;
    void *se;
    uint64_t seq;
    int done;
} item;
typedef struct gop {
    item *it;
    int n;
} gop;
enum { K_COPY, K_GROUP };
typedef struct op {
    struct op *next;
    int kind;
    void *dst;
    const void *src;
    size_t n;
    gop *g;
} op;
struct CUstream_st {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    op *head, *tail;
    int running, stop;
    pthread_t th;
};

static void exec_gop(gop *g);
static void *stream_main(void *p)
{
    struct CUstream_st *s = p;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->head && !s->stop) pthread_cond_wait(&s->cv, &s->mu);
        if (!s->head) break;
        op *o = s->head;
        s->head = o->next;
        if (!s->head) s->tail = NULL;
        s->running = 1;
        pthread_mutex_unlock(&s->mu);
        if (o->kind == K_COPY)
            memcpy(o->dst, o->src, o->n);
        else
            exec_gop(o->g);
        free(o);
        pthread_mutex_lock(&s->mu);
        s->running = 0;
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}
static void enqueue(struct CUstream_st *s, op *o)
{
    pthread_mutex_lock(&s->mu);
    o->next = NULL;
    if (s->tail)
        s->tail->next = o;
    else
        s->head = o;
    s->tail = o;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *out, unsigned f)
{
    (void)f;
    struct CUstream_st *s = calloc(1, sizeof(*s));
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    pthread_create(&s->th, NULL, stream_main, s);
    *out = s;
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->th, NULL);
    free(s);
    return cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t s)
{
    pthread_mutex_lock(&s->mu);
    int busy = s->head || s->running;
    pthread_mutex_unlock(&s->mu);
    return busy ? cudaErrorNotReady : cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *d, const void *src, size_t n, enum cudaMemcpyKind k,
                            cudaStream_t s)
{
    (void)k;
    op *o = calloc(1, sizeof(*o));
    o->kind = K_COPY;
    o->dst = d;
    o->src = src;
    o->n = n;
    enqueue(s, o);
    return cudaSuccess;
}

/* ---- NCCL ---- */
static pthread_mutex_t W = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t WC = PTHREAD_COND_INITIALIZER;
typedef struct sendent {
    struct sendent *next;
    uint64_t seq;
    void *buf;
    size_t n;
    int done;
} sendent;
typedef struct fgroup {
    struct fgroup *next;
    unsigned char id[16];
    int n, joined, finalized;
    struct ncclComm **comms;
    sendent **chan;
    uint64_t *sseq, *rseq;
    int ar_count;
    uint64_t ar_gen;
} fgroup;
struct ncclComm {
    fgroup *g;
    int rank, aborted, inflight, finalizing, blocking;
    ncclResult_t err;
};
static fgroup *groups;
static __thread int gdepth;
static __thread gop *pending;
static __thread cudaStream_t pending_stream;

ncclResult_t ncclGetUniqueId(ncclUniqueId *u)
{
    static atomic_uint ctr;
    memset(u, 0, sizeof(*u));
    unsigned v[4] = {(unsigned)getpid(), (unsigned)time(NULL), atomic_fetch_add(&ctr, 1) + 1,
                     0xabcd};
    memcpy(u->internal, v, 16);
    return ncclSuccess;
}
const char *ncclGetErrorString(ncclResult_t r)
{
    return r == ncclInvalidUsage      ? "invalid usage"
           : r == ncclInvalidArgument ? "invalid argument"
                                      : "fake nccl error";
}
const char *ncclGetLastError(ncclComm_t c)
{
    (void)c;
    return "fake detail";
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t *out, int n, ncclUniqueId id, int rank,
                                    ncclConfig_t *cfg)
{
    pthread_mutex_lock(&W);
    fgroup *g = groups;
    while (g && memcmp(g->id, id.internal, 16)) g = g->next;
    if (!g) {
        g = calloc(1, sizeof(*g));
        memcpy(g->id, id.internal, 16);
        g->n = n;
        g->comms = calloc(n, sizeof(void *));
        g->chan = calloc((size_t)n * n, sizeof(void *));
        g->sseq = calloc((size_t)n * n, 8);
        g->rseq = calloc((size_t)n * n, 8);
        g->next = groups;
        groups = g;
    }
    if (g->n != n || rank < 0 || rank >= n || g->comms[rank]) {
        pthread_mutex_unlock(&W);
        return ncclInvalidUsage;
    }
    struct ncclComm *c = calloc(1, sizeof(*c));
    c->g = g;
    c->rank = rank;
    c->blocking = cfg->blocking != 0;
    g->comms[rank] = c;
    g->joined++;
    pthread_cond_broadcast(&WC);
    *out = c;
    if (c->blocking)
        while (g->joined < g->n) pthread_cond_wait(&WC, &W);
    pthread_mutex_unlock(&W);
    return c->blocking ? ncclSuccess : ncclInProgress;
}
ncclResult_t ncclCommGetAsyncError(ncclComm_t c, ncclResult_t *r)
{
    if (!c) return ncclInvalidArgument;
    pthread_mutex_lock(&W);
    if (c->err)
        *r = c->err;
    else if (c->g->joined < c->g->n)
        *r = ncclInProgress;
    else if (c->finalizing && c->g->finalized < c->g->n)
        *r = ncclInProgress;
    else
        *r = ncclSuccess;
    pthread_mutex_unlock(&W);
    return ncclSuccess;
}
ncclResult_t ncclCommAbort(ncclComm_t c)
{
    pthread_mutex_lock(&W);
    c->aborted = 1;
    pthread_cond_broadcast(&WC);
    while (c->inflight) pthread_cond_wait(&WC, &W);
    pthread_mutex_unlock(&W);
    return ncclSuccess; /* leaked on purpose: queued ops may still name it */
}
ncclResult_t ncclCommFinalize(ncclComm_t c)
{
    pthread_mutex_lock(&W);
    c->finalizing = 1;
    c->g->finalized++;
    pthread_mutex_unlock(&W);
    return c->blocking ? ncclSuccess : ncclInProgress;
}
ncclResult_t ncclCommDestroy(ncclComm_t c)
{
    (void)c;
    return ncclSuccess;
}

static ncclResult_t add(int kind, void *buf, size_t n, int peer, ncclComm_t c, cudaStream_t s)
{
    if (!c || c->aborted) return ncclInvalidArgument;
    if (peer < 0 || peer >= c->g->n) return ncclInvalidArgument;
    if (!pending) pending = calloc(1, sizeof(gop));
    pending->it = realloc(pending->it, sizeof(item) * (size_t)(pending->n + 1));
    pending->it[pending->n++] = (item){kind, buf, n, peer, c, NULL, 0, 0};
    pending_stream = s;
    if (gdepth) return ncclSuccess;
    op *o = calloc(1, sizeof(*o));
    o->kind = K_GROUP;
    o->g = pending;
    pending = NULL;
    enqueue(s, o);
    return c->blocking ? ncclSuccess : ncclInProgress;
}
ncclResult_t ncclGroupStart(void)
{
    gdepth++;
    return ncclSuccess;
}
ncclResult_t ncclGroupEnd(void)
{
    if (--gdepth || !pending) return ncclSuccess;
    ncclComm_t c = pending->it[0].c;
    op *o = calloc(1, sizeof(*o));
    o->kind = K_GROUP;
    o->g = pending;
    pending = NULL;
    enqueue(pending_stream, o);
    return c->blocking ? ncclSuccess : ncclInProgress;
}
enum { I_SEND, I_RECV, I_AR };
ncclResult_t ncclSend(const void *b, size_t n, ncclDataType_t t, int peer, ncclComm_t c,
                      cudaStream_t s)
{
    (void)t;
    return add(I_SEND, (void *)b, n, peer, c, s);
}
ncclResult_t ncclRecv(void *b, size_t n, ncclDataType_t t, int peer, ncclComm_t c, cudaStream_t s)
{
    (void)t;
    return add(I_RECV, b, n, peer, c, s);
}
ncclResult_t ncclAllReduce(const void *sb, void *rb, size_t n, ncclDataType_t t, ncclRedOp_t op,
                           ncclComm_t c, cudaStream_t s)
{
    (void)sb;
    (void)t;
    (void)op;
    return add(I_AR, rb, n, 0, c, s);
}

static void exec_gop(gop *g)
{
    pthread_mutex_lock(&W);
    ncclComm_t c = g->it[0].c;
    if (c->aborted) goto out;
    c->inflight++;
    fgroup *G = c->g;
    const int n = G->n, me = c->rank;
    for (int i = 0; i < g->n; i++) {
        item *it = &g->it[i];
        if (it->kind == I_SEND) {
            sendent *se = calloc(1, sizeof(*se));
            se->seq = G->sseq[me * n + it->peer]++;
            se->buf = it->buf;
            se->n = it->n;
            sendent **q = &G->chan[me * n + it->peer];
            while (*q) q = &(*q)->next;
            *q = se;
            it->se = se;
        } else if (it->kind == I_RECV) {
            it->seq = G->rseq[it->peer * n + me]++;
        } else {
            it->seq = G->ar_gen;
            if (++G->ar_count == n) {
                G->ar_count = 0;
                G->ar_gen++;
            }
        }
    }
    pthread_cond_broadcast(&WC);
    for (;;) {
        int all = 1;
        for (int i = 0; i < g->n; i++) {
            item *it = &g->it[i];
            if (it->done) continue;
            if (it->kind == I_SEND) {
                sendent *se = it->se;
                if (se->done) {
                    sendent **q = &G->chan[me * n + it->peer];
                    while (*q != se) q = &(*q)->next;
                    *q = se->next;
                    free(se);
                    it->done = 1;
                }
            } else if (it->kind == I_RECV) {
                for (sendent *se = G->chan[it->peer * n + me]; se; se = se->next)
                    if (se->seq == it->seq && !se->done) {
                        if (se->n != it->n) {
                            c->err = ncclInvalidUsage;
                            fprintf(stderr, "FAKE: size mismatch %zu vs %zu\n", se->n, it->n);
                        }
                        memcpy(it->buf, se->buf, se->n < it->n ? se->n : it->n);
                        se->done = 1;
                        it->done = 1;
                        pthread_cond_broadcast(&WC);
                        break;
                    }
            } else if (G->ar_gen != it->seq)
                it->done = 1;
            all &= it->done;
        }
        if (all || c->aborted || c->err) break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&WC, &W, &ts);
    }
    c->inflight--;
    pthread_cond_broadcast(&WC);
out:
    pthread_mutex_unlock(&W);
    free(g->it);
    free(g);
}
