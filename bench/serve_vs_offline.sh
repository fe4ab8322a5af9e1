#!/usr/bin/env bash
# Serving against the engine alone at the same batch size (docs/benchmarks.md, "Serving
# against offline"): ROUNDS times, alternately, `dsr1-bench offline --batch C` (one prefill
# step of C prompts of INPUT_LEN tokens, then OUTPUT_LEN decode steps) and `dsr1 serve` with
# `dsr1-bench serve` at concurrency C (ROUNDS_PER_RUN x C requests of the same lengths,
# greedy, ignore_eos; the server started once, with DSR1_SCHED_PROFILE=1 so that its log
# ends with where the scheduler's time went). Prints per round the served output tokens/s
# and two ratios, both measured minutes apart in the same script run:
#   serve / offline decode   served output tok/s over offline's decode-only tok/s (the
#                            figure of issue 14; serving also pays for every prompt's prefill)
#   serve / offline e2e      over offline's C x OUTPUT_LEN tokens / (prefill + decode time),
#                            the same work as one served round of C requests
# and, as the machine may be shared (wall times then swing 2x between minutes), the same
# comparison in CPU time: offline's CPU seconds (all threads) per output token over prefill
# and decode, over the server process's CPU seconds per output token during the measured
# run (after dsr1-bench serve's warm-up request), i.e. how much of its work serving adds.
#
# usage: bench/serve_vs_offline.sh BUILD_DIR MODEL_DIR [OUT_DIR] [extra dsr1 serve args...]
# env:   CONCURRENCY=8 INPUT_LEN=32 OUTPUT_LEN=32 ROUNDS=2 ROUNDS_PER_RUN=2 THREADS (both sides)
set -euo pipefail
build=$(realpath "$1"); model=$2; out=${3:-$(mktemp -d)}; shift $(( $# < 3 ? $# : 3 ))
c=${CONCURRENCY:-8}; ilen=${INPUT_LEN:-32}; olen=${OUTPUT_LEN:-32}; rounds=${ROUNDS:-2}
n=$(( ${ROUNDS_PER_RUN:-2} * c ))
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
mkdir -p "$out"
log=$out/server.log
echo "$(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $model, batch $c," \
    "$ilen in, $olen out, $n requests per served run, $rounds rounds"

offline() { # ROUND
    "$build/bench/dsr1-bench" offline --model "$model" --batch "$c" --input-len "$ilen" \
        --output-len "$olen" "${threads[@]}" --json "$out/offline$1.json" >"$out/offline$1.txt" 2>&1 ||
        { cat "$out/offline$1.txt"; exit 1; }
}
cpu_ticks() { # PID: user + system clock ticks of the process, all threads
    sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}
served() { # ROUND; sets CPU_S: the server's CPU seconds in the measured run
    local bench
    "$build/bench/dsr1-bench" serve --server "$GRPC_TARGET" --num-prompts "$n" \
        --max-concurrency "$c" --random-input-len "$ilen" --random-output-len "$olen" \
        --seed "$((c * 100 + $1))" --label "round $1" --json "$out/serve$1.json" \
        >"$out/serve$1.txt" 2>&1 &
    bench=$!
    until grep -q 'in flight at most' "$out/serve$1.txt" 2>/dev/null; do # after the warm-up
        kill -0 $bench 2>/dev/null || break
        sleep 0.1
    done
    local t0; t0=$(cpu_ticks "$SERVER_PID")
    wait $bench || { cat "$out/serve$1.txt"; exit 1; }
    CPU_S=$(awk -v a="$t0" -v b="$(cpu_ticks "$SERVER_PID")" -v hz="$(getconf CLK_TCK)" \
        'BEGIN {print (b - a) / hz}')
}

. "$(dirname "$0")/serve_lib.sh"
for r in $(seq "$rounds"); do
    offline "$r"
    if [ "$r" = 1 ]; then
        DSR1_SCHED_PROFILE=1 start_server "$build" "$model" "$log" "${threads[@]}" "$@"
        echo "server $GRPC_TARGET: $model ${*:-} (log: $log)"
    fi
    served "$r"
    /usr/bin/python3 - "$out/offline$r.json" "$out/serve$r.json" "$r" \
        "$(cut -d' ' -f1 /proc/loadavg)" "$CPU_S" <<'EOF'
import json, sys
o = json.load(open(sys.argv[1]))["results"][0]
s = json.load(open(sys.argv[2]))
b, olen = o["batch"], json.load(open(sys.argv[1]))["output_len"]
dec = o["decode_tok_s"]
e2e = b * olen / (o["prefill_seconds"] + o["decode_seconds"])
srv = s["output_throughput"]
cpu_off = (o["prefill_cpu_seconds"] + o["decode_cpu_seconds"]) / (b * olen)
cpu_srv = float(sys.argv[5]) / s["total_output_tokens"] if "total_output_tokens" in s else None
print(f"round {sys.argv[3]} (load {sys.argv[4]}): offline prefill {o['prefill_seconds']:.2f} s, "
      f"decode {dec:.2f} tok/s, e2e {e2e:.2f} tok/s; served {srv:.2f} tok/s "
      f"(TTFT {s['mean_ttft_ms']:.0f} ms, TPOT {s['mean_tpot_ms']:.0f} ms, "
      f"{s['failed']} failed); serve / offline decode {srv / dec:.3f}, "
      f"serve / offline e2e {srv / e2e:.3f}")
if cpu_srv:
    print(f"  CPU s per output token: offline {cpu_off:.4f} (prefill + decode), served "
          f"{cpu_srv:.4f} (server process, {float(sys.argv[5]):.1f} s); offline / served "
          f"{cpu_off / cpu_srv:.3f}")
EOF
done
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
grep -h 'profile:' "$log" || true
echo "reports: $out"
