/* The durable batch store (coordinator/batch) with a fake codec whose items finish on a
 * thread of its own after a random delay with random results: creation from a writer and
 * from a file, counts, result order and seq, subscriptions, cancel, expiry, close and
 * reopen mid-run, a SIGKILL'd child, refusals (foreign database, unknown file, second
 * opener), a full disk (a 1 MiB tmpfs in a private mount namespace), retention, the
 * output and error files. The run order, the windows and the schema migration are in
 * test_batch_order.c; the fake codec and the helpers in batch_fake.c. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "batch_fake.h"
#include "batches.h"

/* ---- tests ---- */

static void test_writer_batch(void **state)
{
    (void)state;
    char *dir = tmpdir();
    fake *f = fake_new(1);
    f->err_pct = 20;
    f->busy_pct = 10;
    dsr1_batches *b = open_store(dir, f, 16, 0);
    dsr1_batch_info info;
    const int n = 300;
    create_writer(b, "batch_w1", n, NULL, &info);
    assert_int_equal(info.total, n);
    assert_string_equal(info.metadata_json, "{\"k\":\"v\"}");
    dsr1_batch_info_clear(&info);
    info = wait_final(b, "batch_w1", 20);
    assert_int_equal(info.state, DSR1_BATCH_COMPLETED);
    assert_int_equal(info.completed + info.failed, n);
    assert_true(info.failed > 0 && info.completed > 0);
    assert_int_equal(info.prompt_tokens, 3 * n);
    assert_int_equal(info.running, 0);
    assert_true(f->max_running <= 16);
    for (int i = 0; i < n; i++) assert_int_equal(f->starts[i], 1);
    check_output_files(b, &info, n);
    /* results in seq order, each item once */
    collect *c = collect_new(0);
    assert_int_equal(dsr1_batches_results(b, "batch_w1", 0, collect_fn, c), 0);
    assert_int_equal(c->n, n);
    assert_int_equal(c->bad_seq, 0);
    assert_int_equal(c->ends, 0); /* results() has no end call */
    assert_int_equal(c->errors, info.failed);
    for (int i = 0; i < n; i++) assert_int_equal(c->count[i], 1);
    free(c);
    /* from a seq */
    c = collect_new(250);
    assert_int_equal(dsr1_batches_results(b, "batch_w1", 250, collect_fn, c), 0);
    assert_int_equal(c->n, n - 250);
    assert_int_equal(c->bad_seq, 0);
    free(c);
    dsr1_batch_info_clear(&info);

    /* the same request again: the same batch; another request with that id: refused */
    dsr1_batch_create cr = {.id = "batch_w1", .format = "fake", .request_hash = 42};
    dsr1_batch_writer *w;
    assert_int_equal(dsr1_batch_writer_begin(b, &cr, &w), 0);
    assert_int_equal(dsr1_batch_writer_add(w, (const uint8_t *)"c0 x", 4), 0);
    bool created = true;
    assert_int_equal(dsr1_batch_writer_commit(w, &info, &created), DSR1_ERR_EXISTS);
    assert_false(created);
    assert_string_equal(info.id, "batch_w1");
    dsr1_batch_info_clear(&info);
    cr.request_hash = 43;
    assert_int_equal(dsr1_batch_writer_begin(b, &cr, &w), DSR1_ERR_EXISTS);

    /* an invalid item: refused with its index, nothing created */
    dsr1_batch_create c2 = {.id = "batch_bad", .format = "fake"};
    assert_int_equal(dsr1_batch_writer_begin(b, &c2, &w), 0);
    assert_int_equal(dsr1_batch_writer_add(w, (const uint8_t *)"c0 x", 4), 0);
    assert_int_equal(dsr1_batch_writer_add(w, (const uint8_t *)"!c1 x", 5), DSR1_ERR_INVALID_ARG);
    assert_non_null(strstr(dsr1_errmsg(), "item 1: "));
    dsr1_batch_writer_abort(w);
    assert_int_equal(dsr1_batches_get(b, "batch_bad", &info), DSR1_ERR_NOT_FOUND);
    /* a duplicate custom_id */
    assert_int_equal(dsr1_batch_writer_begin(b, &c2, &w), 0);
    assert_int_equal(dsr1_batch_writer_add(w, (const uint8_t *)"c0 x", 4), 0);
    assert_int_equal(dsr1_batch_writer_add(w, (const uint8_t *)"c0 y", 4), 0);
    assert_int_equal(dsr1_batch_writer_commit(w, &info, &created), DSR1_ERR_INVALID_ARG);
    assert_int_equal(dsr1_batches_get(b, "batch_bad", &info), DSR1_ERR_NOT_FOUND);
    /* bad parameters */
    dsr1_batch_create c3 = {.format = "fake", .completion_window = "24x"};
    assert_int_equal(dsr1_batch_writer_begin(b, &c3, &w), DSR1_ERR_INVALID_ARG);
    c3.completion_window = "24h";
    c3.metadata_json = "[1]";
    assert_int_equal(dsr1_batch_writer_begin(b, &c3, &w), DSR1_ERR_INVALID_ARG);
    c3.format = "nope";
    c3.metadata_json = NULL;
    assert_int_equal(dsr1_batch_writer_begin(b, &c3, &w), DSR1_ERR_INVALID_ARG);

    dsr1_batches_stats s;
    dsr1_batches_get_stats(b, &s);
    assert_int_equal(s.batches_active, 0);
    assert_int_equal(s.results_committed, n);
    assert_true(s.commits > 0 && s.commits <= n);
    dsr1_batches_close(b);
    fake_free(f);
    rm_rf(dir);
    free(dir);
}

/* The global and per-batch windows, and creation order. */
static void test_windows(void **state)
{
    (void)state;
    char *dir = tmpdir();
    fake *f = fake_new(13);
    f->busy_pct = 5;
    dsr1_batches *b = open_store_bw(dir, f, 6, 0);
    dsr1_batch_info info;
    create_writer(b, "batch_A", 200, NULL, &info);
    dsr1_batch_info_clear(&info);
    create_writer(b, "batch_B", 50, NULL, &info);
    dsr1_batch_info_clear(&info);
    info = wait_final(b, "batch_B", 20);
    assert_int_equal(info.state, DSR1_BATCH_COMPLETED);
    assert_string_equal(info.output_file_id, ""); /* a codec without output files */
    dsr1_batch_info_clear(&info);
    info = wait_final(b, "batch_A", 20);
    dsr1_batch_info_clear(&info);
    assert_true(f->max_running <= 6);
    assert_true(f->first_b > 0 && f->last_a < f->first_b); /* the older batch first */
    dsr1_batches_close(b);
    fake_free(f);

    /* two at a time per batch: three batches share a window of 5 */
    f = fake_new(14);
    b = open_store_bw(dir, f, 5, 2);
    create_writer(b, "batch_C", 60, NULL, &info);
    dsr1_batch_info_clear(&info);
    create_writer(b, "batch_D", 60, NULL, &info);
    dsr1_batch_info_clear(&info);
    create_writer(b, "batch_E", 60, NULL, &info);
    dsr1_batch_info_clear(&info);
    for (int i = 0; i < 3; i++) {
        info = wait_final(b, i == 0 ? "batch_C" : i == 1 ? "batch_D" : "batch_E", 20);
        assert_int_equal(info.state, DSR1_BATCH_COMPLETED);
        dsr1_batch_info_clear(&info);
    }
    assert_true(f->max_running <= 5);
    assert_true(f->max_running >= 3); /* more than one batch at once */
    dsr1_batch_info list[2];
    int n;
    bool more;
    assert_int_equal(dsr1_batches_list(b, NULL, "batch_D", 2, list, &n, &more), 0);
    assert_int_equal(n, 2);
    assert_true(more); /* batch_A */
    assert_string_equal(list[0].id, "batch_C");
    assert_string_equal(list[1].id, "batch_B");
    for (int i = 0; i < n; i++) dsr1_batch_info_clear(&list[i]);
    dsr1_batches_close(b);
    fake_free(f);
    rm_rf(dir);
    free(dir);
}

static void upload(dsr1_batches *b, const char *text, dsr1_file_info *fi)
{
    dsr1_file_upload *u;
    assert_int_equal(dsr1_file_upload_begin(b, "in.jsonl", "batch", &u), 0);
    size_t len = strlen(text);
    /* in pieces */
    for (size_t off = 0; off < len; off += 1000) {
        size_t k = len - off < 1000 ? len - off : 1000;
        assert_int_equal(dsr1_file_upload_write(u, text + off, k), 0);
    }
    assert_int_equal(dsr1_file_upload_commit(u, fi), 0);
    assert_int_equal(fi->bytes, (int64_t)len);
}

static void test_file_batch(void **state)
{
    (void)state;
    char *dir = tmpdir();
    fake *f = fake_new(2);
    f->err_pct = 10;
    dsr1_batches *b = open_store(dir, f, 32, 0);
    /* 2500 lines (more than one validation chunk); blank lines; invalid lines 7 and 1801
     * (1-based lines of the file); a duplicate custom_id */
    const int n = 2500;
    char *text = malloc((size_t)n * 40 + 100);
    size_t off = 0;
    int line = 0, dup_line = 0, bad1 = 0, bad2 = 0;
    for (int i = 0; i < n; i++) {
        if (i == 3 || i == 1000) {
            off += (size_t)sprintf(text + off, "   \n");
            line++;
        }
        line++;
        if (i == 5) {
            off += (size_t)sprintf(text + off, "!c%d bad\n", i);
            bad1 = line;
        } else if (i == 1798) {
            off += (size_t)sprintf(text + off, "!c%d bad\n", i);
            bad2 = line;
        } else if (i == 2000) {
            off += (size_t)sprintf(text + off, "c%d dup\n", 17); /* custom_id of item 17 */
            dup_line = line;
        } else {
            off += (size_t)sprintf(text + off, "c%d line %d\n", i, i);
        }
    }
    text[off] = 0;
    dsr1_file_info fi;
    upload(b, text, &fi);
    free(text);
    dsr1_batch_create c = {
        .format = "fake", .endpoint = "/v1/chat/completions", .completion_window = "24h"};
    dsr1_batch_info info;
    bool created;
    assert_int_equal(dsr1_batches_create_from_file(b, &c, fi.id, &info, &created), 0);
    assert_true(created);
    assert_string_equal(info.input_file_id, fi.id);
    assert_true(info.expires_at >= info.created_at + 24 * 3600);
    char id[DSR1_BATCH_ID_MAX];
    snprintf(id, sizeof id, "%s", info.id);
    assert_int_equal(strncmp(id, "batch_", 6), 0);
    dsr1_batch_info_clear(&info);
    info = wait_final(b, id, 30);
    assert_int_equal(info.state, DSR1_BATCH_COMPLETED);
    assert_int_equal(info.total, n);
    assert_int_equal(info.completed + info.failed, n);
    assert_non_null(info.errors_json);
    char want[64];
    snprintf(want, sizeof want, "\"line\":%d", bad1);
    assert_non_null(strstr(info.errors_json, want));
    snprintf(want, sizeof want, "\"line\":%d", bad2);
    assert_non_null(strstr(info.errors_json, want));
    snprintf(want, sizeof want, "\"line\":%d", dup_line);
    assert_non_null(strstr(info.errors_json, want));
    assert_non_null(strstr(info.errors_json, "\"code\":\"invalid_request\""));
    /* invalid items never ran */
    assert_int_equal(f->starts[5], 0);
    assert_int_equal(f->starts[1798], 0);
    assert_int_equal(f->starts[2000], 0);
    assert_int_equal(f->starts[6], 1);
    /* the output files: custom ids c0..c2499, with c17 twice and no c2000 */
    int seen[2500] = {0};
    const char *ids[2] = {info.output_file_id, info.error_file_id};
    for (int k = 0; k < 2; k++) {
        char *p;
        int64_t len;
        read_file(b, ids[k], &p, &len);
        for (char *s = p, *e; *s; s = e + 1) {
            e = strchr(s, '\n');
            *e = 0;
            char word[32];
            int idx, l = 0;
            assert_true(sscanf(s, "%31s c%d %d", word, &idx, &l) >= 2);
            seen[idx]++;
            if (strcmp(word, "invalid_request") == 0)
                assert_true(l == bad1 || l == bad2 || l == dup_line);
        }
        free(p);
    }
    for (int i = 0; i < n; i++) assert_int_equal(seen[i], i == 17 ? 2 : i == 2000 ? 0 : 1);
    dsr1_batch_info_clear(&info);

    /* a file with no valid line: failed */
    upload(b, "!a\n\n!b\n", &fi);
    assert_int_equal(dsr1_batches_create_from_file(b, &c, fi.id, &info, &created), 0);
    snprintf(id, sizeof id, "%s", info.id);
    dsr1_batch_info_clear(&info);
    info = wait_final(b, id, 10);
    assert_int_equal(info.state, DSR1_BATCH_FAILED);
    assert_non_null(strstr(info.errors_json, "\"line\":3"));
    dsr1_batch_info_clear(&info);

    /* the Files API */
    dsr1_file_info list[8];
    int k;
    bool more;
    assert_int_equal(dsr1_files_list(b, "batch", NULL, 1, list, &k, &more), 0);
    assert_int_equal(k, 1);
    assert_true(more);
    assert_string_equal(list[0].id, fi.id); /* newest first */
    assert_int_equal(dsr1_files_list(b, "batch", fi.id, 8, list, &k, &more), 0);
    assert_int_equal(k, 1);
    assert_false(more);
    assert_int_equal(dsr1_files_delete(b, fi.id), 0);
    assert_int_equal(dsr1_files_get(b, fi.id, list), DSR1_ERR_NOT_FOUND);
    dsr1_batch_info bl[4];
    assert_int_equal(dsr1_batches_list(b, "fake", NULL, 4, bl, &k, &more), 0);
    assert_int_equal(k, 2);
    assert_string_equal(bl[0].id, id);
    for (int i = 0; i < k; i++) dsr1_batch_info_clear(&bl[i]);
    dsr1_batches_close(b);
    fake_free(f);
    rm_rf(dir);
    free(dir);
}

typedef struct {
    pthread_mutex_t mu; /* held by the test until sub is set */
    dsr1_batch_sub *sub;
    int calls, calls_at_gone;
    bool gone;
} self_unsub;

/* Unsubscribes itself on the store's thread at its fifth call (the calls inside subscribe,
 * when results were there already, count too). */
static bool self_unsub_fn(void *ctx, const dsr1_batch_result_row *row)
{
    self_unsub *s = ctx;
    bool on_store_thread = pthread_mutex_trylock(&s->mu) == 0;
    s->calls++;
    if (on_store_thread) {
        if (row && s->calls >= 5 && !s->gone) {
            dsr1_batches_unsubscribe(s->sub);
            s->gone = true;
            s->calls_at_gone = s->calls;
        }
        pthread_mutex_unlock(&s->mu);
    }
    return true;
}

static void test_subscribe(void **state)
{
    (void)state;
    char *dir = tmpdir();
    fake *f = fake_new(3);
    f->min_us = 500;
    f->max_us = 4000;
    dsr1_batches *b = open_store(dir, f, 8, 0);
    dsr1_batch_info info;
    const int n = 400;
    create_writer(b, "batch_s", n, NULL, &info);
    dsr1_batch_info_clear(&info);
    usleep(30000); /* some results committed before */
    collect *c = collect_new(0);
    dsr1_batch_sub *sub;
    assert_int_equal(dsr1_batches_subscribe(b, "batch_s", 0, collect_fn, c, &sub), 0);
    info = wait_final(b, "batch_s", 20);
    dsr1_batch_info_clear(&info);
    for (int i = 0; i < 200 && !c->ends; i++) usleep(5000);
    dsr1_batches_unsubscribe(sub);
    assert_int_equal(c->ends, 1);
    assert_int_equal(c->after_end, 0);
    assert_int_equal(c->bad_seq, 0);
    assert_int_equal(c->n, n);
    for (int i = 0; i < n; i++) assert_int_equal(c->count[i], 1);
    free(c);
    /* on a final batch from a seq: the rest, then the end */
    c = collect_new(123);
    assert_int_equal(dsr1_batches_subscribe(b, "batch_s", 123, collect_fn, c, &sub), 0);
    assert_int_equal(c->n, n - 123);
    assert_int_equal(c->ends, 1);
    dsr1_batches_unsubscribe(sub);
    assert_int_equal(dsr1_batches_subscribe(b, "nope", 0, collect_fn, c, &sub), DSR1_ERR_NOT_FOUND);
    /* unsubscribing from inside the callback, mid-run */
    create_writer(b, "batch_s2", 300, NULL, &info);
    dsr1_batch_info_clear(&info);
    self_unsub su = {0};
    pthread_mutex_init(&su.mu, NULL);
    pthread_mutex_lock(&su.mu);
    assert_int_equal(dsr1_batches_subscribe(b, "batch_s2", 0, self_unsub_fn, &su, &su.sub), 0);
    pthread_mutex_unlock(&su.mu);
    info = wait_final(b, "batch_s2", 20);
    dsr1_batch_info_clear(&info);
    pthread_mutex_lock(&su.mu);
    assert_true(su.gone);
    assert_true(su.calls >= 5);
    assert_int_equal(su.calls, su.calls_at_gone); /* no call after */
    pthread_mutex_unlock(&su.mu);
    free(c);
    dsr1_batches_close(b);
    fake_free(f);
    rm_rf(dir);
    free(dir);
}

/* Each item has exactly one result, those with code `code` were not finished ok. */
static int check_each_once(dsr1_batches *b, const char *id, int n, const char *code)
{
    collect *c = collect_new(0);
    assert_int_equal(dsr1_batches_results(b, id, 0, collect_fn, c), 0);
    assert_int_equal(c->n, n);
    assert_int_equal(c->bad_seq, 0);
    for (int i = 0; i < n; i++) assert_int_equal(c->count[i], 1);
    free(c);
    (void)code;
    return n;
}

typedef struct {
    const char *code;
    int n;
} count_code;

static bool count_code_fn(void *ctx, const dsr1_batch_result_row *row)
{
    count_code *c = ctx;
    if (row && row->len >= strlen(c->code) && memcmp(row->bytes, c->code, strlen(c->code)) == 0)
        c->n++;
    return true;
}

static void test_cancel(void **state)
{
    (void)state;
    char *dir = tmpdir();
    fake *f = fake_new(4);
    f->hold = true;
    dsr1_batches *b = open_store(dir, f, 10, 0);
    dsr1_batch_info info;
    const int n = 100;
    create_writer(b, "batch_c", n, NULL, &info);
    dsr1_batch_info_clear(&info);
    for (int i = 0; i < 400; i++) {
        assert_int_equal(dsr1_batches_get(b, "batch_c", &info), 0);
        int r = info.running;
        dsr1_batch_info_clear(&info);
        if (r == 10) break;
        usleep(5000);
    }
    assert_int_equal(dsr1_batches_cancel(b, "batch_c", &info), 0);
    assert_true(info.state == DSR1_BATCH_CANCELLING || info.state == DSR1_BATCH_CANCELLED);
    dsr1_batch_info_clear(&info);
    info = wait_final(b, "batch_c", 10);
    assert_int_equal(info.state, DSR1_BATCH_CANCELLED);
    assert_true(info.cancelling_at > 0 && info.cancelled_at > 0);
    assert_int_equal(info.failed, n);
    check_each_once(b, "batch_c", n, "batch_cancelled");
    count_code cc = {"batch_cancelled", 0};
    assert_int_equal(dsr1_batches_results(b, "batch_c", 0, count_code_fn, &cc), 0);
    assert_int_equal(cc.n, n);
    for (int i = 0; i < n; i++) assert_true(f->starts[i] <= 1);
    /* a final batch is returned as it is */
    dsr1_batch_info_clear(&info);
    assert_int_equal(dsr1_batches_cancel(b, "batch_c", &info), 0);
    assert_int_equal(info.state, DSR1_BATCH_CANCELLED);
    dsr1_batch_info_clear(&info);
    dsr1_batches_close(b);
    fake_free(f);
    rm_rf(dir);
    free(dir);
}

static void test_expiry(void **state)
{
    (void)state;
    char *dir = tmpdir();
    fake *f = fake_new(5);
    f->hold = true;
    dsr1_batches *b = open_store(dir, f, 10, 0);
    dsr1_batch_info info;
    const int n = 50;
    create_writer(b, "batch_e", n, "1s", &info);
    assert_int_equal(info.expires_at, info.created_at + 1);
    dsr1_batch_info_clear(&info);
    info = wait_final(b, "batch_e", 5);
    assert_int_equal(info.state, DSR1_BATCH_EXPIRED);
    assert_true(info.expired_at > 0);
    check_each_once(b, "batch_e", n, "batch_expired");
    count_code cc = {"batch_expired", 0};
    assert_int_equal(dsr1_batches_results(b, "batch_e", 0, count_code_fn, &cc), 0);
    assert_int_equal(cc.n, n);
    dsr1_batch_info_clear(&info);
    dsr1_batches_close(b);
    fake_free(f);
    rm_rf(dir);
    free(dir);
}

/* The worker grid suspended while a batch runs (docs/operations.md, "Losing a worker"): the
 * items running end with DSR1_ERR_UNAVAILABLE and go back to pending, the items started
 * meanwhile are refused and wait, tried again about once a second (not every 20 ms as a
 * busy scheduler), and nothing is written as failed; when the grid serves again the batch
 * completes, every item once, the interrupted ones run twice. A batch past its completion
 * window while the grid is down still expires. */
static void test_grid_down(void **state)
{
    (void)state;
    char *dir = tmpdir();
    fake *f = fake_new(9);
    f->hold = true;
    dsr1_batches *b = open_store(dir, f, 10, 0);
    dsr1_batch_info info;
    const int n = 40;
    create_writer(b, "batch_g", n, "1h", &info);
    dsr1_batch_info_clear(&info);
    for (int i = 0; i < 400; i++) {
        assert_int_equal(dsr1_batches_get(b, "batch_g", &info), 0);
        int r = info.running;
        dsr1_batch_info_clear(&info);
        if (r == 10) break;
        usleep(5000);
    }
    pthread_mutex_lock(&f->mu);
    int started[MAXN];
    memcpy(started, f->starts, sizeof(int) * n);
    f->down = true;
    pthread_mutex_unlock(&f->mu);
    int running = 10;
    for (int i = 0; i < 400 && running; i++) {
        usleep(5000);
        assert_int_equal(dsr1_batches_get(b, "batch_g", &info), 0);
        running = info.running;
        dsr1_batch_info_clear(&info);
    }
    assert_int_equal(running, 0); /* the ten back to pending */
    usleep(2500000);
    assert_int_equal(dsr1_batches_get(b, "batch_g", &info), 0);
    assert_int_equal(info.state, DSR1_BATCH_IN_PROGRESS);
    assert_int_equal(info.completed, 0);
    assert_int_equal(info.failed, 0);
    assert_int_equal(info.running, 0);
    dsr1_batch_info_clear(&info);
    pthread_mutex_lock(&f->mu);
    const int refused = f->refused;
    f->down = false;
    f->hold = false;
    pthread_mutex_unlock(&f->mu);
    assert_true(refused >= 2 && refused <= 5); /* about one a second for 2.5 s */
    info = wait_final(b, "batch_g", 20);
    assert_int_equal(info.state, DSR1_BATCH_COMPLETED);
    assert_int_equal(info.completed, n);
    assert_int_equal(info.failed, 0);
    dsr1_batch_info_clear(&info);
    check_each_once(b, "batch_g", n, NULL);
    count_code cc = {"ok", 0};
    assert_int_equal(dsr1_batches_results(b, "batch_g", 0, count_code_fn, &cc), 0);
    assert_int_equal(cc.n, n);
    int twice = 0;
    for (int i = 0; i < n; i++) {
        assert_int_equal(f->starts[i], started[i] + 1);
        twice += started[i];
    }
    assert_int_equal(twice, 10);

    /* down past the completion window: expired, every item once with batch_expired */
    pthread_mutex_lock(&f->mu);
    f->down = true;
    pthread_mutex_unlock(&f->mu);
    create_writer(b, "batch_x", 20, "2s", &info);
    dsr1_batch_info_clear(&info);
    info = wait_final(b, "batch_x", 10);
    assert_int_equal(info.state, DSR1_BATCH_EXPIRED);
    assert_int_equal(info.failed, 20);
    dsr1_batch_info_clear(&info);
    check_each_once(b, "batch_x", 20, NULL);
    cc = (count_code){"batch_expired", 0};
    assert_int_equal(dsr1_batches_results(b, "batch_x", 0, count_code_fn, &cc), 0);
    assert_int_equal(cc.n, 20);
    /* closing while a refused item waits for its retry: prompt */
    create_writer(b, "batch_y", 5, NULL, &info);
    dsr1_batch_info_clear(&info);
    usleep(100000);
    int64_t t0 = now_us();
    dsr1_batches_close(b);
    assert_true(now_us() - t0 < 2000000);
    fake_free(f);
    rm_rf(dir);
    free(dir);
}

typedef struct {
    int *done;
    int n;
} done_set;

static bool done_fn(void *ctx, const dsr1_batch_result_row *row)
{
    done_set *d = ctx;
    if (row) {
        d->done[row->index]++;
        d->n++;
    }
    return true;
}

static void test_close_reopen(void **state)
{
    (void)state;
    char *dir = tmpdir();
    fake *f = fake_new(6);
    f->min_us = 1000;
    f->max_us = 8000;
    dsr1_batches *b = open_store(dir, f, 16, 0);
    dsr1_batch_info info;
    const int n = 600;
    create_writer(b, "batch_r", n, NULL, &info);
    dsr1_batch_info_clear(&info);
    usleep(60000);
    dsr1_batches_close(b);
    fake_free(f);

    f = fake_new(7);
    /* the store without a codec first: opens, lists, does not run */
    dsr1_batches *b2 = open_store(dir, NULL, 16, 0);
    int done[MAXN] = {0};
    done_set d = {done, 0};
    assert_int_equal(dsr1_batches_results(b2, "batch_r", 0, done_fn, &d), 0);
    assert_true(d.n > 0 && d.n < n);
    assert_int_equal(dsr1_batches_get(b2, "batch_r", &info), 0);
    assert_int_equal(info.state, DSR1_BATCH_IN_PROGRESS);
    assert_int_equal(info.completed + info.failed, d.n);
    dsr1_batch_info_clear(&info);
    usleep(20000);
    dsr1_batches_close(b2);

    b = open_store(dir, f, 16, 0);
    info = wait_final(b, "batch_r", 20);
    assert_int_equal(info.state, DSR1_BATCH_COMPLETED);
    dsr1_batch_info_clear(&info);
    check_each_once(b, "batch_r", n, NULL);
    for (int i = 0; i < n; i++) assert_int_equal(f->starts[i], done[i] ? 0 : 1);
    dsr1_batches_close(b);
    fake_free(f);
    rm_rf(dir);
    free(dir);
}

static bool pipe_fn(void *ctx, const dsr1_batch_result_row *row)
{
    if (row && write(*(int *)ctx, "r", 1) != 1) return false;
    return true;
}

static void test_crash(void **state)
{
    (void)state;
    char *dir = tmpdir();
    const int n = 400;
    {
        dsr1_batches *b = open_store(dir, NULL, 16, 0);
        /* the codec is needed to create; a short-lived one */
        fake *f = fake_new(8);
        f->hold = true;
        f->b = b;
        dsr1_batch_codec c = fake_codec(f, true);
        assert_int_equal(dsr1_batches_register(b, &c), 0);
        dsr1_batch_info info;
        /* items run at once: close aborts them, they stay pending */
        create_writer(b, "batch_k", n, NULL, &info);
        dsr1_batch_info_clear(&info);
        dsr1_batches_close(b);
        fake_free(f);
    }
    srand(1234);
    for (int round = 0; round < 3; round++) {
        /* killed after a random number of results (told through a pipe), plus a moment */
        int want = 10 + rand() % 50, extra_us = rand() % 20000;
        int pfd[2];
        assert_int_equal(pipe(pfd), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(pfd[0]);
            fake *f = fake_new(100 + (unsigned)round);
            f->min_us = 500;
            f->max_us = 5000;
            dsr1_batches_params p = {.state_dir = dir, .window = 16};
            dsr1_batches *b;
            if (dsr1_batches_open(&p, &b)) _exit(3);
            f->b = b;
            dsr1_batch_codec c = fake_codec(f, true);
            dsr1_batches_register(b, &c);
            dsr1_batch_sub *sub;
            int fd = pfd[1];
            /* seq counts from the results already there: only new ones are told */
            dsr1_batch_info info;
            if (dsr1_batches_get(b, "batch_k", &info)) _exit(4);
            int64_t from = info.completed + info.failed;
            dsr1_batch_info_clear(&info);
            if (dsr1_batches_subscribe(b, "batch_k", from, pipe_fn, &fd, &sub)) _exit(5);
            dsr1_batches_start(b);
            for (;;) pause();
        }
        close(pfd[1]);
        char buf[64];
        int got = 0;
        while (got < want) {
            ssize_t k = read(pfd[0], buf, sizeof buf);
            if (k <= 0) break;
            got += (int)k;
        }
        usleep((useconds_t)extra_us);
        kill(pid, SIGKILL);
        close(pfd[0]);
        int ws;
        waitpid(pid, &ws, 0);
        assert_true(WIFSIGNALED(ws));
        assert_true(got >= want);
    }
    fake *f = fake_new(9);
    dsr1_batches_params p = {.state_dir = dir, .window = 16};
    dsr1_batches *b;
    assert_int_equal(dsr1_batches_open(&p, &b), 0);
    int done[MAXN] = {0};
    done_set d = {done, 0};
    assert_int_equal(dsr1_batches_results(b, "batch_k", 0, done_fn, &d), 0);
    assert_true(d.n > 0);
    for (int i = 0; i < n; i++) assert_true(done[i] <= 1);
    f->b = b;
    dsr1_batch_codec c = fake_codec(f, true);
    assert_int_equal(dsr1_batches_register(b, &c), 0);
    assert_int_equal(dsr1_batches_start(b), 0);
    dsr1_batch_info info = wait_final(b, "batch_k", 20);
    assert_int_equal(info.state, DSR1_BATCH_COMPLETED);
    check_output_files(b, &info, n);
    dsr1_batch_info_clear(&info);
    check_each_once(b, "batch_k", n, NULL);
    for (int i = 0; i < n; i++) assert_int_equal(f->starts[i], done[i] ? 0 : 1);
    dsr1_batches_close(b);
    fake_free(f);
    rm_rf(dir);
    free(dir);
}

/* Killed while it validates a file (or soon after): validated again from scratch. */
static void test_crash_validating(void **state)
{
    (void)state;
    char *dir = tmpdir();
    const int n = 20000;
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(pfd[0]);
        fake *f = fake_new(20);
        f->hold = true;
        dsr1_batches_params p = {.state_dir = dir, .window = 8};
        dsr1_batches *b;
        if (dsr1_batches_open(&p, &b)) _exit(3);
        f->b = b;
        dsr1_batch_codec c = fake_codec(f, true);
        dsr1_batches_register(b, &c);
        dsr1_batches_start(b);
        dsr1_file_upload *u;
        if (dsr1_file_upload_begin(b, "in", "batch", &u)) _exit(4);
        char line[64];
        for (int i = 0; i < n; i++) {
            int len = snprintf(line, sizeof line, i == 7 ? "!c%d\n" : "c%d x\n", i);
            if (dsr1_file_upload_write(u, line, (size_t)len)) _exit(5);
        }
        dsr1_file_info fi;
        if (dsr1_file_upload_commit(u, &fi)) _exit(6);
        dsr1_batch_create cr = {.id = "batch_v", .format = "fake"};
        dsr1_batch_info info;
        bool created;
        if (dsr1_batches_create_from_file(b, &cr, fi.id, &info, &created)) _exit(7);
        if (write(pfd[1], "v", 1) != 1) _exit(8);
        for (;;) pause();
    }
    close(pfd[1]);
    char ch;
    assert_int_equal(read(pfd[0], &ch, 1), 1);
    close(pfd[0]);
    srand(99);
    usleep((useconds_t)(rand() % 200000));
    kill(pid, SIGKILL);
    int ws;
    waitpid(pid, &ws, 0);
    assert_true(WIFSIGNALED(ws));
    fake *f = fake_new(21);
    f->min_us = 0;
    f->max_us = 50;
    dsr1_batches *b = open_store(dir, f, 64, 0);
    dsr1_batch_info info = wait_final(b, "batch_v", 30);
    assert_int_equal(info.state, DSR1_BATCH_COMPLETED);
    assert_int_equal(info.total, n);
    assert_int_equal(info.completed + info.failed, n);
    assert_non_null(strstr(info.errors_json, "\"line\":8"));
    dsr1_batch_info_clear(&info);
    check_each_once(b, "batch_v", n, NULL);
    for (int i = 0; i < n; i++) assert_int_equal(f->starts[i], i == 7 ? 0 : 1);
    dsr1_batches_close(b);
    fake_free(f);
    rm_rf(dir);
    free(dir);
}

static void test_refusals(void **state)
{
    (void)state;
    char *dir = tmpdir();
    char path[512];
    /* a foreign database */
    snprintf(path, sizeof path, "%s/dsr1.db", dir);
    FILE *fp = fopen(path, "w");
    for (int i = 0; i < 4096; i++) fputc("garbage!"[i % 8], fp);
    fclose(fp);
    dsr1_batches_params p = {.state_dir = dir};
    dsr1_batches *b = NULL;
    assert_int_equal(dsr1_batches_open(&p, &b), DSR1_ERR_FORMAT);
    assert_non_null(strstr(dsr1_errmsg(), path));
    unlink(path);
    /* an SQLite database of someone else */
    char cmd[600];
    snprintf(cmd, sizeof cmd, "sqlite3 '%s' 'CREATE TABLE t(x)' 2>/dev/null", path);
    if (system(cmd) == 0) {
        assert_int_equal(dsr1_batches_open(&p, &b), DSR1_ERR_FORMAT);
        assert_non_null(strstr(dsr1_errmsg(), path));
        unlink(path);
    }
    /* a second opener */
    fake *f = fake_new(10);
    b = open_store(dir, f, 4, 0);
    dsr1_batches *b2 = NULL;
    assert_int_equal(dsr1_batches_open(&p, &b2), DSR1_ERR_EXISTS);
    assert_non_null(strstr(dsr1_errmsg(), "in use"));
    dsr1_file_info fi;
    upload(b, "c0 x\n", &fi);
    dsr1_batches_close(b);
    /* an unknown file */
    snprintf(path, sizeof path, "%s/files/file-unknown", dir);
    fp = fopen(path, "w");
    fputs("x", fp);
    fclose(fp);
    assert_int_equal(dsr1_batches_open(&p, &b), DSR1_ERR_FORMAT);
    assert_non_null(strstr(dsr1_errmsg(), path));
    unlink(path);
    /* a file whose size changed */
    snprintf(path, sizeof path, "%s/files/%s", dir, fi.id);
    fp = fopen(path, "a");
    fputs("more", fp);
    fclose(fp);
    assert_int_equal(dsr1_batches_open(&p, &b), DSR1_ERR_FORMAT);
    assert_non_null(strstr(dsr1_errmsg(), path));
    assert_int_equal(truncate(path, fi.bytes), 0);
    assert_int_equal(dsr1_batches_open(&p, &b), 0);
    dsr1_batches_close(b);
    /* a damaged database of ours: garbage over its pages after the first */
    snprintf(path, sizeof path, "%s/dsr1.db", dir);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_true(sb.st_size >= 3 * 4096);
    int fd = open(path, O_WRONLY);
    char junk[4096];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (char)(i * 7 + 3);
    for (off_t o = 4096; o < sb.st_size; o += 4096)
        assert_int_equal(pwrite(fd, junk, sizeof junk, o), (ssize_t)sizeof junk);
    close(fd);
    assert_int_equal(dsr1_batches_open(&p, &b), DSR1_ERR_FORMAT);
    assert_non_null(strstr(dsr1_errmsg(), path));
    fake_free(f);
    rm_rf(dir);
    free(dir);
}

/* In a child, in a mount namespace of its own: a 1 MiB tmpfs as the state directory. */
static int disk_full_child(const char *dir)
{
    if (unshare(CLONE_NEWNS) != 0) return 77;
    if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) return 77;
    if (mount("tmpfs", dir, "tmpfs", 0, "size=1m,mode=0700") != 0) return 77;
    fake *f = fake_new(11);
    dsr1_batches *b = open_store(dir, f, 8, 0);
    char buf[4096];
    memset(buf, 'a', sizeof buf);
    dsr1_file_upload *u;
    assert_int_equal(dsr1_file_upload_begin(b, "big", "batch", &u), 0);
    dsr1_status st = DSR1_OK;
    for (int i = 0; i < 1000 && !st; i++) st = dsr1_file_upload_write(u, buf, sizeof buf);
    if (st != DSR1_ERR_IO || !strstr(dsr1_errmsg(), "No space left")) {
        fprintf(stderr, "upload: %d %s\n", st, dsr1_errmsg());
        return 2;
    }
    dsr1_file_upload_abort(u);
    /* results too large for the disk: the batch fails, with the reason */
    f->big = 64 << 10;
    dsr1_batch_info info;
    create_writer(b, "batch_full", 100, NULL, &info);
    dsr1_batch_info_clear(&info);
    info = wait_final(b, "batch_full", 20);
    if (info.state != DSR1_BATCH_FAILED || !info.errors_json || !strstr(info.errors_json, "full")) {
        fprintf(stderr, "batch: %s %s\n", dsr1_batch_state_str(info.state),
                info.errors_json ? info.errors_json : "(no errors)");
        return 3;
    }
    dsr1_batch_info_clear(&info);
    dsr1_batches_close(b);
    /* it opens again, consistent, and works once there is room */
    f->big = 0;
    if (mount(NULL, dir, NULL, MS_REMOUNT, "size=8m,mode=0700") != 0) return 5;
    b = open_store(dir, f, 8, 0);
    assert_int_equal(dsr1_batches_get(b, "batch_full", &info), 0);
    assert_int_equal(info.state, DSR1_BATCH_FAILED);
    dsr1_batch_info_clear(&info);
    create_writer(b, "batch_ok", 20, NULL, &info);
    dsr1_batch_info_clear(&info);
    info = wait_final(b, "batch_ok", 20);
    if (info.state != DSR1_BATCH_COMPLETED) return 4;
    dsr1_batch_info_clear(&info);
    dsr1_batches_close(b);
    fake_free(f);
    umount(dir);
    return 0;
}

static void test_disk_full(void **state)
{
    (void)state;
    char *dir = tmpdir();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) _exit(disk_full_child(dir));
    int ws;
    waitpid(pid, &ws, 0);
    rm_rf(dir);
    free(dir);
    assert_true(WIFEXITED(ws));
    if (WEXITSTATUS(ws) == 77) {
        print_message("disk full: skipped (no mount namespace here: unshare -m needs root)\n");
        skip();
    }
    assert_int_equal(WEXITSTATUS(ws), 0);
}

static int count_dir(const char *path)
{
    DIR *d = opendir(path);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static void test_retention(void **state)
{
    (void)state;
    char *dir = tmpdir();
    fake *f = fake_new(12);
    f->err_pct = 30;
    dsr1_batches *b = open_store(dir, f, 8, 1);
    dsr1_batch_info info;
    create_writer(b, "batch_old", 30, NULL, &info);
    dsr1_batch_info_clear(&info);
    info = wait_final(b, "batch_old", 10);
    assert_true(info.output_file_id[0] && info.error_file_id[0]);
    char out_id[DSR1_BATCH_ID_MAX];
    snprintf(out_id, sizeof out_id, "%s", info.output_file_id);
    dsr1_batch_info_clear(&info);
    char files[600];
    snprintf(files, sizeof files, "%s/files", dir);
    assert_int_equal(count_dir(files), 2);
    dsr1_status st = DSR1_OK;
    for (int i = 0; i < 100 && !st; i++) {
        usleep(50000);
        st = dsr1_batches_get(b, "batch_old", &info);
        if (!st) dsr1_batch_info_clear(&info);
    }
    assert_int_equal(st, DSR1_ERR_NOT_FOUND);
    for (int i = 0; i < 40 && dsr1_files_get(b, out_id, (dsr1_file_info[1]){0}) == 0; i++)
        usleep(50000);
    assert_int_equal(dsr1_files_get(b, out_id, (dsr1_file_info[1]){0}), DSR1_ERR_NOT_FOUND);
    /* the rows go first, the files right after */
    for (int i = 0; i < 40 && count_dir(files) > 0; i++) usleep(50000);
    assert_int_equal(count_dir(files), 0);
    dsr1_batches_close(b);
    fake_free(f);
    rm_rf(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_writer_batch),     cmocka_unit_test(test_windows),
        cmocka_unit_test(test_file_batch),       cmocka_unit_test(test_subscribe),
        cmocka_unit_test(test_cancel),           cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_close_reopen),     cmocka_unit_test(test_crash),
        cmocka_unit_test(test_crash_validating), cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_disk_full),        cmocka_unit_test(test_retention),
        cmocka_unit_test(test_grid_down),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
