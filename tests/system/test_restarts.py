"""Real agents that die get restarted under the backoff steps; crash loops end in `failed`; start revives."""

from __future__ import annotations

import os
import signal

from tests.support.wait import read_markers, wait_for_marker, wait_until


def test_agent_killed_with_9_is_restarted_under_backoff(agentd):
    agentd.write_config([agentd.helper_agent("w1", "well-behaved", restart={"backoff_steps": [0.2, 1.5]})])
    agentd.start()
    first = agentd.wait_state("w1", "running")
    wait_until(lambda: ("START", str(first["pid"])) in [m[:2] for m in read_markers(agentd.marker("w1"))])
    os.kill(first["pid"], signal.SIGKILL)
    wait_until(lambda: agentd.status("w1")["restarts"] == 1, message="first restart")
    second = agentd.wait_state("w1", "running")
    assert second["pid"] != first["pid"]
    # Kill it only once it has really started (written START), so every generation leaves a marker.
    wait_until(lambda: ("START", str(second["pid"])) in [m[:2] for m in read_markers(agentd.marker("w1"))])
    assert second["last_exit"]["signal"] == "SIGKILL"
    assert "killed by SIGKILL" in second["last_restart_reason"]
    # The second crash waits out the second step (1.5 s): the agent is seen in `restarting` first.
    os.kill(second["pid"], signal.SIGKILL)
    waiting = agentd.wait_state("w1", "restarting")
    assert waiting["next_restart_in_s"] is not None and waiting["next_restart_in_s"] > 0.3
    third = agentd.wait_state("w1", "running")
    assert third["restarts"] == 2 and third["pid"] not in (first["pid"], second["pid"])
    try:
        starts = wait_for_marker(agentd.marker("w1"), "START", count=3)
    except AssertionError:
        log = (agentd.log_dir / "w1" / "agent.log").read_text()
        raise AssertionError(f"third={third}\nagent log:\n{log}\nagentd log:\n{agentd.log_text()[-3000:]}") from None
    assert len(starts) == 3
    events = agentd.call("events", {"ids": ["w1"]})["events"]
    assert [e["new"] for e in events].count("restarting") == 2


def test_crash_loop_ends_failed_and_start_revives(agentd):
    # A start_seconds far beyond how long even a slow machine takes to start and crash the helper: each
    # generation dies while starting, never after being counted running.
    crashy = agentd.helper_agent("c1", "crash-on-start", start_seconds=60, restart={"backoff_steps": [0.1], "max_retries": 3})
    agentd.write_config([crashy])
    agentd.start()
    failed = agentd.wait_state("c1", "failed")
    assert "gave up after 3 restarts" in failed["reason"]
    assert failed["last_exit"]["code"] == 2
    assert len(wait_for_marker(agentd.marker("c1"), "START", count=4)) == 4
    # Nothing automatic brings it back...
    assert agentd.status("c1")["state"] == "failed"
    # ...but an operator start does, with a fresh retry budget (it fails again, 4 more starts).
    result = agentd.agentctl("start", "c1")
    assert result.returncode == 1, result.stdout + result.stderr  # it died during start: reported as a failure
    assert "c1" in result.stdout
    agentd.wait_state("c1", "failed")
    assert len(wait_for_marker(agentd.marker("c1"), "START", count=8)) == 8


def test_on_failure_policy_leaves_a_clean_exit_stopped(agentd):
    agentd.write_config([agentd.helper_agent("z", "exit-zero", "--after", "0.5", restart={"policy": "on-failure"})])
    agentd.start()
    st = agentd.wait_state("z", "stopped")
    assert st["last_exit"]["code"] == 0 and "on-failure" in st["reason"]
    assert st["restarts"] == 0
