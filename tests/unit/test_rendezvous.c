/* The TCP rendezvous (common/net/rendezvous.h) on loopback: a worker joins with a hello and
 * gets its welcome or its refusal; two hellos held unanswered and answered in reverse order
 * (after the listener closed); a hello sent in pieces, its bytes and the welcome's checked on
 * the wire against the framing the header documents; an accept with nobody there; peers
 * sending garbage, a wrong magic, a wrong kind or an oversize hello dropped while a good
 * joiner after them still gets in; a stalled half hello closed after DSR1_RDV_HELLO_MS; a
 * join that starts before the listener; joins that time out (nobody listening, nobody
 * answering); malformed addresses; IPv6; and seeded random byte streams thrown at both
 * sides, which must never crash and must yield exactly the valid frames among them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"
#include "rendezvous.h"

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static uint64_t rng_state;
static uint32_t rng(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}
static void fill_random(unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)rng();
}

/* A frame as rendezvous.h documents it, built here independently of the code under test. */
static size_t frame(unsigned char *out, const char *mg, uint32_t kind, uint32_t size)
{
    memcpy(out, mg, 4);
    for (int i = 0; i < 4; i++) {
        out[4 + i] = (unsigned char)(kind >> (8 * i));
        out[8 + i] = (unsigned char)(size >> (8 * i));
    }
    return 12;
}

/* ---- a worker joining in a thread ---- */
typedef struct {
    char addr[64];
    const void *hello;
    size_t len;
    int timeout_ms;
    int delay_ms;
    dsr1_status st;
    void *welcome;
    size_t wlen;
    char msg[512];
    pthread_t th;
} joiner;

static void *join_main(void *arg)
{
    joiner *j = arg;
    if (j->delay_ms) sleep_ms(j->delay_ms);
    j->st = dsr1_rdv_join(j->addr, j->hello, j->len, j->timeout_ms, &j->welcome, &j->wlen);
    snprintf(j->msg, sizeof j->msg, "%s", dsr1_errmsg());
    return NULL;
}

static void join_start(joiner *j, const char *host, int port, const void *hello, size_t len,
                       int timeout_ms, int delay_ms)
{
    memset(j, 0, sizeof *j);
    snprintf(j->addr, sizeof j->addr, "%s:%d", host, port);
    j->hello = hello;
    j->len = len;
    j->timeout_ms = timeout_ms;
    j->delay_ms = delay_ms;
    assert_int_equal(pthread_create(&j->th, NULL, join_main, j), 0);
}

static void join_end(joiner *j)
{
    pthread_join(j->th, NULL);
}

/* ---- raw TCP clients ---- */
static int raw_connect(int port, int *local_port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    if (local_port) {
        socklen_t sl = sizeof sa;
        assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
        *local_port = ntohs(sa.sin_port);
    }
    return fd;
}

static void raw_send(int fd, const void *p, size_t n)
{
    assert_int_equal(send(fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* Whether the other side closed fd within ms (EOF or a reset). */
static int closed_within(int fd, int ms)
{
    struct pollfd pf = {fd, POLLIN, 0};
    if (poll(&pf, 1, ms) <= 0) return 0;
    char b[64];
    ssize_t r = recv(fd, b, sizeof b, MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno == ECONNRESET);
}

/* A port nobody listens on (bound once, then released). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t sl = sizeof sa;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

static dsr1_rdv *listen_local(void)
{
    dsr1_rdv *r = NULL;
    assert_int_equal(dsr1_rdv_listen("127.0.0.1:0", &r), DSR1_OK);
    assert_non_null(r);
    assert_true(dsr1_rdv_port(r) > 0);
    return r;
}

static void test_welcome(void **state)
{
    (void)state;
    rng_state = 11;
    dsr1_rdv *r = listen_local();
    unsigned char hello[1000], wel[3000];
    fill_random(hello, sizeof hello);
    fill_random(wel, sizeof wel);
    joiner j;
    join_start(&j, "127.0.0.1", dsr1_rdv_port(r), hello, sizeof hello, 5000, 0);
    dsr1_rdv_peer *p = NULL;
    void *h = NULL;
    size_t hl = 0;
    assert_int_equal(dsr1_rdv_accept(r, 5000, &p, &h, &hl), DSR1_OK);
    assert_non_null(p);
    assert_int_equal(hl, sizeof hello);
    assert_memory_equal(h, hello, sizeof hello);
    assert_true(strncmp(dsr1_rdv_peer_name(p), "127.0.0.1:", 10) == 0);
    assert_true(atoi(dsr1_rdv_peer_name(p) + 10) > 0);
    free(h);
    assert_int_equal(dsr1_rdv_welcome(p, wel, sizeof wel), DSR1_OK);
    join_end(&j);
    assert_int_equal(j.st, DSR1_OK);
    assert_int_equal(j.wlen, sizeof wel);
    assert_memory_equal(j.welcome, wel, sizeof wel);
    free(j.welcome);

    /* An empty hello and an empty welcome are frames too. */
    join_start(&j, "127.0.0.1", dsr1_rdv_port(r), NULL, 0, 5000, 0);
    assert_int_equal(dsr1_rdv_accept(r, 5000, &p, &h, &hl), DSR1_OK);
    assert_non_null(p);
    assert_int_equal(hl, 0);
    free(h);
    assert_int_equal(dsr1_rdv_welcome(p, NULL, 0), DSR1_OK);
    join_end(&j);
    assert_int_equal(j.st, DSR1_OK);
    assert_int_equal(j.wlen, 0);
    free(j.welcome);
    dsr1_rdv_close(r);
}

static void test_refuse(void **state)
{
    (void)state;
    dsr1_rdv *r = listen_local();
    joiner j;
    join_start(&j, "127.0.0.1", dsr1_rdv_port(r), "w", 1, 5000, 0);
    dsr1_rdv_peer *p = NULL;
    void *h = NULL;
    size_t hl = 0;
    assert_int_equal(dsr1_rdv_accept(r, 5000, &p, &h, &hl), DSR1_OK);
    assert_non_null(p);
    free(h);
    dsr1_rdv_refuse(p, "the grid is full (8 of 8 workers)");
    join_end(&j);
    assert_int_equal(j.st, DSR1_ERR_UNAVAILABLE);
    assert_non_null(strstr(j.msg, "the grid is full (8 of 8 workers)"));
    assert_non_null(strstr(j.msg, j.addr));
    dsr1_rdv_close(r);
}

/* Two hellos held, the listener closed, then answered last first. */
static void test_two_held(void **state)
{
    (void)state;
    dsr1_rdv *r = listen_local();
    static const char *hellos[2] = {"worker-A", "worker-B with a longer hello"};
    joiner j[2];
    for (int i = 0; i < 2; i++)
        join_start(&j[i], "127.0.0.1", dsr1_rdv_port(r), hellos[i], strlen(hellos[i]), 5000, 0);
    dsr1_rdv_peer *p[2];
    int who[2];
    for (int k = 0; k < 2; k++) {
        void *h = NULL;
        size_t hl = 0;
        assert_int_equal(dsr1_rdv_accept(r, 5000, &p[k], &h, &hl), DSR1_OK);
        assert_non_null(p[k]);
        who[k] = -1;
        for (int i = 0; i < 2; i++)
            if (hl == strlen(hellos[i]) && memcmp(h, hellos[i], hl) == 0) who[k] = i;
        assert_true(who[k] >= 0);
        free(h);
    }
    assert_int_not_equal(who[0], who[1]);
    assert_string_not_equal(dsr1_rdv_peer_name(p[0]), dsr1_rdv_peer_name(p[1]));
    dsr1_rdv_close(r);
    for (int k = 1; k >= 0; k--) {
        char w[64];
        int n = snprintf(w, sizeof w, "welcome %s", hellos[who[k]]);
        assert_int_equal(dsr1_rdv_welcome(p[k], w, (size_t)n), DSR1_OK);
    }
    for (int i = 0; i < 2; i++) {
        join_end(&j[i]);
        assert_int_equal(j[i].st, DSR1_OK);
        char w[64];
        int n = snprintf(w, sizeof w, "welcome %s", hellos[i]);
        assert_int_equal(j[i].wlen, (size_t)n);
        assert_memory_equal(j[i].welcome, w, (size_t)n);
        free(j[i].welcome);
    }
}

/* A hello sent a few bytes at a time across accepts; both frames checked byte by byte. */
static void test_pieces_on_the_wire(void **state)
{
    (void)state;
    dsr1_rdv *r = listen_local();
    int lport = 0;
    int fd = raw_connect(dsr1_rdv_port(r), &lport);
    unsigned char msg[12 + 5];
    frame(msg, "DSRJ", 1, 5);
    memcpy(msg + 12, "hello", 5);
    dsr1_rdv_peer *p = NULL;
    void *h = NULL;
    size_t hl = 0;
    static const size_t cuts[] = {0, 3, 4, 11, 12, 14, 17};
    for (size_t c = 0; c + 1 < sizeof cuts / sizeof *cuts; c++) {
        assert_int_equal(dsr1_rdv_accept(r, 20, &p, &h, &hl), DSR1_OK);
        assert_null(p);
        raw_send(fd, msg + cuts[c], cuts[c + 1] - cuts[c]);
    }
    assert_int_equal(dsr1_rdv_accept(r, 2000, &p, &h, &hl), DSR1_OK);
    assert_non_null(p);
    char want[32];
    snprintf(want, sizeof want, "127.0.0.1:%d", lport);
    assert_string_equal(dsr1_rdv_peer_name(p), want);
    assert_int_equal(hl, 5);
    assert_memory_equal(h, "hello", 5);
    free(h);
    assert_int_equal(dsr1_rdv_welcome(p, "abc", 3), DSR1_OK);
    unsigned char got[32], exp[15];
    frame(exp, "DSRJ", 2, 3);
    memcpy(exp + 12, "abc", 3);
    size_t n = 0;
    ssize_t k;
    while ((k = recv(fd, got + n, sizeof got - n, 0)) > 0) n += (size_t)k;
    assert_int_equal(n, sizeof exp);
    assert_memory_equal(got, exp, sizeof exp);
    close(fd);

    /* A refusal on the wire: kind 3 with the text. */
    fd = raw_connect(dsr1_rdv_port(r), NULL);
    raw_send(fd, msg, sizeof msg);
    assert_int_equal(dsr1_rdv_accept(r, 2000, &p, &h, &hl), DSR1_OK);
    assert_non_null(p);
    free(h);
    dsr1_rdv_refuse(p, "no");
    frame(exp, "DSRJ", 3, 2);
    memcpy(exp + 12, "no", 2);
    n = 0;
    while ((k = recv(fd, got + n, sizeof got - n, 0)) > 0) n += (size_t)k;
    assert_int_equal(n, 14);
    assert_memory_equal(got, exp, 14);
    close(fd);
    dsr1_rdv_close(r);
}

static void test_accept_nobody(void **state)
{
    (void)state;
    dsr1_rdv *r = listen_local();
    dsr1_rdv_peer *p = (dsr1_rdv_peer *)1;
    void *h = (void *)1;
    size_t hl = 1;
    int64_t t0 = now_ms();
    assert_int_equal(dsr1_rdv_accept(r, 0, &p, &h, &hl), DSR1_OK);
    assert_null(p);
    assert_true(now_ms() - t0 < 100);
    t0 = now_ms();
    assert_int_equal(dsr1_rdv_accept(r, 150, &p, &h, &hl), DSR1_OK);
    assert_null(p);
    int64_t dt = now_ms() - t0;
    assert_true(dt >= 140 && dt < 1500);
    dsr1_rdv_close(r);
}

/* Garbage, a wrong magic, a wrong kind, an oversize hello: each dropped, then a good joiner. */
static void test_bad_peers(void **state)
{
    (void)state;
    dsr1_rdv *r = listen_local();
    int port = dsr1_rdv_port(r);
    unsigned char m[64];
    int fd[4];
    fd[0] = raw_connect(port, NULL);
    raw_send(fd[0], "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27);
    fd[1] = raw_connect(port, NULL);
    size_t n = frame(m, "DSRX", 1, 4);
    memcpy(m + n, "abcd", 4);
    raw_send(fd[1], m, n + 4);
    fd[2] = raw_connect(port, NULL);
    n = frame(m, "DSRJ", 2, 4);
    memcpy(m + n, "abcd", 4);
    raw_send(fd[2], m, n + 4);
    fd[3] = raw_connect(port, NULL);
    n = frame(m, "DSRJ", 1, DSR1_RDV_MAX + 1);
    raw_send(fd[3], m, n);
    /* Let the bad ones arrive first. */
    dsr1_rdv_peer *p = NULL;
    void *h = NULL;
    size_t hl = 0;
    assert_int_equal(dsr1_rdv_accept(r, 100, &p, &h, &hl), DSR1_OK);
    assert_null(p);
    for (int i = 0; i < 4; i++) assert_true(closed_within(fd[i], 1000));

    /* A hello of exactly DSR1_RDV_MAX bytes is fine. */
    unsigned char *big = malloc(DSR1_RDV_MAX);
    rng_state = 5;
    fill_random(big, DSR1_RDV_MAX);
    joiner j;
    join_start(&j, "127.0.0.1", port, big, DSR1_RDV_MAX, 5000, 0);
    assert_int_equal(dsr1_rdv_accept(r, 5000, &p, &h, &hl), DSR1_OK);
    assert_non_null(p);
    assert_int_equal(hl, DSR1_RDV_MAX);
    assert_memory_equal(h, big, DSR1_RDV_MAX);
    free(h);
    assert_int_equal(dsr1_rdv_welcome(p, "ok", 2), DSR1_OK);
    join_end(&j);
    assert_int_equal(j.st, DSR1_OK);
    assert_int_equal(j.wlen, 2);
    free(j.welcome);
    free(big);
    for (int i = 0; i < 4; i++) close(fd[i]);
    dsr1_rdv_close(r);
}

/* Half a hello, then nothing: closed once DSR1_RDV_HELLO_MS has passed, while a good joiner
 * arriving after that still gets in. */
static void test_stalled(void **state)
{
    (void)state;
    dsr1_rdv *r = listen_local();
    int64_t t0 = now_ms();
    int fd = raw_connect(dsr1_rdv_port(r), NULL);
    unsigned char m[12];
    frame(m, "DSRJ", 1, 100);
    raw_send(fd, m, 6);
    dsr1_rdv_peer *p = NULL;
    void *h = NULL;
    size_t hl = 0;
    assert_int_equal(dsr1_rdv_accept(r, 100, &p, &h, &hl), DSR1_OK);
    assert_null(p);
    assert_false(closed_within(fd, 0));
    joiner j;
    join_start(&j, "127.0.0.1", dsr1_rdv_port(r), "late", 4, 5000,
               DSR1_RDV_HELLO_MS + 200 - (int)(now_ms() - t0));
    assert_int_equal(dsr1_rdv_accept(r, DSR1_RDV_HELLO_MS + 2000, &p, &h, &hl), DSR1_OK);
    assert_non_null(p);
    assert_int_equal(hl, 4);
    assert_memory_equal(h, "late", 4);
    free(h);
    assert_true(now_ms() - t0 >= DSR1_RDV_HELLO_MS);
    assert_true(closed_within(fd, 0) || closed_within(fd, 500));
    assert_int_equal(dsr1_rdv_welcome(p, "x", 1), DSR1_OK);
    join_end(&j);
    assert_int_equal(j.st, DSR1_OK);
    free(j.welcome);
    close(fd);
    dsr1_rdv_close(r);
}

/* The worker starts before the coordinator listens: it retries until it can connect. */
static void test_join_before_listen(void **state)
{
    (void)state;
    int port = free_port();
    joiner j;
    join_start(&j, "127.0.0.1", port, "early", 5, 4000, 0);
    sleep_ms(250);
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    dsr1_rdv *r = NULL;
    assert_int_equal(dsr1_rdv_listen(addr, &r), DSR1_OK);
    assert_int_equal(dsr1_rdv_port(r), port);
    dsr1_rdv_peer *p = NULL;
    void *h = NULL;
    size_t hl = 0;
    assert_int_equal(dsr1_rdv_accept(r, 3000, &p, &h, &hl), DSR1_OK);
    assert_non_null(p);
    assert_memory_equal(h, "early", 5);
    free(h);
    assert_int_equal(dsr1_rdv_welcome(p, "in", 2), DSR1_OK);
    join_end(&j);
    assert_int_equal(j.st, DSR1_OK);
    free(j.welcome);
    dsr1_rdv_close(r);
}

static void test_join_timeouts(void **state)
{
    (void)state;
    /* Nobody listening. */
    int port = free_port();
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    void *w = NULL;
    size_t wl = 0;
    int64_t t0 = now_ms();
    assert_int_equal(dsr1_rdv_join(addr, "x", 1, 250, &w, &wl), DSR1_ERR_IO);
    int64_t dt = now_ms() - t0;
    assert_true(dt >= 220 && dt < 1500);
    assert_non_null(strstr(dsr1_errmsg(), addr));
    assert_non_null(strstr(dsr1_errmsg(), "refused"));

    /* Listening, accepting the hello, never answering. */
    dsr1_rdv *r = listen_local();
    joiner j;
    join_start(&j, "127.0.0.1", dsr1_rdv_port(r), "x", 1, 250, 0);
    dsr1_rdv_peer *p = NULL;
    void *h = NULL;
    size_t hl = 0;
    t0 = now_ms();
    assert_int_equal(dsr1_rdv_accept(r, 2000, &p, &h, &hl), DSR1_OK);
    assert_non_null(p);
    free(h);
    join_end(&j);
    dt = now_ms() - t0;
    assert_int_equal(j.st, DSR1_ERR_IO);
    assert_true(dt < 1500);
    assert_non_null(strstr(j.msg, j.addr));
    assert_non_null(strstr(j.msg, "no answer"));
    dsr1_rdv_drop(p);

    /* Dropped without an answer: the worker hears the connection close. */
    join_start(&j, "127.0.0.1", dsr1_rdv_port(r), "y", 1, 3000, 0);
    assert_int_equal(dsr1_rdv_accept(r, 2000, &p, &h, &hl), DSR1_OK);
    assert_non_null(p);
    free(h);
    dsr1_rdv_drop(p);
    join_end(&j);
    assert_int_equal(j.st, DSR1_ERR_IO);
    assert_non_null(strstr(j.msg, "closed"));
    dsr1_rdv_close(r);
}

static void test_malformed(void **state)
{
    (void)state;
    static const char *bad[] = {"",
                                "localhost",
                                "127.0.0.1:",
                                ":80",
                                "1.2.3.4:x",
                                "1.2.3.4:70000",
                                "1.2.3.4:123456",
                                "::1:80",
                                "[::1",
                                "[::1]80",
                                "[]:80",
                                "[::1]:",
                                "h:1:2",
                                "h: 80",
                                "h:-1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        dsr1_rdv *r = NULL;
        void *w = NULL;
        size_t wl = 0;
        assert_int_equal(dsr1_rdv_listen(bad[i], &r), DSR1_ERR_INVALID_ARG);
        assert_null(r);
        assert_int_equal(dsr1_rdv_join(bad[i], "x", 1, 100, &w, &wl), DSR1_ERR_INVALID_ARG);
    }
    dsr1_rdv *r = NULL;
    assert_int_equal(dsr1_rdv_listen(NULL, &r), DSR1_ERR_INVALID_ARG);
    void *w = NULL;
    size_t wl = 0;
    /* Port 0 is for listening only; a hello over the limit is refused before connecting. */
    assert_int_equal(dsr1_rdv_join("127.0.0.1:0", "x", 1, 100, &w, &wl), DSR1_ERR_INVALID_ARG);
    assert_int_equal(dsr1_rdv_join("127.0.0.1:9", "x", DSR1_RDV_MAX + 1, 100, &w, &wl),
                     DSR1_ERR_RANGE);
    /* An address that is not ours cannot be bound; the message says which. */
    assert_int_equal(dsr1_rdv_listen("192.0.2.1:0", &r), DSR1_ERR_IO);
    assert_non_null(strstr(dsr1_errmsg(), "192.0.2.1:0"));
}

static void test_ipv6(void **state)
{
    (void)state;
    dsr1_rdv *r = NULL;
    if (dsr1_rdv_listen("[::1]:0", &r) != DSR1_OK) {
        print_message("no IPv6 loopback here: %s\n", dsr1_errmsg());
        skip();
    }
    joiner j;
    char host[8] = "[::1]";
    join_start(&j, host, dsr1_rdv_port(r), "six", 3, 5000, 0);
    dsr1_rdv_peer *p = NULL;
    void *h = NULL;
    size_t hl = 0;
    assert_int_equal(dsr1_rdv_accept(r, 5000, &p, &h, &hl), DSR1_OK);
    assert_non_null(p);
    assert_true(strncmp(dsr1_rdv_peer_name(p), "[::1]:", 6) == 0);
    assert_memory_equal(h, "six", 3);
    free(h);
    assert_int_equal(dsr1_rdv_welcome(p, "6", 1), DSR1_OK);
    join_end(&j);
    assert_int_equal(j.st, DSR1_OK);
    free(j.welcome);
    dsr1_rdv_close(r);
}

/* Random streams at the coordinator: pure noise, or frame headers with random kinds and
 * sizes followed by a random part of their body, each closed after sending. Exactly the
 * streams that hold a whole hello come out of accept; nothing crashes or leaks a slot (a
 * good joiner still gets in at the end). */
static void test_fuzz_coordinator(void **state)
{
    (void)state;
    int level = dsr1_log_level();
    dsr1_log_set_level(DSR1_LOG_ERROR);
    rng_state = 2026;
    dsr1_rdv *r = listen_local();
    int port = dsr1_rdv_port(r);
    int expect = 0, got = 0;
    unsigned char buf[256];
    for (int round = 0; round < 8; round++) {
        for (int c = 0; c < 40; c++) {
            int fd = raw_connect(port, NULL);
            size_t n;
            if (rng() % 3 == 0) {
                n = rng() % 40;
                fill_random(buf, n);
            } else {
                uint32_t kind = 1 + rng() % 4;
                uint32_t size = rng() % 8 == 0 ? rng() : rng() % 64;
                n = frame(buf, "DSRJ", kind, size);
                size_t body = rng() % 80;
                fill_random(buf + n, body);
                if (rng() % 4 == 0)
                    n = rng() % n; /* a cut header */
                else
                    n += body;
                if (n >= 12 && kind == 1 && size <= 64 && n - 12 >= size) expect++;
            }
            if (n) raw_send(fd, buf, n);
            close(fd);
        }
        for (;;) {
            dsr1_rdv_peer *p = NULL;
            void *h = NULL;
            size_t hl = 0;
            assert_int_equal(dsr1_rdv_accept(r, 50, &p, &h, &hl), DSR1_OK);
            if (!p) break;
            got++;
            free(h);
            dsr1_rdv_drop(p);
        }
    }
    dsr1_log_set_level(level);
    assert_true(expect > 10);
    assert_int_equal(got, expect);
    joiner j;
    join_start(&j, "127.0.0.1", port, "after", 5, 5000, 0);
    dsr1_rdv_peer *p = NULL;
    void *h = NULL;
    size_t hl = 0;
    assert_int_equal(dsr1_rdv_accept(r, 5000, &p, &h, &hl), DSR1_OK);
    assert_non_null(p);
    assert_memory_equal(h, "after", 5);
    free(h);
    assert_int_equal(dsr1_rdv_welcome(p, "ok", 2), DSR1_OK);
    join_end(&j);
    assert_int_equal(j.st, DSR1_OK);
    free(j.welcome);
    dsr1_rdv_close(r);
}

/* Random answers at the worker from a fake coordinator: a welcome only for a whole welcome
 * frame, a refusal only for a whole refusal frame, an error for everything else. */
static void test_fuzz_worker(void **state)
{
    (void)state;
    rng_state = 77;
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(ls, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(ls, 8), 0);
    socklen_t sl = sizeof sa;
    assert_int_equal(getsockname(ls, (struct sockaddr *)&sa, &sl), 0);
    int port = ntohs(sa.sin_port);
    unsigned char buf[256];
    int welcomes = 0, refusals = 0;
    for (int it = 0; it < 60; it++) {
        joiner j;
        join_start(&j, "127.0.0.1", port, "hi", 2, 3000, 0);
        int fd = accept(ls, NULL, NULL);
        assert_true(fd >= 0);
        unsigned char hb[14];
        size_t n = 0;
        ssize_t k;
        while (n < sizeof hb && (k = recv(fd, hb + n, sizeof hb - n, 0)) > 0) n += (size_t)k;
        assert_int_equal(n, 14);
        int want = 0; /* 0 error, 2 welcome, 3 refusal */
        uint32_t size = 0;
        if (rng() % 3 == 0) {
            n = rng() % 40;
            fill_random(buf, n);
        } else {
            uint32_t kind = 1 + rng() % 4;
            size = rng() % 8 == 0 ? rng() : rng() % 64;
            n = frame(buf, rng() % 6 == 0 ? "DSRj" : "DSRJ", kind, size);
            /* Half the bodies near their announced size: whole frames are not rare. */
            size_t body = rng() % 80;
            if (size <= 64 && rng() % 2) {
                body = size + rng() % 8;
                if (size > 0 && rng() % 3 == 0) body = size - 1; /* one byte short */
            }
            fill_random(buf + n, body);
            for (size_t i = 0; i < body; i++)
                if (buf[n + i] < 0x20) buf[n + i] |= 0x40; /* refusals are shown as text */
            if (rng() % 4 == 0)
                n = rng() % n;
            else
                n += body;
            if (n >= 12 && memcmp(buf, "DSRJ", 4) == 0 && (kind == 2 || kind == 3) && size <= 64 &&
                n - 12 >= size)
                want = (int)kind;
        }
        if (n) send(fd, buf, n, MSG_NOSIGNAL);
        close(fd);
        join_end(&j);
        if (want == 2) {
            welcomes++;
            assert_int_equal(j.st, DSR1_OK);
            assert_int_equal(j.wlen, size);
            assert_memory_equal(j.welcome, buf + 12, size);
            free(j.welcome);
        } else if (want == 3) {
            refusals++;
            assert_int_equal(j.st, DSR1_ERR_UNAVAILABLE);
            char text[80];
            memcpy(text, buf + 12, size);
            text[size] = '\0';
            assert_non_null(strstr(j.msg, text));
        } else {
            assert_true(j.st == DSR1_ERR_IO || j.st == DSR1_ERR_FORMAT);
            assert_non_null(strstr(j.msg, j.addr));
        }
    }
    assert_true(welcomes > 0 && refusals > 0);
    close(ls);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_welcome),       cmocka_unit_test(test_refuse),
        cmocka_unit_test(test_two_held),      cmocka_unit_test(test_pieces_on_the_wire),
        cmocka_unit_test(test_accept_nobody), cmocka_unit_test(test_bad_peers),
        cmocka_unit_test(test_stalled),       cmocka_unit_test(test_join_before_listen),
        cmocka_unit_test(test_join_timeouts), cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_ipv6),          cmocka_unit_test(test_fuzz_coordinator),
        cmocka_unit_test(test_fuzz_worker),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
