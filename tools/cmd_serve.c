/* `dsr1 serve`: the gRPC server and the OpenAI-compatible HTTP API (docs/api.md) in front of
 * one continuous-batching scheduler, running steps on the engine in this process, on an
 * embedded worker grid, or on the worker processes of an MPI job (dsr1-coordinator runs
 * this command as MPI rank 0).
 *
 * Prints "HTTP API on http://HOST:PORT" (unless --http-port 0) and then "serving on
 * HOST:PORT" on stdout once it accepts calls (scripts wait for that line; with --port 0 it
 * names the port picked). SIGINT or SIGTERM: stops accepting, aborts the running requests
 * (clients get their final ABORT message or chunk) and exits 0.
 *
 * Under systemd (Type=notify, deploy/systemd/) it says how it is doing through sd_notify:
 * STATUS=loading until it serves, then READY=1 and STATUS=serving (or "degraded: N of M
 * workers live" while a grid runs on fewer workers), WATCHDOG=1 every half of
 * $WATCHDOG_USEC, and STOPPING=1 at SIGINT/SIGTERM. As MPI rank 0 its READY=1 carries
 * MAINPID= (itself), so that systemd signals the coordinator rather than mpirun.
 *
 * Batch jobs (gRPC's and OpenAI's Batches API) live in the durable batch store in the state
 * directory (--state-dir): opened before the model loads (a directory that another server
 * holds, or a store that is not ours, fails at once), closed after both frontends stopped
 * taking new work and before the scheduler goes; unfinished batches resume on the next
 * start. */
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "args.h"
#include "backend.h"
#include "batches.h"
#include "bootstrap_mpi.h"
#include "commands.h"
#include "http_server.h"
#include "log.h"
#include "sdnotify.h"
#include "server.h"

#define CMD "dsr1 serve"

static void serve_usage(FILE *f)
{
    fprintf(
        f, "usage: dsr1 serve --model DIR [options]\n\n"
           "Serve the model over gRPC (proto/dsr1.proto, docs/api.md): streaming generation,\n"
           "batch jobs, and grpc.health.v1; and over the OpenAI-compatible HTTP API\n"
           "(/v1/chat/completions, /v1/completions, /v1/models, /health, /metrics).\n"
           "Prints \"serving on HOST:PORT\" once ready; SIGINT/SIGTERM shut it down gracefully.\n\n"
           "  --model DIR             checkpoint directory (config.json, shards, tokenizer)\n"
           "  --host ADDR             interface to listen on, both APIs (default 127.0.0.1)\n"
           "  --port N                gRPC port (default 50051; 0: any free port)\n"
           "  --http-port N           HTTP API port (default 8000, or any free port when --port\n"
           "                          is 0; 0: no HTTP API)\n"
           "  --http-max-body-bytes N largest HTTP request body; beyond: 413 (default 4194304)\n"
           "  --http-stream-bytes N   unread bytes of one streamed HTTP response; beyond, its\n"
           "                          requests are aborted (default 4194304)\n"
           "  --api-key KEY           require 'authorization: Bearer KEY' on every RPC and\n"
           "                          HTTP endpoint but health and /metrics (default: env\n"
           "                          DSR1_API_KEY; none when unset)\n"
           "  --workers N             run N workers as threads of this process\n"
           "  --pp P                  pipeline stages among the workers (default 1)\n"
           "  --transport NAME        between embedded workers: inproc (default) or ucx; or\n"
           "                          join: --workers N worker processes join over TCP at\n"
           "                          --join-listen (dsr1-worker --join), no launcher\n"
           "  --join-listen HOST:PORT where worker processes may join (dsr1-worker --join\n"
           "                          HOST:PORT): replacements for lost workers of a ucx or\n"
           "                          mpi grid, or every worker with --transport join\n"
           "  --expert-replicas R     R copies of every routed expert in each stage (default\n"
           "                          1), on different workers: with --transport ucx or\n"
           "                          --mpi a grid that loses a worker serves on (degraded)\n"
           "                          while every expert keeps a live copy\n"
           "  --mpi                   coordinate the worker processes of an MPI job (implied\n"
           "                          when started by mpirun/srun with more than one rank)\n"
           "  --threads N             CPU threads (default: DSR1_THREADS or all cores)\n"
           "  --precision MODE        exact (default: DeepSeek's reference logits in float32) or\n"
           "                          fast (bf16 products: --kernels bf16-tiles; give the\n"
           "                          workers of an MPI or joined grid the same)\n"
           "  --kernels NAME          auto (default), portable, avx512, bf16-tiles\n"
           "  --dummy-weights         random weights from the config alone (--seed S,\n"
           "                          --layers N keeps the first N layers)\n"
           "  --kv-tokens N           KV cache per attention rank, in tokens (default 65536,\n"
           "                          capped at 8 GiB)\n"
           "  --block-tokens B        tokens per cache block (default 32)\n"
           "  --step-tokens N         tokens of one step: decodes + prefill chunks (default 512)\n"
           "  --steps-in-flight N     steps sent before the oldest returns, on a pipeline of\n"
           "                          several stages (default: --pp; 1: one at a time)\n"
           "  --max-running N         requests decoding together (default 32)\n"
           "  --max-queued N          waiting requests; beyond, Generate is RESOURCE_EXHAUSTED\n"
           "                          (default 1024)\n"
           "  --state-dir DIR         batch jobs and files are kept here and survive restarts\n"
           "                          (default $XDG_STATE_HOME/dsr1, else ~/.local/state/dsr1;\n"
           "                          one server per directory; 'none': no batch jobs)\n"
           "  --batch-window N        batch items in the scheduler at once (default: twice\n"
           "                          --max-running, at most half of --max-queued)\n"
           "  --batch-window-per-batch N  items of one batch in the scheduler at once (default:\n"
           "                          --batch-window; a batch's max_running may lower it).\n"
           "                          Batches run by priority (higher first), then in\n"
           "                          submission order\n"
           "  --batch-retention-days D  finished batches and files are deleted D days after\n"
           "                          they finished / were uploaded (default 30; 0: never)\n"
           "  --max-batch-items N     items of one batch (default 1000000)\n"
           "  --max-message-bytes N   largest request message (default 4194304)\n"
           "  --max-context N         prompt + max_tokens (default and most: the model's\n"
           "                          max_position_embeddings or the KV cache of a rank,\n"
           "                          whichever is smaller)\n"
           "  --no-prefix-cache       do not reuse cached prompt prefixes\n"
           "  --timeout-ms T          give up on a silent worker after T ms (default 60000)\n"
           "  -h, --help              this text\n");
}

/* Integer flags: option value FLAG_BASE + index into this table. */
enum { FLAG_BASE = 1000 };
enum {
    F_PORT,
    F_WORKERS,
    F_PP,
    F_THREADS,
    F_LAYERS,
    F_TIMEOUT,
    F_KV_TOKENS,
    F_BLOCK_TOKENS,
    F_STEP_TOKENS,
    F_IN_FLIGHT,
    F_MAX_RUNNING,
    F_MAX_QUEUED,
    F_MAX_BATCH_ITEMS,
    F_MAX_MESSAGE_BYTES,
    F_MAX_CONTEXT,
    F_HTTP_PORT,
    F_HTTP_BODY,
    F_HTTP_STREAM,
    F_BATCH_WINDOW,
    F_BATCH_WINDOW_PER_BATCH,
    F_RETENTION_DAYS,
    F_REPLICAS,
    N_INT_FLAGS
};

typedef struct {
    const char *name;
    long lo, hi, value;
} int_flag;

typedef struct {
    const char *model, *host, *api_key, *kernels, *state_dir, *join_listen, *precision;
    bool dummy, mpi, prefix_cache;
    int transport;
    uint64_t seed;
    int_flag n[N_INT_FLAGS];
} serve_opts;

static const serve_opts defaults = {
    .host = "127.0.0.1",
    .prefix_cache = true,
    .seed = 1,
    .n =
        {
            [F_PORT] = {"port", 0, 65535, DSR1_SERVER_DEFAULT_PORT},
            [F_WORKERS] = {"workers", 1, 1000000, 0},
            [F_PP] = {"pp", 1, 1000000, 1},
            [F_THREADS] = {"threads", 1, 4096, 0},
            [F_LAYERS] = {"layers", 1, 1000000, 0},
            [F_TIMEOUT] = {"timeout-ms", 1, 1000000000, 0},
            [F_KV_TOKENS] = {"kv-tokens", 1, 1l << 40, 0},
            [F_BLOCK_TOKENS] = {"block-tokens", 1, 65536, 32},
            [F_STEP_TOKENS] = {"step-tokens", 1, 1 << 20, 512},
            [F_IN_FLIGHT] = {"steps-in-flight", 1, 64, 0},
            [F_MAX_RUNNING] = {"max-running", 1, 1 << 20, 32},
            [F_MAX_QUEUED] = {"max-queued", 1, 1 << 24, 1024},
            [F_MAX_BATCH_ITEMS] = {"max-batch-items", 1, 10000000, 1000000},
            [F_MAX_MESSAGE_BYTES] = {"max-message-bytes", 1024, 1 << 30,
                                     DSR1_SERVER_DEFAULT_MSG_BYTES},
            [F_MAX_CONTEXT] = {"max-context", 1, 1 << 30, 0},
            [F_HTTP_PORT] = {"http-port", 0, 65535, -1}, /* -1: not given */
            [F_HTTP_BODY] = {"http-max-body-bytes", 1024, 1 << 30, DSR1_HTTP_DEFAULT_BODY_BYTES},
            [F_HTTP_STREAM] = {"http-stream-bytes", 4096, 1 << 30, DSR1_HTTP_DEFAULT_SSE_BYTES},
            [F_BATCH_WINDOW] = {"batch-window", 1, 1 << 20, 0},
            [F_BATCH_WINDOW_PER_BATCH] = {"batch-window-per-batch", 1, 1 << 20, 0},
            [F_RETENTION_DAYS] = {"batch-retention-days", 0, 100000, 30},
            [F_REPLICAS] = {"expert-replicas", 1, 64, 1},
        },
};

/* Parses argv into o; returns -1 to exit 0 (help), 2 on a usage error, else 0. */
static int parse(int argc, char **argv, serve_opts *o)
{
    struct option opts[N_INT_FLAGS + 14] = {
        {"model", required_argument, 0, 'm'},     {"host", required_argument, 0, 'H'},
        {"api-key", required_argument, 0, 'a'},   {"kernels", required_argument, 0, 'k'},
        {"transport", required_argument, 0, 'T'}, {"mpi", no_argument, 0, 'M'},
        {"dummy-weights", no_argument, 0, 'D'},   {"seed", required_argument, 0, 's'},
        {"no-prefix-cache", no_argument, 0, 'P'}, {"help", no_argument, 0, 'h'},
        {"state-dir", required_argument, 0, 'S'}, {"join-listen", required_argument, 0, 'J'},
        {"precision", required_argument, 0, 'X'},
    };
    for (int i = 0; i < N_INT_FLAGS; i++)
        opts[13 + i] = (struct option){o->n[i].name, required_argument, 0, FLAG_BASE + i};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c >= FLAG_BASE && c < FLAG_BASE + N_INT_FLAGS) {
            int_flag *f = &o->n[c - FLAG_BASE];
            char flag[64];
            snprintf(flag, sizeof(flag), "--%s", f->name);
            if (dsr1_arg_long(CMD, flag, optarg, f->lo, f->hi, &f->value)) return 2;
            continue;
        }
        switch (c) {
        case 'm':
            o->model = optarg;
            break;
        case 'H':
            o->host = optarg;
            break;
        case 'a':
            o->api_key = optarg;
            break;
        case 'k':
            o->kernels = optarg;
            break;
        case 'S':
            if (!*optarg) {
                fprintf(stderr, CMD ": --state-dir: empty (a directory, or 'none')\n");
                return 2;
            }
            o->state_dir = optarg;
            break;
        case 'M':
            o->mpi = true;
            break;
        case 'D':
            o->dummy = true;
            break;
        case 'P':
            o->prefix_cache = false;
            break;
        case 's':
            if (dsr1_arg_u64(CMD, "--seed", optarg, &o->seed)) return 2;
            break;
        case 'T':
            if (strcmp(optarg, "inproc") && strcmp(optarg, "ucx") && strcmp(optarg, "join")) {
                fprintf(stderr, CMD ": --transport: '%s' is not inproc, ucx or join\n", optarg);
                return 2;
            }
            o->transport = optarg[0] == 'u'   ? DSR1_TRANSPORT_UCX
                           : optarg[0] == 'j' ? DSR1_TRANSPORT_JOIN
                                              : DSR1_TRANSPORT_INPROC;
            break;
        case 'J':
            o->join_listen = optarg;
            break;
        case 'X':
            o->precision = optarg;
            break;
        case 'h':
            serve_usage(stdout);
            return -1;
        default:
            serve_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, CMD ": unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!o->model) {
        fprintf(stderr, CMD ": --model DIR is required (see --help)\n");
        return 2;
    }
    if (!o->api_key) o->api_key = getenv("DSR1_API_KEY");
    if (dsr1_arg_precision(CMD, o->precision, &o->kernels)) return 2;
    if (o->transport == DSR1_TRANSPORT_JOIN && (!o->join_listen || o->n[F_WORKERS].value < 1)) {
        fprintf(stderr, CMD ": --transport join needs --workers N and --join-listen HOST:PORT\n");
        return 2;
    }
    if (o->join_listen && o->transport == DSR1_TRANSPORT_INPROC && !o->mpi) {
        fprintf(stderr, CMD ": --join-listen needs --transport ucx or join, or --mpi\n");
        return 2;
    }
    return 0;
}

static const char *transport_name(int t, int workers)
{
    if (t == DSR1_TRANSPORT_MPI) return "mpi";
    if (t == DSR1_TRANSPORT_JOIN) return "join";
    if (!workers) return "none";
    return t == DSR1_TRANSPORT_UCX ? "ucx" : "inproc";
}

/* The checkpoint directory and config file of --model, which names the directory or, with
 * --dummy-weights, may name the config file itself. */
static void model_paths(const char *model, char *dir, char *config, size_t cap)
{
    struct stat sb;
    snprintf(dir, cap, "%s", model);
    if (!stat(model, &sb) && S_ISREG(sb.st_mode)) {
        snprintf(config, cap, "%s", model);
        dirname(dir);
    } else {
        snprintf(config, cap, "%s/config.json", model);
    }
}

/* Batch items in the scheduler at once: enough to fill the running set twice over, but at
 * most half the queue, which Generate requests need too. */
static int batch_window(int max_running, int max_queued)
{
    int w = 2 * max_running < max_queued / 2 ? 2 * max_running : max_queued / 2;
    return w > 0 ? w : 1;
}

/* The state directory: --state-dir, else $XDG_STATE_HOME/dsr1, else $HOME/.local/state/dsr1
 * (its parents created, 0700); "" for --state-dir none. */
static dsr1_status state_dir(const serve_opts *o, char *out, size_t cap)
{
    const char *xdg = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
    if (o->state_dir && !strcmp(o->state_dir, "none")) {
        out[0] = '\0';
        return DSR1_OK;
    }
    int n;
    if (o->state_dir)
        n = snprintf(out, cap, "%s", o->state_dir);
    else if (xdg && *xdg == '/')
        n = snprintf(out, cap, "%s/dsr1", xdg);
    else if (home && *home)
        n = snprintf(out, cap, "%s/.local/state/dsr1", home);
    else
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "no state directory: HOME is not set; give --state-dir DIR (or none)");
    if (n < 0 || (size_t)n >= cap) return dsr1_error(DSR1_ERR_RANGE, "--state-dir: path too long");
    /* the parents; the store makes the directory itself */
    char path[4096];
    snprintf(path, sizeof(path), "%s", out);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(path, 0700) && errno != EEXIST)
            return dsr1_error(DSR1_ERR_IO, "state directory %s: cannot create %s: %s", out, path,
                              strerror(errno));
        *p = '/';
    }
    return DSR1_OK;
}

/* Everything a running server holds. The server binds its port first (a port in use fails
 * before the model loads) and is destroyed first (its shutdown needs the scheduler). */
typedef struct {
    dsr1_backend *backend;
    dsr1_tokenizer *tok;
    dsr1_grammars *grammars;
    dsr1_sched *sched;
    dsr1_server *server;
    dsr1_http_server *http;
    dsr1_batches *batches;
} serving;

/* The HTTP API's port: --http-port (0: off), else 8000, or any free port (0) when the gRPC
 * port is 0 (as tests run it, side by side); -1 when off. */
static int http_port(const serve_opts *o)
{
    long p = o->n[F_HTTP_PORT].value;
    if (p < 0) return o->n[F_PORT].value == 0 ? 0 : DSR1_HTTP_DEFAULT_PORT;
    return p == 0 ? -1 : (int)p;
}

static dsr1_status open_serving(const serve_opts *o, serving *sv)
{
    int transport = o->mpi ? DSR1_TRANSPORT_MPI : o->transport;
    dsr1_status st = dsr1_server_listen(o->host, (int)o->n[F_PORT].value,
                                        (int)o->n[F_MAX_MESSAGE_BYTES].value, &sv->server);
    if (st != DSR1_OK) return st;
    /* the batch store before anything slow: a held or foreign state directory fails at once */
    char sdir[4096];
    if ((st = state_dir(o, sdir, sizeof(sdir))) != DSR1_OK) return st;
    long days = o->n[F_RETENTION_DAYS].value;
    dsr1_batches_params bsp = {
        .state_dir = sdir,
        .retention_s = days ? days * 86400 : -1,
        .window = (int)o->n[F_BATCH_WINDOW].value,
        .batch_window = (int)o->n[F_BATCH_WINDOW_PER_BATCH].value, /* 0 or > window: window */
        .max_items = (int)o->n[F_MAX_BATCH_ITEMS].value,
    };
    if (!bsp.window)
        bsp.window = batch_window((int)o->n[F_MAX_RUNNING].value, (int)o->n[F_MAX_QUEUED].value);
    if (bsp.batch_window > bsp.window) {
        DSR1_WARN("serve: --batch-window-per-batch %d is more than the batch window %d: using %d",
                  bsp.batch_window, bsp.window, bsp.window);
        bsp.batch_window = bsp.window;
    }
    if (*sdir && (st = dsr1_batches_open(&bsp, &sv->batches)) != DSR1_OK) return st;
    if (sv->batches)
        DSR1_INFO("serve: batch jobs in %s (%d items at once, %d of one batch)", sdir, bsp.window,
                  bsp.batch_window ? bsp.batch_window : bsp.window);
    /* the tokenizer before the workers start: they wait for the scheduler's first step or
     * heartbeat only --timeout-ms */
    char dir[4096], config[4096];
    model_paths(o->model, dir, config, sizeof(dir));
    if ((st = dsr1_tokenizer_load(dir, &sv->tok)) != DSR1_OK) return st;
    dsr1_backend_params bp = {
        .model = o->model,
        .dummy_weights = o->dummy,
        .seed = o->seed,
        .layers = (int)o->n[F_LAYERS].value,
        .workers = (int)o->n[F_WORKERS].value,
        .pp = (int)o->n[F_PP].value,
        .transport = transport,
        .threads = (int)o->n[F_THREADS].value,
        .kernels = o->kernels,
        .timeout_ms = (int)o->n[F_TIMEOUT].value,
        .kv_tokens = o->n[F_KV_TOKENS].value,
        .block_tokens = (int)o->n[F_BLOCK_TOKENS].value,
        .max_step_tokens = (int)o->n[F_STEP_TOKENS].value,
        .steps_in_flight = (int)o->n[F_IN_FLIGHT].value,
        .replicas = (int)o->n[F_REPLICAS].value,
        .join_listen = o->join_listen,
    };
    if ((st = dsr1_backend_open(&bp, &sv->backend)) != DSR1_OK) return st;
    const dsr1_model_config *cfg = dsr1_backend_config(sv->backend);
    dsr1_executor exec = dsr1_backend_executor(sv->backend);
    /* a request must fit the model's positions and one rank's cache */
    int64_t max_context = cfg->max_position_embeddings;
    int64_t cache_tokens = (int64_t)exec.blocks_per_rank * exec.block_tokens;
    if (cache_tokens < max_context) max_context = cache_tokens;
    if (o->n[F_MAX_CONTEXT].value && o->n[F_MAX_CONTEXT].value < max_context)
        max_context = o->n[F_MAX_CONTEXT].value;
    if ((st = dsr1_grammars_create(sv->tok, cfg->eos_token_id, 0, &sv->grammars)) != DSR1_OK)
        return st;
    dsr1_sched_params sp = {
        .exec = exec,
        .tok = sv->tok,
        .vocab = cfg->vocab_size,
        .max_context = (int)max_context,
        .step_tokens = (int)o->n[F_STEP_TOKENS].value,
        .max_running = (int)o->n[F_MAX_RUNNING].value,
        .max_queued = (int)o->n[F_MAX_QUEUED].value,
        .prefix_cache = o->prefix_cache,
        .grammars = sv->grammars,
    };
    if ((st = dsr1_sched_create(&sp, &sv->sched)) != DSR1_OK) return st;
    int workers = dsr1_backend_workers(sv->backend);
    dsr1_server_params p = {
        .api_key = o->api_key,
        .max_batch_items = (int)o->n[F_MAX_BATCH_ITEMS].value,
        .max_context = (int)max_context,
        .max_queued = sp.max_queued,
        .batches = sv->batches,
        .model_dir = dir,
        .config_path = config,
        .cfg = cfg,
        .tok = sv->tok,
        .sched = sv->sched,
        .grammars = sv->grammars,
        .workers = workers,
        .pp = dsr1_backend_pp(sv->backend),
        .transport = transport_name(transport, workers),
        .kernels = dsr1_backend_kernels_name(sv->backend),
    };
    if ((st = dsr1_server_start(sv->server, &p)) != DSR1_OK) return st;
    int hport = http_port(o);
    if (hport < 0) return sv->batches ? dsr1_batches_start(sv->batches) : DSR1_OK;
    dsr1_http_params hp = {
        .api_key = o->api_key,
        .max_context = (int)max_context,
        .max_body_bytes = (int)o->n[F_HTTP_BODY].value,
        .max_stream_bytes = (int)o->n[F_HTTP_STREAM].value,
        .model_dir = dir,
        .cfg = cfg,
        .tok = sv->tok,
        .sched = sv->sched,
        .grammars = sv->grammars,
        .batches = sv->batches,
    };
    if ((st = dsr1_http_start(o->host, hport, &hp, &sv->http)) != DSR1_OK) return st;
    return sv->batches ? dsr1_batches_start(sv->batches) : DSR1_OK;
}

/* Frontends stop taking work, the store closes (aborting its running items, recording
 * nothing: they run again on the next start), then the frontends and the scheduler go. */
static void close_serving(serving *sv)
{
    if (sv->http) dsr1_http_quiesce(sv->http);
    dsr1_server_shutdown(sv->server);
    if (sv->batches) dsr1_batches_close(sv->batches);
    dsr1_http_stop(sv->http);
    dsr1_server_destroy(sv->server);
    if (sv->sched) dsr1_sched_destroy(sv->sched);
    dsr1_grammars_destroy(sv->grammars); /* after the scheduler gave every grammar back */
    if (sv->tok) dsr1_tokenizer_free(sv->tok);
    dsr1_backend_close(sv->backend);
}

/* The service's state in a line for systemd's STATUS=. */
static void status_line(dsr1_sched *sched, char *out, size_t cap)
{
    dsr1_sched_info in;
    dsr1_sched_get_info(sched, &in);
    const dsr1_grid_health *g = &in.grid;
    if (!in.healthy)
        snprintf(out, cap, "failed: cannot serve (executor failure; see the log)");
    else if (g->workers > 0 && g->workers_live < g->workers)
        snprintf(out, cap, "degraded: %d of %d workers live, %d of %d lanes (epoch %llu; lost %s)",
                 g->workers_live, g->workers, g->lanes_live, g->lanes, (unsigned long long)g->epoch,
                 g->lost);
    else
        snprintf(out, cap, "serving");
}

/* Waits for SIGINT or SIGTERM (returned), telling systemd of changes of state meanwhile
 * and sending its watchdog pings when it asks for them. */
static int wait_for_stop(const sigset_t *stop, dsr1_sched *sched)
{
    uint64_t wd = dsr1_sd_watchdog_usec();
    long tick_us = 1000000;
    if (wd && (long)wd < tick_us) tick_us = (long)wd;
    char last[400] = "", now[400];
    for (;;) {
        status_line(sched, now, sizeof(now));
        if (strcmp(now, last)) {
            if (strcmp(last, "")) DSR1_INFO("serve: %s", now);
            dsr1_sd_notifyf("STATUS=%s", now);
            snprintf(last, sizeof(last), "%s", now);
        }
        if (wd) dsr1_sd_notify("WATCHDOG=1");
        struct timespec ts = {tick_us / 1000000, (tick_us % 1000000) * 1000};
        int sig = sigtimedwait(stop, NULL, &ts);
        if (sig > 0) return sig;
    }
}

int dsr1_cmd_serve(int argc, char **argv)
{
    serve_opts o = defaults;
    if (dsr1_mpi_launched_size() > 1) o.mpi = true;
    int rc = parse(argc, argv, &o);
    if (rc) return rc < 0 ? 0 : rc;
    /* every thread started from here on inherits the mask: the signals wait for sigwait */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    serving sv = {0};
    dsr1_sd_notify("STATUS=loading the model");
    if (open_serving(&o, &sv) != DSR1_OK) {
        dsr1_sd_notifyf("STATUS=failed to start: %.900s", dsr1_errmsg());
        fprintf(stderr, CMD ": %s\n", dsr1_errmsg());
        close_serving(&sv);
        return 1;
    }
    if (sv.http) printf("HTTP API on http://%s:%d\n", o.host, dsr1_http_port(sv.http));
    printf("serving on %s:%d\n", o.host, dsr1_server_port(sv.server));
    fflush(stdout);
    /* under mpirun the coordinator, not mpirun (which exits 1 when signalled), is the one
     * systemd should stop: SIGTERM to it ends the whole job with status 0 */
    if (o.mpi)
        dsr1_sd_notifyf("READY=1\nMAINPID=%ld", (long)getpid());
    else
        dsr1_sd_notify("READY=1");
    int sig = wait_for_stop(&stop, sv.sched);
    DSR1_INFO("serve: %s: shutting down", strsignal(sig));
    dsr1_sd_notify("STOPPING=1\nSTATUS=stopping: ending the open requests");
    close_serving(&sv);
    DSR1_INFO("serve: stopped");
    return 0;
}
