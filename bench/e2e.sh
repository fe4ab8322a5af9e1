#!/usr/bin/env bash
# End-to-end speed of `dsr1 run`: prefill tokens/s and batch-1 decode tokens/s on a model,
# next to this machine's streaming read bandwidth measured in the same run, as the ratio
# of decode speed to the bandwidth roofline (DRAM GB/s / GB of weights read per token).
#
# usage: bench/e2e.sh BUILD_DIR MODEL_DIR [PROMPT_LEN] [DECODE_TOKENS] [extra dsr1 run args]
set -euo pipefail
build=$1; model=$2; plen=${3:-64}; ndec=${4:-16}; shift $(( $# < 4 ? $# : 4 ))
bw=$("$build/bench/dsr1-membw" 1024 | awk '{print $2}')
ids=$(python3 -c "import random; r=random.Random(1); print(','.join(str(r.randrange(1000, 100000)) for _ in range($plen)))")
log=$(DSR1_LOG=info DSR1_NO_PROGRESS_BAR=1 "$build/tools/dsr1" run --model "$model" \
      --prompt-ids "$ids" --max-tokens "$ndec" "$@" 2>&1 >/dev/null | grep "run: prefill")
echo "$log" | sed 's/.*run: //'
echo "$log" | python3 -c "
import re, sys
s = sys.stdin.read(); bw = float('$bw')
pre = float(re.search(r'\(([\d.]+) tok/s\); decode', s).group(1))
dec = float(re.search(r'decode \d+ tokens in [\d.]+ s \(([\d.]+) tok/s\)', s).group(1))
m = re.search(r'reads ([\d.]+) GB', s)
line = f'membw {bw:.2f} GB/s; prefill {pre:.2f} tok/s; decode {dec:.3f} tok/s'
if m:  # single-process runs report the weight bytes a decode token reads
    roof = bw / float(m.group(1))
    line += f'; roofline {roof:.2f} tok/s; decode/roofline {dec/roof:.3f}'
print(line)"
