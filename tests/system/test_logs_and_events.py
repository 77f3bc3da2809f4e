"""Agent output lands in its log file, rotates by size without losing the agent's fd, and agentctl
reads it (`logs -n`, `logs -f`); `events -f` shows transitions as they happen."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from typing import IO, Iterator

from tests.support.daemon import ROOT
from tests.support.wait import wait_until


@contextmanager
def following(agentd, *args: str) -> Iterator[IO[str]]:
    """A following `agentctl ARGS` (logs -f, events -f) in its own session: its output, killed on the way out."""
    follow = subprocess.Popen(
        [sys.executable, "-m", "supervisor.ctl.agentctl", "--run-dir", str(agentd.run_dir), *args],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        yield follow.stdout
    finally:
        os.killpg(follow.pid, signal.SIGKILL)
        follow.wait()
        follow.stdout.close()


def test_logs_tail_follow_and_rotation(agentd):
    agentd.write_config([agentd.helper_agent("spew", "spew-output", "--rate", "200", log={"max_size": "8KiB", "keep": 2})])
    agentd.start()
    agentd.wait_state("spew", "running")
    log_dir = agentd.log_dir / "spew"
    wait_until(lambda: (log_dir / "agent.log.1.gz").exists(), timeout=30, message="first rotation")
    tail = agentd.agentctl("logs", "spew", "-n", "5")
    assert tail.returncode == 0
    assert len(tail.stdout.splitlines()) == 5
    # The agent kept writing to the same file after the truncate: the live file grows again.
    size = (log_dir / "agent.log").stat().st_size
    wait_until(lambda: (log_dir / "agent.log").stat().st_size > size or (log_dir / "agent.log.2.gz").exists())
    with gzip.open(log_dir / "agent.log.1.gz", "rt") as f:
        assert "helper_agent" in f.read()
    # keep=2: never a third copy.
    wait_until(lambda: (log_dir / "agent.log.2.gz").exists(), timeout=30)
    assert not (log_dir / "agent.log.3.gz").exists()

    with following(agentd, "logs", "spew", "-n", "0", "-f") as out:
        lines = [out.readline() for _ in range(20)]
        assert all(lines) and any("line" in line or "spew" in line or "helper_agent" in line for line in lines)


def test_events_follow_shows_transitions_as_they_happen(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    agentd.start()
    agentd.wait_state("a", "running")
    with following(agentd, "events", "-n", "1", "-f") as out:
        first = out.readline()
        assert "a" in first and "running" in first
        assert agentd.agentctl("restart", "a").returncode == 0
        seen = [out.readline() for _ in range(3)]
        assert "running -> stopping" in seen[0] and "operator restart" in seen[0]
        assert "stopping -> starting" in seen[1]
        assert "starting -> running" in seen[2]


def test_json_output_is_stable_snake_case(agentd):
    import json

    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    agentd.start()
    agentd.wait_state("a", "running")
    doc = json.loads(agentd.agentctl("status", "--json").stdout)
    agent = doc["agents"][0]
    for key in ("id", "type", "state", "pid", "health", "restarts", "uptime_s", "last_heartbeat", "last_exit", "last_restart_reason"):
        assert key in agent
    err = agentd.agentctl("--json", "stop", "nope")
    assert err.returncode == 1
    assert json.loads(err.stdout)["error"]["code"] == "not_found"
