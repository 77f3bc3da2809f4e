"""`agentctl stop` stops the whole tree: children, TERM-ignoring ones, setsid grandchildren; and it sticks."""

from __future__ import annotations

from tests.support.processes import pid_alive
from tests.support.wait import read_markers, wait_for_marker


def _tree_pids(agentd, agent_id):
    """Every pid the helper agent reported: itself, its children, its grandchildren."""
    return [int(m[1]) for m in read_markers(agentd.marker(agent_id)) if m[0] in ("START", "CHILD", "GRANDCHILD")]


def test_stop_kills_children_and_term_ignoring_tree(agentd):
    agentd.write_config([
        agentd.helper_agent("kids", "fork-children", "--children", "3"),
        agentd.helper_agent("stubborn", "fork-children", "--children", "2", "--ignore-term", stop_timeout=1),
        agentd.helper_agent("escaper", "setsid-grandchild"),
    ])
    agentd.start()
    for agent_id in ("kids", "stubborn", "escaper"):
        agentd.wait_state(agent_id, "running")
    wait_for_marker(agentd.marker("kids"), "CHILD", count=3)
    wait_for_marker(agentd.marker("stubborn"), "CHILD", count=2)
    wait_for_marker(agentd.marker("escaper"), "GRANDCHILD")
    pids = {a: _tree_pids(agentd, a) for a in ("kids", "stubborn", "escaper")}
    assert all(pid_alive(p) for ps in pids.values() for p in ps)

    result = agentd.agentctl("stop", "kids", "stubborn", "escaper")
    assert result.returncode == 0, result.stdout + result.stderr
    for agent_id, tree in pids.items():
        assert agentd.status(agent_id)["state"] == "stopped"
        assert not [p for p in tree if pid_alive(p)], f"{agent_id}: survivors {tree}"
    assert agentd.agent_pids() == []
    # The TERM-ignoring tree needed SIGKILL; the others exited cleanly on TERM.
    assert agentd.status("stubborn")["last_exit"]["signal"] == "SIGKILL"
    assert agentd.status("kids")["last_exit"] == {**agentd.status("kids")["last_exit"], "code": 0, "signal": None}


def test_stop_force_kills_a_term_ignoring_tree_at_once(agentd):
    agentd.write_config([agentd.helper_agent("stubborn", "ignore-term", stop_timeout=600)])
    agentd.start()
    agentd.wait_state("stubborn", "running")
    wait_for_marker(agentd.marker("stubborn"), "START")
    result = agentd.agentctl("stop", "--force", "stubborn", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr  # well before the 600 s stop_timeout
    status = agentd.status("stubborn")
    assert status["state"] == "stopped" and status["last_exit"]["signal"] == "SIGKILL"


def test_stop_all_acts_in_parallel_and_reports_each(agentd):
    agentd.write_config([agentd.helper_agent(f"s{i}", "ignore-term", stop_timeout=2) for i in range(4)])
    agentd.start()
    for i in range(4):
        agentd.wait_state(f"s{i}", "running")
    result = agentd.call("stop", {"all": True, "timeout": 30}, timeout=40)
    assert [r["id"] for r in result["results"]] == ["s0", "s1", "s2", "s3"]
    assert all(r["ok"] and r["state"] == "stopped" for r in result["results"])
    # In parallel: four 2 s stop timeouts did not add up (the events show all four stops within one window).
    events = [e for e in agentd.call("events")["events"] if e["new"] == "stopped"]
    assert len(events) == 4


def test_operator_stopped_agent_stays_down_through_reload_and_daemon_restart(agentd):
    agentd.write_config([agentd.helper_agent("keep", "well-behaved"), agentd.helper_agent("other", "well-behaved")])
    agentd.start()
    agentd.wait_state("keep", "running")
    assert agentd.agentctl("stop", "keep").returncode == 0
    # A reload that changes this agent's spec does not start it.
    agentd.agents[0]["args"].append("--after=9")
    agentd.agents[0]["env"]["NEW"] = "1"
    agentd.write_config()
    plan = agentd.call("reload")["plan"]
    assert [c["id"] for c in plan["changed"]] == ["keep"]
    # A daemon restart does not start it either.
    assert agentd.terminate() == 0
    agentd.start()
    agentd.wait_state("other", "running")
    st = agentd.status("keep")
    assert st["state"] == "stopped" and st["operator_stopped"]
    assert len(wait_for_marker(agentd.marker("keep"), "START")) == 1
    # An operator start does.
    assert agentd.agentctl("start", "keep").returncode == 0
    agentd.wait_state("keep", "running")


def test_stop_of_a_stopped_agent_is_clear_and_succeeds(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    agentd.start()
    agentd.wait_state("a", "running")
    assert agentd.agentctl("stop", "a").returncode == 0
    again = agentd.agentctl("stop", "a")
    assert again.returncode == 0
    assert "already stopped" in again.stdout
