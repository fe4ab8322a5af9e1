#!/usr/bin/env python3
"""Copy a checkpoint with one tile of one FP8 weight zeroed: what a kernel with one wrong tile does.

A tile kernel that drops one TDPBF16PS step (one 32-column step of one 16-row weight tile:
an off-by-one in a K loop, a wrong tile register, a stale B tile) computes every product
with that weight as if the 16 x 32 block of weights under the step were zero. Zeroing the
block in the checkpoint makes that error, end to end through the whole engine, without
touching the kernels, so the accuracy bounds of run_accuracy.sh can be shown to fail on it.

usage: corrupt_tile.py SRC_MODEL_DIR DST_DIR PATTERN:ROW0:COL0[:ROWS:COLS]
  PATTERN is a weight name of the checkpoint or a shell pattern ('*' for every FP8 weight:
  a kernel bug hits the same tile of every product it computes); ROWS x COLS defaults to
  16 x 32. The block is zeroed in every matching F8_E4M3 tensor large enough to hold it.
  DST_DIR gets symlinks to SRC's files except the shards holding those tensors, which are
  copied and changed (e4m3 byte 0x00 is +0).
"""
import fnmatch
import json
import os
import shutil
import struct
import sys


def main():
    if len(sys.argv) != 4:
        print(__doc__.strip().split("\n\n")[-2], file=sys.stderr)
        return 2
    src, dst, spec = sys.argv[1], sys.argv[2], sys.argv[3].split(":")
    pattern, r0, c0 = spec[0], int(spec[1]), int(spec[2])
    nr, nc = (int(spec[3]), int(spec[4])) if len(spec) == 5 else (16, 32)
    with open(os.path.join(src, "model.safetensors.index.json")) as f:
        wmap = json.load(f)["weight_map"]
    names = [t for t in wmap if fnmatch.fnmatchcase(t, pattern)]
    shards = sorted({wmap[t] for t in names})
    if not names:
        print(f"corrupt_tile.py: no tensor matches '{pattern}' in {src}", file=sys.stderr)
        return 1
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if name not in shards and not os.path.exists(os.path.join(dst, name)):
            os.symlink(os.path.abspath(os.path.join(src, name)), os.path.join(dst, name))
    done = 0
    for shard in shards:
        path = os.path.join(dst, shard)
        shutil.copyfile(os.path.join(src, shard), path)
        with open(path, "r+b") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
            for tensor in names:
                info = header.get(tensor)
                if info is None or info["dtype"] != "F8_E4M3":
                    continue
                rows, cols = info["shape"]
                if not (0 <= r0 and r0 + nr <= rows and 0 <= c0 and c0 + nc <= cols):
                    if len(names) == 1:
                        print(f"corrupt_tile.py: block {nr}x{nc} at ({r0},{c0}) outside "
                              f"{rows}x{cols}", file=sys.stderr)
                        return 1
                    continue
                base = 8 + n + info["data_offsets"][0]
                for r in range(r0, r0 + nr):
                    f.seek(base + r * cols + c0)
                    f.write(bytes(nc))
                done += 1
    if done == 0:
        print(f"corrupt_tile.py: no F8_E4M3 tensor matching '{pattern}' holds the block",
              file=sys.stderr)
        return 1
    print(f"corrupt_tile.py: [{r0}:{r0 + nr}, {c0}:{c0 + nc}] = 0 in {done} FP8 tensor(s) "
          f"matching '{pattern}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
