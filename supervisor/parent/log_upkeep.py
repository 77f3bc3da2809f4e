"""The parent's log housekeeping: rotation by size and age, and retention (docs/architecture.md, "Log files and rotation").

The file work runs in the executor, one job per round (a hung filesystem must not stall supervision);
`rotation_round` is that job and `LogUpkeep.after_round` what the loop does with its outcome.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Callable

from supervisor.common.agent_files import agent_log_path
from supervisor.common.metadata_store import iso_utc
from supervisor.common.shared_ticks import sleep_to_tick
from supervisor.parent.event_log import EventLog
from supervisor.parent.log_files import TRUNCATED_FOR_SPACE, prune_old_logs, rotate_by_settings
from supervisor.parent.log_writes import LogWrites
from supervisor.parent.registry import Registry

log = logging.getLogger("supervisor.parent.daemon")  # the parent's log lines keep their logger name

LOG_ROTATE_CHECK_INTERVAL = 5.0  # rotation by age (log.interval)
LOG_SIZE_CHECK_INTERVAL = 1.0  # log.max_size is enforced this promptly (issue 10)
LOG_PRUNE_FIRST_DELAY = 2.0  # soon after start, so a node that was down a month is cleaned up at once
LOG_PRUNE_INTERVAL = 3600.0


def rotation_round(jobs, by_age: bool, writes: LogWrites | None = None) -> list[tuple[str, Path, "bool | str | OSError"]]:
    """Rotate every log that is due (size every round, interval when `by_age`); returns the rotated ones
    (True, or TRUNCATED_FOR_SPACE) and the failures. With `writes`, each log statted is watched for writes
    as the file it is now."""
    out: list[tuple[str, Path, "bool | str | OSError"]] = []
    for agent_id, path, settings, started in jobs:
        try:
            st = os.stat(path)
            if writes is not None:
                writes.watch(agent_id, str(path), st.st_ino)
            if (not by_age or settings.interval is None) and st.st_size < settings.max_size:
                continue  # the cheap check that lets size be enforced every second (and age only where it is set)
            rotated = rotate_by_settings(Path(path), settings.max_size, settings.keep, settings.compress, settings.interval, started, time.time())
            if rotated:
                out.append((agent_id, path, rotated))
        except FileNotFoundError:
            continue
        except OSError as exc:
            out.append((agent_id, path, exc))
    return out


class LogUpkeep:
    """Rotation every second (by size; by age every 5 s) and retention every hour, for the registry's agents."""

    def __init__(self, log_dir: Path, registry: Registry, events: EventLog, default_max_age: Callable[[], float | None]) -> None:
        self.log_dir = log_dir
        self.registry = registry
        self.events = events
        self.default_max_age = default_max_age  # read each round: a reload may change agent_defaults
        self._started: dict[str, float] = {}  # agent id -> when this daemon first saw its log (log.interval)
        self._paths: dict[str, str] = {}  # agent id -> its log's path: built once, not 200 Paths a second

    def jobs(self, now: float, agents=None) -> list:
        """One round's work: each agent's log (of `agents`, default all), its settings, and when its current content began."""
        paths = self._paths
        return [(a.spec.id, paths.get(a.spec.id) or paths.setdefault(a.spec.id, str(agent_log_path(self.log_dir, a.spec.id))), a.spec.log,
                 self._started.setdefault(a.spec.id, now)) for a in (self.registry if agents is None else agents)]

    def after_round(self, outcomes: list[tuple[str, Path, "bool | str | OSError"]], wall: float) -> None:
        """Log each rotation or failure; a truncation for lack of space is an event beside the transitions."""
        for agent_id, path, outcome in outcomes:
            if isinstance(outcome, OSError):
                log.error("%s: log rotation failed: %s", agent_id, outcome)
                continue
            self._started[agent_id] = wall
            agent = self.registry.find(agent_id)
            if outcome == TRUNCATED_FOR_SPACE and agent is not None:
                why = f"log {path} truncated in place: no room on its disk for a rotated copy; its oldest output is lost"
                self.events.append(iso_utc(), agent_id, agent.state.value, agent.state.value, why)
                log.warning("%s: %s", agent_id, why)
            else:
                log.info("%s: rotated %s", agent_id, path)

    async def rotate_forever(self) -> None:
        loop = asyncio.get_running_loop()
        age_every = max(1, round(LOG_ROTATE_CHECK_INTERVAL / LOG_SIZE_CHECK_INTERVAL))
        rounds = 0
        writes = LogWrites()
        try:
            while True:
                await sleep_to_tick(LOG_SIZE_CHECK_INTERVAL)  # with the stall watch and heartbeat housekeeping
                rounds += 1
                full = rounds % age_every == 0
                # Between full rounds, only the logs that got output (inotify) and those not watched yet
                # are looked at: an idle node stats nothing (issue 11: idle cost).
                written = None if full else writes.take()
                agents = list(self.registry)
                if written is not None:
                    unwatched = set(writes.unwatched(a.spec.id for a in agents))
                    agents = [a for a in agents if a.spec.id in written or a.spec.id in unwatched]
                    if not agents:
                        continue
                else:
                    writes.keep_only({a.spec.id for a in agents})
                # One executor job per round, not one per agent: an idle node with 200 agents would
                # otherwise hand 40 jobs a second to the thread pool.
                outcomes = await loop.run_in_executor(None, rotation_round, self.jobs(time.time(), agents), full, writes)
                self.after_round(outcomes, time.time())
        finally:
            writes.close()

    async def prune_forever(self) -> None:
        """Log retention (log.max_age, 30 days by default), also for agents no longer configured; in the executor."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(LOG_PRUNE_FIRST_DELAY)
        while True:
            max_age = {agent.spec.id: agent.spec.log.max_age for agent in self.registry}
            try:
                removed = await loop.run_in_executor(None, prune_old_logs, self.log_dir, max_age, self.default_max_age(), time.time())
            except OSError as exc:
                log.error("log retention: %s", exc)
            else:
                for path in removed:
                    log.info("log retention: removed %s (older than log.max_age)", path)
            await asyncio.sleep(LOG_PRUNE_INTERVAL)
