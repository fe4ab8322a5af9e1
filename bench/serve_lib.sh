# Sourced by the serving benchmarks (bench/serve.sh, serve_constrained.sh,
# serve_http_vs_grpc.sh): start_server BUILD MODEL LOG [dsr1 serve args...] starts
# `dsr1 serve` on loopback with a free gRPC port, stops it when the script exits, waits until
# it serves, and sets GRPC_TARGET (HOST:PORT) and HTTP_BASE (http://HOST:PORT, empty when the
# HTTP API is off). On a server that exits or never serves it prints its log and exits 1.
# Each server gets a temporary batch state directory (--state-dir), removed at exit.
start_server() {
    local build=$1 model=$2 log=$3 me; shift 3
    me=$(basename "$0")
    STATE_DIR=$(mktemp -d)
    "$build/tools/dsr1" serve --model "$model" --host 127.0.0.1 --port 0 --state-dir "$STATE_DIR" \
        "$@" >"$log" 2>&1 &
    SERVER_PID=$!
    trap 'kill $SERVER_PID 2>/dev/null || true; wait $SERVER_PID 2>/dev/null || true; rm -rf "$STATE_DIR"' EXIT
    for _ in $(seq 600); do
        grep -q 'serving on' "$log" && break
        kill -0 $SERVER_PID 2>/dev/null || { cat "$log"; echo "$me: the server exited"; exit 1; }
        sleep 0.5
    done
    GRPC_TARGET=$(grep -o 'serving on [^ ]*' "$log" | head -1 | cut -d' ' -f3 || true)
    HTTP_BASE=$(grep -o 'HTTP API on [^ ]*' "$log" | head -1 | cut -d' ' -f4 || true)
    [ -n "$GRPC_TARGET" ] || { cat "$log"; echo "$me: the server did not start"; exit 1; }
}
