/* In-process backend of the comm interface (see comm.h): ranks are threads sharing one
 * context. Collectives publish a pointer to the caller's buffer and copy directly from the
 * peers' buffers between two barriers (no intermediate copy); point-to-point messages are
 * copied into a per-destination queue. One mutex guards the context: the payloads are
 * copied outside it. */
#include "comm.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct msg {
    struct msg *next;
    int src, tag;
    size_t bytes;
    unsigned char data[];
} msg;

typedef struct {
    int size, timeout_ms, refs;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* barrier */
    int arrived;
    unsigned long gen;
    bool *in_barrier;
    /* collectives: each rank's published buffer and per-peer byte counts */
    const unsigned char **pub;
    size_t *pub_bytes; /* [src * size + dst] */
    /* point to point: queue per destination */
    msg **head;
    bool aborted;
    char reason[256];
    int *culprit; /* [size]: per rank handle, the late rank its last failed call waited on */
    int late;     /* the first rank missing from the collective that timed out, or -1 */
} inproc;

static void deadline_in(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* wait on the context's condition; mutex held. Returns ETIMEDOUT or 0. */
static int ctx_wait(inproc *x, const struct timespec *deadline)
{
    if (x->timeout_ms <= 0) return pthread_cond_wait(&x->cv, &x->mu);
    return pthread_cond_timedwait(&x->cv, &x->mu, deadline);
}

static dsr1_status aborted_error(inproc *x, int rank)
{
    return dsr1_error(DSR1_ERR_IO, "rank %d: communication aborted: %s", rank, x->reason);
}

static dsr1_status barrier_locked(dsr1_comm *c, inproc *x)
{
    if (x->aborted) {
        x->culprit[c->rank] = x->late;
        return aborted_error(x, c->rank);
    }
    unsigned long gen = x->gen;
    x->in_barrier[c->rank] = true;
    if (++x->arrived == x->size) {
        x->arrived = 0;
        x->gen++;
        for (int r = 0; r < x->size; r++) x->in_barrier[r] = false;
        pthread_cond_broadcast(&x->cv);
        return DSR1_OK;
    }
    struct timespec dl;
    deadline_in(&dl, x->timeout_ms);
    while (x->gen == gen && !x->aborted) {
        if (ctx_wait(x, &dl) == ETIMEDOUT) {
            char missing[200] = "";
            size_t o = 0;
            for (int r = 0; r < x->size && o < sizeof(missing) - 8; r++)
                if (!x->in_barrier[r])
                    o +=
                        (size_t)snprintf(missing + o, sizeof(missing) - o, "%s%d", o ? "," : "", r);
            snprintf(x->reason, sizeof(x->reason),
                     "rank(s) %s did not reach a collective within %d ms", missing, x->timeout_ms);
            for (int r = 0; r < x->size && x->late < 0; r++)
                if (!x->in_barrier[r]) x->late = r;
            x->culprit[c->rank] = x->late;
            x->aborted = true;
            pthread_cond_broadcast(&x->cv);
            return dsr1_error(DSR1_ERR_IO, "rank %d: %s", c->rank, x->reason);
        }
    }
    if (x->gen == gen) { /* woken by the abort: the timeout of another rank, or an abort */
        x->culprit[c->rank] = x->late;
        return aborted_error(x, c->rank);
    }
    return DSR1_OK;
}

static dsr1_status ip_barrier(dsr1_comm *c)
{
    inproc *x = c->ctx;
    pthread_mutex_lock(&x->mu);
    dsr1_status st = barrier_locked(c, x);
    pthread_mutex_unlock(&x->mu);
    return st;
}

static dsr1_status ip_alltoallv(dsr1_comm *c, const void *send, const size_t *send_bytes,
                                void *recv, const size_t *recv_bytes)
{
    inproc *x = c->ctx;
    const int n = x->size, me = c->rank;
    pthread_mutex_lock(&x->mu);
    x->pub[me] = send;
    for (int p = 0; p < n; p++) x->pub_bytes[me * n + p] = send_bytes[p];
    dsr1_status st = barrier_locked(c, x);
    pthread_mutex_unlock(&x->mu);
    if (st != DSR1_OK) return st;
    /* after the barrier every rank's publication is complete and stays until the next one */
    unsigned char *out = recv;
    for (int src = 0; src < n && st == DSR1_OK; src++) {
        size_t off = 0;
        for (int p = 0; p < me; p++) off += x->pub_bytes[src * n + p];
        const size_t b = x->pub_bytes[src * n + me];
        if (b != recv_bytes[src])
            st = dsr1_error(DSR1_ERR_INTERNAL,
                            "rank %d: all-to-all size mismatch: rank %d sends %zu "
                            "bytes, %zu expected",
                            me, src, b, recv_bytes[src]);
        else if (b)
            memcpy(out, x->pub[src] + off, b);
        out += recv_bytes[src];
    }
    /* no rank may reuse its send buffer until every peer has copied from it */
    pthread_mutex_lock(&x->mu);
    dsr1_status st2 = barrier_locked(c, x);
    pthread_mutex_unlock(&x->mu);
    return st != DSR1_OK ? st : st2;
}

static dsr1_status ip_alltoall_sizes(dsr1_comm *c, const size_t *send_sizes, size_t *recv_sizes)
{
    const int n = c->size;
    size_t *sb = malloc(sizeof(size_t) * (size_t)n);
    if (!sb) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    for (int p = 0; p < n; p++) sb[p] = sizeof(size_t);
    dsr1_status st = ip_alltoallv(c, send_sizes, sb, recv_sizes, sb);
    free(sb);
    return st;
}

static dsr1_status ip_send(dsr1_comm *c, int peer, int tag, const void *data, size_t bytes)
{
    inproc *x = c->ctx;
    if (peer < 0 || peer >= x->size)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "send to rank %d of %d", peer, x->size);
    msg *m = malloc(sizeof(msg) + bytes);
    if (!m) return dsr1_error(DSR1_ERR_NOMEM, "out of memory for a %zu-byte message", bytes);
    m->next = NULL;
    m->src = c->rank;
    m->tag = tag;
    m->bytes = bytes;
    if (bytes) memcpy(m->data, data, bytes);
    pthread_mutex_lock(&x->mu);
    if (x->aborted) {
        x->culprit[c->rank] = -1;
        pthread_mutex_unlock(&x->mu);
        free(m);
        return aborted_error(x, c->rank);
    }
    msg **q = &x->head[peer];
    while (*q) q = &(*q)->next;
    *q = m;
    pthread_cond_broadcast(&x->cv);
    pthread_mutex_unlock(&x->mu);
    return DSR1_OK;
}

static dsr1_status ip_recv(dsr1_comm *c, int peer, int tag, void **data, size_t *len, int *src)
{
    inproc *x = c->ctx;
    struct timespec dl;
    deadline_in(&dl, x->timeout_ms);
    pthread_mutex_lock(&x->mu);
    for (;;) {
        if (x->aborted) {
            x->culprit[c->rank] = -1;
            pthread_mutex_unlock(&x->mu);
            return aborted_error(x, c->rank);
        }
        for (msg **q = &x->head[c->rank]; *q; q = &(*q)->next) {
            msg *m = *q;
            if ((peer != DSR1_COMM_ANY && m->src != peer) || m->tag != tag) continue;
            *q = m->next;
            pthread_mutex_unlock(&x->mu);
            /* hand the payload over without a copy: move it to the buffer's start */
            const size_t n = m->bytes;
            const int from = m->src;
            memmove(m, m->data, n);
            *data = m;
            *len = n;
            if (src) *src = from;
            return DSR1_OK;
        }
        if (ctx_wait(x, &dl) == ETIMEDOUT) {
            x->culprit[c->rank] = peer; /* DSR1_COMM_ANY is -1: unknown */
            pthread_mutex_unlock(&x->mu);
            if (peer == DSR1_COMM_ANY)
                return dsr1_error(DSR1_ERR_IO, "rank %d: no message (tag %d) within %d ms", c->rank,
                                  tag, x->timeout_ms);
            return dsr1_error(DSR1_ERR_IO, "rank %d: no message from rank %d (tag %d) within %d ms",
                              c->rank, peer, tag, x->timeout_ms);
        }
    }
}

static void ip_abort(dsr1_comm *c, const char *reason)
{
    inproc *x = c->ctx;
    pthread_mutex_lock(&x->mu);
    if (!x->aborted) {
        x->aborted = true;
        snprintf(x->reason, sizeof(x->reason), "rank %d: %s", c->rank, reason);
    }
    pthread_cond_broadcast(&x->cv);
    pthread_mutex_unlock(&x->mu);
}

static void ip_destroy(dsr1_comm *c)
{
    inproc *x = c->ctx;
    pthread_mutex_lock(&x->mu);
    int last = --x->refs == 0;
    pthread_mutex_unlock(&x->mu);
    free(c);
    if (!last) return;
    for (int r = 0; r < x->size; r++)
        for (msg *m = x->head[r], *nx; m; m = nx) {
            nx = m->next;
            free(m);
        }
    free(x->head);
    free(x->pub);
    free(x->pub_bytes);
    free(x->in_barrier);
    free(x->culprit);
    pthread_mutex_destroy(&x->mu);
    pthread_cond_destroy(&x->cv);
    free(x);
}

static int ip_culprit(dsr1_comm *c)
{
    inproc *x = c->ctx;
    pthread_mutex_lock(&x->mu);
    int r = x->culprit[c->rank];
    pthread_mutex_unlock(&x->mu);
    return r;
}

static const dsr1_comm_ops inproc_ops = {
    .name = "inproc",
    .alltoallv = ip_alltoallv,
    .alltoall_sizes = ip_alltoall_sizes,
    .send = ip_send,
    .recv = ip_recv,
    .barrier = ip_barrier,
    .abort = ip_abort,
    .destroy = ip_destroy,
    .culprit = ip_culprit,
};

dsr1_status dsr1_comm_inproc_create(int size, int timeout_ms, dsr1_comm **comms)
{
    if (size < 1 || size > 4096)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "in-process group of %d ranks", size);
    inproc *x = calloc(1, sizeof(*x));
    if (!x) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    x->size = size;
    x->timeout_ms = timeout_ms;
    pthread_mutex_init(&x->mu, NULL);
    pthread_cond_init(&x->cv, NULL);
    x->in_barrier = calloc((size_t)size, sizeof(bool));
    x->pub = calloc((size_t)size, sizeof(*x->pub));
    x->pub_bytes = calloc((size_t)size * (size_t)size, sizeof(size_t));
    x->head = calloc((size_t)size, sizeof(msg *));
    x->culprit = malloc((size_t)size * sizeof(int));
    x->late = -1;
    int made = 0;
    if (x->in_barrier && x->pub && x->pub_bytes && x->head && x->culprit) {
        for (int r = 0; r < size; r++) x->culprit[r] = -1;
        for (; made < size; made++) {
            dsr1_comm *c = malloc(sizeof(*c));
            if (!c) break;
            c->ops = &inproc_ops;
            c->rank = made;
            c->size = size;
            c->ctx = x;
            comms[made] = c;
        }
    }
    x->refs = made;
    if (made == size) return DSR1_OK;
    for (int r = 0; r < made; r++) free(comms[r]);
    free(x->in_barrier);
    free(x->pub);
    free(x->pub_bytes);
    free(x->head);
    free(x->culprit);
    free(x);
    return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
}
