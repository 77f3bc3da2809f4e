"""Resource history in SQLite (``<data_dir>/history.db``, WAL), written by one background thread.

The parent's event loop only queues samples; the thread owns the one connection (history_db.HistoryFile),
writes, answers queries and prunes. Locks, a vanished file, corruption and a full disk are logged and
survived (docs/architecture.md, "Resource history").
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, Callable

from supervisor.common.backoff import Backoff
from supervisor.common.rate_limited_log import RateLimitedLog
from supervisor.parent import history_db
from supervisor.parent.history_db import HistoryFile, cause, classify
from supervisor.wire.messages import ResourceSample

log = logging.getLogger(__name__)

_MIN_DELAY = 0.25
_MAX_DELAY = 5.0
_FULL_LOG_PERIOD = 60.0


class HistoryStore:
    """Queue samples from any thread; one daemon thread owns the SQLite connection and does all I/O."""

    def __init__(
        self,
        path: Path,
        retention: float,
        *,
        max_pending: int = 20_000,
        busy_timeout: float = 0.2,
        prune_interval: float = 60.0,
        prune_chunk: int = 500,
        write_chunk: int = 2_000,
        call_timeout: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self.retention = float(retention)
        self.max_pending = max(1, max_pending)
        self.busy_timeout = busy_timeout
        self.prune_interval = prune_interval
        self.prune_chunk = max(1, prune_chunk)
        self.write_chunk = max(1, write_chunk)
        self.call_timeout = call_timeout

        self._cond = threading.Condition()
        self._pending: deque[list[ResourceSample]] = deque()
        self._pending_count = 0
        self._requests: list[tuple[Callable[..., Any], tuple[Any, ...], Any, Future[Any]]] = []
        self._latest: dict[str, ResourceSample] = {}
        self._counts = {"written": 0, "dropped": 0, "pruned": 0, "errors": 0}
        self._closed = False
        self._close_deadline = 0.0
        self._busy = True  # until the first open is done, so flush() also waits for it
        self._drop_log = RateLimitedLog(log, period=60.0)

        # Owned by the writer thread only.
        self._file = HistoryFile(self.path, busy_timeout, configure=self._configure, on_open=self._seed_latest)
        self._retry_at = 0.0
        self._backoff = Backoff(_MIN_DELAY, _MAX_DELAY)
        self._fault: str | None = None
        self._fault_failures = 0
        self._fault_logged_at = 0.0
        self._next_prune = 0.0  # prune once at start: the daemon may have been down for days
        self._prune_pass: tuple[float, list[str]] | None = None

        self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public API (any thread)

    def add(self, samples: list[ResourceSample]) -> None:
        """Queue samples for the writer; never blocks on I/O, drops the oldest batches when full."""
        if not samples:
            return
        batch = list(samples)
        dropped = 0
        with self._cond:
            for s in batch:
                cur = self._latest.get(s.agent_id)
                if cur is None or s.ts >= cur.ts:
                    self._latest[s.agent_id] = s
            if self._closed:
                self._counts["dropped"] += len(batch)
                return
            self._pending.append(batch)
            self._pending_count += len(batch)
            dropped = self._trim_locked()
            self._cond.notify_all()
        if dropped:
            self._drop_log("history writer is behind: dropped %d oldest samples (queue bound %d)", dropped, self.max_pending)

    def query(self, agent_id: str, since: float, until: float | None = None, limit: int = 10_000) -> list[ResourceSample]:
        """The most recent `limit` samples of an agent in [since, until], oldest first; [] on any failure."""
        return self._call(history_db.query, (agent_id, since, until, limit), [])

    def aggregate(self, agent_id: str, since: float, until: float | None, every: float) -> list[tuple]:
        """Per `every`-second window (aligned to the epoch) in [since, until], oldest first; [] on any failure.

        Each row: (window start, samples, cpu avg, cpu max, rss avg, rss max, fds avg, fds max, threads max, procs max).
        """
        return self._call(history_db.aggregate, (agent_id, since, until, every), [])

    def latest(self) -> dict[str, ResourceSample]:
        """The newest sample per agent id, from memory."""
        with self._cond:
            return dict(self._latest)

    def agents(self) -> list[str]:
        """Agent ids with history (seen since start or found in the database), sorted."""
        with self._cond:
            return sorted(self._latest)

    def prune(self) -> int:
        """Delete rows older than now - retention, in small chunks; returns how many were deleted."""
        return self._call(self._prune_all, (), 0)

    def stats(self) -> dict[str, int]:
        """Counters: written, dropped, pruned, errors, and the current queue depth as pending."""
        with self._cond:
            return {**self._counts, "pending": self._pending_count}

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until everything queued so far is written; False on timeout (e.g. database locked)."""
        with self._cond:
            self._cond.notify_all()
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (trying for up to `timeout` s), then stop the thread and close the database."""
        with self._cond:
            if not self._closed:
                self._closed = True
                self._close_deadline = time.monotonic() + timeout
                self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout + 5.0)

    # ------------------------------------------------------------------ requests run on the writer thread

    def _call(self, fn: Callable[..., Any], args: tuple[Any, ...], default: Any) -> Any:
        fut: Future[Any] = Future()
        if threading.current_thread() is self._thread:
            self._serve(fn, args, default, fut)
            return fut.result()
        with self._cond:
            if self._closed:
                return default
            self._requests.append((fn, args, default, fut))
            self._cond.notify_all()
        try:
            return fut.result(timeout=self.call_timeout)
        except FutureTimeout:
            fut.cancel()
            with self._cond:
                self._counts["errors"] += 1
            log.warning("history %s got no answer within %.1f s; returning nothing", fn.__name__.strip("_"), self.call_timeout)
            return default

    def _serve(self, fn: Callable[..., Any], args: tuple[Any, ...], default: Any, fut: Future[Any]) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn(self._file.ensure_open(), *args))
        except Exception as exc:
            self._failed(exc, fn.__name__.strip("_"))
            fut.set_result(default)

    def _prune_all(self, conn: sqlite3.Connection) -> int:
        cutoff = time.time() - self.retention
        total = 0
        for agent_id in history_db.agent_ids(conn):
            while True:
                n = self._delete_chunk(conn, agent_id, cutoff)
                total += n
                if n < self.prune_chunk:
                    break
        self._forget_before(cutoff)
        return total

    # ------------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                while True:
                    now = time.monotonic()
                    write_due = bool(self._pending) and now >= self._retry_at
                    stopping = self._closed and (not self._pending or now >= self._close_deadline)
                    prune_due = not self._closed and now >= self._next_prune
                    if write_due or stopping or prune_due or self._requests:
                        break
                    wake = self._next_prune if not self._closed else self._close_deadline
                    if self._pending:
                        wake = min(wake, self._retry_at)
                    self._cond.wait(max(0.0, wake - now))
                self._busy = True
                requests, self._requests = self._requests, []
            try:
                if write_due or stopping:
                    self._write_pending()
                for fn, args, default, fut in requests:
                    self._serve(fn, args, default, fut)
                if prune_due:
                    self._prune_step()
            except Exception:  # a bug here must not end history for the daemon's lifetime
                log.exception("history writer failed unexpectedly; continuing")
                with self._cond:
                    self._counts["errors"] += 1
                self._retry_at = self._next_prune = time.monotonic() + 1.0
            if stopping:
                break
        self._shutdown()

    def _shutdown(self) -> None:
        with self._cond:
            lost = self._pending_count
            self._pending.clear()
            self._pending_count = 0
            self._counts["dropped"] += lost
            requests, self._requests = self._requests, []
            self._busy = False
            self._cond.notify_all()
        for _fn, _args, default, fut in requests:
            if fut.set_running_or_notify_cancel():
                fut.set_result(default)
        if lost:
            log.warning("history store closed with %d samples unwritten (last fault: %s)", lost, self._fault or "none")
        self._file.drop()

    def _write_pending(self) -> None:
        while True:
            with self._cond:
                if not self._pending:
                    return
                batches: list[list[ResourceSample]] = []
                n = 0
                while self._pending and n < self.write_chunk:
                    b = self._pending.popleft()
                    batches.append(b)
                    n += len(b)
                self._pending_count -= n
            try:
                conn = self._file.ensure_open()
                history_db.insert(conn, [s for b in batches for s in b])
            except Exception as exc:
                with self._cond:
                    # Back at the front: they are still the oldest, and the bound still applies to them.
                    self._pending.extendleft(reversed(batches))
                    self._pending_count += n
                    dropped = self._trim_locked()
                if dropped:
                    self._drop_log("history writer is behind: dropped %d oldest samples (queue bound %d)", dropped, self.max_pending)
                self._failed(exc, "write")
                return
            with self._cond:
                self._counts["written"] += n
            self._recovered()

    def _prune_step(self) -> None:
        """Delete one chunk of old rows; schedules the next chunk at once while more remain."""
        now = time.monotonic()
        try:
            conn = self._file.ensure_open()
            if self._prune_pass is None:
                self._prune_pass = (time.time() - self.retention, history_db.agent_ids(conn))
            cutoff, agents = self._prune_pass
            if agents:
                n = self._delete_chunk(conn, agents[0], cutoff)
                if n < self.prune_chunk:
                    agents.pop(0)
            if agents:
                self._next_prune = now  # other work runs between chunks, so the write lock is never held long
                return
            self._prune_pass = None
            self._forget_before(cutoff)
            self._next_prune = now + self.prune_interval
        except Exception as exc:
            self._prune_pass = None
            self._next_prune = now + max(self._failed(exc, "prune"), _MIN_DELAY)

    def _delete_chunk(self, conn: sqlite3.Connection, agent_id: str, cutoff: float) -> int:
        n = history_db.delete_chunk(conn, agent_id, cutoff, self.prune_chunk)
        if n:
            with self._cond:
                self._counts["pruned"] += n
        return n

    def _forget_before(self, cutoff: float) -> None:
        # An agent whose newest sample has aged out has no history left; keeps the map bounded.
        with self._cond:
            for agent_id in [a for a, s in self._latest.items() if s.ts < cutoff]:
                del self._latest[agent_id]

    # ------------------------------------------------------------------ each new connection (writer thread)

    def _configure(self, conn: sqlite3.Connection) -> None:
        # A method of the store, not only of the file, so a test's subclass can add a PRAGMA (a tiny disk).
        history_db.configure(conn)

    def _seed_latest(self, conn: sqlite3.Connection) -> None:
        found = history_db.newest_per_agent(conn)
        with self._cond:
            for s in found:
                cur = self._latest.get(s.agent_id)
                if cur is None or s.ts > cur.ts:
                    self._latest[s.agent_id] = s

    # ------------------------------------------------------------------ fault accounting (writer thread)

    def _failed(self, exc: BaseException, action: str) -> float:
        """Count, log once per episode, and react; returns the retry delay it scheduled."""
        kind = classify(exc)
        with self._cond:
            self._counts["errors"] += 1
            pending = self._pending_count
        self._fault_failures += 1
        if kind == "corrupt":
            self._file.quarantine(exc)
            self._retry_at = time.monotonic()
            return 0.0
        if kind == "moved":
            log.warning("history database %s was removed or renamed while open (%s); recreating it", self.path, cause(exc))
            self._file.drop()
            self._retry_at = time.monotonic()
            return 0.0
        now = time.monotonic()
        if kind != self._fault or (kind == "full" and now - self._fault_logged_at >= _FULL_LOG_PERIOD):
            if kind == "locked":
                msg = "history database %s is locked by another process (%s) during %s; %d samples kept for retry"
            elif kind == "full":
                msg = "disk full for history database %s (%s) during %s; %d samples kept for retry"
            else:
                msg = "history database %s failed (%s) during %s; %d samples kept for retry"
            log.warning(msg, self.path, cause(exc), action, pending)
            self._fault, self._fault_logged_at = kind, now
        if kind == "error":
            self._file.drop()  # a fresh connection may heal an I/O error or a recreated directory
        delay = self._backoff.next_delay()
        self._retry_at = now + delay
        return delay

    def _recovered(self) -> None:
        if self._fault is not None:
            log.info("history database %s writable again after %d failed attempts", self.path, self._fault_failures)
        self._fault = None
        self._fault_failures = 0
        self._backoff.reset()

    def _trim_locked(self) -> int:
        """Drop the oldest batches beyond max_pending (caller holds the lock); returns samples dropped."""
        dropped = 0
        while self._pending_count > self.max_pending:
            if len(self._pending) == 1:
                # One batch bigger than the whole bound: keep its newest part.
                only = self._pending[0]
                cut = len(only) - self.max_pending
                self._pending[0] = only[cut:]
                self._pending_count -= cut
                dropped += cut
                break
            old = self._pending.popleft()
            self._pending_count -= len(old)
            dropped += len(old)
        self._counts["dropped"] += dropped
        return dropped
