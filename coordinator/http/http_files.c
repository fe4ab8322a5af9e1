/* OpenAI's Files API (http_internal.h) on the durable batch store (batches.h):
 * POST /v1/files (multipart/form-data: `file` and `purpose`), GET /v1/files,
 * GET /v1/files/{id}, GET /v1/files/{id}/content, DELETE /v1/files/{id}.
 *
 * An upload is parsed by libmicrohttpd's post processor as its body arrives and the file
 * part is written to the store a piece at a time (dsr1_file_upload_write): it is never
 * held in memory, and the server's request body bound does not apply to it (the store's
 * largest file does: 413). A file's content is sent from the store's descriptor. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http_internal.h"
#include "log.h"

#define POST_BUFFER (64 * 1024)
#define LIST_PAGE   256
#define FILES_LIMIT 10000 /* OpenAI's default and largest `limit` */
#define PURPOSE_MAX 32

struct http_upload {
    dsr1_http_server *s;
    struct MHD_PostProcessor *pp;
    dsr1_file_upload *up; /* the file part, once it began */
    bool file_seen, purpose_seen, done;
    uint64_t file_end; /* bytes of the file part so far */
    char purpose[PURPOSE_MAX + 1];
    size_t purpose_len;
    bool purpose_long;
    /* the first failure: its HTTP status, param and message (0: none) */
    int status;
    const char *param, *code;
    char msg[512];
};

static void upload_fail(http_upload *u, int status, const char *param, const char *code,
                        const char *msg)
{
    if (u->status) return;
    u->status = status;
    u->param = param;
    u->code = code;
    snprintf(u->msg, sizeof(u->msg), "%s", msg);
    if (u->up) {
        dsr1_file_upload_abort(u->up);
        u->up = NULL;
    }
}

/* Fails the upload unless its purpose is batch (missing: only once the body is over). */
static void purpose_check(http_upload *u, bool at_end)
{
    if (u->purpose_seen ? !u->purpose_long && !strcmp(u->purpose, "batch") : !at_end) return;
    char msg[200];
    if (!u->purpose_seen)
        snprintf(msg, sizeof(msg), "purpose: a required field (this server accepts 'batch')");
    else
        snprintf(msg, sizeof(msg),
                 "purpose: '%.40s%s' is not supported: this server accepts 'batch' only",
                 u->purpose, u->purpose_long ? "..." : "");
    upload_fail(u, 400, "purpose", NULL, msg);
}

static enum MHD_Result on_field(void *cls, enum MHD_ValueKind kind, const char *key,
                                const char *filename, const char *content_type,
                                const char *transfer_encoding, const char *data, uint64_t off,
                                size_t size)
{
    (void)kind;
    (void)content_type;
    (void)transfer_encoding;
    http_upload *u = cls;
    if (u->status) return MHD_YES; /* failed: the rest is read and dropped */
    if (key && !strcmp(key, "file")) {
        if (u->up && off != u->file_end) { /* a second file part begins at 0 */
            upload_fail(u, 400, "file", NULL, "file: send one file part only");
            return MHD_YES;
        }
        if (!u->up) {
            if (u->file_seen || off) {
                upload_fail(u, 400, "file", NULL, "file: send one file part only");
                return MHD_YES;
            }
            u->file_seen = true;
            /* the only purpose accepted is batch: one given before the file is checked now
             * (nothing written), a later one at the end (the fields come in either order) */
            purpose_check(u, false);
            if (u->status) return MHD_YES;
            dsr1_status st = dsr1_file_upload_begin(
                u->s->p.batches, filename && *filename ? filename : "file", "batch", &u->up);
            if (st) {
                u->up = NULL;
                upload_fail(u, dsr1__http_status_of(st), "file", NULL, dsr1_errmsg());
                return MHD_YES;
            }
        }
        if (size) {
            u->file_end += size;
            dsr1_status st = dsr1_file_upload_write(u->up, data, size);
            if (st == DSR1_ERR_RANGE)
                upload_fail(u, 413, "file", "file_too_large", dsr1_errmsg());
            else if (st)
                upload_fail(u, 500, "file", NULL, dsr1_errmsg());
        }
    } else if (key && !strcmp(key, "purpose")) {
        u->purpose_seen = true;
        if (u->purpose_len + size > PURPOSE_MAX) {
            u->purpose_long = true;
        } else {
            memcpy(u->purpose + u->purpose_len, data, size);
            u->purpose_len += size;
            u->purpose[u->purpose_len] = '\0';
        }
    }
    return MHD_YES; /* other fields (expires_after[...]) are ignored */
}

http_upload *dsr1__http_upload_begin(dsr1_http_server *s, struct MHD_Connection *c)
{
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
    if (!ct || strncasecmp(ct, "multipart/form-data", 19)) return NULL;
    http_upload *u = calloc(1, sizeof(*u));
    if (!u) return NULL;
    u->s = s;
    u->pp = MHD_create_post_processor(c, POST_BUFFER, on_field, u);
    if (!u->pp) {
        free(u);
        return NULL;
    }
    return u;
}

void dsr1__http_upload_feed(http_upload *u, const char *data, size_t n)
{
    if (!u->pp || MHD_post_process(u->pp, data, n) == MHD_YES) return;
    upload_fail(u, 400, NULL, NULL, "the multipart/form-data body is malformed");
    MHD_destroy_post_processor(u->pp);
    u->pp = NULL;
}

enum MHD_Result dsr1__http_upload_finish(dsr1_http_server *s, struct MHD_Connection *c,
                                         http_upload *u)
{
    if (u->done) return MHD_YES;
    u->done = true;
    if (u->pp && MHD_destroy_post_processor(u->pp) != MHD_YES)
        upload_fail(u, 400, NULL, NULL, "the multipart/form-data body is malformed");
    u->pp = NULL;
    if (!u->status) purpose_check(u, true);
    if (!u->status && !u->file_seen)
        upload_fail(u, 400, "file", NULL, "file: a required field (the file's content)");
    if (u->status) return dsr1__http_send_error(s, c, u->status, NULL, u->param, u->code, u->msg);
    dsr1_file_info info;
    dsr1_status st = dsr1_file_upload_commit(u->up, &info);
    u->up = NULL;
    if (st)
        return dsr1__http_send_error(s, c, dsr1__http_status_of(st), NULL, NULL, NULL,
                                     dsr1_errmsg());
    return dsr1__http_send_json(s, c, 200, dsr1__http_file_object(&info));
}

void dsr1__http_upload_free(http_upload *u)
{
    if (!u) return;
    if (u->pp) MHD_destroy_post_processor(u->pp);
    if (u->up) dsr1_file_upload_abort(u->up);
    free(u);
}

/* ---- the other endpoints ---- */

/* The purpose OpenAI gives a file: a batch's error file is "batch_output" too. */
static const char *api_purpose(const char *purpose)
{
    return strcmp(purpose, "batch_error") ? purpose : "batch_output";
}

static bool purpose_matches(const dsr1_file_info *f, const char *purpose)
{
    return !purpose || !strcmp(api_purpose(f->purpose), purpose);
}

json_t *dsr1__http_file_object(const dsr1_file_info *f)
{
    json_t *o =
        json_pack("{s:s, s:s, s:I, s:I, s:s, s:s, s:s}", "id", f->id, "object", "file", "bytes",
                  (json_int_t)f->bytes, "created_at", (json_int_t)f->created_at, "filename",
                  f->filename, "purpose", api_purpose(f->purpose), "status", "processed");
    if (!o) /* a filename that is not UTF-8 */
        o = json_pack("{s:s, s:s, s:I, s:I, s:s, s:s, s:s}", "id", f->id, "object", "file", "bytes",
                      (json_int_t)f->bytes, "created_at", (json_int_t)f->created_at, "filename",
                      "file", "purpose", f->purpose, "status", "processed");
    if (o && f->expires_at) json_object_set_new(o, "expires_at", json_integer(f->expires_at));
    return o;
}

bool dsr1__http_query_int(dsr1_http_server *s, struct MHD_Connection *c, const char *name, int def,
                          int lo, int hi, int *out, enum MHD_Result *ret)
{
    const char *v = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name);
    *out = def;
    if (!v) return true;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > hi) {
        char msg[200];
        snprintf(msg, sizeof(msg), "%s: expected an integer from %d to %d, got '%.40s'", name, lo,
                 hi, v);
        *ret = dsr1__http_send_error(s, c, 400, NULL, name, NULL, msg);
        return false;
    }
    *out = (int)x;
    return true;
}

static enum MHD_Result store_error(dsr1_http_server *s, struct MHD_Connection *c, dsr1_status st,
                                   const char *param)
{
    int status = dsr1__http_status_of(st);
    return dsr1__http_send_error(s, c, status, NULL, status == 400 ? param : NULL,
                                 status == 404 ? "not_found" : NULL, dsr1_errmsg());
}

/* GET /v1/files: newest first (order desc), or oldest first (order asc: the files after
 * `after` in that order are those just before it in the store's newest-first listing, so
 * the listing is read in pages up to `after`, keeping the last limit + 1 seen). */
static enum MHD_Result list_files(dsr1_http_server *s, struct MHD_Connection *c)
{
    enum MHD_Result ret;
    int limit;
    if (!dsr1__http_query_int(s, c, "limit", FILES_LIMIT, 1, FILES_LIMIT, &limit, &ret)) return ret;
    const char *purpose = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "purpose");
    const char *after = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "after");
    const char *order = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "order");
    if (after && !*after) after = NULL;
    if (purpose && !*purpose) purpose = NULL;
    if (order && strcmp(order, "asc") && strcmp(order, "desc"))
        return dsr1__http_send_error(s, c, 400, NULL, "order", NULL,
                                     "order: expected 'asc' or 'desc'");
    bool asc = order && !strcmp(order, "asc");
    /* error files are "batch_error" in the store and "batch_output" here, as OpenAI's */
    const char *store_purpose = purpose && strcmp(purpose, "batch_output") ? purpose : NULL;
    dsr1_file_info *page = malloc(LIST_PAGE * sizeof(*page));
    json_t *data = json_array();
    bool has_more = false;
    dsr1_status st = page && data ? DSR1_OK : dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    if (!st && after) { /* an unknown cursor is an error (404), not an empty page */
        dsr1_file_info f;
        st = dsr1_files_get(s->p.batches, after, &f);
    }
    if (!asc) {
        char cursor[DSR1_BATCH_ID_MAX] = "";
        if (after) snprintf(cursor, sizeof(cursor), "%s", after);
        int got = 0;
        while (!st) {
            int n = 0;
            bool more = false;
            st = dsr1_files_list(s->p.batches, store_purpose, *cursor ? cursor : NULL, LIST_PAGE,
                                 page, &n, &more);
            for (int i = 0; !st && i < n && !has_more; i++) {
                if (!purpose_matches(&page[i], purpose)) continue;
                if (got == limit) {
                    has_more = true; /* one more than asked for */
                } else {
                    json_array_append_new(data, dsr1__http_file_object(&page[i]));
                    got++;
                }
            }
            if (st || has_more || !more || !n) break;
            snprintf(cursor, sizeof(cursor), "%s", page[n - 1].id);
        }
    } else {
        /* a ring of the last limit + 1 files newer than `after` */
        int cap = limit + 1, count = 0, head = 0;
        dsr1_file_info *ring = st ? NULL : malloc((size_t)cap * sizeof(*ring));
        if (!st && !ring) st = dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        char cursor[DSR1_BATCH_ID_MAX] = "";
        bool reached = false;
        while (!st && !reached) {
            int n = 0;
            bool more = false;
            st = dsr1_files_list(s->p.batches, store_purpose, *cursor ? cursor : NULL, LIST_PAGE,
                                 page, &n, &more);
            for (int i = 0; !st && i < n; i++) {
                if (after && !strcmp(page[i].id, after)) {
                    reached = true;
                    break;
                }
                if (!purpose_matches(&page[i], purpose)) continue;
                ring[head] = page[i];
                head = (head + 1) % cap;
                if (count < cap) count++;
            }
            if (st || !more || !n) break;
            snprintf(cursor, sizeof(cursor), "%s", page[n - 1].id);
        }
        has_more = count > limit;
        int take = count > limit ? limit : count;
        /* oldest first: the ring's newest entry is at head - 1, its oldest kept at
         * head - count; the first `take` oldest ones of those nearest to `after` */
        for (int k = 0; !st && k < take; k++) {
            int idx = ((head - 1 - k) % cap + cap) % cap;
            json_array_append_new(data, dsr1__http_file_object(&ring[idx]));
        }
        free(ring);
    }
    free(page);
    if (st) {
        json_decref(data);
        return store_error(s, c, st, "after");
    }
    size_t n = json_array_size(data);
    json_t *o = json_pack("{s:s, s:o, s:b}", "object", "list", "data", data, "has_more", has_more);
    json_object_set_new(o, "first_id",
                        n ? json_incref(json_object_get(json_array_get(data, 0), "id"))
                          : json_null());
    json_object_set_new(o, "last_id",
                        n ? json_incref(json_object_get(json_array_get(data, n - 1), "id"))
                          : json_null());
    return dsr1__http_send_json(s, c, 200, o);
}

static enum MHD_Result file_content(dsr1_http_server *s, struct MHD_Connection *c, const char *id)
{
    int fd = -1;
    int64_t bytes = 0;
    dsr1_status st = dsr1_files_open(s->p.batches, id, &fd, &bytes);
    if (st) return store_error(s, c, st, NULL);
    struct MHD_Response *r = MHD_create_response_from_fd((uint64_t)bytes, fd);
    if (!r) {
        close(fd);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "application/octet-stream");
    dsr1__http_metrics_status(&s->metrics, 200);
    enum MHD_Result ret = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    return ret;
}

enum MHD_Result dsr1__http_files(dsr1_http_server *s, struct MHD_Connection *c, const char *method,
                                 const char *url)
{
    bool get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    bool del = !strcmp(method, "DELETE");
    if (!strcmp(url, "/v1/files")) {
        if (!get)
            return dsr1__http_send_error(s, c, 405, "invalid_request_error", NULL, NULL,
                                         "use GET or POST");
        return list_files(s, c);
    }
    char id[DSR1_BATCH_ID_MAX];
    const char *rest = url + 10;
    const char *slash = strchr(rest, '/');
    size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
    if (!n || n >= sizeof(id) || (slash && strcmp(slash, "/content"))) {
        char msg[300];
        snprintf(msg, sizeof(msg), "no such endpoint: %.8s %.200s", method, url);
        return dsr1__http_send_error(s, c, 404, NULL, NULL, "not_found", msg);
    }
    memcpy(id, rest, n);
    id[n] = '\0';
    if (slash) {
        if (!get)
            return dsr1__http_send_error(s, c, 405, "invalid_request_error", NULL, NULL, "use GET");
        return file_content(s, c, id);
    }
    if (del) {
        dsr1_status st = dsr1_files_delete(s->p.batches, id);
        if (st) return store_error(s, c, st, NULL);
        return dsr1__http_send_json(
            s, c, 200, json_pack("{s:s, s:s, s:b}", "id", id, "object", "file", "deleted", 1));
    }
    if (!get)
        return dsr1__http_send_error(s, c, 405, "invalid_request_error", NULL, NULL,
                                     "use GET or DELETE");
    dsr1_file_info f;
    dsr1_status st = dsr1_files_get(s->p.batches, id, &f);
    if (st) return store_error(s, c, st, NULL);
    return dsr1__http_send_json(s, c, 200, dsr1__http_file_object(&f));
}
