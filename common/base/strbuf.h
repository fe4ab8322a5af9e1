/* A growable NUL-terminated string: appends that never fail mid-way. On an allocation
 * failure `oom` is set and every later append is a no-op, so a builder appends freely and
 * checks `oom` once at the end. Zero-initialise to start; free `p` when done. */
#ifndef DSR1_STRBUF_H
#define DSR1_STRBUF_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    char *p; /* NULL until the first append */
    size_t n, cap;
    bool oom;
} dsr1_strbuf;

void dsr1_strbuf_add(dsr1_strbuf *b, const char *s, size_t n);
void dsr1_strbuf_str(dsr1_strbuf *b, const char *s);
/* printf-style, of any length */
void dsr1_strbuf_fmt(dsr1_strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
