/* Logging for operators: one line per event on stderr, with time, level and an optional
 * component tag set per thread (a worker thread tags itself "worker 2/4 stage 0").
 * The level check happens before any formatting, so disabled debug logs cost a branch.
 * Level comes from DSR1_LOG (error|warn|info|debug) or dsr1_log_set_level(). */
#ifndef DSR1_LOG_H
#define DSR1_LOG_H

enum { DSR1_LOG_ERROR = 0, DSR1_LOG_WARN = 1, DSR1_LOG_INFO = 2, DSR1_LOG_DEBUG = 3 };

int dsr1_log_level(void);
void dsr1_log_set_level(int level);
/* Parse "error", "warn", "info", "debug"; returns -1 when unknown. */
int dsr1_log_parse_level(const char *name);
/* Tag the calling thread's log lines ("" or NULL clears). Copied. */
void dsr1_log_set_tag(const char *tag);
void dsr1_log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define DSR1_LOG(level, ...)                                                                       \
    do {                                                                                           \
        if ((level) <= dsr1_log_level()) dsr1_log_write((level), __VA_ARGS__);                     \
    } while (0)
#define DSR1_ERROR(...) DSR1_LOG(DSR1_LOG_ERROR, __VA_ARGS__)
#define DSR1_WARN(...)  DSR1_LOG(DSR1_LOG_WARN, __VA_ARGS__)
#define DSR1_INFO(...)  DSR1_LOG(DSR1_LOG_INFO, __VA_ARGS__)
#define DSR1_DEBUG(...) DSR1_LOG(DSR1_LOG_DEBUG, __VA_ARGS__)

#endif
