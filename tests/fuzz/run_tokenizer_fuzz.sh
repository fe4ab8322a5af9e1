#!/bin/sh
# Build and run the libFuzzer target of the tokenizer (encoder, decoder, streaming
# detokenizer, chat-template compiler and renderer).
#
#   tests/fuzz/run_tokenizer_fuzz.sh [SECONDS] [MODEL_DIR]     # default 60 s
#
# Builds with clang (-fsanitize=fuzzer,address,undefined) straight from the sources into
# $DSR1_FUZZ_DIR (default build-fuzz-tokenizer/ at the repo root) and runs for SECONDS.
# The tokenizer comes from MODEL_DIR or $DSR1_FUZZ_MODEL (a directory with the R1
# tokenizer.json and tokenizer_config.json); without either, one is written from
# ../shared/golden with make_tiny.py's write_tokenizer. Exits non-zero on a crash (the
# reproducer is left as crash-* in the output directory). The corpus persists.
set -eu

secs=${1:-60}
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${DSR1_FUZZ_DIR:-$root/build-fuzz-tokenizer}
cc=${CC_FUZZ:-clang}
model=${2:-${DSR1_FUZZ_MODEL:-}}
mkdir -p "$out/corpus"
cd "$root"

if [ -z "$model" ]; then
    model=$out/r1-tokenizer
    golden=${DSR1_GOLDEN:-$root/../shared/golden}
    if [ ! -f "$model/tokenizer.json" ]; then
        mkdir -p "$model"
        python3 "$root/tests/tokenizer/write_r1_tokenizer.py" "$golden" "$model"
    fi
fi

srcs="common/base/status.c common/text/*.c"
flags="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -g -O1 -std=gnu11 -D_GNU_SOURCE -I common/base -I common/text"
# shellcheck disable=SC2086
$cc $flags -o "$out/fuzz_tokenizer" tests/fuzz/fuzz_tokenizer.c $srcs -ljansson -lpcre2-8 -lm

# Seeds: one per mode (the first byte picks the mode, see fuzz_tokenizer.c).
c=$out/corpus
printf '\000Hello, world! 你好 🚀 <think>\n</think><｜User｜>x   \t\r\n123456' >"$c/seed-text"
printf '\003<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜>' >"$c/seed-special"
printf '\004\001\000\000\000\144\000\000\000\377\377\377\377\344\000\000\000' >"$c/seed-ids"
python3 - "$model" "$c" <<'PY'
import json, sys
model, corpus = sys.argv[1], sys.argv[2]
tmpl = json.load(open(f"{model}/tokenizer_config.json", encoding="utf-8"))["chat_template"]
open(f"{corpus}/seed-template", "wb").write(b"\x05" + tmpl.encode())
msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>r</think>a"}]
open(f"{corpus}/seed-messages", "wb").write(b"\x06" + json.dumps(msgs).encode())
PY
# libFuzzer dictionaries take ASCII only: write the entries \x-escaped
python3 - "$out/tokenizer.dict" <<'PY'
import sys
words = ["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>", "<｜end▁of▁sentence｜>",
         "{%", "%}", "{{", "}}", "{#", "#}", "-%}", "{%-", " for ", " in ", " if ", "endif",
         "endfor", "namespace(", "loop.", "|length", "|tojson", ".split(", '"role"',
         '"content"', '"tool_calls"', "你", "🚀", "\u180e", "\u3000"]
with open(sys.argv[1], "w") as f:
    for w in words:
        f.write('"' + "".join(c if 32 <= b < 127 and c not in '"\\' else f"\\x{b:02x}"
                              for c, b in ((chr(b), b) for b in w.encode())) + '"\n')
PY

echo "== fuzz_tokenizer for ${secs}s (model $model)"
status=0
DSR1_FUZZ_MODEL=$model "$out/fuzz_tokenizer" -max_total_time="$secs" -timeout=20 \
    -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$out/crash-tokenizer-" \
    -dict="$out/tokenizer.dict" "$c" >"$out/fuzz_tokenizer.log" 2>&1 || status=1
grep -E "^#[0-9]+.*(DONE|pulse)|stat::number_of_executed_units|stat::peak_rss|ERROR|SUMMARY" \
    "$out/fuzz_tokenizer.log" | tail -5
if [ "$status" -ne 0 ]; then
    echo "fuzzing found a crash: see $out/crash-tokenizer-* and $out/fuzz_tokenizer.log" >&2
fi
exit "$status"
