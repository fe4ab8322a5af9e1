/* Batches: creation (over an uploaded file, checked in the background by the validator
 * thread, or from a writer given items one at a time), get, list and cancel, and the
 * batch's info as the API shows it (errors_json built from its recorded errors). */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "batch_internal.h"
#include "log.h"

#define BATCH_COLS                                                                                 \
    "n, id, format, endpoint, input_file_id, output_file_id, error_file_id, state, "               \
    "completion_window, created_at, in_progress_at, finalizing_at, completed_at, failed_at, "      \
    "expired_at, cancelling_at, cancelled_at, expires_at, total, completed, failed, "              \
    "prompt_tokens, completion_tokens, cached_tokens, metadata_json, fail_message, priority, "     \
    "max_running, reasoning_tokens"

#define WRITER_CHUNK_BYTES (16 << 20)
#define CUSTOM_ID_MAX      512

dsr1_status dsr1__parse_window(const char *s, int64_t *secs)
{
    *secs = 0;
    if (!s || !s[0]) return DSR1_OK;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    int64_t mul = 0;
    if (end != s && end[0] && !end[1]) {
        switch (end[0]) {
        case 's':
            mul = 1;
            break;
        case 'm':
            mul = 60;
            break;
        case 'h':
            mul = 3600;
            break;
        case 'd':
            mul = 86400;
            break;
        }
    }
    if (!isdigit((unsigned char)s[0]) || errno || mul == 0 || v <= 0 ||
        v > 100LL * 365 * 86400 / mul)
        return dsr1_error(DSR1_ERR_INVALID_ARG,
                          "completion_window \"%s\": expected a number and one of s, m, h, d "
                          "(e.g. \"24h\")",
                          s);
    *secs = v * mul;
    return DSR1_OK;
}

static dsr1_status check_metadata(const char *text)
{
    if (!text || !text[0]) return DSR1_OK;
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    if (!j) return dsr1_error(DSR1_ERR_INVALID_ARG, "metadata: invalid JSON: %s", je.text);
    dsr1_status st = DSR1_OK;
    if (!json_is_object(j))
        st = dsr1_error(DSR1_ERR_INVALID_ARG, "metadata must be a JSON object");
    else if (json_object_size(j) > 16)
        st = dsr1_error(DSR1_ERR_INVALID_ARG, "metadata has more than 16 keys");
    else {
        const char *k;
        json_t *v;
        json_object_foreach(j, k, v)
        {
            if (strlen(k) > 64) {
                st =
                    dsr1_error(DSR1_ERR_INVALID_ARG, "metadata key \"%.64s...\" longer than 64", k);
                break;
            }
            if (!json_is_string(v) || strlen(json_string_value(v)) > 512) {
                st = dsr1_error(DSR1_ERR_INVALID_ARG,
                                "metadata[\"%s\"] must be a string of at most 512 characters", k);
                break;
            }
        }
    }
    json_decref(j);
    return st;
}

dsr1_status dsr1__add_error(dsr1_batches *b, int64_t n, int line, const char *code, const char *msg)
{
    sqlite3_stmt *q;
    dsr1_status st = dsr1__prep(b->db,
                                "INSERT INTO errors(batch_n, line, code, message) SELECT ?1, "
                                "?2, ?3, ?4 WHERE (SELECT n_errors FROM batches WHERE n = ?1) < "
                                "?5",
                                &q);
    if (st) return st;
    sqlite3_bind_int64(q, 1, n);
    sqlite3_bind_int(q, 2, line);
    sqlite3_bind_text(q, 3, code, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 4, msg, -1, SQLITE_STATIC);
    sqlite3_bind_int(q, 5, DSR1__BATCH_MAX_ERRORS);
    int rc = sqlite3_step(q);
    sqlite3_finalize(q);
    if (rc != SQLITE_DONE) return dsr1__sql_error(b->db, rc, "recording a batch error");
    char sql[128];
    snprintf(sql, sizeof sql, "UPDATE batches SET n_errors = n_errors + 1 WHERE n = %lld",
             (long long)n);
    return dsr1__exec(b->db, sql);
}

static char *errors_json(sqlite3 *db, int64_t n, const char *fail_message)
{
    json_t *arr = json_array();
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(db,
                           "SELECT line, code, message FROM errors WHERE batch_n = ? ORDER BY "
                           "rowid",
                           -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(q, 1, n);
        while (sqlite3_step(q) == SQLITE_ROW) {
            json_t *e = json_object();
            json_object_set_new(e, "code", json_string((const char *)sqlite3_column_text(q, 1)));
            json_object_set_new(e, "message", json_string((const char *)sqlite3_column_text(q, 2)));
            int line = sqlite3_column_int(q, 0);
            json_object_set_new(e, "line", line > 0 ? json_integer(line) : json_null());
            json_array_append_new(arr, e);
        }
        sqlite3_finalize(q);
    }
    if (fail_message && json_array_size(arr) == 0) {
        json_t *e = json_object();
        json_object_set_new(e, "code", json_string("server_error"));
        json_object_set_new(e, "message", json_string(fail_message));
        json_object_set_new(e, "line", json_null());
        json_array_append_new(arr, e);
    }
    char *s = json_array_size(arr) ? json_dumps(arr, JSON_COMPACT) : NULL;
    json_decref(arr);
    return s;
}

static void col_str(sqlite3_stmt *q, int i, char *out, size_t cap)
{
    const char *s = (const char *)sqlite3_column_text(q, i);
    snprintf(out, cap, "%s", s ? s : "");
}

dsr1_status dsr1__batch_info_row(dsr1_batches *b, sqlite3 *db, sqlite3_stmt *q,
                                 dsr1_batch_info *out)
{
    memset(out, 0, sizeof *out);
    int64_t n = sqlite3_column_int64(q, 0);
    col_str(q, 1, out->id, sizeof out->id);
    col_str(q, 2, out->format, sizeof out->format);
    col_str(q, 3, out->endpoint, sizeof out->endpoint);
    col_str(q, 4, out->input_file_id, sizeof out->input_file_id);
    col_str(q, 5, out->output_file_id, sizeof out->output_file_id);
    col_str(q, 6, out->error_file_id, sizeof out->error_file_id);
    out->state = (dsr1_batch_state)sqlite3_column_int(q, 7);
    col_str(q, 8, out->completion_window, sizeof out->completion_window);
    int64_t *t[] = {&out->created_at,    &out->in_progress_at, &out->finalizing_at,
                    &out->completed_at,  &out->failed_at,      &out->expired_at,
                    &out->cancelling_at, &out->cancelled_at,   &out->expires_at};
    for (int i = 0; i < 9; i++) *t[i] = sqlite3_column_int64(q, 9 + i);
    out->total = sqlite3_column_int(q, 18);
    out->completed = sqlite3_column_int(q, 19);
    out->failed = sqlite3_column_int(q, 20);
    out->prompt_tokens = sqlite3_column_int64(q, 21);
    out->completion_tokens = sqlite3_column_int64(q, 22);
    out->cached_tokens = sqlite3_column_int64(q, 23);
    if (sqlite3_column_text(q, 24))
        out->metadata_json = strdup((const char *)sqlite3_column_text(q, 24));
    out->errors_json = errors_json(db, n, (const char *)sqlite3_column_text(q, 25));
    out->priority = sqlite3_column_int(q, 26);
    out->max_running = sqlite3_column_int(q, 27);
    out->reasoning_tokens = sqlite3_column_int64(q, 28);
    pthread_mutex_lock(&b->mu);
    for (dsr1__bt *bt = b->active; bt; bt = bt->next)
        if (bt->n == n) out->running = bt->running;
    pthread_mutex_unlock(&b->mu);
    return DSR1_OK;
}

void dsr1_batch_info_clear(dsr1_batch_info *i)
{
    if (!i) return;
    free(i->metadata_json);
    free(i->errors_json);
    i->metadata_json = i->errors_json = NULL;
}

dsr1_status dsr1_batches_get(dsr1_batches *b, const char *id, dsr1_batch_info *out)
{
    sqlite3 *db;
    dsr1_status st = dsr1__reader(b, &db);
    if (st) return st;
    sqlite3_stmt *q;
    if (!(st = dsr1__prep(db, "SELECT " BATCH_COLS " FROM batches WHERE id = ? AND visible = 1",
                          &q))) {
        sqlite3_bind_text(q, 1, id ? id : "", -1, SQLITE_STATIC);
        int rc = sqlite3_step(q);
        if (rc == SQLITE_ROW)
            st = dsr1__batch_info_row(b, db, q, out);
        else if (rc == SQLITE_DONE)
            st = dsr1_error(DSR1_ERR_NOT_FOUND, "no batch %s", id ? id : "");
        else
            st = dsr1__sql_error(db, rc, "reading a batch");
        sqlite3_finalize(q);
    }
    dsr1__reader_put(b, db);
    return st;
}

static void batch_row(dsr1_batches *b, sqlite3 *db, sqlite3_stmt *q, void *ctx, int i)
{
    dsr1__batch_info_row(b, db, q, (dsr1_batch_info *)ctx + i);
}

static void batch_clear(void *ctx, int i)
{
    dsr1_batch_info_clear((dsr1_batch_info *)ctx + i);
}

dsr1_status dsr1_batches_list(dsr1_batches *b, const char *format, const char *after, int limit,
                              dsr1_batch_info *out, int *n, bool *has_more)
{
    const dsr1__page_rows rows = {batch_row, batch_clear, out};
    return dsr1__list_page(b,
                           "SELECT " BATCH_COLS " FROM batches WHERE visible = 1 AND (?1 IS NULL "
                           "OR format = ?1) AND (?2 IS NULL OR n < (SELECT n FROM batches WHERE "
                           "id = ?2)) ORDER BY n DESC LIMIT ?3",
                           format, after, limit, &rows, "listing batches", n, has_more);
}

/* Under wmu. Looks up a client's id: 0 and *n_out = -1 when free; 0 and *n_out >= 0 when the
 * same request (hash) created it; DSR1_ERR_EXISTS otherwise. */
static dsr1_status find_existing(dsr1_batches *b, const char *id, uint64_t hash, int64_t *n_out)
{
    *n_out = -1;
    sqlite3_stmt *q;
    dsr1_status st =
        dsr1__prep(b->db, "SELECT n, request_hash, visible FROM batches WHERE id = ?", &q);
    if (st) return st;
    sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    if (sqlite3_step(q) == SQLITE_ROW) {
        if ((uint64_t)sqlite3_column_int64(q, 1) == hash && sqlite3_column_int(q, 2))
            *n_out = sqlite3_column_int64(q, 0);
        else
            st = dsr1_error(DSR1_ERR_EXISTS, "batch %s exists already (another request)", id);
    }
    sqlite3_finalize(q);
    return st;
}

/* Under wmu, in a transaction: the batch's row. */
static dsr1_status insert_batch(dsr1_batches *b, const dsr1_batch_create *c, const char *id,
                                const char *input_file_id, bool visible, int64_t now,
                                int64_t expires_at, int64_t *n)
{
    sqlite3_stmt *q;
    dsr1_status st = dsr1__prep(
        b->db,
        "INSERT INTO batches(id, visible, format, endpoint, input_file_id, state, "
        "completion_window, created_at, expires_at, metadata_json, request_hash, priority, "
        "max_running) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?)",
        &q);
    if (st) return st;
    sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int(q, 2, visible);
    sqlite3_bind_text(q, 3, c->format, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 4, c->endpoint ? c->endpoint : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 5, input_file_id ? input_file_id : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 6, c->completion_window ? c->completion_window : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 7, now);
    sqlite3_bind_int64(q, 8, expires_at);
    if (c->metadata_json && c->metadata_json[0])
        sqlite3_bind_text(q, 9, c->metadata_json, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 10, (int64_t)c->request_hash);
    sqlite3_bind_int(q, 11, c->priority);
    sqlite3_bind_int(q, 12, c->max_running);
    int rc = sqlite3_step(q);
    sqlite3_finalize(q);
    if (rc != SQLITE_DONE) return dsr1__sql_error(b->db, rc, "creating a batch");
    *n = sqlite3_last_insert_rowid(b->db);
    return DSR1_OK;
}

static dsr1_status check_create(dsr1_batches *b, const dsr1_batch_create *c, char *id,
                                int64_t *window_s)
{
    if (!c || !c->format) return dsr1_error(DSR1_ERR_INVALID_ARG, "batch: no format");
    pthread_mutex_lock(&b->mu);
    bool have = dsr1__codec(b, c->format) != NULL;
    bool stopping = b->stopping;
    pthread_mutex_unlock(&b->mu);
    if (stopping) return dsr1_error(DSR1_ERR_UNAVAILABLE, "the batch store is closing");
    if (!have) return dsr1_error(DSR1_ERR_INVALID_ARG, "batch format %s: no codec", c->format);
    if (c->endpoint && strlen(c->endpoint) >= 64)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "batch endpoint too long");
    if (c->max_running < 0)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "batch max_running %d: negative", c->max_running);
    if (c->completion_window && strlen(c->completion_window) >= 16)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "completion_window too long");
    dsr1_status st = dsr1__parse_window(c->completion_window, window_s);
    if (!st) st = check_metadata(c->metadata_json);
    if (st) return st;
    if (c->id && c->id[0]) {
        if (strlen(c->id) >= DSR1_BATCH_ID_MAX)
            return dsr1_error(DSR1_ERR_INVALID_ARG, "batch id longer than %d bytes",
                              DSR1_BATCH_ID_MAX - 1);
        snprintf(id, DSR1_BATCH_ID_MAX, "%s", c->id);
    } else {
        char hex[33];
        dsr1__random_hex(hex, 32);
        snprintf(id, DSR1_BATCH_ID_MAX, "batch_%s", hex);
    }
    return DSR1_OK;
}

static dsr1__bt *new_bt(dsr1_batches *b, int64_t n, const char *id, const dsr1_batch_create *c,
                        dsr1_batch_state state, int64_t expires_at)
{
    dsr1__bt *bt = calloc(1, sizeof *bt);
    if (!bt) return NULL;
    bt->n = n;
    bt->priority = c->priority;
    bt->window = dsr1__bt_window(b, c->max_running);
    snprintf(bt->id, sizeof bt->id, "%s", id);
    snprintf(bt->format, sizeof bt->format, "%s", c->format);
    snprintf(bt->endpoint, sizeof bt->endpoint, "%s", c->endpoint ? c->endpoint : "");
    bt->state = state;
    bt->expires_at = expires_at;
    bt->cursor = -1;
    bt->retry_idx = -1;
    return bt;
}

static void add_active(dsr1_batches *b, dsr1__bt *bt) /* under mu */
{
    dsr1__active_insert(b, bt);
    pthread_cond_broadcast(&b->cv);
    pthread_cond_broadcast(&b->vcv);
}

dsr1_status dsr1_batches_create_from_file(dsr1_batches *b, const dsr1_batch_create *c,
                                          const char *input_file_id, dsr1_batch_info *out,
                                          bool *created)
{
    char id[DSR1_BATCH_ID_MAX];
    int64_t window_s;
    dsr1_status st = check_create(b, c, id, &window_s);
    if (st) return st;
    dsr1_file_info fi;
    if ((st = dsr1_files_get(b, input_file_id, &fi))) return st;
    if (strcmp(fi.purpose, "batch") != 0)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "file %s has purpose %s, not batch", fi.id,
                          fi.purpose);
    int64_t now = dsr1__now_s(), n = -1, existing = -1;
    int64_t expires_at = window_s ? now + window_s : 0;
    pthread_mutex_lock(&b->wmu);
    if (c->id && c->id[0]) st = find_existing(b, id, c->request_hash, &existing);
    if (!st && existing < 0) {
        if (!(st = dsr1__begin(b)) &&
            !(st = insert_batch(b, c, id, input_file_id, true, now, expires_at, &n)))
            st = dsr1__commit(b);
        if (st) dsr1__rollback(b);
    }
    dsr1__bt *bt = NULL;
    if (!st && existing < 0) {
        bt = new_bt(b, n, id, c, DSR1_BATCH_VALIDATING, expires_at);
        if (!bt) st = dsr1_error(DSR1_ERR_NOMEM, "batch");
        /* without its memory it resumes on the next open */
    }
    pthread_mutex_unlock(&b->wmu);
    if (st) return st;
    if (bt) {
        bt->validating = true;
        pthread_mutex_lock(&b->mu);
        add_active(b, bt);
        pthread_mutex_unlock(&b->mu);
    }
    if (created) *created = existing < 0;
    return dsr1_batches_get(b, id, out);
}

/* ---- the writer ---- */

typedef struct {
    uint8_t *req;
    size_t len;
    char custom_id[CUSTOM_ID_MAX];
} witem;

struct dsr1_batch_writer {
    dsr1_batches *b;
    dsr1_batch_create c;
    char id[DSR1_BATCH_ID_MAX];
    char *endpoint, *window, *metadata;
    int64_t n, existing, expires_at, now;
    int total;
    bool failed;
    witem *buf;
    int nbuf;
    size_t buf_bytes;
};

static void writer_free(dsr1_batch_writer *w)
{
    for (int i = 0; i < w->nbuf; i++) free(w->buf[i].req);
    free(w->buf);
    free(w->endpoint);
    free(w->window);
    free(w->metadata);
    free(w);
}

dsr1_status dsr1_batch_writer_begin(dsr1_batches *b, const dsr1_batch_create *c,
                                    dsr1_batch_writer **out)
{
    dsr1_batch_writer *w = calloc(1, sizeof *w);
    if (!w) return dsr1_error(DSR1_ERR_NOMEM, "batch writer");
    w->b = b;
    int64_t window_s;
    dsr1_status st = check_create(b, c, w->id, &window_s);
    if (st) {
        free(w);
        return st;
    }
    w->c = *c;
    w->c.id = w->id;
    w->c.endpoint = w->endpoint = strdup(c->endpoint ? c->endpoint : "");
    w->c.completion_window = w->window = strdup(c->completion_window ? c->completion_window : "");
    w->c.metadata_json = w->metadata = c->metadata_json ? strdup(c->metadata_json) : NULL;
    w->buf = calloc(DSR1__BATCH_CHUNK, sizeof *w->buf);
    w->now = dsr1__now_s();
    w->expires_at = window_s ? w->now + window_s : 0;
    w->existing = -1;
    if (!w->endpoint || !w->window || !w->buf || (c->metadata_json && !w->metadata)) {
        writer_free(w);
        return dsr1_error(DSR1_ERR_NOMEM, "batch writer");
    }
    pthread_mutex_lock(&b->wmu);
    if (c->id && c->id[0]) st = find_existing(b, w->id, c->request_hash, &w->existing);
    if (!st && w->existing < 0) {
        if (!(st = dsr1__begin(b)) &&
            !(st = insert_batch(b, &w->c, w->id, "", false, w->now, w->expires_at, &w->n)))
            st = dsr1__commit(b);
        if (st) dsr1__rollback(b);
    }
    pthread_mutex_unlock(&b->wmu);
    if (st) {
        writer_free(w);
        return st;
    }
    *out = w;
    return DSR1_OK;
}

static dsr1_status writer_flush(dsr1_batch_writer *w)
{
    dsr1_batches *b = w->b;
    if (w->nbuf == 0) return DSR1_OK;
    pthread_mutex_lock(&b->wmu);
    sqlite3_stmt *dup = NULL, *ins = NULL;
    dsr1_status st = dsr1__begin(b);
    if (!st)
        st = dsr1__prep(b->db,
                        "SELECT 1 FROM items WHERE batch_n = ? AND custom_id = ? AND custom_id <> "
                        "'' AND valid = 1",
                        &dup);
    if (!st)
        st = dsr1__prep(b->db,
                        "INSERT INTO items(batch_n, idx, custom_id, valid, req) VALUES (?, ?, ?, "
                        "1, ?)",
                        &ins);
    int first = w->total - w->nbuf;
    for (int i = 0; !st && i < w->nbuf; i++) {
        witem *it = &w->buf[i];
        if (it->custom_id[0]) {
            sqlite3_reset(dup);
            sqlite3_bind_int64(dup, 1, w->n);
            sqlite3_bind_text(dup, 2, it->custom_id, -1, SQLITE_STATIC);
            if (sqlite3_step(dup) == SQLITE_ROW) {
                st = dsr1_error(DSR1_ERR_INVALID_ARG, "item %d: duplicate custom_id %s", first + i,
                                it->custom_id);
                break;
            }
        }
        sqlite3_reset(ins);
        sqlite3_bind_int64(ins, 1, w->n);
        sqlite3_bind_int(ins, 2, first + i);
        sqlite3_bind_text(ins, 3, it->custom_id, -1, SQLITE_STATIC);
        sqlite3_bind_blob(ins, 4, it->req, (int)it->len, SQLITE_STATIC);
        int rc = sqlite3_step(ins);
        if (rc != SQLITE_DONE) st = dsr1__sql_error(b->db, rc, "storing a batch item");
    }
    sqlite3_finalize(dup);
    sqlite3_finalize(ins);
    if (!st) st = dsr1__commit(b);
    if (st) dsr1__rollback(b);
    pthread_mutex_unlock(&b->wmu);
    for (int i = 0; i < w->nbuf; i++) free(w->buf[i].req);
    w->nbuf = 0;
    w->buf_bytes = 0;
    if (st) w->failed = true;
    return st;
}

dsr1_status dsr1_batch_writer_add(dsr1_batch_writer *w, const uint8_t *req, size_t len)
{
    if (w->failed) return dsr1_error(DSR1_ERR_INVALID_ARG, "batch writer failed already");
    if (w->total >= w->b->p.max_items) {
        w->failed = true;
        return dsr1_error(DSR1_ERR_RANGE, "a batch holds at most %d items", w->b->p.max_items);
    }
    int index = w->total;
    if (w->existing >= 0) { /* a resubmission: its items are known */
        w->total++;
        return DSR1_OK;
    }
    pthread_mutex_lock(&w->b->mu);
    dsr1_batch_codec c = *dsr1__codec(w->b, w->c.format);
    pthread_mutex_unlock(&w->b->mu);
    witem *it = &w->buf[w->nbuf];
    it->custom_id[0] = 0;
    dsr1_status st = c.check(c.ctx, w->c.endpoint, req, len, it->custom_id, sizeof it->custom_id);
    if (st) {
        w->failed = true;
        return dsr1_error_context(DSR1_ERR_INVALID_ARG, "item %d", index);
    }
    it->req = malloc(len ? len : 1);
    if (!it->req) {
        w->failed = true;
        return dsr1_error(DSR1_ERR_NOMEM, "batch item %d", index);
    }
    memcpy(it->req, req, len);
    it->len = len;
    w->nbuf++;
    w->total++;
    w->buf_bytes += len;
    if (w->nbuf == DSR1__BATCH_CHUNK || w->buf_bytes >= WRITER_CHUNK_BYTES) return writer_flush(w);
    return DSR1_OK;
}

dsr1_status dsr1_batch_writer_commit(dsr1_batch_writer *w, dsr1_batch_info *out, bool *created)
{
    dsr1_batches *b = w->b;
    if (created) *created = false;
    if (w->failed) {
        dsr1_batch_writer_abort(w);
        return dsr1_error(DSR1_ERR_INVALID_ARG, "batch writer failed already");
    }
    if (w->existing >= 0) {
        char id[DSR1_BATCH_ID_MAX];
        snprintf(id, sizeof id, "%s", w->id);
        writer_free(w);
        dsr1_status st = dsr1_batches_get(b, id, out);
        if (st) return st;
        return dsr1_error(DSR1_ERR_EXISTS, "batch %s was created before by the same request", id);
    }
    dsr1_status st = writer_flush(w);
    if (!st && w->total == 0) st = dsr1_error(DSR1_ERR_INVALID_ARG, "a batch needs an item");
    int64_t now = dsr1__now_s();
    dsr1__bt *bt = NULL;
    if (!st) {
        pthread_mutex_lock(&b->wmu);
        char sql[256];
        snprintf(sql, sizeof sql,
                 "UPDATE batches SET visible = 1, state = 1, in_progress_at = %lld, total = %d "
                 "WHERE n = %lld",
                 (long long)now, w->total, (long long)w->n);
        if (!(st = dsr1__begin(b)) && !(st = dsr1__exec(b->db, sql))) st = dsr1__commit(b);
        if (st) dsr1__rollback(b);
        pthread_mutex_unlock(&b->wmu);
    }
    if (!st) {
        bt = new_bt(b, w->n, w->id, &w->c, DSR1_BATCH_IN_PROGRESS, w->expires_at);
        if (bt) {
            bt->total = w->total;
            pthread_mutex_lock(&b->mu);
            add_active(b, bt);
            pthread_mutex_unlock(&b->mu);
        } /* else it resumes on the next open */
    }
    if (st) {
        dsr1_batch_writer_abort(w);
        return st;
    }
    char id[DSR1_BATCH_ID_MAX];
    snprintf(id, sizeof id, "%s", w->id);
    writer_free(w);
    if (created) *created = true;
    return dsr1_batches_get(b, id, out);
}

void dsr1_batch_writer_abort(dsr1_batch_writer *w)
{
    if (!w) return;
    if (w->existing < 0 && w->n > 0) {
        dsr1_batches *b = w->b;
        char sql[128];
        snprintf(sql, sizeof sql, "DELETE FROM batches WHERE n = %lld AND visible = 0",
                 (long long)w->n);
        pthread_mutex_lock(&b->wmu);
        if (dsr1__exec(b->db, sql))
            DSR1_WARN("batch store: dropping an unfinished batch: %s (done on the next open)",
                      dsr1_errmsg());
        pthread_mutex_unlock(&b->wmu);
    }
    writer_free(w);
}

/* ---- cancel ---- */

dsr1_status dsr1_batches_cancel(dsr1_batches *b, const char *id, dsr1_batch_info *out)
{
    /* wmu first: the runner cannot end (and free) the batch until it is released */
    pthread_mutex_lock(&b->wmu);
    pthread_mutex_lock(&b->mu);
    dsr1__bt *bt = dsr1__find_bt(b, id ? id : "");
    bool go = bt && bt->ending == END_NONE && !dsr1_batch_state_final(bt->state) &&
              bt->state != DSR1_BATCH_FINALIZING && !bt->finalize_needed;
    if (go) {
        bt->ending = END_CANCEL;
        bt->state = DSR1_BATCH_CANCELLING;
    }
    int64_t n = bt ? bt->n : 0;
    pthread_mutex_unlock(&b->mu);
    if (go) {
        char sql[200];
        snprintf(sql, sizeof sql,
                 "UPDATE batches SET state = 6, ending = 1, cancelling_at = %lld WHERE n = %lld",
                 (long long)dsr1__now_s(), (long long)n);
        dsr1_status st = dsr1__exec(b->db, sql);
        if (st) {
            pthread_mutex_lock(&b->mu);
            dsr1__fail_batch(b, bt, dsr1_errmsg());
            pthread_mutex_unlock(&b->mu);
        }
        dsr1__abort_batch(b, bt, ABORT_CANCEL);
        pthread_mutex_lock(&b->mu);
        pthread_cond_broadcast(&b->cv);
        pthread_mutex_unlock(&b->mu);
    }
    pthread_mutex_unlock(&b->wmu);
    return dsr1_batches_get(b, id, out);
}
