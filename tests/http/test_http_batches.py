#!/usr/bin/env python3
"""OpenAI's Files and Batches API of `dsr1 serve` (with a state directory) driven by the
official `openai` npm package (openai_batches_check.mjs); then every JSON response it
recorded, and the bodies of the batch's output and error lines, are validated against
OpenAI's published schemas (openapi/); uploads built by hand; a gRPC batch is not one of this
API's; then the server is stopped while a batch runs and restarted on the same state
directory: the finished batches and files are still there, and the cut batch finishes with
every item once, each equal to the same request sent directly.

usage: test_http_batches.py BUILD_ROOT
       (exit 77: node, the openai package or the tiny model missing)
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "serve"))
sys.path.insert(0, HERE)
import openai_spec  # noqa: E402
import serve_util  # noqa: E402

KEY = "batch-test-key"


def schema_of(method, path, status):
    """The schema a recorded response must satisfy."""
    if status >= 400:
        return "ErrorResponse"
    if path.endswith("/files"):
        return "OpenAIFile" if method == "POST" else "ListFilesResponse"
    if re.search(r"/files/[^/]+$", path):
        return "DeleteFileResponse" if method == "DELETE" else "OpenAIFile"
    if path.endswith("/batches"):
        return "Batch" if method == "POST" else "ListBatchesResponse"
    if re.search(r"/batches/[^/]+(/cancel)?$", path):
        return "Batch"
    if path.endswith("/chat/completions"):
        return "CreateChatCompletionResponse"
    if path.endswith("/completions"):
        return "CreateCompletionResponse"
    return None


def get(port, path):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def multipart(parts):
    """A multipart/form-data body of (name, filename or None, bytes) parts."""
    b = "dsr1-test-boundary"
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{b}\r\nContent-Disposition: {disp}\r\n".encode()
        if filename:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def post_raw(port, body, ctype, key=KEY):
    """(status, parsed JSON answer) of POST /v1/files with this body."""
    headers = {"Content-Type": ctype}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/files", data=body, method="POST",
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def upload_checks(c, port):
    """Uploads built by hand: field order, missing fields, two files, not multipart, no key;
    every answer a valid OpenAIFile or ErrorResponse."""
    data = b'{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {}}\n'
    cases = [
        ("purpose before file", [("purpose", None, b"batch"), ("file", "p.jsonl", data)], 200, None),
        ("an empty file", [("file", "e.jsonl", b""), ("purpose", None, b"batch")], 200, None),
        ("no purpose", [("file", "p.jsonl", data)], 400, "purpose"),
        ("purpose vision", [("file", "p.jsonl", data), ("purpose", None, b"vision")], 400,
         "purpose"),
        ("purpose vision first", [("purpose", None, b"vision"), ("file", "p.jsonl", data)], 400,
         "purpose"),
        ("no file", [("purpose", None, b"batch")], 400, "file"),
        ("two files", [("file", "a.jsonl", data), ("file", "b.jsonl", data),
                       ("purpose", None, b"batch")], 400, "file"),
    ]
    for label, parts, want, param in cases:
        body, ctype = multipart(parts)
        status, ans = post_raw(port, body, ctype)
        c.expect(status == want, f"upload, {label}: status {want}", f"{status} {ans}")
        if want == 200:
            size = len(parts[1][2]) if parts[0][0] == "purpose" else len(parts[0][2])
            c.expect(ans.get("bytes") == size and ans.get("purpose") == "batch",
                     f"upload, {label}: the file object", str(ans))
        else:
            c.expect(ans.get("error", {}).get("param") == param,
                     f"upload, {label}: param {param}", str(ans))
        if openai_spec.available:
            errs = openai_spec.errors("OpenAIFile" if want == 200 else "ErrorResponse", ans)
            c.expect(not errs, f"upload, {label}: valid answer", str(errs[:3]))
    status, ans = post_raw(port, b'{"purpose": "batch"}', "application/json")
    c.expect(status == 400 and "multipart" in ans["error"]["message"], "upload as JSON: 400",
             f"{status} {ans}")
    body, ctype = multipart([("file", "p.jsonl", data), ("purpose", None, b"batch")])
    status, ans = post_raw(port, body, ctype, key=None)
    c.expect(status == 401, "upload without the API key: 401", f"{status} {ans}")


def grpc_batch_hidden(c, srv, port, tmp):
    """A batch made through gRPC (format grpc) is not one of this API's: 404 and not listed.
    Skipped without grpcio/protoc."""
    try:
        import grpc
    except ImportError:
        print("grpcio missing: the gRPC batch check is skipped")
        return
    if not shutil.which("protoc") or not os.access(serve_util.GRPC_PLUGIN, os.X_OK):
        print("protoc missing: the gRPC batch check is skipped")
        return
    pb, pb_grpc, _, _ = serve_util.load_stubs(tmp)
    api = pb_grpc.Dsr1Stub(grpc.insecure_channel(srv.target))
    items = [pb.BatchItem(input=pb.Input(text="Once"),
                          sampling=pb.SamplingParams(temperature=0, max_tokens=2))]
    r = api.SubmitBatch(pb.SubmitBatchRequest(batch_id="grpc-made", items=items), timeout=60,
                        metadata=[("authorization", f"Bearer {KEY}")])
    c.expect(r.created, "a gRPC batch created")
    try:
        get(port, "/v1/batches/grpc-made")
        c.expect(False, "a gRPC batch through /v1/batches/{id}: 404", "found")
    except urllib.error.HTTPError as e:
        c.expect(e.code == 404, "a gRPC batch through /v1/batches/{id}: 404", str(e.code))
    ids = [b["id"] for b in get(port, "/v1/batches?limit=100")["data"]]
    c.expect("grpc-made" not in ids, "a gRPC batch is not listed", str(ids))


def post_json(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST",
                                 data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {KEY}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def content(port, file_id):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/files/{file_id}/content",
                                 headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return [json.loads(x) for x in r.read().decode().splitlines() if x]


RESUME_ITEMS = 48


def start_long_batch(c, port):
    """A batch of greedy items long enough to be cut by a restart; returns its id."""
    lines = [{"custom_id": f"long-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"max_tokens": 200, "ignore_eos": True, "temperature": 0,
                       "messages": [{"role": "user", "content": f"Tell a story ({i})."}]}}
             for i in range(RESUME_ITEMS)]
    body, ctype = multipart([("file", "resume.jsonl",
                              "".join(json.dumps(x) + "\n" for x in lines).encode()),
                             ("purpose", None, b"batch")])
    status, f = post_raw(port, body, ctype)
    b = post_json(port, "/v1/batches", {"input_file_id": f["id"], "completion_window": "24h",
                                       "endpoint": "/v1/chat/completions"})
    t0 = time.time()
    while time.time() - t0 < 120:  # until some items are done, not all
        b = get(port, f"/v1/batches/{b['id']}")
        if b["request_counts"]["completed"] >= 1:
            break
        time.sleep(0.05)
    print(f"stopping the server with {b['request_counts']} done of the resumed batch")
    c.expect(b["status"] == "in_progress", "the batch runs when the server stops", b["status"])
    return b["id"], lines


def check_resumed(c, port, bid, lines):
    """The batch cut by the restart finishes: every item once, each as if run directly."""
    t0 = time.time()
    while True:
        b = get(port, f"/v1/batches/{bid}")
        if b["status"] not in ("validating", "in_progress", "finalizing") or time.time() - t0 > 180:
            break
        time.sleep(0.2)
    c.expect(b["status"] == "completed" and b["request_counts"]["completed"] == RESUME_ITEMS and
             b["request_counts"]["failed"] == 0, "the resumed batch completed", json.dumps(b))
    if not b["output_file_id"]:
        return
    out = content(port, b["output_file_id"])
    ids = sorted(x["custom_id"] for x in out)
    c.expect(ids == sorted(x["custom_id"] for x in lines), "resumed: every custom_id once",
             str(ids))
    for line in lines[:3] + lines[-2:]:
        direct = post_json(port, "/v1/chat/completions", line["body"])
        got = [x for x in out if x["custom_id"] == line["custom_id"]]
        c.expect(got and got[0]["response"]["body"]["choices"][0]["message"] ==
                 direct["choices"][0]["message"], f"resumed: {line['custom_id']} equals direct")


def metrics_checks(c, port):
    """/metrics counts the store's work: every committed result and the files."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    v = {}
    for ln in text.splitlines():
        if ln and not ln.startswith("#"):
            name, _, val = ln.rpartition(" ")
            v[name.split("{")[0]] = float(val)
    batches = get(port, "/v1/batches?limit=100")["data"]
    done = sum(b["request_counts"]["completed"] + b["request_counts"]["failed"] for b in batches)
    c.expect(v.get("dsr1_batch_results_committed_total", -1) >= done > 0,
             "metrics: every finished item's result counted as committed",
             f"{v.get('dsr1_batch_results_committed_total')} vs {done}")
    c.expect(0 < v.get("dsr1_batch_commits_total", 0) <= v.get("dsr1_batch_results_committed_total", 0),
             "metrics: results group-committed", str(v.get("dsr1_batch_commits_total")))
    files = get(port, "/v1/files?limit=10000")["data"]
    c.expect(v.get("dsr1_files") == len(files) and
             v.get("dsr1_file_bytes") == sum(f["bytes"] for f in files),
             "metrics: the store's files and bytes",
             f"{v.get('dsr1_files')}, {v.get('dsr1_file_bytes')} vs {len(files)} files")
    for name in ("dsr1_batch_items_running", "dsr1_batch_items_waiting",
                 "dsr1_batch_preemptions_total", "dsr1_batch_jobs_active", "dsr1_batch_items_pending"):
        c.expect(name in v, f"metrics: {name}")


def start(dsr1, model, state):
    srv = serve_util.Server([dsr1, "serve", "--model", model, "--host", "127.0.0.1", "--port", "0",
                             "--api-key", KEY, "--kv-tokens", "16384", "--state-dir", state])
    m = re.search(r"HTTP API on http://(\S+):(\d+)", "".join(srv.log))
    return srv, (int(m.group(2)) if m else None)


def main():
    build = sys.argv[1]
    node = shutil.which("node")
    if not node:
        serve_util.skip("node missing")
    if not os.path.exists(os.path.join(serve_util.SOURCE_ROOT, "node_modules", "openai")):
        serve_util.skip("node_modules/openai missing (run deploy/setup.sh or npm install)")
    dsr1 = os.path.join(build, "tools", "dsr1")
    model = serve_util.tiny_model(dsr1, build)
    c = serve_util.Checks()
    with tempfile.TemporaryDirectory(prefix="dsr1-batches-test-") as tmp:
        state = os.path.join(tmp, "state")
        srv, port = start(dsr1, model, state)
        if not c.expect(port is not None, "the HTTP API's address is printed"):
            return srv.finish(c)
        upload_checks(c, port)
        rec = os.path.join(tmp, "records.json")
        r = subprocess.run([node, os.path.join(HERE, "openai_batches_check.mjs"),
                            f"http://127.0.0.1:{port}/v1", KEY, os.path.basename(model), rec],
                           capture_output=True, text=True, timeout=400)
        print(r.stdout + r.stderr)
        c.expect(r.returncode == 0, "openai SDK batch checks", f"exit {r.returncode}")
        if not os.path.exists(rec):
            return srv.finish(c)
        with open(rec) as f:
            got = json.load(f)
        if openai_spec.available:
            seen = set()
            for x in got["records"]:
                name = schema_of(x["method"], x["path"], x["status"])
                if not c.expect(name is not None, "a schema for every response", x["path"]):
                    continue
                seen.add(name)
                errs = openai_spec.errors(name, x["body"])
                c.expect(not errs, f"{x['method']} {x['path']} ({x['status']}) is a valid {name}",
                         f"{errs[:3]} {json.dumps(x['body'])[:300]}")
            c.expect(seen >= {"OpenAIFile", "ListFilesResponse", "DeleteFileResponse", "Batch",
                              "ListBatchesResponse", "ErrorResponse"},
                     "every kind of response validated", str(sorted(seen)))
            for line in got["outputs"]:
                errs = openai_spec.errors("CreateChatCompletionResponse", line["response"]["body"])
                c.expect(not errs, f"output line {line['custom_id']}: a valid chat.completion",
                         str(errs[:3]))
            for line in got["completions"]:
                errs = openai_spec.errors("CreateCompletionResponse", line["response"]["body"])
                c.expect(not errs, f"output line {line['custom_id']}: a valid text_completion",
                         str(errs[:3]))
            for line in got["errors"]:
                c.expect(set(line) == {"id", "custom_id", "response", "error"} and
                         set(line["error"]) >= {"code", "message"}, "error line: shape",
                         json.dumps(line))
        else:
            print("python3-jsonschema missing: responses not validated against the schemas")
        grpc_batch_hidden(c, srv, port, tmp)
        metrics_checks(c, port)
        # a restart on the same state directory keeps the batches and their files
        bid, long_lines = start_long_batch(c, port)
        before = [b for b in get(port, "/v1/batches?limit=100")["data"] if b["id"] != bid]
        rc = srv.stop()
        c.expect(rc == 0, "server exits 0 on SIGTERM", f"exit {rc}")
        srv, port = start(dsr1, model, state)
        if c.expect(port is not None, "restarted"):
            after = [b for b in get(port, "/v1/batches?limit=100")["data"] if b["id"] != bid]
            key = lambda b: (b["id"], b["status"], b["request_counts"], b["output_file_id"])  # noqa
            c.expect([key(b) for b in after] == [key(b) for b in before],
                     "batches after a restart", f"{after} vs {before}")
            check_resumed(c, port, bid, long_lines)
            done = [b for b in after if b["output_file_id"]]
            if c.expect(done, "a batch with an output file"):
                f = get(port, "/v1/files/" + done[0]["output_file_id"])
                c.expect(f["purpose"] == "batch_output", "its output file after a restart", str(f))
    return srv.finish(c)


if __name__ == "__main__":
    sys.exit(main())
