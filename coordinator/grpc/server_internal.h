/* Internals of the gRPC server, shared by its files:
 *   server.c          the server object, completion-queue threads, calls and their sends
 *   server_rpc.c      Generate, Abort, GetModelInfo, GetServerInfo, Health
 *   server_batch.c    the batch RPCs on the durable batch store (batches.h) and its
 *                     "grpc" codec
 *   server_convert.c  requests -> scheduler requests, scheduler events -> messages
 *
 * A call (srv_call) is reference-counted: each gRPC batch in flight, the scheduler (from a
 * successful submit to the request's FINAL event) and a subscription (StreamBatchResults,
 * Watch) hold one reference. Messages go out through the call's outbox: one send in
 * flight at a time (gRPC allows no more), the next one started when it completes, the
 * status last. Any thread may send. */
#ifndef DSR1_SERVER_INTERNAL_H
#define DSR1_SERVER_INTERNAL_H

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "chat_template.h"
#include "dsr1.pb-c.h"
#include "health.pb-c.h"
#include "server.h"

typedef struct srv_call srv_call;
typedef struct srv_batches srv_batches;

/* What a completion-queue event runs. */
typedef struct {
    void (*fn)(void *arg, bool ok);
    void *arg;
} srv_tag;

typedef enum {
    SRV_GENERATE,
    SRV_SUBMIT_BATCH,
    SRV_UPLOAD_BATCH,
    SRV_GET_BATCH,
    SRV_STREAM_BATCH,
    SRV_CANCEL_BATCH,
    SRV_LIST_BATCHES,
    SRV_ABORT,
    SRV_MODEL_INFO,
    SRV_SERVER_INFO,
    SRV_HEALTH_CHECK,
    SRV_HEALTH_WATCH,
    SRV_N_METHODS
} srv_method;

/* A packed message (malloc'd). */
typedef struct {
    uint8_t *data;
    size_t len;
} srv_buf;

typedef struct srv_msg {
    struct srv_msg *next;
    grpc_byte_buffer *bb;
} srv_msg;

struct srv_call {
    dsr1_server *srv;
    srv_method method;
    atomic_int refs;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *payload;
    srv_tag start_tag, close_tag, send_tag, recv_tag;
    grpc_byte_buffer *recv_bb;     /* client streaming: the message being received */
    int cancelled;                 /* RECV_CLOSE_ON_SERVER's answer */
    srv_call *prev, *next;         /* the server's calls (srv->mu) */
    srv_call *sub_prev, *sub_next; /* a batch's or the server's subscribers */
    void
        *sub; /* StreamBatchResults: its subscription; UploadBatch: the upload; Watch: the server */

    pthread_mutex_t mu; /* guards everything below */
    srv_msg *head, *tail;
    int n_out; /* messages queued or in flight */
    /* dsr1__srv_call_pace: called once (outside mu) when n_out falls to drain_at */
    void (*on_drain)(srv_call *c);
    int drain_at;
    grpc_byte_buffer *in_flight; /* the message of the send in flight */
    bool sending, md_sent, status_queued, status_sent, dead, closed;
    grpc_status_code code;
    grpc_slice details;
    /* Watch: the status sent last (SERVICE_UNKNOWN: a name never served, not watched) */
    int health_sent;
    /* Generate */
    char *request_id;
    bool in_sched, final_seen;
};

#define CQ_THREADS 2 /* completion-queue threads: RPC handlers and send completions */

struct dsr1_server {
    dsr1_server_params p; /* strings point into the copies below */
    char *api_key, *model_dir, *config_path, *transport, *kernels;
    grpc_server *server;
    grpc_completion_queue *cq;
    void *methods[SRV_N_METHODS];
    int port, max_message_bytes;
    pthread_t threads[CQ_THREADS];
    int n_threads;
    bool started;   /* serving: dsr1_server_start succeeded */
    bool shut_down; /* dsr1_server_shutdown ran */
    srv_tag shutdown_tag;

    pthread_mutex_t mu; /* guards the fields below */
    pthread_cond_t cv;
    srv_call *calls;    /* started calls */
    int n_calls;        /* every srv_call allocated, requested ones included */
    int n_sched;        /* Generate calls holding a scheduler reference */
    srv_call *watchers; /* Health.Watch streams */
    bool stopping, shutdown_done;
    /* the Watch poller: sends a watcher the status when it changes */
    pthread_t watch_thread;
    pthread_cond_t watch_cv;
    bool watch_running, watch_stop;

    /* the model */
    dsr1_chat_template *tmpl; /* NULL: no chat template */
    char *config_json, *model_name;
    float default_temperature, default_top_p;
    int32_t think_end_id;   /* -1: none */
    int32_t think_start_id; /* "<think>", -1: none */
    double start_time;
    atomic_uint_least64_t next_id;
    uint64_t id_salt;
    srv_batches *batches;
};

/* ---- server.c ---- */
void dsr1__srv_call_ref(srv_call *c);
void dsr1__srv_call_unref(srv_call *c);
/* Subscriber lists (a batch's StreamBatchResults calls, the Watch calls), under the lock
 * of their owner. */
void dsr1__srv_sub_add(srv_call **head, srv_call *c);
void dsr1__srv_sub_remove(srv_call **head, srv_call *c);
/* Queues a message (data is taken over) / a packed protobuf message. Dropped once the call
 * has ended or its status is queued. */
void dsr1__srv_call_send(srv_call *c, srv_buf msg);
void dsr1__srv_call_send_msg(srv_call *c, const ProtobufCMessage *m);
/* Flow control for a stream fed by a source that must not block: true when high or more
 * messages wait to go out, and then on_drain(c) is called once (from a completion-queue
 * thread) when they are down to low, unless the call ends first. */
bool dsr1__srv_call_pace(srv_call *c, int high, int low, void (*on_drain)(srv_call *c));
/* Queues the status, sent after the queued messages; later sends are dropped. */
void dsr1__srv_call_finish(srv_call *c, grpc_status_code code, const char *details);
/* The status for a dsr1_status with the thread's message (dsr1_errmsg()). */
void dsr1__srv_call_finish_error(srv_call *c, dsr1_status st);
grpc_status_code dsr1__srv_grpc_code(dsr1_status st);
/* Packs m into a malloc'd buffer. */
dsr1_status dsr1__srv_pack(const ProtobufCMessage *m, srv_buf *out);
/* Seconds on the wall clock / on CLOCK_MONOTONIC. */
double dsr1__srv_unix_now(void);
double dsr1__srv_mono_now(void);
/* A random number (ids, seeds): unique per server, unpredictable across servers. */
uint64_t dsr1__srv_random(dsr1_server *s);
/* A fresh id: prefix + 16 hex digits. */
void dsr1__srv_make_id(dsr1_server *s, const char *prefix, char *out, size_t cap);
/* Whether id is 1..128 bytes of [A-Za-z0-9._:-] (request and batch ids). */
bool dsr1__srv_id_valid(const char *id);

/* ---- server_rpc.c: handlers; a unary one fills *resp or fails (status and message) ---- */
typedef dsr1_status (*srv_unary_fn)(dsr1_server *s, const uint8_t *req, size_t len, srv_buf *resp);
/* A streaming one owns the call from here on (takes references as it needs). */
typedef void (*srv_stream_fn)(srv_call *c, const uint8_t *req, size_t len);

typedef struct {
    const char *path;
    bool public_;       /* served without the API key */
    srv_unary_fn unary; /* or */
    srv_stream_fn stream;
    void (*on_close)(srv_call *c); /* after RECV_CLOSE_ON_SERVER (c->cancelled set) */
    /* or client streaming: each received message in turn (return true for the next one),
     * then data NULL once: at the client's half-close (gone false) or when the call ended
     * first (gone true; nothing can be sent). */
    bool (*recv)(srv_call *c, const uint8_t *data, size_t len, bool gone);
} srv_method_desc;

extern const srv_method_desc dsr1__srv_methods[SRV_N_METHODS];
/* Loads what GetModelInfo and the conversions need from the checkpoint directory. */
dsr1_status dsr1__srv_model_load(dsr1_server *s);
void dsr1__srv_model_free(dsr1_server *s);
/* Starts the thread that tells Watch streams of changes (the scheduler's health, polled
 * every DSR1__SRV_WATCH_MS). */
#define DSR1__SRV_WATCH_MS 200
dsr1_status dsr1__srv_watch_start(dsr1_server *s);
/* Shutdown: stops that thread, aborts every Generate request in the scheduler and ends
 * Watch streams (NOT_SERVING, then status OK). */
void dsr1__srv_rpc_stop(dsr1_server *s);

/* ---- server_batch.c ---- */
/* Registers the "grpc" codec with the store (which must be closed before the server is
 * destroyed). */
dsr1_status dsr1__srv_batches_create(dsr1_server *s, dsr1_batches *store, srv_batches **out);
/* Shutdown: ends the StreamBatchResults calls (UNAVAILABLE: resume with from_seq). The
 * batches themselves stay in the store. */
void dsr1__srv_batches_stop(srv_batches *b);
void dsr1__srv_batches_destroy(srv_batches *b);
/* Batches not final (of every format); 0 without a store. */
int dsr1__srv_batches_active(srv_batches *b);
dsr1_status dsr1__srv_submit_batch(dsr1_server *s, const uint8_t *req, size_t len, srv_buf *resp);
bool dsr1__srv_upload_batch(srv_call *c, const uint8_t *data, size_t len, bool gone);
dsr1_status dsr1__srv_get_batch(dsr1_server *s, const uint8_t *req, size_t len, srv_buf *resp);
dsr1_status dsr1__srv_cancel_batch(dsr1_server *s, const uint8_t *req, size_t len, srv_buf *resp);
dsr1_status dsr1__srv_list_batches(dsr1_server *s, const uint8_t *req, size_t len, srv_buf *resp);
void dsr1__srv_stream_batch(srv_call *c, const uint8_t *req, size_t len);
void dsr1__srv_stream_batch_closed(srv_call *c);

/* ---- server_convert.c ---- */
/* Allocations of one message under construction, freed at once. */
typedef struct srv_arena {
    struct srv_arena_block *head;
} srv_arena;
void *dsr1__srv_alloc(srv_arena *a, size_t n); /* zeroed; NULL when out of memory */
void dsr1__srv_arena_free(srv_arena *a);

/* A request in scheduler form: the prompt and parameters, owning their arrays. */
typedef struct {
    int32_t *prompt;
    int n_prompt;
    bool in_reasoning; /* the prompt ends inside <think> */
    bool detect_think; /* a chat whose template did not open <think>: the model may (R1-0528) */
} srv_prompt;

typedef struct {
    dsr1_sampling sampling;
    int max_tokens;
    bool logprobs, prompt_logprobs;
    dsr1_textout_params text; /* stop strings and ids borrowed from the message */
    int32_t *bias_ids;        /* owned */
    float *bias_values;
    /* a reference from grammars (SamplingParams.constraint), given back by
     * dsr1__srv_params_free unless a submit took it (dsr1__srv_submitted) */
    const dsr1_grammar *grammar;
    dsr1_grammars *grammars;
} srv_params;

bool dsr1__srv_utf8_valid(const char *s);
dsr1_status dsr1__srv_prompt(const dsr1_server *s, const Dsr1__V1__Input *in, srv_prompt *out);
void dsr1__srv_prompt_free(srv_prompt *p);
/* Sampling parameters with defaults and every limit checked; sp may be NULL. */
dsr1_status dsr1__srv_params(dsr1_server *s, const Dsr1__V1__SamplingParams *sp,
                             const srv_prompt *prompt, srv_params *out);
/* The scheduler request of a prompt and its parameters (arrays borrowed); the caller adds
 * id, callback, ctx and deadline. */
dsr1_sched_request dsr1__srv_request(const srv_prompt *prompt, const srv_params *pa);
/* After a successful dsr1_sched_submit of pa's request: the scheduler holds the grammar
 * reference now. */
void dsr1__srv_submitted(srv_params *pa);
void dsr1__srv_params_free(srv_params *p);
/* The defaults in force (ModelInfo.default_sampling). */
void dsr1__srv_default_sampling(const dsr1_server *s, Dsr1__V1__SamplingParams *out);
/* A FINAL event as a Completion / a DELTA event as a Delta, allocated in a. */
Dsr1__V1__Completion *dsr1__srv_completion(const dsr1_server *s, const dsr1_sched_event *ev,
                                           srv_arena *a);
Dsr1__V1__Delta *dsr1__srv_delta(const dsr1_server *s, const dsr1_sched_event *ev, srv_arena *a);
Dsr1__V1__FinishReason dsr1__srv_finish_reason(dsr1_finish f);

#endif
