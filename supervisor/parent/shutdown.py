"""agentd's orderly exit: who asked, whether agents stop, and letting the Manager hear the final states
(docs/architecture.md, "How stop works").

`Shutdown` holds the decision; `stop_every_agent` and `let_manager_sync` do the waiting, and
`let_go` leaves the agents that keep running to the next agentd, with the registry, the waiters, the
clock and the OS calls passed in.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Iterable

from supervisor.common.metadata_store import parse_iso
from supervisor.parent.lifecycle import AgentProcess
from supervisor.parent.process_handle import ProcessHandle
from supervisor.wire.verbs.workers import WorkerInfo
from supervisor.wire.states import DOWN_STATES

log = logging.getLogger("supervisor.parent.daemon")  # the parent's log lines keep their logger name

# Verbs still answered while shutting down, so an operator can watch it happen.
SHUTDOWN_VERBS = frozenset({"ping", "version", "status", "events", "logs"})


class Shutdown:
    """Set once: agentd is exiting, and whether it stops its agents first."""

    def __init__(self, stop_agents: bool, wake: Callable[[], None]) -> None:
        self.requested = asyncio.Event()
        self.stop_agents = stop_agents
        self.in_progress = False
        self._wake = wake

    def request(self, stop_agents: bool, why: str) -> None:
        """Begin an orderly exit; agents keep running unless `stop_agents`. A second request changes nothing."""
        if self.in_progress:
            return
        log.info("shutting down (%s); agents %s", why, "will be stopped" if stop_agents else "keep running")
        self.in_progress = True
        self.stop_agents = stop_agents
        self.requested.set()
        self._wake()

    def refuses(self, verb: str) -> bool:
        """While shutting down only the verbs that watch it are answered."""
        return self.in_progress and verb not in SHUTDOWN_VERBS


async def stop_every_agent(agents: list[AgentProcess], now: float, persist: Callable[[], None],
                           wait: Callable[[list[AgentProcess], Callable, float], Awaitable[None]],
                           supervise_until: Callable[[asyncio.Future], Awaitable[None]]) -> None:
    """Stop all agents at once and keep supervising until each is down (or its stop_timeout + 10 s passed)."""
    for agent in agents:
        agent.stop(now, reason="agentd shutdown", operator=False)
    persist()
    limit = max((a.spec.stop_timeout for a in agents), default=0) + 10
    waiter = asyncio.ensure_future(wait(agents, lambda a: a.state in DOWN_STATES, limit))
    ticker = asyncio.create_task(supervise_until(waiter))
    await waiter
    ticker.cancel()


def manager_heard(sync: WorkerInfo | None, since: float) -> bool:
    """Nothing more to wait for: no sync worker connected to tell, or it reported everything since `since`."""
    if sync is None or sync.state != "running" or sync.info.get("connected") != "yes":
        return True  # nobody to tell right now; the next agentd re-sends everything anyway
    last = parse_iso(sync.info.get("last_sync"))
    return sync.info.get("pending") == "0" and last is not None and last > since + 0.5


async def let_manager_sync(workers: Callable[[], Iterable[WorkerInfo]], since: float, now: Callable[[], float], limit: float = 15.0) -> None:
    """Give the sync worker some seconds to report the final states before workers stop.

    It returns as soon as the worker says nothing is pending; the limit is for a busy machine, where
    the worker's debounce and its 1 s reports alone took more than the 5 s this used to allow."""
    deadline = now() + limit
    while now() < deadline:
        if manager_heard(next((w for w in workers() if w.name == "sync"), None), since):
            return
        await asyncio.sleep(0.1)


def let_go(agents: Iterable[AgentProcess], forget: Callable[[ProcessHandle], None], save_all: Callable[[], None]) -> None:
    """agentd exits and its agents may outlive it: stop watching each process (its exit is the next agentd's to see)
    and save every record, heartbeat times included, so the next agentd adopts them as they are."""
    for agent in agents:
        if agent.handle is not None:
            forget(agent.handle)
        agent.dirty = True
    save_all()
