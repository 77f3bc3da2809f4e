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


class BadRequest(Exception):
    """A control message that is not a valid request: the sentence for its `bad_request` reply, and its id if readable."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


def parse_request(payload: bytes) -> Request:
    """One control payload to a `Request`, or BadRequest saying why not; nothing else escapes (issue 8).

    json raises ValueError for integers over 4300 digits and RecursionError for deep nesting; both are input
    errors like any other. (MAX_MESSAGE_BYTES bounds the work.)"""
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"payload is not JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("payload is not usable JSON: nested too deeply") from None
    except ValueError:
        raise BadRequest("payload is not usable JSON: a number has too many digits") from None
    request_id = None
    if isinstance(raw, dict):
        rid = raw.get("id")
        # Echoed in the reply, so only an id the reply can carry (printable, not too long) is kept.
        if isinstance(rid, str) and 0 < len(rid) <= 64 and rid.isprintable():
            request_id = rid
    try:
        return Request.model_validate(raw)
    except ValidationError as exc:
        raise BadRequest(f"malformed request: {describe_validation_error(exc)}", request_id) from None
    except RecursionError:
        raise BadRequest("malformed request: nested too deeply", request_id) from None


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
            request = parse_request(payload)
        except BadRequest as exc:
            self._reject(identity, exc.request_id, exc.message)
            return
        try:
            reply = await self.dispatch(request)
        except Exception:  # the dispatcher answers its own errors; this is a bug, and the client still gets a reply
            self._garbage.exception("dispatch", "control: %s failed", request.verb)
            reply = error_reply(request.id, ErrorCode.INTERNAL, f"internal error while running '{request.verb}'; see the agentd log")
        await self._send(identity, reply)

    def _reject(self, identity: bytes | None, request_id: str | None, message: str) -> None:
        self.bad_requests += 1
        self._garbage("control: rejected a message: %s", message)
        if identity is not None:
            asyncio.ensure_future(self._send(identity, error_reply(request_id, ErrorCode.BAD_REQUEST, message)))

    async def _send(self, identity: bytes, reply: Reply) -> None:
        try:
            data = reply.model_dump_json().encode()
        except ValueError as exc:  # e.g. a lone surrogate in a string from the request; answer with that instead
            self._garbage.exception("encode", "control: cannot encode a reply: %s", exc)
            data = error_reply(reply.id, ErrorCode.INTERNAL, "the reply could not be encoded as JSON; see the agentd log").model_dump_json().encode()
        try:
            await self.sock.send_multipart([identity, data])
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
