"""Unit part of the test_history_store.py tests; the real-process ones are in tests/system/test_history_store.py."""

import asyncio
import logging
import shutil
import sqlite3
import time

import pytest

from supervisor.parent.history_db import SCHEMA_VERSION
from supervisor.parent.history_store import HistoryStore
from supervisor.wire.messages import ResourceSample
from tests.support.wait import wait_until


LOGGER = "supervisor.parent.history_store"


DAY = 86400.0


@pytest.fixture
def make_store(tmp_path):
    stores = []

    def make(path=None, retention=DAY, cls=HistoryStore, **kw):
        store = cls(path or tmp_path / "data" / "history.db", retention, **kw)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close(timeout=1.0)


def sample(agent_id="db-shipper", ts=None, **kw):
    return ResourceSample(agent_id=agent_id, ts=time.time() if ts is None else ts, **kw)


def rows_in(path):
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT count(*) FROM samples").fetchone()[0]
    finally:
        con.close()


def warnings(caplog, text):
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING and text in r.getMessage()]


def test_round_trip_keeps_floats_and_none(make_store, tmp_path):
    store = make_store()
    now = time.time()
    full = sample(ts=now - 1.123456789, cpu=12.345678901234, rss=2**40 + 3, vms=2**45, read_bytes=10, write_bytes=0, fds=7, threads=3, procs=2)
    bare = sample(ts=now)  # cpu, read/write bytes and fds stay None
    store.add([full, bare, sample("other", ts=now)])
    got = store.query("db-shipper", since=now - 10)
    assert [s.model_dump() for s in got] == [full.model_dump(), bare.model_dump()]
    assert got[1].cpu is None and got[1].read_bytes is None and got[1].fds is None
    assert store.query("db-shipper", since=now - 10, until=now - 1) == [full]
    assert store.query("nobody", since=0) == []
    assert store.stats()["written"] == 3

    con = sqlite3.connect(tmp_path / "data" / "history.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    con.close()


def test_query_limit_returns_most_recent_in_ascending_order(make_store):
    store = make_store()
    base = time.time() - 100
    store.add([sample(ts=base + i) for i in range(50)])
    got = store.query("db-shipper", since=0, limit=5)
    assert [s.ts for s in got] == [base + i for i in range(45, 50)]
    assert store.query("db-shipper", since=0, limit=0) == []


def test_query_through_run_in_executor(make_store):
    store = make_store()
    store.add([sample(cpu=1.5)])

    async def main():
        return await asyncio.get_running_loop().run_in_executor(None, store.query, "db-shipper", 0.0)

    assert [s.cpu for s in asyncio.run(main())] == [1.5]


def test_latest_and_agents(make_store, tmp_path):
    store = make_store()
    now = time.time()
    store.add([sample("a", ts=now - 5, cpu=1.0), sample("b", ts=now - 3, cpu=2.0)])
    store.add([sample("a", ts=now - 1, cpu=3.0), sample("a", ts=now - 9, cpu=9.0)])  # an older one arriving late
    assert {k: v.cpu for k, v in store.latest().items()} == {"a": 3.0, "b": 2.0}
    assert store.agents() == ["a", "b"]
    store.close()

    # A new store knows the agents already in the database.
    again = make_store()
    wait_until(lambda: again.agents() == ["a", "b"], timeout=30)
    assert again.latest()["a"].cpu == 3.0


def test_prune_deletes_rows_older_than_retention(make_store):
    store = make_store(retention=3600, prune_chunk=7)
    now = time.time()
    old = [sample("a", ts=now - 7200 - i) for i in range(30)] + [sample("gone", ts=now - 7200)]
    fresh = [sample("a", ts=now - i) for i in range(5)]
    store.add(old + fresh)
    assert store.flush()
    assert store.prune() == 31
    assert [s.ts for s in store.query("a", since=0)] == sorted(s.ts for s in fresh)
    assert store.stats()["pruned"] == 31
    assert store.agents() == ["a"]  # "gone" has no history left


def test_prune_runs_by_itself(make_store):
    store = make_store(retention=3600, prune_interval=0.1)
    now = time.time()
    store.add([sample(ts=now - 7200 - i) for i in range(20)] + [sample(ts=now)])
    wait_until(lambda: store.stats()["pruned"] == 20, timeout=30)
    assert len(store.query("db-shipper", since=0)) == 1


def test_many_samples_added_one_by_one_are_all_written(make_store):
    # That add() never waits for the database is shown by test_locked_database_is_retried_after_release.
    store = make_store()
    base = time.time() - 1000
    for i in range(10_000):
        store.add([sample(f"agent-{i % 50}", ts=base + i * 0.01)])
    assert store.flush()
    assert store.stats()["written"] == 10_000 and store.stats()["dropped"] == 0
    assert len(store.query("agent-7", since=0)) == 200
    assert len(store.agents()) == 50


def test_deleted_database_is_recreated(make_store, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    store = make_store()
    store.add([sample(ts=1.0)])
    assert store.flush()
    store.path.unlink()
    store.add([sample(ts=2.0, cpu=5.0)])
    assert store.flush()
    assert store.path.exists()
    assert rows_in(store.path) == 1
    assert [s.cpu for s in store.query("db-shipper", since=0)] == [5.0]
    assert len(warnings(caplog, "removed")) == 1

    # The whole data directory vanishing is survived the same way.
    shutil.rmtree(store.path.parent)
    store.add([sample(ts=3.0)])
    assert store.flush()
    assert rows_in(store.path) == 1
    assert len(warnings(caplog, "removed")) == 2
    store.add([sample(ts=4.0)])
    assert store.flush()
    assert rows_in(store.path) == 2
    assert len(warnings(caplog, "removed")) == 2  # once per event, not per write


def test_corrupt_database_is_moved_aside(make_store, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    path = tmp_path / "data" / "history.db"
    path.parent.mkdir()
    garbage = b"this is not a database " * 200
    path.write_bytes(garbage)
    store = make_store(path)
    store.add([sample(ts=1.0)])
    assert store.flush()
    aside = sorted(path.parent.glob("history.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == garbage
    assert len(store.query("db-shipper", since=0)) == 1
    assert len(warnings(caplog, "corrupt history database")) == 1


class TinyDisk(HistoryStore):
    """A database that may not grow: every insert needing a new page fails with SQLITE_FULL."""

    def _configure(self, conn):
        super()._configure(conn)
        conn.execute("PRAGMA max_page_count = 6")


def test_full_disk_is_counted_and_survived(make_store, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    store = make_store(cls=TinyDisk, max_pending=1000)
    rows = [sample(f"agent-{i}", ts=1.0, cpu=0.5) for i in range(1000)]
    store.add(rows)  # far more than 6 pages
    wait_until(lambda: store.stats()["errors"] >= 2, timeout=30)
    assert store.query("agent-1", since=0) == []  # queries still answer
    assert len(warnings(caplog, "disk full")) == 1  # once per minute, not per attempt
    assert store.stats()["pending"] == 1000  # kept for the next round

    # Room again: the kept samples are written.
    assert store._call(lambda conn: conn.execute("PRAGMA max_page_count = 100000").fetchone(), (), None)
    assert store.flush(timeout=30)
    assert store.stats()["written"] == 1000


def test_close_flushes(make_store, tmp_path):
    store = make_store()
    store.add([sample(ts=float(i)) for i in range(500)])
    store.close()
    assert rows_in(store.path) == 500
    assert store.stats()["pending"] == 0
    assert store.query("db-shipper", since=0) == []  # closed: answers nothing, raises nothing
    store.add([sample()])  # and add after close neither raises nor blocks


def test_aggregate_gives_avg_and_max_per_aligned_window(make_store):
    # `agentctl history ID --every 5m`: windows aligned to the epoch, average and maximum per window.
    store = make_store()
    base = (time.time() // 300) * 300 - 900  # the start of a 5-minute window, 15 minutes ago
    store.add([
        sample(ts=base + 10, cpu=10.0, rss=100, fds=5, threads=2, procs=1),
        sample(ts=base + 200, cpu=30.0, rss=300, fds=7, threads=4, procs=2),
        sample(ts=base + 310, cpu=None, rss=50, fds=None, threads=1, procs=1),  # a first sample: cpu unknown
        sample(ts=base + 650, cpu=250.0, rss=80, fds=9, threads=8, procs=3),  # several cores: above 100
        sample("other", ts=base + 20, cpu=99.0),
    ])
    rows = store.aggregate("db-shipper", since=base, until=None, every=300)
    assert rows == [
        (base, 2, 20.0, 30.0, 200.0, 300, 6.0, 7, 4, 2),
        (base + 300, 1, None, None, 50.0, 50, None, None, 1, 1),
        (base + 600, 1, 250.0, 250.0, 80.0, 80, 9.0, 9, 8, 3),
    ]
    assert store.aggregate("db-shipper", since=base + 311, until=base + 700, every=300) == [rows[2]]
    assert store.aggregate("nobody", since=0, until=None, every=60) == []
