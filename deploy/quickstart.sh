#!/usr/bin/env bash
# The README's first command: set up, build, create the small random `tiny` model, and run
# the engine on it (a prompt prefilled, then 16 greedy tokens decoded).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh build
[ -f models/tiny/config.json ] || ./build/tools/dsr1 mkmodel --preset tiny --out models/tiny
./build/tools/dsr1 inspect --model models/tiny --workers 4
./build/tools/dsr1 run --model models/tiny --prompt-ids 0,19923,14,2058,3 --max-tokens 16
