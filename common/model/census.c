/* Parameter and memory census of a checkpoint (see census.h). */
#include "census.h"
#include "placement.h"

#include <stdlib.h>
#include <string.h>

dsr1_status dsr1_census_init(dsr1_census *c, const dsr1_model_config *cfg,
                             const dsr1_tensor_plan *plan)
{
    memset(c, 0, sizeof(*c));
    c->plan = plan;
    c->nlayers = cfg->num_hidden_layers + cfg->num_nextn_predict_layers;
    c->nmain = cfg->num_hidden_layers;
    c->nexperts = cfg->n_routed_experts > 0 ? cfg->n_routed_experts : 0;
    size_t n = (size_t)c->nlayers * (size_t)c->nexperts;
    c->expert_bytes = calloc(n ? n : 1, sizeof(uint64_t));
    c->expert_params = calloc(c->nlayers ? (size_t)c->nlayers : 1, sizeof(uint64_t));
    c->seen = calloc(plan->count ? plan->count : 1, 1);
    if (!c->expert_bytes || !c->expert_params || !c->seen) {
        dsr1_census_free(c);
        return dsr1_error(DSR1_ERR_NOMEM, "census: out of memory");
    }
    return DSR1_OK;
}

void dsr1_census_free(dsr1_census *c)
{
    free(c->expert_bytes);
    free(c->expert_params);
    free(c->seen);
    memset(c, 0, sizeof(*c));
}

static void sum_add(dsr1_census_sum *s, uint64_t params, uint64_t bytes)
{
    s->params += params;
    s->bytes += bytes;
}

void dsr1_census_add(dsr1_census *c, const char *name, dsr1_dtype dtype, int ndim,
                     const int64_t *shape, uint64_t nbytes)
{
    uint64_t numel = 1;
    for (int i = 0; i < ndim; i++) numel *= (uint64_t)shape[i];
    c->tensors++;
    if ((unsigned)dtype < DSR1_DT_COUNT) {
        c->dtype_count[dtype]++;
        c->dtype_bytes[dtype] += nbytes;
    }
    const dsr1_tensor_spec *t = dsr1_tensor_plan_find(c->plan, name);
    bool scale = t ? t->init == DSR1_INIT_FP8_SCALE : strstr(name, "_scale_inv") != NULL;
    uint64_t params = scale ? 0 : numel;
    sum_add(&c->all, params, nbytes);
    if (scale) c->scale_bytes += nbytes;
    if (!t) {
        c->unknown++;
        c->replicated_bytes += nbytes;
        sum_add(&c->main, params, nbytes);
        return;
    }
    c->seen[t - c->plan->t] = 1;
    if (t->dtype != dtype || t->ndim != ndim || t->shape[0] != shape[0] ||
        (ndim == 2 && t->shape[1] != shape[1]))
        c->mismatched++;
    sum_add(t->mtp ? &c->mtp : &c->main, params, nbytes);
    sum_add(&c->kind[t->kind], params, nbytes);
    if (t->kind == DSR1_TK_ROUTED_EXPERT && t->layer >= 0 && t->layer < c->nlayers &&
        t->expert < c->nexperts) {
        c->expert_bytes[(size_t)t->layer * (size_t)c->nexperts + (size_t)t->expert] += nbytes;
        c->expert_params[t->layer] += params;
    } else {
        c->replicated_bytes += nbytes;
        if (t->mtp) c->mtp_replicated_bytes += nbytes;
    }
}

void dsr1_census_add_plan(dsr1_census *c)
{
    for (size_t i = 0; i < c->plan->count; i++) {
        const dsr1_tensor_spec *t = &c->plan->t[i];
        dsr1_census_add(c, t->name, t->dtype, t->ndim, t->shape, t->nbytes);
    }
}

uint64_t dsr1_census_missing(const dsr1_census *c)
{
    uint64_t n = 0;
    for (size_t i = 0; i < c->plan->count; i++) n += !c->seen[i];
    return n;
}

uint64_t dsr1_census_activated(const dsr1_census *c, const dsr1_model_config *cfg)
{
    uint64_t routed = 0, active = 0;
    for (int l = 0; l < cfg->num_hidden_layers && l < c->nlayers; l++) {
        routed += c->expert_params[l];
        /* every routed expert of a layer has the same size */
        if (c->nexperts) active += c->expert_params[l] / (uint64_t)c->nexperts;
    }
    return c->main.params - routed + active * (uint64_t)cfg->num_experts_per_tok;
}

uint64_t dsr1_census_worker_bytes(const dsr1_census *c, int n, int w)
{
    /* what a worker loads: main layers only (the MTP layers are never loaded) */
    uint64_t b = c->replicated_bytes - c->mtp_replicated_bytes;
    int *owner = malloc(sizeof(int) * (size_t)(c->nexperts ? c->nexperts : 1));
    if (!owner) return 0;
    dsr1_placement_balanced(c->nexperts, n, owner);
    for (int l = 0; l < c->nmain; l++)
        for (int e = 0; e < c->nexperts; e++)
            if (owner[e] == w) b += c->expert_bytes[(size_t)l * (size_t)c->nexperts + (size_t)e];
    free(owner);
    return b;
}

uint64_t dsr1_census_worker_bytes_placed(const dsr1_census *c, const int *owners, int replicas,
                                         int w)
{
    uint64_t b = c->replicated_bytes - c->mtp_replicated_bytes;
    for (int e = 0; e < c->nexperts; e++) {
        bool held = false;
        for (int k = 0; k < replicas; k++) held |= owners[(size_t)e * replicas + k] == w;
        if (!held) continue;
        for (int l = 0; l < c->nmain; l++)
            b += c->expert_bytes[(size_t)l * (size_t)c->nexperts + (size_t)e];
    }
    return b;
}
