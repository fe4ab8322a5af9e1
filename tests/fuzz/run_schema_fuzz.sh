#!/bin/sh
# Build and run the libFuzzer target of the JSON Schema converter (fuzz_json_schema.c):
# hostile schemas (deep nesting, huge enums, $ref cycles with and without a base case,
# allOf through recursive $refs, patterns) must give an error or grammar text the engine
# accepts, never a crash, a hang or unbounded memory.
#
#   tests/fuzz/run_schema_fuzz.sh [SECONDS]     # default 60 s
#
# Builds with clang (-fsanitize=fuzzer,address,undefined) straight from the sources into
# $DSR1_FUZZ_DIR (default build-fuzz-schema/ at the repo root), seeds the corpus, runs for
# SECONDS with a 2 GB memory limit and a 10 s per-input timeout, and exits non-zero if it
# found a crash, leak, timeout or out-of-memory (the reproducer is left as crash-*, leak-*,
# timeout-* or oom-* in that directory). The corpus persists between runs.
set -eu

secs=${1:-60}
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${DSR1_FUZZ_DIR:-$root/build-fuzz-schema}
cc=${CC_FUZZ:-clang}
mkdir -p "$out/corpus"
cd "$root"

srcs="common/base/status.c common/base/log.c common/base/strbuf.c common/text/*.c common/grammar/*.c"
flags="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -g -O1 -std=gnu11 -D_GNU_SOURCE -I common/base -I common/text -I common/grammar"
# shellcheck disable=SC2086
$cc $flags -o "$out/fuzz_json_schema" tests/fuzz/fuzz_json_schema.c $srcs -ljansson -lpcre2-8 -lm -lpthread

# Seeds: the first byte picks the options (bit 0 whitespace, 1 strict, 2 few rules, 3 small
# repetition limit); the rest is the schema.
c=$out/corpus
seed() { { printf "$1"; printf '%s' "$2"; } >"$c/seed-$3"; }
seed '\000' '{"type":"object","properties":{"a":{"type":"integer","minimum":12,"maximum":345},"b":{"type":"string","maxLength":5}},"required":["b"]}' object
seed '\001' '{"$defs":{"n":{"type":"object","properties":{"v":{"type":"integer"},"next":{"anyOf":[{"$ref":"#/$defs/n"},{"type":"null"}]}},"required":["v","next"]}},"$ref":"#/$defs/n"}' list
seed '\002' '{"$ref":"#"}' self
seed '\000' '{"$defs":{"a":{"$ref":"#/$defs/b"},"b":{"$ref":"#/$defs/a"}},"$ref":"#/$defs/a"}' cycle
seed '\000' '{"$defs":{"a":{"allOf":[{"$ref":"#/$defs/b"}]},"b":{"allOf":[{"$ref":"#/$defs/a"}]}},"$ref":"#/$defs/a"}' allof-cycle
seed '\000' '{"type":"object","properties":{"n":{"$ref":"#"}},"required":["n"]}' no-base
seed '\000' '{"allOf":[{"anyOf":[{"minLength":1},{"maxLength":9}]},{"anyOf":[{"type":"string"},{"type":"null"}]}]}' distribute
seed '\000' '{"type":"array","prefixItems":[{"enum":[1,"a",null,{"k":[1]}]},{"const":"x\u0000y"}],"items":{"type":"string","pattern":"^[^a-y]+\\.(?:js|ts)$"}}' array
seed '\000' '{"type":"string","format":"email"}' email
seed '\010' '{"type":"string","pattern":"(a{1,3}|[\\u00e9-\\u00ff\\d]){2,5}x*"}' pattern
seed '\000' '{"type":"object","properties":{"ab":{"type":"string"}},"patternProperties":{"^[a-z]+$":{"type":"integer"},"^x-":{"type":"integer"}},"additionalProperties":false,"minProperties":1,"maxProperties":3}' pattern-props
seed '\000' '{"properties":{"a":{},"b":{}},"patternProperties":{".*":{"maxLength":2000}},"dependentRequired":{"a":["b","c"]},"dependencies":{"b":["a"]}}' dependencies
seed '\010' '{"type":"string","minLength":37,"maxLength":9999}' long-string
seed '\000' '{"type":"string","format":"date-time"}' date-time
deep=$(printf '{"properties":{"a":%.0s' $(seq 150))
deep="$deep{}$(printf '}}%.0s' $(seq 150))"
seed '\000' "$deep" deep
enum='{"enum":['$(seq -s, 1 12000)']}'
seed '\000' "$enum" enum

cat >"$out/schema.dict" <<'DICT'
"\"type\""
"\"object\""
"\"array\""
"\"string\""
"\"integer\""
"\"number\""
"\"boolean\""
"\"null\""
"\"properties\""
"\"required\""
"\"additionalProperties\""
"\"items\""
"\"prefixItems\""
"\"additionalItems\""
"\"minItems\""
"\"maxItems\""
"\"enum\""
"\"const\""
"\"anyOf\""
"\"oneOf\""
"\"allOf\""
"\"$ref\""
"\"#\""
"\"#/$defs/a\""
"\"#/definitions/a\""
"\"$defs\""
"\"definitions\""
"\"minLength\""
"\"maxLength\""
"\"pattern\""
"\"format\""
"\"date-time\""
"\"minimum\""
"\"maximum\""
"\"exclusiveMinimum\""
"\"exclusiveMaximum\""
"\"nullable\""
"\"patternProperties\""
"\"minProperties\""
"\"maxProperties\""
"\"dependentRequired\""
"\"dependencies\""
"\"date\""
"\"time\""
"\"not\""
"true"
"false"
"{}"
"[]"
"\"^(?:a|b)*$\""
"\"[^\\\\x00-z]\""
"9999999999999999999"
"-1e18"
DICT

echo "== fuzz_json_schema for ${secs}s"
status=0
"$out/fuzz_json_schema" -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 \
    -timeout=10 -max_len=8192 -artifact_prefix="$out/" -dict="$out/schema.dict" "$out/corpus" \
    >"$out/fuzz_json_schema.log" 2>&1 || status=1
grep -E "^#[0-9]+.*(DONE|pulse)|stat::number_of_executed_units|stat::peak_rss|ERROR|SUMMARY" \
    "$out/fuzz_json_schema.log" | tail -5
if [ "$status" -ne 0 ]; then
    echo "fuzzing found a problem: see $out/crash-* (or leak-, timeout-, oom-) and $out/fuzz_json_schema.log" >&2
fi
exit "$status"
