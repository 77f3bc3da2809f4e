"""`events.ipc`: the PULL socket where workers push heartbeat batches and liveness beats.

The receive high-water mark is deliberately small: when the parent falls behind, workers' PUSH
sockets fill, their bounded buffers fill, and intake answers 503 instead of anyone growing memory.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Callable

import zmq
import zmq.asyncio
from pydantic import ValidationError

from supervisor.wire.ipc import bind_private, close_private
from supervisor.wire.messages import EVENT_ADAPTER
from supervisor.common.rate_limited_log import RateLimitedLog

log = logging.getLogger(__name__)

RCVHWM = 200  # messages, each up to a batch of ~512 heartbeats


class EventIntake:
    """Receives worker messages and hands each to the parent's handler."""

    def __init__(self, ctx: zmq.asyncio.Context, path: Path, handle: Callable[[object], None]) -> None:
        self.sock = ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, RCVHWM)
        self.sock.setsockopt(zmq.MAXMSGSIZE, 16 << 20)
        bind_private(self.sock, path)
        self.path = path
        self.handle = handle
        self.counters: Counter[str] = Counter()
        self._bad = RateLimitedLog(log)

    async def serve(self) -> None:
        while True:
            payload = await self.sock.recv()
            self.counters["messages"] += 1
            try:
                msg = EVENT_ADAPTER.validate_json(payload)
            except ValidationError as exc:
                self.counters["bad_messages"] += 1
                self._bad("events: dropped an unreadable worker message: %s", str(exc).splitlines()[0])
                continue
            self.counters[msg.kind] += 1
            try:
                self.handle(msg)
            except Exception:  # one bad message must not stop the intake of everything else
                self.counters["handler_errors"] += 1
                log.exception("events: handling a %s message failed", msg.kind)

    def close(self) -> None:
        close_private(self.sock, self.path)
