"""How long this process's event loop did not run: the measure of agentd's own stalls.

A SIGSTOP, a VM pause, a swap storm or a blocked disk freezes the loop; the monotonic clock keeps
going. Everything that judges silence (worker liveness, heartbeat verdicts) must not blame others
for time during which we could not listen, so each consumer calls `observe()` before it judges:
the stall is then known even if the loop runs that consumer before the ticker (docs/operations.md,
"agentd itself was stalled").
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable

from supervisor.common.shared_ticks import sleep_to_tick

log = logging.getLogger(__name__)

# Under the threshold by a second, ten times the lateness a busy 2-core box gives a timer, so a loop that
# runs is never taken for stalled; not more often, because this is the one timer an idle agentd (and its
# health worker) runs every second, and it ticks on the shared grid (shared_ticks.py) with the other
# periodic tasks, so it costs no wake-up of its own (issue 11: idle cost). A stall is measured from the
# last tick before it, so it may read up to one TICK long, never short.
TICK = 1.0
# A loop late by more than this did not run: a busy 2-core box delays ticks by tenths of a second,
# never by seconds. Lower would defer verdicts on mere load; higher would miss stalls that matter.
STALL_THRESHOLD = 2.0


@dataclass(frozen=True)
class Stall:
    """One stretch of monotonic time during which the loop did not run."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


class StallWatch:
    """Records the loop's stalls on the monotonic clock and tells listeners about each one."""

    def __init__(self, name: str = "agentd", clock: Callable[[], float] = time.monotonic, threshold: float = STALL_THRESHOLD) -> None:
        self.name = name
        self.clock = clock
        self.threshold = threshold
        self.last_seen = clock()
        self.last_end: float | None = None  # monotonic end of the latest stall
        self.count = 0
        self.total = 0.0
        self.longest = 0.0
        self.listeners: list[Callable[[Stall], None]] = []

    def observe(self, now: float | None = None) -> Stall | None:
        """Note that the loop runs at `now`; returns the stall that just ended, if there was one."""
        now = self.clock() if now is None else now
        gap = now - self.last_seen
        if gap <= self.threshold:
            self.last_seen = max(self.last_seen, now)
            return None
        stall = Stall(self.last_seen, now)
        self.last_seen = now
        self.last_end = now
        self.count += 1
        self.total += stall.duration
        self.longest = max(self.longest, stall.duration)
        log.warning("%s was stalled for %.1fs (its loop did not run); silence and verdicts across it are not held against anyone", self.name, stall.duration)
        for listener in self.listeners:
            listener(stall)
        return stall

    def ended_after(self, t: float) -> bool:
        """Did a stall end after monotonic time `t` (so evidence gathered since then is suspect)?"""
        self.observe()
        return self.last_end is not None and self.last_end > t

    def counters(self) -> dict[str, int]:
        return {"stalls": self.count, "stalled_ms": int(self.total * 1000), "longest_stall_ms": int(self.longest * 1000)}

    async def run(self) -> None:
        """Tick forever; the ticks are what make a frozen loop visible."""
        while True:
            self.observe()
            await sleep_to_tick(TICK)
