/* libFuzzer target: the HTTP API's request parser (coordinator/http/http_request.h) over
 * arbitrary bodies, as chat and as completions requests. A parsed request must be
 * self-consistent (counts within their limits, strings NUL-terminated); either way nothing
 * may leak (LeakSanitizer) or touch memory it does not own (AddressSanitizer). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http_request.h"

static void check(const dsr1_http_request *r)
{
    if (r->n < 1 || r->n > DSR1_HTTP_MAX_N || r->n_stop > DSR1_HTTP_MAX_STOP ||
        r->n_bias > DSR1_HTTP_MAX_LOGIT_BIAS || r->top_logprobs > DSR1_HTTP_MAX_TOP_LP ||
        r->n_tools > DSR1_HTTP_MAX_TOOLS)
        abort();
    for (int i = 0; i < r->n_messages; i++)
        if (!r->messages[i].role ||
            (r->messages[i].content && strlen(r->messages[i].content) > (1u << 30)))
            abort();
    for (int i = 0; i < r->n_stop; i++)
        if (!r->stop[i] || !*r->stop[i]) abort();
    if (r->kind == DSR1_HTTP_CHAT && r->n_messages < 1) abort();
    if (r->kind == DSR1_HTTP_COMPLETION && !r->prompt && r->n_prompt_ids < 1) abort();
    if (r->tool_choice == DSR1_HTTP_TOOL_NAMED && !r->tool_choice_name) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char param[64];
    for (int kind = 0; kind < 2; kind++) {
        dsr1_http_request r;
        if (dsr1_http_parse((dsr1_http_kind)kind, (const char *)data, size, &r, param,
                            sizeof(param)) == DSR1_OK) {
            check(&r);
            dsr1_http_request_free(&r);
        } else if (memchr(param, '\0', sizeof(param)) == NULL) {
            abort();
        }
    }
    return 0;
}
