/* The OpenAI-compatible HTTP frontend: /v1/chat/completions, /v1/completions, /v1/models,
 * /health and /metrics, and with a batch store /v1/files and /v1/batches (docs/api.md,
 * "HTTP API"), on libmicrohttpd, in front of the same continuous-batching scheduler as the
 * gRPC server.
 *
 * Threads: libmicrohttpd's internal polling threads parse requests, render prompts and
 * submit them; scheduler events are turned into response bytes on the scheduler's thread
 * and appended to a bounded buffer per response, from which the polling threads send them
 * (a streamed response's connection is suspended while its buffer is empty: no thread per
 * stream). A watcher thread notices clients that hang up while their request runs and
 * aborts it. The scheduler, tokenizer and config are borrowed: they must outlive the
 * server (destroy the server first). */
#ifndef DSR1_HTTP_SERVER_H
#define DSR1_HTTP_SERVER_H

#include <stdint.h>

#include "model_config.h"
#include "scheduler.h"
#include "status.h"
#include "tokenizer.h"

typedef struct dsr1_batches dsr1_batches; /* batches.h */

#define DSR1_HTTP_DEFAULT_PORT       8000
#define DSR1_HTTP_DEFAULT_BODY_BYTES (4 << 20)
#define DSR1_HTTP_DEFAULT_SSE_BYTES  (4 << 20)

typedef struct {
    const char *api_key;    /* NULL or "": no authentication */
    int max_context;        /* prompt + max_tokens, as the scheduler was given */
    int max_body_bytes;     /* largest request body (0: 4 MiB); beyond: 413 */
    int max_stream_bytes;   /* unread bytes of one streamed response (0: 4 MiB); beyond,
                             * its requests are aborted */
    int threads;            /* polling threads (0: 2) */
    const char *model_dir;  /* generation_config.json and the chat template */
    const char *model_name; /* the id /v1/models lists (NULL: the directory's name) */
    const dsr1_model_config *cfg;
    const dsr1_tokenizer *tok;
    dsr1_sched *sched;
    /* response_format's grammars: the scheduler's cache (dsr1_sched_params.grammars); NULL:
     * response_format json_object / json_schema are refused */
    dsr1_grammars *grammars;
    /* the durable batch store (batches.h): OpenAI's Files and Batches API, its batches run
     * by this server's "openai" codec (registered at start). NULL: no Files/Batches API
     * (404). Borrowed: close it between dsr1_http_quiesce and dsr1_http_stop. */
    dsr1_batches *batches;
} dsr1_http_params;

typedef struct dsr1_http_server dsr1_http_server;

/* Binds host:port (NULL host: 127.0.0.1; port 0: any free port) and starts serving. On
 * failure nothing is left to free. Strings in p are copied. */
dsr1_status dsr1_http_start(const char *host, int port, const dsr1_http_params *p,
                            dsr1_http_server **out);
/* The port bound. */
int dsr1_http_port(const dsr1_http_server *s);
/* Stops serving HTTP: stops accepting, aborts this server's interactive requests in the
 * scheduler (streams get their final chunk), waits for their final events and closes the
 * connections. Batch items keep running: the store's codec still works until
 * dsr1_http_stop, so that dsr1_batches_close can abort them and record nothing. Items the
 * store starts from now on are refused as busy (it tries them again, or on its next open).
 * Safe to call twice. */
void dsr1_http_quiesce(dsr1_http_server *s);
/* dsr1_http_quiesce, then aborts what still runs (batch items, reported to the store as
 * aborted), waits for their final events and frees. The scheduler must still be running.
 * With a batch store: shut down in the order dsr1_http_quiesce, dsr1_batches_close,
 * dsr1_http_stop (the store calls this server's codec until it is closed). */
void dsr1_http_stop(dsr1_http_server *s);

#endif
