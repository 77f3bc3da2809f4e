"""A cgroup per agent (cgroup mode): escaping processes are stopped, re-adoption keeps the cgroup, modes are reported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest

from supervisor.common.cgroups import detect, flat_keyed, pid_cgroup
from supervisor.config.agent import AgentSpec
from supervisor.parent.process_spawn import AgentSpawner
from tests.support.cgroup_root import controllers_of, remove_tree, writable_cgroup2
from tests.support.daemon import ROOT
from tests.support.processes import pid_alive
from tests.support.wait import read_markers, wait_for_marker, wait_until

MOUNT, WHY_NOT = writable_cgroup2()
needs_cgroup2 = pytest.mark.skipif(MOUNT is None, reason=f"no writable cgroup v2 hierarchy: {WHY_NOT}")


def agentd_cli(*argv):
    return subprocess.run([sys.executable, "-m", "supervisor.parent.agentd_cli", *argv], cwd=ROOT, capture_output=True, text=True, timeout=30)


@pytest.fixture
def cgroup_root(agentd):
    """A fresh cgroup directory for agentd's cgroups.root; removed, with everything in it, afterwards
    (agentd first, so it cannot start an agent into the cgroup while it is being emptied)."""
    root = MOUNT / f"agentd-test-{uuid.uuid4().hex[:10]}"
    try:
        yield root
    finally:
        agentd.cleanup()
        remove_tree(root)


def _pids(agentd, agent_id, kinds=("START", "CHILD", "GRANDCHILD")):
    return {m[0]: int(m[1]) for m in read_markers(agentd.marker(agent_id)) if m[0] in kinds}


def _start_escaper(agentd, cgroup_root, agent_id):
    """agentd in cgroup mode with one agent that double-forks out of its group; returns its status once
    running and the pids of its START/CHILD/GRANDCHILD markers (the grandchild has escaped by then)."""
    agentd.write_config([agentd.helper_agent(agent_id, "daemonize-escape")], cgroups={"root": str(cgroup_root)})
    agentd.start()
    state = agentd.wait_state(agent_id, "running")
    wait_for_marker(agentd.marker(agent_id), "GRANDCHILD")
    return state, _pids(agentd, agent_id)


def _populated(path) -> int:
    return flat_keyed((path / "cgroup.events").read_text())["populated"]


@needs_cgroup2
def test_escaping_double_fork_setsid_agent_is_fully_stopped_in_cgroup_mode(agentd, cgroup_root):
    st, pids = _start_escaper(agentd, cgroup_root, "escaper")
    main, escaped = pids["START"], pids["GRANDCHILD"]
    wait_until(lambda: not pid_alive(pids["CHILD"]), message="the middle process to exit")
    # It really escaped: its own session and group, not a descendant of the main process.
    stat = open(f"/proc/{escaped}/stat").read().rsplit(")", 1)[1].split()
    assert int(stat[2]) == escaped and int(stat[1]) != main
    cg = cgroup_root / "agent-escaper"
    assert st["cgroup"] == str(cg)
    assert pid_cgroup(escaped) == pid_cgroup(main)
    wait_until(lambda: sorted(int(p) for p in (cg / "cgroup.procs").read_text().split()) == sorted([main, escaped]), timeout=20,
               message="exactly the main process and the escaped grandchild in the cgroup")

    result = agentd.agentctl("stop", "escaper")
    assert result.returncode == 0, result.stdout + result.stderr
    assert agentd.status("escaper")["state"] == "stopped"
    assert not pid_alive(escaped) and not pid_alive(main)
    assert _populated(cg) == 0
    assert agentd.agent_pids() == []
    # The grandchild got the stop signal itself (it was signalled as a cgroup member, not through a group).
    assert ("TERM", str(escaped)) in [tuple(m[:2]) for m in read_markers(agentd.marker("escaper"))]

    out = agentd.agentctl("status").stdout
    assert f"tracking: cgroup v2 under {cgroup_root}" in out
    assert agentd.call("status")["daemon"]["tracking"] == "cgroup"


@needs_cgroup2
def test_agent_re_adopted_after_kill9_is_still_tracked_by_its_cgroup(agentd, cgroup_root):
    before, pids = _start_escaper(agentd, cgroup_root, "keeper")
    escaped = pids["GRANDCHILD"]
    agentd.kill9()
    agentd.start()
    after = agentd.wait_state("keeper", "running")
    assert after["pid"] == before["pid"] and after["restarts"] == 0
    assert after["cgroup"] == str(cgroup_root / "agent-keeper")
    assert "re-adopted" in after["reason"]
    # Tracked by cgroup: the stop reaches the escaped grandchild the new agentd never saw being born.
    assert agentd.agentctl("stop", "keeper").returncode == 0
    assert not pid_alive(escaped) and not pid_alive(before["pid"])
    assert _populated(cgroup_root / "agent-keeper") == 0


@needs_cgroup2
def test_agent_whose_metadata_is_lost_is_adopted_and_still_tracked_by_its_cgroup(agentd, cgroup_root):
    """Metadata lost while agentd was down: the process is found again (by its identity marks) and
    its cgroup still holds everything it forked, so the stop reaches the escaped grandchild."""
    first, pids = _start_escaper(agentd, cgroup_root, "dup")
    escaped = pids["GRANDCHILD"]
    agentd.kill9()
    for f in (agentd.data_dir / "metadata").glob("dup*"):
        f.unlink()
    agentd.start()
    second = agentd.wait_state("dup", "running")
    assert second["pid"] == first["pid"] and second["cgroup"] == str(cgroup_root / "agent-dup")
    assert agentd.agentctl("stop", "dup").returncode == 0
    assert not pid_alive(escaped) and _populated(cgroup_root / "agent-dup") == 0


@needs_cgroup2
def test_unrecorded_unmarked_processes_in_an_agents_cgroup_are_stopped_before_it_starts(agentd, cgroup_root):
    """Nothing but the cgroup ties this process to the agent (no metadata, no identity in its
    environment): it is still the agent's, and is stopped before a new copy starts."""
    agentd.write_config([agentd.helper_agent("strag", "well-behaved")], cgroups={"root": str(cgroup_root)})
    agentd.start()
    first = agentd.wait_state("strag", "running")
    agentd.kill9()
    cg = cgroup_root / "agent-strag"
    straggler = subprocess.Popen(["sleep", "300"], env={}, start_new_session=True)
    try:
        (cg / "cgroup.procs").write_text(str(straggler.pid))
        os.kill(first["pid"], signal.SIGKILL)
        wait_until(lambda: not pid_alive(first["pid"]))
        for f in (agentd.data_dir / "metadata").glob("strag*"):
            f.unlink()
        agentd.start()
        assert straggler.wait(timeout=30) is not None
        second = agentd.wait_state("strag", "running")
        assert second["pid"] not in (first["pid"], straggler.pid)
        assert "live on in its cgroup" in agentd.log_text()
    finally:
        if straggler.poll() is None:
            straggler.kill()
            straggler.wait()


@needs_cgroup2
def test_a_spawned_agent_is_in_its_cgroup_when_spawn_returns(tmp_path):
    """Regression (stressed run): the shell that moves itself into the cgroup had not done so yet when
    the health worker sampled the new generation; cgroup.procs was empty, so the live agent was judged
    `dead` and restarted until it ended failed (and its stop signals reached nobody: SIGKILL after 3 s)."""
    root = MOUNT / f"agentd-test-{uuid.uuid4().hex[:10]}"
    spawner = AgentSpawner(tmp_path / "logs", {}, detect("auto", root), lambda _id: None)
    spec = AgentSpec.model_validate({"id": "quick", "binary_path": "/bin/sleep", "args": ["300"], "work_dir": str(tmp_path / "work"),
                                     "log": {"format": "plain"}})
    launched = None
    try:
        for _ in range(20):  # the shell wins the race on a quiet machine now and then: try it often
            launched = spawner.launch(spec)
            members = launched.cgroup.pids()
            launched.popen.kill()
            launched.popen.wait()
            assert launched.popen.pid in members, f"pid {launched.popen.pid} not yet in {launched.cgroup.path} ({members})"
    finally:
        if launched is not None and launched.popen.poll() is None:
            launched.popen.kill()
            launched.popen.wait()
        remove_tree(root)


@needs_cgroup2
def test_limits_need_controllers_and_are_written_where_enabled(agentd, cgroup_root):
    cgroup_root.mkdir()
    if not {"memory", "pids"} <= controllers_of(cgroup_root):
        pytest.skip(f"memory and pids controllers are not available in {cgroup_root.parent} (offered: {sorted(controllers_of(cgroup_root)) or 'none'})")
    agentd.write_config([agentd.helper_agent("lim", "well-behaved", limits={"memory_max": "256MiB", "pids_max": 64, "cpu_max": 0.5})],
                        cgroups={"root": str(cgroup_root)})
    agentd.start()
    agentd.wait_state("lim", "running")
    cg = cgroup_root / "agent-lim"
    assert (cg / "memory.max").read_text().strip() == str(256 << 20)
    assert (cg / "pids.max").read_text().strip() == "64"


def test_process_group_mode_is_reported_with_its_reason(agentd):
    agentd.write_config([agentd.helper_agent("plain", "well-behaved")], cgroups={"mode": "off"})
    agentd.start()
    st = agentd.wait_state("plain", "running")
    assert st["cgroup"] is None
    daemon = agentd.call("status")["daemon"]
    assert daemon["tracking"] == "process-group" and "cgroups.mode is off" in daemon["tracking_detail"]
    assert "tracking: process groups: cgroups.mode is off" in agentd.agentctl("status").stdout


def test_required_cgroups_refuse_to_start_without_a_usable_hierarchy(agentd, tmp_path):
    agentd.write_config([agentd.helper_agent("x", "well-behaved")], cgroups={"mode": "required", "root": str(tmp_path / "not-a-cgroup")})
    proc = agentd.start(wait=False)
    assert proc.wait(timeout=30) == 1
    assert "cgroups.mode is required, but cgroups.root" in agentd.log_text()
    check = agentd_cli("check-config", str(agentd.config_path))
    assert check.returncode == 1 and "cgroups.mode is required" in check.stderr


@needs_cgroup2
def test_check_config_says_which_mode_would_be_used(agentd, cgroup_root):
    agentd.write_config([agentd.helper_agent("x", "well-behaved")], cgroups={"root": str(cgroup_root)})
    check = agentd_cli("check-config", str(agentd.config_path))
    assert check.returncode == 0, check.stderr
    assert f"# process tracking on this machine: cgroup v2 under {cgroup_root}" in check.stdout
    assert not cgroup_root.exists()  # a check creates nothing
    agentd.write_config(cgroups={"mode": "off"})
    assert "process groups: cgroups.mode is off" in agentd_cli("check-config", str(agentd.config_path)).stdout


@needs_cgroup2
def test_heartbeats_from_an_escaped_process_count_in_cgroup_mode(agentd, cgroup_root):
    """The Unix-socket intake names the agent by the sender's cgroup: a double-forked, setsid'd
    process that nothing else ties to the agent still speaks for it."""
    agentd.write_config([agentd.helper_agent("hb", "escape-heartbeat", "--interval", "0.2",
                                             health_check={"heartbeat_timeout": "30s", "interval": 0.5})],
                        cgroups={"root": str(cgroup_root)})
    agentd.start()
    st = agentd.wait_state("hb", "running")
    assert st["reason"] == "first heartbeat received"
    escaped = int(wait_for_marker(agentd.marker("hb"), "GRANDCHILD")[0][1])
    assert escaped != st["pid"]
    wait_until(lambda: agentd.status("hb")["heartbeat_age_s"] is not None, timeout=20)
    assert agentd.agentctl("stop", "hb").returncode == 0
    assert not pid_alive(escaped)


@needs_cgroup2
def test_agent_started_in_a_cgroup_stays_tracked_by_it_when_agentd_restarts_without_cgroups(agentd, cgroup_root):
    """The cgroup is recorded in the agent's metadata: switching `cgroups.mode: off` (or moving
    cgroups.root) does not lose the processes started before."""
    before, pids = _start_escaper(agentd, cgroup_root, "moved")
    escaped = pids["GRANDCHILD"]
    agentd.terminate()
    agentd.write_config(cgroups={"mode": "off"})
    agentd.start()
    after = agentd.wait_state("moved", "running")
    assert after["pid"] == before["pid"] and after["cgroup"] == str(cgroup_root / "agent-moved")
    assert agentd.call("status")["daemon"]["tracking"] == "process-group"
    assert agentd.agentctl("stop", "moved").returncode == 0
    assert not pid_alive(escaped)


@needs_cgroup2
def test_resource_figures_count_escaped_processes_from_the_cgroup(agentd, cgroup_root):
    agentd.extra = {"resources": {"interval": 0.5}}
    _start_escaper(agentd, cgroup_root, "acct")

    def sample():
        item = next(i for i in agentd.call("top")["agents"] if i["status"]["id"] == "acct")
        s = item["sample"]
        return s if s and s["procs"] == 2 and s["cpu"] is not None else None

    s = wait_until(sample, timeout=30, message="a sample of main + escaped grandchild with a CPU rate")
    assert s["rss"] > 0 and s["cpu"] >= 0
