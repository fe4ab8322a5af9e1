/* `dsr1-bench serve`: a running server's online serving performance, measured as vLLM's
 * `vllm bench serve` does with its random dataset. --num-prompts requests of random token
 * ids (lengths uniform in [len (1 - r), len (1 + r)] for --random-range-ratio r) arrive as
 * a Poisson process of --request-rate per second (inf: all at once), at most
 * --max-concurrency in flight; each asks for exactly its output length (greedy,
 * ignore_eos) and is streamed: with gRPC's Generate (--backend grpc), or as OpenAI's POST
 * /v1/completions with a token-id prompt, read as Server-Sent Events with libcurl (--backend
 * openai). One warm-up request of its own goes first and is not measured.
 *
 * Per request: TTFT (sent to first token), TPOT ((e2e - TTFT) / (output tokens - 1)), ITL
 * (the gaps between streamed messages that carry tokens: gRPC deltas with token ids, SSE
 * chunks with text, as vLLM's benchmark counts them) and E2E latency; over the run:
 * request and token throughputs over the wall time from the first send to the last
 * reply, and mean, median and p99 of each latency (percentiles interpolated as numpy's).
 *
 * One thread per concurrent request, each with its own blocking stream (rpc_client.h; or
 * its own curl easy handle, whose connection it keeps alive from request to request): a
 * request's times are taken in the thread that reads it.
 *
 * usage: dsr1-bench serve [--backend grpc|openai] --server HOST:PORT | --base-url URL ... */
#include <getopt.h>
#include <jansson.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "args.h"
#include "bench.h"
#include "dsr1.pb-c.h"
#include "rpc_client.h"

#ifndef DSR1_BENCH_CURL
#define DSR1_BENCH_CURL 0
#endif
#if DSR1_BENCH_CURL
#include <curl/curl.h>
#endif

#define CMD "dsr1-bench serve"

typedef enum { BACKEND_GRPC, BACKEND_OPENAI } serve_backend;

typedef struct {
    serve_backend backend;
    const char *server, *base_url, *api_key, *json, *label;
    const char *target;      /* server or base_url, as the backend talks to */
    char *completions_url;   /* openai: base_url + /v1/completions */
    const char *schema_path; /* --json-schema */
    char *schema;            /* its text */
    long num_prompts, max_concurrency, input_len, output_len, vocab_size;
    double request_rate, range_ratio;
    uint64_t seed;
} serve_opts;

typedef struct {
    int32_t *prompt;
    int n_prompt, max_tokens;
    double arrival; /* seconds after the start */
    /* measured */
    bool ok;
    char error[200];
    double sent, ttft, e2e, end;
    int in_tokens, out_tokens;
    double *itl; /* max_tokens gaps at most */
    int n_itl;
} serve_req;

typedef struct {
    const serve_opts *o;
    dsr1_rpc_client *client;
    serve_req *reqs;
    atomic_long next;
    double t0;
} serve_run;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double uniform01(uint64_t *s)
{
    return (dsr1__bench_rand(s) >> 11) * (1.0 / 9007199254740992.0);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: dsr1-bench serve [--backend grpc] [--server HOST:PORT] [options]\n"
            "       dsr1-bench serve --backend openai [--base-url http://HOST:PORT] [options]\n\n"
            "Online serving benchmark against a running dsr1 server, as `vllm bench serve\n"
            "--dataset-name random`: random-token prompts arriving as a Poisson process,\n"
            "streamed (greedy, ignore_eos, so output lengths are exact), after one warm-up\n"
            "request that is not measured.\n\n"
            "  --backend grpc|openai     grpc (default): the Generate RPC; openai: POST\n"
            "                            /v1/completions with the prompt as token ids and\n"
            "                            \"stream\": true, timed from its Server-Sent Events\n"
            "                            (a chunk with text is a token; usage gives the count)%s\n"
            "  --server HOST:PORT        grpc: the server (default 127.0.0.1:50051)\n"
            "  --base-url URL            openai: the HTTP API (default http://127.0.0.1:8000)\n"
            "  --api-key K               when the server wants one (default $DSR1_API_KEY);\n"
            "                            openai: sent as Authorization: Bearer K\n"
            "  --vocab-size V            prompt ids are drawn from [3, min(V, 128000)); grpc:\n"
            "                            default the server's (GetModelInfo); openai: 129280\n"
            "  --num-prompts N           requests (default 100)\n"
            "  --request-rate R          mean arrivals per second, or inf (default inf)\n"
            "  --max-concurrency C       requests in flight at most (default: no limit)\n"
            "  --random-input-len L      prompt tokens (default 128)\n"
            "  --random-output-len L     generated tokens (default 64)\n"
            "  --random-range-ratio R    lengths uniform in [L(1-R), L(1+R)] (default 0)\n"
            "  --seed S                  prompts and arrival times (default 0)\n"
            "  --label NAME              name of this run in the output\n"
            "  --json FILE               also write the results (and per-request times) as JSON\n"
            "  --json-schema FILE        grpc only: constrain every request to this JSON\n"
            "                            Schema (constrained decoding; after the grammar's\n"
            "                            end, the output goes on unconstrained to its length).\n"
            "                            Refused with openai: response_format is chat-only\n"
            "  -h, --help                this text\n\n"
            "Failed requests are counted (the first error is printed); the exit status is 1\n"
            "only when none succeeded.\n",
            DSR1_BENCH_CURL ? ""
                            : "\n                            (openai: not built in: no libcurl)");
}

/* 0 ok, 1 help printed, 2 usage error. */
static int parse(int argc, char **argv, serve_opts *o)
{
    static const struct option opts[] = {{"backend", required_argument, 0, 'b'},
                                         {"server", required_argument, 0, 's'},
                                         {"base-url", required_argument, 0, 'u'},
                                         {"vocab-size", required_argument, 0, 'V'},
                                         {"api-key", required_argument, 0, 'k'},
                                         {"num-prompts", required_argument, 0, 'n'},
                                         {"request-rate", required_argument, 0, 'r'},
                                         {"max-concurrency", required_argument, 0, 'c'},
                                         {"random-input-len", required_argument, 0, 'i'},
                                         {"random-output-len", required_argument, 0, 'o'},
                                         {"random-range-ratio", required_argument, 0, 'R'},
                                         {"seed", required_argument, 0, 'S'},
                                         {"label", required_argument, 0, 'l'},
                                         {"json", required_argument, 0, 'j'},
                                         {"json-schema", required_argument, 0, 'J'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    *o = (serve_opts){.server = "127.0.0.1:50051",
                      .base_url = "http://127.0.0.1:8000",
                      .api_key = getenv("DSR1_API_KEY"),
                      .num_prompts = 100,
                      .input_len = 128,
                      .output_len = 64,
                      .request_rate = INFINITY};
    int c, end, bad = 0;
    optind = 1;
    while ((c = dsr1__bench_getopt(CMD, argc, argv, "h", opts, usage, &end)) != -1) {
        switch (c) {
        case 'b':
            if (!strcmp(optarg, "grpc")) {
                o->backend = BACKEND_GRPC;
            } else if (!strcmp(optarg, "openai")) {
                o->backend = BACKEND_OPENAI;
            } else {
                fprintf(stderr, CMD ": --backend '%s': expected grpc or openai\n", optarg);
                bad = 1;
            }
            break;
        case 's':
            o->server = optarg;
            break;
        case 'u':
            o->base_url = optarg;
            break;
        case 'V':
            bad |= dsr1_arg_long(CMD, "--vocab-size", optarg, 4, 1 << 30, &o->vocab_size);
            break;
        case 'k':
            o->api_key = optarg;
            break;
        case 'n':
            bad |= dsr1_arg_long(CMD, "--num-prompts", optarg, 1, 1000000, &o->num_prompts);
            break;
        case 'r':
            bad |= dsr1_arg_double(CMD, "--request-rate", optarg, 1e-6, INFINITY, &o->request_rate);
            break;
        case 'c':
            bad |= dsr1_arg_long(CMD, "--max-concurrency", optarg, 1, 100000, &o->max_concurrency);
            break;
        case 'i':
            bad |= dsr1_arg_long(CMD, "--random-input-len", optarg, 1, 1 << 24, &o->input_len);
            break;
        case 'o':
            bad |= dsr1_arg_long(CMD, "--random-output-len", optarg, 1, 1 << 24, &o->output_len);
            break;
        case 'R':
            bad |= dsr1_arg_double(CMD, "--random-range-ratio", optarg, 0, 1, &o->range_ratio);
            break;
        case 'S':
            bad |= dsr1_arg_u64(CMD, "--seed", optarg, &o->seed);
            break;
        case 'l':
            o->label = optarg;
            break;
        case 'j':
            o->json = optarg;
            break;
        case 'J':
            o->schema_path = optarg;
            break;
        }
    }
    if (end) return end;
    if (!bad && o->backend == BACKEND_OPENAI && !DSR1_BENCH_CURL) {
        fprintf(stderr, CMD ": --backend openai is not built in (no libcurl: install "
                            "libcurl4-openssl-dev and reconfigure)\n");
        bad = 1;
    }
    if (!bad && o->backend == BACKEND_OPENAI && o->schema_path) {
        fprintf(stderr, CMD ": --json-schema needs --backend grpc (the HTTP API's "
                            "response_format is for /v1/chat/completions only)\n");
        bad = 1;
    }
    if (!bad && o->backend == BACKEND_OPENAI && strncmp(o->base_url, "http://", 7) &&
        strncmp(o->base_url, "https://", 8)) {
        fprintf(stderr, CMD ": --base-url '%s': expected http://HOST:PORT\n", o->base_url);
        bad = 1;
    }
    o->target = o->backend == BACKEND_OPENAI ? o->base_url : o->server;
    return bad ? 2 : 0;
}

/* The whole of a text file, NUL-terminated; NULL (message printed) on error. */
static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, CMD ": --json-schema %s: %s\n", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0, n;
    do {
        if (len + 4096 + 1 > cap) {
            char *b = realloc(buf, cap = 2 * cap + 4096 + 1);
            if (!b) break;
            buf = b;
        }
        n = fread(buf + len, 1, 4096, f);
        len += n;
    } while (n > 0);
    const bool bad = ferror(f) || !buf;
    fclose(f);
    if (bad) {
        fprintf(stderr, CMD ": --json-schema %s: cannot read it\n", path);
        free(buf);
        return NULL;
    }
    buf[len] = '\0';
    return buf;
}

/* A length uniform in [len (1 - r), len (1 + r)], at least 1. */
static int draw_len(long len, double r, uint64_t *s)
{
    long lo = (long)floor(len * (1 - r)), hi = (long)ceil(len * (1 + r));
    if (lo < 1) lo = 1;
    if (hi < lo) hi = lo;
    return (int)(lo + (long)(uniform01(s) * (double)(hi - lo + 1)) % (hi - lo + 1));
}

static void free_requests(serve_req *reqs, long n)
{
    for (long i = 0; reqs && i < n; i++) {
        free(reqs[i].prompt);
        free(reqs[i].itl);
    }
    free(reqs);
}

/* Prompts of ordinary (non-special) token ids and Poisson arrival times; one more request
 * at the end for the warm-up. */
static serve_req *make_requests(const serve_opts *o, int vocab)
{
    serve_req *reqs = calloc(o->num_prompts + 1, sizeof(*reqs));
    uint64_t s = o->seed * 0x9E3779B97F4A7C15ull + 1;
    int top = vocab < 128000 ? vocab : 128000; /* R1's byte-level BPE ids; above: special */
    double t = 0;
    for (long i = 0; reqs && i <= o->num_prompts; i++) {
        serve_req *r = &reqs[i];
        r->n_prompt = draw_len(o->input_len, o->range_ratio, &s);
        r->max_tokens = draw_len(o->output_len, o->range_ratio, &s);
        r->prompt = malloc(sizeof(int32_t) * r->n_prompt);
        r->itl = malloc(sizeof(double) * r->max_tokens);
        if (!r->prompt || !r->itl) {
            free_requests(reqs, i + 1);
            return NULL;
        }
        for (int k = 0; k < r->n_prompt; k++)
            r->prompt[k] = 3 + (int32_t)(dsr1__bench_rand(&s) % (top - 3));
        r->arrival = t;
        if (isfinite(o->request_rate)) t += -log(1 - uniform01(&s)) / o->request_rate;
    }
    return reqs;
}

/* One streamed Generate; fills r's measurements. */
static void run_request_grpc(serve_run *run, serve_req *r)
{
    Dsr1__V1__TokenIds ids = DSR1__V1__TOKEN_IDS__INIT;
    ids.ids = r->prompt;
    ids.n_ids = r->n_prompt;
    Dsr1__V1__Input input = DSR1__V1__INPUT__INIT;
    input.kind_case = DSR1__V1__INPUT__KIND_TOKEN_IDS;
    input.token_ids = &ids;
    Dsr1__V1__SamplingParams sp = DSR1__V1__SAMPLING_PARAMS__INIT;
    sp.opt_temperature_case = DSR1__V1__SAMPLING_PARAMS__OPT_TEMPERATURE_TEMPERATURE;
    sp.temperature = 0;
    sp.opt_max_tokens_case = DSR1__V1__SAMPLING_PARAMS__OPT_MAX_TOKENS_MAX_TOKENS;
    sp.max_tokens = r->max_tokens;
    sp.ignore_eos = true;
    if (run->o->schema) {
        sp.constraint_case = DSR1__V1__SAMPLING_PARAMS__CONSTRAINT_JSON_SCHEMA;
        sp.json_schema = run->o->schema;
    }
    Dsr1__V1__GenerateRequest req = DSR1__V1__GENERATE_REQUEST__INIT;
    req.input = &input;
    req.sampling = &sp;

    r->sent = now_s();
    double last = 0;
    dsr1_rpc_stream *s = NULL;
    Dsr1__V1__GenerateResponse *m = NULL;
    dsr1_status st = dsr1_rpc_stream_open(run->client, DSR1_RPC_GENERATE, &req.base,
                                          &dsr1__v1__generate_response__descriptor, 0, &s);
    while (!st && !(st = dsr1_rpc_stream_next(s, (ProtobufCMessage **)&m)) && m) {
        double t = now_s();
        if (m->kind_case == DSR1__V1__GENERATE_RESPONSE__KIND_DELTA && m->delta->n_token_ids) {
            if (last == 0)
                r->ttft = t - r->sent;
            else if (r->n_itl < r->max_tokens)
                r->itl[r->n_itl++] = t - last;
            last = t;
        }
        if (m->kind_case == DSR1__V1__GENERATE_RESPONSE__KIND_FINAL && m->final->usage) {
            const Dsr1__V1__Completion *f = m->final;
            r->in_tokens = f->usage->prompt_tokens;
            r->out_tokens = f->usage->completion_tokens;
            r->ok = f->finish_reason == DSR1__V1__FINISH_REASON__LENGTH ||
                    f->finish_reason == DSR1__V1__FINISH_REASON__STOP;
            if (!r->ok)
                snprintf(r->error, sizeof(r->error), "finish reason %d%s%s", f->finish_reason,
                         *f->error ? ": " : "", f->error);
        }
        protobuf_c_message_free_unpacked(&m->base, NULL);
    }
    dsr1_rpc_stream_close(s);
    r->end = now_s();
    r->e2e = r->end - r->sent;
    if (st)
        snprintf(r->error, sizeof(r->error), "%s", dsr1_errmsg());
    else if (!r->ok && !r->error[0])
        snprintf(r->error, sizeof(r->error), "no final message");
    r->ok = r->ok && !st;
}

#if DSR1_BENCH_CURL
/* ---- the openai backend: POST /v1/completions, streamed as Server-Sent Events ---------- */

typedef struct {
    char *p;
    size_t len, cap;
} http_buf;

static bool buf_add(http_buf *b, const char *p, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) return false;
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = '\0';
    return true;
}

/* One streamed completion's state, fed by curl's write callback. */
typedef struct {
    serve_req *r;
    http_buf line; /* the unfinished line */
    http_buf body; /* the first bytes as received (an error's body) */
    double last;   /* time of the last chunk with text */
    bool done, finished, failed;
} http_stream;

/* "error.message" of an error object or body, else the text itself (cut). */
static void error_text(const char *text, char *out, size_t cap)
{
    json_t *o = json_loads(text, 0, NULL);
    const char *m = json_string_value(json_object_get(json_object_get(o, "error"), "message"));
    snprintf(out, cap, "%s", m ? m : text);
    json_decref(o);
}

/* One `data: ` payload: a chunk (text: a token event; finish_reason; usage), an error
 * event, or [DONE]. */
static void sse_data(http_stream *hs, const char *data, double t)
{
    serve_req *r = hs->r;
    if (!strcmp(data, "[DONE]")) {
        hs->done = true;
        return;
    }
    json_t *o = json_loads(data, JSON_ALLOW_NUL, NULL); /* a token's text may be "\u0000" */
    if (!o) {
        snprintf(r->error, sizeof(r->error), "a chunk that is not JSON: %.150s", data);
        hs->failed = true;
        return;
    }
    json_t *err = json_object_get(o, "error");
    if (err) {
        const char *m = json_string_value(json_object_get(err, "message"));
        snprintf(r->error, sizeof(r->error), "error event: %s", m ? m : "(no message)");
        hs->failed = true;
    }
    json_t *ch = json_array_get(json_object_get(o, "choices"), 0);
    if (json_string_length(json_object_get(ch, "text"))) {
        if (hs->last == 0)
            r->ttft = t - r->sent;
        else if (r->n_itl < r->max_tokens)
            r->itl[r->n_itl++] = t - hs->last;
        hs->last = t;
    }
    const char *finish = json_string_value(json_object_get(ch, "finish_reason"));
    if (finish) {
        hs->finished = !strcmp(finish, "length") || !strcmp(finish, "stop");
        if (!hs->finished) snprintf(r->error, sizeof(r->error), "finish reason %.40s", finish);
    }
    json_t *usage = json_object_get(o, "usage");
    if (json_is_object(usage)) {
        r->in_tokens = (int)json_integer_value(json_object_get(usage, "prompt_tokens"));
        r->out_tokens = (int)json_integer_value(json_object_get(usage, "completion_tokens"));
    }
    json_decref(o);
}

static size_t sse_write(char *p, size_t size, size_t n, void *arg)
{
    http_stream *hs = arg;
    const double t = now_s();
    n *= size;
    if (hs->body.len < 4096 && !buf_add(&hs->body, p, n < 4096 ? n : 4096)) return 0;
    for (size_t i = 0; i < n;) {
        const char *nl = memchr(p + i, '\n', n - i);
        size_t k = nl ? (size_t)(nl - (p + i)) : n - i;
        if (!buf_add(&hs->line, p + i, k)) return 0;
        i += k;
        if (!nl) break;
        i++; /* the newline: a whole line */
        char *line = hs->line.p;
        size_t len = hs->line.len;
        if (len && line[len - 1] == '\r') line[--len] = '\0';
        if (len > 5 && !strncmp(line, "data:", 5)) sse_data(hs, line + 5 + (line[5] == ' '), t);
        hs->line.len = 0;
    }
    return n;
}

/* The JSON body of r's request. */
static char *completion_body(const serve_req *r)
{
    json_t *ids = json_array();
    for (int k = 0; k < r->n_prompt; k++) json_array_append_new(ids, json_integer(r->prompt[k]));
    json_t *o = json_pack("{s:o, s:i, s:i, s:b, s:b, s:{s:b}}", "prompt", ids, "max_tokens",
                          r->max_tokens, "temperature", 0, "ignore_eos", 1, "stream", 1,
                          "stream_options", "include_usage", 1);
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return body;
}

/* Content-Type, no `Expect: 100-continue` (a round trip), and the key. */
static struct curl_slist *http_headers(const serve_opts *o)
{
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    h = curl_slist_append(h, "Expect:");
    if (o->api_key && *o->api_key) {
        char auth[512];
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", o->api_key);
        h = curl_slist_append(h, auth);
    }
    return h;
}

/* One streamed completion on the thread's handle h (its connection kept alive). */
static void run_request_http(serve_run *run, serve_req *r, CURL *h)
{
    char *body = completion_body(r);
    struct curl_slist *headers = http_headers(run->o);
    http_stream hs = {.r = r};
    if (!h || !body || !headers) {
        snprintf(r->error, sizeof(r->error), "out of memory");
        r->end = r->sent = now_s();
        free(body);
        curl_slist_free_all(headers);
        return;
    }
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, run->o->completions_url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sse_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &hs);
    r->sent = now_s();
    CURLcode cc = curl_easy_perform(h);
    r->end = now_s();
    r->e2e = r->end - r->sent;
    long code = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    if (cc != CURLE_OK) {
        if (!r->error[0]) snprintf(r->error, sizeof(r->error), "%s", curl_easy_strerror(cc));
    } else if (code != 200) {
        char msg[160];
        error_text(hs.body.p ? hs.body.p : "", msg, sizeof(msg));
        snprintf(r->error, sizeof(r->error), "HTTP %ld: %s", code, msg);
    } else if (!hs.failed && !r->error[0]) {
        if (!hs.finished)
            snprintf(r->error, sizeof(r->error), "no finish_reason");
        else if (!hs.done)
            snprintf(r->error, sizeof(r->error), "no data: [DONE]");
        else if (!r->out_tokens)
            snprintf(r->error, sizeof(r->error), "no usage");
    }
    r->ok = cc == CURLE_OK && code == 200 && !hs.failed && !r->error[0];
    free(hs.line.p);
    free(hs.body.p);
    free(body);
    curl_slist_free_all(headers);
}

/* GET /v1/models: the context length (max_model_len of the first model). */
static int http_model_limits(const serve_opts *o, int *max_context)
{
    char url[1024];
    snprintf(url, sizeof(url), "%.*s/v1/models",
             (int)(strlen(o->completions_url) - strlen("/v1/completions")), o->completions_url);
    CURL *h = curl_easy_init();
    struct curl_slist *headers = http_headers(o);
    http_stream hs = {0};
    if (!h || !headers) {
        fprintf(stderr, CMD ": out of memory\n");
        curl_slist_free_all(headers);
        if (h) curl_easy_cleanup(h);
        return 1;
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sse_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &hs);
    CURLcode cc = curl_easy_perform(h);
    long code = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    int rc = 0;
    if (cc != CURLE_OK) {
        fprintf(stderr, CMD ": %s: %s\n", url, curl_easy_strerror(cc));
        rc = 1;
    } else if (code != 200) {
        char msg[300];
        error_text(hs.body.p ? hs.body.p : "", msg, sizeof(msg));
        fprintf(stderr, CMD ": %s: HTTP %ld: %s\n", url, code, msg);
        rc = 1;
    } else {
        json_t *m = json_loads(hs.body.p ? hs.body.p : "", 0, NULL);
        json_t *len =
            json_object_get(json_array_get(json_object_get(m, "data"), 0), "max_model_len");
        *max_context = json_is_integer(len) ? (int)json_integer_value(len) : 0;
        json_decref(m);
    }
    free(hs.line.p);
    free(hs.body.p);
    curl_slist_free_all(headers);
    curl_easy_cleanup(h);
    return rc;
}
#endif

/* One request on the backend; h: the thread's curl handle (openai). */
static void run_request(serve_run *run, serve_req *r, void *h)
{
#if DSR1_BENCH_CURL
    if (run->o->backend == BACKEND_OPENAI) {
        run_request_http(run, r, h);
        return;
    }
#endif
    (void)h;
    run_request_grpc(run, r);
}

/* The thread's connection to the server: a curl easy handle (openai; NULL for grpc). */
static void *thread_handle(const serve_run *run)
{
#if DSR1_BENCH_CURL
    if (run->o->backend == BACKEND_OPENAI) return curl_easy_init();
#endif
    (void)run;
    return NULL;
}

static void thread_handle_free(void *h)
{
#if DSR1_BENCH_CURL
    if (h) curl_easy_cleanup(h);
#endif
    (void)h;
}

/* Returns its handle, so that its connection stays open until every thread is done (as a
 * client's connection pool would; closing the first while others stream would also time
 * the server's closes). */
static void *worker(void *arg)
{
    serve_run *run = arg;
    void *h = thread_handle(run);
    long i;
    while ((i = atomic_fetch_add(&run->next, 1)) < run->o->num_prompts) {
        serve_req *r = &run->reqs[i];
        double wait = run->t0 + r->arrival - now_s();
        if (wait > 0) {
            struct timespec ts = {(time_t)wait, (long)((wait - floor(wait)) * 1e9)};
            nanosleep(&ts, NULL);
        }
        run_request(run, r, h);
    }
    return h;
}

/* ---- results ------------------------------------------------------------------------ */

typedef struct {
    double mean, median, p99;
} stat3;

typedef struct {
    long completed, failed, in_tokens, out_tokens;
    double duration;
    stat3 ttft, tpot, itl, e2e; /* seconds */
} serve_summary;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Linear interpolation between the closest ranks, as numpy.percentile. v sorted. */
static double percentile(const double *v, size_t n, double p)
{
    if (!n) return 0;
    double pos = p / 100 * (double)(n - 1);
    size_t lo = (size_t)pos;
    return lo + 1 < n ? v[lo] + (v[lo + 1] - v[lo]) * (pos - (double)lo) : v[lo];
}

/* Sorts v. */
static stat3 stats(double *v, size_t n)
{
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += v[i];
    qsort(v, n, sizeof(*v), cmp_double);
    return (stat3){n ? sum / (double)n : 0, percentile(v, n, 50), percentile(v, n, 99)};
}

static void summarise(const serve_run *run, serve_summary *out)
{
    const size_t n = (size_t)run->o->num_prompts;
    size_t n_itl = 0, k = 0, kt = 0, ki = 0;
    for (size_t i = 0; i < n; i++) n_itl += run->reqs[i].n_itl;
    double *ttft = calloc(n, sizeof(double)), *tpot = calloc(n, sizeof(double));
    double *e2e = calloc(n, sizeof(double)), *itl = calloc(n_itl + 1, sizeof(double));
    *out = (serve_summary){0};
    double last = run->t0;
    for (size_t i = 0; ttft && tpot && e2e && itl && i < n; i++) {
        const serve_req *r = &run->reqs[i];
        if (r->end > last) last = r->end;
        if (!r->ok) {
            out->failed++;
            continue;
        }
        out->completed++;
        out->in_tokens += r->in_tokens;
        out->out_tokens += r->out_tokens;
        ttft[k] = r->ttft;
        e2e[k++] = r->e2e;
        if (r->out_tokens > 1) tpot[kt++] = (r->e2e - r->ttft) / (r->out_tokens - 1);
        for (int j = 0; j < r->n_itl; j++) itl[ki++] = r->itl[j];
    }
    out->duration = last - run->t0;
    if (ttft && tpot && e2e && itl) {
        out->ttft = stats(ttft, k);
        out->tpot = stats(tpot, kt);
        out->itl = stats(itl, ki);
        out->e2e = stats(e2e, k);
    }
    free(ttft);
    free(tpot);
    free(e2e);
    free(itl);
}

/* vLLM's layout: "Mean TTFT (ms):" etc. under a centred title. */
static void print_stat(const char *title, const char *abbr, stat3 s)
{
    char head[51], line[64];
    int pad = (50 - (int)strlen(title)) / 2;
    memset(head, '-', 50);
    head[50] = '\0';
    memcpy(head + pad, title, strlen(title));
    printf("%s\n", head);
    const char *names[3] = {"Mean", "Median", "P99"};
    const double v[3] = {s.mean, s.median, s.p99};
    for (int i = 0; i < 3; i++) {
        snprintf(line, sizeof(line), "%s %s (ms):", names[i], abbr);
        printf("%-40s %-10.2f\n", line, v[i] * 1e3);
    }
}

static void print_summary(const serve_opts *o, const serve_summary *m, const serve_req *reqs)
{
    printf("============ Serving Benchmark Result ============\n");
    if (o->label) printf("%-40s %s\n", "Label:", o->label);
    printf("%-40s %.4g\n", "Request rate (req/s):", o->request_rate);
    printf("%-40s %ld\n",
           "Max concurrency:", o->max_concurrency ? o->max_concurrency : o->num_prompts);
    printf("%-40s %ld\n", "Successful requests:", m->completed);
    printf("%-40s %ld\n", "Failed requests:", m->failed);
    printf("%-40s %-10.2f\n", "Benchmark duration (s):", m->duration);
    printf("%-40s %ld\n", "Total input tokens:", m->in_tokens);
    printf("%-40s %ld\n", "Total generated tokens:", m->out_tokens);
    printf("%-40s %-10.2f\n", "Request throughput (req/s):", m->completed / m->duration);
    printf("%-40s %-10.2f\n", "Output token throughput (tok/s):", m->out_tokens / m->duration);
    printf("%-40s %-10.2f\n",
           "Total token throughput (tok/s):", (m->in_tokens + m->out_tokens) / m->duration);
    print_stat("Time to First Token", "TTFT", m->ttft);
    print_stat("Time per Output Token (excl. 1st token)", "TPOT", m->tpot);
    print_stat("Inter-token Latency", "ITL", m->itl);
    print_stat("End-to-end Latency", "E2EL", m->e2e);
    printf("==================================================\n");
    for (long i = 0; i < o->num_prompts; i++)
        if (!reqs[i].ok) {
            fprintf(stderr, CMD ": request %ld failed: %s\n", i, reqs[i].error);
            break;
        }
}

static void set_stat(json_t *root, const char *abbr, stat3 s)
{
    char key[32];
    const char *names[3] = {"mean", "median", "p99"};
    const double v[3] = {s.mean, s.median, s.p99};
    for (int i = 0; i < 3; i++) {
        snprintf(key, sizeof(key), "%s_%s_ms", names[i], abbr);
        json_object_set_new(root, key, json_real(v[i] * 1e3));
    }
}

/* The summary with vLLM's key names, and each request's lengths and times. */
static int write_json(const serve_opts *o, const serve_summary *m, const serve_req *reqs)
{
    json_t *root =
        json_pack("{s:s?,s:s,s:s,s:I,s:o,s:I,s:I,s:I,s:f,s:I,s:I,s:f,s:I,s:I,s:f,s:f,s:f}", "label",
                  o->label, "backend", o->backend == BACKEND_OPENAI ? "openai" : "grpc", "server",
                  o->target, "num_prompts", (json_int_t)o->num_prompts, "request_rate",
                  isfinite(o->request_rate) ? json_real(o->request_rate) : json_string("inf"),
                  "max_concurrency", (json_int_t)o->max_concurrency, "random_input_len",
                  (json_int_t)o->input_len, "random_output_len", (json_int_t)o->output_len,
                  "random_range_ratio", o->range_ratio, "completed", (json_int_t)m->completed,
                  "failed", (json_int_t)m->failed, "duration", m->duration, "total_input_tokens",
                  (json_int_t)m->in_tokens, "total_output_tokens", (json_int_t)m->out_tokens,
                  "request_throughput", m->completed / m->duration, "output_throughput",
                  m->out_tokens / m->duration, "total_token_throughput",
                  (m->in_tokens + m->out_tokens) / m->duration);
    set_stat(root, "ttft", m->ttft);
    set_stat(root, "tpot", m->tpot);
    set_stat(root, "itl", m->itl);
    set_stat(root, "e2el", m->e2e);
    json_t *in = json_array(), *out = json_array(), *ttft = json_array(), *e2e = json_array(),
           *err = json_array();
    for (long i = 0; i < o->num_prompts; i++) {
        json_array_append_new(in, json_integer(reqs[i].in_tokens));
        json_array_append_new(out, json_integer(reqs[i].out_tokens));
        json_array_append_new(ttft, json_real(reqs[i].ttft));
        json_array_append_new(e2e, json_real(reqs[i].e2e));
        json_array_append_new(err, json_string(reqs[i].error));
    }
    json_object_set_new(root, "input_lens", in);
    json_object_set_new(root, "output_lens", out);
    json_object_set_new(root, "ttfts", ttft);
    json_object_set_new(root, "e2els", e2e);
    json_object_set_new(root, "errors", err);
    int rc = json_dump_file(root, o->json, JSON_INDENT(2));
    if (rc) fprintf(stderr, CMD ": cannot write %s\n", o->json);
    json_decref(root);
    return rc ? 1 : 0;
}

/* ---- main ----------------------------------------------------------------------------- */

/* The model's vocabulary and context, to make prompts that fit. */
static int model_limits(dsr1_rpc_client *c, int *vocab, int *max_context)
{
    Dsr1__V1__GetModelInfoRequest req = DSR1__V1__GET_MODEL_INFO_REQUEST__INIT;
    Dsr1__V1__ModelInfo *mi;
    if (dsr1_rpc_call(c, DSR1_RPC_GET_MODEL_INFO, &req.base, &dsr1__v1__model_info__descriptor, 30,
                      (ProtobufCMessage **)&mi)) {
        fprintf(stderr, CMD ": %s\n", dsr1_errmsg());
        return 1;
    }
    *vocab = mi->vocab_size;
    *max_context = mi->limits ? mi->limits->max_context_length : 0;
    protobuf_c_message_free_unpacked(&mi->base, NULL);
    return 0;
}

/* Starts the threads and waits for every request. */
static void run_all(serve_run *run, long threads)
{
    pthread_t *tid = calloc(threads, sizeof(*tid));
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 512 << 10);
    long started = 0;
    run->t0 = now_s();
    while (tid && started < threads && !pthread_create(&tid[started], &attr, worker, run))
        started++;
    pthread_attr_destroy(&attr);
    if (started < threads) { /* the started ones finish the work, slower */
        fprintf(stderr, CMD ": started %ld of %ld threads\n", started, threads);
        if (!started) thread_handle_free(worker(run));
    }
    void **h = calloc(started ? started : 1, sizeof(*h));
    for (long i = 0; i < started; i++) pthread_join(tid[i], h ? &h[i] : NULL);
    for (long i = 0; h && i < started; i++) thread_handle_free(h[i]);
    free(h);
    free(tid);
}

/* A warm-up request (not measured: first-call costs, as vLLM's initial test run), then the
 * run; prints and writes the results. Returns the exit status. */
static int measure(serve_run *run)
{
    const serve_opts *o = run->o;
    serve_req *warm = &run->reqs[o->num_prompts];
    void *h = thread_handle(run);
    run_request(run, warm, h);
    thread_handle_free(h);
    if (!warm->ok) {
        fprintf(stderr, CMD ": the warm-up request failed: %s\n", warm->error);
        return 1;
    }
    long threads = o->max_concurrency && o->max_concurrency < o->num_prompts ? o->max_concurrency
                                                                             : o->num_prompts;
    fprintf(stderr, CMD ": %ld requests, %ld in flight at most, to %s ...\n", o->num_prompts,
            threads, o->target);
    run_all(run, threads);
    serve_summary m;
    summarise(run, &m);
    print_summary(o, &m, run->reqs);
    int rc = o->json ? write_json(o, &m, run->reqs) : 0;
    return rc ? rc : m.completed ? 0 : 1; /* failed requests are reported, not fatal */
}

#if DSR1_BENCH_CURL
/* The openai backend's URLs from --base-url (a trailing / or /v1 may be there). */
static int http_setup(serve_opts *o)
{
    size_t n = strlen(o->base_url);
    while (n && o->base_url[n - 1] == '/') n--;
    if (n >= 3 && !strncmp(o->base_url + n - 3, "/v1", 3)) n -= 3;
    o->completions_url = malloc(n + sizeof("/v1/completions"));
    if (!o->completions_url) {
        fprintf(stderr, CMD ": out of memory\n");
        return 1;
    }
    memcpy(o->completions_url, o->base_url, n);
    strcpy(o->completions_url + n, "/v1/completions");
    return 0;
}
#endif

/* Connects and asks the model's limits. */
static int connect_backend(serve_opts *o, dsr1_rpc_client **client, int *vocab, int *max_context)
{
    if (o->backend == BACKEND_GRPC) {
        if (dsr1_rpc_client_create(o->server, o->api_key, client)) {
            fprintf(stderr, CMD ": %s\n", dsr1_errmsg());
            return 1;
        }
        int rc = model_limits(*client, vocab, max_context);
        if (o->vocab_size) *vocab = (int)o->vocab_size;
        return rc;
    }
#if DSR1_BENCH_CURL
    if (curl_global_init(CURL_GLOBAL_DEFAULT)) {
        fprintf(stderr, CMD ": cannot initialise libcurl\n");
        return 1;
    }
    *vocab = o->vocab_size ? (int)o->vocab_size : 129280; /* R1's */
    return http_setup(o) ? 1 : http_model_limits(o, max_context);
#else
    return 1; /* refused by parse */
#endif
}

int dsr1__bench_serve(int argc, char **argv)
{
    serve_opts o;
    int rc = parse(argc, argv, &o);
    if (rc) return rc == 1 ? 0 : rc;
    if (o.schema_path && !(o.schema = read_text(o.schema_path))) return 2;
    dsr1_rpc_client *client = NULL;
    int vocab = 0, max_context = 0;
    rc = connect_backend(&o, &client, &vocab, &max_context);
    long longest = (long)ceil(o.input_len * (1 + o.range_ratio)) +
                   (long)ceil(o.output_len * (1 + o.range_ratio));
    if (!rc && max_context && longest > max_context) {
        fprintf(stderr, CMD ": input + output up to %ld tokens: beyond the context (%d)\n", longest,
                max_context);
        rc = 2;
    }
    serve_run run = {.o = &o, .client = client};
    if (!rc && !(run.reqs = make_requests(&o, vocab))) {
        fprintf(stderr, CMD ": out of memory\n");
        rc = 1;
    }
    if (!rc) rc = measure(&run);
    free_requests(run.reqs, o.num_prompts + 1);
    if (client) dsr1_rpc_client_destroy(client);
#if DSR1_BENCH_CURL
    if (o.backend == BACKEND_OPENAI) curl_global_cleanup();
#endif
    free(o.completions_url);
    free(o.schema);
    return rc;
}
