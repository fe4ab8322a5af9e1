/* Log sink: stderr, one fprintf per line so that lines from threads do not interleave. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The level is process-wide by nature (one stderr); -1 means "not read from env yet". */
static int log_level = -1;
static _Thread_local char log_tag[64];

int dsr1_log_parse_level(const char *name)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (name && strcmp(name, names[i]) == 0) return i;
    return -1;
}

int dsr1_log_level(void)
{
    if (log_level < 0) {
        int l = dsr1_log_parse_level(getenv("DSR1_LOG"));
        log_level = l < 0 ? DSR1_LOG_INFO : l;
    }
    return log_level;
}

void dsr1_log_set_level(int level)
{
    log_level = level;
}

void dsr1_log_set_tag(const char *tag)
{
    snprintf(log_tag, sizeof(log_tag), "%s", tag ? tag : "");
}

void dsr1_log_write(int level, const char *fmt, ...)
{
    static const char *names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    localtime_r(&ts.tv_sec, &tm);
    fprintf(stderr, "%02d:%02d:%02d.%03ld %-5s %s%s%s\n", tm.tm_hour, tm.tm_min, tm.tm_sec,
            ts.tv_nsec / 1000000,
            names[level < 0   ? 0
                  : level > 3 ? 3
                              : level],
            log_tag[0] ? log_tag : "", log_tag[0] ? ": " : "", msg);
}
