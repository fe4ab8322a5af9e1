/* The validator thread: reads the input file of each batch in `validating` line by line
 * (memory bounded by the longest line and one chunk), has its codec check each line, and
 * stores the items a chunk per transaction so that readers and the writer never wait long.
 * An invalid line (refused by the codec, or a custom_id seen before) becomes an error
 * result naming its line. A resumed batch is validated again from scratch. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "batch_internal.h"
#include "log.h"

#define CHUNK_BYTES   (16 << 20)
#define CUSTOM_ID_MAX 512

typedef struct {
    char *line; /* NULL when invalid */
    size_t len;
    int lineno;
    bool valid;
    char *msg;
    char custom_id[CUSTOM_ID_MAX];
} vline;

typedef struct {
    dsr1_batches *b;
    dsr1__bt *bt;
    dsr1_batch_codec c;
    vline v[DSR1__BATCH_CHUNK];
    int n;
    size_t bytes;
    int total, valid;
} vstate;

dsr1__res *dsr1__error_res(dsr1_batches *b, const dsr1_batch_codec *c, dsr1__bt *bt, int idx,
                           const char *custom_id, const char *code, const char *msg, int line)
{
    (void)b;
    dsr1__res *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    char rid[DSR1_BATCH_ID_MAX + 16];
    snprintf(rid, sizeof rid, "%s/%d", bt->id, idx);
    dsr1_batch_item_ref ref = {.key = 0,
                               .batch_id = bt->id,
                               .endpoint = bt->endpoint,
                               .index = idx,
                               .custom_id = custom_id ? custom_id : "",
                               .request_id = rid};
    r->bt = bt;
    r->idx = idx;
    r->error = true;
    r->custom_id = strdup(custom_id ? custom_id : "");
    if (c->error_result(c->ctx, &ref, code, msg, line, &r->bytes, &r->len) != DSR1_OK) {
        /* keep the reason even if the codec cannot format it */
        r->bytes = (uint8_t *)strdup(msg);
        r->len = r->bytes ? strlen(msg) : 0;
    }
    if (!r->custom_id) {
        dsr1__free_res(r);
        return NULL;
    }
    return r;
}

static void chunk_free(vstate *s)
{
    for (int i = 0; i < s->n; i++) {
        free(s->v[i].line);
        free(s->v[i].msg);
    }
    s->n = 0;
    s->bytes = 0;
}

/* Stores a chunk of lines, then commits the invalid ones' error results. */
static dsr1_status flush(vstate *s)
{
    dsr1_batches *b = s->b;
    if (s->n == 0) return DSR1_OK;
    int first = s->total;
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
                        "INSERT INTO items(batch_n, idx, custom_id, valid, done, req) VALUES "
                        "(?, ?, ?, ?, 0, ?)",
                        &ins);
    for (int i = 0; !st && i < s->n; i++) {
        vline *v = &s->v[i];
        if (v->valid && v->custom_id[0]) {
            sqlite3_reset(dup);
            sqlite3_bind_int64(dup, 1, s->bt->n);
            sqlite3_bind_text(dup, 2, v->custom_id, -1, SQLITE_STATIC);
            if (sqlite3_step(dup) == SQLITE_ROW) {
                v->valid = false;
                char m[CUSTOM_ID_MAX + 64];
                snprintf(m, sizeof m, "duplicate custom_id \"%s\"", v->custom_id);
                v->msg = strdup(m);
                if (!v->msg) st = dsr1_error(DSR1_ERR_NOMEM, "validating a batch");
            }
        }
        sqlite3_reset(ins);
        sqlite3_bind_int64(ins, 1, s->bt->n);
        sqlite3_bind_int(ins, 2, first + i);
        sqlite3_bind_text(ins, 3, v->custom_id, -1, SQLITE_STATIC);
        sqlite3_bind_int(ins, 4, v->valid);
        if (v->valid)
            sqlite3_bind_blob(ins, 5, v->line, (int)v->len, SQLITE_STATIC);
        else
            sqlite3_bind_null(ins, 5);
        int rc = sqlite3_step(ins);
        if (rc != SQLITE_DONE) st = dsr1__sql_error(b->db, rc, "storing a batch item");
        if (!st && !v->valid)
            st = dsr1__add_error(b, s->bt->n, v->lineno, "invalid_request",
                                 v->msg ? v->msg : "invalid");
    }
    sqlite3_finalize(dup);
    sqlite3_finalize(ins);
    if (!st) {
        char sql[128];
        snprintf(sql, sizeof sql, "UPDATE batches SET total = %d WHERE n = %lld", first + s->n,
                 (long long)s->bt->n);
        st = dsr1__exec(b->db, sql);
    }
    if (!st) st = dsr1__commit(b);
    if (st) dsr1__rollback(b);
    pthread_mutex_unlock(&b->wmu);
    if (st) {
        chunk_free(s);
        return st;
    }
    pthread_mutex_lock(&b->mu);
    s->bt->total = first + s->n;
    pthread_mutex_unlock(&b->mu);
    dsr1__res *list = NULL, **tail = &list;
    for (int i = 0; i < s->n; i++) {
        vline *v = &s->v[i];
        if (v->valid) {
            s->valid++;
            continue;
        }
        dsr1__res *r = dsr1__error_res(b, &s->c, s->bt, first + i, v->custom_id, "invalid_request",
                                       v->msg ? v->msg : "invalid", v->lineno);
        if (!r) {
            st = dsr1_error(DSR1_ERR_NOMEM, "validating a batch");
            break;
        }
        *tail = r;
        tail = &r->next;
    }
    s->total = first + s->n;
    chunk_free(s);
    if (list) dsr1__commit_results(b, list);
    return st;
}

static bool blank(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r' && p[i] != '\n') return false;
    return true;
}

/* Clears what an earlier, interrupted validation stored. */
static dsr1_status reset(dsr1_batches *b, dsr1__bt *bt)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "DELETE FROM results WHERE batch_n = %1$lld; DELETE FROM items WHERE batch_n = "
             "%1$lld; DELETE FROM errors WHERE batch_n = %1$lld; UPDATE batches SET total = 0, "
             "completed = 0, failed = 0, prompt_tokens = 0, completion_tokens = 0, "
             "cached_tokens = 0, reasoning_tokens = 0, next_seq = 0, n_errors = 0 WHERE n = %1$lld",
             (long long)bt->n);
    pthread_mutex_lock(&b->wmu);
    dsr1_status st = dsr1__begin(b);
    if (!st) st = dsr1__exec(b->db, sql);
    if (!st) st = dsr1__commit(b);
    if (st) dsr1__rollback(b);
    if (!st) bt->next_seq = 0;
    pthread_mutex_unlock(&b->wmu);
    pthread_mutex_lock(&b->mu);
    bt->total = bt->resulted = 0;
    pthread_mutex_unlock(&b->mu);
    return st;
}

static FILE *open_input(dsr1_batches *b, dsr1__bt *bt)
{
    sqlite3 *db;
    if (dsr1__reader(b, &db)) return NULL;
    char fid[DSR1_BATCH_ID_MAX] = "";
    sqlite3_stmt *q;
    if (!dsr1__prep(db, "SELECT input_file_id FROM batches WHERE n = ?", &q)) {
        sqlite3_bind_int64(q, 1, bt->n);
        if (sqlite3_step(q) == SQLITE_ROW)
            snprintf(fid, sizeof fid, "%s", (const char *)sqlite3_column_text(q, 0));
        sqlite3_finalize(q);
    }
    dsr1__reader_put(b, db);
    int fd;
    if (dsr1_files_open(b, fid, &fd, NULL)) {
        dsr1_error(DSR1_ERR_NOT_FOUND, "input file %s no longer exists", fid);
        return NULL;
    }
    FILE *f = fdopen(fd, "r");
    if (!f) {
        close(fd);
        dsr1_error(DSR1_ERR_IO, "reading input file %s: %s", fid, strerror(errno));
    }
    return f;
}

static void validate(dsr1_batches *b, dsr1__bt *bt, const dsr1_batch_codec *c)
{
    vstate *s = calloc(1, sizeof *s);
    char *fail = NULL;
    if (!s) {
        fail = strdup("out of memory validating the batch");
        goto out;
    }
    s->b = b;
    s->bt = bt;
    s->c = *c;
    if (reset(b, bt)) {
        fail = strdup(dsr1_errmsg());
        goto out;
    }
    FILE *f = open_input(b, bt);
    if (!f) {
        fail = strdup(dsr1_errmsg());
        goto out;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int lineno = 0;
    bool stop = false;
    while (!stop && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (blank(line, (size_t)len)) continue;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (s->total + s->n >= b->p.max_items) {
            char m[128];
            snprintf(m, sizeof m, "the input file has more than %d requests", b->p.max_items);
            fail = strdup(m);
            break;
        }
        vline *v = &s->v[s->n];
        memset(v, 0, sizeof *v);
        v->lineno = lineno;
        dsr1_status st = c->check(c->ctx, bt->endpoint, (const uint8_t *)line, (size_t)len,
                                  v->custom_id, sizeof v->custom_id);
        v->custom_id[sizeof v->custom_id - 1] = 0;
        if (st) {
            v->msg = strdup(dsr1_errmsg()[0] ? dsr1_errmsg() : "invalid request");
        } else {
            v->valid = true;
            v->line = malloc((size_t)len + 1);
            if (v->line) memcpy(v->line, line, (size_t)len + 1);
            v->len = (size_t)len;
        }
        if ((!v->valid && !v->msg) || (v->valid && !v->line)) {
            free(v->line);
            free(v->msg);
            fail = strdup("out of memory validating the batch");
            break;
        }
        s->n++;
        s->bytes += (size_t)len;
        if (s->n == DSR1__BATCH_CHUNK || s->bytes >= CHUNK_BYTES) {
            if (flush(s)) {
                fail = strdup(dsr1_errmsg());
                break;
            }
            pthread_mutex_lock(&b->mu);
            stop = b->stopping || bt->ending != END_NONE;
            pthread_mutex_unlock(&b->mu);
        }
    }
    if (!fail && ferror(f)) fail = strdup("error reading the input file");
    free(line);
    fclose(f);
    if (!fail && !stop && flush(s)) fail = strdup(dsr1_errmsg());
    pthread_mutex_lock(&b->mu);
    bool stopping = b->stopping;
    pthread_mutex_unlock(&b->mu);
    if (stopping && !fail) goto out_keep; /* validated again on the next open */
    if (!fail && !stop && s->valid == 0)
        fail = strdup(s->total == 0 ? "the input file has no requests"
                                    : "the input file has no valid request");
    if (!fail && !stop) {
        char sql[200];
        snprintf(sql, sizeof sql,
                 "UPDATE batches SET state = 1, in_progress_at = %lld WHERE n = %lld AND state = 0",
                 (long long)dsr1__now_s(), (long long)bt->n);
        pthread_mutex_lock(&b->wmu);
        if (dsr1__exec(b->db, sql)) fail = strdup(dsr1_errmsg());
        pthread_mutex_unlock(&b->wmu);
    }
out:
    pthread_mutex_lock(&b->mu);
    if (fail || !s) dsr1__fail_batch(b, bt, fail ? fail : "out of memory");
    if (bt->state == DSR1_BATCH_VALIDATING && !fail && bt->ending == END_NONE)
        bt->state = DSR1_BATCH_IN_PROGRESS;
    bt->validating = false;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
out_keep:
    free(fail);
    if (s) chunk_free(s);
    free(s);
}

void *dsr1__validator_main(void *arg)
{
    dsr1_batches *b = arg;
    pthread_mutex_lock(&b->mu);
    while (!b->stopping) {
        dsr1__bt *bt = b->active;
        while (bt && !(bt->validating && dsr1__codec(b, bt->format))) bt = bt->next;
        if (!bt) {
            pthread_cond_wait(&b->vcv, &b->mu);
            continue;
        }
        dsr1_batch_codec c = *dsr1__codec(b, bt->format);
        pthread_mutex_unlock(&b->mu);
        validate(b, bt, &c);
        pthread_mutex_lock(&b->mu);
    }
    pthread_mutex_unlock(&b->mu);
    return NULL;
}
