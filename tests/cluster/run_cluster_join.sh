#!/usr/bin/env bash
# Workers joining a running grid (issue 15): capacity lost and brought back, served over HTTP.
#   1. embedded UCX grid, 4 workers, 2 copies of every expert, --join-listen: worker 3 dies
#      (the DSR1_TEST_KILL_WORKER hook); requests go on (3 of 4 lanes); a `dsr1-worker
#      --join` process takes its place: 4 of 4 again. A seeded request gives the same text
#      before the loss, degraded, and after the join.
#   2. 2 workers, 1 copy: worker 1 dies, some experts have no copy left: /health turns 503
#      naming them, requests are refused at once; a replacement joins: 200 again, the same
#      seeded text. An OpenAI batch running when the worker dies and one created while the
#      grid is down lose no item: both complete after the join, none failed.
#   3. no launcher (--transport join): 2 worker processes join, serve; one is SIGKILLed
#      (2 copies: 1 of 2 lanes serve); a worker in the other precision mode (DSR1_KERNELS)
#      is refused; a replacement joins: 2 of 2, the same seeded text.
# Every server binds to 127.0.0.1; every run is bounded by `timeout`.
#
# usage: run_cluster_join.sh BUILD_DIR [MODEL_DIR]   (MODEL_DIR default: models/tiny-a)
# Exit 77 (skip) when the build has no UCX or no dsr1-worker.
set -euo pipefail
build=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
model=$(realpath -m "${2:-${DSR1_GOLDEN_MODELS:-$root/models}/tiny-a}")
. "$here/cluster_env.sh"
dsr1=$build/tools/dsr1
worker=$build/tools/dsr1-worker
if ! cluster_have UCX "$build" || [ ! -x "$worker" ]; then
    echo "skip: built without UCX or dsr1-worker"
    exit 77
fi
command -v curl >/dev/null || { echo "skip: no curl"; exit 77; }
cluster_tiny_model "$model" "$root"
py=/usr/bin/python3
tmp=$(mktemp -d)
pids=()
cleanup() { # pids are timeout(1)'s: its child first, which a SIGKILLed timeout leaves behind
    for p in "${pids[@]}"; do
        pkill -9 -P "$p" 2>/dev/null || true
        kill -9 "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
fail=0
free_port() { $py -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
now() { date +%s.%N; }

# complete PORT SEED: a seeded completion's text (or ERROR: and the message)
complete() {
    curl -s -m 60 "http://127.0.0.1:$1/v1/completions" -H 'content-type: application/json' \
        -d "{\"model\":\"tiny-a\",\"prompt\":\"the grid keeps serving\",\"max_tokens\":16,\"temperature\":1,\"seed\":$2}" |
        $py -c "import json,sys; d=json.load(sys.stdin); print(d['choices'][0]['text'] if 'choices' in d else 'ERROR: ' + d.get('error', {}).get('message', str(d)))"
}
# health PORT: "CODE live lanes_live lost"
health() {
    curl -s -m 10 -o "$tmp/h.json" -w '%{http_code}' "http://127.0.0.1:$1/health" >"$tmp/h.code" || true
    $py -c "
import json,sys
code=open(sys.argv[1]).read().strip()
try: g=json.load(open(sys.argv[2])).get('grid', {})
except Exception: g={}
print(code, g.get('workers_live'), g.get('lanes_live'), repr(g.get('lost', '')))" "$tmp/h.code" "$tmp/h.json"
}
# wait_health PORT WANT SECS: until health's "code live" is WANT
wait_health() {
    local t0 end
    t0=$(now)
    end=$(($(date +%s) + $3))
    while [ "$(date +%s)" -le $end ]; do
        if [ "$(health "$1" | cut -d' ' -f1-2)" = "$2" ]; then
            $py -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$t0" "$(now)"
            return 0
        fi
        sleep 0.2
    done
    return 1
}
# serve LOG HTTP ARGS...: a server in the background, waits for /health
serve() {
    local log=$1 http=$2
    shift 2
    timeout -k 5 200 "$dsr1" serve --model "$model" --port 0 --http-port "$http" \
        --state-dir "${STATE_DIR:-none}" \
        --timeout-ms 3000 --threads 1 "$@" >/dev/null 2>"$log" &
    pids+=($!)
}
join_worker() { # LOG JOINPORT [ARGS]: a dsr1-worker joining, in the background
    local log=$1 port=$2
    shift 2
    timeout -k 5 200 "$worker" --join "127.0.0.1:$port" --model "$model" --threads 1 "$@" \
        >/dev/null 2>"$log" &
    pids+=($!)
}
# batch PORT create N SEED: an OpenAI batch of N seeded completions (48 tokens), prints its id
# batch PORT state ID: "status completed failed total"
# batch PORT wait ID SECS: waits until it is final, then as state
batch() {
    $py - "$@" <<'PY'
import json, sys, time, urllib.request
port, op = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}"
def call(path, data=None, ctype="application/json"):
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())
def state(bid):
    b = call(f"/v1/batches/{bid}")
    c = b["request_counts"]
    return f"{b['status']} {c['completed']} {c['failed']} {c['total']}"
if op == "create":
    n, seed = int(sys.argv[3]), int(sys.argv[4])
    lines = "".join(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
                                "body": {"model": "tiny-a", "prompt": f"batch item {i}",
                                         "max_tokens": 48, "ignore_eos": True,
                                         "temperature": 1, "seed": seed + i}}) + "\n"
                    for i in range(n))
    bnd = "dsr1-join-batch"
    body = (f"--{bnd}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{bnd}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b.jsonl\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n{lines}\r\n--{bnd}--\r\n").encode()
    f = call("/v1/files", body, f"multipart/form-data; boundary={bnd}")
    b = call("/v1/batches", json.dumps({"input_file_id": f["id"], "endpoint": "/v1/completions",
                                        "completion_window": "24h"}).encode())
    print(b["id"])
elif op == "state":
    print(state(sys.argv[3]))
elif op == "wait":
    end = time.time() + float(sys.argv[4])
    while True:
        s = state(sys.argv[3])
        if s.split()[0] in ("completed", "failed", "expired", "cancelled") or time.time() > end:
            print(s)
            break
        time.sleep(0.2)
PY
}
check() { # NAME CONDITION-RESULT(0/1) DETAIL
    if [ "$2" = 0 ]; then echo "ok: $1${3:+: $3}"; else echo "FAIL: $1${3:+: $3}"; fail=1; fi
}

# ---- 1. R = 2: degraded, then back to full capacity ------------------------------------------
http=$(free_port)
jp=$(free_port)
DSR1_TEST_KILL_WORKER=3:25 serve "$tmp/s1.log" "$http" --workers 4 --transport ucx \
    --expert-replicas 2 --join-listen "127.0.0.1:$jp"
wait_health "$http" "200 4" 60 >/dev/null || { echo "FAIL: server 1 did not come up"; tail "$tmp/s1.log"; exit 1; }
ref=$(complete "$http" 7)
# heartbeats (every 750 ms) and requests reach the hook's step 25
for i in 1 2 3 4; do out=$(complete "$http" 7); [ "$out" = "$ref" ] || break; done
t=$(wait_health "$http" "200 3" 30) && r=0 || r=1
check "R=2: worker 3 lost, 3 of 4 live, still 200" $r "after ${t:-?} s: $(health "$http")"
out=$(complete "$http" 7)
check "R=2: degraded: the same seeded text" "$([ "$out" = "$ref" ] && echo 0 || echo 1)" "$out"
join_worker "$tmp/w1.log" "$jp"
t=$(wait_health "$http" "200 4" 60) && r=0 || r=1
check "R=2: a replacement joined: 4 of 4 live" $r "after ${t:-?} s: $(health "$http")"
same=0
for i in 1 2 3 4 5 6; do out=$(complete "$http" 7); [ "$out" = "$ref" ] || same=1; done
check "R=2: after the join: the same seeded text (6 requests)" $same
grep -q "grid: worker 3 (stage 0, EP 3) joined" "$tmp/s1.log"
check "R=2: the log says worker 3 joined" $?

# ---- 2. R = 1: not serving until the lost experts come back ----------------------------------
http=$(free_port)
jp=$(free_port)
mkdir "$tmp/state2"
STATE_DIR=$tmp/state2 DSR1_TEST_KILL_WORKER=1:25 serve "$tmp/s2.log" "$http" --workers 2 \
    --transport ucx --join-listen "127.0.0.1:$jp"
wait_health "$http" "200 2" 60 >/dev/null || { echo "FAIL: server 2 did not come up"; tail "$tmp/s2.log"; exit 1; }
ref=$(complete "$http" 11)
# 4 items of 48 tokens: running when the hook kills worker 1 (step 25; ref took ~17)
bid_run=$(batch "$http" create 4 100)
for i in 1 2 3 4; do complete "$http" 11 >/dev/null; done
t=$(wait_health "$http" "503 1" 30) && r=0 || r=1
check "R=1: worker 1 lost: /health 503" $r "after ${t:-?} s: $(health "$http")"
grep -q "has no live copy of .* routed expert" "$tmp/s2.log"
check "R=1: the log names the missing experts" $?
t0=$(now)
out=$(complete "$http" 11)
dt=$($py -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$t0" "$(now)")
case "$out" in ERROR:*) r=0 ;; *) r=1 ;; esac
check "R=1: a request is refused at once" $r "in $dt s: $out"
bid_down=$(batch "$http" create 2 200)
sleep 2.5 # refused submissions wait (about one try a second), none fails
st_run=$(batch "$http" state "$bid_run")
st_down=$(batch "$http" state "$bid_down")
case "$st_run/$st_down" in "in_progress "*" 0 4/in_progress 0 0 2") r=0 ;; *) r=1 ;; esac
check "R=1: batches wait while the grid is down, no item failed" $r "$st_run / $st_down"
grep -q "batch $bid_run waits: the worker grid stopped serving while its items ran" "$tmp/s2.log"
check "R=1: the items running at the loss went back to pending" $?
# one warning per batch and outage, not per item (4 interrupted, later ones refused); the
# batch behind it in run order waits for its retry (no warning of its own needed)
n_warn=$(grep -c "batch $bid_run waits" "$tmp/s2.log" || true)
n_warn2=$(grep -c "batch $bid_down waits" "$tmp/s2.log" || true)
check "R=1: one warning per waiting batch" \
    "$([ "$n_warn" = 1 ] && [ "$n_warn2" -le 1 ] && echo 0 || echo 1)" "$n_warn, $n_warn2"
join_worker "$tmp/w2.log" "$jp" --worker-index 1
t=$(wait_health "$http" "200 2" 60) && r=0 || r=1
check "R=1: a replacement joined: 200, 2 of 2" $r "after ${t:-?} s: $(health "$http")"
out=$(complete "$http" 11)
check "R=1: after the join: the same seeded text" "$([ "$out" = "$ref" ] && echo 0 || echo 1)" "$out"
st_run=$(batch "$http" wait "$bid_run" 60)
check "R=1: the batch running at the loss completed after the join" \
    "$([ "$st_run" = "completed 4 0 4" ] && echo 0 || echo 1)" "$st_run"
st_down=$(batch "$http" wait "$bid_down" 60)
check "R=1: the batch created while down completed after the join" \
    "$([ "$st_down" = "completed 2 0 2" ] && echo 0 || echo 1)" "$st_down"

# ---- 3. no launcher: workers join, one is killed, a replacement joins ------------------------
http=$(free_port)
jp=$(free_port)
serve "$tmp/s3.log" "$http" --workers 2 --transport join --expert-replicas 2 \
    --join-listen "127.0.0.1:$jp"
join_worker "$tmp/j0.log" "$jp"
victim=$!
join_worker "$tmp/j1.log" "$jp"
wait_health "$http" "200 2" 60 >/dev/null || { echo "FAIL: server 3 did not come up"; tail "$tmp/s3.log"; exit 1; }
ref=$(complete "$http" 13)
kill -9 "$(pgrep -P "$victim" -x dsr1-worker || echo "$victim")" 2>/dev/null || true
t=$(wait_health "$http" "200 1" 30) && r=0 || r=1
check "join: a worker SIGKILLed: 1 of 2 live, still 200" $r "after ${t:-?} s: $(health "$http")"
out=$(complete "$http" 13)
check "join: degraded: the same seeded text" "$([ "$out" = "$ref" ] && echo 0 || echo 1)" "$out"
# a worker whose DSR1_KERNELS picks the other precision mode is refused (its table's mode
# counts, not its arguments), and takes no place from the replacement
DSR1_KERNELS=bf16-tiles timeout -k 5 60 "$worker" --join "127.0.0.1:$jp" --model "$model" \
    --threads 1 >/dev/null 2>"$tmp/jx.log" && r=1 || r=0
grep -q 'precision mode' "$tmp/jx.log" || r=1
check "join: a worker in the other precision mode (DSR1_KERNELS) is refused" $r \
    "$(grep -a ERROR "$tmp/jx.log" | tail -1)"
join_worker "$tmp/j2.log" "$jp"
t=$(wait_health "$http" "200 2" 60) && r=0 || r=1
check "join: a replacement joined: 2 of 2" $r "after ${t:-?} s: $(health "$http")"
out=$(complete "$http" 13)
check "join: the same seeded text" "$([ "$out" = "$ref" ] && echo 0 || echo 1)" "$out"

if [ $fail != 0 ]; then
    for f in "$tmp"/s*.log; do echo "== $f"; grep -av DEBUG "$f" | tail -15; done
fi
exit $fail
