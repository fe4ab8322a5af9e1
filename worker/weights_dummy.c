/* --dummy-weights: a slice's tensors made in memory from the config alone, with the same
 * random values `dsr1 mkmodel` writes, so that real R1 shapes can be benchmarked without
 * 671 GB of files. Tensors are generated in parallel (randw streams are per tensor). */
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "progress.h"
#include "randw.h"
#include "threadpool.h"
#include "weights.h"

typedef struct {
    dsr1_weights *w;
    const dsr1_randw *rw;
    int *todo; /* plan indices of the FP8 weights and plain tensors to generate */
    dsr1_status *status;
} fill_job;

static void fill_task(void *arg, int begin, int end, int tid)
{
    (void)tid;
    fill_job *j = arg;
    for (int i = begin; i < end; i++) {
        const int k = j->todo[i];
        const dsr1_tensor_spec *t = &j->w->dummy_plan->t[k];
        void *comp = t->companion >= 0 ? j->w->dummy[t->companion].data : NULL;
        dsr1_status st = dsr1_randw_fill(j->rw, t, j->w->dummy[k].data, comp);
        if (st != DSR1_OK) j->status[i] = st;
    }
}

dsr1_status dsr1_weights_dummy(const dsr1_model_config *cfg, const dsr1_slice *slice, uint64_t seed,
                               dsr1_weights **out)
{
    dsr1_weights *w;
    dsr1_status st = dsr1__weights_begin(cfg, slice, &w);
    if (st != DSR1_OK) return st;
    int *todo = NULL;
    dsr1_status *status = NULL;
    dsr1_pool *pool = NULL;
    dsr1_randw *rw = malloc(sizeof(*rw));
    w->dummy_plan = calloc(1, sizeof(*w->dummy_plan));
    if (!rw || !w->dummy_plan) goto nomem;
    if ((st = dsr1_tensor_plan_build(cfg, w->dummy_plan)) != DSR1_OK) {
        free(w->dummy_plan);
        w->dummy_plan = NULL;
        goto err;
    }
    const dsr1_tensor_plan *plan = w->dummy_plan;
    w->n_dummy = plan->count;
    w->dummy = calloc(plan->count, sizeof(*w->dummy));
    todo = malloc(sizeof(int) * plan->count);
    status = calloc(plan->count, sizeof(*status));
    if (!w->dummy || !todo || !status) goto nomem;
    int ntodo = 0;
    uint64_t bytes = 0;
    for (size_t k = 0; k < plan->count; k++) {
        const dsr1_tensor_spec *t = &plan->t[k];
        /* a scale is wanted with its weight; ask about the weight's name */
        const char *owner = t->init == DSR1_INIT_FP8_SCALE ? plan->t[t->companion].name : t->name;
        if (!dsr1_slice_wants(cfg, slice, owner)) continue;
        struct dsr1_dummy_tensor *d = &w->dummy[k];
        d->desc.name = t->name;
        d->desc.dtype = t->dtype;
        d->desc.ndim = t->ndim;
        d->desc.shape[0] = t->shape[0];
        d->desc.shape[1] = t->ndim > 1 ? t->shape[1] : 0;
        d->desc.nbytes = t->nbytes;
        if (!(d->data = malloc(t->nbytes ? t->nbytes : 1))) goto nomem;
        bytes += t->nbytes;
        if (t->init != DSR1_INIT_FP8_SCALE) todo[ntodo++] = (int)k;
    }
    DSR1_INFO("dummy weights: generating %.2f GB of random tensors (seed %llu)", bytes / 1e9,
              (unsigned long long)seed);
    double t0 = dsr1_now();
    dsr1_randw_init(rw, seed);
    if ((st = dsr1_pool_create(0, &pool)) != DSR1_OK) goto err;
    fill_job job = {w, rw, todo, status};
    dsr1_pool_run(pool, ntodo, 1, fill_task, &job);
    for (int i = 0; i < ntodo; i++)
        if (status[i] != DSR1_OK) {
            st =
                dsr1_error(status[i], "dummy weights: cannot generate '%s'", plan->t[todo[i]].name);
            goto err;
        }
    DSR1_INFO("dummy weights: done in %.1f s", dsr1_now() - t0);
    if ((st = dsr1__weights_finish(w)) != DSR1_OK) goto err;
    dsr1_pool_destroy(pool);
    free(todo);
    free(status);
    free(rw);
    *out = w;
    return DSR1_OK;
nomem:
    st = dsr1_error(DSR1_ERR_NOMEM, "dummy weights: out of memory");
err:
    dsr1_pool_destroy(pool);
    free(todo);
    free(status);
    free(rw);
    dsr1_weights_destroy(w);
    return st;
}
