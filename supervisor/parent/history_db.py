"""The history database file (``<data_dir>/history.db``): schema and migrations, the SQL, fault kinds,
and the one connection, which notices a file removed under it and moves a corrupt file aside.

Everything here runs on history_store.HistoryStore's writer thread (docs/architecture.md, "Resource
history").
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from supervisor.wire.messages import ResourceSample

# Logged under history_store's name: the store's lines keep the logger they always had.
log = logging.getLogger("supervisor.parent.history_store")

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


class Corrupt(Exception):
    """quick_check found damage that SQLite itself did not raise on."""


def _row(s: ResourceSample) -> tuple[Any, ...]:
    return (s.agent_id, s.ts, s.cpu, s.rss, s.vms, s.read_bytes, s.write_bytes, s.fds, s.threads, s.procs)


def _sample(row: tuple[Any, ...]) -> ResourceSample:
    return ResourceSample(**dict(zip(_COLUMNS, row)))


def classify(exc: BaseException) -> str:
    """Fault kind: locked, full, corrupt, moved (file unlinked under us) or error."""
    if isinstance(exc, Corrupt):
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


def cause(exc: BaseException) -> str:
    """The error as logged: SQLite's error name (or the exception type) and its text."""
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    return f"{name}: {exc}"


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back an open transaction, if SQLite has not already done so itself."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite may already have rolled back itself (e.g. after SQLITE_FULL)


def configure(conn: sqlite3.Connection) -> None:
    """The PRAGMAs every connection gets."""
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")


# ---------------------------------------------------------------------------- the SQL


def insert(conn: sqlite3.Connection, samples: list[ResourceSample]) -> None:
    """Write `samples` in one transaction; nothing is written when it fails."""
    rows = [_row(s) for s in samples]
    # IMMEDIATE takes the write lock up front, so a busy database fails here, before any work.
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(_INSERT, rows)
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise


def query(conn: sqlite3.Connection, agent_id: str, since: float, until: float | None, limit: int) -> list[ResourceSample]:
    """The most recent `limit` samples of an agent in [since, until], oldest first."""
    if limit <= 0:
        return []
    sql, params = f"{_SELECT} WHERE agent_id = ? AND ts >= ?", [agent_id, since]
    if until is not None:
        sql += " AND ts <= ?"
        params.append(until)
    rows = conn.execute(sql + " ORDER BY ts DESC LIMIT ?", (*params, int(limit))).fetchall()
    rows.reverse()
    return [_sample(r) for r in rows]


def aggregate(conn: sqlite3.Connection, agent_id: str, since: float, until: float | None, every: float) -> list[tuple]:
    """Per `every`-second window (aligned to the epoch): see HistoryStore.aggregate for the row."""
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


def agent_ids(conn: sqlite3.Connection) -> list[str]:
    """Every agent id with rows, sorted."""
    return [r[0] for r in conn.execute(_AGENT_IDS)]


def delete_chunk(conn: sqlite3.Connection, agent_id: str, cutoff: float, limit: int) -> int:
    """Delete up to `limit` rows of an agent older than `cutoff`; returns how many went."""
    cur = conn.execute(
        "DELETE FROM samples WHERE rowid IN (SELECT rowid FROM samples WHERE agent_id = ? AND ts < ? LIMIT ?)",
        (agent_id, cutoff, limit),
    )
    return max(cur.rowcount, 0)


def newest_per_agent(conn: sqlite3.Connection) -> list[ResourceSample]:
    """The newest sample of every agent in the database."""
    found = []
    for agent_id in agent_ids(conn):
        row = conn.execute(f"{_SELECT} WHERE agent_id = ? ORDER BY ts DESC LIMIT 1", (agent_id,)).fetchone()
        if row is not None:
            found.append(_sample(row))
    return found


# ---------------------------------------------------------------------------- the connection


class HistoryFile:
    """The one connection to the database: opened (checked, migrated) on demand, opened again when the
    file is removed or replaced under it; a corrupt file is moved aside and a new one started."""

    def __init__(self, path: Path, busy_timeout: float, configure: Callable[[sqlite3.Connection], None],
                 on_open: Callable[[sqlite3.Connection], None]) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._configure = configure
        self._on_open = on_open  # runs on every new connection, inside its checks
        self._conn: sqlite3.Connection | None = None
        self._ident: tuple[int, int] | None = None

    def ensure_open(self) -> sqlite3.Connection:
        """The open connection, (re)opened if need be."""
        if self._conn is not None:
            ident = self._identity()
            if ident != self._ident:
                # Deleted files stay writable through the open descriptor, so writes would vanish silently.
                why = "the file is gone" if ident is None else "another file now has its name"
                log.warning("history database %s was removed while open (%s); recreating it", self.path, why)
                self.drop()
        if self._conn is None:
            try:
                self._conn = self._open()
            except Exception as exc:
                if classify(exc) != "corrupt":
                    raise
                self.quarantine(exc)
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
                    raise Corrupt(f"quick_check: {result[0] if result else 'no answer'}")
            self._migrate(conn)
            self._on_open(conn)
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
                rollback(conn)
                raise

    def quarantine(self, exc: BaseException) -> None:
        """Move the damaged file (and its WAL) aside as `history.db.corrupt-<time>`; the next open starts anew."""
        self.drop()
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
        log.warning("corrupt history database %s (%s); moved aside to %s, starting a new one", self.path, cause(exc), target.name)

    def _remove_sidecars(self) -> None:
        for suffix in _SIDECARS:
            try:
                os.unlink(f"{self.path}{suffix}")
            except FileNotFoundError:
                pass

    def drop(self) -> None:
        """Close the connection (if any); the next ensure_open opens a new one."""
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass  # closing a connection to a vanished or broken file may fail; it is dropped either way
            self._conn = None
        self._ident = None
