"""agentctl logs: search by pattern and time, several agents merged with prefixes, time-based rotation, and
retention by age that also cleans up after agents no longer configured (a real agentd and real agents)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.support.daemon import ROOT
from tests.support.wait import wait_until

DAY = 86400.0


def test_logs_search_merge_rotation_and_retention(agentd):
    old_dir, gone_dir = agentd.log_dir / "old-agent", agentd.log_dir / "recent-gone"
    for d, mtime in ((old_dir, time.time() - 40 * DAY), (gone_dir, time.time() - 60)):
        d.mkdir(parents=True)
        (d / "agent.log").write_text(f"hello from before ({d.name})\n")
        os.utime(d / "agent.log", (mtime, mtime))
    agentd.write_config([
        agentd.helper_agent("a", "well-behaved"),
        agentd.helper_agent("b", "well-behaved"),
        agentd.helper_agent("spew", "spew-output", "--rate", "20", log={"interval": "2s"}),
    ])
    agentd.start()
    pids = {i: agentd.wait_state(i, "running")["pid"] for i in ("a", "b", "spew")}
    wait_until(lambda: agentd.agentctl("logs", "a").returncode == 0, timeout=30)
    os.kill(pids["a"], signal.SIGUSR1)
    os.kill(pids["b"], signal.SIGUSR2)
    wait_until(lambda: "got SIGUSR1" in agentd.agentctl("logs", "a").stdout, timeout=30)
    wait_until(lambda: "got SIGUSR2" in agentd.agentctl("logs", "b").stdout, timeout=30)

    found = agentd.agentctl("logs", "a", "--grep", "SIG(USR|HUP)1")
    assert found.returncode == 0 and found.stdout.count("\n") == 1 and "got SIGUSR1" in found.stdout
    assert "got SIGUSR1" in agentd.agentctl("logs", "a", "--since", "10m").stdout
    assert agentd.agentctl("logs", "a", "--until", "2000-01-01T00:00").stdout == ""
    bad = agentd.agentctl("logs", "a", "--grep", "(")
    assert bad.returncode == 2 and "not a regular expression" in bad.stderr

    both = agentd.agentctl("logs", "a", "b", "-n", "5").stdout.splitlines()
    assert any(line.startswith("a | ") and "SIGUSR1" in line for line in both)
    assert any(line.startswith("b | ") and "SIGUSR2" in line for line in both)

    follow = subprocess.Popen(
        [sys.executable, "-m", "supervisor.ctl.agentctl", "--run-dir", str(agentd.run_dir), "logs", "a", "b", "-n", "1", "-f"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        # The last line of each first: once both are out, the follower has its offsets.
        assert {follow.stdout.readline()[:4] for _ in range(2)} == {"a | ", "b | "}
        os.kill(pids["b"], signal.SIGUSR1)
        line = follow.stdout.readline()
        assert line.startswith("b | ") and "got SIGUSR1" in line
        os.kill(pids["a"], signal.SIGUSR2)
        line = follow.stdout.readline()
        assert line.startswith("a | ") and "got SIGUSR2" in line
    finally:
        os.killpg(follow.pid, signal.SIGKILL)
        follow.wait()

    # log.interval: rotated by age although far below max_size.
    spew = agentd.log_dir / "spew"
    wait_until(lambda: (spew / "agent.log.1.gz").exists(), timeout=60, message="time-based rotation")

    # Retention: the 40-day-old log of an agent no longer configured is gone; a recent one is still readable.
    wait_until(lambda: not old_dir.exists(), timeout=60, message="retention removed the old agent's logs")
    assert "hello from before (recent-gone)" in agentd.agentctl("logs", "recent-gone").stdout
    assert agentd.agentctl("logs", "never-existed").returncode != 0
