#!/usr/bin/env bash
# Fault handling of the cluster: the coordinator must exit non-zero within 10 s of a
# worker's death, with an error naming the lost worker, and never hang.
#   1. embedded UCX grid, worker 2 "crashes" at step 40 (DSR1_TEST_KILL_WORKER hook: its
#      endpoints and UCX worker close without notice), pp 1 and pp 2
#   2. mpirun, one dsr1-worker process killed with SIGKILL mid-generation, pp 1 and pp 2,
#      and pp 1 with the coordinator sent SIGTERM at the same moment (what mpirun does)
#   3. mpirun, one dsr1-worker stopped with SIGSTOP (alive but silent): the timeouts end
#      the run (--timeout-ms 3000), non-zero, within 10 s (the worker is named when its EP
#      peers notice first, which is usual but not certain)
#   4. mpirun, one worker started with another model config: every rank refuses at start-up
#      with a message naming that worker and the difference
# Every run is bounded by `timeout`; loopback transports only.
#
# usage: run_cluster_faults.sh BUILD_DIR [MODEL_DIR]   (MODEL_DIR default: models/tiny-a)
# Exit 77 (skip) when the build has no UCX; the mpirun parts are skipped without MPI.
set -euo pipefail
build=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
model=$(realpath -m "${2:-${DSR1_GOLDEN_MODELS:-$root/models}/tiny-a}")
. "$here/cluster_env.sh"
dsr1=$build/tools/dsr1
worker=$build/tools/dsr1-worker
if ! cluster_have UCX "$build"; then echo "skip: built without UCX"; exit 77; fi
cluster_tiny_model "$model" "$root"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
# 1000 forced tokens: a run far longer than the test (about 13 s on 2 cores)
force=$(/usr/bin/python3 -c "print(','.join(str((i * 7919) % 129000 + 2) for i in range(1000)))")
run_args=(run --model "$model" --prompt-ids 0,19923,14,5 --force-ids "$force" --timeout-ms 3000)
now() { date +%s.%N; }
secs() { /usr/bin/python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }
# check NAME RC SECONDS LOG WORKER: non-zero, under 10 s, and the coordinator's error
# ("dsr1 run: ...") names the worker (skipped when WORKER is empty)
check() {
    local name=$1 rc=$2 t=$3 log=$4 w=$5 msg
    msg=$(grep -a '^dsr1 run:' "$log" | head -1 || true)
    if [ "$rc" = 0 ] || [ "$rc" = 124 ] || [ "$rc" = 137 -a -z "$msg" ]; then
        echo "FAIL: $name: exit status $rc after $t s"; fail=1
    elif ! /usr/bin/python3 -c "import sys; sys.exit(float(sys.argv[1]) >= 10)" "$t"; then
        echo "FAIL: $name: took $t s (limit 10 s)"; fail=1
    elif [ -n "$w" ] && ! grep -qE "worker $w( |\b)" <<<"$msg"; then
        echo "FAIL: $name: the coordinator's error does not name worker $w: ${msg:-<none>}"
        fail=1
    else
        echo "ok: $name: exit $rc after $t s: ${msg:-<no coordinator message>}"
        return 0
    fi
    grep -a -v '^\[' "$log" | tail -15
}

# seconds from the log's "simulates a crash" line (HH:MM:SS.mmm) to now: the time to
# notice, not counting start-up and the steps before the crash (slow on a loaded machine)
since_crash() {
    local at
    at=$(grep -a "simulates a crash" "$1" | head -1 | awk '{print $1}')
    [ -n "$at" ] || { echo 999; return; }
    /usr/bin/python3 -c "
import sys, datetime
h, m, s = sys.argv[1].split(':'); t = int(h) * 3600 + int(m) * 60 + float(s)
now = datetime.datetime.now()  # one reading: the log's clock, local time
n = now.hour * 3600 + now.minute * 60 + now.second + now.microsecond / 1e6
d = (n - t) % 86400
print(f'{0.0 if d > 86000 else d:.2f}')  # a hair before the log line (rounding): 0" "$at"
}

for pp in 1 2; do
    name="embedded UCX, pp $pp, worker 2 crashes at step 40"
    rc=0
    DSR1_TEST_KILL_WORKER=2:40 timeout -k 5 60 "$dsr1" "${run_args[@]}" --workers 4 --pp $pp \
        --transport ucx >/dev/null 2>"$tmp/e$pp.log" || rc=$?
    check "$name" $rc "$(since_crash "$tmp/e$pp.log")" "$tmp/e$pp.log" 2
done

if ! cluster_have MPI "$build" || [ ! -x "$worker" ] || ! command -v mpirun >/dev/null; then
    echo "SKIP (mpirun parts): the build has no MPI (libopenmpi-dev) or mpirun is missing"
    exit $fail
fi

# start_mpi LOG PP [worker args...]: the long run under mpirun, in the background; sets mp
start_mpi() {
    local log=$1 pp=$2
    shift 2
    timeout -k 5 60 mpirun --oversubscribe --bind-to none -np 1 "$dsr1" "${run_args[@]}" \
        --pp "$pp" : -np 4 "$worker" --model "$model" "$@" >/dev/null 2>"$log" &
    mp=$!
    for _ in $(seq 300); do # until the first steps run (at most 30 s)
        grep -q "workers connected" "$log" 2>/dev/null && break
        kill -0 $mp 2>/dev/null || break
        sleep 0.1
    done
    sleep 1
}
# victim: the second dsr1-worker child of our mpirun; sets vpid and vw (its worker index),
# and cpid (the coordinator, `dsr1 run`)
pick_victim() {
    local mpirun_pid
    mpirun_pid=$(pgrep -P "$mp" -x mpirun | head -1 || true) # $mp is our `timeout`
    vpid=$(pgrep -P "${mpirun_pid:-0}" -f dsr1-worker | sed -n 2p || true)
    cpid=$(pgrep -P "${mpirun_pid:-0}" -x dsr1 | head -1 || true)
    vw=
    if [ -n "$vpid" ]; then
        vw=$(tr '\0' '\n' <"/proc/$vpid/environ" | sed -n 's/^OMPI_COMM_WORLD_RANK=//p')
        vw=$((vw - 1))
    fi
}

# "1t": mpirun's own SIGTERM (it ends the job when a rank dies) reaches the coordinator at
# the same moment as the loss, before the grid has seen it: the coordinator must still name
# the lost worker (a race mpirun usually loses, and won once in CI)
for c in 1 2 1t; do
    pp=${c%t}
    name="mpirun, pp $pp, a worker killed with SIGKILL"
    [ "$c" = 1t ] && name="$name and the coordinator SIGTERMed at once"
    start_mpi "$tmp/k$c.log" $pp
    pick_victim
    if [ -z "$vpid" ]; then
        echo "FAIL: $name: no worker process to kill"; fail=1
        wait $mp || true
        grep -a -v '^\[' "$tmp/k$c.log" | tail -15
        continue
    fi
    t0=$(now)
    kill -KILL "$vpid"
    if [ "$c" = 1t ]; then
        if [ -n "$cpid" ]; then
            kill -TERM "$cpid" 2>/dev/null || true
        else
            echo "FAIL: $name: no coordinator process found"; fail=1
        fi
    fi
    rc=0
    wait $mp || rc=$?
    check "$name (worker $vw)" $rc "$(secs "$t0" "$(now)")" "$tmp/k$c.log" "$vw"
done

name="mpirun, a worker stopped with SIGSTOP (silent, not dead)"
start_mpi "$tmp/s.log" 1
pick_victim
if [ -n "$vpid" ]; then
    t0=$(now)
    kill -STOP "$vpid"
    rc=0
    wait $mp || rc=$?
    kill -KILL "$vpid" 2>/dev/null || true # mpirun normally has; never leave it stopped
    # named by its EP peers when they notice first (their wait is shorter), else by the
    # coordinator, which lists the workers whose results are missing
    check "$name (worker $vw)" $rc "$(secs "$t0" "$(now)")" "$tmp/s.log" "$vw"
else
    echo "FAIL: $name: no worker process to stop"; fail=1
    wait $mp || true
fi

name="mpirun, worker 3 has another model config"
rc=0
t0=$(now)
timeout -k 5 60 mpirun --oversubscribe --bind-to none -np 1 "$dsr1" run --model "$model" \
    --dummy-weights --prompt-ids 0,1 : -np 3 "$worker" --model "$model" --dummy-weights \
    : -np 1 "$worker" --model "$model" --dummy-weights --layers 2 >/dev/null 2>"$tmp/r.log" ||
    rc=$?
if [ $rc = 0 ] || ! grep -a '^dsr1 run:' "$tmp/r.log" | grep -q "worker 3 (rank 4) refused: .*model config differs"; then
    echo "FAIL: $name: exit $rc"; fail=1
    grep -a -v '^\[' "$tmp/r.log" | tail -15
else
    echo "ok: $name: exit $rc after $(secs "$t0" "$(now)") s: $(grep -a '^dsr1 run:' "$tmp/r.log" | cut -c1-200)"
fi

[ $fail = 0 ] && echo "=== cluster faults passed" || echo "=== cluster faults FAILED"
exit $fail
