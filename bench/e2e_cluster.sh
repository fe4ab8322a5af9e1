#!/usr/bin/env bash
# End-to-end tokens/s of `dsr1 run` through the worker grid, every launch shape in the same
# run: the single process (the baseline), the embedded grid over the in-process transport
# and over UCX on loopback (`--workers N [--pp P] [--transport ucx]`), and the same grid as
# separate processes under mpirun (`mpirun -np 1 dsr1 run ... : -np N dsr1-worker`).
# Configurations are interleaved round by round (so a busy minute on a shared machine hits
# them all alike); each gets the median prefill and decode tokens/s over the rounds and its
# ratio to the single process's median. A second reference, the single process on one
# thread, is what each worker of a 2-core grid gets (the cores are divided among them).
#
#   tiny-a:   N = 2, 4 workers, pp 1 and 2 (N = 2 with pp 2 is two one-rank stages)
#   r1-proxy: N = 2 workers, pp 1 (R1's layer shapes; the whole model is ~6 GB, so no more
#             than 2 worker processes here)
#
# usage: bench/e2e_cluster.sh BUILD_DIR [TINY_MODEL] [R1_MODEL]
#   env: DSR1_E2E_REPS      rounds on tiny-a (default 7)
#        DSR1_E2E_R1_REPS   rounds on r1-proxy (default 3; 0 skips r1-proxy)
#        DSR1_E2E_R1_ARGS   extra model arguments for r1-proxy on every process, e.g.
#                           "--dummy-weights --layers 2" when memory is short
#        DSR1_E2E_RAW       also write every run's numbers to this TSV file
# Prompts are random ids (64 tokens, 32 decoded on tiny-a; 32 and 8 on r1-proxy), greedy.
set -euo pipefail
build=$(realpath "$1")
tiny=${2:-models/tiny-a}
r1=${3:-models/r1-proxy}
reps=${DSR1_E2E_REPS:-7}
r1_reps=${DSR1_E2E_R1_REPS:-3}
read -r -a r1_args <<<"${DSR1_E2E_R1_ARGS:-}"
dsr1=$build/tools/dsr1
worker=$build/tools/dsr1-worker

# loopback only: UCX over TCP on lo (peer failure detection rules out shared memory), Open
# MPI's own start-up traffic on lo too; callers may override any of these
export UCX_TLS=${UCX_TLS:-tcp,sm,self} UCX_NET_DEVICES=${UCX_NET_DEVICES:-lo}
export UCX_WARN_UNUSED_ENV_VARS=n DSR1_NO_PROGRESS_BAR=1 DSR1_LOG=info
export OMPI_MCA_btl_tcp_if_include=${OMPI_MCA_btl_tcp_if_include:-lo}
export OMPI_MCA_oob_tcp_if_include=${OMPI_MCA_oob_tcp_if_include:-lo}
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

have() { grep -q "#define DSR1_HAVE_$1 1" "$build/dsr1_build_config.h" 2>/dev/null; }
have_ucx=0 have_mpi=0
have UCX && have_ucx=1
if [ $have_ucx = 1 ] && have MPI && [ -x "$worker" ] && command -v mpirun >/dev/null; then
    have_mpi=1
fi
[ $have_ucx = 1 ] || echo "note: built without UCX: no --transport ucx or mpirun rows"
[ $have_ucx = 0 ] || [ $have_mpi = 1 ] || echo "note: no MPI (libopenmpi-dev, mpirun): no mpirun rows"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
raw=$tmp/raw.tsv
: >"$raw"

ids_of() { # N random prompt ids, the same every run
    python3 -c "import random; r=random.Random(1); print(','.join(str(r.randrange(1000, 100000)) for _ in range($1)))"
}

# run_one NAME MODEL PLEN NDEC MODE N PP MODEL_ARGS...: one `dsr1 run`; appends to $raw
run_one() {
    local name=$1 model=$2 plen=$3 ndec=$4 mode=$5 n=$6 pp=$7
    shift 7
    local margs=(--model "$model" "$@")
    local args=(run "${margs[@]}" --prompt-ids "$(ids_of "$plen")" --max-tokens "$ndec")
    local cmd
    case $mode in
    single) cmd=("$dsr1" "${args[@]}") ;;
    single1) cmd=("$dsr1" "${args[@]}" --threads 1) ;;
    inproc) cmd=("$dsr1" "${args[@]}" --workers "$n" --pp "$pp") ;;
    ucx) cmd=("$dsr1" "${args[@]}" --workers "$n" --pp "$pp" --transport ucx) ;;
    mpi) cmd=(mpirun --oversubscribe --bind-to none -x UCX_TLS -x UCX_NET_DEVICES -x DSR1_LOG
              -x DSR1_NO_PROGRESS_BAR -np 1 "$dsr1" "${args[@]}" --pp "$pp"
              : -np "$n" "$worker" "${margs[@]}") ;;
    esac
    if ! timeout -k 5 300 "${cmd[@]}" >/dev/null 2>"$tmp/log"; then
        echo "FAILED: ${cmd[*]}" >&2
        tail -20 "$tmp/log" >&2
        exit 1
    fi
    local line
    line=$(grep -o 'run: prefill.*' "$tmp/log" | tail -1)
    [ -n "$line" ] || { echo "no timing line from: ${cmd[*]}" >&2; exit 1; }
    printf '%s\t%s\t%s\n' "$(basename "$model")" "$name" "$line" >>"$raw"
}

# the grid shapes: NAME MODE N PP
tiny_cfgs=("single process|single|1|1" "single process --threads 1|single1|1|1")
for shape in "2 1" "2 2" "4 1" "4 2"; do
    read -r n pp <<<"$shape"
    p=""; [ "$pp" = 1 ] || p=" --pp $pp"
    tiny_cfgs+=("embedded --workers $n$p|inproc|$n|$pp")
    [ $have_ucx = 1 ] && tiny_cfgs+=("embedded --workers $n$p --transport ucx|ucx|$n|$pp")
    [ $have_mpi = 1 ] && tiny_cfgs+=("mpirun: dsr1 run$p + $n dsr1-worker|mpi|$n|$pp")
done
r1_cfgs=("single process|single|1|1" "single process --threads 1|single1|1|1" "embedded --workers 2|inproc|2|1")
[ $have_ucx = 1 ] && r1_cfgs+=("embedded --workers 2 --transport ucx|ucx|2|1")
[ $have_mpi = 1 ] && r1_cfgs+=("mpirun: dsr1 run + 2 dsr1-worker|mpi|2|1")

echo "tiny-a ($tiny): $reps rounds of ${#tiny_cfgs[@]} runs" >&2
for ((i = 1; i <= reps; i++)); do
    for c in "${tiny_cfgs[@]}"; do
        IFS='|' read -r name mode n pp <<<"$c"
        run_one "$name" "$tiny" 64 32 "$mode" "$n" "$pp"
    done
done
if [ "$r1_reps" -gt 0 ]; then
    echo "r1-proxy ($r1${r1_args[*]:+ ${r1_args[*]}}): $r1_reps rounds of ${#r1_cfgs[@]} runs" >&2
    for ((i = 1; i <= r1_reps; i++)); do
        for c in "${r1_cfgs[@]}"; do
            IFS='|' read -r name mode n pp <<<"$c"
            run_one "$name" "$r1" 32 8 "$mode" "$n" "$pp" "${r1_args[@]}"
        done
    done
fi
[ -z "${DSR1_E2E_RAW:-}" ] || cp "$raw" "$DSR1_E2E_RAW"

python3 - "$raw" <<'EOF'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    model, name, text = line.rstrip('\n').split('\t')
    m = re.search(r'prefill \d+ tokens in [\d.]+ s \(([\d.]+) tok/s\); decode \d+ tokens in [\d.]+ s \(([\d.]+) tok/s\)', text)
    runs.setdefault(model, {}).setdefault(name, []).append((float(m.group(1)), float(m.group(2))))
print('| model | launch | runs | prefill tok/s | vs single | decode tok/s | vs single |')
print('| --- | --- | --- | --- | --- | --- | --- |')
for model, cfgs in runs.items():
    base = cfgs['single process']
    bp = statistics.median(r[0] for r in base)
    bd = statistics.median(r[1] for r in base)
    for name, rs in cfgs.items():
        p = statistics.median(r[0] for r in rs)
        d = statistics.median(r[1] for r in rs)
        print(f'| {model} | {name} | {len(rs)} | {p:.1f} | {p / bp:.2f} | {d:.2f} | {d / bd:.2f} |')
EOF
