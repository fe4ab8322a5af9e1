/* NCCL backend of the comm interface (see comm.h): each rank handle owns one NCCL
 * communicator (non-blocking, so that every wait can be bounded), one CUDA stream on its
 * device, and staging buffers that grow on demand: pinned host memory for the copies
 * between the caller's host buffers and the device, device memory for NCCL.
 *
 * All-to-all: one NCCL group of ncclSend/ncclRecv per peer with bytes (ncclUint8),
 * framed by a host->device copy of what goes out and a device->host copy of what came in.
 * The bytes a rank sends itself never leave the host. Barrier: a 1-byte all-reduce.
 *
 * Point to point. NCCL matches sends and receives only by their order between two ranks
 * and needs the receiver to name the sender and the size. So a message is a 16-byte
 * header (tag, magic, bytes) and then, in a second NCCL operation, the payload; a recv
 * from a peer reads that peer's messages in the order they were sent, keeps those with
 * other tags (a small reorder buffer per peer) and returns the first with its tag. A send
 * completes when the receiver has taken it: NCCL sends are not buffered. Messages a rank
 * sends itself go straight to its own reorder buffer.
 *
 * Waiting: calls on a non-blocking communicator may answer ncclInProgress, and the
 * stream runs asynchronously; both are polled (ncclCommGetAsyncError, cudaStreamQuery)
 * against the call's deadline, first spinning, then sleeping 50 us between polls. An NCCL
 * operation cannot be cancelled, so a timeout, an error or an abort ends with
 * ncclCommAbort, which stops the kernels; the handle then only fails. */
#include "comm.h"

#include <cuda_runtime.h>
#include <nccl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "le.h"
#include "log.h"

_Static_assert(sizeof(ncclUniqueId) == DSR1_NCCL_ID_BYTES, "DSR1_NCCL_ID_BYTES is stale");

#define HDR_BYTES  16
#define HDR_MAGIC  0x50325031u /* "1P2P" */
#define STASH_MAX  256         /* messages held per peer while a recv looks for its tag */
#define MSG_MAX    ((uint64_t)1 << 40)
#define CLEANUP_MS 10000 /* bound on finalizing a communicator and draining a stream */
#define REASON_MAX 384
#define MAX_RANKS  65536

/* Abort state: a handle's own, or shared by the handles of one _create_local group. */
typedef struct {
    pthread_mutex_t mu;
    atomic_bool aborted;
    char reason[REASON_MAX]; /* guarded by mu; set once */
    int refs;                /* guarded by mu */
} cell;

typedef struct held {
    struct held *next;
    int tag;
    size_t bytes;
    unsigned char *data;
} held;

/* who may touch the communicator: its owner in a call (BUSY), nobody once it is gone */
enum { ST_IDLE, ST_BUSY, ST_DEAD };

typedef struct {
    ncclComm_t comm; /* NULL once aborted */
    cudaStream_t stream;
    int rank, size, device, timeout_ms;
    atomic_int state;
    cell *cell;
    bool tainted; /* the stream did not drain after an abort: its buffers are leaked */
    unsigned char *h_send, *h_recv, *d_send, *d_recv, *d_byte;
    size_t send_cap, recv_cap; /* of h_/d_send, h_/d_recv */
    size_t *soff, *roff, *word;
    held **head; /* [size]: messages received ahead of their recv, oldest first */
    int *nheld;
} nc;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t deadline_after(int ms)
{
    return ms > 0 ? now_ms() + ms : INT64_MAX;
}

/* spin first (a short exchange completes within microseconds), then sleep 50 us */
static void pause_poll(int *spins)
{
    if (++*spins < 2000) return;
    struct timespec ts = {0, 50000};
    nanosleep(&ts, NULL);
}

/* ---- abort state and failure ------------------------------------------------------- */

static cell *cell_new(int refs)
{
    cell *k = calloc(1, sizeof(*k));
    if (!k) return NULL;
    pthread_mutex_init(&k->mu, NULL);
    k->refs = refs;
    return k;
}

static void cell_unref(cell *k)
{
    pthread_mutex_lock(&k->mu);
    const bool last = --k->refs == 0;
    pthread_mutex_unlock(&k->mu);
    if (!last) return;
    pthread_mutex_destroy(&k->mu);
    free(k);
}

/* The first reason wins. */
static void cell_set(cell *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void cell_set(cell *k, const char *fmt, ...)
{
    pthread_mutex_lock(&k->mu);
    if (!atomic_load(&k->aborted)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(k->reason, sizeof(k->reason), fmt, ap);
        va_end(ap);
        atomic_store(&k->aborted, true);
    }
    pthread_mutex_unlock(&k->mu);
}

static dsr1_status aborted_error(nc *x)
{
    char why[REASON_MAX];
    pthread_mutex_lock(&x->cell->mu);
    snprintf(why, sizeof(why), "%s", x->cell->reason);
    pthread_mutex_unlock(&x->cell->mu);
    return dsr1_error(DSR1_ERR_IO, "NCCL group, rank %d: communication aborted by %s", x->rank,
                      why);
}

/* Abort the communicator (stopping its kernels) and wait, bounded, for the stream to
 * drain; a stream that does not drain keeps its buffers (leaked at destroy). */
static void kill_comm(nc *x)
{
    if (x->comm) {
        ncclCommAbort(x->comm);
        x->comm = NULL;
    }
    atomic_store(&x->state, ST_DEAD);
    const int64_t dl = now_ms() + CLEANUP_MS;
    int spins = 0;
    cudaError_t e;
    while ((e = cudaStreamQuery(x->stream)) == cudaErrorNotReady && now_ms() < dl)
        pause_poll(&spins);
    if (e == cudaErrorNotReady) {
        x->tainted = true;
        DSR1_ERROR("NCCL group, rank %d: the stream did not drain after the abort; leaking its "
                   "buffers",
                   x->rank);
    }
}

/* Fail the call in progress: the reason goes to the abort state (waking the other ranks
 * of an in-process group), the communicator is aborted. An abort noticed first wins. */
static dsr1_status fail(nc *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static dsr1_status fail(nc *x, const char *fmt, ...)
{
    char text[REASON_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    const bool first = !atomic_load(&x->cell->aborted);
    cell_set(x->cell, "rank %d: %s", x->rank, text);
    kill_comm(x);
    if (!first) return aborted_error(x);
    return dsr1_error(DSR1_ERR_IO, "NCCL group, rank %d: %s", x->rank, text);
}

static const char *nccl_detail(nc *x)
{
    const char *s = x->comm ? ncclGetLastError(x->comm) : NULL;
    return s && *s ? s : "no detail";
}

/* Enter a call: select the device, claim the communicator. */
static dsr1_status begin(nc *x)
{
    int idle = ST_IDLE;
    if (!atomic_compare_exchange_strong(&x->state, &idle, ST_BUSY)) return aborted_error(x);
    cudaError_t e = cudaSetDevice(x->device);
    if (e != cudaSuccess) {
        atomic_store(&x->state, ST_IDLE);
        return dsr1_error(DSR1_ERR_IO, "NCCL group, rank %d: selecting CUDA device %d: %s", x->rank,
                          x->device, cudaGetErrorString(e));
    }
    if (atomic_load(&x->cell->aborted)) {
        kill_comm(x);
        return aborted_error(x);
    }
    return DSR1_OK;
}

static void end(nc *x)
{
    int busy = ST_BUSY;
    atomic_compare_exchange_strong(&x->state, &busy, ST_IDLE);
}

/* ---- waiting ----------------------------------------------------------------------- */

/* Wait until NCCL has taken the calls just made (r: what the last one returned): on a
 * non-blocking communicator that includes connecting to peers met for the first time,
 * which needs them to take part. `what` names the operation, `late` whom it waits for. */
static dsr1_status settle(nc *x, ncclResult_t r, int64_t dl, const char *what, const char *late)
{
    int spins = 0;
    while (r == ncclInProgress) {
        if (atomic_load(&x->cell->aborted)) {
            kill_comm(x);
            return aborted_error(x);
        }
        if (now_ms() >= dl)
            return fail(x, "%s did not start within %d ms: %s", what, x->timeout_ms, late);
        pause_poll(&spins);
        if (ncclCommGetAsyncError(x->comm, &r) != ncclSuccess) r = ncclInternalError;
    }
    if (r != ncclSuccess)
        return fail(x, "%s: NCCL: %s (%s)", what, ncclGetErrorString(r), nccl_detail(x));
    return DSR1_OK;
}

/* Wait for the stream: what was queued on it has run. `late` says whom it waits for. */
static dsr1_status wait_stream(nc *x, int64_t dl, const char *what, const char *late)
{
    int spins = 0;
    for (;;) {
        cudaError_t e = cudaStreamQuery(x->stream);
        if (e == cudaSuccess) return DSR1_OK;
        if (e != cudaErrorNotReady) return fail(x, "%s: CUDA: %s", what, cudaGetErrorString(e));
        ncclResult_t ar = ncclSuccess;
        if (ncclCommGetAsyncError(x->comm, &ar) != ncclSuccess) ar = ncclInternalError;
        if (ar != ncclSuccess && ar != ncclInProgress)
            return fail(x, "%s: NCCL: %s (%s)", what, ncclGetErrorString(ar), nccl_detail(x));
        if (atomic_load(&x->cell->aborted)) {
            kill_comm(x);
            return aborted_error(x);
        }
        if (now_ms() >= dl)
            return fail(x, "%s did not complete within %d ms: %s", what, x->timeout_ms, late);
        pause_poll(&spins);
    }
}

static dsr1_status cuda_check(nc *x, cudaError_t e, const char *what)
{
    if (e == cudaSuccess) return DSR1_OK;
    return fail(x, "%s: CUDA: %s", what, cudaGetErrorString(e));
}

/* ---- staging buffers --------------------------------------------------------------- */

/* Grow one pinned/device pair to hold `need` bytes (the stream is idle between calls). */
static dsr1_status grow(nc *x, unsigned char **h, unsigned char **d, size_t *cap, size_t need)
{
    if (need <= *cap) return DSR1_OK;
    size_t n = *cap ? *cap : 4096;
    while (n < need) n = n > SIZE_MAX / 2 ? need : n * 2;
    cudaFreeHost(*h);
    cudaFree(*d);
    *h = *d = NULL;
    *cap = 0;
    cudaError_t e = cudaHostAlloc((void **)h, n, cudaHostAllocDefault);
    if (e == cudaSuccess) e = cudaMalloc((void **)d, n);
    if (e != cudaSuccess) {
        cudaFreeHost(*h);
        *h = NULL;
        cudaGetLastError(); /* not sticky: the handle stays usable */
        return dsr1_error(DSR1_ERR_NOMEM, "NCCL group, rank %d: %zu bytes of staging: %s", x->rank,
                          n, cudaGetErrorString(e));
    }
    *cap = n;
    return DSR1_OK;
}

/* ---- collectives ------------------------------------------------------------------- */

/* "ranks 1, 3" — the peers this rank exchanges bytes with (NCCL cannot say which one is
 * late, so a timeout names them all). */
static void list_peers(const nc *x, const size_t *sb, const size_t *rb, char *buf, size_t cap)
{
    size_t o = (size_t)snprintf(buf, cap, "its peers (");
    int k = 0;
    for (int p = 0; p < x->size && o + 16 < cap; p++)
        if (p != x->rank && (sb[p] || rb[p]))
            o += (size_t)snprintf(buf + o, cap - o, "%srank %d", k++ ? ", " : "", p);
    snprintf(buf + o, cap - o, "%s) did not all take part", k ? "" : "none");
}

static dsr1_status exchange(nc *x, const unsigned char *send, const size_t *sb, unsigned char *recv,
                            const size_t *rb, const char *what)
{
    const int n = x->size, me = x->rank;
    const int64_t dl = deadline_after(x->timeout_ms);
    if (sb[me] != rb[me])
        return fail(x, "%s: size mismatch: this rank sends itself %zu bytes, %zu expected", what,
                    sb[me], rb[me]);
    /* user layout: every peer in rank order; staging layout: the same without this rank */
    size_t su = 0, ru = 0, ss = 0, rs = 0;
    for (int p = 0; p < n; p++) {
        x->soff[p] = ss;
        x->roff[p] = rs;
        if (p != me) {
            ss += sb[p];
            rs += rb[p];
        }
    }
    dsr1_status st;
    if ((st = grow(x, &x->h_send, &x->d_send, &x->send_cap, ss)) != DSR1_OK ||
        (st = grow(x, &x->h_recv, &x->d_recv, &x->recv_cap, rs)) != DSR1_OK)
        return fail(x, "%s: %s", what, dsr1_errmsg());
    for (int p = 0; p < n; su += sb[p], p++)
        if (p != me && sb[p]) memcpy(x->h_send + x->soff[p], send + su, sb[p]);
    char late[256];
    list_peers(x, sb, rb, late, sizeof(late));
    if (ss || rs) {
        if (ss &&
            (st = cuda_check(
                 x, cudaMemcpyAsync(x->d_send, x->h_send, ss, cudaMemcpyHostToDevice, x->stream),
                 what)) != DSR1_OK)
            return st;
        ncclResult_t r = ncclGroupStart();
        for (int p = 0; p < n; p++) {
            if (p == me) continue;
            ncclResult_t a = ncclSuccess, b = ncclSuccess;
            if (sb[p])
                a = ncclSend(x->d_send + x->soff[p], sb[p], ncclUint8, p, x->comm, x->stream);
            if (rb[p])
                b = ncclRecv(x->d_recv + x->roff[p], rb[p], ncclUint8, p, x->comm, x->stream);
            if (r == ncclSuccess) r = a != ncclSuccess ? a : b;
        }
        ncclResult_t e = ncclGroupEnd();
        if ((st = settle(x, r != ncclSuccess && r != ncclInProgress ? r : e, dl, what, late)) !=
            DSR1_OK)
            return st;
        if (rs &&
            (st = cuda_check(
                 x, cudaMemcpyAsync(x->h_recv, x->d_recv, rs, cudaMemcpyDeviceToHost, x->stream),
                 what)) != DSR1_OK)
            return st;
    }
    /* this rank's own share while the GPU works */
    size_t self_in = 0;
    for (int p = 0; p < me; p++) self_in += sb[p];
    for (int p = 0; p < me; p++) ru += rb[p];
    if (sb[me]) memcpy(recv + ru, send + self_in, sb[me]);
    if (ss || rs) {
        if ((st = wait_stream(x, dl, what, late)) != DSR1_OK) return st;
    }
    ru = 0;
    for (int p = 0; p < n; ru += rb[p], p++)
        if (p != me && rb[p]) memcpy(recv + ru, x->h_recv + x->roff[p], rb[p]);
    return DSR1_OK;
}

static dsr1_status nc_alltoallv(dsr1_comm *c, const void *send, const size_t *send_bytes,
                                void *recv, const size_t *recv_bytes)
{
    nc *x = c->ctx;
    dsr1_status st = begin(x);
    if (st != DSR1_OK) return st;
    st = exchange(x, send, send_bytes, recv, recv_bytes, "all-to-all");
    end(x);
    return st;
}

static dsr1_status nc_alltoall_sizes(dsr1_comm *c, const size_t *send_sizes, size_t *recv_sizes)
{
    nc *x = c->ctx;
    dsr1_status st = begin(x);
    if (st != DSR1_OK) return st;
    st = exchange(x, (const unsigned char *)send_sizes, x->word, (unsigned char *)recv_sizes,
                  x->word, "all-to-all of sizes");
    end(x);
    return st;
}

static dsr1_status nc_barrier(dsr1_comm *c)
{
    nc *x = c->ctx;
    dsr1_status st = begin(x);
    if (st != DSR1_OK) return st;
    const int64_t dl = deadline_after(x->timeout_ms);
    char late[96];
    snprintf(late, sizeof(late), "a rank of the %d did not reach it (NCCL cannot tell which)",
             x->size);
    ncclResult_t r = ncclAllReduce(x->d_byte, x->d_byte, 1, ncclUint8, ncclMax, x->comm, x->stream);
    if ((st = settle(x, r, dl, "barrier", late)) == DSR1_OK)
        st = wait_stream(x, dl, "barrier", late);
    end(x);
    return st;
}

/* ---- point to point ---------------------------------------------------------------- */

/* Append a message to peer's reorder buffer (takes `data`). */
static dsr1_status hold(nc *x, int peer, int tag, unsigned char *data, size_t bytes)
{
    held *h = malloc(sizeof(*h));
    if (!h) {
        free(data);
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    }
    *h = (held){NULL, tag, bytes, data};
    held **q = &x->head[peer];
    while (*q) q = &(*q)->next;
    *q = h;
    x->nheld[peer]++;
    return DSR1_OK;
}

/* The oldest held message from peer with tag, if any. */
static bool take_held(nc *x, int peer, int tag, void **data, size_t *len)
{
    for (held **q = &x->head[peer]; *q; q = &(*q)->next) {
        held *h = *q;
        if (h->tag != tag) continue;
        *q = h->next;
        x->nheld[peer]--;
        *data = h->data;
        *len = h->bytes;
        free(h);
        return true;
    }
    return false;
}

static dsr1_status nc_send(dsr1_comm *c, int peer, int tag, const void *data, size_t bytes)
{
    nc *x = c->ctx;
    if (peer < 0 || peer >= x->size)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "send to rank %d of %d", peer, x->size);
    if (bytes > MSG_MAX)
        return dsr1_error(DSR1_ERR_RANGE, "NCCL send of %zu bytes (at most 2^40)", bytes);
    if (peer == x->rank) { /* no NCCL: straight to this rank's own reorder buffer */
        if (atomic_load(&x->cell->aborted) || atomic_load(&x->state) == ST_DEAD)
            return aborted_error(x);
        if (x->nheld[peer] >= STASH_MAX)
            return dsr1_error(DSR1_ERR_RANGE,
                              "NCCL group, rank %d: %d messages to itself are waiting", x->rank,
                              STASH_MAX);
        unsigned char *copy = malloc(bytes + 1);
        if (!copy) return dsr1_error(DSR1_ERR_NOMEM, "out of memory for a %zu-byte message", bytes);
        if (bytes) memcpy(copy, data, bytes);
        return hold(x, peer, tag, copy, bytes);
    }
    dsr1_status st = begin(x);
    if (st != DSR1_OK) return st;
    const int64_t dl = deadline_after(x->timeout_ms);
    char what[96], late[96];
    snprintf(what, sizeof(what), "sending %zu bytes (tag %d) to rank %d", bytes, tag, peer);
    snprintf(late, sizeof(late), "rank %d did not receive it", peer);
    if ((st = grow(x, &x->h_send, &x->d_send, &x->send_cap, HDR_BYTES + bytes)) != DSR1_OK) {
        end(x);
        return st; /* nothing was sent: the handle stays usable */
    }
    dsr1_put_le32(x->h_send, (uint32_t)tag);
    dsr1_put_le32(x->h_send + 4, HDR_MAGIC);
    dsr1_put_le64(x->h_send + 8, bytes);
    if (bytes) memcpy(x->h_send + HDR_BYTES, data, bytes);
    st = cuda_check(
        x,
        cudaMemcpyAsync(x->d_send, x->h_send, HDR_BYTES + bytes, cudaMemcpyHostToDevice, x->stream),
        what);
    /* header and payload as two operations, as the receiver posts them */
    if (st == DSR1_OK)
        st = settle(x, ncclSend(x->d_send, HDR_BYTES, ncclUint8, peer, x->comm, x->stream), dl,
                    what, late);
    if (st == DSR1_OK && bytes)
        st = settle(x, ncclSend(x->d_send + HDR_BYTES, bytes, ncclUint8, peer, x->comm, x->stream),
                    dl, what, late);
    if (st == DSR1_OK) st = wait_stream(x, dl, what, late);
    end(x);
    return st;
}

/* Read peer's next message: header, then payload into a malloc'ed buffer. */
static dsr1_status read_one(nc *x, int peer, int want_tag, int64_t dl, int *tag,
                            unsigned char **data, size_t *len)
{
    char what[96], late[96];
    snprintf(what, sizeof(what), "receiving from rank %d (tag %d)", peer, want_tag);
    snprintf(late, sizeof(late), "no message from rank %d", peer);
    dsr1_status st;
    if ((st = grow(x, &x->h_recv, &x->d_recv, &x->recv_cap, HDR_BYTES)) != DSR1_OK) return st;
    if ((st = settle(x, ncclRecv(x->d_recv, HDR_BYTES, ncclUint8, peer, x->comm, x->stream), dl,
                     what, late)) != DSR1_OK ||
        (st = cuda_check(
             x, cudaMemcpyAsync(x->h_recv, x->d_recv, HDR_BYTES, cudaMemcpyDeviceToHost, x->stream),
             what)) != DSR1_OK ||
        (st = wait_stream(x, dl, what, late)) != DSR1_OK)
        return st;
    const uint32_t t = dsr1_get_le32(x->h_recv), magic = dsr1_get_le32(x->h_recv + 4);
    const uint64_t n = dsr1_get_le64(x->h_recv + 8);
    /* anything else means the two ranks' calls are out of step: the channel is garbage now */
    if (magic != HDR_MAGIC || n > MSG_MAX)
        return fail(x,
                    "%s: what arrived is not a message header (magic %08x, %llu bytes): the "
                    "two ranks' calls are out of step (a collective on one side, a send on "
                    "the other?)",
                    what, magic, (unsigned long long)n);
    unsigned char *buf = malloc((size_t)n + 1);
    if (!buf)
        return fail(x, "%s: out of memory for a %llu-byte message", what, (unsigned long long)n);
    if (n) {
        snprintf(late, sizeof(late), "rank %d sent the header of %llu bytes but not the bytes",
                 peer, (unsigned long long)n);
        if ((st = grow(x, &x->h_recv, &x->d_recv, &x->recv_cap, (size_t)n)) != DSR1_OK)
            st = fail(x, "%s: %s", what, dsr1_errmsg()); /* the payload is on its way */
        if (st == DSR1_OK)
            st = settle(x, ncclRecv(x->d_recv, (size_t)n, ncclUint8, peer, x->comm, x->stream), dl,
                        what, late);
        if (st == DSR1_OK)
            st = cuda_check(
                x,
                cudaMemcpyAsync(x->h_recv, x->d_recv, (size_t)n, cudaMemcpyDeviceToHost, x->stream),
                what);
        if (st == DSR1_OK) st = wait_stream(x, dl, what, late);
        if (st != DSR1_OK) {
            free(buf);
            return st;
        }
        memcpy(buf, x->h_recv, (size_t)n);
    }
    *tag = (int)t;
    *data = buf;
    *len = (size_t)n;
    return DSR1_OK;
}

static dsr1_status nc_recv(dsr1_comm *c, int peer, int tag, void **data, size_t *len, int *src)
{
    nc *x = c->ctx;
    if (peer == DSR1_COMM_ANY)
        return dsr1_error(DSR1_ERR_UNSUPPORTED,
                          "NCCL group, rank %d: receiving from any rank (tag %d) is not possible "
                          "over NCCL, whose receives must name the sender; receive from each "
                          "peer in turn, or use the UCX or in-process transport",
                          x->rank, tag);
    if (peer < 0 || peer >= x->size)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "recv from rank %d of %d", peer, x->size);
    if (take_held(x, peer, tag, data, len)) {
        if (src) *src = peer;
        return DSR1_OK;
    }
    if (peer == x->rank) /* only this handle's own sends could have put it there */
        return dsr1_error(DSR1_ERR_IO, "NCCL group, rank %d: no message from itself (tag %d)",
                          x->rank, tag);
    dsr1_status st = begin(x);
    if (st != DSR1_OK) return st;
    const int64_t dl = deadline_after(x->timeout_ms);
    for (;;) {
        int t = 0;
        unsigned char *buf = NULL;
        size_t n = 0;
        if ((st = read_one(x, peer, tag, dl, &t, &buf, &n)) != DSR1_OK) break;
        if (t == tag) {
            *data = buf;
            *len = n;
            if (src) *src = peer;
            break;
        }
        if (x->nheld[peer] >= STASH_MAX) {
            free(buf);
            st = fail(x,
                      "receiving from rank %d (tag %d): %d messages with other tags arrived "
                      "first; receive them in the order they are sent",
                      peer, tag, STASH_MAX);
            break;
        }
        if ((st = hold(x, peer, t, buf, n)) != DSR1_OK) {
            st = fail(x, "receiving from rank %d: %s", peer, dsr1_errmsg());
            break;
        }
    }
    end(x);
    return st;
}

/* ---- abort, destroy ---------------------------------------------------------------- */

static void nc_abort(dsr1_comm *c, const char *reason)
{
    nc *x = c->ctx;
    cell_set(x->cell, "rank %d: %s", x->rank, reason);
    /* a call in progress notices the flag and aborts the communicator itself; otherwise
     * abort it here, on its device, and give the caller's thread its device back */
    int idle = ST_IDLE;
    if (!atomic_compare_exchange_strong(&x->state, &idle, ST_DEAD)) return;
    int prev = -1;
    if (cudaGetDevice(&prev) != cudaSuccess) prev = -1;
    cudaSetDevice(x->device);
    kill_comm(x);
    if (prev >= 0) cudaSetDevice(prev);
}

static void release(nc *x)
{
    if (!x->tainted) {
        cudaFreeHost(x->h_send);
        cudaFreeHost(x->h_recv);
        cudaFree(x->d_send);
        cudaFree(x->d_recv);
        cudaFree(x->d_byte);
        if (x->stream) cudaStreamDestroy(x->stream);
    }
    for (int p = 0; x->head && p < x->size; p++)
        for (held *h = x->head[p], *nx; h; h = nx) {
            nx = h->next;
            free(h->data);
            free(h);
        }
    free(x->head);
    free(x->nheld);
    free(x->soff);
    free(x->roff);
    free(x->word);
    if (x->cell) cell_unref(x->cell);
    free(x);
}

static void nc_destroy(dsr1_comm *c)
{
    if (!c) return;
    nc *x = c->ctx;
    cudaSetDevice(x->device);
    if (x->comm && atomic_load(&x->cell->aborted)) kill_comm(x);
    if (x->comm) {
        /* finalize waits for the group to be quiescent, which needs the peers: bounded */
        const int budget =
            x->timeout_ms > 0 && x->timeout_ms < CLEANUP_MS ? x->timeout_ms : CLEANUP_MS;
        const int64_t dl = now_ms() + budget;
        ncclResult_t r = ncclCommFinalize(x->comm);
        int spins = 0;
        while (r == ncclInProgress && now_ms() < dl) {
            pause_poll(&spins);
            if (ncclCommGetAsyncError(x->comm, &r) != ncclSuccess) r = ncclInternalError;
        }
        if (r == ncclSuccess) {
            ncclCommDestroy(x->comm);
            x->comm = NULL;
        } else {
            DSR1_DEBUG("NCCL group, rank %d: finalize: %s; aborting", x->rank,
                       r == ncclInProgress ? "the peers did not finish in time"
                                           : ncclGetErrorString(r));
            kill_comm(x);
        }
    }
    release(x);
    free(c);
}

static const dsr1_comm_ops nccl_ops = {
    .name = "nccl",
    .alltoallv = nc_alltoallv,
    .alltoall_sizes = nc_alltoall_sizes,
    .send = nc_send,
    .recv = nc_recv,
    .barrier = nc_barrier,
    .abort = nc_abort,
    .destroy = nc_destroy,
};

/* ---- creation ---------------------------------------------------------------------- */

dsr1_status dsr1_cuda_device_count(int *count)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e == cudaErrorNoDevice) {
        cudaGetLastError();
        *count = 0;
        return DSR1_OK;
    }
    if (e != cudaSuccess) {
        cudaGetLastError();
        return dsr1_error(DSR1_ERR_UNSUPPORTED, "CUDA: %s", cudaGetErrorString(e));
    }
    *count = n;
    return DSR1_OK;
}

dsr1_status dsr1_nccl_unique_id(unsigned char id[DSR1_NCCL_ID_BYTES])
{
    ncclUniqueId u;
    ncclResult_t r = ncclGetUniqueId(&u);
    if (r != ncclSuccess)
        return dsr1_error(DSR1_ERR_IO, "NCCL: making a unique id: %s (%s)", ncclGetErrorString(r),
                          ncclGetLastError(NULL));
    memcpy(id, &u, sizeof(u));
    return DSR1_OK;
}

/* A handle's state before its communicator exists: stream and buffers on `device`
 * (which this selects on the calling thread). */
static dsr1_status nc_new(int rank, int size, int device, int timeout_ms, cell *k, nc **out)
{
    nc *x = calloc(1, sizeof(*x));
    if (!x) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    x->rank = rank;
    x->size = size;
    x->device = device;
    x->timeout_ms = timeout_ms;
    x->cell = k;
    atomic_init(&x->state, ST_IDLE);
    const size_t n = (size_t)size;
    x->soff = calloc(n, sizeof(size_t));
    x->roff = calloc(n, sizeof(size_t));
    x->word = calloc(n, sizeof(size_t));
    x->head = calloc(n, sizeof(held *));
    x->nheld = calloc(n, sizeof(int));
    if (!x->soff || !x->roff || !x->word || !x->head || !x->nheld) {
        x->cell = NULL; /* the caller's */
        release(x);
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    }
    for (size_t p = 0; p < n; p++) x->word[p] = sizeof(size_t);
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&x->stream, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaMalloc((void **)&x->d_byte, 16);
    if (e == cudaSuccess) e = cudaMemset(x->d_byte, 0, 16);
    if (e != cudaSuccess) {
        cudaGetLastError();
        x->cell = NULL;
        release(x);
        return dsr1_error(DSR1_ERR_IO, "NCCL group, rank %d: CUDA device %d: %s", rank, device,
                          cudaGetErrorString(e));
    }
    *out = x;
    return DSR1_OK;
}

/* Wait for a non-blocking communicator to finish forming (r: what init returned). */
static dsr1_status init_wait(nc *x, ncclResult_t r, int64_t dl)
{
    int spins = 0;
    while (r == ncclInProgress && now_ms() < dl) {
        pause_poll(&spins);
        if (ncclCommGetAsyncError(x->comm, &r) != ncclSuccess) r = ncclInternalError;
    }
    if (r == ncclSuccess) return DSR1_OK;
    dsr1_status st =
        r == ncclInProgress
            ? dsr1_error(DSR1_ERR_IO,
                         "NCCL group of %d, rank %d: the group did not form within %d ms (are "
                         "all ranks started, with the same id, each on its own GPU?)",
                         x->size, x->rank, x->timeout_ms)
            : dsr1_error(DSR1_ERR_IO, "NCCL group of %d, rank %d (CUDA device %d): %s (%s)",
                         x->size, x->rank, x->device, ncclGetErrorString(r), nccl_detail(x));
    if (x->comm) ncclCommAbort(x->comm);
    x->comm = NULL;
    return st;
}

static dsr1_comm *wrap(nc *x)
{
    dsr1_comm *c = malloc(sizeof(*c));
    if (!c) return NULL;
    c->ops = &nccl_ops;
    c->rank = x->rank;
    c->size = x->size;
    c->ctx = x;
    return c;
}

static ncclConfig_t *nonblocking(ncclConfig_t *cfg)
{
    ncclConfig_t c = NCCL_CONFIG_INITIALIZER;
    c.blocking = 0;
    *cfg = c;
    return cfg;
}

dsr1_status dsr1_comm_nccl_create(int rank, int size, const void *unique_id, int cuda_device,
                                  int timeout_ms, dsr1_comm **out)
{
    if (size < 1 || size > MAX_RANKS || rank < 0 || rank >= size || cuda_device < 0)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "NCCL group: rank %d of %d on CUDA device %d", rank,
                          size, cuda_device);
    cell *k = cell_new(1);
    if (!k) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    nc *x;
    dsr1_status st = nc_new(rank, size, cuda_device, timeout_ms, k, &x);
    if (st != DSR1_OK) {
        cell_unref(k);
        return st;
    }
    ncclUniqueId id;
    memcpy(&id, unique_id, sizeof(id));
    ncclConfig_t cfg;
    ncclResult_t r = ncclCommInitRankConfig(&x->comm, size, id, rank, nonblocking(&cfg));
    if ((st = init_wait(x, r, deadline_after(timeout_ms))) != DSR1_OK) {
        release(x);
        return st;
    }
    dsr1_comm *c = wrap(x);
    if (!c) {
        kill_comm(x);
        release(x);
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    }
    *out = c;
    return DSR1_OK;
}

dsr1_status dsr1_comm_nccl_create_local(int size, const int *devices, int timeout_ms,
                                        dsr1_comm **comms)
{
    if (size < 1 || size > 1024)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "in-process NCCL group of %d ranks", size);
    int prev = -1;
    if (cudaGetDevice(&prev) != cudaSuccess) prev = -1;
    unsigned char idb[DSR1_NCCL_ID_BYTES];
    nc **xs = calloc((size_t)size, sizeof(*xs));
    cell *k = cell_new(size);
    dsr1_status st = DSR1_OK;
    int made = 0, wrapped = 0;
    if (!xs || !k) {
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        goto out;
    }
    if ((st = dsr1_nccl_unique_id(idb)) != DSR1_OK) goto out;
    for (; made < size; made++)
        if ((st = nc_new(made, size, devices ? devices[made] : made, timeout_ms, k, &xs[made])) !=
            DSR1_OK)
            goto out;
    /* one thread forms every rank: the inits go in one NCCL group */
    ncclUniqueId id;
    memcpy(&id, idb, sizeof(id));
    ncclConfig_t cfg;
    ncclResult_t first = ncclGroupStart();
    for (int r = 0; r < size; r++) {
        cudaSetDevice(xs[r]->device);
        ncclResult_t e = ncclCommInitRankConfig(&xs[r]->comm, size, id, r, nonblocking(&cfg));
        if (first == ncclSuccess) first = e;
    }
    ncclResult_t e = ncclGroupEnd();
    if (first == ncclSuccess) first = e;
    /* each communicator says for itself when it is ready; the first failure is reported */
    const int64_t dl = deadline_after(timeout_ms);
    char why[512] = "";
    for (int r = 0; r < size; r++) {
        ncclResult_t s = first == ncclSuccess || first == ncclInProgress ? ncclInProgress : first;
        if (!xs[r]->comm && s == ncclInProgress) s = ncclInternalError;
        dsr1_status sr = init_wait(xs[r], s, dl);
        if (sr != DSR1_OK && st == DSR1_OK) {
            st = sr;
            snprintf(why, sizeof(why), "%s", dsr1_errmsg());
        }
    }
    if (st != DSR1_OK) {
        st = dsr1_error(st, "%s", why);
        goto out;
    }
    for (; wrapped < size; wrapped++)
        if (!(comms[wrapped] = wrap(xs[wrapped]))) {
            st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
            goto out;
        }
out:
    if (st != DSR1_OK) {
        for (int r = 0; r < wrapped; r++) free(comms[r]);
        for (int r = 0; r < made; r++) {
            cudaSetDevice(xs[r]->device);
            if (xs[r]->comm) kill_comm(xs[r]);
            xs[r]->cell = NULL; /* k goes below: no other thread has seen it */
            release(xs[r]);
        }
        if (k) {
            pthread_mutex_destroy(&k->mu);
            free(k);
        }
    }
    free(xs);
    if (prev >= 0) cudaSetDevice(prev);
    return st;
}
