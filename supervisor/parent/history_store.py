"""Resource history in SQLite (``<data_dir>/history.db``, WAL), written by one background thread.

The parent's event loop only queues samples; the thread owns the one connection, writes, answers
queries and prunes. Locks, a vanished file, corruption and a full disk are logged and survived.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from supervisor.wire.messages import ResourceSample
from supervisor.common.backoff import Backoff
from supervisor.common.rate_limited_log import RateLimitedLog

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# Each step upgrades user_version N-1 to N; a later column or index change appends one here.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE IF NOT EXISTS samples(agent_id TEXT, ts REAL, cpu REAL, rss INTEGER, vms INTEGER,"
        " read_bytes INTEGER, write_bytes INTEGER, fds INTEGER, threads INTEGER, procs INTEGER)",
        "CREATE INDEX IF NOT EXISTS samples_agent_ts ON samples(agent_id, ts)",
    ),
}

_COLUMNS = ("agent_id", "ts", "cpu", "rss", "vms", "read_bytes", "write_bytes", "fds", "threads", "procs")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM samples"
_INSERT = f"INSERT INTO samples({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
# Distinct agent ids by hopping through the (agent_id, ts) index: one seek per agent, not a scan of every row.
_AGENT_IDS = (
    "WITH RECURSIVE a(id) AS (SELECT MIN(agent_id) FROM samples"
    " UNION ALL SELECT (SELECT MIN(agent_id) FROM samples WHERE agent_id > a.id) FROM a WHERE a.id IS NOT NULL)"
    " SELECT id FROM a WHERE id IS NOT NULL"
)

_SIDECARS = ("-wal", "-shm")
_MIN_DELAY = 0.25
_MAX_DELAY = 5.0
_FULL_LOG_PERIOD = 60.0


class _Corrupt(Exception):
    """quick_check found damage that SQLite itself did not raise on."""


def _row(s: ResourceSample) -> tuple[Any, ...]:
    return (s.agent_id, s.ts, s.cpu, s.rss, s.vms, s.read_bytes, s.write_bytes, s.fds, s.threads, s.procs)


def _sample(row: tuple[Any, ...]) -> ResourceSample:
    return ResourceSample(**dict(zip(_COLUMNS, row)))


def _classify(exc: BaseException) -> str:
    """Fault kind: locked, full, corrupt, moved (file unlinked under us) or error."""
    if isinstance(exc, _Corrupt):
        return "corrupt"
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_READONLY_DBMOVED:
            return "moved"
        primary = code & 0xFF if isinstance(code, int) else None
        if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return "locked"
        if primary == sqlite3.SQLITE_FULL:
            return "full"
        if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            return "corrupt"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "full"
    return "error"


def _cause(exc: BaseException) -> str:
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    return f"{name}: {exc}"


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
        self._conn: sqlite3.Connection | None = None
        self._ident: tuple[int, int] | None = None
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
        return self._call(self._query, (agent_id, since, until, limit), [])

    def aggregate(self, agent_id: str, since: float, until: float | None, every: float) -> list[tuple]:
        """Per `every`-second window (aligned to the epoch) in [since, until], oldest first; [] on any failure.

        Each row: (window start, samples, cpu avg, cpu max, rss avg, rss max, fds avg, fds max, threads max, procs max).
        """
        return self._call(self._aggregate, (agent_id, since, until, every), [])

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
            fut.set_result(fn(self._ensure_open(), *args))
        except Exception as exc:
            self._failed(exc, fn.__name__.strip("_"))
            fut.set_result(default)

    def _query(self, conn: sqlite3.Connection, agent_id: str, since: float, until: float | None, limit: int) -> list[ResourceSample]:
        if limit <= 0:
            return []
        sql, params = f"{_SELECT} WHERE agent_id = ? AND ts >= ?", [agent_id, since]
        if until is not None:
            sql += " AND ts <= ?"
            params.append(until)
        rows = conn.execute(sql + " ORDER BY ts DESC LIMIT ?", (*params, int(limit))).fetchall()
        rows.reverse()
        return [_sample(r) for r in rows]

    def _aggregate(self, conn: sqlite3.Connection, agent_id: str, since: float, until: float | None, every: float) -> list[tuple]:
        # One indexed range scan grouped in SQLite: an hour of 10 s samples is 360 rows, a week 60 k.
        sql = (
            "SELECT CAST(ts / ? AS INTEGER) AS w, COUNT(*), AVG(cpu), MAX(cpu), AVG(rss), MAX(rss), AVG(fds), MAX(fds),"
            " MAX(threads), MAX(procs) FROM samples WHERE agent_id = ? AND ts >= ?"
        )
        params: list[Any] = [float(every), agent_id, since]
        if until is not None:
            sql += " AND ts <= ?"
            params.append(until)
        rows = conn.execute(sql + " GROUP BY w ORDER BY w", params).fetchall()
        return [(w * every, *rest) for w, *rest in rows]

    def _prune_all(self, conn: sqlite3.Connection) -> int:
        cutoff = time.time() - self.retention
        total = 0
        for agent_id in [r[0] for r in conn.execute(_AGENT_IDS)]:
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
        self._drop_connection()

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
                conn = self._ensure_open()
                rows = [_row(s) for b in batches for s in b]
                # IMMEDIATE takes the write lock up front, so a busy database fails here, before any work.
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(_INSERT, rows)
                    conn.execute("COMMIT")
                except BaseException:
                    self._rollback(conn)
                    raise
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
            conn = self._ensure_open()
            if self._prune_pass is None:
                self._prune_pass = (time.time() - self.retention, [r[0] for r in conn.execute(_AGENT_IDS)])
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
        cur = conn.execute(
            "DELETE FROM samples WHERE rowid IN (SELECT rowid FROM samples WHERE agent_id = ? AND ts < ? LIMIT ?)",
            (agent_id, cutoff, self.prune_chunk),
        )
        n = max(cur.rowcount, 0)
        if n:
            with self._cond:
                self._counts["pruned"] += n
        return n

    def _forget_before(self, cutoff: float) -> None:
        # An agent whose newest sample has aged out has no history left; keeps the map bounded.
        with self._cond:
            for agent_id in [a for a, s in self._latest.items() if s.ts < cutoff]:
                del self._latest[agent_id]

    # ------------------------------------------------------------------ connection management (writer thread)

    def _ensure_open(self) -> sqlite3.Connection:
        if self._conn is not None:
            ident = self._identity()
            if ident != self._ident:
                # Deleted files stay writable through the open descriptor, so writes would vanish silently.
                why = "the file is gone" if ident is None else "another file now has its name"
                log.warning("history database %s was removed while open (%s); recreating it", self.path, why)
                self._drop_connection()
        if self._conn is None:
            try:
                self._conn = self._open()
            except Exception as exc:
                if _classify(exc) != "corrupt":
                    raise
                self._quarantine(exc)
                self._conn = self._open()
        return self._conn

    def _identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists()
        if not existed:
            # A WAL left from a deleted database would be replayed into the new, empty one.
            self._remove_sidecars()
        conn = self._connect()
        try:
            self._configure(conn)
            if existed:
                result = conn.execute("PRAGMA quick_check").fetchone()
                if not result or result[0] != "ok":
                    raise _Corrupt(f"quick_check: {result[0] if result else 'no answer'}")
            self._migrate(conn)
            self._seed_latest(conn)
        except BaseException:
            conn.close()
            raise
        self._ident = self._identity()
        return conn

    def _connect(self) -> sqlite3.Connection:
        # Autocommit: transactions are explicit, so a failed write never leaves one open.
        # Born owner-and-group only, like metadata and logs (SQLite gives its -wal and -shm files the same mode).
        try:
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640))
            os.chmod(self.path, 0o640)
        except OSError:
            pass  # sqlite3 reports the real problem next, through the usual fault handling
        return sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)

    def _configure(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            log.warning("history database %s has schema %d, newer than ours (%d); using it as is", self.path, version, SCHEMA_VERSION)
            return
        for target in range(version + 1, SCHEMA_VERSION + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in _MIGRATIONS[target]:
                    conn.execute(stmt)
                conn.execute(f"PRAGMA user_version = {target}")
                conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise

    def _seed_latest(self, conn: sqlite3.Connection) -> None:
        found = []
        for (agent_id,) in conn.execute(_AGENT_IDS).fetchall():
            row = conn.execute(f"{_SELECT} WHERE agent_id = ? ORDER BY ts DESC LIMIT 1", (agent_id,)).fetchone()
            if row is not None:
                found.append(_sample(row))
        with self._cond:
            for s in found:
                cur = self._latest.get(s.agent_id)
                if cur is None or s.ts > cur.ts:
                    self._latest[s.agent_id] = s

    def _quarantine(self, exc: BaseException) -> None:
        self._drop_connection()
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        try:
            os.replace(self.path, target)
        except FileNotFoundError:
            return
        # The WAL belongs to the damaged file; renamed alongside, SQLite still pairs them when inspecting the copy.
        for suffix in _SIDECARS:
            try:
                os.replace(f"{self.path}{suffix}", f"{target}{suffix}")
            except OSError:
                pass
        log.warning("corrupt history database %s (%s); moved aside to %s, starting a new one", self.path, _cause(exc), target.name)

    def _remove_sidecars(self) -> None:
        for suffix in _SIDECARS:
            try:
                os.unlink(f"{self.path}{suffix}")
            except FileNotFoundError:
                pass

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass  # closing a connection to a vanished or broken file may fail; it is dropped either way
            self._conn = None
        self._ident = None

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite may already have rolled back itself (e.g. after SQLITE_FULL)

    # ------------------------------------------------------------------ fault accounting (writer thread)

    def _failed(self, exc: BaseException, action: str) -> float:
        """Count, log once per episode, and react; returns the retry delay it scheduled."""
        kind = _classify(exc)
        with self._cond:
            self._counts["errors"] += 1
            pending = self._pending_count
        self._fault_failures += 1
        if kind == "corrupt":
            self._quarantine(exc)
            self._retry_at = time.monotonic()
            return 0.0
        if kind == "moved":
            log.warning("history database %s was removed or renamed while open (%s); recreating it", self.path, _cause(exc))
            self._drop_connection()
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
            log.warning(msg, self.path, _cause(exc), action, pending)
            self._fault, self._fault_logged_at = kind, now
        if kind == "error":
            self._drop_connection()  # a fresh connection may heal an I/O error or a recreated directory
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
