/* The batch registry: SubmitBatch, GetBatch, StreamBatchResults, CancelBatch, ListBatches
 * and the thread that feeds batch items to the scheduler.
 *
 * A batch is validated whole when submitted (every item's prompt and parameters), then
 * waits in the registry. The feeder keeps at most batch_window items in the scheduler,
 * oldest batch first, and hands over the next one as one finishes; when the scheduler's
 * queue is full (Generate traffic) it retries shortly, so batch items never see
 * RESOURCE_EXHAUSTED. Each finished item's result is kept packed (a BatchItemResult) and
 * sent as is to GetBatch and StreamBatchResults. Finished batches are kept, the oldest
 * forgotten beyond max_kept_batches.
 *
 * Locking: the registry's mutex guards every batch; it is taken before a call's mutex
 * (sends to subscribers happen under it), never after. A batch is freed only by the
 * feeder (eviction), never while the feeder is submitting one of its items. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "server_internal.h"

#define BUSY_RETRY_NS 20000000 /* the scheduler's queue was full: try again after 20 ms */
#define DEFAULT_LIST  100
#define MAX_LIST      1000
#define MAX_CUSTOM_ID 256
#define RESULTS_FIELD 10 /* BatchStatus.results */

typedef enum { ITEM_PENDING, ITEM_SUBMITTED, ITEM_DONE } item_state;

typedef struct batch batch;

typedef struct {
    batch *b;
    int index;
    item_state state;
    bool abort;        /* aborted while being submitted */
    srv_prompt prompt; /* until submitted */
    srv_buf result;    /* packed BatchItemResult, once DONE */
} batch_item;

struct batch {
    srv_batches *reg;
    batch *newer, *older;
    char id[136];
    uint64_t hash;                     /* of the request without its batch_id */
    Dsr1__V1__SubmitBatchRequest *req; /* until the batch is final */
    batch_item *items;
    int total, next; /* next: no pending item before it */
    int finished, failed, aborted;
    int64_t prompt_tokens, completion_tokens, cached_tokens;
    double created, finished_at;
    bool started, cancelled, pinned;
    srv_call *subs; /* StreamBatchResults calls */
};

struct srv_batches {
    dsr1_server *s;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* feeder wake-ups; in_sched reaching 0 */
    batch *newest, *oldest;
    int n_final, in_sched;
    bool stop;
    pthread_t feeder;
    bool feeder_started;
};

static bool batch_final(const batch *b)
{
    return b->finished == b->total;
}

/* ---- results ---- */

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001B3ull;
    return h;
}

static void item_id(const batch *b, int index, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%d", b->id, index);
}

/* Packs item index's BatchItemResult around its Completion. */
static dsr1_status pack_result(const batch *b, int index, Dsr1__V1__Completion *c, srv_buf *out)
{
    Dsr1__V1__BatchItemResult r = DSR1__V1__BATCH_ITEM_RESULT__INIT;
    r.index = index;
    r.custom_id = b->req->items[index]->custom_id;
    r.result = c;
    return dsr1__srv_pack(&r.base, out);
}

/* Sends a kept result to a StreamBatchResults call. */
static void send_copy(srv_call *c, const srv_buf *res)
{
    uint8_t *copy = malloc(res->len ? res->len : 1);
    if (!copy) {
        dsr1__srv_call_finish(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    memcpy(copy, res->data, res->len);
    dsr1__srv_call_send(c, (srv_buf){copy, res->len});
}

/* Records a finished item (registry lock held): counts, usage, subscribers; ends the
 * subscriptions when the batch is final. result is taken over. */
static void item_done(batch_item *it, srv_buf result, Dsr1__V1__FinishReason f,
                      const Dsr1__V1__Usage *u)
{
    batch *b = it->b;
    srv_batches *r = b->reg;
    it->state = ITEM_DONE;
    it->result = result;
    b->finished++;
    b->failed += f == DSR1__V1__FINISH_REASON__ERROR;
    b->aborted += f == DSR1__V1__FINISH_REASON__ABORT;
    b->prompt_tokens += u->prompt_tokens;
    b->completion_tokens += u->completion_tokens;
    b->cached_tokens += u->cached_tokens;
    for (srv_call *c = b->subs; c; c = c->sub_next) send_copy(c, &result);
    if (!batch_final(b)) return;
    b->finished_at = dsr1__srv_unix_now();
    while (b->subs) {
        srv_call *c = b->subs;
        dsr1__srv_sub_remove(&b->subs, c);
        c->sub = NULL;
        dsr1__srv_call_finish(c, GRPC_STATUS_OK, NULL);
        dsr1__srv_call_unref(c);
    }
    dsr1__v1__submit_batch_request__free_unpacked(b->req, NULL);
    b->req = NULL;
    r->n_final++;
    pthread_cond_broadcast(&r->cv); /* the feeder evicts */
}

/* Finishes an item that never ran (or could not be submitted) with ABORT or ERROR. */
static void item_end_here(batch_item *it, Dsr1__V1__FinishReason f, const char *error)
{
    char id[160];
    item_id(it->b, it->index, id, sizeof(id));
    Dsr1__V1__Usage u = DSR1__V1__USAGE__INIT;
    u.prompt_tokens = it->prompt.n_prompt;
    Dsr1__V1__Completion c = DSR1__V1__COMPLETION__INIT;
    c.request_id = id;
    c.finish_reason = f;
    c.usage = &u;
    if (error) c.error = (char *)error;
    srv_buf buf = {NULL, 0};
    if (pack_result(it->b, it->index, &c, &buf) != DSR1_OK)
        DSR1_ERROR("server: batch %s: out of memory for item %d's result", it->b->id, it->index);
    dsr1__srv_prompt_free(&it->prompt);
    item_done(it, buf, f, &u);
}

/* The scheduler's events for batch items (scheduler thread): only the FINAL matters. */
static void item_event(const dsr1_sched_event *ev)
{
    if (ev->kind != DSR1_EV_FINAL) return;
    batch_item *it = ev->ctx;
    srv_batches *r = it->b->reg;
    srv_arena a = {0};
    srv_buf buf = {NULL, 0};
    Dsr1__V1__Usage none = DSR1__V1__USAGE__INIT;
    /* the batch cannot end (and drop its request) before this item: no lock needed yet */
    Dsr1__V1__Completion *c = dsr1__srv_completion(r->s, ev, &a);
    if (!c || pack_result(it->b, it->index, c, &buf) != DSR1_OK)
        DSR1_ERROR("server: batch %s: out of memory for item %d's result", it->b->id, it->index);
    pthread_mutex_lock(&r->mu);
    item_done(it, buf, dsr1__srv_finish_reason(ev->finish), c ? c->usage : &none);
    r->in_sched--;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    dsr1__srv_arena_free(&a);
}

/* ---- the feeder ---- */

/* The next item to hand to the scheduler, oldest batch first; NULL when none. */
static batch_item *next_pending(srv_batches *r)
{
    for (batch *b = r->oldest; b; b = b->newer) {
        if (b->cancelled) continue;
        while (b->next < b->total && b->items[b->next].state != ITEM_PENDING) b->next++;
        if (b->next < b->total) return &b->items[b->next];
    }
    return NULL;
}

/* Hands item it (marked SUBMITTED, registry unlocked) to the scheduler. */
static dsr1_status submit_item(srv_batches *r, batch_item *it)
{
    const Dsr1__V1__SubmitBatchRequest *req = it->b->req;
    const Dsr1__V1__SamplingParams *sp = req->items[it->index]->sampling;
    char id[160];
    item_id(it->b, it->index, id, sizeof(id));
    srv_params pa;
    dsr1_status st = dsr1__srv_params(r->s, sp ? sp : req->default_sampling, &it->prompt, &pa);
    if (st != DSR1_OK) return st;
    dsr1_sched_request q = dsr1__srv_request(&it->prompt, &pa);
    q.id = id;
    q.callback = item_event;
    q.ctx = it;
    st = dsr1_sched_submit(r->s->p.sched, &q);
    if (st == DSR1_OK) dsr1__srv_submitted(&pa);
    dsr1__srv_params_free(&pa);
    return st;
}

/* Forgets the oldest finished batches beyond max_kept_batches. */
static void evict(srv_batches *r)
{
    for (batch *b = r->oldest; b && r->n_final > r->s->p.max_kept_batches;) {
        batch *newer = b->newer;
        if (batch_final(b) && !b->pinned) {
            if (b->older)
                b->older->newer = b->newer;
            else
                r->oldest = b->newer;
            if (b->newer)
                b->newer->older = b->older;
            else
                r->newest = b->older;
            for (int i = 0; i < b->total; i++) free(b->items[i].result.data);
            free(b->items);
            free(b);
            r->n_final--;
        }
        b = newer;
    }
}

static void wait_ns(srv_batches *r, long ns)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += ns;
    while (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
    pthread_cond_timedwait(&r->cv, &r->mu, &ts);
}

static void *feeder(void *arg)
{
    srv_batches *r = arg;
    dsr1_log_set_tag("batches");
    pthread_mutex_lock(&r->mu);
    while (!r->stop) {
        evict(r);
        batch_item *it = r->in_sched < r->s->p.batch_window ? next_pending(r) : NULL;
        if (!it) {
            pthread_cond_wait(&r->cv, &r->mu);
            continue;
        }
        batch *b = it->b;
        it->state = ITEM_SUBMITTED;
        b->started = b->pinned = true;
        r->in_sched++;
        pthread_mutex_unlock(&r->mu);
        dsr1_status st = submit_item(r, it);
        if (st == DSR1_OK) dsr1__srv_prompt_free(&it->prompt); /* the scheduler has a copy */
        pthread_mutex_lock(&r->mu);
        b->pinned = false;
        if (st == DSR1_OK && it->state == ITEM_SUBMITTED && (it->abort || b->cancelled)) {
            char id[160]; /* cancelled while being submitted */
            item_id(b, it->index, id, sizeof(id));
            pthread_mutex_unlock(&r->mu);
            dsr1_sched_abort(r->s->p.sched, id);
            pthread_mutex_lock(&r->mu);
        } else if (st == DSR1_ERR_BUSY) { /* the queue is full of Generate requests */
            it->state = ITEM_PENDING;
            r->in_sched--;
            wait_ns(r, BUSY_RETRY_NS);
        } else if (st != DSR1_OK) {
            r->in_sched--;
            item_end_here(it, DSR1__V1__FINISH_REASON__ERROR, dsr1_errmsg());
        }
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

dsr1_status dsr1__srv_batches_create(dsr1_server *s, srv_batches **out)
{
    srv_batches *r = calloc(1, sizeof(*r));
    if (!r) return dsr1_error(DSR1_ERR_NOMEM, "server: out of memory");
    r->s = s;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    int e = pthread_create(&r->feeder, NULL, feeder, r);
    if (e) {
        dsr1__srv_batches_destroy(r);
        return dsr1_error(DSR1_ERR_INTERNAL, "server: cannot start a thread: %s", strerror(e));
    }
    r->feeder_started = true;
    *out = r;
    return DSR1_OK;
}

/* Aborts b's unfinished items: pending ones here, submitted ones in the scheduler (their
 * ids are appended to ids, aborted by the caller once the registry is unlocked). */
static void cancel_items(batch *b, char (*ids)[160], int *n_ids)
{
    for (int i = 0; i < b->total && !batch_final(b); i++) {
        batch_item *it = &b->items[i];
        if (it->state == ITEM_PENDING)
            item_end_here(it, DSR1__V1__FINISH_REASON__ABORT, NULL);
        else if (it->state == ITEM_SUBMITTED)
            item_id(b, i, ids[(*n_ids)++], sizeof(ids[0]));
    }
}

static void abort_ids(srv_batches *r, char (*ids)[160], int n)
{
    for (int i = 0; i < n; i++) dsr1_sched_abort(r->s->p.sched, ids[i]);
}

void dsr1__srv_batches_stop(srv_batches *r)
{
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (r->feeder_started) pthread_join(r->feeder, NULL);
    r->feeder_started = false;
    pthread_mutex_lock(&r->mu);
    char(*ids)[160] = calloc((size_t)r->in_sched + 1, sizeof(*ids));
    int n = 0;
    for (batch *b = r->oldest; b && ids; b = b->newer) cancel_items(b, ids, &n);
    pthread_mutex_unlock(&r->mu);
    if (ids) abort_ids(r, ids, n);
    free(ids);
    pthread_mutex_lock(&r->mu);
    while (r->in_sched) pthread_cond_wait(&r->cv, &r->mu); /* their FINALs, within a step */
    pthread_mutex_unlock(&r->mu);
}

void dsr1__srv_batches_destroy(srv_batches *r)
{
    if (!r) return;
    if (r->feeder_started) dsr1__srv_batches_stop(r);
    while (r->oldest) {
        batch *b = r->oldest;
        r->oldest = b->newer;
        for (int i = 0; i < b->total; i++) {
            free(b->items[i].result.data);
            dsr1__srv_prompt_free(&b->items[i].prompt);
        }
        if (b->req) dsr1__v1__submit_batch_request__free_unpacked(b->req, NULL);
        free(b->items);
        free(b);
    }
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

int dsr1__srv_batches_active(srv_batches *r)
{
    int n = 0;
    pthread_mutex_lock(&r->mu);
    for (batch *b = r->oldest; b; b = b->newer) n += !batch_final(b);
    pthread_mutex_unlock(&r->mu);
    return n;
}

static batch *find(srv_batches *r, const char *id)
{
    for (batch *b = r->newest; b; b = b->older)
        if (!strcmp(b->id, id)) return b;
    return NULL;
}

/* find() for the RPCs that name a batch (registry lock held): NOT_FOUND when unknown. */
static dsr1_status lookup(srv_batches *r, const char *id, batch **out)
{
    *out = find(r, id);
    return *out ? DSR1_OK : dsr1_error(DSR1_ERR_NOT_FOUND, "no batch '%.140s'", id);
}

bool dsr1__srv_batches_abort_pending(srv_batches *r, const char *id)
{
    const char *slash = strrchr(id, '/');
    if (!slash || (size_t)(slash - id) >= sizeof(((batch *)0)->id)) return false;
    char bid[136], *end;
    memcpy(bid, id, (size_t)(slash - id));
    bid[slash - id] = '\0';
    long index = strtol(slash + 1, &end, 10);
    bool found = false;
    pthread_mutex_lock(&r->mu);
    batch *b = find(r, bid);
    if (b && !*end && slash[1] && index >= 0 && index < b->total) {
        batch_item *it = &b->items[index];
        found = it->state != ITEM_DONE;
        if (it->state == ITEM_PENDING) item_end_here(it, DSR1__V1__FINISH_REASON__ABORT, NULL);
        if (it->state == ITEM_SUBMITTED) it->abort = true; /* the feeder is submitting it */
    }
    pthread_mutex_unlock(&r->mu);
    return found;
}

/* ---- status messages ---- */

static Dsr1__V1__BatchState state_of(const batch *b)
{
    if (b->cancelled) return DSR1__V1__BATCH_STATE__CANCELLED;
    if (batch_final(b)) return DSR1__V1__BATCH_STATE__COMPLETED;
    return b->started ? DSR1__V1__BATCH_STATE__RUNNING : DSR1__V1__BATCH_STATE__QUEUED;
}

/* b's status without results (registry lock held); u receives the usage it points to. */
static void status_of(const batch *b, Dsr1__V1__BatchStatus *st, Dsr1__V1__Usage *u)
{
    dsr1__v1__batch_status__init(st);
    dsr1__v1__usage__init(u);
    u->prompt_tokens = (int32_t)b->prompt_tokens;
    u->completion_tokens = (int32_t)b->completion_tokens;
    u->cached_tokens = (int32_t)b->cached_tokens;
    st->batch_id = (char *)b->id;
    st->state = state_of(b);
    st->total = b->total;
    st->finished = b->finished;
    st->failed = b->failed;
    st->aborted = b->aborted;
    st->usage = u;
    st->created_unix_s = b->created;
    st->finished_unix_s = batch_final(b) ? b->finished_at : 0;
}

static dsr1_status pack_status(const batch *b, srv_buf *out)
{
    Dsr1__V1__BatchStatus st;
    Dsr1__V1__Usage u;
    status_of(b, &st, &u);
    return dsr1__srv_pack(&st.base, out);
}

/* Appends the finished items' results to a packed BatchStatus: repeated message fields
 * may be written after the others, so the kept bytes are copied, not re-encoded. */
static dsr1_status append_results(const batch *b, srv_buf *msg)
{
    size_t n = msg->len;
    for (int i = 0; i < b->total; i++)
        if (b->items[i].state == ITEM_DONE) n += 11 + b->items[i].result.len;
    uint8_t *p = realloc(msg->data, n);
    if (!p) return dsr1_error(DSR1_ERR_NOMEM, "out of memory for the results of batch %s", b->id);
    msg->data = p;
    for (int i = 0; i < b->total; i++) {
        const srv_buf *res = &b->items[i].result;
        if (b->items[i].state != ITEM_DONE) continue;
        p[msg->len++] = (RESULTS_FIELD << 3) | 2; /* length-delimited */
        for (uint64_t v = res->len;; v >>= 7) {
            p[msg->len++] = (uint8_t)((v & 0x7F) | (v >= 0x80 ? 0x80 : 0));
            if (v < 0x80) break;
        }
        memcpy(p + msg->len, res->data, res->len);
        msg->len += res->len;
    }
    return DSR1_OK;
}

/* ---- SubmitBatch ---- */

/* Validates every item and makes the batch (not yet registered). */
static dsr1_status make_batch(dsr1_server *s, Dsr1__V1__SubmitBatchRequest *req, batch **out)
{
    batch *b = calloc(1, sizeof(*b));
    if (b) b->items = calloc(req->n_items, sizeof(batch_item));
    if (!b || !b->items) {
        free(b);
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory for %zu batch items", req->n_items);
    }
    b->reg = s->batches;
    b->total = (int)req->n_items;
    dsr1_status st = DSR1_OK;
    for (size_t i = 0; i < req->n_items && st == DSR1_OK; i++) {
        const Dsr1__V1__BatchItem *item = req->items[i];
        const Dsr1__V1__SamplingParams *sp =
            item->sampling ? item->sampling : req->default_sampling;
        batch_item *it = &b->items[i];
        srv_params pa;
        *it = (batch_item){.b = b, .index = (int)i};
        if (strlen(item->custom_id) > MAX_CUSTOM_ID || !dsr1__srv_utf8_valid(item->custom_id))
            st = dsr1_error(DSR1_ERR_INVALID_ARG, "custom_id: at most %d bytes of UTF-8",
                            MAX_CUSTOM_ID);
        if (st == DSR1_OK) st = dsr1__srv_prompt(s, item->input, &it->prompt);
        if (st == DSR1_OK) st = dsr1__srv_params(s, sp, &it->prompt, &pa);
        if (st == DSR1_OK) dsr1__srv_params_free(&pa);
        if (st != DSR1_OK) dsr1_error_context(st, "items[%zu]", i);
    }
    if (st != DSR1_OK) {
        for (int i = 0; i < b->total; i++) dsr1__srv_prompt_free(&b->items[i].prompt);
        free(b->items);
        free(b);
        return st;
    }
    b->req = req;
    b->created = dsr1__srv_unix_now();
    *out = b;
    return DSR1_OK;
}

/* An existing batch of the same id: the same request again (created = false), or a
 * conflict. */
static dsr1_status resubmitted(const batch *old, uint64_t hash)
{
    if (old->hash != hash)
        return dsr1_error(DSR1_ERR_EXISTS,
                          "batch '%s' already exists with different items; use another batch_id",
                          old->id);
    return DSR1_OK;
}

static dsr1_status submit_response(const batch *b, bool created, srv_buf *resp)
{
    Dsr1__V1__BatchStatus st;
    Dsr1__V1__Usage u;
    status_of(b, &st, &u);
    Dsr1__V1__SubmitBatchResponse m = DSR1__V1__SUBMIT_BATCH_RESPONSE__INIT;
    m.batch_id = (char *)b->id;
    m.created = created;
    m.status = &st;
    return dsr1__srv_pack(&m.base, resp);
}

/* The request's hash for idempotency: its encoding without the batch_id. */
static dsr1_status request_hash(Dsr1__V1__SubmitBatchRequest *req, uint64_t *out)
{
    char *id = req->batch_id;
    req->batch_id = (char *)"";
    srv_buf packed;
    dsr1_status st = dsr1__srv_pack(&req->base, &packed);
    req->batch_id = id;
    if (st != DSR1_OK) return st;
    *out = fnv1a(packed.data, packed.len) ^ packed.len;
    free(packed.data);
    return DSR1_OK;
}

static dsr1_status check_submit(dsr1_server *s, Dsr1__V1__SubmitBatchRequest *req)
{
    if (*req->batch_id && !dsr1__srv_id_valid(req->batch_id))
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "batch_id: expected 1 to 128 characters of [A-Za-z0-9._:-]");
    if (!req->n_items) return dsr1_error(DSR1_ERR_INVALID_ARG, "items is empty");
    if (req->n_items > (size_t)s->p.max_batch_items)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "%zu items: at most %d per batch", req->n_items,
                          s->p.max_batch_items);
    return DSR1_OK;
}

dsr1_status dsr1__srv_submit_batch(dsr1_server *s, const uint8_t *data, size_t len, srv_buf *resp)
{
    srv_batches *r = s->batches;
    Dsr1__V1__SubmitBatchRequest *req = dsr1__v1__submit_batch_request__unpack(NULL, len, data);
    if (!req) return dsr1_error(DSR1_ERR_INVALID_ARG, "malformed SubmitBatchRequest");
    uint64_t hash = 0;
    batch *b = NULL;
    dsr1_status st = check_submit(s, req);
    if (st == DSR1_OK) st = request_hash(req, &hash);
    if (st == DSR1_OK && *req->batch_id) { /* a resubmission is answered without validation */
        pthread_mutex_lock(&r->mu);
        batch *old = find(r, req->batch_id);
        if (old && (st = resubmitted(old, hash)) == DSR1_OK) st = submit_response(old, false, resp);
        pthread_mutex_unlock(&r->mu);
        if (old || st != DSR1_OK) goto out;
    }
    if (st == DSR1_OK) st = make_batch(s, req, &b);
    if (st != DSR1_OK) goto out;
    b->hash = hash;
    if (*req->batch_id)
        snprintf(b->id, sizeof(b->id), "%s", req->batch_id);
    else
        dsr1__srv_make_id(s, "batch-", b->id, sizeof(b->id));
    req = NULL; /* the batch's now */
    pthread_mutex_lock(&r->mu);
    batch *old = r->stop ? NULL : find(r, b->id); /* submitted meanwhile by another call */
    if (r->stop) {
        st = dsr1_error(DSR1_ERR_UNAVAILABLE, "the server is shutting down");
    } else if (old) {
        if ((st = resubmitted(old, hash)) == DSR1_OK) st = submit_response(old, false, resp);
    } else {
        b->older = r->newest;
        if (r->newest)
            r->newest->newer = b;
        else
            r->oldest = b;
        r->newest = b;
        st = submit_response(b, true, resp);
        DSR1_INFO("server: batch %s: %d items queued", b->id, b->total);
        b = NULL;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    if (b) { /* not registered */
        for (int i = 0; i < b->total; i++) dsr1__srv_prompt_free(&b->items[i].prompt);
        req = b->req;
        free(b->items);
        free(b);
    }
out:
    if (req) dsr1__v1__submit_batch_request__free_unpacked(req, NULL);
    return st;
}

/* ---- GetBatch, CancelBatch, ListBatches ---- */

dsr1_status dsr1__srv_get_batch(dsr1_server *s, const uint8_t *data, size_t len, srv_buf *resp)
{
    srv_batches *r = s->batches;
    Dsr1__V1__GetBatchRequest *req = dsr1__v1__get_batch_request__unpack(NULL, len, data);
    if (!req) return dsr1_error(DSR1_ERR_INVALID_ARG, "malformed GetBatchRequest");
    pthread_mutex_lock(&r->mu);
    batch *b;
    dsr1_status st = lookup(r, req->batch_id, &b);
    if (st == DSR1_OK) st = pack_status(b, resp);
    if (st == DSR1_OK && req->include_results && (st = append_results(b, resp)) != DSR1_OK)
        free(resp->data);
    pthread_mutex_unlock(&r->mu);
    dsr1__v1__get_batch_request__free_unpacked(req, NULL);
    return st;
}

dsr1_status dsr1__srv_cancel_batch(dsr1_server *s, const uint8_t *data, size_t len, srv_buf *resp)
{
    srv_batches *r = s->batches;
    Dsr1__V1__CancelBatchRequest *req = dsr1__v1__cancel_batch_request__unpack(NULL, len, data);
    if (!req) return dsr1_error(DSR1_ERR_INVALID_ARG, "malformed CancelBatchRequest");
    char(*ids)[160] = NULL;
    int n = 0;
    batch *b;
    pthread_mutex_lock(&r->mu);
    dsr1_status st = lookup(r, req->batch_id, &b);
    if (st == DSR1_OK && !batch_final(b)) {
        if ((ids = calloc((size_t)b->total, sizeof(*ids)))) {
            b->cancelled = true;
            cancel_items(b, ids, &n);
            DSR1_INFO("server: batch %s cancelled (%d items running)", b->id, n);
        } else {
            st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        }
    }
    if (st == DSR1_OK) st = pack_status(b, resp);
    pthread_mutex_unlock(&r->mu);
    abort_ids(r, ids, n);
    free(ids);
    dsr1__v1__cancel_batch_request__free_unpacked(req, NULL);
    return st;
}

dsr1_status dsr1__srv_list_batches(dsr1_server *s, const uint8_t *data, size_t len, srv_buf *resp)
{
    srv_batches *r = s->batches;
    Dsr1__V1__ListBatchesRequest *req = dsr1__v1__list_batches_request__unpack(NULL, len, data);
    if (!req) return dsr1_error(DSR1_ERR_INVALID_ARG, "malformed ListBatchesRequest");
    int limit = req->limit ? req->limit : DEFAULT_LIST;
    dsr1__v1__list_batches_request__free_unpacked(req, NULL);
    if (limit < 0 || limit > MAX_LIST)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "limit %d: allowed range [0, %d]", limit, MAX_LIST);
    Dsr1__V1__BatchStatus *st = malloc((size_t)limit * sizeof(*st));
    Dsr1__V1__BatchStatus **ptrs = malloc((size_t)limit * sizeof(*ptrs));
    Dsr1__V1__Usage *u = malloc((size_t)limit * sizeof(*u));
    Dsr1__V1__ListBatchesResponse m = DSR1__V1__LIST_BATCHES_RESPONSE__INIT;
    dsr1_status rc = DSR1_OK;
    if (!st || !ptrs || !u) rc = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    pthread_mutex_lock(&r->mu);
    for (batch *b = r->newest; rc == DSR1_OK && b && m.n_batches < (size_t)limit; b = b->older) {
        status_of(b, &st[m.n_batches], &u[m.n_batches]);
        ptrs[m.n_batches] = &st[m.n_batches];
        m.n_batches++;
    }
    m.batches = ptrs;
    if (rc == DSR1_OK) rc = dsr1__srv_pack(&m.base, resp);
    pthread_mutex_unlock(&r->mu);
    free(st);
    free(ptrs);
    free(u);
    return rc;
}

/* ---- StreamBatchResults ---- */

void dsr1__srv_stream_batch(srv_call *c, const uint8_t *data, size_t len)
{
    srv_batches *r = c->srv->batches;
    Dsr1__V1__StreamBatchResultsRequest *req =
        dsr1__v1__stream_batch_results_request__unpack(NULL, len, data);
    if (!req) {
        dsr1__srv_call_finish(c, GRPC_STATUS_INVALID_ARGUMENT,
                              "malformed StreamBatchResultsRequest");
        return;
    }
    batch *b;
    pthread_mutex_lock(&r->mu);
    dsr1_status st = lookup(r, req->batch_id, &b);
    if (st != DSR1_OK) {
        dsr1__srv_call_finish_error(c, st);
    } else {
        for (int i = 0; i < b->total; i++)
            if (b->items[i].state == ITEM_DONE) send_copy(c, &b->items[i].result);
        if (batch_final(b)) {
            dsr1__srv_call_finish(c, GRPC_STATUS_OK, NULL);
        } else {
            dsr1__srv_call_ref(c);
            c->sub = b;
            dsr1__srv_sub_add(&b->subs, c);
        }
    }
    pthread_mutex_unlock(&r->mu);
    dsr1__v1__stream_batch_results_request__free_unpacked(req, NULL);
}

void dsr1__srv_stream_batch_closed(srv_call *c)
{
    srv_batches *r = c->srv->batches;
    pthread_mutex_lock(&r->mu);
    batch *b = c->sub;
    if (b) dsr1__srv_sub_remove(&b->subs, c);
    c->sub = NULL;
    pthread_mutex_unlock(&r->mu);
    if (b) dsr1__srv_call_unref(c);
}
