"""Run a real agentd for a test: config in a short temp dir, the real process, real control socket.

The daemon, its workers and every agent carry AGENTD_TEST_TAG=<unique tag> in their environment,
which children inherit (even ones that setsid away), so cleanup finds and kills all of them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import tempfile
import uuid
from pathlib import Path
from typing import Any

import psutil
import yaml

from supervisor.ctl.control_client import ControlClient, RemoteError
from tests.support.processes import kill_tree, pid_alive
from tests.support.wait import read_markers, wait_until

ROOT = Path(__file__).resolve().parents[2]
HELPER = ROOT / "tests" / "support" / "helper_agent.py"
TAG_VAR = "AGENTD_TEST_TAG"


def is_zygote_forked(pid: int) -> bool:
    """The zygote or a worker it forked, by the process name it sets (workers/zygote.py)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().startswith("agentd-")
    except OSError:
        return False


def processes_tagged(tag: str) -> list[int]:
    """Live (non-zombie) processes whose environment carries our test tag."""
    needle = f"{TAG_VAR}={tag}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env.split(b"\0") and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


class TestDaemon:
    """One agentd under test, with helpers to configure it, drive it and clean up after it."""

    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        # Short path: ipc:// socket paths must stay under ~100 bytes.
        self.base = Path(tempfile.mkdtemp(prefix="agentd-t-", dir="/tmp"))
        self.tag = uuid.uuid4().hex[:12]
        self.run_dir = self.base / "run"
        self.data_dir = self.base / "data"
        self.log_dir = self.base / "log"
        self.config_path = self.base / "agentd.yaml"
        self.markers = self.base / "markers"
        self.markers.mkdir()
        self.proc: subprocess.Popen | None = None
        self.daemon_log = self.base / "agentd.log"
        self.extra: dict[str, Any] = {}
        self.agents: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ config

    def helper_agent(self, agent_id: str, mode: str, *args: str, **spec: Any) -> dict[str, Any]:
        """An agent entry running tests/support/helper_agent.py in `mode`, with quick test timings."""
        entry: dict[str, Any] = {
            "id": agent_id,
            "binary_path": str(HELPER),
            "args": [mode, "--marker", str(self.marker(agent_id)), *args],
            "start_seconds": 0.3,
            "stop_timeout": 3,
            "health_check": {"heartbeat_timeout": None},
            "restart": {"backoff_steps": [0.2, 0.5, 1], "max_retries": 5, "reset_after": 60},
        }
        for key, value in spec.items():
            if isinstance(value, dict) and isinstance(entry.get(key), dict):
                entry[key] = {**entry[key], **value}
            else:
                entry[key] = value
        return entry

    def marker(self, agent_id: str) -> Path:
        return self.markers / f"{agent_id}.txt"

    def write_config(self, agents: list[dict[str, Any]] | None = None, **sections: Any) -> Path:
        if agents is not None:
            self.agents = agents
        for agent in self.agents:
            agent.setdefault("env", {})[TAG_VAR] = self.tag
        doc = {
            "daemon": {"run_dir": str(self.run_dir), "data_dir": str(self.data_dir), "log_dir": str(self.log_dir), "log_level": "debug"},
            "heartbeat": {"http": {"listen": "127.0.0.1:0"}},
            "agents": self.agents,
        }
        for key, value in {**self.extra, **sections}.items():
            doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
        self.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return self.config_path

    # ------------------------------------------------------------------ process

    def start(self, wait: bool = True) -> subprocess.Popen:
        if not self.config_path.exists():
            self.write_config()
        log = open(self.daemon_log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.parent.agentd_cli", "run", "-c", str(self.config_path)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ, **{TAG_VAR: self.tag}),  # workers and agents inherit it: cleanup finds them all
        )
        log.close()
        if wait:
            wait_until(self._answers, timeout=30, message="agentd to answer ping")
        return self.proc

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"agentd exited with {self.proc.returncode}:\n{self.log_text()}")
        try:
            self.client(timeout=2).call("ping")
            return True
        except Exception:
            return False

    def client(self, timeout: float = 20.0) -> ControlClient:
        return ControlClient(self.run_dir, timeout)

    def call(self, verb: str, args: dict[str, Any] | None = None, timeout: float = 20.0) -> dict[str, Any]:
        return self.client(timeout).call(verb, args or {}, timeout=timeout)

    def workers(self) -> dict[str, dict[str, Any]]:
        """The `workers` verb's answer, each worker by name."""
        return {w["name"]: w for w in self.call("workers")["workers"]}

    def wait_workers_running(self, *names: str, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
        """Wait until each named worker runs and has sent a liveness beat; the workers then."""
        def ready() -> dict[str, dict[str, Any]] | None:
            ws = self.workers()
            return ws if all(ws[n]["state"] == "running" and ws[n]["last_beat_age_s"] is not None for n in names) else None
        return wait_until(ready, timeout=timeout, message=f"workers {names} running and beating")

    def agentctl(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run the real agentctl CLI against this daemon."""
        return subprocess.run(
            [sys.executable, "-m", "supervisor.ctl.agentctl_main", "--run-dir", str(self.run_dir), *argv],
            cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        )

    def status(self, agent_id: str) -> dict[str, Any]:
        return self.call("status", {"ids": [agent_id]})["agents"][0]

    def wait_state(self, agent_id: str, *states: str, timeout: float = 40.0) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def reached() -> dict[str, Any] | None:
            try:
                seen.update(self.status(agent_id))
            except RemoteError as exc:
                if exc.code != "not_found":
                    raise
                return None  # not known yet: e.g. a SIGHUP reload that adds it is still on its way
            return dict(seen) if seen["state"] in states else None

        try:
            found = wait_until(reached, timeout=timeout)
        except AssertionError:
            raise AssertionError(f"{agent_id} never reached {states}; last status {seen}\n--- agentd log ---\n{self.log_text()[-4000:]}") from None
        if found["state"] == "running" and found.get("pid"):
            self._wait_helper_ready(agent_id, found["pid"], timeout)
        return found

    def _wait_helper_ready(self, agent_id: str, pid: int, timeout: float) -> None:
        """A helper agent is "running" after start_seconds, which on a busy machine can come before the
        interpreter has even blocked its signals; a test that signals or stops it then would kill it
        outright. Its START marker (written once signals are blocked) or its death ends the wait."""
        marker = self.marker(agent_id)
        if not marker.exists() and not any(a.get("id") == agent_id and str(marker) in a.get("args", []) for a in self.agents):
            return  # not a helper agent with the usual marker

        def ready() -> bool:
            return any(m[0] == "START" and m[1:2] == (str(pid),) for m in read_markers(marker)) or not pid_alive(pid)

        wait_until(ready, timeout=timeout, message=f"{agent_id} (pid {pid}) to write START")

    def log_text(self) -> str:
        try:
            return self.daemon_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 80) -> str:
        """The last `lines` lines of agentd's own log ('' before it has written any)."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def agent_pids(self) -> list[int]:
        """Tagged processes that are agents (or their children): not agentd, not its workers.

        Workers are told apart by AGENTD_PARENT_PID in their environment, which only the worker pool
        sets: a cmdline check would race with a worker that is between fork and exec. The zygote and the
        workers it forks were never exec'd (their /proc environ is agentd's own); they carry an
        `agentd-` process name from birth (workers/zygote.py).
        """
        pids = []
        for pid in processes_tagged(self.tag):
            if self.proc is not None and pid == self.proc.pid:
                continue
            try:
                env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            except OSError:
                continue
            if any(var.startswith(b"AGENTD_PARENT_PID=") for var in env) or is_zygote_forked(pid):
                continue
            pids.append(pid)
        return pids

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            kill_tree(self.proc.pid)
            self.proc.wait(timeout=10)
        # Swept until two scans in a row find nothing: a process agentd was forking at the moment it was
        # killed is re-parented away from its tree, and may show up a moment after the first sweep.
        quiet = 0
        deadline = time.monotonic() + 10
        while quiet < 2 and time.monotonic() < deadline:
            found = processes_tagged(self.tag)
            quiet = 0 if found else quiet + 1
            for pid in found:
                try:
                    kill_tree(pid)
                except psutil.Error:
                    pass
            time.sleep(0.05)
        shutil.rmtree(self.base, ignore_errors=True)
