#!/usr/bin/env python3
"""A fixed random subset of a MaskBench directory for `dsr1-bench grammar` and the peers'
drivers: N file names drawn with random.Random(SEED).sample from the sorted listing, linked
(symlinks) into OUT_DIR, so every engine reads the same files.

    python3 bench/grammar/subset.py SRC_DIR OUT_DIR N SEED
"""
import os
import random
import sys


def main():
    src, out, n, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    names = sorted(f for f in os.listdir(src) if f.endswith(".json"))
    pick = random.Random(seed).sample(names, min(n, len(names)))
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        if os.path.islink(os.path.join(out, f)):
            os.unlink(os.path.join(out, f))
    for f in pick:
        os.symlink(os.path.abspath(os.path.join(src, f)), os.path.join(out, f))
    print(f"{out}: {len(pick)} of {len(names)} files (seed {seed})")


if __name__ == "__main__":
    main()
