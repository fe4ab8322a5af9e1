/* The dsr1 gRPC client (see rpc_client.h). A call is a grpc_call on its own pluck
 * completion queue with two batches in flight from the start: tag SEND (send metadata, the
 * request and half-close; receive the server's metadata) and tag STATUS (receive the final
 * status); each next() adds tag MESSAGE (receive one reply) and waits for it. When the
 * replies end, the other two tags are collected, so that nothing is left in the queue
 * when it is destroyed. */
#include "rpc_client.h"

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Replies can be large (GetBatch with results): accept up to this many bytes. */
#define MAX_REPLY_BYTES (256 << 20)

enum { TAG_SEND = 1, TAG_STATUS = 2, TAG_MESSAGE = 3 };

struct dsr1_rpc_client {
    grpc_channel *channel;
    grpc_metadata auth; /* authorization: Bearer <key> */
    bool has_auth;
};

struct dsr1_rpc_stream {
    grpc_call *call;
    grpc_completion_queue *cq;
    const ProtobufCMessageDescriptor *reply_desc;
    grpc_metadata_array initial_md, trailing_md;
    grpc_status_code code;
    grpc_slice details;
    grpc_byte_buffer *recv;
    bool finished; /* the STATUS and SEND tags are collected; code/details are final */
};

static const char *const code_names[] = {
    "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};

const char *dsr1_rpc_code_name(int code)
{
    if (code < 0 || code >= (int)(sizeof(code_names) / sizeof(code_names[0]))) return "UNKNOWN";
    return code_names[code];
}

static dsr1_status status_of_code(grpc_status_code code)
{
    switch (code) {
    case GRPC_STATUS_OK:
        return DSR1_OK;
    case GRPC_STATUS_INVALID_ARGUMENT:
    case GRPC_STATUS_OUT_OF_RANGE:
        return DSR1_ERR_INVALID_ARG;
    case GRPC_STATUS_NOT_FOUND:
        return DSR1_ERR_NOT_FOUND;
    case GRPC_STATUS_ALREADY_EXISTS:
        return DSR1_ERR_EXISTS;
    case GRPC_STATUS_RESOURCE_EXHAUSTED:
        return DSR1_ERR_BUSY;
    case GRPC_STATUS_UNAVAILABLE:
    case GRPC_STATUS_DEADLINE_EXCEEDED:
        return DSR1_ERR_UNAVAILABLE;
    default:
        return DSR1_ERR_IO;
    }
}

dsr1_status dsr1_rpc_client_create(const char *target, const char *api_key, dsr1_rpc_client **out)
{
    if (!target || !*target) return dsr1_error(DSR1_ERR_INVALID_ARG, "empty server address");
    dsr1_rpc_client *c = calloc(1, sizeof(*c));
    if (!c) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    grpc_init();
    grpc_arg arg = {.type = GRPC_ARG_INTEGER,
                    .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
                    .value.integer = MAX_REPLY_BYTES};
    grpc_channel_args args = {.num_args = 1, .args = &arg};
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    c->channel = grpc_channel_create(target, creds, &args);
    grpc_channel_credentials_release(creds);
    if (api_key) {
        size_t n = strlen(api_key) + sizeof("Bearer ");
        char *v = malloc(n);
        if (!v) {
            dsr1_rpc_client_destroy(c);
            return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        }
        snprintf(v, n, "Bearer %s", api_key);
        c->auth.key = grpc_slice_from_static_string("authorization");
        c->auth.value = grpc_slice_from_copied_string(v);
        c->has_auth = true;
        free(v);
    }
    *out = c;
    return DSR1_OK;
}

void dsr1_rpc_client_destroy(dsr1_rpc_client *c)
{
    if (!c) return;
    if (c->has_auth) grpc_slice_unref(c->auth.value);
    if (c->channel) grpc_channel_destroy(c->channel);
    free(c);
    grpc_shutdown();
}

static grpc_event wait_tag(dsr1_rpc_stream *s, intptr_t tag)
{
    return grpc_completion_queue_pluck(s->cq, (void *)tag, gpr_inf_future(GPR_CLOCK_REALTIME),
                                       NULL);
}

/* Collects the SEND and STATUS tags; after this code and details are the call's status. */
static void finish(dsr1_rpc_stream *s)
{
    if (s->finished) return;
    wait_tag(s, TAG_SEND);
    wait_tag(s, TAG_STATUS);
    s->finished = true;
}

static dsr1_status status_error(dsr1_rpc_stream *s)
{
    char *details = grpc_slice_to_c_string(s->details);
    dsr1_status st = dsr1_error(status_of_code(s->code), "%s: %s", dsr1_rpc_code_name(s->code),
                                details && *details ? details : "(no details)");
    gpr_free(details);
    return st;
}

static grpc_byte_buffer *pack(const ProtobufCMessage *msg)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    grpc_slice slice = grpc_slice_malloc(n);
    protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(slice));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);
    grpc_slice_unref(slice);
    return bb;
}

static dsr1_status unpack(const ProtobufCMessageDescriptor *desc, grpc_byte_buffer *bb,
                          ProtobufCMessage **out)
{
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, bb))
        return dsr1_error(DSR1_ERR_FORMAT, "cannot read a reply (compressed?)");
    grpc_slice all = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);
    ProtobufCMessage *m =
        protobuf_c_message_unpack(desc, NULL, GRPC_SLICE_LENGTH(all), GRPC_SLICE_START_PTR(all));
    grpc_slice_unref(all);
    if (!m) return dsr1_error(DSR1_ERR_FORMAT, "malformed %s reply from the server", desc->name);
    *out = m;
    return DSR1_OK;
}

static gpr_timespec deadline_of(double timeout_s)
{
    if (timeout_s <= 0) return gpr_inf_future(GPR_CLOCK_REALTIME);
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                        gpr_time_from_micros((int64_t)(timeout_s * 1e6), GPR_TIMESPAN));
}

/* Starts the SEND and STATUS batches of a new call; req NULL: a client-streaming call,
 * whose SEND batch has only the metadata (messages and half-close follow). */
static dsr1_status start_call(dsr1_rpc_client *c, dsr1_rpc_stream *s, const char *method,
                              const ProtobufCMessage *req, double timeout_s)
{
    grpc_slice m = grpc_slice_from_static_string(method);
    s->call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, s->cq, m, NULL,
                                       deadline_of(timeout_s), NULL);
    if (!s->call) return dsr1_error(DSR1_ERR_INTERNAL, "cannot create a call to %s", method);
    grpc_byte_buffer *payload = req ? pack(req) : NULL;
    grpc_op send[4] = {{.op = GRPC_OP_SEND_INITIAL_METADATA},
                       {.op = GRPC_OP_RECV_INITIAL_METADATA},
                       {.op = GRPC_OP_SEND_MESSAGE},
                       {.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT}};
    send[0].data.send_initial_metadata.count = c->has_auth ? 1 : 0;
    send[0].data.send_initial_metadata.metadata = c->has_auth ? &c->auth : NULL;
    send[1].data.recv_initial_metadata.recv_initial_metadata = &s->initial_md;
    send[2].data.send_message.send_message = payload;
    size_t n_send = req ? 4 : 2;
    grpc_op status = {.op = GRPC_OP_RECV_STATUS_ON_CLIENT};
    status.data.recv_status_on_client.trailing_metadata = &s->trailing_md;
    status.data.recv_status_on_client.status = &s->code;
    status.data.recv_status_on_client.status_details = &s->details;
    grpc_call_error e1 =
        grpc_call_start_batch(s->call, send, n_send, (void *)(intptr_t)TAG_SEND, NULL);
    grpc_call_error e2 =
        e1 == GRPC_CALL_OK
            ? grpc_call_start_batch(s->call, &status, 1, (void *)(intptr_t)TAG_STATUS, NULL)
            : GRPC_CALL_ERROR;
    if (payload) grpc_byte_buffer_destroy(payload); /* the call holds its own reference */
    if (e1 != GRPC_CALL_OK || e2 != GRPC_CALL_OK) {
        grpc_call_cancel(s->call, NULL);
        if (e1 == GRPC_CALL_OK) wait_tag(s, TAG_SEND);
        grpc_call_unref(s->call);
        s->call = NULL;
        return dsr1_error(DSR1_ERR_INTERNAL, "cannot start a call to %s (error %d/%d)", method, e1,
                          e2);
    }
    return DSR1_OK;
}

/* A call whose replies are read with dsr1_rpc_stream_next: req sent at once (server
 * streaming), or NULL when the client sends its messages itself (client streaming). */
static dsr1_status stream_start(dsr1_rpc_client *c, const char *method, const ProtobufCMessage *req,
                                const ProtobufCMessageDescriptor *reply_desc, double timeout_s,
                                dsr1_rpc_stream **out)
{
    dsr1_rpc_stream *s = calloc(1, sizeof(*s));
    if (!s) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    s->reply_desc = reply_desc;
    s->details = grpc_empty_slice();
    grpc_metadata_array_init(&s->initial_md);
    grpc_metadata_array_init(&s->trailing_md);
    s->cq = grpc_completion_queue_create_for_pluck(NULL);
    dsr1_status st = start_call(c, s, method, req, timeout_s);
    if (st) {
        s->finished = true;
        dsr1_rpc_stream_close(s);
        return st;
    }
    *out = s;
    return DSR1_OK;
}

dsr1_status dsr1_rpc_stream_open(dsr1_rpc_client *c, const char *method,
                                 const ProtobufCMessage *req,
                                 const ProtobufCMessageDescriptor *reply_desc, double timeout_s,
                                 dsr1_rpc_stream **out)
{
    if (!req) return dsr1_error(DSR1_ERR_INVALID_ARG, "%s: no request", method);
    return stream_start(c, method, req, reply_desc, timeout_s, out);
}

dsr1_status dsr1_rpc_stream_next(dsr1_rpc_stream *s, ProtobufCMessage **msg)
{
    if (!s->finished) {
        grpc_op op = {.op = GRPC_OP_RECV_MESSAGE};
        op.data.recv_message.recv_message = &s->recv;
        s->recv = NULL;
        grpc_call_error e =
            grpc_call_start_batch(s->call, &op, 1, (void *)(intptr_t)TAG_MESSAGE, NULL);
        if (e != GRPC_CALL_OK)
            return dsr1_error(DSR1_ERR_INTERNAL, "cannot receive a reply (error %d)", e);
        grpc_event ev = wait_tag(s, TAG_MESSAGE);
        if (ev.success && s->recv) {
            dsr1_status st = unpack(s->reply_desc, s->recv, msg);
            grpc_byte_buffer_destroy(s->recv);
            s->recv = NULL;
            if (st) grpc_call_cancel(s->call, NULL);
            return st;
        }
        finish(s);
    }
    if (s->code != GRPC_STATUS_OK) return status_error(s);
    *msg = NULL;
    return DSR1_OK;
}

dsr1_status dsr1_rpc_upload_open(dsr1_rpc_client *c, const char *method,
                                 const ProtobufCMessageDescriptor *reply_desc, double timeout_s,
                                 dsr1_rpc_stream **out)
{
    return stream_start(c, method, NULL, reply_desc, timeout_s, out);
}

/* One batch of ops on TAG_MESSAGE, waited for; false when it failed (the call is over). */
static bool run_ops(dsr1_rpc_stream *s, grpc_op *ops, size_t n)
{
    if (s->finished) return false;
    if (grpc_call_start_batch(s->call, ops, n, (void *)(intptr_t)TAG_MESSAGE, NULL) != GRPC_CALL_OK)
        return false;
    return wait_tag(s, TAG_MESSAGE).success != 0;
}

/* The call's error once it is over (UNKNOWN when it ended OK where a reply was due). */
static dsr1_status ended(dsr1_rpc_stream *s, const char *what)
{
    finish(s);
    if (s->code != GRPC_STATUS_OK) return status_error(s);
    return dsr1_error(DSR1_ERR_IO, "%s: the call ended early", what);
}

dsr1_status dsr1_rpc_upload_send(dsr1_rpc_stream *s, const ProtobufCMessage *req)
{
    grpc_op op = {.op = GRPC_OP_SEND_MESSAGE};
    op.data.send_message.send_message = pack(req);
    bool ok = run_ops(s, &op, 1);
    grpc_byte_buffer_destroy(op.data.send_message.send_message);
    return ok ? DSR1_OK : ended(s, "upload");
}

dsr1_status dsr1_rpc_upload_finish(dsr1_rpc_stream *s, ProtobufCMessage **reply)
{
    grpc_op ops[2] = {{.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT}, {.op = GRPC_OP_RECV_MESSAGE}};
    s->recv = NULL;
    ops[1].data.recv_message.recv_message = &s->recv;
    bool ok = run_ops(s, ops, 2);
    grpc_byte_buffer *bb = ok ? s->recv : NULL;
    s->recv = NULL;
    finish(s);
    dsr1_status st;
    if (s->code != GRPC_STATUS_OK)
        st = status_error(s);
    else if (!bb)
        st = dsr1_error(DSR1_ERR_FORMAT, "upload: the server sent no reply");
    else
        st = unpack(s->reply_desc, bb, reply);
    if (bb) grpc_byte_buffer_destroy(bb);
    return st;
}

void dsr1_rpc_stream_cancel(dsr1_rpc_stream *s)
{
    if (s->call && !s->finished) grpc_call_cancel(s->call, NULL);
}

void dsr1_rpc_stream_close(dsr1_rpc_stream *s)
{
    if (!s) return;
    if (s->call) {
        dsr1_rpc_stream_cancel(s);
        finish(s);
        grpc_call_unref(s->call);
    }
    grpc_completion_queue_shutdown(s->cq);
    while (
        grpc_completion_queue_pluck(s->cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
        GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(s->cq);
    grpc_metadata_array_destroy(&s->initial_md);
    grpc_metadata_array_destroy(&s->trailing_md);
    grpc_slice_unref(s->details);
    free(s);
}

dsr1_status dsr1_rpc_call(dsr1_rpc_client *c, const char *method, const ProtobufCMessage *req,
                          const ProtobufCMessageDescriptor *reply_desc, double timeout_s,
                          ProtobufCMessage **reply)
{
    dsr1_rpc_stream *s;
    dsr1_status st = dsr1_rpc_stream_open(c, method, req, reply_desc, timeout_s, &s);
    if (st) return st;
    ProtobufCMessage *m = NULL, *extra = NULL;
    st = dsr1_rpc_stream_next(s, &m);
    if (!st && m) st = dsr1_rpc_stream_next(s, &extra);
    if (!st && !m) st = dsr1_error(DSR1_ERR_FORMAT, "%s: the server sent no reply", method);
    if (!st && extra) st = dsr1_error(DSR1_ERR_FORMAT, "%s: more than one reply", method);
    if (extra) protobuf_c_message_free_unpacked(extra, NULL);
    dsr1_rpc_stream_close(s);
    if (st) {
        if (m) protobuf_c_message_free_unpacked(m, NULL);
        return st;
    }
    *reply = m;
    return DSR1_OK;
}
