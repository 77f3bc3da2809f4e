"""Agents outlive the daemon: SIGTERM and kill -9 leave them running, and the next agentd re-adopts them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from tests.support.processes import pid_alive
from tests.support.wait import read_markers, wait_for_marker, wait_until


def _metadata(agentd, agent_id):
    return json.loads((agentd.data_dir / "metadata" / f"{agent_id}.json").read_text())


def test_kill_9_of_agentd_leaves_agents_and_new_agentd_readopts_without_duplicates(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved"), agentd.helper_agent("b", "fork-children", "--children", "2")])
    agentd.start()
    pids = {i: agentd.wait_state(i, "running")["pid"] for i in ("a", "b")}
    wait_until(lambda: all(_metadata(agentd, i).get("pid") == pids[i] and _metadata(agentd, i)["status"] == "running" for i in pids))
    before = sorted(agentd.agent_pids())
    agentd.kill9()
    assert all(pid_alive(p) for p in pids.values())

    agentd.start()
    for agent_id, pid in pids.items():
        st = agentd.wait_state(agent_id, "running")
        assert st["pid"] == pid, f"{agent_id} was not re-adopted"
    assert sorted(agentd.agent_pids()) == before, "a duplicate was started"
    assert len(read_markers(agentd.marker("a"))) == 1  # a single START, no second copy
    assert "re-adopted" in agentd.log_text()

    # The adopted agent is watched like any other: kill it and it is restarted.
    os.kill(pids["a"], signal.SIGKILL)
    wait_until(lambda: agentd.status("a")["restarts"] == 1)
    st = agentd.wait_state("a", "running")
    assert st["pid"] != pids["a"] and st["last_exit"]["code"] is None  # status of a non-child is unknown


def test_sigterm_stops_agentd_but_not_agents(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    agentd.start()
    pid = agentd.wait_state("a", "running")["pid"]
    assert agentd.terminate() == 0
    assert pid_alive(pid)
    assert not (agentd.run_dir / "control.ipc").exists()
    agentd.start()
    assert agentd.wait_state("a", "running")["pid"] == pid


def test_shutdown_with_stop_agents_stops_them_and_next_start_brings_them_back(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    agentd.start()
    pid = agentd.wait_state("a", "running")["pid"]
    result = agentd.agentctl("shutdown", "--stop-agents")
    assert result.returncode == 0, result.stderr
    agentd.proc.wait(timeout=30)
    assert not pid_alive(pid)
    agentd.start()
    assert agentd.wait_state("a", "running")["pid"] != pid  # not operator-stopped: started again


def test_recorded_pid_reused_by_another_program_is_not_adopted(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    agentd.start()
    agentd.wait_state("a", "running")
    agentd.terminate()
    for pid in agentd.agent_pids():
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not agentd.agent_pids())
    # An unrelated program now holds the recorded pid: fake it by pointing the record at one.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        path = agentd.data_dir / "metadata" / "a.json"
        doc = json.loads(path.read_text())
        doc["pid"], doc["pgid"] = stranger.pid, stranger.pid
        path.write_text(json.dumps(doc))
        agentd.start()
        st = agentd.wait_state("a", "running")
        assert st["pid"] != stranger.pid
        assert stranger.poll() is None, "agentd signalled a process that was not its agent"
        assert "gone or now belongs to another program" in agentd.log_text()
        assert len(wait_for_marker(agentd.marker("a"), "START", count=2)) == 2
    finally:
        stranger.kill()
        stranger.wait()


def test_second_agentd_on_same_run_dir_refuses_to_start(agentd):
    agentd.write_config([])
    agentd.start()
    second = subprocess.run(
        [sys.executable, "-m", "supervisor.agentd_cli", "run", "-c", str(agentd.config_path)],
        capture_output=True, text=True, timeout=30,
    )
    assert second.returncode == 1
    assert "already running" in second.stderr and str(agentd.proc.pid) in second.stderr
    assert agentd.call("ping")["pid"] == agentd.proc.pid


def test_sigterm_honours_shutdown_stop_agents_changed_by_reload(agentd):
    """Regression: the signal handler used the value read at start-up."""
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    agentd.start()
    pid = agentd.wait_state("a", "running")["pid"]
    agentd.write_config(shutdown={"stop_agents": True})
    agentd.call("reload")
    assert agentd.terminate() == 0
    assert not pid_alive(pid)


def test_readopted_heartbeat_agent_is_not_restarted_for_the_daemons_downtime(agentd):
    """Regression: after an agentd restart every re-adopted heartbeating agent got a no_heartbeat
    verdict (judged from its original start) before the intakes were even serving."""
    import time

    agentd.extra = {"resources": {"interval": 0.5}}
    fast = {"interval": 0.3, "heartbeat_timeout": "2s", "startup_grace": "2s"}
    agentd.write_config([agentd.helper_agent("hb", "heartbeat-socket", "--interval", "0.3", health_check=fast)])
    agentd.start()
    pid = agentd.wait_state("hb", "running")["pid"]
    wait_until(lambda: agentd.status("hb")["health"] == "healthy", timeout=30)
    agentd.kill9()
    down_since = time.monotonic()
    # agentd stays down longer than startup_grace and heartbeat_timeout together.
    wait_until(lambda: time.monotonic() - down_since > 5, timeout=10, interval=0.2, message="5 s of downtime")
    agentd.start()
    assert agentd.wait_state("hb", "running")["pid"] == pid
    wait_until(lambda: agentd.status("hb")["health"] == "healthy", timeout=30)
    judged = {w["name"]: w for w in agentd.call("workers")["workers"]}["health"]["counters"].get("judged", 0)
    wait_until(lambda: {w["name"]: w for w in agentd.call("workers")["workers"]}["health"]["counters"].get("judged", 0) >= judged + 10, timeout=30)
    st = agentd.status("hb")
    assert st["restarts"] == 0 and st["pid"] == pid, st


def test_last_restart_survives_an_agentd_restart(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    agentd.start()
    agentd.wait_state("a", "running")
    assert agentd.agentctl("restart", "a").returncode == 0
    before = agentd.wait_state("a", "running")
    assert before["last_restart"] is not None
    agentd.terminate()
    agentd.start()
    after = agentd.wait_state("a", "running")
    assert after["last_restart"] == before["last_restart"] and after["last_restart_age_s"] is not None
