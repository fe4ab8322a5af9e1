/* The batch RPCs (SubmitBatch, UploadBatch, GetBatch, StreamBatchResults, CancelBatch,
 * ListBatches) on the durable batch store (batches.h), and the store's "grpc" codec: how
 * this frontend's items are checked, run in the scheduler and turned into results.
 *
 * Items are stored as packed BatchItem messages with the batch's default_sampling merged
 * in (an item without its own sampling gets the default), so that each stored item runs
 * on its own after a restart. Results are stored as packed BatchItemResult messages
 * without their seq, which is appended (field 4) when a result is read back: a protobuf
 * field may come after the others, so the stored bytes are never decoded to be sent.
 *
 * Idempotency: a client's batch_id goes to the store with a hash of the batch's content
 * (its stored items, completion_window, and priority and max_running when not 0, so that
 * a batch's hash is the one it had before they existed), the same for SubmitBatch and
 * UploadBatch. An
 * upload is spooled to an unlinked temporary file while it arrives (the hash needs every
 * item before the store's writer begins); it is checked and written to the store when the
 * client closes the stream, so a stream that breaks off creates nothing.
 *
 * StreamBatchResults subscribes to the store; the store's thread sends through the call's
 * outbox, which never blocks. A client that reads slower than results come pauses its
 * subscription (PACE_HIGH results waiting) until it has read them, then a new one goes on
 * from the next seq: memory does not grow with the batch. Locking: gb->mu guards the list of stream
 * subscriptions; it is never held while calling the store. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "server_internal.h"

#define DEFAULT_LIST  100
#define MAX_LIST      1000
#define MAX_CUSTOM_ID 256
#define RESULTS_FIELD 10 /* BatchStatus.results */
#define SEQ_FIELD     4  /* BatchItemResult.seq */
#define FORMAT        "grpc"
/* StreamBatchResults: the subscription pauses with this many results waiting to be sent
 * and resumes (from the next seq) when they are down to PACE_LOW */
#define PACE_HIGH 64
#define PACE_LOW  16

typedef struct stream_sub {
    srv_call *c;
    dsr1_batch_sub *sub;
    struct stream_sub *prev, *next;
    char batch_id[DSR1_BATCH_ID_MAX];
    int64_t next_seq;    /* the result to send next */
    bool subscribing;    /* run_subscription in progress: it releases a detached one */
    bool resume_pending; /* drained while subscribing: subscribe again */
    bool detached;       /* unlinked (call closed, shutdown) */
} stream_sub;

struct srv_batches {
    dsr1_server *s;
    dsr1_batches *store;
    pthread_mutex_t mu;
    stream_sub *streams;
    bool stopping;
};

/* A batch item in the scheduler: what its FINAL event needs. */
typedef struct {
    srv_batches *gb;
    uint64_t key;
    int index;
    char *custom_id;
    char request_id[DSR1_BATCH_ID_MAX + 16];
} run_item;

static dsr1_status no_store(void)
{
    return dsr1_error(DSR1_ERR_UNAVAILABLE,
                      "batch jobs need a state directory: start the server with --state-dir DIR");
}

/* ---- the "grpc" codec ---- */

static uint64_t fnv1a(uint64_t h, const void *data, size_t n)
{
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001B3ull;
    return h;
}
#define FNV_INIT 0xCBF29CE484222325ull

static dsr1_status pack_result(int index, const char *custom_id, Dsr1__V1__Completion *c,
                               srv_buf *out)
{
    Dsr1__V1__BatchItemResult r = DSR1__V1__BATCH_ITEM_RESULT__INIT;
    r.index = index;
    r.custom_id = (char *)custom_id;
    r.result = c;
    return dsr1__srv_pack(&r.base, out);
}

/* Checks an unpacked item: custom_id, prompt and parameters. */
static dsr1_status check_item(dsr1_server *s, const Dsr1__V1__BatchItem *item)
{
    if (strlen(item->custom_id) > MAX_CUSTOM_ID || !dsr1__srv_utf8_valid(item->custom_id))
        return dsr1_error(DSR1_ERR_INVALID_ARG, "custom_id: at most %d bytes of UTF-8",
                          MAX_CUSTOM_ID);
    srv_prompt pr = {0};
    srv_params pa;
    dsr1_status st = dsr1__srv_prompt(s, item->input, &pr);
    if (st == DSR1_OK && (st = dsr1__srv_params(s, item->sampling, &pr, &pa)) == DSR1_OK)
        dsr1__srv_params_free(&pa);
    dsr1__srv_prompt_free(&pr);
    return st;
}

static dsr1_status codec_check(void *ctx, const char *endpoint, const uint8_t *req, size_t len,
                               char *custom_id, size_t cap)
{
    (void)endpoint;
    srv_batches *gb = ctx;
    if (cap) custom_id[0] = '\0';
    Dsr1__V1__BatchItem *item = dsr1__v1__batch_item__unpack(NULL, len, req);
    if (!item) return dsr1_error(DSR1_ERR_INVALID_ARG, "malformed BatchItem");
    if (cap && dsr1__srv_utf8_valid(item->custom_id))
        snprintf(custom_id, cap, "%s", item->custom_id);
    dsr1_status st = check_item(gb->s, item);
    dsr1__v1__batch_item__free_unpacked(item, NULL);
    return st;
}

/* The scheduler's events for a batch item (scheduler thread): only the FINAL matters. */
static void item_event(const dsr1_sched_event *ev)
{
    if (ev->kind != DSR1_EV_FINAL) return;
    run_item *it = ev->ctx;
    srv_arena a = {0};
    srv_buf buf = {NULL, 0};
    Dsr1__V1__Completion *c = dsr1__srv_completion(it->gb->s, ev, &a);
    dsr1_batch_result r = {.aborted = ev->finish == DSR1_FINISH_ABORT, .status = ev->status};
    if (!c || pack_result(it->index, it->custom_id, c, &buf) != DSR1_OK) {
        DSR1_ERROR("server: batch item %s: out of memory for its result", it->request_id);
        r.error = true;
    } else {
        r.error = c->finish_reason == DSR1__V1__FINISH_REASON__ERROR ||
                  c->finish_reason == DSR1__V1__FINISH_REASON__ABORT;
        if (c->usage) {
            r.prompt_tokens = c->usage->prompt_tokens;
            r.completion_tokens = c->usage->completion_tokens;
            r.cached_tokens = c->usage->cached_tokens;
        }
    }
    r.bytes = buf.data;
    r.len = buf.len;
    dsr1_batches_item_done(it->gb->store, it->key, &r);
    free(buf.data);
    dsr1__srv_arena_free(&a);
    free(it->custom_id);
    free(it);
}

static dsr1_status codec_start(void *ctx, const dsr1_batch_item_ref *ref)
{
    srv_batches *gb = ctx;
    pthread_mutex_lock(&gb->mu);
    bool stopping = gb->stopping;
    pthread_mutex_unlock(&gb->mu);
    if (stopping) /* shutting down: the store runs it on its next open */
        return dsr1_error(DSR1_ERR_BUSY, "the server is shutting down");
    Dsr1__V1__BatchItem *item = dsr1__v1__batch_item__unpack(NULL, ref->len, ref->req);
    if (!item) return dsr1_error(DSR1_ERR_FORMAT, "batch item %s: malformed", ref->request_id);
    run_item *it = calloc(1, sizeof(*it));
    if (it) it->custom_id = strdup(ref->custom_id ? ref->custom_id : "");
    srv_prompt pr = {0};
    srv_params pa = {0};
    bool have_params = false;
    dsr1_status st = it && it->custom_id ? DSR1_OK : dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    if (st == DSR1_OK) {
        it->gb = gb;
        it->key = ref->key;
        it->index = ref->index;
        snprintf(it->request_id, sizeof(it->request_id), "%s", ref->request_id);
        st = dsr1__srv_prompt(gb->s, item->input, &pr);
    }
    if (st == DSR1_OK)
        have_params = (st = dsr1__srv_params(gb->s, item->sampling, &pr, &pa)) == DSR1_OK;
    if (st == DSR1_OK) {
        dsr1_sched_request q = dsr1__srv_request(&pr, &pa);
        q.id = it->request_id;
        q.cls = DSR1_SCHED_BATCH;
        q.callback = item_event;
        q.ctx = it;
        st = dsr1_sched_submit(gb->s->p.sched, &q);
        if (st == DSR1_OK) dsr1__srv_submitted(&pa);
    }
    if (have_params) dsr1__srv_params_free(&pa);
    dsr1__srv_prompt_free(&pr);
    dsr1__v1__batch_item__free_unpacked(item, NULL);
    if (st != DSR1_OK && it) {
        free(it->custom_id);
        free(it);
    }
    return st;
}

static void codec_abort(void *ctx, const char *request_id)
{
    srv_batches *gb = ctx;
    dsr1_sched_abort(gb->s->p.sched, request_id);
}

/* A result for an item that did not run: ABORT when its batch was cancelled or expired,
 * else ERROR; the error text names the code. */
static dsr1_status codec_error_result(void *ctx, const dsr1_batch_item_ref *ref, const char *code,
                                      const char *message, int line, uint8_t **out, size_t *len)
{
    (void)ctx;
    (void)line;
    bool abort = !strcmp(code, "batch_cancelled") || !strcmp(code, "batch_expired");
    char err[600];
    snprintf(err, sizeof(err), "%s%s%s", code, message && *message ? ": " : "",
             message ? message : "");
    Dsr1__V1__Usage u = DSR1__V1__USAGE__INIT;
    Dsr1__V1__Completion c = DSR1__V1__COMPLETION__INIT;
    c.request_id = (char *)ref->request_id;
    c.finish_reason = abort ? DSR1__V1__FINISH_REASON__ABORT : DSR1__V1__FINISH_REASON__ERROR;
    c.usage = &u;
    c.error = err;
    srv_buf b;
    dsr1_status st = pack_result(ref->index, ref->custom_id ? ref->custom_id : "", &c, &b);
    if (st != DSR1_OK) return st;
    *out = b.data;
    *len = b.len;
    return DSR1_OK;
}

dsr1_status dsr1__srv_batches_create(dsr1_server *s, dsr1_batches *store, srv_batches **out)
{
    srv_batches *gb = calloc(1, sizeof(*gb));
    if (!gb) return dsr1_error(DSR1_ERR_NOMEM, "server: out of memory");
    gb->s = s;
    gb->store = store;
    pthread_mutex_init(&gb->mu, NULL);
    dsr1_batch_codec codec = {
        .format = FORMAT,
        .ctx = gb,
        .check = codec_check,
        .start = codec_start,
        .abort = codec_abort,
        .error_result = codec_error_result,
    };
    dsr1_status st = dsr1_batches_register(store, &codec);
    if (st != DSR1_OK) {
        pthread_mutex_destroy(&gb->mu);
        free(gb);
        return st;
    }
    *out = gb;
    return DSR1_OK;
}

/* ---- stream subscriptions ---- */

static void sub_unlink(srv_batches *gb, stream_sub *ss)
{
    if (ss->prev) ss->prev->next = ss->next;
    if (gb->streams == ss) gb->streams = ss->next;
    if (ss->next) ss->next->prev = ss->prev;
    ss->prev = ss->next = NULL;
    ss->c->sub = NULL;
    ss->detached = true;
}

static void sub_release(stream_sub *ss)
{
    if (ss->sub) dsr1_batches_unsubscribe(ss->sub);
    srv_call *c = ss->c;
    free(ss);
    dsr1__srv_call_unref(c);
}

void dsr1__srv_batches_stop(srv_batches *gb)
{
    pthread_mutex_lock(&gb->mu);
    gb->stopping = true;
    stream_sub *done = NULL;
    while (gb->streams) {
        stream_sub *ss = gb->streams;
        sub_unlink(gb, ss);
        if (!ss->subscribing) {
            ss->next = done;
            done = ss;
        }
    }
    pthread_mutex_unlock(&gb->mu);
    while (done) {
        stream_sub *next = done->next;
        dsr1__srv_call_finish(done->c, GRPC_STATUS_UNAVAILABLE,
                              "the server is shutting down: resume with from_seq");
        sub_release(done);
        done = next;
    }
}

void dsr1__srv_batches_destroy(srv_batches *gb)
{
    if (!gb) return;
    dsr1__srv_batches_stop(gb);
    pthread_mutex_destroy(&gb->mu);
    free(gb);
}

int dsr1__srv_batches_active(srv_batches *gb)
{
    if (!gb) return 0;
    dsr1_batches_stats st;
    dsr1_batches_get_stats(gb->store, &st);
    return st.batches_active;
}

/* ---- status messages ---- */

/* The batch, if it is one of this frontend's. */
static dsr1_status get_info(srv_batches *gb, const char *id, dsr1_batch_info *out)
{
    memset(out, 0, sizeof(*out));
    dsr1_status st = dsr1_batches_get(gb->store, id, out);
    if (st == DSR1_ERR_NOT_FOUND) return dsr1_error(st, "no batch '%.140s'", id);
    if (st == DSR1_OK && strcmp(out->format, FORMAT)) {
        dsr1_batch_info_clear(out);
        return dsr1_error(DSR1_ERR_NOT_FOUND,
                          "batch '%.140s' is an OpenAI batch: see the HTTP API's /v1/batches", id);
    }
    return st;
}

static bool count_abort(void *ctx, const dsr1_batch_result_row *row)
{
    int *n = ctx;
    if (!row || !row->error) return true;
    Dsr1__V1__BatchItemResult *r = dsr1__v1__batch_item_result__unpack(NULL, row->len, row->bytes);
    if (r && r->result && r->result->finish_reason == DSR1__V1__FINISH_REASON__ABORT) (*n)++;
    if (r) dsr1__v1__batch_item_result__free_unpacked(r, NULL);
    return true;
}

/* Results with finish_reason ABORT (the store counts them among the failed ones). */
static int aborted_of(srv_batches *gb, const dsr1_batch_info *i)
{
    int n = 0;
    if (i->failed > 0) dsr1_batches_results(gb->store, i->id, 0, count_abort, &n);
    return n;
}

static Dsr1__V1__BatchState state_of(const dsr1_batch_info *i)
{
    switch (i->state) {
    case DSR1_BATCH_VALIDATING:
        return DSR1__V1__BATCH_STATE__VALIDATING;
    case DSR1_BATCH_IN_PROGRESS:
        return i->running || i->completed || i->failed ? DSR1__V1__BATCH_STATE__RUNNING
                                                       : DSR1__V1__BATCH_STATE__QUEUED;
    case DSR1_BATCH_FINALIZING:
        return DSR1__V1__BATCH_STATE__FINALIZING;
    case DSR1_BATCH_COMPLETED:
        return DSR1__V1__BATCH_STATE__COMPLETED;
    case DSR1_BATCH_FAILED:
        return DSR1__V1__BATCH_STATE__FAILED;
    case DSR1_BATCH_EXPIRED:
        return DSR1__V1__BATCH_STATE__EXPIRED;
    case DSR1_BATCH_CANCELLING:
        return DSR1__V1__BATCH_STATE__CANCELLING;
    case DSR1_BATCH_CANCELLED:
        return DSR1__V1__BATCH_STATE__CANCELLED;
    }
    return DSR1__V1__BATCH_STATE__BATCH_STATE_UNSPECIFIED;
}

static int64_t final_at(const dsr1_batch_info *i)
{
    switch (i->state) {
    case DSR1_BATCH_COMPLETED:
        return i->completed_at;
    case DSR1_BATCH_FAILED:
        return i->failed_at;
    case DSR1_BATCH_EXPIRED:
        return i->expired_at;
    case DSR1_BATCH_CANCELLED:
        return i->cancelled_at;
    default:
        return 0;
    }
}

/* i's status without results; u receives the usage it points to. Strings borrowed from i. */
static void status_of(srv_batches *gb, dsr1_batch_info *i, Dsr1__V1__BatchStatus *st,
                      Dsr1__V1__Usage *u)
{
    int aborted = aborted_of(gb, i);
    dsr1__v1__batch_status__init(st);
    dsr1__v1__usage__init(u);
    u->prompt_tokens = (int32_t)i->prompt_tokens;
    u->completion_tokens = (int32_t)i->completion_tokens;
    u->cached_tokens = (int32_t)i->cached_tokens;
    st->batch_id = i->id;
    st->state = state_of(i);
    st->total = i->total;
    st->finished = i->completed + i->failed;
    st->failed = i->failed - aborted;
    st->aborted = aborted;
    st->usage = u;
    st->created_unix_s = (double)i->created_at;
    st->finished_unix_s = (double)final_at(i);
    st->running = i->running;
    st->completion_window = i->completion_window;
    st->expires_unix_s = (double)i->expires_at;
    st->error = i->errors_json && i->state == DSR1_BATCH_FAILED ? i->errors_json : (char *)"";
    st->priority = i->priority;
    st->max_running = i->max_running;
}

static dsr1_status pack_status(srv_batches *gb, dsr1_batch_info *i, srv_buf *out)
{
    Dsr1__V1__BatchStatus st;
    Dsr1__V1__Usage u;
    status_of(gb, i, &st, &u);
    return dsr1__srv_pack(&st.base, out);
}

/* ---- results read back ---- */

static size_t put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    for (;; v >>= 7) {
        p[n++] = (uint8_t)((v & 0x7F) | (v >= 0x80 ? 0x80 : 0));
        if (v < 0x80) return n;
    }
}

/* A stored result with its seq appended: a packed BatchItemResult. */
static dsr1_status with_seq(const dsr1_batch_result_row *row, srv_buf *out)
{
    uint8_t *p = malloc(row->len + 11);
    if (!p) return dsr1_error(DSR1_ERR_NOMEM, "out of memory for a batch result");
    memcpy(p, row->bytes, row->len);
    size_t n = row->len;
    p[n++] = SEQ_FIELD << 3; /* varint */
    n += put_varint(p + n, (uint64_t)row->seq);
    *out = (srv_buf){p, n};
    return DSR1_OK;
}

/* GetBatch's results: appended to the packed BatchStatus as field 10. */
typedef struct {
    srv_buf *msg;
    size_t cap;
    dsr1_status st;
} results_acc;

static bool append_result(void *ctx, const dsr1_batch_result_row *row)
{
    results_acc *acc = ctx;
    if (!row) return true;
    size_t need = acc->msg->len + row->len + 32;
    if (need > acc->cap) {
        size_t cap = acc->cap * 2 > need ? acc->cap * 2 : need;
        uint8_t *p = realloc(acc->msg->data, cap);
        if (!p) {
            acc->st = dsr1_error(DSR1_ERR_NOMEM, "out of memory for a batch's results");
            return false;
        }
        acc->msg->data = p;
        acc->cap = cap;
    }
    uint8_t seq[11];
    size_t ns = put_varint(seq + 1, (uint64_t)row->seq) + 1;
    seq[0] = SEQ_FIELD << 3;
    uint8_t *p = acc->msg->data;
    size_t n = acc->msg->len;
    p[n++] = (RESULTS_FIELD << 3) | 2; /* length-delimited */
    n += put_varint(p + n, row->len + ns);
    memcpy(p + n, row->bytes, row->len);
    n += row->len;
    memcpy(p + n, seq, ns);
    acc->msg->len = n + ns;
    return true;
}

/* ---- creating batches ---- */

/* An item as stored: packed, with the batch's default sampling when it has none. */
static dsr1_status pack_item(Dsr1__V1__BatchItem *item, Dsr1__V1__SamplingParams *def, srv_buf *out)
{
    Dsr1__V1__SamplingParams *own = item->sampling;
    if (!own) item->sampling = def;
    dsr1_status st = dsr1__srv_pack(&item->base, out);
    item->sampling = own;
    return st;
}

static uint64_t hash_item(uint64_t h, const srv_buf *b)
{
    uint64_t n = b->len;
    h = fnv1a(h, &n, sizeof(n));
    return fnv1a(h, b->data, b->len);
}

/* The hash of a batch's header: completion_window, then priority and max_running when set. */
static uint64_t hash_header(const char *window, int32_t priority, int32_t max_running)
{
    uint64_t h = fnv1a(FNV_INIT, window, strlen(window) + 1);
    if (priority || max_running) {
        int32_t v[2] = {priority, max_running};
        h = fnv1a(h, v, sizeof(v));
    }
    return h;
}

static dsr1_status check_header(dsr1_server *s, const char *id, const char *window,
                                int32_t max_running)
{
    if (max_running < 0)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "max_running %d: negative", max_running);
    if (*id && !dsr1__srv_id_valid(id))
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "batch_id: expected 1 to 128 characters of [A-Za-z0-9._:-]");
    if (strlen(window) >= sizeof(((dsr1_batch_info *)0)->completion_window))
        return dsr1_error(DSR1_ERR_INVALID_ARG, "completion_window '%.40s': too long", window);
    (void)s;
    return DSR1_OK;
}

/* Items handed to create(): next() gives each packed item in turn (*more false at the end). */
typedef struct {
    dsr1_status (*next)(void *ctx, srv_buf *item, bool *more);
    void *ctx;
} item_source;

/* Creates the batch through the store's writer and packs the SubmitBatchResponse. */
static dsr1_status create(srv_batches *gb, const char *id, const char *window, int32_t priority,
                          int32_t max_running, uint64_t hash, item_source src, srv_buf *resp)
{
    dsr1_batch_create c = {
        .id = *id ? id : NULL,
        .format = FORMAT,
        .endpoint = "",
        .completion_window = window,
        .request_hash = hash,
        .priority = priority,
        .max_running = max_running,
    };
    dsr1_batch_writer *w;
    dsr1_status st = dsr1_batch_writer_begin(gb->store, &c, &w);
    if (st == DSR1_ERR_EXISTS)
        return dsr1_error(
            st, "batch '%s' already exists with different items; use another batch_id", id);
    if (st != DSR1_OK) return st;
    for (bool more = true; st == DSR1_OK;) {
        srv_buf item = {NULL, 0};
        st = src.next(src.ctx, &item, &more);
        if (st != DSR1_OK || !more) break;
        st = dsr1_batch_writer_add(w, item.data, item.len);
        free(item.data);
    }
    if (st != DSR1_OK) {
        dsr1_batch_writer_abort(w);
        return st;
    }
    dsr1_batch_info info;
    memset(&info, 0, sizeof(info));
    bool created = false;
    st = dsr1_batch_writer_commit(w, &info, &created);
    if (st == DSR1_ERR_EXISTS && info.id[0] && !created)
        st = DSR1_OK; /* the same batch again */
    else if (st == DSR1_ERR_EXISTS)
        st = dsr1_error(st, "batch '%s' already exists with different items; use another batch_id",
                        id);
    if (st == DSR1_OK) {
        Dsr1__V1__BatchStatus bs;
        Dsr1__V1__Usage u;
        status_of(gb, &info, &bs, &u);
        Dsr1__V1__SubmitBatchResponse m = DSR1__V1__SUBMIT_BATCH_RESPONSE__INIT;
        m.batch_id = info.id;
        m.created = created;
        m.status = &bs;
        st = dsr1__srv_pack(&m.base, resp);
        if (created)
            DSR1_INFO("server: batch %s: %d items queued (priority %d)", info.id, info.total,
                      info.priority);
    }
    dsr1_batch_info_clear(&info);
    return st;
}

/* ---- SubmitBatch ---- */

typedef struct {
    srv_buf *items;
    size_t n, i;
} array_source;

static dsr1_status array_next(void *ctx, srv_buf *item, bool *more)
{
    array_source *a = ctx;
    *more = a->i < a->n;
    if (!*more) return DSR1_OK;
    *item = a->items[a->i];
    a->items[a->i++] = (srv_buf){NULL, 0}; /* taken over */
    return DSR1_OK;
}

dsr1_status dsr1__srv_submit_batch(dsr1_server *s, const uint8_t *data, size_t len, srv_buf *resp)
{
    srv_batches *gb = s->batches;
    if (!gb) return no_store();
    Dsr1__V1__SubmitBatchRequest *req = dsr1__v1__submit_batch_request__unpack(NULL, len, data);
    if (!req) return dsr1_error(DSR1_ERR_INVALID_ARG, "malformed SubmitBatchRequest");
    dsr1_status st = check_header(s, req->batch_id, req->completion_window, req->max_running);
    if (st == DSR1_OK && !req->n_items) st = dsr1_error(DSR1_ERR_INVALID_ARG, "items is empty");
    if (st == DSR1_OK && req->n_items > (size_t)s->p.max_batch_items)
        st = dsr1_error(DSR1_ERR_INVALID_ARG, "%zu items: at most %d per batch", req->n_items,
                        s->p.max_batch_items);
    array_source a = {calloc(req->n_items + 1, sizeof(srv_buf)), req->n_items, 0};
    if (st == DSR1_OK && !a.items) st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    uint64_t hash = hash_header(req->completion_window, req->priority, req->max_running);
    for (size_t i = 0; st == DSR1_OK && i < req->n_items; i++)
        if ((st = pack_item(req->items[i], req->default_sampling, &a.items[i])) == DSR1_OK)
            hash = hash_item(hash, &a.items[i]);
    if (st == DSR1_OK)
        st = create(gb, req->batch_id, req->completion_window, req->priority, req->max_running,
                    hash, (item_source){array_next, &a}, resp);
    for (size_t i = 0; a.items && i < a.n; i++) free(a.items[i].data);
    free(a.items);
    dsr1__v1__submit_batch_request__free_unpacked(req, NULL);
    return st;
}

/* ---- UploadBatch ---- */

typedef struct {
    FILE *spool; /* each item: its length (uint64) and bytes */
    Dsr1__V1__UploadBatchRequest *first;
    uint64_t hash;
    int n;
    dsr1_status st; /* an error: the call ends with it */
    grpc_status_code code;
    char *err;
} upload;

static void upload_free(upload *u)
{
    if (u->spool) fclose(u->spool);
    if (u->first) dsr1__v1__upload_batch_request__free_unpacked(u->first, NULL);
    free(u->err);
    free(u);
}

static void upload_fail(upload *u, dsr1_status st)
{
    if (u->st != DSR1_OK) return;
    u->st = st;
    u->code = dsr1__srv_grpc_code(st);
    u->err = strdup(dsr1_errmsg());
}

/* One message: its items spooled. */
static void upload_message(srv_batches *gb, upload *u, const uint8_t *data, size_t len)
{
    dsr1_server *s = gb->s;
    Dsr1__V1__UploadBatchRequest *m = dsr1__v1__upload_batch_request__unpack(NULL, len, data);
    if (!m) {
        upload_fail(u, dsr1_error(DSR1_ERR_INVALID_ARG, "malformed UploadBatchRequest"));
        return;
    }
    dsr1_status st = DSR1_OK;
    if (!u->first) {
        u->first = m;
        st = check_header(s, m->batch_id, m->completion_window, m->max_running);
        if (st == DSR1_OK && m->total_items < 0)
            st = dsr1_error(DSR1_ERR_INVALID_ARG, "total_items %d: negative", m->total_items);
        u->hash = hash_header(m->completion_window, m->priority, m->max_running);
        if (st == DSR1_OK && !(u->spool = tmpfile()))
            st = dsr1_error(DSR1_ERR_IO, "server: cannot make a temporary file for an upload");
    }
    for (size_t i = 0; st == DSR1_OK && i < m->n_items; i++) {
        if (u->n >= s->p.max_batch_items) {
            st = dsr1_error(DSR1_ERR_INVALID_ARG, "more than %d items: at most %d per batch",
                            s->p.max_batch_items, s->p.max_batch_items);
            break;
        }
        srv_buf b;
        if ((st = pack_item(m->items[i], u->first->default_sampling, &b)) != DSR1_OK) break;
        uint64_t n = b.len;
        if (fwrite(&n, sizeof(n), 1, u->spool) != 1 || fwrite(b.data, 1, b.len, u->spool) != b.len)
            st = dsr1_error(DSR1_ERR_IO, "server: cannot spool an upload (disk full?)");
        u->hash = hash_item(u->hash, &b);
        u->n++;
        free(b.data);
    }
    if (m != u->first) dsr1__v1__upload_batch_request__free_unpacked(m, NULL);
    if (st != DSR1_OK) upload_fail(u, st);
}

static dsr1_status spool_next(void *ctx, srv_buf *item, bool *more)
{
    FILE *f = ctx;
    uint64_t n;
    *more = fread(&n, sizeof(n), 1, f) == 1;
    if (!*more)
        return ferror(f) ? dsr1_error(DSR1_ERR_IO, "server: cannot read an upload back") : DSR1_OK;
    uint8_t *p = n < (1u << 30) ? malloc(n ? n : 1) : NULL;
    if (!p) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    if (fread(p, 1, n, f) != n) {
        free(p);
        return dsr1_error(DSR1_ERR_IO, "server: cannot read an upload back");
    }
    *item = (srv_buf){p, n};
    return DSR1_OK;
}

static void upload_end(srv_call *c, upload *u)
{
    srv_batches *gb = c->srv->batches;
    dsr1_status st = u->st;
    if (st == DSR1_OK && !u->first)
        st = dsr1_error(DSR1_ERR_INVALID_ARG, "UploadBatch: no message");
    else if (st == DSR1_OK && !u->n)
        st = dsr1_error(DSR1_ERR_INVALID_ARG, "items is empty");
    else if (st == DSR1_OK && u->first->total_items && u->n != u->first->total_items)
        st = dsr1_error(DSR1_ERR_INVALID_ARG,
                        "total_items is %d but %d items arrived: nothing created",
                        u->first->total_items, u->n);
    if (u->st != DSR1_OK) {
        dsr1__srv_call_finish(c, u->code, u->err);
        return;
    }
    srv_buf resp;
    if (st == DSR1_OK && fflush(u->spool) == 0 && fseek(u->spool, 0, SEEK_SET) == 0)
        st = create(gb, u->first->batch_id, u->first->completion_window, u->first->priority,
                    u->first->max_running, u->hash, (item_source){spool_next, u->spool}, &resp);
    else if (st == DSR1_OK)
        st = dsr1_error(DSR1_ERR_IO, "server: cannot read an upload back");
    if (st == DSR1_OK) {
        dsr1__srv_call_send(c, resp);
        dsr1__srv_call_finish(c, GRPC_STATUS_OK, NULL);
    } else {
        dsr1__srv_call_finish_error(c, st);
    }
}

bool dsr1__srv_upload_batch(srv_call *c, const uint8_t *data, size_t len, bool gone)
{
    srv_batches *gb = c->srv->batches;
    upload *u = c->sub;
    if (!u && data) {
        if (!gb) {
            dsr1__srv_call_finish_error(c, no_store());
            return false;
        }
        if (!(u = calloc(1, sizeof(*u)))) {
            dsr1__srv_call_finish(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
            return false;
        }
        c->sub = u;
    }
    if (data) {
        upload_message(gb, u, data, len);
        if (u->st == DSR1_OK) return true;
        dsr1__srv_call_finish(c, u->code, u->err); /* at once: the rest is not read */
        c->sub = NULL;
        upload_free(u);
        return false;
    }
    /* the end */
    c->sub = NULL;
    if (!gone && !u && !gb)
        dsr1__srv_call_finish_error(c, no_store());
    else if (!gone && !u)
        dsr1__srv_call_finish(c, GRPC_STATUS_INVALID_ARGUMENT, "UploadBatch: no message");
    else if (!gone)
        upload_end(c, u);
    if (u) upload_free(u);
    return false;
}

/* ---- GetBatch, CancelBatch, ListBatches ---- */

dsr1_status dsr1__srv_get_batch(dsr1_server *s, const uint8_t *data, size_t len, srv_buf *resp)
{
    srv_batches *gb = s->batches;
    if (!gb) return no_store();
    Dsr1__V1__GetBatchRequest *req = dsr1__v1__get_batch_request__unpack(NULL, len, data);
    if (!req) return dsr1_error(DSR1_ERR_INVALID_ARG, "malformed GetBatchRequest");
    dsr1_batch_info info;
    dsr1_status st = get_info(gb, req->batch_id, &info);
    if (st == DSR1_OK) {
        st = pack_status(gb, &info, resp);
        if (st == DSR1_OK && req->include_results) {
            results_acc acc = {resp, resp->len, DSR1_OK};
            st = dsr1_batches_results(gb->store, info.id, 0, append_result, &acc);
            if (st == DSR1_OK) st = acc.st;
            if (st != DSR1_OK) free(resp->data);
        }
        dsr1_batch_info_clear(&info);
    }
    dsr1__v1__get_batch_request__free_unpacked(req, NULL);
    return st;
}

dsr1_status dsr1__srv_cancel_batch(dsr1_server *s, const uint8_t *data, size_t len, srv_buf *resp)
{
    srv_batches *gb = s->batches;
    if (!gb) return no_store();
    Dsr1__V1__CancelBatchRequest *req = dsr1__v1__cancel_batch_request__unpack(NULL, len, data);
    if (!req) return dsr1_error(DSR1_ERR_INVALID_ARG, "malformed CancelBatchRequest");
    dsr1_batch_info info;
    dsr1_status st = get_info(gb, req->batch_id, &info);
    if (st == DSR1_OK) {
        dsr1_batch_info_clear(&info);
        memset(&info, 0, sizeof(info));
        st = dsr1_batches_cancel(gb->store, req->batch_id, &info);
        if (st == DSR1_OK) {
            DSR1_INFO("server: batch %s: cancel (%d items running)", info.id, info.running);
            st = pack_status(gb, &info, resp);
            dsr1_batch_info_clear(&info);
        }
    }
    dsr1__v1__cancel_batch_request__free_unpacked(req, NULL);
    return st;
}

dsr1_status dsr1__srv_list_batches(dsr1_server *s, const uint8_t *data, size_t len, srv_buf *resp)
{
    srv_batches *gb = s->batches;
    if (!gb) return no_store();
    Dsr1__V1__ListBatchesRequest *req = dsr1__v1__list_batches_request__unpack(NULL, len, data);
    if (!req) return dsr1_error(DSR1_ERR_INVALID_ARG, "malformed ListBatchesRequest");
    int limit = req->limit ? req->limit : DEFAULT_LIST;
    dsr1_status rc = DSR1_OK;
    if (limit < 0 || limit > MAX_LIST)
        rc = dsr1_error(DSR1_ERR_INVALID_ARG, "limit %d: allowed range [0, %d]", limit, MAX_LIST);
    dsr1_batch_info *info = rc ? NULL : calloc((size_t)limit, sizeof(*info));
    Dsr1__V1__BatchStatus *st = rc ? NULL : calloc((size_t)limit, sizeof(*st));
    Dsr1__V1__BatchStatus **ptrs = rc ? NULL : calloc((size_t)limit, sizeof(*ptrs));
    Dsr1__V1__Usage *u = rc ? NULL : calloc((size_t)limit, sizeof(*u));
    if (!rc && (!info || !st || !ptrs || !u)) rc = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    int n = 0;
    bool more = false;
    if (!rc)
        rc = dsr1_batches_list(gb->store, FORMAT, *req->after ? req->after : NULL, limit, info, &n,
                               &more);
    Dsr1__V1__ListBatchesResponse m = DSR1__V1__LIST_BATCHES_RESPONSE__INIT;
    for (int i = 0; !rc && i < n; i++) {
        status_of(gb, &info[i], &st[i], &u[i]);
        ptrs[i] = &st[i];
    }
    m.n_batches = rc ? 0 : (size_t)n;
    m.batches = ptrs;
    m.has_more = more;
    if (!rc) rc = dsr1__srv_pack(&m.base, resp);
    for (int i = 0; i < n; i++) dsr1_batch_info_clear(&info[i]);
    free(info);
    free(st);
    free(ptrs);
    free(u);
    dsr1__v1__list_batches_request__free_unpacked(req, NULL);
    return rc;
}

/* ---- StreamBatchResults ---- */

/* The store's calls (its thread, or the subscriber's at first): never blocks. With
 * PACE_HIGH results waiting to be sent it stops the subscription; stream_drained starts a
 * new one from the next seq once the client has read them. */
static void stream_drained(srv_call *c);

static bool stream_row(void *ctx, const dsr1_batch_result_row *row)
{
    stream_sub *ss = ctx;
    if (!row) {
        dsr1__srv_call_finish(ss->c, GRPC_STATUS_OK, NULL);
        return false;
    }
    srv_buf b;
    if (with_seq(row, &b) != DSR1_OK) {
        dsr1__srv_call_finish(ss->c, GRPC_STATUS_RESOURCE_EXHAUSTED, dsr1_errmsg());
        return false;
    }
    dsr1__srv_call_send(ss->c, b);
    ss->next_seq = row->seq + 1;
    if (dsr1__srv_call_pace(ss->c, PACE_HIGH, PACE_LOW, stream_drained)) return false;
    pthread_mutex_lock(&ss->c->mu);
    bool live = !ss->c->dead && !ss->c->status_queued;
    pthread_mutex_unlock(&ss->c->mu);
    return live;
}

/* Subscribes ss from its next seq (again while a drain arrived meanwhile), its caller
 * having set ss->subscribing; then releases ss if it was detached meanwhile. */
static void run_subscription(srv_batches *gb, stream_sub *ss)
{
    srv_call *c = ss->c;
    for (;;) {
        pthread_mutex_lock(&gb->mu);
        dsr1_batch_sub *old = ss->sub;
        ss->sub = NULL;
        bool stopping = gb->stopping;
        pthread_mutex_unlock(&gb->mu);
        if (old) dsr1_batches_unsubscribe(old);
        dsr1_batch_sub *sub = NULL;
        dsr1_status st = stopping ? dsr1_error(DSR1_ERR_UNAVAILABLE, "the server is shutting down")
                                  : dsr1_batches_subscribe(gb->store, ss->batch_id, ss->next_seq,
                                                           stream_row, ss, &sub);
        pthread_mutex_lock(&gb->mu);
        ss->sub = st == DSR1_OK ? sub : NULL;
        bool again = st == DSR1_OK && ss->resume_pending && !ss->detached && !gb->stopping;
        ss->resume_pending = false;
        if (again) {
            pthread_mutex_unlock(&gb->mu);
            continue;
        }
        ss->subscribing = false;
        if (st != DSR1_OK && !ss->detached) sub_unlink(gb, ss);
        bool release = ss->detached, shutting = gb->stopping;
        pthread_mutex_unlock(&gb->mu);
        if (st != DSR1_OK) dsr1__srv_call_finish_error(c, st);
        if (release && st == DSR1_OK && shutting)
            dsr1__srv_call_finish(c, GRPC_STATUS_UNAVAILABLE,
                                  "the server is shutting down: resume with from_seq");
        if (release) sub_release(ss);
        return;
    }
}

/* The client has read what was waiting: the paused subscription goes on. */
static void stream_drained(srv_call *c)
{
    srv_batches *gb = c->srv->batches;
    pthread_mutex_lock(&gb->mu);
    stream_sub *ss = c->sub;
    bool run = ss && !ss->detached && !ss->subscribing;
    if (ss && !ss->detached && ss->subscribing) ss->resume_pending = true;
    if (run) ss->subscribing = true;
    pthread_mutex_unlock(&gb->mu);
    if (run) run_subscription(gb, ss);
}

void dsr1__srv_stream_batch(srv_call *c, const uint8_t *data, size_t len)
{
    srv_batches *gb = c->srv->batches;
    if (!gb) {
        dsr1__srv_call_finish_error(c, no_store());
        return;
    }
    Dsr1__V1__StreamBatchResultsRequest *req =
        dsr1__v1__stream_batch_results_request__unpack(NULL, len, data);
    if (!req) {
        dsr1__srv_call_finish(c, GRPC_STATUS_INVALID_ARGUMENT,
                              "malformed StreamBatchResultsRequest");
        return;
    }
    dsr1_batch_info info;
    dsr1_status st = req->from_seq < 0 ? dsr1_error(DSR1_ERR_INVALID_ARG, "from_seq %lld: negative",
                                                    (long long)req->from_seq)
                                       : get_info(gb, req->batch_id, &info);
    stream_sub *ss = NULL;
    if (st == DSR1_OK) {
        dsr1_batch_info_clear(&info);
        if (!(ss = calloc(1, sizeof(*ss)))) st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    }
    if (st == DSR1_OK) {
        ss->c = c;
        ss->next_seq = req->from_seq;
        snprintf(ss->batch_id, sizeof(ss->batch_id), "%s", req->batch_id);
        dsr1__srv_call_ref(c);
        pthread_mutex_lock(&gb->mu);
        bool stopping = gb->stopping;
        if (!stopping) {
            ss->next = gb->streams;
            if (gb->streams) gb->streams->prev = ss;
            gb->streams = ss;
            ss->subscribing = true;
            c->sub = ss;
        }
        pthread_mutex_unlock(&gb->mu);
        if (stopping) {
            dsr1__srv_call_finish(c, GRPC_STATUS_UNAVAILABLE, "the server is shutting down");
            sub_release(ss);
        } else {
            run_subscription(gb, ss);
        }
    } else {
        dsr1__srv_call_finish_error(c, st);
    }
    dsr1__v1__stream_batch_results_request__free_unpacked(req, NULL);
}

void dsr1__srv_stream_batch_closed(srv_call *c)
{
    srv_batches *gb = c->srv->batches;
    if (!gb) return;
    pthread_mutex_lock(&gb->mu);
    stream_sub *ss = c->sub;
    if (ss) {
        sub_unlink(gb, ss);
        if (ss->subscribing) ss = NULL; /* its subscriber releases it */
    }
    pthread_mutex_unlock(&gb->mu);
    if (ss) sub_release(ss);
}
