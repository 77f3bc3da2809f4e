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

from supervisor.wire.ipc import bind_private, close_private
from supervisor.common.json_limits import JsonTooDeep, check_depth
from supervisor.common.rate_limited_log import RateLimitedLog
from supervisor.wire.protocol import MAX_MESSAGE_BYTES, ErrorCode, Reply, Request, error_reply
from supervisor.config.errors import describe_validation_error

log = logging.getLogger(__name__)

Dispatcher = Callable[[Request], Awaitable[Reply]]

# Back-pressure (issue 10): bounded work per client and in total, so a flood of requests (the owner's, or
# control.group's) costs bounded memory and cannot starve heartbeats, verdicts or other clients. The
# excess is answered `busy` at once. Verbs that wait (stop, events) hold their slot while they wait.
MAX_IN_FLIGHT = 256
MAX_IN_FLIGHT_PER_CLIENT = 32
RCVHWM = 100  # messages queued per client in ZeroMQ before it stops reading that client
YIELD_EVERY = 16  # messages taken in a row before the loop lets other tasks run
_ID_PEEK_BYTES = 4096  # a busy answer parses the request for its id only when it is small


class BadRequest(Exception):
    """A control message that is not a valid request: the sentence for its `bad_request` reply, and its id if readable."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


def parse_request(payload: bytes) -> Request:
    """One control payload to a `Request`, or BadRequest saying why not; nothing else escapes (issue 8).

    json raises ValueError for integers over 4300 digits; nesting past MAX_JSON_DEPTH is refused before json
    sees it (json_limits). Both are input errors like any other. (MAX_MESSAGE_BYTES bounds the work.)"""
    try:
        check_depth(payload)
        raw = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"payload is not JSON: {exc}") from None
    except JsonTooDeep:
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
        self.sock.setsockopt(zmq.RCVHWM, RCVHWM)
        bind_private(self.sock, path, group)
        self._tasks: set[asyncio.Task] = set()
        self._garbage = RateLimitedLog(log)
        self.requests = 0
        self.bad_requests = 0
        self.busy = 0
        self._per_client: dict[bytes, int] = {}

    async def serve(self) -> None:
        taken = 0
        while True:
            frames = await self.sock.recv_multipart(copy=True)
            self.requests += 1
            taken += 1
            if taken >= YIELD_EVERY:
                # A ready socket never makes `await recv` yield: give heartbeats and timers their turn.
                taken = 0
                await asyncio.sleep(0)
            identity = frames[0] if len(frames) >= 2 else b""
            mine = self._per_client.get(identity, 0)
            if len(self._tasks) >= MAX_IN_FLIGHT or mine >= MAX_IN_FLIGHT_PER_CLIENT:
                self._refuse_busy(frames, mine)
                continue
            self._per_client[identity] = mine + 1
            task = asyncio.create_task(self._handle(frames))
            self._tasks.add(task)
            task.add_done_callback(lambda t, i=identity: self._done(t, i))

    def _done(self, task: asyncio.Task, identity: bytes) -> None:
        self._tasks.discard(task)
        left = self._per_client.get(identity, 1) - 1
        if left > 0:
            self._per_client[identity] = left
        else:
            self._per_client.pop(identity, None)

    def _refuse_busy(self, frames: list[bytes], mine: int) -> None:
        self.busy += 1
        self._garbage("control: busy: %d requests in progress (%d from one client); answering busy", len(self._tasks), mine)
        if len(frames) != 2:
            return
        identity, payload = frames
        request_id = None
        if len(payload) <= _ID_PEEK_BYTES:
            try:
                request_id = parse_request(payload).id
            except BadRequest as exc:
                request_id = exc.request_id
        which = "from this client" if mine >= MAX_IN_FLIGHT_PER_CLIENT else "in all"
        limit = MAX_IN_FLIGHT_PER_CLIENT if mine >= MAX_IN_FLIGHT_PER_CLIENT else MAX_IN_FLIGHT
        message = f"agentd is busy: {limit} requests already in progress {which}; try again shortly"
        asyncio.ensure_future(self._send(identity, error_reply(request_id, ErrorCode.BUSY, message)))

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
        close_private(self.sock, self.path)
