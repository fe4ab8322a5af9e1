/* Internals of the HTTP server, shared by its files:
 *   http_server.c    the daemon, routing, authentication, bodies, the simple endpoints,
 *                    the disconnect watcher, start and stop
 *   http_prompt.c    prompts: the chat template, our tool prompt, the reasoning switch
 *   http_prepare.c   completions requests checked: the body, model, prompt, parameters
 *   http_generate.c  completions: jobs, submission, events to responses
 *   http_metrics.c   the Prometheus metrics
 *   http_request.c   request bodies to structs (pure, fuzzed)
 *   http_tools.c     R1's tool-call format and our tool prompt
 *   http_files.c     the Files API (uploads streamed into the batch store)
 *   http_batches.c   the Batches API and the "openai" batch codec (items run as jobs)
 *
 * A job is one completions request: n scheduler requests whose events fill the job's
 * output buffer, which the connection sends. It is reference-counted: the connection holds
 * one reference until libmicrohttpd reports the request finished, and each scheduler
 * request holds one until its FINAL event. A batch item's job has no connection: the item
 * holds that first reference until the job has ended and its result was handed back. */
#ifndef DSR1_HTTP_INTERNAL_H
#define DSR1_HTTP_INTERNAL_H

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "batches.h"
#include "chat_template.h"
#include "http_request.h"
#include "http_server.h"
#include "http_tools.h"

/* ---- metrics ---- */

#define HIST_MAX_BUCKETS 24

typedef struct {
    int n; /* buckets, the last one +Inf implied */
    const double *bounds;
    uint64_t counts[HIST_MAX_BUCKETS];
    uint64_t count;
    double sum;
} http_hist;

typedef struct {
    pthread_mutex_t mu;
    http_hist ttft, itl, e2e, queue, prompt_len, gen_len;
    uint64_t prompt_tokens, generation_tokens, prefix_hits, prefix_queries;
    uint64_t finished[5];  /* by dsr1_finish */
    uint64_t responses[6]; /* 200, 400, 401, 404, 413, 429 */
    uint64_t other_responses;
} http_metrics;

void dsr1__http_metrics_init(http_metrics *m);
void dsr1__http_metrics_free(http_metrics *m);
void dsr1__http_metrics_itl(http_metrics *m, double seconds);
void dsr1__http_metrics_final(http_metrics *m, const dsr1_sched_event *ev);
void dsr1__http_metrics_status(http_metrics *m, int status);
/* The exposition text (malloc'd). */
char *dsr1__http_metrics_text(dsr1_http_server *s, size_t *len);

/* ---- jobs ---- */

typedef struct {
    char id[96];           /* the completion's id and the choice: tool call ids derive from it */
    char rid[176];         /* its scheduler request id (id, or a batch item's request id) */
    dsr1_toolparse *tools; /* NULL unless tools are parsed */
    bool role_sent, content_seen, reasoning_seen, final_seen;
    int n_tokens, tokens_before_content;
    double last_t;
    json_t *choice; /* non-streamed: the finished choice */
    int prompt_tokens, completion_tokens, cached_tokens;
    dsr1_finish finish;
    dsr1_status status; /* its FINAL's status (an ERROR's reason) */
} http_choice;

typedef struct http_job http_job;
struct http_job {
    dsr1_http_server *s;
    atomic_int refs;
    uint64_t serial;
    http_job *prev, *next; /* the server's live jobs (s->mu) */

    pthread_mutex_t mu;          /* guards everything below */
    struct MHD_Connection *conn; /* NULL once the request is over */
    int fd;
    bool watched;
    dsr1_http_kind kind;
    bool stream, include_usage, logprobs, exclude_reasoning, gone;
    int n, n_final, n_submitted;
    char id[64];
    long long created;
    http_choice *ch;
    /* the response: streamed bytes, or the whole body once ended */
    char *out;
    size_t out_n, out_off, out_cap;
    bool suspended, ended, overflow;
    int status; /* non-streamed: the HTTP status of the body in out */
    /* n > 1: choices 1.. are submitted once choice 0 has computed the prompt (its first
     * event), so that they find its blocks in the prefix cache; until then the request's
     * parameters are kept here (owned copies) */
    bool deferred;
    int fail_status;     /* submitting them failed: the answer's status, 0 if none */
    dsr1_status fail_st; /* and the scheduler's status for it */
    char fail_msg[256];
    dsr1_sched_request rest;
    int32_t *rest_prompt, *rest_bias_ids;
    float *rest_bias_values;
    char *rest_stop[DSR1_HTTP_MAX_STOP];
    /* a batch item's job (no connection, class DSR1_SCHED_BATCH): on_end is called once,
     * outside j->mu, when the job has ended (out and status hold the response) */
    bool batch, end_told;
    void (*on_end)(http_job *j);
    void *end_ctx;
};

/* Takes a reference on a job found in s->jobs (under s->mu) unless its last reference is
 * already gone: job_free unlinks a job only after its count reached 0, so a job seen in
 * the list may be on its way out. Returns whether a reference was taken. */
bool dsr1__http_job_ref_live(http_job *j);
void dsr1__http_job_unref(http_job *j);

/* ---- the server ---- */

struct dsr1_http_server {
    dsr1_http_params p;
    char *api_key, *model_dir, *model_name;
    struct MHD_Daemon *d;
    int port;
    dsr1_chat_template *tmpl;
    bool tmpl_uses_tools;
    float default_temperature, default_top_p;
    int32_t think_start_id, think_end_id;
    uint64_t salt;
    atomic_uint_least64_t next_id;
    long long start_time;
    http_metrics metrics;

    pthread_mutex_t mu; /* guards the fields below */
    pthread_cond_t cv;
    http_job *jobs;
    int n_jobs, n_suspended;
    int n_sched;       /* scheduler requests not yet final */
    int n_sched_batch; /* of them, batch items' */
    int n_batch_jobs;  /* of n_jobs, batch items' */
    bool stopping;
    uint64_t next_serial;

    int epfd, wakefd; /* the disconnect watcher */
    pthread_t watcher;
    bool watcher_started;
};

/* A response with a JSON body (taken over: freed here) / an OpenAI error object. */
enum MHD_Result dsr1__http_send_json(dsr1_http_server *s, struct MHD_Connection *c, int status,
                                     json_t *body);
enum MHD_Result dsr1__http_send_error(dsr1_http_server *s, struct MHD_Connection *c, int status,
                                      const char *type, const char *param, const char *code,
                                      const char *message);
/* The error object's JSON text (malloc'd). */
char *dsr1__http_error_json(const char *message, const char *type, const char *param,
                            const char *code);
/* The HTTP status for a dsr1_status of a failed submission or conversion. */
int dsr1__http_status_of(dsr1_status st);
/* The reasoning tokens of a finished choice (usage.completion_tokens_details). */
int dsr1__http_reasoning_tokens(const http_choice *c, int completion_tokens);
uint64_t dsr1__http_random(dsr1_http_server *s);
double dsr1__http_now(void);

/* Connection bookkeeping of a job (server.c): the watcher notices a hang-up. */
void dsr1__http_watch(dsr1_http_server *s, http_job *j);
void dsr1__http_unwatch(dsr1_http_server *s, http_job *j);
void dsr1__http_suspend(dsr1_http_server *s, http_job *j); /* j->mu held */
void dsr1__http_resume(dsr1_http_server *s, http_job *j);  /* j->mu held */

/* ---- http_prompt.c ---- */

/* A request's prompt: ids (malloc'd) and where generation starts. */
typedef struct {
    int32_t *ids;
    size_t n;
    bool in_reasoning; /* the prompt ends inside <think> */
    bool detect_think; /* the model may open <think> itself */
} http_prompt;

dsr1_status dsr1__http_chat_prompt(const dsr1_http_server *s, const dsr1_http_request *r,
                                   http_prompt *out);
dsr1_status dsr1__http_completion_prompt(const dsr1_http_server *s, const dsr1_http_request *r,
                                         http_prompt *out);
/* What the server reads from the checkpoint directory. */
dsr1_status dsr1__http_model_load(dsr1_http_server *s);
void dsr1__http_model_free(dsr1_http_server *s);

/* ---- http_prepare.c, http_generate.c ---- */

/* What the scheduler requests of a prepared request are made of. */
typedef struct {
    dsr1_sampling sampling;
    int max_tokens;
    dsr1_textout_params text;
    const dsr1_grammar *grammar; /* response_format's or the tool calls', a reference from
                                    s->p.grammars */
    bool after_trigger;          /* the grammar starts after trigger_id (tool_choice auto) */
    int32_t trigger_id;
    int think_budget; /* reasoning tokens before </think> is forced; 0: none */
} http_params;

/* A completions request parsed and checked as its endpoint does (the model, the prompt and
 * the parameters, grammars compiled), ready to submit. */
typedef struct http_prepared http_prepared;
struct http_prepared {
    dsr1_http_request r;
    http_prompt pr;
    http_params pa;
};

typedef struct {
    int status;       /* the HTTP status of the failure */
    char param[64];   /* the field at fault, "" if none */
    const char *code; /* OpenAI's error code or NULL */
    char message[1024];
} http_fail;
/* 0 and *out, or the failure's HTTP status with f filled. batch: a batch item's body, where
 * stream is refused and what the scheduler would refuse is checked too (dsr1_sched_check). */
int dsr1__http_prepare(dsr1_http_server *s, dsr1_http_kind kind, const char *body, size_t len,
                       bool batch, http_prepared **out, http_fail *f);
void dsr1__http_prepared_free(dsr1_http_server *s, http_prepared *p);
/* The scheduler request of a prepared request (choice 0; no id, callback or class). */
void dsr1__http_sched_request(const http_prepared *p, dsr1_sched_request *q);

/* POST /v1/chat/completions and /v1/completions: a complete body. Either answers at once
 * (errors, *job NULL) or submits and returns the job, whose reference the connection keeps. */
enum MHD_Result dsr1__http_generate(dsr1_http_server *s, struct MHD_Connection *c,
                                    dsr1_http_kind kind, const char *body, size_t len,
                                    http_job **job);
/* Submits a prepared request as a job with no connection, a batch item: its scheduler
 * requests have class DSR1_SCHED_BATCH and ids rid (choice 0) and rid#k (choice k), and
 * on_end(j) is called once when it has ended, after which the caller drops the job's first
 * reference (dsr1__http_job_unref); it may come before this returns. Errors: the
 * scheduler's (DSR1_ERR_BUSY: try again), nothing submitted then and no call of on_end. */
dsr1_status dsr1__http_job_submit_batch(dsr1_http_server *s, const http_prepared *p,
                                        const char *rid, void (*on_end)(http_job *j),
                                        void *end_ctx);
/* The connection's response once a non-streamed job has ended. */
enum MHD_Result dsr1__http_job_respond(dsr1_http_server *s, struct MHD_Connection *c, http_job *j);
/* Aborts the job's scheduler requests (client gone, shutdown). */
void dsr1__http_job_abort(http_job *j);

/* ---- http_files.c ---- */

/* POST /v1/files, streamed: begin when the request's headers are in (NULL when it is not a
 * multipart/form-data body: route answers it), feed each piece of the body as it arrives,
 * finish (answers) once it is complete; free aborts an upload not committed. */
typedef struct http_upload http_upload;
http_upload *dsr1__http_upload_begin(dsr1_http_server *s, struct MHD_Connection *c);
void dsr1__http_upload_feed(http_upload *u, const char *data, size_t n);
enum MHD_Result dsr1__http_upload_finish(dsr1_http_server *s, struct MHD_Connection *c,
                                         http_upload *u);
void dsr1__http_upload_free(http_upload *u);
/* /v1/files and /v1/files/{id}[/content] other than an upload. */
enum MHD_Result dsr1__http_files(dsr1_http_server *s, struct MHD_Connection *c, const char *method,
                                 const char *url);
/* A file object (OpenAI's OpenAIFile). */
json_t *dsr1__http_file_object(const dsr1_file_info *f);

/* ---- http_batches.c ---- */

/* /v1/batches, /v1/batches/{id}, /v1/batches/{id}/cancel. */
enum MHD_Result dsr1__http_batches(dsr1_http_server *s, struct MHD_Connection *c,
                                   const char *method, const char *url, const char *body,
                                   size_t len);
/* Registers the "openai" codec with s->p.batches. */
dsr1_status dsr1__http_batches_register(dsr1_http_server *s);
/* A query argument as an int in [lo, hi] (absent: def); false after answering 400. */
bool dsr1__http_query_int(dsr1_http_server *s, struct MHD_Connection *c, const char *name, int def,
                          int lo, int hi, int *out, enum MHD_Result *ret);

#endif
