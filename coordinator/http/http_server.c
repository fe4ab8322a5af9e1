/* The HTTP server object (http_internal.h): the libmicrohttpd daemon, routing,
 * authentication, request bodies (bounded; a file upload is streamed to the batch store
 * instead, http_files.c), the simple endpoints (/health, /metrics, /v1/models), the
 * disconnect watcher, start and stop.
 *
 * A connection's request context collects the body; once complete, a completions request
 * becomes a job (http_generate.c). A non-streamed job's connection is suspended until the
 * job ends, then the handler runs again and sends the body; a streamed job's response is
 * read by a content reader that suspends the connection whenever the job's buffer is
 * empty. Suspended connections are not polled, so a watcher thread waits on their sockets
 * (epoll, EPOLLRDHUP) to abort the requests of clients that hang up. */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "http_internal.h"
#include "log.h"

#define STOP_GRACE_SECONDS 5

typedef struct {
    char *body;
    size_t len, cap;
    bool too_big;
    http_job *job;
    http_upload *upload; /* POST /v1/files, multipart: streamed, not in body */
} http_conn;

/* ---- helpers ---- */

double dsr1__http_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

uint64_t dsr1__http_random(dsr1_http_server *s)
{
    uint64_t x = s->salt ^ atomic_fetch_add(&s->next_id, 1);
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

int dsr1__http_status_of(dsr1_status st)
{
    switch (st) {
    case DSR1_ERR_INVALID_ARG:
    case DSR1_ERR_RANGE:
    case DSR1_ERR_FORMAT:
    case DSR1_ERR_UNSUPPORTED:
        return 400;
    case DSR1_ERR_NOT_FOUND:
        return 404;
    case DSR1_ERR_BUSY:
        return 429;
    case DSR1_ERR_UNAVAILABLE:
        return 503;
    default:
        return 500;
    }
}

static const char *error_type(int status)
{
    switch (status) {
    case 400:
    case 404:
    case 413:
        return "invalid_request_error";
    case 401:
        return "authentication_error";
    case 429:
        return "rate_limit_error";
    case 503:
        return "service_unavailable";
    default:
        return "server_error";
    }
}

char *dsr1__http_error_json(const char *message, const char *type, const char *param,
                            const char *code)
{
    json_t *e = json_pack("{s:{s:s, s:s, s:s?, s:s?}}", "error", "message", message ? message : "",
                          "type", type, "param", param && *param ? param : NULL, "code", code);
    if (!e) /* the message was not valid UTF-8 */
        e = json_pack("{s:{s:s, s:s, s:n, s:s?}}", "error", "message", "invalid request", "type",
                      type, "param", "code", code);
    char *s = e ? json_dumps(e, JSON_COMPACT) : NULL;
    json_decref(e);
    return s;
}

static enum MHD_Result send_body(dsr1_http_server *s, struct MHD_Connection *c, int status,
                                 char *body, const char *type)
{
    if (!body) {
        status = 500;
        body = strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
                      "\"param\":null,\"code\":null}}");
        if (!body) return MHD_NO;
    }
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    dsr1__http_metrics_status(&s->metrics, status);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

enum MHD_Result dsr1__http_send_json(dsr1_http_server *s, struct MHD_Connection *c, int status,
                                     json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    return send_body(s, c, status, text, "application/json");
}

enum MHD_Result dsr1__http_send_error(dsr1_http_server *s, struct MHD_Connection *c, int status,
                                      const char *type, const char *param, const char *code,
                                      const char *message)
{
    return send_body(s, c, status,
                     dsr1__http_error_json(message, type ? type : error_type(status), param, code),
                     "application/json");
}

/* ---- authentication ---- */

static bool key_matches(const char *key, const char *tok)
{
    size_t kn = strlen(key), n = strlen(tok);
    unsigned diff = kn != n;
    for (size_t i = 0; i < n; i++) diff |= (unsigned)(tok[i] ^ key[i % (kn ? kn : 1)]);
    return diff == 0;
}

static bool authorized(const dsr1_http_server *s, struct MHD_Connection *c)
{
    if (!s->api_key) return true;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    return h && strlen(h) > 7 && !strncasecmp(h, "bearer ", 7) && key_matches(s->api_key, h + 7);
}

/* ---- simple endpoints ---- */

static json_t *model_object(const dsr1_http_server *s)
{
    return json_pack("{s:s, s:s, s:I, s:s, s:i}", "id", s->model_name, "object", "model", "created",
                     (json_int_t)s->start_time, "owned_by", "dsr1", "max_model_len",
                     s->p.max_context);
}

static enum MHD_Result models(dsr1_http_server *s, struct MHD_Connection *c, const char *id)
{
    if (!id)
        return dsr1__http_send_json(
            s, c, 200, json_pack("{s:s, s:[o]}", "object", "list", "data", model_object(s)));
    if (strcmp(id, s->model_name)) {
        char msg[400];
        snprintf(msg, sizeof(msg),
                 "The model '%.200s' does not exist (this server serves '%.100s')", id,
                 s->model_name);
        return dsr1__http_send_error(s, c, 404, NULL, "model", "model_not_found", msg);
    }
    return dsr1__http_send_json(s, c, 200, model_object(s));
}

static enum MHD_Result health(dsr1_http_server *s, struct MHD_Connection *c)
{
    dsr1_sched_info info;
    dsr1_sched_get_info(s->p.sched, &info);
    pthread_mutex_lock(&s->mu);
    bool ok = info.healthy && !s->stopping;
    pthread_mutex_unlock(&s->mu);
    json_t *body = json_pack("{s:s}", "status", ok ? "ok" : "unavailable");
    const dsr1_grid_health *g = &info.grid;
    if (body && g->workers > 0) /* a worker grid: its membership */
        json_object_set_new(body, "grid",
                            json_pack("{s:I, s:i, s:i, s:i, s:i, s:i, s:i, s:s}", "epoch",
                                      (json_int_t)g->epoch, "workers", g->workers, "workers_live",
                                      g->workers_live, "lanes", g->lanes, "lanes_live",
                                      g->lanes_live, "ranks_serving", info.ranks_serving,
                                      "replicas", g->replicas, "lost", g->lost));
    return dsr1__http_send_json(s, c, ok ? 200 : 503, body);
}

static enum MHD_Result metrics(dsr1_http_server *s, struct MHD_Connection *c)
{
    size_t n;
    char *text = dsr1__http_metrics_text(s, &n);
    return send_body(s, c, 200, text, "text/plain; version=0.0.4; charset=utf-8");
}

/* ---- routing ---- */

static enum MHD_Result route(dsr1_http_server *s, struct MHD_Connection *c, const char *url,
                             const char *method, http_conn *hc)
{
    bool get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    bool post = !strcmp(method, "POST");
    if (!strcmp(url, "/health"))
        return get ? health(s, c)
                   : dsr1__http_send_error(s, c, 405, "invalid_request_error", NULL, NULL,
                                           "use GET");
    if (!strcmp(url, "/metrics"))
        return get ? metrics(s, c)
                   : dsr1__http_send_error(s, c, 405, "invalid_request_error", NULL, NULL,
                                           "use GET");
    if (!authorized(s, c))
        return dsr1__http_send_error(s, c, 401, NULL, NULL, "invalid_api_key",
                                     "missing or wrong API key: send 'Authorization: Bearer KEY'");
    if (!strcmp(url, "/v1/models") && get) return models(s, c, NULL);
    if (!strncmp(url, "/v1/models/", 11) && get) return models(s, c, url + 11);
    bool files = !strcmp(url, "/v1/files") || !strncmp(url, "/v1/files/", 10);
    bool batches = !strcmp(url, "/v1/batches") || !strncmp(url, "/v1/batches/", 12);
    if ((files || batches) && s->p.batches) {
        if (hc->too_big) {
            char msg[200];
            snprintf(msg, sizeof(msg), "the request body is larger than %d bytes",
                     s->p.max_body_bytes);
            return dsr1__http_send_error(s, c, 413, NULL, NULL, "request_too_large", msg);
        }
        if (files && post && !strcmp(url, "/v1/files"))
            return dsr1__http_send_error(
                s, c, 400, NULL, NULL, NULL,
                "upload a file as multipart/form-data with the fields 'file' and 'purpose'");
        return files ? dsr1__http_files(s, c, method, url)
                     : dsr1__http_batches(s, c, method, url, hc->body ? hc->body : "", hc->len);
    }
    dsr1_http_kind kind;
    if (!strcmp(url, "/v1/chat/completions"))
        kind = DSR1_HTTP_CHAT;
    else if (!strcmp(url, "/v1/completions"))
        kind = DSR1_HTTP_COMPLETION;
    else {
        char msg[300];
        snprintf(msg, sizeof(msg), "no such endpoint: %.8s %.200s", method, url);
        return dsr1__http_send_error(s, c, 404, NULL, NULL, "not_found", msg);
    }
    if (!post)
        return dsr1__http_send_error(s, c, 405, "invalid_request_error", NULL, NULL, "use POST");
    if (hc->too_big) {
        char msg[200];
        snprintf(msg, sizeof(msg), "the request body is larger than %d bytes", s->p.max_body_bytes);
        return dsr1__http_send_error(s, c, 413, NULL, NULL, "request_too_large", msg);
    }
    pthread_mutex_lock(&s->mu);
    bool stopping = s->stopping;
    pthread_mutex_unlock(&s->mu);
    if (stopping)
        return dsr1__http_send_error(s, c, 503, NULL, NULL, NULL, "the server is shutting down");
    return dsr1__http_generate(s, c, kind, hc->body ? hc->body : "", hc->len, &hc->job);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    (void)version;
    dsr1_http_server *s = cls;
    http_conn *hc = *con_cls;
    if (!hc) {
        if (!(hc = calloc(1, sizeof(*hc)))) return MHD_NO;
        *con_cls = hc;
        if (s->p.batches && !strcmp(method, "POST") && !strcmp(url, "/v1/files") &&
            authorized(s, c)) {
            pthread_mutex_lock(&s->mu);
            bool stopping = s->stopping;
            pthread_mutex_unlock(&s->mu);
            /* not multipart: NULL, and route answers 400 */
            if (!stopping && (hc->upload = dsr1__http_upload_begin(s, c))) return MHD_YES;
        }
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > (unsigned long long)s->p.max_body_bytes)
            hc->too_big = true;
        return MHD_YES;
    }
    if (hc->upload) {
        if (*upload_size) {
            dsr1__http_upload_feed(hc->upload, upload, *upload_size);
            *upload_size = 0;
            return MHD_YES;
        }
        return dsr1__http_upload_finish(s, c, hc->upload);
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (hc->too_big || hc->len + n > (size_t)s->p.max_body_bytes) {
            hc->too_big = true;
            free(hc->body);
            hc->body = NULL;
            hc->len = 0;
            return MHD_YES;
        }
        if (hc->len + n + 1 > hc->cap) {
            size_t cap = hc->cap ? hc->cap : 4096;
            while (cap < hc->len + n + 1) cap *= 2;
            char *b = realloc(hc->body, cap);
            if (!b) return MHD_NO;
            hc->body = b;
            hc->cap = cap;
        }
        memcpy(hc->body + hc->len, upload, n);
        hc->len += n;
        hc->body[hc->len] = '\0';
        return MHD_YES;
    }
    if (hc->job) return dsr1__http_job_respond(s, c, hc->job); /* resumed */
    return route(s, c, url, method, hc);
}

/* The request is over (sent, failed, or the client went away). */
static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)c;
    (void)toe;
    dsr1_http_server *s = cls;
    http_conn *hc = *con_cls;
    if (!hc) return;
    *con_cls = NULL;
    http_job *j = hc->job;
    if (j) {
        dsr1__http_unwatch(s, j);
        pthread_mutex_lock(&j->mu);
        j->conn = NULL;
        bool live = j->n_final < j->n_submitted;
        j->gone = true;
        pthread_mutex_unlock(&j->mu);
        if (live) dsr1__http_job_abort(j);
        dsr1__http_job_unref(j);
    }
    dsr1__http_upload_free(hc->upload);
    free(hc->body);
    free(hc);
}

/* ---- suspension and the disconnect watcher ---- */

void dsr1__http_suspend(dsr1_http_server *s, http_job *j)
{
    if (j->suspended || !j->conn) return;
    j->suspended = true;
    MHD_suspend_connection(j->conn);
    pthread_mutex_lock(&s->mu);
    s->n_suspended++;
    pthread_mutex_unlock(&s->mu);
}

void dsr1__http_resume(dsr1_http_server *s, http_job *j)
{
    if (!j->suspended || !j->conn) return;
    j->suspended = false;
    MHD_resume_connection(j->conn);
    pthread_mutex_lock(&s->mu);
    s->n_suspended--;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void dsr1__http_watch(dsr1_http_server *s, http_job *j)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(j->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci || s->epfd < 0) return;
    struct epoll_event ev = {.events = EPOLLRDHUP | EPOLLONESHOT, .data.u64 = j->serial};
    j->fd = ci->connect_fd;
    if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, j->fd, &ev) == 0) j->watched = true;
}

void dsr1__http_unwatch(dsr1_http_server *s, http_job *j)
{
    pthread_mutex_lock(&j->mu);
    if (j->watched) epoll_ctl(s->epfd, EPOLL_CTL_DEL, j->fd, NULL);
    j->watched = false;
    pthread_mutex_unlock(&j->mu);
}

static void *watcher(void *arg)
{
    dsr1_http_server *s = arg;
    dsr1_log_set_tag("http");
    for (;;) {
        struct epoll_event ev[16];
        int n = epoll_wait(s->epfd, ev, 16, -1);
        for (int i = 0; i < n; i++) {
            if (ev[i].data.u64 == 0) return NULL; /* the wake-up: stopping */
            http_job *j = NULL;
            pthread_mutex_lock(&s->mu);
            for (http_job *k = s->jobs; k; k = k->next)
                if (k->serial == ev[i].data.u64) {
                    if (dsr1__http_job_ref_live(k)) j = k;
                    break;
                }
            pthread_mutex_unlock(&s->mu);
            if (!j) continue;
            pthread_mutex_lock(&j->mu);
            bool live = !j->gone && j->n_final < j->n_submitted;
            j->gone = true;
            pthread_mutex_unlock(&j->mu);
            if (live) {
                DSR1_DEBUG("http: %s: the client hung up: aborting", j->id);
                dsr1__http_job_abort(j);
            }
            dsr1__http_job_unref(j);
        }
    }
}

/* ---- start and stop ---- */

static dsr1_status copy_params(dsr1_http_server *s, const dsr1_http_params *p)
{
    s->p = *p;
    if (!s->p.max_body_bytes) s->p.max_body_bytes = DSR1_HTTP_DEFAULT_BODY_BYTES;
    if (!s->p.max_stream_bytes) s->p.max_stream_bytes = DSR1_HTTP_DEFAULT_SSE_BYTES;
    if (!s->p.threads) s->p.threads = 2;
    s->api_key = p->api_key && *p->api_key ? strdup(p->api_key) : NULL;
    s->model_dir = strdup(p->model_dir ? p->model_dir : ".");
    if (p->model_name && *p->model_name) {
        s->model_name = strdup(p->model_name);
    } else if (s->model_dir) {
        char base[4096];
        snprintf(base, sizeof(base), "%s", s->model_dir);
        size_t n = strlen(base);
        while (n > 1 && base[n - 1] == '/') base[--n] = '\0';
        s->model_name = strdup(basename(base));
    }
    if (!s->model_dir || !s->model_name || (p->api_key && *p->api_key && !s->api_key))
        return dsr1_error(DSR1_ERR_NOMEM, "http: out of memory");
    s->p.api_key = s->api_key;
    s->p.model_dir = s->model_dir;
    s->p.model_name = s->model_name;
    return DSR1_OK;
}

static dsr1_status start_watcher(dsr1_http_server *s)
{
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    s->wakefd = eventfd(0, EFD_CLOEXEC);
    if (s->epfd < 0 || s->wakefd < 0)
        return dsr1_error(DSR1_ERR_IO, "http: epoll/eventfd: %s", strerror(errno));
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0};
    epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->wakefd, &ev);
    int e = pthread_create(&s->watcher, NULL, watcher, s);
    if (e) return dsr1_error(DSR1_ERR_INTERNAL, "http: cannot start a thread: %s", strerror(e));
    s->watcher_started = true;
    return DSR1_OK;
}

/* libmicrohttpd's messages (mostly clients that went away) at debug level: the requests
 * concerned are aborted and counted anyway. */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n && msg[n - 1] == '\n') msg[--n] = '\0';
    DSR1_DEBUG("http: libmicrohttpd: %s", msg);
}

static dsr1_status listen_on(dsr1_http_server *s, const char *host, int port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        flags |= MHD_USE_IPv6;
    } else {
        return dsr1_error(DSR1_ERR_INVALID_ARG, "http: --host '%s' is not an IPv4 or IPv6 address",
                          host);
    }
    s->d = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR,
                            (struct sockaddr *)&ss, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_THREAD_POOL_SIZE,
                            (unsigned)s->p.threads, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)4096, MHD_OPTION_END);
    if (!s->d)
        return dsr1_error(DSR1_ERR_IO,
                          "http: cannot listen on %s:%d (port in use, or not an address of this "
                          "machine?)",
                          host, port);
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : port;
    return DSR1_OK;
}

dsr1_status dsr1_http_start(const char *host, int port, const dsr1_http_params *p,
                            dsr1_http_server **out)
{
    if (!p->sched || !p->cfg || !p->tok || p->max_context < 1)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "http: a scheduler, a config, a tokenizer and max_context are required");
    dsr1_http_server *s = calloc(1, sizeof(*s));
    if (!s) return dsr1_error(DSR1_ERR_NOMEM, "http: out of memory");
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->epfd = s->wakefd = -1;
    s->next_serial = 1;
    dsr1__http_metrics_init(&s->metrics);
    if (getrandom(&s->salt, sizeof(s->salt), 0) != (ssize_t)sizeof(s->salt))
        s->salt = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)s;
    s->start_time = (long long)time(NULL);
    dsr1_status st = copy_params(s, p);
    if (!st) st = dsr1__http_model_load(s);
    if (!st) st = start_watcher(s);
    if (!st) st = listen_on(s, host ? host : "127.0.0.1", port);
    /* last: once registered, the store may call the codec until it is closed */
    if (!st && s->p.batches) st = dsr1__http_batches_register(s);
    if (st) {
        dsr1_http_stop(s);
        return st;
    }
    *out = s;
    return DSR1_OK;
}

int dsr1_http_port(const dsr1_http_server *s)
{
    return s->port;
}

/* Aborts this server's jobs (all, or only the interactive ones) and waits until their
 * scheduler requests are final. */
static void abort_jobs(dsr1_http_server *s, bool batch_too)
{
    pthread_mutex_lock(&s->mu);
    s->stopping = true;
    http_job **all = calloc((size_t)s->n_jobs + 1, sizeof(*all));
    int n = 0;
    for (http_job *j = s->jobs; j && all; j = j->next)
        if ((batch_too || !j->batch) && dsr1__http_job_ref_live(j)) all[n++] = j;
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < n; i++) {
        if (all[i]->batch) {
            pthread_mutex_lock(&all[i]->mu);
            all[i]->gone = true;
            pthread_mutex_unlock(&all[i]->mu);
        }
        dsr1__http_job_abort(all[i]);
        dsr1__http_job_unref(all[i]);
    }
    free(all);
    pthread_mutex_lock(&s->mu);
    while (s->n_sched > (batch_too ? 0 : s->n_sched_batch)) pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
}

void dsr1_http_quiesce(dsr1_http_server *s)
{
    if (!s || !s->d) return;
    MHD_quiesce_daemon(s->d);
    /* every interactive job aborted; the scheduler's final events, within a step, resume
     * every suspended connection. Then clients get a moment to read their last bytes. */
    abort_jobs(s, false);
    pthread_mutex_lock(&s->mu);
    double until = dsr1__http_now() + STOP_GRACE_SECONDS;
    while (s->n_jobs > s->n_batch_jobs && dsr1__http_now() < until) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50000000;
        if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    }
    if (s->n_suspended)
        DSR1_WARN("http: %d connections still suspended at shutdown", s->n_suspended);
    pthread_mutex_unlock(&s->mu);
    MHD_stop_daemon(s->d);
    s->d = NULL;
}

void dsr1_http_stop(dsr1_http_server *s)
{
    if (!s) return;
    dsr1_http_quiesce(s);
    /* batch items still running (the store was not closed first): aborted, reported */
    abort_jobs(s, true);
    pthread_mutex_lock(&s->mu);
    while (s->n_batch_jobs) pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
    if (s->watcher_started) {
        uint64_t one = 1;
        if (write(s->wakefd, &one, sizeof(one)) < 0) DSR1_WARN("http: cannot wake the watcher");
        pthread_join(s->watcher, NULL);
    }
    if (s->epfd >= 0) close(s->epfd);
    if (s->wakefd >= 0) close(s->wakefd);
    dsr1__http_model_free(s);
    dsr1__http_metrics_free(&s->metrics);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s->api_key);
    free(s->model_dir);
    free(s->model_name);
    free(s);
}
