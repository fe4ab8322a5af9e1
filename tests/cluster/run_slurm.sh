#!/usr/bin/env bash
# The cluster under real Slurm: deploy/slurm/dsr1-cluster.sbatch submitted with sbatch to a
# private one-node Slurm (slurm_up.sh: munged, slurmctld, slurmd on this machine), serving
# the tiny model: dsr1-coordinator as task 0 and two dsr1-worker tasks, started by
# `srun --mpi=pmix --multi-prog` in one round, by mpirun inside the allocation in a second;
# in a third (join), four dsr1-worker tasks that join the coordinator over TCP, started by
# `srun --mpi=none --multi-prog` (DSR1_SLURM_LAUNCHERS="srun mpirun join"). Checks, in each
# round:
#   1. the job starts and the coordinator serves (gRPC health through `dsr1 client info`,
#      the HTTP API's /health through curl);
#   2. three generation requests at once complete, with the requested token counts, and a
#      seeded request gives the same tokens twice;
#   3. (mpirun round, DSR1_SLURM_FAULT=1 only: needs a coordinator that survives the loss of a worker)
#      one dsr1-worker task killed with SIGKILL: the job stays up and requests still
#      complete; that round's job runs with DSR1_KILL_ON_BAD_EXIT=0 and, so that no expert
#      is lost with the worker, DSR1_SLURM_FAULT_ARGS (default --expert-replicas 2);
#   3j. (join round, always) with --expert-replicas 2 and one thread per worker: one
#      dsr1-worker task (from `scontrol listpids`) killed with SIGKILL: the job stays
#      RUNNING, /health shows 3 of 4 workers live, every request completes and the seeded
#      one gives the tokens it gave before the kill; then a replacement
#      `srun --jobid=JOB --overlap -n1 --mpi=none dsr1-worker --join ...` joins the running
#      job: /health back to 4 of 4, requests complete, the seeded one the same tokens again;
#   4. scancel ends the job (CANCELLED) and every task of it (the replacement's too)
#      within 30 s.
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
cluster_tiny_model "$model" "$root"

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

# free_ports: three free TCP ports of the loopback interface
free_ports() {
    /usr/bin/python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))'
}

# health_live: the "workers_live" of /health's grid (empty when there is no answer)
health_live() {
    timeout 10 curl -s "http://127.0.0.1:$http_port/health" 2>/dev/null | /usr/bin/python3 -c '
import json, sys
try:
    print(json.load(sys.stdin)["grid"]["workers_live"])
except Exception:
    pass' || true
}
# wait_live N SECONDS: until /health shows N workers live (at most SECONDS); 0 when it does
wait_live() {
    local i
    for i in $(seq $((5 * $2))); do
        [ "$(health_live)" = "$1" ] && return 0
        sleep 0.2
    done
    return 1
}
# same_seeded TAG1 TAG2: the seeded requests of two phases gave the same tokens
same_seeded() {
    if [ "$(ntokens "$tmp/$2-seeda.json")" = 10 ] &&
        cmp -s <(ntokens_ids "$tmp/$1-seeda.json") <(ntokens_ids "$tmp/$2-seeda.json"); then
        ok "$2: the seeded request gives the tokens it gave in $1"
    else
        bad "$2: the seeded request: $(ntokens_ids "$tmp/$2-seeda.json"), in $1: $(ntokens_ids "$tmp/$1-seeda.json")"
    fi
}

# round LAUNCHER FAULT: one job of the sbatch with DSR1_LAUNCHER=LAUNCHER (srun, mpirun or
# join): serve, requests, (FAULT=1: a worker killed, requests again; join: and a
# replacement joins, requests again), scancel
round() {
    local launcher=$1 fault=$2 port http_port join_port server kill_on_bad_exit serving state
    local t0 nc nw i vpid ended alive extra t_submit t_serving failed_before=$fail workers=2
    local rpid= timeout_ms
    read -r port http_port join_port < <(free_ports)
    server=127.0.0.1:$port
    rm -rf "$tmp/state" "$tmp/job.out" "$tmp/replacement.out"
    mkdir "$tmp/state"
    kill_on_bad_exit=1 extra=
    if [ "$fault" = 1 ]; then # every expert on two workers: one of them can go
        kill_on_bad_exit=0 extra=${DSR1_SLURM_FAULT_ARGS---expert-replicas 2}
    fi
    # join: four workers (each expert on two of them), a short timeout: the idle
    # coordinator looks for joining workers at its heartbeat, every --timeout-ms / 4
    timeout_ms=600000
    [ "$launcher" = join ] && workers=4 timeout_ms=8000
    # one node, the workers on it, one pipeline stage; one thread each (2 cores)
    t_submit=$(now)
    job=$(DSR1_MODEL=$model DSR1_BIN=$build/tools DSR1_WORKERS_PER_NODE=$workers DSR1_PP=1 \
        DSR1_THREADS=1 DSR1_KILL_ON_BAD_EXIT=$kill_on_bad_exit DSR1_LAUNCHER=$launcher \
        DSR1_JOIN_PORT=$join_port DSR1_TIMEOUT_MS=$timeout_ms \
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
    [ "$nc" = 1 ] && [ "$nw" = $workers ] && ok "$launcher: the job runs 1 coordinator and $workers workers" ||
        bad "$launcher: the job's processes: $nc coordinator(s), $nw worker(s): $(tr '\n' ' ' <"$tmp/pids")"

    # 3. (flagged; join: always) a worker task dies: the service must keep answering
    if [ "$fault" = 1 ] && [ "$launcher" = join ]; then
        join_fault
    elif [ "$fault" = 1 ]; then
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
    if [ -n "$rpid" ]; then # the replacement's srun ends with its step
        for _ in $(seq 50); do kill -0 "$rpid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$rpid" 2>/dev/null; then
            bad "$launcher: the replacement's srun (pid $rpid) still runs after the job ended"
            kill "$rpid" 2>/dev/null || true
        fi
        wait "$rpid" 2>/dev/null || true
    fi
    if [ $ended = 1 ] && [ "$state" = CANCELLED ]; then
        ok "$launcher: scancel: job $job CANCELLED, all tasks gone after $(secs "$t0" "$(now)") s"
    else
        bad "$launcher: scancel: after 30 s the job is ${state:-unknown}, $alive task process(es) alive"
        cancel "$job"
    fi
    job=
    if [ $fail != "$failed_before" ]; then
        joblog 40
        if [ -f "$tmp/replacement.out" ]; then
            echo "---- replacement worker's output (tail)"
            tail -10 "$tmp/replacement.out"
        fi
    fi
    return 0
}

# join_fault: (in round, join launcher) SIGKILL to one dsr1-worker task of the job; the
# survivors serve; a replacement joins the running job with srun --overlap; all serve again
join_fault() {
    local t0 t1 npids ipid irc n
    vpid=$(awk '$2 == "dsr1-worker" {print $1}' "$tmp/pids" | sed -n 2p)
    if [ -z "$vpid" ]; then
        bad "join: no second dsr1-worker process"
        return 0
    fi
    # a seeded request in flight at the kill (its tokens are compared with the same
    # request's once the replacement serves)
    generate join-inflight 40 --ids 0,19923,14,9 --temperature 1 --seed 99 &
    ipid=$!
    sleep 0.5
    t0=$(now)
    kill -KILL "$vpid"
    echo "join: killed the second dsr1-worker task (pid $vpid), a 40-token request in flight"
    if wait_live 3 20; then
        ok "join: /health shows 3 of 4 workers live $(secs "$t0" "$(now)") s after the kill"
    else
        bad "join: /health after the kill: $(health_live) workers live (wanted 3)"
    fi
    state=$(squeue -h -j "$job" -o %T 2>/dev/null || true)
    [ "$state" = RUNNING ] && ok "join: the job still runs" || bad "join: job state ${state:-gone}"
    code=$(timeout 20 curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http_port/health" || true)
    [ "$code" = 200 ] && ok "join: HTTP /health: 200 (degraded, every expert has a live copy)" ||
        bad "join: HTTP /health degraded: ${code:-no answer}"
    irc=0
    wait "$ipid" || irc=$?
    n=$(ntokens "$tmp/join-inflight.json")
    [ $irc = 0 ] && [ "$n" = 40 ] && ok "join: the request in flight at the kill: 40 tokens" ||
        bad "join: the request in flight at the kill: exit $irc, $n tokens: $(head -c 300 "$tmp/join-inflight.err")"
    requests join-lost
    same_seeded join join-lost
    echo "join: the coordinator's log: $(grep -a ' WARN ' "$tmp/job.out" | tail -1 | cut -c1-200)"

    # a replacement worker, a second step of the running job (--overlap: the first step
    # holds the job's CPUs)
    t1=$(now)
    timeout 120 srun --jobid="$job" --overlap -n1 --mpi=none "$build/tools/dsr1-worker" \
        --model "$model" --join "127.0.0.1:$join_port" --threads 1 >"$tmp/replacement.out" 2>&1 &
    rpid=$!
    if wait_live 4 30; then
        ok "join: a replacement joined: /health shows 4 of 4 workers live $(secs "$t1" "$(now)") s after its srun"
    else
        bad "join: /health after the replacement: $(health_live) workers live (wanted 4)"
    fi
    npids=$(scontrol listpids "$job" 2>/dev/null | awk '$3 == 1 {print $1}' | while read -r p; do
        [ "$(cat /proc/"$p"/comm 2>/dev/null)" = dsr1-worker ] && echo "$p $(cat /proc/"$p"/comm)"; done || true)
    if [ -n "$npids" ]; then
        ok "join: the replacement runs as step $job.1 (pid ${npids%% *})"
        echo "$npids" >>"$tmp/pids"
    else
        bad "join: no dsr1-worker in step $job.1: $(scontrol listpids "$job" 2>&1 | tr '\n' ' ')"
    fi
    requests join-back
    same_seeded join join-back
    generate join-inflight-again 40 --ids 0,19923,14,9 --temperature 1 --seed 99 || true
    if [ "$(ntokens "$tmp/join-inflight-again.json")" = 40 ] &&
        cmp -s <(ntokens_ids "$tmp/join-inflight.json") <(ntokens_ids "$tmp/join-inflight-again.json"); then
        ok "join: the request in flight at the kill gave the tokens it gives undisturbed"
    else
        bad "join: the request in flight at the kill: $(ntokens_ids "$tmp/join-inflight.json"), undisturbed: $(ntokens_ids "$tmp/join-inflight-again.json")"
    fi
}

# the rounds: srun --multi-prog (PMIx), mpirun inside the allocation, then join (srun
# --mpi=none, workers joining over TCP). The join round always loses a worker and takes a
# replacement; under mpirun that is flagged (DSR1_SLURM_FAULT=1); never under srun with
# PMIx: Slurm's mpi/pmix plugin kills a whole step when one of its PMIx clients dies,
# whatever --kill-on-bad-exit says (deploy/slurm/README.md)
fault=${DSR1_SLURM_FAULT:-0}
for launcher in ${DSR1_SLURM_LAUNCHERS:-srun mpirun join}; do
    f=0
    [ "$launcher" = mpirun ] && f=$fault
    [ "$launcher" = join ] && f=1
    t0_round=$(now)
    round "$launcher" "$f"
    echo "$launcher: round took $(secs "$t0_round" "$(now)") s"
done

echo "times: slurm up $(secs "$t_start" "$t_up") s, total $(secs "$t_start" "$(now)") s"
[ $fail = 0 ] && echo "=== slurm cluster passed" || echo "=== slurm cluster FAILED"
exit $fail
