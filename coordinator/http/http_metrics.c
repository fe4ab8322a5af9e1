/* /metrics: the Prometheus text format (version 0.0.4), with vLLM's `vllm:` names and
 * meanings where vLLM has the metric: the scheduler's state (running, waiting, KV cache
 * usage, preemptions) read at scrape time, and per-request counters and histograms
 * (tokens, prefix cache hits, TTFT, inter-token latency, end-to-end and queue time)
 * collected from the final events of the requests this HTTP server submitted. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batches.h"
#include "http_internal.h"

static const double TTFT_BOUNDS[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25, 0.5,
                                     0.75,  1.0,   2.5,  5.0,  7.5,  10.0, 20.0, 40.0, 80.0};
static const double ITL_BOUNDS[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4,
                                    0.5,  0.75,  1.0,  2.5,   5.0, 7.5,  10.0, 20.0, 40.0};
static const double E2E_BOUNDS[] = {0.3,  0.5,  0.8,  1.0,  1.5,  2.0,  2.5,   5.0,   10.0,
                                    15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0};
static const double LEN_BOUNDS[] = {1,   2,    5,    10,   20,    50,    100,   200,
                                    500, 1000, 2000, 5000, 10000, 20000, 50000, 100000};

static void hist_init(http_hist *h, const double *bounds, int n)
{
    memset(h, 0, sizeof(*h));
    h->bounds = bounds;
    h->n = n;
}

static void hist_add(http_hist *h, double x)
{
    for (int i = 0; i < h->n; i++)
        if (x <= h->bounds[i]) h->counts[i]++;
    h->count++;
    h->sum += x;
}

#define INIT(h, b) hist_init(&m->h, b, (int)(sizeof(b) / sizeof(*(b))))

void dsr1__http_metrics_init(http_metrics *m)
{
    memset(m, 0, sizeof(*m));
    pthread_mutex_init(&m->mu, NULL);
    INIT(ttft, TTFT_BOUNDS);
    INIT(itl, ITL_BOUNDS);
    INIT(e2e, E2E_BOUNDS);
    INIT(queue, E2E_BOUNDS);
    INIT(prompt_len, LEN_BOUNDS);
    INIT(gen_len, LEN_BOUNDS);
}

void dsr1__http_metrics_free(http_metrics *m)
{
    pthread_mutex_destroy(&m->mu);
}

void dsr1__http_metrics_itl(http_metrics *m, double seconds)
{
    pthread_mutex_lock(&m->mu);
    hist_add(&m->itl, seconds);
    pthread_mutex_unlock(&m->mu);
}

void dsr1__http_metrics_final(http_metrics *m, const dsr1_sched_event *ev)
{
    pthread_mutex_lock(&m->mu);
    if (ev->completion_tokens > 0) hist_add(&m->ttft, ev->ttft_s);
    hist_add(&m->e2e, ev->e2e_s);
    hist_add(&m->queue, ev->queue_s);
    hist_add(&m->prompt_len, ev->prompt_tokens);
    hist_add(&m->gen_len, ev->completion_tokens);
    m->prompt_tokens += (uint64_t)ev->prompt_tokens;
    m->generation_tokens += (uint64_t)ev->completion_tokens;
    m->prefix_queries += (uint64_t)ev->prompt_tokens;
    m->prefix_hits += (uint64_t)ev->cached_tokens;
    if (ev->finish >= 0 && ev->finish < 5) m->finished[ev->finish]++;
    pthread_mutex_unlock(&m->mu);
}

void dsr1__http_metrics_status(http_metrics *m, int status)
{
    static const int codes[] = {200, 400, 401, 404, 413, 429};
    int k = -1;
    for (int i = 0; i < 6; i++)
        if (status == codes[i]) k = i;
    pthread_mutex_lock(&m->mu);
    if (k >= 0)
        m->responses[k]++;
    else
        m->other_responses++;
    pthread_mutex_unlock(&m->mu);
}

typedef struct {
    char *p;
    size_t n, cap;
    bool oom;
} out;

__attribute__((format(printf, 2, 3))) static void put(out *o, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(o->p + o->n, o->cap - o->n, fmt, ap);
        va_end(ap);
        if (k < 0) return;
        if ((size_t)k < o->cap - o->n) {
            o->n += (size_t)k;
            return;
        }
        size_t cap = 2 * o->cap + (size_t)k;
        char *p = realloc(o->p, cap);
        if (!p) {
            o->oom = true;
            return;
        }
        o->p = p;
        o->cap = cap;
    }
}

static void header(out *o, const char *name, const char *type, const char *help)
{
    put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void gauge(out *o, const char *labels, const char *name, const char *help, double v)
{
    header(o, name, "gauge", help);
    put(o, "%s{%s} %.17g\n", name, labels, v);
}

static void counter(out *o, const char *labels, const char *name, const char *help, double v)
{
    header(o, name, "counter", help);
    put(o, "%s{%s} %.17g\n", name, labels, v);
}

static void histogram(out *o, const char *labels, const char *name, const char *help,
                      const http_hist *h)
{
    header(o, name, "histogram", help);
    for (int i = 0; i < h->n; i++)
        put(o, "%s_bucket{%s,le=\"%g\"} %llu\n", name, labels, h->bounds[i],
            (unsigned long long)h->counts[i]);
    put(o, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, labels, (unsigned long long)h->count);
    put(o, "%s_sum{%s} %.17g\n", name, labels, h->sum);
    put(o, "%s_count{%s} %llu\n", name, labels, (unsigned long long)h->count);
}

char *dsr1__http_metrics_text(dsr1_http_server *s, size_t *len)
{
    dsr1_sched_info info;
    dsr1_sched_get_info(s->p.sched, &info);
    out o = {malloc(16384), 0, 16384, false};
    if (!o.p) return NULL;
    o.p[0] = '\0';
    char labels[300];
    snprintf(labels, sizeof(labels), "model_name=\"%.200s\"", s->model_name);
    for (char *q = labels + 12; *q && q[1]; q++) /* no escapes needed in the label value */
        if (*q == '"' || *q == '\\' || *q == '\n') *q = '_';
    gauge(&o, labels, "vllm:num_requests_running", "Requests in the running set (all frontends).",
          info.running);
    gauge(&o, labels, "vllm:num_requests_waiting",
          "Requests waiting to be scheduled (all "
          "frontends).",
          info.queued);
    gauge(&o, labels, "vllm:kv_cache_usage_perc",
          "Fraction of KV cache blocks held by requests (1 = full).",
          info.blocks_total ? (double)info.blocks_used / (double)info.blocks_total : 0.0);
    gauge(&o, labels, "vllm:gpu_cache_usage_perc",
          "Same as vllm:kv_cache_usage_perc (the older vLLM name).",
          info.blocks_total ? (double)info.blocks_used / (double)info.blocks_total : 0.0);
    counter(&o, labels, "vllm:num_preemptions_total",
            "Requests sent back to recompute, for want of cache blocks or for an interactive "
            "request (all frontends).",
            (double)info.preemptions);
    gauge(&o, labels, "dsr1_kv_cache_blocks_cached",
          "Cache blocks holding reusable prompt prefixes, held by no request.",
          (double)info.blocks_cached);
    gauge(&o, labels, "dsr1_healthy", "1 while the scheduler serves, 0 after an executor failure.",
          info.healthy ? 1 : 0);
    const dsr1_grid_health *g = &info.grid;
    if (g->workers > 0) { /* a worker grid */
        gauge(&o, labels, "dsr1_grid_epoch",
              "The grid's membership epoch (starts at 1, one more at every lost or joined "
              "worker).",
              (double)g->epoch);
        header(&o, "dsr1_grid_workers", "gauge", "Worker processes of the grid, live or lost.");
        put(&o, "dsr1_grid_workers{%s,state=\"live\"} %d\n", labels, g->workers_live);
        put(&o, "dsr1_grid_workers{%s,state=\"lost\"} %d\n", labels, g->workers - g->workers_live);
        gauge(&o, labels, "dsr1_grid_lanes_live",
              "Attention ranks (lanes) whose worker is live in every stage.", g->lanes_live);
        gauge(&o, labels, "dsr1_grid_lanes", "Attention ranks (lanes) of the grid.", g->lanes);
        gauge(&o, labels, "dsr1_expert_replicas", "Copies of every routed expert.", g->replicas);
    }
    gauge(&o, labels, "dsr1_batch_items_running",
          "Batch items in the running set (among vllm:num_requests_running).", info.running_batch);
    gauge(&o, labels, "dsr1_batch_items_waiting",
          "Batch items handed to the scheduler and waiting (among vllm:num_requests_waiting).",
          info.queued_batch);
    counter(&o, labels, "dsr1_batch_preemptions_total",
            "Batch items sent back to recompute, for interactive requests or for want of blocks.",
            (double)info.preemptions_batch);
    if (s->p.batches) {
        dsr1_batches_stats bs;
        dsr1_batches_get_stats(s->p.batches, &bs);
        gauge(&o, labels, "dsr1_batch_jobs_active", "Batches not final (gRPC and HTTP).",
              bs.batches_active);
        gauge(&o, labels, "dsr1_batch_items_pending",
              "Items of active batches not yet handed to the scheduler.", (double)bs.items_pending);
        counter(&o, labels, "dsr1_batch_results_committed_total",
                "Batch item results committed to the store since start.",
                (double)bs.results_committed);
        counter(&o, labels, "dsr1_batch_commits_total",
                "Store transactions that committed results (group commits) since start.",
                (double)bs.commits);
        gauge(&o, labels, "dsr1_files", "Files in the store (uploads, output and error files).",
              (double)bs.files);
        gauge(&o, labels, "dsr1_file_bytes", "Bytes of the files in the store.",
              (double)bs.file_bytes);
    }
    pthread_mutex_lock(&s->metrics.mu);
    const http_metrics *m = &s->metrics;
    counter(&o, labels, "vllm:prompt_tokens_total", "Prompt tokens of finished HTTP requests.",
            (double)m->prompt_tokens);
    counter(&o, labels, "vllm:generation_tokens_total",
            "Generated tokens of finished HTTP requests.", (double)m->generation_tokens);
    counter(&o, labels, "vllm:prefix_cache_queries_total",
            "Prompt tokens looked up in the prefix cache (HTTP requests).",
            (double)m->prefix_queries);
    counter(&o, labels, "vllm:prefix_cache_hits_total",
            "Prompt tokens found in the prefix cache (HTTP requests).", (double)m->prefix_hits);
    static const char *const reasons[] = {NULL, "stop", "length", "abort", "error"};
    header(&o, "vllm:request_success_total", "counter", "Finished HTTP requests by finish reason.");
    for (int i = 1; i < 5; i++)
        put(&o, "vllm:request_success_total{%s,finished_reason=\"%s\"} %llu\n", labels, reasons[i],
            (unsigned long long)m->finished[i]);
    histogram(&o, labels, "vllm:time_to_first_token_seconds",
              "Time from submission to the first generated token.", &m->ttft);
    histogram(&o, labels, "vllm:inter_token_latency_seconds",
              "Time between consecutive generated tokens of a request.", &m->itl);
    histogram(&o, labels, "vllm:e2e_request_latency_seconds",
              "Time from submission to the final event.", &m->e2e);
    histogram(&o, labels, "vllm:request_queue_time_seconds",
              "Time from submission to the first step of a request.", &m->queue);
    histogram(&o, labels, "vllm:request_prompt_tokens", "Prompt tokens per request.",
              &m->prompt_len);
    histogram(&o, labels, "vllm:request_generation_tokens", "Generated tokens per request.",
              &m->gen_len);
    static const char *const codes[] = {"200", "400", "401", "404", "413", "429"};
    header(&o, "dsr1_http_responses_total", "counter", "HTTP responses by status code.");
    for (int i = 0; i < 6; i++)
        put(&o, "dsr1_http_responses_total{code=\"%s\"} %llu\n", codes[i],
            (unsigned long long)m->responses[i]);
    put(&o, "dsr1_http_responses_total{code=\"other\"} %llu\n",
        (unsigned long long)m->other_responses);
    pthread_mutex_unlock(&s->metrics.mu);
    if (o.oom) {
        free(o.p);
        return NULL;
    }
    *len = o.n;
    return o.p;
}
