#!/usr/bin/env bash
# Conformance against DeepSeek's reference: for every prompt of a golden file, run
# `dsr1 run` with the reference's greedy ids forced through the decode path (teacher
# forcing), dump every logit row, and compare row by row with check_logits.py.
#
# usage: run_golden.sh DSR1_BINARY SHARED_GOLDEN_DIR [TOL] [extra dsr1 run args...]
# Makes the checkpoint with make_tiny.py (cached in $DSR1_GOLDEN_MODELS, default
# ./models) when missing. Exit 77 (skip) when ../shared/golden or numpy is absent.
set -euo pipefail
bin=$(realpath "$1"); golden_dir=$2; tol=${3:-1e-3}; shift 3 || shift $#
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
fail=0
for prompt in $($py -c "import json,sys; print(' '.join(json.load(open(sys.argv[1]))['prompts']))" "$golden"); do
    read -r ids greedy < <($py -c "
import json,sys
p=json.load(open(sys.argv[1]))['prompts'][sys.argv[2]]
print(','.join(map(str,p['ids'])), ','.join(map(str,p['greedy'])))" "$golden" "$prompt")
    if ! DSR1_LOG=warn "$bin" run --model "$model" --prompt-ids "$ids" --force-ids "$greedy" \
            --dump-logits "$out/$prompt.f32" "$@" >/dev/null; then
        echo "FAIL: $prompt: dsr1 run failed"; fail=1; continue
    fi
    $py "$golden_dir/check_logits.py" "$golden" "$prompt" "$out/$prompt.f32" --tol "$tol" || fail=1
done
exit $fail
