"""Log lines that an outsider or a broken client could trigger, at most once per period and cause.

The one logger for everything input can provoke (see docs/threat-model.md): agentd's own log must grow by a
bounded amount whatever is sent to it. Each cause (a short key such as "garbage" or "accept:EMFILE") has
its own period, and the next line of a cause says how many it held back.
"""

from __future__ import annotations

import logging
import time

OVERFLOW_KEY = "(other causes)"


class RateLimitedLog:
    """At most one line per cause per `period` seconds for this logger, counting what it held back."""

    def __init__(self, logger: logging.Logger, period: float = 10.0, level: int = logging.WARNING, max_keys: int = 256) -> None:
        self.logger = logger
        self.period = period
        self.level = level
        self.max_keys = max_keys  # keys come from our own code, but never let them grow without bound
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, msg: str, *args: object) -> None:
        """One line at the default level, all such calls sharing one cause."""
        self.emit("", self.level, msg, *args)

    def warning(self, key: str, msg: str, *args: object) -> None:
        self.emit(key, logging.WARNING, msg, *args)

    def error(self, key: str, msg: str, *args: object) -> None:
        self.emit(key, logging.ERROR, msg, *args)

    def exception(self, key: str, msg: str, *args: object) -> None:
        """An error with the current traceback, once per period: a bug input can trigger stays visible, not a flood."""
        self.emit(key, logging.ERROR, msg, *args, exc_info=True)

    def emit(self, key: str, level: int, msg: str, *args: object, exc_info: object = False) -> bool:
        """Log unless this cause logged within the period; True when the line was written."""
        now = time.monotonic()
        if key not in self._last and len(self._last) >= self.max_keys:
            key = OVERFLOW_KEY
        last = self._last.get(key)
        if last is not None and now - last < self.period:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            if not args:  # a preformatted message may hold a '%' of its own
                msg = msg.replace("%", "%%")
            msg += " (%d more like this in the last %g s)"
            args = (*args, suppressed, self.period)
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    @property
    def suppressed(self) -> int:
        """Lines held back and not yet reported, over all causes."""
        return sum(self._suppressed.values())
