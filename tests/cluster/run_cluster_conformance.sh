#!/usr/bin/env bash
# Golden conformance through the cluster transports, and determinism:
#   (a) embedded grid over UCX on loopback: --workers 4 --transport ucx (and --pp 2)
#   (b) mpirun: the coordinator (dsr1 run) + 4 dsr1-worker processes over UCX
#   (c) the same with --pp 2 (2 stages x 2 EP ranks)
#   (d) the same run twice gives bit-identical dumps (embedded UCX and mpirun), equal to
#       the in-process embedded grid's of the same shape (EP sums depend on the EP size)
# Every run is bounded by `timeout`; loopback transports only.
#
# usage: run_cluster_conformance.sh BUILD_DIR GOLDEN_DIR
# Exit 77 (skip) when the build has no UCX (or the golden files are missing); the mpirun
# parts are skipped, with a message, when the build has no MPI or mpirun is missing.
set -euo pipefail
build=$(realpath "$1")
golden=$(realpath "$2")
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$here/cluster_env.sh"

dsr1=$build/tools/dsr1
worker=$build/tools/dsr1-worker
run_golden=$root/tests/conformance/run_golden.sh
if ! cluster_have UCX "$build"; then echo "skip: built without UCX"; exit 77; fi
[ -f "$golden/golden-tiny-a.json" ] || { echo "skip: no $golden/golden-tiny-a.json"; exit 77; }
export DSR1_GOLDEN_MODELS=${DSR1_GOLDEN_MODELS:-$root/models}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
step() { echo "=== cluster conformance: $*"; }

step "(a) embedded, 4 workers over UCX"
timeout -k 5 300 "$run_golden" "$dsr1" "$golden" 1e-3 --workers 4 --transport ucx || fail=1
step "(a) embedded, 4 workers in 2 stages over UCX"
timeout -k 5 300 "$run_golden" "$dsr1" "$golden" 1e-3 --workers 4 --pp 2 --transport ucx || fail=1

have_mpi=1
if ! cluster_have MPI "$build" || [ ! -x "$worker" ] || ! command -v mpirun >/dev/null; then
    echo "SKIP (mpirun parts): the build has no MPI (libopenmpi-dev) or mpirun is missing"
    have_mpi=0
fi
if [ $have_mpi = 1 ]; then
    # run_golden.sh calls `BIN run --model M ...`: this stand-in starts that under mpirun
    # as rank 0, with 4 dsr1-worker ranks on the same model
    cluster_mpi_wrapper "$tmp/dsr1-mpi" "$dsr1" "$worker" 4
    step "(b) mpirun, coordinator + 4 worker processes over UCX"
    timeout -k 5 400 "$run_golden" "$tmp/dsr1-mpi" "$golden" 1e-3 || fail=1
    step "(c) mpirun --pp 2, coordinator + 4 worker processes over UCX"
    timeout -k 5 400 "$run_golden" "$tmp/dsr1-mpi" "$golden" 1e-3 --pp 2 || fail=1
fi

step "(d) determinism: the same run twice, bit for bit, as the in-process grid of its shape"
model=$DSR1_GOLDEN_MODELS/tiny-a
read -r ids greedy < <(/usr/bin/python3 -c "
import json,sys
p=json.load(open(sys.argv[1]))['prompts']['code']
print(','.join(map(str,p['ids'])), ','.join(map(str,p['greedy'])))" "$golden/golden-tiny-a.json")
args=(run --model "$model" --prompt-ids "$ids" --force-ids "$greedy")
# references: the in-process grids (EP sums depend on the EP size, so one per shape)
for pp in 1 2; do
    DSR1_LOG=warn timeout -k 5 120 "$dsr1" "${args[@]}" --workers 4 --pp $pp \
        --dump-logits "$tmp/ref-pp$pp.f32" >/dev/null || fail=1
done
runs=("1:ucx-a:$dsr1 --workers 4 --transport ucx" "1:ucx-b:$dsr1 --workers 4 --transport ucx")
if [ $have_mpi = 1 ]; then
    runs+=("1:mpi-a:$tmp/dsr1-mpi" "1:mpi-b:$tmp/dsr1-mpi" "2:mpi-pp2-a:$tmp/dsr1-mpi --pp 2"
           "2:mpi-pp2-b:$tmp/dsr1-mpi --pp 2")
    # the design card's launch line: dsr1-coordinator as rank 0 (it takes `dsr1 run`'s
    # flags; this stand-in drops the leading "run")
    printf '#!/usr/bin/env bash\nshift\nexec "%s" "$@"\n' "$build/tools/dsr1-coordinator" \
        >"$tmp/coordinator-as-run"
    chmod +x "$tmp/coordinator-as-run"
    cluster_mpi_wrapper "$tmp/coordinator-mpi" "$tmp/coordinator-as-run" "$worker" 4
    runs+=("2:dsr1-coordinator-pp2:$tmp/coordinator-mpi --pp 2")
fi
for r in "${runs[@]}"; do
    pp=${r%%:*}
    rest=${r#*:}
    name=${rest%%:*}
    read -r -a cmd <<<"${rest#*:}"
    if ! DSR1_LOG=warn timeout -k 5 120 "${cmd[0]}" "${args[@]}" "${cmd[@]:1}" \
            --dump-logits "$tmp/$name.f32" >/dev/null; then
        echo "FAIL: determinism run $name failed"
        fail=1
    elif ! cmp -s "$tmp/ref-pp$pp.f32" "$tmp/$name.f32"; then
        echo "FAIL: $name: logits differ from the in-process grid's (pp $pp)"
        fail=1
    else
        echo "ok: $name: bit-identical to the in-process grid with pp $pp" \
            "($(stat -c %s "$tmp/$name.f32") bytes)"
    fi
done
[ $fail = 0 ] && echo "=== cluster conformance passed" || echo "=== cluster conformance FAILED"
exit $fail
