#!/usr/bin/env bash
# The README's first command: set up, build, create the small random `tiny` model, start the
# embedded server on it (2 expert-parallel workers as threads of one process, gRPC on
# 127.0.0.1), then talk to it with `dsr1 client`: one streamed chat generation, a batch of
# three jobs, the server's state; and with curl through the OpenAI-compatible HTTP API: the
# models, a chat completion, the same streamed (Server-Sent Events). The server is stopped on
# exit.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh build
dsr1=./build/tools/dsr1
[ -f models/tiny/config.json ] || $dsr1 mkmodel --preset tiny --out models/tiny
$dsr1 inspect --model models/tiny --workers 2

log=$(mktemp)
$dsr1 serve --model models/tiny --workers 2 --host 127.0.0.1 --port 0 >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 600); do # wait for "serving on HOST:PORT" (or the server's death)
    grep -q "serving on" "$log" && break
    kill -0 $server 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.1
done
grep "serving on" "$log" || { cat "$log"; exit 1; }
export DSR1_SERVER=$(sed -n 's/.*serving on \([^ ]*\).*/\1/p' "$log" | head -1)
http=$(sed -n 's/.*HTTP API on \(http:[^ ]*\).*/\1/p' "$log" | head -1)

# The weights are random, so the text is gibberish by design; reasoning goes to stderr.
echo "=== dsr1 client generate (streamed)"
$dsr1 client generate --chat-user "Hello! What is 2 + 2?" --max-tokens 24 --seed 7
echo
echo "=== dsr1 client batch --wait (3 jobs, one JSON line each as they finish)"
printf '%s\n' '{"custom_id":"a","text":"The capital of France is"}' \
    '{"custom_id":"b","messages":[{"role":"user","content":"Write a haiku."}],"max_tokens":16}' \
    '{"custom_id":"c","ids":[0,19923,14],"max_tokens":8,"temperature":0}' |
    $dsr1 client batch --file /dev/stdin --max-tokens 12 --wait
echo "=== dsr1 client info"
$dsr1 client info | head -40

if [ -n "$http" ] && command -v curl >/dev/null; then
    echo "=== curl $http/v1/models"
    curl -sS "$http/v1/models"
    echo
    echo "=== curl $http/v1/chat/completions"
    curl -sS "$http/v1/chat/completions" -H 'Content-Type: application/json' \
        -d '{"messages":[{"role":"user","content":"Hello! What is 2 + 2?"}],"max_tokens":24,"seed":7}'
    echo
    echo "=== curl -N $http/v1/chat/completions (streamed)"
    curl -sS -N "$http/v1/chat/completions" -H 'Content-Type: application/json' \
        -d '{"messages":[{"role":"user","content":"Hello! What is 2 + 2?"}],"max_tokens":8,"seed":7,"stream":true}'
fi
