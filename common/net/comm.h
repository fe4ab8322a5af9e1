/* The communication interface between workers: one ops table, several backends.
 *
 * A dsr1_comm is one rank's handle on a group of `size` ranks. Backends: in-process
 * (threads of one process, embedded mode; comm_inproc.c), UCX between hosts
 * (comm_ucx.c) and NCCL between GPUs (comm_nccl.c), with MPI only for bootstrap. Which
 * one runs is configuration; the model code only sees this table.
 *
 * Collectives must be entered by every rank of the group, in the same order, including
 * ranks that have nothing to send (they send zero bytes). Every blocking call gives up
 * after the group's timeout or when any rank calls dsr1_comm_abort(), returning an error
 * that names the peers that did not answer — a dead or failed peer never hangs the rest.
 *
 * What differs between the backends (the NCCL column is forced by NCCL's point-to-point
 * model, which is neither tag-matched nor buffered):
 *
 *                          inproc          ucx                  nccl
 *   recv from DSR1_COMM_ANY  yes             yes                  no: DSR1_ERR_UNSUPPORTED
 *   send returns           once copied     once copied          once the peer received it
 *   tags from one peer     any order       any order            per-peer FIFO; a recv reads
 *                                                               ahead and holds up to 256
 *                                                               other-tag messages for later
 *   calls between a pair   any mix         any mix              same order on both sides
 *                                                               (p2p and collectives share
 *                                                               one channel per pair)
 *   a recv that times out  returns error   returns error        aborts the handle
 *   abort reaches          every rank      every live peer      this rank, and the ranks of a
 *                                          (notice)             _create_local group; other
 *                                                               processes by their timeout
 *   failure names          the late rank   the late/lost rank   the peers of the call (NCCL
 *                                                               cannot tell which is late)
 *   buffers                host            host                 host, staged through the GPU */
#ifndef DSR1_COMM_H
#define DSR1_COMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dsr1_build_config.h"
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
    /* Optional (NULL: not known). The peer the last failed call on this handle was blamed
     * on (lost, or the first that had not answered at the timeout), or -1. */
    int (*culprit)(dsr1_comm *c);
    /* Optional (NULL: never). Whether peer p is known lost (its endpoint failed, or it was
     * never connected). */
    bool (*peer_lost)(dsr1_comm *c, int peer);
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
static inline int dsr1_comm_culprit(dsr1_comm *c)
{
    return c->ops->culprit ? c->ops->culprit(c) : -1;
}
static inline bool dsr1_comm_peer_lost(dsr1_comm *c, int peer)
{
    return c->ops->peer_lost ? c->ops->peer_lost(c, peer) : false;
}
/* Destroying one rank's handle; the in-process group's shared state goes with the last. */
static inline void dsr1_comm_destroy(dsr1_comm *c)
{
    if (c) c->ops->destroy(c);
}

/* In-process group of `size` ranks for threads of one process: comms[r] is rank r's
 * handle (each used by one thread). timeout_ms bounds every blocking call (<= 0: none). */
dsr1_status dsr1_comm_inproc_create(int size, int timeout_ms, dsr1_comm **comms);

/* UCX backend (comm_ucx.c; defined only when DSR1_HAVE_UCX). Each rank handle owns one
 * UCP context and worker. Making a group takes two steps because the addresses travel
 * out of band: every rank creates its local endpoint and publishes its worker address;
 * once all addresses are known (MPI allgather, or in memory), each rank connects.
 * Endpoints use peer error handling: a lost peer fails every call that waits for it,
 * naming it. A handle is used by one thread at a time (it may change threads). */
typedef struct dsr1_ucx_local dsr1_ucx_local;

dsr1_status dsr1_ucx_local_create(dsr1_ucx_local **out);
/* This rank's UCP worker address, owned by the local (valid until it is destroyed). */
void dsr1_ucx_local_address(const dsr1_ucx_local *l, const void **addr, size_t *len);
void dsr1_ucx_local_destroy(dsr1_ucx_local *l);

typedef struct {
    int rank, size;
    int timeout_ms;            /* bound on every blocking call (<= 0: none) */
    const char *name;          /* of the group, for messages ("world", "stage 0 EP") */
    const char *const *labels; /* optional [size] names of the ranks for messages; copied */
    /* A tolerant group (the world group of a grid that survives lost workers) never aborts
     * itself: a call that fails because of one peer (lost, or silent past the timeout)
     * returns an error naming it (culprit), sends no abort notice, and leaves the group
     * usable with the other peers. recv from DSR1_COMM_ANY skips peers lost before it
     * began, and a peer lost while it waits ends it (naming that peer). Sends still in
     * flight to a lost peer are cancelled. dsr1_comm_abort still ends the whole group.
     * A recv from a silent peer times out blaming it without marking it lost, unless it
     * went silent halfway through a transfer (its endpoint is then closed: lost). */
    bool tolerant;
} dsr1_ucx_group_params;

/* Rank p->rank's handle on the group whose ranks' worker addresses are addrs[r] (lens[r]
 * bytes; addrs[p->rank] is this local's own). Takes ownership of `local`, also on
 * failure. Does not wait for the peers: the first call that talks to them does. In a
 * tolerant group addrs[r] may be NULL: rank r is not connected (a worker talks only to
 * the coordinator on the world group); calls to it fail and it counts as lost. */
dsr1_status dsr1_comm_ucx_connect(dsr1_ucx_local *local, const dsr1_ucx_group_params *p,
                                  const void *const *addrs, const size_t *lens, dsr1_comm **out);
/* Tolerant groups only (DSR1_ERR_INVALID_ARG otherwise): rank `peer` is now the process at
 * addr (a replacement worker that joined): the old endpoint is closed by force, the
 * messages the old process sent that were not received yet are dropped, a new endpoint is
 * made, the peer is live again and no longer the culprit. Point-to-point traffic with it
 * works at once; collectives need every rank to have entered the same number of them (a
 * newcomer starts from none), so a group with a replaced rank should not use them. */
dsr1_status dsr1_comm_ucx_replace_peer(dsr1_comm *c, int peer, const void *addr, size_t len);
/* This rank's own UCP worker address in a UCX group (owned by the handle). */
void dsr1_comm_ucx_address(const dsr1_comm *c, const void **addr, size_t *len);
/* All `size` ranks of a group in this process, connected over loopback (embedded mode):
 * comms[r] is rank r's handle. labels as above (may be NULL). */
dsr1_status dsr1_comm_ucx_create_local(int size, int timeout_ms, const char *name,
                                       const char *const *labels, dsr1_comm **comms);
/* Test hook, UCX handles only: after the n-th successful recv with `tag` on c, c and
 * `also` (may be NULL) die the way a killed process would — their endpoints and workers
 * close without any notice — and every later call on them fails. */
void dsr1_comm_ucx_crash_after(dsr1_comm *c, int tag, int n, dsr1_comm *also);
/* The tag for dsr1_comm_ucx_crash_after that means: in the middle of the n-th all-to-all
 * (after sending to half of the peers). */
#define DSR1_COMM_CRASH_COLLECTIVE (-1)

#if DSR1_HAVE_NCCL
/* NCCL backend (comm_nccl.c): one NCCL communicator, CUDA stream and set of staging
 * buffers per rank handle, each rank on its own GPU (NCCL refuses two ranks of a group on
 * one device). The ops take host buffers, as the rest of the engine does today: they are
 * copied through pinned host memory to the device and back (buffers grow on demand and
 * are kept). Every wait polls the stream and NCCL's error state against the group's
 * timeout; a timeout, an NCCL or CUDA error, or an abort ends with ncclCommAbort, after
 * which every call on the handle fails. A handle is used by one thread at a time (it may
 * change threads: each call selects the handle's device); dsr1_comm_abort may come from
 * any thread. */
#define DSR1_NCCL_ID_BYTES 128 /* sizeof(ncclUniqueId) */

/* The number of CUDA devices this process sees (0 is possible). An error, with the CUDA
 * runtime's reason, when there is no driver or the runtime cannot start. */
dsr1_status dsr1_cuda_device_count(int *count);
/* A new group identity: one rank makes it and hands the bytes to every rank of the group
 * (MPI broadcast: dsr1_mpi_nccl_connect; in memory: dsr1_comm_nccl_create_local). */
dsr1_status dsr1_nccl_unique_id(unsigned char id[DSR1_NCCL_ID_BYTES]);
/* Rank `rank`'s handle on the NCCL group of `size` ranks named by unique_id
 * (DSR1_NCCL_ID_BYTES bytes), on CUDA device cuda_device. Every rank of the group must
 * call it at about the same time (other threads or processes): it waits, at most
 * timeout_ms (<= 0: no bound), for the group to form. */
dsr1_status dsr1_comm_nccl_create(int rank, int size, const void *unique_id, int cuda_device,
                                  int timeout_ms, dsr1_comm **out);
/* All `size` ranks of a group in this process, rank r on devices[r] (NULL: device r):
 * comms[r] is rank r's handle, for thread r (embedded mode). These handles share their
 * abort state: an abort or a failure on one wakes the calls blocked on all of them. */
dsr1_status dsr1_comm_nccl_create_local(int size, const int *devices, int timeout_ms,
                                        dsr1_comm **comms);
#endif

#endif
