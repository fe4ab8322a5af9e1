#!/bin/sh
# Build and run the libFuzzer targets of the HTTP API: the request parser
# (coordinator/http/http_request.c: body bytes -> request struct or error) and the tool-call
# parser (coordinator/http/http_tools.c: generated text in any pieces -> content and calls).
#
#   tests/fuzz/run_http_fuzz.sh [SECONDS]     # default 60 s per target
#
# Builds with clang (-fsanitize=fuzzer,address,undefined) straight from the sources into
# $DSR1_FUZZ_DIR (default build-fuzz-http/ at the repo root), seeds the corpora with valid
# chat and completions requests and tool calls, runs each target for SECONDS and exits
# non-zero if either found a crash (the reproducer is left as crash-* in that directory).
# The corpora persist between runs.
set -eu

secs=${1:-60}
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${DSR1_FUZZ_DIR:-$root/build-fuzz-http}
cc=${CC_FUZZ:-clang}
mkdir -p "$out/corpus" "$out/corpus-tools"
cd "$root"

flags="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -g -O1 -std=gnu11 -D_GNU_SOURCE -I common/base -I coordinator/http"
# shellcheck disable=SC2086
$cc $flags -o "$out/fuzz_http_request" tests/fuzz/fuzz_http_request.c coordinator/http/http_request.c \
    common/base/status.c common/base/log.c -ljansson -lm
# shellcheck disable=SC2086
$cc $flags -o "$out/fuzz_http_tools" tests/fuzz/fuzz_http_tools.c coordinator/http/http_tools.c \
    common/base/status.c common/base/log.c -ljansson -lm
# first byte: the number of cuts (mod 16), then one byte per cut (a piece's length mod 64)
printf '\003\005\011\021%s' 'Sure.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather
```json
{"city": "Paris"}
```<｜tool▁call▁end｜>
<｜tool▁call▁begin｜>function<｜tool▁sep｜>f
```json
{}
```<｜tool▁call▁end｜><｜tool▁calls▁end｜>' >"$out/corpus-tools/seed-calls"

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

# libFuzzer dictionaries take ASCII only: the markers as \xNN escapes
: >"$out/tools.dict"
for m in '<｜tool▁calls▁begin｜>' '<｜tool▁calls▁end｜>' '<｜tool▁call▁begin｜>' '<｜tool▁call▁end｜>' \
    '<｜tool▁sep｜>' 'function' '```json' '```'; do
    printf '"%s"\n' "$(printf '%s' "$m" | od -An -tx1 -v | tr -d ' \n' | sed 's/../\\x&/g')" \
        >>"$out/tools.dict"
done
printf '"\\x0a"\n' >>"$out/tools.dict"

status=0
for t in request tools; do
    corpus=$out/corpus
    dict=$out/http.dict
    if [ "$t" = tools ]; then corpus=$out/corpus-tools; dict=$out/tools.dict; fi
    echo "== fuzz_http_$t for ${secs}s"
    "$out/fuzz_http_$t" -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="$out/crash-$t-" \
        -dict="$dict" "$corpus" >"$out/fuzz_http_$t.log" 2>&1 || status=1
    grep -E "^#[0-9]+.*(DONE|pulse)|stat::number_of_executed_units|stat::peak_rss|ERROR|SUMMARY" \
        "$out/fuzz_http_$t.log" | tail -5
done
if [ "$status" -ne 0 ]; then
    echo "fuzzing found a crash: see $out/crash-* and $out/fuzz_http_*.log" >&2
fi
exit "$status"
