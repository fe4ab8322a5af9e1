#!/usr/bin/env bash
# Online serving benchmark (docs/benchmarks.md): starts `dsr1 serve` on a model (loopback,
# a free port), runs `dsr1-bench serve` at each concurrency in CONCURRENCY with random
# prompts of INPUT_LEN tokens and OUTPUT_LEN generated tokens each (request rate inf, so
# the concurrency limit is what binds; each run its own prompts, so that none reuses
# another's cached prefixes), and, as the one-at-a-time baseline without the server,
# `dsr1 run` on one prompt of the same lengths (bench/e2e.sh's measurement). Prints one
# summary row per run; each run's full report and JSON go to OUT_DIR.
#
# usage: bench/serve.sh BUILD_DIR MODEL_DIR [OUT_DIR] [extra dsr1 serve args...]
# env:   CONCURRENCY="1 8 32 128" INPUT_LEN=128 OUTPUT_LEN=64
#        NUM_PROMPTS: requests per run (default ROUNDS x concurrency, at least MIN_PROMPTS;
#        ROUNDS=4, MIN_PROMPTS=16)
set -euo pipefail
build=$(realpath "$1"); model=$2; out=${3:-$(mktemp -d)}; shift $(( $# < 3 ? $# : 3 ))
conc=${CONCURRENCY:-1 8 32 128}; ilen=${INPUT_LEN:-128}; olen=${OUTPUT_LEN:-64}
mkdir -p "$out"

log=$out/server.log
. "$(dirname "$0")/serve_lib.sh"
start_server "$build" "$model" "$log" "$@"
target=$GRPC_TARGET server=$SERVER_PID
echo "server $target: $model ${*:-} (log: $log)"

printf '%-16s %7s %6s %7s %10s %10s %9s %9s %9s %9s %9s\n' run prompts failed "req/s" \
    "out tok/s" "tot tok/s" "TTFT ms" "p99 TTFT" "TPOT ms" "ITL ms" "E2E s"
for c in $conc; do
    n=$(( ${ROUNDS:-4} * c > ${MIN_PROMPTS:-16} ? ${ROUNDS:-4} * c : ${MIN_PROMPTS:-16} ))
    n=${NUM_PROMPTS:-$n}
    "$build/bench/dsr1-bench" serve --server "$target" --num-prompts "$n" \
        --max-concurrency "$c" --random-input-len "$ilen" --random-output-len "$olen" \
        --seed "$c" \
        --label "concurrency $c" --json "$out/c$c.json" >"$out/c$c.txt" 2>&1 ||
        { cat "$out/c$c.txt"; exit 1; }
    python3 - "$out/c$c.json" "concurrency $c" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<16} {r['completed'] + r['failed']:>7} {r['failed']:>6} "
      f"{r['request_throughput']:>7.2f} "
      f"{r['output_throughput']:>10.1f} {r['total_token_throughput']:>10.1f} "
      f"{r['mean_ttft_ms']:>9.1f} {r['p99_ttft_ms']:>9.1f} {r['mean_tpot_ms']:>9.2f} "
      f"{r['mean_itl_ms']:>9.2f} {r['mean_e2el_ms'] / 1e3:>9.2f}")
EOF
done
kill $server; wait $server 2>/dev/null || true
trap - EXIT

# one request at a time through the engine alone (no server, no scheduler)
echo "baseline (dsr1 run, one prompt of $ilen, $olen greedy tokens, no server):"
"$(dirname "$0")/e2e.sh" "$build" "$model" "$ilen" "$olen" | tail -1
echo "reports: $out"
