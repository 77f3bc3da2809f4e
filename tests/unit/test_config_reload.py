"""`ConfigReload` (supervisor/parent/reload_apply.py): the config in force across reloads, from real
config files, without processes.

Agents are real state machines over tests/unit/test_lifecycle.py's FakeOps; the clock is a number.
"""

from __future__ import annotations

import logging

import pytest

from supervisor.config.loading import load_config
from supervisor.parent.lifecycle import AgentProcess
from supervisor.parent.registry import Registry
from supervisor.parent.reload_apply import ConfigReload
from supervisor.wire.protocol import ControlError, ErrorCode
from supervisor.wire.states import AgentState as S
from tests.unit.test_lifecycle import FakeOps


def write(path, *agent_ids: str, http_listen: str = "127.0.0.1:0") -> None:
    agents = "".join(f"  - id: {a}\n    binary_path: /bin/true\n" for a in agent_ids)
    path.write_text(f"daemon:\n  run_dir: {path.parent}/run\n  data_dir: {path.parent}/data\n  log_dir: {path.parent}/log\n"
                    f"heartbeat:\n  http:\n    listen: {http_listen}\nagents:\n{agents}")


class World:
    def __init__(self, path) -> None:
        self.ops, self.registry = FakeOps(), Registry()
        self.applied: list[list[str]] = []
        self.published: list[str] = []
        config = load_config(path)
        for spec in config.agents:
            self.registry.add(self.new_agent(spec))
        self.reloads = ConfigReload(config, path, self.registry, self.new_agent, lambda agent: self.published.append(agent.spec.id),
                                    lambda new: self.applied.append([s.id for s in new.agents]), lambda: 5.0)

    def new_agent(self, spec) -> AgentProcess:
        return AgentProcess(spec, self.ops, on_transition=lambda *a: None)


@pytest.fixture
def path(tmp_path):
    p = tmp_path / "agentd.yaml"
    write(p, "web", "db")
    return p


def test_a_reload_applies_the_new_file_and_keeps_it_in_force(path):
    world = World(path)
    started = world.reloads.config
    write(path, "web", "cache")
    plan = world.reloads.reload()
    assert (plan.added, plan.removed) == (["cache"], ["db"])
    assert [s.id for s in world.reloads.config.agents] == ["web", "cache"] and world.reloads.started is started
    assert world.registry.get("cache").state == S.STARTING and world.published == ["cache"]
    assert world.applied == [["web", "cache"]] and world.reloads.restart_required == []


def test_a_dry_run_computes_the_plan_and_changes_nothing(path):
    world = World(path)
    before = world.reloads.config
    write(path, "web")
    plan = world.reloads.reload(dry_run=True)
    assert plan.removed == ["db"]
    assert world.reloads.config is before and world.applied == [] and world.registry.get("db").after_stop is None


def test_a_restart_only_change_is_remembered_until_agentd_restarts(path):
    world = World(path)
    write(path, "web", "db", http_listen="127.0.0.1:1")
    assert world.reloads.reload().restart_required == ["heartbeat"]
    assert world.reloads.restart_required == ["heartbeat"]
    assert world.reloads.reload().restart_required == ["heartbeat"]  # compared with the config agentd started with
    write(path, "web", "db")
    world.reloads.reload()
    assert world.reloads.restart_required == []


def test_a_bad_file_changes_nothing_and_says_why(path):
    world = World(path)
    before = world.reloads.config
    path.write_text("agents: [\n")
    with pytest.raises(ControlError) as info:
        world.reloads.reload()
    assert info.value.code == ErrorCode.INVALID_CONFIG and "nothing changed" in info.value.message
    assert world.reloads.config is before and world.applied == []


def test_without_a_config_file_there_is_nothing_to_reload(path):
    world = World(path)
    world.reloads.config_path = None
    with pytest.raises(ControlError) as info:
        world.reloads.reload()
    assert info.value.code == ErrorCode.FAILED


def test_a_reload_by_signal_logs_its_failure_instead_of_raising(path, caplog):
    world = World(path)
    path.write_text("agents: [\n")
    with caplog.at_level(logging.INFO, logger="supervisor.parent.daemon"):
        world.reloads.from_signal()
    assert "SIGHUP reload failed" in caplog.text and world.applied == []
