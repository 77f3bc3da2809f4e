"""Waiting for agents to settle: one event per transition, one waiter per request (docs/architecture.md,
"The event loop"). The clock is passed in."""

from __future__ import annotations

import asyncio
from typing import Callable

from supervisor.parent.lifecycle import AgentProcess


class AgentChanges:
    """Fired on every transition; `wait_for` returns once every agent is settled or the timeout passed."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self._changed = asyncio.Event()

    def fire(self) -> None:
        """A transition happened: wake every waiter (each waits on the event of its time)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, agents: list[AgentProcess], settled: Callable[[AgentProcess], bool], timeout: float) -> None:
        """Wait until `settled(agent)` holds for every agent or `timeout` passes; never blocks the loop.

        One waiter for all of them: one waiter per agent made each of 200 transitions wake 200 coroutines."""
        deadline = self.now() + timeout
        waiting = [a for a in agents if not settled(a)]
        while waiting:
            remaining = deadline - self.now()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return
            waiting = [a for a in waiting if not settled(a)]
