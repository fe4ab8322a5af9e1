/* `dsr1-worker`: one worker of a multi-process cluster, started by an MPI launcher beside
 * the coordinator (which is MPI rank 0):
 *
 *   mpirun -np 1 dsr1 run --model DIR ... [--pp P] : -np N dsr1-worker --model DIR
 *
 * or joining a coordinator over TCP, without a launcher (the coordinator's
 * --join-listen; a replacement for a lost worker, or every worker of a grid started with
 * --transport join):
 *
 *   dsr1-worker --join HOST:PORT --model DIR [--worker-index I]
 *
 * It learns the grid shape from the coordinator's hello, refuses a coordinator whose
 * protocol version, model config, weights or expert placement differ from its own, loads
 * the slice of its grid position (world rank r is worker r - 1: stage (r-1) / ep, EP rank
 * (r-1) % ep), connects over UCX and serves steps until the coordinator shuts it down.
 * Exit status: 0 after a clean shutdown, 1 on any failure (with a message on stderr), 2
 * on a usage error. Built only when the build has MPI and UCX. */
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "args.h"
#include "bootstrap_mpi.h"
#include "ckpt.h"
#include "kernels.h"
#include "dsr1_build_config.h"
#include "log.h"
#include "rendezvous.h"
#include "wire.h"
#include "worker_loop.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: dsr1-worker --model DIR [options]   (started by mpirun/srun, never alone)\n\n"
            "One worker of a dsr1 cluster; MPI rank 0 must be the coordinator (dsr1 run).\n"
            "  mpirun -np 1 dsr1 run --model DIR ... : -np N dsr1-worker --model DIR\n\n"
            "  --model DIR        checkpoint directory (the same model as the coordinator's)\n"
            "  --dummy-weights    random weights from the config alone (as the coordinator)\n"
            "  --seed S           seed of --dummy-weights (default 1)\n"
            "  --layers N         with --dummy-weights: keep only the first N layers\n"
            "  --threads N        CPU threads (default: DSR1_THREADS, SLURM_CPUS_PER_TASK,\n"
            "                     or the cores divided by the ranks on this node)\n"
            "  --kernels NAME     kernel variant: auto (default), portable, avx512, bf16-tiles\n"
            "  --timeout-ms T     bound on every wait for a peer (default: the coordinator's)\n"
            "  --precision MODE   exact (default) or fast (--kernels bf16-tiles): the same as\n"
            "                     the coordinator's\n"
            "  --join HOST:PORT   join the coordinator listening there (its --join-listen)\n"
            "                     instead of an MPI job: take a lost worker's place, or one\n"
            "                     of a grid that forms over TCP (--transport join)\n"
            "  --worker-index I   with --join: the place asked for (default: any free one)\n"
            "  -h, --help         this text\n\n"
            "environment: UCX_TLS, UCX_NET_DEVICES (UCX transports), DSR1_LOG, DSR1_WEIGHTS\n"
            "(map|copy: the checkpoint's pages mapped, or copied into this process's memory)\n");
}

/* DSR1_THREADS; Slurm's --cpus-per-task; or the cores divided among the ranks the
 * launcher put on this node. */
static int default_threads(void)
{
    const char *e = getenv("DSR1_THREADS");
    if (e && atoi(e) > 0) return atoi(e);
    if ((e = getenv("SLURM_CPUS_PER_TASK")) && atoi(e) > 0) return atoi(e);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    const char *l = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    if (!l) l = getenv("MPI_LOCALNRANKS");
    int local = l ? atoi(l) : 1;
    if (local < 1) local = 1;
    return cores / local > 1 ? (int)(cores / local) : 1;
}

typedef struct {
    const char *model, *kernels;
    int dummy, layers, threads, timeout_ms;
    unsigned long long seed;
    const char *join; /* HOST:PORT, or NULL: MPI */
    int index;        /* with join: the place asked for, -1: any */
} options;

/* --model: the checkpoint (*ck), or with --dummy-weights its config alone (in *dc). */
static dsr1_status open_model(const options *o, dsr1_ckpt **ck, dsr1_model_config *dc,
                              const dsr1_model_config **cfg)
{
    dsr1_status st;
    if (o->dummy) {
        if ((st = dsr1_model_config_load(o->model, dc)) == DSR1_OK) {
            dsr1_model_config_keep_layers(dc, o->layers);
            *cfg = dc;
        }
    } else if ((st = dsr1_ckpt_open(o->model, ck)) == DSR1_OK) {
        *cfg = dsr1_ckpt_config(*ck);
    }
    return st;
}

/* The kernel variant to run: this worker's --kernels/--precision, or the coordinator's
 * mode (fast: 1) when it was given none. */
static const char *kernels_for(const options *o, int fast)
{
    if (o->kernels && strcmp(o->kernels, "auto")) return o->kernels;
    return fast ? "bf16-tiles" : NULL;
}

/* Check the hello and load this worker's slice; the verdict every rank then agrees on. */
static dsr1_status prepare(const options *o, const dsr1_hello *h, int rank, const int *all_hosts,
                           const dsr1_ckpt *ck, const dsr1_model_config *cfg, dsr1_worker *w)
{
    const int ep = h->workers / h->pp, i = rank - 1;
    if (h->pp > cfg->num_hidden_layers || ep > cfg->n_routed_experts)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "%d stages x %d EP ranks do not fit a %d-layer, %d-expert model", h->pp,
                          ep, cfg->num_hidden_layers, cfg->n_routed_experts);
    int hosts[ep > 0 ? ep : 1], *owner = NULL; /* stage 0's hosts, as the coordinator */
    for (int e = 0; e < ep; e++) hosts[e] = all_hosts[1 + e];
    /* the mode this worker will run is its table's (DSR1_KERNELS may pick one when no
     * --kernels was given), which the hello check compares with the coordinator's */
    const char *kname = kernels_for(o, h->fast);
    const dsr1_kernels *k = dsr1_kernels_select(kname);
    if (!k) return dsr1_error(DSR1_ERR_INVALID_ARG, "--kernels: unknown variant '%s'", kname);
    dsr1_status st = dsr1_worker_placement(cfg, ep, h->replicas, hosts, &owner);
    if (st != DSR1_OK) return st;
    dsr1_hello mine = {DSR1_WIRE_VERSION,
                       h->workers,
                       h->pp,
                       h->n_slots,
                       h->max_tokens,
                       h->timeout_ms,
                       o->dummy,
                       o->seed,
                       dsr1_config_hash(cfg),
                       dsr1_placement_hash(owner, cfg->n_routed_experts * h->replicas),
                       h->kv_blocks,
                       h->block_tokens,
                       h->replicas,
                       dsr1_kernels_name_is_fast(k->name)};
    free(owner);
    st = dsr1_hello_check(h, &mine);
    if (st != DSR1_OK) return st;
    dsr1_worker_params wp = {ck,
                             o->dummy ? cfg : NULL,
                             o->seed,
                             h->workers,
                             h->pp,
                             i / ep,
                             i % ep,
                             k,
                             o->threads > 0 ? o->threads : default_threads(),
                             (h->n_slots + ep - 1) / ep,
                             h->max_tokens,
                             h->kv_blocks,
                             h->block_tokens,
                             h->replicas,
                             hosts};
    return dsr1_worker_init(w, &wp);
}

static int serve(const options *o)
{
    dsr1_mpi *m = NULL;
    dsr1_ckpt *ck = NULL;
    dsr1_model_config dc;
    const dsr1_model_config *cfg = NULL;
    dsr1_worker w;
    memset(&w, 0, sizeof(w));
    dsr1_comm *world = NULL;
    int clean = 0, loaded = 0;
    dsr1_status st = dsr1_mpi_init(&m);
    if (st != DSR1_OK) {
        fprintf(stderr, "dsr1-worker: %s\n", dsr1_errmsg());
        return 1;
    }
    const int rank = dsr1_mpi_rank(m);
    char tag[32];
    snprintf(tag, sizeof(tag), "rank %d", rank);
    dsr1_log_set_tag(tag);
    /* mpirun forwards SIGTERM/SIGINT to every rank: a worker ends on the coordinator's
     * SHUTDOWN (or when it loses the coordinator), so that the coordinator stops cleanly */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    if (rank == 0) {
        /* nobody to coordinate: fail alone, the launcher ends the job */
        fprintf(stderr, "dsr1-worker: MPI rank 0 must be the coordinator: mpirun -np 1 dsr1 run "
                        "... : -np N dsr1-worker ...\n");
        dsr1_mpi_finalize(m, false);
        return 1;
    }
    st = open_model(o, &ck, &dc, &cfg);
    dsr1_hello h;
    memset(&h, 0, sizeof(h));
    /* every rank takes part in the hello and the verdict, whatever happened before */
    dsr1_status hs = dsr1_mpi_gather_hosts(m);
    if (hs == DSR1_OK) hs = dsr1_mpi_hello(m, &h);
    if (st == DSR1_OK) st = hs;
    if (st == DSR1_OK && (st = prepare(o, &h, rank, dsr1_mpi_hosts(m), ck, cfg, &w)) == DSR1_OK)
        loaded = 1;
    if (st != DSR1_OK)
        fprintf(stderr, "dsr1-worker (rank %d): refusing: %s\n", rank, dsr1_errmsg());
    if ((st = dsr1_mpi_agree(m, st)) != DSR1_OK) {
        clean = 1; /* everyone saw the refusal: MPI is healthy */
        goto out;
    }
    const int timeout = o->timeout_ms > 0 ? o->timeout_ms : h.timeout_ms > 0 ? h.timeout_ms : 60000;
    st = dsr1_mpi_connect(m, h.workers, h.pp, dsr1_worker_world_timeout(timeout), &world);
    if (st != DSR1_OK) goto out;
    w.world = world;
    w.regroup = true; /* the data groups come with the grid's epochs */
    w.timeout_ms = timeout;
    /* after losing workers, MPI_Finalize would wait for them: exit without it */
    if ((st = dsr1_worker_serve(&w)) == DSR1_OK) clean = !w.degraded;
out:
    if (st != DSR1_OK) fprintf(stderr, "dsr1-worker (rank %d): %s\n", rank, dsr1_errmsg());
    if (loaded) dsr1_worker_fini(&w);
    dsr1_comm_destroy(world);
    dsr1_ckpt_close(ck);
    dsr1_mpi_finalize(m, clean);
    return st == DSR1_OK ? 0 : 1;
}

#if DSR1_HAVE_UCX
/* One JOIN over the rendezvous and its WELCOME (decoded into *w; *msg keeps its bytes). */
static dsr1_status ask(const options *o, const dsr1_wire_join *j, int timeout, void **msg,
                       dsr1_wire_welcome *w)
{
    void *out, *in = NULL;
    size_t len, inlen;
    dsr1_status st = dsr1_wire_join_encode(j, &out, &len);
    if (st != DSR1_OK) return st;
    st = dsr1_rdv_join(o->join, out, len, timeout, &in, &inlen);
    free(out);
    if (st == DSR1_OK) st = dsr1_wire_welcome_decode(in, inlen, w);
    if (st != DSR1_OK) {
        free(in);
        return dsr1_error_context(st, "joining %s", o->join);
    }
    *msg = in;
    return DSR1_OK;
}

/* A worker that joins over TCP: a place and the placement, the slice loaded, then ready
 * with its world address; it serves until SHUTDOWN. */
static int join_serve(const options *o)
{
    dsr1_ckpt *ck = NULL;
    dsr1_model_config dc;
    const dsr1_model_config *cfg = NULL;
    dsr1_worker w;
    memset(&w, 0, sizeof(w));
    dsr1_comm *world = NULL;
    dsr1_ucx_local *local = NULL;
    void *m1 = NULL, *m2 = NULL;
    dsr1_wire_welcome w1 = {0}, w2 = {0};
    int *owners = NULL, loaded = 0;
    /* the place may wait for the rest of a forming grid, the ready for an epoch change */
    const int wait_ms = o->timeout_ms > 0 ? 10 * o->timeout_ms : 600000;
    dsr1_status st = DSR1_OK;
    st = open_model(o, &ck, &dc, &cfg);
    if (st != DSR1_OK) goto out;
    dsr1_wire_join j = {dsr1_config_hash(cfg), o->seed, o->dummy, o->index, 0, "", 0, NULL};
    gethostname(j.host, sizeof(j.host) - 1);
    if ((st = ask(o, &j, wait_ms, &m1, &w1)) != DSR1_OK) goto out;
    const int E = cfg->n_routed_experts, ep = w1.workers / (w1.pp > 0 ? w1.pp : 1);
    if (w1.pp < 1 || w1.workers % w1.pp || w1.replicas < 1 || w1.n_owners != E * w1.replicas ||
        !(owners = malloc(sizeof(int) * (size_t)w1.n_owners + 1))) {
        st = dsr1_error(DSR1_ERR_FORMAT,
                        "the coordinator's grid (%d workers, %d stages, %d copies, "
                        "%d placement entries) does not fit this model (%d experts)",
                        w1.workers, w1.pp, w1.replicas, w1.n_owners, E);
        goto out;
    }
    for (int i = 0; i < w1.n_owners; i++) owners[i] = w1.owners[i];
    char tag[48];
    snprintf(tag, sizeof(tag), "worker %d", w1.index);
    dsr1_log_set_tag(tag);
    const char *kname = kernels_for(o, w1.fast);
    const dsr1_kernels *k = dsr1_kernels_select(kname);
    if (!k) {
        st = dsr1_error(DSR1_ERR_INVALID_ARG, "--kernels: unknown variant '%s'", kname);
        goto out;
    }
    /* the table's mode, not the name's: DSR1_KERNELS may pick one when kname is NULL */
    if (dsr1_kernels_name_is_fast(k->name) != (w1.fast == 1)) {
        st = dsr1_error(DSR1_ERR_INVALID_ARG,
                        "the coordinator runs the %s precision mode and this worker the %s one "
                        "(kernels %s%s): give both the same --precision (or none to the worker, "
                        "and no DSR1_KERNELS)",
                        w1.fast ? "fast" : "exact", w1.fast ? "exact" : "fast", k->name,
                        kname ? "" : ", from DSR1_KERNELS");
        goto out;
    }
    dsr1_worker_params wp = {ck,
                             o->dummy ? cfg : NULL,
                             o->seed,
                             w1.workers,
                             w1.pp,
                             w1.index / ep,
                             w1.index % ep,
                             k,
                             o->threads > 0 ? o->threads : default_threads(),
                             (w1.n_slots + ep - 1) / ep,
                             w1.max_tokens,
                             w1.kv_blocks,
                             w1.block_tokens,
                             w1.replicas,
                             NULL,
                             owners};
    if ((st = dsr1_worker_init(&w, &wp)) != DSR1_OK) goto out;
    loaded = 1;
    /* loaded: ready, with the world endpoint's address */
    if ((st = dsr1_ucx_local_create(&local)) != DSR1_OK) goto out;
    const void *addr;
    size_t alen;
    dsr1_ucx_local_address(local, &addr, &alen);
    j.ready = 1;
    j.want = w1.index;
    j.addr = addr;
    j.len = (int32_t)alen;
    if ((st = ask(o, &j, wait_ms, &m2, &w2)) != DSR1_OK) goto out;
    if (w2.index != w1.index || w2.workers != w1.workers || w2.lens[0] <= 0) {
        st = dsr1_error(DSR1_ERR_FORMAT, "the coordinator's second answer is for worker %d of %d",
                        w2.index, w2.workers);
        goto out;
    }
    /* the world group: the coordinator now, the others from the first epoch's CONNECT */
    const int n = w1.workers + 1;
    const void **addrs = calloc((size_t)n, sizeof(void *));
    size_t *lens = calloc((size_t)n, sizeof(size_t));
    if (!addrs || !lens) {
        free(addrs);
        free(lens);
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        goto out;
    }
    addrs[0] = w2.addrs[0];
    lens[0] = (size_t)w2.lens[0];
    addrs[1 + w1.index] = addr;
    lens[1 + w1.index] = alen;
    const int timeout = o->timeout_ms > 0   ? o->timeout_ms
                        : w1.timeout_ms > 0 ? w1.timeout_ms
                                            : 60000;
    dsr1_ucx_group_params gp = {1 + w1.index, n,    dsr1_worker_world_timeout(timeout),
                                "world",      NULL, true};
    st = dsr1_comm_ucx_connect(local, &gp, addrs, lens, &world);
    local = NULL;
    free(addrs);
    free(lens);
    if (st != DSR1_OK) goto out;
    w.world = world;
    w.regroup = true;
    w.timeout_ms = timeout;
    DSR1_INFO("joined the grid at %s as worker %d of %d", o->join, w1.index, w1.workers);
    st = dsr1_worker_serve(&w);
out:
    if (st != DSR1_OK) fprintf(stderr, "dsr1-worker: %s\n", dsr1_errmsg());
    if (loaded) dsr1_worker_fini(&w);
    dsr1_comm_destroy(world);
    dsr1_ucx_local_destroy(local);
    free(owners);
    free((void *)w1.lens);
    free((void *)w1.addrs);
    free((void *)w2.lens);
    free((void *)w2.addrs);
    free(m1);
    free(m2);
    dsr1_ckpt_close(ck);
    return st == DSR1_OK ? 0 : 1;
}
#else
static int join_serve(const options *o)
{
    (void)o;
    fprintf(stderr, "dsr1-worker: --join needs a build with UCX\n");
    return 1;
}
#endif

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"dummy-weights", no_argument, 0, 'D'},
                                         {"seed", required_argument, 0, 's'},
                                         {"layers", required_argument, 0, 'L'},
                                         {"threads", required_argument, 0, 't'},
                                         {"kernels", required_argument, 0, 'k'},
                                         {"timeout-ms", required_argument, 0, 'O'},
                                         {"join", required_argument, 0, 'J'},
                                         {"precision", required_argument, 0, 'X'},
                                         {"worker-index", required_argument, 0, 'I'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *model = NULL, *kernels = NULL, *join = NULL, *precision = NULL;
    long dummy = 0, layers = 0, threads = 0, timeout = 0, index = -1;
    uint64_t seed = 1;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case 'k':
            kernels = optarg;
            break;
        case 'D':
            dummy = 1;
            break;
        case 's':
            if (dsr1_arg_u64("dsr1-worker", "--seed", optarg, &seed)) return 2;
            break;
        case 'L':
            if (dsr1_arg_long("dsr1-worker", "--layers", optarg, 1, 100000000, &layers)) return 2;
            break;
        case 't':
            if (dsr1_arg_long("dsr1-worker", "--threads", optarg, 1, 100000000, &threads)) return 2;
            break;
        case 'O':
            if (dsr1_arg_long("dsr1-worker", "--timeout-ms", optarg, 1, 100000000, &timeout))
                return 2;
            break;
        case 'J':
            join = optarg;
            break;
        case 'X':
            precision = optarg;
            break;
        case 'I':
            if (dsr1_arg_long("dsr1-worker", "--worker-index", optarg, 0, 65535, &index)) return 2;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc || !model) {
        fprintf(stderr,
                optind < argc ? "dsr1-worker: unexpected argument '%s'\n\n"
                              : "dsr1-worker: --model is required%s\n\n",
                optind < argc ? argv[optind] : "");
        usage(stderr);
        return 2;
    }
    if (layers && !dummy) {
        fprintf(stderr, "dsr1-worker: --layers needs --dummy-weights\n");
        return 2;
    }
    if (dsr1_arg_precision("dsr1-worker", precision, &kernels)) return 2;
    if (index >= 0 && !join) {
        fprintf(stderr, "dsr1-worker: --worker-index needs --join\n");
        return 2;
    }
    options o = {model,        kernels, (int)dummy, (int)layers, (int)threads,
                 (int)timeout, seed,    join,       (int)index};
    return join ? join_serve(&o) : serve(&o);
}
