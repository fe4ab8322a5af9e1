/* The continuous-batching scheduler: the coordinator's serving loop.
 *
 * Requests are submitted from any thread; one scheduler thread owns everything else. Each
 * iteration it takes in new requests and aborts, frees finished and expired requests,
 * then builds one step under a token budget, interactive requests before batch items (see
 * dsr1_sched_class): running requests' next decode token or prefill chunk, then prefill
 * chunks of waiting requests (admitted while the paged cache has free blocks; a prompt's
 * blocks already in the prefix cache are reused, not recomputed). When a running request
 * needs a block and none is free, a batch item is preempted (the most recently admitted),
 * else, for an interactive request, the most recently admitted other request: its blocks
 * are freed and it is queued again (at the front of its class) to recompute its prompt and
 * the tokens it has generated so far, which gives the same tokens (seeded sampling included).
 * Admission follows each class's queue, but a request whose first chunk does not fit in the
 * free cache lets the ones behind it pass, up to DSR1_SCHED_MAX_BYPASS times. The step runs
 * on the executor (this process's engine or a worker grid), which samples each request's
 * next token where its logits are (the sample requests of forward.h), and the request's
 * events are sent.
 *
 * Requests are attention-data-parallel: the router gives each new request to one rank
 * (the one already holding the longest cached prefix of its prompt, else the least
 * loaded); its cache blocks live on that rank. */
#ifndef DSR1_SCHEDULER_H
#define DSR1_SCHEDULER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "forward.h"
#include "grammar.h"
#include "grammars.h"
#include "grid.h"
#include "sampling.h"
#include "status.h"
#include "textout.h"
#include "tokenizer.h"

typedef enum {
    DSR1_FINISH_NONE = 0,
    DSR1_FINISH_STOP = 1,
    DSR1_FINISH_LENGTH = 2,
    DSR1_FINISH_ABORT = 3,
    DSR1_FINISH_ERROR = 4,
} dsr1_finish;

const char *dsr1_finish_str(dsr1_finish f); /* "stop", "length", ... */

typedef enum { DSR1_EV_DELTA = 1, DSR1_EV_FINAL = 2 } dsr1_event_kind;

/* What a request's callback receives. Everything is borrowed for the duration of the
 * callback only. */
typedef struct {
    dsr1_event_kind kind;
    const char *request_id;
    void *ctx; /* the request's ctx */
    /* DELTA: the ids generated this step (usually one), the text they released, and with
     * logprobs one entry per id. FINAL: everything generated. */
    const int32_t *ids;
    int n_ids;
    const char *reasoning;
    size_t reasoning_len;
    const char *content;
    size_t content_len;
    const dsr1_sample_result *logprobs; /* NULL unless requested */
    /* FINAL only */
    dsr1_finish finish;
    const char *stop_reason;                   /* STOP: the string or id; else NULL */
    const char *error;                         /* ERROR: the message */
    const dsr1_sample_result *prompt_logprobs; /* n_prompt entries, NULL unless requested */
    /* ERROR: why, as a status (else DSR1_OK). DSR1_ERR_UNAVAILABLE: the executor failed or
     * the worker grid went down (lost workers whose experts no survivor holds) and every
     * request was ended; the request did nothing wrong and may be sent again once the
     * scheduler accepts requests (the batch store puts such items back to pending). */
    dsr1_status status;
    int prompt_tokens, completion_tokens, cached_tokens;
    double queue_s, ttft_s, e2e_s;
} dsr1_sched_event;

typedef void (*dsr1_sched_callback)(const dsr1_sched_event *ev);

/* Priority classes. Interactive requests (Generate, chat/completions) always go first;
 * batch items fill the capacity they leave: they are admitted only when no interactive
 * request is waiting, and a running batch item is preempted (its blocks freed, to be
 * recomputed later) when an interactive request needs room: cache blocks or a running slot,
 * so that batch load delays an interactive request's first token by one step at most. A
 * running request that needs a block takes it from the youngest batch item first. A
 * preempted batch item goes back to the front of the batch queue (it resumes first among
 * batch items, never ahead of an interactive request) and its tokens do not change. Batch
 * items do not count toward dsr1_sched_params.max_queued: their submitter bounds them (the
 * batch store keeps a window of them in the scheduler). */
typedef enum { DSR1_SCHED_INTERACTIVE = 0, DSR1_SCHED_BATCH = 1 } dsr1_sched_class;

/* Admission is in queue order within a class, except that a request whose first chunk does
 * not fit in the free cache lets smaller ones behind it pass; once this many have passed
 * it, nothing behind it is admitted until it is (large prompts are not starved). */
#define DSR1_SCHED_MAX_BYPASS 16

typedef struct {
    const char *id;        /* unique among live requests; copied */
    const int32_t *prompt; /* copied */
    int n_prompt;
    dsr1_sampling sampling; /* bias arrays copied */
    int max_tokens;         /* >= 1 */
    bool logprobs, prompt_logprobs;
    dsr1_textout_params text; /* arrays and strings copied */
    /* Constrained decoding: NULL, or a compiled grammar (shared; it must outlive the
     * request) that the generated text follows. Each drawn token is masked by the request's
     * matcher (kept here, beside the sampling parameters, across preemption); a token that
     * the mask alone allows is appended without sampling, its cache row computed with the
     * next draw (jump-forward; not with logprobs), which gives the same tokens. A request that
     * reasons (text.in_reasoning) is free until its `</think>`; with text.detect_think the
     * first token may also be `<think>`, which opens a free reasoning part. Past the
     * grammar's end (its EOS, with text.ignore_eos) the output is free again. The grammar's
     * vocabulary must not be larger than the model's. With dsr1_sched_params.grammars, a
     * reference from that cache that the scheduler gives back when the request ends (on a
     * submit error the caller keeps it); without, borrowed until the FINAL event. */
    const dsr1_grammar *grammar;
    /* A thinking budget: > 0, once this many tokens have been drawn inside the reasoning
     * (text.in_reasoning, or opened by the model with text.detect_think), `</think>` is
     * forced as the next token and the answer follows, within max_tokens. 0: none. */
    int think_budget;
    /* With a grammar: when set, the answer is free until it draws trigger_id (e.g. R1's
     * `<｜tool▁calls▁begin｜>` with tool_choice auto), and the grammar applies from the next
     * token (a "structural tag"). */
    bool grammar_after_trigger;
    int32_t trigger_id;
    int64_t deadline_ns;  /* CLOCK_MONOTONIC; 0: none. Expired: FINAL ABORT */
    dsr1_sched_class cls; /* 0: interactive (see dsr1_sched_class) */
    dsr1_sched_callback callback;
    void *ctx;
} dsr1_sched_request;

/* Runs steps for the scheduler: a single-process engine or a worker grid. */
typedef struct {
    void *ctx;
    /* One step; same contract as dsr1_engine_forward (with block tables). An error is
     * fatal for the executor: the scheduler fails every request and stops. */
    dsr1_status (*step)(void *ctx, const dsr1_batch *b);
    int n_ranks; /* attention data-parallel ranks (each with its own cache) */
    int blocks_per_rank;
    int block_tokens;
    /* Optional: proves every worker alive when the scheduler has been idle for
     * heartbeat_ms (workers give up on a silent coordinator, and a worker lost while idle
     * is then found before the next request); an error is fatal, as for step. */
    dsr1_status (*heartbeat)(void *ctx);
    int heartbeat_ms;
    /* Optional: up to `depth` steps in flight, so that pipeline stages overlap (grid.h's
     * submit/wait: submit returns at once, wait completes the oldest step). Steps in flight
     * hold disjoint requests: a request waits for its step before its next one. */
    dsr1_status (*submit)(void *ctx, const dsr1_batch *b, uint64_t *id);
    dsr1_status (*wait)(void *ctx, uint64_t id);
    int depth;
    /* Optional, for a grid that survives lost workers. When step, wait or heartbeat
     * returns DSR1_ERR_LOST, no step in flight ran; the scheduler calls recover, which
     * moves the grid to a new epoch on the survivors and fills alive[n_ranks] (the
     * attention ranks that still serve). The requests of lost ranks and of the steps in
     * flight are recomputed (as after a preemption); none fails. An error from recover is
     * fatal, as for step. DSR1_ERR_UNAVAILABLE from step, wait or heartbeat (with recover)
     * says the survivors cannot serve (an expert or a stage without a live copy) but
     * workers may join: every request fails, submissions are refused and health is false
     * until a heartbeat returns DSR1_ERR_LOST (workers joined) and recover succeeds.
     * Without recover, DSR1_ERR_LOST and DSR1_ERR_UNAVAILABLE are fatal too. */
    dsr1_status (*recover)(void *ctx, bool *alive);
    /* Optional: the grid's membership for dsr1_sched_info. */
    void (*membership)(void *ctx, dsr1_grid_health *out);
} dsr1_executor;

typedef struct {
    dsr1_executor exec;
    const dsr1_tokenizer *tok; /* for text output; may be NULL (ids only) */
    int vocab;
    int max_context; /* prompt + generated tokens per request */
    int step_tokens; /* token budget of one step (decode + prefill chunks) */
    int max_running; /* requests in the running set */
    int max_queued;  /* waiting interactive requests beyond which submit says DSR1_ERR_BUSY
                      * (batch items are not counted) */
    bool prefix_cache;
    dsr1_grammars *grammars; /* where requests' grammars come from; may be NULL */
} dsr1_sched_params;

typedef struct dsr1_sched dsr1_sched;

/* Starts the scheduler thread. */
dsr1_status dsr1_sched_create(const dsr1_sched_params *p, dsr1_sched **out);
/* Aborts every request (FINAL ABORT), stops the thread and frees everything. */
void dsr1_sched_destroy(dsr1_sched *s);

/* Checks a request as dsr1_sched_submit does, without queueing it, so that a frontend can
 * refuse a batch's bad items when the batch arrives: the prompt (non-empty, ids in the
 * vocabulary), prompt + max_tokens within the context and one rank's KV cache
 * (DSR1_ERR_RANGE), top_logprobs only with logprobs, the sampling ranges
 * (dsr1_sampling_validate), the text output's stops (dsr1_textout_params_check) and the
 * class; every
 * other error is DSR1_ERR_INVALID_ARG, the message naming the field. id and callback are
 * not looked at. Safe from any thread. */
dsr1_status dsr1_sched_check(const dsr1_sched *s, const dsr1_sched_request *r);
/* Queues a request. Errors (nothing queued, no callback): those of dsr1_sched_check, an
 * empty id or no callback (DSR1_ERR_INVALID_ARG), DSR1_ERR_EXISTS (id in use), DSR1_ERR_BUSY
 * (an interactive request when max_queued of them wait; never a batch item),
 * DSR1_ERR_UNAVAILABLE (the scheduler stopped after an executor failure).
 * Otherwise exactly one FINAL event follows, from the scheduler thread, after zero or more
 * DELTA events. */
dsr1_status dsr1_sched_submit(dsr1_sched *s, const dsr1_sched_request *r);
/* Aborts a live request: its FINAL ABORT follows within one step, its blocks are freed.
 * Returns false when no live request has this id. */
bool dsr1_sched_abort(dsr1_sched *s, const char *id);

typedef struct {
    int rank, running;
    int64_t blocks_total, blocks_used, blocks_cached;
} dsr1_sched_rank_info;

typedef struct {
    int queued, running, block_tokens;
    int64_t blocks_total, blocks_used, blocks_cached;
    int64_t requests_finished;
    int64_t preemptions; /* requests sent back to recompute (for want of blocks or a slot) */
    uint64_t steps;
    bool healthy; /* false after an executor failure */
    /* The worker grid's membership (all 0 for a single process): epoch, workers live of
     * total, attention ranks serving of n_ranks, and the lost workers by name. */
    dsr1_grid_health grid;
    int ranks_serving;
    int n_ranks;
    dsr1_sched_rank_info ranks[64]; /* the first 64 ranks */
    /* batch items (DSR1_SCHED_BATCH) among queued, running and preemptions */
    int queued_batch, running_batch;
    int64_t preemptions_batch;
} dsr1_sched_info;

void dsr1_sched_get_info(dsr1_sched *s, dsr1_sched_info *out);

#endif
