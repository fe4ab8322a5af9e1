/* dsr1-bench-alltoall: the expert-parallel exchange of one MoE layer, our UCX group against
 * MPI_Alltoallv on the same data, in the same run.
 *
 * Run under mpirun with R ranks. For each token count T, every rank draws T tokens with
 * random hidden states (7168 f32), 8 distinct random experts of 256 and random routing
 * weights, places the experts in contiguous blocks (dsr1_placement_balanced), and builds
 * the dispatch records exactly as worker/moe_ep.c does: one record per (token, destination
 * rank owning at least one of its experts), hidden | ids (-1 where not owned) | weights,
 * grouped by destination. One round is what a MoE layer costs in communication:
 *   ours: alltoall_sizes + alltoallv (dispatch) + alltoallv (combine: one row per record)
 *   MPI:  MPI_Alltoall (record counts) + MPI_Alltoallv (dispatch) + MPI_Alltoallv (combine)
 * Each round starts after an MPI_Barrier; its latency is the slowest rank's. The two run
 * interleaved (alternating which goes first) after warm-up; medians and bests are reported,
 * and GB/s = bytes that cross between ranks in one round (whole group) / median latency.
 *
 * Before timing, one checked round of each receives into separate buffers: the dispatch
 * bytes must be identical, and the combine must bring every rank its own hidden rows back
 * in record order (the combine payload is the received hidden rows, a stand-in for the
 * experts' output that makes the result checkable).
 *
 * usage: mpirun -np R dsr1-bench-alltoall [--tokens 1,4,...] [--reps N] [--warmup N]
 *        [--budget SECONDS] [--seed S] [--json FILE] */
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "placement.h"
#include "progress.h"

#define HIDDEN  7168 /* R1's hidden size */
#define TOPK    8
#define EXPERTS 256
#define MAX_T   65536
#define REC     (sizeof(float) * (HIDDEN + 2 * TOPK))
#define ROW     (sizeof(float) * HIDDEN)

typedef struct {
    int rank, size;
    dsr1_comm *ucx;
    MPI_Datatype rec_t, row_t;
    int owner[EXPERTS];
} bench;

/* One token count's buffers. cnt/rcnt: records sent to / received from each rank. */
typedef struct {
    int T;
    float *x;                           /* [T][HIDDEN] this rank's tokens */
    int *sent_tok;                      /* [total] token of each record sent, in order */
    unsigned char *send, *recv, *csend; /* dispatch out/in, combine out */
    float *back;                        /* combine in: [total][HIDDEN] */
    size_t total, rtotal;
    size_t *sb, *rb, *csb, *crb;   /* byte counts (ours) */
    int *cnt, *rcnt, *sdsp, *rdsp; /* record counts and displacements (MPI) */
} round_data;

typedef struct {
    double ucx_med, ucx_best, mpi_med, mpi_best, ucx_disp, mpi_disp;
    double bytes;   /* off-rank payload of one round, whole group */
    double records; /* dispatch records per rank, average */
    int reps;
} result;

static void die(const bench *b, const char *what)
{
    fprintf(stderr, "dsr1-bench-alltoall: rank %d: %s: %s\n", b->rank, what, dsr1_errmsg());
    MPI_Abort(MPI_COMM_WORLD, 1);
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * UINT64_C(0x2545F4914F6CDD1D);
}

static float rng_float(uint64_t *s)
{
    return (float)(rng_next(s) >> 40) / (float)(1 << 24) * 2.0f - 1.0f;
}

/* The UCX group over all MPI ranks: addresses exchanged with MPI, as bootstrap_mpi.c does. */
static dsr1_status ucx_group(bench *b)
{
    dsr1_ucx_local *l;
    dsr1_status st = dsr1_ucx_local_create(&l);
    if (st != DSR1_OK) return st;
    const void *a;
    size_t alen;
    dsr1_ucx_local_address(l, &a, &alen);
    const int n = b->size;
    int mine = (int)alen, *lens = malloc(sizeof(int) * n), *dsp = malloc(sizeof(int) * n);
    const void **addrs = malloc(sizeof(void *) * n);
    size_t *zl = malloc(sizeof(size_t) * n);
    unsigned char *all = NULL;
    if (!lens || !dsp || !addrs || !zl) goto nomem;
    MPI_Allgather(&mine, 1, MPI_INT, lens, 1, MPI_INT, MPI_COMM_WORLD);
    int total = 0;
    for (int r = 0; r < n; r++) {
        dsp[r] = total;
        total += lens[r];
    }
    if (!(all = malloc((size_t)total))) goto nomem;
    MPI_Allgatherv(a, mine, MPI_BYTE, all, lens, dsp, MPI_BYTE, MPI_COMM_WORLD);
    for (int r = 0; r < n; r++) {
        addrs[r] = all + dsp[r];
        zl[r] = (size_t)lens[r];
    }
    dsr1_ucx_group_params gp = {b->rank, n, 120000, "bench", NULL};
    st = dsr1_comm_ucx_connect(l, &gp, addrs, zl, &b->ucx); /* owns l from here */
    l = NULL;
    if (st == DSR1_OK) st = dsr1_comm_barrier(b->ucx);
    goto out;
nomem:
    st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
out:
    dsr1_ucx_local_destroy(l);
    free(lens);
    free(dsp);
    free(addrs);
    free(zl);
    free(all);
    return st;
}

/* This rank's tokens and dispatch records for T tokens (same layout as moe_ep.c). */
static dsr1_status make_tokens(const bench *b, int T, uint64_t seed, round_data *d)
{
    const int n = b->size;
    uint64_t s = seed ^ (UINT64_C(0x9E3779B97F4A7C15) * (uint64_t)(b->rank + 1)) ^ (uint64_t)T;
    int *ids = malloc(sizeof(int) * TOPK * T);
    float *w = malloc(sizeof(float) * TOPK * T);
    d->T = T;
    d->x = malloc(ROW * T);
    d->cnt = calloc(n, sizeof(int));
    d->rcnt = calloc(n, sizeof(int));
    d->sdsp = calloc(n, sizeof(int));
    d->rdsp = calloc(n, sizeof(int));
    d->sb = calloc(n, sizeof(size_t));
    d->rb = calloc(n, sizeof(size_t));
    d->csb = calloc(n, sizeof(size_t));
    d->crb = calloc(n, sizeof(size_t));
    d->sent_tok = malloc(sizeof(int) * ((size_t)T * n));
    if (!ids || !w || !d->x || !d->cnt || !d->rcnt || !d->sdsp || !d->rdsp || !d->sb || !d->rb ||
        !d->csb || !d->crb || !d->sent_tok)
        goto nomem;
    for (size_t i = 0; i < (size_t)T * HIDDEN; i++) d->x[i] = rng_float(&s);
    for (int t = 0; t < T; t++) {
        float sum = 0;
        for (int j = 0; j < TOPK; j++) {
            int e, dup;
            do { /* distinct experts, as top-k gives */
                e = (int)(rng_next(&s) % EXPERTS);
                dup = 0;
                for (int k = 0; k < j; k++) dup |= ids[t * TOPK + k] == e;
            } while (dup);
            ids[t * TOPK + j] = e;
            sum += w[t * TOPK + j] = 0.05f + (rng_float(&s) + 1.0f);
        }
        for (int j = 0; j < TOPK; j++) w[t * TOPK + j] /= sum;
    }
    d->total = 0;
    for (int r = 0; r < n; r++)
        for (int t = 0; t < T; t++)
            for (int j = 0; j < TOPK; j++)
                if (b->owner[ids[t * TOPK + j]] == r) {
                    d->cnt[r]++;
                    d->total++;
                    break;
                }
    if (!(d->send = malloc(d->total * REC + 1)) || !(d->back = malloc(d->total * ROW + 1)))
        goto nomem;
    unsigned char *p = d->send;
    size_t ns = 0;
    for (int r = 0; r < n; r++) {
        for (int t = 0; t < T; t++) {
            int any = 0;
            for (int j = 0; j < TOPK; j++) any |= b->owner[ids[t * TOPK + j]] == r;
            if (!any) continue;
            memcpy(p, d->x + (size_t)t * HIDDEN, ROW);
            int32_t *pid = (int32_t *)(p + ROW);
            float *pw = (float *)(p + ROW + sizeof(int32_t) * TOPK);
            for (int j = 0; j < TOPK; j++) {
                const int e = ids[t * TOPK + j];
                pid[j] = b->owner[e] == r ? e : -1;
                pw[j] = w[t * TOPK + j];
            }
            p += REC;
            d->sent_tok[ns++] = t;
        }
        d->sb[r] = (size_t)d->cnt[r] * REC;
        d->crb[r] = (size_t)d->cnt[r] * ROW;
        d->sdsp[r] = r ? d->sdsp[r - 1] + d->cnt[r - 1] : 0;
    }
    free(ids);
    free(w);
    return DSR1_OK;
nomem:
    free(ids);
    free(w);
    return dsr1_error(DSR1_ERR_NOMEM, "out of memory for %d tokens", T);
}

static void free_round(round_data *d)
{
    free(d->x);
    free(d->sent_tok);
    free(d->send);
    free(d->recv);
    free(d->csend);
    free(d->back);
    free(d->sb);
    free(d->rb);
    free(d->csb);
    free(d->crb);
    free(d->cnt);
    free(d->rcnt);
    free(d->sdsp);
    free(d->rdsp);
    memset(d, 0, sizeof(*d));
}

/* One round over our UCX group into recv/back; *td = dispatch seconds, *tt = total. */
static dsr1_status ucx_round(const bench *b, round_data *d, unsigned char *recv, float *back,
                             double *td, double *tt)
{
    const double t0 = dsr1_now();
    dsr1_status st = dsr1_comm_alltoall_sizes(b->ucx, d->sb, d->rb);
    if (st != DSR1_OK) return st;
    size_t rtotal = 0;
    for (int r = 0; r < b->size; r++) {
        if (d->rb[r] % REC) return dsr1_error(DSR1_ERR_FORMAT, "rank %d sends a partial record", r);
        d->csb[r] = d->rb[r] / REC * ROW;
        rtotal += d->rb[r] / REC;
    }
    if (d->recv && rtotal != d->rtotal)
        return dsr1_error(DSR1_ERR_INTERNAL, "%zu records announced, %zu expected", rtotal,
                          d->rtotal);
    if (!d->recv) { /* the first (checked) round learns the size */
        d->rtotal = rtotal;
        if (!(d->recv = malloc(rtotal * REC + 1)) || !(d->csend = malloc(rtotal * ROW + 1)))
            return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        memset(d->csend, 0, rtotal * ROW); /* filled by the caller before it counts */
        recv = d->recv;
    }
    if ((st = dsr1_comm_alltoallv(b->ucx, d->send, d->sb, recv, d->rb)) != DSR1_OK) return st;
    const double t1 = dsr1_now();
    if ((st = dsr1_comm_alltoallv(b->ucx, d->csend, d->csb, back, d->crb)) != DSR1_OK) return st;
    *td = t1 - t0;
    *tt = dsr1_now() - t0;
    return DSR1_OK;
}

static dsr1_status mpi_round(const bench *b, round_data *d, unsigned char *recv, float *back,
                             double *td, double *tt)
{
    const double t0 = dsr1_now();
    int rc = MPI_Alltoall(d->cnt, 1, MPI_INT, d->rcnt, 1, MPI_INT, MPI_COMM_WORLD);
    size_t rtotal = 0;
    for (int r = 0; r < b->size; r++) {
        d->rdsp[r] = r ? d->rdsp[r - 1] + d->rcnt[r - 1] : 0;
        rtotal += (size_t)d->rcnt[r];
    }
    if (rc == MPI_SUCCESS && rtotal != d->rtotal)
        return dsr1_error(DSR1_ERR_INTERNAL, "MPI: %zu records announced, %zu expected", rtotal,
                          d->rtotal);
    if (rc == MPI_SUCCESS)
        rc = MPI_Alltoallv(d->send, d->cnt, d->sdsp, b->rec_t, recv, d->rcnt, d->rdsp, b->rec_t,
                           MPI_COMM_WORLD);
    const double t1 = dsr1_now();
    if (rc == MPI_SUCCESS)
        rc = MPI_Alltoallv(d->csend, d->rcnt, d->rdsp, b->row_t, back, d->cnt, d->sdsp, b->row_t,
                           MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) return dsr1_error(DSR1_ERR_IO, "MPI all-to-all failed (%d)", rc);
    *td = t1 - t0;
    *tt = dsr1_now() - t0;
    return DSR1_OK;
}

/* The combine must return this rank's own hidden rows, record by record. */
static int back_ok(const round_data *d, const float *back)
{
    for (size_t i = 0; i < d->total; i++)
        if (memcmp(back + i * HIDDEN, d->x + (size_t)d->sent_tok[i] * HIDDEN, ROW)) return 0;
    return 1;
}

/* The checked rounds: ours into d->recv/d->back, MPI into scratch; compare. Returns 1 when
 * every rank saw identical bytes. Also fills the combine payload from what arrived. */
static int checked_rounds(bench *b, round_data *d)
{
    double td, tt;
    MPI_Barrier(MPI_COMM_WORLD);
    /* the combine sends are needed before the first combine: fill them from a dispatch */
    dsr1_status st = ucx_round(b, d, NULL, d->back, &td, &tt);
    if (st != DSR1_OK) die(b, "checked round (ours)");
    int ok = 1;
    for (size_t i = 0; i < d->rtotal; i++) {
        const int32_t *id = (const int32_t *)(d->recv + i * REC + ROW);
        for (int j = 0; j < TOPK; j++)
            if (id[j] != -1 && (id[j] < 0 || id[j] >= EXPERTS || b->owner[id[j]] != b->rank))
                ok = 0; /* a record routed to a rank that owns none of its experts */
        memcpy(d->csend + i * ROW, d->recv + i * REC, ROW);
    }
    /* again, now with the real combine payload */
    if ((st = ucx_round(b, d, d->recv, d->back, &td, &tt)) != DSR1_OK)
        die(b, "checked round (ours)");
    unsigned char *recv2 = malloc(d->rtotal * REC + 1);
    float *back2 = malloc(d->total * ROW + 1);
    if (!recv2 || !back2) {
        dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        die(b, "checked round");
    }
    memset(recv2, 0xa5, d->rtotal * REC);
    memset(back2, 0xa5, d->total * ROW);
    MPI_Barrier(MPI_COMM_WORLD);
    if ((st = mpi_round(b, d, recv2, back2, &td, &tt)) != DSR1_OK) die(b, "checked round (MPI)");
    ok &= !memcmp(recv2, d->recv, d->rtotal * REC);
    ok &= !memcmp(back2, d->back, d->total * ROW);
    ok &= back_ok(d, d->back);
    free(recv2);
    free(back2);
    int all = 0;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    return all;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Timed rounds for one token count; every rank returns the same result. */
static int measure(bench *b, int T, uint64_t seed, int reps_opt, int warmup, double budget,
                   result *res)
{
    round_data d = {0};
    if (make_tokens(b, T, seed, &d) != DSR1_OK) die(b, "building the dispatch records");
    const int identical = checked_rounds(b, &d);
    double td, tt, tw[2] = {0, 0}, twmax[2];
    for (int i = 0; i < warmup; i++) {
        MPI_Barrier(MPI_COMM_WORLD);
        if (ucx_round(b, &d, d.recv, d.back, &td, &tw[0]) != DSR1_OK) die(b, "warm-up (ours)");
        MPI_Barrier(MPI_COMM_WORLD);
        if (mpi_round(b, &d, d.recv, d.back, &td, &tw[1]) != DSR1_OK) die(b, "warm-up (MPI)");
    }
    MPI_Allreduce(tw, twmax, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    int reps = reps_opt;
    if (reps <= 0) { /* as many as fit the budget, within [3, 200] */
        const double per = twmax[0] + twmax[1];
        reps = per > 0 ? (int)(budget / per) : 200;
        reps = reps < 3 ? 3 : reps > 200 ? 200 : reps;
    }
    /* per rep: ours total, ours dispatch, MPI total, MPI dispatch */
    double *t = calloc((size_t)reps * 4, sizeof(double));
    double *tm = calloc((size_t)reps * 4, sizeof(double));
    if (!t || !tm) {
        dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        die(b, "timing");
    }
    for (int i = 0; i < reps; i++) {
        for (int k = 0; k < 2; k++) { /* alternate which goes first */
            const int mpi = (k + i) % 2;
            MPI_Barrier(MPI_COMM_WORLD);
            dsr1_status st = mpi ? mpi_round(b, &d, d.recv, d.back, &td, &tt)
                                 : ucx_round(b, &d, d.recv, d.back, &td, &tt);
            if (st != DSR1_OK) die(b, mpi ? "timed round (MPI)" : "timed round (ours)");
            t[i * 4 + 2 * mpi] = tt;
            t[i * 4 + 2 * mpi + 1] = td;
        }
    }
    int ok_after = back_ok(&d, d.back), all_after = 0;
    MPI_Allreduce(&ok_after, &all_after, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(t, tm, reps * 4, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD); /* slowest rank */
    double col[4][200];
    for (int i = 0; i < reps; i++)
        for (int k = 0; k < 4; k++) col[k][i] = tm[i * 4 + k];
    res->ucx_disp = median(col[1], reps);
    res->mpi_disp = median(col[3], reps);
    res->ucx_med = median(col[0], reps); /* sorts: [0] is then the best */
    res->ucx_best = col[0][0];
    res->mpi_med = median(col[2], reps);
    res->mpi_best = col[2][0];
    res->reps = reps;
    /* off-rank payload of one round (dispatch records + combine rows), whole group */
    double mine = 0, recs = (double)d.total, sum_recs = 0;
    for (int r = 0; r < b->size; r++)
        if (r != b->rank) mine += (double)d.sb[r] + (double)d.crb[r];
    MPI_Allreduce(&mine, &res->bytes, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(&recs, &sum_recs, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    res->records = sum_recs / b->size;
    free(t);
    free(tm);
    free_round(&d);
    return identical && all_after;
}

static int parse_tokens(const char *s, int *out, int cap)
{
    int n = 0;
    while (*s && n < cap) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > MAX_T || (*end && *end != ',')) return -1;
        out[n++] = (int)v;
        s = *end ? end + 1 : end;
    }
    return *s ? -1 : n;
}

int main(int argc, char **argv)
{
    bench b = {0};
    int tokens[32] = {1, 4, 16, 64, 256, 1024, 4096}, nt = 7, reps = 0, warmup = 2;
    double budget = 2.0;
    uint64_t seed = 1;
    const char *json_path = NULL;
    static const struct option opts[] = {
        {"tokens", required_argument, 0, 't'}, {"reps", required_argument, 0, 'r'},
        {"warmup", required_argument, 0, 'w'}, {"budget", required_argument, 0, 'b'},
        {"seed", required_argument, 0, 's'},   {"json", required_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    int c, bad = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 't':
            bad |= (nt = parse_tokens(optarg, tokens, 32)) < 1;
            break;
        case 'r':
            bad |= (reps = atoi(optarg)) < 1 || reps > 200;
            break;
        case 'w':
            bad |= (warmup = atoi(optarg)) < 0 || warmup > 100;
            break;
        case 'b':
            bad |= !((budget = atof(optarg)) > 0);
            break;
        case 's':
            seed = strtoull(optarg, NULL, 10);
            break;
        case 'j':
            json_path = optarg;
            break;
        default:
            bad = 1;
        }
    }
    if (bad || optind != argc) {
        fprintf(stderr, "usage: mpirun -np R dsr1-bench-alltoall [--tokens 1,4,16,...] [--reps N "
                        "(1-200)] [--warmup N] [--budget SECONDS per size] [--seed S] "
                        "[--json FILE]\n");
        return 2;
    }
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &b.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &b.size);
    if (b.size < 2) {
        dsr1_error(DSR1_ERR_INVALID_ARG, "run it under mpirun with 2 or more ranks");
        die(&b, "start");
    }
    dsr1_placement_balanced(EXPERTS, b.size, b.owner);
    MPI_Type_contiguous((int)REC, MPI_BYTE, &b.rec_t);
    MPI_Type_contiguous((int)ROW, MPI_BYTE, &b.row_t);
    MPI_Type_commit(&b.rec_t);
    MPI_Type_commit(&b.row_t);
    if (ucx_group(&b) != DSR1_OK) die(&b, "connecting the UCX group");

    json_t *rows = json_array();
    int all_ok = 1;
    if (b.rank == 0) {
        printf("all-to-all, %d ranks: dispatch (sizes + records of %zu B) + combine (rows of %zu "
               "B), latency = slowest rank\n",
               b.size, REC, ROW);
        printf("%6s %9s %9s | %11s %11s %8s | %11s %11s %8s | %7s %s\n", "tokens", "rec/rank",
               "MB/round", "ours med us", "best us", "GB/s", "MPI med us", "best us", "GB/s",
               "ours/MPI", "same bytes");
    }
    for (int i = 0; i < nt; i++) {
        result r;
        const int same = measure(&b, tokens[i], seed, reps, warmup, budget, &r);
        all_ok &= same;
        if (b.rank) continue;
        const double gu = r.bytes / r.ucx_med / 1e9, gm = r.bytes / r.mpi_med / 1e9;
        printf("%6d %9.1f %9.2f | %11.1f %11.1f %8.3f | %11.1f %11.1f %8.3f | %7.2f %s\n",
               tokens[i], r.records, r.bytes / 1e6, r.ucx_med * 1e6, r.ucx_best * 1e6, gu,
               r.mpi_med * 1e6, r.mpi_best * 1e6, gm, r.ucx_med / r.mpi_med, same ? "yes" : "NO");
        fflush(stdout);
        json_array_append_new(
            rows, json_pack("{si,sf,sf,si,s{sf,sf,sf,sf},s{sf,sf,sf,sf},sf,sb}", "tokens",
                            tokens[i], "records_per_rank", r.records, "payload_bytes", r.bytes,
                            "reps", r.reps, "ours", "median_us", r.ucx_med * 1e6, "best_us",
                            r.ucx_best * 1e6, "dispatch_median_us", r.ucx_disp * 1e6, "gbps", gu,
                            "mpi", "median_us", r.mpi_med * 1e6, "best_us", r.mpi_best * 1e6,
                            "dispatch_median_us", r.mpi_disp * 1e6, "gbps", gm, "ratio_ours_mpi",
                            r.ucx_med / r.mpi_med, "identical", same));
    }
    if (b.rank == 0 && json_path) {
        const char *tls = getenv("UCX_TLS");
        json_t *doc = json_pack("{si,si,si,si,si,si,ss,so}", "ranks", b.size, "hidden", HIDDEN,
                                "topk", TOPK, "experts", EXPERTS, "record_bytes", (int)REC,
                                "row_bytes", (int)ROW, "ucx_tls", tls ? tls : "", "rows", rows);
        rows = NULL;
        if (!doc || json_dump_file(doc, json_path, JSON_INDENT(2)) != 0) {
            fprintf(stderr, "dsr1-bench-alltoall: cannot write %s\n", json_path);
            all_ok = 0;
        }
        json_decref(doc);
    }
    json_decref(rows);
    dsr1_comm_barrier(b.ucx);
    dsr1_comm_destroy(b.ucx);
    MPI_Type_free(&b.rec_t);
    MPI_Type_free(&b.row_t);
    MPI_Finalize();
    if (!all_ok && b.rank == 0) fprintf(stderr, "dsr1-bench-alltoall: received bytes differ\n");
    return all_ok ? 0 : 1;
}
