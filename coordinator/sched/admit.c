/* Planning one step of the scheduler (see scheduler.h): which requests run, which are
 * admitted, which are preempted, under the step's token budget, the running-set size and
 * each rank's cache blocks.
 *
 * Order of a step, so that interactive requests always go first and batch items fill what
 * they leave:
 *   1. running interactive requests (oldest first): a decode token or a prefill chunk;
 *   2. waiting interactive requests, admitted with the blocks and running slots of batch
 *      items, which are preempted for them (youngest first);
 *   3. running batch items;
 *   4. waiting batch items, only when no interactive request is left waiting.
 * A running request that needs a block and finds none preempts, on its rank, the youngest
 * batch item first; an interactive one then the youngest other request (the rule before
 * classes); when nothing can be preempted it is preempted itself. A batch item never
 * preempts an interactive request.
 *
 * Admission within a class is in queue order, but a request whose first chunk does not fit
 * in the free cache does not block the smaller ones behind it: they may pass it, each
 * counting once in its `bypassed`, until it has been passed DSR1_SCHED_MAX_BYPASS times;
 * then nothing behind it is admitted until it is, so that large prompts are not starved. */
#include <stdio.h>

#include "log.h"
#include "sched_internal.h"

/* Gives r blocks for its first `upto` positions; false when the rank has too few free. */
static bool grow_blocks(dsr1_sched *s, req *r, int upto)
{
    const int bt = s->p.exec.block_tokens;
    const int need = (upto + bt - 1) / bt;
    if (need - r->n_blocks > dsr1_blocks_available(s->blocks[r->rank])) return false;
    while (r->n_blocks < need) r->blocks[r->n_blocks++] = dsr1_blocks_alloc(s->blocks[r->rank]);
    return true;
}

/* Back to the front of its class's queue, to recompute everything it has (blocks freed):
 * it resumes first among its class, never ahead of an interactive request. */
void dsr1__sched_preempt(dsr1_sched *s, req *r)
{
    req_list *w = &s->waiting[r->cls];
    list_remove(&s->running, r);
    s->rank_running[r->rank]--;
    dsr1__sched_release_blocks(s, r);
    r->state = REQ_WAITING;
    r->bypassed = 0;
    s->preemptions++;
    if (r->cls == DSR1_SCHED_BATCH) s->preemptions_batch++;
    if (!list_push(w, r)) {
        pthread_mutex_lock(&s->mu); /* ends at the next take_in (cannot happen short of ENOMEM) */
        r->aborted = true;
        r->abort_why = "out of memory";
        pthread_mutex_unlock(&s->mu);
        return;
    }
    memmove(w->v + 1, w->v, sizeof(*w->v) * (size_t)(w->n - 1));
    w->v[0] = r;
    DSR1_DEBUG("sched: preempted %s %s (%d tokens) on rank %d",
               r->cls == DSR1_SCHED_BATCH ? "batch item" : "request", r->id, r->n_tokens, r->rank);
}

/* The most recently admitted running request not in a step in flight, other than r, of
 * class cls (any when < 0) on rank `rank` (any when < 0); NULL when there is none. */
static req *youngest_idle(const dsr1_sched *s, const req *r, int cls, int rank)
{
    for (int i = s->running.n - 1; i >= 0; i--) {
        req *v = s->running.v[i];
        if (v != r && !v->busy && (cls < 0 || (int)v->cls == cls) && (rank < 0 || v->rank == rank))
            return v;
    }
    return NULL;
}

static dsr1_logits_mode logits_mode(const req *r, int chunk)
{
    if (r->prompt_logprobs && r->n_plp < r->n_prompt) return DSR1_LOGITS_ALL;
    return r->n_computed + chunk == r->n_tokens ? DSR1_LOGITS_LAST : DSR1_LOGITS_NONE;
}

/* Adds r's next chunk to the step. When the chunk ends at a logits row, its sample request:
 * draw the next token (the chunk ends at the last known token), or score the next prompt
 * token (an earlier prompt chunk run for its prompt logprobs). */
static void add_seq(const dsr1_sched *s, step_slot *st, req *r, int chunk)
{
    int *n = &st->n;
    const int end = r->n_computed + chunk;
    const dsr1_logits_mode mode = logits_mode(r, chunk);
    dsr1_seq_sample *q = &st->seq_sample[*n];
    *q = (dsr1_seq_sample){r->sp,
                           (uint64_t)(r->n_tokens - r->n_prompt),
                           r->tokens,
                           r->n_prompt,
                           r->n_tokens,
                           r->logprobs,
                           mode == DSR1_LOGITS_ALL,
                           end < r->n_tokens ? &r->tokens[end] : NULL};
    if (mode && !q->next) dsr1__sched_draw_mask(s, r, &q->params);
    st->seqs[*n] = (dsr1_seq_step){
        0,           r->n_computed, chunk,          r->tokens + r->n_computed, mode, r->blocks,
        r->n_blocks, r->rank,       mode ? q : NULL};
    st->seq_req[(*n)++] = r;
    r->busy = true;
    if (!r->t_sched) r->t_sched = now_ns();
}

/* The rank for a new (or preempted) request: the longest cached prefix, then the fewest
 * running requests, then the most free blocks. */
static int route(dsr1_sched *s, const req *r, int max_blocks)
{
    int best = 0, best_match = -1;
    while (best < s->p.exec.n_ranks - 1 && !s->rank_alive[best]) best++;
    for (int k = 0; k < s->p.exec.n_ranks; k++) {
        if (!s->rank_alive[k]) continue; /* lost a worker: serves nothing */
        const int m = max_blocks > 0 ? dsr1_blocks_match(s->blocks[k], r->tokens, r->n_tokens,
                                                         max_blocks, false, NULL)
                                     : 0;
        const bool better =
            m > best_match ||
            (m == best_match &&
             (s->rank_running[k] < s->rank_running[best] ||
              (s->rank_running[k] == s->rank_running[best] &&
               dsr1_blocks_available(s->blocks[k]) > dsr1_blocks_available(s->blocks[best]))));
        if (better) {
            best = k;
            best_match = m;
        }
    }
    return best;
}

typedef enum { ADMIT_OK, ADMIT_NO_BLOCKS, ADMIT_NO_SLOT } admit_result;

/* Blocks that preempting every idle batch item on `rank` could free, at most (a block they
 * share with another request stays held). */
static int64_t batch_blocks(const dsr1_sched *s, int rank)
{
    int64_t n = 0;
    for (int i = 0; i < s->running.n; i++) {
        const req *v = s->running.v[i];
        if (v->cls == DSR1_SCHED_BATCH && !v->busy && v->rank == rank) n += v->n_blocks;
    }
    return n;
}

/* Admits r to the running set with a chunk of at most `budget` tokens. An interactive
 * request takes the blocks and the running slot it lacks from idle batch items; otherwise
 * ADMIT_NO_SLOT (the running set is full) or ADMIT_NO_BLOCKS (its rank lacks the blocks),
 * with r unchanged. */
static admit_result admit(dsr1_sched *s, step_slot *st, req *r, int budget, int *used)
{
    const int bt = s->p.exec.block_tokens;
    const bool interactive = r->cls == DSR1_SCHED_INTERACTIVE;
    if (s->running.n >= s->p.max_running &&
        (!interactive || !youngest_idle(s, NULL, DSR1_SCHED_BATCH, -1)))
        return ADMIT_NO_SLOT;
    /* positions served from the prefix cache: whole blocks, never the last token (its
     * logits are needed), none when prompt logprobs are still to be computed */
    const bool can_match = s->p.prefix_cache && !(r->prompt_logprobs && r->n_plp < r->n_prompt);
    const int max_match = can_match ? (r->n_tokens - 1) / bt : 0;
    r->rank = route(s, r, max_match);
    dsr1_blocks *bl = s->blocks[r->rank];
    const int m = dsr1_blocks_match(bl, r->tokens, r->n_tokens, max_match, true, r->blocks);
    r->n_blocks = r->n_committed = m;
    r->n_computed = m * bt;
    int chunk = r->n_tokens - r->n_computed;
    if (chunk > budget) chunk = budget;
    const int upto = r->n_computed + chunk;
    bool ok = grow_blocks(s, r, upto);
    if (!ok && interactive) {
        /* preempt batch items only when that can make room */
        const int need = (upto + bt - 1) / bt - r->n_blocks;
        req *v;
        if (need <= dsr1_blocks_available(bl) + batch_blocks(s, r->rank))
            while (!(ok = grow_blocks(s, r, upto)) &&
                   (v = youngest_idle(s, NULL, DSR1_SCHED_BATCH, r->rank)))
                dsr1__sched_preempt(s, v);
    }
    if (!ok) {
        dsr1__sched_release_blocks(s, r);
        return ADMIT_NO_BLOCKS;
    }
    if (s->running.n >= s->p.max_running) { /* interactive: a batch item's slot, checked above */
        req *v = youngest_idle(s, NULL, DSR1_SCHED_BATCH, r->rank);
        dsr1__sched_preempt(s, v ? v : youngest_idle(s, NULL, DSR1_SCHED_BATCH, -1));
    }
    if (!r->t_sched) r->n_cached = m * bt < r->n_prompt ? m * bt : r->n_prompt;
    list_remove(&s->waiting[r->cls], r);
    list_push(&s->running, r); /* cannot fail: at most max_running, reached before */
    r->state = REQ_RUNNING;
    r->bypassed = 0;
    s->rank_running[r->rank]++;
    add_seq(s, st, r, chunk);
    *used += chunk;
    return ADMIT_OK;
}

/* Step phases 1 and 3: the running requests of class cls, oldest first. */
static void plan_running(dsr1_sched *s, step_slot *st, dsr1_sched_class cls, int share, int *used)
{
    const int budget = s->p.step_tokens;
    int n = 0;
    for (int i = 0; i < s->running.n; i++) /* preemption reorders the running list */
        if (s->running.v[i]->cls == cls) s->snapshot[n++] = s->running.v[i];
    for (int i = 0; i < n && *used < budget && st->n < share; i++) {
        req *r = s->snapshot[i];
        if (r->state != REQ_RUNNING || r->busy) continue; /* preempted, or in flight */
        int chunk = r->n_tokens - r->n_computed;
        if (chunk > budget - *used) chunk = budget - *used;
        bool ok;
        req *v;
        while (!(ok = grow_blocks(s, r, r->n_computed + chunk)) &&
               ((v = youngest_idle(s, r, DSR1_SCHED_BATCH, r->rank)) ||
                (cls == DSR1_SCHED_INTERACTIVE && (v = youngest_idle(s, r, -1, r->rank)))))
            dsr1__sched_preempt(s, v);
        if (!ok) {
            dsr1__sched_preempt(s, r);
            continue;
        }
        add_seq(s, st, r, chunk);
        *used += chunk;
    }
}

/* Step phases 2 and 4: admits waiting requests of class cls in queue order, passing those
 * that do not fit in the cache up to DSR1_SCHED_MAX_BYPASS times each. A step looks past at
 * most DSR1_SCHED_MAX_BYPASS of them (a full cache with a window of batch items waiting). */
static void plan_waiting(dsr1_sched *s, step_slot *st, dsr1_sched_class cls, int share, int *used)
{
    const int budget = s->p.step_tokens;
    req_list *w = &s->waiting[cls];
    int i = 0; /* w->v[0 .. i) did not fit this time */
    while (i < w->n && *used < budget && st->n < share) {
        req *r = w->v[i];
        const admit_result a = admit(s, st, r, budget - *used, used);
        if (a == ADMIT_NO_SLOT) break;
        if (a == ADMIT_OK) {
            bool bound = false;
            for (int j = 0; j < i; j++) bound |= ++w->v[j]->bypassed >= DSR1_SCHED_MAX_BYPASS;
            if (bound) break;
            continue; /* r left the queue: w->v[i] is the next one */
        }
        /* its turn: nothing passes it; and a full cache is not searched end to end */
        if (r->bypassed >= DSR1_SCHED_MAX_BYPASS || ++i >= DSR1_SCHED_MAX_BYPASS) break;
    }
}

/* Plans one step (see the top of this file); requests in a step in flight wait for it.
 * With steps in flight (pipeline stages), each step takes a share of the requests so that
 * the next one has work too. */
int dsr1__sched_plan(dsr1_sched *s, step_slot *st)
{
    int used = 0;
    const int free_slots = s->depth - s->inflight;
    const int waiting = s->waiting[0].n + s->waiting[1].n;
    const int share = (s->running.n + waiting + free_slots - 1) / free_slots;
    st->n = 0;
    plan_running(s, st, DSR1_SCHED_INTERACTIVE, share, &used);
    plan_waiting(s, st, DSR1_SCHED_INTERACTIVE, share, &used);
    plan_running(s, st, DSR1_SCHED_BATCH, share, &used);
    if (s->waiting[DSR1_SCHED_INTERACTIVE].n == 0)
        plan_waiting(s, st, DSR1_SCHED_BATCH, share, &used);
    return st->n;
}
