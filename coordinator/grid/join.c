/* Workers joining over TCP (`dsr1-worker --join HOST:PORT`; see cluster.h's join_listen).
 *
 * A worker joins in two contacts with the rendezvous (rendezvous.h), each a JOIN answered
 * by a WELCOME (wire.h):
 *   1. ready 0 — asking for a place: the answer gives the grid's shape, the worker index
 *      (a lost worker's, or the one asked for) and the expert placement, so that the
 *      worker loads exactly the slice of the worker it replaces (minutes, for R1);
 *   2. ready 1 — loaded, with its world endpoint's address: the coordinator replaces its
 *      world endpoint for that index, answers with its own address, and the grid admits
 *      the worker in a new epoch (dsr1_grid_admit); the other workers learn the new
 *      address from that epoch's CONNECT.
 * A grid started without a launcher (DSR1_TRANSPORT_JOIN) is a grid whose workers are all
 * lost at first: it waits for every place to be asked for (the placement needs their
 * hosts) and every worker to be ready, then forms its first epoch. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster_internal.h"
#include "dsr1_build_config.h"
#include "kernels.h"
#include "log.h"
#include "wire.h"

dsr1_status dsr1__join_listen(dsr1_cluster *c, const char *hostport)
{
    dsr1_status st = dsr1_rdv_listen(hostport, &c->rdv);
    if (st != DSR1_OK) return dsr1_error_context(st, "listening for workers to join");
    DSR1_INFO("grid: workers may join at %s (port %d): dsr1-worker --join HOST:%d --model ...",
              hostport, dsr1_rdv_port(c->rdv), dsr1_rdv_port(c->rdv));
    return DSR1_OK;
}

/* Why a JOIN cannot be taken (NULL: it can): another model, other weights. */
static const char *mismatch(const dsr1_cluster *c, const dsr1_wire_join *j, char *buf, size_t cap)
{
    if (j->config_hash != c->config_hash) {
        snprintf(buf, cap,
                 "the coordinator's model config differs from this worker's (hash %016llx vs "
                 "%016llx): give every process the same --model (and --layers)",
                 (unsigned long long)c->config_hash, (unsigned long long)j->config_hash);
        return buf;
    }
    const bool dummy = c->p.dummy_cfg != NULL;
    if (j->dummy != dummy || (dummy && j->seed != c->p.seed)) {
        snprintf(buf, cap, "the coordinator runs %s (seed %llu), this worker %s (seed %llu)",
                 dummy ? "dummy weights" : "checkpoint weights", (unsigned long long)c->p.seed,
                 j->dummy ? "dummy weights" : "checkpoint weights", (unsigned long long)j->seed);
        return buf;
    }
    return NULL;
}

/* The WELCOME for worker `index`: the grid, the placement, and (ready) the coordinator's
 * world address. */
static dsr1_status welcome(dsr1_cluster *c, dsr1_rdv_peer *peer, int index, bool ready)
{
    int32_t *lens = calloc((size_t)c->workers + 1, sizeof(int32_t));
    const void **addrs = calloc((size_t)c->workers + 1, sizeof(void *));
    dsr1_status st = DSR1_OK;
    if (!lens || !addrs) {
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        goto out;
    }
#if DSR1_HAVE_UCX
    if (ready) {
        size_t l;
        dsr1_comm_ucx_address(c->world[0], &addrs[0], &l);
        lens[0] = (int32_t)l;
    }
#else
    (void)ready;
#endif
    const dsr1_cluster_params *p = &c->p;
    dsr1_wire_welcome w = {c->workers,
                           c->pp,
                           p->n_slots,
                           p->max_tokens,
                           p->timeout_ms,
                           p->kv_blocks,
                           p->block_tokens,
                           p->replicas > 0 ? p->replicas : 1,
                           dsr1_kernels_name_is_fast(p->kernels->name),
                           index,
                           c->n_owners,
                           c->owners,
                           lens,
                           addrs};
    void *msg;
    size_t len;
    if ((st = dsr1_wire_welcome_encode(&w, &msg, &len)) == DSR1_OK) {
        st = dsr1_rdv_welcome(peer, msg, len);
        peer = NULL;
        free(msg);
    }
out:
    if (peer) dsr1_rdv_refuse(peer, "the coordinator ran out of memory");
    free(lens);
    free(addrs);
    return st;
}

/* The next JOIN, decoded (its message in *msg, to free), waiting at most timeout_ms;
 * *peer NULL when none came. A malformed one is refused here. */
static dsr1_status next_join(dsr1_cluster *c, int timeout_ms, dsr1_rdv_peer **peer,
                             dsr1_wire_join *j, void **msg)
{
    for (;;) {
        size_t len;
        *msg = NULL;
        dsr1_status st = dsr1_rdv_accept(c->rdv, timeout_ms, peer, msg, &len);
        if (st != DSR1_OK || !*peer) return st;
        if (dsr1_wire_join_decode(*msg, len, j) == DSR1_OK) return DSR1_OK;
        DSR1_WARN("grid: %s sent a malformed JOIN: %s", dsr1_rdv_peer_name(*peer),
                  dsr1_errmsg());
        dsr1_rdv_refuse(*peer, dsr1_errmsg());
        free(*msg);
    }
}

/* Refuses the JOIN when its model differs; true when refused. */
static bool refuse_mismatch(dsr1_cluster *c, dsr1_rdv_peer *peer, const dsr1_wire_join *j)
{
    char why[256];
    if (!mismatch(c, j, why, sizeof(why))) return false;
    DSR1_WARN("grid: refusing the worker at %s: %s", dsr1_rdv_peer_name(peer), why);
    dsr1_rdv_refuse(peer, why);
    return true;
}

dsr1_status dsr1__join_poll(dsr1_cluster *c)
{
    if (!c->rdv || !c->grid) return DSR1_OK;
    for (;;) {
        dsr1_rdv_peer *peer;
        dsr1_wire_join j;
        void *msg;
        dsr1_status st = next_join(c, 0, &peer, &j, &msg);
        if (st != DSR1_OK || !peer) return st;
        const char *who = dsr1_rdv_peer_name(peer);
        if (refuse_mismatch(c, peer, &j)) {
            free(msg);
            continue;
        }
        const int index = dsr1_grid_vacancy(c->grid, j.want);
        if (index < 0) {
            char why[160];
            if (j.want >= 0)
                snprintf(why, sizeof(why), "worker %d of the grid is not lost", j.want);
            else
                snprintf(why, sizeof(why), "no worker of the grid is lost");
            DSR1_INFO("grid: refusing the worker at %s: %s", who, why);
            dsr1_rdv_refuse(peer, why);
            free(msg);
            continue;
        }
        if (!j.ready) {
            DSR1_INFO("grid: the worker at %s (%s) takes the place of worker %d; it loads its "
                      "slice",
                      who, j.host, index);
            welcome(c, peer, index, false);
            free(msg);
            continue;
        }
        if (j.want != index) { /* ready for a place it was not given */
            dsr1_rdv_refuse(peer, "ready without a place: ask for one first");
            free(msg);
            continue;
        }
        DSR1_INFO("grid: worker %d (at %s, %s) is loaded and joins", index, who, j.host);
        if ((st = welcome(c, peer, index, true)) == DSR1_OK)
            st = dsr1_grid_admit(c->grid, index, j.addr, (size_t)j.len);
        free(msg);
        return st;
    }
}

/* Host ids from names: equal names, equal ids (the lowest index with that name). */
static void host_ids(char (*names)[64], int n, int *ids)
{
    for (int i = 0; i < n; i++) {
        ids[i] = i;
        for (int k = 0; k < i && ids[i] == i; k++)
            if (!strcmp(names[k], names[i])) ids[i] = k;
    }
}

dsr1_status dsr1__join_start(dsr1_cluster *c, const dsr1_model_config *cfg)
{
#if DSR1_HAVE_UCX
    const int n = c->workers;
    dsr1_rdv_peer **held = calloc((size_t)n, sizeof(*held));
    void **msgs = calloc((size_t)n, sizeof(void *));
    char(*hosts)[64] = calloc((size_t)n, 64);
    int *hid = calloc((size_t)n, sizeof(int));
    const void **addrs = calloc((size_t)n + 1, sizeof(void *));
    size_t *lens = calloc((size_t)n + 1, sizeof(size_t));
    dsr1_status st = DSR1_OK;
    if (!held || !msgs || !hosts || !hid || !addrs || !lens) {
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        goto out;
    }
    /* the coordinator's world group, every worker unknown until it is ready */
    dsr1_ucx_local *l;
    if ((st = dsr1_ucx_local_create(&l)) != DSR1_OK) goto out;
    dsr1_ucx_local_address(l, &addrs[0], &lens[0]);
    dsr1_ucx_group_params gp = {0, n + 1, c->p.timeout_ms, "world", NULL, true};
    if ((st = dsr1_comm_ucx_connect(l, &gp, addrs, lens, &c->world[0])) != DSR1_OK) goto out;
    /* 1. a place for each of the first n (indices as asked, else the lowest free) */
    int placed = 0;
    time_t last_log = 0;
    while (placed < n) {
        if (time(NULL) - last_log >= 10) {
            DSR1_INFO("grid: waiting for workers to join at port %d: %d of %d", dsr1_rdv_port(c->rdv),
                      placed, n);
            last_log = time(NULL);
        }
        dsr1_rdv_peer *peer;
        dsr1_wire_join j;
        void *msg;
        if ((st = next_join(c, 1000, &peer, &j, &msg)) != DSR1_OK) goto out;
        if (!peer) continue;
        int index = -1; /* the one asked for, else the lowest free */
        if (j.want >= 0)
            index = j.want < n && !held[j.want] ? j.want : -1;
        else
            for (int i = 0; index < 0 && i < n; i++)
                if (!held[i]) index = i;
        if (refuse_mismatch(c, peer, &j)) {
            free(msg);
            continue;
        }
        if (j.ready || index < 0) {
            dsr1_rdv_refuse(peer, j.ready ? "ready without a place: ask for one first"
                                          : "that worker index is taken or out of range");
            free(msg);
            continue;
        }
        held[index] = peer;
        msgs[index] = msg;
        snprintf(hosts[index], 64, "%s", j.host);
        placed++;
    }
    /* the placement, from the hosts of stage 0 (copies of an expert on different hosts) */
    host_ids(hosts, n, hid);
    if ((st = dsr1_worker_placement(cfg, c->ep, c->p.replicas, hid, &c->owners)) != DSR1_OK)
        goto out;
    c->n_owners = cfg->n_routed_experts * (c->p.replicas > 0 ? c->p.replicas : 1);
    for (int i = 0; i < n; i++) {
        welcome(c, held[i], i, false);
        held[i] = NULL;
    }
    /* 2. every worker loaded and reachable */
    int ready = 0;
    bool *is_ready = calloc((size_t)n, sizeof(bool));
    if (!is_ready) {
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        goto out;
    }
    DSR1_INFO("grid: all %d workers have their places; waiting for them to load", n);
    while (ready < n && st == DSR1_OK) {
        dsr1_rdv_peer *peer;
        dsr1_wire_join j;
        void *msg;
        if ((st = next_join(c, 1000, &peer, &j, &msg)) != DSR1_OK || !peer) continue;
        if (refuse_mismatch(c, peer, &j)) {
        } else if (!j.ready || j.want < 0 || j.want >= n || is_ready[j.want]) {
            dsr1_rdv_refuse(peer, "the grid is forming: no place left");
        } else if ((st = dsr1_comm_ucx_replace_peer(c->world[0], 1 + j.want, j.addr,
                                                    (size_t)j.len)) == DSR1_OK &&
                   (st = welcome(c, peer, j.want, true)) == DSR1_OK) {
            is_ready[j.want] = true;
            ready++;
        }
        free(msg);
    }
    free(is_ready);
out:
    for (int i = 0; held && i < n; i++) {
        if (held[i]) dsr1_rdv_refuse(held[i], "the coordinator failed to start");
        free(msgs[i]);
    }
    free(held);
    free(msgs);
    free(hosts);
    free(hid);
    free(addrs);
    free(lens);
    return st;
#else
    (void)c;
    (void)cfg;
    return dsr1_error(DSR1_ERR_UNSUPPORTED, "joining needs a build with UCX");
#endif
}
