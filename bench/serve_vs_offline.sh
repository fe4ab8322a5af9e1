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
#
# With THREAD_CPU=1 it also prints, per round, the server's CPU seconds in the measured run
# thread by thread (/proc/PID/task/*/stat), each thread named by its name where it has one
# (gRPC's own threads: default-executo, event_engine, ...; MHD-worker: the HTTP server's), else
# by the function it started in (gdb's backtraces of the server after the run: pool_main = a
# pool worker, sched_main = the scheduler thread, which is also the pool's thread 0 and runs
# the steps, cq_thread = one of our gRPC completion-queue threads, which send the deltas).
#
# usage: bench/serve_vs_offline.sh BUILD_DIR MODEL_DIR [OUT_DIR] [extra dsr1 serve args...]
# env:   CONCURRENCY=8 INPUT_LEN=32 OUTPUT_LEN=32 ROUNDS=2 ROUNDS_PER_RUN=2 THREADS (both sides)
#        THREAD_CPU=1 (needs gdb to name the threads)
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
task_ticks() { # PID: "TID TICKS" of each of its threads
    local t
    for t in /proc/"$1"/task/*; do
        echo "${t##*/} $(sed 's/.*) //' "$t/stat" 2>/dev/null | awk '{print $12 + $13}')"
    done
}
thread_cpu() { # ROUND: per-thread CPU seconds of the measured run, threads named by gdb
    if command -v gdb >/dev/null; then
        gdb -p "$SERVER_PID" -batch -ex 'thread apply all bt' >"$out/threads$1.txt" 2>/dev/null ||
            true
    fi
    /usr/bin/python3 - "$out/tasks$1.before" "$out/tasks$1.after" "$out/threads$1.txt" \
        "$(getconf CLK_TCK)" "$SERVER_PID" <<'EOF'
import re, sys
def ticks(f):
    return {int(a): int(b) for a, b in (l.split() for l in open(f) if len(l.split()) == 2)}
t0, t1, hz = ticks(sys.argv[1]), ticks(sys.argv[2]), int(sys.argv[4])
name = {}  # LWP -> its thread name, or for ours the function below start_thread
try:
    lwp = prev = None
    for l in open(sys.argv[3]):
        m = re.match(r'Thread \d+ .*\(LWP (\d+)\) "([^"]*)"', l)
        if m:
            lwp, prev = int(m.group(1)), None
            if m.group(2) != 'dsr1':
                name[lwp] = m.group(2)
            continue
        m = re.match(r'#\d+\s+(?:0x[0-9a-f]+ in )?(\S+) \(', l)
        if m and lwp:
            if m.group(1) == 'start_thread' and prev and lwp not in name:
                name[lwp] = prev
            if m.group(1) != '??':
                prev = m.group(1)
except OSError:
    pass
main = int(sys.argv[5])
rows = sorted(((t1[t] - t0.get(t, 0)) / hz, t) for t in t1)
total = sum(r[0] for r in rows)
print(f"  server CPU by thread ({total:.1f} s):", ", ".join(
    f"{name.get(t, 'main' if t == main else '?')} [{t}] {s:.2f} s ({100 * s / total:.1f}%)"
    for s, t in reversed(rows) if s > 0) if total > 0 else "-")
EOF
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
    if [ -n "${THREAD_CPU:-}" ]; then task_ticks "$SERVER_PID" >"$out/tasks$1.before"; fi
    wait $bench || { cat "$out/serve$1.txt"; exit 1; }
    if [ -n "${THREAD_CPU:-}" ]; then task_ticks "$SERVER_PID" >"$out/tasks$1.after"; fi
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
    if [ -n "${THREAD_CPU:-}" ]; then thread_cpu "$r"; fi
done
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
grep -h 'profile:' "$log" || true
echo "reports: $out"
