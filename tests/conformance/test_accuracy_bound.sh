#!/usr/bin/env bash
# The fast mode's accuracy bound can fail (meson test accuracy_bound): run_accuracy.sh with
# the fast mode's bounds passes on the golden prompts, and fails (exit 1) on a checkpoint
# where one 16 x 32 tile of every FP8 weight of the 4 layers is zeroed, which is what a tile
# kernel that drops one TDPBF16PS step computes (corrupt_tile.py). Then router_margins.py's
# forward pass is checked against the golden logits on two prompts.
#
# usage: test_accuracy_bound.sh DSR1_BINARY GOLDEN_DIR [KERNELS]
#   KERNELS defaults to bf16-tiles-emulated (runs on any CPU: the AMX path's arithmetic).
# Exit 77 (skip) where run_accuracy.sh skips.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$1; golden=$2; kernels=${3:-bf16-tiles-emulated}
"$here/run_accuracy.sh" "$bin" "$golden" --kernels "$kernels"
rc=$?
[ $rc = 77 ] && exit 77
if [ $rc != 0 ]; then echo "FAIL: the fast mode ($kernels) is beyond its accuracy bounds"; exit 1; fi
echo "--- the same with one wrong tile in every FP8 product (must fail the bounds)"
DSR1_ACCURACY_CORRUPT='model.layers.[0-3].*:0:0' "$here/run_accuracy.sh" "$bin" "$golden" \
    --kernels "$kernels"
rc=$?
if [ $rc != 1 ]; then
    echo "FAIL: a wrong tile was not caught by the bounds (run_accuracy.sh exit $rc, want 1)"
    exit 1
fi
echo "--- router_margins.py (docs/kernels.md: why the outlier rows move) on two prompts: its"
echo "    numpy forward must match the golden logits"
models=${DSR1_GOLDEN_MODELS:-$PWD/models}
py=/usr/bin/python3
[ -x $py ] || py=python3
if ! $py "$here/router_margins.py" "$golden/golden-tiny-a.json" "$models/tiny-a" \
        --prompts hello,single; then
    echo "FAIL: router_margins.py"; exit 1
fi
echo "ok: the bounds pass the fast mode and fail a wrong tile; router_margins.py matches the reference"
