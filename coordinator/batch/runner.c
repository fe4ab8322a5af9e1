/* The runner: feeds pending items to their codecs under the global and per-batch windows
 * (oldest batch first, pending items read a page at a time, DSR1_ERR_BUSY retried after
 * 20 ms, DSR1_ERR_UNAVAILABLE after 1 s), collects finished items (one that ended because
 * the worker grid stopped serving goes back to pending), and the writer thread that commits
 * their results in groups (whatever arrived while the last commit was syncing shares the next
 * transaction) before counting them and giving them to subscribers. It also ends batches:
 * expiry and cancel (abort what runs, give the rest error results), failure, the output and
 * error files of codecs that want them, the final state; and retention. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "batch_internal.h"
#include "log.h"

#define BUSY_RETRY_NS 20000000LL /* the scheduler was full: try again after 20 ms */
#define WRITE_BUF     (64 << 10)

void dsr1__free_res(dsr1__res *r)
{
    if (!r) return;
    free(r->bytes);
    free(r->custom_id);
    free(r);
}

dsr1__bt *dsr1__find_bt(dsr1_batches *b, const char *id)
{
    for (dsr1__bt *bt = b->active; bt; bt = bt->next)
        if (strcmp(bt->id, id) == 0) return bt;
    return NULL;
}

void dsr1__fail_batch(dsr1_batches *b, dsr1__bt *bt, const char *msg)
{
    if (bt->ending == END_FAIL) return;
    DSR1_WARN("batch %s failed: %s", bt->id, msg);
    bt->ending = END_FAIL;
    free(bt->fail_msg);
    bt->fail_msg = strdup(msg);
    for (int i = 0; i < b->nslots; i++)
        if (b->slots[i].used && b->slots[i].bt == bt && !b->slots[i].abort)
            b->slots[i].abort = ABORT_FAIL;
    pthread_cond_broadcast(&b->cv);
}

/* Sends the aborts asked for (slots marked and not sent); bt NULL: every batch. Takes mu. */
static void send_aborts(dsr1_batches *b, dsr1__bt *bt, int reason)
{
    typedef struct {
        char rid[DSR1_BATCH_ID_MAX + 16];
        dsr1_batch_codec c;
    } ab;
    pthread_mutex_lock(&b->mu);
    ab *list = NULL;
    int n = 0;
    for (int i = 0; i < b->nslots; i++) {
        dsr1__slot *s = &b->slots[i];
        if (!s->used || (bt && s->bt != bt)) continue;
        if (reason && !s->abort) s->abort = reason;
        if (!s->abort || s->abort_sent || s->starting) continue;
        const dsr1_batch_codec *c = dsr1__codec(b, s->bt->format);
        if (!c) continue;
        if (!list && !(list = calloc((size_t)b->nslots, sizeof *list))) break;
        s->abort_sent = true;
        snprintf(list[n].rid, sizeof list[n].rid, "%s", s->request_id);
        list[n++].c = *c;
    }
    pthread_mutex_unlock(&b->mu);
    for (int i = 0; i < n; i++) list[i].c.abort(list[i].c.ctx, list[i].rid);
    free(list);
}

void dsr1__abort_batch(dsr1_batches *b, dsr1__bt *bt, int reason)
{
    send_aborts(b, bt, reason);
}

void dsr1__enqueue(dsr1_batches *b, dsr1__res *r)
{
    r->next = NULL;
    if (b->queue_tail)
        b->queue_tail->next = r;
    else
        b->queue = r;
    b->queue_tail = r;
    pthread_cond_signal(&b->wcv);
}

/* Under mu: idx of bt is pending again (fed before the cursor's next page). False when out
 * of memory: then the item is recorded as it ended, as before this existed. */
static bool requeue(dsr1__bt *bt, int idx)
{
    if (bt->n_again == bt->cap_again) {
        int cap = bt->cap_again ? 2 * bt->cap_again : 16;
        int *v = realloc(bt->again, sizeof(int) * (size_t)cap);
        if (!v) return false;
        bt->again = v;
        bt->cap_again = cap;
    }
    bt->again[bt->n_again++] = idx;
    return true;
}

void dsr1_batches_item_done(dsr1_batches *b, uint64_t key, const dsr1_batch_result *r)
{
    uint32_t i = (uint32_t)key, gen = (uint32_t)(key >> 32);
    pthread_mutex_lock(&b->mu);
    if (i >= (uint32_t)b->nslots || !b->slots[i].used || b->slots[i].gen != gen) {
        pthread_mutex_unlock(&b->mu);
        DSR1_WARN("batch store: a done call for an unknown item (key %llx)",
                  (unsigned long long)key);
        return;
    }
    dsr1__slot *s = &b->slots[i];
    dsr1__bt *bt = s->bt;
    int idx = s->idx, reason = s->abort;
    char *cid = s->custom_id;
    s->custom_id = NULL;
    s->used = false;
    bool drop = r->aborted && (reason == ABORT_CLOSE || reason == ABORT_FAIL || b->stopping);
    drop = drop || bt->ending == END_FAIL;
    if (!drop && !r->aborted && dsr1__grid_unavailable(b, r->status) && requeue(bt, idx)) {
        /* the grid stopped serving under it: not its result; it runs again when it serves
         * (the refusals that follow are retried, and bounded by the completion window) */
        dsr1__warn_unavailable(bt, "the worker grid stopped serving while its items ran");
        drop = true;
    }
    if (drop) { /* no result to record */
        bt->running--;
        b->running--;
        pthread_cond_broadcast(&b->cv);
        pthread_mutex_unlock(&b->mu);
        free(cid);
        return;
    }
    dsr1_batch_codec c = *dsr1__codec(b, bt->format);
    pthread_mutex_unlock(&b->mu);
    dsr1__res *res = NULL;
    if (r->aborted && (reason == ABORT_CANCEL || reason == ABORT_EXPIRE)) {
        bool cancel = reason == ABORT_CANCEL;
        res = dsr1__error_res(b, &c, bt, idx, cid, cancel ? "batch_cancelled" : "batch_expired",
                              cancel ? "the batch was cancelled" : "the batch expired", 0);
    } else if ((res = calloc(1, sizeof *res))) {
        res->bt = bt;
        res->idx = idx;
        res->error = r->error;
        res->custom_id = strdup(cid ? cid : "");
        res->bytes = malloc(r->len ? r->len : 1);
        if (res->bytes && r->len) memcpy(res->bytes, r->bytes, r->len);
        res->len = r->len;
        res->prompt_tokens = r->prompt_tokens;
        res->completion_tokens = r->completion_tokens;
        res->cached_tokens = r->cached_tokens;
        res->reasoning_tokens = r->reasoning_tokens;
        if (!res->bytes || !res->custom_id) {
            dsr1__free_res(res);
            res = NULL;
        }
    }
    free(cid);
    pthread_mutex_lock(&b->mu);
    if (!res) {
        /* nothing to record: the item stays pending and runs again on the next open */
        dsr1__fail_batch(b, bt, "out of memory recording a result");
        bt->running--;
        b->running--;
        pthread_cond_broadcast(&b->cv);
    } else {
        res->started = true;
        dsr1__enqueue(b, res);
    }
    pthread_mutex_unlock(&b->mu);
}

/* ---- group commit ---- */

void dsr1__commit_results(dsr1_batches *b, dsr1__res *list)
{
    pthread_mutex_lock(&b->wmu);
    sqlite3_stmt *item = NULL, *res = NULL, *bat = NULL;
    dsr1_status st = dsr1__begin(b);
    if (!st)
        st = dsr1__prep(
            b->db, "UPDATE items SET done = 1 WHERE batch_n = ? AND idx = ? AND done = 0", &item);
    if (!st)
        st = dsr1__prep(b->db,
                        "INSERT INTO results(batch_n, seq, idx, error, bytes) VALUES (?, ?, ?, ?, "
                        "?)",
                        &res);
    if (!st)
        st = dsr1__prep(
            b->db,
            "UPDATE batches SET completed = completed + ?, failed = failed + ?, "
            "prompt_tokens = prompt_tokens + ?, completion_tokens = completion_tokens "
            "+ ?, cached_tokens = cached_tokens + ?, reasoning_tokens = reasoning_tokens + ?, "
            "next_seq = ? WHERE n = ?",
            &bat);
    for (dsr1__res *r = list; !st && r; r = r->next) {
        r->seq = -1;
        sqlite3_reset(item);
        sqlite3_bind_int64(item, 1, r->bt->n);
        sqlite3_bind_int(item, 2, r->idx);
        int rc = sqlite3_step(item);
        if (rc != SQLITE_DONE) {
            st = dsr1__sql_error(b->db, rc, "recording a result");
            break;
        }
        if (sqlite3_changes(b->db) == 0) continue; /* finished already: never twice */
        r->seq = r->bt->next_seq++;
        sqlite3_reset(res);
        sqlite3_bind_int64(res, 1, r->bt->n);
        sqlite3_bind_int64(res, 2, r->seq);
        sqlite3_bind_int(res, 3, r->idx);
        sqlite3_bind_int(res, 4, r->error);
        sqlite3_bind_blob(res, 5, r->bytes, (int)r->len, SQLITE_STATIC);
        if ((rc = sqlite3_step(res)) != SQLITE_DONE) {
            st = dsr1__sql_error(b->db, rc, "recording a result");
            break;
        }
        sqlite3_reset(bat);
        sqlite3_bind_int(bat, 1, !r->error);
        sqlite3_bind_int(bat, 2, r->error);
        sqlite3_bind_int(bat, 3, r->prompt_tokens);
        sqlite3_bind_int(bat, 4, r->completion_tokens);
        sqlite3_bind_int(bat, 5, r->cached_tokens);
        sqlite3_bind_int(bat, 6, r->reasoning_tokens);
        sqlite3_bind_int64(bat, 7, r->bt->next_seq);
        sqlite3_bind_int64(bat, 8, r->bt->n);
        if ((rc = sqlite3_step(bat)) != SQLITE_DONE)
            st = dsr1__sql_error(b->db, rc, "recording a result");
    }
    sqlite3_finalize(item);
    sqlite3_finalize(res);
    sqlite3_finalize(bat);
    if (!st) st = dsr1__commit(b);
    if (st) {
        dsr1__rollback(b);
        /* give back the seq numbers: the first one of each batch, walking backwards */
        dsr1__res *rev = NULL;
        for (dsr1__res *r = list, *nx; r; r = nx) {
            nx = r->next;
            r->next = rev;
            rev = r;
        }
        list = NULL;
        for (dsr1__res *r = rev, *nx; r; r = nx) {
            nx = r->next;
            if (r->seq >= 0) r->bt->next_seq = r->seq;
            r->next = list;
            list = r;
        }
        char msg[512];
        snprintf(msg, sizeof msg, "%s", dsr1_errmsg());
        pthread_mutex_unlock(&b->wmu);
        pthread_mutex_lock(&b->mu);
        for (dsr1__res *r = list; r; r = r->next) {
            dsr1__fail_batch(b, r->bt, msg);
            if (r->started) {
                r->bt->running--;
                b->running--;
            }
        }
        pthread_cond_broadcast(&b->cv);
        pthread_mutex_unlock(&b->mu);
        while (list) {
            dsr1__res *nx = list->next;
            dsr1__free_res(list);
            list = nx;
        }
        return;
    }
    dsr1__dmu_lock(b);
    pthread_mutex_unlock(&b->wmu);
    pthread_mutex_lock(&b->mu);
    b->commits++;
    for (dsr1__res *r = list; r; r = r->next) {
        if (r->seq >= 0) {
            r->bt->resulted++;
            b->results_committed++;
        }
        if (r->started) {
            r->bt->running--;
            b->running--;
        }
    }
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    for (dsr1__res *r = list; r; r = r->next) {
        if (r->seq < 0) continue;
        dsr1_batch_result_row row = {.seq = r->seq,
                                     .index = r->idx,
                                     .custom_id = r->custom_id,
                                     .error = r->error,
                                     .bytes = r->bytes,
                                     .len = r->len};
        dsr1__deliver(b, r->bt->n, &row);
    }
    dsr1__dmu_unlock(b);
    while (list) {
        dsr1__res *nx = list->next;
        dsr1__free_res(list);
        list = nx;
    }
}

void *dsr1__writer_main(void *arg)
{
    dsr1_batches *b = arg;
    pthread_mutex_lock(&b->mu);
    for (;;) {
        while (!b->queue && !b->stop_writer) pthread_cond_wait(&b->wcv, &b->mu);
        if (!b->queue) break;
        dsr1__res *list = b->queue;
        b->queue = b->queue_tail = NULL;
        pthread_mutex_unlock(&b->mu);
        dsr1__commit_results(b, list);
        pthread_mutex_lock(&b->mu);
    }
    pthread_mutex_unlock(&b->mu);
    return NULL;
}
