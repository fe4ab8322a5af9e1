#!/usr/bin/env python3
"""A client nobody here wrote: the official `openai` npm package (node_modules/openai, a
devDependency installed by deploy/setup.sh) runs openai_sdk_check.mjs against the HTTP API on
the tiny checkpoint: of `dsr1 serve` (mode serve) or of mpirun'd dsr1-coordinator with two
dsr1-worker ranks (mode mpirun).

usage: test_openai_sdk.py BUILD_ROOT [serve|mpirun]
       (exit 77: node, the openai package, the model, or for mpirun MPI/UCX missing)
"""
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "serve"))
import serve_util  # noqa: E402

KEY = "sdk-test-key"


def main():
    build = sys.argv[1]
    node = shutil.which("node")
    if not node:
        serve_util.skip("node missing")
    if not os.path.exists(os.path.join(serve_util.SOURCE_ROOT, "node_modules", "openai")):
        serve_util.skip("node_modules/openai missing (run deploy/setup.sh or npm install)")
    dsr1 = os.path.join(build, "tools", "dsr1")
    model = serve_util.tiny_model(dsr1, build)
    mode = sys.argv[2] if len(sys.argv) > 2 else "serve"
    cmd, env = serve_util.serve_cmd(mode, build, model, ["--api-key", KEY, "--kv-tokens", "8192"])
    srv = serve_util.Server(cmd, env=env)
    c = serve_util.Checks()
    m = re.search(r"HTTP API on http://(\S+):(\d+)", "".join(srv.log))
    if c.expect(m is not None, "the HTTP API's address is printed"):
        r = subprocess.run([node, os.path.join(HERE, "openai_sdk_check.mjs"),
                            f"http://127.0.0.1:{m.group(2)}/v1", KEY, os.path.basename(model)],
                           capture_output=True, text=True, timeout=240)
        print(r.stdout + r.stderr)
        c.expect(r.returncode == 0, "openai SDK checks", f"exit {r.returncode}")
    return srv.finish(c, exit_0=mode == "serve")


if __name__ == "__main__":
    sys.exit(main())
