"""One pass of the supervision loop over every agent: tick it, retire it once its removal is done, save
what changed (docs/architecture.md, "The event loop").

No OS calls of its own: saving a record and retiring a removed agent (its record, notify socket,
cgroup, the state feed) are passed in, and the clock is a number, like lifecycle.py.
"""

from __future__ import annotations

from typing import Callable

from supervisor.common.metadata_store import AgentRecord
from supervisor.parent.registry import Registry


class AgentSweep:
    """`tick_all(now)` returns the earliest time any agent asked to be ticked again, or None."""

    def __init__(self, registry: Registry, save: Callable[[AgentRecord], None], retire: Callable[[str], None]) -> None:
        self.registry = registry
        self._save = save
        self._retire = retire
        # Last generation of each agent removed while this agentd runs: a re-added agent continues from it,
        # so a verdict or heartbeat still in flight about the removed process never fits its successor.
        self._removed_generations: dict[str, int] = {}

    def tick_all(self, now: float) -> float | None:
        """Tick every agent, retire those whose removal finished, save the changed; the next due time."""
        due = None
        for agent in self.registry:
            when = agent.tick(now)
            if agent.removed:
                self._removed_generations[agent.spec.id] = agent.generation
                self.registry.discard(agent.spec.id)
                self._retire(agent.spec.id)
                agent.dirty = False
                continue
            if when is not None:
                due = when if due is None else min(due, when)
        self.persist()
        return due

    def persist(self, heartbeats_too: bool = False) -> None:
        """Save the record of every agent whose state changed (and, with `heartbeats_too`, heartbeat-only changes)."""
        for agent in self.registry:
            if agent.dirty or (heartbeats_too and agent.hb_dirty):
                agent.dirty = agent.hb_dirty = False
                self._save(agent.to_record())

    def generation_of(self, agent_id: str) -> int:
        """The generation a newly built agent of this id continues from (0 unless removed earlier)."""
        return self._removed_generations.get(agent_id, 0)
