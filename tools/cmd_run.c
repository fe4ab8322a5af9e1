/* `dsr1 run`: one prompt through the engine in this process — a prefill pass over the
 * prompt, then either forced ids fed one at a time through the decode path (teacher
 * forcing, for conformance against golden logits) or greedy generation. Optionally dumps
 * every logit row as raw little-endian float32 (the layout check_logits.py reads). */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bootstrap_mpi.h"
#include "args.h"
#include "ckpt.h"
#include "cluster.h"
#include "commands.h"
#include "forward.h"
#include "log.h"
#include "progress.h"

static void run_usage(FILE *f)
{
    fprintf(f,
            "usage: dsr1 run --model DIR --prompt-ids IDS [options]\n\n"
            "Prefill the prompt, then teacher-force --force-ids through the decode path, or\n"
            "generate --max-tokens greedy tokens. Prints the generated (argmax) ids.\n\n"
            "  --model DIR          checkpoint directory (HF layout: config.json, shards, index)\n"
            "  --prompt-ids IDS     comma-separated token ids, e.g. 0,19923,14\n"
            "  --force-ids IDS      feed these ids one at a time after the prompt (teacher\n"
            "                       forcing); the printed ids are the model's argmax at each\n"
            "                       step\n"
            "  --max-tokens N       greedy tokens to generate without --force-ids (default 16)\n"
            "  --dump-logits FILE   write float32 logit rows: one per prompt position, then one\n"
            "                       per token fed through the decode path\n"
            "  --dummy-weights      random weights made in memory from the config alone (--model\n"
            "                       may then be a directory holding only config.json, or the\n"
            "                       config file itself); for benchmarking real shapes\n"
            "  --seed S             seed of --dummy-weights (default 1)\n"
            "  --layers N           with --dummy-weights: keep only the first N layers\n"
            "  --workers N          run N workers as threads of this process (embedded cluster:\n"
            "                       expert parallelism over an in-process transport)\n"
            "  --pp P               pipeline stages among the workers (default 1; N %% P == 0)\n"
            "  --transport NAME     between the embedded workers: inproc (default) or ucx\n"
            "                       (UCX over loopback)\n"
            "  --mpi                coordinate worker processes of an MPI job (implied when\n"
            "                       started by mpirun/srun with more than one rank):\n"
            "                       mpirun -np 1 dsr1 run ... : -np N dsr1-worker --model DIR\n"
            "  --timeout-ms T       give up on a silent or lost worker after T ms (default\n"
            "                       60000)\n"
            "  --expert-replicas R  R copies of every routed expert in each stage, on different\n"
            "                       workers: with --transport ucx or --mpi, losing a worker\n"
            "                       then costs its attention rank, not the run (default 1)\n"
            "  --threads N          worker threads (default: DSR1_THREADS or all cores)\n"
            "  --precision MODE     exact (default: float32, DeepSeek's reference logits) or\n"
            "                       fast (bf16 products, docs/kernels.md: --kernels bf16-tiles)\n"
            "  --kernels NAME       kernel variant: auto (default: the fastest this CPU runs),\n"
            "                       portable, avx512, bf16-tiles (docs/kernels.md)\n"
            "  -h, --help           this text\n");
}

/* Under mpirun without recovery (its default), a rank that dies makes mpirun SIGTERM every
 * other rank at once and SIGKILL them a second later. Dying on that SIGTERM races the
 * grid's own report of the loss, the one line that names the lost worker: so in an MPI job
 * SIGTERM gives the run TERM_GRACE_MS to end with its reason (its error path exits the
 * process), then stops it with status 128 + SIGTERM. Blocked before MPI and UCX start
 * their threads, which inherit the mask: only this thread takes the signal. */
enum { TERM_GRACE_MS = 500 };

static void *term_grace(void *set)
{
    int sig;
    if (sigwait(set, &sig) != 0) return NULL;
    DSR1_WARN("run: %s: stopping within %d ms", strsignal(sig), TERM_GRACE_MS);
    struct timespec ts = {0, TERM_GRACE_MS * 1000000L};
    nanosleep(&ts, NULL);
    fflush(stdout);
    fprintf(stderr, "dsr1 run: stopped by %s\n", strsignal(sig));
    _exit(128 + sig);
}

static void term_grace_start(void)
{
    static sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    pthread_t t;
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0) return;
    if (pthread_create(&t, NULL, term_grace, &set) != 0) {
        pthread_sigmask(SIG_UNBLOCK, &set, NULL);
        return;
    }
    pthread_detach(t);
}

static int32_t argmax(const float *x, int n)
{
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static dsr1_status write_rows(FILE *f, const float *rows, size_t n, const char *path)
{
    if (f && fwrite(rows, sizeof(float), n, f) != n)
        return dsr1_error(DSR1_ERR_IO, "writing %s: %s", path, strerror(errno));
    return DSR1_OK;
}

/* After a step failed with st: whether to run it again — the grid lost workers and went
 * on without them (DSR1_ERR_LOST), and the run's sequence (slot 0: attention rank 0)
 * still has its lane; its cache rows are rewritten alike. */
static bool retry_lost(dsr1_cluster *cl, dsr1_status st)
{
    if (st != DSR1_ERR_LOST) return false;
    dsr1_grid_health h;
    bool alive[1024] = {0};
    if (dsr1_cluster_workers(cl) > 1024 * 1024) return false;
    dsr1_cluster_membership(cl, &h, h.lanes <= 1024 ? alive : NULL);
    if (!alive[0]) return false;
    fprintf(stderr, "dsr1 run: %s; retrying\n", dsr1_errmsg());
    return true;
}

/* Teacher-forced decode of `force` on a pipelined grid with up to `depth` steps in flight;
 * writes each row to df and prints each argmax as the sequential loop does. *done
 * receives the number of tokens fed. */
static dsr1_status forced_pipelined(dsr1_cluster *cl, int np, const int32_t *force, int nf,
                                    int vocab, int depth, FILE *df, const char *dump, int *done)
{
    dsr1_status st = DSR1_OK;
    float *rows = malloc(sizeof(float) * (size_t)vocab * (size_t)depth);
    dsr1_seq_step *ss = malloc(sizeof(*ss) * (size_t)depth);
    dsr1_batch *bb = malloc(sizeof(*bb) * (size_t)depth);
    uint64_t *ids = malloc(sizeof(*ids) * (size_t)depth);
    if (!rows || !ss || !bb || !ids) st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    int sent = 0, got = 0;
    while (st == DSR1_OK && got < nf) {
        while (sent < nf && sent - got < depth && st == DSR1_OK) {
            const int k = sent % depth;
            ss[k] = (dsr1_seq_step){0, np + sent, 1, force + sent, DSR1_LOGITS_LAST};
            bb[k] = (dsr1_batch){1, &ss[k], rows + (size_t)k * vocab};
            st = dsr1_cluster_submit(cl, &bb[k], &ids[k]);
            sent++;
        }
        const int k = got % depth;
        if (st == DSR1_OK) st = dsr1_cluster_wait(cl, ids[k]);
        if (retry_lost(cl, st)) { /* the steps in flight were dropped: from `got` again */
            sent = got;
            st = DSR1_OK;
            continue;
        }
        if (st != DSR1_OK) break;
        const float *r = rows + (size_t)k * vocab;
        if ((st = write_rows(df, r, (size_t)vocab * (df ? 1 : 0), dump)) != DSR1_OK) break;
        printf(",%d", argmax(r, vocab));
        got++;
    }
    *done = got;
    free(rows);
    free(ss);
    free(bb);
    free(ids);
    return st;
}

/* One step on this process's engine or on the embedded worker grid. */
static dsr1_status run_step(dsr1_engine *eng, dsr1_cluster *cl, const dsr1_batch *b)
{
    if (!cl) return dsr1_engine_forward(eng, b);
    dsr1_status st;
    while (retry_lost(cl, st = dsr1_cluster_step(cl, b))) {
    }
    return st;
}

int dsr1_cmd_run(int argc, char **argv)
{
    // clang-format off
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},       {"prompt-ids", required_argument, 0, 'p'},
        {"force-ids", required_argument, 0, 'f'},   {"max-tokens", required_argument, 0, 'n'},
        {"dump-logits", required_argument, 0, 'd'}, {"threads", required_argument, 0, 't'},
        {"kernels", required_argument, 0, 'k'},     {"help", no_argument, 0, 'h'},
        {"dummy-weights", no_argument, 0, 'D'},     {"seed", required_argument, 0, 's'},
        {"layers", required_argument, 0, 'L'},      {"workers", required_argument, 0, 'W'},
        {"pp", required_argument, 0, 'P'},          {"transport", required_argument, 0, 'T'},
        {"mpi", no_argument, 0, 'M'},               {"timeout-ms", required_argument, 0, 'O'},
        {"expert-replicas", required_argument, 0, 'R'},
        {"precision", required_argument, 0, 'X'},
        {0, 0, 0, 0}};
    // clang-format on
    const char *model = NULL, *prompt_s = NULL, *force_s = NULL, *dump = NULL, *kname = NULL;
    const char *precision = NULL;
    int max_tokens = 16, threads = 0, dummy = 0, layers = 0, workers = 0, pp = 1, c;
    int transport = DSR1_TRANSPORT_INPROC, mpi = dsr1_mpi_launched_size() > 1, timeout_ms = 0;
    int replicas = 1;
    uint64_t seed = 1;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case 'p':
            prompt_s = optarg;
            break;
        case 'f':
            force_s = optarg;
            break;
        case 'd':
            dump = optarg;
            break;
        case 'k':
            kname = optarg;
            break;
        case 'X':
            precision = optarg;
            break;
        case 'D':
            dummy = 1;
            break;
        case 'M':
            mpi = 1;
            break;
        case 'T':
            if (!strcmp(optarg, "inproc") || !strcmp(optarg, "ucx")) {
                transport = optarg[0] == 'u' ? DSR1_TRANSPORT_UCX : DSR1_TRANSPORT_INPROC;
                break;
            }
            fprintf(stderr, "dsr1 run: --transport: '%s' is not inproc or ucx\n", optarg);
            return 2;
        case 's':
            if (dsr1_arg_u64("dsr1 run", "--seed", optarg, &seed)) return 2;
            break;
        case 'n':
        case 't':
        case 'W':
        case 'P':
        case 'O':
        case 'R':
        case 'L': {
            const char *flag = c == 'n'   ? "--max-tokens"
                               : c == 't' ? "--threads"
                               : c == 'W' ? "--workers"
                               : c == 'P' ? "--pp"
                               : c == 'O' ? "--timeout-ms"
                               : c == 'R' ? "--expert-replicas"
                                          : "--layers";
            long v;
            if (dsr1_arg_long("dsr1 run", flag, optarg, c == 'n' ? 0 : 1, 1000000, &v)) return 2;
            if (c == 'n')
                max_tokens = (int)v;
            else if (c == 't')
                threads = (int)v;
            else if (c == 'W')
                workers = (int)v;
            else if (c == 'P')
                pp = (int)v;
            else if (c == 'O')
                timeout_ms = (int)v;
            else if (c == 'R')
                replicas = (int)v;
            else
                layers = (int)v;
            break;
        }
        case 'h':
            run_usage(stdout);
            return 0;
        default:
            run_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "dsr1 run: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (layers && !dummy) {
        fprintf(stderr, "dsr1 run: --layers needs --dummy-weights\n");
        return 2;
    }
    if (dsr1_arg_precision("dsr1 run", precision, &kname)) return 2;
    if (!model || !prompt_s) {
        fprintf(stderr, "dsr1 run: --model and --prompt-ids are required\n\n");
        run_usage(stderr);
        return 2;
    }
    int32_t *prompt = NULL, *force = NULL;
    size_t np_ = 0, nf_ = 0;
    if (dsr1_arg_ids("dsr1 run", "--prompt-ids", prompt_s, &prompt, &np_)) return 2;
    if (force_s && dsr1_arg_ids("dsr1 run", "--force-ids", force_s, &force, &nf_)) {
        free(prompt);
        return 2;
    }
    if (np_ == 0 || np_ > INT32_MAX / 2 || nf_ > INT32_MAX / 2 || (force_s && nf_ == 0)) {
        fprintf(stderr, "dsr1 run: %s is empty or too long\n",
                np_ == 0 || np_ > INT32_MAX / 2 ? "--prompt-ids" : "--force-ids");
        free(prompt);
        free(force);
        return 2;
    }
    const int np = (int)np_, nf = (int)nf_;
    const dsr1_kernels *kern = dsr1_kernels_select(kname);
    if (!kern) {
        fprintf(stderr,
                "dsr1 run: --kernels: '%s' is unknown or not supported by this CPU "
                "(auto, portable, avx512, bf16-tiles)\n",
                kname);
        free(prompt);
        free(force);
        return 2;
    }
    const int n_decode = force ? nf : max_tokens;

    int rc = 1;
    dsr1_ckpt *ck = NULL;
    dsr1_weights *w = NULL;
    dsr1_pool *pool = NULL;
    dsr1_engine *eng = NULL;
    dsr1_cluster *cl = NULL;
    float *logits = NULL;
    FILE *df = NULL;
    dsr1_status st;
    dsr1_model_config dc;
    const dsr1_model_config *cfg;
    if (dummy) {
        if ((st = dsr1_model_config_load(model, &dc)) != DSR1_OK) goto fail;
        dsr1_model_config_keep_layers(&dc, layers);
        cfg = &dc;
    } else {
        if ((st = dsr1_ckpt_open(model, &ck)) != DSR1_OK) goto fail;
        cfg = dsr1_ckpt_config(ck);
    }
    const int vocab = cfg->vocab_size;
    if (mpi) {
        transport = DSR1_TRANSPORT_MPI;
        term_grace_start();
    }
    if (workers > 0 || mpi) {
        dsr1_cluster_params cp = {ck,      dummy ? cfg : NULL, seed,       workers,  pp, kern,
                                  threads, 1,                  np + n_decode, timeout_ms, transport};
        cp.replicas = replicas;
        if ((st = dsr1_cluster_create(&cp, &cl)) != DSR1_OK) goto fail;
    } else {
        if (pp != 1) {
            fprintf(stderr, "dsr1 run: --pp needs --workers\n");
            rc = 2;
            goto out;
        }
        dsr1_slice all = dsr1_slice_all(cfg);
        st = dummy ? dsr1_weights_dummy(cfg, &all, seed, &w) : dsr1_weights_load(ck, &all, &w);
        if (st != DSR1_OK) goto fail;
        if ((st = dsr1_pool_create(threads, &pool)) != DSR1_OK) goto fail;
        if ((st = dsr1_engine_create(w, kern, pool, 1, np + n_decode, &eng)) != DSR1_OK) goto fail;
    }
    if (!(logits = malloc(sizeof(float) * (size_t)vocab * np))) {
        st = dsr1_error(DSR1_ERR_NOMEM, "out of memory for %d logit rows", np);
        goto fail;
    }
    if (dump && !(df = fopen(dump, "wb"))) {
        fprintf(stderr, "dsr1 run: cannot write %s: %s\n", dump, strerror(errno));
        goto out;
    }
    if (cl)
        DSR1_INFO("run: %d prompt tokens, %d %s tokens, kernels %s, %d workers, %d stage(s)", np,
                  n_decode, force ? "forced" : "generated", kern->name, dsr1_cluster_workers(cl),
                  pp);
    else
        DSR1_INFO("run: %d prompt tokens, %d %s tokens, kernels %s, %d threads", np, n_decode,
                  force ? "forced" : "generated", kern->name, dsr1_pool_size(pool));

    double t0 = dsr1_now();
    dsr1_seq_step step = {0, 0, np, prompt, df ? DSR1_LOGITS_ALL : DSR1_LOGITS_LAST};
    dsr1_batch batch = {1, &step, logits};
    if ((st = run_step(eng, cl, &batch)) != DSR1_OK) goto fail;
    double t_prefill = dsr1_now() - t0;
    if ((st = write_rows(df, logits, (size_t)vocab * (df ? np : 0), dump)) != DSR1_OK) goto fail;
    int32_t next = argmax(logits + (size_t)vocab * (df ? np - 1 : 0), vocab);
    printf("%d", next);
    t0 = dsr1_now();
    int nd = 0;
    if (cl && force && pp > 1) {
        /* teacher forcing on a pipeline: every token is known in advance, so decode steps
         * go in flight DEPTH at a time and the stages overlap */
        if ((st = forced_pipelined(cl, np, force, nf, vocab, 2 * pp, df, dump, &nd))) goto fail;
    }
    for (int i = nd; i < n_decode - (force ? 0 : 1); i++) {
        int32_t tok = force ? force[i] : next;
        dsr1_seq_step ds = {0, np + i, 1, &tok, DSR1_LOGITS_LAST};
        dsr1_batch db = {1, &ds, logits};
        if ((st = run_step(eng, cl, &db)) != DSR1_OK) goto fail;
        nd++;
        if ((st = write_rows(df, logits, (size_t)vocab * (df ? 1 : 0), dump)) != DSR1_OK) goto fail;
        next = argmax(logits, vocab);
        printf(",%d", next);
        if (!force && next == cfg->eos_token_id) break;
    }
    printf("\n");
    double t_decode = dsr1_now() - t0;
    char reads[80] = "";
    if (w) /* the bandwidth roofline of decode: bench/e2e.sh divides by it */
        snprintf(reads, sizeof(reads), "; decode reads %.3f GB of weights per token",
                 dsr1_weights_active_bytes(w) / 1e9);
    DSR1_INFO("run: prefill %d tokens in %.3f s (%.1f tok/s); decode %d tokens in %.3f s "
              "(%.2f tok/s)%s",
              np, t_prefill, np / t_prefill, nd, t_decode, nd > 0 ? nd / t_decode : 0.0, reads);
    if (df && fclose(df) != 0) {
        df = NULL;
        fprintf(stderr, "dsr1 run: writing %s: %s\n", dump, strerror(errno));
        goto out;
    }
    df = NULL;
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "dsr1 run: %s\n", dsr1_errmsg());
out:
    if (df) fclose(df);
    free(logits);
    dsr1_cluster_destroy(cl);
    dsr1_engine_destroy(eng);
    dsr1_pool_destroy(pool);
    dsr1_weights_destroy(w);
    dsr1_ckpt_close(ck);
    free(prompt);
    free(force);
    return rc;
}
