/* Status strings and the thread-local error message (see status.h). */
#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char errbuf[1024];

const char *dsr1_status_str(dsr1_status s)
{
    switch (s) {
    case DSR1_OK: return "ok";
    case DSR1_ERR_INVALID_ARG: return "invalid argument";
    case DSR1_ERR_IO: return "I/O error";
    case DSR1_ERR_FORMAT: return "malformed input";
    case DSR1_ERR_UNSUPPORTED: return "unsupported";
    case DSR1_ERR_NOMEM: return "out of memory";
    case DSR1_ERR_NOT_FOUND: return "not found";
    case DSR1_ERR_RANGE: return "out of range";
    case DSR1_ERR_INTERNAL: return "internal error";
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
    char prefix[512], old[sizeof(errbuf)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    memcpy(old, errbuf, sizeof(old));
    snprintf(errbuf, sizeof(errbuf), "%s: %s", prefix, old);
    return s;
}

const char *dsr1_errmsg(void)
{
    return errbuf;
}
