"""The ROUTER endpoint `control.ipc`: receives JSON requests, runs each as its own task, answers by id.

Nothing here knows a verb; it hands a validated `Request` to the dispatcher and sends back its
`Reply`. Garbage gets a typed `bad_request` answer when it came with a routable identity, one
rate-limited log line, and never stops the loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Awaitable, Callable

import zmq
import zmq.asyncio
from pydantic import ValidationError

from .ipc import bind_private
from .rate_limited_log import RateLimitedLog
from .protocol import MAX_MESSAGE_BYTES, ErrorCode, Reply, Request, error_reply
from .validation_text import describe_validation_error

log = logging.getLogger(__name__)

Dispatcher = Callable[[Request], Awaitable[Reply]]


class ControlServer:
    """Serves control requests on a ROUTER socket until closed."""

    def __init__(self, ctx: zmq.asyncio.Context, path: Path, dispatch: Dispatcher, group: str | None = None) -> None:
        self.path = path
        self.dispatch = dispatch
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        # A client that went away must not make us block or buffer forever.
        self.sock.setsockopt(zmq.SNDHWM, 1000)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        bind_private(self.sock, path, group)
        self._tasks: set[asyncio.Task] = set()
        self._garbage = RateLimitedLog(log)
        self.requests = 0
        self.bad_requests = 0

    async def serve(self) -> None:
        while True:
            frames = await self.sock.recv_multipart(copy=True)
            self.requests += 1
            task = asyncio.create_task(self._handle(frames))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            self._reject(None, None, f"expected [identity, payload], got {len(frames)} frame(s)")
            return
        identity, payload = frames[0], frames[-1]
        if len(frames) != 2:
            self._reject(identity, None, f"expected one payload frame, got {len(frames) - 1}")
            return
        try:
            raw = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._reject(identity, None, f"payload is not JSON: {exc}")
            return
        request_id = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
        try:
            request = Request.model_validate(raw)
        except ValidationError as exc:
            self._reject(identity, request_id, f"malformed request: {describe_validation_error(exc)}")
            return
        reply = await self.dispatch(request)
        await self._send(identity, reply)

    def _reject(self, identity: bytes | None, request_id: str | None, message: str) -> None:
        self.bad_requests += 1
        self._garbage("control: rejected a message: %s", message)
        if identity is not None:
            asyncio.ensure_future(self._send(identity, error_reply(request_id, ErrorCode.BAD_REQUEST, message)))

    async def _send(self, identity: bytes, reply: Reply) -> None:
        try:
            await self.sock.send_multipart([identity, reply.model_dump_json().encode()])
        except zmq.ZMQError as exc:  # client gone; nothing to do but note it
            log.debug("control: could not send reply: %s", exc)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.sock.close(linger=0)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
