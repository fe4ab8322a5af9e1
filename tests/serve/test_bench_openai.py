#!/usr/bin/env python3
"""`dsr1-bench serve --backend openai` against `dsr1 serve` on the tiny checkpoint (its HTTP
API, with an API key): 4 streamed /v1/completions requests, 2 at a time, of 8 prompt and 4
output tokens; the --json report must count 4 completed, 0 failed, 32 input and 16 output
tokens, per-request lengths and times that agree; a wrong key must fail every request with
the server's 401 (exit 1); --json-schema with the openai backend is a usage error (exit 2).

usage: test_bench_openai.py BUILD_ROOT     (exit 77: the tiny model or libcurl missing)
"""
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_util  # noqa: E402

KEY = "bench-test-key"


def main():
    build_root = sys.argv[1]
    dsr1 = os.path.join(build_root, "tools", "dsr1")
    bench = os.path.join(build_root, "bench", "dsr1-bench")
    help_text = subprocess.run([bench, "serve", "--help"], capture_output=True, text=True).stdout
    if "not built in" in help_text:
        serve_util.skip("dsr1-bench was built without libcurl")
    checks = serve_util.Checks()

    r = subprocess.run([bench, "serve", "--backend", "openai", "--json-schema", "x.json"],
                       capture_output=True, text=True, timeout=30)
    checks.expect(r.returncode == 2 and "--json-schema needs --backend grpc" in r.stderr,
                  "--json-schema with openai refused", f"exit {r.returncode}: {r.stderr}")

    model = serve_util.tiny_model(dsr1, build_root)
    cmd, env = serve_util.serve_cmd("serve", build_root, model, ["--api-key", KEY])
    server = serve_util.Server(cmd, env)
    m = re.search(r"HTTP API on (http://\S+)", "".join(server.log))
    if not checks.expect(m is not None, "server prints its HTTP address", server.tail()):
        return server.finish(checks)
    base_url = m.group(1)

    with serve_util.workdir() as tmp:
        out = os.path.join(tmp, "r.json")
        args = [bench, "serve", "--backend", "openai", "--base-url", base_url,
                "--num-prompts", "4", "--max-concurrency", "2", "--random-input-len", "8",
                "--random-output-len", "4", "--seed", "7"]
        r = subprocess.run(args + ["--api-key", KEY, "--json", out], capture_output=True,
                           text=True, timeout=60)
        checks.expect(r.returncode == 0, "bench exits 0", f"exit {r.returncode}: {r.stderr}")
        checks.expect("Successful requests:" in r.stdout and "Mean ITL (ms):" in r.stdout,
                      "the report is printed", r.stdout)
        rep = json.load(open(out)) if os.path.exists(out) else {}
        got = {k: rep.get(k) for k in ("backend", "server", "completed", "failed",
                                       "total_input_tokens", "total_output_tokens")}
        want = {"backend": "openai", "server": base_url, "completed": 4, "failed": 0,
                "total_input_tokens": 32, "total_output_tokens": 16}
        checks.expect(got == want, "report counts", f"{got} != {want}")
        checks.expect(rep.get("input_lens") == [8] * 4 and rep.get("output_lens") == [4] * 4,
                      "per-request lengths", f"{rep.get('input_lens')} {rep.get('output_lens')}")
        ttfts, e2els = rep.get("ttfts", []), rep.get("e2els", [])
        checks.expect(len(ttfts) == 4 and all(0 < t <= e for t, e in zip(ttfts, e2els)),
                      "0 < TTFT <= E2E for each request", f"{ttfts} {e2els}")
        checks.expect(rep.get("mean_itl_ms", 0) > 0 and rep.get("mean_tpot_ms", 0) > 0,
                      "ITL and TPOT measured", f"{rep.get('mean_itl_ms')} {rep.get('mean_tpot_ms')}")
        checks.expect(rep.get("errors") == [""] * 4, "no errors", f"{rep.get('errors')}")

        r = subprocess.run(args + ["--api-key", "wrong"], capture_output=True, text=True,
                           timeout=60)
        checks.expect(r.returncode == 1 and "HTTP 401" in r.stderr,
                      "a wrong key fails with the server's 401", f"exit {r.returncode}: {r.stderr}")
    return server.finish(checks)


if __name__ == "__main__":
    sys.exit(main())
