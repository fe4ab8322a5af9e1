#!/usr/bin/env bash
# Fault tolerance numbers for docs/benchmarks.md (issue 15): a served grid of 4 dsr1-worker
# ranks under mpirun (dsr1-coordinator, --expert-replicas R, --timeout-ms 3000) on a model
# (default models/tiny-a) with a fixed load: S seeded streaming /v1/completions of T tokens
# (temperature 1) and an OpenAI batch of B items, all at once.
#   1. R = 1 and R = 2 undisturbed, one after the other: throughput (streamed chunks per
#      second over the whole load) and the resident memory of each worker rank
#   2. R = 2, worker 1 killed with SIGKILL once every stream has 8 tokens: time to detect
#      (kill to the "lost" log line), to resume (to the "epoch N" line), to the next
#      streamed token, the longest pause of a stream, failed requests, outputs equal to
#      run 1's, throughput before and after the loss
#   3. `dsr1 inspect --expert-replicas 1|2` on the R1 config: memory per worker
# The load driver is the one of tests/cluster/run_cluster_survive.sh (its served.py).
#
# usage: bench/fault_failover.sh BUILD_DIR [MODEL_DIR] [STREAMS] [TOKENS] [BATCH_ITEMS]
#        (defaults models/tiny-a, 8, 128, 8). Needs UCX, MPI and mpirun.
set -euo pipefail
build=$(realpath "$1")
root=$(cd "$(dirname "$0")/.." && pwd)
model=$(realpath "${2:-$root/models/tiny-a}")
streams=${3:-8}
tokens=${4:-128}
items=${5:-8}
. "$root/tests/cluster/cluster_env.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed -n "/^cat >\"\$tmp\/served.py\" <<'PYEOF'\$/,/^PYEOF\$/p" \
    "$root/tests/cluster/run_cluster_survive.sh" | sed '1d;$d' >"$tmp/served.py"
load=(--streams "$streams" --tokens "$tokens" --items "$items")

echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "model $model; $streams streams x $tokens tokens + a batch of $items x $tokens, all at once"
run() { # NAME ARGS...: prints the summary line, keeps the JSON in $tmp/NAME.json
    local name=$1
    shift
    /usr/bin/python3 "$tmp/served.py" "$build" "$model" "$@" "${load[@]}" >"$tmp/$name.out" 2>&1 || true
    sed -n 's/^RESULT //p' "$tmp/$name.out" >"$tmp/$name.json"
    [ -s "$tmp/$name.json" ] || { echo "$name: no result"; tail -20 "$tmp/$name.out"; return 1; }
    /usr/bin/python3 -c "
import json, sys
r = json.load(open(sys.argv[1]))
keep = ('seconds', 'tok_per_s', 'failed_streams', 'batch_status', 'batch_counts', 'detect_s',
        'resume_s', 'next_token_s', 'longest_stall_s', 'tok_per_s_before', 'tok_per_s_after',
        'workers_live', 'identical', 'rss_mb', 'fails')
print(sys.argv[2] + ': ' + ', '.join(f'{k} {r[k]}' for k in keep if k in r))" "$tmp/$name.json" "$name"
}
run r1 mpiref --replicas 1
run r2 mpiref --replicas 2
run r2-kill mpikill --replicas 2 --ref "$tmp/r2.json"

for r in 1 2; do
    echo "dsr1 inspect --config deploy/configs/deepseek-r1.json --expert-replicas $r:"
    "$build/tools/dsr1" inspect --config "$root/deploy/configs/deepseek-r1.json" \
        --expert-replicas $r | sed -n '/memory per worker/,/^$/p'
done
