/* Opening what a server runs on (see backend.h). */
#include "backend.h"

#include <stdlib.h>

#include "ckpt.h"
#include "forward.h"
#include "log.h"
#include "threadpool.h"
#include "weights.h"

#define DEFAULT_BLOCK_TOKENS 32
#define DEFAULT_STEP_TOKENS  512
#define DEFAULT_KV_TOKENS    65536
#define DEFAULT_KV_BYTES     (8ll << 30) /* cap of the default cache size (reserved virtually) */

struct dsr1_backend {
    dsr1_ckpt *ck;
    dsr1_model_config dc; /* dummy weights: the (trimmed) config */
    const dsr1_model_config *cfg;
    const dsr1_kernels *kern;
    dsr1_weights *w;
    dsr1_pool *pool;
    dsr1_engine *eng;
    dsr1_cluster *cl;
    int workers, pp, n_ranks, blocks, block_tokens, timeout_ms, in_flight;
};

static dsr1_status backend_step(void *ctx, const dsr1_batch *b)
{
    dsr1_backend *be = ctx;
    return be->cl ? dsr1_cluster_step(be->cl, b) : dsr1_engine_forward(be->eng, b);
}

/* Cache blocks per attention rank: kv_tokens rounded up to whole blocks; by default 64K
 * tokens, fewer when they would take more than 8 GiB. */
static int cache_blocks(const dsr1_backend_params *p, const dsr1_model_config *cfg, int bt)
{
    int64_t tokens = p->kv_tokens;
    if (tokens <= 0) {
        const int64_t row = (int64_t)(cfg->kv_lora_rank + cfg->qk_rope_head_dim) *
                            (int64_t)sizeof(float) * cfg->num_hidden_layers;
        tokens = DEFAULT_KV_TOKENS;
        if (tokens * row > DEFAULT_KV_BYTES) tokens = DEFAULT_KV_BYTES / row;
        if (tokens < bt) tokens = bt;
    }
    const int64_t blocks = (tokens + bt - 1) / bt;
    return blocks > 1 << 30 ? 1 << 30 : (int)blocks;
}

dsr1_status dsr1_backend_open(const dsr1_backend_params *p, dsr1_backend **out)
{
    const dsr1_kernels *kern = dsr1_kernels_select(p->kernels);
    if (!kern)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "kernels '%s' are unknown or not supported by this CPU", p->kernels);
    if (p->workers == 0 && p->transport != DSR1_TRANSPORT_MPI && p->pp != 1)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "--pp %d needs --workers", p->pp);
    dsr1_backend *b = calloc(1, sizeof(*b));
    if (!b) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    b->kern = kern;
    b->pp = p->pp;
    b->timeout_ms = p->timeout_ms > 0 ? p->timeout_ms : 60000;
    b->in_flight = p->steps_in_flight > 0 ? p->steps_in_flight : p->pp;
    b->block_tokens = p->block_tokens > 0 ? p->block_tokens : DEFAULT_BLOCK_TOKENS;
    const int step_tokens = p->max_step_tokens > 0 ? p->max_step_tokens : DEFAULT_STEP_TOKENS;
    dsr1_status st;
    if (p->dummy_weights) {
        if ((st = dsr1_model_config_load(p->model, &b->dc)) != DSR1_OK) goto fail;
        dsr1_model_config_keep_layers(&b->dc, p->layers);
        b->cfg = &b->dc;
    } else {
        if ((st = dsr1_ckpt_open(p->model, &b->ck)) != DSR1_OK) goto fail;
        b->cfg = dsr1_ckpt_config(b->ck);
    }
    b->blocks = cache_blocks(p, b->cfg, b->block_tokens);
    if (p->workers > 0 || p->transport == DSR1_TRANSPORT_MPI ||
        p->transport == DSR1_TRANSPORT_JOIN) {
        dsr1_cluster_params cp = {.ckpt = b->ck,
                                  .dummy_cfg = p->dummy_weights ? b->cfg : NULL,
                                  .seed = p->seed,
                                  .workers = p->workers,
                                  .pp = p->pp,
                                  .kernels = kern,
                                  .threads = p->threads,
                                  .n_slots = 1,
                                  .max_tokens = step_tokens,
                                  .timeout_ms = p->timeout_ms,
                                  .transport = p->transport,
                                  .kv_blocks = b->blocks,
                                  .block_tokens = b->block_tokens,
                                  .replicas = p->replicas,
                                  .join_listen = p->join_listen};
        if ((st = dsr1_cluster_create(&cp, &b->cl)) != DSR1_OK) goto fail;
        b->workers = dsr1_cluster_workers(b->cl);
        b->n_ranks = b->workers / p->pp;
    } else {
        dsr1_slice all = dsr1_slice_all(b->cfg);
        st = p->dummy_weights ? dsr1_weights_dummy(b->cfg, &all, p->seed, &b->w)
                              : dsr1_weights_load(b->ck, &all, &b->w);
        if (st != DSR1_OK) goto fail;
        if ((st = dsr1_pool_create(p->threads, &b->pool)) != DSR1_OK) goto fail;
        st = dsr1_engine_create_paged(b->w, kern, b->pool, b->blocks, b->block_tokens, step_tokens,
                                      &b->eng);
        if (st != DSR1_OK) goto fail;
        b->n_ranks = 1;
    }
    DSR1_INFO("backend: %s, kernels %s, %d attention rank(s) x %d cache blocks of %d tokens",
              b->cl ? "worker grid" : "this process", kern->name, b->n_ranks, b->blocks,
              b->block_tokens);
    *out = b;
    return DSR1_OK;
fail:
    dsr1_backend_close(b);
    return st;
}

void dsr1_backend_close(dsr1_backend *b)
{
    if (!b) return;
    dsr1_cluster_destroy(b->cl);
    dsr1_engine_destroy(b->eng);
    dsr1_pool_destroy(b->pool);
    dsr1_weights_destroy(b->w);
    dsr1_ckpt_close(b->ck);
    free(b);
}

static dsr1_status backend_submit(void *ctx, const dsr1_batch *b, uint64_t *id)
{
    return dsr1_cluster_submit(((dsr1_backend *)ctx)->cl, b, id);
}

static dsr1_status backend_wait(void *ctx, uint64_t id)
{
    return dsr1_cluster_wait(((dsr1_backend *)ctx)->cl, id);
}

/* An empty step through the whole grid: every worker hears from the coordinator and the
 * last stage answers, so both sides know the other is alive. */
static dsr1_status backend_heartbeat(void *ctx)
{
    dsr1_backend *be = ctx;
    const dsr1_batch empty = {0, NULL, NULL};
    dsr1_status st = dsr1_cluster_step(be->cl, &empty);
    /* DSR1_ERR_LOST (a membership change) speaks for itself */
    return st == DSR1_OK || st == DSR1_ERR_LOST ? st
                                                : dsr1_error_context(st, "heartbeat of an idle grid");
}

/* After DSR1_ERR_LOST the grid is already in its new epoch: which lanes serve. */
static dsr1_status backend_recover(void *ctx, bool *alive)
{
    dsr1_grid_health h;
    dsr1_cluster_membership(((dsr1_backend *)ctx)->cl, &h, alive);
    return DSR1_OK;
}

static void backend_membership(void *ctx, dsr1_grid_health *out)
{
    dsr1_cluster_membership(((dsr1_backend *)ctx)->cl, out, NULL);
}

dsr1_executor dsr1_backend_executor(dsr1_backend *b)
{
    dsr1_executor x = {b, backend_step, b->n_ranks, b->blocks, b->block_tokens};
    if (b->cl) {
        x.heartbeat = backend_heartbeat;
        /* a quarter of the workers' patience, and at least every second: an idle grid
         * finds a lost worker and admits a joining one within about a second */
        x.heartbeat_ms = b->timeout_ms / 4 > 1000 ? 1000 : b->timeout_ms / 4 > 0 ? b->timeout_ms / 4 : 1;
        x.recover = backend_recover;
        x.membership = backend_membership;
    }
    if (b->cl && b->in_flight > 1) { /* by default one step per stage: the stages overlap */
        x.submit = backend_submit;
        x.wait = backend_wait;
        x.depth = b->in_flight;
    }
    return x;
}

const dsr1_model_config *dsr1_backend_config(const dsr1_backend *b)
{
    return b->cfg;
}
const char *dsr1_backend_kernels_name(const dsr1_backend *b)
{
    return b->kern->name;
}
int dsr1_backend_workers(const dsr1_backend *b)
{
    return b->workers;
}
int dsr1_backend_pp(const dsr1_backend *b)
{
    return b->pp;
}
