/* Workers reaching a coordinator over TCP without a launcher (`dsr1-worker --join
 * HOST:PORT`): the first contact only, everything after it travels over UCX. A worker
 * connects, sends a hello (opaque bytes: what it is and its UCX address) and waits; the
 * coordinator answers with a welcome (opaque bytes: its place in the grid and everyone's
 * addresses) or a refusal (a message); then both sides close the connection. The
 * coordinator may hold several hellos unanswered (the first workers of a grid are answered
 * together, once all have come).
 *
 * Framing, both ways: u32 magic "DSRJ" | u32 kind (1 hello, 2 welcome, 3 refusal) |
 * u32 bytes | bytes, little-endian, at most DSR1_RDV_MAX bytes. Anything else is dropped
 * with a log line naming the peer. Nothing here trusts the peer: sizes are checked, a
 * peer that does not send its whole hello within DSR1_RDV_HELLO_MS is dropped, and a
 * worker gives up on an answer after its timeout. */
#ifndef DSR1_RENDEZVOUS_H
#define DSR1_RENDEZVOUS_H

#include <stddef.h>

#include "status.h"

#define DSR1_RDV_MAX      (1u << 20)
#define DSR1_RDV_HELLO_MS 5000

typedef struct dsr1_rdv dsr1_rdv;
typedef struct dsr1_rdv_peer dsr1_rdv_peer;

/* Listen on "HOST:PORT" (an IPv4 address or a name, or "[v6]:PORT"; PORT 0: any free port,
 * dsr1_rdv_port tells which). DSR1_ERR_INVALID_ARG for a malformed address, DSR1_ERR_IO
 * when it cannot be bound (the message says why). */
dsr1_status dsr1_rdv_listen(const char *hostport, dsr1_rdv **out);
int dsr1_rdv_port(const dsr1_rdv *r);
/* The next worker's hello, waiting at most timeout_ms (0: only what is there now; < 0: no
 * bound). *peer is NULL (and DSR1_OK) when none came in time. Otherwise *hello (malloc'ed,
 * *len bytes) is its hello, and *peer must be answered (dsr1_rdv_welcome or
 * dsr1_rdv_refuse) or dropped (dsr1_rdv_drop). Malformed or slow peers are dropped here
 * (a warning names each) and never returned; at most 256 hellos may be arriving at once (more
 * connections are closed at once). Hellos still arriving stay in r between calls. An error
 * (DSR1_ERR_IO) only when the listening socket itself fails, e.g. out of descriptors. */
dsr1_status dsr1_rdv_accept(dsr1_rdv *r, int timeout_ms, dsr1_rdv_peer **peer, void **hello,
                            size_t *len);
/* "ADDRESS:PORT" of the peer, for messages; valid until it is answered or dropped. */
const char *dsr1_rdv_peer_name(const dsr1_rdv_peer *p);
/* Send the welcome and close; the peer is freed either way. DSR1_ERR_RANGE when len is over
 * DSR1_RDV_MAX, DSR1_ERR_IO when the peer is gone or does not take it within
 * DSR1_RDV_HELLO_MS. */
dsr1_status dsr1_rdv_welcome(dsr1_rdv_peer *p, const void *data, size_t len);
/* Send a refusal (the worker's join fails with this text, cut at 4096 bytes) and close;
 * frees the peer. A peer already gone is only a warning. */
void dsr1_rdv_refuse(dsr1_rdv_peer *p, const char *why);
/* Close without an answer; frees the peer. */
void dsr1_rdv_drop(dsr1_rdv_peer *p);
/* Stop listening and free r (peers not yet answered stay valid until answered). */
void dsr1_rdv_close(dsr1_rdv *r);

/* Worker side: connect to hostport (retrying while it refuses, until timeout_ms: the
 * coordinator may not be listening yet), send the hello and wait for the answer within
 * timeout_ms (<= 0: no bound) from the start. On a welcome, *welcome (malloc'ed, *wlen
 * bytes). A refusal is DSR1_ERR_UNAVAILABLE with the coordinator's text in the message; a
 * timeout or a broken connection DSR1_ERR_IO naming the address (and strerror's reason); an
 * answer that is not a welcome or refusal frame DSR1_ERR_FORMAT; a malformed hostport (or
 * port 0) DSR1_ERR_INVALID_ARG; a hello over DSR1_RDV_MAX DSR1_ERR_RANGE. Connecting is
 * retried every 100 ms while it is refused, reset or unreachable. */
dsr1_status dsr1_rdv_join(const char *hostport, const void *hello, size_t len, int timeout_ms,
                          void **welcome, size_t *wlen);

#endif
