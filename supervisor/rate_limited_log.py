"""Log lines that an attacker or a broken client could trigger, at most once per period."""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """At most one line per `period` seconds for this logger and level, counting what it held back."""

    def __init__(self, logger: logging.Logger, period: float = 10.0, level: int = logging.WARNING) -> None:
        self.logger = logger
        self.period = period
        self.level = level
        self.last = -1e9
        self.suppressed = 0

    def __call__(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self.last < self.period:
            self.suppressed += 1
            return
        extra = f" ({self.suppressed} similar suppressed)" if self.suppressed else ""
        self.logger.log(self.level, msg + extra, *args)
        self.last, self.suppressed = now, 0
