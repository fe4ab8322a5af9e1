#!/bin/sh
# Build and run the libFuzzer target of the HTTP API's request parser
# (coordinator/http/http_request.c: body bytes -> request struct or error).
#
#   tests/fuzz/run_http_fuzz.sh [SECONDS]     # default 60 s
#
# Builds with clang (-fsanitize=fuzzer,address,undefined) straight from the sources into
# $DSR1_FUZZ_DIR (default build-fuzz-http/ at the repo root), seeds the corpus with valid
# chat and completions requests, runs for SECONDS and exits non-zero if it found a crash
# (the reproducer is left as crash-* in that directory). The corpus persists between runs.
set -eu

secs=${1:-60}
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${DSR1_FUZZ_DIR:-$root/build-fuzz-http}
cc=${CC_FUZZ:-clang}
mkdir -p "$out/corpus"
cd "$root"

flags="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -g -O1 -std=gnu11 -D_GNU_SOURCE -I common/base -I coordinator/http"
# shellcheck disable=SC2086
$cc $flags -o "$out/fuzz_http_request" tests/fuzz/fuzz_http_request.c coordinator/http/http_request.c \
    common/base/status.c common/base/log.c -ljansson -lm

c=$out/corpus
printf '%s' '{"model":"m","messages":[{"role":"user","content":"hi"}]}' >"$c/seed-chat"
printf '%s' '{"messages":[{"role":"system","content":[{"type":"text","text":"be brief"}]},{"role":"user","content":"2+2"},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"add","arguments":"{\"a\":2}"}}]},{"role":"tool","tool_call_id":"c1","content":"4"}],"max_completion_tokens":16,"n":2,"stream":true,"stream_options":{"include_usage":true},"logprobs":true,"top_logprobs":3,"temperature":0.6,"top_p":0.95,"top_k":20,"min_p":0.05,"seed":7,"frequency_penalty":0.1,"presence_penalty":-0.1,"repetition_penalty":1.1,"logit_bias":{"15":-100,"16":5},"stop":["\n\n","END"],"user":"u","reasoning":{"enabled":true,"effort":"low","max_tokens":100,"exclude":false},"reasoning_effort":"high","tools":[{"type":"function","function":{"name":"add","description":"adds","parameters":{"type":"object","properties":{"a":{"type":"integer"}}},"strict":true}}],"tool_choice":{"type":"function","function":{"name":"add"}},"parallel_tool_calls":false,"response_format":{"type":"json_schema","json_schema":{"name":"r","schema":{"type":"object"},"strict":true}}}' >"$c/seed-chat-full"
printf '%s' '{"prompt":"Once upon a time","max_tokens":8,"logprobs":2,"stop":"\n","echo":false}' >"$c/seed-completion"
printf '%s' '{"prompt":[1,2,3,4],"max_tokens":8,"seed":-1}' >"$c/seed-completion-ids"

cat >"$out/http.dict" <<'DICT'
"messages"
"role"
"content"
"system"
"user"
"assistant"
"tool"
"developer"
"tool_calls"
"function"
"arguments"
"name"
"type"
"text"
"prompt"
"max_tokens"
"max_completion_tokens"
"stream"
"stream_options"
"include_usage"
"logprobs"
"top_logprobs"
"logit_bias"
"stop"
"reasoning"
"reasoning_effort"
"enabled"
"exclude"
"effort"
"tools"
"tool_choice"
"required"
"response_format"
"json_schema"
"json_object"
"schema"
"strict"
"null"
"true"
"false"
"-1"
"1e300"
"\\u0000"
"\xed\xa0\x80"
DICT

status=0
echo "== fuzz_http_request for ${secs}s"
"$out/fuzz_http_request" -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="$out/crash-http-" \
    -dict="$out/http.dict" "$out/corpus" >"$out/fuzz_http_request.log" 2>&1 || status=1
grep -E "^#[0-9]+.*(DONE|pulse)|stat::number_of_executed_units|stat::peak_rss|ERROR|SUMMARY" \
    "$out/fuzz_http_request.log" | tail -5
if [ "$status" -ne 0 ]; then
    echo "fuzzing found a crash: see $out/crash-* and $out/fuzz_http_request.log" >&2
fi
exit "$status"
