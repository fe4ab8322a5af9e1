/* A census of a checkpoint's tensors: parameter counts and bytes per kind and dtype, what a
 * token activates, and the memory each worker needs when routed experts are spread over N
 * workers (expert parallelism) and everything else is replicated.
 *
 * Tensors are classified by looking their names up in the tensor plan of the config
 * (tensor_plan.h), so the census works the same on a real checkpoint (names and shapes from
 * its safetensors headers, `dsr1 inspect --model`) and on a config alone (the plan's own
 * entries, `dsr1 inspect --config`). Names the plan does not know, and known names with
 * another dtype or shape, are counted apart so inspect can flag them.
 *
 * Counting conventions: "parameters" are weight elements; the FP8 weight_scale_inv tensors
 * are not parameters (their bytes count in scale_bytes and in every byte total). The MTP
 * layers (index >= num_hidden_layers) are counted in the totals and also separately, since
 * published figures (671B total, 37B activated for R1) leave them out. Activated per token
 * = every main-model parameter that is not a routed expert, plus num_experts_per_tok routed
 * experts in each MoE layer (embedding and lm_head included).
 *
 * Memory per worker counts what a worker loads: the main layers (never the MTP layers),
 * with routed experts placed as the engine places them (placement.h: balanced contiguous
 * blocks, and with `--expert-replicas R` R copies of each on different workers) and
 * everything else replicated. */
#ifndef DSR1_CENSUS_H
#define DSR1_CENSUS_H

#include <stdint.h>

#include "model_config.h"
#include "safetensors.h"
#include "status.h"
#include "tensor_plan.h"

typedef struct {
    uint64_t params, bytes;
} dsr1_census_sum;

typedef struct {
    const dsr1_tensor_plan *plan; /* borrowed */
    int nlayers;                  /* main + MTP layers */
    int nmain;                    /* main layers */
    int nexperts;
    /* bytes of routed expert e of layer l: expert_bytes[l * nexperts + e] (owned) */
    uint64_t *expert_bytes;
    /* params of routed experts per layer (owned), for the activated count */
    uint64_t *expert_params;

    dsr1_census_sum all, main, mtp, kind[DSR1_TK_COUNT];
    uint64_t scale_bytes;
    uint64_t dtype_count[DSR1_DT_COUNT], dtype_bytes[DSR1_DT_COUNT];
    uint64_t replicated_bytes;     /* everything but routed experts */
    uint64_t mtp_replicated_bytes; /* the part of it in MTP layers */
    uint64_t tensors, unknown, mismatched;
    uint8_t *seen; /* per plan entry (owned) */
} dsr1_census;

/* Start a census against `plan` (built from cfg, borrowed until dsr1_census_free). */
dsr1_status dsr1_census_init(dsr1_census *c, const dsr1_model_config *cfg,
                             const dsr1_tensor_plan *plan);
void dsr1_census_free(dsr1_census *c);

/* Count one tensor. Unknown names count in `unknown` (and the byte totals); a known name
 * with another dtype or shape in `mismatched`. */
void dsr1_census_add(dsr1_census *c, const char *name, dsr1_dtype dtype, int ndim,
                     const int64_t *shape, uint64_t nbytes);
/* Count every entry of the plan (a config-only census). */
void dsr1_census_add_plan(dsr1_census *c);
/* Plan entries never added. */
uint64_t dsr1_census_missing(const dsr1_census *c);

/* Parameters a token activates in the main model (see above). */
uint64_t dsr1_census_activated(const dsr1_census *c, const dsr1_model_config *cfg);
/* Bytes worker w of n loads: the main layers' replicated part + its routed experts. */
uint64_t dsr1_census_worker_bytes(const dsr1_census *c, int n, int w);
/* The same with `replicas` copies of every routed expert: owners is the table of
 * dsr1_placement_replicated (owners[e * replicas + copy] = worker), built once by the
 * caller for all the workers. A worker loads each expert it holds a copy of once. */
uint64_t dsr1_census_worker_bytes_placed(const dsr1_census *c, const int *owners, int replicas,
                                         int w);

#endif
