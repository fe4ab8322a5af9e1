#!/usr/bin/env python3
"""A large batch input through the Files API with flat memory: a generated JSONL of 100,000
chat requests (about 200 MB, seeded) is uploaded with curl (-F file=@...) while the server's
resident memory (/proc/PID/status VmRSS) is sampled; then downloaded back (byte-identical);
an upload one byte over the store's largest file (512 MiB) is refused (413, nothing kept);
then a batch over it is created and validated (every line checked as its endpoint checks a
request) and cancelled. The server's RSS may not grow by more than 64 MiB at any point: the
upload is streamed into the store, the download is sent from the file's descriptor, and the
validation reads the lines a page at a time.

usage: test_http_upload_large.py BUILD_ROOT [LINES]     (exit 77: curl or the model missing)
"""
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "serve"))
import serve_util  # noqa: E402

KEY = "upload-test-key"
RSS_BOUND = 64 << 20
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo"]


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Sampler:
    """The largest RSS of pid seen every 20 ms while running."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop_ = pid, 0, threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop_.is_set():
            try:
                self.peak = max(self.peak, rss(self.pid))
            except OSError:
                return
            time.sleep(0.02)

    def stop(self):
        self.stop_.set()
        self.t.join()
        return self.peak


def make_input(path, n):
    """n chat lines of about 2 KB (a short prompt, padded by the `user` field), seeded."""
    rnd = random.Random(20261206)
    pads = ["".join(rnd.choices(WORDS, k=340))[:1800] for _ in range(256)]
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(n):
            line = json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                               "body": {"messages": [{"role": "user",
                                                      "content": " ".join(rnd.choices(WORDS, k=30))}],
                                        "max_tokens": 4, "seed": i, "user": rnd.choice(pads)}})
            b = (line + "\n").encode()
            f.write(b)
            h.update(b)
    return h.hexdigest()


def api(port, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {KEY}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def main():
    build = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 100000
    curl = shutil.which("curl")
    if not curl:
        serve_util.skip("curl missing")
    dsr1 = os.path.join(build, "tools", "dsr1")
    model = serve_util.tiny_model(dsr1, build)
    c = serve_util.Checks()
    with tempfile.TemporaryDirectory(prefix="dsr1-upload-test-") as tmp:
        src = os.path.join(tmp, "big.jsonl")
        t0 = time.time()
        digest = make_input(src, n)
        size = os.path.getsize(src)
        print(f"{n} lines, {size / 1e6:.1f} MB generated in {time.time() - t0:.1f} s", flush=True)
        srv = serve_util.Server([dsr1, "serve", "--model", model, "--host", "127.0.0.1", "--port",
                                 "0", "--api-key", KEY, "--state-dir", os.path.join(tmp, "state"),
                                 "--http-max-body-bytes", "65536"])
        m = re.search(r"HTTP API on http://(\S+):(\d+)", "".join(srv.log))
        if not c.expect(m is not None, "the HTTP API's address is printed"):
            return srv.finish(c)
        port, pid = int(m.group(2)), srv.proc.pid
        api(port, "GET", "/v1/files")  # warm: the first request's allocations
        base = rss(pid)
        print(f"server RSS before: {base / 2**20:.1f} MiB", flush=True)

        def bounded(label, peak):
            print(f"{label}: peak RSS {peak / 2**20:.1f} MiB (+{(peak - base) / 2**20:.1f})",
                  flush=True)
            c.expect(peak - base < RSS_BOUND, f"{label}: RSS growth under 64 MiB",
                     f"+{(peak - base) / 2**20:.1f} MiB")

        # the upload (the body bound, 64 KiB here, does not apply to it)
        s = Sampler(pid)
        t0 = time.time()
        r = subprocess.run([curl, "-sS", "-H", f"Authorization: Bearer {KEY}", "-F", "purpose=batch",
                            "-F", f"file=@{src}", f"http://127.0.0.1:{port}/v1/files"],
                           capture_output=True, text=True, timeout=600)
        bounded(f"upload ({time.time() - t0:.1f} s)", s.stop())
        try:
            f = json.loads(r.stdout)
        except ValueError:
            f = {}
        if not c.expect(f.get("bytes") == size and f.get("filename") == "big.jsonl",
                        "uploaded: its size and name", r.stdout[:300] + r.stderr[:300]):
            return srv.finish(c)
        # the download, byte-identical
        s = Sampler(pid)
        dst = os.path.join(tmp, "back.jsonl")
        subprocess.run([curl, "-sS", "-H", f"Authorization: Bearer {KEY}", "-o", dst,
                        f"http://127.0.0.1:{port}/v1/files/{f['id']}/content"], timeout=600)
        bounded("download", s.stop())
        h = hashlib.sha256()
        with open(dst, "rb") as g:
            for chunk in iter(lambda: g.read(1 << 20), b""):
                h.update(chunk)
        c.expect(h.hexdigest() == digest, "downloaded: the bytes uploaded")
        os.unlink(dst)
        # one byte over the store's largest file (512 MiB): 413 once the limit is passed,
        # nothing kept (a sparse file: no disk used here)
        huge = os.path.join(tmp, "huge.jsonl")
        with open(huge, "wb") as g:
            g.truncate((512 << 20) + 1)
        s = Sampler(pid)
        r = subprocess.run([curl, "-sS", "-H", f"Authorization: Bearer {KEY}", "-F", "purpose=batch",
                            "-F", f"file=@{huge}", "-w", "\n%{http_code}",
                            f"http://127.0.0.1:{port}/v1/files"],
                           capture_output=True, text=True, timeout=600)
        bounded("an upload over the limit", s.stop())
        os.unlink(huge)
        body, _, code = r.stdout.rpartition("\n")
        try:
            err = json.loads(body).get("error", {})
        except ValueError:
            err = {}
        c.expect(code == "413" and err.get("code") == "file_too_large", "over the limit: 413",
                 f"{code} {body[:300]} {r.stderr[:200]}")
        files = api(port, "GET", "/v1/files")["data"]
        c.expect([x["id"] for x in files] == [f["id"]], "over the limit: no file kept",
                 str(files))
        # a batch over it: validated, then cancelled
        s = Sampler(pid)
        t0 = time.time()
        b = api(port, "POST", "/v1/batches", {"input_file_id": f["id"], "completion_window": "24h",
                                              "endpoint": "/v1/chat/completions"})
        while b["status"] == "validating" and time.time() - t0 < 500:
            time.sleep(0.5)
            b = api(port, "GET", f"/v1/batches/{b['id']}")
        validated = time.time() - t0
        c.expect(b["status"] in ("in_progress", "finalizing", "completed") and
                 b["request_counts"]["total"] == n, "the batch validated",
                 json.dumps(b)[:400])
        b = api(port, "POST", f"/v1/batches/{b['id']}/cancel")
        while b["status"] == "cancelling" and time.time() - t0 < 560:
            time.sleep(0.2)
            b = api(port, "GET", f"/v1/batches/{b['id']}")
        bounded(f"validation ({validated:.1f} s) and cancel", s.stop())
        c.expect(b["status"] == "cancelled", "cancelled", json.dumps(b)[:400])
        return srv.finish(c)


if __name__ == "__main__":
    sys.exit(main())
