"""A bounded, sequence-numbered log of agent state transitions, with long-poll waiting for `events -f`."""

from __future__ import annotations

import asyncio
from collections import deque

from supervisor.wire.verbs.events import AgentEvent


class EventLog:
    """Keeps the last `capacity` events in memory; readers ask for events after a sequence number."""

    def __init__(self, capacity: int = 2000) -> None:
        self._events: deque[AgentEvent] = deque(maxlen=capacity)
        self._seq = 0
        self._changed = asyncio.Event()

    @property
    def last_seq(self) -> int:
        return self._seq

    def append(self, time: str, agent_id: str, old: str, new: str, reason: str) -> AgentEvent:
        self._seq += 1
        event = AgentEvent(seq=self._seq, time=time, agent_id=agent_id, old=old, new=new, reason=reason)
        self._events.append(event)
        # Wake every waiter, then arm a fresh Event for the next round.
        self._changed.set()
        self._changed = asyncio.Event()
        return event

    def since(self, after: int | None, limit: int, agent_ids: set[str] | None = None) -> list[AgentEvent]:
        """Events with seq > after (the last `limit` of them when after is None)."""
        events = [e for e in self._events if (after is None or e.seq > after) and (not agent_ids or e.agent_id in agent_ids)]
        return events[-limit:] if after is None else events[:limit]

    async def wait_after(self, after: int, timeout: float) -> None:
        """Return once an event newer than `after` exists, or after `timeout` seconds."""
        if self._seq > after or timeout <= 0:
            return
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass
