#!/usr/bin/env python3
"""Load test of `dsr1 serve` on the tiny checkpoint: rounds of 200 concurrent streaming
Generate requests, a mix of ones read to the end, ones the client cancels mid-stream, ones
with short deadlines and ones ended by the Abort RPC. After each round the server must go
idle (nothing queued or running, no cache block held by a request: cached prefix blocks
are allowed) and still answer; the second round must not grow the server's memory (RSS)
beyond a bound over the first (warm-up) round.

usage: test_load.py BUILD_ROOT [ROUNDS] [REQUESTS]   (exit 77: grpcio etc. missing)
Run with /usr/bin/python3 (Debian's python3-grpcio).
"""
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_util  # noqa: E402

RSS_GROWTH_LIMIT = 16 << 20  # bytes the last round may add over the first (seen: 4 MiB)
KINDS = ("complete", "cancel", "deadline", "abort")


class Load:
    def __init__(self, grpc, pb, stub, checks, seed):
        self.grpc, self.pb, self.stub, self.c = grpc, pb, stub, checks
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.outcomes = {}

    def note(self, kind, outcome):
        with self.lock:
            self.outcomes[(kind, outcome)] = self.outcomes.get((kind, outcome), 0) + 1

    def request(self, n, kind, rid):
        pb, rng = self.pb, self.rng
        prompt = [rng.randrange(2, 128000) for _ in range(rng.randrange(4, 96))]
        if kind == "complete":
            s = pb.SamplingParams(temperature=rng.choice([0.0, 0.7, 1.0]), seed=n,
                                  max_tokens=rng.randrange(1, 24))
        else:
            s = pb.SamplingParams(temperature=0.8, seed=n, max_tokens=rng.randrange(64, 256),
                                  ignore_eos=True)
        return pb.GenerateRequest(request_id=rid, input=pb.Input(token_ids=pb.TokenIds(ids=prompt)),
                                  sampling=s)

    def one(self, n, kind, start):
        """Runs request n of the given kind; records how it ended."""
        S, rng = self.grpc.StatusCode, self.rng
        rid = f"load-{n}-{kind}"
        with self.lock:
            req = self.request(n, kind, rid)
            timeout = rng.uniform(0.05, 0.6) if kind == "deadline" else 120
            cut = rng.randrange(1, 6)
        start.wait()
        call = self.stub.Generate(req, timeout=timeout)
        ids, final = [], None
        try:
            for r in call:
                if r.HasField("delta"):
                    ids.extend(r.delta.token_ids)
                    if kind == "cancel" and len(ids) >= cut:
                        call.cancel()
                    if kind == "abort" and len(ids) >= cut:
                        self.stub.Abort(self.pb.AbortRequest(request_ids=[rid]), timeout=30)
                        cut = 1 << 30
                else:
                    final = r.final
        except self.grpc.RpcError as e:
            ok = {"cancel": S.CANCELLED, "deadline": S.DEADLINE_EXCEEDED}.get(kind)
            self.c.expect(e.code() == ok, f"{rid}: status", f"{e.code()}: {e.details()}")
            self.note(kind, e.code().name)
            return
        if final is None:
            self.c.expect(False, f"{rid}: stream ended without a final message")
            return
        self.note(kind, self.pb.FinishReason.Name(final.finish_reason))
        self.c.expect(list(final.token_ids) == ids, f"{rid}: deltas add up to the final ids")
        self.c.expect(final.usage.completion_tokens == len(ids), f"{rid}: usage")
        # a request may finish before its cancel, deadline or abort reaches the server
        want = {"complete": (self.pb.LENGTH, self.pb.STOP), "abort": (self.pb.ABORT, self.pb.LENGTH),
                "deadline": (self.pb.LENGTH,), "cancel": (self.pb.LENGTH,)}[kind]
        self.c.expect(final.finish_reason in want, f"{rid}: finish reason",
                      self.pb.FinishReason.Name(final.finish_reason))

    def round(self, n_requests, base):
        start = threading.Event()
        threads = [threading.Thread(target=self.one,
                                    args=(base + i, KINDS[i % len(KINDS)], start))
                   for i in range(n_requests)]
        for t in threads:
            t.start()
        t0 = time.time()
        start.set()
        for t in threads:
            t.join(180)
        self.c.expect(not any(t.is_alive() for t in threads), "every request returned")
        return time.time() - t0


def rss_of(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    build_root = os.path.abspath(sys.argv[1])
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    n_requests = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    dsr1 = os.path.join(build_root, "tools", "dsr1")
    with serve_util.workdir() as tmp:
        pb, pb_grpc, _, _ = serve_util.load_stubs(tmp)
        import grpc
        model = serve_util.tiny_model(dsr1, build_root)
        # a cache small enough that the first round cycles through all of it (so that its
        # pages are resident before RSS is compared) and preemption happens under load
        cmd, env = serve_util.serve_cmd("serve", build_root, model, ["--kv-tokens", "4096"])
        srv = serve_util.Server(cmd, env)
        checks = serve_util.Checks()
        channel = grpc.insecure_channel(srv.target)
        stub = pb_grpc.Dsr1Stub(channel)
        load = Load(grpc, pb, stub, checks, seed=12345)
        rss = []
        try:
            for r in range(rounds):
                secs = load.round(n_requests, r * n_requests)
                si = serve_util.wait_idle(stub, pb, checks, f"round {r + 1}")
                rss.append((si.rss_bytes, rss_of(srv.proc.pid)))
                print(f"round {r + 1}: {n_requests} requests in {secs:.1f} s; server RSS "
                      f"{si.rss_bytes / 2**20:.1f} MiB (/proc: {rss[-1][1] / 2**20:.1f} MiB), "
                      f"cached blocks {si.kv_blocks_cached}/{si.kv_blocks_total}", flush=True)
            print("outcomes:", ", ".join(f"{k}/{o}: {n}" for (k, o), n in
                                         sorted(load.outcomes.items())))
            for kind in KINDS:
                checks.expect(any(k == kind for k, _ in load.outcomes), f"{kind} requests ran")
            checks.expect(load.outcomes.get(("cancel", "CANCELLED"), 0) > 0 and
                          load.outcomes.get(("abort", "ABORT"), 0) > 0,
                          "some requests were cancelled and aborted mid-stream")
            checks.expect(rss[0][0] > 0 and abs(rss[0][0] - rss[0][1]) < max(rss[0][1] // 4, 8 << 20),
                          "GetServerInfo.rss_bytes matches /proc", str(rss[0]))
            if rounds > 1:
                growth = rss[-1][1] - rss[0][1]
                checks.expect(growth < RSS_GROWTH_LIMIT, "RSS after the last round vs the first",
                              f"grew {growth / 2**20:.1f} MiB")
            final = None
            for r in stub.Generate(pb.GenerateRequest(
                    input=pb.Input(token_ids=pb.TokenIds(ids=[5, 6, 7])),
                    sampling=pb.SamplingParams(max_tokens=3, temperature=0.0)), timeout=60):
                final = r.final if r.HasField("final") else final
            checks.expect(final is not None and len(final.token_ids) == 3,
                          "the server still generates after the load")
        except grpc.RpcError as e:
            checks.expect(False, "unexpected RPC error", f"{e.code()}: {e.details()}")
        finally:
            channel.close()
        return srv.finish(checks)


if __name__ == "__main__":
    sys.exit(main())
