"""Stdlib-only pieces the sample agents share: timestamped logs, signal waiting, /proc stats, quiet failure logs."""

from __future__ import annotations

import datetime
import os
import signal
import sys
import time
from typing import Callable

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
FAILURE_LOG_EVERY = 60.0


def rfc3339_now() -> str:
    """Current UTC time as RFC 3339 with milliseconds, e.g. 2024-05-01T12:00:00.123Z."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def log(text: str) -> None:
    """One timestamped line on stdout, flushed at once: under agentd stdout is a file, which Python buffers."""
    name = os.path.basename(sys.argv[0])
    # One write per line: print() writes the newline separately, which splits lines of concurrent writers.
    sys.stdout.write(f"{rfc3339_now()} {name}[{os.getpid()}] {text}\n")
    sys.stdout.flush()


class SignalWaiter:
    """Blocks some signals and takes them synchronously, so a stop never lands in the middle of a send.

    Create it first thing: until then SIGTERM still kills the process outright, with no clean exit.
    """

    def __init__(self, signals: set[int]) -> None:
        self.signals = set(signals)
        signal.pthread_sigmask(signal.SIG_BLOCK, self.signals)

    def wait(self, timeout: float) -> int | None:
        """Sleeps up to timeout seconds; returns the first of our signals to arrive, or None."""
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            info = signal.sigtimedwait(self.signals, max(deadline - time.monotonic(), 0.0))
            if info is not None and info.si_signo in self.signals:
                return info.si_signo
            # A SIGSTOP/SIGCONT pair ends the wait early, with no signal or with a garbage si_signo
            # (CPython 3.11 on Linux): neither is a signal of ours, so wait out the rest.
            if time.monotonic() >= deadline:
                return None


def signal_name(signo: int) -> str:
    return signal.Signals(signo).name


class ProcStats:
    """CPU percent since the previous sample and RSS bytes, read from /proc/self."""

    TICKS = os.sysconf("SC_CLK_TCK")
    PAGE = os.sysconf("SC_PAGE_SIZE")
    MAX_CPU = 100.0 * (os.cpu_count() or 1)

    def __init__(self) -> None:
        # The first sample covers the whole life of the process: start from zero CPU at its start time.
        self.last_ticks = 0
        self.last_time = self._stat_fields()[19] / self.TICKS

    @staticmethod
    def _stat_fields() -> list[int | str]:
        with open("/proc/self/stat") as f:
            # Fields after the command name, which may contain spaces; index 0 is the state (field 3).
            rest = f.read().rpartition(")")[2].split()
        return [rest[0]] + [int(x) for x in rest[1:]]

    def sample(self) -> tuple[float, int]:
        """(cpu percent, rss bytes)."""
        fields = self._stat_fields()
        ticks = fields[11] + fields[12]  # utime + stime
        now = time.clock_gettime(time.CLOCK_BOOTTIME)  # the clock /proc start times are measured on
        elapsed = max(now - self.last_time, 1e-3)
        cpu = (ticks - self.last_ticks) / self.TICKS / elapsed * 100.0
        self.last_ticks, self.last_time = ticks, now
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * self.PAGE
        return round(min(max(cpu, 0.0), self.MAX_CPU), 2), rss


def heartbeat(agent_id: str, stats: ProcStats) -> dict:
    """The heartbeat fields agentd understands (docs/heartbeat-api.md)."""
    cpu, memory = stats.sample()
    return {
        "agent_id": agent_id,
        "pid": os.getpid(),
        "timestamp": rfc3339_now(),
        "status": "running",
        "version": "1.0.0",
        "cpu": cpu,
        "memory": memory,
    }


class FailureLog:
    """Logs the first failure, then at most one line per minute, and one line when things work again."""

    def __init__(self, what: str, every: float = FAILURE_LOG_EVERY) -> None:
        self.what = what
        self.every = every
        self.failures = 0
        self.unlogged = 0
        self.logged_at: float | None = None
        self.reported = False

    def failed(self, reason: str) -> None:
        self.failures += 1
        now = time.monotonic()
        if self.logged_at is not None and now - self.logged_at < self.every:
            self.unlogged += 1
            return
        more = f" ({self.unlogged} more failures not logged)" if self.unlogged else ""
        log(f"{self.what} failed: {reason}{more}; will keep trying, logging this at most once a minute")
        self.logged_at, self.unlogged, self.reported = now, 0, True

    def succeeded(self) -> None:
        if self.reported:
            log(f"{self.what} works again after {self.failures} failed attempts")
        self.failures, self.unlogged, self.reported = 0, 0, False


def run_every(
    waiter: SignalWaiter, interval: float, action: Callable[[], None], until: float | None = None
) -> int | None:
    """Calls action() every interval seconds until one of waiter's signals (returned) or the deadline (None)."""
    next_run = time.monotonic()
    while True:
        action()
        next_run += interval
        now = time.monotonic()
        if next_run < now:  # the action overran; skip the missed slots rather than firing a burst
            next_run = now + interval
        wake = next_run if until is None else min(next_run, until)
        signo = waiter.wait(wake - now)
        if signo is not None:
            return signo
        if until is not None and time.monotonic() >= until:
            return None
