#!/usr/bin/env python3
"""Durable gRPC batches survive crashes: a batch uploaded with UploadBatch (grpcio, in
several messages) runs once uninterrupted for reference; then again on a fresh state
directory while the server is killed with SIGKILL at three random points of its progress
and restarted on the same directory each time (then once more stopped with SIGTERM), the client resuming StreamBatchResults with
from_seq after each crash. The batch must complete with every index and custom_id exactly
once in the streamed results and in GetBatch's, seqs 0..N-1 each once, and every item's
tokens equal to the reference run's (greedy items and seeded temperature > 0 items alike:
an item that was running at a crash runs again from its prompt). Then `dsr1 client batch
--resume` continues a download cut off mid-line. The same under mpirun (dsr1-coordinator and
two dsr1-worker ranks), the whole job killed, with a smaller batch. And the state directory:
its default, one server per directory, --state-dir none.

usage: test_batch_resume.py BUILD_ROOT [serve|mpirun|all]   (exit 77: grpcio etc. missing)
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "serve"))
import serve_util  # noqa: E402

SEED = 20261206


def make_items(pb, n, rng):
    """n items: about half seeded temperature > 0 sampling, half greedy; short outputs."""
    items = []
    for i in range(n):
        words = " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "omega", "pi"])
                         for _ in range(rng.randint(1, 6)))
        sp = pb.SamplingParams(max_tokens=rng.randint(1, 2), ignore_eos=True)
        if rng.random() < 0.5:
            sp.temperature = rng.choice([0.7, 1.0, 1.3])
            sp.top_p = rng.choice([0.9, 1.0])
            sp.seed = rng.randint(1, 2**40)
        else:
            sp.temperature = 0.0
        items.append(pb.BatchItem(input=pb.Input(text=f"Item {i}: {words}"), sampling=sp,
                                  custom_id=f"c{i}"))
    return items


def upload(stub, pb, batch_id, items, chunk=300):
    """UploadBatch in messages of `chunk` items."""
    def msgs():
        for k in range(0, len(items), chunk):
            m = pb.UploadBatchRequest(items=items[k:k + chunk])
            if k == 0:
                m.batch_id, m.total_items = batch_id, len(items)
            yield m
    return stub.UploadBatch(msgs(), timeout=120)


def process_tree(pid):
    """pid and its descendants (from /proc)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def kill9(srv):
    """SIGKILL to the server and every process under it (mpirun's ranks may sit in process
    groups of their own); waits until they are gone."""
    pids = process_tree(srv.proc.pid)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(srv.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    srv.proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(os.path.exists(f"/proc/{p}") and
                                         open(f"/proc/{p}/stat").read().split()[2] != "Z"
                                         for p in pids if os.path.exists(f"/proc/{p}")):
        time.sleep(0.05)
    srv.thread.join(5)


class Run:
    def __init__(self, mode, build, model, grpc, pb, pb_grpc, checks):
        self.mode, self.build, self.model = mode, build, model
        self.grpc, self.pb, self.pb_grpc, self.c = grpc, pb, pb_grpc, checks

        self.bad_seq = []

    def start(self, state_dir, extra=()):
        cmd, env = serve_util.serve_cmd(self.mode, self.build, self.model,
                                        ["--state-dir", state_dir, "--http-port", "0",
                                         "--max-running", "256", "--max-queued", "2048",
                                         "--step-tokens", "2048", "--batch-window", "128",
                                         *extra])
        srv = serve_util.Server(cmd, env)
        self.channel = self.grpc.insecure_channel(srv.target)
        self.stub = self.pb_grpc.Dsr1Stub(self.channel)
        return srv

    def progress(self, batch_id):
        st = self.stub.GetBatch(self.pb.GetBatchRequest(batch_id=batch_id), timeout=30)
        return st.finished

    def collect(self, batch_id, results, stop_at=None):
        """Streams results from the next seq on into results (seq -> result) until the
        batch ends (True) or the stream breaks (False). stop_at: an Event that, once set,
        makes it return at the next result."""
        try:
            for r in self.stub.StreamBatchResults(
                    self.pb.StreamBatchResultsRequest(batch_id=batch_id,
                                                      from_seq=len(results)), timeout=300):
                if r.seq != len(results):
                    self.bad_seq.append((r.seq, len(results)))
                results[r.seq] = r
            return True
        except self.grpc.RpcError:
            return False

    def run(self, label, items, batch_id, kills, rng, term=False):
        """Runs the batch on a fresh state dir with `kills` SIGKILLs (and, with term, a
        graceful SIGTERM restart after them); returns its results (index ->
        BatchItemResult)."""
        pb, c = self.pb, self.c
        state = tempfile.mkdtemp(prefix="dsr1-batch-state-")
        srv = self.start(state)
        r = upload(self.stub, pb, batch_id, items)
        c.expect(r.created and r.status.total == len(items), f"{label}: upload created",
                 str(r.status)[:200])
        results = {}
        n = len(items)
        points = sorted(rng.uniform(0.1, 0.8) for _ in range(kills)) + ([0.9] if term else [])
        t0 = time.time()
        for k, frac in enumerate(points):
            graceful = term and k == len(points) - 1
            # stream in a thread while the batch runs; kill at the point
            streamer = threading.Thread(target=self.collect, args=(batch_id, results))
            streamer.start()
            while self.progress(batch_id) < frac * n and time.time() - t0 < 200:
                time.sleep(0.02)
            done_before = self.progress(batch_id)
            if graceful:
                t = time.time()
                rc = srv.stop()
                c.expect(rc == 0 and time.time() - t < 15,
                         f"{label}: SIGTERM with a batch running: exit 0 within 15 s",
                         f"exit {rc} after {time.time() - t:.1f} s\n{srv.tail()}")
            else:
                kill9(srv)
            streamer.join(60)
            c.expect(not streamer.is_alive(), f"{label}: the stream ends at crash {k + 1}")
            self.channel.close()
            print(f"{label}: {'SIGTERM' if graceful else 'crash'} {k + 1} at {done_before}/{n} "
                  f"finished ({len(results)} results streamed)", flush=True)
            srv = self.start(state)
            st = self.stub.GetBatch(pb.GetBatchRequest(batch_id=batch_id), timeout=30)
            c.expect(st.finished >= done_before and st.total == n,
                     f"{label}: nothing acknowledged is lost at crash {k + 1}",
                     f"{st.finished} finished after restart, {done_before} before")
        ok = self.collect(batch_id, results)
        c.expect(ok, f"{label}: the last stream ends OK")
        st = self.stub.GetBatch(pb.GetBatchRequest(batch_id=batch_id, include_results=True),
                                timeout=60)
        c.expect(st.state == pb.COMPLETED and st.finished == n and st.failed == 0 and
                 st.aborted == 0, f"{label}: COMPLETED", str(st)[:300] if st.state !=
                 pb.COMPLETED else f"{st.finished} {st.failed} {st.aborted}")
        c.expect(sorted(results) == list(range(n)), f"{label}: seqs 0..N-1 once each",
                 f"{len(results)} results")
        c.expect(not self.bad_seq, f"{label}: each stream resumes at from_seq, in seq order",
                 str(self.bad_seq[:5]))
        self.bad_seq = []
        idx = sorted(x.index for x in results.values())
        c.expect(idx == list(range(n)), f"{label}: every index streamed exactly once",
                 f"{len(idx)} results, {len(set(idx))} distinct")
        cids = sorted(x.custom_id for x in results.values())
        c.expect(cids == sorted(f"c{i}" for i in range(n)),
                 f"{label}: every custom_id exactly once")
        got = sorted(x.index for x in st.results)
        c.expect(got == list(range(n)) and sorted(x.seq for x in st.results) == list(range(n)),
                 f"{label}: GetBatch's results: every index and seq once")
        c.expect(all(x.custom_id == f"c{x.index}" and x.result.request_id ==
                      f"{batch_id}/{x.index}" for x in results.values()),
                 f"{label}: custom_id and request_id belong to the index")
        if not kills:  # a slow reader of a finished batch: paced by the server, nothing lost
            stream = self.stub.StreamBatchResults(
                pb.StreamBatchResultsRequest(batch_id=batch_id, from_seq=5), timeout=120)
            time.sleep(1)
            seqs = [r.seq for r in stream]
            c.expect(seqs == list(range(5, n)), f"{label}: a slow reader gets seq 5..N-1 in order",
                     f"{len(seqs)} results")
        srv.stop()
        self.channel.close()
        shutil.rmtree(state, ignore_errors=True)
        return {x.index: x for x in results.values()}

    def client_resume(self, items, batch_id):
        """dsr1 client batch --resume after a download cut off mid-line; the server takes
        messages of at most 2 KiB, so the client's upload needs many."""
        c = self.c
        state = tempfile.mkdtemp(prefix="dsr1-batch-state-")
        srv = self.start(state, ["--max-message-bytes", "2048"])
        tmp = tempfile.mkdtemp(prefix="dsr1-batch-cli-")
        inp, out = os.path.join(tmp, "in.jsonl"), os.path.join(tmp, "out.jsonl")
        with open(inp, "w") as f:
            for it in items:
                f.write(json.dumps({"text": it.input.text, "custom_id": it.custom_id,
                                    "max_tokens": it.sampling.max_tokens, "temperature": 0})
                        + "\n")
        dsr1 = os.path.join(self.build, "tools", "dsr1")
        base = [dsr1, "client", "batch", "--server", srv.target, "--timeout-s", "120"]
        r = subprocess.run(base + ["--input", inp, "--batch-id", batch_id, "--output", out],
                           capture_output=True, text=True, timeout=180)
        c.expect(r.returncode == 0 and "created, 60 items" in r.stderr,
                 "client batch --output: uploaded in messages below the server's limit",
                 r.stderr[-500:])
        full = open(out).read().splitlines(keepends=True) if r.returncode == 0 else []
        c.expect(len(full) == len(items), "client: one line per item", str(len(full)))
        keep = len(full) // 3
        with open(out, "w") as f:
            f.writelines(full[:keep])
            f.write(full[keep][:len(full[keep]) // 2] if keep < len(full) else "")
        r = subprocess.run(base + ["--output", out, "--resume"], capture_output=True, text=True,
                           timeout=180)
        c.expect(r.returncode == 0 and f"from seq {keep} on" in r.stderr,
                 "client batch --resume (id from the file)", r.stderr[-500:])
        c.expect(open(out).read().splitlines(keepends=True) == full,
                 "client --resume: the file equals the uninterrupted download")
        r = subprocess.run(base + ["--output", out, "--resume", "--batch-id", "other"],
                           capture_output=True, text=True, timeout=60)
        c.expect(r.returncode == 1 and "not other" in r.stderr,
                 "client --resume with another batch's file fails", r.stderr[-300:])
        srv.stop()
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


def check_state_dir(build, model, pb, pb_grpc, grpc, c):
    """The default state directory ($XDG_STATE_HOME/dsr1), a second server on a directory in
    use refused naming the first one's pid, and --state-dir none."""
    dsr1 = os.path.join(build, "tools", "dsr1")
    base = [dsr1, "serve", "--model", model, "--host", "127.0.0.1", "--port", "0",
            "--http-port", "0"]
    tmp = tempfile.mkdtemp(prefix="dsr1-batch-xdg-")
    srv = serve_util.Server(base, env={"XDG_STATE_HOME": tmp}, own_state=False)
    try:
        db = os.path.join(tmp, "dsr1", "dsr1.db")
        c.expect(os.path.exists(db) and os.stat(os.path.join(tmp, "dsr1")).st_mode & 0o777 ==
                 0o700, "default state dir: $XDG_STATE_HOME/dsr1, mode 0700")
        t = time.time()
        r = subprocess.run(base + ["--state-dir", os.path.join(tmp, "dsr1")],
                           capture_output=True, text=True, timeout=60)
        c.expect(r.returncode == 1 and str(srv.proc.pid) in r.stderr and time.time() - t < 10,
                 "a second server on a state dir in use exits at once naming the holder's pid",
                 f"exit {r.returncode}: {r.stderr[-300:]}")
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    srv = serve_util.Server(base + ["--state-dir", "none"], own_state=False)
    try:
        stub = pb_grpc.Dsr1Stub(grpc.insecure_channel(srv.target))
        try:
            stub.ListBatches(pb.ListBatchesRequest(), timeout=10)
            code, details = "OK", ""
        except grpc.RpcError as e:
            code, details = e.code().name, e.details()
        c.expect(code == "UNAVAILABLE" and "--state-dir" in details,
                 "--state-dir none: batch RPCs UNAVAILABLE naming --state-dir", f"{code} {details}")
    finally:
        srv.stop()


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    build = sys.argv[1]
    which = sys.argv[2] if len(sys.argv) > 2 else "all"
    with serve_util.workdir() as wd:
        pb, pb_grpc, _, _ = serve_util.load_stubs(wd)
        import grpc
        model = serve_util.tiny_model(os.path.join(build, "tools", "dsr1"), build)
        checks = serve_util.Checks()
        rng = random.Random(SEED)
        if which in ("all", "serve"):
            check_state_dir(build, model, pb, pb_grpc, grpc, checks)
        modes = ["serve", "mpirun"] if which == "all" else [which]
        for mode in modes:
            if mode == "mpirun":
                try:  # skips (exit 77) when the build or machine has no MPI
                    serve_util.serve_cmd("mpirun", build, model)
                except SystemExit:
                    print("mpirun: skipped (no MPI build or no mpirun)")
                    continue
            n = 2000 if mode == "serve" else 300
            items = make_items(pb, n, rng)
            run = Run(mode, build, model, grpc, pb, pb_grpc, checks)
            t = time.time()
            ref = run.run(f"{mode} reference", items, "ref", 0, rng)
            print(f"{mode}: reference run {time.time() - t:.1f} s", flush=True)
            t = time.time()
            got = run.run(f"{mode} crashes", items, "crashy", 3 if mode == "serve" else 2, rng,
                          term=mode == "serve")
            print(f"{mode}: crashed run {time.time() - t:.1f} s", flush=True)
            if ref and got:
                diff = [i for i in range(n) if list(ref[i].result.token_ids) !=
                        list(got[i].result.token_ids)]
                seeded = sum(1 for it in items if it.sampling.HasField("seed"))
                checks.expect(not diff, f"{mode}: every item's tokens == the uninterrupted run "
                              f"({seeded} seeded, {n - seeded} greedy)",
                              f"{len(diff)} differ, e.g. {diff[:5]}")
            if mode == "serve":
                run.client_resume(items[:60], "cli")
        return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
