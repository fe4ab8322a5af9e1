#!/usr/bin/env python3
"""A client nobody here wrote: the official `openai` npm package (node_modules/openai, a
devDependency installed by deploy/setup.sh) runs openai_sdk_check.mjs against `dsr1 serve`'s
HTTP API on the tiny checkpoint.

usage: test_openai_sdk.py BUILD_ROOT   (exit 77: node or the openai package or the model missing)
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
    srv = serve_util.Server([dsr1, "serve", "--model", model, "--host", "127.0.0.1", "--port", "0",
                             "--api-key", KEY, "--kv-tokens", "8192"])
    c = serve_util.Checks()
    m = re.search(r"HTTP API on http://(\S+):(\d+)", "".join(srv.log))
    if c.expect(m is not None, "the HTTP API's address is printed"):
        r = subprocess.run([node, os.path.join(HERE, "openai_sdk_check.mjs"),
                            f"http://127.0.0.1:{m.group(2)}/v1", KEY, os.path.basename(model)],
                           capture_output=True, text=True, timeout=240)
        print(r.stdout + r.stderr)
        c.expect(r.returncode == 0, "openai SDK checks", f"exit {r.returncode}")
    return srv.finish(c)


if __name__ == "__main__":
    sys.exit(main())
