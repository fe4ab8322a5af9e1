#!/usr/bin/env bash
# Constrained-decoding cost in serving (docs/benchmarks.md): one `dsr1 serve` on a model, then
# `dsr1-bench serve` at one concurrency, alternately without and with every request under a
# JSON Schema (bench/serve-schema.json: an array of at least 100 objects, so no request can
# finish its grammar within its length and every token is masked), ROUNDS times each (A B A
# B ...), and the ratio of the medians of output tokens/s.
#
# usage: bench/serve_constrained.sh BUILD_DIR MODEL_DIR [OUT_DIR] [extra dsr1 serve args...]
# env:   CONCURRENCY=32 INPUT_LEN=128 OUTPUT_LEN=64 ROUNDS=3 SCHEMA=bench/serve-schema.json
set -euo pipefail
build=$(realpath "$1"); model=$2; out=${3:-$(mktemp -d)}; shift $(( $# < 3 ? $# : 3 ))
c=${CONCURRENCY:-32}; ilen=${INPUT_LEN:-128}; olen=${OUTPUT_LEN:-64}; rounds=${ROUNDS:-3}
schema=$(realpath "${SCHEMA:-$(dirname "$0")/serve-schema.json}")
mkdir -p "$out"
log=$out/server.log
. "$(dirname "$0")/serve_lib.sh"
start_server "$build" "$model" "$log" --http-port 0 "$@"
target=$GRPC_TARGET
echo "server $target: $model ${*:-}; concurrency $c, $ilen in, $olen out, $rounds rounds"
n=$(( 4 * c ))
for r in $(seq "$rounds"); do
    for mode in free schema; do
        extra=(); seed=$(( 2 * r ))
        # prompts of their own per run: none may find another's in the prefix cache
        [ $mode = schema ] && { extra=(--json-schema "$schema"); seed=$(( 2 * r + 1 )); }
        "$build/bench/dsr1-bench" serve --server "$target" --num-prompts $n --max-concurrency "$c" \
            --random-input-len "$ilen" --random-output-len "$olen" --seed "$seed" \
            --label "$mode $r" --json "$out/$mode-$r.json" "${extra[@]}" >"$out/$mode-$r.txt" 2>&1
        /usr/bin/python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], sys.argv[3], 'out tok/s %.1f' % d['output_throughput'], 'failed', d.get('failed', 0))" "$out/$mode-$r.json" $mode $r
    done
done
/usr/bin/python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
tp = {m: [json.load(open(f"{out}/{m}-{r}.json"))["output_throughput"] for r in range(1, rounds + 1)]
      for m in ("free", "schema")}
f, s = statistics.median(tp["free"]), statistics.median(tp["schema"])
print(f"median output tok/s: free {f:.1f}, schema {s:.1f}, ratio {s / f:.3f}")
PY
