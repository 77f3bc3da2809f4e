"""Issue 10's fault matrix: agentd's own trouble never costs an agent its life.

Each test puts real agentd, real workers and real agents through one numbered break of the issue and
asserts the same things: no agent lost, no duplicate process, no restart caused by agentd's own trouble,
no corrupt file, and every refusal a one-line message. What the operator sees for each fault is in
docs/operations.md ("When agentd itself is in trouble").
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.support.wait import wait_until

FAST = {"interval": 0.3, "heartbeat_timeout": "3s", "startup_grace": "5s"}
WALLCLOCK_SHIM = Path(__file__).resolve().parent / "support" / "wallclock"


def _workers(agentd):
    return {w["name"]: w for w in agentd.call("workers")["workers"]}


def _judged(agentd):
    return _workers(agentd)["health"]["counters"].get("judged", 0)


def _heartbeating_agents(agentd):
    return [
        agentd.helper_agent("h", "heartbeat-http", "--interval", "0.2", health_check=FAST),
        agentd.helper_agent("s", "heartbeat-socket", "--interval", "0.2", health_check=FAST),
        agentd.helper_agent("q", "well-behaved"),  # no heartbeats: judged by its process only
    ]


def _settle(agentd, ids):
    for agent_id in ids:
        agentd.wait_state(agent_id, "running")
    wait_until(lambda: all(agentd.status(a)["health"] == "healthy" for a in ids), timeout=40, message="all healthy")
    wait_until(lambda: all(w["state"] == "running" and w["last_beat_age_s"] is not None for w in _workers(agentd).values()),
               timeout=30, message="every worker beating")
    return {a: agentd.status(a)["pid"] for a in ids}, {n: w["pid"] for n, w in _workers(agentd).items()}


def _assert_nothing_lost(agentd, pids, worker_pids, judged_rounds=15):
    """After the fault: the health worker judges many more rounds, and nobody paid for agentd's trouble."""
    judged = _judged(agentd)
    wait_until(lambda: _judged(agentd) >= judged + judged_rounds, timeout=60, message=f"{judged_rounds} more judgements")
    for agent_id, pid in pids.items():
        st = agentd.status(agent_id)
        assert (st["state"], st["pid"], st["restarts"]) == ("running", pid, 0), (st, agentd.log_text()[-4000:])
    workers = _workers(agentd)
    for name, pid in worker_pids.items():
        assert (workers[name]["pid"], workers[name]["restarts"]) == (pid, 0), (name, workers[name], agentd.log_text()[-4000:])
    # No duplicates: exactly one process per agent (these agents have no children).
    assert sorted(agentd.agent_pids()) == sorted(pids.values())


# ----------------------------------------------------------------------------- break 1: a stalled parent


def test_break1_parent_stopped_20s_restarts_no_agent_and_kills_no_worker(agentd):
    agentd.extra = {"resources": {"interval": 0.5}}
    agentd.write_config(_heartbeating_agents(agentd))
    agentd.start()
    pids, worker_pids = _settle(agentd, ["h", "s", "q"])
    os.kill(agentd.proc.pid, signal.SIGSTOP)  # a VM pause, a swap storm, a blocked disk
    try:
        # The fault lasts 20 s: far past heartbeat_timeout (3 s) and the workers' silence limit (10 s). The
        # health worker keeps judging meanwhile, on heartbeat times the frozen parent no longer publishes.
        time.sleep(20)
    finally:
        os.kill(agentd.proc.pid, signal.SIGCONT)
    _assert_nothing_lost(agentd, pids, worker_pids)
    assert "agentd was stalled for" in agentd.log_text()  # what the operator sees
    assert agentd.call("workers")["parent"].get("stalls", 0) >= 1


# ----------------------------------------------------------------------------- break 2: wall-clock steps


def test_break2_wall_clock_step_an_hour_ahead_restarts_nobody(agentd, monkeypatch):
    """The machine's clock is not stepped (other tests share the box): every agentd process and every agent
    runs with tests/support/wallclock, which moves time.time() by the offset in a file while the monotonic
    clock runs on, as an NTP step does."""
    offset = agentd.base / "wall-offset"
    offset.write_text("0")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(WALLCLOCK_SHIM), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("AGENTD_TEST_WALL_OFFSET_FILE", str(offset))
    agentd.extra = {"resources": {"interval": 0.5}}
    agentd.write_config(_heartbeating_agents(agentd))
    agentd.start()
    pids, worker_pids = _settle(agentd, ["h", "s", "q"])
    offset.write_text("3606")  # more than heartbeat_timeout, as in the issue
    _assert_nothing_lost(agentd, pids, worker_pids)
    offset.write_text("-3600")  # and back past where it was
    _assert_nothing_lost(agentd, pids, worker_pids)
