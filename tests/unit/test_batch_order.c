/* The durable batch store's run order and limits, with the fake codec of batch_fake.c: a
 * later batch with a higher priority gets the window before an older one's pending items
 * (across a restart too), the per-batch windows (the server's and a batch's own
 * max_running), and the migration of a schema version 1 database to the current one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "batch_fake.h"
#include "batches.h"

/* ---- run order and windows ---- */

/* Waits until the fake has started n items in all (and gives it 30 ms to start more). */
static void wait_starts(fake *f, int n)
{
    int64_t end = now_us() + 10000000;
    for (;;) {
        pthread_mutex_lock(&f->mu);
        int got = f->nstarts;
        pthread_mutex_unlock(&f->mu);
        if (got >= n) break;
        if (now_us() > end) fail_msg("%d items started, expected %d", got, n);
        usleep(2000);
    }
    usleep(30000);
}

/* Checks the fake's starts from ordinal `from` (1-based) on: runs[i].n starts of batch
 * runs[i].id each, one batch after the other, nothing else. Returns the next ordinal. */
typedef struct {
    const char *id;
    int n;
} run_of;

static int expect_order(fake *f, int from, const run_of *runs, int nruns)
{
    pthread_mutex_lock(&f->mu);
    int k = from - 1;
    for (int r = 0; r < nruns; r++) {
        int bi = fake_batch(f, runs[r].id);
        if (bi < 0) fail_msg("%s never started", runs[r].id);
        for (int i = 0; i < runs[r].n; i++, k++)
            if (k >= f->nstarts || f->order[k] != bi)
                fail_msg("start %d: expected %s (item %d of its run), got %s", k + 1, runs[r].id, i,
                         k < f->nstarts ? f->bid[f->order[k]] : "nothing");
    }
    int total = f->nstarts;
    pthread_mutex_unlock(&f->mu);
    if (k != total) fail_msg("%d starts, expected %d", total, k);
    return k + 1;
}

/* A batch created later with a higher priority gets the window before an older batch's
 * pending items; running items are not preempted; equal priorities keep creation order; the
 * order holds across a close and reopen. */
static void test_priority(void **state)
{
    (void)state;
    char *dir = tmpdir();
    fake *f = fake_new(21);
    f->busy_pct = 5;
    f->hold = true; /* the first items hold the window until released */
    dsr1_batches *b = open_store_bw(dir, f, 4, 0);
    dsr1_batch_info info;
    create_writer_p(b, "batch_low", 120, 0, 0, &info);
    assert_int_equal(info.priority, 0);
    dsr1_batch_info_clear(&info);
    wait_starts(f, 4);
    create_writer_p(b, "batch_high", 30, 5, 0, &info);
    assert_int_equal(info.priority, 5);
    dsr1_batch_info_clear(&info);
    create_writer_p(b, "batch_mid", 20, 2, 0, &info);
    dsr1_batch_info_clear(&info);
    create_writer_p(b, "batch_mid2", 20, 2, 0, &info);
    dsr1_batch_info_clear(&info);
    create_writer_p(b, "batch_neg", 10, -3, 0, &info);
    assert_int_equal(info.priority, -3);
    dsr1_batch_info_clear(&info);
    usleep(50000);
    run_of first[] = {{"batch_low", 4}};
    expect_order(f, 1, first, 1); /* the running ones stay, nothing else started */
    pthread_mutex_lock(&f->mu);
    f->hold = false;
    pthread_mutex_unlock(&f->mu);
    const char *ids[] = {"batch_low", "batch_high", "batch_mid", "batch_mid2", "batch_neg"};
    for (int i = 0; i < 5; i++) {
        info = wait_final(b, ids[i], 30);
        assert_int_equal(info.state, DSR1_BATCH_COMPLETED);
        dsr1_batch_info_clear(&info);
    }
    run_of rest[] = {{"batch_high", 30},
                     {"batch_mid", 20},
                     {"batch_mid2", 20},
                     {"batch_low", 116},
                     {"batch_neg", 10}};
    expect_order(f, 5, rest, 5);
    assert_int_equal(dsr1_batches_get(b, "batch_high", &info), 0);
    assert_int_equal(info.priority, 5);
    dsr1_batch_info_clear(&info);

    /* the order after a restart: the unfinished batches are loaded in run order */
    pthread_mutex_lock(&f->mu);
    f->hold = true;
    pthread_mutex_unlock(&f->mu);
    int before = f->nstarts;
    create_writer_p(b, "batch_old", 40, 1, 0, &info);
    dsr1_batch_info_clear(&info);
    wait_starts(f, before + 4);
    create_writer_p(b, "batch_new", 15, 7, 0, &info);
    dsr1_batch_info_clear(&info);
    create_writer_p(b, "batch_new2", 5, 1, 0, &info); /* same as batch_old: after it */
    dsr1_batch_info_clear(&info);
    dsr1_batches_close(b); /* aborts the four held items: they stay pending */
    fake_free(f);
    f = fake_new(22);
    f->busy_pct = 5;
    b = open_store_bw(dir, f, 4, 0);
    const char *ids2[] = {"batch_old", "batch_new", "batch_new2"};
    for (int i = 0; i < 3; i++) {
        info = wait_final(b, ids2[i], 30);
        assert_int_equal(info.state, DSR1_BATCH_COMPLETED);
        dsr1_batch_info_clear(&info);
    }
    run_of again[] = {{"batch_new", 15}, {"batch_old", 40}, {"batch_new2", 5}};
    expect_order(f, 1, again, 3);
    dsr1_batches_close(b);
    fake_free(f);
    rm_rf(dir);
    free(dir);
}

/* The store's per-batch window and a batch's own max_running (capped by it). */
static void test_batch_windows(void **state)
{
    (void)state;
    char *dir = tmpdir();
    fake *f = fake_new(23);
    f->hold = true;
    dsr1_batches *b = open_store_bw(dir, f, 6, 3);
    dsr1_batch_info info;
    dsr1_batch_create bad = {.format = "fake", .max_running = -1};
    dsr1_batch_writer *w;
    assert_int_equal(dsr1_batch_writer_begin(b, &bad, &w), DSR1_ERR_INVALID_ARG);
    assert_non_null(strstr(dsr1_errmsg(), "max_running"));
    create_writer_p(b, "batch_X", 30, 0, 1, &info);
    assert_int_equal(info.max_running, 1);
    dsr1_batch_info_clear(&info);
    create_writer_p(b, "batch_Y", 30, 0, 0, &info);
    assert_int_equal(info.max_running, 0);
    dsr1_batch_info_clear(&info);
    create_writer_p(b, "batch_Z", 30, 0, 10, &info); /* more than the store's 3 */
    assert_int_equal(info.max_running, 10);
    dsr1_batch_info_clear(&info);
    wait_starts(f, 6);
    /* held: X has its 1, Y the store's 3, Z what is left of the 6 */
    pthread_mutex_lock(&f->mu);
    assert_int_equal(f->nstarts, 6);
    assert_int_equal(f->b_running[fake_batch(f, "batch_X")], 1);
    assert_int_equal(f->b_running[fake_batch(f, "batch_Y")], 3);
    assert_int_equal(f->b_running[fake_batch(f, "batch_Z")], 2);
    f->hold = false;
    pthread_mutex_unlock(&f->mu);
    const char *ids[] = {"batch_X", "batch_Y", "batch_Z"};
    for (int i = 0; i < 3; i++) {
        info = wait_final(b, ids[i], 30);
        assert_int_equal(info.state, DSR1_BATCH_COMPLETED);
        assert_int_equal(info.completed + info.failed, 30);
        dsr1_batch_info_clear(&info);
    }
    assert_true(f->max_running <= 6);
    assert_int_equal(f->b_max_running[fake_batch(f, "batch_X")], 1);
    assert_true(f->b_max_running[fake_batch(f, "batch_Y")] <= 3);
    assert_true(f->b_max_running[fake_batch(f, "batch_Z")] <= 3);
    dsr1_batches_close(b);
    fake_free(f);
    rm_rf(dir);
    free(dir);
}

/* The schema and its indexes, as text, of the database in dir. */
static char *schema_text(const char *dir, int *version)
{
    char path[512];
    snprintf(path, sizeof path, "%s/dsr1.db", dir);
    sqlite3 *db;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *q;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    *version = sqlite3_column_int(q, 0);
    sqlite3_finalize(q);
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT group_concat(sql, ';') FROM (SELECT sql FROM "
                                        "sqlite_master WHERE sql IS NOT NULL ORDER BY name)",
                                        -1, &q, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    char *s = strdup((const char *)sqlite3_column_text(q, 0));
    sqlite3_finalize(q);
    sqlite3_close(db);
    return s;
}

/* A store of schema version 1 (as the first release wrote it) is migrated on open: its
 * unfinished batch is intact and runs; the migrated schema is a new store's; a newer
 * version is refused. */
static void test_migrate_v1(void **state)
{
    (void)state;
    char *dir = tmpdir();
    make_v1_store(dir, "batch_v1", 25);
    int ver = 0;
    free(schema_text(dir, &ver));
    assert_int_equal(ver, 1);
    fake *f = fake_new(24);
    f->err_pct = 10;
    dsr1_batches *b = open_store_bw(dir, f, 4, 0);
    dsr1_batch_info info;
    assert_int_equal(dsr1_batches_get(b, "batch_v1", &info), 0);
    assert_int_equal(info.total, 25);
    assert_int_equal(info.priority, 0);
    assert_int_equal(info.max_running, 0);
    assert_string_equal(info.metadata_json, "{\"k\":\"v\"}");
    assert_int_equal(info.created_at, 1700000000);
    dsr1_batch_info_clear(&info);
    info = wait_final(b, "batch_v1", 30);
    assert_int_equal(info.state, DSR1_BATCH_COMPLETED);
    assert_int_equal(info.completed + info.failed, 25);
    dsr1_batch_info_clear(&info);
    for (int i = 0; i < 25; i++) assert_int_equal(f->starts[i], 1);
    collect *c = collect_new(0);
    assert_int_equal(dsr1_batches_results(b, "batch_v1", 0, collect_fn, c), 0);
    assert_int_equal(c->n, 25);
    assert_int_equal(c->bad_seq, 0);
    free(c);
    /* the same id and hash: the same batch (its request_hash survived) */
    dsr1_batch_create cr = {.id = "batch_v1", .format = "fake", .request_hash = 42};
    dsr1_batch_writer *w;
    assert_int_equal(dsr1_batch_writer_begin(b, &cr, &w), 0);
    dsr1_batch_writer_abort(w);
    create_writer_p(b, "batch_v2", 5, 4, 2, &info);
    dsr1_batch_info_clear(&info);
    info = wait_final(b, "batch_v2", 30);
    assert_int_equal(info.priority, 4);
    assert_int_equal(info.max_running, 2);
    dsr1_batch_info_clear(&info);
    dsr1_batches_close(b);
    fake_free(f);
    char *migrated = schema_text(dir, &ver);
    assert_int_equal(ver, 2);
    /* a new store has the same schema */
    char *fresh_dir = tmpdir();
    b = open_store(fresh_dir, NULL, 4, 0);
    dsr1_batches_close(b);
    int fver = 0;
    char *fresh = schema_text(fresh_dir, &fver);
    assert_int_equal(fver, 2);
    assert_string_equal(migrated, fresh);
    free(migrated);
    free(fresh);
    /* reopened at version 2: nothing to migrate, the batches are there */
    f = fake_new(25);
    b = open_store_bw(dir, f, 4, 0);
    assert_int_equal(dsr1_batches_get(b, "batch_v2", &info), 0);
    assert_int_equal(info.priority, 4);
    dsr1_batch_info_clear(&info);
    dsr1_batches_close(b);
    fake_free(f);
    /* a newer version: refused, untouched */
    char path[512];
    snprintf(path, sizeof path, "%s/dsr1.db", fresh_dir);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA user_version=3", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    dsr1_batches_params p = {.state_dir = fresh_dir};
    assert_int_equal(dsr1_batches_open(&p, &b), DSR1_ERR_UNSUPPORTED);
    assert_non_null(strstr(dsr1_errmsg(), "schema version 3"));
    rm_rf(fresh_dir);
    free(fresh_dir);
    rm_rf(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_priority),
        cmocka_unit_test(test_batch_windows),
        cmocka_unit_test(test_migrate_v1),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
