/* The embedded launcher: the whole worker grid as threads of this process over the
 * in-process transport (or UCX on loopback), driven through the same grid and worker loop
 * as a cluster; or, with the MPI transport, the coordinator's attachment to worker
 * processes started by mpirun/srun (see cluster.h). */
#include "cluster.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bootstrap_mpi.h"
#include "cluster_internal.h"
#include "dsr1_build_config.h"
#include "kernels.h"
#include "grid.h"
#include "log.h"
#include "wire.h"
#include "worker_loop.h"

#if DSR1_HAVE_UCX
/* Names of the world ranks for UCX messages: "coordinator", "worker i (stage s, EP e)". */
static char (*rank_names(int workers, int ep))[64]
{
    char(*n)[64] = calloc((size_t)workers + 1, 64);
    if (!n) return NULL;
    snprintf(n[0], 64, "coordinator");
    for (int i = 0; i < workers; i++)
        snprintf(n[1 + i], 64, "worker %d (stage %d, EP %d)", i, i / ep, i % ep);
    return n;
}
#endif

/* The world group of the embedded grid as a tolerant UCX group on loopback (the data
 * groups are made by the grid's first REGROUP, as between processes). */
static dsr1_status make_ucx_groups(dsr1_cluster *c, int timeout)
{
#if DSR1_HAVE_UCX
    const int n = c->workers + 1;
    char(*names)[64] = rank_names(c->workers, c->ep);
    const char **labels = calloc((size_t)n, sizeof(char *));
    dsr1_ucx_local **locals = calloc((size_t)n, sizeof(*locals));
    const void **addrs = calloc((size_t)n, sizeof(void *));
    size_t *lens = calloc((size_t)n, sizeof(size_t));
    dsr1_status st = DSR1_OK;
    if (!names || !labels || !locals || !addrs || !lens) {
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (int r = 0; r < n && st == DSR1_OK; r++) {
        labels[r] = names[r];
        if ((st = dsr1_ucx_local_create(&locals[r])) == DSR1_OK)
            dsr1_ucx_local_address(locals[r], &addrs[r], &lens[r]);
    }
    for (int r = 0; r < n && st == DSR1_OK; r++) {
        dsr1_ucx_group_params gp = {
            r, n, r ? dsr1_worker_world_timeout(timeout) : timeout, "world", labels, true};
        st = dsr1_comm_ucx_connect(locals[r], &gp, addrs, lens, &c->world[r]);
        locals[r] = NULL;
    }
    if (st != DSR1_OK) goto out;
    /* test hook: DSR1_TEST_KILL_WORKER=i:n[,j:m...] makes worker i die on receiving its n-th
     * control message (and worker j on its m-th); i:aN, halfway through its N-th EP
     * all-to-all (dispatch or combine of a MoE layer) */
    const char *kill = getenv("DSR1_TEST_KILL_WORKER");
    for (const char *k = kill; k && st == DSR1_OK;) {
        int kw, ks, used = 0, a2a = 0;
        if (sscanf(k, "%d:%n", &kw, &used) == 1 && k[used] == 'a') {
            a2a = 1;
            k += used + 1;
            used = 0;
            if (sscanf(k, "%d%n", &ks, &used) != 1) ks = 0;
        } else if (sscanf(k, "%d:%d%n", &kw, &ks, &used) != 2) {
            ks = 0;
        }
        if (ks < 1 || (k[used] && k[used] != ',') || kw < 0 || kw >= c->workers) {
            st = dsr1_error(DSR1_ERR_INVALID_ARG,
                            "DSR1_TEST_KILL_WORKER='%s': expected WORKER:STEP or WORKER:aN "
                            "(the N-th all-to-all), comma-separated, worker < %d, numbers >= 1",
                            kill, c->workers);
            break;
        }
        if (a2a) {
            DSR1_WARN("test hook: worker %d will die in its all-to-all %d", kw, ks);
            c->crash_a2a[kw] = ks;
        } else {
            DSR1_WARN("test hook: worker %d will die on step %d", kw, ks);
            dsr1_comm_ucx_crash_after(c->world[1 + kw], DSR1_TAG_CTRL, ks, NULL);
        }
        k = k[used] ? k + used + 1 : NULL;
    }
out:
    for (int r = 0; locals && r < n; r++) dsr1_ucx_local_destroy(locals[r]);
    free(names);
    free(labels);
    free(locals);
    free(addrs);
    free(lens);
    return st;
#else
    (void)c;
    (void)timeout;
    return dsr1_error(DSR1_ERR_UNSUPPORTED, "this build has no UCX (install libucx-dev and "
                                            "reconfigure)");
#endif
}

static dsr1_status make_grid(dsr1_cluster *c, const dsr1_cluster_params *p,
                             const dsr1_model_config *cfg, const int *hosts, int timeout);

/* Coordinator of worker processes started by an MPI launcher (this process is rank 0). */
static dsr1_status attach_mpi(dsr1_cluster *c, const dsr1_cluster_params *p,
                              const dsr1_model_config *cfg, int timeout)
{
#if DSR1_HAVE_UCX && DSR1_HAVE_MPI
    dsr1_mpi *m;
    dsr1_status st = dsr1_mpi_init(&m);
    if (st != DSR1_OK) return st;
    c->mpi = m;
    const int rank = dsr1_mpi_rank(m), size = dsr1_mpi_size(m);
    if (rank != 0 || size < 2)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "the coordinator must be MPI rank 0 of a job with worker ranks (this "
                          "is rank %d of %d): mpirun -np 1 dsr1 run ... : -np N dsr1-worker ...",
                          rank, size);
    c->workers = size - 1;
    c->ep = c->workers / p->pp;
    if (!(c->world = calloc((size_t)c->workers + 1, sizeof(dsr1_comm *))))
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    if (p->workers > 0 && p->workers != c->workers)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "--workers %d, but the MPI job has %d worker ranks",
                          p->workers, c->workers);
    if (c->workers % p->pp || p->pp > cfg->num_hidden_layers || c->ep > cfg->n_routed_experts)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "%d worker ranks cannot form %d pipeline stages of a %d-layer, "
                          "%d-expert model",
                          c->workers, p->pp, cfg->num_hidden_layers, cfg->n_routed_experts);
    const int R = p->replicas > 0 ? p->replicas : 1;
    int *hosts = malloc(sizeof(int) * (size_t)c->ep), *owners = NULL;
    if (!hosts) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    /* copies of an expert on different hosts, by stage 0's hosts (all ranks agree) */
    if ((st = dsr1_mpi_gather_hosts(m)) == DSR1_OK) {
        for (int e = 0; e < c->ep; e++) hosts[e] = dsr1_mpi_hosts(m)[1 + e];
        st = dsr1_worker_placement(cfg, c->ep, R, hosts, &owners);
    }
    if (st != DSR1_OK) { /* the workers wait in the collectives: end the job */
        free(hosts);
        return st;
    }
    dsr1_hello h = {DSR1_WIRE_VERSION,
                    c->workers,
                    p->pp,
                    p->n_slots,
                    p->max_tokens,
                    timeout,
                    p->dummy_cfg != NULL,
                    p->seed,
                    dsr1_config_hash(cfg),
                    dsr1_placement_hash(owners, cfg->n_routed_experts * R),
                    p->kv_blocks,
                    p->block_tokens,
                    R,
                    dsr1_kernels_name_is_fast(p->kernels->name)};
    free(owners);
    DSR1_INFO("grid: %d workers = %d pipeline stage(s) x %d expert-parallel rank(s), %d cop%s of "
              "each expert, MPI job of %d ranks, UCX transport; waiting for the workers to load",
              c->workers, p->pp, c->ep, R, R == 1 ? "y" : "ies", size);
    st = dsr1_mpi_hello(m, &h);
    if ((st = dsr1_mpi_agree(m, st)) != DSR1_OK) {
        free(hosts);
        c->mpi_clean = 1; /* every rank saw the refusal and finalizes */
        return st;
    }
    if ((st = dsr1_mpi_connect(m, c->workers, p->pp, timeout, &c->world[0])) == DSR1_OK)
        st = make_grid(c, p, cfg, hosts, timeout);
    free(hosts);
    if (st == DSR1_OK) DSR1_INFO("grid: all %d workers connected", c->workers);
    return st;
#else
    (void)c;
    (void)p;
    (void)cfg;
    (void)timeout;
    return dsr1_error(DSR1_ERR_UNSUPPORTED,
                      "started by an MPI launcher, but this build has no MPI and UCX support "
                      "(install libopenmpi-dev and libucx-dev and reconfigure)");
#endif
}

/* The grid over the connected world group; with UCX, one that survives lost workers,
 * checking coverage against the placement the workers loaded (hosts: [ep] or NULL). */
static dsr1_status make_grid(dsr1_cluster *c, const dsr1_cluster_params *p,
                             const dsr1_model_config *cfg, const int *hosts, int timeout)
{
    dsr1_grid_params gp = {c->workers, c->pp, cfg->vocab_size, c->transport != DSR1_TRANSPORT_INPROC,
                           cfg->n_routed_experts, p->replicas > 0 ? p->replicas : 1, NULL,
                           timeout};
    dsr1_status st = DSR1_OK;
    if (gp.regroup && !c->owners) { /* kept for the workers that join */
        st = dsr1_worker_placement(cfg, c->ep, gp.replicas, hosts, &c->owners);
        c->n_owners = cfg->n_routed_experts * gp.replicas;
    }
    gp.owners = c->owners;
    if (st == DSR1_OK) st = dsr1_grid_create(c->world[0], &gp, &c->grid);
    return st;
}

static void *worker_main(void *arg)
{
    worker_slot *s = arg;
    s->result = dsr1_worker_serve(&s->w);
    return NULL;
}

/* What joining workers are told and checked against; and the listener, if any. */
static dsr1_status remember(dsr1_cluster *c, const dsr1_cluster_params *p,
                            const dsr1_model_config *cfg, int timeout)
{
    c->p = *p;
    c->p.ckpt = NULL;
    c->p.timeout_ms = timeout;
    c->p.replicas = p->replicas > 0 ? p->replicas : 1;
    c->config_hash = dsr1_config_hash(cfg);
    if (p->transport == DSR1_TRANSPORT_JOIN && !p->join_listen)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "workers that join need an address to join at");
    if (p->join_listen && p->transport == DSR1_TRANSPORT_INPROC)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "workers can join a UCX or MPI grid, not the in-process transport");
    return p->join_listen ? dsr1__join_listen(c, p->join_listen) : DSR1_OK;
}

/* A grid of worker processes that join over TCP (DSR1_TRANSPORT_JOIN). */
static dsr1_status attach_joined(dsr1_cluster *c, const dsr1_cluster_params *p,
                                 const dsr1_model_config *cfg, int timeout)
{
    if (p->workers < 1 || p->pp < 1 || p->workers % p->pp || p->pp > cfg->num_hidden_layers ||
        p->workers / p->pp > cfg->n_routed_experts)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "%d workers cannot form %d pipeline stages of a %d-layer, %d-expert "
                          "model",
                          p->workers, p->pp, cfg->num_hidden_layers, cfg->n_routed_experts);
    c->workers = p->workers;
    c->ep = p->workers / p->pp;
    if (!(c->world = calloc((size_t)c->workers + 1, sizeof(dsr1_comm *))))
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    DSR1_INFO("grid: %d workers = %d pipeline stage(s) x %d expert-parallel rank(s), joining "
              "over TCP, UCX transport",
              c->workers, p->pp, c->ep);
    dsr1_status st = dsr1__join_start(c, cfg);
    if (st == DSR1_OK) st = make_grid(c, p, cfg, NULL, timeout);
    return st;
}

dsr1_status dsr1_cluster_create(const dsr1_cluster_params *p, dsr1_cluster **out)
{
    const dsr1_model_config *cfg = p->ckpt ? dsr1_ckpt_config(p->ckpt) : p->dummy_cfg;
    const int timeout = p->timeout_ms > 0 ? p->timeout_ms : 60000;
    if (p->transport == DSR1_TRANSPORT_MPI || p->transport == DSR1_TRANSPORT_JOIN) {
        dsr1_cluster *c = calloc(1, sizeof(*c));
        dsr1_status st;
        if (!c) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        c->transport = p->transport;
        c->pp = p->pp;
        if (p->pp < 1) {
            st = dsr1_error(DSR1_ERR_INVALID_ARG, "%d pipeline stages", p->pp);
        } else if ((st = remember(c, p, cfg, timeout)) == DSR1_OK) {
            st = p->transport == DSR1_TRANSPORT_MPI ? attach_mpi(c, p, cfg, timeout)
                                                    : attach_joined(c, p, cfg, timeout);
        }
        if (st != DSR1_OK) {
            dsr1_cluster_destroy(c);
            return st;
        }
        *out = c;
        return DSR1_OK;
    }
    if (p->workers < 1 || p->pp < 1 || p->workers % p->pp)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "%d workers cannot form %d pipeline stages "
                          "(workers must be a multiple of --pp)",
                          p->workers, p->pp);
    if (p->pp > cfg->num_hidden_layers)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "%d pipeline stages for %d layers", p->pp,
                          cfg->num_hidden_layers);
    if (p->workers / p->pp > cfg->n_routed_experts)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "%d expert-parallel ranks for %d experts",
                          p->workers / p->pp, cfg->n_routed_experts);
    dsr1_cluster *c = calloc(1, sizeof(*c));
    if (!c) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    c->workers = p->workers;
    c->pp = p->pp;
    c->ep = p->workers / p->pp;
    c->transport = p->transport;
    dsr1_status st = remember(c, p, cfg, timeout);
    if (st != DSR1_OK) goto err;
    c->world = calloc((size_t)p->workers + 1, sizeof(dsr1_comm *));
    c->ep_comms = calloc((size_t)p->workers, sizeof(dsr1_comm *));
    c->slots = calloc((size_t)p->workers, sizeof(worker_slot));
    c->crash_a2a = calloc((size_t)p->workers, sizeof(int));
    if (!c->crash_a2a || !c->world || !c->ep_comms || !c->slots) {
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        goto err;
    }
    const bool regroup = p->transport == DSR1_TRANSPORT_UCX;
    if (p->transport == DSR1_TRANSPORT_UCX) {
        if ((st = make_ucx_groups(c, timeout)) != DSR1_OK) goto err;
    } else {
        if ((st = dsr1_comm_inproc_create(p->workers + 1, timeout, c->world)) != DSR1_OK) goto err;
        for (int s = 0; s < c->pp && c->ep > 1; s++)
            if ((st = dsr1_comm_inproc_create(c->ep, timeout, c->ep_comms + s * c->ep)) != DSR1_OK)
                goto err;
    }
    DSR1_INFO("grid: %d workers = %d pipeline stage(s) x %d expert-parallel rank(s), %s "
              "transport",
              c->workers, c->pp, c->ep,
              p->transport == DSR1_TRANSPORT_UCX ? "UCX (loopback)" : "in-process");
    int threads = p->threads > 0 ? p->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    threads = threads / c->workers > 1 ? threads / c->workers : 1;
    for (int s = 0; s < c->pp; s++)
        for (int e = 0; e < c->ep; e++) {
            dsr1_worker_params wp = {p->ckpt,
                                     p->dummy_cfg,
                                     p->seed,
                                     p->workers,
                                     p->pp,
                                     s,
                                     e,
                                     p->kernels,
                                     threads,
                                     (p->n_slots + c->ep - 1) / c->ep,
                                     p->max_tokens,
                                     p->kv_blocks,
                                     p->block_tokens,
                                     p->replicas,
                                     NULL};
            dsr1_worker *w = &c->slots[s * c->ep + e].w;
            if ((st = dsr1_worker_init(w, &wp)) != DSR1_OK) goto err;
            w->world = c->world[dsr1_world_rank(s, e, c->ep)];
            w->ep = c->ep > 1 && !regroup ? c->ep_comms[s * c->ep + e] : NULL;
            w->regroup = regroup;
            w->timeout_ms = timeout;
            w->test_crash_alltoall = c->crash_a2a ? c->crash_a2a[s * c->ep + e] : 0;
        }
    for (int i = 0; i < c->workers; i++) { /* serving before the grid's first REGROUP */
        if (pthread_create(&c->slots[i].thread, NULL, worker_main, &c->slots[i]) != 0) {
            st = dsr1_error(DSR1_ERR_NOMEM, "cannot start worker thread %d", i);
            goto err;
        }
        c->slots[i].started = 1;
    }
    if ((st = make_grid(c, p, cfg, NULL, timeout)) != DSR1_OK) goto err;
    *out = c;
    return DSR1_OK;
err:
    dsr1_cluster_destroy(c);
    return st;
}

/* Between steps: workers joining (DSR1_ERR_LOST when one was admitted: a new epoch). */
static dsr1_status poll_joins(dsr1_cluster *c)
{
    return c->rdv && dsr1_grid_in_flight(c->grid) == 0 ? dsr1__join_poll(c) : DSR1_OK;
}

dsr1_status dsr1_cluster_step(dsr1_cluster *c, const dsr1_batch *b)
{
    dsr1_status st = poll_joins(c);
    if (st == DSR1_OK) st = dsr1_grid_step(c->grid, b);
    if (st != DSR1_OK && st != DSR1_ERR_LOST) c->failed = 1;
    return st;
}

dsr1_status dsr1_cluster_submit(dsr1_cluster *c, const dsr1_batch *b, uint64_t *step)
{
    dsr1_status st = poll_joins(c);
    return st != DSR1_OK ? st : dsr1_grid_submit(c->grid, b, step);
}

dsr1_status dsr1_cluster_wait(dsr1_cluster *c, uint64_t step)
{
    return dsr1_grid_wait(c->grid, step);
}

void dsr1_cluster_destroy(dsr1_cluster *c)
{
    if (!c) return;
#if DSR1_HAVE_UCX && DSR1_HAVE_MPI
    dsr1_grid_health gh = {0};
    if (c->grid) dsr1_grid_membership(c->grid, &gh, NULL);
    /* MPI_Finalize waits for every rank: not after a failure, nor with a worker lost */
    const int mpi_clean = c->mpi_clean || (c->grid && !c->failed && gh.workers_live == gh.workers);
#endif
    if (c->grid)
        dsr1_grid_shutdown(c->grid);
    else if (c->world && c->world[0])
        dsr1_comm_abort(c->world[0], "start-up failed");
    for (int i = 0; c->slots && i < c->workers; i++) {
        if (c->slots[i].started) pthread_join(c->slots[i].thread, NULL);
        dsr1_worker_fini(&c->slots[i].w);
    }
    dsr1_grid_destroy(c->grid);
    for (int i = 0; c->world && i <= c->workers; i++) dsr1_comm_destroy(c->world[i]);
    for (int i = 0; c->ep_comms && i < c->workers; i++) dsr1_comm_destroy(c->ep_comms[i]);
    free(c->world);
    free(c->ep_comms);
    free(c->slots);
    free(c->crash_a2a);
    dsr1_rdv_close(c->rdv);
    free(c->owners);
#if DSR1_HAVE_UCX && DSR1_HAVE_MPI
    /* after a failure some rank may be gone: MPI_Finalize could wait for it forever */
    if (c->mpi) dsr1_mpi_finalize(c->mpi, mpi_clean);
#endif
    free(c);
}

int dsr1_cluster_workers(const dsr1_cluster *c)
{
    return c->workers;
}

void dsr1_cluster_membership(const dsr1_cluster *c, dsr1_grid_health *out, bool *alive)
{
    dsr1_grid_membership(c->grid, out, alive);
}
