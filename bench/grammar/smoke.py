#!/usr/bin/env python3
"""Smoke test of `dsr1-bench grammar` (meson test bench_grammar_smoke): runs it with --json on
the committed sample corpus (bench/grammar/sample, MaskBench format) and checks the report:
every schema compiled, every valid instance accepted, invalid ones rejected, percentiles
ordered; then on a directory with a schema the engine refuses and a file that is not in the
format, which must be counted (with the keyword named), never crash the run.

    smoke.py DSR1_BENCH SAMPLE_DIR MODEL_DIR     (exit 77 = skipped: no tokenizer)
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile


def run(exe, schemas, model):
    p = subprocess.run([exe, "grammar", "--schemas", schemas, "--model", model, "--json"],
                       capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        sys.exit(f"dsr1-bench grammar exited {p.returncode}: {p.stderr}")
    return json.loads(p.stdout)


def check(cond, what, report):
    if not cond:
        sys.exit(f"FAIL: {what}\n{json.dumps(report, indent=1)[:3000]}")


def ordered(r, key):
    q = r[key]
    return 0 <= q["p50"] <= q["p90"] <= q["p99"] <= q["max"] and q["max"] > 0


def main():
    exe, sample, model = sys.argv[1:4]
    if not os.path.exists(os.path.join(model, "tokenizer.json")):
        print(f"skipped: no {model}/tokenizer.json")
        sys.exit(77)
    files = sorted(f for f in os.listdir(sample) if f.endswith(".json"))
    nvalid = ninvalid = 0
    for f in files:
        for t in json.load(open(os.path.join(sample, f)))["tests"]:
            nvalid += t["valid"]
            ninvalid += not t["valid"]
    r = run(exe, sample, model)
    check(r["files"] == len(files) >= 10, "every sample file read", r)
    check(r["compiled"] == r["files"] and r["compiled_pct"] == 100, "every schema compiled", r)
    check(r["valid"] == nvalid and r["valid_accepted"] == nvalid, "every valid instance accepted", r)
    check(r["invalid"] == ninvalid and 0 < r["invalid_rejected"], "invalid instances rejected", r)
    check(r["compile_ms"]["n"] == len(files) and ordered(r, "compile_ms"), "compile percentiles", r)
    check(r["mask_us"]["n"] > nvalid and ordered(r, "mask_us"), "mask percentiles", r)
    check(r["mask_cpu_us"]["n"] == r["mask_us"]["n"] and ordered(r, "mask_cpu_us"), "CPU time", r)
    check(not r["errors"] and not r["valid_rejected"], "no errors", r)

    # Failures are counted, by kind, and the run goes on.
    d = tempfile.mkdtemp()
    try:
        shutil.copy(os.path.join(sample, files[0]), d)
        bad = {"schema": {"type": "object", "not": {"required": ["x"]}},
               "tests": [{"valid": True, "data": {"xa": "b"}}]}
        with open(os.path.join(d, "b_unsupported.json"), "w") as f:
            json.dump(bad, f)
        with open(os.path.join(d, "c_not_maskbench.json"), "w") as f:
            f.write('{"tests": [')
        r = run(exe, d, model)
        check(r["files"] == 3 and r["compiled"] == 1, "one of three compiled", r)
        kinds = {e["kind"]: e["count"] for e in r["errors"]}
        check(kinds.get("unsupported keyword 'not'") == 1, "keyword named", r)
        check(sum(kinds.values()) == 2, "both failures counted", r)
    finally:
        shutil.rmtree(d)
    print("1 passed, 0 failed")


if __name__ == "__main__":
    main()
