/* The batch store tests' fake codec and helpers: items finish on a thread of the fake's
 * own after a random delay with random results ("ok c<i>", "err c<i>", "aborted c<i>"), it
 * counts the starts of each index, records which batch each start was for and how many
 * items of each batch ran at once, and can hold items until they are aborted or answer
 * DSR1_ERR_BUSY at random, or play a suspended worker grid (down). Error results read
 * "<code> <custom_id> <line>". */
#ifndef DSR1_BATCH_FAKE_H
#define DSR1_BATCH_FAKE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "batches.h"

#define MAXN         20000
#define NSLOTS       1024
#define FAKE_BATCHES 8 /* batches told apart by the per-batch records */

typedef struct {
    bool used, aborted;
    uint64_t key;
    char rid[200];
    char cid[64];
    int idx;
    int bi; /* index into fake.bid */
    int64_t due;
} fitem;

typedef struct {
    dsr1_batches *b;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    fitem it[NSLOTS];
    int min_us, max_us; /* delay of an item */
    bool hold;          /* items finish only when aborted */
    int busy_pct, err_pct;
    /* the worker grid suspended: starts are refused with DSR1_ERR_UNAVAILABLE (counted in
     * refused), and the items running end at once in error with status DSR1_ERR_UNAVAILABLE,
     * as the scheduler ends them (their bytes read "down c<i>") */
    bool down;
    int refused;
    size_t big; /* result bytes beyond the text (disk full) */
    int starts[MAXN];
    int running, max_running;
    int nstarts, last_a, first_b; /* start ordinals of batch_A's last and batch_B's first */
    /* per batch (the first FAKE_BATCHES ids seen): running now, most at once, and the
     * batch of each start (order[ordinal - 1], ordinals from 1) */
    char bid[FAKE_BATCHES][64];
    int nbid;
    int b_running[FAKE_BATCHES], b_max_running[FAKE_BATCHES];
    unsigned char order[MAXN];
    unsigned seed;
    bool stop;
    pthread_t th;
} fake;

typedef struct {
    int n;
    int count[MAXN];
    int64_t next_seq;
    int ends, after_end, errors, bad_seq;
    pthread_mutex_t mu;
} collect;

int64_t now_us(void); /* monotonic */
fake *fake_new(unsigned seed);
void fake_free(fake *f);
dsr1_batch_codec fake_codec(fake *f, bool output_files);
char *tmpdir(void);
void rm_rf(const char *path);
dsr1_batches *open_store(const char *dir, fake *f, int window, int64_t retention);
dsr1_batches *open_store_bw(const char *dir, fake *f, int window, int batch_window);
int fake_batch(fake *f, const char *id); /* id's index in f->bid (-1: never started); under f->mu */
dsr1_batch_info wait_final(dsr1_batches *b, const char *id, double timeout_s);
void create_writer(dsr1_batches *b, const char *id, int n, const char *window,
                   dsr1_batch_info *out);
/* The same with a priority and a max_running. */
void create_writer_p(dsr1_batches *b, const char *id, int n, int priority, int max_running,
                     dsr1_batch_info *out);
/* Writes DIR/dsr1.db as a store of schema version 1 made it (its DDL as it shipped), with
 * one batch `id` in progress of n items "c<i> payload" (format "fake", metadata
 * {"k":"v"}), none finished. */
void make_v1_store(const char *dir, const char *id, int n);
bool collect_fn(void *ctx, const dsr1_batch_result_row *row);
collect *collect_new(int64_t from);
void read_file(dsr1_batches *b, const char *id, char **out, int64_t *len);
void check_output_files(dsr1_batches *b, const dsr1_batch_info *info, int n);

#endif
