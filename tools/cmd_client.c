/* `dsr1 client`: the serving API (proto/dsr1.proto) from the command line, against a
 * running `dsr1 serve` or dsr1-coordinator: a streamed generation, batch jobs from a JSONL
 * file with their results back as JSONL, batch status, cancel and list, and the model's
 * and server's information.
 *
 * Requests are built as JSON first and converted with pbjson, so a batch file line and the
 * command-line flags are one path: the flags give a JSON object of sampling fields, a
 * line's own fields override them. gRPC errors print as "dsr1 client: <CODE>: <message>"
 * (exit 1); usage errors exit 2. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "args.h"
#include "commands.h"
#include "dsr1.pb-c.h"
#include "health.pb-c.h"
#include "pbjson.h"
#include "rpc_client.h"

#define DEFAULT_SERVER "127.0.0.1:50051"
#define JSON_OUT       (JSON_COMPACT | JSON_REAL_PRECISION(15))

typedef enum { SUB_GENERATE, SUB_BATCH, SUB_STATUS, SUB_CANCEL, SUB_LIST, SUB_INFO, N_SUBS } sub;

static const char *const sub_names[N_SUBS] = {"generate", "batch", "status",
                                              "cancel",   "list",  "info"};

typedef struct {
    sub sub;
    const char *server, *api_key;
    double timeout_s;
    bool json;
    /* generate */
    const char *text, *chat_user, *system, *ids, *request_id;
    /* batch */
    const char *file, *batch_id, *out, *window;
    long priority, max_running;
    bool wait, resume;
    /* status, list */
    bool results;
    long limit;
    const char *after;
    const char *positional; /* BATCH_ID of status and cancel */
    /* sampling: --sampling's object updated with the flags' fields */
    const char *sampling_arg;
    json_t *sampling;
} client_args;

/* ---- usage and options ---------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: dsr1 client <generate|batch|status|cancel|list|info> [options]\n\n"
        "Talk to a dsr1 server (dsr1 serve, dsr1-coordinator) over gRPC (proto/dsr1.proto).\n\n"
        "  generate (--text T | --chat-user MSG [--system S] | --ids 1,2,3) [sampling]\n"
        "      Stream one generation: the answer text goes to stdout as it arrives, the\n"
        "      reasoning (text inside <think>) to stderr, then a summary line to stderr\n"
        "      (finish reason, token counts, timings). --json: print only the final\n"
        "      Completion as one JSON object on stdout.\n"
        "      --request-id ID     the request's id (default: the server makes one)\n"
        "  batch --input F.jsonl [--batch-id ID] [--completion-window W] [--priority N]\n"
        "        [--max-running N] [--wait] [--output R.jsonl [--resume]] [sampling]\n"
        "      Upload one item per line (UploadBatch, streamed: any size): {\"text\": ...} |\n"
        "      {\"messages\": [{\"role\", \"content\"}...]} | {\"ids\": [...]}, with optional\n"
        "      \"custom_id\" and sampling fields (those of SamplingParams; they override the\n"
        "      flags' for that line). Prints the batch id on stdout. --wait streams each\n"
        "      result as a JSON line (a BatchItemResult, with its seq) to --output (which\n"
        "      implies --wait; default stdout, the id then going to stderr) until the batch\n"
        "      is done. --completion-window W: the batch expires after W (\"24h\", \"90m\").\n"
        "      --priority N: batches run by priority, higher first (default 0), then in\n"
        "      submission order. --max-running N: at most N of its items run at once (0:\n"
        "      the server's per-batch window, which N cannot exceed).\n"
        "      --resume: continue an interrupted download into --output: the results after\n"
        "      its last line's seq are appended (a cut-off last line is dropped first); the\n"
        "      batch is the --batch-id one, else the one the file's results belong to; with\n"
        "      --input (and --batch-id, so that it is idempotent) the batch is uploaded first\n"
        "      if the server does not have it. --file and --out are older names of --input\n"
        "      and --output.\n"
        "  status BATCH_ID [--results]   state and progress (--results: with the results)\n"
        "  cancel BATCH_ID               cancel the batch's unfinished items\n"
        "  list [--limit N] [--after ID] batches, newest first (the page after batch ID;\n"
        "                                when more follow, their --after goes to stderr)\n"
        "  info                          model, limits, defaults, server state and health\n\n"
        "sampling (generate; defaults of batch items):\n"
        "  --max-tokens N  --temperature X  --top-p X  --top-k N  --seed N\n"
        "  --stop S (repeatable)  --ignore-eos\n"
        "  --sampling JSON   any SamplingParams fields, e.g. '{\"min_p\":0.1,\"logprobs\":true}'\n"
        "                    (the flags above override it)\n\n"
        "common:\n"
        "  --server HOST:PORT  default $DSR1_SERVER, else " DEFAULT_SERVER "\n"
        "  --api-key K         sent as 'authorization: Bearer K' (default $DSR1_API_KEY)\n"
        "  --timeout-s S       deadline of each call (default none)\n"
        "  --json              generate, status, cancel, list: print JSON (info always does)\n"
        "  -h, --help          this text\n\n"
        "Exit status: 0 ok, 1 failure (gRPC errors: 'dsr1 client: CODE: message'), 2 usage.\n");
}

enum {
    O_SERVER = 256,
    O_API_KEY,
    O_TIMEOUT,
    O_JSON,
    O_TEXT,
    O_CHAT_USER,
    O_SYSTEM,
    O_IDS,
    O_REQUEST_ID,
    O_FILE,
    O_BATCH_ID,
    O_OUT,
    O_WAIT,
    O_RESUME,
    O_WINDOW,
    O_PRIORITY,
    O_MAX_RUNNING,
    O_RESULTS,
    O_LIMIT,
    O_MAX_TOKENS,
    O_TEMPERATURE,
    O_TOP_P,
    O_TOP_K,
    O_SEED,
    O_STOP,
    O_IGNORE_EOS,
    O_SAMPLING,
    O_HELP
};

#define GEN    (1u << SUB_GENERATE)
#define BATCH  (1u << SUB_BATCH)
#define ALL    ((1u << N_SUBS) - 1)
#define SAMPLE (GEN | BATCH)

/* Every option, with the subcommands that take it and, for the options that only store
 * their string, where in client_args. */
#define STR(field) offsetof(client_args, field)
#define NONE       ((size_t)-1)
static const struct {
    const char *name;
    int has_arg, val;
    unsigned subs;
    size_t str;
} client_opts[] = {
    {"server", required_argument, O_SERVER, ALL, STR(server)},
    {"api-key", required_argument, O_API_KEY, ALL, STR(api_key)},
    {"timeout-s", required_argument, O_TIMEOUT, ALL, NONE},
    {"json", no_argument, O_JSON, ALL & ~BATCH, NONE},
    {"text", required_argument, O_TEXT, GEN, STR(text)},
    {"chat-user", required_argument, O_CHAT_USER, GEN, STR(chat_user)},
    {"system", required_argument, O_SYSTEM, GEN, STR(system)},
    {"ids", required_argument, O_IDS, GEN, STR(ids)},
    {"request-id", required_argument, O_REQUEST_ID, GEN, STR(request_id)},
    {"file", required_argument, O_FILE, BATCH, STR(file)},
    {"input", required_argument, O_FILE, BATCH, STR(file)},
    {"batch-id", required_argument, O_BATCH_ID, BATCH, STR(batch_id)},
    {"out", required_argument, O_OUT, BATCH, STR(out)},
    {"output", required_argument, O_OUT, BATCH, STR(out)},
    {"wait", no_argument, O_WAIT, BATCH, NONE},
    {"resume", no_argument, O_RESUME, BATCH, NONE},
    {"completion-window", required_argument, O_WINDOW, BATCH, STR(window)},
    {"priority", required_argument, O_PRIORITY, BATCH, NONE},
    {"max-running", required_argument, O_MAX_RUNNING, BATCH, NONE},
    {"results", no_argument, O_RESULTS, 1u << SUB_STATUS, NONE},
    {"limit", required_argument, O_LIMIT, 1u << SUB_LIST, NONE},
    {"after", required_argument, O_LIMIT, 1u << SUB_LIST, STR(after)},
    {"max-tokens", required_argument, O_MAX_TOKENS, SAMPLE, NONE},
    {"temperature", required_argument, O_TEMPERATURE, SAMPLE, NONE},
    {"top-p", required_argument, O_TOP_P, SAMPLE, NONE},
    {"top-k", required_argument, O_TOP_K, SAMPLE, NONE},
    {"seed", required_argument, O_SEED, SAMPLE, NONE},
    {"stop", required_argument, O_STOP, SAMPLE, NONE},
    {"ignore-eos", no_argument, O_IGNORE_EOS, SAMPLE, NONE},
    {"sampling", required_argument, O_SAMPLING, SAMPLE, STR(sampling_arg)},
    {"help", no_argument, O_HELP, ALL, NONE},
};
#define N_OPTS (sizeof(client_opts) / sizeof(client_opts[0]))

/* Sets one sampling field from a flag's value; -1 on a bad value (message printed). */
static int sampling_flag(client_args *a, int opt, const char *name, const char *v)
{
    const char *cmd = "dsr1 client";
    char flag[32];
    snprintf(flag, sizeof(flag), "--%s", name);
    long n;
    double x;
    uint64_t u;
    json_t *j = NULL;
    switch (opt) {
    case O_MAX_TOKENS:
    case O_TOP_K:
        if (dsr1_arg_long(cmd, flag, v, 0, INT32_MAX, &n)) return -1;
        j = json_integer(n);
        break;
    case O_TEMPERATURE:
    case O_TOP_P:
        if (dsr1_arg_double(cmd, flag, v, -1e30, 1e30, &x)) return -1; /* the server checks */
        j = json_real(x);
        break;
    case O_SEED: {
        if (dsr1_arg_u64(cmd, flag, v, &u)) return -1;
        char buf[24];
        snprintf(buf, sizeof(buf), "%llu", (unsigned long long)u);
        j = u > INT64_MAX ? json_string(buf) : json_integer((json_int_t)u);
        break;
    }
    case O_STOP: {
        json_t *stop = json_object_get(a->sampling, "stop");
        if (!stop) json_object_set_new(a->sampling, "stop", stop = json_array());
        json_t *sv = json_string(v);
        if (!sv || json_array_append_new(stop, sv)) {
            fprintf(stderr, "%s: --stop: not valid UTF-8\n", cmd);
            return -1;
        }
        return 0;
    }
    default: /* O_IGNORE_EOS */
        j = json_true();
    }
    char key[32];
    snprintf(key, sizeof(key), "%s", name);
    for (char *p = key; *p; p++)
        if (*p == '-') *p = '_';
    json_object_set_new(a->sampling, key, j);
    return 0;
}

/* --sampling JSON under the flags' fields. */
static int merge_sampling_arg(client_args *a)
{
    if (!a->sampling_arg) return 0;
    json_error_t err;
    json_t *base = json_loads(a->sampling_arg, 0, &err);
    if (!json_is_object(base)) {
        fprintf(stderr, "dsr1 client: --sampling: not a JSON object (%s)\n",
                base ? "another JSON value" : err.text);
        json_decref(base);
        return -1;
    }
    json_object_update(base, a->sampling);
    json_decref(a->sampling);
    a->sampling = base;
    return 0;
}

static int set_option(client_args *a, int opt, const char *name, const char *v)
{
    switch (opt) {
    case O_TIMEOUT:
        return dsr1_arg_double("dsr1 client", "--timeout-s", v, 0, 1e9, &a->timeout_s);
    case O_LIMIT:
        return dsr1_arg_long("dsr1 client", "--limit", v, 1, INT32_MAX, &a->limit);
    case O_PRIORITY:
        return dsr1_arg_long("dsr1 client", "--priority", v, INT32_MIN, INT32_MAX, &a->priority);
    case O_MAX_RUNNING:
        return dsr1_arg_long("dsr1 client", "--max-running", v, 0, INT32_MAX, &a->max_running);
    case O_JSON:
        a->json = true;
        return 0;
    case O_WAIT:
        a->wait = true;
        return 0;
    case O_RESUME:
        a->resume = true;
        return 0;
    case O_RESULTS:
        a->results = true;
        return 0;
    default:
        return sampling_flag(a, opt, name, v);
    }
}

/* Parses argv (argv[0] = "client", argv[1] = the subcommand); 0 ok, -1 help printed, 2
 * usage error. */
static int parse_args(int argc, char **argv, client_args *a)
{
    a->server = getenv("DSR1_SERVER") ? getenv("DSR1_SERVER") : DEFAULT_SERVER;
    a->api_key = getenv("DSR1_API_KEY");
    a->sampling = json_object();
    struct option opts[N_OPTS + 1] = {{0}};
    for (size_t i = 0; i < N_OPTS; i++)
        opts[i] =
            (struct option){client_opts[i].name, client_opts[i].has_arg, 0, client_opts[i].val};
    int c, li;
    optind = 1;
    while ((c = getopt_long(argc - 1, argv + 1, "h", opts, &li)) != -1) {
        if (c == 'h' || c == O_HELP) {
            usage(stdout);
            return -1;
        }
        if (c == '?') return 2;
        if (!(client_opts[li].subs & (1u << a->sub))) {
            fprintf(stderr, "dsr1 client: --%s is not an option of '%s' (see --help)\n",
                    opts[li].name, sub_names[a->sub]);
            return 2;
        }
        if (client_opts[li].str != NONE)
            *(const char **)((char *)a + client_opts[li].str) = optarg;
        else if (set_option(a, c, opts[li].name, optarg))
            return 2;
    }
    argc--, argv++;
    bool wants_id = a->sub == SUB_STATUS || a->sub == SUB_CANCEL;
    if (wants_id && optind < argc) a->positional = argv[optind++];
    if (optind < argc) {
        fprintf(stderr, "dsr1 client: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (wants_id && !a->positional) {
        fprintf(stderr, "dsr1 client %s: BATCH_ID is required\n", sub_names[a->sub]);
        return 2;
    }
    if (a->sub == SUB_GENERATE && !!a->text + !!a->chat_user + !!a->ids != 1) {
        fprintf(stderr, "dsr1 client generate: give one of --text, --chat-user, --ids\n");
        return 2;
    }
    if (a->system && !a->chat_user) {
        fprintf(stderr, "dsr1 client generate: --system goes with --chat-user\n");
        return 2;
    }
    if (a->sub == SUB_BATCH && !a->file && !a->resume) {
        fprintf(stderr, "dsr1 client batch: --input is required\n");
        return 2;
    }
    if (a->resume && !a->out) {
        fprintf(stderr, "dsr1 client batch: --resume goes with --output\n");
        return 2;
    }
    if (a->resume && a->file && !a->batch_id) {
        fprintf(stderr, "dsr1 client batch: --resume --input needs --batch-id (an upload "
                        "without it would make a second batch)\n");
        return 2;
    }
    if (a->out) a->wait = true;
    return merge_sampling_arg(a) ? 2 : 0;
}

/* ---- requests from JSON --------------------------------------------------------------- */

/* A BatchItem from one JSONL line: its "text" | "messages" | "ids", "custom_id", and its
 * other fields as sampling fields laid over `defaults` (item->sampling is left unset when
 * both are empty, for the server's defaults). */
static dsr1_status item_from_json(const json_t *line, const json_t *defaults,
                                  Dsr1__V1__BatchItem **out)
{
    if (!json_is_object(line)) return dsr1_error(DSR1_ERR_INVALID_ARG, "not a JSON object");
    json_t *input = json_object(), *item = json_object();
    json_t *sampling = json_deep_copy(defaults);
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)line, key, v)
    {
        if (!strcmp(key, "text")) {
            json_object_set(input, "text", v);
        } else if (!strcmp(key, "messages")) {
            json_object_set_new(input, "chat", json_pack("{sO}", "messages", v));
        } else if (!strcmp(key, "ids")) {
            json_object_set_new(input, "token_ids", json_pack("{sO}", "ids", v));
        } else if (!strcmp(key, "custom_id")) {
            json_object_set(item, "custom_id", v);
        } else {
            json_object_set(sampling, key, v);
        }
    }
    json_object_set_new(item, "input", input);
    if (json_object_size(sampling)) json_object_set(item, "sampling", sampling);
    dsr1_status st = DSR1_OK;
    if (json_object_size(input) != 1)
        st = dsr1_error(DSR1_ERR_INVALID_ARG, "give exactly one of \"text\", \"messages\", "
                                              "\"ids\"");
    Dsr1__V1__BatchItem *m =
        st ? NULL : (Dsr1__V1__BatchItem *)dsr1_pbjson_new(&dsr1__v1__batch_item__descriptor);
    if (!st && !m) st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    if (!st) st = dsr1_pbjson_to_msg(item, &m->base);
    json_decref(sampling);
    json_decref(item);
    if (st) {
        if (m) protobuf_c_message_free_unpacked(&m->base, NULL);
        return st;
    }
    *out = m;
    return DSR1_OK;
}

/* The generate flags as a batch line. */
static json_t *generate_line(const client_args *a)
{
    if (a->text) return json_pack("{ss}", "text", a->text);
    if (a->chat_user) {
        json_t *msgs = json_array();
        if (a->system)
            json_array_append_new(msgs,
                                  json_pack("{ssss}", "role", "system", "content", a->system));
        json_array_append_new(msgs, json_pack("{ssss}", "role", "user", "content", a->chat_user));
        return json_pack("{so}", "messages", msgs);
    }
    int32_t *ids;
    size_t n;
    if (dsr1_arg_ids("dsr1 client", "--ids", a->ids, &ids, &n)) return NULL;
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(arr, json_integer(ids[i]));
    free(ids);
    return json_pack("{so}", "ids", arr);
}

/* ---- output --------------------------------------------------------------------------- */

static int fail(void)
{
    fprintf(stderr, "dsr1 client: %s\n", dsr1_errmsg());
    return 1;
}

static void print_json(FILE *f, const ProtobufCMessage *m)
{
    json_t *j = dsr1_pbjson_from_msg(m);
    json_dumpf(j, f, JSON_OUT);
    fputc('\n', f);
    json_decref(j);
}

static const char *finish_name(int f)
{
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&dsr1__v1__finish_reason__descriptor, f);
    return v ? v->name : "?";
}

static void print_summary(const Dsr1__V1__Completion *c)
{
    fprintf(stderr, "\n[%s", finish_name(c->finish_reason));
    if (c->stop_reason && *c->stop_reason) fprintf(stderr, " (%s)", c->stop_reason);
    if (c->error && *c->error) fprintf(stderr, ": %s", c->error);
    if (c->usage)
        fprintf(stderr, "; tokens: %d prompt (%d cached), %d completion", c->usage->prompt_tokens,
                c->usage->cached_tokens, c->usage->completion_tokens);
    if (c->timings)
        fprintf(stderr, "; queue %.3f s, first token %.3f s, total %.3f s", c->timings->queue_s,
                c->timings->time_to_first_token_s, c->timings->e2e_s);
    fprintf(stderr, "; id %s]\n", c->request_id);
}

static void print_batch_line(FILE *f, const Dsr1__V1__BatchStatus *b)
{
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&dsr1__v1__batch_state__descriptor, b->state);
    fprintf(f, "%s: %s, %d/%d finished (%d failed, %d aborted)", b->batch_id, v ? v->name : "?",
            b->finished, b->total, b->failed, b->aborted);
    if (b->priority) fprintf(f, "; priority %d", b->priority);
    if (b->usage)
        fprintf(f, "; tokens: %d prompt, %d completion", b->usage->prompt_tokens,
                b->usage->completion_tokens);
    fputc('\n', f);
}

/* ---- subcommands ---------------------------------------------------------------------- */

static int do_generate(const client_args *a, dsr1_rpc_client *c)
{
    json_t *line = generate_line(a);
    if (!line) return 2;
    Dsr1__V1__BatchItem *item;
    dsr1_status st = item_from_json(line, a->sampling, &item);
    json_decref(line);
    if (st) return fail();
    Dsr1__V1__GenerateRequest req = DSR1__V1__GENERATE_REQUEST__INIT;
    req.request_id = (char *)(a->request_id ? a->request_id : "");
    req.input = item->input;
    req.sampling = item->sampling;
    dsr1_rpc_stream *s;
    Dsr1__V1__GenerateResponse *r = NULL, *final = NULL;
    st = dsr1_rpc_stream_open(c, DSR1_RPC_GENERATE, &req.base,
                              &dsr1__v1__generate_response__descriptor, a->timeout_s, &s);
    protobuf_c_message_free_unpacked(&item->base, NULL);
    if (st) return fail();
    while (!(st = dsr1_rpc_stream_next(s, (ProtobufCMessage **)&r)) && r) {
        if (r->kind_case == DSR1__V1__GENERATE_RESPONSE__KIND_DELTA && !a->json) {
            fputs(r->delta->reasoning_text, stderr);
            fputs(r->delta->text, stdout);
            fflush(stdout);
        }
        if (r->kind_case != DSR1__V1__GENERATE_RESPONSE__KIND_FINAL) {
            protobuf_c_message_free_unpacked(&r->base, NULL);
            continue;
        }
        if (final) protobuf_c_message_free_unpacked(&final->base, NULL);
        final = r;
    }
    dsr1_rpc_stream_close(s);
    if (!st && !final) st = dsr1_error(DSR1_ERR_FORMAT, "the stream ended without a final message");
    if (!st && a->json) print_json(stdout, &final->final->base);
    if (!st && !a->json) print_summary(final->final);
    if (final) protobuf_c_message_free_unpacked(&final->base, NULL);
    return st ? fail() : 0;
}

/* Items per UploadBatch message: up to about this many bytes, and at most a quarter of the
 * server's largest message (GetModelInfo). */
#define UPLOAD_CHUNK_BYTES (1 << 20)

/* The batch file's items: one per non-blank line. */
typedef struct {
    FILE *f;
    const char *path;
    const json_t *defaults;
    char *buf;
    size_t cap, lineno;
} item_reader;

/* The next item (*out NULL at the end of the file). */
static dsr1_status next_item(item_reader *r, Dsr1__V1__BatchItem **out)
{
    *out = NULL;
    while (getline(&r->buf, &r->cap, r->f) >= 0) {
        r->lineno++;
        if (strspn(r->buf, " \t\r\n") == strlen(r->buf)) continue;
        json_error_t err;
        json_t *line = json_loads(r->buf, 0, &err);
        dsr1_status st = line ? item_from_json(line, r->defaults, out)
                              : dsr1_error(DSR1_ERR_FORMAT, "%s", err.text);
        json_decref(line);
        if (st) dsr1_error_context(st, "%s:%zu", r->path, r->lineno);
        return st;
    }
    return ferror(r->f) ? dsr1_error(DSR1_ERR_IO, "%s: read error", r->path) : DSR1_OK;
}

/* Non-blank lines of a regular file; 0 for anything that cannot be read twice (stdin, a
 * pipe such as /dev/stdin or <(...), a FIFO): not known before the end. */
static int count_lines(FILE *f)
{
    struct stat sb;
    if (fstat(fileno(f), &sb) || !S_ISREG(sb.st_mode)) return 0;
    char *buf = NULL;
    size_t cap = 0;
    int n = 0;
    while (getline(&buf, &cap, f) >= 0) n += strspn(buf, " \t\r\n") != strlen(buf);
    free(buf);
    rewind(f);
    return n;
}

static void free_items(Dsr1__V1__UploadBatchRequest *m)
{
    for (size_t i = 0; i < m->n_items; i++)
        protobuf_c_message_free_unpacked(&m->items[i]->base, NULL);
    m->n_items = 0;
}

/* The bytes of items to put in one UploadBatch message for this server. */
static size_t chunk_bytes(dsr1_rpc_client *c, const client_args *a)
{
    Dsr1__V1__GetModelInfoRequest req = DSR1__V1__GET_MODEL_INFO_REQUEST__INIT;
    Dsr1__V1__ModelInfo *mi = NULL;
    size_t n = UPLOAD_CHUNK_BYTES;
    if (!dsr1_rpc_call(c, DSR1_RPC_GET_MODEL_INFO, &req.base, &dsr1__v1__model_info__descriptor,
                       a->timeout_s, (ProtobufCMessage **)&mi) &&
        mi->limits && mi->limits->max_message_bytes > 0 &&
        (size_t)mi->limits->max_message_bytes / 4 < n)
        n = (size_t)mi->limits->max_message_bytes / 4;
    if (mi) protobuf_c_message_free_unpacked(&mi->base, NULL);
    return n;
}

/* UploadBatch from the file: items sent in messages of about chunk_bytes(); *n the number
 * of items. */
static dsr1_status upload(dsr1_rpc_client *c, const client_args *a,
                          Dsr1__V1__SubmitBatchResponse **out, size_t *n)
{
    size_t chunk = chunk_bytes(c, a);
    item_reader r = {
        .f = !strcmp(a->file, "-") ? stdin : fopen(a->file, "r"),
        .path = a->file,
        .defaults = a->sampling,
    };
    if (!r.f) return dsr1_error(DSR1_ERR_IO, "%s: %s", a->file, strerror(errno));
    Dsr1__V1__UploadBatchRequest m = DSR1__V1__UPLOAD_BATCH_REQUEST__INIT;
    m.batch_id = (char *)(a->batch_id ? a->batch_id : "");
    m.completion_window = (char *)(a->window ? a->window : "");
    m.priority = (int32_t)a->priority;
    m.max_running = (int32_t)a->max_running;
    m.total_items = count_lines(r.f);
    size_t cap = 256, bytes = 0;
    m.items = malloc(cap * sizeof(*m.items));
    dsr1_rpc_stream *s = NULL;
    dsr1_status st = m.items ? DSR1_OK : dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    if (!st)
        st = dsr1_rpc_upload_open(c, DSR1_RPC_UPLOAD_BATCH,
                                  &dsr1__v1__submit_batch_response__descriptor, a->timeout_s, &s);
    *n = 0;
    bool sent_first = false;
    for (;;) {
        Dsr1__V1__BatchItem *item = NULL;
        if (!st) st = next_item(&r, &item);
        if (item && m.n_items == cap) {
            Dsr1__V1__BatchItem **g = realloc(m.items, 2 * cap * sizeof(*g));
            if (g) {
                m.items = g;
                cap *= 2;
            } else {
                st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
            }
        }
        if (item && !st) {
            m.items[m.n_items++] = item;
            bytes += protobuf_c_message_get_packed_size(&item->base) + 8;
            (*n)++;
        } else if (item) {
            protobuf_c_message_free_unpacked(&item->base, NULL);
        }
        bool flush = !st && (bytes >= chunk || (!item && (m.n_items || !sent_first)));
        if (flush) {
            st = dsr1_rpc_upload_send(s, &m.base);
            free_items(&m);
            bytes = 0;
            sent_first = true;
            m.batch_id = m.completion_window = (char *)""; /* first message only */
            m.total_items = m.priority = m.max_running = 0;
        }
        if (st || !item) break;
    }
    if (!st && !*n) st = dsr1_error(DSR1_ERR_INVALID_ARG, "%s: no items", a->file);
    if (!st) st = dsr1_rpc_upload_finish(s, (ProtobufCMessage **)out);
    free_items(&m);
    free(m.items);
    free(r.buf);
    dsr1_rpc_stream_close(s);
    if (r.f != stdin) fclose(r.f);
    return st;
}

/* StreamBatchResults from from_seq into out, one JSON line per result. */
static dsr1_status stream_results(dsr1_rpc_client *c, const client_args *a, char *batch_id,
                                  int64_t from_seq, FILE *out)
{
    Dsr1__V1__StreamBatchResultsRequest req = DSR1__V1__STREAM_BATCH_RESULTS_REQUEST__INIT;
    req.batch_id = batch_id;
    req.from_seq = from_seq;
    dsr1_rpc_stream *s;
    dsr1_status st =
        dsr1_rpc_stream_open(c, DSR1_RPC_STREAM_BATCH, &req.base,
                             &dsr1__v1__batch_item_result__descriptor, a->timeout_s, &s);
    ProtobufCMessage *r;
    while (!st && !(st = dsr1_rpc_stream_next(s, &r)) && r) {
        print_json(out, r);
        fflush(out);
        protobuf_c_message_free_unpacked(r, NULL);
    }
    if (!st && ferror(out)) st = dsr1_error(DSR1_ERR_IO, "%s: write error", a->out);
    dsr1_rpc_stream_close(s);
    return st;
}

static dsr1_status get_batch(dsr1_rpc_client *c, const client_args *a, char *id, bool results,
                             Dsr1__V1__BatchStatus **out)
{
    Dsr1__V1__GetBatchRequest req = DSR1__V1__GET_BATCH_REQUEST__INIT;
    req.batch_id = id;
    req.include_results = results;
    return dsr1_rpc_call(c, DSR1_RPC_GET_BATCH, &req.base, &dsr1__v1__batch_status__descriptor,
                         a->timeout_s, (ProtobufCMessage **)out);
}

/* Where --resume continues: the output file's last complete line (a cut-off line after it
 * is truncated away) gives the next seq and the batch id; an absent or empty file: seq 0,
 * no id. */
static dsr1_status resume_point(const char *path, char *id, size_t cap, int64_t *from_seq)
{
    *from_seq = 0;
    id[0] = '\0';
    FILE *f = fopen(path, "r+");
    if (!f && errno == ENOENT) return DSR1_OK;
    if (!f) return dsr1_error(DSR1_ERR_IO, "%s: %s", path, strerror(errno));
    char *buf = NULL, *last = NULL;
    size_t bcap = 0;
    long good = 0; /* bytes of complete lines */
    ssize_t n;
    dsr1_status st = DSR1_OK;
    while ((n = getline(&buf, &bcap, f)) > 0) {
        if (buf[n - 1] != '\n') break;
        good += n;
        if (strspn(buf, " \t\r\n") == (size_t)n) continue;
        free(last);
        last = strdup(buf);
    }
    if (ftell(f) != good && ftruncate(fileno(f), good))
        st = dsr1_error(DSR1_ERR_IO, "%s: cannot drop its cut-off last line: %s", path,
                        strerror(errno));
    json_t *j = last && !st ? json_loads(last, 0, NULL) : NULL;
    if (last && !st && !j)
        st =
            dsr1_error(DSR1_ERR_FORMAT, "%s: its last line is not JSON: not a results file?", path);
    json_t *seq = json_object_get(j, "seq");
    const char *rid =
        json_string_value(json_object_get(json_object_get(j, "result"), "request_id"));
    const char *slash = rid ? strrchr(rid, '/') : NULL;
    if (j && (!json_is_integer(seq) || !slash || (size_t)(slash - rid) >= cap))
        st =
            dsr1_error(DSR1_ERR_FORMAT, "%s: its last line is not a batch result with a seq", path);
    if (j && !st) {
        *from_seq = json_integer_value(seq) + 1;
        memcpy(id, rid, (size_t)(slash - rid));
        id[slash - rid] = '\0';
    }
    json_decref(j);
    free(last);
    free(buf);
    fclose(f);
    return st;
}

static int do_batch(const client_args *a, dsr1_rpc_client *c)
{
    char resume_id[256] = "";
    int64_t from_seq = 0;
    dsr1_status st = DSR1_OK;
    if (a->resume) st = resume_point(a->out, resume_id, sizeof(resume_id), &from_seq);
    if (!st && a->batch_id && *resume_id && strcmp(a->batch_id, resume_id))
        st = dsr1_error(DSR1_ERR_INVALID_ARG, "%s holds results of batch %s, not %s", a->out,
                        resume_id, a->batch_id);
    Dsr1__V1__SubmitBatchResponse *r = NULL;
    char *id = a->batch_id ? (char *)a->batch_id : resume_id;
    size_t n_items = 0;
    if (!st && a->file) st = upload(c, a, &r, &n_items);
    if (!st && !a->file && !*id)
        st = dsr1_error(DSR1_ERR_INVALID_ARG,
                        "%s has no results to resume from: give --batch-id (or --input)", a->out);
    if (st) return fail();
    if (r) id = r->batch_id;
    bool results_to_stdout = a->wait && !a->out;
    if (r) {
        fprintf(results_to_stdout ? stderr : stdout, "%s\n", r->batch_id);
        fprintf(stderr, "dsr1 client: batch %s: %s, %zu items\n", r->batch_id,
                r->created ? "created" : "already submitted (nothing queued)", n_items);
    }
    if (a->resume)
        fprintf(stderr, "dsr1 client: batch %s: results from seq %lld on\n", id,
                (long long)from_seq);
    if (a->wait) {
        FILE *out = a->out ? fopen(a->out, a->resume ? "a" : "w") : stdout;
        if (!out) st = dsr1_error(DSR1_ERR_IO, "%s: %s", a->out, strerror(errno));
        if (!st) st = stream_results(c, a, id, from_seq, out);
        if (out && out != stdout && fclose(out) && !st)
            st = dsr1_error(DSR1_ERR_IO, "%s: write error", a->out);
        Dsr1__V1__BatchStatus *b;
        if (!st && !(st = get_batch(c, a, id, false, &b))) {
            print_batch_line(stderr, b);
            protobuf_c_message_free_unpacked(&b->base, NULL);
        }
    }
    if (r) protobuf_c_message_free_unpacked(&r->base, NULL);
    return st ? fail() : 0;
}

static int print_status(const client_args *a, Dsr1__V1__BatchStatus *b)
{
    if (a->json || a->results)
        print_json(stdout, &b->base);
    else
        print_batch_line(stdout, b);
    protobuf_c_message_free_unpacked(&b->base, NULL);
    return 0;
}

static int do_status(const client_args *a, dsr1_rpc_client *c)
{
    Dsr1__V1__BatchStatus *b;
    if (get_batch(c, a, (char *)a->positional, a->results, &b)) return fail();
    return print_status(a, b);
}

static int do_cancel(const client_args *a, dsr1_rpc_client *c)
{
    Dsr1__V1__CancelBatchRequest req = DSR1__V1__CANCEL_BATCH_REQUEST__INIT;
    req.batch_id = (char *)a->positional;
    Dsr1__V1__BatchStatus *b;
    if (dsr1_rpc_call(c, DSR1_RPC_CANCEL_BATCH, &req.base, &dsr1__v1__batch_status__descriptor,
                      a->timeout_s, (ProtobufCMessage **)&b))
        return fail();
    return print_status(a, b);
}

static int do_list(const client_args *a, dsr1_rpc_client *c)
{
    Dsr1__V1__ListBatchesRequest req = DSR1__V1__LIST_BATCHES_REQUEST__INIT;
    req.limit = (int32_t)a->limit;
    req.after = (char *)(a->after ? a->after : "");
    Dsr1__V1__ListBatchesResponse *r;
    if (dsr1_rpc_call(c, DSR1_RPC_LIST_BATCHES, &req.base,
                      &dsr1__v1__list_batches_response__descriptor, a->timeout_s,
                      (ProtobufCMessage **)&r))
        return fail();
    if (a->json) print_json(stdout, &r->base);
    for (size_t i = 0; !a->json && i < r->n_batches; i++) print_batch_line(stdout, r->batches[i]);
    if (!a->json && r->has_more && r->n_batches)
        fprintf(stderr, "dsr1 client: more batches follow: --after %s\n",
                r->batches[r->n_batches - 1]->batch_id);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return 0;
}

/* One unary call whose request has no fields; its reply as JSON under `key` in obj. */
static dsr1_status info_part(dsr1_rpc_client *c, const client_args *a, const char *method,
                             const ProtobufCMessage *req, const ProtobufCMessageDescriptor *d,
                             const char *key, json_t *obj)
{
    ProtobufCMessage *r;
    dsr1_status st = dsr1_rpc_call(c, method, req, d, a->timeout_s, &r);
    if (st) return st;
    json_t *j = dsr1_pbjson_from_msg(r);
    protobuf_c_message_free_unpacked(r, NULL);
    /* config_json is the checkpoint's config.json: show it as JSON, not as a string */
    const char *cfg_text = json_string_value(json_object_get(j, "config_json"));
    json_t *cfg = cfg_text ? json_loads(cfg_text, 0, NULL) : NULL;
    if (cfg) {
        json_object_del(j, "config_json");
        json_object_set_new(j, "config", cfg);
    }
    json_object_set_new(obj, key, j);
    return DSR1_OK;
}

static int do_info(const client_args *a, dsr1_rpc_client *c)
{
    Dsr1__V1__GetModelInfoRequest mreq = DSR1__V1__GET_MODEL_INFO_REQUEST__INIT;
    Dsr1__V1__GetServerInfoRequest sreq = DSR1__V1__GET_SERVER_INFO_REQUEST__INIT;
    Grpc__Health__V1__HealthCheckRequest hreq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    json_t *obj = json_object();
    dsr1_status st = info_part(c, a, DSR1_RPC_HEALTH_CHECK, &hreq.base,
                               &grpc__health__v1__health_check_response__descriptor, "health", obj);
    if (!st)
        st = info_part(c, a, DSR1_RPC_GET_MODEL_INFO, &mreq.base, &dsr1__v1__model_info__descriptor,
                       "model", obj);
    if (!st)
        st = info_part(c, a, DSR1_RPC_GET_SERVER_INFO, &sreq.base,
                       &dsr1__v1__server_info__descriptor, "server", obj);
    if (!st) {
        json_dumpf(obj, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(15));
        fputc('\n', stdout);
    }
    json_decref(obj);
    return st ? fail() : 0;
}

int dsr1_cmd_client(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    client_args a = {.sub = N_SUBS};
    for (int i = 0; i < N_SUBS; i++)
        if (!strcmp(argv[1], sub_names[i])) a.sub = (sub)i;
    if (a.sub == N_SUBS) {
        fprintf(stderr, "dsr1 client: unknown subcommand '%s' (see --help)\n", argv[1]);
        return 2;
    }
    int rc = parse_args(argc, argv, &a);
    dsr1_rpc_client *c = NULL;
    if (!rc && dsr1_rpc_client_create(a.server, a.api_key, &c)) rc = fail();
    if (!rc) {
        static int (*const run[N_SUBS])(const client_args *, dsr1_rpc_client *) = {
            do_generate, do_batch, do_status, do_cancel, do_list, do_info};
        rc = run[a.sub](&a, c);
    }
    dsr1_rpc_client_destroy(c);
    json_decref(a.sampling);
    return rc < 0 ? 0 : rc; /* -1: help printed */
}
