#!/bin/sh
# Build and run the libFuzzer target of the grammar engine (grammar text and regex
# compilers, matcher masks against brute force, forced bytes, rollback).
#
#   tests/fuzz/run_grammar_fuzz.sh [SECONDS]     # default 60 s
#
# Builds with clang (-fsanitize=fuzzer,address,undefined) straight from the sources into
# $DSR1_FUZZ_DIR (default build-fuzz-grammar/ at the repo root), seeds the corpus with
# valid grammars and regexes, runs for SECONDS, and exits non-zero if it found a crash
# (the reproducer is left as crash-* in that directory). The corpus persists between runs.
set -eu

secs=${1:-60}
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${DSR1_FUZZ_DIR:-$root/build-fuzz-grammar}
cc=${CC_FUZZ:-clang}
mkdir -p "$out/corpus"
cd "$root"

srcs="common/base/status.c common/base/strbuf.c common/text/*.c common/grammar/*.c"
flags="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -g -O1 -std=gnu11 -D_GNU_SOURCE -I common/base -I common/text -I common/grammar"
# shellcheck disable=SC2086
$cc $flags -o "$out/fuzz_grammar" tests/fuzz/fuzz_grammar.c $srcs -ljansson -lpcre2-8 -lm

# Seeds: byte 0 picks the compiler (even: grammar text, odd: regex), the text runs to a
# NUL, the bytes after it steer the matcher.
c=$out/corpus
printf '\000root ::= "{" members? "}"\nmembers ::= pair ("," pair)*\npair ::= str ":" val\nval ::= str | [0-9]+ | "true" | "[" (val ("," val)*)? "]" | "{" members? "}"\nstr ::= "\\"" ([^"\\\\] | "\\\\" ["n])* "\\""\n\000\001\002\003\004\005\006\007\010\011\012\013\014\015\016\017' >"$c/seed-json"
printf '\000root ::= expr\nexpr ::= expr [+-] term | term\nterm ::= term "*" fac | fac\nfac ::= [0-9]+ | "(" expr ")"\n\000\005\011\003\377\007\002\001' >"$c/seed-leftrec"
printf '\000root ::= /[a-z]{2,4}@[a-z]+\\.(com|org)/ "\\n" (. | [\\u00e9-\\u00ff])*\n\000\001\002\003\004\005' >"$c/seed-regexterm"
printf '\001^(?:[A-Z][a-z]*\\s?)+\\d{1,3}(ab|c)*?$\000\001\002\003\004\005\006\007' >"$c/seed-regex"
printf '\001[^"\\\\]*"?\\u00e9.{0,5}\000\001\002\003' >"$c/seed-regex2"

cat >"$out/grammar.dict" <<'DICT'
"::="
"root"
" | "
"*"
"+"
"?"
"{2,5}"
"{3}"
"{1,}"
"[^"
"[a-z]"
"]"
"("
")"
"/"
"\\d"
"\\w"
"\\s"
"(?:"
"\\u00e9"
"\\x41"
"\""
"."
"#"
"\x0a"
DICT

status=0
echo "== fuzz_grammar for ${secs}s"
"$out/fuzz_grammar" -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="$out/crash-grammar-" \
    -dict="$out/grammar.dict" -max_len=2048 -timeout=10 -rss_limit_mb=2048 "$out/corpus" \
    >"$out/fuzz_grammar.log" 2>&1 || status=1
grep -E "^#[0-9]+.*(DONE|pulse)|stat::number_of_executed_units|stat::peak_rss|ERROR|SUMMARY" \
    "$out/fuzz_grammar.log" | tail -5
if [ "$status" -ne 0 ]; then
    echo "fuzzing found a crash: see $out/crash-* and $out/fuzz_grammar.log" >&2
fi
exit "$status"
