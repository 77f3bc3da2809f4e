"""One grid of the monotonic clock for every periodic task, so that they wake together.

An idle agentd's cost is mostly wake-ups: each one is a return from epoll_wait and a turn of the loop
(~0.1 ms of CPU on a busy 2-core box), whatever little the timer then does. Tasks that each sleep a
period from their own start fire at unrelated instants; tasks that sleep to the next multiple of their
period share those instants (the stall watch, heartbeat housekeeping and log rotation in the parent, the
stall watch and the liveness beat in a worker), and CLOCK_MONOTONIC is one clock for every process of
the node, so beats from all workers also reach the parent together (issue 11, docs/performance.md).
"""

from __future__ import annotations

import asyncio
import math

# A timer may fire a hair before its instant; this much of a period still counts as that instant, so it
# is not followed by a second wake-up a moment later. A wait may thus be up to this share longer than the
# period, never shorter than a sliver of it.
EARLY = 1e-3


def until_tick(now: float, period: float) -> float:
    """Seconds from `now` to the next multiple of `period` (monotonic clock) strictly after it."""
    return (math.floor(now / period + EARLY) + 1) * period - now


async def sleep_to_tick(period: float) -> None:
    """Sleep until the next multiple of `period` on the loop's (monotonic) clock."""
    await asyncio.sleep(until_tick(asyncio.get_running_loop().time(), period))
