#!/usr/bin/env bash
# Batch jobs in serving (docs/benchmarks.md, "Batch jobs"): one `dsr1 serve` on a model with
# --batch-window CONCURRENCY, then, ROUNDS times each, alternately:
#   closed  `dsr1-bench serve` with N requests at CONCURRENCY in flight (greedy, ignore_eos,
#           INPUT_LEN random prompt tokens, OUTPUT_LEN generated): its output tokens/s;
#   batch   N items of the same shape (random ids of their own, greedy, ignore_eos) uploaded
#           with `dsr1 client batch --wait`: generated tokens over the wall time from
#           upload to the last result;
# and the ratio batch / closed of the medians. Then interactive latency under batch load:
# `dsr1-bench serve` at INTERACTIVE_CONCURRENCY with nothing else running, and again while a
# batch of BIG_BATCH items runs, TTFT p50/p99 of each (the batch is cancelled after).
#
# usage: bench/serve_batch.sh BUILD_DIR MODEL_DIR [OUT_DIR] [extra dsr1 serve args...]
# env:   CONCURRENCY=32 INPUT_LEN=128 OUTPUT_LEN=64 ROUNDS=3 NUM_PROMPTS=(8 x CONCURRENCY)
#        INTERACTIVE_CONCURRENCY=4 INTERACTIVE_PROMPTS=64 BIG_BATCH=4000
set -euo pipefail
build=$(realpath "$1"); model=$2; out=${3:-$(mktemp -d)}; shift $(( $# < 3 ? $# : 3 ))
c=${CONCURRENCY:-32}; ilen=${INPUT_LEN:-128}; olen=${OUTPUT_LEN:-64}; rounds=${ROUNDS:-3}
n=${NUM_PROMPTS:-$(( 8 * c ))}; ic=${INTERACTIVE_CONCURRENCY:-4}
inum=${INTERACTIVE_PROMPTS:-64}; big=${BIG_BATCH:-4000}
mkdir -p "$out"
log=$out/server.log
. "$(dirname "$0")/serve_lib.sh"
start_server "$build" "$model" "$log" --http-port 0 --batch-window "$c" "$@"
target=$GRPC_TARGET
dsr1=$build/tools/dsr1
vocab=$("$dsr1" client info --server "$target" 2>/dev/null |
    /usr/bin/python3 -c "import re,sys; m=re.search(r'vocab[a-z_ ]*[:=] *([0-9]+)', sys.stdin.read()); print(m.group(1) if m else 129280)")
echo "server $target: $model ${*:-}; concurrency $c, $n requests, $ilen in, $olen out, $rounds rounds"

# items.jsonl: N random prompts of ilen ids each (seeded), greedy, exactly olen tokens
make_items() { # FILE COUNT SEED
    /usr/bin/python3 - "$@" "$ilen" "$olen" "$vocab" <<'PY'
import json, random, sys
path, count, seed, ilen, olen, vocab = sys.argv[1], *map(int, sys.argv[2:])
rng = random.Random(seed)
with open(path, "w") as f:
    for i in range(count):
        ids = [rng.randrange(3, min(vocab, 128000)) for _ in range(ilen)]
        f.write(json.dumps({"custom_id": f"r{i}", "ids": ids, "max_tokens": olen,
                            "temperature": 0, "ignore_eos": True}) + "\n")
PY
}

run_batch() { # NAME SEED: prints output tokens/s
    make_items "$out/$1.jsonl" "$n" "$2"
    local t0 t1
    t0=$(date +%s.%N)
    "$dsr1" client batch --server "$target" --input "$out/$1.jsonl" --output "$out/$1.out.jsonl" \
        >"$out/$1.log" 2>&1 || { cat "$out/$1.log"; exit 1; }
    t1=$(date +%s.%N)
    /usr/bin/python3 - "$out/$1.out.jsonl" "$t0" "$t1" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def tokens(r):
    c = r.get("result", {})
    u = c.get("usage", {})
    return int(u.get("completion_tokens", u.get("completionTokens", 0)))
tok = sum(tokens(r) for r in rows)
print(f"{tok / (float(sys.argv[3]) - float(sys.argv[2])):.1f} {len(rows)} {tok}")
PY
}

printf '%-10s %6s %12s\n' run round "out tok/s"
for r in $(seq "$rounds"); do
    "$build/bench/dsr1-bench" serve --server "$target" --num-prompts "$n" --max-concurrency "$c" \
        --random-input-len "$ilen" --random-output-len "$olen" --seed $(( 2 * r )) \
        --label "closed $r" --json "$out/closed-$r.json" >"$out/closed-$r.txt" 2>&1 ||
        { cat "$out/closed-$r.txt"; exit 1; }
    tp=$(/usr/bin/python3 -c "import json,sys; print('%.1f' % json.load(open(sys.argv[1]))['output_throughput'])" "$out/closed-$r.json")
    printf '%-10s %6s %12s\n' closed "$r" "$tp"; echo "$tp" >>"$out/closed.tp"
    read -r tp items tok <<<"$(run_batch "batch-$r" $(( 2 * r + 1 )))"
    [ "$items" = "$n" ] || { echo "serve_batch.sh: batch $r gave $items results of $n"; exit 1; }
    printf '%-10s %6s %12s\n' batch "$r" "$tp"; echo "$tp" >>"$out/batch.tp"
done
/usr/bin/python3 - "$out" <<'PY'
import statistics, sys
out = sys.argv[1]
c = statistics.median(float(x) for x in open(f"{out}/closed.tp"))
b = statistics.median(float(x) for x in open(f"{out}/batch.tp"))
print(f"median output tok/s: closed loop {c:.1f}, batch {b:.1f}, ratio batch/closed {b / c:.3f}")
PY

# interactive TTFT alone and under a running batch
ttft() { # LABEL SEED
    "$build/bench/dsr1-bench" serve --server "$target" --num-prompts "$inum" \
        --max-concurrency "$ic" --random-input-len "$ilen" --random-output-len "$olen" \
        --seed "$2" --label "$1" --json "$out/$1.json" >"$out/$1.txt" 2>&1 ||
        { cat "$out/$1.txt"; exit 1; }
    /usr/bin/python3 -c "
import json,sys; d=json.load(open(sys.argv[1]))
print('%-22s TTFT p50 %8.1f ms  p99 %8.1f ms  out tok/s %8.1f' % (sys.argv[2], d['median_ttft_ms'], d['p99_ttft_ms'], d['output_throughput']))" "$out/$1.json" "$1"
}
ttft interactive-alone 101
make_items "$out/big.jsonl" "$big" 103
bid=$("$dsr1" client batch --server "$target" --input "$out/big.jsonl" 2>"$out/big.log")
sleep 2
"$dsr1" client status "$bid" --server "$target" >"$out/big-status-before.txt" 2>&1 || true
ttft interactive-under-batch 102
"$dsr1" client status "$bid" --server "$target" >"$out/big-status-after.txt" 2>&1 || true
"$dsr1" client cancel "$bid" --server "$target" >/dev/null 2>&1 || true
echo "batch $bid during the run: $(grep -o '[0-9]*/[0-9]* finished' "$out/big-status-before.txt" | head -1) -> $(grep -o '[0-9]*/[0-9]* finished' "$out/big-status-after.txt" | head -1)"
