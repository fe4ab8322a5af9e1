#!/usr/bin/env python3
"""A server on a worker grid stays healthy while idle and notices a lost worker.

1. `dsr1 serve --workers 2 --pp 2 --timeout-ms 1500`: idle for 3x the timeout (the
   scheduler's heartbeats keep the workers listening), then Generate still works and
   Health says SERVING.
2. mpirun'd dsr1-coordinator + 2 dsr1-worker (--timeout-ms 3000): after a request, one
   worker process is killed with SIGKILL while the server is idle; within 10 s either
   Health says NOT_SERVING and Generate fails with UNAVAILABLE, or the job ends with a
   non-zero status (mpirun's default when a process dies); the log names the lost rank.

usage: test_grid_health.py BUILD_ROOT   (exit 77: grpcio, protoc, the model or MPI missing)
"""
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_util  # noqa: E402

TIMEOUT_MS = 1500


def generate(api, pb, n=4):
    req = pb.GenerateRequest(input=pb.Input(text="Hello"),
                             sampling=pb.SamplingParams(max_tokens=n, temperature=0))
    return list(api.Generate(req, timeout=60))[-1].final


def health(hstub, hpb):
    return hstub.Check(hpb.HealthCheckRequest(service=""), timeout=10).status


def idle_grid(c, grpc, stubs, build_root, model):
    pb, pb_grpc, hpb, hpb_grpc = stubs
    cmd, env = serve_util.serve_cmd("serve", build_root, model,
                                    ["--workers", "2", "--pp", "2", "--timeout-ms",
                                     str(TIMEOUT_MS)])
    server = serve_util.Server(cmd, env)
    try:
        chan = grpc.insecure_channel(server.target)
        api, hs = pb_grpc.Dsr1Stub(chan), hpb_grpc.HealthStub(chan)
        time.sleep(3 * TIMEOUT_MS / 1000)
        final = generate(api, pb)
        c.expect(final.finish_reason == pb.LENGTH and len(final.token_ids) == 4,
                 "idle grid: Generate after 3 timeouts", str(final))
        c.expect(health(hs, hpb) == hpb.HealthCheckResponse.SERVING, "idle grid: SERVING")
    finally:
        c.expect(server.stop() == 0, "idle grid: exit status 0", server.tail())


def lost_worker(c, grpc, stubs, build_root, model):
    pb, pb_grpc, hpb, hpb_grpc = stubs
    cmd, env = serve_util.serve_cmd("mpirun", build_root, model, ["--timeout-ms", "3000"])
    cmd += ["--timeout-ms", "3000"]  # the workers' own bound on a silent coordinator
    server = serve_util.Server(cmd, env)
    try:
        chan = grpc.insecure_channel(server.target)
        api, hs = pb_grpc.Dsr1Stub(chan), hpb_grpc.HealthStub(chan)
        c.expect(generate(api, pb).finish_reason == pb.LENGTH, "mpirun: Generate")
        pids = subprocess.run(["pgrep", "-g", str(os.getpgid(server.proc.pid)), "-f",
                               "dsr1-worker"], capture_output=True, text=True).stdout.split()
        if not c.expect(len(pids) == 2, "mpirun: two worker processes", str(pids)):
            return
        os.kill(int(pids[-1]), signal.SIGKILL)
        # Either the server reports itself unhealthy, or mpirun (which by default ends a job
        # whose process died) takes it down with a non-zero status; never a hang.
        t0, status = time.time(), None
        while time.time() - t0 < 10 and server.alive():
            try:
                status = health(hs, hpb)
            except grpc.RpcError:
                status = None
            if status == hpb.HealthCheckResponse.NOT_SERVING:
                break
            time.sleep(0.2)
        if server.alive():
            c.expect(status == hpb.HealthCheckResponse.NOT_SERVING,
                     "mpirun: NOT_SERVING within 10 s of a worker's SIGKILL", str(status))
            try:
                generate(api, pb)
                c.expect(False, "mpirun: Generate after the loss fails")
            except grpc.RpcError as e:
                c.expect(e.code() == grpc.StatusCode.UNAVAILABLE, "mpirun: UNAVAILABLE",
                         f"{e.code()} {e.details()}")
        else:
            c.expect(server.proc.returncode != 0, "mpirun: the job ends non-zero",
                     str(server.proc.returncode))
        c.expect(time.time() - t0 < 10, "mpirun: noticed within 10 s", f"{time.time() - t0:.1f} s")
        c.expect("rank" in server.tail(200) or "worker" in server.tail(200),
                 "mpirun: the log names the lost rank", server.tail())
    finally:
        server.stop()
        c.expect(not server.alive(), "mpirun: the server exits")


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    build_root = sys.argv[1]
    with serve_util.workdir() as tmp:
        stubs = serve_util.load_stubs(tmp)
        import grpc
        model = serve_util.tiny_model(os.path.join(build_root, "tools", "dsr1"), build_root)
        c = serve_util.Checks()
        idle_grid(c, grpc, stubs, build_root, model)
        lost_worker(c, grpc, stubs, build_root, model)
        return c.finish()


if __name__ == "__main__":
    sys.exit(main())
