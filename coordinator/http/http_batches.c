/* OpenAI's Batches API (http_internal.h) on the durable batch store (batches.h):
 * POST /v1/batches, GET /v1/batches, GET /v1/batches/{id}, POST /v1/batches/{id}/cancel,
 * over batches of the "openai" format; and that format's codec, by which the store runs
 * them.
 *
 * An item is one line of the batch's input file, {"custom_id", "method": "POST", "url",
 * "body"}. The codec checks it as its endpoint checks a request (http_generate.c's
 * dsr1__http_prepare), runs it as a job with no connection (dsr1__http_job_submit_batch:
 * class DSR1_SCHED_BATCH, scheduler request id the store's) and turns the job's response
 * into a line of the output file ({"id", "custom_id", "response": {"status_code",
 * "request_id", "body"}, "error": null}), or of the error file when the request failed (the
 * same line with the error's status and body), or when it never ran ("response": null,
 * "error": {"code", "message"}). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_internal.h"
#include "log.h"
#include "strbuf.h"

#define FORMAT          "openai"
#define BATCHES_LIMIT   100 /* OpenAI's largest `limit` */
#define BATCHES_DEFAULT 20
#define METADATA_KEYS   16
#define METADATA_KEY    64
#define METADATA_VALUE  512

/* ---- the batch object ---- */

static json_t *time_or_null(int64_t t)
{
    return t ? json_integer((json_int_t)t) : json_null();
}

static json_t *string_or_null(const char *v)
{
    return v && *v ? json_string(v) : json_null();
}

static json_t *batch_object(const dsr1_http_server *s, const dsr1_batch_info *b)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "id", b->id, "object", "batch",
                          "endpoint", b->endpoint, "model", s->model_name, "input_file_id",
                          b->input_file_id, "completion_window", b->completion_window, "status",
                          dsr1_batch_state_str(b->state));
    if (!o) return NULL;
    json_t *errors = json_null();
    if (b->errors_json) {
        json_t *data = json_loads(b->errors_json, 0, NULL);
        if (json_is_array(data))
            errors = json_pack("{s:s, s:o}", "object", "list", "data", data);
        else
            json_decref(data);
    }
    json_object_set_new(o, "errors", errors ? errors : json_null());
    json_object_set_new(o, "output_file_id", string_or_null(b->output_file_id));
    json_object_set_new(o, "error_file_id", string_or_null(b->error_file_id));
    json_object_set_new(o, "created_at", json_integer((json_int_t)b->created_at));
    json_object_set_new(o, "in_progress_at", time_or_null(b->in_progress_at));
    json_object_set_new(o, "expires_at", time_or_null(b->expires_at));
    json_object_set_new(o, "finalizing_at", time_or_null(b->finalizing_at));
    json_object_set_new(o, "completed_at", time_or_null(b->completed_at));
    json_object_set_new(o, "failed_at", time_or_null(b->failed_at));
    json_object_set_new(o, "expired_at", time_or_null(b->expired_at));
    json_object_set_new(o, "cancelling_at", time_or_null(b->cancelling_at));
    json_object_set_new(o, "cancelled_at", time_or_null(b->cancelled_at));
    json_object_set_new(o, "request_counts",
                        json_pack("{s:i, s:i, s:i}", "total", b->total, "completed", b->completed,
                                  "failed", b->failed));
    json_t *meta = b->metadata_json ? json_loads(b->metadata_json, 0, NULL) : NULL;
    json_object_set_new(o, "metadata", json_is_object(meta) ? meta : json_null());
    if (meta && !json_is_object(meta)) json_decref(meta);
    json_object_set_new(
        o, "usage",
        json_pack("{s:I, s:{s:I}, s:I, s:{s:I}, s:I}", "input_tokens", (json_int_t)b->prompt_tokens,
                  "input_tokens_details", "cached_tokens", (json_int_t)b->cached_tokens,
                  "output_tokens", (json_int_t)b->completion_tokens, "output_tokens_details",
                  "reasoning_tokens", (json_int_t)b->reasoning_tokens, "total_tokens",
                  (json_int_t)(b->prompt_tokens + b->completion_tokens)));
    return o;
}

static enum MHD_Result send_batch(dsr1_http_server *s, struct MHD_Connection *c, dsr1_batch_info *b)
{
    json_t *o = batch_object(s, b);
    dsr1_batch_info_clear(b);
    return dsr1__http_send_json(s, c, 200, o);
}

static enum MHD_Result store_error(dsr1_http_server *s, struct MHD_Connection *c, dsr1_status st,
                                   const char *param)
{
    int status = dsr1__http_status_of(st);
    return dsr1__http_send_error(s, c, status, NULL, status == 400 ? param : NULL,
                                 status == 404 ? "not_found" : NULL, dsr1_errmsg());
}

static enum MHD_Result no_batch(dsr1_http_server *s, struct MHD_Connection *c, const char *id)
{
    char msg[300];
    snprintf(msg, sizeof(msg), "no such batch: '%.200s'", id);
    return dsr1__http_send_error(s, c, 404, NULL, NULL, "not_found", msg);
}

/* ---- the endpoints ---- */

static enum MHD_Result bad(dsr1_http_server *s, struct MHD_Connection *c, const char *param,
                           const char *msg)
{
    return dsr1__http_send_error(s, c, 400, NULL, param, NULL, msg);
}

/* metadata: null, or an object of at most 16 string values (keys up to 64 characters,
 * values up to 512), as OpenAI's. */
static const char *metadata_problem(const json_t *m)
{
    if (!m || json_is_null(m)) return NULL;
    if (!json_is_object(m)) return "metadata: expected an object of strings, or null";
    if (json_object_size(m) > METADATA_KEYS) return "metadata: at most 16 keys";
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)m, k, v)
    {
        if (strlen(k) > METADATA_KEY) return "metadata: keys have at most 64 characters";
        if (!json_is_string(v)) return "metadata: values must be strings";
        if (json_string_length(v) > METADATA_VALUE)
            return "metadata: values have at most 512 characters";
    }
    return NULL;
}

static enum MHD_Result create(dsr1_http_server *s, struct MHD_Connection *c, const char *body,
                              size_t len)
{
    json_error_t err;
    json_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &err);
    if (!json_is_object(o)) {
        char msg[300];
        snprintf(msg, sizeof(msg), "the body is not a JSON object: %s", o ? "" : err.text);
        json_decref(o);
        return bad(s, c, NULL, msg);
    }
    const char *input = json_string_value(json_object_get(o, "input_file_id"));
    const char *endpoint = json_string_value(json_object_get(o, "endpoint"));
    json_t *window = json_object_get(o, "completion_window");
    json_t *meta = json_object_get(o, "metadata");
    const char *problem = NULL, *param = NULL;
    if (!input || !*input)
        problem = "input_file_id: a required string", param = "input_file_id";
    else if (!endpoint)
        problem = "endpoint: a required string", param = "endpoint";
    else if (strcmp(endpoint, "/v1/chat/completions") && strcmp(endpoint, "/v1/completions"))
        problem = "endpoint: this server runs batches of '/v1/chat/completions' and "
                  "'/v1/completions' only",
        param = "endpoint";
    else if (!json_is_string(window))
        problem = "completion_window: a required string, e.g. '24h'", param = "completion_window";
    else if ((problem = metadata_problem(meta)))
        param = "metadata";
    if (problem) {
        enum MHD_Result r = bad(s, c, param, problem);
        json_decref(o);
        return r;
    }
    dsr1_file_info f;
    dsr1_status st = dsr1_files_get(s->p.batches, input, &f);
    if (!st && strcmp(f.purpose, "batch"))
        st = dsr1_error(DSR1_ERR_INVALID_ARG,
                        "input_file_id: file '%s' has purpose '%s'; a batch's input file is "
                        "uploaded with purpose 'batch'",
                        input, f.purpose);
    char *meta_text = meta && json_is_object(meta) ? json_dumps(meta, JSON_COMPACT) : NULL;
    dsr1_batch_create cr = {
        .format = FORMAT,
        .endpoint = endpoint,
        .completion_window = json_string_value(window),
        .metadata_json = meta_text,
    };
    dsr1_batch_info info;
    bool created = false;
    if (!st) st = dsr1_batches_create_from_file(s->p.batches, &cr, input, &info, &created);
    free(meta_text);
    json_decref(o);
    if (st) return store_error(s, c, st, "input_file_id");
    return send_batch(s, c, &info);
}

static enum MHD_Result list(dsr1_http_server *s, struct MHD_Connection *c)
{
    enum MHD_Result ret;
    int limit;
    if (!dsr1__http_query_int(s, c, "limit", BATCHES_DEFAULT, 1, BATCHES_LIMIT, &limit, &ret))
        return ret;
    const char *after = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "after");
    if (after && !*after) after = NULL;
    if (after) { /* an unknown cursor (or a gRPC batch's) is an error, not an empty page */
        dsr1_batch_info a;
        dsr1_status st = dsr1_batches_get(s->p.batches, after, &a);
        bool ours = !st && !strcmp(a.format, FORMAT);
        if (!st) dsr1_batch_info_clear(&a);
        if (st && st != DSR1_ERR_NOT_FOUND) return store_error(s, c, st, "after");
        if (!ours) return no_batch(s, c, after);
    }
    dsr1_batch_info *page = calloc((size_t)limit, sizeof(*page));
    if (!page) return dsr1__http_send_error(s, c, 500, NULL, NULL, NULL, "out of memory");
    int n = 0;
    bool more = false;
    dsr1_status st = dsr1_batches_list(s->p.batches, FORMAT, after, limit, page, &n, &more);
    if (st) {
        free(page);
        return store_error(s, c, st, "after");
    }
    json_t *data = json_array();
    for (int i = 0; i < n; i++) {
        json_array_append_new(data, batch_object(s, &page[i]));
        dsr1_batch_info_clear(&page[i]);
    }
    json_t *o = json_pack("{s:s, s:o, s:b, s:o, s:o}", "object", "list", "data", data, "has_more",
                          more, "first_id", n ? json_string(page[0].id) : json_null(), "last_id",
                          n ? json_string(page[n - 1].id) : json_null());
    free(page);
    return dsr1__http_send_json(s, c, 200, o);
}

enum MHD_Result dsr1__http_batches(dsr1_http_server *s, struct MHD_Connection *c,
                                   const char *method, const char *url, const char *body,
                                   size_t len)
{
    bool get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    bool post = !strcmp(method, "POST");
    if (!strcmp(url, "/v1/batches")) {
        if (post) return create(s, c, body, len);
        if (get) return list(s, c);
        return dsr1__http_send_error(s, c, 405, "invalid_request_error", NULL, NULL,
                                     "use GET or POST");
    }
    char id[DSR1_BATCH_ID_MAX];
    const char *rest = url + 12;
    const char *slash = strchr(rest, '/');
    size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
    if (!n || n >= sizeof(id) || (slash && strcmp(slash, "/cancel"))) {
        char msg[300];
        snprintf(msg, sizeof(msg), "no such endpoint: %.8s %.200s", method, url);
        return dsr1__http_send_error(s, c, 404, NULL, NULL, "not_found", msg);
    }
    memcpy(id, rest, n);
    id[n] = '\0';
    if (slash ? !post : !get)
        return dsr1__http_send_error(s, c, 405, "invalid_request_error", NULL, NULL,
                                     slash ? "use POST" : "use GET");
    dsr1_batch_info info;
    dsr1_status st = dsr1_batches_get(s->p.batches, id, &info);
    if (st == DSR1_ERR_NOT_FOUND) return no_batch(s, c, id);
    if (st) return store_error(s, c, st, NULL);
    if (strcmp(info.format, FORMAT)) { /* a gRPC batch: not one of this API's */
        dsr1_batch_info_clear(&info);
        return no_batch(s, c, id);
    }
    if (slash) {
        dsr1_batch_info_clear(&info);
        st = dsr1_batches_cancel(s->p.batches, id, &info);
        if (st) return store_error(s, c, st, NULL);
    }
    return send_batch(s, c, &info);
}

/* ---- the "openai" codec ---- */

/* A started item, the end_ctx of its job. */
typedef struct {
    dsr1_http_server *s;
    uint64_t key;
    char batch_id[DSR1_BATCH_ID_MAX];
    int index;
    char rid[DSR1_BATCH_ID_MAX + 16];
    char *custom_id;
} batch_item;

/* A line's parts: {"custom_id": string, "method": "POST", "url": endpoint, "body": {...}}.
 * Returns the parsed line (the caller decrefs) or NULL with the reason recorded; custom_id
 * is written when it can be read. */
static json_t *parse_line(const char *endpoint, const uint8_t *req, size_t len, char *custom_id,
                          size_t cap, dsr1_http_kind *kind, char **body_text)
{
    if (custom_id && cap) custom_id[0] = '\0';
    *body_text = NULL;
    json_error_t err;
    json_t *o = json_loadb((const char *)req, len, JSON_REJECT_DUPLICATES, &err);
    if (!json_is_object(o)) {
        json_decref(o);
        dsr1_error(DSR1_ERR_INVALID_ARG, "not a JSON object%s%s", o ? "" : ": ", o ? "" : err.text);
        return NULL;
    }
    json_t *cid = json_object_get(o, "custom_id");
    if (json_is_string(cid) && custom_id && cap)
        snprintf(custom_id, cap, "%s", json_string_value(cid));
    const char *method = json_string_value(json_object_get(o, "method"));
    const char *url = json_string_value(json_object_get(o, "url"));
    json_t *body = json_object_get(o, "body");
    char why[200] = "";
    if (!json_is_string(cid))
        snprintf(why, sizeof(why), "custom_id: a required string");
    else if (!method || strcmp(method, "POST"))
        snprintf(why, sizeof(why), "method: must be \"POST\"");
    else if (!url || strcmp(url, endpoint))
        snprintf(why, sizeof(why), "url: must be the batch's endpoint, \"%.100s\"", endpoint);
    else if (!json_is_object(body))
        snprintf(why, sizeof(why), "body: a required object (the request)");
    if (*why) {
        json_decref(o);
        dsr1_error(DSR1_ERR_INVALID_ARG, "%s", why);
        return NULL;
    }
    *kind = !strcmp(endpoint, "/v1/chat/completions") ? DSR1_HTTP_CHAT : DSR1_HTTP_COMPLETION;
    if (!(*body_text = json_dumps(body, JSON_COMPACT))) {
        json_decref(o);
        dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        return NULL;
    }
    return o;
}

/* A line's request, checked and prepared as its endpoint prepares one (custom_id: see
 * parse_line). */
static dsr1_status prepare_line(dsr1_http_server *s, const char *endpoint, const uint8_t *req,
                                size_t len, char *custom_id, size_t cap, http_prepared **p)
{
    dsr1_http_kind kind;
    char *text;
    json_t *o = parse_line(endpoint, req, len, custom_id, cap, &kind, &text);
    if (!o) return DSR1_ERR_INVALID_ARG;
    http_fail f;
    int status = dsr1__http_prepare(s, kind, text, strlen(text), true, p, &f);
    free(text);
    json_decref(o);
    if (status)
        return dsr1_error(status == 500 ? DSR1_ERR_NOMEM : DSR1_ERR_INVALID_ARG, "body: %s",
                          f.message);
    return DSR1_OK;
}

static dsr1_status codec_check(void *ctx, const char *endpoint, const uint8_t *req, size_t len,
                               char *custom_id, size_t cap)
{
    dsr1_http_server *s = ctx;
    http_prepared *p;
    dsr1_status st = prepare_line(s, endpoint, req, len, custom_id, cap, &p);
    if (st) return st;
    dsr1__http_prepared_free(s, p);
    return DSR1_OK;
}

static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* "batch_req_<16 hex of the batch id><8 hex of the index>": the same on every run. */
static void line_id(const char *batch_id, int index, char *out, size_t cap)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char *p = batch_id; *p; p++) h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
    snprintf(out, cap, "batch_req_%016" PRIx64 "%08x", mix(h), (unsigned)index);
}

/* The JSON text of a string (custom ids are the client's). */
static void add_string(dsr1_strbuf *b, const char *v)
{
    json_t *j = json_string(v ? v : "");
    char *t = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    dsr1_strbuf_str(b, t ? t : "\"\"");
    free(t);
    json_decref(j);
}

/* The job has ended: its response becomes the item's line. */
static void item_end(http_job *j)
{
    batch_item *it = j->end_ctx;
    dsr1_http_server *s = it->s;
    pthread_mutex_lock(&j->mu);
    int status = j->status;
    const char *body = j->out ? j->out : "";
    bool aborted = false;
    dsr1_status why = j->fail_st; /* a choice that ended in error says why (the store may retry) */
    for (int i = 0; i < j->n; i++) {
        aborted |= j->ch[i].finish == DSR1_FINISH_ABORT;
        if (j->ch[i].finish == DSR1_FINISH_ERROR && !why) why = j->ch[i].status;
    }
    dsr1_batch_result r = {
        .error = status != 200,
        .aborted = aborted,
        .status = status != 200 ? why : DSR1_OK,
        .prompt_tokens = j->ch[0].prompt_tokens,
        .cached_tokens = j->ch[0].cached_tokens,
    };
    for (int i = 0; i < j->n; i++) {
        r.completion_tokens += j->ch[i].completion_tokens;
        r.reasoning_tokens += dsr1__http_reasoning_tokens(&j->ch[i], j->ch[i].completion_tokens);
    }
    char id[64];
    line_id(it->batch_id, it->index, id, sizeof(id));
    dsr1_strbuf b = {0};
    dsr1_strbuf_fmt(&b, "{\"id\":\"%s\",\"custom_id\":", id);
    add_string(&b, it->custom_id);
    dsr1_strbuf_fmt(&b, ",\"response\":{\"status_code\":%d,\"request_id\":", status ? status : 500);
    add_string(&b, it->rid);
    dsr1_strbuf_str(&b, ",\"body\":");
    dsr1_strbuf_str(&b, *body ? body : "{}");
    dsr1_strbuf_str(&b, "},\"error\":null}");
    pthread_mutex_unlock(&j->mu);
    if (b.oom) {
        free(b.p);
        b = (dsr1_strbuf){0};
        dsr1_strbuf_fmt(&b,
                        "{\"id\":\"%s\",\"custom_id\":null,\"response\":null,\"error\":{\"code\":"
                        "\"server_error\",\"message\":\"out of memory\"}}",
                        id);
        r.error = true;
    }
    r.bytes = (const uint8_t *)(b.p ? b.p : "");
    r.len = b.p ? b.n : 0;
    dsr1_batches_item_done(s->p.batches, it->key, &r);
    free(b.p);
    free(it->custom_id);
    free(it);
    j->end_ctx = NULL;
    dsr1__http_job_unref(j); /* the item's reference */
}

static dsr1_status codec_start(void *ctx, const dsr1_batch_item_ref *ref)
{
    dsr1_http_server *s = ctx;
    pthread_mutex_lock(&s->mu);
    bool stopping = s->stopping;
    pthread_mutex_unlock(&s->mu);
    if (stopping) /* the store is about to close: the item stays pending */
        return dsr1_error(DSR1_ERR_BUSY, "the HTTP server is shutting down");
    http_prepared *p;
    dsr1_status st = prepare_line(s, ref->endpoint, ref->req, ref->len, NULL, 0, &p);
    if (st) return st;
    batch_item *it = calloc(1, sizeof(*it));
    if (!it || !(it->custom_id = strdup(ref->custom_id ? ref->custom_id : ""))) {
        free(it);
        dsr1__http_prepared_free(s, p);
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    }
    it->s = s;
    it->key = ref->key;
    it->index = ref->index;
    snprintf(it->batch_id, sizeof(it->batch_id), "%s", ref->batch_id);
    snprintf(it->rid, sizeof(it->rid), "%s", ref->request_id);
    st = dsr1__http_job_submit_batch(s, p, ref->request_id, item_end, it);
    dsr1__http_prepared_free(s, p);
    if (st) {
        free(it->custom_id);
        free(it);
    }
    return st;
}

static void codec_abort(void *ctx, const char *request_id)
{
    dsr1_http_server *s = ctx;
    http_job *j = NULL;
    pthread_mutex_lock(&s->mu);
    for (http_job *k = s->jobs; k; k = k->next)
        if (k->batch && !strcmp(k->ch[0].rid, request_id)) {
            if (dsr1__http_job_ref_live(k)) j = k;
            break;
        }
    pthread_mutex_unlock(&s->mu);
    if (!j) return;
    pthread_mutex_lock(&j->mu);
    j->gone = true; /* choices not yet submitted never will be */
    pthread_mutex_unlock(&j->mu);
    dsr1__http_job_abort(j);
    dsr1__http_job_unref(j);
}

static dsr1_status codec_error_result(void *ctx, const dsr1_batch_item_ref *ref, const char *code,
                                      const char *message, int line, uint8_t **out, size_t *len)
{
    (void)ctx;
    char id[64];
    line_id(ref->batch_id, ref->index, id, sizeof(id));
    char *msg = NULL;
    dsr1_strbuf m = {0};
    if (line > 0) dsr1_strbuf_fmt(&m, "line %d: ", line);
    dsr1_strbuf_str(&m, message ? message : "");
    msg = m.p;
    dsr1_strbuf b = {0};
    dsr1_strbuf_fmt(&b, "{\"id\":\"%s\",\"custom_id\":", id);
    if (ref->custom_id && *ref->custom_id)
        add_string(&b, ref->custom_id);
    else
        dsr1_strbuf_str(&b, "null");
    dsr1_strbuf_str(&b, ",\"response\":null,\"error\":{\"code\":");
    add_string(&b, code ? code : "server_error");
    dsr1_strbuf_str(&b, ",\"message\":");
    add_string(&b, msg ? msg : "");
    dsr1_strbuf_str(&b, "}}");
    free(msg);
    if (b.oom || m.oom) {
        free(b.p);
        return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    }
    *out = (uint8_t *)b.p;
    *len = b.n;
    return DSR1_OK;
}

dsr1_status dsr1__http_batches_register(dsr1_http_server *s)
{
    const dsr1_batch_codec codec = {
        .format = FORMAT,
        .ctx = s,
        .output_files = true,
        .check = codec_check,
        .start = codec_start,
        .abort = codec_abort,
        .error_result = codec_error_result,
    };
    return dsr1_batches_register(s->p.batches, &codec);
}
