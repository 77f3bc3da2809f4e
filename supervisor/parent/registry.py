"""The parent's table of agents, in configuration order, with the lookups control verbs need."""

from __future__ import annotations

from typing import Iterator

from supervisor.parent.lifecycle import AgentProcess
from supervisor.wire.protocol import ControlError, ErrorCode


class Registry:
    """Agent id -> AgentProcess; only the parent's event loop touches it."""

    def __init__(self) -> None:
        self._agents: dict[str, AgentProcess] = {}

    def __iter__(self) -> Iterator[AgentProcess]:
        return iter(list(self._agents.values()))

    def __len__(self) -> int:
        return len(self._agents)

    def __contains__(self, agent_id: str) -> bool:
        return agent_id in self._agents

    def ids(self) -> list[str]:
        return list(self._agents)

    def add(self, agent: AgentProcess) -> None:
        self._agents[agent.spec.id] = agent

    def discard(self, agent_id: str) -> None:
        self._agents.pop(agent_id, None)

    def find(self, agent_id: str) -> AgentProcess | None:
        return self._agents.get(agent_id)

    def get(self, agent_id: str) -> AgentProcess:
        """The agent, or a not_found error that lists the known ids."""
        agent = self._agents.get(agent_id)
        if agent is None:
            raise ControlError(ErrorCode.NOT_FOUND, f"no agent '{agent_id}'; known: {self._known()}")
        return agent

    def select(self, ids: list[str], all_agents: bool) -> list[AgentProcess]:
        """Agents named by `ids` (all unknown ones reported together), or every agent with `all_agents`."""
        if all_agents:
            return list(self)
        if not ids:
            raise ControlError(ErrorCode.BAD_REQUEST, "name at least one agent id, or use --all")
        unknown = [i for i in ids if i not in self._agents]
        if unknown:
            names = ", ".join(f"'{i}'" for i in unknown)
            raise ControlError(ErrorCode.NOT_FOUND, f"no agent {names}; known: {self._known()}")
        seen: dict[str, AgentProcess] = {}
        for i in ids:
            seen.setdefault(i, self._agents[i])
        return list(seen.values())

    def _known(self) -> str:
        return ", ".join(self._agents) or "(none configured)"
