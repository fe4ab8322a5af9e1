/* The batch store tests' fake codec and helpers (see batch_fake.h). */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "batch_fake.h"

/* ---- the fake codec ---- */

int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void *fake_main(void *arg)
{
    fake *f = arg;
    pthread_mutex_lock(&f->mu);
    while (!f->stop) {
        int64_t t = now_us();
        int pick = -1;
        for (int i = 0; i < NSLOTS; i++)
            if (f->it[i].used && (f->it[i].aborted || f->down || (!f->hold && f->it[i].due <= t))) {
                pick = i;
                break;
            }
        if (pick < 0) {
            pthread_mutex_unlock(&f->mu);
            usleep(200);
            pthread_mutex_lock(&f->mu);
            continue;
        }
        fitem it = f->it[pick];
        f->it[pick].used = false;
        f->running--;
        f->b_running[it.bi]--;
        bool err = (int)(rand_r(&f->seed) % 100) < f->err_pct;
        const bool down = f->down && !it.aborted;
        pthread_mutex_unlock(&f->mu);
        size_t len = 0;
        char *bytes = malloc(f->big + 128);
        len = (size_t)sprintf(bytes, "%s %s",
                              down         ? "down"
                              : it.aborted ? "aborted"
                              : err        ? "err"
                                           : "ok",
                              it.cid);
        if (f->big) {
            memset(bytes + len, 'x', f->big);
            len += f->big;
        }
        dsr1_batch_result r = {.error = err || it.aborted || down,
                               .aborted = it.aborted,
                               .status = down ? DSR1_ERR_UNAVAILABLE : DSR1_OK,
                               .bytes = (const uint8_t *)bytes,
                               .len = len,
                               .prompt_tokens = 3,
                               .completion_tokens = 5};
        dsr1_batches_item_done(f->b, it.key, &r);
        free(bytes);
        pthread_mutex_lock(&f->mu);
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

static dsr1_status fake_check(void *ctx, const char *endpoint, const uint8_t *req, size_t len,
                              char *custom_id, size_t cap)
{
    (void)ctx;
    (void)endpoint;
    size_t n = 0;
    size_t off = len && req[0] == '!' ? 1 : 0;
    while (off + n < len && req[off + n] != ' ' && n + 1 < cap) n++;
    memcpy(custom_id, req + off, n);
    custom_id[n] = 0;
    if (off) return dsr1_error(DSR1_ERR_INVALID_ARG, "item %s is marked invalid", custom_id);
    if (n == 0) return dsr1_error(DSR1_ERR_INVALID_ARG, "no custom_id");
    return DSR1_OK;
}

static dsr1_status fake_start(void *ctx, const dsr1_batch_item_ref *ref)
{
    fake *f = ctx;
    pthread_mutex_lock(&f->mu);
    if ((int)(rand_r(&f->seed) % 100) < f->busy_pct) {
        pthread_mutex_unlock(&f->mu);
        return DSR1_ERR_BUSY;
    }
    if (f->down) {
        f->refused++;
        pthread_mutex_unlock(&f->mu);
        return dsr1_error(DSR1_ERR_UNAVAILABLE,
                          "the worker grid cannot serve until lost workers are replaced: stage 0 "
                          "has no live copy of 1 routed expert(s): 7");
    }
    int i = 0;
    while (i < NSLOTS && f->it[i].used) i++;
    assert_true(i < NSLOTS);
    fitem *it = &f->it[i];
    memset(it, 0, sizeof *it);
    it->used = true;
    it->key = ref->key;
    it->idx = ref->index;
    snprintf(it->rid, sizeof it->rid, "%s", ref->request_id);
    snprintf(it->cid, sizeof it->cid, "%s", ref->custom_id);
    int span = f->max_us - f->min_us;
    it->due = now_us() + f->min_us + (span > 0 ? (int)(rand_r(&f->seed) % (unsigned)span) : 0);
    if (ref->index < MAXN) f->starts[ref->index]++;
    int bi = fake_batch(f, ref->batch_id);
    if (bi < 0 && f->nbid < FAKE_BATCHES) {
        bi = f->nbid++;
        snprintf(f->bid[bi], sizeof f->bid[bi], "%s", ref->batch_id);
    }
    if (bi < 0) bi = FAKE_BATCHES - 1; /* more batches than told apart: counted with the last */
    it->bi = bi;
    if (f->nstarts < MAXN) f->order[f->nstarts] = (unsigned char)bi;
    if (++f->b_running[bi] > f->b_max_running[bi]) f->b_max_running[bi] = f->b_running[bi];
    f->nstarts++;
    if (strcmp(ref->batch_id, "batch_A") == 0) f->last_a = f->nstarts;
    if (strcmp(ref->batch_id, "batch_B") == 0 && !f->first_b) f->first_b = f->nstarts;
    f->running++;
    if (f->running > f->max_running) f->max_running = f->running;
    /* the item as stored comes back unchanged */
    assert_true(ref->len > strlen(ref->custom_id));
    assert_memory_equal(ref->req, ref->custom_id, strlen(ref->custom_id));
    pthread_mutex_unlock(&f->mu);
    return DSR1_OK;
}

int fake_batch(fake *f, const char *id)
{
    for (int i = 0; i < f->nbid; i++)
        if (strcmp(f->bid[i], id) == 0) return i;
    return -1;
}

static void fake_abort(void *ctx, const char *request_id)
{
    fake *f = ctx;
    pthread_mutex_lock(&f->mu);
    for (int i = 0; i < NSLOTS; i++)
        if (f->it[i].used && strcmp(f->it[i].rid, request_id) == 0) f->it[i].aborted = true;
    pthread_mutex_unlock(&f->mu);
}

static dsr1_status fake_error_result(void *ctx, const dsr1_batch_item_ref *ref, const char *code,
                                     const char *message, int line, uint8_t **out, size_t *len)
{
    (void)ctx;
    (void)message;
    char buf[256];
    int n = snprintf(buf, sizeof buf, "%s %s %d", code, ref->custom_id, line);
    *out = malloc((size_t)n);
    memcpy(*out, buf, (size_t)n);
    *len = (size_t)n;
    return DSR1_OK;
}

fake *fake_new(unsigned seed)
{
    fake *f = calloc(1, sizeof *f);
    pthread_mutex_init(&f->mu, NULL);
    f->seed = seed;
    f->min_us = 100;
    f->max_us = 3000;
    pthread_create(&f->th, NULL, fake_main, f);
    return f;
}

void fake_free(fake *f)
{
    pthread_mutex_lock(&f->mu);
    f->stop = true;
    pthread_mutex_unlock(&f->mu);
    pthread_join(f->th, NULL);
    free(f);
}

dsr1_batch_codec fake_codec(fake *f, bool output_files)
{
    return (dsr1_batch_codec){.format = "fake",
                              .ctx = f,
                              .output_files = output_files,
                              .check = fake_check,
                              .start = fake_start,
                              .abort = fake_abort,
                              .error_result = fake_error_result};
}

/* ---- helpers ---- */

char *tmpdir(void)
{
    char *d = strdup("/tmp/dsr1-batches-XXXXXX");
    assert_non_null(mkdtemp(d));
    return d;
}

void rm_rf(const char *path)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    assert_int_equal(system(cmd), 0);
}

dsr1_batches *open_store(const char *dir, fake *f, int window, int64_t retention)
{
    dsr1_batches_params p = {.state_dir = dir, .window = window, .retention_s = retention};
    dsr1_batches *b = NULL;
    dsr1_status st = dsr1_batches_open(&p, &b);
    if (st) fail_msg("open %s: %s", dir, dsr1_errmsg());
    if (f) {
        f->b = b;
        dsr1_batch_codec c = fake_codec(f, true);
        assert_int_equal(dsr1_batches_register(b, &c), 0);
    }
    assert_int_equal(dsr1_batches_start(b), 0);
    return b;
}

dsr1_batches *open_store_bw(const char *dir, fake *f, int window, int batch_window)
{
    dsr1_batches_params p = {.state_dir = dir, .window = window, .batch_window = batch_window};
    dsr1_batches *b = NULL;
    if (dsr1_batches_open(&p, &b)) fail_msg("open %s: %s", dir, dsr1_errmsg());
    f->b = b;
    dsr1_batch_codec c = fake_codec(f, false);
    assert_int_equal(dsr1_batches_register(b, &c), 0);
    assert_int_equal(dsr1_batches_start(b), 0);
    return b;
}

dsr1_batch_info wait_final(dsr1_batches *b, const char *id, double timeout_s)
{
    dsr1_batch_info info;
    int64_t end = now_us() + (int64_t)(timeout_s * 1e6);
    for (;;) {
        assert_int_equal(dsr1_batches_get(b, id, &info), 0);
        if (dsr1_batch_state_final(info.state)) return info;
        if (now_us() > end) fail_msg("batch %s still %s", id, dsr1_batch_state_str(info.state));
        dsr1_batch_info_clear(&info);
        usleep(5000);
    }
}

static void create_writer_c(dsr1_batches *b, const dsr1_batch_create *cr, int n,
                            dsr1_batch_info *out);

/* Creates a batch of n items "c<i> payload" through a writer. */
void create_writer(dsr1_batches *b, const char *id, int n, const char *window, dsr1_batch_info *out)
{
    dsr1_batch_create c = {.id = id,
                           .format = "fake",
                           .endpoint = "",
                           .completion_window = window,
                           .metadata_json = "{\"k\":\"v\"}",
                           .request_hash = 42};
    create_writer_c(b, &c, n, out);
}

void create_writer_p(dsr1_batches *b, const char *id, int n, int priority, int max_running,
                     dsr1_batch_info *out)
{
    dsr1_batch_create c = {.id = id,
                           .format = "fake",
                           .endpoint = "",
                           .request_hash = 42,
                           .priority = priority,
                           .max_running = max_running};
    create_writer_c(b, &c, n, out);
}

/* The schema version 1 as it shipped (coordinator/batch/store.c's SCHEMA_V1): frozen. */
static const char *V1_DDL =
    "CREATE TABLE files(n INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, filename TEXT NOT "
    "NULL, purpose TEXT NOT NULL, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, "
    "expires_at INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE trash(id TEXT PRIMARY KEY);"
    "CREATE TABLE batches(n INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, visible INTEGER NOT "
    "NULL, format TEXT NOT NULL, endpoint TEXT NOT NULL, input_file_id TEXT NOT NULL DEFAULT "
    "'', output_file_id TEXT NOT NULL DEFAULT '', error_file_id TEXT NOT NULL DEFAULT '', "
    "state INTEGER NOT NULL, ending INTEGER NOT NULL DEFAULT 0, completion_window TEXT NOT "
    "NULL DEFAULT '', created_at INTEGER NOT NULL, in_progress_at INTEGER NOT NULL DEFAULT 0, "
    "finalizing_at INTEGER NOT NULL DEFAULT 0, completed_at INTEGER NOT NULL DEFAULT 0, "
    "failed_at INTEGER NOT NULL DEFAULT 0, expired_at INTEGER NOT NULL DEFAULT 0, "
    "cancelling_at INTEGER NOT NULL DEFAULT 0, cancelled_at INTEGER NOT NULL DEFAULT 0, "
    "expires_at INTEGER NOT NULL DEFAULT 0, final_at INTEGER NOT NULL DEFAULT 0, total "
    "INTEGER NOT NULL DEFAULT 0, completed INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL "
    "DEFAULT 0, prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL "
    "DEFAULT 0, cached_tokens INTEGER NOT NULL DEFAULT 0, next_seq INTEGER NOT NULL DEFAULT 0, "
    "metadata_json TEXT, request_hash INTEGER NOT NULL DEFAULT 0, fail_message TEXT, n_errors "
    "INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE items(batch_n INTEGER NOT NULL REFERENCES batches(n) ON DELETE CASCADE, idx "
    "INTEGER NOT NULL, custom_id TEXT NOT NULL, valid INTEGER NOT NULL, done INTEGER NOT NULL "
    "DEFAULT 0, req BLOB, PRIMARY KEY(batch_n, idx));"
    "CREATE UNIQUE INDEX items_cid ON items(batch_n, custom_id) WHERE custom_id <> '' AND "
    "valid = 1;"
    "CREATE TABLE results(batch_n INTEGER NOT NULL REFERENCES batches(n) ON DELETE CASCADE, "
    "seq INTEGER NOT NULL, idx INTEGER NOT NULL, error INTEGER NOT NULL, bytes BLOB, PRIMARY "
    "KEY(batch_n, seq));"
    "CREATE UNIQUE INDEX results_idx ON results(batch_n, idx);"
    "CREATE TABLE errors(batch_n INTEGER NOT NULL REFERENCES batches(n) ON DELETE CASCADE, "
    "line INTEGER NOT NULL, code TEXT NOT NULL, message TEXT NOT NULL);"
    "CREATE INDEX errors_b ON errors(batch_n);";

void make_v1_store(const char *dir, const char *id, int n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/dsr1.db", dir);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char *err = NULL;
    if (sqlite3_exec(db, V1_DDL, NULL, NULL, &err) != SQLITE_OK) fail_msg("v1 DDL: %s", err);
    char sql[512];
    snprintf(sql, sizeof sql,
             "PRAGMA application_id=%d; PRAGMA user_version=1; PRAGMA journal_mode=WAL; "
             "INSERT INTO batches(id, visible, format, endpoint, state, created_at, "
             "in_progress_at, total, metadata_json, request_hash) VALUES ('%s', 1, 'fake', '', "
             "1, 1700000000, 1700000000, %d, '{\"k\":\"v\"}', 42)",
             0x44535231, id, n);
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) fail_msg("v1 batch: %s", err);
    sqlite3_stmt *q;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "INSERT INTO items(batch_n, idx, custom_id, valid, req) "
                                        "VALUES (1, ?, ?, 1, ?)",
                                        -1, &q, NULL),
                     SQLITE_OK);
    for (int i = 0; i < n; i++) {
        char cid[32], req[64];
        snprintf(cid, sizeof cid, "c%d", i);
        int len = snprintf(req, sizeof req, "c%d payload", i);
        sqlite3_reset(q);
        sqlite3_bind_int(q, 1, i);
        sqlite3_bind_text(q, 2, cid, -1, SQLITE_TRANSIENT);
        sqlite3_bind_blob(q, 3, req, len, SQLITE_TRANSIENT);
        assert_int_equal(sqlite3_step(q), SQLITE_DONE);
    }
    sqlite3_finalize(q);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

static void create_writer_c(dsr1_batches *b, const dsr1_batch_create *cr, int n,
                            dsr1_batch_info *out)
{
    dsr1_batch_create c = *cr;
    dsr1_batch_writer *w;
    assert_int_equal(dsr1_batch_writer_begin(b, &c, &w), 0);
    char item[64];
    for (int i = 0; i < n; i++) {
        int len = snprintf(item, sizeof item, "c%d payload", i);
        assert_int_equal(dsr1_batch_writer_add(w, (const uint8_t *)item, (size_t)len), 0);
    }
    bool created;
    assert_int_equal(dsr1_batch_writer_commit(w, out, &created), 0);
    assert_true(created);
}

bool collect_fn(void *ctx, const dsr1_batch_result_row *row)
{
    collect *c = ctx;
    pthread_mutex_lock(&c->mu);
    if (!row) {
        c->ends++;
    } else {
        if (c->ends) c->after_end++;
        if (row->seq != c->next_seq) c->bad_seq++;
        c->next_seq = row->seq + 1;
        if (row->index >= 0 && row->index < MAXN) c->count[row->index]++;
        char want[80];
        snprintf(want, sizeof want, "c%d", row->index);
        if (strcmp(row->custom_id, want) != 0) c->bad_seq++;
        if (row->error) c->errors++;
        c->n++;
    }
    pthread_mutex_unlock(&c->mu);
    return true;
}

collect *collect_new(int64_t from)
{
    collect *c = calloc(1, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    c->next_seq = from;
    return c;
}

void read_file(dsr1_batches *b, const char *id, char **out, int64_t *len)
{
    int fd;
    int64_t n;
    assert_int_equal(dsr1_files_open(b, id, &fd, &n), 0);
    char *p = malloc((size_t)n + 1);
    assert_int_equal(read(fd, p, (size_t)n), n);
    p[n] = 0;
    close(fd);
    *out = p;
    *len = n;
}

/* Every custom_id c0..c<n-1> exactly once across the output and error files, ok lines in
 * the output file, the rest in the error file. */
void check_output_files(dsr1_batches *b, const dsr1_batch_info *info, int n)
{
    int *seen = calloc((size_t)n, sizeof *seen);
    const char *ids[2] = {info->output_file_id, info->error_file_id};
    for (int k = 0; k < 2; k++) {
        if (!ids[k][0]) continue;
        dsr1_file_info fi;
        assert_int_equal(dsr1_files_get(b, ids[k], &fi), 0);
        assert_string_equal(fi.purpose, k ? "batch_error" : "batch_output");
        char *p;
        int64_t len;
        read_file(b, ids[k], &p, &len);
        assert_int_equal(fi.bytes, len);
        int lines = 0;
        for (char *s = p, *e; *s; s = e + 1) {
            e = strchr(s, '\n');
            assert_non_null(e);
            *e = 0;
            char word[32];
            int idx;
            assert_int_equal(sscanf(s, "%31s c%d", word, &idx), 2);
            assert_true(idx >= 0 && idx < n);
            seen[idx]++;
            if (k == 0)
                assert_string_equal(word, "ok");
            else
                assert_string_not_equal(word, "ok");
            lines++;
        }
        assert_int_equal(lines, k ? info->failed : info->completed);
        free(p);
    }
    if (!info->output_file_id[0]) assert_int_equal(info->completed, 0);
    if (!info->error_file_id[0]) assert_int_equal(info->failed, 0);
    for (int i = 0; i < n; i++) assert_int_equal(seen[i], 1);
    free(seen);
}
