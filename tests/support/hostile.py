"""What every hostile-input test checks afterwards: the legitimate agents did not pay for it.

Their pids and restart counters stay, their heartbeats keep being applied for longer than their
heartbeat_timeout, and agentd's log grows by a bounded amount (docs/threat-model.md).
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.wait import wait_until

TIMEOUT_S = 3.0
# Legitimate agents: quick beats, a short heartbeat_timeout, so harm shows within seconds.
FAST = {"interval": 0.3, "heartbeat_timeout": f"{TIMEOUT_S:g}s", "startup_grace": "5s"}


@pytest.fixture
def outsider():
    """A fresh unprivileged local user (pwd entry); removed afterwards. Skips when not root."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a second, unprivileged user (useradd)")
    name = f"agt{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def system_python() -> str:
    """A python3 any user can run (the test venv's lives under /root, which the outsider cannot reach)."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 the unprivileged user can run")
    return python


def run_as(user, argv: list[str], agentd, **kwargs) -> subprocess.Popen:
    """Start argv as `user`, tagged so the test's cleanup finds it; the test dir becomes reachable to it,
    as /run/agentd is to every local user."""
    os.chmod(agentd.base, 0o755)
    return subprocess.Popen(argv, user=user.pw_uid, group=user.pw_gid, extra_groups=[], cwd="/",
                            env={"PATH": "/usr/bin:/bin", "AGENTD_TEST_TAG": agentd.tag}, **kwargs)


def workers(agentd) -> dict[str, dict[str, Any]]:
    return agentd.workers()


def http_address(agentd) -> tuple[str, int]:
    host, _, port = workers(agentd)["heartbeat-http-0"]["info"]["listen"].rpartition(":")
    return host.strip("[]"), int(port)


def post(agentd, body: bytes | str, path: str = "/heartbeat", headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """One POST to the HTTP intake; (status, parsed JSON reply)."""
    host, port = http_address(agentd)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("POST", path, body=body.encode() if isinstance(body, str) else body,
                     headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def agent_secret(pid: int) -> str:
    """The AGENTD_HEARTBEAT_TOKEN agentd gave the agent (root reads any environment; a stranger cannot)."""
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(v.split(b"=", 1)[1].decode() for v in env if v.startswith(b"AGENTD_HEARTBEAT_TOKEN="))


class Legit:
    """Snapshot of the legitimate agents once they are healthy; `assert_unharmed` checks them against it."""

    def __init__(self, agentd, ids: list[str]) -> None:
        self.agentd = agentd
        self.ids = ids
        for agent_id in ids:
            agentd.wait_state(agent_id, "running")
        wait_until(lambda: all(agentd.status(a)["health"] == "healthy" for a in ids), timeout=40, message=f"{ids} healthy")
        self.before = {a: agentd.status(a) for a in ids}
        self.log_size = agentd.daemon_log.stat().st_size

    def assert_unharmed(self, watch_for: float = TIMEOUT_S * 1.6, log_growth_limit: int = 64 * 1024) -> None:
        """Poll for `watch_for` seconds (longer than heartbeat_timeout): same pids, no restarts, fresh heartbeats."""
        end = time.monotonic() + watch_for

        def unharmed_until_the_end() -> bool:
            for agent_id in self.ids:  # must hold at every check, so a failure raises at once
                now, was = self.agentd.status(agent_id), self.before[agent_id]
                assert now["pid"] == was["pid"], (agent_id, now, self.agentd.log_text()[-3000:])
                assert now["restarts"] == was["restarts"], (agent_id, now["last_restart_reason"], self.agentd.log_text()[-3000:])
                age = now["heartbeat_age_s"]
                assert age is not None and age < TIMEOUT_S, (agent_id, f"heartbeat {age} s old", self.agentd.log_text()[-3000:])
            return time.monotonic() >= end

        wait_until(unharmed_until_the_end, timeout=watch_for + 60, interval=0.2, message="the watch to end")
        grown = self.agentd.daemon_log.stat().st_size - self.log_size
        assert grown < log_growth_limit, f"agentd's log grew by {grown} bytes:\n{self.agentd.log_text()[-4000:]}"
