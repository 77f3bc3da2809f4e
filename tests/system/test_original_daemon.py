"""`agentd run` on the original daemon's own legacy config file supervises its agent, as the original did.

The file is tests/fixtures/original/daemon.yaml as shipped, with only the machine-specific paths pointed into
the test's directory, and its Manager address emptied (standalone: no traffic leaves loopback).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from tests.support.daemon import HELPER
from tests.support.wait import wait_until

FIXTURES = Path(__file__).parents[1] / "fixtures" / "original"
ORIGINAL_AGENT = Path(__file__).parents[1] / "support" / "original_agent.py"


def legacy_config(base: Path) -> str:
    text = (FIXTURES / "daemon.yaml").read_text()
    for old, new in {
        "/var/log/daemon/daemon.log": base / "logs" / "daemon.log",
        "/var/run/daemon.pid": base / "daemon.pid",
        "/var/lib/daemon": base / "data",
        "/usr/local/bin/agent": ORIGINAL_AGENT,
        "/var/lib/agent": base / "agent-work",
        "/etc/agent/agent.yaml": base / "agent.yaml",
        "/var/run/agent.sock": base / "agent.sock",
        '"manager.example.com:9090"': '""',
        "/etc/daemon/certs/client.crt": '""', "/etc/daemon/certs/client.key": '""', "/etc/daemon/certs/ca.crt": '""',
    }.items():
        assert old in text, old
        text = text.replace(old, str(new))
    return text


def test_agentd_runs_the_originals_legacy_config_and_supervises_its_agent(agentd, monkeypatch):
    base = agentd.base
    (base / "agent.yaml").write_text(f'agent_id: "agent-001"\nversion: "1.0.0"\nheartbeat:\n  socket_path: "{base / "agent.sock"}"\n  interval: 1s\n')
    agentd.config_path.write_text(legacy_config(base))
    monkeypatch.setenv("DAEMON_RUN_DIR", str(agentd.run_dir))  # the one thing a test box needs: a private run dir
    agentd.start()

    # It only becomes running on its first heartbeat, sent the original's way to the original's socket.
    status = agentd.wait_state("legacy-agent", "running")
    assert status["name"] == "Legacy Agent" and status["type"] == "custom"
    assert status["version"] == "1.0.0" and status["last_heartbeat"] is not None
    first_pid = status["pid"]
    log = (base / "data" / "logs" / "legacy-agent" / "agent.log").read_text()
    assert f"config={base / 'agent.yaml'}" in log  # started with the original's `-config FILE`
    assert (base / "agent-work").is_dir()

    table = agentd.agentctl("status")
    assert table.returncode == 0 and "Legacy Agent" in table.stdout and "NAME" in table.stdout
    assert "legacy-agent" in agentd.agentctl("status", "--type", "custom").stdout  # filter by type
    assert agentd.agentctl("status", "--type", "telegraf").stdout.strip() == "no agents of type telegraf"
    assert agentd.call("status", {"types": ["filebeat"]})["agents"] == []
    # daemon.pid_file and daemon.log_file of the original are honoured.
    assert (base / "daemon.pid").read_text().strip() == str(agentd.proc.pid)
    wait_until(lambda: "running (pid" in (base / "logs" / "daemon.log").read_text(), timeout=30)

    # Supervision: an agent killed from outside comes back under the file's restart policy.
    os.kill(first_pid, signal.SIGKILL)
    wait_until(lambda: (s := agentd.status("legacy-agent"))["state"] == "running" and s["pid"] not in (None, first_pid),
               timeout=60, message="the legacy agent restarted")
    assert agentd.status("legacy-agent")["restarts"] == 1

    assert agentd.terminate() == 0
    assert not (base / "daemon.pid").exists()


def test_a_binary_missing_for_a_while_is_retried_until_it_appears(agentd):
    # An upgrade replaces the binary, or a mount comes late: the original retried under the restart policy.
    late = agentd.base / "late-agent.sh"
    agentd.write_config([agentd.helper_agent(
        "late", "well-behaved", binary_path=str(late), args=[],
        restart={"backoff_steps": [0, 0.5], "max_retries": 1000},
    )])
    agentd.start()
    first = agentd.wait_state("late", "restarting")
    assert "does not exist" in first["reason"]
    wait_until(lambda: agentd.status("late")["restart_count"] >= 3, timeout=30, message="spawn retries")
    late.write_text(f"#!/bin/sh\nexec {sys.executable} {HELPER} well-behaved --marker {agentd.marker('late')}\n")
    late.chmod(0o755)
    running = agentd.wait_state("late", "running", timeout=60)
    assert running["pid"] is not None and running["restarts_by_reason"].get("spawn", 0) >= 3
