#!/usr/bin/env python3
"""Batch invariance against DeepSeek's reference, through the gRPC server.

For every golden prompt of ../shared/golden (tiny-a), the reference's teacher-forced
sequence (prompt ids, then its 8 greedy ids) goes to Generate as token ids with
prompt_logprobs, logprobs and top_logprobs 20: row k of the reference's logits is then
served as the top-20 alternatives of prompt position k+1 (and of the one generated token
for the last row). Each served logprob must match the reference's (logit - logsumexp)
within TOL of the row's std, first with the request alone on the server, then while 24
other streaming requests (random prompts, lengths and sampling; some cancelled) arrive and
finish around it, and the two runs must agree bit for bit.

usage: test_golden_serving.py BUILD_ROOT GOLDEN_DIR [TOL] [dsr1 serve flags...]
TOL "none": only alone == busy, bit for bit (the fast precision mode, whose distance from the
reference tests/conformance/accuracy.py bounds: tiny-a's router flips experts under bf16).
Exit 77 without grpcio/protoc, numpy (to make tiny-a) or the golden files.
"""
import json
import os
import random
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_util  # noqa: E402

N_OTHERS = 24


def golden_model(golden_dir):
    """models/tiny-a as tests/conformance/run_golden.sh makes it (make_tiny.py)."""
    model = os.path.join(serve_util.SOURCE_ROOT, "models", "tiny-a")
    if os.path.exists(os.path.join(model, ".complete")):
        return model
    try:
        import numpy  # noqa: F401
    except ImportError:
        serve_util.skip("python3-numpy missing (needed by make_tiny.py)")
    os.makedirs(os.path.dirname(model), exist_ok=True)
    subprocess.run([sys.executable, os.path.join(golden_dir, "make_tiny.py"),
                    os.path.join(golden_dir, "configs", "tiny-a.json"), model], check=True)
    open(os.path.join(model, ".complete"), "w").close()
    return model


def forced_request(pb, seq):
    return pb.GenerateRequest(
        input=pb.Input(token_ids=pb.TokenIds(ids=seq)),
        sampling=pb.SamplingParams(temperature=0, max_tokens=1, logprobs=True, top_logprobs=20,
                                   prompt_logprobs=True))


def served_rows(final):
    """Row k -> {token id: logprob} of its top alternatives and the scored token."""
    rows = []
    for lp in list(final.prompt_logprobs)[1:] + list(final.logprobs):
        rows.append({t.token_id: t.logprob for t in lp.top})
        rows[-1][lp.token_id] = lp.logprob
    return rows


def compare_golden(checks, name, rows, golden_rows, tol):
    checks.expect(len(rows) == len(golden_rows), f"{name}: rows",
                  f"{len(rows)} served, {len(golden_rows)} golden")
    if tol is None:
        return float("nan")
    worst = 0.0
    for k, (got, ref) in enumerate(zip(rows, golden_rows)):
        ref_lp = {t: v - ref["logsumexp"] for t, v in zip(ref["top_ids"], ref["top_logits"])}
        common = [t for t in got if t in ref_lp]
        checks.expect(len(common) >= 18, f"{name}: row {k} top ids",
                      f"only {len(common)} of the served ids are in the reference's top 32")
        for t in common:
            worst = max(worst, abs(got[t] - ref_lp[t]) / ref["std"])
    checks.expect(worst <= tol, f"{name}: logprobs vs golden", f"worst {worst:.3g} std > {tol}")
    return worst


def storm(api, pb, stop, seed):
    """Streams random requests until `stop`, cancelling some mid-stream."""
    rng = random.Random(seed)
    while not stop.is_set():
        ids = [rng.randrange(2, 120000) for _ in range(rng.randrange(3, 90))]
        req = pb.GenerateRequest(input=pb.Input(token_ids=pb.TokenIds(ids=ids)),
                                 sampling=pb.SamplingParams(temperature=rng.choice([0, 0.7, 1.0]),
                                                            seed=rng.randrange(1 << 30),
                                                            max_tokens=rng.randrange(1, 24),
                                                            ignore_eos=True))
        call = api.Generate(req, timeout=120)
        try:
            for i, _ in enumerate(call):
                if rng.random() < 0.05:
                    call.cancel()
                    break
        except Exception:  # cancelled streams raise; the server must just go on
            pass


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    build_root, golden_dir = sys.argv[1], sys.argv[2]
    tol = None if sys.argv[3:4] == ["none"] else float(sys.argv[3]) if len(sys.argv) > 3 else 1e-3
    extra = sys.argv[4:]
    golden_file = os.path.join(golden_dir, "golden-tiny-a.json")
    if not os.path.exists(golden_file):
        serve_util.skip(f"{golden_file} not found")
    with serve_util.workdir() as tmp:
        pb, pb_grpc, _, _ = serve_util.load_stubs(tmp)
        import grpc
        golden = json.load(open(golden_file))["prompts"]
        model = golden_model(golden_dir)
        cmd, env = serve_util.serve_cmd("serve", build_root, model, extra)
        server = serve_util.Server(cmd, env)
        checks = serve_util.Checks()
        try:
            channel = grpc.insecure_channel(server.target)
            api = pb_grpc.Dsr1Stub(channel)

            def run(name):
                p = golden[name]
                responses = list(api.Generate(forced_request(pb, p["ids"] + p["greedy"]),
                                              timeout=300))
                return served_rows(responses[-1].final)

            alone = {}
            for name, p in golden.items():
                alone[name] = run(name)
                w = compare_golden(checks, f"{name} alone", alone[name],
                                   p["prefill"] + p["decode"], tol)
                print(f"{name}: alone, worst {w:.3g} std", flush=True)
            stop = threading.Event()
            others = [threading.Thread(target=storm, args=(api, pb, stop, i), daemon=True)
                      for i in range(N_OTHERS)]
            for t in others:
                t.start()
            try:
                for name, p in golden.items():
                    busy = run(name)
                    compare_golden(checks, f"{name} busy", busy, p["prefill"] + p["decode"], tol)
                    checks.expect(busy == alone[name], f"{name}: busy == alone",
                                  "the served logprobs changed with the batch")
            finally:
                stop.set()
                for t in others:
                    t.join(120)
            for _ in range(100):  # cancellations reach the scheduler within a step
                info = api.GetServerInfo(pb.GetServerInfoRequest())
                if info.kv_blocks_used == 0 and info.running == 0 and info.queued == 0:
                    break
                time.sleep(0.05)
            checks.expect(info.kv_blocks_used == 0 and info.running == 0,
                          "no blocks held afterwards", str(info))
        finally:
            rc = server.stop()
            checks.expect(rc == 0, "server exit status", f"{rc}\n{server.tail()}")
        return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
