/* Durable batch jobs: one store for files, batches, their items and results, shared by the
 * gRPC batch RPCs and OpenAI's Files and Batches API, and the runner that feeds batch items
 * to the scheduler below interactive traffic.
 *
 * Storage. One SQLite database, STATE_DIR/dsr1.db, in WAL mode with synchronous=FULL,
 * marked as ours (PRAGMA application_id) and versioned (PRAGMA user_version, migrated on
 * open). File contents (uploaded inputs, output and error files) live in STATE_DIR/files/,
 * each written to STATE_DIR/tmp/ first, fsync'd, renamed into place and the directory
 * fsync'd before its row is committed; the database refers to them by id. The state
 * directory is created with mode 0700 and locked (flock on STATE_DIR/lock) while open: a
 * second process on the same directory is refused with the holder's pid. Opening refuses, with a
 * message naming the path, a database that is not ours or is corrupt, a newer schema, and a file in
 * files/ that the database does not know or whose size differs from its row.
 *
 * Durability. An item's result is committed (group commit: results arriving together share
 * one transaction and one fsync) before anything reports it: counts, subscribers, output
 * files. Nothing acknowledged can be lost by a crash. On open, every unfinished batch
 * resumes: finished items are never run again, items that were running are run again from
 * their prompt (a seeded item then gives the same tokens: results are batch-invariant), a
 * batch that was validating is validated again, one that was finalizing is finalized again.
 * A write that fails (disk full, I/O error) fails the batch it belongs to with the error's
 * message and leaves the store consistent; it never corrupts it.
 *
 * Formats. The store does not know what an item is: each frontend registers a codec for
 * the items it creates ("grpc": packed BatchItem messages whose results are packed
 * BatchItemResult; "openai": lines of an OpenAI batch input file whose results are lines
 * of its output or error file). The codec checks items when a batch is created, starts
 * them in the scheduler (class DSR1_SCHED_BATCH) and hands back their result bytes.
 *
 * Scheduling. The runner keeps at most `window` items of all batches in the scheduler and
 * at most `batch_window` of one batch (or the batch's own max_running); batches run by
 * priority, higher first, and in creation order among equal priorities: a batch's pending
 * items start before those of every batch after it in that order (a batch created later
 * with a higher priority takes the window as its items finish; running items are never
 * preempted). Pending items are read from the database a page at a time, so
 * memory does not grow with the size of a batch. While the scheduler cannot serve (the
 * worker grid suspended until lost workers are replaced: submissions refused with
 * DSR1_ERR_UNAVAILABLE) no item fails for it: the refused item waits and is tried again
 * every second (at most one warning per batch and outage), and an item that was running and ended
 * with DSR1_ERR_UNAVAILABLE or DSR1_ERR_LOST goes back to pending. A batch past its
 * completion window is `expired` all the same: its running items are aborted, its unfinished
 * items get an error result (code batch_expired), its finished results are kept. Finished batches
 * and files are deleted `retention_s` after they finished / were created.
 *
 * Threads. Every function is safe from any thread. Codec callbacks and subscriber
 * callbacks run on the store's threads and must not block (they may call
 * dsr1_batches_item_done). */
#ifndef DSR1_BATCHES_H
#define DSR1_BATCHES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "scheduler.h"
#include "status.h"

typedef struct dsr1_batches dsr1_batches;

#define DSR1_BATCHES_DEFAULT_RETENTION_S (30LL * 24 * 3600)
#define DSR1_BATCH_ID_MAX                136 /* ids, with their NUL */

/* ---- the store ---- */

typedef struct {
    const char *state_dir;  /* created (0700) if missing */
    int64_t retention_s;    /* 0: DSR1_BATCHES_DEFAULT_RETENTION_S; < 0: keep forever */
    int window;             /* items of all batches in the scheduler at once (0: 256) */
    int batch_window;       /* items of one batch at once (0 or more than window: window) */
    int64_t max_file_bytes; /* largest uploaded file (0: 512 MiB) */
    int max_items;          /* items of one batch (0: 1,000,000) */
} dsr1_batches_params;

/* Opens (creating or migrating) the store, checks it as described above, and prepares the
 * unfinished batches to resume. Nothing runs until dsr1_batches_start. */
dsr1_status dsr1_batches_open(const dsr1_batches_params *p, dsr1_batches **out);

/* A codec: how items of one format are checked, run and turned into results. */
typedef struct dsr1_batch_codec dsr1_batch_codec;

/* An item handed to a codec's start. Borrowed for the call only. */
typedef struct {
    uint64_t key; /* pass to dsr1_batches_item_done */
    const char *batch_id;
    const char *endpoint;   /* the batch's endpoint ("" for grpc) */
    int index;              /* position in the batch, from 0 */
    const char *custom_id;  /* "" when the format has none */
    const char *request_id; /* "<batch_id>/<index>": the scheduler request id to use */
    const uint8_t *req;     /* the item as stored (NULL, len 0, in error_result calls) */
    size_t len;
} dsr1_batch_item_ref;

/* What a finished item gives back. bytes are copied. */
typedef struct {
    bool error;   /* counted as failed; an "openai" item goes to the error file */
    bool aborted; /* the scheduler aborted it (finish ABORT) */
    /* An item in error: why (dsr1_sched_event.status), else DSR1_OK. DSR1_ERR_UNAVAILABLE or
     * DSR1_ERR_LOST (the worker grid could not serve it): not a result; the item goes back to
     * pending and runs again when the grid serves (bytes are ignored). */
    dsr1_status status;
    const uint8_t *bytes;
    size_t len;
    int prompt_tokens, completion_tokens, cached_tokens;
    int reasoning_tokens; /* of completion_tokens, drawn inside the reasoning */
} dsr1_batch_result;

struct dsr1_batch_codec {
    const char *format; /* "grpc", "openai" */
    void *ctx;
    /* Whether finished batches get an output and an error file (OpenAI's
     * output_file_id/error_file_id): the results, in item order, split by .error. */
    bool output_files;
    /* Checks one item when its batch is created (from the batch's input file or a
     * dsr1_batch_writer). Returns 0, or an error whose dsr1_errmsg() is the reason. Writes
     * the item's custom_id (NUL-terminated, "" if none) to custom_id (cap bytes), also
     * when the item is invalid if it can be read. */
    dsr1_status (*check)(void *ctx, const char *endpoint, const uint8_t *req, size_t len,
                         char *custom_id, size_t cap);
    /* Submits the item to the scheduler (dsr1_sched_request.cls = DSR1_SCHED_BATCH, id =
     * ref->request_id). Returns 0 and later calls dsr1_batches_item_done(ref->key) exactly
     * once, from any thread; or DSR1_ERR_BUSY (tried again shortly); or DSR1_ERR_UNAVAILABLE
     * (the scheduler cannot serve now, e.g. the worker grid is suspended: the item stays
     * pending and is tried again every second); or another error, which finishes the item
     * with the result made by error_result(code "server_error"). */
    dsr1_status (*start)(void *ctx, const dsr1_batch_item_ref *ref);
    /* Aborts a started item (cancel, expiry, shutdown); its done call follows. */
    void (*abort)(void *ctx, const char *request_id);
    /* The result bytes of an item that did not run or failed before running: invalid at
     * creation (code "invalid_request", line = its 1-based line in the input file, else 0),
     * cancelled ("batch_cancelled"), expired ("batch_expired"), could not start
     * ("server_error"). *out is malloc'd; the store frees it. */
    dsr1_status (*error_result)(void *ctx, const dsr1_batch_item_ref *ref, const char *code,
                                const char *message, int line, uint8_t **out, size_t *len);
};

/* Registers a codec (copied; its ctx must outlive the store). Batches of a format without
 * a codec wait (logged once) until one is registered. */
dsr1_status dsr1_batches_register(dsr1_batches *b, const dsr1_batch_codec *c);

/* Starts the runner, resuming the unfinished batches. */
dsr1_status dsr1_batches_start(dsr1_batches *b);

/* Stops the runner: aborts the started items without recording them (they stay unfinished
 * and run again on the next open), waits for their done calls, commits what is pending and
 * closes the store. Call before the scheduler is destroyed and after the frontends stopped
 * creating batches. Subscriptions still open get no more calls (no end call either) and
 * must still be unsubscribed (which then only frees them). */
void dsr1_batches_close(dsr1_batches *b);

/* A started item has finished. Called once per started item, from any thread. */
void dsr1_batches_item_done(dsr1_batches *b, uint64_t key, const dsr1_batch_result *r);

/* ---- files ---- */

typedef struct {
    char id[DSR1_BATCH_ID_MAX];
    char filename[256];
    char purpose[32]; /* "batch", "batch_output", ... */
    int64_t bytes;
    int64_t created_at, expires_at; /* unix seconds; expires_at: when retention deletes it,
                                     * 0: never */
} dsr1_file_info;

typedef struct dsr1_file_upload dsr1_file_upload;

/* Uploads a file a piece at a time (never held whole in memory). write fails with
 * DSR1_ERR_RANGE past max_file_bytes and DSR1_ERR_IO with the system's reason (e.g. "No
 * space left on device") naming the state directory; after a failure only abort. commit
 * makes it durable and visible and fills *out. */
dsr1_status dsr1_file_upload_begin(dsr1_batches *b, const char *filename, const char *purpose,
                                   dsr1_file_upload **out);
dsr1_status dsr1_file_upload_write(dsr1_file_upload *u, const void *data, size_t len);
dsr1_status dsr1_file_upload_commit(dsr1_file_upload *u, dsr1_file_info *out);
void dsr1_file_upload_abort(dsr1_file_upload *u);

/* DSR1_ERR_NOT_FOUND when no such file. */
dsr1_status dsr1_files_get(dsr1_batches *b, const char *id, dsr1_file_info *out);
/* Files, newest first, after the file `after` (NULL: from the newest); purpose NULL: all.
 * Fills up to `limit` entries of out; *has_more says whether more follow. */
dsr1_status dsr1_files_list(dsr1_batches *b, const char *purpose, const char *after, int limit,
                            dsr1_file_info *out, int *n, bool *has_more);
/* A read-only descriptor of the file's content (the caller closes it) and its size. */
dsr1_status dsr1_files_open(dsr1_batches *b, const char *id, int *fd, int64_t *bytes);
/* Deletes a file. A batch that is reading it as its input keeps its own items. */
dsr1_status dsr1_files_delete(dsr1_batches *b, const char *id);

/* ---- batches ---- */

typedef enum {
    DSR1_BATCH_VALIDATING = 0,
    DSR1_BATCH_IN_PROGRESS = 1,
    DSR1_BATCH_FINALIZING = 2,
    DSR1_BATCH_COMPLETED = 3,
    DSR1_BATCH_FAILED = 4,
    DSR1_BATCH_EXPIRED = 5,
    DSR1_BATCH_CANCELLING = 6,
    DSR1_BATCH_CANCELLED = 7,
} dsr1_batch_state;

/* OpenAI's names: "validating", "in_progress", ... */
const char *dsr1_batch_state_str(dsr1_batch_state s);
bool dsr1_batch_state_final(dsr1_batch_state s); /* completed, failed, expired, cancelled */

typedef struct {
    char id[DSR1_BATCH_ID_MAX];
    char format[16];
    char endpoint[64];
    char input_file_id[DSR1_BATCH_ID_MAX]; /* "" when items came from a writer */
    char output_file_id[DSR1_BATCH_ID_MAX], error_file_id[DSR1_BATCH_ID_MAX]; /* "" if none */
    dsr1_batch_state state;
    char completion_window[16]; /* as given, e.g. "24h"; "" none */
    /* unix seconds; 0: not (yet) */
    int64_t created_at, in_progress_at, finalizing_at, completed_at, failed_at, expired_at,
        cancelling_at, cancelled_at, expires_at;
    int total, completed, failed; /* request_counts: items; finished ok; finished in error */
    int running;                  /* in the scheduler now */
    int64_t prompt_tokens, completion_tokens, cached_tokens;
    int64_t reasoning_tokens; /* of completion_tokens */
    /* Malloc'd JSON text or NULL; dsr1_batch_info_clear frees them. metadata: the object
     * given at creation. errors: why the batch failed or which lines were invalid, as
     * OpenAI's errors.data: [{"code", "message", "line"}]. */
    char *metadata_json, *errors_json;
    int priority;    /* as created: higher runs first */
    int max_running; /* as created: items of this batch at once (0: the store's batch_window) */
} dsr1_batch_info;

void dsr1_batch_info_clear(dsr1_batch_info *i);

typedef struct {
    const char *id;       /* NULL or "": a new id "batch_<32 hex>"; else a client's id */
    const char *format;   /* a registered codec's format */
    const char *endpoint; /* "/v1/chat/completions", "/v1/completions"; "" for grpc */
    /* "24h", "90m", "7d" ... (a number and one of s m h d); NULL or "": none */
    const char *completion_window;
    const char *metadata_json; /* NULL or a JSON object (at most 16 keys, as OpenAI) */
    /* With a client's id: a hash of the request without its id. Creating an id that
     * exists with the same hash returns the existing batch (*created false); with another
     * hash, DSR1_ERR_EXISTS. */
    uint64_t request_hash;
    /* Higher runs first (any int; 0 by default); equal priorities run in creation order. */
    int priority;
    /* Items of this batch in the scheduler at once: 0 (or more than the store's
     * batch_window): the store's batch_window; negative is refused. */
    int max_running;
} dsr1_batch_create;

/* Creates a batch over an uploaded file's lines (purpose "batch"): it is `validating`
 * while its lines are read and checked by the codec in the background (a malformed line
 * becomes an error result naming its line number; the others run; a file with no valid
 * line fails the batch), then `in_progress`. Returns at once with the batch's info. */
dsr1_status dsr1_batches_create_from_file(dsr1_batches *b, const dsr1_batch_create *c,
                                          const char *input_file_id, dsr1_batch_info *out,
                                          bool *created);

/* Creates a batch from items given one at a time (the gRPC upload): begin, add each item
 * (checked by the codec: an invalid item is DSR1_ERR_INVALID_ARG with the codec's message
 * prefixed by "item N: ", and nothing is created), then commit, which makes the batch
 * visible and runnable at once, or abort. Items are written to the database as they come,
 * in transactions of many items. */
typedef struct dsr1_batch_writer dsr1_batch_writer;
dsr1_status dsr1_batch_writer_begin(dsr1_batches *b, const dsr1_batch_create *c,
                                    dsr1_batch_writer **out);
dsr1_status dsr1_batch_writer_add(dsr1_batch_writer *w, const uint8_t *req, size_t len);
/* On DSR1_ERR_EXISTS with created false and out filled: the same batch was created before
 * (idempotent resubmission); the writer is freed either way. (A client's id that another
 * request created is refused by begin with DSR1_ERR_EXISTS.) */
dsr1_status dsr1_batch_writer_commit(dsr1_batch_writer *w, dsr1_batch_info *out, bool *created);
void dsr1_batch_writer_abort(dsr1_batch_writer *w);

/* DSR1_ERR_NOT_FOUND when no such batch. */
dsr1_status dsr1_batches_get(dsr1_batches *b, const char *id, dsr1_batch_info *out);
/* Batches newest first after the batch `after` (NULL: from the newest), format NULL: all.
 * Each out[i] must be cleared by the caller. */
dsr1_status dsr1_batches_list(dsr1_batches *b, const char *format, const char *after, int limit,
                              dsr1_batch_info *out, int *n, bool *has_more);
/* Cancels a batch: `cancelling` while its started items are aborted, then `cancelled`, its
 * unfinished items given error results (code batch_cancelled). A final batch is returned
 * as it is. */
dsr1_status dsr1_batches_cancel(dsr1_batches *b, const char *id, dsr1_batch_info *out);

/* ---- results ---- */

/* One committed result. seq numbers a batch's results 0, 1, ... in the order they were
 * committed; a reader resumes from a seq. Borrowed for the call only. */
typedef struct {
    int64_t seq;
    int index;
    const char *custom_id;
    bool error;
    const uint8_t *bytes;
    size_t len;
} dsr1_batch_result_row;

/* Called for each result; return false to stop. `end` calls (row NULL) say the batch is
 * final and every result was given. */
typedef bool (*dsr1_batch_result_fn)(void *ctx, const dsr1_batch_result_row *row);

/* Reads the committed results with seq >= from_seq, in seq order, then returns (no end
 * call: dsr1_batches_get says whether the batch is final). */
dsr1_status dsr1_batches_results(dsr1_batches *b, const char *id, int64_t from_seq,
                                 dsr1_batch_result_fn fn, void *ctx);

/* Like dsr1_batches_results, then keeps calling fn (from the store's thread) for each new
 * result as it is committed, and once with row NULL when the batch is final, after which
 * the subscription is over (unsubscribe still frees it). Unsubscribe waits for a call in
 * progress and guarantees no call after it returns. */
typedef struct dsr1_batch_sub dsr1_batch_sub;
dsr1_status dsr1_batches_subscribe(dsr1_batches *b, const char *id, int64_t from_seq,
                                   dsr1_batch_result_fn fn, void *ctx, dsr1_batch_sub **out);
void dsr1_batches_unsubscribe(dsr1_batch_sub *sub);

/* ---- information ---- */

typedef struct {
    int batches_active;                 /* not final */
    int items_running;                  /* in the scheduler */
    int64_t items_pending;              /* waiting to run, all batches */
    int64_t results_committed, commits; /* since open */
    int64_t files, file_bytes;
} dsr1_batches_stats;

void dsr1_batches_get_stats(dsr1_batches *b, dsr1_batches_stats *out);

#endif
