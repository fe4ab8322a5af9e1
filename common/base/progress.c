/* Progress bar / periodic log lines (see progress.h). */
#include "progress.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

double dsr1_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void dsr1_progress_begin(dsr1_progress *p, const char *what, uint64_t total_bytes, int total_items)
{
    p->what = what;
    p->total_bytes = total_bytes;
    p->total_items = total_items;
    p->done_bytes = 0;
    p->done_items = 0;
    p->t_start = p->t_last = dsr1_now();
    p->tty = isatty(2) && getenv("DSR1_NO_PROGRESS_BAR") == NULL;
    p->quiet = dsr1_log_level() < DSR1_LOG_INFO;
}

static void progress_show(dsr1_progress *p, bool final)
{
    double el = dsr1_now() - p->t_start;
    double gb = p->done_bytes / 1e9, tot = p->total_bytes / 1e9;
    double rate = el > 0 ? gb / el : 0;
    if (p->tty) {
        int width = 30;
        int fill = p->total_bytes ? (int)(width * (double)p->done_bytes / p->total_bytes) : width;
        char bar[64];
        for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
        bar[width] = 0;
        fprintf(stderr, "\r%s [%s] %.2f/%.2f GB, %d/%d shards, %.1f s, %.2f GB/s%s", p->what, bar,
                gb, tot, p->done_items, p->total_items, el, rate, final ? "\n" : "");
        fflush(stderr);
    } else {
        DSR1_INFO("%s: %.2f/%.2f GB, %d/%d shards, %.1f s, %.2f GB/s%s", p->what, gb, tot,
                  p->done_items, p->total_items, el, rate, final ? ", done" : "");
    }
}

void dsr1_progress_add(dsr1_progress *p, uint64_t bytes, int items)
{
    p->done_bytes += bytes;
    p->done_items += items;
    if (p->quiet) return;
    double now = dsr1_now();
    if (now - p->t_last >= (p->tty ? 0.1 : 5.0)) {
        p->t_last = now;
        progress_show(p, false);
    }
}

void dsr1_progress_end(dsr1_progress *p)
{
    if (!p->quiet) progress_show(p, true);
}
