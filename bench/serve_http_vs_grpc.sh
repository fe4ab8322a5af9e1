#!/usr/bin/env bash
# The HTTP API against gRPC on one server (docs/benchmarks.md, "Serving: HTTP vs gRPC"):
# starts one `dsr1 serve` on a model (loopback, free ports) and, at each concurrency in
# CONCURRENCY, runs `dsr1-bench serve --backend grpc` and `--backend openai` alternately
# (grpc, openai, grpc, openai, ... ROUNDS times each), every run with its own random prompts
# (INPUT_LEN tokens, OUTPUT_LEN generated; 4 x concurrency requests, at least 16, or
# NUM_PROMPTS) so that none reuses another's cached prefixes. Prints one row per run (with
# the server's CPU time per output token, user + system from /proc/PID/stat: on a shared
# machine a steadier measure of what a frontend costs than wall-clock throughput), then per
# concurrency the medians of output throughput, mean TTFT and CPU per token for both, the
# ratio HTTP / gRPC of the median throughputs and the median of the per-round ratios.
# Each run's report and JSON go to OUT_DIR.
#
# usage: bench/serve_http_vs_grpc.sh BUILD_DIR MODEL_DIR [OUT_DIR] [extra dsr1 serve args...]
# env:   CONCURRENCY="1 32 128" INPUT_LEN=128 OUTPUT_LEN=64 ROUNDS=3 NUM_PROMPTS
set -euo pipefail
build=$(realpath "$1"); model=$2; out=${3:-$(mktemp -d)}; shift $(( $# < 3 ? $# : 3 ))
conc=${CONCURRENCY:-1 32 128}; ilen=${INPUT_LEN:-128}; olen=${OUTPUT_LEN:-64}
rounds=${ROUNDS:-3}
mkdir -p "$out"

log=$out/server.log
. "$(dirname "$0")/serve_lib.sh"
start_server "$build" "$model" "$log" "$@"
grpc=$GRPC_TARGET http=$HTTP_BASE server=$SERVER_PID
[ -n "$http" ] || { cat "$log"; echo "serve_http_vs_grpc.sh: no HTTP address in the log"; exit 1; }
echo "server: gRPC $grpc, HTTP $http: $model ${*:-} (log: $log)"

# the server's CPU seconds so far (utime + stime)
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' \
    "/proc/$server/stat"; }
printf '%-26s %7s %6s %10s %9s %9s %12s\n' run prompts failed "out tok/s" "TTFT ms" "ITL ms" \
    "CPU ms/tok"
for c in $conc; do
    n=$(( 4 * c > 16 ? 4 * c : 16 )); n=${NUM_PROMPTS:-$n}
    for r in $(seq "$rounds"); do
        for b in grpc openai; do
            name=c$c-r$r-$b
            seed=$(( c * 1000 + r * 2 )); [ "$b" = grpc ] || seed=$(( seed + 1 ))
            cpu0=$(cpu_s)
            "$build/bench/dsr1-bench" serve --backend "$b" --server "$grpc" --base-url "$http" \
                --num-prompts "$n" --max-concurrency "$c" --random-input-len "$ilen" \
                --random-output-len "$olen" --seed "$seed" --label "$name" \
                --json "$out/$name.json" >"$out/$name.txt" 2>&1 ||
                { cat "$out/$name.txt"; exit 1; }
            python3 - "$out/$name.json" "concurrency $c, $r, $b" "$cpu0" "$(cpu_s)" <<'EOF'
import json, sys
f, label, cpu0, cpu1 = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
r = json.load(open(f))
# the warm-up request's tokens are in the CPU time too
r["server_cpu_ms_per_token"] = (cpu1 - cpu0) * 1e3 / (r["total_output_tokens"] +
                                                      r["random_output_len"])
json.dump(r, open(f, "w"), indent=2)
print(f"{label:<26} {r['completed'] + r['failed']:>7} {r['failed']:>6} "
      f"{r['output_throughput']:>10.1f} {r['mean_ttft_ms']:>9.1f} {r['mean_itl_ms']:>9.2f} "
      f"{r['server_cpu_ms_per_token']:>12.3f}")
EOF
        done
    done
done
kill $server; wait $server 2>/dev/null || true
trap - EXIT

echo "medians of $rounds rounds (input $ilen, output $olen):"
python3 - "$out" "$conc" "$rounds" <<'EOF'
import json, statistics, sys
out, conc, rounds = sys.argv[1], sys.argv[2].split(), int(sys.argv[3])
print(f"{'concurrency':>11} {'gRPC tok/s':>11} {'HTTP tok/s':>11} {'HTTP/gRPC':>10} "
      f"{'per round':>10} {'gRPC TTFT ms':>13} {'HTTP TTFT ms':>13} {'gRPC CPU ms/tok':>16} "
      f"{'HTTP CPU ms/tok':>16}")
med = statistics.median
for c in conc:
    runs = {b: [json.load(open(f"{out}/c{c}-r{r}-{b}.json")) for r in range(1, rounds + 1)]
            for b in ("grpc", "openai")}
    tput = {b: [x["output_throughput"] for x in runs[b]] for b in runs}
    ttft = {b: med(x["mean_ttft_ms"] for x in runs[b]) for b in runs}
    cpu = {b: med(x["server_cpu_ms_per_token"] for x in runs[b]) for b in runs}
    pair = med(h / g for h, g in zip(tput["openai"], tput["grpc"]))
    print(f"{c:>11} {med(tput['grpc']):>11.1f} {med(tput['openai']):>11.1f} "
          f"{med(tput['openai']) / med(tput['grpc']):>10.3f} {pair:>10.3f} "
          f"{ttft['grpc']:>13.1f} {ttft['openai']:>13.1f} {cpu['grpc']:>16.3f} "
          f"{cpu['openai']:>16.3f}")
EOF
echo "reports: $out"
