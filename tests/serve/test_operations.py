#!/usr/bin/env python3
"""Operations: health (gRPC Health.Watch, HTTP /health and /metrics, GetServerInfo) and
systemd's sd_notify, against real servers on the tiny checkpoint.

1. `dsr1 serve` with NOTIFY_SOCKET (a socket path) and WATCHDOG_USEC=300000:
   STATUS=loading before READY=1, READY=1 by the time it serves, STATUS=serving, watchdog
   pings about every 150 ms; Watch("") says SERVING at once, Watch("nope") says
   SERVICE_UNKNOWN and stays open; /health 200 {"status": "ok"} with no grid, /metrics
   without grid gauges, GetServerInfo healthy with an empty membership; at SIGTERM both
   Watch streams end (the known one after NOT_SERVING), STOPPING=1 arrives, exit 0.
2. `dsr1 serve --workers 2 --pp 2 --transport ucx` with NOTIFY_SOCKET in the abstract
   namespace and DSR1_TEST_KILL_WORKER (worker 1, the only one of stage 1, dies a few
   messages in): Watch says SERVING, then NOT_SERVING without being asked again; /health
   turns 503, dsr1_healthy 0, GetServerInfo.healthy false, systemd hears STATUS=failed;
   SIGTERM still ends it with status 0. Before the loss /health's grid, the grid gauges
   and GetServerInfo agree: epoch >= 1, 2 workers, all live, none lost.
3. `dsr1 serve --workers 4 --transport ucx --expert-replicas 2`, worker 3 dies: requests
   complete, Watch stays SERVING (nothing sent), /health 200 and GetServerInfo and
   /metrics show epoch >= 2, 3 of 4 workers and lanes live, worker 3 lost; systemd hears
   STATUS=degraded: 3 of 4 workers live.

usage: test_operations.py BUILD_ROOT   (exit 77: grpcio or protoc missing; parts 2 and 3
                                        skipped without UCX)
"""
import json
import os
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_util  # noqa: E402


class Notify:
    """A unix datagram socket standing in for systemd's notify socket; collects messages."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + path[1:] if path.startswith("@") else path)
        self.path = path
        self.msgs = []  # (time, text)
        self.lock = threading.Lock()
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            with self.lock:
                self.msgs.append((time.time(), data.decode(errors="replace")))

    def lines(self):
        with self.lock:
            return [(t, ln) for t, m in self.msgs for ln in m.split("\n")]

    def wait_for(self, pred, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(pred(ln) for _, ln in self.lines()):
                return True
            time.sleep(0.05)
        return False

    def first(self, pred):
        return next((i for i, (_, ln) in enumerate(self.lines()) if pred(ln)), None)

    def close(self):
        self.sock.close()


class Watcher:
    """A Health.Watch stream read on a thread: statuses received, how it ended."""

    def __init__(self, hstub, hpb, service):
        self.call = hstub.Watch(hpb.HealthCheckRequest(service=service))
        self.got, self.end = [], None
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        try:
            for m in self.call:
                self.got.append(m.status)
            self.end = "ok"
        except Exception as e:  # grpc.RpcError
            self.end = e.code().name if hasattr(e, "code") else repr(e)

    def wait(self, pred, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline and not pred(self):
            time.sleep(0.05)
        return pred(self)


def http_get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def http_port(server):
    for line in server.log:
        m = re.search(r"HTTP API on http://\S+:(\d+)", line)
        if m:
            return int(m.group(1))
    return None


def metric(text, name, labels=""):
    """The value of a sample (name and a label substring), or None."""
    for line in text.splitlines():
        if line.startswith(name + "{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def have_ucx(build):
    with open(os.path.join(build, "dsr1_build_config.h")) as f:
        return "#define DSR1_HAVE_UCX 1" in f.read()


def single(c, grpc, stubs, build, model, tmp):
    pb, pb_grpc, hpb, hpb_grpc = stubs
    H = hpb.HealthCheckResponse
    nt = Notify(os.path.join(tmp, "notify.sock"))
    cmd, env = serve_util.serve_cmd("serve", build, model)
    env = {**env, "NOTIFY_SOCKET": nt.path, "WATCHDOG_USEC": "300000"}
    env.pop("WATCHDOG_PID", None)
    server = serve_util.Server(cmd, env)
    try:
        chan = grpc.insecure_channel(server.target)
        api, hs = pb_grpc.Dsr1Stub(chan), hpb_grpc.HealthStub(chan)
        c.expect(nt.wait_for(lambda ln: ln == "READY=1", 5), "notify: READY=1", str(nt.lines()))
        loading = nt.first(lambda ln: ln.startswith("STATUS=loading"))
        ready = nt.first(lambda ln: ln == "READY=1")
        c.expect(loading is not None and ready is not None and loading < ready,
                 "notify: STATUS=loading before READY=1", str(nt.lines()))
        c.expect(nt.wait_for(lambda ln: ln == "STATUS=serving", 5), "notify: STATUS=serving")
        n0 = sum(ln == "WATCHDOG=1" for _, ln in nt.lines())
        time.sleep(1.0)
        n1 = sum(ln == "WATCHDOG=1" for _, ln in nt.lines())
        c.expect(4 <= n1 - n0 <= 12, "notify: WATCHDOG=1 about every 150 ms", f"{n1 - n0} in 1 s")

        whole, unknown = Watcher(hs, hpb, ""), Watcher(hs, hpb, "nope")
        dsr1 = Watcher(hs, hpb, "dsr1.v1.Dsr1")
        c.expect(whole.wait(lambda w: w.got) and whole.got == [H.SERVING], "watch '': SERVING",
                 str(whole.got))
        c.expect(dsr1.wait(lambda w: w.got) and dsr1.got == [H.SERVING],
                 "watch dsr1.v1.Dsr1: SERVING", str(dsr1.got))
        c.expect(unknown.wait(lambda w: w.got) and unknown.got == [H.SERVICE_UNKNOWN],
                 "watch 'nope': SERVICE_UNKNOWN", str(unknown.got))
        final = list(api.Generate(pb.GenerateRequest(
            input=pb.Input(text="Hello"), sampling=pb.SamplingParams(max_tokens=4)),
            timeout=60))[-1].final
        c.expect(len(final.token_ids) == 4, "generate while watched", str(final))
        time.sleep(0.5)  # a few polls: nothing changed, nothing more sent
        c.expect(whole.got == [H.SERVING] and unknown.got == [H.SERVICE_UNKNOWN] and
                 whole.end is None and unknown.end is None,
                 "watch: no repeat while unchanged, streams open",
                 f"{whole.got} {whole.end} {unknown.got} {unknown.end}")

        hp = http_port(server)
        code, body = http_get(hp, "/health")
        c.expect(code == 200 and json.loads(body) == {"status": "ok"}, "/health 200, no grid",
                 f"{code} {body}")
        code, text = http_get(hp, "/metrics")
        c.expect(code == 200 and metric(text, "dsr1_healthy") == 1 and
                 "dsr1_grid_epoch" not in text and "dsr1_grid_workers" not in text,
                 "/metrics: healthy, no grid gauges without a grid", text[:300])
        si = api.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
        c.expect(si.healthy and si.workers == 0 and si.epoch == 0 and si.workers_live == 0 and
                 list(si.lost_workers) == [], "server info: healthy, no grid", str(si))

        server.proc.send_signal(15)
        c.expect(whole.wait(lambda w: w.end is not None, 30) and whole.end == "ok" and
                 whole.got == [H.SERVING, H.NOT_SERVING],
                 "shutdown: watch '' gets NOT_SERVING, then ends OK", f"{whole.got} {whole.end}")
        c.expect(unknown.wait(lambda w: w.end is not None, 30) and unknown.end == "ok",
                 "shutdown: watch 'nope' ends", f"{unknown.got} {unknown.end}")
        rc = server.proc.wait(30)
        c.expect(rc == 0, "shutdown: exit status 0", str(rc))
        c.expect(nt.wait_for(lambda ln: ln == "STOPPING=1", 2), "notify: STOPPING=1")
    finally:
        if c.failures:
            print("---- server log (tail) ----\n" + server.tail())
        server.stop()
        nt.close()


def grid(c, grpc, stubs, build, model):
    pb, pb_grpc, hpb, hpb_grpc = stubs
    H = hpb.HealthCheckResponse
    if not have_ucx(build):
        print("skip part 2: built without UCX")
        return
    nt = Notify(f"@dsr1-test-ops-{os.getpid()}")
    cmd, env = serve_util.serve_cmd("serve", build, model, [
        "--workers", "2", "--pp", "2", "--transport", "ucx", "--timeout-ms", "3000"])
    # worker 1 (stage 1) dies on its 12th control message: after a few steps
    env = {**env, **serve_util.CLUSTER_ENV, "NOTIFY_SOCKET": nt.path,
           "DSR1_TEST_KILL_WORKER": "1:12"}
    server = serve_util.Server(cmd, env)
    try:
        chan = grpc.insecure_channel(server.target)
        api, hs = pb_grpc.Dsr1Stub(chan), hpb_grpc.HealthStub(chan)
        c.expect(nt.wait_for(lambda ln: ln == "READY=1", 5), "grid notify (abstract): READY=1",
                 str(nt.lines()))
        whole = Watcher(hs, hpb, "")
        c.expect(whole.wait(lambda w: w.got) and whole.got[:1] == [H.SERVING],
                 "grid: watch SERVING", str(whole.got))
        hp = http_port(server)
        si = api.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
        code, body = http_get(hp, "/health")
        h = json.loads(body)
        _, text = http_get(hp, "/metrics")
        c.expect(code == 200 and h["status"] == "ok" and si.healthy, "grid: /health 200",
                 f"{code} {body}")
        g = h.get("grid", {})
        c.expect(si.epoch >= 1 and si.workers == 2 and si.workers_live == 2 and
                 not si.lost_workers and si.lanes_live == si.lanes >= 1,
                 "grid: server info, epoch >= 1, 2 workers live", str(si))
        c.expect(g.get("epoch") == si.epoch and g.get("workers") == 2 and
                 g.get("workers_live") == 2 and g.get("lanes_live") == si.lanes_live and
                 g.get("lost") == "", "grid: /health's grid agrees", body)
        c.expect(metric(text, "dsr1_grid_epoch") == si.epoch and
                 metric(text, "dsr1_grid_workers", 'state="live"') == 2 and
                 metric(text, "dsr1_grid_workers", 'state="lost"') == 0 and
                 metric(text, "dsr1_grid_lanes_live") == si.lanes_live and
                 metric(text, "dsr1_expert_replicas") == si.expert_replicas >= 1,
                 "grid: /metrics' grid gauges agree", text)
        try:  # long enough to reach the kill
            list(api.Generate(pb.GenerateRequest(
                input=pb.Input(text="Hello"), sampling=pb.SamplingParams(max_tokens=40)),
                timeout=60))
        except grpc.RpcError:
            pass
        c.expect(whole.wait(lambda w: H.NOT_SERVING in w.got, 15) and whole.end is None,
                 "grid: watch turns NOT_SERVING by itself, stream open",
                 f"{whole.got} {whole.end}")
        code, body = http_get(hp, "/health")
        c.expect(code == 503, "grid: /health 503 after the loss", f"{code} {body}")
        _, text = http_get(hp, "/metrics")
        c.expect(metric(text, "dsr1_healthy") == 0, "grid: dsr1_healthy 0")
        si = api.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
        c.expect(not si.healthy, "grid: server info not healthy", str(si))
        c.expect(nt.wait_for(lambda ln: ln.startswith("STATUS=failed"), 5),
                 "grid notify: STATUS=failed", str(nt.lines()[-5:]))
        server.proc.send_signal(15)
        c.expect(whole.wait(lambda w: w.end is not None, 30) and whole.end == "ok",
                 "grid: watch ends at shutdown", f"{whole.got} {whole.end}")
        rc = server.proc.wait(30)
        c.expect(rc == 0, "grid: exit status 0 after SIGTERM", str(rc))
        c.expect(nt.wait_for(lambda ln: ln == "STOPPING=1", 2), "grid notify: STOPPING=1")
    finally:
        if c.failures:
            print("---- server log (tail) ----\n" + server.tail())
        server.stop()
        nt.close()


def degraded(c, grpc, stubs, build, model):
    """A grid that survives its loss: 4 workers (1 stage), 2 copies of every expert, worker 3
    lost; health stays SERVING while every view shows the degraded membership."""
    pb, pb_grpc, hpb, hpb_grpc = stubs
    H = hpb.HealthCheckResponse
    if not have_ucx(build):
        print("skip part 3: built without UCX")
        return
    nt = Notify(f"@dsr1-test-ops-degraded-{os.getpid()}")
    cmd, env = serve_util.serve_cmd("serve", build, model, [
        "--workers", "4", "--pp", "1", "--transport", "ucx", "--expert-replicas", "2",
        "--timeout-ms", "3000"])
    env = {**env, **serve_util.CLUSTER_ENV, "NOTIFY_SOCKET": nt.path,
           "DSR1_TEST_KILL_WORKER": "3:20"}
    server = serve_util.Server(cmd, env)
    try:
        chan = grpc.insecure_channel(server.target)
        api, hs = pb_grpc.Dsr1Stub(chan), hpb_grpc.HealthStub(chan)
        whole = Watcher(hs, hpb, "")
        c.expect(whole.wait(lambda w: w.got) and whole.got == [H.SERVING],
                 "degraded: watch SERVING", str(whole.got))
        for i in range(3):  # the loss comes during these; each request still completes
            final = list(api.Generate(pb.GenerateRequest(
                input=pb.Input(text="Hello"),
                sampling=pb.SamplingParams(max_tokens=24, temperature=0)), timeout=60))[-1].final
            c.expect(final.finish_reason == pb.LENGTH and len(final.token_ids) == 24,
                     f"degraded: generate {i} completes", str(final))
        deadline = time.time() + 15
        while time.time() < deadline:
            si = api.GetServerInfo(pb.GetServerInfoRequest(), timeout=10)
            if si.workers_live < 4:
                break
            time.sleep(0.2)
        c.expect(si.healthy and si.epoch >= 2 and si.workers == 4 and si.workers_live == 3 and
                 si.lanes == 4 and si.lanes_live == 3 and si.expert_replicas == 2 and
                 list(si.lost_workers) == ["worker 3 (stage 0, EP 3)"],
                 "degraded: server info (3 of 4 live, worker 3 lost)", str(si))
        hp = http_port(server)
        code, body = http_get(hp, "/health")
        g = json.loads(body).get("grid", {})
        c.expect(code == 200 and g.get("epoch") == si.epoch and g.get("workers_live") == 3 and
                 g.get("lanes_live") == 3 and g.get("ranks_serving") == 3 and
                 g.get("replicas") == 2 and g.get("lost") == "worker 3 (stage 0, EP 3)",
                 "degraded: /health 200 with the membership", f"{code} {body}")
        _, text = http_get(hp, "/metrics")
        c.expect(metric(text, "dsr1_healthy") == 1 and
                 metric(text, "dsr1_grid_epoch") == si.epoch and
                 metric(text, "dsr1_grid_workers", 'state="live"') == 3 and
                 metric(text, "dsr1_grid_workers", 'state="lost"') == 1 and
                 metric(text, "dsr1_grid_lanes_live") == 3 and
                 metric(text, "dsr1_expert_replicas") == 2, "degraded: /metrics", text)
        c.expect(nt.wait_for(lambda ln: ln.startswith("STATUS=degraded: 3 of 4 workers live"), 5),
                 "degraded notify: STATUS=degraded", str(nt.lines()[-4:]))
        time.sleep(0.5)
        c.expect(whole.got == [H.SERVING] and whole.end is None,
                 "degraded: watch stays SERVING, open", f"{whole.got} {whole.end}")
        rc = server.stop()
        c.expect(rc == 0, "degraded: exit status 0 after SIGTERM", str(rc))
    finally:
        if c.failures:
            print("---- server log (tail) ----\n" + server.tail())
        server.stop()
        nt.close()


def main():
    build = sys.argv[1]
    dsr1 = os.path.join(build, "tools", "dsr1")
    with serve_util.workdir() as tmp:
        stubs = serve_util.load_stubs(tmp)
        import grpc
        model = serve_util.tiny_model(dsr1, build)
        c = serve_util.Checks()
        single(c, grpc, stubs, build, model, tmp)
        grid(c, grpc, stubs, build, model)
        degraded(c, grpc, stubs, build, model)
        return c.finish()


if __name__ == "__main__":
    sys.exit(main())
