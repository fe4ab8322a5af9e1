/* The batch store itself: opening the state directory (lock, database, schema and its
 * migrations, the checks that refuse a foreign or corrupt database and unknown files),
 * loading the unfinished batches to resume, the connections (one for writes, a pool for
 * readers), codecs, start, close and stats. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "batch_internal.h"
#include "log.h"

int64_t dsr1__now_s(void)
{
    return (int64_t)time(NULL);
}

int64_t dsr1__mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

void dsr1__random_hex(char *out, int nhex)
{
    uint8_t r[64];
    int nb = (nhex + 1) / 2;
    if (getrandom(r, (size_t)nb, 0) != nb) {
        /* never expected; fall back to the clock so ids stay distinct */
        uint64_t x = (uint64_t)dsr1__mono_ns() ^ ((uint64_t)getpid() << 32);
        for (int i = 0; i < nb; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            r[i] = (uint8_t)(x >> 56);
        }
    }
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < nhex; i++) out[i] = hex[(r[i / 2] >> ((i & 1) ? 0 : 4)) & 15];
    out[nhex] = 0;
}

dsr1_status dsr1__sql_error(sqlite3 *db, int rc, const char *what)
{
    int e = rc & 0xff;
    const char *m = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    if (e == SQLITE_FULL) return dsr1_error(DSR1_ERR_IO, "%s: database or disk is full", what);
    if (e == SQLITE_NOMEM) return dsr1_error(DSR1_ERR_NOMEM, "%s: out of memory", what);
    if (e == SQLITE_CORRUPT || e == SQLITE_NOTADB)
        return dsr1_error(DSR1_ERR_FORMAT, "%s: %s", what, m);
    return dsr1_error(DSR1_ERR_IO, "%s: %s", what, m);
}

dsr1_status dsr1__exec(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    if (rc != SQLITE_OK) {
        dsr1_status st = dsr1__sql_error(db, rc, err ? err : sql);
        sqlite3_free(err);
        return st;
    }
    return DSR1_OK;
}

dsr1_status dsr1__begin(dsr1_batches *b)
{
    return dsr1__exec(b->db, "BEGIN IMMEDIATE");
}

dsr1_status dsr1__commit(dsr1_batches *b)
{
    int rc = sqlite3_exec(b->db, "COMMIT", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        dsr1_status st = dsr1__sql_error(b->db, rc, "committing to the batch store");
        dsr1__rollback(b);
        return st;
    }
    return DSR1_OK;
}

void dsr1__rollback(dsr1_batches *b)
{
    if (!sqlite3_get_autocommit(b->db)) sqlite3_exec(b->db, "ROLLBACK", NULL, NULL, NULL);
}

dsr1_status dsr1__prep(sqlite3 *db, const char *sql, sqlite3_stmt **out)
{
    int rc = sqlite3_prepare_v2(db, sql, -1, out, NULL);
    if (rc != SQLITE_OK) return dsr1__sql_error(db, rc, "preparing a batch store query");
    return DSR1_OK;
}

void dsr1__path(const dsr1_batches *b, char *out, size_t cap, const char *sub, const char *id)
{
    if (id)
        snprintf(out, cap, "%s/%s/%s", b->dir, sub, id);
    else
        snprintf(out, cap, "%s/%s", b->dir, sub);
}

dsr1_status dsr1__fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return dsr1_error(DSR1_ERR_IO, "opening %s: %s", path, strerror(errno));
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc != 0) return dsr1_error(DSR1_ERR_IO, "syncing %s: %s", path, strerror(e));
    return DSR1_OK;
}

static dsr1_status open_conn(dsr1_batches *b, sqlite3 **out)
{
    char path[4200];
    dsr1__path(b, path, sizeof path, "dsr1.db", NULL);
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(
        path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        dsr1_status st = dsr1_error(DSR1_ERR_IO, "opening %s: %s", path,
                                    db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return st;
    }
    sqlite3_busy_timeout(db, 10000);
    sqlite3_extended_result_codes(db, 1);
    dsr1_status st = dsr1__exec(db, "PRAGMA foreign_keys=ON; PRAGMA synchronous=FULL");
    if (st) {
        sqlite3_close(db);
        return dsr1_error_context(st, "%s", path);
    }
    *out = db;
    return DSR1_OK;
}

dsr1_status dsr1__list_page(dsr1_batches *b, const char *sql, const char *filter, const char *after,
                            int limit, const dsr1__page_rows *rows, const char *what, int *n,
                            bool *has_more)
{
    if (limit < 0) return dsr1_error(DSR1_ERR_INVALID_ARG, "negative list limit");
    sqlite3 *db;
    dsr1_status st = dsr1__reader(b, &db);
    if (st) return st;
    sqlite3_stmt *q;
    if ((st = dsr1__prep(db, sql, &q))) {
        dsr1__reader_put(b, db);
        return st;
    }
    if (filter) sqlite3_bind_text(q, 1, filter, -1, SQLITE_STATIC);
    if (after && after[0]) sqlite3_bind_text(q, 2, after, -1, SQLITE_STATIC);
    sqlite3_bind_int(q, 3, limit + 1);
    int k = 0, rc;
    bool more = false;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        if (k == limit) {
            more = true;
            break;
        }
        rows->row(b, db, q, rows->ctx, k++);
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        st = dsr1__sql_error(db, rc, what);
        for (int i = 0; rows->clear && i < k; i++) rows->clear(rows->ctx, i);
    }
    sqlite3_finalize(q);
    dsr1__reader_put(b, db);
    if (st) return st;
    *n = k;
    if (has_more) *has_more = more;
    return DSR1_OK;
}

dsr1_status dsr1__reader(dsr1_batches *b, sqlite3 **out)
{
    pthread_mutex_lock(&b->pool_mu);
    if (b->npool > 0) {
        *out = b->pool[--b->npool];
        pthread_mutex_unlock(&b->pool_mu);
        return DSR1_OK;
    }
    pthread_mutex_unlock(&b->pool_mu);
    return open_conn(b, out);
}

void dsr1__reader_put(dsr1_batches *b, sqlite3 *db)
{
    if (!db) return;
    pthread_mutex_lock(&b->pool_mu);
    if (b->npool < DSR1__BATCH_POOL) {
        b->pool[b->npool++] = db;
        db = NULL;
    }
    pthread_mutex_unlock(&b->pool_mu);
    if (db) sqlite3_close(db);
}

static const char *SCHEMA_V1 =
    "CREATE TABLE files(n INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, filename TEXT NOT "
    "NULL, purpose TEXT NOT NULL, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, "
    "expires_at INTEGER NOT NULL DEFAULT 0);"
    /* files that may exist in files/ without a row: being published or being deleted */
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

/* The migrations, in order: MIGRATIONS[v - 1] takes a database of version v to v + 1. A new
 * database is made with SCHEMA_V1 and then every migration, so that a new and a migrated
 * database are the same. Never edit one that has shipped: add the next. */
static const char *const MIGRATIONS[] = {
    /* 1 -> 2: the run order (priority, higher first), a batch's own window, and the sum of
     * its items' reasoning tokens */
    "ALTER TABLE batches ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE batches ADD COLUMN max_running INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE batches ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;",
};
_Static_assert(sizeof MIGRATIONS / sizeof MIGRATIONS[0] == DSR1__BATCH_SCHEMA - 1,
               "one migration per schema version after the first");

static int pragma_int(sqlite3 *db, const char *sql, int *out)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int(st, 0);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

/* Checks the database is ours, creates or migrates its schema. */
static dsr1_status schema(dsr1_batches *b)
{
    char path[4200];
    dsr1__path(b, path, sizeof path, "dsr1.db", NULL);
    int app = 0, ver = 0, ntab = 0;
    int rc = pragma_int(b->db, "PRAGMA application_id", &app);
    if (rc == SQLITE_OK) rc = pragma_int(b->db, "PRAGMA user_version", &ver);
    if (rc == SQLITE_OK) rc = pragma_int(b->db, "SELECT count(*) FROM sqlite_master", &ntab);
    if (rc != SQLITE_OK)
        return dsr1_error(DSR1_ERR_FORMAT,
                          "%s is not a dsr1 batch store database or is corrupt (%s); move it "
                          "away to start an empty store",
                          path, sqlite3_errmsg(b->db));
    if (app != DSR1__BATCH_APP_ID && !(app == 0 && ver == 0 && ntab == 0))
        return dsr1_error(DSR1_ERR_FORMAT,
                          "%s is not a dsr1 batch store database (application_id 0x%08x); "
                          "refusing to use it",
                          path, (unsigned)app);
    if (ver > DSR1__BATCH_SCHEMA)
        return dsr1_error(DSR1_ERR_UNSUPPORTED,
                          "%s has schema version %d, newer than this dsr1's %d", path, ver,
                          DSR1__BATCH_SCHEMA);
    dsr1_status st = dsr1__exec(b->db, "PRAGMA journal_mode=WAL");
    if (st) return dsr1_error_context(st, "%s", path);
    if (ver > 0) {
        /* a quick look at the structure: a damaged file is refused here, not mid-run */
        sqlite3_stmt *q;
        if (dsr1__prep(b->db, "PRAGMA quick_check(1)", &q))
            return dsr1_error_context(DSR1_ERR_FORMAT, "%s", path);
        rc = sqlite3_step(q);
        const char *r = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(q, 0) : NULL;
        bool ok = r && strcmp(r, "ok") == 0;
        char msg[256];
        snprintf(msg, sizeof msg, "%s", r ? r : sqlite3_errmsg(b->db));
        sqlite3_finalize(q);
        if (!ok)
            return dsr1_error(DSR1_ERR_FORMAT, "%s is corrupt (%s); refusing to use it", path, msg);
        if (ver == DSR1__BATCH_SCHEMA) return DSR1_OK;
    }
    /* version 0: a new database, made as version 1 and migrated; an older version: migrated.
     * One transaction: a migration cut short leaves the database as it was. */
    if ((st = dsr1__begin(b))) return dsr1_error_context(st, "%s", path);
    if (ver == 0) st = dsr1__exec(b->db, SCHEMA_V1);
    for (int v = ver ? ver : 1; !st && v < DSR1__BATCH_SCHEMA; v++)
        st = dsr1__exec(b->db, MIGRATIONS[v - 1]);
    char sql[128];
    snprintf(sql, sizeof sql, "PRAGMA application_id=%d; PRAGMA user_version=%d",
             DSR1__BATCH_APP_ID, DSR1__BATCH_SCHEMA);
    if (st || (st = dsr1__exec(b->db, sql)) || (st = dsr1__commit(b))) {
        dsr1__rollback(b);
        if (ver == 0) return dsr1_error_context(st, "creating the schema of %s", path);
        return dsr1_error_context(st, "migrating %s from schema version %d to %d", path, ver,
                                  DSR1__BATCH_SCHEMA);
    }
    if (ver)
        DSR1_INFO("batch store: %s migrated from schema version %d to %d", path, ver,
                  DSR1__BATCH_SCHEMA);
    return DSR1_OK;
}

static dsr1_status lock_dir(dsr1_batches *b)
{
    char path[4200];
    dsr1__path(b, path, sizeof path, "lock", NULL);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return dsr1_error(DSR1_ERR_IO, "opening %s: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = 0;
        pid[strcspn(pid, "\n")] = 0;
        close(fd);
        if (e == EWOULDBLOCK)
            return dsr1_error(DSR1_ERR_EXISTS,
                              "state directory %s is in use by another dsr1 (pid %s)", b->dir,
                              pid[0] ? pid : "unknown");
        return dsr1_error(DSR1_ERR_IO, "locking %s: %s", path, strerror(e));
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n) {
        /* the pid is informative only */
    }
    b->lock_fd = fd;
    return DSR1_OK;
}

static dsr1_status mkdir_0700(const char *path)
{
    if (mkdir(path, 0700) != 0 && errno != EEXIST)
        return dsr1_error(DSR1_ERR_IO, "creating %s: %s", path, strerror(errno));
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return dsr1_error(DSR1_ERR_IO, "%s is not a directory", path);
    return DSR1_OK;
}

/* Empties tmp/ (uploads cut short) and checks files/ against the database. */
static dsr1_status check_files(dsr1_batches *b)
{
    char path[4200], fp[4600];
    dsr1__path(b, path, sizeof path, "tmp", NULL);
    DIR *d = opendir(path);
    if (!d) return dsr1_error(DSR1_ERR_IO, "opening %s: %s", path, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(fp, sizeof fp, "%s/%s", path, e->d_name);
        unlink(fp);
    }
    closedir(d);
    dsr1_status st = dsr1__files_purge_trash(b);
    if (st) return st;

    sqlite3_stmt *q;
    if ((st = dsr1__prep(b->db, "SELECT bytes FROM files WHERE id = ?", &q))) return st;
    dsr1__path(b, path, sizeof path, "files", NULL);
    d = opendir(path);
    if (!d) {
        sqlite3_finalize(q);
        return dsr1_error(DSR1_ERR_IO, "opening %s: %s", path, strerror(errno));
    }
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' && (!e->d_name[1] || strcmp(e->d_name, "..") == 0)) continue;
        snprintf(fp, sizeof fp, "%s/%s", path, e->d_name);
        sqlite3_reset(q);
        sqlite3_bind_text(q, 1, e->d_name, -1, SQLITE_TRANSIENT);
        if (sqlite3_step(q) != SQLITE_ROW) {
            st = dsr1_error(DSR1_ERR_FORMAT,
                            "%s is not a file the batch store knows (its database has no "
                            "row for it); remove it or restore the matching dsr1.db",
                            fp);
            break;
        }
        int64_t want = sqlite3_column_int64(q, 0);
        struct stat sb;
        if (stat(fp, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size != want) {
            st = dsr1_error(DSR1_ERR_FORMAT,
                            "%s has %lld bytes but the batch store recorded %lld; refusing a "
                            "damaged store",
                            fp, (long long)sb.st_size, (long long)want);
            break;
        }
    }
    closedir(d);
    sqlite3_finalize(q);
    return st;
}

/* Loads the unfinished batches; writer batches never committed are dropped. */
static dsr1_status load_active(dsr1_batches *b)
{
    dsr1_status st = dsr1__exec(b->db, "DELETE FROM batches WHERE visible = 0");
    if (st) return st;
    sqlite3_stmt *q;
    if ((st = dsr1__prep(b->db,
                         "SELECT n, id, format, endpoint, state, ending, expires_at, total, "
                         "completed + failed, next_seq, fail_message, priority, max_running "
                         "FROM batches WHERE state IN (0, 1, 2, 6) ORDER BY n",
                         &q)))
        return st;
    while (sqlite3_step(q) == SQLITE_ROW) {
        dsr1__bt *bt = calloc(1, sizeof *bt);
        if (!bt) {
            sqlite3_finalize(q);
            return dsr1_error(DSR1_ERR_NOMEM, "loading batches");
        }
        bt->n = sqlite3_column_int64(q, 0);
        snprintf(bt->id, sizeof bt->id, "%s", (const char *)sqlite3_column_text(q, 1));
        snprintf(bt->format, sizeof bt->format, "%s", (const char *)sqlite3_column_text(q, 2));
        snprintf(bt->endpoint, sizeof bt->endpoint, "%s", (const char *)sqlite3_column_text(q, 3));
        bt->state = (dsr1_batch_state)sqlite3_column_int(q, 4);
        bt->ending = sqlite3_column_int(q, 5);
        bt->expires_at = sqlite3_column_int64(q, 6);
        bt->total = sqlite3_column_int(q, 7);
        bt->resulted = sqlite3_column_int(q, 8);
        bt->next_seq = sqlite3_column_int64(q, 9);
        if (sqlite3_column_text(q, 10))
            bt->fail_msg = strdup((const char *)sqlite3_column_text(q, 10));
        bt->priority = sqlite3_column_int(q, 11);
        bt->window = dsr1__bt_window(b, sqlite3_column_int(q, 12));
        bt->cursor = -1;
        bt->retry_idx = -1;
        if (bt->state == DSR1_BATCH_VALIDATING) bt->validating = true;
        if (bt->state == DSR1_BATCH_FINALIZING) bt->finalize_needed = true;
        if (bt->state == DSR1_BATCH_CANCELLING) bt->ending = END_CANCEL;
        dsr1__active_insert(b, bt);
    }
    sqlite3_finalize(q);
    return DSR1_OK;
}

dsr1_status dsr1_batches_open(const dsr1_batches_params *p, dsr1_batches **out)
{
    if (!p || !p->state_dir || !p->state_dir[0])
        return dsr1_error(DSR1_ERR_INVALID_ARG, "batch store: no state directory");
    if (strlen(p->state_dir) > 3900)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "batch store: state directory path too long");
    dsr1_batches *b = calloc(1, sizeof *b);
    if (!b) return dsr1_error(DSR1_ERR_NOMEM, "batch store");
    b->p = *p;
    if (b->p.retention_s == 0) b->p.retention_s = DSR1_BATCHES_DEFAULT_RETENTION_S;
    if (b->p.window <= 0) b->p.window = 256;
    if (b->p.batch_window <= 0 || b->p.batch_window > b->p.window) b->p.batch_window = b->p.window;
    if (b->p.max_file_bytes <= 0) b->p.max_file_bytes = 512LL << 20;
    if (b->p.max_items <= 0) b->p.max_items = 1000000;
    snprintf(b->dir, sizeof b->dir, "%s", p->state_dir);
    b->p.state_dir = b->dir;
    b->lock_fd = -1;
    pthread_mutex_init(&b->wmu, NULL);
    pthread_mutex_init(&b->pool_mu, NULL);
    pthread_mutex_init(&b->dmu, NULL);
    pthread_mutex_init(&b->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->cv, &ca);
    pthread_cond_init(&b->wcv, &ca);
    pthread_cond_init(&b->vcv, &ca);
    pthread_condattr_destroy(&ca);

    char path[4200];
    dsr1_status st = mkdir_0700(b->dir);
    if (!st) st = lock_dir(b);
    if (!st) {
        dsr1__path(b, path, sizeof path, "files", NULL);
        st = mkdir_0700(path);
    }
    if (!st) {
        dsr1__path(b, path, sizeof path, "tmp", NULL);
        st = mkdir_0700(path);
    }
    if (!st) st = open_conn(b, &b->db);
    if (!st) st = schema(b);
    if (!st) st = check_files(b);
    if (!st) st = load_active(b);
    b->nslots = b->p.window;
    if (!st && !(b->slots = calloc((size_t)b->nslots, sizeof *b->slots)))
        st = dsr1_error(DSR1_ERR_NOMEM, "batch store slots");
    if (st) {
        dsr1_batches_close(b);
        return st;
    }
    dsr1__purge(b);
    *out = b;
    return DSR1_OK;
}

dsr1_status dsr1_batches_register(dsr1_batches *b, const dsr1_batch_codec *c)
{
    if (!c || !c->format || !c->check || !c->start || !c->abort || !c->error_result)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "batch codec: format and callbacks required");
    pthread_mutex_lock(&b->mu);
    dsr1_status st = DSR1_OK;
    if (dsr1__codec(b, c->format))
        st = dsr1_error(DSR1_ERR_EXISTS, "batch codec %s is registered already", c->format);
    else if (b->ncodecs == DSR1__BATCH_MAX_CODECS)
        st = dsr1_error(DSR1_ERR_RANGE, "too many batch codecs");
    else
        b->codecs[b->ncodecs++] = *c;
    pthread_cond_broadcast(&b->cv);
    pthread_cond_broadcast(&b->vcv);
    pthread_mutex_unlock(&b->mu);
    return st;
}

void dsr1__active_insert(dsr1_batches *b, dsr1__bt *bt)
{
    dsr1__bt **pp = &b->active;
    while (*pp && ((*pp)->priority > bt->priority ||
                   ((*pp)->priority == bt->priority && (*pp)->n < bt->n)))
        pp = &(*pp)->next;
    bt->next = *pp;
    *pp = bt;
    if (!bt->next) b->active_tail = bt;
}

int dsr1__bt_window(const dsr1_batches *b, int max_running)
{
    return max_running > 0 && max_running < b->p.batch_window ? max_running : b->p.batch_window;
}

const dsr1_batch_codec *dsr1__codec(dsr1_batches *b, const char *format)
{
    for (int i = 0; i < b->ncodecs; i++)
        if (strcmp(b->codecs[i].format, format) == 0) return &b->codecs[i];
    return NULL;
}

dsr1_status dsr1_batches_start(dsr1_batches *b)
{
    pthread_mutex_lock(&b->mu);
    if (b->started) {
        pthread_mutex_unlock(&b->mu);
        return DSR1_OK;
    }
    b->started = true;
    pthread_mutex_unlock(&b->mu);
    if (pthread_create(&b->writer, NULL, dsr1__writer_main, b) != 0)
        return dsr1_error(DSR1_ERR_INTERNAL, "starting the batch writer thread");
    if (pthread_create(&b->validator, NULL, dsr1__validator_main, b) != 0)
        return dsr1_error(DSR1_ERR_INTERNAL, "starting the batch validator thread");
    if (pthread_create(&b->runner, NULL, dsr1__runner_main, b) != 0)
        return dsr1_error(DSR1_ERR_INTERNAL, "starting the batch runner thread");
    return DSR1_OK;
}

void dsr1_batches_close(dsr1_batches *b)
{
    if (!b) return;
    pthread_mutex_lock(&b->mu);
    bool started = b->started;
    b->stopping = true;
    pthread_cond_broadcast(&b->cv);
    pthread_cond_broadcast(&b->vcv);
    pthread_mutex_unlock(&b->mu);
    if (started) {
        pthread_join(b->runner, NULL);
        pthread_join(b->validator, NULL);
        /* abort what is in the scheduler; those results are dropped, the items stay pending */
        for (dsr1__bt *bt = b->active; bt; bt = bt->next) dsr1__abort_batch(b, bt, ABORT_CLOSE);
        pthread_mutex_lock(&b->mu);
        while (b->running > 0) pthread_cond_wait(&b->cv, &b->mu);
        b->stop_writer = true;
        pthread_cond_broadcast(&b->wcv);
        pthread_mutex_unlock(&b->mu);
        pthread_join(b->writer, NULL);
    }
    dsr1__subs_free_all(b);
    while (b->active) {
        dsr1__bt *n = b->active->next;
        free(b->active->fail_msg);
        free(b->active->again);
        free(b->active);
        b->active = n;
    }
    for (int i = 0; i < b->npool; i++) sqlite3_close(b->pool[i]);
    if (b->db) sqlite3_close(b->db);
    if (b->lock_fd >= 0) close(b->lock_fd);
    free(b->slots);
    pthread_mutex_destroy(&b->wmu);
    pthread_mutex_destroy(&b->pool_mu);
    pthread_mutex_destroy(&b->dmu);
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
    pthread_cond_destroy(&b->wcv);
    pthread_cond_destroy(&b->vcv);
    free(b);
}

void dsr1_batches_get_stats(dsr1_batches *b, dsr1_batches_stats *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&b->mu);
    for (dsr1__bt *bt = b->active; bt; bt = bt->next) {
        out->batches_active++;
        if (!bt->ending && !bt->validating)
            out->items_pending += bt->total - bt->resulted - bt->running;
    }
    out->items_running = b->running;
    out->results_committed = b->results_committed;
    out->commits = b->commits;
    pthread_mutex_unlock(&b->mu);
    sqlite3 *db;
    if (dsr1__reader(b, &db)) return;
    sqlite3_stmt *q;
    if (!dsr1__prep(db, "SELECT count(*), coalesce(sum(bytes), 0) FROM files", &q)) {
        if (sqlite3_step(q) == SQLITE_ROW) {
            out->files = sqlite3_column_int64(q, 0);
            out->file_bytes = sqlite3_column_int64(q, 1);
        }
        sqlite3_finalize(q);
    }
    dsr1__reader_put(b, db);
}

const char *dsr1_batch_state_str(dsr1_batch_state s)
{
    static const char *names[] = {"validating", "in_progress", "finalizing", "completed",
                                  "failed",     "expired",     "cancelling", "cancelled"};
    return (unsigned)s < 8 ? names[s] : "unknown";
}

bool dsr1_batch_state_final(dsr1_batch_state s)
{
    return s == DSR1_BATCH_COMPLETED || s == DSR1_BATCH_FAILED || s == DSR1_BATCH_EXPIRED ||
           s == DSR1_BATCH_CANCELLED;
}
