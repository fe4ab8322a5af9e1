#!/usr/bin/env bash
# The README's first command: set up, build, create the small random `tiny` model, and run
# the engine on it (a prompt prefilled, then 16 greedy tokens decoded).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh build
[ -f models/tiny/config.json ] || ./build/tools/dsr1 mkmodel --preset tiny --out models/tiny
./build/tools/dsr1 inspect --model models/tiny --workers 4
# the prompt "Hello, world" in token ids, then 16 greedy tokens of a random model (gibberish
# by design: the weights are random); the last line is their text
prompt=$(./build/tools/dsr1 tokenize --model models/tiny --text "Hello, world")
ids=$(./build/tools/dsr1 run --model models/tiny --prompt-ids "0,$prompt" --max-tokens 16)
echo "generated ids: $ids"
./build/tools/dsr1 detokenize --model models/tiny --ids "$ids"
echo
