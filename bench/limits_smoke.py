#!/usr/bin/env python3
"""Smoke test of `dsr1-bench limits` (meson test bench_limits): runs `limits --quick --json`
and checks the report's four lines against this CPU's flags in /proc/cpuinfo: a positive
number for what the CPU has (read bandwidth always, the fp32 FMA peak with AVX-512F + FMA,
the vdpbf16ps peak with AVX512_BF16), "n/a (reason)" for what it lacks (AMX without
amx_tile + amx_bf16: never a SIGILL), the JSON equal to the lines (null where n/a); then
--help and a stray argument. A few seconds.

    limits_smoke.py DSR1_BENCH     (exit 77 = skipped: not Linux on x86-64)
"""
import json
import os
import re
import subprocess
import sys
import tempfile

LINES = [  # label, JSON key, unit
    ("streaming read", "read_gbps", "GB/s"),
    ("AVX-512 fp32 FMA peak", "fma_peak_gflops", "GFLOP/s"),
    ("AVX512_BF16 vdpbf16ps peak", "bf16_peak_gflops", "GFLOP/s"),
    ("AMX bf16 TDPBF16PS peak", "amx_bf16_peak_gflops", "GFLOP/s"),
]


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def fail(what, out):
    sys.exit(f"FAIL: {what}\n{out}")


def main():
    exe = sys.argv[1]
    if not os.path.exists("/proc/cpuinfo") or os.uname().machine != "x86_64":
        print("skipped: not Linux on x86-64")
        sys.exit(77)
    flags = cpu_flags()
    with tempfile.TemporaryDirectory() as tmp:
        jpath = os.path.join(tmp, "limits.json")
        p = subprocess.run([exe, "limits", "--quick", "--json", jpath], capture_output=True,
                           text=True, timeout=60)
        out = p.stdout + p.stderr
        if p.returncode != 0:
            fail(f"dsr1-bench limits exited {p.returncode}", out)
        with open(jpath) as f:
            report = json.load(f)
    lines = p.stdout.splitlines()
    m = re.match(r"dsr1-bench limits --quick: (\d+) threads$", lines[0] if lines else "")
    if not m or int(m.group(1)) < 1 or report.get("threads") != int(m.group(1)):
        fail("first line: 'dsr1-bench limits --quick: N threads', N as in the JSON", out)
    got = {}
    for label, key, unit in LINES:
        line = next((l for l in lines if l.startswith(label + " ")), None)
        if line is None:
            fail(f"no '{label}' line", out)
        rest = line[len(label):].strip()
        num = re.fullmatch(r"(\d+\.\d) " + re.escape(unit), rest)
        na = re.fullmatch(r"n/a \((.+)\)", rest)
        if not num and not na:
            fail(f"'{label}': neither '<number> {unit}' nor 'n/a (reason)': {rest!r}", out)
        value = float(num.group(1)) if num else None
        if value is not None and (report.get(key) is None or abs(report[key] - value) > 0.06):
            fail(f"JSON {key} = {report.get(key)} but the line says {value}", out)
        if value is None and report.get(key, 0) is not None:
            fail(f"JSON {key} should be null (n/a)", out)
        got[key] = (value, na.group(1) if na else None)

    def positive(key, why):
        if got[key][0] is None or got[key][0] <= 0:
            fail(f"{key}: expected a positive number ({why}), got n/a ({got[key][1]})", out)

    positive("read_gbps", "always measured")
    if {"avx512f", "fma"} <= flags:
        positive("fma_peak_gflops", "the CPU has AVX-512F and FMA")
    elif got["fma_peak_gflops"][0] is not None:
        fail("fma_peak_gflops measured on a CPU without AVX-512F", out)
    if {"avx512f", "avx512_bf16"} <= flags:
        # n/a only where this build's compiler lacks -mavx512bf16
        if got["bf16_peak_gflops"][0] is None and "build" not in got["bf16_peak_gflops"][1]:
            positive("bf16_peak_gflops", "the CPU has AVX512_BF16")
    elif got["bf16_peak_gflops"][0] is not None:
        fail("bf16_peak_gflops measured on a CPU without AVX512_BF16", out)
    if not {"amx_tile", "amx_bf16"} <= flags and got["amx_bf16_peak_gflops"][0] is not None:
        fail("amx_bf16_peak_gflops measured on a CPU without AMX", out)
    # with AMX: a number, or n/a where Linux refuses the tile permission or the build lacks it

    h = subprocess.run([exe, "limits", "--help"], capture_output=True, text=True, timeout=10)
    if h.returncode != 0 or "--quick" not in h.stdout or "--json" not in h.stdout:
        fail("limits --help: exit 0 with the options on stdout", h.stdout + h.stderr)
    b = subprocess.run([exe, "limits", "extra"], capture_output=True, text=True, timeout=10)
    if b.returncode != 2 or "unexpected argument 'extra'" not in b.stderr:
        fail("limits extra: exit 2 naming the argument", b.stdout + b.stderr)
    top = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=10)
    if not re.search(r"^\s+limits\s", top.stdout, re.M):
        fail("dsr1-bench --help does not list limits", top.stdout)
    for label, key, unit in LINES:
        v, why = got[key]
        print(f"{label}: {v} {unit}" if v is not None else f"{label}: n/a ({why})")
    print("ok")


if __name__ == "__main__":
    main()
