#!/usr/bin/env bash
# Degrade, don't die (issue 15): the fault matrix of a grid with two copies of every routed
# expert (--expert-replicas 2, 4 workers). A lost worker costs its lane, not a request:
#   a. embedded UCX grid, `dsr1 run` teacher-forced, pp 1 and pp 2, DSR1_TEST_KILL_WORKER
#      (a worker "crashes" on its N-th control message: 1 = the REGROUP of epoch 1, 3 = the
#      prefill step, 40 = mid-decode): exit 0 and --dump-logits byte-identical to an
#      undisturbed run; two workers of one lane (pp 2): the same; the two workers that hold
#      both copies of experts 16-31 and 48-63 (pp 1: workers 1 and 3, see
#      dsr1_placement_replicated) or both ranks of stage 0 (pp 2): non-zero within 10 s
#      with a message naming the missing experts / stage
#   b. mpirun (--mca orte_enable_recovery 1 --mca orte_abort_on_non_zero_status 0),
#      `dsr1 run` + 4 dsr1-worker ranks: SIGKILL a worker mid-decode, SIGSTOP one (found by
#      the timeouts, --timeout-ms 3000), SIGKILL one during prefill: the run completes
#      (its "run: prefill ... decode" line, no fatal error) and the logits are identical
#   c. a served grid (`dsr1 serve --transport ucx` with the hook, and dsr1-coordinator
#      under mpirun with a SIGKILL): 6 seeded streaming /v1/completions (temperature 1) and
#      an OpenAI batch of 8 seeded items in flight; 0 failed requests, every text equal to
#      the undisturbed server's, the batch completes, /health 200 throughout and 3 of 4
#      workers live after
# The victims are never in lane 0 for `dsr1 run` (its one sequence lives on attention rank
# 0, and dsr1 run does not recompute elsewhere: the scheduler of a served grid does).
# Each case prints the time to detect (crash/kill to the "lost" log line) and to resume
# (to the "epoch N" line; served: also to the next streamed token). Every run is bounded by
# `timeout`; loopback transports only. About 2 minutes on 2 cores.
#
# usage: run_cluster_survive.sh BUILD_DIR [MODEL_DIR]   (MODEL_DIR default: models/tiny-a)
#        DSR1_SURVIVE_PARTS=abc (default): the parts to run
# Exit 77 (skip) without UCX; the mpirun parts are skipped without MPI.
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
py=/usr/bin/python3

tmp=$(mktemp -d)
victims=() # stopped or running worker processes of ours, killed at exit
cleanup() {
    for v in "${victims[@]}"; do kill -CONT "$v" 2>/dev/null || true; kill -KILL "$v" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
fail=0
known=0

# ms LOG-TIME: "HH:MM:SS.mmm" (the logs' local clock) as seconds since midnight
secs_of() { $py -c "import sys; h, m, s = sys.argv[1].split(':'); print(int(h) * 3600 + int(m) * 60 + float(s))" "$1"; }
now_tod() { date +%H:%M:%S.%N | cut -c1-12; }
# first_at LOG REGEX: the time of day of the first line matching (empty if none)
first_at() { grep -aE "$2" "$1" | head -1 | awk '{print $1}' || true; }
# dt FROM TO: TO - FROM in seconds (both HH:MM:SS.mmm), "-" if either is missing
dt() {
    [ -n "$1" ] && [ -n "$2" ] || { echo -; return; }
    $py -c "import sys
def s(x):
    h, m, v = x.split(':'); return int(h) * 3600 + int(m) * 60 + float(v)
print(f'{(s(sys.argv[2]) - s(sys.argv[1])) % 86400:.2f}')" "$1" "$2"
}
# times LOG FROM: "detect X s, resume Y s" from FROM (time of day of the fault)
fault_times() {
    local lost epoch
    lost=$(first_at "$1" "grid: worker [0-9]+ .*(lost|did not join)")
    epoch=$(first_at "$1" "grid: epoch [0-9]+: ")
    echo "detect $(dt "$2" "$lost") s, resume $(dt "$2" "$epoch") s"
}
fatal() { grep -a '^dsr1 run:' "$1" | grep -v 'retrying$' | head -1 || true; }

# ---------------------------------------------------------------------------------------
# a. embedded UCX grid, dsr1 run
force=$($py -c "print(','.join(str((i * 7919) % 129000 + 2) for i in range(60)))")
run_args=(run --model "$model" --prompt-ids 0,19923,14,5 --force-ids "$force" --timeout-ms 3000
    --workers 4 --transport ucx --expert-replicas 2)
for pp in 1 2; do
    timeout -k 5 60 "$dsr1" "${run_args[@]}" --pp $pp --dump-logits "$tmp/ref$pp.bin" \
        >/dev/null 2>"$tmp/ref$pp.log" || { echo "FAIL: the undisturbed run (pp $pp) failed"; tail -5 "$tmp/ref$pp.log"; exit 1; }
done
# survive NAME PP HOOK: exit 0, identical logits, a "lost" line
survive() {
    local name=$1 pp=$2 hook=$3 rc=0 log=$tmp/s.log
    rm -f "$tmp/s.bin"
    DSR1_TEST_KILL_WORKER=$hook timeout -k 5 60 "$dsr1" "${run_args[@]}" --pp "$pp" \
        --dump-logits "$tmp/s.bin" >/dev/null 2>"$log" || rc=$?
    local t
    t=$(fault_times "$log" "$(first_at "$log" "simulates a crash")")
    if [ $rc != 0 ]; then
        echo "FAIL: $name: exit $rc ($t): $(fatal "$log")"; fail=1
    elif ! cmp -s "$tmp/s.bin" "$tmp/ref$pp.bin"; then
        echo "FAIL: $name: logits differ from the undisturbed run ($t)"; fail=1
    elif ! grep -qaE "grid: worker [0-9]+ .*(lost|did not join)" "$log"; then
        echo "FAIL: $name: no worker was lost (the hook did not fire?)"; fail=1
    else
        echo "ok: $name: $t, 0 failed, logits identical"
        return 0
    fi
    grep -a -v '^\[' "$log" | grep -av "INFO  \(loading\|weights\|worker\)" | tail -12
}
# fast_fail NAME PP HOOK PATTERN: non-zero within 10 s of the crash, message matches
fast_fail() {
    local name=$1 pp=$2 hook=$3 pat=$4 rc=0 log=$tmp/f.log msg t
    DSR1_TEST_KILL_WORKER=$hook timeout -k 5 60 "$dsr1" "${run_args[@]}" --pp "$pp" \
        >/dev/null 2>"$log" || rc=$?
    local end
    end=$(now_tod)
    msg=$(fatal "$log")
    t=$(dt "$(first_at "$log" "simulates a crash")" "$end")
    if [ $rc = 0 ] || [ $rc = 124 ] || [ $rc = 137 ]; then
        echo "FAIL: $name: exit $rc"; fail=1
    elif [ "$t" = - ] || $py -c "import sys; sys.exit(float(sys.argv[1]) < 10)" "$t"; then
        echo "FAIL: $name: took $t s (limit 10 s)"; fail=1
    elif ! grep -qE "$pat" <<<"$msg"; then
        echo "FAIL: $name: the error does not match /$pat/: ${msg:-<none>}"; fail=1
    else
        echo "ok: $name: exit $rc after $t s: $(cut -c1-160 <<<"$msg")"
        return 0
    fi
    grep -a -v '^\[' "$log" | grep -av "INFO  \(loading\|weights\|worker\)" | tail -12
}

parts=${DSR1_SURVIVE_PARTS:-abc}
if [[ $parts == *a* ]]; then
survive "embedded, pp 1, worker 1 crashes on its 1st message (before epoch 1)" 1 1:1
for pp in 1 2; do
    survive "embedded, pp $pp, worker 1 crashes in prefill (message 3)" $pp 1:3
    survive "embedded, pp $pp, worker 3 crashes mid-decode (message 40)" $pp 3:40
    # halfway through a MoE layer's dispatch or combine (sent to half its EP peers)
    survive "embedded, pp $pp, worker 3 crashes inside an EP all-to-all (its 30th)" $pp 3:a30
done
survive "embedded, pp 2, workers 1 and 3 (lane 1, both stages) crash mid-decode" 2 1:40,3:40
fast_fail "embedded, pp 1, workers 1 and 3 (both copies of experts 16-31, 48-63) crash" 1 \
    1:40,3:40 "stage 0 has no live copy of 32 routed expert\(s\): 16, 17, .*48, 49"
fast_fail "embedded, pp 2, workers 0 and 1 (both copies of every stage-0 expert) crash" 2 \
    0:40,1:40 "no live copy|stages without any live worker: 0\)"
# workers 0 and 2 (lane 0) crash on the same step; the second loss is noticed during the
# regroup round, which must take only it for lost (not every worker yet to answer: healthy
# workers 1 and 3 keep lane 1). dsr1 run fails here (lane 0 holds its sequence), but only
# workers 0 and 2 may be named lost.
rc=0
DSR1_TEST_KILL_WORKER=0:40,2:40 timeout -k 5 60 "$dsr1" "${run_args[@]}" --pp 2 >/dev/null \
    2>"$tmp/k.log" || rc=$?
if [ $rc != 0 ] && ! grep -qaE "worker (1|3) \(stage [01], EP 1\) (lost|did not join)" "$tmp/k.log"; then
    echo "ok: embedded, pp 2, workers 0 and 2 crash: exit $rc, only they are lost"
else
    echo "FAIL: embedded, pp 2, workers 0 and 2 crash on one step: exit $rc, healthy workers blamed too:"
    grep -aE "grid: worker (1|3) .*(lost|did not join)" "$tmp/k.log" | head -2
    fail=1
fi
fi # part a

# ---------------------------------------------------------------------------------------
# c. served grid (the hook), then b. and the mpirun served case
cat >"$tmp/served.py" <<'PYEOF'
"""Served grid under a fault (run_cluster_survive.sh part c; bench/fault_failover.sh).

A reference server, then a server that loses a worker while the same load runs: N seeded
streaming /v1/completions (temperature 1) and an OpenAI batch of M seeded items. Checks:
0 failed requests, every stream's text and every batch item's text equal to the
reference's, the batch completes, /health 200 all along and 3 of 4 workers live after.

usage: served.py BUILD MODEL MODE [--streams N] [--items M] [--tokens T] [--replicas R]
  MODE: ref (the reference only, prints its throughput), hook:W:N (embedded UCX grid,
  worker W dies on its N-th control message), mpikill (mpirun, dsr1-coordinator + 4
  dsr1-worker ranks, SIGKILL the second worker once the streams run)
Prints one line "RESULT {json}"; exit 1 on a failed check.
"""
import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def http(port, method, path, body=None, ctype="application/json", timeout=60):
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": ctype} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        return 0, str(e).encode()


def stream(port, seed, tokens, out):
    """One streaming completion; out: {text, finish, ok, times (arrival of each chunk)}."""
    body = {"prompt": f"Story number {seed}:", "max_tokens": tokens, "temperature": 1,
            "seed": seed, "stream": True, "ignore_eos": True}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions",
                                 data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    out.update(text="", finish=None, ok=False, times=[], error=None)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            for raw in r:
                line = raw.decode(errors="replace").strip()
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    out["ok"] = out["finish"] is not None
                    break
                ev = json.loads(line[6:])
                if "error" in ev:
                    out["error"] = ev["error"]
                    break
                for ch in ev.get("choices", []):
                    out["text"] += ch.get("text") or ""
                    out["finish"] = ch.get("finish_reason") or out["finish"]
                out["times"].append(time.time())
    except Exception as e:  # noqa: BLE001 (a failed request is what we count)
        out["error"] = repr(e)


def submit_batch(port, items, tokens):
    lines = [json.dumps({"custom_id": f"item-{i}", "method": "POST", "url": "/v1/completions",
                         "body": {"prompt": f"Batch item {i}:", "max_tokens": tokens,
                                  "temperature": 1, "seed": 1000 + i, "ignore_eos": True}})
             for i in range(items)]
    b = "dsr1faultsboundary"
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n"
            f"Content-Type: application/jsonl\r\n\r\n" + "\n".join(lines) + f"\n\r\n--{b}--\r\n")
    code, r = http(port, "POST", "/v1/files", body.encode(),
                   f"multipart/form-data; boundary={b}")
    if code != 200:
        raise RuntimeError(f"upload: {code} {r[:300]}")
    fid = json.loads(r)["id"]
    code, r = http(port, "POST", "/v1/batches", {"input_file_id": fid, "endpoint":
                                                 "/v1/completions", "completion_window": "24h"})
    if code != 200:
        raise RuntimeError(f"batch: {code} {r[:300]}")
    return json.loads(r)["id"]


def batch_result(port, bid, deadline):
    """(status, request_counts, {custom_id: text}) once the batch is final (or at deadline)."""
    while True:
        code, r = http(port, "GET", f"/v1/batches/{bid}")
        st = json.loads(r) if code == 200 else {}
        if st.get("status") in ("completed", "failed", "cancelled", "expired") or \
                time.time() > deadline:
            break
        time.sleep(0.2)
    texts = {}
    if st.get("output_file_id"):
        code, r = http(port, "GET", f"/v1/files/{st['output_file_id']}/content")
        for line in r.decode().splitlines():
            if line.strip():
                o = json.loads(line)
                body = (o.get("response") or {}).get("body") or {}
                ch = body.get("choices") or [{}]
                texts[o["custom_id"]] = ch[0].get("text")
    return st.get("status"), st.get("request_counts"), texts


class Server:
    def __init__(self, cmd, env):
        self.log, self.port, self.http_port = [], None, None
        self.times = []  # arrival time of each log line
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env={**os.environ, **env}, text=True, errors="replace",
                                     start_new_session=True)
        ready = threading.Event()

        def reader():
            for line in self.proc.stdout:
                self.log.append(line)
                self.times.append(time.time())
                m = re.search(r"HTTP API on http://\S+:(\d+)", line)
                if m:
                    self.http_port = int(m.group(1))
                if re.search(r"serving on (\S+):(\d+)", line):
                    ready.set()
            ready.set()

        threading.Thread(target=reader, daemon=True).start()
        if not ready.wait(120) or self.http_port is None:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.log[-30:]))

    def first(self, pattern, after=0.0):
        """Arrival time of the first log line matching pattern (after a time), or None."""
        for t, line in zip(list(self.times), list(self.log)):
            if t >= after and re.search(pattern, line):
                return t
        return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def worker_pids(server):
    """dsr1-worker processes of this server's mpirun: {worker index: pid}."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"dsr1-worker" not in f.read().split(b"\0")[0]:
                    continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            if int(env.get(b"OMPI_COMM_WORLD_SIZE", b"0")) != 5:
                continue
            if os.getsid(int(pid)) != os.getsid(server.proc.pid):
                continue
            out[int(env[b"OMPI_COMM_WORLD_RANK"]) - 1] = int(pid)
        except (OSError, KeyError, ValueError):
            continue
    return out


def rss_mb(server):
    """Resident memory in MB: {worker: MB} of the dsr1-worker ranks (mpirun), else
    {"server": MB} of the process holding the embedded grid."""
    def rss(pid):
        try:
            with open(f"/proc/{pid}/status") as f:
                kb = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
            return round(kb / 1024, 1)
        except (OSError, StopIteration):
            return None
    pids = worker_pids(server)
    if pids:
        return {str(w): rss(p) for w, p in sorted(pids.items())}
    return {"server": rss(server.proc.pid)}


def run_load(server, a, fault=None):
    """The load; fault() is called once the streams have produced a few tokens. Returns
    (streams, batch (status, counts, texts), health codes seen, seconds, tokens)."""
    port = server.http_port
    outs = [{} for _ in range(a.streams)]
    t0 = time.time()
    bid = submit_batch(port, a.items, a.tokens) if a.items else None
    ths = [threading.Thread(target=stream, args=(port, 1 + i, a.tokens, outs[i]))
           for i in range(a.streams)]
    for t in ths:
        t.start()
    health, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            health.append(http(port, "GET", "/health", timeout=10)[0])
            time.sleep(0.1)

    pt = threading.Thread(target=poll)
    pt.start()
    killed = None
    if fault:
        while time.time() - t0 < 60 and min(len(o.get("times", [])) for o in outs) < a.kill_after:
            time.sleep(0.01)
        killed = fault()
    for t in ths:
        t.join(180)
    batch = batch_result(port, bid, time.time() + 120) if bid else (None, None, {})
    secs = time.time() - t0
    stop.set()
    pt.join()
    return outs, batch, health, secs, killed


def main():
    p = argparse.ArgumentParser()
    p.add_argument("build")
    p.add_argument("model")
    p.add_argument("mode")
    p.add_argument("--streams", type=int, default=6)
    p.add_argument("--items", type=int, default=8)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--kill-after", type=int, default=8, help="stream chunks before the kill")
    p.add_argument("--ref", help="reference RESULT json file to compare with")
    p.add_argument("--expect-live", type=int, default=3)
    p.add_argument("--pp", default="1")
    a = p.parse_args()
    tools = os.path.join(a.build, "tools")
    state = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"dsr1-survive-{os.getpid()}")
    with socket.socket() as s_:  # a free port for the HTTP API (0 would turn it off)
        s_.bind(("127.0.0.1", 0))
        hport = s_.getsockname()[1]
    common = ["--model", a.model, "--host", "127.0.0.1", "--port", "0", "--http-port", str(hport),
              "--state-dir", state, "--expert-replicas", str(a.replicas), "--timeout-ms", "3000"]
    env = {"DSR1_NO_PROGRESS_BAR": "1"}
    if a.mode == "mpikill" or a.mode == "mpiref":
        cmd = ["timeout", "-k", "5", "300", "mpirun", "--oversubscribe", "--bind-to", "none",
               "--mca", "orte_enable_recovery", "1", "--mca", "orte_abort_on_non_zero_status",
               "0", "-x", "UCX_TLS", "-x", "UCX_NET_DEVICES", "-np", "1",
               os.path.join(tools, "dsr1-coordinator"), *common, ":", "-np", "4",
               os.path.join(tools, "dsr1-worker"), "--model", a.model]
    else:
        cmd = [os.path.join(tools, "dsr1"), "serve", *common, "--workers", "4", "--pp", a.pp, "--transport",
               "ucx"]
        if a.mode.startswith("hook:"):
            env["DSR1_TEST_KILL_WORKER"] = a.mode[5:]
    os.makedirs(state, exist_ok=True)
    server = Server(cmd, env)
    fails, res = [], {"mode": a.mode}
    try:
        fault = None
        if a.mode == "mpikill":
            def fault():
                pids = worker_pids(server)
                if 1 not in pids:
                    fails.append(f"no worker 1 process to kill: {pids}")
                    return None
                os.kill(pids[1], signal.SIGKILL)
                return time.time()
        elif a.mode.startswith("hook:"):
            def fault():
                return None  # the hook fires by itself
        outs, (bst, bcounts, btexts), health, secs, killed = run_load(server, a, fault)
        res["rss_mb"] = rss_mb(server)
        if a.mode.startswith("hook:"):
            killed = server.first(r"simulates a crash")
        ntok = sum(len(o["times"]) for o in outs)
        failed = [i for i, o in enumerate(outs) if not o["ok"] or o["error"]]
        res.update(streams=len(outs), failed_streams=len(failed), batch_status=bst,
                   batch_counts=bcounts, seconds=round(secs, 2), chunks=ntok,
                   tok_per_s=round(ntok / secs, 2) if secs else 0,
                   health_codes=sorted(set(health)),
                   texts=[o["text"] for o in outs], batch_texts=btexts)
        for i in failed:
            fails.append(f"stream {i}: finish {outs[i]['finish']}, error {outs[i]['error']}")
        if a.items and (bst != "completed" or not bcounts or bcounts.get("failed") or
                        bcounts.get("completed") != a.items):
            fails.append(f"batch: {bst} {bcounts}")
        if any(c != 200 for c in health):
            fails.append(f"/health answered {sorted(set(health))} during the load")
        if killed is not None:
            lost = server.first(r"grid: worker \d .*(lost|did not join)", killed - 0.5)
            epoch = server.first(r"grid: epoch \d+: ", killed - 0.5)
            # the next token of any stream after the kill, and the longest pause of a stream
            after = [t for o in outs for t in o["times"] if t > killed]
            gaps = [b - a_ for o in outs for a_, b in zip(o["times"], o["times"][1:])
                    if b > killed]
            res.update(detect_s=round(lost - killed, 3) if lost else None,
                       resume_s=round(epoch - killed, 3) if epoch else None,
                       next_token_s=round(min(after) - killed, 3) if after else None,
                       longest_stall_s=round(max(gaps), 3) if gaps else None)
            # throughput before / after the loss over all streams' chunk arrivals
            tk = [t for o in outs for t in o["times"]]
            pre = [t for t in tk if t <= killed]
            post = [t for t in tk if epoch and t > epoch]
            if len(pre) > 1:
                res["tok_per_s_before"] = round(len(pre) / (max(pre) - min(tk)), 2)
            if len(post) > 1:
                res["tok_per_s_after"] = round(len(post) / (max(post) - epoch), 2)
            if lost is None or epoch is None:
                fails.append("no 'lost' / 'epoch N' line in the server's log")
            code, body = http(server.http_port, "GET", "/health")
            g = json.loads(body).get("grid", {}) if code == 200 else {}
            res.update(health_after=code, workers_live=g.get("workers_live"), lost=g.get("lost"))
            if code != 200 or g.get("workers_live") != a.expect_live:
                fails.append(f"/health after the loss: {code} {body[:300]}")
        if a.ref:
            with open(a.ref) as f:
                ref = json.load(f)
            diff = [i for i, (x, y) in enumerate(zip(ref["texts"], res["texts"])) if x != y]
            bdiff = sorted(k for k in ref["batch_texts"] if ref["batch_texts"][k] != btexts.get(k))
            res.update(identical=not diff and not bdiff)
            if diff or bdiff:
                fails.append(f"differs from the undisturbed server: streams {diff}, items {bdiff}")
    finally:
        rc = server.stop()
        if fails:
            print("".join(l for l in server.log if not l.startswith("[") and "INFO  loading"
                          not in l)[-6000:])
    res["exit"] = rc
    res["fails"] = fails
    print("RESULT " + json.dumps(res))
    for f_ in fails:
        print("FAIL: " + f_)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
PYEOF
served() { # NAME ARGS...: runs served.py, prints its summary
    local name=$1 rc=0
    shift
    timeout -k 5 200 $py "$tmp/served.py" "$build" "$model" "$@" >"$tmp/sv.out" 2>&1 || rc=$?
    local res
    res=$(sed -n 's/^RESULT //p' "$tmp/sv.out")
    if [ -z "$res" ]; then
        echo "FAIL: $name: no result (exit $rc)"; tail -20 "$tmp/sv.out"; fail=1; return
    fi
    $py -c "
import json, sys
r = json.loads(sys.argv[1])
bits = [f\"{k[:-2].replace('_', ' ')} {r[k]} s\" for k in ('detect_s', 'resume_s', 'next_token_s', 'longest_stall_s') if r.get(k) is not None]
print(('ok' if not r['fails'] else 'FAIL') + ': ' + sys.argv[2] + ': ' + ', '.join(bits + [
    f\"{r['failed_streams']} of {r['streams']} streams failed\",
    f\"batch {r['batch_status']} {r['batch_counts']}\", 'identical' if r.get('identical') else 'reference' if 'identical' not in r else 'NOT identical',
    f\"{r.get('tok_per_s')} tok/s\"]))" "$res" "$name"
    if [ $rc != 0 ]; then fail=1; grep -a "^FAIL" "$tmp/sv.out"; grep -av '^\(RESULT\|FAIL\)' "$tmp/sv.out" | tail -15; fi
    [ "${save:-}" ] && echo "$res" >"$save"
    return 0
}
if [[ $parts == *c* ]]; then
save=$tmp/sref.json served "served (dsr1 serve, undisturbed reference)" ref --tokens 64
served "served (dsr1 serve), worker 3 crashes mid-load (message 30)" hook:3:30 --tokens 64 \
    --ref "$tmp/sref.json"
fi

if ! cluster_have MPI "$build" || [ ! -x "$worker" ] || ! command -v mpirun >/dev/null; then
    echo "SKIP (mpirun parts): the build has no MPI (libopenmpi-dev) or mpirun is missing"
    [ $fail = 0 ] && echo "=== cluster survive passed" || echo "=== cluster survive FAILED"
    exit $fail
fi
[[ $parts == *c* ]] && served "served (dsr1-coordinator under mpirun), SIGKILL worker 1 mid-load" \
    mpikill --tokens 64 --ref "$tmp/sref.json"
[[ $parts == *b* ]] || { [ $fail = 0 ] && echo "=== cluster survive passed" || echo "=== cluster survive FAILED"; exit $fail; }

# ---------------------------------------------------------------------------------------
# b. mpirun, dsr1 run
mforce=$($py -c "print(','.join(str((i * 7919) % 129000 + 2) for i in range(150)))")
mprompt=$($py -c "print(','.join(str((i * 104729) % 129000 + 2) for i in range(64)))")
mpi_run() { # OUT.bin LOG: in the background, sets mp
    timeout -k 5 90 mpirun --oversubscribe --bind-to none --mca orte_enable_recovery 1 \
        --mca orte_abort_on_non_zero_status 0 -np 1 "$dsr1" run --model "$model" \
        --prompt-ids "$mprompt" --force-ids "$mforce" --timeout-ms 3000 --expert-replicas 2 \
        --dump-logits "$1" : -np 4 "$worker" --model "$model" >/dev/null 2>"$2" &
    mp=$!
}
vocab=$($py -c "import json, sys; print(json.load(open(sys.argv[1]))['vocab_size'])" "$model/config.json")
wait_rows() { # FILE N: until the dump holds N logit rows (at most 60 s) or the job ended
    for _ in $(seq 1200); do
        [ "$(stat -c %s "$1" 2>/dev/null || echo 0)" -ge $(($2 * vocab * 4)) ] && return 0
        kill -0 $mp 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}
wait_for() { # LOG REGEX: until a line matches (at most 30 s) or the job ended
    for _ in $(seq 600); do
        grep -qaE "$2" "$1" 2>/dev/null && return 0
        kill -0 $mp 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}
# mpirun exits 0 under these options even when the coordinator fails: success is the
# run's own summary line and no fatal error
completed() { grep -qa "run: prefill .* decode 150 tokens" "$1" && [ -z "$(fatal "$1")" ]; }
mpi_run "$tmp/mref.bin" "$tmp/mref.log"
rc=0
wait $mp || rc=$?
if [ $rc != 0 ] || ! completed "$tmp/mref.log"; then
    echo "FAIL: mpirun, the undisturbed run failed (exit $rc): $(fatal "$tmp/mref.log")"; fail=1
    grep -a -v '^\[' "$tmp/mref.log" | tail -8
fi
# mpi_case NAME SIGNAL WHEN: WHEN prefill (as soon as the grid is connected) or decode
mpi_case() {
    local name=$1 sig=$2 when=$3 log=$tmp/m.log rc=0 vpid mpirun_pid at
    rm -f "$tmp/m.bin"
    mpi_run "$tmp/m.bin" "$log"
    wait_for "$log" "workers connected" || true
    # decode: once the dump holds the 64 prompt rows and 20 decoded ones (of 150)
    [ "$when" = decode ] && { wait_rows "$tmp/m.bin" 84 || true; }
    vpid=
    for _ in $(seq 200); do # rank 2 (worker 1), once mpirun has started it
        mpirun_pid=$(pgrep -P "$mp" -x mpirun | head -1 || true)
        vpid=$(pgrep -P "${mpirun_pid:-0}" -f dsr1-worker | sed -n 2p || true)
        [ -n "$vpid" ] && break
        kill -0 $mp 2>/dev/null || break
        sleep 0.05
    done
    if [ -z "$vpid" ]; then
        echo "FAIL: $name: no worker process (the job $(kill -0 $mp 2>/dev/null && echo runs || echo ended)):"
        grep -av DEBUG "$log" | tail -8
        fail=1; wait $mp || true; return
    fi
    victims+=("$vpid")
    at=$(now_tod)
    kill -"$sig" "$vpid"
    if [ "$sig" = STOP ]; then # mpirun waits for every rank: end the stopped one once the
        wait_for "$log" "run: prefill .* decode|^dsr1 run: .*[^g]$" || true # run is over
        sleep 0.5
        kill -KILL "$vpid" 2>/dev/null || true
    fi
    wait $mp || rc=$?
    kill -CONT "$vpid" 2>/dev/null || true
    kill -KILL "$vpid" 2>/dev/null || true # a stopped worker: never leave it behind
    local t
    t=$(fault_times "$log" "$at")
    if [ $rc != 0 ] || ! completed "$log"; then
        echo "FAIL: $name: exit $rc ($t): $(fatal "$log")"; fail=1
    elif ! cmp -s "$tmp/m.bin" "$tmp/mref.bin"; then
        echo "FAIL: $name: logits differ from the undisturbed run ($t)"; fail=1
    elif ! grep -qaE "grid: worker 1 .*(lost|did not join)" "$log"; then
        echo "FAIL: $name: worker 1 was not found lost"; fail=1
    else
        echo "ok: $name: $t, 0 failed, logits identical"
        return 0
    fi
    grep -a -v '^\[' "$log" | grep -av "INFO  \(rank\|loading\)" | tail -12
}
mpi_case "mpirun, SIGKILL worker 1 mid-decode" KILL decode
mpi_case "mpirun, SIGSTOP worker 1 mid-decode (silent)" STOP decode
mpi_case "mpirun, SIGKILL worker 1 during prefill" KILL prefill

[ $known = 0 ] || echo "(one known failure, not counted: see KNOWN FAILING above)"
[ $fail = 0 ] && echo "=== cluster survive passed" || echo "=== cluster survive FAILED"
exit $fail
