#!/usr/bin/env python3
"""The layout check: every source folder belongs to a subsystem, and includes between
subsystems go downward only.

    check_layout.py [ROOT]        # check the tree at ROOT (default: the repository)
    check_layout.py --self-test   # show that each rule fails on a tree that breaks it

Rules, over every `#include "..."` line of every .c and .h file:
  1. Each file lies in one subsystem of LAYERS (the longest folder that contains it).
  2. An include names a header of the same folder, or one whose basename is unique in the
     tree (headers are included by basename; the build exports one folder per library).
  3. A header of another subsystem must sit in a lower layer (a smaller number): two
     subsystems in the same layer do not include each other.
  4. `*_internal.h` is private to its subsystem (tests may include it).
  5. Every subsystem folder that exists has a README.md and is named in
     docs/architecture.md, so the map stays true.
Exit status 0 when the tree is clean, 1 with one line per violation otherwise.
"""
import os
import re
import sys
import tempfile

# (folder, layer): lower layers never include higher ones. Keep docs/architecture.md's
# tree in step with this table.
LAYERS = [
    ("common/base", 0),  # status, log, progress, thread pool, numbers, NUMA
    ("proto", 0),  # the gRPC API (generated *.pb-c.h headers)
    ("common/model", 1),  # checkpoints, config.json, tensor plan, placement, mkmodel
    ("common/text", 1),  # tokenizer, detokenizer, chat template, UTF-8
    ("common/grammar", 2),  # constrained decoding: grammars, token masks
    ("common/net", 2),  # transports, MPI bootstrap, wire protocol, sampling parameters
    ("kernels", 3),  # the kernel table and its CPU variants
    ("worker", 4),  # weights, MLA cache, forward pass, sampler, worker loop
    ("coordinator/grid", 5),  # driving the worker grid, launching it
    ("coordinator/sched", 6),  # scheduler, cache blocks, executor, text output
    ("coordinator/batch", 7),  # durable batch jobs (below both frontends)
    ("coordinator/grpc", 8),  # the gRPC frontend
    ("coordinator/http", 8),  # the OpenAI-compatible HTTP frontend
    ("tools", 9),  # the commands: dsr1, dsr1-worker, dsr1-coordinator, clients
    ("bench", 10),
    ("tests", 10),
]
# Headers made by the build: where they belong.
GENERATED = {"dsr1_build_config.h": None}  # None: any layer may include it
GENERATED_SUFFIX = {".pb-c.h": "proto"}
SKIP_DIRS = {".git", "node_modules", "models", ".cache"}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def subsystem(rel):
    best = None
    for folder, layer in LAYERS:
        if rel == folder or rel.startswith(folder + "/"):
            if best is None or len(folder) > len(best[0]):
                best = (folder, layer)
    return best


def source_files(root):
    for d, dirs, files in os.walk(root):
        rel_d = os.path.relpath(d, root)
        dirs[:] = sorted(
            x for x in dirs
            if x not in SKIP_DIRS and not (rel_d == "." and x.startswith("build")))
        for f in sorted(files):
            if f.endswith((".c", ".h")):
                yield os.path.normpath(os.path.join(rel_d, f))


def check(root):
    errors = []
    files = list(source_files(root))
    headers = {}
    for f in files:
        if f.endswith(".h"):
            headers.setdefault(os.path.basename(f), []).append(f)
    layer_of = dict(LAYERS)

    for f in files:
        own = subsystem(f)
        if own is None:
            errors.append(f"{f}: folder {os.path.dirname(f) or '.'} is in no subsystem "
                          "(add it to LAYERS in tests/layout/check_layout.py)")
            continue
        with open(os.path.join(root, f), encoding="utf-8", errors="replace") as fh:
            lines = fh.readlines()
        for n, line in enumerate(lines, 1):
            m = INCLUDE.match(line)
            if not m:
                continue
            name = m.group(1)
            where = f"{f}:{n}: #include \"{name}\""
            if os.path.exists(os.path.join(root, os.path.dirname(f), name)):
                target = os.path.normpath(os.path.join(os.path.dirname(f), name))
            elif name in GENERATED:
                continue
            elif any(name.endswith(s) for s in GENERATED_SUFFIX):
                target = next(GENERATED_SUFFIX[s] for s in GENERATED_SUFFIX
                              if name.endswith(s)) + "/" + name
            else:
                found = headers.get(os.path.basename(name), [])
                if len(found) != 1:
                    errors.append(f"{where}: {'no such header' if not found else 'ambiguous: ' + ', '.join(found)}")
                    continue
                target = found[0]
            to = subsystem(target)
            if to is None or to[0] == own[0]:
                continue
            if to[1] >= own[1]:
                errors.append(f"{where}: {own[0]} (layer {own[1]}) may not include {target} "
                              f"({to[0]}, layer {to[1]}): includes go downward only")
            elif name.endswith("_internal.h") and own[0] != "tests":
                errors.append(f"{where}: {target} is internal to {to[0]}")

    with open(os.path.join(root, "docs", "architecture.md"), encoding="utf-8") as fh:
        arch = fh.read()
    for folder, _ in LAYERS:
        if not os.path.isdir(os.path.join(root, folder)) or folder in ("tests", "bench"):
            continue
        if not os.path.exists(os.path.join(root, folder, "README.md")):
            errors.append(f"{folder}/: no README.md (what it owns, what it may include)")
        if f"`{folder}/`" not in arch:
            errors.append(f"{folder}/: not named in docs/architecture.md's tree")
    return errors


def self_test():
    """Each rule must be able to fail: break a copy of a minimal tree and check."""
    with tempfile.TemporaryDirectory() as tmp:
        def write(path, text):
            os.makedirs(os.path.dirname(os.path.join(tmp, path)), exist_ok=True)
            with open(os.path.join(tmp, path), "w") as fh:
                fh.write(text)
        names = " ".join(f"`{folder}/`" for folder, _ in LAYERS)
        write("docs/architecture.md", names + "\n")
        for folder in ("common/base", "worker", "coordinator/sched", "common/text"):
            write(f"{folder}/README.md", "x\n")
        write("common/base/status.h", "")
        write("common/text/tok_internal.h", "")
        write("worker/forward.h", '#include "status.h"\n')
        write("coordinator/sched/scheduler.h", '#include "forward.h"\n')
        clean = check(tmp)
        assert clean == [], clean
        cases = [
            ("common/base/log.h", '#include "scheduler.h"\n', "downward only"),
            ("common/text/x.h", '#include "forward.h"\n', "downward only"),
            ("worker/y.c", '#include "tok_internal.h"\n', "internal to"),
            ("worker/z.c", '#include "missing.h"\n', "no such header"),
            ("stray/w.c", "", "in no subsystem"),
        ]
        for path, text, expect in cases:
            write(path, text)
            errs = check(tmp)
            assert any(expect in e for e in errs), (path, expect, errs)
            os.remove(os.path.join(tmp, path))
        write("common/text/status.h", "")
        assert any("ambiguous" in e for e in check(tmp))
        os.remove(os.path.join(tmp, "common/text/status.h"))
        os.remove(os.path.join(tmp, "worker/README.md"))
        assert any("no README.md" in e for e in check(tmp))
    print("self-test: every rule fails on a tree that breaks it")


def main():
    if sys.argv[1:2] == ["--self-test"]:
        self_test()
        return 0
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..")
    errors = check(os.path.abspath(root))
    for e in errors:
        print(e)
    if errors:
        print(f"layout: {len(errors)} violation(s)")
        return 1
    print("layout: every include goes downward")
    return 0


if __name__ == "__main__":
    sys.exit(main())
