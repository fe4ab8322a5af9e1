/* The embedded launcher: the whole worker grid as threads of this process over the
 * in-process transport, driven through the same grid and worker loop as a cluster
 * (see cluster.h). */
#include "cluster.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "grid.h"
#include "log.h"
#include "worker_loop.h"

typedef struct {
    dsr1_worker w;
    pthread_t thread;
    int started;
    dsr1_status result;
} worker_slot;

struct dsr1_cluster {
    int workers, pp, ep;
    dsr1_comm **world;    /* [workers + 1], rank 0 is the coordinator's */
    dsr1_comm **ep_comms; /* [workers]: stage s, index e at s * ep + e */
    worker_slot *slots;
    dsr1_grid *grid;
};

static void *worker_main(void *arg)
{
    worker_slot *s = arg;
    s->result = dsr1_worker_serve(&s->w);
    return NULL;
}

dsr1_status dsr1_cluster_create(const dsr1_cluster_params *p, dsr1_cluster **out)
{
    const dsr1_model_config *cfg = p->ckpt ? dsr1_ckpt_config(p->ckpt) : p->dummy_cfg;
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
    c->world = calloc((size_t)p->workers + 1, sizeof(dsr1_comm *));
    c->ep_comms = calloc((size_t)p->workers, sizeof(dsr1_comm *));
    c->slots = calloc((size_t)p->workers, sizeof(worker_slot));
    dsr1_status st;
    if (!c->world || !c->ep_comms || !c->slots) {
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        goto err;
    }
    const int timeout = p->timeout_ms > 0 ? p->timeout_ms : 60000;
    if ((st = dsr1_comm_inproc_create(p->workers + 1, timeout, c->world)) != DSR1_OK) goto err;
    for (int s = 0; s < c->pp && c->ep > 1; s++)
        if ((st = dsr1_comm_inproc_create(c->ep, timeout, c->ep_comms + s * c->ep)) != DSR1_OK)
            goto err;
    DSR1_INFO("grid: %d workers = %d pipeline stage(s) x %d expert-parallel rank(s), in-process "
              "transport",
              c->workers, c->pp, c->ep);
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
                                     p->max_tokens};
            dsr1_worker *w = &c->slots[s * c->ep + e].w;
            if ((st = dsr1_worker_init(w, &wp)) != DSR1_OK) goto err;
            w->world = c->world[dsr1_world_rank(s, e, c->ep)];
            w->ep = c->ep > 1 ? c->ep_comms[s * c->ep + e] : NULL;
        }
    if ((st = dsr1_grid_create(c->world[0], c->workers, c->pp, cfg->vocab_size, &c->grid)))
        goto err;
    for (int i = 0; i < c->workers; i++) {
        if (pthread_create(&c->slots[i].thread, NULL, worker_main, &c->slots[i]) != 0) {
            st = dsr1_error(DSR1_ERR_NOMEM, "cannot start worker thread %d", i);
            goto err;
        }
        c->slots[i].started = 1;
    }
    *out = c;
    return DSR1_OK;
err:
    dsr1_cluster_destroy(c);
    return st;
}

dsr1_status dsr1_cluster_step(dsr1_cluster *c, const dsr1_batch *b)
{
    return dsr1_grid_step(c->grid, b);
}

void dsr1_cluster_destroy(dsr1_cluster *c)
{
    if (!c) return;
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
    free(c);
}

uint64_t dsr1_cluster_worker_bytes(const dsr1_cluster *c, int i)
{
    return i >= 0 && i < c->workers && c->slots[i].w.weights ? c->slots[i].w.weights->bytes : 0;
}
