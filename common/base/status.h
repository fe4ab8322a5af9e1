/* One status type for every fallible dsr1 function.
 *
 * Convention (after UCX): DSR1_OK is 0, errors are negative. A function that fails
 * records a human-readable message for the calling thread with dsr1_error(); callers
 * read it with dsr1_errmsg() and either pass the status up unchanged or report it.
 * The message is thread-local (like errno/dlerror) so that the many validation paths
 * in the readers can say exactly what is wrong without threading a buffer through
 * every call. Output parameters are written only on success. */
#ifndef DSR1_STATUS_H
#define DSR1_STATUS_H

typedef enum {
    DSR1_OK = 0,
    DSR1_ERR_INVALID_ARG = -1, /* caller passed something unusable */
    DSR1_ERR_IO = -2,          /* open/read/mmap/write failed */
    DSR1_ERR_FORMAT = -3,      /* malformed input file or message */
    DSR1_ERR_UNSUPPORTED = -4, /* well-formed but not something the engine supports */
    DSR1_ERR_NOMEM = -5,
    DSR1_ERR_NOT_FOUND = -6, /* a named tensor, key or file is missing */
    DSR1_ERR_RANGE = -7,     /* a value out of its allowed range (ids, sizes, positions) */
    DSR1_ERR_INTERNAL = -8,  /* a broken invariant of ours */
    DSR1_ERR_EXISTS = -9,      /* a name already in use (request or batch id) */
    DSR1_ERR_BUSY = -10,       /* a queue or pool is full: retry later */
    DSR1_ERR_UNAVAILABLE = -11, /* the service stopped (e.g. after a worker failure) */
    DSR1_ERR_LOST = -12,        /* workers were lost: the steps in flight did not run, and the
                                 * grid goes on after recovering on the survivors */
} dsr1_status;

const char *dsr1_status_str(dsr1_status s);

/* Record the calling thread's error message (printf format) and return s, so that
 * `return dsr1_error(DSR1_ERR_FORMAT, "...", ...);` reads naturally. */
dsr1_status dsr1_error(dsr1_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The calling thread's last message; "" when none. Valid until the next dsr1_error(). */
const char *dsr1_errmsg(void);

/* Prefix the current message with more context ("loading layer 3: <old message>"). */
dsr1_status dsr1_error_context(dsr1_status s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
