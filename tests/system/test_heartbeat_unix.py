"""The Unix-socket intake worker as a real process, fed by real agent processes, against a stand-in parent."""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from supervisor.wire.messages import AgentUpdate, AgentView, HeartbeatBatch
from tests.support.processes import kill_tree, pid_alive
from tests.support.stand_in_parent import StandInParent
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
MAX_LINE = 1024

# Sends base64-decoded bytes on the heartbeat socket, then reports whether the worker closed the connection.
CLIENT = r"""
import base64, json, os, socket, sys
spec = json.loads(sys.argv[1])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(spec["sock"])
closed = False
try:
    # A long line is built here: command-line arguments are limited to 128 KiB.
    s.sendall(b'{"pad": "' + b"p" * spec["long"] + b'"}\n' if spec["long"] else b"")
    s.sendall(base64.b64decode(spec["data"]))
    if spec["eof"]:
        s.shutdown(socket.SHUT_WR)
    s.settimeout(spec["wait"])
    closed = s.recv(1) == b""
except (BrokenPipeError, ConnectionResetError):
    closed = True
except socket.timeout:
    pass
print(json.dumps({"pid": os.getpid(), "closed": closed}), flush=True)
"""


class Agent:
    """A `sh` in its own session, registered as an agent, that runs one CLIENT child per request."""

    def __init__(self, workdir: Path, sock_path: Path) -> None:
        self.sock_path = sock_path
        client = workdir / "client.py"
        client.write_text(CLIENT)
        self.proc = subprocess.Popen(
            ["sh", "-c", 'while read -r spec; do "$PY" "$CLIENT" "$spec"; done'],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
            env={**os.environ, "PY": sys.executable, "CLIENT": str(client)},
        )
        self.pid = self.proc.pid

    def send(self, data: bytes, wait: float = 0.3, eof: bool = False, long: int = 0) -> dict:
        """Have a child of the agent send data (after a `long`-byte line; then EOF if eof).

        Returns {"pid": the sender's pid, "closed": whether the worker closed the connection}."""
        spec = {"sock": str(self.sock_path), "data": base64.b64encode(data).decode(), "wait": wait, "eof": eof, "long": long}
        self.proc.stdin.write(json.dumps(spec).encode() + b"\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], wait + 10)
        assert ready, "the agent's client did not report"
        return json.loads(self.proc.stdout.readline())

    def kill(self) -> None:
        kill_tree(self.pid)
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


def listening_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o666)
    sock.listen(64)
    return sock


def worker_argv(run_dir: Path, fd: int, **settings) -> list[str]:
    settings = {"max_line": MAX_LINE, **settings}
    return [sys.executable, "-m", "workers.heartbeat_unix", "--run-dir", str(run_dir), "--listen-fd", str(fd),
            "--settings", json.dumps(settings), "--log-level", "debug"]


def start_worker(run_dir: Path, sock: socket.socket, log: Path, **settings) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(worker_argv(run_dir, sock.fileno(), **settings), cwd=ROOT, pass_fds=(sock.fileno(),), stdout=out, stderr=out)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        kill_tree(proc.pid)
        proc.wait()


def hb_line(**fields) -> bytes:
    return json.dumps(fields).encode() + b"\n"


@pytest.fixture(scope="module")
def world():
    """A stand-in parent that knows one agent, and a worker serving heartbeat.sock for it."""
    run_dir = Path(tempfile.mkdtemp(prefix="hbu-", dir="/tmp"))
    sock_path = run_dir / "heartbeat.sock"
    sock = listening_socket(sock_path)
    agent = Agent(run_dir, sock_path)
    parent = worker = None
    try:
        parent = StandInParent(run_dir, [AgentView(id="web", type="custom", state="running", pid=agent.pid, pgid=agent.pid, generation=4)])
        worker = start_worker(run_dir, sock, run_dir / "worker.log")
        wait_until(lambda: parent.counters(worker.pid), timeout=30, message="the worker's first beat")
        yield {"run_dir": run_dir, "sock": sock, "path": sock_path, "agent": agent, "parent": parent, "worker": worker}
        log = (run_dir / "worker.log").read_text()
        assert worker.poll() is None and "Traceback" not in log, log
    finally:
        if worker is not None:
            stop(worker)
        if parent is not None:
            parent.close()
        agent.kill()
        sock.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def arrived(parent: StandInParent, status: str) -> list:
    return wait_until(lambda: [hb for hb in parent.heartbeats() if hb.status == status], timeout=30, message=f"heartbeat {status!r}")


def test_descendant_heartbeat_reaches_parent(world):
    parent, agent, worker = world["parent"], world["agent"], world["worker"]
    # The message's pid and extra fields are ignored: the peer credentials decide who sent it.
    result = agent.send(hb_line(pid=1, status="hello", cpu=2.5, memory=100, version="1.0", extra="x", timestamp="2024-03-01T12:00:00Z"))
    assert result["closed"] is False
    (hb,) = arrived(parent, "hello")
    assert (hb.agent_id, hb.pid, hb.cpu, hb.memory, hb.version, hb.generation) == ("web", result["pid"], 2.5, 100, "1.0", 4)
    assert hb.timestamp == 1709294400.0
    counters = parent.wait_counter(worker.pid, "accepted", 1)
    assert counters["connections"] >= 1 and "connections_open" in counters and counters["received"] >= 1
    assert any(b.worker == "heartbeat-unix" for b in parent.of(HeartbeatBatch))


def test_many_lines_on_one_connection_and_rejected_fields_keep_it_open(world):
    parent, agent = world["parent"], world["agent"]
    lines = hb_line(status="multi-1") + b"\n" + hb_line(status="bad", cpu=-1) + hb_line(status="multi-2", agent_id="other") + hb_line(status="multi-3")
    assert agent.send(lines)["closed"] is False
    arrived(parent, "multi-3")
    assert len(arrived(parent, "multi-1")) == 1
    assert not [hb for hb in parent.heartbeats() if hb.status in ("bad", "multi-2")]
    counters = parent.wait_counter(world["worker"].pid, "rejected_pid_not_in_tree", 1)
    assert counters["rejected_invalid"] >= 1


def test_last_line_without_newline_counts(world):
    assert world["agent"].send(hb_line(status="unterminated")[:-1], wait=2, eof=True)["closed"] is True
    arrived(world["parent"], "unterminated")


def test_outsider_is_refused_and_counted(world):
    parent, worker = world["parent"], world["worker"]
    # The test process is the agent's parent, not part of its tree.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(world["path"]))
        s.sendall(hb_line(agent_id="web", pid=world["agent"].pid, status="outsider"))
        s.settimeout(5)
        assert s.recv(1) == b""
    parent.wait_counter(worker.pid, "rejected_unknown_agent", 1)
    assert not [hb for hb in parent.heartbeats() if hb.status == "outsider"]


def test_garbage_closes_the_connection_and_others_are_served(world):
    parent, agent, worker = world["parent"], world["agent"], world["worker"]
    before = parent.counters(worker.pid).get("rejected_invalid", 0)
    for garbage in (b"{not json\n", b'{"status": "\xff\xfe"}\n'):
        result = agent.send(hb_line(status="before-garbage") + garbage + hb_line(status="after-garbage"), wait=2)
        assert result["closed"] is True
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # closed at once, without the unknown-sender grace
        s.connect(str(world["path"]))
        s.sendall(b"\x00\x01garbage\n")
        s.settimeout(0.8)
        assert s.recv(1) == b""
    assert agent.send(hb_line(status="still-served"))["closed"] is False
    arrived(parent, "still-served")
    assert len(arrived(parent, "before-garbage")) == 2
    assert not [hb for hb in parent.heartbeats() if hb.status == "after-garbage"]
    parent.wait_counter(worker.pid, "rejected_invalid", before + 3)


def test_over_long_line_is_dropped(world):
    parent, agent, worker = world["parent"], world["agent"], world["worker"]
    exact = hb_line(status="exact", pad="")
    exact = hb_line(status="exact", pad="p" * (MAX_LINE - len(exact) + 1))
    assert len(exact) == MAX_LINE + 1  # content plus newline
    assert agent.send(exact)["closed"] is False
    arrived(parent, "exact")
    # The client's long line is '{"pad": "ppp..."}': 11 bytes around the padding.
    for size in (MAX_LINE - 11 + 1, 1000 * MAX_LINE):  # just over, and far over the reader's buffer limit
        assert agent.send(hb_line(status="after-long"), wait=2, long=size)["closed"] is True
    counters = parent.wait_counter(worker.pid, "rejected_too_long", 2)
    assert not [hb for hb in parent.heartbeats() if hb.status == "after-long"]
    assert counters["rejected_too_long"] == 2


def test_agent_announced_after_it_connects(world):
    parent = world["parent"]
    late = Agent(world["run_dir"], world["path"])
    try:
        results = []
        sender = threading.Thread(target=lambda: results.append(late.send(hb_line(status="late"), wait=1)))
        sender.start()
        time.sleep(0.3)  # the worker has seen an unknown sender by now and waits for a state update
        parent.publish(AgentUpdate(seq=1, agent=AgentView(id="late", type="custom", state="running", pid=late.pid, generation=1)))
        sender.join(10)
        (hb,) = arrived(parent, "late")
        assert (hb.agent_id, hb.pid, results[0]["closed"]) == ("late", results[0]["pid"], False)
        assert f"pid {hb.pid} is in no agent's tree yet" in (world["run_dir"] / "worker.log").read_text()
    finally:
        late.kill()


def test_connection_limits_and_sigterm(world):
    parent, run_dir = world["parent"], world["run_dir"]
    path = run_dir / "limits.sock"
    sock = listening_socket(path)
    log = run_dir / "limits.log"
    # The test process is in no agent's tree: its connections are "unverified", 16 // 8 = 2 of them may be
    # open at once (the rest of max_connections is kept for agents), and each must deliver a valid
    # heartbeat within unverified_timeout. The order of events is read from the worker's counters, which
    # reach the parent with its liveness beats, every 3 s while no agent expects heartbeats: the deadline
    # is well past that, or the refusal's count could arrive only after the first two were closed.
    worker = start_worker(run_dir, sock, log, max_connections=16, idle_timeout=30, unverified_timeout=12)
    conns = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(4)]
    try:
        wait_until(lambda: parent.counters(worker.pid), timeout=30, message="the worker's first beat")
        for s in conns:
            s.settimeout(30)
        conns[0].connect(str(path))
        conns[1].connect(str(path))
        parent.wait_counter(worker.pid, "connections_open", 2)
        conns[2].connect(str(path))
        assert conns[2].recv(1) == b""  # over the unverified share: closed at once
        assert parent.wait_counter(worker.pid, "rejected_too_many_unverified", 1).get("closed_unverified", 0) == 0
        assert conns[0].recv(1) == b"" and conns[1].recv(1) == b""  # no valid heartbeat: closed long before idle_timeout
        counters = parent.wait_counter(worker.pid, "closed_unverified", 2)
        assert counters["rejected_too_many_unverified"] == 1 and counters.get("closed_idle", 0) == 0
        conns[3].connect(str(path))
        parent.wait_counter(worker.pid, "connections", 4)  # accepted: SIGTERM must close it, not the backlog
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, log.read_text()
        assert conns[3].recv(1) == b""
        text = log.read_text()
        assert "Traceback" not in text and text.count("closed the connection of pid") == 1, text  # logged once per cause
    finally:
        for s in conns:
            s.close()
        stop(worker)
        sock.close()


def test_worker_exits_when_its_parent_dies(world, tmp_path):
    parent, sock = world["parent"], world["sock"]
    fd = sock.fileno()
    middle_code = (
        "import subprocess, sys; "
        f"p = subprocess.Popen({worker_argv(world['run_dir'], fd)!r}, pass_fds=({fd},), stdout=2); "
        "print(p.pid, flush=True); p.wait()"
    )
    with open(tmp_path / "worker.log", "wb") as log:
        middle = subprocess.Popen([sys.executable, "-c", middle_code], cwd=ROOT, pass_fds=(fd,), stdout=subprocess.PIPE, stderr=log)
    worker_pid = None
    try:
        worker_pid = int(middle.stdout.readline())
        wait_until(lambda: parent.counters(worker_pid), timeout=30, message="the worker's first beat")
        os.kill(middle.pid, signal.SIGKILL)
        middle.wait()
        wait_until(lambda: not pid_alive(worker_pid), timeout=30, message="the worker to exit")
        log = (tmp_path / "worker.log").read_text()
        assert "stopping" in log and "Traceback" not in log, log
    finally:
        middle.stdout.close()
        stop(middle)
        if worker_pid is not None and pid_alive(worker_pid):
            kill_tree(worker_pid)


def test_worker_whose_parent_is_already_gone_exits(world, tmp_path):
    # The parent exits before the worker has even imported its modules, so PDEATHSIG comes too late.
    # The worker writes to the log, not to our pipe, so reading the pid does not wait for the worker.
    fd = world["sock"].fileno()
    middle_code = (
        "import os, subprocess; "
        f"p = subprocess.Popen({worker_argv(world['run_dir'], fd)!r}, pass_fds=({fd},), stdout=2, "
        "env=dict(os.environ, AGENTD_PARENT_PID=str(os.getpid()))); print(p.pid, flush=True)"
    )
    with open(tmp_path / "worker.log", "wb") as log:
        out = subprocess.run([sys.executable, "-c", middle_code], cwd=ROOT, pass_fds=(fd,), stdout=subprocess.PIPE, stderr=log, check=True)
    worker_pid = int(out.stdout)
    try:
        wait_until(lambda: not pid_alive(worker_pid), timeout=30, message="the orphaned worker to exit")
        assert not world["parent"].counters(worker_pid)
    finally:
        if pid_alive(worker_pid):
            kill_tree(worker_pid)


def test_refuses_a_descriptor_that_is_not_a_listening_socket(tmp_path):
    # A connected Unix stream socket used to pass the check; every accept on it then failed.
    a, b = socket.socketpair()
    try:
        proc = subprocess.run(worker_argv(tmp_path, a.fileno()), cwd=ROOT, pass_fds=[a.fileno()], capture_output=True, text=True, timeout=30)
    finally:
        a.close()
        b.close()
    assert proc.returncode == 2 and "not a listening Unix stream socket" in proc.stderr, proc.stderr
