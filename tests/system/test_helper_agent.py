"""Quick checks of the test helpers (helper_agent.py modes, wait, processes) and of the example agents."""

from __future__ import annotations

import contextlib
import datetime
import http.server
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from tests.support.processes import ProcessTracker, descendants, kill_tree, pid_alive
from tests.support.wait import read_markers, wait_for_marker, wait_until

HELPER = Path(__file__).resolve().parents[1] / "support" / "helper_agent.py"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any AGENTD_* variables, plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTD_")}
    env.update(extra)
    return env


@contextlib.contextmanager
def launched(argv: list[str], log: Path, marker: Path | None = None, **popen) -> Iterator[subprocess.Popen]:
    """Runs argv in its own session with output to log, as agentd would; kills whatever is left at the end."""
    tracker = ProcessTracker()
    popen.setdefault("env", clean_env())
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen
        )
    tracker.track(proc.pid)
    try:
        yield proc
    finally:
        if marker is not None:
            tracker.track_markers(marker)
        tracker.kill_all()
        proc.wait(timeout=5)


@contextlib.contextmanager
def helper(tmp_path: Path, mode: str, *args: str, **popen) -> Iterator[tuple[subprocess.Popen, Path]]:
    """Starts helper_agent.py in mode; yields the process and its marker file."""
    marker = tmp_path / f"{mode}.markers"
    argv = [str(HELPER), mode, "--marker", str(marker), *args]
    with launched(argv, tmp_path / f"{mode}.log", marker, **popen) as proc:
        yield proc, marker


def kinds(marker: Path) -> list[str]:
    return [m[0] for m in read_markers(marker)]


def log_text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def closed_port_url() -> str:
    """A heartbeat URL on a port nobody listens on: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/heartbeat"


class HeartbeatServer:
    """A stand-in HTTP intake on port 0 that records JSON bodies and answers with scripted statuses."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.bodies: list[dict] = []
        self.statuses = list(statuses or [])
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server.bodies.append(json.loads(body))
                status = server.statuses.pop(0) if server.statuses else 200
                reply = json.dumps({"success": status == 200, "message": "test", "timestamp": "now"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/heartbeat"

    def __enter__(self) -> HeartbeatServer:
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def read_json_line(conn: socket.socket) -> dict:
    """One newline-terminated JSON object from a stream connection."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return json.loads(data)


# --- helper_agent.py modes ---------------------------------------------------------------------------


def test_well_behaved_marks_start_and_exits_zero_on_term(tmp_path):
    with helper(tmp_path, "well-behaved") as (proc, marker):
        (start,) = wait_for_marker(marker, "START")
        pid = str(proc.pid)
        assert start == ("START", pid, pid, pid), "own session: pid, pgid and sid are equal"
        log = tmp_path / "well-behaved.log"
        wait_until(lambda: "stderr is captured too" in log_text(log), timeout=30)
        assert f"START mode=well-behaved pid={pid}" in log_text(log)

        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert read_markers(marker) == [start, ("TERM", pid), ("EXIT", pid, "0")]


@pytest.mark.parametrize(
    "mode, args, code",
    [("crash-on-start", [], 2), ("crash-later", ["--after", "0.2"], 3), ("exit-zero", ["--after", "0.2"], 0)],
)
def test_exiting_modes_exit_with_their_code(tmp_path, mode, args, code):
    with helper(tmp_path, mode, *args) as (proc, marker):
        assert proc.wait(timeout=5) == code
        assert kinds(marker) == ["START", "EXIT"]
        assert read_markers(marker)[-1] == ("EXIT", str(proc.pid), str(code))


def test_ignore_term_records_term_and_keeps_running(tmp_path):
    with helper(tmp_path, "ignore-term") as (proc, marker):
        wait_for_marker(marker, "START")
        os.killpg(proc.pid, signal.SIGTERM)
        wait_for_marker(marker, "TERM", timeout=30)
        time.sleep(0.2)
        assert proc.poll() is None and pid_alive(proc.pid)

        assert kill_tree(proc.pid) == [proc.pid]
        assert proc.wait(timeout=5) == -signal.SIGKILL
        assert "EXIT" not in kinds(marker)


def test_fork_children_stay_in_the_group_and_stop_with_it(tmp_path):
    with helper(tmp_path, "fork-children", "--children", "2") as (proc, marker):
        children = wait_for_marker(marker, "CHILD", count=2)
        child_pids = sorted(int(c[1]) for c in children)
        assert all(c[2] == str(proc.pid) for c in children), "children stay in the agent's process group"
        assert descendants(proc.pid) == child_pids

        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        wait_until(lambda: not any(pid_alive(p) for p in child_pids), timeout=30, message="children to exit")
        assert sorted(int(m[1]) for m in read_markers(marker) if m[0] == "EXIT") == sorted([proc.pid, *child_pids])


def test_fork_children_ignoring_term_need_kill_tree(tmp_path):
    with helper(tmp_path, "fork-children", "--children", "2", "--ignore-term") as (proc, marker):
        child_pids = [int(c[1]) for c in wait_for_marker(marker, "CHILD", count=2)]
        os.killpg(proc.pid, signal.SIGTERM)
        wait_for_marker(marker, "TERM", count=3, timeout=30)
        assert all(pid_alive(p) for p in [proc.pid, *child_pids])

        assert kill_tree(proc.pid) == sorted([proc.pid, *child_pids])
        assert not any(pid_alive(p) for p in [proc.pid, *child_pids])


def test_setsid_grandchild_escapes_the_group_but_not_the_tracker(tmp_path):
    with helper(tmp_path, "setsid-grandchild") as (proc, marker):
        (grand,) = wait_for_marker(marker, "GRANDCHILD")
        (child,) = wait_for_marker(marker, "CHILD")
        grand_pid = int(grand[1])
        assert grand[2] == grand[3] == grand[1], "grandchild leads its own session"
        assert child[2] == str(proc.pid), "middle child stays in the group"
        assert descendants(proc.pid) == sorted([int(child[1]), grand_pid])

        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        time.sleep(0.1)
        assert pid_alive(grand_pid), "a group signal does not reach the escaped grandchild"

        tracker = ProcessTracker()
        tracker.track_markers(marker)
        assert grand_pid in tracker.alive()
        assert grand_pid in tracker.kill_all()
        assert not pid_alive(grand_pid)


def test_spew_output_writes_numbered_lines(tmp_path):
    with helper(tmp_path, "spew-output", "--rate", "1000", "--count", "150") as (proc, marker):
        (spewed,) = wait_for_marker(marker, "SPEWED", timeout=30)
        assert spewed == ("SPEWED", str(proc.pid), "150")
        numbers = [int(line.split()[1]) for line in log_text(tmp_path / "spew-output.log").splitlines()
                   if line.startswith("spew ")]
        assert numbers == list(range(1, 151))
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=5) == 0


def test_heartbeat_then_stall_posts_n_beats_then_goes_quiet(tmp_path):
    with HeartbeatServer() as server:
        env = clean_env(AGENTD_HEARTBEAT_URL=server.url, AGENTD_AGENT_ID="hb-1")
        args = ["--beats", "3", "--interval", "0.05"]
        with helper(tmp_path, "heartbeat-then-stall", *args, env=env) as (proc, marker):
            wait_for_marker(marker, "STALL", timeout=30)
            assert [m for m in read_markers(marker) if m[0] == "HEARTBEAT"] == [
                ("HEARTBEAT", str(n), "200") for n in (1, 2, 3)
            ]
            time.sleep(0.2)
            sent = [(b["agent_id"], b["pid"], b["seq"]) for b in server.bodies]
            assert sent == [("hb-1", proc.pid, n) for n in (1, 2, 3)], "nothing after the stall"
            assert proc.poll() is None


def test_heartbeat_http_survives_a_missing_intake(tmp_path):
    env = clean_env(AGENTD_HEARTBEAT_URL=closed_port_url())
    with helper(tmp_path, "heartbeat-http", "--interval", "0.05", env=env) as (proc, marker):
        beats = wait_for_marker(marker, "HEARTBEAT", count=3, timeout=30)
        assert {b[2] for b in beats} == {"error"}
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=5) == 0


def test_heartbeat_socket_waits_for_the_socket_and_reconnects(tmp_path):
    path = tmp_path / "hb.sock"
    env = clean_env(AGENTD_HEARTBEAT_SOCKET=str(path), AGENTD_AGENT_ID="sock-1")
    with helper(tmp_path, "heartbeat-socket", "--interval", "0.05", env=env) as (proc, marker):
        wait_for_marker(marker, "HEARTBEAT", count=2, timeout=30)
        assert proc.poll() is None, "an absent socket is tolerated"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(str(path))
            listener.listen()
            listener.settimeout(5)
            for _ in range(2):  # the second connection proves it reconnects after the intake hangs up
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(5)
                    beat = read_json_line(conn)
                    assert (beat["agent_id"], beat["pid"]) == ("sock-1", proc.pid)
        assert "sent" in {m[2] for m in read_markers(marker) if m[0] == "HEARTBEAT"}


def test_memory_balloon_grows_rss(tmp_path):
    with helper(tmp_path, "memory-balloon", "--mb", "24", "--step-mb", "24") as (proc, marker):
        wait_for_marker(marker, "MEMORY", timeout=30)
        assert psutil.Process(proc.pid).memory_info().rss >= 24 << 20


def test_cpu_burn_burns_then_idles(tmp_path):
    # Burning is measured in CPU time: on a busy machine 0.3 s of wall time may hold far less of it.
    with helper(tmp_path, "cpu-burn", "--cpu-seconds", "0.3") as (proc, marker):
        wait_for_marker(marker, "BURN_DONE", timeout=30)
        times = psutil.Process(proc.pid).cpu_times()
        assert times.user + times.system >= 0.25  # /proc counts in clock ticks
        idle_from = times.user + times.system
        wait_until(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_SLEEPING, timeout=30)
        later = psutil.Process(proc.pid).cpu_times()
        assert later.user + later.system - idle_from < 0.2  # it idles now


def test_print_env_reports_env_cwd_and_ids(tmp_path):
    work = tmp_path / "work dir"
    work.mkdir()
    env = clean_env(AGENTD_AGENT_ID="env-1", AGENTD_HEARTBEAT_SOCKET="/run/a b.sock", EXTRA="x")
    with helper(tmp_path, "print-env", "--show", "EXTRA", env=env, cwd=work) as (proc, marker):
        wait_for_marker(marker, "GID")
        markers = read_markers(marker)
        assert [m for m in markers if m[0] == "ENV"] == [
            ("ENV", "AGENTD_AGENT_ID=env-1"), ("ENV", "AGENTD_HEARTBEAT_SOCKET=/run/a b.sock"), ("ENV", "EXTRA=x")
        ]
        assert ("CWD", str(work)) in markers
        assert ("UID", str(os.getuid())) in markers and ("GID", str(os.getgid())) in markers


# --- wait and processes -------------------------------------------------------------------------------


def test_wait_until_returns_the_value_or_names_what_it_waited_for():
    assert wait_until(lambda: [1], timeout=30) == [1]
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"timed out after 0.2 s waiting for the moon; last value: \[\]"):
        wait_until(lambda: [], timeout=0.2, message="the moon")
    assert time.monotonic() - started < 20  # it gave up at its deadline rather than waiting on


def test_read_markers_ignores_a_partly_written_line(tmp_path):
    marker = tmp_path / "m"
    marker.write_text("START 1 2 3\nENV A=b c\nHEARTB")
    assert read_markers(marker) == [("START", "1", "2", "3"), ("ENV", "A=b c")]
    assert read_markers(tmp_path / "missing") == []
    with pytest.raises(AssertionError, match="1 TERM marker.*START"):
        wait_for_marker(marker, "TERM", timeout=0.1)


def test_pid_alive_counts_zombies_as_dead(tmp_path):
    with launched(["true"], tmp_path / "true.log") as proc:
        wait_until(lambda: not pid_alive(proc.pid), timeout=30)
        assert Path(f"/proc/{proc.pid}").exists(), "not yet reaped: a zombie"


# --- examples -----------------------------------------------------------------------------------------


def start_line(log: Path, pid: int) -> str:
    return wait_until(lambda: f"started pid={pid}" in log_text(log), timeout=30, message=f"start line in {log}")


@pytest.mark.parametrize("script", ["http_heartbeat_agent.py", "socket_heartbeat_agent.py", "crashy_agent.py"])
def test_example_tolerates_a_missing_intake_quietly(tmp_path, script):
    env = clean_env(
        AGENTD_AGENT_ID="example",
        AGENTD_HEARTBEAT_URL=closed_port_url(),
        AGENTD_HEARTBEAT_SOCKET=str(tmp_path / "absent.sock"),
    )
    log = tmp_path / "agent.log"
    with launched([str(EXAMPLES / script), "--interval", "0.1"], log, env=env) as proc:
        start_line(log, proc.pid)
        wait_until(lambda: "failed" in log_text(log), timeout=30)
        time.sleep(0.35)  # several more failed attempts, which must not be logged again
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        text = log_text(log)
        assert text.count("failed") == 1, text
        assert "exiting cleanly" in text


def test_http_example_sends_the_documented_fields_and_logs_recovery(tmp_path):
    log = tmp_path / "agent.log"
    with HeartbeatServer(statuses=[503, 503]) as server:
        env = clean_env(AGENTD_AGENT_ID="web-1", AGENTD_HEARTBEAT_URL=server.url)
        with launched([str(EXAMPLES / "http_heartbeat_agent.py"), "--interval", "0.05"], log, env=env) as proc:
            wait_until(lambda: "heartbeat #2 accepted" in log_text(log), timeout=30)
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=5) == 0
    beat = server.bodies[-1]
    assert set(beat) == {"agent_id", "pid", "timestamp", "status", "version", "cpu", "memory"}
    assert (beat["agent_id"], beat["pid"], beat["status"]) == ("web-1", proc.pid, "running")
    assert beat["version"] == "1.0.0"
    assert datetime.datetime.fromisoformat(beat["timestamp"]).utcoffset() == datetime.timedelta(0)
    assert 0 <= beat["cpu"] <= 100 * os.cpu_count() and beat["memory"] > 1 << 20
    text = log_text(log)
    assert text.count("failed: HTTP 503") == 1 and text.count("works again after 2 failed attempts") == 1, text


def test_socket_example_writes_json_lines_and_reconnects(tmp_path):
    path = tmp_path / "hb.sock"
    env = clean_env(AGENTD_AGENT_ID="sock-1", AGENTD_HEARTBEAT_SOCKET=str(path))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen()
        listener.settimeout(5)
        cmd = [str(EXAMPLES / "socket_heartbeat_agent.py"), "--interval", "0.05"]
        with launched(cmd, tmp_path / "agent.log", env=env) as proc:
            for _ in range(2):  # the second connection proves it reconnects after the intake hangs up
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(5)
                    beat = read_json_line(conn)
            assert (beat["agent_id"], beat["pid"], beat["status"]) == ("sock-1", proc.pid, "running")
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=5) == 0


def test_crashy_example_exits_3(tmp_path):
    cmd = [str(EXAMPLES / "crashy_agent.py"), "--min", "0.1", "--max", "0.2"]
    with launched(cmd, tmp_path / "agent.log") as proc:
        assert proc.wait(timeout=5) == 3


def test_stubborn_example_and_its_worker_need_sigkill(tmp_path):
    log = tmp_path / "agent.log"
    with launched([str(EXAMPLES / "stubborn_agent.py")], log) as proc:
        start_line(log, proc.pid)
        # "started" is logged before the fork: wait for the worker rather than expect it already.
        worker = wait_until(lambda: (lambda d: d if len(d) == 1 else None)(descendants(proc.pid)), timeout=30, message="the forked worker")
        wait_until(lambda: f"worker started pid={worker[0]}" in log_text(log), timeout=30)
        os.killpg(proc.pid, signal.SIGTERM)
        wait_until(lambda: log_text(log).count("ignoring it") == 2, timeout=30, message="both to ignore SIGTERM")
        assert pid_alive(proc.pid) and pid_alive(worker[0])
        assert kill_tree(proc.pid) == sorted([proc.pid, *worker])


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] == "T"


@pytest.mark.parametrize("script", ["socket_heartbeat_agent.py", "http_heartbeat_agent.py"])
def test_examples_survive_sigstop_and_sigcont(tmp_path, script):
    """Regression: after SIGSTOP + SIGCONT the example agents died with 'ValueError: N is not a valid Signals'
    (sigtimedwait can return a garbage si_signo then)."""
    log = tmp_path / "agent.log"
    env = clean_env(AGENTD_AGENT_ID="x-1", AGENTD_HEARTBEAT_URL="http://127.0.0.1:9/", AGENTD_HEARTBEAT_SOCKET=str(tmp_path / "none.sock"))
    with launched([str(EXAMPLES / script), "--interval", "0.2"], log, env=env) as proc:
        wait_until(lambda: "failed" in log_text(log), timeout=30, message="the first (failed) heartbeat")
        for _ in range(3):
            os.kill(proc.pid, signal.SIGSTOP)
            wait_until(lambda: _stopped(proc.pid), timeout=30, message="stopped")
            time.sleep(0.5)  # the stimulus, not a wait: a stop long enough to span its sigtimedwait
            os.kill(proc.pid, signal.SIGCONT)
            wait_until(lambda: not _stopped(proc.pid), timeout=30, message="running again")
        assert proc.poll() is None, log_text(log)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_text(log)
    text = log_text(log)
    assert "Traceback" not in text and "exiting cleanly" in text, text
