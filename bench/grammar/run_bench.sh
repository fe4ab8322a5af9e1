#!/bin/bash
# The "Grammar engine" measurements of docs/benchmarks.md: dsr1-bench grammar on the whole
# MaskBench corpus and on a fixed random subset, then the peers on the subset's instances
# (the same token ids): XGrammar's wasm build on SUBSET schemas, llama.cpp on the first
# LLAMA of them (it is ~10,000x slower per token). Peers installed outside the repository:
#   mkdir -p /tmp/peers && cd /tmp/peers && npm install node-llama-cpp @mlc-ai/web-xgrammar
#
#   bench/grammar/run_bench.sh BUILD_DIR MASKBENCH_DATA_DIR [OUT_DIR] [SUBSET] [LLAMA] [SEED]
set -euo pipefail
build=$1 data=$2 out=${3:-/tmp/gbench/run} subset=${4:-1000} llama=${5:-200} seed=${6:-11}
here=$(cd "$(dirname "$0")" && pwd)
tok=$here/../../../shared/golden/tokenizer
mkdir -p "$out"
python3 "$here/subset.py" "$data" "$out/subset" "$subset" "$seed"
python3 "$here/subset.py" "$out/subset" "$out/subset_llama" "$llama" "$seed"
[ -f /tmp/peers/r1-vocab.gguf ] || python3 "$here/make_gguf.py" "$tok/tokenizer.json" /tmp/peers/r1-vocab.gguf
bench=$build/bench/dsr1-bench
echo "load at the start: $(uptime)"
echo "== ours, whole corpus"
$bench grammar --schemas "$data" --model "$tok" --json > "$out/ours_full.json"
echo "== ours, subset of $subset"
$bench grammar --schemas "$out/subset" --model "$tok" --json --dump "$out/tokens.jsonl" > "$out/ours_subset.json"
$bench grammar --schemas "$out/subset_llama" --model "$tok" --json --dump "$out/tokens_llama.jsonl" > "$out/ours_llama.json"
echo "== xgrammar, subset of $subset"
node "$here/peer_xgrammar.mjs" --tokens "$out/tokens.jsonl" --schemas "$out/subset" \
  --tokenizer "$tok/tokenizer.json" --json > "$out/xgrammar_subset.json"
echo "== llama.cpp, subset of $llama"
node "$here/peer_llamacpp.mjs" --tokens "$out/tokens_llama.jsonl" --schemas "$out/subset_llama" \
  --tokenizer "$tok/tokenizer.json" --json > "$out/llamacpp_subset.json"
echo "load at the end: $(uptime)"
python3 - "$out" <<'PY'
import json, sys, os
out = sys.argv[1]
rows = [("ours, whole corpus", "ours_full"), ("ours, subset", "ours_subset"),
        ("xgrammar (wasm), subset", "xgrammar_subset"), ("ours, llama subset", "ours_llama"),
        ("llama.cpp, llama subset", "llamacpp_subset")]
print("| engine | schemas | compiled | compile p50 / p90 / p99 / max (ms) | mask p50 / p90 / p99 / max (µs, wall) | same in CPU time (µs) | masks | valid accepted | invalid rejected |")
print("|---|---|---|---|---|---|---|---|---|")
for name, f in rows:
    p = os.path.join(out, f + ".json")
    if not os.path.exists(p): continue
    # the wasm build prints its warnings on stdout: the report is the last JSON line
    r = json.loads([l for l in open(p) if l.startswith("{")][-1]); c = r["compile_ms"]; m = r["mask_us"]; mc = r["mask_cpu_us"]
    print(f"| {name} | {r['files']} | {r['compiled_pct']:.1f} % | {c['p50']:.2f} / {c['p90']:.2f} / {c['p99']:.1f} / {c['max']:.0f} "
          f"| {m['p50']:.1f} / {m['p90']:.1f} / {m['p99']:.0f} / {m['max']:.0f} "
          f"| {mc['p50']:.1f} / {mc['p90']:.1f} / {mc['p99']:.0f} / {mc['max']:.0f} | {m['n']} "
          f"| {r['valid_accepted_pct']:.2f} % ({r['valid_accepted']}/{r['valid']}) | {r['invalid_rejected_pct']:.2f} % ({r['invalid_rejected']}/{r['invalid']}) |")
PY
