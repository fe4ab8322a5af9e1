/* The communication interface between workers: one ops table, several backends.
 *
 * A dsr1_comm is one rank's handle on a group of `size` ranks. Backends: in-process
 * (threads of one process, embedded mode; comm_inproc.c), and later UCX between hosts and
 * NCCL between GPUs, with MPI only for bootstrap. Which one runs is configuration; the
 * model code only sees this table.
 *
 * Collectives must be entered by every rank of the group, in the same order, including
 * ranks that have nothing to send (they send zero bytes). Every blocking call gives up
 * after the group's timeout or when any rank calls dsr1_comm_abort(), returning an error
 * that names the peers that did not answer — a dead or failed peer never hangs the rest. */
#ifndef DSR1_COMM_H
#define DSR1_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef struct dsr1_comm dsr1_comm;

#define DSR1_COMM_ANY (-1) /* recv from whichever peer sends first */

typedef struct {
    const char *name;
    /* Send send_bytes[p] bytes to each peer p (contiguous in `send`, in rank order) and
     * receive recv_bytes[p] from each (contiguous in `recv`, in rank order). The sizes
     * must agree pairwise (exchange them first with alltoall_sizes when unknown). */
    dsr1_status (*alltoallv)(dsr1_comm *c, const void *send, const size_t *send_bytes, void *recv,
                             const size_t *recv_bytes);
    /* Each rank gives one size per peer and receives the size each peer will send it. */
    dsr1_status (*alltoall_sizes)(dsr1_comm *c, const size_t *send_sizes, size_t *recv_sizes);
    /* Point to point, matched by (peer, tag), in order per (peer, tag). recv returns the
     * next matching message in a malloc'ed buffer (*data, free() it) of *len bytes; peer
     * may be DSR1_COMM_ANY, and *src (if not NULL) receives the sender. */
    dsr1_status (*send)(dsr1_comm *c, int peer, int tag, const void *data, size_t bytes);
    dsr1_status (*recv)(dsr1_comm *c, int peer, int tag, void **data, size_t *len, int *src);
    dsr1_status (*barrier)(dsr1_comm *c);
    /* Wake every blocked call of every rank with an error carrying `reason`. */
    void (*abort)(dsr1_comm *c, const char *reason);
    void (*destroy)(dsr1_comm *c);
} dsr1_comm_ops;

struct dsr1_comm {
    const dsr1_comm_ops *ops;
    int rank, size;
    void *ctx; /* backend state */
};

static inline dsr1_status dsr1_comm_alltoallv(dsr1_comm *c, const void *send,
                                              const size_t *send_bytes, void *recv,
                                              const size_t *recv_bytes)
{
    return c->ops->alltoallv(c, send, send_bytes, recv, recv_bytes);
}
static inline dsr1_status dsr1_comm_alltoall_sizes(dsr1_comm *c, const size_t *send_sizes,
                                                   size_t *recv_sizes)
{
    return c->ops->alltoall_sizes(c, send_sizes, recv_sizes);
}
static inline dsr1_status dsr1_comm_send(dsr1_comm *c, int peer, int tag, const void *data,
                                         size_t bytes)
{
    return c->ops->send(c, peer, tag, data, bytes);
}
static inline dsr1_status dsr1_comm_recv(dsr1_comm *c, int peer, int tag, void **data, size_t *len,
                                         int *src)
{
    return c->ops->recv(c, peer, tag, data, len, src);
}
static inline dsr1_status dsr1_comm_barrier(dsr1_comm *c)
{
    return c->ops->barrier(c);
}
static inline void dsr1_comm_abort(dsr1_comm *c, const char *reason)
{
    c->ops->abort(c, reason);
}
/* Destroying one rank's handle; the in-process group's shared state goes with the last. */
static inline void dsr1_comm_destroy(dsr1_comm *c)
{
    if (c) c->ops->destroy(c);
}

/* In-process group of `size` ranks for threads of one process: comms[r] is rank r's
 * handle (each used by one thread). timeout_ms bounds every blocking call (<= 0: none). */
dsr1_status dsr1_comm_inproc_create(int size, int timeout_ms, dsr1_comm **comms);

#endif
