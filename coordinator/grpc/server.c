/* The gRPC server object: listening, the completion-queue threads, calls from arrival to
 * release, their outboxes, authentication and the orderly shutdown (server_internal.h).
 *
 * Every registered method has requests posted for incoming calls; when one arrives a
 * completion-queue thread re-posts, starts RECV_CLOSE_ON_SERVER (which tells of the
 * client's cancellation) and runs the method's handler. Sends may come from any thread;
 * one send batch is in flight per call, the next one started from its completion. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <grpc/grpc_security.h>

#include "log.h"
#include "server_internal.h"

#define REQUESTS_PER_METHOD 2
#define GRACE_SECONDS       5 /* for clients to read their final messages at shutdown */

/* ---- small helpers shared by the server's files ---- */

double dsr1__srv_unix_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

double dsr1__srv_mono_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

uint64_t dsr1__srv_random(dsr1_server *s)
{
    return splitmix64(s->id_salt ^ atomic_fetch_add(&s->next_id, 1));
}

void dsr1__srv_make_id(dsr1_server *s, const char *prefix, char *out, size_t cap)
{
    snprintf(out, cap, "%s%016" PRIx64, prefix, dsr1__srv_random(s));
}

bool dsr1__srv_id_valid(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > 128) return false;
    for (size_t i = 0; i < n; i++) {
        char ch = id[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == ':' || ch == '-';
        if (!ok) return false;
    }
    return true;
}

grpc_status_code dsr1__srv_grpc_code(dsr1_status st)
{
    switch (st) {
    case DSR1_OK:
        return GRPC_STATUS_OK;
    case DSR1_ERR_INVALID_ARG:
    case DSR1_ERR_RANGE:
    case DSR1_ERR_FORMAT:
    case DSR1_ERR_UNSUPPORTED:
        return GRPC_STATUS_INVALID_ARGUMENT;
    case DSR1_ERR_NOT_FOUND:
        return GRPC_STATUS_NOT_FOUND;
    case DSR1_ERR_EXISTS:
        return GRPC_STATUS_ALREADY_EXISTS;
    case DSR1_ERR_BUSY:
    case DSR1_ERR_NOMEM:
        return GRPC_STATUS_RESOURCE_EXHAUSTED;
    case DSR1_ERR_UNAVAILABLE:
        return GRPC_STATUS_UNAVAILABLE;
    default:
        return GRPC_STATUS_INTERNAL;
    }
}

dsr1_status dsr1__srv_pack(const ProtobufCMessage *m, srv_buf *out)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *data = malloc(n ? n : 1);
    if (!data) return dsr1_error(DSR1_ERR_NOMEM, "out of memory for a %zu-byte response", n);
    protobuf_c_message_pack(m, data);
    *out = (srv_buf){data, n};
    return DSR1_OK;
}

/* ---- calls ---- */

static srv_call *call_new(dsr1_server *s, srv_method m)
{
    srv_call *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->srv = s;
    c->method = m;
    atomic_init(&c->refs, 1);
    grpc_metadata_array_init(&c->md);
    pthread_mutex_init(&c->mu, NULL);
    pthread_mutex_lock(&s->mu);
    s->n_calls++;
    pthread_mutex_unlock(&s->mu);
    return c;
}

static void outbox_clear(srv_call *c)
{
    c->n_out = 0;
    while (c->head) {
        srv_msg *m = c->head;
        c->head = m->next;
        grpc_byte_buffer_destroy(m->bb);
        free(m);
    }
    c->tail = NULL;
}

static void call_free(srv_call *c)
{
    dsr1_server *s = c->srv;
    pthread_mutex_lock(&s->mu);
    if (c->prev) c->prev->next = c->next;
    if (s->calls == c) s->calls = c->next;
    if (c->next) c->next->prev = c->prev;
    s->n_calls--;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (c->call) grpc_call_unref(c->call);
    grpc_metadata_array_destroy(&c->md);
    if (c->payload) grpc_byte_buffer_destroy(c->payload);
    if (c->recv_bb) grpc_byte_buffer_destroy(c->recv_bb);
    if (c->in_flight) grpc_byte_buffer_destroy(c->in_flight);
    outbox_clear(c);
    if (c->status_queued) grpc_slice_unref(c->details);
    pthread_mutex_destroy(&c->mu);
    free(c->request_id);
    free(c);
}

void dsr1__srv_call_ref(srv_call *c)
{
    atomic_fetch_add(&c->refs, 1);
}

void dsr1__srv_call_unref(srv_call *c)
{
    if (atomic_fetch_sub(&c->refs, 1) == 1) call_free(c);
}

void dsr1__srv_sub_add(srv_call **head, srv_call *c)
{
    c->sub_prev = NULL;
    c->sub_next = *head;
    if (*head) (*head)->sub_prev = c;
    *head = c;
}

void dsr1__srv_sub_remove(srv_call **head, srv_call *c)
{
    if (c->sub_prev) c->sub_prev->sub_next = c->sub_next;
    if (*head == c) *head = c->sub_next;
    if (c->sub_next) c->sub_next->sub_prev = c->sub_prev;
    c->sub_prev = c->sub_next = NULL;
}

/* Starts the next send batch when none is in flight: the next message, and the status once
 * the outbox is empty; the initial metadata goes with the first batch, even one that holds
 * only a status (gRPC core 1.51 never completes a server's status sent without it). */
static void pump_locked(srv_call *c)
{
    if (c->sending || c->status_sent || c->dead || (!c->head && !c->status_queued)) return;
    grpc_op ops[3];
    memset(ops, 0, sizeof(ops));
    size_t n = 0;
    srv_msg *m = c->head;
    if (!c->md_sent) ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    c->md_sent = true;
    if (m) {
        c->head = m->next;
        if (!c->head) c->tail = NULL;
        c->in_flight = m->bb;
        free(m);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = c->in_flight;
    }
    bool with_status = c->status_queued && !c->head;
    if (with_status) {
        ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        ops[n].data.send_status_from_server.status = c->code;
        ops[n++].data.send_status_from_server.status_details = &c->details;
        c->status_sent = true;
    }
    c->sending = true;
    dsr1__srv_call_ref(c);
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, &c->send_tag, NULL);
    if (e != GRPC_CALL_OK) {
        DSR1_WARN("server: starting a send failed (grpc_call_error %d)", (int)e);
        if (c->in_flight) grpc_byte_buffer_destroy(c->in_flight);
        c->in_flight = NULL;
        c->sending = false;
        c->dead = true;
        outbox_clear(c);
        atomic_fetch_sub(&c->refs, 1); /* the caller still holds one */
    }
}

static void on_send(void *arg, bool ok)
{
    srv_call *c = arg;
    pthread_mutex_lock(&c->mu);
    if (c->in_flight) {
        grpc_byte_buffer_destroy(c->in_flight);
        if (c->n_out > 0) c->n_out--;
    }
    c->in_flight = NULL;
    c->sending = false;
    if (!ok) { /* the call is gone (client cancelled, deadline, shutdown) */
        c->dead = true;
        outbox_clear(c);
    }
    pump_locked(c);
    void (*fn)(srv_call *) = NULL;
    if (c->on_drain && !c->dead && c->n_out <= c->drain_at) {
        fn = c->on_drain;
        c->on_drain = NULL;
    }
    pthread_mutex_unlock(&c->mu);
    if (fn) fn(c);
    dsr1__srv_call_unref(c);
}

void dsr1__srv_call_send(srv_call *c, srv_buf msg)
{
    grpc_slice sl = grpc_slice_new(msg.data, msg.len, free);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    srv_msg *m = malloc(sizeof(*m));
    pthread_mutex_lock(&c->mu);
    if (!m || c->dead || c->status_queued) {
        grpc_byte_buffer_destroy(bb);
        free(m);
    } else {
        *m = (srv_msg){NULL, bb};
        c->n_out++;
        if (c->tail)
            c->tail->next = m;
        else
            c->head = m;
        c->tail = m;
        pump_locked(c);
    }
    pthread_mutex_unlock(&c->mu);
}

bool dsr1__srv_call_pace(srv_call *c, int high, int low, void (*on_drain)(srv_call *c))
{
    pthread_mutex_lock(&c->mu);
    bool full = c->n_out >= high && !c->dead;
    if (full) {
        c->on_drain = on_drain;
        c->drain_at = low;
    }
    pthread_mutex_unlock(&c->mu);
    return full;
}

void dsr1__srv_call_send_msg(srv_call *c, const ProtobufCMessage *m)
{
    srv_buf b;
    if (dsr1__srv_pack(m, &b) == DSR1_OK)
        dsr1__srv_call_send(c, b);
    else
        dsr1__srv_call_finish(c, GRPC_STATUS_RESOURCE_EXHAUSTED, dsr1_errmsg());
}

void dsr1__srv_call_finish(srv_call *c, grpc_status_code code, const char *details)
{
    pthread_mutex_lock(&c->mu);
    if (!c->status_queued) {
        c->status_queued = true;
        c->code = code;
        c->details = grpc_slice_from_copied_string(details ? details : "");
        pump_locked(c);
    }
    pthread_mutex_unlock(&c->mu);
}

void dsr1__srv_call_finish_error(srv_call *c, dsr1_status st)
{
    dsr1__srv_call_finish(c, dsr1__srv_grpc_code(st), dsr1_errmsg());
}

/* ---- arrival ---- */

/* Constant-time comparison of the bearer token with the key. */
static bool key_matches(const char *key, const uint8_t *tok, size_t n)
{
    size_t kn = strlen(key);
    unsigned diff = kn != n;
    for (size_t i = 0; i < n; i++) diff |= (unsigned)(tok[i] ^ (uint8_t)key[i % (kn ? kn : 1)]);
    return diff == 0;
}

static bool authorized(const dsr1_server *s, const srv_call *c)
{
    if (!s->api_key) return true;
    for (size_t i = 0; i < c->md.count; i++) {
        const grpc_metadata *m = &c->md.metadata[i];
        if (grpc_slice_str_cmp(m->key, "authorization")) continue;
        const uint8_t *v = GRPC_SLICE_START_PTR(m->value);
        size_t n = GRPC_SLICE_LENGTH(m->value);
        if (n > 7 && !strncasecmp((const char *)v, "bearer ", 7) &&
            key_matches(s->api_key, v + 7, n - 7))
            return true;
    }
    return false;
}

static void on_close(void *arg, bool ok)
{
    (void)ok;
    srv_call *c = arg;
    pthread_mutex_lock(&c->mu);
    c->closed = true;
    pthread_mutex_unlock(&c->mu);
    if (dsr1__srv_methods[c->method].on_close) dsr1__srv_methods[c->method].on_close(c);
    dsr1__srv_call_unref(c);
}

/* Reads a byte buffer whole; false when it cannot be read (compressed). */
static bool read_all(grpc_byte_buffer *bb, grpc_slice *out)
{
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb)) return false;
    *out = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    return true;
}

/* Client streaming: posts the next RECV_MESSAGE; on_recv hands what it got to the method. */
static void post_recv(srv_call *c);

/* The initial metadata sent alone after the last message arrived: it fails when the call
 * is gone. A client's cancel can end the messages like a half-close does (no message, no
 * error), so the method hears of the end only once this tells the two apart. */
static void on_probe(void *arg, bool ok)
{
    srv_call *c = arg;
    pthread_mutex_lock(&c->mu);
    c->sending = false;
    if (!ok) {
        c->dead = true;
        outbox_clear(c);
    }
    bool gone = c->dead || (c->closed && c->cancelled);
    pump_locked(c);
    pthread_mutex_unlock(&c->mu);
    dsr1__srv_methods[c->method].recv(c, NULL, 0, gone);
    dsr1__srv_call_unref(c);
}

static void probe(srv_call *c)
{
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_SEND_INITIAL_METADATA;
    pthread_mutex_lock(&c->mu);
    bool can = !c->md_sent && !c->sending && !c->dead;
    if (can) {
        c->md_sent = c->sending = true;
        c->recv_tag = (srv_tag){on_probe, c};
        dsr1__srv_call_ref(c);
        if (grpc_call_start_batch(c->call, &op, 1, &c->recv_tag, NULL) != GRPC_CALL_OK) {
            c->sending = false;
            c->dead = true;
            atomic_fetch_sub(&c->refs, 1); /* the caller still holds one */
            can = false;
        }
    }
    bool gone = c->dead || (c->closed && c->cancelled);
    pthread_mutex_unlock(&c->mu);
    if (!can) dsr1__srv_methods[c->method].recv(c, NULL, 0, gone);
}

static void on_recv(void *arg, bool ok)
{
    srv_call *c = arg;
    const srv_method_desc *d = &dsr1__srv_methods[c->method];
    grpc_byte_buffer *bb = ok ? c->recv_bb : NULL;
    c->recv_bb = NULL;
    grpc_slice sl;
    if (!bb && ok) { /* the client's half-close, or its cancel */
        probe(c);
    } else if (!bb) { /* the call is gone */
        d->recv(c, NULL, 0, true);
    } else if (!read_all(bb, &sl)) {
        grpc_byte_buffer_destroy(bb);
        d->recv(c, NULL, 0, true);
        dsr1__srv_call_finish(c, GRPC_STATUS_INVALID_ARGUMENT, "unreadable request message");
    } else {
        grpc_byte_buffer_destroy(bb);
        bool more = d->recv(c, GRPC_SLICE_START_PTR(sl), GRPC_SLICE_LENGTH(sl), false);
        grpc_slice_unref(sl);
        if (more) post_recv(c);
    }
    dsr1__srv_call_unref(c);
}

static void post_recv(srv_call *c)
{
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->recv_bb;
    c->recv_tag = (srv_tag){on_recv, c};
    dsr1__srv_call_ref(c);
    if (grpc_call_start_batch(c->call, &op, 1, &c->recv_tag, NULL) != GRPC_CALL_OK) {
        atomic_fetch_sub(&c->refs, 1); /* the caller still holds one */
        dsr1__srv_methods[c->method].recv(c, NULL, 0, true);
        dsr1__srv_call_finish(c, GRPC_STATUS_INTERNAL, "cannot receive the next message");
    }
}

static void dispatch(srv_call *c)
{
    dsr1_server *s = c->srv;
    const srv_method_desc *d = &dsr1__srv_methods[c->method];
    if (!d->public_ && !authorized(s, c)) {
        dsr1__srv_call_finish(
            c, GRPC_STATUS_UNAUTHENTICATED,
            "missing or wrong API key: send metadata 'authorization: Bearer KEY'");
        return;
    }
    if (d->recv) {
        post_recv(c);
        return;
    }
    if (!c->payload) {
        dsr1__srv_call_finish(c, GRPC_STATUS_INVALID_ARGUMENT, "no request message");
        return;
    }
    grpc_slice sl;
    if (!read_all(c->payload, &sl)) {
        dsr1__srv_call_finish(c, GRPC_STATUS_INVALID_ARGUMENT, "unreadable request message");
        return;
    }
    const uint8_t *data = GRPC_SLICE_START_PTR(sl);
    size_t len = GRPC_SLICE_LENGTH(sl);
    if (d->stream) {
        d->stream(c, data, len);
    } else {
        srv_buf resp;
        dsr1_status st = d->unary(s, data, len, &resp);
        if (st == DSR1_OK) {
            dsr1__srv_call_send(c, resp);
            dsr1__srv_call_finish(c, GRPC_STATUS_OK, NULL);
        } else {
            dsr1__srv_call_finish_error(c, st);
        }
    }
    grpc_slice_unref(sl);
}

static void request_call(dsr1_server *s, srv_method m);

static void on_call_start(void *arg, bool ok)
{
    srv_call *c = arg;
    dsr1_server *s = c->srv;
    if (!ok) { /* shutting down: the request was cancelled */
        dsr1__srv_call_unref(c);
        return;
    }
    pthread_mutex_lock(&s->mu);
    bool stopping = s->stopping;
    c->next = s->calls;
    if (s->calls) s->calls->prev = c;
    s->calls = c;
    pthread_mutex_unlock(&s->mu);
    if (!stopping) request_call(s, c->method);

    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->cancelled;
    c->close_tag = (srv_tag){on_close, c};
    c->send_tag = (srv_tag){on_send, c};
    dsr1__srv_call_ref(c);
    if (grpc_call_start_batch(c->call, &op, 1, &c->close_tag, NULL) != GRPC_CALL_OK) {
        DSR1_WARN("server: cannot watch a call for its end");
        atomic_fetch_sub(&c->refs, 1);
        c->dead = true;
    } else if (stopping) {
        dsr1__srv_call_finish(c, GRPC_STATUS_UNAVAILABLE, "the server is shutting down");
    } else {
        dispatch(c);
    }
    dsr1__srv_call_unref(c);
}

/* Posts a request for the next call of method m. */
static void request_call(dsr1_server *s, srv_method m)
{
    srv_call *c = call_new(s, m);
    if (!c) {
        DSR1_ERROR("server: out of memory: no longer accepting %s calls",
                   dsr1__srv_methods[m].path);
        return;
    }
    c->start_tag = (srv_tag){on_call_start, c};
    grpc_byte_buffer **payload = dsr1__srv_methods[m].recv ? NULL : &c->payload;
    grpc_call_error e =
        grpc_server_request_registered_call(s->server, s->methods[m], &c->call, &c->deadline,
                                            &c->md, payload, s->cq, s->cq, &c->start_tag);
    if (e != GRPC_CALL_OK) {
        DSR1_ERROR("server: cannot accept %s calls (grpc_call_error %d)", dsr1__srv_methods[m].path,
                   (int)e);
        dsr1__srv_call_unref(c);
    }
}

static void *cq_thread(void *arg)
{
    dsr1_server *s = arg;
    dsr1_log_set_tag("grpc");
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
        if (ev.type != GRPC_OP_COMPLETE) continue;
        srv_tag *t = ev.tag;
        t->fn(t->arg, ev.success != 0);
    }
    return NULL;
}

static void on_shutdown(void *arg, bool ok)
{
    (void)ok;
    dsr1_server *s = arg;
    pthread_mutex_lock(&s->mu);
    s->shutdown_done = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* ---- start and stop ---- */

static char *dup_or_null(const char *str)
{
    return str && *str ? strdup(str) : NULL;
}

static dsr1_status copy_params(dsr1_server *s, const dsr1_server_params *p)
{
    s->p = *p;
    if (!s->p.max_batch_items) s->p.max_batch_items = 1000000;
    s->api_key = dup_or_null(p->api_key);
    s->model_dir = strdup(p->model_dir ? p->model_dir : ".");
    s->config_path = strdup(p->config_path ? p->config_path : "");
    s->transport = strdup(p->transport ? p->transport : "none");
    s->kernels = strdup(p->kernels ? p->kernels : "");
    if (!s->model_dir || !s->config_path || !s->transport || !s->kernels ||
        (p->api_key && *p->api_key && !s->api_key))
        return dsr1_error(DSR1_ERR_NOMEM, "server: out of memory");
    s->p.api_key = s->api_key;
    s->p.model_dir = s->model_dir;
    s->p.config_path = s->config_path;
    s->p.transport = s->transport;
    s->p.kernels = s->kernels;
    return DSR1_OK;
}

static dsr1_status listen_on(dsr1_server *s, const char *host, int port)
{
    grpc_arg args[3] = {
        {.type = GRPC_ARG_INTEGER,
         .key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
         .value.integer = s->max_message_bytes},
        {.type = GRPC_ARG_INTEGER,
         .key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH,
         .value.integer = -1},
        /* a port in use must be an error, not shared with another server */
        {.type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_ALLOW_REUSEPORT, .value.integer = 0},
    };
    grpc_channel_args ca = {3, args};
    s->server = grpc_server_create(&ca, NULL);
    grpc_server_register_completion_queue(s->server, s->cq, NULL);
    for (int m = 0; m < SRV_N_METHODS; m++) {
        grpc_server_register_method_payload_handling ph =
            dsr1__srv_methods[m].recv ? GRPC_SRM_PAYLOAD_NONE
                                      : GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER;
        s->methods[m] =
            grpc_server_register_method(s->server, dsr1__srv_methods[m].path, NULL, ph, 0);
        if (!s->methods[m])
            return dsr1_error(DSR1_ERR_INTERNAL, "server: cannot register %s",
                              dsr1__srv_methods[m].path);
    }
    char addr[300];
    bool v6 = strchr(host, ':') && host[0] != '[';
    snprintf(addr, sizeof(addr), v6 ? "[%s]:%d" : "%s:%d", host, port);
    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    s->port = grpc_server_add_http2_port(s->server, addr, creds);
    grpc_server_credentials_release(creds);
    if (s->port <= 0)
        return dsr1_error(DSR1_ERR_IO,
                          "server: cannot listen on %s (port in use, or not an address "
                          "of this machine?)",
                          addr);
    return DSR1_OK;
}

static dsr1_status start_threads(dsr1_server *s)
{
    for (; s->n_threads < CQ_THREADS; s->n_threads++) {
        int e = pthread_create(&s->threads[s->n_threads], NULL, cq_thread, s);
        if (e)
            return dsr1_error(DSR1_ERR_INTERNAL, "server: cannot start a thread: %s", strerror(e));
    }
    return DSR1_OK;
}

/* One wait on s->cv (s->mu held) that returns false once `until` (monotonic seconds) has
 * passed; until 0 waits without a limit. */
static bool wait_until(dsr1_server *s, double until)
{
    if (!until) {
        pthread_cond_wait(&s->cv, &s->mu);
        return true;
    }
    if (dsr1__srv_mono_now() >= until) return false;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 100000000;
    if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
    pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    return true;
}

dsr1_status dsr1_server_listen(const char *host, int port, int max_message_bytes, dsr1_server **out)
{
    dsr1_server *s = calloc(1, sizeof(*s));
    if (!s) return dsr1_error(DSR1_ERR_NOMEM, "server: out of memory");
    grpc_init();
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    pthread_cond_init(&s->watch_cv, NULL);
    s->shutdown_tag = (srv_tag){on_shutdown, s};
    if (getrandom(&s->id_salt, sizeof(s->id_salt), 0) != (ssize_t)sizeof(s->id_salt))
        s->id_salt = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)s;
    atomic_init(&s->next_id, 0);
    s->max_message_bytes = max_message_bytes ? max_message_bytes : DSR1_SERVER_DEFAULT_MSG_BYTES;
    s->cq = grpc_completion_queue_create_for_next(NULL);
    dsr1_status st = start_threads(s); /* first: they deliver the shutdown of a failed start */
    if (st == DSR1_OK) st = listen_on(s, host ? host : "127.0.0.1", port);
    if (st != DSR1_OK) {
        dsr1_server_destroy(s);
        return st;
    }
    *out = s;
    return DSR1_OK;
}

dsr1_status dsr1_server_start(dsr1_server *s, const dsr1_server_params *p)
{
    if (!p->sched || !p->cfg || !p->tok || p->max_context < 1)
        return dsr1_error(
            DSR1_ERR_INVALID_ARG,
            "server: a scheduler, a config, a tokenizer and max_context are required");
    dsr1_status st = copy_params(s, p);
    if (st == DSR1_OK) st = dsr1__srv_model_load(s);
    if (st == DSR1_OK && p->batches) st = dsr1__srv_batches_create(s, p->batches, &s->batches);
    if (st == DSR1_OK) st = dsr1__srv_watch_start(s); /* last: nothing fails after it */
    if (st != DSR1_OK) return st;
    s->start_time = dsr1__srv_mono_now();
    grpc_server_start(s->server);
    s->started = true;
    for (int m = 0; m < SRV_N_METHODS; m++)
        for (int i = 0; i < REQUESTS_PER_METHOD; i++) request_call(s, (srv_method)m);
    return DSR1_OK;
}

int dsr1_server_port(const dsr1_server *s)
{
    return s->port;
}

/* Stops the grpc server: no new calls; the open ones get GRACE_SECONDS to finish after the
 * scheduler has ended their requests, then are cancelled. */
static void shutdown_grpc(dsr1_server *s)
{
    if (s->shut_down) return;
    s->shut_down = true;
    pthread_mutex_lock(&s->mu);
    s->stopping = true;
    pthread_mutex_unlock(&s->mu);
    grpc_server_shutdown_and_notify(s->server, s->cq, &s->shutdown_tag);
    if (s->batches) dsr1__srv_batches_stop(s->batches);
    if (s->started) dsr1__srv_rpc_stop(s);
    pthread_mutex_lock(&s->mu);
    while (s->n_sched) wait_until(s, 0); /* the scheduler's FINALs, within a step */
    double grace = dsr1__srv_mono_now() + GRACE_SECONDS;
    while (s->n_calls && wait_until(s, grace)) {
    }
    if (s->n_calls) DSR1_INFO("server: cancelling %d calls still open", s->n_calls);
    pthread_mutex_unlock(&s->mu);
    grpc_server_cancel_all_calls(s->server);
    pthread_mutex_lock(&s->mu);
    while (s->n_calls || !s->shutdown_done) wait_until(s, 0);
    pthread_mutex_unlock(&s->mu);
    grpc_server_destroy(s->server);
    s->server = NULL;
}

void dsr1_server_shutdown(dsr1_server *s)
{
    if (s && s->server) shutdown_grpc(s);
}

void dsr1_server_destroy(dsr1_server *s)
{
    if (!s) return;
    if (s->server) shutdown_grpc(s);
    grpc_completion_queue_shutdown(s->cq);
    for (int i = 0; i < s->n_threads; i++) pthread_join(s->threads[i], NULL);
    grpc_completion_queue_destroy(s->cq);
    if (s->batches) dsr1__srv_batches_destroy(s->batches);
    dsr1__srv_model_free(s);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    pthread_cond_destroy(&s->watch_cv);
    free(s->api_key);
    free(s->model_dir);
    free(s->config_path);
    free(s->transport);
    free(s->kernels);
    free(s);
    grpc_shutdown();
}
