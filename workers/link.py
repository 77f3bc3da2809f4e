"""A worker's link to the parent: PUSH events, SUB state with snapshot + sequence numbers, DEALER control.

The ZeroMQ Guide's "clone" pattern: subscribe first, then ask `control` for a snapshot (which
carries its sequence number), apply only newer updates, and take a fresh snapshot whenever a
sequence number is skipped. Heartbeats are buffered and sent in batches; when the parent cannot
keep up, the bounded buffer fills and `submit` says no, so intake answers 503 instead of growing.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pydantic_core
import zmq
import zmq.asyncio
from pydantic import BaseModel, ValidationError

from supervisor.common.shared_ticks import sleep_to_tick
from supervisor.wire.messages import (
    STATE_ADAPTER,
    STATE_TOPIC,
    AgentRemoved,
    AgentUpdate,
    AgentView,
    Heartbeat,
    HeartbeatBatch,
    HeartbeatTimes,
    WorkerBeat,
)
from supervisor.wire.protocol import ErrorCode, Reply, Request
from supervisor.wire.verbs import VerbContract
from supervisor.wire.verbs import snapshot as snapshot_verb

log = logging.getLogger(__name__)

UNAVAILABLE = "unavailable"  # ControlFailure's code when the parent did not answer at all


class ControlFailure(Exception):
    """The parent refused a control request (its typed code, supervisor/wire/protocol.py) or did not answer
    (code UNAVAILABLE)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

PR_SET_PDEATHSIG = 1
# Liveness beats (docs/architecture.md, "Workers"). Each one wakes this process, the parent and both ZeroMQ
# I/O threads, the largest idle cost agentd had (issue 11), so a worker beats every second only while its
# silence matters sooner than the pool's 10 s kill: an intake's whenever some agent's heartbeat deadline
# depends on it (the parent counts it as an outage after INTAKE_SILENCE) or it took heartbeats in lately
# (the forwarding watch). Otherwise every IDLE_BEAT_INTERVAL, which still leaves three beats before the kill.
# Each beat says when the next one is due, so the parent judges silence against that.
BEAT_INTERVAL = 1.0
IDLE_BEAT_INTERVAL = 3.0


def die_with_parent(expected_parent: int | None = None) -> None:
    """Ask the kernel to SIGTERM us when the parent dies; exit now if it already has.

    The parent passes its pid in AGENTD_PARENT_PID: a parent that died before the prctl call
    would otherwise leave us running forever under init.
    """
    if expected_parent is None and os.environ.get("AGENTD_PARENT_PID", "").isdigit():
        expected_parent = int(os.environ["AGENTD_PARENT_PID"])
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: fall back on the parent-pid check in the beat loop
        pass
    if expected_parent is not None and os.getppid() != expected_parent:
        sys.exit(0)


class WorkerLink:
    """Everything a worker process says to and hears from the parent."""

    def __init__(
        self,
        run_dir: Path,
        name: str,
        *,
        want_state: bool = True,
        batch_max: int = 512,
        flush_interval: float = 0.005,
        max_pending: int = 20_000,
        push_hwm: int = 200,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.name = name
        self.want_state = want_state
        self.batch_max = batch_max
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.ctx = zmq.asyncio.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 2000)  # give in-flight batches a moment on shutdown
        self.push.setsockopt(zmq.SNDHWM, push_hwm)
        # The same socket, synchronously: heartbeat batches are sent from `submit` the moment one is full (always
        # NOBLOCK, so the async wrapper never has a send of its own queued that this could overtake).
        self._push_now = zmq.Socket.shadow(self.push.underlying)
        # A batch on the wire is HeartbeatBatch's own JSON with the items spliced in (see `_encode`).
        head, _, tail = HeartbeatBatch(worker=name, items=[]).model_dump_json().rpartition("[]")
        self._batch_head, self._batch_tail = (head + "[").encode(), ("]" + tail).encode()
        self.sub: zmq.asyncio.Socket | None = None
        self.agents: dict[str, AgentView] = {}
        self.last_heartbeat: dict[str, float] = {}
        self.intake_restarted_at: float | None = None
        # Monotonic versions: what the health judge's deadlines use (a wall-clock step moves nothing).
        self.last_heartbeat_mono: dict[str, float] = {}
        self.intake_restarted_mono: float | None = None
        self.parent_stalled_until: float | None = None
        self.seq = 0
        self.counters: Counter[str] = Counter()
        self.info: dict[str, str] = {}
        self.on_change: list[Callable[[], None]] = []
        # Set by a worker whose silence matters within seconds while it returns True (runner.serve_intake).
        self.beat_fast: Callable[[], bool] | None = None
        self._pending: list[bytes] = []  # each heartbeat already encoded: what was answered 200 can always be sent
        self.broken = asyncio.Event()  # forwarding to the parent failed: the worker must exit (see serve_intake)
        self.broken_reason: str | None = None
        self._blocked = False  # the parent's queue was full at the last try: leave retries to the flush loop
        self._closed = False
        self._has_items = asyncio.Event()  # something is queued: flush within flush_interval
        self._tasks: list[asyncio.Task] = []
        self._parent = os.getppid()
        self.snapshots = 0

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Connect, take the first snapshot, and start the flush, beat and state tasks."""
        self.push.connect(f"ipc://{self.run_dir / 'events.ipc'}")
        if self.want_state:
            self.sub = self.ctx.socket(zmq.SUB)
            self.sub.setsockopt(zmq.LINGER, 0)
            self.sub.setsockopt(zmq.RCVHWM, 100_000)
            self.sub.setsockopt(zmq.SUBSCRIBE, STATE_TOPIC)
            self.sub.connect(f"ipc://{self.run_dir / 'state.ipc'}")
            await self.resnapshot()
            self._tasks.append(asyncio.create_task(self._state_loop(), name="state"))
        self._tasks.append(asyncio.create_task(self._flush_loop(), name="flush"))
        self._tasks.append(asyncio.create_task(self._beat_loop(), name="beat"))

    async def close(self) -> None:
        await self.flush()
        for task in self._tasks:
            task.cancel()
        self._closed = True  # the shadow socket must not be used once the real one is closed
        self.push.close(linger=1000)
        if self.sub is not None:
            self.sub.close(linger=0)
        self.ctx.term()

    # ----------------------------------------------------------------- control requests

    async def call(self, verb: VerbContract, args: BaseModel | None = None, timeout: float = 10.0) -> Any:
        """One control request: `verb` is the verb's contract (supervisor/wire/verbs/<verb>.py), `args` its
        Args (default: all defaults); returns the reply validated into its Result. Raises ControlFailure."""
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(f"ipc://{self.run_dir / 'control.ipc'}")
            sent = (args if args is not None else verb.Args()).model_dump(mode="json", exclude_defaults=True)
            req = Request(id=uuid.uuid4().hex[:16], verb=verb.NAME, args=sent)
            await sock.send(req.model_dump_json().encode())
            while True:
                if not await sock.poll(int(timeout * 1000)):
                    raise ControlFailure(UNAVAILABLE, f"agentd did not answer '{verb.NAME}' within {timeout:g} s")
                try:
                    reply = Reply.model_validate_json(await sock.recv())
                except ValidationError as exc:
                    raise ControlFailure(ErrorCode.INTERNAL, f"unreadable reply from agentd to '{verb.NAME}' ({exc.error_count()} problems)") from None
                if reply.id == req.id:
                    break
        finally:
            sock.close(linger=0)
        if not reply.ok:
            error = reply.error
            raise ControlFailure(error.code if error else ErrorCode.INTERNAL, error.message if error else "request failed")
        try:
            return verb.Result.model_validate(reply.result or {})
        except ValidationError as exc:
            raise ControlFailure(ErrorCode.INTERNAL, f"unreadable reply from agentd to '{verb.NAME}' ({exc.error_count()} problems)") from None

    # ----------------------------------------------------------------- state feed

    async def resnapshot(self) -> None:
        """Replace our view of the world with the parent's snapshot."""
        while True:
            try:
                snap = await self.call(snapshot_verb)
                break
            except ControlFailure as exc:
                self._exit_if_orphaned()
                log.warning("%s: snapshot failed (%s); retrying", self.name, exc)
                await asyncio.sleep(0.5)
        self.agents = {a.id: a for a in snap.agents}
        self.last_heartbeat = dict(snap.last_heartbeat)
        self.intake_restarted_at = snap.intake_restarted_at
        self.last_heartbeat_mono = dict(snap.last_heartbeat_mono)
        self.intake_restarted_mono = snap.intake_restarted_mono
        self.parent_stalled_until = snap.parent_stalled_until
        self.seq = snap.seq
        self.snapshots += 1
        self._changed()

    async def _state_loop(self) -> None:
        assert self.sub is not None
        while True:
            _topic, payload = await self.sub.recv_multipart()
            try:
                msg = STATE_ADAPTER.validate_json(payload)
            except ValidationError as exc:
                log.error("%s: unreadable state message: %s", self.name, exc)
                continue
            if msg.seq <= self.seq:
                continue  # already part of our snapshot
            if msg.seq != self.seq + 1:
                self.counters["state_gaps"] += 1
                log.info("%s: state gap (have %d, got %d); taking a new snapshot", self.name, self.seq, msg.seq)
                await self.resnapshot()
                continue
            self.seq = msg.seq
            if isinstance(msg, AgentUpdate):
                self.agents[msg.agent.id] = msg.agent
            elif isinstance(msg, AgentRemoved):
                self.agents.pop(msg.agent_id, None)
                self.last_heartbeat.pop(msg.agent_id, None)
                self.last_heartbeat_mono.pop(msg.agent_id, None)
            elif isinstance(msg, HeartbeatTimes):
                self.last_heartbeat.update(msg.last_heartbeat)
                self.intake_restarted_at = msg.intake_restarted_at
                self.last_heartbeat_mono.update(msg.last_heartbeat_mono)
                self.intake_restarted_mono = msg.intake_restarted_mono
                self.parent_stalled_until = msg.parent_stalled_until
            self._changed()

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()

    # ----------------------------------------------------------------- heartbeats out

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def submit(self, heartbeat: dict | Heartbeat) -> bool:
        """Queue a heartbeat for the parent; False means it was not queued (the caller answers 503).

        `heartbeat` is the dict `AgentDirectory.check` returns (fields of `Heartbeat`, absent ones left out)
        or a `Heartbeat`. It is encoded here, not at send time, so one that cannot be encoded is refused on
        its own instead of failing a whole batch later, after it was answered 200 (issue 8, break 1).
        A full batch goes out at once; the rest within `flush_interval`."""
        pending = self._pending
        if self.broken_reason is not None:
            self.counters["dropped_link_broken"] += 1
            return False
        if len(pending) >= self.max_pending:
            self.counters["dropped_backpressure"] += 1
            return False
        if not isinstance(heartbeat, dict):
            heartbeat = heartbeat.model_dump(exclude_none=True)
        try:
            encoded = pydantic_core.to_json(heartbeat)
        except (pydantic_core.PydanticSerializationError, ValueError, TypeError) as exc:
            # Unreachable for what heartbeat_rules lets through; refused alone, the pipeline stays whole.
            self.counters["dropped_unencodable"] += 1
            log.error("%s: refused a heartbeat that cannot be encoded for the parent: %s", self.name, exc)
            return False
        pending.append(encoded)
        n = len(pending)
        if n == 1:
            self._has_items.set()
        elif n >= self.batch_max and not self._blocked:
            self._send_batches()
        return True

    def has_room(self, n: int = 1) -> bool:
        return self.broken_reason is None and len(self._pending) + n <= self.max_pending

    def _encode(self, items: list[bytes]) -> bytes:
        """What `HeartbeatBatch(worker=..., items=...).model_dump_json()` gives, minus the nulls of absent fields,
        without building a model per heartbeat."""
        return self._batch_head + b",".join(items) + self._batch_tail

    def _send_batches(self, partial: bool = False) -> None:
        """Send full batches (and with `partial`, the rest) as far as the parent's queue lets us."""
        pending = self._pending
        if self._closed or self.broken_reason is not None:
            return
        while len(pending) >= (1 if partial else self.batch_max):
            batch = pending[: self.batch_max]
            try:
                self._push_now.send(self._encode(batch), flags=zmq.NOBLOCK)
            except zmq.Again:
                self._blocked = True  # parent's queue is full: keep the items, the flush loop retries
                return
            except Exception as exc:  # the socket itself failed: nothing queued here can reach the parent
                self._break(f"sending heartbeats to the parent failed: {exc!r}")
                return
            del pending[: len(batch)]
            self.counters["forwarded"] += len(batch)
        self._blocked = False

    def _break(self, reason: str) -> None:
        """Forwarding is impossible: say so once; intake answers 503 from now on and the worker exits."""
        if self.broken_reason is None:
            self.broken_reason = reason
            log.error("%s: %s; %d queued heartbeats lost; exiting so that a fresh worker takes over", self.name, reason, len(self._pending))
            self.broken.set()

    async def flush(self) -> None:
        """Send everything queued, in batches, as far as the parent's queue lets us."""
        self._send_batches(partial=True)

    async def _flush_loop(self) -> None:
        # Sleeps while nothing is queued: an idle worker costs no CPU on timers. Full batches already went out
        # in `submit`; this sends the rest. While the parent's queue is full it retries every flush_interval.
        while True:
            await self._has_items.wait()
            await asyncio.sleep(self.flush_interval)
            try:
                self._send_batches(partial=True)
            except Exception as exc:  # never a silently dead flush loop: that was issue 8's wedged intake
                self._break(f"the heartbeat flush failed: {exc!r}")
                return
            if not self._pending:
                self._has_items.clear()

    async def send(self, msg) -> bool:
        """Send one non-heartbeat message (verdict, samples); False if the parent's queue is full."""
        try:
            await self.push.send(msg.model_dump_json().encode(), flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.counters[f"dropped_{msg.kind}"] += 1
            return False

    # ----------------------------------------------------------------- liveness

    def _exit_if_orphaned(self) -> None:
        if os.getppid() != self._parent:
            log.warning("%s: parent %d is gone; exiting", self.name, self._parent)
            os._exit(0)

    def beat_every(self) -> float:
        """Seconds until the next liveness beat: BEAT_INTERVAL while `beat_fast` says so, else IDLE_BEAT_INTERVAL."""
        return BEAT_INTERVAL if self.beat_fast is not None and self.beat_fast() else IDLE_BEAT_INTERVAL

    async def _beat_loop(self) -> None:
        while True:
            self._exit_if_orphaned()
            every = self.beat_every()
            beat = WorkerBeat(worker=self.name, pid=os.getpid(), counters=dict(self.counters), queue_depth=self.queue_depth, info=self.info, every=every)
            try:
                await self.push.send(beat.model_dump_json().encode(), flags=zmq.NOBLOCK)
            except zmq.Again:
                self.counters["beats_dropped"] += 1
            await sleep_to_tick(every)  # with the stall watch here, and with the other workers' beats at the parent
