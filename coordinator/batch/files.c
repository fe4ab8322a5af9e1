/* Files: uploads written a piece at a time to tmp/, made durable (fsync), renamed into
 * files/ and the directory fsync'd before their row is committed; the Files API's get,
 * list, open and delete.
 *
 * A file may exist in files/ without a row only while it is being published or deleted;
 * the `trash` table records that intent in a transaction of its own first, so that a crash
 * in between leaves a name that the next open removes instead of an unknown file. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "batch_internal.h"
#include "log.h"

struct dsr1_file_upload {
    dsr1_batches *b;
    int fd;
    bool failed;
    int64_t bytes;
    char id[DSR1_BATCH_ID_MAX];
    char filename[256];
    char purpose[32];
    char tmp[4400];
};

/* Removes the files named in trash (and their rows). */
dsr1_status dsr1__files_purge_trash(dsr1_batches *b)
{
    sqlite3_stmt *q;
    dsr1_status st = dsr1__prep(b->db, "SELECT id FROM trash", &q);
    if (st) return st;
    char path[4400];
    while (sqlite3_step(q) == SQLITE_ROW) {
        dsr1__path(b, path, sizeof path, "files", (const char *)sqlite3_column_text(q, 0));
        if (unlink(path) != 0 && errno != ENOENT)
            DSR1_WARN("batch store: removing %s: %s", path, strerror(errno));
    }
    sqlite3_finalize(q);
    dsr1__path(b, path, sizeof path, "files", NULL);
    dsr1__fsync_dir(path);
    return dsr1__exec(b->db, "DELETE FROM trash");
}

dsr1_status dsr1__file_intent(dsr1_batches *b, const char *id)
{
    sqlite3_stmt *q;
    dsr1_status st = dsr1__prep(b->db, "INSERT OR IGNORE INTO trash(id) VALUES (?)", &q);
    if (st) return st;
    sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(q);
    sqlite3_finalize(q);
    if (rc != SQLITE_DONE) return dsr1__sql_error(b->db, rc, "recording a new file");
    return DSR1_OK;
}

/* fsyncs fd (a file in tmp/ named id), renames it into files/ and syncs the directory.
 * The caller has committed the intent and commits the row afterwards (under wmu). */
dsr1_status dsr1__file_publish(dsr1_batches *b, int fd, const char *id)
{
    char tmp[4400], dst[4400], dir[4200];
    dsr1__path(b, tmp, sizeof tmp, "tmp", id);
    dsr1__path(b, dst, sizeof dst, "files", id);
    dsr1__path(b, dir, sizeof dir, "files", NULL);
    if (fsync(fd) != 0) return dsr1_error(DSR1_ERR_IO, "writing %s: %s", tmp, strerror(errno));
    if (rename(tmp, dst) != 0)
        return dsr1_error(DSR1_ERR_IO, "renaming %s to %s: %s", tmp, dst, strerror(errno));
    return dsr1__fsync_dir(dir);
}

dsr1_status dsr1_file_upload_begin(dsr1_batches *b, const char *filename, const char *purpose,
                                   dsr1_file_upload **out)
{
    if (!purpose || !purpose[0] || strlen(purpose) >= 32)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "file purpose must be 1 to 31 characters");
    if (!filename) filename = "";
    if (strlen(filename) >= 256)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "file name longer than 255 bytes");
    dsr1_file_upload *u = calloc(1, sizeof *u);
    if (!u) return dsr1_error(DSR1_ERR_NOMEM, "file upload");
    u->b = b;
    char hex[25];
    dsr1__random_hex(hex, 24);
    snprintf(u->id, sizeof u->id, "file-%s", hex);
    snprintf(u->filename, sizeof u->filename, "%s", filename);
    snprintf(u->purpose, sizeof u->purpose, "%s", purpose);
    dsr1__path(b, u->tmp, sizeof u->tmp, "tmp", u->id);
    u->fd = open(u->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (u->fd < 0) {
        dsr1_status st = dsr1_error(DSR1_ERR_IO, "creating %s in the state directory %s: %s",
                                    u->tmp, b->dir, strerror(errno));
        free(u);
        return st;
    }
    *out = u;
    return DSR1_OK;
}

dsr1_status dsr1_file_upload_write(dsr1_file_upload *u, const void *data, size_t len)
{
    if (u->failed) return dsr1_error(DSR1_ERR_INVALID_ARG, "file upload failed already");
    if (u->bytes + (int64_t)len > u->b->p.max_file_bytes) {
        u->failed = true;
        return dsr1_error(DSR1_ERR_RANGE, "file larger than the limit of %lld bytes",
                          (long long)u->b->p.max_file_bytes);
    }
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(u->fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            u->failed = true;
            return dsr1_error(DSR1_ERR_IO, "writing an upload to the state directory %s: %s",
                              u->b->dir, n < 0 ? strerror(errno) : "short write");
        }
        p += n;
        len -= (size_t)n;
        u->bytes += n;
    }
    return DSR1_OK;
}

static dsr1_status insert_file(dsr1_batches *b, const char *id, const char *filename,
                               const char *purpose, int64_t bytes, int64_t now)
{
    sqlite3_stmt *q;
    dsr1_status st = dsr1__prep(b->db,
                                "INSERT INTO files(id, filename, purpose, bytes, created_at) "
                                "VALUES (?, ?, ?, ?, ?)",
                                &q);
    if (st) return st;
    sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, filename, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 3, purpose, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 4, bytes);
    sqlite3_bind_int64(q, 5, now);
    int rc = sqlite3_step(q);
    sqlite3_finalize(q);
    if (rc != SQLITE_DONE) return dsr1__sql_error(b->db, rc, "recording a file");
    if ((st = dsr1__prep(b->db, "DELETE FROM trash WHERE id = ?", &q))) return st;
    sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    rc = sqlite3_step(q);
    sqlite3_finalize(q);
    if (rc != SQLITE_DONE) return dsr1__sql_error(b->db, rc, "recording a file");
    return DSR1_OK;
}

dsr1_status dsr1__file_row(dsr1_batches *b, const char *id, const char *filename,
                           const char *purpose, int64_t bytes, int64_t now)
{
    return insert_file(b, id, filename, purpose, bytes, now);
}

dsr1_status dsr1_file_upload_commit(dsr1_file_upload *u, dsr1_file_info *out)
{
    dsr1_batches *b = u->b;
    if (u->failed) {
        dsr1_file_upload_abort(u);
        return dsr1_error(DSR1_ERR_INVALID_ARG, "file upload failed already");
    }
    int64_t now = dsr1__now_s();
    /* the data is synced before the write connection is taken: a large upload never holds
     * up the commits of results */
    dsr1_status st = DSR1_OK;
    if (fsync(u->fd) != 0) st = dsr1_error(DSR1_ERR_IO, "writing %s: %s", u->tmp, strerror(errno));
    if (!st) {
        pthread_mutex_lock(&b->wmu);
        st = dsr1__begin(b);
        if (!st) st = dsr1__file_intent(b, u->id);
        if (!st) st = dsr1__commit(b);
        if (st) dsr1__rollback(b);
        pthread_mutex_unlock(&b->wmu);
    }
    if (!st) st = dsr1__file_publish(b, u->fd, u->id);
    if (!st) {
        pthread_mutex_lock(&b->wmu);
        st = dsr1__begin(b);
        if (!st) st = insert_file(b, u->id, u->filename, u->purpose, u->bytes, now);
        if (!st) st = dsr1__commit(b);
        if (st) dsr1__rollback(b);
        pthread_mutex_unlock(&b->wmu);
    }
    if (st) {
        char dst[4400];
        dsr1__path(b, dst, sizeof dst, "files", u->id);
        unlink(dst);
        /* the trash row (if committed) makes the next open finish the clean-up */
    }
    if (st) {
        dsr1_error_context(st, "storing an upload in the state directory %s", b->dir);
        dsr1_file_upload_abort(u);
        return st;
    }
    if (out) {
        memset(out, 0, sizeof *out);
        snprintf(out->id, sizeof out->id, "%s", u->id);
        snprintf(out->filename, sizeof out->filename, "%s", u->filename);
        snprintf(out->purpose, sizeof out->purpose, "%s", u->purpose);
        out->bytes = u->bytes;
        out->created_at = now;
        if (u->b->p.retention_s >= 0) out->expires_at = now + u->b->p.retention_s;
    }
    close(u->fd);
    free(u);
    return DSR1_OK;
}

void dsr1_file_upload_abort(dsr1_file_upload *u)
{
    if (!u) return;
    close(u->fd);
    unlink(u->tmp);
    free(u);
}

/* A row; expires_at, when the row has none, is when retention deletes the file. */
static void file_row(const dsr1_batches *b, sqlite3_stmt *q, dsr1_file_info *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->id, sizeof out->id, "%s", (const char *)sqlite3_column_text(q, 0));
    snprintf(out->filename, sizeof out->filename, "%s", (const char *)sqlite3_column_text(q, 1));
    snprintf(out->purpose, sizeof out->purpose, "%s", (const char *)sqlite3_column_text(q, 2));
    out->bytes = sqlite3_column_int64(q, 3);
    out->created_at = sqlite3_column_int64(q, 4);
    out->expires_at = sqlite3_column_int64(q, 5);
    if (!out->expires_at && b->p.retention_s >= 0)
        out->expires_at = out->created_at + b->p.retention_s;
}

#define FILE_COLS "id, filename, purpose, bytes, created_at, expires_at"

dsr1_status dsr1_files_get(dsr1_batches *b, const char *id, dsr1_file_info *out)
{
    sqlite3 *db;
    dsr1_status st = dsr1__reader(b, &db);
    if (st) return st;
    sqlite3_stmt *q;
    if (!(st = dsr1__prep(db, "SELECT " FILE_COLS " FROM files WHERE id = ?", &q))) {
        sqlite3_bind_text(q, 1, id ? id : "", -1, SQLITE_STATIC);
        int rc = sqlite3_step(q);
        if (rc == SQLITE_ROW)
            file_row(b, q, out);
        else if (rc == SQLITE_DONE)
            st = dsr1_error(DSR1_ERR_NOT_FOUND, "no file %s", id ? id : "");
        else
            st = dsr1__sql_error(db, rc, "reading a file's row");
        sqlite3_finalize(q);
    }
    dsr1__reader_put(b, db);
    return st;
}

static void file_list_row(dsr1_batches *b, sqlite3 *db, sqlite3_stmt *q, void *ctx, int i)
{
    (void)db;
    file_row(b, q, (dsr1_file_info *)ctx + i);
}

dsr1_status dsr1_files_list(dsr1_batches *b, const char *purpose, const char *after, int limit,
                            dsr1_file_info *out, int *n, bool *has_more)
{
    const dsr1__page_rows rows = {file_list_row, NULL, out};
    return dsr1__list_page(b,
                           "SELECT " FILE_COLS " FROM files WHERE (?1 IS NULL OR purpose = ?1) "
                           "AND (?2 IS NULL OR n < (SELECT n FROM files WHERE id = ?2)) ORDER BY "
                           "n DESC LIMIT ?3",
                           purpose, after, limit, &rows, "listing files", n, has_more);
}

dsr1_status dsr1_files_open(dsr1_batches *b, const char *id, int *fd, int64_t *bytes)
{
    dsr1_file_info fi;
    dsr1_status st = dsr1_files_get(b, id, &fi);
    if (st) return st;
    char path[4400];
    dsr1__path(b, path, sizeof path, "files", fi.id);
    int f = open(path, O_RDONLY | O_CLOEXEC);
    if (f < 0) return dsr1_error(DSR1_ERR_IO, "opening %s: %s", path, strerror(errno));
    *fd = f;
    if (bytes) *bytes = fi.bytes;
    return DSR1_OK;
}

/* Deletes the files selected by sql_select (one column: ids; one int64 parameter ?1), under
 * wmu: their rows move to trash in one transaction, the files are unlinked, then the trash
 * rows go. Only these ids: another file's intent may be in trash meanwhile. */
dsr1_status dsr1__files_delete_ids(dsr1_batches *b, const char *sql_select, int64_t arg)
{
    sqlite3_stmt *q;
    dsr1_status st = dsr1__prep(b->db, sql_select, &q);
    if (st) return st;
    sqlite3_bind_int64(q, 1, arg);
    char(*ids)[DSR1_BATCH_ID_MAX] = NULL;
    int n = 0, cap = 0;
    while (sqlite3_step(q) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            void *p = realloc(ids, (size_t)cap * sizeof *ids);
            if (!p) {
                st = dsr1_error(DSR1_ERR_NOMEM, "deleting files");
                break;
            }
            ids = p;
        }
        snprintf(ids[n++], DSR1_BATCH_ID_MAX, "%s", (const char *)sqlite3_column_text(q, 0));
    }
    sqlite3_finalize(q);
    if (st || n == 0) {
        free(ids);
        return st;
    }
    sqlite3_stmt *t = NULL, *d = NULL;
    if (!(st = dsr1__begin(b)) &&
        !(st = dsr1__prep(b->db, "INSERT OR IGNORE INTO trash(id) VALUES (?)", &t)) &&
        !(st = dsr1__prep(b->db, "DELETE FROM files WHERE id = ?", &d))) {
        for (int i = 0; i < n && !st; i++) {
            sqlite3_reset(t);
            sqlite3_reset(d);
            sqlite3_bind_text(t, 1, ids[i], -1, SQLITE_STATIC);
            sqlite3_bind_text(d, 1, ids[i], -1, SQLITE_STATIC);
            int rc = sqlite3_step(t);
            if (rc == SQLITE_DONE) rc = sqlite3_step(d);
            if (rc != SQLITE_DONE) st = dsr1__sql_error(b->db, rc, "deleting files");
        }
    }
    sqlite3_finalize(t);
    sqlite3_finalize(d);
    if (!st) st = dsr1__commit(b);
    if (st) {
        dsr1__rollback(b);
        free(ids);
        return st;
    }
    char path[4400];
    for (int i = 0; i < n; i++) {
        dsr1__path(b, path, sizeof path, "files", ids[i]);
        if (unlink(path) != 0 && errno != ENOENT)
            DSR1_WARN("batch store: removing %s: %s", path, strerror(errno));
    }
    dsr1__path(b, path, sizeof path, "files", NULL);
    dsr1__fsync_dir(path);
    /* what stays in trash (a failure here) is removed again on the next open */
    if (!dsr1__begin(b) && !dsr1__prep(b->db, "DELETE FROM trash WHERE id = ?", &t)) {
        for (int i = 0; i < n; i++) {
            sqlite3_reset(t);
            sqlite3_bind_text(t, 1, ids[i], -1, SQLITE_STATIC);
            sqlite3_step(t);
        }
        sqlite3_finalize(t);
        dsr1__commit(b);
    }
    dsr1__rollback(b);
    free(ids);
    return DSR1_OK;
}

dsr1_status dsr1_files_delete(dsr1_batches *b, const char *id)
{
    dsr1_file_info fi;
    dsr1_status st = dsr1_files_get(b, id, &fi);
    if (st) return st;
    pthread_mutex_lock(&b->wmu);
    /* the rowid keeps the parameter an integer */
    sqlite3_stmt *q;
    int64_t n = -1;
    if (!(st = dsr1__prep(b->db, "SELECT n FROM files WHERE id = ?", &q))) {
        sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
        if (sqlite3_step(q) == SQLITE_ROW) n = sqlite3_column_int64(q, 0);
        sqlite3_finalize(q);
    }
    if (!st && n < 0) st = dsr1_error(DSR1_ERR_NOT_FOUND, "no file %s", id);
    if (!st) st = dsr1__files_delete_ids(b, "SELECT id FROM files WHERE n = ?1", n);
    pthread_mutex_unlock(&b->wmu);
    return st;
}
