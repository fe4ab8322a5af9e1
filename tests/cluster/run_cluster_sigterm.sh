#!/usr/bin/env bash
# Clean shutdown of an mpirun job: SIGTERM to the coordinator (MPI rank 0, what systemd
# signals once the coordinator named itself MAINPID, and what an operator should signal)
# must end the whole job with status 0, the workers told by the coordinator's SHUTDOWN:
#   1. idle, after one request; with NOTIFY_SOCKET passed to the ranks (-x), the
#      coordinator's READY=1 names it MAINPID (what systemd signals then) and STOPPING=1
#      follows the signal
#   2. with a long generation streaming (the client gets its final ABORT)
# and the coordinator logs "serve: stopped" (its orderly teardown ran) within 20 s.
# Informational (not asserted; see docs/operations.md): SIGTERM to mpirun itself makes
# Open MPI exit 1 whatever the ranks do.
#
# usage: run_cluster_sigterm.sh BUILD_DIR   (exit 77 without UCX/MPI, mpirun or a tokenizer)
set -uo pipefail
build=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
. "$here/cluster_env.sh"
dsr1=$build/tools/dsr1
coord=$build/tools/dsr1-coordinator
worker=$build/tools/dsr1-worker
if ! cluster_have UCX "$build" || ! cluster_have MPI "$build" || ! command -v mpirun >/dev/null ||
    [ ! -x "$coord" ] || [ ! -x "$worker" ]; then
    echo "skip: needs UCX, MPI, mpirun, dsr1-coordinator and dsr1-worker"
    exit 77
fi
model=$build/tests/serve/model-tiny
if [ ! -f "$model/.complete" ]; then # the checkpoint the serving tests share
    mkdir -p "$(dirname "$model")"
    "$dsr1" mkmodel --preset tiny --out "$model" --force >/dev/null 2>&1 ||
        { echo "skip: cannot make the tiny model (no tokenizer?)"; exit 77; }
    touch "$model/.complete"
fi

tmp=$(mktemp -d)
job=
listener=
cleanup() {
    [ -n "$job" ] && kill -KILL -- "-$job" 2>/dev/null
    [ -n "$listener" ] && kill "$listener" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
fail=0

# start NAME: mpirun (its own session, so that the test can end the whole job) with the
# coordinator and 2 workers; sets job (mpirun's pid = the session), port, cpid
start() {
    local log=$tmp/$1.log
    setsid mpirun --oversubscribe --bind-to none -x UCX_TLS -x UCX_NET_DEVICES ${xenv:-} \
        -np 1 "$coord" --model "$model" --host 127.0.0.1 --port 0 --http-port 0 \
        --state-dir "$tmp/state-$1" --timeout-ms 5000 \
        : -np 2 "$worker" --model "$model" >"$log" 2>&1 &
    job=$!
    port=
    for _ in $(seq 300); do
        port=$(sed -n 's/^serving on 127.0.0.1:\([0-9]*\)$/\1/p' "$log")
        [ -n "$port" ] && break
        kill -0 "$job" 2>/dev/null || break
        sleep 0.1
    done
    cpid=$(pgrep -s "$job" -f "^$coord " | head -1)
    if [ -z "$port" ] || [ -z "$cpid" ]; then
        echo "FAIL $1: the job did not start"; tail -20 "$log"; return 1
    fi
}

# stop NAME PID: SIGTERM to PID, then wait up to 20 s for mpirun; sets rc (124: hung)
stop() {
    kill -TERM "$2"
    rc=124
    for _ in $(seq 200); do
        if ! kill -0 "$job" 2>/dev/null; then wait "$job"; rc=$?; break; fi
        sleep 0.1
    done
    [ $rc = 124 ] && kill -KILL -- "-$job" 2>/dev/null && wait "$job" 2>/dev/null
    job=
}

# expect NAME: mpirun exited 0 and the coordinator finished its teardown
expect_clean() {
    local log=$tmp/$1.log
    if [ "$rc" = 0 ] && grep -q "serve: stopped" "$log"; then
        echo "ok   $1: mpirun exit 0, coordinator stopped cleanly"
    else
        echo "FAIL $1: mpirun exit $rc (want 0), 'serve: stopped' $(grep -c 'serve: stopped' "$log")x"
        tail -25 "$log"
        fail=1
    fi
}

# a stand-in for systemd's notify socket: every datagram, one line each, into a file
notify=$tmp/notify.sock
/usr/bin/python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a") as out:
    while True:
        out.write(s.recv(4096).decode().replace("\n", "|") + "\n")
        out.flush()
' "$notify" "$tmp/notify.txt" &
listener=$!
for _ in $(seq 50); do [ -S "$notify" ] && break; sleep 0.1; done

# 1. idle, after one request
if NOTIFY_SOCKET=$notify xenv="-x NOTIFY_SOCKET" start idle; then
    "$dsr1" client generate --server "127.0.0.1:$port" --text Hello --max-tokens 4 \
        --timeout-s 60 >/dev/null 2>"$tmp/gen1.err" ||
        { echo "FAIL idle: generate"; cat "$tmp/gen1.err"; fail=1; }
    if grep -q "^READY=1|MAINPID=$cpid$" "$tmp/notify.txt"; then
        echo "ok   idle: READY=1 with MAINPID=$cpid (the coordinator)"
    else
        echo "FAIL idle: no READY=1|MAINPID=$cpid from the coordinator"; cat "$tmp/notify.txt"
        fail=1
    fi
    stop idle "$cpid"
    expect_clean idle
    if grep -q "^STOPPING=1" "$tmp/notify.txt"; then
        echo "ok   idle: STOPPING=1"
    else
        echo "FAIL idle: no STOPPING=1"; cat "$tmp/notify.txt"; fail=1
    fi
else
    fail=1
fi

# 2. a generation streaming when the signal comes: it ends with ABORT, the job with 0
if start busy; then
    "$dsr1" client generate --server "127.0.0.1:$port" --text Hello --max-tokens 60000 \
        --ignore-eos --json --timeout-s 120 >"$tmp/gen2.json" 2>"$tmp/gen2.err" &
    gen=$!
    for _ in $(seq 100); do # until it runs
        grep -q "running" < <("$dsr1" client info --server "127.0.0.1:$port" 2>/dev/null |
            tr -d ' ' | grep '"running":[1-9]') && break
        sleep 0.1
    done
    stop busy "$cpid"
    expect_clean busy
    wait $gen
    if grep -q ABORT "$tmp/gen2.json" "$tmp/gen2.err"; then
        echo "ok   busy: the streaming request ended with ABORT"
    else
        echo "FAIL busy: the streaming request did not end with ABORT"
        cat "$tmp/gen2.json" "$tmp/gen2.err" | tail -5
        fail=1
    fi
else
    fail=1
fi

# informational: SIGTERM to mpirun (Open MPI forwards it to every rank and exits 1)
if start mpirun; then
    stop mpirun "$job"
    echo "info mpirun signalled: exit $rc, coordinator 'serve: stopped' $(grep -c 'serve: stopped' "$tmp/mpirun.log")x"
fi

[ -n "${SIGTERM_DEBUG:-}" ] && tail -15 "$tmp/mpirun.log"
[ $fail = 0 ] && echo "sigterm: all passed"
exit $fail
