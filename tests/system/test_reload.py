"""reload computes a per-agent diff and touches only what changed; --dry-run only shows it; SIGHUP = reload."""

from __future__ import annotations

import signal

from tests.support.wait import read_markers, wait_until


def test_reload_adds_removes_and_restarts_only_changed_agents(agentd):
    keep = agentd.helper_agent("keep", "well-behaved")
    change = agentd.helper_agent("change", "well-behaved")
    drop = agentd.helper_agent("drop", "well-behaved")
    agentd.write_config([keep, change, drop])
    agentd.start()
    pids = {i: agentd.wait_state(i, "running")["pid"] for i in ("keep", "change", "drop")}

    change["env"]["LEVEL"] = "debug"
    agentd.write_config([keep, change, agentd.helper_agent("new", "well-behaved")])

    dry = agentd.agentctl("reload", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "+ new" in dry.stdout and "- drop" in dry.stdout and "~ change (changed: env)" in dry.stdout
    assert agentd.status("drop")["state"] == "running"  # dry run touched nothing

    plan = agentd.call("reload")["plan"]
    assert plan["added"] == ["new"] and plan["removed"] == ["drop"]
    assert [c["id"] for c in plan["changed"]] == ["change"] and plan["unchanged"] == ["keep"]

    agentd.wait_state("new", "running")
    wait_until(lambda: agentd.status("change")["pid"] not in (None, pids["change"]))
    agentd.wait_state("change", "running")
    wait_until(lambda: "drop" not in [a["id"] for a in agentd.call("status")["agents"]])
    assert agentd.status("keep")["pid"] == pids["keep"]
    assert len(read_markers(agentd.marker("keep"))) == 1
    assert not (agentd.data_dir / "metadata" / "drop.json").exists() or wait_until(
        lambda: not (agentd.data_dir / "metadata" / "drop.json").exists())
    assert any(m[0] == "TERM" for m in read_markers(agentd.marker("drop")))


def test_sighup_reloads_and_a_broken_config_changes_nothing(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    agentd.start()
    pid = agentd.wait_state("a", "running")["pid"]
    agentd.config_path.write_text(agentd.config_path.read_text() + "\nbogus_section: {}\n")
    result = agentd.agentctl("reload")
    assert result.returncode == 1
    assert "bogus_section" in result.stderr and "nothing changed" in result.stderr
    agentd.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP reload failed" in agentd.log_text())
    assert agentd.proc.poll() is None and agentd.status("a")["pid"] == pid

    agentd.write_config([agentd.helper_agent("a", "well-behaved"), agentd.helper_agent("b", "well-behaved")])
    agentd.proc.send_signal(signal.SIGHUP)
    agentd.wait_state("b", "running")
    assert agentd.status("a")["pid"] == pid


def test_agent_re_added_while_its_removal_is_still_stopping_is_kept(agentd):
    """Regression: the pending removal used to win, dropping an agent that was back in the config."""
    slow = agentd.helper_agent("slow", "ignore-term", stop_timeout=3)
    other = agentd.helper_agent("other", "well-behaved")
    agentd.write_config([slow, other])
    agentd.start()
    agentd.wait_state("slow", "running")
    agentd.write_config([other])
    agentd.call("reload")
    assert agentd.status("slow")["state"] == "stopping"  # ignores TERM: takes stop_timeout
    agentd.write_config([slow, other])
    agentd.call("reload")
    st = agentd.wait_state("slow", "running", timeout=30)
    assert st["pid"] is not None
    agentd.call("reload")  # and reload keeps working afterwards
    assert (agentd.data_dir / "metadata" / "slow.json").exists()


def test_heartbeat_section_change_is_reported_as_needing_a_restart():
    from pathlib import Path

    from supervisor.config.loading import parse_config
    from supervisor.parent.reload_plan import plan_reload

    old = parse_config({"heartbeat": {"http": {"listen": "127.0.0.1:8084"}}}, source="a.yaml", base_dir=Path("/"))
    new = parse_config({"heartbeat": {"http": {"listen": "127.0.0.1:9999"}}}, source="a.yaml", base_dir=Path("/"))
    assert plan_reload(old, new).restart_required == ["heartbeat"]


def test_agent_removed_and_added_again_continues_its_generations(agentd):
    """Regression: a re-added agent started again at generation 1, so a verdict or heartbeat still in flight
    about the removed process (also generation 1) would have been taken as being about the new one."""
    agentd.write_config([agentd.helper_agent("a", "well-behaved"), agentd.helper_agent("keep", "well-behaved")])
    agentd.start()
    first = agentd.wait_state("a", "running")
    agentd.write_config([agentd.agents[1]])
    agentd.call("reload")
    wait_until(lambda: "a" not in [s["id"] for s in agentd.call("status")["agents"]], message="a removed")
    agentd.write_config([agentd.helper_agent("a", "well-behaved"), agentd.agents[0]])
    agentd.call("reload")
    again = agentd.wait_state("a", "running")
    assert again["pid"] != first["pid"]
    assert again["generation"] > first["generation"]


def test_restart_required_is_reported_until_agentd_restarts():
    """Regression: the reminder vanished on the next reload, though the change was still not in force."""
    from pathlib import Path

    from supervisor.config.loading import parse_config
    from supervisor.parent.reload_plan import plan_reload

    started = parse_config({"heartbeat": {"http": {"listen": "127.0.0.1:8084"}}}, source="a.yaml", base_dir=Path("/"))
    first = parse_config({"heartbeat": {"http": {"listen": "127.0.0.1:9999"}}}, source="a.yaml", base_dir=Path("/"))
    assert plan_reload(started, first).restart_required == ["heartbeat"]
    again = parse_config({"heartbeat": {"http": {"listen": "127.0.0.1:9999"}}, "agents": []}, source="a.yaml", base_dir=Path("/"))
    assert plan_reload(first, again, in_force=started).restart_required == ["heartbeat"]
    back = parse_config({"heartbeat": {"http": {"listen": "127.0.0.1:8084"}}}, source="a.yaml", base_dir=Path("/"))
    assert plan_reload(again, back, in_force=started).restart_required == []


def test_status_shows_a_change_waiting_for_an_agentd_restart(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    agentd.start()
    agentd.wait_state("a", "running")
    agentd.write_config(heartbeat={"http": {"listen": "127.0.0.1:0", "max_body": 2048}})
    first = agentd.agentctl("reload")
    assert "heartbeat" in first.stdout + first.stderr
    agentd.call("reload")  # a second reload: still not in force
    out = agentd.agentctl("status").stdout
    assert "restart agentd to apply: heartbeat" in out, out
