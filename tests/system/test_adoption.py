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
    # "running" comes after start_seconds, not after b has forked: count the tree only once it is whole.
    wait_for_marker(agentd.marker("b"), "CHILD", count=2)
    before = sorted(agentd.agent_pids())
    assert len(before) == 4, before
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
        [sys.executable, "-m", "supervisor.parent.agentd_cli", "run", "-c", str(agentd.config_path)],
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
    wait_until(lambda: time.monotonic() - down_since > 5, timeout=30, interval=0.2, message="5 s of downtime")
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


def test_agent_disabled_while_agentd_was_down_is_stopped_not_adopted_running(agentd):
    """Regression (review): a live recorded process was adopted and kept running though disabled."""
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    agentd.start()
    pid = agentd.wait_state("a", "running")["pid"]
    agentd.kill9()
    agentd.agents[0]["enabled"] = False
    agentd.write_config()
    agentd.start()
    st = agentd.wait_state("a", "stopped")
    assert not pid_alive(pid) and not st["operator_stopped"]


def test_identity_is_start_ticks_not_wall_clock_create_time(agentd):
    """Regression (review): a wall-clock step moves psutil's create_time; adoption must not depend on it."""
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    agentd.start()
    pid = agentd.wait_state("a", "running")["pid"]
    wait_until(lambda: _metadata(agentd, "a").get("start_ticks"))
    agentd.kill9()
    path = agentd.data_dir / "metadata" / "a.json"
    doc = json.loads(path.read_text())
    doc["create_time"] += 7.0  # what a clock step of 7 s does to a create time computed now
    path.write_text(json.dumps(doc))
    agentd.start()
    assert agentd.wait_state("a", "running")["pid"] == pid
    # Regression (stressed run): the adopted handle kept the record's create time, so the health worker
    # took the live pid for a reused one and judged the agent dead; on a quiet machine the first status
    # came before that verdict, so only a loaded one showed it.
    st = wait_until(lambda: (s := agentd.status("a"))["health"] not in (None, "unknown", "starting") and s, timeout=30,
                    message="the health worker judged the adopted agent")
    assert (st["pid"], st["restarts"], st["health"]) == (pid, 0, "healthy"), st


def test_leftovers_of_a_vanished_main_process_are_stopped_before_a_new_start(agentd):
    """Regression (review): children of a main process that died while agentd was down lived on
    beside the new generation."""
    agentd.write_config([agentd.helper_agent("b", "fork-children", "--children", "2")])
    agentd.start()
    main = agentd.wait_state("b", "running")["pid"]
    children = [int(m[1]) for m in wait_for_marker(agentd.marker("b"), "CHILD", count=2)]
    wait_until(lambda: _metadata(agentd, "b").get("pid") == main)
    agentd.kill9()
    os.kill(main, signal.SIGKILL)
    wait_until(lambda: not pid_alive(main))
    assert all(pid_alive(c) for c in children)
    agentd.start()
    st = agentd.wait_state("b", "running")
    assert st["pid"] != main
    wait_until(lambda: not any(pid_alive(c) for c in children), message="old children stopped")
    assert "live on: stopping them first" in agentd.log_text()


def test_removal_interrupted_by_an_agentd_restart_is_finished(agentd):
    """Regression (review): an agent removed by reload while still stopping became an unmanaged orphan."""
    # "gone" ignores the first agentd's SIGTERM and its SIGKILL is far off, so the removal is still under way
    # when that agentd goes, however slow the machine; it stops on the next agentd's SIGTERM.
    gone = agentd.helper_agent("gone", "well-behaved", "--ignore-terms", "1", stop_timeout=120)
    agentd.write_config([gone, agentd.helper_agent("keep", "well-behaved")])
    agentd.start()
    pid = agentd.wait_state("gone", "running")["pid"]
    wait_for_marker(agentd.marker("gone"), "START")  # its signal handling is set up
    agentd.write_config([agentd.agents[1]])
    agentd.call("reload")
    wait_until(lambda: _metadata(agentd, "gone")["status"] == "stopping")
    wait_for_marker(agentd.marker("gone"), "TERM")  # the first SIGTERM arrived and was ignored
    assert agentd.terminate() == 0
    assert pid_alive(pid)
    agentd.start()
    wait_until(lambda: not pid_alive(pid), message="the orphan stopped")
    wait_until(lambda: not (agentd.data_dir / "metadata" / "gone.json").exists())
    assert "no longer in the configuration but still runs; stopping it" in agentd.log_text()
    assert "gone" not in [a["id"] for a in agentd.call("status")["agents"]]


def test_http_port_0_is_kept_across_an_agentd_restart_for_readopted_agents(agentd):
    """Regression: with listen 127.0.0.1:0 a restarted agentd took a new port, and re-adopted agents kept
    posting to the old one until they were restarted for missing heartbeats."""
    fast = {"interval": 0.3, "heartbeat_timeout": "3s", "startup_grace": "5s"}
    agentd.write_config([agentd.helper_agent("h", "heartbeat-http", "--interval", "0.2", health_check=fast)])
    agentd.start()
    pid = agentd.wait_state("h", "running")["pid"]
    assert agentd.terminate() == 0
    agentd.start()
    wait_until(lambda: agentd.status("h")["heartbeat_age_s"] is not None and agentd.status("h")["heartbeat_age_s"] < 1.0,
               message="heartbeats from the re-adopted agent")
    first_seen = agentd.status("h")["last_heartbeat"]
    wait_until(lambda: agentd.status("h")["last_heartbeat"] != first_seen, message="more heartbeats")
    st = agentd.status("h")
    assert st["pid"] == pid and st["restarts"] == 0


def test_an_answered_stop_is_on_disk_before_agentd_can_die(agentd):
    """Regression: `stop` answered before the loop pass that saved the agent's `stopped` record, so a
    kill -9 of agentd right after left `stopping` on disk (seen in test_agentctl_offline)."""
    agentd.write_config([agentd.helper_agent(i, "well-behaved") for i in ("a", "b", "c")])
    agentd.start()
    for i in ("a", "b", "c"):
        agentd.wait_state(i, "running")
    assert agentd.agentctl("stop", "b", "c").returncode == 0
    agentd.kill9()  # at once: nothing may still be queued for the disk
    for i in ("b", "c"):
        record = json.loads((agentd.data_dir / "metadata" / f"{i}.json").read_text())
        assert record["status"] == "stopped" and record["operator_stopped"], record
    agentd.start()
    assert agentd.wait_state("b", "stopped")["operator_stopped"]
    agentd.wait_state("a", "running")


def test_an_agent_adopted_by_its_identity_alone_is_not_judged_dead_by_the_health_worker(agentd):
    # Without metadata the adopted handle had no create time and took the adoption's wall clock; the health
    # worker's sampler then took the live pid for a reused one and reported the agent dead (restarted it)
    # on its first sample. Seen once workers started fast enough to sample before a test looked.
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    agentd.start()
    pid = agentd.wait_state("a", "running")["pid"]
    wait_until(lambda: _metadata(agentd, "a").get("pid") == pid)
    agentd.kill9()
    (agentd.data_dir / "metadata" / "a.json").unlink()
    agentd.start()
    assert agentd.wait_state("a", "running")["pid"] == pid
    st = wait_until(lambda: (s := agentd.status("a"))["health"] not in (None, "unknown", "starting") and s, timeout=30,
                    message="the health worker judged the adopted agent")
    assert (st["pid"], st["restarts"], st["health"]) == (pid, 0, "healthy"), st
