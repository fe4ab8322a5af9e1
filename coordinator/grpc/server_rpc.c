/* The RPCs other than batches: Generate (a scheduler request whose events are streamed),
 * Abort, GetModelInfo, GetServerInfo and grpc.health.v1.Health; the method table; what
 * the server reads from the checkpoint directory (config.json, generation_config.json,
 * the chat template). */
#include <jansson.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dsr1_build_config.h"
#include "log.h"
#include "server_internal.h"

#define HEALTH_SERVICE_DSR1 "dsr1.v1.Dsr1"

/* ---- the model ---- */

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    long n = fseek(f, 0, SEEK_END) ? -1 : ftell(f);
    if (n >= 0 && n < (64 << 20) && !fseek(f, 0, SEEK_SET) && (buf = malloc((size_t)n + 1))) {
        if (fread(buf, 1, (size_t)n, f) == (size_t)n) {
            buf[n] = '\0';
        } else {
            free(buf);
            buf = NULL;
        }
    }
    fclose(f);
    return buf;
}

/* temperature and top_p from generation_config.json, when the checkpoint has one. */
static void load_generation_config(dsr1_server *s, const char *dir)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/generation_config.json", dir);
    s->default_temperature = 1.0f;
    s->default_top_p = 1.0f;
    json_error_t err;
    json_t *g = json_load_file(path, 0, &err);
    if (!g) return;
    json_t *t = json_object_get(g, "temperature"), *p = json_object_get(g, "top_p");
    if (json_is_number(t)) s->default_temperature = (float)json_number_value(t);
    if (json_is_number(p)) s->default_top_p = (float)json_number_value(p);
    json_decref(g);
}

dsr1_status dsr1__srv_model_load(dsr1_server *s)
{
    char base[4096];
    snprintf(base, sizeof(base), "%s", s->model_dir);
    size_t n = strlen(base);
    while (n > 1 && base[n - 1] == '/') base[--n] = '\0';
    s->config_json = read_text(s->config_path);
    s->model_name = strdup(basename(base));
    if (!s->config_json) s->config_json = strdup("");
    if (!s->config_json || !s->model_name)
        return dsr1_error(DSR1_ERR_NOMEM, "server: out of memory");
    load_generation_config(s, s->model_dir);
    s->think_end_id = dsr1_tokenizer_token_id(s->p.tok, "</think>");
    s->think_start_id = dsr1_tokenizer_token_id(s->p.tok, "<think>");
    if (dsr1_chat_template_load(s->model_dir, &s->tmpl) != DSR1_OK) {
        DSR1_WARN("server: no chat template (%s): chat inputs will be refused", dsr1_errmsg());
        s->tmpl = NULL;
    }
    return DSR1_OK;
}

void dsr1__srv_model_free(dsr1_server *s)
{
    dsr1_chat_template_free(s->tmpl);
    free(s->config_json);
    free(s->model_name);
}

/* ---- Generate ---- */

/* The request's deadline on CLOCK_MONOTONIC in ns (0: none). */
static int64_t deadline_ns(gpr_timespec d)
{
    if (gpr_time_cmp(d, gpr_inf_future(d.clock_type)) == 0) return 0;
    gpr_timespec left = gpr_time_sub(d, gpr_now(d.clock_type));
    int64_t ns = left.tv_sec > 1000000000 ? (int64_t)1e18 : left.tv_sec * 1000000000 + left.tv_nsec;
    if (ns < 1) ns = 1;
    return (int64_t)(dsr1__srv_mono_now() * 1e9) + ns;
}

static void sched_release(srv_call *c)
{
    dsr1_server *s = c->srv;
    pthread_mutex_lock(&s->mu);
    s->n_sched--;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    dsr1__srv_call_unref(c);
}

/* The scheduler's events for a Generate call (on the scheduler thread). */
static void generate_event(const dsr1_sched_event *ev)
{
    srv_call *c = ev->ctx;
    srv_arena a = {0};
    Dsr1__V1__GenerateResponse m = DSR1__V1__GENERATE_RESPONSE__INIT;
    bool final = ev->kind == DSR1_EV_FINAL;
    if (final) {
        m.kind_case = DSR1__V1__GENERATE_RESPONSE__KIND_FINAL;
        m.final = dsr1__srv_completion(c->srv, ev, &a);
    } else {
        m.kind_case = DSR1__V1__GENERATE_RESPONSE__KIND_DELTA;
        m.delta = dsr1__srv_delta(c->srv, ev, &a);
    }
    if (m.delta) /* the union's pointer, either kind */
        dsr1__srv_call_send_msg(c, &m.base);
    else
        dsr1__srv_call_finish(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory for a response");
    dsr1__srv_arena_free(&a);
    if (!final) return;
    bool late = ev->finish == DSR1_FINISH_ABORT && c->deadline.tv_sec != INT64_MAX &&
                gpr_time_cmp(gpr_now(c->deadline.clock_type), c->deadline) >= 0;
    if (late)
        dsr1__srv_call_finish(c, GRPC_STATUS_DEADLINE_EXCEEDED, "deadline exceeded");
    else
        dsr1__srv_call_finish(c, GRPC_STATUS_OK, NULL);
    pthread_mutex_lock(&c->mu);
    c->final_seen = true;
    pthread_mutex_unlock(&c->mu);
    sched_release(c);
}

static dsr1_status submit(srv_call *c, const char *id, const srv_prompt *pr, srv_params *pa)
{
    dsr1_server *s = c->srv;
    dsr1_sched_request r = dsr1__srv_request(pr, pa);
    r.id = id;
    r.deadline_ns = deadline_ns(c->deadline);
    r.callback = generate_event;
    r.ctx = c;
    if (!(c->request_id = strdup(id))) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    dsr1__srv_call_ref(c); /* the scheduler's, until the FINAL */
    pthread_mutex_lock(&s->mu);
    s->n_sched++;
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&c->mu);
    c->in_sched = true;
    pthread_mutex_unlock(&c->mu);
    dsr1_status st = dsr1_sched_submit(s->p.sched, &r);
    if (st != DSR1_OK) {
        pthread_mutex_lock(&c->mu);
        c->in_sched = false;
        pthread_mutex_unlock(&c->mu);
        sched_release(c);
        return st;
    }
    dsr1__srv_submitted(pa);
    pthread_mutex_lock(&c->mu);
    bool gone = c->closed && c->cancelled;
    pthread_mutex_unlock(&c->mu);
    if (gone) dsr1_sched_abort(s->p.sched, id); /* cancelled while being submitted */
    return DSR1_OK;
}

static void generate(srv_call *c, const uint8_t *data, size_t len)
{
    dsr1_server *s = c->srv;
    Dsr1__V1__GenerateRequest *req = dsr1__v1__generate_request__unpack(NULL, len, data);
    if (!req) {
        dsr1__srv_call_finish(c, GRPC_STATUS_INVALID_ARGUMENT, "malformed GenerateRequest");
        return;
    }
    char id[160];
    srv_prompt pr = {0};
    srv_params pa = {0};
    dsr1_status st = DSR1_OK;
    if (!*req->request_id)
        dsr1__srv_make_id(s, "gen-", id, sizeof(id));
    else if (dsr1__srv_id_valid(req->request_id))
        snprintf(id, sizeof(id), "%s", req->request_id);
    else
        st = dsr1_error(DSR1_ERR_INVALID_ARG,
                        "request_id: expected 1 to 128 characters of [A-Za-z0-9._:-]");
    if (st == DSR1_OK) st = dsr1__srv_prompt(s, req->input, &pr);
    if (st == DSR1_OK) st = dsr1__srv_params(s, req->sampling, &pr, &pa);
    if (st == DSR1_OK) st = submit(c, id, &pr, &pa);
    if (st != DSR1_OK) dsr1__srv_call_finish_error(c, st);
    dsr1__srv_params_free(&pa);
    dsr1__srv_prompt_free(&pr);
    dsr1__v1__generate_request__free_unpacked(req, NULL);
}

/* The client went away (cancel, deadline, disconnect): free the request's cache blocks. */
static void generate_closed(srv_call *c)
{
    pthread_mutex_lock(&c->mu);
    bool live = c->cancelled && c->in_sched && !c->final_seen;
    pthread_mutex_unlock(&c->mu);
    if (live) dsr1_sched_abort(c->srv->p.sched, c->request_id);
}

/* ---- Abort ---- */

static dsr1_status abort_rpc(dsr1_server *s, const uint8_t *data, size_t len, srv_buf *resp)
{
    Dsr1__V1__AbortRequest *req = dsr1__v1__abort_request__unpack(NULL, len, data);
    if (!req) return dsr1_error(DSR1_ERR_INVALID_ARG, "malformed AbortRequest");
    Dsr1__V1__AbortResponse r = DSR1__V1__ABORT_RESPONSE__INIT;
    r.aborted = calloc(req->n_request_ids + 1, sizeof(char *));
    r.not_found = calloc(req->n_request_ids + 1, sizeof(char *));
    dsr1_status st = DSR1_OK;
    if (!r.aborted || !r.not_found) st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    for (size_t i = 0; st == DSR1_OK && i < req->n_request_ids; i++) {
        char *id = req->request_ids[i];
        if (dsr1_sched_abort(s->p.sched, id)) /* batch items too, while in the scheduler */
            r.aborted[r.n_aborted++] = id;
        else
            r.not_found[r.n_not_found++] = id;
    }
    if (st == DSR1_OK) st = dsr1__srv_pack(&r.base, resp);
    free(r.aborted);
    free(r.not_found);
    dsr1__v1__abort_request__free_unpacked(req, NULL);
    return st;
}

/* ---- GetModelInfo, GetServerInfo ---- */

static dsr1_status model_info(dsr1_server *s, const uint8_t *data, size_t len, srv_buf *resp)
{
    (void)data;
    (void)len;
    const dsr1_model_config *cfg = s->p.cfg;
    Dsr1__V1__Limits lim = DSR1__V1__LIMITS__INIT;
    lim.max_context_length = s->p.max_context;
    lim.max_top_logprobs = DSR1_MAX_TOP_LOGPROBS;
    lim.max_batch_items = s->p.max_batch_items;
    lim.max_queued_requests = s->p.max_queued;
    lim.max_message_bytes = s->max_message_bytes;
    lim.max_stop_strings = DSR1_MAX_STOP_STRINGS;
    Dsr1__V1__SamplingParams def;
    dsr1__srv_default_sampling(s, &def);
    Dsr1__V1__ModelInfo m = DSR1__V1__MODEL_INFO__INIT;
    m.model = s->model_name;
    m.config_json = s->config_json;
    m.vocab_size = cfg->vocab_size;
    m.bos_token_id = cfg->bos_token_id;
    m.eos_token_id = cfg->eos_token_id;
    m.think_end_token_id = s->think_end_id;
    m.limits = &lim;
    m.default_sampling = &def;
    return dsr1__srv_pack(&m.base, resp);
}

static int64_t rss_bytes(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return 0;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    fclose(f);
    return (int64_t)resident * sysconf(_SC_PAGESIZE);
}

static dsr1_status server_info(dsr1_server *s, const uint8_t *data, size_t len, srv_buf *resp)
{
    (void)data;
    (void)len;
    dsr1_sched_info in;
    dsr1_sched_get_info(s->p.sched, &in);
    int nr = in.n_ranks < 64 ? in.n_ranks : 64;
    Dsr1__V1__RankInfo ranks[64], *rp[64];
    for (int i = 0; i < nr; i++) {
        dsr1__v1__rank_info__init(&ranks[i]);
        ranks[i].rank = in.ranks[i].rank;
        ranks[i].running = in.ranks[i].running;
        ranks[i].kv_blocks_total = in.ranks[i].blocks_total;
        ranks[i].kv_blocks_used = in.ranks[i].blocks_used;
        ranks[i].kv_blocks_cached = in.ranks[i].blocks_cached;
        rp[i] = &ranks[i];
    }
    Dsr1__V1__ServerInfo m = DSR1__V1__SERVER_INFO__INIT;
    m.version = (char *)DSR1_VERSION;
    m.workers = s->p.workers;
    m.pp = s->p.workers ? s->p.pp : 0;
    m.ep = s->p.workers && s->p.pp ? s->p.workers / s->p.pp : 0;
    m.transport = s->transport;
    m.uptime_s = dsr1__srv_mono_now() - s->start_time;
    m.queued = in.queued;
    m.running = in.running;
    m.kv_block_tokens = in.block_tokens;
    m.kv_blocks_total = in.blocks_total;
    m.kv_blocks_used = in.blocks_used;
    m.kv_blocks_cached = in.blocks_cached;
    m.n_ranks = (size_t)nr;
    m.ranks = rp;
    m.batches_active = dsr1__srv_batches_active(s->batches);
    m.requests_finished = in.requests_finished;
    m.rss_bytes = rss_bytes();
    m.steps = in.steps;
    m.kernels = s->kernels;
    m.healthy = in.healthy;
    m.epoch = in.grid.epoch;
    m.workers_live = in.grid.workers_live;
    m.lanes = in.grid.lanes;
    m.lanes_live = in.grid.lanes_live;
    m.expert_replicas = in.grid.replicas;
    /* the lost workers: grid.lost's "worker 2 (stage 0, EP 2), worker 5 (...)" split at the
     * ", " outside parentheses */
    char lost[sizeof(in.grid.lost)], *names[64];
    snprintf(lost, sizeof(lost), "%s", in.grid.lost);
    size_t nl = 0;
    int depth = 0;
    if (*lost) names[nl++] = lost;
    for (char *p = lost; *p && nl < 64; p++) {
        depth += *p == '(' ? 1 : *p == ')' && depth > 0 ? -1 : 0;
        if (!depth && p[0] == ',' && p[1] == ' ' && p[2]) {
            *p = '\0';
            names[nl++] = p + 2;
            p++;
        }
    }
    m.n_lost_workers = nl;
    m.lost_workers = names;
    return dsr1__srv_pack(&m.base, resp);
}

/* ---- grpc.health.v1.Health ---- */

/* The status of a service name; SERVICE_UNKNOWN for names this server does not serve. */
static Grpc__Health__V1__HealthCheckResponse__ServingStatus health_of(dsr1_server *s,
                                                                      const char *service)
{
    if (*service && strcmp(service, HEALTH_SERVICE_DSR1))
        return GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
    dsr1_sched_info in;
    dsr1_sched_get_info(s->p.sched, &in);
    pthread_mutex_lock(&s->mu);
    bool up = !s->stopping && in.healthy;
    pthread_mutex_unlock(&s->mu);
    return up ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
              : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
}

static dsr1_status health_check(dsr1_server *s, const uint8_t *data, size_t len, srv_buf *resp)
{
    Grpc__Health__V1__HealthCheckRequest *req =
        grpc__health__v1__health_check_request__unpack(NULL, len, data);
    if (!req) return dsr1_error(DSR1_ERR_INVALID_ARG, "malformed HealthCheckRequest");
    Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    r.status = health_of(s, req->service);
    dsr1_status st =
        r.status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN
            ? dsr1_error(DSR1_ERR_NOT_FOUND, "unknown service '%.200s'", req->service)
            : dsr1__srv_pack(&r.base, resp);
    grpc__health__v1__health_check_request__free_unpacked(req, NULL);
    return st;
}

static void send_health(srv_call *c, Grpc__Health__V1__HealthCheckResponse__ServingStatus status)
{
    Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    r.status = status;
    dsr1__srv_call_send_msg(c, &r.base);
}

/* Sends the current status, then keeps the stream open until shutdown or cancel. */
static void health_watch(srv_call *c, const uint8_t *data, size_t len)
{
    dsr1_server *s = c->srv;
    Grpc__Health__V1__HealthCheckRequest *req =
        grpc__health__v1__health_check_request__unpack(NULL, len, data);
    if (!req) {
        dsr1__srv_call_finish(c, GRPC_STATUS_INVALID_ARGUMENT, "malformed HealthCheckRequest");
        return;
    }
    Grpc__Health__V1__HealthCheckResponse__ServingStatus now = health_of(s, req->service);
    send_health(c, now);
    grpc__health__v1__health_check_request__free_unpacked(req, NULL);
    pthread_mutex_lock(&s->mu);
    bool stopping = s->stopping;
    if (!stopping) {
        c->health_sent = (int)now;
        dsr1__srv_call_ref(c);
        c->sub = s;
        dsr1__srv_sub_add(&s->watchers, c);
    }
    pthread_mutex_unlock(&s->mu);
    if (stopping) dsr1__srv_call_finish(c, GRPC_STATUS_OK, NULL);
}

static void health_watch_closed(srv_call *c)
{
    dsr1_server *s = c->srv;
    pthread_mutex_lock(&s->mu);
    bool listed = c->sub != NULL;
    if (listed) dsr1__srv_sub_remove(&s->watchers, c);
    c->sub = NULL;
    pthread_mutex_unlock(&s->mu);
    if (listed) dsr1__srv_call_unref(c);
}

/* Every DSR1__SRV_WATCH_MS: the status of the server, sent to the watchers of a known
 * service that were last sent another. */
static void *watch_main(void *arg)
{
    dsr1_server *s = arg;
    dsr1_log_set_tag("grpc-watch");
    pthread_mutex_lock(&s->mu);
    while (!s->watch_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += DSR1__SRV_WATCH_MS * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&s->watch_cv, &s->mu, &ts);
        if (s->watch_stop || !s->watchers) continue;
        pthread_mutex_unlock(&s->mu);
        int now = (int)health_of(s, "");
        srv_call *due[64];
        int n = 0;
        pthread_mutex_lock(&s->mu);
        for (srv_call *c = s->watchers; c && n < 64; c = c->sub_next) {
            if (c->health_sent == now ||
                c->health_sent ==
                    GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN)
                continue;
            c->health_sent = now;
            dsr1__srv_call_ref(c);
            due[n++] = c;
        }
        pthread_mutex_unlock(&s->mu);
        if (n)
            DSR1_INFO("server: health now %s: telling %d Watch streams",
                      now == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                          ? "SERVING"
                          : "NOT_SERVING",
                      n);
        for (int i = 0; i < n; i++) {
            send_health(due[i], (Grpc__Health__V1__HealthCheckResponse__ServingStatus)now);
            dsr1__srv_call_unref(due[i]);
        }
        pthread_mutex_lock(&s->mu); /* more than 64 due: the rest at the next tick */
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

dsr1_status dsr1__srv_watch_start(dsr1_server *s)
{
    int e = pthread_create(&s->watch_thread, NULL, watch_main, s);
    if (e) return dsr1_error(DSR1_ERR_INTERNAL, "server: cannot start a thread: %s", strerror(e));
    s->watch_running = true;
    return DSR1_OK;
}

void dsr1__srv_rpc_stop(dsr1_server *s)
{
    if (s->watch_running) {
        pthread_mutex_lock(&s->mu);
        s->watch_stop = true;
        pthread_cond_broadcast(&s->watch_cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->watch_thread, NULL);
        s->watch_running = false;
    }
    /* abort the Generate requests still in the scheduler: their FINAL ABORT ends each stream */
    size_t n = 0, cap = 16;
    char **ids = malloc(cap * sizeof(char *));
    pthread_mutex_lock(&s->mu);
    for (srv_call *c = s->calls; c && ids; c = c->next) {
        if (c->method != SRV_GENERATE) continue;
        pthread_mutex_lock(&c->mu);
        bool live = c->in_sched && !c->final_seen;
        pthread_mutex_unlock(&c->mu);
        if (live && n == cap) {
            char **grown = realloc(ids, (cap *= 2) * sizeof(char *));
            if (!grown) break;
            ids = grown;
        }
        if (live) ids[n++] = strdup(c->request_id);
    }
    srv_call *w = s->watchers; /* detached: their close handlers leave them to us */
    for (srv_call *c = w; c; c = c->sub_next) c->sub = NULL;
    s->watchers = NULL;
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; i < n; i++) {
        if (ids[i]) dsr1_sched_abort(s->p.sched, ids[i]);
        free(ids[i]);
    }
    free(ids);
    while (w) {
        srv_call *next = w->sub_next;
        send_health(w, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
        dsr1__srv_call_finish(w, GRPC_STATUS_OK, NULL);
        dsr1__srv_call_unref(w);
        w = next;
    }
}

const srv_method_desc dsr1__srv_methods[SRV_N_METHODS] = {
    [SRV_GENERATE] = {"/dsr1.v1.Dsr1/Generate", false, NULL, generate, generate_closed},
    [SRV_SUBMIT_BATCH] = {"/dsr1.v1.Dsr1/SubmitBatch", false, dsr1__srv_submit_batch},
    [SRV_UPLOAD_BATCH] = {"/dsr1.v1.Dsr1/UploadBatch", false, .recv = dsr1__srv_upload_batch},
    [SRV_GET_BATCH] = {"/dsr1.v1.Dsr1/GetBatch", false, dsr1__srv_get_batch},
    [SRV_STREAM_BATCH] = {"/dsr1.v1.Dsr1/StreamBatchResults", false, NULL, dsr1__srv_stream_batch,
                          dsr1__srv_stream_batch_closed},
    [SRV_CANCEL_BATCH] = {"/dsr1.v1.Dsr1/CancelBatch", false, dsr1__srv_cancel_batch},
    [SRV_LIST_BATCHES] = {"/dsr1.v1.Dsr1/ListBatches", false, dsr1__srv_list_batches},
    [SRV_ABORT] = {"/dsr1.v1.Dsr1/Abort", false, abort_rpc},
    [SRV_MODEL_INFO] = {"/dsr1.v1.Dsr1/GetModelInfo", false, model_info},
    [SRV_SERVER_INFO] = {"/dsr1.v1.Dsr1/GetServerInfo", false, server_info},
    [SRV_HEALTH_CHECK] = {"/grpc.health.v1.Health/Check", true, health_check},
    [SRV_HEALTH_WATCH] = {"/grpc.health.v1.Health/Watch", true, NULL, health_watch,
                          health_watch_closed},
};
