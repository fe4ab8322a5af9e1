/* Ending batches and retention. A batch ends when its items are all finished (completed),
 * when it was cancelled or expired and nothing of it runs any more (its unfinished items
 * get error results, a chunk per transaction), or when a write failed (failed). Codecs
 * with output_files get the results streamed in item order into an output file (ok
 * lines) and an error file (error lines), each only if it has lines, published like an
 * upload before the final state names them. Retention deletes finished batches (their
 * items and results with them) and files older than retention_s. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "batch_internal.h"
#include "log.h"

#define WRITE_BUF (64 << 10)

/* Error results for every unfinished item, a chunk at a time. */
static dsr1_status fill(dsr1_batches *b, dsr1__bt *bt, const dsr1_batch_codec *c, int ending)
{
    const char *code = ending == END_CANCEL ? "batch_cancelled" : "batch_expired";
    const char *msg = ending == END_CANCEL ? "the batch was cancelled" : "the batch expired";
    int after = -1; /* items up to here have results: no rescan from the start */
    for (;;) {
        sqlite3 *db;
        dsr1_status st = dsr1__reader(b, &db);
        if (st) return st;
        sqlite3_stmt *q;
        if ((st = dsr1__prep(db,
                             "SELECT idx, custom_id FROM items WHERE batch_n = ? AND idx > ? "
                             "AND done = 0 ORDER BY idx LIMIT ?",
                             &q))) {
            dsr1__reader_put(b, db);
            return st;
        }
        sqlite3_bind_int64(q, 1, bt->n);
        sqlite3_bind_int(q, 2, after);
        sqlite3_bind_int(q, 3, DSR1__BATCH_CHUNK);
        dsr1__res *list = NULL, **tail = &list;
        int n = 0;
        while (!st && sqlite3_step(q) == SQLITE_ROW) {
            after = sqlite3_column_int(q, 0);
            dsr1__res *r = dsr1__error_res(b, c, bt, after, (const char *)sqlite3_column_text(q, 1),
                                           code, msg, 0);
            if (!r) {
                st = dsr1_error(DSR1_ERR_NOMEM, "ending batch %s", bt->id);
                break;
            }
            *tail = r;
            tail = &r->next;
            n++;
        }
        sqlite3_finalize(q);
        dsr1__reader_put(b, db);
        if (n == 0 || st) {
            while (list) {
                dsr1__res *nx = list->next;
                dsr1__free_res(list);
                list = nx;
            }
            return st;
        }
        dsr1__commit_results(b, list);
        pthread_mutex_lock(&b->mu);
        bool failed = bt->ending == END_FAIL, stopping = b->stopping;
        pthread_mutex_unlock(&b->mu);
        if (failed) return dsr1_error(DSR1_ERR_IO, "%s", bt->fail_msg ? bt->fail_msg : "failed");
        if (stopping) return dsr1_error(DSR1_ERR_UNAVAILABLE, "the batch store is closing");
    }
}

typedef struct {
    int fd;
    char *buf;
    size_t n;
    int64_t bytes;
    bool failed;
    int err;
} wbuf;

static void write_all(wbuf *w, const char *p, size_t len)
{
    size_t off = 0;
    while (!w->failed && off < len) {
        ssize_t k = write(w->fd, p + off, len - off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            w->failed = true;
            w->err = k < 0 ? errno : EIO;
        } else {
            off += (size_t)k;
        }
    }
}

static void wb_flush(wbuf *w)
{
    write_all(w, w->buf, w->n);
    w->n = 0;
}

static void wb_add(wbuf *w, const void *p, size_t len)
{
    w->bytes += (int64_t)len;
    if (w->n + len > WRITE_BUF) wb_flush(w);
    if (len > WRITE_BUF) {
        write_all(w, p, len);
        return;
    }
    memcpy(w->buf + w->n, p, len);
    w->n += len;
}

/* Writes the results of one kind (error or not) in item order into a new file in tmp/ and
 * publishes it; id "" when there are none. */
static dsr1_status write_output(dsr1_batches *b, dsr1__bt *bt, bool error, char *id, int64_t *bytes)
{
    id[0] = 0;
    sqlite3 *db;
    dsr1_status st = dsr1__reader(b, &db);
    if (st) return st;
    sqlite3_stmt *q;
    if ((st = dsr1__prep(
             db, "SELECT bytes FROM results WHERE batch_n = ? AND error = ? ORDER BY idx", &q))) {
        dsr1__reader_put(b, db);
        return st;
    }
    sqlite3_bind_int64(q, 1, bt->n);
    sqlite3_bind_int(q, 2, error);
    int rc = sqlite3_step(q);
    wbuf w = {.fd = -1};
    char fid[DSR1_BATCH_ID_MAX], tmp[4400];
    if (rc == SQLITE_ROW) {
        char hex[25];
        dsr1__random_hex(hex, 24);
        snprintf(fid, sizeof fid, "file-%s", hex);
        dsr1__path(b, tmp, sizeof tmp, "tmp", fid);
        w.fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        w.buf = malloc(WRITE_BUF);
        if (w.fd < 0 || !w.buf) {
            st = dsr1_error(DSR1_ERR_IO, "creating %s: %s", tmp,
                            w.fd < 0 ? strerror(errno) : "out of memory");
        }
        while (!st && rc == SQLITE_ROW && !w.failed) {
            wb_add(&w, sqlite3_column_blob(q, 0), (size_t)sqlite3_column_bytes(q, 0));
            wb_add(&w, "\n", 1);
            rc = sqlite3_step(q);
        }
        if (!st) wb_flush(&w);
        if (!st && w.failed)
            st = dsr1_error(DSR1_ERR_IO, "writing the %s file of batch %s in %s: %s",
                            error ? "error" : "output", bt->id, b->dir, strerror(w.err));
        if (!st && rc != SQLITE_DONE) st = dsr1__sql_error(db, rc, "reading results");
    }
    sqlite3_finalize(q);
    dsr1__reader_put(b, db);
    free(w.buf);
    if (!st && w.fd >= 0) {
        pthread_mutex_lock(&b->wmu);
        if (!(st = dsr1__begin(b)) && !(st = dsr1__file_intent(b, fid))) st = dsr1__commit(b);
        if (st) dsr1__rollback(b);
        pthread_mutex_unlock(&b->wmu);
        if (!st) st = dsr1__file_publish(b, w.fd, fid);
        if (!st) {
            snprintf(id, DSR1_BATCH_ID_MAX, "%s", fid);
            *bytes = w.bytes;
        }
    }
    if (w.fd >= 0) {
        close(w.fd);
        if (st) unlink(tmp);
    }
    return st;
}

static void unpublish(dsr1_batches *b, const char *id)
{
    if (!id[0]) return;
    char path[4400];
    dsr1__path(b, path, sizeof path, "files", id);
    unlink(path); /* its trash row stays until the next open, harmless */
}

void dsr1__finish_batch(dsr1_batches *b, dsr1__bt *bt)
{
    pthread_mutex_lock(&b->mu);
    int ending = bt->ending;
    const dsr1_batch_codec *cp = dsr1__codec(b, bt->format);
    dsr1_batch_codec c;
    if (cp) c = *cp;
    bool have = cp != NULL;
    char *msg = bt->fail_msg ? strdup(bt->fail_msg) : NULL;
    dsr1_batch_state state = bt->state;
    pthread_mutex_unlock(&b->mu);

    dsr1_status st = DSR1_OK;
    if ((ending == END_CANCEL || ending == END_EXPIRE) && have) {
        if ((st = fill(b, bt, &c, ending))) {
            pthread_mutex_lock(&b->mu);
            bool stopping = b->stopping;
            if (!stopping) dsr1__fail_batch(b, bt, dsr1_errmsg());
            pthread_mutex_unlock(&b->mu);
            free(msg);
            return; /* closing: ended on the next open; failed: ended next turn */
        }
    }
    dsr1_batch_state final = ending == END_CANCEL   ? DSR1_BATCH_CANCELLED
                             : ending == END_EXPIRE ? DSR1_BATCH_EXPIRED
                             : ending == END_FAIL   ? DSR1_BATCH_FAILED
                                                    : DSR1_BATCH_COMPLETED;
    int64_t now = dsr1__now_s();
    char out_id[DSR1_BATCH_ID_MAX] = "", err_id[DSR1_BATCH_ID_MAX] = "";
    int64_t out_bytes = 0, err_bytes = 0;
    if (final != DSR1_BATCH_FAILED && have && c.output_files) {
        if (final == DSR1_BATCH_COMPLETED && state != DSR1_BATCH_FINALIZING) {
            char sql[160];
            snprintf(sql, sizeof sql,
                     "UPDATE batches SET state = 2, finalizing_at = %lld WHERE n = %lld",
                     (long long)now, (long long)bt->n);
            pthread_mutex_lock(&b->wmu);
            st = dsr1__exec(b->db, sql);
            pthread_mutex_unlock(&b->wmu);
            pthread_mutex_lock(&b->mu);
            if (!st) bt->state = DSR1_BATCH_FINALIZING;
            pthread_mutex_unlock(&b->mu);
        }
        if (!st) st = write_output(b, bt, false, out_id, &out_bytes);
        if (!st) st = write_output(b, bt, true, err_id, &err_bytes);
        if (st) {
            free(msg);
            msg = strdup(dsr1_errmsg());
            final = DSR1_BATCH_FAILED;
            unpublish(b, out_id);
            unpublish(b, err_id);
            out_id[0] = err_id[0] = 0;
        }
    }
    static const char *at_col[] = {[DSR1_BATCH_COMPLETED] = "completed_at",
                                   [DSR1_BATCH_FAILED] = "failed_at",
                                   [DSR1_BATCH_EXPIRED] = "expired_at",
                                   [DSR1_BATCH_CANCELLED] = "cancelled_at"};
    char sql[400];
    snprintf(sql, sizeof sql,
             "UPDATE batches SET state = %d, %s = %lld, final_at = %lld, output_file_id = ?1, "
             "error_file_id = ?2, fail_message = ?3 WHERE n = %lld",
             (int) final, at_col[final], (long long)now, (long long)now, (long long)bt->n);
    char name[DSR1_BATCH_ID_MAX + 32];
    pthread_mutex_lock(&b->wmu);
    st = dsr1__begin(b);
    if (!st && out_id[0]) {
        snprintf(name, sizeof name, "%s_output.jsonl", bt->id);
        st = dsr1__file_row(b, out_id, name, "batch_output", out_bytes, now);
    }
    if (!st && err_id[0]) {
        snprintf(name, sizeof name, "%s_error.jsonl", bt->id);
        st = dsr1__file_row(b, err_id, name, "batch_error", err_bytes, now);
    }
    sqlite3_stmt *q = NULL;
    if (!st) st = dsr1__prep(b->db, sql, &q);
    if (!st) {
        sqlite3_bind_text(q, 1, out_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 2, err_id, -1, SQLITE_STATIC);
        if (msg)
            sqlite3_bind_text(q, 3, msg, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(q, 3);
        int rc = sqlite3_step(q);
        if (rc != SQLITE_DONE) st = dsr1__sql_error(b->db, rc, "ending a batch");
    }
    sqlite3_finalize(q);
    if (!st) st = dsr1__commit(b);
    if (st) {
        dsr1__rollback(b);
        pthread_mutex_unlock(&b->wmu);
        unpublish(b, out_id);
        unpublish(b, err_id);
        DSR1_WARN("batch %s: recording its end failed: %s (tried again)", bt->id, dsr1_errmsg());
        pthread_mutex_lock(&b->mu);
        dsr1__fail_batch(b, bt, dsr1_errmsg());
        bt->busy_until = dsr1__mono_ns() + 1000000000LL;
        pthread_mutex_unlock(&b->mu);
        free(msg);
        return;
    }
    dsr1__dmu_lock(b);
    pthread_mutex_unlock(&b->wmu);
    dsr1__deliver_end(b, bt->n);
    dsr1__dmu_unlock(b);
    DSR1_INFO("batch %s %s", bt->id, dsr1_batch_state_str(final));
    pthread_mutex_lock(&b->mu);
    dsr1__bt **pp = &b->active, *prev = NULL;
    while (*pp && *pp != bt) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (*pp) {
        *pp = bt->next;
        if (b->active_tail == bt) b->active_tail = prev;
    }
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    free(bt->fail_msg);
    free(bt->again);
    free(bt);
    free(msg);
}

void dsr1__purge(dsr1_batches *b)
{
    if (b->p.retention_s < 0) return;
    int64_t cut = dsr1__now_s() - b->p.retention_s;
    pthread_mutex_lock(&b->wmu);
    char sql[200];
    snprintf(sql, sizeof sql,
             "DELETE FROM batches WHERE state IN (3, 4, 5, 7) AND final_at > 0 AND final_at < "
             "%lld",
             (long long)cut);
    dsr1_status st = dsr1__begin(b);
    if (!st) st = dsr1__exec(b->db, sql);
    if (!st) st = dsr1__commit(b);
    if (st) {
        dsr1__rollback(b);
        DSR1_WARN("batch store: deleting old batches: %s", dsr1_errmsg());
    }
    st = dsr1__files_delete_ids(b,
                                "SELECT id FROM files WHERE created_at < ?1 OR (expires_at > 0 "
                                "AND expires_at < strftime('%s', 'now'))",
                                cut);
    if (st) DSR1_WARN("batch store: deleting old files: %s", dsr1_errmsg());
    pthread_mutex_unlock(&b->wmu);
}
