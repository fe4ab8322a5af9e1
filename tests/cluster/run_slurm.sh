#!/usr/bin/env bash
# The cluster under real Slurm: deploy/slurm/dsr1-cluster.sbatch submitted with sbatch to a
# private one-node Slurm (slurm_up.sh: munged, slurmctld, slurmd on this machine), serving
# the tiny model: dsr1-coordinator as task 0 and two dsr1-worker tasks, started by
# `srun --mpi=pmix --multi-prog` in one round, by mpirun inside the allocation in a second
# (DSR1_SLURM_LAUNCHERS="srun mpirun"). Checks, in each round:
#   1. the job starts and the coordinator serves (gRPC health through `dsr1 client info`,
#      the HTTP API's /health through curl);
#   2. three generation requests at once complete, with the requested token counts, and a
#      seeded request gives the same tokens twice;
#   3. (mpirun round, DSR1_SLURM_FAULT=1 only: needs a coordinator that survives the loss of a worker)
#      one dsr1-worker task killed with SIGKILL: the job stays up and requests still
#      complete; that round's job runs with DSR1_KILL_ON_BAD_EXIT=0 and, so that no expert
#      is lost with the worker, DSR1_SLURM_FAULT_ARGS (default --expert-replicas 2);
#   4. scancel ends the job (CANCELLED) and every task of it within 30 s.
# Every wait is bounded; Slurm is brought down on exit whatever happened.
#
# usage: run_slurm.sh BUILD_DIR [MODEL_DIR]   (MODEL_DIR default: models/tiny-a)
# Exit 77 (skip) without the Slurm/munge binaries, without root, or with a build without
# MPI and UCX (no dsr1-coordinator/dsr1-worker).
set -euo pipefail
build=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
model=$(realpath -m "${2:-${DSR1_GOLDEN_MODELS:-$root/models}/tiny-a}")
. "$here/cluster_env.sh"
PATH=$PATH:/usr/sbin
dsr1=$build/tools/dsr1
if ! cluster_have UCX "$build" || ! cluster_have MPI "$build" ||
   [ ! -x "$build/tools/dsr1-coordinator" ] || [ ! -x "$build/tools/dsr1-worker" ]; then
    echo "skip: the build has no dsr1-coordinator/dsr1-worker (needs MPI and UCX)"; exit 77
fi
for b in sbatch srun scancel scontrol squeue slurmctld slurmd munged; do
    command -v $b >/dev/null || { echo "skip: $b missing (apt-get install slurm-wlm munge)"; exit 77; }
done
[ "$(id -u)" = 0 ] || { echo "skip: the private Slurm runs its daemons as root"; exit 77; }
if [ ! -f "$model/config.json" ]; then
    golden=$root/../shared/golden
    [ -f "$golden/make_tiny.py" ] || { echo "skip: no model at $model"; exit 77; }
    /usr/bin/python3 "$golden/make_tiny.py" "$golden/configs/tiny-a.json" "$model"
    touch "$model/.complete"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/dsr1-slurm-test.XXXX")
job=
# cancel JOB: scancel, then wait (30 s at most) until Slurm is done with the job (not
# PENDING, RUNNING or COMPLETING: slurmd stopped before its steps end would leave them)
cancel() {
    local st
    scancel "$1" 2>/dev/null || true
    for _ in $(seq 150); do
        st=$(squeue -h -j "$1" -o %T 2>/dev/null || true)
        case "$st" in PENDING | RUNNING | COMPLETING | SUSPENDED) sleep 0.2 ;; *) return 0 ;; esac
    done
}
cleanup() {
    if [ -n "$job" ]; then cancel "$job"; fi
    "$here/slurm_down.sh" "$tmp/slurm"
    rm -rf "$tmp"
}
trap cleanup EXIT
fail=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fail=1; }
# joblog [N]: the job output's last N lines (default 25), without Open MPI's "[host:pid]"
# lines and the indented lines of a usage text
joblog() {
    echo "---- job output (tail)"
    grep -av '^\[\|^  ' "$tmp/job.out" 2>/dev/null | tail -"${1:-25}" || true
}
now() { date +%s.%N; }
secs() { /usr/bin/python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }
t_start=$(now)

rc=0
timeout -k 5 60 "$here/slurm_up.sh" "$tmp/slurm" || rc=$?
if [ $rc = 77 ]; then exit 77; fi
[ $rc = 0 ] || { echo "FAIL: slurm_up.sh: exit $rc"; exit 1; }
export SLURM_CONF=$tmp/slurm/slurm.conf
t_up=$(now)

# generate NAME MAXTOK [client args...]: one request, its JSON Completion in $tmp/NAME.json;
# checks exit 0 and that it generated MAXTOK tokens (--ignore-eos)
generate() {
    local name=$1 n=$2
    shift 2
    timeout 60 "$dsr1" client generate --server "$server" --timeout-s 50 --json \
        --max-tokens "$n" --ignore-eos "$@" >"$tmp/$name.json" 2>"$tmp/$name.err"
}
# ntokens FILE: the number of token_ids of the Completion in FILE, when its usage agrees
# (-1: unreadable or disagreeing)
ntokens() {
    /usr/bin/python3 -c '
import json, sys
try:
    c = json.load(open(sys.argv[1]))
    n = len(c["token_ids"])
    print(n if c["usage"]["completion_tokens"] == n and not c.get("error") else -1)
except Exception:
    print(-1)' "$1"
}
# requests TAG: three concurrent generations (8, 12, 16 tokens), then a seeded one twice
requests() {
    local tag=$1 pids=() i n rc
    for i in 0 1 2; do
        generate "$tag$i" $((8 + 4 * i)) --ids "0,19923,14,$((5 + i))" --temperature 0.8 \
            --seed $((7 + i)) &
        pids+=($!)
    done
    for i in 0 1 2; do
        rc=0
        wait "${pids[$i]}" || rc=$?
        n=$(ntokens "$tmp/$tag$i.json")
        if [ $rc = 0 ] && [ "$n" = $((8 + 4 * i)) ]; then
            ok "$tag: request $i: $n tokens"
        else
            bad "$tag: request $i: exit $rc, $n tokens (wanted $((8 + 4 * i))): $(head -c 300 "$tmp/$tag$i.err")"
        fi
    done
    for i in a b; do
        generate "$tag-seed$i" 10 --ids 0,19923,14 --temperature 1 --seed 1234 || true
    done
    n=$(ntokens "$tmp/$tag-seeda.json")
    if [ "$n" = 10 ] && cmp -s <(ntokens_ids "$tmp/$tag-seeda.json") <(ntokens_ids "$tmp/$tag-seedb.json"); then
        ok "$tag: a seeded request twice: the same 10 tokens"
    else
        bad "$tag: a seeded request twice: $n tokens, $(ntokens_ids "$tmp/$tag-seeda.json") vs $(ntokens_ids "$tmp/$tag-seedb.json")"
    fi
}
ntokens_ids() {
    /usr/bin/python3 -c '
import json, sys
try:
    c = json.load(open(sys.argv[1]))
    print(c["token_ids"])
except Exception as e:
    print("unreadable:", e)' "$1"
}

# job_procs JOB: the dsr1 processes of JOB, "PID COMMAND" lines, from the pids Slurm tracks
# for the job (every step's; under mpirun they are the children of the orted of step 0)
job_procs() {
    scontrol listpids "$1" 2>/dev/null | awk '$1 ~ /^[0-9]+$/ {print $1}' | while read -r p; do
        c=$(cat /proc/"$p"/comm 2>/dev/null || true)
        case "$c" in dsr1-coordinato* | dsr1-worker) echo "$p $c" ;; esac
    done
}

# free_ports: two free TCP ports of the loopback interface
free_ports() {
    /usr/bin/python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))'
}

# round LAUNCHER FAULT: one job of the sbatch with DSR1_LAUNCHER=LAUNCHER (srun or mpirun):
# serve, requests, (FAULT=1: a worker killed, requests again), scancel
round() {
    local launcher=$1 fault=$2 port http_port server kill_on_bad_exit serving state t0 nc nw
    local i vpid ended alive extra t_submit t_serving failed_before=$fail
    read -r port http_port < <(free_ports)
    server=127.0.0.1:$port
    rm -rf "$tmp/state" "$tmp/job.out"
    mkdir "$tmp/state"
    kill_on_bad_exit=1 extra=
    if [ "$fault" = 1 ]; then # every expert on both workers: one of them can go
        kill_on_bad_exit=0 extra=${DSR1_SLURM_FAULT_ARGS---expert-replicas 2}
    fi
    # one node, two workers on it, one pipeline stage (2 EP ranks); one thread each (2 cores)
    t_submit=$(now)
    job=$(DSR1_MODEL=$model DSR1_BIN=$build/tools DSR1_WORKERS_PER_NODE=2 DSR1_PP=1 \
        DSR1_THREADS=1 DSR1_KILL_ON_BAD_EXIT=$kill_on_bad_exit DSR1_LAUNCHER=$launcher \
        DSR1_ARGS="--host 127.0.0.1 --port $port --http-port $http_port --state-dir $tmp/state $extra" \
        timeout 30 sbatch --parsable --nodes=1 --time=10 --chdir="$tmp" --output="$tmp/job.out" \
        "$root/deploy/slurm/dsr1-cluster.sbatch")
    job=${job%%;*}
    echo "$launcher: submitted job $job (gRPC $server, HTTP 127.0.0.1:$http_port)"

    # 1. wait (at most 60 s) for "serving on", while the job is pending or running
    serving=0
    for i in $(seq 300); do
        grep -aq "serving on 127.0.0.1:$port" "$tmp/job.out" 2>/dev/null && { serving=1; break; }
        state=$(squeue -h -j "$job" -o %T 2>/dev/null || true)
        [ "$state" = PENDING ] || [ "$state" = RUNNING ] || break
        # running workers without their coordinator (it failed; with DSR1_KILL_ON_BAD_EXIT=0
        # nothing ends the job): checked each second from the fifth on
        if [ "$state" = RUNNING ] && ((i > 25 && i % 5 == 0)); then
            job_procs "$job" >"$tmp/pids"
            if grep -q ' dsr1-worker' "$tmp/pids" && ! grep -q ' dsr1-coordinato' "$tmp/pids"; then
                state="RUNNING without its coordinator"
                break
            fi
        fi
        sleep 0.2
    done
    if [ $serving = 0 ]; then
        bad "$launcher: the coordinator did not serve (job: ${state:-gone})"
        cancel "$job"
        job=
        joblog; return 0
    fi
    t_serving=$(now)
    ok "$launcher: job $job serves, $(secs "$t_submit" "$t_serving") s after sbatch"
    if timeout 20 "$dsr1" client info --server "$server" --timeout-s 10 >"$tmp/info.json" 2>&1; then
        ok "$launcher: dsr1 client info: $(tr -d '\n ' <"$tmp/info.json" | cut -c1-100)..."
    else
        bad "$launcher: dsr1 client info: $(cat "$tmp/info.json")"
    fi
    code=$(timeout 20 curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http_port/health" || true)
    [ "$code" = 200 ] && ok "$launcher: HTTP /health: 200" || bad "$launcher: HTTP /health: ${code:-no answer}"

    # 2. requests through the Slurm-launched cluster
    t0=$(now)
    requests "$launcher"
    echo "$launcher: requests took $(secs "$t0" "$(now)") s"

    # the job's dsr1 processes ("PID COMMAND" lines), from the pids Slurm tracks for the job
    # (every step's; under mpirun they are the children of the orted of step 0)
    job_procs "$job" >"$tmp/pids"
    nc=$(grep -c ' dsr1-coordinato' "$tmp/pids" || true)
    nw=$(grep -c ' dsr1-worker' "$tmp/pids" || true)
    [ "$nc" = 1 ] && [ "$nw" = 2 ] && ok "$launcher: the job runs 1 coordinator and 2 workers" ||
        bad "$launcher: the job's processes: $nc coordinator(s), $nw worker(s): $(tr '\n' ' ' <"$tmp/pids")"

    # 3. (flagged) a worker task dies: the service must keep answering
    if [ "$fault" = 1 ]; then
        vpid=$(awk '$2 == "dsr1-worker" {print $1}' "$tmp/pids" | sed -n 2p)
        if [ -z "$vpid" ]; then
            bad "fault: no second dsr1-worker process"
        else
            kill -KILL "$vpid"
            echo "fault: killed the second dsr1-worker (pid $vpid)"
            sleep 3
            state=$(squeue -h -j "$job" -o %T 2>/dev/null || true)
            [ "$state" = RUNNING ] && ok "fault: the job still runs" || bad "fault: job state ${state:-gone}"
            requests "$launcher-fault"
            echo "fault: the coordinator's log: $(grep -a ' WARN ' "$tmp/job.out" | head -2 | cut -c1-200)"
        fi
    fi

    # 4. scancel: the job ends (CANCELLED), its tasks exit
    t0=$(now)
    scancel "$job"
    ended=0
    for _ in $(seq 150); do
        state=$(scontrol show job "$job" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2 || true)
        alive=$(awk '{print $1}' "$tmp/pids" | while read -r p; do
            if kill -0 "$p" 2>/dev/null; then echo "$p"; fi; done | wc -l)
        if [ "$state" != RUNNING ] && [ "$state" != COMPLETING ] && [ "$alive" = 0 ]; then ended=1; break; fi
        sleep 0.2
    done
    if [ $ended = 1 ] && [ "$state" = CANCELLED ]; then
        ok "$launcher: scancel: job $job CANCELLED, all tasks gone after $(secs "$t0" "$(now)") s"
    else
        bad "$launcher: scancel: after 30 s the job is ${state:-unknown}, $alive task process(es) alive"
        cancel "$job"
    fi
    job=
    if [ $fail != "$failed_before" ]; then joblog 40; fi
    return 0
}

# the rounds: srun --multi-prog (PMIx), then mpirun inside the allocation. The fault round
# (DSR1_SLURM_FAULT=1) runs under mpirun only: Slurm's mpi/pmix plugin kills a whole step
# when one of its PMIx clients dies, whatever --kill-on-bad-exit says (deploy/slurm/README.md)
fault=${DSR1_SLURM_FAULT:-0}
for launcher in ${DSR1_SLURM_LAUNCHERS:-srun mpirun}; do
    f=0
    [ "$launcher" = mpirun ] && f=$fault
    t0_round=$(now)
    round "$launcher" "$f"
    echo "$launcher: round took $(secs "$t0_round" "$(now)") s"
done

echo "times: slurm up $(secs "$t_start" "$t_up") s, total $(secs "$t_start" "$(now)") s"
[ $fail = 0 ] && echo "=== slurm cluster passed" || echo "=== slurm cluster FAILED"
exit $fail
