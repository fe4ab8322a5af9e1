/* sd_notify's datagram protocol (sdnotify.h): a SOCK_DGRAM unix socket, one sendto per
 * message, the address from $NOTIFY_SOCKET (a path, or '@' for the abstract namespace). */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "sdnotify.h"

bool dsr1_sd_notify(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path || !state) return false;
    size_t n = strlen(path);
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof(addr));
    if ((path[0] != '/' && path[0] != '@') || n >= sizeof(addr.sun_path)) return false;
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, path, n);
    if (path[0] == '@') addr.sun_path[0] = '\0'; /* abstract: no terminating NUL counted */
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '/'));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    ssize_t k;
    do {
        k = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&addr, len);
    } while (k < 0 && errno == EINTR);
    close(fd);
    return k == (ssize_t)strlen(state);
}

bool dsr1_sd_notifyf(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    return k >= 0 && dsr1_sd_notify(buf);
}

uint64_t dsr1_sd_watchdog_usec(void)
{
    const char *us = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
    if (!us || !*us) return 0;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(us, &end, 10);
    if (errno || *end || v == 0) return 0;
    if (pid && *pid) {
        long p = strtol(pid, &end, 10);
        if (*end || p != (long)getpid()) return 0;
    }
    return (uint64_t)(v / 2 ? v / 2 : 1);
}
