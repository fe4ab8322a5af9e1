#!/usr/bin/env bash
# The fast mode's accuracy bound can fail (meson test accuracy_bound): run_accuracy.sh with
# the fast mode's bounds passes on the golden prompts, and fails (exit 1) on a checkpoint
# where one 16 x 32 tile of every FP8 weight of the 4 layers is zeroed, which is what a tile
# kernel that drops one TDPBF16PS step computes (corrupt_tile.py); also on a checkpoint
# with one such tile in layer 2's shared expert down_proj alone, which only the bound on
# the rows that no router flip reaches (clean_*) sees.
#
# usage: test_accuracy_bound.sh DSR1_BINARY GOLDEN_DIR [KERNELS]
#   KERNELS defaults to bf16-tiles-emulated (runs on any CPU: the AMX path's arithmetic).
# Exit 77 (skip) where run_accuracy.sh skips.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$1; golden=$2; kernels=${3:-bf16-tiles-emulated}
# the rows that router near-ties reach (router_margins.py: its numpy forward must match the
# reference), computed once on the unchanged checkpoint, for both runs
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export DSR1_ACCURACY_REACHED=$tmp/reached.json
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
echo "--- one wrong tile in one weight, layer 2's shared expert down_proj (must fail)"
DSR1_ACCURACY_CORRUPT='model.layers.2.mlp.shared_experts.down_proj.weight:32:96' \
    "$here/run_accuracy.sh" "$bin" "$golden" --kernels "$kernels"
rc=$?
if [ $rc != 1 ]; then
    echo "FAIL: one wrong tile in one weight was not caught (run_accuracy.sh exit $rc, want 1)"
    exit 1
fi
echo "ok: the bounds pass the fast mode and fail a wrong tile"
