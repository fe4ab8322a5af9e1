/* The scheduler's internals, shared by scheduler.c (requests, the loop, results) and
 * admit.c (planning a step: admission, priority classes, preemption). Not for use outside
 * coordinator/sched.
 *
 * Everything here but `incoming`, `live`, `info`, `incoming_batch` and the requests'
 * `aborted` flags (guarded by `mu`) belongs to the scheduler thread. */
#ifndef DSR1_SCHED_INTERNAL_H
#define DSR1_SCHED_INTERNAL_H

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "blocks.h"
#include "scheduler.h"

typedef enum { REQ_WAITING, REQ_RUNNING } req_state;
typedef enum { MASK_UNKNOWN, MASK_FREE, MASK_SET } mask_state;

typedef struct req {
    char *id;
    dsr1_sched_callback callback;
    void *ctx;
    dsr1_sched_class cls;
    int32_t *tokens; /* prompt, then generated ids; capacity n_prompt + max_tokens */
    int n_prompt, n_tokens, max_tokens;
    dsr1_sampling sp;
    int32_t *bias_ids;
    float *bias_values;
    bool logprobs, prompt_logprobs;
    dsr1_textout *text;
    /* the reasoning part: a budget, and where constrained decoding starts */
    bool reasoning;   /* inside <think> ... </think> */
    bool may_open;    /* the next token may open reasoning: <think> (detect_think) */
    int n_reasoning;  /* tokens drawn inside the reasoning */
    int think_budget; /* > 0: </think> is forced once n_reasoning reaches it */
    int32_t think_start_id, think_end_id;
    /* constrained decoding: the matcher and the mask of the step in flight */
    dsr1_grammars *grammars; /* the cache to give `grammar` back to when r ends */
    const dsr1_grammar *grammar;
    dsr1_matcher *matcher;
    bool grammar_done;     /* the matcher took EOS: what follows (ignore_eos) is free */
    bool awaiting_trigger; /* free until trigger_id is drawn (grammar_after_trigger) */
    int32_t trigger_id;
    uint32_t *mask;          /* [mask_words of the model's vocabulary] */
    mask_state mask_state;   /* of the token drawn next: r->mask is computed once per token */
    dsr1_sample_result *lp;  /* [max_tokens] when logprobs */
    dsr1_sample_result *plp; /* [n_prompt] when prompt_logprobs */
    int n_plp;               /* prompt positions with their logprob recorded */
    int64_t deadline_ns, t_submit, t_sched, t_first;
    /* cache */
    int rank;
    int32_t *blocks;
    int n_blocks, cap_blocks;
    int n_computed;  /* positions whose cache rows are written */
    int n_committed; /* leading blocks offered to the prefix cache */
    int n_cached;    /* prompt tokens served from the prefix cache (usage) */
    req_state state;
    int bypassed; /* waiting: requests of its class admitted ahead of it since it last queued */
    bool busy;    /* in a step in flight: not planned, preempted or ended until it returns */
    bool aborted; /* guarded by mu */
    const char *abort_why;
} req;

typedef struct {
    char *p;
    size_t len, cap;
} text_buf;

/* One step, planned and (with a pipelining executor) in flight. */
typedef struct {
    int n;
    dsr1_seq_step *seqs;         /* [max_running] */
    dsr1_seq_sample *seq_sample; /* [max_running]: the sample requests of seqs */
    req **seq_req;               /* [max_running] */
    dsr1_sample_result *samples; /* [max_running] */
    dsr1_sample_result *row_lp;  /* prompt logprobs of the step */
    int row_lp_cap;
    dsr1_batch batch; /* must outlive the step in flight */
    uint64_t id;      /* the executor's id of the step in flight */
    dsr1_status st;   /* an executor without submit: the step's outcome */
    bool prefill;     /* DSR1_SCHED_PROFILE: the step holds prefill tokens */
} step_slot;

/* DSR1_SCHED_PROFILE set (non-empty, not 0): where the scheduler thread's wall time goes,
 * accumulated in ns by scheduler.c and logged when the scheduler is destroyed. */
typedef struct {
    bool on;
    int64_t t0;                                        /* creation */
    int64_t intake, plan, exec, after, text, cb, idle; /* ns: text and cb are within after */
    int64_t steps, seqs, tokens, prefill_tokens, prefill_steps, samples, deltas;
    int64_t exec_decode; /* ns of exec in steps without prefill tokens */
} sched_profile;

/* A growable array of request pointers. */
typedef struct {
    req **v;
    int n, cap;
} req_list;

struct dsr1_sched {
    dsr1_sched_params p;
    dsr1_blocks **blocks; /* [n_ranks] */
    int *rank_running;
    bool *rank_alive; /* [n_ranks]: false once the rank lost a worker (executor.recover) */
    int64_t recoveries;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop, failed;
    bool down;               /* mu: the grid cannot serve until workers join (executor.recover) */
    char down_why[512];      /* mu */
    req_list incoming, live; /* mu */
    int incoming_batch;      /* mu: batch items among incoming */
    /* waiting[cls]: each class's queue, in admission order (preempted requests at the
     * front); running: in admission order */
    req_list waiting[2], running;
    req **snapshot;       /* [max_running]: the running requests being planned */
    dsr1_sched_info info; /* mu */
    int64_t finished, preemptions, preemptions_batch;
    uint64_t steps;
    /* steps: slots[(head + i) % depth] for the i-th of `inflight` steps in flight */
    step_slot *slots;
    int depth, head, inflight;
    text_buf reasoning, content; /* a delta's text */
    sched_profile prof;
};

static inline int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline bool list_push(req_list *l, req *r)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 16;
        req **v = realloc(l->v, sizeof(*v) * (size_t)cap);
        if (!v) return false;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = r;
    return true;
}

/* Removes r keeping the order. */
static inline void list_remove(req_list *l, const req *r)
{
    for (int i = 0; i < l->n; i++)
        if (l->v[i] == r) {
            memmove(l->v + i, l->v + i + 1, sizeof(*l->v) * (size_t)(l->n - i - 1));
            l->n--;
            return;
        }
}

/* scheduler.c: frees r's cache blocks (its rank's references). */
void dsr1__sched_release_blocks(dsr1_sched *s, req *r);
/* scheduler.c: the mask of the token r draws next, if any, into p (see dsr1_sched_request). */
void dsr1__sched_draw_mask(const dsr1_sched *s, req *r, dsr1_sampling *p);
/* admit.c: back to the front of r's class's queue, to recompute what it has. */
void dsr1__sched_preempt(dsr1_sched *s, req *r);
/* admit.c: plans the next step into st (see the top of admit.c); returns its sequences. */
int dsr1__sched_plan(dsr1_sched *s, step_slot *st);

#endif
