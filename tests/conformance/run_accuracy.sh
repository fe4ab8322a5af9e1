#!/usr/bin/env bash
# Accuracy of a precision mode against DeepSeek's reference, the way llama.cpp's
# --kl-divergence reports quantisation loss: for every prompt of the golden file, run `dsr1
# run` with the reference's greedy ids forced through the decode path (teacher forcing, as
# run_golden.sh does), dump every logit row, and report per row and in summary the error in
# std units, the KL divergence on the golden top-32 and top-1 agreement (accuracy.py).
#
# usage: run_accuracy.sh DSR1_BINARY GOLDEN_DIR [dsr1 run args...]
#   e.g. run_accuracy.sh build/tools/dsr1 ../shared/golden --kernels bf16-tiles
# Environment:
#   DSR1_ACCURACY_BOUNDS  accuracy.py's bounds (default: its --bounds fast, the fast mode's
#                         bound; "none" reports only); exit 1 when a bound is passed, 2 when
#                         something else fails (dsr1 run, a dump, router_margins.py)
#   DSR1_ACCURACY_ROWS=1  print every row, not just the summary
#   DSR1_ACCURACY_JSON    write the summary as JSON to this file
#   DSR1_ACCURACY_CORRUPT TENSOR:ROW0:COL0[:ROWS:COLS] run on a copy of the checkpoint
#                         whose FP8 tensor TENSOR has that block of weights zeroed (the
#                         effect of one wrong tile: corrupt_tile.py), to show the bound fails
#   DSR1_ACCURACY_KEEP    keep the dumps in this directory
#   DSR1_ACCURACY_REACHED FILE: the rows that router near-ties flipped by bf16 reach, from
#                         router_margins.py --json (run here, on the unchanged checkpoint,
#                         when FILE does not exist yet: ~10 s of CPU); accuracy.py then
#                         reports the other rows apart and bounds them (clean_*)
#   DSR1_GOLDEN_MODELS    where the checkpoint is made (default ./models), as run_golden.sh
# Exit 77 (skip) when the golden dir or numpy is absent.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: run_accuracy.sh DSR1_BINARY GOLDEN_DIR [dsr1 run args...]" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
bin=$(realpath "$1"); golden_dir=$2; shift 2
name=tiny-a
golden=$golden_dir/golden-$name.json
if [ ! -f "$golden" ]; then echo "skip: $golden not found"; exit 77; fi
py=/usr/bin/python3
[ -x $py ] || py=python3
if ! $py -c 'import numpy' 2>/dev/null; then echo "skip: python3-numpy missing"; exit 77; fi
models=${DSR1_GOLDEN_MODELS:-$PWD/models}
model=$models/$name
if [ ! -f "$model/config.json" ] || [ ! -f "$model/.complete" ]; then
    mkdir -p "$models"
    $py "$golden_dir/make_tiny.py" "$golden_dir/configs/$name.json" "$model"
    touch "$model/.complete"
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
reached=${DSR1_ACCURACY_REACHED:-}
if [ -n "$reached" ] && [ ! -f "$reached" ]; then
    if ! $py "$here/router_margins.py" "$golden" "$model" --json "$reached" > "$out/router.txt"; then
        cat "$out/router.txt"; echo "FAIL: router_margins.py"; exit 2
    fi
fi
if [ -n "${DSR1_ACCURACY_CORRUPT:-}" ]; then
    $py "$here/corrupt_tile.py" "$model" "$out/model" "$DSR1_ACCURACY_CORRUPT" || exit 2
    model=$out/model
fi
dumps=${DSR1_ACCURACY_KEEP:-$out/dumps}
mkdir -p "$dumps"
for prompt in $($py -c "import json,sys; print(' '.join(json.load(open(sys.argv[1]))['prompts']))" "$golden"); do
    read -r ids greedy < <($py -c "
import json,sys
p=json.load(open(sys.argv[1]))['prompts'][sys.argv[2]]
print(','.join(map(str,p['ids'])), ','.join(map(str,p['greedy'])))" "$golden" "$prompt")
    if ! DSR1_LOG=warn "$bin" run --model "$model" --prompt-ids "$ids" --force-ids "$greedy" \
            --dump-logits "$dumps/$prompt.f32" "$@" >/dev/null; then
        echo "FAIL: $prompt: dsr1 run failed"; exit 2
    fi
done
args=(--bounds "${DSR1_ACCURACY_BOUNDS:-fast}" --label "$*")
[ "${DSR1_ACCURACY_ROWS:-0}" = 1 ] && args+=(--rows)
[ -n "${DSR1_ACCURACY_JSON:-}" ] && args+=(--json "$DSR1_ACCURACY_JSON")
[ -n "$reached" ] && args+=(--reached "$reached")
$py "$here/accuracy.py" "$golden" "$dumps" "${args[@]}"
