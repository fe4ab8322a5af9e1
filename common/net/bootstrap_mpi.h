/* Bootstrap of a multi-process cluster with MPI (mpirun, or srun under Slurm): MPI gives
 * the ranks, carries the coordinator's hello to the workers, collects their verdicts, and
 * exchanges the UCX worker addresses from which the world group is built (the groups
 * between workers are then made by the grid, epoch by epoch: coordinator/grid/grid.c). MPI is used for nothing else: the steps travel over
 * UCX (comm_ucx.c).
 *
 * World ranks: 0 is the coordinator, worker i (stage i / ep, EP rank i % ep) is 1 + i.
 *
 * Sequence, the same on every rank:
 *   dsr1_mpi_init -> dsr1_mpi_gather_hosts -> dsr1_mpi_hello (rank 0 sends its hello, workers receive it) ->
 *   [workers check it against their own model and load their slice] ->
 *   dsr1_mpi_agree (every rank's verdict; one refusal fails all, with its reason) ->
 *   dsr1_mpi_connect (the UCX world group, one barrier) -> ... ->
 *   dsr1_mpi_finalize.
 *
 * The functions are defined only when the build has both MPI and UCX
 * (DSR1_HAVE_MPI && DSR1_HAVE_UCX); dsr1_mpi_launched_size works everywhere.
 *
 * GPU workers (not wired yet): after dsr1_mpi_connect, dsr1_mpi_nccl_connect builds each
 * stage's EP group over NCCL for the dispatch/combine all-to-alls, beside the UCX groups
 * that keep carrying the control messages and the coordinator's traffic. */
#ifndef DSR1_BOOTSTRAP_MPI_H
#define DSR1_BOOTSTRAP_MPI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "comm.h"
#include "model_config.h"
#include "wire.h"

/* The world size an MPI launcher advertises in the environment, or 0 when this process
 * was not started by one: Open MPI's mpirun, PMI (MPICH, Slurm's pmi2), or srun with
 * PMIx (Slurm's task count, trusted only beside PMIX_RANK). Reads no MPI library. */
static inline int dsr1_mpi_launched_size(void)
{
    const char *v = getenv("OMPI_COMM_WORLD_SIZE");
    if (!v || !*v) v = getenv("PMI_SIZE");
    if ((!v || !*v) && getenv("PMIX_RANK")) v = getenv("SLURM_STEP_NUM_TASKS");
    if (!v || !*v) return 0;
    long n = strtol(v, NULL, 10);
    return n > 0 && n < 1000000 ? (int)n : 0;
}

/* The timeout of a stage's EP group, given the world's: shorter, so that when a worker
 * goes silent its EP peers give up on it (and report it by name to the coordinator)
 * before the coordinator gives up on the step without knowing whom to blame. */
static inline int dsr1_ep_timeout(int world_timeout_ms)
{
    return world_timeout_ms > 0 ? world_timeout_ms - world_timeout_ms / 4 : world_timeout_ms;
}

/* What the coordinator announces and every worker must match. Travels packed, 76 bytes,
 * little-endian, behind a magic. */
typedef struct {
    uint32_t protocol;   /* DSR1_WIRE_VERSION */
    int32_t workers, pp; /* grid shape */
    int32_t n_slots;     /* cache slots of the whole grid */
    int32_t max_tokens;  /* cache capacity per slot */
    int32_t timeout_ms;  /* the coordinator's bound on waits */
    int32_t dummy;       /* 1: random weights from the config, made with `seed` */
    uint64_t seed;
    uint64_t config_hash;    /* dsr1_config_hash of the model config */
    uint64_t placement_hash; /* dsr1_placement_hash of the owners table (all copies) */
    int32_t kv_blocks;       /* > 0: paged cache blocks per worker (n_slots, max_tokens unused) */
    int32_t block_tokens;    /* tokens per cache block when paged */
    int32_t replicas;        /* copies of every routed expert per stage (>= 1) */
    int32_t fast;            /* 1: the fast precision mode (bf16 kernels), 0: exact */
} dsr1_hello;


/* Compare a worker's own view (mine) with the coordinator's hello; a clear error names
 * the first difference (protocol version, model config, weights, placement). */
dsr1_status dsr1_hello_check(const dsr1_hello *coordinator, const dsr1_hello *mine);

typedef struct dsr1_mpi dsr1_mpi;

/* MPI_Init; rank and size of MPI_COMM_WORLD. */
dsr1_status dsr1_mpi_init(dsr1_mpi **out);
int dsr1_mpi_rank(const dsr1_mpi *m);
int dsr1_mpi_size(const dsr1_mpi *m);
/* Collective, before the hello: every rank's host name, so that the copies of an expert
 * go to different hosts. Then dsr1_mpi_hosts gives [size] host ids, equal for the ranks on
 * one host (the lowest such rank). */
dsr1_status dsr1_mpi_gather_hosts(dsr1_mpi *m);
const int *dsr1_mpi_hosts(const dsr1_mpi *m);
/* Rank 0 sends *h; the others receive into *h (checked: magic, sizes, shape vs MPI size). */
dsr1_status dsr1_mpi_hello(dsr1_mpi *m, dsr1_hello *h);
/* Every rank's verdict (its status and, on failure, dsr1_errmsg()). DSR1_OK when all
 * agree; otherwise every rank gets an error listing the ranks that refused and why. */
dsr1_status dsr1_mpi_agree(dsr1_mpi *m, dsr1_status mine);
/* Build the UCX world group (all ranks; tolerant: it outlives lost workers). The data
 * groups between workers (pipeline, expert parallel) are made per epoch by the grid's
 * REGROUP protocol over it. Waits at a barrier (bounded). */
dsr1_status dsr1_mpi_connect(dsr1_mpi *m, int workers, int pp, int timeout_ms, dsr1_comm **world);
#if DSR1_HAVE_NCCL
/* An NCCL group over some of the MPI ranks, for workers that are GPU processes: collective
 * over MPI_COMM_WORLD (every rank calls it). Ranks that pass the same color >= 0 form one
 * group, ordered by key (each stage's EP group: color = stage, key = EP rank); a rank
 * with color < 0 takes part in no group and gets *out = NULL. The group's first rank makes
 * the NCCL unique id and broadcasts it over MPI, then every member creates its handle
 * (dsr1_comm_nccl_create; bounded by timeout_ms). cuda_device < 0 picks the member's rank
 * among the group's members on its node, modulo the node's device count. `name` is for
 * messages. Defined when the build has MPI, UCX and NCCL. */
dsr1_status dsr1_mpi_nccl_connect(dsr1_mpi *m, int color, int key, int cuda_device, int timeout_ms,
                                  const char *name, dsr1_comm **out);
#endif
/* clean: MPI_Finalize at process exit (every rank must get there). Otherwise MPI is left
 * as it is: the process is about to exit with an error and the launcher reports it.
 * Frees m. */
void dsr1_mpi_finalize(dsr1_mpi *m, bool clean);

#endif
