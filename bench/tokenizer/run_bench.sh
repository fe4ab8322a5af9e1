#!/bin/sh
# Tokenizer throughput: dsr1's encoder (C) against @huggingface/tokenizers (JavaScript,
# node) on the same corpus in the same run, plus a check that both produce the same ids.
#
#   bench/tokenizer/run_bench.sh [BUILD_DIR] [MODEL_DIR] [MEGABYTES]
#
# BUILD_DIR defaults to build (needs bench/tokenizer/bench_tokenizer built); MODEL_DIR
# holds the R1 tokenizer.json/tokenizer_config.json (default: written from
# ../shared/golden with make_tiny.py's write_tokenizer); the corpus (make_corpus.py,
# default 4 MB) is written to BUILD_DIR/tokenizer-corpus.json.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-build}
case $build in /*) ;; *) build=$root/$build ;; esac
model=${2:-}
mb=${3:-4}
golden=${DSR1_GOLDEN:-$root/../shared/golden}
here=$root/bench/tokenizer

if [ -z "$model" ]; then
    model=$build/tokenizer-bench-model
    mkdir -p "$model"
    python3 "$root/tests/tokenizer/write_r1_tokenizer.py" "$golden" "$model"
fi
corpus=$build/tokenizer-corpus.json
python3 "$here/make_corpus.py" "$golden" "$corpus" "$mb"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "node $(node --version)"

"$build/bench/tokenizer/bench_tokenizer" --reps 3 --threads "$(nproc)" \
    --ids-out "$build/tokenizer-ids-dsr1.json" "$model" "$corpus" | tee "$build/tokenizer-bench.txt"
node "$here/bench_hf.mjs" "$model" "$corpus" 3 "$build/tokenizer-ids-hf.json" |
    tee -a "$build/tokenizer-bench.txt"

python3 - "$build/tokenizer-bench.txt" "$build/tokenizer-ids-dsr1.json" "$build/tokenizer-ids-hf.json" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
ours = float(re.search(r"dsr1 .*= ([\d.]+) MB/s \(1 thread", text).group(1))
ref = float(re.search(r"hf-js .*= ([\d.]+) MB/s", text).group(1))
a, b = json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
same = sum(x == y for x, y in zip(a, b))
print(f"ids identical on {same}/{len(b)} documents")
print(f"speed-up (1 thread, dsr1 / @huggingface/tokenizers): {ours / ref:.1f}x")
sys.exit(0 if same == len(b) == len(a) else 1)
PY
