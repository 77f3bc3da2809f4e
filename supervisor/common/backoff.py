"""Retry delays, written once: a fixed list of steps (agent restarts, worker respawns) and a capped doubling
with optional jitter (the Manager link, the history writer). See docs/architecture.md.

Pure: nothing here sleeps or reads a clock; callers add the delay to their own `now`.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence


def step_delay(steps: Sequence[float], attempt: int) -> float:
    """Delay before retry number `attempt` (0-based) from a list of steps; the last step repeats."""
    return float(steps[min(attempt, len(steps) - 1)])


class Backoff:
    """Capped exponential backoff: base, 2·base, 4·base ... cap, each ±`jitter` (a fraction) when set."""

    def __init__(self, base: float, cap: float, jitter: float = 0.0, rng: Callable[[], float] = random.random) -> None:
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self.rng = rng
        self.failures = 0

    def next_delay(self) -> float:
        """The delay before the next retry; each call counts one more failure."""
        delay = min(self.cap, self.base * 2 ** min(self.failures, 30))
        self.failures += 1
        if not self.jitter:
            return delay
        return delay * (1.0 + self.jitter * (2.0 * self.rng() - 1.0))

    def reset(self) -> None:
        """After a success: the next failure starts again from `base`."""
        self.failures = 0
