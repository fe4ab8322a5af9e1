/* The batch store's private state, shared by its files: store.c (open, schema, checks,
 * connections, close), files.c (uploads and the Files API), batches.c (creation, the
 * validator, get/list/cancel), runner.c (feeding items, the group-commit writer, expiry,
 * endings, output files, retention) and results.c (reads and subscriptions).
 *
 * Locks, always taken in this order and never the other way round:
 *   wmu  the write connection (every write transaction, and the seq numbers it hands out);
 *   dmu  deliveries to subscribers (taken before wmu is released, so results are delivered
 *        in commit order; unsubscribe takes it to wait for a call in progress);
 *   mu   the runner's memory: the active batches, the item slots, the codecs, the queue of
 *        finished items waiting for the writer. Never held across a codec call or SQL.
 * Readers use connections of their own (a small pool) and never wait on wmu. */
#ifndef DSR1_BATCH_INTERNAL_H
#define DSR1_BATCH_INTERNAL_H

#include <pthread.h>
#include <sqlite3.h>

#include "batches.h"

#define DSR1__BATCH_APP_ID     0x44535231 /* "DSR1" */
#define DSR1__BATCH_SCHEMA     2    /* 1: the first; 2: batches.priority, batches.max_running */
#define DSR1__BATCH_PAGE       64   /* pending item indexes read at once */
#define DSR1__BATCH_CHUNK      1000 /* items per transaction (validation, endings) */
#define DSR1__BATCH_MAX_ERRORS 1000 /* line errors kept per batch in errors_json */
#define DSR1__BATCH_POOL       8
#define DSR1__BATCH_MAX_CODECS 8

enum { END_NONE = 0, END_CANCEL = 1, END_EXPIRE = 2, END_FAIL = 3 };
enum { ABORT_NONE = 0, ABORT_CANCEL = 1, ABORT_EXPIRE = 2, ABORT_CLOSE = 3, ABORT_FAIL = 4 };

/* An unfinished batch, in memory while the store is open. Freed by the runner once final. */
typedef struct dsr1__bt dsr1__bt;
struct dsr1__bt {
    dsr1__bt *next; /* run order: priority (higher first), then creation (n) */
    int64_t n;      /* its row */
    int priority;
    int window; /* items at once: its max_running, capped by the store's batch_window */
    char id[DSR1_BATCH_ID_MAX];
    char format[16];
    char endpoint[64];
    dsr1_batch_state state;
    int ending;     /* END_* requested */
    char *fail_msg; /* END_FAIL: why (malloc'd) */
    int64_t expires_at;
    int total, resulted; /* committed results */
    int running;         /* started (or queued for the writer) and not yet committed */
    int64_t next_seq;    /* guarded by wmu */
    /* the runner's cursor over pending items */
    int cursor; /* last index read */
    int page[DSR1__BATCH_PAGE];
    int page_n, page_i;
    bool page_eof;
    int retry_idx;      /* an item the codec was busy for, -1 none */
    int64_t busy_until; /* monotonic ns */
    /* items that were running when the worker grid stopped serving (done call with
     * DSR1_ERR_UNAVAILABLE/LOST): pending again, behind the cursor, so fed from here first */
    int *again;
    int n_again, cap_again;
    bool unavailable_logged; /* warned for this outage (cleared when an item starts) */
    bool validating;         /* the validator owns it */
    bool finalize_needed;    /* resumed in `finalizing` */
    bool no_codec_logged;
};

typedef struct {
    uint32_t gen;
    bool used, starting, abort_sent;
    int abort; /* ABORT_* */
    char *custom_id;
    dsr1__bt *bt;
    int idx;
    char request_id[DSR1_BATCH_ID_MAX + 16];
} dsr1__slot;

/* A result waiting for (or being given to) a commit. */
typedef struct dsr1__res dsr1__res;
struct dsr1__res {
    dsr1__res *next;
    dsr1__bt *bt;
    int idx;
    bool started; /* held a place in the windows */
    bool error;
    uint8_t *bytes;
    size_t len;
    int prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens;
    int64_t seq; /* set by the commit */
    char *custom_id;
};

typedef struct dsr1__sub dsr1__sub;

struct dsr1_batches {
    dsr1_batches_params p;
    char dir[4096];
    int lock_fd;

    sqlite3 *db; /* the write connection */
    pthread_mutex_t wmu;

    pthread_mutex_t pool_mu;
    sqlite3 *pool[DSR1__BATCH_POOL];
    int npool;

    pthread_mutex_t dmu;
    dsr1__sub *subs;

    pthread_mutex_t mu;
    pthread_cond_t cv;  /* runner wake-ups, running reaching 0 */
    pthread_cond_t wcv; /* writer wake-ups */
    pthread_cond_t vcv; /* validator wake-ups */
    dsr1_batch_codec codecs[DSR1__BATCH_MAX_CODECS];
    int ncodecs;
    dsr1__bt *active, *active_tail;
    dsr1__slot *slots;
    int nslots, running;
    dsr1__res *queue, *queue_tail;
    bool started, stopping, stop_writer;
    bool writer_busy;
    pthread_t runner, writer, validator;
    int64_t results_committed, commits;
    int64_t last_purge;
};

/* store.c */
int64_t dsr1__now_s(void);
int64_t dsr1__mono_ns(void);
void dsr1__random_hex(char *out, int nhex);
dsr1_status dsr1__sql_error(sqlite3 *db, int rc, const char *what);
dsr1_status dsr1__exec(sqlite3 *db, const char *sql);
dsr1_status dsr1__begin(dsr1_batches *b);  /* BEGIN IMMEDIATE on the write connection */
dsr1_status dsr1__commit(dsr1_batches *b); /* COMMIT, or ROLLBACK and an error */
void dsr1__rollback(dsr1_batches *b);
dsr1_status dsr1__reader(dsr1_batches *b, sqlite3 **out);
void dsr1__reader_put(dsr1_batches *b, sqlite3 *db);
dsr1_status dsr1__prep(sqlite3 *db, const char *sql, sqlite3_stmt **out);
/* One page of a newest-first list (Files, Batches): runs sql, whose ?1 is a filter (NULL:
 * none), ?2 the id to list after (NULL: from the newest) and ?3 the rows to read, on a reader
 * connection; row(i) fills entry i from the statement for up to limit rows, and on a failure
 * clear(i) (may be NULL) undoes the entries filled. *has_more (may be NULL): more follow.
 * what names the list in an error. */
typedef struct {
    void (*row)(dsr1_batches *b, sqlite3 *db, sqlite3_stmt *q, void *ctx, int i);
    void (*clear)(void *ctx, int i);
    void *ctx;
} dsr1__page_rows;
dsr1_status dsr1__list_page(dsr1_batches *b, const char *sql, const char *filter, const char *after,
                            int limit, const dsr1__page_rows *rows, const char *what, int *n,
                            bool *has_more);
void dsr1__path(const dsr1_batches *b, char *out, size_t cap, const char *sub, const char *id);
dsr1_status dsr1__fsync_dir(const char *path);
const dsr1_batch_codec *dsr1__codec(dsr1_batches *b, const char *format); /* under mu */
/* Under mu: links bt into the active list at its place in run order (after every batch of
 * a higher or equal priority created before it). */
void dsr1__active_insert(dsr1_batches *b, dsr1__bt *bt);
/* A batch's window from its max_running (0: the store's batch_window). */
int dsr1__bt_window(const dsr1_batches *b, int max_running);

/* files.c */
dsr1_status dsr1__files_purge_trash(dsr1_batches *b);
/* Writes `path` atomically from a stream: the caller fills tmp, then dsr1__file_publish
 * records the intent, renames into files/, fsyncs. */
dsr1_status dsr1__file_intent(dsr1_batches *b, const char *id);
dsr1_status dsr1__file_publish(dsr1_batches *b, int fd, const char *id);
dsr1_status dsr1__files_delete_ids(dsr1_batches *b, const char *sql_select, int64_t arg);
/* Inserts a file's row (in the caller's transaction) and empties the trash of its intent. */
dsr1_status dsr1__file_row(dsr1_batches *b, const char *id, const char *filename,
                           const char *purpose, int64_t bytes, int64_t now);

/* batches.c */
dsr1_status dsr1__batch_info_row(dsr1_batches *b, sqlite3 *db, sqlite3_stmt *st,
                                 dsr1_batch_info *out);
void *dsr1__validator_main(void *arg);
dsr1_status dsr1__add_error(dsr1_batches *b, int64_t n, int line, const char *code,
                            const char *msg);
dsr1_status dsr1__parse_window(const char *s, int64_t *secs);
/* Builds an item's error result with its codec (outside every lock). NULL on failure. */
/* Under mu: hands a result to the group-commit writer thread. */
void dsr1__enqueue(dsr1_batches *b, dsr1__res *r);
dsr1__res *dsr1__error_res(dsr1_batches *b, const dsr1_batch_codec *c, dsr1__bt *bt, int idx,
                           const char *custom_id, const char *code, const char *msg, int line);

/* finish.c */
/* Ends a batch whose items are all finished or whose ending was asked for and which has
 * nothing running: error results for the rest, output files, the final state. */
void dsr1__finish_batch(dsr1_batches *b, dsr1__bt *bt);

/* feed.c */
void *dsr1__runner_main(void *arg);
/* Under mu: whether a codec's or scheduler's status means that the worker grid cannot serve
 * now (DSR1_ERR_UNAVAILABLE, DSR1_ERR_LOST) while the store itself is not closing: the item
 * is not failed but waits. */
bool dsr1__grid_unavailable(const dsr1_batches *b, dsr1_status st);
/* Under mu: the first warning of an outage for bt (later ones are not logged). */
void dsr1__warn_unavailable(dsr1__bt *bt, const char *why);

/* runner.c */
void *dsr1__writer_main(void *arg);
/* Commits results (the list is consumed and freed), then counts and delivers them. On a
 * write failure the batches involved fail and the items stay unfinished. */
void dsr1__commit_results(dsr1_batches *b, dsr1__res *list);
void dsr1__fail_batch(dsr1_batches *b, dsr1__bt *bt, const char *msg); /* under mu */
void dsr1__purge(dsr1_batches *b);
void dsr1__free_res(dsr1__res *r);
dsr1__bt *dsr1__find_bt(dsr1_batches *b, const char *id);          /* under mu */
void dsr1__abort_batch(dsr1_batches *b, dsr1__bt *bt, int reason); /* takes mu */

/* results.c */
/* Under dmu: gives each committed result to the batch's subscribers. */
void dsr1__deliver(dsr1_batches *b, int64_t batch_n, const dsr1_batch_result_row *row);
void dsr1__deliver_end(dsr1_batches *b, int64_t batch_n);
void dsr1__subs_free_all(dsr1_batches *b);
void dsr1__dmu_lock(dsr1_batches *b);
void dsr1__dmu_unlock(dsr1_batches *b);

#endif
