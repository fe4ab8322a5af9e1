/* The runner thread: each turn it sends the aborts asked for, expires batches past their
 * completion window, ends the batches that are ready to end (finish.c), starts pending
 * items while the windows have room (in run order: highest priority first, then oldest
 * first; pending indexes read from the database a page at a time), purges what is past
 * retention, and sleeps until the next event: a finished item, a new batch, a codec, a busy
 * retry, an expiry.
 *
 * While the worker grid cannot serve (suspended until lost workers are replaced: the
 * scheduler refuses with DSR1_ERR_UNAVAILABLE) items are not failed: a refused item waits
 * and is tried again every UNAVAILABLE_RETRY_NS, and the items that were running then come
 * back to pending (runner.c). A batch past its completion window still expires. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "batch_internal.h"
#include "log.h"

#define BUSY_RETRY_NS 20000000LL /* the scheduler was full: try again after 20 ms */
/* the worker grid cannot serve: try again after 1 s (a join takes seconds: no hurry, and
 * one refused submission a second per batch costs nothing) */
#define UNAVAILABLE_RETRY_NS 1000000000LL

bool dsr1__grid_unavailable(const dsr1_batches *b, dsr1_status st)
{
    /* "the batch store is closing" is DSR1_ERR_UNAVAILABLE too: nothing to wait for then */
    return (st == DSR1_ERR_UNAVAILABLE || st == DSR1_ERR_LOST) && !b->stopping;
}

void dsr1__warn_unavailable(dsr1__bt *bt, const char *why)
{
    if (bt->unavailable_logged) return;
    bt->unavailable_logged = true;
    DSR1_WARN("batch %s waits: %s; its items stay pending and are tried again every %lld s "
              "(until its completion window ends)",
              bt->id, why, UNAVAILABLE_RETRY_NS / 1000000000LL);
}

/* Reads the next page of pending indexes of bt (outside mu; only the runner moves it). */
static void read_page(dsr1_batches *b, dsr1__bt *bt)
{
    bt->page_n = bt->page_i = 0;
    sqlite3 *db;
    if (dsr1__reader(b, &db)) return;
    sqlite3_stmt *q;
    if (!dsr1__prep(db,
                    "SELECT idx FROM items WHERE batch_n = ? AND idx > ? AND done = 0 AND valid "
                    "= 1 ORDER BY idx LIMIT ?",
                    &q)) {
        sqlite3_bind_int64(q, 1, bt->n);
        sqlite3_bind_int(q, 2, bt->cursor);
        sqlite3_bind_int(q, 3, DSR1__BATCH_PAGE);
        while (sqlite3_step(q) == SQLITE_ROW) bt->page[bt->page_n++] = sqlite3_column_int(q, 0);
        sqlite3_finalize(q);
    }
    dsr1__reader_put(b, db);
    if (bt->page_n < DSR1__BATCH_PAGE) bt->page_eof = true;
    if (bt->page_n) bt->cursor = bt->page[bt->page_n - 1];
}

/* Starts one item of bt at idx in slot si (outside mu). */
static void start_item(dsr1_batches *b, dsr1__bt *bt, int si, int idx, dsr1_batch_codec c)
{
    dsr1__slot *s = &b->slots[si];
    uint64_t key = (uint64_t)si | ((uint64_t)s->gen << 32);
    uint32_t gen = s->gen;
    char rid[DSR1_BATCH_ID_MAX + 16];
    snprintf(rid, sizeof rid, "%s", s->request_id);
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    dsr1_status st = dsr1__reader(b, &db);
    if (!st)
        st = dsr1__prep(db, "SELECT custom_id, req FROM items WHERE batch_n = ? AND idx = ?", &q);
    const char *cid = "";
    if (!st) {
        sqlite3_bind_int64(q, 1, bt->n);
        sqlite3_bind_int(q, 2, idx);
        if (sqlite3_step(q) != SQLITE_ROW)
            st = dsr1_error(DSR1_ERR_INTERNAL, "batch %s item %d is missing", bt->id, idx);
        else
            cid = (const char *)sqlite3_column_text(q, 0);
    }
    if (!st) {
        char *dup = strdup(cid);
        pthread_mutex_lock(&b->mu);
        s->custom_id = dup;
        pthread_mutex_unlock(&b->mu);
        dsr1_batch_item_ref ref = {.key = key,
                                   .batch_id = bt->id,
                                   .endpoint = bt->endpoint,
                                   .index = idx,
                                   .custom_id = dup ? dup : "",
                                   .request_id = rid,
                                   .req = sqlite3_column_blob(q, 1),
                                   .len = (size_t)sqlite3_column_bytes(q, 1)};
        char cidcopy[512];
        snprintf(cidcopy, sizeof cidcopy, "%s", dup ? dup : "");
        ref.custom_id = cidcopy; /* the slot's copy may be freed by a done call during start */
        st = c.start(c.ctx, &ref);
    }
    sqlite3_finalize(q);
    dsr1__reader_put(b, db);
    pthread_mutex_lock(&b->mu);
    bool mine = s->used && s->gen == gen;
    if (st == DSR1_OK) {
        if (bt->unavailable_logged) {
            bt->unavailable_logged = false;
            DSR1_INFO("batch %s: the scheduler accepts its items again", bt->id);
        }
        if (mine) {
            s->starting = false;
            if (s->abort && !s->abort_sent) {
                s->abort_sent = true;
                pthread_mutex_unlock(&b->mu);
                c.abort(c.ctx, rid);
                pthread_mutex_lock(&b->mu);
            }
        }
        pthread_mutex_unlock(&b->mu);
        return;
    }
    /* not started: no done call will come */
    if (mine) {
        free(s->custom_id);
        s->custom_id = NULL;
        s->used = false;
    }
    const bool unavailable = dsr1__grid_unavailable(b, st);
    if (st == DSR1_ERR_BUSY || unavailable) {
        bt->running--;
        b->running--;
        bt->retry_idx = idx;
        bt->busy_until = dsr1__mono_ns() + (unavailable ? UNAVAILABLE_RETRY_NS : BUSY_RETRY_NS);
        if (unavailable) {
            char why[512];
            snprintf(why, sizeof why, "%s", dsr1_errmsg()[0] ? dsr1_errmsg() : "unavailable");
            dsr1__warn_unavailable(bt, why);
        }
        pthread_mutex_unlock(&b->mu);
        return;
    }
    if (st == DSR1_ERR_UNAVAILABLE && b->stopping) { /* closing: it runs on the next open */
        bt->running--;
        b->running--;
        pthread_cond_broadcast(&b->cv);
        pthread_mutex_unlock(&b->mu);
        return;
    }
    pthread_mutex_unlock(&b->mu);
    char msg[512];
    snprintf(msg, sizeof msg, "%s", dsr1_errmsg()[0] ? dsr1_errmsg() : dsr1_status_str(st));
    DSR1_WARN("batch %s item %d could not start: %s", bt->id, idx, msg);
    dsr1__res *r = dsr1__error_res(b, &c, bt, idx, "", "server_error", msg, 0);
    pthread_mutex_lock(&b->mu);
    if (r) {
        r->started = true;
        dsr1__enqueue(b, r);
    } else {
        bt->running--;
        b->running--;
        dsr1__fail_batch(b, bt, "out of memory");
    }
    pthread_mutex_unlock(&b->mu);
}

/* Under mu: starts one item if the windows allow. Returns whether it did (or made progress
 * reading a page); *wake_ns is lowered to the next busy retry. */
static bool feed_one(dsr1_batches *b, int64_t now, int64_t *wake_ns)
{
    for (dsr1__bt *bt = b->active; bt; bt = bt->next) {
        if (b->running >= b->p.window) return false;
        if (bt->validating || bt->ending || bt->finalize_needed ||
            bt->state != DSR1_BATCH_IN_PROGRESS || bt->running >= bt->window)
            continue;
        if (bt->busy_until > now) {
            /* the scheduler is full: the batches after it wait too (run order) */
            if (bt->busy_until < *wake_ns) *wake_ns = bt->busy_until;
            return false;
        }
        const dsr1_batch_codec *cp = dsr1__codec(b, bt->format);
        if (!cp) {
            if (!bt->no_codec_logged)
                DSR1_WARN("batch %s waits: no codec for format %s yet", bt->id, bt->format);
            bt->no_codec_logged = true;
            continue;
        }
        int idx;
        if (bt->retry_idx >= 0) {
            idx = bt->retry_idx;
            bt->retry_idx = -1;
        } else if (bt->n_again > 0) {
            idx = bt->again[--bt->n_again];
        } else if (bt->page_i < bt->page_n) {
            idx = bt->page[bt->page_i++];
        } else if (!bt->page_eof) {
            pthread_mutex_unlock(&b->mu);
            read_page(b, bt);
            pthread_mutex_lock(&b->mu);
            return true;
        } else {
            continue;
        }
        int si = 0;
        while (si < b->nslots && b->slots[si].used) si++;
        if (si == b->nslots) { /* every slot waits for its commit */
            bt->retry_idx = idx;
            return false;
        }
        dsr1__slot *s = &b->slots[si];
        s->used = s->starting = true;
        s->abort_sent = false;
        s->abort = ABORT_NONE;
        s->gen++;
        s->bt = bt;
        s->idx = idx;
        s->custom_id = NULL;
        snprintf(s->request_id, sizeof s->request_id, "%s/%d", bt->id, idx);
        bt->running++;
        b->running++;
        dsr1_batch_codec c = *cp;
        pthread_mutex_unlock(&b->mu);
        start_item(b, bt, si, idx, c);
        pthread_mutex_lock(&b->mu);
        return true;
    }
    return false;
}

/* Under mu: a batch ready to end, or NULL. */
static dsr1__bt *ready_to_end(dsr1_batches *b, int64_t now)
{
    for (dsr1__bt *bt = b->active; bt; bt = bt->next) {
        if (bt->validating || bt->running > 0 || bt->busy_until > now) continue;
        if (bt->ending == END_FAIL) return bt;
        if (!dsr1__codec(b, bt->format)) continue;
        if (bt->ending || bt->finalize_needed) return bt;
        if (bt->state == DSR1_BATCH_IN_PROGRESS && bt->resulted >= bt->total) return bt;
    }
    return NULL;
}

static int64_t purge_every_ns(const dsr1_batches *b)
{
    return (b->p.retention_s < 120 ? 1 : 60) * 1000000000LL;
}

void *dsr1__runner_main(void *arg)
{
    dsr1_batches *b = arg;
    int64_t last_purge = dsr1__mono_ns();
    pthread_mutex_lock(&b->mu);
    while (!b->stopping) {
        pthread_mutex_unlock(&b->mu);
        dsr1__abort_batch(b, NULL, ABORT_NONE); /* the aborts asked for since last turn */
        pthread_mutex_lock(&b->mu);
        int64_t now = dsr1__mono_ns(), now_s = dsr1__now_s();
        int64_t wake = now + purge_every_ns(b);
        bool expired = false;
        for (dsr1__bt *bt = b->active; bt; bt = bt->next) {
            if (bt->ending || !bt->expires_at || dsr1_batch_state_final(bt->state) ||
                bt->state == DSR1_BATCH_FINALIZING || bt->finalize_needed)
                continue;
            if (now_s >= bt->expires_at) {
                bt->ending = END_EXPIRE;
                for (int i = 0; i < b->nslots; i++)
                    if (b->slots[i].used && b->slots[i].bt == bt && !b->slots[i].abort)
                        b->slots[i].abort = ABORT_EXPIRE;
                expired = true;
            } else {
                int64_t w = now + (bt->expires_at - now_s) * 1000000000LL;
                if (w < wake) wake = w;
            }
        }
        if (expired) continue;
        dsr1__bt *end = ready_to_end(b, now);
        if (end) {
            pthread_mutex_unlock(&b->mu);
            dsr1__finish_batch(b, end);
            pthread_mutex_lock(&b->mu);
            continue;
        }
        if (feed_one(b, now, &wake)) continue;
        if (now - last_purge >= purge_every_ns(b)) {
            pthread_mutex_unlock(&b->mu);
            dsr1__purge(b);
            last_purge = dsr1__mono_ns();
            pthread_mutex_lock(&b->mu);
            continue;
        }
        for (dsr1__bt *bt = b->active; bt; bt = bt->next)
            if (bt->busy_until > now && bt->busy_until < wake) wake = bt->busy_until;
        if (wake - now > 1000000000LL) wake = now + 1000000000LL;
        struct timespec ts = {.tv_sec = wake / 1000000000LL, .tv_nsec = wake % 1000000000LL};
        if (!b->stopping) pthread_cond_timedwait(&b->cv, &b->mu, &ts);
    }
    pthread_mutex_unlock(&b->mu);
    return NULL;
}
