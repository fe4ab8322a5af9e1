"""Shared by the serving tests (tests/serve/*.py): skip without grpcio, Python stubs made from
proto/*.proto at test time, the tiny test checkpoint, and a dsr1 server process.

The tests run with Debian's /usr/bin/python3 (python3-grpcio, python3-protobuf,
protobuf-compiler, protobuf-compiler-grpc); without any of them they exit 77 (skip).
"""
import fcntl
import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

SKIP = 77
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GRPC_PLUGIN = "/usr/bin/grpc_python_plugin"
CLUSTER_ENV = {  # tests/cluster/cluster_env.sh: loopback only
    "UCX_TLS": "tcp,sm,self", "UCX_NET_DEVICES": "lo", "UCX_WARN_UNUSED_ENV_VARS": "n",
    "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_btl_tcp_if_include": "lo", "OMPI_MCA_oob_tcp_if_include": "lo",
    "OMPI_MCA_rmaps_base_oversubscribe": "1", "DSR1_NO_PROGRESS_BAR": "1",
}


def skip(why):
    print(f"skip: {why}")
    sys.exit(SKIP)


class Checks:
    """Counts checks and collects failures, so that one run reports all of them."""

    def __init__(self):
        self.n, self.failures = 0, []

    def expect(self, ok, label, detail=""):
        self.n += 1
        if not ok:
            self.failures.append(f"{label}: {detail}" if detail else label)
            print(f"FAIL {label} {detail}", flush=True)
        return ok

    def finish(self):
        print(f"{self.n - len(self.failures)} passed, {len(self.failures)} failed")
        return 1 if self.failures else 0


def wait_idle(stub, pb, checks, label, metadata=(), timeout=30):
    """Polls GetServerInfo until nothing is queued or running and no cache block is held by a
    request (cached prefix blocks are allowed); checks that it got there; returns the last
    ServerInfo."""
    deadline = time.time() + timeout
    while True:
        si = stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=metadata, timeout=10)
        if (si.queued, si.running, si.kv_blocks_used) == (0, 0, 0) or time.time() > deadline:
            break
        time.sleep(0.1)
    checks.expect((si.queued, si.running, si.kv_blocks_used) == (0, 0, 0),
                  f"{label}: idle (queued, running, kv_blocks_used)",
                  f"{si.queued}, {si.running}, {si.kv_blocks_used}")
    return si


def load_stubs(workdir):
    """dsr1_pb2, dsr1_pb2_grpc, health_pb2, health_pb2_grpc generated into workdir."""
    try:
        import grpc  # noqa: F401
        import google.protobuf  # noqa: F401
    except ImportError as e:
        skip(f"{e} (apt-get install python3-grpcio python3-protobuf; run with /usr/bin/python3)")
    protoc = shutil.which("protoc")
    if not protoc or not os.access(GRPC_PLUGIN, os.X_OK):
        skip("protoc or grpc_python_plugin missing (apt-get install protobuf-compiler-grpc)")
    proto = os.path.join(SOURCE_ROOT, "proto")
    subprocess.run([protoc, f"-I{proto}", f"--python_out={workdir}", f"--grpc_python_out={workdir}",
                    f"--plugin=protoc-gen-grpc_python={GRPC_PLUGIN}",
                    os.path.join(proto, "dsr1.proto"), os.path.join(proto, "health.proto")],
                   check=True)
    sys.path.insert(0, workdir)
    return [importlib.import_module(m) for m in
            ("dsr1_pb2", "dsr1_pb2_grpc", "health_pb2", "health_pb2_grpc")]


def tiny_model(dsr1, build_root):
    """The `dsr1 mkmodel --preset tiny` checkpoint, made once per build directory (about a
    second); a lock keeps tests running in parallel from making it twice."""
    model = os.path.join(build_root, "tests", "serve", "model-tiny")
    os.makedirs(os.path.dirname(model), exist_ok=True)
    with open(model + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(model, ".complete")):
            r = subprocess.run([dsr1, "mkmodel", "--preset", "tiny", "--out", model, "--force"],
                               capture_output=True, text=True)
            if r.returncode != 0:
                skip(f"cannot make the tiny model (tokenizer files missing?): {r.stderr.strip()}")
            open(os.path.join(model, ".complete"), "w").close()
    return model


def with_state_dir(cmd):
    """cmd with `--state-dir TMP` after its `dsr1 serve` / dsr1-coordinator, unless it has
    one: every server gets its own batch store (the store locks its directory, so servers
    side by side must not share the default one). Returns (cmd, the directory or None)."""
    if "--state-dir" in cmd:
        return cmd, None
    at = None
    for i, arg in enumerate(cmd):
        if os.path.basename(arg) == "dsr1" and i + 1 < len(cmd) and cmd[i + 1] == "serve":
            at = i + 2
        elif os.path.basename(arg) == "dsr1-coordinator" and "--prompt-ids" not in cmd:
            at = i + 1
        if at is not None:
            break
    if at is None:
        return cmd, None
    state = tempfile.mkdtemp(prefix="dsr1-state-")
    return [*cmd[:at], "--state-dir", state, *cmd[at:]], state


class Server:
    """A `dsr1 serve` (or mpirun'd dsr1-coordinator) process; `port` once it serves. Its
    stderr is kept (tail printed on failure). Without --state-dir in cmd it gets a temporary
    state directory of its own, removed by stop() (own_state False: the server's default)."""

    def __init__(self, cmd, env=None, timeout=180, own_state=True):
        cmd, self.state_dir = with_state_dir(cmd) if own_state else (cmd, None)
        self.cmd = cmd
        self.log = []
        full_env = {**os.environ, "DSR1_NO_PROGRESS_BAR": "1", **(env or {})}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=full_env, text=True, errors="replace",
                                     start_new_session=True)
        ready = threading.Event()
        self.port = None

        def reader():
            for line in self.proc.stdout:
                self.log.append(line)
                m = re.search(r"serving on (\S+):(\d+)", line)
                if m and not ready.is_set():
                    self.port = int(m.group(2))
                    ready.set()
            ready.set()

        self.thread = threading.Thread(target=reader, daemon=True)
        self.thread.start()
        if not ready.wait(timeout) or self.port is None:
            self.stop()
            raise RuntimeError(f"server did not start: {' '.join(cmd)}\n{self.tail()}")

    @property
    def target(self):
        return f"127.0.0.1:{self.port}"

    def tail(self, n=40):
        return "".join(self.log[-n:])

    def alive(self):
        return self.proc.poll() is None

    def finish(self, checks, exit_0=True):
        """Stops the server, checks its exit status (exit_0: the graceful SIGTERM path; mpirun
        exits 1 whenever it was signalled, whatever its ranks did), prints the log's tail
        when anything failed; returns the test's exit status."""
        rc = self.stop()
        if exit_0:
            checks.expect(rc == 0, "server exits 0 on SIGTERM", f"exit {rc}")
        if checks.failures:
            print("---- server log (tail) ----\n" + self.tail())
        return checks.finish()

    def stop(self, timeout=30):
        """SIGTERM (timeout and mpirun pass it on to the server), then SIGKILL to the whole
        process group; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.thread.join(5)
        if self.state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self.state_dir = None
        return self.proc.returncode


def serve_cmd(mode, build_root, model, extra=()):
    """(command, environment) of a server on a free loopback port: `dsr1 serve` (mode
    "serve") or mpirun with dsr1-coordinator and two dsr1-worker ranks (mode "mpirun"; exits
    77 when the build has no MPI/UCX or mpirun is missing)."""
    tools = os.path.join(build_root, "tools")
    common = ["--model", model, "--host", "127.0.0.1", "--port", "0", *extra]
    if mode == "serve":
        return [os.path.join(tools, "dsr1"), "serve", *common], {}
    coord, worker = os.path.join(tools, "dsr1-coordinator"), os.path.join(tools, "dsr1-worker")
    if not (os.access(coord, os.X_OK) and os.access(worker, os.X_OK)):
        skip("dsr1-coordinator/dsr1-worker not built (needs MPI and UCX)")
    if not shutil.which("mpirun"):
        skip("mpirun missing")
    return ["timeout", "-k", "5", "600", "mpirun", "--oversubscribe", "--bind-to", "none",
            "-x", "UCX_TLS", "-x", "UCX_NET_DEVICES", "-x", "DSR1_LOG",
            "-np", "1", coord, *common, ":", "-np", "2", worker, "--model", model], CLUSTER_ENV


def workdir():
    return tempfile.TemporaryDirectory(prefix="dsr1-serve-test-")
