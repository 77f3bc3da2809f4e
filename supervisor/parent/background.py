"""The parent's background tasks are kept running: a bug in one is logged, not fatal (docs/architecture.md, "The event loop")."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

log = logging.getLogger("supervisor.parent.daemon")  # the parent's log lines keep their logger name


def keep_running(factory: Callable[[], Awaitable[None]], name: str) -> asyncio.Task:
    """Run a background loop; if it ever dies of a bug, log it and start it again after a second."""

    async def guarded() -> None:
        while True:
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background task %s failed; restarting it", name)
                await asyncio.sleep(1.0)

    return asyncio.create_task(guarded(), name=name)
