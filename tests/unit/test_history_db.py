"""history_db on a real SQLite file in tmp_path, no threads: the SQL, fault kinds and the connection's recovery."""

from __future__ import annotations

import errno
import sqlite3

from supervisor.parent import history_db
from supervisor.parent.history_db import SCHEMA_VERSION, Corrupt, HistoryFile, classify
from supervisor.wire.messages import ResourceSample


def open_file(tmp_path, seen=None):
    seeds = [] if seen is None else seen
    f = HistoryFile(tmp_path / "history.db", 0.2, configure=history_db.configure,
                    on_open=lambda conn: seeds.append(history_db.newest_per_agent(conn)))
    return f, f.ensure_open()


def test_insert_query_aggregate_delete(tmp_path):
    _, conn = open_file(tmp_path)
    history_db.insert(conn, [ResourceSample(agent_id="a", ts=float(t), cpu=float(t), rss=10 * t) for t in range(10)]
                      + [ResourceSample(agent_id="b", ts=5.0)])
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [s.ts for s in history_db.query(conn, "a", since=2.0, until=6.0, limit=3)] == [4.0, 5.0, 6.0]
    assert history_db.query(conn, "a", since=0, until=None, limit=0) == []
    rows = history_db.aggregate(conn, "a", since=0, until=None, every=5)
    assert [(w, n, avg, top) for w, n, avg, top, *_ in rows] == [(0, 5, 2.0, 4.0), (5, 5, 7.0, 9.0)]
    assert history_db.agent_ids(conn) == ["a", "b"]
    assert history_db.delete_chunk(conn, "a", cutoff=8.0, limit=5) == 5
    assert history_db.delete_chunk(conn, "a", cutoff=8.0, limit=5) == 3
    assert [s.ts for s in history_db.newest_per_agent(conn)] == [9.0, 5.0]


def test_fault_kinds():
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = sqlite3.SQLITE_BUSY
    assert classify(busy) == "locked"
    assert classify(Corrupt("quick_check: bad")) == "corrupt"
    assert classify(OSError(errno.ENOSPC, "no space")) == "full"
    assert classify(ValueError("x")) == "error"


def test_a_removed_file_is_opened_again_and_a_corrupt_one_moved_aside(tmp_path):
    seen = []
    f, conn = open_file(tmp_path, seen)
    history_db.insert(conn, [ResourceSample(agent_id="a", ts=1.0)])
    f.path.unlink()
    again = f.ensure_open()
    assert again is not conn and f.path.exists() and history_db.agent_ids(again) == []
    f.drop()
    f.path.write_bytes(b"not a database " * 300)
    fresh = f.ensure_open()
    assert history_db.agent_ids(fresh) == [] and len(list(tmp_path.glob("history.db.corrupt-*"))) == 1
    assert len(seen) == 3  # on_open ran for every new connection
