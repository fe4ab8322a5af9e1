/* Results: reading a batch's committed results from a seq, and subscriptions that go on
 * with each result as it is committed, then an end call when the batch is final.
 *
 * Deliveries happen under dmu, which a commit takes before it releases the write
 * connection, so subscribers see results in seq order. A subscriber registers under dmu
 * after catching up; a row already given (seq below its next) is skipped, so each result
 * reaches it exactly once. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch_internal.h"

struct dsr1__sub {
    dsr1__sub *next;
    dsr1_batches *b;
    int64_t batch_n, next_seq;
    dsr1_batch_result_fn fn;
    void *ctx;
    bool over, dead;
};

#define RESULTS_PAGE 256

/* The store whose dmu this thread holds while it calls subscribers, if any. */
static __thread dsr1_batches *tls_delivering;

void dsr1__dmu_lock(dsr1_batches *b)
{
    pthread_mutex_lock(&b->dmu);
    tls_delivering = b;
}

void dsr1__dmu_unlock(dsr1_batches *b)
{
    /* free the subscriptions dropped from inside their own callback */
    for (dsr1__sub **pp = &b->subs; *pp;) {
        dsr1__sub *s = *pp;
        if (s->dead) {
            *pp = s->next;
            free(s);
        } else {
            pp = &s->next;
        }
    }
    tls_delivering = NULL;
    pthread_mutex_unlock(&b->dmu);
}

void dsr1__deliver(dsr1_batches *b, int64_t batch_n, const dsr1_batch_result_row *row)
{
    for (dsr1__sub *s = b->subs; s; s = s->next) {
        if (s->batch_n != batch_n || s->over || s->dead || row->seq < s->next_seq) continue;
        s->next_seq = row->seq + 1;
        if (!s->fn(s->ctx, row)) s->over = true;
    }
}

void dsr1__deliver_end(dsr1_batches *b, int64_t batch_n)
{
    for (dsr1__sub *s = b->subs; s; s = s->next) {
        if (s->batch_n != batch_n || s->over || s->dead) continue;
        s->over = true;
        s->fn(s->ctx, NULL);
    }
}

void dsr1__subs_free_all(dsr1_batches *b)
{
    /* detached, not freed: their owners still unsubscribe them */
    while (b->subs) {
        dsr1__sub *n = b->subs->next;
        b->subs->b = NULL;
        b->subs->over = true;
        b->subs = n;
    }
}

static dsr1_status lookup(sqlite3 *db, const char *id, int64_t *n, dsr1_batch_state *state)
{
    sqlite3_stmt *q;
    dsr1_status st =
        dsr1__prep(db, "SELECT n, state FROM batches WHERE id = ? AND visible = 1", &q);
    if (st) return st;
    sqlite3_bind_text(q, 1, id ? id : "", -1, SQLITE_STATIC);
    int rc = sqlite3_step(q);
    if (rc == SQLITE_ROW) {
        *n = sqlite3_column_int64(q, 0);
        *state = (dsr1_batch_state)sqlite3_column_int(q, 1);
    } else if (rc == SQLITE_DONE) {
        st = dsr1_error(DSR1_ERR_NOT_FOUND, "no batch %s", id ? id : "");
    } else {
        st = dsr1__sql_error(db, rc, "reading a batch");
    }
    sqlite3_finalize(q);
    return st;
}

/* Gives the rows with seq >= *from, a page per read transaction; *from moves on. */
static dsr1_status read_rows(sqlite3 *db, int64_t n, int64_t *from, dsr1_batch_result_fn fn,
                             void *ctx, bool *stopped)
{
    *stopped = false;
    sqlite3_stmt *q;
    dsr1_status st = dsr1__prep(db,
                                "SELECT r.seq, r.idx, i.custom_id, r.error, r.bytes FROM results "
                                "r JOIN items i ON i.batch_n = r.batch_n AND i.idx = r.idx WHERE "
                                "r.batch_n = ? AND r.seq >= ? ORDER BY r.seq LIMIT ?",
                                &q);
    if (st) return st;
    for (;;) {
        sqlite3_reset(q);
        sqlite3_bind_int64(q, 1, n);
        sqlite3_bind_int64(q, 2, *from);
        sqlite3_bind_int(q, 3, RESULTS_PAGE);
        int k = 0, rc;
        while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
            k++;
            dsr1_batch_result_row row = {.seq = sqlite3_column_int64(q, 0),
                                         .index = sqlite3_column_int(q, 1),
                                         .custom_id = (const char *)sqlite3_column_text(q, 2),
                                         .error = sqlite3_column_int(q, 3) != 0,
                                         .bytes = sqlite3_column_blob(q, 4),
                                         .len = (size_t)sqlite3_column_bytes(q, 4)};
            if (!row.custom_id) row.custom_id = "";
            *from = row.seq + 1;
            if (!fn(ctx, &row)) {
                *stopped = true;
                break;
            }
        }
        if (*stopped) break;
        if (rc != SQLITE_DONE) {
            st = dsr1__sql_error(db, rc, "reading results");
            break;
        }
        if (k < RESULTS_PAGE) break;
    }
    sqlite3_finalize(q);
    return st;
}

dsr1_status dsr1_batches_results(dsr1_batches *b, const char *id, int64_t from_seq,
                                 dsr1_batch_result_fn fn, void *ctx)
{
    sqlite3 *db;
    dsr1_status st = dsr1__reader(b, &db);
    if (st) return st;
    int64_t n;
    dsr1_batch_state state;
    bool stopped = false;
    if (from_seq < 0) from_seq = 0;
    st = lookup(db, id, &n, &state);
    if (!st) st = read_rows(db, n, &from_seq, fn, ctx, &stopped);
    dsr1__reader_put(b, db);
    (void)state;
    (void)stopped;
    return st;
}

dsr1_status dsr1_batches_subscribe(dsr1_batches *b, const char *id, int64_t from_seq,
                                   dsr1_batch_result_fn fn, void *ctx, dsr1_batch_sub **out)
{
    dsr1__sub *s = calloc(1, sizeof *s);
    if (!s) return dsr1_error(DSR1_ERR_NOMEM, "batch subscription");
    s->b = b;
    s->fn = fn;
    s->ctx = ctx;
    s->next_seq = from_seq < 0 ? 0 : from_seq;
    sqlite3 *db;
    dsr1_status st = dsr1__reader(b, &db);
    if (st) {
        free(s);
        return st;
    }
    dsr1_batch_state state;
    bool stopped = false;
    /* catch up without holding up deliveries, then the rest under dmu */
    st = lookup(db, id, &s->batch_n, &state);
    if (!st) st = read_rows(db, s->batch_n, &s->next_seq, fn, ctx, &stopped);
    if (!st) {
        dsr1__dmu_lock(b);
        if (!stopped) st = lookup(db, id, &s->batch_n, &state);
        if (!st && !stopped) st = read_rows(db, s->batch_n, &s->next_seq, fn, ctx, &stopped);
        if (!st) {
            if (stopped) {
                s->over = true;
            } else if (dsr1_batch_state_final(state)) {
                s->over = true;
                fn(ctx, NULL);
            }
            s->next = b->subs;
            b->subs = s;
        }
        dsr1__dmu_unlock(b);
    }
    dsr1__reader_put(b, db);
    if (st) {
        free(s);
        return st;
    }
    *out = (dsr1_batch_sub *)s;
    return DSR1_OK;
}

void dsr1_batches_unsubscribe(dsr1_batch_sub *sub)
{
    if (!sub) return;
    dsr1__sub *s = (dsr1__sub *)sub;
    dsr1_batches *b = s->b;
    if (!b) { /* the store was closed */
        free(s);
        return;
    }
    /* from inside a callback: dmu is ours already; freed when the delivery ends */
    if (tls_delivering == b) {
        s->dead = true;
        return;
    }
    pthread_mutex_lock(&b->dmu);
    for (dsr1__sub **pp = &b->subs; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    pthread_mutex_unlock(&b->dmu);
    free(s);
}
