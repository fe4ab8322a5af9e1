/* A small blocking client of the dsr1 gRPC API (proto/dsr1.proto, proto/health.proto) on
 * gRPC core's C API, with protobuf-c messages. Used by `dsr1 client` and `dsr1-bench serve`.
 *
 * A dsr1_rpc_client is one channel to one server and may be used from many threads at
 * once; every call has its own completion queue, so calls block only their own thread and
 * a thread per stream is the concurrency model. Every call carries the API key, when one
 * is given, as `authorization: Bearer <key>` metadata.
 *
 * Errors: a call that ends with a non-OK gRPC status returns a dsr1_status that matches
 * the gRPC code (INVALID_ARGUMENT -> DSR1_ERR_INVALID_ARG, NOT_FOUND -> DSR1_ERR_NOT_FOUND,
 * ALREADY_EXISTS -> DSR1_ERR_EXISTS, RESOURCE_EXHAUSTED -> DSR1_ERR_BUSY, UNAVAILABLE and
 * DEADLINE_EXCEEDED -> DSR1_ERR_UNAVAILABLE, the others -> DSR1_ERR_IO) and records the
 * message "<CODE>: <details>" (e.g. "NOT_FOUND: no batch 'b7'") for dsr1_errmsg(). */
#ifndef DSR1_TOOLS_RPC_CLIENT_H
#define DSR1_TOOLS_RPC_CLIENT_H

#include <protobuf-c/protobuf-c.h>

#include "status.h"

/* Full method names, as they go on the wire. */
#define DSR1_RPC_GENERATE        "/dsr1.v1.Dsr1/Generate"
#define DSR1_RPC_SUBMIT_BATCH    "/dsr1.v1.Dsr1/SubmitBatch"
#define DSR1_RPC_UPLOAD_BATCH    "/dsr1.v1.Dsr1/UploadBatch"
#define DSR1_RPC_GET_BATCH       "/dsr1.v1.Dsr1/GetBatch"
#define DSR1_RPC_STREAM_BATCH    "/dsr1.v1.Dsr1/StreamBatchResults"
#define DSR1_RPC_CANCEL_BATCH    "/dsr1.v1.Dsr1/CancelBatch"
#define DSR1_RPC_LIST_BATCHES    "/dsr1.v1.Dsr1/ListBatches"
#define DSR1_RPC_ABORT           "/dsr1.v1.Dsr1/Abort"
#define DSR1_RPC_GET_MODEL_INFO  "/dsr1.v1.Dsr1/GetModelInfo"
#define DSR1_RPC_GET_SERVER_INFO "/dsr1.v1.Dsr1/GetServerInfo"
#define DSR1_RPC_HEALTH_CHECK    "/grpc.health.v1.Health/Check"

typedef struct dsr1_rpc_client dsr1_rpc_client;
typedef struct dsr1_rpc_stream dsr1_rpc_stream;

/* Opens a channel to target ("HOST:PORT", any gRPC target name). api_key may be NULL.
 * Connecting is lazy: an unreachable server shows up as UNAVAILABLE on the first call. */
dsr1_status dsr1_rpc_client_create(const char *target, const char *api_key, dsr1_rpc_client **out);
/* Every call and stream must be finished or closed first. NULL is ignored. */
void dsr1_rpc_client_destroy(dsr1_rpc_client *c);

/* One unary call: sends req and decodes the single reply as reply_desc into *reply
 * (free it with protobuf_c_message_free_unpacked(*reply, NULL)). timeout_s <= 0: no
 * deadline. */
dsr1_status dsr1_rpc_call(dsr1_rpc_client *c, const char *method, const ProtobufCMessage *req,
                          const ProtobufCMessageDescriptor *reply_desc, double timeout_s,
                          ProtobufCMessage **reply);

/* A server-streaming call: sends req; each dsr1_rpc_stream_next() returns the next reply.
 * timeout_s <= 0: no deadline. Close every opened stream. */
dsr1_status dsr1_rpc_stream_open(dsr1_rpc_client *c, const char *method,
                                 const ProtobufCMessage *req,
                                 const ProtobufCMessageDescriptor *reply_desc, double timeout_s,
                                 dsr1_rpc_stream **out);
/* Blocks for the next reply: *msg is the message (caller frees as above), or NULL when the
 * stream ended with status OK. A stream that ends with another status returns the error
 * (and keeps returning it). */
dsr1_status dsr1_rpc_stream_next(dsr1_rpc_stream *s, ProtobufCMessage **msg);
/* Cancels the call (the server sees the client go away); later next() calls fail with
 * CANCELLED. Only from the thread that uses the stream. */
void dsr1_rpc_stream_cancel(dsr1_rpc_stream *s);
/* Cancels the call if it is still running, waits for its end and frees it. NULL is
 * ignored. */
void dsr1_rpc_stream_close(dsr1_rpc_stream *s);

/* A client-streaming call: open, send each request, then finish, which half-closes and
 * returns the single reply (or the call's error); close the stream afterwards (or instead,
 * to cancel). A send that fails returns the call's error (the server ended it). */
dsr1_status dsr1_rpc_upload_open(dsr1_rpc_client *c, const char *method,
                                 const ProtobufCMessageDescriptor *reply_desc, double timeout_s,
                                 dsr1_rpc_stream **out);
dsr1_status dsr1_rpc_upload_send(dsr1_rpc_stream *s, const ProtobufCMessage *req);
dsr1_status dsr1_rpc_upload_finish(dsr1_rpc_stream *s, ProtobufCMessage **reply);

/* "OK", "CANCELLED", ... "UNAUTHENTICATED" for a gRPC status code; "UNKNOWN" otherwise. */
const char *dsr1_rpc_code_name(int code);

#endif
