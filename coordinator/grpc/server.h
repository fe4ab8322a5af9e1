/* The gRPC serving frontend: proto/dsr1.proto's dsr1.v1.Dsr1 service and the standard
 * grpc.health.v1.Health service, on gRPC core's C API, in front of the continuous-batching
 * scheduler (scheduler.h). docs/api.md describes every RPC, limit and error code.
 *
 * The server turns requests into scheduler requests (tokenizing text, rendering chat
 * messages with the checkpoint's chat template, filling sampling defaults from
 * generation_config.json, checking every limit) and scheduler events into responses:
 * Generate streams one message per step; batches live in the durable batch store
 * (batches.h), which feeds their items to the scheduler through the server's "grpc" codec
 * and keeps their results.
 *
 * Threads: a few completion-queue threads run the RPC handlers; streamed messages are sent
 * from the scheduler's thread as its events arrive. The scheduler, tokenizer and config
 * are borrowed: they must outlive the server (destroy the server first). With a batch
 * store: dsr1_server_shutdown, then dsr1_batches_close, then dsr1_server_destroy (the
 * store's codec uses the server until it is closed). */
#ifndef DSR1_SERVER_H
#define DSR1_SERVER_H

#include <stdint.h>

#include "batches.h"
#include "model_config.h"
#include "scheduler.h"
#include "status.h"
#include "tokenizer.h"

#define DSR1_SERVER_DEFAULT_PORT      50051
#define DSR1_SERVER_DEFAULT_MSG_BYTES (4 << 20)

typedef struct {
    const char *api_key; /* NULL or "": no authentication */
    int max_batch_items; /* items of one batch (0: 1000000; as the store's max_items) */
    int max_context;     /* prompt + max_tokens, as the scheduler was given */
    int max_queued;      /* the scheduler's queue limit, reported by GetModelInfo */
    /* The durable batch store (open, not yet started: the server registers its "grpc"
     * codec); NULL: the batch RPCs answer UNAVAILABLE. */
    dsr1_batches *batches;

    const char *model_dir;   /* checkpoint directory: generation_config.json (sampling
                              * defaults) and the chat template are read from it */
    const char *config_path; /* the config file (ModelInfo.config_json) */
    const dsr1_model_config *cfg;
    const dsr1_tokenizer *tok;
    dsr1_sched *sched;
    /* Constrained decoding (SamplingParams.constraint): the scheduler's grammar cache
     * (dsr1_sched_params.grammars); NULL: constrained requests are refused. */
    dsr1_grammars *grammars;

    /* Reported by GetServerInfo */
    int workers, pp;       /* 0 workers: the engine in this process */
    const char *transport; /* "inproc", "ucx", "mpi" or "none" */
    const char *kernels;
} dsr1_server_params;

typedef struct dsr1_server dsr1_server;

/* Binds host:port (NULL host: "127.0.0.1"; port 0: any free port) before anything slow
 * happens, so that a port in use fails at once; nothing is served yet.
 * max_message_bytes: the largest request accepted (0: 4 MiB). */
dsr1_status dsr1_server_listen(const char *host, int port, int max_message_bytes,
                               dsr1_server **out);
/* Starts serving with the scheduler and model of p. Strings in p are copied. On failure the
 * server still needs dsr1_server_destroy. */
dsr1_status dsr1_server_start(dsr1_server *s, const dsr1_server_params *p);
/* The port bound (the free port chosen for port 0). */
int dsr1_server_port(const dsr1_server *s);
/* Graceful shutdown, then frees: stops accepting calls, aborts this server's requests in
 * the scheduler (clients get their final ABORT message), waits for them to finish (a few
 * seconds at most for clients to read them), cancels whatever remains and joins the
 * threads. The scheduler must still be running. */
void dsr1_server_destroy(dsr1_server *s);
/* The first part of dsr1_server_destroy alone: stops serving (every call ended); the
 * server's batch codec stays usable until dsr1_server_destroy. */
void dsr1_server_shutdown(dsr1_server *s);

#endif
