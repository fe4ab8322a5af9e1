/* Progress of long operations (loading shards, writing a checkpoint): a redrawn bar when
 * stderr is a terminal, otherwise an INFO log line at most every few seconds and at the
 * end. Reports bytes done/total, items (shards) done/total, elapsed seconds and rate. */
#ifndef DSR1_PROGRESS_H
#define DSR1_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>

typedef struct {
    const char *what; /* "loading", "writing" */
    uint64_t total_bytes, done_bytes;
    int total_items, done_items;
    double t_start, t_last;
    bool tty, quiet;
} dsr1_progress;

void dsr1_progress_begin(dsr1_progress *p, const char *what, uint64_t total_bytes, int total_items);
/* Add bytes (and finished items); redraws or logs when due. */
void dsr1_progress_add(dsr1_progress *p, uint64_t bytes, int items);
void dsr1_progress_end(dsr1_progress *p);
/* Monotonic seconds. */
double dsr1_now(void);

#endif
