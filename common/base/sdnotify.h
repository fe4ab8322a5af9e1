/* Telling systemd how a service is doing (sd_notify's datagram protocol, without
 * libsystemd): one datagram of "KEY=VALUE" lines to the unix socket named by
 * $NOTIFY_SOCKET (a leading '@' names one in the abstract namespace). Without
 * $NOTIFY_SOCKET (not started by systemd with Type=notify) every call does nothing. */
#ifndef DSR1_SDNOTIFY_H
#define DSR1_SDNOTIFY_H

#include <stdbool.h>
#include <stdint.h>

/* Sends state ("READY=1", "STATUS=serving", "WATCHDOG=1", "STOPPING=1", several lines
 * joined by '\n'). Returns true when a datagram went out, false without $NOTIFY_SOCKET or
 * when it could not be sent (never fatal: the service runs on). */
bool dsr1_sd_notify(const char *state);
/* printf-style. */
__attribute__((format(printf, 1, 2))) bool dsr1_sd_notifyf(const char *fmt, ...);
/* The interval at which to send WATCHDOG=1: half of $WATCHDOG_USEC, in microseconds; 0
 * when no watchdog is asked for (unset, malformed, or $WATCHDOG_PID names another
 * process). */
uint64_t dsr1_sd_watchdog_usec(void);

#endif
