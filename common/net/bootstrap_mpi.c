/* MPI bootstrap of the cluster (see bootstrap_mpi.h): ranks, the coordinator's hello, the
 * workers' verdicts, and the exchange of UCX worker addresses. Every message here is a
 * fixed-size, explicitly packed buffer, checked on receipt. */
#include "bootstrap_mpi.h"

#include <mpi.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "le.h"
#include "log.h"
#include "wire.h"

#define HELLO_MAGIC  UINT64_C(0x4f4c454831525344) /* "DSR1HELO" little-endian */
#define HELLO_BYTES  76
#define VERDICT_TEXT 480
#define SUMMARY_TEXT 3000

struct dsr1_mpi {
    int rank, size;
    int *hosts; /* [size] after the hello: host id of each rank */
};

dsr1_status dsr1_hello_check(const dsr1_hello *co, const dsr1_hello *me)
{
    if (co->protocol != me->protocol)
        return dsr1_error(DSR1_ERR_UNSUPPORTED,
                          "the coordinator speaks protocol version %u, this worker %u: run "
                          "the same dsr1 build everywhere",
                          co->protocol, me->protocol);
    if (co->config_hash != me->config_hash)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "the coordinator's model config differs from this worker's (hash "
                          "%016llx vs %016llx): give every process the same --model (and "
                          "--layers)",
                          (unsigned long long)co->config_hash, (unsigned long long)me->config_hash);
    if (co->dummy != me->dummy || (co->dummy && co->seed != me->seed)) {
        char a[64], b[64];
        snprintf(a, sizeof(a), co->dummy ? "dummy weights (seed %llu)" : "checkpoint weights",
                 (unsigned long long)co->seed);
        snprintf(b, sizeof(b), me->dummy ? "dummy weights (seed %llu)" : "checkpoint weights",
                 (unsigned long long)me->seed);
        return dsr1_error(DSR1_ERR_INVALID_ARG, "the coordinator expects %s, this worker has %s", a,
                          b);
    }
    if (co->fast != me->fast)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "the coordinator runs the %s precision mode, this worker the %s one: "
                          "give both the same --precision (or none to the worker)",
                          co->fast ? "fast" : "exact", me->fast ? "fast" : "exact");
    if (co->placement_hash != me->placement_hash)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "the coordinator's expert placement differs from this worker's "
                          "(hash %016llx vs %016llx)",
                          (unsigned long long)co->placement_hash,
                          (unsigned long long)me->placement_hash);
    return DSR1_OK;
}

/* ---- packing ----------------------------------------------------------------------- */

/* magic 8 | protocol, workers, pp, n_slots, max_tokens, timeout_ms, dummy, replicas (4 each) |
 * seed, config_hash, placement_hash (8 each) | kv_blocks, block_tokens, fast (4 each) */
static void hello_pack(const dsr1_hello *h, unsigned char *b)
{
    dsr1_put_le64(b, HELLO_MAGIC);
    const uint32_t w[8] = {h->protocol,
                           (uint32_t)h->workers,
                           (uint32_t)h->pp,
                           (uint32_t)h->n_slots,
                           (uint32_t)h->max_tokens,
                           (uint32_t)h->timeout_ms,
                           (uint32_t)h->dummy,
                           (uint32_t)h->replicas};
    for (int i = 0; i < 8; i++) dsr1_put_le32(b + 8 + 4 * i, w[i]);
    dsr1_put_le64(b + 40, h->seed);
    dsr1_put_le64(b + 48, h->config_hash);
    dsr1_put_le64(b + 56, h->placement_hash);
    dsr1_put_le32(b + 64, (uint32_t)h->kv_blocks);
    dsr1_put_le32(b + 68, (uint32_t)h->block_tokens);
    dsr1_put_le32(b + 72, (uint32_t)h->fast);
}

static dsr1_status hello_unpack(const unsigned char *b, int mpi_size, dsr1_hello *out)
{
    if (dsr1_get_le64(b) != HELLO_MAGIC)
        return dsr1_error(DSR1_ERR_FORMAT, "rank 0 is not a dsr1 coordinator (bad hello magic)");
    dsr1_hello h = {dsr1_get_le32(b + 8),           (int32_t)dsr1_get_le32(b + 12),
                    (int32_t)dsr1_get_le32(b + 16), (int32_t)dsr1_get_le32(b + 20),
                    (int32_t)dsr1_get_le32(b + 24), (int32_t)dsr1_get_le32(b + 28),
                    (int32_t)dsr1_get_le32(b + 32), dsr1_get_le64(b + 40),
                    dsr1_get_le64(b + 48),          dsr1_get_le64(b + 56),
                    (int32_t)dsr1_get_le32(b + 64), (int32_t)dsr1_get_le32(b + 68),
                    (int32_t)dsr1_get_le32(b + 36), (int32_t)dsr1_get_le32(b + 72)};
    if (h.replicas < 1 || h.dummy < 0 || h.dummy > 1 || h.fast < 0 || h.fast > 1)
        return dsr1_error(DSR1_ERR_FORMAT, "malformed hello from the coordinator");
    if (h.workers != mpi_size - 1 || h.pp < 1 || h.workers % h.pp)
        return dsr1_error(DSR1_ERR_FORMAT,
                          "the coordinator announces %d workers in %d stages, but the job "
                          "has %d worker ranks",
                          h.workers, h.pp, mpi_size - 1);
    const int paged = h.kv_blocks > 0;
    if (h.kv_blocks < 0 || (paged && h.block_tokens < 1) ||
        (!paged && (h.n_slots < 1 || h.n_slots > (1 << 20) || h.max_tokens < 1 ||
                    h.max_tokens > DSR1_WIRE_MAX_TOKENS)) ||
        h.timeout_ms < 0)
        return dsr1_error(DSR1_ERR_FORMAT,
                          "the coordinator's hello is out of range (%d slots of %d tokens, "
                          "%d cache blocks of %d tokens, timeout %d ms)",
                          h.n_slots, h.max_tokens, h.kv_blocks, h.block_tokens, h.timeout_ms);
    *out = h;
    return DSR1_OK;
}

/* ---- MPI steps --------------------------------------------------------------------- */

static dsr1_status mpi_failed(int rc, const char *what)
{
    char s[MPI_MAX_ERROR_STRING];
    int n = 0;
    if (MPI_Error_string(rc, s, &n) != MPI_SUCCESS) snprintf(s, sizeof(s), "error %d", rc);
    return dsr1_error(DSR1_ERR_IO, "MPI: %s: %s", what, s);
}

dsr1_status dsr1_mpi_init(dsr1_mpi **out)
{
    int inited = 0, provided = 0, rc;
    MPI_Initialized(&inited);
    if (!inited && (rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_SINGLE, &provided)) != MPI_SUCCESS)
        return mpi_failed(rc, "MPI_Init");
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    dsr1_mpi *m = calloc(1, sizeof(*m));
    if (!m) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    MPI_Comm_rank(MPI_COMM_WORLD, &m->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &m->size);
    *out = m;
    return DSR1_OK;
}

int dsr1_mpi_rank(const dsr1_mpi *m)
{
    return m->rank;
}

int dsr1_mpi_size(const dsr1_mpi *m)
{
    return m->size;
}

dsr1_status dsr1_mpi_hello(dsr1_mpi *m, dsr1_hello *h)
{
    unsigned char b[HELLO_BYTES] = {0};
    if (m->rank == 0) hello_pack(h, b);
    int rc = MPI_Bcast(b, HELLO_BYTES, MPI_BYTE, 0, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) return mpi_failed(rc, "broadcasting the hello");
    if (m->rank == 0) return DSR1_OK;
    return hello_unpack(b, m->size, h);
}

dsr1_status dsr1_mpi_gather_hosts(dsr1_mpi *m)
{
    enum { NAME = 256 };
    char mine[NAME] = {0}, *all = calloc((size_t)m->size, NAME);
    free(m->hosts);
    m->hosts = calloc((size_t)m->size, sizeof(int));
    if (!all || !m->hosts) {
        free(all);
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    }
    gethostname(mine, NAME - 1);
    int rc = MPI_Allgather(mine, NAME, MPI_CHAR, all, NAME, MPI_CHAR, MPI_COMM_WORLD);
    for (int r = 0; r < m->size; r++) {
        m->hosts[r] = r;
        for (int q = 0; q < r && m->hosts[r] == r; q++)
            if (!strncmp(all + (size_t)q * NAME, all + (size_t)r * NAME, NAME)) m->hosts[r] = q;
    }
    free(all);
    return rc == MPI_SUCCESS ? DSR1_OK : mpi_failed(rc, "gathering the host names");
}

const int *dsr1_mpi_hosts(const dsr1_mpi *m)
{
    return m->hosts;
}

/* Verdict: i32 status | text (NUL-terminated within VERDICT_TEXT). */
dsr1_status dsr1_mpi_agree(dsr1_mpi *m, dsr1_status mine)
{
    unsigned char v[4 + VERDICT_TEXT] = {0};
    dsr1_put_le32(v, (uint32_t)mine);
    if (mine != DSR1_OK) snprintf((char *)v + 4, VERDICT_TEXT, "%s", dsr1_errmsg());
    unsigned char *all = NULL;
    if (m->rank == 0 && !(all = malloc((size_t)m->size * sizeof(v))))
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    int rc =
        MPI_Gather(v, (int)sizeof(v), MPI_BYTE, all, (int)sizeof(v), MPI_BYTE, 0, MPI_COMM_WORLD);
    /* summary: i32 worst status | text */
    unsigned char sum[4 + SUMMARY_TEXT] = {0};
    if (m->rank == 0 && rc == MPI_SUCCESS) {
        int32_t worst = 0;
        size_t o = 0;
        char *t = (char *)sum + 4;
        for (int r = 0; r < m->size; r++) {
            unsigned char *e = all + (size_t)r * sizeof(v);
            int32_t st = (int32_t)dsr1_get_le32(e);
            if (st == 0) continue;
            if (st > 0 || st < DSR1_ERR_INTERNAL) st = DSR1_ERR_INTERNAL;
            if (!worst) worst = st;
            e[sizeof(v) - 1] = 0;
            if (o >= SUMMARY_TEXT - 1) continue;
            int k = r == 0 ? snprintf(t + o, SUMMARY_TEXT - o, "%scoordinator: %s", o ? "; " : "",
                                      (char *)e + 4)
                           : snprintf(t + o, SUMMARY_TEXT - o, "%sworker %d (rank %d) refused: %s",
                                      o ? "; " : "", r - 1, r, (char *)e + 4);
            if (k > 0) o += (size_t)k < SUMMARY_TEXT - o ? (size_t)k : SUMMARY_TEXT - o - 1;
        }
        dsr1_put_le32(sum, (uint32_t)worst);
    }
    free(all);
    if (rc != MPI_SUCCESS) return mpi_failed(rc, "gathering the workers' verdicts");
    if ((rc = MPI_Bcast(sum, (int)sizeof(sum), MPI_BYTE, 0, MPI_COMM_WORLD)) != MPI_SUCCESS)
        return mpi_failed(rc, "broadcasting the verdict");
    int32_t worst = (int32_t)dsr1_get_le32(sum);
    sum[sizeof(sum) - 1] = 0;
    if (worst == 0) return DSR1_OK;
    if (worst > 0 || worst < DSR1_ERR_INTERNAL) worst = DSR1_ERR_INTERNAL;
    return dsr1_error((dsr1_status)worst, "cluster start-up refused: %s", (char *)sum + 4);
}

/* Every rank's address for one group (ranks with no member of it give 0 bytes). */
static dsr1_status allgather_addrs(const dsr1_mpi *m, const void *mine, size_t len,
                                   unsigned char **buf, size_t **lens, size_t **offs)
{
    const int n = m->size;
    uint64_t l64 = len, *all64 = malloc(sizeof(uint64_t) * (size_t)n);
    int *cnt = malloc(sizeof(int) * (size_t)n), *dsp = malloc(sizeof(int) * (size_t)n);
    size_t *ls = malloc(sizeof(size_t) * (size_t)n), *os = malloc(sizeof(size_t) * (size_t)n);
    unsigned char *b = NULL;
    dsr1_status st = DSR1_OK;
    int rc;
    if (!all64 || !cnt || !dsp || !ls || !os) {
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        goto out;
    }
    if ((rc = MPI_Allgather(&l64, 1, MPI_UINT64_T, all64, 1, MPI_UINT64_T, MPI_COMM_WORLD))) {
        st = mpi_failed(rc, "exchanging UCX address sizes");
        goto out;
    }
    size_t total = 0;
    for (int r = 0; r < n; r++) {
        if (all64[r] > (1u << 20)) {
            st = dsr1_error(DSR1_ERR_FORMAT, "rank %d announces a %llu-byte UCX address", r,
                            (unsigned long long)all64[r]);
            goto out;
        }
        ls[r] = (size_t)all64[r];
        os[r] = total;
        cnt[r] = (int)ls[r];
        dsp[r] = (int)total;
        total += ls[r];
    }
    if (total > (size_t)1 << 30 || !(b = malloc(total + 1))) {
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory for %zu bytes of addresses", total);
        goto out;
    }
    if ((rc = MPI_Allgatherv(mine, (int)len, MPI_BYTE, b, cnt, dsp, MPI_BYTE, MPI_COMM_WORLD))) {
        st = mpi_failed(rc, "exchanging UCX addresses");
        goto out;
    }
    *buf = b;
    *lens = ls;
    *offs = os;
    b = NULL;
    ls = os = NULL;
out:
    free(all64);
    free(cnt);
    free(dsp);
    free(ls);
    free(os);
    free(b);
    return st;
}

static void worker_label(char *buf, size_t cap, int i, int ep)
{
    snprintf(buf, cap, "worker %d (stage %d, EP %d)", i, i / ep, i % ep);
}

dsr1_status dsr1_mpi_connect(dsr1_mpi *m, int workers, int pp, int timeout_ms, dsr1_comm **world)
{
    const int n = m->size, ep = pp > 0 ? workers / pp : 1;
    const int me = m->rank;
    dsr1_ucx_local *lw = NULL;
    unsigned char *wb = NULL;
    size_t *wl = NULL, *wo = NULL;
    char(*names)[64] = calloc((size_t)n, 64);
    const char **labels = calloc((size_t)n, sizeof(char *));
    const void **addrs = calloc((size_t)n, sizeof(void *));
    size_t *lens = calloc((size_t)n, sizeof(size_t));
    dsr1_comm *w = NULL;
    dsr1_status st;
    if (workers != n - 1 || pp < 1 || workers % pp) {
        st = dsr1_error(DSR1_ERR_INVALID_ARG, "%d workers in %d stages for an MPI job of %d ranks",
                        workers, pp, n);
        goto out;
    }
    if (!names || !labels || !addrs || !lens) {
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        goto out;
    }
    const void *a;
    size_t alen;
    if ((st = dsr1_ucx_local_create(&lw)) != DSR1_OK) goto out;
    dsr1_ucx_local_address(lw, &a, &alen);
    if ((st = allgather_addrs(m, a, alen, &wb, &wl, &wo)) != DSR1_OK) goto out;
    snprintf(names[0], 64, "coordinator");
    for (int r = 0; r < n; r++) {
        if (r > 0) worker_label(names[r], 64, r - 1, ep);
        labels[r] = names[r];
        addrs[r] = wb + wo[r];
        lens[r] = wl[r];
    }
    dsr1_ucx_group_params gp = {me, n, timeout_ms, "world", labels, true};
    st = dsr1_comm_ucx_connect(lw, &gp, addrs, lens, &w);
    lw = NULL;
    if (st != DSR1_OK) goto out;
    /* every endpoint wired and every rank alive before the first step */
    if ((st = dsr1_comm_barrier(w)) != DSR1_OK) goto out;
    DSR1_DEBUG("UCX world group connected: rank %d of %d", me, n);
    *world = w;
    w = NULL;
out:
    dsr1_comm_destroy(w);
    dsr1_ucx_local_destroy(lw);
    free(wb);
    free(wl);
    free(wo);
    free(names);
    free(labels);
    free(addrs);
    free(lens);
    return st;
}

#if DSR1_HAVE_NCCL
/* The group's NCCL id travels from its first rank as: i32 status | id. Then every member
 * says whether it can go on (device found, id received), so that none of them waits in
 * NCCL for a rank that has already given up. */
dsr1_status dsr1_mpi_nccl_connect(dsr1_mpi *m, int color, int key, int cuda_device, int timeout_ms,
                                  const char *name, dsr1_comm **out)
{
    (void)m;
    const char *gname = name ? name : "NCCL";
    MPI_Comm sub = MPI_COMM_NULL, node = MPI_COMM_NULL;
    int rc = MPI_Comm_split(MPI_COMM_WORLD, color >= 0 ? color : MPI_UNDEFINED, key, &sub);
    if (rc != MPI_SUCCESS) return mpi_failed(rc, "forming the NCCL groups");
    if (color < 0) {
        *out = NULL;
        return DSR1_OK;
    }
    dsr1_status st = DSR1_OK;
    int rank = 0, size = 0, local = 0, ndev = 0;
    MPI_Comm_rank(sub, &rank);
    MPI_Comm_size(sub, &size);
    if (cuda_device < 0) {
        rc = MPI_Comm_split_type(sub, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
        if (rc != MPI_SUCCESS) {
            st = mpi_failed(rc, "finding the ranks on this node");
            goto out; /* every member fails the same collective */
        }
        MPI_Comm_rank(node, &local);
        if ((st = dsr1_cuda_device_count(&ndev)) == DSR1_OK && ndev < 1)
            st = dsr1_error(DSR1_ERR_UNSUPPORTED, "no CUDA device on this node");
        if (st == DSR1_OK) cuda_device = local % ndev;
    }
    unsigned char b[4 + DSR1_NCCL_ID_BYTES] = {0};
    if (rank == 0 && st == DSR1_OK) st = dsr1_nccl_unique_id(b + 4);
    dsr1_put_le32(b, (uint32_t)st);
    if ((rc = MPI_Bcast(b, (int)sizeof(b), MPI_BYTE, 0, sub)) != MPI_SUCCESS) {
        st = mpi_failed(rc, "broadcasting the NCCL id");
        goto out;
    }
    if (st == DSR1_OK && dsr1_get_le32(b) != 0)
        st = dsr1_error(DSR1_ERR_IO, "its first rank failed (no device or no NCCL id)");
    int mine = st, worst = 0;
    if ((rc = MPI_Allreduce(&mine, &worst, 1, MPI_INT, MPI_MIN, sub)) != MPI_SUCCESS) {
        st = mpi_failed(rc, "agreeing on the NCCL group");
        goto out;
    }
    if (st != DSR1_OK) {
        st = dsr1_error_context(st, "%s group, rank %d", gname, rank);
        goto out;
    }
    if (worst != 0) {
        st =
            dsr1_error(DSR1_ERR_IO, "%s group: another member could not join (see its log)", gname);
        goto out;
    }
    if ((st = dsr1_comm_nccl_create(rank, size, b + 4, cuda_device, timeout_ms, out)) != DSR1_OK)
        st = dsr1_error_context(st, "%s group", gname);
    else
        DSR1_DEBUG("%s group: NCCL rank %d of %d on CUDA device %d", gname, rank, size,
                   cuda_device);
out:
    if (node != MPI_COMM_NULL) MPI_Comm_free(&node);
    MPI_Comm_free(&sub);
    return st;
}
#endif

static void finalize_at_exit(void)
{
    int done = 0;
    MPI_Finalized(&done);
    if (!done) MPI_Finalize();
}

void dsr1_mpi_finalize(dsr1_mpi *m, bool clean)
{
    if (!m) return;
    /* MPI_Finalize waits for every rank, and the launcher may end the job as soon as one
     * rank exits with an error: finalizing at exit lets this process print its own
     * message (the coordinator's "worker 3 refused: ...") before anyone can go. */
    if (clean) atexit(finalize_at_exit);
    free(m->hosts);
    free(m);
}
