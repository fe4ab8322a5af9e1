/* UCX backend of the comm interface (see comm.h): one UCP context and worker per rank
 * handle, tag-matched messages between them.
 *
 * Tags: kind (4 bits) | source rank (20 bits) | low 40 bits. Point-to-point messages
 * carry the user tag in the low bits and are received by probing (so that the size need
 * not be known and DSR1_COMM_ANY masks the source out); collectives carry the group's
 * collective sequence number, so a late message can never match the wrong collective;
 * abort notices have a kind of their own and one receive for them is always posted.
 *
 * Waiting: every blocking call runs a progress loop with a deadline (the group's
 * timeout). After a few idle rounds it sleeps on the worker's wake-up descriptor, at most
 * 20 ms at a time, so that ranks that share cores do not burn them spinning, and so that
 * UCX's keepalive (which detects dead processes on shared-memory transports) keeps
 * running. A peer whose endpoint fails (error callback: connection reset, keepalive) is
 * marked lost; a call that waits for it fails naming it.
 *
 * Failure inside a call (timeout, lost peer, abort notice) aborts the group: the reason
 * goes to every live peer, receives still posted are cancelled, and endpoints with sends
 * still in flight are closed by force, so that no request outlives the call that owned
 * its buffer. After that every call fails; the handle only needs destroying.
 *
 * A tolerant group (the world group of a grid that survives lost workers) never aborts
 * itself: a failed call records the peer it blames (culprit), cancels its own receives and
 * returns. Its collective sends are buffered like point-to-point ones, so that a failed
 * call leaves nothing on the caller's buffers without closing the live peers' endpoints.
 * The endpoint of a lost peer is closed by force at the next call (settle_lost), which
 * ends the buffered sends still in flight to it. recv from anyone skips lost peers. A
 * replaced peer gets a new endpoint; what its predecessor sent and nobody received yet is
 * dropped. An explicit dsr1_comm_abort, or an abort notice, still ends the group. */
#include "comm.h"

#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <ucp/api/ucp.h>

#include "log.h"

enum { KIND_P2P = 1, KIND_COLL = 2, KIND_ABORT = 3 };
#define KIND_SHIFT 60
#define SRC_SHIFT  40
#define SRC_BITS   20
#define LOW_MASK   ((UINT64_C(1) << SRC_SHIFT) - 1)
#define SRC_FIELD  (((UINT64_C(1) << SRC_BITS) - 1) << SRC_SHIFT)
#define MAX_RANKS  65536
#define REASON_MAX 512
#define CLEANUP_MS 2000 /* bound on closing endpoints and draining requests */

static ucp_tag_t make_tag(int kind, int src, uint64_t low)
{
    return ((uint64_t)kind << KIND_SHIFT) | ((uint64_t)src << SRC_SHIFT) | (low & LOW_MASK);
}

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

struct dsr1_ucx_local {
    ucp_context_h ctx;
    ucp_worker_h worker;
    ucp_address_t *addr;
    size_t addr_len;
    int efd; /* wake-up descriptor; -1 when the transports offer none */
};

typedef struct group group;

/* A point-to-point message in flight: sends are buffered (the caller's buffer is free
 * when send returns, as with the in-process backend), so a sender never waits for its
 * receiver to get round to the message. */
typedef struct outmsg {
    struct outmsg *next;
    void *req;
    unsigned char data[];
} outmsg;

typedef struct {
    group *g;
    int peer;
} peer_ref;

struct group {
    dsr1_ucx_local *l;
    int rank, size, timeout_ms;
    char name[64];
    char **labels;      /* [size] or NULL */
    ucp_ep_h *eps;      /* [size]; NULL once closed */
    peer_ref *refs;     /* error-callback arguments */
    ucs_status_t *lost; /* [size]: UCS_OK while the peer is alive */
    void **rreq, **sreq;
    ucp_tag_recv_info_t *rinfo;
    bool *mask;           /* scratch for close_eps */
    size_t *zeros, *word; /* barrier and alltoall_sizes byte counts */
    uint64_t seq;
    bool aborted, notified, crashed;
    unsigned losses; /* peers found lost so far (the error callback counts them) */
    int last_lost;   /* the last of them */
    bool tolerant; /* failures blame one peer and never abort the group (comm.h) */
    bool settle;   /* a peer was lost since the last settle_lost (tolerant groups) */
    int culprit;   /* the peer the last failed call was blamed on, or -1 */
    char reason[REASON_MAX];
    void *notice_req; /* the posted receive for abort notices */
    char notice_in[REASON_MAX];
    void **notice_out; /* [size] abort notices in flight; payload in `reason` */
    outmsg *outbox;
    int crash_tag, crash_left;
    dsr1_comm *crash_also;
};

/* ---- local endpoint ---------------------------------------------------------------- */

/* Whether UCX_TLS leaves UCX's TCP transport in (unset: every transport). A key no
 * transport takes makes UCX warn "invalid configuration" in every process. */
static bool tcp_maybe_used(void)
{
    const char *t = getenv("UCX_TLS");
    if (!t || !*t) return true;
    if (t[0] == '^') return !strstr(t, "tcp"); /* an exclusion list */
    return strstr(t, "tcp") || strstr(t, "all");
}

dsr1_status dsr1_ucx_local_create(dsr1_ucx_local **out)
{
    dsr1_ucx_local *l = calloc(1, sizeof(*l));
    if (!l) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    l->efd = -1;
    ucp_config_t *cfg;
    ucs_status_t s = ucp_config_read(NULL, NULL, &cfg);
    if (s != UCS_OK) {
        free(l);
        return dsr1_error(DSR1_ERR_IO, "UCX: reading the configuration: %s", ucs_status_string(s));
    }
    /* dead processes on shared memory are found by keepalive only: check every second */
    if (!getenv("UCX_KEEPALIVE_INTERVAL")) ucp_config_modify(cfg, "KEEPALIVE_INTERVAL", "1s");
    /* One socket event per TCP progress call (UCX_TCP_MAX_POLL; the key also sets the
     * CUDA transports', which we do not use). With a batch of several, handling one event
     * can close another endpoint (a send on the TX socket of a peer that just died fails
     * while its RX socket's event is handled), and UCX 1.13 (Debian 12's; the handler is
     * unchanged since) aborts on an assertion when the batch reaches that endpoint's stale
     * event: a lost peer took this process with it in 2-6% of the crash tests. */
    if (!getenv("UCX_TCP_MAX_POLL") && tcp_maybe_used()) ucp_config_modify(cfg, "MAX_POLL", "1");
    ucp_params_t prm = {.field_mask = UCP_PARAM_FIELD_FEATURES,
                        .features = UCP_FEATURE_TAG | UCP_FEATURE_WAKEUP};
    s = ucp_init(&prm, cfg, &l->ctx);
    ucp_config_release(cfg);
    if (s != UCS_OK) {
        free(l);
        return dsr1_error(DSR1_ERR_IO, "UCX: ucp_init: %s (check UCX_TLS / UCX_NET_DEVICES)",
                          ucs_status_string(s));
    }
    ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                              .thread_mode = UCS_THREAD_MODE_SERIALIZED};
    if ((s = ucp_worker_create(l->ctx, &wp, &l->worker)) != UCS_OK) {
        ucp_cleanup(l->ctx);
        free(l);
        return dsr1_error(DSR1_ERR_IO, "UCX: creating a worker: %s", ucs_status_string(s));
    }
    if ((s = ucp_worker_get_address(l->worker, &l->addr, &l->addr_len)) != UCS_OK) {
        ucp_worker_destroy(l->worker);
        ucp_cleanup(l->ctx);
        free(l);
        return dsr1_error(DSR1_ERR_IO, "UCX: worker address: %s", ucs_status_string(s));
    }
    if (ucp_worker_get_efd(l->worker, &l->efd) != UCS_OK) l->efd = -1;
    *out = l;
    return DSR1_OK;
}

void dsr1_ucx_local_address(const dsr1_ucx_local *l, const void **addr, size_t *len)
{
    *addr = l->addr;
    *len = l->addr_len;
}

void dsr1_ucx_local_destroy(dsr1_ucx_local *l)
{
    if (!l) return;
    ucp_worker_release_address(l->worker, l->addr);
    ucp_worker_destroy(l->worker);
    ucp_cleanup(l->ctx);
    free(l);
}

/* One round of a wait loop: progress; after a run of idle rounds sleep on the wake-up
 * descriptor (or briefly, without one) until something arrives or 20 ms pass. */
static void wait_round(dsr1_ucx_local *l, int64_t deadline, int *idle)
{
    if (ucp_worker_progress(l->worker)) {
        *idle = 0;
        return;
    }
    if (++*idle < 64) return;
    *idle = 0;
    int64_t left = deadline - now_ms();
    int ms = left > 20 ? 20 : left < 1 ? 1 : (int)left;
    if (l->efd >= 0) {
        ucs_status_t s = ucp_worker_arm(l->worker);
        if (s == UCS_ERR_BUSY) return;
        if (s == UCS_OK) {
            struct pollfd p = {l->efd, POLLIN, 0};
            poll(&p, 1, ms);
            return;
        }
    }
    struct timespec ts = {0, 100000};
    nanosleep(&ts, NULL);
}

/* ---- names and errors -------------------------------------------------------------- */

static const char *who(const group *g, int r, char buf[32])
{
    if (g->labels) return g->labels[r];
    snprintf(buf, 32, "rank %d", r);
    return buf;
}

/* Where an error happened: "<group> group" and, when the ranks have no labels (the
 * caller then has no better name for itself), this rank's number. */
static const char *where(const group *g, char buf[128])
{
    if (g->labels)
        snprintf(buf, 128, "%s group", g->name);
    else
        snprintf(buf, 128, "%s group, rank %d", g->name, g->rank);
    return buf;
}

static dsr1_status aborted_error(const group *g)
{
    char w[128];
    if (g->crashed)
        return dsr1_error(DSR1_ERR_IO, "%s: stopped by the test hook (simulated crash)",
                          where(g, w));
    return dsr1_error(DSR1_ERR_IO, "%s: communication aborted by %s", where(g, w), g->reason);
}

/* The first lost peer among those flagged in `which` (all peers when NULL), or -1. */
static int first_lost(const group *g, void *const *which)
{
    for (int p = 0; p < g->size; p++)
        if (p != g->rank && (g->lost[p] != UCS_OK || !g->eps[p]) && (!which || which[p])) return p;
    return -1;
}

static bool all_lost(const group *g)
{
    for (int p = 0; p < g->size; p++)
        if (p != g->rank && g->lost[p] == UCS_OK && g->eps[p]) return false;
    return true;
}

static void on_peer_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    peer_ref *r = arg;
    char b[32];
    /* an endpoint closed or replaced since (replace_peer) says nothing of the peer now */
    if (ep != r->g->eps[r->peer]) return;
    if (r->g->lost[r->peer] == UCS_OK) {
        r->g->lost[r->peer] = status == UCS_OK ? UCS_ERR_ENDPOINT_TIMEOUT : status;
        r->g->settle = true;
        r->g->losses++;
        r->g->last_lost = r->peer;
        DSR1_DEBUG("UCX (%s): endpoint to %s failed: %s", r->g->name, who(r->g, r->peer, b),
                   ucs_status_string(status));
    }
}

static void on_notice(void *req, ucs_status_t status, const ucp_tag_recv_info_t *info, void *arg)
{
    (void)req;
    group *g = arg;
    if (status == UCS_ERR_CANCELED) return;
    if (!g->aborted) {
        size_t n = status == UCS_OK && info->length < REASON_MAX ? info->length : REASON_MAX - 1;
        memcpy(g->reason, g->notice_in, n);
        g->reason[n] = 0;
        if (status != UCS_OK)
            snprintf(g->reason, REASON_MAX, "a peer aborted (notice lost: %s)",
                     ucs_status_string(status));
        g->aborted = true;
        g->notified = true; /* the origin told everyone */
    }
}

/* ---- endpoints and requests -------------------------------------------------------- */

/* Close the endpoints flagged in `which` (all when NULL), by force (no flush, nothing more
 * is sent) or after flushing what was sent, and wait for them until the deadline. */
static void close_eps(group *g, const bool *which, bool force, int64_t deadline)
{
    void **reqs = calloc((size_t)g->size, sizeof(void *));
    for (int p = 0; p < g->size; p++) {
        if (!g->eps[p] || (which && !which[p])) continue;
        ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                                   .flags =
                                       force || g->lost[p] != UCS_OK ? UCP_EP_CLOSE_FLAG_FORCE : 0};
        void *r = ucp_ep_close_nbx(g->eps[p], &prm);
        g->eps[p] = NULL;
        if (r && !UCS_PTR_IS_ERR(r)) {
            if (reqs)
                reqs[p] = r;
            else
                ucp_request_free(r); /* released by UCX when it completes */
        }
    }
    int idle = 0;
    for (int p = 0; reqs && p < g->size; p++) {
        while (reqs[p] && ucp_request_check_status(reqs[p]) == UCS_INPROGRESS &&
               now_ms() < deadline)
            wait_round(g->l, deadline, &idle);
        if (reqs[p]) ucp_request_free(reqs[p]); /* a flush that cannot finish is abandoned */
    }
    free(reqs);
}

/* Test a request (NULL: done); frees it once done. INPROGRESS while pending. */
static ucs_status_t req_test(void **r, ucp_tag_recv_info_t *info)
{
    if (!*r) return UCS_OK;
    ucs_status_t s = info ? ucp_tag_recv_request_test(*r, info) : ucp_request_check_status(*r);
    if (s != UCS_INPROGRESS) {
        ucp_request_free(*r);
        *r = NULL;
    }
    return s;
}

/* Free the buffered sends that have completed. A failed one needs no report here: its
 * peer is marked lost by the error callback, and the next call that needs it fails. */
static void settle_lost(group *g);
static void reap(group *g)
{
    settle_lost(g);
    for (outmsg **q = &g->outbox; *q;) {
        outmsg *m = *q;
        if (ucp_request_check_status(m->req) == UCS_INPROGRESS) {
            q = &m->next;
            continue;
        }
        *q = m->next;
        ucp_request_free(m->req);
        free(m);
    }
}

/* Let go of the requests still pending, then the transport; the buffered sends' memory
 * goes after the worker, which is the last thing that could read it. */
static void release(group *g)
{
    for (outmsg *m = g->outbox; m; m = m->next) ucp_request_free(m->req);
    for (int p = 0; p < g->size; p++)
        if (g->notice_out[p]) ucp_request_free(g->notice_out[p]);
    if (g->notice_req) ucp_request_free(g->notice_req);
    dsr1_ucx_local_destroy(g->l);
    g->l = NULL;
    for (outmsg *m = g->outbox, *nx; m; m = nx) {
        nx = m->next;
        free(m);
    }
    g->outbox = NULL;
    memset(g->notice_out, 0, sizeof(void *) * (size_t)g->size);
    g->notice_req = NULL;
}

/* Tell every live peer why this group aborted (once; notices complete in the background,
 * destroy reaps them). */
static void notify_peers(group *g)
{
    if (g->notified || g->crashed) return;
    g->notified = true;
    ucp_request_param_t prm = {.op_attr_mask = 0};
    const size_t n = strlen(g->reason);
    for (int p = 0; p < g->size; p++) {
        if (p == g->rank || !g->eps[p] || g->lost[p] != UCS_OK) continue;
        void *r = ucp_tag_send_nbx(g->eps[p], g->reason, n, make_tag(KIND_ABORT, g->rank, 0), &prm);
        g->notice_out[p] = UCS_PTR_IS_ERR(r) ? NULL : r;
    }
    const int64_t dl = now_ms() + 200;
    int idle = 0;
    for (int p = 0; p < g->size; p++)
        while (g->notice_out[p] && req_test(&g->notice_out[p], NULL) == UCS_INPROGRESS &&
               now_ms() < dl)
            wait_round(g->l, dl, &idle);
}

/* Requests of a failed call must not outlive it (they point into the caller's buffers):
 * cancel the receives, close by force the endpoints that still have sends (or matched
 * receives) in flight, and wait until every request has completed. */
static void drain(group *g)
{
    for (int p = 0; p < g->size; p++)
        if (g->rreq[p]) ucp_request_cancel(g->l->worker, g->rreq[p]);
    bool any = false;
    for (int p = 0; p < g->size; p++) any |= g->mask[p] = g->sreq[p] || g->rreq[p];
    if (any) close_eps(g, g->mask, true, now_ms() + CLEANUP_MS);
    const int64_t dl = now_ms() + CLEANUP_MS;
    int idle = 0;
    for (int p = 0; p < g->size; p++) {
        while ((g->rreq[p] && req_test(&g->rreq[p], &g->rinfo[p]) == UCS_INPROGRESS) ||
               (g->sreq[p] && req_test(&g->sreq[p], NULL) == UCS_INPROGRESS)) {
            if (now_ms() >= dl) {
                char b[32];
                DSR1_ERROR("UCX (%s): a request to %s did not complete after cancellation; "
                           "leaking it",
                           g->name, who(g, p, b));
                g->rreq[p] = g->sreq[p] = NULL;
                break;
            }
            wait_round(g->l, dl, &idle);
        }
    }
}

/* Tolerant groups: close by force the endpoints of the peers lost since the last call, so
 * that the buffered sends still in flight to them complete (with an error) and are reaped.
 * Not from the error callback itself: UCX is inside a progress call there. */
static void settle_lost(group *g)
{
    if (!g->tolerant || !g->settle || !g->l) return;
    g->settle = false;
    bool any = false;
    for (int p = 0; p < g->size; p++)
        any |= g->mask[p] = p != g->rank && g->eps[p] && g->lost[p] != UCS_OK;
    if (any) close_eps(g, g->mask, true, now_ms() + CLEANUP_MS);
}

/* Tolerant groups: end the failed call's requests without touching the other peers:
 * cancel the receives, close by force the endpoints of lost peers with requests in flight,
 * and wait for the rest. A request that still has not completed at the bound (a transfer
 * from a peer that went silent halfway) takes its peer's endpoint down: that peer is lost. */
static void drain_tolerant(group *g)
{
    for (int p = 0; p < g->size; p++)
        if (g->rreq[p]) ucp_request_cancel(g->l->worker, g->rreq[p]);
    for (int round = 0; round < 2; round++) {
        bool any = false;
        for (int p = 0; p < g->size; p++)
            any |= g->mask[p] =
                (g->sreq[p] || g->rreq[p]) && g->eps[p] && (round || g->lost[p] != UCS_OK);
        if (any) close_eps(g, g->mask, true, now_ms() + CLEANUP_MS);
        const int64_t dl = now_ms() + CLEANUP_MS;
        int idle = 0, pending = 1;
        while (pending && now_ms() < dl) {
            pending = 0;
            for (int p = 0; p < g->size; p++) {
                if (g->rreq[p] && req_test(&g->rreq[p], &g->rinfo[p]) == UCS_INPROGRESS) pending++;
                if (g->sreq[p] && req_test(&g->sreq[p], NULL) == UCS_INPROGRESS) pending++;
            }
            if (pending) wait_round(g->l, dl, &idle);
        }
        if (!pending) return;
        for (int p = 0; p < g->size; p++)
            if ((g->rreq[p] || g->sreq[p]) && g->lost[p] == UCS_OK) {
                char b[32];
                DSR1_WARN("UCX (%s): %s stopped halfway through a transfer; dropping it", g->name,
                          who(g, p, b));
                g->lost[p] = UCS_ERR_TIMED_OUT;
            }
    }
    for (int p = 0; p < g->size; p++)
        if (g->rreq[p] || g->sreq[p]) {
            char b[32];
            DSR1_ERROR("UCX (%s): a request to %s did not complete after cancellation; leaking it",
                       g->name, who(g, p, b));
            g->rreq[p] = g->sreq[p] = NULL;
        }
}

/* Fail the call in progress, blaming `peer` (-1: none). A non-tolerant group aborts:
 * record the reason (unless an abort notice came first), tell the peers, drain the
 * requests. A tolerant group only ends this call's requests (unless it was aborted
 * explicitly). Returns the error for the caller. */
static dsr1_status vfail(group *g, int peer, const char *fmt, va_list ap)
{
    char b[32], w[128], text[384];
    vsnprintf(text, sizeof(text), fmt, ap);
    g->culprit = peer;
    if (g->tolerant && !g->aborted) {
        drain_tolerant(g);
        return dsr1_error(DSR1_ERR_IO, "%s: %s", where(g, w), text);
    }
    if (!g->aborted) {
        /* the peers learn who saw what */
        snprintf(g->reason, REASON_MAX, "%s: %s", who(g, g->rank, b), text);
        g->aborted = true;
        notify_peers(g);
        drain(g);
        return dsr1_error(DSR1_ERR_IO, "%s: %s", where(g, w), text);
    }
    notify_peers(g);
    drain(g);
    return aborted_error(g);
}

static dsr1_status fail(group *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static dsr1_status fail(group *g, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    dsr1_status st = vfail(g, -1, fmt, ap);
    va_end(ap);
    return st;
}

/* fail, blaming `peer` (lost, or late) */
static dsr1_status fail_peer(group *g, int peer, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static dsr1_status fail_peer(group *g, int peer, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    dsr1_status st = vfail(g, peer, fmt, ap);
    va_end(ap);
    return st;
}

/* A buffered send (the message is copied; its request joins the outbox). */
static ucs_status_t post_buffered(group *g, int peer, ucp_tag_t tag, const void *data, size_t bytes)
{
    outmsg *m = malloc(sizeof(*m) + bytes);
    if (!m) return UCS_ERR_NO_MEMORY;
    if (bytes) memcpy(m->data, data, bytes);
    ucp_request_param_t prm = {.op_attr_mask = 0};
    void *r = ucp_tag_send_nbx(g->eps[peer], m->data, bytes, tag, &prm);
    if (UCS_PTR_IS_ERR(r)) {
        free(m);
        return UCS_PTR_STATUS(r);
    }
    if (!r) { /* done already (UCX copied it) */
        free(m);
        return UCS_OK;
    }
    m->req = r;
    m->next = g->outbox;
    g->outbox = m;
    return UCS_OK;
}

static dsr1_status usable(group *g)
{
    if (g->crashed || g->aborted) return aborted_error(g);
    return DSR1_OK;
}

/* ---- collectives ------------------------------------------------------------------- */

static void crash(dsr1_comm *c);

/* The test hook's crash in the middle of a collective (see dsr1_comm_ucx_crash_after). */
static dsr1_status crash_in_collective(dsr1_comm *c, uint64_t seq)
{
    group *g = c->ctx;
    char b[32];
    DSR1_WARN("test hook: %s (%s) simulates a crash in all-to-all %llu", who(g, g->rank, b),
              g->name, (unsigned long long)seq);
    if (g->crash_also) crash(g->crash_also);
    crash(c);
    return aborted_error(g);
}

static dsr1_status ux_alltoallv(dsr1_comm *c, const void *send, const size_t *send_bytes,
                                void *recv, const size_t *recv_bytes)
{
    group *g = c->ctx;
    const int n = g->size, me = g->rank;
    static char zero_byte; /* a valid address for zero-byte messages (never written) */
    dsr1_status st;
    char b[32];
    if ((st = usable(g)) != DSR1_OK) return st;
    const uint64_t seq = ++g->seq;
    const int64_t dl = deadline_after(g->timeout_ms);
    ucp_worker_h w = g->l->worker;
    size_t so = 0, ro = 0, my_so = 0, my_ro = 0;
    const bool crash_now = g->crash_tag == DSR1_COMM_CRASH_COLLECTIVE && g->crash_left > 0 &&
                           --g->crash_left == 0; /* test hook: dies halfway through this one */
    for (int p = 0; p < n; p++) {
        if (p == me) {
            my_ro = ro;
            ro += recv_bytes[p];
            continue;
        }
        /* always a request: its test gives the received length */
        ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FLAG_NO_IMM_CMPL};
        void *buf = recv_bytes[p] ? (unsigned char *)recv + ro : (void *)&zero_byte;
        void *r = ucp_tag_recv_nbx(w, buf, recv_bytes[p], make_tag(KIND_COLL, p, seq), ~UINT64_C(0),
                                   &prm);
        if (UCS_PTR_IS_ERR(r))
            return fail_peer(g, p, "receiving from %s: %s", who(g, p, b),
                             ucs_status_string(UCS_PTR_STATUS(r)));
        g->rreq[p] = r;
        ro += recv_bytes[p];
    }
    for (int p = 0; p < n; p++) {
        if (p == me) {
            my_so = so;
            so += send_bytes[p];
            continue;
        }
        if (crash_now && p >= n / 2) return crash_in_collective(c, seq);
        if (g->lost[p] != UCS_OK || !g->eps[p]) break; /* reported by the wait below */
        const void *buf =
            send_bytes[p] ? (const unsigned char *)send + so : (const void *)&zero_byte;
        if (g->tolerant) {
            /* buffered, so that a failed collective leaves no send on the caller's buffer
             * and the live peers' endpoints need not close */
            ucs_status_t s = post_buffered(g, p, make_tag(KIND_COLL, me, seq), buf, send_bytes[p]);
            if (s != UCS_OK)
                return fail_peer(g, p, "sending to %s: %s", who(g, p, b), ucs_status_string(s));
            so += send_bytes[p];
            continue;
        }
        ucp_request_param_t prm = {.op_attr_mask = 0};
        void *r =
            ucp_tag_send_nbx(g->eps[p], buf, send_bytes[p], make_tag(KIND_COLL, me, seq), &prm);
        if (UCS_PTR_IS_ERR(r))
            return fail_peer(g, p, "sending to %s: %s", who(g, p, b),
                             ucs_status_string(UCS_PTR_STATUS(r)));
        g->sreq[p] = r;
        so += send_bytes[p];
    }
    if (crash_now) return crash_in_collective(c, seq); /* the last rank: after all its sends */
    if (send_bytes[me] != recv_bytes[me])
        return fail(g, "all-to-all size mismatch: sends itself %zu bytes, %zu expected",
                    send_bytes[me], recv_bytes[me]);
    if (send_bytes[me])
        memcpy((unsigned char *)recv + my_ro, (const unsigned char *)send + my_so, send_bytes[me]);
    int idle = 0;
    for (;;) {
        int pending = 0;
        for (int p = 0; p < n; p++) {
            if (g->rreq[p]) {
                ucs_status_t s = req_test(&g->rreq[p], &g->rinfo[p]);
                if (s == UCS_INPROGRESS)
                    pending++;
                else if (s == UCS_ERR_MESSAGE_TRUNCATED ||
                         (s == UCS_OK && g->rinfo[p].length != recv_bytes[p]))
                    return fail_peer(g, p,
                                     "all-to-all size mismatch: %s sends %s than the %zu bytes "
                                     "expected",
                                     who(g, p, b), s == UCS_OK ? "fewer" : "more", recv_bytes[p]);
                else if (s != UCS_OK && g->lost[p] == UCS_OK)
                    return fail_peer(g, p, "receiving from %s: %s", who(g, p, b),
                                     ucs_status_string(s));
            }
            if (g->sreq[p]) {
                ucs_status_t s = req_test(&g->sreq[p], NULL);
                if (s == UCS_INPROGRESS)
                    pending++;
                else if (s != UCS_OK && g->lost[p] == UCS_OK)
                    return fail_peer(g, p, "sending to %s: %s", who(g, p, b), ucs_status_string(s));
            }
        }
        if (!pending && first_lost(g, NULL) < 0) return DSR1_OK;
        if (g->aborted) return fail(g, "aborted");
        int lp = first_lost(g, NULL);
        if (lp >= 0)
            return fail_peer(g, lp, "%s was lost (%s) during collective %" PRIu64, who(g, lp, b),
                             ucs_status_string(g->lost[lp] ? g->lost[lp] : UCS_ERR_NOT_CONNECTED),
                             seq);
        if (now_ms() >= dl) {
            char missing[256] = "";
            size_t o = 0;
            int late = -1;
            for (int p = 0; p < n && o < sizeof(missing) - 40; p++)
                if (g->rreq[p] || g->sreq[p]) {
                    if (late < 0) late = p;
                    o += (size_t)snprintf(missing + o, sizeof(missing) - o, "%s%s", o ? ", " : "",
                                          who(g, p, b));
                }
            return fail_peer(g, late, "%s did not reach collective %" PRIu64 " within %d ms",
                             missing, seq, g->timeout_ms);
        }
        wait_round(g->l, dl, &idle);
        reap(g);
    }
}

static dsr1_status ux_alltoall_sizes(dsr1_comm *c, const size_t *send_sizes, size_t *recv_sizes)
{
    group *g = c->ctx;
    return ux_alltoallv(c, send_sizes, g->word, recv_sizes, g->word);
}

static dsr1_status ux_barrier(dsr1_comm *c)
{
    group *g = c->ctx;
    return ux_alltoallv(c, NULL, g->zeros, NULL, g->zeros);
}

/* ---- point to point ---------------------------------------------------------------- */

static dsr1_status ux_send(dsr1_comm *c, int peer, int tag, const void *data, size_t bytes)
{
    group *g = c->ctx;
    char b[32];
    dsr1_status st;
    if ((st = usable(g)) != DSR1_OK) return st;
    if (peer < 0 || peer >= g->size)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "send to rank %d of %d", peer, g->size);
    reap(g); /* in a tolerant group, this also settles the peers lost meanwhile */
    if (g->lost[peer] != UCS_OK || !g->eps[peer])
        return fail_peer(g, peer, "%s was lost (%s)", who(g, peer, b),
                         ucs_status_string(g->lost[peer] ? g->lost[peer] : UCS_ERR_NOT_CONNECTED));
    ucs_status_t s =
        post_buffered(g, peer, make_tag(KIND_P2P, g->rank, (uint32_t)tag), data, bytes);
    if (s == UCS_ERR_NO_MEMORY)
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory for a %zu-byte message", bytes);
    if (s != UCS_OK)
        return fail_peer(g, peer, "sending to %s: %s", who(g, peer, b), ucs_status_string(s));
    reap(g);
    return DSR1_OK;
}


static dsr1_status ux_recv(dsr1_comm *c, int peer, int tag, void **data, size_t *len, int *src)
{
    group *g = c->ctx;
    char b[32];
    dsr1_status st;
    if ((st = usable(g)) != DSR1_OK) return st;
    if (peer != DSR1_COMM_ANY && (peer < 0 || peer >= g->size))
        return dsr1_error(DSR1_ERR_INVALID_ARG, "recv from rank %d of %d", peer, g->size);
    const ucp_tag_t t = make_tag(KIND_P2P, peer == DSR1_COMM_ANY ? 0 : peer, (uint32_t)tag);
    const ucp_tag_t mask = peer == DSR1_COMM_ANY ? ~SRC_FIELD : ~UINT64_C(0);
    const int64_t dl = deadline_after(g->timeout_ms);
    ucp_worker_h w = g->l->worker;
    int idle = 0;
    const unsigned losses = g->losses; /* a peer lost during the wait ends a wait for anyone */
    for (;;) {
        if (g->aborted) return fail(g, "aborted");
        ucp_tag_recv_info_t info;
        ucp_tag_message_h m = ucp_tag_probe_nb(w, t, mask, 1, &info);
        if (m) {
            const int from = (int)((info.sender_tag & SRC_FIELD) >> SRC_SHIFT);
            unsigned char *buf = malloc(info.length + 1);
            if (!buf) return fail(g, "out of memory for a %zu-byte message", info.length);
            ucp_request_param_t prm = {.op_attr_mask = 0};
            void *r = ucp_tag_msg_recv_nbx(w, buf, info.length, m, &prm);
            if (UCS_PTR_IS_ERR(r)) {
                free(buf);
                return fail_peer(g, from, "receiving from %s: %s", who(g, from, b),
                                 ucs_status_string(UCS_PTR_STATUS(r)));
            }
            if (from < 0 || from >= g->size) { /* cannot be: our tags carry our ranks */
                g->rreq[0] = r;
                st = fail(g, "message from unknown rank %d", from);
                free(buf);
                return st;
            }
            g->rreq[from] = r;
            ucp_tag_recv_info_t ri;
            ucs_status_t s;
            while ((s = req_test(&g->rreq[from], &ri)) == UCS_INPROGRESS) {
                if (now_ms() >= dl || g->aborted || g->lost[from] != UCS_OK) {
                    st = g->aborted ? fail(g, "aborted")
                                    : fail_peer(g, from, "receiving %zu bytes from %s: %s",
                                                info.length, who(g, from, b),
                                                g->lost[from] ? ucs_status_string(g->lost[from])
                                                              : "timed out");
                    free(buf);
                    return st;
                }
                wait_round(g->l, dl, &idle);
            }
            if (s != UCS_OK) {
                free(buf);
                return fail_peer(g, from, "receiving from %s: %s", who(g, from, b),
                                 ucs_status_string(s));
            }
            if (g->crash_left > 0 && tag == g->crash_tag && --g->crash_left == 0) {
                free(buf);
                DSR1_WARN("test hook: %s (%s) simulates a crash", who(g, g->rank, b), g->name);
                if (g->crash_also) crash(g->crash_also);
                crash(c);
                return aborted_error(g);
            }
            *data = buf;
            *len = info.length;
            if (src) *src = from;
            return DSR1_OK;
        }
        settle_lost(g);
        /* a tolerant recv from anyone skips the peers lost before it began, unless all are;
         * one lost while it waits ends it (what it waited for may have been that peer's) */
        int lp = peer != DSR1_COMM_ANY ? (g->lost[peer] || !g->eps[peer] ? peer : -1)
                 : g->tolerant         ? (g->losses != losses ? g->last_lost : -1)
                                       : first_lost(g, NULL);
        if (lp >= 0)
            return fail_peer(g, lp, "%s was lost (%s)", who(g, lp, b),
                             ucs_status_string(g->lost[lp] ? g->lost[lp] : UCS_ERR_NOT_CONNECTED));
        if (peer == DSR1_COMM_ANY && g->tolerant && g->size > 1 && all_lost(g))
            return fail(g, "every peer was lost");
        if (now_ms() >= dl) {
            char w[128];
            g->culprit = peer;
            if (peer == DSR1_COMM_ANY)
                return dsr1_error(DSR1_ERR_IO, "%s: no message (tag %d) within %d ms", where(g, w),
                                  tag, g->timeout_ms);
            return dsr1_error(DSR1_ERR_IO, "%s: no message from %s (tag %d) within %d ms",
                              where(g, w), who(g, peer, b), tag, g->timeout_ms);
        }
        wait_round(g->l, dl, &idle);
    }
}

/* ---- abort, crash, destroy --------------------------------------------------------- */

static void ux_abort(dsr1_comm *c, const char *reason)
{
    group *g = c->ctx;
    if (g->crashed) return;
    if (!g->aborted) {
        char b[32];
        snprintf(g->reason, REASON_MAX, "%s: %s", who(g, g->rank, b), reason);
        g->aborted = true;
    }
    notify_peers(g);
}

/* Release the transport without a word to the peers, as a killed process would. */
static void crash(dsr1_comm *c)
{
    group *g = c->ctx;
    if (g->crashed) return;
    drain(g);
    close_eps(g, NULL, true, now_ms() + CLEANUP_MS);
    if (g->notice_req) ucp_request_cancel(g->l->worker, g->notice_req);
    release(g);
    g->crashed = true;
}

void dsr1_comm_ucx_crash_after(dsr1_comm *c, int tag, int n, dsr1_comm *also)
{
    group *g = c->ctx;
    g->crash_tag = tag;
    g->crash_left = n;
    g->crash_also = also;
}

static void group_free(group *g)
{
    for (int r = 0; g->labels && r < g->size; r++) free(g->labels[r]);
    free(g->labels);
    free(g->eps);
    free(g->refs);
    free(g->lost);
    free(g->rreq);
    free(g->sreq);
    free(g->rinfo);
    free(g->zeros);
    free(g->word);
    free(g->notice_out);
    free(g->mask);
    free(g);
}

static void ux_destroy(dsr1_comm *c)
{
    group *g = c->ctx;
    if (!g->crashed) {
        drain(g);
        /* deliver what was sent (the SHUTDOWN, say), close flushing to the live peers */
        const int budget =
            g->timeout_ms > 0 && g->timeout_ms < CLEANUP_MS ? g->timeout_ms : CLEANUP_MS;
        const int64_t dl = now_ms() + budget;
        int idle = 0;
        for (reap(g); g->outbox && !g->aborted && now_ms() < dl; reap(g))
            wait_round(g->l, dl, &idle);
        if (!g->aborted) { /* what the transports still hold goes out before closing */
            ucp_request_param_t prm = {.op_attr_mask = 0};
            void *f = ucp_worker_flush_nbx(g->l->worker, &prm);
            if (f && !UCS_PTR_IS_ERR(f)) {
                while (ucp_request_check_status(f) == UCS_INPROGRESS && now_ms() < dl)
                    wait_round(g->l, dl, &idle);
                ucp_request_free(f);
            }
        }
        close_eps(g, NULL, true, dl);
        if (g->notice_req) ucp_request_cancel(g->l->worker, g->notice_req);
        const int64_t dl2 = now_ms() + 200;
        while (g->notice_req && req_test(&g->notice_req, NULL) == UCS_INPROGRESS && now_ms() < dl2)
            wait_round(g->l, dl2, &idle);
        for (int p = 0; p < g->size; p++) req_test(&g->notice_out[p], NULL);
        reap(g);
        release(g);
    }
    group_free(g);
    free(c);
}

static int ux_culprit(dsr1_comm *c)
{
    const group *g = c->ctx;
    return g->culprit;
}

static bool ux_peer_lost(dsr1_comm *c, int peer)
{
    const group *g = c->ctx;
    if (peer < 0 || peer >= g->size || peer == g->rank) return false;
    return g->lost[peer] != UCS_OK || !g->eps[peer];
}

static const dsr1_comm_ops ucx_ops = {
    .name = "ucx",
    .alltoallv = ux_alltoallv,
    .alltoall_sizes = ux_alltoall_sizes,
    .send = ux_send,
    .recv = ux_recv,
    .barrier = ux_barrier,
    .abort = ux_abort,
    .destroy = ux_destroy,
    .culprit = ux_culprit,
    .peer_lost = ux_peer_lost,
};

/* ---- creation ---------------------------------------------------------------------- */

/* An endpoint to rank r at addr, with peer error handling. */
static dsr1_status connect_ep(group *g, int r, const void *addr)
{
    ucp_ep_params_t ep = {
        .field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER,
        .address = addr,
        .err_mode = UCP_ERR_HANDLING_MODE_PEER,
        .err_handler = {.cb = on_peer_error, .arg = &g->refs[r]},
    };
    ucs_status_t s = ucp_ep_create(g->l->worker, &ep, &g->eps[r]);
    if (s == UCS_OK) return DSR1_OK;
    g->eps[r] = NULL;
    char b[32];
    return dsr1_error(DSR1_ERR_IO, "UCX group '%s': connecting to %s: %s%s", g->name, who(g, r, b),
                      ucs_status_string(s),
                      s == UCS_ERR_UNREACHABLE
                          ? " (peer failure detection needs a transport that supports it: "
                            "shared memory does not; include tcp, or rc/ud/dc, in UCX_TLS)"
                          : "");
}

/* Receive and drop every message from `peer` still queued (sent by the process that held
 * the rank before), waiting at most `ms` for each. */
static void discard_from(group *g, int peer, int ms)
{
    const ucp_tag_t mask = (UINT64_C(0xf) << KIND_SHIFT) | SRC_FIELD;
    for (int kind = KIND_P2P; kind <= KIND_COLL; kind++) {
        ucp_tag_recv_info_t info;
        ucp_tag_message_h m;
        while ((m = ucp_tag_probe_nb(g->l->worker, make_tag(kind, peer, 0), mask, 1, &info))) {
            void *buf = malloc(info.length + 1);
            ucp_request_param_t prm = {.op_attr_mask = 0};
            void *r = ucp_tag_msg_recv_nbx(g->l->worker, buf, buf ? info.length : 0, m, &prm);
            if (!r || UCS_PTR_IS_ERR(r)) {
                free(buf);
                continue;
            }
            const int64_t dl = now_ms() + ms;
            int idle = 0;
            while (ucp_request_check_status(r) == UCS_INPROGRESS && now_ms() < dl)
                wait_round(g->l, dl, &idle);
            if (ucp_request_check_status(r) == UCS_INPROGRESS) {
                ucp_request_free(r); /* UCX may still write the buffer: it stays */
                DSR1_WARN("UCX (%s): a stale message did not finish; leaking its buffer", g->name);
                continue;
            }
            ucp_request_free(r);
            free(buf);
        }
    }
}

void dsr1_comm_ucx_address(const dsr1_comm *c, const void **addr, size_t *len)
{
    const group *g = c->ctx;
    dsr1_ucx_local_address(g->l, addr, len);
}

dsr1_status dsr1_comm_ucx_replace_peer(dsr1_comm *c, int peer, const void *addr, size_t len)
{
    group *g = c->ctx;
    char w[128];
    if (!g->tolerant)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "%s: replacing a peer needs a tolerant group",
                          where(g, w));
    if (peer < 0 || peer >= g->size || peer == g->rank || !addr || !len)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "%s: replacing rank %d of %d (address of %zu bytes)", where(g, w), peer,
                          g->size, len);
    dsr1_status st = usable(g);
    if (st != DSR1_OK) return st;
    if (g->eps[peer]) {
        for (int p = 0; p < g->size; p++) g->mask[p] = p == peer;
        close_eps(g, g->mask, true, now_ms() + CLEANUP_MS);
    }
    reap(g);
    discard_from(g, peer, 200);
    g->lost[peer] = UCS_ERR_NOT_CONNECTED;
    if ((st = connect_ep(g, peer, addr)) != DSR1_OK) return st;
    g->lost[peer] = UCS_OK;
    if (g->culprit == peer) g->culprit = -1;
    return DSR1_OK;
}

dsr1_status dsr1_comm_ucx_connect(dsr1_ucx_local *local, const dsr1_ucx_group_params *p,
                                  const void *const *addrs, const size_t *lens, dsr1_comm **out)
{
    dsr1_status st = DSR1_OK;
    if (!local) return dsr1_error(DSR1_ERR_INVALID_ARG, "UCX group without a local endpoint");
    if (p->size < 1 || p->size > MAX_RANKS || p->rank < 0 || p->rank >= p->size) {
        dsr1_ucx_local_destroy(local);
        return dsr1_error(DSR1_ERR_INVALID_ARG, "UCX group: rank %d of %d", p->rank, p->size);
    }
    const size_t n = (size_t)p->size;
    group *g = calloc(1, sizeof(*g));
    dsr1_comm *c = calloc(1, sizeof(*c));
    if (g) {
        g->eps = calloc(n, sizeof(*g->eps));
        g->refs = calloc(n, sizeof(*g->refs));
        g->lost = calloc(n, sizeof(*g->lost));
        g->rreq = calloc(n, sizeof(void *));
        g->sreq = calloc(n, sizeof(void *));
        g->rinfo = calloc(n, sizeof(*g->rinfo));
        g->zeros = calloc(n, sizeof(size_t));
        g->word = calloc(n, sizeof(size_t));
        g->notice_out = calloc(n, sizeof(void *));
        g->mask = calloc(n, sizeof(bool));
        if (p->labels) g->labels = calloc(n, sizeof(char *));
    }
    if (!c || !g || !g->eps || !g->refs || !g->lost || !g->rreq || !g->sreq || !g->rinfo ||
        !g->zeros || !g->word || !g->notice_out || !g->mask || (p->labels && !g->labels)) {
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        goto err;
    }
    g->l = local;
    g->rank = p->rank;
    g->size = p->size;
    g->timeout_ms = p->timeout_ms;
    g->tolerant = p->tolerant;
    g->culprit = -1;
    snprintf(g->name, sizeof(g->name), "%s", p->name ? p->name : "group");
    for (size_t r = 0; r < n; r++) {
        g->word[r] = sizeof(size_t);
        g->refs[r] = (peer_ref){g, (int)r};
        if (p->labels && !(g->labels[r] = strdup(p->labels[r] ? p->labels[r] : "?"))) {
            st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
            goto err;
        }
    }
    for (size_t r = 0; r < n; r++) {
        const void *a = addrs[r];
        size_t alen = lens[r];
        if ((!a || !alen) && p->tolerant && (int)r == p->rank) {
            a = local->addr; /* a worker may leave out its own address, too */
            alen = local->addr_len;
        }
        if (!a || !alen) {
            if (p->tolerant) { /* not connected: counts as lost */
                g->lost[r] = UCS_ERR_NOT_CONNECTED;
                continue;
            }
            st = dsr1_error(DSR1_ERR_INVALID_ARG, "UCX group '%s': no address for rank %zu",
                            g->name, r);
            goto err;
        }
        if ((st = connect_ep(g, (int)r, a)) != DSR1_OK) goto err;
    }
    /* no immediate completion: the callback must see every notice */
    ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK |
                                               UCP_OP_ATTR_FIELD_USER_DATA |
                                               UCP_OP_ATTR_FLAG_NO_IMM_CMPL,
                               .cb.recv = on_notice,
                               .user_data = g};
    void *r = ucp_tag_recv_nbx(local->worker, g->notice_in, sizeof(g->notice_in),
                               make_tag(KIND_ABORT, 0, 0), ~SRC_FIELD, &prm);
    if (UCS_PTR_IS_ERR(r)) {
        st = dsr1_error(DSR1_ERR_IO, "UCX group '%s': posting a receive: %s", g->name,
                        ucs_status_string(UCS_PTR_STATUS(r)));
        goto err;
    }
    g->notice_req = r;
    c->ops = &ucx_ops;
    c->rank = p->rank;
    c->size = p->size;
    c->ctx = g;
    *out = c;
    return DSR1_OK;
err:
    if (g && g->eps && g->l) close_eps(g, NULL, true, now_ms() + CLEANUP_MS);
    dsr1_ucx_local_destroy(local);
    if (g) group_free(g);
    free(c);
    return st;
}

dsr1_status dsr1_comm_ucx_create_local(int size, int timeout_ms, const char *name,
                                       const char *const *labels, dsr1_comm **comms)
{
    if (size < 1 || size > 4096)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "in-process UCX group of %d ranks", size);
    dsr1_ucx_local **loc = calloc((size_t)size, sizeof(*loc));
    const void **addrs = calloc((size_t)size, sizeof(*addrs));
    size_t *lens = calloc((size_t)size, sizeof(*lens));
    dsr1_status st = DSR1_OK;
    int made = 0;
    if (!loc || !addrs || !lens) {
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (int r = 0; r < size; r++) {
        if ((st = dsr1_ucx_local_create(&loc[r])) != DSR1_OK) goto out;
        dsr1_ucx_local_address(loc[r], &addrs[r], &lens[r]);
    }
    for (; made < size; made++) {
        dsr1_ucx_group_params gp = {made, size, timeout_ms, name, labels};
        dsr1_ucx_local *mine = loc[made];
        loc[made] = NULL; /* connect owns it now; its address stays valid while it lives */
        if ((st = dsr1_comm_ucx_connect(mine, &gp, addrs, lens, &comms[made])) != DSR1_OK) {
            goto out; /* comms[0..made) are connected and get destroyed */
        }
    }
out:
    if (st != DSR1_OK)
        for (int r = 0; r < made; r++) dsr1_comm_destroy(comms[r]);
    for (int r = 0; loc && r < size; r++) dsr1_ucx_local_destroy(loc[r]);
    free(loc);
    free(addrs);
    free(lens);
    return st;
}
