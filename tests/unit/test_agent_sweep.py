"""The supervision loop's pass over every agent (supervisor/parent/agent_sweep.py), without processes.

Agents are real state machines over tests/unit/test_lifecycle.py's FakeOps; the clock is a number,
saving and retiring are lists.
"""

from __future__ import annotations

import pytest

from supervisor.parent.agent_sweep import AgentSweep
from supervisor.parent.lifecycle import AgentProcess
from supervisor.parent.registry import Registry
from supervisor.wire.states import AgentState as S
from tests.unit.test_lifecycle import FakeOps, make_spec


class World:
    def __init__(self) -> None:
        self.ops, self.registry = FakeOps(), Registry()
        self.saved: list[str] = []
        self.retired: list[str] = []
        self.sweep = AgentSweep(self.registry, lambda record: self.saved.append(record.id), self.retired.append)

    def agent(self, agent_id: str, **spec) -> AgentProcess:
        agent = AgentProcess(make_spec(id=agent_id, **spec), self.ops, on_transition=lambda *a: None)
        agent.generation = self.sweep.generation_of(agent_id)
        self.registry.add(agent)
        return agent


@pytest.fixture
def world():
    return World()


def test_a_pass_ticks_every_agent_saves_the_changed_and_returns_the_earliest_due_time(world):
    quick, slow, idle = world.agent("quick", start_seconds=1), world.agent("slow", start_seconds=5), world.agent("idle")
    quick.start(0.0)
    slow.start(0.0)
    assert world.sweep.tick_all(0.5) == pytest.approx(1.0)
    assert world.saved == ["quick", "slow"] and not idle.dirty
    world.saved.clear()
    assert world.sweep.tick_all(0.6) == pytest.approx(1.0)
    assert world.saved == []  # nothing changed since the last pass
    world.sweep.tick_all(1.0)
    assert quick.state == S.RUNNING and world.saved == ["quick"]


def test_heartbeat_only_changes_are_saved_only_when_asked(world):
    agent = world.agent("a1")
    agent.hb_dirty = True
    world.sweep.persist()
    assert world.saved == []
    world.sweep.persist(heartbeats_too=True)
    assert world.saved == ["a1"] and not agent.hb_dirty


def test_an_agent_whose_removal_finished_is_retired_and_its_successor_continues_its_generations(world):
    agent = world.agent("gone")
    agent.start(0.0)
    world.sweep.tick_all(1.0)
    generation = agent.generation
    agent.remove(2.0)
    world.ops.alive.discard(generation)
    agent.on_exit(2.1, generation, None, 15)
    world.saved.clear()
    assert world.sweep.tick_all(2.2) is None
    assert "gone" not in world.registry and world.retired == ["gone"]
    assert world.saved == []  # its record is deleted by retire, never written again
    again = world.agent("gone")
    again.start(3.0)
    assert again.generation == generation + 1  # a verdict about the removed process can never fit it
    assert world.sweep.generation_of("never-seen") == 0
