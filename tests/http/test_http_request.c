/* The HTTP API's request parser (coordinator/http/http_request.h) without a server: defaults,
 * every field read into its struct member, content parts joined, assistant tool calls
 * normalised (object arguments serialised), reasoning controls, tools and tool_choice,
 * response_format, completions prompts (text, ids, a list of one), unknown fields ignored, and
 * errors naming the field (param) for wrong types and values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_request.h"

static dsr1_http_request req;
static char param[64];

static dsr1_status parse(dsr1_http_kind kind, const char *body)
{
    return dsr1_http_parse(kind, body, strlen(body), &req, param, sizeof(param));
}

/* Parses a body expected to fail; checks the status and the field named. */
static void expect_error(dsr1_http_kind kind, const char *body, const char *want_param)
{
    dsr1_status st = parse(kind, body);
    if (st != DSR1_ERR_INVALID_ARG || strcmp(param, want_param))
        fail_msg("%s: status %d, param '%s' (%s); expected param '%s'", body, (int)st, param,
                 st ? "error" : "parsed", want_param);
}

static void test_defaults(void **state)
{
    (void)state;
    assert_int_equal(
        parse(DSR1_HTTP_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}"), DSR1_OK);
    assert_int_equal(req.kind, DSR1_HTTP_CHAT);
    assert_null(req.model);
    assert_int_equal(req.n_messages, 1);
    assert_string_equal(req.messages[0].role, "user");
    assert_string_equal(req.messages[0].content, "hi");
    assert_int_equal(req.max_tokens, -1);
    assert_int_equal(req.n, 1);
    assert_false(req.stream);
    assert_false(req.logprobs);
    assert_false(req.has_temperature);
    assert_false(req.has_seed);
    assert_int_equal(req.n_stop, 0);
    assert_true(req.skip_special_tokens);
    assert_true(req.reasoning_enabled);
    assert_false(req.reasoning_exclude);
    assert_int_equal(req.reasoning_max_tokens, -1);
    assert_int_equal(req.n_tools, 0);
    assert_int_equal(req.tool_choice, DSR1_HTTP_TOOL_NONE);
    assert_int_equal(req.response_format, DSR1_HTTP_FORMAT_TEXT);
    dsr1_http_request_free(&req);
}

static void test_every_field(void **state)
{
    (void)state;
    const char *body =
        "{\"model\":\"m\",\"messages\":["
        "{\"role\":\"developer\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
        "{\"type\":\"text\",\"text\":\"b\"}]},"
        "{\"role\":\"user\",\"content\":\"q\"},"
        "{\"role\":\"assistant\",\"content\":null,\"reasoning_content\":\"r\",\"tool_calls\":"
        "[{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":"
        "{\"x\":1}}}]},"
        "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"42\"}],"
        "\"max_completion_tokens\":7,\"n\":3,\"stream\":true,\"stream_options\":{\"include_usage\":"
        "true},\"logprobs\":true,\"top_logprobs\":5,\"temperature\":0.5,\"top_p\":0.9,\"top_k\":"
        "-1,\"min_p\":0.1,\"seed\":-2,\"presence_penalty\":0.5,\"frequency_penalty\":-0.5,"
        "\"repetition_penalty\":1.2,\"logit_bias\":{\"7\":-100,\"9\":2.5},\"stop\":[\"x\",\"yy\"],"
        "\"user\":\"u\",\"ignore_eos\":true,\"skip_special_tokens\":false,"
        "\"reasoning\":{\"enabled\":true,\"effort\":\"high\",\"max_tokens\":100,\"exclude\":true},"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{}}},"
        "{\"type\":\"function\",\"function\":{\"name\":\"g.h-i\"}}],"
        "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"g.h-i\"}},"
        "\"parallel_tool_calls\":false,\"tool_prompt\":\"none\","
        "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"s\",\"schema\":"
        "{\"type\":\"object\"},\"strict\":true}},\"future_field\":[1,2,3]}";
    assert_int_equal(parse(DSR1_HTTP_CHAT, body), DSR1_OK);
    assert_string_equal(req.model, "m");
    assert_int_equal(req.n_messages, 4);
    assert_string_equal(req.messages[0].role, "system");
    assert_string_equal(req.messages[0].content, "ab");
    assert_null(req.messages[2].content);
    assert_string_equal(req.messages[2].reasoning, "r");
    assert_non_null(strstr(req.messages[2].tool_calls_json, "\"arguments\":\"{\\\"x\\\":1}\""));
    assert_string_equal(req.messages[3].tool_call_id, "c1");
    assert_int_equal(req.max_tokens, 7);
    assert_int_equal(req.n, 3);
    assert_true(req.stream && req.include_usage && req.logprobs);
    assert_int_equal(req.top_logprobs, 5);
    assert_true(req.has_temperature && req.has_top_p && req.has_seed && req.has_repetition_penalty);
    assert_true(req.temperature == 0.5f && req.top_p == 0.9f && req.min_p == 0.1f);
    assert_int_equal(req.top_k, 0);
    assert_true(req.seed == (uint64_t)-2);
    assert_true(req.presence_penalty == 0.5f && req.frequency_penalty == -0.5f);
    assert_true(req.repetition_penalty == 1.2f);
    assert_int_equal(req.n_bias, 2);
    assert_true((req.bias_ids[0] == 7 && req.bias_values[0] == -100.0f) ||
                (req.bias_ids[1] == 7 && req.bias_values[1] == -100.0f));
    assert_int_equal(req.n_stop, 2);
    assert_string_equal(req.stop[1], "yy");
    assert_string_equal(req.user, "u");
    assert_true(req.ignore_eos);
    assert_false(req.skip_special_tokens);
    assert_true(req.reasoning_enabled && req.reasoning_exclude);
    assert_int_equal(req.reasoning_effort, 3);
    assert_int_equal(req.reasoning_max_tokens, 100);
    assert_int_equal(req.n_tools, 2);
    assert_string_equal(req.tool_names[1], "g.h-i");
    assert_int_equal(req.tool_choice, DSR1_HTTP_TOOL_NAMED);
    assert_string_equal(req.tool_choice_name, "g.h-i");
    assert_false(req.parallel_tool_calls);
    assert_int_equal(req.tool_prompt, DSR1_HTTP_TOOL_PROMPT_NONE);
    assert_int_equal(req.response_format, DSR1_HTTP_FORMAT_JSON_SCHEMA);
    assert_string_equal(req.json_schema, "{\"type\":\"object\"}");
    assert_true(req.json_schema_strict);
    dsr1_http_request_free(&req);
    /* reasoning_effort none switches thinking off; tools default to tool_choice auto */
    assert_int_equal(parse(DSR1_HTTP_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],"
                                           "\"reasoning_effort\":\"none\",\"tools\":[{\"type\":"
                                           "\"function\",\"function\":{\"name\":\"f\"}}]}"),
                     DSR1_OK);
    assert_false(req.reasoning_enabled);
    assert_int_equal(req.tool_choice, DSR1_HTTP_TOOL_AUTO);
    dsr1_http_request_free(&req);
}

static void test_completions(void **state)
{
    (void)state;
    assert_int_equal(
        parse(DSR1_HTTP_COMPLETION, "{\"prompt\":\"Once\",\"logprobs\":3,\"max_tokens\":2}"),
        DSR1_OK);
    assert_string_equal(req.prompt, "Once");
    assert_true(req.logprobs);
    assert_int_equal(req.top_logprobs, 3);
    dsr1_http_request_free(&req);
    assert_int_equal(parse(DSR1_HTTP_COMPLETION, "{\"prompt\":[\"one\"]}"), DSR1_OK);
    assert_string_equal(req.prompt, "one");
    dsr1_http_request_free(&req);
    assert_int_equal(parse(DSR1_HTTP_COMPLETION, "{\"prompt\":[0,5,129279]}"), DSR1_OK);
    assert_int_equal(req.n_prompt_ids, 3);
    assert_int_equal(req.prompt_ids[2], 129279);
    dsr1_http_request_free(&req);
    expect_error(DSR1_HTTP_COMPLETION, "{\"prompt\":[\"a\",\"b\"]}", "prompt");
    expect_error(DSR1_HTTP_COMPLETION, "{\"prompt\":[1,-1]}", "prompt");
    expect_error(DSR1_HTTP_COMPLETION, "{\"prompt\":\"\"}", "prompt");
    expect_error(DSR1_HTTP_COMPLETION, "{}", "prompt");
    expect_error(DSR1_HTTP_COMPLETION, "{\"prompt\":\"a\",\"echo\":true}", "echo");
    expect_error(DSR1_HTTP_COMPLETION, "{\"prompt\":\"a\",\"suffix\":\"b\"}", "suffix");
    expect_error(DSR1_HTTP_COMPLETION, "{\"prompt\":\"a\",\"best_of\":3}", "best_of");
    expect_error(DSR1_HTTP_COMPLETION, "{\"prompt\":\"a\",\"logprobs\":6}", "logprobs");
}

static void test_errors(void **state)
{
    (void)state;
    static const struct {
        const char *body, *param;
    } cases[] = {
        {"not json", ""},
        {"[1]", ""},
        {"{\"messages\":[]}", "messages"},
        {"{\"messages\":{}}", "messages"},
        {"{\"messages\":[5]}", "messages"},
        {"{\"messages\":[{\"role\":\"king\",\"content\":\"x\"}]}", "messages.role"},
        {"{\"messages\":[{\"role\":\"user\"}]}", "messages.content"},
        /* jansson refuses \u0000 in a body: the body is at fault */
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"a\\u0000b\"}]}", ""},
        {"{\"messages\":[{\"role\":\"assistant\",\"content\":null}]}", "messages.content"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}",
         "messages.content"},
        {"{\"messages\":[{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{}]}]}",
         "messages.tool_calls"},
        {"{\"model\":3,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "model"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":0}", "max_tokens"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":1.5}", "max_tokens"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":17}", "n"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":2.5}",
         "temperature"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_p\":0}", "top_p"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_k\":-2}", "top_k"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"seed\":1.5}", "seed"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[\"\"]}", "stop"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logit_bias\":{\"1\":101}}",
         "logit_bias"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream_options\":{}}",
         "stream_options"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":21,\"logprobs\":"
         "true}",
         "top_logprobs"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"reasoning\":{\"enabled\":1}}",
         "reasoning.enabled"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"reasoning\":{\"max_tokens\":-1}}",
         "reasoning.max_tokens"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"reasoning_effort\":\"max\"}",
         "reasoning_effort"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\","
         "\"function\":{\"name\":\"a b\"}}]}",
         "tools"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\","
         "\"function\":{\"name\":\"f\"}},{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}",
         "tools"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tool_choice\":\"required\"}",
         "tool_choice"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":{\"type\":"
         "\"json_schema\",\"json_schema\":{}}}",
         "response_format"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"user\",\"content\":"
         "\"y\"}"
         "],\"messages\":[]}",
         ""}, /* duplicate keys */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++)
        expect_error(DSR1_HTTP_CHAT, cases[i].body, cases[i].param);
    /* a failed parse leaves nothing to free */
    assert_null(req.messages);
    assert_null(req.tools_json);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_every_field),
        cmocka_unit_test(test_completions),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
