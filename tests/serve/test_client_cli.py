#!/usr/bin/env python3
"""`dsr1 client` against `dsr1 serve` on the tiny checkpoint, checked against grpcio stubs
made from proto/*.proto: generate (streamed text on stdout, reasoning and the summary on
stderr, --json equal to grpcio's Completion for the same greedy and seeded requests,
--sampling), batch files (every input form, custom ids, per-line sampling over the flags'
defaults, --wait --out results equal to GetBatch's, idempotent resubmission), status,
list, cancel, info, the API key from flag and environment, and the errors: gRPC codes as
"dsr1 client: CODE: message" with exit 1, usage errors with exit 2, bad batch lines named.

usage: test_client_cli.py BUILD_ROOT     (exit 77: grpcio, protoc or the model missing)
Run with /usr/bin/python3 (Debian's python3-grpcio).
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_util  # noqa: E402

KEY = "cli-test-key"


class T:
    def __init__(self, dsr1, target, grpc, pb, pb_grpc, tmp, checks):
        self.dsr1, self.target, self.tmp = dsr1, target, tmp
        self.grpc, self.pb = grpc, pb
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.Dsr1Stub(self.channel)
        self.kw = {"metadata": [("authorization", f"Bearer {KEY}")], "timeout": 60}
        self.c = checks

    def client(self, *args, key=KEY, stdin=None):
        cmd = [self.dsr1, "client", *args]
        if args:
            cmd[3:3] = ["--server", self.target, "--timeout-s", "60"] + (
                ["--api-key", key] if key else [])
        return subprocess.run(cmd, capture_output=True, text=True, input=stdin, timeout=120)

    def grpc_final(self, req):
        final = None
        for r in self.stub.Generate(req, **self.kw):
            if r.HasField("final"):
                final = r.final
        return final

    def write(self, name, lines):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write("".join(json.dumps(x) + "\n" if isinstance(x, dict) else x + "\n"
                            for x in lines))
        return path

    # ---- generate --------------------------------------------------------------------------

    def generate(self):
        pb, c = self.pb, self.c
        r = self.client("generate", "--ids", "5,6,7", "--max-tokens", "6", "--temperature", "0",
                        "--json")
        c.expect(r.returncode == 0, "generate --json exit 0", r.stderr)
        got = json.loads(r.stdout) if r.returncode == 0 else {}
        want = self.grpc_final(pb.GenerateRequest(
            input=pb.Input(token_ids=pb.TokenIds(ids=[5, 6, 7])),
            sampling=pb.SamplingParams(max_tokens=6, temperature=0.0)))
        c.expect(got.get("token_ids") == list(want.token_ids) and
                 got.get("content") == want.content and got.get("finish_reason") == "LENGTH" and
                 got.get("usage", {}).get("completion_tokens") == 6,
                 "generate --json == grpcio (greedy)", r.stdout[:300])

        args = ["--chat-user", "Tell me a story", "--system", "Be brief", "--max-tokens", "12",
                "--temperature", "0.8", "--top-p", "0.9", "--top-k", "40", "--seed", "77"]
        r = self.client("generate", *args, "--json")
        got = json.loads(r.stdout) if r.returncode == 0 else {}
        chat = pb.Input(chat=pb.ChatMessages(messages=[
            pb.ChatMessage(role="system", content="Be brief"),
            pb.ChatMessage(role="user", content="Tell me a story")]))
        want = self.grpc_final(pb.GenerateRequest(input=chat, sampling=pb.SamplingParams(
            max_tokens=12, temperature=0.8, top_p=0.9, top_k=40, seed=77)))
        c.expect(got.get("token_ids") == list(want.token_ids) and
                 got.get("reasoning_content") == want.reasoning_content,
                 "generate --chat-user --system (seeded) == grpcio", r.stdout[:300] + r.stderr)

        r = self.client("generate", *args)
        c.expect(r.returncode == 0 and r.stdout == want.content and
                 r.stderr.startswith(want.reasoning_content),
                 "generate streams content to stdout, reasoning to stderr",
                 f"{r.stdout[:80]!r} / {r.stderr[:80]!r}")
        last = r.stderr.rstrip("\n").split("\n")[-1]
        c.expect(last.startswith("[LENGTH; tokens: ") and "12 completion" in last and
                 "first token" in last, "generate summary line", repr(last))

        r = self.client("generate", "--text", "Hello", "--max-tokens", "4", "--sampling",
                        '{"logprobs": true, "top_logprobs": 2, "temperature": 0}', "--json")
        got = json.loads(r.stdout) if r.returncode == 0 else {}
        lps = got.get("logprobs", [])
        c.expect(len(lps) == 4 and all(len(x["top"]) == 2 for x in lps) and
                 [x["token_id"] for x in lps] == got.get("token_ids"),
                 "generate --sampling JSON (logprobs)", r.stdout[:300] + r.stderr)

    # ---- batches ---------------------------------------------------------------------------

    def batch(self):
        pb, c = self.pb, self.c
        lines = [
            {"custom_id": "t", "text": "Once upon a time", "max_tokens": 3},
            {"custom_id": "m", "messages": [{"role": "user", "content": "Hi"}], "seed": 9,
             "temperature": 0.9},
            {"ids": [0, 100, 200], "stop": ["\u0001never"], "temperature": 0},
            "",
            {"custom_id": "d", "text": "Defaults only"},
        ]
        path = self.write("jobs.jsonl", lines)
        out = os.path.join(self.tmp, "results.jsonl")
        bid = f"cli-{os.getpid()}"
        r = self.client("batch", "--file", path, "--batch-id", bid, "--max-tokens", "5",
                        "--wait", "--out", out)
        c.expect(r.returncode == 0 and r.stdout == bid + "\n" and "created, 4 items" in r.stderr,
                 "batch --wait: id on stdout, created", f"{r.stdout!r} {r.stderr!r}")
        results = [json.loads(x) for x in open(out)] if os.path.exists(out) else []
        by_index = {x["index"]: x for x in results}
        c.expect(sorted(by_index) == [0, 1, 2, 3], "batch results: one line per item",
                 str(sorted(by_index)))
        st = self.stub.GetBatch(pb.GetBatchRequest(batch_id=bid, include_results=True),
                                **self.kw)
        for x in st.results:
            mine = by_index.get(x.index, {}).get("result", {})
            c.expect(mine.get("token_ids") == list(x.result.token_ids) and
                     by_index[x.index].get("custom_id") == x.custom_id,
                     f"batch result {x.index} == GetBatch's", str(mine)[:200])
        lens = {i: len(by_index.get(i, {}).get("result", {}).get("token_ids", []))
                for i in range(4)}
        c.expect(lens[0] == 3 and lens[1] == 5 and lens[3] == 5,
                 "a line's max_tokens overrides the flag's, the flag is the default", str(lens))
        c.expect([by_index.get(i, {}).get("custom_id") for i in range(4)] == ["t", "m", "", "d"],
                 "custom ids echoed")

        r = self.client("batch", "--file", path, "--batch-id", bid, "--max-tokens", "5")
        c.expect(r.returncode == 0 and r.stdout == bid + "\n" and
                 "already submitted" in r.stderr, "batch resubmitted: idempotent", r.stderr)
        r = self.client("status", bid)
        c.expect(r.returncode == 0 and r.stdout.startswith(f"{bid}: COMPLETED, 4/4 finished "
                                                           "(0 failed, 0 aborted)"),
                 "status line", r.stdout + r.stderr)
        r = self.client("status", bid, "--results")
        got = json.loads(r.stdout) if r.returncode == 0 else {}
        c.expect(got.get("state") == "COMPLETED" and len(got.get("results", [])) == 4,
                 "status --results JSON", r.stdout[:200])
        r = self.client("list", "--json")
        got = json.loads(r.stdout) if r.returncode == 0 else {}
        c.expect(bid in [b["batch_id"] for b in got.get("batches", [])], "list --json",
                 r.stdout[:200])
        r = self.client("list", "--limit", "1")
        c.expect(r.returncode == 0 and len(r.stdout.splitlines()) == 1, "list --limit 1",
                 r.stdout)

        long = self.write("long.jsonl", [{"text": f"story {i}", "max_tokens": 500,
                                          "ignore_eos": True} for i in range(4)])
        r = self.client("batch", "--file", long, "--batch-id", bid + "-long")
        r = self.client("cancel", bid + "-long", "--json")
        got = json.loads(r.stdout) if r.returncode == 0 else {}
        c.expect(got.get("state") in ("CANCELLING", "CANCELLED"), "cancel --json",
                 r.stdout[:200] + r.stderr)
        r = self.client("list", "--limit", "1")
        c.expect(r.returncode == 0 and r.stdout.startswith(bid + "-long:") and
                 f"--after {bid}-long" in r.stderr, "list --limit 1: the next page's --after",
                 r.stdout + r.stderr)
        r = self.client("list", "--limit", "1", "--after", bid + "-long")
        c.expect(r.returncode == 0 and r.stdout.startswith(bid + ":"), "list --after: next page",
                 r.stdout + r.stderr)
        r = self.client("batch", "--file", "-", "--wait", stdin='{"text": "x", "max_tokens": 2}\n')
        lines = r.stdout.splitlines()
        c.expect(r.returncode == 0 and len(lines) == 1 and
                 json.loads(lines[0])["result"]["usage"]["completion_tokens"] == 2,
                 "batch from stdin, --wait results on stdout", r.stdout + r.stderr)
        # a path that is a pipe (as deploy/quickstart.sh passes it): read once, never counted
        r = self.client("batch", "--file", "/dev/stdin", "--wait",
                        stdin='{"text": "x", "max_tokens": 2}\n{"text": "y", "max_tokens": 3}\n')
        lines = r.stdout.splitlines()
        c.expect(r.returncode == 0 and len(lines) == 2 and
                 sorted(json.loads(x)["result"]["usage"]["completion_tokens"] for x in lines) == [2, 3],
                 "batch from /dev/stdin (a pipe), both items", r.stdout + r.stderr)

    # ---- info, keys, errors ----------------------------------------------------------------

    def info_and_errors(self):
        c = self.c
        r = self.client("info")
        got = json.loads(r.stdout) if r.returncode == 0 else {}
        c.expect(got.get("health", {}).get("status") == "SERVING" and
                 got.get("model", {}).get("vocab_size") == 129280 and
                 got.get("model", {}).get("config", {}).get("vocab_size") == 129280 and
                 got.get("server", {}).get("kv_blocks_total", 0) > 0,
                 "info JSON", r.stdout[:300] + r.stderr)
        r = subprocess.run([self.dsr1, "client", "info"], capture_output=True, text=True,
                           timeout=60, env={**os.environ, "DSR1_API_KEY": KEY,
                                            "DSR1_SERVER": self.target})
        c.expect(r.returncode == 0, "server and key from DSR1_SERVER, DSR1_API_KEY", r.stderr)

        errors = [
            (["status", "no-such-batch"], KEY, 1, "dsr1 client: NOT_FOUND: "),
            (["cancel", "no-such-batch"], KEY, 1, "dsr1 client: NOT_FOUND: "),
            (["generate", "--ids", "5", "--max-tokens", "0"], KEY, 1,
             "dsr1 client: INVALID_ARGUMENT: "),
            (["generate", "--ids", "5", "--sampling", '{"top_logprobs": 21, "logprobs": true}'],
             KEY, 1, "dsr1 client: INVALID_ARGUMENT: "),
            (["info"], "wrong-key", 1, "dsr1 client: UNAUTHENTICATED: "),
            (["generate", "--ids", "5"], None, 1, "dsr1 client: UNAUTHENTICATED: "),
            (["generate", "--ids", "5", "--file", "x"], KEY, 2, "not an option of 'generate'"),
            (["generate", "--max-tokens", "3"], KEY, 2, "give one of --text"),
            (["generate", "--ids", "5", "--temperature", "warm"], KEY, 2, "--temperature 'warm'"),
            (["generate", "--ids", "5", "--sampling", "[1]"], KEY, 2, "--sampling: not a JSON"),
            (["status"], KEY, 2, "BATCH_ID is required"),
            (["frobnicate"], KEY, 2, "unknown subcommand"),
        ]
        for args, key, rc, msg in errors:
            r = self.client(*args, key=key)
            c.expect(r.returncode == rc and msg in r.stderr, f"error: {' '.join(args)}",
                     f"exit {r.returncode}: {r.stderr.strip()[:200]}")
        bad = self.write("bad.jsonl", [{"text": "ok"}, {"text": "a", "ids": [1]}])
        r = self.client("batch", "--file", bad)
        c.expect(r.returncode == 1 and f"{bad}:2: give exactly one of" in r.stderr,
                 "bad batch line named", r.stderr)
        bad = self.write("bad2.jsonl", [{"text": "ok", "stop": ["a", 3]}])
        r = self.client("batch", "--file", bad)
        c.expect(r.returncode == 1 and "stop[1]: expected a string" in r.stderr,
                 "bad sampling field named", r.stderr)
        bad = self.write("bad3.jsonl", ["{not json"])
        r = self.client("batch", "--file", bad)
        c.expect(r.returncode == 1 and f"{bad}:1:" in r.stderr, "invalid JSON line named",
                 r.stderr)
        r = subprocess.run([self.dsr1, "client", "info", "--server", "127.0.0.1:1",
                            "--timeout-s", "10"], capture_output=True, text=True, timeout=60)
        c.expect(r.returncode == 1 and "dsr1 client: UNAVAILABLE: " in r.stderr,
                 "unreachable server: UNAVAILABLE", r.stderr)


def main():
    build = os.path.abspath(sys.argv[1])
    dsr1 = os.path.join(build, "tools", "dsr1")
    with serve_util.workdir() as tmp:
        pb, pb_grpc, _, _ = serve_util.load_stubs(tmp)
        import grpc
        model = serve_util.tiny_model(dsr1, build)
        cmd, env = serve_util.serve_cmd("serve", build, model, ["--api-key", KEY])
        srv = serve_util.Server(cmd, env)
        t, checks = None, serve_util.Checks()
        try:
            t = T(dsr1, srv.target, grpc, pb, pb_grpc, tmp, checks)
            t.generate()
            t.batch()
            t.info_and_errors()
        finally:
            if t:
                t.channel.close()
        return srv.finish(checks)


if __name__ == "__main__":
    sys.exit(main())
