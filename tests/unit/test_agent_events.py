"""What the loop does when an agent tells it something (supervisor/parent/agent_events.py), without processes.

Agents are real state machines over tests/unit/test_lifecycle.py's FakeOps; the clock is a number,
the outputs (state feed, waiters, wake-ups, persistence) are lists.
"""

from __future__ import annotations

import logging

import pytest

from supervisor.parent.agent_events import AgentEvents
from supervisor.parent.event_log import EventLog
from supervisor.parent.lifecycle import AgentProcess
from supervisor.parent.registry import Registry
from supervisor.wire.states import AgentState as S
from tests.unit.test_lifecycle import FakeOps, make_spec


class World:
    def __init__(self) -> None:
        self.t = 10.0
        self.ops, self.registry, self.log = FakeOps(), Registry(), EventLog()
        self.calls: list[str] = []
        self.moved = False  # what the main-process check answers
        self.events = AgentEvents(self.registry, self.log, lambda agent: self.calls.append(f"publish {agent.spec.id}"),
                                  lambda: self.calls.append("changed"), lambda: self.calls.append("wake"),
                                  lambda: self.calls.append("after_action"), lambda: self.t,
                                  lambda agent_id: self.calls.append(f"drain {agent_id}"), lambda handle: self.moved)

    def running(self, agent_id: str = "a1", **spec) -> AgentProcess:
        agent = AgentProcess(make_spec(id=agent_id, **spec), self.ops, on_transition=self.events.on_transition)
        self.registry.add(agent)
        agent.start(0.0)
        agent.tick(1.0)
        self.calls.clear()
        return agent


@pytest.fixture
def world():
    return World()


def test_a_transition_is_logged_published_and_wakes_the_waiters_and_the_loop(world, caplog):
    agent = AgentProcess(make_spec(id="a1"), world.ops, on_transition=world.events.on_transition)
    with caplog.at_level(logging.INFO, logger="supervisor.parent.daemon"):
        agent.start(0.0)
    [event] = world.log.since(None, 10)
    assert (event.agent_id, event.old, event.new) == ("a1", "stopped", "starting")
    assert world.calls == ["publish a1", "changed", "wake"]
    assert "a1: stopped -> starting" in caplog.text


def test_an_exit_is_applied_after_the_notify_queue_is_drained_and_a_restart_is_a_warning(world, caplog):
    agent = world.running()
    world.ops.alive.discard(agent.handle.generation)
    with caplog.at_level(logging.INFO, logger="supervisor.parent.daemon"):
        world.events.on_exit("a1", agent.handle.generation, 1, None)
    assert agent.state == S.RESTARTING
    assert world.calls[0] == "drain a1" and world.calls[-1] == "after_action"
    assert any(r.levelno == logging.WARNING and "-> restarting" in r.getMessage() for r in caplog.records)


def test_an_exit_of_a_main_process_that_moved_on_or_of_an_unknown_agent_changes_nothing(world):
    agent = world.running()
    world.moved = True
    world.events.on_exit("a1", agent.handle.generation, 0, None)
    assert agent.state == S.RUNNING and world.calls == ["drain a1"]
    world.calls.clear()
    world.events.on_exit("nobody", 1, 0, None)
    assert world.calls == []


def test_a_config_file_change_with_a_problem_is_refused_with_a_warning(world, caplog):
    agent = world.running(config_file="/etc/a1.yaml", on_config_change="restart")
    with caplog.at_level(logging.INFO, logger="supervisor.parent.daemon"):
        world.events.on_config_file_change("a1", "line 3: not YAML")
    assert agent.state == S.RUNNING and world.calls[-1] == "after_action"
    assert any(r.levelno == logging.WARNING and "a1: config_file changed" in r.getMessage() for r in caplog.records)
    world.calls.clear()
    world.events.on_config_file_change("nobody", None)
    assert world.calls == []
