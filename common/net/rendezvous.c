/* The TCP rendezvous (rendezvous.h): a coordinator listens, workers join with a hello and
 * wait for a welcome or a refusal. No threads: dsr1_rdv_accept polls the listening socket
 * and every connection whose hello is still arriving, reading each one's bytes as they come
 * (nonblocking, exactly the frame's length so nothing after the hello is consumed). Partial
 * hellos live in the dsr1_rdv with the time their connection was accepted; those older than
 * DSR1_RDV_HELLO_MS are dropped, so a stalled or hostile peer costs a slot and a few bytes,
 * never a wait. Bodies grow as their bytes arrive rather than by the size a peer announces.
 * Writes use MSG_NOSIGNAL: a peer that went away is an error, not a SIGPIPE. */
#include <errno.h>
#include <stdarg.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "rendezvous.h"

#define FRAME_HEADER 12
#define KIND_HELLO   1u
#define KIND_WELCOME 2u
#define KIND_REFUSAL 3u
/* Connections whose hello is still arriving; more are closed at once with a warning. */
#define MAX_PENDING 256
/* A refusal's text is a message for a log line, not a payload. */
#define MAX_REFUSAL 4096
#define NAME_CAP    64
#define NO_DEADLINE INT64_MAX

static const unsigned char magic[4] = {'D', 'S', 'R', 'J'};

typedef struct {
    int fd;
    int64_t start_ms;
    unsigned char hdr[FRAME_HEADER];
    size_t hdr_got;
    uint32_t size;
    unsigned char *body;
    size_t body_cap, body_got;
    char name[NAME_CAP];
} rdv_conn;

struct dsr1_rdv {
    int fd;
    int port;
    char addr[NAME_CAP + 8];
    rdv_conn *conns;
    struct pollfd *pfds;
    size_t n, cap;
};

struct dsr1_rdv_peer {
    int fd;
    char name[NAME_CAP];
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Milliseconds left before deadline as a poll timeout (-1: none). */
static int wait_ms(int64_t deadline)
{
    if (deadline == NO_DEADLINE) return -1;
    int64_t left = deadline - now_ms();
    if (left <= 0) return 0;
    return left > INT32_MAX ? INT32_MAX : (int)left;
}

static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* "HOST:PORT" or "[V6]:PORT" into host and port strings. */
static dsr1_status parse_hostport(const char *s, char *host, size_t host_cap, char port[6],
                                  int allow_port0)
{
    if (!s || !*s) return dsr1_error(DSR1_ERR_INVALID_ARG, "rendezvous address is empty");
    const char *h, *he, *colon;
    if (s[0] == '[') {
        h = s + 1;
        he = strchr(h, ']');
        if (!he)
            return dsr1_error(DSR1_ERR_INVALID_ARG, "rendezvous address \"%s\": no closing ']'", s);
        colon = he + 1;
        if (*colon != ':')
            return dsr1_error(DSR1_ERR_INVALID_ARG,
                              "rendezvous address \"%s\": expected [ADDRESS]:PORT", s);
    } else {
        h = s;
        colon = strchr(s, ':');
        if (!colon)
            return dsr1_error(DSR1_ERR_INVALID_ARG, "rendezvous address \"%s\": expected HOST:PORT",
                              s);
        if (strchr(colon + 1, ':'))
            return dsr1_error(DSR1_ERR_INVALID_ARG,
                              "rendezvous address \"%s\": an IPv6 address needs brackets "
                              "([ADDRESS]:PORT)",
                              s);
        he = colon;
    }
    size_t hl = (size_t)(he - h);
    if (hl == 0) return dsr1_error(DSR1_ERR_INVALID_ARG, "rendezvous address \"%s\": no host", s);
    if (hl >= host_cap)
        return dsr1_error(DSR1_ERR_INVALID_ARG, "rendezvous address \"%s\": host too long", s);
    const char *p = colon + 1;
    size_t pl = strlen(p);
    unsigned long v = 0;
    for (size_t i = 0; i < pl; i++) {
        if (p[i] < '0' || p[i] > '9') {
            pl = 0;
            break;
        }
        v = v * 10 + (unsigned long)(p[i] - '0');
        if (v > 65535) break;
    }
    if (pl == 0 || pl > 5 || v > 65535 || (v == 0 && !allow_port0))
        return dsr1_error(DSR1_ERR_INVALID_ARG, "rendezvous address \"%s\": bad port \"%s\"", s, p);
    memcpy(host, h, hl);
    host[hl] = '\0';
    snprintf(port, 6, "%lu", v);
    return DSR1_OK;
}

static void sockaddr_name(const struct sockaddr *sa, socklen_t len, char *out, size_t cap)
{
    char h[INET6_ADDRSTRLEN], p[8];
    if (getnameinfo(sa, len, h, sizeof h, p, sizeof p, NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        snprintf(out, cap, "(unknown peer)");
        return;
    }
    if (sa->sa_family == AF_INET6)
        snprintf(out, cap, "[%s]:%s", h, p);
    else
        snprintf(out, cap, "%s:%s", h, p);
}

/* Send all n bytes before deadline. 0 or an errno value (ETIMEDOUT when time ran out). */
static int send_all(int fd, const void *buf, size_t n, int64_t deadline)
{
    const unsigned char *b = buf;
    while (n > 0) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        if (w > 0) {
            b += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return errno;
        int t = wait_ms(deadline);
        if (t == 0) return ETIMEDOUT;
        struct pollfd pf = {fd, POLLOUT, 0};
        if (poll(&pf, 1, t) < 0 && errno != EINTR) return errno;
    }
    return 0;
}

/* Receive exactly n bytes before deadline. 0, an errno value (ETIMEDOUT when time ran
 * out), or -1 when the peer closed first. */
static int recv_all(int fd, void *buf, size_t n, int64_t deadline)
{
    unsigned char *b = buf;
    while (n > 0) {
        ssize_t r = recv(fd, b, n, 0);
        if (r > 0) {
            b += r;
            n -= (size_t)r;
            continue;
        }
        if (r == 0) return -1;
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return errno;
        int t = wait_ms(deadline);
        if (t == 0) return ETIMEDOUT;
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, t) < 0 && errno != EINTR) return errno;
    }
    return 0;
}

static int send_frame(int fd, uint32_t kind, const void *data, size_t len, int64_t deadline)
{
    unsigned char hdr[FRAME_HEADER];
    memcpy(hdr, magic, 4);
    put_u32(hdr + 4, kind);
    put_u32(hdr + 8, (uint32_t)len);
    int e = send_all(fd, hdr, sizeof hdr, deadline);
    if (!e && len) e = send_all(fd, data, len, deadline);
    return e;
}

/* Close a connection we have read all we expect from: whatever the peer sent beyond it is
 * read first, since closing with unread bytes resets the connection and can destroy the
 * answer still in flight to the peer. */
static void close_conn(int fd)
{
    char sink[512];
    for (int i = 0; i < 64; i++) {
        ssize_t r = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
        if (r <= 0 && !(r < 0 && errno == EINTR)) break;
    }
    close(fd);
}

/* ---------------------------------------------------------------- coordinator side */

dsr1_status dsr1_rdv_listen(const char *hostport, dsr1_rdv **out)
{
    char host[256], port[6];
    dsr1_status st = parse_hostport(hostport, host, sizeof host, port, 1);
    if (st) return st;
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int g = getaddrinfo(host, port, &hints, &res);
    if (g != 0)
        return dsr1_error(DSR1_ERR_IO, "rendezvous: cannot resolve %s: %s", hostport,
                          g == EAI_SYSTEM ? strerror(errno) : gai_strerror(g));
    int fd = -1, err = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 128) == 0) break;
        err = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return dsr1_error(DSR1_ERR_IO, "rendezvous: cannot listen on %s: %s", hostport,
                          strerror(err ? err : EADDRNOTAVAIL));
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) {
        err = errno;
        close(fd);
        return dsr1_error(DSR1_ERR_IO, "rendezvous: listening on %s: %s", hostport, strerror(err));
    }
    dsr1_rdv *r = calloc(1, sizeof *r);
    if (!r) {
        close(fd);
        return dsr1_error(DSR1_ERR_NOMEM, "rendezvous: out of memory");
    }
    r->fd = fd;
    r->port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                       : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    sockaddr_name((struct sockaddr *)&ss, sl, r->addr, sizeof r->addr);
    *out = r;
    return DSR1_OK;
}

int dsr1_rdv_port(const dsr1_rdv *r)
{
    return r->port;
}

static void conn_drop(rdv_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void conn_drop(rdv_conn *c, const char *fmt, ...)
{
    if (DSR1_LOG_WARN <= dsr1_log_level()) {
        char why[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, sizeof why, fmt, ap);
        va_end(ap);
        DSR1_WARN("rendezvous: dropped %s: %s", c->name, why);
    }
    close(c->fd);
    c->fd = -1;
    free(c->body);
    c->body = NULL;
}

/* Read what has arrived of c's hello. 1: complete; 0: more to come; -1: dropped. */
static int conn_read(rdv_conn *c)
{
    for (;;) {
        ssize_t got;
        if (c->hdr_got < FRAME_HEADER) {
            got = recv(c->fd, c->hdr + c->hdr_got, FRAME_HEADER - c->hdr_got, 0);
        } else {
            if (c->body_got == c->body_cap) {
                size_t cap = c->body_cap ? 2 * c->body_cap : 4096;
                if (cap > c->size) cap = c->size;
                unsigned char *nb = realloc(c->body, cap);
                if (!nb) {
                    conn_drop(c, "out of memory for a hello of %u bytes", (unsigned)c->size);
                    return -1;
                }
                c->body = nb;
                c->body_cap = cap;
            }
            got = recv(c->fd, c->body + c->body_got, c->body_cap - c->body_got, 0);
        }
        if (got == 0) {
            conn_drop(c, "closed after %zu bytes of its hello", c->hdr_got + c->body_got);
            return -1;
        }
        if (got < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            conn_drop(c, "%s", strerror(errno));
            return -1;
        }
        if (c->hdr_got < FRAME_HEADER) {
            c->hdr_got += (size_t)got;
            if (c->hdr_got < FRAME_HEADER) continue;
            uint32_t kind = get_u32(c->hdr + 4);
            c->size = get_u32(c->hdr + 8);
            if (memcmp(c->hdr, magic, 4) != 0) {
                conn_drop(c, "not a rendezvous hello (bad magic)");
                return -1;
            }
            if (kind != KIND_HELLO) {
                conn_drop(c, "message kind %u where a hello (1) was expected", (unsigned)kind);
                return -1;
            }
            if (c->size > DSR1_RDV_MAX) {
                conn_drop(c, "hello of %u bytes is over the limit of %u", (unsigned)c->size,
                          DSR1_RDV_MAX);
                return -1;
            }
        } else {
            c->body_got += (size_t)got;
        }
        if (c->body_got == c->size) return 1;
    }
}

/* Remove the closed entries (fd -1), keeping the others in arrival order. */
static void compact(dsr1_rdv *r)
{
    size_t k = 0;
    for (size_t i = 0; i < r->n; i++)
        if (r->conns[i].fd >= 0) r->conns[k++] = r->conns[i];
    r->n = k;
}

/* Hand c out as a peer; c's slot is marked free. */
static dsr1_status conn_take(rdv_conn *c, dsr1_rdv_peer **peer, void **hello, size_t *len)
{
    dsr1_rdv_peer *p = malloc(sizeof *p);
    void *body = c->body ? (void *)c->body : malloc(1);
    if (!p || !body) {
        free(p);
        if (body != c->body) free(body);
        conn_drop(c, "out of memory");
        return dsr1_error(DSR1_ERR_NOMEM, "rendezvous: out of memory");
    }
    p->fd = c->fd;
    memcpy(p->name, c->name, sizeof p->name);
    *peer = p;
    *hello = body;
    *len = c->size;
    c->fd = -1;
    c->body = NULL;
    return DSR1_OK;
}

/* Accept every connection waiting on the listening socket. */
static dsr1_status accept_new(dsr1_rdv *r)
{
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(r->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return DSR1_OK;
            return dsr1_error(DSR1_ERR_IO, "rendezvous: accepting on %s: %s", r->addr,
                              strerror(errno));
        }
        char name[NAME_CAP];
        sockaddr_name((struct sockaddr *)&ss, sl, name, sizeof name);
        if (r->n == MAX_PENDING) {
            DSR1_WARN("rendezvous: dropped %s: %d hellos are already arriving", name, MAX_PENDING);
            close(fd);
            continue;
        }
        if (r->n == r->cap) {
            size_t cap = r->cap ? 2 * r->cap : 8;
            rdv_conn *nc = realloc(r->conns, cap * sizeof *nc);
            if (!nc) {
                close(fd);
                return dsr1_error(DSR1_ERR_NOMEM, "rendezvous: out of memory");
            }
            r->conns = nc;
            struct pollfd *np = realloc(r->pfds, (cap + 1) * sizeof *np);
            if (!np) {
                close(fd);
                return dsr1_error(DSR1_ERR_NOMEM, "rendezvous: out of memory");
            }
            r->pfds = np;
            r->cap = cap;
        }
        rdv_conn *c = &r->conns[r->n++];
        memset(c, 0, sizeof *c);
        c->fd = fd;
        c->start_ms = now_ms();
        memcpy(c->name, name, sizeof name);
    }
    return DSR1_OK;
}

dsr1_status dsr1_rdv_accept(dsr1_rdv *r, int timeout_ms, dsr1_rdv_peer **peer, void **hello,
                            size_t *len)
{
    int64_t start = now_ms();
    int64_t deadline = timeout_ms < 0 ? NO_DEADLINE : start + timeout_ms;
    if (!r->pfds) {
        r->pfds = malloc(sizeof *r->pfds);
        if (!r->pfds) return dsr1_error(DSR1_ERR_NOMEM, "rendezvous: out of memory");
    }
    for (;;) {
        /* Drop the hellos that took too long; the next expiry bounds the wait. */
        int64_t now = now_ms(), next_expiry = NO_DEADLINE;
        for (size_t i = 0; i < r->n; i++) {
            rdv_conn *c = &r->conns[i];
            if (now - c->start_ms >= DSR1_RDV_HELLO_MS)
                conn_drop(c, "sent %zu bytes of its hello in %d ms", c->hdr_got + c->body_got,
                          DSR1_RDV_HELLO_MS);
            else if (c->start_ms + DSR1_RDV_HELLO_MS < next_expiry)
                next_expiry = c->start_ms + DSR1_RDV_HELLO_MS;
        }
        compact(r);
        int t = wait_ms(deadline < next_expiry ? deadline : next_expiry);
        r->pfds[0] = (struct pollfd){r->fd, POLLIN, 0};
        for (size_t i = 0; i < r->n; i++)
            r->pfds[i + 1] = (struct pollfd){r->conns[i].fd, POLLIN, 0};
        size_t npoll = r->n;
        int pr = poll(r->pfds, npoll + 1, t);
        if (pr < 0 && errno != EINTR)
            return dsr1_error(DSR1_ERR_IO, "rendezvous: poll on %s: %s", r->addr, strerror(errno));
        if (pr > 0) {
            /* The hellos already arriving first, in arrival order. */
            for (size_t i = 0; i < npoll; i++) {
                if (!r->pfds[i + 1].revents) continue;
                int k = conn_read(&r->conns[i]);
                if (k == 1) {
                    dsr1_status st = conn_take(&r->conns[i], peer, hello, len);
                    compact(r);
                    return st;
                }
            }
            compact(r);
            if (r->pfds[0].revents & (POLLERR | POLLNVAL))
                return dsr1_error(DSR1_ERR_IO, "rendezvous: listening socket %s failed", r->addr);
            if (r->pfds[0].revents & POLLIN) {
                size_t first = r->n;
                dsr1_status st = accept_new(r);
                if (st) return st;
                /* A new peer's hello often arrives with its connection. */
                for (size_t i = first; i < r->n; i++) {
                    if (conn_read(&r->conns[i]) == 1) {
                        st = conn_take(&r->conns[i], peer, hello, len);
                        compact(r);
                        return st;
                    }
                }
                compact(r);
            }
        }
        if (timeout_ms == 0 || (deadline != NO_DEADLINE && now_ms() >= deadline)) {
            *peer = NULL;
            *hello = NULL;
            *len = 0;
            return DSR1_OK;
        }
    }
}

const char *dsr1_rdv_peer_name(const dsr1_rdv_peer *p)
{
    return p->name;
}

dsr1_status dsr1_rdv_welcome(dsr1_rdv_peer *p, const void *data, size_t len)
{
    dsr1_status st = DSR1_OK;
    if (len > DSR1_RDV_MAX) {
        st = dsr1_error(DSR1_ERR_RANGE,
                        "rendezvous: a welcome of %zu bytes for %s is over the "
                        "limit of %u",
                        len, p->name, DSR1_RDV_MAX);
    } else {
        int e = send_frame(p->fd, KIND_WELCOME, data, len, now_ms() + DSR1_RDV_HELLO_MS);
        if (e)
            st = dsr1_error(DSR1_ERR_IO, "rendezvous: sending the welcome to %s: %s", p->name,
                            strerror(e));
    }
    close_conn(p->fd);
    free(p);
    return st;
}

void dsr1_rdv_refuse(dsr1_rdv_peer *p, const char *why)
{
    if (!why) why = "";
    size_t n = strnlen(why, MAX_REFUSAL);
    int e = send_frame(p->fd, KIND_REFUSAL, why, n, now_ms() + DSR1_RDV_HELLO_MS);
    if (e) DSR1_WARN("rendezvous: refusing %s: %s", p->name, strerror(e));
    close_conn(p->fd);
    free(p);
}

void dsr1_rdv_drop(dsr1_rdv_peer *p)
{
    close_conn(p->fd);
    free(p);
}

void dsr1_rdv_close(dsr1_rdv *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->n; i++) {
        close(r->conns[i].fd);
        free(r->conns[i].body);
    }
    close(r->fd);
    free(r->conns);
    free(r->pfds);
    free(r);
}

/* ---------------------------------------------------------------- worker side */

/* The coordinator may not be up yet (or its host not reachable yet): worth another try. */
static int retryable(int e)
{
    return e == ECONNREFUSED || e == ECONNRESET || e == EHOSTUNREACH || e == ENETUNREACH ||
           e == ETIMEDOUT;
}

/* One connection attempt to every address of res; the fd, or -1 with *err set. */
static int try_connect(struct addrinfo *res, int64_t deadline, int *err)
{
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd =
            socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            *err = errno;
            continue;
        }
        int e = 0;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            e = errno;
            if (e == EINPROGRESS || e == EINTR) {
                struct pollfd pf = {fd, POLLOUT, 0};
                int pr;
                do pr = poll(&pf, 1, wait_ms(deadline));
                while (pr < 0 && errno == EINTR);
                socklen_t el = sizeof e;
                if (pr == 0)
                    e = ETIMEDOUT;
                else if (pr < 0)
                    e = errno;
                else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) != 0)
                    e = errno;
            }
        }
        if (e == 0) return fd;
        *err = e;
        close(fd);
    }
    return -1;
}

dsr1_status dsr1_rdv_join(const char *hostport, const void *hello, size_t len, int timeout_ms,
                          void **welcome, size_t *wlen)
{
    char host[256], port[6];
    dsr1_status st = parse_hostport(hostport, host, sizeof host, port, 0);
    if (st) return st;
    if (len > DSR1_RDV_MAX)
        return dsr1_error(DSR1_ERR_RANGE,
                          "joining %s: a hello of %zu bytes is over the limit "
                          "of %u",
                          hostport, len, DSR1_RDV_MAX);
    int64_t deadline = timeout_ms <= 0 ? NO_DEADLINE : now_ms() + timeout_ms;
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int g = getaddrinfo(host, port, &hints, &res);
    if (g != 0)
        return dsr1_error(DSR1_ERR_IO, "joining %s: cannot resolve %s: %s", hostport, host,
                          g == EAI_SYSTEM ? strerror(errno) : gai_strerror(g));
    int fd, err = 0;
    for (;;) {
        fd = try_connect(res, deadline, &err);
        if (fd >= 0) break;
        int left = wait_ms(deadline);
        if (!retryable(err) || left == 0) break;
        struct timespec ts = {0, (left < 0 || left > 100 ? 100 : left) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
    }
    freeaddrinfo(res);
    if (fd < 0) {
        if (deadline != NO_DEADLINE && retryable(err))
            return dsr1_error(DSR1_ERR_IO, "joining %s: no connection within %d ms (%s)", hostport,
                              timeout_ms, strerror(err));
        return dsr1_error(DSR1_ERR_IO, "joining %s: %s", hostport, strerror(err));
    }

    unsigned char hdr[FRAME_HEADER];
    int e = send_frame(fd, KIND_HELLO, hello, len, deadline);
    if (e) {
        close(fd);
        return dsr1_error(DSR1_ERR_IO, "joining %s: sending the hello: %s", hostport, strerror(e));
    }
    e = recv_all(fd, hdr, sizeof hdr, deadline);
    if (e) {
        close(fd);
        if (e == ETIMEDOUT)
            return dsr1_error(DSR1_ERR_IO, "joining %s: no answer within %d ms", hostport,
                              timeout_ms);
        return dsr1_error(DSR1_ERR_IO, "joining %s: %s", hostport,
                          e < 0 ? "the coordinator closed the connection without an answer"
                                : strerror(e));
    }
    uint32_t kind = get_u32(hdr + 4), size = get_u32(hdr + 8);
    if (memcmp(hdr, magic, 4) != 0 || (kind != KIND_WELCOME && kind != KIND_REFUSAL) ||
        size > DSR1_RDV_MAX) {
        close(fd);
        return dsr1_error(DSR1_ERR_FORMAT,
                          "joining %s: the answer is not a rendezvous welcome or refusal "
                          "(kind %u, %u bytes)",
                          hostport, (unsigned)kind, (unsigned)size);
    }
    unsigned char *body = malloc(size + 1u);
    if (!body) {
        close(fd);
        return dsr1_error(DSR1_ERR_NOMEM, "joining %s: out of memory for a %u-byte answer",
                          hostport, (unsigned)size);
    }
    e = recv_all(fd, body, size, deadline);
    close(fd);
    if (e) {
        free(body);
        if (e == ETIMEDOUT)
            return dsr1_error(DSR1_ERR_IO, "joining %s: the answer did not arrive within %d ms",
                              hostport, timeout_ms);
        return dsr1_error(DSR1_ERR_IO, "joining %s: the answer was cut short: %s", hostport,
                          e < 0 ? "connection closed" : strerror(e));
    }
    if (kind == KIND_REFUSAL) {
        body[size] = '\0';
        for (uint32_t i = 0; i < size; i++)
            if (body[i] < 0x20 && body[i] != '\t') body[i] = ' ';
        st = dsr1_error(DSR1_ERR_UNAVAILABLE, "joining %s: refused: %s", hostport, (char *)body);
        free(body);
        return st;
    }
    *welcome = body;
    *wlen = size;
    return DSR1_OK;
}
