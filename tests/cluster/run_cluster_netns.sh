#!/usr/bin/env bash
# Workers on "different hosts": a coordinator and 4 workers, each in a network namespace of
# its own, joined by veth pairs to a bridge in a "switch" namespace (10.77.0.0/24). UCX
# talks TCP between different addresses as between hosts; `dsr1 serve --transport join`
# forms the grid (R = 2, --timeout-ms 3000) from `dsr1-worker --join` processes. Then:
#   0. baseline: seeded (temperature 1, seed) and greedy requests, and seeded streams
#   a. a bad link on worker 3 (tc netem delay 20ms loss 1%; without sch_netem in the
#      kernel: tbf, a slow link, and nft dropping 1% of its packets): requests complete,
#      outputs identical, the latency cost printed
#   b. partition: worker 1's link down with streams in flight: the coordinator names it
#      lost (detect time), tokens flow again (resume time), no request fails, identical
#   c. the link up, the partitioned worker killed, a replacement joins in its namespace:
#      health shows 4 of 4 workers again, outputs identical
#   d. workers 0 and 2 (which hold both copies of expert 0: placement.c puts copy 1 of
#      expert x at primary + ranks / R) killed: the coordinator says which experts are
#      missing within 10 s and /health answers 503
# Prints detect/resume times, failed requests and identical-or-not for each; exit 1 when
# a check fails. Everything it makes (namespaces, links) goes in a trap, and every server
# binds only to 10.77.0.x (the coordinator's API and join port) or loopback.
#
# usage: run_cluster_netns.sh BUILD_DIR [MODEL_DIR]   (MODEL_DIR default: models/tiny-a)
# Exit 77 (skip) when not root, without `ip netns` (or where it is forbidden), without tc,
# or when the build has no UCX.
set -uo pipefail
build=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
model=$(realpath -m "${2:-${DSR1_GOLDEN_MODELS:-$root/models}/tiny-a}")
dsr1=$build/tools/dsr1
worker=$build/tools/dsr1-worker
skip() { echo "skip: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root (network namespaces)"
command -v ip >/dev/null || skip "no ip (iproute2)"
command -v tc >/dev/null || skip "no tc (iproute2)"
grep -q "#define DSR1_HAVE_UCX 1" "$build/dsr1_build_config.h" 2>/dev/null ||
    skip "built without UCX"
[ -x "$worker" ] || skip "no dsr1-worker in $build"
if [ ! -f "$model/config.json" ]; then
    golden=$root/../shared/golden
    [ -f "$golden/make_tiny.py" ] || skip "no model at $model"
    /usr/bin/python3 "$golden/make_tiny.py" "$golden/configs/tiny-a.json" "$model"
    touch "$model/.complete"
fi

# namespaces of this run (unique names, so that two runs never meet): switch, coordinator,
# workers 0..3; inside each, the link is eth0 (the switch's ports: pc, p0..p3)
tag=dsr1n$$
nss=$tag-s
nsc=$tag-c
nsw() { echo "$tag-w$1"; }
all_ns=("$nss" "$nsc" "$(nsw 0)" "$(nsw 1)" "$(nsw 2)" "$(nsw 3)")
tmp=$(mktemp -d)
cleanup() {
    local ns p
    for ns in "${all_ns[@]}"; do # every process left in our namespaces, by its id
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
    done
    for ns in "${all_ns[@]}"; do ip netns del "$ns" 2>/dev/null; done
    if [ -n "${DSR1_NETNS_KEEP:-}" ]; then echo "kept: $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM
ip netns add "$nss" 2>/dev/null || skip "ip netns add is not allowed here"

export UCX_TLS=tcp,self UCX_NET_DEVICES=eth0 UCX_WARN_UNUSED_ENV_VARS=n DSR1_NO_PROGRESS_BAR=1
PORT_JOIN=7077
PORT_HTTP=8077
C=10.77.0.1
ip -n "$nss" link add name br0 type bridge || skip "cannot make a bridge"
ip -n "$nss" link set br0 up
ip -n "$nss" link set lo up
# plug NS PORT ADDR: a namespace with eth0 (ADDR/24) on the switch's port PORT
plug() {
    ip netns add "$1" &&
        ip -n "$nss" link add name "$2" type veth peer name eth0 netns "$1" &&
        ip -n "$nss" link set "$2" master br0 up &&
        ip -n "$1" addr add "$3/24" dev eth0 && ip -n "$1" link set eth0 up &&
        ip -n "$1" link set lo up
}
plug "$nsc" pc $C || skip "cannot make the coordinator's namespace and link"
for i in 0 1 2 3; do plug "$(nsw $i)" p$i 10.77.0.1$i || skip "cannot make worker $i's link"; done
# reachable: a connection to a closed port of worker 3 is refused (not timed out)
ip netns exec "$nsc" /usr/bin/python3 -c "
import socket
try: socket.create_connection(('10.77.0.13', 9), 3)
except ConnectionRefusedError: pass" 2>/dev/null || skip "the bridge does not pass traffic"

fail=0
bad() { echo "FAIL: $*"; fail=1; }
now() { date +%s.%N; }
# the coordinator's log lines carry HH:MM:SS.mmm (local time): seconds since midnight
sod() { /usr/bin/python3 -c "
import sys; h, m, s = sys.argv[1].split(':'); print(int(h) * 3600 + int(m) * 60 + float(s))" "$1"; }
now_sod() { sod "$(date +%H:%M:%S.%N | cut -c1-12)"; }
# since HH:MM:SS.mmm SOD: seconds from SOD (seconds since midnight) to the log time
since() { /usr/bin/python3 -c "
import sys; h, m, s = sys.argv[1].split(':')
print(f'{(int(h) * 3600 + int(m) * 60 + float(s) - float(sys.argv[2]) + 43200) % 86400 - 43200:.2f}')" "$1" "$2"; }
sub() { /usr/bin/python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.2f}')" "$1" "$2"; }
clog=$tmp/coordinator.log

# the coordinator, its API and join port on 10.77.0.1 only
ip netns exec "$nsc" timeout -k 5 300 "$dsr1" serve --model "$model" --workers 4 \
    --transport join --join-listen $C:$PORT_JOIN --host $C --port 0 --http-port $PORT_HTTP \
    --expert-replicas 2 --timeout-ms 3000 --state-dir none >"$tmp/coordinator.out" 2>"$clog" &
cpid=$!
disown $cpid # killed at the end: no job-control notice
# start_worker I [tag]: dsr1-worker in namespace I, asking for place I, with a host name
# of its own (a UTS namespace, where unshare may make one)
uts=(unshare --uts)
unshare --uts true 2>/dev/null || uts=()
start_worker() {
    ip netns exec "$(nsw "$1")" "${uts[@]}" /bin/sh -c \
        '[ -z "$1" ] || hostname "$0"; shift; exec timeout -k 5 300 "$@"' "dsr1-host$1" \
        "${uts[*]}" \
        "$worker" --join $C:$PORT_JOIN --model "$model" --worker-index "$1" --threads 1 \
        >"$tmp/worker$1${2:-}.log" 2>&1 &
    disown $!
}
for _ in $(seq 100); do # the join port listening (at most 10 s)
    grep -q "waiting for workers to join" "$clog" && break
    sleep 0.1
done
for i in 0 1 2 3; do start_worker $i; done
# health FIELD: a field of /health's grid (empty when it does not answer)
health() {
    ip netns exec "$nsc" curl -s -m 2 "http://$C:$PORT_HTTP/health" 2>/dev/null |
        /usr/bin/python3 -c "import sys, json; print(json.load(sys.stdin)['grid']['$1'])" 2>/dev/null
}
health_code() {
    ip netns exec "$nsc" curl -s -m 2 -o /dev/null -w '%{http_code}' "http://$C:$PORT_HTTP/health"
}
# wait_live N SECONDS: until /health shows N workers live; prints the seconds waited
wait_live() {
    local t0 n
    t0=$(now)
    for _ in $(seq $(($2 * 10))); do
        n=$(health workers_live)
        [ "$n" = "$1" ] && { sub "$(now)" "$t0"; return 0; }
        kill -0 $cpid 2>/dev/null || break
        sleep 0.1
    done
    return 1
}
if ! wait_live 4 90 >/dev/null; then
    echo "FAIL: the grid did not form (4 workers over the namespaces)"
    tail -20 "$clog"
    for i in 0 1 2 3; do tail -5 "$tmp/worker$i.log"; done
    exit 1
fi
echo "grid: 4 workers in 4 namespaces joined $C:$PORT_JOIN; epoch $(health epoch)"

# the client, run in the coordinator's namespace: every request of a set at once (threads),
# each stream's chunks timestamped; writes {name: {ok, text, finish, t0, t1, chunks}}
cat >"$tmp/client.py" <<'EOF'
import http.client, json, sys, threading, time
out, host, port, which = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
P = ["The capital of France is", "Once upon a time", "def fib(n):", "Hello world"]
sets = {
    # seeded and greedy, whole answers
    "plain": [("seed11", {"prompt": P[0], "max_tokens": 16, "temperature": 1, "seed": 11}),
              ("seed12", {"prompt": P[1], "max_tokens": 16, "temperature": 1, "seed": 12}),
              ("greedy", {"prompt": P[2], "max_tokens": 16, "temperature": 0})],
    # seeded streams, long enough to span a lost worker (3 s timeout + a new epoch)
    "streams": [("stream%d" % i, {"prompt": P[i], "max_tokens": 96, "temperature": 1,
                                  "seed": 20 + i, "stream": True}) for i in range(3)],
}
res = {}
def one(name, body):
    r = {"ok": False, "text": "", "finish": None, "t0": time.time(), "chunks": []}
    res[name] = r
    body = dict(body, model="tiny-a")
    try:
        c = http.client.HTTPConnection(host, port, timeout=120)
        c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        h = c.getresponse()
        if not body.get("stream"):
            d = json.loads(h.read())
            ch = d["choices"][0]
            r.update(text=ch["text"], finish=ch["finish_reason"], ok=h.status == 200)
        else:
            for line in h:
                line = line.strip()
                if not line.startswith(b"data: "):
                    continue
                if line == b"data: [DONE]":
                    r["ok"] = h.status == 200 and r["finish"] is not None
                    break
                d = json.loads(line[6:])
                if "error" in d:
                    r["error"] = d["error"]
                    break
                ch = d["choices"][0]
                r["text"] += ch["text"]
                r["finish"] = ch["finish_reason"] or r["finish"]
                r["chunks"].append(time.time())
                if len(r["chunks"]) == 3:
                    open(out + ".started", "a").write(name + "\n")
    except Exception as e:
        r["error"] = repr(e)
    r["t1"] = time.time()
ts = [threading.Thread(target=one, args=q) for q in sets[which]]
[t.start() for t in ts]
[t.join() for t in ts]
json.dump(res, open(out, "w"))
EOF
# send SET OUT: the set's requests, at once, from the coordinator's namespace
send() { ip netns exec "$nsc" /usr/bin/python3 "$tmp/client.py" "$2" $C $PORT_HTTP "$1"; }
# compare REF OUT: "identical" or what differs; counts failed requests in $failed
compare() {
    /usr/bin/python3 - "$1" "$2" <<'EOF'
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
failed = [n for n in b if not b[n]["ok"]]
diff = [n for n in a if n not in failed and a[n]["text"] != b[n]["text"]]
print(len(failed), "identical" if not diff else "DIFFERENT: " + ", ".join(diff),
      " ".join("%s: %s" % (n, b[n].get("error", b[n]["finish"])) for n in failed))
EOF
}
# wall PLAIN_OUT: seconds from the first request sent to the last answer
wall() {
    /usr/bin/python3 -c "
import json, sys; r = json.load(open(sys.argv[1]))
print(f'{max(v[\"t1\"] for v in r.values()) - min(v[\"t0\"] for v in r.values()):.2f}')" "$1"
}
# verdict NAME REF OUT: prints the comparison, fails the test on a failed request or a diff
verdict() {
    local c n rest
    c=$(compare "$2" "$3")
    n=${c%% *}
    rest=${c#* }
    echo "  $1: requests failed $n, outputs $rest"
    [ "$n" = 0 ] || bad "$1: $n request(s) failed"
    [[ $rest == identical* ]] || bad "$1: outputs differ from the undisturbed run"
}

# ---- 0. baseline (twice: the second, warm, is the latency reference) ----
send plain "$tmp/base0.json"
send plain "$tmp/base.json"
send streams "$tmp/base_streams.json"
for f in base.json base_streams.json; do
    [ "$(compare "$tmp/$f" "$tmp/$f" | cut -d' ' -f1)" = 0 ] || {
        echo "FAIL: undisturbed requests failed:"; cat "$tmp/$f"; exit 1; }
done
verdict "baseline, repeated" "$tmp/base0.json" "$tmp/base.json"
t_base=$(wall "$tmp/base.json")
echo "0. baseline: 3 requests x 16 tokens at once in $t_base s; 3 streams x 96 tokens in $(wall "$tmp/base_streams.json") s"

# ---- a. a bad link on worker 3 ----
w3=$(nsw 3)
if tc -n "$w3" qdisc add dev eth0 root netem delay 20ms loss 1% 2>/dev/null; then
    tc -n "$nss" qdisc add dev p3 root netem delay 20ms loss 1%
    how="netem delay 20ms loss 1% both ways"
else # no sch_netem: a slow link (tbf) and, where nft is, 1% loss
    tc -n "$w3" qdisc add dev eth0 root tbf rate 2mbit burst 8kb latency 200ms
    tc -n "$nss" qdisc add dev p3 root tbf rate 2mbit burst 8kb latency 200ms
    how="no sch_netem in this kernel: tbf rate 2mbit both ways"
    if command -v nft >/dev/null && ip netns exec "$w3" nft -f - <<'EOF' 2>/dev/null; then
table inet dsr1loss {
    chain in { type filter hook input priority 0; numgen random mod 100 < 1 counter drop; }
    chain out { type filter hook output priority 0; numgen random mod 100 < 1 counter drop; }
}
EOF
        how="$how, nft dropping 1% of worker 3's packets each way"
    else
        how="$how (no nft: no loss)"
    fi
fi
send plain "$tmp/slow.json"
t_slow=$(wall "$tmp/slow.json")
echo "a. bad link on worker 3 ($how): 3 requests in $t_slow s (undisturbed $t_base s, cost $(sub "$t_slow" "$t_base") s)"
verdict "a. bad link" "$tmp/base.json" "$tmp/slow.json"
drops=$(ip netns exec "$w3" nft list table inet dsr1loss 2>/dev/null |
    sed -n 's/.*counter packets \([0-9]*\).*/\1/p' | paste -sd+ | bc 2>/dev/null)
[ -n "$drops" ] && echo "   nft dropped $drops of worker 3's packets"
tc -n "$w3" qdisc del dev eth0 root 2>/dev/null
tc -n "$nss" qdisc del dev p3 root 2>/dev/null
ip netns exec "$w3" nft delete table inet dsr1loss 2>/dev/null
[ "$(health workers_live)" = 4 ] || bad "a. bad link: a worker was taken for lost: $(grep -a 'lost' "$clog" | tail -2)"

# ---- b. partition: worker 1's link down, streams in flight ----
w1=$(nsw 1)
rm -f "$tmp/part_streams.json.started"
send streams "$tmp/part_streams.json" &
spid=$!
for _ in $(seq 300); do # every stream under way (3 chunks each), at most 30 s
    [ "$(cat "$tmp/part_streams.json.started" 2>/dev/null | wc -l)" -ge 3 ] && break
    sleep 0.1
done
lost0=$(grep -ac "grid: worker 1 .*lost" "$clog")
t_down=$(now)
t_down_sod=$(now_sod)
ip -n "$w1" link set eth0 down
send plain "$tmp/part.json" & # sent into the partition: they wait for the new epoch
ppid=$!
lost_line=
for _ in $(seq 300); do # the coordinator names worker 1 lost (at most 30 s)
    lost_line=$(grep -a "grid: worker 1 .*lost" "$clog" | sed -n "$((lost0 + 1))p")
    [ -n "$lost_line" ] && break
    sleep 0.1
done
wait $spid
wait $ppid
if [ -z "$lost_line" ]; then
    bad "b. partition: no 'grid: worker 1 ... lost' within 30 s"
    detect=never
else
    detect=$(since "${lost_line%% *}" "$t_down_sod")
fi
# the stall: per stream, the longest gap between chunks around the link-down; resume: its
# end, from the link-down; next: the first of the requests sent into the partition to end
resume=$(/usr/bin/python3 - "$tmp/part_streams.json" "$tmp/part.json" "$t_down" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); p = json.load(open(sys.argv[2])); t = float(sys.argv[3])
ends, gaps = [], []
for v in r.values():
    c = [t - 0.5] + [x for x in v["chunks"] if x > t - 0.5]  # from just before the link-down
    g = max(range(1, len(c)), key=lambda i: c[i] - c[i - 1], default=None)
    if g is not None:
        ends.append(c[g] - t)
        gaps.append(c[g] - c[g - 1])
nxt = min((v["t1"] for v in p.values() if v["ok"]), default=None)
print(f"{max(ends):.2f}" if ends else "none", f"{max(gaps):.2f}" if gaps else "none",
      f"{nxt - t:.2f}" if nxt else "none")
EOF
)
read -r resume stall next_done <<<"$resume"
echo "b. partition of worker 1 (link down): detected in $detect s, streams resumed $resume s after the link-down (stalled $stall s), first request sent into the partition done after $next_done s, epoch $(health epoch), workers live $(health workers_live)"
echo "   ${lost_line:-<no lost line>}" | cut -c1-220
verdict "b. partition, streams in flight" "$tmp/base_streams.json" "$tmp/part_streams.json"
verdict "b. partition, sent into it" "$tmp/base.json" "$tmp/part.json"
[ "$(health workers_live)" = 3 ] || bad "b. partition: /health shows $(health workers_live) workers live, not 3"
if [ "$detect" != never ] && /usr/bin/python3 -c "import sys; sys.exit(float(sys.argv[1]) <= 10)" "$detect"; then
    bad "b. partition: detected after $detect s (limit 10 s)"
fi
if [ "$resume" = none ] || /usr/bin/python3 -c "import sys; sys.exit(float(sys.argv[1]) <= 10)" "$resume"; then
    bad "b. partition: the streams resumed after $resume s (limit 10 s)"
fi

# ---- c. the link up again, the partitioned worker replaced ----
for p in $(ip netns pids "$w1"); do kill -KILL "$p"; done
ip -n "$w1" link set eth0 up
t_rep=$(now)
start_worker 1 .replacement
if wait_live 4 60 >/dev/null; then
    t_back=$(now)
    send plain "$tmp/rep.json"
    send streams "$tmp/rep_streams.json"
    echo "c. replacement worker 1 joined: 4 of 4 workers live $(sub "$t_back" "$t_rep") s after its start, epoch $(health epoch), lanes live $(health lanes_live)"
    verdict "c. replaced" "$tmp/base.json" "$tmp/rep.json"
    verdict "c. replaced, streams" "$tmp/base_streams.json" "$tmp/rep_streams.json"
else
    bad "c. the replacement did not bring 4 of 4 workers back within 60 s"
    tail -5 "$tmp/worker1.replacement.log"
fi

# ---- d. both copies of expert 0 lost: workers 0 and 2 killed, streams in flight ----
send streams "$tmp/d_streams.json" &
spid=$!
for _ in $(seq 300); do
    [ "$(cat "$tmp/d_streams.json.started" 2>/dev/null | wc -l)" -ge 3 ] && break
    sleep 0.1
done
t_kill=$(now_sod)
for i in 0 2; do for p in $(ip netns pids "$(nsw $i)"); do kill -KILL "$p"; done; done
msg=
for _ in $(seq 150); do # at most 15 s
    msg=$(grep -a -m1 "no live copy\|missing\|uncovered\|experts.*lost\|lost.*experts" "$clog" |
        grep -a "expert" || true)
    [ -n "$msg" ] && break
    sleep 0.1
done
code=$(health_code)
if [ -z "$msg" ]; then
    bad "d. two copies lost: no message naming the missing experts within 15 s"
    tail -5 "$clog"
else
    fast=$(since "${msg%% *}" "$t_kill")
    echo "d. workers 0 and 2 killed (both copies of expert 0): failed fast in $fast s, /health $code"
    echo "   $msg" | cut -c1-260
    grep -qE "expert[s]?[^;]*\b0\b" <<<"$msg" || bad "d. the message does not name expert 0"
    /usr/bin/python3 -c "import sys; sys.exit(float(sys.argv[1]) > 10)" "$fast" ||
        bad "d. took $fast s (limit 10 s)"
fi
[ "$code" = 503 ] || bad "d. /health answered $code, not 503"
for _ in $(seq 200); do kill -0 $spid 2>/dev/null || break; sleep 0.1; done # at most 20 s
if kill -0 $spid 2>/dev/null; then
    bad "d. the streams in flight did not end within 20 s of the failure (a hang)"
    kill $spid
else
    echo "   streams in flight: $(/usr/bin/python3 -c "
import json, sys; r = json.load(open(sys.argv[1]))
e = [v.get('error', v['finish']) for v in r.values() if not v['ok']]
print(f'{len(r) - len(e)} completed, {len(e)} ended with an error:', str(e[0])[:120] if e else '')
" "$tmp/d_streams.json")"
fi

[ $fail = 0 ] && echo "=== cluster across network namespaces passed" ||
    echo "=== cluster across network namespaces FAILED"
exit $fail
