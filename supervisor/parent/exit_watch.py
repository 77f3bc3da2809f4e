"""Exit detection with pidfds on the asyncio loop: a callback the moment a process ends, no polling.

Used for agents and for workers alike. For our own children we hold the Popen object, so nothing
else can reap them and `poll()` gives the exit status; for adopted processes (not our children)
the status is unknown and reported as None.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import subprocess
from typing import Callable

log = logging.getLogger(__name__)

ExitCallback = Callable[["int | None", "int | None"], None]  # (exit code, signal number)


class ExitWatch:
    """One watched process; `cancel()` stops watching without touching the process."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pid: int, popen: subprocess.Popen | None, callback: ExitCallback) -> None:
        self.loop = loop
        self.pid = pid
        self.popen = popen
        self.callback = callback
        self.pidfd: int | None = os.pidfd_open(pid)  # ProcessLookupError when already gone
        loop.add_reader(self.pidfd, self._ready)

    def _ready(self) -> None:
        self.cancel()
        code = signum = None
        if self.popen is not None:
            rc = self.popen.poll()
            if rc is None:
                log.warning("pid %d: pidfd readable but the process was not reaped", self.pid)
            elif rc < 0:
                signum = -rc
            else:
                code = rc
        self.callback(code, signum)

    def deliver_if_exited(self) -> None:
        """Run the callback now if the process has already ended (the pidfd is readable)."""
        if self.pidfd is None:
            return
        readable, _, _ = select.select([self.pidfd], [], [], 0)
        if readable:
            self._ready()

    def cancel(self) -> None:
        if self.pidfd is not None:
            self.loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None


def watch_exit(loop: asyncio.AbstractEventLoop, pid: int, popen: subprocess.Popen | None, callback: ExitCallback) -> ExitWatch | None:
    """Start watching `pid`; None when it no longer exists or cannot be watched (e.g. out of fds)."""
    try:
        return ExitWatch(loop, pid, popen, callback)
    except ProcessLookupError:
        return None
    except OSError as exc:
        log.error("pid %d: cannot watch for its exit: %s", pid, exc)
        return None
