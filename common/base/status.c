/* Status strings and the thread-local error message (see status.h). */
#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char errbuf[4096];

const char *dsr1_status_str(dsr1_status s)
{
    switch (s) {
    case DSR1_OK:
        return "ok";
    case DSR1_ERR_INVALID_ARG:
        return "invalid argument";
    case DSR1_ERR_IO:
        return "I/O error";
    case DSR1_ERR_FORMAT:
        return "malformed input";
    case DSR1_ERR_UNSUPPORTED:
        return "unsupported";
    case DSR1_ERR_NOMEM:
        return "out of memory";
    case DSR1_ERR_NOT_FOUND:
        return "not found";
    case DSR1_ERR_RANGE:
        return "out of range";
    case DSR1_ERR_INTERNAL:
        return "internal error";
    case DSR1_ERR_EXISTS:
        return "already exists";
    case DSR1_ERR_BUSY:
        return "busy";
    case DSR1_ERR_UNAVAILABLE:
        return "unavailable";
    case DSR1_ERR_LOST:
        return "workers lost";
    }
    return "unknown status";
}

dsr1_status dsr1_error(dsr1_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, sizeof(errbuf), fmt, ap);
    va_end(ap);
    return s;
}

dsr1_status dsr1_error_context(dsr1_status s, const char *fmt, ...)
{
    char old[sizeof(errbuf)];
    memcpy(old, errbuf, sizeof(old));
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(errbuf, sizeof(errbuf), fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof(errbuf))
        snprintf(errbuf + n, sizeof(errbuf) - (size_t)n, ": %s", old);
    return s;
}

const char *dsr1_errmsg(void)
{
    return errbuf;
}
