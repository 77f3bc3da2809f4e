"""A stand-in for the parent's side of a worker's three ZeroMQ endpoints, for worker tests without agentd.

One thread binds them in `run_dir` (docs/architecture.md, "Workers"): PULL `events.ipc` (every message
kept), PUB `state.ipc` (what `publish` queued, sent from that thread, since ZeroMQ sockets are not thread
safe), ROUTER `control.ipc` (each request recorded and answered by `answer`). A test subclasses it to
answer other verbs or to publish on every round (`on_round`).
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
from pathlib import Path

import zmq
from pydantic import BaseModel

from supervisor.wire.messages import EVENT_ADAPTER, STATE_TOPIC, AgentView, HeartbeatBatch, WorkerBeat
from supervisor.wire.protocol import Reply, Request, error_reply
from supervisor.wire.verbs import snapshot
from tests.support.wait import wait_until

POLL_MS = 20


class StandInParent:
    """PULL events, PUB state, ROUTER answering `snapshot`; in `run_dir`, or in a temporary one it removes."""

    def __init__(self, run_dir: Path | None, agents: list[AgentView], *, last_heartbeat: dict[str, float] | None = None,
                 bind_events: bool = True) -> None:
        self._own_dir = run_dir is None
        self.run_dir = run_dir or Path(tempfile.mkdtemp(prefix="sp", dir="/tmp"))  # ipc paths must stay short
        self.agents = {a.id: a for a in agents}
        self.last_heartbeat = dict(last_heartbeat or {})
        self.seq = 0
        self.events: list = []
        self.requests: list[str] = []  # the verbs asked, in order
        self.bind_events = bind_events  # left unbound, nothing reads the worker's PUSH: back-pressure
        self.lock = threading.Lock()  # guards everything above against the thread
        self._outbox: queue.Queue[bytes] = queue.Queue()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5), "the stand-in parent did not bind its endpoints"

    # ------------------------------------------------------------------ what a test overrides

    def snapshot(self) -> snapshot.Result:
        """The `snapshot` answer (called with the lock held)."""
        return snapshot.Result(seq=self.seq, agents=list(self.agents.values()), last_heartbeat=dict(self.last_heartbeat))

    def answer(self, request: Request) -> BaseModel | dict:
        """The result of one request (called with the lock held); KeyError for a verb it does not know."""
        if request.verb == snapshot.NAME:
            return self.snapshot()
        raise KeyError(request.verb)

    def on_round(self) -> None:
        """Called on the thread every poll round (at most POLL_MS apart)."""

    # ------------------------------------------------------------------ what a test calls

    def publish(self, msg: BaseModel) -> None:
        """Send a state message (AgentUpdate, HeartbeatTimes, ...) on `state.ipc` from the thread."""
        self._outbox.put(msg.model_dump_json().encode())

    def of(self, kind: type) -> list:
        with self.lock:
            return [m for m in self.events if isinstance(m, kind)]

    def heartbeats(self) -> list:
        return [hb for batch in self.of(HeartbeatBatch) for hb in batch.items]

    def beats(self) -> list[WorkerBeat]:
        return self.of(WorkerBeat)

    def counters(self, worker_pid: int) -> dict[str, int]:
        """The counters of that worker's latest liveness beat ({} before its first)."""
        beats = [b for b in self.beats() if b.pid == worker_pid]
        return dict(beats[-1].counters) if beats else {}

    def wait_counter(self, worker_pid: int, key: str, at_least: int, timeout: float = 30) -> dict[str, int]:
        return wait_until(
            lambda: (lambda c: c if c.get(key, 0) >= at_least else None)(self.counters(worker_pid)),
            timeout=timeout, message=f"counter {key} >= {at_least}",
        )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self._own_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        ctx = zmq.Context()
        pub, router = ctx.socket(zmq.PUB), ctx.socket(zmq.ROUTER)
        pub.bind(f"ipc://{self.run_dir / 'state.ipc'}")
        router.bind(f"ipc://{self.run_dir / 'control.ipc'}")
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        pull = None
        if self.bind_events:
            pull = ctx.socket(zmq.PULL)
            pull.bind(f"ipc://{self.run_dir / 'events.ipc'}")
            poller.register(pull, zmq.POLLIN)
        self._ready.set()
        try:
            while not self._stop.is_set():
                self.on_round()
                while not self._outbox.empty():
                    pub.send_multipart([STATE_TOPIC, self._outbox.get()])
                for sock, _ in poller.poll(POLL_MS):
                    if sock is pull:
                        msg = EVENT_ADAPTER.validate_json(pull.recv())
                        with self.lock:
                            self.events.append(msg)
                    else:
                        identity, payload = router.recv_multipart()
                        router.send_multipart([identity, self._reply(payload).model_dump_json().encode()])
        finally:
            ctx.destroy(linger=0)

    def _reply(self, payload: bytes) -> Reply:
        req = Request.model_validate_json(payload)
        with self.lock:
            self.requests.append(req.verb)
            try:
                result = self.answer(req)
            except KeyError:
                return error_reply(req.id, "unknown_verb", f"the stand-in parent does not answer {req.verb!r}")
        if isinstance(result, BaseModel):
            result = result.model_dump(mode="json")
        return Reply(id=req.id, ok=True, result=result)
